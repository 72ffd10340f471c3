/*
 * test_gpu_emu.cc - every kernel of backends/gpu_common/gpu_kernels.cu, run
 * through the host emulation of emu.h (no GPU needed), against the CPU
 * backend (velo_cpu_iface, the op contracts of velo/backend.h) on random
 * data, with shapes chosen for the kernels' tails: K not a multiple of a
 * shared-memory stage, N not a multiple of a tile, M on both sides of every
 * kernel switch (1, 2, 3, 5, 8 | 9, 33, 64 | 65, 100), head_dim above the
 * 128 threads of an attention block, odd block sizes and positions past a
 * 128-position chunk.  Also: batch invariance (each column of a MUL_MAT
 * bit-equal to the same column computed alone), the fused RMS_NORM + MUL,
 * and data errors recorded, not acted on.
 *
 * Built and run by tests/gpu/emu/run_emu.sh, once with 32-lane warps
 * (CUDA) and once with 64 (AMD CDNA, the HIP build's width there), under
 * AddressSanitizer, so an out-of-bounds access at a tail fails here.
 * Exit status 0 when every check passed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <initializer_list>
#include <vector>

#include "gpu_blocks.h"
#include "gpu_kernels.h"
#include "velo/backend.h"
#include "velo/tensor.h"

/* The CPU backend's table (backends/cpu/cpu_backend.h, a C header). */
extern "C" const velo_backend_iface velo_cpu_iface;

static int g_fail, g_checks;
static velo_backend_instance *g_cpu;
static const velo_backend_iface *g_be = &velo_cpu_iface;
static uint64_t g_rng = 0x243f6a8885a308d3ull;

#define CHECK(c, ...)                              \
  do {                                             \
    g_checks++;                                    \
    if (!(c)) {                                    \
      g_fail++;                                    \
      printf("FAIL %s:%d: ", __FILE__, __LINE__);  \
      printf(__VA_ARGS__);                         \
      printf("\n");                                \
    }                                              \
  } while (0)

static uint64_t rnd() {
  g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
  return g_rng * 0x2545f4914f6cdd1dull;
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (float)((rnd() >> 11) * (1.0 / 9007199254740992.0)); }

/* A tensor in a CPU-backend buffer (host memory, shared by both sides). */
struct Ten {
  velo_tensor t;
  velo_buffer *b = nullptr;
  Ten(velo_dtype dt, std::initializer_list<int64_t> ne, size_t row_pad = 0) {
    int64_t n[4] = {1, 1, 1, 1};
    int i = 0;
    for (int64_t v : ne) n[i++] = v;
    memset(&t, 0, sizeof t);
    velo_tensor_set_shape(&t, dt, i, n);
    if (row_pad) { /* rows row_pad bytes apart beyond their length */
      t.nb[1] += row_pad;
      for (int d = 2; d < 4; d++) t.nb[d] = t.nb[d - 1] * (size_t)t.ne[d - 1];
    }
    size_t bytes = t.nb[3] * (size_t)t.ne[3];
    velo_error err;
    velo_error_init(&err);
    if (g_be->buffer_alloc(g_cpu, bytes, &b, &err) != VELO_OK) {
      printf("buffer_alloc: %s\n", err.message);
      exit(2);
    }
    t.buffer = b;
    t.offset = 0;
    t.data = g_be->buffer_host_ptr(b);
    memset(t.data, 0xA5, bytes); /* poison: unwritten outputs show */
  }
  ~Ten() { g_be->buffer_free(g_cpu, b); }
  Ten(const Ten &) = delete;
  size_t bytes() const { return t.nb[3] * (size_t)t.ne[3]; }
  char *p() const { return (char *)t.data; }
  float *f() const { return (float *)t.data; }
  int32_t *i() const { return (int32_t *)t.data; }
  vgk_tensor vk() const {
    vgk_tensor v;
    memset(&v, 0, sizeof v);
    v.data = (char *)t.data;
    for (int d = 0; d < 4; d++) {
      v.ne[d] = t.ne[d];
      v.nb[d] = (int64_t)t.nb[d];
    }
    v.dtype = t.dtype;
    return v;
  }
  void fill_f32(float lo, float hi) {
    for (int64_t r = 0; r < t.ne[1] * t.ne[2] * t.ne[3]; r++) {
      float *row = (float *)row_ptr(r);
      for (int64_t c = 0; c < t.ne[0]; c++) row[c] = rndf(lo, hi);
    }
  }
  char *row_ptr(int64_t r) const {
    int64_t i1 = r % t.ne[1], i2 = r / t.ne[1] % t.ne[2], i3 = r / (t.ne[1] * t.ne[2]);
    return p() + i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3];
  }
};

