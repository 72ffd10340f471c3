/*
 * kq_avx2.c - AVX2 matrix kernels for the K-quants (Q4_K, Q5_K, Q6_K) on Q8_K columns
 * (contract: act_simd.h and mul_mat_act in cpu_kernels.h).  Not written
 * yet: every format falls back on the portable product.
 */
#include "act_simd.h"

/* See act_simd.h. */
bool velo_mul_mat_kq_avx2(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}
