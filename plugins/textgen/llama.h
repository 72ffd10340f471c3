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
typedef struct llama_kv llama_kv; /* one sequence's KV cache */

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
/* The maximum number of tokens one llama_forward call takes. */
int32_t llama_model_max_batch(const llama_model *m);

/* Allocates a KV cache for n_ctx positions on the backend (F32 K and V).
 * RESOURCE_EXHAUSTED if the backend cannot allocate it. */
velo_status llama_kv_create(llama_model *m, int64_t n_ctx, llama_kv **out, velo_error *err);
void llama_kv_free(llama_kv *kv);
int64_t llama_kv_size(const llama_kv *kv);

/* Runs n_tok tokens (1..llama_model_max_batch) at positions pos0.. through
 * the model, writing their K/V into kv, and stores the logits of the LAST
 * token in logits[n_vocab] (caller-owned).  Token ids must be in
 * [0, n_vocab) and pos0 + n_tok <= kv size (INVALID_ARGUMENT otherwise). */
velo_status llama_forward(llama_model *m, llama_kv *kv, const int32_t *tokens, int32_t n_tok,
                          int64_t pos0, float *logits, velo_error *err);

#endif
