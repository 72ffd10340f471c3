/*
 * llama.c - loads a llama-architecture GGUF model and runs its forward pass
 * as one backend graph per step.  See llama.h for the contract.
 */
#include "llama.h"
#include "weight_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64

typedef struct llama_layer {
  velo_tensor attn_norm; /* F32 [n_embd] */
  velo_tensor wq;        /* [n_embd, n_head * head_dim] */
  velo_tensor wk;        /* [n_embd, n_head_kv * head_dim] */
  velo_tensor wv;        /* [n_embd, n_head_kv * head_dim] */
  velo_tensor wo;        /* [n_head * head_dim, n_embd] */
  velo_tensor ffn_norm;  /* F32 [n_embd] */
  velo_tensor w_gate;    /* [n_embd, n_ff] */
  velo_tensor w_up;      /* [n_embd, n_ff] */
  velo_tensor w_down;    /* [n_ff, n_embd] */
} llama_layer;

struct llama_model {
  const velo_host *host;
  const velo_gguf_api *gg;
  const velo_gguf *g;
  const velo_backend_iface *be;
  velo_backend_instance *inst;
  llama_hparams hp;
  velo_tensor tok_embd; /* [n_embd, n_vocab] */
  velo_tensor out_norm; /* F32 [n_embd] */
  velo_tensor output;   /* [n_embd, n_vocab]; a copy of tok_embd when tied */
  llama_layer *layers;  /* n_layer */
  velo_buffer **bufs;   /* weight buffers, freed at the end */
  size_t n_bufs, cap_bufs;
  velo_buffer *scratch; /* activations of one step */
  velo_buffer *attn_buf; /* the attention tables of one step */
  size_t attn_cap;       /* bytes of attn_buf */
  int32_t max_batch;
  /* Offsets of the activations in scratch. */
  size_t off_ids, off_pos, off_slot, off_rows, off_x, off_cur, off_q, off_qr, off_k, off_kr, off_v, off_attn, off_o,
      off_g, off_u, off_h, off_d, off_outn, off_logits;
  /* Arenas for one step's graph, sized at load and never reallocated. */
  velo_tensor *tens;
  size_t n_tens, cap_tens;
  velo_graph_node *nodes;
  size_t n_nodes, cap_nodes;
};

struct llama_kv_pool {
  llama_model *m;
  velo_buffer *buf;
  int64_t n_slots;
  size_t layer_bytes; /* bytes of one layer's K (or V) */
};

struct llama_kv {
  llama_kv_pool *pool; /* n_ctx slots, position p in slot p */
};

/* ------------------------------------------------------------------ */
/* Hyperparameters                                                     */
/* ------------------------------------------------------------------ */

static velo_status get_int_key(llama_model *m, const char *key, bool required, int64_t dflt,
                               int64_t *out, velo_error *err) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", m->hp.arch, key);
  velo_error e;
  velo_error_init(&e);
  velo_status st = m->gg->get_int(m->g, full, out, &e);
  if (st == VELO_NOT_FOUND && !required) {
    *out = dflt;
    return VELO_OK;
  }
  if (st != VELO_OK)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: %s", m->gg->path(m->g), e.message);
  return VELO_OK;
}

static velo_status get_float_key(llama_model *m, const char *key, bool required, double dflt,
                                 float *out, velo_error *err) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", m->hp.arch, key);
  velo_error e;
  velo_error_init(&e);
  double v = dflt;
  velo_status st = m->gg->get_float(m->g, full, &v, &e);
  if (st == VELO_NOT_FOUND && !required) v = dflt;
  else if (st != VELO_OK)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: %s", m->gg->path(m->g), e.message);
  *out = (float)v;
  return VELO_OK;
}

static velo_status bad_hparam(llama_model *m, velo_error *err, const char *what, long long v,
                              const char *allowed) {
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: %s.%s is %lld; %s", m->gg->path(m->g),
                        m->hp.arch, what, v, allowed);
}