/* Runs one node (or two) on the CPU backend. */
static bool cpu_run(std::initializer_list<velo_graph_node> nodes) {
  std::vector<velo_graph_node> v(nodes);
  for (auto &n : v) n.struct_size = sizeof n;
  velo_graph g = {sizeof g, v.size(), v.data()};
  velo_error err;
  velo_error_init(&err);
  velo_status st = g_be->compute(g_cpu, &g, &err);
  if (st != VELO_OK) printf("cpu compute: %s\n", err.message);
  return st == VELO_OK;
}
static velo_graph_node mknode(velo_op op, Ten &d, Ten *a, Ten *b = nullptr, Ten *c = nullptr, Ten *e = nullptr) {
  velo_graph_node n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.op = op;
  n.dst = &d.t;
  n.src[0] = a ? &a->t : nullptr;
  n.src[1] = b ? &b->t : nullptr;
  n.src[2] = c ? &c->t : nullptr;
  n.src[3] = e ? &e->t : nullptr;
  return n;
}

/* Largest |a - b| over the F32 rows of two same-shape tensors, and the
 * largest |b|; NaN in a counts as infinite. */
static double max_diff(const Ten &a, const Ten &b, double *scale) {
  double w = 0, s = 0;
  for (int64_t r = 0; r < a.t.ne[1] * a.t.ne[2] * a.t.ne[3]; r++) {
    const float *x = (const float *)a.row_ptr(r), *y = (const float *)b.row_ptr(r);
    for (int64_t c = 0; c < a.t.ne[0]; c++) {
      double d = fabs((double)x[c] - (double)y[c]);
      if (!(d <= w)) w = isnan(d) ? INFINITY : d;
      if (fabs(y[c]) > s) s = fabs(y[c]);
    }
  }
  if (scale) *scale = s;
  return w;
}
static bool bit_equal(const Ten &a, const Ten &b) {
  for (int64_t r = 0; r < a.t.ne[1] * a.t.ne[2] * a.t.ne[3]; r++)
    if (memcmp(a.row_ptr(r), b.row_ptr(r), velo_dtype_row_bytes(a.t.dtype, a.t.ne[0])) != 0) return false;
  return true;
}

static vgk_error *g_err;
static void err_clear() { memset(g_err, 0, sizeof *g_err); }

/* ------------------------------------------------------------------ */

/* Random but sane weight rows: random bytes, scales set to small fp16s. */
static void fill_weights(Ten &w) {
  const int dt = w.t.dtype;
  for (size_t i = 0; i < w.bytes(); i++) w.p()[i] = (char)(rnd() >> 40);
  if (dt == VELO_DTYPE_F32) w.fill_f32(-1, 1);
  for (int64_t r = 0; r < w.t.ne[1]; r++) {
    char *row = w.row_ptr(r);
    for (int64_t k = 0; k < w.t.ne[0]; k++) {
      if (dt == VELO_DTYPE_F16) ((uint16_t *)row)[k] = vgb_f32_to_fp16(rndf(-1, 1));
      if (dt == VELO_DTYPE_BF16) ((uint16_t *)row)[k] = (uint16_t)(vgb_f32_to_bits(rndf(-1, 1)) >> 16);
    }
    const int bb = vgb_block_bytes(dt), be = vgb_block_elems(dt);
    if (!bb) continue;
    for (int64_t b = 0; b < w.t.ne[0] / be; b++) {
      uint8_t *blk = (uint8_t *)row + b * bb;
      uint16_t d = vgb_f32_to_fp16(rndf(0.001f, 0.02f)), m = vgb_f32_to_fp16(rndf(0.001f, 0.02f));
      int off = dt == VELO_DTYPE_Q6_K ? 208 : 0;
      memcpy(blk + off, &d, 2);
      if (dt == VELO_DTYPE_Q4_K || dt == VELO_DTYPE_Q5_K) memcpy(blk + 2, &m, 2);
    }
  }
}

