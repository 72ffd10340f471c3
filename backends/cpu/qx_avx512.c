/*
 * qx_avx512.c - AVX-512 (F, BW, VL, VNNI) matrix kernels (mul_mat_act,
 * contract in act_simd.h and cpu_kernels.h) for Q4_1, Q5_1 (Q8_1 columns),
 * Q5_0 (Q8_0 columns), BF16 (bf16 columns) and Q8_K (Q8_K columns).  Every
 * output equals velo_act_dot to the bit: the integer block sums are exact
 * (vpdpbusd), and the float operations that combine them are the portable
 * dot's, in its order (the build passes -ffp-contract=off; no FMA here).
 *
 * Q4_1/Q5_1/Q5_0: one float lane per output.  From 4 columns on (prefill)
 * a tile holds 16 weight rows (row i of 16 equal runs, so the weights
 * stream as 16 long sequential reads, prefetched ahead) against 4 columns:
 * per block, rows 4m..4m+3 unpack into two registers of unsigned bytes q
 * (elements 0..15 and 16..31 of the four rows; Q5_0 keeps q = v + 16 and
 * removes 16 * sum x afterwards), two vpdpbusd per group and column give
 * exact int32 partial sums, an unpack/add tree reduces them to one vector
 * of 16 block sums S (lane order k_lane_row), and then in every lane
 * acc += (d_w*d_x) * (float)S (and acc += m_w*s_x), exactly the portable
 * steps.  Below 4 columns (decode) the 256-bit form of the same scheme on
 * 8 rows (tile32y) measured faster on Zen 4, where 512-bit shuffles cost
 * double.  The scales come from the first dword of each block, loaded
 * with the block.
 *
 * Q8_K: tiles of 4 rows x up to 4 columns; u = w + 128 (unsigned) times x
 * by vpdpbusd, minus 128 * sum x (also by vpdpbusd), is the exact block
 * sum for any int8 quants; then the portable float step.  512-bit loads
 * from 4 columns on, 256-bit ones below (tile_q8ky, faster for decode).
 *
 * BF16: 8 float lanes per output (element k in lane k % 8), multiply then
 * add as the portable dot, masked adds for a tail of K % 8, lanes reduced
 * by velo_lanes_sum8; from 4 columns on one 512-bit register holds two
 * rows' lanes (rows r and r+4 of a tile of 8), below that 256-bit
 * registers on 4 rows (measured faster for decode: fewer weight streams).
 *
 * Compiled for AVX-512 through target attributes; reached only through the
 * AVX-512 table (CPUID checked).  Stateless, thread-safe on disjoint
 * outputs.
 */
#include "act_simd.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#define VELO_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define VELO_INLINE inline __attribute__((always_inline))

/* Bytes ahead of the block being unpacked that each weight row is
 * prefetched (as vec_avx512.c). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2048
#endif

/* The block-32 weight formats of this file. */
enum { F_Q4_1, F_Q5_1, F_Q5_0 };

/* The tile row of each lane of a block-32 tile's vectors: lane 4k + m
 * holds row 4m + k (the order the reduction tree leaves the sums in). */
static const int k_lane_row[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

/* Converts one fp16 to float with F16C (the same value as
 * velo_fp16_to_fp32 for every non-NaN input). */
VELO_AVX512 static VELO_INLINE float h2f(const char *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* The sum of the 8 int32 lanes of v (exact). */
VELO_AVX512 static VELO_INLINE int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

/* The sum of the 16 int32 lanes of v (exact). */
VELO_AVX512 static VELO_INLINE int32_t hsum16(__m512i v) {
  return hsum8(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

/* p[m] holds in its 128-bit lane k four int32 partial sums of tile row
 * 4m + k (m < 4).  Returns the 16 row sums, lane l holding row
 * k_lane_row[l] (exact). */
VELO_AVX512 static VELO_INLINE __m512i reduce_rows16(const __m512i p[4]) {
  /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]),
                                      _mm512_unpackhi_epi32(p[0], p[1]));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]),
                                      _mm512_unpackhi_epi32(p[2], p[3]));
  /* per 128-bit lane k: the sums of rows k, 4+k, 8+k, 12+k */
  return _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
}

