/*
 * gpu_kernels.cu - the kernels of the GPU backends, one source for CUDA
 * (nvcc) and HIP (hipcc, through gpu_device.h), and their C launchers
 * (gpu_kernels.h).  Op semantics are velo/backend.h's.
 *
 * Arithmetic.  The build turns off floating-point contraction (nvcc
 * -fmad=false, hipcc -ffp-contract=off): a*b+c is two roundings unless the
 * code says fmaf, as in the CPU backend.  RMS_NORM sums squares in double
 * and computes scale = 1/sqrtf(mean + eps) (IEEE division and square root);
 * ROPE builds each angle by the CPU backend's recurrence (theta_base *=
 * theta_scale); SWIGLU is x/(1+expf(-x))*y; fp16 conversions are the CPU
 * backend's bit-exact ones (gpu_blocks.h).  Device expf/cosf/sinf are
 * within 2 ulp of the CPU's, so results agree with the CPU backend to
 * rounding, not to the bit.
 *
 * MUL_MAT.  Activations are first converted per column, as llama.cpp
 * does: to Q8_0 blocks for Q8_0/Q4_0 weights, Q8_K super-blocks for
 * Q4_K/Q5_K/Q6_K, fp16-rounded floats for F16; F32 and BF16 weights take
 * the F32 column as is (llama.cpp rounds activations to bf16 for BF16
 * weights; this backend does not: documented in docs/gpu.md).  Then every
 * output follows the canonical order of gpu_blocks.h.  Two kernels compute
 * outputs: k_mmv (M <= 8 columns: one warp per weight row, lanes split the
 * blocks, exact integer block sums are reduced across lanes and folded in
 * block order) and k_mmq (M > 8: 256-thread tiles of 16 or 64 rows x 64
 * columns through shared memory, each thread folding its outputs block by
 * block).  Both perform the same float operations per output, so a
 * column's result never depends on M or on the other columns: the backend
 * is batch invariant (velo_device_info.batch_invariant).  Float weights use
 * k_mmv_f for every M.
 *
 * ATTENTION / ATTENTION_PAGED: one 128-thread block per (query head,
 * token), walking the token's positions in chunks of 128 with an online
 * softmax (running max and sum, fixed reduction trees), so each (token,
 * head) is computed alone, in an order fixed by its own position count.
 *
 * Data errors (ids, positions, block ids) are recorded in the vgk_error
 * record and the offending row or position skipped (gpu_kernels.h).
 */
#include <math.h>
#include <stdint.h>

#include "gpu_device.h"
#include "gpu_blocks.h"
#include "gpu_kernels.h"

enum {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14,
  T_I32 = 26, T_BF16 = 30
};

#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/* ------------------------------------------------------------------ */
/* Tensor helpers                                                      */
/* ------------------------------------------------------------------ */

/* Rows (ne1*ne2*ne3) and elements of a tensor. */
static __host__ __device__ __forceinline__ int64_t nrows(const vgk_tensor &t) {
  return t.ne[1] * t.ne[2] * t.ne[3];
}

/* Address of flat row r: r = i1 + ne1*(i2 + ne2*i3). */
static __device__ __forceinline__ char *row_ptr(const vgk_tensor &t, int64_t r) {
  int64_t i1 = r % t.ne[1];
  r /= t.ne[1];
  int64_t i2 = r % t.ne[2], i3 = r / t.ne[2];
  return t.data + i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3];
}

/* Flat element i of an I32 tensor. */
static __device__ __forceinline__ int32_t i32_at(const vgk_tensor &t, int64_t i) {
  return *(const int32_t *)(row_ptr(t, i / t.ne[0]) + (i % t.ne[0]) * t.nb[0]);
}

/* Records the first data error of the compute (see gpu_kernels.h). */
static __device__ void fail(vgk_error *e, int node, int kind, int a, int b, int c, int d) {
  if (atomicCAS(&e->claimed, 0, 1) == 0) {
    e->node = node;
    e->kind = kind;
    e->a = a;
    e->b = b;
    e->c = c;
    e->d = d;
  }
}

/* Block-wide reductions over blockDim.x threads (a multiple of VGD_WARP,
 * at most 1024), in a fixed tree: lanes by butterfly, then warps in order.
 * Every thread gets the result.  red: shared scratch of 32 slots. */
static __device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = VGD_WARP / 2; o > 0; o >>= 1) v += VGD_SHFL_XOR(v, o);
  return v;
}
static __device__ __forceinline__ float warp_sum_f(float v) {
  for (int o = VGD_WARP / 2; o > 0; o >>= 1) v += VGD_SHFL_XOR(v, o);
  return v;
}
static __device__ __forceinline__ float warp_max_f(float v) {
  for (int o = VGD_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, VGD_SHFL_XOR(v, o));
  return v;
}

