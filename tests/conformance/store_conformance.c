/*
 * tests/conformance/store_conformance.c — the store plugin contract
 * (include/parley/store.h), run unchanged against every store plugin.
 *
 *   store-conformance PLUGIN.so
 *       every function of the store ABI, its durability and atomicity
 *       promises (reopen, abort, SIGKILL at a random moment);
 *   store-conformance --cross A.so B.so
 *       drive both stores through the real chat core with the same op
 *       sequence and require equal replies, equal state and equal
 *       pl_chat_digest() after every batch and after reopening.
 *
 * Plugins are loaded through the real loader (pl_plugin_load and
 * pl_plugin_store_open), as parleyd does. Each test gets a fresh directory
 * under one per-run temp root, removed at the end even when a test fails.
 * Random choices come from one seed, printed first; PL_TEST_SEED repeats a run.
 *
 * Expected results are written out by hand for small cases, and computed
 * from a direct transcription of the query rules in store.h for the large
 * parameter sweeps, so a failure prints "expected ... got ..." either way.
 */
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "loader.h"

/* ------------------------------------------------------------------ */
/* small utilities                                                     */

typedef struct sb {
    char *p;
    size_t len, cap;
} sb;

static void sb_grow(sb *b, size_t need)
{
    size_t c;
    char *n;

    if (b->len + need + 1 <= b->cap)
        return;
    c = b->cap ? b->cap : 256;
    while (c < b->len + need + 1)
        c *= 2;
    n = realloc(b->p, c);
    ck_assert_msg(n != NULL, "out of memory");
    b->p = n;
    b->cap = c;
}

static void sb_printf(sb *b, const char *fmt, ...) PL_PRINTF(2, 3);

static void sb_printf(sb *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ck_assert_int_ge(n, 0);
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ull;

    while (n--) {
        h ^= *c++;
        h *= 1099511628211ull;
    }
    return h;
}

/* Bytes as readable text: printable ASCII as is, the rest as \xNN. Long
 * values (message bodies up to 64 KiB) are shown as length and hash. */
static void sb_bytes(sb *b, const void *p, size_t n)
{
    const unsigned char *c = p;
    size_t i;

    if (n > 0 && !p) {
        sb_printf(b, "<NULL ptr with len %zu>", n);
        return;
    }
    if (n > 128) {
        sb_printf(b, "<%zu bytes #%016" PRIx64 ">", n, fnv1a(p, n));
        return;
    }
    sb_grow(b, n * 4);
    for (i = 0; i < n; i++) {
        if (c[i] > 0x20 && c[i] < 0x7f && c[i] != '\\')
            b->p[b->len++] = (char)c[i];
        else
            b->len += (size_t)sprintf(b->p + b->len, "\\x%02x", c[i]);
    }
    b->p[b->len] = '\0';
}

static void sb_str(sb *b, pl_str s)
{
    sb_bytes(b, s.ptr, s.len);
}

static void sb_sep(sb *b, const char *sep)
{
    if (b->len)
        sb_printf(b, "%s", sep);
}

