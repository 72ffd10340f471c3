/*
 * repository.c - the model repository (repository.h): finds the models of
 * a --model-repository directory, reads and strictly validates each one's
 * config.json (json-c), loads and unloads them through the model registry,
 * and keeps each model's state (READY, LOADING, UNLOADING, UNAVAILABLE with
 * the reason) for RepositoryIndex, ModelReady, ServerReady and
 * `velo models`.
 *
 * Locking: repo->mu guards the list of known models and their state
 * fields, and is never held while a model loads or unloads.  Each model
 * has an op mutex held for the whole of one load or unload of it, so two
 * requests for the same model run one after the other, while different
 * models load in parallel.  The registry has its own locks.
 *
 * What the registry says wins: a model is READY exactly when the registry
 * has it loaded (and not unloading), whoever loaded it, so the state can
 * never disagree with what requests see.
 */
#include "repository.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "size.h"

#define SRC "repository"
#define CONFIG_NAME "config.json"
#define CONFIG_MAX_BYTES (1 << 20) /* a config.json is a few hundred bytes */
#define CONFIG_MAX_DEPTH 16
#define MODEL_NAME_MAX 255
#define SHOW_MAX 64 /* bytes of a value or key quoted in a message */

static const char *const allowed_keys =
    "task, file, backend, device, context_length, threads, kv_cache_size, parameters";

/* One model the repository knows (a subdirectory with a config.json). */
typedef struct repo_model {
  char *name;
  pthread_mutex_t op; /* held for a whole load or unload of this model */
  /* Guarded by repo->mu: */
  const char *op_state; /* "LOADING", "UNLOADING", or NULL when idle */
  bool required;        /* loaded at start-up and not unloaded on request since:
                           ServerReady needs it READY */
  bool present;         /* its directory was there at the last scan */
  char *reason;         /* why it is not loaded: last error, "unloaded", ... */
} repo_model;

struct velo_repository {
  char *dir; /* canonical path; NULL: no repository */
  velo_registry *reg;
  velo_model_control control;
  pthread_mutex_t mu;
  repo_model **models; /* pointers stay valid until close */
  size_t n_models, cap_models;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* A model name the repository accepts: 1..255 bytes of letters, digits,
 * '_', '-' and '.', not starting with '.' (so never "." or "..", and never
 * a path). */
static bool valid_model_name(const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len > MODEL_NAME_MAX || name[0] == '.') return false;
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-' || c == '.'))
      return false;
  }
  return true;
}

/* Copies at most SHOW_MAX bytes of s into out (SHOW_MAX + 4 bytes), with
 * "..." when cut.  For keys and values quoted in messages (the server
 * escapes what is not printable before a client sees it). */
static const char *show(const char *s, char *out) {
  size_t len = strlen(s);
  if (len <= SHOW_MAX) {
    memcpy(out, s, len + 1);
  } else {
    memcpy(out, s, SHOW_MAX);
    memcpy(out + SHOW_MAX, "...", 4);
  }
  return out;
}

/* True if path names a directory (following links). */
static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Replaces *slot with a copy of s (keeps the old value if out of memory). */
static void set_string(char **slot, const char *s) {
  char *copy = strdup(s);
  if (!copy) return;
  free(*slot);
  *slot = copy;
}

/* True if the registry has name loaded and not being unloaded. */
static bool registry_ready(velo_registry *reg, const char *name) {
  velo_model_entry *e = velo_registry_acquire(reg, name);
  bool ready = e && !velo_model_entry_unloading(e);
  velo_model_entry_release(e);
  return ready;
}

/* ------------------------------------------------------------------ */
/* The list of known models                                            */
/* ------------------------------------------------------------------ */

/* The known model called name, or NULL.  Caller holds repo->mu. */
static repo_model *find_locked(velo_repository *repo, const char *name) {
  for (size_t i = 0; i < repo->n_models; i++)
    if (strcmp(repo->models[i]->name, name) == 0) return repo->models[i];
  return NULL;
}

/* Adds a model called name (a valid name), or returns the known one.
 * NULL when out of memory.  Caller holds repo->mu. */
static repo_model *add_locked(velo_repository *repo, const char *name) {
  repo_model *rm = find_locked(repo, name);
  if (rm) return rm;
  if (repo->n_models == repo->cap_models) {
    size_t cap = repo->cap_models ? 2 * repo->cap_models : 8;
    repo_model **grown = realloc(repo->models, cap * sizeof *grown);
    if (!grown) return NULL;
    repo->models = grown;
    repo->cap_models = cap;
  }
  rm = calloc(1, sizeof *rm);
  if (!rm || !(rm->name = strdup(name)) || !(rm->reason = strdup("not loaded"))) {
    if (rm) free(rm->name);
    free(rm);
    return NULL;
  }
  pthread_mutex_init(&rm->op, NULL);
  rm->present = true;
  repo->models[repo->n_models++] = rm;
  return rm;
}

/* True if DIR/name/config.json exists, whatever it is (a directory, a
 * FIFO or a dangling link too): reading it then says what is wrong with
 * it, rather than "no config.json". */
static bool has_config(const velo_repository *repo, const char *name) {
  char path[PATH_MAX];
  struct stat st;
  int n = snprintf(path, sizeof path, "%s/%s/" CONFIG_NAME, repo->dir, name);
  return n > 0 && (size_t)n < sizeof path && lstat(path, &st) == 0;
}

