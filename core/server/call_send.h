/*
 * call_send.h - the sending side of a streaming call in velod's front end,
 * written once for Generate, ModelInfer/ModelStreamInfer, health Watch and
 * reflection: gRPC core allows one operation of each kind in flight per
 * call (shared/PITFALLS.md), so responses are queued and sent one batch at
 * a time, the next starting from the completion of the last, and the call
 * ends with a status batch that carries SEND_INITIAL_METADATA when it was
 * not sent yet (a status without it never completes).
 *
 * Two levels:
 *   velo_srv_start_send / _start_close_watch / _start_recv  start one batch
 *        of the given shape; for calls that keep their own turn-taking
 *        (reflection alternates one read and one send).
 *   velo_srv_send  a per-call queue of serialized messages plus the status
 *        to end with.  It has no lock of its own: it lives inside its
 *        owner's call object and is guarded by the owner's mutex (every
 *        function ending in _locked is called with that mutex held, from
 *        any thread).  It counts one reference in the owner's count (*refs,
 *        guarded by the same mutex) for each batch it has in flight; the
 *        owner's on_done drops it after velo_srv_send_completed_locked.
 *
 * Usage, with the owner's mutex mu held where it says _locked:
 *
 *   velo_srv_send_init(&c->send, call, send_done, &c->cancelled, &c->refs, "generate",
 *                      "a Generate call");
 *   velo_srv_send_push_locked(&c->send, bb);          // a response
 *   velo_srv_send_finish_locked(&c->send, code, msg);  // how it ends
 *   velo_srv_send_pump_locked(&c->send);               // start what can start
 *   send_done: lock; velo_srv_send_completed_locked(&c->send, ok);
 *              velo_srv_send_pump_locked(&c->send); last = --c->refs == 0; unlock
 *   last reference: velo_srv_send_free(&c->send); grpc_call_unref(call); ...
 */
#ifndef VELO_SERVER_CALL_SEND_H
#define VELO_SERVER_CALL_SEND_H

#include <grpc/grpc.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "server_internal.h"

/* Starts one batch on call: SEND_INITIAL_METADATA when *initial_md_sent is
 * false (it is then set, whatever the outcome: a refused batch uses up the
 * slot too), SEND_MESSAGE message when not NULL (borrowed: the caller keeps
 * it alive until tag completes, then destroys it), and, when with_status,
 * SEND_STATUS_FROM_SERVER code with details (NULL: no message; otherwise
 * copied, so the caller's string need only live for this call; pass text
 * already cleaned with velo_srv_clean_status).  tag completes when the
 * batch does.  Returns what grpc_call_start_batch returned; on an error
 * tag never completes.  Thread-safe as gRPC is; *initial_md_sent is the
 * caller's to guard. */
grpc_call_error velo_srv_start_send(grpc_call *call, bool *initial_md_sent,
                                    grpc_byte_buffer *message, bool with_status,
                                    grpc_status_code code, const char *details,
                                    velo_srv_tag *tag);

/* Starts RECV_CLOSE_ON_SERVER alone on call: tag completes when the call
 * ends, however it ends, with *cancelled = 1 for a client cancel, a
 * deadline, a disconnect or grpc_server_cancel_all_calls.  Start it as
 * soon as a streaming call arrives.  false when gRPC refused the batch
 * (logged with source and what, e.g. "a Generate call"); tag never
 * completes then. */
bool velo_srv_start_close_watch(grpc_call *call, int *cancelled, velo_srv_tag *tag,
                                const char *source, const char *what);

/* Starts RECV_MESSAGE alone on call: tag completes with *message the next
 * request (the caller owns it), or NULL when the client has half-closed.
 * false when gRPC refused the batch (logged as above); tag never
 * completes then. */
bool velo_srv_start_recv(grpc_call *call, grpc_byte_buffer **message, velo_srv_tag *tag,
                         const char *source, const char *what);

/* One message waiting for the send slot (call_send.c). */
typedef struct velo_srv_send_msg velo_srv_send_msg;

