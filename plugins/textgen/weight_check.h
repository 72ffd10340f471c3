/*
 * weight_check.h - finds non-finite values (NaN, infinity) in a weight
 * tensor as stored in a GGUF file, before the model serves anything: the
 * float elements of F32/F16/BF16 tensors, and the float scale fields of
 * every quantization block (fp16 d, dmin / m; Q8_K's f32 d).  A block
 * format's quants are integers and cannot be non-finite; its scales can,
 * and a NaN or infinite scale would otherwise be served as silent garbage
 * (the activation quantizers drop NaN inputs, so the logits can even stay
 * finite).  Block layouts: the GGUF / ggml type definitions.
 */
#ifndef VELO_TEXTGEN_WEIGHT_CHECK_H
#define VELO_TEXTGEN_WEIGHT_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "velo/tensor.h"

/* Result of weight_find_nonfinite. */
typedef enum weight_check {
  WEIGHT_FINITE = 0,    /* every float of the tensor is finite */
  WEIGHT_NONFINITE = 1, /* *where is the first bad element or block */
  WEIGHT_UNCHECKED = 2  /* a dtype this check does not know (nothing read) */
} weight_check;

/* Scans n_rows rows of n_cols elements of dtype dt at data (rows packed,
 * velo_dtype_row_bytes(dt, n_cols) bytes each; n_cols a multiple of the
 * block size).  On WEIGHT_NONFINITE, *where is the index of the first bad
 * element (plain float types) or block (block formats, counted from the
 * start of the tensor) and *is_block says which; for a block, *field is
 * the bad scale field (0: d; 1: dmin or m, velo_dtype_scale_fields).  Reads the whole tensor
 * (for mmapped weights: brings it into the page cache).  Pure; thread-safe. */
weight_check weight_find_nonfinite(velo_dtype dt, const void *data, int64_t n_cols,
                                   int64_t n_rows, int64_t *where, bool *is_block, int *field);

#endif /* VELO_TEXTGEN_WEIGHT_CHECK_H */
