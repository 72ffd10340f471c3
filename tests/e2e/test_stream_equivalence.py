"""test_stream_equivalence.py - the text a request gets does not depend on how
it is asked for (docs/protocol.md, "The same request gives byte-identical
text"): velo.v1 Generate (streamed, chunks concatenated), OIP ModelInfer
(one response), OIP ModelStreamInfer streamed (chunks concatenated) and
ModelStreamInfer with stream = false give the same bytes, the same token
ids and the same finish_reason and usage, for many deterministic requests
(greedy, or sampled with a seed) run concurrently, so under batching:

  - without stop strings, including hot sampling that emits byte-fallback
    tokens, so that multi-byte characters are split across tokens (a
    case with such a character is required, not hoped for);
  - with stop strings taken from the output itself: across a token
    boundary, whose beginning occurs earlier in the text (held back, then
    released), that never completes (nothing may be lost or leak), that
    matches at the very first token, several at once (the earliest wins),
    with multi-byte characters.  The text ends right before the stop
    string, and generation stopped at the token that completed it;
  - every streamed message's text is valid UTF-8 by itself (read as raw
    bytes, so that the protobuf library cannot hide a broken message);
  - max_tokens 0, 1, 2 give exactly that many tokens (0: empty text,
    finish_reason "length", completion_tokens 0, the documented policy),
    and a huge max_tokens (2**31-1 over velo.v1, 2**62 over OIP INT64) is
    clamped to the context with finish_reason "length", without velod's
    resident memory growing.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from oip_ref import client as oip

MODEL = "stories"
CONTEXT = 256
T = harness.CALL_TIMEOUT_S
THREADS = 8
# Temperatures and probabilities exactly representable in float32, since
# GenerateRequest carries float and the OIP parameters double.  WARM picks
# whole-character pieces such as U+2019 now and then; HOT samples almost
# uniformly, so that byte-fallback tokens <0x80>..<0xFF> come often (a
# valid multi-byte character from them, now and then).
WARM = dict(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0)
HOT = dict(temperature=64.0, top_k=0, top_p=1.0, min_p=0.0)
CAFE = "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \u2615 \u2014 \u00abok\u00bb"
UTF8_SEED_SEARCH = range(1, 41)
RSS_GROWTH_LIMIT_KIB = 4096
NEVER = "\u2603zq\u0007"   # ends stop strings that must never complete


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    repo = oip.write_model(root / "models", MODEL, {
        "task": "text-generation", "file": "model.gguf", "context_length": CONTEXT,
        "parameters": {"max_active": 16}}, gguf=harness.MODEL_F32).parent
    yield from oip.serve(root, repo=repo)


# ---- one request, four ways --------------------------------------------------------------
class Out:
    """What one way of asking returned: text chunks as raw bytes, ids per
    chunk, finish_reason and usage."""

    def __init__(self, via):
        self.via = via
        self.chunks, self.ids_per_chunk = [], []
        self.finish_reason = self.prompt_tokens = self.completion_tokens = None

    @property
    def data(self):
        return b"".join(self.chunks)

    @property
    def ids(self):
        return [i for c in self.ids_per_chunk for i in c]


def spec_of(prompt, max_tokens, stop=(), **params):
    return dict(prompt=prompt, max_tokens=max_tokens, stop=list(stop), **params)


def via_generate(channel, spec):
    params = {k: v for k, v in spec.items() if k != "prompt"}
    r = harness.generate_raw(channel, harness.generate_request(MODEL, spec["prompt"], **params),
                             timeout=T)
    out = Out("Generate")
    out.chunks, out.ids_per_chunk = r.chunks, r.ids_per_message
    out.finish_reason, out.prompt_tokens, out.completion_tokens = (
        r.finish_reason, r.prompt_tokens, r.completion_tokens)
    return out


def oip_request(spec, **extra):
    params = {k: v for k, v in spec.items() if k not in ("prompt", "stop")}
    if spec["stop"]:
        params["stop"] = json.dumps(spec["stop"])  # always a JSON array: one or several
    params.update(extra)
    return oip.text_request(MODEL, spec["prompt"], request_id="r", **params)


def take_oip(out, resp):
    outs = oip.outputs(resp)
    out.chunks.append(oip.text_of(resp))
    out.ids_per_chunk.append([int(i) for i in outs["token_ids"].value.reshape(-1)])


def take_final(out, resp):
    p = {k: oip.param_value(v) for k, v in resp.parameters.items()}
    out.finish_reason = p.get("finish_reason")
    out.prompt_tokens = p.get("prompt_tokens")
    out.completion_tokens = p.get("completion_tokens")


def via_infer(infer, spec):
    out = Out("ModelInfer")
    resp = infer.ModelInfer(oip_request(spec), timeout=T)
    take_oip(out, resp)
    take_final(out, resp)
    return out


def via_stream(infer, spec, stream=True):
    out = Out("ModelStreamInfer" + ("" if stream else " stream=false"))
    res = oip.stream_infer(infer, [oip_request(spec, **({} if stream else {"stream": False}))],
                           timeout=T)["r"]
    assert not res.errors, (out.via, res.errors)
    for k, resp in enumerate(res.responses):
        assert oip.is_final(resp) == (k == len(res.responses) - 1), "%s: final flag of %d" % (
            out.via, k)
        take_oip(out, resp)
    if not stream:
        assert len(res.responses) == 1, "%s: %d responses" % (out.via, len(res.responses))
    take_final(out, res.responses[-1])
    return out


def four_ways(channel, infer, spec):
    return [via_infer(infer, spec), via_generate(channel, spec), via_stream(infer, spec),
            via_stream(infer, spec, stream=False)]


def run_concurrently(channel, infer, specs):
    """Every spec four ways, all at once (up to THREADS calls in flight).
    Returns, per spec, [ModelInfer, Generate, streamed, stream=false]."""
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [[pool.submit(f, *args) for f, args in (
            (via_infer, (infer, s)), (via_generate, (channel, s)), (via_stream, (infer, s)),
            (via_stream, (infer, s, False)))] for s in specs]
        return [[f.result() for f in row] for row in futures]


def check_same(spec, outs):
    """The four answers are byte-identical; every chunk is valid UTF-8 by
    itself; the usage counts the ids; no stop string appears.  Returns the
    unary answer's text (str)."""
    unary = outs[0]
    for o in outs:
        where = "%s for %r" % (o.via, spec)
        for k, c in enumerate(o.chunks):
            try:
                c.decode("utf-8", "strict")
            except UnicodeDecodeError as e:
                pytest.fail("%s: message %d is not valid UTF-8 by itself: %r (%s)" % (where, k, c, e))
        assert o.data == unary.data, "%s: %r\n  != ModelInfer's %r" % (where, o.data, unary.data)
        assert o.ids == unary.ids, where
        assert o.finish_reason == unary.finish_reason, (where, o.finish_reason, unary.finish_reason)
        assert o.completion_tokens == len(o.ids), (where, o.completion_tokens, len(o.ids))
        assert o.prompt_tokens == unary.prompt_tokens, where
        assert o.finish_reason in ("stop", "length"), where
    text = unary.data.decode("utf-8")
    for s in spec["stop"]:
        assert s not in text, "stop string %r in the output %r" % (s, text)
    return text


