/*
 * test_store_sqlite.c — what only the SQLite store has: its file format.
 *
 * A database written by schema version 1 (five message indexes) must open
 * under the current plugin, be upgraded in place to its two indexes, and
 * answer every message query exactly as before. The version 1 schema below
 * is a copy of what the plugin created then; it must never change.
 *
 * Schema version 3 moved the log and the replica metadata into a second
 * file, parley-log.db: an old file's log must arrive there whole, also when
 * the move was interrupted, and a state without its log must not open.
 * The state transaction spans batches: it must reach the file when the
 * core's idle call (state_flush) comes, on close, and when a compaction
 * drops entries whose state is not yet durable (and only then).
 *
 * Log format 2 (log user_version 2) keeps a row per appended batch: reads,
 * truncation and compaction whose bounds fall inside a row, the row caps,
 * the conversion of a format 1 file, and damaged rows are tested here with
 * the rows counted and damaged through sqlite3 directly.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <parley/store.h>

#include "loader.h"

static const char *g_path;
static const pl_store_plugin *S;
static char g_dir[256];

static const char v1_schema[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, val INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE log(op INTEGER PRIMARY KEY, view INTEGER NOT NULL, data BLOB NOT NULL);"
    "CREATE TABLE accounts(uid INTEGER PRIMARY KEY, name BLOB UNIQUE NOT NULL,"
    " pwhash TEXT NOT NULL, created INTEGER NOT NULL);"
    "CREATE TABLE sessions(token_hash BLOB PRIMARY KEY, uid INTEGER NOT NULL,"
    " created INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX sessions_uid ON sessions(uid);"
    "CREATE TABLE messages(id INTEGER PRIMARY KEY, from_uid INTEGER NOT NULL,"
    " to_uid INTEGER NOT NULL, from_name BLOB NOT NULL, to_name BLOB NOT NULL,"
    " body BLOB NOT NULL, time INTEGER NOT NULL, flags INTEGER NOT NULL);"
    "CREATE INDEX msg_unread ON messages(to_uid) WHERE (flags & 5) = 0;"
    "CREATE INDEX msg_read ON messages(to_uid) WHERE (flags & 5) = 1;"
    "CREATE INDEX msg_recv ON messages(to_uid) WHERE (flags & 4) = 0;"
    "CREATE INDEX msg_sent ON messages(from_uid) WHERE (flags & 2) = 0;"
    "CREATE INDEX msg_pair ON messages(from_uid, to_uid);"
    "CREATE TABLE clients(client_id INTEGER PRIMARY KEY, request_no INTEGER NOT NULL,"
    " op INTEGER NOT NULL, reply BLOB NOT NULL);"
    "PRAGMA user_version=1;";

/* Messages 1..40 between uids 1, 2 and 3; message i has flags i % 8, so
 * every combination of read and both delete flags occurs. */
#define N_MSGS 40u

static void write_v1(const char *file)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    ck_assert_int_eq(sqlite3_open(file, &db), SQLITE_OK);
    int rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL; BEGIN;", NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, v1_schema, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "INSERT INTO accounts VALUES (1, CAST('ann' AS BLOB), 'h', 1),"
                          " (2, CAST('bob' AS BLOB), 'h', 1), (3, CAST('cy' AS BLOB), 'h', 1);"
                          "INSERT INTO meta VALUES ('applied', 7), ('vr_view', 9),"
                          " ('next_uid', 4);"
                          "INSERT INTO log VALUES (5, 1, CAST('e5' AS BLOB)),"
                          " (6, 1, CAST('e6' AS BLOB)), (7, 2, CAST('e7' AS BLOB)),"
                          " (8, 2, CAST('e8' AS BLOB));",
                          NULL, NULL, &msg);
    for (unsigned i = 1; rc == SQLITE_OK && i <= N_MSGS; i++) {
        char sql[200];
        snprintf(sql, sizeof sql, "INSERT INTO messages VALUES (%u, %u, %u, CAST('f' AS BLOB),"
                 " CAST('t' AS BLOB), CAST('b%u' AS BLOB), %u, %u)",
                 i, 1 + i % 3, 1 + (i / 3) % 3, i, i, i % 8);
        rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "writing the version 1 database: %s", msg ? msg : "?");
    sqlite3_close(db);
}

static uint64_t from_of(unsigned i) { return 1 + i % 3; }
static uint64_t to_of(unsigned i) { return 1 + (i / 3) % 3; }

/* Whether message i is in query q's answer (store.h's definitions). */
static int expected(const pl_msg_query *q, unsigned i)
{
    uint32_t f = i % 8;
    int recv_vis = to_of(i) == q->uid && !(f & PL_MSGF_DEL_RECIPIENT);
    int sent_vis = from_of(i) == q->uid && !(f & PL_MSGF_DEL_SENDER);
    switch (q->kind) {
    case PL_Q_UNREAD: return recv_vis && !(f & PL_MSGF_READ) && i > q->after_id;
    case PL_Q_READ: return recv_vis && (f & PL_MSGF_READ);
    case PL_Q_RECEIVED: return recv_vis;
    case PL_Q_SENT: return sent_vis;
    case PL_Q_CONVO:
        if (q->uid == q->peer_uid)
            return from_of(i) == q->uid && to_of(i) == q->uid && (f & 6) != 6;
        return (sent_vis && to_of(i) == q->peer_uid) || (recv_vis && from_of(i) == q->peer_uid);
    default: return 0;
    }
}

typedef struct got {
    uint64_t ids[N_MSGS + 1];
    size_t n;
} got;

static int collect(void *ud, const pl_message_rec *m)
{
    got *g = ud;
    if (g->n <= N_MSGS)
        g->ids[g->n++] = m->id;
    return 0;
}

