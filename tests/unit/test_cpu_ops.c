/*
 * test_cpu_ops.c - unit tests of the CPU backend's graph ops through its
 * backend table (velo_cpu_backend_iface, linked statically):
 *  - every op (GET_ROWS, RMS_NORM, MUL, ADD, MUL_MAT, ROPE, SWIGLU, CPY,
 *    ATTENTION) against a plain double-precision reference written here, on
 *    random data (fixed seed, no zeros), with a stated tolerance and why;
 *  - MUL_MAT for F32, F16, Q8_0 and Q4_0 weights, following llama.cpp's
 *    activation conversion (fp16 / Q8_0 blocks); GET_ROWS and MUL_MAT with
 *    Q2_K and Q3_K weights (test_k23);
 *  - ATTENTION with GQA (8 query heads, 4 KV heads), positions, F32 and F16
 *    caches;
 *  - 1, 2 and 3 threads, and the portable, AVX2 and AVX-512 kernels, give
 *    bit-identical results;
 *  - invalid graphs return UNIMPLEMENTED / INVALID_ARGUMENT naming the node
 *    instead of crashing;
 *  - SET_ROWS (F32 and F16 dst, strided, repeated ids) against a direct
 *    loop, bit for bit;
 *  - ATTENTION_PAGED bit-identical to ATTENTION on the same logical K/V:
 *    shuffled physical blocks of 1, 3, 16 (and 64) slots, GQA 8/2, F32 and
 *    F16 pools, tokens of three sequences mixed in one node;
 *  - batch invariance: a MUL_MAT column (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 *    Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K weights; odd block counts; batches up to 130
 *    columns) and an
 *    ATTENTION_PAGED query give the same bits alone and in a batch, with
 *    every thread count and kernel variant, and device_info reports
 *    batch_invariant;
 *  - the bad nodes and data of SET_ROWS and ATTENTION_PAGED (dtypes,
 *    shapes, parameters, ids, positions, block tables, overlaps) return the
 *    right code and write nothing.
 *
 * Prints "cpu: N checks passed"; exits non-zero on any failure.
 */
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
 * the portable kernels (NULL when the best variant is already portable);
 * [4]: 2 threads with the AVX2 kernels (NULL unless the best is AVX-512). */
