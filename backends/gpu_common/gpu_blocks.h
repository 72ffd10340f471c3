/*
 * gpu_blocks.h - the numeric building blocks of the GPU backends (CUDA and
 * HIP), written once as inline functions that compile for the host (C11,
 * for the unit test tests/unit/test_gpu_blocks.c) and for the device
 * (nvcc, hipcc): IEEE half and bfloat16 conversions, the GGUF weight block
 * layouts (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), the activation quantizers (Q8_0
 * and Q8_K blocks, as llama.cpp makes them) and the integer block sums the
 * matrix kernels are built from.
 *
 * The arithmetic of one output of MUL_MAT (the "canonical order"; every
 * kernel that computes MUL_MAT outputs performs exactly these operations,
 * whatever the number of activation columns M, so results are batch
 * invariant, see gpu_kernels.cu):
 *
 *  - Q8_0 / Q4_0 weights (blocks of 32) times a column quantized to Q8_0:
 *      for b = 0 .. K/32-1 in order:
 *        isum = exact int sum of w[b][i] * q[b][i], i < 32   (w: int8, or nibble - 8)
 *        acc  = fmaf(fp32(d_w[b]) * dx[b], (float)isum, acc)
 *  - Q4_K / Q5_K / Q6_K weights (super-blocks of 256) times a column
 *    quantized to Q8_K:
 *      for s = 0 .. K/256-1 in order:
 *        isum = exact int sum over the super-block's 16-element groups g of
 *               mult[g] * (sum of w[s][16g+i] * q[s][16g+i], i < 16)
 *        acc  = fmaf(fp32(d_w[s]) * dx[s], (float)isum, acc)
 *        (Q4_K, Q5_K only:)
 *        msum = exact int sum over sub-blocks j < 8 of min[j] * (sum of the
 *               32 quants of sub-block j)
 *        acc  = fmaf(-(fp32(dmin_w[s]) * dx[s]), (float)msum, acc)
 *  - F16 weights times the column rounded to fp16, F32 and BF16 weights
 *    times the F32 column: for each block of 32 elements in order, the 32
 *    float products p[i] are summed by the pairwise tree
 *    t16[i] = p[i] + p[i+16], t8[i] = t16[i] + t16[i+8], t4, t2, t1 (what a
 *    butterfly of warp shuffles gives), then acc = acc + that sum.
 *
 * Block layouts are the GGUF / ggml ones (ggml-common.h, checked against
 * ../shared/tools/make_synth_gguf.py's dequantize()):
 *   Q8_0 (34 B):  fp16 d; int8 qs[32];                 x = d*q
 *   Q4_0 (18 B):  fp16 d; u8 qs[16];   x[j] = d*((qs[j]&15)-8), x[j+16] = d*((qs[j]>>4)-8)
 *   Q4_K (144 B): fp16 d, dmin; u8 scales[12]; u8 qs[128]
 *                 8 sub-blocks of 32 with 6-bit scale sc and min m;
 *                 sub-block 2g takes the low nibbles of qs[32g..32g+31],
 *                 2g+1 the high ones; x = d*sc*q - dmin*m
 *   Q5_K (176 B): fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
 *                 as Q4_K, plus 16 when bit j (sub-block j) of qh[l] is set
 *   Q6_K (210 B): u8 ql[128]; u8 qh[64]; int8 scales[16]; fp16 d
 *                 two halves of 128; x = d*scale[16-group]*(q - 32)
 * Activation blocks (llama.cpp's quantize_row_q8_0 / quantize_row_q8_K):
 *   Q8_0: per 32: amax = max|x|, d = amax/127 rounded to fp16 (the dot uses
 *         that fp16 value), q = round-half-even(x * (127/amax)), 0 if amax=0.
 *   Q8_K: per 256: max = the element with the largest |x| (the first one on
 *         ties), iscale = -127/max, q = min(127, round-half-even(iscale*x)),
 *         d = 1/iscale (float); all zero when max = 0.
 *
 * Thread-safety: pure functions only.
 */
#ifndef VELO_GPU_BLOCKS_H
#define VELO_GPU_BLOCKS_H

#include <stdint.h>
#include <string.h>

#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#endif
#if defined(__CUDACC__) || defined(__HIPCC__)
#define VGB_FN static __host__ __device__ __forceinline__
#else
#include <math.h>
#define VGB_FN static inline
#endif

#define VGB_QK8_0 32
#define VGB_QK4_0 32
#define VGB_QK_K 256

