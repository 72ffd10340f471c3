/*
 * log.h - velod's logger: one line per event on stderr, with a level and a
 * source tag.  Thread-safe (one write per line).  This is what the host's
 * velo_host.log service calls.
 */
#ifndef VELO_CORE_LOG_H
#define VELO_CORE_LOG_H

#include <stdarg.h>

#include "velo/plugin.h"

/* Lines below this level are dropped (default VELO_LOG_INFO). */
void velo_log_set_level(velo_log_level level);
/* Logs one line: "velod <LEVEL> [source] message". Never fails. */
void velo_log(velo_log_level level, const char *source, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void velo_logv(velo_log_level level, const char *source, const char *fmt, va_list ap);

#endif
