/*
 * oip.c - inference.GRPCInferenceService in velod: the method table the
 * server registers, the dispatch of its calls, and the short unary methods
 * of the Open Inference Protocol and of Triton's extensions: ServerLive,
 * ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelStatistics,
 * RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload.
 * ModelInfer and ModelStreamInfer live in oip_infer.c.
 *
 * The unary methods answer on the completion-queue thread that received
 * them, in one batch (velo_srv_finish_unary), except repository load and
 * unload: a model load can take seconds, so each runs on a thread of its
 * own that finishes the call when it is done (velo_srv_model_control, as
 * velo.v1.Models does; gRPC calls may be finished from any thread; the call
 * counts as in flight until then, so a shutdown waits for it).
 *
 * Versions: velod serves one version of each model, "1".  A request that
 * names a version accepts "" and "1"; any other is NOT_FOUND (ModelReady:
 * ready = false).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "oip.h"
#include "repository.h"
#include "server_internal.h"

#define LOG_SOURCE "oip"

#ifndef VELO_VERSION
#define VELO_VERSION "0.0.0"
#endif

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */


/* True for the model versions velod has: "" (the server's choice) and "1". */
static bool version_ok(const char *v) { return !v[0] || strcmp(v, "1") == 0; }

/* NOT_FOUND message for another version of model. */
static void no_such_version(const char *model, const char *v, char *msg, size_t size) {
  char qv[VELO_SERVER_QUOTE_SIZE];
  snprintf(msg, size, "model '%s' has no version '%s'; velod serves version 1 of each model (or "
           "leave version empty)", model, velo_server_quote(v, strlen(v), qv, sizeof qv));
}

/* The model name, acquired, for a request that names a model and a
 * version; otherwise finishes the call with the error and returns NULL. */
static velo_model_entry *acquire_or_fail(velo_server *srv, grpc_call *call, const char *name,
                                         const char *version) {
  char msg[1024];
  velo_model_entry *e = velo_srv_acquire_or_finish(srv, call, name);
  if (!e || version_ok(version)) return e;
  no_such_version(e->name, version, msg, sizeof msg);
  velo_model_entry_release(e);
  velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_NOT_FOUND, msg);
  return NULL;
}

/* Packs msg and ends the call with OK. */
static void reply(velo_server *srv, grpc_call *call, const ProtobufCMessage *msg) {
  grpc_byte_buffer *bb = velo_srv_pack(msg);
  if (!bb) velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  else velo_srv_finish_unary(srv, call, bb, GRPC_STATUS_OK, NULL);
}

/* ------------------------------------------------------------------ */
/* Health                                                              */
/* ------------------------------------------------------------------ */

/* ServerLive: true whenever velod answers. */
static void server_live(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Inference__ServerLiveResponse resp = INFERENCE__SERVER_LIVE_RESPONSE__INIT;
  ProtobufCMessage *req =
      velo_srv_decode_or_finish(srv, call, payload, &inference__server_live_request__descriptor);
  if (!req) return;
  protobuf_c_message_free_unpacked(req, NULL);
  resp.live = 1;
  reply(srv, call, &resp.base);
}

/* ServerReady: velod listens only once the models given at start-up are
 * loaded; from then on it is ready until its shutdown begins, as long as
 * every start-up model of the repository that was not unloaded on request
 * is READY (velo_repository_ready: a model that failed to load with
 * --exit-on-error false, or one being reloaded, makes it false).  Models
 * given with --model leave only when unloaded on request. */
static void server_ready(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Inference__ServerReadyResponse resp = INFERENCE__SERVER_READY_RESPONSE__INIT;
  ProtobufCMessage *req =
      velo_srv_decode_or_finish(srv, call, payload, &inference__server_ready_request__descriptor);
  if (!req) return;
  protobuf_c_message_free_unpacked(req, NULL);
  resp.ready = !atomic_load(&srv->shutting_down) &&
               (!srv->repository || velo_repository_ready(srv->repository, NULL, 0));
  reply(srv, call, &resp.base);
}

