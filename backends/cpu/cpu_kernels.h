/*
 * cpu_kernels.h - the CPU backend's numeric kernels: FP16 conversion, the
 * quantization blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants Q2_K to
 * Q8_K, BF16) with their dequantizers and dot products, and the vector
 * primitives (dot products, activation quantization, matrix products) that
 * the graph ops are built from.  Every format but Q2_K and Q3_K also has
 * AVX2 and AVX-512 matrix kernels (vec_avx*.c, kq_avx*.c, qx_avx*.c).
 *
 * This is the header other code may include (link the static library
 * velo_cpu_kernels).  Everything here is pure: no global mutable state, no
 * allocation, safe to call from any thread on disjoint outputs.
 *
 * Arithmetic follows llama.cpp (ggml) so that greedy token ids can be
 * reproduced bit-closely; see /work/shared/reference/README.md:
 *  - FP16 is IEEE 754 binary16; float -> half rounds to nearest, ties to
 *    even, with subnormals, infinities and NaN handled.
 *  - Q8_0/Q4_0 products first quantize the activation to Q8_0 blocks
 *    (d = amax/127 as fp16, q = round-half-even(x * 127/amax)), then take
 *    exact int32 partial dots and accumulate them in 16 float lanes with a
 *    fused multiply-add ("Integer block dot products" below: the exact
 *    order, which every ISA variant, every batch size and every thread
 *    count reproduces to the bit).
 *  - Float dot products (F32, F16) accumulate in 8 float lanes (element k
 *    goes to lane k % 8, multiply then add, no FMA) and reduce the lanes in
 *    one fixed order, so every ISA variant gives the same bits.
 *
 * ISA variants: a velo_cpu_vec table holds one implementation of each
 * primitive.  The portable C table is the reference; the AVX2 table (x86-64
 * with AVX2, FMA and F16C) and the AVX-512 table (AVX-512 F, BW, VL and
 * VNNI besides), each chosen at run time from CPUID, return bit-identical
 * results.
 */
#ifndef VELO_CPU_KERNELS_H
#define VELO_CPU_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "velo/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* FP16 (IEEE binary16)                                                 */
/* ------------------------------------------------------------------ */

/* Converts a half (bit pattern) to float.  Exact for every input: normals,
 * subnormals, +-0, +-inf; NaN stays NaN with its payload shifted up. */
static inline float velo_fp16_to_fp32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  uint32_t bits;
  float f;
  if (e == 0) {
    /* zero or subnormal: m * 2^-24, exact in float */
    f = (float)m * 0x1p-24f;
    return sign ? -f : f;
  }
  if (e == 31)
    bits = sign | 0x7f800000u | (m << 13);
  else
    bits = sign | ((e + 112u) << 23) | (m << 13);
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Converts a float to half, rounding to nearest with ties to even (the IEEE
 * default, and what F16C's vcvtps2ph does with imm 0).  Values that round
 * beyond 65504 give infinity; NaN gives a quiet NaN keeping the sign and the
 * top 9 payload bits (as F16C does).  Pure. */
uint16_t velo_fp32_to_fp16(float f);

/* Row forms of the two conversions, portable C; n >= 0 elements. */
void velo_fp16_to_fp32_row(const uint16_t *x, float *y, int64_t n);
void velo_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n);

/* ------------------------------------------------------------------ */
/* Quantization blocks (GGUF / ggml layouts)                            */
/* ------------------------------------------------------------------ */

#define VELO_QK8_0 32
#define VELO_QK4_0 32

/* Q8_0: 32 values, value j = fp16(d) * qs[j].  34 bytes. */
typedef struct velo_block_q8_0 {
  uint16_t d;                /* scale, fp16 bits */
  int8_t qs[VELO_QK8_0];     /* quants */
} velo_block_q8_0;

/* Q4_0: 32 values; element j (0..15) = (qs[j] & 0x0F) - 8, element j+16 =
 * (qs[j] >> 4) - 8; value = fp16(d) * element.  18 bytes. */
typedef struct velo_block_q4_0 {
  uint16_t d;                /* scale, fp16 bits */
  uint8_t qs[VELO_QK4_0 / 2]; /* nibbles */
} velo_block_q4_0;

