/*
 * test_cpu_kquant.c - unit tests of the CPU backend's K-quant formats
 * (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K weights, Q8_K activations) and the further formats
 * (Q4_1, Q5_1 with Q8_1 activations, Q5_0 with Q8_0, BF16 with bf16, Q8_K
 * weights with Q8_K; see test_q8_K_weights for its tolerances):
 * dequantization, activation conversion and the dot products, each
 * against a plain float64 reference written from the GGUF block layouts,
 * on random data (random
 * quant bytes and scales, activations never zero, the largest |x| of a
 * block sometimes negative).
 *
 * Tolerances (2^-24 is float's unit roundoff u):
 *  - dequantization: the float path rounds d*sc (exact in double), its
 *    product with q, and the subtraction of dmin*m: at most 3 roundings of
 *    values bounded by T = |d*sc*q| + |dmin*m|, so |err| <= 4u*T.  Q2_K
 *    and Q3_K: d*sc*q and dmin*m are exact in float (11 + 4 + 2 and
 *    11 + 6 + 3 significant bits), so Q3_K is exact (tolerance 0) and Q2_K
 *    rounds once, in the subtraction: |err| <= u*T.
 *  - Q8_K quantization: q = round(x*iscale) with iscale and d = 1/iscale
 *    float roundings: |x - d*q| <= |d|/2 + 4u*|x|; the element of largest
 *    |x| gets |q| = 127; bsums are exact sums.
 *  - dot against float64 on the same quantized activations: the integer
 *    sums are exact; per block at most 4 roundings ((d*xd), (float)si, the
 *    product, the add) plus one accumulation per block, each relative to a
 *    value bounded by S = sum_i |w_i*xq_i| split into its scale and min
 *    parts, so |err| <= (nb + 4)*u*S' with S' = sum_i (|d*sc*q| +
 *    |dmin*m|)*|xq_i|.  Q2_K, Q4_K and Q5_K add two terms per block (scales,
 *    then mins), 2nb accumulations in all: |err| <= (2nb + 4)*u*S'.
 *  - dot against float64 on the float activations: the above plus the
 *    activation quantization error sum_i |w_i|*|d_x|/2 (+4u|x_i| each);
 *    for Q4_1/Q5_1 also |m|*2^-10*sum|x_q| per block, the error of
 *    llama.cpp's stored fp16 block sum s = fp16(d*sum q) (unrounded d).
 *  - BF16: see test_bf16.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"

#include "check.h"

#define U 0x1p-24

/* A random float in [lo, hi). */
static double rnd_unit(double lo, double hi) {
  return lo + (hi - lo) * (double)(check_rnd() >> 11) * 0x1p-53;
}

static void rnd_bytes(void *p, size_t n) {
  uint8_t *b = p;
  for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(check_rnd() >> 56);
}

/* The 6-bit scale or min field f (0 = scale, 1 = min) of sub-block j of a
 * Q4_K/Q5_K scales array, read bit by bit from the layout: j < 4 in the low
 * 6 bits of byte j (scale) or j+4 (min); j >= 4: low 4 bits from byte j+4
 * (low nibble = scale, high = min), top 2 from bits 6..7 of byte j-4
 * (scale) or byte j (min). */
static int field6(const uint8_t *s, int j, int f) {
  if (j < 4) return s[j + 4 * f] & 63;
  int low = f ? s[j + 4] >> 4 : s[j + 4] & 15;
  int high = (s[f ? j : j - 4] >> 6) & 3;
  return low + 16 * high;
}

/* Float64 element i of a Q4_K (qh NULL) or Q5_K block, and its T bound. */
static double ref_k4(uint16_t dh, uint16_t mh, const uint8_t *scales, const uint8_t *qs,
                     const uint8_t *qh, int i, double *t) {
  const int c = i / 64, hi = (i % 64) / 32, l = i % 32, j = 2 * c + hi;
  int q = hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
  if (qh) q += 16 * ((qh[l] >> j) & 1);
  const double a = (double)velo_fp16_to_fp32(dh) * field6(scales, j, 0) * q;
  const double b = (double)velo_fp16_to_fp32(mh) * field6(scales, j, 1);
  if (t) *t = fabs(a) + fabs(b);
  return a - b;
}

/* Float64 element i of a Q6_K block. */
static double ref_q6(const velo_block_q6_K *w, int i, double *t) {
  const int h = i / 128, r = (i % 128) / 32, l = i % 32;
  const uint8_t byte = w->ql[64 * h + 32 * (r % 2) + l];
  const int low4 = r < 2 ? byte & 15 : byte >> 4;
  const int up2 = (w->qh[32 * h + l] >> (2 * r)) & 3;
  const double v = (double)velo_fp16_to_fp32(w->d) * w->scales[i / 16] * (low4 + 16 * up2 - 32);
  if (t) *t = fabs(v);
  return v;
}

/* The n bits of p from bit k up (bit k is bit k % 8 of byte k / 8), the
 * first one least significant. */
static int bits_at(const uint8_t *p, int k, int n) {
  int v = 0;
  for (int i = 0; i < n; i++) v |= ((p[(k + i) / 8] >> ((k + i) % 8)) & 1) << i;
  return v;
}

/* Float64 element i = 128h + 32j + l of a Q2_K block (84 bytes: scales at
 * byte 0, qs at 16, fp16 d at 80, fp16 dmin at 82), read by bit position:
 * q is the 2 bits at bit 2j of qs byte 32h + l; sub-block i/16's scale is
 * bits 0..3 and its min bits 4..7 of scales byte i/16.  *t = |d*sc*q| +
 * |dmin*m|. */
