/*
 * vec_avx2.c - AVX2 + FMA + F16C versions of the CPU vector primitives.
 *
 * Each function gives exactly the bits of its portable reference in vec.c:
 *  - float dots keep 8 lanes (element k in lane k % 8), multiply then add
 *    (no FMA), and reduce the lanes with velo_lanes_sum8;
 *  - the integer block matrix kernel computes the exact int32 lane sums of
 *    each block with maddubs/madd, and accumulates them with FMA into the
 *    16 lanes the definition in cpu_kernels.h assigns (two ymm registers
 *    per output: lanes 0..7 and 8..15), then reduces them in its order;
 *  - quantization uses the same scalar d and id and rounds with
 *    _mm256_round_ps(nearest), which is nearbyintf under the default mode.
 * The functions are compiled for AVX2 through target attributes, so the rest
 * of the library stays baseline x86-64; they are reached only through the
 * table, which is handed out only after a run-time CPU check (CPUID).  The
 * AVX-512 table (vec_avx512.c) reuses the float and quantization entries.
 */
#include "vec_avx2.h"
#include "act_simd.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

#define VELO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define VELO_INLINE inline __attribute__((always_inline))

/* Bytes ahead of the group being read that each weight row stream of the
 * integer block kernel is prefetched (as in vec_avx512.c). */
#define PREFETCH_AHEAD 2048

/* See cpu_kernels.h (dot_f32). */
VELO_AVX2 float velo_dot_f32_avx2(const float *x, const float *y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  float l[8];
  _mm256_storeu_ps(l, acc);
  for (int j = 0; i + j < n; j++) l[j] += x[i + j] * y[i + j];
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h (dot_f16). */
VELO_AVX2 float velo_dot_f16_avx2(const uint16_t *x, const uint16_t *y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
    __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i)));
    acc = _mm256_add_ps(acc, _mm256_mul_ps(a, b));
  }
  float l[8];
  _mm256_storeu_ps(l, acc);
  for (int j = 0; i + j < n; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * velo_fp16_to_fp32(y[i + j]);
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h (dot_f16_f32). */
VELO_AVX2 float velo_dot_f16_f32_avx2(const uint16_t *x, const float *y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
    acc = _mm256_add_ps(acc, _mm256_mul_ps(a, _mm256_loadu_ps(y + i)));
  }
  float l[8];
  _mm256_storeu_ps(l, acc);
  for (int j = 0; i + j < n; j++) l[j] += velo_fp16_to_fp32(x[i + j]) * y[i + j];
  return velo_lanes_sum8(l);
}

/* See cpu_kernels.h (fp32_to_fp16_row).  vcvtps2ph with round-to-nearest-
 * even gives the same halves as velo_fp32_to_fp16, NaN included. */
VELO_AVX2 void velo_fp32_to_fp16_row_avx2(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(y + i), h);
  }
  for (; i < n; i++) y[i] = velo_fp32_to_fp16(x[i]);
}

/* Rounds 8 floats already scaled by id to int32 quants: nearest-even,
 * NaN -> 0, clamp to [-127, 127] (the rule of the reference). */
VELO_AVX2 static inline __m256i round_q8(__m256 v) {
  __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(r);
}

/* See cpu_kernels.h (quantize_row_q8_0). */
VELO_AVX2 void velo_quantize_row_q8_0_avx2(const float *x, velo_block_q8_0 *y, int64_t n) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  int64_t nb = n / VELO_QK8_0;
  for (int64_t b = 0; b < nb; b++) {
    const float *xb = x + b * VELO_QK8_0;
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
      v[k] = _mm256_loadu_ps(xb + 8 * k);
      /* max_ps returns its second operand when the first is NaN: NaNs are
       * skipped, as in the reference's (a > amax ? a : amax). */
      mx = _mm256_max_ps(_mm256_andnot_ps(sign_bit, v[k]), mx);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, mx);
    float amax = 0.0f;
    for (int k = 0; k < 8; k++) amax = lanes[k] > amax ? lanes[k] : amax;
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    y[b].d = velo_fp32_to_fp16(d);

    __m256 vid = _mm256_set1_ps(id);
    __m256i i0 = round_q8(_mm256_mul_ps(v[0], vid));
    __m256i i1 = round_q8(_mm256_mul_ps(v[1], vid));
    __m256i i2 = round_q8(_mm256_mul_ps(v[2], vid));
    __m256i i3 = round_q8(_mm256_mul_ps(v[3], vid));
    /* packs work within 128-bit halves; the permute restores the order */
    __m256i p01 = _mm256_packs_epi32(i0, i1);
    __m256i p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)y[b].qs, p);
  }
}

