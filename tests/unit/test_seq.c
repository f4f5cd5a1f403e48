/*
 * tests/unit/test_seq.c — the single-server sequencer (core/seq.c) against
 * a real store plugin loaded through the loader: group commit (one log
 * append per batch), batch limits, in-order answers, crash replay, and the
 * flush on free.
 *
 * Usage: test-seq STORE_PLUGIN.so
 */
#include <check.h>
#include <event2/event.h>
#include <ftw.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "loader.h"
#include "seq.h"

#define FAKE_HASH "$argon2id$v=19$m=65536,t=2,p=1$ZmFrZXNhbHQ$ZmFrZWhhc2g"

static const char *plugin_path;

/* The store's table, with log_append counted: group commit means one call
 * per batch, whatever the batch size. */
static pl_store_plugin counting;
static const pl_store_plugin *real;
static int appends;
static size_t appended;
static size_t max_append_bytes;   /* the largest batch, in encoded op bytes */

static void count_batch(const pl_log_entry *e, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += e[i].len;
    if (bytes > max_append_bytes)
        max_append_bytes = bytes;
    appends++;
    appended += n;
}

static int count_append(pl_store *s, const pl_log_entry *e, size_t n)
{
    count_batch(e, n);
    return real->log_append(s, e, n);
}

static int count_append_nosync(pl_store *s, const pl_log_entry *e, size_t n)
{
    count_batch(e, n);
    return real->log_append_nosync(s, e, n);
}

/* log_sync calls (the sync thread's), for the group commit delay. */
static int syncs;

static int count_sync(pl_store *s)
{
    __atomic_add_fetch(&syncs, 1, __ATOMIC_RELAXED);
    return real->log_sync(s);
}

/* log_read calls with the ops they asked for: applying takes what it
 * appended from the apply cache (core/logcache.c), not from the store. */
static int reads;
static uint64_t reads_ops;

static int count_read(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud)
{
    reads++;
    reads_ops += to >= from ? to - from + 1 : 0;
    return real->log_read(s, from, to, cb, ud);
}

/* The "seq-async" case runs every test again with the store's ABI minor
 * given to the sequencer: the log appended without a sync, made durable by
 * the sync thread (with syncs on, so log_sync really syncs). */
static int fx_async;

/* log_compact calls, to see compaction go in steps. */
#define MAXCOMPACT 64
static uint64_t compact_before[MAXCOMPACT], compact_first[MAXCOMPACT];
static int compacts;
static uint64_t fx_compact_ops, fx_keep_ops;
static uint32_t fx_delay_us, fx_delay_bytes;

static int count_compact(pl_store *s, uint64_t before)
{
    uint64_t first = 0, last = 0;
    real->log_bounds(s, &first, &last);
    if (compacts < MAXCOMPACT) {
        compact_before[compacts] = before;
        compact_first[compacts] = first;
    }
    compacts++;
    return real->log_compact(s, before);
}

typedef struct fx {
    char dir[256];
    pl_plugin *plugin;
    pl_store *st;
    pl_chat *chat;
    struct event_base *base;
    pl_seq *seq;
} fx;

static fx F;

/* What the done and applied callbacks saw, in order. */
#define MAXSEEN 64
static struct {
    int err;
    uint64_t op;
    uint32_t status;
} done_seen[MAXSEEN];
static int n_done;
static uint64_t applied_seen[MAXSEEN];
static int n_applied;

static void on_done(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    (void)ud;
    ck_assert_int_lt(n_done, MAXSEEN);
    ck_assert_msg((err == PL_OK) == (res != NULL), "res is given exactly when err is PL_OK");
    done_seen[n_done].err = err;
    done_seen[n_done].op = op;
    done_seen[n_done].status = res ? res->reply.status : 0;
    n_done++;
}

/* A test's own look at every applied op, when set. */
static void (*applied_extra)(void *ud, uint64_t op, const pl_apply_result *res);

