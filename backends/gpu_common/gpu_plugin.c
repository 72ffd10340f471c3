/*
 * gpu_plugin.c - the entry point of the GPU backend plugins:
 * libvelo-backend-cuda.so ("cuda") and libvelo-backend-hip.so ("hip"),
 * the same file compiled twice (gpu_port.h picks the runtime).  Loading
 * the plugin touches no GPU and needs no driver: the runtime is only asked
 * when the host probes the backend.
 */
#include "gpu_backend.h"
#include "gpu_port.h"

/* init(): keeps the host table for log lines.  Never fails. */
static velo_status gpu_init(const velo_host *host, velo_error *err) {
  (void)err;
  velo_gpu_set_host(host);
  return VELO_OK;
}

static void gpu_fini(void) { velo_gpu_set_host(NULL); }

static const velo_plugin_descriptor descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .name = VELO_GPU_NAME,
    .kind = VELO_PLUGIN_BACKEND,
    .version = VELO_VERSION,
#if defined(VELO_GPU_HIP)
    .description = "AMD GPUs through HIP (ROCm): paged attention, Q4_0/Q8_0/K-quant/F16/BF16 weights",
#else
    .description = "NVIDIA GPUs through CUDA: paged attention, Q4_0/Q8_0/K-quant/F16/BF16 weights, "
                   "CUDA graphs for repeated steps",
#endif
    .init = gpu_init,
    .fini = gpu_fini,
    .backend = &velo_gpu_iface,
    .task = NULL,
};

/* The one exported symbol (velo/plugin.h). */
VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_major,
                                                                   uint32_t host_minor) {
  (void)host_minor;
  if (host_major != VELO_ABI_MAJOR) return NULL;
  return &descriptor;
}
