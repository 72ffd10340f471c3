/*
 * test_cpu_quant.c - unit tests of the CPU backend's quantization blocks
 * and vector primitives (backends/cpu/vec.c, vec_avx2.c):
 *  - Q8_0 and Q4_0 dequantization of hand-built blocks;
 *  - activation quantization to Q8_0, including exact .5 ties (round half to
 *    even) and all-zero blocks;
 *  - block dot products and float dot products against double-precision
 *    references;
 *  - every ISA variant gives the same bits as the portable C one.
 *
 * Prints "cpu: N checks passed"; exits non-zero on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"

#include "check.h"


/* Uniform in [-1, 1], never closer to zero than 1e-3. */
static float rndf(void) {
  float x = (float)((double)(check_rnd() >> 11) * 0x1p-53 * 2.0 - 1.0);
  if (fabsf(x) < 1e-3f) x = x < 0 ? -1e-3f : 1e-3f;
  return x;
}

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* The ISA variants present on this machine (scalar first). */
static int variants(const velo_cpu_vec *out[2]) {
  int n = 0;
  for (int isa = VELO_CPU_ISA_SCALAR; isa <= VELO_CPU_ISA_AVX2; isa++) {
    const velo_cpu_vec *v = velo_cpu_vec_for((velo_cpu_isa)isa);
    if (v) out[n++] = v;
  }
  return n;
}

/* Hand-built blocks dequantize to d * q exactly. */
static void test_dequantize(void) {
  velo_block_q8_0 q8[2];
  q8[0].d = 0x3800; /* 0.5 */
  q8[1].d = 0xc400; /* -4 */
  for (int j = 0; j < 32; j++) {
    q8[0].qs[j] = (int8_t)(j - 16);
    q8[1].qs[j] = (int8_t)(j == 0 ? -128 : 127 - j);
  }
  float y[64];
  velo_dequantize_row_q8_0(q8, y, 64);
  int bad = 0;
  for (int j = 0; j < 32; j++) {
    bad += y[j] != 0.5f * (float)(j - 16);
    bad += y[32 + j] != -4.0f * (float)(j == 0 ? -128 : 127 - j);
  }
  CHECK(bad == 0, "Q8_0 dequantization: %d wrong values", bad);

  velo_block_q4_0 q4;
  q4.d = 0x4000; /* 2 */
  for (int j = 0; j < 16; j++) q4.qs[j] = (uint8_t)(j | ((15 - j) << 4));
  velo_dequantize_row_q4_0(&q4, y, 32);
  bad = 0;
  for (int j = 0; j < 16; j++) {
    bad += y[j] != 2.0f * (float)(j - 8);             /* low nibble */
    bad += y[j + 16] != 2.0f * (float)((15 - j) - 8); /* high nibble */
  }
  CHECK(bad == 0, "Q4_0 dequantization: %d wrong values", bad);
  CHECK(y[0] == -16.0f && y[15] == 14.0f && y[16] == 14.0f && y[31] == -16.0f,
        "Q4_0 ends: %g %g %g %g", y[0], y[15], y[16], y[31]);

  /* subnormal fp16 scale */
  q4.d = 0x0001; /* 2^-24 */
  velo_dequantize_row_q4_0(&q4, y, 32);
  CHECK(y[0] == -8.0f * 0x1p-24f, "Q4_0 with a subnormal scale: %a", (double)y[0]);

  /* the dispatcher */
  CHECK(velo_dequantize_row(VELO_DTYPE_Q8_0, q8, y, 64) && y[32] == 512.0f, "dispatch Q8_0");
  uint16_t h[3] = {0x3c00, 0xc000, 0x3800};
  CHECK(velo_dequantize_row(VELO_DTYPE_F16, h, y, 3) && y[0] == 1.0f && y[1] == -2.0f &&
            y[2] == 0.5f,
        "dispatch F16");
  float f[2] = {3.25f, -7.5f};
  CHECK(velo_dequantize_row(VELO_DTYPE_F32, f, y, 2) && y[1] == -7.5f, "dispatch F32");
  CHECK(!velo_dequantize_row(VELO_DTYPE_Q4_1, &q4, y, 32), "Q4_1 is refused");
  CHECK(!velo_dequantize_row(VELO_DTYPE_Q8_0, q8, y, 33), "a partial block is refused");
}

