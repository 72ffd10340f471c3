/*
 * test_sampling.c - unit tests of the token sampler
 * (plugins/textgen/sampling.c): the random stream against its published
 * definition, greedy ties, top-k / top-p / min-p candidate sets and their
 * probabilities, temperature, the repeat penalty and its window, an
 * empirical chi-square check of the draw, seeding, and robustness against
 * extreme parameters and non-finite logits.
 *
 * Prints "sampling: N checks passed" and exits 0, or lists the failures and
 * exits 1.  (The shared data folder argument is accepted and unused.)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* clock_gettime */
#endif
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sampling.h"

#include "check.h"

static velo_sampler *make(float temp, int32_t top_k, float top_p, float min_p, float pen,
                          int32_t last_n, uint64_t seed) {
  velo_sampler_params p;
  velo_sampler_params_default(&p);
  p.temperature = temp;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.repeat_penalty = pen;
  p.repeat_last_n = last_n;
  p.seed = seed;
  velo_sampler *s = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_sampler_create(&p, &s, &err);
  CHECK(st == VELO_OK && s, "create: %s", err.message);
  return s;
}

/* ---- reference PRNG, written from the published definitions ---- */
static uint64_t ref_splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t ref_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t ref_xoshiro(uint64_t s[4]) {
  uint64_t r = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = ref_rotl(s[3], 45);
  return r;
}

static void test_prng(void) {
  uint64_t x = 0;
  CHECK(ref_splitmix(&x) == 0xE220A8397B1DCDAFull, "splitmix64(0) known first value");
  uint64_t st[4] = {1, 2, 3, 4};
  CHECK(ref_xoshiro(st) == 11520 && ref_xoshiro(st) == 0, "xoshiro256** known first values");

  uint64_t seeds[] = {0, 1, 42, 0xDEADBEEFCAFEF00Dull};
  for (size_t k = 0; k < 4; k++) {
    velo_sampler *s = make(1, 0, 1, 0, 1, 64, seeds[k]);
    uint64_t y = seeds[k], r[4];
    for (int i = 0; i < 4; i++) r[i] = ref_splitmix(&y);
    bool same = true;
    for (int i = 0; i < 100; i++) same &= velo_sampler_next_u64(s) == ref_xoshiro(r);
    CHECK(same, "seed %llu: xoshiro256** seeded by splitmix64", (unsigned long long)seeds[k]);
    velo_sampler_free(s);
  }
}

static void test_greedy(void) {
  float logits[6] = {1, 3, -2, 3, 0, 3};
  for (int t = 0; t < 3; t++) {
    float temp = t == 0 ? 0.0f : t == 1 ? -1.0f : -0.0f;
    velo_sampler *s = make(temp, 3, 0.5f, 0.5f, 1, 64, 7);
    CHECK(velo_sampler_sample(s, logits, 6) == 1, "greedy tie -> lowest id (temp %g)", temp);
    int32_t id;
    float p;
    CHECK(velo_sampler_candidates(s, logits, 6, &id, &p, 1) == 1 && id == 1 && p == 1.0f,
          "greedy candidate set");
    velo_sampler_free(s);
  }
  /* Greedy uses no random numbers. */
  velo_sampler *a = make(0, 0, 1, 0, 1, 64, 5), *b = make(1, 0, 1, 0, 1, 64, 5);
  for (int i = 0; i < 10; i++) velo_sampler_sample(a, logits, 6);
  CHECK(velo_sampler_next_u64(a) == velo_sampler_next_u64(b), "greedy leaves the stream alone");
  velo_sampler_free(a);
  velo_sampler_free(b);
}

static uint64_t lcg = 88172645463325252ull;
static float frand(void) { /* uniform in [-4, 4) */
  lcg ^= lcg << 13;
  lcg ^= lcg >> 7;
  lcg ^= lcg << 17;
  return (float)((double)(lcg >> 11) * 0x1.0p-53 * 8.0 - 4.0);
}

