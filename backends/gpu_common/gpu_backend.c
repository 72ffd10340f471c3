/*
 * gpu_backend.c - the velo_backend_iface of the GPU backends: one source
 * for the CUDA plugin (libvelo-backend-cuda.so) and the HIP plugin
 * (libvelo-backend-hip.so, built with VELO_GPU_HIP), through gpu_port.h.
 *
 *  - probe(): the runtime's device count and the devices' architectures,
 *    once per process; "available: ..." or "unavailable: <reason>" (no
 *    driver, a driver older than the runtime, no GPU, no GPU this build
 *    has code for).  No device context is created.
 *  - Instances: one device, one non-blocking stream, a pinned staging
 *    arena for copies, a device scratch area for MUL_MAT's converted
 *    activations, and a device error record for data errors.
 *  - Buffers are device memory: buffer_host_ptr() is NULL and
 *    buffer_wrap_host is not offered (the caller uploads with
 *    buffer_write).  buffer_write copies through the pinned arena and
 *    returns once the source has been copied (the transfer itself runs on
 *    the stream); buffer_read waits for the stream.
 *  - compute(): checks every node, resolves every tensor to a device
 *    address inside its buffer, then enqueues the nodes' kernels in order
 *    (an RMS_NORM followed by the MUL with the norm weight runs as one
 *    kernel), waits for the stream and reports the first data error.
 *    Graphs repeat: the decode step of a model is the same graph (same
 *    shapes, same addresses) step after step, with only the contents of
 *    its input buffers changing.  So each graph is keyed by everything a
 *    kernel launch depends on (ops, parameters, device addresses, shapes,
 *    strides, dtypes) and captured into a CUDA (HIP) graph the second time
 *    its key is seen; later computes of that key replay it with one launch.
 *    A different batch composition (token count, output rows, table width)
 *    is a different key: up to GRAPH_CACHE graphs are kept, the least
 *    recently used dropped first.  VELO_CUDA_GRAPHS=0 (VELO_HIP_GRAPHS=1)
 *    turns graphs off (on); see docs/gpu.md.
 *
 * Data errors (ids, positions and block ids out of range) are found by the
 * kernels, which skip the offending row or position; compute() then returns
 * INVALID_ARGUMENT naming the first failing node as the CPU backend does.
 * Unlike the CPU backend, the nodes after it have run too: every output of
 * a compute that failed is unspecified.
 *
 * Thread-safety: probe, device_count and device_info from any thread; an
 * instance from one thread at a time (velo/backend.h).
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_backend.h"
#include "gpu_kernels.h"
#include "gpu_port.h"
#include "velo/op_check.h"

#define INSTANCE_MAGIC 0x56475049u /* "VGPI" */
#define BUFFER_MAGIC 0x56475042u   /* "VGPB" */
#define MAX_DEVICES 64
#define STAGE_BYTES ((size_t)32 << 20) /* pinned staging arena */
#define STAGE_CHUNK ((size_t)8 << 20)  /* largest single staged copy */
#define GRAPH_CACHE 16
#define MAX_HEAD_DIM 256

static const velo_host *g_host; /* for warnings; set by the plugin's init */

/* Logs a warning through the host (nothing before init). */
__attribute__((format(printf, 1, 2))) static void warn(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  if (!g_host || !g_host->log) return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g_host->log(VELO_LOG_WARN, VELO_GPU_NAME, "%s", msg);
}

/* Same at debug level. */
__attribute__((format(printf, 1, 2))) static void debug(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  if (!g_host || !g_host->log) return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g_host->log(VELO_LOG_DEBUG, VELO_GPU_NAME, "%s", msg);
}

void velo_gpu_set_host(const velo_host *host) { g_host = host; }

/* "NAME (description)" of a runtime error. */
static const char *err_name(gpuError_t e) {
  const char *n = gpuGetErrorName(e);
  return n ? n : "unknown error";
}

/* ------------------------------------------------------------------ */
/* Op names                                                            */
/* ------------------------------------------------------------------ */


