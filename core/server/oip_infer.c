/*
 * oip_infer.c - ModelInfer and ModelStreamInfer of the Open Inference
 * Protocol: each request is validated and converted (oip_validate.c),
 * submitted to the model's task plugin, and its responses are packed into
 * ModelInferResponse messages as they come back through the host's
 * response sink (velo_oip_respond).
 *
 * Two objects:
 *   oip_rpc          one gRPC call.  ModelInfer carries one request and
 *                    ends with one message and the status; ModelStreamInfer
 *                    reads requests one at a time (RECV_MESSAGE), runs any
 *                    number of them at once, and sends one
 *                    ModelStreamInferResponse per task response; it ends
 *                    with OK once the client has sent its last request and
 *                    every request has had its final response.  At most
 *                    STREAM_MAX_ACTIVE requests of a stream run at once.
 *   struct velo_call one request inside an oip_rpc: the decoded message,
 *                    the converted tensors and parameters, the model entry.
 *                    It is what the task plugin holds between submit() and
 *                    its final response, and is freed right after that.
 *
 * Sending goes through call_send.h, as Generate's does: messages are
 * queued, exactly one send batch is in flight per call, the next starts
 * from the completion of the last, and the status goes with the last
 * message.  Lifetime is a reference
 * count under rpc->mu: the handler while it runs, the pending
 * close-on-server, a pending RECV_MESSAGE, each send batch in flight, and
 * each request between submit() and its final response.
 *
 * Errors: a request that fails on a ModelInfer call ends the call with the
 * gRPC status; on a ModelStreamInfer call it becomes one
 * ModelStreamInferResponse whose error_message is "<STATUS>: <message>"
 * (e.g. "INVALID_ARGUMENT: input 'x': ..."), flagged triton_final_response,
 * and the stream goes on.  A stream whose responses pile up unsent (the
 * client does not read) stops reading requests above STREAM_MAX_QUEUED
 * messages or STREAM_MAX_QUEUED_BYTES until they drain.
 * Statistics: every request that named a loaded model counts in its
 * velo_model_stats, as a success (final OK) or a failure, with the time
 * from decoding to the final response.
 */
#include <grpc/byte_buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "call_send.h"
#include "log.h"
#include "oip.h"
#include "server_internal.h"

#define LOG_SOURCE "oip"

/* The most requests of one ModelStreamInfer call that run at once; with
 * that many running, velod reads the next request only when one has ended
 * (gRPC's flow control then holds the client back). */
#define STREAM_MAX_ACTIVE 32

/* The most responses of one ModelStreamInfer call waiting to be sent
 * (queued or in flight), in messages and in bytes.  Above either, velod
 * reads the next request only once the client has read enough of them
 * (gRPC's flow control then holds the client back): a client that sends
 * but does not read costs a bounded amount of memory.  Requests already
 * running may add their responses beyond it: at most STREAM_MAX_ACTIVE
 * requests' worth. */
#define STREAM_MAX_QUEUED 256
#define STREAM_MAX_QUEUED_BYTES ((size_t)16 << 20)

typedef struct oip_rpc {
  velo_srv_tag close_tag; /* RECV_CLOSE_ON_SERVER */
  velo_srv_tag recv_tag;  /* the one RECV_MESSAGE in flight (streams) */
  velo_server *srv;
  grpc_call *call;
  bool stream;            /* ModelStreamInfer */
  atomic_bool cancelled;  /* the call ended early: client, deadline, shutdown */
  int close_cancelled;    /* RECV_CLOSE_ON_SERVER result */
  grpc_byte_buffer *recv_bb; /* RECV_MESSAGE result */

  pthread_mutex_t mu; /* guards everything below */
  int refs;
  velo_srv_send send;  /* the queue, the one batch in flight, the status */
  bool half_closed;    /* streams: no more requests will be read */
  bool recv_paused;    /* streams: reading waits for a request to end or
                          for the client to read responses */
  size_t n_active;     /* requests submitted, final response not yet seen */
} oip_rpc;

/* One output kept for a ModelInfer response (copies). */
typedef struct kept_output {
  char *name;
  velo_datatype datatype;
  int32_t n_dims;
  int64_t dims[VELO_MAX_IO_DIMS];
  uint8_t *data;
  size_t size;
} kept_output;

