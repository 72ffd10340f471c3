/*
 * vec_avx512.c - the AVX-512 variant of the CPU vector primitives: the
 * integer block matrix kernel for Q8_0 and Q4_0 weights (and the
 * preparation of its activation columns) on 512-bit registers with VNNI;
 * the float dot products and the quantizer are the AVX2 variant's.
 *
 * The kernel performs exactly the float operations of the definition in
 * cpu_kernels.h, so it matches the portable C and AVX2 variants to the bit:
 * one zmm accumulator per output holds the 16 lanes, and each step takes a
 * group of four blocks.  Their weights unpack into two registers of
 * unsigned bytes u = v + off (elements 0..15 of the four blocks, then
 * 16..31); two vpdpbusd add u times the record's two activation vectors to
 * its bias -off * (lane sum of the quants), which leaves the exact partial
 * sums S; then one vfmadd231ps with the scales d_w * d_x in their lanes.
 * Weight rows are unpacked once per step and used for every column of a
 * tile of 4 rows x up to 4 columns.
 *
 * Compiled for AVX-512 through target attributes (the rest of the library
 * stays baseline x86-64) and reached only through the table, which is
 * handed out only after a run-time CPUID/XGETBV check.
 */
#include "vec_avx512.h"
#include "act_simd.h"
#include "vec_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

#define VELO_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define VELO_INLINE inline __attribute__((always_inline))

/* The 16 lanes of a group's scales: [d_0 x4, d_1 x4, d_2 x4, d_3 x4]. */
VELO_AVX512 static VELO_INLINE __m512 group_lanes(__m128 d) {
  const __m512i pattern = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(pattern, _mm512_castps128_ps512(d));
}

/* See cpu_kernels.h (qcol_prepare). */
VELO_AVX512 static void qcol_prepare_avx512(velo_dtype wt, const float *x, int64_t K,
                                            void *col) {
  const int64_t nb = K / VELO_QK8_0;
  const __m512i off = _mm512_set1_epi8(wt == VELO_DTYPE_Q8_0 ? (char)0x80 : 8); /* u8 128, 8 */
  for (int64_t b = 0; b < nb; b += VELO_QCOL_GROUP) {
    velo_block_q8_0 xb[VELO_QCOL_GROUP];
    const int n = (int)(nb - b < VELO_QCOL_GROUP ? nb - b : VELO_QCOL_GROUP);
    memset(xb, 0, sizeof xb); /* missing blocks are all zero */
    velo_quantize_row_q8_0_avx2(x + b * VELO_QK8_0, xb, 32 * n);
    char *rec = (char *)col + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
    const __m512i z01 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)xb[0].qs)),
        _mm256_loadu_si256((const __m256i *)xb[1].qs), 1);
    const __m512i z23 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)xb[2].qs)),
        _mm256_loadu_si256((const __m256i *)xb[3].qs), 1);
    /* 128-bit quarters: quants 0..15 of blocks 0..3, then 16..31 */
    const __m512i q0 = _mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i q1 = _mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(3, 1, 3, 1));
    const __m512i sums =
        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), off, q0), off, q1);
    _mm512_store_si512(rec, q0);
    _mm512_store_si512(rec + 64, q1);
    _mm512_store_si512(rec + 128, _mm512_sub_epi32(_mm512_setzero_si512(), sums));
    uint16_t hd[4] = {xb[0].d, xb[1].d, xb[2].d, xb[3].d};
    uint64_t h;
    memcpy(&h, hd, sizeof h);
    _mm512_store_ps(rec + 192, group_lanes(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h))));
  }
}

