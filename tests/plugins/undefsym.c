/*
 * undefsym.c - a plugin that cannot be loaded: it needs a symbol that no
 * library provides.
 *
 * Built as libvelo-undefsym.so (linked without --no-undefined) for the
 * start-up failure tests.  dlopen fails with "undefined symbol:
 * velo_test_missing_symbol"; libltdl alone would say "file not found", so
 * the test checks that the host logs the real reason.  The symbol is a
 * variable, not a function: data references are bound when the library is
 * loaded even under lazy binding, so the load fails whatever flags the host
 * passes to dlopen.
 */
#include <stddef.h>
#include <stdint.h>

#include "velo/plugin.h"

extern int velo_test_missing_symbol; /* defined nowhere, on purpose */

static const velo_plugin_descriptor undefsym_descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .name = "undefsym",
    .kind = VELO_PLUGIN_BACKEND,
    .version = "0.0.1",
    .description = "test plugin with an unresolved symbol",
};

VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_abi_major,
                                                                   uint32_t host_abi_minor) {
  /* Never reached (the load fails); the reference keeps the relocation. */
  return host_abi_major == (uint32_t)velo_test_missing_symbol + host_abi_minor ? NULL
                                                                                : &undefsym_descriptor;
}
