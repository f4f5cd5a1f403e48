/*
 * core/seq.c — the sequencer (seq.h): group commit through Viewstamped
 * Replication.
 *
 * Life of a batch on the primary, and why in this order:
 *   1. ops submitted in one loop iteration are encoded and numbered
 *      (pl_vr_op() + 1, ...) and parked, in order, on the in-flight list;
 *   2. pl_vr_propose sends one PREPARE with the whole batch and appends it to
 *      the local log; batches are pipelined: the next one does not wait for
 *      this one's commit. With a store of ABI minor 1 or later the append
 *      does not sync: the sync thread (below) makes the log durable while
 *      the loop executes and encodes the next batch, and tells VR
 *      (pl_vr_synced), which counts the batch toward a commit only then;
 *      backups do the same before their PREPARE-OK;
 *   3. when f+1 servers hold the batch durably, VR reports the new commit
 *      number (io.committed) and apply_upto() applies every committed op from
 *      the store's log in one store transaction per chunk; only then is each
 *      waiting client answered and each new message pushed. An acknowledged
 *      op is therefore durable on a majority (DESIGN.md §6, invariant 1).
 * Backups apply what the primary commits through the same apply_upto().
 * When the view changes, the ops still in flight are failed with
 * PL_ERR_UNAVAILABLE: they may or may not commit in the new view, and the
 * client's retry (same client id and request number) is answered from the
 * client table if they did.
 */
#include "seq.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "logcache.h"
#include "snapshot.h"

#define PL_SEQ_BATCH_DEFAULT 512u
/* A batch also ends at this many bytes of encoded ops (but holds at least
 * one): 2,048 sends of the largest body would be a 128 MiB PREPARE. */
#define PL_SEQ_BATCH_BYTES (4u * 1024u * 1024u)
#define PL_SEQ_TICK_MS 10
#define PL_COMPACT_OPS_DEFAULT 100000u
#define PL_COMPACT_BYTES_DEFAULT (64u * 1024u * 1024u)
#define PL_KEEP_OPS_DEFAULT 10000u
#define PL_COMPACT_STEP 2048u
#define PL_COMPACT_STEP_US 20000u
#define PL_SNAPSHOT_MAX (4ull * 1024u * 1024u * 1024u)
/* The apply cache holds at most this many entries or bytes. */
#define PL_AC_ENTRIES 16384u
#define PL_AC_BYTES (16u * 1024u * 1024u)

typedef struct seq_item {
    struct seq_item *next;
    uint8_t *data;            /* pl_op_encode output, owned */
    size_t len;
    uint64_t op;              /* assigned when proposed */
    pl_seq_done_fn done;
    void *ud;
} seq_item;

struct pl_seq {
    struct event_base *base;
    const pl_store_plugin *sp;
    pl_store *st;
    pl_chat *chat;
    pl_seq_host host;
    uint32_t max_batch;
    seq_item *head, *tail;    /* waiting for the next batch */
    seq_item *fl_head, *fl_tail; /* proposed, waiting for commit; op order */
    uint32_t queued;
    uint32_t pending;         /* submitted, done not yet called */
    struct event *flush_ev;
    struct event *tick_ev;
    int scheduled;            /* flush_ev is active or its timer pending */
    int need_apply;           /* an apply failed: retry on the next tick */
    int apply_later;          /* a backup left committed ops for the next tick */
    int applying;             /* apply_upto is running (re-entrancy guard) */
    uint64_t applied;         /* the store's applied op */
    uint64_t seen_view;       /* view when in-flight ops were proposed */
    int was_primary;
    uint64_t fail_gen;        /* bumped whenever fail_inflight runs */
    pl_vr *vr;
    uint64_t appended_bytes;  /* log bytes appended since the last compaction */
    uint64_t compact_to;      /* a compaction round in progress drops ops below this */
    uint32_t compact_steps;
    uint64_t compact_us;
    uint32_t compact_slow;    /* steps in a row over PL_COMPACT_STEP_US */
    int compact_whole;        /* this store's compaction does not get cheaper in steps */
    uint64_t snap_sent_ms[PL_VR_MAX_REPLICAS]; /* last snapshot sent to each */
    uint8_t *snap_buf;        /* snapshot being received */
    uint64_t snap_total, snap_got, snap_view;
    uint32_t snap_from;
    /* a membership change applied, waiting to enter its epoch (on_reconf) */
    struct event *reconf_ev;
    int reconf_pending;
    uint64_t reconf_op, reconf_epoch;
    uint32_t reconf_n, reconf_self;
    /* per-chunk scratch, max_batch entries each */
    seq_item **items;
    pl_log_entry *entries;
    pl_op *ops;
    uint64_t **ids;
    pl_apply_result *results;
    uint8_t **data;
    size_t *len;
    /* The entries appended and not yet applied (logcache.h), so that
     * applying a batch does not read it back from the store: that read was
     * a transaction of its own, a B-tree walk and a copy per entry (~8 % of
     * the loop thread at 10,000 sends/s). Every change to the log below
     * goes through seq.c and tells the cache. With PARLEY_CHECK_APPLY_CACHE
     * set (the fault and cluster suites) every chunk taken from it is also
     * read from the store and compared. */
    pl_logcache *ac;
    int ac_check;
    /* The sync thread (store ABI minor >= 1). The loop asks for "durable up
     * to op in log generation gen"; requests made while a sync runs
     * coalesce into one (the newest covers the older ones), so the disk
     * syncs back to back under load, each sync covering every batch
     * appended while the one before it ran. run_mu is held around every
     * log_sync call: the thread's and io_flush's never overlap. */
    int async;
    int sync_init;                     /* the locks below exist */
    pthread_t sync_thr;
    int sync_started;
    pthread_mutex_t sync_mu, run_mu;
    pthread_cond_t sync_cv;
    int sync_want, sync_exit;          /* sync_mu */
    uint64_t want_op, want_gen;        /* sync_mu */
    /* Group commit delay (pl_seq_host.sync_delay_us, pl_sync_wait_us):
     * log bytes appended so far, as of the newest request (sync_mu), and
     * the loop's running count of them (loop thread). */
    uint64_t want_bytes;
    uint64_t log_bytes;
    int sync_done, sync_err;           /* sync_mu */
    uint64_t done_op, done_gen;        /* sync_mu */
    int sync_efd;                      /* eventfd: thread -> loop */
    struct event *sync_ev;
};

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_ms(void)
{
    return mono_us() / 1000u;
}

static void item_free(seq_item *it)
{
    if (!it)
        return;
    free(it->data);
    free(it);
}

static void finish(pl_seq *q, seq_item *it, int err, uint64_t op, const pl_apply_result *res)
{
    q->pending--;
    it->done(it->ud, err, op, res);
    item_free(it);
}

static void schedule(pl_seq *q, int now);
static void fail_inflight(pl_seq *q, int err);
static int io_flush(void *ud);

/* A membership change: the sequencer makes it durable (host.reconfigured)
 * before the op counts as applied, and VR enters the new epoch right after
 * the VR call that committed it has returned (on_reconf). */