_Static_assert(sizeof(velo_block_q8_0) == 34, "Q8_0 block must be 34 bytes");
_Static_assert(sizeof(velo_block_q4_0) == 18, "Q4_0 block must be 18 bytes");

/* Dequantizes n values (n a multiple of 32) from blocks x into y.  The
 * value is computed as (float)d * (float)q, exactly like ggml. */
void velo_dequantize_row_q8_0(const velo_block_q8_0 *x, float *y, int64_t n);
void velo_dequantize_row_q4_0(const velo_block_q4_0 *x, float *y, int64_t n);

/* Converts one row of n elements of dtype (F32, F16, BF16, Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or Q8_K) to
 * float.  Returns false (writing nothing) for another dtype or when n is
 * not a multiple of the block size. */
bool velo_dequantize_row(velo_dtype dtype, const void *x, float *y, int64_t n);

/* ------------------------------------------------------------------ */
/* K-quant super-blocks of 256 (GGUF / ggml layouts)                    */
/* ------------------------------------------------------------------ */

#define VELO_QK_K 256

/* Q4_K: 8 sub-blocks of 32; sub-block j has a 6-bit scale sc[j] and a
 * 6-bit min m[j] packed in scales[12] (velo_k4_scale_min); value =
 * fp16(d)*sc[j]*q - fp16(dmin)*m[j], q a nibble.  Each 64 elements use 32
 * bytes of qs: low nibbles are elements 0..31, high nibbles 32..63.
 * 144 bytes. */
typedef struct velo_block_q4_K {
  uint16_t d;        /* super-block scale of the scales, fp16 bits */
  uint16_t dmin;     /* super-block scale of the mins, fp16 bits */
  uint8_t scales[12];
  uint8_t qs[VELO_QK_K / 2];
} velo_block_q4_K;

/* Q5_K: Q4_K plus a fifth bit per element: bit 2c (low nibbles) or 2c+1
 * (high nibbles) of qh[l] for element l of 64-element chunk c.  176 bytes. */
typedef struct velo_block_q5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[VELO_QK_K / 8];
  uint8_t qs[VELO_QK_K / 2];
} velo_block_q5_K;

/* Q6_K: 16 sub-blocks of 16 with int8 scales; value = fp16(d)*scales[s]*
 * (q - 32), q 6 bits: 4 in ql, 2 in qh (see velo_dequantize_row_q6_K).
 * 210 bytes. */
typedef struct velo_block_q6_K {
  uint8_t ql[VELO_QK_K / 2];
  uint8_t qh[VELO_QK_K / 4];
  int8_t scales[VELO_QK_K / 16];
  uint16_t d;
} velo_block_q6_K;

/* Q8_K: the activation format for K-quant weights.  d is a float;
 * bsums[i] = sum of qs[16i..16i+15].  292 bytes. */
typedef struct velo_block_q8_K {
  float d;
  int8_t qs[VELO_QK_K];
  int16_t bsums[VELO_QK_K / 16];
} velo_block_q8_K;

_Static_assert(sizeof(velo_block_q4_K) == 144, "Q4_K block must be 144 bytes");
_Static_assert(sizeof(velo_block_q5_K) == 176, "Q5_K block must be 176 bytes");
_Static_assert(sizeof(velo_block_q6_K) == 210, "Q6_K block must be 210 bytes");
_Static_assert(sizeof(velo_block_q8_K) == 292, "Q8_K block must be 292 bytes");

/* Unpacks the 6-bit scale (*sc) and min (*m) of sub-block j (0..7) from
 * the 12 packed bytes q of a Q4_K/Q5_K block: for j < 4 the low 6 bits of
 * q[j] and q[j+4]; for j >= 4 the nibbles of q[j+4] with the top 2 bits of
 * q[j-4] (scale) and q[j] (min) above them.  Pure. */
