/*
 * plugin_host.c - finds, loads, version-checks and unloads plugins.
 *
 * Loading goes through libltdl.  libltdl reports most dlopen failures as
 * "file not found", which hides the real reason (an undefined symbol, a
 * missing dependency), so every file is first opened with dlopen(RTLD_NOW)
 * and dlerror() is logged when that fails.  RTLD_NOW also makes a plugin
 * with unresolved symbols fail here, at load, rather than at its first call.
 */
#include "plugin_host.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <ltdl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define SRC "plugins"
#define MAX_DIRS 32

struct velo_plugin {
  char *path;
  lt_dlhandle handle;
  const velo_plugin_descriptor *desc;
  bool initialised;
};

struct velo_plugin_host {
  const velo_host *host;
  velo_plugin *plugins;
  size_t n_plugins, cap_plugins;
  char *dirs[MAX_DIRS];
  const char *dir_origin[MAX_DIRS]; /* "--plugin-dir", "VELO_PLUGIN_PATH", or NULL: a default */
  size_t n_dirs;
};

const char *velo_plugin_kind_name(velo_plugin_kind kind) {
  switch (kind) {
    case VELO_PLUGIN_BACKEND: return "backend";
    case VELO_PLUGIN_TASK: return "task";
  }
  return "unknown";
}

/* Adds dir to the search list unless it is empty or already there.
 * origin (a static string) names where an explicitly given directory came
 * from, so that a missing one is reported; NULL for the default locations,
 * which may legitimately be missing.  A directory given both ways keeps
 * its first origin. */
static void add_dir(velo_plugin_host *ph, const char *dir, const char *origin) {
  if (!dir || !*dir || ph->n_dirs == MAX_DIRS) return;
  for (size_t i = 0; i < ph->n_dirs; i++)
    if (strcmp(ph->dirs[i], dir) == 0) return;
  char *copy = strdup(dir);
  if (!copy) return;
  ph->dir_origin[ph->n_dirs] = origin;
  ph->dirs[ph->n_dirs++] = copy;
}

/* The directory of the running binary joined with rel, or NULL. */
static char *exe_relative(const char *rel) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = '\0';
  size_t len = strlen(exe) + 1 + strlen(rel) + 1;
  char *out = malloc(len);
  if (!out) return NULL;
  snprintf(out, len, "%s/%s", exe, rel);
  char *real = realpath(out, NULL);
  if (real) {
    free(out);
    return real;
  }
  return out;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_plugin_name(const char *name) {
  size_t n = strlen(name);
  return strncmp(name, "libvelo-", 8) == 0 && n > 11 && strcmp(name + n - 3, ".so") == 0;
}

/* Appends "; " (unless first) and a formatted problem to why[0..size),
 * keeping it NUL-terminated; *used counts what is there. */
__attribute__((format(printf, 4, 5))) static void add_problem(char *why, size_t size, size_t *used,
                                                            const char *fmt, ...) {
  va_list ap;
  int w;

  if (*used >= size) return;
  if (*used) {
    w = snprintf(why + *used, size - *used, "; ");
    if (w > 0) *used += (size_t)w;
    if (*used >= size) return;
  }
  va_start(ap, fmt);
  w = vsnprintf(why + *used, size - *used, fmt, ap);
  va_end(ap);
  if (w > 0) *used += (size_t)w;
}

/* Checks the members of a descriptor whose size and ABI version are
 * already known to be right.  True when usable; otherwise why (size >= 1)
 * gets every member that is wrong, e.g. "no name", "kind backend but no
 * backend table" or "backend table struct_size 40 < 112 expected", joined
 * by "; ". */
static bool descriptor_ok(const velo_plugin_descriptor *d, char *why, size_t size) {
  size_t used = 0;

  why[0] = '\0';
  if (!d->name || !d->name[0]) add_problem(why, size, &used, "no name");
  switch (d->kind) {
    case VELO_PLUGIN_BACKEND:
      if (!d->backend)
        add_problem(why, size, &used, "kind backend but no backend table");
      else if (d->backend->struct_size < sizeof(velo_backend_iface))
        add_problem(why, size, &used, "backend table struct_size %u < %zu expected",
                    (unsigned)d->backend->struct_size, sizeof(velo_backend_iface));
      break;
    case VELO_PLUGIN_TASK:
      if (!d->task)
        add_problem(why, size, &used, "kind task but no task table");
      else if (d->task->struct_size < offsetof(velo_task_iface, get_extension))
        add_problem(why, size, &used, "task table struct_size %u < %zu expected",
                    (unsigned)d->task->struct_size, offsetof(velo_task_iface, get_extension));
      break;
    default:
      add_problem(why, size, &used, "unknown kind %d (backend is %d, task %d)", (int)d->kind,
                  (int)VELO_PLUGIN_BACKEND, (int)VELO_PLUGIN_TASK);
      break;
  }
  return used == 0;
}

