/*
 * tokenizer.c - SentencePiece BPE tokenizer (tokenizer.ggml.model "llama")
 * built from GGUF metadata: vocabulary loading and validation, encoding and
 * pieces for detokenization.
 *
 * Encoding follows llama.cpp's SPM tokenizer (llama-vocab.cpp, commit
 * c392e509, the one the shared test vectors were checked against):
 *
 *  1. The text is cut at every occurrence of a user-defined token (longest
 *     token text first); those occurrences become that token.  Control and
 *     unknown tokens are not looked for (parse_special = false).
 *  2. Each remaining fragment gets a ' ' in front when add_space_prefix is
 *     set and the fragment begins the text or follows a token from step 1;
 *     then every ' ' becomes U+2581 ("▁").
 *  3. The fragment is split into UTF-8 characters.  Every adjacent pair of
 *     symbols whose concatenation is a vocabulary token is a candidate; the
 *     candidate with the highest token score is merged (ties: the leftmost),
 *     and the new symbol's pairs with its neighbours become candidates.
 *     This repeats until no candidate is left.  A max-heap of candidates,
 *     with stale entries detected by their recorded length, makes this
 *     O(n log n).
 *  4. Each final symbol maps to its token.  A merged symbol always is a
 *     token (a merge is only made when the concatenation is one), so only
 *     single characters can be missing from the vocabulary: they become
 *     their <0xXX> byte tokens, one per UTF-8 byte.  (llama.cpp also keeps a
 *     table to re-split a non-token symbol into the pair it was merged from;
 *     for valid UTF-8 input that path is unreachable, so it is left out.)
 *
 * Any token may take part in a merge, whatever its type, as in llama.cpp.
 * Piece -> id lookups use an open-addressing hash table over the token
 * texts (FNV-1a).  All strings are copied out of the GGUF mapping.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "tokenizer.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_FLAG_EOG 0x01u    /* ends generation */
#define TOK_FLAG_RSTRIP 0x02u /* whitespace after it is dropped (phi-3) */

#define TOK_MAX_TEXT ((size_t)1 << 29) /* keeps symbol indices in int32 */

typedef struct tok_entry {
  uint32_t text_off, text_len;   /* into text_blob: the vocabulary text */
  uint32_t piece_off, piece_len; /* into piece_blob: rendered bytes */
  float score;
  uint8_t type;  /* velo_token_type */
  uint8_t flags; /* TOK_FLAG_* */
} tok_entry;

struct velo_tokenizer {
  int32_t n_vocab;
  tok_entry *tokens; /* [n_vocab] */
  char *text_blob;   /* all token texts, back to back */
  char *piece_blob;  /* all pieces, back to back */
  int32_t *hash;     /* [hash_mask + 1] token ids, -1 = empty slot */
  uint32_t hash_mask;
  uint32_t max_token_len; /* longest token text, bytes */
  int32_t byte_id[256];   /* token for a raw byte, or -1 */
  int32_t *udt;           /* user-defined token ids, longest text first */
  size_t n_udt;
  int32_t bos, eos, unk, pad, eot, eom; /* -1 = none */
  bool add_bos, add_eos, add_space_prefix;
};

/* ------------------------------------------------------------------ */
/* UTF-8                                                                */
/* ------------------------------------------------------------------ */

size_t velo_utf8_validate(const char *text, size_t len) {
  const unsigned char *s = (const unsigned char *)text;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) lo = 0xA0;      /* overlong */
      else if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) lo = 0x90;      /* overlong */
      else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
      return i; /* continuation byte, C0/C1 or F5..FF */
    }
    if (len - i < n) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < n; k++)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += n;
  }
  return len;
}

/* Length of the UTF-8 sequence that starts with byte c (valid input). */

/* Renders untrusted file text for an error message: printable ASCII as is,
 * every other byte as \xNN, at most 32 input bytes (then "...").  out must
 * hold 4 * 32 + 4 bytes.  Returns out. */
static const char *quote_text(const char *s, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len && i < 32; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') out[o++] = (char)c;
    else o += (size_t)sprintf(out + o, "\\x%02X", c);
  }
  if (len > 32) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

static size_t utf8_seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c < 0xE0) return 2;
  if (c < 0xF0) return 3;
  return 4;
}

