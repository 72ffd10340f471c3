/*
 * engine.c - the text-generation model: load/unload, request validation,
 * and the serving engine: one thread per model that batches every running
 * sequence into one forward pass per step (continuous batching) over a
 * paged KV cache with prefix caching.
 *
 * Request path: submit() validates and tokenizes on the caller's thread and
 * queues a sequence.  The wait queue is bounded (max_queue_size beyond the
 * running ones; past it RESOURCE_EXHAUSTED, never queued), ordered by
 * request priority (higher first, equal FIFO).  Every step the engine:
 *   1. ends queued requests whose call was cancelled or expired (so a
 *      deadline is honoured while a request waits);
 *   2. ends running sequences whose call has ended; their KV blocks go
 *      back to the pool at once;
 *   3. admits queued sequences while fewer than max_active run and the
 *      pool has blocks for their prompt, reusing cached blocks of an equal
 *      prompt prefix (prefix caching: only the rest is computed);
 *   4. plans one batch of at most llama_model_max_batch tokens: one token
 *      for every decoding sequence, and the rest of the budget as prompt
 *      chunks for prefilling ones (in rank order: priority, then arrival),
 *      so a long prompt never stalls the others' decoding;
 *   5. gives every planned sequence the KV blocks its new tokens need; if
 *      the pool is empty it preempts the lowest-ranked sequence: its blocks
 *      are released (the full ones stay in the prefix cache) and it goes
 *      back to the head of its priority in the queue, to be recomputed
 *      from its tokens later and continue exactly where it was (the
 *      kernels are batch-invariant, so recomputed K/V are bit-identical);
 *   6. runs the batch (llama_decode), registers blocks that became full in
 *      the prefix cache, samples the next token of every sequence whose
 *      tokens are all computed, and streams it.
 * A sequence is a token list (prompt, then generated tokens) of which the
 * first n_computed have K/V in the cache: prefill, decode, recompute after
 * preemption and a prefix-cache hit are the same mechanism.
 *
 * Output path per generated token: piece bytes -> UTF-8 assembler (whole,
 * valid characters only) -> stop-string matcher (holds back a possible
 * stop prefix) -> one response with the released text and the token id.
 *
 * Thread-safety: the queue, counters and snapshot are under model->lock;
 * everything else (pool, active list, llama scratch) belongs to the engine
 * thread.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvpool.h"
#include "params.h"
#include "sampling.h"
#include "textgen.h"
#include "textstream.h"
#include "bench_ext.h"

#define SRC "text-generation"
#define KV_BLOCK_SIZE 16                      /* token slots per KV block */
#define DEFAULT_POOL_BYTES ((uint64_t)1 << 30) /* default pool cap: 1 GiB */
/* Slots are int32 in a batch: the largest pool, in whole blocks. */
#define KV_MAX_TOKENS ((int64_t)(INT32_MAX / KV_BLOCK_SIZE - 1) * KV_BLOCK_SIZE)

typedef struct seq {
  struct seq *next;
  velo_call *call;
  bool streaming;
  uint64_t serial;         /* arrival order; for log lines and ranking */
  int32_t *toks;           /* prompt (BOS included) then generated tokens */
  size_t n_toks, cap_toks;
  size_t n_prompt;
  size_t n_computed;       /* leading tokens whose K/V are in the cache */
  int32_t *blocks;         /* block table: KV block of positions [i*bs, (i+1)*bs) */
  size_t n_blocks, cap_blocks;
  size_t n_registered;     /* leading blocks offered to the prefix cache */
  int64_t max_tokens;      /* effective: clamped to the context */
  int64_t n_gen;           /* tokens generated so far */
  bool ignore_eos;
  int64_t priority;        /* admission order: higher first */
  velo_sampler *sampler;
  velo_utf8_stream utf8;
  velo_stop_matcher *stop;
  /* Not yet sent: ids and text (streaming sends after every token; unary
   * keeps everything for the final response). */
  int32_t *ids;
  size_t n_ids, cap_ids;
  char *text;
  size_t text_len, text_cap;
  /* This step's plan. */
  int32_t take;            /* tokens computed this step */
  int32_t out_row;         /* logits row, -1 if none */
} seq;

/* Engine counters (VELO_STATS_EXTENSION); see docs/operations.md. */
enum {
  ST_KV_BLOCK_SIZE, ST_KV_BLOCKS_TOTAL, ST_KV_BLOCKS_USED, ST_KV_BLOCKS_CACHED, ST_KV_BLOCKS_FREE,
  ST_KV_CACHE_BYTES, ST_CONTEXT_LENGTH, ST_REQUESTS_RUNNING, ST_REQUESTS_QUEUED,
  ST_PREFIX_QUERIES, ST_PREFIX_HITS, ST_PREFIX_HIT_TOKENS, ST_PREEMPTIONS, ST_ENGINE_STEPS,
  ST_BATCH_TOKENS, ST_COUNT
};
static const char *const stat_names[ST_COUNT] = {
    "kv_block_size", "kv_blocks_total", "kv_blocks_used", "kv_blocks_cached", "kv_blocks_free",
    "kv_cache_bytes", "context_length", "requests_running", "requests_queued",
    "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_tokens", "preemptions",
    "engine_steps", "batch_tokens"};

typedef struct velo_model {
  const velo_host *host;
  char *name;
  velo_gguf *gguf;
  velo_tokenizer *tok;
  llama_model *llama;
  int64_t n_ctx;
  int32_t n_vocab;
  size_t max_token_bytes; /* longest token text in the vocabulary */
  velo_io_desc inputs[1];
  velo_io_desc outputs[2];

  /* Engine thread only. */
  kv_pool *pool;          /* block bookkeeping */
  llama_kv_pool *kvmem;   /* the K/V memory of the pool's slots */
  int64_t pool_slots;
  int32_t max_batch;      /* tokens per forward pass */
  float *logits;          /* max_active rows of n_vocab */
  int32_t *b_tokens, *b_pos, *b_slot, *b_rows, *b_attn; /* batch arrays */
  size_t b_attn_cap;      /* int32s in b_attn */
  seq *active;            /* running, in rank order */
  size_t n_active;
  int64_t c_queries, c_hits, c_hit_tokens, c_preemptions, c_steps, c_batch_tokens;

  pthread_mutex_t lock;
  pthread_cond_t wake;
  seq *queue_head, *queue_tail; /* waiting for admission (under lock), by rank */
  size_t n_queued;
  size_t n_running; /* taken from the queue, not yet ended (under lock) */
  size_t max_queue, max_active; /* model config: max_queue_size, max_active */
  bool stopping;
  pthread_t thread;
  bool thread_started;
  uint64_t next_serial;
  int64_t stats[ST_COUNT]; /* snapshot (under lock) */
} velo_model;

