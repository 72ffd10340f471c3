/*
 * test_cpu_perf.c - a benchmark (not a test: speed is never asserted in the
 * suite) of the CPU backend's MUL_MAT, the op that dominates decoding and
 * prefill, on the TinyLlama-1.1B shapes: weights [K, N] = [2048, 2048]
 * (attention q/o), [2048, 256] (k/v), [2048, 5632] (gate/up), [5632, 2048]
 * (down) and [2048, 32000] (output), times M activation columns (M = 1 is
 * one decode step, 8 or 16 a batched decode step, 64 or 128 prefill).
 *
 * Each case keeps enough copies of the weight matrix to cover 256 MiB and
 * uses them in turn, so that every product reads its weights from memory as
 * a real model's decode does, not from the last-level cache.  The kernel
 * variants (AVX-512, AVX2, portable C where present) are interleaved
 * repetition by repetition, and each line gives the median time, GFLOP/s
 * (2*K*N*M / time), the weight bytes read per second, and for M > 1 the
 * columns per second relative to M = 1 of the same variant.  A read probe
 * (every thread sums its share of a weight copy with 32-byte loads) runs
 * interleaved with them on the same pool, and the M = 1 lines give the
 * kernel's weight bytes per second as a fraction of the probe's: the decode
 * roofline fraction of one product, measured in the same run.
 *
 * Usage: test_cpu_perf [-t threads] [-r reps]
 *                      [-d q4_0,q8_0,f16,f32,q4_k,q5_k,q6_k,q4_1,q5_1,q5_0,bf16,q8_k]
 *                      [-m 1,8,16,64,128] [-v avx512,avx2,scalar] [-s 0,1,2,3,4]
 * (-s picks shapes by index in the order above).
 * It builds against the backend's internal header only through the
 * backend table and velo_cpu_instance_set_isa, so the same file can time an
 * older copy of the backend.  Exits non-zero only when a compute fails.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cpu_backend.h"

#include "check.h"

#ifndef VELO_CPU_ISA_LAST
#define VELO_CPU_ISA_LAST VELO_CPU_ISA_AVX2 /* an older backend */
#endif

enum { MAX_REPS = 64, MAX_COPIES = 64, MAX_VARIANTS = VELO_CPU_ISA_LAST + 1 };
#define WEIGHT_BYTES_TARGET ((size_t)256 << 20)

static const velo_backend_iface *B;

/* ------------------------------------------------------------------ */
/* Read-bandwidth probe                                                 */
/* ------------------------------------------------------------------ */

typedef struct probe_arg {
  const unsigned char *p;
  size_t n;
  uint64_t sums[64 * 8]; /* one cache line per thread */
} probe_arg;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* Sums this thread's share of [p, p+n) as 64-bit lanes (AVX2 when the CPU
 * has it, which every kernel variant here but portable C needs). */
__attribute__((target("avx2"))) static uint64_t sum_avx2(const unsigned char *p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
  }
  __m256i a = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  uint64_t l[4];
  _mm256_storeu_si256((__m256i *)l, a);
  return l[0] + l[1] + l[2] + l[3] + (i < n ? p[i] : 0);
}
#endif

/* One pool share of the probe. */
static void probe_share(void *arg, int ith, int nth) {
  probe_arg *a = arg;
  size_t b = a->n * (size_t)ith / (size_t)nth, e = a->n * (size_t)(ith + 1) / (size_t)nth;
  uint64_t s = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2")) {
    a->sums[ith * 8] = sum_avx2(a->p + b, e - b);
    return;
  }
#endif
  for (size_t i = b; i < e; i += 8) {
    uint64_t v;
    memcpy(&v, a->p + i, sizeof v);
    s += v;
  }
  a->sums[ith * 8] = s;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A tensor in its own CPU buffer; false (with a message) on failure. */