/* The queue of one call.  The owner may read the flags under its mutex;
 * only the functions below change them (and the owner may set dead). */
typedef struct velo_srv_send {
  velo_srv_tag tag;               /* the batch in flight; on_done is the owner's */
  grpc_call *call;                /* borrowed from the owner */
  const atomic_bool *cancelled;   /* the owner's "call ended early"; NULL: none */
  int *refs;                      /* the owner's reference count */
  const char *source, *what;      /* for logs: "generate", "a Generate call" */
  velo_srv_send_msg *head, *tail; /* messages waiting for the send slot */
  grpc_byte_buffer *sending;      /* message of the batch in flight */
  bool in_flight;                 /* a batch is in flight */
  bool initial_md_sent;
  bool final_seen;                /* the status to end with is known */
  bool status_started;            /* the status batch has been started */
  bool dead;                      /* a batch failed: the client has gone */
  grpc_status_code final_code;
  char *final_message;            /* cleaned; NULL: none */
  uint64_t n_sent;                /* messages whose batch completed ok */
  size_t sending_bytes;           /* grpc_byte_buffer_length(sending) */
  size_t n_queued;                /* messages not yet sent: queued + in flight */
  size_t queued_bytes;            /* their bytes (grpc_byte_buffer_length) */
} velo_srv_send;

/* Initialises s (all of it) for call; on_done is called when each batch
 * completes.  cancelled (may be NULL) stops all sending once true; refs
 * is the owner's count, guarded by the owner's mutex.  source and what
 * must be static strings.  Cannot fail. */
void velo_srv_send_init(velo_srv_send *s, grpc_call *call,
                        void (*on_done)(velo_srv_tag *tag, bool ok),
                        const atomic_bool *cancelled, int *refs, const char *source,
                        const char *what);

/* Frees the queued messages, the message in flight and the final message;
 * call when the owner's last reference is gone (nothing is in flight).
 * The call is the owner's to unref. */
void velo_srv_send_free(velo_srv_send *s);

/* True once nothing more will be sent: a batch failed, the status batch
 * has started, or the call was cancelled. */
bool velo_srv_send_over_locked(const velo_srv_send *s);

/* True while a batch is in flight or nothing more will be sent: the moment
 * to start one has not come. */
bool velo_srv_send_busy_locked(const velo_srv_send *s);

/* Queues bb (ownership passes here) behind the messages already queued.
 * Returns false, with bb destroyed, when the call is over (see
 * velo_srv_send_over_locked) or when out of memory (logged).  Does not
 * start sending: call velo_srv_send_pump_locked. */
bool velo_srv_send_push_locked(velo_srv_send *s, grpc_byte_buffer *bb);

/* Decides how the call ends, after what is queued: code with message (may
 * be NULL; cleaned with velo_srv_clean_status), unless an end was already
 * decided (the first decision stands).  When out of memory copying the
 * message, the status goes without one.  Does not start sending. */
void velo_srv_send_finish_locked(velo_srv_send *s, grpc_status_code code, const char *message);

/* Starts the next batch if none is in flight: the next queued message,
 * with the status when the end is decided and it is the last message (or
 * the status alone when nothing is queued); initial metadata with the
 * first batch.  Takes one reference (*refs) for the batch.  Once the call
 * is over, drops what is queued.  A refused batch is logged, marks the
 * call dead and drops the queue (the caller's own reference keeps *refs
 * above 0). */
void velo_srv_send_pump_locked(velo_srv_send *s);

/* Messages queued or in flight on s and their bytes: what the owner
 * checks to hold back reading while its client does not read (flow
 * control).  Caller holds the owner's mutex. */
static inline bool velo_srv_send_backlog_over_locked(const velo_srv_send *s, size_t max_messages,
                                                     size_t max_bytes) {
  return s->n_queued > max_messages || s->queued_bytes > max_bytes;
}

/* The batch in flight completed (ok false: the call is gone): frees its
 * message and counts it in n_sent.  The caller then pumps and drops the
 * batch's reference. */
void velo_srv_send_completed_locked(velo_srv_send *s, bool ok);

#endif