/* ------------------------------------------------------------------ */
/* Sequences                                                           */
/* ------------------------------------------------------------------ */

/* Does a rank before b?  Higher priority first, then earlier arrival. */
static bool ranks_before(const seq *a, const seq *b) {
  return a->priority != b->priority ? a->priority > b->priority : a->serial < b->serial;
}

/* Returns s's KV blocks to the pool (engine thread). */
static void seq_release_blocks(velo_model *m, seq *s) {
  for (size_t i = 0; i < s->n_blocks; i++) kv_pool_release(m->pool, s->blocks[i]);
  s->n_blocks = 0;
  s->n_registered = 0;
  s->n_computed = 0;
}

static void seq_free(velo_model *m, seq *s) {
  if (!s) return;
  if (s->n_blocks) seq_release_blocks(m, s);
  free(s->toks);
  free(s->blocks);
  velo_sampler_free(s->sampler);
  velo_stop_matcher_free(s->stop);
  free(s->ids);
  free(s->text);
  free(s);
}

static bool append_text(seq *s, const char *t, size_t n) {
  if (!n) return true;
  if (s->text_len + n > s->text_cap) {
    size_t cap = s->text_cap ? s->text_cap : 256;
    while (cap < s->text_len + n) cap *= 2;
    char *nt = realloc(s->text, cap);
    if (!nt) return false;
    s->text = nt;
    s->text_cap = cap;
  }
  memcpy(s->text + s->text_len, t, n);
  s->text_len += n;
  return true;
}

/* Appends v to a growing int32 array. */
static bool push_i32(int32_t **arr, size_t *n, size_t *cap, int32_t v) {
  if (*n == *cap) {
    size_t nc = *cap ? 2 * *cap : 64;
    int32_t *na = realloc(*arr, nc * sizeof *na);
    if (!na) return false;
    *arr = na;
    *cap = nc;
  }
  (*arr)[(*n)++] = v;
  return true;
}

/* Sends what is pending as one response (final or not).  For a final
 * response, status and message say how the call ends.  Returns the host's
 * answer (CANCELLED once the client has gone). */
static velo_status send_response(velo_model *m, seq *s, bool final, const char *finish_reason,
                                 velo_status status, const char *message) {
  if (!final && s->text_len == 0 && s->n_ids == 0) return VELO_OK;
  char *bytes = malloc(4 + s->text_len);
  if (!bytes) {
    final = true;
    status = VELO_RESOURCE_EXHAUSTED;
    message = "out of memory while sending a response";
  }
  velo_io_tensor out[2];
  int64_t text_shape[1] = {1}, ids_shape[1] = {(int64_t)s->n_ids};
  size_t n_out = 0;
  if (bytes && status == VELO_OK) {
    uint32_t len = (uint32_t)s->text_len;
    bytes[0] = (char)(len & 0xff);
    bytes[1] = (char)(len >> 8 & 0xff);
    bytes[2] = (char)(len >> 16 & 0xff);
    bytes[3] = (char)(len >> 24 & 0xff);
    if (s->text_len) memcpy(bytes + 4, s->text, s->text_len);
    out[0] = (velo_io_tensor){.struct_size = sizeof out[0], .name = "text_output",
                              .datatype = VELO_DATATYPE_BYTES, .n_dims = 1, .shape = text_shape,
                              .data = bytes, .size = 4 + s->text_len};
    out[1] = (velo_io_tensor){.struct_size = sizeof out[1], .name = "token_ids",
                              .datatype = VELO_DATATYPE_INT32, .n_dims = 1, .shape = ids_shape,
                              .data = s->ids, .size = s->n_ids * sizeof(int32_t)};
    n_out = 2;
  }
  velo_param params[3];
  size_t n_params = 0;
  if (final && status == VELO_OK) {
    params[0] = (velo_param){.struct_size = sizeof params[0], .key = "finish_reason", .type = VELO_PARAM_STRING};
    params[0].value.s.ptr = finish_reason;
    params[0].value.s.len = strlen(finish_reason);
    params[1] = (velo_param){.struct_size = sizeof params[1], .key = "prompt_tokens", .type = VELO_PARAM_INT64};
    params[1].value.i = (int64_t)s->n_prompt;
    params[2] = (velo_param){.struct_size = sizeof params[2], .key = "completion_tokens", .type = VELO_PARAM_INT64};
    params[2].value.i = s->n_gen;
    n_params = 3;
  }
  velo_response r = {.struct_size = sizeof r, .n_outputs = n_out, .outputs = out,
                     .n_params = n_params, .params = params, .final = final,
                     .status = status, .error_message = message};
  velo_status st = m->host->respond(s->call, &r);
  free(bytes);
  s->text_len = 0;
  s->n_ids = 0;
  return st;
}

/* True when all n logits are finite (one pass over the row: a few
 * microseconds for a 32000-token vocabulary, against milliseconds for the
 * forward pass that made it). */
static bool logits_finite(const float *lg, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    if (!isfinite(lg[i])) return false;
  return true;
}

/* Ends s: flushes held text (unless a stop string ended it), sends the
 * final response, frees s and its blocks. */
static void seq_finish(velo_model *m, seq *s, const char *finish_reason) {
  char tail[8];
  size_t n = velo_utf8_stream_flush(&s->utf8, tail);
  const char *out;
  size_t out_len;
  bool stopped = false;
  if (n) {
    velo_error e;
    velo_error_init(&e);
    if (velo_stop_matcher_feed(s->stop, tail, n, &out, &out_len, &stopped, &e) == VELO_OK)
      append_text(s, out, out_len);
  }
  velo_stop_matcher_finish(s->stop, &out, &out_len);
  append_text(s, out, out_len);
  send_response(m, s, true, finish_reason, VELO_OK, NULL);
  seq_free(m, s);
}

