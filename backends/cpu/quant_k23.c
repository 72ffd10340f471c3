/*
 * quant_k23.c - the Q2_K and Q3_K weight formats of the CPU backend,
 * portable C: their dequantizers and their fixed-order dot products with
 * Q8_K activation rows (the layouts and the arithmetic are stated in
 * cpu_kernels.h, "Q2_K and Q3_K").  MUL_MAT reaches the dots through
 * velo_dot_k_q8_K / velo_act_dot; GET_ROWS reaches the dequantizers
 * through velo_dequantize_row.
 *
 * Element numbering shared by both formats: element i (0..255) of a
 * super-block lies in half h = i / 128, column j = (i % 128) / 32 and lane
 * l = i % 32; its two low bits are bits 2j..2j+1 of qs[32h + l], and it
 * belongs to sub-block s = i / 16 (16 sub-blocks of 16 elements).  Q3_K's
 * third bit is bit i / 32 of hmask[l].
 *
 * Pure functions, no state; safe from any thread on disjoint outputs.  The
 * build passes -ffp-contract=off, so every float operation below is
 * rounded as written.
 */
#include "cpu_kernels.h"

/* The sixteen 6-bit scales of a Q3_K block, with the offset of 32 removed
 * (-32..31), from the 12 packed bytes p: scale s has its low four bits in
 * the low (s < 8) or high (s >= 8) nibble of p[s % 8], and its top two
 * bits in bits 2*(s/4)..2*(s/4)+1 of p[8 + s % 4]. */
static void q3_K_scales(const uint8_t p[12], int sc[16]) {
  for (int s = 0; s < 16; s++) {
    const int low = s < 8 ? p[s] & 0x0f : p[s - 8] >> 4;
    const int high = (p[8 + s % 4] >> (2 * (s / 4))) & 3;
    sc[s] = (low | (high << 4)) - 32;
  }
}

/* The 256 two-bit quants of a Q2_K block, 0..3, in element order. */
static void q2_K_unpack(const velo_block_q2_K *x, int8_t v[VELO_QK_K]) {
  for (int h = 0; h < 2; h++)
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++)
        v[128 * h + 32 * j + l] = (int8_t)((x->qs[32 * h + l] >> (2 * j)) & 3);
}

/* The 256 quants of a Q3_K block, -4..3, in element order: the two low
 * bits, plus 4 when the hmask bit is set, minus 4. */
static void q3_K_unpack(const velo_block_q3_K *x, int8_t v[VELO_QK_K]) {
  for (int h = 0; h < 2; h++)
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++)
        v[128 * h + 32 * j + l] = (int8_t)((((x->qs[32 * h + l] >> (2 * j)) & 3) |
                                            (((x->hmask[l] >> (4 * h + j)) & 1) << 2)) -
                                           4);
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q2_K(const velo_block_q2_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++, y += VELO_QK_K) {
    const float d = velo_fp16_to_fp32(x[b].d), dmin = velo_fp16_to_fp32(x[b].dmin);
    int8_t v[VELO_QK_K];
    q2_K_unpack(&x[b], v);
    for (int s = 0; s < 16; s++) {
      const float dl = d * (float)(x[b].scales[s] & 0x0f), ml = dmin * (float)(x[b].scales[s] >> 4);
      for (int i = 16 * s; i < 16 * s + 16; i++) y[i] = dl * (float)v[i] - ml;
    }
  }
}

/* See cpu_kernels.h. */
void velo_dequantize_row_q3_K(const velo_block_q3_K *x, float *y, int64_t n) {
  for (int64_t b = 0; b < n / VELO_QK_K; b++, y += VELO_QK_K) {
    const float d = velo_fp16_to_fp32(x[b].d);
    int sc[16];
    int8_t v[VELO_QK_K];
    q3_K_scales(x[b].scales, sc);
    q3_K_unpack(&x[b], v);
    for (int s = 0; s < 16; s++) {
      const float dl = d * (float)sc[s];
      for (int i = 16 * s; i < 16 * s + 16; i++) y[i] = dl * (float)v[i];
    }
  }
}

/* The exact int32 sums sum_{i in sub-block s} v[i]*xq[i], s = 0..15. */
static void sub_sums(const int8_t v[VELO_QK_K], const int8_t xq[VELO_QK_K], int32_t t[16]) {
  for (int s = 0; s < 16; s++) {
    int32_t a = 0;
    for (int i = 16 * s; i < 16 * s + 16; i++) a += v[i] * xq[i];
    t[s] = a;
  }
}

/* See cpu_kernels.h. */
float velo_dot_q2_K_q8_K_ref(const velo_block_q2_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int8_t v[VELO_QK_K];
    int32_t t[16], si = 0, sm = 0;
    q2_K_unpack(&w[b], v);
    sub_sums(v, x[b].qs, t);
    for (int s = 0; s < 16; s++) {
      si += (int32_t)(w[b].scales[s] & 0x0f) * t[s];
      sm += (int32_t)(w[b].scales[s] >> 4) * (int32_t)x[b].bsums[s];
    }
    acc += (velo_fp16_to_fp32(w[b].d) * x[b].d) * (float)si;
    acc -= (velo_fp16_to_fp32(w[b].dmin) * x[b].d) * (float)sm;
  }
  return acc;
}

/* See cpu_kernels.h. */
float velo_dot_q3_K_q8_K_ref(const velo_block_q3_K *w, const velo_block_q8_K *x, int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b < n / VELO_QK_K; b++) {
    int8_t v[VELO_QK_K];
    int sc[16];
    int32_t t[16], si = 0;
    q3_K_scales(w[b].scales, sc);
    q3_K_unpack(&w[b], v);
    sub_sums(v, x[b].qs, t);
    for (int s = 0; s < 16; s++) si += sc[s] * t[s];
    acc += (velo_fp16_to_fp32(w[b].d) * x[b].d) * (float)si;
  }
  return acc;
}
