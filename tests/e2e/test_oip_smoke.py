"""test_oip_smoke.py - a quick regression of velod's Open Inference Protocol
front end (core/server/oip*.c) through the stubs the build generates from
proto/inference/grpc_service.proto (build/python/inference), against the
session's shared velod (text-generation models given with --model, no model
repository).

The protocol conformance tests (test_oip.py, test_validation.py,
test_repository.py) use an independent copy of the published protocol; this
file checks what is velod's own on top of it: text generation equal to
Generate with a JSON array of stop strings, requested outputs, the "stream"
parameter, error messages with request ids on a stream that goes on,
versions, statistics, and the repository methods without a repository.
"""
import struct

import grpc
import pytest

import harness
from inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc

T = harness.CALL_TIMEOUT_S
MODEL = harness.F32


@pytest.fixture(scope="module")
def infer(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


def text_request(prompt, rid="", outputs=(), raw=True, **params):
    req = pb.ModelInferRequest(model_name=MODEL, id=rid)
    t = req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    b = prompt.encode("utf-8")
    if raw:
        req.raw_input_contents.append(struct.pack("<I", len(b)) + b)
    else:
        t.contents.bytes_contents.append(b)
    for name in outputs:
        req.outputs.add(name=name)
    for k, v in params.items():
        harness.set_param(req.parameters, k, v)
    return req


def outputs_of(resp):
    assert len(resp.outputs) == len(resp.raw_output_contents)
    return {t.name: (t, raw) for t, raw in zip(resp.outputs, resp.raw_output_contents)}


def text_of(resp):
    t, raw = outputs_of(resp)["text_output"]
    assert t.datatype == "BYTES" and list(t.shape) == [1]
    (n,) = struct.unpack_from("<I", raw)
    assert n == len(raw) - 4
    return raw[4:].decode("utf-8")


def rpc_error(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_health_and_metadata(infer):
    assert infer.ServerLive(pb.ServerLiveRequest(), timeout=T).live
    assert infer.ServerReady(pb.ServerReadyRequest(), timeout=T).ready
    assert infer.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1"), timeout=T).ready
    assert not infer.ModelReady(pb.ModelReadyRequest(name=MODEL, version="2"), timeout=T).ready
    md = infer.ServerMetadata(pb.ServerMetadataRequest(), timeout=T)
    assert md.name == "velo" and set(md.extensions) >= {"model_repository", "statistics"}
    mm = infer.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=T)
    assert mm.platform == "velo_textgen" and list(mm.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in mm.inputs] == [("text_input", "BYTES", [1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in mm.outputs] == [
        ("text_output", "BYTES", [1]), ("token_ids", "INT32", [-1])]


@pytest.mark.parametrize("stop", [[], ["."], [" the", "\n", "Lily"]])
def test_text_equal_to_generate(infer, stub, prompts, stop):
    for prompt in [p["prompt"] for p in prompts[:3]]:
        want = harness.generate(stub, MODEL, prompt, max_tokens=40, temperature=0.0, stop=stop)
        params = dict(max_tokens=40, temperature=0.0)
        if stop:
            params["stop"] = '["' + '", "'.join(s.replace("\n", "\\n") for s in stop) + '"]'
        r = infer.ModelInfer(text_request(prompt, rid="u", raw=False, **params), timeout=T)
        assert text_of(r) == want.text and r.id == "u" and r.model_version == "1"
        assert r.parameters["finish_reason"].string_param == want.finish_reason
        assert r.parameters["completion_tokens"].int64_param == want.completion_tokens
        chunks, finals = [], []
        for m in infer.ModelStreamInfer(iter([text_request(prompt, rid="s", **params)]), timeout=T):
            assert not m.error_message, m.error_message
            chunks.append(text_of(m.infer_response))
            finals.append(m.infer_response.parameters["triton_final_response"].bool_param)
        assert "".join(chunks) == want.text
        assert finals[-1] and not any(finals[:-1])


def test_requested_outputs(infer):
    r = infer.ModelInfer(text_request("Once", outputs=["token_ids"], max_tokens=4,
                                      temperature=0.0), timeout=T)
    assert [t.name for t in r.outputs] == ["token_ids"] and list(r.outputs[0].shape) == [4]
    assert len(r.raw_output_contents[0]) == 16
    code, details = rpc_error(lambda: infer.ModelInfer(text_request("Once", outputs=["logits"]),
                                                       timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'logits'" in details and "text_output" in details
    code, details = rpc_error(lambda: infer.ModelInfer(
        text_request("Once", outputs=["text_output", "text_output"]), timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "twice" in details


def test_stream_parameter(infer, stub):
    code, details = rpc_error(lambda: infer.ModelInfer(text_request("Once", stream=True),
                                                       timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelStreamInfer" in details
    want = harness.generate(stub, MODEL, "Once upon a time", max_tokens=20, temperature=0.0)
    msgs = list(infer.ModelStreamInfer(iter([text_request(
        "Once upon a time", rid="one", stream=False, max_tokens=20, temperature=0.0)]), timeout=T))
    assert len(msgs) == 1
    assert msgs[0].infer_response.parameters["triton_final_response"].bool_param
    assert text_of(msgs[0].infer_response) == want.text


def test_stream_errors_carry_the_request_id(infer, stub):
    bad = text_request("x", rid="bad")
    bad.raw_input_contents[0] = b"\x09\x00\x00\x00abc"
    reqs = [text_request("Once upon a time", rid="a", max_tokens=12, temperature=0.0), bad,
            pb.ModelInferRequest(model_name="no-such-model", id="nf"),
            text_request("Once upon a time", rid="b", stop='["a",', max_tokens=12),
            text_request("The dog", rid="c", max_tokens=12, temperature=0.0)]
    texts, errors = {}, {}
    for m in infer.ModelStreamInfer(iter(reqs), timeout=T):
        rid = m.infer_response.id
        if m.error_message:
            errors[rid] = m.error_message
        else:
            texts[rid] = texts.get(rid, "") + text_of(m.infer_response)
    assert set(errors) == {"bad", "nf", "b"}
    assert errors["bad"].startswith("INVALID_ARGUMENT: input 'text_input'")
    assert errors["nf"].startswith("NOT_FOUND: model 'no-such-model' is not loaded")
    assert errors["b"].startswith("INVALID_ARGUMENT: parameter stop")
    for rid, prompt in (("a", "Once upon a time"), ("c", "The dog")):
        assert texts[rid] == harness.generate(stub, MODEL, prompt, max_tokens=12,
                                              temperature=0.0).text


def test_versions(infer):
    code, details = rpc_error(lambda: infer.ModelInfer(
        pb.ModelInferRequest(model_name=MODEL, model_version="2"), timeout=T))
    assert code == grpc.StatusCode.NOT_FOUND and "version '2'" in details
    code, _ = rpc_error(lambda: infer.ModelMetadata(
        pb.ModelMetadataRequest(name=MODEL, version="0"), timeout=T))
    assert code == grpc.StatusCode.NOT_FOUND


def test_statistics(infer):
    def stats():
        (s,) = infer.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=T).model_stats
        return s
    before = stats()
    infer.ModelInfer(text_request("Once", max_tokens=2, temperature=0.0), timeout=T)
    rpc_error(lambda: infer.ModelInfer(text_request("Once", outputs=["nope"]), timeout=T))
    after = stats()
    assert after.name == MODEL and after.version == "1"
    assert after.inference_count == before.inference_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.last_inference >= before.last_inference > 0
    everything = infer.ModelStatistics(pb.ModelStatisticsRequest(), timeout=T)
    assert MODEL in {s.name for s in everything.model_stats}


def test_repository_methods_without_a_repository(infer):
    idx = infer.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=T)
    assert {(m.name, m.state) for m in idx.models} >= {(MODEL, "READY")}
    code, _ = rpc_error(lambda: infer.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=T))
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    code, _ = rpc_error(lambda: infer.RepositoryIndex(
        pb.RepositoryIndexRequest(repository_name="elsewhere"), timeout=T))
    assert code == grpc.StatusCode.NOT_FOUND
    assert infer.ServerReady(pb.ServerReadyRequest(), timeout=T).ready
