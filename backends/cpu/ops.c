/*
 * ops.c - the graph ops of the CPU backend: per-node validation and the
 * multi-threaded kernels (GET_ROWS, RMS_NORM, MUL, ADD, MUL_MAT, ROPE,
 * SWIGLU, CPY, ATTENTION, SET_ROWS, ATTENTION_PAGED; semantics in
 * velo/backend.h).
 *
 * Each op splits its work over the instance's pool by whole output rows
 * (output rows of the weight matrix for MUL_MAT, (token, head) pairs for
 * ATTENTION and ATTENTION_PAGED, source rows for SET_ROWS), and every
 * output element is computed by one thread in one fixed order, so results
 * are bit-identical whatever the thread count.  Consecutive MUL_MATs with
 * Q8_0/Q4_0 weights on the same activations (q/k/v, gate/up) run as one
 * job (velo_cpu_graph_step): one activation preparation, one pool run over
 * the weight rows of all of them, the same outputs.
 *
 * Batch invariance (velo_device_info.batch_invariant): the arithmetic that
 * produces one token's output never depends on the other tokens of the
 * node.  MUL_MAT converts each activation column on its own and computes
 * every dst[n, m] with one full-length dot product of weight row n and
 * column m in one fixed order (for Q8_0/Q4_0 weights the arithmetic defined
 * in cpu_kernels.h, whichever tile of the matrix kernel computes it; the
 * tiling only orders independent dot products); ATTENTION and
 * ATTENTION_PAGED compute each (token, head) pair alone over its own
 * positions; the other ops are row-wise.  The thread count (which does
 * depend on the node's size) only decides who computes an output, never
 * how.
 *
 * Tensors: ne[0] is the row length and must be contiguous (nb[0] = element
 * or block size); rows are addressed through nb[1..3], so views with gaps
 * (KV-cache slots, a slice of a fused QKV) work.  Flat row r of a tensor is
 * (i1, i2, i3) with r = i1 + ne1*(i2 + ne2*i3).  A dst may be the same
 * memory as a source of an element-wise op (in place); other overlaps are
 * the caller's error.
 *
 * Arithmetic follows llama.cpp; the details are at each kernel.
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "velo/op_check.h"

/* ROPE keeps a cos/sin cache of n_rot/2 pairs on the stack. */
#define ROPE_MAX_ROT 4096
/* Minimum work (about multiply-adds) per thread before another thread is
 * worth waking; results do not depend on it. */
#define MIN_WORK_PER_THREAD 32768

/* See cpu_backend.h. */
const char *velo_cpu_op_name(int op) { return velo_op_check_name(op); }

/* Fills err with "node <index> (<OP>): <message>" and returns code. */
#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
static velo_status node_fail(velo_error *err, velo_status code, size_t index, int op,
                             const char *fmt, ...) {
  char msg[VELO_ERROR_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return velo_error_set(err, code, "cpu: node %zu (%s): %s", index, velo_cpu_op_name(op), msg);
}

/* ------------------------------------------------------------------ */
/* Tensor helpers                                                       */
/* ------------------------------------------------------------------ */

/* Rows of a tensor (ne1*ne2*ne3); shapes are checked to keep it small. */
static int64_t n_rows(const velo_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

/* Elements of a tensor. */
static int64_t n_elements(const velo_tensor *t) { return t->ne[0] * n_rows(t); }

/* Address of flat row r (see the top of the file). */
static char *row_ptr(const velo_tensor *t, int64_t r) {
  int64_t i1 = r % t->ne[1];
  r /= t->ne[1];
  int64_t i2 = r % t->ne[2];
  int64_t i3 = r / t->ne[2];
  return (char *)t->data + (size_t)i1 * t->nb[1] + (size_t)i2 * t->nb[2] +
         (size_t)i3 * t->nb[3];
}

/* Element i (flat, ne[0] fastest) of an I32 tensor. */
static int32_t i32_at(const velo_tensor *t, int64_t i) {
  const char *row = row_ptr(t, i / t->ne[0]);
  int32_t v;
  memcpy(&v, row + (size_t)(i % t->ne[0]) * t->nb[0], sizeof v);
  return v;
}

/* Splits n items into nth nearly equal contiguous ranges; [*b, *e) is
 * share ith. */
static void split_range(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
  *b = n * ith / nth;
  *e = n * (ith + 1) / nth;
}

/* Threads worth using for work units of total size work. */
static int threads_for(const velo_backend_instance *inst, double work) {
  int n = velo_cpu_pool_size(inst->pool);
  double want = work / MIN_WORK_PER_THREAD;
  if (want < 1.0) return 1;
  return want < n ? (int)want : n;
}

/* Checks one tensor's header (velo_op_check_tensor). */
static velo_status check_tensor(const velo_graph_node *node, size_t index, const char *role,
                                const velo_tensor *t, velo_error *err) {
  return velo_op_check_tensor(node, index, "cpu", role, t, err);
}

/* Sets *span to the bytes from a tensor's first byte to just past its last
 * one; false if that overflows. */
static bool tensor_span(const velo_tensor *t, size_t *span) {
  size_t s = velo_dtype_row_bytes(t->dtype, t->ne[0]), part;
  for (int i = 1; i < VELO_MAX_DIMS; i++) {
    if (__builtin_mul_overflow((size_t)(t->ne[i] - 1), t->nb[i], &part)) return false;
    if (__builtin_add_overflow(s, part, &s)) return false;
  }
  *span = s;
  return true;
}

/* Checks that a tensor's data is set and, when it lives in a CPU buffer,
 * lies inside it; a dst must not be in wrapped (read-only) memory. */
static velo_status check_data(const velo_graph_node *node, size_t index, const char *role,
                              const velo_tensor *t, bool is_dst, velo_error *err) {
  if (!t->data)
    return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                     "%s has no host data (not in a CPU buffer?)", role);
  const velo_buffer *buf = t->buffer;
  if (!buf || buf->magic != VELO_CPU_BUFFER_MAGIC) return VELO_OK; /* not ours to check */
  const char *lo = buf->ptr, *p = t->data;
  size_t span = 0;
  if (!tensor_span(t, &span) || p < lo || (size_t)(p - lo) > buf->size ||
      span > buf->size - (size_t)(p - lo))
    return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                     "%s (%zu bytes) lies outside its buffer (%zu bytes)", role, span, buf->size);
  if (is_dst && !buf->owned)
    return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                     "%s is in read-only wrapped host memory", role);
  return VELO_OK;
}

