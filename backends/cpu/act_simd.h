/*
 * act_simd.h - the SIMD matrix kernels of the converted-activation weight
 * formats (internal to velo_cpu_kernels; the contract is mul_mat_act in
 * cpu_kernels.h).  Each family of formats has one file per ISA:
 *   kq_avx2.c, kq_avx512.c: the K-quants (Q4_K, Q5_K, Q6_K) on Q8_K columns;
 *   qx_avx2.c, qx_avx512.c: Q4_1, Q5_1 (Q8_1), Q5_0 (Q8_0), BF16, Q8_K.
 * A family function computes the whole tile and returns true when it has a
 * kernel for wt, and returns false (writing nothing) otherwise; the table
 * entries below then fall back on velo_mul_mat_act_ref.  Call an ISA's
 * functions only when that ISA's table is handed out (CPUID checked).
 * Results are those of velo_act_dot to the bit.
 */
#ifndef VELO_CPU_ACT_SIMD_H
#define VELO_CPU_ACT_SIMD_H

#include "cpu_kernels.h"

/* The argument list of every function here, as mul_mat_act. */
#define VELO_ACT_MM_ARGS                                                                   \
  velo_dtype wt, const void *w, size_t w_stride, int64_t nr, const void *cols,            \
      size_t col_stride, int64_t nc, int64_t K, float *const *dst, int64_t off

bool velo_mul_mat_kq_avx2(VELO_ACT_MM_ARGS);
bool velo_mul_mat_kq_avx512(VELO_ACT_MM_ARGS);
bool velo_mul_mat_qx_avx2(VELO_ACT_MM_ARGS);
bool velo_mul_mat_qx_avx512(VELO_ACT_MM_ARGS);

/* The mul_mat_act entries of the AVX2 and AVX-512 tables: the family
 * kernels, else the portable product. */
void velo_mul_mat_act_avx2(VELO_ACT_MM_ARGS);
void velo_mul_mat_act_avx512(VELO_ACT_MM_ARGS);

#endif /* VELO_CPU_ACT_SIMD_H */
