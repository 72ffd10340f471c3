/*
 * test_cpu_ops.c - unit tests of the CPU backend's graph ops through its
 * backend table (velo_cpu_backend_iface, linked statically):
 *  - every op (GET_ROWS, RMS_NORM, MUL, ADD, MUL_MAT, ROPE, SWIGLU, CPY,
 *    ATTENTION) against a plain double-precision reference written here, on
 *    random data (fixed seed, no zeros), with a stated tolerance and why;
 *  - MUL_MAT for F32, F16, Q8_0 and Q4_0 weights, following llama.cpp's
 *    activation conversion (fp16 / Q8_0 blocks);
 *  - ATTENTION with GQA (8 query heads, 4 KV heads), positions, F32 and F16
 *    caches;
 *  - 1, 2 and 3 threads, and the portable and AVX2 kernels, give
 *    bit-identical results;
 *  - invalid graphs return UNIMPLEMENTED / INVALID_ARGUMENT naming the node
 *    instead of crashing.
 *
 * Prints "cpu: N checks passed"; exits non-zero on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "cpu_kernels.h"

#include "check.h"


/* Uniform in [-1, 1], never closer to zero than 1e-3. */
static float rndf(void) {
  float x = (float)((double)(check_rnd() >> 11) * 0x1p-53 * 2.0 - 1.0);
  if (fabsf(x) < 1e-3f) x = x < 0 ? -1e-3f : 1e-3f;
  return x;
}

/* ------------------------------------------------------------------ */
/* Instances and tensors                                                */
/* ------------------------------------------------------------------ */

static const velo_backend_iface *B;

/* inst[0]: 1 thread; [1]: 2 threads; [2]: 3 threads; [3]: 2 threads with
 * the portable kernels (NULL when the best variant is already portable). */
enum { N_INST = 4 };
static velo_backend_instance *g_inst[N_INST];

typedef struct ttensor {
  velo_tensor t; /* first: a velo_tensor * is a ttensor * */
  velo_buffer *buf; /* NULL for a view */
  size_t size;
} ttensor;

enum { MAX_TENSORS = 256 };
static ttensor *g_tensors[MAX_TENSORS];
static int g_n_tensors;

/* A new contiguous tensor in its own buffer (filled with 0x77 bytes). */
static velo_tensor *new_tensor(velo_dtype dt, int64_t ne0, int64_t ne1, int64_t ne2,
                               int64_t ne3) {
  ttensor *tt = calloc(1, sizeof *tt);
  int64_t ne[4] = {ne0, ne1, ne2, ne3};
  if (!tt || !velo_tensor_set_shape(&tt->t, dt, 4, ne) || g_n_tensors == MAX_TENSORS) abort();
  tt->size = velo_tensor_nbytes(&tt->t);
  if (B->buffer_alloc(g_inst[0], tt->size, &tt->buf, NULL) != VELO_OK) abort();
  tt->t.buffer = tt->buf;
  tt->t.data = B->buffer_host_ptr(tt->buf);
  memset(tt->t.data, 0x77, tt->size);
  g_tensors[g_n_tensors++] = tt;
  return &tt->t;
}

/* A view of base's memory at byte offset off with shape ne and strides nb. */
static velo_tensor *new_view(const velo_tensor *base, velo_dtype dt, const int64_t ne[4],
                             const size_t nb[4], size_t off) {
  ttensor *tt = calloc(1, sizeof *tt);
  if (!tt || g_n_tensors == MAX_TENSORS) abort();
  tt->t = *base;
  tt->t.dtype = dt;
  for (int i = 0; i < 4; i++) {
    tt->t.ne[i] = ne[i];
    tt->t.nb[i] = nb[i];
  }
  tt->t.offset = base->offset + off;
  tt->t.data = (char *)base->data + off;
  g_tensors[g_n_tensors++] = tt;
  return &tt->t;
}

static void free_tensors(void) {
  for (int i = 0; i < g_n_tensors; i++) {
    B->buffer_free(g_inst[0], g_tensors[i]->buf);
    free(g_tensors[i]);
  }
  g_n_tensors = 0;
}

static size_t tsize(const velo_tensor *t) { return ((const ttensor *)t)->size; }

/* Element (i0, i1, i2, i3) of an F32 / I32 / F16 tensor, through nb. */
static void *at(const velo_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return (char *)t->data + (size_t)i0 * t->nb[0] + (size_t)i1 * t->nb[1] +
         (size_t)i2 * t->nb[2] + (size_t)i3 * t->nb[3];
}
static float f32(const velo_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return *(float *)at(t, i0, i1, i2, i3);
}

static void fill_f32(velo_tensor *t, float scale) {
  for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
    for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
      for (int64_t i1 = 0; i1 < t->ne[1]; i1++)
        for (int64_t i0 = 0; i0 < t->ne[0]; i0++) *(float *)at(t, i0, i1, i2, i3) = rndf() * scale;
}

static void fill_i32(velo_tensor *t, const int32_t *v) {
  for (int64_t i = 0; i < t->ne[0]; i++) *(int32_t *)at(t, i, 0, 0, 0) = v[i];
}

/* Fills a 2-D weight tensor of any supported dtype with random values and
 * writes the exact float value of every element to w (ne0*ne1 floats). */
