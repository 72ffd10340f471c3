/*
 * test_textstream.c - unit tests of the streaming text helpers
 * (plugins/textgen/textstream.c): the UTF-8 assembler (characters split
 * across pieces, every kind of ill-formed input and its U+FFFD
 * replacement, flush, independence from how the bytes are chunked) and the
 * stop-string matcher (stop at the start, in the middle, across chunks,
 * overlapping candidates, stops that never complete, several stops,
 * against a brute-force reference on random text).
 *
 * Prints "textstream: N checks passed" and exits 0, or lists the failures
 * and exits 1.  (The shared data folder argument is accepted and unused.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "textstream.h"
#include "tokenizer.h" /* velo_utf8_validate */

#include "check.h"

#define FFFD "\xEF\xBF\xBD"

/* ---------------------------------------------------------------- */
/* UTF-8 assembler                                                    */
/* ---------------------------------------------------------------- */

/* Feeds in[0..len) in chunks of the given size (0: all at once), then
 * flushes; returns the total output in out. */
static size_t assemble(const char *in, size_t len, size_t chunk, char *out) {
  velo_utf8_stream s;
  velo_utf8_stream_init(&s);
  size_t o = 0;
  if (chunk == 0) chunk = len ? len : 1;
  for (size_t i = 0; i < len; i += chunk) {
    size_t n = len - i < chunk ? len - i : chunk;
    o += velo_utf8_stream_feed(&s, in + i, n, out + o);
  }
  o += velo_utf8_stream_flush(&s, out + o);
  return o;
}

static void expect_utf8(const char *in, size_t len, const char *want, size_t want_len,
                        const char *what) {
  char out[256];
  for (size_t chunk = 0; chunk <= 4; chunk++) {
    size_t n = assemble(in, len, chunk, out);
    CHECK(n == want_len && memcmp(out, want, n) == 0, "%s (chunks of %zu)", what, chunk);
  }
}
#define EXPECT_UTF8(in, want, what) expect_utf8(in, sizeof in - 1, want, sizeof want - 1, what)

static void test_utf8_basic(void) {
  char out[64];
  velo_utf8_stream s;
  velo_utf8_stream_init(&s);
  CHECK(velo_utf8_stream_feed(&s, "Hi", 2, out) == 2 && memcmp(out, "Hi", 2) == 0, "ASCII");
  CHECK(velo_utf8_stream_feed(&s, NULL, 0, out) == 0, "empty feed");

  /* 🦙 = F0 9F A6 99, one byte per token piece (byte fallback tokens). */
  const char llama[] = "\xF0\x9F\xA6\x99";
  CHECK(velo_utf8_stream_feed(&s, llama, 1, out) == 0, "lead byte held");
  CHECK(velo_utf8_stream_feed(&s, llama + 1, 1, out) == 0, "2 of 4 held");
  CHECK(velo_utf8_stream_feed(&s, llama + 2, 1, out) == 0, "3 of 4 held");
  CHECK(s.n_pending == 3, "3 bytes pending");
  size_t n = velo_utf8_stream_feed(&s, llama + 3, 1, out);
  CHECK(n == 4 && memcmp(out, llama, 4) == 0, "character released when complete");
  /* A piece that completes one character and starts the next. */
  n = velo_utf8_stream_feed(&s, "\xC3", 1, out);
  CHECK(n == 0, "é lead held");
  n = velo_utf8_stream_feed(&s, "\xA9 \xE4\xB8", 4, out);
  CHECK(n == 3 && memcmp(out, "\xC3\xA9 ", 3) == 0, "complete + new partial");
  n = velo_utf8_stream_flush(&s, out);
  CHECK(n == 3 && memcmp(out, FFFD, 3) == 0, "flush: dangling tail -> U+FFFD");
  CHECK(velo_utf8_stream_flush(&s, out) == 0, "flush when empty");
}

