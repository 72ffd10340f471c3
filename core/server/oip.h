/*
 * oip.h - velod's Open Inference Protocol front end: the gRPC service
 * inference.GRPCInferenceService (KServe v2 plus Triton's extensions:
 * ModelStreamInfer, the model repository and statistics), as served by the
 * server in server.c.
 *
 * Three parts, one per file:
 *   oip.c           the method table, registration with the server, and the
 *                   short unary methods (health, metadata, statistics,
 *                   repository);
 *   oip_infer.c     ModelInfer and ModelStreamInfer: the call state
 *                   machines, the host's response sink for their requests,
 *                   building ModelInferResponse messages;
 *   oip_validate.c  the core's validation of a ModelInferRequest and its
 *                   conversion to the plugin ABI (velo_io_tensor,
 *                   velo_param), before any plugin sees a tensor.
 *
 * The server knows these methods as the range VELO_SRV_OIP_FIRST ..
 * VELO_SRV_OIP_LAST of its method enum (server_internal.h): it registers
 * each with its path and payload handling from VELO_OIP_METHOD_MAP and
 * hands every call to velo_oip_handle.  Requests of ModelInfer/ModelStreamInfer
 * reach the task plugins with a velo_call that velo_server_respond and
 * velo_server_call_cancelled pass on to velo_oip_respond /
 * velo_oip_call_cancelled (velo_oip_owns_call tells them apart).
 */
#ifndef VELO_SERVER_OIP_H
#define VELO_SERVER_OIP_H

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "inference/grpc_service.pb-c.h"
#include "velo/plugin.h"

struct velo_server;

/* The methods of inference.GRPCInferenceService that velod serves, in the
 * order of the server's method range:
 * XX(enum suffix, method name, requests are a stream).  A streamed method
 * is registered with GRPC_SRM_PAYLOAD_NONE and reads its requests with
 * RECV_MESSAGE; the others get their one request with the call. */
#define VELO_OIP_SERVICE "inference.GRPCInferenceService"
#define VELO_OIP_METHOD_MAP(XX)                         \
  XX(SERVER_LIVE, "ServerLive", false)                  \
  XX(SERVER_READY, "ServerReady", false)                \
  XX(MODEL_READY, "ModelReady", false)                  \
  XX(SERVER_METADATA, "ServerMetadata", false)          \
  XX(MODEL_METADATA, "ModelMetadata", false)            \
  XX(MODEL_INFER, "ModelInfer", false)                  \
  XX(MODEL_STREAM_INFER, "ModelStreamInfer", true)      \
  XX(MODEL_STATISTICS, "ModelStatistics", false)        \
  XX(REPOSITORY_INDEX, "RepositoryIndex", false)        \
  XX(REPOSITORY_MODEL_LOAD, "RepositoryModelLoad", false) \
  XX(REPOSITORY_MODEL_UNLOAD, "RepositoryModelUnload", false)

typedef enum velo_oip_method {
#define VELO_OIP_ENUM_(id, name, stream) VELO_OIP_##id,
  VELO_OIP_METHOD_MAP(VELO_OIP_ENUM_)
#undef VELO_OIP_ENUM_
  VELO_OIP_METHOD_COUNT
} velo_oip_method;

/* The protocol extensions velod implements, as ServerMetadata lists them
 * (Triton's names). */
#define VELO_OIP_EXTENSIONS(XX) \
  XX("model_repository")        \
  XX("statistics")              \
  XX("parameters")

/* ------------------------------------------------------------------ */
/* oip.c: the server's hooks                                           */
/* ------------------------------------------------------------------ */

/* Serves one call of method m (a velo_oip_method).  Takes over call (one
 * reference), payload (NULL for ModelStreamInfer; destroyed here) and the
 * call's in-flight count, like the server's other handlers.  Runs on a
 * completion-queue thread and does not block on the network or on a
 * model's work.  (Repository load/unload run on the calling thread: they
 * may take as long as a model load.) */
void velo_oip_handle(struct velo_server *srv, int m, grpc_call *call, gpr_timespec deadline,
                     grpc_byte_buffer *payload);

/* ------------------------------------------------------------------ */
/* oip_infer.c: ModelInfer / ModelStreamInfer                          */
/* ------------------------------------------------------------------ */

/* Serve one ModelInfer (stream = false; payload is the request) or
 * ModelStreamInfer (stream = true; payload NULL) call.  Ownership as for
 * velo_oip_handle. */
void velo_oip_handle_infer(struct velo_server *srv, grpc_call *call, gpr_timespec deadline,
                           grpc_byte_buffer *payload, bool stream);

/* True when call is a request of ModelInfer/ModelStreamInfer (every
 * velo_call of the server starts with a velo_srv_tag; ours carry a marker
 * there).  call must be a live velo_call of this server.  Thread-safe. */
bool velo_oip_owns_call(const velo_call *call);