static velo_status read_hparams(llama_model *m, velo_error *err) {
  llama_hparams *hp = &m->hp;
  const char *arch;
  size_t arch_len;
  velo_error e;
  velo_error_init(&e);
  if (m->gg->get_string(m->g, "general.architecture", &arch, &arch_len, &e) != VELO_OK)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: %s", m->gg->path(m->g), e.message);
  if (arch_len != 5 || memcmp(arch, "llama", 5) != 0)
    return velo_error_set(err, VELO_UNIMPLEMENTED,
                          "%s: architecture '%.*s' is not supported (supported: llama)",
                          m->gg->path(m->g), (int)(arch_len > 64 ? 64 : arch_len), arch);
  memcpy(hp->arch, arch, arch_len);
  hp->arch[arch_len] = '\0';

  velo_status st;
  int64_t n_expert = 0;
  if ((st = get_int_key(m, "expert_count", false, 0, &n_expert, err))) return st;
  if (n_expert > 0)
    return velo_error_set(err, VELO_UNIMPLEMENTED,
                          "%s: mixture-of-experts models (%s.expert_count = %lld) are not supported "
                          "yet; dense llama models are",
                          m->gg->path(m->g), hp->arch, (long long)n_expert);
  if ((st = get_int_key(m, "context_length", true, 0, &hp->n_ctx_train, err)) ||
      (st = get_int_key(m, "embedding_length", true, 0, &hp->n_embd, err)) ||
      (st = get_int_key(m, "block_count", true, 0, &hp->n_layer, err)) ||
      (st = get_int_key(m, "feed_forward_length", true, 0, &hp->n_ff, err)) ||
      (st = get_int_key(m, "attention.head_count", true, 0, &hp->n_head, err)))
    return st;
  if ((st = get_int_key(m, "attention.head_count_kv", false, hp->n_head, &hp->n_head_kv, err)))
    return st;
  if ((st = get_float_key(m, "attention.layer_norm_rms_epsilon", true, 0, &hp->rms_eps, err)) ||
      (st = get_float_key(m, "rope.freq_base", false, 10000.0, &hp->rope_freq_base, err)))
    return st;
  float scale_linear = 1.0f;
  if ((st = get_float_key(m, "rope.scaling.factor", false, 1.0, &scale_linear, err))) return st;

  if (hp->n_embd < 1 || hp->n_embd > (1 << 20))
    return bad_hparam(m, err, "embedding_length", hp->n_embd, "allowed 1..1048576");
  if (hp->n_layer < 1 || hp->n_layer > 4096)
    return bad_hparam(m, err, "block_count", hp->n_layer, "allowed 1..4096");
  if (hp->n_ff < 1 || hp->n_ff > (1 << 22))
    return bad_hparam(m, err, "feed_forward_length", hp->n_ff, "allowed 1..4194304");
  if (hp->n_head < 1 || hp->n_embd % hp->n_head != 0)
    return bad_hparam(m, err, "attention.head_count", hp->n_head,
                      "must be >= 1 and divide embedding_length");
  if (hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv != 0)
    return bad_hparam(m, err, "attention.head_count_kv", hp->n_head_kv,
                      "must be >= 1 and divide attention.head_count");
  if (hp->n_ctx_train < 1)
    return bad_hparam(m, err, "context_length", hp->n_ctx_train, "must be >= 1");
  hp->head_dim = hp->n_embd / hp->n_head;
  if ((st = get_int_key(m, "rope.dimension_count", false, hp->head_dim, &hp->n_rot, err))) return st;
  if (hp->n_rot < 2 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
    return bad_hparam(m, err, "rope.dimension_count", hp->n_rot,
                      "must be even, >= 2 and at most the head dimension");
  if (!(hp->rms_eps > 0.0f && isfinite(hp->rms_eps)) ||
      !(hp->rope_freq_base > 0.0f && isfinite(hp->rope_freq_base)) ||
      !(scale_linear > 0.0f && isfinite(scale_linear)))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s: %s.attention.layer_norm_rms_epsilon (%g), rope.freq_base (%g) and "
                          "rope.scaling.factor (%g) must be finite and > 0",
                          m->gg->path(m->g), hp->arch, (double)hp->rms_eps,
                          (double)hp->rope_freq_base, (double)scale_linear);
  hp->rope_freq_scale = 1.0f / scale_linear;
  hp->rope_mode = VELO_ROPE_NORMAL;
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Weights                                                             */
/* ------------------------------------------------------------------ */

static velo_status keep_buffer(llama_model *m, velo_buffer *b, velo_error *err) {
  if (m->n_bufs == m->cap_bufs) {
    size_t cap = m->cap_bufs ? 2 * m->cap_bufs : 64;
    velo_buffer **nb = realloc(m->bufs, cap * sizeof *nb);
    if (!nb) {
      m->be->buffer_free(m->inst, b);
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    }
    m->bufs = nb;
    m->cap_bufs = cap;
  }
  m->bufs[m->n_bufs++] = b;
  return VELO_OK;
}

/* Does the backend compute op on weights of this dtype? */
static bool backend_takes(llama_model *m, velo_op op, const velo_tensor *w) {
  velo_tensor a, d, ids;
  int64_t ne_a[2] = {w->ne[0], 1}, ne_d[2] = {w->ne[1], 1}, ne_i[1] = {1};
  memset(&a, 0, sizeof a);
  memset(&d, 0, sizeof d);
  memset(&ids, 0, sizeof ids);
  velo_graph_node n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.op = op;
  n.src[0] = (velo_tensor *)w;
  if (op == VELO_OP_MUL_MAT) {
    velo_tensor_set_shape(&a, VELO_DTYPE_F32, 2, ne_a);
    velo_tensor_set_shape(&d, VELO_DTYPE_F32, 2, ne_d);
    n.src[1] = &a;
  } else {
    int64_t ne_r[2] = {w->ne[0], 1};
    velo_tensor_set_shape(&ids, VELO_DTYPE_I32, 1, ne_i);
    velo_tensor_set_shape(&d, VELO_DTYPE_F32, 2, ne_r);
    n.src[1] = &ids;
  }
  n.dst = &d;
  return m->be->supports(m->inst, &n);
}

/* Lists the weight dtypes the backend multiplies, for error messages:
 * tries each known dtype on w's shape. */
static void supported_types(llama_model *m, const velo_tensor *w, char *out, size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  for (int dt = 0; dt < VELO_DTYPE_COUNT; dt++) {
    const char *name = velo_dtype_name(dt);
    velo_tensor probe;
    int64_t ne[2] = {w->ne[0], w->ne[1]};
    memset(&probe, 0, sizeof probe);
    if (!name || !velo_tensor_set_shape(&probe, (velo_dtype)dt, 2, ne)) continue;
    if (!backend_takes(m, VELO_OP_MUL_MAT, &probe)) continue;
    int n = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", name);
    if (n < 0 || (size_t)n >= cap - o) break;
    o += (size_t)n;
  }
  if (!o) snprintf(out, cap, "none for this row length");
}

/* Finds tensor name, checks its dtype class and shape [ne0, ne1] (ne1 = 0
 * for a vector), and makes it available to the backend. */
static velo_status load_tensor(llama_model *m, const char *name, int64_t ne0, int64_t ne1,
                               bool norm, bool required, velo_tensor *t, bool *found,
                               velo_error *err) {
  const char *path = m->gg->path(m->g);
  if (found) *found = false;
  int64_t idx = m->gg->find_tensor(m->g, name);
  if (idx < 0) {
    if (!required) return VELO_OK;
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: tensor '%s' is missing", path, name);
  }
  velo_gguf_tensor_info ti;
  memset(&ti, 0, sizeof ti);
  ti.struct_size = sizeof ti;
  velo_status st = m->gg->tensor_info(m->g, idx, &ti, err);
  if (st != VELO_OK) return st;
  int want_dims = ne1 ? 2 : 1;
  bool shape_ok = ti.ne[0] == ne0 && (ne1 ? ti.ne[1] == ne1 : ti.ne[1] == 1) && ti.ne[2] == 1 &&
                  ti.ne[3] == 1 && ti.n_dims <= want_dims;
  if (!shape_ok && ti.n_dims > want_dims)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s: tensor '%s' has %u dimensions [%lld, %lld, %lld, %lld], expected %d: "
                          "[%lld, %lld]",
                          path, name, (unsigned)ti.n_dims, (long long)ti.ne[0], (long long)ti.ne[1],
                          (long long)ti.ne[2], (long long)ti.ne[3], want_dims, (long long)ne0,
                          (long long)(ne1 ? ne1 : 1));
  if (!shape_ok)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                          path, name, (long long)ti.ne[0], (long long)ti.ne[1], (long long)ti.ne[2],
                          (long long)ti.ne[3], (long long)ne0, (long long)(ne1 ? ne1 : 1));
  const char *tname = velo_dtype_name(ti.dtype);
  if (norm && ti.dtype != VELO_DTYPE_F32)
    return velo_error_set(err, VELO_UNIMPLEMENTED, "%s: tensor '%s' has type %s; norm weights must be F32",
                          path, name, tname ? tname : "unknown");
  int64_t ne[2] = {ne0, ne1 ? ne1 : 1};
  memset(t, 0, sizeof *t);
  if (!velo_tensor_set_shape(t, ti.dtype, 2, ne))
    return velo_error_set(err, VELO_UNIMPLEMENTED, "%s: tensor '%s' has unsupported type %s", path, name,
                          tname ? tname : "unknown");
  t->name = NULL;
  if (!norm && !backend_takes(m, VELO_OP_MUL_MAT, t)) {
    char can[256];
    supported_types(m, t, can, sizeof can);
    return velo_error_set(err, VELO_UNIMPLEMENTED,
                          "%s: tensor '%s' has type %s, which the backend cannot compute with (for "
                          "rows of %lld elements it takes: %s)",
                          path, name, tname ? tname : "unknown", (long long)ne[0], can);
  }
  /* NaN or infinite weights (a corrupt file) would be served as garbage */
  int64_t bad = 0;
  bool is_block = false;
  int field = 0;
  if (weight_find_nonfinite(ti.dtype, ti.data, ne[0], ne[1], &bad, &is_block, &field) ==
      WEIGHT_NONFINITE)
    return velo_error_set(err, VELO_DATA_LOSS,
                          "%s: tensor '%s' (%s) holds a NaN or infinite value in %s %lld (row "
                          "%lld): the file is corrupt",
                          path, name, tname ? tname : "unknown",
                          !is_block    ? "element"
                          : field == 0 ? "the scale (d) of quantization block"
                                       : "the second scale (dmin or m) of quantization block",
                          (long long)bad,
                          (long long)(is_block ? bad / (ne[0] / velo_dtype_block_size(ti.dtype))
                                               : bad / ne[0]));
  velo_buffer *b = NULL;
  if (m->be->buffer_wrap_host) {
    st = m->be->buffer_wrap_host(m->inst, ti.data, ti.size, &b, err);
  } else {
    st = m->be->buffer_alloc(m->inst, ti.size, &b, err);
    if (st == VELO_OK) {
      st = m->be->buffer_write(m->inst, b, 0, ti.data, ti.size, err);
      if (st != VELO_OK) m->be->buffer_free(m->inst, b);
    }
  }
  if (st != VELO_OK) return st;
  if ((st = keep_buffer(m, b, err)) != VELO_OK) return st;
  t->buffer = b;
  t->offset = 0;
  t->data = m->be->buffer_host_ptr(b);
  if (found) *found = true;
  return VELO_OK;
}

