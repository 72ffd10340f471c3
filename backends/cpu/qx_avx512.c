/*
 * qx_avx512.c - AVX512 matrix kernels for Q4_1, Q5_1 (Q8_1 columns), Q5_0 (Q8_0), BF16 (bf16) and Q8_K (Q8_K)
 * (contract: act_simd.h and mul_mat_act in cpu_kernels.h).  Not written
 * yet: every format falls back on the portable product.
 */
#include "act_simd.h"

/* See act_simd.h. */
bool velo_mul_mat_qx_avx512(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}
