/*
 * client.c - the velo CLI's gRPC client layer: unary and server-streaming
 * calls on the gRPC core C API, with serialized messages in and out.
 *
 * Each call runs on the client's one pluck completion queue, so everything
 * happens on the caller's thread: a batch is started and its tag plucked
 * before the next one starts (one operation of each kind in flight per
 * call, as gRPC requires).  A streaming call starts RECV_STATUS_ON_CLIENT
 * early and receives messages one at a time until the stream ends; the
 * status then says whether it ended well.
 */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

struct velo_client {
  grpc_channel *channel;
  grpc_completion_queue *cq; /* pluck queue shared by the client's calls */
};

/* The state of one call, from creation to its final status. */
typedef struct rpc_call {
  grpc_call *call;
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  grpc_status_code status;
  grpc_slice details;
} rpc_call;

/* One distinct tag per kind of batch; the pluck queue matches on them. */
static char TAG_START, TAG_STATUS, TAG_RECV, TAG_UNARY;

velo_client *velo_client_open(const char *target) {
  velo_client *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  grpc_init();
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  c->channel = grpc_channel_create(target, creds, NULL);
  grpc_channel_credentials_release(creds);
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  if (!c->channel || !c->cq) {
    velo_client_close(c);
    return NULL;
  }
  return c;
}

void velo_client_close(velo_client *c) {
  if (!c) return;
  if (c->cq) {
    /* Every call's batches have completed before we get here, so the
     * queue is empty and shuts down at once. */
    grpc_completion_queue_shutdown(c->cq);
    grpc_completion_queue_destroy(c->cq);
  }
  if (c->channel) grpc_channel_destroy(c->channel);
  free(c);
  grpc_shutdown();
}

const char *velo_rpc_code_name(int code) {
  static const char *const names[] = {
      "OK",      "CANCELLED",          "UNKNOWN",   "INVALID_ARGUMENT",    "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS",       "UNAUTHENTICATED"};
  if (code < 0 || (size_t)code >= sizeof names / sizeof names[0]) return "UNKNOWN";
  return names[code];
}

/* Fills err with code and a printf-style message. */
static void set_error(velo_rpc_error *err, int code, const char *fmt, const char *arg) {
  err->code = code;
  snprintf(err->message, sizeof err->message, fmt, arg);
}

/* The deadline timeout_ms from now, or infinity when timeout_ms <= 0. */
static gpr_timespec deadline_after(long timeout_ms) {
  if (timeout_ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis((int64_t)timeout_ms, GPR_TIMESPAN));
}

/* Creates a call of method on c's channel.  Returns -1 (err filled) if gRPC
 * refuses. */
static int call_begin(velo_client *c, rpc_call *rc, const char *method, long timeout_ms,
                      velo_rpc_error *err) {
  memset(rc, 0, sizeof *rc);
  grpc_metadata_array_init(&rc->initial_md);
  grpc_metadata_array_init(&rc->trailing_md);
  rc->details = grpc_empty_slice();
  rc->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                      grpc_slice_from_static_string(method), NULL,
                                      deadline_after(timeout_ms), NULL);
  if (!rc->call) {
    set_error(err, GRPC_STATUS_INTERNAL, "gRPC could not create a call to %s", method);
    return -1;
  }
  return 0;
}

/* Releases everything call_begin and the batches allocated. */
static void call_end(rpc_call *rc) {
  grpc_metadata_array_destroy(&rc->initial_md);
  grpc_metadata_array_destroy(&rc->trailing_md);
  grpc_slice_unref(rc->details);
  if (rc->call) grpc_call_unref(rc->call);
}

/* Starts a batch and waits for its completion.  Returns 1 if the batch
 * succeeded, 0 if it completed unsuccessfully, -1 if it could not start. */
