"""test_kv_counters.py - the core's part of the serving engine (issue 4): the
KV cache size and the engine counters.

  - velod --kv-cache-size with a bad value (0, negative, a fraction, a space
    before the unit, a wrongly cased or unknown unit, overflow, empty) exits
    non-zero at once with a message naming the option, quoting the value and
    stating the allowed forms;
  - a good value reaches every model velod loads (--model and repository
    models), unless the model's config.json sets its own kv_cache_size: the
    load log line says which size each model got;
  - a config.json kv_cache_size that the parser refuses makes LoadModel fail
    with INVALID_ARGUMENT naming the key and the value;
  - ListModels fills ModelInfo.counters: empty for the identity task (it
    keeps none); for text generation, when the engine reports counters, they
    include the KV pool's (kv_blocks_total, ...) with sane values;
  - `velo models --counters` (and -c) prints them under each model's row.
"""
import re

import grpc
import pytest

import harness
from harness import velo_pb2, velo_pb2_grpc
from oip_ref import client as oip

T = harness.CALL_TIMEOUT_S
KV_OPTION = "16MiB"           # what the server fixture passes to --kv-cache-size
KV_OPTION_BYTES = 16 << 20
OWN = "id-own"                # a repository model with its own kv_cache_size
OWN_TOKENS = 4096
BAD_KV = "id-bad-kv"          # a repository model whose kv_cache_size is refused

# The text-generation engine reports its counters through velo.stats.v1 once
# the serving engine of issue 4 lands in plugins/textgen.  Until then an
# empty list is accepted for stories260K; set this to True then, so that a
# missing counter list fails the test.
TEXTGEN_COUNTERS_REQUIRED = True

# The counters docs/operations.md lists ("Engine counters").
POOL_COUNTERS = ("kv_block_size", "kv_blocks_total", "kv_blocks_used", "kv_blocks_cached",
                 "kv_blocks_free", "kv_cache_bytes", "context_length")
ALL_COUNTERS = POOL_COUNTERS + (
    "requests_running", "requests_queued", "prefix_cache_queries", "prefix_cache_hits",
    "prefix_cache_hit_tokens", "preemptions", "engine_steps", "batch_tokens")


# ---- --kv-cache-size at start-up ------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "-4096", "1.5GiB", "2.0", "512 MiB", "512mib", "1kb",
                                   "12XB", "1PB", "1K", "", "+5", "0MiB",
                                   "9223372036854775808", "8589934592GiB"])