static const char *tname(int dt) { return velo_dtype_name(dt); }

/* MUL_MAT of one weight type: against the CPU backend at every M, and
 * batch invariance (each column bit-equal to itself computed alone). */
static void test_mul_mat(velo_dtype dt, int64_t K, int64_t N) {
  Ten w(dt, {K, N});
  fill_weights(w);
  /* BF16: the CPU backend rounds activations to bf16, this backend does
   * not; compare with the same values as F32 weights instead */
  Ten wf(VELO_DTYPE_F32, {K, N});
  for (int64_t r = 0; r < N; r++)
    for (int64_t k = 0; k < K; k++) ((float *)wf.row_ptr(r))[k] = vgb_dequant(dt, (const uint8_t *)w.row_ptr(r), k);
  for (int64_t M : {1, 3, 8, 9, 65}) {
    Ten x(VELO_DTYPE_F32, {K, M}), dg(VELO_DTYPE_F32, {N, M}), dc(VELO_DTYPE_F32, {N, M});
    x.fill_f32(-2, 2);
    size_t scr_bytes = vgk_mul_mat_scratch(dt, K, M);
    std::vector<char> scr(scr_bytes + 64);
    vgk_tensor vd = dg.vk(), vw = w.vk(), vx = x.vk();
    vgk_mul_mat(nullptr, scr.data(), &vd, &vw, &vx, 1);
    Ten &ref_w = dt == VELO_DTYPE_BF16 ? wf : w;
    if (!cpu_run({mknode(VELO_OP_MUL_MAT, dc, &ref_w, &x)})) {
      CHECK(false, "%s: the CPU backend cannot run MUL_MAT", tname(dt));
      return;
    }
    double s, d = max_diff(dg, dc, &s);
    /* the same integer block sums; only the float accumulation order differs */
    double tol = (dt == VELO_DTYPE_F32 || dt == VELO_DTYPE_F16 || dt == VELO_DTYPE_BF16 ? 2e-6 : 2e-6) * (s + 1e-6) *
                 sqrt((double)K / 32.0);
    CHECK(d <= tol, "MUL_MAT %s K %lld N %lld M %lld: max |gpu - cpu| %.3g > %.3g (max |cpu| %.3g)", tname(dt),
          (long long)K, (long long)N, (long long)M, d, tol, s);
    /* batch invariance: columns 0, M/2 and M-1 alone */
    for (int64_t c : {M - 1}) {
      Ten x1(VELO_DTYPE_F32, {K, 1}), d1(VELO_DTYPE_F32, {N, 1});
      memcpy(x1.p(), x.row_ptr(c), (size_t)K * 4);
      vgk_tensor v1 = d1.vk(), vx1 = x1.vk();
      std::vector<char> scr1(vgk_mul_mat_scratch(dt, K, 1) + 64);
      vgk_mul_mat(nullptr, scr1.data(), &v1, &vw, &vx1, 1);
      CHECK(memcmp(d1.p(), dg.row_ptr(c), (size_t)N * 4) == 0,
            "MUL_MAT %s K %lld M %lld: column %lld differs from the same column alone (not batch invariant)",
            tname(dt), (long long)K, (long long)M, (long long)c);
    }
    /* convert = 0 reuses the scratch as converted by the call before */
    Ten dg2(VELO_DTYPE_F32, {N, M});
    vgk_tensor vd2 = dg2.vk();
    vgk_mul_mat(nullptr, scr.data(), &vd2, &vw, &vx, 0);
    CHECK(bit_equal(dg, dg2), "MUL_MAT %s M %lld: the reused conversion gives other bits", tname(dt), (long long)M);
  }
}

