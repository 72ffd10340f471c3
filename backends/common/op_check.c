/* op_check.c - the shared shape and parameter checks of the graph ops of
 * sdk/include/velo/backend.h, used by every backend plugin (CPU, CUDA,
 * HIP) so that the op contracts are written once: tensor headers, dtypes
 * (the weight dtypes passed in by each backend), shapes and parameters.
 * Each backend's own size limits stay in the backends.  See velo/op_check.h. */
#include "velo/op_check.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* See op_check.h. */
const char *velo_op_check_name(int op) {
  switch (op) {
#define OP_NAME_(name) \
  case VELO_OP_##name: \
    return #name;
    OP_NAME_(NONE)
    OP_NAME_(GET_ROWS)
    OP_NAME_(RMS_NORM)
    OP_NAME_(MUL)
    OP_NAME_(ADD)
    OP_NAME_(MUL_MAT)
    OP_NAME_(ROPE)
    OP_NAME_(SWIGLU)
    OP_NAME_(CPY)
    OP_NAME_(ATTENTION)
    OP_NAME_(SET_ROWS)
    OP_NAME_(ATTENTION_PAGED)
#undef OP_NAME_
  }
  return "op?";
}

/* See op_check.h. */
int velo_op_n_src(int op) {
  switch (op) {
    case VELO_OP_RMS_NORM:
    case VELO_OP_CPY:
      return 1;
    case VELO_OP_ATTENTION:
    case VELO_OP_ATTENTION_PAGED:
      return 4;
    default:
      return 2;
  }
}

/* Fills err with "<backend>: node <index> (<OP>): <message>" and returns
 * code.  err may be NULL. */