/* Block geometry of a block-32 format: block bytes, offset of qs, offset
 * of qh (Q5_x only), bytes of its activation block (Q8_1 or Q8_0). */
static VELO_INLINE size_t f_bytes(const int f) {
  return f == F_Q4_1 ? sizeof(velo_block_q4_1)
                     : f == F_Q5_1 ? sizeof(velo_block_q5_1) : sizeof(velo_block_q5_0);
}
static VELO_INLINE size_t f_qs(const int f) { return f == F_Q4_1 ? 4 : f == F_Q5_1 ? 8 : 6; }
static VELO_INLINE size_t f_qh(const int f) { return f == F_Q5_1 ? 4 : 2; }
static VELO_INLINE size_t f_xbytes(const int f) {
  return f == F_Q5_0 ? sizeof(velo_block_q8_0) : sizeof(velo_block_q8_1);
}

/* Unpacks the blocks at offset ob of rows r[0..3] into unsigned bytes:
 * *lo gets elements 0..15 (128-bit lane k: row k), *hi elements 16..31
 * (Q4_1 0..15, Q5_x 0..31); *head the blocks' first 16 bytes (lane k: row
 * k), which hold d (and m) in their first dword. */
VELO_AVX512 static VELO_INLINE void unpack_group(const int f, const char *const *r, size_t ob,
                                                 __m512i *lo, __m512i *hi, __m512i *head) {
  const size_t o = ob + f_qs(f);
  __m512i q = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(r[0] + o)));
  q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)(r[1] + o)), 1);
  q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)(r[2] + o)), 2);
  q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)(r[3] + o)), 3);
  __m512i h = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(r[0] + ob)));
  h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)(r[1] + ob)), 1);
  h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)(r[2] + ob)), 2);
  h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)(r[3] + ob)), 3);
  *head = h;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  *lo = _mm512_and_si512(q, low4);
  *hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
  if (f != F_Q4_1) { /* bit j of qh -> 16 on element j; qh is at byte b0 */
    const int b0 = (int)f_qh(f);
    const __m512i idx_lo = _mm512_set4_epi32(0x01010101 * (b0 + 1), 0x01010101 * (b0 + 1),
                                             0x01010101 * b0, 0x01010101 * b0);
    const __m512i idx_hi = _mm512_set4_epi32(0x01010101 * (b0 + 3), 0x01010101 * (b0 + 3),
                                             0x01010101 * (b0 + 2), 0x01010101 * (b0 + 2));
    const __m512i bits = _mm512_set1_epi64((long long)0x8040201008040201ull);
    const __m512i sixteen = _mm512_set1_epi8(16);
    const __mmask64 mlo = _mm512_test_epi8_mask(_mm512_shuffle_epi8(h, idx_lo), bits);
    const __mmask64 mhi = _mm512_test_epi8_mask(_mm512_shuffle_epi8(h, idx_hi), bits);
    *lo = _mm512_mask_add_epi8(*lo, mlo, *lo, sixteen);
    *hi = _mm512_mask_add_epi8(*hi, mhi, *hi, sixteen);
  }
}

/* One tile of a block-32 format: 16 tile rows (row j: w + min(j, nl-1)*rs;
 * only the first nl are stored, at dst[c][off + j*ro]) x C columns, nb
 * blocks. */