/* The weight dtypes (GET_ROWS and MUL_MAT src0) this backend takes. */
static const velo_dtype k_weights[] = {VELO_DTYPE_F32,  VELO_DTYPE_F16,  VELO_DTYPE_BF16,
                                       VELO_DTYPE_Q8_0, VELO_DTYPE_Q4_0, VELO_DTYPE_Q4_1,
                                       VELO_DTYPE_Q5_0, VELO_DTYPE_Q5_1, VELO_DTYPE_Q4_K,
                                       VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K, VELO_DTYPE_Q2_K,
                                       VELO_DTYPE_Q3_K, VELO_DTYPE_Q8_K};

/* See cpu_backend.h.  Headers and this backend's dtypes are checked here;
 * the op contracts of backend.h in velo_op_check_shapes (velo/op_check.h). */
velo_status velo_cpu_node_check(const velo_graph_node *node, size_t index, velo_error *err) {
  if (!node) return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: node %zu is NULL", index);
  if (node->op <= VELO_OP_NONE || node->op >= VELO_OP_COUNT)
    return node_fail(err, VELO_UNIMPLEMENTED, index, node->op, "op %d is not supported",
                     (int)node->op);
  velo_status st = check_tensor(node, index, "dst", node->dst, err);
  static const char *const src_names[VELO_NODE_MAX_SRC] = {"src0", "src1", "src2", "src3"};
  for (int i = 0; st == VELO_OK && i < velo_op_n_src(node->op); i++)
    st = check_tensor(node, index, src_names[i], node->src[i], err);
  if (st != VELO_OK) return st;

  st = velo_op_check_dtypes(node, index, "cpu", k_weights, sizeof k_weights / sizeof k_weights[0],
                            err);
  if (st != VELO_OK) return st;
  if ((st = velo_op_check_shapes(node, index, "cpu", err)) != VELO_OK) return st;
  /* this backend's own limit: the rotation tables live on the stack */
  if (node->op == VELO_OP_ROPE && node->iparams[0] > ROPE_MAX_ROT)
    return node_fail(err, VELO_UNIMPLEMENTED, index, node->op, "n_rot %d > %d", node->iparams[0],
                     ROPE_MAX_ROT);
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Scratch memory                                                       */
/* ------------------------------------------------------------------ */

/* Makes inst->scratch at least size bytes (contents not kept). */
static velo_status scratch_reserve(velo_backend_instance *inst, size_t size, size_t index,
                                   int op, velo_error *err) {
  if (inst->scratch_size >= size) return VELO_OK;
  /* grow by a quarter more than asked, so that slowly growing needs (the
   * attention span during decode) do not reallocate at every step */
  size_t want = size + size / 4;
  if (want < size || want > SIZE_MAX - VELO_CPU_ALIGN)
    return node_fail(err, VELO_RESOURCE_EXHAUSTED, index, op, "scratch size %zu too large", size);
  want = (want + VELO_CPU_ALIGN - 1) / VELO_CPU_ALIGN * VELO_CPU_ALIGN;
  void *p = aligned_alloc(VELO_CPU_ALIGN, want);
  if (!p)
    return node_fail(err, VELO_RESOURCE_EXHAUSTED, index, op,
                     "cannot allocate %zu bytes of scratch memory", want);
  free(inst->scratch);
  inst->scratch = p;
  inst->scratch_size = want;
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Kernels.  Each is fn(arg, ith, nth) for velo_cpu_pool_run.           */
/* ------------------------------------------------------------------ */

/* Most MUL_MAT nodes computed together (consecutive, same activations). */
#define Q_MAX_GROUP 4

/* One MUL_MAT of a group of integer-block products: its weights, the dst
 * row (output column) pointers, and its first row in the group's row
 * numbering (the weight rows of the group's nodes one after another). */
typedef struct q_part {
  const velo_tensor *w;
  float *const *dst_cols;
  int64_t row0;
} q_part;

/* What a kernel needs besides the node; on the caller's stack for one run. */
typedef struct op_args {
  const velo_graph_node *node;
  const velo_cpu_vec *vec;
  void *scratch;
  size_t col_bytes;     /* MUL_MAT: bytes of one converted activation column */
  int n_parts;          /* MUL_MAT Q8_0/Q4_0: nodes in the group, and ... */
  q_part parts[Q_MAX_GROUP];
  int64_t total_rows;   /* ... their weight rows in all */
  atomic_llong *next_row; /* MUL_MAT Q8_0/Q4_0: first group row not yet taken */
  float theta_scale;    /* ROPE */
  int64_t scratch_per_thread; /* ATTENTION: floats of score space per thread */
} op_args;

/* GET_ROWS: dst row t = src0 row ids[t], converted to float. */
static void k_get_rows(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *tab = a->node->src[0], *ids = a->node->src[1], *dst = a->node->dst;
  int64_t b, e;
  split_range(n_rows(dst), ith, nth, &b, &e);
  for (int64_t t = b; t < e; t++) {
    const char *row = (const char *)tab->data + (size_t)i32_at(ids, t) * tab->nb[1];
    velo_dequantize_row(tab->dtype, row, (float *)row_ptr(dst, t), tab->ne[0]);
  }
}

/* RMS_NORM as llama.cpp: sum of float squares accumulated in double,
 * mean = (float)(sum/n), scale = 1/sqrtf(mean + eps), y = x*scale. */
static void k_rms_norm(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *src = a->node->src[0], *dst = a->node->dst;
  const float eps = a->node->fparams[0];
  const int64_t n = src->ne[0];
  int64_t b, e;
  split_range(n_rows(src), ith, nth, &b, &e);
  for (int64_t r = b; r < e; r++) {
    const float *x = (const float *)row_ptr(src, r);
    float *y = (float *)row_ptr(dst, r);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
  }
}

/* MUL / ADD with src1 broadcast along every dimension where its ne is 1. */
static void k_binary(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *x = a->node->src[0], *w = a->node->src[1], *dst = a->node->dst;
  const bool mul = a->node->op == VELO_OP_MUL;
  const int64_t n = x->ne[0];
  int64_t b, e;
  split_range(n_rows(dst), ith, nth, &b, &e);
  for (int64_t r = b; r < e; r++) {
    int64_t i1 = r % x->ne[1], i2 = (r / x->ne[1]) % x->ne[2], i3 = r / (x->ne[1] * x->ne[2]);
    const float *xr = (const float *)row_ptr(x, r);
    const float *wr = (const float *)((const char *)w->data + (size_t)(i1 % w->ne[1]) * w->nb[1] +
                                      (size_t)(i2 % w->ne[2]) * w->nb[2] +
                                      (size_t)(i3 % w->ne[3]) * w->nb[3]);
    float *y = (float *)row_ptr(dst, r);
    if (w->ne[0] == n) {
      if (mul)
        for (int64_t i = 0; i < n; i++) y[i] = xr[i] * wr[i];
      else
        for (int64_t i = 0; i < n; i++) y[i] = xr[i] + wr[i];
    } else {
      const float s = wr[0];
      if (mul)
        for (int64_t i = 0; i < n; i++) y[i] = xr[i] * s;
      else
        for (int64_t i = 0; i < n; i++) y[i] = xr[i] + s;
    }
  }
}

/* MUL_MAT phase 1: converts the activation columns (rows of src1) to the
 * weight type's partner format in scratch: prepared Q8_0 columns (qcol,
 * cpu_kernels.h) for Q8_0/Q4_0 weights, fp16 for F16 weights, and the
 * activation format of the other weight types (velo_act_convert: Q8_K for
 * K-quants, Q8_1 for Q4_1/Q5_1, Q8_0 for Q5_0, bf16 for BF16). */
static void k_mul_mat_convert(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *w = a->node->src[0], *x = a->node->src[1];
  const int64_t K = x->ne[0];
  int64_t b, e;
  split_range(n_rows(x), ith, nth, &b, &e);
  for (int64_t m = b; m < e; m++) {
    const float *col = (const float *)row_ptr(x, m);
    char *out = (char *)a->scratch + (size_t)m * a->col_bytes;
    if (w->dtype == VELO_DTYPE_F16)
      a->vec->fp32_to_fp16_row(col, (uint16_t *)out, K);
    else if (velo_dtype_converts_act(w->dtype))
      velo_act_convert(w->dtype, col, out, K);
    else
      a->vec->qcol_prepare(w->dtype, col, K, out);
  }
}

/* Work sharing and cache blocking of the integer-block product.  Threads
 * take runs of weight rows from a shared cursor, largest first ("guided":
 * a run is 3/4 of the rows left / threads, at least Q_MIN_RUN rows, a
 * multiple of 4), so a thread that is slowed down (a busy core, a late
 * wake-up) leaves less undone at the end than with a fixed split, while
 * the runs stay long enough for the hardware prefetcher (measured against
 * 1/2 and 1/(threads+1) of the rows left, a fixed split, and smaller
 * minimum runs: this was fastest on decode-sized products).  Inside
 * a run, a chunk of Q_ROW_CHUNK rows meets the columns Q_COL_CHUNK_BYTES
 * at a time when they do not all fit, so that the chunk's weights stay in
 * L2 while the columns stream past them.  None of this changes any result:
 * each output is computed whole by one call, with the arithmetic of
 * cpu_kernels.h. */
#define Q_MIN_RUN 64
#define Q_ROW_CHUNK 64
#define Q_COL_CHUNK_BYTES (384 * 1024)

/* Takes the next run of rows: sets [*r0, *r0 + *n) and returns true, or
 * false when every row is taken. */
static bool take_rows(atomic_llong *next, int64_t N, int nth, int64_t *r0, int64_t *n) {
  long long cur = atomic_load_explicit(next, memory_order_relaxed);
  for (;;) {
    const int64_t left = N - cur;
    if (left <= 0) return false;
    int64_t run = left * 3 / (4 * nth);
    run = (run + 3) / 4 * 4;
    if (run < Q_MIN_RUN) run = Q_MIN_RUN;
    if (run > left) run = left;
    if (atomic_compare_exchange_weak_explicit(next, &cur, cur + run, memory_order_relaxed,
                                              memory_order_relaxed)) {
      *r0 = cur;
      *n = run;
      return true;
    }
  }
}

/* Rows [b, e) of one weight matrix against every prepared column, in
 * cache-blocked calls of the ISA's matrix kernel. */
static void mul_mat_q_rows(const op_args *a, const q_part *part, int64_t b, int64_t e,
                           int64_t M) {
  const velo_tensor *w = part->w;
  const int64_t K = w->ne[0];
  int64_t col_chunk = (int64_t)(Q_COL_CHUNK_BYTES / a->col_bytes);
  if (col_chunk < 4) col_chunk = 4;
  /* all columns in one chunk: the whole run at once (long weight streams) */
  const int64_t row_chunk = M <= col_chunk ? e - b : Q_ROW_CHUNK;
  for (int64_t r0 = b; r0 < e; r0 += row_chunk) {
    const int64_t nr = e - r0 < row_chunk ? e - r0 : row_chunk;
    const char *wr = (const char *)w->data + (size_t)r0 * w->nb[1];
    for (int64_t c0 = 0; c0 < M; c0 += col_chunk) {
      const int64_t nc = M - c0 < col_chunk ? M - c0 : col_chunk;
      const char *cols = (const char *)a->scratch + (size_t)c0 * a->col_bytes;
      if (velo_dtype_converts_act(w->dtype))
        a->vec->mul_mat_act(w->dtype, wr, w->nb[1], nr, cols, a->col_bytes, nc, K,
                            part->dst_cols + c0, r0);
      else
        a->vec->mul_mat_q(w->dtype, wr, w->nb[1], nr, cols, a->col_bytes, nc, K,
                          part->dst_cols + c0, r0);
    }
  }
}

/* MUL_MAT phase 2 for block-format weights (is_qmat): runs of rows of the group taken
 * from the shared cursor (a run may span two nodes' matrices), against
 * every prepared column. */
static void k_mul_mat_q(void *p, int ith, int nth) {
  const op_args *a = p;
  const int64_t M = n_rows(a->node->src[1]);
  int64_t b, len;
  while (take_rows(a->next_row, a->total_rows, nth, &b, &len)) {
    for (int j = 0; j < a->n_parts; j++) {
      const q_part *part = &a->parts[j];
      const int64_t lo = part->row0, hi = lo + part->w->ne[1];
      const int64_t rb = b > lo ? b : lo, re = b + len < hi ? b + len : hi;
      if (rb < re) mul_mat_q_rows(a, part, rb - lo, re - lo, M);
    }
  }
}

/* MUL_MAT phase 2 for F32/F16 weights: dst[n, m] = dot(weight row n,
 * column m) for the weight rows n of this thread's share.  Tiles of rows x
 * columns keep a few weight rows in L1 while the columns stream from L2. */
static void k_mul_mat_dot(void *p, int ith, int nth) {
  enum { TILE_N = 16, TILE_M = 64 };
  const op_args *a = p;
  const velo_tensor *w = a->node->src[0], *x = a->node->src[1], *dst = a->node->dst;
  const velo_cpu_vec *vec = a->vec;
  const int64_t K = w->ne[0], M = n_rows(x);
  int64_t b, e;
  split_range(w->ne[1], ith, nth, &b, &e);
  for (int64_t n0 = b; n0 < e; n0 += TILE_N) {
    int64_t n1 = n0 + TILE_N < e ? n0 + TILE_N : e;
    for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
      int64_t m1 = m0 + TILE_M < M ? m0 + TILE_M : M;
      for (int64_t n = n0; n < n1; n++) {
        const char *wr = (const char *)w->data + (size_t)n * w->nb[1];
        for (int64_t m = m0; m < m1; m++) {
          const char *col = a->scratch ? (const char *)a->scratch + (size_t)m * a->col_bytes
                                       : row_ptr(x, m);
          /* F32 or F16 (the block formats go to k_mul_mat_q) */
          const float v =
              w->dtype == VELO_DTYPE_F32
                  ? vec->dot_f32((const float *)wr, (const float *)col, K)
                  : vec->dot_f16((const uint16_t *)wr, (const uint16_t *)col, K);
          ((float *)row_ptr(dst, m))[n] = v;
        }
      }
    }
  }
}

/* ROPE as llama.cpp (ggml_rope_cache_init with ext_factor 0, mscale 1):
 * theta_base starts at (float)pos; pair i uses theta = freq_scale *
 * theta_base, c = cosf(theta), s = sinf(theta); then theta_base *=
 * theta_scale, theta_scale = powf(freq_base, -2.0f/n_rot).  Pairs are
 * (2i, 2i+1) in normal mode and (i, i + n_rot/2) in neox mode; dims past
 * n_rot are copied. */
static void k_rope(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *src = a->node->src[0], *pos = a->node->src[1], *dst = a->node->dst;
  const int n_rot = a->node->iparams[0], half = n_rot / 2;
  const bool neox = a->node->iparams[1] == VELO_ROPE_NEOX;
  const float freq_scale = a->node->fparams[1];
  const int64_t head_dim = src->ne[0], n_head = src->ne[1];
  float cs[ROPE_MAX_ROT / 2], sn[ROPE_MAX_ROT / 2];
  int64_t cached_token = -1;
  int64_t b, e;
  split_range(n_rows(src), ith, nth, &b, &e);
  for (int64_t r = b; r < e; r++) {
    int64_t t = r / n_head;
    if (t != cached_token) {
      float theta_base = (float)i32_at(pos, t);
      for (int i = 0; i < half; i++) {
        float theta = freq_scale * theta_base;
        cs[i] = cosf(theta);
        sn[i] = sinf(theta);
        theta_base *= a->theta_scale;
      }
      cached_token = t;
    }
    const float *x = (const float *)row_ptr(src, r);
    float *y = (float *)row_ptr(dst, r);
    for (int i = 0; i < half; i++) {
      int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
      const float x0 = x[i0], x1 = x[i1];
      y[i0] = x0 * cs[i] - x1 * sn[i];
      y[i1] = x0 * sn[i] + x1 * cs[i];
    }
    if (y != x)
      for (int64_t i = n_rot; i < head_dim; i++) y[i] = x[i];
  }
}

/* SWIGLU: dst = silu(a) * b, silu(x) = x / (1 + expf(-x)). */
static void k_swiglu(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *g = a->node->src[0], *u = a->node->src[1], *dst = a->node->dst;
  const int64_t n = g->ne[0];
  int64_t b, e;
  split_range(n_rows(g), ith, nth, &b, &e);
  for (int64_t r = b; r < e; r++) {
    const float *x = (const float *)row_ptr(g, r), *v = (const float *)row_ptr(u, r);
    float *y = (float *)row_ptr(dst, r);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] / (1.0f + expf(-x[i]))) * v[i];
  }
}

