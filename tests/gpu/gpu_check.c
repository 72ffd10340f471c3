/*
 * gpu_check.c - velo-gpu-check: the model reference checks of a GPU
 * backend, run on a machine that has the GPU (tests/gpu/run.sh runs it).
 *
 * For every dense llama model of ../shared/models that has a llama.cpp
 * reference (stories260K.gguf, stories260K-q8_0.gguf, synth-kq-{F16, Q8_0,
 * Q6_K, Q5_K, Q4_K_M, Q4_K, Q4_0}.gguf), loaded through the text-generation
 * plugin's code onto the backend under test (a plugin found with the
 * core's plugin host, as velod finds it) and onto the CPU backend:
 *
 *  1. greedy ids on the GPU against the reference, by the rule of
 *     ../shared/reference/README.md: F32 weights every id; others every id
 *     up to the reference's first near-tie (top1 - top2 < 0.05);
 *  2. first-step logits on the GPU against the reference (llama.cpp with
 *     an F32 KV cache: 1e-4 for F32 weights, 0.02 for F16 and quantized
 *     weights; stories260K-q8_0's reference has llama.cpp's F16 KV cache
 *     only: 0.3, the README's figure);
 *  3. first-step logits on the GPU against the CPU backend, when the CPU
 *     backend can load the file: 1e-4 for F32 weights, 0.02 for the others
 *     (both quantize activations as llama.cpp does; one prompt per model
 *     may reach 5x that: a single activation rounding that the two
 *     summation orders decide differently);
 *  4. batch invariance on the GPU: the logits of the last token of a
 *     98-token prompt are bit-identical whether the prompt runs in one
 *     pass (M = 98: the tiled kernel), in passes of 33 (the last of M =
 *     32), 7 (the small-M kernel) or 1 (decode).
 * With --pair A B (tests/gpu/make_bf16.py writes a BF16 file and the same
 * weights upcast to F32), the two files' first-step logits on the GPU must
 * be bit-identical, and B's must match the CPU's to 1e-4.
 *
 * Prints one row per model and exits 0 when every check passes, 1 when one
 * fails, 2 on a usage error or when the backend cannot run here.
 *
 * Usage: velo-gpu-check --shared DIR [--plugin-dir DIR] [--backend NAME]
 *                       [--device N] [--pair A.gguf B.gguf]
 */
#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "llama.h"
#include "log.h"
#include "plugin_host.h"
#include "textgen.h"

#define MAX_PROMPTS 8
#define MAX_IDS 256
#define MAX_GEN 64
/* 98 tokens: the last pass, whose token's logits are compared, has 98
 * tokens in one pass (the tiled kernel, 64-row tiles), 32 in passes of 33
 * (the tiled kernel, 16-row tiles), 7 in passes of 7 (the matrix-vector
 * kernel, 8 columns) and 1 in passes of 1 (decode). */
#define INV_TOKENS 98

typedef struct prompt_ref {
  int n_ids;
  int32_t ids[MAX_IDS];
  int n_gen;
  int32_t gen[MAX_GEN];
  double gap[MAX_GEN]; /* reference top1 - top2 per step */
  int n_logits;
  float *logits; /* first-step logits of the reference (malloc'd) */
} prompt_ref;

typedef struct check_case {
  char label[64];
  char path[PATH_MAX];
  char weights[32];
  double tol_ref, tol_cpu;
  bool ids_exact;
  int n_prompts;
  prompt_ref pr[MAX_PROMPTS];
} check_case;

typedef struct backend {
  const char *name;
  const velo_backend_iface *be;
  velo_backend_instance *inst;
} backend;

static velo_host g_host;
static int g_failures;

/* ------------------------------------------------------------------ */
/* References                                                          */
/* ------------------------------------------------------------------ */