static void test_utf8_invalid(void) {
  EXPECT_UTF8("a\x80z", "a" FFFD "z", "lone continuation byte");
  EXPECT_UTF8("\x80\xBF", FFFD FFFD, "two continuation bytes: one U+FFFD each");
  EXPECT_UTF8("\xE2\x82" "A", FFFD "A", "truncated sequence then ASCII: one U+FFFD");
  EXPECT_UTF8("\xE2\x82\xE2\x82\xAC", FFFD "\xE2\x82\xAC", "truncated then a valid euro sign");
  EXPECT_UTF8("\xC0\xAF", FFFD FFFD, "overlong C0 AF");
  EXPECT_UTF8("\xC1\xBF", FFFD FFFD, "C1");
  EXPECT_UTF8("\xE0\x80\xAF", FFFD FFFD FFFD, "overlong E0 80 AF");
  EXPECT_UTF8("\xED\xA0\x80", FFFD FFFD FFFD, "surrogate ED A0 80");
  EXPECT_UTF8("\xF0\x80\x80\x80", FFFD FFFD FFFD FFFD, "overlong F0 80");
  EXPECT_UTF8("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD, "above U+10FFFF");
  EXPECT_UTF8("\xF5\xFF\xFE", FFFD FFFD FFFD, "F5, FF, FE");
  EXPECT_UTF8("\xF0\x9F\x98", FFFD, "truncated 4-byte at the end: one U+FFFD at flush");
  EXPECT_UTF8("\xF0\x9F\x98" "\xF0\x9F\x98\x81", FFFD "\xF0\x9F\x98\x81",
              "truncated 4-byte then a whole one");
  EXPECT_UTF8("\xED\x9F\xBF\xEE\x80\x80\xF4\x8F\xBF\xBF\xE0\xA0\x80\xF0\x90\x80\x80",
              "\xED\x9F\xBF\xEE\x80\x80\xF4\x8F\xBF\xBF\xE0\xA0\x80\xF0\x90\x80\x80",
              "boundary code points pass");
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}

static void test_utf8_fuzz(void) {
  static const unsigned char pool[] = {'a', ' ', 0x00, 0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2,
                                       0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0x82};
  char in[64], one[256], chunked[256];
  bool valid_out = true, same = true, bounded = true, lossless = true;
  for (int iter = 0; iter < 20000; iter++) {
    size_t len = rnd() % 40;
    for (size_t i = 0; i < len; i++) in[i] = (char)pool[rnd() % sizeof pool];
    size_t n1 = assemble(in, len, 0, one);
    /* Random chunk boundaries. */
    velo_utf8_stream s;
    velo_utf8_stream_init(&s);
    size_t n2 = 0;
    for (size_t i = 0; i < len;) {
      size_t c = 1 + rnd() % 5;
      if (c > len - i) c = len - i;
      size_t w = velo_utf8_stream_feed(&s, in + i, c, chunked + n2);
      bounded &= w <= VELO_UTF8_STREAM_OUT_MAX(c);
      valid_out &= velo_utf8_validate(chunked + n2, w) == w;
      n2 += w;
      i += c;
    }
    n2 += velo_utf8_stream_flush(&s, chunked + n2);
    same &= n1 == n2 && memcmp(one, chunked, n1) == 0;
    valid_out &= velo_utf8_validate(one, n1) == n1;
    if (velo_utf8_validate(in, len) == len) lossless &= n1 == len && memcmp(one, in, len) == 0;
  }
  CHECK(valid_out, "every chunk written is valid UTF-8");
  CHECK(same, "output does not depend on chunking");
  CHECK(bounded, "output within VELO_UTF8_STREAM_OUT_MAX");
  CHECK(lossless, "valid input comes out unchanged");
}

/* ---------------------------------------------------------------- */
/* Stop strings                                                       */
/* ---------------------------------------------------------------- */

typedef struct run_result {
  char text[1024];
  size_t len;
  bool stopped;
  int which;
} run_result;

/* Feeds the chunks (NULL-terminated) and finishes. */
static run_result run_stops(const char *const *stops, size_t n_stops, const char *const *chunks) {
  run_result r = {.len = 0};
  velo_stop_matcher *m = NULL;
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_stop_matcher_create(stops, NULL, n_stops, &m, &err);
  CHECK(st == VELO_OK, "create: %s", err.message);
  if (st != VELO_OK) return r;
  for (; *chunks; chunks++) {
    const char *out;
    size_t n;
    bool stopped;
    st = velo_stop_matcher_feed(m, *chunks, strlen(*chunks), &out, &n, &stopped, &err);
    CHECK(st == VELO_OK, "feed: %s", err.message);
    memcpy(r.text + r.len, out, n);
    r.len += n;
    r.stopped = stopped;
  }
  const char *out;
  size_t n;
  velo_stop_matcher_finish(m, &out, &n);
  memcpy(r.text + r.len, out, n);
  r.len += n;
  r.which = velo_stop_matcher_which(m);
  velo_stop_matcher_free(m);
  return r;
}

static void expect_stop(const char *const *stops, size_t n_stops, const char *const *chunks,
                        const char *want, bool want_stopped, int want_which, const char *what) {
  run_result r = run_stops(stops, n_stops, chunks);
  CHECK(r.len == strlen(want) && memcmp(r.text, want, r.len) == 0 && r.stopped == want_stopped &&
            r.which == want_which,
        "%s: got \"%.*s\" stopped %d which %d; want \"%s\" %d %d", what, (int)r.len, r.text,
        r.stopped, r.which, want, want_stopped, want_which);
}

#define LIST(...) ((const char *const[]){__VA_ARGS__})
#define NSTOPS(...) (sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))
#define STOPS(...) LIST(__VA_ARGS__), NSTOPS(__VA_ARGS__)

static void test_stop_cases(void) {
  expect_stop(STOPS("Hello"), LIST("Hello world", NULL), "", true, 0, "stop at the start");
  expect_stop(STOPS("STOP"), LIST("abc STOP def", NULL), "abc ", true, 0, "stop in the middle");
  expect_stop(STOPS("<|im_end|>"), LIST("Hi <", "|im", "_end|> bye", NULL), "Hi ", true, 0,
              "stop spanning chunks");
  expect_stop(STOPS("<|im_end|>"), LIST("H", "i", " ", "<", "|", "i", "m", "_", "e", "n", "d",
                                        "|", ">", "x", NULL),
              "Hi ", true, 0, "stop spanning many one-byte chunks");
  expect_stop(STOPS("ab"), LIST("aab", NULL), "a", true, 0, "overlap aab / ab, one chunk");
  expect_stop(STOPS("ab"), LIST("a", "a", "b", NULL), "a", true, 0, "overlap aab / ab, bytes");
  expect_stop(STOPS("abab"), LIST("aba", "bab", NULL), "", true, 0, "self-overlapping stop");
  expect_stop(STOPS("abac"), LIST("ab", "abac", NULL), "ab", true, 0, "restart inside a candidate");
  expect_stop(STOPS("STOP"), LIST("abc ST", NULL), "abc ST", false, -1,
              "never completes: released at the end");
  expect_stop(STOPS("STOP"), LIST("abc S", "T", "OX", NULL), "abc STOX", false, -1,
              "candidate broken off");
  expect_stop(STOPS("world", "lo"), LIST("hello world", NULL), "hel", true, 1,
              "several stops: the earliest wins");
  expect_stop(STOPS("bcd", "abcdef"), LIST("abcdef", NULL), "a", true, 0,
              "completed first wins over starting first");
  expect_stop(STOPS("bcd", "abcdef"), LIST("a", "b", "c", "d", "e", "f", NULL), "a", true, 0,
              "same result byte by byte");
  expect_stop(STOPS("cd", "bcd"), LIST("abcde", NULL), "a", true, 1,
              "same end: the longer one");
  expect_stop(STOPS("\xC3\xA9!"), LIST("caf\xC3\xA9", "! ok", NULL), "caf", true, 0,
              "multi-byte stop");
  expect_stop(STOPS("x"), LIST("", "", NULL), "", false, -1, "empty chunks");
  expect_stop(NULL, 0, LIST("pass ", "through", NULL), "pass through", false, -1, "no stops");
  expect_stop(STOPS("end"), LIST("the end", " and more", NULL), "the ", true, 0,
              "text after the stop is dropped");

  /* Held text is released as soon as it can no longer be a stop. */
  velo_stop_matcher *m = NULL;
  CHECK(velo_stop_matcher_create(LIST("<|end|>"), NULL, 1, &m, NULL) == VELO_OK, "create");
  const char *out;
  size_t n;
  bool stopped;
  velo_stop_matcher_feed(m, "a <|e", 5, &out, &n, &stopped, NULL);
  CHECK(n == 2 && memcmp(out, "a ", 2) == 0 && velo_stop_matcher_held(m) == 3 && !stopped,
        "holds the candidate \"<|e\"");
  velo_stop_matcher_feed(m, "x", 1, &out, &n, &stopped, NULL);
  CHECK(n == 4 && memcmp(out, "<|ex", 4) == 0 && velo_stop_matcher_held(m) == 0,
        "releases it when it breaks off");
  velo_stop_matcher_feed(m, "<|end|> tail", 12, &out, &n, &stopped, NULL);
  CHECK(n == 0 && stopped, "stops");
  velo_stop_matcher_feed(m, "more", 4, &out, &n, &stopped, NULL);
  CHECK(n == 0 && stopped, "nothing after the stop");
  velo_stop_matcher_finish(m, &out, &n);
  CHECK(n == 0, "finish after the stop releases nothing");
  velo_stop_matcher_free(m);

  /* Explicit lengths (a stop may contain NUL); empty stops rejected. */
  const char *st2[] = {"a\0b"};
  size_t lens[] = {3};
  CHECK(velo_stop_matcher_create(st2, lens, 1, &m, NULL) == VELO_OK, "create with lengths");
  velo_stop_matcher_feed(m, "xa\0by", 5, &out, &n, &stopped, NULL);
  CHECK(stopped && n == 1 && out[0] == 'x', "stop with NUL");
  velo_stop_matcher_free(m);
  velo_error err;
  velo_error_init(&err);
  m = (velo_stop_matcher *)&err;
  CHECK(velo_stop_matcher_create(LIST("ok", ""), NULL, 2, &m, &err) == VELO_INVALID_ARGUMENT &&
            strstr(err.message, "stop string 1 is empty") && m == (velo_stop_matcher *)&err,
        "empty stop string rejected: %s", err.message);
}

/* Brute-force reference: the stop completed first over the whole text. */
static size_t reference(const char *const *stops, size_t n_stops, const char *t, size_t len,
                        bool *stopped) {
  size_t best_end = SIZE_MAX, best_start = 0;
  for (size_t i = 0; i < n_stops; i++) {
    size_t l = strlen(stops[i]);
    for (size_t p = 0; p + l <= len; p++) {
      if (memcmp(t + p, stops[i], l) == 0) {
        if (p + l < best_end || (p + l == best_end && p < best_start)) {
          best_end = p + l;
          best_start = p;
        }
        break;
      }
    }
  }
  *stopped = best_end != SIZE_MAX;
  return *stopped ? best_start : len;
}

static void test_stop_fuzz(void) {
  bool ok = true;
  for (int iter = 0; iter < 5000 && ok; iter++) {
    char stop_buf[3][6];
    const char *stops[3];
    size_t n_stops = rnd() % 4;
    for (size_t i = 0; i < n_stops; i++) {
      size_t l = 1 + rnd() % 5;
      for (size_t k = 0; k < l; k++) stop_buf[i][k] = "abc"[rnd() % 3];
      stop_buf[i][l] = 0;
      stops[i] = stop_buf[i];
    }
    char text[64];
    size_t len = rnd() % 60;
    for (size_t k = 0; k < len; k++) text[k] = "abcd"[rnd() % 4];
    text[len] = 0;
    bool want_stopped;
    size_t want = reference(stops, n_stops, text, len, &want_stopped);

    velo_stop_matcher *m = NULL;
    if (velo_stop_matcher_create(stops, NULL, n_stops, &m, NULL) != VELO_OK) {
      ok = false;
      break;
    }
    char got[128];
    size_t n_got = 0;
    bool stopped = false;
    for (size_t i = 0; i < len;) {
      size_t c = rnd() % 6; /* chunks of 0..5 bytes */
      if (c > len - i) c = len - i;
      const char *out;
      size_t n;
      velo_stop_matcher_feed(m, text + i, c, &out, &n, &stopped, NULL);
      memcpy(got + n_got, out, n);
      n_got += n;
      i += c;
    }
    const char *out;
    size_t n;
    velo_stop_matcher_finish(m, &out, &n);
    memcpy(got + n_got, out, n);
    n_got += n;
    velo_stop_matcher_free(m);
    ok = n_got == want && memcmp(got, text, want) == 0 && stopped == want_stopped;
    if (!ok) {
      fprintf(stderr, "  text \"%s\" stops:", text);
      for (size_t i = 0; i < n_stops; i++) fprintf(stderr, " \"%s\"", stops[i]);
      fprintf(stderr, "\n  got \"%.*s\" (%d), want \"%.*s\" (%d)\n", (int)n_got, got, stopped,
              (int)want, text, want_stopped);
    }
  }
  CHECK(ok, "random text and stops in random chunks match the brute-force reference");
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  test_utf8_basic();
  test_utf8_invalid();
  test_utf8_fuzz();
  test_stop_cases();
  test_stop_fuzz();
  return check_summary("textstream");
}