static double ref_q2(const uint8_t *blk, int i, double *t) {
  const int h = i / 128, j = (i % 128) / 32, l = i % 32;
  uint16_t dh, mh;
  memcpy(&dh, blk + 80, 2);
  memcpy(&mh, blk + 82, 2);
  const int q = bits_at(blk + 16, 8 * (32 * h + l) + 2 * j, 2);
  const int sc = bits_at(blk, 8 * (i / 16), 4), m = bits_at(blk, 8 * (i / 16) + 4, 4);
  const double a = (double)velo_fp16_to_fp32(dh) * sc * q, b = (double)velo_fp16_to_fp32(mh) * m;
  if (t) *t = fabs(a) + fabs(b);
  return a - b;
}

/* Float64 element i of a Q3_K block (110 bytes: hmask at byte 0, qs at
 * 32, scales at 96, fp16 d at 108): the low 2 bits as Q2_K's (from qs),
 * minus 4 unless bit i/32 of hmask byte i%32 is set; the 6-bit scale of
 * sub-block s = i/16 has its low 4 bits at bit 8*(s%8) + 4*(s/8) of the
 * scales bytes and its top 2 at bit 64 + 8*(s%4) + 2*(s/4), and stands
 * for that value minus 32.  *t = |value|. */
static double ref_q3(const uint8_t *blk, int i, double *t) {
  const int h = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
  uint16_t dh;
  memcpy(&dh, blk + 108, 2);
  int q = bits_at(blk + 32, 8 * (32 * h + l) + 2 * j, 2);
  if (!bits_at(blk, 8 * (i % 32) + i / 32, 1)) q -= 4;
  const int sc = bits_at(blk + 96, 8 * (s % 8) + 4 * (s / 8), 4) +
                 16 * bits_at(blk + 96, 64 + 8 * (s % 4) + 2 * (s / 4), 2);
  const double v = (double)velo_fp16_to_fp32(dh) * (sc - 32) * q;
  if (t) *t = fabs(v);
  return v;
}

/* Float64 element i of weight row w of dtype wt (i < n). */
static double ref_w(velo_dtype wt, const void *w, int64_t i, double *t) {
  const int64_t b = i / 256;
  const int e = (int)(i % 256);
  if (wt == VELO_DTYPE_Q4_K) {
    const velo_block_q4_K *x = (const velo_block_q4_K *)w + b;
    return ref_k4(x->d, x->dmin, x->scales, x->qs, NULL, e, t);
  }
  if (wt == VELO_DTYPE_Q5_K) {
    const velo_block_q5_K *x = (const velo_block_q5_K *)w + b;
    return ref_k4(x->d, x->dmin, x->scales, x->qs, x->qh, e, t);
  }
  if (wt == VELO_DTYPE_Q2_K) return ref_q2((const uint8_t *)w + 84 * b, e, t);
  if (wt == VELO_DTYPE_Q3_K) return ref_q3((const uint8_t *)w + 110 * b, e, t);
  return ref_q6((const velo_block_q6_K *)w + b, e, t);
}

/* Random weight blocks: random bytes, then the fp16 scales set to random
 * finite values in [1e-3, 2e-2). */
static void rnd_weights(velo_dtype wt, void *w, int64_t nb) {
  const size_t bs = velo_dtype_block_bytes(wt);
  rnd_bytes(w, bs * (size_t)nb);
  for (int64_t b = 0; b < nb; b++) {
    char *blk = (char *)w + (size_t)b * bs;
    uint16_t d = velo_fp32_to_fp16((float)rnd_unit(1e-3, 2e-2));
    uint16_t m = velo_fp32_to_fp16((float)rnd_unit(1e-3, 2e-2));
    if (wt == VELO_DTYPE_Q6_K) {
      memcpy(blk + offsetof(velo_block_q6_K, d), &d, 2);
    } else if (wt == VELO_DTYPE_Q2_K) { /* d, dmin at bytes 80, 82 */
      memcpy(blk + 80, &d, 2);
      memcpy(blk + 82, &m, 2);
    } else if (wt == VELO_DTYPE_Q3_K) { /* d at byte 108 */
      memcpy(blk + 108, &d, 2);
    } else {
      memcpy(blk, &d, 2);
      memcpy(blk + 2, &m, 2);
    }
  }
}

/* Random activations, never zero: |x| in [1e-3, s) with random sign, and
 * in half of the blocks one element of either sign scaled up to be the
 * block's largest. */
static void rnd_acts(float *x, int64_t n, double s) {
  for (int64_t i = 0; i < n; i++) {
    double v = rnd_unit(1e-3, s);
    x[i] = (float)(check_rnd() & 1 ? v : -v);
  }
  for (int64_t b = 0; b < n / 256; b++)
    if (check_rnd() & 1) x[b * 256 + (int64_t)(check_rnd() % 256)] *= 3.0f;
}

