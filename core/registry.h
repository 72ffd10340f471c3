/*
 * registry.h - the models velod serves: load (task plugin + backend), look
 * up by name with reference counting, submit under a read lock, unload.
 *
 * A model entry is reference-counted: velo_registry_acquire() returns it
 * with one more reference, and the caller gives it back with
 * velo_model_entry_release() when the request that used it has ended.
 *
 * Unloading (velo_registry_unload) is immediate, not a drain:
 *  1. the entry is marked unloading: from now on submit/tokenize on it
 *     return UNAVAILABLE "model 'x' is being unloaded";
 *  2. the task plugin's model_unload() runs, which ends every request still
 *     in flight with a final response of status UNAVAILABLE, and frees the
 *     model; then the backend instance is closed (the model's memory is
 *     released here, not when the last reference goes);
 *  3. the entry leaves the list: later lookups find nothing (NOT_FOUND).
 * Requests only touch the model inside velo_model_entry_submit / _tokenize,
 * which hold the entry's read lock; step 2 holds its write lock, so no
 * request can be inside the plugin while the model is freed.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef VELO_CORE_REGISTRY_H
#define VELO_CORE_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin_host.h"
#include "velo/plugin.h"

typedef struct velo_registry velo_registry;

/* Per-model counters (for ModelStatistics), updated by the front ends with
 * atomic adds.  Durations in nanoseconds. */
typedef struct velo_model_stats {
  atomic_uint_fast64_t inference_count; /* requests that ran to a final OK response */
  atomic_uint_fast64_t execution_count; /* model executions (= inference_count, no batching yet) */
  atomic_uint_fast64_t success_count, success_ns;
  atomic_uint_fast64_t fail_count, fail_ns;
  atomic_uint_fast64_t last_inference_ms; /* wall clock, ms since the epoch */
} velo_model_stats;

/* One loaded model.  The name..context_length fields are read-only after
 * load and stay valid until the last reference is released, even after an
 * unload. */
typedef struct velo_model_entry {
  char *name;          /* served name */
  char *path;          /* model file ("" for tasks without one) */
  char *task_name;     /* e.g. "text-generation" */
  char *backend_name;  /* e.g. "cpu" */
  int32_t device;      /* backend device index */
  const velo_task_iface *task;
  int64_t context_length; /* from the task's metadata; 0 if n/a */
  char *platform;      /* from the task's metadata */
  char *architecture;  /* from the task's metadata; "" if n/a */
  size_t n_inputs, n_outputs;
  velo_io_desc *inputs, *outputs; /* copies of the task's metadata */
  velo_model_stats stats;
  /* The KV cache size the model was loaded with (velo_model_config's
   * kv_cache_tokens / kv_cache_bytes: the spec's, else the registry's
   * default); 0/0 = the task's default. */
  int64_t kv_cache_tokens;
  uint64_t kv_cache_bytes;
} velo_model_entry;

typedef struct velo_model_spec {
  const char *name;      /* NULL: the file name without directory and .gguf */
  const char *path;      /* model file; NULL/"" allowed only with a name */
  const char *task;      /* NULL: "text-generation" */
  const char *backend;   /* "auto" (best available) or a backend name, either
                            optionally with ":N", the device index ("cuda:1");
                            NULL: the registry's default (velo_registry_set_
                            backend_default), else "auto" */
  int32_t device;        /* device index (0), unless backend names one */
  int64_t context_length; /* 0: model default */
  int32_t n_threads;     /* backend threads; 0 = default */
  size_t n_params;       /* task-specific configuration, borrowed for the call */
  const velo_param *params;
  /* KV cache pool size (velo_model_config): token slots, or, when 0,
   * bytes; 0/0 = the registry's default (velo_registry_set_kv_cache_default). */
  int64_t kv_cache_tokens;
  uint64_t kv_cache_bytes;
} velo_model_spec;

/* One counter of a loaded model (velo_model_entry_counters). */
typedef struct velo_model_counter {
  const char *name; /* lower_snake_case, in the same block as the array */
  int64_t value;
} velo_model_counter;

velo_status velo_registry_create(velo_plugin_host *ph, const velo_host *host,
                                 velo_registry **out, velo_error *err);
/* Unloads every model (ending their requests in flight) and frees the
 * registry.  Entries still referenced stay allocated until released.
 * NULL is a no-op. */
void velo_registry_destroy(velo_registry *reg);

/* Sets the KV cache size given to every model loaded from now on whose
 * spec leaves both kv_cache_tokens and kv_cache_bytes 0 (velod's
 * --kv-cache-size): tokens, or, when 0, bytes; 0/0 (the initial value)
 * leaves the size to the task.  Models already loaded keep theirs. */
void velo_registry_set_kv_cache_default(velo_registry *reg, int64_t tokens, uint64_t bytes);