/* Fills err with "<backend>: node <i> (<OP>): <message>" and returns code. */
__attribute__((format(printf, 5, 6))) static velo_status node_fail(velo_error *err, velo_status code,
                                                                 size_t index, int op,
                                                                 const char *fmt, ...) {
  char msg[VELO_ERROR_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return velo_error_set(err, code, VELO_GPU_NAME ": node %zu (%s): %s", index, velo_op_check_name(op), msg);
}

/* ------------------------------------------------------------------ */
/* Probe and devices                                                   */
/* ------------------------------------------------------------------ */

typedef struct device_desc {
  char name[128];
  char arch[64];     /* "sm_90" or "gfx90a" */
  int major, minor;  /* compute capability (CUDA) */
  int sm_count, warp;
  uint64_t memory;
  bool usable;       /* this build has code for it */
} device_desc;

static struct {
  pthread_once_t once;
  velo_status status;
  char reason[400];
  int n;
  device_desc dev[MAX_DEVICES];
  int driver_version, runtime_version;
} g_probe = {.once = PTHREAD_ONCE_INIT};

/* Versions as "13.0" (CUDA: 13000; HIP: major*10^7 + minor*10^5 + patch). */
static void version_text(int v, char *out, size_t size) {
#if defined(VELO_GPU_HIP)
  snprintf(out, size, "%d.%d", v / 10000000, (v / 100000) % 100);
#else
  snprintf(out, size, "%d.%d", v / 1000, (v % 1000) / 10);
#endif
}

/* The architectures this build has code for, as the build gave them. */
static const char *built_archs(void) {
#if defined(VELO_GPU_ARCHS)
  return VELO_GPU_ARCHS;
#else
  return "unknown";
#endif
}

/* True if this build has code for the device. */
static bool arch_usable(const device_desc *d) {
#if defined(VELO_GPU_HIP)
  /* gcnArchName is "gfx90a:sramecc+:xnack-": compare the part before ':' */
  char want[64];
  size_t n = strcspn(d->arch, ":");
  const char *list = built_archs();
  while (*list) {
    size_t len = strcspn(list, ";, ");
    if (len == n && strncmp(list, d->arch, n) == 0) return true;
    list += len;
    while (*list == ';' || *list == ',' || *list == ' ') list++;
  }
  (void)want;
  return false;
#else
  /* sm_80 machine code runs on every 8.x device; compute_90 PTX is compiled
   * by the driver for 9.0 and newer */
  return d->major >= 8;
#endif
}

/* Runs once: counts and describes the devices, and words the reason. */
static void probe_once(void) {
  int n = 0;
  char drv[32], rt[32];
  gpuError_t e = gpuGetDeviceCount(&n);
  gpuDriverGetVersion(&g_probe.driver_version);
  gpuRuntimeGetVersion(&g_probe.runtime_version);
  version_text(g_probe.driver_version, drv, sizeof drv);
  version_text(g_probe.runtime_version, rt, sizeof rt);
  g_probe.status = VELO_UNAVAILABLE;
  if (e != gpuSuccess) {
    gpuGetLastError(); /* clear the sticky error of the failed call */
    if (e == gpuErrorInsufficientDriver && g_probe.driver_version == 0)
      snprintf(g_probe.reason, sizeof g_probe.reason,
               "unavailable: no " VELO_GPU_VENDOR " GPU driver found (%s from %sGetDeviceCount)",
               err_name(e), VELO_GPU_NAME);
    else if (e == gpuErrorInsufficientDriver)
      snprintf(g_probe.reason, sizeof g_probe.reason,
               "unavailable: the " VELO_GPU_VENDOR " driver supports " VELO_GPU_RUNTIME
               " %s, older than this plugin's runtime " VELO_GPU_RUNTIME " %s (%s): update the driver",
               drv, rt, err_name(e));
    else if (e == gpuErrorNoDevice)
      snprintf(g_probe.reason, sizeof g_probe.reason,
               "unavailable: no " VELO_GPU_VENDOR " GPU found (%s from %sGetDeviceCount)",
               err_name(e), VELO_GPU_NAME);
    else
      snprintf(g_probe.reason, sizeof g_probe.reason,
               "unavailable: %sGetDeviceCount failed: %s (%s)", VELO_GPU_NAME, err_name(e),
               gpuGetErrorString(e));
    return;
  }
  if (n <= 0) {
    snprintf(g_probe.reason, sizeof g_probe.reason, "unavailable: no " VELO_GPU_VENDOR " GPU found");
    return;
  }
  if (n > MAX_DEVICES) n = MAX_DEVICES;
  int usable = 0;
  for (int i = 0; i < n; i++) {
    gpuDeviceProp p;
    device_desc *d = &g_probe.dev[i];
    memset(&p, 0, sizeof p);
    if (gpuGetDeviceProperties(&p, i) != gpuSuccess) {
      gpuGetLastError();
      snprintf(d->name, sizeof d->name, "GPU %d (properties unreadable)", i);
      continue;
    }
    snprintf(d->name, sizeof d->name, "%.127s", p.name);
    d->major = p.major;
    d->minor = p.minor;
    d->sm_count = p.multiProcessorCount;
    d->warp = p.warpSize;
    d->memory = (uint64_t)p.totalGlobalMem;
#if defined(VELO_GPU_HIP)
    snprintf(d->arch, sizeof d->arch, "%.63s", p.gcnArchName);
#else
    snprintf(d->arch, sizeof d->arch, "sm_%d%d", p.major, p.minor);
#endif
    d->usable = arch_usable(d);
    usable += d->usable;
  }
  g_probe.n = n;
  if (usable == 0) {
    snprintf(g_probe.reason, sizeof g_probe.reason,
             "unavailable: %d GPU(s) found (GPU 0: %s, %s) but this plugin has code only for %s%s",
             n, g_probe.dev[0].name, g_probe.dev[0].arch, built_archs(),
#if defined(VELO_GPU_HIP)
             " (rebuild with -DVELO_HIP_ARCHITECTURES=...; MI300/gfx942 needs ROCm >= 5.7)"
#else
             " (compute capability 8.0 or newer)"
#endif
    );
    return;
  }
  g_probe.status = VELO_OK;
  snprintf(g_probe.reason, sizeof g_probe.reason,
           "available: %d GPU(s), GPU 0: %s (%s, %.0f GiB); " VELO_GPU_RUNTIME " runtime %s, driver %s",
           n, g_probe.dev[0].name, g_probe.dev[0].arch,
           (double)g_probe.dev[0].memory / (1024.0 * 1024.0 * 1024.0), rt, drv);
}

/* probe(): see the top of the file. */
static velo_status gpu_probe(char *reason, size_t reason_size) {
  pthread_once(&g_probe.once, probe_once);
  if (reason && reason_size) snprintf(reason, reason_size, "%s", g_probe.reason);
  return g_probe.status;
}

/* device_count(): the devices the runtime reports (0 when unavailable). */
static int32_t gpu_device_count(void) {
  pthread_once(&g_probe.once, probe_once);
  return g_probe.status == VELO_OK ? g_probe.n : 0;
}

#define DEVICE_INFO_SIZE_1_0 offsetof(velo_device_info, batch_invariant)

/* device_info(): name, architecture, memory (free memory is not read: that
 * would create a device context; 0 = unknown); batch_invariant is true
 * (see gpu_kernels.cu). */
static velo_status gpu_device_info(int32_t index, velo_device_info *out, velo_error *err) {
  pthread_once(&g_probe.once, probe_once);
  int32_t n = g_probe.status == VELO_OK ? g_probe.n : 0;
  if (index < 0 || index >= n)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": no device %d (there %s %d)%s%s",
                          (int)index, n == 1 ? "is" : "are", (int)n, n ? "" : ": ",
                          n ? "" : g_probe.reason);
  if (!out || out->struct_size < DEVICE_INFO_SIZE_1_0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          VELO_GPU_NAME ": device_info needs a velo_device_info with struct_size >= %zu",
                          DEVICE_INFO_SIZE_1_0);
  const device_desc *d = &g_probe.dev[index];
  char rt[32], drv[32];
  version_text(g_probe.runtime_version, rt, sizeof rt);
  version_text(g_probe.driver_version, drv, sizeof drv);
  snprintf(out->name, sizeof out->name, "%s", d->name);
  snprintf(out->description, sizeof out->description,
           "%s, %d compute units, warp %d, " VELO_GPU_RUNTIME " runtime %s, driver %s%s; weights "
           "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K (llama.cpp activation quantization); "
           "batch-invariant",
           d->arch, d->sm_count, d->warp, rt, drv, d->usable ? "" : "; NO CODE FOR THIS DEVICE");
  out->memory_total = d->memory;
  out->memory_free = 0;
  if (out->struct_size >= offsetof(velo_device_info, batch_invariant) + sizeof(bool))
    out->batch_invariant = true;
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Instances                                                           */
/* ------------------------------------------------------------------ */

struct velo_buffer {
  uint32_t magic;
  char *dev;   /* device memory */
  size_t size; /* bytes the caller asked for */
};

typedef struct graph_entry {
  uint64_t *key; /* NULL: empty slot */
  size_t key_len;
  uint64_t hash;
  gpuGraphExec_t exec; /* NULL until captured */
  uint64_t last_used;
} graph_entry;

struct velo_backend_instance {
  uint32_t magic;
  int device;
  gpuStream_t stream;
  char *stage; /* pinned host arena; NULL: copies go through pageable memory */
  size_t stage_used;
  char *scratch; /* device scratch for MUL_MAT */
  size_t scratch_size;
  vgk_error *d_err; /* device error record */
  vgk_error *h_err; /* its pinned host copy */
  bool graphs;      /* capture graphs */
  uint64_t tick;
  graph_entry cache[GRAPH_CACHE];
  uint64_t *key; /* the key being built */
  size_t key_len, key_cap;
  vgk_tensor *tens; /* resolved tensors, 5 per node */
  size_t tens_cap;
};

/* True unless the environment variable name is "0" (or, with dflt false,
 * unless it is "1"). */
static bool env_flag(const char *name, bool dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  return strcmp(v, "0") != 0;
}

/* Makes the instance's device current on the calling thread. */
static velo_status use_device(velo_backend_instance *inst, velo_error *err) {
  gpuError_t e = gpuSetDevice(inst->device);
  if (e != gpuSuccess)
    return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": cannot select GPU %d: %s", inst->device,
                          err_name(e));
  return VELO_OK;
}

