/*
 * gguf.h - the host's memory-mapped, validated GGUF v3 reader.
 *
 * The functions below implement velo_gguf_api (sdk/include/velo/gguf.h; the
 * contract, ownership and error codes are documented there);
 * velo_gguf_reader is the table handed to plugins.
 */
#ifndef VELO_CORE_GGUF_H
#define VELO_CORE_GGUF_H

#include "velo/gguf.h"

extern const velo_gguf_api velo_gguf_reader;

velo_status velo_gguf_open(const char *path, velo_gguf **out, velo_error *err);
void velo_gguf_close(velo_gguf *g);
uint32_t velo_gguf_version(const velo_gguf *g);
size_t velo_gguf_alignment(const velo_gguf *g);
const char *velo_gguf_path(const velo_gguf *g);
uint64_t velo_gguf_file_size(const velo_gguf *g);
int64_t velo_gguf_kv_count(const velo_gguf *g);
int64_t velo_gguf_find_key(const velo_gguf *g, const char *key);
const char *velo_gguf_key_name(const velo_gguf *g, int64_t i, size_t *len);
velo_gguf_type velo_gguf_kv_type(const velo_gguf *g, int64_t i);
bool velo_gguf_kv_array_info(const velo_gguf *g, int64_t i, velo_gguf_type *elem_type,
                             uint64_t *count);
velo_status velo_gguf_get_int(const velo_gguf *g, const char *key, int64_t *out,
                              velo_error *err);
velo_status velo_gguf_get_float(const velo_gguf *g, const char *key, double *out,
                                velo_error *err);
velo_status velo_gguf_get_bool(const velo_gguf *g, const char *key, bool *out, velo_error *err);
velo_status velo_gguf_get_string(const velo_gguf *g, const char *key, const char **str,
                                 size_t *len, velo_error *err);
velo_status velo_gguf_get_array(const velo_gguf *g, const char *key, velo_gguf_type *elem_type,
                                uint64_t *count, const void **data, velo_error *err);
velo_status velo_gguf_get_array_string(const velo_gguf *g, const char *key, uint64_t idx,
                                       const char **str, size_t *len, velo_error *err);
int64_t velo_gguf_tensor_count(const velo_gguf *g);
int64_t velo_gguf_find_tensor(const velo_gguf *g, const char *name);
velo_status velo_gguf_get_tensor_info(const velo_gguf *g, int64_t i, velo_gguf_tensor_info *out,
                                  velo_error *err);

#endif