static int apply_reconfig(pl_seq *q, uint64_t op, const pl_op *o)
{
    if (!q->host.reconfigured)
        return PL_OK;
    uint64_t epoch = 0, start = 0;
    uint32_t n = 0, self = 0;
    /* membership.json will name the new epoch and the op that started it:
     * a restart must find that entry in the log, synced or not */
    int rc = q->async ? io_flush(q) : PL_OK;
    if (rc != PL_OK)
        return rc;
    rc = q->host.reconfigured(q->host.ud, (const uint8_t *)o->body.ptr, o->body.len, op,
                              &epoch, &n, &self, &start);
    if (rc != PL_OK)
        return rc;
    q->reconf_pending = 1;
    q->reconf_op = op;
    q->reconf_epoch = epoch;
    q->reconf_n = n;
    q->reconf_self = self;
    event_active(q->reconf_ev, EV_TIMEOUT, 0);
    return PL_OK;
}

/* ---- applying committed ops ---- */

typedef struct read_chunk {
    pl_seq *q;
    uint64_t expect;          /* next op-number we must see */
    size_t n;
    int err;
} read_chunk;

/* The store forbids calling back into it from a scan callback, so entries
 * are copied here and applied after log_read returns. */
static int chunk_copy(void *ud, const pl_log_entry *e)
{
    read_chunk *c = ud;
    if (e->op != c->expect) {
        c->err = PL_ERR_CORRUPT;
        return 1;
    }
    uint8_t *d = malloc(e->len ? e->len : 1);
    if (!d) {
        c->err = PL_ERR_NOMEM;
        return 1;
    }
    if (e->len)
        memcpy(d, e->data, e->len);
    c->q->data[c->n] = d;
    c->q->len[c->n] = e->len;
    c->n++;
    c->expect++;
    return 0;
}

/* PARLEY_CHECK_APPLY_CACHE: the entries taken from the apply cache into
 * q->data must be what the store's log holds. */
typedef struct cache_check {
    pl_seq *q;
    uint64_t from, expect;
    int same;
} cache_check;

static int cache_check_cb(void *ud, const pl_log_entry *e)
{
    cache_check *k = ud;
    size_t i = (size_t)(e->op - k->from);
    if (e->op != k->expect || e->len != k->q->len[i] ||
        (e->len && memcmp(e->data, k->q->data[i], e->len) != 0)) {
        k->same = 0;
        return 1;
    }
    k->expect++;
    return 0;
}

static void check_cached(pl_seq *q, uint64_t from, uint64_t to)
{
    cache_check k = { q, from, from, 1 };
    int rc = q->sp->log_read(q->st, from, to, cache_check_cb, &k);
    if (rc == PL_OK && k.same && k.expect == to + 1)
        return;
    /* A test run: stop loudly, before the wrong entries are applied. */
    pl_log(PL_LOG_ERROR, "apply cache: ops %llu-%llu differ from the log at op %llu (%s); "
           "aborting (PARLEY_CHECK_APPLY_CACHE)", (unsigned long long)from,
           (unsigned long long)to, (unsigned long long)k.expect,
           rc != PL_OK ? pl_strerror(rc) : "different bytes");
    abort();
}

/* Applied ops from .. from + n - 1 with their results: record them as
 * applied, answer the in-flight ones and run host.applied for each. This
 * must happen before the chat applies or queries anything else: results
 * point into memory its next call reuses. */
static void answer_applied(pl_seq *q, uint64_t from, size_t n, const pl_apply_result *res)
{
    q->applied = from + n - 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t op = from + i;
        /* in-flight ops are in op order; anything below op is gone */
        while (q->fl_head && q->fl_head->op < op) {
            seq_item *it = q->fl_head;
            q->fl_head = it->next;
            finish(q, it, PL_ERR_UNAVAILABLE, 0, NULL);
        }
        if (q->fl_head && q->fl_head->op == op) {
            seq_item *it = q->fl_head;
            q->fl_head = it->next;
            finish(q, it, PL_OK, op, &res[i]);
        }
        if (!q->fl_head)
            q->fl_tail = NULL;
        if (q->host.applied)
            q->host.applied(q->host.ud, op, &res[i]);
    }
}

/* Apply the log from applied + 1 through upto, in chunks of one store
 * transaction each; answer in-flight ops and run host.applied per op. */
static int apply_upto(pl_seq *q, uint64_t upto, char *err, size_t errlen)
{
    if (q->applying || q->reconf_pending)
        return PL_OK; /* the running call continues to the new commit number;
                         on_reconf continues after a membership change */
    q->applying = 1;
    int rc = PL_OK;
    uint64_t total = 0, start = q->applied + 1;
    while (q->applied < upto && !q->reconf_pending) {
        uint64_t from = q->applied + 1;
        uint64_t to = upto - from + 1 > q->max_batch ? from + q->max_batch - 1 : upto;
        read_chunk c = { q, from, 0, PL_OK };
        if (pl_logcache_take(q->ac, from, to, q->data, q->len)) {
            c.n = (size_t)(to - from + 1);
            if (q->ac_check)
                check_cached(q, from, to);
        } else {
            rc = q->sp->log_read(q->st, from, to, chunk_copy, &c);
            if (rc == PL_OK && c.err != PL_OK)
                rc = c.err;
            if (rc == PL_OK && c.n != to - from + 1)
                rc = PL_ERR_CORRUPT;
        }
        size_t decoded = 0;
        for (; rc == PL_OK && decoded < c.n; decoded++) {
            q->ids[decoded] = NULL;
            rc = pl_op_decode(q->data[decoded], q->len[decoded], &q->ops[decoded],
                              &q->ids[decoded]);
        }
        /* A membership change ends the chunk: what follows it is applied
         * once its epoch has begun. */
        size_t cnt = c.n, barrier = c.n;
        for (size_t i = 0; rc == PL_OK && i < decoded; i++)
            if (q->ops[i].kind == PL_OP_RECONFIG) {
                barrier = i;
                cnt = i + 1;
                break;
            }
        /* The ops before a membership change are one batch, the change
         * another; each batch is answered before the next is applied,
         * because applying resets the memory the answers point into. */
        size_t done = 0;
        int stop = PL_OK;
        if (rc == PL_OK && barrier > 0) {
            rc = pl_chat_apply_batch(q->chat, from, q->ops, barrier, q->results);
            if (rc == PL_OK) {
                answer_applied(q, from, barrier, q->results);
                done = barrier;
            }
        }
        if (rc == PL_OK && barrier < cnt) {
            stop = apply_reconfig(q, from + barrier, &q->ops[barrier]);
            if (stop == PL_OK) {
                rc = pl_chat_apply_batch(q->chat, from + barrier, &q->ops[barrier], 1,
                                         &q->results[barrier]);
                if (rc == PL_OK) {
                    answer_applied(q, from + barrier, 1, &q->results[barrier]);
                    done++;
                }
            }
        }
        total += done;
        if (rc != PL_OK)
            snprintf(err, errlen, "applying ops %llu-%llu from the log: %s",
                     (unsigned long long)(from + done),
                     (unsigned long long)(cnt ? from + cnt - 1 : to), pl_strerror(rc));
        for (size_t i = 0; i < decoded; i++) {
            free(q->ids[i]);
            q->ids[i] = NULL;
        }
        for (size_t i = 0; i < c.n; i++)
            free(q->data[i]);
        if (rc == PL_OK && stop != PL_OK) {
            rc = stop; /* the ops before it are in; retried from it */
            snprintf(err, errlen, "making the membership change at op %llu durable: %s",
                     (unsigned long long)(from + barrier), pl_strerror(rc));
        }
        if (rc != PL_OK)
            break;
    }
    q->applying = 0;
    q->need_apply = rc != PL_OK;
    if (rc == PL_OK && total)
        pl_log(PL_LOG_DEBUG, "applied ops %llu-%llu", (unsigned long long)start,
               (unsigned long long)q->applied);
    return rc;
}