/* MUL_MAT with a strided activation view (rows picked by GET_ROWS, say). */
static void test_mul_mat_strided() {
  const int64_t K = 256, N = 37, M = 3;
  Ten w(VELO_DTYPE_Q4_0, {K, N});
  fill_weights(w);
  Ten x(VELO_DTYPE_F32, {K, M}, 64), dg(VELO_DTYPE_F32, {N, M}, 32), dc(VELO_DTYPE_F32, {N, M}, 32);
  x.fill_f32(-1, 1);
  std::vector<char> scr(vgk_mul_mat_scratch(VELO_DTYPE_Q4_0, K, M) + 64);
  vgk_tensor vd = dg.vk(), vw = w.vk(), vx = x.vk();
  vgk_mul_mat(nullptr, scr.data(), &vd, &vw, &vx, 1);
  cpu_run({mknode(VELO_OP_MUL_MAT, dc, &w, &x)});
  double s, d = max_diff(dg, dc, &s);
  CHECK(d <= 1e-5 * s, "MUL_MAT strided: %.3g", d);
}

static void test_rms_norm() {
  for (int64_t n : {1, 300}) {
    Ten x(VELO_DTYPE_F32, {n, 5}), g(VELO_DTYPE_F32, {n, 5}), c(VELO_DTYPE_F32, {n, 5});
    Ten wv(VELO_DTYPE_F32, {n, 1}), g2(VELO_DTYPE_F32, {n, 5}), c2(VELO_DTYPE_F32, {n, 5});
    x.fill_f32(-3, 3);
    wv.fill_f32(0.5, 1.5);
    vgk_tensor vg = g.vk(), vx = x.vk(), vw = wv.vk(), vg2 = g2.vk();
    vgk_rms_norm(nullptr, &vg, &vx, 1e-5f, nullptr);
    velo_graph_node rn = mknode(VELO_OP_RMS_NORM, c, &x);
    rn.fparams[0] = 1e-5f;
    cpu_run({rn});
    double s, d = max_diff(g, c, &s);
    CHECK(d <= 2e-7 * s, "RMS_NORM n %lld: %.3g", (long long)n, d);
    /* fused RMS_NORM + MUL against the two CPU nodes */
    vgk_rms_norm(nullptr, &vg2, &vx, 1e-5f, &vw);
    velo_graph_node rn2 = mknode(VELO_OP_RMS_NORM, c2, &x);
    rn2.fparams[0] = 1e-5f;
    cpu_run({rn2, mknode(VELO_OP_MUL, c2, &c2, &wv)});
    d = max_diff(g2, c2, &s);
    CHECK(d <= 2e-7 * s, "RMS_NORM + MUL n %lld: %.3g", (long long)n, d);
  }
}

