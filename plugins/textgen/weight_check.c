/*
 * weight_check.c - the non-finite weight scan of weight_check.h.  One table
 * says where each block format keeps its float scale fields (byte offsets
 * in the block, fp16 or f32), from the GGUF / ggml block layouts; plain
 * float tensors are checked element by element.  Only exponent bits are
 * looked at, so no float arithmetic is involved.
 */
#include "weight_check.h"

#include <string.h>

/* Where a block format keeps its float scales. */
typedef struct scale_fields {
  velo_dtype dt;
  int n;          /* scale fields per block (1 or 2) */
  int off[2];     /* byte offsets in the block */
  bool f32;       /* f32 fields (Q8_K) rather than fp16 */
} scale_fields;

static const scale_fields k_blocks[] = {
    {VELO_DTYPE_Q4_0, 1, {0, 0}, false},    /* d, qs[16] */
    {VELO_DTYPE_Q4_1, 2, {0, 2}, false},    /* d, m, qs[16] */
    {VELO_DTYPE_Q5_0, 1, {0, 0}, false},    /* d, qh[4], qs[16] */
    {VELO_DTYPE_Q5_1, 2, {0, 2}, false},    /* d, m, qh[4], qs[16] */
    {VELO_DTYPE_Q8_0, 1, {0, 0}, false},    /* d, qs[32] */
    {VELO_DTYPE_Q2_K, 2, {80, 82}, false},  /* scales[16], qs[64], d, dmin */
    {VELO_DTYPE_Q3_K, 1, {108, 0}, false},  /* hmask[32], qs[64], scales[12], d */
    {VELO_DTYPE_Q4_K, 2, {0, 2}, false},    /* d, dmin, scales[12], qs[128] */
    {VELO_DTYPE_Q5_K, 2, {0, 2}, false},    /* d, dmin, scales[12], qh[32], qs[128] */
    {VELO_DTYPE_Q6_K, 1, {208, 0}, false},  /* ql[128], qh[64], scales[16], d */
    {VELO_DTYPE_Q8_K, 1, {0, 0}, true},     /* d (f32), qs[256], bsums[16] */
};

static inline bool fp16_nonfinite(const unsigned char *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return (h & 0x7c00u) == 0x7c00u;
}

static inline bool bf16_nonfinite(const unsigned char *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return (h & 0x7f80u) == 0x7f80u;
}

static inline bool f32_nonfinite(const unsigned char *p) {
  uint32_t u;
  memcpy(&u, p, 4);
  return (u & 0x7f800000u) == 0x7f800000u;
}

/* See weight_check.h. */
weight_check weight_find_nonfinite(velo_dtype dt, const void *data, int64_t n_cols,
                                   int64_t n_rows, int64_t *where, bool *is_block) {
  const unsigned char *p = data;
  const int64_t blk = velo_dtype_block_size(dt);
  if (blk <= 0 || n_cols % blk != 0) return WEIGHT_UNCHECKED;
  const int64_t n_units = n_cols / blk * n_rows; /* elements or blocks */
  const size_t bb = velo_dtype_block_bytes(dt);
  *is_block = blk > 1;
  switch (dt) {
    case VELO_DTYPE_F32:
      for (int64_t i = 0; i < n_units; i++)
        if (f32_nonfinite(p + 4 * i)) return *where = i, WEIGHT_NONFINITE;
      return WEIGHT_FINITE;
    case VELO_DTYPE_F16:
      for (int64_t i = 0; i < n_units; i++)
        if (fp16_nonfinite(p + 2 * i)) return *where = i, WEIGHT_NONFINITE;
      return WEIGHT_FINITE;
    case VELO_DTYPE_BF16:
      for (int64_t i = 0; i < n_units; i++)
        if (bf16_nonfinite(p + 2 * i)) return *where = i, WEIGHT_NONFINITE;
      return WEIGHT_FINITE;
    default:
      break;
  }
  for (size_t k = 0; k < sizeof k_blocks / sizeof k_blocks[0]; k++) {
    const scale_fields *f = &k_blocks[k];
    if (f->dt != dt) continue;
    for (int64_t b = 0; b < n_units; b++) {
      const unsigned char *blkp = p + (size_t)b * bb;
      for (int j = 0; j < f->n; j++)
        if (f->f32 ? f32_nonfinite(blkp + f->off[j]) : fp16_nonfinite(blkp + f->off[j]))
          return *where = b, WEIGHT_NONFINITE;
    }
    return WEIGHT_FINITE;
  }
  return WEIGHT_UNCHECKED;
}
