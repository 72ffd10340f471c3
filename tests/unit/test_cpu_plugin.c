/*
 * test_cpu_plugin.c - loads the built libvelo-backend-cpu.so with dlopen
 * and checks it as the host will see it:
 *  - velo_plugin_entry is the only exported velo_ symbol (nm -D), internal
 *    functions are not reachable with dlsym;
 *  - the entry refuses another ABI major version; the descriptor's fields;
 *  - probe, device_count, device_info, open/close with various options;
 *  - buffers: alignment, bounds checks (OUT_OF_RANGE), wrapped read-only
 *    memory (an mmap'd PROT_READ page is never written nor freed);
 *  - a MUL_MAT on weights wrapped from a read-only mapping gives the same
 *    bits through the plugin as through the statically linked library.
 *
 * VELO_CPU_PLUGIN_PATH and VELO_NM come from tests/unit/cpu.cmake.
 * Prints "cpu: N checks passed"; exits non-zero on any failure.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu_backend.h"
#include "velo/plugin.h"

#include "check.h"

/* Lists the module's exported symbols with nm -D: exactly one velo_ symbol,
 * velo_plugin_entry. */
static void test_exports(void) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' -D --defined-only '%s' 2>/dev/null", VELO_NM,
           VELO_CPU_PLUGIN_PATH);
  FILE *p = popen(cmd, "r");
  CHECK(p != NULL, "cannot run %s", cmd);
  if (!p) return;
  char line[512];
  int n_velo = 0, n_entry = 0, n_all = 0;
  while (fgets(line, sizeof line, p)) {
    char addr[64], type[8], name[256];
    if (sscanf(line, "%63s %7s %255s", addr, type, name) != 3) continue;
    n_all++;
    if (strncmp(name, "velo", 4) == 0) {
      n_velo++;
      if (strcmp(name, "velo_plugin_entry") == 0 && strcmp(type, "T") == 0) n_entry++;
      else fprintf(stderr, "cpu: unexpected exported symbol %s\n", name);
    }
  }
  int rc = pclose(p);
  CHECK(rc == 0, "%s exited with %d", cmd, rc);
  CHECK(n_entry == 1 && n_velo == 1, "exported velo symbols: %d (entry %d)", n_velo, n_entry);
  printf("cpu: %s exports %d dynamic symbol(s)\n", VELO_CPU_PLUGIN_PATH, n_all);
}

static void test_descriptor(void *so) {
  velo_plugin_entry_fn entry = (velo_plugin_entry_fn)dlsym(so, VELO_PLUGIN_ENTRY_SYMBOL);
  CHECK(entry != NULL, "dlsym(velo_plugin_entry): %s", dlerror());
  if (!entry) return;
  CHECK(dlsym(so, "velo_cpu_backend_iface") == NULL, "internal function is exported");
  CHECK(dlsym(so, "velo_cpu_iface") == NULL, "internal table is exported");
  CHECK(dlsym(so, "velo_fp32_to_fp16") == NULL, "kernel is exported");
  CHECK(entry(VELO_ABI_MAJOR + 1, 0) == NULL, "another ABI major must be refused");
  CHECK(entry(VELO_ABI_MAJOR - 1, 0) == NULL, "an older ABI major must be refused");
  CHECK(entry(VELO_ABI_MAJOR, VELO_ABI_MINOR + 5) != NULL, "a newer host minor is fine");
  const velo_plugin_descriptor *d = entry(VELO_ABI_MAJOR, VELO_ABI_MINOR);
  CHECK(d != NULL, "entry returned NULL");
  if (!d) return;
  CHECK(d->struct_size == sizeof(velo_plugin_descriptor), "struct_size %u", d->struct_size);
  CHECK(d->abi_major == VELO_ABI_MAJOR && d->abi_minor <= VELO_ABI_MINOR, "abi %u.%u",
        d->abi_major, d->abi_minor);
  CHECK(d->name && strcmp(d->name, "cpu") == 0, "name");
  CHECK(d->kind == VELO_PLUGIN_BACKEND, "kind %d", (int)d->kind);
  CHECK(d->version && strcmp(d->version, "0.1.0") == 0, "version");
  CHECK(d->description && *d->description, "description");
  CHECK(d->backend != NULL && d->task == NULL, "backend table");
  CHECK(d->backend->struct_size == sizeof(velo_backend_iface), "iface struct_size");
}