static void test_dequant(velo_dtype wt) {
  enum { NB = 8, N = NB * 256 };
  static char w[NB * 292];
  static float y[N];
  /* see the header: Q3_K exact, Q2_K one rounding, the others three */
  const double tol_u = wt == VELO_DTYPE_Q3_K ? 0 : wt == VELO_DTYPE_Q2_K ? 1 : 4;
  for (int rep = 0; rep < 20; rep++) {
    rnd_weights(wt, w, NB);
    CHECK(velo_dequantize_row(wt, w, y, N), "%s dequantize_row", velo_dtype_name(wt));
    double worst = 0;
    int bad = 0;
    for (int64_t i = 0; i < N; i++) {
      double t, r = ref_w(wt, w, i, &t);
      double e = fabs((double)y[i] - r);
      if (e > tol_u * U * t) bad++;
      if (e > worst) worst = e;
    }
    CHECK(bad == 0, "%s dequantization: %d of %d elements past %gu*T (worst %.3g)",
          velo_dtype_name(wt), bad, N, tol_u, worst);
  }
  CHECK(!velo_dequantize_row(wt, w, y, 255), "%s: n = 255 must be refused", velo_dtype_name(wt));
}

static void test_q8_K(void) {
  enum { NB = 8, N = NB * 256 };
  static float x[N], y[N];
  static velo_block_q8_K q[NB];
  for (int rep = 0; rep < 50; rep++) {
    rnd_acts(x, N, rep % 2 ? 1.0 : 30.0);
    velo_quantize_row_q8_K_ref(x, q, N);
    velo_dequantize_row(VELO_DTYPE_Q8_K, q, y, N);
    for (int b = 0; b < NB; b++) {
      int imax = 0, bad = 0, bad_sum = 0;
      for (int j = 1; j < 256; j++)
        if (fabsf(x[b * 256 + j]) > fabsf(x[b * 256 + imax])) imax = j;
      const double d = q[b].d;
      for (int j = 0; j < 256; j++) {
        const double xe = x[b * 256 + j];
        if (fabs(xe - (double)y[b * 256 + j]) > fabs(d) / 2 + 4 * U * fabs(xe)) bad++;
        if (q[b].qs[j] < -127) bad++;
      }
      for (int s = 0; s < 16; s++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += q[b].qs[16 * s + j];
        if (sum != q[b].bsums[s]) bad_sum++;
      }
      CHECK(bad == 0, "Q8_K block %d: %d elements off by more than |d|/2", b, bad);
      CHECK(bad_sum == 0, "Q8_K block %d: %d wrong bsums", b, bad_sum);
      /* llama.cpp's sign convention: iscale = -127/max, so max -> -127 */
      CHECK(q[b].qs[imax] == -127, "Q8_K block %d: largest |x| got q %d, want -127", b,
            q[b].qs[imax]);
      CHECK((d < 0) == (x[b * 256 + imax] > 0), "Q8_K block %d: d %g has the wrong sign", b, d);
    }
  }
}

static void test_dot(velo_dtype wt) {
  enum { MAXNB = 16 };
  static char w[MAXNB * 292];
  static float x[MAXNB * 256], xq[MAXNB * 256];
  static velo_block_q8_K q[MAXNB];
  double worst_q = 0, worst_x = 0;
  for (int rep = 0; rep < 60; rep++) {
    const int nb = 1 + rep % MAXNB;
    const int64_t n = (int64_t)nb * 256;
    rnd_weights(wt, w, nb);
    rnd_acts(x, n, rep % 3 ? 1.0 : 8.0);
    velo_quantize_row_q8_K_ref(x, q, n);
    velo_dequantize_row(VELO_DTYPE_Q8_K, q, xq, n);
    double ref_q = 0, ref_x = 0, s_q = 0, qerr = 0;
    for (int64_t i = 0; i < n; i++) {
      double t, wi = ref_w(wt, w, i, &t);
      ref_q += wi * (double)xq[i];
      ref_x += wi * (double)x[i];
      s_q += t * fabs((double)xq[i]);
      qerr += fabs(wi) * (fabs((double)q[i / 256].d) / 2 + 4 * U * fabs((double)x[i]));
    }
    const float got = velo_dot_k_q8_K(wt, w, q, n);
    float direct;
    if (wt == VELO_DTYPE_Q4_K)
      direct = velo_dot_q4_K_q8_K_ref((const velo_block_q4_K *)w, q, n);
    else if (wt == VELO_DTYPE_Q5_K)
      direct = velo_dot_q5_K_q8_K_ref((const velo_block_q5_K *)w, q, n);
    else if (wt == VELO_DTYPE_Q2_K)
      direct = velo_dot_q2_K_q8_K_ref((const velo_block_q2_K *)w, q, n);
    else if (wt == VELO_DTYPE_Q3_K)
      direct = velo_dot_q3_K_q8_K_ref((const velo_block_q3_K *)w, q, n);
    else
      direct = velo_dot_q6_K_q8_K_ref((const velo_block_q6_K *)w, q, n);
    CHECK(memcmp(&got, &direct, sizeof got) == 0, "%s: dispatch differs", velo_dtype_name(wt));
    /* two accumulations per block where mins are subtracted (see the header) */
    const int n_acc = wt == VELO_DTYPE_Q2_K || wt == VELO_DTYPE_Q4_K || wt == VELO_DTYPE_Q5_K
                          ? 2 * nb
                          : nb;
    const double tol_q = (n_acc + 4) * U * s_q, tol_x = tol_q + qerr;
    const double eq = fabs((double)got - ref_q), ex = fabs((double)got - ref_x);
    CHECK(eq <= tol_q, "%s nb %d: dot %.9g, float64 on Q8_K activations %.9g (|err| %.3g > %.3g)",
          velo_dtype_name(wt), nb, (double)got, ref_q, eq, tol_q);
    CHECK(ex <= tol_x, "%s nb %d: dot %.9g, float64 on float activations %.9g (|err| %.3g > %.3g)",
          velo_dtype_name(wt), nb, (double)got, ref_x, ex, tol_x);
    CHECK(ref_q != 0.0, "%s: degenerate test data", velo_dtype_name(wt));
    if (eq / tol_q > worst_q) worst_q = eq / tol_q;
    if (ex / tol_x > worst_x) worst_x = ex / tol_x;
  }
  printf("%s: worst dot error / tolerance: %.3g (Q8_K activations), %.3g (float activations)\n",
         velo_dtype_name(wt), worst_q, worst_x);
}

