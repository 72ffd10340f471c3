/*
 * plugin_host.h - finds, loads (libltdl), version-checks and unloads Velo
 * plugins.
 *
 * Search order (first match of a plugin name and kind wins; later copies
 * are logged and skipped):
 *   1. the directory given with --plugin-dir,
 *   2. each directory in VELO_PLUGIN_PATH (colon-separated),
 *   3. ../lib/velo relative to the running binary (the same in the build
 *      tree and in an install),
 *   4. the configured install directory (VELO_PLUGIN_INSTALL_DIR).
 * Files named libvelo-*.so are considered.  Every failure (not loadable,
 * no entry symbol, wrong ABI, init failure) is logged with the file path and
 * the real reason, and the file is skipped.
 *
 * Thread-safety: create/destroy from one thread; lookups are read-only and
 * may run concurrently once create has returned.
 */
#ifndef VELO_CORE_PLUGIN_HOST_H
#define VELO_CORE_PLUGIN_HOST_H

#include <stddef.h>

#include "velo/plugin.h"

typedef struct velo_plugin velo_plugin;
typedef struct velo_plugin_host velo_plugin_host;

typedef struct velo_plugin_host_options {
  const char *plugin_dir; /* --plugin-dir, or NULL */
  bool skip_env;          /* ignore VELO_PLUGIN_PATH (tests) */
  bool skip_defaults;     /* only plugin_dir and VELO_PLUGIN_PATH (tests) */
} velo_plugin_host_options;

/* Scans the search path and loads every plugin found.  host is borrowed
 * and must outlive the plugin host (it is handed to each plugin's init).
 * Fails only on out-of-memory or when libltdl cannot start: finding no
 * plugin at all is not an error here (callers decide). */
velo_status velo_plugin_host_create(const velo_plugin_host_options *opts,
                                    const velo_host *host, velo_plugin_host **out,
                                    velo_error *err);
/* Calls each plugin's fini and unloads it.  NULL is a no-op. */
void velo_plugin_host_destroy(velo_plugin_host *ph);

size_t velo_plugin_host_count(const velo_plugin_host *ph);
const velo_plugin *velo_plugin_host_get(const velo_plugin_host *ph, size_t i);
/* The loaded plugin of that kind and name, or NULL. */
const velo_plugin *velo_plugin_host_find(const velo_plugin_host *ph, velo_plugin_kind kind,
                                         const char *name);
/* The directories searched, in order (for messages).  Borrowed. */
size_t velo_plugin_host_search_dirs(const velo_plugin_host *ph, const char *const **dirs);

const velo_plugin_descriptor *velo_plugin_descriptor_of(const velo_plugin *p);
const char *velo_plugin_path(const velo_plugin *p);
/* Probes the plugin: backends call their probe(); tasks are available.
 * reason gets "available" or why not. */
velo_status velo_plugin_probe(const velo_plugin *p, char *reason, size_t reason_size);
const char *velo_plugin_kind_name(velo_plugin_kind kind);

#endif
