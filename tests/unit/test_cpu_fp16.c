/*
 * test_cpu_fp16.c - unit tests of the CPU backend's IEEE binary16
 * conversion (backends/cpu/fp16.c, cpu_kernels.h): every half converts to
 * the exact float and back; float -> half rounds to nearest with ties to
 * even, including subnormals, overflow to infinity and NaN; the AVX2/F16C
 * row conversion gives the same bits as the portable one.
 *
 * Prints "cpu: N checks passed"; exits non-zero on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cpu_kernels.h"

#include "check.h"


static float bits_to_float(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

static uint32_t float_to_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

/* The value of a half, computed independently in double. */
static double half_value(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

static bool is_half_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

/* Every half pattern: exact value, and round trip through float. */
static void test_all_halves(void) {
  int bad_value = 0, bad_trip = 0, bad_nan = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = velo_fp16_to_fp32((uint16_t)h);
    uint16_t back = velo_fp32_to_fp16(f);
    if (is_half_nan((uint16_t)h)) {
      /* NaN stays NaN, keeps its sign, comes back quiet with its payload */
      if (!isnan(f) || (signbit(f) != 0) != ((h & 0x8000) != 0)) bad_nan++;
      if (back != (uint16_t)(h | 0x0200)) bad_nan++;
      continue;
    }
    if ((h & 0x7fff) == 0x7c00) {
      if (!isinf(f) || (f < 0) != ((h & 0x8000) != 0)) bad_value++;
    } else if ((double)f != half_value((uint16_t)h) || (signbit(f) != 0) != ((h & 0x8000) != 0)) {
      bad_value++;
    }
    if (back != h) bad_trip++;
  }
  CHECK(bad_value == 0, "%d halves convert to the wrong float", bad_value);
  CHECK(bad_trip == 0, "%d halves do not round-trip", bad_trip);
  CHECK(bad_nan == 0, "%d NaN halves mishandled", bad_nan);
}