def released_after(gen, k):
    """The text a no-stop Generate answer had released once its first k
    tokens were out (str)."""
    n, data = 0, b""
    for c, ids in zip(gen.chunks, gen.ids_per_chunk):
        if n + len(ids) > k:
            break
        n += len(ids)
        data += c
    return data.decode("utf-8")


# ---- the base requests (no stop strings) -------------------------------------------------
# stories260K's byte-fallback tokens <0x80>..<0xFF> (ids 3..258 are <0x00>..<0xFF>)
HIGH_BYTE_TOKENS = range(3 + 0x80, 3 + 0x100)
NUL_TOKEN = 3


def split_chars(gen):
    """The multi-byte characters that came in pieces, in order: a message
    whose ids are high byte tokens and whose text is empty (the assembler
    holding them back), and the next one's text starting with a non-ASCII
    character other than U+FFFD."""
    out = []
    for k in range(len(gen.chunks) - 1):
        ids = gen.ids_per_chunk[k]
        if ids and all(i in HIGH_BYTE_TOKENS for i in ids) and gen.chunks[k] == b"":
            nxt = gen.chunks[k + 1].decode("utf-8")
            if nxt and ord(nxt[0]) > 0x7F and nxt[0] != "\ufffd":
                out.append(nxt[0])
    return out


