/*
 * generate.c - velo.v1.TextGeneration/Generate: a server-streaming call
 * mapped onto a task plugin's submit(), and the host's response sink
 * (velo_host.respond) and cancellation query (velo_host.call_cancelled)
 * that the task calls back from its engine thread.
 *
 * A Generate call is a struct velo_call (the ABI's opaque call handle is
 * this struct).  Its life:
 *
 *   arrives ------> RECV_CLOSE_ON_SERVER started alone (completes when the
 *                   call ends; cancelled = 1 sets call->cancelled)
 *   decode, acquire the model, build the velo_request, submit()
 *   respond() ----> each response is packed into a GenerateResponse and
 *                   queued (call_send.h); exactly one send batch is in
 *                   flight per call, the next one starts from the
 *                   completion of the last
 *   final --------> the last message goes with the status (OK), or the
 *                   status alone (non-OK)
 *   all done -----> the model entry is released, the call unref'd, freed
 *
 * "All done" is a reference count under call->mu: one reference for the
 * handler while it runs, one for the pending close-on-server, one for the
 * task between submit() and its final response, one per send batch in
 * flight.  The request (message, prompt tensor, parameters) lives in the
 * call, so it stays valid until the final response as the ABI requires.
 */
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "call_send.h"
#include "log.h"
#include "server_internal.h"
#include "generate_wire.pb-c.h"
#include "velo/v1/velo.pb-c.h"

#define LOG_SOURCE "generate"

/* The most parameters one request can carry besides its stop strings. */
#define SCALAR_PARAMS 10

struct velo_call {
  velo_srv_tag close_tag; /* RECV_CLOSE_ON_SERVER */
  velo_server *srv;
  grpc_call *call;
  gpr_timespec deadline;
  struct timespec started; /* CLOCK_MONOTONIC, for logs */
  velo_model_entry *entry; /* acquired; released when the call is freed */
  atomic_bool cancelled;   /* the call ended early (client, deadline, shutdown) */
  atomic_bool refused;     /* a response was over --max-send-message-bytes: the
                            * call ends with that error; the task is told to stop */
  int close_cancelled;     /* RECV_CLOSE_ON_SERVER result */
  bool submitted;          /* the task accepted the request */

  pthread_mutex_t mu; /* guards everything below */
  int refs;
  velo_srv_send send;   /* the queue, the one batch in flight, the status */

  /* The request, alive until the final response. */
  Velo__V1__GenerateRequest *msg;
  uint8_t *prompt;          /* BYTES element: uint32 LE length + bytes */
  int64_t input_shape[1];
  velo_io_tensor input;
  velo_param *params;
  velo_request req;
};

/* ------------------------------------------------------------------ */
/* Freeing and references                                              */
/* ------------------------------------------------------------------ */

/* Frees the call; the last reference is gone, so nothing else touches it. */
static void free_call(velo_call *gc) {
  velo_server *srv = gc->srv;
  velo_srv_send_free(&gc->send);
  velo_model_entry_release(gc->entry);
  grpc_call_unref(gc->call);
  if (gc->msg) protobuf_c_message_free_unpacked(&gc->msg->base, NULL);
  free(gc->prompt);
  free(gc->params);
  pthread_mutex_destroy(&gc->mu);
  free(gc);
  velo_srv_call_ended(srv);
}

/* Drops one reference (the caller does not hold mu). */
static void call_unref(velo_call *gc) {
  bool last;
  pthread_mutex_lock(&gc->mu);
  last = --gc->refs == 0;
  pthread_mutex_unlock(&gc->mu);
  if (last) free_call(gc);
}

/* ------------------------------------------------------------------ */
/* Sending                                                             */
/* ------------------------------------------------------------------ */

/* A send batch completed; !ok means the call is gone.  Starts the next. */
static void send_done(velo_srv_tag *tag, bool ok) {
  velo_call *gc = VELO_SRV_CONTAINER_OF(tag, velo_call, send.tag);
  bool last;

  pthread_mutex_lock(&gc->mu);
  velo_srv_send_completed_locked(&gc->send, ok);
  velo_srv_send_pump_locked(&gc->send);
  last = --gc->refs == 0;
  pthread_mutex_unlock(&gc->mu);
  if (last) free_call(gc);
}

