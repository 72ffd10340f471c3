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
Then regressions of resource bounds, against a velod of its own serving the
identity model: a ModelStreamInfer client that does not read its responses
holds velod's memory bounded, a huge "stop" array is refused early, many
inputs are checked in O(n log n) and capped, Watch on a huge service name
is not stored, and error messages on a stream carry triton_final_response.
"""
import struct
import threading
import time

import grpc
import pytest

import harness
from harness import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
from oip_ref import client as oip

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


# ---------------------------------------------------------------------------
# Resource bounds (a velod of their own, with the identity model)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ident_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip_bounds")
    repo = root / "models"
    oip.write_model(repo, oip.IDENTITY, {"task": "identity"})
    yield from oip.serve(root, "--model-control", "explicit", "--load-model", oip.IDENTITY,
                         repo=repo)


@pytest.fixture(scope="module")
def ident_channel(ident_server):
    with ident_server.channel() as ch:
        yield ch


def vm_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def identity_request(rid, size):
    req = pb.ModelInferRequest(model_name=oip.IDENTITY, id=rid)
    req.inputs.add(name="a", datatype="UINT8", shape=[size])
    req.raw_input_contents.append(b"\1" * size)
    return req


def test_unread_stream_responses_keep_memory_bounded(ident_server, ident_channel):
    """300 x 1 MiB identity requests whose responses are never read: velod
    stops reading the stream once its unsent responses pass its bound, so
    its memory stays far below the 300 MiB the responses would take."""
    infer = pb_grpc.GRPCInferenceServiceStub(ident_channel)
    size, n = 1 << 20, 300
    sent = [0]
    done = threading.Event()

    def requests():
        for i in range(n):
            sent[0] += 1
            yield identity_request(str(i), size)
        done.wait(60)

    before = vm_rss_kb(ident_server.proc.pid)
    it = infer.ModelStreamInfer(requests(), timeout=120)
    peak, last_sent, stalled_since = before, -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the client is held back
        time.sleep(0.5)
        peak = max(peak, vm_rss_kb(ident_server.proc.pid))
        if sent[0] != last_sent:
            last_sent, stalled_since = sent[0], time.monotonic()
        elif time.monotonic() - stalled_since > 3:
            break
    assert sent[0] < n, "velod read every request without their responses being read"
    assert peak - before < 200 * 1024, "VmRSS grew by %d kB" % (peak - before)
    # Reading the responses lets the rest through; every one comes back.
    got = 0
    for m in it:
        assert not m.error_message, m.error_message
        assert m.infer_response.parameters["triton_final_response"].bool_param
        got += 1
        if got == n:
            break
    done.set()
    it.cancel()
    assert got == n
    assert infer.ServerLive(pb.ServerLiveRequest(), timeout=T).live


def test_stream_error_messages_are_final(ident_channel):
    infer = pb_grpc.GRPCInferenceServiceStub(ident_channel)
    msgs = list(infer.ModelStreamInfer(
        iter([pb.ModelInferRequest(model_name="no-such-model", id="nf")]), timeout=T))
    assert len(msgs) == 1 and msgs[0].error_message.startswith("NOT_FOUND: ")
    assert msgs[0].infer_response.id == "nf"
    assert msgs[0].infer_response.parameters["triton_final_response"].bool_param


def test_huge_stop_array_is_refused_early(ident_channel):
    infer = pb_grpc.GRPCInferenceServiceStub(ident_channel)
    req = identity_request("s", 1)
    req.parameters["stop"].string_param = "[" + ",".join('"s%d"' % i for i in range(50000)) + "]"
    t0 = time.monotonic()
    code, details = rpc_error(lambda: infer.ModelInfer(req, timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 16 stop strings are allowed, got more" in details, details
    assert time.monotonic() - t0 < 5
    req.parameters["stop"].string_param = '["%s"]' % ("a" * 257)
    code, details = rpc_error(lambda: infer.ModelInfer(req, timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "257 bytes" in details, details


def test_many_inputs_and_outputs(ident_channel):
    infer = pb_grpc.GRPCInferenceServiceStub(ident_channel)
    req = pb.ModelInferRequest(model_name=oip.IDENTITY)
    for i in range(4096):
        req.inputs.add(name="i%d" % i, datatype="UINT8", shape=[0])
    req.inputs.add(name="i7", datatype="UINT8", shape=[0])
    t0 = time.monotonic()
    code, details = rpc_error(lambda: infer.ModelInfer(req, timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too many inputs: 4097" in details
    del req.inputs[-1]
    req.inputs[4095].name = "i7"
    code, details = rpc_error(lambda: infer.ModelInfer(req, timeout=T))
    assert "input 'i7' is given twice (inputs[7] and inputs[4095])" in details, details
    assert time.monotonic() - t0 < 5
    req = identity_request("o", 1)
    for i in range(4097):
        req.outputs.add(name="o%d" % i)
    code, details = rpc_error(lambda: infer.ModelInfer(req, timeout=T))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too many requested outputs" in details


def test_zero_dimension_anywhere(ident_channel):
    infer = pb_grpc.GRPCInferenceServiceStub(ident_channel)
    for shape in ([1 << 62, 1 << 62, 0], [0, 1 << 62, 1 << 62]):
        req = pb.ModelInferRequest(model_name=oip.IDENTITY)
        req.inputs.add(name="a", datatype="UINT8", shape=shape)
        req.raw_input_contents.append(b"")
        resp = infer.ModelInfer(req, timeout=T)
        assert list(resp.outputs[0].shape) == shape


def test_watch_on_a_huge_service_name(ident_server, ident_channel):
    """Watch on a 1 MiB name: SERVICE_UNKNOWN, and the name is not kept."""
    health = health_pb2_grpc.HealthStub(ident_channel)
    before = vm_rss_kb(ident_server.proc.pid)
    calls = []
    for i in range(40):
        it = health.Watch(health_pb2.HealthCheckRequest(service="x" * (1 << 20) + str(i)),
                          timeout=T)
        assert next(it).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        calls.append(it)
    grown = vm_rss_kb(ident_server.proc.pid) - before
    for it in calls:
        it.cancel()
    assert grown < 30 * 1024, "VmRSS grew by %d kB for 40 watchers" % grown
