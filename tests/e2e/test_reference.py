"""test_reference.py - velod's greedy output against llama.cpp's reference
(../shared/reference/stories260K.json), over gRPC: every prompt on the F32
model gives exactly the reference ids and text, the Q8_0 model gives the
reference ids up to the reference's first near-tie (the comparison rule in
../shared/reference/README.md), Tokenize gives the reference prompt ids, and
four concurrent streams each get their own reference.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from harness import F32, Q8, velo_pb2

N_PROMPTS = 5


def check_usage(res, prompt, n):
    assert res.finish_reason == "length", "finish_reason %r" % res.finish_reason
    assert res.completion_tokens == n
    assert res.prompt_tokens == len(prompt["prompt_ids"])


@pytest.mark.parametrize("index", range(N_PROMPTS))
def test_f32_greedy_matches_reference(stub, prompts, index):
    p = prompts[index]
    res = harness.greedy(stub, F32, p["prompt"], 64)
    assert res.ids == p["f32"]["gen_ids"]
    assert res.text == p["f32"]["gen_text"]
    check_usage(res, p, 64)


@pytest.mark.parametrize("index", range(N_PROMPTS))
def test_q8_0_greedy_matches_reference_up_to_near_tie(stub, prompts, index):
    p = prompts[index]
    ref = p["q8_0"]
    limit = harness.near_tie_limit(ref["top5_per_step"])
    res = harness.greedy(stub, Q8, p["prompt"], 64)
    assert len(res.ids) == 64
    assert res.ids[:limit] == ref["gen_ids"][:limit], "first %d ids (before the first near-tie)" % limit
    if limit == 64:
        assert res.text == ref["gen_text"]
    check_usage(res, p, 64)


@pytest.mark.parametrize("model", [F32, Q8])
@pytest.mark.parametrize("index", range(N_PROMPTS))
def test_tokenize_matches_reference(stub, prompts, model, index):
    p = prompts[index]
    r = stub.Tokenize(velo_pb2.TokenizeRequest(model=model, text=p["prompt"]),
                      timeout=harness.CALL_TIMEOUT_S)
    assert list(r.token_ids) == p["prompt_ids"]


def test_tokenize_without_special(stub, prompts):
    p = prompts[0]
    r = stub.Tokenize(velo_pb2.TokenizeRequest(model=F32, text=p["prompt"], add_special=False),
                      timeout=harness.CALL_TIMEOUT_S)
    assert list(r.token_ids) == p["prompt_ids"][1:]


def test_empty_prompt_starts_from_bos(stub, prompts):
    """stories260K adds BOS: an empty prompt generates from BOS alone, as
    llama.cpp does (the reference's prompt 3)."""
    p = next(q for q in prompts if q["prompt"] == "")
    assert p["prompt_ids"] == [1]
    res = harness.greedy(stub, F32, "", 64)
    assert res.ids == p["f32"]["gen_ids"]
    assert res.prompt_tokens == 1


def test_list_models(models_stub):
    r = models_stub.ListModels(velo_pb2.ListModelsRequest(), timeout=harness.CALL_TIMEOUT_S)
    by_name = {m.name: m for m in r.models}
    assert set(by_name) >= {F32, Q8, harness.NOBOS}
    m = by_name[F32]
    assert m.task == "text-generation"
    assert m.backend == "cpu"
    assert m.file.endswith("stories260K.gguf")
    assert 0 < m.context_length <= 2048  # the file's llama.context_length, or less
    assert by_name[Q8].file.endswith("stories260K-q8_0.gguf")


def test_four_concurrent_streams(velod, prompts):
    """Four greedy streams at once (each on its own channel, so on its own
    connection) each get exactly their reference ids."""
    jobs = [prompts[i % N_PROMPTS] for i in range(8)]

    def one(p):
        with harness.grpc.insecure_channel(
                velod.address,
                options=harness.CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = harness.velo_pb2_grpc.TextGenerationStub(ch)
            return harness.greedy(stub, F32, p["prompt"], 64).ids

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, jobs))
    for p, ids in zip(jobs, got):
        assert ids == p["f32"]["gen_ids"], "prompt %s" % p["index"]
