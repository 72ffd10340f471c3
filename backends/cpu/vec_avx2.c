/*
 * vec_avx2.c - AVX2 + F16C versions of the CPU vector primitives.
 *
 * Each function gives exactly the bits of its portable reference in vec.c:
 *  - float dots keep 8 lanes (element k in lane k % 8), multiply then add
 *    (no FMA), and reduce the lanes with velo_lanes_sum8;
 *  - integer block dots compute the exact int32 sum per block with
 *    maddubs/madd, then accumulate (d_w*d_x)*(float)sumi in scalar float in
 *    block order, as the reference does;
 *  - quantization uses the same scalar d and id and rounds with
 *    _mm256_round_ps(nearest), which is nearbyintf under the default mode.
 * The functions are compiled for AVX2 through target attributes, so the rest
 * of the library stays baseline x86-64; they are reached only through the
 * table, which is handed out only after a run-time CPU check (CPUID).
 */
#include "vec_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

#define VELO_AVX2 __attribute__((target("avx2,f16c")))

/* Sum of the 8 int32 lanes of v (exact; the order does not matter). */
VELO_AVX2 static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

/* Exact int32 dot of 32 signed bytes a (any int8) with 32 signed bytes b
 * in [-127, 127]. */
VELO_AVX2 static inline int32_t dot_i8x32(__m256i a, __m256i b) {
  __m256i abs_a = _mm256_sign_epi8(a, a);    /* |a| as unsigned (128 for -128) */
  __m256i b_sgn = _mm256_sign_epi8(b, a);    /* b * sign(a) */
  __m256i p16 = _mm256_maddubs_epi16(abs_a, b_sgn); /* |pair| <= 2*128*127 */
  __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
  return hsum_epi32(p32);
}

/* See cpu_kernels.h (dot_f32). */
VELO_AVX2 static float dot_f32_avx2(const float *x, const float *y, int64_t n) {
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
VELO_AVX2 static float dot_f16_avx2(const uint16_t *x, const uint16_t *y, int64_t n) {
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
VELO_AVX2 static float dot_f16_f32_avx2(const uint16_t *x, const float *y, int64_t n) {
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
VELO_AVX2 static void fp32_to_fp16_row_avx2(const float *x, uint16_t *y, int64_t n) {
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
VELO_AVX2 static void quantize_row_q8_0_avx2(const float *x, velo_block_q8_0 *y, int64_t n) {
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

/* See cpu_kernels.h (dot_q8_0_q8_0). */
VELO_AVX2 static float dot_q8_0_q8_0_avx2(const velo_block_q8_0 *w, const velo_block_q8_0 *x,
                                          int64_t n) {
  int64_t nb = n / VELO_QK8_0;
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)w[b].qs);
    __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].qs);
    int32_t sumi = dot_i8x32(wq, xq);
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)sumi;
  }
  return acc;
}

/* See cpu_kernels.h (dot_q4_0_q8_0). */
VELO_AVX2 static float dot_q4_0_q8_0_avx2(const velo_block_q4_0 *w, const velo_block_q8_0 *x,
                                          int64_t n) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i eight = _mm256_set1_epi8(8);
  int64_t nb = n / VELO_QK4_0;
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    __m128i q = _mm_loadu_si128((const __m128i *)w[b].qs);
    /* low half: elements 0..15 (low nibbles); high half: 16..31 */
    __m256i wq = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    wq = _mm256_sub_epi8(_mm256_and_si256(wq, low4), eight);
    __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].qs);
    int32_t sumi = dot_i8x32(wq, xq);
    acc += (velo_fp16_to_fp32(w[b].d) * velo_fp16_to_fp32(x[b].d)) * (float)sumi;
  }
  return acc;
}

static const velo_cpu_vec avx2_vec = {
    .isa = VELO_CPU_ISA_AVX2,
    .name = "AVX2",
    .dot_f32 = dot_f32_avx2,
    .dot_f16 = dot_f16_avx2,
    .dot_f16_f32 = dot_f16_f32_avx2,
    .fp32_to_fp16_row = fp32_to_fp16_row_avx2,
    .quantize_row_q8_0 = quantize_row_q8_0_avx2,
    .dot_q8_0_q8_0 = dot_q8_0_q8_0_avx2,
    .dot_q4_0_q8_0 = dot_q4_0_q8_0_avx2,
};

/* True when the CPU has AVX, AVX2 and F16C and the OS saves the YMM
 * registers (CPUID leaves 1 and 7, XGETBV), read directly because not every
 * compiler's __builtin_cpu_supports knows "f16c". */
static bool cpu_has_avx2_f16c(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
  if ((c & (osxsave | avx | f16c)) != (osxsave | avx | f16c)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 6u) != 6u) return false; /* XMM and YMM state enabled */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (b & (1u << 5)) != 0; /* AVX2 */
}

/* See vec_avx2.h. */
const velo_cpu_vec *velo_cpu_vec_avx2(void) { return cpu_has_avx2_f16c() ? &avx2_vec : NULL; }

#else /* not x86-64 GCC/Clang */

/* See vec_avx2.h. */
const velo_cpu_vec *velo_cpu_vec_avx2(void) { return NULL; }

#endif
