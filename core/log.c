/*
 * core/log.c — one line per event on stderr (see log.h).
 *
 * Workers and the event loop both log, so each line is formatted into a
 * local buffer first and written with a single write(2) under a mutex: lines
 * never interleave, and a slow stderr (a pipe to a full log collector) only
 * ever blocks the thread that logs, never corrupts the output.
 *
 * Control characters in a message are replaced by '?' so one event stays one
 * line even when a message quotes something a client sent.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define PL_LOG_LINE_MAX 2048
#define PL_LOG_TAG_MAX 32

static atomic_int log_level = PL_LOG_INFO;
static atomic_bool log_quiet = false;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_tag[PL_LOG_TAG_MAX] = "";

static const char *const level_names[] = { "ERROR", "WARN ", "INFO ", "DEBUG" };

void pl_log_set_level(int level)
{
    if (level < PL_LOG_ERROR)
        level = PL_LOG_ERROR;
    if (level > PL_LOG_DEBUG)
        level = PL_LOG_DEBUG;
    atomic_store(&log_level, level);
}

int pl_log_get_level(void)
{
    return atomic_load(&log_level);
}

void pl_log_set_tag(const char *tag)
{
    pthread_mutex_lock(&log_mu);
    if (tag)
        snprintf(log_tag, sizeof log_tag, "%s", tag);
    else
        log_tag[0] = '\0';
    pthread_mutex_unlock(&log_mu);
}

int pl_log_level_parse(const char *s)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    if (!s)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return PL_LOG_WARN;
    return -1;
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a logging failure */
        }
        buf += w;
        len -= (size_t)w;
    }
}

void pl_log_set_quiet(bool quiet)
{
    atomic_store(&log_quiet, quiet);
}

void pl_logv(int level, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_level) || atomic_load(&log_quiet))
        return;
    if (level < PL_LOG_ERROR)
        level = PL_LOG_ERROR;
    if (level > PL_LOG_DEBUG)
        level = PL_LOG_DEBUG;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);

    char line[PL_LOG_LINE_MAX];
    size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);

    pthread_mutex_lock(&log_mu);
    int h;
    if (log_tag[0])
        h = snprintf(line + n, sizeof line - n, ".%03ldZ %s [%s] ",
                     ts.tv_nsec / 1000000L, level_names[level], log_tag);
    else
        h = snprintf(line + n, sizeof line - n, ".%03ldZ %s ",
                     ts.tv_nsec / 1000000L, level_names[level]);
    if (h > 0)
        n += (size_t)h;
    if (n > sizeof line - 2)
        n = sizeof line - 2;

    size_t start = n;
    int m = vsnprintf(line + n, sizeof line - 1 - n, fmt, ap);
    if (m > 0) {
        size_t room = sizeof line - 1 - n - 1;
        n += (size_t)m < room ? (size_t)m : room;
    }
    /* A trailing newline added out of habit is not part of the message. */
    while (n > start && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    for (size_t i = start; i < n; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c < 0x20 || c == 0x7f)
            line[i] = '?';
    }
    line[n++] = '\n';
    write_all(line, n);
    pthread_mutex_unlock(&log_mu);
}

void pl_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pl_logv(level, fmt, ap);
    va_end(ap);
}

void pl_log_host(void *ud, int level, const char *fmt, ...)
{
    (void)ud;
    va_list ap;
    va_start(ap, fmt);
    pl_logv(level, fmt, ap);
    va_end(ap);
}
