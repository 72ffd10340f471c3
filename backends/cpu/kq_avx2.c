/*
 * kq_avx2.c - AVX2 (+FMA, F16C) matrix kernels for the K-quants (Q4_K,
 * Q5_K, Q6_K) on Q8_K activation columns (contract: act_simd.h and
 * mul_mat_act in cpu_kernels.h).
 *
 * Every output equals velo_act_dot to the bit.  The portable dots take, per
 * super-block, exact int32 sums si (and sm for Q4_K/Q5_K) and then fixed
 * float operations; these kernels only compute si and sm faster and then do
 * the same float operations in the same order, several outputs side by side
 * in the lanes of one register (a lane's operations are those of the scalar
 * code: -ffp-contract=off, no FMA).
 *
 * Integer part, per super-block and output, in 8 steps of 32 elements:
 * step j unpacks the 32 weight quants that meet Q8_K quants 32j..32j+31 as
 * unsigned bytes (Q4_K/Q5_K: sub-block j, the low or high nibbles of qs
 * chunk j/2; Q6_K: unsigned 6-bit q of sub-blocks 2j, 2j+1).  vpmaddubsw
 * makes int16 pair sums (at most 2*63*128 = 16128: never saturated) and
 * vpmaddwd multiplies them by the sub-block scales into int32 lanes.
 * Q6_K's q - 32 is q times x minus 32 * (the Q8_K bsums) per sub-block; the
 * mins sum sm of Q4_K/Q5_K is vpmaddwd of the bsums with the mins.  Every
 * partial sum stays well inside int32, so the lane sums are the portable si
 * and sm exactly, whatever the order of additions.
 *
 * Tiles: R weight rows x C columns; each unpacked weight step serves all C
 * columns and each column's quants all R rows.  Decode (one column) runs 4
 * rows from 4 long sequential streams with software prefetch.
 *
 * Compiled for AVX2 through target attributes and reached only through the
 * AVX2 and AVX-512 tables' mul_mat_act (act_simd.c) after a CPUID check.
 */
#include "act_simd.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#define VELO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define VELO_INLINE inline __attribute__((always_inline))

/* Bytes ahead of the super-block being unpacked that each weight row
 * stream is prefetched (as in vec_avx2.c). */
#define PREFETCH_AHEAD 2048

enum { F_Q4 = 0, F_Q5 = 1, F_Q6 = 2 };
enum { MAX_R = 4, MAX_C = 4 };

/* Bytes of a weight super-block of format f. */
static VELO_INLINE size_t block_bytes(const int f) {
  return f == F_Q4 ? sizeof(velo_block_q4_K)
                   : f == F_Q5 ? sizeof(velo_block_q5_K) : sizeof(velo_block_q6_K);
}

/* Per super-block row data: the scale table (Q4_K/Q5_K: the 8 scales as
 * int16 in both 128-bit lanes; Q6_K: the 16 int8 scales in both lanes),
 * the int16 partner of the Q8_K bsums (Q4_K/Q5_K: each min twice, for sm;
 * Q6_K: -32 * scale, the correction of si), and the fp16 bits of d (low
 * half) and dmin (high half; 0 for Q6_K). */
typedef struct row_blk {
  __m256i tbl;
  __m256i aux;
  uint32_t dh;
} row_blk;

/* The 8 scales then the 8 mins (6 bits each, velo_k4_scale_min) of the
 * Q4_K/Q5_K super-block at blk as 16 bytes: bytes j < 4 are the low 6 bits
 * of q[j] (scales) and q[j+4] (mins); for j >= 4 the nibbles of q[j+4] go
 * below the top 2 bits of q[j-4] (scales) or q[j] (mins). */
VELO_AVX2 static VELO_INLINE __m128i k4_scales_mins(const char *blk) {
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
VELO_AVX2 static VELO_INLINE void row_prep(const int f, const char *blk, row_blk *rb) {
  for (size_t o = 0; o < block_bytes(f); o += 64)
    _mm_prefetch(blk + PREFETCH_AHEAD + o, _MM_HINT_T0);
  if (f == F_Q6) {
    const __m128i s8 = _mm_loadu_si128((const __m128i *)(blk + offsetof(velo_block_q6_K, scales)));
    const __m256i s = _mm256_cvtepi8_epi16(s8);
    rb->tbl = _mm256_broadcastsi128_si256(s8);
    rb->aux = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s, 5));
    uint16_t d;
    memcpy(&d, blk + offsetof(velo_block_q6_K, d), 2);
    rb->dh = d;
    return;
  }
  const __m128i sm = k4_scales_mins(blk);
  rb->tbl = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
  rb->aux = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
  memcpy(&rb->dh, blk, 4);
}