/* Apply through upto now, logging a failure (need_apply retries it on the
 * next tick). What an early return left (a call already running, a
 * membership change pending) the next tick applies too. */
static void apply_now(pl_seq *q, uint64_t upto)
{
    char err[256];
    if (apply_upto(q, upto, err, sizeof err) != PL_OK)
        pl_log(PL_LOG_ERROR, "%s (retrying)", err);
    q->apply_later = q->applied < upto;
}

/* ---- VR io ---- */

/* An append returned rc: the cache takes the entries, or, when it failed,
 * forgets everything from its first op on (what the store kept of them is
 * unknown; applying reads them from the store). */
static void cache_appended(pl_seq *q, const pl_log_entry *e, size_t n, int rc)
{
    if (n == 0)
        return;
    if (rc == PL_OK)
        pl_logcache_add(q->ac, e, n);
    else
        pl_logcache_cut(q->ac, e[0].op - 1);
}

static int io_append(void *ud, const pl_log_entry *e, size_t n)
{
    pl_seq *q = ud;
    int rc = q->sp->log_append(q->st, e, n);
    cache_appended(q, e, n, rc);
    if (rc == PL_OK)
        for (size_t i = 0; i < n; i++)
            q->appended_bytes += e[i].len;
    return rc;
}

static void sync_request(pl_seq *q, uint64_t op)
{
    pthread_mutex_lock(&q->sync_mu);
    q->want_op = op;
    q->want_bytes = q->log_bytes;
    q->want_gen = pl_vr_log_gen(q->vr);
    q->sync_want = 1;
    pthread_cond_signal(&q->sync_cv);
    pthread_mutex_unlock(&q->sync_mu);
}

static int io_append_async(void *ud, const pl_log_entry *e, size_t n)
{
    pl_seq *q = ud;
    int rc = q->sp->log_append_nosync(q->st, e, n);
    cache_appended(q, e, n, rc);
    if (rc != PL_OK || n == 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        q->appended_bytes += e[i].len;
        q->log_bytes += e[i].len;
    }
    sync_request(q, e[n - 1].op);
    return PL_OK;
}

/* On the loop thread, when VR needs the whole log durable now (before it
 * saves a last normal view): rare, so waiting out a running sync is fine. */
static int io_flush(void *ud)
{
    pl_seq *q = ud;
    pthread_mutex_lock(&q->run_mu);
    int rc = q->sp->log_sync(q->st);
    pthread_mutex_unlock(&q->run_mu);
    return rc;
}

uint64_t pl_sync_wait_us(uint64_t now_us, uint64_t last_start_us, uint64_t waiting_bytes,
                         uint32_t delay_us, uint32_t delay_bytes)
{
    if (delay_us == 0 || waiting_bytes >= delay_bytes || now_us < last_start_us)
        return 0;
    uint64_t since = now_us - last_start_us;
    return since >= delay_us ? 0 : delay_us - since;
}

static void *sync_main(void *arg)
{
    pl_seq *q = arg;
    uint64_t last_start = 0, last_bytes = 0;
    pthread_mutex_lock(&q->sync_mu);
    for (;;) {
        while (!q->sync_want && !q->sync_exit)
            pthread_cond_wait(&q->sync_cv, &q->sync_mu);
        if (!q->sync_want)
            break; /* exiting with nothing asked */
        /* Group commit delay: hold the sync back until delay_us after the
         * previous one started, so more batches share it, unless
         * delay_bytes already wait or the sequencer is closing. Requests
         * arriving meanwhile wake the thread to count their bytes. */
        for (;;) {
            uint64_t now = mono_us();
            uint64_t wait = q->sync_exit ? 0 : pl_sync_wait_us(now, last_start,
                                                               q->want_bytes - last_bytes,
                                                               q->host.sync_delay_us,
                                                               q->host.sync_delay_bytes);
            if (wait == 0) {
                last_start = now;
                break;
            }
            struct timespec dl = { (time_t)((now + wait) / 1000000u),
                                   (long)((now + wait) % 1000000u) * 1000 };
            pthread_cond_timedwait(&q->sync_cv, &q->sync_mu, &dl);
        }
        last_bytes = q->want_bytes;
        uint64_t op = q->want_op, gen = q->want_gen;
        q->sync_want = 0;
        pthread_mutex_unlock(&q->sync_mu);
        pthread_mutex_lock(&q->run_mu);
        int rc = q->sp->log_sync(q->st);
        pthread_mutex_unlock(&q->run_mu);
        pthread_mutex_lock(&q->sync_mu);
        if (rc != PL_OK && !q->sync_err)
            q->sync_err = rc;
        /* requests are taken newest first, so this one covers all before */
        q->done_op = op;
        q->done_gen = gen;
        if (!q->sync_done) {
            q->sync_done = 1;
            uint64_t one = 1;
            while (write(q->sync_efd, &one, sizeof one) < 0 && errno == EINTR)
                ;
        }
    }
    pthread_mutex_unlock(&q->sync_mu);
    return NULL;
}

/* A sync finished: VR counts what it covered. */
static void on_synced(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    pl_seq *q = arg;
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&q->sync_mu);
    int done = q->sync_done, err = q->sync_err;
    uint64_t op = q->done_op, gen = q->done_gen;
    q->sync_done = 0;
    pthread_mutex_unlock(&q->sync_mu);
    if (err != PL_OK) {
        /* After a failed fsync the kernel may have dropped the pages it
         * could not write, and a later fsync succeeds without them: nothing
         * the log holds can be vouched for any more. Stop, as PostgreSQL
         * and Redis do; a restart starts from what the disk holds. */
        pl_log(PL_LOG_ERROR, "syncing the log failed (%s): stopping; a restart recovers "
               "from what the disk holds", pl_strerror(err));
        exit(1);
    }
    if (done)
        pl_vr_synced(q->vr, op, gen, mono_ms());
}

static int sync_start(pl_seq *q, char *err, size_t errlen)
{
    /* The sync thread's timed waits (group commit delay) are on the
     * monotonic clock, as mono_us is. */
    pthread_condattr_t ca;
    int cv_ok = pthread_condattr_init(&ca) == 0;
    if (cv_ok) {
        cv_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                pthread_cond_init(&q->sync_cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cv_ok) {
        snprintf(err, errlen, "sequencer: cannot create the sync thread's locks");
        return PL_ERR_INTERNAL;
    }
    if (pthread_mutex_init(&q->sync_mu, NULL) != 0 || pthread_mutex_init(&q->run_mu, NULL) != 0) {
        pthread_cond_destroy(&q->sync_cv);
        snprintf(err, errlen, "sequencer: cannot create the sync thread's locks");
        return PL_ERR_INTERNAL;
    }
    q->sync_init = 1;
    q->sync_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->sync_efd < 0) {
        snprintf(err, errlen, "sequencer: eventfd: %s", strerror(errno));
        return PL_ERR_IO;
    }
    q->sync_ev = event_new(q->base, q->sync_efd, EV_READ | EV_PERSIST, on_synced, q);
    if (!q->sync_ev || event_add(q->sync_ev, NULL) != 0) {
        snprintf(err, errlen, "sequencer: out of memory");
        return PL_ERR_NOMEM;
    }
    if (pthread_create(&q->sync_thr, NULL, sync_main, q) != 0) {
        snprintf(err, errlen, "sequencer: cannot start the sync thread");
        return PL_ERR_INTERNAL;
    }
    q->sync_started = 1;
    return PL_OK;
}

