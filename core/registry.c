/*
 * registry.c - the models velod serves.
 *
 * Each model is an entry with a reference count: the registry holds one
 * reference while the model is listed, and every request in flight holds
 * one.  Unloading drops the model from the list at once (new requests get
 * NOT_FOUND) and the last reference unloads it from its task plugin and
 * closes its backend instance.
 */
#include "registry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define SRC "models"

typedef struct entry {
  velo_model_entry pub; /* first: the public view */
  atomic_int refs;
  const velo_backend_iface *backend;
  velo_backend_instance *backend_instance;
  struct entry *next;
} entry;

struct velo_registry {
  velo_plugin_host *ph;
  const velo_host *host;
  pthread_mutex_t lock;
  entry *head;
};

velo_status velo_registry_create(velo_plugin_host *ph, const velo_host *host, velo_registry **out,
                                 velo_error *err) {
  velo_registry *r = calloc(1, sizeof *r);
  if (!r) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  r->ph = ph;
  r->host = host;
  pthread_mutex_init(&r->lock, NULL);
  *out = r;
  return VELO_OK;
}

static void entry_free(entry *e) {
  if (e->pub.model) e->pub.task->model_unload(e->pub.model);
  if (e->backend_instance) e->backend->close(e->backend_instance);
  free(e->pub.name);
  free(e->pub.path);
  free(e->pub.task_name);
  free(e->pub.backend_name);
  free(e);
}

void velo_model_entry_release(velo_model_entry *pub) {
  if (!pub) return;
  entry *e = (entry *)pub;
  if (atomic_fetch_sub(&e->refs, 1) == 1) {
    velo_log(VELO_LOG_INFO, SRC, "model '%s' unloaded", e->pub.name);
    entry_free(e);
  }
}

void velo_registry_destroy(velo_registry *r) {
  if (!r) return;
  pthread_mutex_lock(&r->lock);
  entry *e = r->head;
  r->head = NULL;
  pthread_mutex_unlock(&r->lock);
  while (e) {
    entry *next = e->next;
    velo_model_entry_release(&e->pub);
    e = next;
  }
  pthread_mutex_destroy(&r->lock);
  free(r);
}

/* Picks the backend plugin for spec->backend: an exact name must exist and
 * probe OK; "auto" takes the first available of cuda, hip, any other, cpu,
 * logging each one it passes over and why. */
static const velo_plugin *choose_backend(velo_registry *r, const char *want, velo_error *err) {
  char reason[256];
  if (want && *want && strcmp(want, "auto") != 0) {
    const velo_plugin *p = velo_plugin_host_find(r->ph, VELO_PLUGIN_BACKEND, want);
    if (!p) {
      velo_error_set(err, VELO_NOT_FOUND, "backend '%s' is not available: no such backend plugin was loaded", want);
      return NULL;
    }
    if (velo_plugin_probe(p, reason, sizeof reason) != VELO_OK) {
      velo_error_set(err, VELO_UNAVAILABLE, "backend '%s' cannot run here: %s", want, reason);
      return NULL;
    }
    return p;
  }
  static const char *const preferred[] = {"cuda", "hip"};
  size_t n = velo_plugin_host_count(r->ph);
  const velo_plugin *order[64];
  size_t k = 0;
  for (size_t i = 0; i < sizeof preferred / sizeof *preferred; i++) {
    const velo_plugin *p = velo_plugin_host_find(r->ph, VELO_PLUGIN_BACKEND, preferred[i]);
    if (p && k < 64) order[k++] = p;
  }
  for (size_t i = 0; i < n && k < 64; i++) {
    const velo_plugin *p = velo_plugin_host_get(r->ph, i);
    const velo_plugin_descriptor *d = velo_plugin_descriptor_of(p);
    if (d->kind != VELO_PLUGIN_BACKEND || strcmp(d->name, "cpu") == 0 ||
        strcmp(d->name, "cuda") == 0 || strcmp(d->name, "hip") == 0)
      continue;
    order[k++] = p;
  }
  const velo_plugin *cpu = velo_plugin_host_find(r->ph, VELO_PLUGIN_BACKEND, "cpu");
  if (cpu && k < 64) order[k++] = cpu;
  for (size_t i = 0; i < k; i++) {
    const char *name = velo_plugin_descriptor_of(order[i])->name;
    if (velo_plugin_probe(order[i], reason, sizeof reason) == VELO_OK) {
      velo_log(VELO_LOG_INFO, SRC, "backend auto: chose '%s'", name);
      return order[i];
    }
    velo_log(VELO_LOG_INFO, SRC, "backend auto: '%s' rejected: %s", name, reason);
  }
  velo_error_set(err, VELO_UNAVAILABLE, "no backend plugin can run here (%zu backend(s) tried, see the log for each reason)", k);
  return NULL;
}

/* The default served name: file name without directory and ".gguf". */
static char *default_name(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t len = strlen(base);
  if (len > 5 && strcmp(base + len - 5, ".gguf") == 0) len -= 5;
  return strndup(base, len);
}

