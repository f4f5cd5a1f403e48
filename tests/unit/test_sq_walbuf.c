/*
 * test_sq_walbuf.c — the SQLite store's VFS shim (plugins/store-sqlite/
 * sq_walbuf.c) on its own: a WAL's cut back to journal_size_limit waits
 * for sq_walbuf_trim, which must never cut a frame written after the cut
 * was asked for, even while that thread and the writer run at once.
 *
 * "A crash" here is a copy of the database and its WAL taken while the
 * writer's connection is still open: a fresh connection on the copy
 * recovers from the WAL exactly as after a power cut, so whatever the cut
 * took from a committed frame shows as a missing row.
 */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "sq_walbuf.h"

#define LIMIT (64 * 1024)

static char g_dir[256];

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/pl-walbuf-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    ck_assert_int_eq(sq_walbuf_register(), SQLITE_OK);
}

static void teardown(void)
{
    char cmd[300];

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : sqlite3_errstr(rc));
}

static long long query(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    long long v = -1;

    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static off_t file_size(const char *path)
{
    struct stat st;

    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_size;
}

/* As the store's hook: a commit's gathered frames go to the file. */
static int wal_hook(void *arg, sqlite3 *db, const char *zdb, int frames)
{
    sqlite3_file *f = NULL;

    (void)arg;
    (void)frames;
    if (sqlite3_file_control(db, zdb, SQLITE_FCNTL_JOURNAL_POINTER, &f) != SQLITE_OK || !f)
        return SQLITE_IOERR;
    return sq_walbuf_flush(f);
}

/* The store's settings that matter here: this VFS, WAL mode, the limit, no
 * checkpoints of SQLite's own, the commit hook. */
static sqlite3 *open_db(const char *name, sqlite3_file **wal)
{
    char path[300];
    sqlite3 *db = NULL;

    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                     SQ_WALBUF_VFS), SQLITE_OK);
    exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
             "PRAGMA journal_size_limit=65536;"
             "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)");
    sqlite3_wal_autocheckpoint(db, 0);
    sqlite3_wal_hook(db, wal_hook, NULL);
    ck_assert_int_eq(sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, wal),
                     SQLITE_OK);
    ck_assert_ptr_nonnull(*wal);
    return db;
}

/* rows [from, from + n) of 1 KiB each, in one transaction */
static void insert(sqlite3 *db, int from, int n)
{
    char sql[256];

    snprintf(sql, sizeof sql,
             "WITH RECURSIVE c(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM c WHERE i < %d)"
             " INSERT INTO t SELECT i, randomblob(1024) FROM c", from, from + n - 1);
    exec(db, sql);
}

/* Fill the WAL well past the limit, copy it into the database, and start
 * it over with one small commit: that commit asks for the cut. */
static void grow_and_restart(sqlite3 *db, sqlite3_file *wal, const char *walpath)
{
    insert(db, 1, 4000); /* ~4 MiB of frames */
    ck_assert_int_gt(file_size(walpath), 2 * 1024 * 1024);
    int log = -1, done = -1;
    ck_assert_int_eq(sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log,
                                               &done), SQLITE_OK);
    ck_assert_int_eq(log, done);
    ck_assert(!sq_walbuf_trim_pending(wal));
    insert(db, 4001, 1);
}

