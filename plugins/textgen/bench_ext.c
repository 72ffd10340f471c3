/*
 * bench_ext.c - the benchmark extension of the text-generation plugin
 * ("velo.bench.v1", velo/bench.h): a reproducible random prompt of
 * ordinary tokens, and prefill and decode timed through llama_forward, the
 * single-sequence form of llama_decode, which is the forward pass the
 * serving engine runs.  Each run gets a private KV cache that the serving
 * pool never sees, and frees it at the end.
 *
 * The forward pass uses the llama model's activation scratch, which
 * belongs to the engine thread while it serves; a benchmark therefore runs
 * only on a model with no requests (checked through the engine's counters
 * as the run starts) and runs are serialised by one lock.  See velo/bench.h
 * for the contract.
 */
#include "bench_ext.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "textgen.h"

/* Serialises run() across every model of the plugin: two benchmarks in one
 * process would only measure each other. */
static pthread_mutex_t bench_lock = PTHREAD_MUTEX_INITIALIZER;

/* Seconds on CLOCK_MONOTONIC.  Never fails. */
static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The next value of a SplitMix64 stream (Steele, Lea and Flood 2014):
 * a full-period generator whose output is fixed by the seed alone. */
static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* True if id is an ordinary text token: type normal, and none of the
 * special ids (BOS, EOS, unknown, padding, end of generation). */
static bool ordinary_token(const velo_tokenizer *tok, int32_t id) {
  if (velo_tokenizer_token_type(tok, id) != VELO_TOKEN_NORMAL) return false;
  if (velo_tokenizer_is_eog(tok, id)) return false;
  return id != velo_tokenizer_bos(tok) && id != velo_tokenizer_eos(tok) &&
         id != velo_tokenizer_unk(tok) && id != velo_tokenizer_pad(tok);
}

/* velo_bench_ext.make_prompt: see velo/bench.h.  O(vocabulary + n);
 * allocates a candidate list for the call (RESOURCE_EXHAUSTED if it
 * cannot).  ids is untouched on failure. */
static velo_status bench_make_prompt(velo_model *m, uint64_t seed, int32_t *ids, size_t n,
                                     velo_error *err) {
  if (!ids || n == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "make_prompt: the prompt must have at least 1 token, got %zu", n);
  const velo_tokenizer *tok = textgen_model_tokenizer(m);
  int32_t n_vocab = velo_tokenizer_n_vocab(tok);
  int32_t *cand = malloc((size_t)n_vocab * sizeof *cand);
  if (!cand) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  size_t n_cand = 0;
  for (int32_t id = 0; id < n_vocab; id++)
    if (ordinary_token(tok, id)) cand[n_cand++] = id;
  if (n_cand == 0) {
    free(cand);
    return velo_error_set(err, VELO_FAILED_PRECONDITION,
                          "make_prompt: the vocabulary of %d tokens has no ordinary (normal, "
                          "non-special) token to build a prompt from", n_vocab);
  }
  size_t i = 0;
  if (velo_tokenizer_add_bos(tok) && velo_tokenizer_bos(tok) >= 0) ids[i++] = velo_tokenizer_bos(tok);
  uint64_t state = seed;
  for (; i < n; i++) ids[i] = cand[splitmix64(&state) % n_cand]; /* bias < n_cand / 2^64 */
  free(cand);
  return VELO_OK;
}

/* FAILED_PRECONDITION if the engine has requests running or queued (its
 * counters, VELO_STATS_EXTENSION), else OK. */
static velo_status check_idle(velo_model *m, velo_error *err) {
  const velo_stats_ext *se = textgen_get_extension(m, VELO_STATS_EXTENSION);
  if (!se) return VELO_OK;
  velo_stat stats[64];
  size_t n = se->read(m, stats, sizeof stats / sizeof *stats);
  if (n > sizeof stats / sizeof *stats) n = sizeof stats / sizeof *stats;
  int64_t busy = 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(stats[i].name, "requests_running") == 0 || strcmp(stats[i].name, "requests_queued") == 0)
      busy += stats[i].value;
  if (busy > 0)
    return velo_error_set(err, VELO_FAILED_PRECONDITION,
                          "run: the model is serving (%lld request%s running or queued); a "
                          "benchmark needs a model of its own", (long long)busy, busy == 1 ? "" : "s");
  return VELO_OK;
}