static bool make_tensor(velo_backend_instance *inst, velo_tensor *t, velo_buffer **buf,
                        velo_dtype dt, int64_t ne0, int64_t ne1) {
  memset(t, 0, sizeof *t);
  velo_tensor_set_shape(t, dt, 2, (const int64_t[]){ne0, ne1});
  if (B->buffer_alloc(inst, velo_tensor_nbytes(t), buf, NULL) != VELO_OK) {
    fprintf(stderr, "cpu: cannot allocate %zu bytes\n", velo_tensor_nbytes(t));
    return false;
  }
  t->buffer = *buf;
  t->data = B->buffer_host_ptr(*buf);
  return true;
}

/* Random weight bytes with sane fp16 (or f32) scales where the dtype has
 * them, so that no product overflows. */
static void fill_weights(velo_tensor *w, uint64_t seed) {
  const velo_dtype dt = w->dtype;
  unsigned char *wp = w->data;
  const size_t n = velo_tensor_nbytes(w), bb = velo_dtype_block_bytes(dt);
  uint64_t s = seed | 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    wp[i] = (unsigned char)s;
  }
  for (size_t b = 0; b < n / bb; b++) {
    unsigned char *blk = wp + b * bb;
    uint16_t h = velo_fp32_to_fp16(0.01f * (float)(1 + b % 3));
    if (dt == VELO_DTYPE_F16 || dt == VELO_DTYPE_Q8_0 || dt == VELO_DTYPE_Q4_0)
      memcpy(blk, &h, 2);
    if (dt == VELO_DTYPE_Q4_K || dt == VELO_DTYPE_Q5_K) { /* d, dmin */
      memcpy(blk, &h, 2);
      memcpy(blk + 2, &h, 2);
    }
    if (dt == VELO_DTYPE_Q6_K) memcpy(blk + offsetof(velo_block_q6_K, d), &h, 2);
    if (dt == VELO_DTYPE_Q4_1 || dt == VELO_DTYPE_Q5_1 || dt == VELO_DTYPE_Q5_0) { /* d (, m) */
      memcpy(blk, &h, 2);
      if (dt != VELO_DTYPE_Q5_0) memcpy(blk + 2, &h, 2);
    }
    if (dt == VELO_DTYPE_BF16) { /* every element: finite, |x| < 0.07 */
      const uint16_t bf = velo_fp32_to_bf16(0.01f * (float)(b % 13) - 0.06f);
      memcpy(blk, &bf, 2);
    }
    if (dt == VELO_DTYPE_Q8_K) {
      const float f = 0.01f;
      memcpy(blk, &f, 4);
    }
    if (dt == VELO_DTYPE_F32) {
      float f = 0.01f * (float)(b % 13) - 0.06f;
      memcpy(blk, &f, 4);
    }
  }
}

typedef struct options {
  int threads, reps;
  bool dtype[VELO_DTYPE_COUNT];
  int ms[16], n_ms;
  bool isa[MAX_VARIANTS];
  bool shape[8];
} options;

/* Times one shape and dtype for every M and variant; prints one line per
 * (M, variant). */