static void graph_cache_clear(velo_backend_instance *inst) {
  for (int i = 0; i < GRAPH_CACHE; i++) {
    graph_entry *g = &inst->cache[i];
    if (g->exec) gpuGraphExecDestroy(g->exec);
    free(g->key);
    memset(g, 0, sizeof *g);
  }
}

/* close(): waits for the stream and frees everything.  NULL is a no-op. */
static void gpu_close(velo_backend_instance *inst) {
  if (!inst || inst->magic != INSTANCE_MAGIC) return;
  gpuSetDevice(inst->device);
  if (inst->stream) gpuStreamSynchronize(inst->stream);
  graph_cache_clear(inst);
  if (inst->scratch) gpuFree(inst->scratch);
  if (inst->d_err) gpuFree(inst->d_err);
  if (inst->h_err) gpuFreeHost(inst->h_err);
  if (inst->stage) gpuFreeHost(inst->stage);
  if (inst->stream) gpuStreamDestroy(inst->stream);
  free(inst->key);
  free(inst->tens);
  inst->magic = 0;
  free(inst);
}

/* open(): opts->device must be a device this build has code for;
 * n_threads is ignored. */
static velo_status gpu_open(const velo_backend_options *opts, velo_backend_instance **out,
                            velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": open() without out");
  *out = NULL;
  char reason[400];
  if (gpu_probe(reason, sizeof reason) != VELO_OK)
    return velo_error_set(err, VELO_UNAVAILABLE, VELO_GPU_NAME ": %s", reason);
  int32_t device = 0;
  if (opts && opts->struct_size >= offsetof(velo_backend_options, device) + sizeof opts->device)
    device = opts->device;
  if (device < 0 || device >= g_probe.n)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          VELO_GPU_NAME ": no device %d (there %s %d: %s:0 to %s:%d)", (int)device,
                          g_probe.n == 1 ? "is" : "are", g_probe.n, VELO_GPU_NAME, VELO_GPU_NAME,
                          g_probe.n - 1);
  if (!g_probe.dev[device].usable)
    return velo_error_set(err, VELO_FAILED_PRECONDITION,
                          VELO_GPU_NAME ": GPU %d (%s, %s) is not supported by this build (code for %s)",
                          (int)device, g_probe.dev[device].name, g_probe.dev[device].arch,
                          built_archs());
  velo_backend_instance *inst = calloc(1, sizeof *inst);
  if (!inst) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, VELO_GPU_NAME ": out of memory");
  inst->magic = INSTANCE_MAGIC;
  inst->device = device;
  inst->graphs = env_flag(VELO_GPU_GRAPHS_ENV, VELO_GPU_GRAPHS_DEFAULT);
  gpuError_t e = gpuSetDevice(device);
  if (e == gpuSuccess) e = gpuStreamCreateNonBlocking(&inst->stream);
  if (e == gpuSuccess) e = gpuMalloc((void **)&inst->d_err, sizeof(vgk_error));
  if (e == gpuSuccess) e = gpuHostAlloc((void **)&inst->h_err, sizeof(vgk_error));
  if (e != gpuSuccess) {
    gpuGetLastError();
    velo_error_set(err, VELO_UNAVAILABLE, VELO_GPU_NAME ": cannot open GPU %d (%s): %s (%s)", (int)device,
                   g_probe.dev[device].name, err_name(e), gpuGetErrorString(e));
    gpu_close(inst);
    return VELO_UNAVAILABLE;
  }
  if (gpuHostAlloc((void **)&inst->stage, STAGE_BYTES) != gpuSuccess) {
    gpuGetLastError();
    inst->stage = NULL;
    warn("cannot allocate %zu MiB of pinned host memory: copies go through pageable memory",
         STAGE_BYTES >> 20);
  }
  *out = inst;
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Buffers                                                             */
/* ------------------------------------------------------------------ */

