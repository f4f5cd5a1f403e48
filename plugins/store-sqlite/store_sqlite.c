/*
 * store_sqlite.c — the "sqlite" store plugin: everything durable on one
 * server in two SQLite databases (WAL mode) in its data directory:
 * parley-log.db holds the replicated log and the replica metadata set
 * outside a state transaction (the view, ...); parley.db holds the chat
 * state and its applied op-number.
 *
 * Durability (the contract in parley/store.h)
 *   log_append, log_truncate and meta_set outside a transaction commit in
 *   the log database with PRAGMA synchronous=FULL: the COMMIT fsyncs its
 *   WAL before returning. log_append_nosync (ABI minor 1) commits with
 *   synchronous=NORMAL; log_sync, on the core's sync thread, fdatasyncs the
 *   log's WAL through a descriptor of its own. WAL frames are appended in
 *   commit order and recovery keeps a checksummed prefix, so a crash keeps
 *   a prefix of the log.
 *   State transactions (begin .. commit(applied_op)) are savepoints inside
 *   one SQLite transaction on parley.db, committed with synchronous=NORMAL
 *   every SQ_STATE_FLUSH_MS under load and by the core's idle call
 *   (state_flush, ABI minor 2), and on close (sq_state_flush says why and
 *   what keeps it safe). The applied op-number lives in the state's meta
 *   key "applied", in the same transaction as the state it describes. A
 *   crash may lose the last state commits; the core replays the log from
 *   applied_op() + 1. Before a state commit the log is synced, so no state
 *   reaches the disk ahead of the log entries it came from; log_compact
 *   syncs the state before it drops entries. When the store is opened with
 *   sync off everything runs with synchronous=OFF.
 *   Checkpoints run on a thread of the store's own (sq_ckpt_main).
 *
 * Schema of parley.db (PRAGMA user_version = SQ_SCHEMA_VERSION)
 *   meta(key, val)                  "applied", and keys set inside a state
 *                                   transaction (the core's counters)
 *   accounts(uid, name, pwhash, created)
 *   sessions(token_hash, uid, created)
 *   messages(id, from_uid, to_uid, from_name, to_name, body, time, flags)
 *   clients(client_id, request_no, op, reply)
 *   and of parley-log.db (user_version = SQ_LOG_SCHEMA_VERSION)
 *   meta(key, val)                  keys set outside a transaction
 *   log(first, last, data)          the replicated log, a row per appended
 *                                   batch (or part of one): entries
 *                                   first..last, first is the rowid, data
 *                                   their views and bytes (sq_row_add)
 *   Up to schema version 2 the log and all of meta were in parley.db;
 *   sq_open_log moves them when such a file is opened. Log format 1 had
 *   a row per entry, log(op, view, data); sq_open_log converts it.
 *   Names, bodies and opaque bytes are BLOBs, so ORDER BY is memcmp-then-
 *   length exactly as store.h requires, and no text encoding is applied.
 *
 *   Two indexes serve every message query, each an index range scan over
 *   one user's messages, never a scan of the whole table (EXPLAIN QUERY
 *   PLAN, see sq_sql):
 *     msg_to   (to_uid, flags & 1) WHERE (flags & 4) = 0
 *              PL_Q_UNREAD (read bit 0), PL_Q_READ (read bit 1), both
 *              counts, PL_Q_RECEIVED (the two ranges merged by id)
 *     msg_pair (from_uid, to_uid)
 *              PL_Q_CONVO (both directions merged by id), PL_Q_SENT (the
 *              from_uid range, sorted by id: the core never asks for it)
 *   Schema version 1 had five indexes (unread, read, received, sent, pair);
 *   four took an entry per send, each on a leaf page of its own per user,
 *   so a batch of sends wrote about four pages per send. Version 2 writes
 *   two; sq_migrate converts a version 1 file when it is opened.
 *   The rowid (message id) is the implicit last column of every index, so
 *   each equality range comes out in id order without a sort. A partial or
 *   expression index only helps when a query repeats the index's expression
 *   verbatim, which is why the flag tests are written exactly the same way
 *   in both places.
 *
 * uint64 values are stored as sqlite3_int64 (two's complement bit pattern),
 * so every value round-trips. Ordering is numeric only below 2^63: message
 * ids, uids and op-numbers are sequential counters and stay far below that.
 * Client ids are random 64-bit numbers, so client_scan reads the two halves
 * of the signed range in unsigned order.
 *
 * Threading: the connections are opened with SQLITE_OPEN_NOMUTEX; a store
 * instance is used by one thread at a time (store.h), except log_sync (the
 * core's sync thread) and the checkpoint thread, which have descriptors
 * and connections of their own.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <pthread.h>
#include <sqlite3.h>

#include <parley/store.h>

#include "sq_walbuf.h"

#define SQ_SCHEMA_VERSION 3
#define SQ_LOG_SCHEMA_VERSION 2
#define SQ_STR_(x) #x
#define SQ_STR(x) SQ_STR_(x)
#define SQ_DB_FILE "parley.db"
#define SQ_LOG_FILE "parley-log.db"
/* The state transaction is flushed (committed) this often under load, and
 * by the core's idle call (state_flush) once it is this old. */
#define SQ_STATE_FLUSH_MS 100
/* Default page cache of the state connection, in KiB: room for the pages a
 * flush interval dirties (store option cache_kb overrides it). */
#define SQ_STATE_CACHE_KB 16384
#define SQ_BUSY_TIMEOUT_MS 5000
#define SQ_CACHE_KB_MAX (16u * 1024u * 1024u) /* 16 GiB of page cache */
#define SQ_APPLIED_KEY "applied"
/* Checkpoint the state's WAL every 2048 pages (8 MiB) and the log's every
 * 1024 (4 MiB) instead of SQLite's 1000 pages each on the loop thread:
 * sq_wal_hook, which replaces SQLite's own autocheckpoint hook, asks the
 * checkpoint thread (sq_ckpt_main) for them. A checkpoint writes the
 * database file and syncs it, and the log's syncs wait behind that I/O on
 * the disk: with 64 MiB checkpoints on the loop, requests stalled 50-120 ms;
 * on the thread, 3 servers' send -> push p99 was 57 ms with checkpoints at
 * 8192/4096 pages, 84-87 ms at 16384, 20 ms at these sizes
 * (docs/performance.md, round 4). The size limits are what a WAL file is
 * cut back to when it restarts. The loop's state transaction is open nearly
 * always, so SQLite restarted the state WAL only when a checkpoint happened
 * to finish in a gap between two, and under load it grew to 70-120 MiB
 * between restarts; now the store makes it restart at ~32 MiB
 * (SQ_STATE_RESTART_PAGES, sq_state_restart), so its limit is that size and
 * a restart rarely cuts anything. The log's short transactions leave gaps,
 * and its WAL restarts by itself. A cut is an ftruncate freeing what is
 * past the limit, which took the loop 10-21 ms for tens of MiB (round 5),
 * so it is the checkpoint thread's, in 1 MiB steps (sq_walbuf_trim). */
#define SQ_STATE_CKPT_PAGES 2048
#define SQ_LOG_CKPT_PAGES 1024
#define SQ_STATE_WAL_LIMIT (32 << 20)
/* Past this many frames the state WAL is made to restart (sq_state_restart):
 * ~32 MiB, the size it is then cut back to. */
#define SQ_STATE_RESTART_PAGES 8192
/* ... and the loop copies the last frames itself once they are at most
 * this many milliseconds of changes, or after two rounds (sq_state_restart). */
#define SQ_STATE_RESTART_TAIL_MS 10
#define SQ_LOG_WAL_LIMIT (8 << 20)

/* Slots of the table of clients whose row a batch has noted for undo: a
 * hash's top 8 bits pick one (sq_undo_client). */
#define SQ_CLI_NOTED 256u

enum sq_sync { SQ_SYNC_OFF = 0, SQ_SYNC_NORMAL = 1, SQ_SYNC_FULL = 2 };

/* Every statement the store runs, prepared once at open. */
enum sq_stmt {
    ST_BEGIN, ST_BEGIN_READ, ST_COMMIT, ST_ROLLBACK,
    ST_META_GET, ST_META_SET, ST_META_DEL,
    ST_ACC_PUT, ST_ACC_GET_NAME, ST_ACC_GET_UID, ST_ACC_DELETE, ST_ACC_SCAN,
    ST_ACC_COUNT,
    ST_SES_PUT, ST_SES_GET, ST_SES_DELETE, ST_SES_DELETE_UID, ST_SES_SCAN, ST_SES_BY_UID,
    ST_MSG_PUT, ST_MSG_GET, ST_MSG_SET_FLAGS, ST_MSG_DELETE, ST_MSG_COUNTS,
    ST_Q_UNREAD, ST_Q_READ, ST_Q_CONVO, ST_Q_CONVO_SELF, ST_Q_RECEIVED,
    ST_Q_SENT, ST_Q_ALL,
    ST_CLI_GET, ST_CLI_PUT, ST_CLI_SCAN_LO, ST_CLI_SCAN_HI, ST_CLI_DEL,
    /* From here on, statements of the log database (s->ldb). */
    ST_L_BEGIN, ST_L_COMMIT, ST_L_ROLLBACK,
    ST_L_META_GET, ST_L_META_SET,
    ST_LOG_BOUNDS, ST_LOG_APPEND, ST_LOG_READ, ST_LOG_TRUNCATE, ST_LOG_COMPACT,
    ST_LOG_ROW_AT, ST_LOG_CUT_TAIL, ST_LOG_CUT_HEAD,
    ST__COUNT,
    ST__LOG_FIRST = ST_L_BEGIN
};

#define SQ_MSG_COLS "id, from_uid, to_uid, from_name, to_name, body, time, flags"

/* Message queries bind ?1 uid, ?2 peer_uid or after_id, ?3 limit, ?4 offset
 * (unused numbers are simply left unbound). */
static const char *const sq_sql[ST__COUNT] = {
    /* IMMEDIATE takes the write lock up front, so a transaction never fails
     * half-way with SQLITE_BUSY when another process reads the file. */
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    /* The shared read transaction (sq_read_begin): locks on first read. */
    [ST_BEGIN_READ] = "BEGIN DEFERRED",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",

    [ST_META_GET] = "SELECT val FROM meta WHERE key = ?1",
    [ST_META_SET] = "INSERT OR REPLACE INTO meta(key, val) VALUES (?1, ?2)",
    [ST_META_DEL] = "DELETE FROM meta WHERE key = ?1",

    [ST_L_BEGIN] = "BEGIN IMMEDIATE",
    [ST_L_COMMIT] = "COMMIT",
    [ST_L_ROLLBACK] = "ROLLBACK",
    [ST_L_META_GET] = "SELECT val FROM meta WHERE key = ?1",
    [ST_L_META_SET] = "INSERT OR REPLACE INTO meta(key, val) VALUES (?1, ?2)",

    /* The log's rows hold entries first..last and never overlap, so the
     * lowest row's first and the highest row's last bound the log. Two
     * single-row rowid probes; min() and max() together would scan. */
    [ST_LOG_BOUNDS] = "SELECT (SELECT first FROM log ORDER BY first LIMIT 1),"
                      " (SELECT last FROM log ORDER BY first DESC LIMIT 1)",
    [ST_LOG_APPEND] = "INSERT INTO log(first, last, data) VALUES (?1, ?2, ?3)",
    /* From the row holding op ?1 (the greatest first <= ?1), a rowid range
     * up to ?2; the caller skips the entries of the ends outside ?1..?2.
     * That first row is read even when it ends before ?1 (?1 past the
     * log's end), so that a damaged row is never silently skipped. */
    [ST_LOG_READ] = "SELECT first, last, data FROM log"
                    " WHERE first >= coalesce((SELECT first FROM log WHERE first <= ?1"
                    " ORDER BY first DESC LIMIT 1), 0) AND first <= ?2"
                    " ORDER BY first",
    [ST_LOG_TRUNCATE] = "DELETE FROM log WHERE first > ?1",
    /* first < ?1 makes it a rowid range: only the rows that go, and the one
     * holding op ?1, are visited (that one is cut by ST_LOG_CUT_HEAD). */
    [ST_LOG_COMPACT] = "DELETE FROM log WHERE first < ?1 AND last < ?1",
    /* The row with the greatest first <= ?1: the one holding op ?1, if a
     * row does (truncate and compact cut it; sq_log_cut checks its last). */
    [ST_LOG_ROW_AT] = "SELECT first, last, data FROM log WHERE first <= ?1"
                      " ORDER BY first DESC LIMIT 1",
    /* Keep the entries up to ?2, the first ?3 bytes (substr of a BLOB
     * counts bytes and returns a BLOB). */
    [ST_LOG_CUT_TAIL] = "UPDATE log SET last = ?2, data = substr(data, 1, ?3) WHERE first = ?1",
    /* Keep the entries from ?2, which start at byte ?3 (1-based). */
    [ST_LOG_CUT_HEAD] = "UPDATE log SET first = ?2, data = substr(data, ?3) WHERE first = ?1",

    /* An upsert on uid only: a name held by another uid is a UNIQUE
     * violation instead of REPLACE silently deleting that other account. */
    [ST_ACC_PUT] = "INSERT INTO accounts(uid, name, pwhash, created) VALUES (?1, ?2, ?3, ?4)"
                   " ON CONFLICT(uid) DO UPDATE SET name = excluded.name,"
                   " pwhash = excluded.pwhash, created = excluded.created",
    [ST_ACC_GET_NAME] = "SELECT uid, name, pwhash, created FROM accounts WHERE name = ?1",
    [ST_ACC_GET_UID] = "SELECT uid, name, pwhash, created FROM accounts WHERE uid = ?1",
    [ST_ACC_DELETE] = "DELETE FROM accounts WHERE uid = ?1",
    [ST_ACC_SCAN] = "SELECT uid, name, pwhash, created FROM accounts WHERE name >= ?1 ORDER BY name",
    [ST_ACC_COUNT] = "SELECT count(*) FROM accounts",

    [ST_SES_PUT] = "INSERT OR REPLACE INTO sessions(token_hash, uid, created) VALUES (?1, ?2, ?3)",
    [ST_SES_GET] = "SELECT token_hash, uid, created FROM sessions WHERE token_hash = ?1",
    [ST_SES_DELETE] = "DELETE FROM sessions WHERE token_hash = ?1",
    [ST_SES_DELETE_UID] = "DELETE FROM sessions WHERE uid = ?1",
    [ST_SES_SCAN] = "SELECT token_hash, uid, created FROM sessions ORDER BY token_hash",
    [ST_SES_BY_UID] = "SELECT token_hash, uid, created FROM sessions WHERE uid = ?1",

    [ST_MSG_PUT] = "INSERT INTO messages(" SQ_MSG_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_MSG_GET] = "SELECT " SQ_MSG_COLS " FROM messages WHERE id = ?1",
    [ST_MSG_SET_FLAGS] = "UPDATE messages SET flags = ?2 WHERE id = ?1",
    [ST_MSG_DELETE] = "DELETE FROM messages WHERE id = ?1",
    /* Each count walks only this user's entries of a partial index. */
    [ST_MSG_COUNTS] = "SELECT (SELECT count(*) FROM messages WHERE to_uid = ?1 AND (flags & 1) = 0"
                      " AND (flags & 4) = 0),"
                      " (SELECT count(*) FROM messages WHERE to_uid = ?1 AND (flags & 1) = 1"
                      " AND (flags & 4) = 0)",

    [ST_Q_UNREAD] = "SELECT " SQ_MSG_COLS " FROM messages"
                    " WHERE to_uid = ?1 AND (flags & 1) = 0 AND (flags & 4) = 0 AND id > ?2"
                    " ORDER BY id LIMIT ?3 OFFSET ?4",
    [ST_Q_READ] = "SELECT " SQ_MSG_COLS " FROM messages"
                  " WHERE to_uid = ?1 AND (flags & 1) = 1 AND (flags & 4) = 0"
                  " ORDER BY id DESC LIMIT ?3 OFFSET ?4",
    /* Both directions, each an ordered msg_pair range, merged by SQLite
     * (MERGE (UNION ALL)) without a temporary sort. */
    [ST_Q_CONVO] = "SELECT " SQ_MSG_COLS " FROM messages"
                   " WHERE from_uid = ?1 AND to_uid = ?2 AND (flags & 2) = 0"
                   " UNION ALL"
                   " SELECT " SQ_MSG_COLS " FROM messages"
                   " WHERE from_uid = ?2 AND to_uid = ?1 AND (flags & 4) = 0"
                   " ORDER BY id DESC LIMIT ?3 OFFSET ?4",
    /* A note to self is both sent and received by uid: it stays in the
     * conversation while either side still shows it (not both delete flags),
     * matching PL_Q_SENT and PL_Q_RECEIVED, each of which would still list
     * it. The UNION above would return it twice. */
    [ST_Q_CONVO_SELF] = "SELECT " SQ_MSG_COLS " FROM messages"
                        " WHERE from_uid = ?1 AND to_uid = ?1 AND (flags & 6) <> 6"
                        " ORDER BY id DESC LIMIT ?3 OFFSET ?4",
    /* The unread and the read range of msg_to, merged by id. */
    [ST_Q_RECEIVED] = "SELECT " SQ_MSG_COLS " FROM messages"
                      " WHERE to_uid = ?1 AND (flags & 1) = 0 AND (flags & 4) = 0"
                      " UNION ALL"
                      " SELECT " SQ_MSG_COLS " FROM messages"
                      " WHERE to_uid = ?1 AND (flags & 1) = 1 AND (flags & 4) = 0"
                      " ORDER BY id LIMIT ?3 OFFSET ?4",
    /* msg_pair's from_uid range, then a sort: the core does not use this
     * query, and an index of its own would cost a page write per send. */
    [ST_Q_SENT] = "SELECT " SQ_MSG_COLS " FROM messages"
                  " WHERE from_uid = ?1 AND (flags & 2) = 0"
                  " ORDER BY id LIMIT ?3 OFFSET ?4",
    [ST_Q_ALL] = "SELECT " SQ_MSG_COLS " FROM messages"
                 " WHERE id > ?2 ORDER BY id LIMIT ?3 OFFSET ?4",

    [ST_CLI_GET] = "SELECT client_id, request_no, op, reply FROM clients WHERE client_id = ?1",
    /* An upsert updates the row in place; REPLACE would delete and
     * reinsert it, a b-tree delete per op for every client's next request. */
    [ST_CLI_PUT] = "INSERT INTO clients(client_id, request_no, op, reply) VALUES (?1, ?2, ?3, ?4)"
                   " ON CONFLICT(client_id) DO UPDATE SET request_no = excluded.request_no,"
                   " op = excluded.op, reply = excluded.reply",
    /* uint64 order: ids below 2^63 are the non-negative int64s, the rest
     * are the negative ones, each half ascending. */
    [ST_CLI_SCAN_LO] = "SELECT client_id, request_no, op, reply FROM clients"
                       " WHERE client_id >= 0 ORDER BY client_id",
    [ST_CLI_SCAN_HI] = "SELECT client_id, request_no, op, reply FROM clients"
                       " WHERE client_id < 0 ORDER BY client_id",
    [ST_CLI_DEL] = "DELETE FROM clients WHERE client_id = ?1",
};