/* Ends the call with code and message (after anything already queued),
 * unless an end was already decided.  message may be NULL; it is cleaned
 * with velo_srv_clean_status. */
static void finish_call(velo_call *gc, grpc_status_code code, const char *message) {
  pthread_mutex_lock(&gc->mu);
  velo_srv_send_finish_locked(&gc->send, code, message);
  velo_srv_send_pump_locked(&gc->send);
  pthread_mutex_unlock(&gc->mu);
}

/* ------------------------------------------------------------------ */
/* Cancellation                                                        */
/* ------------------------------------------------------------------ */

/* Seconds elapsed since t0 (CLOCK_MONOTONIC). */
static double seconds_since(const struct timespec *t0) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* The call ended.  cancelled = 1: client cancel, deadline, disconnect or
 * grpc_server_cancel_all_calls; from then on respond() drops everything. */
static void close_done(velo_srv_tag *tag, bool ok) {
  velo_call *gc = VELO_SRV_CONTAINER_OF(tag, velo_call, close_tag);

  if (gc->close_cancelled || !ok) {
    bool submitted;
    uint64_t n_sent;

    atomic_store(&gc->cancelled, true);
    pthread_mutex_lock(&gc->mu);
    submitted = gc->submitted;
    n_sent = gc->send.n_sent;
    pthread_mutex_unlock(&gc->mu);
    if (submitted) {
      velo_server *srv = gc->srv;
      const char *why;
      char *peer = grpc_call_get_peer(gc->call);
      bool deadline_passed =
          gpr_time_cmp(gpr_now(gc->deadline.clock_type), gc->deadline) >= 0;

      atomic_fetch_add(&srv->n_cancelled, 1);
      if (atomic_load(&srv->shutting_down))
        why = "generate cancelled: server shutting down";
      else if (deadline_passed)
        why = "generate cancelled by client (deadline passed)";
      else
        why = "generate cancelled by client";
      velo_log(VELO_LOG_INFO, LOG_SOURCE,
               "%s: model '%s', peer %s, %llu message(s) sent, %.3f s after it arrived", why,
               gc->entry ? gc->entry->name : "?", peer ? peer : "?",
               (unsigned long long)n_sent, seconds_since(&gc->started));
      gpr_free(peer);
    }
  }
  call_unref(gc);
}

bool velo_server_call_cancelled(velo_call *gc) {
  if (velo_oip_owns_call(gc)) return velo_oip_call_cancelled(gc); /* ModelInfer & co */
  return !gc || atomic_load(&gc->cancelled) || atomic_load(&gc->refused);
}

/* ------------------------------------------------------------------ */
/* Responses                                                           */
/* ------------------------------------------------------------------ */

/* Copies len bytes into a new NUL-terminated string (NULL: out of memory). */
static char *copy_string(const char *p, size_t len) {
  char *s = malloc(len + 1);
  if (!s) return NULL;
  if (len) memcpy(s, p, len);
  s[len] = '\0';
  return s;
}

/* v saturated to the int32 range (the proto's usage fields). */
static int32_t clamp_i32(int64_t v) {
  return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v;
}

/* Packs a task response into a GenerateResponse: text_output (BYTES [1]),
 * token_ids (INT32 [n]) and, when final, finish_reason / prompt_tokens /
 * completion_tokens.  Unknown outputs and parameters are ignored.  Returns
 * NULL for an empty non-final response (nothing to send) and when out of
 * memory (logged). */
