/*
 * velo/plugin.h - Velo plugin ABI, version 1: entry point, descriptor and
 * the host's service table.
 *
 * A plugin is a shared library that exports exactly one symbol,
 * velo_plugin_entry (VELO_PLUGIN_ENTRY_SYMBOL).  The host calls it with its
 * own ABI version; the plugin returns a descriptor (or NULL to refuse).
 * Everything else is reached through tables of function pointers.
 *
 * Versioning, both directions: the host accepts a plugin when
 * descriptor->abi_major == VELO_ABI_MAJOR and descriptor->abi_minor <= the
 * host's VELO_ABI_MINOR; a plugin may refuse a host whose minor is lower
 * than it needs by returning NULL.  Every struct that crosses the ABI starts
 * with its size in bytes; tables only grow at the end, and a reader uses a
 * member only if struct_size covers it.  Minor versions add members at the
 * end; anything else is a new major version.
 *
 * Usage (a plugin):
 *
 *   static const velo_plugin_descriptor desc = {
 *     .struct_size = sizeof desc, .abi_major = VELO_ABI_MAJOR,
 *     .abi_minor = VELO_ABI_MINOR, .name = "cpu", .kind = VELO_PLUGIN_BACKEND,
 *     .version = "0.1.0", .backend = &my_backend_iface };
 *   VELO_PLUGIN_EXPORT const velo_plugin_descriptor *
 *   velo_plugin_entry(uint32_t host_major, uint32_t host_minor) { return &desc; }
 */
#ifndef VELO_PLUGIN_H
#define VELO_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/backend.h"
#include "velo/gguf.h"
#include "velo/status.h"
#include "velo/task.h"
#include "velo/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VELO_ABI_MAJOR 1
#define VELO_ABI_MINOR 1

#define VELO_PLUGIN_ENTRY_SYMBOL "velo_plugin_entry"

#if defined(__GNUC__)
#define VELO_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define VELO_PLUGIN_EXPORT
#endif

typedef enum velo_plugin_kind {
  VELO_PLUGIN_BACKEND = 1, /* descriptor->backend is set */
  VELO_PLUGIN_TASK = 2     /* descriptor->task is set */
} velo_plugin_kind;

typedef enum velo_log_level {
  VELO_LOG_DEBUG = 0,
  VELO_LOG_INFO = 1,
  VELO_LOG_WARN = 2,
  VELO_LOG_ERROR = 3
} velo_log_level;

/* The host's services, passed to a plugin's init().  The table and all it
 * points to stay valid until the plugin's fini() returns. */
typedef struct velo_host {
  uint32_t struct_size; /* sizeof(velo_host) as the host compiled it */
  uint32_t abi_major;   /* the host's VELO_ABI_MAJOR */
  uint32_t abi_minor;   /* the host's VELO_ABI_MINOR */
  const char *version;  /* Velo release, e.g. "0.1.0" */

  /* Logs one line (no trailing newline needed) tagged with source (e.g.
   * the plugin name).  printf-style.  Thread-safe; never fails. */
  void (*log)(velo_log_level level, const char *source, const char *fmt, ...)
#if defined(__GNUC__)
      __attribute__((format(printf, 3, 4)))
#endif
      ;

  /* The GGUF reader (velo/gguf.h). */
  const velo_gguf_api *gguf;

  /* Response sink: delivers resp for call to the client (copying what it
   * needs before returning).  Thread-safe; may be called from any thread,
   * typically the task's engine thread; never blocks on the network.
   * After a response with final = true the call handle is invalid.
   * Returns CANCELLED when the client has gone (the task should then send
   * its final response at once and stop working on the request). */
  velo_status (*respond)(velo_call *call, const velo_response *resp);

  /* True once the call was cancelled by the client, its deadline passed,
   * or the server is shutting down.  Cheap (an atomic load); thread-safe.
   * A task checks it at least once per decode step. */
  bool (*call_cancelled)(velo_call *call);
} velo_host;

/* What a plugin is.  Static storage in the plugin; valid while loaded. */
typedef struct velo_plugin_descriptor {
  uint32_t struct_size; /* sizeof(velo_plugin_descriptor) */
  uint32_t abi_major;   /* VELO_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor;   /* VELO_ABI_MINOR the plugin was built with */
  const char *name;     /* unique per kind: "cpu", "text-generation" */
  velo_plugin_kind kind;
  const char *version;  /* the plugin's own version */
  const char *description;

  /* Optional (NULL: nothing to do).  Called once after the version check,
   * before any other function; host stays valid until fini() returns.  A
   * non-OK status makes the host log err and skip the plugin. */
  velo_status (*init)(const velo_host *host, velo_error *err);
  /* Optional.  Called once before unloading, after every model and
   * backend instance of the plugin is gone. */
  void (*fini)(void);

  const velo_backend_iface *backend; /* kind == VELO_PLUGIN_BACKEND */
  const velo_task_iface *task;       /* kind == VELO_PLUGIN_TASK */
} velo_plugin_descriptor;

/* The one exported function.  host_abi_major/minor: the host's version.
 * Returns the plugin's descriptor, or NULL if the plugin cannot work with
 * this host.  Must be cheap and have no side effects. */
typedef const velo_plugin_descriptor *(*velo_plugin_entry_fn)(uint32_t host_abi_major,
                                                              uint32_t host_abi_minor);

#ifdef __cplusplus
}
#endif
#endif /* VELO_PLUGIN_H */
