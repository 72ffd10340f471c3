/*
 * vec_avx512.h - the AVX-512 (F, BW, VL, VNNI) variant of the CPU vector
 * primitives (internal to velo_cpu_kernels; contracts in cpu_kernels.h).
 */
#ifndef VELO_CPU_VEC_AVX512_H
#define VELO_CPU_VEC_AVX512_H

#include "cpu_kernels.h"

/* The AVX-512 table, or NULL when this build is not for x86-64 or the CPU
 * (or the OS) lacks AVX-512 F/BW/VL/VNNI or the AVX2 variant's AVX2, FMA
 * and F16C.  Thread-safe; the table is a static constant. */
const velo_cpu_vec *velo_cpu_vec_avx512(void);

#endif /* VELO_CPU_VEC_AVX512_H */
