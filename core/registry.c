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
#include <unistd.h>

#include "log.h"
#include "size.h"
#include "velo/text.h"

#define SRC "models"

typedef struct entry {
  velo_model_entry pub; /* first: the public view */
  atomic_int refs;
  pthread_rwlock_t lock;  /* read: submit/tokenize; write: unload */
  velo_model *model;      /* NULL once unloaded (under the write lock) */
  atomic_bool unloading;
  atomic_bool warned_counter_name; /* a bad counter name was logged once */
  const velo_backend_iface *backend;
  velo_backend_instance *backend_instance;
  struct entry *next;
} entry;

struct velo_registry {
  velo_plugin_host *ph;
  const velo_host *host;
  pthread_mutex_t lock;
  entry *head;
  char **loading; /* names being loaded (so a second load of one is refused) */
  size_t n_loading;
  int64_t kv_cache_tokens;  /* default KV cache size for specs that give none */
  uint64_t kv_cache_bytes;
  char *backend_default;    /* for specs with backend NULL; NULL: "auto" */
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

/* Unloads the plugin model and closes the backend instance, under the
 * write lock: no request is inside the plugin meanwhile. */
static void entry_unload_model(entry *e) {
  pthread_rwlock_wrlock(&e->lock);
  if (e->model) e->pub.task->model_unload(e->model);
  e->model = NULL;
  if (e->backend_instance) e->backend->close(e->backend_instance);
  e->backend_instance = NULL;
  pthread_rwlock_unlock(&e->lock);
}

static void entry_free(entry *e) {
  entry_unload_model(e);
  pthread_rwlock_destroy(&e->lock);
  for (size_t i = 0; i < e->pub.n_inputs; i++) free((char *)e->pub.inputs[i].name);
  for (size_t i = 0; i < e->pub.n_outputs; i++) free((char *)e->pub.outputs[i].name);
  free(e->pub.inputs);
  free(e->pub.outputs);
  free(e->pub.platform);
  free(e->pub.architecture);
  free(e->pub.name);
  free(e->pub.path);
  free(e->pub.task_name);
  free(e->pub.backend_name);
  free(e);
}

void velo_model_entry_release(velo_model_entry *pub) {
  if (!pub) return;
  entry *e = (entry *)pub;
  if (atomic_fetch_sub(&e->refs, 1) == 1) entry_free(e);
}

bool velo_model_entry_unloading(const velo_model_entry *pub) {
  return atomic_load(&((const entry *)pub)->unloading);
}

velo_status velo_model_entry_submit(velo_model_entry *pub, const velo_request *req,
                                    velo_error *err) {
  entry *e = (entry *)pub;
  /* Never wait for an unload: it holds the write lock while it ends the
   * model's requests, and a front-end thread must not block meanwhile. */
  if (atomic_load(&e->unloading) || pthread_rwlock_tryrdlock(&e->lock) != 0)
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
  velo_status st;
  if (!e->model || atomic_load(&e->unloading))
    st = velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
  else
    st = pub->task->submit(e->model, req, err);
  pthread_rwlock_unlock(&e->lock);
  return st;
}

velo_status velo_model_entry_tokenize(velo_model_entry *pub, const char *text, size_t len,
                                      bool add_special, int32_t **ids, size_t *n_ids,
                                      velo_error *err) {
  entry *e = (entry *)pub;
  *ids = NULL;
  *n_ids = 0;
  if (atomic_load(&e->unloading) || pthread_rwlock_tryrdlock(&e->lock) != 0)
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
  velo_status st;
  const velo_text_ext *ext = NULL;
  if (!e->model || atomic_load(&e->unloading)) {
    st = velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
    goto out;
  }
  if (pub->task->get_extension) ext = pub->task->get_extension(e->model, VELO_TEXT_EXTENSION);
  if (!ext || ext->struct_size < sizeof *ext || !ext->tokenize || !ext->free_ids) {
    st = velo_error_set(err, VELO_UNIMPLEMENTED, "model '%s' (task %s) has no tokenizer", pub->name,
                        pub->task_name);
    goto out;
  }
  int32_t *tids = NULL;
  size_t n = 0;
  st = ext->tokenize(e->model, text, len, add_special, &tids, &n, err);
  if (st == VELO_OK) {
    *ids = malloc((n ? n : 1) * sizeof **ids);
    if (!*ids) st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    else if (n) memcpy(*ids, tids, n * sizeof **ids);
    if (*ids) *n_ids = n;
  }
  if (tids) ext->free_ids(tids);
out:
  pthread_rwlock_unlock(&e->lock);
  return st;
}

#define COUNTERS_MAX 1024
#define COUNTER_NAME_MAX 64

/* True if name is a counter name we pass on: 1..COUNTER_NAME_MAX bytes of
 * [a-z0-9_.] (always valid UTF-8 on the wire). */
static bool counter_name_ok(const char *name) {
  size_t len = name ? strnlen(name, COUNTER_NAME_MAX + 1) : 0;
  if (len == 0 || len > COUNTER_NAME_MAX) return false;
  for (size_t i = 0; i < len; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.')) return false;
  }
  return true;
}

/* Reads up to COUNTERS_MAX counters through ext into *raw (malloc'd),
 * asking again with a larger array when the first one was too small.
 * Returns the count read, or SIZE_MAX when out of memory. */
static size_t read_counters(const velo_stats_ext *ext, velo_model *model, velo_stat **raw) {
  size_t cap = 32, n = 0;
  *raw = NULL;
  for (int attempt = 0;; attempt++) {
    velo_stat *grown = realloc(*raw, cap * sizeof *grown);
    if (!grown) {
      free(*raw);
      *raw = NULL;
      return SIZE_MAX;
    }
    *raw = grown;
    memset(*raw, 0, cap * sizeof **raw);
    n = ext->read(model, *raw, cap);
    if (n <= cap) return n;
    if (cap == COUNTERS_MAX || attempt == 2) return cap; /* more than we take: the first cap */
    cap = n < COUNTERS_MAX ? n : COUNTERS_MAX; /* the count may grow meanwhile: ask again */
  }
}

velo_status velo_model_entry_counters(velo_model_entry *pub, velo_model_counter **out, size_t *n,
                                      velo_error *err) {
  entry *e = (entry *)pub;
  *out = NULL;
  *n = 0;
  if (atomic_load(&e->unloading) || pthread_rwlock_tryrdlock(&e->lock) != 0)
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
  velo_status st = VELO_OK;
  velo_stat *raw = NULL;
  size_t n_raw = 0;
  const velo_stats_ext *ext = NULL;
  if (!e->model || atomic_load(&e->unloading)) {
    st = velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", pub->name);
    goto out;
  }
  if (pub->task->get_extension) ext = pub->task->get_extension(e->model, VELO_STATS_EXTENSION);
  if (!ext || ext->struct_size < sizeof *ext || !ext->read) goto out; /* keeps no counters */
  n_raw = read_counters(ext, e->model, &raw);
  if (n_raw == SIZE_MAX) {
    st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  /* One block: the array, then the names (copied: ours after the lock). */
  size_t n_ok = 0, name_bytes = 0;
  for (size_t i = 0; i < n_raw; i++)
    if (counter_name_ok(raw[i].name)) {
      n_ok++;
      name_bytes += strlen(raw[i].name) + 1;
    } else if (!atomic_exchange(&e->warned_counter_name, true)) {
      velo_log(VELO_LOG_WARN, SRC,
               "model '%s': the task reports a counter whose name is not 1 to %d of [a-z0-9_.]: "
               "left out (logged once)",
               pub->name, COUNTER_NAME_MAX);
    }
  if (n_ok == 0) goto out;
  velo_model_counter *arr = malloc(n_ok * sizeof *arr + name_bytes);
  if (!arr) {
    st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  char *names = (char *)(arr + n_ok);
  size_t k = 0;
  for (size_t i = 0; i < n_raw; i++) {
    if (!counter_name_ok(raw[i].name)) continue;
    size_t len = strlen(raw[i].name) + 1;
    memcpy(names, raw[i].name, len);
    arr[k].name = names;
    arr[k].value = raw[i].value;
    names += len;
    k++;
  }
  *out = arr;
  *n = n_ok;
out:
  pthread_rwlock_unlock(&e->lock);
  free(raw);
  return st;
}

void velo_registry_set_kv_cache_default(velo_registry *r, int64_t tokens, uint64_t bytes) {
  pthread_mutex_lock(&r->lock);
  r->kv_cache_tokens = tokens > 0 ? tokens : 0;
  r->kv_cache_bytes = tokens > 0 ? 0 : bytes;
  pthread_mutex_unlock(&r->lock);
}

void velo_registry_destroy(velo_registry *r) {
  if (!r) return;
  pthread_mutex_lock(&r->lock);
  entry *e = r->head;
  r->head = NULL;
  pthread_mutex_unlock(&r->lock);
  while (e) {
    entry *next = e->next;
    atomic_store(&e->unloading, true);
    entry_unload_model(e);
    velo_log(VELO_LOG_INFO, SRC, "model '%s' unloaded", e->pub.name);
    velo_model_entry_release(&e->pub);
    e = next;
  }
  pthread_mutex_destroy(&r->lock);
  free(r->loading);
  free(r->backend_default);
  free(r);
}

velo_status velo_backend_choice_parse(const char *choice, char *name, size_t name_size,
                                      int32_t *device, bool *has_device, velo_error *err) {
  const char *colon = choice ? strchr(choice, ':') : NULL;
  size_t len = choice ? (colon ? (size_t)(colon - choice) : strlen(choice)) : 0;
  *has_device = false;
  *device = 0;
  bool ok = len >= 1 && len <= 63 && len < name_size;
  for (size_t i = 0; ok && i < len; i++) {
    char c = choice[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
  }
  if (ok && colon) {
    char *end = NULL;
    long v = colon[1] >= '0' && colon[1] <= '9' ? strtol(colon + 1, &end, 10) : -1;
    ok = v >= 0 && v <= 1023 && end && *end == '\0';
    *device = ok ? (int32_t)v : 0;
    *has_device = ok;
  }
  if (!ok)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "backend '%.80s' is not valid: expected auto or a backend name (1 to 63 "
                          "letters, digits, '_', '-', '.'), optionally followed by :N, a device index 0..1023 "
                          "(e.g. cuda:1)",
                          choice ? choice : "");
  memcpy(name, choice, len);
  name[len] = '\0';
  return VELO_OK;
}

velo_status velo_registry_set_backend_default(velo_registry *r, const char *backend,
                                              velo_error *err) {
  char *copy = NULL;
  if (backend && *backend && !(copy = strdup(backend)))
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_lock(&r->lock);
  free(r->backend_default);
  r->backend_default = copy;
  pthread_mutex_unlock(&r->lock);
  return VELO_OK;
}

/* A probe reason without its leading "unavailable: " (the messages here
 * say that already). */
static const char *why_not(const char *reason) {
  return strncmp(reason, "unavailable: ", 13) == 0 ? reason + 13 : reason;
}

/* Checks that backend plugin p has device index device; false (with why)
 * if it has fewer devices. */
static bool backend_has_device(const velo_plugin *p, int32_t device, char *why, size_t why_size) {
  const velo_plugin_descriptor *d = velo_plugin_descriptor_of(p);
  int32_t n = d->backend->device_count ? d->backend->device_count() : 1;
  if (device < n) return true;
  if (n == 1)
    snprintf(why, why_size, "it has 1 device (%s:0), device %d was asked for", d->name, (int)device);
  else
    snprintf(why, why_size, "it has %d devices (%s:0 to %s:%d), device %d was asked for", (int)n, d->name,
             d->name, (int)n - 1, (int)device);
  return false;
}

/* Picks the backend plugin named want (or, for "auto", the first
 * available of cuda, hip, any other, cpu) that can run device, logging
 * each one auto passes over and why.  An exact name must exist, probe OK
 * and have the device. */
static const velo_plugin *choose_backend(velo_registry *r, const char *want, int32_t device,
                                         velo_error *err) {
  char reason[400];
  if (want && *want && strcmp(want, "auto") != 0) {
    const velo_plugin *p = velo_plugin_host_find(r->ph, VELO_PLUGIN_BACKEND, want);
    if (!p) {
      char names[256] = "";
      size_t used = 0;
      for (size_t i = 0; i < velo_plugin_host_count(r->ph); i++) {
        const velo_plugin_descriptor *d = velo_plugin_descriptor_of(velo_plugin_host_get(r->ph, i));
        if (d->kind != VELO_PLUGIN_BACKEND || used >= sizeof names) continue;
        int w = snprintf(names + used, sizeof names - used, "%s%s", used ? ", " : "", d->name);
        if (w > 0) used += (size_t)w;
      }
      velo_error_set(err, VELO_NOT_FOUND,
                     "backend '%s' is not available: no such backend plugin was loaded (loaded: %s)", want,
                     used ? names : "none");
      return NULL;
    }
    if (velo_plugin_probe(p, reason, sizeof reason) != VELO_OK) {
      velo_error_set(err, VELO_UNAVAILABLE, "backend '%s' cannot run here: %s", want, why_not(reason));
      return NULL;
    }
    if (!backend_has_device(p, device, reason, sizeof reason)) {
      velo_error_set(err, VELO_OUT_OF_RANGE, "backend '%s' cannot run device %s:%d: %s", want, want,
                     (int)device, reason);
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
    if (velo_plugin_probe(order[i], reason, sizeof reason) == VELO_OK &&
        backend_has_device(order[i], device, reason, sizeof reason)) {
      velo_log(VELO_LOG_INFO, SRC, "backend auto: chose '%s' (device %s:%d)", name, name, (int)device);
      return order[i];
    }
    velo_log(VELO_LOG_INFO, SRC, "backend auto: '%s' rejected: %s", name, why_not(reason));
  }
  velo_error_set(err, VELO_UNAVAILABLE, "no backend plugin can run here (%zu backend(s) tried, see the log for each reason)", k);
  return NULL;
}

velo_status velo_registry_check_backend(velo_registry *r, const char *backend, velo_error *err) {
  char name[64];
  int32_t device;
  bool has_dev;
  velo_status st = velo_backend_choice_parse(backend, name, sizeof name, &device, &has_dev, err);
  if (st != VELO_OK) return st;
  if (strcmp(name, "auto") == 0) return VELO_OK;
  return choose_backend(r, name, device, err) ? VELO_OK : (err ? err->code : VELO_UNAVAILABLE);
}

/* The default served name: file name without directory and ".gguf". */
static char *default_name(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t len = strlen(base);
  if (len > 5 && strcmp(base + len - 5, ".gguf") == 0) len -= 5;
  return strndup(base, len);
}

/* Copies the task's metadata into the entry (owned by it). */
static velo_status copy_metadata(entry *e, const velo_model_metadata *md, velo_error *err) {
  e->pub.context_length = md->context_length;
  e->pub.platform = strdup(md->platform ? md->platform : "");
  e->pub.architecture = strdup(md->architecture ? md->architecture : "");
  e->pub.inputs = calloc(md->n_inputs ? md->n_inputs : 1, sizeof *e->pub.inputs);
  e->pub.outputs = calloc(md->n_outputs ? md->n_outputs : 1, sizeof *e->pub.outputs);
  if (!e->pub.platform || !e->pub.architecture || !e->pub.inputs || !e->pub.outputs)
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < md->n_inputs; i++) {
    e->pub.inputs[i] = md->inputs[i];
    e->pub.inputs[i].name = strdup(md->inputs[i].name ? md->inputs[i].name : "");
    e->pub.n_inputs++;
    if (!e->pub.inputs[i].name) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; i < md->n_outputs; i++) {
    e->pub.outputs[i] = md->outputs[i];
    e->pub.outputs[i].name = strdup(md->outputs[i].name ? md->outputs[i].name : "");
    e->pub.n_outputs++;
    if (!e->pub.outputs[i].name) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  return VELO_OK;
}

/* Reserves name for a load in progress: ALREADY_EXISTS if it is being
 * loaded, or loaded and !replace.  Call with r->lock held. */
static velo_status reserve_name(velo_registry *r, const char *name, bool replace, velo_error *err) {
  for (entry *x = r->head; x && !replace; x = x->next)
    if (strcmp(x->pub.name, name) == 0)
      return velo_error_set(err, VELO_ALREADY_EXISTS, "a model named '%s' is already loaded (from %s)",
                            name, x->pub.path);
  for (size_t i = 0; i < r->n_loading; i++)
    if (strcmp(r->loading[i], name) == 0)
      return velo_error_set(err, VELO_ALREADY_EXISTS, "a model named '%s' is being loaded", name);
  char **nl = realloc(r->loading, (r->n_loading + 1) * sizeof *nl);
  if (!nl) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  r->loading = nl;
  r->loading[r->n_loading++] = (char *)name;
  return VELO_OK;
}

/* Drops the reservation of name.  Call with r->lock held. */
static void unreserve_name(velo_registry *r, const char *name) {
  for (size_t i = 0; i < r->n_loading; i++)
    if (r->loading[i] == name) {
      r->loading[i] = r->loading[--r->n_loading];
      return;
    }
}

/* Loads spec; with replace, a loaded model of the same name is swapped out
 * (see velo_registry_replace) once the new one is ready. */
static velo_status load_impl(velo_registry *r, const velo_model_spec *spec, bool replace,
                             velo_error *err) {
  bool has_path = spec && spec->path && *spec->path;
  if (!spec || (!has_path && !(spec->name && *spec->name)))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "a model needs a file path or a name");
  const char *path = has_path ? spec->path : "";
  const char *task_name = spec->task && *spec->task ? spec->task : "text-generation";
  const velo_plugin *tp = velo_plugin_host_find(r->ph, VELO_PLUGIN_TASK, task_name);
  if (!tp)
    return velo_error_set(err, VELO_NOT_FOUND, "no task plugin '%s' is loaded (needed for model %s)",
                          task_name, has_path ? path : spec->name);
  char want[64];
  int32_t device = spec->device;
  bool named_device;
  pthread_mutex_lock(&r->lock);
  const char *choice = spec->backend ? spec->backend : r->backend_default ? r->backend_default : "auto";
  velo_status pst = velo_backend_choice_parse(choice, want, sizeof want, &device, &named_device, err);
  pthread_mutex_unlock(&r->lock);
  if (pst != VELO_OK) return pst;
  if (!named_device) device = spec->device;
  if (device < 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "device index %d is negative", (int)device);
  const velo_plugin *bp = choose_backend(r, want, device, err);
  if (!bp) return err ? err->code : VELO_UNAVAILABLE;

  entry *e = calloc(1, sizeof *e);
  if (!e) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  atomic_init(&e->refs, 1);
  atomic_init(&e->unloading, false);
  atomic_init(&e->warned_counter_name, false);
  pthread_rwlock_init(&e->lock, NULL);
  e->pub.name = spec->name && *spec->name ? strdup(spec->name) : default_name(path);
  e->pub.path = strdup(path);
  e->pub.task_name = strdup(task_name);
  e->pub.backend_name = strdup(velo_plugin_descriptor_of(bp)->name);
  e->pub.device = device;
  e->pub.task = velo_plugin_descriptor_of(tp)->task;
  if (spec->kv_cache_tokens > 0 || spec->kv_cache_bytes > 0) {
    e->pub.kv_cache_tokens = spec->kv_cache_tokens > 0 ? spec->kv_cache_tokens : 0;
    e->pub.kv_cache_bytes = spec->kv_cache_tokens > 0 ? 0 : spec->kv_cache_bytes;
  } else {
    pthread_mutex_lock(&r->lock);
    e->pub.kv_cache_tokens = r->kv_cache_tokens;
    e->pub.kv_cache_bytes = r->kv_cache_bytes;
    pthread_mutex_unlock(&r->lock);
  }
  e->backend = velo_plugin_descriptor_of(bp)->backend;
  if (!e->pub.name || !e->pub.path || !e->pub.task_name || !e->pub.backend_name) {
    entry_free(e);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  pthread_mutex_lock(&r->lock);
  velo_status st = reserve_name(r, e->pub.name, replace, err);
  pthread_mutex_unlock(&r->lock);
  if (st != VELO_OK) {
    entry_free(e);
    return st;
  }

  long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (spec->n_threads > 0 && online > 0 && spec->n_threads > online)
    velo_log(VELO_LOG_WARN, SRC,
             "model '%s': %d compute threads on %ld online CPUs: the threads will take turns on "
             "the cores and every step will be slower; use at most %ld (--threads, or threads in "
             "config.json)",
             e->pub.name, (int)spec->n_threads, online, online);
  velo_backend_options bo = {.struct_size = sizeof bo, .device = device, .n_threads = spec->n_threads};
  st = e->backend->open(&bo, &e->backend_instance, err);
  if (st != VELO_OK) e->backend_instance = NULL;
  if (st == VELO_OK) {
    velo_model_config cfg = {
        .struct_size = sizeof cfg,
        .name = e->pub.name,
        .path = e->pub.path,
        .backend_name = e->pub.backend_name,
        .backend = e->backend,
        .backend_instance = e->backend_instance,
        .context_length = spec->context_length,
        .n_params = spec->n_params,
        .params = spec->params,
        .kv_cache_tokens = e->pub.kv_cache_tokens,
        .kv_cache_bytes = e->pub.kv_cache_bytes,
    };
    st = e->pub.task->model_load(r->host, &cfg, &e->model, err);
    if (st != VELO_OK) e->model = NULL;
  }
  if (st == VELO_OK) {
    velo_model_metadata md;
    memset(&md, 0, sizeof md);
    md.struct_size = sizeof md;
    st = e->pub.task->model_metadata(e->model, &md, err);
    if (st == VELO_OK) st = copy_metadata(e, &md, err);
  }
  entry *old = NULL;
  pthread_mutex_lock(&r->lock);
  unreserve_name(r, e->pub.name);
  if (st == VELO_OK) {
    entry **slot = &r->head;
    while (*slot && strcmp((*slot)->pub.name, e->pub.name) != 0) slot = &(*slot)->next;
    if (*slot && !replace) { /* cannot happen: the reservation checked */
      st = velo_error_set(err, VELO_ALREADY_EXISTS, "a model named '%s' is already loaded", e->pub.name);
    } else if (*slot && atomic_exchange(&(*slot)->unloading, true)) {
      /* Not ours to replace: someone else is unloading it right now. */
      st = velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded; load it again afterwards",
                          e->pub.name);
    } else if (*slot) { /* swap: the old entry's list reference is now ours */
      old = *slot;
      e->next = old->next;
      *slot = e;
    } else {
      *slot = e; /* the end of the list */
    }
  }
  pthread_mutex_unlock(&r->lock);
  if (st != VELO_OK) {
    entry_free(e);
    return st;
  }
  if (old) {
    entry_unload_model(old); /* ends its requests in flight with UNAVAILABLE */
    velo_log(VELO_LOG_INFO, SRC, "model '%s': old version unloaded (replaced)", old->pub.name);
    velo_model_entry_release(&old->pub);
  }
  velo_size kv = {.tokens = e->pub.kv_cache_tokens, .bytes = e->pub.kv_cache_bytes};
  char kv_text[64];
  velo_log(VELO_LOG_INFO, SRC,
           "model '%s' loaded from %s (task %s, backend %s:%d, context %lld, KV cache %s)",
           e->pub.name, *e->pub.path ? e->pub.path : "(no file)", e->pub.task_name,
           e->pub.backend_name, (int)e->pub.device, (long long)e->pub.context_length,
           velo_size_format(&kv, kv_text, sizeof kv_text));
  return VELO_OK;
}

velo_status velo_registry_load(velo_registry *r, const velo_model_spec *spec, velo_error *err) {
  return load_impl(r, spec, false, err);
}

velo_status velo_registry_replace(velo_registry *r, const velo_model_spec *spec, velo_error *err) {
  if (!spec || !spec->name || !*spec->name)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "replace: the model name is missing");
  return load_impl(r, spec, true, err);
}

velo_status velo_registry_unload(velo_registry *r, const char *name, velo_error *err) {
  pthread_mutex_lock(&r->lock);
  entry *e = NULL;
  for (entry *x = r->head; x; x = x->next)
    if (strcmp(x->pub.name, name) == 0) e = x;
  if (!e) {
    pthread_mutex_unlock(&r->lock);
    return velo_error_set(err, VELO_NOT_FOUND, "model '%s' is not loaded", name);
  }
  if (atomic_exchange(&e->unloading, true)) {
    pthread_mutex_unlock(&r->lock);
    return velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is already being unloaded", name);
  }
  atomic_fetch_add(&e->refs, 1); /* ours, while we work outside the lock */
  pthread_mutex_unlock(&r->lock);

  entry_unload_model(e); /* ends requests in flight with UNAVAILABLE */

  pthread_mutex_lock(&r->lock);
  for (entry **p = &r->head; *p; p = &(*p)->next)
    if (*p == e) {
      *p = e->next;
      break;
    }
  pthread_mutex_unlock(&r->lock);
  velo_log(VELO_LOG_INFO, SRC, "model '%s' unloaded", e->pub.name);
  velo_model_entry_release(&e->pub); /* the list's reference */
  velo_model_entry_release(&e->pub); /* ours */
  return VELO_OK;
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