static void bench_case(velo_backend_instance *inst, const options *o, velo_dtype dt, int64_t K,
                       int64_t N) {
  velo_tensor w[MAX_COPIES], x, y;
  velo_buffer *bw[MAX_COPIES], *bx = NULL, *by = NULL;
  const size_t wbytes = velo_dtype_row_bytes(dt, K) * (size_t)N;
  int copies = (int)((WEIGHT_BYTES_TARGET + wbytes - 1) / wbytes);
  if (copies > MAX_COPIES) copies = MAX_COPIES;
  int mmax = 1;
  for (int i = 0; i < o->n_ms; i++) mmax = o->ms[i] > mmax ? o->ms[i] : mmax;
  for (int c = 0; c < copies; c++) {
    if (!make_tensor(inst, &w[c], &bw[c], dt, K, N)) exit(1);
    fill_weights(&w[c], 0x9e3779b97f4a7c15ull * (uint64_t)(c + 1));
  }
  if (!make_tensor(inst, &x, &bx, VELO_DTYPE_F32, K, mmax) ||
      !make_tensor(inst, &y, &by, VELO_DTYPE_F32, N, mmax))
    exit(1);
  for (int64_t i = 0; i < K * mmax; i++)
    ((float *)x.data)[i] = (float)((i * 31) % 17) / 8.0f - 1.03f + 0.001f * (float)(i % 7);

  double base_cols_per_ms[MAX_VARIANTS] = {0};
  for (int mi = 0; mi < o->n_ms; mi++) {
    const int64_t M = o->ms[mi];
    x.ne[1] = y.ne[1] = M;
    double t[MAX_VARIANTS][MAX_REPS], tp[MAX_REPS];
    int next = 0;
    static probe_arg pa;
    for (int rep = 0; rep < o->reps; rep++) {
      if (M == 1) { /* the read probe on a copy the kernels did not just read */
        pa.p = w[(next + copies / 2) % copies].data;
        pa.n = wbytes & ~(size_t)127;
        double t0 = now_ms();
        velo_cpu_pool_run(inst->pool, probe_share, &pa, o->threads);
        tp[rep] = now_ms() - t0;
      }
      for (int isa = VELO_CPU_ISA_LAST; isa >= 0; isa--) {
        if (!o->isa[isa] || velo_cpu_instance_set_isa(inst, (velo_cpu_isa)isa, NULL) != VELO_OK)
          continue;
        velo_graph_node node;
        memset(&node, 0, sizeof node);
        node.struct_size = sizeof node;
        node.op = VELO_OP_MUL_MAT;
        node.dst = &y;
        node.src[0] = &w[next];
        node.src[1] = &x;
        next = (next + 1) % copies;
        velo_graph g = {.struct_size = sizeof g, .n_nodes = 1, .nodes = &node};
        velo_error err;
        velo_error_init(&err);
        double t0 = now_ms();
        velo_status st = B->compute(inst, &g, &err);
        t[isa][rep] = now_ms() - t0;
        CHECK(st == VELO_OK, "compute: %s", err.message);
        if (st != VELO_OK) exit(1);
      }
    }
    double probe_gbs = M == 1 ? (double)pa.n / median(tp, o->reps) * 1e-6 : 0;
    for (int isa = VELO_CPU_ISA_LAST; isa >= 0; isa--) {
      if (!o->isa[isa] || velo_cpu_instance_set_isa(inst, (velo_cpu_isa)isa, NULL) != VELO_OK)
        continue;
      double ms = median(t[isa], o->reps);
      double cols_per_ms = (double)M / ms;
      if (M == 1) base_cols_per_ms[isa] = cols_per_ms;
      char rel[64] = "";
      if (M > 1 && base_cols_per_ms[isa] > 0)
        snprintf(rel, sizeof rel, "  x%.2f vs M=1", cols_per_ms / base_cols_per_ms[isa]);
      else if (M == 1)
        snprintf(rel, sizeof rel, "  %.2f of read probe (%.1f GB/s)",
                 (double)wbytes / ms * 1e-6 / probe_gbs, probe_gbs);
      printf("%-4s K=%-4lld N=%-5lld M=%-3lld %-10s %8.3f ms %8.1f GFLOP/s %6.1f GB/s%s\n",
             velo_dtype_name(dt), (long long)K, (long long)N, (long long)M, inst->vec->name, ms,
             2.0 * (double)K * (double)N * (double)M / ms * 1e-6, (double)wbytes / ms * 1e-6,
             rel);
    }
    fflush(stdout);
  }
  for (int c = 0; c < copies; c++) B->buffer_free(inst, bw[c]);
  B->buffer_free(inst, bx);
  B->buffer_free(inst, by);
}

/* Parses "a,b,c" into ints; returns the count. */
static int parse_ints(const char *s, int *out, int max) {
  int n = 0;
  while (*s && n < max) {
    out[n++] = atoi(s);
    s = strchr(s, ',');
    if (!s) break;
    s++;
  }
  return n;
}

