#!/usr/bin/python3
"""serve_bench.py - the serving benchmark of issue 4, in one run.

Starts one velod (from a Release build) serving a TinyLlama-1.1B-shaped
Q4_0 model made by ../shared/tools/make_synth_gguf.py (generated into
--model-dir if missing; see ../shared/anchors/cpu-llm.md), then, against
that one server and interleaved in one run:

  1. single stream: sdk/tools/velo_bench_serve.py --concurrency 1;
  2. 8 concurrent streams, with TTFT probes of a short prompt idle and under
     the load (--probes);
  3. 16 concurrent streams while a sampler reads velod's VmRSS from
     /proc/PID/status every 50 ms;

and prints one table: aggregate generated tokens/s at 8 streams over the
single-stream figure, probe TTFT p99 under load over idle, and the peak
resident memory over (model file size + KV cache pool bytes).  The pool
size comes from the engine's own counter (velo models --counters).  It is
a benchmark, not a test: it reports, and exits 0 unless something failed
to run.  Everything stays on 127.0.0.1.

Usage (from the repository root; about 5 minutes on 2 cores):
  cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release && cmake --build build-release -j2
  /usr/bin/python3 tests/bench/serve_bench.py --build build-release --json bench.json
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("VELO_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(path, qtype):
    """Generates the TinyLlama-shaped model as the anchors describe."""
    tool = os.path.join(SHARED, "tools", "make_synth_gguf.py")
    vocab = os.path.join(SHARED, "vocab", "ggml-vocab-llama-spm.gguf")
    for f in (tool, vocab):
        if not os.path.exists(f):
            sys.exit("serve_bench: %s is missing; set VELO_SHARED_DIR to the shared data folder" % f)
    cmd = ["/usr/bin/python3", tool, "synth", "--vocab-from", vocab, "--out", path,
           "--n-embd", "2048", "--n-layer", "22", "--n-head", "32", "--n-head-kv", "4",
           "--n-ff", "5632", "--ctx", "2048", "--type", qtype, "--seed", "0"]
    print("serve_bench: generating %s (needs python3-numpy): %s" % (path, " ".join(cmd)), flush=True)
    subprocess.run(cmd, check=True)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """Reads VmRSS of pid every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.05)


