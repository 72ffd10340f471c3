/*
 * backend.c - the CPU backend's velo_backend_iface: probe, the one device
 * (this machine's CPU), instances with a persistent thread pool, host
 * memory buffers, and graph compute (node kernels are in ops.c).
 *
 * Environment: VELO_CPU_ISA=scalar|avx2|avx512 makes open() use that kernel
 * variant instead of the fastest available one (for comparing results; an
 * unavailable variant makes open() fail with INVALID_ARGUMENT).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cpu_backend.h"

#define MAX_THREADS 1024

/* Online CPUs, at least 1. */
static int online_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) return 1;
  return n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* Copies the value of the first "key<spaces/tabs>: value" line of a
 * /proc-style file into out (trimmed); false if absent. */
static bool proc_field(const char *path, const char *key, char *out, size_t out_size) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char line[512];
  size_t klen = strlen(key);
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    char *p = line + klen;
    while (*p == ' ' || *p == '\t') p++;
    if (*p != ':') continue;
    p++;
    while (*p == ' ' || *p == '\t') p++;
    size_t n = strcspn(p, "\n");
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    if (n >= out_size) n = out_size - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    found = n > 0;
  }
  fclose(f);
  return found;
}

static velo_status choose_vec(const velo_cpu_vec **out, velo_error *err);

/* probe(): the CPU backend always runs; the reason names the kernel variant
 * open() will use ("available; kernels: AVX-512"), which `velod
 * --list-plugins` shows. */
static velo_status cpu_probe(char *reason, size_t reason_size) {
  const velo_cpu_vec *vec;
  if (choose_vec(&vec, NULL) != VELO_OK) vec = velo_cpu_vec_best();
  if (reason && reason_size > 0) snprintf(reason, reason_size, "available; kernels: %s", vec->name);
  return VELO_OK;
}

/* device_count(): always one device, the host CPU (all its cores). */
static int32_t cpu_device_count(void) { return 1; }

/* Bytes of velo_device_info in ABI 1.0, before batch_invariant. */
#define DEVICE_INFO_SIZE_1_0 offsetof(velo_device_info, batch_invariant)

/* device_info(): name from /proc/cpuinfo "model name" and the online CPU
 * count; description names the kernel variant open() will use (VELO_CPU_ISA
 * or the fastest); memory from sysconf, with
 * "free" taken as /proc/meminfo MemAvailable when present (MemFree alone
 * ignores reclaimable page cache, e.g. a memory-mapped model).
 * batch_invariant (written only when out->struct_size covers it; an ABI 1.0
 * struct is accepted) is true: every op computes one token's outputs with
 * arithmetic that does not depend on the other tokens of the node (see the
 * top of ops.c; test_cpu_ops checks MUL_MAT and ATTENTION_PAGED). */
static velo_status cpu_device_info(int32_t index, velo_device_info *out, velo_error *err) {
  if (index != 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: no device %d (there is 1)",
                          (int)index);
  if (!out || out->struct_size < DEVICE_INFO_SIZE_1_0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "cpu: device_info needs a velo_device_info with struct_size >= %zu",
                          DEVICE_INFO_SIZE_1_0);
  if (out->struct_size >= offsetof(velo_device_info, batch_invariant) + sizeof(bool))
    out->batch_invariant = true;
  char model[128];
  if (!proc_field("/proc/cpuinfo", "model name", model, sizeof model))
    snprintf(model, sizeof model, "CPU");
  int n = online_cpus();
  /* the hardware threads, not an instance's pool size (device_info has no instance) */
  snprintf(out->name, sizeof out->name, "%.100s (%d online CPU%s)", model, n, n == 1 ? "" : "s");
  const velo_cpu_vec *vec;
  if (choose_vec(&vec, NULL) != VELO_OK) vec = velo_cpu_vec_best();
  static const char *const isa_detail[] = {
      [VELO_CPU_ISA_SCALAR] = "",
      [VELO_CPU_ISA_AVX2] = " + FMA + F16C (bit-identical to portable C)",
      [VELO_CPU_ISA_AVX512] = " F/BW/VL/VNNI (bit-identical to portable C)",
  };
  snprintf(out->description, sizeof out->description,
           "kernels: %s%s; weights F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q8_K Q4_K Q5_K Q6_K "
           "(SIMD) and Q2_K Q3_K (portable C), activations quantized as llama.cpp; "
           "batch-invariant",
           vec->name, isa_detail[vec->isa]);
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  out->memory_total = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
  out->memory_free = avail > 0 && page > 0 ? (uint64_t)avail * (uint64_t)page : 0;
  char mem[64];
  if (proc_field("/proc/meminfo", "MemAvailable", mem, sizeof mem)) {
    unsigned long long kib = strtoull(mem, NULL, 10);
    if (kib > 0) out->memory_free = (uint64_t)kib * 1024u;
  }
  return VELO_OK;
}

/* See cpu_backend.h. */
velo_status velo_cpu_instance_set_isa(velo_backend_instance *inst, velo_cpu_isa isa,
                                      velo_error *err) {
  const velo_cpu_vec *v = velo_cpu_vec_for(isa);
  if (!v)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "cpu: kernel variant %d is not available on this CPU", (int)isa);
  inst->vec = v;
  return VELO_OK;
}