static void sync_stop(pl_seq *q)
{
    if (q->sync_started) {
        pthread_mutex_lock(&q->sync_mu);
        q->sync_exit = 1;
        pthread_cond_signal(&q->sync_cv);
        pthread_mutex_unlock(&q->sync_mu);
        pthread_join(q->sync_thr, NULL);
        q->sync_started = 0;
    }
    if (q->sync_ev) {
        event_free(q->sync_ev);
        q->sync_ev = NULL;
    }
    if (q->sync_efd >= 0) {
        close(q->sync_efd);
        q->sync_efd = -1;
    }
}

static uint64_t io_log_first(void *ud)
{
    pl_seq *q = ud;
    uint64_t first = 0, last = 0;
    if (q->sp->log_bounds(q->st, &first, &last) != PL_OK)
        return 0;
    return first;
}

typedef struct last_entry {
    uint64_t view;
} last_entry;

static int last_cb(void *ud, const pl_log_entry *e)
{
    ((last_entry *)ud)->view = e->view;
    return 1;
}

/* Snapshots travel with the membership in force, so a replica that missed
 * membership changes learns them with the state:
 *   "PLM1" | u32 big-endian length | canonical membership JSON | snapshot. */
#define MEMBERS_MAGIC "PLM1"
#define MEMBERS_HDR 8u
#define MEMBERS_JSON_MAX (64u * 1024u)

static int add_members_header(pl_seq *q, uint8_t **buf, size_t *len)
{
    char *json = q->host.members_json ? q->host.members_json(q->host.ud) : NULL;
    size_t jl = json ? strlen(json) : 0;
    if (jl > MEMBERS_JSON_MAX) {
        free(json);
        return PL_ERR_INTERNAL;
    }
    uint8_t *out = malloc(MEMBERS_HDR + jl + *len);
    if (!out) {
        free(json);
        return PL_ERR_NOMEM;
    }
    memcpy(out, MEMBERS_MAGIC, 4);
    out[4] = (uint8_t)(jl >> 24);
    out[5] = (uint8_t)(jl >> 16);
    out[6] = (uint8_t)(jl >> 8);
    out[7] = (uint8_t)jl;
    if (jl)
        memcpy(out + MEMBERS_HDR, json, jl);
    memcpy(out + MEMBERS_HDR + jl, *buf, *len);
    free(json);
    free(*buf);
    *buf = out;
    *len += MEMBERS_HDR + jl;
    return PL_OK;
}

/* Split a received snapshot into its membership (may be empty) and state. */
static int split_members_header(const uint8_t *buf, size_t len, const uint8_t **json,
                                size_t *jl, const uint8_t **snap, size_t *sl)
{
    if (len < MEMBERS_HDR || memcmp(buf, MEMBERS_MAGIC, 4) != 0)
        return PL_ERR_CORRUPT;
    size_t n = (size_t)buf[4] << 24 | (size_t)buf[5] << 16 | (size_t)buf[6] << 8 | buf[7];
    if (n > MEMBERS_JSON_MAX || n > len - MEMBERS_HDR)
        return PL_ERR_CORRUPT;
    *json = buf + MEMBERS_HDR;
    *jl = n;
    *snap = buf + MEMBERS_HDR + n;
    *sl = len - MEMBERS_HDR - n;
    return PL_OK;
}

/* A backup asked for entries we compacted: send it the whole state. The
 * export scans the store on the loop thread; it runs at most once per
 * election timeout per replica. */
static void io_need_snapshot(void *ud, uint32_t to)
{
    pl_seq *q = ud;
    uint64_t now = mono_ms();
    uint64_t gap = q->host.vr ? q->host.vr->election_timeout_ms : 1000;
    if (to >= PL_VR_MAX_REPLICAS || !q->host.send_snapshot ||
        (q->snap_sent_ms[to] && now - q->snap_sent_ms[to] < gap))
        return;
    q->snap_sent_ms[to] = now;
    last_entry le = { 0 };
    uint64_t applied = q->sp->applied_op(q->st);
    if (applied)
        q->sp->log_read(q->st, applied, applied, last_cb, &le);
    uint8_t *buf = NULL;
    size_t len = 0;
    uint64_t op = 0;
    int rc = pl_snapshot_export(q->sp, q->st, le.view, &buf, &len, &op);
    if (rc == PL_OK)
        rc = add_members_header(q, &buf, &len);
    if (rc != PL_OK) {
        pl_log(PL_LOG_ERROR, "snapshot for server %u: %s", to, pl_strerror(rc));
        free(buf);
        return;
    }
    rc = q->host.send_snapshot(q->host.ud, to, pl_vr_view(q->vr), buf, len);
    pl_log(rc == PL_OK ? PL_LOG_INFO : PL_LOG_WARN,
           "snapshot at op %llu (%zu bytes) for server %u: %s", (unsigned long long)op, len, to,
           rc == PL_OK ? "sent" : pl_strerror(rc));
    free(buf);
}

static void snap_reset(pl_seq *q)
{
    free(q->snap_buf);
    q->snap_buf = NULL;
    q->snap_total = q->snap_got = 0;
}

/* Install a complete snapshot: the state first (one store transaction that
 * commits with applied = its op), then drop the log entries at or below that
 * op, which the state now holds. Entries above it stay: they may be ops we
 * acknowledged in our last normal view, and VR cuts them only where the
 * primary's log disagrees (vr.c, merge_suffix); dropping them here let a
 * later view change lose a committed op. A crash between the two leaves a
 * log that ends below the applied op, which pl_seq_new recognises and
 * clears, or one that starts below it, whose entries up to it are then
 * skipped like any applied entry. */
