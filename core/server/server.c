/*
 * server.c - the gRPC core server of velod: creation and binding, the
 * completion-queue threads, the request slots that receive new calls, the
 * catch-all that answers UNIMPLEMENTED, graceful shutdown, and the helpers
 * the method handlers share (the one request decoder, serialisation,
 * model lookup, rendering client text for messages, finishing a unary
 * call, the message size limits).  The method handlers themselves live in
 * generate.c, services.c, health.c, reflection.c, oip.c and oip_infer.c;
 * the sending side of the streaming ones in call_send.c.
 *
 * Model: one completion queue, served by a few threads; every event's tag
 * is a velo_srv_tag embedded in the object it concerns.  Each registered
 * method keeps VELO_SRV_SLOTS_PER_METHOD requests posted
 * (grpc_server_request_registered_call with the request message read up
 * front); a slot is re-posted as soon as it has delivered a call, before
 * the call is handled.  Methods with streamed requests (reflection) get no
 * message up front; their handlers read them.  Every request read up front
 * is checked against --max-receive-message-bytes here, and every unary
 * response in velo_srv_finish_unary against --max-send-message-bytes.
 * Shutdown follows shared/PITFALLS.md: shutdown and
 * notify, wait (cancel all after a grace period), destroy the server, then
 * shut down, drain and destroy the queue.
 */
#include "server_internal.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/compression.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define LOG_SOURCE "server"

