/*
 * badabi.c - a plugin built for a different plugin ABI major version.
 *
 * Built as libvelo-badabi.so for the start-up failure tests.  Its
 * descriptor says abi_major = VELO_ABI_MAJOR + 1, so the host must reject
 * it before calling anything else (init, backend or task functions), log
 * the file with both ABI versions, skip it, and go on.  Nothing here may be
 * called: the descriptor has no init and no interface tables.
 */
#include <stddef.h>
#include <stdint.h>

#include "velo/plugin.h"

static const velo_plugin_descriptor badabi_descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR + 1,
    .abi_minor = 0,
    .name = "badabi",
    .kind = VELO_PLUGIN_BACKEND,
    .version = "0.0.1",
    .description = "test plugin with a wrong ABI major version",
    .init = NULL,
    .fini = NULL,
    .backend = NULL,
    .task = NULL,
};

VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_abi_major,
                                                                   uint32_t host_abi_minor) {
  (void)host_abi_major;
  (void)host_abi_minor;
  return &badabi_descriptor;
}