static void check_query(pl_store *st, pl_msg_query q)
{
    got g = { .n = 0 };
    ck_assert_int_eq(S->message_scan(st, &q, collect, &g), PL_OK);
    int desc = q.kind == PL_Q_READ || q.kind == PL_Q_CONVO;
    size_t k = 0;
    for (unsigned j = 1; j <= N_MSGS; j++) {
        unsigned i = desc ? N_MSGS + 1 - j : j;
        if (!expected(&q, i))
            continue;
        ck_assert_msg(k < g.n && g.ids[k] == i,
                      "query kind %u uid %" PRIu64 " peer %" PRIu64 ": answer %zu should be"
                      " message %u, got %" PRIu64 " (of %zu)", q.kind, q.uid, q.peer_uid, k, i,
                      k < g.n ? g.ids[k] : 0, g.n);
        k++;
    }
    ck_assert_msg(k == g.n, "query kind %u uid %" PRIu64 ": %zu messages, expected %zu",
                  q.kind, q.uid, g.n, k);
}

static int count_rows(const char *file, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;
    ck_assert_int_eq(sqlite3_open_v2(file, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static int log_cat(void *ud, const pl_log_entry *e)
{
    char *out = ud;
    size_t n = strlen(out);
    snprintf(out + n, 256 - n, "%s%" PRIu64 ":%" PRIu64 ":%.*s", n ? " " : "", e->op, e->view,
             (int)e->len, (const char *)e->data);
    return 0;
}

/* The log and the replica metadata of write_v1's file, through the store. */
static void check_moved_log(pl_store *st)
{
    uint64_t first = 0, last = 0, v = 0;
    char got_log[256] = "";
    ck_assert_int_eq(S->log_bounds(st, &first, &last), PL_OK);
    ck_assert_uint_eq(first, 5);
    ck_assert_uint_eq(last, 8);
    ck_assert_int_eq(S->log_read(st, 1, 100, log_cat, got_log), PL_OK);
    ck_assert_str_eq(got_log, "5:1:e5 6:1:e6 7:2:e7 8:2:e8");
    ck_assert_int_eq(S->meta_get(st, "vr_view", &v), PL_OK);
    ck_assert_uint_eq(v, 9);
    ck_assert_int_eq(S->meta_get(st, "next_uid", &v), PL_OK);
    ck_assert_uint_eq(v, 4);
    ck_assert_uint_eq(S->applied_op(st), 7);
}

/* A fresh directory under g_dir for one test. */
static void test_dir(char *dir, size_t len, const char *name)
{
    snprintf(dir, len, "%s/%s", g_dir, name);
    ck_assert_msg(mkdir(dir, 0700) == 0, "mkdir %s: %s", dir, strerror(errno));
}

/* The store, opened on dir (sync on or off). */
static pl_store *open_in(const char *dir, int sync)
{
    char err[512] = "";
    pl_store_options opt = { .dir = dir, .sync = sync, .options_json = NULL };
    pl_store *st = NULL;
    ck_assert_msg(S->open(NULL, &opt, &st, err, sizeof err) == PL_OK, "open %s: %s", dir, err);
    return st;
}

START_TEST(upgrade_from_version_1)
{
    char file[300], lfile[300], err[512] = "";
    snprintf(file, sizeof file, "%s/parley.db", g_dir);
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", g_dir);
    write_v1(file);

    pl_store_options opt = { .dir = g_dir, .sync = 0, .options_json = NULL };
    pl_store *st = NULL;
    ck_assert_msg(S->open(NULL, &opt, &st, err, sizeof err) == PL_OK, "open: %s", err);
    ck_assert_uint_eq(S->applied_op(st), 7);
    check_moved_log(st);
    for (uint64_t u = 1; u <= 3; u++) {
        for (uint64_t p = 1; p <= 3; p++)
            check_query(st, (pl_msg_query){ .kind = PL_Q_CONVO, .uid = u, .peer_uid = p });
        check_query(st, (pl_msg_query){ .kind = PL_Q_UNREAD, .uid = u });
        check_query(st, (pl_msg_query){ .kind = PL_Q_UNREAD, .uid = u, .after_id = 20 });
        check_query(st, (pl_msg_query){ .kind = PL_Q_READ, .uid = u });
        check_query(st, (pl_msg_query){ .kind = PL_Q_RECEIVED, .uid = u });
        check_query(st, (pl_msg_query){ .kind = PL_Q_SENT, .uid = u });
        uint64_t unread = 0, read = 0, want_unread = 0, want_read = 0;
        for (unsigned i = 1; i <= N_MSGS; i++) {
            want_unread += expected(&(pl_msg_query){ .kind = PL_Q_UNREAD, .uid = u }, i);
            want_read += expected(&(pl_msg_query){ .kind = PL_Q_READ, .uid = u }, i);
        }
        ck_assert_int_eq(S->message_counts(st, u, &unread, &read), PL_OK);
        ck_assert_uint_eq(unread, want_unread);
        ck_assert_uint_eq(read, want_read);
    }
    /* Marking read moves a message between msg_to's two ranges. */
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->message_set_flags(st, 8, PL_MSGF_READ), PL_OK); /* 8 % 8 = 0: unread */
    ck_assert_int_eq(S->commit(st, 8), PL_OK);
    uint64_t unread = 0, read = 0;
    ck_assert_int_eq(S->message_counts(st, to_of(8), &unread, &read), PL_OK);
    got g = { .n = 0 };
    pl_msg_query rq = { .kind = PL_Q_READ, .uid = to_of(8), .limit = 1 };
    ck_assert_int_eq(S->message_scan(st, &rq, collect, &g), PL_OK);
    ck_assert_msg(g.n == 1 && g.ids[0] >= 8, "newest read message after marking 8 read");
    S->close(st);

    ck_assert_int_eq(count_rows(file, "PRAGMA user_version"), 3);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM sqlite_master WHERE name = 'log'"), 0);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM meta"), 1); /* "applied" */
    ck_assert_int_eq(count_rows(lfile, "PRAGMA user_version"), 2);
    /* Log format 2: the four consecutive entries make one row. */
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 1);
    ck_assert_int_eq(count_rows(lfile, "SELECT first FROM log"), 5);
    ck_assert_int_eq(count_rows(lfile, "SELECT last FROM log"), 8);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                                      " AND name IN ('msg_unread', 'msg_read', 'msg_recv',"
                                      " 'msg_sent')"), 0);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                                      " AND name IN ('msg_to', 'msg_pair')"), 2);

    /* Opening again finds nothing to upgrade. */
    ck_assert_msg(S->open(NULL, &opt, &st, err, sizeof err) == PL_OK, "reopen: %s", err);
    ck_assert_uint_eq(S->applied_op(st), 8);
    S->close(st);
}
END_TEST

