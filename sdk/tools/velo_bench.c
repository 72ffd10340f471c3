/*
 * velo_bench.c - `velo-bench`: prefill and decode speed of one GGUF model
 * through the same plugins velod uses, with the decode memory roofline
 * measured in the same run.
 *
 * It loads the plugins with the core's plugin host (the same search path
 * as velod), opens the chosen backend with each requested thread count,
 * loads the model through the "text-generation" task plugin and times
 * forward passes with that plugin's benchmark extension (velo/bench.h):
 *
 *   velo-bench -m tinyllama-q4_0.gguf -p 128 -n 32 -r 3 -t 1,2 --json out.json
 *
 * Tests, as llama-bench defines them: ppN is the prefill of an N-token
 * prompt from an empty KV cache; tgN is N decode steps of one token each
 * after a one-token prompt (BOS), greedy.  Each test runs once untimed
 * (warm-up) and then -r times; the report gives the median tokens/s with
 * the minimum and maximum.  Prompts are random ordinary tokens from a fixed
 * seed (--seed), so runs are comparable.
 *
 * Memory roofline.  Decoding one token reads every weight matrix once, so
 * decode tokens/s can never exceed read bandwidth / bytes per token.  A
 * built-in probe measures read bandwidth (a read-only sum over a --bw-mib
 * array, the same number of threads as the test, median of --bw-passes
 * passes) before the first test and after every test, and each test is
 * judged against the samples of the probes on either side of it:
 *   roofline fraction = tokens/s x bytes per token / read bandwidth.
 * Bytes per token are the sizes of every matrix of the blk.N layers and of
 * the output matrix (the token embedding when the output is tied), plus one
 * row of the token embedding (docs/performance.md, "velo-bench").
 *
 * Memory: RSS after load, and the peak RSS (VmHWM) of each test.  The
 * probe's array is unmapped after each probe and the high-water mark reset
 * (/proc/self/clear_refs), so a test's peak never includes it.
 *
 * Exit status: 0 on success, 1 when the model, a plugin, the backend or a
 * run fails, 2 on a usage error.  Plugin log lines go to stderr (warnings
 * only unless -v); the table goes to stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "host.h"
#include "log.h"
#include "plugin_host.h"
#include "velo/bench.h"
#include "velo/plugin.h"

#define EXIT_RUN_FAILED 1
#define EXIT_USAGE 2

#define LIST_MAX 16          /* values per list option */
#define MAX_TOKENS 65536     /* -p and -n */
#define MAX_THREADS 1024     /* -t (the CPU backend's limit) */
#define MAX_REPS 1000        /* -r */
#define MAX_PASSES 100       /* --bw-passes */
#define TG_PROMPT_TOKENS 1   /* the prompt before a tgN test */
#define ENGINE_CTX 16        /* the context given to the (unused) serving engine */
#define TASK_NAME "text-generation"

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Prints "velo-bench: error: <message>" to stderr.  Never fails. */
__attribute__((format(printf, 1, 2))) static void error(const char *fmt, ...) {
  va_list ap;
  fputs("velo-bench: error: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* Prints "velo-bench: <message>" and a hint to stderr, and exits 2. */
__attribute__((format(printf, 1, 2), noreturn)) static void bad_usage(const char *fmt, ...) {
  va_list ap;
  fputs("velo-bench: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n(velo-bench --help lists the options)\n", stderr);
  exit(EXIT_USAGE);
}

/* Seconds on CLOCK_MONOTONIC. */
static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* qsort comparator: ascending doubles. */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of v[0..n) (mean of the middle two for even n); v is not changed.
 * 0 for n == 0.  Allocates a copy; on out-of-memory returns v[0]. */
static double median(const double *v, size_t n) {
  if (n == 0) return 0;
  double *c = malloc(n * sizeof *c);
  if (!c) return v[0];
  memcpy(c, v, n * sizeof *c);
  qsort(c, n, sizeof *c, cmp_double);
  double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
  free(c);
  return m;
}

/* Smallest / largest of v[0..n); 0 for n == 0.  Pure. */
static double min_of(const double *v, size_t n) {
  double m = n ? v[0] : 0;
  for (size_t i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}

static double max_of(const double *v, size_t n) {
  double m = n ? v[0] : 0;
  for (size_t i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
  return m;
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

typedef struct options {
  const char *model;      /* -m */
  const char *backend;    /* --backend */
  const char *plugin_dir; /* --plugin-dir */
  const char *json;       /* --json FILE, "-" = stdout */
  int32_t device;
  int32_t n_prompt[LIST_MAX], n_gen[LIST_MAX], threads[LIST_MAX];
  size_t n_n_prompt, n_n_gen, n_threads;
  int32_t reps;
  uint64_t seed;
  int32_t bw_mib, bw_passes;
  bool warmup, verbose;
} options;

/* Prints the help text to f.  Never fails. */
static void usage(FILE *f) {
  fprintf(f,
          "usage: velo-bench -m MODEL.gguf [options]\n"
          "\n"
          "Measures prefill (ppN) and decode (tgN) tokens/s of a GGUF model through the plugins\n"
          "velod uses, and the decode memory roofline with read bandwidth measured in the same run.\n"
          "\n"
          "  -m, --model FILE        the GGUF model (required)\n"
          "  -p, --n-prompt LIST     prompt lengths, comma-separated, 0..%d (default 512; 0 = none)\n"
          "  -n, --n-gen LIST        decode lengths, comma-separated, 0..%d (default 128; 0 = none)\n"
          "  -t, --threads LIST      backend thread counts, 1..%d (default: online CPUs)\n"
          "  -r, --repetitions N     timed runs per test, 1..%d (default 5)\n"
          "      --backend NAME      backend plugin (default cpu)\n"
          "      --device N          backend device index, 0..1023 (default 0)\n"
          "      --plugin-dir DIR    look for plugins in DIR first (as velod does)\n"
          "      --seed N            prompt seed, 0..2^64-1 (default 1234)\n"
          "      --bw-mib N          bandwidth probe array size in MiB, 16..65536 (default 1024)\n"
          "      --bw-passes N       timed passes per bandwidth probe, 1..%d (default 5)\n"
          "      --no-warmup         skip the untimed run before each test\n"
          "      --json FILE         also write the full report as JSON ('-': to stdout, no table)\n"
          "  -v, --verbose           show the plugins' log lines (default: warnings only)\n"
          "  -h, --help              this help\n"
          "\n"
          "Exit status: 0 success, 1 the model, a plugin, the backend or a run failed, 2 usage error.\n"
          "See docs/performance.md, \"velo-bench\".\n",
          MAX_TOKENS, MAX_TOKENS, MAX_THREADS, MAX_REPS, MAX_PASSES);
}

/* Parses a decimal integer in [lo, hi] for option opt, or exits 2 with a
 * message naming the option, the value and the range. */
static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno == ERANGE || end == s || *end != '\0' || v < lo || v > hi)
    bad_usage("%s expects an integer from %lld to %lld, got '%s'", opt, lo, hi, s);
  return v;
}

/* Parses a comma-separated list of 1..LIST_MAX integers in [lo, hi] into
 * out, or exits 2 naming the option, the bad item and the range. */
static size_t parse_list(const char *opt, const char *s, long long lo, long long hi, int32_t *out) {
  size_t n = 0;
  const char *p = s;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[32];
    if (len == 0 || len >= sizeof item)
      bad_usage("%s '%s': %s; it takes a comma-separated list of integers from %lld to %lld", opt, s,
                len == 0 ? "an empty item" : "an item too long", lo, hi);
    memcpy(item, p, len);
    item[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(item, &end, 10);
    if (errno == ERANGE || *end != '\0' || v < lo || v > hi)
      bad_usage("%s '%s': '%s' is %s; it takes a comma-separated list of integers from %lld to %lld",
                opt, s, item, *end != '\0' ? "not an integer" : "out of range", lo, hi);
    if (n == LIST_MAX) bad_usage("%s '%s': more than %d values", opt, s, LIST_MAX);
    out[n++] = (int32_t)v;
    if (!comma) break;
    p = comma + 1;
  }
  return n;
}

enum { OPT_BACKEND = 256, OPT_DEVICE, OPT_PLUGIN_DIR, OPT_SEED, OPT_BW_MIB, OPT_BW_PASSES,
       OPT_NO_WARMUP, OPT_JSON };

/* Fills *o from argv, or exits (0 after --help, 2 on a usage error). */
static void parse_options(int argc, char **argv, options *o) {
  static const struct option longopts[] = {
      {"model", required_argument, NULL, 'm'},
      {"n-prompt", required_argument, NULL, 'p'},
      {"n-gen", required_argument, NULL, 'n'},
      {"threads", required_argument, NULL, 't'},
      {"repetitions", required_argument, NULL, 'r'},
      {"backend", required_argument, NULL, OPT_BACKEND},
      {"device", required_argument, NULL, OPT_DEVICE},
      {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
      {"seed", required_argument, NULL, OPT_SEED},
      {"bw-mib", required_argument, NULL, OPT_BW_MIB},
      {"bw-passes", required_argument, NULL, OPT_BW_PASSES},
      {"no-warmup", no_argument, NULL, OPT_NO_WARMUP},
      {"json", required_argument, NULL, OPT_JSON},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  *o = (options){.backend = "cpu", .reps = 5, .seed = 1234, .bw_mib = 1024, .bw_passes = 5,
                 .warmup = true};
  o->n_prompt[0] = 512;
  o->n_gen[0] = 128;
  o->n_n_prompt = o->n_n_gen = 1;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads[0] = (int32_t)(ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : ncpu);
  o->n_threads = 1;

  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:p:n:t:r:vh", longopts, NULL)) != -1) {
    switch (c) {
      case 'm':
        if (!optarg[0]) bad_usage("-m/--model: the path is empty");
        o->model = optarg;
        break;
      case 'p': o->n_n_prompt = parse_list("-p/--n-prompt", optarg, 0, MAX_TOKENS, o->n_prompt); break;
      case 'n': o->n_n_gen = parse_list("-n/--n-gen", optarg, 0, MAX_TOKENS, o->n_gen); break;
      case 't': o->n_threads = parse_list("-t/--threads", optarg, 1, MAX_THREADS, o->threads); break;
      case 'r': o->reps = (int32_t)parse_int("-r/--repetitions", optarg, 1, MAX_REPS); break;
      case OPT_BACKEND:
        if (!optarg[0]) bad_usage("--backend: the name is empty");
        o->backend = optarg;
        break;
      case OPT_DEVICE: o->device = (int32_t)parse_int("--device", optarg, 0, 1023); break;
      case OPT_PLUGIN_DIR:
        if (!optarg[0]) bad_usage("--plugin-dir: the directory is empty");
        o->plugin_dir = optarg;
        break;
      case OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(optarg, &end, 10);
        if (errno == ERANGE || end == optarg || *end != '\0' || optarg[0] == '-')
          bad_usage("--seed expects an integer from 0 to 18446744073709551615, got '%s'", optarg);
        o->seed = v;
        break;
      }
      case OPT_BW_MIB: o->bw_mib = (int32_t)parse_int("--bw-mib", optarg, 16, 65536); break;
      case OPT_BW_PASSES: o->bw_passes = (int32_t)parse_int("--bw-passes", optarg, 1, MAX_PASSES); break;
      case OPT_NO_WARMUP: o->warmup = false; break;
      case OPT_JSON:
        if (!optarg[0]) bad_usage("--json: the file name is empty");
        o->json = optarg;
        break;
      case 'v': o->verbose = true; break;
      case 'h': usage(stdout); exit(0);
      case ':': bad_usage("option '%s' needs a value", argv[optind - 1]);
      default: bad_usage("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) bad_usage("unexpected argument '%s' (the model is given with -m)", argv[optind]);
  if (!o->model) bad_usage("-m/--model FILE is required");
  bool any = false;
  for (size_t i = 0; i < o->n_n_prompt; i++) any |= o->n_prompt[i] > 0;
  for (size_t i = 0; i < o->n_n_gen; i++) any |= o->n_gen[i] > 0;
  if (!any) bad_usage("nothing to measure: every -p and -n value is 0");
}

/* ------------------------------------------------------------------ */
/* The model file                                                      */
/* ------------------------------------------------------------------ */

/* What velo-bench reads from the GGUF itself (the file is closed again
 * before anything is timed). */
typedef struct model_info {
  char arch[32];          /* general.architecture */
  char name[128];         /* general.name, else the file name */
  char type[16];          /* dtype holding the most matrix bytes, e.g. "Q4_0" */
  char label[96];         /* "llama 1.1B Q4_0" */
  uint64_t file_bytes;
  uint64_t weight_bytes;  /* all tensors */
  uint64_t params;        /* elements of all tensors */
  uint64_t bytes_per_token; /* weights read per decoded token (see the file comment) */
  int64_t n_ctx_train;    /* <arch>.context_length, 0 if absent */
} model_info;

/* Copies a GGUF string (not NUL-terminated) into dst[0..size). */
static void copy_str(char *dst, size_t size, const char *s, size_t len) {
  if (len >= size) len = size - 1;
  memcpy(dst, s, len);
  dst[len] = '\0';
}

/* "1.1B", "292K": a short parameter count. */
static void params_label(uint64_t n, char *out, size_t size) {
  if (n >= 1000000000ull) snprintf(out, size, "%.1fB", (double)n / 1e9);
  else if (n >= 1000000ull) snprintf(out, size, "%.0fM", (double)n / 1e6);
  else snprintf(out, size, "%.0fK", (double)n / 1e3);
}

/* Opens path with the core's validated reader and fills *mi.  Errors
 * (missing file, corrupt file, no token embedding) are printed; returns
 * false then.  The file is closed before returning. */
static bool read_model_info(const char *path, model_info *mi) {
  velo_gguf *g = NULL;
  velo_error err;
  velo_error_init(&err);
  memset(mi, 0, sizeof *mi);
  if (velo_gguf_open(path, &g, &err) != VELO_OK) {
    error("cannot read the model %s: %s: %s", path, velo_status_name(err.code), err.message);
    return false;
  }
  const char *s;
  size_t len;
  bool ok = true;
  if (velo_gguf_get_string(g, "general.architecture", &s, &len, &err) == VELO_OK)
    copy_str(mi->arch, sizeof mi->arch, s, len);
  else
    snprintf(mi->arch, sizeof mi->arch, "?");
  if (velo_gguf_get_string(g, "general.name", &s, &len, &err) == VELO_OK) {
    copy_str(mi->name, sizeof mi->name, s, len);
  } else {
    const char *base = strrchr(path, '/');
    snprintf(mi->name, sizeof mi->name, "%s", base ? base + 1 : path);
  }
  char key[64];
  snprintf(key, sizeof key, "%s.context_length", mi->arch);
  if (velo_gguf_get_int(g, key, &mi->n_ctx_train, &err) != VELO_OK) mi->n_ctx_train = 0;
  mi->file_bytes = velo_gguf_file_size(g);

  uint64_t by_type[VELO_DTYPE_COUNT] = {0};
  bool has_output = false;
  uint64_t embd_bytes = 0, embd_row = 0;
  int64_t nt = velo_gguf_tensor_count(g);
  for (int64_t i = 0; i < nt; i++) {
    velo_gguf_tensor_info ti = {.struct_size = sizeof ti};
    if (velo_gguf_get_tensor_info(g, i, &ti, &err) != VELO_OK) continue;
    uint64_t elems = 1;
    for (int d = 0; d < ti.n_dims; d++) elems *= (uint64_t)ti.ne[d];
    mi->params += elems;
    mi->weight_bytes += ti.size;
    bool matrix = ti.n_dims >= 2;
    bool layer = ti.name_len > 4 && memcmp(ti.name, "blk.", 4) == 0;
    bool is_output = ti.name_len == 13 && memcmp(ti.name, "output.weight", 13) == 0;
    bool is_embd = ti.name_len == 17 && memcmp(ti.name, "token_embd.weight", 17) == 0;
    if (matrix && (layer || is_output)) mi->bytes_per_token += ti.size;
    if (is_output) has_output = true;
    if (is_embd && matrix) {
      embd_bytes = ti.size;
      embd_row = ti.size / (uint64_t)ti.ne[1];
    }
    if (matrix && (int)ti.dtype >= 0 && (int)ti.dtype < VELO_DTYPE_COUNT) by_type[ti.dtype] += ti.size;
  }
  if (!embd_bytes) {
    error("%s has no 2-D tensor token_embd.weight, so the bytes read per token are unknown; "
          "velo-bench measures llama-style models", path);
    ok = false;
  }
  /* A tied output reads the whole embedding matrix per token. */
  mi->bytes_per_token += has_output ? embd_row : embd_bytes;
  int best = 0;
  for (int t = 1; t < VELO_DTYPE_COUNT; t++)
    if (by_type[t] > by_type[best]) best = t;
  const char *tn = velo_dtype_name(best);
  snprintf(mi->type, sizeof mi->type, "%s", tn ? tn : "?");
  char pl[16];
  params_label(mi->params, pl, sizeof pl);
  snprintf(mi->label, sizeof mi->label, "%s %s %s", mi->arch, pl, mi->type);
  velo_gguf_close(g);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Resident memory (/proc/self/status)                                 */
/* ------------------------------------------------------------------ */

/* The value of key ("VmRSS", "VmHWM") in bytes, or 0 if unreadable. */
static uint64_t proc_status_bytes(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  size_t klen = strlen(key);
  uint64_t v = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = strtoull(line + klen + 1, NULL, 10) * 1024;
      break;
    }
  }
  fclose(f);
  return v;
}

/* Resets VmHWM to the current RSS (Linux >= 4.0: "5" to clear_refs).
 * True on success. */
static bool reset_peak_rss(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  bool ok = fputs("5", f) >= 0;
  ok = (fclose(f) == 0) && ok;
  return ok;
}

/* ------------------------------------------------------------------ */
/* Read-bandwidth probe                                                */
/* ------------------------------------------------------------------ */

/* Two doubles: GCC/Clang vector extension, SSE2 on any x86-64, NEON on
 * arm64; plain C elsewhere.  Eight independent accumulators keep enough
 * loads in flight that the loop is bound by memory, not by add latency. */
typedef double v2d __attribute__((vector_size(16)));

enum { PHASE_INIT, PHASE_READ, PHASE_QUIT };

typedef struct bw_shared {
  double *a;             /* the array, 64-byte aligned */
  size_t n;              /* doubles, a multiple of 16 * n_threads */
  int n_threads;
  int phase;             /* set by the main thread before the start barrier */
  pthread_barrier_t start, done;
  /* Start gate: helpers wait here until every helper exists (gate 1) or
   * one could not be created (gate 2: they leave at once). */
  pthread_mutex_t gate_mu;
  pthread_cond_t gate_cv;
  int gate;
  double sums[MAX_THREADS]; /* each thread's read result (kept, so the reads stay) */
} bw_shared;

/* Sums a[0..n) (n a multiple of 16, a 16-byte aligned) reading each byte
 * once. */
static double sum_slice(const double *a, size_t n) {
  const v2d *v = (const v2d *)(const void *)a;
  v2d s0 = {0, 0}, s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
  for (size_t i = 0; i < n / 2; i += 8) {
    s0 += v[i];
    s1 += v[i + 1];
    s2 += v[i + 2];
    s3 += v[i + 3];
    s4 += v[i + 4];
    s5 += v[i + 5];
    s6 += v[i + 6];
    s7 += v[i + 7];
  }
  v2d s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
  return s[0] + s[1];
}

/* Thread idx's share of the current phase: first-touch writes (INIT) or a
 * read-only sum (READ) of one contiguous slice. */
static void bw_work(bw_shared *sh, int idx) {
  size_t per = sh->n / (size_t)sh->n_threads;
  double *p = sh->a + per * (size_t)idx;
  if (sh->phase == PHASE_INIT) {
    for (size_t i = 0; i < per; i++) p[i] = 1.0;
  } else if (sh->phase == PHASE_READ) {
    sh->sums[idx] += sum_slice(p, per);
  }
}

typedef struct bw_arg {
  bw_shared *sh;
  int idx;
} bw_arg;

/* A helper thread: passes the start gate, then does its share of each
 * phase until QUIT. */
static void *bw_thread(void *arg) {
  bw_arg *a = arg;
  bw_shared *sh = a->sh;
  pthread_mutex_lock(&sh->gate_mu);
  while (sh->gate == 0) pthread_cond_wait(&sh->gate_cv, &sh->gate_mu);
  int gate = sh->gate;
  pthread_mutex_unlock(&sh->gate_mu);
  if (gate != 1) return NULL;
  for (;;) {
    pthread_barrier_wait(&sh->start);
    if (sh->phase == PHASE_QUIT) return NULL;
    bw_work(sh, a->idx);
    pthread_barrier_wait(&sh->done);
  }
}

/* Opens the start gate with value gate (1 go, 2 leave). */
static void bw_open_gate(bw_shared *sh, int gate) {
  pthread_mutex_lock(&sh->gate_mu);
  sh->gate = gate;
  pthread_cond_broadcast(&sh->gate_cv);
  pthread_mutex_unlock(&sh->gate_mu);
}

/* Runs one phase on all threads (the caller is thread 0) and returns its
 * wall time in seconds. */
static double bw_phase(bw_shared *sh, int phase) {
  sh->phase = phase;
  pthread_barrier_wait(&sh->start);
  if (phase == PHASE_QUIT) return 0;
  double t0 = now_s();
  bw_work(sh, 0);
  pthread_barrier_wait(&sh->done);
  return now_s() - t0;
}

/* One probe's result. */
typedef struct bw_probe {
  int threads;
  double at_s;                /* start, seconds since the tool started */
  char where[48];             /* "before pp128", "after tg32" */
  double samples[MAX_PASSES]; /* GB/s (1e9 bytes/s), one per timed pass */
  int n;
  double median;
} bw_probe;

/* Measures read bandwidth with n_threads threads over a fresh mib MiB
 * array: first-touch initialisation in parallel, one untimed pass, then
 * passes timed passes (GB/s = bytes / seconds / 1e9).  The array is
 * unmapped before returning.  False (with a message printed) if memory or
 * threads cannot be had. */
static bool bw_measure(int n_threads, int32_t mib, int passes, bw_probe *out) {
  bw_shared *sh = calloc(1, sizeof *sh);
  if (!sh) {
    error("bandwidth probe: out of memory");
    return false;
  }
  size_t bytes = (size_t)mib << 20;
  size_t unit = 16 * (size_t)n_threads;
  sh->n = bytes / sizeof(double) / unit * unit;
  sh->n_threads = n_threads;
  void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    error("bandwidth probe: cannot map %d MiB: %s (lower --bw-mib)", mib, strerror(errno));
    free(sh);
    return false;
  }
#ifdef MADV_HUGEPAGE
  madvise(mem, bytes, MADV_HUGEPAGE); /* fewer faults and TLB misses; advice only */
#endif
  sh->a = mem;
  pthread_mutex_init(&sh->gate_mu, NULL);
  pthread_cond_init(&sh->gate_cv, NULL);
  pthread_barrier_init(&sh->start, NULL, (unsigned)n_threads);
  pthread_barrier_init(&sh->done, NULL, (unsigned)n_threads);
  pthread_t th[MAX_THREADS];
  bw_arg args[MAX_THREADS];
  int started = 1, rc = 0;
  for (; started < n_threads; started++) {
    args[started] = (bw_arg){sh, started};
    if ((rc = pthread_create(&th[started], NULL, bw_thread, &args[started])) != 0) break;
  }
  bool ok = started == n_threads;
  bw_open_gate(sh, ok ? 1 : 2);
  if (ok) {
    bw_phase(sh, PHASE_INIT);
    bw_phase(sh, PHASE_READ); /* warm-up, untimed */
    out->threads = n_threads;
    out->n = passes;
    for (int p = 0; p < passes; p++) {
      double t = bw_phase(sh, PHASE_READ);
      out->samples[p] = (double)(sh->n * sizeof(double)) / (t > 0 ? t : 1e-9) / 1e9;
    }
    out->median = median(out->samples, (size_t)passes);
    bw_phase(sh, PHASE_QUIT);
  } else {
    error("bandwidth probe: cannot start %d threads: %s", n_threads, strerror(rc));
  }
  for (int i = 1; i < started; i++) pthread_join(th[i], NULL);
  volatile double sink = 0;
  for (int i = 0; i < n_threads; i++) sink += sh->sums[i];
  (void)sink;
  pthread_barrier_destroy(&sh->start);
  pthread_barrier_destroy(&sh->done);
  pthread_mutex_destroy(&sh->gate_mu);
  pthread_cond_destroy(&sh->gate_cv);
  munmap(mem, bytes);
  free(sh);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Running the tests                                                   */
/* ------------------------------------------------------------------ */

/* One test at one thread count. */
typedef struct test_result {
  char name[24];          /* "pp128", "tg32" */
  bool decode;            /* tgN (else ppN) */
  int32_t n;              /* tokens timed */
  int32_t n_prompt, n_gen;
  int threads;
  double at_s;            /* start, seconds since the tool started */
  int reps;
  double *seconds;        /* reps timed durations */
  double *tps;            /* reps tokens/s */
  double median, min, max; /* of tps */
  int probe_before, probe_after; /* indices into bench.probes */
  double bw_gbs;          /* median of both probes' samples */
  double roofline_tps;    /* decode: bw / bytes per token; else NAN */
  double roofline_fraction; /* decode: median tps / roofline_tps; else NAN */
  uint64_t peak_rss;      /* VmHWM over the test (0 if unknown) */
  uint64_t kv_cache_bytes;
  int32_t prefill_passes;
  int32_t last_token;
} test_result;

/* One model load (one per thread count). */
typedef struct load_result {
  int threads;
  double load_s;
  uint64_t rss_after_load;
  char device_name[128], device_desc[256];
} load_result;

typedef struct bench {
  const options *o;
  model_info mi;
  velo_host host;
  velo_plugin_host *ph;
  const velo_task_iface *task;
  const velo_backend_iface *be;
  const char *task_path, *backend_path;
  double t_start;
  bool peak_reset_ok;     /* clear_refs worked every time */
  test_result tests[2 * LIST_MAX * LIST_MAX];
  size_t n_tests;
  bw_probe probes[2 * LIST_MAX * LIST_MAX + LIST_MAX];
  size_t n_probes;
  load_result loads[LIST_MAX];
  size_t n_loads;
} bench;

/* Runs one bandwidth probe with threads threads, labelled where, appends
 * it to b->probes and resets the peak RSS.  Returns its index, or -1 after
 * printing why it failed. */
static int probe(bench *b, int threads, const char *where) {
  bw_probe *p = &b->probes[b->n_probes];
  memset(p, 0, sizeof *p);
  p->at_s = now_s() - b->t_start;
  snprintf(p->where, sizeof p->where, "%s", where);
  if (!bw_measure(threads, b->o->bw_mib, b->o->bw_passes, p)) return -1;
  if (!reset_peak_rss()) b->peak_reset_ok = false;
  return (int)b->n_probes++;
}

/* Runs test r (name, decode, n, threads set) on model m: warm-up unless
 * --no-warmup, then the timed repetitions; fills the rest of r except the
 * bandwidth figures.  False after printing the plugin's error. */
static bool run_test(bench *b, const velo_bench_ext *ext, velo_model *m, test_result *r) {
  const options *o = b->o;
  r->n_prompt = r->decode ? TG_PROMPT_TOKENS : r->n;
  r->n_gen = r->decode ? r->n : 0;
  r->reps = o->reps;
  r->at_s = now_s() - b->t_start;
  r->seconds = calloc((size_t)o->reps, sizeof *r->seconds);
  r->tps = calloc((size_t)o->reps, sizeof *r->tps);
  int32_t *prompt = malloc((size_t)r->n_prompt * sizeof *prompt);
  if (!r->seconds || !r->tps || !prompt) {
    free(prompt);
    error("out of memory");
    return false;
  }
  velo_error err;
  velo_error_init(&err);
  if (ext->make_prompt(m, o->seed, prompt, (size_t)r->n_prompt, &err) != VELO_OK) {
    error("%s: cannot make a prompt: %s: %s", r->name, velo_status_name(err.code), err.message);
    free(prompt);
    return false;
  }
  bool ok = true;
  for (int i = o->warmup ? -1 : 0; i < o->reps && ok; i++) {
    velo_bench_timing t = {.struct_size = sizeof t};
    if (ext->run(m, prompt, (size_t)r->n_prompt, r->n_gen, &t, &err) != VELO_OK) {
      error("%s with %d threads%s failed: %s: %s", r->name, r->threads, i < 0 ? " (warm-up)" : "",
            velo_status_name(err.code), err.message);
      ok = false;
      break;
    }
    if (i < 0) continue;
    double s = r->decode ? t.decode_s : t.prefill_s;
    r->seconds[i] = s;
    r->tps[i] = (double)r->n / (s > 0 ? s : 1e-12);
    r->kv_cache_bytes = t.kv_cache_bytes;
    r->prefill_passes = t.prefill_passes;
    r->last_token = t.last_token;
  }
  free(prompt);
  if (!ok) return false;
  r->median = median(r->tps, (size_t)r->reps);
  r->min = min_of(r->tps, (size_t)r->reps);
  r->max = max_of(r->tps, (size_t)r->reps);
  r->peak_rss = proc_status_bytes("VmHWM");
  return true;
}

/* Fills r's bandwidth and roofline figures from the probes on either side
 * of it. */
static void judge(bench *b, test_result *r) {
  double s[2 * MAX_PASSES];
  size_t n = 0;
  const bw_probe *ps[2] = {&b->probes[r->probe_before], &b->probes[r->probe_after]};
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < ps[k]->n; i++) s[n++] = ps[k]->samples[i];
  r->bw_gbs = median(s, n);
  r->roofline_tps = r->roofline_fraction = NAN;
  if (r->decode && b->mi.bytes_per_token > 0 && r->bw_gbs > 0) {
    r->roofline_tps = r->bw_gbs * 1e9 / (double)b->mi.bytes_per_token;
    r->roofline_fraction = r->median / r->roofline_tps;
  }
}

/* Opens the backend with threads threads, loads the model, runs every
 * test with a probe before the first and after each, and unloads.  False
 * after printing what failed (what was loaded is released). */
static bool run_threads(bench *b, int threads) {
  const options *o = b->o;
  velo_error err;
  velo_error_init(&err);
  load_result *L = &b->loads[b->n_loads];
  memset(L, 0, sizeof *L);
  L->threads = threads;

  velo_backend_options bo = {.struct_size = sizeof bo, .device = o->device, .n_threads = threads};
  velo_backend_instance *inst = NULL;
  if (b->be->open(&bo, &inst, &err) != VELO_OK) {
    error("--backend %s: cannot open device %d with %d thread%s: %s: %s", o->backend, (int)o->device,
          threads, threads == 1 ? "" : "s", velo_status_name(err.code), err.message);
    return false;
  }
  velo_device_info di = {.struct_size = sizeof di};
  if (b->be->device_info && b->be->device_info(o->device, &di, NULL) == VELO_OK) {
    snprintf(L->device_name, sizeof L->device_name, "%s", di.name);
    snprintf(L->device_desc, sizeof L->device_desc, "%s", di.description);
  }

  int64_t ctx = b->mi.n_ctx_train > 1 && b->mi.n_ctx_train < ENGINE_CTX ? b->mi.n_ctx_train : ENGINE_CTX;
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = b->mi.name, .path = o->model,
                           .backend_name = o->backend, .backend = b->be, .backend_instance = inst,
                           .context_length = ctx, .kv_cache_tokens = ENGINE_CTX};
  velo_model *m = NULL;
  double t0 = now_s();
  if (b->task->model_load(&b->host, &cfg, &m, &err) != VELO_OK) {
    error("cannot load %s: %s: %s", o->model, velo_status_name(err.code), err.message);
    b->be->close(inst);
    return false;
  }
  L->load_s = now_s() - t0;
  L->rss_after_load = proc_status_bytes("VmRSS");
  b->n_loads++;

  bool ok = true;
  const velo_bench_ext *ext = b->task->get_extension ? b->task->get_extension(m, VELO_BENCH_EXTENSION) : NULL;
  if (!ext || ext->struct_size < offsetof(velo_bench_ext, run) + sizeof ext->run) {
    error("the task plugin %s offers no %s extension (is it older than this velo-bench?)", b->task_path,
          VELO_BENCH_EXTENSION);
    ok = false;
  }
  int last_probe = -1;
  if (ok) {
    last_probe = probe(b, threads, "before the first test");
    ok = last_probe >= 0;
  }
  for (int kind = 0; kind < 2 && ok; kind++) {
    const int32_t *list = kind ? o->n_gen : o->n_prompt;
    size_t n = kind ? o->n_n_gen : o->n_n_prompt;
    for (size_t i = 0; i < n && ok; i++) {
      if (list[i] == 0) continue;
      test_result *r = &b->tests[b->n_tests];
      memset(r, 0, sizeof *r);
      r->decode = kind == 1;
      r->n = list[i];
      r->threads = threads;
      snprintf(r->name, sizeof r->name, "%s%d", r->decode ? "tg" : "pp", (int)r->n);
      r->probe_before = last_probe;
      b->n_tests++; /* counted now so that its arrays are freed on failure */
      if (!(ok = run_test(b, ext, m, r))) break;
      char where[48];
      snprintf(where, sizeof where, "after %s", r->name);
      if ((last_probe = probe(b, threads, where)) < 0) {
        ok = false;
        break;
      }
      r->probe_after = last_probe;
      judge(b, r);
    }
  }
  b->task->model_unload(m);
  b->be->close(inst);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Reporting                                                           */
/* ------------------------------------------------------------------ */

/* "591.13 MiB" / "1.07 GiB". */
static void fmt_bytes(uint64_t v, char *out, size_t size) {
  if (v >= (1ull << 30)) snprintf(out, size, "%.2f GiB", (double)v / (double)(1ull << 30));
  else snprintf(out, size, "%.2f MiB", (double)v / (double)(1ull << 20));
}

/* "1.10 B", "292.54 K". */
static void fmt_params(uint64_t v, char *out, size_t size) {
  if (v >= 1000000000ull) snprintf(out, size, "%.2f B", (double)v / 1e9);
  else if (v >= 1000000ull) snprintf(out, size, "%.2f M", (double)v / 1e6);
  else snprintf(out, size, "%.2f K", (double)v / 1e3);
}

/* Prints the results table and the memory and bandwidth notes to f. */
static void print_table(const bench *b, FILE *f) {
  char size[32], params[32];
  fmt_bytes(b->mi.weight_bytes, size, sizeof size);
  fmt_params(b->mi.params, params, sizeof params);
  fprintf(f, "model %s (%s); backend %s", b->o->model, b->mi.label, b->o->backend);
  if (b->n_loads && b->loads[0].device_name[0])
    fprintf(f, ": %s%s%s", b->loads[0].device_name, b->loads[0].device_desc[0] ? ", " : "",
            b->loads[0].device_desc);
  fputs("\n\n", f);
  int wm = (int)strlen(b->mi.label) > 5 ? (int)strlen(b->mi.label) : 5;
  int wb = (int)strlen(b->o->backend) > 7 ? (int)strlen(b->o->backend) : 7;
  fprintf(f, "| %-*s | %10s | %9s | %-*s | %7s | %7s | %10s | %19s | %9s | %8s |\n", wm, "model", "size",
          "params", wb, "backend", "threads", "test", "t/s", "min - max", "read GB/s", "roofline");
  fprintf(f, "| %.*s | ---------: | --------: | %.*s | ------: | ------: | ---------: | ------------------: "
             "| --------: | -------: |\n",
          wm, "--------------------------------------------------------------------------------", wb,
          "--------------------------------------------------------------------------------");
  for (size_t i = 0; i < b->n_tests; i++) {
    const test_result *r = &b->tests[i];
    char mm[40], roof[16];
    snprintf(mm, sizeof mm, "%.2f - %.2f", r->min, r->max);
    if (r->decode && !isnan(r->roofline_fraction)) snprintf(roof, sizeof roof, "%.3f", r->roofline_fraction);
    else snprintf(roof, sizeof roof, "-");
    fprintf(f, "| %-*s | %10s | %9s | %-*s | %7d | %7s | %10.2f | %19s | %9.2f | %8s |\n", wm, b->mi.label,
            size, params, wb, b->o->backend, r->threads, r->name, r->median, mm, r->bw_gbs, roof);
  }
  fprintf(f, "\nt/s: median of %d run%s (min - max); read GB/s: median of the bandwidth probes before and "
             "after the test (%d MiB, %d passes each, the test's thread count)\n",
          b->o->reps, b->o->reps == 1 ? "" : "s", (int)b->o->bw_mib, (int)b->o->bw_passes);
  fprintf(f, "roofline (tg): t/s x %.2f MB of weights read per token / read bandwidth\n",
          (double)b->mi.bytes_per_token / 1e6);
  char file[32];
  fmt_bytes(b->mi.file_bytes, file, sizeof file);
  fprintf(f, "memory: model file %s\n", file);
  for (size_t l = 0; l < b->n_loads; l++) {
    const load_result *L = &b->loads[l];
    char rss[32];
    fmt_bytes(L->rss_after_load, rss, sizeof rss);
    fprintf(f, "  %d thread%s: load %.2f s, RSS after load %s", L->threads, L->threads == 1 ? "" : "s",
            L->load_s, rss);
    for (size_t i = 0; i < b->n_tests; i++) {
      const test_result *r = &b->tests[i];
      if (r->threads != L->threads || !r->peak_rss) continue;
      char pk[32], kv[32];
      fmt_bytes(r->peak_rss, pk, sizeof pk);
      fmt_bytes(r->kv_cache_bytes, kv, sizeof kv);
      fprintf(f, "; peak RSS %s %s (KV cache %s)", r->name, pk, kv);
    }
    fputc('\n', f);
  }
  if (!b->peak_reset_ok)
    fprintf(f, "  (the peak RSS could not be reset after each bandwidth probe: peaks may include the "
               "probe's %d MiB)\n", (int)b->o->bw_mib);
}

/* The first "model name" of /proc/cpuinfo (x86), else the machine name. */
static void cpu_model(char *out, size_t size) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[512];
  out[0] = '\0';
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    char *colon = strchr(line, ':');
    if (!colon) continue;
    colon++;
    while (*colon == ' ' || *colon == '\t') colon++;
    colon[strcspn(colon, "\n")] = '\0';
    snprintf(out, size, "%s", colon);
    break;
  }
  if (f) fclose(f);
  if (!out[0]) {
    struct utsname u;
    snprintf(out, size, "%s", uname(&u) == 0 ? u.machine : "unknown");
  }
}

/* A JSON number, or NULL (JSON null) for NaN.  The caller owns the result. */
static json_object *jdouble(double v) { return isnan(v) ? NULL : json_object_new_double(v); }

/* JSON arrays of v[0..n); the caller owns the result. */
static json_object *jint_list(const int32_t *v, size_t n) {
  json_object *a = json_object_new_array();
  for (size_t i = 0; i < n; i++) json_object_array_add(a, json_object_new_int(v[i]));
  return a;
}

static json_object *jdouble_list(const double *v, size_t n) {
  json_object *a = json_object_new_array();
  for (size_t i = 0; i < n; i++) json_object_array_add(a, json_object_new_double(v[i]));
  return a;
}

/* Builds the JSON report (docs/performance.md lists its fields).  The
 * caller owns the result (json_object_put). */
static json_object *build_json(const bench *b, const char *date) {
  const options *o = b->o;
  json_object *root = json_object_new_object();
  json_object_object_add(root, "tool", json_object_new_string("velo-bench"));
  json_object_object_add(root, "velo_version", json_object_new_string(VELO_VERSION));
  json_object_object_add(root, "date", json_object_new_string(date));
  char cpu[256];
  cpu_model(cpu, sizeof cpu);
  json_object *host = json_object_new_object();
  json_object_object_add(host, "cpu_model", json_object_new_string(cpu));
  json_object_object_add(host, "online_cpus", json_object_new_int((int)sysconf(_SC_NPROCESSORS_ONLN)));
  json_object_object_add(root, "host", host);

  json_object *s = json_object_new_object();
  json_object_object_add(s, "model", json_object_new_string(o->model));
  json_object_object_add(s, "backend", json_object_new_string(o->backend));
  json_object_object_add(s, "device", json_object_new_int(o->device));
  json_object_object_add(s, "threads", jint_list(o->threads, o->n_threads));
  json_object_object_add(s, "n_prompt", jint_list(o->n_prompt, o->n_n_prompt));
  json_object_object_add(s, "n_gen", jint_list(o->n_gen, o->n_n_gen));
  json_object_object_add(s, "repetitions", json_object_new_int(o->reps));
  json_object_object_add(s, "warmup", json_object_new_boolean(o->warmup));
  json_object_object_add(s, "seed", json_object_new_uint64(o->seed));
  json_object_object_add(s, "tg_prompt_tokens", json_object_new_int(TG_PROMPT_TOKENS));
  json_object_object_add(s, "prefill_chunk", json_object_new_int(VELO_BENCH_PREFILL_CHUNK));
  json_object_object_add(s, "bw_mib", json_object_new_int(o->bw_mib));
  json_object_object_add(s, "bw_passes", json_object_new_int(o->bw_passes));
  json_object_object_add(s, "plugin_dir", o->plugin_dir ? json_object_new_string(o->plugin_dir) : NULL);
  json_object_object_add(s, "task_plugin", json_object_new_string(b->task_path));
  json_object_object_add(s, "backend_plugin", json_object_new_string(b->backend_path));
  json_object_object_add(root, "settings", s);

  json_object *mo = json_object_new_object();
  json_object_object_add(mo, "label", json_object_new_string(b->mi.label));
  json_object_object_add(mo, "name", json_object_new_string(b->mi.name));
  json_object_object_add(mo, "architecture", json_object_new_string(b->mi.arch));
  json_object_object_add(mo, "type", json_object_new_string(b->mi.type));
  json_object_object_add(mo, "file_bytes", json_object_new_uint64(b->mi.file_bytes));
  json_object_object_add(mo, "weight_bytes", json_object_new_uint64(b->mi.weight_bytes));
  json_object_object_add(mo, "params", json_object_new_uint64(b->mi.params));
  json_object_object_add(mo, "bytes_per_token", json_object_new_uint64(b->mi.bytes_per_token));
  json_object_object_add(mo, "context_length_trained", json_object_new_int64(b->mi.n_ctx_train));
  json_object_object_add(root, "model", mo);

  json_object *loads = json_object_new_array();
  for (size_t l = 0; l < b->n_loads; l++) {
    const load_result *L = &b->loads[l];
    json_object *j = json_object_new_object();
    json_object_object_add(j, "threads", json_object_new_int(L->threads));
    json_object_object_add(j, "load_s", json_object_new_double(L->load_s));
    json_object_object_add(j, "rss_after_load_bytes", json_object_new_uint64(L->rss_after_load));
    json_object_object_add(j, "device_name", json_object_new_string(L->device_name));
    json_object_object_add(j, "device_description", json_object_new_string(L->device_desc));
    json_object_array_add(loads, j);
  }
  json_object_object_add(root, "loads", loads);

  json_object *tests = json_object_new_array();
  uint64_t peak = 0;
  for (size_t i = 0; i < b->n_tests; i++) {
    const test_result *r = &b->tests[i];
    json_object *j = json_object_new_object();
    json_object_object_add(j, "test", json_object_new_string(r->name));
    json_object_object_add(j, "kind", json_object_new_string(r->decode ? "decode" : "prefill"));
    json_object_object_add(j, "threads", json_object_new_int(r->threads));
    json_object_object_add(j, "n_prompt", json_object_new_int(r->n_prompt));
    json_object_object_add(j, "n_gen", json_object_new_int(r->n_gen));
    json_object_object_add(j, "at_s", json_object_new_double(r->at_s));
    json_object_object_add(j, "samples_s", jdouble_list(r->seconds, (size_t)r->reps));
    json_object_object_add(j, "samples_tps", jdouble_list(r->tps, (size_t)r->reps));
    json_object_object_add(j, "median_tps", json_object_new_double(r->median));
    json_object_object_add(j, "min_tps", json_object_new_double(r->min));
    json_object_object_add(j, "max_tps", json_object_new_double(r->max));
    json_object_object_add(j, "bandwidth_gbs", json_object_new_double(r->bw_gbs));
    json_object_object_add(j, "bandwidth_probes", jint_list((const int32_t[]){r->probe_before, r->probe_after}, 2));
    json_object_object_add(j, "roofline_tps", jdouble(r->roofline_tps));
    json_object_object_add(j, "roofline_fraction", jdouble(r->roofline_fraction));
    json_object_object_add(j, "peak_rss_bytes", json_object_new_uint64(r->peak_rss));
    json_object_object_add(j, "kv_cache_bytes", json_object_new_uint64(r->kv_cache_bytes));
    json_object_object_add(j, "prefill_passes", json_object_new_int(r->prefill_passes));
    json_object_object_add(j, "last_token", json_object_new_int(r->last_token));
    json_object_array_add(tests, j);
    if (r->peak_rss > peak) peak = r->peak_rss;
  }
  json_object_object_add(root, "tests", tests);

  json_object *probes = json_object_new_array();
  for (size_t i = 0; i < b->n_probes; i++) {
    const bw_probe *p = &b->probes[i];
    json_object *j = json_object_new_object();
    json_object_object_add(j, "threads", json_object_new_int(p->threads));
    json_object_object_add(j, "where", json_object_new_string(p->where));
    json_object_object_add(j, "at_s", json_object_new_double(p->at_s));
    json_object_object_add(j, "samples_gbs", jdouble_list(p->samples, (size_t)p->n));
    json_object_object_add(j, "median_gbs", json_object_new_double(p->median));
    json_object_array_add(probes, j);
  }
  json_object_object_add(root, "bandwidth", probes);

  json_object *mem = json_object_new_object();
  json_object_object_add(mem, "file_bytes", json_object_new_uint64(b->mi.file_bytes));
  json_object_object_add(mem, "peak_rss_bytes", json_object_new_uint64(peak));
  json_object_object_add(mem, "peak_rss_excludes_probe", json_object_new_boolean(b->peak_reset_ok));
  json_object_object_add(mem, "vm_hwm_bytes", json_object_new_uint64(proc_status_bytes("VmHWM")));
  json_object_object_add(root, "memory", mem);
  return root;
}

/* Writes the report to o->json ("-": stdout).  False after printing why. */
static bool write_json(const bench *b) {
  char date[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_object *root = build_json(b, date);
  const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
  bool to_stdout = strcmp(b->o->json, "-") == 0;
  FILE *f = to_stdout ? stdout : fopen(b->o->json, "w");
  bool ok = f != NULL;
  if (ok) {
    ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (to_stdout ? fflush(f) == 0 : fclose(f) == 0) && ok;
  }
  if (!ok) error("--json %s: cannot write: %s", b->o->json, strerror(errno));
  json_object_put(root);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Plugins                                                             */
/* ------------------------------------------------------------------ */

/* Loads the plugins and picks the task plugin and the backend (which must
 * probe OK).  False after printing what is missing and where it looked. */
static bool find_plugins(bench *b) {
  const options *o = b->o;
  velo_error err;
  velo_error_init(&err);
  velo_host_table_init(&b->host, NULL, NULL);
  velo_plugin_host_options po = {.plugin_dir = o->plugin_dir};
  if (velo_plugin_host_create(&po, &b->host, &b->ph, &err) != VELO_OK) {
    error("cannot start the plugin host: %s", err.message);
    return false;
  }
  const char *const *dirs = NULL;
  size_t nd = velo_plugin_host_search_dirs(b->ph, &dirs);
  char searched[1024] = "";
  size_t used = 0;
  for (size_t i = 0; i < nd && used < sizeof searched; i++) {
    int w = snprintf(searched + used, sizeof searched - used, "%s%s", i ? ", " : "", dirs[i]);
    if (w > 0) used += (size_t)w;
  }
  const velo_plugin *tp = velo_plugin_host_find(b->ph, VELO_PLUGIN_TASK, TASK_NAME);
  if (!tp) {
    error("no task plugin '%s' was found (searched: %s); give --plugin-dir DIR", TASK_NAME,
          nd ? searched : "nothing");
    return false;
  }
  b->task = velo_plugin_descriptor_of(tp)->task;
  b->task_path = velo_plugin_path(tp);
  const velo_plugin *bp = velo_plugin_host_find(b->ph, VELO_PLUGIN_BACKEND, o->backend);
  if (!bp) {
    char names[512] = "";
    size_t n = 0;
    for (size_t i = 0; i < velo_plugin_host_count(b->ph); i++) {
      const velo_plugin_descriptor *d = velo_plugin_descriptor_of(velo_plugin_host_get(b->ph, i));
      if (d->kind != VELO_PLUGIN_BACKEND || n >= sizeof names) continue;
      int w = snprintf(names + n, sizeof names - n, "%s%s", n ? ", " : "", d->name);
      if (w > 0) n += (size_t)w;
    }
    error("--backend '%s': no such backend plugin was loaded (available: %s; searched: %s)", o->backend,
          n ? names : "none", nd ? searched : "nothing");
    return false;
  }
  char reason[256];
  if (velo_plugin_probe(bp, reason, sizeof reason) != VELO_OK) {
    error("--backend '%s' cannot run here: %s", o->backend, reason);
    return false;
  }
  b->be = velo_plugin_descriptor_of(bp)->backend;
  b->backend_path = velo_plugin_path(bp);
  return true;
}

/* ------------------------------------------------------------------ */
/* main                                                                */
/* ------------------------------------------------------------------ */

/* Checks the options and the model, loads the plugins, runs every thread
 * count, prints the table and writes the JSON; exit status as in the file
 * comment.  Everything loaded is released before returning. */
int main(int argc, char **argv) {
  options o;
  parse_options(argc, argv, &o);
  velo_log_set_level(o.verbose ? VELO_LOG_DEBUG : VELO_LOG_WARN);

  /* An unwritable --json is refused before the (long) run; a file made
   * only for this check is removed again if the run fails. */
  bool json_created = false;
  if (o.json && strcmp(o.json, "-") != 0) {
    json_created = access(o.json, F_OK) != 0;
    FILE *f = fopen(o.json, "a");
    if (!f) {
      error("--json %s: cannot write: %s", o.json, strerror(errno));
      return EXIT_USAGE;
    }
    fclose(f);
  }
  static bench b; /* large: keep it off the stack */
  b.o = &o;
  b.t_start = now_s();
  b.peak_reset_ok = true;
  int rc = EXIT_RUN_FAILED;
  if (!read_model_info(o.model, &b.mi) || !find_plugins(&b)) goto out;
  for (size_t t = 0; t < o.n_threads; t++) {
    if (o.n_threads > 1 || t > 0)
      fprintf(stderr, "velo-bench: %d thread%s...\n", o.threads[t], o.threads[t] == 1 ? "" : "s");
    if (!run_threads(&b, o.threads[t])) goto out;
  }
  if (!o.json || strcmp(o.json, "-") != 0) print_table(&b, stdout);
  fflush(stdout);
  rc = 0;
  if (o.json && !write_json(&b)) rc = EXIT_RUN_FAILED;
out:
  if (rc != 0 && json_created) unlink(o.json);
  for (size_t i = 0; i < b.n_tests; i++) {
    free(b.tests[i].seconds);
    free(b.tests[i].tps);
  }
  velo_plugin_host_destroy(b.ph);
  return rc;
}