/* Copy the files and count the rows a fresh connection recovers. */
static long long count_after_crash(const char *name)
{
    char cmd[1400], copy[300];
    sqlite3 *db = NULL;

    snprintf(cmd, sizeof cmd, "cp '%s/%s' '%s/crash.db' && cp '%s/%s-wal' '%s/crash.db-wal'",
             g_dir, name, g_dir, g_dir, name, g_dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(copy, sizeof copy, "%s/crash.db", g_dir);
    ck_assert_int_eq(sqlite3_open_v2(copy, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    long long n = query(db, "SELECT count(*) FROM t");
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
    snprintf(cmd, sizeof cmd, "rm -f '%s/crash.db' '%s/crash.db-wal' '%s/crash.db-shm'",
             g_dir, g_dir, g_dir);
    ck_assert_int_eq(system(cmd), 0);
    return n;
}

START_TEST(cut_waits_for_the_trim)
{
    sqlite3_file *wal;
    char walpath[300];
    sqlite3 *db = open_db("a.db", &wal);

    snprintf(walpath, sizeof walpath, "%s/a.db-wal", g_dir);
    grow_and_restart(db, wal, walpath);
    /* SQLite asked for the cut; the file keeps its size until a trim. */
    ck_assert(sq_walbuf_trim_pending(wal));
    off_t big = file_size(walpath);
    ck_assert_int_gt(big, 2 * 1024 * 1024);
    int steps = 0;
    while (sq_walbuf_trim(wal))
        steps++;
    ck_assert(!sq_walbuf_trim_pending(wal));
    ck_assert_int_eq(file_size(walpath), LIMIT);
    /* one step per MiB, and the last one says it is done */
    ck_assert_int_ge(steps, (int)((big - LIMIT) >> 20) - 1);
    ck_assert_int_le(steps, (int)((big - LIMIT) >> 20) + 1);
    ck_assert_int_eq(count_after_crash("a.db"), 4001);
    sqlite3_close(db);
}
END_TEST

/* Frames committed after the cut was asked for lie past the limit: the
 * trim must stop at their end. */
START_TEST(trim_spares_later_frames)
{
    sqlite3_file *wal;
    char walpath[300];
    sqlite3 *db = open_db("b.db", &wal);

    snprintf(walpath, sizeof walpath, "%s/b.db-wal", g_dir);
    grow_and_restart(db, wal, walpath);
    ck_assert(sq_walbuf_trim_pending(wal));
    insert(db, 4002, 1000); /* ~1 MiB of frames from the start of the file */
    while (sq_walbuf_trim(wal))
        ;
    off_t sz = file_size(walpath);
    ck_assert_int_gt(sz, LIMIT);
    ck_assert_int_lt(sz, 2 * 1024 * 1024);
    ck_assert_int_eq(count_after_crash("b.db"), 5001);
    sqlite3_close(db);
}
END_TEST

struct trimmer {
    sqlite3_file *wal;
    volatile int stop;
    long steps;
};

static void *trim_main(void *arg)
{
    struct trimmer *t = arg;

    while (!t->stop)
        t->steps += sq_walbuf_trim(t->wal);
    return NULL;
}

/* The writer commits while the other thread trims, as the store runs. */
START_TEST(trim_beside_the_writer)
{
    sqlite3_file *wal;
    char walpath[300];
    sqlite3 *db = open_db("c.db", &wal);
    struct trimmer t = { 0 };
    pthread_t th;
    int next = 4002;

    snprintf(walpath, sizeof walpath, "%s/c.db-wal", g_dir);
    grow_and_restart(db, wal, walpath);
    ck_assert(sq_walbuf_trim_pending(wal));
    t.wal = wal;
    ck_assert_int_eq(pthread_create(&th, NULL, trim_main, &t), 0);
    for (int i = 0; i < 200; i++, next += 10)
        insert(db, next, 10);
    t.stop = 1;
    pthread_join(th, NULL);
    ck_assert_int_eq(count_after_crash("c.db"), next - 1);
    while (sq_walbuf_trim(wal))
        ;
    ck_assert_int_eq(count_after_crash("c.db"), next - 1);
    sqlite3_close(db);
}
END_TEST

static Suite *walbuf_suite(void)
{
    Suite *s = suite_create("sq_walbuf");
    TCase *tc = tcase_create("trim");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, cut_waits_for_the_trim);
    tcase_add_test(tc, trim_spares_later_frames);
    tcase_add_test(tc, trim_beside_the_writer);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(walbuf_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
