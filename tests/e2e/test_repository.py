"""test_repository.py - the model repository and model control (issue 3,
item 5) through the Open Inference Protocol's repository extension
(RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload) and
ModelStatistics, called through the tests' own copy of the published
protocol (oip_ref/).

  - RepositoryIndex lists every model of the repository with its state;
  - with --model-control explicit, load and unload work at run time; with
    none they are refused;
  - a broken model (a truncated GGUF, a config.json with an unknown key, a
    missing model file) fails to load with an error that names it, and the
    server and the other models go on serving; a broken config.json on a
    reload leaves the loaded model serving; a model directory added at run
    time can be loaded;
  - ModelStatistics counts the inferences made, and the failures;
  - 20 load/unload cycles of stories260K leave velod's resident memory
    within 10 % of its value after the first load (after a warm-up cycle);
  - an unload during 4 running Generate streams ends them with UNAVAILABLE
    "model '...' is being unloaded", velod does not crash, a new request
    gets NOT_FOUND, and the model can be loaded again; the same for a
    ModelInfer and a ModelStreamInfer request in flight (the stream goes on).
"""
import os
import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import harness
from harness import velo_pb2, velo_pb2_grpc
from oip_ref import client as oip
from oip_ref.client import IDENTITY, TEXTGEN, pb

T = harness.CALL_TIMEOUT_S
BROKEN_GGUF = "broken-gguf"
BAD_CONFIG = "bad-config"
MISSING_FILE = "missing-file"
LONG = 1_000_000  # clamped to the context: about 2000 tokens


def make_full_repository(root):
    """The two good models plus three that cannot load."""
    repo = oip.make_repository(root)
    data = harness.MODEL_F32.read_bytes()
    oip.write_model(repo, BROKEN_GGUF, {"task": "text-generation", "file": "model.gguf"},
                    gguf_bytes=data[:len(data) // 3])
    oip.write_model(repo, BAD_CONFIG, {"task": "identity", "colour": "blue"})
    oip.write_model(repo, MISSING_FILE, {"task": "text-generation", "file": "nowhere.gguf"})
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """velod with --model-control explicit; identity and stories loaded at
    start-up, the broken models not."""
    root = tmp_path_factory.mktemp("repository")
    yield from oip.serve(root, "--model-control", "explicit", "--load-model", IDENTITY,
                         "--load-model", TEXTGEN, repo=make_full_repository(root / "models"))


def index(infer, ready=False):
    r = infer.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=T)
    names = [m.name for m in r.models]
    assert len(names) == len(set(names)), "a model listed twice: %s" % names
    return {m.name: m for m in r.models}


def load(infer, name):
    infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=T)


def unload(infer, name, timeout=T):
    infer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name),
                                timeout=timeout)


def ready(infer, name):
    try:
        return infer.ModelReady(pb.ModelReadyRequest(name=name), timeout=T).ready
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        return False


def identity_infer(infer, n=1):
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    for _ in range(n):
        req = pb.ModelInferRequest(model_name=IDENTITY)
        oip.add_input(req, "x", "INT64", x.shape, x, raw=True)
        assert np.array_equal(oip.outputs(infer.ModelInfer(req, timeout=T))["x"].value, x)


def generate_ok(textgen, prompts, n=8):
    p = prompts[0]
    res = harness.greedy(textgen, TEXTGEN, p["prompt"], n)
    assert res.ids == p["f32"]["gen_ids"][:n]


def others_serve(infer, textgen, prompts):
    assert infer.ServerReady(pb.ServerReadyRequest(), timeout=T).ready
    identity_infer(infer)
    generate_ok(textgen, prompts)


def unavailable_model_error(e, name):
    """The error for a request to a model that is not loaded."""
    assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), \
        "%s: %s" % (e.code(), e.details())
    assert name in e.details(), e.details()


# ---- index, load, unload --------------------------------------------------------------------------
def test_index_lists_every_model_with_state(infer):
    idx = index(infer)
    assert set(idx) >= {IDENTITY, TEXTGEN, BROKEN_GGUF, BAD_CONFIG, MISSING_FILE}, sorted(idx)
    assert idx[IDENTITY].state == "READY", idx[IDENTITY]
    assert idx[TEXTGEN].state == "READY", idx[TEXTGEN]
    for name in (BROKEN_GGUF, BAD_CONFIG, MISSING_FILE):
        assert idx[name].state == "UNAVAILABLE", idx[name]
        assert idx[name].reason == "not loaded", idx[name]
    assert all(m.version == "1" for m in idx.values()), idx


