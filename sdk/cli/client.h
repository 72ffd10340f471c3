/*
 * client.h - the velo CLI's small gRPC client layer on the gRPC core C API.
 *
 * It knows nothing about Velo's messages: a call sends one serialized
 * request and receives either one serialized response (unary) or a stream
 * of them (server streaming), and reports the call's gRPC status.  The
 * commands in main.c pack and unpack the protobuf-c messages around it.
 *
 * Usage:
 *
 *   velo_client *c = velo_client_open("127.0.0.1:50051");
 *   velo_rpc_error err;
 *   uint8_t *resp; size_t resp_len;
 *   if (velo_client_unary(c, "/velo.v1.Models/ListModels", req, req_len,
 *                         10000, &resp, &resp_len, &err) != 0)
 *     fprintf(stderr, "%s: %s\n", velo_rpc_code_name(err.code), err.message);
 *   free(resp);
 *   velo_client_close(c);
 *
 * Thread-safety: one client is used by one thread at a time.
 */
#ifndef VELO_CLI_CLIENT_H
#define VELO_CLI_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* An open channel plus the completion queue its calls use.  Opaque. */
typedef struct velo_client velo_client;

#define VELO_RPC_MESSAGE_MAX 1024

/* What a failed call reports: the gRPC status code (grpc_status_code's
 * numeric value) and its details text, NUL-terminated. */
typedef struct velo_rpc_error {
  int code;
  char message[VELO_RPC_MESSAGE_MAX];
} velo_rpc_error;

/* Called once per received message of a streaming call, with the
 * serialized bytes (borrowed until the callback returns).  Returning
 * non-zero cancels the call (it then ends with CANCELLED). */
typedef int (*velo_stream_fn)(const uint8_t *msg, size_t len, void *user);

/* Starts gRPC and opens an insecure channel to target ("HOST:PORT").  The
 * connection is made lazily by the first call.  Returns NULL only when
 * memory or gRPC itself fails. */
velo_client *velo_client_open(const char *target);

/* Closes the channel and shuts gRPC down.  c may be NULL. */
void velo_client_close(velo_client *c);

/* Calls a unary method ("/package.Service/Method") with the serialized
 * request req[0..req_len).  timeout_ms > 0 sets a deadline, <= 0 means
 * none.  On success returns 0 and sets *resp (malloc'd, the caller frees
 * it; may be NULL when *resp_len is 0).  On failure returns -1, fills err
 * and sets *resp to NULL. */
int velo_client_unary(velo_client *c, const char *method, const uint8_t *req, size_t req_len,
                      long timeout_ms, uint8_t **resp, size_t *resp_len, velo_rpc_error *err);

/* Calls a server-streaming method, passing each response message to fn as
 * it arrives.  timeout_ms as for velo_client_unary.  Returns 0 when the
 * call ended with status OK, else -1 with err filled in (including when fn
 * asked to stop). */
int velo_client_stream(velo_client *c, const char *method, const uint8_t *req, size_t req_len,
                       long timeout_ms, velo_stream_fn fn, void *user, velo_rpc_error *err);

/* The gRPC name of a status code ("NOT_FOUND"); static storage. */
const char *velo_rpc_code_name(int code);

#endif /* VELO_CLI_CLIENT_H */