static void snap_install(pl_seq *q)
{
    uint64_t op = 0, op_view = 0;
    const uint8_t *json = NULL, *snap = NULL;
    size_t jl = 0, sl = 0;
    int rc = split_members_header(q->snap_buf, q->snap_total, &json, &jl, &snap, &sl);
    if (rc == PL_OK)
        rc = pl_snapshot_peek(snap, sl, &op, &op_view);
    if (rc != PL_OK) {
        pl_log(PL_LOG_WARN, "snapshot from server %u is corrupt; dropped", q->snap_from);
        return;
    }
    if (PL_VR_EPOCH(q->snap_view) > PL_VR_EPOCH(pl_vr_view(q->vr))) {
        /* It comes from a newer membership: make that ours first (durably),
         * then the state. A crash in between restarts us in the new epoch
         * with our old state, which fetches a snapshot again. */
        if (!q->host.reconfigured || !jl) {
            pl_log(PL_LOG_WARN, "snapshot from server %u of a newer epoch carries no "
                   "membership; dropped", q->snap_from);
            return;
        }
        uint64_t epoch = 0, start = 0;
        uint32_t n = 0, self = 0;
        rc = q->host.reconfigured(q->host.ud, json, jl, 0, &epoch, &n, &self, &start);
        if (rc != PL_OK || epoch != PL_VR_EPOCH(q->snap_view)) {
            pl_log(PL_LOG_WARN, "snapshot from server %u: its membership (epoch %llu) cannot "
                   "be used: %s", q->snap_from, (unsigned long long)epoch,
                   rc != PL_OK ? pl_strerror(rc) : "epoch differs from its view");
            return;
        }
        fail_inflight(q, PL_ERR_UNAVAILABLE);
        pl_vr_reconfigure(q->vr, epoch, n, self, start, mono_ms());
    }
    if (op <= q->applied) {
        pl_log(PL_LOG_INFO, "snapshot at op %llu is not newer than our op %llu; dropped",
               (unsigned long long)op, (unsigned long long)q->applied);
        return;
    }
    fail_inflight(q, PL_ERR_UNAVAILABLE);
    pl_logcache_clear(q->ac); /* the log is another one from here on */
    /* Until the entries up to op are gone, a crash would leave them beside
     * a state that no longer comes from them: our log below the snapshot
     * may be another history (a deposed primary's unreplicated tail), and
     * entries at or below the applied op count as committed. "snap_op"
     * tells pl_seq_new to drop them. */
    if ((rc = q->sp->meta_set(q->st, "snap_op", op)) != PL_OK) {
        pl_log(PL_LOG_ERROR, "snapshot at op %llu not installed: %s", (unsigned long long)op,
               pl_strerror(rc));
        return;
    }
    rc = pl_snapshot_import(q->sp, q->st, snap, sl);
    pl_chat_forget(q->chat);   /* whatever the outcome, the state changed */
    if (rc != PL_OK) {
        pl_log(PL_LOG_ERROR, "installing the snapshot at op %llu failed: %s",
               (unsigned long long)op, pl_strerror(rc));
        return;
    }
    q->applied = op;
    q->need_apply = 0;
    /* The new state must be durable before the old log goes: a store that
     * syncs its state only at checkpoints would otherwise come back after a
     * crash with the old state and no log to replay it forward (found by the
     * fault suite: tests/fault/scenario_snapshot_crash.py). log_compact
     * promises exactly that durability (store.h). */
    if ((rc = q->sp->log_compact(q->st, op + 1)) != PL_OK)
        pl_log(PL_LOG_ERROR, "making the snapshot's state durable: %s", pl_strerror(rc));
    else if ((rc = q->sp->meta_set(q->st, "snap_op", 0)) != PL_OK)
        pl_log(PL_LOG_ERROR, "recording the snapshot install as done: %s", pl_strerror(rc));
    q->appended_bytes = 0;
    q->compact_to = 0;
    pl_log(PL_LOG_INFO, "installed a snapshot from server %u at op %llu (%llu bytes)",
           q->snap_from, (unsigned long long)op, (unsigned long long)q->snap_total);
    pl_vr_snapshot_installed(q->vr, q->snap_view, op, op_view, mono_ms());
}

void pl_seq_snapshot_chunk(pl_seq *q, uint32_t from, uint64_t view, uint64_t offset,
                           uint64_t total, const uint8_t *data, size_t len)
{
    const pl_vr *vr = q->vr;
    /* From the primary of our view, or from any replica of a newer epoch
     * (answering us as a replica of an older one). */
    int newer = PL_VR_EPOCH(view) > PL_VR_EPOCH(pl_vr_view(vr));
    if ((!newer && (view != pl_vr_view(vr) || from != pl_vr_primary(vr))) ||
        pl_vr_is_primary(vr) || total == 0 || total > PL_SNAPSHOT_MAX || offset > total ||
        len > total - offset)
        return;
    if (offset == 0) {
        snap_reset(q);
        q->snap_buf = malloc(total);
        if (!q->snap_buf) {
            pl_log(PL_LOG_ERROR, "snapshot of %llu bytes: out of memory", (unsigned long long)total);
            return;
        }
        q->snap_total = total;
        q->snap_from = from;
        q->snap_view = view;
    }
    if (!q->snap_buf || offset != q->snap_got || total != q->snap_total || from != q->snap_from)
        return; /* a chunk of another transfer, or one was lost: wait for a new one */
    memcpy(q->snap_buf + offset, data, len);
    q->snap_got += len;
    if (q->snap_got == q->snap_total) {
        snap_install(q);
        snap_reset(q);
    }
}

/* Drop the log prefix the store's state already holds, keeping keep_ops
 * entries below the applied op for cheap catch-up of slightly lagging
 * backups; anyone further behind gets a snapshot. */
static void maybe_compact(pl_seq *q)
{
    uint64_t ops = q->host.compact_ops ? q->host.compact_ops : PL_COMPACT_OPS_DEFAULT;
    uint64_t bytes = q->host.compact_bytes ? q->host.compact_bytes : PL_COMPACT_BYTES_DEFAULT;
    uint64_t keep = q->host.keep_ops ? q->host.keep_ops : PL_KEEP_OPS_DEFAULT;
    uint64_t first = 0, last = 0;
    if (q->applied <= keep || q->sp->log_bounds(q->st, &first, &last) != PL_OK || first == 0) {
        q->compact_to = 0;
        return;
    }
    if (!q->compact_to) {
        if (last - first + 1 <= ops && q->appended_bytes <= bytes)
            return;
        q->compact_to = q->applied - keep + 1;
        q->compact_steps = 0;
        q->compact_us = 0;
        q->appended_bytes = 0;
    }
    if (q->compact_to <= first) {
        q->compact_to = 0;
        return;
    }
    /* A round runs in steps of PL_COMPACT_STEP ops, one per tick, so the
     * loop never stalls for long: dropping 90,000 SQLite log rows at once
     * took ~90 ms, the whole p99.9 of a 10,000 sends/s run, and steps of
     * 8,192 rows ~10 ms each, eleven ticks in a row (round 5); 2,048 rows
     * take ~2-3 ms, and one step per tick still drops ~200,000 entries a
     * second, more than any load appends. A store whose
     * steps cost more than PL_COMPACT_STEP_US anyway, three in a row (the
     * JSON store rewrites its log file whatever the step), gets the rest of
     * each round in one call. */
    uint64_t before = q->compact_to;
    if (!q->compact_whole && before - first > PL_COMPACT_STEP)
        before = first + PL_COMPACT_STEP;
    uint64_t t0 = mono_us();
    int rc = q->sp->log_compact(q->st, before);
    uint64_t dt = mono_us() - t0;
    q->compact_steps++;
    q->compact_us += dt;
    q->compact_slow = dt > PL_COMPACT_STEP_US ? q->compact_slow + 1 : 0;
    if (q->compact_slow >= 3) /* not one noisy step: the store's steps are slow */
        q->compact_whole = 1;
    if (rc != PL_OK) {
        pl_log(PL_LOG_ERROR, "log compaction below op %llu: %s", (unsigned long long)before,
               pl_strerror(rc));
        q->compact_to = 0;
        return;
    }
    if (before >= q->compact_to) {
        pl_log(PL_LOG_INFO, "log compaction below op %llu: done (%u step%s, %.1f ms)",
               (unsigned long long)before, q->compact_steps, q->compact_steps == 1 ? "" : "s",
               (double)q->compact_us / 1000.0);
        q->compact_to = 0;
    }
}