static void fill_weights(velo_tensor *t, float *w) {
  int64_t K = t->ne[0], N = t->ne[1];
  for (int64_t n = 0; n < N; n++) {
    char *row = (char *)t->data + (size_t)n * t->nb[1];
    float *wr = w + n * K;
    switch (t->dtype) {
      case VELO_DTYPE_F32:
        for (int64_t k = 0; k < K; k++) ((float *)row)[k] = wr[k] = rndf();
        break;
      case VELO_DTYPE_F16:
        for (int64_t k = 0; k < K; k++) {
          uint16_t h = velo_fp32_to_fp16(rndf());
          ((uint16_t *)row)[k] = h;
          wr[k] = velo_fp16_to_fp32(h);
        }
        break;
      case VELO_DTYPE_Q8_0:
        for (int64_t b = 0; b < K / 32; b++) {
          velo_block_q8_0 *blk = (velo_block_q8_0 *)row + b;
          blk->d = velo_fp32_to_fp16(0.01f * (1.0f + fabsf(rndf())));
          float d = velo_fp16_to_fp32(blk->d);
          for (int j = 0; j < 32; j++) {
            int q = (int)(check_rnd() % 255) - 127;
            if (q == 0) q = 1;
            blk->qs[j] = (int8_t)q;
            wr[b * 32 + j] = d * (float)q; /* exact: 11-bit d times 8-bit q */
          }
        }
        break;
      case VELO_DTYPE_Q4_0:
        for (int64_t b = 0; b < K / 32; b++) {
          velo_block_q4_0 *blk = (velo_block_q4_0 *)row + b;
          blk->d = velo_fp32_to_fp16(0.1f * (1.0f + fabsf(rndf())));
          float d = velo_fp16_to_fp32(blk->d);
          for (int j = 0; j < 16; j++) {
            uint8_t lo = (uint8_t)(check_rnd() % 16), hi = (uint8_t)(check_rnd() % 16);
            blk->qs[j] = (uint8_t)(lo | (hi << 4));
            wr[b * 32 + j] = d * (float)(lo - 8);
            wr[b * 32 + j + 16] = d * (float)(hi - 8);
          }
        }
        break;
      default:
        abort();
    }
  }
}

static velo_graph_node mknode(velo_op op, velo_tensor *dst, velo_tensor *s0, velo_tensor *s1,
                              velo_tensor *s2, velo_tensor *s3) {
  velo_graph_node n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.op = op;
  n.dst = dst;
  n.src[0] = s0;
  n.src[1] = s1;
  n.src[2] = s2;
  n.src[3] = s3;
  return n;
}

static velo_status run_on(velo_backend_instance *inst, velo_graph_node *nodes, size_t n,
                          velo_error *err) {
  velo_graph g = {.struct_size = sizeof g, .n_nodes = n, .nodes = nodes};
  return B->compute(inst, &g, err);
}

/* Computes node on instance 0 and checks OK; the caller then compares
 * against its reference.  Afterwards call same_everywhere(). */
static bool run(velo_graph_node *node, const char *what) {
  velo_error err;
  velo_error_init(&err);
  velo_status st = run_on(g_inst[0], node, 1, &err);
  CHECK(st == VELO_OK, "%s: compute returned %s: %s", what, velo_status_name(st), err.message);
  return st == VELO_OK;
}

/* Recomputes node on every other instance (more threads, other kernels) and
 * checks that dst's whole buffer is bit-identical to instance 0's result.
 * The node must not read its own dst. */
static void same_everywhere(velo_graph_node *node, const char *what) {
  const velo_tensor *d = node->dst;
  const ttensor *owner = (const ttensor *)d;
  /* for a view, compare the bytes the view spans within its base */
  size_t size = owner->size;
  if (!owner->buf) {
    size = velo_dtype_row_bytes(d->dtype, d->ne[0]);
    for (int i = 1; i < 4; i++) size += (size_t)(d->ne[i] - 1) * d->nb[i];
  }
  unsigned char *first = malloc(size);
  memcpy(first, d->data, size);
  for (int k = 1; k < N_INST; k++) {
    if (!g_inst[k]) continue;
    memset(d->data, 0x5a, size);
    velo_error err;
    velo_error_init(&err);
    velo_status st = run_on(g_inst[k], node, 1, &err);
    CHECK(st == VELO_OK && memcmp(first, d->data, size) == 0,
          "%s: instance %d (%d threads, %s kernels) differs from 1 thread: %s", what, k,
          velo_cpu_pool_size(g_inst[k]->pool), g_inst[k]->vec->name, err.message);
  }
  memcpy(d->data, first, size);
  free(first);
}

/* ------------------------------------------------------------------ */
/* Ops                                                                  */
/* ------------------------------------------------------------------ */

static void test_get_rows(void) {
  static const velo_dtype dts[] = {VELO_DTYPE_F32, VELO_DTYPE_F16, VELO_DTYPE_Q8_0,
                                   VELO_DTYPE_Q4_0};
  static const int32_t ids[] = {3, 0, 9, 3, 7};
  enum { E = 64, R = 10, T = 5 };
  for (size_t k = 0; k < 4; k++) {
    velo_tensor *tab = new_tensor(dts[k], E, R, 1, 1);
    float w[E * R];
    fill_weights(tab, w);
    velo_tensor *id = new_tensor(VELO_DTYPE_I32, T, 1, 1, 1);
    fill_i32(id, ids);
    velo_tensor *dst = new_tensor(VELO_DTYPE_F32, E, T, 1, 1);
    velo_graph_node n = mknode(VELO_OP_GET_ROWS, dst, tab, id, NULL, NULL);
    char what[64];
    snprintf(what, sizeof what, "GET_ROWS %s", velo_dtype_name(dts[k]));
    if (!run(&n, what)) continue;
    /* Tolerance 0: every element is fp16 d times a small integer (or an F32
     * / F16 value), which float represents exactly. */
    int bad = 0;
    for (int t = 0; t < T; t++)
      for (int e = 0; e < E; e++) bad += f32(dst, e, t, 0, 0) != w[ids[t] * E + e];
    CHECK(bad == 0, "%s: %d wrong values", what, bad);
    same_everywhere(&n, what);
  }
}

