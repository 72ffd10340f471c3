/*
 * kq_tiles.h - the tiling driver of the K-quant matrix kernels, shared by
 * kq_avx2.c and kq_avx512.c (internal; contract: mul_mat_act in
 * cpu_kernels.h).  It is a template: the including file first defines
 *   KQ_TARGET      the function attribute of its ISA (target(...)),
 *   KQ_ENTRY       the name of its act_simd.h entry,
 *   PF_R, PF_C     its prefill tile shape (rows x columns), and
 *   tile(f, w, rs, cols, cs, K, dst, off, ro, R, C)
 *                  its kernel for one tile of R rows (row i at w + i*rs,
 *                  output i at dst[c][off + i*ro]) x C columns of format f
 *                  (F_Q4, F_Q5 or F_Q6), R <= MAX_R, C <= MAX_C,
 * and includes this header once, at file scope, inside its x86-64 guard.
 * Every function here is inlined into the ISA's own code, so the driver
 * costs nothing and the results are those of tile().
 */
#ifndef KQ_TARGET
#error "define KQ_TARGET, KQ_ENTRY, PF_R, PF_C and tile() before including kq_tiles.h"
#endif

_Static_assert(PF_R >= 1 && PF_R <= MAX_R && PF_C >= 1 && PF_C <= MAX_C, "tile shape");

/* All columns for one tile of R rows: R x CMAX column tiles, then one of
 * R x the rest. */
KQ_TARGET static VELO_INLINE void rows_tile(const int f, const char *w, size_t rs,
                                            const char *cols, size_t cs, int64_t nc, int64_t K,
                                            float *const *dst, int64_t off, int64_t ro,
                                            const int R, const int CMAX) {
  int64_t c = 0;
  for (; c + CMAX <= nc; c += CMAX) tile(f, w, rs, cols + c * cs, cs, K, dst + c, off, ro, R, CMAX);
  const char *cc = cols + c * cs;
  float *const *dc = dst + c;
  switch (nc - c) {
    case 3:
      tile(f, w, rs, cc, cs, K, dc, off, ro, R, 3);
      break;
    case 2:
      tile(f, w, rs, cc, cs, K, dc, off, ro, R, 2);
      break;
    case 1:
      tile(f, w, rs, cc, cs, K, dc, off, ro, R, 1);
      break;
    default:
      break;
  }
}

/* mul_mat_act for one format in tiles of R rows x CMAX columns.  The rows
 * are cut into R equal runs (and nr % R single rows at the end); tile i
 * takes row i of each run, so the weights are read as R long sequential
 * streams, which the prefetchers follow (see vec_avx512.c). */
KQ_TARGET static VELO_INLINE void mul_mat_rc(const int f, const char *w, size_t ws, int64_t nr,
                                             const char *cols, size_t cs, int64_t nc, int64_t K,
                                             float *const *dst, int64_t off, const int R,
                                             const int CMAX) {
  const int64_t q = nr / R;
  for (int64_t i = 0; i < q; i++)
    rows_tile(f, w + i * ws, q * ws, cols, cs, nc, K, dst, off + i, q, R, CMAX);
  for (int64_t r = R * q; r < nr; r++)
    rows_tile(f, w + r * ws, ws, cols, cs, nc, K, dst, off + r, 1, 1, CMAX);
}

/* mul_mat_act for one format: decode (one column) in tiles of 4 rows,
 * prefill in tiles of PF_R x PF_C. */
KQ_TARGET static VELO_INLINE void mul_mat_f(const int f, const char *w, size_t ws, int64_t nr,
                                            const char *cols, size_t cs, int64_t nc, int64_t K,
                                            float *const *dst, int64_t off) {
  if (nc == 1)
    mul_mat_rc(f, w, ws, nr, cols, cs, nc, K, dst, off, 4, 1);
  else
    mul_mat_rc(f, w, ws, nr, cols, cs, nc, K, dst, off, PF_R, PF_C);
}

/* One out-of-line instance per format, so that each is specialised. */
KQ_TARGET static void mul_mat_q4(const char *w, size_t ws, int64_t nr, const char *cols,
                                 size_t cs, int64_t nc, int64_t K, float *const *dst,
                                 int64_t off) {
  mul_mat_f(F_Q4, w, ws, nr, cols, cs, nc, K, dst, off);
}

KQ_TARGET static void mul_mat_q5(const char *w, size_t ws, int64_t nr, const char *cols,
                                 size_t cs, int64_t nc, int64_t K, float *const *dst,
                                 int64_t off) {
  mul_mat_f(F_Q5, w, ws, nr, cols, cs, nc, K, dst, off);
}

KQ_TARGET static void mul_mat_q6(const char *w, size_t ws, int64_t nr, const char *cols,
                                 size_t cs, int64_t nc, int64_t K, float *const *dst,
                                 int64_t off) {
  mul_mat_f(F_Q6, w, ws, nr, cols, cs, nc, K, dst, off);
}

/* See act_simd.h. */
bool KQ_ENTRY(VELO_ACT_MM_ARGS) {
  switch (wt) {
    case VELO_DTYPE_Q4_K:
      mul_mat_q4(w, w_stride, nr, cols, col_stride, nc, K, dst, off);
      return true;
    case VELO_DTYPE_Q5_K:
      mul_mat_q5(w, w_stride, nr, cols, col_stride, nc, K, dst, off);
      return true;
    case VELO_DTYPE_Q6_K:
      mul_mat_q6(w, w_stride, nr, cols, col_stride, nc, K, dst, off);
      return true;
    default:
      return false;
  }
}
