/*
 * vec_avx2.h - the AVX2 + FMA + F16C variant of the CPU vector primitives
 * (internal to velo_cpu_kernels; see cpu_kernels.h for the contracts), and
 * the entries the AVX-512 variant shares with it.
 */
#ifndef VELO_CPU_VEC_AVX2_H
#define VELO_CPU_VEC_AVX2_H

#include "cpu_kernels.h"

/* The AVX2 table, or NULL when this build is not for x86-64 or the CPU (or
 * the OS) lacks AVX2, FMA or F16C.  Thread-safe; the table is a static
 * constant. */
const velo_cpu_vec *velo_cpu_vec_avx2(void);

/* True when this CPU and OS run AVX2, FMA and F16C code (CPUID, XGETBV).
 * Thread-safe. */
bool velo_cpu_has_avx2_fma_f16c(void);

/* The AVX2 entries, for the AVX-512 table.  Call them only when
 * velo_cpu_has_avx2_fma_f16c() is true; contracts as the table members of
 * the same names in cpu_kernels.h. */
float velo_dot_f32_avx2(const float *x, const float *y, int64_t n);
float velo_dot_f16_avx2(const uint16_t *x, const uint16_t *y, int64_t n);
float velo_dot_f16_f32_avx2(const uint16_t *x, const float *y, int64_t n);
void velo_fp32_to_fp16_row_avx2(const float *x, uint16_t *y, int64_t n);
void velo_quantize_row_q8_0_avx2(const float *x, velo_block_q8_0 *y, int64_t n);

#endif /* VELO_CPU_VEC_AVX2_H */
