/*
 * services.c - velod's unary methods: velo.v1.TextGeneration/Tokenize and
 * velo.v1.Models/ListModels, LoadModel and UnloadModel
 * (grpc.health.v1.Health is in health.c).  Tokenize and ListModels are
 * answered on the queue thread that received them, in one batch
 * (velo_srv_finish_unary): they are short, and Tokenize's work is the
 * task plugin's thread-safe tokenize().  LoadModel and UnloadModel run on a
 * thread of their own (a load takes as long as reading the model) and go
 * through the model repository (repository.h).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"
#include "velo/v1/velo.pb-c.h"

#define LOG_SOURCE "server"

/* Decodes payload as desc (velo_srv_decode) or finishes the call with the
 * error and returns NULL. */
static ProtobufCMessage *decode_or_fail(velo_server *srv, grpc_call *call,
                                        grpc_byte_buffer *payload,
                                        const ProtobufCMessageDescriptor *desc) {
  char msg[512];
  ProtobufCMessage *m = NULL;
  grpc_status_code code = velo_srv_decode(payload, desc, &m, msg, sizeof msg);
  if (code == GRPC_STATUS_OK) return m;
  velo_srv_finish_unary(srv, call, NULL, code, msg);
  return NULL;
}

/* Tokenize: the text extension of the model's task plugin, through the
 * registry (velo_model_entry_tokenize: UNIMPLEMENTED without a tokenizer,
 * UNAVAILABLE while the model is being unloaded). */
static void tokenize(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Velo__V1__TokenizeRequest *req;
  Velo__V1__TokenizeResponse resp = VELO__V1__TOKENIZE_RESPONSE__INIT;
  velo_model_entry *entry;
  char msg[1024];
  grpc_status_code code;
  int32_t *ids = NULL;
  size_t n_ids = 0;
  velo_error err;
  velo_status st;
  bool add_special;

  req = (Velo__V1__TokenizeRequest *)decode_or_fail(srv, call, payload,
                                                    &velo__v1__tokenize_request__descriptor);
  if (!req) return;
  add_special = req->_add_special_case == VELO__V1__TOKENIZE_REQUEST___ADD_SPECIAL_ADD_SPECIAL
                    ? req->add_special != 0
                    : true;
  code = velo_srv_acquire_model(srv, req->model, &entry, msg, sizeof msg);
  if (code != GRPC_STATUS_OK) {
    velo_srv_finish_unary(srv, call, NULL, code, msg);
    goto out;
  }
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

/* ListModels: one ModelInfo per model velod knows, with its state.  With a
 * repository these are the rows of its index (the models not loaded have
 * only name, state and reason); without one, the loaded models. */
static void list_models(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  ProtobufCMessage *req;
  Velo__V1__ListModelsResponse resp = VELO__V1__LIST_MODELS_RESPONSE__INIT;
  velo_model_entry **list = NULL; /* acquired, one per row (NULL: not loaded) */
  velo_repository_model *rows = NULL;
  Velo__V1__ModelInfo *infos = NULL;
  Velo__V1__ModelInfo **ptrs = NULL;
  char (*devices)[80] = NULL;
  size_t n;

  req = decode_or_fail(srv, call, payload, &velo__v1__list_models_request__descriptor);
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
  }
  if (n && (!list || !infos || !ptrs || !devices)) {
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
}

/* One LoadModel/UnloadModel call, served on its own thread: a load can
 * take as long as reading a model, which must not hold up a queue thread. */
typedef struct control_job {
  velo_server *srv;
  grpc_call *call;
  velo_srv_method method;
  char *name;
} control_job;

/* The thread of a control_job: loads or unloads, then finishes the call
 * (after which it touches nothing of the server). */
static void *control_thread(void *arg) {
  control_job *j = arg;
  velo_error err;
  velo_status st;

  velo_error_init(&err);
  if (j->method == VELO_SRV_LOAD_MODEL)
    st = velo_repository_load(j->srv->repository, j->name, &err);
  else
    st = velo_repository_unload(j->srv->repository, j->name, &err);
  if (st == VELO_OK) {
    if (j->method == VELO_SRV_LOAD_MODEL) {
      Velo__V1__LoadModelResponse resp = VELO__V1__LOAD_MODEL_RESPONSE__INIT;
      velo_srv_finish_unary(j->srv, j->call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
    } else {
      Velo__V1__UnloadModelResponse resp = VELO__V1__UNLOAD_MODEL_RESPONSE__INIT;
      velo_srv_finish_unary(j->srv, j->call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
    }
  } else {
    velo_srv_finish_unary(j->srv, j->call, NULL, velo_srv_status(st),
                          err.message[0] ? err.message : velo_status_name(st));
  }
  free(j->name);
  free(j);
  return NULL;
}

/* LoadModel / UnloadModel: velo_repository_load / _unload on a thread of
 * their own.  FAILED_PRECONDITION without a repository object (velod
 * always passes one); INVALID_ARGUMENT for an empty name. */
static void model_control(velo_server *srv, velo_srv_method method, grpc_call *call,
                          grpc_byte_buffer *payload) {
  bool load = method == VELO_SRV_LOAD_MODEL;
  const ProtobufCMessageDescriptor *desc =
      load ? &velo__v1__load_model_request__descriptor : &velo__v1__unload_model_request__descriptor;
  ProtobufCMessage *req = decode_or_fail(srv, call, payload, desc);
  if (!req) return;
  const char *name = load ? ((Velo__V1__LoadModelRequest *)req)->name
                          : ((Velo__V1__UnloadModelRequest *)req)->name;
  control_job *j = NULL;
  pthread_t th;
  pthread_attr_t attr;

  if (!srv->repository) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_FAILED_PRECONDITION,
                          "velod has no model control: start it with --model-repository DIR "
                          "--model-control explicit");
  } else if (!name[0]) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                          "name must be set: the model's directory name in the repository");
  } else if (!(j = calloc(1, sizeof *j)) || !(j->name = strdup(name))) {
    if (j) free(j);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    j->srv = srv;
    j->call = call;
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
      model_control(srv, method, call, payload);
      break;
    default:
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INTERNAL, "no handler for this method");
      break;
  }
  if (payload) grpc_byte_buffer_destroy(payload);
}
