/*
 * core/log.h — one line per event on stderr:
 *   2026-11-25T09:00:00.123Z INFO  [s0] listening on 127.0.0.1:8100 (tcp/binary)
 * Levels filter with pl_log_set_level. Never log passwords or tokens.
 */
#ifndef PL_CORE_LOG_H
#define PL_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <parley/common.h>

void pl_log_set_level(int level);
int pl_log_get_level(void);
/* Nothing at all is written (tests whose faults make every error expected). */
void pl_log_set_quiet(bool quiet);
void pl_log_set_tag(const char *tag); /* e.g. "s0"; copied */
int pl_log_level_parse(const char *s); /* -1 if unknown */
void pl_log(int level, const char *fmt, ...) PL_PRINTF(2, 3);
void pl_logv(int level, const char *fmt, va_list ap);
/* Adapter matching the host structs' log member (ud unused). */
void pl_log_host(void *ud, int level, const char *fmt, ...) PL_PRINTF(3, 4);

#endif