static __device__ double block_sum_d(double v, double *red) {
  const int lane = threadIdx.x % VGD_WARP, w = threadIdx.x / VGD_WARP, nw = blockDim.x / VGD_WARP;
  v = warp_sum_d(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  double s = 0.0;
  for (int i = 0; i < nw; i++) s += red[i];
  return s;
}

static __device__ float block_sum_f(float v, float *red) {
  const int lane = threadIdx.x % VGD_WARP, w = threadIdx.x / VGD_WARP, nw = blockDim.x / VGD_WARP;
  v = warp_sum_f(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float s = 0.0f;
  for (int i = 0; i < nw; i++) s += red[i];
  return s;
}

static __device__ float block_max_f(float v, float *red) {
  const int lane = threadIdx.x % VGD_WARP, w = threadIdx.x / VGD_WARP, nw = blockDim.x / VGD_WARP;
  v = warp_max_f(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float s = -INFINITY;
  for (int i = 0; i < nw; i++) s = fmaxf(s, red[i]);
  return s;
}

/* Blocks for a grid-stride loop over n items with 256 threads. */
static unsigned grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

static int launch_status(void) { return (int)vgd_get_last_error(); }

/* ------------------------------------------------------------------ */
/* Row-wise and element-wise ops                                       */
/* ------------------------------------------------------------------ */

__global__ void k_get_rows(vgk_tensor dst, vgk_tensor src, vgk_tensor ids, vgk_error *err,
                           int node) {
  const int64_t t = blockIdx.x;
  const int32_t id = i32_at(ids, t);
  if (id < 0 || id >= src.ne[1]) {
    if (threadIdx.x == 0) fail(err, node, VGK_ERR_GET_ROWS_ID, id, (int)t, (int)src.ne[1], 0);
    return;
  }
  const uint8_t *row = (const uint8_t *)(src.data + (int64_t)id * src.nb[1]);
  float *y = (float *)row_ptr(dst, t);
  if (src.dtype == T_F32) {
    for (int64_t i = threadIdx.x; i < src.ne[0]; i += blockDim.x) y[i] = ((const float *)row)[i];
  } else {
    for (int64_t i = threadIdx.x; i < src.ne[0]; i += blockDim.x) y[i] = vgb_dequant(src.dtype, row, i);
  }
}

/* RMS_NORM of one row per block; with HAS_W, times w (broadcast as MUL). */
template <bool HAS_W>
__global__ void __launch_bounds__(256) k_rms_norm(vgk_tensor dst, vgk_tensor src, float eps,
                                                 vgk_tensor w) {
  __shared__ double red[32];
  const int64_t r = blockIdx.x, n = src.ne[0];
  const float *x = (const float *)row_ptr(src, r);
  float *y = (float *)row_ptr(dst, r);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    s += (double)(v * v);
  }
  s = block_sum_d(s, red);
  const float mean = (float)(s / (double)n);
  const float scale = 1.0f / sqrtf(mean + eps);
  if (!HAS_W) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i] * scale;
    return;
  }
  int64_t i1 = r % src.ne[1], i2 = (r / src.ne[1]) % src.ne[2], i3 = r / (src.ne[1] * src.ne[2]);
  const float *wr = (const float *)(w.data + (i1 % w.ne[1]) * w.nb[1] + (i2 % w.ne[2]) * w.nb[2] +
                                    (i3 % w.ne[3]) * w.nb[3]);
  const bool vec = w.ne[0] == n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i] * scale;
    y[i] = v * (vec ? wr[i] : wr[0]);
  }
}

/* MUL / ADD (op 1 / 0) and SWIGLU (op 2) over dst's elements. */
__global__ void k_binary(int op, vgk_tensor dst, vgk_tensor a, vgk_tensor b) {
  const int64_t n0 = dst.ne[0], total = n0 * nrows(dst);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / n0, c = i % n0;
    const float x = ((const float *)row_ptr(a, r))[c];
    float *y = (float *)row_ptr(dst, r) + c;
    if (op == 2) {
      const float v = ((const float *)row_ptr(b, r))[c];
      *y = (x / (1.0f + expf(-x))) * v;
      continue;
    }
    int64_t i1 = r % a.ne[1], i2 = (r / a.ne[1]) % a.ne[2], i3 = r / (a.ne[1] * a.ne[2]);
    const float *br = (const float *)(b.data + (i1 % b.ne[1]) * b.nb[1] + (i2 % b.ne[2]) * b.nb[2] +
                                      (i3 % b.ne[3]) * b.nb[3]);
    const float v = br[b.ne[0] == n0 ? c : 0];
    *y = op == 1 ? x * v : x + v;
  }
}

/* CPY: flat row r of src to flat row r of dst, F32 -> F32 or F16. */
__global__ void k_cpy(vgk_tensor dst, vgk_tensor src) {
  const int64_t n0 = src.ne[0], total = n0 * nrows(src);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / n0, c = i % n0;
    const float x = ((const float *)row_ptr(src, r))[c];
    char *y = row_ptr(dst, r);
    if (dst.dtype == T_F16)
      ((uint16_t *)y)[c] = vgb_f32_to_fp16(x);
    else
      ((float *)y)[c] = x;
  }
}

/* ROPE: one block per row (head h of token t); see the CPU backend for the
 * angle recurrence this reproduces. */
__global__ void k_rope(vgk_tensor dst, vgk_tensor src, vgk_tensor pos, int n_rot, int neox,
                       float freq_scale, float theta_scale) {
  const int64_t r = blockIdx.x, t = r / src.ne[1];
  const int half = n_rot / 2;
  const float *x = (const float *)row_ptr(src, r);
  float *y = (float *)row_ptr(dst, r);
  const float p = (float)i32_at(pos, t);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float theta_base = p;
    for (int k = 0; k < i; k++) theta_base *= theta_scale;
    const float theta = freq_scale * theta_base;
    const float cs = cosf(theta), sn = sinf(theta);
    const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
    const float x0 = x[i0], x1 = x[i1];
    y[i0] = x0 * cs - x1 * sn;
    y[i1] = x0 * sn + x1 * cs;
  }
  if (y != x)
    for (int64_t i = n_rot + threadIdx.x; i < src.ne[0]; i += blockDim.x) y[i] = x[i];
}