static void test_rms_norm(void) {
  velo_tensor *x = new_tensor(VELO_DTYPE_F32, 96, 5, 2, 1);
  fill_f32(x, 3.0f);
  velo_tensor *y = new_tensor(VELO_DTYPE_F32, 96, 5, 2, 1);
  velo_graph_node n = mknode(VELO_OP_RMS_NORM, y, x, NULL, NULL, NULL);
  n.fparams[0] = 1e-5f;
  if (!run(&n, "RMS_NORM")) return;
  /* Tolerance 1e-6 relative: the float path rounds each square, the mean,
   * sqrtf, the reciprocal and the product (about 5 roundings of 2^-24). */
  double worst = 0;
  for (int r = 0; r < 10; r++) {
    double ss = 0;
    for (int i = 0; i < 96; i++) ss += (double)f32(x, i, r % 5, r / 5, 0) * f32(x, i, r % 5, r / 5, 0);
    double scale = 1.0 / sqrt(ss / 96 + 1e-5);
    for (int i = 0; i < 96; i++) {
      double want = f32(x, i, r % 5, r / 5, 0) * scale;
      double e = fabs(f32(y, i, r % 5, r / 5, 0) - want) / fabs(want);
      worst = e > worst ? e : worst;
    }
  }
  CHECK(worst <= 1e-6, "RMS_NORM relative error %.3g", worst);
  same_everywhere(&n, "RMS_NORM");

  /* in place gives the same bits */
  velo_tensor *z = new_tensor(VELO_DTYPE_F32, 96, 5, 2, 1);
  memcpy(z->data, x->data, tsize(x));
  velo_graph_node m = mknode(VELO_OP_RMS_NORM, z, z, NULL, NULL, NULL);
  m.fparams[0] = 1e-5f;
  run(&m, "RMS_NORM in place");
  CHECK(memcmp(z->data, y->data, tsize(y)) == 0, "RMS_NORM in place differs");
}

static void test_binary(void) {
  static const int64_t shapes[][4] = {{64, 3, 2, 1}, {64, 1, 1, 1}, {1, 3, 2, 1}, {1, 1, 1, 1},
                                      {64, 1, 2, 1}};
  for (int opi = 0; opi < 2; opi++) {
    velo_op op = opi ? VELO_OP_ADD : VELO_OP_MUL;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      velo_tensor *a = new_tensor(VELO_DTYPE_F32, 64, 3, 2, 1);
      velo_tensor *b = new_tensor(VELO_DTYPE_F32, shapes[s][0], shapes[s][1], shapes[s][2], 1);
      velo_tensor *d = new_tensor(VELO_DTYPE_F32, 64, 3, 2, 1);
      fill_f32(a, 4.0f);
      fill_f32(b, 4.0f);
      velo_graph_node n = mknode(op, d, a, b, NULL, NULL);
      char what[64];
      snprintf(what, sizeof what, "%s by [%lld,%lld,%lld]", opi ? "ADD" : "MUL",
               (long long)shapes[s][0], (long long)shapes[s][1], (long long)shapes[s][2]);
      if (!run(&n, what)) continue;
      /* Tolerance 0: the double product or sum of two floats of similar
       * magnitude (|x| in [1e-3, 4]) is exact, so rounding it to float gives
       * exactly the float operation. */
      int bad = 0;
      for (int i2 = 0; i2 < 2; i2++)
        for (int i1 = 0; i1 < 3; i1++)
          for (int i0 = 0; i0 < 64; i0++) {
            double x = f32(a, i0, i1, i2, 0);
            double w = f32(b, i0 % b->ne[0], i1 % b->ne[1], i2 % b->ne[2], 0);
            float want = (float)(opi ? x + w : x * w);
            bad += f32(d, i0, i1, i2, 0) != want;
          }
      CHECK(bad == 0, "%s: %d wrong values", what, bad);
      same_everywhere(&n, what);
    }
  }
}

/* The test's own Q8_0 activation quantizer, written from the spec: amax,
 * d = fp16(amax/127), id = 127/amax in float, q = round-half-even(x*id). */
static void spec_quantize(const float *x, int64_t K, float *dx, int *q) {
  for (int64_t b = 0; b < K / 32; b++) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
    dx[b] = velo_fp16_to_fp32(velo_fp32_to_fp16(amax / 127.0f));
    float id = amax != 0 ? 127.0f / amax : 0.0f;
    for (int j = 0; j < 32; j++) {
      float v = x[b * 32 + j] * id;
      q[b * 32 + j] = (int)rint((double)v);
    }
  }
}

/* One MUL_MAT case: weights [K, N] of dtype, activations [K, m1, m2]
 * (strided rows when gap > 0). */