static bool inst_ok(const velo_backend_instance *inst) {
  return inst && inst->magic == INSTANCE_MAGIC;
}

/* buffer_alloc(): size bytes of device memory (256-byte aligned; a zero
 * size still gets a valid buffer). */
static velo_status gpu_buffer_alloc(velo_backend_instance *inst, size_t size, velo_buffer **out,
                                    velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": buffer_alloc without out");
  *out = NULL;
  if (!inst_ok(inst))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": buffer_alloc on an invalid instance");
  velo_status st = use_device(inst, err);
  if (st != VELO_OK) return st;
  velo_buffer *b = calloc(1, sizeof *b);
  if (!b) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, VELO_GPU_NAME ": out of memory");
  gpuError_t e = gpuMalloc((void **)&b->dev, size ? size : 256);
  if (e != gpuSuccess) {
    gpuGetLastError();
    free(b);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                          VELO_GPU_NAME ": cannot allocate %zu bytes on GPU %d (%s): %s", size,
                          inst->device, g_probe.dev[inst->device].name, err_name(e));
  }
  b->magic = BUFFER_MAGIC;
  b->size = size;
  *out = b;
  return VELO_OK;
}

/* buffer_free(): NULL is a no-op.  Freeing device memory waits for the
 * device (the runtime's rule), so no kernel can still use it. */
static void gpu_buffer_free(velo_backend_instance *inst, velo_buffer *buf) {
  if (!buf || buf->magic != BUFFER_MAGIC) return;
  if (inst_ok(inst)) gpuSetDevice(inst->device);
  gpuFree(buf->dev);
  buf->magic = 0;
  free(buf);
}

/* buffer_host_ptr(): device memory is never host-visible. */
static void *gpu_buffer_host_ptr(velo_buffer *buf) {
  (void)buf;
  return NULL;
}

static velo_status check_copy(const velo_backend_instance *inst, const velo_buffer *buf,
                              size_t offset, const void *host, size_t size, const char *what,
                              velo_error *err) {
  if (!inst_ok(inst))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": %s on an invalid instance", what);
  if (!buf || buf->magic != BUFFER_MAGIC)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": %s on a buffer that is not a %s buffer",
                          what, VELO_GPU_NAME);
  if (!host && size > 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": %s with NULL host memory", what);
  if (offset > buf->size || size > buf->size - offset)
    return velo_error_set(err, VELO_OUT_OF_RANGE,
                          VELO_GPU_NAME ": %s of %zu bytes at offset %zu exceeds the buffer (%zu bytes)",
                          what, size, offset, buf->size);
  return VELO_OK;
}

/* Waits for the stream; the staging arena is free afterwards. */
static velo_status sync_stream(velo_backend_instance *inst, const char *what, velo_error *err) {
  gpuError_t e = gpuStreamSynchronize(inst->stream);
  inst->stage_used = 0;
  if (e != gpuSuccess) {
    gpuGetLastError();
    return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": %s failed on GPU %d: %s (%s)", what,
                          inst->device, err_name(e), gpuGetErrorString(e));
  }
  return VELO_OK;
}

/* buffer_write(): copies src through the pinned arena (in chunks of up to
 * STAGE_CHUNK, waiting for the stream only when the arena is full) and
 * returns once src has been read.  Errors: see check_copy. */
static velo_status gpu_buffer_write(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                                    const void *src, size_t size, velo_error *err) {
  velo_status st = check_copy(inst, buf, offset, src, size, "buffer_write", err);
  if (st != VELO_OK || size == 0) return st;
  if ((st = use_device(inst, err)) != VELO_OK) return st;
  if (!inst->stage) {
    gpuError_t e = gpuMemcpy(buf->dev + offset, src, size, gpuMemcpyHostToDevice);
    if (e != gpuSuccess) {
      gpuGetLastError();
      return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": buffer_write failed: %s", err_name(e));
    }
    return VELO_OK;
  }
  const char *s = src;
  size_t done = 0;
  while (done < size) {
    size_t chunk = size - done < STAGE_CHUNK ? size - done : STAGE_CHUNK;
    if (inst->stage_used + chunk > STAGE_BYTES &&
        (st = sync_stream(inst, "buffer_write", err)) != VELO_OK)
      return st;
    char *slot = inst->stage + inst->stage_used;
    memcpy(slot, s + done, chunk);
    gpuError_t e = gpuMemcpyAsync(buf->dev + offset + done, slot, chunk, gpuMemcpyHostToDevice,
                                  inst->stream);
    if (e != gpuSuccess) {
      gpuGetLastError();
      return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": buffer_write failed: %s", err_name(e));
    }
    inst->stage_used += (chunk + 255) / 256 * 256;
    done += chunk;
  }
  return VELO_OK;
}

/* buffer_read(): waits for everything enqueued before, then copies. */
static velo_status gpu_buffer_read(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                                   void *dst, size_t size, velo_error *err) {
  velo_status st = check_copy(inst, buf, offset, dst, size, "buffer_read", err);
  if (st != VELO_OK || size == 0) return st;
  if ((st = use_device(inst, err)) != VELO_OK) return st;
  if (!inst->stage) {
    if ((st = sync_stream(inst, "buffer_read", err)) != VELO_OK) return st;
    gpuError_t e = gpuMemcpy(dst, buf->dev + offset, size, gpuMemcpyDeviceToHost);
    if (e != gpuSuccess) {
      gpuGetLastError();
      return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": buffer_read failed: %s", err_name(e));
    }
    return VELO_OK;
  }
  char *d = dst;
  size_t done = 0;
  while (done < size) {
    size_t chunk = size - done < STAGE_BYTES ? size - done : STAGE_BYTES;
    if ((st = sync_stream(inst, "buffer_read", err)) != VELO_OK) return st;
    gpuError_t e = gpuMemcpyAsync(inst->stage, buf->dev + offset + done, chunk, gpuMemcpyDeviceToHost,
                                  inst->stream);
    if (e != gpuSuccess) {
      gpuGetLastError();
      return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": buffer_read failed: %s", err_name(e));
    }
    if ((st = sync_stream(inst, "buffer_read", err)) != VELO_OK) return st;
    memcpy(d + done, inst->stage, chunk);
    done += chunk;
  }
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Node checks (structure only; data is checked by the kernels)        */
/* ------------------------------------------------------------------ */

