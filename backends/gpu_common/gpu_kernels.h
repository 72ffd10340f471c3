/*
 * gpu_kernels.h - the C interface between the GPU backends' host code
 * (gpu_backend.c, plain C) and their kernels (gpu_kernels.cu, compiled by
 * nvcc for CUDA and by hipcc for HIP).
 *
 * Every vgk_* launcher enqueues the kernels of one graph node on stream and
 * returns at once (0, or the runtime's error code of the launch).  Tensors
 * are passed as vgk_tensor: a device address and the velo_tensor shape and
 * strides.  Data errors found on the device (an id, position or block id
 * out of range) are recorded in the vgk_error record in device memory by
 * the first kernel that meets one (kernels of a stream run in order, so
 * that is the earliest failing node); the offending row or position is
 * skipped, never read or written out of bounds.  The host reads the record
 * after the graph (gpu_backend.c).
 *
 * Thread-safety: the launchers touch no host state; callers serialise use
 * of one stream.
 */
#ifndef VELO_GPU_KERNELS_H
#define VELO_GPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A tensor on the device: element 0 at data; ne/nb as in velo_tensor. */
typedef struct vgk_tensor {
  char *data;
  int64_t ne[4];
  int64_t nb[4];
  int32_t dtype; /* velo_dtype */
} vgk_tensor;

/* The device-side error record (zeroed before each compute). */
typedef struct vgk_error {
  int32_t claimed; /* 0 until the first error */
  int32_t node;    /* graph node index */
  int32_t kind;    /* VGK_ERR_* */
  int32_t a, b, c, d;
} vgk_error;

enum {
  VGK_ERR_GET_ROWS_ID = 1,   /* a = id, b = flat index, c = rows */
  VGK_ERR_SET_ROWS_ID = 2,   /* a = id, b = flat index, c = rows */
  VGK_ERR_ATTN_POS = 3,      /* a = position, b = token, c = n_ctx */
  VGK_ERR_PAGED_NEG = 4,     /* a = position, b = token */
  VGK_ERR_PAGED_WIDTH = 5,   /* a = position, b = token, c = blocks needed, d = W - 1 */
  VGK_ERR_PAGED_SLOT = 6     /* a = block id, b = token, c = block index, d = n_slots */
};

/* Which weight types MUL_MAT and GET_ROWS take (GGML type ids). */
int vgk_weight_type_ok(int32_t dtype);

/* Bytes of scratch MUL_MAT needs for weights of dtype, K x M activations. */
size_t vgk_mul_mat_scratch(int32_t dtype, int64_t K, int64_t M);

/* dst rows t = src rows ids[t], dequantized to F32. */
int vgk_get_rows(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                 const vgk_tensor *src, const vgk_tensor *ids);
/* dst = rmsnorm(src) (eps); with w (not NULL), dst = rmsnorm(src) * w with
 * w broadcast as MUL does (the fused RMS_NORM + MUL pair). */
int vgk_rms_norm(void *stream, const vgk_tensor *dst, const vgk_tensor *src, float eps,
                 const vgk_tensor *w);
/* dst = a * b (mul != 0) or a + b, b broadcast. */
int vgk_binary(void *stream, int mul, const vgk_tensor *dst, const vgk_tensor *a,
               const vgk_tensor *b);
int vgk_swiglu(void *stream, const vgk_tensor *dst, const vgk_tensor *a, const vgk_tensor *b);
int vgk_cpy(void *stream, const vgk_tensor *dst, const vgk_tensor *src);
/* theta_scale = powf(freq_base, -2/n_rot), computed by the caller. */
int vgk_rope(void *stream, const vgk_tensor *dst, const vgk_tensor *src, const vgk_tensor *pos,
             int32_t n_rot, int32_t neox, float freq_scale, float theta_scale);
int vgk_set_rows(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                 const vgk_tensor *src, const vgk_tensor *ids);
/* ATTENTION (paged = 0: tab holds positions) or ATTENTION_PAGED (paged =
 * 1: tab is the [W, n_tok] table, bs the block size). */
int vgk_attention(void *stream, vgk_error *err, int32_t node, const vgk_tensor *dst,
                  const vgk_tensor *q, const vgk_tensor *k, const vgk_tensor *v,
                  const vgk_tensor *tab, int32_t paged, int32_t bs, float scale);
/* The activation format weights of dtype multiply (0: F32 as is, 1: fp16-
 * rounded, 2: Q8_0 blocks, 3: Q8_K super-blocks); products whose weights
 * share a format can share one conversion of the same activations. */
int vgk_act_format(int32_t dtype);

/* dst = w x x (MUL_MAT); scratch holds vgk_mul_mat_scratch bytes.  With
 * convert 0 the scratch already holds x in w's activation format (the
 * previous MUL_MAT on the stream converted the same x). */
int vgk_mul_mat(void *stream, void *scratch, const vgk_tensor *dst, const vgk_tensor *w,
                const vgk_tensor *x, int convert);

#ifdef __cplusplus
}
#endif
#endif /* VELO_GPU_KERNELS_H */