static const char *const method_path[VELO_SRV_METHOD_COUNT] = {
    [VELO_SRV_GENERATE] = "/velo.v1.TextGeneration/Generate",
    [VELO_SRV_TOKENIZE] = "/velo.v1.TextGeneration/Tokenize",
    [VELO_SRV_LIST_MODELS] = "/velo.v1.Models/ListModels",
    [VELO_SRV_LOAD_MODEL] = "/velo.v1.Models/LoadModel",
    [VELO_SRV_UNLOAD_MODEL] = "/velo.v1.Models/UnloadModel",
    [VELO_SRV_HEALTH_CHECK] = "/grpc.health.v1.Health/Check",
    [VELO_SRV_HEALTH_WATCH] = "/grpc.health.v1.Health/Watch",
    [VELO_SRV_REFLECTION_V1ALPHA] =
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    [VELO_SRV_REFLECTION_V1] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
#define VELO_SRV_OIP_PATH_(id, name, stream) \
  [VELO_SRV_OIP_FIRST + VELO_OIP_##id] = "/" VELO_OIP_SERVICE "/" name,
    VELO_OIP_METHOD_MAP(VELO_SRV_OIP_PATH_)
#undef VELO_SRV_OIP_PATH_
};

/* Methods whose requests are a stream (client- or bidi-streaming): they are
 * registered with GRPC_SRM_PAYLOAD_NONE and their handlers read each
 * message with RECV_MESSAGE (checking it with velo_srv_check_receive_size).
 * The others get their one request message read up front. */
static const bool method_reads_stream[VELO_SRV_METHOD_COUNT] = {
    [VELO_SRV_REFLECTION_V1ALPHA] = true,
    [VELO_SRV_REFLECTION_V1] = true,
#define VELO_SRV_OIP_STREAM_(id, name, stream) [VELO_SRV_OIP_FIRST + VELO_OIP_##id] = stream,
    VELO_OIP_METHOD_MAP(VELO_SRV_OIP_STREAM_)
#undef VELO_SRV_OIP_STREAM_
};

/* gRPC's own limit for a velod limit of n bytes: 2n + 1 MiB, at most
 * INT_MAX.  Above velod's, so that a message between the two reaches velod
 * and gets velod's message naming the option (gRPC would refuse it with
 * "Received message larger than max" before velod sees it). */
static int grpc_limit(size_t n) {
  size_t margin = (size_t)1 << 20;
  return n > ((size_t)INT_MAX - margin) / 2 ? INT_MAX : (int)(2 * n + margin);
}

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

grpc_status_code velo_srv_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
                                 ProtobufCMessage **out, char *why, size_t why_size) {
  grpc_byte_buffer_reader reader;
  ProtobufCMessage *msg;
  grpc_slice all;
  size_t received, repacked;

  *out = NULL;
  if (!bb) {
    snprintf(why, why_size, "the request message is missing: expected a %s", desc->name);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  /* gRPC inflates a compressed message before it reaches us; only the
   * identity algorithm is enabled, so a compressed call is refused before
   * that.  Should one still arrive compressed, refuse it rather than let
   * the reader inflate it without a size limit. */
  if (bb->type == GRPC_BB_RAW && bb->data.raw.compression != GRPC_COMPRESS_NONE) {
    snprintf(why, why_size, "compressed request messages are not accepted: send them uncompressed");
    return GRPC_STATUS_UNIMPLEMENTED;
  }
  if (!grpc_byte_buffer_reader_init(&reader, bb)) {
    snprintf(why, why_size, "the request is not a valid %s", desc->name);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  received = GRPC_SLICE_LENGTH(all);
  msg = protobuf_c_message_unpack(desc, NULL, received, GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  if (!msg) {
    snprintf(why, why_size, "the request is not a valid %s", desc->name);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  /* protobuf-c gives strings as char * cut at their first NUL, and keeps
   * unknown fields (re-packing them as received): a canonical message
   * without NULs packs back to exactly the bytes received. */
  repacked = protobuf_c_message_get_packed_size(msg);
  if (repacked != received) {
    velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "%s refused: %zu bytes received, %zu after decoding",
             desc->name, received, repacked);
    protobuf_c_message_free_unpacked(msg, NULL);
    snprintf(why, why_size,
             "request message: a string field contains a NUL byte (U+0000), which text fields "
             "do not accept (or the message is not canonically encoded)");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  *out = msg;
  return GRPC_STATUS_OK;
}

grpc_status_code velo_srv_check_receive_size(velo_server *srv, size_t bytes, char *why,
                                             size_t why_size) {
  if (bytes <= srv->max_receive_bytes) return GRPC_STATUS_OK;
  snprintf(why, why_size, "request message is %zu bytes, over --max-receive-message-bytes %zu",
           bytes, srv->max_receive_bytes);
  return GRPC_STATUS_RESOURCE_EXHAUSTED;
}

velo_status velo_srv_check_send_size(velo_server *srv, size_t bytes, velo_error *err) {
  if (bytes <= srv->max_send_bytes) return VELO_OK;
  velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "a %zu-byte response is over --max-send-message-bytes %zu",
           bytes, srv->max_send_bytes);
  return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                        "response message is %zu bytes, over --max-send-message-bytes %zu", bytes,
                        srv->max_send_bytes);
}

grpc_byte_buffer *velo_srv_pack(const ProtobufCMessage *msg) {
  size_t size = protobuf_c_message_get_packed_size(msg);
  grpc_slice slice = grpc_slice_malloc(size);
  grpc_byte_buffer *bb;

  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

/* ------------------------------------------------------------------ */
/* Rendering untrusted text                                            */
/* ------------------------------------------------------------------ */

/* The length (2..4) of the valid UTF-8 sequence of a multi-byte code point
 * at p (n bytes left), with the code point in *cp; 0 when p does not start
 * one (a stray continuation byte, an overlong form, a surrogate, a code
 * point above U+10FFFF, or a sequence cut short). */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp) {
  size_t len;
  uint32_t c, min;

  if (p[0] >= 0xC2 && p[0] <= 0xDF) len = 2, c = p[0] & 0x1Fu, min = 0x80;
  else if (p[0] >= 0xE0 && p[0] <= 0xEF) len = 3, c = p[0] & 0x0Fu, min = 0x800;
  else if (p[0] >= 0xF0 && p[0] <= 0xF4) len = 4, c = p[0] & 0x07u, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    c = c << 6 | (p[i] & 0x3Fu);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return len;
}

/* Code points that are valid but must not reach a log line or a terminal
 * raw: C1 controls, line/paragraph separators, bidirectional controls. */
static bool unsafe_code_point(uint32_t c) {
  return (c >= 0x80 && c <= 0x9F) || c == 0x2028 || c == 0x2029 || c == 0x200E || c == 0x200F ||
         (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

/* The engine of velo_server_quote and velo_srv_clean_status: renders at
 * most max_chars characters of s[0..len) into out (cap >= 1, always
 * NUL-terminated), cutting only between characters, with "..." after a
 * cut when it fits.  Backslashes are doubled when escape_backslash. */
static void render_text(const char *s, size_t len, char *out, size_t cap, size_t max_chars,
                        bool escape_backslash) {
  static const char hex[] = "0123456789ABCDEF";
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, used = 0, chars = 0;
  size_t safe = 0; /* the longest output so far that still leaves room for "..." */
  bool cut = false;

  if (cap == 0) return;
  while (i < len) {
    char piece[16];
    size_t n = 0, take = 0;
    uint32_t cp = 0;

    if (chars == max_chars) {
      cut = true;
      break;
    }
    if (p[i] >= 0x20 && p[i] < 0x7F) { /* printable ASCII */
      take = 1;
      if (p[i] == '\\' && escape_backslash) piece[n++] = '\\';
      piece[n++] = (char)p[i];
    } else if (p[i] >= 0x80 && (take = utf8_seq(p + i, len - i, &cp)) > 0 &&
               !unsafe_code_point(cp)) { /* valid UTF-8, kept */
      memcpy(piece, p + i, take);
      n = take;
    } else { /* a control byte, an invalid byte, or an unsafe code point */
      if (p[i] < 0x80 || take == 0) take = 1;
      for (size_t k = 0; k < take; k++) {
        piece[n++] = '\\';
        piece[n++] = 'x';
        piece[n++] = hex[p[i + k] >> 4];
        piece[n++] = hex[p[i + k] & 0xF];
      }
    }
    if (used + n + 1 > cap) { /* this piece and the NUL do not fit */
      cut = true;
      break;
    }
    memcpy(out + used, piece, n);
    used += n;
    i += take;
    chars++;
    if (used + 3 + 1 <= cap) safe = used;
  }
  if (cut) { /* back off to a character boundary that leaves room for "..." */
    used = safe;
    if (used + 3 + 1 <= cap) {
      memcpy(out + used, "...", 3);
      used += 3;
    }
  }
  out[used] = '\0';
}

char *velo_server_quote(const char *s, size_t len, char *out, size_t cap) {
  render_text(s, s ? len : 0, out, cap, VELO_SERVER_QUOTE_CHARS, true);
  return out;
}

char *velo_srv_clean_status(const char *msg, char *out, size_t cap) {
  render_text(msg, msg ? strlen(msg) : 0, out, cap, SIZE_MAX, false);
  return out;
}

/* ------------------------------------------------------------------ */
/* Finishing a unary call                                              */
/* ------------------------------------------------------------------ */

typedef struct unary_finish {
  velo_srv_tag tag; /* first member: the tag is the object */
  velo_server *srv;
  grpc_call *call;
  grpc_byte_buffer *response;
  int cancelled; /* RECV_CLOSE_ON_SERVER result; unused */
} unary_finish;

/* The finishing batch completed (or failed: the client has gone); either
 * way the call is over. */
static void unary_finish_done(velo_srv_tag *tag, bool ok) {
  unary_finish *uf = (unary_finish *)tag;
  (void)ok;
  if (uf->response) grpc_byte_buffer_destroy(uf->response);
  grpc_call_unref(uf->call);
  velo_srv_call_ended(uf->srv);
  free(uf);
}

void velo_srv_finish_unary(velo_server *srv, grpc_call *call, grpc_byte_buffer *response,
                           grpc_status_code code, const char *message) {
  unary_finish *uf = calloc(1, sizeof *uf);
  grpc_op ops[4];
  size_t n = 0;
  grpc_slice details;
  grpc_call_error rc;
  char clean[VELO_SRV_STATUS_MAX];
  velo_error err;

  velo_error_init(&err);
  if (response && velo_srv_check_send_size(srv, grpc_byte_buffer_length(response), &err) !=
                      VELO_OK) { /* the status instead of the message */
    grpc_byte_buffer_destroy(response);
    response = NULL;
    code = velo_srv_status(err.code);
    message = err.message;
  }
  if (!uf) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory finishing a call");
    grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
    if (response) grpc_byte_buffer_destroy(response);
    grpc_call_unref(call);
    velo_srv_call_ended(srv);
    return;
  }
  uf->tag.on_done = unary_finish_done;
  uf->srv = srv;
  uf->call = call;
  uf->response = response;

  details = grpc_slice_from_copied_string(velo_srv_clean_status(message, clean, sizeof clean));
  memset(ops, 0, sizeof ops);
  ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA; /* always: see PITFALLS */
  if (response) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = response;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = code;
  ops[n++].data.send_status_from_server.status_details = message ? &details : NULL;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n++].data.recv_close_on_server.cancelled = &uf->cancelled;

  rc = grpc_call_start_batch(call, ops, n, &uf->tag, NULL);
  grpc_slice_unref(details); /* not retained past start_batch */
  if (rc != GRPC_CALL_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot finish a call: grpc_call_start_batch error %d",
             (int)rc);
    unary_finish_done(&uf->tag, false);
  }
}

/* "a, b, c" (or "none") into buf: whole names only; a list that does not
 * fit ends with "... (N more)".  Any thread (takes registry references). */
void velo_srv_model_names(velo_server *srv, char *buf, size_t size) {
  velo_model_entry **list = NULL;
  size_t n = velo_registry_list(srv->registry, &list);
  size_t used = 0, shown = 0;
  const size_t tail_room = 32; /* ", ... (N more)" always fits after a name */

  if (size == 0) return;
  buf[0] = '\0';
  if (n == 0) snprintf(buf, size, "none");
  for (size_t i = 0; i < n; i++) {
    /* Whole names only: one that does not fit (leaving room for the
     * marker) ends the list with "... (N more)". */
    size_t need = strlen(list[i]->name) + (i ? 2 : 0);
    if (shown == i && used + need + (i + 1 < n ? tail_room : 0) < size) {
      snprintf(buf + used, size - used, "%s%s", i ? ", " : "", list[i]->name);
      used += need;
      shown++;
    }
    velo_model_entry_release(list[i]);
  }
  if (shown < n)
    snprintf(buf + used, size - used, "%s... (%zu more)", shown ? ", " : "", n - shown);
  free(list);
}

grpc_status_code velo_srv_acquire_model(velo_server *srv, const char *name,
                                        velo_model_entry **entry, char *msg, size_t msg_size) {
  char quoted[VELO_SERVER_QUOTE_SIZE];
  int head;

  /* The list goes straight into what is left of msg, so that a list cut
   * short ends with its "... (N more)" marker rather than being cut. */
  *entry = NULL;
  if (!name || name[0] == '\0') {
    head = snprintf(msg, msg_size, "model must be set; loaded models: ");
    if (head > 0 && (size_t)head < msg_size)
      velo_srv_model_names(srv, msg + head, msg_size - (size_t)head);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  *entry = velo_registry_acquire(srv->registry, name);
  if (*entry) return GRPC_STATUS_OK;
  head = snprintf(msg, msg_size, "model '%s' is not loaded; loaded models: ",
                  velo_server_quote(name, strlen(name), quoted, sizeof quoted));
  if (head > 0 && (size_t)head < msg_size)
    velo_srv_model_names(srv, msg + head, msg_size - (size_t)head);
  return GRPC_STATUS_NOT_FOUND;
}

ProtobufCMessage *velo_srv_decode_or_finish(velo_server *srv, grpc_call *call,
                                            grpc_byte_buffer *payload,
                                            const ProtobufCMessageDescriptor *desc) {
  char msg[512];
  ProtobufCMessage *m = NULL;
  grpc_status_code code = velo_srv_decode(payload, desc, &m, msg, sizeof msg);
  if (code == GRPC_STATUS_OK) return m;
  velo_srv_finish_unary(srv, call, NULL, code, msg);
  return NULL;
}

velo_model_entry *velo_srv_acquire_or_finish(velo_server *srv, grpc_call *call,
                                             const char *name) {
  velo_model_entry *e = NULL;
  char msg[1024];
  grpc_status_code code = velo_srv_acquire_model(srv, name, &e, msg, sizeof msg);
  if (code != GRPC_STATUS_OK) velo_srv_finish_unary(srv, call, NULL, code, msg);
  return e;
}

void velo_srv_call_ended(velo_server *srv) {
  /* Under mu, so that velo_server_wait_shutdown cannot see the count reach
   * 0 (and let the server be freed) before this function is done with it. */
  pthread_mutex_lock(&srv->mu);
  if (atomic_fetch_sub(&srv->calls_in_flight, 1) == 1) pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* ------------------------------------------------------------------ */
/* Request slots                                                       */
/* ------------------------------------------------------------------ */

/* Posts (or re-posts) slot s.  A refused request is logged; the slot then
 * stays idle (gRPC refuses only after shutdown or on misuse). */
static void slot_post(velo_srv_slot *s) {
  velo_server *srv = s->srv;
  grpc_call_error rc;

  s->call = NULL;
  s->payload = NULL;
  if (s->method >= 0)
    rc = grpc_server_request_registered_call(srv->server, srv->method_handle[s->method],
                                             &s->call, &s->deadline, &s->metadata,
                                             method_reads_stream[s->method] ? NULL : &s->payload,
                                             srv->cq, srv->cq, &s->tag);
  else
    rc = grpc_server_request_call(srv->server, &s->call, &s->details, &s->metadata, srv->cq,
                                  srv->cq, &s->tag);
  if (rc != GRPC_CALL_OK)
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot request calls for %s: error %d",
             s->method >= 0 ? method_path[s->method] : "unknown methods", (int)rc);
}

/* Answers a call to a method velod does not serve. */
static void answer_unimplemented(velo_server *srv, grpc_call *call, const char *method,
                                 size_t len) {
  char msg[VELO_SERVER_QUOTE_SIZE + 64], quoted[VELO_SERVER_QUOTE_SIZE];
  snprintf(msg, sizeof msg, "method %s is not implemented by velod",
           velo_server_quote(method, len, quoted, sizeof quoted));
  velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "%s", msg);
  velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
}

/* A slot delivered a new call (ok) or was cancelled by shutdown (!ok).
 * Copies what the slot received, re-posts it, then handles the call. */
static void slot_done(velo_srv_tag *tag, bool ok) {
  velo_srv_slot *s = (velo_srv_slot *)tag;
  velo_server *srv = s->srv;
  grpc_call *call = s->call;
  grpc_byte_buffer *payload = s->payload;
  gpr_timespec deadline = s->deadline;
  int method = s->method;
  char path[256] = "";
  size_t path_len = 0;

  if (!ok) return; /* shutting down: the slot stays idle */

  if (method < 0) {
    size_t len = GRPC_SLICE_LENGTH(s->details.method);
    if (len >= sizeof path) len = sizeof path - 1;
    memcpy(path, GRPC_SLICE_START_PTR(s->details.method), len);
    path[len] = '\0';
    path_len = len;
    grpc_call_details_destroy(&s->details);
    grpc_call_details_init(&s->details);
  }
  grpc_metadata_array_destroy(&s->metadata);
  grpc_metadata_array_init(&s->metadata);
  atomic_fetch_add(&srv->calls_in_flight, 1);
  /* Re-post before handling: the call we hold keeps shutdown from
   * completing, so the server is still alive here. */
  if (!atomic_load(&srv->shutting_down)) slot_post(s);

  /* A call gRPC matched before the shutdown began but that reaches us
   * after it: refused like every new call, with a status that says why
   * and that clients may retry elsewhere.  (A call that reaches gRPC after
   * the shutdown began never gets here: gRPC core drops it itself, and its
   * client sees CANCELLED; the C API offers no hook for it.) */
  if (atomic_load(&srv->shutting_down)) {
    if (payload) grpc_byte_buffer_destroy(payload);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
    return;
  }
  /* The receive limit, for every request read up front (streamed requests
   * are checked by their handlers). */
  if (payload) {
    char why[160];
    grpc_status_code code =
        velo_srv_check_receive_size(srv, grpc_byte_buffer_length(payload), why, sizeof why);
    if (code != GRPC_STATUS_OK) {
      velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "%s: %s", method_path[method], why);
      grpc_byte_buffer_destroy(payload);
      velo_srv_finish_unary(srv, call, NULL, code, why);
      return;
    }
  }

  switch (method) {
    case VELO_SRV_GENERATE:
      velo_srv_handle_generate(srv, call, deadline, payload);
      break;
    case VELO_SRV_TOKENIZE:
    case VELO_SRV_LIST_MODELS:
    case VELO_SRV_LOAD_MODEL:
    case VELO_SRV_UNLOAD_MODEL:
      velo_srv_handle_unary(srv, (velo_srv_method)method, call, payload);
      break;
    case VELO_SRV_HEALTH_CHECK:
    case VELO_SRV_HEALTH_WATCH:
      velo_srv_handle_health(srv, (velo_srv_method)method, call, payload);
      break;
    case VELO_SRV_REFLECTION_V1ALPHA:
    case VELO_SRV_REFLECTION_V1:
      velo_srv_handle_reflection(srv, (velo_srv_method)method, call);
      break;
    default:
      if (method >= VELO_SRV_OIP_FIRST && method <= VELO_SRV_OIP_LAST)
        velo_oip_handle(srv, method - VELO_SRV_OIP_FIRST, call, deadline, payload);
      else
        answer_unimplemented(srv, call, path, path_len);
      break;
  }
}