static int64_t t_rows(const velo_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

static const char *dtype_str(int dtype) {
  const char *s = velo_dtype_name(dtype);
  return s ? s : "unknown";
}

/* Bytes from a tensor's first byte to just past its last; false on
 * overflow. */
static bool tensor_span(const velo_tensor *t, size_t *span) {
  size_t s = velo_dtype_row_bytes(t->dtype, t->ne[0]), part;
  for (int i = 1; i < VELO_MAX_DIMS; i++) {
    if (__builtin_mul_overflow((size_t)(t->ne[i] - 1), t->nb[i], &part)) return false;
    if (__builtin_add_overflow(s, part, &s)) return false;
  }
  *span = s;
  return true;
}

/* Checks one tensor's header (velo_op_check_tensor), then the alignment
 * the kernels need. */
static velo_status check_tensor(const velo_graph_node *node, size_t index, const char *role,
                                const velo_tensor *t, velo_error *err) {
  velo_status st = velo_op_check_tensor(node, index, VELO_GPU_NAME, role, t, err);
  if (st != VELO_OK) return st;
  /* the kernels load whole elements (and 16-byte groups of K-quant blocks) */
  size_t align = t->dtype == VELO_DTYPE_Q4_K || t->dtype == VELO_DTYPE_Q5_K ? 16
                 : t->nb[0] >= 4                                         ? 4
                                                                          : 2;
  if (t->dtype == VELO_DTYPE_Q8_0 || t->dtype == VELO_DTYPE_Q4_0 || t->dtype == VELO_DTYPE_Q6_K) align = 2;
  if (t->offset % align != 0 || t->nb[1] % align != 0 || t->nb[2] % align != 0 || t->nb[3] % align != 0)
    return node_fail(err, VELO_UNIMPLEMENTED, index, node->op,
                     "%s (%s) is not %zu-byte aligned (offset %zu, strides %zu, %zu, %zu)", role,
                     dtype_str(t->dtype), align, t->offset, t->nb[1], t->nb[2], t->nb[3]);
  return VELO_OK;
}

/* The weight dtypes (GET_ROWS and MUL_MAT src0) this backend takes. */
static const velo_dtype k_weights[] = {VELO_DTYPE_F32, VELO_DTYPE_F16, VELO_DTYPE_BF16,
                                       VELO_DTYPE_Q8_0, VELO_DTYPE_Q4_0, VELO_DTYPE_Q4_K,
                                       VELO_DTYPE_Q5_K, VELO_DTYPE_Q6_K};
#define LIMIT_FAIL(...) return node_fail(err, VELO_UNIMPLEMENTED, index, node->op, __VA_ARGS__)

/* The structural checks of one node: op, dtypes, shapes, parameters, the
 * kernels' size limits.  INVALID_ARGUMENT for inconsistent shapes,
 * UNIMPLEMENTED for what this backend does not do.  Headers, dtypes and the
 * limits are checked here; the op contracts of backend.h in
 * velo_op_check_shapes (velo/op_check.h), shared with the CPU backend. */
static velo_status node_check(const velo_graph_node *node, size_t index, velo_error *err) {
  if (!node) return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": node %zu is NULL", index);
  if (node->op <= VELO_OP_NONE || node->op >= VELO_OP_COUNT)
    return node_fail(err, VELO_UNIMPLEMENTED, index, node->op, "op %d is not supported", (int)node->op);
  velo_status st = check_tensor(node, index, "dst", node->dst, err);
  static const char *const src_names[VELO_NODE_MAX_SRC] = {"src0", "src1", "src2", "src3"};
  for (int i = 0; st == VELO_OK && i < velo_op_n_src(node->op); i++)
    st = check_tensor(node, index, src_names[i], node->src[i], err);
  if (st != VELO_OK) return st;
  st = velo_op_check_dtypes(node, index, VELO_GPU_NAME, k_weights, sizeof k_weights / sizeof k_weights[0],
                            err);
  if (st != VELO_OK) return st;
  if ((st = velo_op_check_shapes(node, index, VELO_GPU_NAME, err)) != VELO_OK) return st;
  const velo_tensor *d = node->dst, *a = node->src[0], *b = node->src[1];
  /* this backend's kernel limits (grid sizes, 32-bit row indices, head_dim) */
  switch (node->op) {
    case VELO_OP_GET_ROWS:
      if (t_rows(d) > INT32_MAX || a->ne[1] > INT32_MAX) LIMIT_FAIL("more than 2^31 rows");
      break;
    case VELO_OP_RMS_NORM:
    case VELO_OP_ROPE:
      if (t_rows(a) > INT32_MAX) LIMIT_FAIL("more than 2^31 rows");
      break;
    case VELO_OP_MUL_MAT:
      if (a->ne[0] > INT32_MAX / 2 || a->ne[1] > INT32_MAX || t_rows(b) > 65535)
        LIMIT_FAIL("K %lld, N %lld or M %lld is too large", (long long)a->ne[0], (long long)a->ne[1],
                   (long long)t_rows(b));
      break;
    case VELO_OP_ATTENTION:
    case VELO_OP_ATTENTION_PAGED:
      if (a->ne[0] > MAX_HEAD_DIM) LIMIT_FAIL("head_dim %lld > %d", (long long)a->ne[0], MAX_HEAD_DIM);
      if (a->ne[1] > 65535 || a->ne[2] > 65535 || node->src[1]->ne[2] > INT32_MAX)
        LIMIT_FAIL("n_head %lld, n_tok %lld or cache size %lld is too large", (long long)a->ne[1],
                   (long long)a->ne[2], (long long)node->src[1]->ne[2]);
      break;
    case VELO_OP_SET_ROWS:
      if (t_rows(a) > INT32_MAX || d->ne[1] > INT32_MAX) LIMIT_FAIL("more than 2^31 rows");
      break;
    default:
      break;
  }
  return VELO_OK;
}

