/*
 * plugin.c - the CPU backend plugin's descriptor and its one exported
 * symbol, velo_plugin_entry.  Everything else lives in the static library
 * velo_cpu_kernels (compiled with hidden visibility), so the module exports
 * nothing but the entry point.
 */
#include "cpu_backend.h"
#include "velo/plugin.h"

static const velo_plugin_descriptor cpu_descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .name = "cpu",
    .kind = VELO_PLUGIN_BACKEND,
    .version = "0.1.0",
    .description = "CPU backend: host memory buffers, a persistent thread pool, "
                   "F32/F16/Q8_0/Q4_0 weights with llama.cpp-compatible arithmetic",
    .init = NULL, /* nothing to set up: the table is static */
    .fini = NULL,
    .backend = &velo_cpu_iface,
    .task = NULL,
};

/* The plugin entry point (velo/plugin.h).  Returns the static descriptor,
 * or NULL when the host's ABI major version differs from ours (any host
 * minor works: we use nothing beyond 1.0).  No side effects; thread-safe. */
VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_abi_major,
                                                                   uint32_t host_abi_minor) {
  (void)host_abi_minor;
  if (host_abi_major != VELO_ABI_MAJOR) return NULL;
  return &cpu_descriptor;
}