struct velo_call {
  velo_srv_tag marker; /* first: marker.on_done == call_marker (velo_oip_owns_call) */
  oip_rpc *rpc;
  velo_model_entry *entry;             /* acquired */
  Inference__ModelInferRequest *msg;   /* decoded request, owned */
  velo_oip_request conv;               /* tensors and parameters, owned */
  velo_request req;
  struct timespec started;             /* CLOCK_MONOTONIC */
  atomic_bool abandoned;               /* a response could not be sent: stop */
  bool failed_reported;                /* streams: an error message was sent */
  kept_output *kept;                   /* ModelInfer: partial responses so far */
  size_t n_kept;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Never called: it only marks our velo_calls (see velo_oip_owns_call). */
static void call_marker(velo_srv_tag *tag, bool ok) {
  (void)tag;
  (void)ok;
  velo_log(VELO_LOG_ERROR, LOG_SOURCE, "an inference request was used as a queue tag (bug)");
}

bool velo_oip_owns_call(const velo_call *call) {
  return call && ((const velo_srv_tag *)call)->on_done == call_marker;
}

/* Nanoseconds since t0 (CLOCK_MONOTONIC). */
static uint64_t ns_since(const struct timespec *t0) {
  struct timespec now;
  int64_t ns;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ns = (int64_t)(now.tv_sec - t0->tv_sec) * 1000000000 + (now.tv_nsec - t0->tv_nsec);
  return ns > 0 ? (uint64_t)ns : 0;
}

/* Counts one finished request in the model's statistics. */
static void count_request(velo_model_entry *e, const struct timespec *started, bool ok) {
  struct timespec wall;
  uint64_t ns = ns_since(started);
  if (!e) return;
  clock_gettime(CLOCK_REALTIME, &wall);
  if (ok) {
    atomic_fetch_add(&e->stats.inference_count, 1);
    atomic_fetch_add(&e->stats.execution_count, 1);
    atomic_fetch_add(&e->stats.success_count, 1);
    atomic_fetch_add(&e->stats.success_ns, ns);
  } else {
    atomic_fetch_add(&e->stats.fail_count, 1);
    atomic_fetch_add(&e->stats.fail_ns, ns);
  }
  atomic_store(&e->stats.last_inference_ms,
               (uint64_t)wall.tv_sec * 1000 + (uint64_t)wall.tv_nsec / 1000000);
}

/* Elements of a shape whose dims are all >= 0 (produced by a task): 0
 * when any dim is 0, whatever the others; -1 when the product overflows. */
static int64_t count_of(const int64_t *dims, int32_t n) {
  int64_t c = 1;
  for (int32_t i = 0; i < n; i++)
    if (dims[i] == 0) return 0;
  for (int32_t i = 0; i < n; i++) {
    if (c > INT64_MAX / dims[i]) return -1;
    c *= dims[i];
  }
  return c;
}

/* Frees the outputs kept for a ModelInfer response. */
static void free_kept(velo_call *vc) {
  for (size_t i = 0; i < vc->n_kept; i++) {
    free(vc->kept[i].name);
    free(vc->kept[i].data);
  }
  free(vc->kept);
  vc->kept = NULL;
  vc->n_kept = 0;
}

/* Frees a request (the task is done with it, or never got it). */
static void free_request(velo_call *vc) {
  velo_oip_request_free(&vc->conv);
  if (vc->msg) protobuf_c_message_free_unpacked(&vc->msg->base, NULL);
  velo_model_entry_release(vc->entry);
  free_kept(vc);
  free(vc);
}

/* ------------------------------------------------------------------ */
/* The call: references and sending                                    */
/* ------------------------------------------------------------------ */

/* Frees the call: its last reference is gone, nothing else touches it.
 * The last thing it does is tell the server that one call fewer is in
 * flight. */
static void free_rpc(oip_rpc *rpc) {
  velo_server *srv = rpc->srv;
  velo_srv_send_free(&rpc->send);
  if (rpc->recv_bb) grpc_byte_buffer_destroy(rpc->recv_bb);
  grpc_call_unref(rpc->call);
  pthread_mutex_destroy(&rpc->mu);
  free(rpc);
  velo_srv_call_ended(srv);
}

/* Drops one reference (the caller does not hold mu); frees at the last. */
static void rpc_unref(oip_rpc *rpc) {
  bool last;
  pthread_mutex_lock(&rpc->mu);
  last = --rpc->refs == 0;
  pthread_mutex_unlock(&rpc->mu);
  if (last) free_rpc(rpc);
}

static void post_recv_locked(oip_rpc *rpc);
static void maybe_end_stream_locked(oip_rpc *rpc);

/* True while a stream may not read its next request: too many requests
 * running, or too many responses unsent.  Caller holds mu. */
static bool must_pause_locked(const oip_rpc *rpc) {
  return rpc->n_active >= STREAM_MAX_ACTIVE ||
         velo_srv_send_backlog_over_locked(&rpc->send, STREAM_MAX_QUEUED,
                                           STREAM_MAX_QUEUED_BYTES);
}

/* Streams: reads on when reading was paused and may resume.  Caller
 * holds mu. */
static void maybe_read_on_locked(oip_rpc *rpc) {
  if (rpc->stream && rpc->recv_paused && !must_pause_locked(rpc)) {
    rpc->recv_paused = false;
    post_recv_locked(rpc);
  }
}

/* A send batch completed (!ok: the call is gone): start the next one, and
 * read on if reading waited for the client to read. */
static void send_done(velo_srv_tag *tag, bool ok) {
  oip_rpc *rpc = VELO_SRV_CONTAINER_OF(tag, oip_rpc, send.tag);
  bool last;
  pthread_mutex_lock(&rpc->mu);
  velo_srv_send_completed_locked(&rpc->send, ok);
  if (rpc->stream) {
    maybe_read_on_locked(rpc);
    maybe_end_stream_locked(rpc); /* pumps */
  }
  velo_srv_send_pump_locked(&rpc->send);
  last = --rpc->refs == 0;
  pthread_mutex_unlock(&rpc->mu);
  if (last) free_rpc(rpc);
}

/* Decides how the call ends (after what is queued), unless already
 * decided, and starts sending what it can.  message may be NULL; it is
 * cleaned with velo_srv_clean_status. */
static void finish(oip_rpc *rpc, grpc_status_code code, const char *message) {
  pthread_mutex_lock(&rpc->mu);
  velo_srv_send_finish_locked(&rpc->send, code, message);
  velo_srv_send_pump_locked(&rpc->send);
  pthread_mutex_unlock(&rpc->mu);
}

/* Queues bb (ownership passes; dropped when the call is over) and starts
 * sending.  false when bb was dropped. */
static bool send_message(oip_rpc *rpc, grpc_byte_buffer *bb) {
  bool queued;
  pthread_mutex_lock(&rpc->mu);
  queued = velo_srv_send_push_locked(&rpc->send, bb);
  velo_srv_send_pump_locked(&rpc->send);
  pthread_mutex_unlock(&rpc->mu);
  return queued;
}

/* Streams: ends with OK once no request is running and none will come.
 * Caller holds mu. */
static void maybe_end_stream_locked(oip_rpc *rpc) {
  if (rpc->stream && rpc->half_closed && rpc->n_active == 0)
    velo_srv_send_finish_locked(&rpc->send, GRPC_STATUS_OK, NULL);
  velo_srv_send_pump_locked(&rpc->send);
}

/* The call ended (RECV_CLOSE_ON_SERVER).  cancelled = 1 (client cancel,
 * deadline, disconnect, server shutdown): every request of the call sees
 * velo_oip_call_cancelled and stops; responses are dropped from now on. */
static void close_done(velo_srv_tag *tag, bool ok) {
  oip_rpc *rpc = VELO_SRV_CONTAINER_OF(tag, oip_rpc, close_tag);
  if (rpc->close_cancelled || !ok) {
    atomic_store(&rpc->cancelled, true);
    velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "%s call cancelled (client, deadline or shutdown)",
             rpc->stream ? "ModelStreamInfer" : "ModelInfer");
  }
  rpc_unref(rpc);
}

