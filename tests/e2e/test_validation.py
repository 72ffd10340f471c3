"""test_validation.py - velod validates every ModelInfer request in the core,
before a task plugin sees a tensor (issue 3, item 4): each bad request is
INVALID_ARGUMENT with a message that names the input (or the field) and says
what was expected.  After all of them velod is still ready and serves.

Requests go through the tests' own copy of the published protocol
(oip_ref/), mostly to the identity model (which accepts any tensors, so only
the core's checks can refuse them) and, for a required input and a fixed
shape, to the stories260K text-generation model.  Requests that the protobuf
library would not build (a bad BYTES length prefix) are built as raw bytes.
"""
import struct

import grpc
import numpy as np
import pytest

import harness
from oip_ref import client as oip
from oip_ref.client import IDENTITY, TEXTGEN, pb

T = harness.CALL_TIMEOUT_S
# An identity model that declares its inputs (plugins/identity: the
# "inputs" parameter), so that every one of them is required.
DECLARED = "identity-declared"
DECLARED_INPUTS = "INPUT0:FP32:-1,2;INPUT1:INT64:3"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """velod for server_channel and infer (conftest.py), with DECLARED too."""
    root = tmp_path_factory.mktemp("validation")
    repo = oip.make_repository(root / "models")
    oip.write_model(repo, DECLARED, {"task": "identity", "parameters": {"inputs": DECLARED_INPUTS}})
    yield from oip.serve(root, repo=repo)


def refused(infer, req, *needles):
    """req gets INVALID_ARGUMENT, and the message contains every needle
    (case-insensitive).  Returns the message."""
    return harness.expect_error(lambda: infer.ModelInfer(req, timeout=T),
                                grpc.StatusCode.INVALID_ARGUMENT, *needles)


def identity_req(*tensors):
    """An identity request; tensors are (name, datatype, shape, raw bytes)."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    for name, dt, shape, raw in tensors:
        req.inputs.add(name=name, datatype=dt, shape=shape)
        req.raw_input_contents.append(raw)
    return req


F4 = np.arange(4, dtype=np.float32).tobytes()  # FP32 [4]


# ---- datatype and shape -------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP8", "fp32", "FLOAT32", "", "BYTES ", "STRING"])
def test_unknown_datatype(infer, datatype):
    msg = refused(infer, identity_req(("weird", datatype, [4], F4)), "weird", "datatype")
    # The message says what is allowed.
    assert "FP32" in msg, msg


def test_unknown_datatype_in_contents(infer):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="weird", datatype="COMPLEX64", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    refused(infer, req, "weird", "datatype", "COMPLEX64")


@pytest.mark.parametrize("shape", [[-1], [2, -2], [-1, -1], [3, -9223372036854775808]])
def test_negative_dimension(infer, shape):
    refused(infer, identity_req(("neg", "FP32", shape, F4)), "neg", str(min(shape)))


def test_zero_product_shape_where_a_fixed_shape_is_required(infer):
    """text_input is BYTES [1] (ModelMetadata): a shape [0] is refused,
    naming the input and the expected shape."""
    req = pb.ModelInferRequest(model_name=TEXTGEN)
    req.inputs.add(name="text_input", datatype="BYTES", shape=[0])
    req.raw_input_contents.append(b"")
    refused(infer, req, "text_input", "shape")


def test_zero_product_shape_with_contents(infer):
    """A zero-element shape with elements given in contents does not match."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="z", datatype="FP32", shape=[0, 3])
    t.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    refused(infer, req, "z")


@pytest.mark.parametrize("shape", [[2 ** 32, 2 ** 32], [2 ** 62, 4], [2 ** 63 - 1, 2],
                                   [65536] * 5])
def test_element_count_overflow(infer, shape):
    refused(infer, identity_req(("huge", "FP32", shape, F4)), "huge")


def test_too_many_dimensions(infer):
    """More dimensions than velod supports (VELO_MAX_IO_DIMS = 16)."""
    refused(infer, identity_req(("deep", "FP32", [1] * 17, b"\0\0\0\0")), "deep")


def test_byte_size_too_large_for_element_count(infer):
    """Element count times element size overflowing is caught too."""
    refused(infer, identity_req(("big", "INT64", [2 ** 61], b"\0" * 8)), "big")


# ---- raw contents size ------------------------------------------------------------------------
@pytest.mark.parametrize("nbytes", [0, 12, 15, 17, 20])
def test_raw_byte_size_mismatch(infer, nbytes):
    """FP32 [4] needs 16 bytes; the message gives both sizes."""
    msg = refused(infer, identity_req(("x", "FP32", [4], b"\1" * nbytes)), "x", "16")
    assert str(nbytes) in msg, msg


def test_raw_byte_size_message_as_documented(infer):
    """The example of docs/protocol.md, word for word."""
    msg = refused(infer, identity_req(("x", "FP32", [4], b"\1" * 12)))
    assert msg == ("input 'x': raw_input_contents[0] has 12 bytes, but shape [4] of FP32 needs "
                   "16 (4 element(s) x 4 bytes)"), msg