/* Reads the repository directory: every subdirectory with a valid name and
 * a config.json becomes (or stays) a known model, present; known models
 * whose directory is gone are marked not present.  With warn, skipped
 * entries are logged (once, at open).  Returns false if the directory
 * cannot be read (errno set). */
static bool scan(velo_repository *repo, bool warn) {
  struct dirent **list = NULL;
  int n = scandir(repo->dir, &list, NULL, alphasort);
  if (n < 0) return false;
  pthread_mutex_lock(&repo->mu);
  for (size_t i = 0; i < repo->n_models; i++) repo->models[i]->present = false;
  pthread_mutex_unlock(&repo->mu);
  for (int i = 0; i < n; i++) {
    const char *name = list[i]->d_name;
    char path[PATH_MAX];
    int w = snprintf(path, sizeof path, "%s/%s", repo->dir, name);
    if (name[0] == '.' || w <= 0 || (size_t)w >= sizeof path || !is_dir(path)) continue;
    if (!valid_model_name(name)) {
      if (warn)
        velo_log(VELO_LOG_WARN, SRC,
                 "%s: '%s' is not a valid model name (1 to %d letters, digits, '_', '-' or '.'): "
                 "skipped",
                 repo->dir, name, MODEL_NAME_MAX);
      continue;
    }
    if (!has_config(repo, name)) {
      if (warn)
        velo_log(VELO_LOG_WARN, SRC, "%s has no " CONFIG_NAME ": not a model, skipped", path);
      continue;
    }
    pthread_mutex_lock(&repo->mu);
    repo_model *rm = add_locked(repo, name);
    if (rm) rm->present = true;
    pthread_mutex_unlock(&repo->mu);
    if (!rm) velo_log(VELO_LOG_ERROR, SRC, "out of memory listing model '%s'", name);
  }
  for (int i = 0; i < n; i++) free(list[i]);
  free(list);
  return true;
}

/* ------------------------------------------------------------------ */
/* config.json                                                         */
/* ------------------------------------------------------------------ */

/* A model's configuration as read from its config.json.  The strings and
 * params point into root, which owns them. */
typedef struct model_config {
  json_object *root;
  const char *task;    /* never NULL after config_read */
  const char *backend; /* NULL: velod's --backend (default auto); may end in ":N" */
  int32_t device;
  bool device_set;     /* the "device" key was given */
  int64_t context_length;
  int32_t threads;
  velo_size kv_cache_size; /* 0/0: not set (velod's --kv-cache-size, else the task's) */
  velo_param *params; /* malloc'd array */
  size_t n_params;
  char *path; /* malloc'd: DIR/name/file, or "" without a file */
} model_config;

static void config_free(model_config *c) {
  if (c->root) json_object_put(c->root);
  free(c->params);
  free(c->path);
  memset(c, 0, sizeof *c);
}

/* The JSON text of v, cut to SHOW_MAX bytes, into out (SHOW_MAX + 4). */
static const char *show_json(json_object *v, char *out) {
  return show(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), out);
}

/* The JSON type of v in words, for messages. */
static const char *json_kind(json_object *v) {
  switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a number with a fraction or exponent";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
  }
  return "a value";
}

/* Reads the whole file at path (at most CONFIG_MAX_BYTES) into a malloc'd
 * buffer.  Errors name the model and the file. */
