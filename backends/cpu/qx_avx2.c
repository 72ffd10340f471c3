/*
 * qx_avx2.c - AVX2 matrix kernels (mul_mat_act, contract in act_simd.h and
 * cpu_kernels.h) for Q4_1, Q5_1 (Q8_1 columns), Q5_0 (Q8_0 columns), BF16
 * (bf16 columns) and Q8_K (Q8_K columns).  Every output equals
 * velo_act_dot to the bit: the integer block sums are exact, and the float
 * operations that combine them are the portable dot's, in its order (the
 * build passes -ffp-contract=off; no FMA is used here).
 *
 * Q4_1/Q5_1/Q5_0: one float lane per output.  A tile holds 8 weight rows
 * (lane j = row j of the tile) against up to 4 columns; per block, rows j
 * and j+4 unpack together into two registers of unsigned bytes q
 * (elements 0..15 and 16..31; Q5_0 keeps q = v + 16 and removes 16 * sum x
 * afterwards), two maddubs (int16 pairs <= 2*31*128, their sum < 2^15)
 * and a madd give exact int32 partial sums, three hadd reduce the 8 rows
 * to one vector of block sums S, and then, in every lane,
 * acc += (d_w*d_x) * (float)S (and acc += m_w*s_x), exactly the portable
 * steps.  The scales come from the first dword of each block, loaded with
 * the block.  The 8 rows of a tile are row i of 8 equal runs, so the
 * weights stream as 8 long sequential reads (prefetched ahead).
 *
 * Q8_K: tiles of 4 rows x up to 2 columns; |w| times x with w's sign
 * (maddubs needs one unsigned operand; activations are in [-127, 127], so
 * the signed operand never overflows and pairs stay <= 2*128*127), the
 * block sum reduced to a scalar, then the portable float step.
 *
 * BF16: 8 float lanes per output (element k in lane k % 8), multiply then
 * add as the portable dot, with masked adds for a tail of K % 8 and the
 * lanes reduced by velo_lanes_sum8; tiles of 4 rows x up to 3 columns.
 *
 * Compiled for AVX2 through target attributes; reached only through the
 * AVX2 table (CPUID checked).  Stateless, thread-safe on disjoint outputs.
 */
#include "act_simd.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#define VELO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define VELO_INLINE inline __attribute__((always_inline))

/* Bytes ahead of the block being unpacked that each weight row is
 * prefetched (as vec_avx2.c). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2048
#endif

/* The block-32 weight formats of this file. */
enum { F_Q4_1, F_Q5_1, F_Q5_0 };

/* Converts one fp16 to float with F16C (the same value as
 * velo_fp16_to_fp32 for every non-NaN input). */
VELO_AVX2 static VELO_INLINE float h2f(const char *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* The sum of the 8 int32 lanes of v (exact). */
VELO_AVX2 static VELO_INLINE int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

/* p[i] holds four int32 partial sums of tile row i in its low 128-bit
 * lane and four of row i+4 in its high lane (i < 4).  Returns the 8 row
 * sums, lane j holding row j (exact). */
VELO_AVX2 static VELO_INLINE __m256i reduce_rows8(const __m256i p[4]) {
  return _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
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

/* Unpacks the blocks at a and b into unsigned bytes: *lo gets elements
 * 0..15 (low 128-bit lane: a, high: b), *hi elements 16..31 (Q4_1 0..15,
 * Q5_x 0..31); *head the blocks' first 16 bytes (low lane a, high b),
 * which hold d (and m) in their first dword. */
VELO_AVX2 static VELO_INLINE void unpack_pair(const int f, const char *a, const char *b,
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
  if (f != F_Q4_1) { /* bit j of qh -> 16 on element j; qh is at byte b0 */
    const int b0 = (int)f_qh(f);
    const __m256i idx_lo = _mm256_setr_epi32(
        0x01010101 * b0, 0x01010101 * b0, 0x01010101 * (b0 + 1), 0x01010101 * (b0 + 1),
        0x01010101 * b0, 0x01010101 * b0, 0x01010101 * (b0 + 1), 0x01010101 * (b0 + 1));
    const __m256i idx_hi = _mm256_add_epi8(idx_lo, _mm256_set1_epi8(2));
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i sixteen = _mm256_set1_epi8(16);
    const __m256i blo = _mm256_and_si256(_mm256_shuffle_epi8(h, idx_lo), bits);
    const __m256i bhi = _mm256_and_si256(_mm256_shuffle_epi8(h, idx_hi), bits);
    *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(blo, bits), sixteen));
    *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(bhi, bits), sixteen));
  }
}