static void test_top_k_one(void) {
  float logits[100];
  bool ok = true;
  for (int trial = 0; trial < 200; trial++) {
    for (int i = 0; i < 100; i++) logits[i] = frand();
    if (trial % 10 == 0) logits[trial % 100] = logits[(trial + 7) % 100] = 9.0f; /* a tie */
    velo_sampler *g = make(0, 0, 1, 0, 1, 64, 1);
    velo_sampler *k = make(1.5f, 1, 1, 0, 1, 64, (uint64_t)trial);
    ok &= velo_sampler_sample(g, logits, 100) == velo_sampler_sample(k, logits, 100);
    velo_sampler_free(g);
    velo_sampler_free(k);
  }
  CHECK(ok, "top_k = 1 picks the greedy token");
}

/* Logits whose softmax is exactly probs (up to rounding). */
static void logits_of(const double *probs, int n, float *logits) {
  for (int i = 0; i < n; i++) logits[i] = (float)log(probs[i]);
}

static void expect_set(velo_sampler *s, const float *logits, int n, const int32_t *want_ids,
                       const double *want_p, size_t n_want, const char *what) {
  int32_t ids[64];
  float probs[64];
  size_t got = velo_sampler_candidates(s, logits, n, ids, probs, 64);
  bool ok = got == n_want;
  for (size_t i = 0; ok && i < n_want; i++)
    ok = ids[i] == want_ids[i] && fabs(probs[i] - want_p[i]) < 1e-5;
  CHECK(ok, "%s: candidate set", what);
  if (!ok) {
    fprintf(stderr, "  got %zu:", got);
    for (size_t i = 0; i < got && i < 64; i++) fprintf(stderr, " %d:%.6f", ids[i], probs[i]);
    fprintf(stderr, "\n  want %zu:", n_want);
    for (size_t i = 0; i < n_want; i++) fprintf(stderr, " %d:%.6f", want_ids[i], want_p[i]);
    fputc('\n', stderr);
  }
}

static void test_filters(void) {
  /* Token 3 most likely, then 0, 2, 1, 4 (shuffled ids on purpose). */
  const double probs[5] = {0.3, 0.05, 0.15, 0.45, 0.05};
  float logits[5];
  logits_of(probs, 5, logits);

  velo_sampler *s = make(1, 0, 1, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0, 2, 1, 4},
             (const double[]){0.45, 0.3, 0.15, 0.05, 0.05}, 5, "no filter (ties: lower id)");
  velo_sampler_free(s);

  s = make(1, 2, 1, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0}, (const double[]){0.6, 0.4}, 2, "top_k 2");
  velo_sampler_free(s);

  s = make(1, 0, 0.7f, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0}, (const double[]){0.6, 0.4}, 2, "top_p 0.7");
  velo_sampler_free(s);

  s = make(1, 0, 0.8f, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0, 2},
             (const double[]){0.45 / 0.9, 0.3 / 0.9, 0.15 / 0.9}, 3, "top_p 0.8");
  velo_sampler_free(s);

  s = make(1, 0, 0.0f, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3}, (const double[]){1}, 1, "top_p 0 keeps one");
  velo_sampler_free(s);

  /* top-p after top-k renormalizes over the top-k set: token 3 has 0.5 of
   * it (>= 0.48), though only 0.45 of the whole vocabulary. */
  s = make(1, 3, 0.48f, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3}, (const double[]){1}, 1, "top_k then top_p");
  velo_sampler_free(s);

  /* min-p 0.3: keep p >= 0.135: 3, 0, 2. */
  s = make(1, 0, 1, 0.3f, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0, 2},
             (const double[]){0.45 / 0.9, 0.3 / 0.9, 0.15 / 0.9}, 3, "min_p 0.3");
  velo_sampler_free(s);
  s = make(1, 0, 1, 0.7f, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3}, (const double[]){1}, 1, "min_p 0.7");
  velo_sampler_free(s);
  s = make(1, 0, 1, 5.0f, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3}, (const double[]){1}, 1, "min_p > 1 keeps one");
  velo_sampler_free(s);

  /* Temperature 2: p ~ sqrt(p). */
  double sq[5], sum = 0;
  for (int i = 0; i < 5; i++) sum += sq[i] = sqrt(probs[i]);
  s = make(2, 0, 1, 0, 1, 64, 1);
  expect_set(s, logits, 5, (const int32_t[]){3, 0, 2, 1, 4},
             (const double[]){sq[3] / sum, sq[0] / sum, sq[2] / sum, sq[1] / sum, sq[4] / sum}, 5,
             "temperature 2");
  velo_sampler_free(s);
  /* Temperature applies after top-p (the set is chosen at temperature 1). */
  s = make(0.5f, 0, 0.8f, 0, 1, 64, 1);
  double a = 0.45 * 0.45, b = 0.3 * 0.3, c = 0.15 * 0.15;
  expect_set(s, logits, 5, (const int32_t[]){3, 0, 2},
             (const double[]){a / (a + b + c), b / (a + b + c), c / (a + b + c)}, 3,
             "top_p then temperature");
  velo_sampler_free(s);
}