/* Q8_K as a weight format: random quant bytes (-128 included), random
 * float scales of either sign.  Dequantization is one rounding of d*q, so
 * |err| <= u*|d*q|.  The dot (Q8_K activations from velo_act_convert)
 * against float64: on the quantized activations within (nb + 4)*u*S, S =
 * sum_i |w_i*xq_i| (as test_dot: exact integer sums, then per block the
 * rounding of w.d*x.d, of the product and of the add); on the float
 * activations within that plus the activation quantization error
 * sum_i |w_i|*(|x.d|/2 + 4u|x_i|). */
static void test_q8_K_weights(void) {
  enum { MAXNB = 12 };
  static velo_block_q8_K w[MAXNB], q[MAXNB];
  static float x[MAXNB * 256], y[MAXNB * 256], xq[MAXNB * 256];
  double worst_q = 0, worst_x = 0;
  for (int rep = 0; rep < 60; rep++) {
    const int nb = 1 + rep % MAXNB;
    const int64_t n = (int64_t)nb * 256;
    rnd_bytes(w, sizeof w[0] * (size_t)nb);
    for (int b = 0; b < nb; b++) {
      const double d = rnd_unit(1e-3, 2e-2);
      w[b].d = (float)(check_rnd() & 1 ? d : -d);
    }
    w[0].qs[rep % 256] = -128; /* the one value activations never take */
    CHECK(velo_dequantize_row(VELO_DTYPE_Q8_K, w, y, n), "Q8_K dequantize_row");
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
      const double v = (double)w[i / 256].d * w[i / 256].qs[i % 256];
      if (fabs((double)y[i] - v) > U * fabs(v)) bad++;
    }
    CHECK(bad == 0, "Q8_K weights: %d of %lld elements past u*|d*q|", bad, (long long)n);
    rnd_acts(x, n, rep % 3 ? 1.0 : 8.0);
    velo_act_convert(VELO_DTYPE_Q8_K, x, q, n);
    velo_dequantize_row(VELO_DTYPE_Q8_K, q, xq, n);
    double ref_q = 0, ref_x = 0, s_q = 0, qerr = 0;
    for (int64_t i = 0; i < n; i++) {
      const double wi = (double)w[i / 256].d * w[i / 256].qs[i % 256];
      ref_q += wi * (double)xq[i];
      ref_x += wi * (double)x[i];
      s_q += fabs(wi * (double)xq[i]);
      qerr += fabs(wi) * (fabs((double)q[i / 256].d) / 2 + 4 * U * fabs((double)x[i]));
    }
    const float got = velo_act_dot(VELO_DTYPE_Q8_K, w, q, n);
    const float direct = velo_dot_q8_K_q8_K_ref(w, q, n);
    CHECK(memcmp(&got, &direct, sizeof got) == 0, "Q8_K: velo_act_dot differs from the ref dot");
    const double tol_q = (nb + 4) * U * s_q, tol_x = tol_q + qerr;
    const double eq = fabs((double)got - ref_q), ex = fabs((double)got - ref_x);
    CHECK(eq <= tol_q, "Q8_K nb %d: dot %.9g, float64 on Q8_K activations %.9g (%.3g > %.3g)", nb,
          (double)got, ref_q, eq, tol_q);
    CHECK(ex <= tol_x, "Q8_K nb %d: dot %.9g, float64 on float activations %.9g (%.3g > %.3g)",
          nb, (double)got, ref_x, ex, tol_x);
    CHECK(ref_q != 0.0, "Q8_K: degenerate test data");
    if (eq / tol_q > worst_q) worst_q = eq / tol_q;
    if (ex / tol_x > worst_x) worst_x = ex / tol_x;
  }
  CHECK(velo_dtype_converts_act(VELO_DTYPE_Q8_K), "Q8_K must be a converted-activation weight");
  printf("Q8_K weights: worst dot error / tolerance: %.3g (Q8_K activations), %.3g (float "
         "activations)\n",
         worst_q, worst_x);
}

/* ---- Q4_1, Q5_0, Q5_1 (blocks of 32) and BF16 ---- */

/* Float64 element j of a block-32 weight row w of dtype wt; *t the bound
 * T = |d*q| + |m| of its float roundings. */