/* Reduces the 16 lanes in the order of velo_lanes_sum16. */
VELO_AVX512 static VELO_INLINE float reduce16(__m512 a) {
  __m256 t = _mm256_add_ps(_mm512_castps512_ps256(a),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  __m128 r = _mm_add_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

/* Bytes ahead of the group being unpacked that each weight row stream is
 * prefetched (a prefetch past a row's end falls on the next row of the
 * same stream; past the buffer it is dropped).  Measured on decode-sized
 * products: 2048 against none, 512, 1024 and 1536, best or equal at
 * M = 1 and ~25% faster at M = 8, where the hardware prefetcher alone
 * falls behind. */
#define PREFETCH_AHEAD 2048

/* Unpacks a group of n (1..4; a constant 4 in the main loop) blocks of a
 * weight row at blk into unsigned bytes u = v + off: *lo gets elements
 * 0..15 of each block (bytes 16k..16k+15: block k), *hi elements 16..31,
 * and *sw the blocks' scales in their lanes (4k..4k+3).  Missing blocks
 * are zeros.  Also prefetches the row PREFETCH_AHEAD bytes on.  (Plain
 * 16/32-byte loads: a 64-byte masked load and a word permute take fewer
 * instructions, but measured slower on weights streaming from memory.) */
VELO_AVX512 static VELO_INLINE void unpack(const bool q8, const char *blk, int n, __m512i *lo,
                                           __m512i *hi, __m512 *sw) {
  const size_t bb = q8 ? sizeof(velo_block_q8_0) : sizeof(velo_block_q4_0);
  for (size_t o = 0; o < 4 * bb; o += 64) _mm_prefetch(blk + PREFETCH_AHEAD + o, _MM_HINT_T0);
  uint64_t h = 0;
  for (int k = 0; k < n; k++) {
    uint16_t d;
    memcpy(&d, blk + k * bb, 2);
    h |= (uint64_t)d << (16 * k);
  }
  *sw = group_lanes(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h)));
  if (q8) { /* int8 quants; the xor with 0x80 adds 128 */
    __m256i a[4];
    for (int k = 0; k < 4; k++)
      a[k] = k < n ? _mm256_loadu_si256((const __m256i *)(blk + k * bb + 2))
                   : _mm256_setzero_si256();
    const __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(a[0]), a[1], 1);
    const __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(a[2]), a[3], 1);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    *lo = _mm512_xor_si512(_mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(2, 0, 2, 0)), flip);
    *hi = _mm512_xor_si512(_mm512_shuffle_i64x2(z01, z23, _MM_SHUFFLE(3, 1, 3, 1)), flip);
  } else { /* nibbles: the low ones are elements 0..15, the high ones 16..31 */
    __m128i qk[4];
    for (int k = 0; k < 4; k++)
      qk[k] = k < n ? _mm_loadu_si128((const __m128i *)(blk + k * bb + 2)) : _mm_setzero_si128();
    __m512i q = _mm512_castsi128_si512(qk[0]);
    q = _mm512_inserti32x4(q, qk[1], 1);
    q = _mm512_inserti32x4(q, qk[2], 2);
    q = _mm512_inserti32x4(q, qk[3], 3);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    *lo = _mm512_and_si512(q, low4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
  }
}

/* One step of a tile: the group of n blocks starting at block b, for R
 * rows and C columns.  Each output's int32 lanes take the low halves times
 * the record's first quant vector and the high halves times the second,
 * from the bias; then one fused multiply-add with the scales. */
VELO_AVX512 static VELO_INLINE void step(const bool q8, const char *w, size_t rs,
                                         const char *cols, size_t cs, int64_t b, int n,
                                         __m512 acc[4][4], const int R, const int C) {
  const size_t bb = q8 ? sizeof(velo_block_q8_0) : sizeof(velo_block_q4_0);
  const char *rec0 = cols + (size_t)(b / VELO_QCOL_GROUP) * VELO_QCOL_RECORD_BYTES;
  __m512i lo[4], hi[4];
  __m512 sw[4];
  for (int r = 0; r < R; r++)
    unpack(q8, w + (size_t)r * rs + (size_t)b * bb, n, &lo[r], &hi[r], &sw[r]);
  for (int c = 0; c < C; c++) {
    const char *rec = rec0 + (size_t)c * cs;
    const __m512i xlo = _mm512_load_si512(rec), xhi = _mm512_load_si512(rec + 64);
    const __m512i bias = _mm512_load_si512(rec + 128);
    const __m512 dx = _mm512_load_ps(rec + 192);
    for (int r = 0; r < R; r++) {
      const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(bias, lo[r], xlo), hi[r], xhi);
      acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(sw[r], dx), _mm512_cvtepi32_ps(s), acc[r][c]);
    }
  }
}

/* One tile: R weight rows x C prepared columns over the whole K.  Row k of
 * the tile starts at w + k*rs, and its outputs go to dst[c][off + k*ro].
 * R and C are constants after inlining, so the arrays stay in registers. */
VELO_AVX512 static VELO_INLINE void tile(const bool q8, const char *w, size_t rs,
                                         const char *cols, size_t cs, int64_t K,
                                         float *const *dst, int64_t off, int64_t ro,
                                         const int R, const int C) {
  const int64_t nb = K / 32;
  __m512 acc[4][4];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + VELO_QCOL_GROUP <= nb; b += VELO_QCOL_GROUP)
    step(q8, w, rs, cols, cs, b, VELO_QCOL_GROUP, acc, R, C);
  if (b < nb) step(q8, w, rs, cols, cs, b, (int)(nb - b), acc, R, C);
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) dst[c][off + r * ro] = reduce16(acc[r][c]);
}