/* Activation quantization: .5 ties round to even, d = fp16(amax/127). */
static void test_quantize_ties(void) {
  const velo_cpu_vec *vs[2];
  int nv = variants(vs);
  for (int k = 0; k < nv; k++) {
    const velo_cpu_vec *v = vs[k];
    /* amax = 127 gives id = 127/127 = 1 exactly, so q = round(x) */
    float x[32];
    static const float ties[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 3.5f};
    static const int8_t want[] = {0, 2, 2, 0, -2, -2, 126, -126, 4};
    for (int j = 0; j < 32; j++) x[j] = 10.25f; /* rounds to 10 */
    for (size_t j = 0; j < sizeof ties / sizeof ties[0]; j++) x[j] = ties[j];
    x[31] = -127.0f;
    velo_block_q8_0 b;
    v->quantize_row_q8_0(x, &b, 32);
    CHECK(b.d == velo_fp32_to_fp16(1.0f), "%s: d = 0x%04x for amax 127", v->name, b.d);
    for (size_t j = 0; j < sizeof ties / sizeof ties[0]; j++)
      CHECK(b.qs[j] == want[j], "%s: %g * 1 -> %d, want %d", v->name, (double)ties[j], b.qs[j],
            want[j]);
    CHECK(b.qs[20] == 10 && b.qs[31] == -127, "%s: %d %d", v->name, b.qs[20], b.qs[31]);

    /* amax = 63.5 gives id = 2 exactly: 0.25 -> 0.5 -> 0, 0.75 -> 1.5 -> 2,
     * 1.25 -> 2.5 -> 2 */
    for (int j = 0; j < 32; j++) x[j] = 0.25f;
    x[1] = 0.75f;
    x[2] = 1.25f;
    x[3] = -1.25f;
    x[4] = 63.5f;
    v->quantize_row_q8_0(x, &b, 32);
    CHECK(b.qs[0] == 0 && b.qs[1] == 2 && b.qs[2] == 2 && b.qs[3] == -2 && b.qs[4] == 127,
          "%s: id 2 ties: %d %d %d %d %d", v->name, b.qs[0], b.qs[1], b.qs[2], b.qs[3], b.qs[4]);
    CHECK(b.d == velo_fp32_to_fp16(63.5f / 127.0f), "%s: d 0x%04x", v->name, b.d);

    /* an all-zero block: d = 0 and every q = 0 (id = 0, no division) */
    memset(x, 0, sizeof x);
    v->quantize_row_q8_0(x, &b, 32);
    int nz = 0;
    for (int j = 0; j < 32; j++) nz += b.qs[j] != 0;
    CHECK(b.d == 0 && nz == 0, "%s: zero block d=0x%04x, %d non-zero quants", v->name, b.d, nz);
  }
}

/* Random rows: q is the spec's rounding of x*id, every variant agrees. */
static void test_quantize_random(void) {
  enum { N = 32 * 97 };
  static float x[N];
  static velo_block_q8_0 ref[N / 32], got[N / 32];
  for (int i = 0; i < N; i++) x[i] = rndf() * (float)(1 + (i / 32) % 7); /* varying amax */
  velo_quantize_row_q8_0_ref(x, ref, N);
  int bad = 0;
  for (int b = 0; b < N / 32; b++) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
    float id = 127.0f / amax;
    if (ref[b].d != velo_fp32_to_fp16(amax / 127.0f)) bad++;
    for (int j = 0; j < 32; j++) {
      /* x*id in float (as specified), rounded half-even by rint in double */
      double want = rint((double)(x[b * 32 + j] * id));
      if (ref[b].qs[j] != (int8_t)want) bad++;
    }
  }
  CHECK(bad == 0, "reference quantizer: %d wrong entries", bad);
  const velo_cpu_vec *vs[2];
  int nv = variants(vs);
  for (int k = 0; k < nv; k++) {
    memset(got, 0x55, sizeof got);
    vs[k]->quantize_row_q8_0(x, got, N);
    CHECK(memcmp(got, ref, sizeof ref) == 0, "%s quantizer differs from portable C", vs[k]->name);
  }
}

