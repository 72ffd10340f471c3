/*
 * reflection.c - gRPC server reflection for velod: the bidirectional
 * ServerReflectionInfo stream of grpc.reflection.v1alpha.ServerReflection
 * and grpc.reflection.v1.ServerReflection (grpc/reflection/v1/reflection.proto;
 * the two versions are the same messages on the wire, so both are served
 * with the v1 protobuf-c code).  With it, standard tools (grpcurl, Postman,
 * grpc_cli, a Python client that builds its classes from the answers) can
 * list velod's services and call any of them without a copy of the protos.
 *
 * Answers come from velo_reflection_data.{c,h}, generated at build time by
 * proto/gen_reflection_index.py from a protoc --include_imports descriptor
 * set: the serialized FileDescriptorProtos, each file's dependency closure,
 * and sorted symbol and extension tables.  Nothing is parsed here.
 *
 *   list_services                  every service velod serves (srv->services)
 *   file_by_filename               the file, then its transitive dependencies
 *   file_containing_symbol         the same, for the file declaring a service,
 *                                  method, message (nested too), enum, enum
 *                                  value, field, oneof or extension
 *   file_containing_extension      the same, for an extension (extendee, number)
 *   all_extension_numbers_of_type  the extension numbers of a message type
 * A name that is not known gets an error_response NOT_FOUND (the stream
 * goes on); a request that sets none of these gets UNIMPLEMENTED.  Every
 * file is sent again in every answer (the protocol allows leaving out
 * files already sent on the stream; sending them keeps each answer
 * complete on its own).
 *
 * A stream alternates: one RECV_MESSAGE, then one SEND_MESSAGE with the
 * answer, then the next RECV_MESSAGE, so at most one operation of each
 * kind is in flight (shared/PITFALLS.md; the batches are started with
 * call_send.h).  The client half-closing ends it
 * with OK.  An undecodable request or one over --max-receive-message-bytes
 * ends it with that error.  RECV_CLOSE_ON_SERVER, started first, sees
 * cancellation.
 */
#include <grpc/byte_buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call_send.h"
#include "grpc_reflection/v1/reflection.pb-c.h"
#include "log.h"
#include "server_internal.h"
#include "velo_reflection_data.h"

#define LOG_SOURCE "reflection"

typedef Grpc__Reflection__V1__ServerReflectionRequest refl_request;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_response;

/* The generated oneof case names, shortened. */
#define REQ_(name) GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##name
#define RESP_(name) GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##name

/* One ServerReflectionInfo stream. */
typedef struct refl_call {
  velo_srv_tag recv_tag;  /* RECV_MESSAGE */
  velo_srv_tag send_tag;  /* SEND_MESSAGE, or the final status */
  velo_srv_tag close_tag; /* RECV_CLOSE_ON_SERVER */
  velo_server *srv;
  grpc_call *call;
  const char *service;     /* "grpc.reflection.v1alpha.ServerReflection" or v1, for logs */
  const char *what;        /* "a <service> stream", for logs */
  grpc_byte_buffer *received; /* RECV_MESSAGE's result; NULL: the client is done */
  grpc_byte_buffer *sending;  /* the answer in flight */
  atomic_int refs;         /* close op, the recv or send in flight, the handler */
  bool initial_md_sent;    /* touched only by the one op in flight */
  int close_cancelled;
  uint64_t n_answers;
} refl_call;

/* ------------------------------------------------------------------ */
/* Look-ups in the generated tables                                    */
/* ------------------------------------------------------------------ */

/* Orders a symbol by name, for bsearch. */
static int symbol_cmp(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const velo_refl_symbol *)elem)->name);
}

/* The symbol called name (fully qualified; one leading '.' is allowed, as
 * in a field's type_name), or NULL. */
static const velo_refl_symbol *find_symbol(const char *name) {
  if (name[0] == '.') name++;
  if (velo_refl_n_symbols == 0) return NULL;
  return bsearch(name, velo_refl_symbols, velo_refl_n_symbols, sizeof velo_refl_symbols[0],
                 symbol_cmp);
}

/* The index of the file called name, or -1. */
static int find_file(const char *name) {
  for (size_t i = 0; i < velo_refl_n_files; i++)
    if (strcmp(velo_refl_files[i].name, name) == 0) return (int)i;
  return -1;
}

/* ------------------------------------------------------------------ */
/* Answers                                                             */
/* ------------------------------------------------------------------ */

/* Everything an answer points to that is not constant data or the
 * request: freed by answer_free after packing. */
