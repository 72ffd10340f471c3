/*
 * call_send.c - the sending side of velod's streaming calls (call_send.h):
 * one batch of each kind in flight per call, a queue of serialized
 * messages behind the send slot, and the status batch that always carries
 * the initial metadata when it has not gone yet.
 */
#include "call_send.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

struct velo_srv_send_msg {
  velo_srv_send_msg *next;
  grpc_byte_buffer *bb;
  size_t bytes; /* grpc_byte_buffer_length(bb) */
};

/* ------------------------------------------------------------------ */
/* Single batches                                                      */
/* ------------------------------------------------------------------ */

grpc_call_error velo_srv_start_send(grpc_call *call, bool *initial_md_sent,
                                    grpc_byte_buffer *message, bool with_status,
                                    grpc_status_code code, const char *details,
                                    velo_srv_tag *tag) {
  grpc_op ops[3];
  size_t n = 0;
  grpc_slice slice = grpc_empty_slice();
  grpc_call_error rc;

  memset(ops, 0, sizeof ops);
  if (!*initial_md_sent) { /* always before, or with, the status: see PITFALLS */
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    *initial_md_sent = true;
  }
  if (message) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = message;
  }
  if (with_status) {
    if (details) slice = grpc_slice_from_copied_string(details);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = details ? &slice : NULL;
  }
  rc = grpc_call_start_batch(call, ops, n, tag, NULL);
  grpc_slice_unref(slice); /* not retained past start_batch */
  return rc;
}

/* Starts the one-operation batch op on call with tag; logs a refusal. */
static bool start_one(grpc_call *call, const grpc_op *op, velo_srv_tag *tag, const char *source,
                      const char *what, const char *doing) {
  grpc_call_error rc = grpc_call_start_batch(call, op, 1, tag, NULL);
  if (rc == GRPC_CALL_OK) return true;
  velo_log(VELO_LOG_ERROR, source, "cannot %s %s: error %d", doing, what, (int)rc);
  return false;
}

bool velo_srv_start_close_watch(grpc_call *call, int *cancelled, velo_srv_tag *tag,
                                const char *source, const char *what) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = cancelled;
  return start_one(call, &op, tag, source, what, "watch for the end of");
}

bool velo_srv_start_recv(grpc_call *call, grpc_byte_buffer **message, velo_srv_tag *tag,
                         const char *source, const char *what) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = message;
  return start_one(call, &op, tag, source, what, "read from");
}

/* ------------------------------------------------------------------ */
/* The queue                                                           */
/* ------------------------------------------------------------------ */

void velo_srv_send_init(velo_srv_send *s, grpc_call *call,
                        void (*on_done)(velo_srv_tag *tag, bool ok),
                        const atomic_bool *cancelled, int *refs, const char *source,
                        const char *what) {
  memset(s, 0, sizeof *s);
  s->tag.on_done = on_done;
  s->call = call;
  s->cancelled = cancelled;
  s->refs = refs;
  s->source = source;
  s->what = what;
}

/* Frees the messages still waiting to be sent. */
static void drop_queue(velo_srv_send *s) {
  while (s->head) {
    velo_srv_send_msg *m = s->head;
    s->head = m->next;
    s->queued_bytes -= m->bytes;
    s->n_queued--;
    grpc_byte_buffer_destroy(m->bb);
    free(m);
  }
  s->tail = NULL;
}

/* Destroys the message of the batch in flight (or refused) and takes it
 * out of the counts. */
static void drop_sending(velo_srv_send *s) {
  if (!s->sending) return;
  grpc_byte_buffer_destroy(s->sending);
  s->sending = NULL;
  s->queued_bytes -= s->sending_bytes;
  s->n_queued--;
  s->sending_bytes = 0;
}

void velo_srv_send_free(velo_srv_send *s) {
  drop_queue(s);
  drop_sending(s);
  free(s->final_message);
  s->final_message = NULL;
}

bool velo_srv_send_over_locked(const velo_srv_send *s) {
  return s->dead || s->status_started || (s->cancelled && atomic_load(s->cancelled));
}

bool velo_srv_send_busy_locked(const velo_srv_send *s) {
  return s->in_flight || velo_srv_send_over_locked(s);
}

bool velo_srv_send_push_locked(velo_srv_send *s, grpc_byte_buffer *bb) {
  velo_srv_send_msg *m;
  if (velo_srv_send_over_locked(s)) {
    grpc_byte_buffer_destroy(bb);
    return false;
  }
  if (!(m = malloc(sizeof *m))) {
    grpc_byte_buffer_destroy(bb);
    velo_log(VELO_LOG_ERROR, s->source, "out of memory queueing a message on %s: dropped",
             s->what);
    return false;
  }
  m->next = NULL;
  m->bb = bb;
  m->bytes = grpc_byte_buffer_length(bb);
  s->queued_bytes += m->bytes;
  s->n_queued++;
  if (s->tail) s->tail->next = m;
  else s->head = m;
  s->tail = m;
  return true;
}

void velo_srv_send_finish_locked(velo_srv_send *s, grpc_status_code code, const char *message) {
  char clean[VELO_SRV_STATUS_MAX];
  if (s->final_seen) return;
  s->final_seen = true;
  s->final_code = code;
  s->final_message = message ? strdup(velo_srv_clean_status(message, clean, sizeof clean)) : NULL;
}

void velo_srv_send_pump_locked(velo_srv_send *s) {
  velo_srv_send_msg *m;
  bool with_status;
  grpc_call_error rc;

  if (s->in_flight || s->status_started) return;
  if (velo_srv_send_over_locked(s)) {
    drop_queue(s);
    return;
  }
  m = s->head;
  with_status = s->final_seen && (!m || !m->next);
  if (!m && !with_status) return;

  if (m) {
    s->head = m->next;
    if (!s->head) s->tail = NULL;
    s->sending = m->bb;
    s->sending_bytes = m->bytes;
    free(m);
  }
  if (with_status) s->status_started = true;
  s->in_flight = true;
  (*s->refs)++;
  rc = velo_srv_start_send(s->call, &s->initial_md_sent, s->sending, with_status, s->final_code,
                           s->final_message, &s->tag);
  if (rc != GRPC_CALL_OK) {
    velo_log(VELO_LOG_ERROR, s->source, "cannot send on %s: error %d", s->what, (int)rc);
    s->in_flight = false;
    (*s->refs)--; /* never the last: the caller holds one */
    drop_sending(s);
    s->dead = true;
    drop_queue(s);
  }
}

void velo_srv_send_completed_locked(velo_srv_send *s, bool ok) {
  s->in_flight = false;
  if (s->sending) {
    drop_sending(s);
    if (ok) s->n_sent++;
  }
  if (!ok) s->dead = true;
}