static int io_truncate(void *ud, uint64_t after)
{
    pl_seq *q = ud;
    if (after < q->applied) {
        /* VR never cuts below its commit number, and we apply only committed
         * ops: this would be a protocol bug, and must not destroy state. */
        pl_log(PL_LOG_ERROR, "refusing to cut the log below applied op %llu (after %llu)",
               (unsigned long long)q->applied, (unsigned long long)after);
        return PL_ERR_INTERNAL;
    }
    int rc = q->sp->log_truncate(q->st, after);
    pl_logcache_cut(q->ac, after); /* whether or not it went through */
    return rc;
}

static int io_read(void *ud, uint64_t from, uint64_t to, pl_log_cb cb, void *cbud)
{
    pl_seq *q = ud;
    return q->sp->log_read(q->st, from, to, cb, cbud);
}

static int io_save(void *ud, const char *key, uint64_t val)
{
    pl_seq *q = ud;
    char k[32];
    snprintf(k, sizeof k, "vr_%s", key);
    return q->sp->meta_set(q->st, k, val);
}

static void io_send(void *ud, uint32_t to, const pl_vr_msg *m)
{
    pl_seq *q = ud;
    if (q->host.send)
        q->host.send(q->host.ud, to, m);
}

static void io_committed(void *ud, uint64_t commit)
{
    pl_seq *q = ud;
    /* A backup answers nobody, so it applies in chunks: on the next tick,
     * or once max_batch ops wait. Each store transaction rewrites the same
     * hot pages (the tables' last leaves, the counters, every recipient's
     * index leaf), so ten small commits cost several times one big one.
     * The ops are durable in its log meanwhile; becoming primary applies
     * at once (io_changed), and nothing is served from a state behind the
     * commit number (pl_seq_can_serve). */
    if (!pl_vr_is_primary(q->vr) && !q->fl_head && commit > q->applied &&
        commit - q->applied < q->max_batch) {
        q->apply_later = 1;
        return;
    }
    apply_now(q, commit);
    if (q->head)
        schedule(q, 0); /* the window may have room again */
}

/* Fail every in-flight op: after a view change nobody here can tell whether
 * it will commit. */
static void fail_inflight(pl_seq *q, int err)
{
    q->fail_gen++;
    while (q->fl_head) {
        seq_item *it = q->fl_head;
        q->fl_head = it->next;
        finish(q, it, err, 0, NULL);
    }
    q->fl_tail = NULL;
}

static int io_is_barrier(void *ud, const pl_log_entry *e)
{
    (void)ud;
    return pl_op_kind(e->data, e->len) == PL_OP_RECONFIG;
}

static void on_reconf(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_seq *q = arg;
    if (!q->reconf_pending)
        return;
    q->reconf_pending = 0;
    pl_vr_reconfigure(q->vr, q->reconf_epoch, q->reconf_n, q->reconf_self, q->reconf_op,
                      mono_ms());
    apply_now(q, pl_vr_commit(q->vr));
    if (q->head)
        schedule(q, 0);
}

static void io_changed(void *ud)
{
    pl_seq *q = ud;
    int primary = pl_vr_is_primary(q->vr);
    uint64_t view = pl_vr_view(q->vr);
    if (view != q->seen_view || !primary)
        fail_inflight(q, PL_ERR_UNAVAILABLE);
    if (primary != q->was_primary || view != q->seen_view)
        pl_log(PL_LOG_INFO, "%s in view %llu (primary: server %u)",
               primary ? "primary" : pl_vr_role(q->vr, mono_ms()),
               (unsigned long long)view, pl_vr_primary(q->vr));
    q->seen_view = view;
    q->was_primary = primary;
    if (primary && q->applied < pl_vr_commit(q->vr))
        apply_now(q, pl_vr_commit(q->vr));
    if (q->host.changed)
        q->host.changed(q->host.ud);
    if (q->head)
        schedule(q, 0);
}

/* ---- group commit ---- */

static void schedule(pl_seq *q, int now)
{
    if (q->scheduled || !q->head)
        return;
    q->scheduled = 1;
    if (now) {
        /* Runs after the callbacks already active in this loop iteration, so
         * every request read in this iteration joins the batch. */
        event_active(q->flush_ev, EV_TIMEOUT, 0);
    } else {
        /* A zero timer runs after the next poll for I/O, so a long queue is
         * committed in slices with other connections served in between. */
        static const struct timeval zero = { 0, 0 };
        event_add(q->flush_ev, &zero);
    }
}

static void fail_queued(pl_seq *q, int err)
{
    while (q->head) {
        seq_item *it = q->head;
        q->head = it->next;
        q->queued--;
        finish(q, it, err, 0, NULL);
    }
    q->tail = NULL;
}

