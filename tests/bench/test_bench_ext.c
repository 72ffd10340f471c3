/*
 * test_bench_ext.c - the text-generation plugin's benchmark extension
 * ("velo.bench.v1", plugins/textgen/bench_ext.c) through its C table, on
 * stories260K.gguf and the CPU backend, without the plugin loader:
 *  - make_prompt is deterministic, starts with BOS, and draws only
 *    ordinary tokens; n = 0 is INVALID_ARGUMENT;
 *  - run computes what the model computes: its last greedy token equals a
 *    plain llama_forward loop's, also when the prompt is prefilled in two
 *    chunks (more than VELO_BENCH_PREFILL_CHUNK tokens), and the timings
 *    and the KV cache size are filled in;
 *  - bad arguments are INVALID_ARGUMENT naming the problem, and a caller
 *    with a smaller (older) velo_bench_timing gets only what it has room for.
 * Usage: test_bench_ext SHARED_DIR
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "host.h"
#include "llama.h"
#include "textgen.h"
#include "tokenizer.h"
#include "velo/bench.h"

#include "check.h"

/* The greedy token after prompt[0..n) and n_gen decode steps, computed
 * one token at a time with llama_forward (the reference for run()). */
static int32_t greedy_reference(llama_model *lm, const int32_t *prompt, int n, int n_gen) {
  int n_vocab = (int)llama_model_hparams(lm)->n_vocab;
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  llama_kv *kv = NULL;
  velo_error err;
  velo_error_init(&err);
  int32_t tok = -1;
  if (!logits || llama_kv_create(lm, n + n_gen, &kv, &err) != VELO_OK) {
    CHECK(0, "reference setup: %s", err.message);
    free(logits);
    return -1;
  }
  for (int i = 0; i < n; i++) CHECK(llama_forward(lm, kv, &prompt[i], 1, i, logits, &err) == VELO_OK, "%s", err.message);
  for (int g = 0; g <= n_gen; g++) {
    tok = 0;
    for (int i = 1; i < n_vocab; i++)
      if (logits[i] > logits[tok]) tok = i;
    if (g < n_gen) CHECK(llama_forward(lm, kv, &tok, 1, n + g, logits, &err) == VELO_OK, "%s", err.message);
  }
  llama_kv_free(kv);
  free(logits);
  return tok;
}

static void test_prompt(velo_model *m, const velo_bench_ext *ext) {
  const velo_tokenizer *tok = textgen_model_tokenizer(m);
  int32_t a[300], b[300], c[300];
  velo_error err;
  velo_error_init(&err);
  CHECK(ext->make_prompt(m, 7, a, 300, &err) == VELO_OK, "%s", err.message);
  CHECK(ext->make_prompt(m, 7, b, 300, &err) == VELO_OK, "%s", err.message);
  CHECK(ext->make_prompt(m, 8, c, 300, &err) == VELO_OK, "%s", err.message);
  CHECK(memcmp(a, b, sizeof a) == 0, "the same seed gave two prompts");
  CHECK(memcmp(a, c, sizeof a) != 0, "seeds 7 and 8 gave the same prompt");
  CHECK(a[0] == velo_tokenizer_bos(tok), "first id %d, BOS is %d", a[0], velo_tokenizer_bos(tok));
  int distinct = 0;
  for (int i = 1; i < 300; i++) {
    CHECK(velo_tokenizer_token_type(tok, a[i]) == VELO_TOKEN_NORMAL && !velo_tokenizer_is_eog(tok, a[i]) &&
              a[i] != velo_tokenizer_bos(tok) && a[i] != velo_tokenizer_eos(tok) &&
              a[i] != velo_tokenizer_unk(tok),
          "id %d at %d is not an ordinary token", a[i], i);
    bool seen = false;
    for (int j = 1; j < i; j++) seen |= a[j] == a[i];
    distinct += !seen;
  }
  CHECK(distinct > 100, "only %d distinct ids in 299 draws", distinct);
  /* A shorter prompt is a prefix of a longer one with the same seed. */
  CHECK(ext->make_prompt(m, 7, c, 16, &err) == VELO_OK && memcmp(a, c, 16 * sizeof *c) == 0,
        "prompt of 16 is not a prefix of the prompt of 300");
  velo_error_init(&err);
  CHECK(ext->make_prompt(m, 7, a, 0, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "at least 1"),
        "n = 0: %s", err.message);
}

