/*
 * velo/tensor.h - datatypes, tensors and request/response values of the ABI.
 *
 * Two kinds of tensor cross the plugin ABI:
 *
 *  - compute tensors (velo_tensor), the operands of a backend graph.  Their
 *    element types (velo_dtype) use the GGML/GGUF type numbering, including
 *    the quantization block types, so a tensor read from a GGUF file keeps
 *    its type id.  Layout follows GGUF: ne[0] is the fastest-varying
 *    dimension (the row length), nb[i] is the stride in bytes of dimension i.
 *    For a block type, ne[0] must be a multiple of the block size and nb[1]
 *    is the byte size of one row of blocks.
 *
 *  - request/response tensors (velo_io_tensor), the named inputs and outputs
 *    of a task, with the datatypes of the Open Inference Protocol (KServe v2
 *    "Tensor Data Types": BOOL, UINT8 ... FP64, BYTES, BF16).  BYTES tensors
 *    hold their elements as a 4-byte little-endian length followed by that
 *    many bytes, element after element, as the protocol's raw form does.
 *
 * Sources: GGUF spec (ggml docs/gguf.md) for type ids and block layouts;
 * KServe v2 Open Inference Protocol for datatypes.
 * Thread-safety: the helpers here are pure functions.
 */
#ifndef VELO_TENSOR_H
#define VELO_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Compute datatypes (GGML type ids as stored in GGUF tensor infos).   */
/* XX(name, ggml id, elements per block, bytes per block)              */
/* ------------------------------------------------------------------ */
#define VELO_DTYPE_MAP(XX) \
  XX(F32, 0, 1, 4)         \
  XX(F16, 1, 1, 2)         \
  XX(Q4_0, 2, 32, 18)      \
  XX(Q4_1, 3, 32, 20)      \
  XX(Q5_0, 6, 32, 22)      \
  XX(Q5_1, 7, 32, 24)      \
  XX(Q8_0, 8, 32, 34)      \
  XX(Q8_1, 9, 32, 36)      \
  XX(Q2_K, 10, 256, 84)    \
  XX(Q3_K, 11, 256, 110)   \
  XX(Q4_K, 12, 256, 144)   \
  XX(Q5_K, 13, 256, 176)   \
  XX(Q6_K, 14, 256, 210)   \
  XX(Q8_K, 15, 256, 292)   \
  XX(IQ2_XXS, 16, 256, 66) \
  XX(IQ2_XS, 17, 256, 74)  \
  XX(IQ3_XXS, 18, 256, 98) \
  XX(IQ1_S, 19, 256, 50)   \
  XX(IQ4_NL, 20, 32, 18)   \
  XX(IQ3_S, 21, 256, 110)  \
  XX(IQ2_S, 22, 256, 82)   \
  XX(IQ4_XS, 23, 256, 136) \
  XX(I8, 24, 1, 1)         \
  XX(I16, 25, 1, 2)        \
  XX(I32, 26, 1, 4)        \
  XX(I64, 27, 1, 8)        \
  XX(F64, 28, 1, 8)        \
  XX(IQ1_M, 29, 256, 56)   \
  XX(BF16, 30, 1, 2)

typedef enum velo_dtype {
#define VELO_DTYPE_ENUM_(name, id, blk, bytes) VELO_DTYPE_##name = id,
  VELO_DTYPE_MAP(VELO_DTYPE_ENUM_)
#undef VELO_DTYPE_ENUM_
  VELO_DTYPE_COUNT = 31
} velo_dtype;

/* Name of a dtype ("Q4_0"), or NULL for an id that is not a known type. */
static inline const char *velo_dtype_name(int dtype) {
  switch (dtype) {
#define VELO_DTYPE_NAME_(name, id, blk, bytes) \
  case id:                                     \
    return #name;
    VELO_DTYPE_MAP(VELO_DTYPE_NAME_)
#undef VELO_DTYPE_NAME_
  }
  return NULL;
}

/* Elements per quantization block (1 for plain types), or 0 if unknown. */
static inline int64_t velo_dtype_block_size(int dtype) {
  switch (dtype) {
#define VELO_DTYPE_BLK_(name, id, blk, bytes) \
  case id:                                    \
    return blk;
    VELO_DTYPE_MAP(VELO_DTYPE_BLK_)
#undef VELO_DTYPE_BLK_
  }
  return 0;
}

/* Bytes per block (per element for plain types), or 0 if unknown. */
static inline size_t velo_dtype_block_bytes(int dtype) {
  switch (dtype) {
#define VELO_DTYPE_BYTES_(name, id, blk, bytes) \
  case id:                                      \
    return bytes;
    VELO_DTYPE_MAP(VELO_DTYPE_BYTES_)
#undef VELO_DTYPE_BYTES_
  }
  return 0;
}