/* Tries one file; on any failure logs path + reason and returns false. */
static bool try_load(velo_plugin_host *ph, const char *path) {
  /* 1. The real loader error, if there is one. */
  void *probe = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!probe) {
    const char *why = dlerror();
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: cannot load: %s", path, why ? why : "unknown error");
    return false;
  }
  /* 2. Load through libltdl (keeps its own reference). */
  lt_dlhandle h = lt_dlopen(path);
  dlclose(probe);
  if (!h) {
    const char *why = lt_dlerror();
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: cannot load: %s", path, why ? why : "unknown error");
    return false;
  }
  velo_plugin_entry_fn entry = (velo_plugin_entry_fn)(uintptr_t)lt_dlsym(h, VELO_PLUGIN_ENTRY_SYMBOL);
  if (!entry) {
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: not a Velo plugin (no symbol %s)", path,
             VELO_PLUGIN_ENTRY_SYMBOL);
    lt_dlclose(h);
    return false;
  }
  const velo_plugin_descriptor *d = entry(VELO_ABI_MAJOR, VELO_ABI_MINOR);
  if (!d) {
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: the plugin refused host ABI %d.%d", path,
             VELO_ABI_MAJOR, VELO_ABI_MINOR);
    lt_dlclose(h);
    return false;
  }
  if (d->struct_size < offsetof(velo_plugin_descriptor, backend) + sizeof(void *)) {
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: descriptor too small (%u bytes)", path,
             (unsigned)d->struct_size);
    lt_dlclose(h);
    return false;
  }
  if (d->abi_major != VELO_ABI_MAJOR || d->abi_minor > VELO_ABI_MINOR) {
    velo_log(VELO_LOG_WARN, SRC,
             "skipping %s: plugin ABI %u.%u is incompatible with host ABI %d.%d (major must be "
             "equal, plugin minor <= host minor)",
             path, (unsigned)d->abi_major, (unsigned)d->abi_minor, VELO_ABI_MAJOR, VELO_ABI_MINOR);
    lt_dlclose(h);
    return false;
  }
  const char *name = d->name ? d->name : "";
  char why[256];
  if (!descriptor_ok(d, why, sizeof why)) {
    velo_log(VELO_LOG_WARN, SRC, "skipping %s: malformed descriptor (name '%s', kind %d): %s", path,
             name, (int)d->kind, why);
    lt_dlclose(h);
    return false;
  }
  const velo_plugin *dup = velo_plugin_host_find(ph, d->kind, name);
  if (dup) {
    velo_log(VELO_LOG_INFO, SRC, "skipping %s: %s plugin '%s' already loaded from %s", path,
             velo_plugin_kind_name(d->kind), name, dup->path);
    lt_dlclose(h);
    return false;
  }
  if (d->init) {
    velo_error err;
    velo_error_init(&err);
    velo_status st = d->init(ph->host, &err);
    if (st != VELO_OK) {
      velo_log(VELO_LOG_WARN, SRC, "skipping %s: init failed: %s: %s", path, velo_status_name(st),
               err.message);
      lt_dlclose(h);
      return false;
    }
  }
  if (ph->n_plugins == ph->cap_plugins) {
    size_t cap = ph->cap_plugins ? 2 * ph->cap_plugins : 8;
    velo_plugin *p = realloc(ph->plugins, cap * sizeof *p);
    if (!p) {
      if (d->fini) d->fini();
      lt_dlclose(h);
      return false;
    }
    ph->plugins = p;
    ph->cap_plugins = cap;
  }
  velo_plugin *p = &ph->plugins[ph->n_plugins];
  p->path = strdup(path);
  if (!p->path) {
    if (d->fini) d->fini();
    lt_dlclose(h);
    return false;
  }
  p->handle = h;
  p->desc = d;
  p->initialised = true;
  ph->n_plugins++;
  velo_log(VELO_LOG_DEBUG, SRC, "loaded %s plugin '%s' %s from %s", velo_plugin_kind_name(d->kind),
           name, d->version ? d->version : "", path);
  /* A backend that cannot run here stays listed (--list-plugins shows its
   * probe result) but is never chosen; say so now, with the reason. */
  char reason[400];
  if (velo_plugin_probe(p, reason, sizeof reason) != VELO_OK)
    velo_log(VELO_LOG_WARN, SRC, "%s plugin '%s' (%s) is unavailable and will not be used: %s",
             velo_plugin_kind_name(d->kind), name, path,
             strncmp(reason, "unavailable: ", 13) == 0 ? reason + 13 : reason);
  return true;
}

/* Loads every libvelo-*.so in dir, in name order.  A missing default
 * directory (origin NULL) is fine; a missing or unreadable explicit one
 * (origin names the option or variable) is logged as a warning. */
