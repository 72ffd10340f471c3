"""test_cancel.py - a client that cancels, or whose deadline passes, stops its
generation: velod's log shows the request cancelled after far fewer tokens
than it asked for, within a bounded time, and the next request is served at
once and is right.
"""
import time

import grpc
import pytest

import harness
from harness import F32

# The line the text-generation plugin logs when a request ends early, e.g.
# "request 7 cancelled after 12 tokens".
CANCEL_LINE = r"cancel+ed after (\d+) tokens?"
LONG = 1_000_000  # clamped to the context: about 2000 tokens


def next_request_is_prompt(stub, prompts, bound_s=10.0):
    """A normal request right after: it is answered correctly, within bound_s."""
    p = prompts[1]
    t0 = time.monotonic()
    res = harness.greedy(stub, F32, p["prompt"], 16)
    elapsed = time.monotonic() - t0
    assert res.ids == p["f32"]["gen_ids"][:16]
    assert elapsed < bound_s, "the next request took %.1f s" % elapsed


def test_client_cancel_stops_generation(stub, velod, prompts):
    since = velod.log_size()
    call = stub.Generate(harness.generate_request(F32, "Once upon a time", max_tokens=LONG,
                                                  temperature=0.0, ignore_eos=True),
                         timeout=300)
    received = []
    for msg in call:
        received.extend(msg.token_ids)
        if len(received) >= 3:
            break
    assert len(received) >= 3, "the stream ended after %d tokens" % len(received)
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED

    m = velod.wait_for_log(CANCEL_LINE, since=since)
    assert m, "no cancellation line (%r) in velod's log within %.0f s; log since:\n%s" % (
        CANCEL_LINE, harness.LOG_TIMEOUT_S, velod.log()[since:][-3000:])
    n = int(m.group(1))
    assert 3 <= n < 2000, "cancelled after %d tokens" % n
    next_request_is_prompt(stub, prompts)


def test_deadline_exceeded(stub, velod, prompts):
    # How long the long request takes when left alone; the deadline is a
    # fraction of it, so the test does not depend on the machine's speed.
    t0 = time.monotonic()
    full = harness.greedy(stub, F32, "Once upon a time", LONG, timeout=300)
    t_full = time.monotonic() - t0
    assert full.finish_reason == "length"
    deadline = min(0.5, t_full / 5)

    since = velod.log_size()
    with pytest.raises(grpc.RpcError) as info:
        harness.greedy(stub, F32, "Once upon a time", LONG, timeout=deadline)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    m = velod.wait_for_log(CANCEL_LINE, since=since)
    assert m, "no cancellation line after the deadline (full run took %.2f s, deadline %.3f s)" % (
        t_full, deadline)
    assert int(m.group(1)) < len(full.ids)
    next_request_is_prompt(stub, prompts)
    assert velod.alive()


def test_server_survives_abrupt_disconnect(velod, prompts):
    """A client that goes away mid-stream (its channel closed) harms nobody."""
    ch = velod.channel()
    stub = harness.velo_pb2_grpc.TextGenerationStub(ch)
    call = stub.Generate(harness.generate_request(F32, "Once upon a time", max_tokens=LONG,
                                                  temperature=0.0, ignore_eos=True), timeout=300)
    next(iter(call))
    ch.close()
    with velod.channel() as ch2:
        next_request_is_prompt(harness.velo_pb2_grpc.TextGenerationStub(ch2), prompts)
    assert velod.alive()