/* CPY: flat row r of src0 to flat row r of dst, F32 -> F32 or F16
 * (round-half-even). */
static void k_cpy(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *src = a->node->src[0], *dst = a->node->dst;
  const int64_t n = src->ne[0];
  int64_t b, e;
  split_range(n_rows(src), ith, nth, &b, &e);
  for (int64_t r = b; r < e; r++) {
    const float *x = (const float *)row_ptr(src, r);
    char *y = row_ptr(dst, r);
    if (dst->dtype == VELO_DTYPE_F16)
      a->vec->fp32_to_fp16_row(x, (uint16_t *)y, n);
    else
      memmove(y, x, (size_t)n * sizeof(float));
  }
}

/* Walks the KV slots of logical positions 0, 1, 2, ... of one query:
 * slot p itself for ATTENTION (blocks NULL), block b_(p / bs) * bs + p % bs
 * for ATTENTION_PAGED, with the block ids read one by one as positions
 * reach them (never an entry past the last block used). */
typedef struct kv_cursor {
  const char *blocks; /* I32 block ids b_0, b_1, ... (maybe unaligned); NULL: contiguous */
  int64_t bs;         /* block size in slots */
  int64_t blk;        /* index of the current block */
  int64_t off;        /* next offset inside it */
  int64_t base;       /* first slot of the current block */
} kv_cursor;