static void test_binary() {
  for (int op : {VELO_OP_ADD, VELO_OP_MUL}) {
    Ten a(VELO_DTYPE_F32, {40, 3, 2}), g(VELO_DTYPE_F32, {40, 3, 2}), c(VELO_DTYPE_F32, {40, 3, 2});
    Ten b1(VELO_DTYPE_F32, {40, 1, 2}), b2(VELO_DTYPE_F32, {1, 3, 1}), b3(VELO_DTYPE_F32, {40, 3, 2});
    a.fill_f32(-2, 2);
    b1.fill_f32(-2, 2);
    b2.fill_f32(-2, 2);
    b3.fill_f32(-2, 2);
    for (Ten *b : {&b1, &b2, &b3}) {
      vgk_tensor vg = g.vk(), va = a.vk(), vb = b->vk();
      vgk_binary(nullptr, op == VELO_OP_MUL, &vg, &va, &vb);
      cpu_run({mknode((velo_op)op, c, &a, b)});
      CHECK(bit_equal(g, c), "%s broadcast [%lld,%lld,%lld] differs", op == VELO_OP_MUL ? "MUL" : "ADD",
            (long long)b->t.ne[0], (long long)b->t.ne[1], (long long)b->t.ne[2]);
    }
    /* in place: dst == src0 */
    Ten ai(VELO_DTYPE_F32, {40, 3, 2}), ci(VELO_DTYPE_F32, {40, 3, 2});
    memcpy(ai.p(), a.p(), a.bytes());
    memcpy(ci.p(), a.p(), a.bytes());
    vgk_tensor vai = ai.vk(), vb = b1.vk();
    vgk_binary(nullptr, op == VELO_OP_MUL, &vai, &vai, &vb);
    cpu_run({mknode((velo_op)op, ci, &ci, &b1)});
    CHECK(bit_equal(ai, ci), "in-place %s differs", op == VELO_OP_MUL ? "MUL" : "ADD");
  }
  Ten a(VELO_DTYPE_F32, {70, 3}), b(VELO_DTYPE_F32, {70, 3}), g(VELO_DTYPE_F32, {70, 3}), c(VELO_DTYPE_F32, {70, 3});
  a.fill_f32(-20, 20);
  b.fill_f32(-2, 2);
  vgk_tensor vg = g.vk(), va = a.vk(), vb = b.vk();
  vgk_swiglu(nullptr, &vg, &va, &vb);
  cpu_run({mknode(VELO_OP_SWIGLU, c, &a, &b)});
  double s, d = max_diff(g, c, &s);
  CHECK(d <= 1e-6 * s, "SWIGLU: %.3g", d); /* expf: within an ulp or two */
}

static void test_cpy() {
  for (velo_dtype dt : {VELO_DTYPE_F32, VELO_DTYPE_F16}) {
    Ten src(VELO_DTYPE_F32, {64, 4, 3});
    src.fill_f32(-70000, 70000); /* some overflow fp16 */
    Ten g(dt, {64, 4, 3}, 32), c(dt, {64, 4, 3}, 32);
    vgk_tensor vg = g.vk(), vs = src.vk();
    vgk_cpy(nullptr, &vg, &vs);
    cpu_run({mknode(VELO_OP_CPY, c, &src)});
    CHECK(bit_equal(g, c), "CPY to %s differs", tname(dt));
  }
}

static void test_rope() {
  for (int mode : {VELO_ROPE_NORMAL, VELO_ROPE_NEOX})
    for (int n_rot : {64, 32}) {
      Ten x(VELO_DTYPE_F32, {64, 4, 3}), pos(VELO_DTYPE_I32, {3}), g(VELO_DTYPE_F32, {64, 4, 3}),
          c(VELO_DTYPE_F32, {64, 4, 3});
      x.fill_f32(-2, 2);
      pos.i()[0] = 5, pos.i()[1] = 100, pos.i()[2] = 2047;
      float base = 10000.0f, fscale = mode ? 0.5f : 1.0f;
      vgk_tensor vg = g.vk(), vx = x.vk(), vp = pos.vk();
      vgk_rope(nullptr, &vg, &vx, &vp, n_rot, mode == VELO_ROPE_NEOX, fscale, powf(base, -2.0f / (float)n_rot));
      velo_graph_node n = mknode(VELO_OP_ROPE, c, &x, &pos);
      n.iparams[0] = n_rot;
      n.iparams[1] = mode;
      n.fparams[0] = base;
      n.fparams[1] = fscale;
      cpu_run({n});
      double s, d = max_diff(g, c, &s);
      CHECK(d <= 1e-6 * s, "ROPE mode %d n_rot %d: %.3g", mode, n_rot, d);
    }
}

