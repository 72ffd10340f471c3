"""test_admission.py - admission and back-pressure of the text-generation
engine: a bounded wait queue per model (model config max_queue_size), the
running limit (max_active), deadlines honoured while a request waits, and
per-request priority (docs/repository.md, docs/protocol.md).

One velod serves stories260K as "stories" with max_active 1 and
max_queue_size 2, and a context of 8192 tokens so that one long request
(max_tokens huge, ignore_eos) runs for many seconds: long enough for the
others to be queued behind it.  Every long request is cancelled by the test
once it has served its purpose, so no test waits for one to finish.
"""
import threading
import time

import grpc
import pytest

import harness
from harness import velo_pb2_grpc
from oip_ref import client as oip

MODEL = "stories"
LONG = 1_000_000          # clamped to the context: about 32000 tokens (many seconds)
QUEUE_SETTLE_S = 1.0      # for calls just opened to reach the model's queue
T = harness.CALL_TIMEOUT_S


def make_repo(root, parameters, context_length=32768):
    root = oip.write_model(root, MODEL, {"task": "text-generation", "file": "model.gguf",
                                         "context_length": context_length,
                                         "parameters": parameters},
                           gguf=harness.MODEL_F32).parent
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("admission")
    repo = make_repo(root / "models", {"max_queue_size": 2, "max_active": 1})
    yield from oip.serve(root, repo=repo)


class Long:
    """A long streaming Generate call, started at once; reads its stream on
    a thread and records when the first message came and how it ended."""

    def __init__(self, textgen, prompt="Once upon a time", **params):
        self.call = textgen.Generate(harness.generate_request(
            MODEL, prompt, max_tokens=LONG, temperature=0.0, ignore_eos=True, **params), timeout=300)
        self.first = threading.Event()
        self.done = threading.Event()
        self.code = None
        self.n = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for msg in self.call:
                self.n += len(msg.token_ids)
                self.first.set()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
        finally:
            self.done.set()

    def running(self, timeout=T):
        assert self.first.wait(timeout), "no first message within %.0f s" % timeout
        return self

    def cancel(self):
        self.call.cancel()
        assert self.done.wait(T), "the cancelled call did not end"


def short_ok(textgen, n=4, timeout=T):
    res = harness.greedy(textgen, MODEL, "Once upon a time", n, timeout=timeout)
    assert res.finish_reason == "length" and len(res.ids) == n, (res.finish_reason, res.ids)
    return res


