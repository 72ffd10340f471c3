"""gpu_blocks_fixture.py - writes the fixture of test_gpu_blocks.c: the raw
blocks of the first rows of one tensor of each K-quant file in
../shared/models (synth-kq-Q4_K, -Q5_K, -Q6_K) and their float32 values by
../shared/tools/make_synth_gguf.py's dequantize() (ggml's to_float).

Usage: /usr/bin/python3 gpu_blocks_fixture.py SHARED_DIR OUT
"""
import sys
from pathlib import Path

shared = Path(sys.argv[1])
sys.path.insert(0, str(shared / "tools"))
import make_synth_gguf as g  # noqa: E402

N_BLOCKS = 16
with open(sys.argv[2], "w") as out:
    for name, typ in (("Q4_K", 12), ("Q5_K", 13), ("Q6_K", 14)):
        path = shared / "models" / ("synth-kq-%s.gguf" % name)
        kv, kvt, tensors, data_off, _ = g.read_gguf(str(path))
        t = next(t for t in tensors if t["type"] == typ)
        _, bs, bb = g.GGML_TYPE_INFO[typ]
        t = dict(t, nbytes=N_BLOCKS * bb)
        raw = g.tensor_data(str(path), t, data_off)
        vals = g.dequantize(raw, typ, N_BLOCKS * bs)
        out.write("%d %d %d\n" % (typ, len(raw), len(vals)))
        out.write(raw.hex() + "\n")
        out.write(" ".join("%.9g" % v for v in vals) + "\n")