/* Hand the text to the caller (malloc'd, never NULL). */
static char *sb_take(sb *b)
{
    char *r;

    sb_grow(b, 0);
    b->p[b->len] = '\0';
    r = b->p;
    memset(b, 0, sizeof *b);
    return r;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static uint64_t rng_seeded(uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;

    return s ? s : 1;
}

#define OK(call) do { \
    int rc_ = (call); \
    ck_assert_msg(rc_ == PL_OK, "%s returned %d (%s), expected PL_OK", \
                  #call, rc_, pl_strerror(rc_)); \
} while (0)

#define IS(call, want) do { \
    int rc_ = (call); \
    ck_assert_msg(rc_ == (int)(want), "%s returned %d (%s), expected %d (%s)", \
                  #call, rc_, pl_strerror(rc_), (int)(want), pl_strerror((int)(want))); \
} while (0)

#define NOT_OK(call) do { \
    int rc_ = (call); \
    ck_assert_msg(rc_ != PL_OK, "%s returned PL_OK, expected an error", #call); \
} while (0)

/* got is a malloc'd string (freed here), want a C string. */
#define STR_EQ(got, want) do { \
    char *g_ = (got); \
    const char *w_ = (want); \
    int same_ = strcmp(g_, w_) == 0; \
    if (!same_) \
        fprintf(stderr, "%s:%d: %s\n  expected: %s\n  got:      %s\n", \
                __FILE__, __LINE__, #got, w_, g_); \
    ck_assert_msg(same_, "%s: expected \"%.1500s\", got \"%.1500s\"", #got, w_, g_); \
    free(g_); \
} while (0)

/* ------------------------------------------------------------------ */
/* plugin, directories, fixture                                        */

static const char *g_path[2];
static pl_plugin *g_plug[2];
static const pl_store_plugin *S;       /* the plugin under test (single mode) */
static char g_root[PATH_MAX];          /* per-run temp root */
static uint64_t g_seed;

static void host_log(void *ud, int level, const char *fmt, ...) PL_PRINTF(3, 4);

static void host_log(void *ud, int level, const char *fmt, ...)
{
    va_list ap;

    (void)ud;
    /* Warnings are expected: many tests provoke refusals on purpose. */
    if (level > PL_LOG_ERROR)
        return;
    va_start(ap, fmt);
    fprintf(stderr, "store: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static const pl_store_host g_host = { PL_STORE_ABI_VERSION, NULL, host_log };

static void make_dir(char *out, size_t len, const char *tag)
{
    int n = snprintf(out, len, "%s/%s-XXXXXX", g_root, tag);

    ck_assert_msg(n > 0 && (size_t)n < len, "temp path too long under %s", g_root);
    ck_assert_msg(mkdtemp(out) != NULL, "mkdtemp %s: %s", out, strerror(errno));
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static void rm_rf(const char *dir)
{
    if (dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static pl_store *open_store(const pl_plugin *p, const char *dir, int sync)
{
    pl_store_options o = { dir, sync, NULL };
    pl_store *st = NULL;
    char err[1024];
    int rc = pl_plugin_store_open(p, &g_host, &o, &st, err, sizeof err);

    ck_assert_msg(rc == PL_OK && st != NULL, "opening a store in %s failed: %s", dir, err);
    return st;
}

/* Single-mode fixture: one fresh store per test. Globals are per test
 * because Check forks each test. */
static char T_dir[PATH_MAX];
static pl_store *T;
static uint64_t T_applied;

static void fx_setup(void)
{
    make_dir(T_dir, sizeof T_dir, "t");
    T = open_store(g_plug[0], T_dir, 0);
    T_applied = 0;
}

static void fx_teardown(void)
{
    if (T)
        S->close(T);
    T = NULL;
    rm_rf(T_dir);
}

static void reopen(int sync)
{
    S->close(T);
    T = NULL;
    T = open_store(g_plug[0], T_dir, sync);
}

static void txn_begin(void)
{
    OK(S->begin(T));
}

static void txn_commit(void)
{
    OK(S->commit(T, ++T_applied));
}

/* ------------------------------------------------------------------ */
/* record builders and formatters                                      */

static pl_account_rec mkacct(uint64_t uid, const char *name, const char *pw, uint64_t created)
{
    pl_account_rec a = { uid, pl_str_c(name), pl_str_c(pw), created };
    return a;
}

static pl_message_rec msgrec(uint64_t id, uint64_t from, uint64_t to, const char *fname,
                             const char *tname, const char *body, uint64_t t, uint32_t flags)
{
    pl_message_rec m = { id, from, to, pl_str_c(fname), pl_str_c(tname), pl_str_c(body),
                         t, flags };
    return m;
}

static void fmt_account(sb *b, const pl_account_rec *a)
{
    sb_printf(b, "%" PRIu64 ":", a->uid);
    sb_str(b, a->name);
    sb_printf(b, ":");
    sb_str(b, a->pwhash);
    sb_printf(b, ":%" PRIu64, a->created_ms);
}

static void fmt_session(sb *b, const pl_session_rec *s)
{
    uint32_t i;

    if (s->token_hash.len && !s->token_hash.ptr) {
        sb_printf(b, "<NULL token>");
    } else {
        for (i = 0; i < s->token_hash.len; i++)
            sb_printf(b, "%02x", (unsigned char)s->token_hash.ptr[i]);
    }
    sb_printf(b, ":%" PRIu64 ":%" PRIu64, s->uid, s->created_ms);
}

static void fmt_message(sb *b, const pl_message_rec *m)
{
    sb_printf(b, "%" PRIu64 ":%" PRIu64 ">%" PRIu64 ":", m->id, m->from_uid, m->to_uid);
    sb_str(b, m->from_name);
    sb_printf(b, ">");
    sb_str(b, m->to_name);
    sb_printf(b, ":");
    sb_str(b, m->body);
    sb_printf(b, ":t%" PRIu64 ":f%u", m->time_ms, m->flags);
}

static void fmt_client(sb *b, const pl_client_rec *c)
{
    sb_printf(b, "%" PRIu64 ":%" PRIu64 ":%" PRIu64 ":", c->client_id, c->request_no, c->op);
    sb_str(b, c->reply);
}

static void fmt_entry(sb *b, const pl_log_entry *e)
{
    sb_printf(b, "%" PRIu64 "/%" PRIu64 "/", e->op, e->view);
    sb_bytes(b, e->data, e->len);
}

/* Scan collectors: records joined by " | "; stop after `stop` calls when
 * stop is non-zero. */
typedef struct coll {
    sb b;
    int calls, stop;
} coll;

static int coll_more(coll *c)
{
    c->calls++;
    return c->stop && c->calls >= c->stop;
}

static int acc_cb(void *ud, const pl_account_rec *a)
{
    coll *c = ud;
    sb_sep(&c->b, " | ");
    fmt_account(&c->b, a);
    return coll_more(c);
}

static int acc_name_cb(void *ud, const pl_account_rec *a)
{
    coll *c = ud;
    sb_sep(&c->b, " ");
    sb_str(&c->b, a->name);
    return coll_more(c);
}

static int ses_cb(void *ud, const pl_session_rec *s)
{
    coll *c = ud;
    sb_sep(&c->b, " | ");
    fmt_session(&c->b, s);
    return coll_more(c);
}

static int msg_cb(void *ud, const pl_message_rec *m)
{
    coll *c = ud;
    sb_sep(&c->b, " | ");
    fmt_message(&c->b, m);
    return coll_more(c);
}

static int msg_id_cb(void *ud, const pl_message_rec *m)
{
    coll *c = ud;
    sb_sep(&c->b, ",");
    sb_printf(&c->b, "%" PRIu64, m->id);
    return coll_more(c);
}

static int cli_cb(void *ud, const pl_client_rec *r)
{
    coll *c = ud;
    sb_sep(&c->b, " | ");
    fmt_client(&c->b, r);
    return coll_more(c);
}

static int log_cb(void *ud, const pl_log_entry *e)
{
    coll *c = ud;
    sb_sep(&c->b, " ");
    fmt_entry(&c->b, e);
    return coll_more(c);
}

/* The result of one call as text: the record, or "rc=N" on error. */
static char *coll_result(coll *c, int rc)
{
    if (rc != PL_OK) {
        free(c->b.p);
        memset(&c->b, 0, sizeof c->b);
        sb_printf(&c->b, "rc=%d", rc);
    }
    return sb_take(&c->b);
}

static char *get_name(pl_store *st, const char *name)
{
    pl_account_rec a;
    coll c = { 0 };
    int rc;

    memset(&a, 0, sizeof a);
    rc = S->account_get_name(st, pl_str_c(name), &a);
    if (rc == PL_OK)
        fmt_account(&c.b, &a);
    return coll_result(&c, rc);
}

static char *get_uid(pl_store *st, uint64_t uid)
{
    pl_account_rec a;
    coll c = { 0 };
    int rc;

    memset(&a, 0, sizeof a);
    rc = S->account_get_uid(st, uid, &a);
    if (rc == PL_OK)
        fmt_account(&c.b, &a);
    return coll_result(&c, rc);
}

static char *scan_names(pl_store *st, pl_str start, int stop)
{
    coll c = { 0 };
    int rc;

    c.stop = stop;
    rc = S->account_scan(st, start, acc_name_cb, &c);
    return coll_result(&c, rc);
}

static char *get_session(pl_store *st, const uint8_t *th)
{
    pl_session_rec r;
    coll c = { 0 };
    pl_str k = { (const char *)th, 32 };
    int rc;

    memset(&r, 0, sizeof r);
    rc = S->session_get(st, k, &r);
    if (rc == PL_OK)
        fmt_session(&c.b, &r);
    return coll_result(&c, rc);
}

static char *scan_sessions(pl_store *st)
{
    coll c = { 0 };
    int rc = S->session_scan(st, ses_cb, &c);
    return coll_result(&c, rc);
}

static char *get_msg(pl_store *st, uint64_t id)
{
    pl_message_rec m;
    coll c = { 0 };
    int rc;

    memset(&m, 0, sizeof m);
    rc = S->message_get(st, id, &m);
    if (rc == PL_OK)
        fmt_message(&c.b, &m);
    return coll_result(&c, rc);
}

static char *query_ids(pl_store *st, uint32_t kind, uint64_t uid, uint64_t peer,
                       uint64_t after, uint64_t off, uint64_t lim)
{
    pl_msg_query q = { kind, uid, peer, after, off, lim };
    coll c = { 0 };
    int rc = S->message_scan(st, &q, msg_id_cb, &c);
    return coll_result(&c, rc);
}

static char *counts(pl_store *st, uint64_t uid)
{
    uint64_t u = 12345, r = 12345;
    coll c = { 0 };
    int rc = S->message_counts(st, uid, &u, &r);

    if (rc == PL_OK)
        sb_printf(&c.b, "%" PRIu64 "/%" PRIu64, u, r);
    return coll_result(&c, rc);
}

static char *get_client(pl_store *st, uint64_t id)
{
    pl_client_rec r;
    coll c = { 0 };
    int rc;

    memset(&r, 0, sizeof r);
    rc = S->client_get(st, id, &r);
    if (rc == PL_OK)
        fmt_client(&c.b, &r);
    return coll_result(&c, rc);
}

static char *scan_clients(pl_store *st)
{
    coll c = { 0 };
    int rc = S->client_scan(st, cli_cb, &c);
    return coll_result(&c, rc);
}

static char *get_meta(pl_store *st, const char *key)
{
    uint64_t v = 4242;
    coll c = { 0 };
    int rc = S->meta_get(st, key, &v);

    if (rc == PL_OK)
        sb_printf(&c.b, "%" PRIu64, v);
    return coll_result(&c, rc);
}

static char *bounds(pl_store *st)
{
    uint64_t f = 777, l = 777;
    coll c = { 0 };
    int rc = S->log_bounds(st, &f, &l);

    if (rc == PL_OK)
        sb_printf(&c.b, "%" PRIu64 "..%" PRIu64, f, l);
    return coll_result(&c, rc);
}

static char *log_range(pl_store *st, uint64_t from, uint64_t to)
{
    coll c = { 0 };
    int rc = S->log_read(st, from, to, log_cb, &c);
    return coll_result(&c, rc);
}

static pl_log_entry ent(uint64_t op, uint64_t view, const char *data)
{
    pl_log_entry e = { op, view, (const uint8_t *)data, (uint32_t)strlen(data) };
    return e;
}

/* Append entries op first..last with data "e<op>" in view `view`. */
static int append_range(pl_store *st, uint64_t first, uint64_t last, uint64_t view)
{
    char bufs[64][24];
    pl_log_entry e[64];
    uint64_t op;
    size_t n = 0;
    int rc;

    for (op = first; op <= last; op++) {
        snprintf(bufs[n], sizeof bufs[n], "e%" PRIu64, op);
        e[n] = ent(op, view, bufs[n]);
        if (++n == 64 || op == last) {
            rc = S->log_append(st, e, n);
            if (rc != PL_OK)
                return rc;
            n = 0;
        }
    }
    return PL_OK;
}

/* Meta keys a dump shows (the store has no meta scan). */
static const char *const dump_keys[] = { "view", "last_normal_view", "commit",
                                         "counter", "k", "x", "y" };

/* The whole observable state of a store as text, for before/after
 * comparisons (abort, reopen, cross-store). uid_max bounds the counts shown. */
static char *dump(const pl_store_plugin *sp, pl_store *st, uint64_t uid_max)
{
    sb b = { 0 };
    coll c;
    uint64_t f = 0, l = 0, n = 0, u, r, uid;
    pl_msg_query all = { PL_Q_ALL, 0, 0, 0, 0, 0 };
    size_t i;
    int rc;

    sb_printf(&b, "applied=%" PRIu64 "\nmeta:", sp->applied_op(st));
    for (i = 0; i < sizeof dump_keys / sizeof dump_keys[0]; i++) {
        rc = sp->meta_get(st, dump_keys[i], &u);
        if (rc == PL_OK)
            sb_printf(&b, " %s=%" PRIu64, dump_keys[i], u);
        else
            sb_printf(&b, " %s:rc=%d", dump_keys[i], rc);
    }
    rc = sp->log_bounds(st, &f, &l);
    sb_printf(&b, "\nlog(rc=%d) %" PRIu64 "..%" PRIu64 ":", rc, f, l);
    if (rc == PL_OK && l) {
        memset(&c, 0, sizeof c);
        rc = sp->log_read(st, f, l, log_cb, &c);
        sb_printf(&b, " rc=%d %s", rc, c.b.p ? c.b.p : "");
        free(c.b.p);
    }
    rc = sp->account_count(st, &n);
    sb_printf(&b, "\naccounts(count rc=%d n=%" PRIu64 "):", rc, n);
    memset(&c, 0, sizeof c);
    rc = sp->account_scan(st, pl_str_c(""), acc_cb, &c);
    sb_printf(&b, " rc=%d %s", rc, c.b.p ? c.b.p : "");
    free(c.b.p);
    memset(&c, 0, sizeof c);
    rc = sp->session_scan(st, ses_cb, &c);
    sb_printf(&b, "\nsessions: rc=%d %s", rc, c.b.p ? c.b.p : "");
    free(c.b.p);
    memset(&c, 0, sizeof c);
    rc = sp->message_scan(st, &all, msg_cb, &c);
    sb_printf(&b, "\nmessages: rc=%d %s", rc, c.b.p ? c.b.p : "");
    free(c.b.p);
    sb_printf(&b, "\ncounts:");
    for (uid = 1; uid <= uid_max; uid++) {
        u = r = 0;
        rc = sp->message_counts(st, uid, &u, &r);
        sb_printf(&b, " %" PRIu64 "=%" PRIu64 "/%" PRIu64 "%s", uid, u, r, rc ? "(rc!)" : "");
    }
    memset(&c, 0, sizeof c);
    rc = sp->client_scan(st, cli_cb, &c);
    sb_printf(&b, "\nclients: rc=%d %s", rc, c.b.p ? c.b.p : "");
    free(c.b.p);
    return sb_take(&b);
}

/* ------------------------------------------------------------------ */
/* meta                                                                */

START_TEST(meta_unset_is_not_found)
{
    uint64_t v = 7;

    IS(S->meta_get(T, "view", &v), PL_ERR_NOT_FOUND);
    IS(S->meta_get(T, "commit", &v), PL_ERR_NOT_FOUND);
    ck_assert_uint_eq(S->applied_op(T), 0);
}
END_TEST

START_TEST(meta_set_get_overwrite)
{
    OK(S->meta_set(T, "view", 5));
    STR_EQ(get_meta(T, "view"), "5");
    OK(S->meta_set(T, "view", 7));
    STR_EQ(get_meta(T, "view"), "7");
    /* Full uint64 range: values must not pass through a signed or double type. */
    OK(S->meta_set(T, "commit", UINT64_MAX));
    STR_EQ(get_meta(T, "commit"), "18446744073709551615");
    OK(S->meta_set(T, "x", 0x8000000000000001ull));
    STR_EQ(get_meta(T, "x"), "9223372036854775809");
    /* 0 is a value, not "unset". */
    OK(S->meta_set(T, "k", 0));
    STR_EQ(get_meta(T, "k"), "0");
    STR_EQ(get_meta(T, "y"), "rc=5");
    STR_EQ(get_meta(T, "vie"), "rc=5");
    STR_EQ(get_meta(T, "view2"), "rc=5");
    reopen(1);
    STR_EQ(get_meta(T, "view"), "7");
    STR_EQ(get_meta(T, "commit"), "18446744073709551615");
    STR_EQ(get_meta(T, "x"), "9223372036854775809");
    STR_EQ(get_meta(T, "k"), "0");
    STR_EQ(get_meta(T, "y"), "rc=5");
}
END_TEST

/* The core keeps counters (next uid, next message id) as meta keys inside
 * the apply transaction and reads them back within the same batch, so a
 * transaction must read its own writes. */
START_TEST(meta_in_txn_abort)
{
    OK(S->meta_set(T, "x", 1));
    txn_begin();
    OK(S->meta_set(T, "x", 2));
    OK(S->meta_set(T, "y", 3));
    STR_EQ(get_meta(T, "x"), "2");
    STR_EQ(get_meta(T, "y"), "3");
    S->abort(T);
    STR_EQ(get_meta(T, "x"), "1");
    STR_EQ(get_meta(T, "y"), "rc=5");
    ck_assert_uint_eq(S->applied_op(T), 0);
    reopen(0);
    STR_EQ(get_meta(T, "x"), "1");
    STR_EQ(get_meta(T, "y"), "rc=5");
}
END_TEST

START_TEST(meta_in_txn_commit)
{
    txn_begin();
    OK(S->meta_set(T, "x", 2));
    OK(S->meta_set(T, "y", 3));
    OK(S->meta_set(T, "x", 4));
    OK(S->commit(T, 10));
    STR_EQ(get_meta(T, "x"), "4");
    STR_EQ(get_meta(T, "y"), "3");
    ck_assert_uint_eq(S->applied_op(T), 10);
    reopen(0);
    STR_EQ(get_meta(T, "x"), "4");
    STR_EQ(get_meta(T, "y"), "3");
    ck_assert_uint_eq(S->applied_op(T), 10);
}
END_TEST

/* ------------------------------------------------------------------ */
/* log                                                                 */

START_TEST(log_empty)
{
    STR_EQ(bounds(T), "0..0");
    STR_EQ(log_range(T, 1, 100), "");
    STR_EQ(log_range(T, 0, UINT64_MAX), "");
}
END_TEST

static int stop_after_two(void *ud, const pl_log_entry *e)
{
    int *n = ud;
    (void)e;
    return ++*n >= 2;
}

typedef struct big_check {
    const uint8_t *want;
    uint32_t len;
    int seen, equal;
} big_check;

static int big_cb(void *ud, const pl_log_entry *e)
{
    big_check *b = ud;

    b->seen++;
    b->equal = e->len == b->len && e->data && memcmp(e->data, b->want, b->len) == 0;
    return 0;
}

START_TEST(log_append_and_read)
{
    static const uint8_t bin[] = { 'e', 0, 0xff, '\n' };
    pl_log_entry a[3] = { ent(1, 1, "a"), ent(2, 1, "bb"), ent(3, 2, "ccc") };
    pl_log_entry b[2] = { ent(4, 2, "d"), { 5, 3, bin, sizeof bin } };
    uint8_t *big;
    big_check bc = { 0 };
    int calls = 0;
    uint32_t i;

    OK(S->log_append(T, a, 3));
    OK(S->log_append(T, b, 2));
    STR_EQ(bounds(T), "1..5");
    STR_EQ(log_range(T, 1, 5), "1/1/a 2/1/bb 3/2/ccc 4/2/d 5/3/e\\x00\\xff\\x0a");
    STR_EQ(log_range(T, 2, 4), "2/1/bb 3/2/ccc 4/2/d");
    STR_EQ(log_range(T, 5, 5), "5/3/e\\x00\\xff\\x0a");
    STR_EQ(log_range(T, 0, UINT64_MAX), "1/1/a 2/1/bb 3/2/ccc 4/2/d 5/3/e\\x00\\xff\\x0a");
    STR_EQ(log_range(T, 4, 2), "");
    STR_EQ(log_range(T, 6, 100), "");
    STR_EQ(log_range(T, 4, 100), "4/2/d 5/3/e\\x00\\xff\\x0a");

    /* Stopping early is not an error. */
    OK(S->log_read(T, 1, 5, stop_after_two, &calls));
    ck_assert_int_eq(calls, 2);

    /* An entry larger than any single message body. */
    big = malloc(200000);
    ck_assert_ptr_nonnull(big);
    for (i = 0; i < 200000; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    {
        pl_log_entry e = { 6, 3, big, 200000 };
        OK(S->log_append(T, &e, 1));
    }
    bc.want = big;
    bc.len = 200000;
    OK(S->log_read(T, 6, 6, big_cb, &bc));
    ck_assert_msg(bc.seen == 1 && bc.equal, "200000-byte entry: seen %d, equal %d",
                  bc.seen, bc.equal);
    free(big);
    STR_EQ(bounds(T), "1..6");
}
END_TEST

START_TEST(log_first_op_arbitrary)
{
    pl_log_entry e[2] = { ent(100, 7, "x"), ent(101, 7, "y") };

    OK(S->log_append(T, e, 2));
    STR_EQ(bounds(T), "100..101");
    STR_EQ(log_range(T, 1, 1000), "100/7/x 101/7/y");
}
END_TEST

START_TEST(log_continuity_enforced)
{
    pl_log_entry gap = ent(5, 1, "gap");
    pl_log_entry dup = ent(3, 1, "dup");
    pl_log_entry old = ent(2, 1, "old");
    pl_log_entry inner_gap[2] = { ent(4, 1, "x"), ent(6, 1, "y") };
    pl_log_entry inner_dup[2] = { ent(4, 1, "x"), ent(4, 1, "y") };
    pl_log_entry backwards[2] = { ent(4, 1, "x"), ent(3, 1, "y") };
    pl_log_entry next = ent(4, 2, "next");

    OK(append_range(T, 1, 3, 1));
    NOT_OK(S->log_append(T, &gap, 1));
    NOT_OK(S->log_append(T, &dup, 1));
    NOT_OK(S->log_append(T, &old, 1));
    NOT_OK(S->log_append(T, inner_gap, 2));
    NOT_OK(S->log_append(T, inner_dup, 2));
    NOT_OK(S->log_append(T, backwards, 2));
    /* A refused batch leaves nothing behind, not even its valid head. */
    STR_EQ(bounds(T), "1..3");
    STR_EQ(log_range(T, 1, 10), "1/1/e1 2/1/e2 3/1/e3");
    OK(S->log_append(T, &next, 1));
    STR_EQ(bounds(T), "1..4");
    reopen(0);
    STR_EQ(log_range(T, 1, 10), "1/1/e1 2/1/e2 3/1/e3 4/2/next");
}
END_TEST

START_TEST(log_truncate_suffix)
{
    pl_log_entry e8 = ent(8, 5, "new8");
    pl_log_entry e42 = ent(42, 6, "fresh");
    pl_log_entry e9 = ent(9, 5, "x");

    OK(append_range(T, 1, 10, 1));
    OK(S->log_truncate(T, 7));
    STR_EQ(bounds(T), "1..7");
    STR_EQ(log_range(T, 6, 10), "6/1/e6 7/1/e7");
    /* The suffix is really gone: the log continues at 8, not 11. */
    NOT_OK(S->log_append(T, &e9, 1));
    OK(S->log_append(T, &e8, 1));
    STR_EQ(log_range(T, 7, 10), "7/1/e7 8/5/new8");
    OK(S->log_truncate(T, 100));
    STR_EQ(bounds(T), "1..8");
    OK(S->log_truncate(T, 8));
    STR_EQ(bounds(T), "1..8");
    reopen(0);
    STR_EQ(bounds(T), "1..8");
    STR_EQ(log_range(T, 8, 8), "8/5/new8");
    OK(S->log_truncate(T, 0));
    STR_EQ(bounds(T), "0..0");
    STR_EQ(log_range(T, 0, 100), "");
    OK(S->log_append(T, &e42, 1));
    STR_EQ(bounds(T), "42..42");
}
END_TEST

START_TEST(log_compact_prefix)
{
    pl_log_entry e11 = ent(11, 2, "e11");

    OK(append_range(T, 1, 10, 1));
    OK(S->log_compact(T, 4));
    STR_EQ(bounds(T), "4..10");
    STR_EQ(log_range(T, 1, 5), "4/1/e4 5/1/e5");
    OK(S->log_compact(T, 2));
    STR_EQ(bounds(T), "4..10");
    OK(S->log_append(T, &e11, 1));
    STR_EQ(bounds(T), "4..11");
    reopen(0);
    STR_EQ(bounds(T), "4..11");
    OK(S->log_compact(T, 11));
    STR_EQ(bounds(T), "11..11");
    STR_EQ(log_range(T, 0, UINT64_MAX), "11/2/e11");
    /* Compaction then truncation leaves a consistent log. */
    OK(append_range(T, 12, 15, 3));
    OK(S->log_truncate(T, 13));
    STR_EQ(bounds(T), "11..13");
}
END_TEST

/* store.h: after log_compact(before) the state of every op below `before`
 * survives a crash, since those ops can no longer be replayed. The writer
 * is killed with SIGKILL right after compacting (no close, no checkpoint of
 * its own); the reopened store must hold the committed state. Regression
 * for the fault suite's first finding (docs/fault-testing.md). */
START_TEST(compact_makes_state_durable)
{
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir, "compact-crash");
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        pl_store_options o = { dir, 1, NULL };
        pl_store *st = NULL;
        char err[512];
        if (pl_plugin_store_open(g_plug[0], &g_host, &o, &st, err, sizeof err) != PL_OK)
            _exit(2);
        /* An emptied log, as after a snapshot install, is the harder case:
         * there is nothing to drop, and the state must still be made durable. */
        for (uint64_t op = 1; op <= 5; op++) {
            pl_log_entry e = ent(op, 1, "x");
            if (S->log_append(st, &e, 1) != PL_OK)
                _exit(3);
        }
        if (S->log_truncate(st, 0) != PL_OK)
            _exit(3);
        pl_account_rec a = mkacct(7, "kept", "h", 1);
        if (S->begin(st) != PL_OK || S->account_put(st, &a) != PL_OK ||
            S->meta_set(st, "next_uid", 8) != PL_OK || S->commit(st, 10) != PL_OK)
            _exit(4);
        if (S->log_compact(st, 11) != PL_OK)
            _exit(5);
        raise(SIGKILL);
        _exit(6);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the writer failed before the crash (exit %d)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    pl_store *st = open_store(g_plug[0], dir, 1);
    ck_assert_msg(S->applied_op(st) == 10,
                  "applied_op after the crash is %llu, want 10: the state of compacted ops was lost",
                  (unsigned long long)S->applied_op(st));
    pl_account_rec got;
    ck_assert_int_eq(S->account_get_uid(st, 7, &got), PL_OK);
    S->close(st);
}
END_TEST

START_TEST(log_survives_reopen)
{
    pl_log_entry wrong = ent(30, 9, "wrong");
    pl_log_entry right = ent(24, 9, "right");
    char *before;

    OK(append_range(T, 1, 20, 1));
    OK(append_range(T, 21, 25, 2));
    OK(S->log_truncate(T, 23));
    OK(S->log_compact(T, 3));
    before = log_range(T, 0, UINT64_MAX);
    reopen(1);
    STR_EQ(bounds(T), "3..23");
    STR_EQ(log_range(T, 0, UINT64_MAX), before);
    NOT_OK(S->log_append(T, &wrong, 1));
    OK(S->log_append(T, &right, 1));
    reopen(0);
    STR_EQ(bounds(T), "3..24");
    STR_EQ(log_range(T, 24, 24), "24/9/right");
    free(before);
}
END_TEST

/* Batches of entries cut at any op: reads, truncation and compaction whose
 * bounds fall inside a batch appended in one call (a store may keep a
 * batch together, as the SQLite store keeps a row per batch), views
 * changing inside a batch (a state transfer appends entries of several
 * views at once), a batch longer than 256 entries, and empty entries. */
static uint64_t lb_views[400];

/* Append first..last in one call: data "e<op>", empty for ops divisible
 * by 10, and the views in lb_views. */
static int lb_append(pl_store *st, uint64_t first, uint64_t last)
{
    static char bufs[400][16];
    pl_log_entry e[400];
    size_t n = 0;
    uint64_t op;

    for (op = first; op <= last; op++, n++) {
        bufs[n][0] = '\0';
        if (op % 10)
            snprintf(bufs[n], sizeof bufs[n], "e%" PRIu64, op);
        e[n] = ent(op, lb_views[op], bufs[n]);
    }
    return S->log_append(st, e, n);
}

/* What log_range must show for ops lo..hi ("" when lo > hi). */
static char *lb_expect(uint64_t lo, uint64_t hi)
{
    sb b = { 0 };
    uint64_t op;

    for (op = lo; op <= hi; op++) {
        sb_sep(&b, " ");
        sb_printf(&b, "%" PRIu64 "/%" PRIu64 "/", op, lb_views[op]);
        if (op % 10)
            sb_printf(&b, "e%" PRIu64, op);
    }
    return sb_take(&b);
}

/* log_read(from, to) of a log holding first..last. */
static void lb_check(pl_store *st, uint64_t from, uint64_t to, uint64_t first, uint64_t last)
{
    char *want = lb_expect(from > first ? from : first, to < last ? to : last);
    char *got = log_range(st, from, to);

    ck_assert_msg(strcmp(got, want) == 0, "log_read(%" PRIu64 ", %" PRIu64 ") of the log %"
                  PRIu64 "..%" PRIu64 ": expected \"%.1500s\", got \"%.1500s\"", from, to,
                  first, last, want, got);
    free(got);
    free(want);
}

START_TEST(log_batches_cut_inside)
{
    static const uint64_t cuts[][2] = { { 1, 7 }, { 3, 9 }, { 5, 5 }, { 7, 8 }, { 8, 12 },
                                        { 12, 13 }, { 2, 300 }, { 250, 260 }, { 299, 400 },
                                        { 0, 1 }, { 301, 500 } };
    uint64_t op;
    size_t i;
    coll c = { 0 };

    for (op = 0; op < 400; op++)
        lb_views[op] = op < 4 ? 1 : op < 6 ? 2 : op < 200 ? 3 : 4;
    OK(lb_append(T, 1, 7));
    OK(lb_append(T, 8, 12));
    OK(lb_append(T, 13, 300));
    STR_EQ(bounds(T), "1..300");
    for (i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        lb_check(T, cuts[i][0], cuts[i][1], 1, 300);
    /* Stopping inside a batch, the read having started inside another. */
    c.stop = 6;
    OK(S->log_read(T, 5, 300, log_cb, &c));
    ck_assert_int_eq(c.calls, 6);
    {
        char *want = lb_expect(5, 10);
        ck_assert_msg(strcmp(c.b.p, want) == 0, "stopped read: got %s, expected %s", c.b.p, want);
        free(want);
    }
    free(c.b.p);

    /* Truncation inside the long batch; the log continues from there in
     * a new view, in a batch of its own. */
    OK(S->log_truncate(T, 270));
    STR_EQ(bounds(T), "1..270");
    for (op = 271; op < 400; op++)
        lb_views[op] = 5;
    {
        pl_log_entry past = ent(272, 5, "x");
        NOT_OK(S->log_append(T, &past, 1));
    }
    OK(lb_append(T, 271, 280));
    lb_check(T, 265, 400, 1, 280);
    /* ... and inside a short batch. */
    OK(S->log_truncate(T, 10));
    STR_EQ(bounds(T), "1..10");
    lb_check(T, 0, 400, 1, 10);
    for (op = 11; op < 400; op++)
        lb_views[op] = 6;
    OK(lb_append(T, 11, 20));

    /* Compaction inside a batch, then inside the next. */
    OK(S->log_compact(T, 4));
    STR_EQ(bounds(T), "4..20");
    lb_check(T, 1, 8, 4, 20);
    OK(S->log_compact(T, 9));
    STR_EQ(bounds(T), "9..20");
    lb_check(T, 0, 12, 9, 20);
    reopen(0);
    STR_EQ(bounds(T), "9..20");
    lb_check(T, 0, UINT64_MAX, 9, 20);
    lb_check(T, 10, 15, 9, 20);
    OK(lb_append(T, 21, 22));
    OK(S->log_compact(T, 15));
    OK(S->log_truncate(T, 17));
    reopen(1);
    STR_EQ(bounds(T), "15..17");
    lb_check(T, 0, UINT64_MAX, 15, 17);
}
END_TEST

/* ------------------------------------------------------------------ */
/* transactions                                                        */

START_TEST(txn_commit_sets_applied_op)
{
    pl_account_rec a = mkacct(1, "alice", "h", 1);

    ck_assert_uint_eq(S->applied_op(T), 0);
    txn_begin();
    OK(S->account_put(T, &a));
    OK(S->commit(T, 5));
    ck_assert_uint_eq(S->applied_op(T), 5);
    /* An empty transaction still moves applied_op (a NOOP op). */
    txn_begin();
    OK(S->commit(T, 9));
    ck_assert_uint_eq(S->applied_op(T), 9);
    reopen(1);
    ck_assert_uint_eq(S->applied_op(T), 9);
    STR_EQ(get_uid(T, 1), "1:alice:h:1");
}
END_TEST

static const uint8_t TH1[32] = { 1, 1, 1 };
static const uint8_t TH2[32] = { 2, 2, 2 };
static const uint8_t TH3[32] = { 3, 3, 3 };

static pl_session_rec sess(const uint8_t *th, uint64_t uid, uint64_t created)
{
    pl_session_rec r = { { (const char *)th, 32 }, uid, created };
    return r;
}

static pl_client_rec client(uint64_t id, uint64_t req, uint64_t op, const char *reply)
{
    pl_client_rec c = { id, req, op, pl_str_c(reply) };
    return c;
}

static void put_baseline(void)
{
    pl_account_rec a1 = mkacct(1, "alice", "ha", 100), a2 = mkacct(2, "bob", "hb", 200);
    pl_session_rec s1 = sess(TH1, 1, 10), s2 = sess(TH2, 2, 20);
    pl_message_rec m10 = msgrec(10, 1, 2, "alice", "bob", "hello", 1000, 0);
    pl_message_rec m11 = msgrec(11, 2, 1, "bob", "alice", "hi", 1001, PL_MSGF_READ);
    pl_client_rec c7 = client(7, 1, 1, "r1");

    txn_begin();
    OK(S->account_put(T, &a1));
    OK(S->account_put(T, &a2));
    OK(S->session_put(T, &s1));
    OK(S->session_put(T, &s2));
    OK(S->message_put(T, &m10));
    OK(S->message_put(T, &m11));
    OK(S->client_put(T, &c7));
    OK(S->meta_set(T, "counter", 11));
    txn_commit();
}

START_TEST(txn_abort_discards_everything)
{
    pl_account_rec a3 = mkacct(3, "carol", "hc", 300), a1b = mkacct(1, "alice", "CHANGED", 100);
    pl_session_rec s3 = sess(TH3, 3, 30);
    pl_message_rec m12 = msgrec(12, 3, 1, "carol", "alice", "new", 1002, 0);
    pl_client_rec c7b = client(7, 2, 2, "r2"), c8 = client(8, 1, 2, "r8");
    pl_client_rec c7c = client(7, 3, 3, "r3"), c8b = client(8, 2, 3, "r8b");
    char *before, *after;

    put_baseline();
    before = dump(S, T, 4);

    txn_begin();
    OK(S->account_put(T, &a3));
    OK(S->account_put(T, &a1b));
    OK(S->account_delete(T, 2));
    OK(S->session_put(T, &s3));
    OK(S->session_delete(T, (pl_str){ (const char *)TH1, 32 }));
    OK(S->session_delete_uid(T, 2));
    OK(S->message_put(T, &m12));
    OK(S->message_set_flags(T, 10, PL_MSGF_READ | PL_MSGF_DEL_SENDER));
    OK(S->message_delete(T, 11));
    OK(S->client_put(T, &c7b));
    OK(S->client_put(T, &c8));
    /* A client's row changed twice in one batch (a pipelining client)
     * still goes back to what it was before the batch. */
    OK(S->client_put(T, &c7c));
    OK(S->client_put(T, &c8b));
    OK(S->meta_set(T, "counter", 12));
    OK(S->meta_set(T, "k", 1));
    /* Inside the transaction its own changes are visible. */
    STR_EQ(get_name(T, "carol"), "3:carol:hc:300");
    STR_EQ(get_uid(T, 2), "rc=5");
    STR_EQ(get_msg(T, 12), "12:3>1:carol>alice:new:t1002:f0");
    STR_EQ(get_msg(T, 11), "rc=5");
    STR_EQ(get_client(T, 8), "8:2:3:r8b");
    S->abort(T);

    after = dump(S, T, 4);
    STR_EQ(after, before);
    ck_assert_uint_eq(S->applied_op(T), 1);

    /* The store is usable after an abort. */
    txn_begin();
    OK(S->account_put(T, &a3));
    txn_commit();
    STR_EQ(get_name(T, "carol"), "3:carol:hc:300");
    free(before);
    before = dump(S, T, 4);
    reopen(0);
    STR_EQ(dump(S, T, 4), before);
    free(before);
}
END_TEST

/* A change that fails inside a batch changes nothing, and aborting the
 * batch afterwards must not undo what was there before it: a duplicate
 * message id leaves the stored message, a name taken by another account
 * leaves both accounts. Batches committed earlier stay. */
START_TEST(txn_abort_after_failed_change)
{
    pl_message_rec m12 = msgrec(12, 3, 1, "carol", "alice", "first", 1002, 0);
    pl_message_rec m12b = msgrec(12, 1, 3, "alice", "carol", "second", 1003, 0);
    pl_message_rec m13 = msgrec(13, 1, 3, "alice", "carol", "third", 1004, 0);
    pl_account_rec a9 = mkacct(9, "alice", "h9", 900); /* alice is uid 1 */
    char *before;

    put_baseline();
    txn_begin();
    OK(S->message_put(T, &m12));
    OK(S->commit(T, 5));
    before = dump(S, T, 4);
    txn_begin();
    OK(S->message_put(T, &m13));
    ck_assert_int_ne(S->message_put(T, &m12b), PL_OK);
    ck_assert_int_ne(S->account_put(T, &a9), PL_OK);
    S->abort(T);
    STR_EQ(dump(S, T, 4), before);
    STR_EQ(get_msg(T, 12), "12:3>1:carol>alice:first:t1002:f0");
    STR_EQ(get_msg(T, 13), "rc=5");
    ck_assert_uint_eq(S->applied_op(T), 5);
    reopen(0);
    STR_EQ(dump(S, T, 4), before);
    free(before);
}
END_TEST

/* ------------------------------------------------------------------ */
/* accounts                                                            */

START_TEST(account_put_get_replace)
{
    char nm[] = "alicexyz", pw[] = "$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";
    pl_account_rec a = { 1, { nm, 5 }, { pw, (uint32_t)strlen(pw) }, 1000 };
    pl_account_rec b = mkacct(2, "bob", "hb", 2000);
    pl_account_rec a2 = mkacct(1, "alice", "hash-b", 1000);
    pl_account_rec ren = mkacct(1, "alicia", "hash-c", 1000);
    uint64_t n = 99;

    txn_begin();
    OK(S->account_put(T, &a));
    OK(S->account_put(T, &b));
    txn_commit();
    /* The store copied exactly len bytes, not up to a NUL. */
    memset(nm, 'Q', sizeof nm - 1);
    memset(pw, 'Q', sizeof pw - 1);
    STR_EQ(get_name(T, "alice"),
           "1:alice:$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g:1000");
    STR_EQ(get_uid(T, 1),
           "1:alice:$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g:1000");
    STR_EQ(get_uid(T, 2), "2:bob:hb:2000");
    STR_EQ(get_name(T, "alic"), "rc=5");
    STR_EQ(get_name(T, "alicex"), "rc=5");
    STR_EQ(get_name(T, "Alice"), "rc=5");
    STR_EQ(get_name(T, ""), "rc=5");
    STR_EQ(get_uid(T, 3), "rc=5");
    STR_EQ(get_uid(T, 0), "rc=5");
    {
        /* A lookup key that is not NUL-terminated. */
        pl_str key = { "bobby", 3 };
        pl_account_rec out;
        OK(S->account_get_name(T, key, &out));
        ck_assert_uint_eq(out.uid, 2);
    }

    txn_begin();
    OK(S->account_put(T, &a2));
    txn_commit();
    STR_EQ(get_name(T, "alice"), "1:alice:hash-b:1000");
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 2);

    /* Replace by uid with a new name: the old name no longer resolves. */
    txn_begin();
    OK(S->account_put(T, &ren));
    txn_commit();
    STR_EQ(get_name(T, "alice"), "rc=5");
    STR_EQ(get_name(T, "alicia"), "1:alicia:hash-c:1000");
    STR_EQ(get_uid(T, 1), "1:alicia:hash-c:1000");
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 2);
    reopen(0);
    STR_EQ(get_uid(T, 1), "1:alicia:hash-c:1000");
    STR_EQ(get_name(T, "alice"), "rc=5");
}
END_TEST

START_TEST(account_delete_and_count)
{
    pl_account_rec a[3] = { mkacct(1, "alice", "h1", 1), mkacct(2, "bob", "h2", 2),
                            mkacct(3, "carol", "h3", 3) };
    pl_account_rec reuse = mkacct(4, "bob", "h4", 4);
    uint64_t n = 99;
    int i;

    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 0);
    txn_begin();
    for (i = 0; i < 3; i++)
        OK(S->account_put(T, &a[i]));
    txn_commit();
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 3);
    txn_begin();
    OK(S->account_delete(T, 2));
    txn_commit();
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 2);
    STR_EQ(get_uid(T, 2), "rc=5");
    STR_EQ(get_name(T, "bob"), "rc=5");
    STR_EQ(get_uid(T, 1), "1:alice:h1:1");
    STR_EQ(get_uid(T, 3), "3:carol:h3:3");
    STR_EQ(scan_names(T, pl_str_c(""), 0), "alice carol");
    /* A deleted name can be taken by a new account (uids are not reused). */
    txn_begin();
    OK(S->account_put(T, &reuse));
    txn_commit();
    STR_EQ(get_name(T, "bob"), "4:bob:h4:4");
    STR_EQ(get_uid(T, 2), "rc=5");
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 3);
    reopen(0);
    OK(S->account_count(T, &n));
    ck_assert_uint_eq(n, 3);
    STR_EQ(get_name(T, "bob"), "4:bob:h4:4");
}
END_TEST

START_TEST(account_scan_memcmp_order)
{
    /* Inserted out of order; memcmp order is 0 A B _ a a- a.b ab z zz~
     * (uppercase before '_' before lowercase; a prefix sorts first). */
    static const char *const names[] = { "ab", "_", "a.b", "zz~", "a", "B", "z",
                                         "a-", "0", "A" };
    pl_str partial = { "a.bXYZ", 3 };
    size_t i;

    txn_begin();
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        pl_account_rec a = mkacct(i + 1, names[i], "h", i);
        OK(S->account_put(T, &a));
    }
    txn_commit();
    STR_EQ(scan_names(T, pl_str_c(""), 0), "0 A B _ a a- a.b ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("a"), 0), "a a- a.b ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("a."), 0), "a.b ab z zz~");
    STR_EQ(scan_names(T, partial, 0), "a.b ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("aa"), 0), "ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("_"), 0), "_ a a- a.b ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("C"), 0), "_ a a- a.b ab z zz~");
    STR_EQ(scan_names(T, pl_str_c("zz~"), 0), "zz~");
    STR_EQ(scan_names(T, pl_str_c("{"), 0), "");
    /* Stopping early is not an error. */
    STR_EQ(scan_names(T, pl_str_c("B"), 3), "B _ a");
    {
        coll c = { 0 };
        OK(S->account_scan(T, pl_str_c("z"), acc_cb, &c));
        STR_EQ(sb_take(&c.b), "7:z:h:6 | 4:zz~:h:3");
    }
    reopen(0);
    STR_EQ(scan_names(T, pl_str_c(""), 0), "0 A B _ a a- a.b ab z zz~");
}
END_TEST