/* Bytes per block of each weight format. */
#define VGB_Q8_0_BYTES 34
#define VGB_Q4_0_BYTES 18
#define VGB_Q4_K_BYTES 144
#define VGB_Q5_K_BYTES 176
#define VGB_Q6_K_BYTES 210

/* ------------------------------------------------------------------ */
/* Scalars                                                             */
/* ------------------------------------------------------------------ */

/* float <-> bits without aliasing problems on either side. */
VGB_FN float vgb_bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

VGB_FN uint32_t vgb_f32_to_bits(float f) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

/* IEEE binary16 bits -> float, exact for every input (subnormals, +-0,
 * +-inf; NaN keeps its payload shifted up), as the CPU backend's
 * velo_fp16_to_fp32. */
VGB_FN float vgb_fp16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0) {
    float f = (float)m * 5.9604644775390625e-8f; /* 2^-24: exact */
    return sign ? -f : f;
  }
  if (e == 31) return vgb_bits_to_f32(sign | 0x7f800000u | (m << 13));
  return vgb_bits_to_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* float -> IEEE binary16 bits, round to nearest, ties to even; overflow
 * gives infinity; NaN gives a quiet NaN keeping the sign and the top 9
 * payload bits (what F16C and the CPU backend do). */
VGB_FN uint16_t vgb_f32_to_fp16(float f) {
  uint32_t x = vgb_f32_to_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  uint32_t q, rem, half, s;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax < 0x38800000u) { /* |f| < 2^-14: subnormal half (units of 2^-24) or zero */
    uint32_t e = ax >> 23;
    if (e < 102) return (uint16_t)sign;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    s = 126u - e;
    q = mant >> s;
    rem = mant & ((1u << s) - 1u);
    half = 1u << (s - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  /* rebias 127 -> 15, drop 13 bits rounding to even; a carry into the
   * exponent is right, and anything reaching 0x7c00 is infinity */
  q = (ax - 0x38000000u) >> 13;
  rem = (ax - 0x38000000u) & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
  if (q >= 0x7c00u) q = 0x7c00u;
  return (uint16_t)(sign | q);
}

/* bfloat16 bits -> float (exact). */
VGB_FN float vgb_bf16_to_f32(uint16_t h) { return vgb_bits_to_f32((uint32_t)h << 16); }

/* Round half to even, as nearbyintf in the default rounding mode. */
VGB_FN float vgb_rint(float x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return rintf(x);
#else
  return nearbyintf(x);
#endif
}

/* A little-endian uint16 at p (any alignment on the host; 2-aligned on the
 * device, which is what every block format guarantees for its fields). */
VGB_FN uint16_t vgb_u16(const uint8_t *p) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return *(const uint16_t *)p;
#else
  return (uint16_t)(p[0] | (p[1] << 8));
#endif
}

/* A 32-bit word from 4 bytes at a 2-byte aligned address (little endian). */
VGB_FN int vgb_i32_a2(const uint8_t *p) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  const uint16_t *h = (const uint16_t *)p;
  return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
#else
  uint32_t v;
  memcpy(&v, p, 4);
  return (int)v;
#endif
}

/* A 32-bit word from a 4-byte aligned address. */
VGB_FN int vgb_i32_a4(const void *p) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return *(const int *)p;
#else
  int v;
  memcpy(&v, p, 4);
  return v;
#endif
}

/* The sum of the four signed byte products of a and b, plus c (exact):
 * the dp4a instruction on the device, the same integer arithmetic here. */
VGB_FN int vgb_dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(a, b, c);
#elif defined(__HIP_DEVICE_COMPILE__) && (defined(__gfx906__) || defined(__gfx908__) || \
                                          defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx1030__))
  return __builtin_amdgcn_sdot4(a, b, c, false);
#else
  int s = c;
  for (int i = 0; i < 4; i++) s += (int)(int8_t)(uint8_t)((uint32_t)a >> (8 * i)) *
                                   (int)(int8_t)(uint8_t)((uint32_t)b >> (8 * i));
  return s;
#endif
}

/* ------------------------------------------------------------------ */
/* K-quant scales                                                      */
/* ------------------------------------------------------------------ */

/* Scale and min (6 bits each) of sub-block j (0..7) of a Q4_K / Q5_K
 * super-block from its 12 packed bytes. */
VGB_FN void vgb_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* ------------------------------------------------------------------ */
/* Weight values as integers                                           */
/* ------------------------------------------------------------------ */

/* Element i (0..31) of a Q4_0 block as an integer, -8..7. */
VGB_FN int vgb_q4_0_value(const uint8_t *blk, int i) {
  const uint8_t *qs = blk + 2;
  return i < 16 ? (qs[i] & 0x0f) - 8 : (qs[i - 16] >> 4) - 8;
}