def test_index_ready_only(infer):
    idx = index(infer, ready=True)
    assert IDENTITY in idx and TEXTGEN in idx
    assert not set(idx) & {BROKEN_GGUF, BAD_CONFIG, MISSING_FILE}, sorted(idx)
    assert all(m.state == "READY" for m in idx.values()), idx


def test_unload_and_load_identity(infer):
    identity_infer(infer)
    unload(infer, IDENTITY)
    assert not ready(infer, IDENTITY)
    row = index(infer)[IDENTITY]
    assert row.state == "UNAVAILABLE" and row.reason == "unloaded", row
    assert IDENTITY not in index(infer, ready=True)
    req = pb.ModelInferRequest(model_name=IDENTITY)
    oip.add_input(req, "x", "INT64", [1], np.array([1]), raw=True)
    unavailable_model_error(oip.error_of(infer.ModelInfer, req, timeout=T), IDENTITY)

    load(infer, IDENTITY)
    assert ready(infer, IDENTITY)
    assert index(infer)[IDENTITY].state == "READY"
    identity_infer(infer)


def test_load_of_a_loaded_model_reloads_it(infer):
    """RepositoryModelLoad on a loaded model is a reload: it stays served."""
    load(infer, IDENTITY)
    assert ready(infer, IDENTITY)
    identity_infer(infer)


def test_unload_of_a_model_not_loaded(infer):
    e = oip.error_of(unload, infer, BROKEN_GGUF)
    assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), e
    assert BROKEN_GGUF in e.details(), e.details()


def test_load_unknown_model(infer):
    e = oip.error_of(load, infer, "not-in-the-repository")
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert "not-in-the-repository" in e.details(), e.details()