static json_object *get(json_object *o, const char *key) {
  json_object *v = NULL;
  return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static int read_ints(json_object *arr, int32_t *out, int cap) {
  int n = arr ? (int)json_object_array_length(arr) : 0;
  if (n > cap) n = cap;
  for (int i = 0; i < n; i++) out[i] = json_object_get_int(json_object_array_get_idx(arr, i));
  return n;
}

/* Fills gen ids, gaps and logits of pr from one reference record. */
static void read_record(json_object *rec, const char *logits_key, prompt_ref *pr) {
  pr->n_gen = read_ints(get(rec, "gen_ids"), pr->gen, MAX_GEN);
  json_object *steps = get(rec, "top5_per_step");
  for (int s = 0; s < pr->n_gen; s++) {
    json_object *top = steps ? json_object_array_get_idx(steps, s) : NULL;
    json_object *a = top ? json_object_array_get_idx(top, 0) : NULL, *b = top ? json_object_array_get_idx(top, 1) : NULL;
    pr->gap[s] = a && b ? json_object_get_double(json_object_array_get_idx(a, 1)) -
                              json_object_get_double(json_object_array_get_idx(b, 1))
                        : 0.0;
  }
  json_object *lg = get(rec, logits_key);
  pr->n_logits = lg ? (int)json_object_array_length(lg) : 0;
  pr->logits = calloc((size_t)pr->n_logits + 1, sizeof(float));
  for (int i = 0; i < pr->n_logits; i++)
    pr->logits[i] = (float)json_object_get_double(json_object_array_get_idx(lg, i));
}

static void add_case(check_case *cases, int *n, const char *shared, const char *file, const char *label,
                     const char *weights, double tol_ref, double tol_cpu, bool exact) {
  check_case *c = &cases[(*n)++];
  memset(c, 0, sizeof *c);
  snprintf(c->label, sizeof c->label, "%s", label);
  snprintf(c->path, sizeof c->path, "%s/models/%s", shared, file);
  snprintf(c->weights, sizeof c->weights, "%s", weights);
  c->tol_ref = tol_ref;
  c->tol_cpu = tol_cpu;
  c->ids_exact = exact;
}

/* The reference cases (see the top of the file).  Returns the count. */
static int load_cases(const char *shared, check_case *cases) {
  char path[PATH_MAX];
  int n = 0;
  snprintf(path, sizeof path, "%s/reference/stories260K.json", shared);
  json_object *st = json_object_from_file(path);
  if (!st) {
    fprintf(stderr, "velo-gpu-check: cannot read %s\n", path);
    exit(2);
  }
  add_case(cases, &n, shared, "stories260K.gguf", "stories260K", "F32", 1e-4, 1e-4, true);
  add_case(cases, &n, shared, "stories260K-q8_0.gguf", "stories260K-q8_0", "Q8_0+F16", 0.3, 0.02, false);
  json_object *prompts = get(st, "prompts");
  for (int k = 0; k < 2; k++) {
    check_case *c = &cases[k];
    for (int p = 0; p < (int)json_object_array_length(prompts) && p < MAX_PROMPTS; p++) {
      json_object *pj = json_object_array_get_idx(prompts, p);
      prompt_ref *pr = &c->pr[c->n_prompts++];
      pr->n_ids = read_ints(get(pj, "prompt_ids"), pr->ids, MAX_IDS);
      read_record(get(pj, k == 0 ? "f32" : "q8_0"), k == 0 ? "logits_first_kv_f32" : "logits_first", pr);
    }
  }
  json_object_put(st);

  snprintf(path, sizeof path, "%s/reference/synth-kquants.json", shared);
  json_object *kq = json_object_from_file(path);
  if (!kq) {
    fprintf(stderr, "velo-gpu-check: cannot read %s\n", path);
    exit(2);
  }
  static const char *const types[] = {"F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K_M", "Q4_K", "Q4_0"};
  json_object *kprompts = get(kq, "prompts"), *files = get(kq, "files");
  for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
    char file[64], label[64];
    snprintf(file, sizeof file, "synth-kq-%s.gguf", types[t]);
    snprintf(label, sizeof label, "synth-kq-%s", types[t]);
    add_case(cases, &n, shared, file, label, types[t], 0.02, 0.02, false);
    check_case *c = &cases[n - 1];
    json_object *per = get(get(get(files, types[t]), "kv_f32"), "per_prompt");
    for (int p = 0; p < (int)json_object_array_length(kprompts) && p < MAX_PROMPTS; p++) {
      prompt_ref *pr = &c->pr[c->n_prompts++];
      pr->n_ids = read_ints(get(json_object_array_get_idx(kprompts, p), "prompt_ids"), pr->ids, MAX_IDS);
      read_record(json_object_array_get_idx(per, p), "logits_first", pr);
    }
  }
  json_object_put(kq);
  return n;
}

