"""test_startup.py - velod's start-up, each case in its own velod process with
a bounded run time: bad model files stop it with a non-zero status and a
message naming the file and the problem; broken plugins in the plugin
directory are logged with their path and the real reason and skipped while
velod starts and serves; --list-plugins describes the plugins; SIGTERM stops
a serving velod cleanly.
"""
import re
import shutil

import pytest

import harness
from harness import F32, velo_pb2_grpc

BAD_PLUGINS = ["libvelo-notaplugin.so", "libvelo-badabi.so", "libvelo-undefsym.so"]


def fails_to_start(model_path):
    """Runs velod on model_path; it must exit non-zero by itself."""
    rc, out = harness.run_velod_once(
        ["--listen", "127.0.0.1:%d" % harness.free_port(), "--model", "bad=%s" % model_path],
        timeout=30)
    assert rc is not None, "velod did not exit within 30 s; output:\n" + out[-3000:]
    assert rc != 0, "velod exited 0; output:\n" + out[-3000:]
    return out


def test_truncated_gguf(tmp_path):
    data = harness.MODEL_F32.read_bytes()
    path = tmp_path / "truncated-stories260K.gguf"
    path.write_bytes(data[:len(data) // 2])
    out = fails_to_start(path)
    assert path.name in out, out
    assert re.search(r"(?i)truncat|byte offset \d+|end of (the )?file|beyond|past the end", out), out


def test_context_length_past_the_pool_limit(tmp_path):
    """A model whose context length no KV pool can index (4294967295
    tokens) is refused naming the context length and --ctx-size, not a
    kv_cache_size nobody set."""
    import struct
    data = bytearray(harness.MODEL_F32.read_bytes())
    key = b"llama.context_length"
    i = data.find(key)
    assert i > 0 and struct.unpack_from("<I", data, i + len(key))[0] == 4  # uint32
    struct.pack_into("<I", data, i + len(key) + 4, 4294967295)
    path = tmp_path / "ctx-max.gguf"
    path.write_bytes(bytes(data))
    out = fails_to_start(path)
    assert "its context length of 4294967295 tokens" in out, out[-2000:]
    assert "lower --ctx-size" in out and "kv_cache_size" not in out, out[-2000:]


def test_truncated_gguf_header(tmp_path):
    """Cut inside the metadata (the tokenizer arrays), not in the tensor data."""
    path = tmp_path / "header-cut-stories260K.gguf"
    path.write_bytes(harness.MODEL_F32.read_bytes()[:5000])
    out = fails_to_start(path)
    assert path.name in out, out
    assert re.search(r"(?i)truncat|byte offset \d+|end of (the )?file|beyond|past the end", out), out


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "not-a-model.gguf"
    path.write_text("This is a text file, not a GGUF model.\n" * 100)
    out = fails_to_start(path)
    assert path.name in out, out
    assert re.search(r"(?i)not a gguf|magic", out), out


def test_missing_model_file(tmp_path):
    path = tmp_path / "no-such-model.gguf"
    out = fails_to_start(path)
    assert path.name in out, out


def _log_line(log, name):
    lines = [ln for ln in log.splitlines() if name in ln]
    assert lines, "velod's log does not mention %s:\n%s" % (name, log[-4000:])
    return "\n".join(lines)


def test_bad_plugins_are_logged_and_skipped(tmp_path, prompts):
    for name in BAD_PLUGINS:
        if not (harness.BAD_PLUGIN_DIR / name).exists():
            pytest.fail("missing %s (built by tests/plugins)" % (harness.BAD_PLUGIN_DIR / name))
    real = sorted(harness.PLUGIN_DIR.glob("libvelo-*.so"))
    assert real, "no plugins in %s" % harness.PLUGIN_DIR
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    for f in real + [harness.BAD_PLUGIN_DIR / n for n in BAD_PLUGINS]:
        shutil.copy2(f, pdir / f.name)

    server = harness.Velod(["--plugin-dir", str(pdir), "--model", "%s=%s" % (F32, harness.MODEL_F32)],
                           tmp_path / "velod.log")
    server.start()
    try:
        with server.channel() as ch:
            p = prompts[0]
            res = harness.greedy(velo_pb2_grpc.TextGenerationStub(ch), F32, p["prompt"], 8)
            assert res.ids == p["f32"]["gen_ids"][:8]
        log = server.log()
    finally:
        rc, killed = server.stop()

    major, minor = harness.abi_version()
    line = _log_line(log, str(pdir / "libvelo-notaplugin.so"))
    assert re.search(r"(?i)not a velo plugin|velo_plugin_entry", line), line
    line = _log_line(log, str(pdir / "libvelo-badabi.so"))
    assert "%d.0" % (major + 1) in line and "%d.%d" % (major, minor) in line, line
    line = _log_line(log, str(pdir / "libvelo-undefsym.so"))
    assert "undefined symbol" in line and "velo_test_missing_symbol" in line, line
    assert "file not found" not in line, line


def test_list_plugins():
    rc, out = harness.run_velod_once(["--list-plugins"], timeout=30)
    assert rc == 0, out
    major, minor = harness.abi_version()
    abi = "%d.%d" % (major, minor)
    cpu = [ln for ln in out.splitlines() if re.search(r"\bcpu\b", ln) and "backend" in ln]
    assert cpu, out
    textgen = [ln for ln in out.splitlines() if "text-generation" in ln and "task" in ln]
    assert textgen, out
    for line in (cpu[0], textgen[0]):
        assert abi in line, line
        assert re.search(r"\d+\.\d+\.\d+", line), line    # the plugin's version
        assert re.search(r"(?i)available|\bok\b", line), line  # the probe result


def test_sigterm_stops_cleanly(tmp_path):
    server = harness.Velod(["--model", "%s=%s" % (F32, harness.MODEL_F32)], tmp_path / "velod.log")
    server.start()
    rc, killed = server.stop()
    assert not killed, "velod ignored SIGTERM for %.0f s" % harness.STOP_TIMEOUT_S
    assert rc == 0, "exit status %s; log:\n%s" % (rc, server.log()[-3000:])