/* ------------------------------------------------------------------ */
/* Threads and lifecycle                                               */
/* ------------------------------------------------------------------ */

/* Runs the completion queue until it is shut down and drained. */
static void *cq_thread(void *arg) {
  velo_server *srv = arg;
  for (;;) {
    grpc_event ev =
        grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) {
      velo_srv_tag *tag = ev.tag;
      tag->on_done(tag, ev.success != 0);
    }
  }
  return NULL;
}

/* The shutdown tag: gRPC has ended every call it knows of. */
static void shutdown_done(velo_srv_tag *tag, bool ok) {
  velo_server *srv = (velo_server *)((char *)tag - offsetof(velo_server, shutdown_tag));
  (void)ok;
  pthread_mutex_lock(&srv->mu);
  srv->shutdown_done = true;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* Checks "HOST:PORT" (HOST may be a bracketed IPv6 address) and returns the
 * port, or -1 when malformed.  *host_len gets the length of HOST. */
static long parse_listen(const char *addr, size_t *host_len) {
  const char *colon = addr ? strrchr(addr, ':') : NULL;
  char *end;
  long port;

  if (!colon || colon == addr || colon[1] < '0' || colon[1] > '9') return -1;
  errno = 0;
  port = strtol(colon + 1, &end, 10);
  if (errno || *end != '\0' || port < 0 || port > 65535) return -1;
  *host_len = (size_t)(colon - addr);
  return port;
}

bool velo_server_listen_valid(const char *listen) {
  size_t host_len;
  return parse_listen(listen, &host_len) >= 0;
}

velo_status velo_server_probe_listen(const char *listen, velo_error *err) {
  struct addrinfo hints, *res = NULL, *ai;
  char host[256], port[24];
  size_t host_len = 0;
  long want = parse_listen(listen, &host_len);
  int rc, first_errno = 0;

  if (want < 0 || host_len >= sizeof host)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "bad listen address '%s': expected HOST:PORT, e.g. 127.0.0.1:50051",
                          listen ? listen : "(null)");
  memcpy(host, listen, host_len);
  host[host_len] = '\0';
  if (host_len >= 2 && host[0] == '[' && host[host_len - 1] == ']') { /* [::1] */
    memmove(host, host + 1, host_len - 2);
    host[host_len - 2] = '\0';
  }
  snprintf(port, sizeof port, "%ld", want);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cannot listen on %s: cannot resolve '%s': %s",
                          listen, host, gai_strerror(rc));
  /* gRPC binds every address the name resolves to and succeeds if one
   * works; do the same with SO_REUSEADDR as it does (not SO_REUSEPORT). */
  for (ai = res; ai; ai = ai->ai_next) {
    int one = 1, ok;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      if (!first_errno) first_errno = errno;
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ok = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
    if (!ok && !first_errno) first_errno = errno;
    close(fd);
    if (ok) break;
  }
  freeaddrinfo(res);
  if (!ai)
    return velo_error_set(err, VELO_UNAVAILABLE, "cannot listen on %s: %s%s", listen,
                          strerror(first_errno ? first_errno : EADDRNOTAVAIL),
                          first_errno == EADDRINUSE ? " (is another velod running?)" : "");
  return VELO_OK;
}