/* ------------------------------------------------------------------ */
/* Building responses                                                  */
/* ------------------------------------------------------------------ */

/* One output as it goes into a response (borrowed). */
typedef struct out_view {
  const char *name;
  velo_datatype datatype;
  int32_t n_dims;
  const int64_t *dims;
  const void *data;
  size_t size;
} out_view;

/* True when the request asked for output name (or for none: all). */
static bool wanted(const velo_call *vc, const char *name) {
  if (vc->msg->n_outputs == 0) return true;
  for (size_t i = 0; i < vc->msg->n_outputs; i++)
    if (strcmp(vc->msg->outputs[i]->name, name) == 0) return true;
  return false;
}

/* Packs a ModelInferResponse for vc with outputs outs[0..n) (raw) and the
 * response parameters params[0..n_params) (a repeated key: the last wins),
 * plus triton_final_response when final_flag >= 0.  With stream, wraps it
 * in a ModelStreamInferResponse.  NULL when out of memory. */
static grpc_byte_buffer *pack_response(velo_call *vc, const out_view *outs, size_t n,
                                       const velo_param *params, size_t n_params, int final_flag,
                                       bool stream) {
  Inference__ModelInferResponse resp = INFERENCE__MODEL_INFER_RESPONSE__INIT;
  Inference__ModelStreamInferResponse sresp = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
  Inference__ModelInferResponse__InferOutputTensor *tensors = NULL, **tptrs = NULL;
  ProtobufCBinaryData *raw = NULL;
  Inference__ModelInferResponse__ParametersEntry *entries = NULL, **eptrs = NULL;
  Inference__InferParameter *values = NULL;
  char **strs = NULL;
  size_t n_entries = 0, n_strs = 0, max_entries = n_params + 1;
  grpc_byte_buffer *bb = NULL;
  bool oom = false;

  if (n) {
    tensors = calloc(n, sizeof *tensors);
    tptrs = calloc(n, sizeof *tptrs);
    raw = calloc(n, sizeof *raw);
    oom |= !tensors || !tptrs || !raw;
  }
  entries = calloc(max_entries, sizeof *entries);
  eptrs = calloc(max_entries, sizeof *eptrs);
  values = calloc(max_entries, sizeof *values);
  strs = calloc(max_entries, sizeof *strs);
  oom |= !entries || !eptrs || !values || !strs;
  if (oom) goto out;

  for (size_t i = 0; i < n; i++) {
    inference__model_infer_response__infer_output_tensor__init(&tensors[i]);
    tensors[i].name = (char *)outs[i].name;
    tensors[i].datatype = (char *)velo_datatype_name(outs[i].datatype);
    if (!tensors[i].datatype) tensors[i].datatype = (char *)"";
    tensors[i].n_shape = (size_t)outs[i].n_dims;
    tensors[i].shape = (int64_t *)outs[i].dims;
    tptrs[i] = &tensors[i];
    raw[i].data = (uint8_t *)outs[i].data;
    raw[i].len = outs[i].size;
  }
  resp.n_outputs = n;
  resp.outputs = tptrs;
  resp.n_raw_output_contents = n;
  resp.raw_output_contents = raw;

  for (size_t i = 0; i <= n_params; i++) {
    const velo_param *p = i < n_params ? &params[i] : NULL;
    const char *key = p ? p->key : "triton_final_response";
    size_t k;
    if (!p && final_flag < 0) break;
    if (!key) continue;
    for (k = 0; k < n_entries; k++) /* a repeated key: the last one wins */
      if (strcmp(entries[k].key, key) == 0) break;
    if (k == n_entries) {
      inference__model_infer_response__parameters_entry__init(&entries[k]);
      entries[k].key = (char *)key;
      entries[k].value = &values[k];
      eptrs[k] = &entries[k];
      n_entries++;
    }
    inference__infer_parameter__init(&values[k]);
    if (!p) {
      values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
      values[k].bool_param = final_flag > 0;
      continue;
    }
    switch (p->type) {
      case VELO_PARAM_BOOL:
        values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
        values[k].bool_param = p->value.b;
        break;
      case VELO_PARAM_INT64:
        values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
        values[k].int64_param = p->value.i;
        break;
      case VELO_PARAM_DOUBLE:
        values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
        values[k].double_param = p->value.d;
        break;
      case VELO_PARAM_STRING: {
        size_t len = p->value.s.ptr ? p->value.s.len : 0;
        char *s = malloc(len + 1);
        if (!s) {
          oom = true;
          goto out;
        }
        if (len) memcpy(s, p->value.s.ptr, len);
        s[len] = '\0';
        strs[n_strs++] = s;
        values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
        values[k].string_param = s;
        break;
      }
      default: /* an unknown type from a newer plugin: left out */
        values[k].parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE__NOT_SET;
        break;
    }
  }
  resp.n_parameters = n_entries;
  resp.parameters = eptrs;
  resp.model_name = vc->entry->name;
  resp.model_version = (char *)"1";
  resp.id = vc->msg->id;
  if (stream) {
    sresp.infer_response = &resp;
    bb = velo_srv_pack(&sresp.base);
  } else {
    bb = velo_srv_pack(&resp.base);
  }

out:
  if (oom) velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory building a response");
  for (size_t i = 0; i < n_strs; i++) free(strs[i]);
  free(strs);
  free(values);
  free(eptrs);
  free(entries);
  free(raw);
  free(tptrs);
  free(tensors);
  return bb;
}