def test_repository_name_must_be_empty(infer):
    """velod has one repository: another repository_name is NOT_FOUND."""
    for fn, req in ((infer.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other")),
                    (infer.RepositoryModelLoad, pb.RepositoryModelLoadRequest(
                        repository_name="other", model_name=IDENTITY)),
                    (infer.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(
                        repository_name="other", model_name=IDENTITY))):
        e = oip.error_of(fn, req, timeout=T)
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        assert "other" in e.details(), e.details()
    assert ready(infer, IDENTITY)


def test_load_parameters_are_refused(infer):
    """A model's settings come from its config.json, not from the request."""
    req = pb.RepositoryModelLoadRequest(model_name=IDENTITY)
    req.parameters["config"].string_param = "{}"
    e = oip.error_of(infer.RepositoryModelLoad, req, timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "config" in e.details(), e.details()
    assert ready(infer, IDENTITY)


def test_unload_dependents_is_accepted(infer):
    req = pb.RepositoryModelUnloadRequest(model_name=IDENTITY)
    req.parameters["unload_dependents"].bool_param = True
    infer.RepositoryModelUnload(req, timeout=T)
    assert not ready(infer, IDENTITY)
    load(infer, IDENTITY)
    identity_infer(infer)


def test_model_added_after_start_can_be_loaded(server, infer):
    """A model directory added while velod runs shows up in the index (not
    loaded) and loads by name."""
    repo = server.args[server.args.index("--model-repository") + 1]
    name = "late-identity"
    oip.write_model(repo, name, {"task": "identity"})
    row = index(infer)[name]
    assert row.state == "UNAVAILABLE", row
    load(infer, name)
    assert ready(infer, name)
    req = pb.ModelInferRequest(model_name=name)
    oip.add_input(req, "x", "BYTES", [1], [b"late"], raw=True)
    assert oip.outputs(infer.ModelInfer(req, timeout=T))["x"].value == [b"late"]
    unload(infer, name)
    assert not ready(infer, name)


def test_reload_with_a_broken_config_keeps_the_old_model(server, infer):
    """config.json is read again at every load; a broken one leaves the
    loaded model serving."""
    repo = server.args[server.args.index("--model-repository") + 1]
    name = "reloadable"
    d = oip.write_model(repo, name, {"task": "identity"})
    load(infer, name)
    (d / "config.json").write_text('{"task": "identity", "flavour": 1}')
    e = oip.error_of(load, infer, name)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "flavour" in e.details() and name in e.details(), e.details()
    assert ready(infer, name)
    req = pb.ModelInferRequest(model_name=name)
    oip.add_input(req, "x", "INT64", [1], np.array([7]), raw=True)
    assert oip.outputs(infer.ModelInfer(req, timeout=T))["x"].value.tolist() == [7]
    (d / "config.json").write_text('{"task": "identity"}')
    load(infer, name)
    assert ready(infer, name)
    unload(infer, name)


@pytest.mark.parametrize("name", ["", "../models", "a/b", "."])
def test_load_bad_model_name(infer, name):
    """Names that are not a model directory are refused (never a path
    outside the repository)."""
    e = oip.error_of(load, infer, name)
    assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), e


def test_velo_models_load_and_unload_agree_with_the_index(server_channel, infer):
    """velo.v1.Models LoadModel/UnloadModel act on the same repository: the
    Open Inference Protocol's index and ModelReady follow them."""
    models = velo_pb2_grpc.ModelsStub(server_channel)
    models.UnloadModel(velo_pb2.UnloadModelRequest(name=IDENTITY), timeout=T)
    assert not ready(infer, IDENTITY)
    row = index(infer)[IDENTITY]
    assert row.state == "UNAVAILABLE" and row.reason == "unloaded", row
    listed = {m.name: m for m in models.ListModels(velo_pb2.ListModelsRequest(),
                                                  timeout=T).models}
    assert listed[IDENTITY].state == "UNAVAILABLE", listed[IDENTITY]
    models.LoadModel(velo_pb2.LoadModelRequest(name=IDENTITY), timeout=T)
    assert ready(infer, IDENTITY) and index(infer)[IDENTITY].state == "READY"
    identity_infer(infer)
    try:
        models.LoadModel(velo_pb2.LoadModelRequest(name=BAD_CONFIG), timeout=T)
        raise AssertionError("LoadModel of %s succeeded" % BAD_CONFIG)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "colour" in e.details(), e.details()


# ---- broken models -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,code,needles", [
    (BROKEN_GGUF, grpc.StatusCode.DATA_LOSS, ["model.gguf"]),
    (BAD_CONFIG, grpc.StatusCode.INVALID_ARGUMENT, ["colour", "config.json"]),
    (MISSING_FILE, grpc.StatusCode.NOT_FOUND, ["nowhere.gguf"]),
])
def test_load_broken_model_fails_cleanly(server, infer, textgen, prompts, name, code, needles):
    e = oip.error_of(load, infer, name)
    assert e.code() not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL), e
    if code is not None:
        assert e.code() == code, e
    msg = e.details()
    assert name in msg, "the error does not name the model: %r" % msg
    for n in needles:
        assert n in msg, "%r not in %r" % (n, msg)
    assert server.alive()
    assert not ready(infer, name)
    row = index(infer)[name]
    assert row.state == "UNAVAILABLE", row
    assert row.reason, "index row for %s gives no reason: %s" % (name, row)
    for n in needles:
        assert n in row.reason, "the index reason %r does not say %r" % (row.reason, n)
    others_serve(infer, textgen, prompts)


def test_broken_model_twice_leaves_others_untouched(server, infer, textgen, prompts):
    for _ in range(2):
        for name in (BROKEN_GGUF, BAD_CONFIG, MISSING_FILE):
            oip.error_of(load, infer, name)
    assert server.alive()
    idx = index(infer)
    assert idx[IDENTITY].state == "READY" and idx[TEXTGEN].state == "READY", idx
    others_serve(infer, textgen, prompts)


def test_control_none_refuses_load_and_unload(tmp_path):
    """With --model-control none every repository model is loaded at start
    and load/unload requests are refused with FAILED_PRECONDITION."""
    repo = oip.make_repository(tmp_path / "models")
    v = oip.start_velod(repo, tmp_path / "velod.log", "--model-control", "none")
    try:
        with v.channel() as ch:
            s = oip.stub(ch)
            idx = index(s)
            assert idx[IDENTITY].state == "READY" and idx[TEXTGEN].state == "READY", idx
            for fn in (load, unload):
                e = oip.error_of(fn, s, IDENTITY)
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                assert "none" in e.details() or "model-control" in e.details(), e.details()
            identity_infer(s)
    finally:
        code, killed = v.stop()
    assert not killed and code == 0


