/*
 * server_internal.h - what the parts of velod's gRPC front end share:
 * completion-queue tags, the server struct, message (de)serialisation and
 * the one-batch way of finishing a unary call, the message size limits.
 * Not installed; only the front end's own sources in core/server
 * include it.
 *
 * Every event on the server's completion queue carries a velo_srv_tag
 * embedded in the object it belongs to; the queue threads call its
 * on_done with the event's success bit.  on_done runs on a queue thread
 * and must not block.
 */
#ifndef VELO_SERVER_INTERNAL_H
#define VELO_SERVER_INTERNAL_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry.h"
#include "oip.h"
#include "repository.h"
#include "server.h"

typedef struct velo_srv_tag {
  void (*on_done)(struct velo_srv_tag *tag, bool ok);
} velo_srv_tag;

/* The object that embeds member at ptr: how an on_done finds its call
 * object from the tag (e.g. VELO_SRV_CONTAINER_OF(tag, velo_call,
 * send.tag)). */
#define VELO_SRV_CONTAINER_OF(ptr, type, member) \
  ((type *)((char *)(ptr)-offsetof(type, member)))

/* The registered methods. */
typedef enum velo_srv_method {
  VELO_SRV_GENERATE = 0,
  VELO_SRV_TOKENIZE,
  VELO_SRV_LIST_MODELS,
  VELO_SRV_LOAD_MODEL,
  VELO_SRV_UNLOAD_MODEL,
  VELO_SRV_HEALTH_CHECK,
  VELO_SRV_HEALTH_WATCH,
  VELO_SRV_REFLECTION_V1ALPHA,
  VELO_SRV_REFLECTION_V1,
  /* inference.GRPCInferenceService (oip.h), in velo_oip_method order */
  VELO_SRV_OIP_FIRST,
  VELO_SRV_OIP_LAST = VELO_SRV_OIP_FIRST + VELO_OIP_METHOD_COUNT - 1,
  VELO_SRV_METHOD_COUNT
} velo_srv_method;

/* One outstanding "give me the next call" request.  method is a
 * velo_srv_method, or -1 for the catch-all (unregistered methods). */
typedef struct velo_srv_slot {
  velo_srv_tag tag;
  struct velo_server *srv;
  int method;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array metadata;
  grpc_byte_buffer *payload;   /* registered methods */
  grpc_call_details details;   /* catch-all */
} velo_srv_slot;

#define VELO_SRV_SLOTS_PER_METHOD 4
#define VELO_SRV_SLOTS_CATCH_ALL 2
#define VELO_SRV_MAX_THREADS 4

struct velo_server {
  grpc_server *server;
  grpc_completion_queue *cq;
  velo_registry *registry;
  velo_repository *repository; /* model control; may be NULL (none) */
  void *method_handle[VELO_SRV_METHOD_COUNT];
  velo_srv_slot slots[VELO_SRV_METHOD_COUNT * VELO_SRV_SLOTS_PER_METHOD +
                      VELO_SRV_SLOTS_CATCH_ALL];
  size_t n_slots;
  pthread_t threads[VELO_SRV_MAX_THREADS];
  int n_threads;
  char *address;               /* bound address, for logs */

  velo_srv_tag shutdown_tag;
  pthread_mutex_t mu;          /* guards shutdown_done; calls_in_flight reaching 0 */
  pthread_cond_t cv;
  bool shutdown_done;
  bool started;
  atomic_bool shutting_down;

  atomic_size_t calls_in_flight;
  atomic_uint_fast64_t n_cancelled;

  /* Message size limits (--max-receive/send-message-bytes), in bytes. */
  size_t max_receive_bytes;
  size_t max_send_bytes;
  /* The services velod serves ("pkg.Service"), derived from the
   * registered method paths, in registration order; owned. */
  char **services;
  size_t n_services;
  struct velo_srv_health *health; /* health.c; NULL until created */
};

/* The gRPC status for a velo_status (the same numbers; anything outside the
 * gRPC range becomes UNKNOWN). */