/* A ModelStreamInferResponse for a request that failed: error_message
 * "<STATUS>: message", and an infer_response with only the request's
 * model_name and id (either may be NULL: unknown), so that the client
 * knows which request failed, and the parameter triton_final_response =
 * true (it is the last message of that request). */
static grpc_byte_buffer *pack_stream_error(grpc_status_code code, const char *message,
                                           const char *model, const char *id) {
  Inference__ModelStreamInferResponse sresp = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
  Inference__ModelInferResponse resp = INFERENCE__MODEL_INFER_RESPONSE__INIT;
  Inference__ModelInferResponse__ParametersEntry entry =
      INFERENCE__MODEL_INFER_RESPONSE__PARAMETERS_ENTRY__INIT;
  Inference__ModelInferResponse__ParametersEntry *entries[1] = {&entry};
  Inference__InferParameter final = INFERENCE__INFER_PARAMETER__INIT;
  char text[VELO_SRV_STATUS_MAX + 32], clean[VELO_SRV_STATUS_MAX];
  snprintf(text, sizeof text, "%s: %s", velo_status_name((velo_status)code),
           velo_srv_clean_status(message, clean, sizeof clean));
  sresp.error_message = text;
  if (model) resp.model_name = (char *)model;
  if (id) resp.id = (char *)id;
  final.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
  final.bool_param = 1;
  entry.key = (char *)"triton_final_response";
  entry.value = &final;
  resp.n_parameters = 1;
  resp.parameters = entries;
  sresp.infer_response = &resp;
  return velo_srv_pack(&sresp.base);
}

/* Keeps a copy of output t for a ModelInfer response.  Outputs of the
 * same name are joined: two BYTES [1] outputs into one element (the text
 * of successive chunks), two 1-D outputs of one datatype end to end; any
 * other repeat replaces the earlier one.  false when out of memory. */
static bool keep_output(velo_call *vc, const velo_io_tensor *t) {
  kept_output *k = NULL;
  uint8_t *data;
  size_t size;

  for (size_t i = 0; i < vc->n_kept; i++)
    if (strcmp(vc->kept[i].name, t->name) == 0) k = &vc->kept[i];
  if (k && k->datatype == t->datatype && k->n_dims == 1 && t->n_dims == 1) {
    bool join_text = t->datatype == VELO_DATATYPE_BYTES && k->dims[0] == 1 && t->shape[0] == 1 &&
                     k->size >= 4 && t->size >= 4;
    size = join_text ? k->size + t->size - 4 : k->size + t->size;
    data = realloc(k->data, size ? size : 1);
    if (!data) return false;
    k->data = data;
    if (join_text) { /* one element: add the new bytes, fix the length prefix */
      uint32_t len = (uint32_t)(size - 4);
      memcpy(data + k->size, (const uint8_t *)t->data + 4, t->size - 4);
      data[0] = (uint8_t)len;
      data[1] = (uint8_t)(len >> 8);
      data[2] = (uint8_t)(len >> 16);
      data[3] = (uint8_t)(len >> 24);
    } else {
      if (t->size) memcpy(data + k->size, t->data, t->size);
      k->dims[0] += t->shape[0];
    }
    k->size = size;
    return true;
  }
  data = malloc(t->size ? t->size : 1);
  if (!data) return false;
  if (t->size) memcpy(data, t->data, t->size);
  if (!k) {
    kept_output *nk = realloc(vc->kept, (vc->n_kept + 1) * sizeof *nk);
    if (!nk) {
      free(data);
      return false;
    }
    vc->kept = nk;
    k = &vc->kept[vc->n_kept];
    memset(k, 0, sizeof *k);
    if (!(k->name = strdup(t->name))) {
      free(data);
      return false;
    }
    vc->n_kept++;
  }
  free(k->data);
  k->data = data;
  k->size = t->size;
  k->datatype = t->datatype;
  k->n_dims = t->n_dims;
  if (t->n_dims > 0) memcpy(k->dims, t->shape, (size_t)t->n_dims * sizeof *k->dims);
  return true;
}