static void on_applied(void *ud, uint64_t op, const pl_apply_result *res)
{
    if (applied_extra)
        applied_extra(ud, op, res);
    if (n_applied < MAXSEEN) /* the long runs only count */
        applied_seen[n_applied] = op;
    n_applied++;
}

static void quiet_log(void *ud, int level, const char *fmt, ...)
{
    (void)ud;
    (void)level;
    (void)fmt;
}

static void fx_open(fx *f, uint32_t max_batch, int fresh)
{
    char err[1024];
    if (fresh) {
        const char *t = getenv("TMPDIR");
        snprintf(f->dir, sizeof f->dir, "%s/pl-seq-XXXXXX", t && *t ? t : "/tmp");
        ck_assert_msg(mkdtemp(f->dir) != NULL, "mkdtemp failed");
    }
    f->plugin = pl_plugin_load("store", plugin_path, NULL, err, sizeof err);
    ck_assert_msg(f->plugin != NULL, "load %s: %s", plugin_path, err);
    real = pl_plugin_store(f->plugin);
    counting = *real;
    counting.log_append = count_append;
    counting.log_append_nosync = count_append_nosync;
    counting.log_compact = count_compact;
    counting.log_read = count_read;
    counting.log_sync = real->log_sync ? count_sync : NULL;
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, quiet_log };
    pl_store_options opt = { f->dir, fx_async, NULL };
    ck_assert_msg(pl_plugin_store_open(f->plugin, &host, &opt, &f->st, err, sizeof err) == PL_OK,
                  "open store: %s", err);
    f->chat = pl_chat_new(&counting, f->st);
    ck_assert_ptr_nonnull(f->chat);
    f->base = event_base_new();
    ck_assert_ptr_nonnull(f->base);
    pl_seq_host h = { .ud = NULL, .applied = on_applied, .compact_ops = fx_compact_ops,
                      .keep_ops = fx_keep_ops,
                      .sync_delay_us = fx_delay_us, .sync_delay_bytes = fx_delay_bytes,
                      .store_minor = fx_async ? pl_plugin_store_minor(f->plugin) : 0 };
    if (fx_async)
        ck_assert_uint_ge(h.store_minor, 1);
    f->seq = pl_seq_new(f->base, &counting, f->st, f->chat, max_batch, &h, err, sizeof err);
    ck_assert_msg(f->seq != NULL, "pl_seq_new: %s", err);
    ck_assert_msg(pl_seq_replay(f->seq, err, sizeof err) == PL_OK, "replay: %s", err);
    appends = 0;
    appended = 0;
    max_append_bytes = 0;
    reads = 0;
    reads_ops = 0;
    __atomic_store_n(&syncs, 0, __ATOMIC_RELAXED);
    n_done = n_applied = 0;
}