/* ------------------------------------------------------------------ */
/* Piece -> id hash table                                               */
/* ------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ull;
  }
  return h;
}

static int32_t lookup(const velo_tokenizer *tok, const char *s, size_t n) {
  if (n > tok->max_token_len) return -1;
  uint32_t i = (uint32_t)fnv1a(s, n) & tok->hash_mask;
  for (;;) {
    int32_t id = tok->hash[i];
    if (id < 0) return -1;
    const tok_entry *e = &tok->tokens[id];
    if (e->text_len == n && memcmp(tok->text_blob + e->text_off, s, n) == 0) return id;
    i = (i + 1) & tok->hash_mask;
  }
}

/* Inserts id; a later token with the same text replaces the earlier one
 * (llama.cpp's token_to_id map behaves the same way). */
static void hash_insert(velo_tokenizer *tok, int32_t id) {
  const tok_entry *e = &tok->tokens[id];
  const char *s = tok->text_blob + e->text_off;
  uint32_t i = (uint32_t)fnv1a(s, e->text_len) & tok->hash_mask;
  for (;;) {
    int32_t cur = tok->hash[i];
    if (cur < 0) {
      tok->hash[i] = id;
      return;
    }
    const tok_entry *c = &tok->tokens[cur];
    if (c->text_len == e->text_len && memcmp(tok->text_blob + c->text_off, s, e->text_len) == 0) {
      tok->hash[i] = id;
      return;
    }
    i = (i + 1) & tok->hash_mask;
  }
}

/* ------------------------------------------------------------------ */
/* Loading                                                              */
/* ------------------------------------------------------------------ */

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"

static velo_status key_error(velo_error *err, const char *key, const velo_error *inner) {
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s: %s", key,
                        inner->message[0] ? inner->message : "cannot be read");
}

/* Reads an optional bool key; leaves *out alone if the key is absent. */
static velo_status read_bool(const velo_gguf_api *api, const velo_gguf *g, const char *key,
                             bool *out, bool *present, velo_error *err) {
  *present = false;
  if (api->find_key(g, key) < 0) return VELO_OK;
  velo_error e;
  velo_error_init(&e);
  if (api->get_bool(g, key, out, &e) != VELO_OK) return key_error(err, key, &e);
  *present = true;
  return VELO_OK;
}

/* Reads an optional special token id.  Absent, -1 or 0xFFFFFFFF (what
 * converters write for "none") keep *id; otherwise it must lie in
 * 0..n_vocab-1. */
static velo_status read_special_id(const velo_gguf_api *api, const velo_gguf *g, const char *key,
                                   int32_t n_vocab, int32_t *id, velo_error *err) {
  if (api->find_key(g, key) < 0) return VELO_OK;
  velo_error e;
  velo_error_init(&e);
  int64_t v;
  if (api->get_int(g, key, &v, &e) != VELO_OK) return key_error(err, key, &e);
  if (v == -1 || v == (int64_t)UINT32_MAX) return VELO_OK;
  if (v < 0 || v >= n_vocab)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "tokenizer: %s is %lld, outside the vocabulary (0..%d)", key,
                          (long long)v, (int)n_vocab - 1);
  *id = (int32_t)v;
  return VELO_OK;
}

/* Element i of a numeric GGUF array as an int64; false for a non-integer
 * element type. */
