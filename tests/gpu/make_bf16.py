#!/usr/bin/python3
"""make_bf16.py - writes the BF16 check pair of tests/gpu/run.sh from
../shared/models/synth-kq-F16.gguf: OUT_DIR/synth-kq-BF16.gguf, whose F16
matrices are rounded to bfloat16 (round to nearest, ties to even), and
OUT_DIR/synth-kq-BF16-F32.gguf, the same bfloat16 values stored as F32
(exactly).  The GPU backend multiplies BF16 weights by F32 activations, so
the two files must give bit-identical logits there (velo-gpu-check --pair),
and the F32 one can be compared with the CPU backend.

Usage: python3 make_bf16.py SHARED_DIR OUT_DIR   (needs numpy)
"""
import sys
from pathlib import Path

import numpy as np

shared, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(shared / "tools"))
import make_synth_gguf as g  # noqa: E402

g.GGML_TYPES.setdefault("BF16", (30, 1, 2))
src = shared / "models" / "synth-kq-F16.gguf"
kv, kvt, tensors, data_off, _ = g.read_gguf(str(src))
kvs = [(k, kvt[k], v) for k, v in kv.items()]


def bf16_bits(x):
    """float32 array -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def tensor_list(as_f32):
    items = []
    for t in tensors:
        raw = g.tensor_data(str(src), t, data_off)
        name = g.GGML_TYPE_NAME[t["type"]]
        if name != "F16":
            items.append((t["name"], name, t["ne"], lambda raw=raw: raw))
            continue
        bits = bf16_bits(np.frombuffer(raw, dtype="<f2").astype(np.float32))
        if as_f32:
            data = (bits.astype(np.uint32) << 16).view(np.float32).astype("<f4").tobytes()
            items.append((t["name"], "F32", t["ne"], lambda d=data: d))
        else:
            items.append((t["name"], "BF16", t["ne"], lambda d=bits.astype("<u2").tobytes(): d))
    return items


out.mkdir(parents=True, exist_ok=True)
g.write_gguf(str(out / "synth-kq-BF16.gguf"), kvs, tensor_list(False))
g.write_gguf(str(out / "synth-kq-BF16-F32.gguf"), kvs, tensor_list(True))
print("make_bf16: wrote %s and %s" % (out / "synth-kq-BF16.gguf", out / "synth-kq-BF16-F32.gguf"))
