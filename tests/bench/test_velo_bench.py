"""test_velo_bench.py - the velo-bench tool (sdk/tools/velo_bench.c) as a user
runs it: a short measurement on stories260K.gguf whose JSON report has every
field with sensible values and whose table names the tests, and the errors:
every bad option exits 2 with a message naming the option, the value and
what is allowed; a missing, truncated or non-GGUF file and an unknown
backend exit 1 with a message saying what is wrong.

Run by ctest (tests/bench/CMakeLists.txt) with VELO_BIN_DIR, VELO_PLUGIN_DIR
and VELO_SHARED_DIR set; by hand:
  VELO_BIN_DIR=build/bin VELO_PLUGIN_DIR=build/lib/velo VELO_SHARED_DIR=../shared \\
      /usr/bin/python3 -m pytest -q tests/bench/test_velo_bench.py
"""
import json
import os
import re
import subprocess

import pytest

BIN = os.path.join(os.environ.get("VELO_BIN_DIR", "build/bin"), "velo-bench")
PLUGINS = os.environ.get("VELO_PLUGIN_DIR", "build/lib/velo")
SHARED = os.environ.get("VELO_SHARED_DIR", "../shared")
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")
# stories260K: 5 layers of wq, wk, wv, wo (64x64, 64x32, 64x32, 64x64) and
# three 64x172 feed-forward matrices, an untied 64x512 output, F32, plus one
# 64-float embedding row.
STORIES_BYTES_PER_TOKEN = (5 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 172) + 64 * 512 + 64) * 4
FAST = ["--bw-mib", "64", "--bw-passes", "3"]


