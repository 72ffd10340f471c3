/*
 * server.h - velod's gRPC front end: serves velo.v1.TextGeneration,
 * velo.v1.Models, grpc.health.v1.Health (Check, Watch) and server
 * reflection (grpc.reflection.v1alpha and v1) on the gRPC core C API,
 * mapping each call onto the model registry and the task plugins' ABI.
 * Any other method is answered UNIMPLEMENTED at once.
 *
 * It also provides the two host services that only the server can offer,
 * velo_server_respond and velo_server_call_cancelled, which velod puts into
 * the velo_host table (velo_host_table_init) before any plugin is loaded.
 *
 * Lifecycle (the order matters; see shared/PITFALLS.md):
 *
 *   grpc_init();                                 // by the caller, first
 *   velo_server_create(&opts, &srv, &err);       // binds and starts serving
 *   ... wait for SIGTERM ...
 *   velo_server_begin_shutdown(srv);             // no new calls
 *   while (!velo_server_wait_shutdown(srv, 100)) // in-flight calls finish
 *     if (grace period over) velo_server_cancel_all(srv);
 *   velo_server_destroy(srv);                    // server, then queue
 *   velo_registry_destroy(reg); ...; grpc_shutdown();
 *
 * Thread-safety: create/begin_shutdown/wait/cancel_all/destroy are called by
 * one controlling thread; respond and call_cancelled from any thread.
 */
#ifndef VELO_SERVER_SERVER_H
#define VELO_SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry.h"
#include "repository.h"
#include "velo/plugin.h"

typedef struct velo_server velo_server;

typedef struct velo_server_options {
  const char *listen;      /* "HOST:PORT" as gRPC accepts it; port 0 picks one */
  velo_registry *registry; /* borrowed; must outlive the server */
  /* Borrowed; must outlive the server.  NULL: no model control (LoadModel
   * and UnloadModel answer FAILED_PRECONDITION). */
  velo_repository *repository;
  int n_threads;           /* completion-queue threads, 1..4 (0: 2) */
  /* The largest request / response message, in bytes (0: the default,
   * VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES; at most INT_MAX).  A request
   * over the limit gets RESOURCE_EXHAUSTED "request message is N bytes,
   * over --max-receive-message-bytes M"; a response over it ends its call
   * with RESOURCE_EXHAUSTED naming --max-send-message-bytes.  gRPC's own
   * limits are set higher (2x + 1 MiB) so that velod, not gRPC, answers. */
  size_t max_receive_message_bytes;
  size_t max_send_message_bytes;
} velo_server_options;

#define VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES ((size_t)8 << 20) /* 8 MiB */

/* Creates the gRPC server, binds opts->listen (SO_REUSEPORT off, so a busy
 * port is an error rather than a shared one), starts it and its
 * completion-queue threads.  Only the identity compression algorithm is
 * enabled: compressed requests are refused (UNIMPLEMENTED) by gRPC before
 * they are inflated.  grpc_init() must have been called.
 * Errors: INVALID_ARGUMENT for a malformed address, UNAVAILABLE when the
 * address cannot be bound, RESOURCE_EXHAUSTED when out of memory; nothing
 * is left running then and *out is untouched. */
velo_status velo_server_create(const velo_server_options *opts, velo_server **out,
                               velo_error *err);

/* True when listen has the form HOST:PORT (HOST a name, an IPv4 address or
 * a bracketed IPv6 address; PORT 0..65535).  Pure. */
bool velo_server_listen_valid(const char *listen);

/* Resolves listen and test-binds it the way gRPC will (SO_REUSEADDR, no
 * SO_REUSEPORT), so that a busy or foreign address is reported before
 * anything slow starts, with the system's reason: INVALID_ARGUMENT for a
 * malformed or unresolvable address, UNAVAILABLE when no resolved address
 * can be bound ("Address already in use").  Thread-safe; the answer can
 * change by the time the server binds. */
velo_status velo_server_probe_listen(const char *listen, velo_error *err);

/* The address actually bound, with the real port when 0 was asked for
 * (e.g. "127.0.0.1:41234").  Owned by the server. */
const char *velo_server_address(const velo_server *srv);

