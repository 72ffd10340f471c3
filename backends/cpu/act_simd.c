/*
 * act_simd.c - the mul_mat_act entries of the AVX2 and AVX-512 tables:
 * each asks the format families' kernels (act_simd.h) in turn and falls
 * back on the portable product for a format none of them handles.  Plain
 * C; the kernels carry their own target attributes.
 */
#include "act_simd.h"

/* See act_simd.h. */
void velo_mul_mat_act_avx2(VELO_ACT_MM_ARGS) {
  if (velo_mul_mat_kq_avx2(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off)) return;
  if (velo_mul_mat_qx_avx2(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off)) return;
  velo_mul_mat_act_ref(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
}

/* See act_simd.h. */
void velo_mul_mat_act_avx512(VELO_ACT_MM_ARGS) {
  if (velo_mul_mat_kq_avx512(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off)) return;
  if (velo_mul_mat_qx_avx512(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off)) return;
  velo_mul_mat_act_ref(wt, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
}