/* ------------------------------------------------------------------ */
/* sessions                                                            */

START_TEST(session_put_get_delete_scan)
{
    /* Raw 32-byte hashes with NULs and high bytes; memcmp order is
     * t0 (all 00) < t5 (00..01) < t4 (01 00..) < t3 (80 ..) < t2 (ff ..). */
    uint8_t t0[32] = { 0 }, t2[32], t3[32] = { 0x80 }, t4[32] = { 0x01 }, t5[32] = { 0 };
    uint8_t unknown[32] = { 0x42 };
    pl_session_rec r;

    memset(t2, 0xff, sizeof t2);
    t5[31] = 1;
    txn_begin();
    r = sess(t2, 2, 20);
    OK(S->session_put(T, &r));
    r = sess(t0, 1, 10);
    OK(S->session_put(T, &r));
    r = sess(t3, 1, 30);
    OK(S->session_put(T, &r));
    r = sess(t5, 1, 50);
    OK(S->session_put(T, &r));
    r = sess(t4, 3, 40);
    OK(S->session_put(T, &r));
    txn_commit();

    STR_EQ(get_session(T, t3), "8000000000000000000000000000000000000000000000000000000000000000:1:30");
    STR_EQ(get_session(T, t0), "0000000000000000000000000000000000000000000000000000000000000000:1:10");
    STR_EQ(get_session(T, unknown), "rc=5");
    STR_EQ(scan_sessions(T),
           "0000000000000000000000000000000000000000000000000000000000000000:1:10 | "
           "0000000000000000000000000000000000000000000000000000000000000001:1:50 | "
           "0100000000000000000000000000000000000000000000000000000000000000:3:40 | "
           "8000000000000000000000000000000000000000000000000000000000000000:1:30 | "
           "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff:2:20");

    txn_begin();
    OK(S->session_delete(T, (pl_str){ (const char *)t3, 32 }));
    txn_commit();
    STR_EQ(get_session(T, t3), "rc=5");
    txn_begin();
    OK(S->session_delete_uid(T, 1));
    txn_commit();
    STR_EQ(get_session(T, t0), "rc=5");
    STR_EQ(get_session(T, t5), "rc=5");
    STR_EQ(scan_sessions(T),
           "0100000000000000000000000000000000000000000000000000000000000000:3:40 | "
           "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff:2:20");
    {
        coll c = { 0 };
        c.stop = 1;
        OK(S->session_scan(T, ses_cb, &c));
        ck_assert_int_eq(c.calls, 1);
        free(c.b.p);
    }
    reopen(0);
    STR_EQ(scan_sessions(T),
           "0100000000000000000000000000000000000000000000000000000000000000:3:40 | "
           "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff:2:20");
}
END_TEST