enum { N_INST = 5 };
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
      case VELO_DTYPE_Q2_K:
      case VELO_DTYPE_Q3_K:
      case VELO_DTYPE_Q4_K:
      case VELO_DTYPE_Q5_K:
      case VELO_DTYPE_Q6_K:
      case VELO_DTYPE_Q4_1:
      case VELO_DTYPE_Q5_0:
      case VELO_DTYPE_Q5_1: {
        /* random quant bytes; the fp16 scales (velo_dtype_scale_fields)
         * in [0.005, 0.01) for the K-quants, d in [0.05, 0.1) and m in
         * (-0.1, -0.05] for blocks of 32; the float copy is the dequantized
         * row */
        const size_t bs = velo_dtype_block_bytes(t->dtype);
        const int64_t blk = velo_dtype_block_size(t->dtype);
        int off[2];
        bool f32;
        const int nf = velo_dtype_scale_fields(t->dtype, off, &f32);
        for (size_t i = 0; i < (size_t)(K / blk) * bs; i++)
          ((uint8_t *)row)[i] = (uint8_t)(check_rnd() >> 56);
        for (int64_t b = 0; b < K / blk; b++) {
          char *bp = (char *)row + (size_t)b * bs;
          const float base = blk == 256 ? 0.005f : 0.05f;
          const uint16_t d = velo_fp32_to_fp16(base * (1.0f + fabsf(rndf())));
          const uint16_t m =
              blk == 256 ? d : velo_fp32_to_fp16(-0.05f * (1.0f + fabsf(rndf())));
          memcpy(bp + off[0], &d, 2);
          if (nf == 2) memcpy(bp + off[1], &m, 2);
        }
        velo_dequantize_row(t->dtype, row, wr, K);
        break;
      }
      case VELO_DTYPE_BF16:
        for (int64_t k = 0; k < K; k++) {
          ((uint16_t *)row)[k] = velo_fp32_to_bf16(rndf());
          wr[k] = velo_bf16_to_fp32(((uint16_t *)row)[k]);
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
          for (int64_t b = 0; b < K / 32; b++)
            for (int k = 0; k < 4; k++) {
              /* d_w * q_w is wr[i] exactly, so the sum over a partial sum's
               * 8 elements of wr*q_x is d_w * S[b][k] (cpu_kernels.h) */
              double s = 0;
              for (int i = 0; i < 4; i++) {
                const int64_t e0 = b * 32 + 4 * k + i, e1 = e0 + 16;
                s += (double)wr[e0] * q[e0] + (double)wr[e1] * q[e1];
              }
              ref += s * dx[b];
              mag += fabs(s * dx[b]);
            }
          /* Tolerance (cpu_kernels.h): the partial sums S are exact; one
           * rounding of d_w*d_x per block, a chain of ceil(nb/4) fused
           * multiply-adds per lane and 4 levels of lane reduction, each
           * rounding bounded by 2^-24 times the magnitude of the terms it
           * covers: (ceil(nb/4) + 5) * 2^-24 * sum|terms|, +1 for the
           * second-order terms. */
          tol = (double)((K / 32 + 3) / 4 + 6) * 0x1p-24 * mag;
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

/* Q2_K and Q3_K weights (K = 768, 3 super-blocks) through the backend:
 * GET_ROWS gives velo_dequantize_row's values exactly (that dequantizer
 * is checked against a float64 reference in test_cpu_kquant); MUL_MAT
 * gives, to the bit, one velo_act_dot per output on the column converted
 * by velo_act_convert (Q8_K), and is within tol of the float64 product of
 * the dequantized weights with the float activations: tol = sum_i
 * |w_i|*|x_i - xq_i| (the activation's quantization error, xq_i =
 * x.d*q_i exactly) + (2nb + 4)*u*sum_i T_i*|xq_i| (the dot's roundings,
 * test_cpu_kquant's bound), T_i = |w_i| + 2*15*dmin >= |d*sc*q| +
 * |dmin*m| for Q2_K, |w_i| for Q3_K (exact elements).  Every instance
 * gives the same bits. */
static void test_k23(void) {
  static const velo_dtype dts[] = {VELO_DTYPE_Q2_K, VELO_DTYPE_Q3_K};
  static const int32_t ids[] = {7, 0, 44, 7};
  enum { K = 768, N = 45, M = 5, T = 4 };
  for (int k = 0; k < 2; k++) {
    const velo_dtype dt = dts[k];
    char what[64];
    velo_tensor *w = new_tensor(dt, K, N, 1, 1);
    float *wf = malloc(sizeof(float) * K * N);
    fill_weights(w, wf);

    velo_tensor *id = new_tensor(VELO_DTYPE_I32, T, 1, 1, 1);
    fill_i32(id, ids);
    velo_tensor *rows = new_tensor(VELO_DTYPE_F32, K, T, 1, 1);
    velo_graph_node g = mknode(VELO_OP_GET_ROWS, rows, w, id, NULL, NULL);
    snprintf(what, sizeof what, "GET_ROWS %s", velo_dtype_name(dt));
    if (run(&g, what)) {
      int bad = 0;
      for (int t = 0; t < T; t++)
        for (int e = 0; e < K; e++) bad += f32(rows, e, t, 0, 0) != wf[ids[t] * K + e];
      CHECK(bad == 0, "%s: %d values differ from velo_dequantize_row", what, bad);
      same_everywhere(&g, what);
    }

    velo_tensor *x = new_tensor(VELO_DTYPE_F32, K, M, 1, 1);
    fill_f32(x, 2.0f);
    velo_tensor *d = new_tensor(VELO_DTYPE_F32, N, M, 1, 1);
    velo_graph_node n = mknode(VELO_OP_MUL_MAT, d, w, x, NULL, NULL);
    snprintf(what, sizeof what, "MUL_MAT %s", velo_dtype_name(dt));
    if (run(&n, what)) {
      velo_block_q8_K act[K / 256];
      float col[K];
      int bad_bits = 0, bad = 0;
      double worst = 0;
      for (int m = 0; m < M; m++) {
        for (int i = 0; i < K; i++) col[i] = f32(x, i, m, 0, 0);
        velo_act_convert(dt, col, act, K);
        for (int r = 0; r < N; r++) {
          const char *wrow = (const char *)w->data + (size_t)r * w->nb[1];
          const float want = velo_act_dot(dt, wrow, act, K), got = f32(d, r, m, 0, 0);
          bad_bits += memcmp(&want, &got, sizeof got) != 0;
          double ref = 0, qerr = 0, s = 0;
          for (int i = 0; i < K; i++) {
            const double wi = wf[r * K + i], xq = (double)act[i / 256].d * act[i / 256].qs[i % 256];
            double ti = fabs(wi);
            if (dt == VELO_DTYPE_Q2_K) {
              uint16_t mh;
              memcpy(&mh, wrow + 84 * (i / 256) + 82, 2);
              ti += 30.0 * velo_fp16_to_fp32(mh);
            }
            ref += wi * col[i];
            qerr += fabs(wi) * fabs(col[i] - xq);
            s += ti * fabs(xq);
          }
          const double tol = qerr + (2.0 * (K / 256) + 4) * 0x1p-24 * s, e = fabs(got - ref);
          if (e > tol) bad++;
          if (e / tol > worst) worst = e / tol;
        }
      }
      CHECK(bad_bits == 0, "%s: %d outputs differ from velo_act_dot", what, bad_bits);
      CHECK(bad == 0, "%s: %d outputs outside tolerance (worst error/tol %.3g)", what, bad, worst);
      same_everywhere(&n, what);
    }
    free(wf);
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
static char g_last_message[VELO_ERROR_MESSAGE_MAX]; /* expect_fail's last message */

static void expect_fail(velo_graph_node *nodes, size_t n, velo_status want, size_t index,
                        const char *what) {
  velo_error err;
  velo_error_init(&err);
  velo_status st = run_on(g_inst[1], nodes, n, &err);
  snprintf(g_last_message, sizeof g_last_message, "%s", err.message);
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
  velo_tensor *w41 = new_tensor(VELO_DTYPE_IQ4_NL, 64, 8, 1, 1);
  velo_tensor *w40 = new_tensor(VELO_DTYPE_Q4_0, 64, 8, 1, 1);
  float wf[64 * 8];
  fill_weights(w40, wf);
  velo_tensor *out = new_tensor(VELO_DTYPE_F32, 8, 2, 1, 1);
  velo_tensor *x16 = new_tensor(VELO_DTYPE_F16, 64, 2, 1, 1);

  /* unsupported weight dtype */
  velo_graph_node n = mknode(VELO_OP_MUL_MAT, out, w41, x, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(IQ4_NL MUL_MAT)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "IQ4_NL weights");
  /* K-quant weights are supported for MUL_MAT and GET_ROWS (K = 256) */
  {
    static const velo_dtype kq[] = {VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K,
                                    VELO_DTYPE_Q2_K, VELO_DTYPE_Q3_K};
    velo_tensor *xk = new_tensor(VELO_DTYPE_F32, 256, 2, 1, 1);
    velo_tensor *ids = new_tensor(VELO_DTYPE_I32, 2, 1, 1, 1);
    velo_tensor *rows = new_tensor(VELO_DTYPE_F32, 256, 2, 1, 1);
    for (int i = 0; i < 5; i++) {
      velo_tensor *wk = new_tensor(kq[i], 256, 8, 1, 1);
      n = mknode(VELO_OP_MUL_MAT, out, wk, xk, NULL, NULL);
      CHECK(B->supports(inst, &n), "supports(%s MUL_MAT)", velo_dtype_name(kq[i]));
      n = mknode(VELO_OP_GET_ROWS, rows, wk, ids, NULL, NULL);
      CHECK(B->supports(inst, &n), "supports(%s GET_ROWS)", velo_dtype_name(kq[i]));
    }
  }
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

/* ------------------------------------------------------------------ */
/* SET_ROWS, ATTENTION_PAGED and batch invariance                       */
/* ------------------------------------------------------------------ */

/* A random permutation of 0..n-1 into p (Fisher-Yates on check_rnd). */
static void shuffle_ids(int32_t *p, int64_t n) {
  for (int64_t i = 0; i < n; i++) p[i] = (int32_t)i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(check_rnd() % (uint64_t)(i + 1));
    int32_t tmp = p[i];
    p[i] = p[j];
    p[j] = tmp;
  }
}

/* One SET_ROWS case: src0 F32 [row_len, r1, r2] (r1*r2 rows), dst of dtype
 * [row_len, n_dst] (a view with gap spare floats after each row when gap >
 * 0), ids a random injection into [0, n_dst) (with the last id equal to the
 * first when dup).  The expected bytes come from a direct loop over the
 * rows in order (so with a repeated id the last row wins, which the CPU
 * backend documents); every instance must give exactly them, and bytes
 * outside the rows named stay as they were. */
static void set_rows_case(velo_dtype dt, int64_t row_len, int64_t r1, int64_t r2, int64_t n_dst,
                          int64_t gap, bool dup) {
  const int64_t T = r1 * r2;
  char what[128];
  snprintf(what, sizeof what, "SET_ROWS %s row_len=%lld rows=%lldx%lld n_dst=%lld%s%s",
           velo_dtype_name(dt), (long long)row_len, (long long)r1, (long long)r2,
           (long long)n_dst, gap ? " strided dst" : "", dup ? " repeated id" : "");
  velo_tensor *src = new_tensor(VELO_DTYPE_F32, row_len, r1, r2, 1);
  fill_f32(src, 3.0f);
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_dst);
  shuffle_ids(perm, n_dst);
  if (dup) perm[T - 1] = perm[0];
  velo_tensor *ids = new_tensor(VELO_DTYPE_I32, T, 1, 1, 1);
  fill_i32(ids, perm);
  const size_t esz = velo_dtype_row_bytes(dt, 1);
  velo_tensor *base = new_tensor(dt, row_len + gap, n_dst, 1, 1), *dst = base;
  if (gap) {
    int64_t ne[4] = {row_len, n_dst, 1, 1};
    dst = new_view(base, dt, ne, base->nb, 0);
  }
  /* expected: the initial bytes (random, so a stray write shows), then the
   * rows written in order */
  for (size_t i = 0; i < tsize(base); i++) ((unsigned char *)base->data)[i] = (unsigned char)check_rnd();
  unsigned char *init = malloc(tsize(base)), *want = malloc(tsize(base));
  memcpy(init, base->data, tsize(base));
  memcpy(want, init, tsize(base));
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < row_len; i++) {
      unsigned char *e = want + (size_t)perm[t] * dst->nb[1] + (size_t)i * esz;
      float x = f32(src, i, t % r1, t / r1, 0);
      if (dt == VELO_DTYPE_F16) {
        uint16_t h = velo_fp32_to_fp16(x);
        memcpy(e, &h, sizeof h);
      } else {
        memcpy(e, &x, sizeof x);
      }
    }
  velo_graph_node n = mknode(VELO_OP_SET_ROWS, dst, src, ids, NULL, NULL);
  CHECK(B->supports(g_inst[0], &n), "%s: supports() is false", what);
  for (int k = 0; k < N_INST; k++) {
    if (!g_inst[k]) continue;
    memcpy(base->data, init, tsize(base));
    velo_error err;
    velo_error_init(&err);
    velo_status st = run_on(g_inst[k], &n, 1, &err);
    CHECK(st == VELO_OK, "%s: instance %d: %s", what, k, err.message);
    CHECK(memcmp(base->data, want, tsize(base)) == 0,
          "%s: instance %d (%d threads, %s kernels) differs from the direct loop", what, k,
          velo_cpu_pool_size(g_inst[k]->pool), g_inst[k]->vec->name);
  }
  free(init);
  free(want);
  free(perm);
}

static void test_set_rows(void) {
  for (int f16 = 0; f16 <= 1; f16++) {
    velo_dtype dt = f16 ? VELO_DTYPE_F16 : VELO_DTYPE_F32;
    set_rows_case(dt, 128, 5, 1, 16, 0, false);   /* decode: a few tokens */
    set_rows_case(dt, 64, 3, 4, 20, 0, false);    /* trailing dims flattened to rows */
    set_rows_case(dt, 36, 7, 1, 9, 12, false);    /* strided dst, odd row length */
    set_rows_case(dt, 512, 200, 1, 300, 0, false); /* enough work for 2 and 3 threads */
    set_rows_case(dt, 512, 200, 1, 300, 0, true);  /* a repeated id: one thread, last wins */
    free_tensors();
  }
}

enum { PG_H = 8, PG_HKV = 2, PG_N_SEQ = 3, PG_T = 9 };

/* Fills a K/V tensor (F32 or F16, contiguous) with random values. */
static void fill_kv(velo_tensor *t) {
  size_t n = (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
  for (size_t i = 0; i < n; i++) {
    if (t->dtype == VELO_DTYPE_F16)
      ((uint16_t *)t->data)[i] = velo_fp32_to_fp16(rndf());
    else
      ((float *)t->data)[i] = rndf();
  }
}

/* ATTENTION_PAGED against ATTENTION: three sequences with their own
 * contiguous K/V caches; the same contents copied into a pool of shuffled
 * physical blocks of bs slots (the other slots hold random data); one paged
 * node for nine tokens of the three sequences mixed.  Each token's output
 * must equal, bit for bit, contiguous ATTENTION of that token over its
 * sequence's cache, and the paged node of that token alone (batch
 * invariance), on the 1- and the 3-thread instance. */
static void paged_case(int64_t D, int64_t bs, velo_dtype dt) {
  static const int64_t seq_len[PG_N_SEQ] = {37, 20, 50};
  static const int tok_seq[PG_T] = {0, 1, 2, 1, 0, 2, 2, 1, 0};
  static const int32_t tok_pos[PG_T] = {36, 5, 49, 19, 0, 17, 48, 0, 15};
  char what[96];
  snprintf(what, sizeof what, "ATTENTION_PAGED D=%lld bs=%lld %s", (long long)D, (long long)bs,
           velo_dtype_name(dt));
  /* logical caches and block assignment */
  velo_tensor *Kc[PG_N_SEQ], *Vc[PG_N_SEQ];
  int64_t n_blk[PG_N_SEQ], used = 0, max_blk = 0;
  for (int s = 0; s < PG_N_SEQ; s++) {
    Kc[s] = new_tensor(dt, D, PG_HKV, seq_len[s], 1);
    Vc[s] = new_tensor(dt, D, PG_HKV, seq_len[s], 1);
    fill_kv(Kc[s]);
    fill_kv(Vc[s]);
    n_blk[s] = (seq_len[s] + bs - 1) / bs;
    used += n_blk[s];
    max_blk = n_blk[s] > max_blk ? n_blk[s] : max_blk;
  }
  const int64_t n_pool_blk = used + 3, n_slots = n_pool_blk * bs;
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_pool_blk);
  shuffle_ids(perm, n_pool_blk);
  int32_t *blocks[PG_N_SEQ];
  for (int s = 0, next = 0; s < PG_N_SEQ; s++) {
    blocks[s] = perm + next;
    next += (int)n_blk[s];
  }
  velo_tensor *Kp = new_tensor(dt, D, PG_HKV, n_slots, 1), *Vp = new_tensor(dt, D, PG_HKV, n_slots, 1);
  fill_kv(Kp);
  fill_kv(Vp);
  for (int s = 0; s < PG_N_SEQ; s++)
    for (int64_t p = 0; p < seq_len[s]; p++) {
      int64_t slot = (int64_t)blocks[s][p / bs] * bs + p % bs;
      memcpy((char *)Kp->data + (size_t)slot * Kp->nb[2], (char *)Kc[s]->data + (size_t)p * Kc[s]->nb[2], Kp->nb[2]);
      memcpy((char *)Vp->data + (size_t)slot * Vp->nb[2], (char *)Vc[s]->data + (size_t)p * Vc[s]->nb[2], Vp->nb[2]);
    }
  /* the table: unused entries hold ids far outside the pool, which must be
   * ignored */
  const int64_t W = max_blk + 3;
  velo_tensor *tab = new_tensor(VELO_DTYPE_I32, W, PG_T, 1, 1);
  for (int t = 0; t < PG_T; t++) {
    int32_t *col = (int32_t *)at(tab, 0, t, 0, 0);
    col[0] = tok_pos[t];
    for (int64_t i = 0; i < W - 1; i++)
      col[1 + i] = i < n_blk[tok_seq[t]] ? blocks[tok_seq[t]][i] : (i % 2 ? -7 : INT32_MAX);
  }
  velo_tensor *q = new_tensor(VELO_DTYPE_F32, D, PG_H, PG_T, 1);
  fill_f32(q, 1.0f);
  velo_tensor *o = new_tensor(VELO_DTYPE_F32, D, PG_H, PG_T, 1);
  const float scale = 1.0f / sqrtf((float)D);
  velo_graph_node n = mknode(VELO_OP_ATTENTION_PAGED, o, q, Kp, Vp, tab);
  n.iparams[0] = (int32_t)bs;
  n.fparams[0] = scale;
  CHECK(B->supports(g_inst[0], &n), "%s: supports() is false", what);
  if (!run(&n, what)) {
    free(perm);
    return;
  }
  same_everywhere(&n, what);

  /* per token: contiguous ATTENTION, and the paged node alone */
  velo_tensor *p1 = new_tensor(VELO_DTYPE_I32, 1, 1, 1, 1);
  velo_tensor *o1 = new_tensor(VELO_DTYPE_F32, D, PG_H, 1, 1);
  const size_t out_bytes = (size_t)(D * PG_H) * sizeof(float);
  int bad_contig = 0, bad_alone = 0;
  for (int t = 0; t < PG_T; t++) {
    int64_t qne[4] = {D, PG_H, 1, 1}, tne[4] = {W, 1, 1, 1};
    velo_tensor *q1 = new_view(q, VELO_DTYPE_F32, qne, q->nb, (size_t)t * q->nb[2]);
    velo_tensor *tab1 = new_view(tab, VELO_DTYPE_I32, tne, tab->nb, (size_t)t * tab->nb[1]);
    const void *batch_out = at(o, 0, 0, t, 0);
    fill_i32(p1, &tok_pos[t]);
    velo_graph_node c = mknode(VELO_OP_ATTENTION, o1, q1, Kc[tok_seq[t]], Vc[tok_seq[t]], p1);
    c.fparams[0] = scale;
    velo_graph_node a1 = mknode(VELO_OP_ATTENTION_PAGED, o1, q1, Kp, Vp, tab1);
    a1.iparams[0] = (int32_t)bs;
    a1.fparams[0] = scale;
    for (int k = 0; k < 3; k += 2) { /* 1 and 3 threads */
      velo_error err;
      velo_error_init(&err);
      memset(o1->data, 0x5a, tsize(o1));
      CHECK(run_on(g_inst[k], &c, 1, &err) == VELO_OK, "%s: ATTENTION: %s", what, err.message);
      bad_contig += memcmp(o1->data, batch_out, out_bytes) != 0;
      memset(o1->data, 0x5a, tsize(o1));
      CHECK(run_on(g_inst[k], &a1, 1, &err) == VELO_OK, "%s alone: %s", what, err.message);
      bad_alone += memcmp(o1->data, batch_out, out_bytes) != 0;
    }
  }
  CHECK(bad_contig == 0, "%s: %d token outputs differ from contiguous ATTENTION", what,
        bad_contig);
  CHECK(bad_alone == 0, "%s: %d token outputs differ alone and in the batch", what, bad_alone);
  free(perm);
}

static void test_attention_paged(void) {
  static const int64_t block_sizes[] = {1, 3, 16};
  for (size_t b = 0; b < sizeof block_sizes / sizeof block_sizes[0]; b++)
    for (int f16 = 0; f16 <= 1; f16++) {
      paged_case(64, block_sizes[b], f16 ? VELO_DTYPE_F16 : VELO_DTYPE_F32);
      free_tensors();
    }
  paged_case(20, 3, VELO_DTYPE_F16); /* head_dim not a multiple of 8 */
  paged_case(20, 64, VELO_DTYPE_F32); /* every sequence in one block */
  free_tensors();
}

/* MUL_MAT batch invariance: for every weight dtype and K (256, and 96,
 * 2080 and 2304 with an odd number of blocks, where a multiple of the
 * dtype's block), each column of a batch of M columns
 * (M = 2, 7, 37, 64, 100, 130) equals, bit for bit, the product of that
 * column alone (M = 1) on every instance: 1 and 3 threads, and the other
 * kernel variants.  The batch runs on 3 threads; a column alone on fewer
 * (the thread count follows the work). */
static void test_mul_mat_batch_invariance(void) {
  static const velo_dtype dts[] = {VELO_DTYPE_F32,  VELO_DTYPE_F16,  VELO_DTYPE_Q8_0,
                                   VELO_DTYPE_Q4_0, VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K,
                                   VELO_DTYPE_Q6_K, VELO_DTYPE_Q4_1, VELO_DTYPE_Q5_0,
                                   VELO_DTYPE_Q5_1, VELO_DTYPE_BF16, VELO_DTYPE_Q2_K,
                                   VELO_DTYPE_Q3_K};
  static const int64_t Ms[] = {2, 7, 37, 64, 100, 130};
  static const int64_t Ks[] = {256, 96, 2080, 2304};
  enum { N = 70 };
  for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++) {
      const int64_t K = Ks[ki];
      /* K-quants (blocks of 256) take K = 256 and 2304 (9 blocks) */
      if (K % velo_dtype_block_size(dts[k])) continue;
      velo_tensor *w = new_tensor(dts[k], K, N, 1, 1);
      float *wf = malloc(sizeof(float) * (size_t)(K * N));
      fill_weights(w, wf);
      free(wf);
      velo_tensor *x1 = new_tensor(VELO_DTYPE_F32, K, 1, 1, 1);
      velo_tensor *o1 = new_tensor(VELO_DTYPE_F32, N, 1, 1, 1);
      velo_graph_node one = mknode(VELO_OP_MUL_MAT, o1, w, x1, NULL, NULL);
      for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        const int64_t M = Ms[mi];
        velo_tensor *x = new_tensor(VELO_DTYPE_F32, K, M, 1, 1);
        velo_tensor *o = new_tensor(VELO_DTYPE_F32, N, M, 1, 1);
        fill_f32(x, 2.0f);
        velo_graph_node batch = mknode(VELO_OP_MUL_MAT, o, w, x, NULL, NULL);
        velo_error err;
        velo_error_init(&err);
        CHECK(run_on(g_inst[2], &batch, 1, &err) == VELO_OK, "MUL_MAT batch: %s", err.message);
        int bad = 0;
        for (int64_t m = 0; m < M; m++) {
          memcpy(x1->data, at(x, 0, m, 0, 0), sizeof(float) * K);
          for (int inst = 0; inst < N_INST; inst++) {
            if (!g_inst[inst] || inst == 1) continue;
            memset(o1->data, 0x5a, tsize(o1));
            CHECK(run_on(g_inst[inst], &one, 1, &err) == VELO_OK, "MUL_MAT one: %s",
                  err.message);
            bad += memcmp(o1->data, at(o, 0, m, 0, 0), sizeof(float) * N) != 0;
          }
        }
        CHECK(bad == 0, "MUL_MAT %s K=%lld M=%lld: %d columns differ alone and in the batch",
              velo_dtype_name(dts[k]), (long long)K, (long long)M, bad);
      }
      free_tensors();
    }
}