static inline void velo_k4_scale_min(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* Dequantizers, n a multiple of 256; values computed as ggml does:
 * (fp16(d)*sc)*q - (fp16(dmin)*m) for Q4_K/Q5_K, (fp16(d)*sc)*(q-32) for
 * Q6_K, each product rounded to float. */
void velo_dequantize_row_q4_K(const velo_block_q4_K *x, float *y, int64_t n);
void velo_dequantize_row_q5_K(const velo_block_q5_K *x, float *y, int64_t n);
void velo_dequantize_row_q6_K(const velo_block_q6_K *x, float *y, int64_t n);
void velo_dequantize_row_q8_K(const velo_block_q8_K *x, float *y, int64_t n);

/* Quantizes n floats (n a multiple of 256) to Q8_K as llama.cpp does:
 * max = the signed element with the largest |x| (the first such); if it is
 * 0 the block is all zero with d = 0; else iscale = -127/max, q = min(127,
 * round-half-even(iscale*x)), d = 1/iscale (f32), bsums as above.  NaN
 * inputs give q = 0. */
void velo_quantize_row_q8_K_ref(const float *x, velo_block_q8_K *y, int64_t n);

/* Products of a K-quant weight row with a Q8_K activation row, n a
 * multiple of 256.  Fixed arithmetic, the same for every output, batch size
 * and thread count: per super-block b the exact int32 sums
 *   Q4_K/Q5_K: si = sum_j sc[j] * sum_{i in sub-block j} q_i*x_i,
 *              sm = sum_j m[j] * (bsums[2j] + bsums[2j+1]);
 *   Q6_K:      si = sum_s scales[s] * sum_{i in sub-block s} (q_i-32)*x_i
 * then, in float, acc += (fp16(d)*x.d) * (float)si and for Q4_K/Q5_K
 * acc -= (fp16(dmin)*x.d) * (float)sm, blocks in order, acc from +0. */
float velo_dot_q4_K_q8_K_ref(const velo_block_q4_K *w, const velo_block_q8_K *x, int64_t n);
float velo_dot_q5_K_q8_K_ref(const velo_block_q5_K *w, const velo_block_q8_K *x, int64_t n);
float velo_dot_q6_K_q8_K_ref(const velo_block_q6_K *w, const velo_block_q8_K *x, int64_t n);

/* Q8_K weights (a Q8_K row as a weight matrix row) with a Q8_K activation
 * row, n a multiple of 256.  Fixed arithmetic: per super-block b the exact
 * int32 sum s = sum_i w.qs[i]*x.qs[i] (|s| <= 256*128*128 < 2^23, so
 * (float)s is exact), then acc += (w.d*x.d) * (float)s, blocks in order,
 * acc from +0.  The weights' bsums are not read.  The SIMD kernels assume
 * activation quants in [-127, 127], as velo_quantize_row_q8_K_ref makes
 * them; weight quants may be any int8. */
float velo_dot_q8_K_q8_K_ref(const velo_block_q8_K *w, const velo_block_q8_K *x, int64_t n);

/* One output of a K-quant product: dispatches on wt (Q2_K, Q3_K, Q4_K,
 * Q5_K, Q6_K). */
float velo_dot_k_q8_K(velo_dtype wt, const void *w, const velo_block_q8_K *x, int64_t n);

/* ------------------------------------------------------------------ */
/* Q2_K and Q3_K super-blocks of 256 (GGUF / ggml layouts; quant_k23.c) */
/* ------------------------------------------------------------------ */

/*
 * Both split a super-block into 16 sub-blocks of 16 elements (sub-block s
 * holds elements 16s..16s+15) and share one placement of the two low bits
 * of each element: element i = 128h + 32j + l (half h = 0..1, column
 * j = 0..3, lane l = 0..31) is bits 2j..2j+1 of qs[32h + l].  So one qs
 * byte carries the same lane of the four columns of a half.
 *
 * Q2_K: element value = fp16(d) * sc * q - fp16(dmin) * m, q = the two
 * bits (0..3), sc = the low nibble and m = the high nibble of scales[s].
 * 84 bytes.
 *
 * Q3_K: element value = fp16(d) * (sc - 32) * (q - off), q = the two low
 * bits, off = 0 when bit i/32 of hmask[i % 32] is set and 4 when it is
 * clear (so q - off is -4..3).  The sixteen 6-bit scales sc are packed in
 * scales[12]: the low four bits of scale s are the low (s < 8) or high
 * (s >= 8) nibble of scales[s % 8], its top two bits are bits
 * 2*(s/4)..2*(s/4)+1 of scales[8 + s % 4]; the stored value is offset by
 * 32 (0..63 stands for -32..31).  110 bytes.
 */
typedef struct velo_block_q2_K {
  uint8_t scales[VELO_QK_K / 16]; /* per sub-block: scale (low nibble), min (high) */
  uint8_t qs[VELO_QK_K / 4];      /* 2-bit quants */
  uint16_t d;                     /* super-block scale of the scales, fp16 bits */
  uint16_t dmin;                  /* super-block scale of the mins, fp16 bits */
} velo_block_q2_K;

typedef struct velo_block_q3_K {
  uint8_t hmask[VELO_QK_K / 8]; /* third bit of each quant (set: +0, clear: -4) */
  uint8_t qs[VELO_QK_K / 4];    /* low 2 bits of each quant */
  uint8_t scales[12];           /* sixteen 6-bit scales, offset by 32 */
  uint16_t d;                   /* super-block scale, fp16 bits */
} velo_block_q3_K;

_Static_assert(sizeof(velo_block_q2_K) == 84, "Q2_K block must be 84 bytes");
_Static_assert(sizeof(velo_block_q3_K) == 110, "Q3_K block must be 110 bytes");
_Static_assert(offsetof(velo_block_q2_K, d) == 80 && offsetof(velo_block_q2_K, dmin) == 82,
               "Q2_K d, dmin at bytes 80, 82");
_Static_assert(offsetof(velo_block_q3_K, d) == 108, "Q3_K d at byte 108");

/* Dequantizers, n a multiple of 256, values computed as ggml does:
 * (fp16(d)*sc)*q - (fp16(dmin)*m) for Q2_K and (fp16(d)*(sc-32))*(q-off)
 * for Q3_K, each product rounded to float (every product is exact in
 * float: an 11-bit fp16 mantissa times at most 4 + 2 or 6 + 3 bits; only
 * Q2_K's subtraction rounds). */
void velo_dequantize_row_q2_K(const velo_block_q2_K *x, float *y, int64_t n);
void velo_dequantize_row_q3_K(const velo_block_q3_K *x, float *y, int64_t n);

/* Products with a Q8_K activation row, n a multiple of 256.  Fixed
 * arithmetic, the same for every output, batch size and thread count: per
 * super-block b the exact int32 sums
 *   Q2_K: si = sum_s sc[s] * sum_{i in sub-block s} q_i*x_i,
 *         sm = sum_s m[s] * bsums[s]           (q_i = 0..3);
 *   Q3_K: si = sum_s (sc[s]-32) * sum_{i in s} (q_i-off_i)*x_i
 * (|si| <= 15*3*128*256 resp. 32*4*128*256 < 2^24, so (float)si is
 * exact), then in float acc += (fp16(d)*x.d) * (float)si and, for Q2_K,
 * acc -= (fp16(dmin)*x.d) * (float)sm; blocks in order, acc from +0. */
float velo_dot_q2_K_q8_K_ref(const velo_block_q2_K *w, const velo_block_q8_K *x, int64_t n);
float velo_dot_q3_K_q8_K_ref(const velo_block_q3_K *w, const velo_block_q8_K *x, int64_t n);

/* ------------------------------------------------------------------ */
/* Further formats: Q4_1, Q5_0, Q5_1 (blocks of 32), Q8_1, BF16         */
/* ------------------------------------------------------------------ */

/* Q4_1: value j = fp16(d)*q + fp16(m), q the nibble as in Q4_0 (low
 * nibbles elements 0..15, high 16..31).  20 bytes. */
typedef struct velo_block_q4_1 {
  uint16_t d, m;
  uint8_t qs[16];
} velo_block_q4_1;

/* Q5_0: q = nibble (as Q4_0) + 16 * bit j of the little-endian qh;
 * value = fp16(d)*(q - 16).  22 bytes. */
typedef struct velo_block_q5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
} velo_block_q5_0;

