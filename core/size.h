/*
 * size.h - the one parser of KV cache sizes, shared by velod's
 * --kv-cache-size option and the repository's config.json key
 * kv_cache_size, so both accept exactly the same forms:
 *
 *   4096       a plain decimal integer: token slots
 *   512MiB     an integer directly followed by a unit: bytes
 *
 * Units (case as written, no space between number and unit):
 *   B                      bytes
 *   KB, MB, GB, TB         powers of 1000 (SI)
 *   KiB, MiB, GiB, TiB     powers of 1024 (IEC)
 *
 * The value must be at least 1 (token or byte) and at most INT64_MAX
 * (tokens, or bytes after the unit is applied).  Everything else is an
 * error: an empty string, a sign or leading space, a fraction, a space
 * before the unit, an unknown or wrongly cased unit, 0, an overflow.
 *
 * Thread-safety: pure functions of their arguments.
 */
#ifndef VELO_CORE_SIZE_H
#define VELO_CORE_SIZE_H

#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"

/* A parsed size: exactly one of the two members is non-zero. */
typedef struct velo_size {
  int64_t tokens; /* token slots (a plain integer), or 0 */
  uint64_t bytes; /* bytes (an integer with a unit), or 0 */
} velo_size;

/* What the parser accepts, for usage texts and error messages. */
#define VELO_SIZE_FORMS                                                                \
  "a token count >= 1 (e.g. 4096), or bytes: a whole number directly followed by B, KB, " \
  "MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 512MiB"

/* Parses text (NUL-terminated) into *out.  On error *out is untouched
 * and err (may be NULL) gets INVALID_ARGUMENT with a message that quotes
 * the value (at most 64 bytes of it), says what is wrong and lists the
 * allowed forms, e.g. "'1.5GiB' has a fraction: ...; allowed: ...".
 * The caller puts the option or key name in front.  Never allocates. */
velo_status velo_size_parse(const char *text, velo_size *out, velo_error *err);

/* Writes size for a log line ("4096 tokens", "536870912 bytes") into buf
 * (always NUL-terminated when buf_size > 0); "size chosen by the task"
 * when both members are 0.  Returns buf. */
const char *velo_size_format(const velo_size *size, char *buf, size_t buf_size);

#endif /* VELO_CORE_SIZE_H */
