"""test_sampling.py - sampling and stopping over gRPC: seeds make sampling
repeatable, top-k 1 and a tiny top-p reduce to greedy, stop strings end the
text right before them, max_tokens gives exactly that many tokens with
finish_reason "length", and every streamed text chunk is valid UTF-8 even
when the model emits raw byte tokens.
"""
import pytest

import harness
from harness import F32, velo_pb2

GENERATE = "/velo.v1.TextGeneration/Generate"


def sample(stub, prompt, seed, n=48, **params):
    params.setdefault("temperature", 0.8)
    return harness.generate(stub, F32, prompt, max_tokens=n, ignore_eos=True, seed=seed, **params)


def test_same_seed_same_output(stub):
    a = sample(stub, "Once upon a time", 42)
    b = sample(stub, "Once upon a time", 42)
    assert len(a.ids) == 48
    assert a.ids == b.ids
    assert a.text == b.text


def test_different_seeds_differ(stub):
    base = sample(stub, "Once upon a time", 42).ids
    others = [sample(stub, "Once upon a time", s).ids for s in (1, 2, 3, 4)]
    assert any(o != base for o in others), "five seeds gave the same 48 tokens"


def test_top_k_1_is_greedy(stub, prompts):
    p = prompts[1]
    res = sample(stub, p["prompt"], 7, n=32, top_k=1)
    assert res.ids == p["f32"]["gen_ids"][:32]


def test_tiny_top_p_is_greedy(stub, prompts):
    p = prompts[2]
    res = sample(stub, p["prompt"], 7, n=32, top_k=0, top_p=1e-6)
    assert res.ids == p["f32"]["gen_ids"][:32]


def _stop_cases(text):
    """(stops, expected text) for the reference text of prompt 0: a word, a
    string across a token boundary, the earliest of two, and one that never
    occurs."""
    return [
        ([" little girl"], text[:text.index(" little girl")]),
        (["ere wa"], text[:text.index("ere wa")]),
        (["park", "Lily"], text[:min(text.index("park"), text.index("Lily"))]),
    ]


@pytest.mark.parametrize("case", range(3))
def test_stop_string(stub, prompts, case):
    p = prompts[0]
    ref_text = p["f32"]["gen_text"]
    stops, expected = _stop_cases(ref_text)[case]
    res = harness.greedy(stub, F32, p["prompt"], 64, stop=stops)
    assert res.text == expected
    assert res.finish_reason == "stop"
    assert res.completion_tokens == len(res.ids)
    assert res.ids == p["f32"]["gen_ids"][:len(res.ids)]


def test_stop_string_never_seen(stub, prompts):
    p = prompts[0]
    res = harness.greedy(stub, F32, p["prompt"], 64, stop=["zqxj"])
    assert res.text == p["f32"]["gen_text"]
    assert res.finish_reason == "length"


@pytest.mark.parametrize("n", [0, 1, 2, 8])
def test_max_tokens_exact(stub, prompts, n):
    p = prompts[0]
    res = harness.greedy(stub, F32, p["prompt"], n)
    assert res.ids == p["f32"]["gen_ids"][:n]
    assert res.text == harness.pieces_text(p["f32"]["gen_pieces_hex"], n)
    assert res.finish_reason == "length"
    assert res.completion_tokens == n
    assert res.prompt_tokens == len(p["prompt_ids"])


def test_max_tokens_clamped_to_context(stub, models_stub, prompts):
    """max_tokens beyond the context is clamped to what the context has left
    after the prompt (docs/protocol.md), with finish_reason "length"."""
    n_ctx = {m.name: m for m in models_stub.ListModels(
        velo_pb2.ListModelsRequest(), timeout=harness.CALL_TIMEOUT_S).models}[F32].context_length
    p = prompts[0]
    res = harness.greedy(stub, F32, p["prompt"], 1_000_000, timeout=300)
    assert res.finish_reason == "length"
    assert len(res.ids) == res.completion_tokens == n_ctx - len(p["prompt_ids"])
    assert res.ids[:64] == p["f32"]["gen_ids"]


def _raw_text_chunks(channel, request):
    """Generate with the responses left as bytes: the text field (1) of each
    message as raw bytes, and all ids, so invalid UTF-8 cannot be hidden by
    the protobuf library."""
    call = channel.unary_stream(GENERATE, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=lambda b: b)
    chunks, ids = [], []
    for raw in call(request, timeout=120):
        for field, wt, v in harness.wire_fields(raw):
            if field == 1:
                chunks.append(v)
            elif field == 2 and wt == 2:  # packed
                i = 0
                while i < len(v):
                    x, i = harness.read_varint(v, i)
                    ids.append(x)
            elif field == 2:
                ids.append(v)
    return chunks, ids


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streamed_chunks_are_valid_utf8(channel, seed):
    """Hot sampling from the whole vocabulary emits byte-fallback tokens
    (<0x80>..<0xFF>); no chunk may carry a broken UTF-8 sequence."""
    req = harness.generate_request(F32, "Once upon a time", max_tokens=300, temperature=3.0,
                                   top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True, seed=seed)
    chunks, ids = _raw_text_chunks(channel, req)
    assert len(ids) == 300
    for i, c in enumerate(chunks):
        try:
            c.decode("utf-8", "strict")
        except UnicodeDecodeError as e:
            pytest.fail("chunk %d is not valid UTF-8: %r (%s)" % (i, c, e))


def test_byte_tokens_were_sampled(channel):
    """The UTF-8 test above means something only if byte tokens come up:
    ids 3..258 are <0x00>..<0xFF> in this vocabulary."""
    seen = set()
    for seed in (1, 2, 3):
        req = harness.generate_request(F32, "Once upon a time", max_tokens=300, temperature=3.0,
                                       top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True, seed=seed)
        seen.update(_raw_text_chunks(channel, req)[1])
    assert any(3 + 0x80 <= i <= 3 + 0xFF for i in seen)