def split_multibyte(gen):
    """The length in bytes of the longest character of split_chars (0: none)."""
    return max((len(c.encode("utf-8")) for c in split_chars(gen)), default=0)


def non_ascii(text):
    return [c for c in text if ord(c) > 0x7F and c != "\ufffd"]


class Base:
    def __init__(self, spec, outs, text):
        self.spec, self.outs, self.text = spec, outs, text
        self.gen = outs[1]


@pytest.fixture(scope="module")
def bases(server_channel, infer, prompts):
    """Deterministic requests without stop strings, checked four ways."""
    specs = [
        spec_of(prompts[0]["prompt"], 64, temperature=0.0, ignore_eos=True),
        spec_of(prompts[4]["prompt"], 64, temperature=0.0, ignore_eos=True),
        spec_of(prompts[2]["prompt"], 100, temperature=0.0),  # may end at EOS
        spec_of("Once upon a time", 120, temperature=0.75, seed=3),
        spec_of("The little dog", 120, temperature=1.25, seed=11, ignore_eos=True),
        spec_of("", 100, temperature=1.5, seed=8, top_k=0, ignore_eos=True),
    ]
    # Seeds until the answers have multi-byte characters: hot, one made of
    # 2 byte tokens and one of 3 or more (the first may be both); warm, a
    # whole-character piece.
    split = wide = warm = None
    for seed in UTF8_SEED_SEARCH:
        if split is None or wide is None:
            s = spec_of("Once upon a time", 100, seed=seed, ignore_eos=True, **HOT)
            g = via_generate(server_channel, s)
            n = 0 if NUL_TOKEN in g.ids else split_multibyte(g)  # U+0000: its own test
            if n and split is None:
                split = s
            if n >= 3 and wide is None:
                wide = s
        if warm is None:
            s = spec_of(CAFE, 100, seed=seed, ignore_eos=True, **WARM)
            if non_ascii(via_generate(server_channel, s).data.decode("utf-8")):
                warm = s
        if split and wide and warm:
            break
    specs += [s for s in (split, wide, warm) if s and s not in specs]
    rows = run_concurrently(server_channel, infer, specs)
    return [Base(s, outs, check_same(s, outs)) for s, outs in zip(specs, rows)]


def test_reference_text_four_ways(bases, prompts):
    for b, p in zip(bases[:2], (prompts[0], prompts[4])):
        assert b.outs[0].ids == p["f32"]["gen_ids"]
        assert b.text == p["f32"]["gen_text"]


def test_multibyte_characters_split_across_tokens(bases):
    """The UTF-8 cases mean something only if it happened: hot sampling gave
    an answer in which a multi-byte character came in several tokens (its
    equivalence four ways was checked with the others)."""
    longest = max(split_multibyte(b.gen) for b in bases)
    assert longest >= 2, "no seed in %s gave a multi-byte character split across tokens" % (
        UTF8_SEED_SEARCH,)
    assert longest >= 3, "no seed in %s gave a character of 3 or 4 bytes split across tokens" % (
        UTF8_SEED_SEARCH,)
    warm = [b for b in bases if b.spec.get("temperature") == WARM["temperature"]]
    assert any(non_ascii(b.text) for b in warm), "no seed in %s gave a non-ASCII piece" % (
        UTF8_SEED_SEARCH,)