/* ------------------------------------------------------------------ */
/* messages                                                            */

START_TEST(message_put_get_flags_delete)
{
    char body[] = "hello, bob\xc3\xa9XXXX";
    pl_message_rec m = { 10, 1, 2, pl_str_c("alice"), pl_str_c("bob"),
                         { body, (uint32_t)strlen(body) - 4 }, 1ull << 62, 0 };
    pl_message_rec big = msgrec(11, 2, 1, "bob", "alice", "", 5, PL_MSGF_READ);
    pl_message_rec out;
    char *bigbody = malloc(PL_BODY_MAX);
    uint32_t i;

    ck_assert_ptr_nonnull(bigbody);
    for (i = 0; i < PL_BODY_MAX; i++)
        bigbody[i] = (char)('a' + i % 26);
    big.body.ptr = bigbody;
    big.body.len = PL_BODY_MAX;

    txn_begin();
    OK(S->message_put(T, &m));
    OK(S->message_put(T, &big));
    txn_commit();
    memset(body, 'Z', sizeof body - 1);
    STR_EQ(get_msg(T, 10), "10:1>2:alice>bob:hello,\\x20bob\\xc3\\xa9:t4611686018427387904:f0");
    OK(S->message_get(T, 11, &out));
    ck_assert_uint_eq(out.body.len, PL_BODY_MAX);
    ck_assert_msg(memcmp(out.body.ptr, bigbody, PL_BODY_MAX) == 0, "64 KiB body differs");
    ck_assert_uint_eq(out.flags, PL_MSGF_READ);
    STR_EQ(get_msg(T, 12), "rc=5");
    STR_EQ(get_msg(T, 0), "rc=5");

    /* set_flags replaces the flag word; it does not OR into it. */
    txn_begin();
    OK(S->message_set_flags(T, 10, PL_MSGF_READ));
    txn_commit();
    STR_EQ(get_msg(T, 10), "10:1>2:alice>bob:hello,\\x20bob\\xc3\\xa9:t4611686018427387904:f1");
    txn_begin();
    OK(S->message_set_flags(T, 10, PL_MSGF_READ | PL_MSGF_DEL_SENDER));
    txn_commit();
    STR_EQ(get_msg(T, 10), "10:1>2:alice>bob:hello,\\x20bob\\xc3\\xa9:t4611686018427387904:f3");
    txn_begin();
    OK(S->message_set_flags(T, 10, PL_MSGF_DEL_RECIPIENT));
    txn_commit();
    STR_EQ(get_msg(T, 10), "10:1>2:alice>bob:hello,\\x20bob\\xc3\\xa9:t4611686018427387904:f4");
    /* Flags on a missing id do not create a row. */
    txn_begin();
    S->message_set_flags(T, 999, PL_MSGF_READ);
    txn_commit();
    STR_EQ(get_msg(T, 999), "rc=5");

    txn_begin();
    OK(S->message_delete(T, 10));
    txn_commit();
    STR_EQ(get_msg(T, 10), "rc=5");
    STR_EQ(query_ids(T, PL_Q_ALL, 0, 0, 0, 0, 0), "11");
    reopen(0);
    STR_EQ(get_msg(T, 10), "rc=5");
    OK(S->message_get(T, 11, &out));
    ck_assert_uint_eq(out.body.len, PL_BODY_MAX);
    ck_assert_msg(memcmp(out.body.ptr, bigbody, PL_BODY_MAX) == 0,
                  "64 KiB body differs after reopen");
    free(bigbody);
}
END_TEST

/* The query rules of store.h, transcribed directly: the reference the
 * parameter sweeps compare against. ms is sorted by ascending id. */
typedef struct mm {
    uint64_t id, from, to;
    uint32_t flags;
} mm;

static int mm_matches(const mm *m, const pl_msg_query *q)
{
    int recv = m->to == q->uid && !(m->flags & PL_MSGF_DEL_RECIPIENT);
    int sent = m->from == q->uid && !(m->flags & PL_MSGF_DEL_SENDER);

    switch (q->kind) {
    case PL_Q_UNREAD: return recv && !(m->flags & PL_MSGF_READ) && m->id > q->after_id;
    case PL_Q_READ: return recv && (m->flags & PL_MSGF_READ);
    case PL_Q_CONVO: return (sent && m->to == q->peer_uid) || (recv && m->from == q->peer_uid);
    case PL_Q_RECEIVED: return recv;
    case PL_Q_SENT: return sent;
    case PL_Q_ALL: return m->id > q->after_id;
    default: return 0;
    }
}

static char *model_ids(const mm *ms, size_t n, const pl_msg_query *q)
{
    int desc = q->kind == PL_Q_READ || q->kind == PL_Q_CONVO;
    uint64_t matched = 0, emitted = 0;
    sb b = { 0 };
    size_t i;

    for (i = 0; i < n; i++) {
        const mm *m = &ms[desc ? n - 1 - i : i];
        if (!mm_matches(m, q))
            continue;
        if (matched++ < q->offset)
            continue;
        if (q->limit && emitted >= q->limit)
            break;
        emitted++;
        sb_sep(&b, ",");
        sb_printf(&b, "%" PRIu64, m->id);
    }
    return sb_take(&b);
}

static char *model_counts(const mm *ms, size_t n, uint64_t uid)
{
    uint64_t u = 0, r = 0;
    sb b = { 0 };
    size_t i;

    for (i = 0; i < n; i++) {
        if (ms[i].to != uid || (ms[i].flags & PL_MSGF_DEL_RECIPIENT))
            continue;
        if (ms[i].flags & PL_MSGF_READ)
            r++;
        else
            u++;
    }
    sb_printf(&b, "%" PRIu64 "/%" PRIu64, u, r);
    return sb_take(&b);
}

/* Compare one query against the model; the message names the query. */
static void check_query(const mm *ms, size_t n, uint32_t kind, uint64_t uid, uint64_t peer,
                        uint64_t after, uint64_t off, uint64_t lim)
{
    pl_msg_query q = { kind, uid, peer, after, off, lim };
    char *want = model_ids(ms, n, &q);
    char *got = query_ids(T, kind, uid, peer, after, off, lim);

    if (strcmp(want, got) != 0)
        fprintf(stderr, "query kind=%u uid=%" PRIu64 " peer=%" PRIu64 " after=%" PRIu64
                " offset=%" PRIu64 " limit=%" PRIu64 "\n  expected: %s\n  got:      %s\n",
                kind, uid, peer, after, off, lim, want, got);
    ck_assert_msg(strcmp(want, got) == 0,
                  "query kind=%u uid=%" PRIu64 " peer=%" PRIu64 " after=%" PRIu64
                  " offset=%" PRIu64 " limit=%" PRIu64 ": expected \"%.600s\", got \"%.600s\"",
                  kind, uid, peer, after, off, lim, want, got);
    free(want);
    free(got);
}

static void check_counts(const mm *ms, size_t n, uint64_t uid)
{
    char *want = model_counts(ms, n, uid);
    char *got = counts(T, uid);

    ck_assert_msg(strcmp(want, got) == 0, "message_counts(uid %" PRIu64 "): expected "
                  "unread/read %s, got %s", uid, want, got);
    free(want);
    free(got);
}

static const char *const scen_names[] = { "", "alice", "bob", "carol", "dave" };