VELO_AVX512 static VELO_INLINE void tile32(const int f, const char *w, size_t rs, int nl,
                                           const char *cols, size_t cs, int64_t nb,
                                           float *const *dst, int64_t off, int64_t ro,
                                           const int C) {
  const size_t bs = f_bytes(f), xbs = f_xbytes(f), xq = f == F_Q5_0 ? 2 : 4;
  const char *row[16];
  for (int j = 0; j < 16; j++) row[j] = w + (size_t)(j < nl ? j : nl - 1) * rs;
  __m512 acc[4];
  for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const size_t ob = (size_t)b * bs;
    if (b % (int64_t)(64 / bs) == 0) /* a line per row every <= 64 bytes */
      for (int j = 0; j < 16; j++) _mm_prefetch(row[j] + ob + PREFETCH_AHEAD, _MM_HINT_T0);
    __m512i lo[4], hi[4], hd[4];
    for (int m = 0; m < 4; m++) unpack_group(f, row + 4 * m, ob, &lo[m], &hi[m], &hd[m]);
    /* dword 0 of each head (d, and m above it), lane 4k + m: row 4m + k */
    const __m512i g = _mm512_unpacklo_epi64(_mm512_unpacklo_epi32(hd[0], hd[1]),
                                            _mm512_unpacklo_epi32(hd[2], hd[3]));
    const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
    const __m512 mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
    for (int c = 0; c < C; c++) {
      const char *xb = cols + (size_t)c * cs + (size_t)b * xbs;
      const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xb + xq)));
      const __m512i xhi =
          _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xb + xq + 16)));
      __m512i p[4];
      for (int m = 0; m < 4; m++)
        p[m] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[m], xlo), hi[m],
                                   xhi);
      __m512i s = reduce_rows16(p);
      if (f == F_Q5_0) { /* S = sum (q - 16) x = sum q x - 16 sum x */
        const __m256i x16 = _mm256_dpbusd_epi32(
            _mm256_setzero_si256(), _mm256_set1_epi8(16),
            _mm256_loadu_si256((const __m256i *)(xb + xq)));
        s = _mm512_sub_epi32(s, _mm512_set1_epi32(hsum8(x16)));
      }
      const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(h2f(xb)));
      acc[c] = _mm512_add_ps(acc[c], _mm512_mul_ps(scale, _mm512_cvtepi32_ps(s)));
      if (f != F_Q5_0)
        acc[c] = _mm512_add_ps(acc[c], _mm512_mul_ps(mw, _mm512_set1_ps(h2f(xb + 2))));
    }
  }
  for (int c = 0; c < C; c++) {
    float t[16];
    _mm512_storeu_ps(t, acc[c]);
    for (int l = 0; l < 16; l++)
      if (k_lane_row[l] < nl) dst[c][off + k_lane_row[l] * ro] = t[l];
  }
}

/* Unpacks the blocks at a and b into unsigned bytes: *lo gets elements
 * 0..15 (low 128-bit lane: a, high: b), *hi elements 16..31 (Q4_1 0..15,
 * Q5_x 0..31); *head the blocks' first 16 bytes (low lane a, high b),
 * which hold d (and m) in their first dword. */
VELO_AVX512 static VELO_INLINE void unpack_pair(const int f, const char *a, const char *b,
                                              __m256i *lo, __m256i *hi, __m256i *head) {
  const __m256i q = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + f_qs(f)))),
      _mm_loadu_si128((const __m128i *)(b + f_qs(f))), 1);
  const __m256i h = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
      _mm_loadu_si128((const __m128i *)b), 1);
  *head = h;
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  *lo = _mm256_and_si256(q, low4);
  *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
  if (f != F_Q4_1) { /* bit j of qh -> 16 on element j, through two byte masks */
    uint32_t ha, hb;
    memcpy(&ha, a + f_qh(f), 4);
    memcpy(&hb, b + f_qh(f), 4);
    const __mmask32 mlo = (ha & 0xffffu) | hb << 16, mhi = ha >> 16 | (hb & 0xffff0000u);
    const __m256i sixteen = _mm256_set1_epi8(16);
    *lo = _mm256_mask_add_epi8(*lo, mlo, *lo, sixteen);
    *hi = _mm256_mask_add_epi8(*hi, mhi, *hi, sixteen);
  }
}

/* One narrow tile of a block-32 format, for few columns (decode), where
 * 256-bit registers measured faster than tile32's 512-bit ones: 8 tile
 * rows (row j: w + min(j, nl-1)*rs; only the first nl are stored, at
 * dst[c][off + j*ro]) x C columns, nb blocks.  Rows j and j+4 share a
 * register; two vpdpbusd give each pair's partial sums, three vphaddd
 * reduce them to the 8 rows' block sums in lane order. */
