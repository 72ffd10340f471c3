/*
 * test_tokenizer.c - unit tests of the text-generation plugin's SentencePiece
 * tokenizer (plugins/textgen/tokenizer.c).
 *
 * Checks, against data in the shared folder (argv[1]):
 *  - llama.cpp's tokenizer test vectors for the SentencePiece vocabularies
 *    (vocab/ggml-vocab-{llama-spm,phi-3}.gguf with their .inp/.out files);
 *  - stories260K: every prompt of reference/stories260K.json tokenizes to its
 *    prompt_ids (BOS included), and the pieces of the generated ids
 *    concatenate to gen_text byte for byte;
 *  - models other than "llama" are UNIMPLEMENTED; invalid UTF-8 is rejected
 *    with its byte offset; round trips of random text; speed on 10 KB.
 * and, against a small vocabulary served by a mock velo_gguf_api: merge
 * order (score, then leftmost), byte fallback, user-defined tokens, pieces of
 * every token type, end-of-generation ids, defaults and every validation
 * error of velo_tokenizer_load.
 *
 * Prints "tokenizer: N checks passed" and exits 0, or lists the failures and
 * exits 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, clock_gettime */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf.h" /* core: velo_gguf_reader */
#include "tokenizer.h"

#include "check.h"

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  size_t r;
  while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) {
      cap *= 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        buf = NULL;
      }
      buf = nb;
    }
  }
  fclose(f);
  if (buf) buf[n] = '\0';
  *len = n;
  return buf;
}

static velo_tokenizer *load_tok(const char *path) {
  velo_gguf *g = NULL;
  velo_error err;
  velo_error_init(&err);
  if (velo_gguf_reader.open(path, &g, &err) != VELO_OK) {
    fprintf(stderr, "cannot open %s: %s\n", path, err.message);
    return NULL;
  }
  velo_tokenizer *tok = NULL;
  velo_status st = velo_tokenizer_load(&velo_gguf_reader, g, &tok, &err);
  velo_gguf_reader.close(g); /* the tokenizer must not need the file any more */
  if (st != VELO_OK) fprintf(stderr, "tokenizer load %s: %s\n", path, err.message);
  return tok;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
  fprintf(stderr, "  %s:", label);
  for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", (int)ids[i]);
  fputc('\n', stderr);
}

/* Encodes and compares with the expected ids. */
static void check_encode(const velo_tokenizer *tok, const char *text, size_t len, bool add_special,
                         const int32_t *want, size_t n_want, const char *what) {
  int32_t *ids = NULL;
  size_t n = 0;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_tokenizer_encode(tok, text, len, add_special, &ids, &n, &err);
  CHECK(st == VELO_OK, "%s: encode failed: %s", what, err.message);
  bool same = st == VELO_OK && n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
  CHECK(same, "%s: ids differ for \"%.*s\"", what, (int)(len > 60 ? 60 : len), text);
  if (!same) {
    print_ids("want", want, n_want);
    print_ids("got ", ids, n);
  }
  free(ids);
}

/* ---------------------------------------------------------------- */
/* llama.cpp test vectors                                             */
/* ---------------------------------------------------------------- */

static void test_vectors(const char *shared, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared, name);
  velo_tokenizer *tok = load_tok(path);
  CHECK(tok != NULL, "load %s", path);
  if (!tok) return;

  size_t inp_len, out_len;
  snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.inp", shared, name);
  char *inp = read_file(path, &inp_len);
  snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.out", shared, name);
  char *outs = read_file(path, &out_len);
  CHECK(inp && outs, "read vectors of %s", name);
  if (!inp || !outs) goto done;

  static const char sep[] = "\n__ggml_vocab_test__\n";
  const char *p = inp, *end = inp + inp_len, *line = outs;
  int n_cases = 0;
  int32_t want[4096];
  while (p < end) {
    const char *s = memmem(p, (size_t)(end - p), sep, sizeof sep - 1);
    if (!s) break;
    /* The expected ids: one line, each id after a space. */
    const char *eol = strchr(line, '\n');
    if (!eol) eol = line + strlen(line);
    size_t n_want = 0;
    for (const char *q = line; q < eol && n_want < 4096;) {
      char *next;
      long v = strtol(q, &next, 10);
      if (next == q) break;
      want[n_want++] = (int32_t)v;
      q = next;
    }
    char what[64];
    snprintf(what, sizeof what, "%s case %d", name, n_cases);
    check_encode(tok, p, (size_t)(s - p), false, want, n_want, what);
    n_cases++;
    p = s + sizeof sep - 1;
    line = *eol ? eol + 1 : eol;
  }
  CHECK(n_cases == 46, "%s: %d cases, expected 46", name, n_cases);
done:
  free(inp);
  free(outs);
  velo_tokenizer_free(tok);
}

/* ---------------------------------------------------------------- */
/* stories260K.json: a purpose-built extractor for the few fields used */
/* ---------------------------------------------------------------- */

/* Finds "key": at or after *p (within the document) and returns the first
 * non-space character of its value, or NULL. */