static double ref_small(velo_dtype wt, const void *w, int64_t i, double *t) {
  const int64_t b = i / 32;
  const int j = (int)(i % 32);
  const uint8_t *blk = (const uint8_t *)w + (size_t)b * velo_dtype_block_bytes(wt);
  uint16_t dh, mh = 0;
  memcpy(&dh, blk, 2);
  if (wt != VELO_DTYPE_Q5_0) memcpy(&mh, blk + 2, 2);
  const uint8_t *qs = blk + velo_dtype_block_bytes(wt) - 16;
  int q = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
  if (wt != VELO_DTYPE_Q4_1) {
    const uint8_t *qh = qs - 4; /* 32 bits, little-endian, bit j for element j */
    q += 16 * ((qh[j / 8] >> (j % 8)) & 1);
  }
  if (wt == VELO_DTYPE_Q5_0) q -= 16;
  const double a = (double)velo_fp16_to_fp32(dh) * q, m = velo_fp16_to_fp32(mh);
  *t = fabs(a) + fabs(m);
  return a + m;
}

static void test_small(velo_dtype wt) {
  enum { MAXNB = 40 };
  static uint8_t w[MAXNB * 24];
  static float x[MAXNB * 32], y[MAXNB * 32], xq[MAXNB * 32];
  static velo_block_q8_1 q1[MAXNB];
  static velo_block_q8_0 q0[MAXNB];
  const size_t bs = velo_dtype_block_bytes(wt);
  double worst_q = 0, worst_x = 0;
  for (int rep = 0; rep < 60; rep++) {
    const int nb = 1 + rep % MAXNB;
    const int64_t n = (int64_t)nb * 32;
    rnd_bytes(w, bs * (size_t)nb);
    for (int b = 0; b < nb; b++) {
      uint16_t d = velo_fp32_to_fp16((float)rnd_unit(1e-3, 2e-2));
      uint16_t m = velo_fp32_to_fp16((float)-rnd_unit(1e-3, 2e-2));
      memcpy(w + (size_t)b * bs, &d, 2);
      if (wt != VELO_DTYPE_Q5_0) memcpy(w + (size_t)b * bs + 2, &m, 2);
    }
    /* dequantization */
    CHECK(velo_dequantize_row(wt, w, y, n), "%s dequantize_row", velo_dtype_name(wt));
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
      double t, r = ref_small(wt, w, i, &t);
      if (fabs((double)y[i] - r) > 4 * U * t) bad++;
    }
    CHECK(bad == 0, "%s dequantization: %d elements past 4u*T", velo_dtype_name(wt), bad);
    /* dot */
    rnd_acts(x, n, 1.0);
    velo_act_convert(wt, x, wt == VELO_DTYPE_Q5_0 ? (void *)q0 : (void *)q1, n);
    if (wt == VELO_DTYPE_Q5_0) {
      velo_dequantize_row(VELO_DTYPE_Q8_0, q0, xq, n);
    } else {
      /* Q8_1: quants and d exactly as Q8_0, s = fp16(d * sum q) */
      velo_quantize_row_q8_0_ref(x, q0, n);
      int same = 1;
      for (int b = 0; b < nb; b++) {
        same &= q1[b].d == q0[b].d && memcmp(q1[b].qs, q0[b].qs, 32) == 0;
        int sum = 0, asum = 0;
        for (int j = 0; j < 32; j++) sum += q1[b].qs[j], asum += abs(q1[b].qs[j]);
        const double d = velo_fp16_to_fp32(q1[b].d), sv = velo_fp16_to_fp32(q1[b].s);
        CHECK(fabs(sv - d * sum) <= 0x1p-10 * d * asum + 1e-30, "Q8_1 s %g, d*sum %g", sv,
              d * sum);
      }
      CHECK(same, "Q8_1 quants differ from Q8_0's");
      velo_dequantize_row(VELO_DTYPE_Q8_0, q0, xq, n);
    }
    const void *act = wt == VELO_DTYPE_Q5_0 ? (const void *)q0 : (const void *)q1;
    double ref_q = 0, ref_x = 0, s_q = 0, qerr = 0;
    for (int64_t i = 0; i < n; i++) {
      double t, wi = ref_small(wt, w, i, &t);
      const double dx = velo_fp16_to_fp32(q0[i / 32].d);
      double m = 0;
      if (wt != VELO_DTYPE_Q5_0) {
        uint16_t mh;
        memcpy(&mh, w + (size_t)(i / 32) * bs + 2, 2);
        m = velo_fp16_to_fp32(mh);
        qerr += fabs(m) * 0x1p-10 * dx * fabs((double)xq[i] / (dx ? dx : 1));
      }
      ref_q += (wi - m) * (double)xq[i]; /* the scale part, on quantized activations */
      ref_x += wi * (double)x[i];
      s_q += t * fabs((double)xq[i]);
      qerr += fabs(wi) * (dx / 2 + 4 * U * fabs((double)x[i]));
    }
    if (wt != VELO_DTYPE_Q5_0) /* the min part, with llama.cpp's stored block sums */
      for (int b = 0; b < nb; b++) {
        uint16_t mh;
        memcpy(&mh, w + (size_t)b * bs + 2, 2);
        const double sv = velo_fp16_to_fp32(q1[b].s);
        ref_q += (double)velo_fp16_to_fp32(mh) * sv;
        s_q += fabs((double)velo_fp16_to_fp32(mh) * sv);
      }
    const float got = velo_act_dot(wt, w, act, n);
    const double tol_q = (nb + 4) * U * s_q, tol_x = tol_q + qerr;
    const double eq = fabs((double)got - ref_q), ex = fabs((double)got - ref_x);
    CHECK(eq <= tol_q, "%s nb %d: dot %.9g, float64 on quantized activations %.9g (%.3g > %.3g)",
          velo_dtype_name(wt), nb, (double)got, ref_q, eq, tol_q);
    CHECK(ex <= tol_x, "%s nb %d: dot %.9g, float64 on float activations %.9g (%.3g > %.3g)",
          velo_dtype_name(wt), nb, (double)got, ref_x, ex, tol_x);
    if (eq / tol_q > worst_q) worst_q = eq / tol_q;
    if (ex / tol_x > worst_x) worst_x = ex / tol_x;
  }
  printf("%s: worst dot error / tolerance: %.3g (quantized activations), %.3g (float "
         "activations)\n",
         velo_dtype_name(wt), worst_q, worst_x);
}

