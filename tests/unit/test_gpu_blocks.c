/*
 * test_gpu_blocks.c - the GPU backends' numeric building blocks
 * (backends/gpu_common/gpu_blocks.h), compiled for the host: everything of
 * the kernels' arithmetic that does not need a GPU, checked on any machine.
 *
 *  - fp16 conversions: all 65536 halves, and 2 million floats (random bit
 *    patterns and the rounding boundaries), bit-equal to the CPU backend's.
 *  - Q8_0 activation quantization and Q8_0 / Q4_0 dequantization: bit-equal
 *    to the CPU backend on random data.
 *  - Q4_K / Q5_K / Q6_K dequantization: bit-equal to a second, independent
 *    transcription of ggml's dequantize_row_* loops (below), on random
 *    blocks; and, with a fixture from ../shared/tools/make_synth_gguf.py
 *    (ggml's to_float, checked there against llama-quantize output), on the
 *    first rows of the shared synth-kq files.
 *  - MUL_MAT's canonical order: for every quantized type and random
 *    weights and activations, the lane shares of vgb_mmv_part (what k_mmv_q
 *    runs) and the int8 units of vgb_mmq_unit (what k_mmq runs) give the
 *    same exact integer block sums and so, folded the same way, bit-equal
 *    outputs (the batch invariance of the two kernels); and the output is
 *    within 1e-5 (relative to sum |w x|) of a float64 product of the
 *    dequantized weights and activations.
 *
 * Usage: test_gpu_blocks [FIXTURE] (FIXTURE from gpu_blocks_fixture.py;
 * without it the fixture checks are skipped).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"
#include "gpu_blocks.h"

#include "check.h"

static float rnd_f(float lo, float hi) {
  return lo + (hi - lo) * (float)((check_rnd() >> 11) * (1.0 / 9007199254740992.0));
}

static uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* ------------------------------------------------------------------ */

static void test_fp16(void) {
  long bad = 0;
  for (uint32_t h = 0; h < 65536; h++)
    if (f2u(vgb_fp16_to_f32((uint16_t)h)) != f2u(velo_fp16_to_fp32((uint16_t)h))) bad++;
  CHECK(bad == 0, "%ld halves convert differently from the CPU backend", bad);
  bad = 0;
  for (long i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)check_rnd();
    if (i % 2) u = (u & 0x8000ffffu) | ((0x33u + (uint32_t)(i % 0x15)) << 23); /* near half's range */
    float f;
    memcpy(&f, &u, 4);
    if (vgb_f32_to_fp16(f) != velo_fp32_to_fp16(f)) bad++;
  }
  /* ties: exactly half-way between two halves, both parities */
  for (uint32_t m = 0; m < 4096; m++) {
    float f;
    uint32_t u = (0x3c00u + m) << 13 | 0x1000u; /* normal range, tie bit set */
    u = ((u >> 13) + (112u << 10)) << 13 | 0x1000u;
    memcpy(&f, &u, 4);
    if (vgb_f32_to_fp16(f) != velo_fp32_to_fp16(f)) bad++;
  }
  CHECK(bad == 0, "%ld floats convert to fp16 differently from the CPU backend", bad);
}

/* Q8_0 activation blocks made the way k_quant_q8_0 makes them. */
static void quant_q8_0(const float *x, int64_t n, int8_t *q, float *d) {
  for (int64_t b = 0; b < n / 32; b++) {
    float amax = 0.0f, id;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * b + i]));
    uint16_t d16 = vgb_q8_0_scale(amax, &id);
    d[b] = vgb_fp16_to_f32(d16);
    for (int i = 0; i < 32; i++) q[32 * b + i] = vgb_q8_from_rounded(vgb_rint(x[32 * b + i] * id));
  }
}

/* Q8_K super-blocks made the way k_quant_q8_k makes them. */
static void quant_q8_k(const float *x, int64_t n, int8_t *q, float *d, int16_t *bs) {
  for (int64_t s = 0; s < n / 256; s++) {
    const float *xs = x + 256 * s;
    float ax = -1.0f, mx = 0.0f;
    for (int i = 0; i < 256; i++)
      if (fabsf(xs[i]) > ax) {
        ax = fabsf(xs[i]);
        mx = xs[i];
      }
    if (ax == 0.0f) mx = 0.0f;
    float iscale = vgb_q8_k_iscale(mx);
    for (int i = 0; i < 256; i++) q[256 * s + i] = mx != 0.0f ? vgb_q8_k_quant(iscale, xs[i]) : 0;
    for (int g = 0; g < 16; g++) {
      int sum = 0;
      for (int i = 0; i < 16; i++) sum += q[256 * s + 16 * g + i];
      bs[16 * s + g] = (int16_t)sum;
    }
    d[s] = mx != 0.0f ? 1.0f / iscale : 0.0f;
  }
}