static const char *json_find(const char *p, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *k = strstr(p, pat);
  if (!k) return NULL;
  k += strlen(pat);
  while (*k == ' ' || *k == '\n' || *k == '\t' || *k == '\r') k++;
  return k;
}

static void put_utf8(char **o, unsigned cp) {
  unsigned char *u = (unsigned char *)*o;
  if (cp < 0x80) {
    *u++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *u++ = (unsigned char)(0xC0 | cp >> 6);
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *u++ = (unsigned char)(0xE0 | cp >> 12);
    *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else {
    *u++ = (unsigned char)(0xF0 | cp >> 18);
    *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  }
  *o = (char *)u;
}

/* Decodes the JSON string at p (which points at its opening quote) into a
 * malloc'd buffer; *len gets its length.  NULL on malformed input. */
static char *json_string(const char *p, size_t *len) {
  if (*p != '"') return NULL;
  p++;
  const char *e = p;
  while (*e && *e != '"') e += (*e == '\\' && e[1]) ? 2 : 1;
  char *out = malloc((size_t)(e - p) + 1), *o = out;
  if (!out) return NULL;
  while (p < e) {
    if (*p != '\\') {
      *o++ = *p++;
      continue;
    }
    p++;
    char c = *p++;
    switch (c) {
      case 'n': *o++ = '\n'; break;
      case 't': *o++ = '\t'; break;
      case 'r': *o++ = '\r'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'u': {
        unsigned cp = (unsigned)strtoul((char[5]){p[0], p[1], p[2], p[3], 0}, NULL, 16);
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && p[0] == '\\' && p[1] == 'u') {
          unsigned lo = (unsigned)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
          p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        put_utf8(&o, cp);
        break;
      }
      default: *o++ = c; break; /* \" \\ \/ */
    }
  }
  *len = (size_t)(o - out);
  return out;
}

/* Parses the JSON integer array at p ('[') into ids; returns the count. */
static size_t json_ints(const char *p, int32_t *ids, size_t cap) {
  size_t n = 0;
  if (*p != '[') return 0;
  p++;
  while (*p && *p != ']' && n < cap) {
    char *next;
    long v = strtol(p, &next, 10);
    if (next == p) {
      p++;
      continue;
    }
    ids[n++] = (int32_t)v;
    p = next;
  }
  return n;
}

static void check_gen_text(const velo_tokenizer *tok, const char *obj, const char *what) {
  int32_t gen[256];
  const char *v = obj ? json_find(obj, "gen_ids") : NULL;
  size_t n_gen = v ? json_ints(v, gen, 256) : 0;
  v = obj ? json_find(obj, "gen_text") : NULL;
  size_t text_len = 0;
  char *text = v ? json_string(v, &text_len) : NULL;
  CHECK(n_gen == 64 && text, "%s: gen_ids/gen_text not found", what);
  if (!text) return;
  char *got = malloc(64 * 64 + 1);
  size_t n = 0;
  for (size_t i = 0; i < n_gen; i++) {
    size_t pl;
    const char *piece = velo_tokenizer_piece(tok, gen[i], false, &pl);
    memcpy(got + n, piece, pl);
    n += pl;
  }
  CHECK(n == text_len && memcmp(got, text, n) == 0, "%s: pieces give \"%.*s\", want \"%s\"", what,
        (int)n, got, text);
  free(got);
  free(text);
}

static void test_stories(const char *shared) {
  char path[4096];
  snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared);
  velo_tokenizer *tok = load_tok(path);
  CHECK(tok != NULL, "load %s", path);
  if (!tok) return;
  CHECK(velo_tokenizer_n_vocab(tok) == 512, "n_vocab %d", velo_tokenizer_n_vocab(tok));
  CHECK(velo_tokenizer_bos(tok) == 1 && velo_tokenizer_eos(tok) == 2 && velo_tokenizer_unk(tok) == 0,
        "special ids %d %d %d", velo_tokenizer_bos(tok), velo_tokenizer_eos(tok),
        velo_tokenizer_unk(tok));
  CHECK(velo_tokenizer_pad(tok) == -1, "padding 0xFFFFFFFF means none, got %d",
        velo_tokenizer_pad(tok));
  CHECK(velo_tokenizer_add_bos(tok) && !velo_tokenizer_add_eos(tok) &&
            velo_tokenizer_add_space_prefix(tok),
        "SentencePiece defaults when the flags are absent");
  CHECK(velo_tokenizer_is_eog(tok, 2) && !velo_tokenizer_is_eog(tok, 1) &&
            !velo_tokenizer_is_eog(tok, 13) && !velo_tokenizer_is_eog(tok, 512),
        "EOG is just EOS");

  size_t json_len;
  snprintf(path, sizeof path, "%s/reference/stories260K.json", shared);
  char *json = read_file(path, &json_len);
  CHECK(json != NULL, "read %s", path);
  if (!json) goto done;
  const char *p = json_find(json, "prompts");
  int n_prompts = 0;
  while (p && (p = json_find(p, "prompt")) != NULL) {
    size_t plen;
    char *prompt = json_string(p, &plen);
    int32_t want[256];
    const char *v = json_find(p, "prompt_ids");
    size_t n_want = v ? json_ints(v, want, 256) : 0;
    char what[64];
    snprintf(what, sizeof what, "stories260K prompt %d", n_prompts);
    CHECK(prompt && n_want > 0, "%s: fields not found", what);
    if (prompt && n_want) check_encode(tok, prompt, plen, true, want, n_want, what);
    free(prompt);

    const char *f32 = v ? json_find(v, "f32") : NULL;
    snprintf(what, sizeof what, "stories260K prompt %d f32", n_prompts);
    check_gen_text(tok, f32, what);
    const char *q8 = f32 ? json_find(f32, "q8_0") : NULL;
    snprintf(what, sizeof what, "stories260K prompt %d q8_0", n_prompts);
    check_gen_text(tok, q8, what);
    p = q8 ? q8 : v;
    n_prompts++;
  }
  CHECK(n_prompts == 5, "%d prompts in stories260K.json, expected 5", n_prompts);

  /* The empty prompt: BOS only with add_special, nothing without. */
  int32_t bos = 1;
  check_encode(tok, "", 0, true, &bos, 1, "empty with BOS");
  check_encode(tok, "", 0, false, NULL, 0, "empty without BOS");
  check_encode(tok, NULL, 0, false, NULL, 0, "NULL text of length 0");
  /* Special tokens in the text are not parsed. */
  {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(velo_tokenizer_encode(tok, "<s>", 3, false, &ids, &n, NULL) == VELO_OK, "encode <s>");
    bool has_bos = false;
    for (size_t i = 0; i < n; i++) has_bos |= ids[i] == 1;
    CHECK(n > 1 && !has_bos, "\"<s>\" must not become the BOS token");
    free(ids);
  }
  free(json);
done:
  velo_tokenizer_free(tok);
}

