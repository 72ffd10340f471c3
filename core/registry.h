/*
 * registry.h - the models velod serves: load (task plugin + backend),
 * look up by name with reference counting, unload after draining.
 *
 * A model entry is reference-counted: velo_registry_acquire() returns it
 * with one more reference, and the caller gives it back with
 * velo_model_entry_release() when the request that used it has ended.  An
 * unloaded model disappears from lookups at once; its plugin model is
 * unloaded when the last reference goes.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef VELO_CORE_REGISTRY_H
#define VELO_CORE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "plugin_host.h"
#include "velo/plugin.h"

typedef struct velo_registry velo_registry;

/* One loaded model.  Fields are read-only after load. */
typedef struct velo_model_entry {
  char *name;          /* served name */
  char *path;          /* model file */
  char *task_name;     /* e.g. "text-generation" */
  char *backend_name;  /* e.g. "cpu" */
  int32_t device;      /* backend device index */
  const velo_task_iface *task;
  velo_model *model;
  int64_t context_length; /* from the task's metadata */
} velo_model_entry;

typedef struct velo_model_spec {
  const char *name;      /* NULL: the file name without directory and .gguf */
  const char *path;      /* required */
  const char *task;      /* NULL: "text-generation" */
  const char *backend;   /* NULL or "auto": best available; else exact */
  int32_t device;        /* device index (0) */
  int64_t context_length; /* 0: model default */
  int32_t n_threads;     /* backend threads; 0 = default */
} velo_model_spec;

velo_status velo_registry_create(velo_plugin_host *ph, const velo_host *host,
                                 velo_registry **out, velo_error *err);
/* Unloads every model (waiting for in-flight requests to end) and frees. */
void velo_registry_destroy(velo_registry *reg);

/* Loads a model.  ALREADY_EXISTS if the name is taken; NOT_FOUND for a
 * missing task or backend plugin; the task's own errors otherwise (the
 * message names the file).  A failed load leaves the registry unchanged. */
velo_status velo_registry_load(velo_registry *reg, const velo_model_spec *spec,
                               velo_error *err);
/* Removes the model from lookups; it is unloaded once no request holds it.
 * NOT_FOUND if there is no such model. */
velo_status velo_registry_unload(velo_registry *reg, const char *name, velo_error *err);

/* The model called name with a reference taken, or NULL. */
velo_model_entry *velo_registry_acquire(velo_registry *reg, const char *name);
/* Gives a reference back; NULL is a no-op. */
void velo_model_entry_release(velo_model_entry *e);

/* All models, each acquired: *out is a malloc'd array the caller frees
 * after releasing each entry.  Returns the count (0 with *out = NULL when
 * empty or out of memory). */
size_t velo_registry_list(velo_registry *reg, velo_model_entry ***out);

#endif