static void test_distribution(void) {
  /* top_p 0.8 leaves {3, 0, 2} with 0.5, 1/3, 1/6. */
  const double probs[5] = {0.3, 0.05, 0.15, 0.45, 0.05};
  float logits[5];
  logits_of(probs, 5, logits);
  velo_sampler *s = make(1, 0, 0.8f, 0, 1, 64, 2024);
  int counts[5] = {0};
  const int N = 30000;
  for (int i = 0; i < N; i++) {
    int32_t id = velo_sampler_sample(s, logits, 5);
    if (id >= 0 && id < 5) counts[id]++;
  }
  CHECK(counts[1] == 0 && counts[4] == 0, "tokens cut by top-p are never drawn");
  const double want[3] = {0.5, 1.0 / 3, 1.0 / 6};
  const int which[3] = {3, 0, 2};
  double chi2 = 0;
  for (int k = 0; k < 3; k++) {
    double e = want[k] * N, d = counts[which[k]] - e;
    chi2 += d * d / e;
  }
  /* 2 degrees of freedom: P(chi2 > 13.8) = 0.001. */
  CHECK(chi2 < 13.8, "draws follow the distribution: chi2 = %.2f (%d %d %d)", chi2, counts[3],
        counts[0], counts[2]);
  velo_sampler_free(s);
}

static void test_seeds(void) {
  float logits[50];
  for (int i = 0; i < 50; i++) logits[i] = frand() * 0.25f;
  velo_sampler *a = make(1, 0, 1, 0, 1.1f, 16, 99), *b = make(1, 0, 1, 0, 1.1f, 16, 99),
               *c = make(1, 0, 1, 0, 1.1f, 16, 100);
  bool same = true, differ = false;
  for (int i = 0; i < 500; i++) {
    int32_t x = velo_sampler_sample(a, logits, 50), y = velo_sampler_sample(b, logits, 50),
            z = velo_sampler_sample(c, logits, 50);
    same &= x == y;
    differ |= x != z;
    velo_sampler_accept(a, x);
    velo_sampler_accept(b, y);
    velo_sampler_accept(c, z);
  }
  CHECK(same, "same seed, same logits -> same tokens");
  CHECK(differ, "different seed -> different tokens");
  /* reset: same as a fresh sampler with that seed. */
  velo_sampler_reset(a, 100);
  velo_sampler *d = make(1, 0, 1, 0, 1.1f, 16, 100);
  same = true;
  for (int i = 0; i < 100; i++) {
    int32_t x = velo_sampler_sample(a, logits, 50), y = velo_sampler_sample(d, logits, 50);
    same &= x == y;
    velo_sampler_accept(a, x);
    velo_sampler_accept(d, y);
  }
  CHECK(same, "reset(seed) restarts the stream and clears the history");
  velo_sampler_free(a);
  velo_sampler_free(b);
  velo_sampler_free(c);
  velo_sampler_free(d);
}