/* Q5_1: q as Q5_0; value = fp16(d)*q + fp16(m).  24 bytes. */
typedef struct velo_block_q5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
} velo_block_q5_1;

/* Q8_1: activations for Q4_1/Q5_1 weights: Q8_0 plus s = fp16(d*sum q),
 * d the unrounded float scale.  36 bytes. */
typedef struct velo_block_q8_1 {
  uint16_t d, s;
  int8_t qs[32];
} velo_block_q8_1;

_Static_assert(sizeof(velo_block_q4_1) == 20, "Q4_1 block must be 20 bytes");
_Static_assert(sizeof(velo_block_q5_0) == 22, "Q5_0 block must be 22 bytes");
_Static_assert(sizeof(velo_block_q5_1) == 24, "Q5_1 block must be 24 bytes");
_Static_assert(sizeof(velo_block_q8_1) == 36, "Q8_1 block must be 36 bytes");

/* bfloat16: the top 16 bits of a float (exact conversion up). */
static inline float velo_bf16_to_fp32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Float to bf16, round to nearest even (as ggml); NaN stays a quiet NaN. */
uint16_t velo_fp32_to_bf16(float f);

/* Dequantizers, n a multiple of 32: (float)q*d + m, (float)(q-16)*d, each
 * operation rounded to float as ggml does. */