static bool array_int(velo_gguf_type t, const void *data, uint64_t i, int64_t *out) {
  const unsigned char *p = data;
  switch (t) {
    case VELO_GGUF_UINT8: *out = p[i]; return true;
    case VELO_GGUF_INT8: *out = (int8_t)p[i]; return true;
    case VELO_GGUF_UINT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); *out = v; return true; }
    case VELO_GGUF_INT16: { int16_t v; memcpy(&v, p + 2 * i, 2); *out = v; return true; }
    case VELO_GGUF_UINT32: { uint32_t v; memcpy(&v, p + 4 * i, 4); *out = v; return true; }
    case VELO_GGUF_INT32: { int32_t v; memcpy(&v, p + 4 * i, 4); *out = v; return true; }
    case VELO_GGUF_INT64: { int64_t v; memcpy(&v, p + 8 * i, 8); *out = v; return true; }
    case VELO_GGUF_UINT64: {
      uint64_t v;
      memcpy(&v, p + 8 * i, 8);
      *out = v > INT64_MAX ? INT64_MAX : (int64_t)v;
      return true;
    }
    default: return false;
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* The byte of a "<0xXX>" text, or -1. */
static int byte_of_text(const char *s, size_t n) {
  if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
  int hi = hexval(s[3]), lo = hexval(s[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

static bool text_is(const velo_tokenizer *tok, int32_t id, const char *lit) {
  const tok_entry *e = &tok->tokens[id];
  size_t n = strlen(lit);
  return e->text_len == n && memcmp(tok->text_blob + e->text_off, lit, n) == 0;
}

static bool text_in(const velo_tokenizer *tok, int32_t id, const char *const *list) {
  for (; *list; list++)
    if (text_is(tok, id, *list)) return true;
  return false;
}

/* Reads tokens, scores and types into tok (n_vocab already set). */
static velo_status load_vocab(const velo_gguf_api *api, const velo_gguf *g, velo_tokenizer *tok,
                              velo_error *err) {
  int32_t n = tok->n_vocab;
  velo_error e;
  velo_error_init(&e);

  tok->tokens = calloc((size_t)n, sizeof *tok->tokens);
  if (!tok->tokens) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");

  /* Token texts: two passes, sizes then copies. */
  size_t total = 0;
  for (int32_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    if (api->get_array_string(g, KEY_TOKENS, (uint64_t)i, &s, &len, &e) != VELO_OK)
      return key_error(err, KEY_TOKENS, &e);
    total += len;
    if (total > UINT32_MAX)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s: token texts exceed 4 GiB",
                            KEY_TOKENS);
    tok->tokens[i].text_len = (uint32_t)len;
    if (len > tok->max_token_len) tok->max_token_len = (uint32_t)len;
  }
  tok->text_blob = malloc(total ? total : 1);
  if (!tok->text_blob) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
  size_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    if (api->get_array_string(g, KEY_TOKENS, (uint64_t)i, &s, &len, &e) != VELO_OK)
      return key_error(err, KEY_TOKENS, &e);
    if (len != tok->tokens[i].text_len)
      return velo_error_set(err, VELO_INTERNAL, "tokenizer: %s changed while reading", KEY_TOKENS);
    memcpy(tok->text_blob + off, s, len);
    tok->tokens[i].text_off = (uint32_t)off;
    off += len;
  }

  /* Scores (optional, default 0). */
  if (api->find_key(g, KEY_SCORES) >= 0) {
    velo_gguf_type et;
    uint64_t count;
    const void *data;
    if (api->get_array(g, KEY_SCORES, &et, &count, &data, &e) != VELO_OK)
      return key_error(err, KEY_SCORES, &e);
    if (et != VELO_GGUF_FLOAT32 && et != VELO_GGUF_FLOAT64)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "tokenizer: %s must be an array of floats (element type %d)",
                            KEY_SCORES, (int)et);
    if (count != (uint64_t)n)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "tokenizer: %s has %llu entries but %s has %d", KEY_SCORES,
                            (unsigned long long)count, KEY_TOKENS, (int)n);
    for (int32_t i = 0; i < n; i++) {
      double v;
      if (et == VELO_GGUF_FLOAT32) {
        float f;
        memcpy(&f, (const char *)data + 4 * (size_t)i, 4);
        v = f;
      } else {
        memcpy(&v, (const char *)data + 8 * (size_t)i, 8);
      }
      if (isnan(v))
        return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s[%d] is NaN", KEY_SCORES,
                              (int)i);
      tok->tokens[i].score = (float)v;
    }
  }

  /* Token types (optional, default normal). */
  for (int32_t i = 0; i < n; i++) tok->tokens[i].type = VELO_TOKEN_NORMAL;
  if (api->find_key(g, KEY_TYPES) >= 0) {
    velo_gguf_type et;
    uint64_t count;
    const void *data;
    if (api->get_array(g, KEY_TYPES, &et, &count, &data, &e) != VELO_OK)
      return key_error(err, KEY_TYPES, &e);
    if (count != (uint64_t)n)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "tokenizer: %s has %llu entries but %s has %d", KEY_TYPES,
                            (unsigned long long)count, KEY_TOKENS, (int)n);
    for (int32_t i = 0; i < n; i++) {
      int64_t t;
      if (!array_int(et, data, (uint64_t)i, &t))
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "tokenizer: %s must be an array of integers (element type %d)",
                              KEY_TYPES, (int)et);
      if (t < VELO_TOKEN_NORMAL || t > VELO_TOKEN_BYTE)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "tokenizer: %s[%d] is %lld; known types are 1 (normal), "
                              "2 (unknown), 3 (control), 4 (user-defined), 5 (unused), 6 (byte)",
                              KEY_TYPES, (int)i, (long long)t);
      tok->tokens[i].type = (uint8_t)t;
    }
  }

  for (int32_t i = 0; i < n; i++) {
    const tok_entry *t = &tok->tokens[i];
    if (t->type == VELO_TOKEN_BYTE && byte_of_text(tok->text_blob + t->text_off, t->text_len) < 0)
    {
      char q[4 * 32 + 4];
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "tokenizer: token %d has type byte but its text \"%s\" is not <0xXX>",
                            (int)i, quote_text(tok->text_blob + t->text_off, t->text_len, q));
    }
  }
  return VELO_OK;
}