static velo_status load_weights(llama_model *m, velo_error *err) {
  llama_hparams *hp = &m->hp;
  const char *path = m->gg->path(m->g);
  int64_t idx = m->gg->find_tensor(m->g, "token_embd.weight");
  if (idx < 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: tensor 'token_embd.weight' is missing", path);
  velo_gguf_tensor_info ti;
  memset(&ti, 0, sizeof ti);
  ti.struct_size = sizeof ti;
  velo_status st = m->gg->tensor_info(m->g, idx, &ti, err);
  if (st != VELO_OK) return st;
  hp->n_vocab = ti.ne[1];
  if (hp->n_vocab < 1)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s: token_embd.weight has no rows", path);
  int64_t E = hp->n_embd, KV = hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
  if ((st = load_tensor(m, "token_embd.weight", E, V, false, true, &m->tok_embd, NULL, err)))
    return st;
  if (!backend_takes(m, VELO_OP_GET_ROWS, &m->tok_embd))
    return velo_error_set(err, VELO_UNIMPLEMENTED,
                          "%s: the backend cannot look up rows of token_embd.weight (type %s)", path,
                          velo_dtype_name(m->tok_embd.dtype));
  if ((st = load_tensor(m, "output_norm.weight", E, 0, true, true, &m->out_norm, NULL, err)))
    return st;
  bool has_output = false;
  if ((st = load_tensor(m, "output.weight", E, V, false, false, &m->output, &has_output, err)))
    return st;
  if (!has_output) m->output = m->tok_embd; /* tied embeddings */

  m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
  if (!m->layers) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  for (int64_t i = 0; i < hp->n_layer; i++) {
    llama_layer *L = &m->layers[i];
    char name[96];
#define LOAD(field, suffix, ne0, ne1, norm)                                          \
  snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)i, suffix);            \
  if ((st = load_tensor(m, name, ne0, ne1, norm, true, &L->field, NULL, err))) return st;
    LOAD(attn_norm, "attn_norm", E, 0, true)
    LOAD(wq, "attn_q", E, E, false)
    LOAD(wk, "attn_k", E, KV, false)
    LOAD(wv, "attn_v", E, KV, false)
    LOAD(wo, "attn_output", E, E, false)
    LOAD(ffn_norm, "ffn_norm", E, 0, true)
    LOAD(w_gate, "ffn_gate", E, F, false)
    LOAD(w_up, "ffn_up", E, F, false)
    LOAD(w_down, "ffn_down", F, E, false)
#undef LOAD
  }
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Scratch and load                                                    */
/* ------------------------------------------------------------------ */