def test_raw_byte_size_mismatch_second_input(infer):
    req = identity_req(("good", "FP32", [4], F4), ("bad", "INT64", [2], b"\0" * 15))
    msg = refused(infer, req, "bad", "16", "15")
    assert "'good'" not in msg and '"good"' not in msg, msg


def test_typed_contents_count_mismatch(infer):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="few", datatype="INT64", shape=[2, 2])
    t.contents.int64_contents.extend([1, 2, 3])
    refused(infer, req, "few", "4", "3")


def test_typed_contents_in_the_wrong_field(infer):
    """FP32 data must be in fp32_contents; int64_contents is not it."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="wrong", datatype="FP32", shape=[2])
    t.contents.int64_contents.extend([1, 2])
    refused(infer, req, "wrong", "fp32_contents")


def test_typed_contents_value_out_of_range(infer):
    """int_contents carries INT8 as int32: 300 does not fit an INT8."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="i8", datatype="INT8", shape=[2])
    t.contents.int_contents.extend([1, 300])
    refused(infer, req, "i8", "300")


# ---- BYTES length prefixes --------------------------------------------------------------------
def le32(n):
    return struct.pack("<I", n)


BAD_BYTES = {
    # a length prefix that runs past the end of the tensor
    "too-long": (le32(3) + b"abc" + le32(100) + b"xyz", [2]),
    # a tensor that ends inside a length prefix
    "truncated-prefix": (le32(3) + b"abc" + b"\x05\x00", [2]),
    # bytes left over after the last element of the shape
    "trailing-bytes": (le32(1) + b"a" + le32(1) + b"b" + b"\xff", [2]),
    # fewer elements than the shape has
    "too-few-elements": (le32(1) + b"a" + le32(1) + b"b", [3]),
    # more elements than the shape has
    "too-many-elements": (le32(1) + b"a" + le32(1) + b"b" + le32(0), [2]),
    # a length that would wrap a 32-bit offset
    "huge-length": (le32(0xFFFFFFFF) + b"abcd", [1]),
}


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bytes_bad_length_prefix(infer, case):
    raw, shape = BAD_BYTES[case]
    refused(infer, identity_req(("strs", "BYTES", shape, raw)), "strs")


def test_bytes_element_count_in_contents(infer):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="strs", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend([b"a", b"b"])
    refused(infer, req, "strs", "3", "2")


def test_text_input_bad_length_prefix(infer):
    """The same check guards the text-generation model's text_input."""
    req = pb.ModelInferRequest(model_name=TEXTGEN)
    req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(le32(50) + b"Once upon")
    refused(infer, req, "text_input")


# ---- inputs as a whole ------------------------------------------------------------------------------
def test_duplicate_input_names(infer):
    req = identity_req(("dup", "FP32", [4], F4), ("other", "FP32", [4], F4),
                       ("dup", "FP32", [4], F4))
    refused(infer, req, "dup")


def declared_req(with0=True, with1=True, shape0=(5, 2), shape1=(3,), dt1="INT64"):
    req = pb.ModelInferRequest(model_name=DECLARED)
    if with0:
        oip.add_input(req, "INPUT0", "FP32", shape0, np.zeros(shape0, dtype=np.float32), True)
    if with1:
        oip.add_input(req, "INPUT1", dt1, shape1,
                      np.zeros(shape1, dtype=oip.DATATYPES[dt1][0]), True)
    return req


def test_declared_inputs_accepted(infer):
    """The declared inputs, -1 matching any size, are served."""
    for n in (0, 1, 7):
        out = oip.outputs(infer.ModelInfer(declared_req(shape0=(n, 2)), timeout=T))
        assert sorted(out) == ["OUTPUT0", "OUTPUT1"] and out["OUTPUT0"].shape == [n, 2]


@pytest.mark.parametrize("missing", ["INPUT0", "INPUT1"])
def test_missing_required_input(infer, missing):
    """A declared input that is not given: the message names it and its
    declared datatype and shape."""
    req = declared_req(with0=missing != "INPUT0", with1=missing != "INPUT1")
    refused(infer, req, "'%s'" % missing, "missing")


def test_missing_text_input(infer):
    """The text-generation model needs text_input; a request with another
    input only is refused, naming text_input."""
    req = pb.ModelInferRequest(model_name=TEXTGEN)
    oip.add_input(req, "prompt", "BYTES", [1], [b"Once upon a time"], raw=True)
    refused(infer, req, "prompt", "text_input")


@pytest.mark.parametrize("shape0,shape1", [((5, 3), (3,)), ((2,), (3,)), ((5, 2), (4,)),
                                           ((5, 2), (1, 3))])
def test_shape_other_than_declared(infer, shape0, shape1):
    bad = "INPUT0" if list(shape0[1:]) != [2] or len(shape0) != 2 else "INPUT1"
    refused(infer, declared_req(shape0=shape0, shape1=shape1), "'%s'" % bad, "shape")


