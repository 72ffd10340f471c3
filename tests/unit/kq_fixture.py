#!/usr/bin/python3
"""Writes llama.cpp's K-quant reference data (../shared/reference/synth-kquants.json,
F32 KV cache records) as a plain text fixture for test_kquant_reference (one
record per line: "<prompt index> <field> <count> <values...>", fields
"prompt_ids" and "<TYPE>.gen_ids", "<TYPE>.logits_first", "<TYPE>.gap" for
each file TYPE).  Nothing is copied into the repository: the fixture is made
in the build tree at test time.  Usage: kq_fixture.py JSON OUT.

For the files whose activations are rounded to Q8_0 or fp16 (F16, Q8_0,
Q4_0) it also writes, from near_ties.py (llama.cpp's roundings emulated, F32
KV cache): "<TYPE>.emul_pos", the emulated logits of every prompt position
(n_pos * n_vocab values, position-major), and one "<TYPE>.alt:<matrix>"
record per near-tie activation rounding that moves its position's logits:
position, element, kind (0 Q8_0, 1 F16), distance from the tie, then that
position's logits with the decision reversed."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import near_ties  # noqa: E402

ref = json.load(open(sys.argv[1]))
out = open(sys.argv[2], "w")


def put(i, field, vals, fmt="%d"):
    out.write("%d %s %d %s\n" % (i, field, len(vals), " ".join(fmt % v for v in vals)))


for i, p in enumerate(ref["prompts"]):
    put(i, "prompt_ids", p["prompt_ids"])
for name, f in ref["files"].items():
    for i, r in enumerate(f["kv_f32"]["per_prompt"]):
        put(i, name + ".gen_ids", r["gen_ids"])
        put(i, name + ".logits_first", r["logits_first"], "%.9g")
        # The reference's own top1-top2 gap at each step (for the near-tie rule).
        put(i, name + ".gap", [s[0][1] - s[1][1] for s in r["top5_per_step"]], "%.9g")
shared = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1])))
for name in ("F16", "Q8_0", "Q4_0"):
    for i, p in enumerate(ref["prompts"]):
        pos = near_ties.run(shared, os.path.join(shared, "models", ref["files"][name]["file"]), p["prompt_ids"])
        put(i, name + ".emul_pos", [float(x) for lg, _ in pos for x in lg], "%.9g")
        for k, (_, alts) in enumerate(pos):
            for matrix, el, kind, dist, alt in alts:
                put(i, name + ".alt:" + matrix, [k, el, 0 if kind != "F16" else 1, dist] + [float(x) for x in alt],
                    "%.9g")