/* SET_ROWS: one block per source row. */
__global__ void k_set_rows(vgk_tensor dst, vgk_tensor src, vgk_tensor ids, vgk_error *err,
                           int node) {
  const int64_t t = blockIdx.x;
  const int32_t id = i32_at(ids, t);
  if (id < 0 || id >= dst.ne[1]) {
    if (threadIdx.x == 0) fail(err, node, VGK_ERR_SET_ROWS_ID, id, (int)t, (int)dst.ne[1], 0);
    return;
  }
  const float *x = (const float *)row_ptr(src, t);
  char *y = dst.data + (int64_t)id * dst.nb[1];
  for (int64_t i = threadIdx.x; i < src.ne[0]; i += blockDim.x) {
    if (dst.dtype == T_F16)
      ((uint16_t *)y)[i] = vgb_f32_to_fp16(x[i]);
    else
      ((float *)y)[i] = x[i];
  }
}

/* ------------------------------------------------------------------ */
/* Attention                                                           */
/* ------------------------------------------------------------------ */

#define ATT_T 128
#define ATT_MAX_D 256

/* K or V element d of a cache row. */
static __device__ __forceinline__ float kv_at(const char *row, int f16, int d) {
  return f16 ? vgb_fp16_to_f32(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

__global__ void __launch_bounds__(ATT_T)
    k_attention(vgk_tensor dst, vgk_tensor q, vgk_tensor K, vgk_tensor V, vgk_tensor tab,
                int paged, int bs, float scale, vgk_error *err, int node) {
  __shared__ float qs[ATT_MAX_D];
  __shared__ float ps[ATT_T];
  __shared__ int64_t slots[ATT_T];
  __shared__ float red[32];
  const int h = blockIdx.x, tid = threadIdx.x;
  const int64_t t = blockIdx.y;
  const int D = (int)q.ne[0];
  const int64_t H = q.ne[1], HKV = K.ne[1], n_slots = K.ne[2];
  const int64_t g = h / (H / HKV);
  const int kf16 = K.dtype == T_F16, vf16 = V.dtype == T_F16;
  const float *qr = (const float *)(q.data + h * q.nb[1] + t * q.nb[2]);
  float *out = (float *)(dst.data + h * dst.nb[1] + t * dst.nb[2]);
  for (int d = tid; d < D; d += ATT_T) qs[d] = qr[d];

  const int32_t *col = NULL;
  int32_t pos;
  bool ok = true;
  if (paged) {
    col = (const int32_t *)row_ptr(tab, t);
    pos = col[0];
    const int64_t n_blk = (int64_t)(pos < 0 ? 0 : pos) / bs + 1;
    if (pos < 0) {
      if (tid == 0 && h == 0) fail(err, node, VGK_ERR_PAGED_NEG, pos, (int)t, 0, 0);
      ok = false;
    } else if (n_blk >= tab.ne[0]) {
      if (tid == 0 && h == 0)
        fail(err, node, VGK_ERR_PAGED_WIDTH, pos, (int)t, (int)n_blk, (int)(tab.ne[0] - 1));
      ok = false;
    }
  } else {
    pos = i32_at(tab, t);
    if (pos < 0 || pos >= n_slots) {
      if (tid == 0 && h == 0) fail(err, node, VGK_ERR_ATTN_POS, pos, (int)t, (int)n_slots, 0);
      ok = false;
    }
  }
  if (!ok) {
    for (int d = tid; d < D; d += ATT_T) out[d] = 0.0f;
    return;
  }
  const int64_t n_kv = (int64_t)pos + 1;
  const char *kbase = K.data + g * K.nb[1], *vbase = V.data + g * V.nb[1];
  /* float4 loads of K rows when they are 16-byte aligned */
  const bool k4ok = !kf16 && D % 4 == 0 && K.nb[2] % 16 == 0 && ((uintptr_t)kbase & 15) == 0;
  float m = -INFINITY, l = 0.0f, o0 = 0.0f, o1 = 0.0f;
  __syncthreads(); /* qs */
  for (int64_t c0 = 0; c0 < n_kv; c0 += ATT_T) {
    const int64_t j = c0 + tid;
    float s = -INFINITY;
    int64_t slot = -1;
    if (j < n_kv) {
      if (paged) {
        const int64_t bi = j / bs;
        const int32_t blk = col[1 + bi];
        slot = (int64_t)blk * bs + j % bs;
        if (blk < 0 || slot >= n_slots) {
          if (h == 0) fail(err, node, VGK_ERR_PAGED_SLOT, blk, (int)t, (int)bi, (int)n_slots);
          slot = -1;
        }
      } else {
        slot = j;
      }
      if (slot >= 0) {
        const char *kr = kbase + slot * K.nb[2];
        float dot = 0.0f;
        if (k4ok) {
          const float4 *k4 = (const float4 *)kr;
          for (int d = 0; d < D / 4; d++) {
            const float4 kv = k4[d];
            dot += kv.x * qs[4 * d];
            dot += kv.y * qs[4 * d + 1];
            dot += kv.z * qs[4 * d + 2];
            dot += kv.w * qs[4 * d + 3];
          }
        } else {
          for (int d = 0; d < D; d++) dot += kv_at(kr, kf16, d) * qs[d];
        }
        s = dot * scale;
      }
    }
    slots[tid] = slot;
    const float cmax = block_max_f(s, red);
    const float m_new = fmaxf(m, cmax);
    const float p = slot >= 0 && m_new != -INFINITY ? expf(s - m_new) : 0.0f;
    ps[tid] = p;
    const float csum = block_sum_f(p, red);
    const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    l = l * alpha + csum;
    __syncthreads(); /* ps, slots */
    const int cnt = (int)(n_kv - c0 < ATT_T ? n_kv - c0 : ATT_T);
    if (tid < D) {
      o0 = o0 * alpha;
      for (int jj = 0; jj < cnt; jj++)
        if (slots[jj] >= 0) o0 += ps[jj] * kv_at(vbase + slots[jj] * V.nb[2], vf16, tid);
    }
    if (tid + ATT_T < D) {
      o1 = o1 * alpha;
      for (int jj = 0; jj < cnt; jj++)
        if (slots[jj] >= 0) o1 += ps[jj] * kv_at(vbase + slots[jj] * V.nb[2], vf16, tid + ATT_T);
    }
    m = m_new;
    __syncthreads(); /* before the next chunk overwrites ps, slots */
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  if (tid < D) out[tid] = o0 * inv;
  if (tid + ATT_T < D) out[tid + ATT_T] = o1 * inv;
}

/* ------------------------------------------------------------------ */
/* MUL_MAT: activation conversion                                      */
/* ------------------------------------------------------------------ */

/* The scratch layout for K x M activations of weight type wt. */
struct act_layout {
  size_t qs, d, bs, total; /* byte offsets of the parts, total size */
};

static __host__ __device__ act_layout act_layout_for(int wt, int64_t K, int64_t M) {
  act_layout L = {0, 0, 0, 0};
  if (wt == T_Q8_0 || wt == T_Q4_0) {
    L.d = ALIGN_UP((size_t)(K * M), 256);
    L.total = L.d + ALIGN_UP((size_t)(K / 32 * M) * 4, 256);
  } else if (wt == T_Q4_K || wt == T_Q5_K || wt == T_Q6_K) {
    L.d = ALIGN_UP((size_t)(K * M), 256);
    L.bs = L.d + ALIGN_UP((size_t)(K / 256 * M) * 4, 256);
    L.total = L.bs + ALIGN_UP((size_t)(K / 16 * M) * 2, 256);
  } else {
    L.total = ALIGN_UP((size_t)(K * M) * 4, 256);
  }
  return L;
}

/* Q8_0 blocks: 32 consecutive threads make one block (see gpu_blocks.h). */
__global__ void __launch_bounds__(256) k_quant_q8_0(vgk_tensor x, int64_t K, int8_t *qs, float *dd) {
  const int64_t m = blockIdx.y, k = (int64_t)blockIdx.x * 256 + threadIdx.x;
  const float *xr = (const float *)row_ptr(x, m);
  const float v = k < K ? xr[k] : 0.0f;
  float amax = fabsf(v);
  /* over the 32 lanes of this Q8_0 block (a data size, not the wavefront:
   * on 64-wide wavefronts the two halves are two blocks) */
  for (int o = VGB_QK8_0 / 2; o > 0; o >>= 1) amax = fmaxf(amax, VGD_SHFL_XOR(amax, o));
  float id;
  const uint16_t d16 = vgb_q8_0_scale(amax, &id);
  if (k < K) {
    qs[m * K + k] = vgb_q8_from_rounded(vgb_rint(v * id));
    if (k % 32 == 0) dd[m * (K / 32) + k / 32] = vgb_fp16_to_f32(d16);
  }
}

/* Q8_K super-blocks: one 256-thread block per super-block. */
__global__ void __launch_bounds__(256) k_quant_q8_k(vgk_tensor x, int64_t K, int8_t *qs, float *dd,
                                                    int16_t *bsum) {
  __shared__ float s_ax[256 / 32 * 2];
  __shared__ int s_ix[256 / 32 * 2];
  __shared__ float s_v[256 / 32 * 2];
  __shared__ float s_max;
  const int64_t m = blockIdx.y, sb = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % VGD_WARP, w = tid / VGD_WARP;
  const float *xr = (const float *)row_ptr(x, m) + sb * 256;
  const float v = xr[tid];
  /* the element of largest |x|, the lowest index on ties */
  float ax = fabsf(v), val = v;
  int ix = tid;
  for (int o = VGD_WARP / 2; o > 0; o >>= 1) {
    const float ax2 = VGD_SHFL_XOR(ax, o), v2 = VGD_SHFL_XOR(val, o);
    const int ix2 = VGD_SHFL_XOR(ix, o);
    if (ax2 > ax || (ax2 == ax && ix2 < ix)) {
      ax = ax2;
      val = v2;
      ix = ix2;
    }
  }
  if (lane == 0) {
    s_ax[w] = ax;
    s_ix[w] = ix;
    s_v[w] = val;
  }
  __syncthreads();
  if (tid == 0) {
    float bax = s_ax[0], bv = s_v[0];
    int bix = s_ix[0];
    for (int i = 1; i < 256 / VGD_WARP; i++)
      if (s_ax[i] > bax || (s_ax[i] == bax && s_ix[i] < bix)) {
        bax = s_ax[i];
        bv = s_v[i];
        bix = s_ix[i];
      }
    s_max = bax != 0.0f ? bv : 0.0f;
  }
  __syncthreads();
  const float mx = s_max;
  const float iscale = vgb_q8_k_iscale(mx);
  const int8_t q = mx != 0.0f ? vgb_q8_k_quant(iscale, v) : (int8_t)0;
  qs[m * K + sb * 256 + tid] = q;
  int s = q;
  for (int o = 8; o > 0; o >>= 1) s += VGD_SHFL_XOR(s, o); /* the 16 quants of one bsum */
  if (tid % 16 == 0) bsum[m * (K / 16) + sb * 16 + tid / 16] = (int16_t)s;
  if (tid == 0) dd[m * (K / 256) + sb] = mx != 0.0f ? 1.0f / iscale : 0.0f;
}

/* F32 columns (rounded through fp16 when f16 is set), contiguous. */
__global__ void k_act_f32(vgk_tensor x, int64_t K, int f16, float *out) {
  const int64_t total = K * nrows(x);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / K, k = i % K;
    const float v = ((const float *)row_ptr(x, m))[k];
    out[i] = f16 ? vgb_fp16_to_f32(vgb_f32_to_fp16(v)) : v;
  }
}

/* ------------------------------------------------------------------ */
/* MUL_MAT: quantized weights, M <= 8 (k_mmv_q)                        */
/* ------------------------------------------------------------------ */

template <int TYPE>
struct qtype {
  static constexpr int QK = (TYPE == T_Q8_0 || TYPE == T_Q4_0) ? 32 : 256;
  static constexpr int BYTES = TYPE == T_Q8_0 ? 34 : TYPE == T_Q4_0 ? 18 : TYPE == T_Q4_K ? 144
                               : TYPE == T_Q5_K ? 176 : 210;
  static constexpr bool HAS_MIN = TYPE == T_Q4_K || TYPE == T_Q5_K;
};

/* Stores one output: dst[n, m] (dst row m, element n). */
static __device__ __forceinline__ void store_out(const vgk_tensor &dst, int64_t m, int64_t n, float v) {
  ((float *)row_ptr(dst, m))[n] = v;
}

#define MMV_ROWS 4 /* weight rows per 128-thread block */

template <int TYPE, int NC>
__global__ void __launch_bounds__(128)
    k_mmv_q(const char *w, int64_t w_nb1, int N, int K, const int8_t *xq, const float *xd,
            const int16_t *xbs, int M, vgk_tensor dst) {
  constexpr int QK = qtype<TYPE>::QK, BYTES = qtype<TYPE>::BYTES, LPB = QK / 8;
  constexpr int BPI = VGD_WARP / LPB; /* blocks per group: each lane takes part of one */
  constexpr int U = NC <= 2 ? 4 : NC <= 4 ? 2 : 1; /* groups in flight per iteration */
  const int lane = threadIdx.x % VGD_WARP, warp = threadIdx.x / VGD_WARP;
  const int nwarps = blockDim.x / VGD_WARP;
  const int nb = K / QK, sub = lane / LPB, part = lane % LPB;
  const int r_end = min(N, (int)blockIdx.x * MMV_ROWS + MMV_ROWS);
  for (int r = blockIdx.x * MMV_ROWS + warp; r < r_end; r += nwarps) {
    const uint8_t *wrow = (const uint8_t *)(w + (int64_t)r * w_nb1);
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    /* U groups of BPI blocks per iteration: every lane issues the loads of
     * U blocks before any is used (bytes in flight), then the blocks are
     * folded strictly in block order */
    for (int b0 = 0; b0 < nb; b0 += BPI * U) {
      int isum[U][NC], msum[U][NC];
      float sc[U][NC], scm[U][NC];
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int b = b0 + u * BPI + sub;
#pragma unroll
        for (int c = 0; c < NC; c++) {
          isum[u][c] = 0;
          msum[u][c] = 0;
          sc[u][c] = 0.0f;
          scm[u][c] = 0.0f;
          if (b < nb && c < M)
            vgb_mmv_part(TYPE, wrow + (int64_t)b * BYTES, part, xq + (int64_t)c * K + (int64_t)b * QK,
                         xd[(int64_t)c * nb + b], xbs ? xbs + (int64_t)c * (K / 16) + b * 16 : NULL,
                         &isum[u][c], &msum[u][c], &sc[u][c], &scm[u][c]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; u++)
#pragma unroll
        for (int c = 0; c < NC; c++)
          for (int o = LPB / 2; o > 0; o >>= 1) {
            isum[u][c] += VGD_SHFL_XOR(isum[u][c], o);
            if constexpr (qtype<TYPE>::HAS_MIN) msum[u][c] += VGD_SHFL_XOR(msum[u][c], o);
          }
#pragma unroll
      for (int u = 0; u < U; u++)
        for (int s = 0; s < BPI; s++) {
          if (b0 + u * BPI + s >= nb) continue; /* uniform across the warp */
#pragma unroll
          for (int c = 0; c < NC; c++) {
            const int is = VGD_SHFL(isum[u][c], s * LPB);
            const float f = VGD_SHFL(sc[u][c], s * LPB);
            acc[c] = fmaf(f, (float)is, acc[c]);
            if constexpr (qtype<TYPE>::HAS_MIN) {
              const int ms = VGD_SHFL(msum[u][c], s * LPB);
              const float fm = VGD_SHFL(scm[u][c], s * LPB);
              acc[c] = fmaf(-fm, (float)ms, acc[c]);
            }
          }
        }
    }
    if (lane == 0)
#pragma unroll
      for (int c = 0; c < NC; c++)
        if (c < M) store_out(dst, c, r, acc[c]);
  }
}

/* ------------------------------------------------------------------ */
/* MUL_MAT: quantized weights, M > 8 (k_mmq)                           */
/* ------------------------------------------------------------------ */

#define MMQ_KS 256 /* elements per shared-memory stage */
#define MMQ_LD (MMQ_KS + 16)
#define MMQ_BM 64

template <int TYPE, int RI>
__global__ void __launch_bounds__(256)
    k_mmq(const char *w, int64_t w_nb1, int N, int K, const int8_t *xq, const float *xd,
          const int16_t *xbs, int M, vgk_tensor dst) {
  constexpr int QK = qtype<TYPE>::QK, BN = 16 * RI;
  __shared__ __align__(16) int8_t Ws[BN][MMQ_LD];
  __shared__ __align__(16) int8_t Xs[MMQ_BM][MMQ_LD];
  __shared__ float Wd[BN][8];
  __shared__ int8_t Wm[BN][16];
  __shared__ int8_t Wmin[BN][8];
  __shared__ float Xd[MMQ_BM][8];
  __shared__ int Xbs[MMQ_BM][8];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * MMQ_BM;
  float acc[RI][4];
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += MMQ_KS) {
    const int kn = min(MMQ_KS, K - k0), nunit = kn / 32;
    /* weights: (row, 32-unit) pairs */
    for (int idx = tid; idx < BN * 8; idx += 256) {
      const int rr = idx / 8, u = idx % 8, n = n0 + rr;
      if (u >= nunit) continue;
      if (n < N) {
        const uint8_t *wrow = (const uint8_t *)(w + (int64_t)n * w_nb1);
        if (QK == 32)
          vgb_mmq_unit(TYPE, wrow + (int64_t)(k0 / 32 + u) * qtype<TYPE>::BYTES, 0, &Ws[rr][32 * u],
                       &Wd[rr][u], Wm[rr], Wmin[rr]);
        else
          vgb_mmq_unit(TYPE, wrow + (int64_t)(k0 / 256) * qtype<TYPE>::BYTES, u, &Ws[rr][32 * u], Wd[rr],
                       Wm[rr], Wmin[rr]);
      } else {
        for (int i = 0; i < 32; i++) Ws[rr][32 * u + i] = 0;
        Wd[rr][u] = 0.0f;
        Wm[rr][2 * u] = Wm[rr][2 * u + 1] = 0;
        Wmin[rr][u] = 0;
        if (u == 0) Wd[rr][1] = 0.0f;
      }
    }
    /* activations: 16-byte chunks */
    for (int idx = tid; idx < MMQ_BM * (MMQ_KS / 16); idx += 256) {
      const int cc = idx / (MMQ_KS / 16), ch = idx % (MMQ_KS / 16), m = m0 + cc;
      if (ch * 16 >= kn) continue;
      int4 v = make_int4(0, 0, 0, 0);
      if (m < M) v = *(const int4 *)(xq + (int64_t)m * K + k0 + ch * 16);
      *(int4 *)&Xs[cc][ch * 16] = v;
    }
    for (int idx = tid; idx < MMQ_BM * 8; idx += 256) {
      const int cc = idx / 8, u = idx % 8, m = m0 + cc;
      if (QK == 32) {
        if (u < nunit) Xd[cc][u] = m < M ? xd[(int64_t)m * (K / 32) + k0 / 32 + u] : 0.0f;
      } else {
        const int16_t *bs = xbs + (int64_t)m * (K / 16) + k0 / 16;
        if (u == 0) Xd[cc][0] = m < M ? xd[(int64_t)m * (K / 256) + k0 / 256] : 0.0f;
        Xbs[cc][u] = m < M ? (int)bs[2 * u] + (int)bs[2 * u + 1] : 0;
      }
    }
    __syncthreads();
    if constexpr (QK == 32) {
      for (int u = 0; u < nunit; u++) {
        int4 wa[RI], wb[RI], xa[4], xb[4];
#pragma unroll
        for (int i = 0; i < RI; i++) {
          wa[i] = *(const int4 *)&Ws[ty + 16 * i][32 * u];
          wb[i] = *(const int4 *)&Ws[ty + 16 * i][32 * u + 16];
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
          xa[j] = *(const int4 *)&Xs[tx + 16 * j][32 * u];
          xb[j] = *(const int4 *)&Xs[tx + 16 * j][32 * u + 16];
        }
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) {
            int is = vgb_dp4a(wa[i].x, xa[j].x, 0);
            is = vgb_dp4a(wa[i].y, xa[j].y, is);
            is = vgb_dp4a(wa[i].z, xa[j].z, is);
            is = vgb_dp4a(wa[i].w, xa[j].w, is);
            is = vgb_dp4a(wb[i].x, xb[j].x, is);
            is = vgb_dp4a(wb[i].y, xb[j].y, is);
            is = vgb_dp4a(wb[i].z, xb[j].z, is);
            is = vgb_dp4a(wb[i].w, xb[j].w, is);
            acc[i][j] = fmaf(Wd[ty + 16 * i][u] * Xd[tx + 16 * j][u], (float)is, acc[i][j]);
          }
      }
    } else {
      int isum[RI][4];
#pragma unroll
      for (int i = 0; i < RI; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) isum[i][j] = 0;
      for (int g = 0; g < 16; g++) {
        int4 wv[RI], xv[4];
#pragma unroll
        for (int i = 0; i < RI; i++) wv[i] = *(const int4 *)&Ws[ty + 16 * i][16 * g];
#pragma unroll
        for (int j = 0; j < 4; j++) xv[j] = *(const int4 *)&Xs[tx + 16 * j][16 * g];
#pragma unroll
        for (int i = 0; i < RI; i++) {
          const int mult = Wm[ty + 16 * i][g];
#pragma unroll
          for (int j = 0; j < 4; j++) {
            int S = vgb_dp4a(wv[i].x, xv[j].x, 0);
            S = vgb_dp4a(wv[i].y, xv[j].y, S);
            S = vgb_dp4a(wv[i].z, xv[j].z, S);
            S = vgb_dp4a(wv[i].w, xv[j].w, S);
            isum[i][j] += mult * S;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < RI; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const int row = ty + 16 * i, col = tx + 16 * j;
          acc[i][j] = fmaf(Wd[row][0] * Xd[col][0], (float)isum[i][j], acc[i][j]);
          if constexpr (qtype<TYPE>::HAS_MIN) {
            int ms = 0;
            for (int s = 0; s < 8; s++) ms += (int)Wmin[row][s] * Xbs[col][s];
            acc[i][j] = fmaf(-(Wd[row][1] * Xd[col][0]), (float)ms, acc[i][j]);
          }
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int n = n0 + ty + 16 * i, m = m0 + tx + 16 * j;
      if (n < N && m < M) store_out(dst, m, n, acc[i][j]);
    }
}

/* ------------------------------------------------------------------ */
/* MUL_MAT: float weights (F32, F16, BF16), any M (k_mmv_f)            */
/* ------------------------------------------------------------------ */

template <int TYPE, int NC>
__global__ void __launch_bounds__(128)
    k_mmv_f(const char *w, int64_t w_nb1, int N, int K, const float *xf, int M, vgk_tensor dst) {
  constexpr int BPI = VGD_WARP / 32;
  const int lane = threadIdx.x % VGD_WARP, warp = threadIdx.x / VGD_WARP;
  const int nwarps = blockDim.x / VGD_WARP;
  const int nb = (K + 31) / 32, sub = lane / 32, e = lane % 32;
  const int m0 = blockIdx.y * NC;
  const int r_end = min(N, (int)blockIdx.x * MMV_ROWS + MMV_ROWS);
  for (int r = blockIdx.x * MMV_ROWS + warp; r < r_end; r += nwarps) {
    const char *wrow = w + (int64_t)r * w_nb1;
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    for (int b0 = 0; b0 < nb; b0 += BPI) {
      const int k = (b0 + sub) * 32 + e;
      float wv = 0.0f;
      if (b0 + sub < nb && k < K) {
        if (TYPE == T_F32)
          wv = ((const float *)wrow)[k];
        else if (TYPE == T_F16)
          wv = vgb_fp16_to_f32(((const uint16_t *)wrow)[k]);
        else
          wv = vgb_bf16_to_f32(((const uint16_t *)wrow)[k]);
      }
      float p[NC];
#pragma unroll
      for (int c = 0; c < NC; c++) {
        const bool in = m0 + c < M && b0 + sub < nb && k < K;
        p[c] = in ? wv * xf[(int64_t)(m0 + c) * K + k] : 0.0f;
        /* the canonical tree over the 32 products of one block (gpu_blocks.h) */
        for (int o = 16; o > 0; o >>= 1) p[c] += VGD_SHFL_XOR(p[c], o);
      }
      for (int s = 0; s < BPI && b0 + s < nb; s++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[c] += VGD_SHFL(p[c], 32 * s);
    }
    if (lane == 0)
#pragma unroll
      for (int c = 0; c < NC; c++)
        if (m0 + c < M) store_out(dst, m0 + c, r, acc[c]);
  }
}

/* ------------------------------------------------------------------ */
/* Launchers                                                           */
/* ------------------------------------------------------------------ */

extern "C" int vgk_weight_type_ok(int32_t dtype) {
  switch (dtype) {
    case T_F32: case T_F16: case T_BF16: case T_Q8_0: case T_Q4_0: case T_Q4_K: case T_Q5_K:
    case T_Q6_K:
      return 1;
    default:
      return 0;
  }
}

extern "C" size_t vgk_mul_mat_scratch(int32_t dtype, int64_t K, int64_t M) {
  return act_layout_for(dtype, K, M).total;
}

extern "C" int vgk_get_rows(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                            const vgk_tensor *src, const vgk_tensor *ids) {
  const int64_t n = nrows(*dst);
  if (n == 0) return 0;
  k_get_rows<<<(unsigned)n, 256, 0, (vgd_stream_t)stream>>>(*dst, *src, *ids, err, node);
  return launch_status();
}

extern "C" int vgk_rms_norm(void *stream, const vgk_tensor *dst, const vgk_tensor *src, float eps,
                            const vgk_tensor *w) {
  const int64_t n = nrows(*src);
  if (w)
    k_rms_norm<true><<<(unsigned)n, 256, 0, (vgd_stream_t)stream>>>(*dst, *src, eps, *w);
  else
    k_rms_norm<false><<<(unsigned)n, 256, 0, (vgd_stream_t)stream>>>(*dst, *src, eps, *src);
  return launch_status();
}

extern "C" int vgk_binary(void *stream, int mul, const vgk_tensor *dst, const vgk_tensor *a,
                          const vgk_tensor *b) {
  k_binary<<<grid_for(dst->ne[0] * nrows(*dst)), 256, 0, (vgd_stream_t)stream>>>(mul ? 1 : 0, *dst,
                                                                                 *a, *b);
  return launch_status();
}

extern "C" int vgk_swiglu(void *stream, const vgk_tensor *dst, const vgk_tensor *a,
                          const vgk_tensor *b) {
  k_binary<<<grid_for(dst->ne[0] * nrows(*dst)), 256, 0, (vgd_stream_t)stream>>>(2, *dst, *a, *b);
  return launch_status();
}

extern "C" int vgk_cpy(void *stream, const vgk_tensor *dst, const vgk_tensor *src) {
  k_cpy<<<grid_for(src->ne[0] * nrows(*src)), 256, 0, (vgd_stream_t)stream>>>(*dst, *src);
  return launch_status();
}

extern "C" int vgk_rope(void *stream, const vgk_tensor *dst, const vgk_tensor *src,
                        const vgk_tensor *pos, int32_t n_rot, int32_t neox, float freq_scale,
                        float theta_scale) {
  k_rope<<<(unsigned)nrows(*src), 64, 0, (vgd_stream_t)stream>>>(*dst, *src, *pos, n_rot, neox,
                                                                 freq_scale, theta_scale);
  return launch_status();
}

extern "C" int vgk_set_rows(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                            const vgk_tensor *src, const vgk_tensor *ids) {
  const int64_t n = nrows(*src);
  k_set_rows<<<(unsigned)n, 256, 0, (vgd_stream_t)stream>>>(*dst, *src, *ids, err, node);
  return launch_status();
}

extern "C" int vgk_attention(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                             const vgk_tensor *q, const vgk_tensor *k, const vgk_tensor *v,
                             const vgk_tensor *tab, int32_t paged, int32_t bs, float scale) {
  dim3 grid((unsigned)q->ne[1], (unsigned)q->ne[2]);
  k_attention<<<grid, ATT_T, 0, (vgd_stream_t)stream>>>(*dst, *q, *k, *v, *tab, paged, bs, scale,
                                                        err, node);
  return launch_status();
}

/* Launches the quantized product for TYPE on converted activations. */
template <int TYPE>
static void mul_mat_q(vgd_stream_t st, const act_layout &L, char *scr, const vgk_tensor &dst,
                      const vgk_tensor &w, int N, int K, int M) {
  const int8_t *xq = (const int8_t *)scr;
  const float *xd = (const float *)(scr + L.d);
  const int16_t *xbs = L.bs ? (const int16_t *)(scr + L.bs) : NULL;
  if (M <= 8) {
    const unsigned grid = (unsigned)((N + MMV_ROWS - 1) / MMV_ROWS);
    if (M == 1)
      k_mmv_q<TYPE, 1><<<grid, 128, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
    else if (M == 2)
      k_mmv_q<TYPE, 2><<<grid, 128, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
    else if (M <= 4)
      k_mmv_q<TYPE, 4><<<grid, 128, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
    else
      k_mmv_q<TYPE, 8><<<grid, 128, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
  } else if (M <= 64) {
    dim3 grid((unsigned)((N + 15) / 16), (unsigned)((M + MMQ_BM - 1) / MMQ_BM));
    k_mmq<TYPE, 1><<<grid, 256, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
  } else {
    dim3 grid((unsigned)((N + 63) / 64), (unsigned)((M + MMQ_BM - 1) / MMQ_BM));
    k_mmq<TYPE, 4><<<grid, 256, 0, st>>>(w.data, w.nb[1], N, K, xq, xd, xbs, M, dst);
  }
}

template <int TYPE>
static void mul_mat_f(vgd_stream_t st, const float *xf, const vgk_tensor &dst, const vgk_tensor &w,
                      int N, int K, int M) {
  if (M == 1) {
    k_mmv_f<TYPE, 1><<<(unsigned)((N + MMV_ROWS - 1) / MMV_ROWS), 128, 0, st>>>(w.data, w.nb[1], N, K,
                                                                                xf, M, dst);
  } else {
    dim3 grid((unsigned)((N + MMV_ROWS - 1) / MMV_ROWS), (unsigned)((M + 7) / 8));
    k_mmv_f<TYPE, 8><<<grid, 128, 0, st>>>(w.data, w.nb[1], N, K, xf, M, dst);
  }
}

extern "C" int vgk_act_format(int32_t dtype) {
  switch (dtype) {
    case T_F16: return 1;
    case T_Q8_0: case T_Q4_0: return 2;
    case T_Q4_K: case T_Q5_K: case T_Q6_K: return 3;
    default: return 0;
  }
}

extern "C" int vgk_mul_mat(void *stream, void *scratch, const vgk_tensor *dst, const vgk_tensor *w,
                           const vgk_tensor *x, int convert) {
  vgd_stream_t st = (vgd_stream_t)stream;
  const int K = (int)w->ne[0], N = (int)w->ne[1], M = (int)nrows(*x);
  const act_layout L = act_layout_for(w->dtype, K, M);
  char *scr = (char *)scratch;
  switch (w->dtype) {
    case T_Q8_0:
    case T_Q4_0: {
      dim3 grid((unsigned)((K + 255) / 256), (unsigned)M);
      if (convert) k_quant_q8_0<<<grid, 256, 0, st>>>(*x, K, (int8_t *)scr, (float *)(scr + L.d));
      if (w->dtype == T_Q8_0)
        mul_mat_q<T_Q8_0>(st, L, scr, *dst, *w, N, K, M);
      else
        mul_mat_q<T_Q4_0>(st, L, scr, *dst, *w, N, K, M);
      break;
    }
    case T_Q4_K:
    case T_Q5_K:
    case T_Q6_K: {
      dim3 grid((unsigned)(K / 256), (unsigned)M);
      if (convert)
        k_quant_q8_k<<<grid, 256, 0, st>>>(*x, K, (int8_t *)scr, (float *)(scr + L.d),
                                           (int16_t *)(scr + L.bs));
      if (w->dtype == T_Q4_K)
        mul_mat_q<T_Q4_K>(st, L, scr, *dst, *w, N, K, M);
      else if (w->dtype == T_Q5_K)
        mul_mat_q<T_Q5_K>(st, L, scr, *dst, *w, N, K, M);
      else
        mul_mat_q<T_Q6_K>(st, L, scr, *dst, *w, N, K, M);
      break;
    }
    default: {
      if (convert)
        k_act_f32<<<grid_for((int64_t)K * M), 256, 0, st>>>(*x, K, w->dtype == T_F16, (float *)scr);
      if (w->dtype == T_F32)
        mul_mat_f<T_F32>(st, (const float *)scr, *dst, *w, N, K, M);
      else if (w->dtype == T_F16)
        mul_mat_f<T_F16>(st, (const float *)scr, *dst, *w, N, K, M);
      else
        mul_mat_f<T_BF16>(st, (const float *)scr, *dst, *w, N, K, M);
      break;
    }
  }
  return launch_status();
}
