"""test_errors.py - bad requests get the right gRPC status and a message that
names the problem, and velod goes on serving: after each bad request a normal
greedy request still returns the reference.
"""
import re

import grpc
import pytest

import harness
from harness import F32, NOBOS, expect_error, velo_pb2

GENERATE = "/velo.v1.TextGeneration/Generate"


@pytest.fixture
def still_serving(stub, prompts):
    """After the test: a normal request is served and is right."""
    yield
    p = prompts[0]
    res = harness.greedy(stub, F32, p["prompt"], 8)
    assert res.ids == p["f32"]["gen_ids"][:8]


def gen(stub, model=F32, prompt="Once upon a time", **params):
    return lambda: harness.generate(stub, model, prompt, **params)


def test_unknown_model(stub, still_serving):
    expect_error(gen(stub, model="no-such-model", max_tokens=4), grpc.StatusCode.NOT_FOUND,
                 "no-such-model")


def test_unknown_model_tokenize(stub, still_serving):
    expect_error(lambda: stub.Tokenize(velo_pb2.TokenizeRequest(model="no-such-model", text="x"),
                                       timeout=harness.CALL_TIMEOUT_S),
                 grpc.StatusCode.NOT_FOUND, "no-such-model")


def test_negative_max_tokens(stub, still_serving):
    expect_error(gen(stub, max_tokens=-5), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens", "-5")


def test_negative_temperature(stub, still_serving):
    expect_error(gen(stub, max_tokens=4, temperature=-0.5), grpc.StatusCode.INVALID_ARGUMENT,
                 "temperature", "-0.5")


@pytest.mark.parametrize("top_p,needles", [(0.0, ("top_p",)), (1.5, ("top_p", "1.5"))])
def test_top_p_out_of_range(stub, still_serving, top_p, needles):
    expect_error(gen(stub, max_tokens=4, top_p=top_p), grpc.StatusCode.INVALID_ARGUMENT, *needles)


def test_prompt_longer_than_context(stub, models_stub, still_serving):
    info = {m.name: m for m in models_stub.ListModels(velo_pb2.ListModelsRequest(),
                                                       timeout=harness.CALL_TIMEOUT_S).models}
    n_ctx = info[F32].context_length
    prompt = " Once upon a time" * (n_ctx // 4 + 8)
    n_prompt = len(stub.Tokenize(velo_pb2.TokenizeRequest(model=F32, text=prompt),
                                 timeout=harness.CALL_TIMEOUT_S).token_ids)
    assert n_prompt > n_ctx
    expect_error(gen(stub, prompt=prompt, max_tokens=4), grpc.StatusCode.INVALID_ARGUMENT,
                 re.compile(r"\b%d\b" % n_prompt), re.compile(r"\b%d\b" % n_ctx))


def test_non_utf8_prompt(channel, still_serving):
    """Python's protobuf refuses invalid UTF-8 in a str field, so the request
    is serialized by hand: the valid fields first, then prompt (field 2)."""
    head = velo_pb2.GenerateRequest(model=F32, max_tokens=4).SerializeToString()
    bad = b"Once upon \xff\xfe a time \xc3"
    raw = head + harness.len_field(2, bad)
    call = channel.unary_stream(GENERATE, request_serializer=lambda b: b,
                                response_deserializer=velo_pb2.GenerateResponse.FromString)
    expect_error(lambda: list(call(raw, timeout=harness.CALL_TIMEOUT_S)),
                 grpc.StatusCode.INVALID_ARGUMENT, re.compile(r"(?i)utf-?8"))


def test_empty_prompt_without_bos(stub, still_serving):
    """A model that adds no BOS token has nothing to start from."""
    expect_error(gen(stub, model=NOBOS, prompt="", max_tokens=4), grpc.StatusCode.INVALID_ARGUMENT,
                 "empty")


def test_nobos_model_tokenizes_without_bos(stub, prompts):
    """The variant really is read as adding no BOS (else the test above
    proves nothing), and it still generates from a non-empty prompt."""
    p = prompts[0]
    r = stub.Tokenize(velo_pb2.TokenizeRequest(model=NOBOS, text=p["prompt"]),
                      timeout=harness.CALL_TIMEOUT_S)
    assert list(r.token_ids) == p["prompt_ids"][1:]
    res = harness.greedy(stub, NOBOS, p["prompt"], 4)
    assert len(res.ids) == 4


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/velo.v1.Nothing/Here", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    expect_error(lambda: call(b"", timeout=10), grpc.StatusCode.UNIMPLEMENTED)