static size_t take(size_t *cursor, size_t bytes) {
  size_t off = *cursor;
  *cursor += (bytes + ALIGN - 1) / ALIGN * ALIGN;
  return off;
}

/* (Re)allocates the activation scratch for batches of max_batch tokens. */
static velo_status alloc_scratch(llama_model *m, int32_t max_batch, velo_error *err) {
  const llama_hparams *hp = &m->hp;
  size_t B = (size_t)max_batch, E = (size_t)hp->n_embd,
         KV = (size_t)(hp->n_head_kv * hp->head_dim), F = (size_t)hp->n_ff, V = (size_t)hp->n_vocab;
  size_t c = 0;
  llama_model t = *m; /* offsets are committed only when the buffer exists */
  t.off_ids = take(&c, 4 * B);
  t.off_pos = take(&c, 4 * B);
  t.off_slot = take(&c, 4 * B);
  t.off_rows = take(&c, 4 * B);
  t.off_x = take(&c, 4 * E * B);
  t.off_cur = take(&c, 4 * E * B);
  t.off_q = take(&c, 4 * E * B);
  t.off_qr = take(&c, 4 * E * B);
  t.off_k = take(&c, 4 * KV * B);
  t.off_kr = take(&c, 4 * KV * B);
  t.off_v = take(&c, 4 * KV * B);
  t.off_attn = take(&c, 4 * E * B);
  t.off_o = take(&c, 4 * E * B);
  t.off_g = take(&c, 4 * F * B);
  t.off_u = take(&c, 4 * F * B);
  t.off_h = take(&c, 4 * F * B);
  t.off_d = take(&c, 4 * E * B);
  t.off_outn = take(&c, 4 * E * B);
  t.off_logits = take(&c, 4 * V * B);
  velo_buffer *buf = NULL;
  velo_status st = m->be->buffer_alloc(m->inst, c, &buf, err);
  if (st != VELO_OK) return st;
  if (m->scratch) m->be->buffer_free(m->inst, m->scratch);
  m->scratch = buf;
  m->max_batch = max_batch;
  m->off_ids = t.off_ids, m->off_pos = t.off_pos, m->off_slot = t.off_slot, m->off_rows = t.off_rows;
  m->off_x = t.off_x, m->off_cur = t.off_cur, m->off_q = t.off_q, m->off_qr = t.off_qr;
  m->off_k = t.off_k, m->off_kr = t.off_kr, m->off_v = t.off_v, m->off_attn = t.off_attn;
  m->off_o = t.off_o, m->off_g = t.off_g, m->off_u = t.off_u, m->off_h = t.off_h;
  m->off_d = t.off_d, m->off_outn = t.off_outn, m->off_logits = t.off_logits;
  if (!m->tens) {
    m->cap_tens = (size_t)hp->n_layer * 32 + 32;
    m->cap_nodes = (size_t)hp->n_layer * 24 + 16;
    m->tens = calloc(m->cap_tens, sizeof *m->tens);
    m->nodes = calloc(m->cap_nodes, sizeof *m->nodes);
    if (!m->tens || !m->nodes) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  return VELO_OK;
}

velo_status llama_model_reserve(llama_model *m, int32_t max_batch, velo_error *err) {
  if (max_batch < 1 || max_batch > 4096)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "batch of %d tokens; allowed 1..4096", max_batch);
  if (max_batch <= m->max_batch) return VELO_OK;
  return alloc_scratch(m, max_batch, err);
}

