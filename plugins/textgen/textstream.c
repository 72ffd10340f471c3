/*
 * textstream.c - the streaming UTF-8 assembler and the stop-string matcher
 * (contracts in textstream.h).
 *
 * The assembler is a byte-at-a-time validator after RFC 3629 / Unicode
 * table 3-7: the lead byte fixes the sequence length and the allowed range
 * of the second byte (A0..BF after E0, 80..9F after ED, 90..BF after F0,
 * 80..8F after F4, 80..BF otherwise); later bytes are 80..BF.  A byte that
 * does not fit ends the pending sequence, which becomes one U+FFFD, and is
 * then looked at again as the start of a new sequence.
 *
 * The matcher keeps the text it holds back at the end of one buffer; each
 * feed moves it to the front, appends the new text, looks for the earliest
 * completed stop string, and otherwise computes how much of the tail to
 * hold back.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "textstream.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* UTF-8 assembler                                                      */
/* ------------------------------------------------------------------ */

static const char REPLACEMENT[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* Sequence length for a lead byte, 0 if c cannot start a sequence. */
static unsigned seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

/* Whether c may follow the pending bytes p[0..n) (1 <= n < seq_len). */
static bool may_continue(const unsigned char *p, unsigned n, unsigned char c) {
  unsigned char lo = 0x80, hi = 0xBF;
  if (n == 1) {
    switch (p[0]) {
      case 0xE0: lo = 0xA0; break;
      case 0xED: hi = 0x9F; break;
      case 0xF0: lo = 0x90; break;
      case 0xF4: hi = 0x8F; break;
      default: break;
    }
  }
  return c >= lo && c <= hi;
}

void velo_utf8_stream_init(velo_utf8_stream *s) {
  memset(s, 0, sizeof *s);
}

size_t velo_utf8_stream_feed(velo_utf8_stream *s, const char *in, size_t len, char *out) {
  size_t o = 0;
  const unsigned char *b = (const unsigned char *)in;
  for (size_t i = 0; i < len;) {
    unsigned char c = b[i];
    if (s->n_pending == 0) {
      unsigned n = seq_len(c);
      if (n == 1) {
        out[o++] = (char)c;
      } else if (n == 0) {
        memcpy(out + o, REPLACEMENT, 3);
        o += 3;
      } else {
        s->pending[0] = c;
        s->n_pending = 1;
      }
      i++;
      continue;
    }
    if (!may_continue(s->pending, s->n_pending, c)) {
      /* The pending bytes can never complete: one U+FFFD, and c is looked
       * at again as a possible lead byte. */
      memcpy(out + o, REPLACEMENT, 3);
      o += 3;
      s->n_pending = 0;
      continue;
    }
    s->pending[s->n_pending++] = c;
    i++;
    if (s->n_pending == seq_len(s->pending[0])) {
      memcpy(out + o, s->pending, s->n_pending);
      o += s->n_pending;
      s->n_pending = 0;
    }
  }
  return o;
}

size_t velo_utf8_stream_flush(velo_utf8_stream *s, char *out) {
  if (s->n_pending == 0) return 0;
  s->n_pending = 0;
  memcpy(out, REPLACEMENT, 3);
  return 3;
}

/* ------------------------------------------------------------------ */
/* Stop strings                                                         */
/* ------------------------------------------------------------------ */

struct velo_stop_matcher {
  size_t n_stops;
  char **stops;
  size_t *lens;
  char *buf; /* released text of the last call, then the held text */
  size_t cap;
  size_t hold_off, held; /* the held text is buf[hold_off .. hold_off+held) */
  bool stopped;
  int which;
};

velo_status velo_stop_matcher_create(const char *const *stops, const size_t *lens,
                                     size_t n_stops, velo_stop_matcher **out, velo_error *err) {
  if (!out || (n_stops && !stops))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "stop strings: NULL argument");
  for (size_t i = 0; i < n_stops; i++) {
    if (!stops[i] || (lens ? lens[i] : strlen(stops[i])) == 0)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "stop string %zu is empty", i);
  }
  velo_stop_matcher *m = calloc(1, sizeof *m);
  if (!m) goto oom;
  m->which = -1;
  if (n_stops) {
    m->stops = calloc(n_stops, sizeof *m->stops);
    m->lens = calloc(n_stops, sizeof *m->lens);
    if (!m->stops || !m->lens) goto oom;
  }
  m->n_stops = n_stops;
  for (size_t i = 0; i < n_stops; i++) {
    size_t l = lens ? lens[i] : strlen(stops[i]);
    m->stops[i] = malloc(l);
    if (!m->stops[i]) goto oom;
    memcpy(m->stops[i], stops[i], l);
    m->lens[i] = l;
  }
  *out = m;
  return VELO_OK;