/* ModelReady: loaded and not being unloaded.  An unknown model or version
 * is not an error: it is simply not ready. */
static void model_ready(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Inference__ModelReadyResponse resp = INFERENCE__MODEL_READY_RESPONSE__INIT;
  Inference__ModelReadyRequest *req = (Inference__ModelReadyRequest *)
      velo_srv_decode_or_finish(srv, call, payload, &inference__model_ready_request__descriptor);
  velo_model_entry *e;

  if (!req) return;
  if (!req->name[0]) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                          "name must be set: the model to check");
  } else {
    e = velo_registry_acquire(srv->registry, req->name);
    resp.ready = e && !velo_model_entry_unloading(e) && version_ok(req->version);
    velo_model_entry_release(e);
    reply(srv, call, &resp.base);
  }
  protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ------------------------------------------------------------------ */
/* Metadata                                                            */
/* ------------------------------------------------------------------ */

/* ServerMetadata: "velo", the release, the extensions (VELO_OIP_EXTENSIONS). */
static void server_metadata(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  static char *extensions[] = {
#define VELO_OIP_EXT_(name) (char *)name,
      VELO_OIP_EXTENSIONS(VELO_OIP_EXT_)
#undef VELO_OIP_EXT_
  };
  Inference__ServerMetadataResponse resp = INFERENCE__SERVER_METADATA_RESPONSE__INIT;
  ProtobufCMessage *req =
      velo_srv_decode_or_finish(srv, call, payload,
                                &inference__server_metadata_request__descriptor);
  if (!req) return;
  protobuf_c_message_free_unpacked(req, NULL);
  resp.name = (char *)"velo";
  resp.version = (char *)VELO_VERSION;
  resp.n_extensions = sizeof extensions / sizeof extensions[0];
  resp.extensions = extensions;
  reply(srv, call, &resp.base);
}

/* Fills t[0..n) and p[0..n) from the model's inputs or outputs. */
static void tensor_metadata(const velo_io_desc *d, size_t n,
                            Inference__ModelMetadataResponse__TensorMetadata *t,
                            Inference__ModelMetadataResponse__TensorMetadata **p) {
  for (size_t i = 0; i < n; i++) {
    const char *dt = velo_datatype_name(d[i].datatype);
    inference__model_metadata_response__tensor_metadata__init(&t[i]);
    t[i].name = (char *)(d[i].name ? d[i].name : "");
    t[i].datatype = (char *)(dt ? dt : "");
    t[i].n_shape = d[i].n_dims > 0 ? (size_t)d[i].n_dims : 0;
    t[i].shape = (int64_t *)d[i].shape;
    p[i] = &t[i];
  }
}

/* ModelMetadata: the platform and the declared inputs and outputs copied
 * into the model entry at load (velo_model_entry); version "1". */
static void model_metadata(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  static char *versions[] = {(char *)"1"};
  Inference__ModelMetadataResponse resp = INFERENCE__MODEL_METADATA_RESPONSE__INIT;
  Inference__ModelMetadataRequest *req = (Inference__ModelMetadataRequest *)
      velo_srv_decode_or_finish(srv, call, payload, &inference__model_metadata_request__descriptor);
  Inference__ModelMetadataResponse__TensorMetadata *t = NULL, **p = NULL;
  velo_model_entry *e;
  size_t n;

  if (!req) return;
  e = acquire_or_fail(srv, call, req->name, req->version);
  if (!e) goto out;
  n = e->n_inputs + e->n_outputs;
  t = calloc(n ? n : 1, sizeof *t);
  p = calloc(n ? n : 1, sizeof *p);
  if (!t || !p) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    tensor_metadata(e->inputs, e->n_inputs, t, p);
    tensor_metadata(e->outputs, e->n_outputs, t + e->n_inputs, p + e->n_inputs);
    resp.name = e->name;
    resp.n_versions = 1;
    resp.versions = versions;
    resp.platform = e->platform ? e->platform : (char *)"";
    resp.n_inputs = e->n_inputs;
    resp.inputs = p;
    resp.n_outputs = e->n_outputs;
    resp.outputs = p + e->n_inputs;
    reply(srv, call, &resp.base);
  }
  free(t);
  free(p);
  velo_model_entry_release(e);