int main(int argc, char **argv) {
  options o = {.threads = 2, .reps = 9, .n_ms = 5, .ms = {1, 8, 16, 64, 128}};
  o.dtype[VELO_DTYPE_Q4_0] = o.dtype[VELO_DTYPE_Q8_0] = true;
  for (int i = 0; i <= VELO_CPU_ISA_LAST; i++) o.isa[i] = i != VELO_CPU_ISA_SCALAR;
  for (int i = 0; i < 8; i++) o.shape[i] = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "-t")) {
      o.threads = atoi(v);
    } else if (!strcmp(a, "-r")) {
      o.reps = atoi(v);
      if (o.reps < 1 || o.reps > MAX_REPS) o.reps = 9;
    } else if (!strcmp(a, "-m")) {
      o.n_ms = parse_ints(v, o.ms, 16);
    } else if (!strcmp(a, "-s")) {
      int idx[8], n = parse_ints(v, idx, 8);
      memset(o.shape, 0, sizeof o.shape);
      for (int k = 0; k < n; k++)
        if (idx[k] >= 0 && idx[k] < 8) o.shape[idx[k]] = true;
    } else if (!strcmp(a, "-d")) {
      memset(o.dtype, 0, sizeof o.dtype);
      /* whole comma-separated names, case-insensitive ("bf16" is not "f16") */
      char list[256];
      snprintf(list, sizeof list, "%s", v);
      for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
           tok = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int d = 0; d < VELO_DTYPE_COUNT && found < 0; d++)
          if (velo_dtype_name(d) && !strcasecmp(tok, velo_dtype_name(d))) found = d;
        if (found < 0) {
          fprintf(stderr, "%s: -d: unknown dtype '%s' (e.g. q4_0,q8_0,f16,bf16,q4_k)\n", argv[0],
                  tok);
          return 2;
        }
        o.dtype[found] = true;
      }
    } else if (!strcmp(a, "-v")) {
      memset(o.isa, 0, sizeof o.isa);
      o.isa[VELO_CPU_ISA_SCALAR] = strstr(v, "scalar") != NULL;
      o.isa[VELO_CPU_ISA_AVX2] = strstr(v, "avx2") != NULL;
      if (VELO_CPU_ISA_LAST >= 2) /* AVX-512, absent from older backends */
        o.isa[VELO_CPU_ISA_LAST] = strstr(v, "avx512") != NULL;
    } else {
      fprintf(stderr,
              "usage: %s [-t threads] [-r reps] [-d dtypes] [-m Ms] [-v variants] [-s shapes]\n",
              argv[0]);
      return 2;
    }
  }
  B = velo_cpu_backend_iface();
  velo_backend_instance *inst = NULL;
  velo_backend_options bo = {.struct_size = sizeof bo, .device = 0, .n_threads = o.threads};
  velo_error err;
  velo_error_init(&err);
  if (B->open(&bo, &inst, &err) != VELO_OK) {
    fprintf(stderr, "cpu: open: %s\n", err.message);
    return 1;
  }
  printf("cpu: MUL_MAT, %d threads, median of %d, variants interleaved\n", o.threads, o.reps);
  static const velo_dtype dts[] = {VELO_DTYPE_Q4_0, VELO_DTYPE_Q8_0, VELO_DTYPE_F16,
                                   VELO_DTYPE_F32,  VELO_DTYPE_Q4_K, VELO_DTYPE_Q5_K,
                                   VELO_DTYPE_Q6_K, VELO_DTYPE_Q4_1, VELO_DTYPE_Q5_1,
                                   VELO_DTYPE_Q5_0, VELO_DTYPE_BF16, VELO_DTYPE_Q8_K};
  static const int64_t shapes[][2] = {
      {2048, 2048}, {2048, 256}, {2048, 5632}, {5632, 2048}, {2048, 32000}};
  for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
    if (!o.dtype[dts[d]]) continue;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      if (o.shape[s]) bench_case(inst, &o, dts[d], shapes[s][0], shapes[s][1]);
  }
  B->close(inst);
  return check_summary("cpu");
}