/* BF16: conversion rounds to nearest even; the dot against float64 on the
 * bf16-rounded activations within (n/8 + 4)*u*sum|w*x| (8 lanes of n/8
 * additions, 3 to reduce), and on the float activations within that plus
 * 2^-8*sum|w*x| (bf16's unit roundoff). */
static void test_bf16(void) {
  CHECK(velo_fp32_to_bf16(1.0f) == 0x3f80, "bf16(1)");
  float f;
  uint32_t u = 0x3f808000u; /* halfway between 0x3f80 and 0x3f81: to even */
  memcpy(&f, &u, 4);
  CHECK(velo_fp32_to_bf16(f) == 0x3f80, "bf16 tie to even (down)");
  u = 0x3f818000u;
  memcpy(&f, &u, 4);
  CHECK(velo_fp32_to_bf16(f) == 0x3f82, "bf16 tie to even (up)");
  CHECK(velo_bf16_to_fp32(velo_fp32_to_bf16(NAN)) != velo_bf16_to_fp32(velo_fp32_to_bf16(NAN)),
        "bf16 NaN stays NaN");
  enum { N = 1000 };
  static uint16_t w[N], xa[N];
  static float x[N], y[N];
  for (int rep = 0; rep < 30; rep++) {
    const int n = 1 + (int)(check_rnd() % N);
    for (int i = 0; i < n; i++) w[i] = velo_fp32_to_bf16((float)rnd_unit(-1, 1));
    rnd_acts(x, n, 1.0);
    CHECK(velo_dequantize_row(VELO_DTYPE_BF16, w, y, n), "BF16 dequantize_row");
    int bad = 0;
    for (int i = 0; i < n; i++) bad += y[i] != velo_bf16_to_fp32(w[i]);
    CHECK(bad == 0, "BF16 dequantization: %d elements inexact", bad);
    velo_act_convert(VELO_DTYPE_BF16, x, xa, n);
    double ref_q = 0, ref_x = 0, s = 0;
    for (int i = 0; i < n; i++) {
      CHECK(fabs(velo_bf16_to_fp32(xa[i]) - (double)x[i]) <= 0x1p-8 * fabs(x[i]), "bf16 rounding");
      ref_q += (double)velo_bf16_to_fp32(w[i]) * velo_bf16_to_fp32(xa[i]);
      ref_x += (double)velo_bf16_to_fp32(w[i]) * x[i];
      s += fabs((double)velo_bf16_to_fp32(w[i]) * x[i]);
    }
    const float got = velo_act_dot(VELO_DTYPE_BF16, w, xa, n);
    const double tol_q = (n / 8 + 4) * U * s * 1.01, tol_x = tol_q + 0x1p-8 * s;
    CHECK(fabs(got - ref_q) <= tol_q, "BF16 n %d: dot %.9g, float64 %.9g", n, (double)got, ref_q);
    CHECK(fabs(got - ref_x) <= tol_x, "BF16 n %d: dot %.9g, float64 on float x %.9g", n,
          (double)got, ref_x);
  }
}

/* Sets the float scale fields of one random weight block of dtype wt to
 * random finite values in [1e-3, 2e-2) (random bytes there could be NaN or
 * infinite, whose bits need not survive every ISA alike), at the offsets
 * velo_dtype_scale_fields gives; a BF16 "block" is one element, set to a
 * random finite value.  Returns false for a dtype velo_dtype_scale_fields
 * does not describe: describe it there when a format is added. */
static bool sanitize_block(velo_dtype wt, char *blk) {
  if (wt == VELO_DTYPE_BF16) { /* a plain type: the element itself */
    const uint16_t b = velo_fp32_to_bf16((float)rnd_unit(-1, 1));
    memcpy(blk, &b, 2);
    return true;
  }
  int off[2];
  bool f32;
  const int n = velo_dtype_scale_fields(wt, off, &f32);
  for (int j = 0; j < n; j++) {
    const float v = (float)rnd_unit(1e-3, 2e-2);
    const uint16_t h = velo_fp32_to_fp16(v);
    if (f32)
      memcpy(blk + off[j], &v, 4);
    else
      memcpy(blk + off[j], &h, 2);
  }
  return n > 0;
}

/* velo_dtype_scale_fields (velo/tensor.h, also used by the text plugin's
 * non-finite weight check) against the block structs of cpu_kernels.h. */
