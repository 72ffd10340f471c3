/*
 * services.c - velod's unary methods: velo.v1.TextGeneration/Tokenize,
 * velo.v1.Models/ListModels and grpc.health.v1.Health/Check.  Each is
 * answered on the queue thread that received it, in one batch
 * (velo_srv_finish_unary): they are short, and Tokenize's work is the
 * task plugin's thread-safe tokenize().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_health/v1/health.pb-c.h"
#include "log.h"
#include "server_internal.h"
#include "velo/v1/velo.pb-c.h"

#define LOG_SOURCE "server"

/* The services Health/Check reports as SERVING ("" is the whole server). */
static const char *const served_services[] = {
    "",
    "velo.v1.TextGeneration",
    "velo.v1.Models",
    "grpc.health.v1.Health",
};

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

/* ListModels: one ModelInfo per loaded model. */
static void list_models(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  ProtobufCMessage *req;
  Velo__V1__ListModelsResponse resp = VELO__V1__LIST_MODELS_RESPONSE__INIT;
  velo_model_entry **list = NULL;
  Velo__V1__ModelInfo *infos = NULL;
  Velo__V1__ModelInfo **ptrs = NULL;
  char (*devices)[80] = NULL;
  size_t n;

  req = decode_or_fail(srv, call, payload, &velo__v1__list_models_request__descriptor);
  if (!req) return;
  protobuf_c_message_free_unpacked(req, NULL);

  n = velo_registry_list(srv->registry, &list);
  if (n) {
    infos = calloc(n, sizeof *infos);
    ptrs = calloc(n, sizeof *ptrs);
    devices = calloc(n, sizeof *devices);
  }
  if (n && (!infos || !ptrs || !devices)) {
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    for (size_t i = 0; i < n; i++) {
      velo__v1__model_info__init(&infos[i]);
      snprintf(devices[i], sizeof devices[i], "%s:%d", list[i]->backend_name,
               (int)list[i]->device);
      infos[i].name = list[i]->name;
      infos[i].task = list[i]->task_name;
      infos[i].backend = list[i]->backend_name;
      infos[i].file = list[i]->path;
      infos[i].context_length = list[i]->context_length;
      infos[i].device = devices[i];
      ptrs[i] = &infos[i];
    }
    resp.n_models = n;
    resp.models = ptrs;
    velo_srv_finish_unary(srv, call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
  }
  for (size_t i = 0; i < n; i++) velo_model_entry_release(list[i]);
  free(list);
  free(infos);
  free(ptrs);
  free(devices);
}

/* Health/Check: SERVING for the server ("") and each served service,
 * NOT_FOUND for any other (as grpc/health/v1/health.proto specifies). */
static void health_check(velo_server *srv, grpc_call *call, grpc_byte_buffer *payload) {
  Grpc__Health__V1__HealthCheckRequest *req;
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  char msg[VELO_SERVER_QUOTE_SIZE + 32], quoted[VELO_SERVER_QUOTE_SIZE];
  bool known = false;

  req = (Grpc__Health__V1__HealthCheckRequest *)decode_or_fail(
      srv, call, payload, &grpc__health__v1__health_check_request__descriptor);
  if (!req) return;
  for (size_t i = 0; i < sizeof served_services / sizeof served_services[0]; i++)
    if (strcmp(req->service, served_services[i]) == 0) known = true;
  if (known) {
    resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    velo_srv_finish_unary(srv, call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
  } else {
    snprintf(msg, sizeof msg, "unknown service '%s'",
             velo_server_quote(req->service, strlen(req->service), quoted, sizeof quoted));
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_NOT_FOUND, msg);
  }
  protobuf_c_message_free_unpacked(&req->base, NULL);
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
    case VELO_SRV_HEALTH_CHECK:
      health_check(srv, call, payload);
      break;
    default:
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_INTERNAL, "no handler for this method");
      break;
  }
  if (payload) grpc_byte_buffer_destroy(payload);
}
