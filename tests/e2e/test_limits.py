"""test_limits.py - the message size limits, --max-receive-message-bytes and
--max-send-message-bytes (default 8 MiB each, not gRPC's 4 MiB).

- An identity ModelInfer of about 11 MB is refused with the default limits
  (RESOURCE_EXHAUSTED naming --max-receive-message-bytes and both sizes); with
  only the receive limit raised its 11 MB answer is refused naming
  --max-send-message-bytes; with both raised it comes back bit for bit.  The
  same holds for velo.v1 (Tokenize and Generate with an 11 MB text).
- The limits are exact (a request of exactly N bytes passes, N + 1 does not),
  apply to every method, streamed ones included (Generate, Health/Watch,
  reflection streams), and an over-limit call never harms the server.
"""
import numpy as np
import grpc
import pytest

import harness
from harness import F32, health_pb2, health_pb2_grpc, velo_pb2, velo_pb2_grpc
from grpc_reflection.v1 import reflection_pb2, reflection_pb2_grpc
from oip_ref import client as oip
from oip_ref.client import IDENTITY, pb

MIB = 1 << 20
DEFAULT_LIMIT = 8 * MIB
BIG_ELEMENTS = 11 * MIB // 4          # FP32 elements: 11 MiB of tensor data
BIG_TEXT = 11 * MIB                   # bytes of text
T = 120                               # an 11 MB call on a slow machine
# The client must not be the one that refuses.
CLIENT_OPTIONS = harness.CHANNEL_OPTIONS + [("grpc.max_send_message_length", 64 * MIB),
                                            ("grpc.max_receive_message_length", 64 * MIB)]


def channel_to(server):
    return grpc.insecure_channel(server.address, options=CLIENT_OPTIONS)


def expect(fn, code, *needles):
    err = oip.error_of(fn)
    assert err.code() == code, "got %s: %s" % (err.code(), err.details())
    for n in needles:
        assert n in err.details(), "%r not in %r" % (n, err.details())
    return err.details()


def big_infer_request():
    req = pb.ModelInferRequest(model_name=IDENTITY)
    x = np.arange(BIG_ELEMENTS, dtype=np.float32)
    oip.add_input(req, "x", "FP32", x.shape, x, raw=True)
    return req, x