static void test_q8_0_and_q4_0(void) {
  enum { N = 4096 };
  static float x[N], y1[N], y2[N];
  static int8_t q[N];
  static float d[N / 32];
  static velo_block_q8_0 ref[N / 32];
  for (int i = 0; i < N; i++) x[i] = rnd_f(-3.0f, 3.0f) * (i % 97 == 0 ? 40.0f : 1.0f);
  quant_q8_0(x, N, q, d);
  velo_quantize_row_q8_0_ref(x, ref, N);
  long bad = 0;
  for (int b = 0; b < N / 32; b++) {
    if (f2u(d[b]) != f2u(velo_fp16_to_fp32(ref[b].d))) bad++;
    if (memcmp(q + 32 * b, ref[b].qs, 32) != 0) bad++;
  }
  CHECK(bad == 0, "%ld Q8_0 activation blocks differ from the CPU backend's", bad);
  /* dequantization of random Q8_0 and Q4_0 weight blocks */
  static uint8_t raw[N / 32 * 34];
  for (size_t i = 0; i < sizeof raw; i++) raw[i] = (uint8_t)check_rnd();
  for (int b = 0; b < N / 32; b++) {
    uint16_t h = velo_fp32_to_fp16(rnd_f(-0.05f, 0.05f));
    memcpy(raw + 34 * b, &h, 2);
  }
  velo_dequantize_row(VELO_DTYPE_Q8_0, raw, y1, N);
  bad = 0;
  for (int i = 0; i < N; i++) y2[i] = vgb_dequant(8, raw, i), bad += f2u(y1[i]) != f2u(y2[i]);
  CHECK(bad == 0, "%ld Q8_0 values dequantize differently from the CPU backend", bad);
  for (int b = 0; b < N / 32; b++) {
    uint16_t h = velo_fp32_to_fp16(rnd_f(-0.05f, 0.05f));
    memcpy(raw + 18 * b, &h, 2);
  }
  velo_dequantize_row(VELO_DTYPE_Q4_0, raw, y1, N);
  bad = 0;
  for (int i = 0; i < N; i++) y2[i] = vgb_dequant(2, raw, i), bad += f2u(y1[i]) != f2u(y2[i]);
  CHECK(bad == 0, "%ld Q4_0 values dequantize differently from the CPU backend", bad);
}

/* ------------------------------------------------------------------ */
/* An independent transcription of ggml's K-quant dequantization loops   */
/* ------------------------------------------------------------------ */

static void ref_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

