/*
 * test_size.c - unit tests of the KV cache size parser (core/size.c), the
 * one parser behind velod's --kv-cache-size and the repository's
 * kv_cache_size: every accepted form (tokens, each unit), the boundaries
 * (1, INT64_MAX, the largest value of each unit), and every error form with
 * the words its message must carry (the quoted value, what is wrong, the
 * allowed forms); an error leaves the output untouched.
 *
 * Usage: test_size (no arguments).
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "size.h"

/* Parses text and checks it gives tokens / bytes. */
static void good(const char *text, int64_t tokens, uint64_t bytes) {
  velo_size s = {-1, 1};
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_size_parse(text, &s, &err);
  CHECK(st == VELO_OK, "'%s': %s %s", text, velo_status_name(st), err.message);
  CHECK(s.tokens == tokens && s.bytes == bytes, "'%s': %lld tokens, %llu bytes; want %lld, %llu", text,
        (long long)s.tokens, (unsigned long long)s.bytes, (long long)tokens, (unsigned long long)bytes);
}

/* Parses text and checks it fails with INVALID_ARGUMENT, a message that
 * holds want, quotes the value and lists the allowed forms, and *out
 * untouched. */
static void bad(const char *text, const char *want) {
  velo_size s = {-7, 7};
  velo_error err;
  velo_error_init(&err);
  velo_status st = velo_size_parse(text, &s, &err);
  CHECK(st == VELO_INVALID_ARGUMENT && err.code == VELO_INVALID_ARGUMENT, "'%s': %s", text,
        velo_status_name(st));
  CHECK(strstr(err.message, want) != NULL, "'%s': message '%s' lacks '%s'", text, err.message, want);
  CHECK(strstr(err.message, "allowed: " VELO_SIZE_FORMS) != NULL, "'%s': no allowed forms in '%s'", text,
        err.message);
  char quoted[128];
  snprintf(quoted, sizeof quoted, "'%.60s", text);
  bool plain = strlen(text) <= 60; /* printable ASCII is quoted as is */
  for (const char *p = text; *p; p++) plain = plain && *p >= 0x20 && *p < 0x7f && *p != '\\';
  if (plain)
    CHECK(strstr(err.message, quoted) != NULL, "'%s': value not quoted in '%s'", text, err.message);
  CHECK(s.tokens == -7 && s.bytes == 7, "'%s': output changed on error", text);
}

static void test_accepted(void) {
  good("1", 1, 0);
  good("4096", 4096, 0);
  good("0042", 42, 0); /* decimal, never octal */
  good("9223372036854775807", INT64_MAX, 0);
  good("1B", 0, 1);
  good("4096B", 0, 4096);
  good("1KB", 0, 1000);
  good("1MB", 0, 1000000);
  good("2GB", 0, 2000000000ull);
  good("3TB", 0, 3000000000000ull);
  good("1KiB", 0, 1024);
  good("512MiB", 0, 512ull << 20);
  good("1GiB", 0, 1ull << 30);
  good("2TiB", 0, 2ull << 40);
  /* The largest value of each unit that fits INT64_MAX bytes. */
  good("9223372036854775807B", 0, (uint64_t)INT64_MAX);
  good("9223372036854775KB", 0, 9223372036854775000ull);
  good("9223372036854MB", 0, 9223372036854000000ull);
  good("9223372036GB", 0, 9223372036000000000ull);
  good("9223372TB", 0, 9223372000000000000ull);
  good("9007199254740991KiB", 0, 9007199254740991ull << 10);
  good("8796093022207MiB", 0, 8796093022207ull << 20);
  good("8589934591GiB", 0, 8589934591ull << 30);
  good("8388607TiB", 0, 8388607ull << 40);
}