/* A crash after the log database's first commit, before the state file
 * dropped its copy: the next open finishes the move and keeps what the
 * log database holds. */
START_TEST(upgrade_interrupted_after_copy)
{
    char dir[300], file[340], lfile[340], err[512] = "";
    test_dir(dir, sizeof dir, "interrupted");
    snprintf(file, sizeof file, "%s/parley.db", dir);
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    write_v1(file);
    sqlite3 *db = NULL;
    char *msg = NULL;
    ck_assert_int_eq(sqlite3_open(file, &db), SQLITE_OK);
    /* Version 2 is version 1 with other message indexes: the log is the same. */
    int rc = sqlite3_exec(db, "PRAGMA user_version=2", NULL, NULL, &msg);
    sqlite3_close(db);
    ck_assert_msg(rc == SQLITE_OK, "%s", msg ? msg : "?");
    ck_assert_int_eq(sqlite3_open(lfile, &db), SQLITE_OK);
    rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL;"
                      "CREATE TABLE meta(key TEXT PRIMARY KEY, val INTEGER NOT NULL) WITHOUT ROWID;"
                      "CREATE TABLE log(op INTEGER PRIMARY KEY, view INTEGER NOT NULL,"
                      " data BLOB NOT NULL);"
                      "INSERT INTO log VALUES (5, 1, CAST('e5' AS BLOB)),"
                      " (6, 1, CAST('e6' AS BLOB)), (7, 2, CAST('e7' AS BLOB)),"
                      " (8, 2, CAST('e8' AS BLOB));"
                      "INSERT INTO meta VALUES ('vr_view', 9), ('next_uid', 4);"
                      "PRAGMA user_version=1;", NULL, NULL, &msg);
    sqlite3_close(db);
    ck_assert_msg(rc == SQLITE_OK, "%s", msg ? msg : "?");

    pl_store_options opt = { .dir = dir, .sync = 0, .options_json = NULL };
    pl_store *st = NULL;
    ck_assert_msg(S->open(NULL, &opt, &st, err, sizeof err) == PL_OK, "open: %s", err);
    check_moved_log(st);
    S->close(st);
    ck_assert_int_eq(count_rows(file, "PRAGMA user_version"), 3);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM sqlite_master WHERE name = 'log'"), 0);
    /* ... and converted the log database's format 1 log to format 2. */
    ck_assert_int_eq(count_rows(lfile, "PRAGMA user_version"), 2);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 1);
}
END_TEST

/* A state that has applied ops, without its log: refused, naming both. */
START_TEST(state_without_log_refused)
{
    char dir[300], lfile[340], err[512] = "";
    test_dir(dir, sizeof dir, "nolog");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    pl_store_options opt = { .dir = dir, .sync = 0, .options_json = NULL };
    pl_store *st = open_in(dir, 0);
    pl_log_entry e = { .op = 1, .view = 1, .data = (const uint8_t *)"x", .len = 1 };
    ck_assert_int_eq(S->log_append(st, &e, 1), PL_OK);
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->commit(st, 1), PL_OK);
    S->close(st);
    ck_assert_int_eq(unlink(lfile), 0);
    st = NULL;
    ck_assert_int_ne(S->open(NULL, &opt, &st, err, sizeof err), PL_OK);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "parley-log.db") && strstr(err, "parley.db has applied op 1"),
                  "error: %s", err);
}
END_TEST

/* Batches commit into one open transaction; another reader of the file
 * sees them once the core's idle call finds it old enough. */
START_TEST(state_flush_reaches_the_file)
{
    char dir[300], file[340];
    test_dir(dir, sizeof dir, "flush");
    snprintf(file, sizeof file, "%s/parley.db", dir);
    pl_store *st = open_in(dir, 1);
    ck_assert_ptr_nonnull(S->state_flush);
    pl_log_entry e = { .op = 1, .view = 1, .data = (const uint8_t *)"x", .len = 1 };
    ck_assert_int_eq(S->log_append_nosync(st, &e, 1), PL_OK);
    pl_account_rec a = { .uid = 3, .name = { "ann", 3 }, .pwhash = { "h", 1 }, .created_ms = 1 };
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->account_put(st, &a), PL_OK);
    ck_assert_int_eq(S->commit(st, 1), PL_OK);
    /* Its own reads see the batch at once; the file does not yet. */
    pl_account_rec got;
    ck_assert_int_eq(S->account_get_uid(st, 3, &got), PL_OK);
    ck_assert_int_eq(S->state_flush(st), PL_OK); /* too young to flush */
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM accounts"), 0);
    usleep(150 * 1000);
    ck_assert_int_eq(S->state_flush(st), PL_OK);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM accounts"), 1);
    ck_assert_int_eq(count_rows(file, "SELECT val FROM meta WHERE key = 'applied'"), 1);

    /* A batch rolled back inside the open transaction leaves the earlier
     * ones in it alone. */
    pl_account_rec b = { .uid = 4, .name = { "bob", 3 }, .pwhash = { "h", 1 }, .created_ms = 1 };
    pl_account_rec c = { .uid = 5, .name = { "cy", 2 }, .pwhash = { "h", 1 }, .created_ms = 1 };
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->account_put(st, &b), PL_OK);
    ck_assert_int_eq(S->commit(st, 2), PL_OK);
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->account_put(st, &c), PL_OK);
    S->abort(st);
    ck_assert_int_eq(S->account_get_uid(st, 4, &got), PL_OK);
    ck_assert_int_eq(S->account_get_uid(st, 5, &got), PL_ERR_NOT_FOUND);
    ck_assert_uint_eq(S->applied_op(st), 2);
    /* close commits what is open. */
    S->close(st);
    ck_assert_int_eq(count_rows(file, "SELECT count(*) FROM accounts"), 2);
    ck_assert_int_eq(count_rows(file, "SELECT val FROM meta WHERE key = 'applied'"), 2);
}
END_TEST

/* log_compact makes the state of the ops it drops durable, once: a later
 * compaction below the op already synced leaves the open state transaction
 * open (with it always open under load, committing and syncing it at every
 * compaction step took ~17 ms of the loop each, docs/performance.md round
 * 5), and one beyond it commits and syncs again. */