/* Block id i of a cursor's table. */
static inline int64_t kv_block(const kv_cursor *c, int64_t i) {
  int32_t b;
  memcpy(&b, c->blocks + (size_t)i * sizeof b, sizeof b);
  return b;
}

/* A cursor at logical position 0; reads block 0 (every query uses it). */
static inline kv_cursor kv_start(const char *blocks, int64_t bs) {
  kv_cursor c = {.blocks = blocks, .bs = blocks ? bs : INT64_MAX, .blk = 0, .off = 0, .base = 0};
  if (blocks) c.base = kv_block(&c, 0) * bs;
  return c;
}

/* The slot of the next logical position. */
static inline int64_t kv_next(kv_cursor *c) {
  if (c->off == c->bs) {
    c->off = 0;
    c->blk++;
    c->base = kv_block(c, c->blk) * c->bs;
  }
  return c->base + c->off++;
}

/* One (token t, query head h) pair of ATTENTION or ATTENTION_PAGED over
 * logical positions 0..n_kv-1, whose slots the cursor made from (blocks,
 * bs) gives.  As llama.cpp's non-flash path with an F32 mask: s_j =
 * dot(k_j, q) * scale (8-lane float dot; F16 K converted exactly), max
 * subtracted, e_j = expf(s_j - max), sum of e_j in double, p_j = e_j *
 * (float)(1/sum), out = sum_j p_j * v_j accumulated in float in j order.
 * Both ops run this one function, so the same logical K/V gives the same
 * bits.  s: n_kv floats of scratch owned by the calling thread. */