static void scan_dir(velo_plugin_host *ph, const char *dir, const char *origin) {
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    if (origin && (e == ENOENT || e == ENOTDIR))
      velo_log(VELO_LOG_WARN, SRC, "plugin directory %s (from %s) %s: ignored", dir, origin,
               e == ENOENT ? "does not exist" : "is not a directory");
    else if (e != ENOENT)
      velo_log(VELO_LOG_WARN, SRC, "cannot read plugin directory %s%s%s%s: %s", dir,
               origin ? " (from " : "", origin ? origin : "", origin ? ")" : "", strerror(e));
    return;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_plugin_name(e->d_name)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn) break;
      names = nn;
    }
    names[n] = strdup(e->d_name);
    if (names[n]) n++;
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n; i++) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) try_load(ph, path);
    free(names[i]);
  }
  free(names);
}

velo_status velo_plugin_host_create(const velo_plugin_host_options *opts, const velo_host *host,
                                    velo_plugin_host **out, velo_error *err) {
  *out = NULL;
  velo_plugin_host *ph = calloc(1, sizeof *ph);
  if (!ph) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  ph->host = host;
  if (lt_dlinit() != 0) {
    free(ph);
    return velo_error_set(err, VELO_INTERNAL, "libltdl failed to start: %s", lt_dlerror());
  }
  if (opts && opts->plugin_dir) add_dir(ph, opts->plugin_dir, "--plugin-dir");
  const char *env = getenv("VELO_PLUGIN_PATH");
  if (env && !(opts && opts->skip_env)) {
    char *copy = strdup(env), *save = NULL;
    for (char *tok = copy ? strtok_r(copy, ":", &save) : NULL; tok; tok = strtok_r(NULL, ":", &save))
      add_dir(ph, tok, "VELO_PLUGIN_PATH");
    free(copy);
  }
  if (!(opts && opts->skip_defaults)) {
    char *rel = exe_relative(VELO_PLUGIN_RELATIVE_DIR);
    add_dir(ph, rel, NULL);
    free(rel);
    rel = exe_relative("../lib/velo");
    add_dir(ph, rel, NULL);
    free(rel);
    add_dir(ph, VELO_PLUGIN_INSTALL_DIR, NULL);
  }
  for (size_t i = 0; i < ph->n_dirs; i++) scan_dir(ph, ph->dirs[i], ph->dir_origin[i]);
  *out = ph;
  return VELO_OK;
}

void velo_plugin_host_destroy(velo_plugin_host *ph) {
  if (!ph) return;
  for (size_t i = ph->n_plugins; i-- > 0;) {
    velo_plugin *p = &ph->plugins[i];
    if (p->initialised && p->desc->fini) p->desc->fini();
    lt_dlclose(p->handle);
    free(p->path);
  }
  free(ph->plugins);
  for (size_t i = 0; i < ph->n_dirs; i++) free(ph->dirs[i]);
  lt_dlexit();
  free(ph);
}

size_t velo_plugin_host_count(const velo_plugin_host *ph) { return ph ? ph->n_plugins : 0; }

const velo_plugin *velo_plugin_host_get(const velo_plugin_host *ph, size_t i) {
  return ph && i < ph->n_plugins ? &ph->plugins[i] : NULL;
}

const velo_plugin *velo_plugin_host_find(const velo_plugin_host *ph, velo_plugin_kind kind,
                                         const char *name) {
  if (!ph || !name) return NULL;
  for (size_t i = 0; i < ph->n_plugins; i++) {
    const velo_plugin_descriptor *d = ph->plugins[i].desc;
    if (d->kind == kind && strcmp(d->name, name) == 0) return &ph->plugins[i];
  }
  return NULL;
}

size_t velo_plugin_host_search_dirs(const velo_plugin_host *ph, const char *const **dirs) {
  *dirs = (const char *const *)ph->dirs;
  return ph->n_dirs;
}

const velo_plugin_descriptor *velo_plugin_descriptor_of(const velo_plugin *p) { return p->desc; }

const char *velo_plugin_path(const velo_plugin *p) { return p->path; }

velo_status velo_plugin_probe(const velo_plugin *p, char *reason, size_t reason_size) {
  if (reason_size) reason[0] = '\0';
  if (p->desc->kind == VELO_PLUGIN_BACKEND) {
    if (!p->desc->backend->probe) {
      snprintf(reason, reason_size, "available");
      return VELO_OK;
    }
    velo_status st = p->desc->backend->probe(reason, reason_size);
    if (st == VELO_OK && reason_size && !reason[0]) snprintf(reason, reason_size, "available");
    return st;
  }
  snprintf(reason, reason_size, "available");
  return VELO_OK;
}