typedef struct answer {
  refl_response resp;
  Grpc__Reflection__V1__FileDescriptorResponse files;
  Grpc__Reflection__V1__ExtensionNumberResponse numbers;
  Grpc__Reflection__V1__ListServiceResponse services;
  Grpc__Reflection__V1__ErrorResponse error;
  ProtobufCBinaryData *blobs;
  Grpc__Reflection__V1__ServiceResponse *service_items;
  Grpc__Reflection__V1__ServiceResponse **service_ptrs;
  int32_t *ext_numbers;
  char message[VELO_SERVER_QUOTE_SIZE + 128];
} answer;

/* Frees what build_answer allocated (a itself is the caller's); safe on an
 * answer that build_answer left half built. */
static void answer_free(answer *a) {
  free(a->blobs);
  free(a->service_items);
  free(a->service_ptrs);
  free(a->ext_numbers);
}

/* Makes a->resp an error_response with code and a->message. */
static void answer_error(answer *a, grpc_status_code code) {
  grpc__reflection__v1__error_response__init(&a->error);
  a->error.error_code = (int32_t)code;
  a->error.error_message = a->message;
  a->resp.message_response_case = RESP_(ERROR_RESPONSE);
  a->resp.error_response = &a->error;
}

/* Makes a->resp a file_descriptor_response with file index and its
 * dependencies.  false when out of memory. */
static bool answer_file(answer *a, int index) {
  const velo_refl_file *f = &velo_refl_files[index];
  a->blobs = calloc(f->n_closure, sizeof *a->blobs);
  if (!a->blobs) return false;
  for (size_t i = 0; i < f->n_closure; i++) {
    const velo_refl_file *dep = &velo_refl_files[f->closure[i]];
    a->blobs[i].len = dep->size;
    a->blobs[i].data = (uint8_t *)dep->data; /* only read by pack */
  }
  grpc__reflection__v1__file_descriptor_response__init(&a->files);
  a->files.n_file_descriptor_proto = f->n_closure;
  a->files.file_descriptor_proto = a->blobs;
  a->resp.message_response_case = RESP_(FILE_DESCRIPTOR_RESPONSE);
  a->resp.file_descriptor_response = &a->files;
  return true;
}

/* Makes a->resp the list of the services velod serves. */
static bool answer_services(answer *a, velo_server *srv) {
  size_t n = srv->n_services;
  a->service_items = calloc(n ? n : 1, sizeof *a->service_items);
  a->service_ptrs = calloc(n ? n : 1, sizeof *a->service_ptrs);
  if (!a->service_items || !a->service_ptrs) return false;
  for (size_t i = 0; i < n; i++) {
    grpc__reflection__v1__service_response__init(&a->service_items[i]);
    a->service_items[i].name = srv->services[i];
    a->service_ptrs[i] = &a->service_items[i];
  }
  grpc__reflection__v1__list_service_response__init(&a->services);
  a->services.n_service = n;
  a->services.service = a->service_ptrs;
  a->resp.message_response_case = RESP_(LIST_SERVICES_RESPONSE);
  a->resp.list_services_response = &a->services;
  return true;
}

/* Makes a->resp the extension numbers of message type name (possibly
 * none), or NOT_FOUND when name is not a message type. */
static bool answer_extension_numbers(answer *a, const char *name) {
  const velo_refl_symbol *s = find_symbol(name);
  char quoted[VELO_SERVER_QUOTE_SIZE];
  size_t n = 0;

  if (!s || s->kind != VELO_REFL_MESSAGE) {
    snprintf(a->message, sizeof a->message,
             "all_extension_numbers_of_type: '%s' is not a message type velod knows",
             velo_server_quote(name, strlen(name), quoted, sizeof quoted));
    answer_error(a, GRPC_STATUS_NOT_FOUND);
    return true;
  }
  a->ext_numbers = calloc(velo_refl_n_extensions ? velo_refl_n_extensions : 1,
                          sizeof *a->ext_numbers);
  if (!a->ext_numbers) return false;
  for (size_t i = 0; i < velo_refl_n_extensions; i++)
    if (strcmp(velo_refl_extensions[i].extendee, s->name) == 0)
      a->ext_numbers[n++] = velo_refl_extensions[i].number;
  grpc__reflection__v1__extension_number_response__init(&a->numbers);
  a->numbers.base_type_name = (char *)s->name; /* only read by pack */
  a->numbers.n_extension_number = n;
  a->numbers.extension_number = a->ext_numbers;
  a->resp.message_response_case = RESP_(ALL_EXTENSION_NUMBERS_RESPONSE);
  a->resp.all_extension_numbers_response = &a->numbers;
  return true;
}

/* Makes a->resp the file that declares extension number of extendee, or
 * NOT_FOUND naming what is unknown. */