/* Bytes of a row of n elements, or 0 if the type is unknown or n is not a
 * multiple of the block size.  n must be >= 0 and small enough that the
 * product fits (callers validate shapes against file sizes first). */
static inline size_t velo_dtype_row_bytes(int dtype, int64_t n) {
  int64_t blk = velo_dtype_block_size(dtype);
  if (blk <= 0 || n < 0 || n % blk != 0) return 0;
  return (size_t)(n / blk) * velo_dtype_block_bytes(dtype);
}

/* Where a quantization block keeps its float scale fields (the GGUF /
 * ggml block layouts): writes their byte offsets within one block to
 * off[0..n-1] and sets *f32 (true: IEEE binary32 fields, as Q8_K's d;
 * false: binary16), and returns n (1: d; 2: d and dmin or m).  Returns 0
 * for the plain types (F32, F16, BF16, I8..I64, F64: every element is a
 * value) and -1 for a block format described nowhere here (the IQ
 * formats, whose scales are packed differently).  The other bytes of a
 * block are integer quants and packed integer sub-scales.  Pure. */
static inline int velo_dtype_scale_fields(int dtype, int off[2], bool *f32) {
  *f32 = false;
  off[0] = off[1] = 0;
  switch (dtype) {
    case VELO_DTYPE_Q4_0: /* d, qs[16] */
    case VELO_DTYPE_Q5_0: /* d, qh[4], qs[16] */
    case VELO_DTYPE_Q8_0: /* d, qs[32] */
      return 1;
    case VELO_DTYPE_Q4_1: /* d, m, qs[16] */
    case VELO_DTYPE_Q5_1: /* d, m, qh[4], qs[16] */
    case VELO_DTYPE_Q8_1: /* d, s, qs[32] */
    case VELO_DTYPE_Q4_K: /* d, dmin, scales[12], qs[128] */
    case VELO_DTYPE_Q5_K: /* d, dmin, scales[12], qh[32], qs[128] */
      off[1] = 2;
      return 2;
    case VELO_DTYPE_Q2_K: /* scales[16], qs[64], d, dmin */
      off[0] = 80, off[1] = 82;
      return 2;
    case VELO_DTYPE_Q3_K: /* hmask[32], qs[64], scales[12], d */
      off[0] = 108;
      return 1;
    case VELO_DTYPE_Q6_K: /* ql[128], qh[64], scales[16], d */
      off[0] = 208;
      return 1;
    case VELO_DTYPE_Q8_K: /* d (f32), qs[256], bsums[16] */
      *f32 = true;
      return 1;
    default:
      return velo_dtype_block_size(dtype) == 1 ? 0 : -1;
  }
}

/* ------------------------------------------------------------------ */
/* Compute tensors                                                     */
/* ------------------------------------------------------------------ */

#define VELO_MAX_DIMS 4

/* A buffer is backend memory (opaque; see velo/backend.h). */
typedef struct velo_buffer velo_buffer;

/* A compute tensor: a typed, strided view into a backend buffer.
 * The struct itself is owned by whoever built it (usually the task plugin,
 * which keeps its tensors alive for as long as it uses a graph that names
 * them); the memory it points to is owned by the buffer. */
typedef struct velo_tensor {
  uint32_t struct_size;     /* sizeof(velo_tensor) */
  velo_dtype dtype;         /* element or block type */
  int32_t n_dims;           /* 1..4; unused dims have ne = 1 */
  int64_t ne[VELO_MAX_DIMS]; /* elements per dimension, ne[0] fastest */
  size_t nb[VELO_MAX_DIMS]; /* stride in bytes of each dimension */
  velo_buffer *buffer;      /* the backend buffer holding the data */
  size_t offset;            /* byte offset of element 0 in buffer */
  void *data;               /* host address of element 0 when the buffer is
                               host-visible (CPU), else NULL */
  const char *name;         /* for logs; may be NULL; borrowed */
} velo_tensor;

/* Fills shape and contiguous strides: t->ne = ne[0..n_dims), the rest 1,
 * nb[0] = block bytes, nb[1] = row bytes, nb[i] = nb[i-1] * ne[i-1].
 * Leaves buffer, offset, data and name alone.  Returns false when the dtype
 * is unknown or ne[0] is not a multiple of the block size. */