/* True when t is a well-formed output of a task: named, a known datatype,
 * 0..VELO_MAX_IO_DIMS dims >= 0, data of the size its shape says. */
static bool output_ok(const velo_io_tensor *t) {
  size_t es;
  int64_t count;
  if (!t->name || !velo_datatype_name(t->datatype) || t->n_dims < 0 ||
      t->n_dims > VELO_MAX_IO_DIMS || (t->n_dims > 0 && !t->shape) || (t->size && !t->data))
    return false;
  for (int32_t d = 0; d < t->n_dims; d++)
    if (t->shape[d] < 0) return false;
  count = count_of(t->shape, t->n_dims);
  if (count < 0) return false;
  es = velo_datatype_size(t->datatype);
  return es == 0 || ((uint64_t)count <= SIZE_MAX / es && (uint64_t)count * es == t->size);
}

/* Fills views (room for resp->n_outputs) with the outputs of resp that
 * go into a response: well-formed (a malformed one is logged and dropped)
 * and asked for by the request.  Returns how many; views borrow from
 * resp. */
static size_t view_outputs(const velo_call *vc, const velo_response *resp, out_view *views) {
  size_t n = 0;
  for (size_t i = 0; i < resp->n_outputs; i++) {
    const velo_io_tensor *t = &resp->outputs[i];
    if (!output_ok(t)) {
      velo_log(VELO_LOG_ERROR, LOG_SOURCE, "model '%s' sent a malformed output: dropped",
               vc->entry->name);
      continue;
    }
    if (wanted(vc, t->name))
      views[n++] = (out_view){t->name, t->datatype, t->n_dims, t->shape, t->data, t->size};
  }
  return n;
}

/* ------------------------------------------------------------------ */
/* The host's response sink                                            */
/* ------------------------------------------------------------------ */

bool velo_oip_call_cancelled(velo_call *vc) {
  return !vc || atomic_load(&vc->rpc->cancelled) || atomic_load(&vc->abandoned);
}

/* Ends request vc: statistics, the stream's bookkeeping, then frees it.
 * The task has sent its final response. */
static void end_request(velo_call *vc, bool ok) {
  oip_rpc *rpc = vc->rpc;
  bool last;
  count_request(vc->entry, &vc->started, ok);
  free_request(vc);
  pthread_mutex_lock(&rpc->mu);
  if (rpc->stream) {
    rpc->n_active--;
    maybe_read_on_locked(rpc);
    maybe_end_stream_locked(rpc);
  }
  last = --rpc->refs == 0; /* the request's reference */
  pthread_mutex_unlock(&rpc->mu);
  if (last) free_rpc(rpc);
}

/* ModelStreamInfer: one message per response. */
static velo_status respond_stream(velo_call *vc, const velo_response *resp) {
  oip_rpc *rpc = vc->rpc;
  velo_server *srv = rpc->srv;
  grpc_byte_buffer *bb = NULL;
  bool gone = atomic_load(&rpc->cancelled) || atomic_load(&vc->abandoned);
  velo_error err;

  velo_error_init(&err);
  if (!gone && resp->final && resp->status != VELO_OK) {
    bb = pack_stream_error(velo_srv_status(resp->status),
                           resp->error_message ? resp->error_message : velo_status_name(resp->status),
                           vc->entry->name, vc->msg->id);
  } else if (!gone) {
    out_view *views = resp->n_outputs ? calloc(resp->n_outputs, sizeof *views) : NULL;
    size_t n = 0;
    if (resp->n_outputs && !views) {
      atomic_store(&vc->abandoned, true);
      bb = pack_stream_error(GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory building a response",
                             vc->entry->name, vc->msg->id);
    } else {
      n = view_outputs(vc, resp, views);
      bb = pack_response(vc, views, n, resp->params, resp->n_params, resp->final ? 1 : 0, true);
      free(views);
      if (bb && velo_srv_check_send_size(srv, grpc_byte_buffer_length(bb), &err) != VELO_OK) {
        grpc_byte_buffer_destroy(bb);
        bb = pack_stream_error(velo_srv_status(err.code), err.message, vc->entry->name,
                               vc->msg->id);
        atomic_store(&vc->abandoned, true); /* the task stops at its next step */
      }
    }
  }
  if (bb && !send_message(rpc, bb)) gone = true;
  gone = gone || atomic_load(&vc->abandoned);
  if (resp->final) end_request(vc, resp->status == VELO_OK && !gone); /* frees vc */
  return gone ? VELO_CANCELLED : VELO_OK;
}

/* ModelInfer, final OK response: the one message, then OK.  NULL message
 * with *code/why set when the call must end with an error instead. */