#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static velo_status fail(velo_error *err, velo_status code, const char *backend, size_t index,
                        int op, const char *fmt, ...) {
  char msg[VELO_ERROR_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return velo_error_set(err, code, "%s: node %zu (%s): %s", backend, index,
                        velo_op_check_name(op), msg);
}

/* Rows (ne1*ne2*ne3) and elements of a tensor whose ne are checked. */
static int64_t n_rows(const velo_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static int64_t n_elements(const velo_tensor *t) { return t->ne[0] * n_rows(t); }

/* True when all four ne agree. */
static bool same_shape(const velo_tensor *a, const velo_tensor *b) {
  for (int i = 0; i < VELO_MAX_DIMS; i++)
    if (a->ne[i] != b->ne[i]) return false;
  return true;
}

/* A dtype's name for messages, "unknown" for an unknown id. */
static const char *dtype_str(int dtype) {
  const char *s = velo_dtype_name(dtype);
  return s ? s : "unknown";
}

/* Largest ne (and nb) a tensor may have; keeps products far from overflow. */
#define MAX_NE ((int64_t)1 << 40)

/* See op_check.h. */
velo_status velo_op_check_tensor(const velo_graph_node *node, size_t index, const char *backend,
                                 const char *role, const velo_tensor *t, velo_error *err) {
  const int op = node->op;
  if (!t) return fail(err, VELO_INVALID_ARGUMENT, backend, index, op, "%s is NULL", role);
  if (t->struct_size < sizeof(velo_tensor))
    return fail(err, VELO_INVALID_ARGUMENT, backend, index, op,
                "%s struct_size %u is smaller than %zu", role, t->struct_size,
                sizeof(velo_tensor));
  int64_t blk = velo_dtype_block_size(t->dtype);
  if (blk <= 0)
    return fail(err, VELO_INVALID_ARGUMENT, backend, index, op, "%s has unknown dtype %d", role,
                (int)t->dtype);
  if (t->n_dims < 1 || t->n_dims > VELO_MAX_DIMS)
    return fail(err, VELO_INVALID_ARGUMENT, backend, index, op, "%s n_dims %d outside 1..4",
                role, t->n_dims);
  for (int i = 0; i < VELO_MAX_DIMS; i++) {
    if (t->ne[i] < 1 || t->ne[i] > MAX_NE)
      return fail(err, VELO_INVALID_ARGUMENT, backend, index, op,
                  "%s ne[%d] = %lld is out of range", role, i, (long long)t->ne[i]);
    if (t->nb[i] > (size_t)MAX_NE)
      return fail(err, VELO_INVALID_ARGUMENT, backend, index, op,
                  "%s nb[%d] = %zu is out of range", role, i, t->nb[i]);
  }
  int64_t total = 1;
  for (int i = 0; i < VELO_MAX_DIMS; i++) {
    if (t->ne[i] > MAX_NE / total)
      return fail(err, VELO_INVALID_ARGUMENT, backend, index, op, "%s has too many elements",
                  role);
    total *= t->ne[i];
  }
  if (t->ne[0] % blk != 0)
    return fail(err, VELO_INVALID_ARGUMENT, backend, index, op,
                "%s row length %lld is not a multiple of the %s block size %lld", role,
                (long long)t->ne[0], dtype_str(t->dtype), (long long)blk);
  if (t->nb[0] != velo_dtype_block_bytes(t->dtype))
    return fail(err, VELO_INVALID_ARGUMENT, backend, index, op,
                "%s rows are not contiguous (nb[0] = %zu, %s needs %zu)", role, t->nb[0],
                dtype_str(t->dtype), velo_dtype_block_bytes(t->dtype));
  return VELO_OK;
}

/* The dtype sets of the op table below. */
enum { SET_F32, SET_I32, SET_F32_F16, SET_WEIGHTS };

/* One tensor an op's contract constrains: slot (-1 = dst), the role named
 * in messages, the set of dtypes it may have. */
typedef struct {
  int slot;
  const char *role;
  int set;
} dtype_rule;

/* Fills rules with op's dtype rules (in the order they are checked) and
 * returns their number; 0 for an unknown op. */
static int dtype_rules(int op, dtype_rule *r) {
  switch (op) {
    case VELO_OP_GET_ROWS:
      r[0] = (dtype_rule){0, "src0", SET_WEIGHTS};
      r[1] = (dtype_rule){1, "src1 (ids)", SET_I32};
      r[2] = (dtype_rule){-1, "dst", SET_F32};
      return 3;
    case VELO_OP_RMS_NORM:
      r[0] = (dtype_rule){0, "src0", SET_F32};
      r[1] = (dtype_rule){-1, "dst", SET_F32};
      return 2;
    case VELO_OP_MUL:
    case VELO_OP_ADD:
    case VELO_OP_SWIGLU:
      r[0] = (dtype_rule){0, "src0", SET_F32};
      r[1] = (dtype_rule){1, "src1", SET_F32};
      r[2] = (dtype_rule){-1, "dst", SET_F32};
      return 3;
    case VELO_OP_MUL_MAT:
      r[0] = (dtype_rule){0, "src0 (weights)", SET_WEIGHTS};
      r[1] = (dtype_rule){1, "src1", SET_F32};
      r[2] = (dtype_rule){-1, "dst", SET_F32};
      return 3;
    case VELO_OP_ROPE:
      r[0] = (dtype_rule){0, "src0", SET_F32};
      r[1] = (dtype_rule){1, "src1 (positions)", SET_I32};
      r[2] = (dtype_rule){-1, "dst", SET_F32};
      return 3;
    case VELO_OP_CPY:
      r[0] = (dtype_rule){0, "src0", SET_F32};
      r[1] = (dtype_rule){-1, "dst", SET_F32_F16};
      return 2;
    case VELO_OP_ATTENTION:
    case VELO_OP_ATTENTION_PAGED: {
      const bool paged = op == VELO_OP_ATTENTION_PAGED;
      r[0] = (dtype_rule){0, "src0 (q)", SET_F32};
      r[1] = (dtype_rule){1, paged ? "src1 (K pool)" : "src1 (K cache)", SET_F32_F16};
      r[2] = (dtype_rule){2, paged ? "src2 (V pool)" : "src2 (V cache)", SET_F32_F16};
      r[3] = (dtype_rule){3, paged ? "src3 (positions and block tables)" : "src3 (positions)",
                          SET_I32};
      r[4] = (dtype_rule){-1, "dst", SET_F32};
      return 5;
    }
    case VELO_OP_SET_ROWS:
      r[0] = (dtype_rule){0, "src0", SET_F32};
      r[1] = (dtype_rule){1, "src1 (ids)", SET_I32};
      r[2] = (dtype_rule){-1, "dst", SET_F32_F16};
      return 3;
    default:
      return 0;
  }
}

/* See op_check.h. */
velo_status velo_op_check_dtypes(const velo_graph_node *node, size_t index, const char *backend,
                                 const velo_dtype *weights, size_t n_weights, velo_error *err) {
  dtype_rule rules[VELO_NODE_MAX_SRC + 1];
  int n = dtype_rules(node->op, rules);
  for (int i = 0; i < n; i++) {
    const velo_tensor *t = rules[i].slot < 0 ? node->dst : node->src[rules[i].slot];
    bool ok = false;
    switch (rules[i].set) {
      case SET_F32:
        ok = t->dtype == VELO_DTYPE_F32;
        break;
      case SET_I32:
        ok = t->dtype == VELO_DTYPE_I32;
        break;
      case SET_F32_F16:
        ok = t->dtype == VELO_DTYPE_F32 || t->dtype == VELO_DTYPE_F16;
        break;
      default:
        for (size_t w = 0; !ok && w < n_weights; w++) ok = t->dtype == weights[w];
        break;
    }
    if (!ok)
      return fail(err, VELO_UNIMPLEMENTED, backend, index, node->op,
                  "%s dtype %s is not supported", rules[i].role, dtype_str(t->dtype));
  }
  return VELO_OK;
}

#define SHAPE_FAIL(...) \
  return fail(err, VELO_INVALID_ARGUMENT, backend, index, node->op, __VA_ARGS__)

/* See op_check.h. */
velo_status velo_op_check_shapes(const velo_graph_node *node, size_t index, const char *backend,
                                 velo_error *err) {
  const velo_tensor *d = node->dst, *a = node->src[0], *b = node->src[1];
  switch (node->op) {
    case VELO_OP_GET_ROWS:
      if (a->ne[2] != 1 || a->ne[3] != 1) SHAPE_FAIL("src0 must be 2-D [n_embd, n_rows]");
      if (d->ne[0] != a->ne[0])
        SHAPE_FAIL("dst row length %lld != src0 row length %lld", (long long)d->ne[0],
                   (long long)a->ne[0]);
      if (n_rows(d) != n_elements(b))
        SHAPE_FAIL("dst has %lld rows but there are %lld ids", (long long)n_rows(d),
                   (long long)n_elements(b));
      return VELO_OK;

    case VELO_OP_RMS_NORM:
      if (!same_shape(a, d)) SHAPE_FAIL("dst shape differs from src0");
      if (!(node->fparams[0] >= 0.0f) || !isfinite(node->fparams[0]))
        SHAPE_FAIL("eps %g must be finite and >= 0", (double)node->fparams[0]);
      return VELO_OK;

    case VELO_OP_MUL:
    case VELO_OP_ADD:
      if (!same_shape(a, d)) SHAPE_FAIL("dst shape differs from src0");
      for (int i = 0; i < VELO_MAX_DIMS; i++)
        if (b->ne[i] != a->ne[i] && b->ne[i] != 1)
          SHAPE_FAIL("src1 ne[%d] = %lld does not broadcast to src0 ne[%d] = %lld", i,
                     (long long)b->ne[i], i, (long long)a->ne[i]);
      return VELO_OK;

    case VELO_OP_MUL_MAT:
      if (a->ne[2] != 1 || a->ne[3] != 1) SHAPE_FAIL("src0 must be 2-D [K, N]");
      if (b->ne[0] != a->ne[0])
        SHAPE_FAIL("src1 K = %lld != src0 K = %lld", (long long)b->ne[0], (long long)a->ne[0]);
      if (d->ne[0] != a->ne[1])
        SHAPE_FAIL("dst ne[0] = %lld != src0 N = %lld", (long long)d->ne[0],
                   (long long)a->ne[1]);
      for (int i = 1; i < VELO_MAX_DIMS; i++)
        if (d->ne[i] != b->ne[i])
          SHAPE_FAIL("dst ne[%d] = %lld != src1 ne[%d] = %lld", i, (long long)d->ne[i], i,
                     (long long)b->ne[i]);
      return VELO_OK;

    case VELO_OP_ROPE: {
      int n_rot = node->iparams[0], mode = node->iparams[1];
      if (a->ne[3] != 1) SHAPE_FAIL("src0 must be [head_dim, n_head, n_tok]");
      if (!same_shape(a, d)) SHAPE_FAIL("dst shape differs from src0");
      if (n_elements(b) != a->ne[2])
        SHAPE_FAIL("%lld positions for %lld tokens", (long long)n_elements(b),
                   (long long)a->ne[2]);
      if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > a->ne[0])
        SHAPE_FAIL("n_rot %d must be even, > 0 and <= head_dim %lld", n_rot,
                   (long long)a->ne[0]);
      if (mode != VELO_ROPE_NORMAL && mode != VELO_ROPE_NEOX)
        return fail(err, VELO_UNIMPLEMENTED, backend, index, node->op, "rope mode %d", mode);
      if (!(node->fparams[0] > 0.0f) || !isfinite(node->fparams[0]) ||
          !isfinite(node->fparams[1]))
        SHAPE_FAIL("freq_base %g / freq_scale %g invalid", (double)node->fparams[0],
                   (double)node->fparams[1]);
      return VELO_OK;
    }

    case VELO_OP_SWIGLU:
      if (!same_shape(a, b) || !same_shape(a, d)) SHAPE_FAIL("src0, src1 and dst shapes differ");
      return VELO_OK;

    case VELO_OP_CPY:
      if (a->ne[0] != d->ne[0])
        SHAPE_FAIL("row lengths differ (%lld vs %lld)", (long long)a->ne[0],
                   (long long)d->ne[0]);
      if (n_elements(a) != n_elements(d))
        SHAPE_FAIL("element counts differ (%lld vs %lld)", (long long)n_elements(a),
                   (long long)n_elements(d));
      return VELO_OK;

    case VELO_OP_ATTENTION:
    case VELO_OP_ATTENTION_PAGED: {
      const bool paged = node->op == VELO_OP_ATTENTION_PAGED;
      const velo_tensor *k = node->src[1], *v = node->src[2], *tab = node->src[3];
      if (a->ne[3] != 1 || k->ne[3] != 1 || v->ne[3] != 1) SHAPE_FAIL("q, K and V must be 3-D");
      if (!same_shape(a, d)) SHAPE_FAIL("dst shape differs from q");
      if (k->ne[0] != a->ne[0] || v->ne[0] != a->ne[0])
        SHAPE_FAIL("head_dim differs: q %lld, K %lld, V %lld", (long long)a->ne[0],
                   (long long)k->ne[0], (long long)v->ne[0]);
      if (!paged && !same_shape(k, v)) SHAPE_FAIL("K and V cache shapes differ");
      if (paged && (!same_shape(k, v) || k->dtype != v->dtype))
        SHAPE_FAIL("K pool %s [%lld, %lld, %lld] and V pool %s [%lld, %lld, %lld] must have "
                   "the same shape and dtype",
                   dtype_str(k->dtype), (long long)k->ne[0], (long long)k->ne[1],
                   (long long)k->ne[2], dtype_str(v->dtype), (long long)v->ne[0],
                   (long long)v->ne[1], (long long)v->ne[2]);
      if (a->ne[1] % k->ne[1] != 0)
        SHAPE_FAIL("n_head %lld is not a multiple of n_head_kv %lld", (long long)a->ne[1],
                   (long long)k->ne[1]);
      if (!paged) {
        if (n_elements(tab) != a->ne[2])
          SHAPE_FAIL("%lld positions for %lld tokens", (long long)n_elements(tab),
                     (long long)a->ne[2]);
      } else {
        if (tab->ne[2] != 1 || tab->ne[3] != 1)
          SHAPE_FAIL("src3 must be 2-D [W, n_tok], but ne[2] = %lld and ne[3] = %lld",
                     (long long)tab->ne[2], (long long)tab->ne[3]);
        if (tab->ne[1] != a->ne[2])
          SHAPE_FAIL("src3 has %lld columns for %lld tokens", (long long)tab->ne[1],
                     (long long)a->ne[2]);
        if (tab->ne[0] < 2)
          SHAPE_FAIL("src3 column length W = %lld must be >= 2 (a position, then block ids)",
                     (long long)tab->ne[0]);
        if (node->iparams[0] < 1)
          SHAPE_FAIL("block size iparams[0] = %d must be >= 1", node->iparams[0]);
      }
      if (!isfinite(node->fparams[0])) SHAPE_FAIL("scale is not finite");
      return VELO_OK;
    }

    case VELO_OP_SET_ROWS:
      if (d->ne[2] != 1 || d->ne[3] != 1)
        SHAPE_FAIL("dst must be 2-D [row_len, n_rows], but ne[2] = %lld and ne[3] = %lld",
                   (long long)d->ne[2], (long long)d->ne[3]);
      if (d->ne[0] != a->ne[0])
        SHAPE_FAIL("dst row length %lld != src0 row length %lld", (long long)d->ne[0],
                   (long long)a->ne[0]);
      if (n_rows(a) != n_elements(b))
        SHAPE_FAIL("src0 has %lld rows but there are %lld ids", (long long)n_rows(a),
                   (long long)n_elements(b));
      return VELO_OK;

    default:
      return fail(err, VELO_UNIMPLEMENTED, backend, index, node->op, "op %d is not supported",
                  (int)node->op);
  }
}
