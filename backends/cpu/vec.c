/*
 * vec.c - portable C vector primitives of the CPU backend (the reference
 * implementations every ISA variant must match bit for bit), the Q8_0/Q4_0
 * and K-quant (Q4_K, Q5_K, Q6_K, Q8_K) dequantizers and dot products, the
 * integer block dot products and matrix kernel in their defining form, and the run-time choice of ISA table.
 *
 * Arithmetic contracts are stated in cpu_kernels.h; the code below keeps
 * every float operation in the stated order (the build passes
 * -ffp-contract=off, so the compiler never contracts a*b+c into an FMA; the
 * fused multiply-adds the integer dots specify are explicit fmaf calls).
 */
#include <math.h>

#include "cpu_kernels.h"
#include "vec_avx2.h"
#include "vec_avx512.h"

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

/* See cpu_kernels.h.  Per 64 elements: sub-blocks 2c (low nibbles) and
 * 2c+1 (high nibbles). */
void velo_dequantize_row_q4_K(const velo_block_q4_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    const float d = velo_fp16_to_fp32(x[b].d), dmin = velo_fp16_to_fp32(x[b].dmin);
    const uint8_t *q = x[b].qs;
    for (int c = 0; c < 4; c++, q += 32, y += 64) {
      int sc0, m0, sc1, m1;
      velo_k4_scale_min(2 * c, x[b].scales, &sc0, &m0);
      velo_k4_scale_min(2 * c + 1, x[b].scales, &sc1, &m1);
      const float d0 = d * (float)sc0, n0 = dmin * (float)m0;
      const float d1 = d * (float)sc1, n1 = dmin * (float)m1;
      for (int l = 0; l < 32; l++) y[l] = d0 * (float)(q[l] & 0x0f) - n0;
      for (int l = 0; l < 32; l++) y[32 + l] = d1 * (float)(q[l] >> 4) - n1;
    }
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q5_K(const velo_block_q5_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    const float d = velo_fp16_to_fp32(x[b].d), dmin = velo_fp16_to_fp32(x[b].dmin);
    const uint8_t *q = x[b].qs, *qh = x[b].qh;
    for (int c = 0; c < 4; c++, q += 32, y += 64) {
      int sc0, m0, sc1, m1;
      velo_k4_scale_min(2 * c, x[b].scales, &sc0, &m0);
      velo_k4_scale_min(2 * c + 1, x[b].scales, &sc1, &m1);
      const float d0 = d * (float)sc0, n0 = dmin * (float)m0;
      const float d1 = d * (float)sc1, n1 = dmin * (float)m1;
      const uint8_t u0 = (uint8_t)(1u << (2 * c)), u1 = (uint8_t)(2u << (2 * c));
      for (int l = 0; l < 32; l++)
        y[l] = d0 * (float)((q[l] & 0x0f) + (qh[l] & u0 ? 16 : 0)) - n0;
      for (int l = 0; l < 32; l++)
        y[32 + l] = d1 * (float)((q[l] >> 4) + (qh[l] & u1 ? 16 : 0)) - n1;
    }
  }
}

/* Element i (0..255) of a Q6_K block as an integer, -32..31: halves of
 * 128 elements use 64 bytes of ql and 32 of qh; within a half, element
 * 32r + l (r = 0..3, l < 32) takes the low (r even) or high (r odd) nibble
 * of ql[l + 32*(r&1)] and bits 2r..2r+1 of qh[l]. */
static inline int q6_K_value(const velo_block_q6_K *w, int i) {
  const int h = i / 128, r = (i % 128) / 32, l = i % 32;
  const uint8_t lo = w->ql[64 * h + l + 32 * (r & 1)];
  const int q4 = r < 2 ? (lo & 0x0f) : (lo >> 4);
  const int q2 = (w->qh[32 * h + l] >> (2 * r)) & 3;
  return (q4 | (q2 << 4)) - 32;
}

/* See cpu_kernels.h.  Sub-block s is elements 16s..16s+15. */
void velo_dequantize_row_q6_K(const velo_block_q6_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++, y += VELO_QK_K) {
    const float d = velo_fp16_to_fp32(x[b].d);
    for (int i = 0; i < VELO_QK_K; i++)
      y[i] = d * (float)x[b].scales[i / 16] * (float)q6_K_value(&x[b], i);
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q8_K(const velo_block_q8_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++)
    for (int j = 0; j < VELO_QK_K; j++) y[b * VELO_QK_K + j] = x[b].d * (float)x[b].qs[j];
}