size_t llama_kv_bytes_per_token(const llama_model *m) {
  return 2 * (size_t)m->hp.n_layer * (size_t)(m->hp.n_head_kv * m->hp.head_dim) * sizeof(float);
}

velo_status llama_model_load(const velo_host *host, const velo_gguf *g, const velo_backend_iface *be,
                             velo_backend_instance *inst, llama_model **out, velo_error *err) {
  *out = NULL;
  llama_model *m = calloc(1, sizeof *m);
  if (!m) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  m->host = host;
  m->gg = host->gguf;
  m->g = g;
  m->be = be;
  m->inst = inst;
  velo_status st;
  if ((st = read_hparams(m, err)) || (st = load_weights(m, err)) || (st = alloc_scratch(m, 64, err))) {
    llama_model_free(m);
    return st;
  }
  *out = m;
  return VELO_OK;
}

void llama_model_free(llama_model *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_bufs; i++) m->be->buffer_free(m->inst, m->bufs[i]);
  if (m->scratch) m->be->buffer_free(m->inst, m->scratch);
  if (m->attn_buf) m->be->buffer_free(m->inst, m->attn_buf);
  free(m->bufs);
  free(m->layers);
  free(m->tens);
  free(m->nodes);
  free(m);
}

const llama_hparams *llama_model_hparams(const llama_model *m) { return &m->hp; }

int32_t llama_model_max_batch(const llama_model *m) { return m->max_batch; }


/* ------------------------------------------------------------------ */
/* KV memory                                                           */
/* ------------------------------------------------------------------ */

velo_status llama_kv_pool_create(llama_model *m, int64_t n_slots, llama_kv_pool **out,
                                 velo_error *err) {
  *out = NULL;
  size_t row = (size_t)(m->hp.n_head_kv * m->hp.head_dim) * sizeof(float);
  if (n_slots < 1 || (uint64_t)n_slots > SIZE_MAX / 4 / row / (size_t)m->hp.n_layer)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "a KV cache of %lld token slots; allowed 1..%zu",
                          (long long)n_slots, SIZE_MAX / 4 / row / (size_t)m->hp.n_layer);
  llama_kv_pool *kv = calloc(1, sizeof *kv);
  if (!kv) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  kv->m = m;
  kv->n_slots = n_slots;
  kv->layer_bytes = (size_t)n_slots * row;
  velo_status st = m->be->buffer_alloc(m->inst, 2 * (size_t)m->hp.n_layer * kv->layer_bytes, &kv->buf, err);
  if (st != VELO_OK) {
    free(kv);
    return st;
  }
  *out = kv;
  return VELO_OK;
}

