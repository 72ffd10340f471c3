/*
 * sampling.c - the token sampler: repeat penalty, top-k, top-p, min-p,
 * temperature and a seeded draw (the pipeline and its sources are in
 * sampling.h).
 *
 * Each call copies the logits into a candidate array (logit, id) owned by
 * the sampler, so the caller's logits are never written.  The candidate
 * array, a byte-per-token mark array (to penalize each token of the window
 * once) and a weight array are kept between calls and grown when a larger
 * vocabulary shows up.  Softmax weights are computed in double, relative to
 * the largest logit, so no logit range or temperature can overflow them.
 * Sorting is avoided where the result does not need it: greedy is a scan,
 * top-k selects with a heap of k, top-p first finds (with a histogram of
 * the probability mass by logit) which candidates can be in the set and
 * sorts only those, min-p alone is a filter.  Without top-k/top-p the draw
 * walks the candidates in id order.
 */
#include "sampling.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* top-p histogram: HIST_PER_UNIT buckets per unit of logit below the
 * maximum; everything further down than the last bucket shares it. */
#define HIST_BUCKETS 2048
#define HIST_PER_UNIT 32.0

typedef struct cand {
  float logit;
  int32_t id;
} cand;

struct velo_sampler {
  velo_sampler_params p;
  uint64_t rng[4]; /* xoshiro256** state */

  int32_t *hist; /* accepted ids; the live part is hist[hist_start..hist_len) */
  size_t hist_start, hist_len, hist_cap;

  cand *c; /* [cap] candidates */
  double *w;     /* [cap] weights of the candidates */
  uint8_t *mark; /* [cap] "already penalized" flags, all 0 between calls */
  size_t cap;
  double hist_mass[HIST_BUCKETS]; /* top-p scratch */
};

static size_t bucket_of(float max, float logit) {
  double d = ((double)max - (double)logit) * HIST_PER_UNIT;
  return d < HIST_BUCKETS - 1 ? (size_t)d : HIST_BUCKETS - 1; /* also inf */
}

/* ------------------------------------------------------------------ */
/* Random numbers                                                       */
/* ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t velo_sampler_next_u64(velo_sampler *s) {
  uint64_t *r = s->rng;
  uint64_t result = rotl(r[1] * 5, 7) * 9;
  uint64_t t = r[1] << 17;
  r[2] ^= r[0];
  r[3] ^= r[1];
  r[1] ^= r[2];
  r[0] ^= r[3];
  r[2] ^= t;
  r[3] = rotl(r[3], 45);
  return result;
}

/* A double uniform in [0, 1): the top 53 bits of the next output. */
static double next_double(velo_sampler *s) {
  return (double)(velo_sampler_next_u64(s) >> 11) * 0x1.0p-53;
}

static void seed_rng(velo_sampler *s, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

void velo_sampler_params_default(velo_sampler_params *p) {
  p->temperature = 1.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
  p->min_p = 0.0f;
  p->repeat_penalty = 1.0f;
  p->repeat_last_n = 64;
  p->seed = 0;
}

velo_status velo_sampler_create(const velo_sampler_params *params, velo_sampler **out,
                                velo_error *err) {
  if (!params || !out)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "sampler: NULL argument");
  velo_sampler *s = calloc(1, sizeof *s);
  if (!s) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "sampler: out of memory");
  s->p = *params;
  velo_sampler_params d;
  velo_sampler_params_default(&d);
  if (!isfinite(s->p.temperature)) s->p.temperature = d.temperature;
  if (isnan(s->p.top_p)) s->p.top_p = d.top_p;
  if (isnan(s->p.min_p)) s->p.min_p = d.min_p;
  if (!isfinite(s->p.repeat_penalty)) s->p.repeat_penalty = d.repeat_penalty;
  seed_rng(s, s->p.seed);
  *out = s;
  return VELO_OK;
}

void velo_sampler_free(velo_sampler *s) {
  if (!s) return;
  free(s->hist);
  free(s->c);
  free(s->w);
  free(s->mark);
  free(s);
}

void velo_sampler_reset(velo_sampler *s, uint64_t seed) {
  s->hist_start = s->hist_len = 0;
  s->p.seed = seed;
  seed_rng(s, seed);
}

