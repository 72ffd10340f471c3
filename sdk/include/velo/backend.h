/*
 * velo/backend.h - the interface a hardware backend plugin implements.
 *
 * A backend is a compute device driver: it enumerates devices, allocates
 * buffers on them, copies data in and out, and computes graphs of nodes.
 * Task plugins never call a device API themselves: they build a velo_graph
 * (an array of nodes, each an op applied to velo_tensors) and hand it to
 * the backend chosen by the host.  New ops are new enum values, never new
 * function pointers, so the table stays stable as the set grows; a backend
 * answers supports() per node so the caller can place a node elsewhere.
 *
 * Lifecycle: probe() (cheap, no device context) -> open() an instance on
 * one device -> buffers and graphs -> close().  Buffers must be freed
 * before the instance is closed.
 *
 * Thread-safety: probe, device_count and device_info may be called from
 * any thread at any time.  One instance is used by one thread at a time
 * (the caller serialises compute, buffer and copy calls on an instance); a
 * backend may use threads of its own inside compute.
 */
#ifndef VELO_BACKEND_H
#define VELO_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"
#include "velo/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct velo_backend_instance velo_backend_instance; /* opaque */

/* ------------------------------------------------------------------ */
/* Graph ops.  Shapes are GGUF order (ne[0] fastest).  Unless stated,   */
/* activations are F32 and contiguous, and dst is preallocated by the   */
/* caller with the shape given.                                         */
/* ------------------------------------------------------------------ */
typedef enum velo_op {
  VELO_OP_NONE = 0,
  /* dst[:, t] = row ids[t] of src0, converted to F32.
   * src0: table [n_embd, n_rows], any supported weight dtype;
   * src1: ids, I32 [n_tok]; dst: F32 [n_embd, n_tok].
   * An id outside [0, n_rows) is INVALID_ARGUMENT. */
  VELO_OP_GET_ROWS = 1,
  /* RMSNorm (Zhang & Sennrich 2019) over each row of length ne[0]:
   * dst = x * 1/sqrt(mean(x^2) + eps), eps = fparams[0].  The sum of
   * squares is accumulated in double, as llama.cpp does. */
  VELO_OP_RMS_NORM = 2,
  /* dst = src0 * src1 element-wise; src1 is broadcast: each of its
   * dimensions equals src0's or is 1. */
  VELO_OP_MUL = 3,
  /* dst = src0 + src1 with the same broadcasting as MUL. */
  VELO_OP_ADD = 4,
  /* Matrix product with a weight matrix:
   * src0: weights [K, N] (any supported dtype, rows of K), src1: F32 [K, M],
   * dst: F32 [N, M], dst[n, m] = sum_k src0[k, n] * src1[k, m].
   * Quantized weights multiply activations converted to the weight type's
   * partner format (Q8_0 blocks for Q4_0/Q8_0, F16 for F16), as llama.cpp
   * does; a backend states any deviation in its documentation. */
  VELO_OP_MUL_MAT = 5,
  /* Rotary position embedding (Su et al. 2021, RoFormer).
   * src0: F32 [head_dim, n_head, n_tok]; src1: positions, I32 [n_tok];
   * iparams[0] = n_rot (rotated dims, even, <= head_dim),
   * iparams[1] = mode (VELO_ROPE_NORMAL: pairs (2i, 2i+1);
   *              VELO_ROPE_NEOX: pairs (i, i + n_rot/2)),
   * fparams[0] = freq_base, fparams[1] = freq_scale (1 = none).
   * theta_i = pos * freq_scale * freq_base^(-2i/n_rot).  dst as src0. */
  VELO_OP_ROPE = 6,
  /* SwiGLU (Shazeer 2020): dst = silu(src0) * src1, silu(x) = x/(1+e^-x).
   * src0, src1, dst: F32, same shape. */
  VELO_OP_SWIGLU = 7,
  /* Copy with conversion: dst = src0 (same element count and row length;
   * dst may be a strided view, e.g. KV-cache slots).  F32 -> F32 or F16. */
  VELO_OP_CPY = 8,
  /* Causal scaled dot-product attention over a KV cache, with grouped-
   * query attention (Ainslie et al. 2023).
   * src0: q, F32 [head_dim, n_head, n_tok];
   * src1: K cache [head_dim, n_head_kv, n_ctx] (F32 or F16);
   * src2: V cache [head_dim, n_head_kv, n_ctx] (F32 or F16);
   * src3: positions, I32 [n_tok]: query t attends cache slots 0..pos[t];
   * fparams[0] = scale applied to q.k (usually 1/sqrt(head_dim)).
   * Query head h reads KV head h / (n_head / n_head_kv).
   * dst: F32 [head_dim, n_head, n_tok]. */
  VELO_OP_ATTENTION = 9,
  /* Scatter rows (ABI 1.1): dst row ids[t] = src0 row t, converted to
   * dst's dtype (F32 or F16, round-half-even).  Used to write new K/V
   * into the slots of a paged KV cache.
   * src0: F32 [row_len, n_tok] (any trailing dims flattened to rows);
   * src1: ids, I32 [n_tok]; dst: F32 or F16 [row_len, n_rows], 2-D.
   * An id outside [0, n_rows) is INVALID_ARGUMENT.  Two equal ids in one
   * node leave either row (callers never repeat an id). */
  VELO_OP_SET_ROWS = 10,
  /* Causal attention over a paged KV cache (ABI 1.1; the paging scheme of
   * Kwon et al. 2023, "PagedAttention"), with grouped-query attention.
   * Each query token carries its own position and block table, so one node
   * serves a batch of tokens from many sequences.
   * src0: q, F32 [head_dim, n_head, n_tok];
   * src1: K pool [head_dim, n_head_kv, n_slots] (F32 or F16);
   * src2: V pool, same shape and dtype as src1;
   * src3: I32 [W, n_tok]; column t is (pos_t, b_0, b_1, ...): query t
   *       attends the logical positions 0..pos_t of its sequence, and
   *       logical position p is pool slot b_(p / bs) * bs + p % bs.
   *       1 + pos_t / bs < W is required; unused entries are ignored.
   * iparams[0] = bs, the block size in slots (>= 1);
   * fparams[0] = scale applied to q.k (usually 1/sqrt(head_dim)).
   * dst: F32 [head_dim, n_head, n_tok].
   * A position < 0 or a slot outside [0, n_slots) is INVALID_ARGUMENT.
   * The arithmetic per (token, head) must not depend on the other tokens
   * of the node (see batch_invariant in velo_device_info). */
  VELO_OP_ATTENTION_PAGED = 11,
  VELO_OP_COUNT
} velo_op;