/* Element i (0..255) of a Q4_K super-block as an unsigned integer 0..15. */
VGB_FN int vgb_q4_k_value(const uint8_t *blk, int i) {
  const uint8_t *qs = blk + 16;
  int j = i / 32, l = i % 32, g = j / 2;
  return (j & 1) ? (qs[32 * g + l] >> 4) : (qs[32 * g + l] & 0xF);
}

/* Element i (0..255) of a Q5_K super-block as an unsigned integer 0..31. */
VGB_FN int vgb_q5_k_value(const uint8_t *blk, int i) {
  const uint8_t *qh = blk + 16, *qs = blk + 48;
  int j = i / 32, l = i % 32, g = j / 2;
  int lo = (j & 1) ? (qs[32 * g + l] >> 4) : (qs[32 * g + l] & 0xF);
  return lo | (((qh[l] >> j) & 1) << 4);
}

/* Element i (0..255) of a Q6_K super-block as a signed integer -32..31. */
VGB_FN int vgb_q6_k_value(const uint8_t *blk, int i) {
  const uint8_t *ql = blk, *qh = blk + 128;
  int h = i / 128, r = i % 128, part = r / 32, l = r % 32;
  const uint8_t *qlh = ql + 64 * h, *qhh = qh + 32 * h;
  int lo = part == 0 ? (qlh[l] & 0xF) : part == 1 ? (qlh[l + 32] & 0xF)
           : part == 2 ? (qlh[l] >> 4) : (qlh[l + 32] >> 4);
  int hi = (qhh[l] >> (2 * part)) & 3;
  return (lo | (hi << 4)) - 32;
}

/* Scale of 16-element group g (0..15) of a Q6_K super-block (int8). */
VGB_FN int vgb_q6_k_scale(const uint8_t *blk, int g) { return (int)(int8_t)blk[192 + g]; }

/* ------------------------------------------------------------------ */
/* Dequantization (GET_ROWS and tests)                                 */
/* ------------------------------------------------------------------ */

/* Element i of a row of weight format dtype (GGML type id; F32 0, F16 1,
 * Q4_0 2, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, BF16 30) as float, computed
 * as ggml's to_float does it.  row is the row's first byte. */
VGB_FN float vgb_dequant(int dtype, const uint8_t *row, int64_t i) {
  switch (dtype) {
    case 0: return vgb_bits_to_f32((uint32_t)vgb_u16(row + 4 * i) | ((uint32_t)vgb_u16(row + 4 * i + 2) << 16));
    case 1: return vgb_fp16_to_f32(vgb_u16(row + 2 * i));
    case 30: return vgb_bf16_to_f32(vgb_u16(row + 2 * i));
    case 8: {
      const uint8_t *b = row + (i / 32) * VGB_Q8_0_BYTES;
      return vgb_fp16_to_f32(vgb_u16(b)) * (float)(int8_t)b[2 + i % 32];
    }
    case 2: {
      const uint8_t *b = row + (i / 32) * VGB_Q4_0_BYTES;
      return vgb_fp16_to_f32(vgb_u16(b)) * (float)vgb_q4_0_value(b, (int)(i % 32));
    }
    case 12:
    case 13: {
      const uint8_t *b = row + (i / 256) * (dtype == 12 ? VGB_Q4_K_BYTES : VGB_Q5_K_BYTES);
      int e = (int)(i % 256), sc, m;
      vgb_scale_min_k4(e / 32, b + 4, &sc, &m);
      float d = vgb_fp16_to_f32(vgb_u16(b)), dmin = vgb_fp16_to_f32(vgb_u16(b + 2));
      int q = dtype == 12 ? vgb_q4_k_value(b, e) : vgb_q5_k_value(b, e);
      float d1 = d * (float)sc, m1 = dmin * (float)m;
      return d1 * (float)q - m1;
    }
    case 14: {
      const uint8_t *b = row + (i / 256) * VGB_Q6_K_BYTES;
      int e = (int)(i % 256);
      float d = vgb_fp16_to_f32(vgb_u16(b + 208));
      return (d * (float)vgb_q6_k_scale(b, e / 16)) * (float)vgb_q6_k_value(b, e);
    }
    default: return 0.0f;
  }
}

/* ------------------------------------------------------------------ */
/* Activation quantization                                             */
/* ------------------------------------------------------------------ */

/* Converts a rounded value to an int8 quant: NaN -> 0, clamped to
 * [-127, 127] (finite inputs are in range already), as the CPU backend. */