/* Picks the kernel variant: VELO_CPU_ISA if set, else the fastest. */
static velo_status choose_vec(const velo_cpu_vec **out, velo_error *err) {
  const char *env = getenv("VELO_CPU_ISA");
  if (!env || !*env) {
    *out = velo_cpu_vec_best();
    return VELO_OK;
  }
  velo_cpu_isa isa;
  if (strcasecmp(env, "scalar") == 0 || strcasecmp(env, "portable") == 0)
    isa = VELO_CPU_ISA_SCALAR;
  else if (strcasecmp(env, "avx2") == 0)
    isa = VELO_CPU_ISA_AVX2;
  else if (strcasecmp(env, "avx512") == 0 || strcasecmp(env, "avx-512") == 0)
    isa = VELO_CPU_ISA_AVX512;
  else
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "cpu: VELO_CPU_ISA=%.64s is not one of scalar, avx2, avx512", env);
  *out = velo_cpu_vec_for(isa);
  if (!*out)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "cpu: VELO_CPU_ISA=%.64s is not supported by this CPU", env);
  return VELO_OK;
}

/* open(): device 0 only; n_threads 0 = online CPUs.  opts may be NULL
 * (defaults); members beyond opts->struct_size are taken as 0. */
static velo_status cpu_open(const velo_backend_options *opts, velo_backend_instance **out,
                            velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: open() without out");
  *out = NULL;
  int32_t device = 0, n_threads = 0;
  if (opts) {
    if (opts->struct_size >= offsetof(velo_backend_options, device) + sizeof opts->device)
      device = opts->device;
    if (opts->struct_size >= offsetof(velo_backend_options, n_threads) + sizeof opts->n_threads)
      n_threads = opts->n_threads;
  }
  if (device != 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: no device %d (there is 1)",
                          (int)device);
  if (n_threads < 0 || n_threads > MAX_THREADS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: n_threads %d outside [0, %d]",
                          (int)n_threads, MAX_THREADS);
  if (n_threads == 0) n_threads = online_cpus();

  const velo_cpu_vec *vec;
  velo_status st = choose_vec(&vec, err);
  if (st != VELO_OK) return st;
  velo_backend_instance *inst = calloc(1, sizeof *inst);
  if (!inst) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: out of memory");
  st = velo_cpu_pool_create(n_threads, &inst->pool, err);
  if (st != VELO_OK) {
    free(inst);
    return st;
  }
  inst->magic = VELO_CPU_INSTANCE_MAGIC;
  inst->vec = vec;
  *out = inst;
  return VELO_OK;
}

/* close(): joins the workers and frees the instance.  NULL is a no-op. */
static void cpu_close(velo_backend_instance *inst) {
  if (!inst) return;
  velo_cpu_pool_destroy(inst->pool);
  free(inst->scratch);
  inst->magic = 0;
  free(inst);
}

/* buffer_alloc(): size bytes of 64-byte aligned host memory (a zero size
 * still gets a valid, empty buffer). */
static velo_status cpu_buffer_alloc(velo_backend_instance *inst, size_t size, velo_buffer **out,
                                    velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: buffer_alloc without out");
  *out = NULL;
  if (size > SIZE_MAX - VELO_CPU_ALIGN)
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: cannot allocate %zu bytes", size);
  size_t rounded = (size + VELO_CPU_ALIGN - 1) / VELO_CPU_ALIGN * VELO_CPU_ALIGN;
  if (rounded == 0) rounded = VELO_CPU_ALIGN;
  velo_buffer *buf = malloc(sizeof *buf);
  void *p = buf ? aligned_alloc(VELO_CPU_ALIGN, rounded) : NULL;
  if (!p) {
    free(buf);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: cannot allocate %zu bytes", size);
  }
  *buf = (velo_buffer){.magic = VELO_CPU_BUFFER_MAGIC, .owned = true, .ptr = p, .size = size};
  *out = buf;
  return VELO_OK;
}

/* buffer_wrap_host(): borrows [ptr, ptr+size) read-only; the backend never
 * writes to it (buffer_write and a dst inside it are refused) nor frees it. */