/* ------------------------------------------------------------------ */
/* Integer block matrix kernel (definition in cpu_kernels.h)            */
/* ------------------------------------------------------------------ */

/* Exact int32 lane sums: lane l = sum over bytes 4l..4l+3 of u*q, u
 * unsigned, q signed (each pair of products must fit int16: true for u <=
 * 128 with |q| <= 127, and for u <= 15 with any q). */
VELO_AVX2 static VELO_INLINE __m256i lane_sums_u8i8(__m256i u, __m256i q) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1));
}

/* The scales of the n (1..4) blocks starting at blk, block stride bb, as
 * floats [d_0, d_1, d_2, d_3] (0 for missing blocks). */
VELO_AVX2 static VELO_INLINE __m128 group_scales(const char *blk, size_t bb, int n) {
  uint64_t h = 0;
  for (int k = 0; k < n; k++) {
    uint16_t d;
    memcpy(&d, blk + (size_t)k * bb, sizeof d);
    h |= (uint64_t)d << (16 * k);
  }
  return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)h));
}

/* See cpu_kernels.h (qcol_prepare). */
VELO_AVX2 static void qcol_prepare_avx2(velo_dtype wt, const float *x, int64_t K, void *col) {
  const int64_t nb = K / VELO_QK8_0;
  const __m256i off = _mm256_set1_epi8(wt == VELO_DTYPE_Q8_0 ? (char)0x80 : 8); /* u8 128 or 8 */
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t b = 0; b < nb; b += VELO_QCOL_GROUP) {
    velo_block_q8_0 xb[VELO_QCOL_GROUP];
    const int n = (int)(nb - b < VELO_QCOL_GROUP ? nb - b : VELO_QCOL_GROUP);
    memset(xb, 0, sizeof xb); /* missing blocks are all zero */
    velo_quantize_row_q8_0_avx2(x + b * VELO_QK8_0, xb, 32 * n);
    char *rec = (char *)col + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
    __m256i a[4], q[4];
    for (int k = 0; k < 4; k++) a[k] = _mm256_loadu_si256((const __m256i *)xb[k].qs);
    q[0] = _mm256_permute2x128_si256(a[0], a[1], 0x20); /* quants 0..15 of blocks 0, 1 */
    q[1] = _mm256_permute2x128_si256(a[2], a[3], 0x20); /* ... of blocks 2, 3 */
    q[2] = _mm256_permute2x128_si256(a[0], a[1], 0x31); /* quants 16..31 of blocks 0, 1 */
    q[3] = _mm256_permute2x128_si256(a[2], a[3], 0x31);
    for (int k = 0; k < 4; k++) _mm256_store_si256((__m256i *)(rec + 32 * k), q[k]);
    for (int h = 0; h < 2; h++) {
      __m256i sum = _mm256_add_epi32(lane_sums_u8i8(off, q[h]), lane_sums_u8i8(off, q[2 + h]));
      _mm256_store_si256((__m256i *)(rec + 128 + 32 * h), _mm256_sub_epi32(zero, sum));
    }
    /* dx: [d0 x4, d1 x4 | d2 x4, d3 x4] */
    uint16_t hd[4] = {xb[0].d, xb[1].d, xb[2].d, xb[3].d};
    uint64_t h;
    memcpy(&h, hd, sizeof h);
    __m256 dd = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h)));
    _mm256_store_ps((float *)(rec + 192),
                    _mm256_permutevar8x32_ps(dd, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)));
    _mm256_store_ps((float *)(rec + 224),
                    _mm256_permutevar8x32_ps(dd, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)));
  }
}

/* Reduces the 16 lanes (a0: 0..7, a1: 8..15) in the order of
 * velo_lanes_sum16. */
VELO_AVX2 static VELO_INLINE float reduce16_avx2(__m256 a0, __m256 a1) {
  __m256 t = _mm256_add_ps(a0, a1);                                      /* t[i] */
  __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)); /* u[i] */
  __m128 r = _mm_add_ps(u, _mm_movehl_ps(u, u));                          /* r[0], r[1] */
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