/* The scenario of message_queries: every visibility case. */
static mm scen[] = {
    { 10, 1, 2, 0 },                                      /* alice->bob unread */
    { 11, 2, 1, PL_MSGF_READ },                           /* bob->alice read */
    { 12, 1, 2, PL_MSGF_READ },                           /* alice->bob read */
    { 13, 3, 2, 0 },                                      /* carol->bob unread */
    { 14, 2, 1, PL_MSGF_DEL_RECIPIENT },                  /* hidden from alice only */
    { 15, 1, 2, PL_MSGF_DEL_SENDER },                     /* hidden from alice only */
    { 16, 2, 3, PL_MSGF_READ | PL_MSGF_DEL_SENDER | PL_MSGF_DEL_RECIPIENT },
    { 18, 2, 1, PL_MSGF_READ },                           /* bob->alice read */
    { 20, 3, 1, 0 },                                      /* carol->alice unread */
    { 21, 1, 3, PL_MSGF_READ | PL_MSGF_DEL_RECIPIENT },   /* carol deleted it */
};
#define NSCEN (sizeof scen / sizeof scen[0])

static void sweep_queries(const mm *ms, size_t n, uint64_t max_uid)
{
    static const uint32_t kinds[] = { PL_Q_UNREAD, PL_Q_READ, PL_Q_CONVO, PL_Q_RECEIVED,
                                      PL_Q_SENT, PL_Q_ALL };
    static const uint64_t offs[] = { 0, 1, 2, 5 };
    static const uint64_t lims[] = { 0, 1, 2, 3, 100 };
    static const uint64_t afters[] = { 0, 12, 15, 100 };
    size_t k, o, l, a;
    uint64_t uid, peer;

    for (uid = 1; uid <= max_uid; uid++) {
        check_counts(ms, n, uid);
        for (k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            for (o = 0; o < sizeof offs / sizeof offs[0]; o++)
                for (l = 0; l < sizeof lims / sizeof lims[0]; l++) {
                    if (kinds[k] == PL_Q_CONVO) {
                        for (peer = 1; peer <= max_uid; peer++)
                            if (peer != uid)
                                check_query(ms, n, kinds[k], uid, peer, 0, offs[o], lims[l]);
                    } else if (kinds[k] == PL_Q_UNREAD || kinds[k] == PL_Q_ALL) {
                        for (a = 0; a < sizeof afters / sizeof afters[0]; a++)
                            check_query(ms, n, kinds[k], uid, 0, afters[a], offs[o], lims[l]);
                    } else {
                        check_query(ms, n, kinds[k], uid, 0, 0, offs[o], lims[l]);
                    }
                }
    }
}

START_TEST(message_queries)
{
    size_t i;
    char body[32];

    txn_begin();
    for (i = 0; i < NSCEN; i++) {
        pl_message_rec m;
        snprintf(body, sizeof body, "m%" PRIu64, scen[i].id);
        m = msgrec(scen[i].id, scen[i].from, scen[i].to, scen_names[scen[i].from],
                   scen_names[scen[i].to], body, 1000 + scen[i].id, scen[i].flags);
        OK(S->message_put(T, &m));
    }
    txn_commit();

    /* Hand-written expectations first: they do not depend on the model. */
    STR_EQ(query_ids(T, PL_Q_UNREAD, 2, 0, 0, 0, 0), "10,13,15");
    STR_EQ(query_ids(T, PL_Q_UNREAD, 2, 0, 10, 0, 0), "13,15");
    STR_EQ(query_ids(T, PL_Q_UNREAD, 2, 0, 0, 1, 1), "13");
    STR_EQ(query_ids(T, PL_Q_UNREAD, 1, 0, 0, 0, 0), "20");
    STR_EQ(query_ids(T, PL_Q_READ, 1, 0, 0, 0, 0), "18,11");
    STR_EQ(query_ids(T, PL_Q_READ, 2, 0, 0, 0, 0), "12");
    STR_EQ(query_ids(T, PL_Q_READ, 3, 0, 0, 0, 0), "");
    STR_EQ(query_ids(T, PL_Q_CONVO, 1, 2, 0, 0, 0), "18,12,11,10");
    STR_EQ(query_ids(T, PL_Q_CONVO, 2, 1, 0, 0, 0), "18,15,14,12,11,10");
    STR_EQ(query_ids(T, PL_Q_CONVO, 2, 1, 0, 2, 3), "14,12,11");
    STR_EQ(query_ids(T, PL_Q_CONVO, 2, 3, 0, 0, 0), "13");
    STR_EQ(query_ids(T, PL_Q_CONVO, 1, 3, 0, 0, 0), "21,20");
    STR_EQ(query_ids(T, PL_Q_CONVO, 3, 1, 0, 0, 0), "20");
    STR_EQ(query_ids(T, PL_Q_RECEIVED, 2, 0, 0, 0, 0), "10,12,13,15");
    STR_EQ(query_ids(T, PL_Q_SENT, 1, 0, 0, 0, 0), "10,12,21");
    STR_EQ(query_ids(T, PL_Q_SENT, 2, 0, 0, 0, 0), "11,14,18");
    STR_EQ(query_ids(T, PL_Q_ALL, 0, 0, 0, 0, 0), "10,11,12,13,14,15,16,18,20,21");
    STR_EQ(query_ids(T, PL_Q_ALL, 0, 0, 15, 0, 0), "16,18,20,21");
    STR_EQ(query_ids(T, PL_Q_ALL, 0, 0, 0, 3, 2), "13,14");
    STR_EQ(query_ids(T, PL_Q_ALL, 0, 0, 0, 100, 0), "");
    STR_EQ(query_ids(T, PL_Q_UNREAD, 4, 0, 0, 0, 0), "");
    STR_EQ(counts(T, 1), "1/2");
    STR_EQ(counts(T, 2), "3/1");
    STR_EQ(counts(T, 3), "0/0");
    STR_EQ(counts(T, 4), "0/0");
    STR_EQ(counts(T, 99), "0/0");
    {
        coll c = { 0 };
        pl_msg_query q = { PL_Q_CONVO, 1, 3, 0, 0, 0 };
        OK(S->message_scan(T, &q, msg_cb, &c));
        STR_EQ(sb_take(&c.b), "21:1>3:alice>carol:m21:t1021:f5 | 20:3>1:carol>alice:m20:t1020:f0");
        memset(&c, 0, sizeof c);
        c.stop = 2;
        q.kind = PL_Q_ALL;
        OK(S->message_scan(T, &q, msg_id_cb, &c));
        STR_EQ(sb_take(&c.b), "10,11");
    }

    sweep_queries(scen, NSCEN, 4);

    /* Change flags and delete, then everything again. */
    txn_begin();
    OK(S->message_set_flags(T, 10, PL_MSGF_READ));
    OK(S->message_set_flags(T, 13, PL_MSGF_DEL_RECIPIENT));
    OK(S->message_set_flags(T, 11, PL_MSGF_READ | PL_MSGF_DEL_SENDER));
    OK(S->message_delete(T, 18));
    txn_commit();
    scen[0].flags = PL_MSGF_READ;
    scen[3].flags = PL_MSGF_DEL_RECIPIENT;
    scen[1].flags = PL_MSGF_READ | PL_MSGF_DEL_SENDER;
    for (i = 0; i < NSCEN; i++)
        if (scen[i].id == 18)
            scen[i].flags = PL_MSGF_DEL_SENDER | PL_MSGF_DEL_RECIPIENT;
    {
        /* The model keeps no deleted rows: drop 18. */
        mm after[NSCEN];
        size_t n = 0;
        for (i = 0; i < NSCEN; i++)
            if (scen[i].id != 18)
                after[n++] = scen[i];
        STR_EQ(query_ids(T, PL_Q_READ, 1, 0, 0, 0, 0), "11");
        STR_EQ(query_ids(T, PL_Q_UNREAD, 2, 0, 0, 0, 0), "15");
        STR_EQ(query_ids(T, PL_Q_SENT, 2, 0, 0, 0, 0), "14");
        STR_EQ(counts(T, 2), "1/2");
        sweep_queries(after, n, 4);
        reopen(0);
        sweep_queries(after, n, 4);
    }
}
END_TEST

START_TEST(message_big_mailbox)
{
    enum { NMSG = 10000, NUSER = 100 };
    mm *ms = calloc(NMSG, sizeof *ms);
    uint64_t uid, i;
    char fn[16], tn[16], body[48];

    ck_assert_ptr_nonnull(ms);
    txn_begin();
    for (i = 0; i < NMSG; i++) {
        pl_message_rec m;
        uint64_t from = i % NUSER + 1, to = (i * 7 + 3) % NUSER + 1;
        uint32_t flags = 0;
        if (to == from)
            to = to % NUSER + 1;
        if (i % 3 == 0)
            flags |= PL_MSGF_READ;
        if (i % 11 == 0)
            flags |= PL_MSGF_DEL_RECIPIENT;
        if (i % 13 == 0)
            flags |= PL_MSGF_DEL_SENDER;
        ms[i].id = 1000 + i * 2;
        ms[i].from = from;
        ms[i].to = to;
        ms[i].flags = flags;
        snprintf(fn, sizeof fn, "u%" PRIu64, from);
        snprintf(tn, sizeof tn, "u%" PRIu64, to);
        snprintf(body, sizeof body, "message %" PRIu64, i);
        m = msgrec(ms[i].id, from, to, fn, tn, body, i, flags);
        OK(S->message_put(T, &m));
        if (i % 1000 == 999) {
            txn_commit();
            txn_begin();
        }
    }
    txn_commit();

    for (uid = 1; uid <= NUSER; uid++) {
        uint64_t peer = (uid * 7 + 3) % NUSER + 1;
        uint64_t mid = 1000 + NMSG;   /* an id in the middle */
        check_counts(ms, NMSG, uid);
        check_query(ms, NMSG, PL_Q_UNREAD, uid, 0, 0, 0, 0);
        check_query(ms, NMSG, PL_Q_UNREAD, uid, 0, mid, 3, 20);
        check_query(ms, NMSG, PL_Q_READ, uid, 0, 0, 0, 0);
        check_query(ms, NMSG, PL_Q_READ, uid, 0, 0, 5, 10);
        check_query(ms, NMSG, PL_Q_RECEIVED, uid, 0, 0, 0, 0);
        check_query(ms, NMSG, PL_Q_SENT, uid, 0, 0, 0, 0);
        check_query(ms, NMSG, PL_Q_SENT, uid, 0, 0, 40, 7);
        check_query(ms, NMSG, PL_Q_CONVO, uid, peer, 0, 0, 0);
        check_query(ms, NMSG, PL_Q_CONVO, uid, peer, 0, 2, 5);
        check_query(ms, NMSG, PL_Q_CONVO, uid, uid % NUSER + 1, 0, 0, 0);
    }
    check_query(ms, NMSG, PL_Q_ALL, 0, 0, 0, 0, 0);
    check_query(ms, NMSG, PL_Q_ALL, 0, 0, 15000, 10, 100);
    free(ms);
}
END_TEST

/* ------------------------------------------------------------------ */
/* client table                                                        */

START_TEST(client_put_get_replace_scan)
{
    static const char reply_bin[] = "reply-a\0b";
    pl_client_rec c5 = { 5, 1, 10, { reply_bin, 9 } };
    pl_client_rec c5b = client(5, 2, 11, "");
    pl_client_rec hi = client(0x8000000000000001ull, 3, 12, "hi");
    pl_client_rec max = client(UINT64_MAX, UINT64_MAX, 13, "max");
    pl_client_rec c70 = client(70, 1, 14, "seventy");
    pl_client_rec c300 = client(300, 9, 15, "three hundred");

    STR_EQ(get_client(T, 5), "rc=5");
    txn_begin();
    OK(S->client_put(T, &c5));
    txn_commit();
    STR_EQ(get_client(T, 5), "5:1:10:reply-a\\x00b");
    txn_begin();
    OK(S->client_put(T, &c5b));
    OK(S->client_put(T, &hi));
    OK(S->client_put(T, &max));
    OK(S->client_put(T, &c300));
    OK(S->client_put(T, &c70));
    txn_commit();
    STR_EQ(get_client(T, 5), "5:2:11:");
    STR_EQ(get_client(T, UINT64_MAX), "18446744073709551615:18446744073709551615:13:max");
    STR_EQ(get_client(T, 6), "rc=5");
    /* Client ids are random 64-bit numbers: order is unsigned, not signed. */
    STR_EQ(scan_clients(T), "5:2:11: | 70:1:14:seventy | 300:9:15:three\\x20hundred | "
                            "9223372036854775809:3:12:hi | "
                            "18446744073709551615:18446744073709551615:13:max");
    reopen(0);
    STR_EQ(scan_clients(T), "5:2:11: | 70:1:14:seventy | 300:9:15:three\\x20hundred | "
                            "9223372036854775809:3:12:hi | "
                            "18446744073709551615:18446744073709551615:13:max");
}
END_TEST

/* ------------------------------------------------------------------ */
/* reopen                                                              */

START_TEST(reopen_keeps_everything)
{
    pl_account_rec a3 = mkacct(3, "carol", "hc", 300);
    pl_message_rec m12 = msgrec(12, 3, 1, "carol", "alice", "unsaved", 1, 0);
    pl_session_rec s3 = sess(TH3, 3, 30);
    pl_client_rec c9 = client(9, 4, 3, "r9");
    char *before;

    OK(S->meta_set(T, "view", 3));
    OK(S->meta_set(T, "last_normal_view", 2));
    OK(append_range(T, 1, 30, 2));
    put_baseline();
    txn_begin();
    OK(S->account_put(T, &a3));
    OK(S->session_put(T, &s3));
    OK(S->client_put(T, &c9));
    OK(S->message_set_flags(T, 10, PL_MSGF_READ));
    OK(S->meta_set(T, "counter", 12));
    txn_commit();
    OK(S->log_truncate(T, 25));
    OK(S->log_compact(T, 5));
    /* Aborted work must not reappear after the reopen either. */
    txn_begin();
    OK(S->message_put(T, &m12));
    OK(S->meta_set(T, "k", 5));
    S->abort(T);
    OK(S->meta_set(T, "commit", 2));

    before = dump(S, T, 4);
    reopen(1);
    STR_EQ(dump(S, T, 4), before);
    reopen(0);
    STR_EQ(dump(S, T, 4), before);
    free(before);
}
END_TEST

/* ------------------------------------------------------------------ */
/* crash                                                               */

/* The state change for op: one message with id op, a counter and the
 * client table row, so a half-applied batch shows up as a disagreement
 * between tables. Runs in the child: errors become exit codes. */
static int crash_apply(pl_store *st, uint64_t op)
{
    char body[32], reply[32];
    pl_message_rec m;
    pl_client_rec c;
    int rc;

    snprintf(body, sizeof body, "op %" PRIu64, op);
    snprintf(reply, sizeof reply, "r%" PRIu64, op);
    m = msgrec(op, 1, 2, "u1", "u2", body, op, 0);
    c = client(1, op, op, reply);
    rc = S->message_put(st, &m);
    if (rc == PL_OK)
        rc = S->meta_set(st, "counter", op);
    if (rc == PL_OK)
        rc = S->client_put(st, &c);
    return rc;
}

/* ABI minor 1: the log appended without a sync on this thread, synced by
 * a thread of its own as core/seq.c does. The sync thread reports to the
 * parent what each log_sync covered: every entry appended before it began. */
typedef struct nosync_ctl {
    pl_store *st;
    int wfd;
    pthread_mutex_t mu;
    uint64_t appended;        /* last op appended (mu) */
} nosync_ctl;

static void *nosync_sync_main(void *arg)
{
    nosync_ctl *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        uint64_t covers = c->appended;
        pthread_mutex_unlock(&c->mu);
        if (S->log_sync(c->st) != PL_OK)
            _exit(21);
        if (covers && write(c->wfd, &covers, sizeof covers) != (ssize_t)sizeof covers)
            _exit(16);
        struct timespec ts = { 0, 200000 }; /* 0.2 ms: syncs overlap appends */
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void crash_child(const char *dir, int wfd, int nosync) __attribute__((noreturn));

static void crash_child(const char *dir, int wfd, int nosync)
{
    nosync_ctl ctl = { NULL, wfd, PTHREAD_MUTEX_INITIALIZER, 0 };
    pthread_t thr;
    pl_store_options o = { dir, 1, NULL };
    pl_store *st = NULL;
    uint64_t first = 0, last = 0, applied, op, rng = rng_seeded((uint64_t)getpid());
    char err[512], data[16][32];
    pl_log_entry e[16];
    int iter;

    if (S->open(&g_host, &o, &st, err, sizeof err) != PL_OK) {
        fprintf(stderr, "crash child: open failed: %s\n", err);
        _exit(10);
    }
    if (S->log_bounds(st, &first, &last) != PL_OK)
        _exit(11);
    /* Restart the way the core does: replay the durable log past applied. */
    applied = S->applied_op(st);
    if (last > applied) {
        if (S->begin(st) != PL_OK)
            _exit(12);
        for (op = applied + 1; op <= last; op++)
            if (crash_apply(st, op) != PL_OK)
                _exit(13);
        if (S->commit(st, last) != PL_OK)
            _exit(14);
    }
    if (nosync) {
        ctl.st = st;
        if (pthread_create(&thr, NULL, nosync_sync_main, &ctl) != 0)
            _exit(22);
    }
    for (iter = 0; iter < 100000; iter++) {
        size_t n = 1 + rng_next(&rng) % 16, i;
        uint64_t top = last + n;
        for (i = 0; i < n; i++) {
            snprintf(data[i], sizeof data[i], "op %" PRIu64, last + 1 + i);
            e[i] = ent(last + 1 + i, 1, data[i]);
        }
        if (nosync) {
            /* Not durable yet; the state of these ops is applied before
             * the sync covers them, as a backup of the core may. */
            if (S->log_append_nosync(st, e, n) != PL_OK)
                _exit(15);
            pthread_mutex_lock(&ctl.mu);
            ctl.appended = top;
            pthread_mutex_unlock(&ctl.mu);
        } else {
            if (S->log_append(st, e, n) != PL_OK)
                _exit(15);
            /* The log is durable now: tell the parent. */
            if (write(wfd, &top, sizeof top) != (ssize_t)sizeof top)
                _exit(16);
        }
        if (S->begin(st) != PL_OK)
            _exit(17);
        for (op = last + 1; op <= top; op++)
            if (crash_apply(st, op) != PL_OK)
                _exit(18);
        if (S->commit(st, top) != PL_OK)
            _exit(19);
        last = top;
        /* Now and then compact the applied prefix, as the core does: the
         * store must still keep whatever a restart needs to replay. */
        if (iter % 40 == 39 && last > 20 && S->log_compact(st, last - 20) != PL_OK)
            _exit(20);
    }
    _exit(0);
}

typedef struct crash_scan {
    uint64_t next, bad;
} crash_scan;

static int crash_msg_cb(void *ud, const pl_message_rec *m)
{
    crash_scan *c = ud;
    char want[32];

    snprintf(want, sizeof want, "op %" PRIu64, c->next);
    if (m->id != c->next || !pl_str_eq(m->body, pl_str_c(want))) {
        c->bad = m->id;
        return 1;
    }
    c->next++;
    return 0;
}

static int crash_log_cb(void *ud, const pl_log_entry *e)
{
    crash_scan *c = ud;
    char want[32];

    snprintf(want, sizeof want, "op %" PRIu64, c->next);
    if (e->op != c->next || e->len != strlen(want) || memcmp(e->data, want, e->len) != 0) {
        c->bad = e->op ? e->op : UINT64_MAX;
        return 1;
    }
    c->next++;
    return 0;
}

static void crash_runs(int nosync)
{
    enum { RUNS = 12 };
    uint64_t rng = rng_seeded(g_seed ^ 0xc0ffee), durable = 0;
    char dir[PATH_MAX];
    int run;

    fprintf(stderr, "crash_consistency%s: seed %" PRIu64 "\n", nosync ? " (log_append_nosync)" : "",
            g_seed);
    make_dir(dir, sizeof dir, "crash");
    for (run = 0; run < RUNS; run++) {
        int fds[2], status = 0;
        pid_t pid;
        uint64_t v, first = 0, last = 0, applied, counter = 0;
        long delay_ms = 5 + (long)(rng_next(&rng) % 150);
        struct timespec t0, now;
        pl_store *st;
        crash_scan cs;
        pl_msg_query all = { PL_Q_ALL, 0, 0, 0, 0, 0 };
        char cl[64];
        int rc;

        ck_assert_int_eq(pipe(fds), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, fds[1], nosync);
        }
        close(fds[1]);
        /* Read reports until the random moment, then kill: the pipe is
         * drained as we go so the child never blocks on it. */
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            struct pollfd p = { fds[0], POLLIN, 0 };
            long el;
            clock_gettime(CLOCK_MONOTONIC, &now);
            el = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
            if (el >= delay_ms)
                break;
            if (poll(&p, 1, (int)(delay_ms - el)) > 0) {
                ssize_t r = read(fds[0], &v, sizeof v);
                if (r == (ssize_t)sizeof v && v > durable)
                    durable = v;
                else if (r <= 0)
                    break;
            }
        }
        kill(pid, SIGKILL);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        while (read(fds[0], &v, sizeof v) == (ssize_t)sizeof v)
            if (v > durable)
                durable = v;
        close(fds[0]);
        ck_assert_msg(WIFSIGNALED(status),
                      "run %d: crash child exited by itself with code %d (10 open, 15 "
                      "log_append, 17-19 begin/apply/commit, 12-14 replay, 20 compact, "
                      "21 log_sync, 22 thread) before the kill",
                      run, WIFEXITED(status) ? WEXITSTATUS(status) : -1);

        st = open_store(g_plug[0], dir, 1);
        OK(S->log_bounds(st, &first, &last));
        applied = S->applied_op(st);
        fprintf(stderr, "crash run %d: killed after %ld ms; reported durable %" PRIu64
                ", log %" PRIu64 "..%" PRIu64 ", applied %" PRIu64 "\n",
                run, delay_ms, durable, first, last, applied);
        ck_assert_msg(last >= durable, "run %d: op %" PRIu64 " was reported durable but "
                      "the log ends at %" PRIu64, run, durable, last);
        ck_assert_msg(applied <= last, "run %d: applied_op %" PRIu64 " is past the log's "
                      "last op %" PRIu64, run, applied, last);
        if (last) {
            /* Compaction may drop only what is applied: every op after
             * applied_op must still be there to replay. */
            ck_assert_msg(first >= 1 && first <= applied + 1, "run %d: log starts at %" PRIu64
                          " but applied_op is %" PRIu64 ": ops %" PRIu64 "..%" PRIu64
                          " can no longer be replayed", run, first, applied, applied + 1,
                          first - 1);
            cs.next = first;
            cs.bad = 0;
            OK(S->log_read(st, first, last, crash_log_cb, &cs));
            ck_assert_msg(cs.bad == 0 && cs.next == last + 1, "run %d: log entry %" PRIu64
                          " wrong or missing (log claims %" PRIu64 "..%" PRIu64 ")", run,
                          cs.bad ? cs.bad : cs.next, first, last);
        }
        rc = S->meta_get(st, "counter", &counter);
        if (applied == 0) {
            ck_assert_msg(rc == PL_ERR_NOT_FOUND, "run %d: counter set (%" PRIu64 ") but "
                          "applied_op is 0", run, counter);
        } else {
            ck_assert_msg(rc == PL_OK && counter == applied, "run %d: counter %" PRIu64
                          " (rc %d) but applied_op %" PRIu64 ": a half-applied batch",
                          run, counter, rc, applied);
        }
        cs.next = 1;
        cs.bad = 0;
        OK(S->message_scan(st, &all, crash_msg_cb, &cs));
        ck_assert_msg(cs.bad == 0 && cs.next == applied + 1, "run %d: messages are 1..%"
                      PRIu64 " (bad id %" PRIu64 ") but applied_op is %" PRIu64
                      ": a half-applied batch", run, cs.next - 1, cs.bad, applied);
        if (applied) {
            pl_client_rec c;
            OK(S->client_get(st, 1, &c));
            snprintf(cl, sizeof cl, "r%" PRIu64, applied);
            ck_assert_msg(c.request_no == applied && pl_str_eq(c.reply, pl_str_c(cl)),
                          "run %d: client row at request %" PRIu64 " but applied_op %" PRIu64,
                          run, c.request_no, applied);
        }
        S->close(st);
    }
    /* The test must have crashed a store that had really done work. */
    ck_assert_msg(durable > 0, "no op became durable in %d runs: the child never got going",
                  RUNS);
    rm_rf(dir);
}

