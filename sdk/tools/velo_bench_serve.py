#!/usr/bin/python3
"""velo_bench_serve.py - a load generator for a velod on this machine.

It drives N concurrent velo.v1 TextGeneration/Generate streams against one
model, with greedy decoding and ignore_eos so that every request generates
exactly --max-tokens tokens, and reports requests/s, generated tokens/s,
time to first token (TTFT) and inter-token latency (ITL) at p50 and p99,
errors by gRPC status code and the settings, as a table on stdout and, with
--json FILE, as JSON.  It is a benchmark, not a test: it asserts nothing
about speed.

Bounds: at most --requests requests in all, and nothing runs past
--duration-s seconds after the load starts (requests still in flight then
are cancelled and counted as "cut_off", not as errors).  Every call also has
its own gRPC deadline (--timeout-s).  It only talks to loopback: a --server
whose host is not 127.0.0.0/8, ::1 or "localhost" is refused (exit 2).

How the numbers are measured (all times from time.perf_counter() in the
thread that reads the stream, so they include the client's own latency):

  TTFT  from the start of the call to the arrival of the first response
        message that carries at least one token id.
  ITL   per token: the gap between two consecutive token-carrying messages
        of one stream is spread evenly over the ids of the later message
        (a message with k ids and a gap of g seconds gives k samples of g/k).
        With one token per message this is the plain per-message gap.
  requests/s   completed requests / wall time of the load phase.
  tokens/s     all token ids received (completed and cut-off requests) /
               wall time of the load phase.
  The wall time runs from the first call's start to the last call's end.
  Percentiles interpolate linearly between the closest ranks.

--idle-ttft first runs one request alone (same settings), reports its TTFT
and single-stream tokens/s under "idle", and does not count it in the load.

--probes N measures the time to first token of a short request (prompt
--probe-prompt, one token) N times with nothing else running ("probe_idle")
and N times while the load runs ("probe_load"): one probe at a time, each
after a pseudo-random pause of 0..50 ms (fixed seed) so that the probes
arrive at every phase of the server's steps; the load probes start once
every load stream has received its first token (steady decoding).  The
report gives p50/p99 of both and the ratio of the p99s.

The generated stubs come from the build: $VELO_PYTHON_DIR, else
build/python under the repository.  Run it with /usr/bin/python3 (Debian's
grpcio).  Exit status: 0 no request failed (requests cut off at the time
bound are not failures), 1 some failed or none completed, 2 usage error or
refused server address.
"""
import argparse
import ipaddress
import json
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_stubs():
    """Puts the build's generated stubs on sys.path and imports them.
    Returns (grpc, velo_pb2, velo_pb2_grpc); exits with status 2 and a
    message naming the directory when they are missing."""
    pdir = Path(os.environ.get("VELO_PYTHON_DIR", ROOT / "build" / "python"))
    if not (pdir / "velo" / "v1" / "velo_pb2.py").exists():
        sys.exit("velo_bench_serve: generated stubs not found under %s: build the project "
                 "or set VELO_PYTHON_DIR" % pdir)
    sys.path.insert(0, str(pdir))
    import grpc
    from velo.v1 import velo_pb2, velo_pb2_grpc
    return grpc, velo_pb2, velo_pb2_grpc