/* One tile of a block-32 format: 8 tile rows (row j: w + min(j, nl-1)*rs;
 * only the first nl are stored, at dst[c][off + j*ro]) x C columns, nb
 * blocks.  Rows j and j+4 share a register. */
VELO_AVX2 static VELO_INLINE void tile32(const int f, const char *w, size_t rs, int nl,
                                         const char *cols, size_t cs, int64_t nb,
                                         float *const *dst, int64_t off, int64_t ro,
                                         const int C) {
  const size_t bs = f_bytes(f), xbs = f_xbytes(f), xq = f == F_Q5_0 ? 2 : 4;
  const char *row[8];
  for (int j = 0; j < 8; j++) row[j] = w + (size_t)(j < nl ? j : nl - 1) * rs;
  const __m256i ones16 = _mm256_set1_epi16(1);
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
      __m256i p[4]; /* int16 pairs <= 2*31*128 each, their sum < 2^15 */
      for (int i = 0; i < 4; i++)
        p[i] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[i], xlo),
                                                  _mm256_maddubs_epi16(hi[i], xhi)),
                                 ones16);
      __m256i s = reduce_rows8(p);
      if (f == F_Q5_0) { /* S = sum (q - 16) x = sum q x - 16 sum x */
        const __m256i x16 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(16),
                                 _mm256_loadu_si256((const __m256i *)(xb + xq))),
            ones16);
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
VELO_AVX2 static VELO_INLINE void tile_q8k(const char *w, size_t rs, int nl, const char *cols,
                                           size_t cs, int64_t nb, float *const *dst,
                                           int64_t off, int64_t ro, const int R, const int C) {
  const size_t bs = sizeof(velo_block_q8_K);
  const char *row[4];
  for (int r = 0; r < R; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  const __m256i ones16 = _mm256_set1_epi16(1);
  float acc[4][4] = {{0}};
  for (int64_t b = 0; b < nb; b++) {
    const size_t ob = (size_t)b * bs;
    __m256i s[4][4];
    for (int r = 0; r < R; r++)
      for (int c = 0; c < C; c++) s[r][c] = _mm256_setzero_si256();
    for (int k = 0; k < VELO_QK_K / 32; k++) {
      __m256i wv[4], wa[4];
      for (int r = 0; r < R; r++) {
        if ((k & 1) == 0) _mm_prefetch(row[r] + ob + PREFETCH_AHEAD + 32 * k, _MM_HINT_T0);
        wv[r] = _mm256_loadu_si256((const __m256i *)(row[r] + ob + 4 + 32 * k));
        wa[r] = _mm256_abs_epi8(wv[r]);
      }
      for (int c = 0; c < C; c++) {
        const __m256i x =
            _mm256_loadu_si256((const __m256i *)(cols + (size_t)c * cs + ob + 4 + 32 * k));
        for (int r = 0; r < R; r++)
          s[r][c] = _mm256_add_epi32(
              s[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(x, wv[r])),
                                         ones16));
      }
    }
    for (int r = 0; r < R; r++) {
      float dw;
      memcpy(&dw, row[r] + ob, 4);
      for (int c = 0; c < C; c++) {
        float dx;
        memcpy(&dx, cols + (size_t)c * cs + ob, 4);
        acc[r][c] += (dw * dx) * (float)hsum8(s[r][c]);
      }
    }
  }
  for (int r = 0; r < nl; r++)
    for (int c = 0; c < C; c++) dst[c][off + r * ro] = acc[r][c];
}

