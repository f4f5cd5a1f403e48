/*
 * parley/common.h — what every part of parley shares: the error enum, the
 * string view, log levels and the user-facing limits.
 *
 * This header is part of the plugin ABI (installed with store.h and
 * transport.h). It depends on nothing but the C standard library, so a
 * plugin built out of tree needs only these headers.
 *
 * Rules that hold across the ABI:
 *  - Every function that can fail returns an int from enum pl_err: PL_OK (0)
 *    on success, a positive PL_ERR_* otherwise. Numbers are stable forever:
 *    they travel on the wire. New codes are only appended.
 *  - Strings crossing the ABI are pl_str views (pointer + length), never
 *    assumed NUL-terminated, because they usually point into network or
 *    database buffers. Who owns the bytes is said where each one is used.
 */
#ifndef PARLEY_COMMON_H
#define PARLEY_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PARLEY_VERSION "0.1.0"

#if defined(__GNUC__)
#define PL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define PL_EXPORT __attribute__((visibility("default")))
#else
#define PL_PRINTF(a, b)
#define PL_EXPORT
#endif

/* A borrowed string: ptr may be NULL when len is 0. Not NUL-terminated. */
typedef struct pl_str {
    const char *ptr;
    uint32_t len;
} pl_str;

static inline pl_str pl_str_c(const char *s)
{
    pl_str r = { s, s ? (uint32_t)strlen(s) : 0 };
    return r;
}

static inline int pl_str_eq(pl_str a, pl_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* Error codes. Stable numbers: they appear on every wire format. */
enum pl_err {
    PL_OK = 0,
    PL_ERR_INTERNAL = 1,          /* a bug or an impossible state */
    PL_ERR_NOMEM = 2,
    PL_ERR_IO = 3,                /* disk or socket error */
    PL_ERR_CORRUPT = 4,           /* stored data failed its checks */
    PL_ERR_NOT_FOUND = 5,         /* store lookups: no such row */
    PL_ERR_INVALID = 6,           /* a malformed argument not covered below */
    PL_ERR_MALFORMED = 7,         /* a frame that does not decode */
    PL_ERR_FRAME_TOO_LARGE = 8,   /* frame over max_frame */
    PL_ERR_UNSUPPORTED = 9,       /* unknown method / feature */
    PL_ERR_USERNAME = 10,         /* username not 1-32 chars of [A-Za-z0-9_.-] */
    PL_ERR_PASSWORD = 11,         /* password not 8-1024 bytes */
    PL_ERR_USER_EXISTS = 12,
    PL_ERR_NO_SUCH_USER = 13,     /* unknown recipient / peer */
    PL_ERR_AUTH = 14,             /* wrong username or password (generic) */
    PL_ERR_NOT_LOGGED_IN = 15,    /* missing, revoked or unknown session token */
    PL_ERR_BODY = 16,             /* body empty, over 64 KiB, or not UTF-8 */
    PL_ERR_PATTERN = 17,          /* list_users pattern too long or bad chars */
    PL_ERR_PAGE = 18,             /* limit/offset/n out of range */
    PL_ERR_TOO_MANY_IDS = 19,     /* ack/delete with more ids than allowed */
    PL_ERR_NO_SUCH_MESSAGE = 20,  /* an id the caller cannot see */
    PL_ERR_STALE_REQUEST = 21,    /* request_no older than the client table's */
    PL_ERR_RATE_LIMITED = 22,
    PL_ERR_NOT_PRIMARY = 23,      /* this server is a backup: see leader */
    PL_ERR_UNAVAILABLE = 24,      /* no quorum / shutting down: retry */
    PL_ERR_TIMEOUT = 25,
    PL_ERR_AGAIN = 26,            /* decoders: need more bytes */
    PL_ERR_CONFIG = 27,
    PL_ERR_PLUGIN = 28,           /* plugin load / ABI failure */
    PL_ERR_BUSY = 29,             /* too many concurrent requests of a kind */
    PL_ERR__COUNT
};

static inline const char *pl_strerror(int err)
{
    switch (err) {
    case PL_OK: return "ok";
    case PL_ERR_INTERNAL: return "internal error";
    case PL_ERR_NOMEM: return "out of memory";
    case PL_ERR_IO: return "I/O error";
    case PL_ERR_CORRUPT: return "stored data is corrupt";
    case PL_ERR_NOT_FOUND: return "not found";
    case PL_ERR_INVALID: return "invalid argument";
    case PL_ERR_MALFORMED: return "malformed frame";
    case PL_ERR_FRAME_TOO_LARGE: return "frame exceeds max_frame";
    case PL_ERR_UNSUPPORTED: return "unsupported method";
    case PL_ERR_USERNAME: return "username must be 1-32 characters of A-Z a-z 0-9 _ . -";
    case PL_ERR_PASSWORD: return "password must be 8-1024 bytes";
    case PL_ERR_USER_EXISTS: return "username already taken";
    case PL_ERR_NO_SUCH_USER: return "no such user";
    case PL_ERR_AUTH: return "wrong username or password";
    case PL_ERR_NOT_LOGGED_IN: return "not logged in";
    case PL_ERR_BODY: return "message body must be 1 byte to 64 KiB of UTF-8";
    case PL_ERR_PATTERN: return "pattern must be at most 64 characters of A-Z a-z 0-9 _ . - * ?";
    case PL_ERR_PAGE: return "page limit or offset out of range";
    case PL_ERR_TOO_MANY_IDS: return "too many message ids in one request";
    case PL_ERR_NO_SUCH_MESSAGE: return "no such message";
    case PL_ERR_STALE_REQUEST: return "stale request number";
    case PL_ERR_RATE_LIMITED: return "rate limited";
    case PL_ERR_NOT_PRIMARY: return "not the primary";
    case PL_ERR_UNAVAILABLE: return "service unavailable, retry";
    case PL_ERR_TIMEOUT: return "timed out";
    case PL_ERR_AGAIN: return "incomplete";
    case PL_ERR_CONFIG: return "configuration error";
    case PL_ERR_PLUGIN: return "plugin error";
    case PL_ERR_BUSY: return "server busy";
    default: return "unknown error";
    }
}

/* Log levels, most severe first. */
enum pl_log_level {
    PL_LOG_ERROR = 0,
    PL_LOG_WARN = 1,
    PL_LOG_INFO = 2,
    PL_LOG_DEBUG = 3
};

/* The user-facing limits (DESIGN.md §1). Servers enforce them; clients may
 * check early for a friendlier message. */
#define PL_USERNAME_MAX 32u
#define PL_PASSWORD_MIN 8u
#define PL_PASSWORD_MAX 1024u
#define PL_BODY_MAX (64u * 1024u)
#define PL_PATTERN_MAX 64u
#define PL_PAGE_MAX 1000u        /* list/history/conversation limit, read n */
#define PL_IDS_MAX 1000u         /* ids in one ack/delete */
#define PL_TOKEN_MAX 128u        /* session token text */
#define PL_REPLY_BUDGET (768u * 1024u) /* message bytes in one read/history reply */
#define PL_FRAME_DEFAULT (1024u * 1024u) /* default max_frame */

#ifdef __cplusplus
}
#endif
#endif