def parse_server(text):
    """Splits HOST:PORT (IPv6 as [ADDR]:PORT) and checks that HOST is a
    loopback address.  Returns the address for gRPC; raises ValueError with
    a message naming the value and what is allowed."""
    allowed = "only loopback is allowed (127.0.0.0/8, ::1, localhost)"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("--server %r: expected [ADDR]:PORT" % text)
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("--server %r: expected HOST:PORT" % text)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("--server %r: port %r is not in 1..65535" % (text, port))
    if host.lower() != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("--server %r: host %r is not an IP address or localhost; %s"
                             % (text, host, allowed)) from None
        if not ip.is_loopback:
            raise ValueError("--server %r: host %s is not a loopback address; %s"
                             % (text, host, allowed))
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def percentile(values, p):
    """The p-th percentile (0..100) of values, interpolating linearly
    between the closest ranks; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Run:
    """The shared state of one load phase: the request counter, the time
    bound, the in-flight calls (to cancel at the bound) and the results.
    All fields are guarded by self.lock."""

    def __init__(self, total, duration_s):
        self.lock = threading.Lock()
        self.next = 0
        self.total = total
        self.t0 = time.perf_counter()
        self.end = self.t0 + duration_s
        self.stopped = False
        self.inflight = set()
        self.results = []
        self.first_tokens = 0  # requests that have received their first token

    def take(self):
        """The next request index, or None when the count or time is spent."""
        with self.lock:
            if self.stopped or self.next >= self.total or time.perf_counter() >= self.end:
                return None
            self.next += 1
            return self.next - 1


def one_request(grpc, stub, req, timeout_s, run=None):
    """Runs one Generate stream to its end and returns a dict with its
    timings (seconds, perf_counter), token count, finish reason and status
    ("OK", a grpc.StatusCode name, or "cut_off" when run stopped it)."""
    r = {"start": time.perf_counter(), "ttft": None, "itl": [], "tokens": 0, "messages": 0,
         "finish_reason": "", "status": "OK", "details": ""}
    call = stub.Generate(req, timeout=timeout_s)
    if run is not None:
        with run.lock:
            if run.stopped:
                call.cancel()
            run.inflight.add(call)
    last = None
    try:
        for msg in call:
            now = time.perf_counter()
            n = len(msg.token_ids)
            if n:
                if last is None:
                    r["ttft"] = now - r["start"]
                    if run is not None:
                        with run.lock:
                            run.first_tokens += 1
                else:
                    r["itl"].extend([(now - last) / n] * n)
                last = now
                r["tokens"] += n
                r["messages"] += 1
            if msg.finish_reason:
                r["finish_reason"] = msg.finish_reason
    except grpc.RpcError as e:
        r["status"] = e.code().name if e.code() else "UNKNOWN"
        r["details"] = e.details() or ""
        if run is not None and run.stopped and e.code() == grpc.StatusCode.CANCELLED:
            r["status"] = "cut_off"
    finally:
        r["end"] = time.perf_counter()
        if run is not None:
            with run.lock:
                run.inflight.discard(call)
    return r


def worker(grpc, stub, req, timeout_s, run):
    """One concurrent stream: takes requests until the run is spent."""
    while run.take() is not None:
        res = one_request(grpc, stub, req, timeout_s, run)
        with run.lock:
            run.results.append(res)


def probe_series(grpc, stub, req, timeout_s, n, seed, stop=None):
    """Runs up to n probe requests one after another, each after a pause of
    0..50 ms drawn from random.Random(seed); stops early when stop() is
    true.  Returns the request dicts of one_request."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if stop is not None and stop():
            break
        time.sleep(rng.uniform(0.0, 0.05))
        out.append(one_request(grpc, stub, req, timeout_s))
    return out


def probe_summary(results):
    """p50/p99 TTFT (ms) of probe requests, and how many failed."""
    ttft = [r["ttft"] for r in results if r["status"] == "OK" and r["ttft"] is not None]
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {"samples": len(ttft), "failed": sum(1 for r in results if r["status"] != "OK"),
            "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99))}}


def summarize(results, max_tokens):
    """Aggregates request dicts into the reported numbers (ms for latencies)."""
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    ok = [r for r in results if r["status"] == "OK"]
    errors = {}
    for r in results:
        if r["status"] not in ("OK", "cut_off"):
            errors[r["status"]] = errors.get(r["status"], 0) + 1
    wall = (max(r["end"] for r in results) - min(r["start"] for r in results)) if results else 0.0
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    itl = [g for r in results for g in r["itl"]]
    return {
        "wall_s": round(wall, 4),
        "requests_started": len(results),
        "requests_completed": len(ok),
        "requests_cut_off": sum(1 for r in results if r["status"] == "cut_off"),
        "requests_short": sum(1 for r in ok if r["tokens"] != max_tokens),
        "errors": errors,
        "error_examples": sorted({"%s: %s" % (r["status"], r["details"])
                                  for r in results if r["status"] not in ("OK", "cut_off")})[:5],
        "generated_tokens": tokens,
        "token_messages": sum(r["messages"] for r in results),
        "requests_per_s": round(len(ok) / wall, 4) if wall > 0 else None,
        "tokens_per_s": round(tokens / wall, 3) if wall > 0 else None,
        "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99)),
                    "samples": len(ttft)},
        "itl_ms": {"p50": ms(percentile(itl, 50)), "p99": ms(percentile(itl, 99)),
                   "samples": len(itl)},
    }