VELO_AVX512 static VELO_INLINE void tile32y(const int f, const char *w, size_t rs, int nl,
                                         const char *cols, size_t cs, int64_t nb,
                                         float *const *dst, int64_t off, int64_t ro,
                                         const int C) {
  const size_t bs = f_bytes(f), xbs = f_xbytes(f), xq = f == F_Q5_0 ? 2 : 4;
  const char *row[8];
  for (int j = 0; j < 8; j++) row[j] = w + (size_t)(j < nl ? j : nl - 1) * rs;
  __m256 acc[4];
  for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const size_t ob = (size_t)b * bs;
    if (b % (int64_t)(64 / bs) == 0) /* a line per row every <= 64 bytes */
      for (int j = 0; j < 8; j++) _mm_prefetch(row[j] + ob + PREFETCH_AHEAD, _MM_HINT_T0);
    __m256i lo[4], hi[4], hd[4];
    for (int i = 0; i < 4; i++)
      unpack_pair(f, row[i] + ob, row[i + 4] + ob, &lo[i], &hi[i], &hd[i]);
    /* dword 0 of each head (d, and m above it), lane j: row j */
    const __m256i g = _mm256_unpacklo_epi64(_mm256_unpacklo_epi32(hd[0], hd[1]),
                                            _mm256_unpacklo_epi32(hd[2], hd[3]));
    const __m256i dm = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)),
                            _mm256_srli_epi32(g, 16)),
        _MM_SHUFFLE(3, 1, 2, 0));
    const __m256 dw = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
    const __m256 mw = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
    for (int c = 0; c < C; c++) {
      const char *xb = cols + (size_t)c * cs + (size_t)b * xbs;
      const __m256i xlo =
          _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xb + xq)));
      const __m256i xhi =
          _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xb + xq + 16)));
      __m256i p[4];
      for (int i = 0; i < 4; i++)
        p[i] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo[i], xlo), hi[i],
                                   xhi);
      __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
      if (f == F_Q5_0) { /* S = sum (q - 16) x = sum q x - 16 sum x */
        const __m256i x16 =
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(16),
                                _mm256_loadu_si256((const __m256i *)(xb + xq)));
        s = _mm256_sub_epi32(s, _mm256_set1_epi32(hsum8(x16)));
      }
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(h2f(xb)));
      acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(s)));
      if (f != F_Q5_0)
        acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(mw, _mm256_set1_ps(h2f(xb + 2))));
    }
  }
  for (int c = 0; c < C; c++) {
    float t[8];
    _mm256_storeu_ps(t, acc[c]);
    for (int j = 0; j < nl; j++) dst[c][off + j * ro] = t[j];
  }
}

/* One tile of Q8_K weights: R rows (row r: w + min(r, nl-1)*rs; the first
 * nl stored at dst[c][off + r*ro]) x C columns, nb super-blocks. */