/* One tile: R weight rows x C prepared columns, the whole K.  Row k of the
 * tile starts at w + k*ws and its outputs go to dst[c][off + k*ro].  R and
 * C are compile-time constants after inlining (the arrays live in
 * registers).  Each output has two ymm accumulators: lanes 0..7 (acc[][][0],
 * blocks 4p and 4p+1 of a group) and 8..15 (acc[][][1], blocks 4p+2 and
 * 4p+3).  Per half h of a group: the weights' elements 0..15 meet the
 * record's first quant vector and elements 16..31 the second, added in the
 * same int32 lanes; Q8_0 as signed times signed (|w| times x with w's sign,
 * no bias), Q4_0 as nibble times x plus the bias. */
VELO_AVX2 static VELO_INLINE void tile_avx2(bool q8, const char *w, size_t ws, const char *cols,
                                            size_t cs, int64_t K, float *const *dst,
                                            int64_t off, int64_t ro, const int R, const int C) {
  const int64_t nb = K / 32;
  const size_t bb = q8 ? sizeof(velo_block_q8_0) : sizeof(velo_block_q4_0);
  __m256 acc[2][4][2];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c][0] = acc[r][c][1] = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; b += VELO_QCOL_GROUP) {
    const int n = (int)(nb - b < VELO_QCOL_GROUP ? nb - b : VELO_QCOL_GROUP);
    const char *rec0 = cols + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
    __m256 dd[2];
    for (int r = 0; r < R; r++) {
      const char *blk = w + (size_t)r * ws + (size_t)b * bb;
      for (size_t o = 0; o < 4 * bb; o += 64) _mm_prefetch(blk + PREFETCH_AHEAD + o, _MM_HINT_T0);
      dd[r] = _mm256_castps128_ps256(group_scales(blk, bb, n));
    }
    for (int h = 0; h < 2; h++) {
      /* blocks b+2h and b+2h+1: elements 0..15 of both, then 16..31 */
      __m256i lo[2], hi[2];
      __m256 sw[2];
      for (int r = 0; r < R; r++) {
        const char *blk = w + (size_t)r * ws + (size_t)(b + 2 * h) * bb;
        sw[r] = _mm256_permutevar8x32_ps(
            dd[r], _mm256_setr_epi32(2 * h, 2 * h, 2 * h, 2 * h, 2 * h + 1, 2 * h + 1, 2 * h + 1,
                                     2 * h + 1));
        const bool has0 = 2 * h < n, has1 = 2 * h + 1 < n;
        if (q8) {
          __m256i a0 = has0 ? _mm256_loadu_si256((const __m256i *)(blk + 2))
                            : _mm256_setzero_si256();
          __m256i a1 = has1 ? _mm256_loadu_si256((const __m256i *)(blk + bb + 2))
                            : _mm256_setzero_si256();
          lo[r] = _mm256_permute2x128_si256(a0, a1, 0x20);
          hi[r] = _mm256_permute2x128_si256(a0, a1, 0x31);
        } else {
          __m128i q0 = has0 ? _mm_loadu_si128((const __m128i *)(blk + 2)) : _mm_setzero_si128();
          __m128i q1 = has1 ? _mm_loadu_si128((const __m128i *)(blk + bb + 2))
                            : _mm_setzero_si128();
          __m256i y = _mm256_set_m128i(q1, q0);
          lo[r] = _mm256_and_si256(y, low4);
          hi[r] = _mm256_and_si256(_mm256_srli_epi16(y, 4), low4);
        }
      }
      for (int c = 0; c < C; c++) {
        const char *rec = rec0 + (size_t)c * cs;
        const __m256i xlo = _mm256_load_si256((const __m256i *)(rec + 32 * h));
        const __m256i xhi = _mm256_load_si256((const __m256i *)(rec + 64 + 32 * h));
        const __m256i bias = _mm256_load_si256((const __m256i *)(rec + 128 + 32 * h));
        const __m256 dx = _mm256_load_ps((const float *)(rec + 192 + 32 * h));
        for (int r = 0; r < R; r++) {
          __m256i s;
          if (q8) /* signed x signed: |w| times x with w's sign; no bias */
            s = _mm256_add_epi32(
                lane_sums_u8i8(_mm256_sign_epi8(lo[r], lo[r]), _mm256_sign_epi8(xlo, lo[r])),
                lane_sums_u8i8(_mm256_sign_epi8(hi[r], hi[r]), _mm256_sign_epi8(xhi, hi[r])));
          else
            s = _mm256_add_epi32(
                _mm256_add_epi32(lane_sums_u8i8(lo[r], xlo), lane_sums_u8i8(hi[r], xhi)), bias);
          acc[r][c][h] = _mm256_fmadd_ps(_mm256_mul_ps(sw[r], dx), _mm256_cvtepi32_ps(s),
                                         acc[r][c][h]);
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) dst[c][off + r * ro] = reduce16_avx2(acc[r][c][0], acc[r][c][1]);
}

/* mul_mat_q for one weight dtype: tiles of 2 rows x 2 columns, smaller
 * tiles at the edges (every output gets the same arithmetic in any tile).
 * The rows are cut into two equal runs and a tile takes row i of each, so
 * the weights stream as two long sequential reads (see vec_avx512.c). */
VELO_AVX2 static VELO_INLINE void mul_mat_avx2_t(bool q8, const char *w, size_t ws, int64_t nr,
                                                 const char *cols, size_t cs, int64_t nc,
                                                 int64_t K, float *const *dst, int64_t off) {
  const int64_t h = nr / 2;
  for (int64_t i = 0; i < h; i++) {
    const char *wi = w + i * ws;
    int64_t c = 0;
    for (; c + 2 <= nc; c += 2)
      tile_avx2(q8, wi, h * ws, cols + c * cs, cs, K, dst + c, off + i, h, 2, 2);
    for (; c < nc; c++) tile_avx2(q8, wi, h * ws, cols + c * cs, cs, K, dst + c, off + i, h, 2, 1);
  }
  for (int64_t r = 2 * h; r < nr; r++) {
    int64_t c = 0;
    for (; c + 4 <= nc; c += 4)
      tile_avx2(q8, w + r * ws, ws, cols + c * cs, cs, K, dst + c, off + r, 1, 1, 4);
    for (; c < nc; c++)
      tile_avx2(q8, w + r * ws, ws, cols + c * cs, cs, K, dst + c, off + r, 1, 1, 1);
  }
}

/* See cpu_kernels.h (mul_mat_q). */
VELO_AVX2 static void mul_mat_q_avx2(velo_dtype wt, const void *w, size_t w_stride, int64_t nr,
                                     const void *cols, size_t col_stride, int64_t nc, int64_t K,
                                     float *const *dst, int64_t off) {
  if (wt == VELO_DTYPE_Q8_0)
    mul_mat_avx2_t(true, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
  else
    mul_mat_avx2_t(false, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
}

static const velo_cpu_vec avx2_vec = {
    .isa = VELO_CPU_ISA_AVX2,
    .name = "AVX2",
    .dot_f32 = velo_dot_f32_avx2,
    .dot_f16 = velo_dot_f16_avx2,
    .dot_f16_f32 = velo_dot_f16_f32_avx2,
    .fp32_to_fp16_row = velo_fp32_to_fp16_row_avx2,
    .quantize_row_q8_0 = velo_quantize_row_q8_0_avx2,
    .qcol_prepare = qcol_prepare_avx2,
    .mul_mat_q = mul_mat_q_avx2,
    .mul_mat_act = velo_mul_mat_act_avx2,
};

/* See vec_avx2.h: AVX, AVX2, FMA and F16C, and the OS saves the YMM
 * registers (CPUID leaves 1 and 7, XGETBV), read directly because not every
 * compiler's __builtin_cpu_supports knows "f16c". */
bool velo_cpu_has_avx2_fma_f16c(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned fma = 1u << 12, osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
  if ((c & (fma | osxsave | avx | f16c)) != (fma | osxsave | avx | f16c)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 6u) != 6u) return false; /* XMM and YMM state enabled */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (b & (1u << 5)) != 0; /* AVX2 */
}

/* See vec_avx2.h. */
const velo_cpu_vec *velo_cpu_vec_avx2(void) {
  return velo_cpu_has_avx2_fma_f16c() ? &avx2_vec : NULL;
}

#else /* not x86-64 GCC/Clang */

/* See vec_avx2.h. */
const velo_cpu_vec *velo_cpu_vec_avx2(void) { return NULL; }

/* See vec_avx2.h. */
bool velo_cpu_has_avx2_fma_f16c(void) { return false; }

#endif