/* velo_host.respond for our requests (see velo/plugin.h): packs resp into
 * a ModelInferResponse (ModelInfer: kept until the final response) or a
 * ModelStreamInferResponse (ModelStreamInfer: sent at once) and queues it.
 * Copies what it keeps; never blocks on the network.  CANCELLED when the
 * client has gone.  Thread-safe. */
velo_status velo_oip_respond(velo_call *call, const velo_response *resp);

/* velo_host.call_cancelled for our requests. */
bool velo_oip_call_cancelled(velo_call *call);

/* ------------------------------------------------------------------ */
/* oip_validate.c: validation and conversion of a ModelInferRequest    */
/* ------------------------------------------------------------------ */

/* A ModelInferRequest as the plugin ABI sees it.  Everything it points to
 * is owned by it or borrowed from the request message it was built from
 * (raw_input_contents, strings), which must outlive it. */
typedef struct velo_oip_request {
  size_t n_inputs;
  velo_io_tensor *inputs; /* n_inputs, in the order of the request */
  int64_t *dims;          /* the shapes of all inputs, back to back */
  void **owned;           /* n_inputs: converted typed contents, or NULL */
  size_t n_params;
  velo_param *params;     /* request parameters; "stop" arrays expanded */
  char **strings;         /* decoded stop strings, owned */
  size_t n_strings;
  bool stream_set;        /* the request parameter "stream" was given ... */
  bool stream;            /* ... with this value (consumed, not passed on) */
} velo_oip_request;

/* Largest dims of one input (VELO_MAX_IO_DIMS). */
#define VELO_OIP_MAX_DIMS VELO_MAX_IO_DIMS

/* The most inputs, and the most requested outputs, of one request. */
#define VELO_OIP_MAX_TENSORS 4096

/* The most strings of a JSON-array "stop" parameter, and the most bytes
 * of each (decoded).  They mirror the text plugin's TEXTGEN_MAX_STOP and
 * TEXTGEN_MAX_STOP_BYTES (plugins/textgen/params.h): keep them equal. */
#define VELO_OIP_MAX_STOP 16
#define VELO_OIP_MAX_STOP_BYTES 256

/* Finds the first repeated name among n names (name_of(ctx, i), i < n,
 * each non-NULL) in O(n log n): the smallest *second that has an earlier
 * equal name, and *first the earliest such.  Returns 1 when found, 0 when
 * all differ (*first, *second untouched), -1 when out of memory.
 * Thread-safe (works on its arguments only). */
int velo_oip_first_duplicate(const char *(*name_of)(const void *ctx, size_t i), const void *ctx,
                             size_t n, size_t *first, size_t *second);

/* Validates msg against the model's declared inputs decl[0..n_decl) (none
 * declared: any names are accepted) and converts it into *out, which the
 * caller frees with velo_oip_request_free (also after an error: *out is
 * always left freeable).  model names the model in messages.
 *
 * Checks, each failing with INVALID_ARGUMENT and a message naming the
 * input (or parameter) and what was expected: no inputs, or more than
 * VELO_OIP_MAX_TENSORS; an empty or repeated input name; an unknown datatype; more than VELO_OIP_MAX_DIMS
 * dimensions or a negative one (0 is allowed: an empty tensor); an element
 * count or byte size that overflows; with declared inputs, an undeclared
 * input, a missing non-optional one, another datatype or a shape that does
 * not match the declared one (-1 matches any size); raw_input_contents
 * with a count other than the inputs' or together with any input's
 * contents; a raw size other than elements x datatype size; BYTES whose
 * 4-byte little-endian length prefixes do not cover the buffer exactly
 * with as many elements as the shape; typed contents in another field than
 * the datatype's, with another count, or with values outside a narrow
 * integer type's range; FP16/BF16 in typed form; no data for a non-empty
 * tensor; a parameter without a value, with an empty key, a uint64 above
 * INT64_MAX (except "seed", passed on as the same 64 bits), "stream" or
 * "triton_enable_empty_final_response" not bool, or a "stop" that starts
 * with '[' but is not a JSON array of strings (or has more than
 * VELO_OIP_MAX_STOP strings, or one over VELO_OIP_MAX_STOP_BYTES bytes).  RESOURCE_EXHAUSTED when out
 * of memory.  Thread-safe (works on its arguments only). */
velo_status velo_oip_request_convert(const Inference__ModelInferRequest *msg, const char *model,
                                     const velo_io_desc *decl, size_t n_decl,
                                     velo_oip_request *out, velo_error *err);

/* Frees what velo_oip_request_convert built and zeroes *r.  NULL-safe. */
void velo_oip_request_free(velo_oip_request *r);

/* The datatype spelled name ("FP32"), or VELO_DATATYPE_INVALID.  Pure. */
velo_datatype velo_oip_datatype(const char *name);

/* Formats a shape as "[2, -1, 3]" into buf (always NUL-terminated; cut
 * with "..." when it does not fit).  Returns buf. */
char *velo_oip_shape_str(const int64_t *dims, size_t n, char *buf, size_t size);

#endif