static velo_status read_small_file(const char *model, const char *path, char **out, size_t *len,
                                   velo_error *err) {
  *out = NULL;
  /* O_NONBLOCK: a FIFO must not block the open; it is refused below. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return velo_error_set(err, errno == ENOENT ? VELO_NOT_FOUND : VELO_PERMISSION_DENIED,
                          "model '%s': cannot open %s: %s", model, path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s is not a regular file (a directory, device, FIFO or a link to "
                          "one); it must be a JSON file",
                          model, path);
  }
  if (st.st_size > CONFIG_MAX_BYTES) {
    close(fd);
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s is %lld bytes; the limit is %d",
                          model, path, (long long)st.st_size, CONFIG_MAX_BYTES);
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return VELO_OK;
}

/* One object key seen by find_duplicate_key: which object it belongs to
 * (numbered in document order) and the key, decoded. */
typedef struct seen_key {
  size_t object;
  char *key;
  size_t at; /* byte offset, to report the first duplicate in the text */
} seen_key;

static int seen_key_cmp(const void *a, const void *b) {
  const seen_key *x = a, *y = b;
  if (x->object != y->object) return x->object < y->object ? -1 : 1;
  int c = strcmp(x->key, y->key);
  if (c) return c;
  return x->at < y->at ? -1 : x->at > y->at;
}

/* Finds a key that appears twice in one object of text, which json-c has
 * already accepted as strict JSON.  json-c keeps the last value of a
 * duplicate key without telling (no flag of its tokener reports it), so
 * this walks the text once more: a small scanner that only tracks strings,
 * nesting and which strings are keys, decodes each key (json-c decodes a
 * key with escapes, so "\u0074ask" equals "task"), then sorts the keys by
 * (object, key) and compares neighbours: O(n log n).  Returns a malloc'd
 * copy of the duplicated key (the first in the text), or NULL if there is
 * none; *oom is set when memory ran out. */
static char *find_duplicate_key(const char *text, size_t len, bool *oom) {
  enum { MAX_NEST = CONFIG_MAX_DEPTH + 4 };
  size_t obj_stack[MAX_NEST]; /* object number, or SIZE_MAX for an array */
  int depth = 0;
  bool expect_key = false;
  size_t n_objects = 0, n = 0, cap = 0;
  seen_key *keys = NULL;
  char *dup = NULL;
  *oom = false;
  for (size_t i = 0; i < len; i++) {
    char ch = text[i];
    if (ch == '{' || ch == '[') {
      if (depth == MAX_NEST) break; /* json-c refused deeper text already */
      obj_stack[depth++] = ch == '{' ? n_objects++ : SIZE_MAX;
      expect_key = ch == '{';
    } else if (ch == '}' || ch == ']') {
      if (depth) depth--;
      expect_key = false;
    } else if (ch == ',') {
      expect_key = depth && obj_stack[depth - 1] != SIZE_MAX;
    } else if (ch == '"') {
      size_t start = i++;
      bool escaped = false;
      while (i < len && text[i] != '"') {
        if (text[i] == '\\') {
          escaped = true;
          i++;
        }
        i++;
      }
      if (!expect_key) continue;
      expect_key = false;
      char *key = NULL;
      if (escaped) { /* let json-c decode the escapes */
        char *lit = strndup(text + start, i + 1 - start);
        json_object *o = lit ? json_tokener_parse(lit) : NULL;
        free(lit);
        if (o && json_object_is_type(o, json_type_string)) key = strdup(json_object_get_string(o));
        if (o) json_object_put(o);
      } else {
        key = strndup(text + start + 1, i - start - 1);
      }
      if (key && n == cap) {
        size_t nc = cap ? 2 * cap : 32;
        seen_key *grown = realloc(keys, nc * sizeof *grown);
        if (grown) keys = grown, cap = nc;
      }
      if (!key || n == cap) {
        free(key);
        *oom = true;
        goto out;
      }
      keys[n++] = (seen_key){.object = obj_stack[depth - 1], .key = key, .at = start};
    }
  }
  if (n > 1) qsort(keys, n, sizeof *keys, seen_key_cmp);
  size_t first_at = SIZE_MAX;
  for (size_t k = 1; k < n; k++)
    if (keys[k].object == keys[k - 1].object && strcmp(keys[k].key, keys[k - 1].key) == 0 &&
        keys[k].at < first_at) {
      first_at = keys[k].at;
      free(dup);
      dup = strdup(keys[k].key);
      if (!dup) *oom = true;
    }
out:
  for (size_t k = 0; k < n; k++) free(keys[k].key);
  free(keys);
  return dup;
}

/* Parses text as one JSON object (strict JSON, valid UTF-8, nothing after
 * it, no key twice in one object).  Errors name the file and the byte
 * offset or the key. */
static velo_status parse_json(const char *model, const char *path, const char *text, size_t len,
                              json_object **out, velo_error *err) {
  *out = NULL;
  if (memchr(text, '\0', len))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s contains a NUL byte", model, path);
  json_tokener *tok = json_tokener_new_ex(CONFIG_MAX_DEPTH);
  if (!tok) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
  json_object *root = json_tokener_parse_ex(tok, text, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t end = json_tokener_get_parse_end(tok);
  json_tokener_free(tok);
  if (!root || jerr != json_tokener_success) {
    if (root) json_object_put(root);
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s is not valid JSON: %s at byte %zu",
                          model, path,
                          jerr == json_tokener_continue ? "unexpected end of file"
                                                        : json_tokener_error_desc(jerr),
                          end);
  }
  for (size_t i = end; i < len; i++)
    if (!strchr(" \t\r\n", text[i])) {
      json_object_put(root);
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': %s: unexpected text after the JSON object at byte %zu", model,
                            path, i);
    }
  if (!json_object_is_type(root, json_type_object)) {
    velo_error_set(err, VELO_INVALID_ARGUMENT,
                   "model '%s': %s must hold a JSON object ({\"task\": ..., \"file\": ...}), got %s",
                   model, path, json_kind(root));
    json_object_put(root);
    return VELO_INVALID_ARGUMENT;
  }
  bool oom = false;
  char *dup = find_duplicate_key(text, len, &oom);
  if (dup || oom) {
    char shown[SHOW_MAX + 4];
    json_object_put(root);
    if (oom) {
      free(dup);
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    }
    velo_error_set(err, VELO_INVALID_ARGUMENT,
                   "model '%s': %s: key '%s' appears twice in one object; each key may appear once",
                   model, path, show(dup, shown));
    free(dup);
    return VELO_INVALID_ARGUMENT;
  }
  *out = root;
  return VELO_OK;
}

/* A non-empty string value without NUL characters, or an error naming key. */
static velo_status get_string(const char *model, const char *path, const char *key, json_object *v,
                              const char **out, velo_error *err) {
  char shown[SHOW_MAX + 4];
  if (!json_object_is_type(v, json_type_string))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key '%s' must be a string, got %s %s",
                          model, path, key, json_kind(v), show_json(v, shown));
  const char *s = json_object_get_string(v);
  int len = json_object_get_string_len(v);
  if (len == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key '%s' must not be empty", model,
                          path, key);
  if ((size_t)len != strlen(s))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key '%s' contains a NUL character",
                          model, path, key);
  *out = s;
  return VELO_OK;
}

