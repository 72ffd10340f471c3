/*
 * engine.c - the text-generation model: load/unload, request validation,
 * and the engine thread that prefills, decodes, samples and streams.
 *
 * Each model has one engine thread.  submit() validates and tokenizes on
 * the caller's thread and queues a sequence; the engine admits up to
 * max_active sequences (each with its own KV cache) and advances
 * each by one step per round: a prefill chunk, or one decode step.
 * Admission: the wait queue is bounded (max_queue_size beyond the free
 * running slots; a submit() past it is RESOURCE_EXHAUSTED, never queued),
 * ordered by request priority (higher first, equal FIFO), and every round
 * the engine ends queued requests whose call was cancelled or expired, so
 * a deadline is honoured while a request waits.
 * Before every step it checks the call for cancellation (client cancel,
 * deadline, shutdown), so a cancelled stream stops within one step and its
 * KV cache is freed at once.
 *
 * Output path per generated token: piece bytes -> UTF-8 assembler (whole,
 * valid characters only) -> stop-string matcher (holds back a possible
 * stop prefix) -> one response with the released text and the token id.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "sampling.h"
#include "textgen.h"
#include "textstream.h"

#define SRC "text-generation"

typedef struct seq {
  struct seq *next;
  velo_call *call;
  bool streaming;
  uint64_t serial;         /* for log lines */
  int32_t *prompt;         /* prompt ids, BOS included */
  size_t n_prompt;
  size_t n_prefilled;      /* prompt tokens already in the KV cache */
  int32_t last;            /* last sampled token, not yet in the cache */
  int64_t n_past;          /* tokens in the KV cache */
  int64_t max_tokens;      /* effective: clamped to the context */
  bool clamped;            /* max_tokens was reduced to fit the context */
  int64_t n_gen;           /* tokens generated so far */
  bool ignore_eos;
  int64_t priority;        /* admission order: higher first */
  velo_sampler *sampler;
  velo_utf8_stream utf8;
  velo_stop_matcher *stop;
  llama_kv *kv;
  /* Not yet sent: ids and text (streaming sends after every token; unary
   * keeps everything for the final response). */
  int32_t *ids;
  size_t n_ids, cap_ids;
  char *text;
  size_t text_len, text_cap;
} seq;

typedef struct velo_model {
  const velo_host *host;
  char *name;
  velo_gguf *gguf;
  velo_tokenizer *tok;
  llama_model *llama;
  int64_t n_ctx;
  size_t max_token_bytes; /* longest token text in the vocabulary */
  float *logits; /* n_vocab, engine thread only */
  velo_io_desc inputs[1];
  velo_io_desc outputs[2];

  pthread_mutex_t lock;
  pthread_cond_t wake;
  seq *queue_head, *queue_tail; /* waiting for admission (under lock), by priority */
  size_t n_queued;
  size_t n_running; /* taken from the queue, not yet ended (under lock) */
  size_t max_queue, max_active; /* model config: max_queue_size, max_active */
  bool stopping;
  pthread_t thread;
  bool thread_started;
  uint64_t next_serial;
  seq *active; /* engine thread only */
  size_t n_active;
} velo_model;

/* ------------------------------------------------------------------ */
/* Sequences                                                           */
/* ------------------------------------------------------------------ */