static void attend_one(const op_args *a, int64_t t, int64_t h, int64_t n_kv, const char *blocks,
                       int64_t bs, float *s) {
  const velo_graph_node *node = a->node;
  const velo_tensor *q = node->src[0], *K = node->src[1], *V = node->src[2], *dst = node->dst;
  const int64_t D = q->ne[0], g = h / (q->ne[1] / K->ne[1]);
  const float scale = node->fparams[0];
  const char *qr = (const char *)q->data + (size_t)h * q->nb[1] + (size_t)t * q->nb[2];
  float *out = (float *)((char *)dst->data + (size_t)h * dst->nb[1] + (size_t)t * dst->nb[2]);
  const char *kbase = (const char *)K->data + (size_t)g * K->nb[1];
  const char *vbase = (const char *)V->data + (size_t)g * V->nb[1];
  float mx = -INFINITY;
  kv_cursor c = kv_start(blocks, bs);
  for (int64_t j = 0; j < n_kv; j++) {
    const char *kr = kbase + (size_t)kv_next(&c) * K->nb[2];
    float dot = K->dtype == VELO_DTYPE_F16
                    ? a->vec->dot_f16_f32((const uint16_t *)kr, (const float *)qr, D)
                    : a->vec->dot_f32((const float *)kr, (const float *)qr, D);
    s[j] = dot * scale;
    mx = s[j] > mx ? s[j] : mx;
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n_kv; j++) {
    s[j] = expf(s[j] - mx);
    sum += (double)s[j];
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
  c = kv_start(blocks, bs);
  for (int64_t j = 0; j < n_kv; j++) {
    const float pj = s[j] * inv;
    const char *vr = vbase + (size_t)kv_next(&c) * V->nb[2];
    if (V->dtype == VELO_DTYPE_F16) {
      const uint16_t *v16 = (const uint16_t *)vr;
      for (int64_t d = 0; d < D; d++) out[d] += pj * velo_fp16_to_fp32(v16[d]);
    } else {
      const float *v32 = (const float *)vr;
      for (int64_t d = 0; d < D; d++) out[d] += pj * v32[d];
    }
  }
}

/* ATTENTION for the (token, head) pairs of this share: query t attends
 * cache slots 0..pos[t] (see attend_one). */
static void k_attention(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *q = a->node->src[0], *pos = a->node->src[3];
  const int64_t H = q->ne[1];
  float *s = (float *)a->scratch + (size_t)ith * (size_t)a->scratch_per_thread;
  int64_t b, e;
  split_range(H * q->ne[2], ith, nth, &b, &e);
  for (int64_t it = b; it < e; it++) {
    const int64_t t = it / H;
    attend_one(a, t, it % H, (int64_t)i32_at(pos, t) + 1, NULL, 1, s);
  }
}

/* ATTENTION_PAGED for the (token, head) pairs of this share: column t of
 * src3 is (pos_t, b_0, b_1, ...); query t attends logical positions
 * 0..pos_t through its block table (see attend_one). */
static void k_attention_paged(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *q = a->node->src[0], *tab = a->node->src[3];
  const int64_t H = q->ne[1], bs = a->node->iparams[0];
  float *s = (float *)a->scratch + (size_t)ith * (size_t)a->scratch_per_thread;
  int64_t b, e;
  split_range(H * q->ne[2], ith, nth, &b, &e);
  for (int64_t it = b; it < e; it++) {
    const int64_t t = it / H;
    const char *col = row_ptr(tab, t);
    int32_t pos;
    memcpy(&pos, col, sizeof pos);
    attend_one(a, t, it % H, (int64_t)pos + 1, col + sizeof pos, bs, s);
  }
}

/* SET_ROWS: dst row ids[t] = src0 row t for the source rows t of this
 * share, F32 -> F32 or F16 (round-half-even, as CPY).  The driver runs a
 * node with a repeated id on one thread, so the last of the equal ids wins
 * and no row is written by two threads. */
static void k_set_rows(void *p, int ith, int nth) {
  const op_args *a = p;
  const velo_tensor *src = a->node->src[0], *ids = a->node->src[1], *dst = a->node->dst;
  const int64_t n = src->ne[0];
  int64_t b, e;
  split_range(n_rows(src), ith, nth, &b, &e);
  for (int64_t t = b; t < e; t++) {
    const float *x = (const float *)row_ptr(src, t);
    char *y = (char *)dst->data + (size_t)i32_at(ids, t) * dst->nb[1];
    if (dst->dtype == VELO_DTYPE_F16)
      a->vec->fp32_to_fp16_row(x, (uint16_t *)y, n);
    else
      memcpy(y, x, (size_t)n * sizeof(float));
  }
}

/* ------------------------------------------------------------------ */
/* Per-node driver                                                      */
/* ------------------------------------------------------------------ */

/* True when the byte ranges of a and b (each from the tensor's first byte
 * to just past its last) intersect, or when a range cannot be computed.
 * Conservative for strided views that interleave without sharing bytes. */
static bool spans_overlap(const velo_tensor *a, const velo_tensor *b) {
  size_t sa, sb;
  if (!tensor_span(a, &sa) || !tensor_span(b, &sb)) return true;
  const char *pa = a->data, *pb = b->data;
  return pa < pb ? (size_t)(pb - pa) < sa : (size_t)(pa - pb) < sb;
}

/* ATTENTION_PAGED's table check: for every token, pos >= 0, the pos/bs + 1
 * blocks it needs fit in its column (1 + pos/bs < W), and every slot it
 * reads, block id * bs + offset, lies in [0, n_slots). */
static velo_status check_block_tables(const velo_graph_node *node, size_t index,
                                      velo_error *err) {
  const velo_tensor *tab = node->src[3];
  const int64_t W = tab->ne[0], bs = node->iparams[0], n_slots = node->src[1]->ne[2];
  for (int64_t t = 0; t < tab->ne[1]; t++) {
    const char *col = row_ptr(tab, t);
    int32_t pos;
    memcpy(&pos, col, sizeof pos);
    if (pos < 0)
      return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                       "token %lld: position %d is negative", (long long)t, pos);
    const int64_t n_blk = (int64_t)pos / bs + 1;
    if (n_blk >= W)
      return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                       "token %lld: position %d needs %lld blocks of %lld slots, but its "
                       "column has room for W - 1 = %lld",
                       (long long)t, pos, (long long)n_blk, (long long)bs, (long long)(W - 1));
    for (int64_t i = 0; i < n_blk; i++) {
      int32_t blk;
      memcpy(&blk, col + (size_t)(1 + i) * sizeof blk, sizeof blk);
      const int64_t first = (int64_t)blk * bs;
      const int64_t last = first + (i == n_blk - 1 ? (int64_t)pos % bs : bs - 1);
      if (blk < 0 || last >= n_slots)
        return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                         "token %lld: block %lld has id %d, giving slots [%lld, %lld] outside "
                         "the pool [0, %lld)",
                         (long long)t, (long long)i, blk, (long long)first, (long long)last,
                         (long long)n_slots);
    }
  }
  return VELO_OK;
}