static void test_penalty(void) {
  /* Positive logits are divided, negative (and 0) multiplied; each token
   * once, however often it occurs. */
  float logits[5] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f};
  const float orig[5] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f};
  velo_sampler *s = make(1, 0, 1, 0, 2.0f, 64, 1);
  velo_sampler_accept(s, 0);
  velo_sampler_accept(s, 1);
  velo_sampler_accept(s, 0);
  velo_sampler_accept(s, 0);
  velo_sampler_accept(s, 4);
  velo_sampler_accept(s, 77);  /* out of range: ignored */
  velo_sampler_accept(s, -3);  /* likewise */
  double pen[5] = {1.0, -4.0, 1.0, 0.5, 0.0}, sum = 0, e[5];
  for (int i = 0; i < 5; i++) sum += e[i] = exp(pen[i]);
  expect_set(s, logits, 5, (const int32_t[]){0, 2, 3, 4, 1},
             (const double[]){e[0] / sum, e[2] / sum, e[3] / sum, e[4] / sum, e[1] / sum}, 5,
             "repeat penalty 2");
  CHECK(memcmp(logits, orig, sizeof orig) == 0, "the caller's logits are not modified");
  velo_sampler_free(s);

  /* Greedy sees the penalty too. */
  float two[2] = {2.0f, 1.5f}, neg[2] = {-1.0f, -1.5f};
  s = make(0, 0, 1, 0, 2.0f, 64, 1);
  velo_sampler_accept(s, 0);
  CHECK(velo_sampler_sample(s, two, 2) == 1, "penalized positive logit loses");
  CHECK(velo_sampler_sample(s, neg, 2) == 1, "penalized negative logit loses");
  velo_sampler_free(s);

  /* The window: only the last repeat_last_n tokens count. */
  s = make(0, 0, 1, 0, 2.0f, 2, 1);
  velo_sampler_accept(s, 0);
  velo_sampler_accept(s, 5);
  CHECK(velo_sampler_sample(s, two, 2) == 1, "token 0 in the window");
  velo_sampler_accept(s, 6);
  CHECK(velo_sampler_sample(s, two, 2) == 0, "token 0 left the window");
  for (int i = 0; i < 1000; i++) velo_sampler_accept(s, 7 + i % 3);
  CHECK(velo_sampler_sample(s, two, 2) == 0, "long history, window still 2");
  velo_sampler_accept(s, 0);
  CHECK(velo_sampler_sample(s, two, 2) == 1, "token 0 back in the window");
  velo_sampler_free(s);

  /* Window < 0: the whole history; 0: off; penalty 1: off. */
  s = make(0, 0, 1, 0, 2.0f, -1, 1);
  velo_sampler_accept(s, 0);
  for (int i = 0; i < 5000; i++) velo_sampler_accept(s, 9);
  CHECK(velo_sampler_sample(s, two, 2) == 1, "whole history");
  velo_sampler_free(s);
  s = make(0, 0, 1, 0, 2.0f, 0, 1);
  velo_sampler_accept(s, 0);
  CHECK(velo_sampler_sample(s, two, 2) == 0, "window 0 is off");
  velo_sampler_free(s);
  s = make(0, 0, 1, 0, 1.0f, 64, 1);
  velo_sampler_accept(s, 0);
  CHECK(velo_sampler_sample(s, two, 2) == 0, "penalty 1 is off");
  velo_sampler_free(s);
}

