/*
 * cpu_backend.h - internals of the CPU backend shared by its source files
 * and its unit tests: the instance and buffer structs, the graph-node
 * checks and kernels (ops.c), and the backend table (backend.c).
 *
 * The plugin module (plugin.c) only wraps velo_cpu_backend_iface() in a
 * descriptor; tests link the static library velo_cpu_kernels and call the
 * same table directly.
 */
#ifndef VELO_CPU_BACKEND_H
#define VELO_CPU_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu_kernels.h"
#include "threadpool.h"
#include "velo/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VELO_CPU_BUFFER_MAGIC 0x56435042u   /* "VCPB" */
#define VELO_CPU_INSTANCE_MAGIC 0x56435049u /* "VCPI" */
#define VELO_CPU_ALIGN 64

/* A CPU buffer: host memory, either owned (64-byte aligned, malloc'd) or
 * wrapped caller memory (never written to nor freed by the backend). */
struct velo_buffer {
  uint32_t magic; /* VELO_CPU_BUFFER_MAGIC while alive */
  bool owned;     /* false: wrapped, read-only */
  void *ptr;
  size_t size; /* bytes */
};

/* An open CPU backend instance.  Used by one thread at a time (backend.h). */
struct velo_backend_instance {
  uint32_t magic;            /* VELO_CPU_INSTANCE_MAGIC while open */
  velo_cpu_pool *pool;       /* persistent workers */
  const velo_cpu_vec *vec;   /* ISA variant in use */
  void *scratch;             /* VELO_CPU_ALIGN-aligned work memory */
  size_t scratch_size;       /* bytes */
};

/* The backend's function table (static storage, valid forever), as an
 * object (so a descriptor can point at it statically) and through a
 * function. */
extern const velo_backend_iface velo_cpu_iface;
const velo_backend_iface *velo_cpu_backend_iface(void);

/* Selects the ISA variant an open instance uses (tests compare variants).
 * INVALID_ARGUMENT when this CPU or build lacks it; the instance is then
 * unchanged.  Same threading rule as compute(). */
velo_status velo_cpu_instance_set_isa(velo_backend_instance *inst, velo_cpu_isa isa,
                                      velo_error *err);

/* Name of an op ("MUL_MAT"), or "op?" for an unknown value.  Static. */
const char *velo_cpu_op_name(int op);

/* Checks a node's op, tensor dtypes, shapes and parameters without
 * touching tensor data.  index names the node in messages ("node 3
 * (MUL_MAT): ...").  Returns OK; UNIMPLEMENTED for an op, dtype or mode this
 * backend lacks; INVALID_ARGUMENT for missing tensors, inconsistent shapes
 * or bad parameters.  Pure; thread-safe. */
velo_status velo_cpu_node_check(const velo_graph_node *node, size_t index, velo_error *err);

/* Computes one node that passed velo_cpu_node_check on inst's pool.  First
 * checks the data: every tensor's data is set and, when it lies in a CPU
 * buffer, inside that buffer (dst not in a wrapped read-only one); ids,
 * positions and ATTENTION_PAGED block tables are in range; for SET_ROWS
 * and ATTENTION_PAGED, dst overlaps no source.  Those failures are
 * INVALID_ARGUMENT and leave dst untouched; RESOURCE_EXHAUSTED if scratch
 * memory cannot grow. */
velo_status velo_cpu_node_compute(velo_backend_instance *inst, const velo_graph_node *node,
                                  size_t index, velo_error *err);

/* Computes node i of the n_nodes nodes at nodes (stride bytes apart, all
 * passed velo_cpu_node_check) and sets *done to the number of nodes it
 * computed: 1, or more when node i is a MUL_MAT with Q8_0/Q4_0 weights and
 * the nodes after it are MUL_MATs of the same weight dtype on the same
 * activations (a transformer's q/k/v or gate/up projections) that can run
 * as one job with identical results (no dst overlapping an input of the
 * group).  Errors as velo_cpu_node_compute, and then nothing of node i
 * (nor of a group starting there) is written; a node whose data check
 * fails is never part of a group, so it fails by its own index after the
 * nodes before it were computed, as in node order. */
velo_status velo_cpu_graph_step(velo_backend_instance *inst, const char *nodes, size_t stride,
                                size_t i, size_t n_nodes, size_t *done, velo_error *err);

#ifdef __cplusplus
}
#endif
#endif /* VELO_CPU_BACKEND_H */