/* Data checks: pointers and buffer bounds of every tensor, ids, positions
 * and block tables in range; for SET_ROWS and ATTENTION_PAGED, dst must
 * not overlap any source (the kernels read ids and block tables while
 * writing dst, so an overlap could send a write or read anywhere). */
static velo_status check_node_data(const velo_graph_node *node, size_t index, velo_error *err) {
  static const char *const src_names[VELO_NODE_MAX_SRC] = {"src0", "src1", "src2", "src3"};
  velo_status st = check_data(node, index, "dst", node->dst, true, err);
  for (int i = 0; st == VELO_OK && i < velo_op_n_src(node->op); i++)
    st = check_data(node, index, src_names[i], node->src[i], false, err);
  if (st != VELO_OK) return st;
  if (node->op == VELO_OP_SET_ROWS || node->op == VELO_OP_ATTENTION_PAGED)
    for (int i = 0; i < velo_op_n_src(node->op); i++)
      if (spans_overlap(node->dst, node->src[i]))
        return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                         "dst overlaps %s in memory; this op needs dst apart from "
                         "every source",
                         src_names[i]);
  if (node->op == VELO_OP_SET_ROWS) {
    const velo_tensor *ids = node->src[1];
    int64_t n = n_elements(ids), rows = node->dst->ne[1];
    for (int64_t i = 0; i < n; i++) {
      int32_t id = i32_at(ids, i);
      if (id < 0 || id >= rows)
        return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                         "id %d at %lld is outside dst's rows [0, %lld)", id, (long long)i,
                         (long long)rows);
    }
  }
  if (node->op == VELO_OP_ATTENTION_PAGED) return check_block_tables(node, index, err);
  if (node->op == VELO_OP_GET_ROWS) {
    const velo_tensor *ids = node->src[1];
    int64_t n = n_elements(ids), rows = node->src[0]->ne[1];
    for (int64_t i = 0; i < n; i++) {
      int32_t id = i32_at(ids, i);
      if (id < 0 || id >= rows)
        return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                         "id %d at %lld is outside [0, %lld)", id, (long long)i,
                         (long long)rows);
    }
  }
  if (node->op == VELO_OP_ATTENTION) {
    const velo_tensor *pos = node->src[3];
    int64_t n = n_elements(pos), n_ctx = node->src[1]->ne[2];
    for (int64_t i = 0; i < n; i++) {
      int32_t ps = i32_at(pos, i);
      if (ps < 0 || ps >= n_ctx)
        return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                         "position %d of token %lld is outside the cache [0, %lld)", ps,
                         (long long)i, (long long)n_ctx);
    }
  }
  return VELO_OK;
}