def test_nul_character_four_ways(server_channel, infer):
    """U+0000 is valid UTF-8, and the byte token <0x00> gives it: an answer
    that contains it is the same four ways too (whatever the policy for it,
    one way of asking must not drop or cut it and the others keep it)."""
    for seed in UTF8_SEED_SEARCH:
        s = spec_of("Once upon a time", 100, seed=seed, ignore_eos=True, **HOT)
        if NUL_TOKEN in via_infer(infer, s).ids:
            break
    else:
        pytest.fail("no seed in %s sampled <0x00>" % (UTF8_SEED_SEARCH,))
    check_same(s, four_ways(server_channel, infer, s))


# ---- stop strings -----------------------------------------------------------------------
def run_stop_cases(server_channel, infer, cases):
    """cases: [(base, stops)].  Runs each four ways and checks it against its
    base: the text is the base's up to the earliest stop string (all of it
    if none occurs, with the base's finish_reason), the ids are the base's
    first ones, and generation stopped at the token that completed the stop
    string.  Returns the texts."""
    # A stop string is non-empty and has no NUL (text fields refuse it);
    # hot answers contain control characters of every kind.
    cases = [(b, [s for s in stops if s and "\x00" not in s]) for b, stops in cases]
    cases = [(b, stops) for b, stops in cases if stops]
    specs = [dict(b.spec, stop=list(stops)) for b, stops in cases]
    rows = run_concurrently(server_channel, infer, specs)
    texts = []
    for (b, stops), spec, outs in zip(cases, specs, rows):
        text = check_same(spec, outs)
        hits = [b.text.find(s) for s in stops if s in b.text]
        ids = outs[0].ids
        assert ids == b.outs[0].ids[:len(ids)], "ids differ from the base's: %r" % spec
        if hits:
            assert text == b.text[:min(hits)], "%r: got %r" % (spec, text)
            assert outs[0].finish_reason == "stop", spec
            k = len(ids)
            assert any(s in released_after(b.gen, k) for s in stops), (spec, k)
            assert not any(s in released_after(b.gen, k - 1) for s in stops), (
                "%r: generation went on after the stop string was complete" % spec)
        else:
            assert text == b.text, "%r: got %r, want the whole %r" % (spec, text, b.text)
            assert ids == b.outs[0].ids
            assert outs[0].finish_reason == b.outs[0].finish_reason, spec
        texts.append(text)
    return texts


def chunk_texts(b):
    return [c.decode("utf-8") for c in b.gen.chunks]


