/*
 * gpu_backend.h - what the GPU backends' plugin entry (gpu_plugin.c) and
 * the tests see of gpu_backend.c: the backend table and the hook that
 * hands it the host's services (for its log lines).
 *
 * The same declarations serve the CUDA and the HIP build; which runtime
 * the table drives is fixed when the file is compiled (gpu_port.h).
 */
#ifndef VELO_GPU_BACKEND_H
#define VELO_GPU_BACKEND_H

#include "velo/plugin.h"

/* The backend table (velo/backend.h).  Static storage; thread-safety as
 * velo/backend.h states. */
extern const velo_backend_iface velo_gpu_iface;

/* Remembers host (borrowed until the plugin's fini) for warnings; NULL
 * silences them.  Call before any other function of the table. */
void velo_gpu_set_host(const velo_host *host);

#endif