bool velo_sampler_accept(velo_sampler *s, int32_t id) {
  int32_t window = s->p.repeat_last_n;
  if (window == 0) return true;
  if (s->hist_len == s->hist_cap) {
    if (s->hist_start > 0) { /* compact: drop what left the window */
      memmove(s->hist, s->hist + s->hist_start,
              (s->hist_len - s->hist_start) * sizeof *s->hist);
      s->hist_len -= s->hist_start;
      s->hist_start = 0;
    } else {
      size_t cap = s->hist_cap ? s->hist_cap * 2 : 256;
      int32_t *h = realloc(s->hist, cap * sizeof *h);
      if (!h) return false;
      s->hist = h;
      s->hist_cap = cap;
    }
  }
  s->hist[s->hist_len++] = id;
  if (window > 0 && s->hist_len - s->hist_start > (size_t)window) s->hist_start++;
  return true;
}

/* ------------------------------------------------------------------ */
/* The pipeline                                                         */
/* ------------------------------------------------------------------ */

static bool reserve(velo_sampler *s, size_t n) {
  if (n <= s->cap) return true;
  cand *c = realloc(s->c, n * sizeof *c);
  if (!c) return false;
  s->c = c;
  double *w = realloc(s->w, n * sizeof *w);
  if (!w) return false;
  s->w = w;
  uint8_t *m = realloc(s->mark, n);
  if (!m) return false;
  memset(m + s->cap, 0, n - s->cap);
  s->mark = m;
  s->cap = n;
  return true;
}