/* ------------------------------------------------------------------ */
/* Running a model                                                     */
/* ------------------------------------------------------------------ */

static int argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* Loads path onto b; NULL (message in err) if it cannot. */
static velo_model *load_on(const backend *b, const char *path, velo_error *err) {
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = "check", .path = path,
                           .backend_name = b->name, .backend = b->be, .backend_instance = b->inst,
                           .context_length = 256, .kv_cache_tokens = 256};
  velo_model *m = NULL;
  velo_error_init(err);
  if (textgen_model_load(&g_host, &cfg, &m, err) != VELO_OK) return NULL;
  return m;
}

/* Runs ids[0..n) from an empty cache in passes of up to chunk tokens and
 * stores the last token's logits in first; then n_gen greedy steps into
 * gen (when gen is not NULL). */
static velo_status run_prompt(llama_model *lm, const int32_t *ids, int n, int chunk, int n_gen, float *first,
                              int32_t *gen, velo_error *err) {
  const int V = (int)llama_model_hparams(lm)->n_vocab;
  llama_kv *kv = NULL;
  velo_status st = llama_kv_create(lm, n + n_gen + 1, &kv, err);
  if (st != VELO_OK) return st;
  float *logits = malloc((size_t)V * sizeof(float));
  int pos = 0;
  while (st == VELO_OK && pos < n) {
    int k = n - pos < chunk ? n - pos : chunk;
    st = llama_forward(lm, kv, ids + pos, k, pos, logits, err);
    pos += k;
  }
  if (st == VELO_OK) memcpy(first, logits, (size_t)V * sizeof(float));
  for (int s = 0; st == VELO_OK && gen && s < n_gen; s++) {
    int32_t tok = argmax(logits, V);
    gen[s] = tok;
    if (s + 1 < n_gen) st = llama_forward(lm, kv, &tok, 1, pos++, logits, err);
  }
  free(logits);
  llama_kv_free(kv);
  return st;
}

static double max_diff(const float *a, const float *b, int n) {
  double worst = 0.0;
  for (int i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= worst)) worst = d; /* NaN counts as worst */
  }
  return worst;
}

/* Worst difference over prompts, allowing one prompt up to 5x tol; sets
 * *ok. */
static double judge(const double *per, int n, double tol, bool *ok) {
  double worst = 0.0;
  int over = 0;
  for (int i = 0; i < n; i++) {
    if (!(per[i] <= worst)) worst = per[i];
    if (!(per[i] <= tol)) over++;
  }
  *ok = over == 0 || (over == 1 && worst <= 5.0 * tol);
  return worst;
}

/* Batch invariance: the last logits of an INV_TOKENS-token prompt in
 * passes of INV_TOKENS, 33, 7 and 1 tokens are bit-identical. */
static bool check_invariance(llama_model *lm, const int32_t *seed_ids, int n_seed, char *why, size_t why_size) {
  const int V = (int)llama_model_hparams(lm)->n_vocab;
  int32_t ids[INV_TOKENS];
  uint64_t r = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < INV_TOKENS; i++) {
    r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
    ids[i] = i < n_seed ? seed_ids[i] : (int32_t)(3 + (r * 0x2545f4914f6cdd1dull >> 33) % (uint64_t)(V - 3));
  }
  velo_error err;
  velo_error_init(&err);
  if (llama_model_reserve(lm, INV_TOKENS, &err) != VELO_OK) {
    snprintf(why, why_size, "reserve: %s", err.message);
    return false;
  }
  static const int chunks[] = {INV_TOKENS, 33, 7, 1};
  float *base = malloc((size_t)V * sizeof(float)), *other = malloc((size_t)V * sizeof(float));
  bool ok = true;
  for (size_t c = 0; ok && c < sizeof chunks / sizeof *chunks; c++) {
    if (run_prompt(lm, ids, INV_TOKENS, chunks[c], 0, c ? other : base, NULL, &err) != VELO_OK) {
      snprintf(why, why_size, "passes of %d: %s", chunks[c], err.message);
      ok = false;
    } else if (c && memcmp(base, other, (size_t)V * sizeof(float)) != 0) {
      snprintf(why, why_size, "passes of %d differ from one pass (max |diff| %.3g)", chunks[c],
               max_diff(base, other, V));
      ok = false;
    }
  }
  free(base);
  free(other);
  return ok;
}