velo_status velo_registry_load(velo_registry *r, const velo_model_spec *spec, velo_error *err) {
  if (!spec || !spec->path || !*spec->path)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "a model needs a file path");
  const char *task_name = spec->task && *spec->task ? spec->task : "text-generation";
  const velo_plugin *tp = velo_plugin_host_find(r->ph, VELO_PLUGIN_TASK, task_name);
  if (!tp)
    return velo_error_set(err, VELO_NOT_FOUND,
                          "no task plugin '%s' is loaded (needed for model file %s)", task_name,
                          spec->path);
  const velo_plugin *bp = choose_backend(r, spec->backend, err);
  if (!bp) return err ? err->code : VELO_UNAVAILABLE;

  entry *e = calloc(1, sizeof *e);
  if (!e) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  atomic_init(&e->refs, 1);
  e->pub.name = spec->name && *spec->name ? strdup(spec->name) : default_name(spec->path);
  e->pub.path = strdup(spec->path);
  e->pub.task_name = strdup(task_name);
  e->pub.backend_name = strdup(velo_plugin_descriptor_of(bp)->name);
  e->pub.device = spec->device;
  e->pub.task = velo_plugin_descriptor_of(tp)->task;
  e->backend = velo_plugin_descriptor_of(bp)->backend;
  if (!e->pub.name || !e->pub.path || !e->pub.task_name || !e->pub.backend_name) {
    entry_free(e);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  pthread_mutex_lock(&r->lock);
  for (entry *x = r->head; x; x = x->next)
    if (strcmp(x->pub.name, e->pub.name) == 0) {
      pthread_mutex_unlock(&r->lock);
      velo_status st = velo_error_set(err, VELO_ALREADY_EXISTS, "a model named '%s' is already loaded (from %s)", e->pub.name, x->pub.path);
      entry_free(e);
      return st;
    }
  pthread_mutex_unlock(&r->lock);

  velo_backend_options bo = {.struct_size = sizeof bo, .device = spec->device, .n_threads = spec->n_threads};
  velo_status st = e->backend->open(&bo, &e->backend_instance, err);
  if (st != VELO_OK) {
    e->backend_instance = NULL;
    entry_free(e);
    return st;
  }
  velo_model_config cfg = {
      .struct_size = sizeof cfg,
      .name = e->pub.name,
      .path = e->pub.path,
      .backend_name = e->pub.backend_name,
      .backend = e->backend,
      .backend_instance = e->backend_instance,
      .context_length = spec->context_length,
  };
  st = e->pub.task->model_load(r->host, &cfg, &e->pub.model, err);
  if (st != VELO_OK) {
    e->pub.model = NULL;
    entry_free(e);
    return st;
  }
  velo_model_metadata md;
  memset(&md, 0, sizeof md);
  md.struct_size = sizeof md;
  velo_error merr;
  velo_error_init(&merr);
  if (e->pub.task->model_metadata(e->pub.model, &md, &merr) == VELO_OK)
    e->pub.context_length = md.context_length;

  pthread_mutex_lock(&r->lock);
  for (entry *x = r->head; x; x = x->next)
    if (strcmp(x->pub.name, e->pub.name) == 0) {
      pthread_mutex_unlock(&r->lock);
      st = velo_error_set(err, VELO_ALREADY_EXISTS, "a model named '%s' is already loaded", e->pub.name);
      entry_free(e);
      return st;
    }
  entry **tail = &r->head;
  while (*tail) tail = &(*tail)->next;
  *tail = e;
  pthread_mutex_unlock(&r->lock);
  velo_log(VELO_LOG_INFO, SRC, "model '%s' loaded from %s (task %s, backend %s:%d, context %lld)",
           e->pub.name, e->pub.path, e->pub.task_name, e->pub.backend_name, (int)e->pub.device,
           (long long)e->pub.context_length);
  return VELO_OK;
}

velo_status velo_registry_unload(velo_registry *r, const char *name, velo_error *err) {
  pthread_mutex_lock(&r->lock);
  for (entry **p = &r->head; *p; p = &(*p)->next) {
    if (strcmp((*p)->pub.name, name) == 0) {
      entry *e = *p;
      *p = e->next;
      pthread_mutex_unlock(&r->lock);
      velo_model_entry_release(&e->pub);
      return VELO_OK;
    }
  }
  pthread_mutex_unlock(&r->lock);
  return velo_error_set(err, VELO_NOT_FOUND, "model '%s' is not loaded", name);
}

velo_model_entry *velo_registry_acquire(velo_registry *r, const char *name) {
  if (!name) return NULL;
  pthread_mutex_lock(&r->lock);
  for (entry *e = r->head; e; e = e->next) {
    if (strcmp(e->pub.name, name) == 0) {
      atomic_fetch_add(&e->refs, 1);
      pthread_mutex_unlock(&r->lock);
      return &e->pub;
    }
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

size_t velo_registry_list(velo_registry *r, velo_model_entry ***out) {
  *out = NULL;
  pthread_mutex_lock(&r->lock);
  size_t n = 0;
  for (entry *e = r->head; e; e = e->next) n++;
  velo_model_entry **arr = n ? malloc(n * sizeof *arr) : NULL;
  if (!arr) {
    pthread_mutex_unlock(&r->lock);
    return 0;
  }
  size_t i = 0;
  for (entry *e = r->head; e; e = e->next) {
    atomic_fetch_add(&e->refs, 1);
    arr[i++] = &e->pub;
  }
  pthread_mutex_unlock(&r->lock);
  *out = arr;
  return n;
}