static void test_errors(void) {
  velo_size s = {-7, 7};
  velo_error err;
  velo_error_init(&err);
  CHECK(velo_size_parse(NULL, &s, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "no size given") &&
            s.tokens == -7,
        "NULL: %s", err.message);
  CHECK(velo_size_parse("0", &s, NULL) == VELO_INVALID_ARGUMENT, "NULL err is allowed");

  bad("", "'' is empty");
  bad("0", "'0' is zero");
  bad("000", "is zero");
  bad("0B", "'0B' is zero");
  bad("0GiB", "is zero");
  bad("-1", "'-1' is negative");
  bad("-4096", "is negative");
  bad("-1MiB", "is negative");
  bad("+5", "does not start with a digit");
  bad(" 5", "does not start with a digit");
  bad("MiB", "does not start with a digit");
  bad("abc", "does not start with a digit");
  bad("1.5GiB", "has a fraction");
  bad("1.5", "has a fraction");
  bad("1,5GB", "has a fraction");
  bad("4096.0", "has a fraction");
  bad("512 MiB", "has a space before the unit");
  bad("512\tMiB", "has a space before the unit");
  bad("512 ", "ends with a space");
  bad("512MiB ", "unknown unit 'MiB '");
  bad("512mib", "the unit 'mib', which is written MiB");
  bad("512MIB", "which is written MiB");
  bad("1kb", "which is written KB");
  bad("1b", "which is written B");
  bad("1Kb", "which is written KB");
  bad("1gib", "which is written GiB");
  bad("512XB", "unknown unit 'XB'");
  bad("1PB", "unknown unit 'PB'");
  bad("1PiB", "unknown unit 'PiB'");
  bad("1K", "unknown unit 'K'");
  bad("1M", "unknown unit 'M'");
  bad("1KiBB", "unknown unit 'KiBB'");
  bad("1e6", "unknown unit 'e6'");
  bad("0x10", "unknown unit 'x10'");
  bad("1.", "unknown unit '.'");
  bad("12tokens", "unknown unit 'tokens'");
  bad("1\xc2\xa0MiB", "unknown unit '\\xc2\\xa0MiB'"); /* a no-break space: escaped in the message */
  /* Overflow: tokens, the digits alone, and each unit one step past its largest. */
  bad("9223372036854775808", "is too large: at most 9223372036854775807 tokens");
  bad("18446744073709551615", "is too large");
  bad("18446744073709551616", "is too large");
  bad("99999999999999999999999999999999", "is too large");
  bad("9223372036854775808B", "is too large: at most 9223372036854775807 bytes");
  bad("9223372036854776KB", "is too large");
  bad("9223372036855MB", "is too large");
  bad("9223372037GB", "is too large");
  bad("9223373TB", "is too large");
  bad("9007199254740992KiB", "is too large");
  bad("8796093022208MiB", "is too large");
  bad("8589934592GiB", "is too large");
  bad("8388608TiB", "is too large");
  bad("99999999999999999999999GiB", "is too large");

  /* A long value is quoted cut to 64 bytes with "...". */
  char longv[200];
  memset(longv, '7', sizeof longv - 1);
  longv[sizeof longv - 1] = '\0';
  velo_error_init(&err);
  CHECK(velo_size_parse(longv, &s, &err) == VELO_INVALID_ARGUMENT && strstr(err.message, "7777...'") &&
            strlen(err.message) < VELO_ERROR_MESSAGE_MAX - 1,
        "long value: %s", err.message);
}

static void test_format(void) {
  char buf[64];
  velo_size t = {.tokens = 4096}, b = {.bytes = 512ull << 20}, none = {0, 0};
  CHECK(strcmp(velo_size_format(&t, buf, sizeof buf), "4096 tokens") == 0, "%s", buf);
  CHECK(strcmp(velo_size_format(&b, buf, sizeof buf), "536870912 bytes") == 0, "%s", buf);
  CHECK(strcmp(velo_size_format(&none, buf, sizeof buf), "size chosen by the task") == 0, "%s", buf);
  char tiny[4];
  velo_size_format(&t, tiny, sizeof tiny);
  CHECK(strcmp(tiny, "409") == 0, "cut: %s", tiny);
}

int main(void) {
  test_accepted();
  test_errors();
  test_format();
  return check_summary("size");
}