def test_bad_kv_cache_size_stops_velod(value):
    rc, out = harness.run_velod_once(
        ["--listen", "127.0.0.1:%d" % harness.free_port(), "--kv-cache-size", value,
         "--model", "%s=%s" % (harness.F32, harness.MODEL_F32)], timeout=30)
    assert rc is not None, "velod did not exit within 30 s; output:\n" + out[-3000:]
    assert rc != 0, "velod accepted --kv-cache-size %r; output:\n%s" % (value, out[-3000:])
    line = next((ln for ln in out.splitlines() if "--kv-cache-size:" in ln), None)
    assert line, out[-3000:]
    assert "'%s'" % value in line, line
    for form in ("token count", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB"):
        assert form in line, (form, line)
    assert "listening on" not in out, out[-3000:]


def test_kv_cache_size_in_help():
    rc, out = harness.run_velod_once(["--help"], timeout=30)
    assert rc == 0, out
    assert "--kv-cache-size SIZE" in out, out


# ---- a velod with --kv-cache-size, --model and a repository -------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """velod --kv-cache-size 16MiB serving stories260K (--model) and a
    repository with identity models: 'identity' (no kv_cache_size), 'id-own'
    (its own 4096 tokens), 'stories' (text generation, no kv_cache_size) and
    'id-bad-kv' (a refused kv_cache_size, not loaded at start-up)."""
    root = tmp_path_factory.mktemp("kv")
    repo = oip.make_repository(root / "models")
    oip.write_model(repo, OWN, {"task": "identity", "kv_cache_size": OWN_TOKENS})
    oip.write_model(repo, BAD_KV, {"task": "identity", "kv_cache_size": "1.5GiB"})
    yield from oip.serve(root, "--kv-cache-size", KV_OPTION, "--model-control", "explicit",
                         "--load-model", oip.IDENTITY, "--load-model", oip.TEXTGEN,
                         "--load-model", OWN,
                         "--model", "%s=%s" % (harness.F32, harness.MODEL_F32), repo=repo)


@pytest.fixture(scope="module")
def models(server_channel):
    return velo_pb2_grpc.ModelsStub(server_channel)


def list_models(models):
    r = models.ListModels(velo_pb2.ListModelsRequest(), timeout=T)
    return {m.name: m for m in r.models}


def test_kv_cache_size_reaches_each_model(server):
    """The registry logs the size each model was given: the option for
    --model and repository models without a kv_cache_size, the config's
    own otherwise."""
    want = {harness.F32: "%d bytes" % KV_OPTION_BYTES,
            oip.IDENTITY: "%d bytes" % KV_OPTION_BYTES,
            oip.TEXTGEN: "%d bytes" % KV_OPTION_BYTES,
            OWN: "%d tokens" % OWN_TOKENS}
    log = server.log()
    for name, size in want.items():
        m = re.search(r"model '%s' loaded from .*KV cache ([^)]*)\)" % re.escape(name), log)
        assert m, "no load line for %s:\n%s" % (name, log[-4000:])
        assert m.group(1) == size, (name, m.group(0))


def test_bad_kv_cache_size_in_config(models):
    msg = harness.expect_error(
        lambda: models.LoadModel(velo_pb2.LoadModelRequest(name=BAD_KV), timeout=T),
        grpc.StatusCode.INVALID_ARGUMENT, BAD_KV, "kv_cache_size", "'1.5GiB'", "fraction")
    assert "KiB" in msg and "token count" in msg, msg
    assert list_models(models)[BAD_KV].state == "UNAVAILABLE"


def test_identity_has_no_counters(models):
    got = list_models(models)
    for name in (oip.IDENTITY, OWN):
        assert got[name].state == "READY", got[name]
        assert list(got[name].counters) == [], (name, got[name].counters)
    assert list(got[BAD_KV].counters) == []  # not loaded


def check_textgen_counters(info):
    """The counters of a READY text-generation model.  Empty is accepted
    until the engine reports them (TEXTGEN_COUNTERS_REQUIRED)."""
    names = [c.name for c in info.counters]
    if not names:
        assert not TEXTGEN_COUNTERS_REQUIRED, "%s reports no counters" % info.name
        return {}
    assert len(names) == len(set(names)), "a counter twice: %s" % names
    assert "kv_blocks_total" in names, names
    for n in names:
        assert re.fullmatch(r"[a-z0-9_.]{1,64}", n), n
    c = {x.name: x.value for x in info.counters}
    for n in POOL_COUNTERS:
        assert n in c, (n, names)
    assert c["kv_blocks_total"] > 0 and c["kv_block_size"] > 0, c
    assert c["kv_blocks_used"] + c["kv_blocks_cached"] + c["kv_blocks_free"] == c["kv_blocks_total"], c
    # --kv-cache-size 16MiB reached the engine: the pool is that size give
    # or take the rounding to whole blocks.
    per_block = c["kv_cache_bytes"] // c["kv_blocks_total"]
    assert abs(c["kv_cache_bytes"] - KV_OPTION_BYTES) < per_block, (c, per_block)
    assert c["context_length"] == info.context_length, (c, info.context_length)
    for n in ALL_COUNTERS:
        if n in c:
            assert c[n] >= 0, (n, c)
    return c


def test_textgen_counters(models, textgen):
    # One request first, so that the engine has run.
    harness.greedy(textgen, harness.F32, "Once upon a time", 4)
    got = list_models(models)
    for name in (harness.F32, oip.TEXTGEN):
        assert got[name].state == "READY", got[name]
        c = check_textgen_counters(got[name])
        if c and name == harness.F32:
            assert c.get("engine_steps", 1) > 0 and c.get("batch_tokens", 1) > 0, c
            assert c.get("requests_running", 0) == 0 and c.get("requests_queued", 0) == 0, c


@pytest.mark.parametrize("flag", ["--counters", "-c"])
def test_cli_models_counters(server, models, flag):
    got = list_models(models)
    r = harness.run_velo(["models", flag, "--server", server.address])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    for name, info in got.items():
        row = next(i for i, ln in enumerate(lines) if ln.split()[0] == name)
        below = []
        for ln in lines[row + 1:]:
            if not ln.startswith("    "):
                break
            below.append(ln.split())
        want = [[c.name, str(c.value)] for c in info.counters]
        if name == harness.F32 and want:  # values move between the two calls
            assert [b[0] for b in below] == [w[0] for w in want], (name, below)
        elif name != harness.F32:
            assert below == want, (name, below, want)
    # Without the flag, no counter lines.
    r = harness.run_velo(["models", "--server", server.address])
    assert r.returncode == 0, r.stderr
    assert not any(ln.startswith("    ") for ln in r.stdout.decode().splitlines()), r.stdout


def test_cli_counters_only_for_models():
    r = harness.run_velo(["generate", "hello", "--counters"])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert b"does not take --counters" in r.stderr, r.stderr