enum { VELO_ROPE_NORMAL = 0, VELO_ROPE_NEOX = 2 };

#define VELO_NODE_MAX_SRC 4
#define VELO_NODE_MAX_PARAMS 8

/* One node: dst = op(src...).  Tensors are borrowed from the caller for the
 * duration of compute().  Unused src entries are NULL. */
typedef struct velo_graph_node {
  uint32_t struct_size; /* sizeof(velo_graph_node) */
  velo_op op;
  velo_tensor *dst;
  velo_tensor *src[VELO_NODE_MAX_SRC];
  int32_t iparams[VELO_NODE_MAX_PARAMS];
  float fparams[VELO_NODE_MAX_PARAMS];
} velo_graph_node;

/* A graph: nodes executed in array order (each node may read the dst of
 * any earlier node).  Borrowed by compute() until it returns.
 * nodes is an array of n_nodes nodes, each nodes[0].struct_size bytes
 * apart (all nodes of a graph have the same struct_size), so a backend
 * built against an older minor version steps through a newer host's array
 * correctly.
 * Aliasing: the element-wise ops (MUL, ADD, SWIGLU) may have dst == src0
 * (in place); for every other op dst must not overlap any source. */
typedef struct velo_graph {
  uint32_t struct_size; /* sizeof(velo_graph) */
  size_t n_nodes;
  velo_graph_node *nodes;
} velo_graph;

