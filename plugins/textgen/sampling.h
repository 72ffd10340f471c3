/*
 * sampling.h - choosing the next token from the logits: greedy decoding,
 * or temperature sampling with top-k, top-p (nucleus), min-p and a repeat
 * penalty, from a seeded random stream.
 *
 * The pipeline, in the order llama.cpp's default sampler chain applies it:
 *   1. repeat penalty over the last repeat_last_n accepted tokens: each
 *      distinct token in that window has its logit divided by
 *      repeat_penalty if it is positive, multiplied by it if it is <= 0
 *      (Keskar et al. 2019, "CTRL", as llama.cpp applies it);
 *   2. top-k: keep the k largest logits (Fan et al. 2018);
 *   3. top-p: keep the smallest prefix of the candidates sorted by
 *      probability whose mass reaches p (Holtzman et al. 2019);
 *   4. min-p: keep the candidates whose probability is at least min_p times
 *      the largest one's, i.e. logit >= max_logit + ln(min_p);
 *   5. temperature: divide the logits by it;
 *   6. draw from the softmax of what is left.
 * Probabilities in steps 3 and 4 are the softmax of the (penalized) logits
 * over the candidates still in the set, before temperature.  Candidates
 * are ordered by logit, then by lower id, so every step is deterministic.
 * temperature <= 0 is greedy decoding: the largest penalized logit, lowest
 * id on ties; steps 2-6 are skipped and no random number is used.
 *
 * Random numbers: xoshiro256** (Blackman & Vigna 2018) seeded through
 * splitmix64 from the 64-bit seed, as its authors recommend; a draw uses
 * the top 53 bits as a double in [0, 1).  The same seed and the same
 * sequence of logits and accepted tokens give the same tokens on every
 * machine (the arithmetic is IEEE double, no platform RNG).
 *
 * Thread-safety: a velo_sampler belongs to one sequence; calls on the same
 * sampler must not overlap, different samplers are independent.
 */
#ifndef VELO_TEXTGEN_SAMPLING_H
#define VELO_TEXTGEN_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct velo_sampler_params {
  float temperature;     /* <= 0: greedy.  Default 1. */
  int32_t top_k;         /* <= 0 or >= n_vocab: off.  Default 0. */
  float top_p;           /* >= 1: off; <= 0 keeps only the top token.  Default 1. */
  float min_p;           /* <= 0: off; >= 1 keeps only the top logit(s).  Default 0. */
  float repeat_penalty;  /* 1 or <= 0: off.  Default 1. */
  int32_t repeat_last_n; /* window of accepted tokens; 0 off, < 0 all of them.  Default 64. */
  uint64_t seed;         /* PRNG seed.  Default 0. */
} velo_sampler_params;

typedef struct velo_sampler velo_sampler;

/* Fills p with the defaults above (which sample at temperature 1 with no
 * filtering).  Never fails. */
void velo_sampler_params_default(velo_sampler_params *p);

/* Creates a sampler with a copy of *params and a random stream seeded from
 * params->seed.  Any finite parameter values are accepted (range checks with
 * user-facing messages are the caller's job); NaN values act as the default,
 * an infinite temperature as 1.  On success *out is owned by the caller
 * (velo_sampler_free).  Errors: INVALID_ARGUMENT for NULL arguments,
 * RESOURCE_EXHAUSTED if memory runs out (*out untouched). */
velo_status velo_sampler_create(const velo_sampler_params *params, velo_sampler **out,
                                velo_error *err);

/* Frees the sampler; NULL is a no-op. */
void velo_sampler_free(velo_sampler *s);

/* Appends token id to the history the repeat penalty looks at.  Call it for
 * every prompt token and every generated token (the sampler does not add
 * its own picks).  Keeps the last repeat_last_n ids (all if it is < 0).
 * Returns false only if memory runs out (the history is then unchanged). */
bool velo_sampler_accept(velo_sampler *s, int32_t id);

/* Clears the history and re-seeds the random stream with seed, so the
 * sampler can serve a new sequence. */
void velo_sampler_reset(velo_sampler *s, uint64_t seed);

/* Picks the next token from logits[0..n_vocab) (one float per token, any
 * real values; -INFINITY excludes a token; NaN counts as -INFINITY and
 * +INFINITY as the largest float).  logits is only read: the sampler copies
 * what it modifies into its own scratch space, which it keeps between calls.
 * Returns the id, or -1 if n_vocab <= 0 or memory runs out.  If every
 * logit is -INFINITY the lowest id is returned.  Uses one random number
 * unless greedy.  O(n_vocab log n_vocab) at worst (O(n_vocab log k) with
 * top-k); greedy is O(n_vocab + window). */
int32_t velo_sampler_sample(velo_sampler *s, const float *logits, int32_t n_vocab);

/* The candidate set sample() would draw from now: runs steps 1-5 on
 * logits without drawing or touching the random stream, and writes up to
 * cap candidates, most probable first (ties: lower id), to ids[] and their
 * final probabilities (after temperature, summing to 1 over the whole set)
 * to probs[] (either may be NULL).  Returns the size of the whole set, or 0
 * if n_vocab <= 0 or memory runs out.  For greedy the set is the single
 * chosen token with probability 1.  Useful for tests and for reporting
 * log-probabilities. */
size_t velo_sampler_candidates(velo_sampler *s, const float *logits, int32_t n_vocab,
                               int32_t *ids, float *probs, size_t cap);

/* The next raw 64-bit output of the sampler's xoshiro256** stream (for
 * tests; sample() draws from the same stream). */
uint64_t velo_sampler_next_u64(velo_sampler *s);

#ifdef __cplusplus
}
#endif
#endif /* VELO_TEXTGEN_SAMPLING_H */