/* Returns 1 when a batch was proposed (more may follow). */
static int flush_batch(pl_seq *q)
{
    if (!q->head)
        return 0;
    uint64_t now = mono_ms();
    if (q->need_apply) {
        char err[256];
        if (apply_upto(q, pl_vr_commit(q->vr), err, sizeof err) != PL_OK) {
            pl_log(PL_LOG_ERROR, "%s", err);
            fail_queued(q, PL_ERR_IO);
            return 0;
        }
    }
    if (!pl_vr_can_serve(q->vr, now)) {
        /* A backup, a view change, or a primary without its lease: the
         * request code answered most of these already; whatever slipped
         * through fails the same way. */
        int st = pl_vr_status(q->vr);
        fail_queued(q, st == PL_VR_NORMAL && !pl_vr_is_primary(q->vr) ? PL_ERR_NOT_PRIMARY
                                                                     : PL_ERR_UNAVAILABLE);
        return 0;
    }
    size_t n = 0, bytes = 0;
    for (seq_item *it = q->head; it && n < q->max_batch; it = it->next) {
        if (n && bytes + it->len > PL_SEQ_BATCH_BYTES)
            break;
        bytes += it->len;
        q->items[n++] = it;
        if (pl_op_kind(it->data, it->len) == PL_OP_RECONFIG)
            break; /* a membership change ends the epoch: nothing after it */
    }
    uint64_t first = pl_vr_op(q->vr) + 1;
    for (size_t i = 0; i < n; i++) {
        q->entries[i].op = first + i;
        q->entries[i].view = 0;
        q->entries[i].data = q->items[i]->data;
        q->entries[i].len = (uint32_t)q->items[i]->len;
    }
    /* Move them to the in-flight list before proposing: a single server
     * commits (and answers) inside pl_vr_propose. */
    seq_item *last = q->items[n - 1];
    q->head = last->next;
    if (!q->head)
        q->tail = NULL;
    last->next = NULL;
    q->queued -= (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        q->items[i]->op = first + i;
    seq_item *batch = q->items[0];
    if (q->fl_tail)
        q->fl_tail->next = batch;
    else
        q->fl_head = batch;
    q->fl_tail = last;
    q->seen_view = pl_vr_view(q->vr);

    uint64_t got = 0, gen = q->fail_gen;
    int rc = pl_vr_propose(q->vr, q->entries, n, &got, now);
    if (rc == PL_OK)
        return 1;
    if (gen != q->fail_gen)
        return 0; /* a view change inside propose already failed the batch */
    /* Not proposed: take the batch back off the in-flight list (it is its
     * tail; nothing of it can have been answered). */
    seq_item **pp = &q->fl_head;
    q->fl_tail = NULL;
    while (*pp && *pp != batch) {
        q->fl_tail = *pp;
        pp = &(*pp)->next;
    }
    *pp = NULL;
    if (rc == PL_ERR_BUSY) {
        /* The pipeline window is full: back to the queue, in order; a commit
         * reschedules us. */
        last->next = q->head;
        q->head = batch;
        if (!q->tail)
            q->tail = last;
        q->queued += (uint32_t)n;
        return 0;
    }
    pl_log(rc == PL_ERR_NOT_PRIMARY || rc == PL_ERR_UNAVAILABLE ? PL_LOG_DEBUG : PL_LOG_ERROR,
           "proposing ops %llu-%llu failed: %s", (unsigned long long)first,
           (unsigned long long)(first + n - 1), pl_strerror(rc));
    for (seq_item *it = batch, *next; it; it = next) {
        next = it->next;
        finish(q, it, rc, 0, NULL);
    }
    return 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_seq *q = arg;
    q->scheduled = 0;
    if (flush_batch(q))
        schedule(q, 0);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_seq *q = arg;
    pl_vr_tick(q->vr, mono_ms());
    if (q->need_apply || q->apply_later)
        apply_now(q, pl_vr_commit(q->vr));
    if (!q->need_apply && !q->applying)
        maybe_compact(q);
    /* A store that keeps its state transaction open across batches
     * commits it once it has waited long enough (store.h, minor 2). */
    if (q->host.store_minor >= 2 && !q->applying) {
        int rc = q->sp->state_flush(q->st);
        if (rc != PL_OK)
            pl_log(PL_LOG_ERROR, "committing the applied state: %s", pl_strerror(rc));
    }
    if (q->head)
        schedule(q, 0);
    if (q->host.tick)
        q->host.tick(q->host.ud);
}

/* ---- lifecycle ---- */

typedef struct barrier_scan {
    uint64_t found;
} barrier_scan;

static int barrier_cb(void *ud, const pl_log_entry *e)
{
    if (pl_op_kind(e->data, e->len) == PL_OP_RECONFIG)
        ((barrier_scan *)ud)->found = e->op;
    return 0;
}

/* The highest membership change in the log (after, last], or 0. */
static int find_barrier(pl_seq *q, uint64_t after, uint64_t last, uint64_t *out)
{
    barrier_scan b = { 0 };
    *out = 0;
    if (last <= after)
        return PL_OK;
    int rc = q->sp->log_read(q->st, after + 1, last, barrier_cb, &b);
    *out = b.found;
    return rc;
}

static int is_entry_barrier(pl_seq *q, uint64_t op)
{
    barrier_scan b = { 0 };
    if (op == 0 || q->sp->log_read(q->st, op, op, barrier_cb, &b) != PL_OK)
        return 0;
    return b.found == op;
}

static uint64_t meta_or_zero(pl_seq *q, const char *key)
{
    uint64_t v = 0;
    if (q->sp->meta_get(q->st, key, &v) != PL_OK)
        v = 0;
    return v;
}

pl_seq *pl_seq_new(struct event_base *base, const pl_store_plugin *sp, pl_store *st,
                   pl_chat *chat, uint32_t max_batch, const pl_seq_host *host,
                   char *err, size_t errlen)
{
    pl_seq *q = calloc(1, sizeof *q);
    if (!q)
        goto nomem;
    q->sync_efd = -1;
    q->base = base;
    q->sp = sp;
    q->st = st;
    q->chat = chat;
    if (host)
        q->host = *host;
    q->max_batch = max_batch ? max_batch : PL_SEQ_BATCH_DEFAULT;
    q->items = calloc(q->max_batch, sizeof *q->items);
    q->entries = calloc(q->max_batch, sizeof *q->entries);
    q->ops = calloc(q->max_batch, sizeof *q->ops);
    q->ids = calloc(q->max_batch, sizeof *q->ids);
    q->results = calloc(q->max_batch, sizeof *q->results);
    q->data = calloc(q->max_batch, sizeof *q->data);
    q->len = calloc(q->max_batch, sizeof *q->len);
    if (!q->items || !q->entries || !q->ops || !q->ids || !q->results || !q->data || !q->len)
        goto nomem;
    /* Without it (no memory) everything is read from the store. */
    q->ac = pl_logcache_new(PL_AC_ENTRIES, PL_AC_BYTES);
    const char *check = getenv("PARLEY_CHECK_APPLY_CACHE");
    q->ac_check = check && *check && strcmp(check, "0") != 0;
    q->flush_ev = event_new(base, -1, 0, on_flush, q);
    q->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, q);
    q->reconf_ev = event_new(base, -1, 0, on_reconf, q);
    if (!q->flush_ev || !q->tick_ev || !q->reconf_ev)
        goto nomem;

    q->async = q->host.store_minor >= 1;
    int rc;
    if (q->async) {
        /* What the log holds may be written and not synced (we stopped
         * before its sync, or crashed with the disk intact): VR takes
         * everything in it as durable, so make it so first. */
        if ((rc = sp->log_sync(st)) != PL_OK) {
            snprintf(err, errlen, "syncing the log: %s", pl_strerror(rc));
            goto fail;
        }
        if ((rc = sync_start(q, err, errlen)) != PL_OK)
            goto fail;
    }

    /* Durable replica state (the store) -> VR. */
    uint64_t first = 0, last = 0;
    rc = sp->log_bounds(st, &first, &last);
    if (rc != PL_OK) {
        snprintf(err, errlen, "reading the log bounds: %s", pl_strerror(rc));
        goto fail;
    }
    q->applied = sp->applied_op(st);
    uint64_t snap_op = meta_or_zero(q, "snap_op");
    if (snap_op) {
        /* We stopped while installing a snapshot (snap_install). If its
         * state made it, the log entries up to it may be another history:
         * drop them. If not, the log still belongs to the old state. */
        if (q->applied >= snap_op && first && first <= q->applied) {
            pl_log(PL_LOG_WARN, "an interrupted snapshot install at op %llu: dropping the log "
                   "up to it", (unsigned long long)q->applied);
            if ((rc = sp->log_compact(st, q->applied + 1)) != PL_OK ||
                (rc = sp->log_bounds(st, &first, &last)) != PL_OK) {
                snprintf(err, errlen, "dropping the log below an installed snapshot: %s",
                         pl_strerror(rc));
                goto fail;
            }
        }
        if ((rc = sp->meta_set(st, "snap_op", 0)) != PL_OK) {
            snprintf(err, errlen, "recording the snapshot install as done: %s", pl_strerror(rc));
            goto fail;
        }
    }
    if (last != 0 && last < q->applied) {
        /* A snapshot was installed and we stopped before its log was
         * cleared: every entry left is already in the state. */
        pl_log(PL_LOG_WARN, "the log ends at op %llu below the applied op %llu (an "
               "interrupted snapshot install): clearing it", (unsigned long long)last,
               (unsigned long long)q->applied);
        if ((rc = sp->log_truncate(st, 0)) != PL_OK) {
            snprintf(err, errlen, "clearing a stale log: %s", pl_strerror(rc));
            goto fail;
        }
        first = last = 0;
    }
    if (last > q->applied && first > q->applied + 1) {
        snprintf(err, errlen, "the log starts at op %llu but the store applied only op %llu",
                 (unsigned long long)first, (unsigned long long)q->applied);
        goto fail;
    }
    last_entry le = { 0 };
    if (last && (rc = sp->log_read(st, last, last, last_cb, &le)) != PL_OK) {
        snprintf(err, errlen, "reading log entry %llu: %s", (unsigned long long)last,
                 pl_strerror(rc));
        goto fail;
    }
    pl_vr_config single = { .n = 1, .self = 0 };
    const pl_vr_config *cfg = q->host.vr ? q->host.vr : &single;
    pl_vr_durable d = {
        .view = meta_or_zero(q, "vr_view"),
        .lnv = meta_or_zero(q, "vr_lnv"),
        .prepared = meta_or_zero(q, "vr_prepared"),
        .op = last ? last : q->applied,
        .op_view = le.view,
        /* Alone, every op in the log was committed when it was appended; in
         * a cluster only what was applied is known committed. */
        .commit = cfg->n == 1 ? (last ? last : q->applied) : q->applied,
    };
    if (d.lnv > d.view)
        d.view = d.lnv;
    /* Membership (core/members.h): the epoch in force and the op that
     * started it come from membership.json; a barrier above that op in the
     * log (a membership change proposed, perhaps committed, not yet
     * applied) still blocks new proposals after a restart. */
    d.epoch_start = q->host.epoch_start;
    if ((rc = find_barrier(q, d.epoch_start > q->applied ? d.epoch_start : q->applied, last,
                           &d.barrier)) != PL_OK) {
        snprintf(err, errlen, "reading the log for membership changes: %s", pl_strerror(rc));
        goto fail;
    }
    if (q->host.epoch > PL_VR_EPOCH(d.view)) {
        /* membership.json was written for a change being applied when we
         * stopped, before VR entered its epoch. If that change is the entry
         * at its op in our log, it is committed (it was being applied) and
         * so is everything below it; otherwise the file came with a
         * snapshot we did not finish installing, and we hold nothing of the
         * new epoch: join it as a recovering replica. */
        d.view = PL_VR_EPOCH_VIEW(q->host.epoch);
        if (is_entry_barrier(q, d.epoch_start) && d.epoch_start <= d.op) {
            if (d.commit < d.epoch_start)
                d.commit = d.epoch_start;
            if (d.op == d.epoch_start)
                d.lnv = d.view;
        }
        pl_log(PL_LOG_INFO, "entering membership epoch %llu (op %llu) interrupted by a stop: "
               "resuming it", (unsigned long long)q->host.epoch,
               (unsigned long long)d.epoch_start);
    }
    pl_vr_io io = { q, io_append, io_truncate, io_read, io_save, io_send, io_committed,
                    io_changed, io_log_first, io_need_snapshot, io_is_barrier,
                    q->async ? io_append_async : NULL, q->async ? io_flush : NULL };
    q->vr = pl_vr_new(cfg, &io, &d, mono_ms());
    if (!q->vr) {
        snprintf(err, errlen, "replication: bad configuration (%u servers, self %u)", cfg->n,
                 cfg->self);
        goto fail;
    }
    q->seen_view = pl_vr_view(q->vr);
    q->was_primary = pl_vr_is_primary(q->vr);
    struct timeval tick = { 0, PL_SEQ_TICK_MS * 1000 };
    event_add(q->tick_ev, &tick);
    return q;
nomem:
    snprintf(err, errlen, "sequencer: out of memory");
fail:
    pl_seq_free(q);
    return NULL;
}