START_TEST(crash_consistency)
{
    crash_runs(0);
}
END_TEST

/* Minor 1 (log_append_nosync, log_sync) under the same kills: log_sync
 * runs on another thread while the child appends, applies and compacts,
 * and what a log_sync covered must be there after the kill, with the
 * state a prefix of the log as before. A plugin of minor 0 has no such
 * members and the core never calls them: the loader must say minor 0. */
START_TEST(crash_consistency_nosync)
{
    uint32_t minor = pl_plugin_store_minor(g_plug[0]);
    if (minor == 0) {
        ck_assert_msg(S->abi_version == PL_STORE_ABI_VERSION, "minor 0 plugin of ABI %u",
                      (unsigned)S->abi_version);
        return;
    }
    ck_assert_msg(S->log_append_nosync && S->log_sync, "minor %u without its members",
                  (unsigned)minor);
    crash_runs(1);
}
END_TEST

/* Minor 1: an unsynced append is part of the log at once, log_sync on
 * another thread may run beside any other call, and a synced append or a
 * truncation keeps working after unsynced ones. */
typedef struct sync_loop {
    pl_store *st;
    volatile int stop;
    int calls, errors;
} sync_loop;

static void *sync_loop_main(void *arg)
{
    sync_loop *l = arg;
    while (!l->stop) {
        l->errors += S->log_sync(l->st) != PL_OK;
        l->calls++;
    }
    return NULL;
}

START_TEST(log_append_nosync_and_sync)
{
    if (pl_plugin_store_minor(g_plug[0]) == 0) {
        ck_assert_uint_eq(pl_plugin_store_minor(g_plug[0]), 0);
        return;
    }
    char data[64][32];
    pl_log_entry e[64];
    uint64_t first = 0, last = 0;
    reopen(1); /* syncs on: log_sync must really sync */
    sync_loop l = { T, 0, 0, 0 };
    pthread_t thr;
    ck_assert_int_eq(pthread_create(&thr, NULL, sync_loop_main, &l), 0);
    uint64_t op = 1;
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + (size_t)round % 7;
        for (size_t i = 0; i < n; i++) {
            snprintf(data[i], sizeof data[i], "entry %" PRIu64, op + i);
            e[i] = ent(op + i, 1 + (uint64_t)round / 50, data[i]);
        }
        if (round % 10 == 9)
            OK(S->log_append(T, e, n)); /* a synced one between */
        else
            OK(S->log_append_nosync(T, e, n));
        op += n;
        OK(S->log_bounds(T, &first, &last));
        ck_assert_uint_eq(last, op - 1);
        if (round % 25 == 24) {
            OK(S->begin(T));
            OK(S->meta_set(T, "counter", op - 1));
            OK(S->commit(T, op - 1));
        }
        if (round % 50 == 49) {
            OK(S->log_truncate(T, op - 3)); /* an unsynced suffix is cut */
            op -= 2;
        }
        if (round == 120)
            OK(S->log_compact(T, 40));
    }
    l.stop = 1;
    pthread_join(thr, NULL);
    ck_assert_int_eq(l.errors, 0);
    ck_assert_int_gt(l.calls, 0);
    OK(S->log_sync(T));
    OK(S->log_bounds(T, &first, &last));
    ck_assert_uint_eq(last, op - 1);
    reopen(1);
    uint64_t f2 = 0, l2 = 0;
    OK(S->log_bounds(T, &f2, &l2));
    ck_assert_uint_eq(f2, first);
    ck_assert_uint_eq(l2, last);
}
END_TEST

/* ------------------------------------------------------------------ */
/* --cross: two stores under the real chat core                        */

typedef struct side {
    const pl_plugin *p;
    const pl_store_plugin *sp;
    char dir[PATH_MAX];
    pl_store *st;
    pl_chat *c;
} side;

static side X[2];
static uint64_t X_next_op;
static uint64_t X_time;

static void side_open(side *s)
{
    s->st = open_store(s->p, s->dir, 0);
    s->c = pl_chat_new(s->sp, s->st);
    ck_assert_msg(s->c != NULL, "pl_chat_new failed for %s", pl_plugin_path(s->p));
}

static void side_close(side *s)
{
    if (s->c)
        pl_chat_free(s->c);
    if (s->st)
        s->sp->close(s->st);
    s->c = NULL;
    s->st = NULL;
}

static void cross_setup(void)
{
    int i;

    for (i = 0; i < 2; i++) {
        X[i].p = g_plug[i];
        X[i].sp = pl_plugin_store(g_plug[i]);
        make_dir(X[i].dir, sizeof X[i].dir, i ? "b" : "a");
        side_open(&X[i]);
    }
    X_next_op = 1;
    X_time = 1700000000000ull;
}

