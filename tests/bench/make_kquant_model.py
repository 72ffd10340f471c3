#!/usr/bin/python3
"""make_kquant_model.py - benchmark models in the K-quant formats (Q4_K_M, Q4_K, Q5_K, Q6_K).

../shared/tools/make_synth_gguf.py writes its random-weight models only as F32, F16, Q8_0 or Q4_0, but most
GGUF files people download are Q4_K_M. This script writes the same models in the K-quant formats, so that
velo-bench can measure them: by default the TinyLlama-1.1B-shaped llama model of ../shared/anchors/cpu-llm.md
(n_embd 2048, 22 layers, 32 heads, 4 KV heads, n_ff 5632, the 32000-token llama-spm vocabulary, seed 0).
It is a benchmark tool, not a test, and needs only Python 3 and numpy (Debian: /usr/bin/python3, python3-numpy).

Where the float weights come from
  synth mode (default): make_synth_gguf.py's own `synth` sub-command is run with --type F32, and its writer is
    intercepted: the metadata, tensor order and random weights are exactly those of
    `make_synth_gguf.py synth ... --type F32` with the same options (same seed, same numpy draws), and each
    matrix is quantized here instead of being written as F32. So tinyllama-q4_k_m.gguf holds the same random
    weights as tinyllama-q4_0.gguf, quantized differently. Options this script does not know are passed to
    `synth` unchanged (--seed, --n-layer, --embd-std, ...); --vocab-from defaults to the shared llama-spm vocab.
  --from SRC.gguf: the F32/F16/BF16 matrices of an existing llama file are quantized (metadata copied,
    general.file_type replaced). With --compare-with REF.gguf (the same weights quantized by someone else,
    e.g. llama-quantize), both quantization errors are printed side by side.

Tensor types (--type)
  Q4_K_M  llama.cpp's Q4_K_M recipe for a dense llama model: output.weight Q6_K (token_embd when the output is
          tied); blk.i.attn_v.weight and blk.i.ffn_down.weight Q6_K when use_more_bits(i, n_layer), i.e.
          i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2 (22 layers: blocks 0, 1, 4, 7, 10, 13, 16, 19, 20, 21);
          every other matrix, token_embd included, Q4_K. general.file_type 15.
  Q4_K, Q5_K, Q6_K  every matrix of that type (as llama-quantize --pure writes them). general.file_type 15, 17
          and 18 (the presets llama-quantize --pure records: Q4_K_M, Q5_K_M, Q6_K).
  Norm vectors stay F32. Every matrix row length must be a multiple of 256 (the K-quant super-block).

The quantizers (written from the GGUF block layouts; values y = d*sc*q - dmin*mn resp. y = d*sc*(q - 32))
  Q4_K / Q5_K: super-blocks of 256 = 8 sub-blocks of 32. Per sub-block, a scale s >= 0 and a min m >= 0 with
    x ~ s*q - m, q in 0..15 (0..31): five starts from the sub-block's range [min(x, 0), max(x)] (the range over
    nmax-1 .. nmax+1 steps), each followed by nearest-level rounding and the least-squares (s, m) for those
    levels (m >= 0 enforced); the best start gets two more such rounds. Then the 8 scales and 8 mins are
    stored as 6-bit integers sc, mn of fp16 super-block factors d = max(s)/63 and dmin = max(m)/63, d and
    dmin are refitted by least squares over the super-block, and the levels are chosen again for the stored
    values.
  Q6_K: 16 sub-blocks of 16 with a signed scale s, x ~ s*q, q in -32..31: five starts around s = -v/32 (v the
    element of largest magnitude, which then maps to -32), rounding and least squares as above; the 16
    scales are stored as int8 of the fp16 factor d = max|s|/127, d is refitted, the levels chosen again.
  On Gaussian weights the RMS relative error is 0.071 (Q4_K), 0.036 (Q5_K), 0.017 (Q6_K), slightly below
  llama-quantize's (0.071, 0.036, 0.018 on ../shared/models/synth-kq-F16.gguf). Vectorised with numpy over
  chunks of 1024 super-blocks: about 80 s of CPU per type for the 1.1B-parameter model.

Checks (--check first|all|none; default first): for some matrices (first: token_embd, output, every matrix
  of blk.0 and the last block's attn_v and ffn_down; matrices over 4 Mi elements on evenly spaced rows), it
  dequantizes the written blocks with a second implementation in this file (element-indexed gathers from
  the layouts, not the packing code) and with make_synth_gguf.dequantize (ggml's reference semantics) and
  prints the RMS of (dequantized - input) over the RMS of the input. The script fails (and removes the
  file) when the two dequantizations differ in any bit or the error is above ERR_BOUND.

Usage (from the repository root; the files are large, keep them out of the repository):
  /usr/bin/python3 tests/bench/make_kquant_model.py --type Q4_K_M --out /tmp/bench/tinyllama-q4_k_m.gguf
  /usr/bin/python3 tests/bench/make_kquant_model.py --type Q6_K --out /tmp/bench/tinyllama-q6_k.gguf
  # a small model for a reference check with ../shared/tools/gguf_ref.py
  /usr/bin/python3 tests/bench/make_kquant_model.py --type Q4_K_M --out /tmp/bench/small-q4_k_m.gguf \\
      --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 768 --ctx 512 --embd-std 1.0 --out-std 0.3
  # against llama-quantize's output of the same F16 weights
  /usr/bin/python3 tests/bench/make_kquant_model.py --type Q4_K_M --from ../shared/models/synth-kq-F16.gguf \\
      --out /tmp/bench/kq-mine-q4_k_m.gguf --compare-with ../shared/models/synth-kq-Q4_K_M.gguf
Exit status: 0 on success, 1 on a failed check or a file it cannot use, 2 on a usage error.
Shared tools: $VELO_SHARED_DIR/tools (default: ../shared next to the repository), or --tools-dir.
"""
import argparse
import ctypes
import ctypes.util
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("VELO_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))

QK_K = 256
# K-quant block types: name -> (ggml type id, elements per block, bytes per block)
KQ_TYPES = {"Q4_K": (12, QK_K, 144), "Q5_K": (13, QK_K, 176), "Q6_K": (14, QK_K, 210)}
# --type -> general.file_type (llama_ftype) as llama-quantize records it
FILE_TYPE = {"Q4_K_M": 15, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18}
CHUNK_BLOCKS = 1024            # super-blocks quantized per numpy pass (256 Ki elements, 1 MiB of float32)
# --check fails above these RMS relative errors: about 1.7x what the fits give on Gaussian weights (0.071,
# 0.036, 0.017), far below what a packing mistake gives (order 1).
ERR_BOUND = {"Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03}
CHECK_MAX = 1 << 22            # --check on at most this many elements per matrix (evenly spaced rows)
START_STEPS = (-1.0, -0.5, 0.0, 0.5, 1.0)   # starting scales: range / (levels - 1 + step), the best one wins
FIT_ITERS = 2                  # further rounding / least-squares rounds from the best start


class Failure(Exception):
    """A check failed or an input cannot be used; main() prints it and exits 1."""


# ---- helpers --------------------------------------------------------------------------------------
def keep_temporaries_on_heap():
    """glibc only (elsewhere a no-op): raises malloc's mmap and trim thresholds to 32 MiB. Without it, every
    numpy temporary of a chunk (1-4 MiB) is a fresh mmap whose pages fault in one by one, which made the
    quantizers 5-8x slower on this VM. Process-wide; call once, before quantizing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):
        pass


def _f16_round(v):
    """v: float32 array -> (fp16 array, the same values as float32). Fails on values fp16 cannot hold."""
    h = v.astype(np.float16)
    if not np.all(np.isfinite(h)):
        raise Failure("a super-block scale (max %g) does not fit in fp16" % float(np.max(np.abs(v))))
    return h, h.astype(np.float32)


def _safe_inv(s):
    """1/s elementwise (float32), 0 where s == 0."""
    out = np.zeros_like(s)
    np.divide(1.0, s, out=out, where=s != 0)
    return out


def _pick(better, new, old):
    """Elementwise choice between two tuples of per-row arrays."""
    return tuple(np.where(better, n, o) for n, o in zip(new, old))


def _levels(t, lo, hi):
    """Rounds t to the nearest integer and clamps it to [lo, hi], in place (np.clip is slow). Returns t."""
    np.rint(t, out=t)
    np.maximum(t, lo, out=t)
    return np.minimum(t, hi, out=t)


def _rowdot(a, b):
    """Row-wise dot products of two float32 arrays of the same shape (n, ...) -> (n,) float64."""
    return np.einsum("ij,ij->i", a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)).astype(np.float64)


# ---- sub-block fits -------------------------------------------------------------------------------
# Each round rounds to the nearest levels, then solves the least-squares problem for those levels. Its
# squared error is computed from the normal equations (sum x^2 - the fitted part), i.e. for the levels it
# started from; rounding again for the new scale can only lower it.
def _affine_round(x, sx, sxx, s, m, nmax):
    """One round for x ~ s*q - m (rows of x (n, k) float32; sx, sxx: their row sums of x and x^2, float64):
    levels q in 0..nmax for (s, m), then the least-squares (s, m) for them with m >= 0. Returns (s, m, err):
    err (n,) float64 is the squared error of the returned pair on those levels, +inf where no valid fit
    exists (then s, m are returned unchanged)."""
    k = x.shape[1]
    q = _levels((x + m[:, None]) * _safe_inv(s)[:, None], 0, nmax)
    sq = q.sum(axis=1).astype(np.float64)
    sqq = _rowdot(q, q)
    sqx = _rowdot(q, x)
    det = k * sqq - sq * sq
    with np.errstate(divide="ignore", invalid="ignore"):
        s_new = (k * sqx - sq * sx) / det
        b = (sqq * sx - sq * sqx) / det                      # x ~ s_new*q + b; need b <= 0 (m = -b >= 0)
        s_b0 = sqx / sqq                                     # the best s with b = 0
    pos = b > 0
    s_new = np.where(pos, s_b0, s_new)
    b = np.where(pos, 0.0, b)
    ok = np.isfinite(s_new) & (s_new > 0) & np.isfinite(b)
    err = np.where(ok, np.maximum(sxx - s_new * sqx - b * sx, 0.0), np.inf)
    return np.where(ok, s_new, s).astype(np.float32), np.where(ok, -b, m).astype(np.float32), err


def fit_affine(x, nmax):
    """Fits x ~ s*q - m per row. x: (n, k) float32 (one sub-block per row); levels q in 0..nmax.
    Returns (s, m), each (n,) float32, s >= 0, m >= 0. Tries the starts s = (max - lo)/(nmax + t), m = -lo
    (lo = min(x, 0), t in START_STEPS), each followed by one round; keeps the best per row and runs FIT_ITERS
    more rounds on it, keeping a round's result only where it lowered the error. Pure function of x."""
    lo = np.minimum(x.min(axis=1), 0)
    hi = x.max(axis=1)
    sx = x.sum(axis=1).astype(np.float64)
    sxx = _rowdot(x, x)
    best = None
    for t in START_STEPS:
        cand = _affine_round(x, sx, sxx, (hi - lo) / np.float32(nmax + t), -lo, nmax)
        best = cand if best is None else _pick(cand[2] < best[2], cand, best)
    for _ in range(FIT_ITERS):
        cand = _affine_round(x, sx, sxx, best[0], best[1], nmax)
        best = _pick(cand[2] < best[2], cand, best)
    return best[0], best[1]


def _symmetric_round(x, sxx, s):
    """One round for x ~ s*q, q in -32..31 (sxx: row sums of x^2, float64): levels for s, then the
    least-squares s for them. Returns (s, err) as _affine_round does."""
    q = _levels(x * _safe_inv(s)[:, None], -32, 31)
    sqq = _rowdot(q, q)
    sqx = _rowdot(q, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_new = sqx / sqq
    ok = (sqq > 0) & np.isfinite(s_new)
    err = np.where(ok, np.maximum(sxx - s_new * sqx, 0.0), np.inf)
    return np.where(ok, s_new, s).astype(np.float32), err


def fit_symmetric(x):
    """Fits x ~ s*q per row with q in -32..31. x: (n, k) float32. Returns s (n,) float32 (any sign; 0 for an
    all-zero row). Starts: s = -v/(32 + t) for t in START_STEPS, v the element of largest magnitude (so it
    maps to about -32), each followed by one round; the best is refined FIT_ITERS more rounds. Pure
    function of x."""
    v = x[np.arange(x.shape[0]), np.abs(x).argmax(axis=1)]
    sxx = _rowdot(x, x)
    best = None
    for t in START_STEPS:
        cand = _symmetric_round(x, sxx, v / np.float32(-32 - t))
        best = cand if best is None else _pick(cand[1] < best[1], cand, best)
    for _ in range(FIT_ITERS):
        cand = _symmetric_round(x, sxx, best[0])
        best = _pick(cand[1] < best[1], cand, best)
    return best[0]


# ---- block quantizers: x (nb, 256) float32 -> (nb, bytes per block) uint8 ---------------------------
def _pack_scales_k4(sc, mn):
    """6-bit scales and mins (nb, 8) uint8 -> the 12-byte K-quant field (nb, 12): bytes 0-3 hold scales 0-3 in
    their low 6 bits and the top 2 bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11 the low
    4 bits of scale 4+j (low nibble) and of min 4+j (high nibble)."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    return out


def _levels_affine(xs, d, dm, sc, mn, nmax):
    """Nearest levels for the stored sub-block scales d*sc and mins dm*mn. xs (nb, 8, 32); d, dm (nb,) float32;
    sc, mn (nb, 8) float32. Returns (q as float32 (nb, 8, 32), squared error per super-block (nb,))."""
    S = (d[:, None] * sc)[:, :, None]
    M = (dm[:, None] * mn)[:, :, None]
    q = _levels((xs + M) * _safe_inv(S), 0, nmax)            # a zero scale gives q = 0
    r = S * q - M - xs
    return q, _rowdot(r, r)


def quantize_q45k(x, bits):
    """Q4_K (bits 4, 144-byte blocks: d, dmin, scales[12], qs[128]) or Q5_K (bits 5, 176 bytes: d, dmin,
    scales[12], qh[32], qs[128]). x: (nb, 256) float32. Returns (nb, 144|176) uint8.
    After the 6-bit scales and mins are fixed, d and dmin are refitted by least squares over the whole
    super-block (x ~ d*sc*q - dmin*mn for the chosen levels), kept where that lowers the error."""
    nb = x.shape[0]
    nmax = (1 << bits) - 1
    xs = x.reshape(nb, 8, 32)
    s, m = fit_affine(xs.reshape(nb * 8, 32), nmax)
    s, m = s.reshape(nb, 8), m.reshape(nb, 8)
    _, d = _f16_round(s.max(axis=1) / np.float32(63))
    _, dm = _f16_round(m.max(axis=1) / np.float32(63))
    sc = np.clip(np.rint(s * _safe_inv(d)[:, None]), 0, 63).astype(np.float32)
    mn = np.clip(np.rint(m * _safe_inv(dm)[:, None]), 0, 63).astype(np.float32)
    q, err = _levels_affine(xs, d, dm, sc, mn, nmax)
    A = sc[:, :, None] * q                                   # x ~ d*A - dm*B
    aa = _rowdot(A, A)
    ax = _rowdot(A, xs)
    ab = _rowdot(sc * mn, q.sum(axis=2))
    bb = 32.0 * _rowdot(mn, mn)
    bx = _rowdot(mn, xs.sum(axis=2))
    det = aa * bb - ab * ab
    with np.errstate(divide="ignore", invalid="ignore"):
        d_new = (ax * bb - ab * bx) / det
        dm_new = (ax * ab - aa * bx) / det
    ok = (det > 0) & np.isfinite(d_new) & np.isfinite(dm_new) & (d_new > 0) & (dm_new >= 0)
    _, d_new = _f16_round(np.where(ok, d_new, d).astype(np.float32))
    _, dm_new = _f16_round(np.where(ok, dm_new, dm).astype(np.float32))
    q_new, err_new = _levels_affine(xs, d_new, dm_new, sc, mn, nmax)
    better = err_new < err
    d, dm = np.where(better, d_new, d), np.where(better, dm_new, dm)
    q = np.where(better[:, None, None], q_new, q).astype(np.uint8)
    out = np.empty((nb, 144 if bits == 4 else 176), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dm.astype(np.float16).view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = _pack_scales_k4(sc.astype(np.uint8), mn.astype(np.uint8))
    lo = q & 0xF                                             # qs[32g + l]: sub-block 2g low, 2g+1 high nibble
    out[:, -128:] = (lo[:, 0::2, :] | (lo[:, 1::2, :] << 4)).reshape(nb, 128)
    if bits == 5:                                            # qh[l] bit j: the 5th bit of sub-block j, element l
        hb = (q >> 4) & 1
        qh = np.zeros((nb, 32), np.uint8)
        for j in range(8):
            qh |= hb[:, j, :] << j
        out[:, 16:48] = qh
    return out


def _levels_q6(xs, d, sc):
    """Nearest levels in -32..31 for the stored scales d*sc. xs (nb, 16, 16); d (nb,); sc (nb, 16) float32.
    Returns (q (nb, 16, 16) float32, squared error per super-block)."""
    S = (d[:, None] * sc)[:, :, None]
    q = _levels(xs * _safe_inv(S), -32, 31)
    r = S * q - xs
    return q, _rowdot(r, r)


def quantize_q6k(x):
    """Q6_K (210-byte blocks: ql[128], qh[64], scales[16] int8, d fp16). x: (nb, 256) float32.
    Returns (nb, 210) uint8. Element e = 128h + 32k + l (h half, k quarter, l < 32) has sub-block e/16; its
    low 4 bits sit in ql[64h + l + 32(k&1)] (low nibble for k < 2, high for k >= 2), its top 2 bits in
    qh[32h + l] at bit 2k. After the int8 scales are fixed, d is refitted by least squares over the
    super-block, kept where that lowers the error."""
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    s = fit_symmetric(xs.reshape(nb * 16, 16)).reshape(nb, 16)
    _, d = _f16_round(np.abs(s).max(axis=1) / np.float32(127))
    sc = np.clip(np.rint(s * _safe_inv(d)[:, None]), -127, 127).astype(np.float32)
    q, err = _levels_q6(xs, d, sc)
    A = sc[:, :, None] * q
    aa = _rowdot(A, A)
    ax = _rowdot(A, xs)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_new = ax / aa
    _, d_new = _f16_round(np.where((aa > 0) & np.isfinite(d_new) & (d_new > 0), d_new, d).astype(np.float32))
    q_new, err_new = _levels_q6(xs, d_new, sc)
    better = err_new < err
    d = np.where(better, d_new, d)
    q = np.where(better[:, None, None], q_new, q)
    q = (q + 32).astype(np.uint8).reshape(nb, 2, 4, 32)      # (block, h, k, l)
    out = np.empty((nb, 210), np.uint8)
    ql = np.empty((nb, 2, 64), np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    out[:, 0:128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return out


QUANTIZERS = {"Q4_K": lambda b: quantize_q45k(b, 4), "Q5_K": lambda b: quantize_q45k(b, 5), "Q6_K": quantize_q6k}


def quantize(x, tname):
    """x: float32 array whose size is a multiple of 256 (rows of a matrix, row length a multiple of 256) ->
    the tensor's bytes in type tname (Q4_K, Q5_K or Q6_K), chunk by chunk."""
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((xb.shape[0], KQ_TYPES[tname][2]), np.uint8)
    qf = QUANTIZERS[tname]
    for i in range(0, xb.shape[0], CHUNK_BLOCKS):
        out[i:i + CHUNK_BLOCKS] = qf(xb[i:i + CHUNK_BLOCKS])
    return out.tobytes()


# ---- the second dequantizer (for the checks): element-indexed gathers, straight from the layouts ------
def _fp16_at(b, off):
    return np.ascontiguousarray(b[:, off:off + 2]).view("<f2")[:, 0].astype(np.float32)


def _scale_min(b12, j):
    """The 6-bit scale and min of sub-block j (0..7) from the 12-byte field b12 (nb, 12) -> two (nb,) uint8."""
    if j < 4:
        return b12[:, j] & 63, b12[:, j + 4] & 63
    return ((b12[:, j + 4] & 0xF) | ((b12[:, j - 4] >> 6) << 4),
            (b12[:, j + 4] >> 4) | ((b12[:, j] >> 6) << 4))


def dequantize_check(raw, tname):
    """raw: the bytes of whole Q4_K / Q5_K / Q6_K blocks -> float32 (n,). Independent of the packing code."""
    bb = KQ_TYPES[tname][2]
    b = np.frombuffer(raw, np.uint8).reshape(-1, bb)
    e = np.arange(QK_K)
    if tname in ("Q4_K", "Q5_K"):
        d, dmin = _fp16_at(b, 0), _fp16_at(b, 2)
        pairs = [_scale_min(b[:, 4:16], j) for j in range(8)]
        sc = np.stack([p[0] for p in pairs], axis=1).astype(np.float32)
        mn = np.stack([p[1] for p in pairs], axis=1).astype(np.float32)
        sub = e // 32                                       # sub-block of element e
        qs = b[:, bb - 128:]
        byte = qs[:, 32 * (e // 64) + e % 32]
        q = np.where((e % 64) >= 32, byte >> 4, byte & 0xF).astype(np.uint8)
        if tname == "Q5_K":
            q = q + (((b[:, 16:48][:, e % 32] >> sub) & 1) << 4).astype(np.uint8)
        return ((d[:, None] * sc[:, sub]) * q.astype(np.float32) - dmin[:, None] * mn[:, sub]).reshape(-1)
    d = _fp16_at(b, 208)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    h, k, l = e // 128, (e % 128) // 32, e % 32
    lbyte = b[:, 64 * h + l + 32 * (k & 1)]
    low = np.where(k >= 2, lbyte >> 4, lbyte & 0xF)
    top = (b[:, 128 + 32 * h + l] >> (2 * k)) & 3
    q = (low | (top << 4)).astype(np.float32) - 32
    return ((d[:, None] * sc[:, e // 16]) * q).reshape(-1)


def rms_rel(y, x):
    """RMS(y - x) / RMS(x), in float64."""
    x64 = x.astype(np.float64).reshape(-1)
    return float(np.sqrt(np.mean((y.astype(np.float64).reshape(-1) - x64) ** 2) / np.mean(x64 ** 2)))


# ---- the recipe -----------------------------------------------------------------------------------
def use_more_bits(i, n):
    """llama.cpp's layer choice for the Q6_K attn_v / ffn_down matrices of Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name, ne, qtype, n_layer, has_output):
    """The output type of one tensor: 'F32' (kept as it is) for vectors, else a K-quant type by --type."""
    if len(ne) < 2:
        return None
    if ne[0] % QK_K:
        raise Failure("%s: row length %d is not a multiple of %d, which the K-quants need" % (name, ne[0], QK_K))
    if qtype != "Q4_K_M":
        return qtype
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        return "Q6_K"
    m = re.fullmatch(r"blk\.(\d+)\.(attn_v|ffn_down)\.weight", name)
    if m and use_more_bits(int(m.group(1)), n_layer):
        return "Q6_K"
    return "Q4_K"


# ---- sources of float weights ---------------------------------------------------------------------
class _Captured(Exception):
    pass


def load_tools(tools_dir):
    """Imports make_synth_gguf from tools_dir and teaches its writer the K-quant type ids."""
    path = os.path.join(tools_dir, "make_synth_gguf.py")
    if not os.path.isfile(path):
        raise Failure("%s is missing; set VELO_SHARED_DIR or --tools-dir" % path)
    sys.path.insert(0, tools_dir)
    import make_synth_gguf as msg
    for k, v in KQ_TYPES.items():
        msg.GGML_TYPES.setdefault(k, v)
    return msg


def synth_source(msg, synth_args):
    """Runs make_synth_gguf's synth with --type F32 and intercepts its writer.
    Returns (kvs, tensors): tensors as (name, ne, producer of float32 array) in file order; the producers
    draw the random weights and must be called once each, in order."""
    box = {}

    def capture(path, kvs, tensors):
        box["kvs"], box["tensors"] = kvs, tensors
        raise _Captured()

    real_write, real_argv = msg.write_gguf, sys.argv
    msg.write_gguf = capture
    sys.argv = ["make_synth_gguf.py synth", "synth"] + synth_args + ["--type", "F32", "--out", os.devnull]
    try:
        msg.main()
    except _Captured:
        pass
    finally:
        msg.write_gguf, sys.argv = real_write, real_argv
    if "tensors" not in box:
        raise Failure("make_synth_gguf.synth did not call write_gguf; has its interface changed?")
    out = []
    for name, tname, ne, prod in box["tensors"]:
        if tname != "F32":
            raise Failure("%s: make_synth_gguf gave %s, expected F32" % (name, tname))
        out.append((name, ne, lambda prod=prod: np.frombuffer(prod(), dtype="<f4")))
    return box["kvs"], out


def file_source(msg, path):
    """Reads the tensors of a llama GGUF file with F32/F16/BF16 matrices. Returns (kvs, tensors) as
    synth_source does (the producers read the file lazily)."""
    kv, kvt, T, doff, _ = msg.read_gguf(path)
    kvs = [(k, kvt[k], v) for k, v in kv.items() if k != "general.alignment"]
    out = []
    for t in T:
        tn = msg.GGML_TYPE_NAME.get(t["type"], str(t["type"]))
        if tn not in ("F32", "F16", "BF16"):
            raise Failure("%s: %s is type %s; --from needs F32, F16 or BF16 weights" % (path, t["name"], tn))
        n = int(np.prod(t["ne"]))
        out.append((t["name"], t["ne"], lambda t=t, n=n: msg.dequantize(msg.tensor_data(path, t, doff),
                                                                    t["type"], n)))
    return kvs, out


def check_tensor(msg, name, ne, tname, x, raw, rt, ref_path, rdoff, sample):
    """Dequantizes one quantized matrix two ways and measures it. x: its float32 input; raw: its bytes; rt: the
    same tensor's entry in the --compare-with file (or None). With sample, a matrix of more than CHECK_MAX
    elements is checked on evenly spaced rows only. Prints one line; returns (name, type, elements checked,
    rms rel err, (ref type, ref rms rel err) or None). Raises Failure when the dequantizers disagree or the
    error is above ERR_BOUND."""
    n_rows = x.size // ne[0]
    step = max(1, -(-x.size // CHECK_MAX)) if sample else 1
    rows = np.arange(0, n_rows, step)
    xr = x.reshape(n_rows, ne[0])[rows]
    rr = np.frombuffer(raw, np.uint8).reshape(n_rows, -1)[rows].tobytes()
    y = dequantize_check(rr, tname)
    y2 = msg.dequantize(rr, KQ_TYPES[tname][0], xr.size)
    bad = int(np.count_nonzero(y.view(np.uint32) != y2.view(np.uint32)))
    if bad:
        raise Failure("%s (%s): the two dequantizers disagree on %d of %d values" % (name, tname, bad, xr.size))
    e_ref = None
    if rt is not None:
        if list(rt["ne"]) != list(ne):
            raise Failure("%s: shape %s in %s, %s here" % (name, rt["ne"], ref_path, ne))
        yr = msg.dequantize(msg.tensor_data(ref_path, rt, rdoff), rt["type"], x.size)
        e_ref = (msg.GGML_TYPE_NAME[rt["type"]], rms_rel(yr, x))
    err = rms_rel(y, xr)
    if not err <= ERR_BOUND[tname]:
        raise Failure("%s (%s): rms rel err %.5f is above %.2f: the quantizer is broken"
                      % (name, tname, err, ERR_BOUND[tname]))
    print("  %-26s %-5s rms rel err %.5f%s%s" % (
        name, tname, err, "" if step == 1 else " (%d of %d rows)" % (len(rows), n_rows),
        "" if e_ref is None else "   (%s: %s %.5f)" % (os.path.basename(ref_path), e_ref[0], e_ref[1])),
        flush=True)
    return name, tname, xr.size, err, e_ref


# ---- main -----------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Write a llama GGUF model in the K-quant formats (see the top of this file).",
        epilog="Other options are passed to make_synth_gguf.py synth (synth mode only), e.g. --seed 0 "
               "--n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 --n-ff 5632 --ctx 2048 "
               "--embd-std S --out-std S --name NAME.")
    ap.add_argument("--type", required=True, choices=sorted(FILE_TYPE), help="the format (Q4_K_M: the mixed recipe)")
    ap.add_argument("--out", required=True, help="the GGUF file to write")
    ap.add_argument("--from", dest="src", default=None, help="quantize this F32/F16/BF16 llama file instead")
    ap.add_argument("--compare-with", default=None,
                    help="a file with the same tensors already quantized: print its error next to ours")
    ap.add_argument("--check", default="first", choices=["first", "all", "none"],
                    help="which matrices to dequantize and measure (default: first)")
    ap.add_argument("--tools-dir", default=os.path.join(SHARED, "tools"), help="where make_synth_gguf.py is")
    a, rest = ap.parse_known_args()
    if a.src and rest:
        ap.error("options for synth (%s) make no sense with --from" % " ".join(rest))
    if a.compare_with and not a.src:
        ap.error("--compare-with needs --from (the same float weights)")
    for opt in ("--out", "--type"):
        if any(r == opt or r.startswith(opt + "=") for r in rest):
            ap.error("%s is this script's own option" % opt)
    try:
        return run(a, rest)
    except Failure as e:
        print("make_kquant_model: " + str(e), file=sys.stderr)
        return 1


def run(a, rest):
    """Builds the tensor list, writes the file, prints the checks. Raises Failure on a failed check."""
    t0 = time.monotonic()
    keep_temporaries_on_heap()
    msg = load_tools(a.tools_dir)
    if a.src:
        kvs, tensors = file_source(msg, a.src)
    else:
        if not any(r == "--vocab-from" or r.startswith("--vocab-from=") for r in rest):
            rest = ["--vocab-from", os.path.join(SHARED, "vocab", "ggml-vocab-llama-spm.gguf")] + rest
        kvs, tensors = synth_source(msg, rest)
    kvs = [(k, t, FILE_TYPE[a.type] if k == "general.file_type" else v) for k, t, v in kvs]
    if "general.file_type" not in [k for k, _, _ in kvs]:
        kvs.append(("general.file_type", msg.T_U32, FILE_TYPE[a.type]))
    arch = {k: v for k, _, v in kvs}.get("general.architecture")
    if arch != "llama":
        raise Failure("architecture %r: only llama models are supported" % arch)
    names = [t[0] for t in tensors]
    n_layer = 1 + max([int(m.group(1)) for m in (re.match(r"blk\.(\d+)\.", n) for n in names) if m] or [-1])
    has_output = "output.weight" in names
    ref, rdoff = None, 0
    if a.compare_with:
        rkv, rkvt, rT, rdoff, _ = msg.read_gguf(a.compare_with)
        ref = {t["name"]: t for t in rT}
    check_first = {"token_embd.weight", "output.weight", "blk.%d.attn_v.weight" % (n_layer - 1),
                   "blk.%d.ffn_down.weight" % (n_layer - 1)}
    stats = []                        # check_tensor's results

    def producer(name, ne, tname, prod):
        def make():
            x = prod()
            if tname is None:
                return np.ascontiguousarray(x, dtype="<f4").tobytes()
            raw = quantize(x, tname)
            want = a.check == "all" or ref is not None or (a.check == "first" and
                                                         (name in check_first or name.startswith("blk.0.")))
            if want:
                stats.append(check_tensor(msg, name, ne, tname, x, raw, ref.get(name) if ref else None, a.compare_with,
                                          rdoff, sample=ref is None))
            return raw
        return make

    out = []
    for name, ne, prod in tensors:
        tname = tensor_type(name, ne, a.type, n_layer, has_output)
        out.append((name, tname or "F32", list(ne), producer(name, ne, tname, prod)))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    print("writing %s (%s, %d tensors, %d layers)" % (a.out, a.type, len(out), n_layer), flush=True)
    try:
        msg.write_gguf(a.out, kvs, out)
    except BaseException:
        if os.path.exists(a.out):
            os.remove(a.out)            # never leave a half-written model behind
        raise
    counts = {}
    for _, tn, ne, _ in out:
        c = counts.setdefault(tn, [0, 0])
        c[0] += 1
        c[1] += int(np.prod(ne))
    dt = time.monotonic() - t0
    print("wrote %s: %d bytes in %.1f s; %s" % (a.out, os.path.getsize(a.out), dt,
          ", ".join("%d %s (%d params)" % (c[0], tn, c[1]) for tn, c in sorted(counts.items()))))
    for tn in sorted({s[1] for s in stats}):
        sel = [s for s in stats if s[1] == tn]
        n = sum(s[2] for s in sel)
        mean = float(np.sqrt(sum(s[3] ** 2 * s[2] for s in sel) / n))
        line = "check %s: %d matrices, rms rel err %.5f (max %.5f)" % (tn, len(sel), mean, max(s[3] for s in sel))
        rsel = [s for s in sel if s[4] is not None and s[4][0] == tn]
        if rsel:
            rn = sum(s[2] for s in rsel)
            line += "; %s on the same %d: %.5f, ours %.5f" % (
                os.path.basename(a.compare_with), len(rsel),
                float(np.sqrt(sum(s[4][1] ** 2 * s[2] for s in rsel) / rn)),
                float(np.sqrt(sum(s[3] ** 2 * s[2] for s in rsel) / rn)))
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
