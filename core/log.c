/*
 * log.c - velod's logger: one line per event on stderr.
 *
 * Each line is formatted in full and written with a single write(2), so
 * lines from different threads never interleave.
 */
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = VELO_LOG_INFO;

void velo_log_set_level(velo_log_level level) { atomic_store(&log_level, (int)level); }

static const char *level_name(velo_log_level level) {
  switch (level) {
    case VELO_LOG_DEBUG: return "DEBUG";
    case VELO_LOG_INFO: return "INFO";
    case VELO_LOG_WARN: return "WARN";
    case VELO_LOG_ERROR: return "ERROR";
  }
  return "?";
}

void velo_logv(velo_log_level level, const char *source, const char *fmt, va_list ap) {
  if ((int)level < atomic_load(&log_level)) return;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %-5s [%s] ", tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, level_name(level), source ? source : "velo");
  if (n < 0) return;
  if ((size_t)n < sizeof line) {
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m > 0) n += m;
  }
  if ((size_t)n >= sizeof line - 1) n = (int)sizeof line - 2;
  while (n > 0 && line[n - 1] == '\n') n--;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}

void velo_log(velo_log_level level, const char *source, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  velo_logv(level, source, fmt, ap);
  va_end(ap);
}