def fmt(v, unit=""):
    return "-" if v is None else ("%.2f%s" % (v, unit) if isinstance(v, float) else "%s%s" % (v, unit))


def print_table(report):
    """The report as a two-column table on stdout."""
    s, load = report["settings"], report["load"]
    rows = [("server", s["server"]), ("model", s["model"]),
            ("concurrency", s["concurrency"]), ("requests (max)", s["requests"]),
            ("max_tokens", s["max_tokens"]), ("duration_s (max)", s["duration_s"]),
            ("prompt", repr(s["prompt"]) if len(s["prompt"]) <= 40 else repr(s["prompt"][:37]) + "..."),
            ("wall time", "%.3f s" % load["wall_s"]),
            ("requests completed", "%d of %d started (%d cut off, %d short)" % (
                load["requests_completed"], load["requests_started"],
                load["requests_cut_off"], load["requests_short"])),
            ("requests/s", fmt(load["requests_per_s"])),
            ("generated tokens/s", fmt(load["tokens_per_s"])),
            ("TTFT p50 / p99", "%s / %s ms" % (fmt(load["ttft_ms"]["p50"]), fmt(load["ttft_ms"]["p99"]))),
            ("ITL p50 / p99", "%s / %s ms" % (fmt(load["itl_ms"]["p50"]), fmt(load["itl_ms"]["p99"]))),
            ("errors", ", ".join("%s %d" % kv for kv in sorted(load["errors"].items())) or "none")]
    if report.get("idle"):
        idle = report["idle"]
        rows.insert(7, ("idle TTFT (1 request)", "%s ms, %s tokens/s, status %s" % (
            fmt(idle["ttft_ms"]["p50"]), fmt(idle["tokens_per_s"]),
            "OK" if idle["requests_completed"] else ",".join(idle["errors"]))))
    if report.get("probe_idle"):
        pi, pl = report["probe_idle"], report.get("probe_load") or {}
        rows.append(("probe TTFT idle p50/p99", "%s / %s ms (%d probes)" % (
            fmt(pi["ttft_ms"]["p50"]), fmt(pi["ttft_ms"]["p99"]), pi["samples"])))
        if pl:
            rows.append(("probe TTFT load p50/p99", "%s / %s ms (%d probes), p99 ratio %s" % (
                fmt(pl["ttft_ms"]["p50"]), fmt(pl["ttft_ms"]["p99"]), pl["samples"],
                fmt(report.get("probe_p99_ratio")))))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%-*s  %s" % (w, k, v))
    for e in load["error_examples"]:
        print("  error: %s" % e)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="HOST:PORT of velod (loopback only)")
    ap.add_argument("--model", required=True, help="served model name")
    ap.add_argument("--concurrency", type=int, default=1, help="concurrent streams (default 1)")
    ap.add_argument("--requests", type=int, default=16, help="requests in all (default 16)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    ap.add_argument("--prompt", default="Once upon a time", help="the prompt of every request")
    ap.add_argument("--duration-s", type=float, default=300.0,
                    help="time bound of the load phase in seconds (default 300)")
    ap.add_argument("--timeout-s", type=float, default=120.0,
                    help="gRPC deadline of each call in seconds (default 120)")
    ap.add_argument("--idle-ttft", action="store_true",
                    help="run one request alone first and report its TTFT")
    ap.add_argument("--probes", type=int, default=0,
                    help="TTFT probes of a short prompt, idle and under the load (default 0)")
    ap.add_argument("--probe-prompt", default="Once upon a time",
                    help="the probes' prompt (default 'Once upon a time')")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-': stdout)")
    a = ap.parse_args(argv)
    for name, v, lo, hi in (("--concurrency", a.concurrency, 1, 1024),
                            ("--requests", a.requests, 1, 1000000),
                            ("--max-tokens", a.max_tokens, 1, 1 << 20),
                            ("--probes", a.probes, 0, 10000)):
        if not lo <= v <= hi:
            ap.error("%s %d: allowed %d..%d" % (name, v, lo, hi))
    for name, v in (("--duration-s", a.duration_s), ("--timeout-s", a.timeout_s)):
        if not 0 < v <= 86400:
            ap.error("%s %g: allowed (0, 86400]" % (name, v))
    try:
        target = parse_server(a.server)
    except ValueError as e:
        print("velo_bench_serve: refused: %s" % e, file=sys.stderr)
        return 2

    # Open the JSON output before the run, so a bad path fails at once
    # rather than after the whole load.
    json_out = None
    if a.json and a.json != "-":
        try:
            json_out = open(a.json, "w")
        except OSError as e:
            print("velo_bench_serve: cannot write --json %s: %s" % (a.json, e.strerror),
                  file=sys.stderr)
            return 2

    grpc, velo_pb2, velo_pb2_grpc = import_stubs()
    req = velo_pb2.GenerateRequest(model=a.model, prompt=a.prompt, max_tokens=a.max_tokens,
                                   temperature=0.0, ignore_eos=True)
    settings = {"server": a.server, "model": a.model, "concurrency": a.concurrency,
                "requests": a.requests, "max_tokens": a.max_tokens, "prompt": a.prompt,
                "duration_s": a.duration_s, "timeout_s": a.timeout_s, "idle_ttft": a.idle_ttft,
                "probes": a.probes, "probe_prompt": a.probe_prompt,
                "sampling": {"temperature": 0.0, "ignore_eos": True},
                "itl_method": "per-message gap spread evenly over the message's token ids",
                "client": {"python": platform.python_version(), "grpcio": grpc.__version__,
                           "host": platform.node(), "cpus": os.cpu_count()},
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report = {"settings": settings, "idle": None}
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        if a.idle_ttft:
            report["idle"] = summarize([one_request(grpc, stub, req, a.timeout_s)], a.max_tokens)
        probe_req = velo_pb2.GenerateRequest(model=a.model, prompt=a.probe_prompt, max_tokens=1,
                                             temperature=0.0, ignore_eos=True)
        if a.probes:
            report["probe_idle"] = probe_summary(
                probe_series(grpc, stub, probe_req, a.timeout_s, a.probes, 1))
        run = Run(a.requests, a.duration_s)
        threads = [threading.Thread(target=worker, args=(grpc, stub, req, a.timeout_s, run),
                                    daemon=True) for _ in range(a.concurrency)]
        for t in threads:
            t.start()
        if a.probes:
            # Steady state first: every load stream has had its first token.
            while time.perf_counter() < run.end:
                with run.lock:
                    if run.stopped or run.first_tokens >= a.concurrency:
                        break
                time.sleep(0.01)

            def load_over():
                with run.lock:
                    return run.stopped or (run.next >= run.total and not run.inflight)
            report["probe_load"] = probe_summary(
                probe_series(grpc, stub, probe_req, a.timeout_s, a.probes, 2, load_over))
            i, l = report["probe_idle"]["ttft_ms"]["p99"], report["probe_load"]["ttft_ms"]["p99"]
            report["probe_p99_ratio"] = round(l / i, 3) if i and l else None
        for t in threads:
            t.join(max(0.0, run.end - time.perf_counter()))
        with run.lock:
            run.stopped = True
            for call in run.inflight:
                call.cancel()
        for t in threads:
            t.join(10.0)
        with run.lock:
            report["load"] = summarize(list(run.results), a.max_tokens)

    print_table(report)
    if a.json:
        text = json.dumps(report, indent=2) + "\n"
        if a.json == "-":
            sys.stdout.write(text)
        else:
            with json_out:
                json_out.write(text)
    load = report["load"]
    bad = load["errors"] or load["requests_completed"] == 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