static grpc_byte_buffer *build_unary(velo_call *vc, const velo_response *resp,
                                     grpc_status_code *code, char *why, size_t why_size) {
  out_view *views;
  size_t n = 0, cap = vc->n_kept + resp->n_outputs;
  grpc_byte_buffer *bb;
  velo_error err;
  char qn[VELO_SERVER_QUOTE_SIZE], have[512];

  /* Partial responses were kept: add the final one's outputs to them. */
  if (vc->n_kept) {
    for (size_t i = 0; i < resp->n_outputs; i++)
      if (output_ok(&resp->outputs[i]) && wanted(vc, resp->outputs[i].name) &&
          !keep_output(vc, &resp->outputs[i])) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(why, why_size, "out of memory building the response");
        return NULL;
      }
    cap = vc->n_kept;
  }
  views = calloc(cap ? cap : 1, sizeof *views);
  if (!views) {
    *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    snprintf(why, why_size, "out of memory building the response");
    return NULL;
  }
  if (vc->n_kept) {
    for (size_t i = 0; i < vc->n_kept; i++) {
      kept_output *k = &vc->kept[i];
      views[n++] = (out_view){k->name, k->datatype, k->n_dims, k->dims, k->data, k->size};
    }
  } else {
    n = view_outputs(vc, resp, views);
  }
  /* Every requested output must be there. */
  for (size_t r = 0; r < vc->msg->n_outputs; r++) {
    const char *name = vc->msg->outputs[r]->name;
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) found = strcmp(views[i].name, name) == 0;
    if (!found) {
      size_t used = 0;
      have[0] = '\0';
      for (size_t i = 0; i < resp->n_outputs && used < sizeof have; i++) {
        int w = snprintf(have + used, sizeof have - used, "%s%s", i ? ", " : "",
                         resp->outputs[i].name ? resp->outputs[i].name : "?");
        if (w > 0) used += (size_t)w;
      }
      *code = GRPC_STATUS_INVALID_ARGUMENT;
      snprintf(why, why_size,
               "requested output '%s' was not produced by model '%s' (its outputs for this "
               "request: %s)", velo_server_quote(name, strlen(name), qn, sizeof qn),
               vc->entry->name, resp->n_outputs ? have : "none");
      free(views);
      return NULL;
    }
  }
  bb = pack_response(vc, views, n, resp->params, resp->n_params, -1, false);
  free(views);
  if (!bb) {
    *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    snprintf(why, why_size, "out of memory building the response");
    return NULL;
  }
  velo_error_init(&err);
  if (velo_srv_check_send_size(vc->rpc->srv, grpc_byte_buffer_length(bb), &err) != VELO_OK) {
    grpc_byte_buffer_destroy(bb);
    *code = velo_srv_status(err.code);
    snprintf(why, why_size, "%s", err.message);
    return NULL;
  }
  return bb;
}

/* ModelInfer: partial responses are kept, the final one ends the call. */
static velo_status respond_unary(velo_call *vc, const velo_response *resp) {
  oip_rpc *rpc = vc->rpc;
  bool gone = atomic_load(&rpc->cancelled) || atomic_load(&vc->abandoned);
  bool ok = false;

  if (!resp->final) {
    if (gone) return VELO_CANCELLED;
    for (size_t i = 0; i < resp->n_outputs; i++)
      if (output_ok(&resp->outputs[i]) && wanted(vc, resp->outputs[i].name) &&
          !keep_output(vc, &resp->outputs[i])) {
        atomic_store(&vc->abandoned, true);
        finish(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory keeping a partial response");
        return VELO_CANCELLED;
      }
    return VELO_OK;
  }
  if (gone) {
    /* the call is over already (cancelled, or finished with an error) */
  } else if (resp->status != VELO_OK) {
    finish(rpc, velo_srv_status(resp->status),
           resp->error_message && resp->error_message[0] ? resp->error_message
                                                         : velo_status_name(resp->status));
  } else {
    grpc_status_code code = GRPC_STATUS_OK;
    char why[1024];
    grpc_byte_buffer *bb = build_unary(vc, resp, &code, why, sizeof why);
    if (bb) {
      pthread_mutex_lock(&rpc->mu);
      if (!velo_srv_send_push_locked(&rpc->send, bb)) gone = true;
      velo_srv_send_finish_locked(&rpc->send, GRPC_STATUS_OK, NULL);
      velo_srv_send_pump_locked(&rpc->send);
      pthread_mutex_unlock(&rpc->mu);
      ok = !gone;
    } else {
      finish(rpc, code, why);
    }
  }
  end_request(vc, ok);
  return gone ? VELO_CANCELLED : VELO_OK;
}

velo_status velo_oip_respond(velo_call *vc, const velo_response *resp) {
  if (!vc || !resp || resp->struct_size < sizeof(velo_response)) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE,
             "a task plugin called respond() with %s: ignored (plugin bug)",
             !vc ? "no call" : !resp ? "no response" : "a response struct too small");
    return VELO_INVALID_ARGUMENT;
  }
  return vc->rpc->stream ? respond_stream(vc, resp) : respond_unary(vc, resp);
}

/* ------------------------------------------------------------------ */
/* Starting a request                                                  */
/* ------------------------------------------------------------------ */

/* The name of requested output i of request ctx (velo_oip_first_duplicate). */
static const char *output_name(const void *ctx, size_t i) {
  return ((const Inference__ModelInferRequest *)ctx)->outputs[i]->name;
}

/* Checks the requested outputs: at most VELO_OIP_MAX_TENSORS, each named
 * once and, when the model declares its outputs, one of them. */