void velo_dequantize_row_q4_1(const velo_block_q4_1 *x, float *y, int64_t n);
void velo_dequantize_row_q5_0(const velo_block_q5_0 *x, float *y, int64_t n);
void velo_dequantize_row_q5_1(const velo_block_q5_1 *x, float *y, int64_t n);

/* Quantizes n floats (a multiple of 32) to Q8_1 as llama.cpp's x86 path:
 * the quants and d exactly as quantize_row_q8_0, s = fp16(d * sum q). */
void velo_quantize_row_q8_1_ref(const float *x, velo_block_q8_1 *y, int64_t n);

/* Fixed-order dots, n a multiple of 32: per block the exact int32 sum S of
 * q_w*q_x, then acc += (fp16(d_w)*fp16(d_x)) * (float)S and, for Q4_1 and
 * Q5_1, acc += fp16(m_w)*fp16(s_x); blocks in order, acc from +0. */
float velo_dot_q4_1_q8_1_ref(const velo_block_q4_1 *w, const velo_block_q8_1 *x, int64_t n);
float velo_dot_q5_1_q8_1_ref(const velo_block_q5_1 *w, const velo_block_q8_1 *x, int64_t n);
float velo_dot_q5_0_q8_0_ref(const velo_block_q5_0 *w, const velo_block_q8_0 *x, int64_t n);
/* bf16 x bf16, 8 float lanes (element k in lane k % 8) as dot_f32. */
float velo_dot_bf16_ref(const uint16_t *x, const uint16_t *y, int64_t n);

/* Converted-activation weight formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_1,
 * Q5_0, Q5_1, BF16, Q8_K): MUL_MAT converts each activation column once to the weight's
 * activation format (Q8_K, Q8_1, Q8_0, bf16) and computes each output with
 * one fixed dot, whatever the batch size and thread count. */
bool velo_dtype_converts_act(velo_dtype wt);
/* Bytes of one converted column of K elements (K a multiple of the block). */
size_t velo_act_bytes(velo_dtype wt, int64_t K);
/* Converts column x (K floats) for weights of dtype wt into out. */
void velo_act_convert(velo_dtype wt, const float *x, void *out, int64_t K);
/* The product of weight row w (dtype wt) with a converted column. */
float velo_act_dot(velo_dtype wt, const void *w, const void *act, int64_t K);
/* mul_mat_act of the portable table (contract in velo_cpu_vec): one
 * velo_act_dot per output; the ISA variants fall back on it for formats
 * they have no kernel for. */
void velo_mul_mat_act_ref(velo_dtype wt, const void *w, size_t w_stride, int64_t nr,
                          const void *cols, size_t col_stride, int64_t nc, int64_t K,
                          float *const *dst, int64_t off);

/* Reduces 8 float lanes in the fixed order every dot product uses:
 * ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
static inline float velo_lanes_sum8(const float l[8]) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ------------------------------------------------------------------ */
/* Integer block dot products (Q8_0 and Q4_0 weights)                   */
/* ------------------------------------------------------------------ */

