/*
 * kq_avx512.c - AVX-512 (F, BW, VL, VNNI) matrix kernels for the K-quants
 * (Q4_K, Q5_K, Q6_K) on Q8_K activation columns (contract: act_simd.h and
 * mul_mat_act in cpu_kernels.h).
 *
 * Every output equals velo_act_dot to the bit.  The portable dots take, per
 * super-block, exact int32 sums si (and sm for Q4_K/Q5_K) and then fixed
 * float operations; these kernels only compute si and sm faster and then do
 * the same float operations in the same order, several outputs side by side
 * in the lanes of one register (a lane's operations are those of the scalar
 * code, -ffp-contract=off, no FMA).
 *
 * Integer part, per super-block and output: the 256 weight quants unpack
 * into four registers of unsigned bytes, each meeting 64 consecutive Q8_K
 * quants: Q4_K/Q5_K step k holds the low nibbles of qs chunk k (sub-block
 * 2k) then its high nibbles (2k+1), Q6_K step k holds elements 64k..64k+63
 * as unsigned 6-bit q.  vpmaddubsw makes int16 pair sums (at most 2*63*128
 * = 16128, so it never saturates) and vpdpwssd multiplies them by the
 * sub-block scales (int16, one per lane) into int32 lanes.  Q6_K's q - 32
 * is q times x minus 32 * (the Q8_K bsums) per sub-block; the mins sum sm of
 * Q4_K/Q5_K is vpmaddwd of the bsums with the mins.  All partial sums are
 * bounded well inside int32, so the lane sums are the portable si and sm
 * exactly, whatever the order of additions.
 *
 * Tiles: R weight rows x C columns.  Each weight super-block is unpacked
 * once per tile and used for all C columns; each column's quants are loaded
 * once per step and used for all R rows.  Decode (one column) runs 4 rows
 * from 4 long sequential streams with software prefetch, as vec_avx512.c.
 *
 * Compiled for AVX-512 through target attributes and reached only through
 * the AVX-512 table, which is handed out after a CPUID check.
 */
#include "act_simd.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#define VELO_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define VELO_INLINE inline __attribute__((always_inline))

/* Bytes ahead of the super-block being unpacked that each weight row
 * stream is prefetched (as PREFETCH_AHEAD in vec_avx512.c). */
#define PREFETCH_AHEAD 2048

enum { F_Q4 = 0, F_Q5 = 1, F_Q6 = 2 };
enum { MAX_R = 4, MAX_C = 4 };

/* Bytes of a weight super-block of format f. */
static VELO_INLINE size_t block_bytes(const int f) {
  return f == F_Q4 ? sizeof(velo_block_q4_K)
                   : f == F_Q5 ? sizeof(velo_block_q5_K) : sizeof(velo_block_q6_K);
}

/* Per super-block row data: the 16 int16 scale table (Q4_K/Q5_K: the 8
 * scales then the 8 mins; Q6_K: the 16 scales), the int16 partner of the
 * Q8_K bsums (Q4_K/Q5_K: each min twice, for sm; Q6_K: -32 * scale, the
 * correction of si), and the fp16 bits of d (low half) and dmin (high half;
 * 0 for Q6_K). */
typedef struct row_blk {
  __m512i tbl;
  __m256i aux;
  uint32_t dh;
} row_blk;

/* The 8 scales then the 8 mins (6 bits each, velo_k4_scale_min) of the
 * Q4_K/Q5_K super-block at blk as 16 bytes: bytes j < 4 are the low 6 bits
 * of q[j] (scales) and q[j+4] (mins); for j >= 4 the nibbles of q[j+4] go
 * below the top 2 bits of q[j-4] (scales) or q[j] (mins). */