#define SQ_MSG_TO_INDEX \
    "CREATE INDEX msg_to ON messages(to_uid, flags & 1) WHERE (flags & 4) = 0;"

static const char sq_schema[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, val INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE accounts(uid INTEGER PRIMARY KEY, name BLOB UNIQUE NOT NULL,"
    " pwhash TEXT NOT NULL, created INTEGER NOT NULL);"
    "CREATE TABLE sessions(token_hash BLOB PRIMARY KEY, uid INTEGER NOT NULL,"
    " created INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX sessions_uid ON sessions(uid);"
    "CREATE TABLE messages(id INTEGER PRIMARY KEY, from_uid INTEGER NOT NULL,"
    " to_uid INTEGER NOT NULL, from_name BLOB NOT NULL, to_name BLOB NOT NULL,"
    " body BLOB NOT NULL, time INTEGER NOT NULL, flags INTEGER NOT NULL);"
    SQ_MSG_TO_INDEX
    "CREATE INDEX msg_pair ON messages(from_uid, to_uid);"
    "CREATE TABLE clients(client_id INTEGER PRIMARY KEY, request_no INTEGER NOT NULL,"
    " op INTEGER NOT NULL, reply BLOB NOT NULL);";

/* Version 1 -> 2: the five message indexes become msg_to and msg_pair. */
static const char sq_upgrade_1[] =
    "DROP INDEX msg_unread;"
    "DROP INDEX msg_read;"
    "DROP INDEX msg_recv;"
    "DROP INDEX msg_sent;"
    SQ_MSG_TO_INDEX;

/* Version 2 -> 3, once sq_log_migrate has copied the log and the replica
 * metadata into the log database: what stays here is the state. */
static const char sq_upgrade_2[] =
    "DROP TABLE log;"
    "DELETE FROM meta WHERE key <> '" SQ_APPLIED_KEY "';";

/* The log database, <dir>/parley-log.db (PRAGMA user_version =
 * SQ_LOG_SCHEMA_VERSION). Its meta table holds the keys set outside a
 * state transaction (the replica's view, ...); the log table is format 2,
 * a row per appended batch (sq_row_add). */
#define SQ_LOG_META_COLS "(key TEXT PRIMARY KEY, val INTEGER NOT NULL) WITHOUT ROWID"
#define SQ_LOG_COLS "(first INTEGER PRIMARY KEY, last INTEGER NOT NULL, data BLOB NOT NULL)"

static const char sq_log_schema[] =
    "CREATE TABLE IF NOT EXISTS meta" SQ_LOG_META_COLS ";"
    "CREATE TABLE IF NOT EXISTS log" SQ_LOG_COLS ";";

typedef struct sq_undo sq_undo;

struct pl_store {
    pl_store_host host;       /* copied: the caller's struct may be on its stack */
    sqlite3 *db;              /* the state: parley.db */
    sqlite3 *ldb;             /* the log and the replica metadata: parley-log.db */
    sqlite3_stmt *st[ST__COUNT];
    char *path;               /* <dir>/parley.db, for messages */
    char *lpath;              /* <dir>/parley-log.db */
    int sync_on;              /* opt->sync */
    int cur_sync;             /* enum sq_sync currently set on db */
    int l_sync;               /* ... and on ldb */
    int in_txn;               /* between begin() and commit()/abort() */
    int rd_txn;               /* the shared read transaction is open */
    uint64_t applied;         /* applied op of the last commit() */
    uint8_t *buf;             /* getter results live here until the next call */
    size_t cap;
    /* The state transaction (sq_state_flush): commit() ends a batch at a
     * savepoint; the SQLite transaction spans batches until it is flushed. */
    int state_open;           /* BEGIN IMMEDIATE on db is in effect */
    int state_unsynced;       /* state commits not yet fdatasync'ed */
    int state_lost;           /* SQLite rolled the open transaction back */
    uint64_t state_since_ms;  /* when state_open began */
    uint64_t durable_applied; /* applied op of the last synced state */
    /* Making the state WAL restart (sq_state_restart), loop thread */
    int restart_at;           /* frames the checkpoint thread must copy first; 0: none */
    int restart_rounds;       /* early commits made for it so far */
    int restarting;           /* this commit's checkpoint is the loop's own */
    /* How to undo the open batch (sq_undo_all) */
    sq_undo *undo;
    size_t n_undo, cap_undo;
    struct {
        uint64_t id;
        size_t at;
    } cli_noted[SQ_CLI_NOTED];    /* sq_undo_client: a client's note in this batch */
    uint8_t *ubuf;            /* the notes' bytes */
    size_t ulen, ucap;
    int undoing;              /* abort() is playing them back */
    char *swal_path;          /* <dir>/parley.db-wal */
    int swal_fd;              /* for sq_state_flush(durable), loop thread */
    int lwal_fd2;             /* the log WAL, for the loop thread's own syncs */
    /* Log writes, counted: a state commit may not reach the disk before
     * the log entries it was applied from (store.h, minor 1), so the flush
     * syncs the log first unless a log_sync already covered every write. */
    uint64_t l_writes;        /* log commits so far (loop thread; read atomically) */
    uint64_t l_synced;        /* l_writes covered by a finished sync (atomic) */
    uint8_t *lbuf;            /* a log row being built (sq_row_add) */
    size_t lcap;
    /* the checkpoint thread (sq_ckpt_main) */
    pthread_t ck_thread;
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cond;
    unsigned ck_want;         /* SQ_CK_ bits (under ck_mu) */
    int ck_state_copied;      /* frames of the state WAL its last whole checkpoint
                               * copied (atomic; written by the thread) */
    /* the WAL files whose cut waits (sq_walbuf_trim), state's and log's:
     * the loop's connections' own, open until they close, which is after
     * the thread stopped (under ck_mu) */
    sqlite3_file *ck_trim[2];
    int ck_stop;              /* under ck_mu */
    int ck_init, ck_running;  /* loop thread */
    /* log_sync (the core's sync thread only) */
    char *wal_path;           /* <dir>/parley-log.db-wal */
    int wal_fd;               /* read-only descriptor of it, or -1 */
    int wal_broken;           /* a commit's WAL frames could not be written (atomic) */
};

/* ---- small helpers ---- */

static void sq_log(pl_store *s, int level, const char *fmt, ...) PL_PRINTF(3, 4);

static void sq_log(pl_store *s, int level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!s->host.log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->host.log(s->host.ud, level, "store sqlite: %s", line);
}

static int sq_map(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return PL_OK;
    case SQLITE_NOMEM:
        return PL_ERR_NOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
        return PL_ERR_CORRUPT;
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return PL_ERR_INVALID;
    case SQLITE_MISUSE:
    case SQLITE_INTERNAL:
        return PL_ERR_INTERNAL;
    default:
        /* IOERR, FULL, BUSY, LOCKED, CANTOPEN, READONLY, PERM, ... */
        return PL_ERR_IO;
    }
}

/* Log the connection's last error for `what` and return it as a pl_err. */
static int sq_fail_db(pl_store *s, sqlite3 *db, const char *what)
{
    int rc = sqlite3_extended_errcode(db);
    int err = sq_map(rc);

    if (err == PL_OK) /* an error path with nothing recorded is still one */
        err = PL_ERR_INTERNAL;
    sq_log(s, PL_LOG_ERROR, "%s: %s (%s, code %d)", what, sqlite3_errmsg(db),
           pl_strerror(err), rc);
    return err;
}

static int sq_fail(pl_store *s, const char *what)
{
    return sq_fail_db(s, s->db, what);
}

/* The statement for `id`, ready to bind. A statement still mid-step means a
 * scan callback called back into the store, which store.h forbids: resetting
 * it would silently cut the outer scan short. */
static sqlite3_stmt *sq_stmt(pl_store *s, enum sq_stmt id)
{
    sqlite3_stmt *st = s->st[id];

    if (sqlite3_stmt_busy(st)) {
        sq_log(s, PL_LOG_ERROR, "store called from inside a scan callback (%s)",
               sq_sql[id]);
        return NULL;
    }
    return st;
}

/* Release the statement (and its read snapshot) right after use. */
static void sq_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int sq_bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
    return sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

/* uint64 bounds for range queries, kept in the non-negative int64 range so
 * that a huge value means "everything" or "nothing" instead of wrapping. */
static sqlite3_int64 sq_clamp(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)v;
}

/* Bytes are always bound as BLOB: SQLite sorts TEXT before every BLOB, and
 * a NULL pointer would bind SQL NULL instead of an empty value. */
static int sq_bind_blob(sqlite3_stmt *st, int i, const void *p, uint32_t len)
{
    if (len == 0)
        return sqlite3_bind_zeroblob(st, i, 0);
    return sqlite3_bind_blob64(st, i, p, len, SQLITE_STATIC);
}

static int sq_bind_str(sqlite3_stmt *st, int i, pl_str v)
{
    return sq_bind_blob(st, i, v.ptr, v.len);
}

static int sq_bind_text(sqlite3_stmt *st, int i, pl_str v)
{
    return sqlite3_bind_text64(st, i, v.len ? v.ptr : "", v.len, SQLITE_STATIC, SQLITE_UTF8);
}

/* A pl_str view of a column: valid until the statement steps or resets. */
static pl_str sq_col_blob(sqlite3_stmt *st, int i)
{
    const void *p = sqlite3_column_blob(st, i);
    int n = sqlite3_column_bytes(st, i);
    pl_str r = { NULL, 0 };

    if (p && n > 0) {
        r.ptr = p;
        r.len = (uint32_t)n;
    }
    return r;
}

static pl_str sq_col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *p = sqlite3_column_text(st, i);
    int n = sqlite3_column_bytes(st, i);
    pl_str r = { NULL, 0 };

    if (p && n > 0) {
        r.ptr = (const char *)p;
        r.len = (uint32_t)n;
    }
    return r;
}

static uint64_t sq_col_u64(sqlite3_stmt *st, int i)
{
    return (uint64_t)sqlite3_column_int64(st, i);
}

/* Copy the views in f[0..n) into the store's buffer and repoint them there:
 * getters return records that must outlive sqlite3_reset. */
