/*
 * weight_check.c - the non-finite weight scan of weight_check.h.  Where a
 * block format keeps its float scale fields comes from
 * velo_dtype_scale_fields (velo/tensor.h); plain float tensors are checked
 * element by element.  Only exponent bits are
 * looked at, so no float arithmetic is involved.
 */
#include "weight_check.h"

#include <string.h>

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
                                   int64_t n_rows, int64_t *where, bool *is_block, int *field) {
  const unsigned char *p = data;
  const int64_t blk = velo_dtype_block_size(dt);
  if (blk <= 0 || n_cols % blk != 0) return WEIGHT_UNCHECKED;
  const int64_t n_units = n_cols / blk * n_rows; /* elements or blocks */
  const size_t bb = velo_dtype_block_bytes(dt);
  *is_block = blk > 1;
  *field = 0;
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
  int off[2];
  bool f32;
  const int n_fields = velo_dtype_scale_fields(dt, off, &f32);
  if (n_fields <= 0) return WEIGHT_UNCHECKED;
  for (int64_t b = 0; b < n_units; b++) {
    const unsigned char *blkp = p + (size_t)b * bb;
    for (int j = 0; j < n_fields; j++)
      if (f32 ? f32_nonfinite(blkp + off[j]) : fp16_nonfinite(blkp + off[j]))
        return *where = b, *field = j, WEIGHT_NONFINITE;
  }
  return WEIGHT_FINITE;
}