static void test_devices(const velo_backend_iface *B) {
  char reason[64] = "x";
  /* "available; kernels: <variant>" (what velod --list-plugins shows) */
  char want[64];
  snprintf(want, sizeof want, "available; kernels: %s", velo_cpu_vec_best()->name);
  if (getenv("VELO_CPU_ISA")) /* another variant chosen: only the prefix is known */
    want[strlen("available; kernels: ")] = '\0';
  CHECK(B->probe(reason, sizeof reason) == VELO_OK && strncmp(reason, want, strlen(want)) == 0,
        "probe: %s", reason);
  CHECK(B->probe(NULL, 0) == VELO_OK, "probe without a reason buffer");
  CHECK(B->device_count() == 1, "device_count %d", (int)B->device_count());
  velo_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  velo_error err;
  velo_error_init(&err);
  CHECK(B->device_info(0, &info, &err) == VELO_OK, "device_info: %s", err.message);
  CHECK(info.name[0] && strstr(info.name, "online CPU"), "name \"%s\"", info.name);
  CHECK(info.description[0], "description");
  CHECK(info.memory_total > 0 && info.memory_free > 0 && info.memory_free <= info.memory_total,
        "memory %llu / %llu", (unsigned long long)info.memory_free,
        (unsigned long long)info.memory_total);
  printf("cpu: device \"%s\": %s; %.1f of %.1f GiB free\n", info.name, info.description,
         (double)info.memory_free / (1 << 30), (double)info.memory_total / (1 << 30));
  CHECK(B->device_info(1, &info, &err) == VELO_INVALID_ARGUMENT, "device 1");
  CHECK(B->device_info(-1, &info, NULL) == VELO_INVALID_ARGUMENT, "device -1");
  info.struct_size = 4;
  CHECK(B->device_info(0, &info, NULL) == VELO_INVALID_ARGUMENT, "short struct");
}

static void test_open(const velo_backend_iface *B) {
  velo_backend_instance *inst = NULL;
  velo_error err;
  velo_error_init(&err);
  CHECK(B->open(NULL, &inst, &err) == VELO_OK && inst, "open(NULL): %s", err.message);
  B->close(inst);
  for (int n = 0; n <= 4; n++) {
    velo_backend_options o = {.struct_size = sizeof o, .device = 0, .n_threads = n};
    inst = NULL;
    CHECK(B->open(&o, &inst, &err) == VELO_OK && inst, "open %d threads: %s", n, err.message);
    B->close(inst);
  }
  velo_backend_options o = {.struct_size = sizeof o, .device = 1, .n_threads = 1};
  CHECK(B->open(&o, &inst, &err) == VELO_INVALID_ARGUMENT && !inst, "device 1");
  o.device = 0;
  o.n_threads = -1;
  CHECK(B->open(&o, &inst, &err) == VELO_INVALID_ARGUMENT && !inst, "n_threads -1");
  B->close(NULL);
}