/* vpshufb controls of the scale table for step j: Q4_K/Q5_K broadcast
 * int16 scale j; Q6_K puts int8 scale 2j in bytes 0..7 and 2j+1 in bytes
 * 8..15 (sign-extended to int16 after). */
#define B2(a, b) a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b
#define B8(v) v, v, v, v, v, v, v, v
static const uint8_t shuf_k4[8][32] __attribute__((aligned(32))) = {
    {B2(0, 1), B2(0, 1)},     {B2(2, 3), B2(2, 3)},     {B2(4, 5), B2(4, 5)},
    {B2(6, 7), B2(6, 7)},     {B2(8, 9), B2(8, 9)},     {B2(10, 11), B2(10, 11)},
    {B2(12, 13), B2(12, 13)}, {B2(14, 15), B2(14, 15)}};
static const uint8_t shuf_q6[8][16] __attribute__((aligned(16))) = {
    {B8(0), B8(1)},   {B8(2), B8(3)},   {B8(4), B8(5)},   {B8(6), B8(7)},
    {B8(8), B8(9)},   {B8(10), B8(11)}, {B8(12), B8(13)}, {B8(14), B8(15)}};
#undef B2
#undef B8

/* Step j (0..7) of the super-block at blk: *w gets the 32 unsigned weight
 * quants that meet Q8_K quants 32j..32j+31, *s the int16 scale of each
 * int16 pair sum of vpmaddubsw. */
VELO_AVX2 static VELO_INLINE void wstep(const int f, const char *blk, const row_blk *rb,
                                        const int j, __m256i *w, __m256i *s) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  if (f == F_Q6) { /* half h, run r: see q6_K_value in vec.c */
    const int h = j >> 2, r = j & 3;
    const __m256i ql = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32 * (r & 1)));
    const __m256i qh =
        _mm256_loadu_si256((const __m256i *)(blk + offsetof(velo_block_q6_K, qh) + 32 * h));
    const __m256i nib = r < 2 ? _mm256_and_si256(ql, low4)
                              : _mm256_and_si256(_mm256_srli_epi16(ql, 4), low4);
    /* qh bits 2r..2r+1 to bits 4..5 */
    const __m256i hs = r == 0   ? _mm256_slli_epi16(qh, 4)
                       : r == 1 ? _mm256_slli_epi16(qh, 2)
                       : r == 2 ? qh
                                : _mm256_srli_epi16(qh, 2);
    *w = _mm256_or_si256(nib, _mm256_and_si256(hs, _mm256_set1_epi8(0x30)));
    *s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm256_castsi256_si128(rb->tbl),
                                               _mm_load_si128((const __m128i *)shuf_q6[j])));
    return;
  }
  const size_t qs = f == F_Q4 ? offsetof(velo_block_q4_K, qs) : offsetof(velo_block_q5_K, qs);
  const __m256i q = _mm256_loadu_si256((const __m256i *)(blk + qs + 32 * (j >> 1)));
  __m256i v = j & 1 ? _mm256_and_si256(_mm256_srli_epi16(q, 4), low4) : _mm256_and_si256(q, low4);
  if (f == F_Q5) { /* the fifth bit: bit j of qh[l], moved to bit 4 */
    const __m256i qh =
        _mm256_loadu_si256((const __m256i *)(blk + offsetof(velo_block_q5_K, qh)));
    const __m256i hb = j < 4    ? _mm256_slli_epi16(qh, 4 - j)
                       : j == 4 ? qh
                                : _mm256_srli_epi16(qh, j - 4);
    v = _mm256_or_si256(v, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
  }
  *w = v;
  *s = _mm256_shuffle_epi8(rb->tbl, _mm256_load_si256((const __m256i *)shuf_k4[j]));
}

/* Lane i of the result is the sum of the 8 int32 lanes of v[i]. */
VELO_AVX2 static VELO_INLINE __m256i hsum8x8(const __m256i v[8]) {
  const __m256i a01 = _mm256_hadd_epi32(v[0], v[1]), a23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i a45 = _mm256_hadd_epi32(v[4], v[5]), a67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i b0 = _mm256_hadd_epi32(a01, a23), b1 = _mm256_hadd_epi32(a45, a67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20),
                          _mm256_permute2x128_si256(b0, b1, 0x31));
}

/* One tile: R weight rows x C columns over the whole K.  Row i of the tile
 * starts at w + i*rs and its outputs go to dst[c][off + i*ro].  Output
 * o = i*C + c sits in float lane o % 8 of accumulator o / 8 (for R*C <= 4:
 * lanes 0..3 of one). */
