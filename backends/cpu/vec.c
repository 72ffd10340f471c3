/*
 * vec.c - portable C vector primitives of the CPU backend (the reference
 * implementations every ISA variant must match bit for bit), the Q8_0/Q4_0
 * dequantizers, the integer block dot products and matrix kernel in their
 * defining form, and the run-time choice of ISA table.
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