/* qsort order of int32_t values. */
static int cmp_i32(const void *x, const void *y) {
  int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
  return (a > b) - (a < b);
}

/* True for a MUL_MAT whose weights are in a block format: Q8_0 or Q4_0
 * (prepared qcol columns, mul_mat_q) or a converted-activation format
 * (velo_act_convert columns, mul_mat_act).  These share the grouped,
 * row-run scheduled path. */
static bool is_qmat(const velo_graph_node *node) {
  if (node->op != VELO_OP_MUL_MAT) return false;
  const velo_dtype wt = node->src[0]->dtype;
  return wt == VELO_DTYPE_Q8_0 || wt == VELO_DTYPE_Q4_0 || velo_dtype_converts_act(wt);
}

/* Computes n (1..Q_MAX_GROUP) MUL_MAT nodes with block-format weights
 * (is_qmat) of one dtype and the same activations (src1), whose data were
 * checked: the activation columns are prepared once (qcol for Q8_0/Q4_0,
 * velo_act_convert for the other formats, cpu_kernels.h) and the
 * weight rows of all the nodes are shared among the threads as one job.
 * Every output is computed exactly as when each node runs alone.
 * RESOURCE_EXHAUSTED if scratch memory cannot grow (nothing written). */
static velo_status mul_mat_q_group(velo_backend_instance *inst,
                                   const velo_graph_node *const *nodes, int n, size_t index,
                                   velo_error *err) {
  const velo_graph_node *node = nodes[0];
  const velo_tensor *w = node->src[0];
  const int64_t K = w->ne[0], M = n_rows(node->src[1]);
  op_args args = {.node = node, .vec = inst->vec, .n_parts = n};
  if (velo_dtype_converts_act(w->dtype)) /* 64-byte aligned columns */
    args.col_bytes = (velo_act_bytes(w->dtype, K) + VELO_CPU_ALIGN - 1) / VELO_CPU_ALIGN *
                     VELO_CPU_ALIGN;
  else
    args.col_bytes = velo_qcol_bytes(K);
  /* scratch: the prepared columns, then each node's dst row pointers */
  size_t cols = args.col_bytes * (size_t)M;
  cols = (cols + VELO_CPU_ALIGN - 1) / VELO_CPU_ALIGN * VELO_CPU_ALIGN;
  velo_status st = scratch_reserve(inst, cols + sizeof(float *) * (size_t)(M * n), index,
                                   node->op, err);
  if (st != VELO_OK) return st;
  args.scratch = inst->scratch;
  velo_cpu_pool_run(inst->pool, k_mul_mat_convert, &args, threads_for(inst, 4.0 * K * M));
  float **dp = (float **)((char *)inst->scratch + cols);
  for (int j = 0; j < n; j++) {
    for (int64_t m = 0; m < M; m++) dp[j * M + m] = (float *)row_ptr(nodes[j]->dst, m);
    args.parts[j] = (q_part){.w = nodes[j]->src[0], .dst_cols = dp + j * M,
                             .row0 = args.total_rows};
    args.total_rows += nodes[j]->src[0]->ne[1];
  }
  atomic_llong next_row;
  atomic_init(&next_row, 0);
  args.next_row = &next_row;
  velo_cpu_pool_run(inst->pool, k_mul_mat_q, &args,
                    threads_for(inst, (double)K * (double)args.total_rows * (double)M));
  return VELO_OK;
}

/* True when b, a MUL_MAT like a (is_qmat), may be computed in one group
 * with a: the same weight dtype and K, the same activation tensor (data,
 * shape and strides), and b's dst overlaps neither the activations nor a's
 * weights and dst (so computing them together cannot read a result, nor
 * write over an input, that computing them in order would not). */
static bool q_groupable(const velo_graph_node *a, const velo_graph_node *b) {
  const velo_tensor *xa = a->src[1], *xb = b->src[1];
  if (!is_qmat(b) || b->src[0]->dtype != a->src[0]->dtype || xb->data != xa->data ||
      xb->dtype != xa->dtype)
    return false;
  for (int i = 0; i < VELO_MAX_DIMS; i++)
    if (xb->ne[i] != xa->ne[i] || xb->nb[i] != xa->nb[i]) return false;
  return !spans_overlap(b->dst, xa) && !spans_overlap(b->dst, a->src[0]) &&
         !spans_overlap(b->dst, a->dst) && !spans_overlap(a->dst, b->src[0]);
}