out:
  protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

/* The statistics of one model, in storage the caller provides. */
typedef struct stats_storage {
  Inference__ModelStatistics ms;
  Inference__InferStatistics is;
  Inference__StatisticDuration d[8]; /* success, fail, queue, compute x3, cache x2 */
} stats_storage;

/* Fills s from e's counters (atomic loads: a snapshot, each counter
 * consistent on its own); s points into e's name, so e must stay
 * acquired until s is packed. */
static void fill_stats(stats_storage *s, velo_model_entry *e) {
  Inference__StatisticDuration **slot[8];
  inference__model_statistics__init(&s->ms);
  inference__infer_statistics__init(&s->is);
  slot[0] = &s->is.success;
  slot[1] = &s->is.fail;
  slot[2] = &s->is.queue;
  slot[3] = &s->is.compute_input;
  slot[4] = &s->is.compute_infer;
  slot[5] = &s->is.compute_output;
  slot[6] = &s->is.cache_hit;
  slot[7] = &s->is.cache_miss;
  for (int i = 0; i < 8; i++) {
    inference__statistic_duration__init(&s->d[i]);
    *slot[i] = &s->d[i];
  }
  s->d[0].count = atomic_load(&e->stats.success_count);
  s->d[0].ns = atomic_load(&e->stats.success_ns);
  s->d[1].count = atomic_load(&e->stats.fail_count);
  s->d[1].ns = atomic_load(&e->stats.fail_ns);
  /* velod does not time queueing and the compute phases apart (yet): the
   * whole of a successful request counts as compute_infer. */
  s->d[4] = s->d[0];
  s->ms.name = e->name;
  s->ms.version = (char *)"1";
  s->ms.last_inference = atomic_load(&e->stats.last_inference_ms);
  s->ms.inference_count = atomic_load(&e->stats.inference_count);
  s->ms.execution_count = atomic_load(&e->stats.execution_count);
  s->ms.inference_stats = &s->is;
}

/* ModelStatistics: one model (name set) or every loaded model. */
static void model_statistics(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Inference__ModelStatisticsResponse resp = INFERENCE__MODEL_STATISTICS_RESPONSE__INIT;
  Inference__ModelStatisticsRequest *req = (Inference__ModelStatisticsRequest *)
      velo_srv_decode_or_finish(srv, call, payload,
                                &inference__model_statistics_request__descriptor);
  velo_model_entry **list = NULL;
  stats_storage *st = NULL;
  Inference__ModelStatistics **ptrs = NULL;
  size_t n = 0;

  if (!req) return;
  if (req->name[0]) {
    velo_model_entry *e = acquire_or_fail(srv, call, req->name, req->version);
    if (!e) goto out;
    list = malloc(sizeof *list);
    if (list) {
      list[0] = e;
      n = 1;
    } else {
      velo_model_entry_release(e);
    }
  } else if (!version_ok(req->version)) {
    char msg[VELO_SERVER_QUOTE_SIZE + 128];
    no_such_version("(every model)", req->version, msg, sizeof msg);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_NOT_FOUND, msg);
    goto out;
  } else {
    n = velo_registry_list(srv->registry, &list);
  }
  if (n) {
    st = calloc(n, sizeof *st);
    ptrs = calloc(n, sizeof *ptrs);
  }
  if ((req->name[0] && !list) || (n && (!st || !ptrs))) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    for (size_t i = 0; i < n; i++) {
      fill_stats(&st[i], list[i]);
      ptrs[i] = &st[i].ms;
    }
    resp.n_model_stats = n;
    resp.model_stats = ptrs;
    reply(srv, call, &resp.base);
  }
  for (size_t i = 0; i < n; i++) velo_model_entry_release(list[i]);
  free(list);
  free(st);
  free(ptrs);
