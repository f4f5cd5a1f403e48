/*
 * core/dump.h — parley's own export format: the whole chat state as JSON
 * Lines (issue 21; docs/operations.md, "Export and import").
 *
 * A dump is written from one snapshot (core/snapshot.h), so it is the
 * state at one applied op, whatever happens while it is streamed, and it
 * is read back record by record into restore batches (PL_OP_RESTORE) that
 * any store plugin applies. One JSON object per line:
 *
 *   {"parley_dump":1,"op":N,"next_uid":N,"next_msg_id":N,"digest":HEX,
 *    "sessions":BOOL,"created_ms":N,"server":"HOST:PORT","store":NAME,
 *    "parley":VERSION}                                      first line
 *   {"account":{"uid","name","pwhash"|"pwhash_b64","created_ms"}}
 *   {"session":{"token_hash":HEX,"uid","created_ms"}}       unless sessions is false
 *   {"message":{"id","from_uid","to_uid","from","to","body","time_ms",
 *               "read","deleted_by_sender","deleted_by_recipient"}}
 *   {"client":{"client_id","request_no","op","reply":BASE64}}
 *   {"end":{"accounts":N,"sessions":N,"messages":N,"clients":N}}  last line
 *
 * Records come in the snapshot's order (accounts by name, sessions by token
 * hash, messages by id, client rows by id). Integers are JSON numbers below
 * 2^53 and decimal strings from there up (client ids are random 64-bit
 * numbers); readers take either. digest is the state digest `parley status`
 * shows (pl_chat_digest) for the state dumped: a restore with sessions
 * gives a cluster with that digest. A reader refuses a version it does not
 * know, an unknown key, and anything out of range.
 *
 * Prefix: pl_dump_.
 */
#ifndef PL_CORE_DUMP_H
#define PL_CORE_DUMP_H

#include <stddef.h>
#include <stdint.h>

#include "snapshot.h"

#define PL_DUMP_VERSION 1u
/* The longest line a reader accepts: a message of PL_BODY_MAX bytes, each
 * escaped as \uXXXX, with room for the rest. */
#define PL_DUMP_LINE_MAX (8u * 64u * 1024u)

typedef struct pl_dump_meta {
    uint64_t created_ms;      /* wall clock when it was taken */
    const char *server;       /* "host:port" of the server that took it */
    const char *store;        /* its store plugin */
    const char *version;      /* parley's version */
    int sessions;             /* include the sessions (a restore keeps users logged in) */
} pl_dump_meta;

typedef struct pl_dump pl_dump;

/* A dump of the snapshot snap (len bytes, from pl_snapshot_export), which
 * the dump takes over and frees. PL_ERR_CORRUPT when it is not a valid
 * snapshot; the caller still frees snap then. */
int pl_dump_new(uint8_t *snap, size_t len, const pl_dump_meta *m, pl_dump **out);
/* The next piece of the dump: whole lines, about 64 KiB; *len is 0 after
 * the last line. *text is owned by the dump, valid until the next call. */
int pl_dump_next(pl_dump *d, const char **text, size_t *len);
/* The snapshot's op and digest (64 hex digits). */
uint64_t pl_dump_op(const pl_dump *d);
const char *pl_dump_digest(const pl_dump *d);
void pl_dump_free(pl_dump *d);

/* ---- reading ---- */

enum pl_dump_line_kind {
    PL_DUMP_HEADER = 1,
    PL_DUMP_RECORD = 2,
    PL_DUMP_END = 3
};

typedef struct pl_dump_line {
    int kind;
    /* PL_DUMP_HEADER */
    uint32_t version;
    uint64_t op, next_uid, next_msg_id;
    int sessions;
    char digest[65];
    /* PL_DUMP_RECORD: strings point into memory the line owns */
    pl_snapshot_rec rec;
    /* PL_DUMP_END */
    uint64_t accounts, sessions_n, messages, clients;
    /* owned */
    void *json;
    uint8_t *bytes;
} pl_dump_line;

/* Parse one line (without its newline). PL_OK, or PL_ERR_INVALID with the
 * reason in err ("account: name: must be a string"). Release with
 * pl_dump_line_clear, after an error too. */
int pl_dump_parse_line(const char *text, size_t len, pl_dump_line *out, char *err,
                       size_t errlen);
void pl_dump_line_clear(pl_dump_line *l);

/* Does JSON text hold an escaped NUL (\u0000) inside a string? cJSON hands
 * strings over NUL-terminated, so one would silently cut a name or body
 * short: readers refuse such text instead. */
int pl_json_has_nul(const char *text, size_t len);

#endif
