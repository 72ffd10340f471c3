/*
 * llama.h - the llama architecture for the text-generation plugin: reads
 * hyperparameters and weights from GGUF metadata and runs the forward pass
 * as backend graphs.
 *
 * Architecture (Touvron et al. 2023, "LLaMA"; GGUF tensor names from the
 * GGUF spec): token embedding -> n_layer x [RMSNorm, Q/K/V projections,
 * RoPE, grouped-query attention over a KV cache, output projection,
 * residual; RMSNorm, SwiGLU feed-forward, residual] -> RMSNorm -> output
 * projection (tied to the embedding when output.weight is absent).
 *
 * Thread-safety: a llama_model is read-only after load; llama_forward uses
 * the model's scratch space, so one thread at a time calls it (the
 * plugin's engine thread).
 */
#ifndef VELO_TEXTGEN_LLAMA_H
#define VELO_TEXTGEN_LLAMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/plugin.h"

typedef struct llama_hparams {
  char arch[32];        /* general.architecture */
  int64_t n_vocab;      /* rows of token_embd */
  int64_t n_ctx_train;  /* <arch>.context_length */
  int64_t n_embd;       /* model width */
  int64_t n_layer;
  int64_t n_ff;         /* feed-forward width */
  int64_t n_head;
  int64_t n_head_kv;    /* GQA: n_head % n_head_kv == 0 */
  int64_t head_dim;     /* n_embd / n_head */
  int64_t n_rot;        /* rotated dims per head (rope.dimension_count) */
  int32_t rope_mode;    /* VELO_ROPE_NORMAL (llama) */
  float rope_freq_base;
  float rope_freq_scale;
  float rms_eps;
} llama_hparams;

typedef struct llama_model llama_model;

/* Loads the model in the open GGUF file g onto the given backend instance.
 * Validates every hyperparameter and every tensor's presence, dtype and
 * shape; errors name the key or tensor (INVALID_ARGUMENT, UNIMPLEMENTED for
 * an unsupported architecture or dtype).  g must stay open until
 * llama_model_free (weights may be used in place from the mapping). */
velo_status llama_model_load(const velo_host *host, const velo_gguf *g,
                             const velo_backend_iface *be, velo_backend_instance *inst,
                             llama_model **out, velo_error *err);
void llama_model_free(llama_model *m);
const llama_hparams *llama_model_hparams(const llama_model *m);
/* The maximum number of tokens one llama_decode/llama_forward call takes
 * (64 after load; see llama_model_reserve). */
int32_t llama_model_max_batch(const llama_model *m);

/* Makes room for batches of up to max_batch tokens (1..4096), growing the
 * activation scratch.  RESOURCE_EXHAUSTED if the backend cannot allocate
 * it (the old size stays usable). */
velo_status llama_model_reserve(llama_model *m, int32_t max_batch, velo_error *err);

/* Bytes of K plus V that one token occupies over all layers (F32). */
size_t llama_kv_bytes_per_token(const llama_model *m);

/* ------------------------------------------------------------------ */
/* Paged KV memory and the batched forward pass                       */
/* ------------------------------------------------------------------ */

typedef struct llama_kv_pool llama_kv_pool;

/* Allocates K and V memory for n_slots token slots in every layer (F32,
 * llama_kv_bytes_per_token(m) * n_slots bytes) on the model's backend.
 * Which slot holds which token is the caller's business (kvpool.h).
 * RESOURCE_EXHAUSTED if the backend cannot allocate it. */
velo_status llama_kv_pool_create(llama_model *m, int64_t n_slots, llama_kv_pool **out,
                                 velo_error *err);
void llama_kv_pool_free(llama_kv_pool *kv);
int64_t llama_kv_pool_slots(const llama_kv_pool *kv);

/* One forward pass over tokens of one or more sequences.  All arrays are
 * borrowed for the call.
 *   tokens[t], pos[t]: token id and its position in its own sequence;
 *   slot[t]: the pool slot its K and V are written to (distinct in a
 *     batch, and not a slot any token of the batch reads as an earlier
 *     position);
 *   attn[t * attn_width ...]: (pos[t], b_0, b_1, ...): the block table of
 *     t's sequence, where logical position p lives in slot
 *     b_(p / block_size) * block_size + p % block_size; the table must
 *     cover positions 0..pos[t], the token's own slot included;
 *   out_rows[0..n_out): the tokens whose logits are wanted, in the order
 *     they are written to logits. */
typedef struct llama_batch {
  int32_t n_tok;           /* 1..llama_model_max_batch */
  const int32_t *tokens;
  const int32_t *pos;
  const int32_t *slot;
  const int32_t *attn;
  int32_t attn_width;      /* >= 2 */
  int32_t block_size;      /* >= 1 */
  int32_t n_out;           /* 0..n_tok */
  const int32_t *out_rows;
} llama_batch;

/* Runs batch b through the model, writing the new tokens' K/V into kv, and
 * stores n_out rows of n_vocab logits in logits (caller-owned,
 * n_out * n_vocab floats).  Each token's result depends only on its own
 * sequence (the backend's batch invariance permitting), never on the other
 * tokens of the batch.  INVALID_ARGUMENT for a token id outside the
 * vocabulary, a bad slot, position or table (the backend checks the
 * table); other backend errors as the backend reports them. */
velo_status llama_decode(llama_model *m, llama_kv_pool *kv, const llama_batch *b, float *logits,
                         velo_error *err);

/* ------------------------------------------------------------------ */
/* One sequence, contiguous cache (tests and tools)                   */
/* ------------------------------------------------------------------ */

/* A KV cache for one sequence of n_ctx positions: a pool of n_ctx slots
 * where position p is slot p. */
typedef struct llama_kv llama_kv;
velo_status llama_kv_create(llama_model *m, int64_t n_ctx, llama_kv **out, velo_error *err);
void llama_kv_free(llama_kv *kv);
int64_t llama_kv_size(const llama_kv *kv);

/* Runs n_tok tokens (1..llama_model_max_batch) at positions pos0.. through
 * the model, writing their K/V into kv, and stores the logits of the LAST
 * token in logits[n_vocab] (caller-owned).  Token ids must be in
 * [0, n_vocab) and pos0 + n_tok <= kv size (INVALID_ARGUMENT otherwise).
 * Equivalent to llama_decode with one sequence. */
velo_status llama_forward(llama_model *m, llama_kv *kv, const int32_t *tokens, int32_t n_tok,
                          int64_t pos0, float *logits, velo_error *err);

#endif
