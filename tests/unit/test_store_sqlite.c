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
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    tcase_add_test(tc, upgrade_from_version_1);
    tcase_add_test(tc, upgrade_interrupted_after_copy);
    tcase_add_test(tc, state_without_log_refused);
    tcase_add_test(tc, state_flush_reaches_the_file);
    tcase_add_test(tc, compaction_syncs_the_state_once);
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
