#!/usr/bin/python3
"""Writes llama.cpp reference data from ../shared/reference/<file>.json as a
plain text fixture that the C unit tests read (one record per line:
"<prompt index> <field> <count> <values...>").  Nothing is copied into the
repository: the fixture is made in the build tree at test time.

For the Q8_0 file it also writes, from near_ties.py (llama.cpp's roundings
emulated, F32 KV cache): "q8_0.emul_pos", the emulated logits of every
prompt position (n_pos * n_vocab values, position-major), and one
"q8_0.alt:<matrix>" record per near-tie activation rounding that moves its
position's logits: position, element, kind (0 Q8_0, 1 F16), distance from
the tie, then that position's logits with the decision reversed."""
import json
import os
import sys

# The shared float64 reference forward (../shared/tools/gguf_ref.py), used with
# llama.cpp's roundings and an F32 KV cache: the reference for quantized files
# while Velo keeps K and V in F32 (llama.cpp's own logits used an F16 cache).
shared = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1])))
sys.path.insert(0, os.path.join(shared, "tools"))
import gguf_ref  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import near_ties  # noqa: E402

ref = json.load(open(sys.argv[1]))
out = open(sys.argv[2], "w")
for p in ref["prompts"]:
    i = p["index"]
    def put(field, vals, fmt="%d"):
        out.write("%d %s %d %s\n" % (i, field, len(vals), " ".join(fmt % v for v in vals)))
    put("prompt_ids", p["prompt_ids"])
    for model in ("f32", "q8_0"):
        m = p[model]
        put(model + ".gen_ids", m["gen_ids"])
        put(model + ".logits_first", m["logits_first"], "%.9g")
        if "logits_first_kv_f32" in m:
            put(model + ".logits_first_kv_f32", m["logits_first_kv_f32"], "%.9g")
        # The reference's own top1-top2 gap at each step (for the near-tie rule).
        put(model + ".gap", [s[0][1] - s[1][1] for s in m["top5_per_step"]], "%.9g")
    pos = near_ties.run(shared, os.path.join(shared, "models", ref["models"]["q8_0"]["file"]),
                        p["prompt_ids"])
    put("q8_0.logits_first_emul_kv_f32", [float(x) for x in pos[-1][0]], "%.9g")
    put("q8_0.emul_pos", [float(x) for lg, _ in pos for x in lg], "%.9g")
    for k, (_, alts) in enumerate(pos):
        for matrix, el, kind, dist, alt in alts:
            put("q8_0.alt:" + matrix, [k, el, 0 if kind != "F16" else 1, dist] + [float(x) for x in alt],
                "%.9g")