def bench(build, port, model, concurrency, requests, max_tokens, prompt, extra):
    out = "/tmp/velo-serve-bench-%d-%d.json" % (os.getpid(), concurrency)
    cmd = ["/usr/bin/python3", os.path.join(ROOT, "sdk", "tools", "velo_bench_serve.py"),
           "--server", "127.0.0.1:%d" % port, "--model", model, "--concurrency", str(concurrency),
           "--requests", str(requests), "--max-tokens", str(max_tokens), "--prompt", prompt,
           "--json", out] + extra
    env = dict(os.environ, VELO_PYTHON_DIR=os.path.join(build, "python"))
    print("serve_bench: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    with open(out) as f:
        rep = json.load(f)
    os.unlink(out)
    return rep


def counters(build, port, model):
    """The model's engine counters, from `velo models --counters`."""
    txt = subprocess.run([os.path.join(build, "bin", "velo"), "--server", "127.0.0.1:%d" % port,
                          "models", "--counters"], check=True, capture_output=True, text=True).stdout
    vals, in_model = {}, False
    for line in txt.splitlines():
        if not line.startswith(" "):
            in_model = line.split()[0] == model if line.split() else False
        elif in_model and len(line.split()) == 2:
            k, v = line.split()
            vals[k] = int(v)
    return vals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"),
                    help="a Release build folder (default build-release)")
    ap.add_argument("--model-dir", default="/tmp/velo-bench", help="where the model file lives")
    ap.add_argument("--type", default="Q4_0", choices=["Q4_0", "Q8_0"])
    ap.add_argument("--model-file", help="serve this GGUF instead (e.g. a quick smoke run)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default="Once upon a time there was a little girl who lived in a "
                    "village near the forest.")
    ap.add_argument("--probe-prompt", default="Once upon a time")
    ap.add_argument("--probes", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0, help="velod --threads (0: its default)")
    ap.add_argument("--json", help="write the results as JSON here")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    velod = os.path.join(build, "bin", "velod")
    if not os.path.exists(velod):
        sys.exit("serve_bench: %s is missing; build first (see the usage in this file)" % velod)
    os.makedirs(a.model_dir, exist_ok=True)
    path = a.model_file or os.path.join(a.model_dir, "tinyllama-%s.gguf" % a.type.lower())
    if not os.path.exists(path):
        make_model(path, a.type)
    port = free_port()
    cmd = [velod, "--listen", "127.0.0.1:%d" % port, "--model", "tl=" + path, "--log-level", "warn"]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    print("serve_bench: " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("serve_bench: velod did not start")
                time.sleep(0.2)
        res = {"model": path, "model_bytes": os.path.getsize(path), "date": time.strftime("%Y-%m-%d"),
               "velod": cmd}
        # Warm-up: page the weights in, so the first measurement is not a disk read.
        bench(build, port, "tl", 1, 1, 4, a.probe_prompt, [])
        one = bench(build, port, "tl", 1, 4, a.max_tokens, a.prompt, [])
        eight = bench(build, port, "tl", 8, 16, a.max_tokens, a.prompt,
                      ["--probes", str(a.probes), "--probe-prompt", a.probe_prompt])
        sampler = RssSampler(proc.pid)
        sampler.start()
        sixteen = bench(build, port, "tl", 16, 16, a.max_tokens, a.prompt, [])
        sampler.stop.set()
        sampler.join()
        c = counters(build, port, "tl")
        res.update({"single": one["load"], "eight": eight["load"], "sixteen": sixteen["load"],
                    "probe_idle": eight.get("probe_idle"), "probe_load": eight.get("probe_load"),
                    "counters": c, "rss_peak_kib": sampler.peak})
        single_tps, eight_tps = one["load"]["tokens_per_s"], eight["load"]["tokens_per_s"]
        res["ratio_8_over_1"] = round(eight_tps / single_tps, 3) if single_tps else None
        pi = (eight.get("probe_idle") or {}).get("ttft_ms", {}).get("p99")
        pl = (eight.get("probe_load") or {}).get("ttft_ms", {}).get("p99")
        res["probe_p99_ratio"] = round(pl / pi, 3) if pi and pl else None
        bound = (res["model_bytes"] + c.get("kv_cache_bytes", 0)) * 1.15
        res["rss_bound_bytes"] = int(bound)
        res["rss_peak_over_bound"] = round(sampler.peak * 1024 / bound, 3) if bound else None
    finally:
        proc.terminate()
        proc.wait(30)
    rows = [
        ("model", "%s (%.0f MB)" % (os.path.basename(path), res["model_bytes"] / 1e6)),
        ("single stream", "%.2f tokens/s" % single_tps),
        ("8 streams", "%.2f tokens/s aggregate" % eight_tps),
        ("8 streams / single", "%.2fx (goal >= 4)" % res["ratio_8_over_1"]),
        ("probe TTFT idle p50/p99", "%s / %s ms" % (eight["probe_idle"]["ttft_ms"]["p50"], pi)),
        ("probe TTFT load p50/p99", "%s / %s ms" % (eight["probe_load"]["ttft_ms"]["p50"], pl)),
        ("probe p99 load / idle", "%sx (goal < 2)" % res["probe_p99_ratio"]),
        ("16 streams", "%.2f tokens/s aggregate" % sixteen["load"]["tokens_per_s"]),
        ("velod peak RSS (16 streams)", "%.1f MiB" % (sampler.peak / 1024)),
        ("model + KV pool", "%.1f MiB (+15%% = %.1f MiB)" % (
            (res["model_bytes"] + c.get("kv_cache_bytes", 0)) / 1048576, bound / 1048576)),
        ("peak RSS / bound", "%s (goal < 1)" % res["rss_peak_over_bound"]),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%-*s  %s" % (w, k, v))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