static velo_status build_hash(velo_tokenizer *tok, velo_error *err) {
  uint32_t size = 16;
  while (size < 2u * (uint32_t)tok->n_vocab) size *= 2;
  tok->hash = malloc((size_t)size * sizeof *tok->hash);
  if (!tok->hash) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
  memset(tok->hash, 0xFF, (size_t)size * sizeof *tok->hash);
  tok->hash_mask = size - 1;
  for (int32_t i = 0; i < tok->n_vocab; i++) hash_insert(tok, i);

  static const char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; b++) {
    char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = lookup(tok, buf, 6);
    if (id < 0) {
      char c = (char)b;
      id = lookup(tok, &c, 1);
    }
    tok->byte_id[b] = id;
  }
  return VELO_OK;
}

/* End-of-generation tokens and the type changes llama.cpp makes to them. */
static void mark_eog(velo_tokenizer *tok, bool eot_from_key, bool eom_from_key) {
  static const char *const eot_texts[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>",
                                          "<end_of_turn>", "<|endoftext|>", "<EOT>",
                                          "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
                                          NULL};
  static const char *const eom_texts[] = {"<|eom_id|>", NULL};
  static const char *const eog_texts[] = {"<|eot_id|>",    "<|im_end|>",    "<|end|>",
                                          "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                                          "<EOT>",         NULL};
  for (int32_t i = 0; i < tok->n_vocab; i++) {
    tok_entry *t = &tok->tokens[i];
    /* The lowest id wins where llama.cpp's pick depends on hash order. */
    if (!eot_from_key && tok->eot < 0 && text_in(tok, i, eot_texts)) {
      tok->eot = i;
      t->type = VELO_TOKEN_CONTROL;
    }
    if (!eom_from_key && tok->eom < 0 && text_in(tok, i, eom_texts)) {
      tok->eom = i;
      t->type = VELO_TOKEN_CONTROL;
    }
    if (text_in(tok, i, eog_texts)) {
      t->flags |= TOK_FLAG_EOG;
      t->type = VELO_TOKEN_CONTROL;
    }
  }
  if (tok->eos >= 0) tok->tokens[tok->eos].flags |= TOK_FLAG_EOG;
  if (tok->eot >= 0) tok->tokens[tok->eot].flags |= TOK_FLAG_EOG;
  if (tok->eom >= 0) tok->tokens[tok->eom].flags |= TOK_FLAG_EOG;
}

/* llama.cpp's per-model attribute fix-up: for Phi-3 (general.name contains
 * "phi-3" or "phi3", any case) every special token except <unk>, <s> and
 * <|endoftext|> swallows the whitespace that follows it; of those only the
 * user-defined ones (e.g. "</s>") matter when special tokens are not
 * parsed. */
static void apply_model_quirks(const velo_gguf_api *api, const velo_gguf *g, velo_tokenizer *tok) {
  const char *name;
  size_t len;
  if (api->find_key(g, "general.name") < 0) return;
  if (api->get_string(g, "general.name", &name, &len, NULL) != VELO_OK) return;
  bool phi3 = false;
  for (size_t i = 0; i < len && !phi3; i++) {
    static const char *const pats[] = {"phi-3", "phi3"};
    for (int p = 0; p < 2 && !phi3; p++) {
      size_t m = strlen(pats[p]), k = 0;
      while (k < m && i + k < len && tolower((unsigned char)name[i + k]) == pats[p][k]) k++;
      phi3 = k == m;
    }
  }
  if (!phi3) return;
  static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>", NULL};
  for (int32_t i = 0; i < tok->n_vocab; i++) {
    uint8_t t = tok->tokens[i].type;
    bool special = t == VELO_TOKEN_CONTROL || t == VELO_TOKEN_USER_DEFINED || t == VELO_TOKEN_UNKNOWN;
    if ((special && !text_in(tok, i, keep)) || text_is(tok, i, "</s>"))
      tok->tokens[i].flags |= TOK_FLAG_RSTRIP;
  }
}

static void sort_udt(velo_tokenizer *tok) {
  /* Longer text first, then lower id.  Insertion sort: vocabularies have
   * a handful of user-defined tokens, rarely a few hundred. */
  for (size_t i = 1; i < tok->n_udt; i++) {
    int32_t id = tok->udt[i];
    uint32_t l = tok->tokens[id].text_len;
    size_t j = i;
    while (j > 0) {
      int32_t p = tok->udt[j - 1];
      uint32_t lp = tok->tokens[p].text_len;
      if (lp > l || (lp == l && p < id)) break;
      tok->udt[j] = p;
      j--;
    }
    tok->udt[j] = id;
  }
}

static velo_status build_pieces(velo_tokenizer *tok, velo_error *err) {
  /* A piece is never longer than its text. */
  size_t total = 0;
  for (int32_t i = 0; i < tok->n_vocab; i++) total += tok->tokens[i].text_len;
  tok->piece_blob = malloc(total ? total : 1);
  if (!tok->piece_blob) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
  size_t off = 0;
  for (int32_t i = 0; i < tok->n_vocab; i++) {
    tok_entry *t = &tok->tokens[i];
    const char *s = tok->text_blob + t->text_off;
    char *d = tok->piece_blob + off;
    size_t n = 0;
    switch (t->type) {
      case VELO_TOKEN_NORMAL:
        for (size_t k = 0; k < t->text_len;) {
          if (t->text_len - k >= 3 && memcmp(s + k, "\xE2\x96\x81", 3) == 0) {
            d[n++] = ' ';
            k += 3;
          } else {
            d[n++] = s[k++];
          }
        }
        break;
      case VELO_TOKEN_BYTE:
        d[n++] = (char)byte_of_text(s, t->text_len);
        break;
      case VELO_TOKEN_UNUSED:
        break;
      default: /* control, unknown, user-defined: the text itself */
        memcpy(d, s, t->text_len);
        n = t->text_len;
        break;
    }
    t->piece_off = (uint32_t)off;
    t->piece_len = (uint32_t)n;
    off += n;
  }
  return VELO_OK;
}

velo_status velo_tokenizer_load(const velo_gguf_api *api, const velo_gguf *g,
                                velo_tokenizer **out, velo_error *err) {
  if (!api || !g || !out)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: NULL argument");
  velo_error e;
  velo_error_init(&e);

  /* The model kind. */
  const char *model;
  size_t model_len;
  if (api->find_key(g, KEY_MODEL) < 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: the file has no %s key",
                          KEY_MODEL);
  if (api->get_string(g, KEY_MODEL, &model, &model_len, &e) != VELO_OK)
    return key_error(err, KEY_MODEL, &e);
  if (model_len != 5 || memcmp(model, "llama", 5) != 0) {
    char q[4 * 32 + 4];
    return velo_error_set(err, VELO_UNIMPLEMENTED,
                          "tokenizer: %s \"%s\" is not supported (only \"llama\", "
                          "SentencePiece BPE, is)",
                          KEY_MODEL, quote_text(model, model_len, q));
  }

  /* The token count. */
  int64_t ki = api->find_key(g, KEY_TOKENS);
  if (ki < 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: the file has no %s key",
                          KEY_TOKENS);
  velo_gguf_type et;
  uint64_t count;
  if (api->kv_type(g, ki) != VELO_GGUF_ARRAY || !api->kv_array_info(g, ki, &et, &count) ||
      et != VELO_GGUF_STRING)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s must be an array of strings",
                          KEY_TOKENS);
  if (count == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s is empty", KEY_TOKENS);
  if (count > INT32_MAX / 2)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: %s has %llu tokens, too many",
                          KEY_TOKENS, (unsigned long long)count);

  velo_tokenizer *tok = calloc(1, sizeof *tok);
  if (!tok) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
  tok->n_vocab = (int32_t)count;
  velo_status st = load_vocab(api, g, tok, err);
  if (st == VELO_OK) st = build_hash(tok, err);
  if (st != VELO_OK) goto fail;

  /* Special ids: llama.cpp's SentencePiece defaults, then the keys. */
  int32_t n = tok->n_vocab;
  tok->bos = n > 1 ? 1 : -1;
  tok->eos = n > 2 ? 2 : -1;
  tok->unk = 0;
  tok->pad = tok->eot = tok->eom = -1;
  struct {
    const char *key;
    int32_t *id;
  } ids[] = {{"tokenizer.ggml.bos_token_id", &tok->bos},
             {"tokenizer.ggml.eos_token_id", &tok->eos},
             {"tokenizer.ggml.unknown_token_id", &tok->unk},
             {"tokenizer.ggml.padding_token_id", &tok->pad},
             {"tokenizer.ggml.eot_token_id", &tok->eot},
             {"tokenizer.ggml.eom_token_id", &tok->eom}};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    st = read_special_id(api, g, ids[i].key, n, ids[i].id, err);
    if (st != VELO_OK) goto fail;
  }
  bool eot_key = tok->eot >= 0, eom_key = tok->eom >= 0;

  /* Flags. */
  bool bos_set, present;
  tok->add_bos = true;
  tok->add_eos = false;
  tok->add_space_prefix = true;
  if ((st = read_bool(api, g, "tokenizer.ggml.add_bos_token", &tok->add_bos, &bos_set, err)) ||
      (st = read_bool(api, g, "tokenizer.ggml.add_eos_token", &tok->add_eos, &present, err)) ||
      (st = read_bool(api, g, "tokenizer.ggml.add_space_prefix", &tok->add_space_prefix,
                      &present, err)))
    goto fail;
  if (tok->add_bos && tok->bos < 0) {
    if (bos_set) {
      st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "tokenizer: add_bos_token is true but the vocabulary has no BOS token");
      goto fail;
    }
    tok->add_bos = false;
  }
  if (tok->add_eos && tok->eos < 0) {
    st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                        "tokenizer: add_eos_token is true but the vocabulary has no EOS token");
    goto fail;
  }

  mark_eog(tok, eot_key, eom_key);
  apply_model_quirks(api, g, tok);

  /* User-defined tokens, to be split out of the text. */
  for (int32_t i = 0; i < n; i++)
    if (tok->tokens[i].type == VELO_TOKEN_USER_DEFINED && tok->tokens[i].text_len > 0) tok->n_udt++;
  if (tok->n_udt) {
    tok->udt = malloc(tok->n_udt * sizeof *tok->udt);
    if (!tok->udt) {
      st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
      goto fail;
    }
    size_t k = 0;
    for (int32_t i = 0; i < n; i++)
      if (tok->tokens[i].type == VELO_TOKEN_USER_DEFINED && tok->tokens[i].text_len > 0)
        tok->udt[k++] = i;
    sort_udt(tok);
  }

  if ((st = build_pieces(tok, err)) != VELO_OK) goto fail;
  *out = tok;
  return VELO_OK;

