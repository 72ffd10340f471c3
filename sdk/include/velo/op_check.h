/* op_check.h - the shared shape and parameter checks of the graph ops of
 * backend.h (GET_ROWS .. ATTENTION_PAGED).  The op contracts are ABI-level
 * facts, the same for every backend; only the weight dtypes a backend takes
 * and its own size limits differ, so a backend calls velo_op_check_tensor()
 * on dst and the first velo_op_n_src() srcs, velo_op_check_dtypes() with its
 * weight dtypes, velo_op_check_shapes(), then checks its own limits.  The
 * implementation is the static library velo_op_check (backends/common),
 * which backend plugins, the project's and third-party ones, may link. */
#ifndef VELO_OP_CHECK_H
#define VELO_OP_CHECK_H

#include <stddef.h>

#include "velo/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of src slots op uses (1, 2 or 4); 2 for an unknown op.  Pure. */
int velo_op_n_src(int op);

/* The op's name without the VELO_OP_ prefix ("MUL_MAT"), "op?" if unknown.
 * Static storage.  Pure. */
const char *velo_op_check_name(int op);

/* Checks one tensor's header, t being node's dst or src named role
 * ("src1"): present, struct_size, a known dtype, n_dims 1..4, every ne in
 * 1..2^40 and nb <= 2^40, at most 2^40 elements, rows a whole number of
 * blocks with contiguous elements (nb[0] = the dtype's block bytes).
 * Returns VELO_OK, or fills err (may be NULL) as velo_op_check_shapes does
 * and returns INVALID_ARGUMENT.  Thread-safe; reads only. */
velo_status velo_op_check_tensor(const velo_graph_node *node, size_t index, const char *backend,
                                 const char *role, const velo_tensor *t, velo_error *err);

/* Checks the dtypes of node's dst and srcs against its op's contract in
 * backend.h: F32 activations, I32 ids and positions, F32 or F16 caches and
 * copy targets, and for the weights (src0 of GET_ROWS and MUL_MAT) one of
 * the n_weights dtypes in weights, the ones this backend multiplies.  The
 * caller has checked that the tensors are present.  Returns VELO_OK, or
 * fills err (may be NULL) with "<backend>: node <index> (<OP>): <role>
 * dtype <name> is not supported" and returns UNIMPLEMENTED.  Thread-safe. */
velo_status velo_op_check_dtypes(const velo_graph_node *node, size_t index, const char *backend,
                                 const velo_dtype *weights, size_t n_weights, velo_error *err);

/* Checks node's shapes and parameters against its op's contract in
 * backend.h.  The caller has already checked that node, node->dst and the
 * first velo_op_n_src(node->op) srcs are present with sane headers (ne in
 * 1..2^40) and that their dtypes are ones it takes.  Returns VELO_OK, or
 * fills err (may be NULL) with "<backend>: node <index> (<OP>): <message>"
 * and returns INVALID_ARGUMENT for an inconsistent node, UNIMPLEMENTED for
 * an unknown op or rope mode.  Thread-safe; reads node only. */
velo_status velo_op_check_shapes(const velo_graph_node *node, size_t index, const char *backend,
                                 velo_error *err);

#ifdef __cplusplus
}
#endif

#endif /* VELO_OP_CHECK_H */