/* True if a ranks before b: larger logit, then lower id. */
static bool before(const cand *a, const cand *b) {
  return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *x, const void *y) {
  const cand *a = x, *b = y;
  return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* Step 1: copy, sanitize, penalize.  Fills s->c[0..n) indexed by id. */
static void load_and_penalize(velo_sampler *s, const float *logits, int32_t n) {
  for (int32_t i = 0; i < n; i++) {
    float l = logits[i];
    if (isnan(l)) l = -INFINITY;
    else if (l == INFINITY) l = FLT_MAX;
    s->c[i] = (cand){l, i};
  }
  float pen = s->p.repeat_penalty;
  if (pen == 1.0f || pen <= 0.0f || s->p.repeat_last_n == 0) return;
  const int32_t *h = s->hist + s->hist_start;
  size_t nh = s->hist_len - s->hist_start;
  for (size_t k = 0; k < nh; k++) {
    int32_t id = h[k];
    if (id < 0 || id >= n || s->mark[id]) continue;
    s->mark[id] = 1;
    float l = s->c[id].logit;
    l = l <= 0.0f ? l * pen : l / pen;
    if (l == INFINITY) l = FLT_MAX; /* a tiny penalty overflowed */
    s->c[id].logit = l;
  }
  for (size_t k = 0; k < nh; k++)
    if (h[k] >= 0 && h[k] < n) s->mark[h[k]] = 0;
}

static int32_t argmax(const cand *c, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (c[i].logit > c[best].logit) best = i;
  return c[best].id;
}

/* Moves the k best candidates of c[0..n) to the front, sorted (0 < k < n):
 * a min-heap of the k best seen so far, O(n log k). */
static void select_top_k(cand *c, size_t n, size_t k) {
  /* Heap order: the worst candidate at the root. */
  for (size_t i = k / 2; i-- > 0;) {
    size_t j = i;
    for (;;) {
      size_t l = 2 * j + 1, m = j;
      if (l < k && before(&c[m], &c[l])) m = l;
      if (l + 1 < k && before(&c[m], &c[l + 1])) m = l + 1;
      if (m == j) break;
      cand t = c[j]; c[j] = c[m]; c[m] = t;
      j = m;
    }
  }
  for (size_t i = k; i < n; i++) {
    if (!before(&c[i], &c[0])) continue;
    cand t = c[0]; c[0] = c[i]; c[i] = t;
    size_t j = 0;
    for (;;) {
      size_t l = 2 * j + 1, m = j;
      if (l < k && before(&c[m], &c[l])) m = l;
      if (l + 1 < k && before(&c[m], &c[l + 1])) m = l + 1;
      if (m == j) break;
      t = c[j]; c[j] = c[m]; c[m] = t;
      j = m;
    }
  }
  qsort(c, k, sizeof *c, cand_cmp);
}

/* Steps 2-5 on s->c[0..n) after step 1.  Leaves the candidate set in
 * s->c[0..return) with normalized final probabilities in s->w; the set is
 * sorted (best first) if top-k or top-p ran or `sort` is set, otherwise it
 * is in id order.  Sorting is only done as far as needed: top-k selects
 * with a heap, top-p sorts a growing top slice until it holds the mass p,
 * min-p alone filters without sorting. */
static size_t filter(velo_sampler *s, size_t n, bool sort) {
  cand *c = s->c;
  double *w = s->w;
  const velo_sampler_params *p = &s->p;
  size_t n_sorted = 0; /* c[0..n_sorted) are the best of c[0..n), sorted */

  /* 2. top-k. */
  if (p->top_k > 0 && (size_t)p->top_k < n) {
    select_top_k(c, n, (size_t)p->top_k);
    n = n_sorted = (size_t)p->top_k;
  }
  size_t best = 0;
  for (size_t i = 1; i < n; i++)
    if (before(&c[i], &c[best])) best = i;
  float max = c[best].logit;
  if (max == -INFINITY) { /* nothing is possible: the lowest id */
    c[0] = c[best];
    w[0] = 1.0;
    return 1;
  }

  /* 3. top-p over the softmax of what is left. */
  if (p->top_p < 1.0f) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (w[i] = exp((double)c[i].logit - max));
    double target = (double)p->top_p * sum;
    if (n_sorted < n) {
      /* Histogram of the mass by distance below the max logit: the set is
       * inside the buckets that first reach the target, so only those
       * candidates need sorting. */
      memset(s->hist_mass, 0, sizeof s->hist_mass);
      for (size_t i = 0; i < n; i++) {
        s->hist_mass[bucket_of(max, c[i].logit)] += w[i];
      }
      size_t last = HIST_BUCKETS - 1;
      double cum = 0.0;
      for (size_t b = 0; b < HIST_BUCKETS; b++) {
        cum += s->hist_mass[b];
        if (cum >= target) {
          last = b;
          break;
        }
      }
      size_t m = 0;
      for (size_t i = 0; i < n; i++) {
        if (bucket_of(max, c[i].logit) <= last) {
          cand t = c[m];
          c[m++] = c[i];
          c[i] = t;
        }
      }
      qsort(c, m, sizeof *c, cand_cmp);
      n_sorted = m;
    }
    size_t keep = n_sorted; /* if rounding keeps the sum short: all of it */
    double cum = 0.0;
    for (size_t i = 0; i < n_sorted; i++) {
      cum += exp((double)c[i].logit - max);
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    n = n_sorted = keep;
  }

  /* 4. min-p: p_i >= min_p * p_max  <=>  logit_i >= max + ln(min_p).  The
   * best candidate always stays. */
  if (p->min_p > 0.0f) {
    float thr = max + logf(p->min_p);
    if (n_sorted == n) {
      size_t keep = 1;
      while (keep < n && c[keep].logit >= thr) keep++;
      n = n_sorted = keep;
    } else {
      cand top = c[best];
      size_t keep = 0;
      for (size_t i = 0; i < n; i++)
        if (c[i].logit >= thr) c[keep++] = c[i];
      if (keep == 0) c[keep++] = top;
      n = keep;
    }
  }
  if (sort && n_sorted < n) qsort(c, n, sizeof *c, cand_cmp);

  /* 5. temperature, and the final normalized weights. */
  double t = p->temperature, sum = 0.0;
  for (size_t i = 0; i < n; i++) sum += (w[i] = exp(((double)c[i].logit - max) / t));
  for (size_t i = 0; i < n; i++) w[i] /= sum;
  return n;
}

static bool greedy(const velo_sampler *s) { return !(s->p.temperature > 0.0f); }

int32_t velo_sampler_sample(velo_sampler *s, const float *logits, int32_t n_vocab) {
  if (!s || !logits || n_vocab <= 0 || !reserve(s, (size_t)n_vocab)) return -1;
  load_and_penalize(s, logits, n_vocab);
  if (greedy(s)) return argmax(s->c, n_vocab);

  size_t n = filter(s, (size_t)n_vocab, false);
  /* 6. draw: the first candidate whose cumulative probability exceeds u. */
  double u = next_double(s), cum = 0.0;
  for (size_t i = 0; i < n; i++) {
    cum += s->w[i];
    if (u < cum) return s->c[i].id;
  }
  /* Rounding left u above the total: the last candidate with weight. */
  for (size_t i = n; i-- > 0;)
    if (s->w[i] > 0.0) return s->c[i].id;
  return s->c[0].id;
}

size_t velo_sampler_candidates(velo_sampler *s, const float *logits, int32_t n_vocab,
                               int32_t *ids, float *probs, size_t cap) {
  if (!s || !logits || n_vocab <= 0 || !reserve(s, (size_t)n_vocab)) return 0;
  load_and_penalize(s, logits, n_vocab);
  if (greedy(s)) {
    if (cap > 0) {
      if (ids) ids[0] = argmax(s->c, n_vocab);
      if (probs) probs[0] = 1.0f;
    }
    return 1;
  }
  size_t n = filter(s, (size_t)n_vocab, true);
  for (size_t i = 0; i < n && i < cap; i++) {
    if (ids) ids[i] = s->c[i].id;
    if (probs) probs[i] = (float)s->w[i];
  }
  return n;
}