VELO_AVX512 static VELO_INLINE __m128i k4_scales_mins(const char *blk) {
  const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 4)); /* 12 bytes and 4 of qh/qs */
  const __m128i t1 = _mm_shuffle_epi8(q, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9,
                                                       10, 11));
  const __m128i t2 = _mm_shuffle_epi8(q, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1,
                                                       4, 5, 6, 7));
  const __m128i lo = _mm_and_si128(t1, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63,
                                                     63, 0, 0, 0, 0));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(t1, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                                        0, 0, 0, 15, 15, 15, 15));
  const __m128i top = _mm_and_si128(_mm_srli_epi16(t2, 2),
                                    _mm_setr_epi8(0, 0, 0, 0, 48, 48, 48, 48, 0, 0, 0, 0, 48, 48,
                                                  48, 48));
  return _mm_or_si128(_mm_or_si128(lo, hi), top);
}

/* Reads the scales of the super-block at blk (format f) into *rb, and
 * prefetches the row PREFETCH_AHEAD bytes on. */
VELO_AVX512 static VELO_INLINE void row_prep(const int f, const char *blk, row_blk *rb) {
  for (size_t o = 0; o < block_bytes(f); o += 64)
    _mm_prefetch(blk + PREFETCH_AHEAD + o, _MM_HINT_T0);
  if (f == F_Q6) {
    const __m256i s = _mm256_cvtepi8_epi16(
        _mm_loadu_si128((const __m128i *)(blk + offsetof(velo_block_q6_K, scales))));
    rb->tbl = _mm512_zextsi256_si512(s);
    rb->aux = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s, 5));
    uint16_t d;
    memcpy(&d, blk + offsetof(velo_block_q6_K, d), 2);
    rb->dh = d;
    return;
  }
  const __m256i t = _mm256_cvtepu8_epi16(k4_scales_mins(blk));
  rb->tbl = _mm512_zextsi256_si512(t);
  const __m256i mdup =
      _mm256_setr_epi16(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  rb->aux = _mm256_permutexvar_epi16(mdup, t);
  memcpy(&rb->dh, blk, 4);
}

/* vpermw indices of the scale table for step k: Q4_K/Q5_K words 0..15
 * take scale 2k, 16..31 scale 2k+1; Q6_K words 8g..8g+7 take scale 4k+g. */
#define W16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
#define W8(v) v, v, v, v, v, v, v, v
static const int16_t perm_k4[4][32] __attribute__((aligned(64))) = {
    {W16(0), W16(1)}, {W16(2), W16(3)}, {W16(4), W16(5)}, {W16(6), W16(7)}};
static const int16_t perm_q6[4][32] __attribute__((aligned(64))) = {
    {W8(0), W8(1), W8(2), W8(3)},
    {W8(4), W8(5), W8(6), W8(7)},
    {W8(8), W8(9), W8(10), W8(11)},
    {W8(12), W8(13), W8(14), W8(15)}};
#undef W16
#undef W8

/* Step k (0..3) of the super-block at blk: *w gets the 64 unsigned weight
 * quants that meet Q8_K quants 64k..64k+63, *s the int16 scale of each
 * int16 pair sum of vpmaddubsw. */
VELO_AVX512 static VELO_INLINE void wstep(const int f, const char *blk, const row_blk *rb,
                                          const int k, __m512i *w, __m512i *s) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  if (f == F_Q6) {
    const int h = k >> 1;
    const __m512i ab = _mm512_loadu_si512(blk + 64 * h);
    const __m512i hh = _mm512_broadcast_i64x4(
        _mm256_loadu_si256((const __m256i *)(blk + offsetof(velo_block_q6_K, qh) + 32 * h)));
    __m512i nib, hs;
    if ((k & 1) == 0) { /* r = 0 | 1: low nibbles; qh bits 0-1 | 2-3 to 4-5 */
      nib = _mm512_and_si512(ab, low4);
      hs = _mm512_sllv_epi16(hh, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
    } else { /* r = 2 | 3: high nibbles; qh bits 4-5 | 6-7 to 4-5 */
      nib = _mm512_and_si512(_mm512_srli_epi16(ab, 4), low4);
      hs = _mm512_srlv_epi16(hh, _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1));
    }
    *w = _mm512_ternarylogic_epi32(nib, hs, _mm512_set1_epi8(0x30), 0xf8); /* a | (b & c) */
    *s = _mm512_permutexvar_epi16(_mm512_loadu_si512(perm_q6[k]), rb->tbl);
    return;
  }
  const size_t qs = f == F_Q4 ? offsetof(velo_block_q4_K, qs) : offsetof(velo_block_q5_K, qs);
  const __m512i q =
      _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + qs + 32 * k)));
  __m512i v = _mm512_and_si512(
      _mm512_srlv_epi16(q, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1)),
      low4);
  if (f == F_Q5) { /* the fifth bit: bit 2k (low nibbles) or 2k+1 (high) of qh[l] */
    const __m512i qh = _mm512_broadcast_i64x4(
        _mm256_loadu_si256((const __m256i *)(blk + offsetof(velo_block_q5_K, qh))));
    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * k))),
                                           _mm256_set1_epi8((char)(2 << (2 * k))), 1);
    v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qh, sel), v, _mm512_set1_epi8(16));
  }
  *w = v;
  *s = _mm512_permutexvar_epi16(_mm512_loadu_si512(perm_k4[k]), rb->tbl);
}