/* Shuts down and drains the queue through its threads, then destroys it. */
static void stop_queue(velo_server *srv) {
  grpc_completion_queue_shutdown(srv->cq);
  for (int i = 0; i < srv->n_threads; i++) pthread_join(srv->threads[i], NULL);
  srv->n_threads = 0;
  grpc_completion_queue_destroy(srv->cq);
  srv->cq = NULL;
}

/* Fills srv->services with the distinct service names of the registered
 * methods ("/pkg.Service/Method" -> "pkg.Service"), in table order.
 * false when out of memory. */
static bool collect_services(velo_server *srv) {
  srv->services = calloc(VELO_SRV_METHOD_COUNT, sizeof *srv->services);
  if (!srv->services) return false;
  for (int m = 0; m < VELO_SRV_METHOD_COUNT; m++) {
    const char *start = method_path[m] + 1, *end = strrchr(method_path[m], '/');
    size_t len = end > start ? (size_t)(end - start) : 0, i;
    for (i = 0; i < srv->n_services; i++)
      if (strlen(srv->services[i]) == len && memcmp(srv->services[i], start, len) == 0) break;
    if (i < srv->n_services || len == 0) continue;
    if (!(srv->services[srv->n_services] = strndup(start, len))) return false;
    srv->n_services++;
  }
  return true;
}