/* All columns for one tile of R rows: R x CMAX column tiles, then one of
 * R x the rest. */
VELO_AVX512 static VELO_INLINE void rows_tile(const bool q8, const char *w, size_t rs,
                                              const char *cols, size_t cs, int64_t nc,
                                              int64_t K, float *const *dst, int64_t off,
                                              int64_t ro, const int R, const int CMAX) {
  int64_t c = 0;
  for (; c + CMAX <= nc; c += CMAX)
    tile(q8, w, rs, cols + c * cs, cs, K, dst + c, off, ro, R, CMAX);
  const char *cc = cols + c * cs;
  float *const *dc = dst + c;
  switch (nc - c) {
#define REST_(n)                                    \
  case n:                                           \
    tile(q8, w, rs, cc, cs, K, dc, off, ro, R, n); \
    break;
    REST_(3) REST_(2) REST_(1)
#undef REST_
    default:
      break;
  }
}

/* mul_mat_q for one weight dtype, in tiles of 4 rows x 4 columns (2 rows x
 * 8 columns, which unpacks each weight group for more outputs, measured
 * equal at M = 8 and 25-60% slower from M = 16 on).  The rows are cut into
 * 4 equal runs (and nr % 4 single rows at the end); tile i takes row i of
 * each run, so the weights are read as 4 long sequential streams, which
 * the prefetchers follow (4 adjacent rows would be 4 streams of one row
 * each).  Every output gets the same arithmetic in any tile. */
VELO_AVX512 static VELO_INLINE void mul_mat_t(const bool q8, const char *w, size_t ws,
                                              int64_t nr, const char *cols, size_t cs,
                                              int64_t nc, int64_t K, float *const *dst,
                                              int64_t off) {
  const int64_t q = nr / 4;
  for (int64_t i = 0; i < q; i++)
    rows_tile(q8, w + i * ws, q * ws, cols, cs, nc, K, dst, off + i, q, 4, 4);
  for (int64_t r = 4 * q; r < nr; r++)
    rows_tile(q8, w + r * ws, ws, cols, cs, nc, K, dst, off + r, 1, 1, 4);
}

/* See cpu_kernels.h (mul_mat_q). */
VELO_AVX512 static void mul_mat_q_avx512(velo_dtype wt, const void *w, size_t w_stride,
                                         int64_t nr, const void *cols, size_t col_stride,
                                         int64_t nc, int64_t K, float *const *dst, int64_t off) {
  if (wt == VELO_DTYPE_Q8_0)
    mul_mat_t(true, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
  else
    mul_mat_t(false, w, w_stride, nr, cols, col_stride, nc, K, dst, off);
}

static const velo_cpu_vec avx512_vec = {
    .isa = VELO_CPU_ISA_AVX512,
    .name = "AVX-512",
    .dot_f32 = velo_dot_f32_avx2,
    .dot_f16 = velo_dot_f16_avx2,
    .dot_f16_f32 = velo_dot_f16_f32_avx2,
    .fp32_to_fp16_row = velo_fp32_to_fp16_row_avx2,
    .quantize_row_q8_0 = velo_quantize_row_q8_0_avx2,
    .qcol_prepare = qcol_prepare_avx512,
    .mul_mat_q = mul_mat_q_avx512,
    .mul_mat_act = velo_mul_mat_act_avx512,
};

/* True when the CPU has AVX-512 F, BW, VL and VNNI (CPUID leaf 7) and the
 * OS saves the opmask and ZMM state (XCR0 bits 5..7), besides what the AVX2
 * variant needs. */
static bool cpu_has_avx512_vnni(void) {
  if (!velo_cpu_has_avx2_fma_f16c()) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const unsigned f = 1u << 16, bw = 1u << 30, vl = 1u << 31, vnni = 1u << 11;
  if ((b & (f | bw | vl)) != (f | bw | vl) || !(c & vnni)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & 0xe6u) == 0xe6u; /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM */
}

/* See vec_avx512.h. */
const velo_cpu_vec *velo_cpu_vec_avx512(void) {
  return cpu_has_avx512_vnni() ? &avx512_vec : NULL;
}

#else /* not x86-64 GCC/Clang */

/* See vec_avx512.h. */
const velo_cpu_vec *velo_cpu_vec_avx512(void) { return NULL; }

#endif