/* ------------------------------------------------------------------ */

static void row(const char *label, const char *weights, const char *ids, const char *dref, const char *dcpu,
                const char *inv, bool ok) {
  printf("%-18s %-9s %-9s %-20s %-20s %-10s %s\n", label, weights, ids, dref, dcpu, inv, ok ? "PASS" : "FAIL");
  fflush(stdout);
  if (!ok) g_failures++;
}

static void run_case(const check_case *c, const backend *gpu, const backend *cpu) {
  velo_error err;
  velo_model *mg = load_on(gpu, c->path, &err);
  if (!mg) {
    printf("%-18s load on %s failed: %s\n", c->label, gpu->name, err.message);
    row(c->label, c->weights, "-", "-", "-", "-", false);
    return;
  }
  llama_model *lg = textgen_model_llama(mg);
  const int V = (int)llama_model_hparams(lg)->n_vocab;
  velo_model *mc = cpu ? load_on(cpu, c->path, &err) : NULL;
  char cpu_why[160] = "";
  if (cpu && !mc) snprintf(cpu_why, sizeof cpu_why, "%.150s", err.message);
  llama_model *lc = mc ? textgen_model_llama(mc) : NULL;
  float *fg = malloc((size_t)V * sizeof(float)), *fc = malloc((size_t)V * sizeof(float));
  double dref[MAX_PROMPTS] = {0}, dcpu[MAX_PROMPTS] = {0};
  int ids_ok = 0, ids_total = 0;
  bool ok = true;
  for (int p = 0; p < c->n_prompts; p++) {
    const prompt_ref *pr = &c->pr[p];
    int32_t gen[MAX_GEN];
    if (run_prompt(lg, pr->ids, pr->n_ids, 64, pr->n_gen, fg, gen, &err) != VELO_OK) {
      printf("%-18s prompt %d on %s: %s\n", c->label, p, gpu->name, err.message);
      ok = false;
      continue;
    }
    int limit = pr->n_gen;
    if (!c->ids_exact)
      for (int s = 0; s < pr->n_gen; s++)
        if (pr->gap[s] < 0.05) {
          limit = s;
          break;
        }
    int same = 0;
    while (same < limit && gen[same] == pr->gen[same]) same++;
    ids_ok += same;
    ids_total += limit;
    if (same < limit) {
      printf("%-18s prompt %d: id %d at step %d, reference %d (rule: the first %d ids)\n", c->label, p,
             gen[same], same, pr->gen[same], limit);
      ok = false;
    }
    dref[p] = pr->n_logits == V ? max_diff(fg, pr->logits, V) : NAN;
    if (lc) {
      if (run_prompt(lc, pr->ids, pr->n_ids, 64, 0, fc, NULL, &err) != VELO_OK) {
        printf("%-18s prompt %d on cpu: %s\n", c->label, p, err.message);
        ok = false;
      } else {
        dcpu[p] = max_diff(fg, fc, V);
      }
    }
  }
  bool ok_ref, ok_cpu = true;
  double wref = judge(dref, c->n_prompts, c->tol_ref, &ok_ref);
  double wcpu = lc ? judge(dcpu, c->n_prompts, c->tol_cpu, &ok_cpu) : 0.0;
  char sid[32], sref[40], scpu[40], sinv[16], why[256] = "";
  bool inv = check_invariance(lg, c->pr[0].ids, c->pr[0].n_ids, why, sizeof why);
  if (!inv) printf("%-18s batch invariance: %s\n", c->label, why);
  snprintf(sid, sizeof sid, "%d/%d", ids_ok, ids_total);
  snprintf(sref, sizeof sref, "%.2e (<=%.0e)", wref, c->tol_ref);
  if (lc)
    snprintf(scpu, sizeof scpu, "%.2e (<=%.0e)", wcpu, c->tol_cpu);
  else
    snprintf(scpu, sizeof scpu, "n/a");
  snprintf(sinv, sizeof sinv, "%s", inv ? "bit-equal" : "DIFFERS");
  if (!lc && cpu_why[0]) printf("%-18s (no CPU comparison: %s)\n", c->label, cpu_why);
  row(c->label, c->weights, sid, sref, scpu, sinv, ok && ok_ref && ok_cpu && inv);
  free(fg);
  free(fc);
  if (mc) textgen_model_unload(mc);
  textgen_model_unload(mg);
}