def bench(*args, timeout=120):
    return subprocess.run([BIN, "--plugin-dir", PLUGINS] + list(args), capture_output=True,
                          timeout=timeout, text=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    r = bench("-m", MODEL, "-p", "16", "-n", "8", "-r", "2", "-t", "1,2", "--json", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())


def test_json_report_fields(report):
    _, j = report
    assert j["tool"] == "velo-bench" and j["velo_version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", j["date"]), j["date"]
    assert j["host"]["cpu_model"] and j["host"]["online_cpus"] >= 1
    s = j["settings"]
    assert s["n_prompt"] == [16] and s["n_gen"] == [8] and s["threads"] == [1, 2]
    assert s["repetitions"] == 2 and s["backend"] == "cpu" and s["bw_mib"] == 64
    m = j["model"]
    assert m["architecture"] == "llama" and m["type"] == "F32"
    assert m["file_bytes"] == os.path.getsize(MODEL)
    assert 0 < m["weight_bytes"] <= m["file_bytes"] and m["params"] > 0
    assert m["bytes_per_token"] == STORIES_BYTES_PER_TOKEN
    assert [l["threads"] for l in j["loads"]] == [1, 2]
    for l in j["loads"]:
        assert l["load_s"] > 0 and l["rss_after_load_bytes"] > 0 and l["device_name"]


def test_json_tests_and_bandwidth(report):
    _, j = report
    names = [(t["test"], t["threads"]) for t in j["tests"]]
    assert names == [("pp16", 1), ("tg8", 1), ("pp16", 2), ("tg8", 2)]
    probes = j["bandwidth"]
    # One probe before the first test of each thread count and one after every test.
    assert len(probes) == 2 + len(j["tests"])
    for p in probes:
        assert len(p["samples_gbs"]) == 3 and all(x > 0 for x in p["samples_gbs"]), p
        assert p["median_gbs"] > 0 and p["threads"] in (1, 2)
    for t in j["tests"]:
        assert len(t["samples_s"]) == 2 and all(x > 0 for x in t["samples_s"]), t
        assert len(t["samples_tps"]) == 2 and all(x > 0 for x in t["samples_tps"]), t
        assert t["min_tps"] <= t["median_tps"] <= t["max_tps"] and t["median_tps"] > 0
        assert t["bandwidth_gbs"] > 0 and t["peak_rss_bytes"] > 0 and t["kv_cache_bytes"] > 0
        before, after = (probes[i] for i in t["bandwidth_probes"])
        assert before["threads"] == after["threads"] == t["threads"]
        assert after["where"] == "after " + t["test"]
        if t["kind"] == "decode":
            assert t["n_prompt"] == 1 and t["n_gen"] == 8
            assert t["roofline_fraction"] > 0 and t["roofline_tps"] > 0
            want = t["median_tps"] * m_bytes(j) / (t["bandwidth_gbs"] * 1e9)
            assert abs(t["roofline_fraction"] - want) < 1e-9 * max(1, want)
            assert t["last_token"] >= 0
        else:
            assert t["n_prompt"] == 16 and t["n_gen"] == 0 and t["roofline_fraction"] is None
    # The same seed gives the same prompt, so the same greedy tokens.
    tg = [t["last_token"] for t in j["tests"] if t["kind"] == "decode"]
    assert tg[0] == tg[1], tg
    assert j["memory"]["peak_rss_bytes"] > 0 and j["memory"]["file_bytes"] == os.path.getsize(MODEL)


def m_bytes(j):
    return j["model"]["bytes_per_token"]


def test_table(report):
    r, _ = report
    out = r.stdout
    assert "| model" in out and "t/s" in out and "roofline" in out, out
    rows = [ln for ln in out.splitlines() if ln.startswith("| llama")]
    assert len(rows) == 4, out
    assert "pp16" in rows[0] and "tg8" in rows[1]
    assert "RSS after load" in out and "peak RSS" in out and "model file" in out


def test_json_to_stdout():
    r = bench("-m", MODEL, "-p", "4", "-n", "0", "-r", "1", "-t", "1", "--no-warmup", "--json", "-", *FAST)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert [t["test"] for t in j["tests"]] == ["pp4"] and j["settings"]["warmup"] is False


@pytest.mark.parametrize("args, words", [
    (["-p", "12,x"], ["-p/--n-prompt", "'x'", "not an integer", "0 to 65536"]),
    (["-p", "70000"], ["-p/--n-prompt", "'70000'", "out of range", "0 to 65536"]),
    (["-p", "8,"], ["-p/--n-prompt", "empty item"]),
    (["-n", "-1"], ["-n/--n-gen", "'-1'", "0 to 65536"]),
    (["-t", "0"], ["-t/--threads", "'0'", "1 to 1024"]),
    (["-r", "0"], ["-r/--repetitions", "'0'", "1 to 1000"]),
    (["-r", "2x"], ["-r/--repetitions", "'2x'", "1 to 1000"]),
    (["--bw-mib", "8"], ["--bw-mib", "'8'", "16 to 65536"]),
    (["--bw-passes", "0"], ["--bw-passes", "'0'", "1 to 100"]),
    (["--device", "-2"], ["--device", "'-2'", "0 to 1023"]),
    (["--seed", "-1"], ["--seed", "'-1'", "0 to 18446744073709551615"]),
    (["-p", "0", "-n", "0"], ["nothing to measure"]),
    (["--frobnicate"], ["unknown option '--frobnicate'"]),
    (["-p"], ["option '-p' needs a value"]),
    (["extra"], ["unexpected argument 'extra'"]),
])
def test_bad_options(args, words):
    r = bench("-m", MODEL, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_model_required():
    r = bench("-p", "4")
    assert r.returncode == 2 and "-m/--model FILE is required" in r.stderr, r.stderr


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    r = bench("-m", str(path), *FAST)
    assert r.returncode == 1, r.stderr
    assert str(path) in r.stderr and "NOT_FOUND" in r.stderr, r.stderr


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.gguf"
    with open(MODEL, "rb") as f:
        path.write_bytes(f.read(5000))
    r = bench("-m", str(path), *FAST)
    assert r.returncode == 1, r.stderr
    assert str(path) in r.stderr and "DATA_LOSS" in r.stderr, r.stderr


def test_not_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("this is not a model\n" * 10)
    r = bench("-m", str(path), *FAST)
    assert r.returncode == 1 and str(path) in r.stderr, r.stderr


def test_unknown_backend():
    r = bench("-m", MODEL, "--backend", "nosuch", "-p", "4", "-n", "0", *FAST)
    assert r.returncode == 1, r.stderr
    assert "--backend 'nosuch'" in r.stderr and "available: cpu" in r.stderr, r.stderr


def test_unwritable_json(tmp_path):
    path = tmp_path / "missing-dir" / "out.json"
    r = bench("-m", MODEL, "-p", "4", "--json", str(path), *FAST)
    assert r.returncode == 2 and "--json" in r.stderr and str(path) in r.stderr, r.stderr


def test_failed_run_leaves_no_json(tmp_path):
    out = tmp_path / "out.json"
    r = bench("-m", MODEL, "--backend", "nosuch", "-p", "4", "--json", str(out), *FAST)
    assert r.returncode == 1 and not out.exists(), r.stderr