static grpc_byte_buffer *pack_response(const velo_response *resp) {
  /* Packed through the twin with `bytes text` (wire/generate_wire.proto),
   * so text holding U+0000 goes out whole; the bytes are a valid
   * velo.v1.GenerateResponse. */
  Velo__Wire__GenerateResponseWire out = VELO__WIRE__GENERATE_RESPONSE_WIRE__INIT;
  char *reason = NULL;
  int32_t *ids = NULL;
  size_t n_ids = 0;
  grpc_byte_buffer *bb = NULL;
  bool oom = false, has_text = false;

  for (size_t i = 0; i < resp->n_outputs && resp->outputs; i++) {
    const velo_io_tensor *t = &resp->outputs[i];
    if (!t->name || !t->data) continue;
    if (strcmp(t->name, "text_output") == 0 && t->datatype == VELO_DATATYPE_BYTES &&
        t->size >= 4 && !has_text) {
      const uint8_t *d = t->data;
      uint32_t len = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
                     (uint32_t)d[3] << 24;
      if ((size_t)len > t->size - 4) continue;
      /* Borrowed from the response until packed below. */
      out.text.data = (uint8_t *)d + 4;
      out.text.len = len;
      has_text = true;
    } else if (strcmp(t->name, "token_ids") == 0 && t->datatype == VELO_DATATYPE_INT32 &&
               t->size >= 4 && !ids) {
      n_ids = t->size / 4;
      ids = malloc(n_ids * sizeof *ids);
      if (ids) memcpy(ids, t->data, n_ids * sizeof *ids);
      else n_ids = 0, oom = true;
    }
  }
  if (resp->final) {
    for (size_t i = 0; i < resp->n_params && resp->params; i++) {
      const velo_param *p = &resp->params[i];
      if (!p->key) continue;
      if (strcmp(p->key, "finish_reason") == 0 && p->type == VELO_PARAM_STRING && !reason) {
        reason = copy_string(p->value.s.ptr ? p->value.s.ptr : "", p->value.s.ptr ? p->value.s.len : 0);
        oom |= !reason;
      } else if (strcmp(p->key, "prompt_tokens") == 0 && p->type == VELO_PARAM_INT64) {
        out.prompt_tokens = clamp_i32(p->value.i);
      } else if (strcmp(p->key, "completion_tokens") == 0 && p->type == VELO_PARAM_INT64) {
        out.completion_tokens = clamp_i32(p->value.i);
      }
    }
  }
  if (oom) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory packing a response: dropped");
  } else if (resp->final || out.text.len > 0 || n_ids > 0) {
    if (reason) out.finish_reason = reason;
    out.n_token_ids = n_ids;
    out.token_ids = ids;
    bb = velo_srv_pack(&out.base);
  }
  free(reason);
  free(ids);
  return bb;
}

velo_status velo_server_respond(velo_call *gc, const velo_response *resp) {
  grpc_byte_buffer *bb = NULL;
  bool final, gone, last;

  if (velo_oip_owns_call(gc)) return velo_oip_respond(gc, resp); /* ModelInfer & co */
  if (!gc || !resp || resp->struct_size < sizeof(velo_response)) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE,
             "a task plugin called respond() with %s: ignored (plugin bug)",
             !gc ? "no call" : !resp ? "no response" : "a response struct too small");
    return VELO_INVALID_ARGUMENT;
  }
  final = resp->final;
  gone = atomic_load(&gc->cancelled) || atomic_load(&gc->refused);
  if (!gone && (!final || resp->status == VELO_OK)) bb = pack_response(resp);
  if (bb) { /* --max-send-message-bytes: end the call with that error instead */
    velo_error err;
    velo_error_init(&err);
    if (velo_srv_check_send_size(gc->srv, grpc_byte_buffer_length(bb), &err) != VELO_OK) {
      grpc_byte_buffer_destroy(bb);
      bb = NULL;
      pthread_mutex_lock(&gc->mu);
      velo_srv_send_finish_locked(&gc->send, velo_srv_status(err.code), err.message);
      pthread_mutex_unlock(&gc->mu);
      atomic_store(&gc->refused, true);
      gone = true;
    }
  }

  pthread_mutex_lock(&gc->mu);
  gone = gone || velo_srv_send_over_locked(&gc->send) || atomic_load(&gc->refused);
  if (bb && gone) grpc_byte_buffer_destroy(bb);
  else if (bb) velo_srv_send_push_locked(&gc->send, bb); /* out of memory: dropped, logged */
  if (final) /* a non-OK status always has a message ("" for none) */
    velo_srv_send_finish_locked(&gc->send, velo_srv_status(resp->status),
                                resp->status != VELO_OK
                                    ? (resp->error_message ? resp->error_message : "")
                                    : NULL);
  velo_srv_send_pump_locked(&gc->send);
  last = final && --gc->refs == 0; /* the task's reference */
  pthread_mutex_unlock(&gc->mu);
  if (last) free_call(gc);
  return gone ? VELO_CANCELLED : VELO_OK;
}