static grpc_status_code check_requested(const velo_call *vc, char *why, size_t why_size) {
  const Inference__ModelInferRequest *m = vc->msg;
  const velo_model_entry *e = vc->entry;
  char qn[VELO_SERVER_QUOTE_SIZE];
  size_t dup[2] = {0, 0};
  int dup_found;

  if (m->n_outputs > VELO_OIP_MAX_TENSORS) {
    snprintf(why, why_size, "too many requested outputs: %zu; a request may name at most %d",
             m->n_outputs, VELO_OIP_MAX_TENSORS);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  dup_found = velo_oip_first_duplicate(output_name, m, m->n_outputs, &dup[0], &dup[1]);
  if (dup_found < 0) {
    snprintf(why, why_size, "out of memory");
    return GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  for (size_t i = 0; i < m->n_outputs; i++) {
    const char *name = m->outputs[i]->name;
    bool declared = e->n_outputs == 0;
    if (dup_found && dup[1] == i) {
      snprintf(why, why_size, "output '%s' is requested twice (outputs[%zu] and outputs[%zu])",
               velo_server_quote(name, strlen(name), qn, sizeof qn), dup[0], i);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    for (size_t k = 0; k < e->n_outputs && !declared; k++)
      declared = e->outputs[k].name && strcmp(e->outputs[k].name, name) == 0;
    if (!declared) {
      size_t used = 0;
      int w = snprintf(why, why_size, "requested output '%s' is not an output of model '%s'; its "
                       "outputs: ", velo_server_quote(name, strlen(name), qn, sizeof qn), e->name);
      if (w > 0) used = (size_t)w;
      for (size_t k = 0; k < e->n_outputs && used < why_size; k++) {
        char shape[96];
        const char *dt = velo_datatype_name(e->outputs[k].datatype);
        w = snprintf(why + used, why_size - used, "%s%s (%s %s)", k ? ", " : "",
                     e->outputs[k].name ? e->outputs[k].name : "?", dt ? dt : "?",
                     velo_oip_shape_str(e->outputs[k].shape, (size_t)e->outputs[k].n_dims, shape,
                                        sizeof shape));
        if (w > 0) used += (size_t)w;
      }
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
  }
  return GRPC_STATUS_OK;
}

/* Prepares and submits one request of rpc from msg (ownership passes
 * here).  GRPC_STATUS_OK once the task has it; otherwise why says what went
 * wrong and nothing of the request is left. */
static grpc_status_code start_request(oip_rpc *rpc, Inference__ModelInferRequest *msg, char *why,
                                      size_t why_size) {
  velo_call *vc = calloc(1, sizeof *vc);
  grpc_status_code code;
  velo_error err;
  velo_status st;

  if (!vc) {
    protobuf_c_message_free_unpacked(&msg->base, NULL);
    snprintf(why, why_size, "out of memory");
    return GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  vc->marker.on_done = call_marker;
  vc->rpc = rpc;
  vc->msg = msg;
  atomic_init(&vc->abandoned, false);
  clock_gettime(CLOCK_MONOTONIC, &vc->started);
  velo_error_init(&err);

  code = velo_srv_acquire_model(rpc->srv, msg->model_name, &vc->entry, why, why_size);
  if (code != GRPC_STATUS_OK) goto fail;
  if (msg->model_version[0] && strcmp(msg->model_version, "1") != 0) {
    char qv[VELO_SERVER_QUOTE_SIZE];
    snprintf(why, why_size, "model '%s' has no version '%s'; velod serves version 1 of each model "
             "(or leave model_version empty)", vc->entry->name,
             velo_server_quote(msg->model_version, strlen(msg->model_version), qv, sizeof qv));
    code = GRPC_STATUS_NOT_FOUND;
    goto fail;
  }
  code = check_requested(vc, why, why_size);
  if (code != GRPC_STATUS_OK) goto fail;
  st = velo_oip_request_convert(msg, vc->entry->name, vc->entry->inputs, vc->entry->n_inputs,
                                &vc->conv, &err);
  if (st != VELO_OK) {
    code = velo_srv_status(st);
    snprintf(why, why_size, "%s", err.message);
    goto fail;
  }
  if (!rpc->stream && vc->conv.stream_set && vc->conv.stream) {
    snprintf(why, why_size, "parameter stream = true asks for one response per chunk, which "
             "ModelInfer cannot give (it returns one response): use ModelStreamInfer, or leave "
             "stream unset");
    code = GRPC_STATUS_INVALID_ARGUMENT;
    goto fail;
  }

  vc->req.struct_size = (uint32_t)sizeof vc->req;
  vc->req.call = vc;
  vc->req.id = msg->id;
  vc->req.n_inputs = vc->conv.n_inputs;
  vc->req.inputs = vc->conv.inputs;
  vc->req.n_params = vc->conv.n_params;
  vc->req.params = vc->conv.params;
  vc->req.streaming = rpc->stream && (!vc->conv.stream_set || vc->conv.stream);

  pthread_mutex_lock(&rpc->mu);
  rpc->refs++; /* the request's, until its final response */
  if (rpc->stream) rpc->n_active++;
  pthread_mutex_unlock(&rpc->mu);
  st = velo_model_entry_submit(vc->entry, &vc->req, &err); /* UNAVAILABLE while unloading */
  if (st == VELO_OK) return GRPC_STATUS_OK; /* vc is the task's now */
  pthread_mutex_lock(&rpc->mu);
  rpc->refs--; /* never the last: the caller holds one */
  if (rpc->stream) rpc->n_active--;
  pthread_mutex_unlock(&rpc->mu);
  code = velo_srv_status(st);
  snprintf(why, why_size, "%s", err.message[0] ? err.message : velo_status_name(st));

fail:
  if (vc->entry) count_request(vc->entry, &vc->started, false);
  free_request(vc);
  return code;
}

/* ------------------------------------------------------------------ */
/* ModelStreamInfer: reading requests                                  */
/* ------------------------------------------------------------------ */

static void recv_done(velo_srv_tag *tag, bool ok);

/* Posts the next RECV_MESSAGE, unless the call is over.  Caller holds mu.
 * Marks the stream half-closed when it cannot read any more. */
static void post_recv_locked(oip_rpc *rpc) {
  if (velo_srv_send_over_locked(&rpc->send)) {
    rpc->half_closed = true;
    return;
  }
  rpc->refs++;
  if (!velo_srv_start_recv(rpc->call, &rpc->recv_bb, &rpc->recv_tag, LOG_SOURCE,
                           "a ModelStreamInfer call")) {
    rpc->refs--; /* never the last: the caller holds one */
    rpc->half_closed = true;
  }
}

/* Queues an error message for one request of a stream (model, id: the
 * request's, or NULL). */
static void stream_error(oip_rpc *rpc, grpc_status_code code, const char *why, const char *model,
                         const char *id) {
  grpc_byte_buffer *bb = pack_stream_error(code, why, model, id);
  if (bb) send_message(rpc, bb);
}

/* One request message arrived (bb), or the client half-closed (bb NULL),
 * or the call is gone (!ok). */
static void recv_done(velo_srv_tag *tag, bool ok) {
  oip_rpc *rpc = VELO_SRV_CONTAINER_OF(tag, oip_rpc, recv_tag);
  grpc_byte_buffer *bb;
  bool last;

  pthread_mutex_lock(&rpc->mu);
  bb = rpc->recv_bb;
  rpc->recv_bb = NULL;
  pthread_mutex_unlock(&rpc->mu);

  if (ok && bb) {
    char why[1024];
    char *model = NULL, *id = NULL; /* copies: start_request frees msg on failure */
    Inference__ModelInferRequest *msg = NULL;
    grpc_status_code code =
        velo_srv_check_receive_size(rpc->srv, grpc_byte_buffer_length(bb), why, sizeof why);
    if (code == GRPC_STATUS_OK)
      code = velo_srv_decode(bb, &inference__model_infer_request__descriptor,
                             (ProtobufCMessage **)&msg, why, sizeof why);
    grpc_byte_buffer_destroy(bb);
    if (code == GRPC_STATUS_OK) {
      model = strdup(msg->model_name);
      id = strdup(msg->id);
      code = start_request(rpc, msg, why, sizeof why);
    }
    if (code != GRPC_STATUS_OK) stream_error(rpc, code, why, model, id);
    free(model);
    free(id);
  } else if (bb) {
    grpc_byte_buffer_destroy(bb);
  }

  pthread_mutex_lock(&rpc->mu);
  if (!ok || !bb) rpc->half_closed = true;
  else if (must_pause_locked(rpc)) rpc->recv_paused = true; /* read on: maybe_read_on_locked */
  else post_recv_locked(rpc);
  maybe_end_stream_locked(rpc);
  last = --rpc->refs == 0; /* this read's reference */
  pthread_mutex_unlock(&rpc->mu);
  if (last) free_rpc(rpc);
}

/* ------------------------------------------------------------------ */
/* The call                                                            */
/* ------------------------------------------------------------------ */

void velo_oip_handle_infer(velo_server *srv, grpc_call *call, gpr_timespec deadline,
                           grpc_byte_buffer *payload, bool stream) {
  oip_rpc *rpc = calloc(1, sizeof *rpc);

  (void)deadline; /* gRPC enforces it; close_done sees it pass */
  if (!rpc) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory for an inference call");
    if (payload) grpc_byte_buffer_destroy(payload);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  rpc->close_tag.on_done = close_done;
  velo_srv_send_init(&rpc->send, call, send_done, &rpc->cancelled, &rpc->refs, LOG_SOURCE,
                     "an inference call");
  rpc->recv_tag.on_done = recv_done;
  rpc->srv = srv;
  rpc->call = call;
  rpc->stream = stream;
  atomic_init(&rpc->cancelled, false);
  pthread_mutex_init(&rpc->mu, NULL);
  rpc->refs = 2; /* this handler, and the close-on-server started next */

  if (!velo_srv_start_close_watch(call, &rpc->close_cancelled, &rpc->close_tag, LOG_SOURCE,
                                  "an inference call"))
    rpc->refs--;

  if (stream) {
    pthread_mutex_lock(&rpc->mu);
    post_recv_locked(rpc);
    maybe_end_stream_locked(rpc);
    pthread_mutex_unlock(&rpc->mu);
  } else {
    char why[1024];
    Inference__ModelInferRequest *msg = NULL;
    grpc_status_code code = velo_srv_decode(payload, &inference__model_infer_request__descriptor,
                                            (ProtobufCMessage **)&msg, why, sizeof why);
    if (code == GRPC_STATUS_OK) code = start_request(rpc, msg, why, sizeof why);
    if (code != GRPC_STATUS_OK) finish(rpc, code, why);
  }
  if (payload) grpc_byte_buffer_destroy(payload);
  rpc_unref(rpc);
}