static int sq_keep(pl_store *s, pl_str *f[], int n)
{
    size_t total = 0, off = 0;
    int i;

    for (i = 0; i < n; i++)
        total += f[i]->len;
    if (total > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        uint8_t *nb;

        while (cap < total)
            cap *= 2;
        nb = realloc(s->buf, cap);
        if (!nb)
            return PL_ERR_NOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    for (i = 0; i < n; i++) {
        if (f[i]->len == 0) {
            f[i]->ptr = NULL;
            continue;
        }
        memcpy(s->buf + off, f[i]->ptr, f[i]->len);
        f[i]->ptr = (const char *)s->buf + off;
        off += f[i]->len;
    }
    return PL_OK;
}

static void sq_read_end(pl_store *s);
static void sq_ckpt_stop(pl_store *s);
static int sq_undo_meta(pl_store *s, const char *key);
static void sq_undo_drop(pl_store *s, size_t mark);

/* SQLite rolls a transaction back by itself after some errors (disk full,
 * I/O error, out of memory). Statements after that would autocommit one by
 * one, making part of an operation visible, so refuse them until abort(). */
static int sq_state_check(pl_store *s);

static int sq_txn_ok(pl_store *s)
{
    sq_read_end(s);
    return sq_state_check(s);
}

/* The state transaction spans batches (sq_state_flush). If SQLite rolled it
 * back by itself after an error, batches that commit() already reported
 * are gone from this connection; the log still holds them, so the store
 * refuses every state change from then on and a restart replays them. */
static int sq_state_check(pl_store *s)
{
    if (s->state_open && !s->state_lost && sqlite3_get_autocommit(s->db)) {
        s->state_lost = 1;
        sq_log(s, PL_LOG_ERROR, "%s: the open state transaction was rolled back after an"
               " error; the state after op %" PRIu64 " is refused until parleyd restarts"
               " and replays it from the log", s->path, s->applied);
    }
    return s->state_lost ? PL_ERR_IO : PL_OK;
}

/* Set PRAGMA synchronous. It is run with sqlite3_exec rather than a prepared
 * statement because SQLite applies this pragma when it compiles it, so a
 * reused prepared copy would not switch the level again. Only valid outside
 * a transaction. */
static int sq_set_sync_db(pl_store *s, sqlite3 *db, int *cur, int level)
{
    static const char *const sql[] = {
        [SQ_SYNC_OFF] = "PRAGMA synchronous=OFF",
        [SQ_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
        [SQ_SYNC_FULL] = "PRAGMA synchronous=FULL",
    };

    if (!s->sync_on || *cur == level)
        return PL_OK;
    if (sqlite3_exec(db, sql[level], NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail_db(s, db, sql[level]);
    *cur = level;
    return PL_OK;
}

/* ... on the state database; sq_set_lsync on the log database. */
static int sq_set_sync(pl_store *s, int level)
{
    return sq_set_sync_db(s, s->db, &s->cur_sync, level);
}

static int sq_set_lsync(pl_store *s, int level)
{
    return sq_set_sync_db(s, s->ldb, &s->l_sync, level);
}

/* Run a statement that returns no rows; used for single-statement writes. */
static int sq_exec_stmt(pl_store *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int err = PL_OK;

    if (rc != SQLITE_DONE)
        err = sq_fail_db(s, sqlite3_db_handle(st), what);
    sq_done(st);
    return err;
}

/* Like sq_exec_stmt, but PL_ERR_NOT_FOUND when no row changed. */
static int sq_exec_change(pl_store *s, sqlite3_stmt *st, const char *what)
{
    int err = sq_exec_stmt(s, st, what);

    if (err == PL_OK && sqlite3_changes(s->db) == 0)
        err = PL_ERR_NOT_FOUND;
    return err;
}

static int sq_simple(pl_store *s, enum sq_stmt id)
{
    sqlite3_stmt *st = sq_stmt(s, id);

    if (!st)
        return PL_ERR_INTERNAL;
    return sq_exec_stmt(s, st, sq_sql[id]);
}

static void sq_rollback(pl_store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sq_simple(s, ST_ROLLBACK);
}

static void sq_lrollback(pl_store *s)
{
    if (!sqlite3_get_autocommit(s->ldb))
        sq_simple(s, ST_L_ROLLBACK);
}

/* Reads outside a state transaction share one read transaction, kept open
 * from the first read until the next write (sq_read_end). In autocommit
 * mode every statement took and dropped the database's shared lock and a
 * WAL read mark (several fcntl calls and a WAL-index check each), and the
 * core reads a session and an account per request: that was ~15 % of the
 * server's CPU under load. The snapshot cannot go stale: this connection is
 * the database's only writer (one parleyd per data directory), and every
 * write ends the read transaction first. Other processes reading the file
 * (an online backup) are not blocked by it in WAL mode. If BEGIN fails the
 * reads simply run in autocommit mode as before. */
static void sq_read_begin(pl_store *s)
{
    /* Inside the state transaction, reads see it, as they must. */
    if (s->in_txn || s->state_open) {
        sq_state_check(s);
        return;
    }
    /* SQLite ends a transaction by itself after some errors. */
    if (s->rd_txn && sqlite3_get_autocommit(s->db))
        s->rd_txn = 0;
    /* Already open, or inside log_append's own write transaction. */
    if (s->rd_txn || !sqlite3_get_autocommit(s->db))
        return;
    if (sq_simple(s, ST_BEGIN_READ) == PL_OK)
        s->rd_txn = 1;
}

/* End the shared read transaction before any write or pragma. */
static void sq_read_end(pl_store *s)
{
    if (!s->rd_txn)
        return;
    s->rd_txn = 0;
    if (!sqlite3_get_autocommit(s->db) && sq_simple(s, ST_COMMIT) != PL_OK)
        sq_rollback(s);
}

/* The statement for a read: inside the shared read transaction. */
static sqlite3_stmt *sq_read_stmt(pl_store *s, enum sq_stmt id)
{
    sqlite3_stmt *st = sq_stmt(s, id);

    if (st)
        sq_read_begin(s);
    return st;
}

/* ---- lifecycle ---- */

static void sq_free(pl_store *s)
{
    int i;

    if (!s)
        return;
    sq_ckpt_stop(s);
    for (i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(s->st[i]);
    /* The last connection to close checkpoints the WAL into the database
     * and removes the -wal and -shm files. */
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        sq_log(s, PL_LOG_WARN, "closing %s: %s", s->path, sqlite3_errmsg(s->db));
    if (s->ldb && sqlite3_close(s->ldb) != SQLITE_OK)
        sq_log(s, PL_LOG_WARN, "closing %s: %s", s->lpath, sqlite3_errmsg(s->ldb));
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    if (s->lwal_fd2 >= 0)
        close(s->lwal_fd2);
    if (s->swal_fd >= 0)
        close(s->swal_fd);
    free(s->wal_path);
    free(s->swal_path);
    free(s->lpath);
    free(s->path);
    free(s->buf);
    free(s->lbuf);
    free(s->undo);
    free(s->ubuf);
    free(s);
}

/* mkdir -p with mode 0700 for the directories it creates. */
static int sq_mkdirs(const char *dir, char *err, size_t errlen)
{
    char *p = strdup(dir), *c;
    struct stat sb;
    int rc = -1;

    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (c = p + 1; ; c++) {
        if (*c != '/' && *c != '\0')
            continue;
        char saved = *c;
        *c = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", p, strerror(errno));
            goto out;
        }
        *c = saved;
        if (saved == '\0')
            break;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "data directory %s is not a directory", dir);
        goto out;
    }
    rc = 0;
out:
    free(p);
    return rc;
}

/* Create the database file ourselves so it is 0600 (SQLite would use 0644
 * and the -wal/-shm files copy the database's mode), and make a new file's
 * directory entry durable. */
static int sq_precreate(const char *dir, const char *path, int sync_on,
                        char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0 && errno == EEXIST)
        return 0;
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    if (sync_on) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (dfd >= 0) {
            if (fsync(dfd) != 0) {
                snprintf(err, errlen, "cannot sync directory %s: %s", dir, strerror(errno));
                close(dfd);
                return -1;
            }
            close(dfd);
        }
    }
    return 0;
}

/* {"name": "sqlite", "cache_kb": N}; other keys belong to the config loader
 * (name, sync) or are checked there, so they are ignored here. */
static int sq_parse_options(const char *json, long *cache_kb, char *err, size_t errlen)
{
    cJSON *root, *v;
    int rc = -1;

    *cache_kb = -1;
    if (!json || !*json)
        return 0;
    root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, errlen, "store options are not a JSON object");
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "cache_kb");
    if (v) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;

        if (d < 0 || d > SQ_CACHE_KB_MAX || d != (double)(long)d) {
            snprintf(err, errlen, "store option cache_kb: must be an integer 0-%u",
                     SQ_CACHE_KB_MAX);
            goto out;
        }
        *cache_kb = (long)d;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Read one integer from a pragma or query. */
