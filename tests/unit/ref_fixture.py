#!/usr/bin/python3
"""Writes llama.cpp reference data from ../shared/reference/<file>.json as a
plain text fixture that the C unit tests read (one record per line:
"<prompt index> <field> <count> <values...>").  Nothing is copied into the
repository: the fixture is made in the build tree at test time."""
import json
import os
import sys

# The shared float64 reference forward (../shared/tools/gguf_ref.py), used with
# llama.cpp's roundings and an F32 KV cache: the reference for quantized files
# while Velo keeps K and V in F32 (llama.cpp's own logits used an F16 cache).
shared = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1])))
sys.path.insert(0, os.path.join(shared, "tools"))
import gguf_ref  # noqa: E402

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
    r = gguf_ref.run(os.path.join(shared, "models", ref["models"]["q8_0"]["file"]), p["prompt_ids"], 1,
                     llamacpp=True, kv="f32")
    put("q8_0.logits_first_emul_kv_f32", [float(x) for x in r["first_logits"]], "%.9g")
