/*
 * velo/task.h - the interface a task plugin implements.
 *
 * A task plugin owns one kind of work end to end ("text-generation",
 * "identity", later "image-classification"): it loads a model on the
 * backend the host chose, describes the model's inputs and outputs, accepts
 * requests, and answers them through the host's response sink
 * (velo_host.respond, velo/plugin.h), once or many times per request.
 *
 * One request representation crosses the ABI for every task: named tensors
 * (velo_io_tensor) plus a parameter list (velo_param), as in the Open
 * Inference Protocol.  Text generation reads "text_input" (BYTES [1]) and
 * parameters such as max_tokens, temperature and stop; it answers with
 * "text_output" (BYTES [1]) and "token_ids" (INT32 [n]).  Task-specific
 * extras that do not fit that shape (e.g. tokenize) are offered through
 * get_extension() (see velo/text.h).
 *
 * Contract for submit(): when it returns an error, the host's respond() is
 * never called for that request; when it returns OK, respond() is called
 * zero or more times with final = false and then exactly once with
 * final = true (also for cancellation and failures), after which the task
 * never touches the request or its call handle again.  A task may call
 * respond() from inside submit() (a synchronous task answering at once);
 * it then returns OK from submit() after the final response, and the host
 * copes with either order.
 */
#ifndef VELO_TASK_H
#define VELO_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/backend.h"
#include "velo/status.h"
#include "velo/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct velo_model velo_model; /* opaque, owned by the task plugin */
typedef struct velo_call velo_call;   /* opaque, owned by the host: one request in flight */
struct velo_host;

/* What the host passes to model_load().  Everything is borrowed for the
 * duration of the call except backend and backend_instance, which stay
 * valid until model_unload() returns. */
typedef struct velo_model_config {
  uint32_t struct_size;        /* sizeof(velo_model_config) */
  const char *name;            /* name the model is served under */
  const char *path;            /* model file (e.g. GGUF), NUL-terminated */
  const char *backend_name;    /* "cpu", "cuda", ... */
  const velo_backend_iface *backend;      /* compute backend to use */
  velo_backend_instance *backend_instance; /* opened by the host */
  int64_t context_length;      /* tokens per sequence; 0 = model default */
  size_t n_params;             /* extra configuration, task-specific */
  const velo_param *params;
  /* ABI 1.1 (read only if struct_size covers them).  Size of the KV cache
   * pool a model that keeps one (text generation) shares among all its
   * sequences: kv_cache_tokens token slots, or, when that is 0,
   * kv_cache_bytes bytes; both 0 = the task's default.  Tasks without a
   * KV cache ignore them. */
  int64_t kv_cache_tokens;
  uint64_t kv_cache_bytes;
} velo_model_config;

/* One named counter of a loaded model (see VELO_STATS_EXTENSION). */
typedef struct velo_stat {
  const char *name; /* static string, lower_snake_case, e.g. "kv_blocks_used" */
  int64_t value;
} velo_stat;

/* The statistics extension ("velo.stats.v1", ABI 1.1), offered through
 * get_extension by models that keep counters (a serving engine's KV cache
 * and batch).  The host shows them in velo.v1.Models/ListModels. */
#define VELO_STATS_EXTENSION "velo.stats.v1"

typedef struct velo_stats_ext {
  uint32_t struct_size; /* sizeof(velo_stats_ext) */
  /* Writes up to cap counters into out and returns how many the model has
   * (call again with a larger cap if that is more than cap).  A consistent
   * snapshot, taken between two engine steps.  Thread-safe; never blocks
   * for long. */
  size_t (*read)(velo_model *model, velo_stat *out, size_t cap);
} velo_stats_ext;

/* Describes one input or output of a model (for ModelMetadata). */
typedef struct velo_io_desc {
  uint32_t struct_size;  /* sizeof(velo_io_desc) */
  const char *name;
  velo_datatype datatype;
  int32_t n_dims;
  int64_t shape[VELO_MAX_IO_DIMS]; /* -1 = variable */
  bool optional;
} velo_io_desc;

/* What a loaded model looks like.  Every pointer is owned by the model and
 * stays valid until model_unload(). */
typedef struct velo_model_metadata {
  uint32_t struct_size;     /* set by the caller */
  const char *platform;     /* e.g. "velo_textgen" */
  const char *architecture; /* e.g. "llama"; "" when not applicable */
  int64_t context_length;   /* max tokens per sequence; 0 if n/a */
  size_t n_inputs;
  const velo_io_desc *inputs;
  size_t n_outputs;
  const velo_io_desc *outputs;
} velo_model_metadata;

/* One request.  All pointers are borrowed from the host and stay valid until
 * the task has emitted the final response for call. */
typedef struct velo_request {
  uint32_t struct_size;     /* sizeof(velo_request) */
  velo_call *call;          /* pass to velo_host.respond / call_cancelled */
  const char *id;           /* client's request id; "" if none */
  size_t n_inputs;
  const velo_io_tensor *inputs;
  size_t n_params;
  const velo_param *params;
  bool streaming;           /* the client wants partial responses */
} velo_request;

/* One response (partial or final).  Borrowed by velo_host.respond for the
 * duration of that call only: the host copies what it keeps. */
typedef struct velo_response {
  uint32_t struct_size;     /* sizeof(velo_response) */
  size_t n_outputs;
  const velo_io_tensor *outputs;
  size_t n_params;          /* e.g. finish_reason, prompt_tokens */
  const velo_param *params;
  bool final;               /* last response for this call */
  velo_status status;       /* final only: non-OK ends the call with it */
  const char *error_message; /* with a non-OK status; NUL-terminated */
} velo_response;

/* The table a task plugin exports through its descriptor. */
typedef struct velo_task_iface {
  uint32_t struct_size; /* sizeof(velo_task_iface) */
  const char *task;     /* task name, e.g. "text-generation" */

  /* Loads a model.  On success *out is owned by the host until it calls
   * model_unload().  Errors: NOT_FOUND (file), DATA_LOSS (corrupt file),
   * INVALID_ARGUMENT / UNIMPLEMENTED (unsupported architecture or tensor
   * type, naming it), RESOURCE_EXHAUSTED (memory).  Called from any host
   * thread; concurrent loads of different models are allowed. */
  velo_status (*model_load)(const struct velo_host *host, const velo_model_config *cfg,
                            velo_model **out, velo_error *err);
  /* Ends every request still in flight (each gets a final response with
   * status UNAVAILABLE), waits until none is running, frees everything. */
  void (*model_unload)(velo_model *model);
  /* Fills *out (out->struct_size set by the caller).  Thread-safe. */
  velo_status (*model_metadata)(velo_model *model, velo_model_metadata *out,
                                velo_error *err);
  /* Accepts a request (see the contract above) and returns at once; the
   * work runs on the task's own threads.  Validation errors are returned
   * here as INVALID_ARGUMENT with a message naming the field.
   * Thread-safe. */
  velo_status (*submit)(velo_model *model, const velo_request *req, velo_error *err);
  /* Optional (NULL: none).  Task-specific extension tables by name, e.g.
   * VELO_TEXT_EXTENSION; NULL if not offered.  The table lives as long as
   * the plugin is loaded. */
  const void *(*get_extension)(velo_model *model, const char *name);
} velo_task_iface;

#ifdef __cplusplus
}
#endif
#endif /* VELO_TASK_H */