static void test_robustness(void) {
  float logits[8] = {0.1f, NAN, INFINITY, -INFINITY, 3.0f, -FLT_MAX, FLT_MAX, 2.0f};
  const float temps[] = {0, 1e-30f, 1e-45f, 0.5f, 1, 1e30f, FLT_MAX, INFINITY, NAN};
  const int32_t ks[] = {INT32_MIN, -3, 0, 1, 3, 8, 9, INT32_MAX};
  const float ps[] = {-FLT_MAX, -5, 0, 0.5f, 1, 100, FLT_MAX, NAN};
  const float pens[] = {-1, 0, 1e-30f, 0.5f, 1, 2, 1e30f, FLT_MAX};
  const int32_t lasts[] = {INT32_MIN, -1, 0, 1, INT32_MAX};
  bool ok = true;
  size_t combos = 0;
  for (size_t a = 0; a < sizeof temps / sizeof *temps; a++)
    for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
      for (size_t c = 0; c < sizeof ps / sizeof *ps; c++)
        for (size_t d = 0; d < sizeof pens / sizeof *pens; d++) {
          int32_t last = lasts[(a + b + c + d) % 5];
          velo_sampler *s = make(temps[a], ks[b], ps[c], ps[(c + d) % 8], pens[d], last, a + b);
          if (!s) {
            ok = false;
            continue;
          }
          for (int i = 0; i < 8; i++) velo_sampler_accept(s, i);
          for (int i = 0; i < 4; i++) {
            int32_t id = velo_sampler_sample(s, logits, 8);
            ok &= id >= 0 && id < 8 && id != 1 && id != 3;
            velo_sampler_accept(s, id);
          }
          float probs[8];
          size_t n = velo_sampler_candidates(s, logits, 8, NULL, probs, 8);
          double sum = 0;
          for (size_t i = 0; i < n && i < 8; i++) sum += probs[i];
          ok &= n >= 1 && n <= 8 && fabs(sum - 1.0) < 1e-4;
          combos++;
          velo_sampler_free(s);
        }
  CHECK(ok, "extreme parameters and logits: valid ids, probabilities sum to 1 (%zu combos)",
        combos);

  float all_neg[4] = {-INFINITY, -INFINITY, NAN, -INFINITY};
  velo_sampler *s = make(1, 0, 0.9f, 0.1f, 1, 64, 3);
  CHECK(velo_sampler_sample(s, all_neg, 4) == 0, "nothing possible -> lowest id");
  CHECK(velo_sampler_sample(s, all_neg, 0) == -1, "n_vocab 0 -> -1");
  CHECK(velo_sampler_sample(s, NULL, 4) == -1, "NULL logits -> -1");
  CHECK(velo_sampler_candidates(s, all_neg, -1, NULL, NULL, 0) == 0, "candidates of nothing");
  /* A larger vocabulary after a smaller one (scratch grows). */
  float *big = malloc(40000 * sizeof *big);
  for (int i = 0; i < 40000; i++) big[i] = -10.0f;
  big[39999] = 10.0f;
  CHECK(velo_sampler_sample(s, big, 40000) == 39999, "scratch grows");
  velo_sampler_free(s);
  free(big);
  velo_error err;
  velo_error_init(&err);
  CHECK(velo_sampler_create(NULL, &s, &err) == VELO_INVALID_ARGUMENT, "NULL params");
}

static void test_speed(void) {
  enum { N = 32000 };
  float *logits = malloc(N * sizeof *logits);
  for (int i = 0; i < N; i++) logits[i] = frand() * 2.0f;
  float *peaked = malloc(N * sizeof *peaked);
  for (int i = 0; i < N; i++) peaked[i] = frand() * 0.5f + (i % 1601 == 0 ? 12.0f : 0.0f);
  struct {
    int32_t k;
    float p;
    const float *logits;
    const char *name;
  } cfg[] = {{40, 0.95f, logits, "top_k 40, top_p 0.95"},
             {0, 0.95f, peaked, "top_p 0.95, peaked logits"},
             {0, 0.95f, logits, "top_p 0.95, flat logits (worst case)"},
             {0, 1, logits, "no filter"}};
  for (int c = 0; c < 4; c++) {
    velo_sampler *s = make(0.8f, cfg[c].k, cfg[c].p, 0.05f, 1.1f, 64, 1);
    for (int i = 0; i < 64; i++) velo_sampler_accept(s, i * 13);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool ok = true;
    for (int i = 0; i < 50; i++) ok &= velo_sampler_sample(s, cfg[c].logits, N) >= 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3 / 50;
    CHECK(ok && us < 50000, "%s: %.0f us per sample", cfg[c].name, us);
    printf("sampling: 32000 logits, %s: %.0f us per sample\n", cfg[c].name, us);
    velo_sampler_free(s);
  }
  free(logits);
  free(peaked);
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  test_prng();
  test_greedy();
  test_top_k_one();
  test_filters();
  test_distribution();
  test_seeds();
  test_penalty();
  test_robustness();
  test_speed();
  return check_summary("sampling");
}