static void test_scale_fields(void) {
  static const struct {
    velo_dtype dt;
    int n, off0, off1;
    bool f32;
  } want[] = {
      {VELO_DTYPE_Q8_0, 1, offsetof(velo_block_q8_0, d), 0, false},
      {VELO_DTYPE_Q4_0, 1, offsetof(velo_block_q4_0, d), 0, false},
      {VELO_DTYPE_Q4_1, 2, offsetof(velo_block_q4_1, d), offsetof(velo_block_q4_1, m), false},
      {VELO_DTYPE_Q5_0, 1, offsetof(velo_block_q5_0, d), 0, false},
      {VELO_DTYPE_Q5_1, 2, offsetof(velo_block_q5_1, d), offsetof(velo_block_q5_1, m), false},
      {VELO_DTYPE_Q8_1, 2, offsetof(velo_block_q8_1, d), offsetof(velo_block_q8_1, s), false},
      {VELO_DTYPE_Q2_K, 2, offsetof(velo_block_q2_K, d), offsetof(velo_block_q2_K, dmin), false},
      {VELO_DTYPE_Q3_K, 1, offsetof(velo_block_q3_K, d), 0, false},
      {VELO_DTYPE_Q4_K, 2, offsetof(velo_block_q4_K, d), offsetof(velo_block_q4_K, dmin), false},
      {VELO_DTYPE_Q5_K, 2, offsetof(velo_block_q5_K, d), offsetof(velo_block_q5_K, dmin), false},
      {VELO_DTYPE_Q6_K, 1, offsetof(velo_block_q6_K, d), 0, false},
      {VELO_DTYPE_Q8_K, 1, offsetof(velo_block_q8_K, d), 0, true},
  };
  for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
    int off[2];
    bool f32;
    const int n = velo_dtype_scale_fields(want[k].dt, off, &f32);
    CHECK(n == want[k].n && off[0] == want[k].off0 && (n < 2 || off[1] == want[k].off1) &&
              f32 == want[k].f32,
          "%s: scale fields n %d at %d, %d (f32 %d), struct says %d at %d, %d",
          velo_dtype_name(want[k].dt), n, off[0], off[1], f32, want[k].n, want[k].off0,
          want[k].off1);
  }
  int off[2];
  bool f32;
  CHECK(velo_dtype_scale_fields(VELO_DTYPE_F16, off, &f32) == 0, "F16 is plain");
  CHECK(velo_dtype_scale_fields(VELO_DTYPE_IQ4_XS, off, &f32) == -1, "IQ4_XS is not described");
}

/* Every ISA table's mul_mat_act against velo_act_dot, to the bit, for
 * every converted-activation weight dtype (found by asking
 * velo_dtype_converts_act of each dtype, so a new format is covered):
 * random weights and activations, row and column counts that leave every
 * tile shape's tails (1..40 rows: up to two full tiles of 16 rows and any
 * tail; 1..9 columns), a nonzero output offset,
 * and sentinels around each output column that must stay untouched. */
static void test_act_tables(void) {
  enum { MAXR = 40, MAXC = 9, OFF = 3, MAXK = 2048 };
  static char w[MAXR * (MAXK / 32) * 64];
  static char cols[MAXC * 4096];
  static float x[MAXK], out[MAXC][OFF + MAXR + 2];
  int n_types = 0;
  for (int t = 0; t < VELO_DTYPE_COUNT; t++) {
    const velo_dtype wt = (velo_dtype)t;
    if (!velo_dtype_converts_act(wt)) continue;
    n_types++;
    const int64_t blk = velo_dtype_block_size(wt);
    const size_t bb = velo_dtype_block_bytes(wt);
    for (int rep = 0; rep < 12; rep++) {
      int64_t K = blk == 1 ? 1 + (int64_t)(check_rnd() % 300) : blk * (1 + (int64_t)(check_rnd() % 8));
      if (rep == 0) K = blk == 1 ? 2048 : MAXK / blk * blk; /* a model-sized row */
      int64_t nr = 1 + (int64_t)(check_rnd() % MAXR), nc = 1 + (int64_t)(check_rnd() % MAXC);
      if (rep == 1) nr = MAXR, nc = MAXC; /* full tiles of every width, and tails */
      if (rep == 2) nr = MAXR - 1, nc = 1; /* decode: one column */
      const size_t row_bytes = velo_dtype_row_bytes(wt, K);
      const size_t ws = row_bytes + (size_t)(check_rnd() % 2) * bb; /* padded rows too */
      const size_t ab = velo_act_bytes(wt, K), cs = (ab + 63) / 64 * 64;
      CHECK(ws * (size_t)nr <= sizeof w && cs * (size_t)nc <= sizeof cols, "test buffers");
      rnd_bytes(w, ws * (size_t)nr);
      bool known = true;
      for (int64_t r = 0; r < nr && known; r++)
        for (int64_t b = 0; b < K / blk && known; b++)
          known = sanitize_block(wt, w + (size_t)r * ws + (size_t)b * bb);
      CHECK(known, "%s: test_act_tables lacks its scale fields (sanitize_block)",
            velo_dtype_name(wt));
      if (!known) break;
      for (int64_t c = 0; c < nc; c++) {
        rnd_acts(x, K, 1.0);
        velo_act_convert(wt, x, cols + (size_t)c * cs, K);
      }
      for (int isa = 0; isa <= VELO_CPU_ISA_LAST; isa++) {
        const velo_cpu_vec *vec = velo_cpu_vec_for((velo_cpu_isa)isa);
        if (!vec) continue;
        float *dst[MAXC];
        for (int64_t c = 0; c < nc; c++) {
          for (int i = 0; i < OFF + MAXR + 2; i++) out[c][i] = -7.25f;
          dst[c] = out[c];
        }
        vec->mul_mat_act(wt, w, ws, nr, cols, cs, nc, K, dst, OFF);
        int bad = 0, stray = 0;
        for (int64_t c = 0; c < nc; c++) {
          for (int64_t r = 0; r < nr; r++) {
            const float want = velo_act_dot(wt, w + (size_t)r * ws, cols + (size_t)c * cs, K);
            if (memcmp(&want, &out[c][OFF + r], sizeof want) != 0) {
              if (bad == 0)
                printf("  %s %s K %lld row %lld col %lld: %.9g, velo_act_dot %.9g\n",
                       vec->name, velo_dtype_name(wt), (long long)K, (long long)r,
                       (long long)c, (double)out[c][OFF + r], (double)want);
              bad++;
            }
          }
          for (int i = 0; i < OFF + MAXR + 2; i++)
            if ((i < OFF || i >= OFF + nr) && out[c][i] != -7.25f) stray++;
        }
        CHECK(bad == 0, "%s mul_mat_act %s (K %lld, %lld x %lld): %d outputs differ from "
              "velo_act_dot", vec->name, velo_dtype_name(wt), (long long)K, (long long)nr,
              (long long)nc, bad);
        CHECK(stray == 0, "%s mul_mat_act %s wrote %d values outside its outputs", vec->name,
              velo_dtype_name(wt), stray);
      }
    }
  }
  CHECK(n_types >= 9, "converted-activation formats found: %d", n_types);
  printf("mul_mat_act: every ISA table equals velo_act_dot on %d formats\n", n_types);
}