START_TEST(compaction_syncs_the_state_once)
{
    char dir[300], file[340];
    test_dir(dir, sizeof dir, "compact-once");
    snprintf(file, sizeof file, "%s/parley.db", dir);
    pl_store *st = open_in(dir, 1);
    for (uint64_t op = 1; op <= 30; op++) {
        pl_log_entry e = { .op = op, .view = 1, .data = (const uint8_t *)"x", .len = 1 };
        ck_assert_int_eq(S->log_append_nosync(st, &e, 1), PL_OK);
    }
    for (uint64_t op = 1; op <= 10; op++) {
        char nm[8];
        snprintf(nm, sizeof nm, "u%02u", (unsigned)op);
        pl_account_rec a = { .uid = op, .name = { nm, 3 }, .pwhash = { "h", 1 }, .created_ms = 1 };
        ck_assert_int_eq(S->begin(st), PL_OK);
        ck_assert_int_eq(S->account_put(st, &a), PL_OK);
        ck_assert_int_eq(S->commit(st, op), PL_OK);
    }
    /* the first compaction commits (and syncs) the state through op 10 */
    ck_assert_int_eq(S->log_compact(st, 5), PL_OK);
    ck_assert_int_eq(count_rows(file, "SELECT val FROM meta WHERE key = 'applied'"), 10);
    pl_account_rec b = { .uid = 11, .name = { "u11", 3 }, .pwhash = { "h", 1 }, .created_ms = 1 };
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->account_put(st, &b), PL_OK);
    ck_assert_int_eq(S->commit(st, 11), PL_OK);
    /* below op 10: nothing to make durable, the transaction stays open */
    ck_assert_int_eq(S->log_compact(st, 9), PL_OK);
    ck_assert_int_eq(count_rows(file, "SELECT val FROM meta WHERE key = 'applied'"), 10);
    uint64_t first = 0, last = 0;
    ck_assert_int_eq(S->log_bounds(st, &first, &last), PL_OK);
    ck_assert_uint_eq(first, 9);
    /* beyond it: op 11's state must be on disk first */
    ck_assert_int_eq(S->log_compact(st, 12), PL_OK);
    ck_assert_int_eq(count_rows(file, "SELECT val FROM meta WHERE key = 'applied'"), 11);
    S->close(st);
}
END_TEST

/* Batches without a pause, as under load: the state transaction commits
 * every 100 ms and the next begins at once, so SQLite's WAL would restart
 * only by luck (it needs a write transaction that begins with every frame
 * copied into the database). The store makes it restart once it holds
 * ~32 MiB; without that it grew past 100 MiB in a CI run. */
START_TEST(state_wal_restarts_under_load)
{
    char dir[300], wal[340];
    test_dir(dir, sizeof dir, "wal-restart");
    snprintf(wal, sizeof wal, "%s/parley.db-wal", dir);
    pl_store *st = open_in(dir, 1);
    char body[100];
    memset(body, 'b', sizeof body);
    uint64_t op = 0, end = UINT64_MAX;
    off_t max = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        ck_assert_int_eq(S->begin(st), PL_OK);
        for (int i = 0; i < 20; i++) {
            pl_message_rec m = { .id = op * 20 + (uint64_t)i + 1, .from_uid = 1 + op % 997, .to_uid = 1 + (op * 7 + i) % 1009,
                                 .from_name = { "a", 1 }, .to_name = { "b", 1 },
                                 .body = { body, sizeof body }, .time_ms = op };
            ck_assert_int_eq(S->message_put(st, &m), PL_OK);
        }
        ck_assert_int_eq(S->commit(st, ++op), PL_OK);
        struct stat sb;
        if (op % 64 == 0 && stat(wal, &sb) == 0) {
            if (sb.st_size > max)
                max = sb.st_size;
            /* Three times the ops that took it to 24 MiB: a WAL that
             * never restarts passes 64 MiB on the way. */
            if (end == UINT64_MAX && max >= (24 << 20))
                end = 3 * op;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        ck_assert_msg(t.tv_sec - t0.tv_sec < 40, "too slow: %" PRIu64 " batches in 40 s, the"
                      " state WAL at most %lld MiB", op, (long long)(max >> 20));
    } while (op < end);
    S->close(st);
    ck_assert_msg(max < (64 << 20), "the state WAL reached %lld MiB", (long long)(max >> 20));
}
END_TEST

/* ---- log format 2: a row per appended batch ----
 * Entry op's bytes are data_len(op) bytes (op * 7 + k) & 0xff; ops 1001..
 * 1100 are 3000 bytes and op 1101 200000, so a batch through them meets
 * the row's byte cap. Views are given per op by the test (views[op]). */

#define MAX_OP 1200u

static uint32_t data_len(uint64_t op)
{
    if (op > 1000 && op <= 1100)
        return 3000;
    if (op == 1101)
        return 200000;
    return (uint32_t)(op % 9); /* every ninth entry is empty */
}

static uint8_t data_byte(uint64_t op, uint32_t k)
{
    return (uint8_t)(op * 7 + k);
}

static uint64_t g_views[MAX_OP + 1];

/* Append first..last in one call, views from g_views. */
static int append_ops(pl_store *st, uint64_t first, uint64_t last)
{
    size_t n = (size_t)(last - first + 1);
    pl_log_entry *e = calloc(n, sizeof *e);
    uint8_t **bufs = calloc(n, sizeof *bufs);
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_nonnull(bufs);
    for (size_t i = 0; i < n; i++) {
        uint64_t op = first + i;
        uint32_t len = data_len(op);
        bufs[i] = malloc(len ? len : 1);
        ck_assert_ptr_nonnull(bufs[i]);
        for (uint32_t k = 0; k < len; k++)
            bufs[i][k] = data_byte(op, k);
        e[i] = (pl_log_entry){ .op = op, .view = g_views[op], .data = bufs[i], .len = len };
    }
    int rc = S->log_append(st, e, n);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(e);
    return rc;
}

typedef struct log_check {
    uint64_t next;       /* the op the next callback must bring */
    uint64_t calls;
    uint64_t stop_after; /* return non-zero at this call; 0: never */
    char bad[160];       /* the first mismatch */
} log_check;