/* True if json-c clamped the integer v: it stores a number beyond 64 bits
 * as INT64_MIN or UINT64_MAX without an error, so these two values (and
 * INT64_MAX, which a value between 2^63 and 2^64 - 1 reads as) are taken
 * as out of range - no setting needs them. */
static bool int_saturated(json_object *v) {
  int64_t x = json_object_get_int64(v);
  return x == INT64_MIN || x == INT64_MAX;
}

/* An integer value in [lo, hi], or an error naming key and the range. */
static velo_status get_int(const char *model, const char *path, const char *key, json_object *v,
                           int64_t lo, int64_t hi, int64_t *out, velo_error *err) {
  char shown[SHOW_MAX + 4];
  int64_t x = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : 0;
  if (json_object_is_type(v, json_type_int) && int_saturated(v))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key '%s' must be an integer from %lld to %lld, got a number out "
                          "of range (beyond 64 bits)",
                          model, path, key, (long long)lo, (long long)hi);
  if (!json_object_is_type(v, json_type_int) || x < lo || x > hi)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key '%s' must be an integer from %lld to %lld, got %s", model,
                          path, key, (long long)lo, (long long)hi, show_json(v, shown));
  *out = x;
  return VELO_OK;
}

/* The "kv_cache_size" value: a JSON integer (token slots) or a string in
 * the forms of velo_size_parse (size.h), the same parser as velod's
 * --kv-cache-size.  Errors name the key, the value and the allowed forms. */
static velo_status get_kv_cache_size(const char *model, const char *path, json_object *v,
                                     velo_size *out, velo_error *err) {
  char shown[SHOW_MAX + 4], number[32];
  const char *text;
  if (json_object_is_type(v, json_type_int)) {
    if (int_saturated(v))
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': %s: key 'kv_cache_size' is a number out of range (beyond 64 "
                            "bits); allowed: " VELO_SIZE_FORMS,
                            model, path);
    snprintf(number, sizeof number, "%lld", (long long)json_object_get_int64(v));
    text = number;
  } else if (json_object_is_type(v, json_type_string)) {
    text = json_object_get_string(v);
    if ((size_t)json_object_get_string_len(v) != strlen(text))
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': %s: key 'kv_cache_size' contains a NUL character", model, path);
  } else {
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key 'kv_cache_size' must be an integer (token slots) or a "
                          "string such as \"512MiB\", got %s %s",
                          model, path, json_kind(v), show_json(v, shown));
  }
  velo_error perr;
  velo_error_init(&perr);
  if (velo_size_parse(text, out, &perr) != VELO_OK)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key 'kv_cache_size': %s", model,
                          path, perr.message);
  return VELO_OK;
}

/* The "parameters" object as a velo_param list (pointing into v). */
static velo_status get_params(const char *model, const char *path, json_object *v, model_config *c,
                              velo_error *err) {
  char shown[SHOW_MAX + 4], shown_key[SHOW_MAX + 4];
  if (!json_object_is_type(v, json_type_object))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key 'parameters' must be an object of strings, numbers and "
                          "booleans, got %s %s",
                          model, path, json_kind(v), show_json(v, shown));
  size_t n = (size_t)json_object_object_length(v);
  c->params = calloc(n ? n : 1, sizeof *c->params);
  if (!c->params) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  json_object_object_foreach(v, key, val) {
    velo_param *p = &c->params[c->n_params];
    if (key[0] == '\0')
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: a key of 'parameters' is empty",
                            model, path);
    p->struct_size = sizeof *p;
    p->key = key;
    switch (val ? json_object_get_type(val) : json_type_null) {
      case json_type_boolean:
        p->type = VELO_PARAM_BOOL;
        p->value.b = json_object_get_boolean(val) != 0;
        break;
      case json_type_int:
        p->type = VELO_PARAM_INT64;
        p->value.i = json_object_get_int64(val);
        if (int_saturated(val))
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "model '%s': %s: parameters.%s is out of range: integers must be from "
                                "%lld to %lld",
                                model, path, show(key, shown_key), (long long)INT64_MIN + 1,
                                (long long)INT64_MAX - 1);
        break;
      case json_type_double:
        p->type = VELO_PARAM_DOUBLE;
        p->value.d = json_object_get_double(val);
        if (!isfinite(p->value.d))
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "model '%s': %s: parameters.%s must be a finite number", model, path,
                                show(key, shown_key));
        break;
      case json_type_string:
        p->type = VELO_PARAM_STRING;
        p->value.s.ptr = json_object_get_string(val);
        p->value.s.len = (size_t)json_object_get_string_len(val);
        break;
      default:
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': %s: parameters.%s must be a string, a number or a boolean, "
                              "got %s",
                              model, path, show(key, shown_key), val ? json_kind(val) : "null");
    }
    c->n_params++;
  }
  return VELO_OK;
}

/* Checks the "file" value: relative, no ".." component, an existing
 * regular file under the model's directory; sets c->path. */