VGB_FN int8_t vgb_q8_from_rounded(float r) {
  if (r != r) return 0;
  if (r > 127.0f) return 127;
  if (r < -127.0f) return -127;
  return (int8_t)r;
}

/* The Q8_0 scale of a block whose largest magnitude is amax: the fp16 bits
 * of amax/127, and the multiplier 127/amax (0 when amax is 0). */
VGB_FN uint16_t vgb_q8_0_scale(float amax, float *id) {
  *id = amax != 0.0f ? 127.0f / amax : 0.0f;
  return vgb_f32_to_fp16(amax / 127.0f);
}

/* Q8_K: the inverse scale for a super-block whose element of largest
 * magnitude is max (signed); 0 when max is 0. */
VGB_FN float vgb_q8_k_iscale(float max) { return max != 0.0f ? -127.0f / max : 0.0f; }

/* One Q8_K quant: min(127, round-half-even(iscale * x)). */
VGB_FN int8_t vgb_q8_k_quant(float iscale, float x) {
  float r = vgb_rint(iscale * x);
  if (r != r) return 0;
  if (r > 127.0f) r = 127.0f;
  if (r < -128.0f) r = -128.0f;
  return (int8_t)r;
}

/* ------------------------------------------------------------------ */
/* One lane's share of a block dot product (k_mmv_q)                   */
/* ------------------------------------------------------------------ */

/* Bytes and elements of one weight (super-)block of a quantized type
 * (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K); 0 for others. */
VGB_FN int vgb_block_bytes(int type) {
  return type == 8 ? VGB_Q8_0_BYTES : type == 2 ? VGB_Q4_0_BYTES : type == 12 ? VGB_Q4_K_BYTES
         : type == 13 ? VGB_Q5_K_BYTES : type == 14 ? VGB_Q6_K_BYTES : 0;
}
VGB_FN int vgb_block_elems(int type) { return type == 8 || type == 2 ? 32 : 256; }

/* Lane part (0 .. QK/8-1) of weight block wb against the matching
 * activation block: xq its quants (QK int8, 4-byte aligned), xd its scale,
 * xbs its 16 bsums (Q8_K only).  Outputs the lane's exact integer share of
 * the block's isum and msum (gpu_blocks.h, canonical order) and the
 * block's factors sc = fp32(d_w) * xd and scm = fp32(dmin_w) * xd.  The
 * shares of all parts add up to the block's isum and msum exactly.
 * Alignment: wb 8-byte aligned for Q4_K / Q5_K, 2 for the others. */
