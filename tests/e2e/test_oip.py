"""test_oip.py - conformance of velod's inference.GRPCInferenceService (the
Open Inference Protocol, KServe v2, with Triton's streaming extension),
called through stubs generated from the tests' own copy of the published
protocol (oip_ref/oipref/grpc_service.proto), not from proto/inference/, so
that drift between velod's definition and the published one shows here.

One velod for the module, serving a temporary model repository with the
identity model and stories260K as a text-generation model.  Checked:
every message, field and method of the published definition is in velod's
own (as its server reflection describes it) with the same numbers and types;
ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata; identity
round trips for FP32, INT64, BOOL, BYTES and FP16 tensors as typed contents
and as raw_input_contents, compared bit for bit (FP16 has no typed field: it
is raw only, and typed FP16 is refused), plus the other datatypes, empty and
scalar tensors; text generation through ModelInfer and ModelStreamInfer
(chunks concatenated, the last response flagged final) equal to velo.v1
Generate and to llama.cpp's reference text; errors on a stream that goes on.
"""
import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

import harness
from oip_ref import client as oip
from oip_ref.client import IDENTITY, TEXTGEN, pb

T = harness.CALL_TIMEOUT_S
N_TOKENS = 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """velod for server_channel, infer and textgen (conftest.py)."""
    yield from oip.serve(tmp_path_factory.mktemp("oip"))