fail:
  velo_tokenizer_free(tok);
  return st;
}

void velo_tokenizer_free(velo_tokenizer *tok) {
  if (!tok) return;
  free(tok->tokens);
  free(tok->text_blob);
  free(tok->piece_blob);
  free(tok->hash);
  free(tok->udt);
  free(tok);
}

/* ------------------------------------------------------------------ */
/* Encoding                                                             */
/* ------------------------------------------------------------------ */

typedef struct id_vec {
  int32_t *v;
  size_t n, cap;
} id_vec;

static bool vec_push(id_vec *a, int32_t id) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 64;
    int32_t *v = realloc(a->v, cap * sizeof *v);
    if (!v) return false;
    a->v = v;
    a->cap = cap;
  }
  a->v[a->n++] = id;
  return true;
}

typedef struct symbol {
  int32_t start; /* byte offset in the escaped fragment */
  int32_t n;     /* bytes; 0 once merged into its left neighbour */
  int32_t prev, next;
} symbol;

typedef struct bigram {
  float score;
  int32_t left, right;
  int32_t size; /* bytes of the merged text when queued */
} bigram;

/* Scratch memory for one encode call, reused across fragments. */
typedef struct spm_scratch {
  char *buf;
  size_t buf_cap;
  symbol *sym;
  size_t sym_cap;
  bigram *heap;
  size_t heap_n, heap_cap;
} spm_scratch;

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