VGB_FN void vgb_mmv_part(int type, const uint8_t *wb, int part, const int8_t *xq, float xd,
                         const int16_t *xbs, int *isum, int *msum, float *sc, float *scm) {
  const int ones = 0x01010101;
  *msum = 0;
  *scm = 0.0f;
  if (type == 8) { /* Q8_0: 8 elements */
    const int w0 = vgb_i32_a2(wb + 2 + 8 * part), w1 = vgb_i32_a2(wb + 6 + 8 * part);
    *isum = vgb_dp4a(w0, vgb_i32_a4(xq + 8 * part), vgb_dp4a(w1, vgb_i32_a4(xq + 8 * part + 4), 0));
    *sc = vgb_fp16_to_f32(vgb_u16(wb)) * xd;
  } else if (type == 2) { /* Q4_0: nibble bytes 4p..4p+3 = elements 4p.. and 16+4p.. */
    const int v = vgb_i32_a2(wb + 2 + 4 * part);
    const int lo = v & 0x0F0F0F0F, hi = (v >> 4) & 0x0F0F0F0F;
    const int xl = vgb_i32_a4(xq + 4 * part), xh = vgb_i32_a4(xq + 16 + 4 * part);
    *isum = vgb_dp4a(lo, xl, vgb_dp4a(hi, xh, 0)) - 8 * vgb_dp4a(ones, xl, vgb_dp4a(ones, xh, 0));
    *sc = vgb_fp16_to_f32(vgb_u16(wb)) * xd;
  } else if (type == 12 || type == 13) { /* Q4_K / Q5_K: sub-block j, quarter qq */
    const int j = part / 4, qq = part % 4, g = j / 2, shift = 4 * (j & 1);
    const uint8_t *qs = wb + (type == 12 ? 16 : 48) + 32 * g + 8 * qq;
    int w0 = (vgb_i32_a4(qs) >> shift) & 0x0F0F0F0F, w1 = (vgb_i32_a4(qs + 4) >> shift) & 0x0F0F0F0F;
    if (type == 13) {
      const uint8_t *qh = wb + 16 + 8 * qq;
      w0 |= ((vgb_i32_a4(qh) >> j) & ones) << 4;
      w1 |= ((vgb_i32_a4(qh + 4) >> j) & ones) << 4;
    }
    const int8_t *x = xq + 32 * j + 8 * qq;
    const int S = vgb_dp4a(w0, vgb_i32_a4(x), vgb_dp4a(w1, vgb_i32_a4(x + 4), 0));
    int scl, mn;
    vgb_scale_min_k4(j, wb + 4, &scl, &mn);
    *isum = scl * S;
    *msum = qq == 0 ? mn * ((int)xbs[2 * j] + (int)xbs[2 * j + 1]) : 0;
    *sc = vgb_fp16_to_f32(vgb_u16(wb)) * xd;
    *scm = vgb_fp16_to_f32(vgb_u16(wb + 2)) * xd;
  } else { /* Q6_K: 16-element group grp, half of it */
    const int grp = part / 2, e0 = 16 * grp + 8 * (part % 2);
    const int hh = e0 / 128, r = e0 % 128, p4 = r / 32, l = r % 32;
    const uint8_t *ql = wb + 64 * hh + (p4 & 1) * 32 + l, *qh = wb + 128 + 32 * hh + l;
    const int ns = 4 * (p4 / 2), hs = 2 * p4;
    const int u0 = ((vgb_i32_a2(ql) >> ns) & 0x0F0F0F0F) | (((vgb_i32_a2(qh) >> hs) & 0x03030303) << 4);
    const int u1 = ((vgb_i32_a2(ql + 4) >> ns) & 0x0F0F0F0F) | (((vgb_i32_a2(qh + 4) >> hs) & 0x03030303) << 4);
    const int x0 = vgb_i32_a4(xq + e0), x1 = vgb_i32_a4(xq + e0 + 4);
    const int S = vgb_dp4a(u0, x0, vgb_dp4a(u1, x1, 0)) - 32 * vgb_dp4a(ones, x0, vgb_dp4a(ones, x1, 0));
    *isum = vgb_q6_k_scale(wb, grp) * S;
    *sc = vgb_fp16_to_f32(vgb_u16(wb + 208)) * xd;
  }
}

/* ------------------------------------------------------------------ */
/* One 32-element unit of a weight row as int8 (k_mmq)                 */
/* ------------------------------------------------------------------ */

/* Decodes elements 32u .. 32u+31 of the (super-)block wb into out as
 * integers, and the unit's factors: Q8_0/Q4_0 wd[u] = fp32(d); K types
 * wm[2u], wm[2u+1] = the two 16-element groups' multipliers, wmin[u] the
 * sub-block's min (Q4_K/Q5_K), and for u = 0 wd[0] = fp32(d), wd[1] =
 * fp32(dmin).  u is 0 for Q8_0/Q4_0 (wb is then the block itself; the
 * caller passes wd + its unit index). */
VGB_FN void vgb_mmq_unit(int type, const uint8_t *wb, int u, int8_t *out, float *wd, int8_t *wm,
                         int8_t *wmin) {
  if (type == 8 || type == 2) {
    wd[0] = vgb_fp16_to_f32(vgb_u16(wb));
    for (int i = 0; i < 32; i++)
      out[i] = (int8_t)(type == 8 ? (int)(int8_t)wb[2 + i] : vgb_q4_0_value(wb, i));
    return;
  }
  if (type == 14) {
    for (int i = 0; i < 32; i++) out[i] = (int8_t)vgb_q6_k_value(wb, 32 * u + i);
    wm[2 * u] = (int8_t)vgb_q6_k_scale(wb, 2 * u);
    wm[2 * u + 1] = (int8_t)vgb_q6_k_scale(wb, 2 * u + 1);
    if (u == 0) wd[0] = vgb_fp16_to_f32(vgb_u16(wb + 208));
    return;
  }
  for (int i = 0; i < 32; i++)
    out[i] = (int8_t)(type == 12 ? vgb_q4_k_value(wb, 32 * u + i) : vgb_q5_k_value(wb, 32 * u + i));
  int scl, mn;
  vgb_scale_min_k4(u, wb + 4, &scl, &mn);
  wm[2 * u] = (int8_t)scl;
  wm[2 * u + 1] = (int8_t)scl;
  wmin[u] = (int8_t)mn;
  if (u == 0) {
    wd[0] = vgb_fp16_to_f32(vgb_u16(wb));
    wd[1] = vgb_fp16_to_f32(vgb_u16(wb + 2));
  }
}

#endif /* VELO_GPU_BLOCKS_H */