static velo_status check_file(const velo_repository *repo, const char *model, const char *path,
                              const char *file, model_config *c, velo_error *err) {
  char shown[SHOW_MAX + 4];
  if (file[0] == '/')
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key 'file' is the absolute path '%s'; give a path "
                          "relative to the model's directory %s/%s",
                          model, path, show(file, shown), repo->dir, model);
  for (const char *p = file; *p;) {
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (len == 2 && p[0] == '.' && p[1] == '.')
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': %s: key 'file' ('%s') leaves the model's directory "
                            "through '..'; the file must be inside %s/%s",
                            model, path, show(file, shown), repo->dir, model);
    p += len;
    while (*p == '/') p++;
  }
  size_t need = strlen(repo->dir) + strlen(model) + strlen(file) + 3;
  if (need > PATH_MAX)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key 'file' is too long", model, path);
  c->path = malloc(need);
  if (!c->path) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  snprintf(c->path, need, "%s/%s/%s", repo->dir, model, file);
  struct stat st;
  if (stat(c->path, &st) != 0)
    return velo_error_set(err, errno == ENOENT ? VELO_NOT_FOUND : VELO_PERMISSION_DENIED,
                          "model '%s': %s: key 'file': %s: %s", model, path, c->path, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key 'file': %s is not a regular file",
                          model, path, c->path);
  /* A symbolic link may point anywhere (a shared model file linked into
   * the repository is common): links are made by whoever runs the server,
   * while "file" itself cannot name a path outside the model's directory. */
  return VELO_OK;
}

/* The built-in tasks that cannot work without a model file: for them a
 * missing "file" is a config error.  Other tasks (identity, third-party
 * ones) get path "" and say themselves if they need a file. */
static bool task_needs_file(const char *task) {
  return strcmp(task, "text-generation") == 0 || strcmp(task, "image-classification") == 0;
}

/* Reads and validates DIR/name/config.json into *c (config_free it, also
 * after an error).  Errors name the model, the file, the key and what is
 * allowed: INVALID_ARGUMENT for a bad config, NOT_FOUND for a missing
 * config.json or model file. */
static velo_status config_read(const velo_repository *repo, const char *name, model_config *c,
                               velo_error *err) {
  char path[PATH_MAX];
  char *text = NULL;
  size_t len = 0;
  memset(c, 0, sizeof *c);
  snprintf(path, sizeof path, "%s/%s/" CONFIG_NAME, repo->dir, name);
  velo_status st = read_small_file(name, path, &text, &len, err);
  if (st == VELO_OK) st = parse_json(name, path, text, len, &c->root, err);
  free(text);
  if (st != VELO_OK) return st;

  const char *file = NULL;
  int64_t x;
  c->task = "text-generation";
  json_object_object_foreach(c->root, key, v) {
    char shown[SHOW_MAX + 4];
    if (strcmp(key, "task") == 0) {
      st = get_string(name, path, key, v, &c->task, err);
    } else if (strcmp(key, "file") == 0) {
      st = get_string(name, path, key, v, &file, err);
    } else if (strcmp(key, "backend") == 0) {
      st = get_string(name, path, key, v, &c->backend, err);
    } else if (strcmp(key, "device") == 0) {
      st = get_int(name, path, key, v, 0, 1023, &x, err);
      c->device = (int32_t)x;
      c->device_set = true;
    } else if (strcmp(key, "context_length") == 0) {
      st = get_int(name, path, key, v, 0, INT32_MAX, &x, err);
      c->context_length = x;
    } else if (strcmp(key, "threads") == 0) {
      st = get_int(name, path, key, v, 0, 1024, &x, err);
      c->threads = (int32_t)x;
    } else if (strcmp(key, "kv_cache_size") == 0) {
      st = get_kv_cache_size(name, path, v, &c->kv_cache_size, err);
    } else if (strcmp(key, "parameters") == 0) {
      st = get_params(name, path, v, c, err);
    } else {
      st = velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: unknown key '%s' (allowed: %s)",
                          name, path, show(key, shown), allowed_keys);
    }
    if (st != VELO_OK) return st;
  }
  if (c->backend) { /* "cuda", "cuda:1", "auto"; a device in both places must agree */
    char bname[64];
    int32_t dev;
    bool has_dev;
    velo_error e;
    velo_error_init(&e);
    if (velo_backend_choice_parse(c->backend, bname, sizeof bname, &dev, &has_dev, &e) != VELO_OK)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %s: key 'backend': %s", name, path,
                            e.message);
    if (has_dev && c->device_set && dev != c->device)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': %s: key 'backend' names device %d ('%s') but key 'device' is %d: "
                            "give the device once",
                            name, path, (int)dev, c->backend, (int)c->device);
  }
  if (file) return check_file(repo, name, path, file, c, err);
  if (task_needs_file(c->task))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': %s: key 'file' is missing: task '%s' needs a model file (a "
                          "path relative to %s/%s)",
                          name, path, c->task, repo->dir, name);
  c->path = strdup("");
  if (!c->path) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Loading and unloading                                               */
/* ------------------------------------------------------------------ */

/* Makes err's message name the model ("model 'x': ...") unless it does
 * already: the registry and the plugins name the file or nothing. */
static void name_model_in_error(const char *name, velo_error *err) {
  char quoted[MODEL_NAME_MAX + 3], copy[VELO_ERROR_MESSAGE_MAX];
  snprintf(quoted, sizeof quoted, "'%s'", name);
  if (strstr(err->message, quoted)) return;
  snprintf(copy, sizeof copy, "%s", err->message[0] ? err->message : velo_status_name(err->code));
  int head = snprintf(err->message, sizeof err->message, "model %s: ", quoted);
  if (head <= 0 || (size_t)head >= sizeof err->message) return;
  size_t len = strlen(copy), room = sizeof err->message - (size_t)head - 1;
  if (len > room) len = room; /* a long message is cut */
  memcpy(err->message + head, copy, len);
  err->message[(size_t)head + len] = '\0';
}