static int sq_query_int(sqlite3 *db, const char *sql, sqlite3_int64 *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

static pthread_once_t sq_vfs_once = PTHREAD_ONCE_INIT;
static int sq_vfs_rc = SQLITE_ERROR;

/* ---- the checkpoint thread ----
 * Checkpoints run on a thread of the store's own, through connections of
 * its own (one per database, opened there on first use): a PASSIVE
 * checkpoint copies committed WAL frames into the database file while the
 * loop thread's connections go on writing, and the WAL restarts from its
 * beginning at the next write transaction once every frame is copied.
 * Its connections use the "parley-walbuf-push" VFS, so a checkpoint's
 * writes reach the disk in steps rather than all at its closing sync, and
 * it pushes the state WAL's frames after each state commit (sq_walbuf.c).
 * The thread touches nothing of the store but the ck_ fields and the
 * paths, which do not change while it runs. */

#define SQ_CK_STATE 1u      /* checkpoint the state database */
#define SQ_CK_LOG 2u        /* checkpoint the log database */
#define SQ_CK_PUSH_STATE 4u /* push the state WAL's new frames to the disk */
#define SQ_CK_TRIM 8u       /* cut a WAL back to its limit: one step per pass */

static void sq_ckpt_request(pl_store *s, unsigned what, sqlite3_file *trim, int i)
{
    pthread_mutex_lock(&s->ck_mu);
    if (trim)
        s->ck_trim[i] = trim;
    s->ck_want |= what;
    pthread_cond_signal(&s->ck_cond);
    pthread_mutex_unlock(&s->ck_mu);
}

static sqlite3 *sq_ckpt_conn(pl_store *s, const char *path)
{
    sqlite3 *db = NULL;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        sq_vfs_rc == SQLITE_OK ? SQ_WALBUF_PUSH_VFS : NULL) != SQLITE_OK ||
        sqlite3_exec(db, s->sync_on ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=OFF",
                     NULL, NULL, NULL) != SQLITE_OK) {
        sq_log(s, PL_LOG_WARN, "checkpoints of %s: cannot open it: %s", path,
               db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    /* No checkpoints of its own when it closes; the store's connections
     * do that. */
    sqlite3_wal_autocheckpoint(db, 0);
    return db;
}

static void *sq_ckpt_main(void *arg)
{
    pl_store *s = arg;
    sqlite3 *conn[2] = { NULL, NULL };
    const char *paths[2] = { s->path, s->lpath };

    int swal_fd = -1;

    pthread_mutex_lock(&s->ck_mu);
    for (;;) {
        while (!s->ck_stop && !s->ck_want)
            pthread_cond_wait(&s->ck_cond, &s->ck_mu);
        if (s->ck_stop)
            break;
        unsigned want = s->ck_want;
        s->ck_want = 0;
        pthread_mutex_unlock(&s->ck_mu);
        /* A state commit's frames are written, not synced: start them to
         * the disk now and wait for them here, so a checkpoint's opening
         * sync of the WAL does not find megabytes to write while the log's
         * syncs queue behind it (see sq_walbuf.c, "parley-walbuf-push").
         * Advisory: an error is left for the syncs to meet. */
        if (want & SQ_CK_PUSH_STATE)
            sq_walbuf_push(&swal_fd, s->swal_path);
        for (int i = 0; i < 2; i++) {
            int rc;

            if (!(want & (1u << i)))
                continue;
            if (!conn[i] && !(conn[i] = sq_ckpt_conn(s, paths[i])))
                continue;
            int frames = 0, copied = 0;
            rc = sqlite3_wal_checkpoint_v2(conn[i], "main", SQLITE_CHECKPOINT_PASSIVE, &frames,
                                           &copied);
            if (i == 0 && rc == SQLITE_OK && frames > 0 && copied == frames)
                __atomic_store_n(&s->ck_state_copied, frames, __ATOMIC_RELEASE);
            if (rc != SQLITE_OK && rc != SQLITE_BUSY)
                sq_log(s, PL_LOG_WARN, "checkpoint of %s: %s", paths[i], sqlite3_errmsg(conn[i]));
        }
        /* A WAL's cut (sq_walbuf.c), a step per pass, so that checkpoints
         * asked for meanwhile go first and each step holds up a write to
         * that WAL for at most one step's ftruncate. */
        pthread_mutex_lock(&s->ck_mu);
        if (want & SQ_CK_TRIM) {
            for (int i = 0; i < 2; i++) {
                sqlite3_file *f = s->ck_trim[i];

                if (!f)
                    continue;
                pthread_mutex_unlock(&s->ck_mu);
                int more = sq_walbuf_trim(f);
                pthread_mutex_lock(&s->ck_mu);
                if (more)
                    s->ck_want |= SQ_CK_TRIM;
                else if (s->ck_trim[i] == f)
                    s->ck_trim[i] = NULL;
            }
        }
    }
    pthread_mutex_unlock(&s->ck_mu);
    for (int i = 0; i < 2; i++)
        sqlite3_close(conn[i]);
    if (swal_fd >= 0)
        close(swal_fd);
    return NULL;
}

static int sq_ckpt_start(pl_store *s)
{
    if (pthread_mutex_init(&s->ck_mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&s->ck_cond, NULL) != 0) {
        pthread_mutex_destroy(&s->ck_mu);
        return -1;
    }
    s->ck_init = 1;
    int rc = pthread_create(&s->ck_thread, NULL, sq_ckpt_main, s);
    if (rc != 0)
        return rc;
    s->ck_running = 1;
    return 0;
}

/* Before the store's connections close: theirs close first, so that the
 * last connection, which checkpoints and removes the WAL, is the store's. */
static void sq_ckpt_stop(pl_store *s)
{
    if (s->ck_running) {
        pthread_mutex_lock(&s->ck_mu);
        s->ck_stop = 1;
        pthread_cond_signal(&s->ck_cond);
        pthread_mutex_unlock(&s->ck_mu);
        pthread_join(s->ck_thread, NULL);
        s->ck_running = 0;
    }
    if (s->ck_init) {
        pthread_cond_destroy(&s->ck_cond);
        pthread_mutex_destroy(&s->ck_mu);
        s->ck_init = 0;
    }
}

/* After every commit (SQLite calls it once the commit is done): the
 * commit's WAL frames, gathered by the parley-walbuf VFS (sq_walbuf.c),
 * go to the file now, so log_sync on the sync thread finds them there;
 * then the checkpoint SQLite's own hook would run. A failed write fails
 * the statement that committed, and log_sync from then on: frames the
 * file does not hold must never be reported durable. */
static int sq_wal_hook(void *arg, sqlite3 *db, const char *zdb, int frames)
{
    pl_store *s = arg;
    sqlite3_file *f = NULL;
    int rc = SQLITE_OK;

    if (sqlite3_file_control(db, zdb, SQLITE_FCNTL_JOURNAL_POINTER, &f) != SQLITE_OK)
        f = NULL;
    if (f)
        rc = sq_walbuf_flush(f);
    if (rc != SQLITE_OK) {
        /* Either file: a state commit whose frames are not on disk must
         * not be made durable by a later sync either. */
        __atomic_store_n(&s->wal_broken, 1, __ATOMIC_RELEASE);
        sq_log(s, PL_LOG_ERROR, "writing WAL frames of %s: %s", sqlite3_db_filename(db, zdb),
               sqlite3_errstr(rc));
        return rc;
    }
    int log = db == s->ldb;
    int ckpt = frames >= (log ? SQ_LOG_CKPT_PAGES : SQ_STATE_CKPT_PAGES) &&
               (log || !s->restarting);
    /* The state WAL is long enough to make it restart: once the checkpoint
     * this commit asks for has copied it all (sq_state_restart). */
    if (!log && !s->restarting) {
        /* Fewer frames than before: it restarted by itself. */
        if (frames < s->restart_at)
            s->restart_at = s->restart_rounds = 0;
        if (s->restart_at || frames >= SQ_STATE_RESTART_PAGES)
            s->restart_at = frames;
    }
    unsigned what = ckpt ? (log ? SQ_CK_LOG : SQ_CK_STATE) : 0;
    /* The log's WAL is synced batch by batch; the state's only by
     * checkpoints and compactions, so its frames are pushed. */
    if (!log && s->sync_on)
        what |= SQ_CK_PUSH_STATE;
    /* The commit that first wrote a restarted WAL asked for its cut. */
    int trim = sq_walbuf_trim_pending(f);
    if (trim)
        what |= SQ_CK_TRIM;
    if (s->ck_running) {
        if (what)
            sq_ckpt_request(s, what, trim ? f : NULL, log);
    } else if (ckpt) {
        sqlite3_wal_checkpoint(db, zdb); /* while opening */
    }
    return SQLITE_OK;
}


static void sq_vfs_init(void)
{
    /* SQLite's allocation statistics take a process-wide mutex in every
     * malloc and free (5 % of the loop thread at 64 x 32, round 5); the
     * store reads none of them. It only takes effect before SQLite's first
     * use in the process, and is harmless (SQLITE_MISUSE) after it. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sq_vfs_rc = sq_walbuf_register();
}

/* Open one of the two databases with the settings both share: the
 * parley-walbuf VFS, WAL mode, the sync level and the WAL hook. */
static int sq_conn_open(pl_store *s, const char *path, long wal_limit, sqlite3 **out,
                        char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc;

    *out = NULL;
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         sq_vfs_rc == SQLITE_OK ? SQ_WALBUF_VFS : NULL);
    if (rc != SQLITE_OK) {
        int sys = db ? sqlite3_system_errno(db) : 0;

        snprintf(err, errlen, "cannot open %s: %s", path,
                 sys ? strerror(sys) : db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return rc;
    }
    *out = db;
    /* SQLite quietly falls back to read-only on a write-protected file;
     * say so now rather than fail on the first write. */
    if (sqlite3_db_readonly(db, "main") == 1) {
        snprintf(err, errlen, "cannot open %s: the file is read-only", path);
        return SQLITE_READONLY;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, SQ_BUSY_TIMEOUT_MS);
    /* Refuse writes that would corrupt the file through odd SQL; costs nothing. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);

    rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *mode = sqlite3_column_text(st, 0);

        if (!mode || strcmp((const char *)mode, "wal") != 0) {
            snprintf(err, errlen, "cannot switch %s to WAL mode (journal mode stays %s)",
                     path, mode ? (const char *)mode : "unknown");
            sqlite3_finalize(st);
            return SQLITE_IOERR;
        }
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        /* A foreign or damaged file fails here, at its first read. */
        snprintf(err, errlen, "cannot open %s: %s", path, sqlite3_errmsg(db));
        return rc;
    }
    rc = sqlite3_exec(db, s->sync_on ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=OFF",
                      NULL, NULL, NULL);
    /* The WAL file is reused, not shrunk, after a checkpoint; cap what a
     * large transaction (a snapshot import) leaves behind on disk. */
    if (rc == SQLITE_OK) {
        char sql[64];

        snprintf(sql, sizeof sql, "PRAGMA journal_size_limit=%ld", wal_limit);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    if (rc == SQLITE_OK)
        sqlite3_wal_hook(db, sq_wal_hook, s);
    if (rc != SQLITE_OK)
        snprintf(err, errlen, "cannot configure %s: %s", path, sqlite3_errmsg(db));
    return rc;
}

/* Run sql and set user_version in one transaction: a crash leaves the file
 * as it was or all of it. */
static int sq_exec_versioned(sqlite3 *db, const char *path, const char *what, const char *sql,
                             int version, char *err, size_t errlen)
{
    char *msg = NULL, pragma[48];
    int rc;

    snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", version);
    rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, pragma, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot %s in %s: %s", what, path, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        if (!sqlite3_get_autocommit(db))
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

/* ---- log rows (log format 2) ----
 * A row of the log table holds the entries first..last of one append, or
 * of a part of a long one; its data is their encodings one after another:
 *   view (varint), length (varint), length bytes
 * each varint unsigned LEB128 (7 bits a byte, lowest first, the top bit
 * set on every byte but the last). Format 1 had a row per entry: an INSERT
 * per entry on append and a B-tree delete per entry on compaction took ~10
 * and ~6.5 % of the loop thread at 64 clients x 32 pipelined requests; with
 * a row per batch both cost per batch. The view stays per entry: one append
 * can carry entries of several views (a state transfer, a view change).
 * A row is capped at SQ_LOG_ROW_ENTRIES entries and about SQ_LOG_ROW_BYTES
 * bytes, so the one row a truncate or a compaction rewrites, or a read of
 * a single entry decodes, stays small; an entry larger than that has a row
 * of its own. */
#define SQ_LOG_ROW_ENTRIES 256u
#define SQ_LOG_ROW_BYTES (64u << 10)
#define SQ_VARINT_MAX 10 /* bytes of a 64-bit varint */

static size_t sq_varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t sq_varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Decode the varint at p[*pos], never reading p[n] or beyond. Returns 0
 * when the bytes end first or the value does not fit 64 bits. */
static int sq_varint_get(const uint8_t *p, size_t n, size_t *pos, uint64_t *v)
{
    uint64_t r = 0;
    unsigned shift = 0;
    size_t i;

    for (i = *pos; i < n; i++, shift += 7) {
        uint8_t b = p[i];

        /* The tenth byte holds bit 63 only, and ends the varint. */
        if (shift == 63 && b > 1)
            return 0;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pos = i + 1;
            *v = r;
            return 1;
        }
    }
    return 0;
}

/* A row's data, read entry by entry (sq_row_next). */
typedef struct sq_row {
    const uint8_t *p;
    size_t n, pos;
} sq_row;

/* The next entry of the row: 1, or 0 at the end of its data, or -1 where
 * the bytes do not decode. data points into the row (NULL when len is 0,
 * as a zero-length column reads). */
static int sq_row_next(sq_row *r, uint64_t *view, const uint8_t **data, uint32_t *len)
{
    uint64_t l;

    if (r->pos == r->n)
        return 0;
    if (!sq_varint_get(r->p, r->n, &r->pos, view) || !sq_varint_get(r->p, r->n, &r->pos, &l) ||
        l > UINT32_MAX || l > r->n - r->pos)
        return -1;
    *data = l ? r->p + r->pos : NULL;
    *len = (uint32_t)l;
    r->pos += (size_t)l;
    return 1;
}

/* Whether a row's data holds exactly the entries first..last, with ops in
 * the range log_append takes. Reads check every row before they hand out
 * any of its entries: a damaged file must never crash the server. */
static int sq_row_valid(const uint8_t *p, size_t n, uint64_t first, uint64_t last)
{
    sq_row r = { p, n, 0 };
    const uint8_t *d;
    uint64_t count = 0, view;
    uint32_t len;
    int rc;

    if (first == 0 || last < first || last > (uint64_t)INT64_MAX)
        return 0;
    while ((rc = sq_row_next(&r, &view, &d, &len)) == 1)
        count++;
    return rc == 0 && count == last - first + 1;
}

/* Where entry op starts in a valid row of entries first..: the bytes of
 * first..op-1 come before it. */
static size_t sq_row_offset(const uint8_t *p, size_t n, uint64_t first, uint64_t op)
{
    sq_row r = { p, n, 0 };
    const uint8_t *d;
    uint64_t view;
    uint32_t len;

    for (; first < op && sq_row_next(&r, &view, &d, &len) == 1; first++)
        ;
    return r.pos;
}

/* A row being built in s->lbuf (sq_row_add): entries first..last, n of
 * them, len bytes. */
typedef struct sq_row_out {
    uint64_t first, last;
    size_t n, len;
} sq_row_out;

/* Whether an entry may still join the row, within the caps. */
static int sq_row_fits(const sq_row_out *b, uint64_t view, uint32_t len)
{
    return b->n == 0 ||
           (b->n < SQ_LOG_ROW_ENTRIES &&
            b->len + sq_varint_len(view) + sq_varint_len(len) + len <= SQ_LOG_ROW_BYTES);
}

/* Append entry op, the row's next, to the row in s->lbuf. The buffer is
 * kept for the next row: it grows to the largest row written. */
static int sq_row_add(pl_store *s, sq_row_out *b, uint64_t op, uint64_t view,
                      const void *data, uint32_t len)
{
    size_t need = b->len + 2 * SQ_VARINT_MAX;

    if ((size_t)len > SIZE_MAX - need)
        return PL_ERR_NOMEM;
    need += len;
    if (need > s->lcap) {
        size_t cap = s->lcap ? s->lcap : 4096;
        uint8_t *nb;

        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        if (!(nb = realloc(s->lbuf, cap)))
            return PL_ERR_NOMEM;
        s->lbuf = nb;
        s->lcap = cap;
    }
    if (b->n++ == 0)
        b->first = op;
    b->last = op;
    b->len += sq_varint_put(s->lbuf + b->len, view);
    b->len += sq_varint_put(s->lbuf + b->len, len);
    if (len)
        memcpy(s->lbuf + b->len, data, len);
    b->len += len;
    return PL_OK;
}

/* Insert the row built so far with st (?1 first, ?2 last, ?3 data) and
 * start the next one. Returns SQLITE_OK, or SQLite's code with st not yet
 * reset, so the caller can still read the connection's message; the
 * caller resets it then. */
static int sq_row_put(pl_store *s, sqlite3_stmt *st, sq_row_out *b)
{
    int rc;

    if (b->n == 0)
        return SQLITE_OK;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)b->first);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)b->last);
    rc = sqlite3_bind_blob64(st, 3, s->lbuf, b->len, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_DONE)
        rc = SQLITE_OK;
    if (rc == SQLITE_OK)
        sq_done(st);
    b->n = b->len = 0;
    return rc;
}

/* Copy the format 1 log table src (op, view, data: a row per entry) into
 * main.log, consecutive ops grouped into rows as log_append writes them.
 * Inside the caller's transaction. */
static int sq_log_copy_v1(pl_store *s, const char *src)
{
    sqlite3_stmt *rd = NULL, *wr = NULL;
    sq_row_out b = { 0 };
    char *sql = sqlite3_mprintf("SELECT op, view, data FROM %s ORDER BY op", src);
    int rc;

    if (!sql)
        return SQLITE_NOMEM;
    rc = sqlite3_prepare_v2(s->ldb, sql, -1, &rd, NULL);
    sqlite3_free(sql);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->ldb, "INSERT INTO main.log(first, last, data)"
                                " VALUES (?1, ?2, ?3)", -1, &wr, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(rd)) == SQLITE_ROW) {
        uint64_t op = sq_col_u64(rd, 0), view = sq_col_u64(rd, 1);
        const void *data = sqlite3_column_blob(rd, 2);
        uint32_t len = (uint32_t)sqlite3_column_bytes(rd, 2);

        rc = SQLITE_OK;
        if (b.n && (op != b.last + 1 || !sq_row_fits(&b, view, len)))
            rc = sq_row_put(s, wr, &b);
        if (rc == SQLITE_OK && sq_row_add(s, &b, op, view, data, len) != PL_OK)
            rc = SQLITE_NOMEM;
    }
    if (rc == SQLITE_DONE)
        rc = sq_row_put(s, wr, &b);
    sqlite3_finalize(rd);
    sqlite3_finalize(wr);
    return rc;
}

/* sq_exec_versioned for a log database that gets a format 1 log: the SQL
 * pre, then the rows of the format 1 table src copied into main.log, then
 * the SQL post (or nothing), and user_version set, in one transaction: a
 * crash leaves the file as it was, and the next open converts it again,
 * or converted whole. */
static int sq_log_convert(pl_store *s, const char *what, const char *pre, const char *src,
                          const char *post, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->ldb, "BEGIN IMMEDIATE", NULL, NULL, &msg);

    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->ldb, pre, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sq_log_copy_v1(s, src);
    if (rc == SQLITE_OK && post)
        rc = sqlite3_exec(s->ldb, post, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->ldb, "PRAGMA user_version=" SQ_STR(SQ_LOG_SCHEMA_VERSION),
                          NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->ldb, "COMMIT", NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot %s in %s: %s", what, s->lpath,
                 msg ? msg : rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(s->ldb));
        sqlite3_free(msg);
        if (!sqlite3_get_autocommit(s->ldb))
            sqlite3_exec(s->ldb, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

/* Open (or create) the log database. A state database of schema version 2
 * or older still holds the log: its entries and its replica metadata are
 * copied over in the log database's first transaction, which also sets
 * its user_version, so a crash before that commit leaves nothing to trust
 * and the copy simply runs again; sq_open drops them from the state
 * database only afterwards. A log database of version 1 (log format 1, a
 * row per entry) is converted to format 2 in one transaction the same way. */
static int sq_open_log(pl_store *s, const char *dir, sqlite3_int64 state_version,
                       sqlite3_int64 applied, char *err, size_t errlen)
{
    sqlite3_int64 lv = 0;
    char *msg = NULL, *sql = NULL;
    int rc;

    if (sq_precreate(dir, s->lpath, s->sync_on, err, errlen) != 0)
        return SQLITE_CANTOPEN;
    if ((rc = sq_conn_open(s, s->lpath, SQ_LOG_WAL_LIMIT, &s->ldb, err, errlen)) != SQLITE_OK)
        return rc;
    if ((rc = sq_query_int(s->ldb, "PRAGMA user_version", &lv)) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", s->lpath, sqlite3_errmsg(s->ldb));
        return rc;
    }
    if (lv > SQ_LOG_SCHEMA_VERSION || lv < 0) {
        snprintf(err, errlen, "%s has schema version %lld, this plugin understands up to %d"
                 " (written by a newer parley?)", s->lpath, (long long)lv,
                 SQ_LOG_SCHEMA_VERSION);
        return SQLITE_FORMAT;
    }
    if (lv == SQ_LOG_SCHEMA_VERSION)
        return SQLITE_OK;
    if (lv == 1) {
        sq_log(s, PL_LOG_WARN, "converting the log of %s to format 2 (a row per appended"
               " batch; schema version 1 -> 2)", s->lpath);
        return sq_log_convert(s, "convert the log to format 2",
                              "ALTER TABLE log RENAME TO log_v1;"
                              "CREATE TABLE log" SQ_LOG_COLS ";",
                              "log_v1", "DROP TABLE log_v1;", err, errlen);
    }
    if (state_version >= 3 && applied > 0) {
        /* The state says ops were applied, so there was a log: a state
         * without the log it came from must not serve as a replica. */
        snprintf(err, errlen, "%s is missing or empty, but %s has applied op %lld: restore"
                 " both files of the data directory together", s->lpath, s->path,
                 (long long)applied);
        return SQLITE_CORRUPT;
    }
    if (state_version < 3 && state_version > 0) {
        sql = sqlite3_mprintf("ATTACH %Q AS old", s->path);
        if (!sql)
            return SQLITE_NOMEM;
        rc = sqlite3_exec(s->ldb, sql, NULL, NULL, &msg);
        sqlite3_free(sql);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "cannot read the log of %s: %s", s->path,
                     msg ? msg : sqlite3_errmsg(s->ldb));
            sqlite3_free(msg);
            return rc;
        }
        sq_log(s, PL_LOG_WARN, "moving the log of %s to %s (schema version %lld -> 3)",
               s->path, s->lpath, (long long)state_version);
        /* The state database's log is format 1: it arrives as format 2. */
        rc = sq_log_convert(s, "copy the log",
                            "CREATE TABLE main.meta" SQ_LOG_META_COLS ";"
                            "CREATE TABLE main.log" SQ_LOG_COLS ";"
                            "INSERT INTO main.meta SELECT key, val FROM old.meta"
                            " WHERE key <> '" SQ_APPLIED_KEY "';",
                            "old.log", NULL, err, errlen);
        sqlite3_exec(s->ldb, "DETACH old", NULL, NULL, NULL);
        return rc;
    }
    return sq_exec_versioned(s->ldb, s->lpath, "create the schema", sq_log_schema,
                             SQ_LOG_SCHEMA_VERSION, err, errlen);
}