/* Stops accepting calls and asks gRPC to notify when every call in flight
 * has ended.  First every health status becomes NOT_SERVING and each
 * Health/Watch call is told so and then ended (UNAVAILABLE "server is
 * shutting down").  Other calls in flight continue.  A call that gRPC had
 * already matched but that reaches velod's handlers after this is answered
 * UNAVAILABLE "server is shutting down"; one that reaches gRPC after this is
 * dropped by gRPC core (its client sees CANCELLED).  Idempotent. */
void velo_server_begin_shutdown(velo_server *srv);

/* Waits up to timeout_ms (0: just look) for the shutdown begun above to
 * complete; true once every call has ended. */
bool velo_server_wait_shutdown(velo_server *srv, int timeout_ms);

/* Cancels every call in flight (clients see CANCELLED; task plugins see
 * call_cancelled() become true and stop at their next step).  Use after a
 * grace period, between begin_shutdown and a successful wait. */
void velo_server_cancel_all(velo_server *srv);

/* The serving status that grpc.health.v1.Health reports for a service. */
typedef enum velo_server_health {
  VELO_SERVER_SERVING = 1,     /* the numbers of HealthCheckResponse.ServingStatus */
  VELO_SERVER_NOT_SERVING = 2,
} velo_server_health;

/* Sets the health status of service ("" is the whole server; otherwise a
 * full service name such as "velo.v1.TextGeneration").  Every served
 * service starts SERVING; a name not yet known is added, so a Watch that
 * got SERVICE_UNKNOWN for it is told the new status.  Each Watch call on
 * service whose status changes gets a message.  After
 * velo_server_begin_shutdown every service stays NOT_SERVING and this
 * returns FAILED_PRECONDITION.  INVALID_ARGUMENT for a NULL service,
 * RESOURCE_EXHAUSTED when out of memory.  Thread-safe. */
velo_status velo_server_set_health(velo_server *srv, const char *service,
                                   velo_server_health status, velo_error *err);

/* Calls currently in flight (all methods), for progress messages. */
size_t velo_server_calls_in_flight(const velo_server *srv);

/* Generate calls that ended because the client cancelled, its deadline
 * passed or the server shut down, since start. */
uint64_t velo_server_cancelled_count(const velo_server *srv);

/* Destroys the server, shuts down and drains the completion queue, joins
 * its threads and frees everything.  Must come after a wait_shutdown that
 * returned true.  NULL is a no-op. */
void velo_server_destroy(velo_server *srv);

/* Room that velo_server_quote always needs: VELO_SERVER_QUOTE_CHARS
 * characters of at most 12 bytes each ("\xE2\x80\xAE"), "..." and the NUL. */
#define VELO_SERVER_QUOTE_CHARS 64
#define VELO_SERVER_QUOTE_SIZE (VELO_SERVER_QUOTE_CHARS * 12 + 4)

/* Renders untrusted text (a model name, a health service name, a method
 * path a client sent) so that it can go into a gRPC status message or a log
 * line as it is: printable ASCII and valid UTF-8 are kept; a backslash
 * becomes "\\"; control characters (C0, DEL, C1), the line and paragraph
 * separators U+2028/U+2029 and the bidirectional controls (U+200E, U+200F,
 * U+202A..U+202E, U+2066..U+2069) are written as one \xNN escape per byte;
 * so is every byte that is not part of valid UTF-8 (overlong forms,
 * surrogates and code points above U+10FFFF are invalid).  At most
 * VELO_SERVER_QUOTE_CHARS characters of s (a character: a code point, or
 * one invalid byte) are rendered; "..." follows when s was cut.  s may
 * contain NUL bytes (len counts them); s may be NULL when len is 0.
 * out gets a NUL-terminated string whenever cap >= 1; a cap smaller than
 * VELO_SERVER_QUOTE_SIZE may cut the text earlier, always between
 * characters and followed by "..." (out is "" when cap < 4 and the text
 * does not fit).  Returns out.  Pure, thread-safe. */
char *velo_server_quote(const char *s, size_t len, char *out, size_t cap);

/* velo_host.respond: delivers a task's response for a Generate call (see
 * velo/plugin.h).  Copies what it needs; never blocks on the network.
 * Returns CANCELLED when the client has gone (the response is dropped). */
velo_status velo_server_respond(velo_call *call, const velo_response *resp);

/* velo_host.call_cancelled: true once the call was cancelled by the client,
 * its deadline passed, or the server cancelled it while shutting down. */
bool velo_server_call_cancelled(velo_call *call);

#endif