/* True if a is to be merged before b. */
static bool bigram_before(const bigram *a, const bigram *b) {
  return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static bool heap_push(spm_scratch *s, bigram b) {
  if (!grow((void **)&s->heap, &s->heap_cap, s->heap_n + 1, sizeof *s->heap)) return false;
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!bigram_before(&b, &s->heap[p])) break;
    s->heap[i] = s->heap[p];
    i = p;
  }
  s->heap[i] = b;
  return true;
}

static bigram heap_pop(spm_scratch *s) {
  bigram top = s->heap[0];
  bigram last = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_before(&s->heap[c + 1], &s->heap[c])) c++;
    if (!bigram_before(&s->heap[c], &last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n) s->heap[i] = last;
  return top;
}

/* Queues the merge of symbols left and right if their concatenation is a
 * token.  Returns false only when memory runs out. */
static bool try_bigram(const velo_tokenizer *tok, spm_scratch *s, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return true;
  const symbol *l = &s->sym[left], *r = &s->sym[right];
  size_t n = (size_t)l->n + (size_t)r->n;
  int32_t id = lookup(tok, s->buf + l->start, n);
  if (id < 0) return true;
  bigram b = {tok->tokens[id].score, left, right, (int32_t)n};
  return heap_push(s, b);
}

/* Tokenizes one fragment (raw text, not yet escaped) and appends the ids. */
static velo_status spm_fragment(const velo_tokenizer *tok, spm_scratch *s, const char *text,
                                size_t len, bool prefix, id_vec *out, velo_error *err) {
  /* Escape: optional leading space, then ' ' -> U+2581. */
  size_t spaces = prefix ? 1 : 0;
  for (size_t i = 0; i < len; i++) spaces += text[i] == ' ';
  size_t blen = len + (prefix ? 1 : 0) + 2 * spaces;
  if (!grow((void **)&s->buf, &s->buf_cap, blen, 1)) goto oom;
  size_t o = 0;
  if (prefix) {
    memcpy(s->buf, "\xE2\x96\x81", 3);
    o = 3;
  }
  for (size_t i = 0; i < len; i++) {
    if (text[i] == ' ') {
      memcpy(s->buf + o, "\xE2\x96\x81", 3);
      o += 3;
    } else {
      s->buf[o++] = text[i];
    }
  }

  /* One symbol per character. */
  if (!grow((void **)&s->sym, &s->sym_cap, blen, sizeof *s->sym)) goto oom;
  int32_t nsym = 0;
  for (size_t i = 0; i < blen;) {
    size_t cl = utf8_seq_len((unsigned char)s->buf[i]);
    symbol *y = &s->sym[nsym];
    y->start = (int32_t)i;
    y->n = (int32_t)cl;
    y->prev = nsym - 1;
    i += cl;
    y->next = i == blen ? -1 : nsym + 1;
    nsym++;
  }
  if (nsym == 0) return VELO_OK;

  /* Merge, best pair first. */
  s->heap_n = 0;
  for (int32_t i = 1; i < nsym; i++)
    if (!try_bigram(tok, s, i - 1, i)) goto oom;
  while (s->heap_n) {
    bigram b = heap_pop(s);
    symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) s->sym[r->next].prev = b.left;
    if (!try_bigram(tok, s, l->prev, b.left) || !try_bigram(tok, s, b.left, l->next)) goto oom;
  }

  /* Final symbols -> tokens, byte fallback for characters with none. */
  for (int32_t i = 0; i != -1; i = s->sym[i].next) {
    const symbol *y = &s->sym[i];
    const char *p = s->buf + y->start;
    int32_t id = lookup(tok, p, (size_t)y->n);
    if (id >= 0) {
      if (!vec_push(out, id)) goto oom;
      continue;
    }
    for (int32_t k = 0; k < y->n; k++) {
      unsigned char c = (unsigned char)p[k];
      int32_t bid = tok->byte_id[c] >= 0 ? tok->byte_id[c] : tok->unk;
      if (bid < 0)
      {
        char q[4 * 32 + 4];
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "tokenizer: the character \"%s\" has no token, and the "
                              "vocabulary has neither byte tokens nor an unknown token",
                              quote_text(p, (size_t)y->n, q));
      }
      if (!vec_push(out, bid)) goto oom;
      if (tok->byte_id[c] < 0) break; /* one unknown token per character */
    }
  }
  return VELO_OK;