/* Sets rm's op state and, when reason is not NULL, its reason. */
static void set_state(velo_repository *repo, repo_model *rm, const char *op_state, const char *reason) {
  pthread_mutex_lock(&repo->mu);
  rm->op_state = op_state;
  if (reason) set_string(&rm->reason, reason);
  pthread_mutex_unlock(&repo->mu);
}

/* Loads (or reloads) the known model rm; the caller holds rm->op.  The
 * new model is loaded next to a loaded old one and swapped in only once it
 * is ready (velo_registry_replace), so a broken config or a failed load
 * leaves the old model serving, and there is no gap. */
static velo_status load_model(velo_repository *repo, repo_model *rm, velo_error *err) {
  model_config c;
  velo_error local;
  if (!err) {
    velo_error_init(&local);
    err = &local;
  }
  set_state(repo, rm, "LOADING", NULL);
  velo_status st = config_read(repo, rm->name, &c, err);
  if (st != VELO_OK) {
    bool still_loaded = registry_ready(repo->reg, rm->name);
    pthread_mutex_lock(&repo->mu);
    rm->op_state = NULL;
    if (!still_loaded) set_string(&rm->reason, err->message);
    pthread_mutex_unlock(&repo->mu);
    config_free(&c);
    return st;
  }
  velo_model_spec spec = {
      .name = rm->name,
      .path = c.path,
      .task = c.task,
      .backend = c.backend,
      .device = c.device,
      .context_length = c.context_length,
      .n_threads = c.threads,
      .n_params = c.n_params,
      .params = c.params,
      .kv_cache_tokens = c.kv_cache_size.tokens, /* 0/0: the registry's default */
      .kv_cache_bytes = c.kv_cache_size.bytes,
  };
  /* Replace, not unload + load: the old model serves until the new one is
   * ready, and stays if the new one fails to load. */
  st = velo_registry_replace(repo->reg, &spec, err);
  config_free(&c);
  if (st != VELO_OK) name_model_in_error(rm->name, err);
  bool still_loaded = st != VELO_OK && registry_ready(repo->reg, rm->name);
  pthread_mutex_lock(&repo->mu);
  rm->op_state = NULL;
  if (!still_loaded) set_string(&rm->reason, st == VELO_OK ? "" : err->message);
  pthread_mutex_unlock(&repo->mu);
  return st;
}

/* Loads rm at start-up: a failure is logged and leaves it UNAVAILABLE.
 * Returns true when it loaded. */
static bool startup_load(velo_repository *repo, repo_model *rm) {
  velo_error err;
  velo_error_init(&err);
  pthread_mutex_lock(&repo->mu);
  rm->required = true;
  pthread_mutex_unlock(&repo->mu);
  pthread_mutex_lock(&rm->op);
  velo_status st = load_model(repo, rm, &err);
  pthread_mutex_unlock(&rm->op);
  if (st != VELO_OK)
    velo_log(VELO_LOG_ERROR, SRC, "model '%s' is UNAVAILABLE: %s: %s", rm->name, velo_status_name(st),
             err.message[0] ? err.message : "(no message)");
  return st == VELO_OK;
}

/* The names of the repository's present models ("a, b" or "none"). */
static void model_names(velo_repository *repo, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  pthread_mutex_lock(&repo->mu);
  for (size_t i = 0; i < repo->n_models && used < size; i++) {
    if (!repo->models[i]->present) continue;
    int w = snprintf(buf + used, size - used, "%s%s", used ? ", " : "", repo->models[i]->name);
    if (w > 0) used += (size_t)w;
  }
  pthread_mutex_unlock(&repo->mu);
  if (!buf[0]) snprintf(buf, size, "none");
}

/* The known, present model name (rescanning for one added since), or
 * NULL after filling err: INVALID_ARGUMENT for a malformed name,
 * NOT_FOUND when the repository has no such model. */