static bool answer_extension(answer *a, const Grpc__Reflection__V1__ExtensionRequest *ext) {
  const char *type = ext ? ext->containing_type : "";
  const velo_refl_symbol *s = find_symbol(type);
  char quoted[VELO_SERVER_QUOTE_SIZE];

  if (!s || s->kind != VELO_REFL_MESSAGE) {
    snprintf(a->message, sizeof a->message,
             "file_containing_extension: containing_type '%s' is not a message type velod knows",
             velo_server_quote(type, strlen(type), quoted, sizeof quoted));
    answer_error(a, GRPC_STATUS_NOT_FOUND);
    return true;
  }
  for (size_t i = 0; i < velo_refl_n_extensions; i++)
    if (strcmp(velo_refl_extensions[i].extendee, s->name) == 0 &&
        velo_refl_extensions[i].number == ext->extension_number)
      return answer_file(a, velo_refl_extensions[i].file);
  snprintf(a->message, sizeof a->message,
           "file_containing_extension: %s has no extension number %d", s->name,
           (int)ext->extension_number);
  answer_error(a, GRPC_STATUS_NOT_FOUND);
  return true;
}

/* Fills a with the answer to req.  false when out of memory. */
static bool build_answer(answer *a, velo_server *srv, refl_request *req) {
  char quoted[VELO_SERVER_QUOTE_SIZE];
  const char *name;
  int file;

  memset(a, 0, sizeof *a);
  grpc__reflection__v1__server_reflection_response__init(&a->resp);
  a->resp.valid_host = req->host;
  a->resp.original_request = req;
  switch (req->message_request_case) {
    case REQ_(LIST_SERVICES):
      return answer_services(a, srv);
    case REQ_(FILE_BY_FILENAME):
      name = req->file_by_filename;
      if ((file = find_file(name)) >= 0) return answer_file(a, file);
      snprintf(a->message, sizeof a->message,
               "file_by_filename: no file '%s' (velod serves %zu files, e.g. %s)",
               velo_server_quote(name, strlen(name), quoted, sizeof quoted), velo_refl_n_files,
               velo_refl_n_files ? velo_refl_files[0].name : "none");
      answer_error(a, GRPC_STATUS_NOT_FOUND);
      return true;
    case REQ_(FILE_CONTAINING_SYMBOL): {
      const velo_refl_symbol *s = find_symbol(req->file_containing_symbol);
      if (s) return answer_file(a, s->file);
      name = req->file_containing_symbol;
      snprintf(a->message, sizeof a->message,
               "file_containing_symbol: no symbol '%s' (expected a fully-qualified name such "
               "as velo.v1.TextGeneration)",
               velo_server_quote(name, strlen(name), quoted, sizeof quoted));
      answer_error(a, GRPC_STATUS_NOT_FOUND);
      return true;
    }
    case REQ_(FILE_CONTAINING_EXTENSION):
      return answer_extension(a, req->file_containing_extension);
    case REQ_(ALL_EXTENSION_NUMBERS_OF_TYPE):
      return answer_extension_numbers(a, req->all_extension_numbers_of_type);
    default:
      snprintf(a->message, sizeof a->message,
               "the request sets none of the requests velod knows (file_by_filename, "
               "file_containing_symbol, file_containing_extension, "
               "all_extension_numbers_of_type, list_services)");
      answer_error(a, GRPC_STATUS_UNIMPLEMENTED);
      return true;
  }
}

/* ------------------------------------------------------------------ */
/* The stream                                                          */
/* ------------------------------------------------------------------ */

/* Drops one reference; the last one frees the call and ends its count. */
static void refl_unref(refl_call *rc) {
  velo_server *srv;
  if (atomic_fetch_sub(&rc->refs, 1) != 1) return;
  srv = rc->srv;
  if (rc->received) grpc_byte_buffer_destroy(rc->received);
  if (rc->sending) grpc_byte_buffer_destroy(rc->sending);
  grpc_call_unref(rc->call);
  free(rc);
  velo_srv_call_ended(srv);
}

/* Starts one batch on the stream: initial metadata when not yet sent, the
 * message bb (may be NULL; ownership passes to rc) and, when end, the
 * status code with message.  Its completion (tag) holds a reference.  A
 * refused batch is logged and the reference dropped. */
static void refl_send(refl_call *rc, grpc_byte_buffer *bb, bool end, grpc_status_code code,
                      const char *message) {
  char clean[VELO_SRV_STATUS_MAX];
  grpc_call_error err;

  if (bb) rc->sending = bb;
  atomic_fetch_add(&rc->refs, 1);
  err = velo_srv_start_send(rc->call, &rc->initial_md_sent, bb, end, code,
                            message ? velo_srv_clean_status(message, clean, sizeof clean) : NULL,
                            &rc->send_tag);
  if (err != GRPC_CALL_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot send on %s: error %d", rc->what, (int)err);
    refl_unref(rc);
  }
}