static int run_batch(velo_client *c, rpc_call *rc, const grpc_op *ops, size_t n, void *tag) {
  if (grpc_call_start_batch(rc->call, ops, n, tag, NULL) != GRPC_CALL_OK) return -1;
  grpc_event ev = grpc_completion_queue_pluck(c->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success ? 1 : 0;
}

/* Wraps req in a byte buffer (copied). */
static grpc_byte_buffer *make_buffer(const uint8_t *req, size_t len) {
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Copies the contents of bb into a malloc'd buffer.  Returns 0, or -1 when
 * memory runs out or the buffer cannot be read. */
static int read_buffer(grpc_byte_buffer *bb, uint8_t **out, size_t *out_len) {
  grpc_byte_buffer_reader reader;
  *out = NULL;
  *out_len = 0;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) return -1;
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  size_t n = GRPC_SLICE_LENGTH(all);
  if (n > 0) {
    *out = malloc(n);
    if (!*out) {
      grpc_slice_unref(all);
      return -1;
    }
    memcpy(*out, GRPC_SLICE_START_PTR(all), n);
  }
  *out_len = n;
  grpc_slice_unref(all);
  return 0;
}

/* Turns the call's final status into 0 (OK) or -1 with err filled in. */
static int status_result(rpc_call *rc, velo_rpc_error *err) {
  if (rc->status == GRPC_STATUS_OK) return 0;
  err->code = (int)rc->status;
  size_t n = GRPC_SLICE_LENGTH(rc->details);
  if (n >= sizeof err->message) n = sizeof err->message - 1;
  memcpy(err->message, GRPC_SLICE_START_PTR(rc->details), n);
  err->message[n] = '\0';
  return -1;
}

int velo_client_unary(velo_client *c, const char *method, const uint8_t *req, size_t req_len,
                      long timeout_ms, uint8_t **resp, size_t *resp_len, velo_rpc_error *err) {
  rpc_call rc;
  *resp = NULL;
  *resp_len = 0;
  if (call_begin(c, &rc, method, timeout_ms, err) != 0) {
    call_end(&rc);
    return -1;
  }
  grpc_byte_buffer *send = make_buffer(req, req_len);
  grpc_byte_buffer *recv = NULL;
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &rc.initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &rc.trailing_md;
  ops[5].data.recv_status_on_client.status = &rc.status;
  ops[5].data.recv_status_on_client.status_details = &rc.details;
  int ok = run_batch(c, &rc, ops, 6, &TAG_UNARY);
  grpc_byte_buffer_destroy(send);
  int result;
  if (ok < 0) {
    set_error(err, GRPC_STATUS_INTERNAL, "gRPC refused to start the call to %s", method);
    result = -1;
  } else if (status_result(&rc, err) != 0) {
    result = -1;
  } else if (!recv) {
    set_error(err, GRPC_STATUS_INTERNAL, "%s returned OK without a response message", method);
    result = -1;
  } else if (read_buffer(recv, resp, resp_len) != 0) {
    set_error(err, GRPC_STATUS_INTERNAL, "cannot read the response of %s", method);
    result = -1;
  } else {
    result = 0;
  }
  if (recv) grpc_byte_buffer_destroy(recv);
  call_end(&rc);
  return result;
}

int velo_client_stream(velo_client *c, const char *method, const uint8_t *req, size_t req_len,
                       long timeout_ms, velo_stream_fn fn, void *user, velo_rpc_error *err) {
  rpc_call rc;
  if (call_begin(c, &rc, method, timeout_ms, err) != 0) {
    call_end(&rc);
    return -1;
  }
  /* 1. Send the request and close our side. */
  grpc_byte_buffer *send = make_buffer(req, req_len);
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  int started = run_batch(c, &rc, ops, 3, &TAG_START);
  grpc_byte_buffer_destroy(send);
  if (started < 0) {
    set_error(err, GRPC_STATUS_INTERNAL, "gRPC refused to start the call to %s", method);
    call_end(&rc);
    return -1;
  }
  /* 2. Ask for the final status now; it completes when the call ends. */
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &rc.trailing_md;
  ops[0].data.recv_status_on_client.status = &rc.status;
  ops[0].data.recv_status_on_client.status_details = &rc.details;
  if (grpc_call_start_batch(rc.call, ops, 1, &TAG_STATUS, NULL) != GRPC_CALL_OK) {
    set_error(err, GRPC_STATUS_INTERNAL, "gRPC refused to wait for the status of %s", method);
    grpc_call_cancel(rc.call, NULL);
    call_end(&rc);
    return -1;
  }
  /* 3. Initial metadata, then messages one at a time until none is left. */
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[0].data.recv_initial_metadata.recv_initial_metadata = &rc.initial_md;
  int go = run_batch(c, &rc, ops, 1, &TAG_RECV) == 1;
  int stopped = 0, unreadable = 0;
  while (go) {
    grpc_byte_buffer *recv = NULL;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &recv;
    if (run_batch(c, &rc, ops, 1, &TAG_RECV) != 1 || !recv) break;
    uint8_t *msg;
    size_t len;
    if (read_buffer(recv, &msg, &len) != 0) {
      unreadable = 1;
    } else {
      stopped = fn(msg, len, user) != 0;
      free(msg);
    }
    grpc_byte_buffer_destroy(recv);
    if (stopped || unreadable) {
      grpc_call_cancel(rc.call, NULL);
      go = 0;
    }
  }
  grpc_completion_queue_pluck(c->cq, &TAG_STATUS, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  int result = status_result(&rc, err);
  if (unreadable && result == 0) {
    set_error(err, GRPC_STATUS_INTERNAL, "cannot read a response of %s", method);
    result = -1;
  }
  call_end(&rc);
  return result;
}