static repo_model *lookup(velo_repository *repo, const char *name, velo_error *err) {
  if (!name || !valid_model_name(name)) {
    velo_error_set(err, VELO_INVALID_ARGUMENT,
                   "'%.64s' is not a model name of the repository: names are 1 to %d letters, digits, "
                   "'_', '-' or '.', not starting with '.'",
                   name ? name : "", MODEL_NAME_MAX);
    return NULL;
  }
  repo_model *rm = NULL;
  if (has_config(repo, name)) {
    pthread_mutex_lock(&repo->mu);
    rm = add_locked(repo, name);
    if (rm) rm->present = true;
    pthread_mutex_unlock(&repo->mu);
    if (!rm) velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    return rm;
  }
  pthread_mutex_lock(&repo->mu);
  rm = find_locked(repo, name);
  if (rm) rm->present = false;
  pthread_mutex_unlock(&repo->mu);
  char names[1024];
  scan(repo, false);
  model_names(repo, names, sizeof names);
  velo_error_set(err, VELO_NOT_FOUND,
                 "model '%s' is not in the repository %s (no %s/%s/" CONFIG_NAME "); its models: %s",
                 name, repo->dir, repo->dir, name, names);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* The interface                                                       */
/* ------------------------------------------------------------------ */

void velo_repository_close(velo_repository *repo) {
  if (!repo) return;
  for (size_t i = 0; i < repo->n_models; i++) {
    pthread_mutex_destroy(&repo->models[i]->op);
    free(repo->models[i]->name);
    free(repo->models[i]->reason);
    free(repo->models[i]);
  }
  free(repo->models);
  pthread_mutex_destroy(&repo->mu);
  free(repo->dir);
  free(repo);
}

velo_status velo_repository_open(const char *dir, velo_registry *reg, velo_model_control control,
                                 const char *const *startup_models, size_t n_startup,
                                 velo_repository **out, velo_error *err) {
  if (!reg || !out) return velo_error_set(err, VELO_INVALID_ARGUMENT, "repository: no registry");
  if (control != VELO_MODEL_CONTROL_NONE && control != VELO_MODEL_CONTROL_EXPLICIT)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "repository: model control %d is neither none nor explicit",
                          (int)control);
  velo_repository *repo = calloc(1, sizeof *repo);
  if (!repo) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  repo->reg = reg;
  repo->control = control;
  pthread_mutex_init(&repo->mu, NULL);
  if (!dir) {
    *out = repo;
    return VELO_OK;
  }
  repo->dir = realpath(dir, NULL);
  if (!repo->dir) {
    int e = errno;
    velo_repository_close(repo);
    return velo_error_set(err, e == ENOENT ? VELO_NOT_FOUND : VELO_INVALID_ARGUMENT,
                          "model repository %s: %s", dir, strerror(e));
  }
  if (!is_dir(repo->dir)) {
    velo_repository_close(repo);
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model repository %s is not a directory", dir);
  }
  if (!scan(repo, true)) {
    velo_status st = velo_error_set(err, VELO_PERMISSION_DENIED, "model repository %s cannot be read: %s",
                                    dir, strerror(errno));
    velo_repository_close(repo);
    return st;
  }

  /* Which models to load now. */
  bool all = control == VELO_MODEL_CONTROL_NONE;
  if (control == VELO_MODEL_CONTROL_EXPLICIT)
    for (size_t i = 0; i < n_startup; i++) {
      if (strcmp(startup_models[i], "*") == 0) {
        all = true;
        continue;
      }
      velo_error lerr;
      velo_error_init(&lerr);
      if (!lookup(repo, startup_models[i], &lerr)) {
        velo_error_set(err, lerr.code, "--load-model: %s", lerr.message);
        velo_repository_close(repo);
        return lerr.code;
      }
    }
  size_t n_ready = 0, n_failed = 0;
  for (size_t i = 0; i < repo->n_models; i++) { /* only open() adds models now */
    repo_model *rm = repo->models[i];
    bool want = all;
    for (size_t k = 0; k < n_startup && !want && control == VELO_MODEL_CONTROL_EXPLICIT; k++)
      want = strcmp(startup_models[k], rm->name) == 0;
    if (!want) continue;
    if (startup_load(repo, rm))
      n_ready++;
    else
      n_failed++;
  }
  velo_log(n_failed ? VELO_LOG_WARN : VELO_LOG_INFO, SRC,
           "model repository %s: %zu model(s), %zu loaded, %zu UNAVAILABLE (model control %s)%s",
           repo->dir, repo->n_models, n_ready, n_failed,
           control == VELO_MODEL_CONTROL_NONE ? "none" : "explicit",
           n_failed ? "; ServerReady is false until they load" : "");
  *out = repo;
  return VELO_OK;
}

velo_model_control velo_repository_control(const velo_repository *repo) { return repo->control; }

/* Orders index rows by name. */
static int row_cmp(const void *a, const void *b) {
  return strcmp(((const velo_repository_model *)a)->name, ((const velo_repository_model *)b)->name);
}

/* Fills row with copies of name, state and reason; false if out of memory. */
static bool row_set(velo_repository_model *row, const char *name, const char *state, const char *reason) {
  row->name = strdup(name);
  row->state = strdup(state);
  row->reason = strdup(reason);
  return row->name && row->state && row->reason;
}

size_t velo_repository_index(velo_repository *repo, bool ready_only, velo_repository_model **out) {
  *out = NULL;
  if (repo->dir) scan(repo, false);
  velo_model_entry **loaded = NULL;
  size_t n_loaded = velo_registry_list(repo->reg, &loaded);

  pthread_mutex_lock(&repo->mu);
  size_t cap = repo->n_models + n_loaded;
  velo_repository_model *rows = calloc(cap ? cap : 1, sizeof *rows);
  size_t n = 0;
  bool ok = rows != NULL;
  for (size_t i = 0; ok && i < repo->n_models; i++) {
    repo_model *rm = repo->models[i];
    velo_model_entry *e = NULL;
    for (size_t k = 0; k < n_loaded && !e; k++)
      if (strcmp(loaded[k]->name, rm->name) == 0) e = loaded[k];
    const char *state, *reason = "";
    if (rm->op_state) state = rm->op_state;
    else if (e) state = velo_model_entry_unloading(e) ? "UNLOADING" : "READY";
    else state = "UNAVAILABLE", reason = rm->reason[0] ? rm->reason : "not loaded";
    if (!rm->present && !e && !rm->op_state) continue; /* gone from disk, not loaded */
    if (ready_only && strcmp(state, "READY") != 0) continue;
    ok = row_set(&rows[n++], rm->name, state, reason);
  }
  for (size_t k = 0; ok && k < n_loaded; k++) { /* loaded otherwise (--model) */
    if (find_locked(repo, loaded[k]->name)) continue;
    const char *state = velo_model_entry_unloading(loaded[k]) ? "UNLOADING" : "READY";
    if (ready_only && strcmp(state, "READY") != 0) continue;
    ok = row_set(&rows[n++], loaded[k]->name, state, "");
  }
  pthread_mutex_unlock(&repo->mu);
  for (size_t k = 0; k < n_loaded; k++) velo_model_entry_release(loaded[k]);
  free(loaded);
  if (!ok) {
    velo_log(VELO_LOG_ERROR, SRC, "out of memory listing the repository");
    velo_repository_index_free(rows, n);
    return 0;
  }
  qsort(rows, n, sizeof *rows, row_cmp);
  if (n == 0) {
    free(rows);
    rows = NULL;
  }
  *out = rows;
  return n;
}