static void test_get_set_rows() {
  for (velo_dtype dt : {VELO_DTYPE_F32, VELO_DTYPE_F16, VELO_DTYPE_BF16, VELO_DTYPE_Q8_0, VELO_DTYPE_Q4_0,
                        VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K}) {
    Ten w(dt, {512, 10}), ids(VELO_DTYPE_I32, {3}), g(VELO_DTYPE_F32, {512, 3}), c(VELO_DTYPE_F32, {512, 3});
    fill_weights(w);
    ids.i()[0] = 7, ids.i()[1] = 0, ids.i()[2] = 9;
    vgk_tensor vg = g.vk(), vw = w.vk(), vi = ids.vk();
    err_clear();
    vgk_get_rows(nullptr, g_err, 3, &vg, &vw, &vi);
    cpu_run({mknode(VELO_OP_GET_ROWS, c, &w, &ids)});
    CHECK(bit_equal(g, c) && !g_err->claimed, "GET_ROWS %s differs", tname(dt));
    ids.i()[1] = 10;
    err_clear();
    vgk_get_rows(nullptr, g_err, 3, &vg, &vw, &vi);
    CHECK(g_err->claimed && g_err->node == 3 && g_err->kind == VGK_ERR_GET_ROWS_ID && g_err->a == 10 &&
              g_err->b == 1 && g_err->c == 10,
          "GET_ROWS %s: id 10 of 10 rows not recorded (claimed %d kind %d a %d b %d)", tname(dt), g_err->claimed,
          g_err->kind, g_err->a, g_err->b);
  }
  for (velo_dtype dt : {VELO_DTYPE_F32, VELO_DTYPE_F16}) {
    Ten src(VELO_DTYPE_F32, {96, 3}), ids(VELO_DTYPE_I32, {3}), g(dt, {96, 10}), c(dt, {96, 10});
    src.fill_f32(-3, 3);
    memset(g.p(), 0, g.bytes());
    memset(c.p(), 0, c.bytes());
    ids.i()[0] = 4, ids.i()[1] = 9, ids.i()[2] = 0;
    vgk_tensor vg = g.vk(), vs = src.vk(), vi = ids.vk();
    err_clear();
    vgk_set_rows(nullptr, g_err, 0, &vg, &vs, &vi);
    cpu_run({mknode(VELO_OP_SET_ROWS, c, &src, &ids)});
    CHECK(bit_equal(g, c) && !g_err->claimed, "SET_ROWS to %s differs", tname(dt));
    ids.i()[2] = -1;
    err_clear();
    vgk_set_rows(nullptr, g_err, 2, &vg, &vs, &vi);
    CHECK(g_err->claimed && g_err->kind == VGK_ERR_SET_ROWS_ID && g_err->a == -1 && g_err->b == 2,
          "SET_ROWS: id -1 not recorded");
  }
}