static void mul_mat_case(velo_dtype dt, int64_t K, int64_t N, int64_t m1, int64_t m2, int64_t gap) {
  char what[96];
  snprintf(what, sizeof what, "MUL_MAT %s K=%lld N=%lld M=%lldx%lld%s", velo_dtype_name(dt),
           (long long)K, (long long)N, (long long)m1, (long long)m2, gap ? " strided" : "");
  velo_tensor *w = new_tensor(dt, K, N, 1, 1);
  float *wf = malloc(sizeof(float) * (size_t)(K * N));
  fill_weights(w, wf);
  velo_tensor *x;
  if (gap) {
    velo_tensor *base = new_tensor(VELO_DTYPE_F32, K + gap, m1, m2, 1);
    int64_t ne[4] = {K, m1, m2, 1};
    x = new_view(base, VELO_DTYPE_F32, ne, base->nb, 0);
  } else {
    x = new_tensor(VELO_DTYPE_F32, K, m1, m2, 1);
  }
  fill_f32(x, 2.0f);
  velo_tensor *d = new_tensor(VELO_DTYPE_F32, N, m1, m2, 1);
  velo_graph_node n = mknode(VELO_OP_MUL_MAT, d, w, x, NULL, NULL);
  if (!run(&n, what)) {
    free(wf);
    return;
  }
  float *col = malloc(sizeof(float) * (size_t)K), *dx = malloc(sizeof(float) * (size_t)K);
  int *q = malloc(sizeof(int) * (size_t)K);
  double worst = 0;
  int bad = 0;
  for (int64_t i2 = 0; i2 < m2; i2++)
    for (int64_t i1 = 0; i1 < m1; i1++) {
      for (int64_t k = 0; k < K; k++) col[k] = f32(x, k, i1, i2, 0);
      if (dt == VELO_DTYPE_Q8_0 || dt == VELO_DTYPE_Q4_0) spec_quantize(col, K, dx, q);
      for (int64_t nn = 0; nn < N; nn++) {
        const float *wr = wf + nn * K;
        double ref = 0, mag = 0, tol;
        if (dt == VELO_DTYPE_F32 || dt == VELO_DTYPE_F16) {
          for (int64_t k = 0; k < K; k++) {
            /* F16 weights: the activation is rounded to fp16 first */
            double xv = dt == VELO_DTYPE_F16 ? velo_fp16_to_fp32(velo_fp32_to_fp16(col[k])) : col[k];
            ref += (double)wr[k] * xv;
            mag += fabs((double)wr[k] * xv);
          }
          /* Tolerance: float accumulation in 8 lanes of K/8 adds plus the
           * lane reduction: (K/8 + 4) * 2^-24 * sum|w*x|. */
          tol = (double)(K / 8 + 4) * 0x1p-24 * mag;
        } else {
          for (int64_t b = 0; b < K / 32; b++) {
            /* d_w * q_w is wr[k] exactly, so sum_j wr*q_x = d_w * sumi */
            double s = 0;
            for (int j = 0; j < 32; j++) s += (double)wr[b * 32 + j] * q[b * 32 + j];
            ref += s * dx[b];
            mag += fabs(s * dx[b]);
          }
          /* Tolerance: per block one rounding of d_w*d_x, one of the product
           * and one of the float sum: (K/32 + 2) * 2^-24 * sum|terms|. */
          tol = (double)(K / 32 + 2) * 0x1p-24 * mag;
        }
        double e = fabs(f32(d, nn, i1, i2, 0) - ref);
        if (e > tol) bad++;
        if (mag > 0 && e / mag > worst) worst = e / mag;
      }
    }
  CHECK(bad == 0, "%s: %d values outside tolerance (worst relative %.3g)", what, bad, worst);
  same_everywhere(&n, what);
  free(col);
  free(dx);
  free(q);
  free(wf);
}

static void test_mul_mat(void) {
  static const velo_dtype dts[] = {VELO_DTYPE_F32, VELO_DTYPE_F16, VELO_DTYPE_Q8_0,
                                   VELO_DTYPE_Q4_0};
  for (size_t k = 0; k < 4; k++) {
    mul_mat_case(dts[k], 256, 37, 1, 1, 0);   /* decode: one column */
    mul_mat_case(dts[k], 256, 37, 5, 1, 0);   /* prefill */
    mul_mat_case(dts[k], 96, 70, 3, 2, 32);   /* 3-D activations, strided rows */
    mul_mat_case(dts[k], 512, 300, 67, 1, 0); /* more than one tile of columns */
  }
}

static void rope_case(int mode, int n_rot, float freq_scale, bool in_place) {
  enum { D = 64, H = 4, T = 3 };
  static const int32_t pos[T] = {0, 7, 100};
  const float base = 10000.0f;
  char what[96];
  snprintf(what, sizeof what, "ROPE %s n_rot=%d freq_scale=%g%s", mode ? "neox" : "normal", n_rot,
           (double)freq_scale, in_place ? " in place" : "");
  velo_tensor *x = new_tensor(VELO_DTYPE_F32, D, H, T, 1);
  fill_f32(x, 1.0f);
  velo_tensor *p = new_tensor(VELO_DTYPE_I32, T, 1, 1, 1);
  fill_i32(p, pos);
  velo_tensor *src = x;
  if (in_place) {
    src = new_tensor(VELO_DTYPE_F32, D, H, T, 1);
    memcpy(src->data, x->data, tsize(x));
  }
  velo_tensor *y = in_place ? src : new_tensor(VELO_DTYPE_F32, D, H, T, 1);
  velo_graph_node n = mknode(VELO_OP_ROPE, y, src, p, NULL, NULL);
  n.iparams[0] = n_rot;
  n.iparams[1] = mode;
  n.fparams[0] = base;
  n.fparams[1] = freq_scale;
  if (!run(&n, what)) return;
  int bad = 0;
  double worst = 0;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++) {
      /* Tolerance: float theta is built by repeated multiplication (pair i:
       * i+1 roundings plus powf's), a relative error of about
       * 1.2e-7*(i+1) <= 4e-6 of an angle <= pos; outputs move by at most
       * that angle error times |x| <= 1 (times sqrt 2), plus a few float
       * roundings of cos, sin and the rotation. */
      double tol = 2e-6 + 6e-6 * pos[t];
      double out[D];
      for (int i = 0; i < D; i++) out[i] = f32(x, i, h, t, 0);
      for (int i = 0; i < n_rot / 2; i++) {
        double theta = pos[t] * (double)freq_scale * pow(base, -2.0 * i / n_rot);
        int i0 = mode ? i : 2 * i, i1 = mode ? i + n_rot / 2 : 2 * i + 1;
        double x0 = f32(x, i0, h, t, 0), x1 = f32(x, i1, h, t, 0);
        out[i0] = x0 * cos(theta) - x1 * sin(theta);
        out[i1] = x0 * sin(theta) + x1 * cos(theta);
      }
      for (int i = 0; i < D; i++) {
        double e = fabs(f32(y, i, h, t, 0) - out[i]);
        worst = e > worst ? e : worst;
        if (e > tol) bad++;
        /* dims past n_rot are copied exactly */
        if (i >= n_rot && f32(y, i, h, t, 0) != f32(x, i, h, t, 0)) bad++;
      }
    }
  CHECK(bad == 0, "%s: %d values outside tolerance (worst %.3g)", what, bad, worst);
  if (!in_place) same_everywhere(&n, what);
}