/* ------------------------------------------------------------------ */
/* The call                                                            */
/* ------------------------------------------------------------------ */

/* Appends a parameter to gc->params (sized for every possible one). */
static velo_param *add_param(velo_call *gc, const char *key, velo_param_type type) {
  velo_param *p = &gc->params[gc->req.n_params++];
  p->struct_size = (uint32_t)sizeof *p;
  p->key = key;
  p->type = type;
  return p;
}

#define HAS(field, CASE) (m->_##field##_case == VELO__V1__GENERATE_REQUEST___##CASE)

/* Builds gc->req from gc->msg: text_input BYTES [1] plus a parameter for
 * each field the client set (docs/protocol.md).  Everything it points to is
 * owned by gc.  RESOURCE_EXHAUSTED when out of memory. */
static velo_status build_request(velo_call *gc, velo_error *err) {
  const Velo__V1__GenerateRequest *m = gc->msg;
  size_t plen = strlen(m->prompt);

  if (plen > UINT32_MAX)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "prompt is too long (%zu bytes)", plen);
  gc->prompt = malloc(4 + plen);
  gc->params = calloc(SCALAR_PARAMS + m->n_stop, sizeof *gc->params);
  if (!gc->prompt || !gc->params) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  gc->prompt[0] = (uint8_t)plen;
  gc->prompt[1] = (uint8_t)(plen >> 8);
  gc->prompt[2] = (uint8_t)(plen >> 16);
  gc->prompt[3] = (uint8_t)(plen >> 24);
  memcpy(gc->prompt + 4, m->prompt, plen);

  gc->input_shape[0] = 1;
  gc->input.struct_size = (uint32_t)sizeof gc->input;
  gc->input.name = "text_input";
  gc->input.datatype = VELO_DATATYPE_BYTES;
  gc->input.n_dims = 1;
  gc->input.shape = gc->input_shape;
  gc->input.data = gc->prompt;
  gc->input.size = 4 + plen;

  gc->req.struct_size = (uint32_t)sizeof gc->req;
  gc->req.call = gc;
  gc->req.id = "";
  gc->req.n_inputs = 1;
  gc->req.inputs = &gc->input;
  gc->req.params = gc->params;
  gc->req.n_params = 0;
  gc->req.streaming = true;

  if (HAS(max_tokens, MAX_TOKENS_MAX_TOKENS))
    add_param(gc, "max_tokens", VELO_PARAM_INT64)->value.i = m->max_tokens;
  if (HAS(temperature, TEMPERATURE_TEMPERATURE))
    add_param(gc, "temperature", VELO_PARAM_DOUBLE)->value.d = m->temperature;
  if (HAS(top_k, TOP_K_TOP_K))
    add_param(gc, "top_k", VELO_PARAM_INT64)->value.i = m->top_k;
  if (HAS(top_p, TOP_P_TOP_P))
    add_param(gc, "top_p", VELO_PARAM_DOUBLE)->value.d = m->top_p;
  if (HAS(min_p, MIN_P_MIN_P))
    add_param(gc, "min_p", VELO_PARAM_DOUBLE)->value.d = m->min_p;
  if (HAS(repeat_penalty, REPEAT_PENALTY_REPEAT_PENALTY))
    add_param(gc, "repeat_penalty", VELO_PARAM_DOUBLE)->value.d = m->repeat_penalty;
  if (HAS(repeat_last_n, REPEAT_LAST_N_REPEAT_LAST_N))
    add_param(gc, "repeat_last_n", VELO_PARAM_INT64)->value.i = m->repeat_last_n;
  if (HAS(seed, SEED_SEED))
    add_param(gc, "seed", VELO_PARAM_INT64)->value.i = (int64_t)m->seed; /* same 64 bits */
  if (HAS(ignore_eos, IGNORE_EOS_IGNORE_EOS))
    add_param(gc, "ignore_eos", VELO_PARAM_BOOL)->value.b = m->ignore_eos != 0;
  if (HAS(priority, PRIORITY_PRIORITY))
    add_param(gc, "priority", VELO_PARAM_INT64)->value.i = m->priority;
  for (size_t i = 0; i < m->n_stop; i++) {
    velo_param *p = add_param(gc, "stop", VELO_PARAM_STRING);
    p->value.s.ptr = m->stop[i];
    p->value.s.len = strlen(m->stop[i]);
  }
  return VELO_OK;
}