/* Double reference of a block dot: sum over blocks of d_w * d_x * sumi,
 * with *mag the sum of the terms' magnitudes. */
static double ref_block_dot(const float *dw, const int *qw, const velo_block_q8_0 *x, int nb,
                            double *mag) {
  double s = 0.0;
  *mag = 0.0;
  for (int b = 0; b < nb; b++) {
    long long sumi = 0;
    for (int j = 0; j < 32; j++) sumi += (long long)qw[b * 32 + j] * x[b].qs[j];
    double t = (double)dw[b] * (double)velo_fp16_to_fp32(x[b].d) * (double)sumi;
    s += t;
    *mag += fabs(t);
  }
  return s;
}

/* Q8_0 x Q8_0 and Q4_0 x Q8_0 dots vs double; every variant bit-identical. */
static void test_block_dots(void) {
  enum { NB = 64, N = NB * 32 };
  static velo_block_q8_0 w8[NB], xq[NB];
  static velo_block_q4_0 w4[NB];
  static float x[N], dw8[NB], dw4[NB];
  static int qw8[N], qw4[N];
  const velo_cpu_vec *vs[2];
  int nv = variants(vs);
  for (int trial = 0; trial < 20; trial++) {
    for (int i = 0; i < N; i++) x[i] = rndf();
    velo_quantize_row_q8_0_ref(x, xq, N);
    for (int b = 0; b < NB; b++) {
      w8[b].d = velo_fp32_to_fp16(rndf() * 0.05f);
      w4[b].d = velo_fp32_to_fp16(rndf() * 0.05f);
      dw8[b] = velo_fp16_to_fp32(w8[b].d);
      dw4[b] = velo_fp16_to_fp32(w4[b].d);
      for (int j = 0; j < 32; j++) {
        /* include -128, which files may hold, to exercise the sign trick */
        int q = (int)(check_rnd() % 256) - 128;
        w8[b].qs[j] = (int8_t)q;
        qw8[b * 32 + j] = q;
      }
      for (int j = 0; j < 16; j++) {
        uint8_t byte = (uint8_t)check_rnd();
        w4[b].qs[j] = byte;
        qw4[b * 32 + j] = (byte & 15) - 8;
        qw4[b * 32 + j + 16] = (byte >> 4) - 8;
      }
    }
    double mag8, mag4;
    double r8 = ref_block_dot(dw8, qw8, xq, NB, &mag8);
    double r4 = ref_block_dot(dw4, qw4, xq, NB, &mag4);
    float g8 = velo_dot_q8_0_q8_0_ref(w8, xq, N), g4 = velo_dot_q4_0_q8_0_ref(w4, xq, N);
    /* Tolerance: each of the 64 terms is exact but for one float rounding
     * of d_w*d_x and one of the product, and the float sum adds one
     * rounding per block: |error| <= ~(NB + 2) * 2^-24 * sum|terms|. */
    double tol8 = (NB + 2) * 0x1p-24 * mag8, tol4 = (NB + 2) * 0x1p-24 * mag4;
    CHECK(fabs(g8 - r8) <= tol8, "Q8_0 dot %.9g vs %.9g (tol %.3g)", (double)g8, r8, tol8);
    CHECK(fabs(g4 - r4) <= tol4, "Q4_0 dot %.9g vs %.9g (tol %.3g)", (double)g4, r4, tol4);
    for (int k = 0; k < nv; k++) {
      for (int nblk = 1; nblk <= NB; nblk += 21) { /* several lengths */
        float a8 = vs[k]->dot_q8_0_q8_0(w8, xq, nblk * 32);
        float a4 = vs[k]->dot_q4_0_q8_0(w4, xq, nblk * 32);
        CHECK(same_bits(a8, velo_dot_q8_0_q8_0_ref(w8, xq, nblk * 32)), "%s Q8_0 dot, %d blocks",
              vs[k]->name, nblk);
        CHECK(same_bits(a4, velo_dot_q4_0_q8_0_ref(w4, xq, nblk * 32)), "%s Q4_0 dot, %d blocks",
              vs[k]->name, nblk);
      }
    }
  }
  /* the product against the unquantized activation is close: the Q8_0
   * activation error is at most d_x/2 per element, i.e. 1/254 of the
   * block's amax; 1/127 of sum |w|*amax bounds the difference */
  double exact = 0.0, bound = 0.0;
  for (int b = 0; b < NB; b++) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
    for (int j = 0; j < 32; j++) {
      exact += (double)dw4[b] * qw4[b * 32 + j] * x[b * 32 + j];
      bound += fabs((double)dw4[b] * qw4[b * 32 + j]) * amax / 127.0;
    }
  }
  float g = velo_dot_q4_0_q8_0_ref(w4, xq, N);
  CHECK(fabs(g - exact) <= bound, "Q4_0 dot %.6g vs float activations %.6g (bound %.3g)",
        (double)g, exact, bound);
}