static int sq_open(const pl_store_host *host, const pl_store_options *opt,
                   pl_store **out, char *err, size_t errlen)
{
    pl_store *s = NULL;
    sqlite3_int64 version = 0, applied = 0;
    long cache_kb;
    size_t plen;
    int rc, i;

    if (errlen)
        err[0] = '\0';
    if (!out || !opt || !opt->dir || !opt->dir[0]) {
        snprintf(err, errlen, "no data directory given");
        return PL_ERR_INVALID;
    }
    *out = NULL;
    if (sq_parse_options(opt->options_json, &cache_kb, err, errlen) != 0)
        return PL_ERR_CONFIG;

    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->wal_fd = s->swal_fd = s->lwal_fd2 = -1;
    if (host)
        s->host = *host;
    s->sync_on = opt->sync != 0;
    plen = strlen(opt->dir) + sizeof "/" SQ_LOG_FILE "-wal";
    s->path = malloc(plen);
    s->lpath = malloc(plen);
    s->wal_path = malloc(plen);
    s->swal_path = malloc(plen);
    if (!s->path || !s->lpath || !s->wal_path || !s->swal_path)
        goto nomem;
    snprintf(s->path, plen, "%s/%s", opt->dir, SQ_DB_FILE);
    snprintf(s->lpath, plen, "%s/%s", opt->dir, SQ_LOG_FILE);
    snprintf(s->wal_path, plen, "%s/%s-wal", opt->dir, SQ_LOG_FILE);
    snprintf(s->swal_path, plen, "%s/%s-wal", opt->dir, SQ_DB_FILE);

    if (sq_mkdirs(opt->dir, err, errlen) != 0 ||
        sq_precreate(opt->dir, s->path, s->sync_on, err, errlen) != 0) {
        sq_free(s);
        return PL_ERR_IO;
    }

    pthread_once(&sq_vfs_once, sq_vfs_init);
    if ((rc = sq_conn_open(s, s->path, SQ_STATE_WAL_LIMIT, &s->db, err, errlen)) != SQLITE_OK)
        goto fail_rc;
    rc = sq_query_int(s->db, "PRAGMA user_version", &version);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", s->path, sqlite3_errmsg(s->db));
        goto fail_rc;
    }
    if (version > SQ_SCHEMA_VERSION || version < 0) {
        snprintf(err, errlen, "%s has schema version %lld, this plugin understands up to %d"
                 " (written by a newer parley?)", s->path, (long long)version,
                 SQ_SCHEMA_VERSION);
        sq_free(s);
        return PL_ERR_CORRUPT;
    }
    /* The state connection's page cache holds the pages a state
     * transaction dirties until it is flushed (sq_state_flush). */
    {
        char sql[64];

        /* A negative cache_size is in KiB rather than pages. */
        snprintf(sql, sizeof sql, "PRAGMA cache_size=-%ld",
                 cache_kb >= 0 ? cache_kb : (long)SQ_STATE_CACHE_KB);
        rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
        /* Each batch is a savepoint: the first change of a page in it
         * copies the page to a sub-journal, which SQLite keeps in a
         * temporary file (two pwrites a page) unless temp_store is MEMORY. */
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(s->db, "PRAGMA temp_store=MEMORY", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "cannot configure %s: %s", s->path, sqlite3_errmsg(s->db));
            goto fail_rc;
        }
    }

    rc = SQLITE_OK;
    if (version == 0) {
        rc = sq_exec_versioned(s->db, s->path, "create the schema", sq_schema,
                               SQ_SCHEMA_VERSION, err, errlen);
    } else if (version == 1) {
        sq_log(s, PL_LOG_WARN, "%s: upgrading schema version 1 to 2 (rebuilding the"
               " message indexes; a large database takes a while)", s->path);
        rc = sq_exec_versioned(s->db, s->path, "upgrade the schema", sq_upgrade_1, 2,
                               err, errlen);
        version = 2;
    }
    if (rc != SQLITE_OK)
        goto fail_rc;
    if (version == 0)
        version = SQ_SCHEMA_VERSION;
    if ((rc = sq_query_int(s->db, "SELECT coalesce((SELECT val FROM meta WHERE key = '"
                           SQ_APPLIED_KEY "'), 0)", &applied)) != SQLITE_OK) {
        snprintf(err, errlen, "cannot read %s: %s", s->path, sqlite3_errmsg(s->db));
        goto fail_rc;
    }
    if ((rc = sq_open_log(s, opt->dir, version, applied, err, errlen)) != SQLITE_OK)
        goto fail_rc;
    if (version == 2 && (rc = sq_exec_versioned(s->db, s->path, "drop the moved log",
                                                sq_upgrade_2, SQ_SCHEMA_VERSION,
                                                err, errlen)) != SQLITE_OK)
        goto fail_rc;
    s->cur_sync = s->l_sync = s->sync_on ? SQ_SYNC_FULL : SQ_SYNC_OFF;

    for (i = 0; i < ST__COUNT; i++) {
        sqlite3 *db = i >= ST__LOG_FIRST ? s->ldb : s->db;

        rc = sqlite3_prepare_v3(db, sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "%s does not have the expected schema: %s",
                     i >= ST__LOG_FIRST ? s->lpath : s->path, sqlite3_errmsg(db));
            goto fail_rc;
        }
    }
    s->applied = (uint64_t)applied;
    /* What a crashed process left in the page cache may not be on the
     * disk: count both files unsynced until a sync says otherwise. */
    if (s->sync_on) {
        s->state_unsynced = 1;
        s->l_writes = 1;
    }
    if ((rc = sq_ckpt_start(s)) != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread: %s", strerror(rc < 0 ? ENOMEM : rc));
        sq_free(s);
        return PL_ERR_IO;
    }

    *out = s;
    return PL_OK;

nomem:
    snprintf(err, errlen, "out of memory");
    sq_free(s);
    return PL_ERR_NOMEM;
fail_rc:
    {
        int e = sq_map(rc);

        sq_free(s);
        return e == PL_OK ? PL_ERR_IO : e;
    }
}

static uint64_t sq_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* fdatasync a WAL file through a read-only descriptor of our own, opened on
 * first use: fdatasync on any descriptor of a file flushes what the
 * connection wrote through its own. The file stays the same while the
 * connection is open (SQLite removes it only when the last connection
 * closes; a checkpoint reuses or truncates it). */
static int sq_sync_wal(pl_store *s, const char *path, int *fd, const char *what)
{
    if (__atomic_load_n(&s->wal_broken, __ATOMIC_ACQUIRE))
        return PL_ERR_IO; /* the file misses committed frames */
    if (!s->sync_on)
        return PL_OK;
    if (*fd < 0 && (*fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        if (errno == ENOENT)
            return PL_OK; /* nothing written since the database was opened */
        sq_log(s, PL_LOG_ERROR, "%s: open %s: %s", what, path, strerror(errno));
        return PL_ERR_IO;
    }
    if (fdatasync(*fd) != 0) {
        sq_log(s, PL_LOG_ERROR, "%s: fdatasync %s: %s", what, path, strerror(errno));
        return PL_ERR_IO;
    }
    return PL_OK;
}

/* Log writes up to w are durable (from either thread). */
static void sq_log_synced(pl_store *s, uint64_t w)
{
    uint64_t cur = __atomic_load_n(&s->l_synced, __ATOMIC_ACQUIRE);

    while (cur < w && !__atomic_compare_exchange_n(&s->l_synced, &cur, w, 0, __ATOMIC_ACQ_REL,
                                                   __ATOMIC_ACQUIRE))
        ;
}

/* A log commit is done; durable says it ran with synchronous=FULL, which
 * syncs the whole WAL and with it every earlier log write. */
static void sq_log_wrote(pl_store *s, int durable)
{
    uint64_t w = s->l_writes + 1;

    __atomic_store_n(&s->l_writes, w, __ATOMIC_RELEASE);
    if (durable || !s->sync_on)
        sq_log_synced(s, w);
}

/* Make the state WAL start over. SQLite restarts a WAL at a write
 * transaction that began when every frame was already copied into the
 * database. The loop's state transaction begins right after the last one
 * committed, before the checkpoint thread has copied that commit's frames,
 * so under load that happened only by luck, and the WAL grew past 100 MiB
 * between restarts (a CI run's disk-bound test). So once a commit leaves
 * SQ_STATE_RESTART_PAGES frames (restart_at), and the checkpoint thread
 * has copied all of them (ck_state_copied), the state transaction is
 * committed early, at the end of the next batch. If it holds at most
 * SQ_STATE_RESTART_TAIL_MS of changes, that commit's checkpoint is the
 * loop's own, right after it: it copies those few frames and syncs the WAL
 * and the database file, as any checkpoint at synchronous=NORMAL does, and
 * the next transaction restarts the WAL. If it holds more (the thread took
 * longer than that), the thread copies them too and the loop waits for it
 * once more: copying a whole 100 ms commit's frames on the loop took 8-15
 * ms. If the loop's checkpoint cannot finish (the thread holds the
 * checkpoint lock), the thread is asked to copy what is there and the loop
 * waits for it again. */
static int sq_state_restart_due(pl_store *s)
{
    return s->restart_at &&
           __atomic_load_n(&s->ck_state_copied, __ATOMIC_ACQUIRE) >= s->restart_at;
}

static void sq_state_restart(pl_store *s)
{
    int frames = 0, copied = 0;
    uint64_t t0 = sq_now_ms();
    int rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_PASSIVE, &frames,
                                       &copied);

    s->restarting = 0;
    if (rc == SQLITE_OK && copied == frames) {
        s->restart_at = 0;
        s->restart_rounds = 0;
        __atomic_store_n(&s->ck_state_copied, 0, __ATOMIC_RELEASE);
    } else {
        s->restart_at = frames > s->restart_at ? frames : s->restart_at + 1;
        if (s->ck_running)
            sq_ckpt_request(s, SQ_CK_STATE, NULL, 0);
    }
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        sq_log(s, PL_LOG_WARN, "checkpoint of %s: %s", s->path, sqlite3_errmsg(s->db));
    else
        sq_log(s, PL_LOG_DEBUG, "state WAL checkpointed on the loop so that it restarts:"
               " %d of %d frames copied in %" PRIu64 " ms", copied, frames, sq_now_ms() - t0);
}

/* Commit the state transaction, and with durable also sync it.
 *
 * The state's batches (begin .. commit) are savepoints inside one SQLite
 * transaction that is committed here, every SQ_STATE_FLUSH_MS under load
 * (sq_commit) or when idle (sq_state_flush_idle), instead of once per
 * batch: a batch of sends touches a leaf page of each message index per
 * recipient, and committing each batch wrote those pages again and again
 * (12 KiB of WAL per send at 64 clients; the disk's whole bandwidth). The
 * state lives in its own file, so the log's syncs do not write it either.
 * The commit is not synced (synchronous=NORMAL): a crash may lose state
 * commits, never log entries the core was told are durable, and the core
 * replays the log from applied_op() + 1. What keeps that true:
 *  - the log is synced first, so no state commit reaches the disk before
 *    the log entries it was applied from (store.h, minor 1);
 *  - log_compact drops entries only below a state synced here (durable).
 * Called on the loop thread outside a batch. */
static int sq_state_flush(pl_store *s, int durable)
{
    int err;

    if ((err = sq_state_check(s)) != PL_OK)
        return err;
    if (s->state_open) {
        if (s->sync_on && __atomic_load_n(&s->l_synced, __ATOMIC_ACQUIRE) <
                          __atomic_load_n(&s->l_writes, __ATOMIC_ACQUIRE)) {
            uint64_t w = __atomic_load_n(&s->l_writes, __ATOMIC_ACQUIRE);

            if ((err = sq_sync_wal(s, s->wal_path, &s->lwal_fd2, "syncing the log")) != PL_OK)
                return err;
            sq_log_synced(s, w);
        }
        if (sq_state_restart_due(s)) {
            s->restarting = s->restart_rounds >= 2 ||
                            sq_now_ms() - s->state_since_ms <= SQ_STATE_RESTART_TAIL_MS;
            s->restart_rounds++;
        }
        if ((err = sq_simple(s, ST_COMMIT)) != PL_OK) {
            s->restarting = 0;
            /* Whether SQLite kept the transaction open or not, the batches
             * in it can no longer be trusted to reach the file. */
            sq_rollback(s);
            s->state_lost = 1;
            sq_log(s, PL_LOG_ERROR, "%s: committing the state failed; the state after op %"
                   PRIu64 " is refused until parleyd restarts and replays it from the log",
                   s->path, s->applied);
            return err;
        }
        s->state_open = 0;
        s->state_unsynced = 1;
        if (s->restarting)
            sq_state_restart(s);
    }
    if (durable && s->state_unsynced) {
        if ((err = sq_sync_wal(s, s->swal_path, &s->swal_fd, "syncing the state")) != PL_OK)
            return err;
        s->state_unsynced = 0;
    }
    if (durable)
        s->durable_applied = s->applied;
    return PL_OK;
}

/* Store ABI minor 2: the core's idle call. */
static int sq_state_flush_idle(pl_store *s)
{
    /* After a lost transaction every state call fails (logged once). */
    if (!s || s->in_txn || !s->state_open || s->state_lost)
        return PL_OK;
    if (sq_now_ms() - s->state_since_ms < SQ_STATE_FLUSH_MS)
        return PL_OK;
    return sq_state_flush(s, 0);
}

static int sq_undo_all(pl_store *s);

/* End a batch without its changes (sq_undo_all). */
static void sq_batch_abort(pl_store *s)
{
    if (sq_state_check(s) != PL_OK) {
        s->in_txn = 0;
        s->n_undo = 0;
        return;
    }
    if (sq_undo_all(s) != PL_OK) {
        sq_rollback(s);
        sq_state_check(s);
        if (!s->state_lost) {
            s->state_lost = 1;
            sq_log(s, PL_LOG_ERROR, "%s: a batch could not be rolled back; the state after op %"
                   PRIu64 " is refused until parleyd restarts", s->path, s->applied);
        }
    }
    s->in_txn = 0;
}

static void sq_close(pl_store *s)
{
    if (!s)
        return;
    if (s->in_txn) {
        sq_log(s, PL_LOG_WARN, "closed inside a transaction; its changes are discarded");
        sq_batch_abort(s);
    }
    sq_read_end(s);
    if (s->state_open && sq_state_flush(s, 0) != PL_OK)
        sq_rollback(s);
    sq_free(s);
}