/* 8 bf16 at p as floats (exact). */
VELO_AVX2 static VELO_INLINE __m256 bf16x8(const void *p) {
  const __m128i h = _mm_loadu_si128((const __m128i *)p);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* One tile of BF16 weights: R rows (as tile_q8k) x C columns of K
 * elements; 8 lanes per output as velo_dot_bf16_ref. */
VELO_AVX2 static VELO_INLINE void tile_bf16(const char *w, size_t rs, int nl, const char *cols,
                                            size_t cs, int64_t K, float *const *dst,
                                            int64_t off, int64_t ro, const int R, const int C) {
  const char *row[4];
  for (int r = 0; r < R; r++) row[r] = w + (size_t)(r < nl ? r : nl - 1) * rs;
  __m256 acc[4][4];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[4];
    for (int r = 0; r < R; r++) {
      if ((k & 31) == 0) _mm_prefetch(row[r] + 2 * k + PREFETCH_AHEAD, _MM_HINT_T0);
      wv[r] = bf16x8(row[r] + 2 * k);
    }
    for (int c = 0; c < C; c++) {
      const __m256 x = bf16x8(cols + (size_t)c * cs + 2 * k);
      for (int r = 0; r < R; r++) acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(wv[r], x));
    }
  }
  if (k < K) { /* lanes 0..K-k-1 only: the other lanes must not even add +0 */
    const int n = (int)(K - k);
    const __m256 mask = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    uint16_t t[8] = {0};
    __m256 wv[4];
    for (int r = 0; r < R; r++) {
      memcpy(t, row[r] + 2 * k, 2 * (size_t)n);
      wv[r] = bf16x8(t);
    }
    for (int c = 0; c < C; c++) {
      memcpy(t, cols + (size_t)c * cs + 2 * k, 2 * (size_t)n);
      const __m256 x = bf16x8(t);
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

/* Dispatches one tile of lanes rows x C columns to the format's kernel. */
VELO_AVX2 static VELO_INLINE void tile_any(velo_dtype wt, const char *w, size_t rs, int nl,
                                           const char *cols, size_t cs, int64_t K,
                                           float *const *dst, int64_t off, int64_t ro,
                                           const int C) {
  switch (wt) {
    case VELO_DTYPE_Q4_1:
      tile32(F_Q4_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q5_1:
      tile32(F_Q5_1, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q5_0:
      tile32(F_Q5_0, w, rs, nl, cols, cs, K / 32, dst, off, ro, C);
      break;
    case VELO_DTYPE_Q8_K:
      tile_q8k(w, rs, nl, cols, cs, K / VELO_QK_K, dst, off, ro, 4, C);
      break;
    default:
      tile_bf16(w, rs, nl, cols, cs, K, dst, off, ro, 4, C);
      break;
  }
}

/* Rows of a tile (lanes) and the widest column tile, per format. */
static int tile_rows(velo_dtype wt) {
  return wt == VELO_DTYPE_Q8_K || wt == VELO_DTYPE_BF16 ? 4 : 8;
}
static int tile_cols(velo_dtype wt) {
  return wt == VELO_DTYPE_Q8_K ? 2 : wt == VELO_DTYPE_BF16 ? 3 : 4;
}

/* All columns against one tile of rows: widest column tiles, then the
 * rest. */
VELO_AVX2 static void rows_all_cols(velo_dtype wt, const char *w, size_t rs, int nl,
                                    const char *cols, size_t cs, int64_t nc, int64_t K,
                                    float *const *dst, int64_t off, int64_t ro) {
  const int cmax = tile_cols(wt);
  int64_t c = 0;
  for (; c + cmax <= nc; c += cmax) {
    if (cmax == 4)
      tile_any(wt, w, rs, nl, cols + c * cs, cs, K, dst + c, off, ro, 4);
    else if (cmax == 3)
      tile_any(wt, w, rs, nl, cols + c * cs, cs, K, dst + c, off, ro, 3);
    else
      tile_any(wt, w, rs, nl, cols + c * cs, cs, K, dst + c, off, ro, 2);
  }
  const char *cc = cols + c * cs;
  float *const *dc = dst + c;
  switch (nc - c) {
    case 3:
      tile_any(wt, w, rs, nl, cc, cs, K, dc, off, ro, 3);
      break;
    case 2:
      tile_any(wt, w, rs, nl, cc, cs, K, dc, off, ro, 2);
      break;
    case 1:
      tile_any(wt, w, rs, nl, cc, cs, K, dc, off, ro, 1);
      break;
    default:
      break;
  }
}

/* See act_simd.h.  Rows are cut into L equal runs (L = the tile's rows)
 * and tile i takes row i of each run, so that the weights stream as L long
 * sequential reads; the nr % L rows left form one last tile of adjacent
 * rows. */
VELO_AVX2 bool velo_mul_mat_qx_avx2(VELO_ACT_MM_ARGS) {
  if (wt != VELO_DTYPE_Q4_1 && wt != VELO_DTYPE_Q5_1 && wt != VELO_DTYPE_Q5_0 &&
      wt != VELO_DTYPE_BF16 && wt != VELO_DTYPE_Q8_K)
    return false;
  const int L = tile_rows(wt);
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

/* See act_simd.h: no AVX2 kernels in this build. */
bool velo_mul_mat_qx_avx2(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}

#endif