/* Consecutive MUL_MATs on the same activations (q/k/v, gate/up) run as one
 * job: a graph of such nodes gives the bytes of each node run alone, on
 * every instance; a Q8_0 node between Q4_0 ones, two nodes writing the
 * same dst (the later must win, as in node order) and a node whose dst
 * lies outside its buffer (the earlier nodes are computed, then it fails
 * by its own index) keep node-order semantics. */
static void test_mul_mat_groups(void) {
  enum { K = 256, M = 5 };
  static const int64_t Ns[4] = {70, 20, 33, 8};
  static const velo_dtype dts[4] = {VELO_DTYPE_Q4_0, VELO_DTYPE_Q4_0, VELO_DTYPE_Q8_0,
                                    VELO_DTYPE_Q4_0};
  velo_tensor *x = new_tensor(VELO_DTYPE_F32, K, M, 1, 1);
  fill_f32(x, 2.0f);
  velo_tensor *w[4], *d[4], *alone[4];
  velo_graph_node nodes[4];
  for (int j = 0; j < 4; j++) {
    w[j] = new_tensor(dts[j], K, Ns[j], 1, 1);
    float *wf = malloc(sizeof(float) * K * (size_t)Ns[j]);
    fill_weights(w[j], wf);
    free(wf);
    d[j] = new_tensor(VELO_DTYPE_F32, Ns[j], M, 1, 1);
    alone[j] = new_tensor(VELO_DTYPE_F32, Ns[j], M, 1, 1);
    nodes[j] = mknode(VELO_OP_MUL_MAT, d[j], w[j], x, NULL, NULL);
  }
  velo_error err;
  velo_error_init(&err);
  for (int j = 0; j < 4; j++) {
    velo_graph_node one = mknode(VELO_OP_MUL_MAT, alone[j], w[j], x, NULL, NULL);
    CHECK(run_on(g_inst[0], &one, 1, &err) == VELO_OK, "MUL_MAT alone: %s", err.message);
  }
  for (int k = 0; k < N_INST; k++) {
    if (!g_inst[k]) continue;
    for (int j = 0; j < 4; j++) memset(d[j]->data, 0x5a, tsize(d[j]));
    CHECK(run_on(g_inst[k], nodes, 4, &err) == VELO_OK, "MUL_MAT group: %s", err.message);
    int bad = 0;
    for (int j = 0; j < 4; j++) bad += memcmp(d[j]->data, alone[j]->data, tsize(d[j])) != 0;
    CHECK(bad == 0, "instance %d: %d of 4 grouped MUL_MATs differ from the nodes alone", k, bad);
  }

  /* two nodes writing one dst: the second one's result stays */
  velo_graph_node same[2] = {mknode(VELO_OP_MUL_MAT, d[0], w[0], x, NULL, NULL),
                             mknode(VELO_OP_MUL_MAT, d[0], w[0], x, NULL, NULL)};
  velo_tensor *w0b = new_tensor(VELO_DTYPE_Q4_0, K, Ns[0], 1, 1);
  float *wf = malloc(sizeof(float) * K * (size_t)Ns[0]);
  fill_weights(w0b, wf);
  free(wf);
  same[1].src[0] = w0b;
  velo_tensor *want = new_tensor(VELO_DTYPE_F32, Ns[0], M, 1, 1);
  velo_graph_node ref = mknode(VELO_OP_MUL_MAT, want, w0b, x, NULL, NULL);
  CHECK(run_on(g_inst[0], &ref, 1, &err) == VELO_OK, "MUL_MAT: %s", err.message);
  CHECK(run_on(g_inst[1], same, 2, &err) == VELO_OK, "MUL_MAT pair: %s", err.message);
  CHECK(memcmp(d[0]->data, want->data, tsize(want)) == 0,
        "two MUL_MATs into one dst: the second one's result is not what stays");

  /* the third node (groupable by dtype and activations) has a dst that
   * ends past its buffer: nodes 0 and 1 are written, then it fails */
  velo_tensor bad_dst = *d[3];
  bad_dst.data = (char *)d[3]->data + 64;
  velo_graph_node bad[4] = {nodes[0], nodes[1], nodes[3], nodes[2]};
  bad[2].dst = &bad_dst;
  for (int j = 0; j < 2; j++) memset(d[j]->data, 0x5a, tsize(d[j]));
  expect_fail(bad, 4, VELO_INVALID_ARGUMENT, 2, "MUL_MAT group with a dst outside its buffer");
  CHECK(memcmp(d[0]->data, alone[0]->data, tsize(d[0])) == 0 &&
            memcmp(d[1]->data, alone[1]->data, tsize(d[1])) == 0,
        "the nodes before the failing one were not computed");
  free_tensors();
}