/*
 * The product of a weight row w (Q8_0 or Q4_0, nb = K/32 blocks) with an
 * activation column quantized to Q8_0 blocks x (scales d_x[b], quants
 * q_x[b][0..31]) is defined by these float operations, which every ISA
 * variant performs for every output, whatever the batch size M, the tiling
 * and the thread count (so an output's bits depend only on its weight row
 * and its own column: batch invariance):
 *
 *  1. v[b][i] is weight element i of block b as an integer: the Q8_0 int8,
 *     or the Q4_0 nibble minus 8 (-8..7).
 *  2. For each block b and k = 0..3 the exact integer partial sum
 *       S[b][k] = sum of v[b][i] * q_x[b][i] over the 8 elements
 *                 i = 4k..4k+3 and 16+4k..16+4k+3
 *     (the k-th run of four in each half of the block; |S| <= 130048 <
 *     2^24, so (float)S is exact).  Two vpdpbusd (or maddubs+madd) steps on
 *     the same int32 lane produce it.
 *  3. scale[b] = fp32(d_w[b]) * fp32(d_x[b]), rounded to float.
 *  4. Sixteen float accumulators A[0..15] start at +0.  For b = 0, 1, ...,
 *     nb-1 in order, and each k: A[L] = fmaf(scale[b], (float)S[b][k], A[L])
 *     (one rounding) with L = 4*(b%4) + k.  So a 512-bit register holds a
 *     group of four consecutive blocks, four lanes each.
 *  5. Result: t[i] = A[i] + A[i+8] (i < 8), u[i] = t[i] + t[i+4] (i < 4),
 *     r[i] = u[i] + u[i+2] (i < 2), result = r[0] + r[1].
 *
 * llama.cpp's x86 dot products have the same steps 1 and 3; they add one
 * block per step into 8 float lanes of 4-element sums (one rounding more
 * per 8 elements than here).
 *
 * The matrix kernels read each activation column in a prepared form
 * ("qcol"), made once per column and node by qcol_prepare: one 256-byte
 * record (64-byte aligned) per group of four blocks 4p..4p+3 (blocks
 * missing from the last group count as all zero and add nothing):
 *   bytes   0..63:  quants 0..15 of the four blocks (16 bytes each), and
 *   bytes  64..127: quants 16..31 of the four blocks: bytes 4L..4L+3 of
 *                   each are the quants that meet lane L's weights;
 *   bytes 128..191: int32 bias[L] = -off * (sum of lane L's 8 quants),
 *                   off = 128 for Q8_0, 8 for Q4_0: with unsigned weight
 *                   bytes u = v + off, S = bias + sum u*q (vpdpbusd);
 *   bytes 192..255: float dx[L] = fp32(d_x) of block 4p + L/4.
 */

#define VELO_QCOL_GROUP 4          /* blocks per prepared-column record */
#define VELO_QCOL_RECORD_BYTES 256 /* bytes per record */