static void cross_teardown(void)
{
    int i;

    for (i = 0; i < 2; i++) {
        side_close(&X[i]);
        rm_rf(X[i].dir);
    }
}

static void fmt_pl_message(sb *b, const pl_message *m)
{
    sb_printf(b, "[%" PRIu64 " ", m->id);
    sb_str(b, m->from);
    sb_printf(b, ">");
    sb_str(b, m->to);
    sb_printf(b, " ");
    sb_str(b, m->body);
    sb_printf(b, " t%" PRIu64 " s%u]", m->time_ms, m->state);
}

static void fmt_response(sb *b, const pl_response *r)
{
    uint32_t i;

    sb_printf(b, "m%u st%u err=", r->method, r->status);
    sb_str(b, r->error);
    sb_printf(b, " id%" PRIu64 " t%" PRIu64 " u%" PRIu64 " r%" PRIu64 " more%u tok=",
              r->id, r->time_ms, r->unread, r->read, r->more);
    sb_str(b, r->token);
    sb_printf(b, " users=");
    for (i = 0; i < r->n_users; i++) {
        sb_str(b, r->users[i]);
        sb_printf(b, ",");
    }
    sb_printf(b, " msgs=");
    for (i = 0; i < r->n_msgs; i++)
        fmt_pl_message(b, &r->msgs[i]);
}

static void fmt_result(sb *b, const pl_apply_result *r)
{
    fmt_response(b, &r->reply);
    if (r->has_push) {
        sb_printf(b, " push%" PRIu64 "=", r->push_uid);
        fmt_pl_message(b, &r->push);
    }
    sb_printf(b, " revoked=%" PRIu64 "/", r->revoked_uid);
    sb_str(b, r->revoked_token_hash);
}

static void digest_of(side *s, char out[65])
{
    memset(out, 0, 65);
    OK(pl_chat_digest(s->c, out));
    ck_assert_uint_eq(strlen(out), 64);
}

static uint64_t max_uid(void);

/* Both stores must agree on digest and on everything a dump shows. */
static void cross_compare(const char *when)
{
    char d0[65], d1[65];
    char *a, *b;
    uint64_t mu = max_uid();

    digest_of(&X[0], d0);
    digest_of(&X[1], d1);
    ck_assert_msg(strcmp(d0, d1) == 0, "%s: digests differ: %s (%s) vs %s (%s)", when,
                  d0, X[0].sp->name, d1, X[1].sp->name);
    a = dump(X[0].sp, X[0].st, mu);
    b = dump(X[1].sp, X[1].st, mu);
    if (strcmp(a, b) != 0)
        fprintf(stderr, "%s: stores differ\n--- %s:\n%s\n--- %s:\n%s\n", when,
                X[0].sp->name, a, X[1].sp->name, b);
    ck_assert_msg(strcmp(a, b) == 0, "%s: store contents differ between %s and %s "
                  "(full dumps on stderr)", when, X[0].sp->name, X[1].sp->name);
    free(a);
    free(b);
}

typedef struct outcome {
    uint32_t status;
    uint64_t id;
} outcome;

/* One batch through both chats, the way the core applies it: append the
 * encoded ops to the log, then apply them in one transaction. Replies must
 * match; out (may be NULL) gets side 0's status and id per op. */
static void apply_both(const pl_op *ops, size_t n, outcome *out, const char *what)
{
    char *txt[2];
    size_t i;
    int k;

    for (k = 0; k < 2; k++) {
        side *s = &X[k];
        pl_log_entry *e = calloc(n, sizeof *e);
        uint8_t **bufs = calloc(n, sizeof *bufs);
        pl_apply_result *r = calloc(n, sizeof *r);
        sb b = { 0 };

        ck_assert(e && bufs && r);
        for (i = 0; i < n; i++) {
            size_t len = 0;
            OK(pl_op_encode(&ops[i], &bufs[i], &len));
            e[i].op = X_next_op + i;
            e[i].view = 1;
            e[i].data = bufs[i];
            e[i].len = (uint32_t)len;
        }
        OK(s->sp->log_append(s->st, e, n));
        OK(pl_chat_apply_batch(s->c, X_next_op, ops, n, r));
        ck_assert_uint_eq(s->sp->applied_op(s->st), X_next_op + n - 1);
        for (i = 0; i < n; i++) {
            sb_printf(&b, "\n  op %" PRIu64 ": ", X_next_op + i);
            fmt_result(&b, &r[i]);
            if (k == 0 && out) {
                out[i].status = r[i].reply.status;
                out[i].id = r[i].reply.id;
            }
            free(bufs[i]);
        }
        txt[k] = sb_take(&b);
        free(e);
        free(bufs);
        free(r);
    }
    if (strcmp(txt[0], txt[1]) != 0)
        fprintf(stderr, "%s: replies differ\n--- %s:%s\n--- %s:%s\n", what,
                X[0].sp->name, txt[0], X[1].sp->name, txt[1]);
    ck_assert_msg(strcmp(txt[0], txt[1]) == 0, "%s: replies differ between stores: "
                  "%.700s ||| %.700s", what, txt[0], txt[1]);
    free(txt[0]);
    free(txt[1]);
    X_next_op += n;
    cross_compare(what);
}

static uint64_t uid_of(const char *name)
{
    uint64_t u[2] = { 0, 0 };
    pl_str pw;
    int rc[2], k;

    for (k = 0; k < 2; k++)
        rc[k] = pl_chat_account(X[k].c, pl_str_c(name), &u[k], &pw);
    ck_assert_msg(rc[0] == rc[1] && u[0] == u[1], "account %s: %s says rc %d uid %" PRIu64
                  ", %s says rc %d uid %" PRIu64, name, X[0].sp->name, rc[0], u[0],
                  X[1].sp->name, rc[1], u[1]);
    return rc[0] == PL_OK ? u[0] : 0;
}

static int max_uid_acc(void *ud, const pl_account_rec *a)
{
    uint64_t *m = ud;

    if (a->uid > *m)
        *m = a->uid;
    return 0;
}

static int max_uid_msg(void *ud, const pl_message_rec *r)
{
    uint64_t *m = ud;

    if (r->from_uid > *m)
        *m = r->from_uid;
    if (r->to_uid > *m)
        *m = r->to_uid;
    return 0;
}

/* The largest uid either store mentions, plus one that has nothing: the
 * range a dump shows message counts for. */
static uint64_t max_uid(void)
{
    pl_msg_query all = { PL_Q_ALL, 0, 0, 0, 0, 0 };
    uint64_t m = 0;
    int k;

    for (k = 0; k < 2; k++) {
        OK(X[k].sp->account_scan(X[k].st, pl_str_c(""), max_uid_acc, &m));
        OK(X[k].sp->message_scan(X[k].st, &all, max_uid_msg, &m));
    }
    return m + 1;
}

/* Read-only queries through the chat must answer the same on both. */
static void cross_queries(const char *const *names, size_t nn)
{
    size_t i, j;
    int k, q;

    for (i = 0; i < nn; i++) {
        uint64_t uid = uid_of(names[i]);
        if (!uid)
            continue;
        for (q = 0; q < 6 + (int)nn; q++) {
            pl_request req;
            char *txt[2];
            memset(&req, 0, sizeof req);
            switch (q) {
            case 0: req.method = PL_M_COUNTS; break;
            case 1: req.method = PL_M_HISTORY; break;
            case 2: req.method = PL_M_HISTORY; req.offset = 1; req.limit = 2; break;
            case 3: req.method = PL_M_LIST_USERS; break;
            case 4: req.method = PL_M_LIST_USERS; req.pattern = pl_str_c("*a*"); req.limit = 2; break;
            case 5: req.method = PL_M_SUBSCRIBE; req.after_id = 0; break;
            default:
                j = (size_t)q - 6;
                req.method = PL_M_CONVERSATION;
                req.peer = pl_str_c(names[j]);
                break;
            }
            for (k = 0; k < 2; k++) {
                pl_response resp;
                sb b = { 0 };
                int rc;
                memset(&resp, 0, sizeof resp);
                rc = pl_chat_query(X[k].c, uid, &req, &resp);
                sb_printf(&b, "rc%d ", rc);
                fmt_response(&b, &resp);
                txt[k] = sb_take(&b);
            }
            ck_assert_msg(strcmp(txt[0], txt[1]) == 0, "query %s for %s: %s says %.600s, "
                          "%s says %.600s", pl_method_name(req.method), names[i],
                          X[0].sp->name, txt[0], X[1].sp->name, txt[1]);
            free(txt[0]);
            free(txt[1]);
        }
    }
}

static const char *const PWH = "$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaA";
static uint8_t TOK[16][32];

static pl_op mkop(uint32_t kind, uint64_t uid)
{
    pl_op o;

    memset(&o, 0, sizeof o);
    o.kind = kind;
    o.uid = uid;
    X_time += 1000;
    o.time_ms = X_time;
    return o;
}

static pl_op op_register(const char *name)
{
    pl_op o = mkop(PL_OP_REGISTER, 0);
    o.name = pl_str_c(name);
    o.pwhash = pl_str_c(PWH);
    return o;
}

static pl_op op_login(const char *name, uint64_t uid, int tok)
{
    pl_op o = mkop(PL_OP_LOGIN, uid);
    o.name = pl_str_c(name);
    o.token_hash.ptr = (const char *)TOK[tok];
    o.token_hash.len = 32;
    return o;
}

static pl_op op_send(uint64_t from, const char *to, const char *body)
{
    pl_op o = mkop(PL_OP_SEND, from);
    o.name = pl_str_c(to);
    o.body = pl_str_c(body);
    return o;
}

static pl_op op_ids(uint32_t kind, uint64_t uid, const uint64_t *ids, uint32_t n)
{
    pl_op o = mkop(kind, uid);
    o.ids = ids;
    o.n_ids = n;
    return o;
}

static void init_tokens(void)
{
    int i, j;

    for (i = 0; i < 16; i++)
        for (j = 0; j < 32; j++)
            TOK[i][j] = (uint8_t)(i * 37 + j * 11 + 1);
}

static const char *const CROSS_NAMES[] = { "alice", "bob", "carol", "dave", "nobody" };
#define NCROSS (sizeof CROSS_NAMES / sizeof CROSS_NAMES[0])

/* Copies of log entries, taken during log_read (whose records live only
 * for the callback) so they can be decoded and applied afterwards. */
typedef struct log_copy {
    uint8_t **data;
    size_t *len;
    size_t n, cap;
} log_copy;

static int copy_cb(void *ud, const pl_log_entry *e)
{
    log_copy *lc = ud;

    if (lc->n == lc->cap) {
        lc->cap = lc->cap ? lc->cap * 2 : 64;
        lc->data = realloc(lc->data, lc->cap * sizeof *lc->data);
        lc->len = realloc(lc->len, lc->cap * sizeof *lc->len);
        ck_assert(lc->data && lc->len);
    }
    lc->data[lc->n] = malloc(e->len ? e->len : 1);
    ck_assert_ptr_nonnull(lc->data[lc->n]);
    memcpy(lc->data[lc->n], e->data, e->len);
    lc->len[lc->n] = e->len;
    lc->n++;
    return 0;
}

/* Replay side 0's log on a fresh store of each plugin, in batches of a few
 * ops as a restarting server would: the digest must come out the same
 * (DESIGN §3: applying is deterministic, whatever the store). */
static void replay_check(const char *want_digest)
{
    log_copy lc = { 0 };
    uint64_t first = 0, last = 0;
    size_t i;
    int k;

    OK(X[0].sp->log_bounds(X[0].st, &first, &last));
    ck_assert_uint_eq(first, 1);
    OK(X[0].sp->log_read(X[0].st, first, last, copy_cb, &lc));
    ck_assert_uint_eq(lc.n, last);

    for (k = 0; k < 2; k++) {
        side r;
        char d[65];

        memset(&r, 0, sizeof r);
        r.p = g_plug[k];
        r.sp = pl_plugin_store(g_plug[k]);
        make_dir(r.dir, sizeof r.dir, "replay");
        side_open(&r);
        for (i = 0; i < lc.n;) {
            pl_op ops[5];
            uint64_t *owners[5] = { 0 };
            pl_apply_result res[5];
            size_t n = 1 + i % 5, j;
            if (n > lc.n - i)
                n = lc.n - i;
            for (j = 0; j < n; j++)
                IS(pl_op_decode(lc.data[i + j], lc.len[i + j], &ops[j], &owners[j]), PL_OK);
            memset(res, 0, sizeof res);
            OK(pl_chat_apply_batch(r.c, first + i, ops, n, res));
            for (j = 0; j < n; j++)
                free(owners[j]);
            i += n;
        }
        digest_of(&r, d);
        ck_assert_msg(strcmp(d, want_digest) == 0, "replaying the log into a fresh %s store "
                      "gives digest %s, the live stores have %s", r.sp->name, d, want_digest);
        side_close(&r);
        rm_rf(r.dir);
    }
    for (i = 0; i < lc.n; i++)
        free(lc.data[i]);
    free(lc.data);
    free(lc.len);
}

