/*
 * quant_extra.c - the CPU backend's further weight formats, portable C:
 * Q4_1, Q5_0, Q5_1 (blocks of 32) and BF16, with their activation formats
 * (Q8_1 for Q4_1/Q5_1, Q8_0 for Q5_0, bf16 for BF16, as llama.cpp's
 * vec_dot_type), Q8_K as a weight format (Q8_K activations), and the
 * generic "convert the activation column, then one fixed dot per output"
 * entry points the MUL_MAT op uses for these and the
 * K-quants (cpu_kernels.h, "Converted-activation weight formats").
 *
 * Pure functions, no state; safe from any thread on disjoint outputs.  The
 * build passes -ffp-contract=off, so every float operation below is
 * rounded as written.
 */
#include <math.h>

#include "cpu_kernels.h"

/* See cpu_kernels.h. */
uint16_t velo_fp32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
  return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* Element j (0..31) of a Q5 block as an unsigned 5-bit integer: nibble
 * (low for j < 16, high for j >= 16 of qs[j % 16]) plus bit j of qh as 16. */
static inline int q5_value(const uint8_t *qs, const uint8_t qh[4], int j) {
  uint32_t h;
  memcpy(&h, qh, 4);
  const int nib = j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4;
  return nib | (int)(((h >> j) & 1u) << 4);
}

/* Element j of a Q4_1 block, 0..15. */
static inline int q4_1_value(const velo_block_q4_1 *b, int j) {
  return j < 16 ? b->qs[j] & 0x0f : b->qs[j - 16] >> 4;
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q4_1(const velo_block_q4_1 *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float d = velo_fp16_to_fp32(x[b].d), m = velo_fp16_to_fp32(x[b].m);
    for (int j = 0; j < 32; j++) y[32 * b + j] = (float)q4_1_value(&x[b], j) * d + m;
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q5_0(const velo_block_q5_0 *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float d = velo_fp16_to_fp32(x[b].d);
    for (int j = 0; j < 32; j++) y[32 * b + j] = (float)(q5_value(x[b].qs, x[b].qh, j) - 16) * d;
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q5_1(const velo_block_q5_1 *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float d = velo_fp16_to_fp32(x[b].d), m = velo_fp16_to_fp32(x[b].m);
    for (int j = 0; j < 32; j++) y[32 * b + j] = (float)q5_value(x[b].qs, x[b].qh, j) * d + m;
  }
}

/* See cpu_kernels.h. */
void velo_quantize_row_q8_1_ref(const float *x, velo_block_q8_1 *y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float *xb = x + 32 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
      const float a = fabsf(xb[j]);
      amax = a > amax ? a : amax;
    }
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
      const float r = nearbyintf(xb[j] * id);
      const int8_t q = r != r ? 0 : r > 127.0f ? 127 : r < -127.0f ? -127 : (int8_t)r;
      y[b].qs[j] = q;
      sum += q;
    }
    y[b].d = velo_fp32_to_fp16(d);
    y[b].s = velo_fp32_to_fp16(d * (float)sum);
  }
}

/* See cpu_kernels.h. */
float velo_dot_q4_1_q8_1_ref(const velo_block_q4_1 *w, const velo_block_q8_1 *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / 32; b++) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += q4_1_value(&w[b], j) * (int32_t)x[b].qs[j];
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)s;
    acc += velo_fp16_to_fp32(w[b].m) * velo_fp16_to_fp32(x[b].s);
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q5_1_q8_1_ref(const velo_block_q5_1 *w, const velo_block_q8_1 *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / 32; b++) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += q5_value(w[b].qs, w[b].qh, j) * (int32_t)x[b].qs[j];
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)s;
    acc += velo_fp16_to_fp32(w[b].m) * velo_fp16_to_fp32(x[b].s);
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q5_0_q8_0_ref(const velo_block_q5_0 *w, const velo_block_q8_0 *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / 32; b++) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += (q5_value(w[b].qs, w[b].qh, j) - 16) * (int32_t)x[b].qs[j];
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)s;
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_bf16_ref(const uint16_t *x, const uint16_t *y, int64_t n) {
  float l[8] = {0};
  for (int64_t i = 0; i < n; i++) l[i % 8] += velo_bf16_to_fp32(x[i]) * velo_bf16_to_fp32(y[i]);
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h. */
float velo_dot_q8_K_q8_K_ref(const velo_block_q8_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int32_t s = 0;
    for (int j = 0; j < VELO_QK_K; j++) s += (int32_t)w[b].qs[j] * (int32_t)x[b].qs[j];
    acc += (w[b].d * x[b].d) * (float)s;
  }
  return acc;
}