def spanning_stops(b):
    """Stop strings across a token boundary: the end of one message's text
    and the start of the next one's, at a few places in the text."""
    cs = chunk_texts(b)
    out = []
    for k in range(1, len(cs) - 1):
        a, c = cs[k], cs[k + 1]
        if len(a) >= 2 and len(c) >= 2:
            out.append(a[-2:] + c[:2])
    return out[len(out) // 3::max(1, len(out) // 3)][:3]


def test_stop_spanning_token_boundaries(server_channel, infer, bases):
    cases = [(b, [s]) for b in bases for s in spanning_stops(b)]
    assert len(cases) >= 2 * len(bases), cases
    run_stop_cases(server_channel, infer, cases)


def earlier_prefix_stop(text):
    """A piece of text whose first occurrence is at p while its beginning
    also occurs before p: the matcher holds that beginning back, must
    release it, and stops at p."""
    for p in range(len(text) // 3, len(text) - 6):
        for n in (6, 8, 10):
            s = text[p:p + n]
            if len(s) == n and text.find(s) == p and 0 <= text.find(s[:n // 2 + 1]) < p:
                return s
    return None


def test_stop_whose_beginning_occurs_earlier(server_channel, infer, bases):
    cases = [(b, [s]) for b in bases for s in [earlier_prefix_stop(b.text)] if s]
    assert len(cases) >= len(bases) // 2, [b.text for b in bases]
    run_stop_cases(server_channel, infer, cases)


def test_stop_never_completed_leaks_nothing(server_channel, infer, bases):
    """Stop strings whose beginnings occur again and again but which never
    complete: everything held back is released, nothing is lost."""
    cases = []
    for b in bases:
        t = b.text
        stops = [t[len(t) // 2:len(t) // 2 + 4] + NEVER, " " + NEVER, t[:1] + NEVER]
        cases.append((b, stops))
    texts = run_stop_cases(server_channel, infer, cases)
    assert texts == [b.text for b in bases]


def test_stop_at_the_first_token(server_channel, infer, bases):
    cases = [(b, [b.text[:2]]) for b in bases if len(b.text) >= 2]
    texts = run_stop_cases(server_channel, infer, cases)
    assert all(t == "" for t in texts), texts


def test_several_stop_strings_earliest_wins(server_channel, infer, bases):
    cases = []
    for b in bases:
        t = b.text
        if len(t) < 40:
            continue
        late, early = t[3 * len(t) // 4:3 * len(t) // 4 + 5], t[len(t) // 3:len(t) // 3 + 3]
        cases.append((b, [late, NEVER, early]))
    assert cases
    run_stop_cases(server_channel, infer, cases)


def test_stop_with_multibyte_characters(server_channel, infer, bases):
    cases = []
    for b in bases:
        t = b.text
        chars = list(dict.fromkeys(split_chars(b.gen) + non_ascii(t)))[:3]
        for c in chars:
            p = t.find(c)
            cases.append((b, [c]))
            if p >= 1:
                cases.append((b, [t[p - 1:p + 1]]))       # ASCII, then the character
            cases.append((b, [c + NEVER]))               # never completes
    assert cases, "no answer with a non-ASCII character"
    run_stop_cases(server_channel, infer, cases)


# ---- max_tokens ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_small_max_tokens_exact(server_channel, infer, prompts, n):
    p = prompts[0]
    spec = spec_of(p["prompt"], n, temperature=0.0, ignore_eos=True)
    outs = four_ways(server_channel, infer, spec)
    text = check_same(spec, outs)
    assert outs[0].ids == p["f32"]["gen_ids"][:n]
    assert text == harness.pieces_text(p["f32"]["gen_pieces_hex"], n)
    for o in outs:
        assert o.finish_reason == "length" and o.completion_tokens == n, o.via
    if n == 0:
        assert text == "" and all(c == b"" for o in outs for c in o.chunks)


def test_huge_max_tokens_clamped_without_allocating(server, server_channel, infer, prompts):
    p = prompts[1]
    n_prompt = len(p["prompt_ids"])
    pid = server.proc.pid
    clamped = spec_of(p["prompt"], CONTEXT, temperature=0.0, ignore_eos=True)
    four_ways(server_channel, infer, clamped)  # warm: the same work, a modest max_tokens
    rss0 = oip.vm_rss_kib(pid)
    specs = [spec_of(p["prompt"], 2**31 - 1, temperature=0.0, ignore_eos=True),   # int32 field
             spec_of(p["prompt"], 2**62, temperature=0.0, ignore_eos=True)]       # INT64 parameter
    outs = [via_generate(server_channel, specs[0])] + [
        via_infer(infer, specs[1]), via_stream(infer, specs[1]), via_stream(infer, specs[1], False)]
    rss1 = oip.vm_rss_kib(pid)
    check_same(specs[1], [outs[1], outs[0], outs[2], outs[3]])
    for o in outs:
        assert o.finish_reason == "length", o.via
        assert o.prompt_tokens == n_prompt, o.via
        assert o.completion_tokens == len(o.ids) == CONTEXT - n_prompt, o.via
    assert outs[0].ids[:64] == p["f32"]["gen_ids"]
    assert rss1 - rss0 < RSS_GROWTH_LIMIT_KIB, "VmRSS grew from %d KiB to %d KiB" % (rss0, rss1)