void llama_kv_pool_free(llama_kv_pool *kv) {
  if (!kv) return;
  kv->m->be->buffer_free(kv->m->inst, kv->buf);
  free(kv);
}

int64_t llama_kv_pool_slots(const llama_kv_pool *kv) { return kv->n_slots; }

velo_status llama_kv_create(llama_model *m, int64_t n_ctx, llama_kv **out, velo_error *err) {
  *out = NULL;
  if (n_ctx < 1 || n_ctx > INT32_MAX)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "KV cache size %lld; allowed 1..%d",
                          (long long)n_ctx, INT32_MAX);
  llama_kv *kv = calloc(1, sizeof *kv);
  if (!kv) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  velo_status st = llama_kv_pool_create(m, n_ctx, &kv->pool, err);
  if (st != VELO_OK) {
    free(kv);
    return st;
  }
  *out = kv;
  return VELO_OK;
}

void llama_kv_free(llama_kv *kv) {
  if (!kv) return;
  llama_kv_pool_free(kv->pool);
  free(kv);
}

int64_t llama_kv_size(const llama_kv *kv) { return kv->pool->n_slots; }

/* ------------------------------------------------------------------ */
/* Forward                                                             */
/* ------------------------------------------------------------------ */

/* A new tensor from the step arena: contiguous F32/I32 view of buf. */
static velo_tensor *view(llama_model *m, velo_buffer *buf, size_t offset, velo_dtype dt,
                         int32_t n_dims, int64_t ne0, int64_t ne1, int64_t ne2) {
  velo_tensor *t = &m->tens[m->n_tens++];
  int64_t ne[3] = {ne0, ne1, ne2};
  memset(t, 0, sizeof *t);
  velo_tensor_set_shape(t, dt, n_dims, ne);
  t->buffer = buf;
  t->offset = offset;
  char *base = m->be->buffer_host_ptr(buf);
  t->data = base ? base + offset : NULL;
  return t;
}

static velo_graph_node *node(llama_model *m, velo_op op, velo_tensor *dst, velo_tensor *a,
                             velo_tensor *b) {
  velo_graph_node *n = &m->nodes[m->n_nodes++];
  memset(n, 0, sizeof *n);
  n->struct_size = sizeof *n;
  n->op = op;
  n->dst = dst;
  n->src[0] = a;
  n->src[1] = b;
  return n;
}

/* dst = RoPE(src) at positions pos, with the model's rope settings. */
static void rope_node(llama_model *m, velo_tensor *dst, velo_tensor *src, velo_tensor *pos) {
  velo_graph_node *n = node(m, VELO_OP_ROPE, dst, src, pos);
  n->iparams[0] = (int32_t)m->hp.n_rot;
  n->iparams[1] = m->hp.rope_mode;
  n->fparams[0] = m->hp.rope_freq_base;
  n->fparams[1] = m->hp.rope_freq_scale;
}

/* Checks what the backend cannot know: token ids against the vocabulary,
 * slots against the pool, output rows against the batch. */
static velo_status check_batch(const llama_model *m, const llama_kv_pool *kv, const llama_batch *b,
                               velo_error *err) {
  if (b->n_tok < 1 || b->n_tok > m->max_batch)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "batch of %d tokens; allowed 1..%d", b->n_tok,
                          m->max_batch);
  if (b->n_out < 0 || b->n_out > b->n_tok)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%d output rows for %d tokens", b->n_out, b->n_tok);
  if (b->attn_width < 2 || b->block_size < 1)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "attention table width %d (>= 2) or block size %d (>= 1)",
                          b->attn_width, b->block_size);
  for (int32_t i = 0; i < b->n_tok; i++) {
    if (b->tokens[i] < 0 || b->tokens[i] >= m->hp.n_vocab)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "token id %d outside the vocabulary [0, %lld)",
                            b->tokens[i], (long long)m->hp.n_vocab);
    if (b->slot[i] < 0 || b->slot[i] >= kv->n_slots)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "KV slot %d outside the pool [0, %lld)",
                            b->slot[i], (long long)kv->n_slots);
    if (b->pos[i] < 0 || b->attn[(size_t)i * (size_t)b->attn_width] != b->pos[i])
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "token %d: position %d and its attention table disagree", i, b->pos[i]);
  }
  for (int32_t i = 0; i < b->n_out; i++)
    if (b->out_rows[i] < 0 || b->out_rows[i] >= b->n_tok)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "output row %d outside the batch [0, %d)",
                            b->out_rows[i], b->n_tok);
  return VELO_OK;
}