static void seq_fail(velo_model *m, seq *s, velo_status status, const char *message) {
  s->text_len = 0;
  s->n_ids = 0;
  send_response(m, s, true, "", status, message);
  seq_free(m, s);
}

static void log_cancelled(velo_model *m, const seq *s) {
  m->host->log(VELO_LOG_INFO, SRC,
               "model %s: request %llu cancelled after %lld tokens, KV cache freed (%zu blocks)",
               m->name, (unsigned long long)s->serial, (long long)s->n_gen, s->n_blocks);
}

/* ------------------------------------------------------------------ */
/* Tokens out                                                          */
/* ------------------------------------------------------------------ */

/* Handles one sampled token.  Returns the finish reason when the sequence
 * is done, else NULL. */
static const char *take_token(velo_model *m, seq *s, int32_t id, velo_status *st) {
  *st = VELO_OK;
  if (!s->ignore_eos && velo_tokenizer_is_eog(m->tok, id)) return "stop";
  velo_sampler_accept(s->sampler, id);
  s->n_gen++;
  if (!push_i32(&s->ids, &s->n_ids, &s->cap_ids, id) ||
      !push_i32(&s->toks, &s->n_toks, &s->cap_toks, id)) {
    *st = VELO_RESOURCE_EXHAUSTED;
    return "";
  }
  size_t plen;
  const char *piece = velo_tokenizer_piece(m->tok, id, false, &plen);
  char buf[VELO_UTF8_STREAM_OUT_MAX(64)];
  char *big = NULL, *ubuf = buf;
  if (VELO_UTF8_STREAM_OUT_MAX(plen) > sizeof buf) {
    big = malloc(VELO_UTF8_STREAM_OUT_MAX(plen));
    if (!big) {
      *st = VELO_RESOURCE_EXHAUSTED;
      return "";
    }
    ubuf = big;
  }
  size_t n = velo_utf8_stream_feed(&s->utf8, piece, plen, ubuf);
  const char *out;
  size_t out_len;
  bool stopped = false;
  velo_error e;
  velo_error_init(&e);
  velo_status fst = velo_stop_matcher_feed(s->stop, ubuf, n, &out, &out_len, &stopped, &e);
  free(big);
  if (fst != VELO_OK || !append_text(s, out, out_len)) {
    *st = VELO_RESOURCE_EXHAUSTED;
    return "";
  }
  if (stopped) return "stop";
  if (s->n_gen >= s->max_tokens) return "length";
  if (s->streaming && send_response(m, s, false, NULL, VELO_OK, NULL) == VELO_CANCELLED)
    return "cancelled";
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Queue (under m->lock)                                               */
/* ------------------------------------------------------------------ */

/* Inserts s by rank: higher priority first; among equals by arrival, so a
 * preempted sequence goes back before the ones that came after it. */
static void queue_insert(velo_model *m, seq *s) {
  s->next = NULL;
  if (!m->queue_tail || !ranks_before(s, m->queue_tail)) {
    if (m->queue_tail) m->queue_tail->next = s;
    else m->queue_head = s;
    m->queue_tail = s;
  } else {
    seq **link = &m->queue_head;
    while (!ranks_before(s, *link)) link = &(*link)->next;
    s->next = *link;
    *link = s;
  }
  m->n_queued++;
}

/* ------------------------------------------------------------------ */
/* The engine                                                          */
/* ------------------------------------------------------------------ */

static size_t blocks_for(size_t n_tokens) { return (n_tokens + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE; }

/* Reuses cached blocks of s's leading tokens (prefix caching).  At least
 * the last token is always left to compute, so that its logits exist. */
static void seq_attach_prefix(velo_model *m, seq *s) {
  m->c_queries++;
  size_t max_blocks = (s->n_toks - 1) / KV_BLOCK_SIZE;
  kv_block_ref parent = KV_BLOCK_ROOT;
  size_t i = 0;
  for (; i < max_blocks; i++) {
    int32_t id = kv_pool_lookup(m->pool, parent, s->toks + i * KV_BLOCK_SIZE);
    if (id < 0) break;
    kv_pool_retain(m->pool, id);
    s->blocks[i] = id;
    parent = kv_pool_ref(m->pool, id);
  }
  s->n_blocks = s->n_registered = i;
  s->n_computed = i * KV_BLOCK_SIZE;
  if (i) {
    m->c_hits++;
    m->c_hit_tokens += (int64_t)s->n_computed;
  }
}

/* Adds s to the active list in rank order. */
static void active_insert(velo_model *m, seq *s) {
  seq **link = &m->active;
  while (*link && ranks_before(*link, s)) link = &(*link)->next;
  s->next = *link;
  *link = s;
  m->n_active++;
}

static void active_remove(velo_model *m, seq *s) {
  for (seq **link = &m->active; *link; link = &(*link)->next)
    if (*link == s) {
      *link = s->next;
      s->next = NULL;
      m->n_active--;
      return;
    }
}

/* Puts the lowest-ranked active sequence back in the queue, its blocks
 * released.  Returns it. */
static seq *preempt_last(velo_model *m) {
  seq *victim = m->active;
  while (victim && victim->next) victim = victim->next;
  if (!victim) return NULL;
  active_remove(m, victim);
  size_t held = victim->n_blocks;
  seq_release_blocks(m, victim);
  victim->take = 0;
  victim->out_row = -1;
  m->c_preemptions++;
  m->host->log(VELO_LOG_INFO, SRC,
               "model %s: KV cache pool full; request %llu (%zu tokens, %zu blocks) goes back to "
               "the queue and resumes when blocks free up",
               m->name, (unsigned long long)victim->serial, victim->n_toks, held);
  pthread_mutex_lock(&m->lock);
  m->n_running--;
  queue_insert(m, victim);
  pthread_mutex_unlock(&m->lock);
  return victim;
}

/* Gives s blocks up to n_tokens positions.  On an empty pool, preempts
 * lower-ranked sequences; returns false if s itself had to go (it is then
 * back in the queue) or cannot fit at all (then *fail is set). */
static bool seq_grow(velo_model *m, seq *s, size_t n_tokens, bool *fail) {
  *fail = false;
  size_t need = blocks_for(n_tokens);
  while (s->n_blocks < need) {
    int32_t id = kv_pool_alloc(m->pool);
    if (id < 0) {
      seq *last = m->active;
      while (last && last->next) last = last->next;
      if (last == s && m->active == s) {
        *fail = true; /* alone and still no room: cannot happen when pool >= n_ctx */
        return false;
      }
      if (preempt_last(m) == s) return false;
      continue;
    }
    s->blocks[s->n_blocks++] = id;
  }
  return true;
}

/* Offers s's newly full blocks to the prefix cache; a block equal to one
 * already cached is swapped for it (one copy kept). */
static void seq_register_full_blocks(velo_model *m, seq *s) {
  while ((s->n_registered + 1) * KV_BLOCK_SIZE <= s->n_computed) {
    size_t i = s->n_registered;
    kv_block_ref parent = i ? kv_pool_ref(m->pool, s->blocks[i - 1]) : KV_BLOCK_ROOT;
    const int32_t *toks = s->toks + i * KV_BLOCK_SIZE;
    int32_t other = kv_pool_lookup(m->pool, parent, toks);
    if (other >= 0 && other != s->blocks[i]) {
      kv_pool_retain(m->pool, other);
      kv_pool_release(m->pool, s->blocks[i]);
      s->blocks[i] = other;
    } else if (other < 0) {
      kv_pool_register(m->pool, s->blocks[i], parent, toks);
    }
    s->n_registered++;
  }
}

/* One step: plan, allocate, compute, sample.  Returns how many active
 * sequences ended. */
static size_t engine_step(velo_model *m) {
  size_t n_ended = 0;
  /* Calls that ended (client cancel, deadline, shutdown) leave now. */
  for (seq *s = m->active, *next; s; s = next) {
    next = s->next;
    if (m->host->call_cancelled(s->call)) {
      active_remove(m, s);
      log_cancelled(m, s);
      seq_fail(m, s, VELO_CANCELLED, "the request was cancelled");
      n_ended++;
    }
  }
  if (!m->active) return n_ended;

  /* Plan: decoders take one token each, prefillers share the rest. */
  int32_t n_decode = 0;
  for (seq *s = m->active; s; s = s->next)
    if (s->n_toks - s->n_computed == 1) n_decode++;
  int32_t prefill_budget = m->max_batch - n_decode; /* max_batch > max_active */
  for (seq *s = m->active; s; s = s->next) {
    size_t left = s->n_toks - s->n_computed;
    s->out_row = -1;
    if (left == 1) {
      s->take = 1;
    } else {
      s->take = left < (size_t)prefill_budget ? (int32_t)left : prefill_budget;
      prefill_budget -= s->take;
    }
  }
  /* Blocks, in rank order.  A preemption victim is the lowest-ranked
   * sequence, so it is never one already given its blocks this step
   * (unless it is the one asking); after a change, start over and skip
   * the sequences already served. */
  for (seq *s = m->active; s;) {
    if (s->take == 0 || s->n_blocks >= blocks_for(s->n_computed + (size_t)s->take)) {
      s = s->next;
      continue;
    }
    bool fail;
    if (seq_grow(m, s, s->n_computed + (size_t)s->take, &fail)) {
      s = s->next;
      continue;
    }
    if (fail) {
      active_remove(m, s);
      char msg[256];
      snprintf(msg, sizeof msg,
               "the KV cache pool of model '%s' (%lld tokens) cannot hold this request's %zu "
               "tokens", m->name, (long long)m->pool_slots, s->n_computed + (size_t)s->take);
      seq_fail(m, s, VELO_RESOURCE_EXHAUSTED, msg);
      n_ended++;
    }
    s = m->active;
  }
  /* Build the batch. */
  int32_t n_tok = 0, n_out = 0;
  size_t width = 2;
  for (seq *s = m->active; s; s = s->next)
    if (s->take && 1 + s->n_blocks > width) width = 1 + s->n_blocks;
  size_t need_attn = (size_t)m->max_batch * width;
  if (need_attn > m->b_attn_cap) {
    int32_t *na = realloc(m->b_attn, need_attn * sizeof *na);
    if (!na) {
      /* Nothing computed: fail every planned sequence rather than spin. */
      for (seq *s = m->active, *next; s; s = next) {
        next = s->next;
        active_remove(m, s);
        seq_fail(m, s, VELO_RESOURCE_EXHAUSTED, "out of memory while batching");
        n_ended++;
      }
      return n_ended;
    }
    m->b_attn = na;
    m->b_attn_cap = need_attn;
  }
  for (seq *s = m->active; s; s = s->next) {
    for (int32_t j = 0; j < s->take; j++) {
      size_t pos = s->n_computed + (size_t)j;
      m->b_tokens[n_tok] = s->toks[pos];
      m->b_pos[n_tok] = (int32_t)pos;
      m->b_slot[n_tok] = s->blocks[pos / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + (int32_t)(pos % KV_BLOCK_SIZE);
      int32_t *row = m->b_attn + (size_t)n_tok * width;
      row[0] = (int32_t)pos;
      memcpy(row + 1, s->blocks, s->n_blocks * sizeof *row);
      for (size_t k = 1 + s->n_blocks; k < width; k++) row[k] = 0;
      n_tok++;
    }
    if (s->take && s->n_computed + (size_t)s->take == s->n_toks) {
      s->out_row = n_out;
      m->b_rows[n_out++] = n_tok - 1;
    }
  }
  if (n_tok == 0) return n_ended;
  llama_batch b = {.n_tok = n_tok, .tokens = m->b_tokens, .pos = m->b_pos, .slot = m->b_slot,
                   .attn = m->b_attn, .attn_width = (int32_t)width, .block_size = KV_BLOCK_SIZE,
                   .n_out = n_out, .out_rows = m->b_rows};
  velo_error err;
  velo_error_init(&err);
  velo_status st = llama_decode(m->llama, m->kvmem, &b, m->logits, &err);
  m->c_steps++;
  m->c_batch_tokens += n_tok;
  if (st != VELO_OK) {
    /* Requests were validated at submit: a failure here is the server's
     * (backend or model), never the client's. */
    char msg[VELO_ERROR_MESSAGE_MAX + 64];
    snprintf(msg, sizeof msg, "model computation failed: %s", err.message);
    m->host->log(VELO_LOG_ERROR, SRC, "model %s: %s", m->name, msg);
    for (seq *s = m->active, *next; s; s = next) {
      next = s->next;
      if (!s->take) continue;
      active_remove(m, s);
      seq_fail(m, s, st == VELO_RESOURCE_EXHAUSTED ? st : VELO_INTERNAL, msg);
      n_ended++;
    }
    return n_ended;
  }
  /* Advance, cache full blocks, sample. */
  for (seq *s = m->active, *next; s; s = next) {
    next = s->next;
    if (!s->take) continue;
    s->n_computed += (size_t)s->take;
    s->take = 0;
    seq_register_full_blocks(m, s);
    if (s->out_row < 0) continue;
    const float *lg = m->logits + (size_t)s->out_row * (size_t)m->n_vocab;
    if (!logits_finite(lg, m->n_vocab)) {
      /* NaN or infinite weights (a corrupt file) or an overflow: never
       * sample from them (greedy would pick token 0 and report success) */
      char msg[256];
      snprintf(msg, sizeof msg,
               "model '%s' computed non-finite logits (NaN or infinity) at position %zu of this "
               "request: its weights hold NaN or infinite values, or the computation "
               "overflowed; the model file may be corrupt",
               m->name, s->n_computed - 1);
      m->host->log(VELO_LOG_ERROR, SRC, "%s", msg);
      active_remove(m, s);
      seq_fail(m, s, VELO_DATA_LOSS, msg);
      n_ended++;
      continue;
    }
    int32_t id = velo_sampler_sample(s->sampler, lg, m->n_vocab);
    const char *reason;
    if (id < 0) {
      st = VELO_RESOURCE_EXHAUSTED;
      reason = "";
    } else {
      reason = take_token(m, s, id, &st);
    }
    if (!reason) continue;
    active_remove(m, s);
    if (st != VELO_OK) {
      seq_fail(m, s, st, "out of memory while generating");
    } else if (strcmp(reason, "cancelled") == 0) {
      log_cancelled(m, s);
      seq_fail(m, s, VELO_CANCELLED, "the request was cancelled");
    } else {
      seq_finish(m, s, reason);
    }
    n_ended++;
  }
  return n_ended;
}

/* Takes a snapshot of the counters for the stats extension (under lock). */
static void snapshot_stats(velo_model *m) {
  kv_pool_counts c;
  kv_pool_get_counts(m->pool, &c);
  int64_t *v = m->stats;
  v[ST_KV_BLOCK_SIZE] = KV_BLOCK_SIZE;
  v[ST_KV_BLOCKS_TOTAL] = c.total;
  v[ST_KV_BLOCKS_USED] = c.used;
  v[ST_KV_BLOCKS_CACHED] = c.cached;
  v[ST_KV_BLOCKS_FREE] = c.free;
  v[ST_KV_CACHE_BYTES] = (int64_t)((size_t)m->pool_slots * llama_kv_bytes_per_token(m->llama));
  v[ST_CONTEXT_LENGTH] = m->n_ctx;
  v[ST_REQUESTS_RUNNING] = (int64_t)m->n_running;
  v[ST_REQUESTS_QUEUED] = (int64_t)m->n_queued;
  v[ST_PREFIX_QUERIES] = m->c_queries;
  v[ST_PREFIX_HITS] = m->c_hits;
  v[ST_PREFIX_HIT_TOKENS] = m->c_hit_tokens;
  v[ST_PREEMPTIONS] = m->c_preemptions;
  v[ST_ENGINE_STEPS] = m->c_steps;
  v[ST_BATCH_TOKENS] = m->c_batch_tokens;
}

static void *engine_main(void *arg) {
  velo_model *m = arg;
  pthread_mutex_lock(&m->lock);
  for (;;) {
    snapshot_stats(m);
    while (!m->stopping && !m->queue_head && !m->active) pthread_cond_wait(&m->wake, &m->lock);
    if (m->stopping) break;
    /* Queued requests whose call has ended (client cancel, deadline) leave
     * the queue now, not at admission. */
    seq *gone = NULL;
    for (seq **qlink = &m->queue_head, *prev = NULL; *qlink;) {
      seq *s = *qlink;
      if (m->host->call_cancelled(s->call)) {
        *qlink = s->next;
        if (m->queue_tail == s) m->queue_tail = prev;
        m->n_queued--;
        s->next = gone;
        gone = s;
      } else {
        prev = s;
        qlink = &s->next;
      }
    }
    size_t n_waiting = m->n_queued;
    /* Admit waiting sequences while there is room: a running slot, and
     * blocks for the whole prompt (or nothing running, so it can take the
     * whole pool). */
    seq *admitted = NULL;
    while (m->queue_head && m->n_active < m->max_active) {
      seq *s = m->queue_head;
      if (s->max_tokens > 0 && m->n_active > 0 &&
          kv_pool_available(m->pool) < (int64_t)blocks_for(s->n_toks))
        break;
      m->queue_head = s->next;
      if (!m->queue_head) m->queue_tail = NULL;
      m->n_queued--;
      m->n_running++;
      if (s->max_tokens == 0) { /* nothing to compute: answered below */
        s->next = admitted;
        admitted = s;
        continue;
      }
      seq_attach_prefix(m, s);
      active_insert(m, s);
    }
    pthread_mutex_unlock(&m->lock);
    size_t n_ended = 0;
    while (admitted) {
      seq *next = admitted->next;
      seq_finish(m, admitted, "length"); /* max_tokens 0: no tokens, by policy */
      n_ended++;
      admitted = next;
    }
    while (gone) {
      seq *next = gone->next;
      m->host->log(VELO_LOG_INFO, SRC,
                   "model %s: request %llu cancelled while waiting for admission; it left the "
                   "queue (%zu still waiting)",
                   m->name, (unsigned long long)gone->serial, n_waiting);
      seq_fail(m, gone, VELO_CANCELLED, "the request was cancelled while it waited in the queue");
      gone = next;
    }
    n_ended += engine_step(m);
    pthread_mutex_lock(&m->lock);
    m->n_running -= n_ended;
  }
  /* Unloading: end everything with UNAVAILABLE. */
  seq *q = m->queue_head;
  m->queue_head = m->queue_tail = NULL;
  m->n_queued = 0;
  pthread_mutex_unlock(&m->lock);
  char msg[256];
  snprintf(msg, sizeof msg, "model '%s' is being unloaded", m->name);
  while (q) {
    seq *next = q->next;
    seq_fail(m, q, VELO_UNAVAILABLE, msg);
    q = next;
  }
  while (m->active) {
    seq *s = m->active;
    active_remove(m, s);
    seq_fail(m, s, VELO_UNAVAILABLE, msg);
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Task interface                                                      */
/* ------------------------------------------------------------------ */

static void model_free(velo_model *m) {
  if (!m) return;
  if (m->thread_started) {
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->thread, NULL);
  }
  llama_kv_pool_free(m->kvmem);
  kv_pool_free(m->pool);
  llama_model_free(m->llama);
  velo_tokenizer_free(m->tok);
  if (m->gguf) m->host->gguf->close(m->gguf);
  pthread_mutex_destroy(&m->lock);
  pthread_cond_destroy(&m->wake);
  free(m->logits);
  free(m->b_tokens);
  free(m->b_pos);
  free(m->b_slot);
  free(m->b_rows);
  free(m->b_attn);
  free(m->name);
  free(m);
}

/* Sizes the KV pool: the config's tokens (rounded up to whole blocks) or
 * bytes (whole blocks that fit), else the default (max_active full
 * contexts, capped at DEFAULT_POOL_BYTES but never below one full context,
 * rounded up to whole blocks).  A pool smaller than one
 * context is refused: the context length is a promise to every request. */
static velo_status size_pool(velo_model *m, const velo_model_config *cfg, int64_t *slots,
                             velo_error *err) {
  size_t per_token = llama_kv_bytes_per_token(m->llama);
  if (m->n_ctx > KV_MAX_TOKENS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': its context length of %lld tokens (the model's own, or "
                          "--ctx-size / context_length) is more than %lld, the most one KV cache "
                          "pool can index; lower --ctx-size (or context_length in config.json)",
                          m->name, (long long)m->n_ctx, (long long)KV_MAX_TOKENS);
  int64_t want = 0;
  const char *how = "default";
  bool has_kv = cfg->struct_size >= offsetof(velo_model_config, kv_cache_bytes) + sizeof cfg->kv_cache_bytes;
  if (has_kv && cfg->kv_cache_tokens > 0) {
    want = cfg->kv_cache_tokens;
    how = "kv_cache_size";
  } else if (has_kv && cfg->kv_cache_bytes > 0) {
    /* Whole blocks that fit in the bytes given: never more memory than
     * asked for. */
    uint64_t t = cfg->kv_cache_bytes / per_token / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
    want = t > (uint64_t)KV_MAX_TOKENS ? KV_MAX_TOKENS + 1 : (int64_t)t;
    how = "kv_cache_size";
  } else {
    int64_t by_bytes = (int64_t)(DEFAULT_POOL_BYTES / per_token);
    int64_t full = (int64_t)m->max_active * m->n_ctx;
    want = full < by_bytes ? full : by_bytes;
    if (want < m->n_ctx) want = m->n_ctx;
  }
  if (want < m->n_ctx)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': a KV cache of %lld tokens (%s, %zu bytes per token) cannot hold "
                          "one request of the context length %lld; raise kv_cache_size (or "
                          "--kv-cache-size) to at least %lld tokens (%llu bytes) or lower the "
                          "context length",
                          m->name, (long long)want, how, per_token, (long long)m->n_ctx,
                          (long long)m->n_ctx, (unsigned long long)((uint64_t)m->n_ctx * per_token));
  if (want > KV_MAX_TOKENS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': kv_cache_size (or --kv-cache-size) asks for more than %lld "
                          "tokens (%zu bytes per token), the most one pool can index; allowed: "
                          "%lld..%lld tokens",
                          m->name, (long long)KV_MAX_TOKENS, per_token, (long long)m->n_ctx,
                          (long long)KV_MAX_TOKENS);
  *slots = (int64_t)blocks_for((size_t)want) * KV_BLOCK_SIZE;
  return VELO_OK;
}

velo_status textgen_model_load(const velo_host *host, const velo_model_config *cfg, velo_model **out,
                               velo_error *err) {
  *out = NULL;
  velo_model *m = calloc(1, sizeof *m);
  if (!m) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  m->host = host;
  pthread_mutex_init(&m->lock, NULL);
  pthread_cond_init(&m->wake, NULL);
  m->name = strdup(cfg->name ? cfg->name : cfg->path);
  if (!m->name) {
    model_free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  textgen_model_params mp;
  velo_status st = textgen_model_params_parse(m->name, cfg->params, cfg->n_params, &mp, err);
  if (st != VELO_OK) {
    model_free(m);
    return st;
  }
  m->max_queue = mp.max_queue;
  m->max_active = mp.max_active;
  st = host->gguf->open(cfg->path, &m->gguf, err);
  if (st != VELO_OK) {
    m->gguf = NULL;
    model_free(m);
    return st;
  }
  const char *gtype;
  size_t gtype_len;
  velo_error e2;
  velo_error_init(&e2);
  if (host->gguf->get_string(m->gguf, "general.type", &gtype, &gtype_len, &e2) == VELO_OK &&
      gtype_len == 7 && memcmp(gtype, "adapter", 7) == 0) {
    model_free(m);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s is an adapter (general.type = adapter), not a model; serve its base "
                          "model instead (adapters are not supported yet)", cfg->path);
  }
  st = velo_tokenizer_load(host->gguf, m->gguf, &m->tok, err);
  if (st != VELO_OK) {
    m->tok = NULL;
    char msg[VELO_ERROR_MESSAGE_MAX];
    snprintf(msg, sizeof msg, "%s", err ? err->message : "");
    model_free(m);
    return velo_error_set(err, st, "%s: %s", cfg->path, msg);
  }
  st = llama_model_load(host, m->gguf, cfg->backend, cfg->backend_instance, &m->llama, err);
  if (st != VELO_OK) {
    m->llama = NULL;
    model_free(m);
    return st;
  }
  const llama_hparams *hp = llama_model_hparams(m->llama);
  if (velo_tokenizer_n_vocab(m->tok) != hp->n_vocab) {
    int32_t nv = velo_tokenizer_n_vocab(m->tok);
    model_free(m);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s: the tokenizer has %d tokens but token_embd.weight has %lld rows",
                          cfg->path, nv, (long long)hp->n_vocab);
  }
  m->n_ctx = cfg->context_length > 0 ? cfg->context_length : hp->n_ctx_train;
  if (m->n_ctx < 2) {
    int64_t n = m->n_ctx;
    model_free(m);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s: a context length of %lld tokens leaves no room to generate; it must "
                          "be >= 2", cfg->path, (long long)n);
  }
  if (m->n_ctx > hp->n_ctx_train)
    host->log(VELO_LOG_WARN, SRC,
              "model %s: context length %lld is beyond the %lld tokens it was trained for; output "
              "past that may be poor", m->name, (long long)m->n_ctx, (long long)hp->n_ctx_train);
  /* Longest token text: no token covers more prompt bytes, so a prompt of
   * more than n_ctx * max bytes cannot fit and is refused before tokenizing. */
  for (int32_t i = 0; i < velo_tokenizer_n_vocab(m->tok); i++) {
    size_t len;
    velo_tokenizer_token_text(m->tok, i, &len);
    if (len > m->max_token_bytes) m->max_token_bytes = len;
  }
  if (m->max_token_bytes < 1) m->max_token_bytes = 1;
  m->n_vocab = (int32_t)hp->n_vocab;
  /* Every running sequence decodes one token per step, and prefill chunks
   * get at least 64 more. */
  m->max_batch = (int32_t)m->max_active + 64;
  if ((st = llama_model_reserve(m->llama, m->max_batch, err)) != VELO_OK) {
    model_free(m);
    return st;
  }
  if ((st = size_pool(m, cfg, &m->pool_slots, err)) != VELO_OK) {
    model_free(m);
    return st;
  }
  /* The K/V memory first: it is the big allocation, and the bookkeeping
   * tables (a few bytes per token) are only built once it exists. */
  if ((st = llama_kv_pool_create(m->llama, m->pool_slots, &m->kvmem, err)) != VELO_OK) {
    char msg[VELO_ERROR_MESSAGE_MAX];
    snprintf(msg, sizeof msg, "%s", err ? err->message : "");
    long long slots = (long long)m->pool_slots;
    double bytes = (double)m->pool_slots * (double)llama_kv_bytes_per_token(m->llama);
    bool sized = cfg->struct_size >= offsetof(velo_model_config, kv_cache_bytes) + sizeof cfg->kv_cache_bytes &&
                 (cfg->kv_cache_tokens > 0 || cfg->kv_cache_bytes > 0);
    /* the default pool is more than one context when max_active > 1 */
    const bool above_min = m->pool_slots > (int64_t)blocks_for((size_t)m->n_ctx) * KV_BLOCK_SIZE;
    model_free(m);
    return velo_error_set(err, st,
                          "%s: the KV cache of %lld tokens (%.0f bytes) cannot be allocated: %s; %s",
                          cfg->path, slots, bytes, msg,
                          sized ? "lower kv_cache_size (or --kv-cache-size)"
                          : above_min
                              ? "lower --ctx-size (or context_length), or set a smaller "
                                "kv_cache_size (at least one context)"
                              : "the pool holds one context of the context length at least; "
                                "lower --ctx-size (or context_length)");
  }
  if ((st = kv_pool_create((int32_t)(m->pool_slots / KV_BLOCK_SIZE), KV_BLOCK_SIZE, &m->pool, err)) != VELO_OK) {
    model_free(m);
    return st;
  }
  size_t B = (size_t)m->max_batch;
  m->logits = malloc(m->max_active * (size_t)hp->n_vocab * sizeof(float));
  m->b_tokens = malloc(B * sizeof(int32_t));
  m->b_pos = malloc(B * sizeof(int32_t));
  m->b_slot = malloc(B * sizeof(int32_t));
  m->b_rows = malloc(B * sizeof(int32_t));
  if (!m->logits || !m->name || !m->b_tokens || !m->b_pos || !m->b_slot || !m->b_rows) {
    model_free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  host->log(VELO_LOG_INFO, SRC,
            "model %s: KV cache pool of %lld tokens (%lld blocks of %d, %.1f MiB), context %lld "
            "tokens per request, up to %zu requests batched",
            m->name, (long long)m->pool_slots, (long long)(m->pool_slots / KV_BLOCK_SIZE),
            KV_BLOCK_SIZE, (double)m->pool_slots * (double)llama_kv_bytes_per_token(m->llama) / 1048576.0,
            (long long)m->n_ctx, m->max_active);
  snapshot_stats(m);
  m->inputs[0] = (velo_io_desc){.struct_size = sizeof m->inputs[0], .name = "text_input",
                                .datatype = VELO_DATATYPE_BYTES, .n_dims = 1, .shape = {1}};
  m->outputs[0] = (velo_io_desc){.struct_size = sizeof m->outputs[0], .name = "text_output",
                                 .datatype = VELO_DATATYPE_BYTES, .n_dims = 1, .shape = {1}};
  m->outputs[1] = (velo_io_desc){.struct_size = sizeof m->outputs[1], .name = "token_ids",
                                 .datatype = VELO_DATATYPE_INT32, .n_dims = 1, .shape = {-1}};
  if (pthread_create(&m->thread, NULL, engine_main, m) != 0) {
    model_free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cannot start the engine thread");
  }
  m->thread_started = true;
  *out = m;
  return VELO_OK;
}

void textgen_model_unload(velo_model *m) { model_free(m); }

velo_status textgen_model_metadata(velo_model *m, velo_model_metadata *out, velo_error *err) {
  (void)err;
  out->platform = "velo_textgen";
  out->architecture = llama_model_hparams(m->llama)->arch;
  out->context_length = m->n_ctx;
  out->n_inputs = 1;
  out->inputs = m->inputs;
  out->n_outputs = 2;
  out->outputs = m->outputs;
  return VELO_OK;
}

velo_status textgen_submit(velo_model *m, const velo_request *req, velo_error *err) {
  textgen_params p;
  velo_status st = textgen_params_parse(req, &p, err);
  if (st != VELO_OK) return st;
  seq *s = calloc(1, sizeof *s);
  if (!s) {
    textgen_params_clear(&p);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  s->call = req->call;
  s->streaming = req->streaming;
  s->ignore_eos = p.ignore_eos;
  s->priority = p.priority;
  velo_utf8_stream_init(&s->utf8);
  if (p.prompt_len == 0 && !velo_tokenizer_add_bos(m->tok)) {
    st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                        "the prompt is empty and model '%s' adds no BOS token, so there is nothing to "
                        "continue; give a prompt of at least one character", m->name);
    goto fail;
  }
  if (p.prompt_len / m->max_token_bytes >= (size_t)m->n_ctx) {
    st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                        "the prompt is %zu bytes, at least %zu tokens, but the context length of "
                        "model '%s' is %lld tokens: a prompt may have at most %lld",
                        p.prompt_len, p.prompt_len / m->max_token_bytes, m->name,
                        (long long)m->n_ctx, (long long)(m->n_ctx - 1));
    goto fail;
  }
  st = velo_tokenizer_encode(m->tok, p.prompt, p.prompt_len, true, &s->toks, &s->n_prompt, err);
  if (st != VELO_OK) {
    s->toks = NULL;
    char msg[VELO_ERROR_MESSAGE_MAX];
    snprintf(msg, sizeof msg, "%s", err ? err->message : "");
    velo_error_set(err, st, "prompt: %s", msg);
    goto fail;
  }
  if (s->n_prompt == 0) {
    st = velo_error_set(err, VELO_INVALID_ARGUMENT, "the prompt gives no tokens");
    goto fail;
  }
  if ((int64_t)s->n_prompt >= m->n_ctx) {
    st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                        "the prompt is %zu token%s, but the context length of model '%s' is %lld "
                        "tokens: a prompt may have at most %lld",
                        s->n_prompt, s->n_prompt == 1 ? "" : "s", m->name, (long long)m->n_ctx, (long long)(m->n_ctx - 1));
    goto fail;
  }
  s->n_toks = s->cap_toks = s->n_prompt;
  /* A huge max_tokens is clamped to the context: the sequence ends with
   * finish_reason "length" there, and nothing is allocated for the rest. */
  int64_t room = m->n_ctx - (int64_t)s->n_prompt;
  s->max_tokens = p.max_tokens < room ? p.max_tokens : room;
  s->cap_blocks = blocks_for(s->n_prompt + (size_t)s->max_tokens);
  s->blocks = malloc((s->cap_blocks ? s->cap_blocks : 1) * sizeof *s->blocks);
  if (!s->blocks) {
    st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  st = velo_sampler_create(&p.sampling, &s->sampler, err);
  if (st != VELO_OK) {
    s->sampler = NULL;
    goto fail;
  }
  for (size_t i = 0; i < s->n_prompt; i++) velo_sampler_accept(s->sampler, s->toks[i]);
  st = velo_stop_matcher_create((const char *const *)p.stop, p.stop_len, p.n_stop, &s->stop, err);
  if (st != VELO_OK) {
    s->stop = NULL;
    goto fail;
  }
  textgen_params_clear(&p);

  pthread_mutex_lock(&m->lock);
  if (m->stopping) {
    pthread_mutex_unlock(&m->lock);
    seq_free(m, s);
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", m->name);
  }
  /* Room: max_queue waiting beyond the running slots (queued requests
   * fill free slots at the engine's next round). */
  if (m->n_queued + m->n_running >= m->max_active + m->max_queue) {
    /* Requests queued while a running slot is free take it at the
     * engine's next step: count them as running, so the message never
     * shows more waiting than max_queue_size. */
    size_t total = m->n_queued + m->n_running;
    size_t running = total < m->max_active ? total : m->max_active, waiting = total - running;
    pthread_mutex_unlock(&m->lock);
    seq_free(m, s);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                          "model '%s' has %zu request%s waiting (max_queue_size %zu) and %zu running; "
                          "try again later",
                          m->name, waiting, waiting == 1 ? "" : "s", m->max_queue, running);
  }
  s->serial = ++m->next_serial;
  queue_insert(m, s); /* by priority, higher first; FIFO among equals */
  pthread_cond_signal(&m->wake);
  pthread_mutex_unlock(&m->lock);
  return VELO_OK;

fail:
  textgen_params_clear(&p);
  seq_free(m, s);
  return st;
}