/* See cpu_backend.h. */
velo_status velo_cpu_graph_step(velo_backend_instance *inst, const char *nodes, size_t stride,
                                size_t i, size_t n_nodes, size_t *done, velo_error *err) {
  const velo_graph_node *first = (const velo_graph_node *)(nodes + i * stride);
  *done = 1;
  if (!is_qmat(first)) return velo_cpu_node_compute(inst, first, i, err);
  velo_status st = check_node_data(first, i, err);
  if (st != VELO_OK) return st;
  const velo_graph_node *group[Q_MAX_GROUP] = {first};
  int n = 1;
  /* a node joins only when its data checks pass: one that fails is then
   * computed (and fails) on its own, after the group, as in node order */
  while (n < Q_MAX_GROUP && i + (size_t)n < n_nodes) {
    const velo_graph_node *next = (const velo_graph_node *)(nodes + (i + (size_t)n) * stride);
    bool ok = true;
    for (int j = 0; j < n && ok; j++)
      ok = q_groupable(group[j], next) && q_groupable(next, group[j]);
    if (!ok || check_node_data(next, i + (size_t)n, NULL) != VELO_OK) break;
    group[n++] = next;
  }
  *done = (size_t)n;
  return mul_mat_q_group(inst, group, n, i, err);
}

/* See cpu_backend.h. */
velo_status velo_cpu_node_compute(velo_backend_instance *inst, const velo_graph_node *node,
                                  size_t index, velo_error *err) {
  velo_status st = check_node_data(node, index, err);
  if (st != VELO_OK) return st;
  op_args args = {.node = node, .vec = inst->vec};
  const velo_tensor *d = node->dst, *s0 = node->src[0];
  velo_cpu_pool *pool = inst->pool;

  switch (node->op) {
    case VELO_OP_GET_ROWS:
      velo_cpu_pool_run(pool, k_get_rows, &args, threads_for(inst, (double)n_elements(d)));
      return VELO_OK;
    case VELO_OP_RMS_NORM:
      velo_cpu_pool_run(pool, k_rms_norm, &args, threads_for(inst, 2.0 * n_elements(d)));
      return VELO_OK;
    case VELO_OP_MUL:
    case VELO_OP_ADD:
      velo_cpu_pool_run(pool, k_binary, &args, threads_for(inst, (double)n_elements(d)));
      return VELO_OK;
    case VELO_OP_SWIGLU:
      velo_cpu_pool_run(pool, k_swiglu, &args, threads_for(inst, 8.0 * n_elements(d)));
      return VELO_OK;
    case VELO_OP_CPY:
      velo_cpu_pool_run(pool, k_cpy, &args, threads_for(inst, (double)n_elements(d)));
      return VELO_OK;
    case VELO_OP_ROPE:
      args.theta_scale = powf(node->fparams[0], -2.0f / (float)node->iparams[0]);
      velo_cpu_pool_run(pool, k_rope, &args, threads_for(inst, 4.0 * n_elements(d)));
      return VELO_OK;

    case VELO_OP_MUL_MAT: {
      if (is_qmat(node)) return mul_mat_q_group(inst, &node, 1, index, err);
      const int64_t K = s0->ne[0], N = s0->ne[1], M = n_rows(node->src[1]);
      if (s0->dtype == VELO_DTYPE_F16) {
        args.col_bytes = velo_dtype_row_bytes(VELO_DTYPE_F16, K);
        st = scratch_reserve(inst, args.col_bytes * (size_t)M, index, node->op, err);
        if (st != VELO_OK) return st;
        args.scratch = inst->scratch;
        velo_cpu_pool_run(pool, k_mul_mat_convert, &args, threads_for(inst, 4.0 * K * M));
      }
      velo_cpu_pool_run(pool, k_mul_mat_dot, &args, threads_for(inst, (double)K * N * M));
      return VELO_OK;
    }

    case VELO_OP_ATTENTION:
    case VELO_OP_ATTENTION_PAGED: {
      /* scores: per thread, max over the node of pos + 1 floats */
      const bool paged = node->op == VELO_OP_ATTENTION_PAGED;
      const velo_tensor *pos = node->src[3];
      const int64_t n_tok = s0->ne[2];
      int64_t max_kv = 1;
      for (int64_t t = 0; t < n_tok; t++) {
        /* positions checked >= 0; paged ones are element 0 of column t */
        int64_t n_kv = (int64_t)(paged ? i32_at(pos, t * pos->ne[0]) : i32_at(pos, t)) + 1;
        max_kv = n_kv > max_kv ? n_kv : max_kv;
      }
      int nth = threads_for(inst, (double)n_rows(s0) * (double)max_kv * 2.0 * s0->ne[0]);
      args.scratch_per_thread = (max_kv + 15) / 16 * 16; /* keep threads' rows apart */
      size_t bytes;
      if (__builtin_mul_overflow((size_t)nth * sizeof(float), (size_t)args.scratch_per_thread,
                                 &bytes))
        return node_fail(err, VELO_RESOURCE_EXHAUSTED, index, node->op,
                         "score scratch for %lld positions is too large", (long long)max_kv);
      st = scratch_reserve(inst, bytes, index, node->op, err);
      if (st != VELO_OK) return st;
      args.scratch = inst->scratch;
      velo_cpu_pool_run(pool, paged ? k_attention_paged : k_attention, &args, nth);
      return VELO_OK;
    }

    case VELO_OP_SET_ROWS: {
      int nth = threads_for(inst, (double)n_elements(s0));
      /* a repeated id would have two threads write one row: run such a
       * node on one thread (the last equal id wins) */
      if (nth > 1) {
        const velo_tensor *ids = node->src[1];
        const int64_t n = n_elements(ids);
        st = scratch_reserve(inst, (size_t)n * sizeof(int32_t), index, node->op, err);
        if (st != VELO_OK) return st;
        int32_t *sorted = inst->scratch;
        for (int64_t i = 0; i < n; i++) sorted[i] = i32_at(ids, i);
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_i32);
        for (int64_t i = 1; i < n && nth > 1; i++)
          if (sorted[i] == sorted[i - 1]) nth = 1;
      }
      velo_cpu_pool_run(pool, k_set_rows, &args, nth);
      return VELO_OK;
    }

    default:
      return node_fail(err, VELO_UNIMPLEMENTED, index, node->op, "op %d is not supported",
                       (int)node->op);
  }
}