out:
  protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ------------------------------------------------------------------ */
/* Model repository                                                    */
/* ------------------------------------------------------------------ */

/* velod has one repository: its name is "" (any name else is unknown). */
static bool repository_name_ok(velo_server *srv, grpc_call *call, const char *name) {
  char msg[VELO_SERVER_QUOTE_SIZE + 128], q[VELO_SERVER_QUOTE_SIZE];
  if (!name[0]) return true;
  snprintf(msg, sizeof msg, "unknown repository '%s': velod has one model repository; leave "
           "repository_name empty", velo_server_quote(name, strlen(name), q, sizeof q));
  velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_NOT_FOUND, msg);
  return false;
}

/* RepositoryIndex: the repository's index (velo_repository_index), or
 * the loaded models when velod has no repository object. */
static void repository_index(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Inference__RepositoryIndexResponse resp = INFERENCE__REPOSITORY_INDEX_RESPONSE__INIT;
  Inference__RepositoryIndexRequest *req = (Inference__RepositoryIndexRequest *)
      velo_srv_decode_or_finish(srv, call, payload,
                                &inference__repository_index_request__descriptor);
  Inference__RepositoryIndexResponse__ModelIndex *mi = NULL, **ptrs = NULL;
  velo_repository_model *rows = NULL;
  velo_model_entry **list = NULL;
  size_t n = 0;

  if (!req) return;
  if (!repository_name_ok(srv, call, req->repository_name)) goto out;
  if (srv->repository) {
    n = velo_repository_index(srv->repository, req->ready != 0, &rows);
  } else { /* no repository: the loaded models */
    n = velo_registry_list(srv->registry, &list);
  }
  if (n) {
    mi = calloc(n, sizeof *mi);
    ptrs = calloc(n, sizeof *ptrs);
  }
  if (n && (!mi || !ptrs)) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      inference__repository_index_response__model_index__init(&mi[k]);
      mi[k].version = (char *)"1";
      if (rows) {
        mi[k].name = rows[i].name;
        mi[k].state = rows[i].state;
        mi[k].reason = rows[i].reason ? rows[i].reason : (char *)"";
      } else {
        bool unloading = velo_model_entry_unloading(list[i]);
        if (unloading && req->ready) continue;
        mi[k].name = list[i]->name;
        mi[k].state = (char *)(unloading ? "UNLOADING" : "READY");
      }
      ptrs[k] = &mi[k];
      k++;
    }
    resp.n_models = k;
    resp.models = ptrs;
    reply(srv, call, &resp.base);
  }
  if (rows) velo_repository_index_free(rows, n);
  for (size_t i = 0; list && i < n; i++) velo_model_entry_release(list[i]);
  free(list);
  free(mi);
  free(ptrs);
out:
  protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* Checks the request parameters of a repository call: velod takes a
 * model's settings from its config.json, so only Triton's
 * "unload_dependents" (unload, bool; velod models have no dependents) is
 * accepted.  Finishes the call and returns false otherwise. */
static bool repo_params_ok(velo_server *srv, grpc_call *call, bool load, size_t n,
                           char *const *keys, Inference__ModelRepositoryParameter *const *values) {
  for (size_t i = 0; i < n; i++) {
    char msg[VELO_SERVER_QUOTE_SIZE + 256], q[VELO_SERVER_QUOTE_SIZE];
    if (!load && strcmp(keys[i], "unload_dependents") == 0 && values[i] &&
        values[i]->parameter_choice_case ==
            INFERENCE__MODEL_REPOSITORY_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM)
      continue;
    snprintf(msg, sizeof msg, "parameter '%s' is not supported by %s: velod takes a model's "
             "settings from its config.json in the model repository%s",
             velo_server_quote(keys[i], strlen(keys[i]), q, sizeof q),
             load ? "RepositoryModelLoad" : "RepositoryModelUnload",
             load ? "" : " (only unload_dependents, a bool, is accepted)");
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT, msg);
    return false;
  }
  return true;
}