static inline grpc_status_code velo_srv_status(velo_status s) {
  return ((int)s >= 0 && (int)s <= (int)VELO_UNAUTHENTICATED) ? (grpc_status_code)s
                                                              : GRPC_STATUS_UNKNOWN;
}

/* --- server.c --------------------------------------------------------- */

/* The one place where request messages are decoded: every method's payload
 * goes through here.  On GRPC_STATUS_OK, *out is the unpacked message (free
 * it with protobuf_c_message_free_unpacked(*out, NULL)).  Otherwise *out is
 * NULL and why gets a message for the client (why_size >= 1):
 *   INVALID_ARGUMENT  bb is NULL (no request message), the bytes are not a
 *                     valid desc, or re-packing the unpacked message does
 *                     not give back as many bytes as were received: a
 *                     string field held a NUL byte (protobuf-c hands out
 *                     NUL-terminated strings, so it would silently be cut
 *                     there) or the encoding is not canonical (a field
 *                     repeated, a default value sent explicitly, a padded
 *                     varint).  Unknown fields are kept by protobuf-c and
 *                     counted, so a newer client's extra fields pass.
 *   UNIMPLEMENTED     bb is still compressed (never expected: the server
 *                     enables only the identity algorithm).
 * bb is borrowed. */
grpc_status_code velo_srv_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
                                 ProtobufCMessage **out, char *why, size_t why_size);

/* The most bytes of a status message (longer ones are cut, see
 * velo_srv_clean_status). */
#define VELO_SRV_STATUS_MAX 2048

/* Copies a status message into out (cap >= 1) so that nothing raw reaches
 * a client: control characters and bytes that are not valid UTF-8 become
 * \xNN escapes, as in velo_server_quote, but backslashes and the length are
 * kept (up to cap); text already rendered by velo_server_quote comes out
 * unchanged.  msg NULL gives "".  Returns out. */
char *velo_srv_clean_status(const char *msg, char *out, size_t cap);

/* Looks up the model a request names, the same way for every method.
 * GRPC_STATUS_OK with *entry acquired (release it with
 * velo_model_entry_release); otherwise *entry is NULL and msg gets
 * INVALID_ARGUMENT "model must be set; loaded models: ..." for an empty
 * name, or NOT_FOUND "model '<name>' is not loaded; loaded models: ..."
 * with the name rendered by velo_server_quote. */
grpc_status_code velo_srv_acquire_model(struct velo_server *srv, const char *name,
                                        velo_model_entry **entry, char *msg, size_t msg_size);

/* For unary handlers: velo_srv_decode of payload (borrowed) as desc, or,
 * when it fails, the call finished with its status and message (taking
 * over call and its in-flight count, as velo_srv_finish_unary does) and
 * NULL.  Free a message returned with protobuf_c_message_free_unpacked. */
ProtobufCMessage *velo_srv_decode_or_finish(struct velo_server *srv, grpc_call *call,
                                            grpc_byte_buffer *payload,
                                            const ProtobufCMessageDescriptor *desc);

/* For unary handlers: velo_srv_acquire_model of name, or, when it fails,
 * the call finished with its status and message (as above) and NULL.
 * Release an entry returned with velo_model_entry_release. */
velo_model_entry *velo_srv_acquire_or_finish(struct velo_server *srv, grpc_call *call,
                                             const char *name);

/* Packs msg into a new byte buffer (the caller owns it: pass it to a
 * SEND_MESSAGE op, then grpc_byte_buffer_destroy it), or NULL when out of
 * memory. */
grpc_byte_buffer *velo_srv_pack(const ProtobufCMessage *msg);

/* Ends a unary call in one batch: initial metadata, the response message
 * (when response is not NULL; ownership passes here), the status with
 * message (may be NULL; cleaned with velo_srv_clean_status), and
 * close-on-server.  Takes over the caller's
 * reference to call and the call's in-flight count; everything is freed
 * when the batch completes.  Never fails (a refused batch is logged and the
 * call dropped, which the client sees as a cancelled call). */
void velo_srv_finish_unary(struct velo_server *srv, grpc_call *call,
                           grpc_byte_buffer *response, grpc_status_code code,
                           const char *message);