/* --pair A B: bit-identical GPU logits for A and B (the same weights as
 * BF16 and as F32), and B on the GPU within 1e-4 of the CPU. */
static void run_pair(const char *a, const char *b, const check_case *prompts_from, const backend *gpu,
                     const backend *cpu) {
  velo_error err;
  velo_model *ma = load_on(gpu, a, &err);
  if (!ma) {
    printf("pair: load %s: %s\n", a, err.message);
    row("BF16 pair", "BF16", "-", "-", "-", "-", false);
    return;
  }
  velo_model *mb = load_on(gpu, b, &err), *mc = cpu ? load_on(cpu, b, &err) : NULL;
  if (!mb) {
    printf("pair: load %s: %s\n", b, err.message);
    textgen_model_unload(ma);
    row("BF16 pair", "BF16", "-", "-", "-", "-", false);
    return;
  }
  llama_model *la = textgen_model_llama(ma), *lb = textgen_model_llama(mb);
  llama_model *lc = mc ? textgen_model_llama(mc) : NULL;
  const int V = (int)llama_model_hparams(la)->n_vocab;
  float *fa = malloc((size_t)V * 4), *fb = malloc((size_t)V * 4), *fc = malloc((size_t)V * 4);
  bool same = true, ok = true;
  double dcpu[MAX_PROMPTS] = {0};
  for (int p = 0; p < prompts_from->n_prompts; p++) {
    const prompt_ref *pr = &prompts_from->pr[p];
    if (run_prompt(la, pr->ids, pr->n_ids, 64, 0, fa, NULL, &err) != VELO_OK ||
        run_prompt(lb, pr->ids, pr->n_ids, 64, 0, fb, NULL, &err) != VELO_OK ||
        (lc && run_prompt(lc, pr->ids, pr->n_ids, 64, 0, fc, NULL, &err) != VELO_OK)) {
      printf("pair: prompt %d: %s\n", p, err.message);
      ok = false;
      continue;
    }
    same = same && memcmp(fa, fb, (size_t)V * 4) == 0;
    if (lc) dcpu[p] = max_diff(fb, fc, V);
  }
  bool ok_cpu = true;
  double w = lc ? judge(dcpu, prompts_from->n_prompts, 1e-4, &ok_cpu) : 0.0;
  char why[256] = "", scpu[40];
  bool inv = check_invariance(la, prompts_from->pr[0].ids, prompts_from->pr[0].n_ids, why, sizeof why);
  if (!inv) printf("BF16 pair batch invariance: %s\n", why);
  if (lc)
    snprintf(scpu, sizeof scpu, "%.2e (<=1e-04)", w);
  else
    snprintf(scpu, sizeof scpu, "n/a");
  row("synth-kq-BF16", "BF16", "-", same ? "bit-equal to F32" : "DIFFERS from F32", scpu,
      inv ? "bit-equal" : "DIFFERS", ok && same && ok_cpu && inv);
  free(fa);
  free(fb);
  free(fc);
  if (mc) textgen_model_unload(mc);
  textgen_model_unload(mb);
  textgen_model_unload(ma);
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: velo-gpu-check --shared DIR [--plugin-dir DIR] [--backend NAME] [--device N]\n"
          "                      [--pair BF16.gguf F32.gguf]\n"
          "Checks a GPU backend against llama.cpp's references and the CPU backend (see\n"
          "tests/gpu/gpu_check.c).  Exit status 0: every check passed; 1: one failed; 2: usage,\n"
          "or the backend cannot run here.\n");
}