/* One super-block of Q4_K (bytes 144) or Q5_K (176) to 256 floats. */
static void ref_deq_q45_k(const uint8_t *x, bool five, float *y) {
  const float d = velo_fp16_to_fp32((uint16_t)(x[0] | x[1] << 8));
  const float min = velo_fp16_to_fp32((uint16_t)(x[2] | x[3] << 8));
  const uint8_t *scales = x + 4, *qh = x + 16, *q = five ? x + 48 : x + 16;
  int is = 0;
  uint8_t u1 = 1, u2 = 2, sc, m;
  for (int j = 0; j < 256; j += 64) {
    ref_scale_min(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    ref_scale_min(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
    q += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

static void ref_deq_q6_k(const uint8_t *x, float *y) {
  const float d = velo_fp16_to_fp32((uint16_t)(x[208] | x[209] << 8));
  const uint8_t *ql = x, *qh = x + 128;
  const int8_t *sc = (const int8_t *)(x + 192);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

/* Random valid blocks of type: random bytes, finite small d (and dmin). */
static void random_blocks(int type, uint8_t *raw, int nblk) {
  int bytes = vgb_block_bytes(type);
  for (int i = 0; i < nblk * bytes; i++) raw[i] = (uint8_t)check_rnd();
  for (int b = 0; b < nblk; b++) {
    uint8_t *x = raw + (size_t)b * bytes;
    uint16_t d = velo_fp32_to_fp16(rnd_f(0.001f, 0.05f)), dm = velo_fp32_to_fp16(rnd_f(0.001f, 0.05f));
    int at = type == 14 ? 208 : 0;
    memcpy(x + at, &d, 2);
    if (type == 12 || type == 13) memcpy(x + 2, &dm, 2);
  }
}

static void test_k_dequant(void) {
  enum { NB = 64 };
  static uint8_t raw[NB * 210];
  static float y[256];
  const int types[3] = {12, 13, 14};
  for (int t = 0; t < 3; t++) {
    int type = types[t], bytes = vgb_block_bytes(type);
    random_blocks(type, raw, NB);
    long bad = 0;
    for (int b = 0; b < NB; b++) {
      const uint8_t *x = raw + (size_t)b * bytes;
      if (type == 14)
        ref_deq_q6_k(x, y);
      else
        ref_deq_q45_k(x, type == 13, y);
      for (int i = 0; i < 256; i++) bad += f2u(vgb_dequant(type, x, i)) != f2u(y[i]);
    }
    CHECK(bad == 0, "type %d: %ld of %d values differ from ggml's loops", type, bad, NB * 256);
  }
}

/* ------------------------------------------------------------------ */
/* MUL_MAT's canonical order: mmv shares vs mmq units vs float64        */
/* ------------------------------------------------------------------ */

/* The output of one weight row against one activation column computed as
 * k_mmv_q does (sum of lane shares per block, then the fold); *isums gets
 * each block's isum (and msums its msum) for the comparison. */
static float dot_mmv(int type, const uint8_t *w, int K, const int8_t *xq, const float *xd,
                     const int16_t *xbs, int *isums, int *msums) {
  const int QK = vgb_block_elems(type), bytes = vgb_block_bytes(type), parts = QK / 8;
  float acc = 0.0f;
  for (int b = 0; b < K / QK; b++) {
    int is = 0, ms = 0;
    float sc = 0.0f, scm = 0.0f;
    for (int p = 0; p < parts; p++) {
      int i1, m1;
      vgb_mmv_part(type, w + (size_t)b * bytes, p, xq + (size_t)b * QK, xd[b], xbs ? xbs + 16 * b : NULL, &i1,
                   &m1, &sc, &scm);
      is += i1;
      ms += m1;
    }
    isums[b] = is;
    msums[b] = ms;
    acc = fmaf(sc, (float)is, acc);
    if (type == 12 || type == 13) acc = fmaf(-scm, (float)ms, acc);
  }
  return acc;
}

/* The same output computed as k_mmq does: int8 units, group multipliers,
 * per-32 activation sums. */
static float dot_mmq(int type, const uint8_t *w, int K, const int8_t *xq, const float *xd,
                     const int16_t *xbs, int *isums, int *msums) {
  const int QK = vgb_block_elems(type), bytes = vgb_block_bytes(type);
  float acc = 0.0f;
  for (int b = 0; b < K / QK; b++) {
    int8_t vals[256], wm[16] = {0}, wmin[8] = {0};
    float wd[8] = {0};
    if (QK == 32) {
      vgb_mmq_unit(type, w + (size_t)b * bytes, 0, vals, wd, wm, wmin);
      int is = 0;
      for (int i = 0; i < 32; i++) is += vals[i] * xq[32 * b + i];
      isums[b] = is;
      msums[b] = 0;
      acc = fmaf(wd[0] * xd[b], (float)is, acc);
      continue;
    }
    for (int u = 0; u < 8; u++) vgb_mmq_unit(type, w + (size_t)b * bytes, u, vals + 32 * u, wd, wm, wmin);
    int is = 0, ms = 0;
    for (int g = 0; g < 16; g++) {
      int S = 0;
      for (int i = 0; i < 16; i++) S += vals[16 * g + i] * xq[256 * b + 16 * g + i];
      is += wm[g] * S;
    }
    for (int s = 0; s < 8; s++) ms += wmin[s] * (xbs[16 * b + 2 * s] + xbs[16 * b + 2 * s + 1]);
    isums[b] = is;
    msums[b] = ms;
    acc = fmaf(wd[0] * xd[b], (float)is, acc);
    if (type == 12 || type == 13) acc = fmaf(-(wd[1] * xd[b]), (float)ms, acc);
  }
  return acc;
}

static void test_canonical(void) {
  enum { K = 2048, ROWS = 24 };
  static float x[K], xdq[K], wdq[K];
  static int8_t xq[K];
  static float xd[K / 32];
  static int16_t xbs[K / 16];
  static uint8_t w[(K / 32) * 34 + 256];
  static int is1[K / 32], is2[K / 32], ms1[K / 32], ms2[K / 32];
  const int types[5] = {8, 2, 12, 13, 14};
  for (int t = 0; t < 5; t++) {
    const int type = types[t], QK = vgb_block_elems(type);
    long bad_int = 0, bad_bits = 0;
    double worst = 0.0;
    for (int row = 0; row < ROWS; row++) {
      for (int i = 0; i < K; i++) x[i] = rnd_f(-2.0f, 2.0f) * (i % 61 == 0 ? 8.0f : 1.0f);
      if (QK == 32)
        quant_q8_0(x, K, xq, xd);
      else
        quant_q8_k(x, K, xq, xd, xbs);
      random_blocks(type, w, K / QK);
      if (type == 8 || type == 2)
        for (int b = 0; b < K / 32; b++) { /* Q8_0/Q4_0 d is a signed scale */
          uint16_t h = velo_fp32_to_fp16(rnd_f(-0.05f, 0.05f));
          memcpy(w + (size_t)b * vgb_block_bytes(type), &h, 2);
        }
      const int16_t *bs = QK == 32 ? NULL : xbs;
      float a = dot_mmv(type, w, K, xq, xd, bs, is1, ms1);
      float b = dot_mmq(type, w, K, xq, xd, bs, is2, ms2);
      for (int k = 0; k < K / QK; k++) bad_int += is1[k] != is2[k] || ms1[k] != ms2[k];
      bad_bits += f2u(a) != f2u(b);
      /* float64 reference on the dequantized operands */
      for (int i = 0; i < K; i++) {
        wdq[i] = vgb_dequant(type, w + (size_t)(i / QK) * vgb_block_bytes(type), i % QK);
        xdq[i] = (QK == 32 ? xd[i / 32] : xd[i / 256]) * (float)xq[i];
      }
      double ref = 0.0, mag = 0.0;
      for (int i = 0; i < K; i++) {
        ref += (double)wdq[i] * (double)xdq[i];
        mag += fabs((double)wdq[i] * (double)xdq[i]);
      }
      double rel = fabs((double)a - ref) / (mag > 0 ? mag : 1.0);
      worst = rel > worst ? rel : worst;
    }
    CHECK(bad_int == 0, "type %d: %ld block sums differ between the mmv and mmq forms", type, bad_int);
    CHECK(bad_bits == 0, "type %d: %ld outputs differ in bits between the mmv and mmq forms", type, bad_bits);
    CHECK(worst < 1e-5, "type %d: worst relative error %.3g vs float64 (allowed 1e-5)", type, worst);
  }
  /* Q8_0 / Q4_0 against the CPU backend's integer dot (another order):
   * the same exact block sums, so agreement to float rounding */
  double worst = 0.0;
  for (int row = 0; row < ROWS; row++) {
    static velo_block_q8_0 xb[K / 32];
    for (int i = 0; i < K; i++) x[i] = rnd_f(-2.0f, 2.0f);
    quant_q8_0(x, K, xq, xd);
    velo_quantize_row_q8_0_ref(x, xb, K);
    random_blocks(2, w, K / 32);
    float a = dot_mmv(2, w, K, xq, xd, NULL, is1, ms1);
    float c = velo_dot_q4_0_q8_0_ref((const velo_block_q4_0 *)w, xb, K);
    double rel = fabs((double)a - (double)c) / (fabs((double)c) + 1e-3);
    worst = rel > worst ? rel : worst;
  }
  CHECK(worst < 1e-4, "Q4_0: worst relative difference %.3g from the CPU backend", worst);
}

/* ------------------------------------------------------------------ */
/* Fixture: ggml's to_float on real K-quant files                        */
/* ------------------------------------------------------------------ */

/* Fixture lines: "TYPE NBYTES NVALUES", a line of hex bytes, a line of
 * float32 values as %.9g. */
static void test_fixture(const char *path) {
  FILE *f = fopen(path, "r");
  CHECK(f != NULL, "cannot open fixture %s", path);
  if (!f) return;
  int type, nbytes, nval, sets = 0;
  while (fscanf(f, "%d %d %d", &type, &nbytes, &nval) == 3) {
    uint8_t *raw = malloc((size_t)nbytes);
    long bad = 0;
    for (int i = 0; i < nbytes; i++) {
      unsigned v;
      if (fscanf(f, "%2x", &v) != 1) break;
      raw[i] = (uint8_t)v;
    }
    for (int i = 0; i < nval; i++) {
      float want;
      if (fscanf(f, "%f", &want) != 1) break;
      const int QK = vgb_block_elems(type);
      float got = vgb_dequant(type, raw + (size_t)(i / QK) * vgb_block_bytes(type), i % QK);
      bad += f2u(got) != f2u(want);
    }
    CHECK(bad == 0, "fixture type %d: %ld of %d values differ from make_synth_gguf.dequantize", type, bad, nval);
    free(raw);
    sets++;
  }
  fclose(f);
  CHECK(sets >= 3, "fixture %s has %d sets (want one per K type)", path, sets);
}

int main(int argc, char **argv) {
  check_rng_state = 0x6770755f626c6b73ull;
  test_fp16();
  test_q8_0_and_q4_0();
  test_k_dequant();
  test_canonical();
  if (argc > 1) test_fixture(argv[1]);
  return check_summary("gpu_blocks");
}