/* ---- replica metadata ----
 * Keys set inside a state transaction live in the state database, with
 * the state they go with; keys set outside one are durable on return, in
 * the log database. A read looks in the state database first. */

static int sq_meta_get_in(pl_store *s, sqlite3_stmt *st, const char *key, uint64_t *val)
{
    int rc, err = PL_OK;

    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *val = sq_col_u64(st, 0);
    else if (rc == SQLITE_DONE)
        err = PL_ERR_NOT_FOUND;
    else
        err = sq_fail_db(s, sqlite3_db_handle(st), "meta_get");
    sq_done(st);
    return err;
}

static int sq_meta_get(pl_store *s, const char *key, uint64_t *val)
{
    sqlite3_stmt *st;
    int err;

    if (!key || !val)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_META_GET)))
        return PL_ERR_INTERNAL;
    err = sq_meta_get_in(s, st, key, val);
    if (err != PL_ERR_NOT_FOUND)
        return err;
    if (!(st = sq_stmt(s, ST_L_META_GET)))
        return PL_ERR_INTERNAL;
    return sq_meta_get_in(s, st, key, val);
}

static int sq_meta_set(pl_store *s, const char *key, uint64_t val)
{
    sqlite3_stmt *st;
    uint64_t old;
    int err;

    if (!key || !*key)
        return PL_ERR_INVALID;
    /* "applied" moves only with the state it describes (commit). */
    if (strcmp(key, SQ_APPLIED_KEY) == 0) {
        sq_log(s, PL_LOG_ERROR, "meta key \"%s\" is reserved for the applied op-number;"
               " it is set by commit()", SQ_APPLIED_KEY);
        return PL_ERR_INVALID;
    }
    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    if (s->in_txn) {
        size_t mark = s->n_undo;

        if ((err = sq_undo_meta(s, key)) != PL_OK)
            return err;
        if (!(st = sq_stmt(s, ST_META_SET)))
            return PL_ERR_INTERNAL;
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sq_bind_u64(st, 2, val);
        if ((err = sq_exec_stmt(s, st, "meta_set")) != PL_OK)
            sq_undo_drop(s, mark);
        return err;
    }
    /* A value a state transaction set would shadow this one: it goes, and
     * durably, before the new value is written (no key the core uses is
     * set both ways, so this costs nothing in practice). */
    if (!(st = sq_stmt(s, ST_META_GET)))
        return PL_ERR_INTERNAL;
    err = sq_meta_get_in(s, st, key, &old);
    if (err == PL_OK) {
        if (!s->state_open && (err = sq_set_sync(s, SQ_SYNC_NORMAL)) != PL_OK)
            return err;
        if (!(st = sq_stmt(s, ST_META_DEL)))
            return PL_ERR_INTERNAL;
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if ((err = sq_exec_stmt(s, st, "meta_set")) != PL_OK)
            return err;
        if (!s->state_open)
            s->state_unsynced = 1;
        if ((err = sq_state_flush(s, 1)) != PL_OK)
            return err;
    } else if (err != PL_ERR_NOT_FOUND) {
        return err;
    }
    /* Outside a transaction this autocommits and must be durable on return. */
    if ((err = sq_set_lsync(s, SQ_SYNC_FULL)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_L_META_SET)))
        return PL_ERR_INTERNAL;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sq_bind_u64(st, 2, val);
    if ((err = sq_exec_stmt(s, st, "meta_set")) == PL_OK)
        sq_log_wrote(s, 1);
    return err;
}

/* ---- replicated log (the log database, autocommit reads) ---- */

static int sq_log_last(pl_store *s, uint64_t *first, uint64_t *last)
{
    sqlite3_stmt *st = sq_stmt(s, ST_LOG_BOUNDS);
    int rc, err = PL_OK;

    if (!st)
        return PL_ERR_INTERNAL;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        /* NULL (empty log) reads as 0. */
        if (first)
            *first = sq_col_u64(st, 0);
        if (last)
            *last = sq_col_u64(st, 1);
    } else {
        err = sq_fail_db(s, s->ldb, "log_bounds");
    }
    sq_done(st);
    return err;
}

/* Durable log writes may not happen inside a state batch: store.h has the
 * core make them between batches. */
static int sq_outside_txn(pl_store *s, const char *what)
{
    if (s->in_txn) {
        sq_log(s, PL_LOG_ERROR, "%s inside a state transaction: it must be durable on"
               " return, so call it before begin() or after commit()", what);
        return PL_ERR_INVALID;
    }
    return sq_set_lsync(s, SQ_SYNC_FULL);
}

static int sq_log_write(pl_store *s, const pl_log_entry *e, size_t n, int level)
{
    sqlite3_stmt *st;
    sq_row_out row = { 0 };
    uint64_t last = 0;
    size_t i;
    int err;

    if (n == 0)
        return PL_OK;
    if (!e)
        return PL_ERR_INVALID;
    for (i = 0; i < n; i++) {
        /* op 0 would read back as "empty log" from log_bounds */
        if (e[i].op != e[0].op + i || e[i].op == 0 || e[i].op > (uint64_t)INT64_MAX ||
            (e[i].len && !e[i].data)) {
            sq_log(s, PL_LOG_ERROR, "log_append: entry %zu has op %" PRIu64
                   ": ops must be consecutive, 1 to 2^63-1, with data", i, e[i].op);
            return PL_ERR_INVALID;
        }
    }
    if ((err = sq_outside_txn(s, "log_append")) != PL_OK)
        return err;
    if (level != SQ_SYNC_FULL && (err = sq_set_lsync(s, level)) != PL_OK)
        return err;
    if ((err = sq_simple(s, ST_L_BEGIN)) != PL_OK)
        return err;
    if ((err = sq_log_last(s, NULL, &last)) != PL_OK)
        goto fail;
    if (last != 0 && e[0].op != last + 1) {
        sq_log(s, PL_LOG_ERROR, "log_append: first op %" PRIu64 " does not continue the log"
               " (last op %" PRIu64 ")", e[0].op, last);
        err = PL_ERR_INVALID;
        goto fail;
    }
    if (!(st = sq_stmt(s, ST_LOG_APPEND))) {
        err = PL_ERR_INTERNAL;
        goto fail;
    }
    /* A row per batch, or per SQ_LOG_ROW_ENTRIES entries (or bytes) of a
     * long one (sq_row_add). */
    for (i = 0; i <= n; i++) {
        if (row.n && (i == n || !sq_row_fits(&row, e[i].view, e[i].len)) &&
            sq_row_put(s, st, &row) != SQLITE_OK) {
            err = sq_fail_db(s, s->ldb, "log_append");
            sq_done(st);
            goto fail;
        }
        if (i < n && (err = sq_row_add(s, &row, e[i].op, e[i].view, e[i].data,
                                       e[i].len)) != PL_OK) {
            sq_log(s, PL_LOG_ERROR, "log_append: no memory for a log row of %zu bytes (op %"
                   PRIu64 ", %" PRIu32 " bytes)", row.len + e[i].len, e[i].op, e[i].len);
            goto fail;
        }
    }
    /* One COMMIT: one WAL sync for the whole batch (none when NORMAL). */
    if ((err = sq_simple(s, ST_L_COMMIT)) != PL_OK)
        goto fail;
    sq_log_wrote(s, level == SQ_SYNC_FULL);
    return PL_OK;
fail:
    sq_lrollback(s);
    return err;
}

static int sq_log_append(pl_store *s, const pl_log_entry *e, size_t n)
{
    return sq_log_write(s, e, n, SQ_SYNC_FULL);
}

static int sq_log_append_nosync(pl_store *s, const pl_log_entry *e, size_t n)
{
    return sq_log_write(s, e, n, SQ_SYNC_NORMAL);
}

/* Runs on the core's sync thread, beside the loop thread's calls: it
 * touches nothing but wal_fd, wal_path and the atomic counters. What was
 * committed before it read l_writes is in the file, so the fdatasync
 * covers it. */
static int sq_log_sync(pl_store *s)
{
    uint64_t w = __atomic_load_n(&s->l_writes, __ATOMIC_ACQUIRE);
    int err = sq_sync_wal(s, s->wal_path, &s->wal_fd, "log_sync");

    if (err == PL_OK)
        sq_log_synced(s, w);
    return err;
}

static int sq_log_bounds(pl_store *s, uint64_t *first, uint64_t *last)
{
    if (!first || !last)
        return PL_ERR_INVALID;
    return sq_log_last(s, first, last);
}

/* A row of the log that does not decode to its entries first..last: the
 * file is damaged. Named with the row's first op for whoever inspects it. */
static int sq_log_damaged(pl_store *s, const char *what, uint64_t first, uint64_t last)
{
    sq_log(s, PL_LOG_ERROR, "%s: %s: the log row of ops %" PRIu64 "..%" PRIu64 " (first = %"
           PRIu64 ") does not hold those entries: the file is damaged", what, s->lpath,
           first, last, first);
    return PL_ERR_CORRUPT;
}

static int sq_log_read(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud)
{
    sqlite3_stmt *st;
    uint64_t prev = 0;
    int rc = SQLITE_DONE, stop = 0, err = PL_OK;

    if (!cb)
        return PL_ERR_INVALID;
    if (from > to || from > (uint64_t)INT64_MAX)
        return PL_OK;
    if (!(st = sq_stmt(s, ST_LOG_READ)))
        return PL_ERR_INTERNAL;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)from);
    sqlite3_bind_int64(st, 2, sq_clamp(to));
    while (!stop && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t first = sq_col_u64(st, 0), last = sq_col_u64(st, 1), op;
        const uint8_t *p = sqlite3_column_blob(st, 2);
        sq_row r = { p, (size_t)sqlite3_column_bytes(st, 2), 0 };
        pl_log_entry le;

        /* Rows ascend without overlapping; each is checked whole before
         * any of its entries goes out. */
        if (first <= prev || !sq_row_valid(r.p, r.n, first, last)) {
            err = sq_log_damaged(s, "log_read", first, last);
            break;
        }
        prev = last;
        /* The ends of the range can lie inside a row: skip what is out. */
        for (op = first; op <= last && op <= to; op++) {
            sq_row_next(&r, &le.view, &le.data, &le.len);
            if (op < from)
                continue;
            le.op = op;
            if (cb(ud, &le) != 0) {
                stop = 1;
                break;
            }
        }
    }
    if (!stop && err == PL_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = sq_fail_db(s, s->ldb, "log_read");
    sq_done(st);
    return err;
}

/* Inside a log transaction: the row holding op `at`, if it extends past
 * `keep_to` (truncate) or starts before `keep_from` (compact), is cut down to
 * the entries keep_from..keep_to of it. One of the two is the row's own end. */
static int sq_log_cut(pl_store *s, const char *what, uint64_t at, uint64_t keep_from,
                      uint64_t keep_to)
{
    sqlite3_stmt *st = sq_stmt(s, ST_LOG_ROW_AT);
    uint64_t first, last;
    size_t off;
    int rc, err = PL_OK, tail;

    if (!st)
        return PL_ERR_INTERNAL;
    sqlite3_bind_int64(st, 1, sq_clamp(at));
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        if (rc != SQLITE_DONE)
            err = sq_fail_db(s, s->ldb, what);
        sq_done(st);
        return err;
    }
    first = sq_col_u64(st, 0);
    last = sq_col_u64(st, 1);
    /* Checked even when nothing of it is cut: a damaged row that a call
     * meets is reported, not left for later. */
    {
        const uint8_t *p = sqlite3_column_blob(st, 2);
        size_t n = (size_t)sqlite3_column_bytes(st, 2);

        if (!sq_row_valid(p, n, first, last)) {
            sq_done(st);
            return sq_log_damaged(s, what, first, last);
        }
        tail = last > keep_to;
        if (!tail && (first >= keep_from || last < keep_from)) {
            sq_done(st); /* nothing of it to cut */
            return PL_OK;
        }
        off = sq_row_offset(p, n, first, tail ? keep_to + 1 : keep_from);
    }
    sq_done(st);
    if (!(st = sq_stmt(s, tail ? ST_LOG_CUT_TAIL : ST_LOG_CUT_HEAD)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, first);
    sq_bind_u64(st, 2, tail ? keep_to : keep_from);
    /* The tail's length in bytes, or the 1-based byte where the head's
     * kept part begins. */
    sqlite3_bind_int64(st, 3, (sqlite3_int64)(tail ? off : off + 1));
    return sq_exec_stmt(s, st, what);
}

/* Drop the rows past `after` and cut the one holding it, in one
 * transaction committed with synchronous=FULL: durable on return. */
static int sq_log_truncate(pl_store *s, uint64_t after)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_outside_txn(s, "log_truncate")) != PL_OK)
        return err;
    if ((err = sq_simple(s, ST_L_BEGIN)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_LOG_TRUNCATE))) {
        err = PL_ERR_INTERNAL;
        goto fail;
    }
    sqlite3_bind_int64(st, 1, sq_clamp(after));
    if ((err = sq_exec_stmt(s, st, "log_truncate")) != PL_OK ||
        (after > 0 && (err = sq_log_cut(s, "log_truncate", after, 0, after)) != PL_OK) ||
        (err = sq_simple(s, ST_L_COMMIT)) != PL_OK)
        goto fail;
    sq_log_wrote(s, 1);
    return PL_OK;
fail:
    sq_lrollback(s);
    return err;
}

/* The entries go only once the state of every op below `before` is
 * durable (store.h): the state transaction is committed and synced first,
 * unless an earlier call already made a state at or past before - 1
 * durable. The deletion itself need not be durable: entries that come
 * back after a crash are still valid log entries and are compacted again
 * later. The rows below `before` go and the row holding it is cut to start
 * there, in one transaction. */
static int sq_log_compact(pl_store *s, uint64_t before)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    if (s->in_txn) {
        sq_log(s, PL_LOG_ERROR, "log_compact inside a state transaction: the state it needs"
               " durable is not committed yet");
        return PL_ERR_INVALID;
    }
    if (before == 0)
        return PL_OK;
    /* Entries below before may go once the state that holds them is on
     * disk for good. What was synced stays so whatever is committed after
     * it (a crash loses at most the unsynced commits, and a WAL restarts
     * only after a checkpoint synced its frames into the file), so a round's
     * first step syncs and its later ones, below the same applied op, need
     * not: with the long state transaction always open, every step synced
     * the state and each took ~17 ms of the loop thread (round 5). */
    if (before - 1 > s->durable_applied && (err = sq_state_flush(s, 1)) != PL_OK)
        return err;
    if ((err = sq_set_lsync(s, SQ_SYNC_NORMAL)) != PL_OK)
        return err;
    if ((err = sq_simple(s, ST_L_BEGIN)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_LOG_COMPACT))) {
        err = PL_ERR_INTERNAL;
        goto fail;
    }
    sqlite3_bind_int64(st, 1, sq_clamp(before));
    /* What is left below before is at most the row holding it. */
    if ((err = sq_exec_stmt(s, st, "log_compact")) != PL_OK ||
        (err = sq_log_cut(s, "log_compact", before - 1, before, UINT64_MAX)) != PL_OK ||
        (err = sq_simple(s, ST_L_COMMIT)) != PL_OK)
        goto fail;
    sq_log_wrote(s, 0);
    return PL_OK;