/* The K-quant table kernels at the extremes of their integer ranges:
 * weights of all-ones quants and scales (or bytes of 0x00/0xFF, or random)
 * against Q8_K columns of all -128, of +-127/-128 or of random int8 (beyond
 * what velo_act_convert makes, so that an int16 step that could saturate
 * shows), with bsums matching.  Every ISA table must equal velo_act_dot
 * bit for bit. */
static void test_act_kq_extremes(void) {
  enum { NR = 5, NC = 5, K = 512 };
  static const velo_dtype kts[] = {VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K};
  static char w[NR * (K / 256) * 210];
  static velo_block_q8_K cols[NC][K / 256];
  int compared = 0;
  for (int t = 0; t < 3; t++) {
    const velo_dtype wt = kts[t];
    const size_t bb = velo_dtype_block_bytes(wt), ws = velo_dtype_row_bytes(wt, K);
    for (int mode = 0; mode < 3; mode++) {
      for (size_t i = 0; i < ws * NR; i++) {
        const uint8_t r = (uint8_t)(check_rnd() >> 56);
        w[i] = (char)(mode == 0 ? 0xff : mode == 1 ? (r & 1 ? 0xff : 0x00) : r);
      }
      for (int64_t b = 0; b < NR * (K / 256); b++) {
        char *blk = w + (size_t)b * bb;
        if (wt == VELO_DTYPE_Q6_K && mode == 0) /* the largest |scale| */
          for (int s = 0; s < 16; s++)
            blk[offsetof(velo_block_q6_K, scales) + s] = (char)(s & 1 ? 0x80 : 0x7f);
        sanitize_block(wt, blk);
      }
      for (int c = 0; c < NC; c++)
        for (int b = 0; b < K / 256; b++) {
          velo_block_q8_K *x = &cols[c][b];
          x->d = (float)rnd_unit(1e-3, 1e-2);
          for (int j = 0; j < 256; j++) {
            const int r = (int)(check_rnd() >> 56);
            x->qs[j] = (int8_t)(mode == 0 ? -128 : mode == 1 ? (r & 1 ? 127 : -128) : r - 128);
          }
          for (int s = 0; s < 16; s++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += x->qs[16 * s + j];
            x->bsums[s] = (int16_t)sum;
          }
        }
      for (int isa = 0; isa <= VELO_CPU_ISA_LAST; isa++) {
        const velo_cpu_vec *vec = velo_cpu_vec_for((velo_cpu_isa)isa);
        if (!vec) continue;
        float out[NC][NR], *dst[NC];
        for (int c = 0; c < NC; c++) dst[c] = out[c];
        vec->mul_mat_act(wt, w, ws, NR, cols, sizeof cols[0], NC, K, dst, 0);
        int bad = 0;
        for (int c = 0; c < NC; c++)
          for (int r = 0; r < NR; r++) {
            const float want = velo_act_dot(wt, w + (size_t)r * ws, cols[c], K);
            if (memcmp(&want, &out[c][r], sizeof want) != 0) bad++;
            compared++;
          }
        CHECK(bad == 0, "%s mul_mat_act %s at the integer extremes (mode %d): %d of %d outputs "
              "differ from velo_act_dot", vec->name, velo_dtype_name(wt), mode, bad, NR * NC);
      }
    }
  }
  printf("mul_mat_act: K-quants at the integer extremes equal velo_act_dot (%d outputs)\n",
         compared);
}

int main(void) {
  check_rng_state = 0x6b71756174ull;
  static const velo_dtype types[] = {VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K,
                                     VELO_DTYPE_Q2_K, VELO_DTYPE_Q3_K};
  test_q8_K();
  for (int i = 0; i < 5; i++) {
    test_dequant(types[i]);
    test_dot(types[i]);
  }
  test_small(VELO_DTYPE_Q4_1);
  test_small(VELO_DTYPE_Q5_0);
  test_small(VELO_DTYPE_Q5_1);
  test_bf16();
  test_q8_K_weights();
  test_act_tables();
  test_scale_fields();
  test_act_kq_extremes();
  return check_summary("cpu_kquant");
}