def wait_served(textgen, bound_s=20.0):
    """A short request succeeds (retrying while the queue drains)."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            return short_ok(textgen)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_queue_overflow_is_resource_exhausted(textgen, server):
    a = Long(textgen).running()
    waiting = [Long(textgen), Long(textgen)]
    try:
        time.sleep(QUEUE_SETTLE_S)
        msg = harness.expect_error(
            lambda: short_ok(textgen), grpc.StatusCode.RESOURCE_EXHAUSTED,
            "model 'stories' has 2 requests waiting", "max_queue_size 2", "1 running",
            "try again later")
        assert not a.done.is_set(), "the long request ended early (%s)" % a.code
        # The refused request was never queued: the waiting ones still wait.
        assert not any(w.first.is_set() for w in waiting), msg
    finally:
        # The waiting ones first: cancelled while the long one still holds
        # the only slot, they can never have run.
        for c in waiting + [a]:
            c.cancel()
    assert a.code == grpc.StatusCode.CANCELLED
    assert all(w.code == grpc.StatusCode.CANCELLED for w in waiting), [w.code for w in waiting]
    assert all(w.n == 0 for w in waiting), "a queued request was run before it was cancelled"
    wait_served(textgen)
    assert server.alive()


def test_deadline_honoured_while_queued(textgen, server):
    a = Long(textgen).running()
    try:
        since = server.log_size()
        t0 = time.monotonic()
        harness.expect_error(lambda: short_ok(textgen, timeout=1.0),
                             grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - t0 < 5.0
        m = server.wait_for_log(r"request \d+ cancelled while waiting for admission; it left the "
                                r"queue", since=since)
        assert m, "velod's log does not show the request leaving the queue:\n%s" % (
            server.log()[since:][-3000:])
        # It left while the long request was still running, not at admission.
        assert not a.done.is_set(), "the long request ended (%s) before the check" % a.code
    finally:
        a.cancel()
    wait_served(textgen)


# Tokens of each prioritized request: with max_active 1 the second one starts
# only when the first has ended, so its completion comes PRIO_TOKENS engine
# steps later; 4 tokens (a few ms) let client-side thread jitter reorder the
# completions on a loaded machine.
PRIO_TOKENS = 64


def _infer_short(server, priority):
    """A short greedy request through the Open Inference Protocol."""
    with server.channel() as ch:
        req = oip.text_request(MODEL, "Once upon a time", max_tokens=PRIO_TOKENS, temperature=0.0,
                               ignore_eos=True, priority=priority)
        oip.stub(ch).ModelInfer(req, timeout=T)


def _generate_short(server, priority):
    """The same request through velo.v1 Generate (GenerateRequest.priority)."""
    with server.channel() as ch:
        req = harness.generate_request(MODEL, "Once upon a time", max_tokens=PRIO_TOKENS,
                                       temperature=0.0, ignore_eos=True, priority=priority)
        list(velo_pb2_grpc.TextGenerationStub(ch).Generate(req, timeout=T))


@pytest.mark.parametrize("send", [_infer_short, _generate_short], ids=["oip", "velo_v1"])
def test_priority_admits_higher_first(server, textgen, send):
    a = Long(textgen).running()
    order = []
    lock = threading.Lock()
    errors = []

    def run(tag, priority):
        try:
            send(server, priority)
            with lock:
                order.append(tag)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    low = threading.Thread(target=run, args=("low", 0))
    high = threading.Thread(target=run, args=("high", 5))
    try:
        low.start()
        time.sleep(QUEUE_SETTLE_S)   # low is queued first
        high.start()
        time.sleep(QUEUE_SETTLE_S)
        assert not order, "a queued request ran while the long one held the only slot: %s" % order
    finally:
        a.cancel()
    low.join(T)
    high.join(T)
    assert not errors, errors
    assert order == ["high", "low"], order


@pytest.mark.parametrize("parameters,needles", [
    ({"colour": 1}, ["unknown parameter 'colour'", "max_queue_size", "max_active"]),
    ({"max_active": 0}, ["max_active", "from 1 to 256"]),
    ({"max_active": 300}, ["max_active", "300"]),
    ({"max_queue_size": -1}, ["max_queue_size", "-1", "from 0 to"]),
    ({"max_queue_size": "lots"}, ["max_queue_size", "lots"]),
])
def test_bad_model_parameters_refused_at_load(tmp_path, parameters, needles):
    repo = make_repo(tmp_path / "models", parameters)
    code, out = harness.run_velod_once(["--listen", "127.0.0.1:%d" % harness.free_port(),
                                        "--model-repository", str(repo),
                                        "--model-control", "none"])
    assert code == 1, "status %s; output:\n%s" % (code, out[-3000:])
    for n in needles:
        assert n in out, "%r not in velod's output:\n%s" % (n, out[-3000:])


def test_string_parameters_and_zero_queue(tmp_path):
    """Numeric strings are accepted; max_queue_size 0 allows no waiting
    beyond the running requests."""
    repo = make_repo(tmp_path / "models", {"max_queue_size": "0", "max_active": "1"})
    v = oip.start_velod(repo, tmp_path / "velod.log")
    try:
        with v.channel() as ch:
            textgen = velo_pb2_grpc.TextGenerationStub(ch)
            a = Long(textgen).running()
            try:
                harness.expect_error(lambda: short_ok(textgen), grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     "0 requests waiting (max_queue_size 0) and 1 running")
            finally:
                a.cancel()
            wait_served(textgen)
    finally:
        code, killed = v.stop()
    assert not killed and code == 0