/* Formats "a, b, c" (or "none") into buf: the names of the loaded models. */
void velo_srv_model_names(struct velo_server *srv, char *buf, size_t size);

/* The receive limit, for messages read with RECV_MESSAGE (streaming
 * requests): GRPC_STATUS_OK when bytes <= srv->max_receive_bytes, else
 * RESOURCE_EXHAUSTED with why = "request message is N bytes, over
 * --max-receive-message-bytes M".  Requests read up front by the slots are
 * checked in server.c before any handler sees them.  Thread-safe. */
grpc_status_code velo_srv_check_receive_size(struct velo_server *srv, size_t bytes, char *why,
                                             size_t why_size);

/* The send limit: every response message goes through here before it is
 * sent.  VELO_OK when bytes <= srv->max_send_bytes, else
 * VELO_RESOURCE_EXHAUSTED with err naming the size and the option
 * ("response message is N bytes, over --max-send-message-bytes M"); the
 * caller then ends the call with that status instead of sending.
 * velo_srv_finish_unary applies it itself.  Thread-safe. */
velo_status velo_srv_check_send_size(struct velo_server *srv, size_t bytes, velo_error *err);

/* Signals one call fewer in flight.  The last thing a finished call does
 * with the server: after it, the server may be destroyed. */
void velo_srv_call_ended(struct velo_server *srv);

/* --- generate.c ------------------------------------------------------- */

/* Serves one TextGeneration/Generate call.  Takes over call (one
 * reference), payload (destroyed here) and the in-flight count. */
void velo_srv_handle_generate(struct velo_server *srv, grpc_call *call,
                              gpr_timespec deadline, grpc_byte_buffer *payload);

/* --- services.c ------------------------------------------------------- */

/* Serve one unary call of the given method (TOKENIZE, LIST_MODELS), with
 * the same ownership as velo_srv_handle_generate. */
void velo_srv_handle_unary(struct velo_server *srv, velo_srv_method method,
                           grpc_call *call, grpc_byte_buffer *payload);

/* Loads (load) or unloads model name through srv->repository (not NULL)
 * on a detached thread of its own, then finishes call: OK with an empty
 * message of type response (the method's response message, which has no
 * fields), or the repository's status and message.  method names the RPC
 * in the log line that reports the outcome ("LoadModel").  Takes over call
 * and its in-flight count; name is copied; response and method must be
 * static.  Out of memory, or no thread: the call is finished at once with
 * RESOURCE_EXHAUSTED.  A load can take as long as reading the model, which
 * must not hold up a queue thread; the call counts as in flight until it is
 * finished, so a shutdown waits for it. */
void velo_srv_model_control(struct velo_server *srv, grpc_call *call, const char *name, bool load,
                            const ProtobufCMessageDescriptor *response, const char *method);

/* --- health.c --------------------------------------------------------- */

/* Creates srv->health: every service in srv->services and "" (the whole
 * server) SERVING.  VELO_RESOURCE_EXHAUSTED when out of memory. */
velo_status velo_srv_health_create(struct velo_server *srv, velo_error *err);

/* Marks every service NOT_SERVING, tells each Watch call so, then ends it
 * with UNAVAILABLE "server is shutting down".  Called by
 * velo_server_begin_shutdown before gRPC stops accepting calls. */
void velo_srv_health_shutdown(struct velo_server *srv);

/* Frees srv->health (no Watch call may be left).  NULL-safe. */
void velo_srv_health_destroy(struct velo_server *srv);

/* Serves one Health/Check or Health/Watch call (method HEALTH_CHECK or
 * HEALTH_WATCH), with the same ownership as velo_srv_handle_generate. */
void velo_srv_handle_health(struct velo_server *srv, velo_srv_method method, grpc_call *call,
                            grpc_byte_buffer *payload);

/* --- reflection.c ----------------------------------------------------- */

/* Serves one ServerReflectionInfo stream (method REFLECTION_V1ALPHA or
 * REFLECTION_V1; the two are the same on the wire).  Takes over call (one
 * reference) and the in-flight count. */
void velo_srv_handle_reflection(struct velo_server *srv, velo_srv_method method,
                                grpc_call *call);

#endif