/* device_info says batch_invariant = true, and still accepts an ABI 1.0
 * struct (without the member), leaving the bytes past it alone. */
static void test_device_info(void) {
  velo_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  velo_error err;
  velo_error_init(&err);
  CHECK(B->device_info(0, &info, &err) == VELO_OK, "device_info: %s", err.message);
  CHECK(info.batch_invariant, "batch_invariant is false");
  memset(&info, 0xa5, sizeof info);
  info.struct_size = (uint32_t)offsetof(velo_device_info, batch_invariant);
  CHECK(B->device_info(0, &info, &err) == VELO_OK, "device_info (ABI 1.0 size): %s", err.message);
  unsigned char after;
  memcpy(&after, &info.batch_invariant, 1);
  CHECK(after == 0xa5, "device_info wrote batch_invariant past an ABI 1.0 struct_size");
  info.struct_size = (uint32_t)offsetof(velo_device_info, batch_invariant) - 1;
  CHECK(B->device_info(0, &info, NULL) == VELO_INVALID_ARGUMENT, "struct smaller than ABI 1.0");
}

/* SET_ROWS and ATTENTION_PAGED refuse bad nodes and bad data with the right
 * code, naming the node, and write nothing when they do. */
static void test_invalid_new_ops(void) {
  velo_backend_instance *inst = g_inst[1];
  /* SET_ROWS: src0 [32, 3], ids [3], dst [32, 8] */
  velo_tensor *src = new_tensor(VELO_DTYPE_F32, 32, 3, 1, 1);
  fill_f32(src, 1.0f);
  velo_tensor *ids = new_tensor(VELO_DTYPE_I32, 3, 1, 1, 1);
  fill_i32(ids, (const int32_t[]){4, 0, 7});
  velo_tensor *dst = new_tensor(VELO_DTYPE_F16, 32, 8, 1, 1);
  velo_graph_node n = mknode(VELO_OP_SET_ROWS, dst, src, ids, NULL, NULL);
  CHECK(B->supports(inst, &n), "supports(SET_ROWS)");
  velo_tensor *src16 = new_tensor(VELO_DTYPE_F16, 32, 3, 1, 1);
  n = mknode(VELO_OP_SET_ROWS, dst, src16, ids, NULL, NULL);
  CHECK(!B->supports(inst, &n), "supports(SET_ROWS from F16)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "SET_ROWS src0 F16");
  velo_tensor *dq8 = new_tensor(VELO_DTYPE_Q8_0, 32, 8, 1, 1);
  n = mknode(VELO_OP_SET_ROWS, dq8, src, ids, NULL, NULL);
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "SET_ROWS dst Q8_0");
  velo_tensor *fids = new_tensor(VELO_DTYPE_F32, 3, 1, 1, 1);
  n = mknode(VELO_OP_SET_ROWS, dst, src, fids, NULL, NULL);
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "SET_ROWS F32 ids");
  velo_tensor *d3 = new_tensor(VELO_DTYPE_F32, 32, 4, 2, 1);
  n = mknode(VELO_OP_SET_ROWS, d3, src, ids, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS 3-D dst");
  velo_tensor *d48 = new_tensor(VELO_DTYPE_F32, 48, 8, 1, 1);
  n = mknode(VELO_OP_SET_ROWS, d48, src, ids, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS row length");
  velo_tensor *ids2 = new_tensor(VELO_DTYPE_I32, 2, 1, 1, 1);
  fill_i32(ids2, (const int32_t[]){0, 1});
  n = mknode(VELO_OP_SET_ROWS, dst, src, ids2, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS id count");
  n = mknode(VELO_OP_SET_ROWS, dst, src, NULL, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS without ids");
  /* ids out of range, as node 1 of 2: dst untouched */
  memset(dst->data, 0x77, tsize(dst));
  velo_tensor *y = new_tensor(VELO_DTYPE_F32, 32, 3, 1, 1);
  velo_graph_node two[2] = {mknode(VELO_OP_RMS_NORM, y, src, NULL, NULL, NULL),
                            mknode(VELO_OP_SET_ROWS, dst, src, ids, NULL, NULL)};
  two[0].fparams[0] = 1e-6f;
  static const int32_t bad_ids[][3] = {{4, 8, 0}, {-1, 0, 1}, {1, 2, INT32_MIN}};
  for (int i = 0; i < 3; i++) {
    fill_i32(ids, bad_ids[i]);
    expect_fail(two, 2, VELO_INVALID_ARGUMENT, 1, "SET_ROWS id out of range");
  }
  int touched = 0;
  for (size_t i = 0; i < tsize(dst); i++) touched += ((unsigned char *)dst->data)[i] != 0x77;
  CHECK(touched == 0, "SET_ROWS wrote %d bytes despite a bad id", touched);
  /* dst overlapping src0 or the ids */
  fill_i32(ids, (const int32_t[]){0, 1, 2});
  velo_tensor *big = new_tensor(VELO_DTYPE_F32, 32, 8, 1, 1);
  fill_f32(big, 1.0f);
  int64_t sne[4] = {32, 3, 1, 1};
  velo_tensor *inside = new_view(big, VELO_DTYPE_F32, sne, big->nb, 2 * big->nb[1]);
  n = mknode(VELO_OP_SET_ROWS, big, inside, ids, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS dst overlaps src0");
  CHECK(strstr(g_last_message, "overlaps src0") != NULL, "message: %s", g_last_message);
  int64_t ine[4] = {3, 1, 1, 1};
  size_t inb[4] = {4, 12, 12, 12};
  velo_tensor *ids_in = new_view(big, VELO_DTYPE_I32, ine, inb, 7 * big->nb[1]);
  fill_i32(ids_in, (const int32_t[]){0, 1, 2});
  n = mknode(VELO_OP_SET_ROWS, big, src, ids_in, NULL, NULL);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "SET_ROWS dst overlaps the ids");

  /* ATTENTION_PAGED: q [16, 4, 2], pools [16, 2, 10], bs 4, W 4 */
  velo_tensor *q = new_tensor(VELO_DTYPE_F32, 16, 4, 2, 1);
  fill_f32(q, 1.0f);
  velo_tensor *kp = new_tensor(VELO_DTYPE_F16, 16, 2, 10, 1), *vp = new_tensor(VELO_DTYPE_F16, 16, 2, 10, 1);
  fill_kv(kp);
  fill_kv(vp);
  velo_tensor *tab = new_tensor(VELO_DTYPE_I32, 4, 2, 1, 1);
  velo_tensor *o = new_tensor(VELO_DTYPE_F32, 16, 4, 2, 1);
#define PAGED(dst_, q_, k_, v_, tab_, bs_)                              \
  do {                                                                   \
    n = mknode(VELO_OP_ATTENTION_PAGED, dst_, q_, k_, v_, tab_);         \
    n.iparams[0] = bs_;                                                  \
    n.fparams[0] = 0.25f;                                                \
  } while (0)
  /* a valid node first, at the limits: token 0 at position 11, the last
   * one W - 1 = 3 blocks of 4 hold (blocks 1, 0, 1: a block may repeat);
   * token 1 at position 5, its second block 2 (slots 8..11 of a pool of
   * 10) used up to offset 1, slot 9; the unused entry 99 is ignored */
  static const int32_t good[8] = {11, 1, 0, 1, 5, 1, 2, 99};
  memcpy(at(tab, 0, 1, 0, 0), good + 4, 16);
  memcpy(at(tab, 0, 0, 0, 0), good, 16);
  PAGED(o, q, kp, vp, tab, 4);
  CHECK(B->supports(inst, &n), "supports(ATTENTION_PAGED)");
  velo_error err;
  velo_error_init(&err);
  CHECK(run_on(inst, &n, 1, &err) == VELO_OK, "ATTENTION_PAGED at the limits: %s", err.message);

  velo_tensor *q16 = new_tensor(VELO_DTYPE_F16, 16, 4, 2, 1);
  PAGED(o, q16, kp, vp, tab, 4);
  CHECK(!B->supports(inst, &n), "supports(ATTENTION_PAGED F16 q)");
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "ATTENTION_PAGED F16 q");
  velo_tensor *kq8 = new_tensor(VELO_DTYPE_Q8_0, 32, 2, 10, 1);
  velo_tensor *q32 = new_tensor(VELO_DTYPE_F32, 32, 4, 2, 1), *o32 = new_tensor(VELO_DTYPE_F32, 32, 4, 2, 1);
  PAGED(o32, q32, kq8, kq8, tab, 4);
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "ATTENTION_PAGED Q8_0 pool");
  velo_tensor *ftab = new_tensor(VELO_DTYPE_F32, 4, 2, 1, 1);
  PAGED(o, q, kp, vp, ftab, 4);
  expect_fail(&n, 1, VELO_UNIMPLEMENTED, 0, "ATTENTION_PAGED F32 table");
  velo_tensor *vp32 = new_tensor(VELO_DTYPE_F32, 16, 2, 10, 1);
  PAGED(o, q, kp, vp32, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED K F16, V F32");
  velo_tensor *vp9 = new_tensor(VELO_DTYPE_F16, 16, 2, 9, 1);
  PAGED(o, q, kp, vp9, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED K and V slots differ");
  velo_tensor *kp3 = new_tensor(VELO_DTYPE_F16, 16, 3, 10, 1);
  PAGED(o, q, kp3, kp3, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED GQA ratio");
  velo_tensor *k4d = new_tensor(VELO_DTYPE_F16, 16, 2, 5, 2);
  PAGED(o, q, k4d, k4d, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED 4-D pool");
  velo_tensor *k8 = new_tensor(VELO_DTYPE_F16, 8, 2, 10, 1);
  PAGED(o, q, k8, k8, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED head_dim");
  velo_tensor *o1 = new_tensor(VELO_DTYPE_F32, 16, 4, 1, 1);
  PAGED(o1, q, kp, vp, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED dst shape");
  velo_tensor *tab3 = new_tensor(VELO_DTYPE_I32, 4, 3, 1, 1);
  PAGED(o, q, kp, vp, tab3, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED table columns");
  velo_tensor *tab3d = new_tensor(VELO_DTYPE_I32, 4, 2, 2, 1);
  PAGED(o, q, kp, vp, tab3d, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED 3-D table");
  velo_tensor *tabw1 = new_tensor(VELO_DTYPE_I32, 1, 2, 1, 1);
  PAGED(o, q, kp, vp, tabw1, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED W = 1");
  PAGED(o, q, kp, vp, tab, 0);
  CHECK(!B->supports(inst, &n), "supports(ATTENTION_PAGED bs 0)");
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED bs 0");
  PAGED(o, q, kp, vp, tab, -4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED bs -4");
  PAGED(o, q, kp, vp, tab, 4);
  n.fparams[0] = NAN;
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED NaN scale");

  /* bad tables, as node 1 of 2 (node 0 runs): dst untouched */
  static const struct {
    int32_t col1[4];
    const char *what, *msg;
  } bad_tabs[] = {
      {{-1, 1, 0, 0}, "position -1", "negative"},
      {{12, 1, 0, 2}, "position 12 needs a 4th block (W = 4)", "needs 4 blocks"},
      {{INT32_MAX, 1, 0, 2}, "position INT32_MAX", "needs"},
      {{5, 1, -1, 0}, "block id -1", "outside the pool"},
      {{6, 0, 2, 0}, "last block past the pool (slot 10)", "outside the pool"},
      {{3, 3, 0, 0}, "first block past the pool (slots 12..15)", "outside the pool"},
      {{5, 2, 1, 0}, "a full block 2 (slots 8..11 of 10)", "outside the pool"},
      {{1, INT32_MAX, 0, 0}, "block id INT32_MAX", "outside the pool"},
  };
  velo_graph_node pair[2] = {mknode(VELO_OP_RMS_NORM, y, src, NULL, NULL, NULL),
                             mknode(VELO_OP_ATTENTION_PAGED, o, q, kp, vp, tab)};
  pair[0].fparams[0] = 1e-6f;
  pair[1].iparams[0] = 4;
  pair[1].fparams[0] = 0.25f;
  for (size_t i = 0; i < sizeof bad_tabs / sizeof bad_tabs[0]; i++) {
    memcpy(at(tab, 0, 0, 0, 0), good, 16);
    memcpy(at(tab, 0, 1, 0, 0), bad_tabs[i].col1, 16);
    memset(o->data, 0x77, tsize(o));
    char what[128];
    snprintf(what, sizeof what, "ATTENTION_PAGED %s", bad_tabs[i].what);
    CHECK(B->supports(inst, &pair[1]), "%s: supports() looks at data", what);
    expect_fail(pair, 2, VELO_INVALID_ARGUMENT, 1, what);
    CHECK(strstr(g_last_message, "token 1") && strstr(g_last_message, bad_tabs[i].msg),
          "%s: message \"%s\" lacks \"token 1\" or \"%s\"", what, g_last_message, bad_tabs[i].msg);
    touched = 0;
    for (size_t b = 0; b < tsize(o); b++) touched += ((unsigned char *)o->data)[b] != 0x77;
    CHECK(touched == 0, "%s: dst written (%d bytes)", what, touched);
  }
  memcpy(at(tab, 0, 1, 0, 0), good + 4, 16);
  /* dst overlapping q or the table */
  PAGED(q, q, kp, vp, tab, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED dst == q");
  velo_tensor *both = new_tensor(VELO_DTYPE_F32, 16 * 4 * 2 + 8, 1, 1, 1);
  int64_t one_ne[4] = {16, 4, 2, 1}, tne[4] = {4, 2, 1, 1};
  size_t onb[4] = {4, 64, 256, 512}, tnb[4] = {4, 16, 32, 32};
  velo_tensor *ov = new_view(both, VELO_DTYPE_F32, one_ne, onb, 0);
  velo_tensor *tv = new_view(both, VELO_DTYPE_I32, tne, tnb, 512 - 16);
  memcpy(tv->data, good, sizeof good);
  PAGED(ov, q, kp, vp, tv, 4);
  expect_fail(&n, 1, VELO_INVALID_ARGUMENT, 0, "ATTENTION_PAGED dst overlaps the table");
  CHECK(strstr(g_last_message, "overlaps src3") != NULL, "message: %s", g_last_message);
#undef PAGED
}
/* One share of a pool run: counts each ith it is called with. */
typedef struct pool_probe {
  atomic_int calls[4];
} pool_probe;

static void pool_probe_fn(void *arg, int ith, int nth) {
  pool_probe *p = arg;
  (void)nth;
  atomic_fetch_add(&p->calls[ith], 1);
}

/* Fires when a pool run never returns: a lost worker is a hang, so the
 * test reports it and exits instead of waiting for ctest's timeout. */
static void pool_alarm(int sig) {
  (void)sig;
  static const char msg[] = "cpu: FAIL thread pool run did not return within 60 s (a worker "
                            "missed a run)\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  _exit(1);
}

/* The pool's first run right after creation, before the workers may have
 * started (they must still take part: a worker that read the generation
 * counter only once running used to count that run as already seen and
 * leave the caller waiting forever), then a few more; every ith of every
 * run is called exactly once.  Many fresh pools of 2..4 threads. */
static void test_pool_first_run(void) {
  signal(SIGALRM, pool_alarm);
  alarm(60);
  int bad = 0;
  for (int it = 0; it < 400; it++) {
    const int n = 2 + it % 3;
    velo_cpu_pool *pool;
    velo_error err;
    velo_error_init(&err);
    if (velo_cpu_pool_create(n, &pool, &err) != VELO_OK) {
      CHECK(0, "pool create: %s", err.message);
      break;
    }
    for (int run = 0; run < 3; run++) {
      pool_probe p;
      for (int i = 0; i < 4; i++) atomic_init(&p.calls[i], 0);
      velo_cpu_pool_run(pool, pool_probe_fn, &p, n);
      for (int i = 0; i < 4; i++) bad += atomic_load(&p.calls[i]) != (i < n ? 1 : 0);
    }
    velo_cpu_pool_destroy(pool);
  }
  alarm(0);
  CHECK(bad == 0, "thread pool: %d shares not called exactly once", bad);
}

int main(void) {
  check_rng_state = 0x0123456789abcdefull;
  test_pool_first_run();
  B = velo_cpu_backend_iface();
  static const int threads[N_INST] = {1, 2, 3, 2, 2};
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
  /* the AVX2 kernels too when the best variant is AVX-512 */
  if (g_inst[0]->vec->isa != VELO_CPU_ISA_AVX512 ||
      velo_cpu_instance_set_isa(g_inst[4], VELO_CPU_ISA_AVX2, NULL) != VELO_OK) {
    B->close(g_inst[4]);
    g_inst[4] = NULL;
  } else {
    printf("cpu: comparing %s kernels with AVX2\n", g_inst[0]->vec->name);
  }

  test_get_rows();
  test_rms_norm();
  test_binary();
  test_mul_mat();
  test_k23();
  test_rope();
  test_swiglu();
  test_cpy();
  test_attention();
  test_invalid();
  free_tensors();
  test_set_rows();
  test_attention_paged();
  test_mul_mat_batch_invariance();
  test_mul_mat_groups();
  test_device_info();
  test_invalid_new_ops();
  free_tensors();

  for (int k = 0; k < N_INST; k++) B->close(g_inst[k]);
  return check_summary("cpu");
}