/* Asks for the next request message. */
static void refl_recv(refl_call *rc) {
  atomic_fetch_add(&rc->refs, 1);
  if (!velo_srv_start_recv(rc->call, &rc->received, &rc->recv_tag, LOG_SOURCE, rc->what))
    refl_unref(rc);
}

/* Answers one request message (bb, owned here): sends the answer, or ends
 * the stream with the error that stops it. */
static void refl_answer(refl_call *rc, grpc_byte_buffer *bb) {
  refl_request *req = NULL;
  answer a;
  char why[512];
  grpc_status_code code;
  grpc_byte_buffer *out = NULL;
  velo_error err;

  code = velo_srv_check_receive_size(rc->srv, grpc_byte_buffer_length(bb), why, sizeof why);
  if (code == GRPC_STATUS_OK)
    code = velo_srv_decode(bb, &grpc__reflection__v1__server_reflection_request__descriptor,
                           (ProtobufCMessage **)&req, why, sizeof why);
  grpc_byte_buffer_destroy(bb);
  if (code != GRPC_STATUS_OK) {
    refl_send(rc, NULL, true, code, why);
    return;
  }
  if (build_answer(&a, rc->srv, req)) out = velo_srv_pack(&a.resp.base);
  answer_free(&a);
  protobuf_c_message_free_unpacked(&req->base, NULL);
  if (!out) {
    refl_send(rc, NULL, true, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  velo_error_init(&err);
  if (velo_srv_check_send_size(rc->srv, grpc_byte_buffer_length(out), &err) != VELO_OK) {
    grpc_byte_buffer_destroy(out);
    refl_send(rc, NULL, true, velo_srv_status(err.code), err.message);
    return;
  }
  rc->n_answers++;
  refl_send(rc, out, false, GRPC_STATUS_OK, NULL);
}

/* A request message arrived (received != NULL), the client half-closed
 * (received == NULL: end with OK), or the call is gone (!ok). */
static void refl_recv_done(velo_srv_tag *tag, bool ok) {
  refl_call *rc = VELO_SRV_CONTAINER_OF(tag, refl_call, recv_tag);
  grpc_byte_buffer *bb = rc->received;

  rc->received = NULL;
  if (!ok) {
    if (bb) grpc_byte_buffer_destroy(bb);
  } else if (!bb) {
    refl_send(rc, NULL, true, GRPC_STATUS_OK, NULL);
  } else {
    refl_answer(rc, bb);
  }
  refl_unref(rc);
}

/* A send completed: read the next request, unless the status went too or
 * the call is gone. */
static void refl_send_done(velo_srv_tag *tag, bool ok) {
  refl_call *rc = VELO_SRV_CONTAINER_OF(tag, refl_call, send_tag);
  bool more = ok && rc->sending != NULL; /* an answer, not the final status */

  if (rc->sending) grpc_byte_buffer_destroy(rc->sending);
  rc->sending = NULL;
  if (more) refl_recv(rc);
  refl_unref(rc);
}

/* The call ended, however it ended. */
static void refl_close_done(velo_srv_tag *tag, bool ok) {
  refl_call *rc = VELO_SRV_CONTAINER_OF(tag, refl_call, close_tag);
  (void)ok;
  velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "%s stream ended%s after %llu answer(s)", rc->service,
           rc->close_cancelled ? " (cancelled)" : "", (unsigned long long)rc->n_answers);
  refl_unref(rc);
}

void velo_srv_handle_reflection(velo_server *srv, velo_srv_method method, grpc_call *call) {
  refl_call *rc = calloc(1, sizeof *rc);
  bool v1alpha = method == VELO_SRV_REFLECTION_V1ALPHA;

  if (!rc) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "out of memory for a reflection stream");
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  rc->recv_tag.on_done = refl_recv_done;
  rc->send_tag.on_done = refl_send_done;
  rc->close_tag.on_done = refl_close_done;
  rc->srv = srv;
  rc->call = call;
  rc->service = v1alpha ? "grpc.reflection.v1alpha.ServerReflection"
                        : "grpc.reflection.v1.ServerReflection";
  rc->what = v1alpha ? "a grpc.reflection.v1alpha.ServerReflection stream"
                     : "a grpc.reflection.v1.ServerReflection stream";
  atomic_init(&rc->refs, 2); /* this handler, and the close-on-server started next */

  if (!velo_srv_start_close_watch(call, &rc->close_cancelled, &rc->close_tag, LOG_SOURCE,
                                  rc->what)) {
    grpc_call_cancel_with_status(call, GRPC_STATUS_INTERNAL, "cannot start the call", NULL);
    atomic_fetch_sub(&rc->refs, 1);
  } else {
    refl_recv(rc);
  }
  refl_unref(rc);
}
