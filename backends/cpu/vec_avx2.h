/*
 * vec_avx2.h - the AVX2 + F16C variant of the CPU vector primitives
 * (internal to velo_cpu_kernels; see cpu_kernels.h for the contracts).
 */
#ifndef VELO_CPU_VEC_AVX2_H
#define VELO_CPU_VEC_AVX2_H

#include "cpu_kernels.h"

/* The AVX2 table, or NULL when this build is not for x86-64 or the CPU (or
 * the OS) lacks AVX2 or F16C.  Thread-safe; the table is a static constant. */
const velo_cpu_vec *velo_cpu_vec_avx2(void);

#endif /* VELO_CPU_VEC_AVX2_H */