/* ATTENTION and ATTENTION_PAGED (same logical K/V) against the CPU. */
static void test_attention(int64_t D, velo_dtype kvt, int64_t bs) {
  const int64_t H = 8, HKV = 2, T = 5, n_ctx = 300, n_slots = 420;
  Ten q(VELO_DTYPE_F32, {D, H, T}), K(kvt, {D, HKV, n_ctx}), V(kvt, {D, HKV, n_ctx});
  Ten pos(VELO_DTYPE_I32, {T});
  q.fill_f32(-1, 1);
  for (Ten *c : {&K, &V})
    for (int64_t r = 0; r < HKV * n_ctx; r++)
      for (int64_t d = 0; d < D; d++) {
        float v = rndf(-1, 1);
        if (kvt == VELO_DTYPE_F16) ((uint16_t *)c->row_ptr(r))[d] = vgb_f32_to_fp16(v);
        else ((float *)c->row_ptr(r))[d] = v;
      }
  const int32_t ps[T] = {0, 127, 128, 200, 299};
  for (int t = 0; t < T; t++) pos.i()[t] = ps[t];
  const float scale = 1.0f / sqrtf((float)D);
  {
    Ten g(VELO_DTYPE_F32, {D, H, T}), c(VELO_DTYPE_F32, {D, H, T});
    vgk_tensor vg = g.vk(), vq = q.vk(), vk = K.vk(), vv = V.vk(), vp = pos.vk();
    err_clear();
    vgk_attention(nullptr, g_err, 1, &vg, &vq, &vk, &vv, &vp, 0, 1, scale);
    velo_graph_node n = mknode(VELO_OP_ATTENTION, c, &q, &K, &V, &pos);
    n.fparams[0] = scale;
    cpu_run({n});
    double s, d = max_diff(g, c, &s);
    CHECK(d <= 1e-5 * s && !g_err->claimed, "ATTENTION D %lld %s: %.3g (max %.3g)", (long long)D, tname(kvt), d, s);
    /* a position past the cache */
    pos.i()[3] = (int32_t)n_ctx;
    err_clear();
    vgk_attention(nullptr, g_err, 1, &vg, &vq, &vk, &vv, &vp, 0, 1, scale);
    CHECK(g_err->claimed && g_err->kind == VGK_ERR_ATTN_POS && g_err->a == n_ctx && g_err->b == 3,
          "ATTENTION: position %lld not recorded", (long long)n_ctx);
    pos.i()[3] = ps[3];
  }
  /* paged: the same logical cache scattered over a larger pool in blocks
   * of bs slots, in a shuffled order */
  const int64_t nblk = (n_ctx + bs - 1) / bs, W = 1 + nblk + 1, pool_blocks = n_slots / bs;
  Ten Kp(kvt, {D, HKV, n_slots}), Vp(kvt, {D, HKV, n_slots}), tab(VELO_DTYPE_I32, {W, T});
  std::vector<int32_t> perm((size_t)pool_blocks);
  for (int64_t i = 0; i < pool_blocks; i++) perm[(size_t)i] = (int32_t)i;
  for (int64_t i = pool_blocks - 1; i > 0; i--) std::swap(perm[(size_t)i], perm[(size_t)(rnd() % (uint64_t)(i + 1))]);
  memset(Kp.p(), 0, Kp.bytes());
  memset(Vp.p(), 0, Vp.bytes());
  for (int64_t p = 0; p < n_ctx; p++) {
    int64_t slot = (int64_t)perm[(size_t)(p / bs)] * bs + p % bs;
    for (int64_t h = 0; h < HKV; h++) {
      memcpy(Kp.row_ptr(slot * HKV + h), K.row_ptr(p * HKV + h), velo_dtype_row_bytes(kvt, D));
      memcpy(Vp.row_ptr(slot * HKV + h), V.row_ptr(p * HKV + h), velo_dtype_row_bytes(kvt, D));
    }
  }
  for (int64_t t = 0; t < T; t++) {
    int32_t *col = (int32_t *)tab.row_ptr(t);
    col[0] = ps[t];
    for (int64_t i = 0; i < W - 1; i++) col[1 + i] = i < nblk ? perm[(size_t)i] : -7;
  }
  Ten g(VELO_DTYPE_F32, {D, H, T}), c(VELO_DTYPE_F32, {D, H, T}), g0(VELO_DTYPE_F32, {D, H, T});
  vgk_tensor vg = g.vk(), vq = q.vk(), vk = Kp.vk(), vv = Vp.vk(), vt = tab.vk();
  err_clear();
  vgk_attention(nullptr, g_err, 4, &vg, &vq, &vk, &vv, &vt, 1, (int32_t)bs, scale);
  velo_graph_node n = mknode(VELO_OP_ATTENTION_PAGED, c, &q, &Kp, &Vp, &tab);
  n.iparams[0] = (int32_t)bs;
  n.fparams[0] = scale;
  cpu_run({n});
  double s, d = max_diff(g, c, &s);
  CHECK(d <= 1e-5 * s && !g_err->claimed, "ATTENTION_PAGED D %lld %s bs %lld: %.3g", (long long)D, tname(kvt),
        (long long)bs, d);
  /* the contiguous and the paged kernels agree bit for bit on the same
   * logical K/V */
  vgk_tensor vg0 = g0.vk(), vk0 = K.vk(), vv0 = V.vk(), vp = pos.vk();
  vgk_attention(nullptr, g_err, 1, &vg0, &vq, &vk0, &vv0, &vp, 0, 1, scale);
  CHECK(bit_equal(g, g0), "ATTENTION_PAGED D %lld bs %lld differs from ATTENTION on the same K/V", (long long)D,
        (long long)bs);
  /* batch invariance: token 3 alone */
  Ten q1(VELO_DTYPE_F32, {D, H, 1}), t1(VELO_DTYPE_I32, {W, 1}), g1(VELO_DTYPE_F32, {D, H, 1});
  for (int64_t h = 0; h < H; h++) memcpy(q1.row_ptr(h), q.row_ptr(3 * H + h), (size_t)D * 4);
  memcpy(t1.p(), tab.row_ptr(3), (size_t)W * 4);
  vgk_tensor vg1 = g1.vk(), vq1 = q1.vk(), vt1 = t1.vk();
  vgk_attention(nullptr, g_err, 4, &vg1, &vq1, &vk, &vv, &vt1, 1, (int32_t)bs, scale);
  bool same = true;
  for (int64_t h = 0; h < H; h++) same = same && memcmp(g1.row_ptr(h), g.row_ptr(3 * H + h), (size_t)D * 4) == 0;
  CHECK(same, "ATTENTION_PAGED D %lld: token 3 alone differs from token 3 in the batch", (long long)D);
  /* errors: a table too narrow, a block id outside the pool */
  int32_t *col = (int32_t *)tab.row_ptr(4);
  col[0] = (int32_t)((W - 1) * bs);
  err_clear();
  vgk_attention(nullptr, g_err, 4, &vg, &vq, &vk, &vv, &vt, 1, (int32_t)bs, scale);
  CHECK(g_err->claimed && g_err->kind == VGK_ERR_PAGED_WIDTH && g_err->b == 4, "ATTENTION_PAGED: width error not recorded");
  col[0] = ps[4];
  col[1] = (int32_t)pool_blocks + 5;
  err_clear();
  vgk_attention(nullptr, g_err, 4, &vg, &vq, &vk, &vv, &vt, 1, (int32_t)bs, scale);
  CHECK(g_err->claimed && g_err->kind == VGK_ERR_PAGED_SLOT && g_err->b == 4 && g_err->c == 0,
        "ATTENTION_PAGED: block id outside the pool not recorded (kind %d)", g_err->kind);
}