/* Frees the slots' arrays and the struct (the gRPC objects are gone). */
static void free_server(velo_server *srv) {
  for (size_t i = 0; i < srv->n_slots; i++) {
    grpc_metadata_array_destroy(&srv->slots[i].metadata);
    if (srv->slots[i].method < 0) grpc_call_details_destroy(&srv->slots[i].details);
  }
  velo_srv_health_destroy(srv);
  for (size_t i = 0; i < srv->n_services; i++) free(srv->services[i]);
  free(srv->services);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv->address);
  free(srv);
}

velo_status velo_server_create(const velo_server_options *opts, velo_server **out,
                               velo_error *err) {
  velo_server *srv;
  size_t host_len = 0;
  int port;
  int n_threads = opts->n_threads > 0 ? opts->n_threads : 2;
  grpc_arg args[4];
  grpc_channel_args channel_args;
  grpc_server_credentials *creds;
  pthread_condattr_t cattr;

  if (n_threads > VELO_SRV_MAX_THREADS) n_threads = VELO_SRV_MAX_THREADS;
  /* Our own test bind first: it names the reason (gRPC only logs it). */
  if (velo_server_probe_listen(opts->listen, err) != VELO_OK)
    return err ? err->code : VELO_UNAVAILABLE;
  parse_listen(opts->listen, &host_len);

  srv = calloc(1, sizeof *srv);
  if (!srv) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  srv->registry = opts->registry;
  srv->repository = opts->repository;
  srv->max_receive_bytes = opts->max_receive_message_bytes ? opts->max_receive_message_bytes
                                                           : VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES;
  srv->max_send_bytes = opts->max_send_message_bytes ? opts->max_send_message_bytes
                                                     : VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES;
  atomic_init(&srv->shutting_down, false);
  atomic_init(&srv->calls_in_flight, 0);
  atomic_init(&srv->n_cancelled, 0);
  srv->shutdown_tag.on_done = shutdown_done;
  pthread_mutex_init(&srv->mu, NULL);
  pthread_condattr_init(&cattr);
  pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  pthread_cond_init(&srv->cv, &cattr);
  pthread_condattr_destroy(&cattr);
  if (!collect_services(srv) || velo_srv_health_create(srv, err) != VELO_OK) {
    free_server(srv);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }

  /* Slots, each with its arrays initialised (freed by free_server). */
  for (int m = 0; m < VELO_SRV_METHOD_COUNT; m++)
    for (int k = 0; k < VELO_SRV_SLOTS_PER_METHOD; k++) srv->slots[srv->n_slots++].method = m;
  for (int k = 0; k < VELO_SRV_SLOTS_CATCH_ALL; k++) {
    srv->slots[srv->n_slots].method = -1;
    grpc_call_details_init(&srv->slots[srv->n_slots++].details);
  }
  for (size_t i = 0; i < srv->n_slots; i++) {
    srv->slots[i].tag.on_done = slot_done;
    srv->slots[i].srv = srv;
    grpc_metadata_array_init(&srv->slots[i].metadata);
  }

  /* SO_REUSEPORT off: a second velod on the same port must fail, not
   * silently take half of the connections. */
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
  args[0].value.integer = 0;
  /* Only the identity algorithm: gRPC inflates a compressed message whole
   * before it checks the receive limit, so 1 MB of gzip could cost 1 GB of
   * memory.  A compressed request is refused (UNIMPLEMENTED "Compression
   * algorithm 'gzip' is disabled") before anything is inflated, and the
   * server advertises grpc-accept-encoding: identity.  Responses are never
   * compressed (no call asks for it). */
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char *)GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET;
  args[1].value.integer = 1 << GRPC_COMPRESS_NONE;
  /* gRPC's limits above velod's: see grpc_limit. */
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[2].value.integer = grpc_limit(srv->max_receive_bytes);
  args[3].type = GRPC_ARG_INTEGER;
  args[3].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[3].value.integer = grpc_limit(srv->max_send_bytes);
  channel_args.num_args = 4;
  channel_args.args = args;
  srv->server = grpc_server_create(&channel_args, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
  for (int m = 0; m < VELO_SRV_METHOD_COUNT; m++)
    srv->method_handle[m] = grpc_server_register_method(
        srv->server, method_path[m], NULL,
        method_reads_stream[m] ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
        0);

  /* Threads first: everything that can fail comes before the bind, because
   * a server with a listener can only be destroyed after a shutdown. */
  for (int i = 0; i < n_threads; i++) {
    if (pthread_create(&srv->threads[i], NULL, cq_thread, srv) != 0) break;
    srv->n_threads++;
  }
  if (srv->n_threads == 0) {
    grpc_server_destroy(srv->server);
    stop_queue(srv);
    free_server(srv);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cannot start server threads");
  }

  creds = grpc_insecure_server_credentials_create();
  port = grpc_server_add_http2_port(srv->server, opts->listen, creds);
  grpc_server_credentials_release(creds);
  if (port <= 0) {
    grpc_server_destroy(srv->server);
    stop_queue(srv);
    free_server(srv);
    return velo_error_set(err, VELO_UNAVAILABLE,
                          "cannot listen on %s: the address is in use or not available "
                          "here (is another velod running?)",
                          opts->listen);
  }
  srv->address = malloc(host_len + 8);
  if (srv->address) snprintf(srv->address, host_len + 8, "%.*s:%d", (int)host_len, opts->listen, port);

  grpc_server_start(srv->server);
  srv->started = true;
  for (size_t i = 0; i < srv->n_slots; i++) slot_post(&srv->slots[i]);
  *out = srv;
  return VELO_OK;
}