static void test_buffers(const velo_backend_iface *B) {
  velo_backend_instance *inst = NULL;
  velo_backend_options o = {.struct_size = sizeof o, .device = 0, .n_threads = 2};
  if (B->open(&o, &inst, NULL) != VELO_OK) {
    CHECK(0, "open");
    return;
  }
  velo_error err;
  velo_error_init(&err);
  velo_buffer *buf = NULL;
  CHECK(B->buffer_alloc(inst, 1000, &buf, &err) == VELO_OK && buf, "alloc: %s", err.message);
  unsigned char *p = B->buffer_host_ptr(buf);
  CHECK(p && (uintptr_t)p % 64 == 0, "host_ptr %p not 64-aligned", (void *)p);
  unsigned char src[16], dst[16];
  for (int i = 0; i < 16; i++) src[i] = (unsigned char)(i * 7 + 1);
  CHECK(B->buffer_write(inst, buf, 990, src, 10, &err) == VELO_OK, "write at the end");
  CHECK(B->buffer_read(inst, buf, 990, dst, 10, &err) == VELO_OK && memcmp(src, dst, 10) == 0,
        "read back");
  CHECK(p[995] == src[5], "host_ptr sees the write");
  CHECK(B->buffer_write(inst, buf, 990, src, 11, &err) == VELO_OUT_OF_RANGE, "write past end");
  CHECK(B->buffer_read(inst, buf, 1001, dst, 0, &err) == VELO_OUT_OF_RANGE, "offset past end");
  CHECK(B->buffer_read(inst, buf, SIZE_MAX, dst, 1, &err) == VELO_OUT_OF_RANGE, "offset SIZE_MAX");
  CHECK(B->buffer_read(inst, buf, 1, dst, SIZE_MAX, &err) == VELO_OUT_OF_RANGE, "size SIZE_MAX");
  CHECK(err.code == VELO_OUT_OF_RANGE && strstr(err.message, "exceeds"), "message: %s",
        err.message);
  CHECK(B->buffer_write(inst, buf, 1000, src, 0, &err) == VELO_OK, "empty write at the end");
  B->buffer_free(inst, buf);
  B->buffer_free(inst, NULL);
  CHECK(B->buffer_alloc(inst, 0, &buf, &err) == VELO_OK && buf, "alloc 0");
  B->buffer_free(inst, buf);
  buf = NULL;
  CHECK(B->buffer_alloc(inst, SIZE_MAX - 8, &buf, &err) == VELO_RESOURCE_EXHAUSTED && !buf,
        "alloc SIZE_MAX - 8");

  /* a read-only mapping: any write by the backend would crash the test */
  long page = sysconf(_SC_PAGESIZE);
  void *ro = mmap(NULL, (size_t)page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(ro != MAP_FAILED, "mmap");
  if (ro != MAP_FAILED) {
    CHECK(B->buffer_wrap_host(inst, ro, (size_t)page, &buf, &err) == VELO_OK, "wrap: %s",
          err.message);
    CHECK(B->buffer_host_ptr(buf) == ro, "wrapped host_ptr");
    CHECK(B->buffer_write(inst, buf, 0, src, 4, &err) == VELO_FAILED_PRECONDITION,
          "write to wrapped read-only memory: %s", velo_status_name(err.code));
    CHECK(B->buffer_read(inst, buf, 8, dst, 8, &err) == VELO_OK && dst[0] == 0, "read wrapped");
    CHECK(B->buffer_read(inst, buf, (size_t)page - 4, dst, 8, &err) == VELO_OUT_OF_RANGE,
          "read past the wrapped region");
    B->buffer_free(inst, buf); /* must not free() or write the mapping */
    CHECK(munmap(ro, (size_t)page) == 0, "munmap after buffer_free");
  }
  CHECK(B->buffer_wrap_host(inst, NULL, 16, &buf, &err) == VELO_INVALID_ARGUMENT, "wrap NULL");
  B->close(inst);
}

/* A Q8_0 MUL_MAT on weights in a wrapped PROT_READ mapping, through the
 * plugin and through the static library: same bits. */
static void test_compute(const velo_backend_iface *P) {
  enum { K = 128, N = 24, M = 3 };
  const velo_backend_iface *S = velo_cpu_backend_iface();
  size_t wbytes = (size_t)N * K / 32 * sizeof(velo_block_q8_0);
  long page = sysconf(_SC_PAGESIZE);
  size_t map = (wbytes + (size_t)page - 1) / (size_t)page * (size_t)page;
  void *w = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (w == MAP_FAILED) {
    CHECK(0, "mmap");
    return;
  }
  velo_block_q8_0 *blk = w;
  uint32_t s = 12345;
  for (size_t b = 0; b < (size_t)N * K / 32; b++) {
    blk[b].d = velo_fp32_to_fp16(0.01f + 0.001f * (float)(b % 7));
    for (int j = 0; j < 32; j++) {
      s = s * 1103515245u + 12345u;
      blk[b].qs[j] = (int8_t)((int)((s >> 16) % 255) - 127);
    }
  }
  CHECK(mprotect(w, map, PROT_READ) == 0, "mprotect");
  float x[K * M], out[2][N * M];
  for (int i = 0; i < K * M; i++) x[i] = (float)((i * 37) % 101 - 50) / 25.0f + 0.01f;

  const velo_backend_iface *tabs[2] = {P, S};
  for (int k = 0; k < 2; k++) {
    const velo_backend_iface *B = tabs[k];
    velo_backend_instance *inst = NULL;
    velo_backend_options o = {.struct_size = sizeof o, .device = 0, .n_threads = 2};
    velo_error err;
    velo_error_init(&err);
    if (B->open(&o, &inst, &err) != VELO_OK) {
      CHECK(0, "open: %s", err.message);
      continue;
    }
    velo_buffer *wb = NULL, *xb = NULL, *ob = NULL;
    CHECK(B->buffer_wrap_host(inst, w, wbytes, &wb, &err) == VELO_OK, "wrap weights");
    CHECK(B->buffer_alloc(inst, sizeof x, &xb, &err) == VELO_OK, "alloc x");
    CHECK(B->buffer_alloc(inst, sizeof out[0], &ob, &err) == VELO_OK, "alloc out");
    CHECK(B->buffer_write(inst, xb, 0, x, sizeof x, &err) == VELO_OK, "write x");
    velo_tensor tw, tx, to;
    memset(&tw, 0, sizeof tw);
    memset(&tx, 0, sizeof tx);
    memset(&to, 0, sizeof to);
    velo_tensor_set_shape(&tw, VELO_DTYPE_Q8_0, 2, (const int64_t[]){K, N});
    velo_tensor_set_shape(&tx, VELO_DTYPE_F32, 2, (const int64_t[]){K, M});
    velo_tensor_set_shape(&to, VELO_DTYPE_F32, 2, (const int64_t[]){N, M});
    tw.buffer = wb;
    tw.data = B->buffer_host_ptr(wb);
    tx.buffer = xb;
    tx.data = B->buffer_host_ptr(xb);
    to.buffer = ob;
    to.data = B->buffer_host_ptr(ob);
    velo_graph_node node;
    memset(&node, 0, sizeof node);
    node.struct_size = sizeof node;
    node.op = VELO_OP_MUL_MAT;
    node.dst = &to;
    node.src[0] = &tw;
    node.src[1] = &tx;
    CHECK(B->supports(inst, &node), "supports MUL_MAT Q8_0");
    velo_graph g = {.struct_size = sizeof g, .n_nodes = 1, .nodes = &node};
    CHECK(B->compute(inst, &g, &err) == VELO_OK, "compute: %s", err.message);
    CHECK(B->buffer_read(inst, ob, 0, out[k], sizeof out[k], &err) == VELO_OK, "read out");
    B->buffer_free(inst, wb);
    B->buffer_free(inst, xb);
    B->buffer_free(inst, ob);
    B->close(inst);
  }
  CHECK(memcmp(out[0], out[1], sizeof out[0]) == 0, "plugin and static library differ");
  CHECK(out[0][0] != 0.0f, "result is non-trivial");
  munmap(w, map);
}

int main(void) {
  test_exports();
  void *so = dlopen(VELO_CPU_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
  CHECK(so != NULL, "dlopen(%s): %s", VELO_CPU_PLUGIN_PATH, dlerror());
  if (so) {
    test_descriptor(so);
    velo_plugin_entry_fn entry = (velo_plugin_entry_fn)dlsym(so, VELO_PLUGIN_ENTRY_SYMBOL);
    const velo_plugin_descriptor *d = entry ? entry(VELO_ABI_MAJOR, VELO_ABI_MINOR) : NULL;
    if (d && d->backend) {
      test_devices(d->backend);
      test_open(d->backend);
      test_buffers(d->backend);
      test_compute(d->backend);
    }
    CHECK(dlclose(so) == 0, "dlclose: %s", dlerror());
  }
  return check_summary("cpu");
}