int pl_seq_replay(pl_seq *q, char *err, size_t errlen)
{
    uint64_t before = q->applied;
    int rc = apply_upto(q, pl_vr_commit(q->vr), err, errlen);
    if (rc == PL_OK && q->applied > before)
        pl_log(PL_LOG_INFO, "replayed ops %llu-%llu from the log",
               (unsigned long long)(before + 1), (unsigned long long)q->applied);
    return rc;
}

int pl_seq_submit(pl_seq *q, const pl_op *op, pl_seq_done_fn done, void *ud)
{
    seq_item *it = calloc(1, sizeof *it);
    if (!it)
        return PL_ERR_NOMEM;
    int rc = pl_op_encode(op, &it->data, &it->len);
    if (rc != PL_OK) {
        free(it);
        return rc;
    }
    if (it->len > UINT32_MAX) {
        item_free(it);
        return PL_ERR_INVALID;
    }
    it->done = done;
    it->ud = ud;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->queued++;
    q->pending++;
    schedule(q, 1);
    return PL_OK;
}

void pl_seq_receive(pl_seq *q, const pl_vr_msg *m)
{
    pl_vr_receive(q->vr, m, mono_ms());
}

const pl_vr *pl_seq_vr(const pl_seq *q)
{
    return q->vr;
}

int pl_seq_can_serve(const pl_seq *q)
{
    /* Reads come from the applied state: it must hold every committed op. */
    return pl_vr_can_serve(q->vr, mono_ms()) && q->applied >= pl_vr_commit(q->vr);
}

uint32_t pl_seq_pending(const pl_seq *q)
{
    return q->pending;
}

uint64_t pl_seq_last_op(const pl_seq *q)
{
    return pl_vr_op(q->vr);
}

uint64_t pl_seq_view(const pl_seq *q)
{
    return pl_vr_view(q->vr);
}

void pl_seq_set_learners(pl_seq *q, uint32_t count)
{
    pl_vr_set_learners(q->vr, count);
}

void pl_seq_free(pl_seq *q)
{
    if (!q)
        return;
    /* Commit what is queued when that can finish here and now (a single
     * server): those clients were promised an answer. In a cluster a commit
     * needs the network, which is going away: fail them, the clients retry
     * elsewhere with the same request numbers. */
    sync_stop(q);
    if (q->vr && pl_vr_n(q->vr) == 1 && pl_vr_is_member(q->vr)) {
        for (;;) {
            while (q->head && flush_batch(q))
                ;
            /* with the sync thread gone, sync here: what is in flight
             * commits, and the window opens for what is still queued */
            if (!q->async || pl_vr_synced_op(q->vr) >= pl_vr_op(q->vr) || io_flush(q) != PL_OK)
                break;
            pl_vr_synced(q->vr, pl_vr_op(q->vr), pl_vr_log_gen(q->vr), mono_ms());
        }
    }
    fail_queued(q, PL_ERR_UNAVAILABLE);
    fail_inflight(q, PL_ERR_UNAVAILABLE);
    if (q->flush_ev)
        event_free(q->flush_ev);
    if (q->tick_ev)
        event_free(q->tick_ev);
    if (q->reconf_ev)
        event_free(q->reconf_ev);
    pl_vr_free(q->vr);
    if (q->sync_init) {
        pthread_mutex_destroy(&q->sync_mu);
        pthread_mutex_destroy(&q->run_mu);
        pthread_cond_destroy(&q->sync_cv);
    }
    snap_reset(q);
    free(q->items);
    free(q->entries);
    free(q->ops);
    free(q->ids);
    free(q->results);
    pl_logcache_free(q->ac);
    free(q->data);
    free(q->len);
    free(q);
}