static void test_rope(void) {
  for (int mode = 0; mode <= VELO_ROPE_NEOX; mode += VELO_ROPE_NEOX) {
    rope_case(mode, 64, 1.0f, false);
    rope_case(mode, 32, 1.0f, false);
    rope_case(mode, 64, 0.5f, false);
    rope_case(mode, 48, 1.0f, true);
  }
  /* in place equals out of place bit for bit */
  velo_tensor *x = new_tensor(VELO_DTYPE_F32, 64, 4, 2, 1);
  fill_f32(x, 1.0f);
  velo_tensor *p = new_tensor(VELO_DTYPE_I32, 2, 1, 1, 1);
  fill_i32(p, (const int32_t[]){3, 11});
  velo_tensor *y = new_tensor(VELO_DTYPE_F32, 64, 4, 2, 1);
  velo_graph_node n[2] = {mknode(VELO_OP_ROPE, y, x, p, NULL, NULL),
                          mknode(VELO_OP_ROPE, x, x, p, NULL, NULL)};
  for (int i = 0; i < 2; i++) {
    n[i].iparams[0] = 64;
    n[i].iparams[1] = VELO_ROPE_NEOX;
    n[i].fparams[0] = 10000.0f;
    n[i].fparams[1] = 1.0f;
  }
  velo_error err;
  velo_error_init(&err);
  CHECK(run_on(g_inst[1], n, 2, &err) == VELO_OK, "ROPE pair: %s", err.message);
  CHECK(memcmp(x->data, y->data, tsize(x)) == 0, "ROPE in place differs from out of place");
}

static void test_swiglu(void) {
  velo_tensor *a = new_tensor(VELO_DTYPE_F32, 128, 3, 1, 1);
  velo_tensor *b = new_tensor(VELO_DTYPE_F32, 128, 3, 1, 1);
  velo_tensor *d = new_tensor(VELO_DTYPE_F32, 128, 3, 1, 1);
  fill_f32(a, 8.0f);
  fill_f32(b, 2.0f);
  velo_graph_node n = mknode(VELO_OP_SWIGLU, d, a, b, NULL, NULL);
  if (!run(&n, "SWIGLU")) return;
  /* Tolerance 1e-6 relative: expf within 1 ulp, then an add, a division and
   * a product, each rounded once (a few 2^-24). */
  double worst = 0;
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < 128; i++) {
      double x = f32(a, i, r, 0, 0), v = f32(b, i, r, 0, 0);
      double want = x / (1.0 + exp(-x)) * v;
      double e = fabs(f32(d, i, r, 0, 0) - want) / fabs(want);
      worst = e > worst ? e : worst;
    }
  CHECK(worst <= 1e-6, "SWIGLU relative error %.3g", worst);
  same_everywhere(&n, "SWIGLU");
}

/* CPY into KV-cache slots: a strided view of an F16 or F32 cache. */
static void test_cpy(void) {
  enum { D = 16, HKV = 3, CTX = 8, T = 2, SLOT = 4 };
  for (int f16 = 0; f16 <= 1; f16++) {
    velo_dtype dt = f16 ? VELO_DTYPE_F16 : VELO_DTYPE_F32;
    velo_tensor *cache = new_tensor(dt, D, HKV, CTX, 1); /* 0x77 bytes everywhere */
    velo_tensor *k = new_tensor(VELO_DTYPE_F32, D * HKV, T, 1, 1); /* rows of D*HKV */
    fill_f32(k, 3.0f);
    /* view [D, HKV, T] at slot SLOT; src is [D*HKV, T]: same elements, but
     * row lengths must match, so copy through a [D, HKV, T] view of k */
    int64_t ne[4] = {D, HKV, T, 1};
    velo_tensor *dst = new_view(cache, dt, ne, cache->nb, (size_t)SLOT * cache->nb[2]);
    size_t knb[4] = {4, D * 4, D * HKV * 4, D * HKV * T * 4};
    velo_tensor *src = new_view(k, VELO_DTYPE_F32, ne, knb, 0);
    velo_graph_node n = mknode(VELO_OP_CPY, dst, src, NULL, NULL, NULL);
    const char *what = f16 ? "CPY F32->F16 into cache slots" : "CPY F32->F32 into cache slots";
    if (!run(&n, what)) continue;
    /* Tolerance 0: F32 copies exactly; F16 must equal the round-half-even
     * conversion (verified exhaustively in test_cpu_fp16). */
    int bad = 0, touched = 0;
    for (int s = 0; s < CTX; s++)
      for (int h = 0; h < HKV; h++)
        for (int i = 0; i < D; i++) {
          const void *c = at(cache, i, h, s, 0);
          if (s >= SLOT && s < SLOT + T) {
            float x = f32(k, h * D + i, s - SLOT, 0, 0);
            if (f16)
              bad += *(const uint16_t *)c != velo_fp32_to_fp16(x);
            else
              bad += *(const float *)c != x;
          } else {
            touched += f16 ? *(const uint16_t *)c != 0x7777 : *(const uint32_t *)c != 0x77777777u;
          }
        }
    CHECK(bad == 0, "%s: %d wrong values", what, bad);
    CHECK(touched == 0, "%s: %d cache entries outside the view changed", what, touched);
    same_everywhere(&n, what);
  }
}

