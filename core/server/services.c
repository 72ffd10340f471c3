/*
 * services.c - velod's unary methods: velo.v1.TextGeneration/Tokenize and
 * velo.v1.Models/ListModels, LoadModel and UnloadModel
 * (grpc.health.v1.Health is in health.c).  Tokenize and ListModels are
 * answered on the queue thread that received them, in one batch
 * (velo_srv_finish_unary): they are short, and Tokenize's work is the
 * task plugin's thread-safe tokenize().  LoadModel and UnloadModel run on a
 * thread of their own (a load takes as long as reading the model) and go
 * through the model repository (repository.h); velo_srv_model_control,
 * here, does that for the Open Inference Protocol's repository methods too.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"
#include "velo/v1/velo.pb-c.h"

#define LOG_SOURCE "server"

/* Tokenize: the text extension of the model's task plugin, through the
 * registry (velo_model_entry_tokenize: UNIMPLEMENTED without a tokenizer,
 * UNAVAILABLE while the model is being unloaded). */
static void tokenize(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Velo__V1__TokenizeRequest *req;
  Velo__V1__TokenizeResponse resp = VELO__V1__TOKENIZE_RESPONSE__INIT;
  velo_model_entry *entry;
  int32_t *ids = NULL;
  size_t n_ids = 0;
  velo_error err;
  velo_status st;
  bool add_special;

  req = (Velo__V1__TokenizeRequest *)velo_srv_decode_or_finish(
      srv, call, payload, &velo__v1__tokenize_request__descriptor);
  if (!req) return;
  add_special = req->_add_special_case == VELO__V1__TOKENIZE_REQUEST___ADD_SPECIAL_ADD_SPECIAL
                    ? req->add_special != 0
                    : true;
  entry = velo_srv_acquire_or_finish(srv, call, req->model);
  if (!entry) goto out;
  velo_error_init(&err);
  st = velo_model_entry_tokenize(entry, req->text, strlen(req->text), add_special, &ids, &n_ids,
                                 &err);
  if (st != VELO_OK) {
    velo_srv_finish_unary(srv, call, NULL, velo_srv_status(st),
                          err.message[0] ? err.message : velo_status_name(st));
    goto out;
  }
  resp.n_token_ids = n_ids;
  resp.token_ids = ids;
  velo_srv_finish_unary(srv, call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
  free(ids);
out:
  velo_model_entry_release(entry);
  protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* Fills info from a loaded model's entry (strings borrowed from it; device
 * written into the caller's buffer). */
static void fill_info(Velo__V1__ModelInfo *info, const velo_model_entry *e, char *device,
                      size_t device_size) {
  snprintf(device, device_size, "%s:%d", e->backend_name, (int)e->device);
  info->name = e->name;
  info->task = e->task_name;
  info->backend = e->backend_name;
  info->file = e->path;
  info->context_length = e->context_length;
  info->device = device;
}

/* The counters of one ListModels row: what the registry copied out of
 * the model, and the messages that point into it.  All three malloc'd. */
typedef struct row_counters {
  velo_model_counter *raw;
  Velo__V1__ModelCounter *msgs;
  Velo__V1__ModelCounter **ptrs;
} row_counters;

/* Fills info->counters with the model's counters (velo_model_entry_counters:
 * never waits behind an unload).  Best effort: a model being unloaded, one
 * whose task keeps none, or memory running out leave the list empty.  The
 * memory goes into *rc, freed by free_counters. */
static void fill_counters(Velo__V1__ModelInfo *info, velo_model_entry *e, row_counters *rc) {
  size_t n = 0;
  if (velo_model_entry_counters(e, &rc->raw, &n, NULL) != VELO_OK || n == 0) return;
  rc->msgs = calloc(n, sizeof *rc->msgs);
  rc->ptrs = calloc(n, sizeof *rc->ptrs);
  if (!rc->msgs || !rc->ptrs) return;
  for (size_t k = 0; k < n; k++) {
    velo__v1__model_counter__init(&rc->msgs[k]);
    rc->msgs[k].name = (char *)rc->raw[k].name;
    rc->msgs[k].value = rc->raw[k].value;
    rc->ptrs[k] = &rc->msgs[k];
  }
  info->n_counters = n;
  info->counters = rc->ptrs;
}

/* Frees what fill_counters allocated for n rows, and rcs itself. */
static void free_counters(row_counters *rcs, size_t n) {
  for (size_t i = 0; rcs && i < n; i++) {
    free(rcs[i].raw);
    free(rcs[i].msgs);
    free(rcs[i].ptrs);
  }
  free(rcs);
}

/* ListModels: one ModelInfo per model velod knows, with its state.  With a
 * repository these are the rows of its index (the models not loaded have
 * only name, state and reason); without one, the loaded models.  READY
 * models carry their engine counters (fill_counters). */
static void list_models(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  ProtobufCMessage *req;
  Velo__V1__ListModelsResponse resp = VELO__V1__LIST_MODELS_RESPONSE__INIT;
  velo_model_entry **list = NULL; /* acquired, one per row (NULL: not loaded) */
  velo_repository_model *rows = NULL;
  Velo__V1__ModelInfo *infos = NULL;
  Velo__V1__ModelInfo **ptrs = NULL;
  char (*devices)[80] = NULL;
  row_counters *rcs = NULL;
  size_t n;

  req = velo_srv_decode_or_finish(srv, call, payload, &velo__v1__list_models_request__descriptor);
  if (!req) return;
  protobuf_c_message_free_unpacked(req, NULL);

  if (srv->repository) {
    n = velo_repository_index(srv->repository, false, &rows);
    list = n ? calloc(n, sizeof *list) : NULL;
    for (size_t i = 0; list && i < n; i++) list[i] = velo_registry_acquire(srv->registry, rows[i].name);
  } else {
    n = velo_registry_list(srv->registry, &list);
  }
  if (n) {
    infos = calloc(n, sizeof *infos);
    ptrs = calloc(n, sizeof *ptrs);
    devices = calloc(n, sizeof *devices);
    rcs = calloc(n, sizeof *rcs);
  }
  if (n && (!list || !infos || !ptrs || !devices || !rcs)) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    for (size_t i = 0; i < n; i++) {
      velo__v1__model_info__init(&infos[i]);
      if (list[i]) fill_info(&infos[i], list[i], devices[i], sizeof devices[i]);
      if (rows) {
        infos[i].name = rows[i].name;
        infos[i].state = rows[i].state;
        infos[i].reason = rows[i].reason;
      } else {
        infos[i].state = velo_model_entry_unloading(list[i]) ? "UNLOADING" : "READY";
      }
      if (list[i] && strcmp(infos[i].state, "READY") == 0) fill_counters(&infos[i], list[i], &rcs[i]);
      ptrs[i] = &infos[i];
    }
    resp.n_models = n;
    resp.models = ptrs;
    velo_srv_finish_unary(srv, call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
  }
  for (size_t i = 0; list && i < n; i++) velo_model_entry_release(list[i]);
  free(list);
  velo_repository_index_free(rows, n);
  free(infos);
  free(ptrs);
  free(devices);
  free_counters(rcs, n);
}

/* A model load or unload, run on a thread of its own (velo_srv_model_control). */
typedef struct control_job {
  velo_server *srv;
  grpc_call *call;
  bool load;
  char *name;
  const ProtobufCMessageDescriptor *response;
  const char *method;
} control_job;

/* The thread of a control_job: loads or unloads, finishes the call (after
 * which it touches nothing of the server) and frees the job. */
static void *control_thread(void *arg) {
  control_job *j = arg;
  velo_server *srv = j->srv;
  velo_error err;
  velo_status st;
  ProtobufCMessage *resp;
  grpc_byte_buffer *bb = NULL;

  velo_error_init(&err);
  st = j->load ? velo_repository_load(srv->repository, j->name, &err)
               : velo_repository_unload(srv->repository, j->name, &err);
  velo_log(st == VELO_OK ? VELO_LOG_INFO : VELO_LOG_WARN, LOG_SOURCE, "%s of model '%s': %s%s%s",
           j->method, j->name, velo_status_name(st), st == VELO_OK ? "" : ": ",
           st == VELO_OK ? "" : err.message);
  if (st != VELO_OK) {
    velo_srv_finish_unary(srv, j->call, NULL, velo_srv_status(st),
                          err.message[0] ? err.message : velo_status_name(st));
  } else {
    if ((resp = malloc(j->response->sizeof_message)) != NULL) {
      protobuf_c_message_init(j->response, resp);
      bb = velo_srv_pack(resp);
      free(resp);
    }
    if (bb) velo_srv_finish_unary(srv, j->call, bb, GRPC_STATUS_OK, NULL);
    else velo_srv_finish_unary(srv, j->call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  free(j->name);
  free(j);
  return NULL;
}

void velo_srv_model_control(velo_server *srv, grpc_call *call, const char *name, bool load,
                            const ProtobufCMessageDescriptor *response, const char *method) {
  control_job *j = calloc(1, sizeof *j);
  pthread_t th;
  pthread_attr_t attr;

  if (j) j->name = strdup(name);
  if (!j || !j->name) {
    free(j);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  j->srv = srv;
  j->call = call;
  j->load = load;
  j->response = response;
  j->method = method;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&th, &attr, control_thread, j) != 0) {
    free(j->name);
    free(j);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED,
                          "cannot start a thread for the request");
  }
  pthread_attr_destroy(&attr);
}

/* LoadModel / UnloadModel: velo_srv_model_control.  FAILED_PRECONDITION
 * without a repository object (velod always passes one); INVALID_ARGUMENT
 * for an empty name. */
static void load_unload(velo_server *srv, velo_srv_method method, grpc_call *call,
                        grpc_byte_buffer *payload) {
  bool load = method == VELO_SRV_LOAD_MODEL;
  const ProtobufCMessageDescriptor *desc =
      load ? &velo__v1__load_model_request__descriptor : &velo__v1__unload_model_request__descriptor;
  ProtobufCMessage *req = velo_srv_decode_or_finish(srv, call, payload, desc);
  if (!req) return;
  const char *name = load ? ((Velo__V1__LoadModelRequest *)req)->name
                          : ((Velo__V1__UnloadModelRequest *)req)->name;

  if (!srv->repository) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_FAILED_PRECONDITION,
                          "velod has no model control: start it with --model-repository DIR "
                          "--model-control explicit");
  } else if (!name[0]) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                          "name must be set: the model's directory name in the repository");
  } else {
    velo_srv_model_control(srv, call, name, load,
                           load ? &velo__v1__load_model_response__descriptor
                                : &velo__v1__unload_model_response__descriptor,
                           load ? "LoadModel" : "UnloadModel");
  }
  protobuf_c_message_free_unpacked(req, NULL);
}

void velo_srv_handle_unary(velo_server *srv, velo_srv_method method, grpc_call *call,
                           grpc_byte_buffer *payload) {
  switch (method) {
    case VELO_SRV_TOKENIZE:
      tokenize(srv, call, payload);
      break;
    case VELO_SRV_LIST_MODELS:
      list_models(srv, call, payload);
      break;
    case VELO_SRV_LOAD_MODEL:
    case VELO_SRV_UNLOAD_MODEL:
      load_unload(srv, method, call, payload);
      break;
    default:
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INTERNAL, "no handler for this method");
      break;
  }
  if (payload) grpc_byte_buffer_destroy(payload);
}