oom:
  return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
}

typedef struct fragment {
  int32_t id; /* the user-defined token, or -1 for raw text */
  size_t off, len;
} fragment;

typedef struct frag_vec {
  fragment *v;
  size_t n, cap;
} frag_vec;

static bool frag_push(frag_vec *a, int32_t id, size_t off, size_t len) {
  if (!grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return false;
  a->v[a->n++] = (fragment){id, off, len};
  return true;
}

/* Splits the text at every user-defined token, as llama.cpp's
 * tokenizer_st_partition does: tokens in order (longest first), each one
 * cutting every raw fragment at its occurrences, left to right. */
static bool partition(const velo_tokenizer *tok, const char *text, size_t len, frag_vec *frags) {
  frags->n = 0;
  if (len == 0) return true;
  if (!frag_push(frags, -1, 0, len)) return false;
  frag_vec next = {0};
  bool ok = true;
  for (size_t u = 0; u < tok->n_udt && ok; u++) {
    int32_t id = tok->udt[u];
    const tok_entry *t = &tok->tokens[id];
    const char *ts = tok->text_blob + t->text_off;
    size_t tl = t->text_len;
    next.n = 0;
    for (size_t f = 0; f < frags->n && ok; f++) {
      fragment fr = frags->v[f];
      if (fr.id >= 0 || fr.len < tl) {
        ok = frag_push(&next, fr.id, fr.off, fr.len);
        continue;
      }
      size_t cur = fr.off, end = fr.off + fr.len;
      while (ok && cur < end) {
        const char *m = memmem(text + cur, end - cur, ts, tl);
        if (!m) break;
        size_t pos = (size_t)(m - text);
        if (pos > cur) ok = frag_push(&next, -1, cur, pos - cur);
        if (ok) ok = frag_push(&next, id, pos, tl);
        cur = pos + tl;
        if (t->flags & TOK_FLAG_RSTRIP)
          while (cur < end && isspace((unsigned char)text[cur])) cur++;
      }
      if (ok && cur < end) ok = frag_push(&next, -1, cur, end - cur);
    }
    frag_vec tmp = *frags;
    *frags = next;
    next = tmp;
  }
  free(next.v);
  return ok;
}

velo_status velo_tokenizer_encode(const velo_tokenizer *tok, const char *text, size_t len,
                                  bool add_special, int32_t **ids, size_t *n_ids,
                                  velo_error *err) {
  if (!tok || (!text && len) || !ids || !n_ids)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "tokenizer: NULL argument");
  if (len > TOK_MAX_TEXT)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "text of %zu bytes is too long to tokenize (at most %zu)", len,
                          TOK_MAX_TEXT);
  size_t bad = velo_utf8_validate(text, len);
  if (bad < len)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "text is not valid UTF-8: bad byte 0x%02X at byte offset %zu", 
                          (unsigned)(unsigned char)text[bad], bad);

  id_vec out = {0};
  frag_vec frags = {0};
  spm_scratch s = {0};
  velo_status st = VELO_OK;

  if (!partition(tok, text, len, &frags)) goto oom;
  if (add_special && tok->add_bos && !vec_push(&out, tok->bos)) goto oom;
  bool prev_special = true; /* the text start counts as "after a token" */
  for (size_t f = 0; f < frags.n; f++) {
    const fragment *fr = &frags.v[f];
    if (fr->id >= 0) {
      if (!vec_push(&out, fr->id)) goto oom;
      prev_special = true;
      continue;
    }
    st = spm_fragment(tok, &s, text + fr->off, fr->len, tok->add_space_prefix && prev_special,
                      &out, err);
    if (st != VELO_OK) goto done;
    prev_special = false;
  }
  if (add_special && tok->add_eos && !vec_push(&out, tok->eos)) goto oom;

  *ids = out.v;
  *n_ids = out.n;
  out.v = NULL;
  goto done;

