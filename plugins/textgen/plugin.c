/*
 * plugin.c - the "text-generation" task plugin's entry point and task
 * table.  The work is in engine.c (requests), llama.c (the model),
 * tokenizer.c, sampling.c and textstream.c.
 */
#include "textgen.h"

const velo_host *textgen_host;

static velo_status plugin_init(const velo_host *host, velo_error *err) {
  if (host->struct_size < sizeof(velo_host))
    return velo_error_set(err, VELO_FAILED_PRECONDITION, "host table too small (%u bytes)",
                          (unsigned)host->struct_size);
  textgen_host = host;
  return VELO_OK;
}

static const velo_task_iface task_iface = {
    .struct_size = sizeof(velo_task_iface),
    .task = "text-generation",
    .model_load = textgen_model_load,
    .model_unload = textgen_model_unload,
    .model_metadata = textgen_model_metadata,
    .submit = textgen_submit,
    .get_extension = textgen_get_extension,
};

static const velo_plugin_descriptor descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .name = "text-generation",
    .kind = VELO_PLUGIN_TASK,
    .version = "0.1.0",
    .description = "Text generation: llama-architecture GGUF models, SentencePiece tokenizer, sampling",
    .init = plugin_init,
    .task = &task_iface,
};

VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_abi_major,
                                                                   uint32_t host_abi_minor) {
  (void)host_abi_minor;
  return host_abi_major == VELO_ABI_MAJOR ? &descriptor : NULL;
}