START_TEST(cross_scripted)
{
    pl_op ops[16];
    outcome out[16];
    uint64_t alice, bob, carol, dave, carol2, ids[8];
    uint64_t m_hi_bob, m_second, m_hi_alice, m_carol, m_dave, m_third;
    char d_before[65], d_after[65], d0[65];
    int k;

    init_tokens();
    digest_of(&X[0], d0);
    cross_compare("empty stores");

    ops[0] = op_register("alice");
    ops[1] = op_register("bob");
    ops[2] = op_register("carol");
    ops[3] = op_register("dave");
    ops[4] = op_register("alice");
    apply_both(ops, 5, out, "register");
    ck_assert_msg(out[0].status == 0 && out[3].status == 0, "registers failed: %u %u",
                  out[0].status, out[3].status);
    ck_assert_msg(out[4].status != 0, "duplicate register accepted");
    digest_of(&X[0], d_after);
    ck_assert_msg(strcmp(d0, d_after) != 0, "digest did not change after registering 4 users");
    alice = uid_of("alice");
    bob = uid_of("bob");
    carol = uid_of("carol");
    dave = uid_of("dave");
    ck_assert(alice && bob && carol && dave);

    ops[0] = op_login("alice", alice, 1);
    ops[0].client_id = 100;
    ops[0].request_no = 1;
    ops[1] = op_login("bob", bob, 2);
    ops[1].client_id = 200;
    ops[1].request_no = 1;
    ops[2] = op_login("carol", carol, 3);
    apply_both(ops, 3, out, "login");

    ops[0] = op_send(alice, "bob", "hi bob");
    ops[0].client_id = 100;
    ops[0].request_no = 2;
    ops[1] = op_send(alice, "bob", "second");
    ops[2] = op_send(bob, "alice", "hi alice");
    ops[2].client_id = 200;
    ops[2].request_no = 2;
    ops[3] = op_send(carol, "alice", "from carol");
    ops[4] = op_send(alice, "nobody", "lost");
    ops[5] = op_send(dave, "bob", "dave here \xc3\xa9");
    ops[6] = op_send(alice, "bob", "third");
    apply_both(ops, 7, out, "send");
    ck_assert_msg(out[4].status != 0, "send to an unknown user accepted");
    m_hi_bob = out[0].id;
    m_second = out[1].id;
    m_hi_alice = out[2].id;
    m_carol = out[3].id;
    m_dave = out[5].id;
    m_third = out[6].id;
    ck_assert_msg(m_hi_bob && m_second > m_hi_bob && m_third > m_dave,
                  "message ids not increasing: %" PRIu64 " %" PRIu64 " %" PRIu64,
                  m_hi_bob, m_second, m_third);
    (void)m_second;
    cross_queries(CROSS_NAMES, NCROSS);

    ops[0] = mkop(PL_OP_READ, bob);
    ops[0].n = 2;
    ops[1] = mkop(PL_OP_READ, alice);
    ops[1].n = 0;
    apply_both(ops, 2, out, "read");

    ids[0] = m_third;
    ids[1] = m_dave;
    ids[2] = 999999;
    ops[0] = op_ids(PL_OP_ACK, bob, ids, 2);
    ops[1] = op_ids(PL_OP_ACK, alice, ids + 2, 1);
    apply_both(ops, 2, out, "ack");

    ids[3] = m_hi_alice;
    ids[4] = m_hi_bob;
    ids[5] = m_carol;
    ops[0] = op_ids(PL_OP_DELETE, alice, ids + 3, 2);
    ops[1] = op_ids(PL_OP_DELETE, bob, ids + 5, 1);
    apply_both(ops, 2, out, "delete");
    ck_assert_msg(out[1].status != 0, "bob deleted a message he cannot see");
    cross_queries(CROSS_NAMES, NCROSS);

    /* A client retry after a failover: answered from the client table. */
    digest_of(&X[0], d_before);
    ops[0] = op_send(alice, "bob", "hi bob");
    ops[0].client_id = 100;
    ops[0].request_no = 2;
    apply_both(ops, 1, out, "retry");
    ck_assert_msg(out[0].id == m_hi_bob, "retried send got id %" PRIu64 ", first answer was %"
                  PRIu64, out[0].id, m_hi_bob);

    ops[0] = mkop(PL_OP_LOGOUT, bob);
    ops[0].token_hash.ptr = (const char *)TOK[2];
    ops[0].token_hash.len = 32;
    apply_both(ops, 1, out, "logout");

    ops[0] = mkop(PL_OP_DELETE_ACCOUNT, carol);
    apply_both(ops, 1, out, "delete_account");
    ck_assert_uint_eq(uid_of("carol"), 0);

    ops[0] = op_register("carol");
    ops[1] = op_send(alice, "carol", "welcome back");
    ops[2] = mkop(PL_OP_NOOP, 0);
    apply_both(ops, 3, out, "re-register");
    carol2 = uid_of("carol");
    ck_assert_msg(carol2 && carol2 != carol, "re-registered carol has uid %" PRIu64
                  " (old %" PRIu64 ")", carol2, carol);
    ops[0] = op_login("carol", carol2, 4);
    ops[1] = op_send(carol2, "alice", "I'm back");
    ops[2] = op_send(bob, "carol", "hello new carol");
    apply_both(ops, 3, out, "carol again");
    cross_queries(CROSS_NAMES, NCROSS);

    /* Ops at or below applied_op are skipped on both. */
    for (k = 0; k < 2; k++) {
        pl_apply_result r[1];
        pl_op stale = op_send(alice, "bob", "stale");
        memset(r, 0, sizeof r);
        OK(pl_chat_apply_batch(X[k].c, 1, &stale, 1, r));
        ck_assert_uint_eq(r[0].reply.status, PL_ERR_STALE_REQUEST);
    }
    cross_compare("stale batch");

    digest_of(&X[0], d_before);
    for (k = 0; k < 2; k++) {
        side_close(&X[k]);
        side_open(&X[k]);
    }
    digest_of(&X[0], d_after);
    ck_assert_msg(strcmp(d_before, d_after) == 0, "%s digest changed across reopen: %s -> %s",
                  X[0].sp->name, d_before, d_after);
    cross_compare("after reopen");
    cross_queries(CROSS_NAMES, NCROSS);
    replay_check(d_after);
}
END_TEST

START_TEST(cross_random)
{
    static const char *const pool[] = { "ann", "ben", "cat", "dan", "eve", "fay", "gus",
                                        "a.b", "A_1", "zed-9", "Ann", "x" };
    enum { NPOOL = sizeof pool / sizeof pool[0], BATCHES = 80 };
    uint64_t rng = rng_seeded(g_seed ^ 0xabcdef), sent[512];
    uint64_t req_no[3] = { 0, 0, 0 }, last_req[3] = { 0, 0, 0 };
    size_t nsent = 0;
    char bodies[8][48], when[64], d_before[65], d_after[65];
    uint64_t idbuf[8][4];
    unsigned tried[PL_OP__COUNT] = { 0 }, worked[PL_OP__COUNT] = { 0 };
    int b, k;

    fprintf(stderr, "cross_random: seed %" PRIu64 "\n", g_seed);
    init_tokens();
    for (b = 0; b < BATCHES; b++) {
        pl_op ops[8];
        outcome out[8];
        size_t n = 1 + rng_next(&rng) % 8, i;

        for (i = 0; i < n; i++) {
            const char *who = pool[rng_next(&rng) % NPOOL];
            const char *to = pool[rng_next(&rng) % NPOOL];
            uint64_t uid = uid_of(who);
            unsigned r = (unsigned)(rng_next(&rng) % 100);
            uint32_t j, nid;

            /* Early on, mostly registrations, so the rest has actors. */
            if (b < 5 && r < 70)
                r = 0;
            if (r < 12) {
                ops[i] = op_register(who);
            } else if (r < 22) {
                ops[i] = op_login(who, uid ? uid : 1 + rng_next(&rng) % 20,
                                  (int)(rng_next(&rng) % 16));
            } else if (r < 55) {
                snprintf(bodies[i], sizeof bodies[i], "b%d.%zu %s", b, i, to);
                ops[i] = op_send(uid ? uid : 1 + rng_next(&rng) % 20, to, bodies[i]);
            } else if (r < 65) {
                ops[i] = mkop(PL_OP_READ, uid);
                ops[i].n = rng_next(&rng) % 4;
            } else if (r < 83) {
                /* Mostly ids the actor can see (else almost every ack and
                 * delete would be refused), sometimes any id at all. */
                coll vis = { 0 };
                pl_msg_query q = { r < 74 ? PL_Q_UNREAD : PL_Q_RECEIVED, uid, 0, 0, 0, 0 };
                uint64_t cand[64];
                size_t nc = 0;
                const char *p;
                OK(X[0].sp->message_scan(X[0].st, &q, msg_id_cb, &vis));
                if (r >= 74) {
                    q.kind = PL_Q_SENT;
                    sb_sep(&vis.b, ",");
                    OK(X[0].sp->message_scan(X[0].st, &q, msg_id_cb, &vis));
                }
                for (p = vis.b.p; p && *p && nc < 64;) {
                    char *end;
                    uint64_t id = strtoull(p, &end, 10);
                    if (end == p)
                        break;
                    cand[nc++] = id;
                    p = *end ? end + 1 : end;
                }
                free(vis.b.p);
                nid = 1 + (uint32_t)(rng_next(&rng) % 4);
                for (j = 0; j < nid; j++) {
                    uint64_t pick = rng_next(&rng) % 8;
                    if (nc && pick < 6)
                        idbuf[i][j] = cand[rng_next(&rng) % nc];
                    else if (nsent && pick < 7)
                        idbuf[i][j] = sent[rng_next(&rng) % nsent];
                    else
                        idbuf[i][j] = 1 + rng_next(&rng) % 400;
                }
                ops[i] = op_ids(r < 74 ? PL_OP_ACK : PL_OP_DELETE, uid, idbuf[i], nid);
            } else if (r < 88) {
                ops[i] = mkop(PL_OP_LOGOUT, uid);
                ops[i].token_hash.ptr = (const char *)TOK[rng_next(&rng) % 16];
                ops[i].token_hash.len = 32;
            } else if (r < 92) {
                ops[i] = mkop(PL_OP_DELETE_ACCOUNT, uid ? uid : 1 + rng_next(&rng) % 20);
            } else {
                ops[i] = mkop(PL_OP_NOOP, 0);
            }
            /* Exactly-once: three clients number their requests; now and
             * then one retries its last request instead. */
            if (ops[i].kind != PL_OP_NOOP && rng_next(&rng) % 3 == 0) {
                int cl = (int)(rng_next(&rng) % 3);
                ops[i].client_id = 0x9000000000000000ull + (uint64_t)cl;
                if (last_req[cl] && rng_next(&rng) % 5 == 0) {
                    ops[i].request_no = last_req[cl];
                } else {
                    ops[i].request_no = ++req_no[cl];
                    last_req[cl] = req_no[cl];
                }
            }
        }
        snprintf(when, sizeof when, "random batch %d (seed %" PRIu64 ")", b, g_seed);
        apply_both(ops, n, out, when);
        for (i = 0; i < n; i++) {
            tried[ops[i].kind]++;
            if (out[i].status == 0)
                worked[ops[i].kind]++;
        }
        for (i = 0; i < n; i++)
            if (ops[i].kind == PL_OP_SEND && out[i].status == 0 && out[i].id &&
                nsent < sizeof sent / sizeof sent[0])
                sent[nsent++] = out[i].id;
        if (b % 10 == 9) {
            const char *some[4] = { pool[b % NPOOL], pool[(b + 3) % NPOOL],
                                    pool[(b + 5) % NPOOL], pool[(b + 7) % NPOOL] };
            cross_queries(some, 4);
        }
    }
    fprintf(stderr, "cross_random: ops that succeeded/tried by kind:");
    for (k = 0; k < PL_OP__COUNT; k++)
        fprintf(stderr, " %d:%u/%u", k, worked[k], tried[k]);
    fputc('\n', stderr);
    ck_assert_msg(nsent > 10, "only %zu sends succeeded: the script exercised too little", nsent);
    digest_of(&X[0], d_before);
    for (k = 0; k < 2; k++) {
        side_close(&X[k]);
        side_open(&X[k]);
    }
    digest_of(&X[0], d_after);
    ck_assert_str_eq(d_before, d_after);
    cross_compare("random: after reopen");
    replay_check(d_after);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *single_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc;

    tc = tcase_create("meta");
    tcase_add_checked_fixture(tc, fx_setup, fx_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, meta_unset_is_not_found);
    tcase_add_test(tc, meta_set_get_overwrite);
    tcase_add_test(tc, meta_in_txn_abort);
    tcase_add_test(tc, meta_in_txn_commit);
    suite_add_tcase(s, tc);

    tc = tcase_create("log");
    tcase_add_checked_fixture(tc, fx_setup, fx_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, log_empty);
    tcase_add_test(tc, log_append_and_read);
    tcase_add_test(tc, log_first_op_arbitrary);
    tcase_add_test(tc, log_continuity_enforced);
    tcase_add_test(tc, log_truncate_suffix);
    tcase_add_test(tc, log_compact_prefix);
    tcase_add_test(tc, compact_makes_state_durable);
    tcase_add_test(tc, log_survives_reopen);
    tcase_add_test(tc, log_batches_cut_inside);
    tcase_add_test(tc, log_append_nosync_and_sync);
    suite_add_tcase(s, tc);

    tc = tcase_create("state");
    tcase_add_checked_fixture(tc, fx_setup, fx_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, txn_commit_sets_applied_op);
    tcase_add_test(tc, txn_abort_discards_everything);
    tcase_add_test(tc, txn_abort_after_failed_change);
    tcase_add_test(tc, account_put_get_replace);
    tcase_add_test(tc, account_delete_and_count);
    tcase_add_test(tc, account_scan_memcmp_order);
    tcase_add_test(tc, session_put_get_delete_scan);
    tcase_add_test(tc, message_put_get_flags_delete);
    tcase_add_test(tc, message_queries);
    tcase_add_test(tc, message_big_mailbox);
    tcase_add_test(tc, client_put_get_replace_scan);
    tcase_add_test(tc, reopen_keeps_everything);
    suite_add_tcase(s, tc);

    tc = tcase_create("crash");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, crash_consistency);
    tcase_add_test(tc, crash_consistency_nosync);
    suite_add_tcase(s, tc);
    return s;
}

static Suite *cross_suite(void)
{
    Suite *s = suite_create("store-cross");
    TCase *tc = tcase_create("chat");

    tcase_add_checked_fixture(tc, cross_setup, cross_teardown);
    tcase_set_timeout(tc, 200);
    tcase_add_test(tc, cross_scripted);
    tcase_add_test(tc, cross_random);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    const char *tmp = getenv("TMPDIR"), *seed_env = getenv("PL_TEST_SEED");
    int cross = argc == 4 && strcmp(argv[1], "--cross") == 0;
    int nplug = cross ? 2 : 1, i, failed;
    char err[1024];
    SRunner *sr;

    if (!cross && argc != 2) {
        fprintf(stderr, "usage: %s STORE.so | --cross A.so B.so\n", argv[0]);
        return 2;
    }
    for (i = 0; i < nplug; i++) {
        g_path[i] = argv[cross ? 2 + i : 1];
        g_plug[i] = pl_plugin_load("store", g_path[i], NULL, err, sizeof err);
        if (!g_plug[i]) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    S = pl_plugin_store(g_plug[0]);
    g_seed = seed_env && *seed_env ? strtoull(seed_env, NULL, 0)
                                   : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    fprintf(stderr, "store conformance: %s%s%s, seed %" PRIu64
            " (PL_TEST_SEED=%" PRIu64 " repeats it)\n", g_path[0], cross ? " vs " : "",
            cross ? g_path[1] : "", g_seed, g_seed);

    snprintf(g_root, sizeof g_root, "%s/pl-store-conf-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_root)) {
        fprintf(stderr, "mkdtemp %s: %s\n", g_root, strerror(errno));
        return 1;
    }

    sr = srunner_create(cross ? cross_suite() : single_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    rm_rf(g_root);
    for (i = 0; i < nplug; i++)
        pl_plugin_unload(g_plug[i]);
    return failed ? 1 : 0;
}