def test_control_none_broken_model_fails_start(tmp_path):
    """With control none a model that cannot load is a start-up error that
    names it."""
    repo = make_full_repository(tmp_path / "models")
    code, out = harness.run_velod_once(["--listen", "127.0.0.1:%d" % harness.free_port(),
                                        "--model-repository", str(repo),
                                        "--model-control", "none"])
    assert code == 1, "status %s; output:\n%s" % (code, out[-3000:])
    assert any(n in out for n in (BROKEN_GGUF, BAD_CONFIG, MISSING_FILE)), out[-3000:]


# ---- statistics --------------------------------------------------------------------------------------
def stats(infer, name):
    r = infer.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=T)
    assert len(r.model_stats) == 1, r
    s = r.model_stats[0]
    assert s.name == name
    return s


def stats_after(infer, name, before, n, bound_s=5.0):
    """The statistics of name once they count n more inferences than before
    (the counters may be updated just after the response is sent: polled
    for up to bound_s).  Fails if they count more."""
    deadline = time.monotonic() + bound_s
    while True:
        s = stats(infer, name)
        got = s.inference_count - before.inference_count
        assert got <= n, "%d inferences counted, %d made (%s -> %s)" % (got, n, before, s)
        if got == n or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def test_statistics_count_inferences(infer, prompts):
    before = stats(infer, IDENTITY)
    t0_ms = int(time.time() * 1000)
    identity_infer(infer, 5)
    after = stats_after(infer, IDENTITY, before, 5)
    assert after.inference_count - before.inference_count == 5, (before, after)
    assert after.execution_count - before.execution_count == 5, (before, after)
    ok0, ok1 = before.inference_stats.success, after.inference_stats.success
    assert ok1.count - ok0.count == 5, (ok0, ok1)
    assert ok1.ns > ok0.ns
    assert after.last_inference >= t0_ms - 1000, (after.last_inference, t0_ms)

    g0 = stats(infer, TEXTGEN)
    p = prompts[0]
    for raw in (True, False):
        infer.ModelInfer(oip.text_request(TEXTGEN, p["prompt"], raw=raw, max_tokens=4,
                                          temperature=0.0), timeout=T)
    g1 = stats_after(infer, TEXTGEN, g0, 2)
    assert g1.inference_count - g0.inference_count == 2, (g0, g1)
    assert g1.inference_stats.success.count - g0.inference_stats.success.count == 2, (g0, g1)


def test_statistics_of_every_model(infer):
    r = infer.ModelStatistics(pb.ModelStatisticsRequest(), timeout=T)
    names = {s.name for s in r.model_stats}
    assert {IDENTITY, TEXTGEN} <= names, names


def test_statistics_unknown_model(infer):
    e = oip.error_of(infer.ModelStatistics, pb.ModelStatisticsRequest(name="no-such-model"),
                     timeout=T)
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert "no-such-model" in e.details()


def fails_after(infer, name, before, n, bound_s=5.0):
    deadline = time.monotonic() + bound_s
    while True:
        s = stats(infer, name)
        got = s.inference_stats.fail.count - before.inference_stats.fail.count
        assert got <= n, "%d failures counted, %d made (%s -> %s)" % (got, n, before, s)
        if got == n or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def test_failed_requests_count_as_failures(infer):
    """A request refused by the core's validation or by the task is a
    failure, not a success, in ModelStatistics (docs/protocol.md)."""
    before = stats(infer, TEXTGEN)
    oip.error_of(infer.ModelInfer, oip.text_request(TEXTGEN, "Once", max_tokens=-1), timeout=T)
    after = fails_after(infer, TEXTGEN, before, 1)
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1, after
    assert after.inference_count == before.inference_count
    assert after.inference_stats.success.count == before.inference_stats.success.count

    before = stats(infer, IDENTITY)
    req = pb.ModelInferRequest(model_name=IDENTITY)
    req.inputs.add(name="x", datatype="FP32", shape=[4])
    req.raw_input_contents.append(b"\0" * 12)
    oip.error_of(infer.ModelInfer, req, timeout=T)
    after = fails_after(infer, IDENTITY, before, 1)
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1, after
    assert after.inference_count == before.inference_count


