/*
 * velo/status.h - the one status type of the Velo plugin ABI.
 *
 * Every function that can fail returns a velo_status and, where the caller
 * passes one, fills a velo_error with a message a person can act on.  The
 * numeric values are exactly the gRPC status codes (grpc/status.h, the
 * "Status codes and their use in gRPC" document), so the server maps a
 * plugin's status onto the wire without a table and nothing is lost.
 *
 * Thread-safety: everything here is pure or works on caller-owned memory.
 */
#ifndef VELO_STATUS_H
#define VELO_STATUS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X-macro: one source of truth for codes and their names (gRPC spelling). */
#define VELO_STATUS_MAP(XX)                 \
  XX(OK, 0)                                 \
  XX(CANCELLED, 1)                          \
  XX(UNKNOWN, 2)                            \
  XX(INVALID_ARGUMENT, 3)                   \
  XX(DEADLINE_EXCEEDED, 4)                  \
  XX(NOT_FOUND, 5)                          \
  XX(ALREADY_EXISTS, 6)                     \
  XX(PERMISSION_DENIED, 7)                  \
  XX(RESOURCE_EXHAUSTED, 8)                 \
  XX(FAILED_PRECONDITION, 9)                \
  XX(ABORTED, 10)                           \
  XX(OUT_OF_RANGE, 11)                      \
  XX(UNIMPLEMENTED, 12)                     \
  XX(INTERNAL, 13)                          \
  XX(UNAVAILABLE, 14)                       \
  XX(DATA_LOSS, 15)                         \
  XX(UNAUTHENTICATED, 16)

typedef enum velo_status {
#define VELO_STATUS_ENUM_(name, value) VELO_##name = value,
  VELO_STATUS_MAP(VELO_STATUS_ENUM_)
#undef VELO_STATUS_ENUM_
} velo_status;

/* Returns the gRPC name of a status ("INVALID_ARGUMENT"), or "UNKNOWN" for a
 * value outside the map.  The string is static; never free it. */
static inline const char *velo_status_name(velo_status s) {
  switch (s) {
#define VELO_STATUS_CASE_(name, value) \
  case VELO_##name:                    \
    return #name;
    VELO_STATUS_MAP(VELO_STATUS_CASE_)
#undef VELO_STATUS_CASE_
  }
  return "UNKNOWN";
}

#define VELO_ERROR_MESSAGE_MAX 512

/* An error report filled in by the callee.  The caller owns the struct (it
 * usually lives on the caller's stack) and sets struct_size.  A callee that
 * succeeds leaves it untouched; a callee that fails sets code and message.
 * A NULL velo_error * is allowed everywhere and means "don't tell me why". */
typedef struct velo_error {
  uint32_t struct_size; /* sizeof(velo_error) as the caller compiled it */
  velo_status code;
  char message[VELO_ERROR_MESSAGE_MAX]; /* NUL-terminated UTF-8 */
} velo_error;

/* Initialises an error report to OK with an empty message. */
static inline void velo_error_init(velo_error *err) {
  if (!err) return;
  err->struct_size = (uint32_t)sizeof(velo_error);
  err->code = VELO_OK;
  err->message[0] = '\0';
}

/* Sets code and a printf-formatted message (truncated to fit) and returns
 * code, so a failing function can end with `return velo_error_set(...)`.
 * err may be NULL. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline velo_status velo_error_set(velo_error *err, velo_status code,
                                         const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
  }
  return code;
}

#ifdef __cplusplus
}
#endif
#endif /* VELO_STATUS_H */