/* Hand-picked values: rounding ties go to even, subnormals, overflow. */
static void test_special_values(void) {
  struct {
    float f;
    uint16_t h;
    const char *why;
  } cases[] = {
      {1.0f, 0x3c00, "one"},
      {-2.0f, 0xc000, "minus two"},
      {0.0f, 0x0000, "zero"},
      {-0.0f, 0x8000, "negative zero keeps its sign"},
      {65504.0f, 0x7bff, "largest half"},
      {65519.99f, 0x7bff, "just below the overflow midpoint"},
      {65520.0f, 0x7c00, "overflow midpoint ties to even = infinity"},
      {1e9f, 0x7c00, "overflow"},
      {-1e9f, 0xfc00, "negative overflow"},
      {INFINITY, 0x7c00, "infinity"},
      {-INFINITY, 0xfc00, "negative infinity"},
      /* 1 + 2^-11 is halfway between 1 (mantissa 0, even) and 1 + 2^-10 */
      {1.0f + 0x1p-11f, 0x3c00, "tie rounds down to even"},
      {1.0f + 3 * 0x1p-11f, 0x3c02, "tie rounds up to even"},
      {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01, "just above a tie rounds up"},
      {0x1p-14f, 0x0400, "smallest normal"},
      {0x1p-24f, 0x0001, "smallest subnormal"},
      {0x1p-25f, 0x0000, "half the smallest subnormal ties to zero (even)"},
      {0x1p-25f + 0x1p-40f, 0x0001, "just above half the smallest subnormal"},
      {3 * 0x1p-25f, 0x0002, "1.5 subnormal units ties to 2"},
      {5 * 0x1p-25f, 0x0002, "2.5 subnormal units ties to 2"},
      {0x1p-26f, 0x0000, "far below the smallest subnormal"},
      {1023 * 0x1p-24f, 0x03ff, "largest subnormal"},
      {1023.5f * 0x1p-24f, 0x0400, "largest subnormal + half unit ties up into the normals"},
      {0x1p-149f, 0x0000, "float subnormal"},
      {-0x1p-24f, 0x8001, "negative subnormal"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint16_t h = velo_fp32_to_fp16(cases[i].f);
    CHECK(h == cases[i].h, "%s: %a -> 0x%04x, want 0x%04x", cases[i].why, (double)cases[i].f, h,
          cases[i].h);
  }
  uint16_t qn = velo_fp32_to_fp16(NAN), nn = velo_fp32_to_fp16(-NAN);
  CHECK(is_half_nan(qn) && !(qn & 0x8000), "NaN -> 0x%04x", qn);
  CHECK(is_half_nan(nn) && (nn & 0x8000), "-NaN -> 0x%04x", nn);
  /* a signalling float NaN whose payload lies only in the low bits must not
   * become infinity */
  uint16_t sn = velo_fp32_to_fp16(bits_to_float(0x7f800001u));
  CHECK(is_half_nan(sn), "signalling NaN with low payload -> 0x%04x", sn);
}

/* Random floats across the half range: the result is a nearest half, and on
 * a tie the even one. */
static void test_random_rounding(void) {
  int bad = 0;
  for (int i = 0; i < 200000; i++) {
    /* exponents from far below the subnormals to beyond the overflow */
    uint32_t e = 100 + (uint32_t)(check_rnd() % 45);
    uint32_t bits = (uint32_t)(check_rnd() & 0x807fffffu) | (e << 23);
    float f = bits_to_float(bits);
    uint16_t h = velo_fp32_to_fp16(f);
    double af = fabs((double)f);
    uint16_t mag = h & 0x7fff;
    if ((h & 0x8000) != ((bits >> 16) & 0x8000)) {
      bad++;
      continue;
    }
    if (mag == 0x7c00) {
      /* infinity only at or beyond the midpoint 65520 */
      if (af < 65520.0) bad++;
      continue;
    }
    double v = half_value(mag);
    double up = half_value((uint16_t)(mag + 1));
    double down = mag ? half_value((uint16_t)(mag - 1)) : -1.0;
    double err = fabs(af - v);
    if (err > fabs(af - up) || (mag && err > fabs(af - down))) bad++;
    if ((err == fabs(af - up) || (mag && err == fabs(af - down))) && (mag & 1)) bad++;
  }
  CHECK(bad == 0, "%d random floats not rounded to the nearest (even) half", bad);
}

/* The ISA variants' row conversion agrees bit for bit with the portable one,
 * on random bit patterns (NaN, subnormals, infinities included) and on
 * exact ties. */
static void test_row_variants(void) {
  enum { N = 4099 };
  static float x[N];
  static uint16_t ref[N], got[N], back[N];
  for (int i = 0; i < N; i++) {
    if (i % 3 == 0)
      x[i] = bits_to_float((uint32_t)check_rnd());
    else { /* exact ties: the midpoint of two neighbouring halves */
      uint16_t h = (uint16_t)(check_rnd() % 0x7bff);
      x[i] = (float)((half_value(h) + half_value((uint16_t)(h + 1))) / 2);
    }
  }
  velo_fp32_to_fp16_row(x, ref, N);
  for (int i = 0; i < N; i++) CHECK(ref[i] == velo_fp32_to_fp16(x[i]), "row entry %d", i);
  for (int isa = VELO_CPU_ISA_SCALAR; isa <= VELO_CPU_ISA_LAST; isa++) {
    const velo_cpu_vec *v = velo_cpu_vec_for((velo_cpu_isa)isa);
    if (!v) {
      printf("cpu: ISA variant %d not available here, skipped\n", isa);
      continue;
    }
    memset(got, 0, sizeof got);
    v->fp32_to_fp16_row(x, got, N);
    int diff = 0;
    for (int i = 0; i < N; i++) diff += got[i] != ref[i];
    CHECK(diff == 0, "%s fp32_to_fp16_row differs in %d of %d entries", v->name, diff, N);
  }
  velo_fp16_to_fp32_row(ref, x, N);
  velo_fp32_to_fp16_row(x, back, N);
  int diff = 0;
  for (int i = 0; i < N; i++) diff += back[i] != (is_half_nan(ref[i]) ? (ref[i] | 0x200) : ref[i]);
  CHECK(diff == 0, "row round trip differs in %d entries", diff);
  CHECK(float_to_bits(velo_fp16_to_fp32(0x8000)) == 0x80000000u, "-0 half -> -0.0f");
}

int main(void) {
  check_rng_state = 0x9e3779b97f4a7c15ull;
  test_all_halves();
  test_special_values();
  test_random_rounding();
  test_row_variants();
  return check_summary("cpu");
}
