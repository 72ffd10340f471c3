/*
 * health.c - grpc.health.v1.Health for velod: the serving status of each
 * service (grpc/health/v1/health.proto), the unary Check, and Watch, a
 * server-streaming call that sends the current status at once and then a
 * new message whenever it changes.
 *
 * The table starts with "" (the whole server) and every service velod
 * serves (srv->services), all SERVING.  velo_server_set_health changes an
 * entry or adds one.  Check answers an entry's status, or NOT_FOUND for a
 * name not in the table.  Watch on a name not in the table gets
 * SERVICE_UNKNOWN and stays open, as the protocol says: should the name be
 * added later, the watcher is sent its status.  Names are at most
 * MAX_SERVICE_NAME bytes (or the longest served service's): a Watch on a
 * longer one stays SERVICE_UNKNOWN without its name being kept, so a
 * watcher costs a bounded amount of memory.
 *
 * At shutdown (velo_srv_health_shutdown, from velo_server_begin_shutdown)
 * every entry becomes NOT_SERVING; each watcher is sent that change and
 * then the status UNAVAILABLE "server is shutting down", in the same batch,
 * so that Watch calls never hold up the shutdown.
 *
 * A watcher keeps at most one send batch in flight (shared/PITFALLS.md;
 * its queue, call_send.h, never holds more than the one message).
 * When the status changes again while a send is in flight, the watcher is
 * sent the status current when that send completes: a watcher always ends
 * up with the latest status, though a quick flip back and forth may reach
 * it as one message or none.  Everything here is guarded by one mutex,
 * health->mu; gRPC batches are started under it (starting a batch never
 * runs a completion inline).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call_send.h"
#include "grpc_health/v1/health.pb-c.h"
#include "log.h"
#include "server_internal.h"

#define LOG_SOURCE "health"

/* The most Watch calls open at once; more get RESOURCE_EXHAUSTED.  A
 * watcher never ends by itself, so this bounds what forgotten ones cost
 * (about 14 KB of gRPC memory each). */
#define MAX_WATCHERS 1024

/* The longest service name the table takes (velo_server_set_health), unless
 * a service velod serves has a longer one (health->max_name).  A Watch on a
 * longer name is SERVICE_UNKNOWN for good: its name is not kept. */
#define MAX_SERVICE_NAME 256

/* SERVICE_UNKNOWN, the status of a name not in the table (Watch only). */
#define STATUS_SERVICE_UNKNOWN \
  ((int)GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN)

typedef struct health_entry {
  char *name;              /* "" or "pkg.Service"; owned */
  velo_server_health status;
} health_entry;

/* One Health/Watch call. */
typedef struct watcher {
  velo_srv_tag close_tag; /* RECV_CLOSE_ON_SERVER */
  velo_server *srv;
  grpc_call *call;
  char *service;          /* the name watched; owned; NULL: a name longer
                             than any the table can hold (SERVICE_UNKNOWN) */
  struct watcher *prev, *next; /* in health->watchers while listed */
  /* Guarded by health->mu: */
  int refs;               /* handler, close op, send op */
  int last_sent;          /* status last sent; -1: none yet */
  velo_srv_send send;     /* dead once the call ended or a batch failed */
  bool listed;
  int close_cancelled;    /* RECV_CLOSE_ON_SERVER result */
} watcher;

struct velo_srv_health {
  pthread_mutex_t mu;
  health_entry *entries;
  size_t n_entries, cap_entries;
  size_t max_name;        /* the longest name an entry may have */
  watcher *watchers;      /* doubly linked, newest first */
  size_t n_watchers;
  bool shut_down;
};

/* ------------------------------------------------------------------ */
/* The table                                                           */
/* ------------------------------------------------------------------ */

/* The entry for name (NULL: none), or NULL.  Caller holds mu. */
static health_entry *find_locked(struct velo_srv_health *h, const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; i < h->n_entries; i++)
    if (strcmp(h->entries[i].name, name) == 0) return &h->entries[i];
  return NULL;
}

/* Adds name with status; false when out of memory (the table is then
 * unchanged).  Caller holds mu (or owns h alone). */
static bool add_locked(struct velo_srv_health *h, const char *name, velo_server_health status) {
  char *copy;
  if (h->n_entries == h->cap_entries) {
    size_t cap = h->cap_entries ? 2 * h->cap_entries : 8;
    health_entry *grown = realloc(h->entries, cap * sizeof *grown);
    if (!grown) return false;
    h->entries = grown;
    h->cap_entries = cap;
  }
  if (!(copy = strdup(name))) return false;
  h->entries[h->n_entries].name = copy;
  h->entries[h->n_entries].status = status;
  h->n_entries++;
  return true;
}

/* What a Check or Watch on name reports now: a HealthCheckResponse
 * ServingStatus number.  Caller holds mu. */
static int status_locked(struct velo_srv_health *h, const char *name) {
  health_entry *e = find_locked(h, name);
  return e ? (int)e->status : STATUS_SERVICE_UNKNOWN;
}

