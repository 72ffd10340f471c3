"""harness.py - what the end-to-end tests share: where the build and the shared
data are, the generated gRPC stubs, a velod process that a test can start, wait
for and stop, and small helpers for calls (expected errors, request
parameters), logs and references.

Paths come from the environment (tests/e2e/CMakeLists.txt sets them for ctest)
and default to the usual layout, so the tests also run by hand:

    VELO_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/e2e

  VELO_BUILD_DIR       the CMake build directory (default: <repo>/build)
  VELO_BIN_DIR         velod and velo (default: $VELO_BUILD_DIR/bin)
  VELO_PYTHON_DIR      generated stubs (default: $VELO_BUILD_DIR/python)
  VELO_PLUGIN_DIR      the real plugins (default: $VELO_BUILD_DIR/lib/velo)
  VELO_BAD_PLUGIN_DIR  broken test plugins (default: $VELO_BUILD_DIR/tests/bad-plugins)
  VELO_SHARED_DIR      models and references (default: <repo>/../shared)

All traffic goes to 127.0.0.1.  Every wait is bounded.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("VELO_BUILD_DIR", ROOT / "build")).resolve()
BIN_DIR = Path(os.environ.get("VELO_BIN_DIR", BUILD_DIR / "bin"))
PYTHON_DIR = Path(os.environ.get("VELO_PYTHON_DIR", BUILD_DIR / "python"))
PLUGIN_DIR = Path(os.environ.get("VELO_PLUGIN_DIR", BUILD_DIR / "lib" / "velo"))
BAD_PLUGIN_DIR = Path(os.environ.get("VELO_BAD_PLUGIN_DIR", BUILD_DIR / "tests" / "bad-plugins"))
SHARED_DIR = Path(os.environ.get("VELO_SHARED_DIR", ROOT.parent / "shared")).resolve()

VELOD = BIN_DIR / "velod"
VELO = BIN_DIR / "velo"
MODEL_F32 = SHARED_DIR / "models" / "stories260K.gguf"
MODEL_Q8 = SHARED_DIR / "models" / "stories260K-q8_0.gguf"
REFERENCE = SHARED_DIR / "reference" / "stories260K.json"

# Names the shared velod gives its models (--model NAME=PATH).
F32 = "stories260K"
Q8 = "stories260K-q8_0"
NOBOS = "stories260K-nobos"

# Bounds on every wait.
READY_TIMEOUT_S = 30.0   # velod start until health Check says SERVING
STOP_TIMEOUT_S = 10.0    # SIGTERM until exit, then SIGKILL
CALL_TIMEOUT_S = 60.0    # one ordinary call
LOG_TIMEOUT_S = 10.0     # a log line that must appear

if not (PYTHON_DIR / "velo" / "v1" / "velo_pb2.py").exists():
    raise ImportError(
        "generated Python stubs not found under %s: build the project first "
        "(cmake --build build) or set VELO_PYTHON_DIR" % PYTHON_DIR)
sys.path.insert(0, str(PYTHON_DIR))

import grpc  # noqa: E402  (Debian's python3-grpcio, for /usr/bin/python3)
from velo.v1 import velo_pb2, velo_pb2_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

# No proxy, whatever the environment says: everything is local.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
# For polling a velod that is still starting: a fresh channel with its own
# subchannel per attempt.  Reusing one channel, a refused first connection
# puts the shared subchannel in reconnect backoff (measured: ~5 s).
STARTUP_CHANNEL_OPTIONS = CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]


def clean_env():
    """The environment for child processes: no proxies, no plugin path."""
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "no_proxy") \
                or k == "VELO_PLUGIN_PATH":
            del env[k]
    return env


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_reference():
    with open(REFERENCE, encoding="utf-8") as f:
        return json.load(f)


def pieces_text(pieces_hex, n):
    """The text of the first n generated pieces ('-' = empty piece)."""
    return b"".join(b"" if h == "-" else bytes.fromhex(h) for h in pieces_hex[:n]).decode("utf-8")


def near_tie_limit(top5_per_step, gap=0.05):
    """The number of leading steps whose reference top-2 gap is >= gap: the
    ids before the first near-tie, which the comparison rule treats as exact."""
    for step, top in enumerate(top5_per_step):
        if top[0][1] - top[1][1] < gap:
            return step
    return len(top5_per_step)


def abi_version():
    """(VELO_ABI_MAJOR, VELO_ABI_MINOR) from the public header."""
    text = (ROOT / "sdk" / "include" / "velo" / "plugin.h").read_text()
    major = int(re.search(r"#define\s+VELO_ABI_MAJOR\s+(\d+)", text).group(1))
    minor = int(re.search(r"#define\s+VELO_ABI_MINOR\s+(\d+)", text).group(1))
    return major, minor


class GenerateResult:
    """What one Generate stream returned."""

    def __init__(self):
        self.ids = []             # concatenated token_ids of all messages
        self.chunks = []          # text of each message, in order
        self.messages = 0
        self.finish_reason = ""
        self.prompt_tokens = None
        self.completion_tokens = None

    @property
    def text(self):
        return "".join(self.chunks)


def generate_request(model, prompt, **params):
    """A GenerateRequest; params are GenerateRequest fields (stop: a list)."""
    stop = params.pop("stop", [])
    req = velo_pb2.GenerateRequest(model=model, prompt=prompt, **params)
    req.stop.extend(stop)
    return req


def generate(stub, model, prompt, timeout=CALL_TIMEOUT_S, **params):
    """Calls Generate and collects the whole stream.  Raises grpc.RpcError."""
    res = GenerateResult()
    for msg in stub.Generate(generate_request(model, prompt, **params), timeout=timeout):
        res.messages += 1
        res.ids.extend(msg.token_ids)
        res.chunks.append(msg.text)
        if msg.finish_reason:
            assert not res.finish_reason, "finish_reason sent twice"
            res.finish_reason = msg.finish_reason
            res.prompt_tokens = msg.prompt_tokens
            res.completion_tokens = msg.completion_tokens
    return res


def greedy(stub, model, prompt, n=64, **params):
    """The reference settings: temperature 0, n tokens, past end-of-generation."""
    return generate(stub, model, prompt, max_tokens=n, temperature=0.0, ignore_eos=True, **params)


def model_counters(channel, model, timeout=CALL_TIMEOUT_S):
    """{name: value} of the engine counters ListModels reports for model
    (ModelInfo.counters; docs/operations.md lists them).  Fails if the model
    is not listed."""
    r = velo_pb2_grpc.ModelsStub(channel).ListModels(velo_pb2.ListModelsRequest(), timeout=timeout)
    info = [m for m in r.models if m.name == model]
    assert info, "model %r not in ListModels: %s" % (model, [m.name for m in r.models])
    return {c.name: c.value for c in info[0].counters}


GENERATE_METHOD = "/velo.v1.TextGeneration/Generate"


def generate_raw(channel, request, timeout=CALL_TIMEOUT_S):
    """Calls Generate with the responses left as bytes, so that a text field
    that is not valid UTF-8 cannot be hidden (or refused) by the protobuf
    library.  Returns a GenerateResult whose chunks are bytes (the text
    field of each message; .text then fails: join them) and whose ids,
    finish_reason and usage are decoded; ids_per_message has the ids of
    each message.  Raises grpc.RpcError."""
    call = channel.unary_stream(GENERATE_METHOD, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=lambda b: b)
    res = GenerateResult()
    res.ids_per_message = []
    for raw in call(request, timeout=timeout):
        res.messages += 1
        n_before = len(res.ids)
        text, final = b"", {}
        for field, wt, v in wire_fields(raw):
            if field == 1:
                text = v
            elif field == 2 and wt == 2:  # packed token_ids
                i = 0
                while i < len(v):
                    x, i = read_varint(v, i)
                    res.ids.append(x)
            elif field == 2:
                res.ids.append(v)
            elif field == 3:
                final["finish_reason"] = v.decode("utf-8")
            elif field in (4, 5):
                final[field] = v
        res.chunks.append(text)
        res.ids_per_message.append(res.ids[n_before:])
        if "finish_reason" in final:
            assert not res.finish_reason, "finish_reason sent twice"
            res.finish_reason = final["finish_reason"]
            res.prompt_tokens = final.get(4, 0)
            res.completion_tokens = final.get(5, 0)
    return res


def expect_error(call, code, *needles):
    """Runs call() (which must consume a whole stream or a unary answer) and
    checks it fails with code and a message containing every needle (a
    string, case-insensitive, or a compiled regex).  Returns the message."""
    err = None
    try:
        call()
    except grpc.RpcError as e:
        err = e
    assert err is not None, "expected %s, but the call succeeded" % code
    assert err.code() == code, "got %s: %s" % (err.code(), err.details())
    msg = err.details() or ""
    for n in needles:
        if isinstance(n, re.Pattern):
            assert n.search(msg), "%r not in the message %r" % (n.pattern, msg)
        else:
            assert n.lower() in msg.lower(), "%r not in the message %r" % (n, msg)
    return msg


def set_param(pmap, key, value):
    """pmap[key] = value as an Open Inference Protocol InferParameter of the
    matching kind (bool, int64, double or string), in the parameters map of
    a message from any copy of the protocol (the build's or oip_ref's)."""
    p = pmap[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    else:
        raise TypeError("parameter %s: unsupported value %r" % (key, value))


# ---- protobuf wire format by hand (for bytes that Python's str fields refuse) ----
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def wire_fields(buf):
    """Decodes a serialized message into [(field number, wire type, value)]:
    an int for varints, raw bytes for length-delimited fields."""
    out, i = [], 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v = bytes(buf[i:i + n])
            i += n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unexpected wire type %d" % wt)
        out.append((field, wt, v))
    return out


def len_field(field, data):
    """A length-delimited field (tag, length, bytes)."""
    return varint(field << 3 | 2) + varint(len(data)) + data


# ---- velod ------------------------------------------------------------------------------
class Velod:
    """One velod process on 127.0.0.1, its output captured in log_path."""

    def __init__(self, args, log_path, env=None):
        self.args = list(args)
        self.log_path = Path(log_path)
        self.env = env or clean_env()
        self.proc = None
        self.port = None
        self.address = None
        self._log = None

    def start(self, ready_timeout=READY_TIMEOUT_S, attempts=3):
        """Starts velod on a free port and waits until its health Check says
        SERVING.  A port taken between the look-up and the bind is retried
        with another one.  Raises RuntimeError (with the log) otherwise."""
        for attempt in range(attempts):
            self.port = free_port()
            self.address = "127.0.0.1:%d" % self.port
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(VELOD), "--listen", self.address] + self.args,
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
            try:
                self.wait_ready(ready_timeout)
                return self
            except RuntimeError:
                exited = self.proc.poll() is not None
                log = self.log()
                self.stop()
                if exited and str(self.port) in log and attempt + 1 < attempts:
                    continue  # most likely the port was taken meanwhile
                raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("velod exited with status %d before it was ready; log:\n%s"
                                   % (self.proc.returncode, self.log()[-4000:]))
            with grpc.insecure_channel(self.address, options=STARTUP_CHANNEL_OPTIONS) as ch:
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=1.0)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = "status %s" % r.status
                except grpc.RpcError as e:
                    last = "%s %s" % (e.code(), e.details())
            time.sleep(0.05)
        raise RuntimeError("velod not SERVING within %.0f s (last: %s); log:\n%s"
                           % (timeout, last, self.log()[-4000:]))

    def channel(self):
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, then SIGKILL after timeout.  Returns the exit status and
        whether SIGKILL was needed."""
        killed = False
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log:
            self._log.close()
            self._log = None
        return (self.proc.returncode if self.proc else None), killed

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, pattern, since=0, timeout=LOG_TIMEOUT_S):
        """Polls the log (from byte offset since) until pattern matches; returns
        the match or None after timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            data = self.log_path.read_bytes()[since:].decode("utf-8", "replace")
            m = rx.search(data)
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.05)


def run_velod_once(args, timeout=30.0):
    """Runs velod to completion (for --list-plugins and start-up failures).
    Returns (exit status, combined output); a velod still running after
    timeout is killed and reported as status None."""
    proc = subprocess.Popen([str(VELOD)] + list(args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env())
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        return None, out.decode("utf-8", "replace")


def run_velo(args, timeout=60.0):
    """Runs the velo CLI.  Returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([str(VELO)] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, env=clean_env())