static int check_cb(void *ud, const pl_log_entry *e)
{
    log_check *c = ud;
    uint32_t len = data_len(e->op);
    if (!c->bad[0]) {
        if (e->op != c->next)
            snprintf(c->bad, sizeof c->bad, "op %" PRIu64 " where %" PRIu64 " was due",
                     e->op, c->next);
        else if (e->op > MAX_OP || e->view != g_views[e->op])
            snprintf(c->bad, sizeof c->bad, "op %" PRIu64 " has view %" PRIu64 ", not %" PRIu64,
                     e->op, e->view, e->op > MAX_OP ? 0 : g_views[e->op]);
        else if (e->len != len || (len && !e->data))
            snprintf(c->bad, sizeof c->bad, "op %" PRIu64 " has %" PRIu32 " bytes, not %" PRIu32,
                     e->op, e->len, len);
        for (uint32_t k = 0; !c->bad[0] && k < len; k++)
            if (e->data[k] != data_byte(e->op, k))
                snprintf(c->bad, sizeof c->bad, "op %" PRIu64 ": byte %" PRIu32 " differs",
                         e->op, k);
    }
    c->next++;
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

/* log_read(from, to) must bring exactly ops lo..hi (none when lo > hi),
 * whole, with their views. */
static void check_read(pl_store *st, uint64_t from, uint64_t to, uint64_t lo, uint64_t hi)
{
    log_check c = { .next = lo };
    int rc = S->log_read(st, from, to, check_cb, &c);
    ck_assert_msg(rc == PL_OK, "log_read(%" PRIu64 ", %" PRIu64 "): %s", from, to,
                  pl_strerror(rc));
    ck_assert_msg(!c.bad[0], "log_read(%" PRIu64 ", %" PRIu64 "): %s", from, to, c.bad);
    ck_assert_msg(c.calls == (lo > hi ? 0 : hi - lo + 1),
                  "log_read(%" PRIu64 ", %" PRIu64 "): %" PRIu64 " entries, expected %" PRIu64
                  "..%" PRIu64, from, to, c.calls, lo, hi);
}

/* Every sub-range of 0..last+2 against a log of first..last. */
static void check_all_ranges(pl_store *st, uint64_t first, uint64_t last)
{
    for (uint64_t a = 0; a <= last + 2; a++)
        for (uint64_t b = a; b <= last + 2; b++)
            check_read(st, a, b, a > first ? a : first, b < last ? b : last);
}

static void check_bounds(pl_store *st, uint64_t first, uint64_t last)
{
    uint64_t f = 1234, l = 1234;
    ck_assert_int_eq(S->log_bounds(st, &f, &l), PL_OK);
    ck_assert_msg(f == first && l == last, "log_bounds %" PRIu64 "..%" PRIu64 ", expected %"
                  PRIu64 "..%" PRIu64, f, l, first, last);
}

static void exec_sql(const char *file, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    ck_assert_int_eq(sqlite3_open(file, &db), SQLITE_OK);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : sqlite3_errmsg(db));
    sqlite3_close(db);
}

/* What the store logged through its host (the last messages). */
static char g_logged[4096];

static void capture_log(void *ud, int level, const char *fmt, ...) PL_PRINTF(3, 4);

static void capture_log(void *ud, int level, const char *fmt, ...)
{
    va_list ap;
    size_t n = strlen(g_logged);
    (void)ud;
    (void)level;
    if (n > sizeof g_logged - 600)
        n = 0; /* keep the latest */
    va_start(ap, fmt);
    vsnprintf(g_logged + n, sizeof g_logged - n - 1, fmt, ap);
    va_end(ap);
    strcat(g_logged, "\n");
}

static const pl_store_host capture_host = { PL_STORE_ABI_VERSION, NULL, capture_log };

static pl_store *open_logged(const char *dir)
{
    char err[512] = "";
    pl_store_options opt = { .dir = dir, .sync = 0, .options_json = NULL };
    pl_store *st = NULL;
    g_logged[0] = '\0';
    ck_assert_msg(S->open(&capture_host, &opt, &st, err, sizeof err) == PL_OK, "open %s: %s",
                  dir, err);
    return st;
}

/* Batches of several sizes, views changing inside them, read back over
 * every sub-range: the ends of a range fall inside rows and across them. */
START_TEST(log_rows_read_any_range)
{
    static const uint64_t sizes[] = { 1, 5, 19, 3, 40, 2 };
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "rows-read");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = 1 + op / 10;
    pl_store *st = open_in(dir, 0);
    uint64_t op = 1;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; op += sizes[i], i++)
        ck_assert_int_eq(append_ops(st, op, op + sizes[i] - 1), PL_OK);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 6); /* a row per batch */
    check_bounds(st, 1, 70);
    check_all_ranges(st, 1, 70);
    /* A callback stops inside a row, the read having crossed two others. */
    log_check c = { .next = 3, .stop_after = 10 };
    ck_assert_int_eq(S->log_read(st, 3, 70, check_cb, &c), PL_OK);
    ck_assert_msg(!c.bad[0] && c.calls == 10, "stopped read: %s, %" PRIu64 " calls", c.bad,
                  c.calls);
    S->close(st);
}
END_TEST

/* Truncation inside a row keeps the row's head; appends continue there. */
START_TEST(log_truncate_inside_a_row)
{
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "rows-truncate");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = op <= 30 ? 1 : 2;
    pl_store *st = open_in(dir, 1);
    ck_assert_int_eq(append_ops(st, 1, 30), PL_OK);
    ck_assert_int_eq(append_ops(st, 31, 50), PL_OK);
    ck_assert_int_eq(S->log_truncate(st, 17), PL_OK);
    check_bounds(st, 1, 17);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 1);
    ck_assert_int_eq(count_rows(lfile, "SELECT last FROM log"), 17);
    check_all_ranges(st, 1, 17);
    /* The suffix is gone: the log continues at 18, in a new view. */
    for (uint64_t op = 18; op <= MAX_OP; op++)
        g_views[op] = 3;
    ck_assert_int_ne(append_ops(st, 31, 31), PL_OK);
    ck_assert_int_eq(append_ops(st, 18, 25), PL_OK);
    check_all_ranges(st, 1, 25);
    /* At a row's last entry nothing is cut. */
    ck_assert_int_eq(S->log_truncate(st, 17), PL_OK);
    check_bounds(st, 1, 17);
    ck_assert_int_eq(append_ops(st, 18, 25), PL_OK);
    ck_assert_int_eq(S->log_truncate(st, 24), PL_OK);
    S->close(st);
    st = open_in(dir, 0);
    check_bounds(st, 1, 24);
    check_all_ranges(st, 1, 24);
    ck_assert_int_eq(append_ops(st, 25, 26), PL_OK);
    check_read(st, 20, 100, 20, 26);
    ck_assert_int_eq(S->log_truncate(st, 0), PL_OK);
    check_bounds(st, 0, 0);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 0);
    S->close(st);
}
END_TEST