/* A device as the backend reports it. */
typedef struct velo_device_info {
  uint32_t struct_size;   /* set by the caller */
  char name[128];         /* e.g. "AMD EPYC 7B13 (2 online CPUs)" */
  char description[256];  /* capability details: ISA variant, CC, ... */
  uint64_t memory_total;  /* bytes; 0 if unknown */
  uint64_t memory_free;   /* bytes; 0 if unknown */
  /* ABI 1.1 (read only if struct_size covers it): true when every op's
   * result for one token (a column of MUL_MAT, a query of ATTENTION and
   * ATTENTION_PAGED, a row of the row-wise ops) is bit-identical whatever
   * other tokens share the node, so greedy decoding gives the same tokens
   * alone or batched.  A backend that cannot promise this says false. */
  bool batch_invariant;
} velo_device_info;

/* Options for open().  Members added later are read only if struct_size
 * covers them. */
typedef struct velo_backend_options {
  uint32_t struct_size; /* sizeof(velo_backend_options) */
  int32_t device;       /* device index, 0-based */
  int32_t n_threads;    /* host threads for compute; 0 = backend default */
} velo_backend_options;

/* The table a backend plugin exports through its descriptor. */
typedef struct velo_backend_iface {
  uint32_t struct_size; /* sizeof(velo_backend_iface) */

  /* Cheap availability check that creates no device context.  Returns OK
   * if the backend can run here; otherwise UNAVAILABLE and a reason in
   * reason[0..reason_size) ("no CUDA driver found"). */
  velo_status (*probe)(char *reason, size_t reason_size);

  /* Number of devices (0 if unavailable). */
  int32_t (*device_count)(void);
  /* Describes device index into *out. INVALID_ARGUMENT for a bad index. */
  velo_status (*device_info)(int32_t index, velo_device_info *out, velo_error *err);

  /* Opens an instance on opts->device.  *out is owned by the caller and
   * released with close(). */
  velo_status (*open)(const velo_backend_options *opts, velo_backend_instance **out,
                      velo_error *err);
  /* Releases the instance; all its buffers must have been freed. */
  void (*close)(velo_backend_instance *inst);

  /* Allocates size bytes of device memory (RESOURCE_EXHAUSTED if it
   * cannot).  Contents are undefined.  Freed with buffer_free(). */
  velo_status (*buffer_alloc)(velo_backend_instance *inst, size_t size, velo_buffer **out,
                              velo_error *err);
  /* Optional (NULL: unsupported).  Wraps read-only caller memory (e.g. a
   * memory-mapped model file) as a buffer without copying: the backend
   * never writes to it (buffer_write and a node dst inside it are errors)
   * and never frees it; the memory must outlive the buffer.  Backends that
   * cannot use host memory directly leave this NULL and the caller
   * allocates and uploads instead. */
  velo_status (*buffer_wrap_host)(velo_backend_instance *inst, const void *ptr, size_t size,
                                  velo_buffer **out, velo_error *err);
  /* Frees a buffer; NULL is a no-op. */
  void (*buffer_free)(velo_backend_instance *inst, velo_buffer *buf);
  /* Host address of the buffer's first byte if it is host-visible, else
   * NULL.  Never fails. */
  void *(*buffer_host_ptr)(velo_buffer *buf);
  /* Copies size bytes between host memory and buf at offset; blocking.
   * OUT_OF_RANGE if offset + size exceeds the buffer. */
  velo_status (*buffer_write)(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                              const void *src, size_t size, velo_error *err);
  velo_status (*buffer_read)(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                             void *dst, size_t size, velo_error *err);

  /* True if this backend can compute node (op, dtypes, shapes). */
  bool (*supports)(velo_backend_instance *inst, const velo_graph_node *node);
  /* Computes the graph; returns when results are visible to
   * buffer_read().  UNIMPLEMENTED names the first unsupported node;
   * INVALID_ARGUMENT names a node with inconsistent shapes. */
  velo_status (*compute)(velo_backend_instance *inst, const velo_graph *graph,
                         velo_error *err);
} velo_backend_iface;

#ifdef __cplusplus
}
#endif
#endif /* VELO_BACKEND_H */
