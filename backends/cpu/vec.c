/*
 * vec.c - portable C vector primitives of the CPU backend (the reference
 * implementations every ISA variant must match bit for bit), the Q8_0/Q4_0
 * dequantizers, and the run-time choice of ISA table.
 *
 * Arithmetic contracts are stated in cpu_kernels.h; the code below keeps
 * every float operation in the stated order (the build uses ISO C mode, so
 * the compiler does not contract a*b+c into an FMA).
 */
#include <math.h>

#include "cpu_kernels.h"
#include "vec_avx2.h"

/* ------------------------------------------------------------------ */
/* Dequantization                                                       */
/* ------------------------------------------------------------------ */

/* See cpu_kernels.h. */
void velo_dequantize_row_q8_0(const velo_block_q8_0 *x, float *y, int64_t n) {
  int64_t nb = n / VELO_QK8_0;
  for (int64_t b = 0; b < nb; b++) {
    float d = velo_fp16_to_fp32(x[b].d);
    for (int j = 0; j < VELO_QK8_0; j++) y[b * VELO_QK8_0 + j] = d * (float)x[b].qs[j];
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q4_0(const velo_block_q4_0 *x, float *y, int64_t n) {
  int64_t nb = n / VELO_QK4_0;
  for (int64_t b = 0; b < nb; b++) {
    float d = velo_fp16_to_fp32(x[b].d);
    float *out = y + b * VELO_QK4_0;
    for (int j = 0; j < VELO_QK4_0 / 2; j++) {
      out[j] = d * (float)((x[b].qs[j] & 0x0f) - 8);
      out[j + VELO_QK4_0 / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
    }
  }
}

/* See cpu_kernels.h. */
bool velo_dequantize_row(velo_dtype dtype, const void *x, float *y, int64_t n) {
  if (n < 0) return false;
  switch (dtype) {
    case VELO_DTYPE_F32:
      memcpy(y, x, (size_t)n * sizeof(float));
      return true;
    case VELO_DTYPE_F16:
      velo_fp16_to_fp32_row(x, y, n);
      return true;
    case VELO_DTYPE_Q8_0:
      if (n % VELO_QK8_0) return false;
      velo_dequantize_row_q8_0(x, y, n);
      return true;
    case VELO_DTYPE_Q4_0:
      if (n % VELO_QK4_0) return false;
      velo_dequantize_row_q4_0(x, y, n);
      return true;
    default:
      return false;
  }
}

/* ------------------------------------------------------------------ */
/* Float dot products: 8 lanes, element k in lane k % 8                 */
/* ------------------------------------------------------------------ */

/* See cpu_kernels.h. */
float velo_dot_f32_ref(const float *x, const float *y, int64_t n) {
  float l[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) l[j] += x[i + j] * y[i + j];
  for (int j = 0; i + j < n; j++) l[j] += x[i + j] * y[i + j];
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h. */
float velo_dot_f16_ref(const uint16_t *x, const uint16_t *y, int64_t n) {
  float l[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * velo_fp16_to_fp32(y[i + j]);
  for (int j = 0; i + j < n; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * velo_fp16_to_fp32(y[i + j]);
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h. */
float velo_dot_f16_f32_ref(const uint16_t *x, const float *y, int64_t n) {
  float l[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * y[i + j];
  for (int j = 0; i + j < n; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * y[i + j];
  return velo_lanes_sum8(l);
}

/* ------------------------------------------------------------------ */
/* Activation quantization and integer dot products                     */
/* ------------------------------------------------------------------ */

/* Converts a rounded quant to int8.  Finite activations always give a value
 * in [-127, 127] already (x*id <= 127 up to one rounding); the guards only
 * keep NaN and infinite inputs defined: NaN -> 0, clamp to +-127.  The AVX2
 * path applies the same rule. */
static int8_t q8_from_rounded(float r) {
  if (r != r) return 0;
  if (r > 127.0f) return 127;
  if (r < -127.0f) return -127;
  return (int8_t)r;
}

/* See cpu_kernels.h. */
void velo_quantize_row_q8_0_ref(const float *x, velo_block_q8_0 *y, int64_t n) {
  int64_t nb = n / VELO_QK8_0;
  for (int64_t b = 0; b < nb; b++) {
    const float *xb = x + b * VELO_QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < VELO_QK8_0; j++) {
      float a = fabsf(xb[j]);
      amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    y[b].d = velo_fp32_to_fp16(d);
    for (int j = 0; j < VELO_QK8_0; j++) y[b].qs[j] = q8_from_rounded(nearbyintf(xb[j] * id));
  }
}

/* See cpu_kernels.h. */
float velo_dot_q8_0_q8_0_ref(const velo_block_q8_0 *w, const velo_block_q8_0 *x, int64_t n) {
  int64_t nb = n / VELO_QK8_0;
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    int32_t sumi = 0;
    for (int j = 0; j < VELO_QK8_0; j++) sumi += (int32_t)w[b].qs[j] * (int32_t)x[b].qs[j];
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)sumi;
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q4_0_q8_0_ref(const velo_block_q4_0 *w, const velo_block_q8_0 *x, int64_t n) {
  int64_t nb = n / VELO_QK4_0;
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    int32_t sumi = 0;
    for (int j = 0; j < VELO_QK4_0 / 2; j++) {
      sumi += ((w[b].qs[j] & 0x0f) - 8) * (int32_t)x[b].qs[j];
      sumi += ((w[b].qs[j] >> 4) - 8) * (int32_t)x[b].qs[j + VELO_QK4_0 / 2];
    }
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)sumi;
  }
  return acc;
}

/* ------------------------------------------------------------------ */
/* Tables and selection                                                 */
/* ------------------------------------------------------------------ */

static const velo_cpu_vec scalar_vec = {
    .isa = VELO_CPU_ISA_SCALAR,
    .name = "portable C",
    .dot_f32 = velo_dot_f32_ref,
    .dot_f16 = velo_dot_f16_ref,
    .dot_f16_f32 = velo_dot_f16_f32_ref,
    .fp32_to_fp16_row = velo_fp32_to_fp16_row,
    .quantize_row_q8_0 = velo_quantize_row_q8_0_ref,
    .dot_q8_0_q8_0 = velo_dot_q8_0_q8_0_ref,
    .dot_q4_0_q8_0 = velo_dot_q4_0_q8_0_ref,
};

/* See cpu_kernels.h. */
const velo_cpu_vec *velo_cpu_vec_for(velo_cpu_isa isa) {
  switch (isa) {
    case VELO_CPU_ISA_SCALAR:
      return &scalar_vec;
    case VELO_CPU_ISA_AVX2:
      return velo_cpu_vec_avx2();
  }
  return NULL;
}

/* See cpu_kernels.h. */
const velo_cpu_vec *velo_cpu_vec_best(void) {
  const velo_cpu_vec *v = velo_cpu_vec_avx2();
  return v ? v : &scalar_vec;
}