/* See cpu_kernels.h. */
bool velo_dtype_converts_act(velo_dtype wt) {
  switch (wt) {
    case VELO_DTYPE_Q2_K:
    case VELO_DTYPE_Q3_K:
    case VELO_DTYPE_Q4_K:
    case VELO_DTYPE_Q5_K:
    case VELO_DTYPE_Q6_K:
    case VELO_DTYPE_Q4_1:
    case VELO_DTYPE_Q5_0:
    case VELO_DTYPE_Q5_1:
    case VELO_DTYPE_BF16:
    case VELO_DTYPE_Q8_K:
      return true;
    default:
      return false;
  }
}

/* The activation format of a converted-activation weight dtype. */
static velo_dtype act_dtype(velo_dtype wt) {
  switch (wt) {
    case VELO_DTYPE_Q4_1:
    case VELO_DTYPE_Q5_1:
      return VELO_DTYPE_Q8_1;
    case VELO_DTYPE_Q5_0:
      return VELO_DTYPE_Q8_0;
    case VELO_DTYPE_BF16:
      return VELO_DTYPE_BF16;
    default:
      return VELO_DTYPE_Q8_K;
  }
}

/* See cpu_kernels.h. */
size_t velo_act_bytes(velo_dtype wt, int64_t K) {
  return velo_dtype_row_bytes(act_dtype(wt), K);
}

/* See cpu_kernels.h. */
void velo_act_convert(velo_dtype wt, const float *x, void *out, int64_t K) {
  switch (act_dtype(wt)) {
    case VELO_DTYPE_Q8_1:
      velo_quantize_row_q8_1_ref(x, out, K);
      break;
    case VELO_DTYPE_Q8_0:
      velo_quantize_row_q8_0_ref(x, out, K);
      break;
    case VELO_DTYPE_BF16:
      for (int64_t i = 0; i < K; i++) ((uint16_t *)out)[i] = velo_fp32_to_bf16(x[i]);
      break;
    default:
      velo_quantize_row_q8_K_ref(x, out, K);
      break;
  }
}

/* See cpu_kernels.h. */
float velo_act_dot(velo_dtype wt, const void *w, const void *act, int64_t K) {
  switch (wt) {
    case VELO_DTYPE_Q4_1:
      return velo_dot_q4_1_q8_1_ref(w, act, K);
    case VELO_DTYPE_Q5_1:
      return velo_dot_q5_1_q8_1_ref(w, act, K);
    case VELO_DTYPE_Q5_0:
      return velo_dot_q5_0_q8_0_ref(w, act, K);
    case VELO_DTYPE_BF16:
      return velo_dot_bf16_ref(w, act, K);
    case VELO_DTYPE_Q8_K:
      return velo_dot_q8_K_q8_K_ref(w, act, K);
    default:
      return velo_dot_k_q8_K(wt, w, act, K);
  }
}

/* See cpu_kernels.h. */
void velo_mul_mat_act_ref(velo_dtype wt, const void *w, size_t w_stride, int64_t nr,
                          const void *cols, size_t col_stride, int64_t nc, int64_t K,
                          float *const *dst, int64_t off) {
  for (int64_t r = 0; r < nr; r++)
    for (int64_t c = 0; c < nc; c++)
      dst[c][off + r] = velo_act_dot(wt, (const char *)w + (size_t)r * w_stride,
                                     (const char *)cols + (size_t)c * col_stride, K);
}