/* Float dots: vs double within the float accumulation bound; every variant
 * bit-identical for all lengths 0..70 (tails included). */
static void test_float_dots(void) {
  enum { N = 4096 };
  static float x[N], y[N];
  static uint16_t xh[N], yh[N];
  for (int i = 0; i < N; i++) {
    x[i] = rndf();
    y[i] = rndf();
    xh[i] = velo_fp32_to_fp16(x[i]);
    yh[i] = velo_fp32_to_fp16(y[i]);
  }
  double r = 0, rh = 0, rhf = 0, mag = 0;
  for (int i = 0; i < N; i++) {
    r += (double)x[i] * y[i];
    rh += (double)velo_fp16_to_fp32(xh[i]) * velo_fp16_to_fp32(yh[i]);
    rhf += (double)velo_fp16_to_fp32(xh[i]) * y[i];
    mag += fabs((double)x[i] * y[i]);
  }
  /* Tolerance: 8 lanes of N/8 sequential float adds plus a 3-level
   * reduction: |error| <= (N/8 + 4) * 2^-24 * sum|x*y|. */
  double tol = (N / 8 + 4) * 0x1p-24 * mag;
  CHECK(fabs(velo_dot_f32_ref(x, y, N) - r) <= tol, "dot_f32");
  CHECK(fabs(velo_dot_f16_ref(xh, yh, N) - rh) <= tol * 1.01, "dot_f16");
  CHECK(fabs(velo_dot_f16_f32_ref(xh, y, N) - rhf) <= tol * 1.01, "dot_f16_f32");
  const velo_cpu_vec *vs[2];
  int nv = variants(vs);
  for (int k = 0; k < nv; k++) {
    int bad = 0;
    for (int n = 0; n <= 70; n++) {
      bad += !same_bits(vs[k]->dot_f32(x, y, n), velo_dot_f32_ref(x, y, n));
      bad += !same_bits(vs[k]->dot_f16(xh, yh, n), velo_dot_f16_ref(xh, yh, n));
      bad += !same_bits(vs[k]->dot_f16_f32(xh, y, n), velo_dot_f16_f32_ref(xh, y, n));
    }
    bad += !same_bits(vs[k]->dot_f32(x, y, N), velo_dot_f32_ref(x, y, N));
    bad += !same_bits(vs[k]->dot_f16(xh, yh, N), velo_dot_f16_ref(xh, yh, N));
    CHECK(bad == 0, "%s float dots differ from portable C in %d cases", vs[k]->name, bad);
  }
  CHECK(velo_dot_f32_ref(x, y, 0) == 0.0f, "empty dot");
}

int main(void) {
  check_rng_state = 0x243f6a8885a308d3ull;
  const velo_cpu_vec *best = velo_cpu_vec_best();
  printf("cpu: best kernel variant here: %s\n", best->name);
  test_dequantize();
  test_quantize_ties();
  test_quantize_random();
  test_block_dots();
  test_float_dots();
  return check_summary("cpu");
}