fail:
    sq_lrollback(s);
    return err;
}

/* ---- batch undo ----
 * A batch (begin .. commit) runs inside the long state transaction
 * (sq_state_flush), so abort() cannot roll SQLite back. SQLite's own way,
 * a savepoint per batch, copies every page a batch first touches into a
 * sub-journal (4 KiB and a few mallocs each, ~60 pages for a batch of
 * sends): it cost 20-30 % of the loop thread at 64 clients. Instead each
 * change notes how to undo itself (a send: "delete message N", and its
 * client row as it was), and abort() plays the notes backwards. Notes read
 * old rows with their own statements and copy them into ubuf, never into
 * s->buf, which may hold the record being written. The note of a change
 * that fails is dropped again (sq_undo_drop). */

enum sq_undo_kind {
    U_ACC_DEL, U_ACC_PUT, U_SES_DEL, U_SES_PUT, U_MSG_DEL, U_MSG_PUT, U_MSG_FLAGS,
    U_CLI_DEL, U_CLI_PUT, U_META_DEL, U_META_SET
};

struct sq_undo {
    int kind;
    uint64_t n[5];            /* ids and numbers of the row */
    size_t off[3];            /* byte fields in ubuf; field 2 is the key when */
    uint32_t len[3];          /* the key is bytes (a token, a meta key) */
};

static int sq_undo_on(pl_store *s)
{
    return s->in_txn && !s->undoing;
}

static void sq_undo_drop(pl_store *s, size_t mark)
{
    if (s->n_undo > mark)
        s->n_undo = mark;
}

static sq_undo *sq_undo_add(pl_store *s, int kind)
{
    sq_undo *u;

    if (s->n_undo == s->cap_undo) {
        size_t cap = s->cap_undo ? s->cap_undo * 2 : 64;
        sq_undo *nu = realloc(s->undo, cap * sizeof *nu);

        if (!nu)
            return NULL;
        s->undo = nu;
        s->cap_undo = cap;
    }
    u = &s->undo[s->n_undo++];
    memset(u, 0, sizeof *u);
    u->kind = kind;
    return u;
}

static int sq_undo_bytes(pl_store *s, sq_undo *u, int i, const void *p, size_t n)
{
    if (s->ulen + n > s->ucap) {
        size_t cap = s->ucap ? s->ucap : 4096;
        uint8_t *nb;

        while (cap < s->ulen + n)
            cap *= 2;
        if (!(nb = realloc(s->ubuf, cap)))
            return PL_ERR_NOMEM;
        s->ubuf = nb;
        s->ucap = cap;
    }
    if (n)
        memcpy(s->ubuf + s->ulen, p, n);
    u->off[i] = s->ulen;
    u->len[i] = (uint32_t)n;
    s->ulen += n;
    return PL_OK;
}

static int sq_undo_col(pl_store *s, sq_undo *u, int i, sqlite3_stmt *st, int col)
{
    const void *p = sqlite3_column_blob(st, col);

    return sq_undo_bytes(s, u, i, p, (size_t)sqlite3_column_bytes(st, col));
}

static pl_str sq_undo_str(const pl_store *s, const sq_undo *u, int i)
{
    pl_str v = { NULL, u->len[i] };

    if (u->len[i])
        v.ptr = (const char *)s->ubuf + u->off[i];
    return v;
}

typedef int (*sq_undo_copy)(pl_store *s, sq_undo *u, sqlite3_stmt *st);

/* Step st (a lookup of the row a change is about to touch, key bound) and
 * note: restore_kind with the row's columns (copy) when it is there,
 * gone_kind (if >= 0) when it is not. Either carries the key: the number
 * k in n[0] and, when key is given, its bytes in field 2. */
static int sq_undo_note(pl_store *s, enum sq_stmt id, int restore_kind, sq_undo_copy copy,
                        int gone_kind, uint64_t k, const pl_str *key)
{
    sqlite3_stmt *st = s->st[id];
    sq_undo *u = NULL;
    int rc = sqlite3_step(st), err = PL_OK;

    if (rc == SQLITE_ROW) {
        if (!(u = sq_undo_add(s, restore_kind)))
            err = PL_ERR_NOMEM;
        else
            err = copy(s, u, st);
    } else if (rc == SQLITE_DONE) {
        if (gone_kind >= 0 && !(u = sq_undo_add(s, gone_kind)))
            err = PL_ERR_NOMEM;
    } else {
        err = sq_fail(s, sq_sql[id]);
    }
    if (u && err == PL_OK) {
        if (rc == SQLITE_DONE)
            u->n[0] = k;
        if (key)
            err = sq_undo_bytes(s, u, 2, key->ptr, key->len);
    }
    if (u && err != PL_OK)
        s->n_undo--;
    sq_done(st);
    return err;
}

static int sq_copy_acc(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    u->n[0] = sq_col_u64(st, 0);
    u->n[1] = sq_col_u64(st, 3);
    if (sq_undo_col(s, u, 0, st, 1) != PL_OK)
        return PL_ERR_NOMEM;
    return sq_undo_col(s, u, 1, st, 2);
}

static int sq_copy_ses(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    (void)s;
    u->n[0] = sq_col_u64(st, 1);
    u->n[1] = sq_col_u64(st, 2);
    return PL_OK; /* the token is the key */
}

static int sq_copy_msg(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    u->n[0] = sq_col_u64(st, 0);
    u->n[1] = sq_col_u64(st, 1);
    u->n[2] = sq_col_u64(st, 2);
    u->n[3] = sq_col_u64(st, 6);
    u->n[4] = sq_col_u64(st, 7);
    if (sq_undo_col(s, u, 0, st, 3) != PL_OK || sq_undo_col(s, u, 1, st, 4) != PL_OK)
        return PL_ERR_NOMEM;
    return sq_undo_col(s, u, 2, st, 5);
}

static int sq_copy_flags(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    (void)s;
    u->n[0] = sq_col_u64(st, 0);
    u->n[1] = sq_col_u64(st, 7);
    return PL_OK;
}

static int sq_copy_cli(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    u->n[0] = sq_col_u64(st, 0);
    u->n[1] = sq_col_u64(st, 1);
    u->n[2] = sq_col_u64(st, 2);
    return sq_undo_col(s, u, 0, st, 3);
}

static int sq_copy_meta(pl_store *s, sq_undo *u, sqlite3_stmt *st)
{
    (void)s;
    u->n[1] = sq_col_u64(st, 0);
    return PL_OK; /* the key's bytes are the key */
}

static int sq_undo_account(pl_store *s, uint64_t uid)
{
    sqlite3_stmt *st;

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(st = sq_stmt(s, ST_ACC_GET_UID)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    return sq_undo_note(s, ST_ACC_GET_UID, U_ACC_PUT, sq_copy_acc, U_ACC_DEL, uid, NULL);
}

static int sq_undo_session(pl_store *s, pl_str token_hash)
{
    sqlite3_stmt *st;

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(st = sq_stmt(s, ST_SES_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, token_hash);
    return sq_undo_note(s, ST_SES_GET, U_SES_PUT, sq_copy_ses, U_SES_DEL, 0, &token_hash);
}

/* Every session of uid, each to be put back. */
static int sq_undo_sessions_of(pl_store *s, uint64_t uid)
{
    sqlite3_stmt *st;
    size_t mark = s->n_undo;
    int rc, err = PL_OK;

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(st = sq_stmt(s, ST_SES_BY_UID)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    while (err == PL_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        sq_undo *u = sq_undo_add(s, U_SES_PUT);

        if (!u)
            err = PL_ERR_NOMEM;
        else if ((err = sq_copy_ses(s, u, st)) == PL_OK)
            err = sq_undo_col(s, u, 2, st, 0);
    }
    if (err == PL_OK && rc != SQLITE_DONE)
        err = sq_fail(s, "session_delete_uid");
    if (err != PL_OK)
        sq_undo_drop(s, mark);
    sq_done(st);
    return err;
}

static int sq_undo_message_put(pl_store *s, uint64_t id)
{
    sq_undo *u;

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(u = sq_undo_add(s, U_MSG_DEL)))
        return PL_ERR_NOMEM;
    u->n[0] = id;
    return PL_OK;
}

/* kind U_MSG_PUT (a delete: the whole row) or U_MSG_FLAGS (the flags). */
static int sq_undo_message(pl_store *s, uint64_t id, int kind)
{
    sqlite3_stmt *st;

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(st = sq_stmt(s, ST_MSG_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, id);
    return sq_undo_note(s, ST_MSG_GET, kind, kind == U_MSG_PUT ? sq_copy_msg : sq_copy_flags,
                        -1, id, NULL);
}

/* A client's row needs one note per batch: undo plays notes backwards, so
 * the batch's first note for it restores the row as it was before the
 * batch whatever came after. A pipelining client sends up to a batch's
 * worth of requests, and reading its row again for each was 6 % of the
 * loop at 64 x 32 (docs/performance.md, round 5). s->cli_noted remembers
 * where each client's note went; an entry counts only while that note is
 * still in the batch (dropped notes, later batches) and is that client's. */
static int sq_undo_client(pl_store *s, uint64_t client_id)
{
    sqlite3_stmt *st;
    int err;

    if (!sq_undo_on(s))
        return PL_OK;
    size_t slot = (size_t)((client_id * 0x9E3779B97F4A7C15ull) >> 56); /* < SQ_CLI_NOTED */
    size_t at = s->cli_noted[slot].at;
    if (s->cli_noted[slot].id == client_id && at < s->n_undo &&
        (s->undo[at].kind == U_CLI_PUT || s->undo[at].kind == U_CLI_DEL) &&
        s->undo[at].n[0] == client_id)
        return PL_OK;
    if (!(st = sq_stmt(s, ST_CLI_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, client_id);
    err = sq_undo_note(s, ST_CLI_GET, U_CLI_PUT, sq_copy_cli, U_CLI_DEL, client_id, NULL);
    if (err == PL_OK) {
        s->cli_noted[slot].id = client_id;
        s->cli_noted[slot].at = s->n_undo - 1;
    }
    return err;
}

/* A key of the state database's meta table. */
static int sq_undo_meta(pl_store *s, const char *key)
{
    sqlite3_stmt *st;
    pl_str k = pl_str_c(key);

    if (!sq_undo_on(s))
        return PL_OK;
    if (!(st = sq_stmt(s, ST_META_GET)))
        return PL_ERR_INTERNAL;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    return sq_undo_note(s, ST_META_GET, U_META_SET, sq_copy_meta, U_META_DEL, 0, &k);
}

/* Run a keyed statement of the undo (a delete, an update) on the state. */
static int sq_undo_exec(pl_store *s, enum sq_stmt id, const sq_undo *u, int by_key)
{
    sqlite3_stmt *st = sq_stmt(s, id);

    if (!st)
        return PL_ERR_INTERNAL;
    if (by_key) {
        pl_str k = sq_undo_str(s, u, 2);

        if (id == ST_META_DEL || id == ST_META_SET)
            sqlite3_bind_text(st, 1, k.len ? k.ptr : "", (int)k.len, SQLITE_STATIC);
        else
            sq_bind_str(st, 1, k);
    } else {
        sq_bind_u64(st, 1, u->n[0]);
    }
    if (id == ST_META_SET)
        sq_bind_u64(st, 2, u->n[1]);
    else if (id == ST_MSG_SET_FLAGS)
        sqlite3_bind_int64(st, 2, (sqlite3_int64)u->n[1]);
    return sq_exec_stmt(s, st, "abort: undoing a change");
}

static int sq_account_put(pl_store *s, const pl_account_rec *a);
static int sq_session_put(pl_store *s, const pl_session_rec *r);
static int sq_message_put(pl_store *s, const pl_message_rec *m);
static int sq_client_put(pl_store *s, const pl_client_rec *c);

static int sq_undo_one(pl_store *s, const sq_undo *u)
{
    switch (u->kind) {
    case U_ACC_DEL:
        return sq_undo_exec(s, ST_ACC_DELETE, u, 0);
    case U_ACC_PUT: {
        pl_account_rec a = { u->n[0], sq_undo_str(s, u, 0), sq_undo_str(s, u, 1), u->n[1] };
        return sq_account_put(s, &a);
    }
    case U_SES_DEL:
        return sq_undo_exec(s, ST_SES_DELETE, u, 1);
    case U_SES_PUT: {
        pl_session_rec r = { sq_undo_str(s, u, 2), u->n[0], u->n[1] };
        return sq_session_put(s, &r);
    }
    case U_MSG_DEL:
        return sq_undo_exec(s, ST_MSG_DELETE, u, 0);
    case U_MSG_PUT: {
        pl_message_rec m = { u->n[0], u->n[1], u->n[2], sq_undo_str(s, u, 0),
                             sq_undo_str(s, u, 1), sq_undo_str(s, u, 2), u->n[3],
                             (uint32_t)u->n[4] };
        return sq_message_put(s, &m);
    }
    case U_MSG_FLAGS:
        return sq_undo_exec(s, ST_MSG_SET_FLAGS, u, 0);
    case U_CLI_DEL:
        return sq_undo_exec(s, ST_CLI_DEL, u, 0);
    case U_CLI_PUT: {
        pl_client_rec c = { u->n[0], u->n[1], u->n[2], sq_undo_str(s, u, 0) };
        return sq_client_put(s, &c);
    }
    case U_META_DEL:
        return sq_undo_exec(s, ST_META_DEL, u, 1);
    case U_META_SET:
        return sq_undo_exec(s, ST_META_SET, u, 1);
    }
    return PL_ERR_INTERNAL;
}

/* Play the batch's notes backwards. Returns an error if one failed: the
 * state transaction then holds part of the batch and must go. */
static int sq_undo_all(pl_store *s)
{
    int err = PL_OK;

    s->undoing = 1;
    while (s->n_undo > 0 && err == PL_OK)
        err = sq_undo_one(s, &s->undo[--s->n_undo]);
    s->undoing = 0;
    s->n_undo = 0;
    s->ulen = 0;
    return err;
}

/* ---- state transactions ---- */

static int sq_begin(pl_store *s)
{
    int err;

    if (s->in_txn) {
        sq_log(s, PL_LOG_ERROR, "begin: a transaction is already open");
        return PL_ERR_INVALID;
    }
    sq_read_end(s);
    if ((err = sq_state_check(s)) != PL_OK)
        return err;
    if (!s->state_open) {
        /* State commits need not sync: the durable log replays them. */
        if ((err = sq_set_sync(s, SQ_SYNC_NORMAL)) != PL_OK)
            return err;
        if ((err = sq_simple(s, ST_BEGIN)) != PL_OK)
            return err;
        s->state_open = 1;
        s->state_since_ms = sq_now_ms();
    }
    s->n_undo = 0;
    s->ulen = 0;
    s->in_txn = 1;
    return PL_OK;
}

static int sq_commit(pl_store *s, uint64_t applied_op)
{
    sqlite3_stmt *st;
    int err;

    if (!s->in_txn) {
        sq_log(s, PL_LOG_ERROR, "commit without begin");
        return PL_ERR_INVALID;
    }
    if ((err = sq_txn_ok(s)) != PL_OK)
        goto fail;
    /* No note for "applied": nothing after this statement can fail the
     * batch, and a failed statement changed nothing. */
    if (!(st = sq_stmt(s, ST_META_SET))) {
        err = PL_ERR_INTERNAL;
        goto fail;
    }
    sqlite3_bind_text(st, 1, SQ_APPLIED_KEY, -1, SQLITE_STATIC);
    sq_bind_u64(st, 2, applied_op);
    if ((err = sq_exec_stmt(s, st, "commit: applied op")) != PL_OK)
        goto fail;
    s->n_undo = 0;
    s->ulen = 0;
    s->in_txn = 0;
    s->applied = applied_op;
    if (sq_now_ms() - s->state_since_ms >= SQ_STATE_FLUSH_MS || sq_state_restart_due(s))
        return sq_state_flush(s, 0);
    return PL_OK;
fail:
    /* Nothing of a failed commit may become visible later. */
    sq_batch_abort(s);
    return err;
}

static void sq_abort(pl_store *s)
{
    if (!s->in_txn)
        return;
    sq_batch_abort(s);
}

static uint64_t sq_applied_op(pl_store *s)
{
    return s->applied;
}

/* ---- accounts ---- */

static void sq_row_account(sqlite3_stmt *st, pl_account_rec *a)
{
    a->uid = sq_col_u64(st, 0);
    a->name = sq_col_blob(st, 1);
    a->pwhash = sq_col_text(st, 2);
    a->created_ms = sq_col_u64(st, 3);
}

/* Run a single-row account query and copy the row into the store buffer. */
static int sq_account_get(pl_store *s, sqlite3_stmt *st, pl_account_rec *out, const char *what)
{
    int rc = sqlite3_step(st), err = PL_OK;

    if (rc == SQLITE_ROW) {
        pl_str *f[] = { &out->name, &out->pwhash };

        sq_row_account(st, out);
        err = sq_keep(s, f, 2);
    } else if (rc == SQLITE_DONE) {
        err = PL_ERR_NOT_FOUND;
    } else {
        err = sq_fail(s, what);
    }
    sq_done(st);
    return err;
}

static int sq_account_put(pl_store *s, const pl_account_rec *a)
{
    sqlite3_stmt *st;
    int err;

    if (!a)
        return PL_ERR_INVALID;
    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_account(s, a->uid)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_ACC_PUT)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, a->uid);
    sq_bind_str(st, 2, a->name);
    sq_bind_text(st, 3, a->pwhash);
    sq_bind_u64(st, 4, a->created_ms);
    if (sqlite3_step(st) == SQLITE_DONE) {
        err = PL_OK;
    } else if (sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_UNIQUE) {
        /* The UNIQUE index backs invariant 4: one live account per name. */
        sq_log(s, PL_LOG_ERROR, "account_put: uid %" PRIu64 ": the name belongs to"
               " another account", a->uid);
        err = PL_ERR_USER_EXISTS;
    } else {
        err = sq_fail(s, "account_put");
    }
    sq_done(st);
    if (err != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_account_get_name(pl_store *s, pl_str name, pl_account_rec *out)
{
    sqlite3_stmt *st;

    if (!out)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_ACC_GET_NAME)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, name);
    return sq_account_get(s, st, out, "account_get_name");
}

static int sq_account_get_uid(pl_store *s, uint64_t uid, pl_account_rec *out)
{
    sqlite3_stmt *st;

    if (!out)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_ACC_GET_UID)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    return sq_account_get(s, st, out, "account_get_uid");
}

static int sq_account_delete(pl_store *s, uint64_t uid)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_account(s, uid)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_ACC_DELETE)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    if ((err = sq_exec_change(s, st, "account_delete")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_account_scan(pl_store *s, pl_str start, pl_account_cb cb, void *ud)
{
    sqlite3_stmt *st;
    int rc, err = PL_OK;

    if (!cb)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_ACC_SCAN)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, start);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        pl_account_rec a;

        sq_row_account(st, &a);
        if (cb(ud, &a) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = sq_fail(s, "account_scan");
    sq_done(st);
    return err;
}

static int sq_account_count(pl_store *s, uint64_t *n)
{
    sqlite3_stmt *st;
    int err = PL_OK;

    if (!n)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_ACC_COUNT)))
        return PL_ERR_INTERNAL;
    if (sqlite3_step(st) == SQLITE_ROW)
        *n = sq_col_u64(st, 0);
    else
        err = sq_fail(s, "account_count");
    sq_done(st);
    return err;
}

