/*
 * velo/gguf.h - read access to GGUF model files, as the host offers it.
 *
 * The host (libvelo) owns the GGUF reader; plugins reach it through the
 * velo_gguf_api table in their velo_host (velo/plugin.h), so every plugin
 * reads files with the same validated code.  The reader memory-maps the
 * file and checks every count, length, offset and size against the file
 * before anything is exposed: a truncated or corrupted file is an error
 * that names what is wrong and its byte offset, never a crash.
 *
 * Format: GGUF version 3 (and 2, which has the same layout), as specified
 * in ggml's docs/gguf.md.  All values are little-endian.
 *
 * Ownership: a velo_gguf handle is owned by whoever opened it and freed with
 * close().  Every pointer returned by an accessor (names, strings, array
 * data, tensor data) points into the mapping and stays valid until close().
 * Strings from the file are NOT NUL-terminated: use the returned length.
 * Array and tensor data may be unaligned for their element type only if the
 * file's alignment allows it; tensor data is aligned to general.alignment.
 *
 * Thread-safety: open/close are not concurrent with use of the same handle;
 * all accessors are read-only and may be called from any thread at once.
 */
#ifndef VELO_GGUF_H
#define VELO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"
#include "velo/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct velo_gguf velo_gguf; /* an open, validated GGUF file */

/* GGUF metadata value types (numbering from the spec). */
typedef enum velo_gguf_type {
  VELO_GGUF_UINT8 = 0,
  VELO_GGUF_INT8 = 1,
  VELO_GGUF_UINT16 = 2,
  VELO_GGUF_INT16 = 3,
  VELO_GGUF_UINT32 = 4,
  VELO_GGUF_INT32 = 5,
  VELO_GGUF_FLOAT32 = 6,
  VELO_GGUF_BOOL = 7,
  VELO_GGUF_STRING = 8,
  VELO_GGUF_ARRAY = 9,
  VELO_GGUF_UINT64 = 10,
  VELO_GGUF_INT64 = 11,
  VELO_GGUF_FLOAT64 = 12
} velo_gguf_type;

/* Description of one tensor of the file. */
typedef struct velo_gguf_tensor_info {
  uint32_t struct_size;      /* sizeof(velo_gguf_tensor_info), set by caller */
  const char *name;          /* NOT NUL-terminated; name_len bytes */
  size_t name_len;
  velo_dtype dtype;          /* GGML type id, as stored */
  int32_t n_dims;            /* 1..4 */
  int64_t ne[VELO_MAX_DIMS]; /* GGUF order: ne[0] fastest; unused = 1 */
  uint64_t offset;           /* from the start of the file, in bytes */
  size_t size;               /* bytes of data (validated to lie in the file) */
  const void *data;          /* into the mapping */
} velo_gguf_tensor_info;

/* The reader's functions.  Each velo_status-returning function fills err
 * on failure; the codes are:
 *   NOT_FOUND         the key or tensor does not exist,
 *   INVALID_ARGUMENT  the value has another type than asked for, or an
 *                     index is out of range,
 *   DATA_LOSS         (open) the file is truncated or corrupt; the message
 *                     names the field and its byte offset,
 *   NOT_FOUND / PERMISSION_DENIED (open) the file cannot be opened. */
typedef struct velo_gguf_api {
  uint32_t struct_size; /* sizeof(velo_gguf_api) */

  /* Opens and validates path.  On success *out owns the mapping. */
  velo_status (*open)(const char *path, velo_gguf **out, velo_error *err);
  /* Unmaps and frees; NULL is a no-op.  Invalidates every pointer. */
  void (*close)(velo_gguf *g);

  uint32_t (*version)(const velo_gguf *g);  /* 2 or 3 */
  size_t (*alignment)(const velo_gguf *g);  /* general.alignment or 32 */
  const char *(*path)(const velo_gguf *g);  /* as opened; NUL-terminated */
  uint64_t (*file_size)(const velo_gguf *g);

  /* Metadata: keys are indexed 0..kv_count-1 in file order. */
  int64_t (*kv_count)(const velo_gguf *g);
  /* Index of key (exact, NUL-terminated), or -1. */
  int64_t (*find_key)(const velo_gguf *g, const char *key);
  /* Name of key i (NOT NUL-terminated) and its length; NULL if i invalid. */
  const char *(*key_name)(const velo_gguf *g, int64_t i, size_t *len);
  velo_gguf_type (*kv_type)(const velo_gguf *g, int64_t i);
  /* For arrays: element type and count (0 and ARRAY-less: returns false). */
  bool (*kv_array_info)(const velo_gguf *g, int64_t i, velo_gguf_type *elem_type,
                        uint64_t *count);

  /* Typed getters by key name.  get_int accepts any integer type and bool
   * and fails with OUT_OF_RANGE if the value does not fit int64.  get_float
   * accepts FLOAT32 and FLOAT64.  get_string gives the bytes in the file. */
  velo_status (*get_int)(const velo_gguf *g, const char *key, int64_t *out,
                         velo_error *err);
  velo_status (*get_float)(const velo_gguf *g, const char *key, double *out,
                           velo_error *err);
  velo_status (*get_bool)(const velo_gguf *g, const char *key, bool *out,
                          velo_error *err);
  velo_status (*get_string)(const velo_gguf *g, const char *key, const char **str,
                            size_t *len, velo_error *err);
  /* Numeric array: element type, count and a pointer to count packed
   * little-endian elements in the mapping (may be unaligned: memcpy). */
  velo_status (*get_array)(const velo_gguf *g, const char *key,
                           velo_gguf_type *elem_type, uint64_t *count,
                           const void **data, velo_error *err);
  /* Element idx of a string array (O(1); offsets indexed at open). */
  velo_status (*get_array_string)(const velo_gguf *g, const char *key, uint64_t idx,
                                  const char **str, size_t *len, velo_error *err);

  /* Tensors, indexed 0..tensor_count-1 in file order. */
  int64_t (*tensor_count)(const velo_gguf *g);
  /* Index of the tensor named name (NUL-terminated), or -1. */
  int64_t (*find_tensor)(const velo_gguf *g, const char *name);
  /* Fills *out (caller sets out->struct_size).  INVALID_ARGUMENT if i is
   * out of range. */
  velo_status (*tensor_info)(const velo_gguf *g, int64_t i, velo_gguf_tensor_info *out,
                             velo_error *err);
} velo_gguf_api;

#ifdef __cplusplus
}
#endif
#endif /* VELO_GGUF_H */