int main() {
  setvbuf(stdout, NULL, _IOLBF, 0);
  velo_error err;
  velo_error_init(&err);
  velo_backend_options o = {sizeof o, 0, 2};
  if (g_be->open(&o, &g_cpu, &err) != VELO_OK) {
    printf("cpu open: %s\n", err.message);
    return 2;
  }
  g_err = (vgk_error *)calloc(1, sizeof *g_err);
  printf("warp width %d\n", VGD_WARP);
  test_rms_norm();
  printf("  %s done (%d failures so far)\n", "test_rms_norm", g_fail);
  test_binary();
  printf("  %s done (%d failures so far)\n", "test_binary", g_fail);
  test_cpy();
  printf("  %s done (%d failures so far)\n", "test_cpy", g_fail);
  test_rope();
  printf("  %s done (%d failures so far)\n", "test_rope", g_fail);
  test_get_set_rows();
  printf("  %s done (%d failures so far)\n", "test_get_set_rows", g_fail);
  test_attention(64, VELO_DTYPE_F32, 16);
  test_attention(200, VELO_DTYPE_F16, 7);
  test_mul_mat_strided();
  printf("  %s done (%d failures so far)\n", "test_mul_mat_strided", g_fail);
  test_mul_mat(VELO_DTYPE_Q4_0, 288, 70);
  test_mul_mat(VELO_DTYPE_Q8_0, 32, 5);
  test_mul_mat(VELO_DTYPE_Q4_K, 256, 70);
  test_mul_mat(VELO_DTYPE_Q5_K, 256, 21);
  test_mul_mat(VELO_DTYPE_Q6_K, 256, 21);
  test_mul_mat(VELO_DTYPE_F16, 100, 21);
  test_mul_mat(VELO_DTYPE_F32, 100, 21);
  test_mul_mat(VELO_DTYPE_BF16, 96, 21);
  free(g_err);
  g_be->close(g_cpu);
  printf("%d of %d checks failed\n", g_fail, g_checks);
  return g_fail ? 1 : 0;
}