static velo_status cpu_buffer_wrap_host(velo_backend_instance *inst, const void *ptr, size_t size,
                                        velo_buffer **out, velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: buffer_wrap_host without out");
  *out = NULL;
  if (!ptr && size > 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: buffer_wrap_host of NULL");
  velo_buffer *buf = malloc(sizeof *buf);
  if (!buf) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: out of memory");
  *buf = (velo_buffer){.magic = VELO_CPU_BUFFER_MAGIC, .owned = false, .ptr = (void *)ptr, .size = size};
  *out = buf;
  return VELO_OK;
}

/* buffer_free(): frees owned memory (never wrapped memory) and the handle.
 * NULL is a no-op.  inst is unused: CPU buffers belong to no instance. */
static void cpu_buffer_free(velo_backend_instance *inst, velo_buffer *buf) {
  if (!buf) return;
  if (buf->owned) free(buf->ptr);
  buf->magic = 0;
  free(buf);
}

/* buffer_host_ptr(): every CPU buffer is host memory; NULL only for NULL. */
static void *cpu_buffer_host_ptr(velo_buffer *buf) { return buf ? buf->ptr : NULL; }

/* Shared checks of buffer_write/read: a live CPU buffer and an in-range
 * [offset, offset + size). */
static velo_status check_copy(const velo_buffer *buf, size_t offset, const void *host,
                              size_t size, const char *what, velo_error *err) {
  if (!buf || buf->magic != VELO_CPU_BUFFER_MAGIC)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: %s on a buffer that is not a CPU buffer", what);
  if (!host && size > 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: %s with NULL host memory", what);
  if (offset > buf->size || size > buf->size - offset)
    return velo_error_set(err, VELO_OUT_OF_RANGE,
                          "cpu: %s of %zu bytes at offset %zu exceeds the buffer (%zu bytes)",
                          what, size, offset, buf->size);
  return VELO_OK;
}

/* buffer_write(): copies size bytes from src to buf at offset.
 * OUT_OF_RANGE past the end, FAILED_PRECONDITION for wrapped (read-only)
 * memory, INVALID_ARGUMENT for a bad handle; nothing is written on error. */
static velo_status cpu_buffer_write(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                                    const void *src, size_t size, velo_error *err) {
  velo_status st = check_copy(buf, offset, src, size, "buffer_write", err);
  if (st != VELO_OK) return st;
  if (!buf->owned)
    return velo_error_set(err, VELO_FAILED_PRECONDITION,
                          "cpu: buffer_write to wrapped read-only host memory");
  if (size) memcpy((char *)buf->ptr + offset, src, size);
  return VELO_OK;
}

/* buffer_read(): copies size bytes of buf at offset to dst; errors as
 * buffer_write (wrapped memory may be read). */
static velo_status cpu_buffer_read(velo_backend_instance *inst, velo_buffer *buf, size_t offset,
                                   void *dst, size_t size, velo_error *err) {
  velo_status st = check_copy(buf, offset, dst, size, "buffer_read", err);
  if (st != VELO_OK) return st;
  if (size) memcpy(dst, (const char *)buf->ptr + offset, size);
  return VELO_OK;
}

/* supports(): the structural checks of compute() (op, dtypes, shapes,
 * parameters) without looking at data.  Thread-safe. */
static bool cpu_supports(velo_backend_instance *inst, const velo_graph_node *node) {
  return node && node->struct_size >= sizeof(velo_graph_node) &&
         velo_cpu_node_check(node, 0, NULL) == VELO_OK;
}

/* compute(): checks every node first (so an unsupported or malformed node
 * fails before anything runs), then runs them in order; a data error found
 * while running (id or position out of range) stops at that node, with
 * earlier nodes' results already written.  The node array's stride is the
 * first node's struct_size, so a newer host with a larger node struct
 * works; every node must carry the same struct_size. */
static velo_status cpu_compute(velo_backend_instance *inst, const velo_graph *graph,
                               velo_error *err) {
  if (!inst || inst->magic != VELO_CPU_INSTANCE_MAGIC)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: compute on an invalid instance");
  if (!graph || graph->struct_size < sizeof(velo_graph))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: compute without a valid graph");
  if (graph->n_nodes == 0) return VELO_OK;
  if (!graph->nodes)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: graph has %zu nodes but no array",
                          graph->n_nodes);
  size_t stride = graph->nodes[0].struct_size;
  if (stride < sizeof(velo_graph_node))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "cpu: node struct_size %zu is smaller than %zu", stride,
                          sizeof(velo_graph_node));
  const char *base = (const char *)graph->nodes;
  for (size_t i = 0; i < graph->n_nodes; i++) {
    const velo_graph_node *node = (const velo_graph_node *)(base + i * stride);
    if (node->struct_size != stride)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "cpu: node %zu struct_size %u differs from node 0's %zu", i,
                            node->struct_size, stride);
    velo_status st = velo_cpu_node_check(node, i, err);
    if (st != VELO_OK) return st;
  }
  for (size_t i = 0, done = 0; i < graph->n_nodes; i += done) {
    velo_status st = velo_cpu_graph_step(inst, base, stride, i, graph->n_nodes, &done, err);
    if (st != VELO_OK) return st;
  }
  return VELO_OK;
}

/* See cpu_backend.h. */
const velo_backend_iface velo_cpu_iface = {
    .struct_size = sizeof(velo_backend_iface),
    .probe = cpu_probe,
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .open = cpu_open,
    .close = cpu_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_wrap_host = cpu_buffer_wrap_host,
    .buffer_free = cpu_buffer_free,
    .buffer_host_ptr = cpu_buffer_host_ptr,
    .buffer_write = cpu_buffer_write,
    .buffer_read = cpu_buffer_read,
    .supports = cpu_supports,
    .compute = cpu_compute,
};

/* See cpu_backend.h. */
const velo_backend_iface *velo_cpu_backend_iface(void) { return &velo_cpu_iface; }