# ---- memory over load/unload cycles --------------------------------------------------------------
CYCLES = 20


def test_load_unload_cycles_release_memory(tmp_path, prompts):
    repo = oip.make_repository(tmp_path / "models")
    v = oip.start_velod(repo, tmp_path / "velod.log", "--model-control", "explicit")
    try:
        with v.channel() as ch:
            s, tg = oip.stub(ch), velo_pb2_grpc.TextGenerationStub(ch)

            def cycle_load():
                load(s, TEXTGEN)
                generate_ok(tg, prompts, 16)

            # Warm-up: the first load, generation and unload allocate what
            # stays for the process's life (gRPC, thread pools, arenas).
            cycle_load()
            unload(s, TEXTGEN)
            cycle_load()
            base = oip.vm_rss_kib(v.proc.pid)
            samples = [base]
            for _ in range(CYCLES):
                unload(s, TEXTGEN)
                assert not ready(s, TEXTGEN)
                cycle_load()
                samples.append(oip.vm_rss_kib(v.proc.pid))
            assert v.alive()
            last = samples[-1]
            assert abs(last - base) <= base * 0.10, (
                "VmRSS after the first load %d KiB, after %d load/unload cycles %d KiB "
                "(%+.1f %%); samples: %s" % (base, CYCLES, last, 100.0 * (last - base) / base,
                                             samples))
    finally:
        code, killed = v.stop()
    assert not killed and code == 0, "velod exit status %s" % code


# ---- unload while streams run ---------------------------------------------------------------------
N_STREAMS = 4
UNLOADING_MSG = "model '%s' is being unloaded" % TEXTGEN


def test_unload_during_running_streams(server, infer, textgen, prompts):
    started = [threading.Event() for _ in range(N_STREAMS)]
    results = [None] * N_STREAMS

    def run(i):
        got = 0
        try:
            for msg in textgen.Generate(harness.generate_request(
                    TEXTGEN, prompts[i % len(prompts)]["prompt"] or "Once", max_tokens=LONG,
                    temperature=0.0, ignore_eos=True), timeout=120):
                got += len(msg.token_ids)
                started[i].set()
                if msg.finish_reason:
                    results[i] = ("finished", msg.finish_reason, got)
                    return
            results[i] = ("ended without finish_reason", None, got)
        except grpc.RpcError as e:
            results[i] = (e.code(), e.details(), got)
        finally:
            started[i].set()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(N_STREAMS)]
    for t in threads:
        t.start()
    for i, ev in enumerate(started):
        assert ev.wait(30), "stream %d produced nothing in 30 s" % i
    assert all(r is None for r in results), "a stream ended before the unload: %s" % results

    t0 = time.monotonic()
    unload(infer, TEXTGEN, timeout=30)
    unload_s = time.monotonic() - t0
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a stream is still running: %s" % results
    assert server.alive(), "velod died; log:\n%s" % server.log()[-3000:]

    for i, r in enumerate(results):
        code, details, got = r
        assert code == grpc.StatusCode.UNAVAILABLE, "stream %d: %s" % (i, r)
        assert UNLOADING_MSG in details, "stream %d: %s" % (i, r)
        assert 0 < got < 2000, "stream %d: %d tokens" % (i, got)
    assert unload_s < 10, "the unload took %.1f s" % unload_s

    # A new request for the unloaded model gets a clear error at once: the
    # model is gone, NOT_FOUND "model '...' is not loaded".
    e = oip.error_of(lambda: harness.greedy(textgen, TEXTGEN, "Once", 4))
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert "'%s' is not loaded" % TEXTGEN in e.details(), e.details()
    e = oip.error_of(infer.ModelInfer, oip.text_request(TEXTGEN, "Once", max_tokens=4),
                     timeout=T)
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert TEXTGEN in e.details(), e.details()
    assert not ready(infer, TEXTGEN)
    assert index(infer)[TEXTGEN].state != "READY"
    identity_infer(infer)

    load(infer, TEXTGEN)
    assert ready(infer, TEXTGEN)
    generate_ok(textgen, prompts, 16)


