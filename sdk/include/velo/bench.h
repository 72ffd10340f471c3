/*
 * velo/bench.h - the benchmark extension of a task plugin ("velo.bench.v1").
 *
 * Text-generation models offer it through velo_task_iface.get_extension so
 * that a tool (velo-bench, docs/performance.md) can time prefill and decode
 * through exactly the forward pass the serving engine runs, without the
 * gRPC server, the scheduler or the sampler in the way.  The timings are
 * taken inside the plugin with CLOCK_MONOTONIC around the forward passes
 * only: nothing of the caller's (allocation, prompt building) is counted.
 *
 * A model used for benchmarking must not serve requests at the same time:
 * the tool that loads it owns it.  run() refuses (FAILED_PRECONDITION) when
 * the model has requests running or queued as it starts, and runs are
 * serialised with one another, but a request submitted while a run is in
 * progress is not held off: do not do that.
 *
 * Usage (a tool that loaded model m through task iface t):
 *
 *   const velo_bench_ext *b = t->get_extension(m, VELO_BENCH_EXTENSION);
 *   int32_t ids[128];
 *   b->make_prompt(m, 1234, ids, 128, &err);
 *   velo_bench_timing tm = {.struct_size = sizeof tm};
 *   b->run(m, ids, 128, 0, &tm, &err);    // prefill of 128 tokens
 *   double pp = 128 / tm.prefill_s;       // tokens per second
 */
#ifndef VELO_BENCH_H
#define VELO_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"
#include "velo/task.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VELO_BENCH_EXTENSION "velo.bench.v1"

/* Prompt tokens per forward pass during run()'s prefill: a longer prompt
 * is computed in chunks of this many (llama.cpp's default micro-batch). */
#define VELO_BENCH_PREFILL_CHUNK 512

/* What one run() measured.  The caller sets struct_size; the plugin fills
 * every member that struct_size covers. */
typedef struct velo_bench_timing {
  uint32_t struct_size;    /* sizeof(velo_bench_timing) as the caller compiled it */
  double prefill_s;        /* seconds, CLOCK_MONOTONIC, of the prompt's forward passes */
  double decode_s;         /* seconds of the n_gen one-token forward passes (greedy) */
  int32_t prefill_passes;  /* forward passes the prompt took (ceil(n / chunk)) */
  int32_t last_token;      /* the last greedy token id (-1 if n_gen was 0): a cheap
                              check that two builds compute the same thing */
  uint64_t kv_cache_bytes; /* K+V bytes of the run's private KV cache */
} velo_bench_timing;

typedef struct velo_bench_ext {
  uint32_t struct_size; /* sizeof(velo_bench_ext) */

  /* Fills ids[0..n) with a prompt that is the same for the same model,
   * seed and n: the BOS token first when the model adds one to prompts,
   * then token ids drawn uniformly from the model's ordinary text tokens
   * (type "normal" in tokenizer.ggml.token_type, never BOS, EOS, an
   * end-of-generation, unknown, padding, byte or control token), so every
   * id is valid input.  n >= 1.  FAILED_PRECONDITION if the vocabulary has
   * no ordinary token.  Thread-safe. */
  velo_status (*make_prompt)(velo_model *model, uint64_t seed, int32_t *ids, size_t n,
                             velo_error *err);

  /* Runs prompt[0..n_prompt) (borrowed for the call; n_prompt >= 1) from
   * an empty private KV cache of n_prompt + n_gen positions, in forward
   * passes of up to VELO_BENCH_PREFILL_CHUNK tokens (timed as prefill),
   * then n_gen >= 0 decode steps of one token each, every step feeding the
   * greedy (argmax) token of the one before (timed as decode).  The cache
   * is freed before returning.  Fills *out.
   * Errors: INVALID_ARGUMENT (n_prompt 0, n_gen < 0, a token id outside
   * the vocabulary, more than INT32_MAX positions), FAILED_PRECONDITION
   * (the model is serving requests), RESOURCE_EXHAUSTED (the cache or the
   * activations do not fit), and the backend's own errors.
   * Thread-safety: runs on the calling thread; concurrent runs on any
   * model are serialised.  Blocks for as long as the run takes. */
  velo_status (*run)(velo_model *model, const int32_t *prompt, size_t n_prompt, int32_t n_gen,
                     velo_bench_timing *out, velo_error *err);
} velo_bench_ext;

#ifdef __cplusplus
}
#endif
#endif /* VELO_BENCH_H */