/* supports(): node_check without data.  Thread-safe. */
static bool gpu_supports(velo_backend_instance *inst, const velo_graph_node *node) {
  (void)inst;
  return node && node->struct_size >= sizeof(velo_graph_node) && node_check(node, 0, NULL) == VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Compute                                                             */
/* ------------------------------------------------------------------ */

/* Resolves t to its device address; INVALID_ARGUMENT unless it lies in
 * one of this backend's buffers. */
static velo_status resolve(const velo_graph_node *node, size_t index, const char *role,
                           const velo_tensor *t, vgk_tensor *out, velo_error *err) {
  const velo_buffer *b = t->buffer;
  if (!b || b->magic != BUFFER_MAGIC)
    return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op, "%s is not in a %s buffer", role,
                     VELO_GPU_NAME);
  size_t span = 0;
  if (!tensor_span(t, &span) || t->offset > b->size || span > b->size - t->offset)
    return node_fail(err, VELO_INVALID_ARGUMENT, index, node->op,
                     "%s (%zu bytes at offset %zu) lies outside its buffer (%zu bytes)", role, span,
                     t->offset, b->size);
  out->data = b->dev + t->offset;
  for (int i = 0; i < 4; i++) {
    out->ne[i] = t->ne[i];
    out->nb[i] = (int64_t)t->nb[i];
  }
  out->dtype = (int32_t)t->dtype;
  return VELO_OK;
}

/* True when the byte ranges of two resolved tensors intersect. */
static bool overlap(const velo_tensor *ta, const vgk_tensor *a, const velo_tensor *tb,
                    const vgk_tensor *b) {
  size_t sa, sb;
  if (!tensor_span(ta, &sa) || !tensor_span(tb, &sb)) return true;
  const char *pa = a->data, *pb = b->data;
  return pa < pb ? (size_t)(pb - pa) < sa : (size_t)(pa - pb) < sb;
}

/* Appends words to the key being built. */
static bool key_push(velo_backend_instance *inst, const void *data, size_t bytes) {
  size_t words = (bytes + 7) / 8;
  if (inst->key_len + words > inst->key_cap) {
    size_t cap = inst->key_cap ? inst->key_cap * 2 : 4096;
    while (cap < inst->key_len + words) cap *= 2;
    uint64_t *k = realloc(inst->key, cap * sizeof *k);
    if (!k) return false;
    inst->key = k;
    inst->key_cap = cap;
  }
  inst->key[inst->key_len + words - 1] = 0;
  memcpy(inst->key + inst->key_len, data, bytes);
  inst->key_len += words;
  return true;
}

static uint64_t key_hash(const uint64_t *k, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ull;
  return h;
}

/* True when node i+1 is MUL(dst, dst, w) right after RMS_NORM(dst, x):
 * the pair runs as one kernel. */
static bool fuses_with_next(const velo_graph_node *n, const velo_graph_node *next,
                            const vgk_tensor *tn, const vgk_tensor *tnext) {
  if (n->op != VELO_OP_RMS_NORM || !next || next->op != VELO_OP_MUL) return false;
  const vgk_tensor *d = &tn[0], *nd = &tnext[0], *ns0 = &tnext[1];
  return nd->data == d->data && ns0->data == d->data && memcmp(nd->ne, d->ne, sizeof d->ne) == 0 &&
         memcmp(nd->nb, d->nb, sizeof d->nb) == 0 && memcmp(ns0->nb, d->nb, sizeof d->nb) == 0;
}

/* Enqueues the kernels of every node.  tens: 5 resolved tensors per node
 * (dst, src0..3).  Returns OK or INTERNAL naming the node whose launch
 * failed. */
static velo_status launch_all(velo_backend_instance *inst, const velo_graph *graph, size_t stride,
                              velo_error *err) {
  const char *base = (const char *)graph->nodes;
  void *s = (void *)inst->stream;
  for (size_t i = 0; i < graph->n_nodes; i++) {
    const velo_graph_node *n = (const velo_graph_node *)(base + i * stride);
    const vgk_tensor *t = &inst->tens[5 * i];
    int e = 0;
    switch (n->op) {
      case VELO_OP_GET_ROWS: e = vgk_get_rows(s, inst->d_err, (int32_t)i, &t[0], &t[1], &t[2]); break;
      case VELO_OP_RMS_NORM: {
        const velo_graph_node *next =
            i + 1 < graph->n_nodes ? (const velo_graph_node *)(base + (i + 1) * stride) : NULL;
        if (next && fuses_with_next(n, next, t, t + 5)) {
          e = vgk_rms_norm(s, &t[0], &t[1], n->fparams[0], &t[5 + 2]);
          i++;
        } else {
          e = vgk_rms_norm(s, &t[0], &t[1], n->fparams[0], NULL);
        }
        break;
      }
      case VELO_OP_MUL: e = vgk_binary(s, 1, &t[0], &t[1], &t[2]); break;
      case VELO_OP_ADD: e = vgk_binary(s, 0, &t[0], &t[1], &t[2]); break;
      case VELO_OP_MUL_MAT: {
        /* right after a MUL_MAT of the same activations in the same format
         * (Q, K, V; gate, up), the scratch holds them converted already */
        const velo_graph_node *prev = i ? (const velo_graph_node *)(base + (i - 1) * stride) : NULL;
        const vgk_tensor *pt = i ? &inst->tens[5 * (i - 1)] : NULL;
        int convert = !(prev && prev->op == VELO_OP_MUL_MAT && pt[2].data == t[2].data &&
                        memcmp(pt[2].ne, t[2].ne, sizeof t[2].ne) == 0 &&
                        memcmp(pt[2].nb, t[2].nb, sizeof t[2].nb) == 0 &&
                        vgk_act_format(pt[1].dtype) == vgk_act_format(t[1].dtype) &&
                        pt[0].data != t[2].data);
        e = vgk_mul_mat(s, inst->scratch, &t[0], &t[1], &t[2], convert);
        break;
      }
      case VELO_OP_ROPE:
        e = vgk_rope(s, &t[0], &t[1], &t[2], n->iparams[0], n->iparams[1] == VELO_ROPE_NEOX,
                     n->fparams[1], powf(n->fparams[0], -2.0f / (float)n->iparams[0]));
        break;
      case VELO_OP_SWIGLU: e = vgk_swiglu(s, &t[0], &t[1], &t[2]); break;
      case VELO_OP_CPY: e = vgk_cpy(s, &t[0], &t[1]); break;
      case VELO_OP_SET_ROWS: e = vgk_set_rows(s, inst->d_err, (int32_t)i, &t[0], &t[1], &t[2]); break;
      case VELO_OP_ATTENTION:
      case VELO_OP_ATTENTION_PAGED:
        e = vgk_attention(s, inst->d_err, (int32_t)i, &t[0], &t[1], &t[2], &t[3], &t[4],
                          n->op == VELO_OP_ATTENTION_PAGED, n->iparams[0], n->fparams[0]);
        break;
      default: break;
    }
    if (e != 0)
      return node_fail(err, VELO_INTERNAL, i, n->op, "kernel launch failed on GPU %d: %s", inst->device,
                       err_name((gpuError_t)e));
  }
  return VELO_OK;
}