oom:
  velo_stop_matcher_free(m);
  return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "stop strings: out of memory");
}

void velo_stop_matcher_free(velo_stop_matcher *m) {
  if (!m) return;
  for (size_t i = 0; m->stops && i < m->n_stops; i++) free(m->stops[i]);
  free(m->stops);
  free(m->lens);
  free(m->buf);
  free(m);
}

/* Length of the longest suffix of t[0..n) that is a proper prefix of some
 * stop string. */
static size_t hold_length(const velo_stop_matcher *m, const char *t, size_t n) {
  size_t best = 0;
  for (size_t i = 0; i < m->n_stops; i++) {
    size_t k = m->lens[i] - 1;
    if (k > n) k = n;
    for (; k > best; k--) {
      if (memcmp(t + n - k, m->stops[i], k) == 0) {
        best = k;
        break;
      }
    }
  }
  return best;
}

velo_status velo_stop_matcher_feed(velo_stop_matcher *m, const char *text, size_t len,
                                   const char **out, size_t *out_len, bool *stopped,
                                   velo_error *err) {
  *out = m->buf ? m->buf : "";
  *out_len = 0;
  *stopped = m->stopped;
  if (m->stopped) return VELO_OK;

  /* Held text to the front, new text after it. */
  size_t n = m->held + len;
  if (n > m->cap) {
    size_t cap = m->cap ? m->cap : 256;
    while (cap < n) cap *= 2;
    char *b = realloc(m->buf, cap);
    if (!b) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "stop strings: out of memory");
    m->buf = b;
    m->cap = cap;
    *out = b;
  }
  if (m->hold_off) memmove(m->buf, m->buf + m->hold_off, m->held);
  if (len) memcpy(m->buf + m->held, text, len);
  m->hold_off = 0;
  m->held = n;

  /* The stop string completed first. */
  size_t best_end = SIZE_MAX, best_start = 0;
  for (size_t i = 0; i < m->n_stops; i++) {
    if (m->lens[i] > n) continue;
    const char *p = memmem(m->buf, n, m->stops[i], m->lens[i]);
    if (!p) continue;
    size_t start = (size_t)(p - m->buf), end = start + m->lens[i];
    if (end < best_end || (end == best_end && start < best_start)) {
      best_end = end;
      best_start = start;
      m->which = (int)i;
    }
  }
  if (best_end != SIZE_MAX) {
    m->stopped = true;
    m->held = 0;
    *out = m->buf; /* not NULL: a match means n > 0 */
    *out_len = best_start;
    *stopped = true;
    return VELO_OK;
  }

  size_t hold = hold_length(m, m->buf, n);
  m->hold_off = n - hold;
  m->held = hold;
  *out = m->buf ? m->buf : "";
  *out_len = n - hold;
  return VELO_OK;
}

void velo_stop_matcher_finish(velo_stop_matcher *m, const char **out, size_t *out_len) {
  *out = m->buf ? m->buf + m->hold_off : "";
  *out_len = m->stopped ? 0 : m->held;
  m->hold_off += m->held;
  m->held = 0;
}

int velo_stop_matcher_which(const velo_stop_matcher *m) { return m->which; }

size_t velo_stop_matcher_held(const velo_stop_matcher *m) { return m->held; }