/* ------------------------------------------------------------------ */
/* Text extension                                                      */
/* ------------------------------------------------------------------ */

static velo_status ext_tokenize(velo_model *m, const char *text, size_t len, bool add_special,
                                int32_t **ids, size_t *n_ids, velo_error *err) {
  *ids = NULL;
  *n_ids = 0;
  return velo_tokenizer_encode(m->tok, text, len, add_special, ids, n_ids, err);
}

static void ext_free_ids(int32_t *ids) { free(ids); }

static int64_t ext_vocab_size(velo_model *m) { return velo_tokenizer_n_vocab(m->tok); }

static const velo_text_ext text_ext = {
    .struct_size = sizeof(velo_text_ext),
    .tokenize = ext_tokenize,
    .free_ids = ext_free_ids,
    .vocab_size = ext_vocab_size,
};

static size_t ext_stats_read(velo_model *m, velo_stat *out, size_t cap) {
  pthread_mutex_lock(&m->lock);
  for (size_t i = 0; i < ST_COUNT && i < cap; i++) {
    out[i].name = stat_names[i];
    out[i].value = m->stats[i];
  }
  pthread_mutex_unlock(&m->lock);
  return ST_COUNT;
}

static const velo_stats_ext stats_ext = {
    .struct_size = sizeof(velo_stats_ext),
    .read = ext_stats_read,
};

const void *textgen_get_extension(velo_model *m, const char *name) {
  (void)m;
  if (!name) return NULL;
  if (strcmp(name, VELO_TEXT_EXTENSION) == 0) return &text_ext;
  if (strcmp(name, VELO_STATS_EXTENSION) == 0) return &stats_ext;
  if (strcmp(name, VELO_BENCH_EXTENSION) == 0) return &textgen_bench_ext;
  return NULL;
}

llama_model *textgen_model_llama(velo_model *m) { return m->llama; }

const velo_tokenizer *textgen_model_tokenizer(velo_model *m) { return m->tok; }