/* Compaction inside a row keeps the row's tail, starting at `before`. */
START_TEST(log_compact_inside_a_row)
{
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "rows-compact");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = op <= 40 ? 1 : 2;
    pl_store *st = open_in(dir, 1);
    ck_assert_int_eq(append_ops(st, 1, 40), PL_OK);
    ck_assert_int_eq(append_ops(st, 41, 60), PL_OK);
    ck_assert_int_eq(S->log_compact(st, 15), PL_OK);
    check_bounds(st, 15, 60);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 2);
    ck_assert_int_eq(count_rows(lfile, "SELECT min(first) FROM log"), 15);
    check_all_ranges(st, 15, 60);
    ck_assert_int_eq(S->log_compact(st, 10), PL_OK); /* below the log: nothing */
    check_bounds(st, 15, 60);
    ck_assert_int_eq(S->log_compact(st, 41), PL_OK); /* a row boundary */
    check_bounds(st, 41, 60);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 1);
    ck_assert_int_eq(S->log_compact(st, 45), PL_OK);
    check_read(st, 40, 50, 45, 50);
    S->close(st);
    st = open_in(dir, 0);
    check_bounds(st, 45, 60);
    check_all_ranges(st, 45, 60);
    ck_assert_int_eq(append_ops(st, 61, 64), PL_OK);
    ck_assert_int_eq(S->log_compact(st, 62), PL_OK);
    check_bounds(st, 62, 64);
    check_read(st, 0, UINT64_MAX, 62, 64);
    ck_assert_int_eq(S->log_compact(st, 100), PL_OK); /* past the end: all of it */
    check_bounds(st, 0, 0);
    S->close(st);
}
END_TEST

/* One long append becomes several rows, each within the caps (256
 * entries; 64 KiB unless it is one larger entry), and reads back whole. */
START_TEST(log_long_append_split_into_rows)
{
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "rows-split");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = 1 + op / 300; /* a view change inside the batch too */
    pl_store *st = open_in(dir, 0);
    ck_assert_int_eq(append_ops(st, 1, 1000), PL_OK);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log"), 4); /* 3 x 256 + 232 */
    ck_assert_int_eq(count_rows(lfile, "SELECT max(last - first + 1) FROM log"), 256);
    check_read(st, 0, UINT64_MAX, 1, 1000);
    check_read(st, 250, 260, 250, 260);
    /* 3000-byte entries, one of 200000 bytes, small ones after it. */
    ck_assert_int_eq(append_ops(st, 1001, 1110), PL_OK);
    ck_assert_int_gt(count_rows(lfile, "SELECT count(*) FROM log WHERE first > 1000"), 3);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log WHERE last > first"
                                       " AND length(data) > 65536"), 0);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log WHERE first = 1101"
                                       " AND last = 1101"), 1);
    ck_assert_int_eq(count_rows(lfile, "SELECT sum(last - first + 1) FROM log"), 1110);
    check_read(st, 0, UINT64_MAX, 1, 1110);
    check_read(st, 1050, 1105, 1050, 1105);
    S->close(st);
}
END_TEST

/* A log database of version 1 (a row per entry: the format written before
 * this one) is converted at open: every entry, its view and bytes, the
 * bounds and the replica metadata survive, and the file says version 2. */
START_TEST(log_format_1_converted)
{
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "format1");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = op / 50;
    /* The state of a server whose log holds 950..1149, applied to 1000. */
    pl_store *st = open_in(dir, 0);
    ck_assert_int_eq(S->begin(st), PL_OK);
    ck_assert_int_eq(S->commit(st, 1000), PL_OK);
    S->close(st);
    ck_assert_int_eq(unlink(lfile), 0);
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    ck_assert_int_eq(sqlite3_open(lfile, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "PRAGMA journal_mode=WAL; BEGIN;"
                                  "CREATE TABLE meta(key TEXT PRIMARY KEY, val INTEGER NOT NULL)"
                                  " WITHOUT ROWID;"
                                  "CREATE TABLE log(op INTEGER PRIMARY KEY, view INTEGER NOT NULL,"
                                  " data BLOB NOT NULL);"
                                  "INSERT INTO meta VALUES ('vr_view', 22), ('vr_commit', 1140);"
                                  "PRAGMA user_version=1;", NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "INSERT INTO log VALUES (?1, ?2, ?3)", -1, &ins, NULL),
                     SQLITE_OK);
    static uint8_t buf[200000];
    for (uint64_t op = 950; op <= 1149; op++) {
        uint32_t len = data_len(op);
        for (uint32_t k = 0; k < len; k++)
            buf[k] = data_byte(op, k);
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)op);
        sqlite3_bind_int64(ins, 2, (sqlite3_int64)g_views[op]);
        sqlite3_bind_blob(ins, 3, buf, (int)len, SQLITE_STATIC);
        ck_assert_int_eq(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    st = open_logged(dir);
    ck_assert_msg(strstr(g_logged, "converting the log of") && strstr(g_logged, lfile),
                  "no warning naming %s: %s", lfile, g_logged);
    ck_assert_int_eq(count_rows(lfile, "PRAGMA user_version"), 2);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM sqlite_master WHERE name = 'log_v1'"), 0);
    /* Grouped as an append would write them, within the caps. */
    ck_assert_int_eq(count_rows(lfile, "SELECT sum(last - first + 1) FROM log"), 200);
    ck_assert_int_gt(count_rows(lfile, "SELECT count(*) FROM log"), 3);
    ck_assert_int_lt(count_rows(lfile, "SELECT count(*) FROM log"), 20);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log WHERE last > first"
                                       " AND length(data) > 65536"), 0);
    check_bounds(st, 950, 1149);
    check_read(st, 0, UINT64_MAX, 950, 1149);
    check_read(st, 990, 1105, 990, 1105);
    uint64_t v = 0;
    ck_assert_int_eq(S->meta_get(st, "vr_view", &v), PL_OK);
    ck_assert_uint_eq(v, 22);
    ck_assert_int_eq(S->meta_get(st, "vr_commit", &v), PL_OK);
    ck_assert_uint_eq(v, 1140);
    ck_assert_uint_eq(S->applied_op(st), 1000);
    ck_assert_int_eq(append_ops(st, 1150, 1151), PL_OK);
    S->close(st);
    /* Converted once: the next open finds version 2 and nothing to do. */
    st = open_logged(dir);
    ck_assert_msg(!strstr(g_logged, "converting"), "converted again: %s", g_logged);
    check_read(st, 0, UINT64_MAX, 950, 1151);
    S->close(st);
}
END_TEST