static inline bool velo_tensor_set_shape(velo_tensor *t, velo_dtype dtype,
                                         int32_t n_dims, const int64_t *ne) {
  int i;
  if (n_dims < 1 || n_dims > VELO_MAX_DIMS) return false;
  t->struct_size = (uint32_t)sizeof(velo_tensor);
  t->dtype = dtype;
  t->n_dims = n_dims;
  for (i = 0; i < VELO_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
  t->nb[0] = velo_dtype_block_bytes(dtype);
  t->nb[1] = velo_dtype_row_bytes(dtype, t->ne[0]);
  if (t->nb[0] == 0 || t->nb[1] == 0) return false;
  for (i = 2; i < VELO_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t)t->ne[i - 1];
  return true;
}

/* Total bytes of a contiguous tensor (nb[3] * ne[3]). */
static inline size_t velo_tensor_nbytes(const velo_tensor *t) {
  return t->nb[VELO_MAX_DIMS - 1] * (size_t)t->ne[VELO_MAX_DIMS - 1];
}

/* ------------------------------------------------------------------ */
/* Request/response tensors (Open Inference Protocol datatypes)        */
/* XX(name, bytes per element; 0 for BYTES)                            */
/* ------------------------------------------------------------------ */
#define VELO_DATATYPE_MAP(XX) \
  XX(BOOL, 1)                 \
  XX(UINT8, 1)                \
  XX(UINT16, 2)               \
  XX(UINT32, 4)               \
  XX(UINT64, 8)               \
  XX(INT8, 1)                 \
  XX(INT16, 2)                \
  XX(INT32, 4)                \
  XX(INT64, 8)                \
  XX(FP16, 2)                 \
  XX(FP32, 4)                 \
  XX(FP64, 8)                 \
  XX(BYTES, 0)                \
  XX(BF16, 2)

typedef enum velo_datatype {
  VELO_DATATYPE_INVALID = 0,
#define VELO_DATATYPE_ENUM_(name, size) VELO_DATATYPE_##name,
  VELO_DATATYPE_MAP(VELO_DATATYPE_ENUM_)
#undef VELO_DATATYPE_ENUM_
} velo_datatype;

/* Protocol spelling of a datatype ("FP32"), or NULL if invalid. */
static inline const char *velo_datatype_name(velo_datatype t) {
  switch (t) {
#define VELO_DATATYPE_NAME_(name, size) \
  case VELO_DATATYPE_##name:            \
    return #name;
    VELO_DATATYPE_MAP(VELO_DATATYPE_NAME_)
#undef VELO_DATATYPE_NAME_
    default:
      return NULL;
  }
}

/* Bytes per element; 0 for BYTES (variable) and for invalid values. */
static inline size_t velo_datatype_size(velo_datatype t) {
  switch (t) {
#define VELO_DATATYPE_SIZE_(name, size) \
  case VELO_DATATYPE_##name:            \
    return size;
    VELO_DATATYPE_MAP(VELO_DATATYPE_SIZE_)
#undef VELO_DATATYPE_SIZE_
    default:
      return 0;
  }
}

/* A named request or response tensor.  All pointers are borrowed: for a
 * request they stay valid until the task emits the request's final
 * response; for a response, only during the velo_host.respond() call. */
typedef struct velo_io_tensor {
  uint32_t struct_size;     /* sizeof(velo_io_tensor) */
  const char *name;         /* NUL-terminated, e.g. "text_input" */
  velo_datatype datatype;
  int32_t n_dims;           /* 0..VELO_MAX_IO_DIMS */
  const int64_t *shape;     /* n_dims entries, each >= 0 (protocol order) */
  const void *data;         /* raw little-endian contents; BYTES as
                               (uint32 length, bytes) per element */
  size_t size;              /* bytes at data */
} velo_io_tensor;

#define VELO_MAX_IO_DIMS 16

/* Parameter values, as in the protocol's InferParameter. */
typedef enum velo_param_type {
  VELO_PARAM_BOOL = 1,
  VELO_PARAM_INT64 = 2,
  VELO_PARAM_DOUBLE = 3,
  VELO_PARAM_STRING = 4
} velo_param_type;

/* One request or response parameter.  A key may appear more than once
 * (e.g. several "stop" strings); order is kept.  Pointers are borrowed as
 * for velo_io_tensor. */
typedef struct velo_param {
  uint32_t struct_size; /* sizeof(velo_param) */
  const char *key;      /* NUL-terminated */
  velo_param_type type;
  union {
    bool b;
    int64_t i;
    double d;
    struct {
      const char *ptr; /* UTF-8, not necessarily NUL-terminated */
      size_t len;      /* bytes */
    } s;
  } value;
} velo_param;

#ifdef __cplusplus
}
#endif
#endif /* VELO_TENSOR_H */
