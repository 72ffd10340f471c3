/*
 * test_cpu_quant.c - unit tests of the CPU backend's quantization blocks
 * and vector primitives (backends/cpu/vec.c, vec_avx2.c, vec_avx512.c):
 *  - Q8_0 and Q4_0 dequantization of hand-built blocks;
 *  - activation quantization to Q8_0, including exact .5 ties (round half to
 *    even) and all-zero blocks;
 *  - block dot products and float dot products against double-precision
 *    references, with stated tolerances;
 *  - the integer-block matrix kernel (Q8_0 and Q4_0 weights): prepared
 *    columns and every output bit-identical to the defining dot product
 *    (cpu_kernels.h) for K = 32..5632 (odd block counts included) and
 *    M = 1..130 columns, so batch size and tiling never change an output;
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

enum { MAX_VARIANTS = VELO_CPU_ISA_LAST + 1 };

/* The ISA variants present on this machine (scalar first). */
static int variants(const velo_cpu_vec *out[MAX_VARIANTS]) {
  int n = 0;
  for (int isa = VELO_CPU_ISA_SCALAR; isa <= VELO_CPU_ISA_LAST; isa++) {
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
  CHECK(!velo_dequantize_row(VELO_DTYPE_IQ4_NL, &q4, y, 32), "IQ4_NL is refused");
  CHECK(!velo_dequantize_row(VELO_DTYPE_Q8_0, q8, y, 33), "a partial block is refused");
}

/* Activation quantization: .5 ties round to even, d = fp16(amax/127). */
static void test_quantize_ties(void) {
  const velo_cpu_vec *vs[MAX_VARIANTS];
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
  const velo_cpu_vec *vs[MAX_VARIANTS];
  int nv = variants(vs);
  for (int k = 0; k < nv; k++) {
    memset(got, 0x55, sizeof got);
    vs[k]->quantize_row_q8_0(x, got, N);
    CHECK(memcmp(got, ref, sizeof ref) == 0, "%s quantizer differs from portable C", vs[k]->name);
  }
}

/* Double reference of a block dot: sum over blocks of d_w * d_x * sumi,
 * with *mag the sum of the magnitudes of the terms the definition adds:
 * d_w * d_x * S[b][k] for the four 8-element partial sums of each block. */
static double ref_block_dot(const float *dw, const int *qw, const velo_block_q8_0 *x, int nb,
                            double *mag) {
  double s = 0.0;
  *mag = 0.0;
  for (int b = 0; b < nb; b++) {
    const double scale = (double)dw[b] * (double)velo_fp16_to_fp32(x[b].d);
    for (int k = 0; k < 4; k++) {
      long long part = 0;
      for (int i = 0; i < 4; i++)
        part += (long long)qw[b * 32 + 4 * k + i] * x[b].qs[4 * k + i] +
                (long long)qw[b * 32 + 16 + 4 * k + i] * x[b].qs[16 + 4 * k + i];
      s += scale * (double)part;
      *mag += fabs(scale * (double)part);
    }
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
    /* Tolerance: the partial sums are exact integers; each block's scale
     * d_w*d_x is rounded once, each lane chains NB/4 fused multiply-adds
     * (one rounding each) and the 16 lanes are summed in 4 levels:
     * |error| <= (1 + NB/4 + 4) * 2^-24 * sum|terms| (to first order;
     * +1 for the higher-order terms). */
    double tol8 = (NB / 4 + 6) * 0x1p-24 * mag8, tol4 = (NB / 4 + 6) * 0x1p-24 * mag4;
    CHECK(fabs(g8 - r8) <= tol8, "Q8_0 dot %.9g vs %.9g (tol %.3g)", (double)g8, r8, tol8);
    CHECK(fabs(g4 - r4) <= tol4, "Q4_0 dot %.9g vs %.9g (tol %.3g)", (double)g4, r4, tol4);
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

/* Random weight rows of dtype wt (Q8_0 quants over all of -128..127, Q4_0
 * all nibbles), scales of varying size and sign, never all zero. */
static void fill_qweights(velo_dtype wt, void *w, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; b++) {
    uint16_t d = velo_fp32_to_fp16(rndf() * 0.05f * (float)(1 + b % 5));
    if (wt == VELO_DTYPE_Q8_0) {
      velo_block_q8_0 *blk = (velo_block_q8_0 *)w + b;
      blk->d = d;
      for (int j = 0; j < 32; j++) blk->qs[j] = (int8_t)(check_rnd() >> 56);
    } else {
      velo_block_q4_0 *blk = (velo_block_q4_0 *)w + b;
      blk->d = d;
      for (int j = 0; j < 16; j++) blk->qs[j] = (uint8_t)(check_rnd() >> 56);
    }
  }
}

/* The defining dot product of weight row r with activation blocks xq. */
static float def_dot(velo_dtype wt, const void *w, int64_t r, const velo_block_q8_0 *xq,
                     int64_t K) {
  if (wt == VELO_DTYPE_Q8_0)
    return velo_dot_q8_0_q8_0_ref((const velo_block_q8_0 *)w + r * (K / 32), xq, K);
  return velo_dot_q4_0_q8_0_ref((const velo_block_q4_0 *)w + r * (K / 32), xq, K);
}

/* The matrix kernel of every variant against the definition: for each K
 * (odd block counts included), NR weight rows (not a multiple of the row
 * tile) and the first M columns of a batch for M = 1..130, every output
 * bit-identical to def_dot of its own row and column (so it does not depend
 * on M, the tile it falls in, or the variant), and every variant's prepared
 * columns byte-identical to the reference layout of the reference
 * quantizer's blocks.  Also a strided column layout and a row offset. */
static void test_mul_mat_q(void) {
  static const int64_t Ks[] = {32, 64, 96, 160, 224, 1024, 1184, 2048, 2080, 5632};
  static const int64_t Ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 37, 64, 100, 130};
  enum { NR = 11, MMAX = 130 };
  const velo_cpu_vec *vs[MAX_VARIANTS];
  int nv = variants(vs);
  for (int t = 0; t < 2; t++) {
    const velo_dtype wt = t == 0 ? VELO_DTYPE_Q8_0 : VELO_DTYPE_Q4_0;
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
      const int64_t K = Ks[ki], nb = K / 32;
      const size_t cb = velo_qcol_bytes(K), wrow = velo_dtype_row_bytes(wt, K);
      const int64_t g = VELO_QCOL_GROUP;
      void *w = malloc(wrow * NR);
      float *x = malloc(sizeof(float) * (size_t)(K * MMAX));
      velo_block_q8_0 *xq = malloc(sizeof(velo_block_q8_0) * (size_t)(nb * MMAX));
      char *ref_cols = aligned_alloc(64, cb * MMAX), *cols = aligned_alloc(64, cb * MMAX);
      float *want = malloc(sizeof(float) * NR * MMAX), *got = malloc(sizeof(float) * NR * MMAX);
      float *dst[MMAX];
      fill_qweights(wt, w, nb * NR);
      for (int64_t i = 0; i < K * MMAX; i++) x[i] = rndf() * (float)(1 + (i / 32) % 7);
      for (int64_t m = 0; m < MMAX; m++) {
        velo_quantize_row_q8_0_ref(x + m * K, xq + m * nb, K);
        for (int64_t b = 0; b < nb; b += g)
          velo_qcol_record_ref(wt, xq + m * nb + b, (int)(nb - b < g ? nb - b : g),
                               ref_cols + m * cb + (size_t)(b / g) * VELO_QCOL_RECORD_BYTES);
        for (int r = 0; r < NR; r++) want[m * NR + r] = def_dot(wt, w, r, xq + m * nb, K);
        dst[m] = got + m * NR;
      }
      for (int k = 0; k < nv; k++) {
        const velo_cpu_vec *v = vs[k];
        int bad_prep = 0;
        for (int64_t m = 0; m < MMAX; m++) {
          memset(cols + m * cb, 0x5a, cb);
          v->qcol_prepare(wt, x + m * K, K, cols + m * cb);
          bad_prep += memcmp(cols + m * cb, ref_cols + m * cb, cb) != 0;
        }
        CHECK(bad_prep == 0, "%s %s K=%lld: %d prepared columns differ from the reference",
              v->name, velo_dtype_name(wt), (long long)K, bad_prep);
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
          const int64_t M = Ms[mi];
          for (int i = 0; i < NR * MMAX; i++) got[i] = -12345.0f;
          v->mul_mat_q(wt, w, wrow, NR, ref_cols, cb, M, K, dst, 0);
          int bad = 0, touched = 0;
          for (int64_t m = 0; m < MMAX; m++)
            for (int r = 0; r < NR; r++) {
              if (m < M)
                bad += !same_bits(got[m * NR + r], want[m * NR + r]);
              else
                touched += got[m * NR + r] != -12345.0f;
            }
          CHECK(bad == 0 && touched == 0,
                "%s %s K=%lld M=%lld: %d outputs differ from the definition, %d written "
                "outside",
                v->name, velo_dtype_name(wt), (long long)K, (long long)M, bad, touched);
        }
        /* rows 3..10 only, into dst offset 3, columns 5..12 through a
         * stride of two columns (every other prepared column) */
        for (int i = 0; i < NR * MMAX; i++) got[i] = -12345.0f;
        v->mul_mat_q(wt, (const char *)w + 3 * wrow, wrow, NR - 3, ref_cols + 5 * cb, 2 * cb, 8,
                     K, dst, 3);
        int bad = 0;
        for (int c = 0; c < 8; c++)
          for (int r = 0; r < NR; r++)
            bad += r < 3 ? got[c * NR + r] != -12345.0f
                         : !same_bits(got[c * NR + r], want[(5 + 2 * c) * NR + r]);
        CHECK(bad == 0, "%s %s K=%lld: strided columns and row offset: %d wrong", v->name,
              velo_dtype_name(wt), (long long)K, bad);
      }
      free(w);
      free(x);
      free(xq);
      free(ref_cols);
      free(cols);
      free(want);
      free(got);
    }
  }
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
  const velo_cpu_vec *vs[MAX_VARIANTS];
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
  test_mul_mat_q();
  test_float_dots();
  return check_summary("cpu");
}