def test_unload_during_oip_requests(server, infer, prompts):
    """The same through the Open Inference Protocol: a ModelInfer in flight
    ends with UNAVAILABLE; a request running on ModelStreamInfer gets
    error_message "UNAVAILABLE: model ... is being unloaded" and its stream
    goes on (it serves the identity model afterwards)."""
    long_req = dict(max_tokens=LONG, temperature=0.0, ignore_eos=True)
    unary = infer.ModelInfer.future(oip.text_request(TEXTGEN, "Once upon a time", **long_req),
                                    timeout=120)
    reqs = queue.Queue()
    call = infer.ModelStreamInfer(iter(reqs.get, None), timeout=120)
    reqs.put(oip.text_request(TEXTGEN, "Once upon a time", request_id="long", **long_req))
    first = next(call)
    assert not first.error_message and first.infer_response.id == "long", first
    assert not unary.done(), "the ModelInfer request ended early: %s" % unary

    unload(infer, TEXTGEN, timeout=30)

    e = unary.exception(timeout=30)
    assert e is not None and e.code() == grpc.StatusCode.UNAVAILABLE, e
    assert UNLOADING_MSG in e.details(), e.details()
    err = None
    for msg in call:
        if msg.error_message:
            err = msg
            break
        assert not oip.is_final(msg.infer_response), "the long request finished: %s" % msg
    assert err is not None, "the stream ended without an error for the long request"
    assert err.error_message.startswith("UNAVAILABLE: "), err.error_message
    assert UNLOADING_MSG in err.error_message, err.error_message
    assert err.infer_response.id == "long"
    # The stream goes on.
    x = pb.ModelInferRequest(model_name=IDENTITY, id="after")
    oip.add_input(x, "x", "INT64", [2], np.array([4, 5]), raw=True)
    reqs.put(x)
    after = next(call)
    assert not after.error_message and after.infer_response.id == "after", after
    reqs.put(None)
    assert list(call) == []
    assert server.alive()
    load(infer, TEXTGEN)
    assert ready(infer, TEXTGEN)


# ---------------------------------------------------------------------------
# Regressions from a hostile test round (reload, config.json, --model, CLI,
# shutdown, NOT_FOUND lists).
# ---------------------------------------------------------------------------

def identity_answers(infer, name):
    req = pb.ModelInferRequest(model_name=name)
    oip.add_input(req, "x", "INT64", [1], np.array([7]), raw=True)
    return oip.outputs(infer.ModelInfer(req, timeout=T))["x"].value.tolist() == [7]


@pytest.mark.parametrize("config, code, needle", [
    ('{"task": "nope"}', grpc.StatusCode.NOT_FOUND, "nope"),
    ('{"task": "identity", "parameters": {"inputs": "a:FP99:1"}}', None, "FP99"),
])
def test_reload_failing_in_the_plugin_keeps_the_old_model(server, infer, config, code, needle):
    """A config that parses but fails later (no such task plugin, a
    parameter the task refuses) leaves the old model serving: the new one is
    loaded next to it and swapped in only once ready."""
    repo = server.args[server.args.index("--model-repository") + 1]
    name = "reload-swap"
    d = oip.write_model(repo, name, {"task": "identity"})
    load(infer, name)
    (d / "config.json").write_text(config)
    e = oip.error_of(load, infer, name)
    assert code is None or e.code() == code, e
    assert needle in e.details(), e.details()
    assert ready(infer, name) and identity_answers(infer, name)
    assert index(infer)[name].state == "READY"
    (d / "config.json").write_text('{"task": "identity"}')
    load(infer, name)
    unload(infer, name)


def test_reload_has_no_gap(server, infer):
    """While a working reload runs, requests keep finding the model."""
    repo = server.args[server.args.index("--model-repository") + 1]
    name = "reload-nogap"
    oip.write_model(repo, name, {"task": "identity"})
    load(infer, name)
    stop = threading.Event()
    failures = []

    def hammer():
        while not stop.is_set():
            try:
                identity_answers(infer, name)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    failures.append(e.details())
    t = threading.Thread(target=hammer)
    t.start()
    try:
        for _ in range(20):
            load(infer, name)
    finally:
        stop.set()
        t.join()
    assert not failures, failures[:3]
    unload(infer, name)