def big_text():
    sentence = "Once upon a time there was a little girl named Lily. "
    return (sentence * (BIG_TEXT // len(sentence) + 1))[:BIG_TEXT]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return oip.make_repository(tmp_path_factory.mktemp("limits") / "models")


def start(repo, tmp_path, *options):
    return oip.start_velod(repo, tmp_path / "velod.log",
                           "--model", "%s=%s" % (F32, harness.MODEL_F32), *options)


# ---- about 11 MB, the Done-when check ----------------------------------------------------
def test_identity_11mb_refused_by_default_then_accepted(repo, tmp_path):
    req, x = big_infer_request()
    size = req.ByteSize()
    assert 11 * MIB <= size < 12 * MIB

    server = start(repo, tmp_path)
    try:
        with channel_to(server) as ch:
            expect(lambda: oip.stub(ch).ModelInfer(req, timeout=T),
                   grpc.StatusCode.RESOURCE_EXHAUSTED,
                   "request message is %d bytes, over --max-receive-message-bytes %d"
                   % (size, DEFAULT_LIMIT))
            oip.still_serving(ch)
    finally:
        assert server.stop() == (0, False)

    # The receive limit alone: the request passes, its 11 MB answer does not.
    server = start(repo, tmp_path, "--max-receive-message-bytes", str(16 * MIB))
    try:
        with channel_to(server) as ch:
            expect(lambda: oip.stub(ch).ModelInfer(req, timeout=T),
                   grpc.StatusCode.RESOURCE_EXHAUSTED, "response message is",
                   "over --max-send-message-bytes %d" % DEFAULT_LIMIT)
            oip.still_serving(ch)
    finally:
        assert server.stop() == (0, False)

    server = start(repo, tmp_path, "--max-receive-message-bytes", str(16 * MIB),
                   "--max-send-message-bytes", str(16 * MIB))
    try:
        with channel_to(server) as ch:
            out = oip.outputs(oip.stub(ch).ModelInfer(req, timeout=T))
            assert np.array_equal(out["x"].value, x)
            # velo.v1 with the same limits: an 11 MB text is tokenized.
            ids = velo_pb2_grpc.TextGenerationStub(ch).Tokenize(
                velo_pb2.TokenizeRequest(model=F32, text=big_text()), timeout=T).token_ids
            assert len(ids) > BIG_TEXT // 8
            oip.still_serving(ch)
    finally:
        assert server.stop() == (0, False)


def test_velo_v1_11mb_refused_with_default_limits(velod):
    """The shared velod runs with the defaults: Tokenize and Generate with an
    11 MB text are refused before any model sees them."""
    text = big_text()
    with channel_to(velod) as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        tok = velo_pb2.TokenizeRequest(model=F32, text=text)
        expect(lambda: stub.Tokenize(tok, timeout=T), grpc.StatusCode.RESOURCE_EXHAUSTED,
               "request message is %d bytes, over --max-receive-message-bytes %d"
               % (tok.ByteSize(), DEFAULT_LIMIT))
        gen = velo_pb2.GenerateRequest(model=F32, prompt=text, max_tokens=1)
        expect(lambda: list(stub.Generate(gen, timeout=T)), grpc.StatusCode.RESOURCE_EXHAUSTED,
               "request message is %d bytes, over --max-receive-message-bytes %d"
               % (gen.ByteSize(), DEFAULT_LIMIT))
        p = "Once upon a time"
        assert harness.generate(stub, F32, p, max_tokens=4).completion_tokens == 4


# ---- small limits: exact boundaries, every kind of call -----------------------------------
@pytest.fixture(scope="module")
def tight(repo, tmp_path_factory):
    """A velod that accepts requests up to 1000 bytes and sends responses of
    at most 4 bytes (a health answer is 2)."""
    server = start(repo, tmp_path_factory.mktemp("tight"), "--max-receive-message-bytes", "1000",
                   "--max-send-message-bytes", "4")
    yield server
    assert server.stop() == (0, False)


def test_receive_limit_is_exact(tight):
    with channel_to(tight) as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        at_limit = velo_pb2.TokenizeRequest(model="m" * 997)
        assert at_limit.ByteSize() == 1000
        expect(lambda: stub.Tokenize(at_limit, timeout=T), grpc.StatusCode.NOT_FOUND,
               "is not loaded")
        over = velo_pb2.TokenizeRequest(model="m" * 998)
        expect(lambda: stub.Tokenize(over, timeout=T), grpc.StatusCode.RESOURCE_EXHAUSTED,
               "request message is 1001 bytes, over --max-receive-message-bytes 1000")


def test_send_limit_every_kind_of_call(tight):
    with channel_to(tight) as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        send = "over --max-send-message-bytes 4"
        expect(lambda: stub.Tokenize(velo_pb2.TokenizeRequest(model=F32, text="Once upon"),
                                     timeout=T),
               grpc.StatusCode.RESOURCE_EXHAUSTED, "response message is", send)
        # A stream: the first message is too big, the call ends with the
        # error and generation stops.
        expect(lambda: harness.generate(stub, F32, "Once upon a time", max_tokens=50),
               grpc.StatusCode.RESOURCE_EXHAUSTED, "response message is", send)
        expect(lambda: oip.stub(ch).ModelMetadata(pb.ModelMetadataRequest(name=IDENTITY),
                                                  timeout=T),
               grpc.StatusCode.RESOURCE_EXHAUSTED, send)
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        expect(lambda: list(refl.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T)),
            grpc.StatusCode.RESOURCE_EXHAUSTED, send)
        # Health answers fit: Check and Watch still work.
        health = health_pb2_grpc.HealthStub(ch)
        ok = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=T).status == ok
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=T)
        assert next(watch).status == ok
        watch.cancel()


def test_streamed_requests_are_limited_too(tight):
    """Each message of a client stream (here reflection) is checked."""
    with channel_to(tight) as ch:
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        big = reflection_pb2.ServerReflectionRequest(file_containing_symbol="x" * 2000)
        expect(lambda: list(refl.ServerReflectionInfo(iter([big]), timeout=T)),
               grpc.StatusCode.RESOURCE_EXHAUSTED,
               "request message is %d bytes, over --max-receive-message-bytes 1000"
               % big.ByteSize())


def test_far_over_the_limit_is_refused_by_grpc(tight):
    """Beyond 2 x the limit + 1 MiB gRPC itself refuses the request (its own
    message; velod never sees it); the server goes on."""
    with channel_to(tight) as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        huge = velo_pb2.TokenizeRequest(model=F32, text="a" * (2 * MIB))
        expect(lambda: stub.Tokenize(huge, timeout=T), grpc.StatusCode.RESOURCE_EXHAUSTED)
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=T).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_limit_options_are_validated():
    for opt in ("--max-receive-message-bytes", "--max-send-message-bytes"):
        for bad in ("0", "-1", "2147483648", "8MiB", ""):
            code, out = harness.run_velod_once([opt, bad])
            assert code == 2, (opt, bad, out)
            assert "%s expects an integer from 1 to 2147483647" % opt in out, out
