/*
 * size.c - parses KV cache sizes ("4096" tokens, "512MiB" bytes) for
 * velod's --kv-cache-size and the repository's kv_cache_size key (size.h
 * gives the forms).  Strict on purpose: a size that could be read two ways
 * ("1.5GiB", "512 mb", "+4096") is an error that says why, never a guess.
 */
#include "size.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define QUOTE_MAX 64 /* bytes of the value quoted in a message */

/* The units, exactly as they must be written. */
static const struct {
  const char *name;
  uint64_t mult;
} units[] = {
    {"B", 1},
    {"KB", 1000},
    {"MB", 1000 * 1000},
    {"GB", 1000 * 1000 * 1000},
    {"TB", 1000ULL * 1000 * 1000 * 1000},
    {"KiB", 1ULL << 10},
    {"MiB", 1ULL << 20},
    {"GiB", 1ULL << 30},
    {"TiB", 1ULL << 40},
};

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Copies at most QUOTE_MAX bytes of s into out (QUOTE_MAX * 4 + 4 bytes),
 * writing bytes outside printable ASCII as \xNN and "..." when cut, so a
 * message never carries control characters or half a UTF-8 sequence. */
static const char *quote(const char *s, char *out) {
  size_t o = 0, i = 0;
  for (; s[i] && i < QUOTE_MAX; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out[o++] = (char)c;
    } else {
      snprintf(out + o, 5, "\\x%02x", c);
      o += 4;
    }
  }
  if (s[i]) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

/* Sets err to "'<text>' <what>; allowed: <forms>" and returns
 * INVALID_ARGUMENT. */
static velo_status fail(velo_error *err, const char *text, const char *what) {
  char q[QUOTE_MAX * 4 + 4];
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "'%s' %s; allowed: " VELO_SIZE_FORMS,
                        quote(text, q), what);
}

velo_status velo_size_parse(const char *text, velo_size *out, velo_error *err) {
  char what[QUOTE_MAX * 4 + 160], q[QUOTE_MAX * 4 + 4];
  if (!text) return velo_error_set(err, VELO_INVALID_ARGUMENT, "no size given; allowed: " VELO_SIZE_FORMS);
  const char *p = text;
  if (*p == '\0') return fail(err, text, "is empty");
  if (*p == '-') return fail(err, text, "is negative");
  if (!is_digit(*p)) return fail(err, text, "does not start with a digit (no sign, no space)");

  uint64_t v = 0;
  bool over = false;
  for (; is_digit(*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) over = true;
    else v = v * 10 + d;
  }
  if ((*p == '.' || *p == ',') && is_digit(p[1]))
    return fail(err, text, "has a fraction: sizes are whole numbers (1536MiB, not 1.5GiB)");
  if (*p == ' ' || *p == '\t') {
    const char *rest = p;
    while (*rest == ' ' || *rest == '\t') rest++;
    if (*rest == '\0') return fail(err, text, "ends with a space");
    return fail(err, text, "has a space before the unit: write the unit right after the number (512MiB)");
  }

  uint64_t mult = 0; /* 0: tokens */
  if (*p) {
    for (size_t i = 0; i < sizeof units / sizeof units[0] && !mult; i++)
      if (strcmp(p, units[i].name) == 0) mult = units[i].mult;
    for (size_t i = 0; i < sizeof units / sizeof units[0] && !mult; i++)
      if (strcasecmp(p, units[i].name) == 0) {
        snprintf(what, sizeof what, "has the unit '%s', which is written %s (units are case-sensitive)",
                 quote(p, q), units[i].name);
        return fail(err, text, what);
      }
    if (!mult) {
      snprintf(what, sizeof what, "has an unknown unit '%s'", quote(p, q));
      return fail(err, text, what);
    }
  }
  if (!over && v == 0)
    return fail(err, text, "is zero (leave the setting out for the default)");
  if (over || v > (uint64_t)INT64_MAX / (mult ? mult : 1)) {
    snprintf(what, sizeof what, "is too large: at most %lld %s", (long long)INT64_MAX,
             mult ? "bytes" : "tokens");
    return fail(err, text, what);
  }
  out->tokens = mult ? 0 : (int64_t)v;
  out->bytes = mult ? v * mult : 0;
  return VELO_OK;
}

const char *velo_size_format(const velo_size *size, char *buf, size_t buf_size) {
  if (!buf_size) return buf;
  if (size->tokens > 0)
    snprintf(buf, buf_size, "%lld tokens", (long long)size->tokens);
  else if (size->bytes > 0)
    snprintf(buf, buf_size, "%llu bytes", (unsigned long long)size->bytes);
  else
    snprintf(buf, buf_size, "size chosen by the task");
  return buf;
}