velo_status llama_decode(llama_model *m, llama_kv_pool *kv, const llama_batch *b, float *logits,
                         velo_error *err) {
  const llama_hparams *hp = &m->hp;
  velo_status st = check_batch(m, kv, b, err);
  if (st != VELO_OK) return st;
  size_t n = (size_t)b->n_tok, attn_bytes = n * (size_t)b->attn_width * sizeof(int32_t);
  if (attn_bytes > m->attn_cap) {
    size_t cap = attn_bytes < 4096 ? 4096 : attn_bytes + attn_bytes / 2;
    velo_buffer *nb = NULL;
    if ((st = m->be->buffer_alloc(m->inst, cap, &nb, err)) != VELO_OK) return st;
    if (m->attn_buf) m->be->buffer_free(m->inst, m->attn_buf);
    m->attn_buf = nb;
    m->attn_cap = cap;
  }
  if ((st = m->be->buffer_write(m->inst, m->scratch, m->off_ids, b->tokens, 4 * n, err)) ||
      (st = m->be->buffer_write(m->inst, m->scratch, m->off_pos, b->pos, 4 * n, err)) ||
      (st = m->be->buffer_write(m->inst, m->scratch, m->off_slot, b->slot, 4 * n, err)) ||
      (b->n_out && (st = m->be->buffer_write(m->inst, m->scratch, m->off_rows, b->out_rows,
                                             4 * (size_t)b->n_out, err))) ||
      (st = m->be->buffer_write(m->inst, m->attn_buf, 0, b->attn, attn_bytes, err)))
    return st;

  m->n_tens = 0;
  m->n_nodes = 0;
  velo_buffer *S = m->scratch;
  int64_t E = hp->n_embd, HD = hp->head_dim, NH = hp->n_head, NKV = hp->n_head_kv, F = hp->n_ff;
  int64_t B = b->n_tok;
  velo_tensor *ids = view(m, S, m->off_ids, VELO_DTYPE_I32, 1, B, 1, 1);
  velo_tensor *p = view(m, S, m->off_pos, VELO_DTYPE_I32, 1, B, 1, 1);
  velo_tensor *slots = view(m, S, m->off_slot, VELO_DTYPE_I32, 1, B, 1, 1);
  velo_tensor *table = view(m, m->attn_buf, 0, VELO_DTYPE_I32, 2, b->attn_width, B, 1);
  velo_tensor *x = view(m, S, m->off_x, VELO_DTYPE_F32, 2, E, B, 1);
  velo_tensor *cur = view(m, S, m->off_cur, VELO_DTYPE_F32, 2, E, B, 1);
  node(m, VELO_OP_GET_ROWS, x, &m->tok_embd, ids);

  float kq_scale = 1.0f / sqrtf((float)HD);
  for (int64_t l = 0; l < hp->n_layer; l++) {
    llama_layer *L = &m->layers[l];
    /* Attention block. */
    node(m, VELO_OP_RMS_NORM, cur, x, NULL)->fparams[0] = hp->rms_eps;
    node(m, VELO_OP_MUL, cur, cur, &L->attn_norm);
    velo_tensor *q = view(m, S, m->off_q, VELO_DTYPE_F32, 2, E, B, 1);
    velo_tensor *k = view(m, S, m->off_k, VELO_DTYPE_F32, 2, NKV * HD, B, 1);
    velo_tensor *v = view(m, S, m->off_v, VELO_DTYPE_F32, 2, NKV * HD, B, 1);
    node(m, VELO_OP_MUL_MAT, q, &L->wq, cur);
    node(m, VELO_OP_MUL_MAT, k, &L->wk, cur);
    node(m, VELO_OP_MUL_MAT, v, &L->wv, cur);
    velo_tensor *q3 = view(m, S, m->off_q, VELO_DTYPE_F32, 3, HD, NH, B);
    velo_tensor *k3 = view(m, S, m->off_k, VELO_DTYPE_F32, 3, HD, NKV, B);
    velo_tensor *qr = view(m, S, m->off_qr, VELO_DTYPE_F32, 3, HD, NH, B);
    velo_tensor *kr = view(m, S, m->off_kr, VELO_DTYPE_F32, 3, HD, NKV, B);
    rope_node(m, qr, q3, p);
    rope_node(m, kr, k3, p);
    /* Store K and V of the new tokens in their pool slots. */
    size_t k_off = (size_t)(2 * l) * kv->layer_bytes, v_off = k_off + kv->layer_bytes;
    velo_tensor *kpool2 = view(m, kv->buf, k_off, VELO_DTYPE_F32, 2, NKV * HD, kv->n_slots, 1);
    velo_tensor *vpool2 = view(m, kv->buf, v_off, VELO_DTYPE_F32, 2, NKV * HD, kv->n_slots, 1);
    velo_tensor *kr2 = view(m, S, m->off_kr, VELO_DTYPE_F32, 2, NKV * HD, B, 1);
    node(m, VELO_OP_SET_ROWS, kpool2, kr2, slots);
    node(m, VELO_OP_SET_ROWS, vpool2, v, slots);
    velo_tensor *kpool = view(m, kv->buf, k_off, VELO_DTYPE_F32, 3, HD, NKV, kv->n_slots);
    velo_tensor *vpool = view(m, kv->buf, v_off, VELO_DTYPE_F32, 3, HD, NKV, kv->n_slots);
    velo_tensor *attn3 = view(m, S, m->off_attn, VELO_DTYPE_F32, 3, HD, NH, B);
    velo_graph_node *an = node(m, VELO_OP_ATTENTION_PAGED, attn3, qr, kpool);
    an->src[2] = vpool;
    an->src[3] = table;
    an->iparams[0] = b->block_size;
    an->fparams[0] = kq_scale;
    velo_tensor *attn = view(m, S, m->off_attn, VELO_DTYPE_F32, 2, E, B, 1);
    velo_tensor *o = view(m, S, m->off_o, VELO_DTYPE_F32, 2, E, B, 1);
    node(m, VELO_OP_MUL_MAT, o, &L->wo, attn);
    node(m, VELO_OP_ADD, x, x, o);
    /* Feed-forward block. */
    node(m, VELO_OP_RMS_NORM, cur, x, NULL)->fparams[0] = hp->rms_eps;
    node(m, VELO_OP_MUL, cur, cur, &L->ffn_norm);
    velo_tensor *gt = view(m, S, m->off_g, VELO_DTYPE_F32, 2, F, B, 1);
    velo_tensor *up = view(m, S, m->off_u, VELO_DTYPE_F32, 2, F, B, 1);
    velo_tensor *h = view(m, S, m->off_h, VELO_DTYPE_F32, 2, F, B, 1);
    velo_tensor *d = view(m, S, m->off_d, VELO_DTYPE_F32, 2, E, B, 1);
    node(m, VELO_OP_MUL_MAT, gt, &L->w_gate, cur);
    node(m, VELO_OP_MUL_MAT, up, &L->w_up, cur);
    node(m, VELO_OP_SWIGLU, h, gt, up);
    node(m, VELO_OP_MUL_MAT, d, &L->w_down, h);
    node(m, VELO_OP_ADD, x, x, d);
  }
  if (b->n_out > 0) {
    /* Output: only the rows whose logits are wanted. */
    int64_t R = b->n_out;
    velo_tensor *rows = view(m, S, m->off_rows, VELO_DTYPE_I32, 1, R, 1, 1);
    velo_tensor *xo = view(m, S, m->off_cur, VELO_DTYPE_F32, 2, E, R, 1);
    velo_tensor *outn = view(m, S, m->off_outn, VELO_DTYPE_F32, 2, E, R, 1);
    velo_tensor *lg = view(m, S, m->off_logits, VELO_DTYPE_F32, 2, hp->n_vocab, R, 1);
    node(m, VELO_OP_GET_ROWS, xo, x, rows);
    node(m, VELO_OP_RMS_NORM, outn, xo, NULL)->fparams[0] = hp->rms_eps;
    node(m, VELO_OP_MUL, outn, outn, &m->out_norm);
    node(m, VELO_OP_MUL_MAT, lg, &m->output, outn);
  }

  velo_graph g = {.struct_size = sizeof g, .n_nodes = m->n_nodes, .nodes = m->nodes};
  if ((st = m->be->compute(m->inst, &g, err)) != VELO_OK) return st;
  if (b->n_out == 0) return VELO_OK;
  return m->be->buffer_read(m->inst, S, m->off_logits, logits,
                            (size_t)b->n_out * (size_t)hp->n_vocab * sizeof(float), err);
}

