/*
 * ref_common.h - what the model reference tests share (each test is one
 * translation unit that includes this once, after check.h):
 *  - the fixture reader: ref_fixture.py / kq_fixture.py write records of
 *    "prompt field n v1 .. vn"; find() looks one up;
 *  - argmax over logits;
 *  - run_batched(): the batch-invariance and paging check of a model file
 *    against the same prompts run alone (see its comment).
 * Needs cpu_backend.h, host.h, llama.h and textgen.h included first.
 */
#ifndef VELO_TESTS_REF_COMMON_H
#define VELO_TESTS_REF_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct record {
  int prompt;
  char field[64];
  int n;
  double *v;
} record;

static record recs[256];
static int n_recs;

static void read_fixture(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "cannot open fixture %s\n", path);
    exit(2);
  }
  while (n_recs < 256) {
    record *r = &recs[n_recs];
    if (fscanf(f, "%d %63s %d", &r->prompt, r->field, &r->n) != 3) break;
    r->v = calloc((size_t)r->n + 1, sizeof(double));
    for (int i = 0; i < r->n; i++)
      if (fscanf(f, "%lf", &r->v[i]) != 1) exit(2);
    n_recs++;
  }
  fclose(f);
}

static const record *find(int prompt, const char *field) {
  for (int i = 0; i < n_recs; i++)
    if (recs[i].prompt == prompt && strcmp(recs[i].field, field) == 0) return &recs[i];
  return NULL;
}

static int argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* Batch invariance and paging: every prompt's first STEPS greedy steps,
 * run alone through llama_forward (contiguous cache, prefill in chunks of
 * the model's max batch) and then all prompts together through
 * llama_decode (one batch per step, prefill in chunks of 5 tokens, blocks
 * of 3 slots handed out in a shuffled order), must give bit-identical
 * logits (memcmp): the result for a token may not depend on which other
 * tokens share its forward pass, nor on where its K/V live. */
enum { STEPS = 12, MAXP = 8, BS = 3 };

static void run_batched(const velo_host *host, velo_backend_instance *inst, const char *shared,
                        const char *file) {
  char path[1024];
  snprintf(path, sizeof path, "%s/models/%s", shared, file);
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = "b", .path = path,
                           .backend_name = "cpu", .backend = &velo_cpu_iface,
                           .backend_instance = inst};
  velo_model *model = NULL;
  velo_error err;
  velo_error_init(&err);
  if (textgen_model_load(host, &cfg, &model, &err) != VELO_OK) {
    CHECK(0, "load %s: %s", path, err.message);
    return;
  }
  llama_model *lm = textgen_model_llama(model);
  int V = (int)llama_model_hparams(lm)->n_vocab;
  int np = 0;
  int32_t toks[MAXP][256];
  int n_toks[MAXP], n_prompt[MAXP];
  for (; np < MAXP; np++) {
    const record *pr = find(np, "prompt_ids");
    if (!pr) break;
    n_prompt[np] = n_toks[np] = pr->n;
    for (int i = 0; i < pr->n; i++) toks[np][i] = (int32_t)pr->v[i];
  }
  /* Alone. */
  float *solo = malloc((size_t)np * STEPS * (size_t)V * sizeof(float));
  for (int p = 0; p < np; p++) {
    llama_kv *kv = NULL;
    CHECK(llama_kv_create(lm, 256, &kv, &err) == VELO_OK, "kv: %s", err.message);
    int pos = 0, B = llama_model_max_batch(lm);
    for (int s = 0; s < STEPS; s++) {
      float *lg = solo + ((size_t)p * STEPS + (size_t)s) * (size_t)V;
      while (pos < n_toks[p]) {
        int n = n_toks[p] - pos < B ? n_toks[p] - pos : B;
        CHECK(llama_forward(lm, kv, toks[p] + pos, n, pos, lg, &err) == VELO_OK, "%s", err.message);
        pos += n;
      }
      toks[p][n_toks[p]++] = argmax(lg, V);
    }
    llama_kv_free(kv);
  }
  /* Together, paged. */
  int n_blocks = np * (256 / BS + 1);
  int32_t *order = malloc((size_t)n_blocks * sizeof *order), next_block = 0;
  for (int i = 0; i < n_blocks; i++) order[i] = i;
  check_rng_state = 0x5eed0fba7c4ull;
  for (int i = n_blocks - 1; i > 0; i--) {
    int j = (int)(check_rnd() % (uint64_t)(i + 1));
    int32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  llama_kv_pool *pool = NULL;
  CHECK(llama_kv_pool_create(lm, (int64_t)n_blocks * BS, &pool, &err) == VELO_OK, "pool: %s", err.message);
  int32_t table[MAXP][256 / BS + 2];
  int computed[MAXP] = {0}, step[MAXP] = {0}, nb[MAXP] = {0}, mism = 0, compared = 0;
  int width = 256 / BS + 2;
  int32_t *bt = malloc(64 * sizeof(int32_t) * 4), *attn = malloc(64 * (size_t)width * sizeof(int32_t));
  int32_t *b_tok = bt, *b_pos = bt + 64, *b_slot = bt + 128, *b_rows = bt + 192;
  float *lg = malloc((size_t)MAXP * (size_t)V * sizeof(float));
  for (int round = 0; round < 400 && pool; round++) {
    int n = 0, n_out = 0, who[MAXP];
    for (int p = 0; p < np; p++) {
      if (step[p] >= STEPS) continue;
      int end = step[p] == 0 ? n_prompt[p] : n_prompt[p] + step[p];
      int take = end - computed[p] < 5 ? end - computed[p] : 5;
      for (int j = 0; j < take; j++) {
        int pos = computed[p] + j;
        while (nb[p] <= pos / BS) table[p][nb[p]++] = order[next_block++];
        b_tok[n] = toks[p][pos];
        b_pos[n] = pos;
        b_slot[n] = table[p][pos / BS] * BS + pos % BS;
        n++;
      }
      for (int j = n - take; j < n; j++) {
        attn[(size_t)j * width] = b_pos[j];
        memcpy(attn + (size_t)j * width + 1, table[p], (size_t)nb[p] * sizeof(int32_t));
      }
      computed[p] += take;
      if (computed[p] == end) {
        who[n_out] = p;
        b_rows[n_out++] = n - 1;
      }
    }
    if (n == 0) break;
    llama_batch b = {.n_tok = n, .tokens = b_tok, .pos = b_pos, .slot = b_slot, .attn = attn,
                     .attn_width = width, .block_size = BS, .n_out = n_out, .out_rows = b_rows};
    velo_status st = llama_decode(lm, pool, &b, lg, &err);
    CHECK(st == VELO_OK, "llama_decode: %s", err.message);
    if (st != VELO_OK) break;
    for (int o = 0; o < n_out; o++) {
      int p = who[o];
      const float *ref = solo + ((size_t)p * STEPS + (size_t)step[p]) * (size_t)V;
      compared++;
      if (memcmp(ref, lg + (size_t)o * V, (size_t)V * sizeof(float)) != 0) mism++;
      step[p]++;
    }
  }
  CHECK(compared == np * STEPS, "%s: compared %d of %d steps", file, compared, np * STEPS);
  CHECK(mism == 0, "%s: %d of %d batched steps differ from the same step alone", file, mism, compared);
  printf("%s: %d prompts x %d steps batched with paged KV (blocks of %d): %d bit-identical to alone\n",
         file, np, STEPS, BS, compared - mism);
  free(bt);
  free(attn);
  free(lg);
  free(order);
  free(solo);
  llama_kv_pool_free(pool);
  textgen_model_unload(model);
}

#endif