def test_config_with_a_duplicate_key(server, infer):
    repo = server.args[server.args.index("--model-repository") + 1]
    oip.write_model(repo, "dup-key", '{"task": "identity", "task": "text-generation"}')
    e = oip.error_of(load, infer, "dup-key")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "'task' appears twice" in e.details(), e.details()
    oip.write_model(repo, "dup-key2", '{"task": "identity", "parameters": {"a": 1, "\\u0061": 2}}')
    e = oip.error_of(load, infer, "dup-key2")
    assert "'a' appears twice" in e.details(), e.details()


@pytest.mark.parametrize("kind", ["directory", "fifo", "devzero"])
def test_config_that_is_not_a_regular_file(server, infer, kind):
    repo = server.args[server.args.index("--model-repository") + 1]
    name = "cfg-" + kind
    d = Path(repo) / name
    d.mkdir()
    cfg = d / "config.json"
    if kind == "directory":
        cfg.mkdir()
    elif kind == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.symlink_to("/dev/zero")
    t0 = time.monotonic()
    e = oip.error_of(load, infer, name)
    assert time.monotonic() - t0 < T
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "config.json is not a regular file" in e.details(), e.details()


def test_config_integer_beyond_64_bits(server, infer):
    repo = server.args[server.args.index("--model-repository") + 1]
    oip.write_model(repo, "huge-threads", '{"task": "identity", "threads": 99999999999999999999999}')
    e = oip.error_of(load, infer, "huge-threads")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert "out of range" in e.details() and "18446744073709551615" not in e.details(), e.details()


def test_model_file_linked_from_elsewhere_is_followed(server, infer, tmp_path):
    """A shared model file symlinked into the repository is served (links are
    made by whoever runs the server; "file" itself cannot leave the model's
    directory)."""
    repo = server.args[server.args.index("--model-repository") + 1]
    d = oip.write_model(repo, "link-out", {"task": "text-generation", "file": "model.gguf"})
    (d / "model.gguf").symlink_to(harness.MODEL_F32)
    load(infer, "link-out")
    assert infer.ModelReady(pb.ModelReadyRequest(name="link-out"),
                            timeout=harness.CALL_TIMEOUT_S).ready


def test_not_found_lists_loaded_models_with_a_marker_when_cut(server, infer):
    repo = server.args[server.args.index("--model-repository") + 1]
    names = ["long-%02d-" % i + "x" * 110 for i in range(12)]
    for n in names:
        oip.write_model(repo, n, {"task": "identity"})
        load(infer, n)
    try:
        req = pb.ModelInferRequest(model_name="no-such-model")
        oip.add_input(req, "x", "INT64", [1], np.array([7]), raw=True)
        e = oip.error_of(infer.ModelInfer, req, timeout=T)
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        assert e.details().rstrip().endswith("more)"), e.details()
    finally:
        for n in names:
            unload(infer, n)


@pytest.mark.parametrize("arg, status, needle", [
    ("a b=/nowhere.gguf", 2, "not a valid model name"),
    ("x" * 129 + "=/nowhere.gguf", 2, "not a valid model name"),
    ("/nowhere/my model.gguf", 2, "NAME=PATH"),
    ("/nowhere/dir=1/m.gguf", 1, "m.gguf"),
])
def test_velod_model_argument(arg, status, needle):
    code, out = harness.run_velod_once(["--model", arg])
    assert code == status, out
    assert needle in out and "out of memory" not in out, out


def test_cli_unknown_option_after_the_command():
    r = harness.run_velo(["load", "-dash"])
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert "'-dash'" in err and "velo load" in err and "--" in err, err


def test_sigterm_with_an_idle_channel_is_quick(tmp_path):
    v = oip.start_velod(oip.make_repository(tmp_path / "models"), tmp_path / "velod.log")
    ch = v.channel()
    try:
        oip.stub(ch).ServerLive(pb.ServerLiveRequest(), timeout=T)  # connected, then idle
        t0 = time.monotonic()
        code, killed = v.stop()
        took = time.monotonic() - t0
    finally:
        ch.close()
    assert code == 0 and not killed
    assert took < 1.5, "SIGTERM with an idle channel took %.2f s" % took