/* A conversion that fails half-way leaves the version 1 file as it was
 * (one transaction: the next open tries again), and the open fails naming
 * the file. This file's log lacks its view column, so the conversion
 * fails at the copy, after it has renamed the old table and created the
 * new one. */
START_TEST(log_conversion_failure_keeps_format_1)
{
    char dir[300], lfile[340], err[512] = "";
    test_dir(dir, sizeof dir, "format1-fail");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    exec_sql(lfile, "PRAGMA journal_mode=WAL;"
                    "CREATE TABLE meta(key TEXT PRIMARY KEY, val INTEGER NOT NULL) WITHOUT ROWID;"
                    "CREATE TABLE log(op INTEGER PRIMARY KEY, data BLOB NOT NULL);"
                    "INSERT INTO log VALUES (1, x'61'), (2, x'62');"
                    "PRAGMA user_version=1;");
    pl_store_options opt = { .dir = dir, .sync = 0, .options_json = NULL };
    pl_store *st = NULL;
    ck_assert_int_ne(S->open(NULL, &opt, &st, err, sizeof err), PL_OK);
    ck_assert_msg(strstr(err, "parley-log.db") && strstr(err, "convert"), "error: %s", err);
    ck_assert_int_eq(count_rows(lfile, "PRAGMA user_version"), 1);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM sqlite_master"
                                       " WHERE name IN ('log_v1', 'log')"), 1);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM pragma_table_info('log')"
                                       " WHERE name = 'first'"), 0);
    ck_assert_int_eq(count_rows(lfile, "SELECT count(*) FROM log WHERE op IN (1, 2)"), 2);
}
END_TEST

/* A row whose data does not decode to its entries first..last is an
 * error of the call that meets it, never a crash or a read past the blob,
 * and the message names the file and the row. Truncate and compact that
 * would cut it fail whole. */
START_TEST(log_damaged_row_is_an_error)
{
    static const char *const damage[] = {
        "UPDATE log SET data = substr(data, 1, length(data) - 1) WHERE first = 11",
        "UPDATE log SET data = data || x'00' WHERE first = 11",
        "UPDATE log SET last = 19 WHERE first = 11",
        "UPDATE log SET data = x'ffffffffffffffffffff01' WHERE first = 11",
        "UPDATE log SET data = x'017f' WHERE first = 11",
        "UPDATE log SET data = x'' WHERE first = 11",
        /* last below first: compaction past it drops it as it should, so
         * this one is last and meets reads and truncation only */
        "UPDATE log SET last = 9 WHERE first = 11",
    };
    const size_t n_damage = sizeof damage / sizeof damage[0];
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "damaged");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = 4;
    pl_store *st = open_in(dir, 0);
    ck_assert_int_eq(append_ops(st, 1, 10), PL_OK);
    ck_assert_int_eq(append_ops(st, 11, 20), PL_OK);
    ck_assert_int_eq(append_ops(st, 21, 30), PL_OK);
    S->close(st);
    exec_sql(lfile, "CREATE TABLE keep AS SELECT * FROM log WHERE first = 11");
    for (size_t i = 0; i < n_damage; i++) {
        exec_sql(lfile, damage[i]);
        st = open_logged(dir);
        log_check c = { .next = 1 };
        int rc = S->log_read(st, 1, 30, check_cb, &c);
        ck_assert_msg(rc == PL_ERR_CORRUPT, "%s: log_read gave %s", damage[i], pl_strerror(rc));
        ck_assert_msg(!c.bad[0] && c.calls == 10, "%s: before the damaged row: %s, %" PRIu64
                      " entries", damage[i], c.bad, c.calls);
        ck_assert_msg(strstr(g_logged, lfile) && strstr(g_logged, "first = 11"),
                      "%s: message: %s", damage[i], g_logged);
        check_read(st, 1, 10, 1, 10); /* the rows before it still read */
        c = (log_check){ .next = 12 };
        rc = S->log_read(st, 12, 12, check_cb, &c);
        ck_assert_msg(rc == PL_ERR_CORRUPT, "%s: log_read inside it gave %s", damage[i],
                      pl_strerror(rc));
        rc = S->log_truncate(st, 15);
        ck_assert_msg(rc == PL_ERR_CORRUPT, "%s: log_truncate gave %s", damage[i],
                      pl_strerror(rc));
        rc = i < n_damage - 1 ? S->log_compact(st, 15) : PL_ERR_CORRUPT;
        ck_assert_msg(rc == PL_ERR_CORRUPT, "%s: log_compact gave %s", damage[i],
                      pl_strerror(rc));
        /* ... each rolled back whole: the rows it had dropped are back. */
        check_bounds(st, 1, 30);
        check_read(st, 21, 30, 21, 30);
        S->close(st);
        exec_sql(lfile, "UPDATE log SET last = (SELECT last FROM keep),"
                        " data = (SELECT data FROM keep) WHERE first = 11");
    }
    st = open_in(dir, 0);
    check_read(st, 0, 100, 1, 30);
    S->close(st);
}
END_TEST