VELO_AVX512 static VELO_INLINE void tile_q8k(const char *w, size_t rs, int nl, const char *cols,
                                             size_t cs, int64_t nb, float *const *dst,
                                             int64_t off, int64_t ro, const int R, const int C) {
  const size_t bs = sizeof(velo_block_q8_K);
  const char *row[4];
  for (int r = 0; r < R; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  float acc[4][4] = {{0}};
  for (int64_t b = 0; b < nb; b++) {
    const size_t ob = (size_t)b * bs;
    __m512i s[4][4], xs[4];
    for (int c = 0; c < C; c++) {
      xs[c] = _mm512_setzero_si512();
      for (int r = 0; r < R; r++) s[r][c] = _mm512_setzero_si512();
    }
    for (int k = 0; k < VELO_QK_K / 64; k++) {
      __m512i u[4];
      for (int r = 0; r < R; r++) {
        _mm_prefetch(row[r] + ob + PREFETCH_AHEAD + 64 * k, _MM_HINT_T0);
        u[r] = _mm512_xor_si512(_mm512_loadu_si512(row[r] + ob + 4 + 64 * k), flip);
      }
      for (int c = 0; c < C; c++) {
        const __m512i x = _mm512_loadu_si512(cols + (size_t)c * cs + ob + 4 + 64 * k);
        xs[c] = _mm512_dpbusd_epi32(xs[c], flip, x); /* 128 * sum x */
        for (int r = 0; r < R; r++) s[r][c] = _mm512_dpbusd_epi32(s[r][c], u[r], x);
      }
    }
    for (int r = 0; r < R; r++) {
      float dw;
      memcpy(&dw, row[r] + ob, 4);
      for (int c = 0; c < C; c++) {
        float dx;
        memcpy(&dx, cols + (size_t)c * cs + ob, 4);
        acc[r][c] += (dw * dx) * (float)hsum16(_mm512_sub_epi32(s[r][c], xs[c]));
      }
    }
  }
  for (int r = 0; r < nl; r++)
    for (int c = 0; c < C; c++) dst[c][off + r * ro] = acc[r][c];
}

/* tile_q8k on 256-bit registers, for few columns (decode): with the
 * weights streaming from memory it measured ~15% faster (its 32-byte
 * loads cross fewer cache lines).  R rows (row r: w + min(r, nl-1)*rs; the
 * first nl stored at dst[c][off + r*ro]) x C columns, nb super-blocks. */
VELO_AVX512 static VELO_INLINE void tile_q8ky(const char *w, size_t rs, int nl,
                                              const char *cols, size_t cs, int64_t nb,
                                              float *const *dst, int64_t off, int64_t ro,
                                              const int R, const int C) {
  const size_t bs = sizeof(velo_block_q8_K);
  const char *row[4];
  for (int r = 0; r < R; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  float acc[4][4] = {{0}};
  for (int64_t b = 0; b < nb; b++) {
    const size_t ob = (size_t)b * bs;
    __m256i s[4][4], xs[4];
    for (int c = 0; c < C; c++) {
      xs[c] = _mm256_setzero_si256();
      for (int r = 0; r < R; r++) s[r][c] = _mm256_setzero_si256();
    }
    for (int k = 0; k < VELO_QK_K / 32; k++) {
      __m256i u[4];
      for (int r = 0; r < R; r++) {
        if ((k & 1) == 0) _mm_prefetch(row[r] + ob + PREFETCH_AHEAD + 32 * k, _MM_HINT_T0);
        u[r] = _mm256_xor_si256(
            _mm256_loadu_si256((const __m256i *)(row[r] + ob + 4 + 32 * k)), flip);
      }
      for (int c = 0; c < C; c++) {
        const __m256i x =
            _mm256_loadu_si256((const __m256i *)(cols + (size_t)c * cs + ob + 4 + 32 * k));
        xs[c] = _mm256_dpbusd_epi32(xs[c], flip, x); /* 128 * sum x */
        for (int r = 0; r < R; r++) s[r][c] = _mm256_dpbusd_epi32(s[r][c], u[r], x);
      }
    }
    for (int r = 0; r < R; r++) {
      float dw;
      memcpy(&dw, row[r] + ob, 4);
      for (int c = 0; c < C; c++) {
        float dx;
        memcpy(&dx, cols + (size_t)c * cs + ob, 4);
        acc[r][c] += (dw * dx) * (float)hsum8(_mm256_sub_epi32(s[r][c], xs[c]));
      }
    }
  }
  for (int r = 0; r < nl; r++)
    for (int c = 0; c < C; c++) dst[c][off + r * ro] = acc[r][c];
}

/* 8 bf16 at a and 8 at b as 16 floats (exact), masked loads of the first
 * m elements of each. */
VELO_AVX512 static VELO_INLINE __m512 bf16x2(const void *a, const void *b, __mmask8 m) {
  const __m256i h = _mm256_set_m128i(_mm_maskz_loadu_epi16(m, b), _mm_maskz_loadu_epi16(m, a));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* One tile of BF16 weights: 8 rows (as tile_q8k; rows r and r+4 share a
 * register) x C columns of K elements; 8 lanes per output as
 * velo_dot_bf16_ref. */
VELO_AVX512 static VELO_INLINE void tile_bf16(const char *w, size_t rs, int nl,
                                              const char *cols, size_t cs, int64_t K,
                                              float *const *dst, int64_t off, int64_t ro,
                                              const int C) {
  const char *row[8];
  for (int r = 0; r < 8; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  __m512 acc[4][4];
  for (int p = 0; p < 4; p++)
    for (int c = 0; c < C; c++) acc[p][c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m512 wv[4];
    if ((k & 31) == 0)
      for (int r = 0; r < 8; r++) _mm_prefetch(row[r] + 2 * k + PREFETCH_AHEAD, _MM_HINT_T0);
    for (int p = 0; p < 4; p++) wv[p] = bf16x2(row[p] + 2 * k, row[p + 4] + 2 * k, 0xff);
    for (int c = 0; c < C; c++) {
      const char *xc = cols + (size_t)c * cs + 2 * k;
      const __m512 x = bf16x2(xc, xc, 0xff);
      for (int p = 0; p < 4; p++) acc[p][c] = _mm512_add_ps(acc[p][c], _mm512_mul_ps(wv[p], x));
    }
  }
  if (k < K) { /* lanes 0..K-k-1 of each row only: the others must not even add +0 */
    const int n = (int)(K - k);
    const __mmask8 m8 = (__mmask8)((1u << n) - 1);
    const __mmask16 m16 = (__mmask16)(m8 | (unsigned)m8 << 8);
    __m512 wv[4];
    for (int p = 0; p < 4; p++) wv[p] = bf16x2(row[p] + 2 * k, row[p + 4] + 2 * k, m8);
    for (int c = 0; c < C; c++) {
      const char *xc = cols + (size_t)c * cs + 2 * k;
      const __m512 x = bf16x2(xc, xc, m8);
      for (int p = 0; p < 4; p++)
        acc[p][c] = _mm512_mask_add_ps(acc[p][c], m16, acc[p][c], _mm512_mul_ps(wv[p], x));
    }
  }
  for (int p = 0; p < 4; p++)
    for (int c = 0; c < C; c++) {
      float l[16];
      _mm512_storeu_ps(l, acc[p][c]);
      if (p < nl) dst[c][off + p * ro] = velo_lanes_sum8(l);
      if (p + 4 < nl) dst[c][off + (p + 4) * ro] = velo_lanes_sum8(l + 8);
    }
}

/* 8 bf16 at p as floats (exact). */
VELO_AVX512 static VELO_INLINE __m256 bf16x8y(const void *p) {
  const __m128i h = _mm_loadu_si128((const __m128i *)p);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
/* One tile of BF16 weights on 256-bit registers (on this core measured
 * faster than tile_bf16's 512-bit ones for decode): R <= 8 rows (row r:
 * w + min(r, nl-1)*rs; the first nl stored at dst[c][off + r*ro]) x C
 * columns of K elements; 8 lanes per output as velo_dot_bf16_ref. */
VELO_AVX512 static VELO_INLINE void tile_bf16y(const char *w, size_t rs, int nl, const char *cols,
                                            size_t cs, int64_t K, float *const *dst,
                                            int64_t off, int64_t ro, const int R, const int C) {
  const char *row[8];
  for (int r = 0; r < R; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  __m256 acc[8][4];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[8];
    for (int r = 0; r < R; r++) {
      if ((k & 31) == 0) _mm_prefetch(row[r] + 2 * k + PREFETCH_AHEAD, _MM_HINT_T0);
      wv[r] = bf16x8y(row[r] + 2 * k);
    }
    for (int c = 0; c < C; c++) {
      const __m256 x = bf16x8y(cols + (size_t)c * cs + 2 * k);
      for (int r = 0; r < R; r++) acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(wv[r], x));
    }
  }
  if (k < K) { /* lanes 0..K-k-1 only: the other lanes must not even add +0 */
    const int n = (int)(K - k);
    const __m256 mask = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    uint16_t t[8] = {0};
    __m256 wv[8];
    for (int r = 0; r < R; r++) {
      memcpy(t, row[r] + 2 * k, 2 * (size_t)n);
      wv[r] = bf16x8y(t);
    }
    for (int c = 0; c < C; c++) {
      memcpy(t, cols + (size_t)c * cs + 2 * k, 2 * (size_t)n);
      const __m256 x = bf16x8y(t);
      for (int r = 0; r < R; r++)
        acc[r][c] = _mm256_blendv_ps(acc[r][c], _mm256_add_ps(acc[r][c], _mm256_mul_ps(wv[r], x)),
                                     mask);
    }
  }
  for (int r = 0; r < nl; r++)
    for (int c = 0; c < C; c++) {
      float l[8];
      _mm256_storeu_ps(l, acc[r][c]);
      dst[c][off + r * ro] = velo_lanes_sum8(l);
    }
}

/* Dispatches one tile of C columns to the format's kernel (narrow: the
 * block-32 formats' 8-row tiles, else their 16-row ones). */
VELO_AVX512 static VELO_INLINE void tile_any(velo_dtype wt, bool narrow, const char *w,
                                             size_t rs, int nl, const char *cols, size_t cs,
                                             int64_t K, float *const *dst, int64_t off,
                                             int64_t ro, const int C) {
  switch (wt) {
    case VELO_DTYPE_Q4_1:
      if (narrow)
        tile32y(F_Q4_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      else
        tile32(F_Q4_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q5_1:
      if (narrow)
        tile32y(F_Q5_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      else
        tile32(F_Q5_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q5_0:
      if (narrow)
        tile32y(F_Q5_0, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      else
        tile32(F_Q5_0, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q8_K:
      if (narrow)
        tile_q8ky(w, rs, nl, cols, cs, K / VELO_QK_K, dst, off, ro, 4, C);
      else
        tile_q8k(w, rs, nl, cols, cs, K / VELO_QK_K, dst, off, ro, 4, C);
      break;
    default:
      if (narrow)
        tile_bf16y(w, rs, nl, cols, cs, K, dst, off, ro, 4, C);
      else
        tile_bf16(w, rs, nl, cols, cs, K, dst, off, ro, C);
      break;
  }
}

/* Columns below which the block-32 formats take their narrow tiles. */
#define NARROW_NC 4

/* Rows of a tile, per format. */
static int tile_rows(velo_dtype wt, bool narrow) {
  if (wt == VELO_DTYPE_BF16) return narrow ? 4 : 8;
  return wt == VELO_DTYPE_Q8_K ? 4 : narrow ? 8 : 16;
}

/* All columns against one tile of rows: tiles of 4 columns, then the
 * rest. */
VELO_AVX512 static void rows_all_cols(velo_dtype wt, const char *w, size_t rs, int nl,
                                      const char *cols, size_t cs, int64_t nc, int64_t K,
                                      float *const *dst, int64_t off, int64_t ro) {
  const bool narrow = nc < NARROW_NC;
  int64_t c = 0;
  for (; c + 4 <= nc; c += 4)
    tile_any(wt, narrow, w, rs, nl, cols + c * cs, cs, K, dst + c, off, ro, 4);
  const char *cc = cols + c * cs;
  float *const *dc = dst + c;
  switch (nc - c) {
    case 3:
      tile_any(wt, narrow, w, rs, nl, cc, cs, K, dc, off, ro, 3);
      break;
    case 2:
      tile_any(wt, narrow, w, rs, nl, cc, cs, K, dc, off, ro, 2);
      break;
    case 1:
      tile_any(wt, narrow, w, rs, nl, cc, cs, K, dc, off, ro, 1);
      break;
    default:
      break;
  }
}

/* See act_simd.h.  Rows are cut into L equal runs (L = the tile's rows)
 * and tile i takes row i of each run, so that the weights stream as L long
 * sequential reads; the nr % L rows left form one last tile of adjacent
 * rows. */
VELO_AVX512 bool velo_mul_mat_qx_avx512(VELO_ACT_MM_ARGS) {
  if (wt != VELO_DTYPE_Q4_1 && wt != VELO_DTYPE_Q5_1 && wt != VELO_DTYPE_Q5_0 &&
      wt != VELO_DTYPE_BF16 && wt != VELO_DTYPE_Q8_K)
    return false;
  const int L = tile_rows(wt, nc < NARROW_NC);
  const int64_t q = nr / L;
  for (int64_t i = 0; i < q; i++)
    rows_all_cols(wt, (const char *)w + (size_t)i * w_stride, (size_t)q * w_stride, L, cols,
                  col_stride, nc, K, dst, off + i, q);
  if (nr > q * L)
    rows_all_cols(wt, (const char *)w + (size_t)(q * L) * w_stride, w_stride, (int)(nr - q * L),
                  cols, col_stride, nc, K, dst, off + q * L, 1);
  return true;
}

#else /* not x86-64 GCC/Clang */

/* See act_simd.h: no AVX-512 kernels in this build. */
bool velo_mul_mat_qx_avx512(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}

#endif