/* See cpu_kernels.h. */
void velo_quantize_row_q8_K_ref(const float *x, velo_block_q8_K *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    const float *xb = x + b * VELO_QK_K;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < VELO_QK_K; j++) {
      const float a = fabsf(xb[j]);
      if (a > amax) {
        amax = a;
        max = xb[j];
      }
    }
    memset(&y[b], 0, sizeof y[b]);
    if (amax == 0.0f || !isfinite(amax)) continue;
    const float iscale = -127.0f / max;
    for (int j = 0; j < VELO_QK_K; j++) {
      const float r = nearbyintf(iscale * xb[j]);
      y[b].qs[j] = r != r ? 0 : r > 127.0f ? 127 : r < -128.0f ? -128 : (int8_t)r;
    }
    for (int s = 0; s < VELO_QK_K / 16; s++) {
      int sum = 0;
      for (int j = 0; j < 16; j++) sum += y[b].qs[16 * s + j];
      y[b].bsums[s] = (int16_t)sum;
    }
    y[b].d = 1.0f / iscale;
  }
}

/* Shared body of the Q4_K/Q5_K dots: v[256] the unsigned weight quants of
 * one block, sc/m its scales and mins. */
static float k4_block(float acc, float d, float dmin, const int *v, const int *sc, const int *m,
                      const velo_block_q8_K *x) {
  int32_t si = 0, sm = 0;
  for (int j = 0; j < 8; j++) {
    int32_t s = 0;
    for (int i = 32 * j; i < 32 * j + 32; i++) s += v[i] * (int32_t)x->qs[i];
    si += sc[j] * s;
    sm += m[j] * ((int32_t)x->bsums[2 * j] + (int32_t)x->bsums[2 * j + 1]);
  }
  acc += (d * x->d) * (float)si;
  acc -= (dmin * x->d) * (float)sm;
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q4_K_q8_K_ref(const velo_block_q4_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int v[VELO_QK_K], sc[8], m[8];
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) {
        v[64 * c + l] = w[b].qs[32 * c + l] & 0x0f;
        v[64 * c + 32 + l] = w[b].qs[32 * c + l] >> 4;
      }
    for (int j = 0; j < 8; j++) velo_k4_scale_min(j, w[b].scales, &sc[j], &m[j]);
    acc = k4_block(acc, velo_fp16_to_fp32(w[b].d), velo_fp16_to_fp32(w[b].dmin), v, sc, m, &x[b]);
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q5_K_q8_K_ref(const velo_block_q5_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int v[VELO_QK_K], sc[8], m[8];
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) {
        const uint8_t q = w[b].qs[32 * c + l], h = w[b].qh[l];
        v[64 * c + l] = (q & 0x0f) | (((h >> (2 * c)) & 1) << 4);
        v[64 * c + 32 + l] = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
      }
    for (int j = 0; j < 8; j++) velo_k4_scale_min(j, w[b].scales, &sc[j], &m[j]);
    acc = k4_block(acc, velo_fp16_to_fp32(w[b].d), velo_fp16_to_fp32(w[b].dmin), v, sc, m, &x[b]);
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q6_K_q8_K_ref(const velo_block_q6_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int32_t si = 0;
    for (int s = 0; s < 16; s++) {
      int32_t t = 0;
      for (int i = 16 * s; i < 16 * s + 16; i++) t += q6_K_value(&w[b], i) * (int32_t)x[b].qs[i];
      si += (int32_t)w[b].scales[s] * t;
    }
    acc += (velo_fp16_to_fp32(w[b].d) * x[b].d) * (float)si;
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_k_q8_K(velo_dtype wt, const void *w, const velo_block_q8_K *x, int64_t n) {
  switch (wt) {
    case VELO_DTYPE_Q2_K:
      return velo_dot_q2_K_q8_K_ref(w, x, n);
    case VELO_DTYPE_Q3_K:
      return velo_dot_q3_K_q8_K_ref(w, x, n);
    case VELO_DTYPE_Q4_K:
      return velo_dot_q4_K_q8_K_ref(w, x, n);
    case VELO_DTYPE_Q5_K:
      return velo_dot_q5_K_q8_K_ref(w, x, n);
    default:
      return velo_dot_q6_K_q8_K_ref(w, x, n);
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
    case VELO_DTYPE_BF16:
      for (int64_t i = 0; i < n; i++) y[i] = velo_bf16_to_fp32(((const uint16_t *)x)[i]);
      return true;
    case VELO_DTYPE_Q4_1:
    case VELO_DTYPE_Q5_0:
    case VELO_DTYPE_Q5_1:
      if (n % 32) return false;
      if (dtype == VELO_DTYPE_Q4_1) velo_dequantize_row_q4_1(x, y, n);
      if (dtype == VELO_DTYPE_Q5_0) velo_dequantize_row_q5_0(x, y, n);
      if (dtype == VELO_DTYPE_Q5_1) velo_dequantize_row_q5_1(x, y, n);
      return true;
    case VELO_DTYPE_Q2_K:
    case VELO_DTYPE_Q3_K:
    case VELO_DTYPE_Q4_K:
    case VELO_DTYPE_Q5_K:
    case VELO_DTYPE_Q6_K:
    case VELO_DTYPE_Q8_K:
      if (n % VELO_QK_K) return false;
      if (dtype == VELO_DTYPE_Q2_K) velo_dequantize_row_q2_K(x, y, n);
      if (dtype == VELO_DTYPE_Q3_K) velo_dequantize_row_q3_K(x, y, n);
      if (dtype == VELO_DTYPE_Q4_K) velo_dequantize_row_q4_K(x, y, n);
      if (dtype == VELO_DTYPE_Q5_K) velo_dequantize_row_q5_K(x, y, n);
      if (dtype == VELO_DTYPE_Q6_K) velo_dequantize_row_q6_K(x, y, n);
      if (dtype == VELO_DTYPE_Q8_K) velo_dequantize_row_q8_K(x, y, n);
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

/* Weight element i (0..31) of a Q4_0 block as an integer, -8..7. */
static inline int q4_0_value(const velo_block_q4_0 *w, int i) {
  return i < 16 ? (w->qs[i] & 0x0f) - 8 : (w->qs[i - 16] >> 4) - 8;
}

/* Element i of partial sum k of a block: the k-th run of four in each half
 * (i = 0..7; cpu_kernels.h, step 2). */
static inline int q_elem(int k, int i) { return (i < 4 ? 4 * k : 16 + 4 * k - 4) + i; }

/* See cpu_kernels.h.  Block by block, partial sums k = 0..3. */
float velo_dot_q8_0_q8_0_ref(const velo_block_q8_0 *w, const velo_block_q8_0 *x, int64_t n) {
  float acc[16] = {0};
  int64_t nb = n / VELO_QK8_0;
  for (int64_t b = 0; b < nb; b++) {
    const float scale = velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d);
    for (int k = 0; k < 4; k++) {
      int32_t s = 0;
      for (int i = 0; i < 8; i++) {
        const int e = q_elem(k, i);
        s += (int32_t)w[b].qs[e] * (int32_t)x[b].qs[e];
      }
      const int l = 4 * (int)(b % 4) + k;
      acc[l] = fmaf(scale, (float)s, acc[l]);
    }
  }
  return velo_lanes_sum16(acc);
}

/* See cpu_kernels.h.  Block by block, partial sums k = 0..3. */
float velo_dot_q4_0_q8_0_ref(const velo_block_q4_0 *w, const velo_block_q8_0 *x, int64_t n) {
  float acc[16] = {0};
  int64_t nb = n / VELO_QK4_0;
  for (int64_t b = 0; b < nb; b++) {
    const float scale = velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d);
    for (int k = 0; k < 4; k++) {
      int32_t s = 0;
      for (int i = 0; i < 8; i++) {
        const int e = q_elem(k, i);
        s += q4_0_value(&w[b], e) * (int32_t)x[b].qs[e];
      }
      const int l = 4 * (int)(b % 4) + k;
      acc[l] = fmaf(scale, (float)s, acc[l]);
    }
  }
  return velo_lanes_sum16(acc);
}

/* See cpu_kernels.h.  Lane L of the record takes block h = L/4, run
 * k = L%4: quants 4k..4k+3 in the first vector, 16+4k..16+4k+3 in the
 * second. */
void velo_qcol_record_ref(velo_dtype wt, const velo_block_q8_0 *xb, int n, void *out) {
  const int32_t off = wt == VELO_DTYPE_Q8_0 ? 128 : 8;
  int8_t *q = out;
  int32_t bias[16];
  float dx[16];
  for (int l = 0; l < 16; l++) {
    const int h = l / 4, k = l % 4;
    int32_t sum = 0;
    for (int v = 0; v < 2; v++)
      for (int i = 0; i < 4; i++) {
        int8_t x = h < n ? xb[h].qs[16 * v + 4 * k + i] : 0;
        q[64 * v + 4 * l + i] = x;
        sum += x;
      }
    bias[l] = -off * sum;
    dx[l] = h < n ? velo_fp16_to_fp32(xb[h].d) : 0.0f;
  }
  memcpy((char *)out + 128, bias, sizeof bias);
  memcpy((char *)out + 192, dx, sizeof dx);
}

/* qcol_prepare of the portable table (see cpu_kernels.h). */
static void qcol_prepare_ref(velo_dtype wt, const float *x, int64_t K, void *col) {
  const int64_t nb = K / VELO_QK8_0;
  for (int64_t b = 0; b < nb; b += VELO_QCOL_GROUP) {
    velo_block_q8_0 xb[VELO_QCOL_GROUP];
    const int n = (int)(nb - b < VELO_QCOL_GROUP ? nb - b : VELO_QCOL_GROUP);
    velo_quantize_row_q8_0_ref(x + b * VELO_QK8_0, xb, 32 * n);
    velo_qcol_record_ref(wt, xb, n,
                         (char *)col + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES);
  }
}

/* The product of one weight row with one prepared column, following the
 * definition step by step: block b's partial sum k meets lane
 * L = 4*(b%4) + k of its group's record, bytes 4L..4L+3 of both quant
 * vectors. */
static float qcol_dot_ref(velo_dtype wt, const char *wrow, const char *col, int64_t K) {
  float acc[16] = {0};
  const int64_t nb = K / 32;
  for (int64_t b = 0; b < nb; b++) {
    const char *rec = col + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
    float dw;
    int v[32];
    if (wt == VELO_DTYPE_Q8_0) {
      const velo_block_q8_0 *blk = (const velo_block_q8_0 *)wrow + b;
      dw = velo_fp16_to_fp32(blk->d);
      for (int i = 0; i < 32; i++) v[i] = blk->qs[i];
    } else {
      const velo_block_q4_0 *blk = (const velo_block_q4_0 *)wrow + b;
      dw = velo_fp16_to_fp32(blk->d);
      for (int i = 0; i < 32; i++) v[i] = q4_0_value(blk, i);
    }
    for (int k = 0; k < 4; k++) {
      const int l = 4 * (int)(b % 4) + k;
      float dx;
      memcpy(&dx, rec + 192 + 4 * l, sizeof dx);
      int32_t s = 0;
      for (int i = 0; i < 8; i++)
        s += v[q_elem(k, i)] * (int32_t)(int8_t)rec[64 * (i / 4) + 4 * l + i % 4];
      acc[l] = fmaf(dw * dx, (float)s, acc[l]);
    }
  }
  return velo_lanes_sum16(acc);
}

/* mul_mat_q of the portable table (see cpu_kernels.h). */
static void mul_mat_q_ref(velo_dtype wt, const void *w, size_t w_stride, int64_t nr,
                          const void *cols, size_t col_stride, int64_t nc, int64_t K,
                          float *const *dst, int64_t off) {
  for (int64_t r = 0; r < nr; r++)
    for (int64_t c = 0; c < nc; c++)
      dst[c][off + r] = qcol_dot_ref(wt, (const char *)w + (size_t)r * w_stride,
                                     (const char *)cols + (size_t)c * col_stride, K);
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
    .qcol_prepare = qcol_prepare_ref,
    .mul_mat_q = mul_mat_q_ref,
    .mul_mat_act = velo_mul_mat_act_ref,
};

/* See cpu_kernels.h. */
const velo_cpu_vec *velo_cpu_vec_for(velo_cpu_isa isa) {
  switch (isa) {
    case VELO_CPU_ISA_SCALAR:
      return &scalar_vec;
    case VELO_CPU_ISA_AVX2:
      return velo_cpu_vec_avx2();
    case VELO_CPU_ISA_AVX512:
      return velo_cpu_vec_avx512();
  }
  return NULL;
}

/* See cpu_kernels.h. */
const velo_cpu_vec *velo_cpu_vec_best(void) {
  const velo_cpu_vec *v = velo_cpu_vec_avx512();
  if (!v) v = velo_cpu_vec_avx2();
  return v ? v : &scalar_vec;
}