/* ATTENTION with GQA: reference in double on the exact (decoded) K/V. */
static void attention_case(int64_t H, int64_t HKV, velo_dtype kdt, velo_dtype vdt, int T,
                           const int32_t *pos) {
  enum { D = 64, CTX = 32 };
  char what[96];
  snprintf(what, sizeof what, "ATTENTION H=%lld HKV=%lld K %s V %s T=%d", (long long)H,
           (long long)HKV, velo_dtype_name(kdt), velo_dtype_name(vdt), T);
  velo_tensor *q = new_tensor(VELO_DTYPE_F32, D, H, T, 1);
  fill_f32(q, 1.0f);
  velo_tensor *K = new_tensor(kdt, D, HKV, CTX, 1), *V = new_tensor(vdt, D, HKV, CTX, 1);
  static float kf[D * 8 * CTX], vf[D * 8 * CTX];
  velo_tensor *kv[2] = {K, V};
  float *kvf[2] = {kf, vf};
  for (int m = 0; m < 2; m++)
    for (int64_t i = 0; i < D * HKV * CTX; i++) {
      float x = rndf();
      if (kv[m]->dtype == VELO_DTYPE_F16) {
        uint16_t h = velo_fp32_to_fp16(x);
        ((uint16_t *)kv[m]->data)[i] = h;
        kvf[m][i] = velo_fp16_to_fp32(h);
      } else {
        ((float *)kv[m]->data)[i] = x;
        kvf[m][i] = x;
      }
    }
  velo_tensor *p = new_tensor(VELO_DTYPE_I32, T, 1, 1, 1);
  fill_i32(p, pos);
  velo_tensor *o = new_tensor(VELO_DTYPE_F32, D, H, T, 1);
  velo_graph_node n = mknode(VELO_OP_ATTENTION, o, q, K, V, p);
  const float scale = 1.0f / sqrtf((float)D);
  n.fparams[0] = scale;
  if (!run(&n, what)) return;
  /* Tolerance 2e-5 absolute (outputs are averages of values in [-1, 1]):
   * the float score dot (64 terms, |sum| <= 64) errs by ~1.5e-5 before the
   * 1/8 scale, moving each softmax weight by ~2e-6 relative; the float sums
   * over <= 32 positions add a few 1e-7. */
  int bad = 0;
  double worst = 0;
  for (int t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      int64_t g = h / (H / HKV);
      double s[CTX], mx = -INFINITY, sum = 0;
      for (int j = 0; j <= pos[t]; j++) {
        double dot = 0;
        for (int i = 0; i < D; i++) dot += (double)f32(q, i, h, t, 0) * kf[(j * HKV + g) * D + i];
        s[j] = dot * scale;
        mx = s[j] > mx ? s[j] : mx;
      }
      for (int j = 0; j <= pos[t]; j++) sum += (s[j] = exp(s[j] - mx));
      for (int i = 0; i < D; i++) {
        double want = 0;
        for (int j = 0; j <= pos[t]; j++) want += s[j] / sum * vf[(j * HKV + g) * D + i];
        double e = fabs(f32(o, i, h, t, 0) - want);
        worst = e > worst ? e : worst;
        bad += e > 2e-5;
      }
    }
  CHECK(bad == 0, "%s: %d values outside tolerance (worst %.3g)", what, bad, worst);
  same_everywhere(&n, what);
}

static void test_attention(void) {
  static const int32_t prefill[3] = {5, 6, 20}, decode[1] = {31}, first[1] = {0};
  attention_case(8, 4, VELO_DTYPE_F32, VELO_DTYPE_F32, 3, prefill);
  attention_case(8, 4, VELO_DTYPE_F16, VELO_DTYPE_F16, 3, prefill);
  attention_case(8, 4, VELO_DTYPE_F16, VELO_DTYPE_F32, 1, decode);
  attention_case(8, 8, VELO_DTYPE_F32, VELO_DTYPE_F16, 1, first);
  attention_case(8, 2, VELO_DTYPE_F32, VELO_DTYPE_F32, 3, prefill);
}

/* ------------------------------------------------------------------ */
/* Invalid graphs                                                       */
/* ------------------------------------------------------------------ */

/* Computes the graph and checks the status and that the message names
 * "node <index> (<OP>)". */