/* Words the device's error record as the CPU backend words the same
 * error. */
static velo_status data_error(const velo_graph *graph, size_t stride, const vgk_error *e,
                              velo_error *err) {
  size_t i = (size_t)e->node;
  int op = i < graph->n_nodes
               ? ((const velo_graph_node *)((const char *)graph->nodes + i * stride))->op
               : 0;
  switch (e->kind) {
    case VGK_ERR_GET_ROWS_ID:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op, "id %d at %d is outside [0, %d)", e->a, e->b, e->c);
    case VGK_ERR_SET_ROWS_ID:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op, "id %d at %d is outside dst's rows [0, %d)", e->a,
                       e->b, e->c);
    case VGK_ERR_ATTN_POS:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op, "position %d of token %d is outside the cache [0, %d)",
                       e->a, e->b, e->c);
    case VGK_ERR_PAGED_NEG:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op, "token %d: position %d is negative", e->b, e->a);
    case VGK_ERR_PAGED_WIDTH:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op,
                       "token %d: position %d needs %d blocks, but its column has room for W - 1 = %d", e->b,
                       e->a, e->c, e->d);
    case VGK_ERR_PAGED_SLOT:
      return node_fail(err, VELO_INVALID_ARGUMENT, i, op,
                       "token %d: block %d has id %d, giving slots outside the pool [0, %d)", e->b, e->c,
                       e->a, e->d);
    default:
      return node_fail(err, VELO_INTERNAL, i, op, "unknown device error %d", e->kind);
  }
}

/* The cache entry for the key just built, or NULL. */
static graph_entry *cache_find(velo_backend_instance *inst, uint64_t h) {
  for (int i = 0; i < GRAPH_CACHE; i++) {
    graph_entry *g = &inst->cache[i];
    if (g->key && g->hash == h && g->key_len == inst->key_len &&
        memcmp(g->key, inst->key, inst->key_len * sizeof *inst->key) == 0)
      return g;
  }
  return NULL;
}

/* A slot for a new key: an empty one, else the least recently used. */
static graph_entry *cache_insert(velo_backend_instance *inst, uint64_t h) {
  graph_entry *victim = &inst->cache[0];
  for (int i = 0; i < GRAPH_CACHE; i++) {
    graph_entry *g = &inst->cache[i];
    if (!g->key) {
      victim = g;
      break;
    }
    if (g->last_used < victim->last_used) victim = g;
  }
  if (victim->exec) gpuGraphExecDestroy(victim->exec);
  free(victim->key);
  memset(victim, 0, sizeof *victim);
  victim->key = malloc(inst->key_len * sizeof *inst->key);
  if (!victim->key) return NULL;
  memcpy(victim->key, inst->key, inst->key_len * sizeof *inst->key);
  victim->key_len = inst->key_len;
  victim->hash = h;
  return victim;
}

/* Captures the graph's launches into g->exec.  On failure, graphs are
 * turned off for the instance (logged once) and false is returned; the
 * caller then launches directly. */
static bool capture(velo_backend_instance *inst, const velo_graph *graph, size_t stride,
                    graph_entry *g, velo_error *err) {
  gpuGraph_t cg = NULL;
  gpuError_t e = gpuStreamBeginCapture(inst->stream);
  if (e == gpuSuccess) {
    velo_status st = launch_all(inst, graph, stride, err);
    gpuError_t end = gpuStreamEndCapture(inst->stream, &cg);
    e = end;
    if (st != VELO_OK && e == gpuSuccess) e = gpuGetLastError();
    if (st != VELO_OK && e == gpuSuccess) e = gpuErrorInvalidValue;
  }
  if (e == gpuSuccess) e = gpuGraphInstantiate(&g->exec, cg);
  if (cg) gpuGraphDestroy(cg);
  if (e != gpuSuccess) {
    gpuGetLastError();
    g->exec = NULL;
    inst->graphs = false;
    warn("GPU %d: graph capture failed (%s); running without graphs from now on", inst->device,
         err_name(e));
    return false;
  }
  debug("GPU %d: captured a graph of %zu nodes", inst->device, graph->n_nodes);
  return true;
}