/* Index of the largest of v[0..n) (the first one on ties); n >= 1. */
static int32_t argmax(const float *v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return (int32_t)best;
}

/* Copies what the caller's struct_size covers of *full into *out, keeping
 * out->struct_size. */
static void deliver(velo_bench_timing *out, const velo_bench_timing *full) {
  uint32_t size = out->struct_size < sizeof *full ? out->struct_size : (uint32_t)sizeof *full;
  if (size > sizeof out->struct_size)
    memcpy((char *)out + sizeof out->struct_size, (const char *)full + sizeof full->struct_size,
           size - sizeof out->struct_size);
}

/* The timed part of run(): prefill in chunks, then n_gen greedy steps,
 * into a new KV cache of n_prompt + n_gen positions (freed here).  Called
 * with bench_lock held and the arguments checked. */
static velo_status timed_run(llama_model *llm, const int32_t *prompt, int32_t n_prompt, int32_t n_gen,
                             velo_bench_timing *t, velo_error *err) {
  int64_t n_vocab = llama_model_hparams(llm)->n_vocab;
  int32_t chunk = n_prompt < VELO_BENCH_PREFILL_CHUNK ? n_prompt : VELO_BENCH_PREFILL_CHUNK;
  velo_status st = llama_model_reserve(llm, chunk, err);
  if (st != VELO_OK) return st;
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  if (!logits) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  llama_kv *kv = NULL;
  int64_t n_pos = (int64_t)n_prompt + n_gen;
  if ((st = llama_kv_create(llm, n_pos, &kv, err)) != VELO_OK) {
    free(logits);
    return st;
  }
  t->kv_cache_bytes = (uint64_t)llama_kv_bytes_per_token(llm) * (uint64_t)n_pos;
  t->last_token = -1;

  double t0 = now_s();
  for (int32_t i = 0; i < n_prompt && st == VELO_OK; i += chunk) {
    int32_t k = n_prompt - i < chunk ? n_prompt - i : chunk;
    st = llama_forward(llm, kv, prompt + i, k, i, logits, err);
    t->prefill_passes++;
  }
  t->prefill_s = now_s() - t0;

  if (st == VELO_OK && n_gen > 0) {
    int32_t tok = argmax(logits, n_vocab);
    t0 = now_s();
    for (int32_t g = 0; g < n_gen && st == VELO_OK; g++) {
      st = llama_forward(llm, kv, &tok, 1, (int64_t)n_prompt + g, logits, err);
      if (st == VELO_OK) tok = argmax(logits, n_vocab);
    }
    t->decode_s = now_s() - t0;
    t->last_token = tok;
  }
  llama_kv_free(kv);
  free(logits);
  return st;
}

/* velo_bench_ext.run: see velo/bench.h. */
static velo_status bench_run(velo_model *m, const int32_t *prompt, size_t n_prompt, int32_t n_gen,
                             velo_bench_timing *out, velo_error *err) {
  if (!out || out->struct_size < sizeof out->struct_size)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "run: out is NULL or has no struct_size");
  if (!prompt || n_prompt == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "run: the prompt must have at least 1 token, got 0");
  if (n_gen < 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "run: n_gen must be >= 0, got %d", (int)n_gen);
  if (n_prompt > (size_t)(INT32_MAX - n_gen))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "run: %zu prompt tokens + %d generated exceed %d positions", n_prompt,
                          (int)n_gen, INT32_MAX);
  pthread_mutex_lock(&bench_lock);
  velo_bench_timing t = {.struct_size = sizeof t};
  velo_status st = check_idle(m, err);
  if (st == VELO_OK) st = timed_run(textgen_model_llama(m), prompt, (int32_t)n_prompt, n_gen, &t, err);
  pthread_mutex_unlock(&bench_lock);
  if (st == VELO_OK) deliver(out, &t);
  return st;
}

const velo_bench_ext textgen_bench_ext = {
    .struct_size = sizeof(velo_bench_ext),
    .make_prompt = bench_make_prompt,
    .run = bench_run,
};