def test_datatype_other_than_declared(infer):
    refused(infer, declared_req(dt1="INT32"), "'INPUT1'", "INT64", "INT32")


def test_no_inputs(infer):
    refused(infer, pb.ModelInferRequest(model_name=IDENTITY), "input")


def test_no_inputs_text_generation(infer):
    refused(infer, pb.ModelInferRequest(model_name=TEXTGEN), "text_input")


def test_both_contents_and_raw(infer):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    t = req.inputs.add(name="both", datatype="FP32", shape=[4])
    t.contents.fp32_contents.extend([0.0, 1.0, 2.0, 3.0])
    req.raw_input_contents.append(F4)
    refused(infer, req, "both", "raw_input_contents")


def test_contents_on_one_raw_on_another(infer):
    """raw_input_contents given: no input may carry contents."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    req.inputs.add(name="r", datatype="FP32", shape=[4])
    t = req.inputs.add(name="c", datatype="FP32", shape=[4])
    t.contents.fp32_contents.extend([0.0, 1.0, 2.0, 3.0])
    req.raw_input_contents.append(F4)
    refused(infer, req, "raw_input_contents")


@pytest.mark.parametrize("n_inputs,n_raw", [(2, 1), (1, 2), (3, 2)])
def test_raw_count_differs_from_inputs(infer, n_inputs, n_raw):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    for i in range(n_inputs):
        req.inputs.add(name="in%d" % i, datatype="FP32", shape=[4])
    for _ in range(n_raw):
        req.raw_input_contents.append(F4)
    msg = refused(infer, req, "raw_input_contents")
    assert str(n_inputs) in msg and str(n_raw) in msg, msg


def test_empty_input_name(infer):
    refused(infer, identity_req(("", "FP32", [4], F4)), "name")


def test_wrong_datatype_for_model_input(infer):
    """text_input is BYTES: FP32 is refused, naming both."""
    req = pb.ModelInferRequest(model_name=TEXTGEN)
    oip.add_input(req, "text_input", "FP32", [1], np.array([1.0], dtype=np.float32), raw=True)
    refused(infer, req, "text_input", "BYTES")


def test_no_data_for_a_non_empty_tensor(infer):
    req = pb.ModelInferRequest(model_name=IDENTITY)
    req.inputs.add(name="nodata", datatype="FP32", shape=[2, 3])
    refused(infer, req, "nodata", "6")


def test_validation_on_the_stream(infer):
    """On ModelStreamInfer a bad request gets the same message as
    error_message "INVALID_ARGUMENT: ...", with its id, and the stream goes
    on: the good requests sent after it on the same stream are served."""
    bad = identity_req(("x", "FP32", [4], b"\1" * 12))
    bad.id = "bad-1"
    dup = identity_req(("d", "FP32", [4], F4), ("d", "FP32", [4], F4))
    dup.id = "bad-2"
    good = identity_req(("x", "FP32", [4], F4))
    good.id = "good-1"
    res = oip.stream_infer(infer, [bad, dup, good])
    e1, e2 = res["bad-1"].errors, res["bad-2"].errors
    assert e1 == ["INVALID_ARGUMENT: input 'x': raw_input_contents[0] has 12 bytes, but shape [4] "
                  "of FP32 needs 16 (4 element(s) x 4 bytes)"], e1
    assert len(e2) == 1 and e2[0].startswith("INVALID_ARGUMENT: ") and "'d'" in e2[0], e2
    assert not res["bad-1"].responses and not res["bad-2"].responses
    assert not res["good-1"].errors and len(res["good-1"].responses) == 1
    out = oip.outputs(res["good-1"].responses[0])
    assert out["x"].raw == F4


# ---- sampling parameters outside the range of a 32-bit float ----------------------------------
@pytest.mark.parametrize("key,value", [("temperature", 1e300), ("top_p", 1e-300),
                                       ("repeat_penalty", 1e-300), ("min_p", 1e-45),
                                       ("temperature", -1e39)])
def test_sampling_parameter_outside_float_range(infer, key, value):
    """The sampler works in float32: a DOUBLE that would become infinity or
    underflow there is refused, never silently turned into greedy or 0."""
    req = oip.text_request(TEXTGEN, "Once upon a time", max_tokens=4, **{key: value})
    refused(infer, req, key, "32-bit float")


# ---- and afterwards ------------------------------------------------------------------------------
def test_zz_still_ready_and_serving(server, server_channel, infer, prompts):
    """Runs last in this module (pytest keeps file order): after every bad
    request above, velod is alive, ready, and serves both models."""
    assert server.alive()
    oip.still_serving(server_channel)
    p = prompts[0]
    r = infer.ModelInfer(oip.text_request(TEXTGEN, p["prompt"], max_tokens=8, temperature=0.0,
                                          ignore_eos=True), timeout=T)
    text = oip.outputs(r)["text_output"].value[0].decode("utf-8")
    assert text == harness.pieces_text(p["f32"]["gen_pieces_hex"], 8)
