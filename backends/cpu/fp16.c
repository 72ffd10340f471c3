/*
 * fp16.c - portable IEEE binary16 conversion for the CPU backend.
 *
 * The float -> half direction rounds to nearest with ties to even, by
 * integer arithmetic on the bit patterns, so it gives the same results as
 * the F16C instruction vcvtps2ph on every machine (see cpu_kernels.h).
 */
#include <string.h>

#include "cpu_kernels.h"

/* Shifts the non-negative integer v right by s (1..31) bits, rounding the
 * discarded bits to nearest with ties to even. */
static uint32_t shift_round_even(uint32_t v, unsigned s) {
  uint32_t q = v >> s;
  uint32_t rem = v & ((1u << s) - 1u);
  uint32_t half = 1u << (s - 1);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return q;
}

/* See cpu_kernels.h. */
uint16_t velo_fp32_to_fp16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;

  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return sign | 0x7c00u; /* infinity */
    /* NaN: quiet it and keep the top payload bits, as F16C does */
    return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax < 0x38800000u) {
    /* |f| < 2^-14: a half subnormal (or zero).  The result counts units of
     * 2^-24: mant * 2^(E - 150) / 2^-24 = mant >> (126 - E). */
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below 2^-25: rounds to zero */
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    return (uint16_t)(sign | shift_round_even(mant, 126u - e));
  }
  /* Normal half range: rebias the exponent (127 -> 15), drop 13 mantissa
   * bits with rounding; a carry into the exponent is the right answer, and
   * anything reaching 0x7c00 is infinity. */
  uint32_t h = shift_round_even(ax - 0x38000000u, 13);
  if (h >= 0x7c00u) h = 0x7c00u;
  return (uint16_t)(sign | h);
}

/* See cpu_kernels.h. */
void velo_fp16_to_fp32_row(const uint16_t *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = velo_fp16_to_fp32(x[i]);
}

/* See cpu_kernels.h. */
void velo_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = velo_fp32_to_fp16(x[i]);
}