oom:
  st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "tokenizer: out of memory");
done:
  free(out.v);
  free(frags.v);
  free(s.buf);
  free(s.sym);
  free(s.heap);
  return st;
}

/* ------------------------------------------------------------------ */
/* Accessors                                                            */
/* ------------------------------------------------------------------ */

static bool in_range(const velo_tokenizer *tok, int32_t id) {
  return tok && id >= 0 && id < tok->n_vocab;
}

const char *velo_tokenizer_piece(const velo_tokenizer *tok, int32_t id, bool special,
                                 size_t *len) {
  *len = 0;
  if (!in_range(tok, id)) return "";
  const tok_entry *t = &tok->tokens[id];
  if (!special && (t->type == VELO_TOKEN_CONTROL || t->type == VELO_TOKEN_UNKNOWN)) return "";
  *len = t->piece_len;
  return tok->piece_blob + t->piece_off;
}

const char *velo_tokenizer_token_text(const velo_tokenizer *tok, int32_t id, size_t *len) {
  *len = 0;
  if (!in_range(tok, id)) return "";
  *len = tok->tokens[id].text_len;
  return tok->text_blob + tok->tokens[id].text_off;
}

int32_t velo_tokenizer_find(const velo_tokenizer *tok, const char *text, size_t len) {
  return lookup(tok, text, len);
}

velo_token_type velo_tokenizer_token_type(const velo_tokenizer *tok, int32_t id) {
  return in_range(tok, id) ? (velo_token_type)tok->tokens[id].type : (velo_token_type)0;
}

int32_t velo_tokenizer_n_vocab(const velo_tokenizer *tok) { return tok->n_vocab; }
int32_t velo_tokenizer_bos(const velo_tokenizer *tok) { return tok->bos; }
int32_t velo_tokenizer_eos(const velo_tokenizer *tok) { return tok->eos; }
int32_t velo_tokenizer_unk(const velo_tokenizer *tok) { return tok->unk; }
int32_t velo_tokenizer_pad(const velo_tokenizer *tok) { return tok->pad; }

bool velo_tokenizer_is_eog(const velo_tokenizer *tok, int32_t id) {
  return in_range(tok, id) && (tok->tokens[id].flags & TOK_FLAG_EOG);
}

bool velo_tokenizer_add_bos(const velo_tokenizer *tok) { return tok->add_bos; }
bool velo_tokenizer_add_eos(const velo_tokenizer *tok) { return tok->add_eos; }
bool velo_tokenizer_add_space_prefix(const velo_tokenizer *tok) { return tok->add_space_prefix; }
