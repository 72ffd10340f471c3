#!/usr/bin/python3
"""Writes llama.cpp's K-quant reference data (../shared/reference/synth-kquants.json,
F32 KV cache records) as a plain text fixture for test_kquant_reference (one
record per line: "<prompt index> <field> <count> <values...>", fields
"prompt_ids" and "<TYPE>.gen_ids", "<TYPE>.logits_first", "<TYPE>.gap" for
each file TYPE).  Nothing is copied into the repository: the fixture is made
in the build tree at test time.  Usage: kq_fixture.py JSON OUT."""
import json
import sys

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