/* Row data changed at random (bytes overwritten, cut short or extended,
 * the row's last moved): every call that meets the row answers PL_OK or
 * PL_ERR_CORRUPT, and never reads outside the blob (run under ASan by
 * tools/ci-sanitize.sh). Seeded, so a failure repeats. */
START_TEST(log_random_row_bytes)
{
    char dir[300], lfile[340];
    test_dir(dir, sizeof dir, "random-rows");
    snprintf(lfile, sizeof lfile, "%s/parley-log.db", dir);
    for (uint64_t op = 0; op <= MAX_OP; op++)
        g_views[op] = op < 15 ? 3 : 200; /* a two-byte view inside the row */
    pl_store *st = open_in(dir, 0);
    ck_assert_int_eq(append_ops(st, 1, 10), PL_OK);
    ck_assert_int_eq(append_ops(st, 11, 20), PL_OK);
    S->close(st);
    uint8_t good[256], bad[300];
    int good_len = 0;
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    ck_assert_int_eq(sqlite3_open(lfile, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT data FROM log WHERE first = 11", -1, &q, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
    good_len = sqlite3_column_bytes(q, 0);
    ck_assert_int_le(good_len, (int)sizeof good);
    memcpy(good, sqlite3_column_blob(q, 0), (size_t)good_len);
    sqlite3_finalize(q);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "UPDATE log SET last = ?1, data = ?2 WHERE first = 11",
                                        -1, &q, NULL), SQLITE_OK);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    unsigned corrupt = 0;
    for (int it = 0; it < 300; it++) {
        int len = good_len;
        memcpy(bad, good, (size_t)good_len);
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        switch (rng % 4) {
        case 0: /* overwrite 1-3 bytes */
            for (unsigned k = 0; k <= (rng >> 8) % 3; k++)
                bad[(rng >> (16 + 8 * k)) % (uint64_t)len] = (uint8_t)(rng >> (40 + k));
            break;
        case 1: /* cut short */
            len = (int)((rng >> 8) % (uint64_t)len);
            break;
        case 2: /* extended with random bytes */
            for (int k = 0; k < 1 + (int)((rng >> 8) % 30); k++)
                bad[len++] = (uint8_t)(rng >> (k % 56));
            break;
        default: /* both */
            bad[(rng >> 16) % (uint64_t)len] = (uint8_t)(rng >> 32);
            len = 1 + (int)((rng >> 40) % (uint64_t)len);
            break;
        }
        sqlite3_int64 last = (rng >> 60) == 0 ? 11 + (sqlite3_int64)((rng >> 50) % 12) : 20;
        sqlite3_bind_int64(q, 1, last);
        sqlite3_bind_blob(q, 2, bad, len, SQLITE_STATIC);
        ck_assert_int_eq(sqlite3_step(q), SQLITE_DONE);
        sqlite3_reset(q);
        st = open_in(dir, 0);
        log_check c = { .next = 1 };
        uint64_t f = 0, l = 0;
        int rc[3] = { S->log_read(st, 5, 25, check_cb, &(log_check){ .next = 5 }),
                      S->log_read(st, 13, 13, check_cb, &c), S->log_truncate(st, 16) };
        for (int k = 0; k < 3; k++)
            ck_assert_msg(rc[k] == PL_OK || rc[k] == PL_ERR_CORRUPT,
                          "iteration %d: call %d gave %s", it, k, pl_strerror(rc[k]));
        corrupt += rc[0] == PL_ERR_CORRUPT;
        ck_assert_int_eq(S->log_bounds(st, &f, &l), PL_OK);
        S->close(st);
        /* Truncation may have cut the row: put it back as it was. */
        ck_assert_int_eq(sqlite3_exec(db, "DELETE FROM log WHERE first = 11", NULL, NULL, NULL),
                         SQLITE_OK);
        sqlite3_stmt *ins = NULL;
        ck_assert_int_eq(sqlite3_prepare_v2(db, "INSERT INTO log VALUES (11, 20, ?1)", -1, &ins,
                                            NULL), SQLITE_OK);
        sqlite3_bind_blob(ins, 1, good, good_len, SQLITE_STATIC);
        ck_assert_int_eq(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_finalize(ins);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    /* Most of them must be found out, or the test tests nothing. */
    ck_assert_msg(corrupt > 200, "only %u of 300 damaged rows were reported", corrupt);
}
END_TEST

int main(int argc, char **argv)
{
    char err[1024];
    const char *tmp = getenv("TMPDIR");
    if (argc != 2) {
        fprintf(stderr, "usage: %s parley-store-sqlite.so\n", argv[0]);
        return 2;
    }
    g_path = argv[1];
    pl_plugin *p = pl_plugin_load("store", g_path, NULL, err, sizeof err);
    if (!p || !(S = pl_plugin_store(p))) {
        fprintf(stderr, "%s\n", p ? "not a store plugin" : err);
        return 1;
    }
    snprintf(g_dir, sizeof g_dir, "%s/pl-store-sqlite-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", g_dir, strerror(errno));
        return 1;
    }
    Suite *s = suite_create("store-sqlite");
    TCase *tc = tcase_create("file format");
    /* Check's default is 4 s a test; the log tests open stores hundreds of
     * times, which under ASan on a busy machine takes longer. */
    tcase_set_timeout(tc, 50);
    tcase_add_test(tc, upgrade_from_version_1);
    tcase_add_test(tc, upgrade_interrupted_after_copy);
    tcase_add_test(tc, state_without_log_refused);
    tcase_add_test(tc, state_flush_reaches_the_file);
    tcase_add_test(tc, compaction_syncs_the_state_once);
    tcase_add_test(tc, state_wal_restarts_under_load);
    tcase_add_test(tc, log_rows_read_any_range);
    tcase_add_test(tc, log_truncate_inside_a_row);
    tcase_add_test(tc, log_compact_inside_a_row);
    tcase_add_test(tc, log_long_append_split_into_rows);
    tcase_add_test(tc, log_format_1_converted);
    tcase_add_test(tc, log_conversion_failure_keeps_format_1);
    tcase_add_test(tc, log_damaged_row_is_an_error);
    tcase_add_test(tc, log_random_row_bytes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    pl_plugin_unload(p);
    return failed ? 1 : 0;
}