static void test_run(velo_model *m, const velo_bench_ext *ext) {
  llama_model *lm = textgen_model_llama(m);
  enum { LONG = VELO_BENCH_PREFILL_CHUNK + 37 };
  int32_t *prompt = malloc(LONG * sizeof *prompt);
  velo_error err;
  velo_error_init(&err);
  CHECK(ext->make_prompt(m, 1234, prompt, LONG, &err) == VELO_OK, "%s", err.message);

  /* Short prompt, some decode steps. */
  velo_bench_timing t = {.struct_size = sizeof t};
  CHECK(ext->run(m, prompt, 9, 6, &t, &err) == VELO_OK, "run: %s", err.message);
  CHECK(t.prefill_s > 0 && t.decode_s > 0, "prefill %g s, decode %g s", t.prefill_s, t.decode_s);
  CHECK(t.prefill_passes == 1, "%d prefill passes for 9 tokens", t.prefill_passes);
  CHECK(t.kv_cache_bytes == llama_kv_bytes_per_token(lm) * 15, "KV cache %llu bytes",
        (unsigned long long)t.kv_cache_bytes);
  int32_t want = greedy_reference(lm, prompt, 9, 6);
  CHECK(t.last_token == want, "last greedy token %d, llama_forward loop %d", t.last_token, want);

  /* Long prompt: two prefill passes, same result as token by token. */
  t = (velo_bench_timing){.struct_size = sizeof t};
  CHECK(ext->run(m, prompt, LONG, 3, &t, &err) == VELO_OK, "run: %s", err.message);
  CHECK(t.prefill_passes == 2, "%d prefill passes for %d tokens", t.prefill_passes, LONG);
  want = greedy_reference(lm, prompt, LONG, 3);
  CHECK(t.last_token == want, "long prompt: last greedy token %d, llama_forward loop %d", t.last_token, want);

  /* Prefill only. */
  t = (velo_bench_timing){.struct_size = sizeof t};
  CHECK(ext->run(m, prompt, 16, 0, &t, &err) == VELO_OK, "run: %s", err.message);
  CHECK(t.prefill_s > 0 && t.decode_s == 0 && t.last_token == -1, "prefill only: decode %g, last %d",
        t.decode_s, t.last_token);

  /* An older caller's shorter struct: nothing past its size is written. */
  struct {
    velo_bench_timing t;
    char guard[8];
  } small;
  memset(&small, 0x5a, sizeof small);
  small.t.struct_size = (uint32_t)offsetof(velo_bench_timing, prefill_passes);
  CHECK(ext->run(m, prompt, 4, 2, &small.t, &err) == VELO_OK, "run: %s", err.message);
  CHECK(small.t.decode_s > 0, "decode_s not written for a short struct");
  const unsigned char *tail = (const unsigned char *)&small.t.prefill_passes;
  bool untouched = true;
  for (size_t i = 0; i < sizeof small - offsetof(velo_bench_timing, prefill_passes); i++) untouched &= tail[i] == 0x5a;
  CHECK(untouched, "run wrote past the caller's struct_size");

  /* Errors. */
  t = (velo_bench_timing){.struct_size = sizeof t};
  velo_error_init(&err);
  CHECK(ext->run(m, prompt, 0, 4, &t, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "at least 1 token"),
        "n_prompt 0: %s", err.message);
  velo_error_init(&err);
  CHECK(ext->run(m, prompt, 4, -1, &t, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "n_gen must be >= 0, got -1"),
        "n_gen -1: %s", err.message);
  int32_t bad[2] = {1, 1 << 20};
  velo_error_init(&err);
  CHECK(ext->run(m, bad, 2, 1, &t, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "1048576"),
        "token outside the vocabulary: %s", err.message);
  velo_error_init(&err);
  CHECK(ext->run(m, prompt, 4, 1, NULL, &err) == VELO_INVALID_ARGUMENT, "out NULL: %s", err.message);
  free(prompt);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SHARED_DIR\n", argv[0]);
    return 2;
  }
  velo_host host;
  velo_host_table_init(&host, NULL, NULL);
  velo_backend_options bo = {.struct_size = sizeof bo, .device = 0, .n_threads = 2};
  velo_backend_instance *inst = NULL;
  velo_error err;
  velo_error_init(&err);
  if (velo_cpu_iface.open(&bo, &inst, &err) != VELO_OK) {
    fprintf(stderr, "cpu open: %s\n", err.message);
    return 1;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/models/stories260K.gguf", argv[1]);
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = "b", .path = path, .backend_name = "cpu",
                           .backend = &velo_cpu_iface, .backend_instance = inst};
  velo_model *m = NULL;
  if (textgen_model_load(&host, &cfg, &m, &err) != VELO_OK) {
    fprintf(stderr, "load %s: %s\n", path, err.message);
    velo_cpu_iface.close(inst);
    return 1;
  }
  const velo_bench_ext *ext = textgen_get_extension(m, VELO_BENCH_EXTENSION);
  CHECK(ext && ext->struct_size == sizeof(velo_bench_ext), "no %s extension", VELO_BENCH_EXTENSION);
  if (ext) {
    test_prompt(m, ext);
    test_run(m, ext);
  }
  textgen_model_unload(m);
  velo_cpu_iface.close(inst);
  return check_summary("bench_ext");
}