velo_status velo_srv_health_create(velo_server *srv, velo_error *err) {
  struct velo_srv_health *h = calloc(1, sizeof *h);
  if (!h) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_init(&h->mu, NULL);
  srv->health = h; /* freed by velo_srv_health_destroy, also on failure */
  h->max_name = MAX_SERVICE_NAME;
  for (size_t i = 0; i < srv->n_services; i++)
    if (strlen(srv->services[i]) > h->max_name) h->max_name = strlen(srv->services[i]);
  if (!add_locked(h, "", VELO_SERVER_SERVING))
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < srv->n_services; i++)
    if (!add_locked(h, srv->services[i], VELO_SERVER_SERVING))
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  return VELO_OK;
}

void velo_srv_health_destroy(velo_server *srv) {
  struct velo_srv_health *h = srv->health;
  if (!h) return;
  if (h->watchers)
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "%zu Watch call(s) left at destruction (bug)",
             h->n_watchers);
  for (size_t i = 0; i < h->n_entries; i++) free(h->entries[i].name);
  free(h->entries);
  pthread_mutex_destroy(&h->mu);
  free(h);
  srv->health = NULL;
}

/* ------------------------------------------------------------------ */
/* Watchers                                                            */
/* ------------------------------------------------------------------ */

/* Frees w (its last reference is gone) and ends its call's count. */
static void free_watcher(watcher *w) {
  velo_server *srv = w->srv;
  velo_srv_send_free(&w->send);
  grpc_call_unref(w->call);
  free(w->service);
  free(w);
  velo_srv_call_ended(srv);
}

/* Takes w out of the list.  Caller holds mu. */
static void unlist_locked(struct velo_srv_health *h, watcher *w) {
  if (!w->listed) return;
  if (w->prev) w->prev->next = w->next;
  else h->watchers = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->listed = false;
  h->n_watchers--;
}

/* Starts a send batch when none is in flight and there is something to
 * say: the current status when it differs from the last one sent, and
 * after shutdown the final status UNAVAILABLE.  Caller holds mu. */