/* Lane i of the result is the sum of the 8 int32 lanes of v[i]. */
VELO_AVX512 static VELO_INLINE __m256i hsum8x8(const __m256i v[8]) {
  const __m256i a01 = _mm256_hadd_epi32(v[0], v[1]), a23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i a45 = _mm256_hadd_epi32(v[4], v[5]), a67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i b0 = _mm256_hadd_epi32(a01, a23), b1 = _mm256_hadd_epi32(a45, a67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20),
                          _mm256_permute2x128_si256(b0, b1, 0x31));
}

/* Lane o of the result (o < N; N = 8 or 16) is the sum of the 16 int32
 * lanes of v[o], v having N entries: a transposing tree of unpacks and
 * 128-bit shuffles (integer additions, so their order does not matter). */
VELO_AVX512 static VELO_INLINE __m512i hsum16xN(const __m512i *v, const int N) {
  __m512i u[8], t[4], x[2];
  for (int p = 0; p < N / 2; p++) /* 128-bit lane k: v[2p] in words 0, 2; v[2p+1] in 1, 3 */
    u[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                            _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
  for (int q = 0; q < N / 4; q++) /* 128-bit lane k: v[4q + j] in word j */
    t[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * q], u[2 * q + 1]),
                            _mm512_unpackhi_epi64(u[2 * q], u[2 * q + 1]));
  for (int r = 0; r < N / 8; r++) /* lanes: 8r+0..3 twice, then 8r+4..7 twice */
    x[r] = _mm512_add_epi32(_mm512_shuffle_i64x2(t[2 * r], t[2 * r + 1], 0x88),
                            _mm512_shuffle_i64x2(t[2 * r], t[2 * r + 1], 0xdd));
  const __m512i y = N == 16 ? x[1] : x[0];
  return _mm512_add_epi32(_mm512_shuffle_i64x2(x[0], y, 0x88), _mm512_shuffle_i64x2(x[0], y, 0xdd));
}

/* One tile: R weight rows x C columns over the whole K.  Row i of the tile
 * starts at w + i*rs and its outputs go to dst[c][off + i*ro].  Output
 * o = i*C + c sits in float lane o of one accumulator (xmm, ymm or zmm). */
