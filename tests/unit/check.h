/*
 * check.h - the unit tests' one assertion macro and its counters.
 *
 * CHECK(cond, fmt, ...) counts a check; when cond is false it prints the
 * file, line, the condition and a formatted reason to stderr, counts a
 * failure and goes on (so one run reports every failure).  Each test
 * executable is one translation unit that includes this header once and
 * ends main() with `return check_summary("name");`.
 */
#ifndef VELO_TESTS_CHECK_H
#define VELO_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>

static long check_count, check_failed;

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    check_count++;                                                      \
    if (!(cond)) {                                                      \
      check_failed++;                                                   \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
      fprintf(stderr, __VA_ARGS__);                                     \
      fputc('\n', stderr);                                              \
    }                                                                   \
  } while (0)

/* A deterministic pseudo-random stream for test data: xorshift64*
 * (Vigna 2016).  A test sets check_rng_state to its own seed first. */
static uint64_t check_rng_state = 0x9e3779b97f4a7c15ull;

static inline uint64_t check_rnd(void) {
  check_rng_state ^= check_rng_state >> 12;
  check_rng_state ^= check_rng_state << 25;
  check_rng_state ^= check_rng_state >> 27;
  return check_rng_state * 0x2545f4914f6cdd1dull;
}

/* Prints "<name>: N passed, M failed" and returns the exit status. */
static inline int check_summary(const char *name) {
  printf("%s: %ld passed, %ld failed\n", name, check_count - check_failed, check_failed);
  return check_failed ? 1 : 0;
}

#endif
