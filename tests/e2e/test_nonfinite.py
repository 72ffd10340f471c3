"""test_nonfinite.py - NaN and infinity in a model never turn into silent
garbage:

- a file whose weights hold a non-finite value (here every Q8_0 block scale
  of token_embd, or one element of an F32 matrix, set to infinity or NaN)
  is refused when it loads, naming the tensor, the block or element, and
  saying the file is corrupt;
- finite weights whose logits overflow (every output.weight element of the
  F32 model set to 3e38) load, but no token is sampled from non-finite
  logits: each request on that model fails with DATA_LOSS and a message
  saying what happened, while a good model in the same server answers
  correctly and the failed requests' KV blocks are freed.
"""
import shutil
import struct

import grpc
import pytest

import gguf_edit
import harness
from harness import expect_error

Q8_0, F32_TYPE = 8, 0     # ggml type ids
Q8_0_BLOCK = 34           # bytes: fp16 scale + 32 int8 quants
OVERFLOW = "overflowing"


def patched(tmp_path, src, name, fn):
    """A copy of model src with tensor name's bytes rewritten by
    fn(file, offset, type, ne)."""
    dst = tmp_path / ("%s-%s.gguf" % (src.stem, name.replace(".", "_")))
    shutil.copyfile(src, dst)
    off, ttype, ne = gguf_edit.tensor_span(dst, name)
    with open(dst, "r+b") as f:
        fn(f, off, ttype, ne)
    return dst


def test_nonfinite_scale_refused_at_load(tmp_path):
    def inf_scales(f, off, ttype, ne):
        assert ttype == Q8_0, "the test expects a Q8_0 token_embd, found type %d" % ttype
        for b in range(ne[0] * ne[1] // 32):
            f.seek(off + b * Q8_0_BLOCK)
            f.write(b"\x00\x7c")  # fp16 +inf
    bad = patched(tmp_path, harness.MODEL_Q8, "token_embd.weight", inf_scales)
    rc, out = harness.run_velod_once(["--model", "bad=%s" % bad, "--listen", "127.0.0.1:0",
                                      "--backend", "cpu"])
    assert rc not in (0, None), out
    assert "tensor 'token_embd.weight' (Q8_0) holds a NaN or infinite value in the scale (d) of " \
           "quantization block 0 (row 0): the file is corrupt" in out, out


def test_nonfinite_kquant_min_refused_at_load(tmp_path):
    """A NaN in the dmin of one Q4_K block (bytes 2-3 of the 144-byte
    block) of a K-quant file: refused, naming that field and the block."""
    src = harness.SHARED_DIR / "models" / "synth-kq-Q4_K.gguf"
    BAD_BLOCK = 2

    def nan_dmin(f, off, ttype, ne):
        assert ttype == 12, "the test expects a Q4_K blk.0.ffn_up.weight, found type %d" % ttype
        f.seek(off + BAD_BLOCK * 144 + 2)
        f.write(b"\x00\x7e")  # fp16 quiet NaN
    bad = patched(tmp_path, src, "blk.0.ffn_up.weight", nan_dmin)
    rc, out = harness.run_velod_once(["--model", "bad=%s" % bad, "--listen", "127.0.0.1:0",
                                      "--backend", "cpu"])
    assert rc not in (0, None), out
    row = BAD_BLOCK // (gguf_edit.tensor_span(bad, "blk.0.ffn_up.weight")[2][0] // 256)
    assert ("tensor 'blk.0.ffn_up.weight' (Q4_K) holds a NaN or infinite value in the second "
            "scale (dmin or m) of quantization block %d (row %d)" % (BAD_BLOCK, row)) in out, out


def test_nonfinite_element_refused_at_load(tmp_path):
    def one_nan(f, off, ttype, ne):
        assert ttype == F32_TYPE
        f.seek(off + 4 * (3 * ne[0] + 5))  # row 3, element 5
        f.write(struct.pack("<I", 0x7fc00000))  # quiet NaN
    bad = patched(tmp_path, harness.MODEL_F32, "blk.2.ffn_down.weight", one_nan)
    rc, out = harness.run_velod_once(["--model", "bad=%s" % bad, "--listen", "127.0.0.1:0",
                                      "--backend", "cpu"])
    assert rc not in (0, None), out
    assert "tensor 'blk.2.ffn_down.weight' (F32) holds a NaN or infinite value in element" in out
    assert "(row 3)" in out, out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonfinite")

    def huge(f, off, ttype, ne):
        assert ttype == F32_TYPE
        f.seek(off)
        f.write(struct.pack("<f", 3e38) * (ne[0] * ne[1]))
    bad = patched(d, harness.MODEL_F32, "output.weight", huge)
    srv = harness.Velod(["--model", "%s=%s" % (OVERFLOW, bad),
                         "--model", "%s=%s" % (harness.F32, harness.MODEL_F32),
                         "--backend", "cpu"], d / "velod.log")
    srv.start()
    yield srv
    srv.stop()


def test_nonfinite_logits_fail_the_request(server, textgen, prompts):
    for temperature in (0.0, 0.8):
        expect_error(lambda: harness.generate(textgen, OVERFLOW, "Once upon a time", max_tokens=4,
                                              temperature=temperature),
                     grpc.StatusCode.DATA_LOSS, "non-finite logits", OVERFLOW, "may be corrupt")
    p = prompts[0]
    assert harness.greedy(textgen, harness.F32, p["prompt"], 8).ids == p["f32"]["gen_ids"][:8]
    assert server.alive()
    assert "non-finite logits" in server.log()


def test_nonfinite_failures_free_their_blocks(server, textgen, prompts):
    for _ in range(5):
        expect_error(lambda: harness.generate(textgen, OVERFLOW, "The little dog", max_tokens=2),
                     grpc.StatusCode.DATA_LOSS, "non-finite logits")
    with server.channel() as ch:
        counters = harness.model_counters(ch, OVERFLOW)
    assert counters.get("kv_blocks_used", 0) == 0, counters
    p = prompts[1]
    assert harness.greedy(textgen, harness.F32, p["prompt"], 8).ids == p["f32"]["gen_ids"][:8]