void velo_repository_index_free(velo_repository_model *rows, size_t n) {
  if (!rows) return;
  for (size_t i = 0; i < n; i++) {
    free(rows[i].name);
    free(rows[i].state);
    free(rows[i].reason);
  }
  free(rows);
}

/* FAILED_PRECONDITION for load/unload under control NONE. */
static velo_status refuse_control_none(const char *what, const char *name, velo_error *err) {
  return velo_error_set(err, VELO_FAILED_PRECONDITION,
                        "cannot %s model '%.64s': model control is 'none' (start velod with "
                        "--model-control explicit to load and unload models at run time)",
                        what, name ? name : "");
}

velo_status velo_repository_load(velo_repository *repo, const char *name, velo_error *err) {
  if (repo->control == VELO_MODEL_CONTROL_NONE) return refuse_control_none("load", name, err);
  if (!repo->dir)
    return velo_error_set(err, VELO_NOT_FOUND,
                          "cannot load model '%.64s': velod has no model repository (start it with "
                          "--model-repository DIR)",
                          name ? name : "");
  repo_model *rm = lookup(repo, name, err);
  if (!rm) return err ? err->code : VELO_NOT_FOUND;
  pthread_mutex_lock(&rm->op);
  velo_status st = load_model(repo, rm, err);
  pthread_mutex_unlock(&rm->op);
  if (st == VELO_OK)
    velo_log(VELO_LOG_INFO, SRC, "model '%s' loaded on request", rm->name);
  else
    velo_log(VELO_LOG_WARN, SRC, "model '%s': load request failed: %s", rm->name,
             err ? err->message : velo_status_name(st));
  return st;
}

velo_status velo_repository_unload(velo_repository *repo, const char *name, velo_error *err) {
  if (repo->control == VELO_MODEL_CONTROL_NONE) return refuse_control_none("unload", name, err);
  if (!name || !name[0]) return velo_error_set(err, VELO_INVALID_ARGUMENT, "unload: the model name is empty");
  pthread_mutex_lock(&repo->mu);
  repo_model *rm = find_locked(repo, name);
  pthread_mutex_unlock(&repo->mu);
  if (!rm) return velo_registry_unload(repo->reg, name, err); /* a --model model, or none */

  pthread_mutex_lock(&rm->op);
  set_state(repo, rm, "UNLOADING", NULL);
  velo_status st = velo_registry_unload(repo->reg, name, err);
  pthread_mutex_lock(&repo->mu);
  rm->op_state = NULL;
  rm->required = false; /* also when it was not loaded: nothing is asked of it now */
  if (st == VELO_OK) set_string(&rm->reason, "unloaded");
  pthread_mutex_unlock(&repo->mu);
  pthread_mutex_unlock(&rm->op);
  if (st == VELO_OK) velo_log(VELO_LOG_INFO, SRC, "model '%s' unloaded on request", name);
  return st;
}

bool velo_repository_ready(velo_repository *repo, char *why, size_t why_size) {
  if (why && why_size) why[0] = '\0';
  pthread_mutex_lock(&repo->mu);
  repo_model *bad = NULL;
  for (size_t i = 0; i < repo->n_models && !bad; i++) {
    repo_model *rm = repo->models[i];
    if (rm->required && (rm->op_state || !registry_ready(repo->reg, rm->name))) bad = rm;
  }
  if (bad && why && why_size)
    snprintf(why, why_size, "model '%s' is %s%s%s", bad->name, bad->op_state ? bad->op_state : "UNAVAILABLE",
             bad->op_state ? "" : ": ", bad->op_state ? "" : (bad->reason[0] ? bad->reason : "not loaded"));
  pthread_mutex_unlock(&repo->mu);
  return bad == NULL;
}

const char *velo_repository_model_state(velo_repository *repo, const char *name, char *reason,
                                        size_t reason_size) {
  if (reason && reason_size) reason[0] = '\0';
  if (!name) return "UNAVAILABLE";
  pthread_mutex_lock(&repo->mu);
  repo_model *rm = find_locked(repo, name);
  const char *state = rm ? rm->op_state : NULL;
  if (!state) {
    velo_model_entry *e = velo_registry_acquire(repo->reg, name);
    if (e) state = velo_model_entry_unloading(e) ? "UNLOADING" : "READY";
    velo_model_entry_release(e);
  }
  if (!state) {
    state = "UNAVAILABLE";
    if (reason && reason_size)
      snprintf(reason, reason_size, "%s", rm ? (rm->reason[0] ? rm->reason : "not loaded") : "unknown model");
  }
  pthread_mutex_unlock(&repo->mu);
  return state;
}
