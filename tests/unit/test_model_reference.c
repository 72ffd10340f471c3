/*
 * test_model_reference.c - the llama forward pass against llama.cpp, through
 * the plugin's C API (no server): first-step logits and 64 greedy ids for
 * every prompt of ../shared/reference/stories260K.json, for the F32 and the
 * Q8_0 file, on the CPU backend.
 *
 * Comparison rule (../shared/reference/README.md):
 *  - F32 weights, F32 KV cache: every greedy id equal; first-step logits
 *    within 1e-4 of logits_first_kv_f32 (llama.cpp itself agrees with an
 *    exact float64 forward to 5e-6; 1e-4 leaves room for summation order).
 *  - Q8_0 weights: ids equal up to the first step where the reference's
 *    own top1-top2 gap is below 0.05 (past a near-tie float noise may pick
 *    either).  First-step logits: llama.cpp's logits_first used its F16 KV
 *    cache, while Velo keeps K and V in F32 (as the issue asks for now);
 *    on this file the F16 cache alone moves logits by up to ~0.25 (Q8_0
 *    activation roundings flip, see the README's caution on this file), so
 *    the 0.02 rule is applied against ../shared/tools/gguf_ref.py
 *    --llamacpp --kv f32 (llama.cpp's roundings, F32 cache; it reproduces
 *    llama.cpp's F16-cache logits exactly with --kv f16), and llama.cpp's
 *    own F16-cache logits are checked to the README's 0.3.  A prompt may
 *    exceed 0.02 against the emulation (up to 0.3) only with proof that the
 *    cause is one activation rounding decided the other way
 *    (flip_evidence in ref_common.h: at the first position where Velo
 *    leaves the emulation, reversing one near-tie rounding reproduces Velo
 *    within 1e-4).  Measured: prompt 4 (52 tokens), 0.137: positions 0-22
 *    within 2.3e-6; at position 23 the fp16 rounding of blk.0.ffn_down's
 *    input element 164 (0.2913818121 in float64, 2.4e-8 = 0.8 float32 ulp
 *    below an fp16 midpoint; Velo's float32 order and llama.cpp's
 *    (emulated) both land above it, the float64 emulation below) reversed
 *    reproduces Velo's logits to 1.1e-6; the later positions inherit it
 *    through the cache.
 * Usage: test_model_reference SHARED_DIR FIXTURE (FIXTURE from
 * ref_fixture.py).
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

static void run_model(const velo_host *host, velo_backend_instance *inst, const char *shared,
                      const char *file, const char *key) {
  char path[1024];
  snprintf(path, sizeof path, "%s/models/%s", shared, file);
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = key, .path = path,
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
  bool is_f32 = strcmp(key, "f32") == 0;
  char fld[64];
  for (int p = 0;; p++) {
    const record *pr = find(p, "prompt_ids");
    if (!pr) break;
    snprintf(fld, sizeof fld, "%s.%s", key, is_f32 ? "logits_first_kv_f32" : "logits_first_emul_kv_f32");
    const record *ref_logits = find(p, fld);
    snprintf(fld, sizeof fld, "%s.logits_first", key);
    const record *llama_logits = find(p, fld);
    snprintf(fld, sizeof fld, "%s.gen_ids", key);
    const record *ref_ids = find(p, fld);
    snprintf(fld, sizeof fld, "%s.gap", key);
    const record *gap = find(p, fld);
    llama_kv *kv = NULL;
    CHECK(llama_kv_create(lm, 256, &kv, &err) == VELO_OK, "kv: %s", err.message);
    int32_t toks[256];
    for (int i = 0; i < pr->n; i++) toks[i] = (int32_t)pr->v[i];
    ref_prefill(lm, kv, toks, pr->n, logits);
    const double tol = is_f32 ? 1e-4 : 0.02;
    const double worst = ref_max_diff(logits, ref_logits->v, n_vocab);
    if (is_f32)
      CHECK(worst <= tol, "%s prompt %d: first-step logits differ by %.3g (tolerance %g)", key, p,
            worst, tol);
    else if (worst > tol) {
      char why[512];
      bool flip = flip_evidence(lm, key, p, toks, pr->n, logits, 1e-4, why, sizeof why);
      CHECK(flip && worst <= 0.3,
            "%s prompt %d: first-step logits differ from the emulation by %.3g (tolerance %g; "
            "0.3 for a proven rounding flip): %s",
            key, p, worst, tol, why);
      if (flip && worst <= 0.3)
        printf("%s prompt %d: %.3g > %g allowed as one activation rounding flip: %s\n", key, p,
               worst, tol, why);
    }
    if (!is_f32) {
      const double worst_f16kv = ref_max_diff(logits, llama_logits->v, n_vocab);
      CHECK(worst_f16kv <= 0.3, "%s prompt %d: logits differ from llama.cpp's (F16 KV) by %.3g (tolerance 0.3)",
            key, p, worst_f16kv);
      printf("%s prompt %d: max |logit - llama.cpp F16-KV| = %.3g (tolerance 0.3)\n", key, p, worst_f16kv);
    }
    int top = argmax(logits, n_vocab);
    printf("%s prompt %d: max |logit - llama.cpp| = %.3g (tolerance %g); top id %d logit %.6f\n",
           key, p, worst, tol, top, logits[top]);
    /* Greedy ids. */
    const int limit = is_f32 ? ref_ids->n : ref_near_tie_limit(gap, ref_ids->n);
    const int matched =
        ref_greedy(lm, kv, logits, pr->n, ref_ids->n, limit, ref_ids, key, p);
    printf("%s prompt %d: %d/%d greedy ids equal (compared up to step %d)\n", key, p, matched,
           ref_ids->n, limit);
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
  run_model(&host, inst, argv[1], "stories260K.gguf", "f32");
  run_model(&host, inst, argv[1], "stories260K-q8_0.gguf", "q8_0");
  run_batched(&host, inst, argv[1], "stories260K.gguf");
  run_batched(&host, inst, argv[1], "stories260K-q8_0.gguf");
  velo_cpu_iface.close(inst);
  return check_summary("model_reference");
}