static void pump_locked(struct velo_srv_health *h, watcher *w) {
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  grpc_byte_buffer *bb;
  int now;
  velo_error err;

  if (velo_srv_send_busy_locked(&w->send)) return;
  now = status_locked(h, w->service);
  if (now != w->last_sent) {
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)now;
    bb = velo_srv_pack(&resp.base);
    velo_error_init(&err);
    if (bb && velo_srv_check_send_size(w->srv, grpc_byte_buffer_length(bb), &err) != VELO_OK) {
      grpc_byte_buffer_destroy(bb);
      velo_srv_send_finish_locked(&w->send, velo_srv_status(err.code), err.message);
    } else if (bb && velo_srv_send_push_locked(&w->send, bb)) {
      w->last_sent = now;
    } else { /* out of memory packing or queueing it */
      velo_srv_send_finish_locked(&w->send, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  if (h->shut_down)
    velo_srv_send_finish_locked(&w->send, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
  velo_srv_send_pump_locked(&w->send);
}

/* A send batch completed; !ok means the call is gone.  Sends what changed
 * meanwhile. */
static void watcher_send_done(velo_srv_tag *tag, bool ok) {
  watcher *w = VELO_SRV_CONTAINER_OF(tag, watcher, send.tag);
  struct velo_srv_health *h = w->srv->health;
  bool last;

  pthread_mutex_lock(&h->mu);
  velo_srv_send_completed_locked(&w->send, ok);
  pump_locked(h, w);
  last = --w->refs == 0;
  pthread_mutex_unlock(&h->mu);
  if (last) free_watcher(w);
}

/* The call ended (status sent, client cancel, deadline, disconnect). */
static void watcher_close_done(velo_srv_tag *tag, bool ok) {
  watcher *w = VELO_SRV_CONTAINER_OF(tag, watcher, close_tag);
  struct velo_srv_health *h = w->srv->health;
  bool last;
  (void)ok;

  pthread_mutex_lock(&h->mu);
  w->send.dead = true;
  unlist_locked(h, w);
  last = --w->refs == 0;
  pthread_mutex_unlock(&h->mu);
  if (last) free_watcher(w);
}

/* Pumps every watcher of name (NULL: every watcher).  Caller holds mu. */
static void notify_locked(struct velo_srv_health *h, const char *name) {
  for (watcher *w = h->watchers; w; w = w->next)
    if (!name || (w->service && strcmp(w->service, name) == 0)) pump_locked(h, w);
}

/* Health/Watch: lists a watcher for req->service and sends its current
 * status.  A name longer than h->max_name can never be in the table: it
 * is not kept (w->service NULL) and stays SERVICE_UNKNOWN.  Takes over
 * call and the in-flight count. */
static void watch(velo_server *srv, grpc_call *call, const char *service) {
  struct velo_srv_health *h = srv->health;
  watcher *w = calloc(1, sizeof *w);
  bool too_long = strlen(service) > h->max_name; /* max_name is set once, at creation */
  char msg[160];
  bool last;

  if (w && !too_long) w->service = strdup(service);
  if (!w || (!too_long && !w->service)) {
    if (w) free(w);
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  velo_srv_send_init(&w->send, call, watcher_send_done, NULL, &w->refs, LOG_SOURCE,
                     "a Watch call");
  w->close_tag.on_done = watcher_close_done;
  w->srv = srv;
  w->call = call;
  w->last_sent = -1;

  pthread_mutex_lock(&h->mu);
  if (h->shut_down || h->n_watchers >= MAX_WATCHERS) {
    bool shut_down = h->shut_down;
    pthread_mutex_unlock(&h->mu);
    free(w->service);
    free(w);
    if (shut_down) {
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
    } else {
      snprintf(msg, sizeof msg,
               "too many Health/Watch calls open (the most is %d): close some, or poll with "
               "Check", MAX_WATCHERS);
      velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    }
    return;
  }
  w->refs = 2; /* this handler, and the close-on-server started next */
  w->listed = true;
  w->next = h->watchers;
  if (h->watchers) h->watchers->prev = w;
  h->watchers = w;
  h->n_watchers++;

  /* Alone: it completes when the call ends, however it ends. */
  if (!velo_srv_start_close_watch(call, &w->close_cancelled, &w->close_tag, LOG_SOURCE,
                                  "a Watch call")) {
    grpc_call_cancel_with_status(call, GRPC_STATUS_INTERNAL, "cannot start the call", NULL);
    w->refs--;
    w->send.dead = true;
    unlist_locked(h, w);
  }
  pump_locked(h, w); /* the current status, at once */
  last = --w->refs == 0;
  pthread_mutex_unlock(&h->mu);
  if (last) free_watcher(w);
}

void velo_srv_health_shutdown(velo_server *srv) {
  struct velo_srv_health *h = srv->health;
  size_t n;

  pthread_mutex_lock(&h->mu);
  h->shut_down = true;
  for (size_t i = 0; i < h->n_entries; i++) h->entries[i].status = VELO_SERVER_NOT_SERVING;
  n = h->n_watchers;
  notify_locked(h, NULL);
  pthread_mutex_unlock(&h->mu);
  velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "every service NOT_SERVING; %zu Watch call(s) ended", n);
}

velo_status velo_server_set_health(velo_server *srv, const char *service,
                                   velo_server_health status, velo_error *err) {
  struct velo_srv_health *h = srv->health;
  health_entry *e;
  velo_status st = VELO_OK;

  if (!service)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "velo_server_set_health: service is NULL");
  if (strlen(service) > h->max_name)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "velo_server_set_health: service name has %zu bytes; at most %zu",
                          strlen(service), h->max_name);
  if (status != VELO_SERVER_SERVING && status != VELO_SERVER_NOT_SERVING)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "velo_server_set_health: status must be SERVING (1) or NOT_SERVING "
                          "(2), got %d", (int)status);
  pthread_mutex_lock(&h->mu);
  if (h->shut_down) {
    st = velo_error_set(err, VELO_FAILED_PRECONDITION,
                        "the server is shutting down: every service stays NOT_SERVING");
  } else if ((e = find_locked(h, service)) != NULL) {
    if (e->status != status) {
      e->status = status;
      notify_locked(h, service);
    }
  } else if (add_locked(h, service, status)) {
    notify_locked(h, service);
  } else {
    st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  pthread_mutex_unlock(&h->mu);
  return st;
}

/* ------------------------------------------------------------------ */
/* Check, and the entry point                                          */
/* ------------------------------------------------------------------ */

/* Health/Check: the entry's status, or NOT_FOUND "unknown service '...'"
 * (the name quoted with velo_server_quote). */
static void check(velo_server *srv, grpc_call *call, const char *service) {
  struct velo_srv_health *h = srv->health;
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  char msg[VELO_SERVER_QUOTE_SIZE + 32], quoted[VELO_SERVER_QUOTE_SIZE];
  int now;

  pthread_mutex_lock(&h->mu);
  now = status_locked(h, service);
  pthread_mutex_unlock(&h->mu);
  if (now != STATUS_SERVICE_UNKNOWN) {
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)now;
    velo_srv_finish_unary(srv, call, velo_srv_pack(&resp.base), GRPC_STATUS_OK, NULL);
  } else {
    snprintf(msg, sizeof msg, "unknown service '%s'",
             velo_server_quote(service, strlen(service), quoted, sizeof quoted));
    velo_srv_finish_unary(srv, call, NULL, GRPC_STATUS_NOT_FOUND, msg);
  }
}

void velo_srv_handle_health(velo_server *srv, velo_srv_method method, grpc_call *call,
                            grpc_byte_buffer *payload) {
  Grpc__Health__V1__HealthCheckRequest *req = (Grpc__Health__V1__HealthCheckRequest *)
      velo_srv_decode_or_finish(srv, call, payload,
                                &grpc__health__v1__health_check_request__descriptor);

  if (payload) grpc_byte_buffer_destroy(payload);
  if (!req) return;
  if (method == VELO_SRV_HEALTH_WATCH) watch(srv, call, req->service);
  else check(srv, call, req->service);
  protobuf_c_message_free_unpacked(&req->base, NULL);
}