VELO_AVX2 static VELO_INLINE void tile(const int f, const char *w, size_t rs, const char *cols,
                                       size_t cs, int64_t K, float *const *dst, int64_t off,
                                       int64_t ro, const int R, const int C) {
  const int64_t nb = K / VELO_QK_K;
  const size_t bb = block_bytes(f);
  const int n = R * C, G = (n + 7) / 8;
  __m256 facc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  __m128 facc4 = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    row_blk rb[MAX_R];
    for (int i = 0; i < R; i++) row_prep(f, w + (size_t)i * rs + (size_t)b * bb, &rb[i]);
    const char *xb[MAX_C];
    for (int c = 0; c < C; c++) xb[c] = cols + (size_t)c * cs + (size_t)b * sizeof(velo_block_q8_K);
    __m256i acc[MAX_R][MAX_C];
    for (int i = 0; i < R; i++)
      for (int c = 0; c < C; c++) acc[i][c] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
      __m256i wy[MAX_R], sy[MAX_R];
      for (int i = 0; i < R; i++)
        wstep(f, w + (size_t)i * rs + (size_t)b * bb, &rb[i], j, &wy[i], &sy[i]);
      for (int c = 0; c < C; c++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xb[c] + 4 + 32 * j));
        for (int i = 0; i < R; i++)
          acc[i][c] = _mm256_add_epi32(
              acc[i][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wy[i], x), sy[i]));
      }
    }
    /* si, sm of each output as 8 int32 lanes */
    __m256i si[16], sm[16];
    for (int c = 0; c < C; c++) {
      const __m256i bs = _mm256_loadu_si256((const __m256i *)(xb[c] + 4 + VELO_QK_K));
      for (int i = 0; i < R; i++) {
        const __m256i a = _mm256_madd_epi16(bs, rb[i].aux);
        si[i * C + c] = f == F_Q6 ? _mm256_add_epi32(acc[i][c], a) : acc[i][c];
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
    } else {
      for (int g = 0; g < G; g++) {
        __m256i v[8], u[8];
        for (int l = 0; l < 8; l++) {
          const int o = 8 * g + l;
          v[l] = o < n ? si[o] : _mm256_setzero_si256();
          u[l] = o < n ? sm[o] : _mm256_setzero_si256();
        }
        const __m256 xl = _mm256_permutevar8x32_ps(X, _mm256_setr_epi32(L8_(XI_, 8 * g)));
        const __m256 fs = _mm256_cvtepi32_ps(hsum8x8(v));
        const __m256 dl = _mm256_permutevar8x32_ps(D, _mm256_setr_epi32(L8_(DI_, 8 * g)));
        facc[g] = _mm256_add_ps(facc[g], _mm256_mul_ps(_mm256_mul_ps(dl, xl), fs));
        if (f != F_Q6) {
          const __m256 fm = _mm256_cvtepi32_ps(hsum8x8(u));
          const __m256 ml = _mm256_permutevar8x32_ps(D, _mm256_setr_epi32(L8_(MI_, 8 * g)));
          facc[g] = _mm256_sub_ps(facc[g], _mm256_mul_ps(_mm256_mul_ps(ml, xl), fm));
        }
      }
    }
#undef O_
#undef L8_
#undef DI_
#undef MI_
#undef XI_
  }
  float out[16];
  if (n <= 4)
    _mm_storeu_ps(out, facc4);
  else
    for (int g = 0; g < G; g++) _mm256_storeu_ps(out + 8 * g, facc[g]);
  for (int o = 0; o < n; o++) dst[o % C][off + (o / C) * ro] = out[o];
}

/* Tile shapes: decode (one column) takes 4 rows at a time; more columns
 * take PF_R rows x PF_C columns: 2 x 4 measured fastest at 8 and 64
 * columns (against 4 x 2, 2 x 2, 1 x 4, 4 x 4 and 3 x 2: 16 ymm registers;
 * thread CPU time, Zen 4, Q4_K 2048 x 5632). */
#ifndef PF_R
#define PF_R 2
#endif
#ifndef PF_C
#define PF_C 4
#endif
#define KQ_TARGET VELO_AVX2
#define KQ_ENTRY velo_mul_mat_kq_avx2
#include "kq_tiles.h"

#else /* not x86-64 GCC/Clang: no kernels, the table is never handed out */

/* See act_simd.h. */
bool velo_mul_mat_kq_avx2(VELO_ACT_MM_ARGS) {
  (void)wt, (void)w, (void)w_stride, (void)nr, (void)cols, (void)col_stride, (void)nc, (void)K,
      (void)dst, (void)off;
  return false;
}

#endif