static void seq_free(seq *s) {
  if (!s) return;
  free(s->prompt);
  velo_sampler_free(s->sampler);
  velo_stop_matcher_free(s->stop);
  llama_kv_free(s->kv);
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

static bool append_id(seq *s, int32_t id) {
  if (s->n_ids == s->cap_ids) {
    size_t cap = s->cap_ids ? 2 * s->cap_ids : 64;
    int32_t *ni = realloc(s->ids, cap * sizeof *ni);
    if (!ni) return false;
    s->ids = ni;
    s->cap_ids = cap;
  }
  s->ids[s->n_ids++] = id;
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

/* Ends s: flushes held text (unless a stop string ended it), sends the
 * final response, frees s. */
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
  seq_free(s);
}

static void seq_fail(velo_model *m, seq *s, velo_status status, const char *message) {
  s->text_len = 0;
  s->n_ids = 0;
  send_response(m, s, true, "", status, message);
  seq_free(s);
}

/* ------------------------------------------------------------------ */
/* The engine                                                          */
/* ------------------------------------------------------------------ */

/* Handles one sampled token.  Returns the finish reason when the sequence
 * is done, else NULL. */
static const char *take_token(velo_model *m, seq *s, int32_t id, velo_status *st) {
  *st = VELO_OK;
  if (!s->ignore_eos && velo_tokenizer_is_eog(m->tok, id)) return "stop";
  velo_sampler_accept(s->sampler, id);
  s->n_gen++;
  s->last = id;
  if (!append_id(s, id)) {
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

/* Advances s by one step.  Returns true when s has ended (and was freed). */
static bool seq_step(velo_model *m, seq *s) {
  if (m->host->call_cancelled(s->call)) {
    m->host->log(VELO_LOG_INFO, SRC, "model %s: request %llu cancelled after %lld tokens, KV cache freed",
                 m->name, (unsigned long long)s->serial, (long long)s->n_gen);
    seq_fail(m, s, VELO_CANCELLED, "the request was cancelled");
    return true;
  }
  if (s->max_tokens == 0) {
    seq_finish(m, s, "length");
    return true;
  }
  velo_error err;
  velo_error_init(&err);
  velo_status st;
  int32_t B = llama_model_max_batch(m->llama);
  if (s->n_prefilled < s->n_prompt) {
    size_t n = s->n_prompt - s->n_prefilled;
    if (n > (size_t)B) n = (size_t)B;
    st = llama_forward(m->llama, s->kv, s->prompt + s->n_prefilled, (int32_t)n, s->n_past, m->logits, &err);
    if (st == VELO_OK) {
      s->n_prefilled += n;
      s->n_past += (int64_t)n;
      if (s->n_prefilled < s->n_prompt) return false; /* more prompt next round */
    }
  } else {
    st = llama_forward(m->llama, s->kv, &s->last, 1, s->n_past, m->logits, &err);
    if (st == VELO_OK) s->n_past++;
  }
  if (st != VELO_OK) {
    /* The request was validated at submit: a failure here is the server's
     * (backend or model), never the client's. */
    char msg[VELO_ERROR_MESSAGE_MAX + 64];
    snprintf(msg, sizeof msg, "model computation failed: %s", err.message);
    m->host->log(VELO_LOG_ERROR, SRC, "model %s: request %llu: %s", m->name,
                 (unsigned long long)s->serial, msg);
    seq_fail(m, s, st == VELO_RESOURCE_EXHAUSTED ? st : VELO_INTERNAL, msg);
    return true;
  }
  int32_t id = velo_sampler_sample(s->sampler, m->logits, (int32_t)llama_model_hparams(m->llama)->n_vocab);
  if (id < 0) {
    seq_fail(m, s, VELO_RESOURCE_EXHAUSTED, "out of memory while sampling");
    return true;
  }
  const char *reason = take_token(m, s, id, &st);
  if (st != VELO_OK) {
    seq_fail(m, s, st, "out of memory while generating");
    return true;
  }
  if (!reason) return false;
  if (strcmp(reason, "cancelled") == 0) {
    m->host->log(VELO_LOG_INFO, SRC, "model %s: request %llu cancelled after %lld tokens, KV cache freed",
                 m->name, (unsigned long long)s->serial, (long long)s->n_gen);
    seq_fail(m, s, VELO_CANCELLED, "the request was cancelled");
    return true;
  }
  seq_finish(m, s, reason);
  return true;
}

/* Gives s its KV cache; on failure ends it with the error. */
static bool seq_admit(velo_model *m, seq *s) {
  velo_error err;
  velo_error_init(&err);
  int64_t need = (int64_t)s->n_prompt + s->max_tokens;
  if (need > m->n_ctx) need = m->n_ctx;
  if (need < 1) need = 1;
  if (llama_kv_create(m->llama, need, &s->kv, &err) != VELO_OK) {
    s->kv = NULL;
    seq_fail(m, s, VELO_RESOURCE_EXHAUSTED, err.message);
    return false;
  }
  return true;
}

static void *engine_main(void *arg) {
  velo_model *m = arg;
  pthread_mutex_lock(&m->lock);
  for (;;) {
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
    /* Admit waiting sequences while there is room. */
    while (m->queue_head && m->n_running < m->max_active) {
      seq *s = m->queue_head;
      m->queue_head = s->next;
      if (!m->queue_head) m->queue_tail = NULL;
      m->n_queued--;
      m->n_running++;
      pthread_mutex_unlock(&m->lock);
      if (seq_admit(m, s)) {
        s->next = m->active;
        m->active = s;
        m->n_active++;
      } else {
        pthread_mutex_lock(&m->lock);
        m->n_running--;
        pthread_mutex_unlock(&m->lock);
      }
      pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    while (gone) {
      seq *next = gone->next;
      m->host->log(VELO_LOG_INFO, SRC,
                   "model %s: request %llu cancelled while waiting for admission; it left the "
                   "queue (%zu still waiting)",
                   m->name, (unsigned long long)gone->serial, n_waiting);
      seq_fail(m, gone, VELO_CANCELLED, "the request was cancelled while it waited in the queue");
      gone = next;
    }
    /* One step for every active sequence. */
    size_t n_ended = 0;
    seq **link = &m->active;
    while (*link) {
      seq *s = *link;
      seq *next = s->next;
      if (seq_step(m, s)) {
        *link = next;
        m->n_active--;
        n_ended++;
      } else {
        link = &s->next;
      }
    }
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
    seq *next = m->active->next;
    seq_fail(m, m->active, VELO_UNAVAILABLE, msg);
    m->active = next;
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
  llama_model_free(m->llama);
  velo_tokenizer_free(m->tok);
  if (m->gguf) m->host->gguf->close(m->gguf);
  pthread_mutex_destroy(&m->lock);
  pthread_cond_destroy(&m->wake);
  free(m->logits);
  free(m->name);
  free(m);
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
  m->logits = malloc((size_t)hp->n_vocab * sizeof(float));
  if (!m->logits || !m->name) {
    model_free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
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
  st = velo_tokenizer_encode(m->tok, p.prompt, p.prompt_len, true, &s->prompt, &s->n_prompt, err);
  if (st != VELO_OK) {
    s->prompt = NULL;
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
  int64_t room = m->n_ctx - (int64_t)s->n_prompt;
  s->max_tokens = p.max_tokens < room ? p.max_tokens : room;
  s->clamped = p.max_tokens > room;
  st = velo_sampler_create(&p.sampling, &s->sampler, err);
  if (st != VELO_OK) {
    s->sampler = NULL;
    goto fail;
  }
  for (size_t i = 0; i < s->n_prompt; i++) velo_sampler_accept(s->sampler, s->prompt[i]);
  st = velo_stop_matcher_create((const char *const *)p.stop, p.stop_len, p.n_stop, &s->stop, err);
  if (st != VELO_OK) {
    s->stop = NULL;
    goto fail;
  }
  textgen_params_clear(&p);

  pthread_mutex_lock(&m->lock);
  if (m->stopping) {
    pthread_mutex_unlock(&m->lock);
    seq_free(s);
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", m->name);
  }
  /* Room: max_queue waiting beyond the running slots (queued requests
   * fill free slots at the engine's next round). */
  if (m->n_queued + m->n_running >= m->max_active + m->max_queue) {
    size_t waiting = m->n_queued, running = m->n_running;
    pthread_mutex_unlock(&m->lock);
    seq_free(s);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                          "model '%s' has %zu request%s waiting (max_queue_size %zu) and %zu running; "
                          "try again later",
                          m->name, waiting, waiting == 1 ? "" : "s", m->max_queue, running);
  }
  s->serial = ++m->next_serial;
  /* Sorted by priority, higher first; FIFO among equals. */
  if (!m->queue_tail || m->queue_tail->priority >= s->priority) {
    if (m->queue_tail) m->queue_tail->next = s;
    else m->queue_head = s;
    m->queue_tail = s;
  } else {
    seq **link = &m->queue_head;
    while ((*link)->priority >= s->priority) link = &(*link)->next;
    s->next = *link;
    *link = s;
  }
  m->n_queued++;
  pthread_cond_signal(&m->wake);
  pthread_mutex_unlock(&m->lock);
  return VELO_OK;

fail:
  textgen_params_clear(&p);
  seq_free(s);
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

const void *textgen_get_extension(velo_model *m, const char *name) {
  (void)m;
  return name && strcmp(name, VELO_TEXT_EXTENSION) == 0 ? &text_ext : NULL;
}

llama_model *textgen_model_llama(velo_model *m) { return m->llama; }

const velo_tokenizer *textgen_model_tokenizer(velo_model *m) { return m->tok; }