/* ---------------------------------------------------------------- */
/* Other models, invalid UTF-8, round trips, speed                    */
/* ---------------------------------------------------------------- */

static void test_unimplemented(const char *shared) {
  static const char *const names[] = {"gpt-2", "bert-bge"};
  for (int i = 0; i < 2; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared, names[i]);
    velo_gguf *g = NULL;
    velo_error err;
    velo_error_init(&err);
    if (velo_gguf_reader.open(path, &g, &err) != VELO_OK) {
      CHECK(0, "open %s: %s", path, err.message);
      continue;
    }
    velo_tokenizer *tok = (velo_tokenizer *)&err; /* must stay untouched */
    velo_status st = velo_tokenizer_load(&velo_gguf_reader, g, &tok, &err);
    const char *model = i == 0 ? "\"gpt2\"" : "\"bert\"";
    CHECK(st == VELO_UNIMPLEMENTED && strstr(err.message, model),
          "%s: want UNIMPLEMENTED naming %s, got %s: %s", names[i], model, velo_status_name(st),
          err.message);
    CHECK(tok == (velo_tokenizer *)&err, "*out untouched on failure");
    velo_gguf_reader.close(g);
  }
}

static void test_invalid_utf8(const velo_tokenizer *tok) {
  static const struct {
    const char *s;
    size_t len, offset;
    const char *what;
  } cases[] = {
      {"ab\x80" "cd", 5, 2, "lone continuation byte"},
      {"abc\xE2\x82", 5, 3, "truncated 3-byte sequence at the end"},
      {"a\xE2\x82z", 4, 1, "truncated sequence followed by ASCII"},
      {"\xF0\x9F\x98", 3, 0, "truncated 4-byte sequence"},
      {"x\xC0\xAF", 3, 1, "overlong 2-byte '/'"},
      {"x\xC1\xBF", 3, 1, "overlong C1"},
      {"xy\xE0\x80\xAF", 5, 2, "overlong 3-byte"},
      {"\xF0\x80\x80\xAF", 4, 0, "overlong 4-byte"},
      {"ok \xED\xA0\x80", 6, 3, "surrogate U+D800"},
      {"\xED\xBF\xBF", 3, 0, "surrogate U+DFFF"},
      {"\xF4\x90\x80\x80", 4, 0, "U+110000"},
      {"\xF5\x80\x80\x80", 4, 0, "lead byte F5"},
      {"\xFF", 1, 0, "byte FF"},
      {"\xC3\xA9\xC3", 3, 2, "valid then truncated"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int32_t *ids = (int32_t *)&cases; /* must stay untouched */
    size_t n = 12345;
    velo_error err;
    velo_error_init(&err);
    velo_status st = velo_tokenizer_encode(tok, cases[i].s, cases[i].len, true, &ids, &n, &err);
    char want[64];
    snprintf(want, sizeof want, "offset %zu", cases[i].offset);
    CHECK(st == VELO_INVALID_ARGUMENT && strstr(err.message, "UTF-8") && strstr(err.message, want),
          "%s: want INVALID_ARGUMENT at %s, got %s: %s", cases[i].what, want,
          velo_status_name(st), err.message);
    CHECK(ids == (int32_t *)&cases && n == 12345, "%s: outputs untouched", cases[i].what);
    CHECK(velo_utf8_validate(cases[i].s, cases[i].len) == cases[i].offset, "%s: validate",
          cases[i].what);
  }
  /* Edges that are valid. */
  static const char ok[] = "\x00 \x7F \xC2\x80 \xDF\xBF \xE0\xA0\x80 \xED\x9F\xBF \xEE\x80\x80 "
                           "\xEF\xBF\xBF \xF0\x90\x80\x80 \xF4\x8F\xBF\xBF";
  CHECK(velo_utf8_validate(ok, sizeof ok - 1) == sizeof ok - 1, "boundary code points are valid");
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Random text from a mix of ASCII, spaces, newlines, accents, CJK, emoji. */
static size_t random_text(char *buf, size_t n_chars) {
  static const char *const alphabet[] = {
      "a", "e", "t", " ", " ", "  ", "\n", "\t", "Th", "ing", "3", ".", "!", "'", "\"",
      "\xC3\xA9", "\xC3\xBC", "\xD0\xB6", "\xE4\xB8\xAD", "\xE6\x96\x87",
      "\xF0\x9F\xA6\x99", "\xF0\x9F\x98\x81", "\xE1\x9E\x80", "<s>", "<|end|>", "\x01"};
  size_t n = 0;
  for (size_t i = 0; i < n_chars; i++) {
    const char *a = alphabet[rnd() % (sizeof alphabet / sizeof alphabet[0])];
    size_t l = strlen(a);
    memcpy(buf + n, a, l);
    n += l;
  }
  return n;
}

static void test_round_trip(const velo_tokenizer *tok, const char *what) {
  char text[2048], back[8192];
  for (int iter = 0; iter < 200; iter++) {
    size_t len = random_text(text, 1 + rnd() % 60);
    int32_t *ids = NULL;
    size_t n = 0;
    velo_error err;
    velo_error_init(&err);
    velo_status st = velo_tokenizer_encode(tok, text, len, false, &ids, &n, &err);
    CHECK(st == VELO_OK, "%s: round trip encode: %s", what, err.message);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      size_t pl;
      const char *p = velo_tokenizer_piece(tok, ids[i], false, &pl);
      if (m + pl < sizeof back) memcpy(back + m, p, pl);
      m += pl;
    }
    /* Decoding gives the text back with the space prefix in front. */
    bool same = m == len + 1 && back[0] == ' ' && memcmp(back + 1, text, len) == 0;
    CHECK(same, "%s: round trip of \"%.*s\" gives \"%.*s\"", what, (int)len, text,
          (int)(m < sizeof back ? m : 0), back);
    free(ids);
    if (!same) break;
  }
}

static void test_speed(const velo_tokenizer *tok) {
  size_t cap = 16384;
  char *text = malloc(cap);
  size_t len = 0;
  while (len < 10240) len += random_text(text + len, 1);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int32_t *ids = NULL;
  size_t n = 0;
  velo_status st = velo_tokenizer_encode(tok, text, len, true, &ids, &n, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  CHECK(st == VELO_OK && n > 1000, "10 KB encode");
  CHECK(ms < 500.0, "10 KB took %.1f ms", ms);
  printf("tokenizer: 10 KB of mixed text -> %zu tokens in %.2f ms\n", n, ms);
  free(ids);

  /* Worst case for naive merging: one long run of a single character. */
  memset(text, ' ', 10240);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  st = velo_tokenizer_encode(tok, text, 10240, false, &ids, &n, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  CHECK(st == VELO_OK && n > 0, "10 KB of spaces");
  CHECK(ms < 500.0, "10 KB of spaces took %.1f ms", ms);
  free(ids);
  free(text);
}

static void test_shared_spm(const char *shared) {
  char path[4096];
  snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", shared);
  velo_tokenizer *tok = load_tok(path);
  CHECK(tok != NULL, "load llama-spm");
  if (!tok) return;
  test_invalid_utf8(tok);
  test_round_trip(tok, "llama-spm");
  test_speed(tok);
  size_t l;
  const char *p = velo_tokenizer_piece(tok, 15043, false, &l); /* "▁Hello" */
  CHECK(l == 6 && memcmp(p, " Hello", 6) == 0, "piece keeps its leading space");
  p = velo_tokenizer_piece(tok, 13, false, &l); /* <0x0A> */
  CHECK(l == 1 && p[0] == '\n', "byte piece");
  p = velo_tokenizer_piece(tok, 1, false, &l);
  CHECK(l == 0, "BOS renders empty");
  p = velo_tokenizer_piece(tok, 1, true, &l);
  CHECK(l == 3 && memcmp(p, "<s>", 3) == 0, "BOS renders as <s> with special");
  p = velo_tokenizer_piece(tok, 0, false, &l);
  CHECK(l == 0, "unknown renders empty without special");
  p = velo_tokenizer_piece(tok, -1, true, &l);
  CHECK(l == 0, "id out of range");
  p = velo_tokenizer_token_text(tok, 13, &l);
  CHECK(l == 6 && memcmp(p, "<0x0A>", 6) == 0, "token text");
  CHECK(velo_tokenizer_find(tok, "\xE2\x96\x81Hello", 8) == 15043, "find");
  CHECK(velo_tokenizer_find(tok, "no such token at all", 20) == -1, "find missing");
  CHECK(velo_tokenizer_token_type(tok, 0) == VELO_TOKEN_UNKNOWN &&
            velo_tokenizer_token_type(tok, 1) == VELO_TOKEN_CONTROL &&
            velo_tokenizer_token_type(tok, 3) == VELO_TOKEN_BYTE &&
            velo_tokenizer_token_type(tok, 15043) == VELO_TOKEN_NORMAL &&
            velo_tokenizer_token_type(tok, 32000) == 0,
        "token types");
  velo_tokenizer_free(tok);

  snprintf(path, sizeof path, "%s/vocab/ggml-vocab-phi-3.gguf", shared);
  tok = load_tok(path);
  CHECK(tok != NULL, "load phi-3");
  if (!tok) return;
  CHECK(velo_tokenizer_eos(tok) == 32000, "phi-3 eos");
  CHECK(velo_tokenizer_is_eog(tok, 32000) && velo_tokenizer_is_eog(tok, 32007) &&
            !velo_tokenizer_is_eog(tok, 2) && !velo_tokenizer_is_eog(tok, 32010),
        "phi-3 EOG: <|endoftext|> and <|end|>");
  test_round_trip(tok, "phi-3");
  /* "</s>" is user-defined in phi-3: recognised in the text even though
   * special tokens are not parsed, and (llama.cpp's Phi-3 rule) the
   * whitespace after it is dropped; the text after it gets a space prefix. */
  {
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(velo_tokenizer_encode(tok, "Hello</s>  world", 16, false, &a, &na, NULL) == VELO_OK &&
              velo_tokenizer_encode(tok, "world", 5, false, &b, &nb, NULL) == VELO_OK,
          "phi-3 encode");
    int32_t want[8] = {15043, 2};
    size_t nw = 2;
    for (size_t i = 0; i < nb && nw < 8; i++) want[nw++] = b[i];
    CHECK(na == nw && memcmp(a, want, na * sizeof *a) == 0, "phi-3 </s> split and rstrip");
    if (!(na == nw && memcmp(a, want, na * sizeof *a) == 0)) {
      print_ids("want", want, nw);
      print_ids("got ", a, na);
    }
    free(a);
    free(b);
    /* Control tokens are not recognised. */
    CHECK(velo_tokenizer_encode(tok, "<|end|>", 7, false, &a, &na, NULL) == VELO_OK, "encode");
    bool found = false;
    for (size_t i = 0; i < na; i++) found |= a[i] == 32007;
    CHECK(!found && na > 1, "control token text stays text");
    free(a);
  }
  velo_tokenizer_free(tok);
}

/* ---------------------------------------------------------------- */
/* A mock GGUF reader for small hand-made vocabularies                 */
/* ---------------------------------------------------------------- */

typedef struct mock_kv {
  const char *key;
  velo_gguf_type type;      /* scalar type, or ARRAY */
  velo_gguf_type elem_type; /* for arrays */
  uint64_t count;
  const void *data;           /* numeric array data, or NULL */
  const char *const *strings; /* string array / string value */
  int64_t ival;
  bool bval;
} mock_kv;

struct velo_gguf {
  mock_kv kv[24];
  int n;
};

static const mock_kv *mock_get(const velo_gguf *g, const char *key) {
  for (int i = 0; i < g->n; i++)
    if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
  return NULL;
}
static int64_t m_find_key(const velo_gguf *g, const char *key) {
  for (int i = 0; i < g->n; i++)
    if (strcmp(g->kv[i].key, key) == 0) return i;
  return -1;
}
static velo_gguf_type m_kv_type(const velo_gguf *g, int64_t i) { return g->kv[i].type; }
static bool m_kv_array_info(const velo_gguf *g, int64_t i, velo_gguf_type *et, uint64_t *count) {
  if (g->kv[i].type != VELO_GGUF_ARRAY) return false;
  *et = g->kv[i].elem_type;
  *count = g->kv[i].count;
  return true;
}
static velo_status m_get_int(const velo_gguf *g, const char *key, int64_t *out, velo_error *err) {
  const mock_kv *kv = mock_get(g, key);
  if (!kv) return velo_error_set(err, VELO_NOT_FOUND, "no key %s", key);
  if (kv->type == VELO_GGUF_ARRAY || kv->type == VELO_GGUF_STRING || kv->type == VELO_GGUF_FLOAT32)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s is not an integer", key);
  *out = kv->ival;
  return VELO_OK;
}
static velo_status m_get_bool(const velo_gguf *g, const char *key, bool *out, velo_error *err) {
  const mock_kv *kv = mock_get(g, key);
  if (!kv) return velo_error_set(err, VELO_NOT_FOUND, "no key %s", key);
  if (kv->type != VELO_GGUF_BOOL)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s is not a bool", key);
  *out = kv->bval;
  return VELO_OK;
}
static velo_status m_get_string(const velo_gguf *g, const char *key, const char **s, size_t *len,
                                velo_error *err) {
  const mock_kv *kv = mock_get(g, key);
  if (!kv) return velo_error_set(err, VELO_NOT_FOUND, "no key %s", key);
  if (kv->type != VELO_GGUF_STRING)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s is not a string", key);
  *s = kv->strings[0];
  *len = strlen(kv->strings[0]);
  return VELO_OK;
}
static velo_status m_get_array(const velo_gguf *g, const char *key, velo_gguf_type *et,
                               uint64_t *count, const void **data, velo_error *err) {
  const mock_kv *kv = mock_get(g, key);
  if (!kv) return velo_error_set(err, VELO_NOT_FOUND, "no key %s", key);
  if (kv->type != VELO_GGUF_ARRAY || kv->elem_type == VELO_GGUF_STRING)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s is not a numeric array", key);
  *et = kv->elem_type;
  *count = kv->count;
  *data = kv->data;
  return VELO_OK;
}
static velo_status m_get_array_string(const velo_gguf *g, const char *key, uint64_t idx,
                                      const char **s, size_t *len, velo_error *err) {
  const mock_kv *kv = mock_get(g, key);
  if (!kv) return velo_error_set(err, VELO_NOT_FOUND, "no key %s", key);
  if (kv->type != VELO_GGUF_ARRAY || kv->elem_type != VELO_GGUF_STRING)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "%s is not a string array", key);
  if (idx >= kv->count) return velo_error_set(err, VELO_INVALID_ARGUMENT, "index out of range");
  *s = kv->strings[idx];
  *len = strlen(kv->strings[idx]);
  return VELO_OK;
}

static const velo_gguf_api mock_api = {
    .struct_size = sizeof(velo_gguf_api),
    .find_key = m_find_key,
    .kv_type = m_kv_type,
    .kv_array_info = m_kv_array_info,
    .get_int = m_get_int,
    .get_bool = m_get_bool,
    .get_string = m_get_string,
    .get_array = m_get_array,
    .get_array_string = m_get_array_string,
};

/* The small vocabulary (▁ = U+2581):
 *   0 <unk> (2)  1 <s> (3)  2 </s> (3)  3 <0x41> 'A' (6)  4 <0xC3> (6)
 *   5 <0xA9> (6) 6 ▁ 7 a 8 b 9 c 10 ab 11 bc 12 abc 13 ▁a 14 <tag> (4)
 *   15 <|im_end|> (4, made control + EOG) 16 ▁▁ 17 é (unused, 5) 18 x
 * Scores: see mock_scores. */
#define U2581 "\xE2\x96\x81"
static const char *const mock_tokens[] = {
    "<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>", U2581, "a", "b", "c",
    "ab", "bc", "abc", U2581 "a", "<tag>", "<|im_end|>", U2581 U2581, "\xC3\xA9", "x"};
#define MOCK_N 19
static const float mock_scores[MOCK_N] = {0, 0, 0, 0, 0, 0, -1, -2, -2, -2,
                                          -5, -5, -3, -4, 0, 0, -6, -1, -2};
static const int32_t mock_types[MOCK_N] = {2, 3, 3, 6, 6, 6, 1, 1, 1, 1,
                                           1, 1, 1, 1, 4, 4, 1, 5, 1};
static const char *const mock_model_llama[] = {"llama"};

static void mock_base(velo_gguf *g) {
  memset(g, 0, sizeof *g);
  g->kv[g->n++] = (mock_kv){.key = "tokenizer.ggml.model", .type = VELO_GGUF_STRING,
                            .strings = mock_model_llama};
  g->kv[g->n++] = (mock_kv){.key = "tokenizer.ggml.tokens", .type = VELO_GGUF_ARRAY,
                            .elem_type = VELO_GGUF_STRING, .count = MOCK_N,
                            .strings = mock_tokens};
  g->kv[g->n++] = (mock_kv){.key = "tokenizer.ggml.scores", .type = VELO_GGUF_ARRAY,
                            .elem_type = VELO_GGUF_FLOAT32, .count = MOCK_N,
                            .data = mock_scores};
  g->kv[g->n++] = (mock_kv){.key = "tokenizer.ggml.token_type", .type = VELO_GGUF_ARRAY,
                            .elem_type = VELO_GGUF_INT32, .count = MOCK_N,
                            .data = mock_types};
}

static mock_kv *mock_find(velo_gguf *g, const char *key) {
  for (int i = 0; i < g->n; i++)
    if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
  return NULL;
}

static void mock_int(velo_gguf *g, const char *key, int64_t v) {
  g->kv[g->n++] = (mock_kv){.key = key, .type = VELO_GGUF_UINT32, .ival = v};
}
static void mock_bool(velo_gguf *g, const char *key, bool v) {
  g->kv[g->n++] = (mock_kv){.key = key, .type = VELO_GGUF_BOOL, .bval = v};
}

static void encode_is(const velo_tokenizer *tok, const char *text, bool add_special,
                      const int32_t *want, size_t n_want, const char *what) {
  check_encode(tok, text, strlen(text), add_special, want, n_want, what);
}
#define IDS(...) ((const int32_t[]){__VA_ARGS__}), (sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))

static void test_mock_encode(void) {
  velo_gguf g;
  mock_base(&g);
  velo_tokenizer *tok = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_tokenizer_load(&mock_api, &g, &tok, &err);
  CHECK(st == VELO_OK, "mock load: %s", err.message);
  if (st != VELO_OK) return;

  /* "▁abc": pairs ▁a(-4) ab(-5) bc(-5); ▁a first, then "▁a"+"b" is no
   * token, "b"+"c" = bc; then ▁a + bc is no token. */
  encode_is(tok, "abc", false, IDS(13, 11), "highest score merges first");
  /* Without the space prefix symbols: "abc" would merge ab/bc (tie, -5):
   * the leftmost (ab) wins, then ab+c = abc (-3). */
  encode_is(tok, "x abc", false, IDS(6, 18, 13, 11), "space becomes U+2581");
  encode_is(tok, "", true, IDS(1), "empty text with BOS");
  /* Byte fallback: 'é' is a token of type unused (it still counts as a
   * token, as in llama.cpp); 'A' has only its byte token; 'Z' has none and
   * no byte token -> <unk>. */
  encode_is(tok, "\xC3\xA9", false, IDS(6, 17), "unused tokens still match");
  encode_is(tok, "A", false, IDS(6, 3), "byte fallback");
  encode_is(tok, "Z", false, IDS(6, 0), "no byte token -> unknown");
  /* User-defined "<tag>" is split out; the text after it gets a space
   * prefix again; "<|im_end|>" became control and is not split out. */
  encode_is(tok, "a<tag>a", false, IDS(13, 14, 13), "user-defined token");
  encode_is(tok, "<tag>", true, IDS(1, 14), "user-defined token alone");
  {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(velo_tokenizer_encode(tok, "<|im_end|>", 10, false, &ids, &n, NULL) == VELO_OK, "enc");
    bool found = false;
    for (size_t i = 0; i < n; i++) found |= ids[i] == 15;
    CHECK(!found, "an EOG text is a control token and not parsed");
    free(ids);
  }
  encode_is(tok, " ", false, IDS(16), "two spaces merge");

  /* Pieces by type. */
  size_t l;
  const char *p = velo_tokenizer_piece(tok, 13, false, &l);
  CHECK(l == 2 && memcmp(p, " a", 2) == 0, "normal piece");
  p = velo_tokenizer_piece(tok, 16, false, &l);
  CHECK(l == 2 && memcmp(p, "  ", 2) == 0, "every U+2581 becomes a space");
  p = velo_tokenizer_piece(tok, 4, false, &l);
  CHECK(l == 1 && (unsigned char)p[0] == 0xC3, "byte piece");
  p = velo_tokenizer_piece(tok, 14, false, &l);
  CHECK(l == 5 && memcmp(p, "<tag>", 5) == 0, "user-defined piece is its text");
  p = velo_tokenizer_piece(tok, 17, true, &l);
  CHECK(l == 0, "unused piece is empty");
  p = velo_tokenizer_piece(tok, 15, false, &l);
  CHECK(l == 0, "EOG piece is empty");
  p = velo_tokenizer_piece(tok, 0, true, &l);
  CHECK(l == 5 && memcmp(p, "<unk>", 5) == 0, "unknown piece with special");
  CHECK(velo_tokenizer_is_eog(tok, 2) && velo_tokenizer_is_eog(tok, 15) &&
            !velo_tokenizer_is_eog(tok, 14) && !velo_tokenizer_is_eog(tok, 1),
        "EOG set");
  CHECK(velo_tokenizer_token_type(tok, 15) == VELO_TOKEN_CONTROL, "EOG made control");
  velo_tokenizer_free(tok);

  /* Flags from keys: no space prefix, EOS added, BOS not. */
  mock_base(&g);
  mock_bool(&g, "tokenizer.ggml.add_space_prefix", false);
  mock_bool(&g, "tokenizer.ggml.add_bos_token", false);
  mock_bool(&g, "tokenizer.ggml.add_eos_token", true);
  mock_int(&g, "tokenizer.ggml.eos_token_id", 15);
  st = velo_tokenizer_load(&mock_api, &g, &tok, &err);
  CHECK(st == VELO_OK, "mock load 2: %s", err.message);
  if (st != VELO_OK) return;
  /* "abc" without prefix: ab and bc tie at -5, leftmost wins, then abc. */
  encode_is(tok, "abc", true, IDS(12, 15), "no prefix, tie -> leftmost, EOS");
  encode_is(tok, "abc", false, IDS(12), "add_special false");
  encode_is(tok, "bca", false, IDS(11, 7), "no prefix");
  encode_is(tok, "a<tag>a", false, IDS(7, 14, 7), "no prefix after user-defined token");
  CHECK(velo_tokenizer_eos(tok) == 15, "eos from key");
  velo_tokenizer_free(tok);
}

static void expect_load_error(velo_gguf *g, velo_status code, const char *needle, const char *what) {
  velo_tokenizer *tok = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_tokenizer_load(&mock_api, g, &tok, &err);
  CHECK(st == code && strstr(err.message, needle), "%s: want %s with \"%s\", got %s: %s", what,
        velo_status_name(code), needle, velo_status_name(st), err.message);
  CHECK(tok == NULL, "%s: no tokenizer", what);
  velo_tokenizer_free(tok);
}

static void test_mock_validation(void) {
  velo_gguf g;
  static const char *const bad_model[] = {"gpt2"};
  static const float short_scores[3] = {0};
  static const float nan_scores[MOCK_N] = {[5] = __builtin_nanf("")};
  int32_t bad_types[MOCK_N], zero_types[MOCK_N], bytes_bad[MOCK_N];
  memcpy(bad_types, mock_types, sizeof bad_types);
  memcpy(zero_types, mock_types, sizeof zero_types);
  memcpy(bytes_bad, mock_types, sizeof bytes_bad);
  bad_types[7] = 7;
  zero_types[0] = 0;
  bytes_bad[6] = VELO_TOKEN_BYTE; /* "▁" as a byte token */

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.model")->strings = bad_model;
  expect_load_error(&g, VELO_UNIMPLEMENTED, "\"gpt2\"", "other model");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.model")->key = "tokenizer.ggml.modelx";
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "tokenizer.ggml.model", "no model key");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.tokens")->key = "x";
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "tokenizer.ggml.tokens", "no tokens");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.tokens")->count = 0;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "empty", "empty vocabulary");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.tokens")->elem_type = VELO_GGUF_INT32;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "array of strings", "tokens not strings");

  mock_base(&g);
  *mock_find(&g, "tokenizer.ggml.scores") =
      (mock_kv){.key = "tokenizer.ggml.scores", .type = VELO_GGUF_ARRAY,
                .elem_type = VELO_GGUF_FLOAT32, .count = 3, .data = short_scores};
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "scores has 3 entries but", "scores length");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.scores")->data = nan_scores;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "scores[5] is NaN", "NaN score");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.scores")->elem_type = VELO_GGUF_INT32;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "array of floats", "scores not floats");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.token_type")->count = MOCK_N + 1;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "token_type has 20 entries", "types length");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.token_type")->data = bad_types;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "token_type[7] is 7", "type 7");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.token_type")->data = zero_types;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "token_type[0] is 0", "type 0");

  mock_base(&g);
  mock_find(&g, "tokenizer.ggml.token_type")->data = bytes_bad;
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "not <0xXX>", "bad byte token");

  mock_base(&g);
  mock_int(&g, "tokenizer.ggml.bos_token_id", MOCK_N);
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "bos_token_id is 19, outside", "bos out of range");

  mock_base(&g);
  mock_int(&g, "tokenizer.ggml.eos_token_id", -2);
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "eos_token_id is -2", "eos negative");

  mock_base(&g);
  g.kv[g.n++] = (mock_kv){.key = "tokenizer.ggml.unknown_token_id", .type = VELO_GGUF_STRING,
                          .strings = bad_model};
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "unknown_token_id", "unk id not an integer");

  mock_base(&g);
  mock_int(&g, "tokenizer.ggml.add_bos_token", 1);
  expect_load_error(&g, VELO_INVALID_ARGUMENT, "add_bos_token", "flag not a bool");

  /* Missing optional keys: defaults.  Sentinels keep the default. */
  mock_base(&g);
  g.n = 2; /* model and tokens only */
  mock_int(&g, "tokenizer.ggml.bos_token_id", 0xFFFFFFFFll);
  mock_int(&g, "tokenizer.ggml.padding_token_id", -1);
  velo_tokenizer *tok = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_tokenizer_load(&mock_api, &g, &tok, &err);
  CHECK(st == VELO_OK, "defaults: %s", err.message);
  if (tok) {
    CHECK(velo_tokenizer_bos(tok) == 1 && velo_tokenizer_eos(tok) == 2 &&
              velo_tokenizer_unk(tok) == 0 && velo_tokenizer_pad(tok) == -1,
          "default ids");
    CHECK(velo_tokenizer_token_type(tok, 3) == VELO_TOKEN_NORMAL, "default type");
    /* All scores 0: ties everywhere, so merges go left to right:
     * ▁a, then ▁a+b is no token ... */
    encode_is(tok, "ab", true, IDS(1, 13, 8), "all scores equal: leftmost first");
    velo_tokenizer_free(tok);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SHARED_DIR\n", argv[0]);
    return 2;
  }
  const char *shared = argv[1];
  test_mock_encode();
  test_mock_validation();
  test_vectors(shared, "llama-spm");
  test_vectors(shared, "phi-3");
  test_stories(shared);
  test_unimplemented(shared);
  test_shared_spm(shared);
  return check_summary("tokenizer");
}
