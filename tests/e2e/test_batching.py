"""test_batching.py - the serving engine of the text-generation plugin
(plugins/textgen/engine.c) seen from outside, through its answers and the
engine counters of velo.v1.Models/ListModels (ModelInfo.counters):

  - continuous batching: 16 concurrent streams, started at staggered moments
    so that requests join and leave the running batch mid-flight, each get
    exactly what they get alone (greedy: the llama.cpp reference ids and
    text, or the ids recorded alone on the same server; sampled with a
    seed: the same seeded request alone), and the counters show that steps
    really carried several sequences;
  - a cancelled stream and a stream whose deadline passes mid-flight give
    their KV blocks back (pool counters back to idle within a bounded time,
    used + cached + free == total throughout), and the next request works;
  - prefix caching: a prompt of more than 3 blocks sent twice hits the cache
    for its whole blocks, and one sharing only its first tokens with an
    earlier prompt reuses only the whole blocks of the shared part; the
    answers do not change;
  - preemption: a pool of exactly one context (the smallest kv_cache_size
    allowed) and several concurrent streams that together need more: every
    stream still gets exactly its solo tokens, the counters show
    preemptions, the pool ends idle; a kv_cache_size below the context is
    refused at load with a message naming kv_cache_size.

Two velods of its own: `server` (conftest gives textgen and server_channel
for it) with 16 running slots and a long context, so that an unbounded
request runs for seconds; `small`, a context of 64 tokens in a pool of 64.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import harness
from harness import velo_pb2, velo_pb2_grpc
from oip_ref import client as oip

MODEL = "stories"
CONTEXT = 8192            # `server`: an unbounded request runs for seconds
POOL_TOKENS = 16384       # `server`'s kv_cache_size (1024 blocks of 16)
MAX_ACTIVE = 16
SMALL_CONTEXT = 64        # `small`: context and pool, 4 blocks of 16
LONG = 1_000_000          # clamped to the context
T = harness.CALL_TIMEOUT_S
IDLE_BOUND_S = 5.0        # blocks back in the pool after a cancel or deadline
POLL_S = 0.01


def write_repo(root, config):
    """A repository with stories260K as MODEL and config's keys."""
    cfg = {"task": "text-generation", "file": "model.gguf"}
    cfg.update(config)
    return oip.write_model(root, MODEL, cfg, gguf=harness.MODEL_F32).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    repo = write_repo(root / "models", {"context_length": CONTEXT, "kv_cache_size": POOL_TOKENS,
                                        "parameters": {"max_active": MAX_ACTIVE,
                                                       "max_queue_size": 64}})
    yield from oip.serve(root, repo=repo)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-pool")
    repo = write_repo(root / "models", {"context_length": SMALL_CONTEXT,
                                        "kv_cache_size": SMALL_CONTEXT,
                                        "parameters": {"max_active": 8}})
    yield from oip.serve(root, repo=repo)


def own_channel(server):
    """A channel with its own connection (a client of its own)."""
    return grpc.insecure_channel(server.address, options=harness.CHANNEL_OPTIONS
                                 + [("grpc.use_local_subchannel_pool", 1)])


# ---- counters ------------------------------------------------------------------------------
def counters(channel):
    """The engine counters, with the pool's accounting checked: every block
    is used, cached or free."""
    c = harness.model_counters(channel, MODEL)
    assert c, "ListModels reports no counters for %r" % MODEL
    total = c["kv_blocks_used"] + c["kv_blocks_cached"] + c["kv_blocks_free"]
    assert total == c["kv_blocks_total"], "used + cached + free != total: %s" % c
    for k in ("kv_blocks_used", "kv_blocks_cached", "kv_blocks_free", "requests_running",
              "requests_queued"):
        assert c[k] >= 0, c
    return c


