/*
 * textstream.h - turning a stream of token pieces into text a client can be
 * sent: a UTF-8 assembler that only ever releases whole, valid characters,
 * and a stop-string matcher that holds back text that may still turn out to
 * be the start of a stop string.
 *
 * Typical use for one sequence, each generated token:
 *   piece = velo_tokenizer_piece(tok, id, false, &n);
 *   m = velo_utf8_stream_feed(&u8, piece, n, buf);        valid UTF-8 only
 *   velo_stop_matcher_feed(stop, buf, m, &out, &out_len, &stopped, err);
 *   send out[0..out_len); if stopped, end the sequence.
 * and at the end (length limit, EOG): velo_utf8_stream_flush, feed that,
 * then velo_stop_matcher_finish and send what it releases.
 *
 * Thread-safety: each object belongs to one sequence; calls on one object
 * must not overlap.
 */
#ifndef VELO_TEXTGEN_TEXTSTREAM_H
#define VELO_TEXTGEN_TEXTSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* UTF-8 assembler                                                      */
/* ------------------------------------------------------------------ */

/* Holds at most 3 bytes of an incomplete character between feeds.  A plain
 * struct: no allocation, no cleanup; zero-initialised (or
 * velo_utf8_stream_init) means empty. */
typedef struct velo_utf8_stream {
  unsigned char pending[4];
  uint8_t n_pending;
} velo_utf8_stream;

/* Bytes of output buffer that one feed of len input bytes may need. */
#define VELO_UTF8_STREAM_OUT_MAX(len) (3 * ((size_t)(len) + 3))

/* Empties the assembler.  Never fails. */
void velo_utf8_stream_init(velo_utf8_stream *s);

/* Appends in[0..len) to the pending bytes and writes to out the longest
 * prefix that is made of complete characters; an incomplete character at
 * the end (at most 3 bytes that can still become valid) is kept for the
 * next feed.  Bytes that can never be part of a valid character are
 * replaced, each maximal ill-formed subsequence by one U+FFFD (EF BF BD),
 * the "best practice" of Unicode 15 section 3.9 / the WHATWG decoder: a
 * stray continuation byte, C0, C1, F5..FF, a truncated sequence followed by
 * a byte that cannot continue it, an overlong or surrogate prefix (E0 80,
 * ED A0, F0 80, F4 90).  So everything written is valid UTF-8 and nothing
 * valid is ever lost or reordered.
 * out must have room for VELO_UTF8_STREAM_OUT_MAX(len) bytes.  Returns the
 * number of bytes written (0 is common: a lone lead byte).  in may be NULL
 * when len is 0.  Never fails. */
size_t velo_utf8_stream_feed(velo_utf8_stream *s, const char *in, size_t len, char *out);

/* Ends the stream: a dangling incomplete character becomes one U+FFFD,
 * written to out (room for 3 bytes); the assembler is then empty.  Returns
 * the bytes written (0 or 3). */
size_t velo_utf8_stream_flush(velo_utf8_stream *s, char *out);

/* ------------------------------------------------------------------ */
/* Stop strings                                                         */
/* ------------------------------------------------------------------ */

typedef struct velo_stop_matcher velo_stop_matcher;

/* Creates a matcher for stops[0..n_stops), each lens[i] bytes long (lens may
 * be NULL when every stop is NUL-terminated).  The strings are copied.
 * n_stops may be 0: the matcher then passes text straight through.
 * Errors: INVALID_ARGUMENT for an empty stop string (the message gives its
 * index) or NULL arguments, RESOURCE_EXHAUSTED if memory runs out.  On
 * success *out is owned by the caller (velo_stop_matcher_free). */
velo_status velo_stop_matcher_create(const char *const *stops, const size_t *lens,
                                     size_t n_stops, velo_stop_matcher **out, velo_error *err);

/* Frees the matcher; NULL is a no-op. */
void velo_stop_matcher_free(velo_stop_matcher *m);

/* Feeds the next text[0..len) of the output (valid UTF-8 in whole
 * characters, as velo_utf8_stream_feed writes it; len may be 0).
 *
 * *out / *out_len receive the text that can now be released: everything up
 * to the longest suffix of the text so far that is a proper prefix of some
 * stop string, which is held back.  When a stop string occurs, *stopped is
 * set, the text before it is released, and the stop string and everything
 * after it are dropped; later feeds release nothing.  The stop string that
 * is completed first wins (it ends earliest; of two ending at the same
 * byte, the longer), so the result does not depend on how the text is cut
 * into chunks.  Released text is always whole UTF-8 characters.
 *
 * *out points into the matcher's buffer and stays valid until the next
 * call on the matcher.  Returns OK, or RESOURCE_EXHAUSTED if memory runs
 * out (nothing is consumed then; *out_len is 0).  Cost: O(len + held) per
 * stop string, plus O(L^2) for the hold-back check with L the longest stop. */
velo_status velo_stop_matcher_feed(velo_stop_matcher *m, const char *text, size_t len,
                                   const char **out, size_t *out_len, bool *stopped,
                                   velo_error *err);

/* Ends the text: releases the held-back text (a stop string that never
 * completed is ordinary text), or nothing if a stop string was found.
 * *out valid until the next call on the matcher.  Never fails. */
void velo_stop_matcher_finish(velo_stop_matcher *m, const char **out, size_t *out_len);

/* Index of the stop string that matched, or -1 if none has. */
int velo_stop_matcher_which(const velo_stop_matcher *m);

/* Bytes currently held back. */
size_t velo_stop_matcher_held(const velo_stop_matcher *m);

#ifdef __cplusplus
}
#endif
#endif /* VELO_TEXTGEN_TEXTSTREAM_H */