/* compute(): see the top of the file. */
static velo_status gpu_compute(velo_backend_instance *inst, const velo_graph *graph, velo_error *err) {
  if (!inst_ok(inst))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": compute on an invalid instance");
  if (!graph || graph->struct_size < sizeof(velo_graph))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": compute without a valid graph");
  if (graph->n_nodes == 0) return VELO_OK;
  if (!graph->nodes)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": graph has %zu nodes but no array",
                          graph->n_nodes);
  size_t stride = graph->nodes[0].struct_size;
  if (stride < sizeof(velo_graph_node))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, VELO_GPU_NAME ": node struct_size %zu is smaller than %zu",
                          stride, sizeof(velo_graph_node));
  const char *base = (const char *)graph->nodes;
  velo_status st;
  if (graph->n_nodes > inst->tens_cap) {
    vgk_tensor *t = realloc(inst->tens, graph->n_nodes * 5 * sizeof *t);
    if (!t) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, VELO_GPU_NAME ": out of memory");
    inst->tens = t;
    inst->tens_cap = graph->n_nodes;
  }
  /* 1. structure and addresses of every node, and the scratch they need */
  size_t need = 0;
  inst->key_len = 0;
  static const char *const roles[5] = {"dst", "src0", "src1", "src2", "src3"};
  for (size_t i = 0; i < graph->n_nodes; i++) {
    const velo_graph_node *n = (const velo_graph_node *)(base + i * stride);
    if (n->struct_size != stride)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            VELO_GPU_NAME ": node %zu struct_size %u differs from node 0's %zu", i,
                            n->struct_size, stride);
    if ((st = node_check(n, i, err)) != VELO_OK) return st;
    vgk_tensor *t = &inst->tens[5 * i];
    memset(t, 0, 5 * sizeof *t);
    const velo_tensor *src[5] = {n->dst, n->src[0], n->src[1], n->src[2], n->src[3]};
    int used = 1 + velo_op_n_src(n->op);
    for (int k = 0; k < used; k++)
      if ((st = resolve(n, i, roles[k], src[k], &t[k], err)) != VELO_OK) return st;
    if (n->op == VELO_OP_SET_ROWS || n->op == VELO_OP_ATTENTION_PAGED)
      for (int k = 1; k < used; k++)
        if (overlap(src[0], &t[0], src[k], &t[k]))
          return node_fail(err, VELO_INVALID_ARGUMENT, i, n->op,
                           "dst overlaps %s in memory; this op needs dst apart from every source", roles[k]);
    if (n->op == VELO_OP_MUL_MAT) {
      size_t s = vgk_mul_mat_scratch(n->src[0]->dtype, n->src[0]->ne[0], t_rows(n->src[1]));
      need = s > need ? s : need;
    }
    if (inst->graphs) {
      bool ok = key_push(inst, &n->op, sizeof n->op) && key_push(inst, n->iparams, sizeof n->iparams) &&
                key_push(inst, n->fparams, sizeof n->fparams) && key_push(inst, t, 5 * sizeof *t);
      if (!ok) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, VELO_GPU_NAME ": out of memory");
    }
  }
  if ((st = use_device(inst, err)) != VELO_OK) return st;
  /* 2. scratch (a new address invalidates every captured graph) */
  if (need > inst->scratch_size) {
    if ((st = sync_stream(inst, "compute", err)) != VELO_OK) return st;
    graph_cache_clear(inst);
    if (inst->scratch) gpuFree(inst->scratch);
    inst->scratch = NULL;
    inst->scratch_size = 0;
    size_t want = need + need / 4;
    gpuError_t e = gpuMalloc((void **)&inst->scratch, want);
    if (e != gpuSuccess) {
      gpuGetLastError();
      inst->scratch = NULL;
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                            VELO_GPU_NAME ": cannot allocate %zu bytes of scratch on GPU %d: %s", want,
                            inst->device, err_name(e));
    }
    inst->scratch_size = want;
  }
  /* 3. run: replay a captured graph, capture one, or launch directly */
  gpuError_t e = gpuMemsetAsync(inst->d_err, 0, sizeof(vgk_error), inst->stream);
  if (e != gpuSuccess) {
    gpuGetLastError();
    return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": compute failed on GPU %d: %s", inst->device,
                          err_name(e));
  }
  bool launched = false;
  if (inst->graphs) {
    uint64_t scratch_word = (uint64_t)(uintptr_t)inst->scratch;
    if (!key_push(inst, &scratch_word, sizeof scratch_word))
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, VELO_GPU_NAME ": out of memory");
    uint64_t h = key_hash(inst->key, inst->key_len);
    graph_entry *g = cache_find(inst, h);
    if (g) {
      g->last_used = ++inst->tick;
      if (g->exec || capture(inst, graph, stride, g, err)) {
        e = gpuGraphLaunch(g->exec, inst->stream);
        if (e != gpuSuccess) {
          gpuGetLastError();
          return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": graph launch failed on GPU %d: %s",
                                inst->device, err_name(e));
        }
        launched = true;
      }
    } else {
      g = cache_insert(inst, h);
      if (g) g->last_used = ++inst->tick;
    }
  }
  if (!launched && (st = launch_all(inst, graph, stride, err)) != VELO_OK) {
    sync_stream(inst, "compute", NULL);
    return st;
  }
  e = gpuMemcpyAsync(inst->h_err, inst->d_err, sizeof(vgk_error), gpuMemcpyDeviceToHost, inst->stream);
  if (e != gpuSuccess) {
    gpuGetLastError();
    return velo_error_set(err, VELO_INTERNAL, VELO_GPU_NAME ": compute failed on GPU %d: %s", inst->device,
                          err_name(e));
  }
  if ((st = sync_stream(inst, "compute", err)) != VELO_OK) return st;
  if (inst->h_err->claimed) return data_error(graph, stride, inst->h_err, err);
  return VELO_OK;
}

/* See gpu_backend.h. */
const velo_backend_iface velo_gpu_iface = {
    .struct_size = sizeof(velo_backend_iface),
    .probe = gpu_probe,
    .device_count = gpu_device_count,
    .device_info = gpu_device_info,
    .open = gpu_open,
    .close = gpu_close,
    .buffer_alloc = gpu_buffer_alloc,
    .buffer_wrap_host = NULL,
    .buffer_free = gpu_buffer_free,
    .buffer_host_ptr = gpu_buffer_host_ptr,
    .buffer_write = gpu_buffer_write,
    .buffer_read = gpu_buffer_read,
    .supports = gpu_supports,
    .compute = gpu_compute,
};
