"""test_bench_serve.py - the load generator sdk/tools/velo_bench_serve.py runs
against the shared velod for a few seconds and writes a JSON report with
sane fields, and it refuses servers that are not loopback.  It checks no
speed: the numbers are only checked for being present, positive and
consistent with the settings.
"""
import json
import subprocess

import harness

TOOL = harness.ROOT / "sdk" / "tools" / "velo_bench_serve.py"


def run_tool(args, timeout=60.0):
    env = harness.clean_env()
    env["VELO_PYTHON_DIR"] = str(harness.PYTHON_DIR)
    return subprocess.run(["/usr/bin/python3", str(TOOL)] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_report_fields(velod, tmp_path):
    out = tmp_path / "bench.json"
    p = run_tool(["--server", velod.address, "--model", harness.F32, "--concurrency", "3",
                  "--requests", "6", "--max-tokens", "8", "--prompt", "Once upon a time",
                  "--duration-s", "20", "--idle-ttft", "--json", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr
    for label in ("requests/s", "generated tokens/s", "TTFT p50 / p99", "ITL p50 / p99", "errors"):
        assert label in p.stdout, p.stdout
    rep = json.loads(out.read_text())
    s = rep["settings"]
    assert (s["model"], s["concurrency"], s["requests"], s["max_tokens"]) == (harness.F32, 3, 6, 8)
    load = rep["load"]
    assert load["requests_started"] == load["requests_completed"] == 6
    assert load["requests_cut_off"] == load["requests_short"] == 0 and load["errors"] == {}
    assert load["generated_tokens"] == 6 * 8
    assert load["wall_s"] > 0 and load["requests_per_s"] > 0 and load["tokens_per_s"] > 0
    assert abs(load["tokens_per_s"] - 8 * load["requests_per_s"]) <= 0.01 * load["tokens_per_s"] + 0.01
    assert load["ttft_ms"]["samples"] == 6
    assert 0 < load["ttft_ms"]["p50"] <= load["ttft_ms"]["p99"]
    assert load["itl_ms"]["samples"] == 6 * 7
    assert 0 <= load["itl_ms"]["p50"] <= load["itl_ms"]["p99"]
    idle = rep["idle"]
    assert idle["requests_completed"] == 1 and idle["generated_tokens"] == 8
    assert idle["ttft_ms"]["p50"] > 0


def test_errors_by_code(velod, tmp_path):
    out = tmp_path / "bench.json"
    p = run_tool(["--server", velod.address, "--model", "no-such-model", "--requests", "2",
                  "--duration-s", "20", "--json", str(out)])
    assert p.returncode == 1, p.stdout + p.stderr
    load = json.loads(out.read_text())["load"]
    assert load["errors"] == {"NOT_FOUND": 2} and load["requests_completed"] == 0


def test_time_bound(velod, tmp_path):
    out = tmp_path / "bench.json"
    p = run_tool(["--server", velod.address, "--model", harness.F32, "--concurrency", "2",
                  "--requests", "100000", "--max-tokens", "32", "--duration-s", "2",
                  "--json", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr
    load = json.loads(out.read_text())["load"]
    assert load["requests_started"] < 100000 and load["errors"] == {}
    assert load["wall_s"] < 2.0 + 5.0


def test_refuses_non_loopback():
    for server in ("10.0.0.1:50051", "example.com:50051", "[2001:db8::1]:50051", "0.0.0.0:50051"):
        p = run_tool(["--server", server, "--model", harness.F32])
        assert p.returncode == 2, (server, p.stdout, p.stderr)
        assert "loopback" in p.stderr and server.split(":")[0].strip("[") in p.stderr, p.stderr