def wait_idle(channel, bound_s=IDLE_BOUND_S):
    """Polls the counters until no block is used and no request runs or
    waits; fails after bound_s.  Returns the idle counters."""
    deadline = time.monotonic() + bound_s
    while True:
        c = counters(channel)
        if c["kv_blocks_used"] == 0 and c["requests_running"] == 0 and c["requests_queued"] == 0:
            return c
        assert time.monotonic() < deadline, "the pool is not idle %.0f s later: %s" % (bound_s, c)
        time.sleep(POLL_S)


def delta(after, before, *names):
    return {n: after[n] - before[n] for n in names}


# ---- 1. continuous batching ----------------------------------------------------------------
EXTRA_PROMPTS = ["The cat sat on the mat and", "A big red ball rolled down the hill",
                 "Sam and his dog went to"]
# (prompt, temperature, seed) of the sampled streams
SAMPLED = [("Once upon a time", 0.8, 5), ("The little dog", 1.0, 17), ("Lily wanted to", 1.3, 29)]
STAGGER_S = 0.015


class Job:
    """One stream of the concurrent test: its request, what it must give,
    and when it started, got its first message and ended (client side)."""

    def __init__(self, name, prompt, long, **params):
        self.name, self.prompt, self.long, self.params = name, prompt, long, params
        self.want_ids = self.want_text = None
        self.res = self.error = None
        self.t_start = self.t_first = self.t_end = None

    def run(self, server):
        self.t_start = time.monotonic()
        try:
            with own_channel(server) as ch:
                stub = velo_pb2_grpc.TextGenerationStub(ch)
                res = harness.GenerateResult()
                for msg in stub.Generate(harness.generate_request(MODEL, self.prompt, **self.params),
                                         timeout=T):
                    if self.t_first is None:
                        self.t_first = time.monotonic()
                    res.messages += 1
                    res.ids.extend(msg.token_ids)
                    res.chunks.append(msg.text)
                    if msg.finish_reason:
                        res.finish_reason = msg.finish_reason
                        res.completion_tokens = msg.completion_tokens
                self.res = res
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e
        self.t_end = time.monotonic()