VELO_AVX512 static VELO_INLINE void tile(const int f, const char *w, size_t rs, const char *cols,
                                         size_t cs, int64_t K, float *const *dst, int64_t off,
                                         int64_t ro, const int R, const int C) {
  const int64_t nb = K / VELO_QK_K;
  const size_t bb = block_bytes(f);
  const int n = R * C;
  __m512 facc16 = _mm512_setzero_ps();
  __m256 facc8 = _mm256_setzero_ps();
  __m128 facc4 = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    row_blk rb[MAX_R];
    for (int i = 0; i < R; i++) row_prep(f, w + (size_t)i * rs + (size_t)b * bb, &rb[i]);
    const char *xb[MAX_C];
    for (int c = 0; c < C; c++) xb[c] = cols + (size_t)c * cs + (size_t)b * sizeof(velo_block_q8_K);
    __m512i acc[MAX_R][MAX_C];
    for (int i = 0; i < R; i++)
      for (int c = 0; c < C; c++) acc[i][c] = _mm512_setzero_si512();
    for (int k = 0; k < 4; k++) {
      __m512i wz[MAX_R], sz[MAX_R];
      for (int i = 0; i < R; i++)
        wstep(f, w + (size_t)i * rs + (size_t)b * bb, &rb[i], k, &wz[i], &sz[i]);
      for (int c = 0; c < C; c++) {
        const __m512i x = _mm512_loadu_si512(xb[c] + 4 + 64 * k);
        for (int i = 0; i < R; i++)
          acc[i][c] = _mm512_dpwssd_epi32(acc[i][c], _mm512_maddubs_epi16(wz[i], x), sz[i]);
      }
    }
    /* si of each output as 16 (si16) or 8 (si) int32 lanes, sm as 8 */
    __m512i si16[16];
    __m256i si[16], sm[16];
    for (int c = 0; c < C; c++) {
      const __m256i bs = _mm256_loadu_si256((const __m256i *)(xb[c] + 4 + VELO_QK_K));
      for (int i = 0; i < R; i++) {
        const __m256i a = _mm256_madd_epi16(bs, rb[i].aux);
        if (n > 4) {
          si16[i * C + c] =
              f == F_Q6 ? _mm512_add_epi32(acc[i][c], _mm512_zextsi256_si512(a)) : acc[i][c];
        } else {
          __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(acc[i][c]),
                                       _mm512_extracti64x4_epi64(acc[i][c], 1));
          if (f == F_Q6) s = _mm256_add_epi32(s, a);
          si[i * C + c] = s;
        }
        sm[i * C + c] = a;
      }
    }
    /* the float operations of the portable dot, lane by lane: D has d, dmin
     * of row i in lanes 2i, 2i+1 (F16C converts exactly), X the columns'
     * scales; constant permutations put them in the outputs' lanes */
    float xd[MAX_C];
    for (int c = 0; c < C; c++) memcpy(&xd[c], xb[c], sizeof(float));
#define H_(i) ((i) < R ? (int)rb[(i) < R ? (i) : 0].dh : 0)
#define X_(c) ((c) < C ? xd[(c) < C ? (c) : 0] : 0.0f)
    const __m256 D = _mm256_cvtph_ps(_mm_setr_epi32(H_(0), H_(1), H_(2), H_(3)));
    const __m256 X = _mm256_castps128_ps256(_mm_setr_ps(X_(0), X_(1), X_(2), X_(3)));