velo_status llama_forward(llama_model *m, llama_kv *kv, const int32_t *tokens, int32_t n_tok,
                          int64_t pos0, float *logits, velo_error *err) {
  if (n_tok < 1 || n_tok > m->max_batch)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "batch of %d tokens; allowed 1..%d", n_tok,
                          m->max_batch);
  int64_t n_ctx = kv->pool->n_slots;
  if (pos0 < 0 || pos0 + n_tok > n_ctx)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "positions %lld..%lld do not fit the KV cache of %lld",
                          (long long)pos0, (long long)(pos0 + n_tok - 1), (long long)n_ctx);
  int32_t *buf = malloc((size_t)n_tok * 5 * sizeof(int32_t));
  if (!buf) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  int32_t *pos = buf, *attn = buf + n_tok; /* attn: n_tok x (pos, block 0) */
  for (int32_t i = 0; i < n_tok; i++) {
    pos[i] = (int32_t)(pos0 + i);
    attn[2 * i] = pos[i];
    attn[2 * i + 1] = 0;
  }
  int32_t last = n_tok - 1;
  /* One block of n_ctx slots: position p is slot p. */
  llama_batch b = {.n_tok = n_tok, .tokens = tokens, .pos = pos, .slot = pos, .attn = attn,
                   .attn_width = 2, .block_size = (int32_t)n_ctx, .n_out = 1, .out_rows = &last};
  velo_status st = llama_decode(m, kv->pool, &b, logits, err);
  free(buf);
  return st;
}