int main(int argc, char **argv) {
  const char *shared = NULL, *plugin_dir = NULL, *want = "cuda", *pair_a = NULL, *pair_b = NULL;
  int device = 0;
  static const struct option opts[] = {{"shared", required_argument, NULL, 's'},
                                       {"plugin-dir", required_argument, NULL, 'p'},
                                       {"backend", required_argument, NULL, 'b'},
                                       {"device", required_argument, NULL, 'd'},
                                       {"pair", required_argument, NULL, 'P'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 's': shared = optarg; break;
      case 'p': plugin_dir = optarg; break;
      case 'b': want = optarg; break;
      case 'd': device = atoi(optarg); break;
      case 'P':
        pair_a = optarg;
        if (optind >= argc) {
          usage(stderr);
          return 2;
        }
        pair_b = argv[optind++];
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (!shared) {
    usage(stderr);
    return 2;
  }
  velo_log_set_level(VELO_LOG_WARN);
  velo_host_table_init(&g_host, NULL, NULL);
  velo_plugin_host *ph = NULL;
  velo_plugin_host_options pho = {.plugin_dir = plugin_dir, .skip_env = plugin_dir != NULL,
                                  .skip_defaults = plugin_dir != NULL};
  velo_error err;
  velo_error_init(&err);
  if (velo_plugin_host_create(&pho, &g_host, &ph, &err) != VELO_OK) {
    fprintf(stderr, "velo-gpu-check: %s\n", err.message);
    return 2;
  }
  const velo_plugin *pg = velo_plugin_host_find(ph, VELO_PLUGIN_BACKEND, want);
  const velo_plugin *pc = velo_plugin_host_find(ph, VELO_PLUGIN_BACKEND, "cpu");
  char reason[400];
  if (!pg || velo_plugin_probe(pg, reason, sizeof reason) != VELO_OK) {
    fprintf(stderr, "velo-gpu-check: backend '%s' cannot run here: %s\n", want,
            pg ? reason : "no such plugin was loaded");
    velo_plugin_host_destroy(ph);
    return 2;
  }
  backend gpu = {.name = want, .be = velo_plugin_descriptor_of(pg)->backend};
  backend cpu = {.name = "cpu", .be = pc ? velo_plugin_descriptor_of(pc)->backend : NULL};
  velo_backend_options bo = {.struct_size = sizeof bo, .device = device};
  if (gpu.be->open(&bo, &gpu.inst, &err) != VELO_OK) {
    fprintf(stderr, "velo-gpu-check: %s\n", err.message);
    return 2;
  }
  velo_backend_options co = {.struct_size = sizeof co, .device = 0};
  if (cpu.be && cpu.be->open(&co, &cpu.inst, &err) != VELO_OK) cpu.be = NULL;
  velo_device_info info = {.struct_size = sizeof info};
  if (gpu.be->device_info(device, &info, &err) == VELO_OK)
    printf("device: %s:%d %s (%s)\n", want, device, info.name, info.description);
  printf("%-18s %-9s %-9s %-20s %-20s %-10s %s\n", "model", "weights", "ids", "|dlogit| vs ref",
         "|dlogit| vs cpu", "batch-inv", "result");

  static check_case cases[16];
  int n = load_cases(shared, cases);
  for (int i = 0; i < n; i++) run_case(&cases[i], &gpu, cpu.be ? &cpu : NULL);
  if (pair_a) run_pair(pair_a, pair_b, &cases[2], &gpu, cpu.be ? &cpu : NULL);

  for (int i = 0; i < n; i++)
    for (int p = 0; p < cases[i].n_prompts; p++) free(cases[i].pr[p].logits);
  gpu.be->close(gpu.inst);
  if (cpu.be) cpu.be->close(cpu.inst);
  velo_plugin_host_destroy(ph);
  printf("velo-gpu-check: %d model(s) failed\n", g_failures);
  return g_failures ? 1 : 0;
}