/* RepositoryModelLoad and RepositoryModelUnload. */
static void repository_load_unload(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload,
                                   bool load) {
  ProtobufCMessage *m = velo_srv_decode_or_finish(
      srv, call, payload,
      load ? &inference__repository_model_load_request__descriptor
           : &inference__repository_model_unload_request__descriptor);
  const char *repo_name, *model_name;
  size_t n_params;
  char *keys[64];
  Inference__ModelRepositoryParameter *values[64];

  if (!m) return;
  /* The two requests have the same fields under two generated types. */
#define REPOSITORY_REQUEST_FIELDS_(type)                       \
  do {                                                         \
    const type *r = (const type *)m;                           \
    repo_name = r->repository_name;                            \
    model_name = r->model_name;                                \
    n_params = r->n_parameters;                                \
    for (size_t i = 0; i < n_params && i < 64; i++) {          \
      keys[i] = r->parameters[i]->key;                         \
      values[i] = r->parameters[i]->value;                     \
    }                                                          \
  } while (0)
  if (load) REPOSITORY_REQUEST_FIELDS_(Inference__RepositoryModelLoadRequest);
  else REPOSITORY_REQUEST_FIELDS_(Inference__RepositoryModelUnloadRequest);
#undef REPOSITORY_REQUEST_FIELDS_
  if (n_params > 64) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                          "too many parameters (at most 64)");
    goto out;
  }
  if (!repository_name_ok(srv, call, repo_name)) goto out;
  if (!model_name[0]) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                          "model_name must be set: the repository model to load or unload");
    goto out;
  }
  if (!repo_params_ok(srv, call, load, n_params, keys, values)) goto out;
  if (!srv->repository) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_FAILED_PRECONDITION,
                          "velod was started without --model-repository: models given with "
                          "--model are neither loaded nor unloaded at run time");
    goto out;
  }
  velo_srv_model_control(srv, call, model_name, load,
                         load ? &inference__repository_model_load_response__descriptor
                              : &inference__repository_model_unload_response__descriptor,
                         load ? "RepositoryModelLoad" : "RepositoryModelUnload");
out:
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */
/* ------------------------------------------------------------------ */

void velo_oip_handle(velo_server *srv, int m, grpc_call *call, gpr_timespec deadline,
                     grpc_byte_buffer *payload) {
  switch (m) {
    case VELO_OIP_MODEL_INFER:
      velo_oip_handle_infer(srv, call, deadline, payload, false);
      return; /* payload taken over */
    case VELO_OIP_MODEL_STREAM_INFER:
      velo_oip_handle_infer(srv, call, deadline, payload, true);
      return;
    case VELO_OIP_SERVER_LIVE:
      server_live(srv, call, payload);
      break;
    case VELO_OIP_SERVER_READY:
      server_ready(srv, call, payload);
      break;
    case VELO_OIP_MODEL_READY:
      model_ready(srv, call, payload);
      break;
    case VELO_OIP_SERVER_METADATA:
      server_metadata(srv, call, payload);
      break;
    case VELO_OIP_MODEL_METADATA:
      model_metadata(srv, call, payload);
      break;
    case VELO_OIP_MODEL_STATISTICS:
      model_statistics(srv, call, payload);
      break;
    case VELO_OIP_REPOSITORY_INDEX:
      repository_index(srv, call, payload);
      break;
    case VELO_OIP_REPOSITORY_MODEL_LOAD:
      repository_load_unload(srv, call, payload, true);
      break;
    case VELO_OIP_REPOSITORY_MODEL_UNLOAD:
      repository_load_unload(srv, call, payload, false);
      break;
    default:
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INTERNAL, "no handler for this method");
      break;
  }
  if (payload) grpc_byte_buffer_destroy(payload);
}