/* Decodes, validates, acquires the model and submits; on any failure the
 * call is finished with the error.  Runs on a queue thread. */
static void start_generation(velo_call *gc, grpc_byte_buffer *payload) {
  velo_server *srv = gc->srv;
  velo_error err;
  velo_status st;
  grpc_status_code code;
  char msg[1024];

  velo_error_init(&err);
  code = velo_srv_decode(payload, &velo__v1__generate_request__descriptor,
                         (ProtobufCMessage **)&gc->msg, msg, sizeof msg);
  if (code != GRPC_STATUS_OK) {
    finish_call(gc, code, msg);
    return;
  }
  code = velo_srv_acquire_model(srv, gc->msg->model, &gc->entry, msg, sizeof msg);
  if (code != GRPC_STATUS_OK) {
    finish_call(gc, code, msg);
    return;
  }
  st = build_request(gc, &err);
  if (st != VELO_OK) {
    finish_call(gc, velo_srv_status(st), err.message);
    return;
  }

  velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "model '%s': prompt of %zu bytes, %zu parameter(s)",
           gc->entry->name, strlen(gc->msg->prompt), gc->req.n_params);
  pthread_mutex_lock(&gc->mu);
  gc->refs++; /* the task's, until its final response */
  gc->submitted = true;
  pthread_mutex_unlock(&gc->mu);
  st = velo_model_entry_submit(gc->entry, &gc->req, &err); /* UNAVAILABLE while unloading */
  if (st != VELO_OK) {
    pthread_mutex_lock(&gc->mu);
    gc->submitted = false;
    gc->refs--; /* respond() will never be called; the handler still holds one */
    pthread_mutex_unlock(&gc->mu);
    finish_call(gc, velo_srv_status(st), err.message[0] ? err.message : velo_status_name(st));
  }
}

void velo_srv_handle_generate(velo_server *srv, grpc_call *call, gpr_timespec deadline,
                              grpc_byte_buffer *payload) {
  velo_call *gc = calloc(1, sizeof *gc);

  if (!gc) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory for a Generate call");
    if (payload) grpc_byte_buffer_destroy(payload);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  gc->close_tag.on_done = close_done;
  velo_srv_send_init(&gc->send, call, send_done, &gc->cancelled, &gc->refs, LOG_SOURCE,
                     "a Generate call");
  gc->srv = srv;
  gc->call = call;
  gc->deadline = deadline;
  clock_gettime(CLOCK_MONOTONIC, &gc->started);
  atomic_init(&gc->cancelled, false);
  atomic_init(&gc->refused, false);
  pthread_mutex_init(&gc->mu, NULL);
  gc->refs = 2; /* this handler, and the close-on-server started next */

  /* Alone, first: it completes when the call ends, which is how a cancel,
   * a deadline or a disconnect reaches the task. */
  if (!velo_srv_start_close_watch(call, &gc->close_cancelled, &gc->close_tag, LOG_SOURCE,
                                  "a Generate call"))
    gc->refs--;

  start_generation(gc, payload);
  if (payload) grpc_byte_buffer_destroy(payload);
  call_unref(gc);
}