static void expect_fail(velo_graph_node *nodes, size_t n, velo_status want, size_t index,
                        const char *what) {
  velo_error err;
  velo_error_init(&err);
  velo_status st = run_on(g_inst[1], nodes, n, &err);
  CHECK(st == want, "%s: got %s, want %s (%s)", what, velo_status_name(st),
        velo_status_name(want), err.message);
  char tag[64];
  snprintf(tag, sizeof tag, "node %zu (%s)", index, velo_cpu_op_name(nodes[index].op));
  CHECK(err.code == want && strstr(err.message, tag) != NULL, "%s: message \"%s\" lacks \"%s\"",
        what, err.message, tag);
}

static void test_invalid(void) {
  velo_backend_instance *inst = g_inst[1];
  velo_tensor *x = new_tensor(VELO_DTYPE_F32, 64, 2, 1, 1);
  fill_f32(x, 1.0f);
  velo_tensor *y = new_tensor(VELO_DTYPE_F32, 64, 2, 1, 1);
  velo_tensor *w41 = new_tensor(VELO_DTYPE_Q4_1, 64, 8, 1, 1);
  velo_tensor *w40 = new_tensor(VELO_DTYPE_Q4_0, 64, 8, 1, 1);
  float wf[64 * 8];
  fill_weights(w40, wf);
  velo_tensor *out = new_tensor(VELO_DTYPE_F32, 8, 2, 1, 1);
  velo_tensor *x16 = new_tensor(VELO_DTYPE_F16, 64, 2, 1, 1);

  /* unsupported weight dtype */
  velo_graph_node n = mknode(VELO_OP_MUL_MAT, out, w41, x, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(Q4_1 MUL_MAT)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "Q4_1 weights");
  /* unsupported activation dtype */
  n = mknode(VELO_OP_RMS_NORM, y, x16, NULL, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(F16 RMS_NORM)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "F16 RMS_NORM");
  /* unknown ops */
  n = mknode((velo_op)99, y, x, NULL, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(op 99)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "op 99");
  n = mknode(VELO_OP_NONE, y, x, NULL, NULL, NULL);
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "op NONE");

  /* mismatched shapes */
  velo_tensor *x32 = new_tensor(VELO_DTYPE_F32, 32, 2, 1, 1);
  n = mknode(VELO_OP_MUL_MAT, out, w40, x32, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(K mismatch)");
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "MUL_MAT K mismatch");
  velo_tensor *out9 = new_tensor(VELO_DTYPE_F32, 9, 2, 1, 1);
  n = mknode(VELO_OP_MUL_MAT, out9, w40, x, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "MUL_MAT N mismatch");
  velo_tensor *b3 = new_tensor(VELO_DTYPE_F32, 3, 1, 1, 1);
  n = mknode(VELO_OP_MUL, y, x, b3, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "MUL broadcast mismatch");
  n = mknode(VELO_OP_SWIGLU, y, x, x32, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SWIGLU shapes");

  /* missing tensors */
  n = mknode(VELO_OP_ADD, y, x, NULL, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(NULL src1)");
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "NULL src1");
  n = mknode(VELO_OP_ADD, NULL, x, x, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "NULL dst");

  /* GET_ROWS ids out of range, as node 1 of 2.  Ids are data, checked when
   * their node runs (node 0 has run by then); the GET_ROWS dst must stay
   * untouched. */
  velo_tensor *tab = new_tensor(VELO_DTYPE_Q8_0, 64, 10, 1, 1);
  float tf[640];
  fill_weights(tab, tf);
  velo_tensor *ids = new_tensor(VELO_DTYPE_I32, 2, 1, 1, 1);
  velo_tensor *rows = new_tensor(VELO_DTYPE_F32, 64, 2, 1, 1);
  velo_graph_node two[2] = {mknode(VELO_OP_RMS_NORM, y, x, NULL, NULL, NULL),
                            mknode(VELO_OP_GET_ROWS, rows, tab, ids, NULL, NULL)};
  two[0].fparams[0] = 1e-6f;
  fill_i32(ids, (const int32_t[]){1, 10});
  memset(rows->data, 0x77, tsize(rows));
  expect_fail(two, 2, VELO_INVALID_ARGUMENT, 1, "GET_ROWS id == n_rows");
  CHECK(((uint32_t *)rows->data)[0] == 0x77777777u, "GET_ROWS dst written despite a bad id");
  fill_i32(ids, (const int32_t[]){-1, 0});
  expect_fail(two, 2, VELO_INVALID_ARGUMENT, 1, "GET_ROWS id -1");
  CHECK(B->supports(inst, &two[1]), "supports(GET_ROWS) with valid shapes");

  /* an unsupported node at index 2 stops the graph before node 0 runs */
  memset(y->data, 0x77, tsize(y));
  velo_graph_node three[3] = {mknode(VELO_OP_RMS_NORM, y, x, NULL, NULL, NULL),
                              mknode(VELO_OP_MUL, y, x, x, NULL, NULL),
                              mknode(VELO_OP_MUL_MAT, out, w41, x, NULL, NULL)};
  expect_fail(three, 3, VELO_UNIMPLEMENTED, 2, "unsupported node 2");
  CHECK(((uint32_t *)y->data)[0] == 0x77777777u, "node 0 ran although node 2 is unsupported");

  /* ATTENTION: position beyond the cache; n_head not a multiple of n_head_kv */
  velo_tensor *q = new_tensor(VELO_DTYPE_F32, 16, 8, 1, 1);
  fill_f32(q, 1.0f);
  velo_tensor *kc = new_tensor(VELO_DTYPE_F32, 16, 4, 4, 1);
  fill_f32(kc, 1.0f);
  velo_tensor *kc3 = new_tensor(VELO_DTYPE_F32, 16, 3, 4, 1);
  velo_tensor *ps = new_tensor(VELO_DTYPE_I32, 1, 1, 1, 1);
  velo_tensor *o = new_tensor(VELO_DTYPE_F32, 16, 8, 1, 1);
  fill_i32(ps, (const int32_t[]){4});
  n = mknode(VELO_OP_ATTENTION, o, q, kc, kc, ps);
  n.fparams[0] = 0.25f;
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION position == n_ctx");
  n = mknode(VELO_OP_ATTENTION, o, q, kc3, kc3, ps);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION GQA ratio");

  /* ROPE parameters */
  velo_tensor *rp = new_tensor(VELO_DTYPE_I32, 2, 1, 1, 1);
  fill_i32(rp, (const int32_t[]){0, 1});
  velo_tensor *rx = new_tensor(VELO_DTYPE_F32, 16, 2, 2, 1), *ry = new_tensor(VELO_DTYPE_F32, 16, 2, 2, 1);
  n = mknode(VELO_OP_ROPE, ry, rx, rp, NULL, NULL);
  n.iparams[0] = 15;
  n.fparams[0] = 10000.0f;
  n.fparams[1] = 1.0f;
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ROPE odd n_rot");
  n.iparams[0] = 16;
  n.iparams[1] = 1;
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "ROPE mode 1");

  /* data problems: no data; a tensor running past its buffer; dst in
   * wrapped read-only memory */
  velo_tensor *nodata = new_view(x, VELO_DTYPE_F32, x->ne, x->nb, 0);
  nodata->data = NULL;
  n = mknode(VELO_OP_ADD, y, nodata, x, NULL, NULL);
  CHECK(B->supports(inst, &n), "supports() does not look at data");
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "NULL data");
  int64_t big[4] = {64, 3, 1, 1};
  velo_tensor *past = new_view(x, VELO_DTYPE_F32, big, x->nb, 0);
  velo_tensor *y3 = new_tensor(VELO_DTYPE_F32, 64, 3, 1, 1);
  n = mknode(VELO_OP_ADD, y3, past, past, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "tensor past its buffer");
  static float ro_mem[128];
  velo_buffer *ro = NULL;
  CHECK(B->buffer_wrap_host(inst, ro_mem, sizeof ro_mem, &ro, NULL) == VELO_OK, "wrap");
  velo_tensor *rod = new_view(x, VELO_DTYPE_F32, x->ne, x->nb, 0);
  rod->buffer = ro;
  rod->data = ro_mem;
  n = mknode(VELO_OP_ADD, rod, x, x, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "dst in wrapped memory");
  B->buffer_free(inst, ro);

  /* malformed tensors and graphs */
  velo_tensor *bad_nb = new_view(x, VELO_DTYPE_F32, x->ne, x->nb, 0);
  bad_nb->nb[0] = 8;
  n = mknode(VELO_OP_ADD, y, bad_nb, x, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "non-contiguous rows");
  velo_tensor *bad_ne = new_view(x, VELO_DTYPE_F32, x->ne, x->nb, 0);
  bad_ne->ne[1] = 0;
  n = mknode(VELO_OP_ADD, y, bad_ne, x, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ne[1] = 0");
  n = mknode(VELO_OP_ADD, y, x, x, NULL, NULL);
  n.struct_size = 8;
  velo_error err;
  velo_error_init(&err);
  CHECK(run_on(inst, &n, 1, &err) == VELO_INVALID_ARGUMENT, "small node struct_size");
  velo_graph g = {.struct_size = sizeof g, .n_nodes = 3, .nodes = NULL};
  CHECK(B->compute(inst, &g, &err) == VELO_INVALID_ARGUMENT, "NULL node array");
  CHECK(B->compute(inst, NULL, &err) == VELO_INVALID_ARGUMENT, "NULL graph");
  g.n_nodes = 0;
  CHECK(B->compute(inst, &g, NULL) == VELO_OK, "empty graph");
  CHECK(!B->supports(inst, NULL), "supports(NULL)");
}

