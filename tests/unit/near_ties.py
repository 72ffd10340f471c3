#!/usr/bin/python3
"""near_ties.py - the evidence the reference tests need before they accept a
quantized-model prompt whose logits are off llama.cpp's by more than the
usual tolerance: an "activation rounding flip".

llama.cpp rounds activations before quantized products (to Q8_0 blocks for
Q8_0/Q4_0 weights, to fp16 for F16 weights; ../shared/reference/README.md).
When a float32 activation lies within float32 noise of a rounding tie (a .5
of x*127/amax, or the midpoint of two fp16 values), the decision depends on
the order of earlier float32 sums, which Velo and llama.cpp choose
differently; one decision taken the other way moves the logits by up to
~0.1 on these small models.

run() evaluates ../shared/tools/gguf_ref.py --llamacpp (F32 KV cache) one
position at a time and returns, per position, the emulated logits and, for
every activation rounding of that position within NOISE of its tie, the
logits of the same position with that one decision reversed (all earlier
positions unchanged).  A test may then call a deviation a flip only if, at
the first position where its logits leave the emulation, they equal one of
these alternatives.  Only alternatives that move that position's logits by
more than MIN_EFFECT are kept (the others cannot explain a deviation).
Exact ties (distance 0: a quantized embedding row after RMSNorm lies on a
lattice) are not offered: their input is bit-exact float32 arithmetic that
Velo reproduces (RMSNorm as ggml), and round-half-even decides them the
same way in both, so reversing one would excuse a real discrepancy.

Library only (imported by ref_fixture.py and kq_fixture.py, which write the
results as fixture records); needs numpy and ../shared/tools/gguf_ref.py.
"""
import copy
import os
import sys

import numpy as np

Q8_NOISE = 127 * 2.0 ** -21  # |x*127/amax - tie| below this: x within 2^-21 amax of a tie
F16_NOISE = 2.0 ** -20       # |x - fp16 midpoint| below this times |x|
MIN_EFFECT = 1e-4            # keep alternatives that move the logits more than this


def _import_gguf_ref(shared):
    sys.path.insert(0, os.path.join(shared, "tools"))
    import gguf_ref  # noqa: E402
    return gguf_ref


class _Tracer:
    """Wraps gguf_ref.act_round: lists the near-tie decisions of the current
    step (matrix name, element, kind, distance) and can reverse one.  A
    decision is identified by the rounded vector's bytes and the element, so
    reversing it reverses it in every product that rounds the same vector
    (Q, K and V share their input), as one rounding in Velo and llama.cpp."""

    def __init__(self, gguf_ref):
        self.orig = gguf_ref.act_round
        self.ties, self.seen, self.force, self.matrix = None, set(), None, "?"
        gguf_ref.act_round = self.act_round
        self.orig_mv = orig_mv = gguf_ref.Model.mv

        def mv(model, name, x, e=None):
            self.matrix = name
            return orig_mv(model, name, x, e)
        gguf_ref.Model.mv = mv

    def act_round(self, x, vdt):
        y = self.orig(x, vdt)
        x32 = np.asarray(x, np.float32)
        key = x32.tobytes()
        if vdt in ("Q8_0", "Q8_1"):
            b = x32.reshape(-1, 32)
            amax = np.abs(b).max(axis=1)
            with np.errstate(divide="ignore"):
                idv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
            v = (b * idv[:, None]).astype(np.float32).astype(np.float64).reshape(-1)
            dist = np.abs(np.abs(v - np.floor(v)) - 0.5)
            near = np.nonzero((dist > 0) & (dist < Q8_NOISE))[0]
            if self.force is not None and self.force[0] == key:
                i = self.force[1]
                d = float(np.float16(amax[i // 32] / np.float32(127)))
                q = np.rint(v[i])
                y = y.copy()
                y[i] = d * (np.floor(v[i]) if q == np.ceil(v[i]) else np.ceil(v[i]))
        elif vdt == "F16":
            h = x32.astype(np.float16)
            lo = np.where(h.astype(np.float32) <= x32, h, np.nextafter(h, np.float16(-np.inf)))
            hi = np.nextafter(lo, np.float16(np.inf))
            mid = (lo.astype(np.float64) + hi.astype(np.float64)) / 2
            xd = x32.astype(np.float64)
            dist = np.abs(xd - mid) / np.maximum(np.abs(xd), 1e-30)
            near = np.nonzero(np.isfinite(mid) & (dist > 0) & (dist < F16_NOISE))[0]
            if self.force is not None and self.force[0] == key:
                i = self.force[1]
                y = y.copy()
                y[i] = float(hi[i]) if float(h[i]) == float(lo[i]) else float(lo[i])
        else:
            return y  # Q8_K (K-quants) is not part of the flip evidence
        if self.ties is not None:
            for i in near:
                if (key, int(i)) not in self.seen:
                    self.seen.add((key, int(i)))
                    self.ties.append((key, int(i), vdt, float(dist[i]), self.matrix))
        return y


def run(shared, model_path, ids):
    """Returns [(logits, [(matrix, element, kind, distance, alt_logits), ...])]
    for each position of the prompt ids (BOS included); see the module
    comment.  kind is "Q8_0" (distance in units of one quantization step)
    or "F16" (distance relative to |x|)."""
    gguf_ref = _import_gguf_ref(shared)
    tr = _Tracer(gguf_ref)
    try:
        m = gguf_ref.Model(model_path, llamacpp=True, kv_type="f32")
        out = []
        for pos, tok in enumerate(ids):
            kc, vc = copy.deepcopy(m.kc), copy.deepcopy(m.vc)
            tr.ties, tr.seen = [], set()
            lg = m.step(tok, pos)
            ties, tr.ties = tr.ties, None
            kc_after, vc_after = m.kc, m.vc
            alts = []
            for key, i, vdt, dist, matrix in ties:
                m.kc, m.vc = copy.deepcopy(kc), copy.deepcopy(vc)
                tr.force = (key, i)
                alt = m.step(tok, pos)
                tr.force = None
                if np.abs(alt - lg).max() > MIN_EFFECT:
                    alts.append((matrix, i, vdt, dist, alt))
            m.kc, m.vc = kc_after, vc_after
            out.append((lg, alts))
        return out
    finally:
        gguf_ref.act_round = tr.orig
        gguf_ref.Model.mv = tr.orig_mv