/* ---- sessions ---- */

static void sq_row_session(sqlite3_stmt *st, pl_session_rec *r)
{
    r->token_hash = sq_col_blob(st, 0);
    r->uid = sq_col_u64(st, 1);
    r->created_ms = sq_col_u64(st, 2);
}

static int sq_session_put(pl_store *s, const pl_session_rec *r)
{
    sqlite3_stmt *st;
    int err;

    if (!r)
        return PL_ERR_INVALID;
    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_session(s, r->token_hash)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_SES_PUT)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, r->token_hash);
    sq_bind_u64(st, 2, r->uid);
    sq_bind_u64(st, 3, r->created_ms);
    if ((err = sq_exec_stmt(s, st, "session_put")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_session_get(pl_store *s, pl_str token_hash, pl_session_rec *out)
{
    sqlite3_stmt *st;
    int rc, err = PL_OK;

    if (!out)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_SES_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, token_hash);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        pl_str *f[] = { &out->token_hash };

        sq_row_session(st, out);
        err = sq_keep(s, f, 1);
    } else if (rc == SQLITE_DONE) {
        err = PL_ERR_NOT_FOUND;
    } else {
        err = sq_fail(s, "session_get");
    }
    sq_done(st);
    return err;
}

static int sq_session_delete(pl_store *s, pl_str token_hash)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_session(s, token_hash)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_SES_DELETE)))
        return PL_ERR_INTERNAL;
    sq_bind_str(st, 1, token_hash);
    if ((err = sq_exec_change(s, st, "session_delete")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

/* Deleting the sessions of a uid that has none is not an error. */
static int sq_session_delete_uid(pl_store *s, uint64_t uid)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_sessions_of(s, uid)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_SES_DELETE_UID)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    if ((err = sq_exec_stmt(s, st, "session_delete_uid")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_session_scan(pl_store *s, pl_session_cb cb, void *ud)
{
    sqlite3_stmt *st;
    int rc, err = PL_OK;

    if (!cb)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_SES_SCAN)))
        return PL_ERR_INTERNAL;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        pl_session_rec r;

        sq_row_session(st, &r);
        if (cb(ud, &r) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = sq_fail(s, "session_scan");
    sq_done(st);
    return err;
}

/* ---- messages ---- */

static void sq_row_message(sqlite3_stmt *st, pl_message_rec *m)
{
    m->id = sq_col_u64(st, 0);
    m->from_uid = sq_col_u64(st, 1);
    m->to_uid = sq_col_u64(st, 2);
    m->from_name = sq_col_blob(st, 3);
    m->to_name = sq_col_blob(st, 4);
    m->body = sq_col_blob(st, 5);
    m->time_ms = sq_col_u64(st, 6);
    m->flags = (uint32_t)sqlite3_column_int64(st, 7);
}

static int sq_message_put(pl_store *s, const pl_message_rec *m)
{
    sqlite3_stmt *st;
    int err;

    if (!m)
        return PL_ERR_INVALID;
    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_message_put(s, m->id)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_MSG_PUT)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, m->id);
    sq_bind_u64(st, 2, m->from_uid);
    sq_bind_u64(st, 3, m->to_uid);
    sq_bind_str(st, 4, m->from_name);
    sq_bind_str(st, 5, m->to_name);
    sq_bind_str(st, 6, m->body);
    sq_bind_u64(st, 7, m->time_ms);
    sqlite3_bind_int64(st, 8, m->flags);
    /* A duplicate id fails the primary key: PL_ERR_INVALID (and the note
     * to delete it goes: the message there is not this one). */
    if ((err = sq_exec_stmt(s, st, "message_put")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_message_get(pl_store *s, uint64_t id, pl_message_rec *out)
{
    sqlite3_stmt *st;
    int rc, err = PL_OK;

    if (!out)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_MSG_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        pl_str *f[] = { &out->from_name, &out->to_name, &out->body };

        sq_row_message(st, out);
        err = sq_keep(s, f, 3);
    } else if (rc == SQLITE_DONE) {
        err = PL_ERR_NOT_FOUND;
    } else {
        err = sq_fail(s, "message_get");
    }
    sq_done(st);
    return err;
}

static int sq_message_set_flags(pl_store *s, uint64_t id, uint32_t flags)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_message(s, id, U_MSG_FLAGS)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_MSG_SET_FLAGS)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, id);
    sqlite3_bind_int64(st, 2, flags);
    if ((err = sq_exec_change(s, st, "message_set_flags")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_message_delete(pl_store *s, uint64_t id)
{
    sqlite3_stmt *st;
    int err;

    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_message(s, id, U_MSG_PUT)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_MSG_DELETE)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, id);
    if ((err = sq_exec_change(s, st, "message_delete")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_message_scan(pl_store *s, const pl_msg_query *q, pl_message_cb cb, void *ud)
{
    sqlite3_stmt *st;
    enum sq_stmt id;
    int rc, err = PL_OK;

    if (!q || !cb)
        return PL_ERR_INVALID;
    switch (q->kind) {
    case PL_Q_UNREAD: id = ST_Q_UNREAD; break;
    case PL_Q_READ: id = ST_Q_READ; break;
    case PL_Q_CONVO: id = q->uid == q->peer_uid ? ST_Q_CONVO_SELF : ST_Q_CONVO; break;
    case PL_Q_RECEIVED: id = ST_Q_RECEIVED; break;
    case PL_Q_SENT: id = ST_Q_SENT; break;
    case PL_Q_ALL: id = ST_Q_ALL; break;
    default:
        sq_log(s, PL_LOG_ERROR, "message_scan: unknown query kind %" PRIu32, q->kind);
        return PL_ERR_INVALID;
    }
    if (!(st = sq_read_stmt(s, id)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, q->uid);
    if (q->kind == PL_Q_CONVO)
        sq_bind_u64(st, 2, q->peer_uid);
    else
        sqlite3_bind_int64(st, 2, sq_clamp(q->after_id));
    /* LIMIT -1 is "no limit" in SQLite. */
    sqlite3_bind_int64(st, 3, q->limit == 0 ? -1 : sq_clamp(q->limit));
    sqlite3_bind_int64(st, 4, sq_clamp(q->offset));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        pl_message_rec m;

        sq_row_message(st, &m);
        if (cb(ud, &m) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = sq_fail(s, "message_scan");
    sq_done(st);
    return err;
}

static int sq_message_counts(pl_store *s, uint64_t uid, uint64_t *unread, uint64_t *read)
{
    sqlite3_stmt *st;
    int err = PL_OK;

    if (!unread || !read)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_MSG_COUNTS)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, uid);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *unread = sq_col_u64(st, 0);
        *read = sq_col_u64(st, 1);
    } else {
        err = sq_fail(s, "message_counts");
    }
    sq_done(st);
    return err;
}

/* ---- client table ---- */

static void sq_row_client(sqlite3_stmt *st, pl_client_rec *c)
{
    c->client_id = sq_col_u64(st, 0);
    c->request_no = sq_col_u64(st, 1);
    c->op = sq_col_u64(st, 2);
    c->reply = sq_col_blob(st, 3);
}

static int sq_client_get(pl_store *s, uint64_t client_id, pl_client_rec *out)
{
    sqlite3_stmt *st;
    int rc, err = PL_OK;

    if (!out)
        return PL_ERR_INVALID;
    if (!(st = sq_read_stmt(s, ST_CLI_GET)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, client_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        pl_str *f[] = { &out->reply };

        sq_row_client(st, out);
        err = sq_keep(s, f, 1);
    } else if (rc == SQLITE_DONE) {
        err = PL_ERR_NOT_FOUND;
    } else {
        err = sq_fail(s, "client_get");
    }
    sq_done(st);
    return err;
}

static int sq_client_put(pl_store *s, const pl_client_rec *c)
{
    sqlite3_stmt *st;
    int err;

    if (!c)
        return PL_ERR_INVALID;
    if ((err = sq_txn_ok(s)) != PL_OK)
        return err;
    size_t mark = s->n_undo;
    if ((err = sq_undo_client(s, c->client_id)) != PL_OK)
        return err;
    if (!(st = sq_stmt(s, ST_CLI_PUT)))
        return PL_ERR_INTERNAL;
    sq_bind_u64(st, 1, c->client_id);
    sq_bind_u64(st, 2, c->request_no);
    sq_bind_u64(st, 3, c->op);
    sq_bind_str(st, 4, c->reply);
    if ((err = sq_exec_stmt(s, st, "client_put")) != PL_OK)
        sq_undo_drop(s, mark);
    return err;
}

static int sq_client_scan(pl_store *s, pl_client_cb cb, void *ud)
{
    static const enum sq_stmt halves[] = { ST_CLI_SCAN_LO, ST_CLI_SCAN_HI };
    int h, rc, err = PL_OK, stop = 0;

    if (!cb)
        return PL_ERR_INVALID;
    for (h = 0; h < 2 && !stop && err == PL_OK; h++) {
        sqlite3_stmt *st = sq_read_stmt(s, halves[h]);

        if (!st)
            return PL_ERR_INTERNAL;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            pl_client_rec c;

            sq_row_client(st, &c);
            if (cb(ud, &c) != 0) {
                stop = 1;
                break;
            }
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = sq_fail(s, "client_scan");
        sq_done(st);
    }
    return err;
}

/* ---- the descriptor ---- */

static const pl_store_plugin sq_plugin = {
    .abi_version = PL_STORE_ABI_VERSION,
    .name = "sqlite",
    .description = "SQLite per server, WAL mode: <dir>/parley.db (state),"
                   " <dir>/parley-log.db (log)",
    .open = sq_open,
    .close = sq_close,
    .meta_get = sq_meta_get,
    .meta_set = sq_meta_set,
    .log_append = sq_log_append,
    .log_bounds = sq_log_bounds,
    .log_read = sq_log_read,
    .log_truncate = sq_log_truncate,
    .log_compact = sq_log_compact,
    .begin = sq_begin,
    .commit = sq_commit,
    .abort = sq_abort,
    .applied_op = sq_applied_op,
    .account_put = sq_account_put,
    .account_get_name = sq_account_get_name,
    .account_get_uid = sq_account_get_uid,
    .account_delete = sq_account_delete,
    .account_scan = sq_account_scan,
    .account_count = sq_account_count,
    .session_put = sq_session_put,
    .session_get = sq_session_get,
    .session_delete = sq_session_delete,
    .session_delete_uid = sq_session_delete_uid,
    .session_scan = sq_session_scan,
    .message_put = sq_message_put,
    .message_get = sq_message_get,
    .message_set_flags = sq_message_set_flags,
    .message_delete = sq_message_delete,
    .message_scan = sq_message_scan,
    .message_counts = sq_message_counts,
    .client_get = sq_client_get,
    .client_put = sq_client_put,
    .client_scan = sq_client_scan,
    .log_append_nosync = sq_log_append_nosync,
    .log_sync = sq_log_sync,
    .state_flush = sq_state_flush_idle,
};

PL_STORE_DECLARE_MINOR;

PL_EXPORT const pl_store_plugin *parley_store_plugin(void)
{
    return &sq_plugin;
}