const char *velo_server_address(const velo_server *srv) {
  return srv->address ? srv->address : "?";
}

void velo_server_begin_shutdown(velo_server *srv) {
  if (atomic_exchange(&srv->shutting_down, true)) return;
  velo_srv_health_shutdown(srv); /* NOT_SERVING first, Watch calls told */
  grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
}

bool velo_server_wait_shutdown(velo_server *srv, int timeout_ms) {
  struct timespec until;
  bool done;

  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  /* gRPC's shutdown tag does not wait for the calls we still hold (a
   * Generate call lives until its task's final response), so count ours
   * too: nothing may touch the server once this returns true. */
  pthread_mutex_lock(&srv->mu);
  for (;;) {
    done = srv->shutdown_done && atomic_load(&srv->calls_in_flight) == 0;
    if (done || timeout_ms <= 0) break;
    if (pthread_cond_timedwait(&srv->cv, &srv->mu, &until) == ETIMEDOUT) {
      done = srv->shutdown_done && atomic_load(&srv->calls_in_flight) == 0;
      break;
    }
  }
  pthread_mutex_unlock(&srv->mu);
  return done;
}

void velo_server_cancel_all(velo_server *srv) {
  grpc_server_cancel_all_calls(srv->server);
}

size_t velo_server_calls_in_flight(const velo_server *srv) {
  return atomic_load(&((velo_server *)srv)->calls_in_flight);
}

uint64_t velo_server_cancelled_count(const velo_server *srv) {
  return atomic_load(&((velo_server *)srv)->n_cancelled);
}

void velo_server_destroy(velo_server *srv) {
  if (!srv) return;
  if (srv->started && !velo_server_wait_shutdown(srv, 0)) {
    /* Contract breach: shut down hard rather than destroy in the wrong order. */
    velo_server_begin_shutdown(srv);
    velo_server_cancel_all(srv);
    while (!velo_server_wait_shutdown(srv, 1000)) {
    }
  }
  grpc_server_destroy(srv->server);
  srv->server = NULL;
  stop_queue(srv);
  free_server(srv);
}