static void fx_close(fx *f)
{
    pl_seq_free(f->seq);
    f->seq = NULL;
    event_base_free(f->base);
    pl_chat_free(f->chat);
    real->close(f->st);
    pl_plugin_unload(f->plugin);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fx_remove(fx *f)
{
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void submit_register(pl_seq *q, const char *name)
{
    pl_op op = { .kind = PL_OP_REGISTER, .time_ms = 1000, .name = pl_str_c(name),
                 .pwhash = pl_str_c(FAKE_HASH) };
    ck_assert_int_eq(pl_seq_submit(q, &op, on_done, NULL), PL_OK);
}

/* Run the loop until every submitted op is answered (bounded). */
static void run_until_idle(fx *f)
{
    /* blocking: the sync thread's completion arrives as an event (the
     * sequencer's 10 ms tick bounds every wait) */
    for (int i = 0; i < 1000 && pl_seq_pending(f->seq) > 0; i++)
        event_base_loop(f->base, EVLOOP_ONCE);
    ck_assert_msg(pl_seq_pending(f->seq) == 0, "the sequencer left %u ops unanswered",
                  pl_seq_pending(f->seq));
}

START_TEST(group_commit)
{
    fx_open(&F, 0, 1);
    submit_register(F.seq, "ann");
    submit_register(F.seq, "ben");
    submit_register(F.seq, "ann"); /* a rule violation is a normal result */
    ck_assert_msg(n_done == 0, "done never runs inside pl_seq_submit");
    run_until_idle(&F);
    ck_assert_msg(appends == 1, "3 ops submitted together share one log append (got %d)", appends);
    ck_assert_int_eq(n_done, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(done_seen[i].err, PL_OK);
        ck_assert_msg(done_seen[i].op == (uint64_t)i + 1, "answers in op order");
        ck_assert_msg(applied_seen[i] == (uint64_t)i + 1, "applied hook per op, in order");
    }
    ck_assert_uint_eq(done_seen[0].status, PL_OK);
    ck_assert_uint_eq(done_seen[1].status, PL_OK);
    ck_assert_msg(done_seen[2].status == PL_ERR_USER_EXISTS, "duplicate name refused by the rules");
    ck_assert_uint_eq(real->applied_op(F.st), 3);
    ck_assert_uint_eq(pl_seq_last_op(F.seq), 3);
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

/* What a batch appends it applies from memory: no log_read. Ops only in
 * the log (a restart's replay) are read from the store, as are those of a
 * chunk the cache no longer holds whole. Every test here runs with
 * PARLEY_CHECK_APPLY_CACHE (main), which reads each cached chunk back and
 * compares; those reads are the "verify" ones counted apart below. */
START_TEST(apply_from_cache)
{
    unsetenv("PARLEY_CHECK_APPLY_CACHE");
    fx_open(&F, 0, 1);
    char name[32];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 20; i++) {
            snprintf(name, sizeof name, "c%d_%d", round, i);
            submit_register(F.seq, name);
        }
        run_until_idle(&F);
    }
    ck_assert_int_eq(n_done, 60);
    ck_assert_uint_eq(real->applied_op(F.st), 60);
    ck_assert_msg(reads == 0, "60 ops applied with %d log reads of %llu ops", reads,
                  (unsigned long long)reads_ops);
    fx_close(&F);

    /* the same with the check on: one read per applied chunk, all equal */
    setenv("PARLEY_CHECK_APPLY_CACHE", "1", 1);
    fx_open(&F, 0, 0);
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "d%d", i);
        submit_register(F.seq, name);
    }
    run_until_idle(&F);
    ck_assert_uint_eq(real->applied_op(F.st), 80);
    ck_assert_msg(reads >= 1 && reads_ops == 20, "the check read back the 20 ops (%d reads,"
                  " %llu ops)", reads, (unsigned long long)reads_ops);
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "d%d", i);
        ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c(name), NULL, NULL), PL_OK);
    }
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

static int n_noop_done;

static void noop_done(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    (void)ud;
    (void)op;
    (void)res;
    ck_assert_int_eq(err, PL_OK);
    n_noop_done++;
}

/* A long log is compacted over several ticks, a bounded step each, so the
 * event loop never stalls for a whole round (core/seq.c maybe_compact). */
START_TEST(compaction_in_steps)
{
    fx_compact_ops = 15000;
    fx_keep_ops = 100;
    fx_open(&F, 0, 1);
    compacts = 0;
    n_noop_done = 0;
    pl_op op = { .kind = PL_OP_NOOP, .time_ms = 1000 };
    for (int i = 0; i < 20000; i++)
        ck_assert_int_eq(pl_seq_submit(F.seq, &op, noop_done, NULL), PL_OK);
    run_until_idle(&F);
    ck_assert_int_eq(n_noop_done, 20000);
    uint64_t applied = real->applied_op(F.st), first = 0, last = 0;
    (void)first;
    ck_assert_uint_eq(applied, 20000);
    /* ticks run every 10 ms: let the round (started when the log passed
     * 15,000 entries) finish */
    int quiet = 0;
    for (int i = 0; i < 300 && quiet < 5; i++) {
        int before = compacts;
        event_base_loop(F.base, EVLOOP_ONCE);
        quiet = compacts == before && compacts > 0 ? quiet + 1 : 0;
    }
    ck_assert_int_eq(real->log_bounds(F.st, &first, &last), PL_OK);
    ck_assert_uint_eq(last, applied);
    ck_assert_msg(last - first + 1 <= fx_compact_ops, "the log holds %llu entries",
                  (unsigned long long)(last - first + 1));
    ck_assert_msg(compacts >= 2, "more than 15,000 entries dropped in steps, not in one call "
                  "(%d calls)", compacts);
    /* A store only leaves steps after three slow ones in a row, so the
     * first calls are steps on every store. */
    for (int i = 0; i < 2; i++)
        ck_assert_msg(compact_before[i] - compact_first[i] <= 2048,
                      "call %d dropped %llu entries, more than a step", i,
                      (unsigned long long)(compact_before[i] - compact_first[i]));
    for (int i = 1; i < compacts && i < MAXCOMPACT; i++)
        ck_assert_msg(compact_before[i] > compact_before[i - 1], "steps move forward");
    fx_close(&F);
    fx_remove(&F);
    fx_compact_ops = fx_keep_ops = 0;
}
END_TEST

