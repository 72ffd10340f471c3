/*
 * cpu_kernels.h - the CPU backend's numeric kernels: FP16 conversion, the
 * Q8_0 and Q4_0 quantization blocks, and the vector primitives (dot
 * products, activation quantization) that the graph ops are built from.
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
 *    (d = amax/127 as fp16, q = round-half-even(x * 127/amax)), then take an
 *    exact int32 dot per block and accumulate (d_w * d_x) * (float)sumi in
 *    float, block after block.
 *  - Float dot products (F32, F16) accumulate in 8 float lanes (element k
 *    goes to lane k % 8, multiply then add, no FMA) and reduce the lanes in
 *    one fixed order, so every ISA variant gives the same bits.
 *
 * ISA variants: a velo_cpu_vec table holds one implementation of each
 * primitive.  The portable C table is the reference; the AVX2 table (x86-64
 * with AVX2 and F16C, chosen at run time) returns bit-identical results.
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

/* Converts one row of n elements of dtype (F32, F16, Q8_0 or Q4_0) to
 * float.  Returns false (writing nothing) for another dtype or when n is
 * not a multiple of the block size. */
bool velo_dequantize_row(velo_dtype dtype, const void *x, float *y, int64_t n);

/* Reduces 8 float lanes in the fixed order every dot product uses:
 * ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
static inline float velo_lanes_sum8(const float l[8]) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ------------------------------------------------------------------ */
/* Vector primitives, one table per ISA variant                         */
/* ------------------------------------------------------------------ */

typedef enum velo_cpu_isa {
  VELO_CPU_ISA_SCALAR = 0, /* portable C, the reference */
  VELO_CPU_ISA_AVX2 = 1    /* x86-64 AVX2 + F16C */
} velo_cpu_isa;

typedef struct velo_cpu_vec {
  velo_cpu_isa isa;
  const char *name; /* "portable C", "AVX2" */

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

  /* Dot of n weights (n a multiple of 32) with an activation row quantized
   * by quantize_row_q8_0 (its qs must lie in [-127, 127]):
   * acc += (fp32(d_w) * fp32(d_x)) * (float)sumi per block, in block order,
   * sumi the exact int32 dot of the block's quants. */
  float (*dot_q8_0_q8_0)(const velo_block_q8_0 *w, const velo_block_q8_0 *x, int64_t n);
  float (*dot_q4_0_q8_0)(const velo_block_q4_0 *w, const velo_block_q8_0 *x, int64_t n);
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
float velo_dot_q8_0_q8_0_ref(const velo_block_q8_0 *w, const velo_block_q8_0 *x, int64_t n);
float velo_dot_q4_0_q8_0_ref(const velo_block_q4_0 *w, const velo_block_q8_0 *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* VELO_CPU_KERNELS_H */