int main(void) {
  check_rng_state = 0x0123456789abcdefull;
  B = velo_cpu_backend_iface();
  static const int threads[N_INST] = {1, 2, 3, 2};
  for (int k = 0; k < N_INST; k++) {
    velo_backend_options o = {.struct_size = sizeof o, .device = 0, .n_threads = threads[k]};
    velo_error err;
    velo_error_init(&err);
    if (B->open(&o, &g_inst[k], &err) != VELO_OK) {
      fprintf(stderr, "cpu: open failed: %s\n", err.message);
      return 1;
    }
  }
  if (g_inst[0]->vec->isa == VELO_CPU_ISA_SCALAR) {
    B->close(g_inst[3]); /* nothing else to compare with */
    g_inst[3] = NULL;
    printf("cpu: only the portable kernels are available; variant comparison skipped\n");
  } else {
    CHECK(velo_cpu_instance_set_isa(g_inst[3], VELO_CPU_ISA_SCALAR, NULL) == VELO_OK, "set isa");
    printf("cpu: comparing %s kernels with portable C\n", g_inst[0]->vec->name);
  }

  test_get_rows();
  test_rms_norm();
  test_binary();
  test_mul_mat();
  test_rope();
  test_swiglu();
  test_cpy();
  test_attention();
  test_invalid();
  free_tensors();

  for (int k = 0; k < N_INST; k++) B->close(g_inst[k]);
  return check_summary("cpu");
}
