"""test_cli.py - the `velo` command-line client against the shared velod:
generate streams the reference text, models lists the models, tokenize and
health work, and failures give the gRPC status, a message and exit status 1.
"""
import pytest

import harness
from harness import F32, NOBOS, Q8


def velo(velod, *args):
    return harness.run_velo(list(args) + ["--server", velod.address])


def test_generate_prints_reference_text(velod, prompts):
    p = prompts[0]
    r = velo(velod, "generate", p["prompt"], "--model", F32, "--max-tokens", "16",
             "--temperature", "0")
    assert r.returncode == 0, r.stderr
    expected = harness.pieces_text(p["f32"]["gen_pieces_hex"], 16)
    out = r.stdout.decode("utf-8")
    assert out in (expected, expected + "\n"), (out, expected)
    err = r.stderr.decode()
    assert "finish_reason=length" in err and "completion_tokens=16" in err, err


def test_generate_default_model_and_options(velod, prompts):
    """Without --model the CLI uses the first listed model (stories260K);
    --seed, --top-k, --stop and --ignore-eos reach the server."""
    p = prompts[0]
    ref = p["f32"]["gen_text"]
    r = velo(velod, "generate", p["prompt"], "--max-tokens", "64", "--temperature", "0.7",
             "--top-k", "1", "--seed", "5", "--ignore-eos", "--stop", "Lily")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")
    assert out in (ref[:ref.index("Lily")], ref[:ref.index("Lily")] + "\n"), out
    assert "finish_reason=stop" in r.stderr.decode()


def test_models_lists_the_models(velod):
    r = velo(velod, "models")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for name in (F32, Q8, NOBOS):
        assert name in out, out
    line = next(ln for ln in out.splitlines() if ln.split()[0] == F32)
    assert "text-generation" in line and "cpu" in line and "stories260K.gguf" in line, line


def test_tokenize(velod, prompts):
    p = prompts[0]
    r = velo(velod, "tokenize", p["prompt"], "--model", F32)
    assert r.returncode == 0, r.stderr
    assert [int(x) for x in r.stdout.split()] == p["prompt_ids"]


def test_health(velod):
    r = velo(velod, "health")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "SERVING"


def test_error_status_and_exit_code(velod):
    r = velo(velod, "generate", "hello", "--model", "no-such-model")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "NOT_FOUND" in err and "no-such-model" in err, err


def test_server_side_validation_error(velod):
    r = velo(velod, "generate", "hello", "--model", F32, "--max-tokens", "-5")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "INVALID_ARGUMENT" in err and "max_tokens" in err, err


def test_connection_failure_is_clear():
    port = harness.free_port()  # nothing listens there
    r = harness.run_velo(["models", "--server", "127.0.0.1:%d" % port, "--timeout", "5"], timeout=30)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "UNAVAILABLE" in err and "127.0.0.1:%d" % port in err, err


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["generate"], ["models", "--max-tokens", "3"],
                                  ["generate", "x", "--max-tokens", "many"]])
def test_usage_errors(args):
    r = harness.run_velo(args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert r.stderr, args


def test_help():
    r = harness.run_velo(["--help"])
    assert r.returncode == 0
    out = r.stdout.decode()
    for word in ("generate", "models", "tokenize", "health", "--server", "--max-tokens",
                 "--temperature", "--seed", "--stop", "--timeout"):
        assert word in out, word