START_TEST(batch_limit)
{
    fx_open(&F, 2, 1);
    const char *names[] = { "u1", "u2", "u3", "u4", "u5" };
    for (int i = 0; i < 5; i++)
        submit_register(F.seq, names[i]);
    run_until_idle(&F);
    ck_assert_msg(appends == 3, "5 ops with max_batch 2 take 3 appends (got %d)", appends);
    ck_assert_uint_eq(appended, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(done_seen[i].op == (uint64_t)i + 1 && done_seen[i].status == PL_OK,
                      "op %d answered in order", i + 1);
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

/* A batch also ends at 4 MiB of encoded ops (core/seq.c
 * PL_SEQ_BATCH_BYTES), whatever max_batch allows: 100 sends of 60,000-byte
 * bodies, ~6 MB, take two batches. */
START_TEST(batch_byte_limit)
{
    static char body[60000];
    memset(body, 'x', sizeof body);
    fx_open(&F, 0, 1);
    n_noop_done = 0;
    for (int i = 0; i < 100; i++) {
        pl_op op = { .kind = PL_OP_SEND, .time_ms = 1000, .uid = 1, .name = pl_str_c("nobody"),
                     .body = { body, sizeof body } };
        ck_assert_int_eq(pl_seq_submit(F.seq, &op, noop_done, NULL), PL_OK);
    }
    run_until_idle(&F);
    ck_assert_int_eq(n_noop_done, 100);
    ck_assert_uint_eq(appended, 100);
    ck_assert_msg(appends == 2, "~6 MB of ops in batches of at most 4 MiB: 2 appends, got %d",
                  appends);
    ck_assert_msg(max_append_bytes <= 4u * 1024u * 1024u, "a batch of %zu bytes",
                  max_append_bytes);
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

/* A crash after the log append but before the state commit: the ops are in
 * the log only. Replay must apply them, and numbering must continue. */
START_TEST(replay_after_crash)
{
    fx_open(&F, 0, 1);
    const char *names[] = { "r1", "r2", "r3" };
    uint8_t *bufs[3];
    pl_log_entry e[3];
    for (int i = 0; i < 3; i++) {
        size_t len;
        pl_op op = { .kind = PL_OP_REGISTER, .time_ms = 5, .name = pl_str_c(names[i]),
                     .pwhash = pl_str_c(FAKE_HASH) };
        ck_assert_int_eq(pl_op_encode(&op, &bufs[i], &len), PL_OK);
        e[i] = (pl_log_entry){ (uint64_t)i + 1, 0, bufs[i], (uint32_t)len };
    }
    ck_assert_int_eq(real->log_append(F.st, e, 3), PL_OK);
    for (int i = 0; i < 3; i++)
        free(bufs[i]);
    ck_assert_uint_eq(real->applied_op(F.st), 0);
    fx_close(&F);

    fx_open(&F, 0, 0); /* reopens the same directory and replays */
    ck_assert_msg(real->applied_op(F.st) == 3, "replay applied the logged ops (applied %llu)",
                  (unsigned long long)real->applied_op(F.st));
    for (int i = 0; i < 3; i++)
        ck_assert_msg(pl_chat_account(F.chat, pl_str_c(names[i]), NULL, NULL) == PL_OK,
                      "account %s exists after replay", names[i]);
    submit_register(F.seq, "r4");
    run_until_idle(&F);
    ck_assert_msg(done_seen[0].op == 4, "numbering continues after the replayed ops");
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

/* A crash between installing a snapshot's state and dropping the log up to
 * it leaves entries at or below the applied op that may belong to another
 * history; the restart drops them (core/seq.c, "snap_op"). */
START_TEST(interrupted_snapshot_install)
{
    fx_open(&F, 0, 1);
    const char *names[] = { "s1", "s2", "s3", "s4", "s5" };
    for (int i = 0; i < 5; i++) {
        uint8_t *buf;
        size_t len;
        pl_op op = { .kind = PL_OP_REGISTER, .time_ms = 5, .name = pl_str_c(names[i]),
                     .pwhash = pl_str_c(FAKE_HASH) };
        ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
        pl_log_entry e = { (uint64_t)i + 1, 7, buf, (uint32_t)len };
        ck_assert_int_eq(real->log_append(F.st, &e, 1), PL_OK);
        free(buf);
    }
    /* the snapshot's state (at op 3) is in; the old log is not gone yet */
    ck_assert_int_eq(real->meta_set(F.st, "snap_op", 3), PL_OK);
    ck_assert_int_eq(real->begin(F.st), PL_OK);
    ck_assert_int_eq(real->commit(F.st, 3), PL_OK);
    fx_close(&F);

    fx_open(&F, 0, 0);
    uint64_t first = 0, last = 0, marker = 1;
    ck_assert_int_eq(real->log_bounds(F.st, &first, &last), PL_OK);
    ck_assert_msg(first == 4, "the log up to the snapshot's op is dropped (first op %llu)",
                  (unsigned long long)first);
    ck_assert_uint_eq(last, 5);
    ck_assert_int_eq(real->meta_get(F.st, "snap_op", &marker), PL_OK);
    ck_assert_msg(marker == 0, "the install is recorded as done");
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

START_TEST(free_flushes)
{
    fx_open(&F, 0, 1);
    submit_register(F.seq, "late1");
    submit_register(F.seq, "late2");
    pl_seq_free(F.seq); /* shutdown with ops still queued */
    F.seq = NULL;
    ck_assert_int_eq(n_done, 2);
    ck_assert_msg(done_seen[0].err == PL_OK && done_seen[1].err == PL_OK,
                  "queued ops are committed, not dropped, when the sequencer is freed");
    ck_assert_uint_eq(real->applied_op(F.st), 2);
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Run the loop until a new log append happened (bounded). */
static void run_until_appended(fx *f, int before)
{
    for (int i = 0; i < 1000 && appends == before; i++)
        event_base_loop(f->base, EVLOOP_ONCE);
    ck_assert_msg(appends > before, "the op was never appended");
}

/* The group commit delay (config "group_commit"): the rule itself, then
 * with the sync thread: a sync held back until delay_us after the one
 * before it started covers every batch appended meanwhile; once
 * delay_bytes wait it starts at once. Without the sync thread (store ABI
 * minor 0) there is nothing to delay: every append syncs. */
START_TEST(sync_delay)
{
    /* off; the rest of the delay; over; enough bytes; a clock that went
     * back (never wait on it) */
    ck_assert_uint_eq(pl_sync_wait_us(5000, 4900, 10, 0, 4096), 0);
    ck_assert_uint_eq(pl_sync_wait_us(5000, 4900, 10, 1000, 4096), 900);
    ck_assert_uint_eq(pl_sync_wait_us(5000, 4000, 10, 1000, 4096), 0);
    ck_assert_uint_eq(pl_sync_wait_us(5000, 4999, 4096, 1000, 4096), 0);
    ck_assert_uint_eq(pl_sync_wait_us(5000, 4999, 4095, 1000, 4096), 999);
    ck_assert_uint_eq(pl_sync_wait_us(5000, 6000, 10, 1000, 4096), 0);

    /* 300 ms, and more bytes than these ops have */
    fx_delay_us = 300000;
    fx_delay_bytes = 1u << 20;
    uint64_t t0 = now_ms();
    fx_open(&F, 0, 1);
    submit_register(F.seq, "ann");
    run_until_idle(&F);
    /* the first sync has no sync before it to wait for */
    int first = __atomic_load_n(&syncs, __ATOMIC_RELAXED);
    submit_register(F.seq, "ben");
    run_until_appended(&F, appends);
    int two = appends;
    submit_register(F.seq, "cat");
    run_until_appended(&F, two);
    run_until_idle(&F);
    uint64_t took = now_ms() - t0;
    ck_assert_int_eq(n_done, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(done_seen[i].err, PL_OK);
    ck_assert_uint_eq(real->applied_op(F.st), 3);
    if (fx_async) {
        ck_assert_int_eq(first, 1);
        ck_assert_msg(__atomic_load_n(&syncs, __ATOMIC_RELAXED) == 2,
                      "the two batches appended during the delay share one sync (%d syncs)",
                      __atomic_load_n(&syncs, __ATOMIC_RELAXED));
        ck_assert_msg(took >= 300, "the second sync waited out the delay (%llu ms)",
                      (unsigned long long)took);
    } else {
        ck_assert_int_eq(appends, 3);
    }
    fx_close(&F);
    fx_remove(&F);

    /* 5 s, but one byte waiting is enough: no batch waits for the delay */
    fx_delay_us = 5000000;
    fx_delay_bytes = 1;
    t0 = now_ms();
    fx_open(&F, 0, 1);
    submit_register(F.seq, "ann");
    run_until_idle(&F);
    submit_register(F.seq, "ben");
    run_until_idle(&F);
    took = now_ms() - t0;
    ck_assert_int_eq(n_done, 2);
    ck_assert_msg(took < 2500, "a sync with delay_bytes waiting started at once (%llu ms)",
                  (unsigned long long)took);
    /* closing while a sync is held back does not wait for the delay */
    fx_delay_bytes = 1u << 20;
    fx_close(&F);
    fx_open(&F, 0, 0);
    submit_register(F.seq, "cat");
    run_until_idle(&F);
    submit_register(F.seq, "dan");
    run_until_appended(&F, appends);
    t0 = now_ms();
    pl_seq_free(F.seq);
    F.seq = NULL;
    took = now_ms() - t0;
    ck_assert_int_eq(n_done, 2);
    ck_assert_int_eq(done_seen[1].err, PL_OK);
    ck_assert_msg(took < 2500, "freeing the sequencer cut the delay short (%llu ms)",
                  (unsigned long long)took);
    ck_assert_uint_eq(real->applied_op(F.st), 4);
    fx_close(&F);
    fx_remove(&F);
    fx_delay_us = fx_delay_bytes = 0;
}
END_TEST

/* The replies and pushes of the ops committed just before a membership
 * change, in the same chunk, must still be intact when they are handed out.
 * The chat applies the membership change in a batch of its own, which
 * resets the arena its answers live in: a fault run lost a read this way
 * (its messages marked read, the reply garbage the codec refused). Bodies
 * of nearly 64 KiB put each message in an arena block of its own, and
 * freed memory is perturbed (main), so a reply read after the reset does
 * not match. */
#define BIG_BODY 60000
static char big_body[3][BIG_BODY];
static int read_checked, push_checked;

static int body_is(pl_str b, int k)
{
    return b.len == BIG_BODY && memcmp(b.ptr, big_body[k], BIG_BODY) == 0;
}

static void on_read_done(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    (void)ud;
    (void)op;
    ck_assert_int_eq(err, PL_OK);
    ck_assert_uint_eq(res->reply.status, PL_OK);
    ck_assert_uint_eq(res->reply.n_msgs, 2);
    for (uint32_t i = 0; i < 2; i++)
        ck_assert_msg(body_is(res->reply.msgs[i].body, (int)i),
                      "read reply message %u is intact when answered", i);
    read_checked++;
}

static void on_push_applied(void *ud, uint64_t op, const pl_apply_result *res)
{
    (void)ud;
    if (res->has_push && op == 6) {
        ck_assert_msg(body_is(res->push.body, 2), "the push of op %llu is intact",
                      (unsigned long long)op);
        push_checked++;
    }
}

static void submit_send(pl_seq *q, uint64_t uid, const char *to, int k)
{
    pl_op op = { .kind = PL_OP_SEND, .time_ms = 1000, .uid = uid, .name = pl_str_c(to),
                 .body = { big_body[k], BIG_BODY } };
    ck_assert_int_eq(pl_seq_submit(q, &op, on_done, NULL), PL_OK);
}

START_TEST(answers_before_membership_change)
{
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < BIG_BODY; i++)
            big_body[k][i] = (char)('a' + (i * 7 + k * 3) % 26);
    read_checked = push_checked = 0;
    fx_open(&F, 0, 1);
    submit_register(F.seq, "ann"); /* uid 1 */
    submit_register(F.seq, "ben"); /* uid 2 */
    run_until_idle(&F);
    submit_send(F.seq, 1, "ben", 0);
    submit_send(F.seq, 1, "ben", 1);
    run_until_idle(&F);
    ck_assert_uint_eq(real->applied_op(F.st), 4);

    /* one batch: a read, a send, the membership change that ends it */
    applied_extra = on_push_applied;
    pl_op rd = { .kind = PL_OP_READ, .time_ms = 1000, .uid = 2 };
    ck_assert_int_eq(pl_seq_submit(F.seq, &rd, on_read_done, NULL), PL_OK);
    submit_send(F.seq, 2, "ben", 2);
    static const char members[] = "{\"epoch\": 1}";
    pl_op rc = { .kind = PL_OP_RECONFIG, .time_ms = 1000, .body = pl_str_c(members) };
    ck_assert_int_eq(pl_seq_submit(F.seq, &rc, on_done, NULL), PL_OK);
    int before = appends;
    run_until_idle(&F);
    ck_assert_msg(appends == before + 1, "the read, the send and the change share one batch");
    ck_assert_uint_eq(real->applied_op(F.st), 7);
    ck_assert_int_eq(read_checked, 1);
    ck_assert_int_eq(push_checked, 1);
    applied_extra = NULL;
    fx_close(&F);
    fx_remove(&F);
}
END_TEST

static void set_sync(void) { fx_async = 0; }
static void set_async(void) { fx_async = 1; }

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-seq STORE_PLUGIN.so\n");
        return 2;
    }
    plugin_path = argv[1];
    /* core/seq.c compares what it applies from its apply cache with the
     * store's log, and aborts on a difference */
    setenv("PARLEY_CHECK_APPLY_CACHE", "1", 1);
    /* freed memory is overwritten, so an answer read after its memory was
     * freed does not pass for intact (answers_before_membership_change) */
    mallopt(M_PERTURB, 0xa5);
    Suite *s = suite_create("seq");
    for (int async = 0; async < 2; async++) {
        TCase *tc = tcase_create(async ? "seq-async" : "seq");
        tcase_set_timeout(tc, 60);
        tcase_add_checked_fixture(tc, async ? set_async : set_sync, NULL);
        tcase_add_test(tc, group_commit);
        tcase_add_test(tc, apply_from_cache);
        tcase_add_test(tc, batch_limit);
        tcase_add_test(tc, batch_byte_limit);
        tcase_add_test(tc, compaction_in_steps);
        tcase_add_test(tc, replay_after_crash);
        tcase_add_test(tc, interrupted_snapshot_install);
        tcase_add_test(tc, free_flushes);
        tcase_add_test(tc, sync_delay);
        tcase_add_test(tc, answers_before_membership_change);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