# ---- the definition on the wire ------------------------------------------------------
def velod_descriptors(channel, symbol):
    """The FileDescriptorProtos velod's reflection gives for symbol (the file
    declaring it and its imports), by name."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=T))
    assert resp.HasField("file_descriptor_response"), resp
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in resp.file_descriptor_response.file_descriptor_proto]
    return {f.name: f for f in files}


def messages_of(files):
    """{full message name: DescriptorProto} over files, nested ones too."""
    out = {}

    def walk(prefix, msgs):
        for m in msgs:
            name = "%s.%s" % (prefix, m.name)
            out[name] = m
            walk(name, m.nested_type)

    for f in files:
        walk(f.package, f.message_type)
    return out


def test_velod_serves_the_published_definition(server_channel):
    """Every message, field and method of our transcription of the published
    protocol is in velod's definition (as its reflection describes it) with
    the same number, type, label and streaming: no drift.  velod may have
    more (newer published fields)."""
    theirs_files = velod_descriptors(server_channel, "inference.GRPCInferenceService")
    ours_file = descriptor_pb2.FileDescriptorProto()
    oip.pb.DESCRIPTOR.CopyToProto(ours_file)
    assert ours_file.package == "inference"
    theirs, ours = messages_of(theirs_files.values()), messages_of([ours_file])
    problems = []
    for name, m in sorted(ours.items()):
        t = theirs.get(name)
        if t is None:
            problems.append("message %s is missing" % name)
            continue
        by_number = {f.number: f for f in t.field}
        for f in m.field:
            g = by_number.get(f.number)
            if g is None:
                problems.append("%s: field %d (%s) is missing" % (name, f.number, f.name))
                continue
            mine = (f.name, f.type, f.label, f.type_name.lstrip("."))
            velods = (g.name, g.type, g.label, g.type_name.lstrip("."))
            if mine != velods:
                problems.append("%s field %d: published %s, velod %s" % (name, f.number, mine,
                                                                          velods))
            if f.HasField("oneof_index") != g.HasField("oneof_index"):
                problems.append("%s.%s: oneof membership differs" % (name, f.name))
    services = {"%s.%s" % (f.package, sv.name): sv for f in theirs_files.values()
                for sv in f.service}
    svc = services.get("inference.GRPCInferenceService")
    assert svc is not None, sorted(services)
    methods = {mt.name: mt for mt in svc.method}
    for mt in ours_file.service[0].method:
        g = methods.get(mt.name)
        if g is None:
            problems.append("method %s is missing" % mt.name)
            continue
        for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
            a, b = getattr(mt, attr), getattr(g, attr)
            if isinstance(a, str):
                a, b = a.lstrip("."), b.lstrip(".")
            if a != b:
                problems.append("method %s %s: published %r, velod %r" % (mt.name, attr, a, b))
    assert not problems, "velod's inference protocol differs from the published one:\n  " + \
        "\n  ".join(problems)


# ---- health and metadata -----------------------------------------------------------------
def test_server_live_and_ready(infer):
    assert infer.ServerLive(pb.ServerLiveRequest(), timeout=T).live is True
    assert infer.ServerReady(pb.ServerReadyRequest(), timeout=T).ready is True


@pytest.mark.parametrize("model", [IDENTITY, TEXTGEN])
def test_model_ready(infer, model):
    assert infer.ModelReady(pb.ModelReadyRequest(name=model), timeout=T).ready is True


@pytest.mark.parametrize("name,version,expected", [
    (IDENTITY, "1", True), (TEXTGEN, "1", True), (IDENTITY, "2", False),
    ("no-such-model", "", False), ("no-such-model", "1", False)])
def test_model_ready_versions_and_unknown_models(infer, name, version, expected):
    """velod serves version "1" of each model; an unknown model or version
    is not ready (false, not an error: docs/protocol.md)."""
    r = infer.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=T)
    assert r.ready is expected


def test_model_ready_empty_name(infer):
    e = oip.error_of(infer.ModelReady, pb.ModelReadyRequest(name=""), timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "name" in e.details(), e.details()


def test_server_metadata(infer):
    r = infer.ServerMetadata(pb.ServerMetadataRequest(), timeout=T)
    assert r.name == "velo", r.name
    assert r.version, "ServerMetadata.version is empty"
    ext = list(r.extensions)
    assert len(ext) == len(set(ext)), "extensions listed twice: %s" % ext
    assert all(e and e == e.strip() for e in ext), ext
    # The extensions velod implements, by the names Triton clients look for.
    for name in ("model_repository", "statistics", "parameters"):
        assert name in ext, "extension %r not in %s" % (name, ext)


def tensor_meta(tensors):
    return {t.name: (t.datatype, list(t.shape)) for t in tensors}


def test_model_metadata_text_generation(infer):
    r = infer.ModelMetadata(pb.ModelMetadataRequest(name=TEXTGEN), timeout=T)
    assert r.name == TEXTGEN
    assert r.platform == "velo_textgen", r.platform
    assert list(r.versions) == ["1"], r.versions
    ins, outs = tensor_meta(r.inputs), tensor_meta(r.outputs)
    assert ins.get("text_input") == ("BYTES", [1]), ins
    assert "text_output" in outs, outs
    dt, shape = outs["text_output"]
    assert dt == "BYTES"
    assert len(shape) == 1 and shape[0] in (1, -1), "text_output shape %s" % shape
    assert outs.get("token_ids") == ("INT32", [-1]), outs
    for name, (dt, shape) in list(ins.items()) + list(outs.items()):
        assert dt in oip.DATATYPES, "%s: datatype %r is not a protocol datatype" % (name, dt)
        assert all(d == -1 or d >= 0 for d in shape), "%s: shape %s" % (name, shape)


def test_model_metadata_identity(infer):
    r = infer.ModelMetadata(pb.ModelMetadataRequest(name=IDENTITY), timeout=T)
    assert r.name == IDENTITY
    assert r.platform == "velo_identity", r.platform
    assert list(r.versions) == ["1"], r.versions
    for t in list(r.inputs) + list(r.outputs):
        assert t.datatype in oip.DATATYPES or t.datatype == "BF16", t
        assert all(d == -1 or d >= 0 for d in t.shape), t


@pytest.mark.parametrize("name,version", [("no-such-model", ""), (IDENTITY, "2")])
def test_model_metadata_unknown_model_or_version(infer, name, version):
    e = oip.error_of(infer.ModelMetadata, pb.ModelMetadataRequest(name=name, version=version),
                     timeout=T)
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert name in e.details(), e.details()
    if version:
        assert "'%s'" % version in e.details(), e.details()


# ---- identity round trips ----------------------------------------------------------------
def sample(datatype):
    """(shape, value) with edge values of the datatype."""
    if datatype == "FP32":
        v = np.array([[0.0, -0.0, 1.5, -2.25], [np.inf, -np.inf, np.nan, 1e-45],
                      [3.4028235e38, -1.1754944e-38, 0.1, 7.0]], dtype=np.float32)
    elif datatype == "FP16":
        v = np.array([[0.0, -0.0, 1.0, -2.5, 65504.0], [np.inf, -np.inf, np.nan, 6e-8, 0.333]],
                     dtype=np.float16)
    elif datatype == "INT64":
        v = np.array([[np.iinfo(np.int64).min, -1, 0], [1, 2 ** 40, np.iinfo(np.int64).max]],
                     dtype=np.int64)
    elif datatype == "BOOL":
        v = np.array([[True, False, True], [False, False, True]], dtype=np.bool_)
    elif datatype == "BYTES":
        v = [b"", b"hello", b"\x00\xff\x01 binary", "h\u00e9llo \u2603".encode("utf-8"),
             b"x" * 300, b"last"]
        return [2, 3], v
    else:
        raise AssertionError(datatype)
    return list(v.shape), v


def check_same(datatype, got, sent):
    if datatype == "BYTES":
        assert got.value == list(sent)
    else:
        a = got.value
        assert a.dtype == np.dtype(oip.DATATYPES[datatype][0]), a.dtype
        assert list(a.shape) == list(np.shape(sent))
        assert a.tobytes() == np.ascontiguousarray(sent).tobytes(), "%s != %s" % (a, sent)


@pytest.mark.parametrize("form", ["contents", "raw"])
@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL", "BYTES", "FP16"])
def test_identity_round_trip(infer, datatype, form):
    if datatype == "FP16" and form == "contents":
        pytest.skip("FP16 has no typed contents field: the protocol sends it raw only "
                    "(test_fp16_as_contents_is_refused)")
    shape, value = sample(datatype)
    req = pb.ModelInferRequest(model_name=IDENTITY, id="rt-%s-%s" % (datatype, form))
    oip.add_input(req, "in0", datatype, shape, value, raw=(form == "raw"))
    r = infer.ModelInfer(req, timeout=T)
    assert r.model_name == IDENTITY
    assert r.model_version == "1"
    assert r.id == req.id
    out = oip.outputs(r)
    assert set(out) == {"in0"}, sorted(out)
    o = out["in0"]
    assert o.datatype == datatype
    assert o.shape == shape
    check_same(datatype, o, value)


def test_fp16_as_contents_is_refused(infer):
    """FP16 has no typed field: an FP16 input must come as raw bytes."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    req.inputs.add(name="half", datatype="FP16", shape=[2])
    req.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    e = oip.error_of(infer.ModelInfer, req, timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "half" in e.details(), e.details()


@pytest.mark.parametrize("form", ["contents", "raw"])
def test_identity_several_inputs(infer, form):
    """Several inputs of different datatypes in one request come back in
    order, each with its own name, datatype, shape and bytes."""
    raw = form == "raw"
    tensors = [("a", "FP32", *sample("FP32")), ("b", "INT64", *sample("INT64")),
               ("c", "BYTES", *sample("BYTES")), ("d", "BOOL", *sample("BOOL"))]
    if raw:
        tensors.append(("e", "FP16", *sample("FP16")))
    req = pb.ModelInferRequest(model_name=IDENTITY)
    for name, dt, shape, value in tensors:
        oip.add_input(req, name, dt, shape, value, raw)
    r = infer.ModelInfer(req, timeout=T)
    assert [t.name for t in r.outputs] == [t[0] for t in tensors]
    out = oip.outputs(r)
    for name, dt, shape, value in tensors:
        assert out[name].datatype == dt and out[name].shape == shape
        check_same(dt, out[name], value)


def test_identity_other_integer_types(infer):
    """The typed fields shared by several datatypes (int_contents for INT8,
    INT16, INT32; uint_contents for UINT8..UINT32; uint64_contents; FP64)."""
    cases = [("INT8", [-128, 0, 127]), ("INT16", [-32768, 1, 32767]),
             ("INT32", [-2 ** 31, 0, 2 ** 31 - 1]), ("UINT8", [0, 1, 255]),
             ("UINT16", [0, 65535, 7]), ("UINT32", [0, 2 ** 32 - 1, 9]),
             ("UINT64", [0, 2 ** 64 - 1, 5]), ("FP64", [0.1, -1e308, 5e-324])]
    req = pb.ModelInferRequest(model_name=IDENTITY)
    for i, (dt, vals) in enumerate(cases):
        oip.add_input(req, "t%d" % i, dt, [3], np.array(vals, dtype=oip.DATATYPES[dt][0]), False)
    out = oip.outputs(infer.ModelInfer(req, timeout=T))
    for i, (dt, vals) in enumerate(cases):
        o = out["t%d" % i]
        assert o.datatype == dt
        check_same(dt, o, np.array(vals, dtype=oip.DATATYPES[dt][0]))


def test_identity_empty_bytes_element(infer):
    """A single empty BYTES element ([1]) survives the round trip."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    oip.add_input(req, "s", "BYTES", [1], [b""], raw=True)
    out = oip.outputs(infer.ModelInfer(req, timeout=T))
    assert out["s"].value == [b""]
    assert out["s"].raw == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("form", ["contents", "raw"])
def test_identity_empty_and_scalar_tensors(infer, form):
    """A dimension of 0 is an empty tensor (no data), shape [] a scalar
    (one element): both allowed where the model fixes no size."""
    raw = form == "raw"
    req = pb.ModelInferRequest(model_name=IDENTITY)
    oip.add_input(req, "empty", "FP32", [0], np.zeros(0, dtype=np.float32), raw)
    oip.add_input(req, "empty2", "INT64", [2, 0, 3], np.zeros((2, 0, 3), dtype=np.int64), raw)
    oip.add_input(req, "nostr", "BYTES", [0], [], raw)
    oip.add_input(req, "scalar", "FP32", [], np.array(2.5, dtype=np.float32), raw)
    oip.add_input(req, "sstr", "BYTES", [], [b"one"], raw)
    out = oip.outputs(infer.ModelInfer(req, timeout=T))
    assert out["empty"].shape == [0] and out["empty"].raw == b""
    assert out["empty2"].shape == [2, 0, 3] and out["empty2"].raw == b""
    assert out["nostr"].shape == [0] and out["nostr"].value == []
    assert out["scalar"].shape == [] and out["scalar"].value.tolist() == 2.5
    assert out["sstr"].shape == [] and out["sstr"].value == [b"one"]


def test_identity_triton_output_names(infer):
    """As Triton's identity models: INPUT<n> comes back as OUTPUT<n>."""
    req = pb.ModelInferRequest(model_name=IDENTITY)
    x = np.array([1, 2, 3], dtype=np.int32)
    oip.add_input(req, "INPUT0", "INT32", [3], x, raw=True)
    oip.add_input(req, "INPUT12", "BYTES", [1], [b"z"], raw=True)
    out = oip.outputs(infer.ModelInfer(req, timeout=T))
    assert sorted(out) == ["OUTPUT0", "OUTPUT12"]
    assert np.array_equal(out["OUTPUT0"].value, x)
    assert out["OUTPUT12"].value == [b"z"]


# ---- text generation -------------------------------------------------------------------------
GREEDY = dict(max_tokens=N_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def generate_text(textgen, prompts):
    """velo.v1 Generate for prompt 0, greedy, N_TOKENS tokens."""
    p = prompts[0]
    res = harness.greedy(textgen, TEXTGEN, p["prompt"], N_TOKENS)
    assert res.finish_reason == "length"
    return res.text


def reference_text(prompts):
    p = prompts[0]
    return harness.pieces_text(p["f32"]["gen_pieces_hex"], N_TOKENS)


def test_generate_matches_reference(generate_text, prompts):
    assert generate_text == reference_text(prompts)


@pytest.mark.parametrize("form", ["raw", "contents"])
def test_model_infer_text_generation(infer, prompts, generate_text, form):
    p = prompts[0]
    req = oip.text_request(TEXTGEN, p["prompt"], raw=(form == "raw"), request_id="gen-1", **GREEDY)
    r = infer.ModelInfer(req, timeout=T)
    assert r.model_name == TEXTGEN
    assert r.model_version == "1"
    assert r.id == "gen-1"
    out = oip.outputs(r)
    o = out["text_output"]
    assert o.datatype == "BYTES"
    assert len(o.value) == 1 and o.shape == [1], (o.shape, o.value)
    text = o.value[0].decode("utf-8")
    assert text == generate_text
    assert text == reference_text(prompts)
    ids = out["token_ids"]
    assert ids.datatype == "INT32" and ids.shape == [N_TOKENS], (ids.datatype, ids.shape)
    assert ids.value.tolist() == p["f32"]["gen_ids"][:N_TOKENS]


def test_model_infer_requested_output(infer, prompts):
    """Only the outputs asked for come back; an unknown one is refused,
    naming it."""
    p = prompts[0]
    req = oip.text_request(TEXTGEN, p["prompt"], **GREEDY)
    req.outputs.add(name="text_output")
    out = oip.outputs(infer.ModelInfer(req, timeout=T))
    assert sorted(out) == ["text_output"]
    assert out["text_output"].value[0].decode("utf-8") == reference_text(prompts)
    req = oip.text_request(TEXTGEN, p["prompt"], **GREEDY)
    req.outputs.add(name="logits")
    e = oip.error_of(infer.ModelInfer, req, timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "logits" in e.details() and "text_output" in e.details(), e.details()


def test_model_infer_refuses_stream_true(infer):
    """stream = true asks for one response per chunk: ModelStreamInfer's job."""
    req = oip.text_request(TEXTGEN, "Once", stream=True, **GREEDY)
    e = oip.error_of(infer.ModelInfer, req, timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "stream" in e.details(), e.details()


def final_params(resp):
    return {k: oip.param_value(v) for k, v in resp.parameters.items()}


def test_model_infer_text_generation_usage(infer, prompts):
    """The response parameters carry finish_reason and usage
    (docs/protocol.md)."""
    p = prompts[0]
    r = infer.ModelInfer(oip.text_request(TEXTGEN, p["prompt"], **GREEDY), timeout=T)
    params = final_params(r)
    assert params.get("finish_reason") == "length", params
    assert params.get("completion_tokens") == N_TOKENS, params
    assert params.get("prompt_tokens") == len(p["prompt_ids"]), params


@pytest.mark.parametrize("close_early", [False, True], ids=["open", "half-closed"])
def test_model_stream_infer_text_generation(infer, prompts, generate_text, close_early):
    """One response per new chunk of text; the last one flagged final; the
    chunks concatenated equal Generate's text.  close_early: the client
    half-closes right after its request, and still gets every response."""
    p = prompts[0]
    req = oip.text_request(TEXTGEN, p["prompt"], request_id="s1", **GREEDY)
    res = oip.stream_infer(infer, [req], close_early=close_early)["s1"]
    assert not res.errors, res.errors
    assert len(res.responses) >= 2, "expected several streamed responses, got %d" % len(
        res.responses)
    finals = [i for i, r in enumerate(res.responses) if oip.is_final(r)]
    assert finals == [len(res.responses) - 1], "final flags at %s of %d responses" % (
        finals, len(res.responses))
    for r in res.responses:
        assert r.model_name == TEXTGEN and r.id == "s1"
        assert oip.FINAL in r.parameters, "a streamed response without %s" % oip.FINAL
    assert res.text == generate_text
    assert res.text == reference_text(prompts)
    params = final_params(res.responses[-1])
    assert params.get("finish_reason") == "length", params


def test_model_stream_infer_token_ids(infer, prompts):
    """The streamed token_ids, concatenated, are the reference ids."""
    p = prompts[0]
    res = oip.stream_infer(infer, [oip.text_request(TEXTGEN, p["prompt"], request_id="t",
                                                    **GREEDY)])["t"]
    ids = []
    for r in res.responses:
        out = oip.outputs(r)
        if "token_ids" in out:
            ids.extend(out["token_ids"].value.tolist())
    assert ids == p["f32"]["gen_ids"][:N_TOKENS]


def test_model_stream_infer_stream_false(infer, prompts, generate_text):
    """stream = false on ModelStreamInfer: one response, the whole text,
    flagged final."""
    p = prompts[0]
    req = oip.text_request(TEXTGEN, p["prompt"], request_id="whole", stream=False, **GREEDY)
    res = oip.stream_infer(infer, [req])["whole"]
    assert not res.errors, res.errors
    assert len(res.responses) == 1 and oip.is_final(res.responses[0])
    assert res.text == generate_text


def test_model_stream_infer_two_requests(infer, prompts):
    """Two requests on one stream: each gets its own responses, by id."""
    reqs = [oip.text_request(TEXTGEN, prompts[i]["prompt"], request_id="r%d" % i, **GREEDY)
            for i in (0, 1)]
    res = oip.stream_infer(infer, reqs)
    for i in (0, 1):
        r = res["r%d" % i]
        assert not r.errors, r.errors
        assert r.text == harness.pieces_text(prompts[i]["f32"]["gen_pieces_hex"], N_TOKENS)


def test_model_stream_infer_identity(infer):
    """A non-generating model on the stream: one final response."""
    req = pb.ModelInferRequest(model_name=IDENTITY, id="id-1")
    x = np.arange(4, dtype=np.int64)
    oip.add_input(req, "x", "INT64", [4], x, raw=True)
    res = oip.stream_infer(infer, [req])["id-1"]
    assert not res.errors, res.errors
    assert len(res.responses) == 1 and oip.is_final(res.responses[0])
    assert np.array_equal(oip.outputs(res.responses[0])["x"].value, x)


@pytest.mark.parametrize("name,version", [("no-such-model", ""), (IDENTITY, "2")])
def test_model_infer_unknown_model_or_version(infer, name, version):
    req = pb.ModelInferRequest(model_name=name, model_version=version)
    oip.add_input(req, "x", "INT64", [1], np.array([1]), raw=True)
    e = oip.error_of(infer.ModelInfer, req, timeout=T)
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert name in e.details(), e.details()


def test_model_stream_infer_errors_do_not_end_the_stream(infer, prompts):
    """A failing request on the stream gets one error_message
    ("<STATUS>: <message>") with its id and model; the other requests of
    the same stream are served."""
    p = prompts[0]
    bad = pb.ModelInferRequest(model_name="no-such-model", id="bad")
    oip.add_input(bad, "x", "INT64", [1], np.array([1]), raw=True)
    bad_param = oip.text_request(TEXTGEN, "Once", request_id="bad-param", max_tokens=-5)
    good = oip.text_request(TEXTGEN, p["prompt"], request_id="good", **GREEDY)
    res = oip.stream_infer(infer, [bad, bad_param, good])
    assert len(res["bad"].errors) == 1 and not res["bad"].responses, res["bad"].errors
    assert res["bad"].errors[0].startswith("NOT_FOUND: "), res["bad"].errors
    assert "no-such-model" in res["bad"].errors[0]
    assert res["bad"].error_responses[0].model_name == "no-such-model"
    e = res["bad-param"].errors
    assert len(e) == 1 and e[0].startswith("INVALID_ARGUMENT: ") and "max_tokens" in e[0], e
    assert not res["good"].errors
    assert res["good"].text == reference_text(prompts)


def test_text_generation_bad_parameter(infer):
    """A bad sampling parameter is INVALID_ARGUMENT naming it, as for
    Generate."""
    req = oip.text_request(TEXTGEN, "Once", max_tokens=-5)
    e = oip.error_of(infer.ModelInfer, req, timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "max_tokens" in e.details() and "-5" in e.details(), e.details()


def test_server_still_serving(server_channel):
    oip.still_serving(server_channel)
