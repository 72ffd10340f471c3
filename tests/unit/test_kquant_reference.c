/*
 * test_kquant_reference.c - the llama forward pass on K-quant weights
 * against llama.cpp, through the plugin's C API (no server), on the CPU
 * backend: for each ../shared/models/synth-kq-<TYPE>.gguf (F16, Q8_0, Q6_K,
 * Q5_K, Q4_K_M = Q4_K and Q6_K tensors mixed, Q4_K, Q4_0) and both prompts
 * of ../shared/reference/synth-kquants.json (records with an F32 KV cache,
 * as Velo keeps K and V in F32), and batch invariance with paged KV on the
 * K-quant files.
 *
 * Comparison rule (../shared/reference/README.md): greedy ids equal up to
 * the first step where the reference's own top1-top2 gap is below 0.05
 * (past a near-tie, float summation noise may pick either); first-step
 * logits within 0.02 of llama.cpp's logits_first (the activation roundings
 * to Q8_K / Q8_0 / fp16 are reproduced; what remains is summation order,
 * ~1e-5).  Measured: K-quant files within 4e-6 of llama.cpp, all ids
 * matched.  On the F16/Q8_0/Q4_0 files a prompt may be up to 0.1 off only
 * with proof that the cause is one activation rounding decided the other
 * way (flip_evidence in ref_common.h: at the first position where Velo
 * leaves llama.cpp's emulated arithmetic, reversing one near-tie rounding
 * reproduces Velo within 1e-4; the emulation itself must equal llama.cpp's
 * logits within 1e-4).  Measured: Q8_0 prompt 1, 0.049, explained by the
 * Q8_0 rounding of blk.0.ffn_down's input element 88 at position 1
 * (x*127/amax = -7.5000067 in float64; Velo's float32 order gives
 * -7.4999986, llama.cpp's -7.5000043), reproduced to 1.3e-6.  The K-quant
 * files get no such allowance (Q8_K roundings are not part of the proof).
 * Usage: test_kquant_reference SHARED_DIR FIXTURE (FIXTURE from
 * kq_fixture.py).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "host.h"
#include "llama.h"
#include "textgen.h"

#include "check.h"

#include "ref_common.h"

/* Loads synth-kq-<type>.gguf and checks both prompts by the rule above;
 * prints per prompt the ids matched and the largest logit difference. */
static void run_model(const velo_host *host, velo_backend_instance *inst, const char *shared,
                      const char *type) {
  char path[1024], fld[64];
  snprintf(path, sizeof path, "%s/models/synth-kq-%s.gguf", shared, type);
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = type, .path = path,
                           .backend_name = "cpu", .backend = &velo_cpu_iface,
                           .backend_instance = inst};
  velo_model *model = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = textgen_model_load(host, &cfg, &model, &err);
  CHECK(st == VELO_OK, "load %s: %s", path, err.message);
  if (st != VELO_OK) return;
  llama_model *lm = textgen_model_llama(model);
  int n_vocab = (int)llama_model_hparams(lm)->n_vocab;
  float *logits = malloc((size_t)n_vocab * sizeof(float));
  for (int p = 0;; p++) {
    const record *pr = find(p, "prompt_ids");
    if (!pr) break;
    snprintf(fld, sizeof fld, "%s.logits_first", type);
    const record *ref_logits = find(p, fld);
    snprintf(fld, sizeof fld, "%s.gen_ids", type);
    const record *ref_ids = find(p, fld);
    snprintf(fld, sizeof fld, "%s.gap", type);
    const record *gap = find(p, fld);
    CHECK(ref_logits && ref_ids && gap, "%s prompt %d: fixture records missing", type, p);
    if (!ref_logits || !ref_ids || !gap) break;
    CHECK(ref_logits->n == n_vocab, "%s: %d reference logits, model has %d", type, ref_logits->n,
          n_vocab);
    llama_kv *kv = NULL;
    CHECK(llama_kv_create(lm, 256, &kv, &err) == VELO_OK, "kv: %s", err.message);
    int32_t toks[256];
    for (int i = 0; i < pr->n; i++) toks[i] = (int32_t)pr->v[i];
    ref_prefill(lm, kv, toks, pr->n, logits);
    const double tol = 0.02;
    const double worst = ref_max_diff(logits, ref_logits->v, n_vocab);
    /* K-quant files: every prompt within tol.  F16/Q8_0/Q4_0 files: past
     * tol only when flip_evidence proves one activation rounding flip (see
     * the top), and the emulation it relies on is llama.cpp here (its
     * last-position logits within 1e-4 of llama.cpp's; measured 1.6e-6);
     * even then at most 0.1 (measured 0.049). */
    const bool kq = strchr(type, 'K') != NULL;
    if (worst > tol && !kq) {
      char why[512];
      snprintf(fld, sizeof fld, "%s.emul_pos", type);
      const record *emul = find(p, fld);
      double emul_off = emul ? 0 : INFINITY;
      for (int i = 0; emul && i < n_vocab && emul->n == pr->n * n_vocab; i++) {
        double d = fabs(emul->v[(size_t)(pr->n - 1) * n_vocab + (size_t)i] - ref_logits->v[i]);
        emul_off = d > emul_off ? d : emul_off;
      }
      bool flip = emul_off <= 1e-4 &&
                  flip_evidence(lm, type, p, toks, pr->n, logits, 1e-4, why, sizeof why);
      if (emul_off > 1e-4)
        snprintf(why, sizeof why, "the emulation is %.3g off llama.cpp's logits", emul_off);
      CHECK(flip && worst <= 0.1,
            "%s prompt %d: first-step logits differ by %.3g (tolerance %g; 0.1 for a proven "
            "rounding flip): %s",
            type, p, worst, tol, why);
      if (flip && worst <= 0.1)
        printf("%s prompt %d: %.3g > %g allowed as one activation rounding flip: %s\n", type, p,
               worst, tol, why);
    } else
      CHECK(worst <= tol, "%s prompt %d: first-step logits differ by %.3g (tolerance %g)", type,
            p, worst, tol);
    const int limit = ref_near_tie_limit(gap, ref_ids->n);
    const int matched = ref_greedy(lm, kv, logits, pr->n, limit, limit, ref_ids, type, p);
    printf("%s prompt %d: max |logit - llama.cpp| = %.3g (tolerance %g); %d/%d greedy ids equal "
           "(compared up to step %d of %d)\n",
           type, p, worst, tol, matched, limit, limit, ref_ids->n);
    llama_kv_free(kv);
  }
  free(logits);
  textgen_model_unload(model);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s SHARED_DIR FIXTURE\n", argv[0]);
    return 2;
  }
  read_fixture(argv[2]);
  velo_host host;
  velo_host_table_init(&host, NULL, NULL);
  velo_backend_instance *inst = ref_open_cpu();
  static const char *const types[] = {"F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K_M", "Q4_K", "Q4_0"};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    run_model(&host, inst, argv[1], types[i]);
  run_batched(&host, inst, argv[1], "synth-kq-Q4_K_M.gguf");
  run_batched(&host, inst, argv[1], "synth-kq-Q5_K.gguf");
  velo_cpu_iface.close(inst);
  return check_summary("kquant_reference");
}