/* Bytes of a prepared column of K elements (K a multiple of 32, >= 0). */
static inline size_t velo_qcol_bytes(int64_t K) {
  return (size_t)((K / 32 + VELO_QCOL_GROUP - 1) / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
}

/* ------------------------------------------------------------------ */
/* Vector primitives, one table per ISA variant                         */
/* ------------------------------------------------------------------ */

typedef enum velo_cpu_isa {
  VELO_CPU_ISA_SCALAR = 0, /* portable C, the reference */
  VELO_CPU_ISA_AVX2 = 1,   /* x86-64 AVX2 + FMA + F16C */
  VELO_CPU_ISA_AVX512 = 2  /* the above + AVX-512 F, BW, VL, VNNI */
} velo_cpu_isa;

#define VELO_CPU_ISA_LAST VELO_CPU_ISA_AVX512

typedef struct velo_cpu_vec {
  velo_cpu_isa isa;
  const char *name; /* "portable C", "AVX2", "AVX-512" */

  /* sum_k x[k]*y[k], n >= 0, 8-lane float accumulation (see top). */
  float (*dot_f32)(const float *x, const float *y, int64_t n);
  /* The same with both operands fp16 (converted exactly to float). */
  float (*dot_f16)(const uint16_t *x, const uint16_t *y, int64_t n);
  /* The same with x fp16 and y float (F16 K cache against a float query). */
  float (*dot_f16_f32)(const uint16_t *x, const float *y, int64_t n);

  /* Rounds n floats to fp16 (round-half-even), as velo_fp32_to_fp16. */
  void (*fp32_to_fp16_row)(const float *x, uint16_t *y, int64_t n);

  /* Quantizes an activation row of n floats (n a multiple of 32) to Q8_0
   * blocks as llama.cpp's x86 path does: amax = max |x|, d = amax/127
   * stored as fp16, id = amax != 0 ? 127/amax : 0, q = nearbyintf(x*id)
   * (round half to even).  Every q is in [-127, 127]. */
  void (*quantize_row_q8_0)(const float *x, velo_block_q8_0 *y, int64_t n);

  /* Prepares one activation column of K floats (K a multiple of 32) for
   * weights of dtype wt (Q8_0 or Q4_0): quantizes it exactly as
   * quantize_row_q8_0 and writes velo_qcol_bytes(K) bytes at col (64-byte
   * aligned) in the layout above.  Every variant writes the same bytes. */
  void (*qcol_prepare)(velo_dtype wt, const float *x, int64_t K, void *col);

  /* Matrix product on prepared columns: for r < nr and c < nc,
   * dst[c][off + r] = the product (above) of weight row r, which starts at
   * (const char *)w + r * w_stride, with the column prepared at
   * (const char *)cols + c * col_stride (a multiple of 64).  wt is Q8_0 or
   * Q4_0, K a multiple of 32.  Writes nothing else. */
  void (*mul_mat_q)(velo_dtype wt, const void *w, size_t w_stride, int64_t nr, const void *cols,
                    size_t col_stride, int64_t nc, int64_t K, float *const *dst, int64_t off);

  /* Matrix product for the converted-activation weight formats
   * (velo_dtype_converts_act: the K-quants, Q4_1, Q5_0, Q5_1, BF16, ...):
   * for r < nr and c < nc, dst[c][off + r] = velo_act_dot(wt, weight row r,
   * column c) to the bit, where row r starts at (const char *)w +
   * r * w_stride and column c, converted by velo_act_convert, at
   * (const char *)cols + c * col_stride.  K a multiple of wt's block.
   * Writes nothing else.  Variants only compute the exact integer (or
   * float) partial sums faster; the float operations that combine them are
   * those of the portable dot, in its order. */
  void (*mul_mat_act)(velo_dtype wt, const void *w, size_t w_stride, int64_t nr,
                      const void *cols, size_t col_stride, int64_t nc, int64_t K,
                      float *const *dst, int64_t off);
} velo_cpu_vec;

/* The table for isa, or NULL when that variant was not compiled in or this
 * CPU lacks the instructions.  Tables are static constants. */
const velo_cpu_vec *velo_cpu_vec_for(velo_cpu_isa isa);

/* The fastest table this CPU supports (never NULL). */
const velo_cpu_vec *velo_cpu_vec_best(void);

/* The portable C implementations (the entries of the scalar table), for
 * tests and for ISA variants that fall back on them for tails. */
float velo_dot_f32_ref(const float *x, const float *y, int64_t n);
float velo_dot_f16_ref(const uint16_t *x, const uint16_t *y, int64_t n);
float velo_dot_f16_f32_ref(const uint16_t *x, const float *y, int64_t n);
void velo_quantize_row_q8_0_ref(const float *x, velo_block_q8_0 *y, int64_t n);

/* Lays out one group of n quantized blocks xb[0..n-1] (1 <= n <= 4) as a
 * record of a prepared column for weights of dtype wt (see above); out is
 * VELO_QCOL_RECORD_BYTES bytes, 64-byte aligned.  Portable; the ISA
 * variants' qcol_prepare give the same bytes. */
void velo_qcol_record_ref(velo_dtype wt, const velo_block_q8_0 *xb, int n, void *out);

/* The product of one weight row with one quantized activation row, n
 * elements (a multiple of 32), computed from the blocks directly by the
 * definition above: the reference the matrix kernels are tested against. */
float velo_dot_q8_0_q8_0_ref(const velo_block_q8_0 *w, const velo_block_q8_0 *x, int64_t n);
float velo_dot_q4_0_q8_0_ref(const velo_block_q4_0 *w, const velo_block_q8_0 *x, int64_t n);

/* Step 5 of the definition: the fixed reduction of 16 lanes. */
static inline float velo_lanes_sum16(const float a[16]) {
  float t[8], u[4];
  for (int i = 0; i < 8; i++) t[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; i++) u[i] = t[i] + t[i + 4];
  return (u[0] + u[2]) + (u[1] + u[3]);
}

#ifdef __cplusplus
}
#endif
#endif /* VELO_CPU_KERNELS_H */