def test_sixteen_concurrent_streams_match_solo(server, textgen, server_channel, prompts):
    # Long streams (greedy on prompts of our own, and seeded sampling) make
    # the background batch; the short reference streams join and leave it.
    longs = []
    for i, p in enumerate(EXTRA_PROMPTS):
        longs.append(Job("greedy %r" % p, p, True, max_tokens=500 + 150 * i, temperature=0.0,
                         ignore_eos=True))
    for p, temp, seed in SAMPLED:
        longs.append(Job("seed %d temperature %g %r" % (seed, temp, p), p, True,
                         max_tokens=450 + seed * 10, temperature=temp, seed=seed, ignore_eos=True))
    # What each long request gives alone, on this server, before the load.
    for j in longs:
        alone = harness.generate(textgen, MODEL, j.prompt, **j.params)
        assert alone.finish_reason == "length" and len(alone.ids) == j.params["max_tokens"], j.name
        j.want_ids, j.want_text = alone.ids, alone.text
    shorts = []
    for i in range(10):
        p = prompts[i % 5]
        j = Job("reference prompt %d (#%d)" % (p["index"], i), p["prompt"], False, max_tokens=64,
                temperature=0.0, ignore_eos=True)
        j.want_ids, j.want_text = p["f32"]["gen_ids"], p["f32"]["gen_text"]
        shorts.append(j)
    order = longs[:3] + shorts[:3] + longs[3:] + shorts[3:]
    assert len(order) == 16

    wait_idle(server_channel)
    before = counters(server_channel)
    peak = {"running": 0}
    stop_monitor = threading.Event()
    monitor_errors = []

    def monitor():
        with own_channel(server) as ch:
            while not stop_monitor.is_set():
                try:
                    c = counters(ch)
                except Exception as e:  # noqa: BLE001
                    monitor_errors.append(e)
                    return
                peak["running"] = max(peak["running"], c["requests_running"])
                time.sleep(POLL_S)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    threads = []
    t0 = time.monotonic()
    for k, job in enumerate(order):
        time.sleep(max(0.0, t0 + k * STAGGER_S - time.monotonic()))
        th = threading.Thread(target=job.run, args=(server,), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(T)
    stop_monitor.set()
    mon.join(T)
    assert not any(th.is_alive() for th in threads), "a stream did not end within %.0f s" % T
    assert not monitor_errors, monitor_errors
    after = wait_idle(server_channel)

    for j in order:
        assert j.error is None, "%s failed: %s" % (j.name, j.error)
        assert j.res.finish_reason == "length", (j.name, j.res.finish_reason)
        assert j.res.completion_tokens == len(j.res.ids) == j.params["max_tokens"], j.name
        assert j.res.ids == j.want_ids, "%s: ids under load differ from alone" % j.name
        assert j.res.text == j.want_text, "%s: text under load differs from alone" % j.name

    # Requests joined a running batch and left it while others went on.
    joined_left = [(s.name, l.name) for s in shorts for l in longs
                   if l.t_first < s.t_start and s.t_end < l.t_end]
    assert joined_left, "no short stream ran entirely inside a long one: %s" % [
        (j.name, j.t_start - t0, j.t_first - t0, j.t_end - t0) for j in order]
    assert peak["running"] >= 4, "at most %d requests ran at once" % peak["running"]

    # Batching: without it every step computes one token of one sequence,
    # so steps >= generated tokens.
    d = delta(after, before, "engine_steps", "batch_tokens")
    generated = sum(len(j.res.ids) for j in order)
    assert d["engine_steps"] > 0, d
    assert d["batch_tokens"] / d["engine_steps"] > 2, (d, generated)
    assert d["engine_steps"] < generated / 2, (d, generated)


# ---- 2. cancellation and deadlines free the blocks ------------------------------------------
def long_request(prompt="Once upon a time"):
    return harness.generate_request(MODEL, prompt, max_tokens=LONG, temperature=0.0,
                                    ignore_eos=True)


def next_request_works(textgen, prompts):
    p = prompts[1]
    res = harness.greedy(textgen, MODEL, p["prompt"], 16)
    assert res.ids == p["f32"]["gen_ids"][:16]
    assert res.finish_reason == "length"


def test_cancelled_stream_frees_its_blocks(server, textgen, server_channel, prompts):
    wait_idle(server_channel)
    call = textgen.Generate(long_request(), timeout=300)
    got = []
    for msg in call:
        got.extend(msg.token_ids)
        if len(got) >= 3:
            break
    assert len(got) >= 3, "the stream ended after %d tokens" % len(got)
    c = counters(server_channel)
    assert c["kv_blocks_used"] > 0, c
    assert c["requests_running"] == 1, c
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED
    wait_idle(server_channel)
    next_request_works(textgen, prompts)
    wait_idle(server_channel)


def test_deadline_mid_stream_frees_its_blocks(server, textgen, server_channel, prompts):
    wait_idle(server_channel)
    first = threading.Event()
    out = {"n": 0, "code": None}

    def read():
        try:
            for msg in textgen.Generate(long_request(), timeout=1.0):
                out["n"] += len(msg.token_ids)
                first.set()
            out["code"] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            out["code"] = e.code()
        finally:
            first.set()

    th = threading.Thread(target=read, daemon=True)
    th.start()
    assert first.wait(T), "no first message"
    c = counters(server_channel)
    assert c["kv_blocks_used"] > 0 and c["requests_running"] == 1, (c, out)
    th.join(T)
    assert not th.is_alive()
    # ~8000 tokens at this context take seconds: the deadline came mid-stream.
    assert out["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, out
    assert 0 < out["n"] < CONTEXT - 8, out
    wait_idle(server_channel)
    next_request_works(textgen, prompts)
    wait_idle(server_channel)


# ---- 3. prefix caching ---------------------------------------------------------------------
# Unique to this test (no other request of this server starts like it).
PREFIX_PROMPT = ("Once there was a small gray rabbit named Pip who lived under an old oak tree near "
                 "a quiet blue pond. Every morning Pip hopped to the water to drink and to say "
                 "hello to the frogs, the ducks and the tiny fish that swam in circles all day.")


def tokenize(textgen, text):
    return list(textgen.Tokenize(velo_pb2.TokenizeRequest(model=MODEL, text=text), timeout=T).token_ids)


def reusable_tokens(n_prompt, shared, block):
    """Tokens a prompt of n_prompt tokens can take from the cache when its
    first `shared` tokens have cached K/V: whole blocks only, and never its
    last token (whose logits must be computed)."""
    return min(shared, n_prompt - 1) // block * block


def test_prefix_cache_hit_on_repeated_prompt(textgen, server_channel):
    block = counters(server_channel)["kv_block_size"]
    ids = tokenize(textgen, PREFIX_PROMPT)
    assert len(ids) > 3 * block, "the prompt has %d tokens, not more than 3 blocks" % len(ids)
    names = ("prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_tokens")

    c0 = counters(server_channel)
    first = harness.greedy(textgen, MODEL, PREFIX_PROMPT, 24)
    c1 = counters(server_channel)
    second = harness.greedy(textgen, MODEL, PREFIX_PROMPT, 24)
    c2 = counters(server_channel)
    assert delta(c1, c0, *names) == {"prefix_cache_queries": 1, "prefix_cache_hits": 0,
                                     "prefix_cache_hit_tokens": 0}, delta(c1, c0, *names)
    d = delta(c2, c1, *names)
    assert d["prefix_cache_queries"] == 1 and d["prefix_cache_hits"] == 1, d
    assert d["prefix_cache_hit_tokens"] > 0 and d["prefix_cache_hit_tokens"] % block == 0, d
    assert d["prefix_cache_hit_tokens"] == reusable_tokens(len(ids), len(ids), block), (d, len(ids))
    assert second.ids == first.ids and second.text == first.text
    assert first.prompt_tokens == second.prompt_tokens == len(ids)


def test_prefix_cache_partial_share_reuses_whole_blocks_only(textgen, server_channel):
    block = counters(server_channel)["kv_block_size"]
    base = ("A tall giraffe called Zed liked to eat green leaves from the top of the trees in the "
            "sunny field, and he always shared them with his best friend, a little brown bird.")
    base_ids = tokenize(textgen, base)
    # Cut the text after a word and go on differently, at a cut where the
    # shared tokens end inside a block (after at least two whole blocks).
    words = base.split(" ")
    variant = shared = None
    for k in range(len(words) - 1, 0, -1):
        text = " ".join(words[:k]) + " then the cow sang a happy song to the moon."
        v_ids = tokenize(textgen, text)
        n = 0
        while n < min(len(v_ids), len(base_ids)) and v_ids[n] == base_ids[n]:
            n += 1
        if 2 * block < n < len(base_ids) - block and n % block >= 3:
            variant, shared = text, n
            break
    assert variant, "no cut of the text shares a prefix ending inside a block"

    harness.greedy(textgen, MODEL, base, 8)          # caches base's blocks
    c0 = counters(server_channel)
    res = harness.greedy(textgen, MODEL, variant, 8)
    c1 = counters(server_channel)
    d = delta(c1, c0, "prefix_cache_hits", "prefix_cache_hit_tokens")
    want = reusable_tokens(len(tokenize(textgen, variant)), shared, block)
    assert d == {"prefix_cache_hits": 1, "prefix_cache_hit_tokens": want}, (d, shared, block)
    # The same prompt again takes its own whole blocks, now all cached.
    again = harness.greedy(textgen, MODEL, variant, 8)
    assert again.ids == res.ids


def test_prefix_cache_hit_keeps_reference_output(textgen, server_channel, prompts):
    """The reference prompt of 52 tokens (3 whole blocks before its last
    token), once computed and then from the cache: both are llama.cpp's."""
    p = prompts[4]
    block = counters(server_channel)["kv_block_size"]
    assert len(p["prompt_ids"]) > 3 * block
    harness.greedy(textgen, MODEL, p["prompt"], 64)
    c0 = counters(server_channel)
    res = harness.greedy(textgen, MODEL, p["prompt"], 64)
    c1 = counters(server_channel)
    d = delta(c1, c0, "prefix_cache_hits", "prefix_cache_hit_tokens")
    assert d == {"prefix_cache_hits": 1,
                 "prefix_cache_hit_tokens": reusable_tokens(len(p["prompt_ids"]),
                                                            len(p["prompt_ids"]), block)}, d
    assert res.ids == p["f32"]["gen_ids"]
    assert res.text == p["f32"]["gen_text"]


# ---- 4. preemption in a pool of one context ----------------------------------------------
def test_small_pool_counters(small):
    with small.channel() as ch:
        c = wait_idle(ch)
        info = [m for m in velo_pb2_grpc.ModelsStub(ch).ListModels(
            velo_pb2.ListModelsRequest(), timeout=T).models if m.name == MODEL][0]
    assert info.context_length == SMALL_CONTEXT
    assert c["context_length"] == SMALL_CONTEXT
    assert c["kv_blocks_total"] * c["kv_block_size"] == SMALL_CONTEXT, c


def test_preemption_keeps_every_stream_exact(small, prompts):
    """Six unbounded greedy streams, each filling the whole context (about
    4 blocks), in a pool of 4 blocks: they preempt each other, yet each gets
    exactly its solo tokens (the reference ones: llama.cpp's)."""
    texts = [p["prompt"] for p in prompts[:4]] + EXTRA_PROMPTS[:2]
    with small.channel() as ch:
        stub = velo_pb2_grpc.TextGenerationStub(ch)
        solo = {t: harness.greedy(stub, MODEL, t, LONG) for t in texts}
        before = wait_idle(ch)

        def one(t):
            with own_channel(small) as ch2:
                return harness.greedy(velo_pb2_grpc.TextGenerationStub(ch2), MODEL, t, LONG)

        with ThreadPoolExecutor(len(texts)) as pool:
            got = dict(zip(texts, pool.map(one, texts)))
        after = wait_idle(ch)
    for p in prompts[:4]:
        n = SMALL_CONTEXT - len(p["prompt_ids"])
        assert solo[p["prompt"]].ids == p["f32"]["gen_ids"][:n], "prompt %d alone" % p["index"]
    for t in texts:
        r = got[t]
        assert r.finish_reason == "length", (t, r.finish_reason)
        assert r.completion_tokens == len(r.ids) == SMALL_CONTEXT - r.prompt_tokens, t
        assert r.ids == solo[t].ids, "%r: ids with preemption differ from alone" % t
        assert r.text == solo[t].text, t
    assert after["preemptions"] > before["preemptions"], (before, after)


@pytest.mark.parametrize("size", [SMALL_CONTEXT - 1, "64KiB"], ids=["tokens", "bytes"])
def test_kv_cache_size_below_context_refused(tmp_path, size):
    """64KiB holds 51 tokens of stories260K (1280 bytes each)."""
    repo = write_repo(tmp_path / "models", {"context_length": SMALL_CONTEXT, "kv_cache_size": size})
    code, out = harness.run_velod_once(["--listen", "127.0.0.1:%d" % harness.free_port(),
                                        "--model-repository", str(repo),
                                        "--model-control", "none"])
    assert code == 1, "status %s; output:\n%s" % (code, out[-3000:])
    assert "kv_cache_size" in out, out[-3000:]
    assert "context length %d" % SMALL_CONTEXT in out, out[-3000:]
    assert "listening on" not in out, out[-3000:]