#undef H_
#undef X_
#define O_(o) ((o) < n ? (o) : 0)
#define L8_(F, o) F(o), F(o + 1), F(o + 2), F(o + 3), F(o + 4), F(o + 5), F(o + 6), F(o + 7)
#define DI_(o) (2 * (O_(o) / C))
#define MI_(o) (2 * (O_(o) / C) + 1)
#define XI_(o) (O_(o) % C)
#define R16_(F)                                                                             \
  F(15), F(14), F(13), F(12), F(11), F(10), F(9), F(8), F(7), F(6), F(5), F(4), F(3), F(2), \
      F(1), F(0)
    if (n <= 4) { /* lanes 0..3: the si terms of outputs 0..3; 4..7: the sm terms */
      __m256i v[8];
      for (int o = 0; o < 4; o++) {
        v[o] = o < n ? si[o] : _mm256_setzero_si256();
        v[4 + o] = o < n && f != F_Q6 ? sm[o] : _mm256_setzero_si256();
      }
      const __m256 fs = _mm256_cvtepi32_ps(hsum8x8(v));
      const __m256i id = _mm256_setr_epi32(DI_(0), DI_(1), DI_(2), DI_(3), MI_(0), MI_(1), MI_(2),
                                           MI_(3));
      const __m256i ix = _mm256_setr_epi32(XI_(0), XI_(1), XI_(2), XI_(3), XI_(0), XI_(1), XI_(2),
                                           XI_(3));
      const __m256 t = _mm256_mul_ps(
          _mm256_mul_ps(_mm256_permutevar8x32_ps(D, id), _mm256_permutevar8x32_ps(X, ix)), fs);
      facc4 = _mm_add_ps(facc4, _mm256_castps256_ps128(t));
      if (f != F_Q6) facc4 = _mm_sub_ps(facc4, _mm256_extractf128_ps(t, 1));
    } else { /* lane o: output o, in ymm (n <= 8) or zmm registers */
      const int N = n <= 8 ? 8 : 16;
      __m512i v[16];
      __m256i u[16];
      for (int o = 0; o < N; o++) {
        v[o] = o < n ? si16[o] : _mm512_setzero_si512();
        u[o] = o < n ? sm[o] : _mm256_setzero_si256();
      }
      const __m512i isi = hsum16xN(v, N);
      if (N == 8) {
        const __m256 xl = _mm256_permutevar8x32_ps(X, _mm256_setr_epi32(L8_(XI_, 0)));
        const __m256 dl = _mm256_permutevar8x32_ps(D, _mm256_setr_epi32(L8_(DI_, 0)));
        const __m256 fs = _mm256_cvtepi32_ps(_mm512_castsi512_si256(isi));
        facc8 = _mm256_add_ps(facc8, _mm256_mul_ps(_mm256_mul_ps(dl, xl), fs));
        if (f != F_Q6) {
          const __m256 fm = _mm256_cvtepi32_ps(hsum8x8(u));
          const __m256 ml = _mm256_permutevar8x32_ps(D, _mm256_setr_epi32(L8_(MI_, 0)));
          facc8 = _mm256_sub_ps(facc8, _mm256_mul_ps(_mm256_mul_ps(ml, xl), fm));
        }
      } else {
        const __m512 X16 = _mm512_castps256_ps512(X), D16 = _mm512_castps256_ps512(D);
        const __m512 xl = _mm512_permutexvar_ps(
            _mm512_set_epi32(R16_(XI_)), X16);
        const __m512 dl = _mm512_permutexvar_ps(
            _mm512_set_epi32(R16_(DI_)), D16);
        facc16 = _mm512_add_ps(facc16, _mm512_mul_ps(_mm512_mul_ps(dl, xl), _mm512_cvtepi32_ps(isi)));
        if (f != F_Q6) {
          const __m512i ism = _mm512_inserti64x4(_mm512_castsi256_si512(hsum8x8(u)),
                                                 hsum8x8(u + 8), 1);
          const __m512 ml = _mm512_permutexvar_ps(
              _mm512_set_epi32(R16_(MI_)), D16);
          facc16 = _mm512_sub_ps(facc16, _mm512_mul_ps(_mm512_mul_ps(ml, xl), _mm512_cvtepi32_ps(ism)));
        }
      }
    }
#undef O_
#undef L8_
#undef DI_
#undef MI_
#undef XI_
#undef R16_
  }
  float out[16];
  if (n <= 4)
    _mm_storeu_ps(out, facc4);
  else if (n <= 8)
    _mm256_storeu_ps(out, facc8);
  else
    _mm512_storeu_ps(out, facc16);
  for (int o = 0; o < n; o++) dst[o % C][off + (o / C) * ro] = out[o];
}

/* Tile shapes: decode (one column) takes 4 rows at a time; more columns
 * take PF_R rows x PF_C columns: 4 x 4 measured fastest at 8 and 64
 * columns (against 4 x 2, 2 x 4, 2 x 2, 1 x 4 and 2 x 8; thread CPU time,
 * Zen 4, Q4_K 2048 x 5632). */
#ifndef PF_R
#define PF_R 4
#endif
#ifndef PF_C
#define PF_C 4
#endif
#define KQ_TARGET VELO_AVX512
#define KQ_ENTRY velo_mul_mat_kq_avx512
#include "kq_tiles.h"

#else /* not x86-64 GCC/Clang: no kernels, the table is never handed out */

/* See act_simd.h. */
bool velo_mul_mat_kq_avx512(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}

#endif