/* Sets the backend given to every model loaded from now on whose spec has
 * backend NULL (velod's --backend for repository models without a
 * "backend" key): "auto", a name, or either with ":N".  NULL or "" means
 * "auto".  The string is copied; RESOURCE_EXHAUSTED if that fails. */
velo_status velo_registry_set_backend_default(velo_registry *reg, const char *backend,
                                              velo_error *err);

/* Splits a backend choice "NAME" or "NAME:N" (NAME "auto" or 1 to 63
 * letters, digits, '_', '-', '.'; N a device index 0..1023) into name[0..name_size) and, when
 * it names one, *device (*has_device true).  INVALID_ARGUMENT with a
 * message naming the value and what is allowed otherwise.  Pure. */
velo_status velo_backend_choice_parse(const char *choice, char *name, size_t name_size,
                                      int32_t *device, bool *has_device, velo_error *err);

/* Checks that backend (as velo_backend_choice_parse takes it) can run:
 * "auto" always can (at worst on the CPU); a named backend must be loaded,
 * its probe must say available and it must have the device asked for.
 * NOT_FOUND (no such plugin: the message lists the backends loaded),
 * UNAVAILABLE (the probe's reason), OUT_OF_RANGE (no such device),
 * INVALID_ARGUMENT (malformed).  For velod's start-up check of an explicit
 * --backend.  Thread-safe. */
velo_status velo_registry_check_backend(velo_registry *reg, const char *backend, velo_error *err);

/* Loads a model.  ALREADY_EXISTS if the name is taken (or being loaded);
 * NOT_FOUND for a missing task or backend plugin; the task's own errors
 * otherwise (the message names the file).  A failed load leaves the
 * registry unchanged. */
velo_status velo_registry_load(velo_registry *reg, const velo_model_spec *spec,
                               velo_error *err);
/* Loads spec (spec->name required) next to the model of that name, if
 * any, and only once the new one is ready swaps it into the list in the
 * old one's place, atomically: requests find the old model until then and
 * the new one after, never nothing.  The old one is then unloaded as by
 * velo_registry_unload (its requests in flight end with UNAVAILABLE).  A
 * failed load leaves the old model serving, untouched.  With no model of
 * that name this is velo_registry_load.  ALREADY_EXISTS if the name is
 * being loaded; UNAVAILABLE if the old model is being unloaded meanwhile
 * (the new one is then discarded); the load's own errors.  Both models
 * hold memory at once while the new one loads. */
velo_status velo_registry_replace(velo_registry *reg, const velo_model_spec *spec, velo_error *err);
/* Unloads the model as described above; returns when its memory is freed.
 * NOT_FOUND if there is no such model, UNAVAILABLE if an unload of it is
 * already running. */
velo_status velo_registry_unload(velo_registry *reg, const char *name, velo_error *err);

/* The model called name with a reference taken, or NULL (also while it
 * is being loaded; a model being unloaded is still returned, and its
 * submit answers UNAVAILABLE). */
velo_model_entry *velo_registry_acquire(velo_registry *reg, const char *name);
/* Gives a reference back; NULL is a no-op. */
void velo_model_entry_release(velo_model_entry *e);

/* True once an unload of the entry has begun. */
bool velo_model_entry_unloading(const velo_model_entry *e);

/* The task's submit() under the entry's read lock (see velo/task.h for the
 * response contract).  UNAVAILABLE if the model is being unloaded. */
velo_status velo_model_entry_submit(velo_model_entry *e, const velo_request *req,
                                    velo_error *err);

/* Tokenizes with the model's text extension (velo/text.h) under the read
 * lock.  *ids is malloc'd (free() it).  UNIMPLEMENTED if the model's task
 * has no tokenizer; UNAVAILABLE while unloading; the task's errors. */
velo_status velo_model_entry_tokenize(velo_model_entry *e, const char *text, size_t len,
                                      bool add_special, int32_t **ids, size_t *n_ids,
                                      velo_error *err);

/* The model's counters from its task's stats extension (VELO_STATS_EXTENSION,
 * velo/task.h), read under the entry's read lock taken with tryrdlock: it
 * never waits behind an unload.  On OK, *out is one malloc'd block holding
 * the array and the names (free() it; NULL when *n is 0) and *n the count:
 * 0 when the task keeps no counters.  A counter whose name is not 1 to 64
 * of [a-z0-9_.] is left out (logged once per model).  At most 1024
 * counters.  Errors: UNAVAILABLE while the model is being unloaded (or the
 * lock is held by one), RESOURCE_EXHAUSTED; *out = NULL, *n = 0 then.
 * Thread-safe. */
velo_status velo_model_entry_counters(velo_model_entry *e, velo_model_counter **out, size_t *n,
                                      velo_error *err);

/* All models, each acquired: *out is a malloc'd array the caller frees
 * after releasing each entry.  Returns the count (0 with *out = NULL when
 * empty or out of memory). */
size_t velo_registry_list(velo_registry *reg, velo_model_entry ***out);

#endif
