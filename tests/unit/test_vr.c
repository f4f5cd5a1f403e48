/*
 * tests/unit/test_vr.c — the VR module in a simulated cluster: N replicas in
 * one process, an in-memory durable log per replica, a message network with
 * delays, drops and partitions, crashes that keep only durable state, and a
 * simulated clock (the canonical/raft fixture idea). Randomized runs check
 * the invariants of DESIGN.md §6 (docs/guarantees.md) as they go:
 *   I1 an op committed anywhere is in every replica's log at the same
 *      op-number once the cluster has healed and settled;
 *   I2 no two replicas ever commit different ops at the same op-number;
 *   I3 no read is answered from a state that misses an op committed (and
 *      so visible to some client) before the read began: whenever a replica
 *      may serve, its applied state holds every op any serving replica
 *      applied before.
 *
 * Seeds and the fault mix (docs/guarantees.md). Every randomized case runs
 * a fixed list of seeds plus the seeds that once failed; VRSIM_SEED=S
 * VRSIM_SEEDS=N runs seeds S..S+N-1 instead, in any of them (CK_RUN_CASE=
 * random3, random5, random-even, membership picks one). A seed fixes the
 * whole run, including its fault mix: with VRSIM_MIX=swarm (the default
 * for VRSIM_SEED) each seed draws its own probabilities of crashes,
 * restarts, pauses, isolation, one-way cuts, drops, duplication, delay
 * spread (reordering), crashes in the middle of a durable write (a prefix
 * of a multi-entry append survives) and each replica's clock rate within
 * PL_VR_CLOCK_DRIFT_PPM; VRSIM_MIX=classic is the fixed mix the older
 * seeds were found with. A failure prints the one command that replays it.
 * VRSIM_FRESH_S=T spends T seconds on seeds drawn from the clock, across
 * all randomized cases (CI does, so each run looks somewhere new).
 *
 * Membership changes (issue 9) run the way core/seq.c and core/peer.c do:
 * servers have fixed global ids; each has a durable membership (epoch,
 * ordered ids, start op) and, as primary, a learner table; the network maps
 * slots to servers and back per replica (unknown senders are dropped). A
 * committed barrier entry "R<epoch>:<ids>" is made durable when applied and
 * VR enters the epoch at the next step; a driver plays the sequencer
 * (learners first, then the barrier alone).
 *
 * VRSIM_DEBUG=1 traces faults and milestones, 2 every state change, 3 every
 * message delivered; VRSIM_DRIFT_PPM=X lets clocks drift beyond the lease
 * bound (to check the checker).
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "vr.h"

#define MAXN 7
#define MAXOPS 20000
#define NOID UINT32_MAX

typedef struct entry {
    uint64_t view;
    char data[24];
} entry;

/* A membership as the server keeps it (core/members.h): an epoch, the
 * voting servers by global id in priority order, and the op whose commit
 * started the epoch. */
typedef struct membership {
    uint64_t epoch;
    uint64_t start_op;
    uint32_t n;
    uint32_t ids[MAXN];
} membership;

typedef struct replica {
    int exists; /* started at least once (a joining server exists from its join) */
    int up;
    pl_vr *vr;
    entry *log; /* log[1..nlog] */
    uint64_t nlog;
    uint64_t view, lnv, prepared; /* durable meta */
    uint64_t applied;   /* what committed() has applied (durable: the store) */
    membership mem;     /* durable: membership.json */
    /* volatile, like the peer layer's learner slots on a primary */
    uint32_t learners[MAXN];
    uint32_t n_learners;
    uint64_t learners_for;    /* epoch the learner table was set up for */
    int reconf_pending;       /* applied a barrier, VR not yet reconfigured */
    int was_member;           /* a member of some epoch it entered */
    uint64_t removed_epoch;   /* epoch in which it learned it was removed */
    /* faults */
    int dying;                /* crashed inside a durable write: nothing more happens */
    uint64_t paused_until;    /* paused (SIGSTOP): no ticks, messages wait */
    /* The log written without a sync (io.append_async, as core/seq.c does
     * with a store of ABI minor 1): log[1..durable] survives a crash, the
     * rest only as a random prefix. The applied state is not synced either:
     * like SQLite's WAL, a crash keeps a prefix of the writes in the order
     * they were made, so the state comes back at some applied op between
     * the one the last sync covered (applied_dur) and the one the kept log
     * reaches. Syncs finish 0-20 ms after the append that asked, possibly
     * out of order. */
    int async;
    uint64_t durable, applied_dur;
    struct { uint64_t covers, cap, gen, due, applied; } sync[64];
    uint32_t nsync;
    int sync_stuck;           /* its syncs do not finish (a slow disk) */
    int lose_unsynced;        /* a crash loses every unsynced entry */
    int64_t clock_ppm;        /* its clock runs this much fast (or slow) */
    uint64_t clock_base;      /* its clock at simulated time 0 */
} replica;

/* The fault mix of a run. */
typedef struct mix {
    int swarm;               /* 0: the classic mix, whose seeds replay exactly */
    unsigned crash, restart, isolate, cut, heal, drop_change, pause; /* per mille of steps */
    unsigned drop_max;       /* a drop rate is drawn up to this, percent */
    unsigned delay_max;      /* messages take 1..delay_max ms (spread = reordering) */
    unsigned dup;            /* percent of messages delivered twice */
    unsigned io_crash;       /* per 100,000 durable writes: crash inside it */
    unsigned drift_ppm;      /* clock rates within +-drift_ppm of real time */
    int over_f;              /* crashes may take more than f replicas down */
} mix;

typedef struct msg {
    uint64_t deliver_at;
    uint32_t to;   /* global ids */
    uint32_t from;
    pl_vr_msg m;
    pl_log_entry *e;
    struct msg *next;
} msg;

typedef struct sim {
    uint32_t n;            /* replicas in the universe (global ids 0..n-1) */
    replica r[MAXN];
    msg *queue;
    uint64_t queued;       /* messages in flight */
    uint64_t now;
    unsigned seed, seed0;
    int cut[MAXN][MAXN];   /* 1 = link i->j drops everything (global ids) */
    uint32_t deaf[MAXN];   /* message types replica g never receives (bit per type) */
    int drop_pct;
    char (*committed)[24];  /* first commit seen per op (committed_ops) */
    uint64_t max_committed;
    uint64_t proposals, acked;
    membership initial;    /* epoch 0: the config file's servers */
    /* the membership changes to make, in order, and the next one */
    membership plan[8];
    uint32_t n_plan, plan_next;
    int crash_after_barrier_pct; /* crash a replica right after it applies a barrier */
    int crash_before_reconf_pct; /* ... or between applying it and entering the epoch */
    int crash_after_propose_pct; /* crash or isolate the primary that proposed one */
    uint64_t barriers_proposed;
    uint64_t plan_gap_ms;        /* steady traffic between two changes */
    uint64_t plan_after_ms;      /* no change starts before this */
    int membership;              /* a membership run: may_crash decides who may crash */
    mix mx;
    uint64_t max_seen;           /* I3: highest op a serving replica applied */
    int async_mode;              /* 0 every append syncs, 1 none does, 2 some replicas */
    char failure[512];
} sim;

static sim *S;

/* Check's ck_assert writes to a pipe on every call, passing or not; the
 * simulation checks thousands of things per seed, so it asks Check only
 * when one fails. */
#define SIM_ASSERT(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond))                                                           \
            ck_abort_msg(__VA_ARGS__);                                         \
    } while (0)

/* Big arrays kept from one run to the next: allocating and zeroing them
 * per seed was half the cost of a sweep. Logs are read only up to their
 * length; committed_ops is cleared up to the highest op a run set. */
static entry *log_store[MAXN];
static char committed_ops[MAXOPS][24];

/* What the runs exercised (printed with VRSIM_DEBUG=1). */
static struct {
    unsigned long epoch_state, crash_after, crash_before, barriers, restarts_mid_epoch;
    unsigned long io_crashes, pauses, dups;
} stats;

/* The command that replays the current run (set by each randomized case). */
static const char *prog = "build/tests/unit/test-vr";
static const char *cur_case = "";

static int force_sync;
static int force_async; /* every replica's log is asynchronous (fixed scenarios) */

static const char *replay(void)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "replay: VRSIM_SEED=%u VRSIM_SEEDS=1 VRSIM_MIX=%s%s CK_RUN_CASE=%s %s",
             S ? S->seed0 : 0, S && S->mx.swarm ? "swarm" : "classic",
             force_sync ? " VRSIM_FORCE_SYNC=1" : "", cur_case, prog);
    return buf;
}

static int debug_level(void)
{
    static int level = -1;
    if (level < 0)
        level = getenv("VRSIM_DEBUG") ? atoi(getenv("VRSIM_DEBUG")) : 0;
    return level;
}

/* VRSIM_DEBUG=1: faults and protocol milestones; 2: every state change;
 * 3: every message delivered. */
static void trace(int level, const char *fmt, ...) PL_PRINTF(2, 3);
static void trace(int level, const char *fmt, ...)
{
    if (debug_level() < level)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "t=%llu ", (unsigned long long)S->now);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static unsigned rnd(void)
{
    S->seed = S->seed * 1103515245u + 12345u;
    return (S->seed >> 16) & 0x7fff;
}

static void sim_fail(const char *fmt, unsigned long long a, unsigned long long b)
{
    if (!S->failure[0])
        snprintf(S->failure, sizeof S->failure, fmt, a, b);
}

/* ---- membership and the slot tables of the peer layer ---- */

static int mem_index(const membership *m, uint32_t g)
{
    for (uint32_t i = 0; i < m->n; i++)
        if (m->ids[i] == g)
            return (int)i;
    return -1;
}

/* Replica g's slot for global id x: its member index, else a learner slot
 * after the members, else (itself, not a member) the slot after them. */
static uint32_t slot_of(uint32_t g, uint32_t x)
{
    const replica *r = &S->r[g];
    int i = mem_index(&r->mem, x);
    if (i >= 0)
        return (uint32_t)i;
    for (uint32_t k = 0; k < r->n_learners; k++)
        if (r->learners[k] == x)
            return r->mem.n + k;
    if (x == g)
        return r->mem.n;
    return NOID;
}

static uint32_t global_of(uint32_t g, uint32_t slot)
{
    const replica *r = &S->r[g];
    if (slot < r->mem.n)
        return r->mem.ids[slot];
    if (slot - r->mem.n < r->n_learners)
        return r->learners[slot - r->mem.n];
    if (slot == r->mem.n && mem_index(&r->mem, g) < 0)
        return g;
    return NOID;
}

/* Barrier entries: "R<epoch>:<ids>", e.g. "R2:0134". */
static int parse_barrier(const char *d, uint64_t op, membership *out)
{
    if (d[0] != 'R')
        return -1;
    char *end;
    unsigned long long e = strtoull(d + 1, &end, 10);
    if (*end != ':')
        return -1;
    memset(out, 0, sizeof *out);
    out->epoch = e;
    out->start_op = op;
    for (const char *p = end + 1; *p && out->n < MAXN; p++)
        out->ids[out->n++] = (uint32_t)(*p - '0');
    return 0;
}

static void format_barrier(const membership *m, char *buf, size_t len)
{
    int k = snprintf(buf, len, "R%llu:", (unsigned long long)m->epoch);
    for (uint32_t i = 0; i < m->n && (size_t)k + 1 < len; i++)
        buf[k++] = (char)('0' + m->ids[i]);
    buf[k] = 0;
}

/* ---- clocks and crash points ---- */

/* Replica g's clock: its own start and rate (monotonic, like CLOCK_MONOTONIC,
 * and it keeps running while the replica is down or paused). */
static uint64_t lnow(uint32_t g)
{
    const replica *r = &S->r[g];
    return r->clock_base + S->now + (uint64_t)((int64_t)S->now * r->clock_ppm / 1000000);
}

static int can_crash(uint32_t g);

/* A durable write is a crash point: with the mix's io_crash rate the
 * replica dies inside it. Nothing it does after that happens: further
 * writes fail, sends vanish, and the driver crashes it once VR returns. */
static int io_crash_here(uint32_t g)
{
    if (!S->mx.io_crash)
        return 0;
    unsigned x = (rnd() << 15 | rnd()) % 100000u;
    if (x >= S->mx.io_crash || !can_crash(g))
        return 0;
    S->r[g].dying = 1;
    stats.io_crashes++;
    trace(1, "CRASH %u inside a durable write", g);
    return 1;
}

/* ---- io callbacks; ud is the replica's global id ---- */

/* Write entries to g's log; a crash inside the write (the mix's io_crash
 * rate) keeps a prefix of them. Returns PL_OK or an error to hand VR. */
static int log_write(uint32_t g, const pl_log_entry *e, size_t n)
{
    replica *r = &S->r[g];
    if (r->dying)
        return PL_ERR_IO;
    if (io_crash_here(g))
        n = n ? rnd() % n : 0; /* a prefix of the entries made it */
    for (size_t i = 0; i < n; i++) {
        if (e[i].op != r->nlog + 1) {
            sim_fail("append out of order: op %llu after %llu", (unsigned long long)e[i].op, (unsigned long long)r->nlog);
            return PL_ERR_INVALID;
        }
        if (e[i].op >= MAXOPS)
            return PL_ERR_IO;
        r->nlog++;
        r->log[r->nlog].view = e[i].view;
        memset(r->log[r->nlog].data, 0, sizeof r->log[r->nlog].data);
        memcpy(r->log[r->nlog].data, e[i].data, e[i].len < 23 ? e[i].len : 23);
    }
    return r->dying ? PL_ERR_IO : PL_OK;
}

static int io_append(void *ud, const pl_log_entry *e, size_t n)
{
    replica *r = &S->r[(uintptr_t)ud];
    int rc = log_write((uint32_t)(uintptr_t)ud, e, n);
    if (rc != PL_OK)
        return rc; /* failed, or died inside it: its sync never finished */
    r->durable = r->nlog; /* a synced append makes all before it durable too */
    r->applied_dur = r->applied;
    return PL_OK;
}

static int io_append_async(void *ud, const pl_log_entry *e, size_t n)
{
    uint32_t g = (uint32_t)(uintptr_t)ud;
    replica *r = &S->r[g];
    int rc = log_write(g, e, n);
    if (rc != PL_OK)
        return rc;
    /* the sync thread's request; a full queue folds into its newest */
    uint32_t k = r->nsync < 64 ? r->nsync++ : 63;
    r->sync[k].covers = r->sync[k].cap = r->nlog;
    r->sync[k].gen = pl_vr_log_gen(r->vr);
    r->sync[k].due = S->now + 10 * (rnd() % 3);
    r->sync[k].applied = r->applied;
    return PL_OK;
}

static int io_flush(void *ud)
{
    replica *r = &S->r[(uintptr_t)ud];
    if (r->dying)
        return PL_ERR_IO;
    if (io_crash_here((uint32_t)(uintptr_t)ud) && rnd() % 2)
        return PL_ERR_IO;
    r->durable = r->nlog;
    r->applied_dur = r->applied;
    return r->dying ? PL_ERR_IO : PL_OK;
}

static int io_truncate(void *ud, uint64_t after)
{
    replica *r = &S->r[(uintptr_t)ud];
    if (r->dying)
        return PL_ERR_IO;
    if (after < r->applied)
        sim_fail("truncate below applied: after %llu applied %llu", (unsigned long long)after, (unsigned long long)r->applied);
    /* a crash before or after the cut */
    if (io_crash_here((uint32_t)(uintptr_t)ud) && rnd() % 2)
        return PL_ERR_IO;
    if (after < r->nlog)
        trace(1, "replica %u truncates after %llu (log %llu, applied %llu)", (unsigned)(uintptr_t)ud,
              (unsigned long long)after, (unsigned long long)r->nlog,
              (unsigned long long)r->applied);
    if (after < r->nlog)
        r->nlog = after;
    /* the cut is synced, and with it everything before it; a sync still
     * running covers only entries up to the cut */
    r->durable = r->nlog;
    r->applied_dur = r->applied;
    for (uint32_t k = 0; k < r->nsync; k++)
        if (r->sync[k].cap > r->nlog)
            r->sync[k].cap = r->nlog;
    return r->dying ? PL_ERR_IO : PL_OK;
}

static int io_read(void *ud, uint64_t from, uint64_t to, pl_log_cb cb, void *cbud)
{
    replica *r = &S->r[(uintptr_t)ud];
    for (uint64_t op = from; op <= to && op <= r->nlog; op++) {
        pl_log_entry e = { op, r->log[op].view, (const uint8_t *)r->log[op].data,
                           (uint32_t)strlen(r->log[op].data) };
        if (cb(cbud, &e))
            break;
    }
    return PL_OK;
}

static int io_save(void *ud, const char *key, uint64_t val)
{
    replica *r = &S->r[(uintptr_t)ud];
    if (r->dying)
        return PL_ERR_IO;
    if (io_crash_here((uint32_t)(uintptr_t)ud) && rnd() % 2)
        return PL_ERR_IO;
    if (!strcmp(key, "view"))
        r->view = val;
    else if (!strcmp(key, "lnv"))
        r->lnv = val;
    else if (!strcmp(key, "prepared"))
        r->prepared = val;
    return r->dying ? PL_ERR_IO : PL_OK;
}

static void enqueue(uint32_t from, uint32_t g, const pl_vr_msg *m, uint64_t delay)
{
    msg *q = calloc(1, sizeof *q);
    q->to = g;
    q->from = from;
    q->m = *m;
    q->deliver_at = S->now + delay;
    if (m->n_entries) {
        q->e = calloc(m->n_entries, sizeof *q->e);
        for (uint32_t i = 0; i < m->n_entries; i++) {
            q->e[i] = m->entries[i];
            uint8_t *d = malloc(m->entries[i].len + 1);
            memcpy(d, m->entries[i].data, m->entries[i].len);
            q->e[i].data = d;
        }
    }
    q->m.entries = q->e;
    q->next = S->queue;
    S->queue = q;
    /* A protocol that answers messages with more messages than it got
     * (a request chain per duplicate, say) floods the network. */
    if (++S->queued > 100000)
        sim_fail("message storm: %llu messages in flight (%llu)", (unsigned long long)S->queued, 0);
}

static void io_send(void *ud, uint32_t to, const pl_vr_msg *m)
{
    uint32_t from = (uint32_t)(uintptr_t)ud;
    uint32_t g = global_of(from, to); /* the peer layer: slot -> server */
    if (g == NOID || g >= S->n || S->r[from].dying)
        return;
    if (m->type == PL_VR_PREPARE_OK && m->op > S->r[from].durable)
        sim_fail("PREPARE-OK for op %llu, durable only to %llu", (unsigned long long)m->op,
                 (unsigned long long)S->r[from].durable);
    if (S->cut[from][g] || (S->drop_pct && (int)(rnd() % 100) < S->drop_pct))
        return;
    if (!S->mx.swarm) {
        enqueue(from, g, m, 1 + rnd() % 30);
        return;
    }
    enqueue(from, g, m, 1 + rnd() % S->mx.delay_max);
    if (S->mx.dup && rnd() % 100 < S->mx.dup) {
        stats.dups++;
        enqueue(from, g, m, 1 + rnd() % S->mx.delay_max);
    }
}

/* Apply committed ops in order, like core/seq.c: a barrier entry of a newer
 * epoch is made durable (membership.json, the peer slot table) as it is
 * applied, and applying stops after it until VR has entered the epoch. */
static void io_committed(void *ud, uint64_t commit)
{
    uint32_t i = (uint32_t)(uintptr_t)ud;
    replica *r = &S->r[i];
    if (r->dying)
        return; /* it never got to apply */
    if (commit > r->nlog) {
        sim_fail("commit %llu beyond log %llu", (unsigned long long)commit, (unsigned long long)r->nlog);
        return;
    }
    if (r->reconf_pending)
        return;
    for (uint64_t op = r->applied + 1; op <= commit; op++) {
        if (S->committed[op][0] == 0) {
            memcpy(S->committed[op], r->log[op].data, 24);
        } else if (strcmp(S->committed[op], r->log[op].data) != 0) {
            if (!S->failure[0])
                trace(1, "I2: replica %u applies %s (view %llx) at op %llu, committed was %s", i,
                      r->log[op].data, (unsigned long long)r->log[op].view,
                      (unsigned long long)op, S->committed[op]);
            sim_fail("I2 violated: two different ops committed at op %llu (replica %llu)",
                     (unsigned long long)op, i);
        }
        if (op > S->max_committed)
            S->max_committed = op;
        r->applied = op;
        membership m;
        if (parse_barrier(r->log[op].data, op, &m) == 0) {
            /* core/seq.c syncs the log before membership.json names the
             * new epoch: a restart must find the barrier behind it */
            r->durable = r->nlog;
            r->applied_dur = op;
            if (m.epoch != r->mem.epoch + 1)
                sim_fail("barrier of epoch %llu applied in epoch %llu", (unsigned long long)m.epoch,
                         (unsigned long long)r->mem.epoch);
            r->mem = m;
            r->n_learners = 0;
            r->learners_for = 0;
            r->reconf_pending = 1;
            return;
        }
    }
}

static void io_changed(void *ud)
{
    (void)ud;
}

static int io_is_barrier(void *ud, const pl_log_entry *e)
{
    (void)ud;
    return e->len > 0 && e->data[0] == 'R';
}

/* A server that was a member and is not in the membership it entered
 * learned it was removed (the server logs it and stops taking part). */
static void note_removed(uint32_t g)
{
    replica *r = &S->r[g];
    if (mem_index(&r->mem, g) >= 0)
        r->was_member = 1;
    else if (r->was_member && !r->removed_epoch)
        r->removed_epoch = r->mem.epoch;
}

static void crash(uint32_t i);
static int settle(uint32_t g);

static void start_replica(uint32_t i)
{
    replica *r = &S->r[i];
    const membership *m = &r->mem;
    pl_vr_config cfg = { .n = m->n, .self = slot_of(i, i), .election_timeout_ms = 300,
                         .heartbeat_ms = 30, .failback = true, .max_batch = 16,
                         .window = 256 };
    pl_vr_io io = { (void *)(uintptr_t)i, io_append, io_truncate, io_read, io_save,
                    io_send, io_committed, io_changed, NULL, NULL, io_is_barrier,
                    r->async ? io_append_async : NULL, r->async ? io_flush : NULL };
    r->durable = r->nlog; /* the server syncs its log before it starts VR */
    r->applied_dur = r->applied;
    r->nsync = 0;
    pl_vr_durable d = { r->view, r->lnv, r->nlog, r->nlog ? r->log[r->nlog].view : 0,
                        r->applied, m->start_op, 0, r->prepared };
    for (uint64_t op = (m->start_op > r->applied ? m->start_op : r->applied) + 1; op <= r->nlog; op++)
        if (r->log[op].data[0] == 'R')
            d.barrier = op;
    if (m->epoch > PL_VR_EPOCH(d.view)) {
        /* stopped between applying a barrier and entering its epoch: resume
         * it the way core/seq.c does */
        d.view = PL_VR_EPOCH_VIEW(m->epoch);
        stats.restarts_mid_epoch++;
        if (m->start_op && m->start_op <= d.op && r->log[m->start_op].data[0] == 'R') {
            if (d.commit < m->start_op)
                d.commit = m->start_op;
            if (d.op == m->start_op)
                d.lnv = d.view;
        }
    }
    r->n_learners = 0;
    r->learners_for = 0;
    r->reconf_pending = 0;
    r->paused_until = 0;
    r->vr = pl_vr_new(&cfg, &io, &d, lnow(i));
    if (!r->vr) {
        if (r->dying) { /* crashed again while starting */
            r->dying = 0;
            return;
        }
        sim_fail("pl_vr_new refused replica %llu (n %llu)", i, m->n);
        return;
    }
    if (r->dying) {
        r->up = 1;
        r->exists = 1;
        crash(i);
        return;
    }
    r->up = 1;
    r->exists = 1;
    settle(i);
    note_removed(i);
    if ((mem_index(m, i) >= 0) != pl_vr_is_member(r->vr))
        sim_fail("replica %llu: pl_vr_is_member wrong at restart in epoch %llu", i, m->epoch);
    if (r->applied < pl_vr_commit(r->vr))
        io_committed((void *)(uintptr_t)i, pl_vr_commit(r->vr));
}

static void crash(uint32_t i)
{
    replica *r = &S->r[i];
    if (!r->up)
        return;
    if (r->async) {
        uint64_t keep = r->durable;
        if (r->nlog > keep) {
            uint64_t n = r->lose_unsynced ? keep : keep + rnd() % (r->nlog - keep + 1);
            trace(1, "CRASH %u loses its unsynced log %llu-%llu", i,
                  (unsigned long long)n + 1, (unsigned long long)r->nlog);
            r->nlog = n;
        }
        uint64_t amax = r->applied < r->nlog ? r->applied : r->nlog;
        uint64_t amin = r->applied_dur < amax ? r->applied_dur : amax;
        uint64_t a = amax > amin && !r->lose_unsynced ? amin + rnd() % (amax - amin + 1) : amin;
        if (a < r->applied)
            trace(1, "CRASH %u loses its unsynced state %llu-%llu", i, (unsigned long long)a + 1,
                  (unsigned long long)r->applied);
        r->applied = a;
        r->nsync = 0;
    }
    pl_vr_free(r->vr);
    r->vr = NULL;
    r->up = 0;
    r->dying = 0;
    r->paused_until = 0;
    r->n_learners = 0;
    r->learners_for = 0;
    r->reconf_pending = 0;
}

/* How many of membership m's servers are down, counting x as down too. */
static uint32_t down_in(const membership *m, uint32_t x)
{
    uint32_t down = 0;
    for (uint32_t k = 0; k < m->n; k++)
        down += !S->r[m->ids[k]].up || m->ids[k] == x;
    return down;
}

/* May replica x crash and leave at most f of each membership that matters
 * now down (the newest any replica has entered, and the one being made)? */
static int may_crash(uint32_t x)
{
    const membership *newest = &S->initial;
    for (uint32_t g = 0; g < S->n; g++)
        if (S->r[g].exists && S->r[g].mem.epoch > newest->epoch)
            newest = &S->r[g].mem;
    if (down_in(newest, x) > (newest->n - 1) / 2)
        return 0;
    if (S->plan_next < S->n_plan) {
        const membership *t = &S->plan[S->plan_next];
        if (down_in(t, x) > (t->n - 1) / 2)
            return 0;
    }
    return 1;
}

/* May g crash now under the run's rules? */
static int can_crash(uint32_t g)
{
    if (!S->r[g].up)
        return 0;
    if (S->mx.over_f)
        return 1;
    if (S->membership)
        return may_crash(g);
    uint32_t down = 0;
    for (uint32_t i = 0; i < S->n; i++)
        down += !S->r[i].up;
    return down < (S->n - 1) / 2;
}

/* After every call into VR: a replica that died inside a durable write is
 * gone. Returns 1 when g is still up. */
static int settle(uint32_t g)
{
    replica *r = &S->r[g];
    if (r->up && r->dying)
        crash(g);
    /* VR never acts on a view or last normal view that a crash would take
     * back: what it runs with is what its disk says */
    if (r->up && (r->view != pl_vr_view(r->vr) || r->lnv != pl_vr_lnv(r->vr)))
        sim_fail("view %llx / last normal view %llx in memory are not durable",
                 (unsigned long long)pl_vr_view(r->vr), (unsigned long long)pl_vr_lnv(r->vr));
    /* nor on log entries a crash would take back */
    if (r->up && pl_vr_synced_op(r->vr) > r->durable)
        sim_fail("VR counts the log durable to op %llu; the disk holds %llu",
                 (unsigned long long)pl_vr_synced_op(r->vr), (unsigned long long)r->durable);
    return r->up;
}

static int paused(uint32_t g)
{
    return S->r[g].paused_until > S->now;
}

/* I3, checked after every event: a replica that may serve now (its lease
 * holds and it has applied all it knows committed, as core/seq.c requires)
 * answers reads from its applied state, which must hold every op a
 * serving replica applied before. */
static void dump(void);

static void check_reads(void)
{
    uint64_t seen = S->max_seen;
    for (uint32_t g = 0; g < S->n; g++) {
        replica *r = &S->r[g];
        if (!r->up || paused(g) || !pl_vr_can_serve(r->vr, lnow(g)) ||
            r->applied < pl_vr_commit(r->vr))
            continue;
        if (r->applied < S->max_seen) {
            if (!S->failure[0]) {
                trace(1, "I3: replica %u serves at op %llu; op %llu was served before", g,
                      (unsigned long long)r->applied, (unsigned long long)S->max_seen);
                if (debug_level())
                    dump();
            }
            sim_fail("I3 violated: a read at op %llu misses op %llu, served before",
                     (unsigned long long)r->applied, (unsigned long long)S->max_seen);
        }
        if (r->applied > seen)
            seen = r->applied;
    }
    S->max_seen = seen;
}

/* The server enters the epoch it applied a barrier for (core/seq.c does it
 * in an event after the VR call that committed the barrier). */
static void reconfigure_pending(uint32_t g)
{
    replica *r = &S->r[g];
    if (!r->up || !r->reconf_pending || paused(g))
        return;
    if (S->crash_before_reconf_pct && (int)(rnd() % 100) < S->crash_before_reconf_pct &&
        may_crash(g)) {
        stats.crash_before++;
        crash(g);
        return;
    }
    r->reconf_pending = 0;
    const membership *m = &r->mem;
    uint32_t self = slot_of(g, g);
    pl_vr_reconfigure(r->vr, m->epoch, m->n, self, m->start_op, lnow(g));
    if (!settle(g))
        return;
    if (PL_VR_EPOCH(pl_vr_view(r->vr)) != m->epoch)
        sim_fail("replica %llu did not enter epoch %llu", g, m->epoch);
    if ((mem_index(m, g) >= 0) != pl_vr_is_member(r->vr))
        sim_fail("replica %llu: pl_vr_is_member wrong in epoch %llu", g, m->epoch);
    note_removed(g);
    trace(1, "server %u reconfigured to epoch %llu: view %llx op %llu commit %llu status %d", g,
          (unsigned long long)m->epoch, (unsigned long long)pl_vr_view(r->vr),
          (unsigned long long)pl_vr_op(r->vr), (unsigned long long)pl_vr_commit(r->vr),
          pl_vr_status(r->vr));
    io_committed((void *)(uintptr_t)g, pl_vr_commit(r->vr));
    if (S->crash_after_barrier_pct && (int)(rnd() % 100) < S->crash_after_barrier_pct &&
        may_crash(g)) {
        stats.crash_after++;
        crash(g);
    }
}

/* VRSIM_DEBUG=2: every change of a replica's view, status or commit. */
static void watch(uint32_t g, const char *why)
{
    static uint64_t seen[MAXN][3];
    replica *r = &S->r[g];
    if (!r->up || debug_level() < 2)
        return;
    uint64_t now3[3] = { pl_vr_view(r->vr), (uint64_t)pl_vr_status(r->vr), pl_vr_op(r->vr) };
    if (!memcmp(now3, seen[g], sizeof now3))
        return;
    memcpy(seen[g], now3, sizeof now3);
    fprintf(stderr, "t=%llu %u %-10s view %llx lnv %llx %s op %llu commit %llu\n",
            (unsigned long long)S->now, g, why, (unsigned long long)now3[0],
            (unsigned long long)r->lnv, pl_vr_role(r->vr, lnow(g)), (unsigned long long)now3[2],
            (unsigned long long)pl_vr_commit(r->vr));
}

static void free_msg(msg *q)
{
    S->queued--;
    for (uint32_t k = 0; k < q->m.n_entries; k++)
        free((void *)q->e[k].data);
    free(q->e);
    free(q);
}

static void deliver_due(void)
{
    msg **pp = &S->queue;
    while (*pp) {
        msg *q = *pp;
        if (q->deliver_at > S->now || (S->r[q->to].up && paused(q->to))) {
            pp = &q->next; /* not yet, or waiting in a paused server's socket */
            continue;
        }
        *pp = q->next;
        if (S->r[q->to].up && !S->cut[q->from][q->to] && !(S->deaf[q->to] & (1u << q->m.type))) {
            /* the peer layer: sender's server -> receiver's slot */
            uint32_t s = slot_of(q->to, q->from);
            if (s != NOID) {
                q->m.from = s;
                stats.epoch_state += q->m.type == PL_VR_EPOCH_STATE;
                trace(3, "  msg %u->%u type %u view %llx op %llu commit %llu lnv %llx anchor %llu/%llx n %u",
                      q->from, q->to, q->m.type, (unsigned long long)q->m.view,
                      (unsigned long long)q->m.op, (unsigned long long)q->m.commit,
                      (unsigned long long)q->m.lnv, (unsigned long long)q->m.anchor_op,
                      (unsigned long long)q->m.anchor_view, q->m.n_entries);
                pl_vr_receive(S->r[q->to].vr, &q->m, lnow(q->to));
                if (settle(q->to)) {
                    static const char *names[] = { "?", "PREPARE", "PREP_OK", "COMMIT", "SVC", "DVC",
                                                   "START_VIEW", "GET_STATE", "NEW_STATE", "EPOCH_ST" };
                    char why[32];
                    snprintf(why, sizeof why, "%s<-%u", q->m.type < 10 ? names[q->m.type] : "?", q->from);
                    watch(q->to, why);
                }
                check_reads();
            }
        }
        free_msg(q);
    }
}

static void propose_some(void)
{
    for (uint32_t i = 0; i < S->n; i++) {
        replica *r = &S->r[i];
        if (!r->up || paused(i) || !pl_vr_can_serve(r->vr, lnow(i)))
            continue;
        if (rnd() % 3)
            continue;
        char buf[3][24];
        pl_log_entry e[3];
        uint32_t k = 1 + rnd() % 3;
        for (uint32_t j = 0; j < k; j++) {
            snprintf(buf[j], sizeof buf[j], "r%u-%llu", i, (unsigned long long)S->proposals++);
            e[j] = (pl_log_entry){ 0, 0, (const uint8_t *)buf[j], (uint32_t)strlen(buf[j]) };
        }
        uint64_t first;
        if (pl_vr_op(r->vr) + k >= MAXOPS - 10)
            continue;
        pl_vr_propose(r->vr, e, k, &first, lnow(i));
        settle(i);
        check_reads();
    }
}

/* A server started like `parleyd --join`: an empty data directory and the
 * (stale) config file's servers, itself not among them. */
static void join(uint32_t g)
{
    replica *r = &S->r[g];
    if (r->exists)
        return;
    r->mem = S->initial;
    r->view = r->lnv = r->prepared = r->nlog = r->applied = 0;
    start_replica(g);
}

/* The primary's sequencer making the next planned membership change: its
 * new servers become learners; once each holds everything committed, the
 * barrier entry is proposed alone. A new primary redoes the learner step. */
static void drive_membership(void)
{
    if (S->plan_next >= S->n_plan)
        return;
    const membership *t = &S->plan[S->plan_next];
    if (S->now < S->plan_after_ms)
        return;
    for (uint32_t g = 0; g < S->n; g++) {
        if (S->r[g].exists && S->r[g].mem.epoch >= t->epoch) {
            trace(1, "server %u entered epoch %llu at op %llu (commit %llu)", g,
                  (unsigned long long)t->epoch, (unsigned long long)S->r[g].mem.start_op,
                  (unsigned long long)S->max_committed);
            S->plan_next++;
            S->plan_after_ms = S->now + S->plan_gap_ms;
            return;
        }
    }
    for (uint32_t k = 0; k < t->n; k++)
        join(t->ids[k]);
    for (uint32_t g = 0; g < S->n; g++) {
        replica *r = &S->r[g];
        if (!r->up || paused(g) || r->mem.epoch + 1 != t->epoch || r->reconf_pending ||
            !pl_vr_can_serve(r->vr, lnow(g)))
            continue;
        if (r->learners_for != t->epoch) {
            r->n_learners = 0;
            for (uint32_t k = 0; k < t->n; k++)
                if (mem_index(&r->mem, t->ids[k]) < 0)
                    r->learners[r->n_learners++] = t->ids[k];
            r->learners_for = t->epoch;
            pl_vr_set_learners(r->vr, r->n_learners);
        }
        for (uint32_t k = 0; k < r->n_learners; k++)
            if (pl_vr_acked(r->vr, r->mem.n + k) < pl_vr_commit(r->vr))
                return;
        if (pl_vr_barrier(r->vr))
            return;
        char buf[24];
        format_barrier(t, buf, sizeof buf);
        pl_log_entry e = { 0, 0, (const uint8_t *)buf, (uint32_t)strlen(buf) };
        uint64_t first;
        int rc = pl_vr_propose(r->vr, &e, 1, &first, lnow(g));
        if (!settle(g))
            return;
        if (rc == PL_OK) {
            trace(1, "server %u proposes %s at op %llu (view %llx)", g, buf,
                  (unsigned long long)first, (unsigned long long)pl_vr_view(r->vr));
            S->barriers_proposed++;
            stats.barriers++;
            if (!pl_vr_barrier(r->vr))
                sim_fail("barrier at op %llu not noted (epoch %llu)", first, t->epoch);
            if (S->crash_after_propose_pct && (int)(rnd() % 100) < S->crash_after_propose_pct) {
                if (rnd() % 2 && may_crash(g)) {
                    crash(g);
                } else {
                    for (uint32_t j = 0; j < S->n; j++)
                        S->cut[g][j] = S->cut[j][g] = (g != j);
                }
            }
        }
        return;
    }
}

/* Syncs that are due finish, on replicas that run (a paused one finishes
 * them when it resumes: the loop thread hears of them then). */
static void finish_syncs(void)
{
    for (uint32_t i = 0; i < S->n; i++) {
        replica *r = &S->r[i];
        if (!r->up || paused(i) || !r->nsync || r->sync_stuck)
            continue;
        uint32_t k = 0;
        while (k < r->nsync && r->up) {
            if (r->sync[k].due > S->now) {
                k++;
                continue;
            }
            uint64_t covers = r->sync[k].covers, gen = r->sync[k].gen;
            if (r->sync[k].cap > r->durable)
                r->durable = r->sync[k].cap;
            if (r->sync[k].applied > r->applied_dur)
                r->applied_dur = r->sync[k].applied;
            r->sync[k] = r->sync[--r->nsync];
            pl_vr_synced(r->vr, covers, gen, lnow(i));
            if (settle(i))
                watch(i, "synced");
            check_reads();
        }
    }
}

static void step(void)
{
    S->now += 10;
    for (uint32_t i = 0; i < S->n; i++)
        reconfigure_pending(i);
    deliver_due();
    finish_syncs();
    for (uint32_t i = 0; i < S->n; i++)
        if (S->r[i].up && !paused(i)) {
            pl_vr_tick(S->r[i].vr, lnow(i));
            if (settle(i))
                watch(i, "tick");
            check_reads();
        }
    drive_membership();
}

/* The swarm: each seed draws its own fault mix, from a stream of its own
 * so the mix does not shift the run's other draws. Some seeds get none of
 * a kind of fault, some a lot. */
static unsigned mix_rnd(unsigned *st, unsigned n)
{
    *st = *st * 1103515245u + 12345u;
    return ((*st >> 16) & 0x7fff) % n;
}

static unsigned mix_some(unsigned *st, unsigned none_pct, unsigned lo, unsigned hi)
{
    if (mix_rnd(st, 100) < none_pct)
        return 0;
    return lo + mix_rnd(st, hi - lo + 1);
}

static void draw_mix(unsigned seed, mix *mx, unsigned *st)
{
    static const unsigned delays[] = { 5, 30, 30, 100, 300 };
    *st = seed ^ 0x5bd1e995u;
    memset(mx, 0, sizeof *mx);
    mx->swarm = 1;
    mx->crash = mix_some(st, 25, 1, 15);
    mx->restart = 1 + mix_rnd(st, 20);
    mx->isolate = mix_some(st, 30, 1, 10);
    mx->cut = mix_some(st, 30, 1, 10);
    mx->heal = 2 + mix_rnd(st, 20);
    mx->drop_change = mix_some(st, 40, 1, 5);
    mx->drop_max = 1 + mix_rnd(st, 40);
    mx->pause = mix_some(st, 40, 1, 6);
    mx->delay_max = delays[mix_rnd(st, 5)];
    mx->dup = mix_some(st, 50, 1, 20);
    mx->io_crash = mix_some(st, 40, 1, 500);
    mx->drift_ppm = mix_some(st, 30, 1, PL_VR_CLOCK_DRIFT_PPM);
    /* VRSIM_DRIFT_PPM=X: clocks drift up to X instead (beyond the bound,
     * to check that I3's check finds the stale reads that follow) */
    if (getenv("VRSIM_DRIFT_PPM"))
        mx->drift_ppm = (unsigned)strtoul(getenv("VRSIM_DRIFT_PPM"), NULL, 10);
    mx->over_f = mix_rnd(st, 10) == 0;
}

static const char *mix_text(const mix *mx)
{
    static char buf[256];
    if (!mx->swarm)
        return "classic";
    snprintf(buf, sizeof buf, "crash %u restart %u isolate %u cut %u heal %u drop %u/%u%% pause %u "
             "delay 1-%u dup %u%% io-crash %u/100k drift %u ppm%s",
             mx->crash, mx->restart, mx->isolate, mx->cut, mx->heal, mx->drop_change, mx->drop_max,
             mx->pause, mx->delay_max, mx->dup, mx->io_crash, mx->drift_ppm,
             mx->over_f ? " over-f" : "");
    return buf;
}

/* The mix the next sim_init* uses (classic unless a swarm case sets it). */
static int use_swarm;
/* force_sync (VRSIM_FORCE_SYNC=1): every append syncs, whatever the mix
 * draws; the regression seeds found before the asynchronous log existed
 * replay exactly that way. */

/* A universe of `universe` servers; the first n are epoch 0's members and
 * start now, the others join when a planned change needs them. */
static void sim_init2(uint32_t universe, uint32_t n, unsigned seed)
{
    S = calloc(1, sizeof *S);
    S->n = universe;
    S->seed = S->seed0 = seed;
    if (use_swarm) {
        unsigned st;
        draw_mix(seed, &S->mx, &st);
        for (uint32_t i = 0; i < universe; i++) {
            S->r[i].clock_base = 1000 + mix_rnd(&st, 100000);
            if (S->mx.drift_ppm)
                S->r[i].clock_ppm = (int64_t)mix_rnd(&st, 2 * S->mx.drift_ppm + 1) -
                                    (int64_t)S->mx.drift_ppm;
        }
        /* drawn last, so the draws above stay what they were before it */
        S->async_mode = (int)mix_rnd(&st, 3);
        for (uint32_t i = 0; i < universe; i++)
            S->r[i].async = S->async_mode == 1 || (S->async_mode == 2 && mix_rnd(&st, 2));
        if (force_sync)
            for (uint32_t i = 0; i < universe; i++)
                S->r[i].async = 0;
        trace(1, "seed %u mix: %s; async log on %s", seed, mix_text(&S->mx),
              force_sync ? "none (forced)" : S->async_mode == 0 ? "none" :
              S->async_mode == 1 ? "all" : "some");
    }
    if (force_async)
        for (uint32_t i = 0; i < universe; i++)
            S->r[i].async = 1;
    S->initial.n = n;
    for (uint32_t i = 0; i < n; i++)
        S->initial.ids[i] = i;
    S->committed = committed_ops;
    for (uint32_t i = 0; i < universe; i++) {
        if (!log_store[i])
            log_store[i] = malloc((MAXOPS + 1) * sizeof(entry));
        S->r[i].log = log_store[i];
    }
    for (uint32_t i = 0; i < n; i++) {
        S->r[i].mem = S->initial;
        start_replica(i);
    }
}

static void sim_init(uint32_t n, unsigned seed)
{
    sim_init2(n, n, seed);
}

static void sim_free(void)
{
    for (uint32_t i = 0; i < S->n; i++)
        crash(i);
    memset(committed_ops, 0, (S->max_committed + 1) * sizeof committed_ops[0]);
    while (S->queue) {
        msg *q = S->queue;
        S->queue = q->next;
        free_msg(q);
    }
    free(S);
    S = NULL;
}

/* End every fault: links, drops, pauses, crashes inside writes; restart
 * whoever is down. */
static void heal(void)
{
    memset(S->cut, 0, sizeof S->cut);
    S->drop_pct = 0;
    S->mx.io_crash = 0;
    if (S->mx.delay_max > 30)
        S->mx.delay_max = 30; /* reordering as usual, no longer beyond a timeout */
    for (uint32_t i = 0; i < S->n; i++) {
        S->r[i].paused_until = 0;
        if (S->r[i].exists && !S->r[i].up)
            start_replica(i);
    }
}

static void dump(void)
{
    for (uint32_t g = 0; g < S->n; g++) {
        replica *r = &S->r[g];
        if (!r->exists)
            continue;
        fprintf(stderr, "  server %u %s epoch %llu (start %llu) n %u", g, r->up ? "up" : "down",
                (unsigned long long)r->mem.epoch, (unsigned long long)r->mem.start_op, r->mem.n);
        if (r->up)
            fprintf(stderr, " view %llx lnv %llx status %d op %llu commit %llu applied %llu barrier %llu %s learners %u",
                    (unsigned long long)pl_vr_view(r->vr), (unsigned long long)r->lnv,
                    pl_vr_status(r->vr), (unsigned long long)pl_vr_op(r->vr),
                    (unsigned long long)pl_vr_commit(r->vr), (unsigned long long)r->applied,
                    (unsigned long long)pl_vr_barrier(r->vr), pl_vr_role(r->vr, S->now),
                    r->n_learners);
        for (uint32_t k = 0; r->up && k < r->n_learners; k++)
            fprintf(stderr, " [%u acked %llu]", r->learners[k],
                    (unsigned long long)pl_vr_acked(r->vr, r->mem.n + k));
        fprintf(stderr, "%s\n", r->up && pl_vr_can_serve(r->vr, lnow(g)) ? " SERVING" : "");
    }
}

/* After healing, the members of `m` converge on one log and commit, and
 * exactly one replica of the whole universe serves: with want_first, the
 * membership's first server (priority failback). */
static void check_converged_in(const membership *m, int want_first)
{
    uint32_t g0 = m->ids[0];
    for (int k = 0; k < 3000 && !S->failure[0]; k++) {
        step();
        int same = 1;
        for (uint32_t i = 1; i < m->n; i++)
            if (pl_vr_commit(S->r[m->ids[i]].vr) != pl_vr_commit(S->r[g0].vr) ||
                pl_vr_op(S->r[m->ids[i]].vr) != pl_vr_op(S->r[g0].vr))
                same = 0;
        int primaries = 0;
        for (uint32_t i = 0; i < S->n; i++)
            if (S->r[i].up)
                primaries += pl_vr_can_serve(S->r[i].vr, lnow(i));
        if (same && primaries == 1 && pl_vr_commit(S->r[g0].vr) == pl_vr_op(S->r[g0].vr) &&
            pl_vr_commit(S->r[g0].vr) >= S->max_committed &&
            (!want_first || pl_vr_can_serve(S->r[g0].vr, lnow(g0))))
            break;
    }
    SIM_ASSERT(!S->failure[0], "seed %u: %s\n  %s", S->seed0, S->failure, replay());
    uint64_t c = pl_vr_commit(S->r[g0].vr);
    if (c < S->max_committed && debug_level())
        dump();
    SIM_ASSERT(c >= S->max_committed,
                  "seed %u: I1: commit %llu below an op committed earlier (%llu)\n  %s", S->seed0,
                  (unsigned long long)c, (unsigned long long)S->max_committed, replay());
    for (uint32_t i = 0; i < m->n; i++) {
        replica *r = &S->r[m->ids[i]];
        SIM_ASSERT(r->mem.epoch == m->epoch, "seed %u: server %u in epoch %llu, not %llu\n  %s",
                      S->seed0, m->ids[i], (unsigned long long)r->mem.epoch,
                      (unsigned long long)m->epoch, replay());
        SIM_ASSERT(pl_vr_commit(r->vr) == c, "seed %u: server %u commit %llu != %llu\n  %s",
                      S->seed0, m->ids[i], (unsigned long long)pl_vr_commit(r->vr),
                      (unsigned long long)c, replay());
        SIM_ASSERT(pl_vr_op(r->vr) == c, "seed %u: server %u op %llu != %llu\n  %s", S->seed0,
                      m->ids[i], (unsigned long long)pl_vr_op(r->vr), (unsigned long long)c, replay());
        for (uint64_t op = 1; op <= S->max_committed; op++)
            SIM_ASSERT(strcmp(r->log[op].data, S->committed[op]) == 0,
                          "seed %u: I1: server %u op %llu holds %s, committed was %s\n  %s", S->seed0,
                          m->ids[i], (unsigned long long)op, r->log[op].data, S->committed[op], replay());
    }
    int primaries = 0;
    for (uint32_t i = 0; i < S->n; i++)
        if (S->r[i].up)
            primaries += pl_vr_can_serve(S->r[i].vr, lnow(i));
    SIM_ASSERT(primaries == 1, "seed %u: %d replicas serve\n  %s", S->seed0, primaries, replay());
    if (want_first)
        SIM_ASSERT(pl_vr_can_serve(S->r[g0].vr, lnow(g0)),
                      "seed %u: the primary is not server %u, the first of epoch %llu\n  %s", S->seed0,
                      g0, (unsigned long long)m->epoch, replay());
}

static void check_converged(void)
{
    check_converged_in(&S->initial, 0);
}

/* The asynchronous log (core/seq.c with a store of ABI minor 1): a backup
 * that holds an op only in an unsynced write must make it durable before
 * it records a new last normal view. Op X is committed in view 0 by the
 * primary and server 1 while server 2 holds it unsynced; the primary dies
 * before anyone hears of the commit. Server 1 becomes primary of view 1
 * and its START-VIEW brings server 2 nothing new (it holds X already), so
 * only the sync before lnv = 1 keeps X: without it server 2 crashes, comes
 * back with lnv 1 and a log without X, and with server 1 down its log
 * outranks server 0's in the next view change, which gives X's op-number
 * to another op (I1, I2). */
START_TEST(test_async_start_view_keeps_unsynced_op)
{
    force_async = 1;
    sim_init(3, 7);
    force_async = 0;
    for (int k = 0; k < 200 && !pl_vr_can_serve(S->r[0].vr, lnow(0)); k++)
        step();
    ck_assert(pl_vr_can_serve(S->r[0].vr, lnow(0)));
    S->r[2].sync_stuck = 1;
    pl_log_entry e = { 0, 0, (const uint8_t *)"x-op", 4 };
    uint64_t x = 0;
    ck_assert_int_eq(pl_vr_propose(S->r[0].vr, &e, 1, &x, lnow(0)), PL_OK);
    for (int k = 0; k < 20 && (S->r[1].nlog < x || S->r[2].nlog < x); k++)
        step();
    ck_assert(S->r[1].nlog >= x && S->r[2].nlog >= x);
    /* from here nothing of server 0 reaches the others: nobody learns the
     * commit from it */
    S->cut[0][1] = S->cut[0][2] = 1;
    for (int k = 0; k < 20 && pl_vr_commit(S->r[0].vr) < x; k++)
        step();
    ck_assert_uint_ge(pl_vr_commit(S->r[0].vr), x);
    ck_assert_uint_lt(pl_vr_commit(S->r[1].vr), x);
    ck_assert_uint_lt(pl_vr_commit(S->r[2].vr), x);
    ck_assert_uint_lt(S->r[2].durable, x);
    crash(0);
    for (int k = 0; k < 200 && !(pl_vr_is_primary(S->r[1].vr) && S->r[2].lnv == pl_vr_view(S->r[1].vr));
         k++)
        step();
    ck_assert(pl_vr_is_primary(S->r[1].vr));
    ck_assert_uint_eq(S->r[2].lnv, pl_vr_view(S->r[1].vr));
    ck_assert_uint_lt(pl_vr_commit(S->r[2].vr), x); /* not applied: a crash may lose it */
    S->r[2].lose_unsynced = 1;
    crash(2);
    S->r[2].lose_unsynced = 0;
    crash(1);
    S->r[2].sync_stuck = 0;
    memset(S->cut, 0, sizeof S->cut);
    start_replica(0);
    start_replica(2);
    for (int k = 0; k < 600; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    heal();
    for (int k = 0; k < 600; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    ck_assert_str_eq(S->committed[x], "x-op");
    check_converged();
    sim_free();
}
END_TEST

/* A primary's own vote counts for what its sync covers, not for what it
 * wrote: with its sync stuck, a backup's PREPARE-OK alone commits nothing
 * (n = 3 needs two durable copies). Otherwise op X would be answered and
 * applied, then lost by the primary's crash together with its unsynced
 * state, and a view change of the primary and the server that never got X
 * would give X's op-number to another op. */
START_TEST(test_async_primary_counts_only_synced)
{
    force_async = 1;
    sim_init(3, 11);
    force_async = 0;
    for (int k = 0; k < 200 && !pl_vr_can_serve(S->r[0].vr, lnow(0)); k++)
        step();
    ck_assert(pl_vr_can_serve(S->r[0].vr, lnow(0)));
    for (int k = 0; k < 5; k++)
        step(); /* every earlier sync is done */
    S->r[0].sync_stuck = 1;
    S->cut[0][2] = 1;
    pl_log_entry e = { 0, 0, (const uint8_t *)"x-op", 4 };
    uint64_t x = 0;
    ck_assert_int_eq(pl_vr_propose(S->r[0].vr, &e, 1, &x, lnow(0)), PL_OK);
    for (int k = 0; k < 20 && pl_vr_acked(S->r[0].vr, 1) < x; k++)
        step();
    ck_assert_uint_ge(pl_vr_acked(S->r[0].vr, 1), x);
    ck_assert_uint_lt(pl_vr_commit(S->r[0].vr), x);
    ck_assert(S->committed[x][0] == 0);
    /* its sync finishes: now two durable copies */
    S->r[0].sync_stuck = 0;
    step();
    ck_assert_uint_ge(pl_vr_commit(S->r[0].vr), x);
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    sim_free();
}
END_TEST

START_TEST(test_steady_state)
{
    sim_init(3, 1);
    for (int k = 0; k < 500; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    ck_assert(pl_vr_is_primary(S->r[0].vr));
    ck_assert_uint_gt(S->max_committed, 100);
    check_converged();
    sim_free();
}
END_TEST

START_TEST(test_primary_crash_and_failback)
{
    sim_init(3, 2);
    for (int k = 0; k < 200; k++) {
        step();
        propose_some();
    }
    uint64_t before = S->max_committed;
    crash(0);
    int served = 0;
    for (int k = 0; k < 300; k++) {
        step();
        propose_some();
        if (pl_vr_can_serve(S->r[1].vr, lnow(1)))
            served = 1;
    }
    SIM_ASSERT(served, "replica 1 took over");
    ck_assert_uint_gt(S->max_committed, before);
    heal(); /* restart 0: it catches up and gets the primary back */
    for (int k = 0; k < 1500; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(pl_vr_can_serve(S->r[0].vr, lnow(0)), "failback to replica 0");
    check_converged();
    sim_free();
}
END_TEST

START_TEST(test_minority_partition_cannot_commit)
{
    sim_init(5, 3);
    for (int k = 0; k < 100; k++)
        step();
    /* isolate the primary with one backup: {0,1} | {2,3,4} */
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            S->cut[a][b] = (a < 2) != (b < 2);
    uint64_t c0 = pl_vr_commit(S->r[0].vr);
    for (int k = 0; k < 400; k++) {
        step();
        propose_some();
    }
    ck_assert_uint_eq(pl_vr_commit(S->r[0].vr), c0);
    ck_assert(!pl_vr_can_serve(S->r[0].vr, lnow(0)));
    int maj = 0;
    for (int i = 2; i < 5; i++)
        maj += pl_vr_can_serve(S->r[i].vr, lnow(i));
    ck_assert_int_eq(maj, 1);
    heal();
    check_converged();
    sim_free();
}
END_TEST

static void isolate(uint32_t g, int on)
{
    for (uint32_t j = 0; j < S->n; j++)
        if (j != g)
            S->cut[g][j] = S->cut[j][g] = on;
}

static void run_until(int max_steps, int (*cond)(void))
{
    for (int k = 0; k < max_steps && !cond() && !S->failure[0]; k++)
        step();
}

static int r1_has_all(void) { return pl_vr_op(S->r[1].vr) == pl_vr_op(S->r[0].vr); }
static int r0_committed_all(void) { return pl_vr_commit(S->r[0].vr) == pl_vr_op(S->r[0].vr); }
static int r0_primary_of_3(void) { return pl_vr_is_primary(S->r[0].vr) && pl_vr_view(S->r[0].vr) == 3; }
static int r1_recovering(void) { return pl_vr_status(S->r[1].vr) == PL_VR_RECOVERING; }
static int r1_in_view_3(void) { return pl_vr_view(S->r[1].vr) == 3; }

/* The shape of issue 17's failing seeds, step by step. Replica 1 holds ops
 * it acknowledged (they are committed on the strength of that) beyond its
 * commit number; it misses the START-VIEW of the next view and learns of it
 * from a heartbeat, so it recovers by state transfer, which never arrives;
 * the primary then crashes and 1 forms the next view with replica 2, which
 * never had those ops. Cutting 1's log back to its commit number on
 * entering recovery lost them (I1), and the new primary gave their
 * op-numbers to new ops (I2). */
START_TEST(test_missed_start_view_keeps_acked_ops)
{
    sim_init(3, 5);
    for (int k = 0; k < 30; k++)
        step();
    isolate(2, 1);
    for (int k = 0; k < 20; k++) {
        step();
        propose_some();
    }
    /* 1 holds everything 0 proposed; 0 commits it on 1's acknowledgement,
     * but 1 never hears the new commit number */
    run_until(100, r1_has_all);
    S->cut[0][1] = 1;
    run_until(100, r0_committed_all);
    uint64_t acked = pl_vr_op(S->r[1].vr);
    ck_assert_uint_eq(pl_vr_commit(S->r[0].vr), acked);
    ck_assert_uint_lt(pl_vr_commit(S->r[1].vr), acked);
    /* 0 silent: 1 tries views 1 and 2 alone, then 0 and 1 form view 3
     * (primary 0); 1 misses its START-VIEW and every NEW-STATE */
    isolate(0, 1);
    run_until(400, r1_in_view_3);
    S->deaf[1] = 1u << PL_VR_START_VIEW | 1u << PL_VR_NEW_STATE;
    isolate(0, 0);
    isolate(2, 1);
    run_until(200, r0_primary_of_3);
    SIM_ASSERT(r0_primary_of_3(), "replica 0 did not become primary of view 3");
    run_until(200, r1_recovering);
    SIM_ASSERT(r1_recovering(), "replica 1 is not recovering");
    /* 0 crashes; 1 and 2 form the next view */
    crash(0);
    S->deaf[1] = 0;
    isolate(2, 0);
    ck_assert_uint_ge(pl_vr_op(S->r[1].vr), acked);
    for (int k = 0; k < 600; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    heal();
    check_converged();
    sim_free();
}
END_TEST

/* pl_vr_vouches: a backup names the primary to clients only while it hears
 * it, and in a new view not before that primary can serve. */
START_TEST(test_backup_vouches_for_primary)
{
    const uint64_t fresh = 2 * 30; /* twice start_replica's heartbeat_ms */
    sim_init(3, 4);
    for (int k = 0; k < 100; k++)
        step();
    ck_assert_msg(pl_vr_can_serve(S->r[0].vr, S->now), "replica 0 serves");
    ck_assert_msg(!pl_vr_vouches(S->r[0].vr, S->now, fresh), "a primary vouches for nobody");
    ck_assert_msg(pl_vr_vouches(S->r[1].vr, S->now, fresh) &&
                  pl_vr_vouches(S->r[2].vr, S->now, fresh),
                  "backups that hear the primary vouch for it");
    crash(0);
    uint64_t t0 = S->now;
    while (S->now - t0 <= fresh)
        step();
    ck_assert_msg(!pl_vr_vouches(S->r[1].vr, S->now, fresh) &&
                  !pl_vr_vouches(S->r[2].vr, S->now, fresh),
                  "no backup vouches after %llu ms without a word from the primary",
                  (unsigned long long)fresh);
    uint64_t serves = 0, vouched = 0;
    for (int k = 0; k < 300 && !vouched; k++) {
        step();
        if (!serves && pl_vr_can_serve(S->r[1].vr, S->now))
            serves = S->now;
        if (pl_vr_vouches(S->r[2].vr, S->now, fresh)) {
            vouched = S->now;
            ck_assert_msg(serves && vouched >= serves,
                          "replica 2 vouched at %llu ms for a primary serving only from %llu ms",
                          (unsigned long long)vouched, (unsigned long long)serves);
        }
    }
    ck_assert_msg(vouched, "replica 2 vouches for the new primary");
    ck_assert_uint_eq(pl_vr_primary(S->r[2].vr), 1);
    ck_assert_msg(!S->failure[0], "%s", S->failure);
    sim_free();
}
END_TEST

static int chance(unsigned per_mille)
{
    return per_mille && rnd() % 1000 < per_mille;
}

/* One step of the swarm's faults over servers 0..n-1. */
static void swarm_faults(uint32_t n)
{
    const mix *mx = &S->mx;
    if (chance(mx->crash)) {
        uint32_t i = rnd() % n;
        if (can_crash(i)) {
            trace(1, "CRASH %u", i);
            crash(i);
        }
    }
    if (chance(mx->restart)) {
        uint32_t i = rnd() % n;
        if (S->r[i].exists && !S->r[i].up) {
            trace(1, "RESTART %u", i);
            start_replica(i);
        }
    }
    if (chance(mx->isolate)) {
        uint32_t i = rnd() % n;
        trace(1, "ISOLATE %u", i);
        isolate(i, 1);
    }
    if (chance(mx->cut)) {
        uint32_t a = rnd() % n, b = rnd() % n;
        trace(1, "CUT %u->%u", a, b);
        S->cut[a][b] = 1;
    }
    if (chance(mx->heal)) {
        trace(1, "HEAL links");
        memset(S->cut, 0, sizeof S->cut);
    }
    if (chance(mx->drop_change))
        S->drop_pct = (int)(rnd() % (mx->drop_max + 1));
    if (chance(mx->pause)) {
        uint32_t i = rnd() % n;
        if (S->r[i].up && !paused(i)) {
            S->r[i].paused_until = S->now + 10 * (1 + rnd() % 60);
            stats.pauses++;
            trace(1, "PAUSE %u until %llu", i, (unsigned long long)S->r[i].paused_until);
        }
    }
}

/* The fixed mix the older seeds were found with (their draws replay
 * exactly): crashes (at most f down), restarts, isolation, one-way cuts,
 * drops. */
static void classic_faults(uint32_t n)
{
    uint32_t f = (n - 1) / 2;
    unsigned x = rnd() % 1000;
    if (x < 6) {
        uint32_t down = 0;
        for (uint32_t i = 0; i < n; i++)
            down += !S->r[i].up;
        uint32_t i = rnd() % n;
        if (S->r[i].up && down < f) {
            trace(1, "CRASH %u", i);
            crash(i);
        }
    } else if (x < 14) {
        uint32_t i = rnd() % n;
        if (!S->r[i].up) {
            trace(1, "RESTART %u", i);
            start_replica(i);
        }
    } else if (x < 18) {
        uint32_t i = rnd() % n;
        trace(1, "ISOLATE %u", i);
        isolate(i, 1);
    } else if (x < 21) {
        uint32_t a = rnd() % n, b = rnd() % n;
        trace(1, "CUT %u->%u", a, b);
        S->cut[a][b] = 1;
    } else if (x < 30) {
        trace(1, "HEAL links");
        memset(S->cut, 0, sizeof S->cut);
    } else if (x < 32) {
        S->drop_pct = (int)(rnd() % 20);
    }
}

/* Random faults for `steps` steps, then heal: the invariants hold
 * throughout and the cluster converges. */
static void random_run(uint32_t n, unsigned seed, int steps)
{
    sim_init(n, seed);
    for (int k = 0; k < steps && !S->failure[0]; k++) {
        step();
        propose_some();
        if (S->mx.swarm)
            swarm_faults(n);
        else
            classic_faults(n);
    }
    SIM_ASSERT(!S->failure[0], "n=%u seed %u: %s\n  %s", n, seed, S->failure, replay());
    heal();
    for (int k = 0; k < 200; k++) {
        step();
        propose_some();
    }
    check_converged();
    sim_free();
}

/* ---- seeds ---- */

typedef struct seed_case {
    const char *name;          /* its tcase: CK_RUN_CASE=name */
    void (*run)(unsigned seed);
    unsigned classic_first, classic_n; /* fixed seeds, classic mix */
    unsigned swarm_first, swarm_n;     /* fixed seeds, swarm mix */
    const unsigned *regress_classic;   /* seeds that once failed, with their mix */
    const unsigned *regress_swarm;
} seed_case;

/* Run a case's seeds: VRSIM_SEED/VRSIM_SEEDS (and VRSIM_MIX) when set,
 * otherwise its fixed seeds and its regression seeds. */
static void run_case(const seed_case *c)
{
    cur_case = c->name;
    const char *first_env = getenv("VRSIM_SEED");
    if (first_env) {
        unsigned first = (unsigned)strtoul(first_env, NULL, 10);
        unsigned n = getenv("VRSIM_SEEDS") ? (unsigned)strtoul(getenv("VRSIM_SEEDS"), NULL, 10) : 1;
        use_swarm = !(getenv("VRSIM_MIX") && !strcmp(getenv("VRSIM_MIX"), "classic"));
        force_sync = getenv("VRSIM_FORCE_SYNC") && atoi(getenv("VRSIM_FORCE_SYNC"));
        for (unsigned i = 0; i < n; i++)
            c->run(first + i);
        use_swarm = 0;
        return;
    }
    use_swarm = 0;
    for (unsigned i = 0; i < c->classic_n; i++)
        c->run(c->classic_first + i);
    for (const unsigned *r = c->regress_classic; r && *r; r++)
        c->run(*r);
    use_swarm = 1;
    for (unsigned i = 0; i < c->swarm_n; i++)
        c->run(c->swarm_first + i);
    force_sync = 1;
    for (const unsigned *r = c->regress_swarm; r && *r; r++)
        c->run(*r);
    force_sync = 0;
    use_swarm = 0;
}

static void run3(unsigned seed) { random_run(3, seed, 3000); }
static void run5(unsigned seed) { random_run(5, seed, 3000); }
/* Membership changes pass through even sizes (3 -> 4 -> 5, 3 -> 2):
 * quorums must be majorities there too. */
static void run_even(unsigned seed) { random_run(2 + 2 * (seed % 3), seed, 3000); }

/* Issue 17: a replica that missed START-VIEW cut its log back to its
 * commit number, dropping ops it had acknowledged (vr.c merge_suffix). */
static const unsigned regress3[] = { 1000230, 2000289, 3000716, 0 };

static const seed_case case3 = { "random3", run3, 100, 40, 1, 40, regress3, NULL };
static const seed_case case5 = { "random5", run5, 200, 30, 1, 20, NULL, NULL };
static const seed_case case_even = { "random-even", run_even, 400, 90, 1, 30, NULL, NULL };

START_TEST(test_random_3)
{
    run_case(&case3);
}
END_TEST

START_TEST(test_random_5)
{
    run_case(&case5);
}
END_TEST

START_TEST(test_random_even)
{
    run_case(&case_even);
}
END_TEST

START_TEST(test_single_server)
{
    sim_init(1, 4);
    for (int k = 0; k < 50; k++) {
        step();
        propose_some();
    }
    ck_assert_uint_gt(S->max_committed, 10);
    crash(0);
    heal();
    ck_assert(pl_vr_can_serve(S->r[0].vr, lnow(0)));
    check_converged();
    sim_free();
}
END_TEST


/* ---- membership changes ---- */

static void plan_add(uint64_t epoch, const char *ids)
{
    membership *m = &S->plan[S->n_plan++];
    memset(m, 0, sizeof *m);
    m->epoch = epoch;
    for (const char *p = ids; *p; p++)
        m->ids[m->n++] = (uint32_t)(*p - '0');
}

/* 3 -> 4 -> 5 -> 4 (without the primary, server 0) -> 3 (without 1). */
static void plan_grow_shrink(void)
{
    plan_add(1, "0123");
    plan_add(2, "01234");
    plan_add(3, "1234");
    plan_add(4, "234");
}

static const membership *newest_membership(void)
{
    const membership *m = &S->initial;
    for (uint32_t g = 0; g < S->n; g++)
        if (S->r[g].exists && S->r[g].mem.epoch > m->epoch)
            m = &S->r[g].mem;
    return m;
}

/* Run with proposals until the plan is done (and `extra` steps more). */
static void run_plan(int max_steps, int extra)
{
    int k = 0;
    for (; k < max_steps && !S->failure[0] && S->plan_next < S->n_plan; k++) {
        step();
        propose_some();
    }
    for (int j = 0; j < extra && !S->failure[0]; j++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "seed %u: %s\n  %s", S->seed0, S->failure, replay());
    if (S->plan_next < S->n_plan && debug_level())
        dump();
    SIM_ASSERT(S->plan_next == S->n_plan, "seed %u: stuck before epoch %llu (newest %llu)\n  %s",
                  S->seed0, (unsigned long long)S->plan[S->plan_next < S->n_plan ? S->plan_next : 0].epoch,
                  (unsigned long long)newest_membership()->epoch, replay());
}

START_TEST(test_grow_and_shrink)
{
    sim_init2(5, 3, 11);
    plan_grow_shrink();
    S->plan_gap_ms = S->plan_after_ms = 1000;
    uint64_t mark[5] = { 0 };
    for (int k = 0; k < 20000 && !S->failure[0] && S->plan_next < S->n_plan; k++) {
        step();
        propose_some();
        mark[S->plan_next] = S->max_committed;
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    ck_assert_uint_eq(S->plan_next, S->n_plan);
    /* ops were committed in every epoch on the way */
    for (int i = 1; i < 4; i++)
        ck_assert_uint_gt(mark[i], mark[i - 1] + 20);
    for (int k = 0; k < 300; k++) {
        step();
        propose_some();
    }
    /* server 0 learned it was removed when it applied epoch 3's barrier,
     * and server 1 with epoch 4's */
    ck_assert_uint_eq(S->r[0].removed_epoch, 3);
    ck_assert_uint_eq(S->r[1].removed_epoch, 4);
    ck_assert(!pl_vr_is_member(S->r[0].vr));
    ck_assert(!pl_vr_is_member(S->r[1].vr));
    for (uint32_t g = 2; g < 5; g++)
        ck_assert_uint_eq(S->r[g].removed_epoch, 0);
    check_converged_in(&S->plan[3], 1);
    ck_assert_uint_eq(S->barriers_proposed, 4);
    sim_free();
}
END_TEST

/* Random faults over the whole universe while the plan runs: crashes and
 * restarts of any server (learners too, at most f of the memberships that
 * matter down), crashes right after applying a barrier and between
 * applying it and entering its epoch, isolation, one-way cuts, drops. */
static unsigned removed_learned;

static void member_fault_run(unsigned seed, int fault_steps)
{
    sim_init2(5, 3, seed);
    S->membership = 1;
    plan_grow_shrink();
    S->plan_gap_ms = S->plan_after_ms = 200 + rnd() % 800;
    if (S->mx.swarm) {
        S->crash_after_barrier_pct = (int)(rnd() % 40);
        S->crash_before_reconf_pct = (int)(rnd() % 20);
        S->crash_after_propose_pct = (int)(rnd() % 50);
    } else {
        S->crash_after_barrier_pct = 25;
        S->crash_before_reconf_pct = 10;
        S->crash_after_propose_pct = 30;
    }
    uint32_t n = S->n;
    for (int k = 0; k < fault_steps && !S->failure[0]; k++) {
        step();
        propose_some();
        if (S->mx.swarm) {
            swarm_faults(n);
            continue;
        }
        unsigned x = rnd() % 1000;
        if (x < 8) {
            uint32_t i = rnd() % n;
            if (S->r[i].up && may_crash(i))
                crash(i);
        } else if (x < 18) {
            uint32_t i = rnd() % n;
            if (S->r[i].exists && !S->r[i].up)
                start_replica(i);
        } else if (x < 22) {
            isolate(rnd() % n, 1);
        } else if (x < 25) {
            uint32_t a = rnd() % n, b = rnd() % n; /* cut one link, one way */
            S->cut[a][b] = 1;
        } else if (x < 34) {
            memset(S->cut, 0, sizeof S->cut);
        } else if (x < 36) {
            S->drop_pct = (int)(rnd() % 20);
        }
    }
    SIM_ASSERT(!S->failure[0], "seed %u: %s\n  %s", seed, S->failure, replay());
    S->crash_after_barrier_pct = S->crash_before_reconf_pct = S->crash_after_propose_pct = 0;
    heal();
    run_plan(30000, 300);
    check_converged_in(&S->plan[S->n_plan - 1], 1);
    /* a removed server that was down (or missed the primary's word) when
     * its removal committed stays in its old epoch: the new members drop
     * what it sends */
    SIM_ASSERT(S->r[0].removed_epoch == 3 || S->r[0].mem.epoch < 3,
                  "seed %u: server 0 entered epoch %llu without learning it was removed\n  %s",
                  seed, (unsigned long long)S->r[0].mem.epoch, replay());
    SIM_ASSERT(S->r[1].removed_epoch == 4 || S->r[1].mem.epoch < 4,
                  "seed %u: server 1 entered epoch %llu without learning it was removed\n  %s",
                  seed, (unsigned long long)S->r[1].mem.epoch, replay());
    removed_learned += (S->r[0].removed_epoch == 3) + (S->r[1].removed_epoch == 4);
    sim_free();
}

static void run_member(unsigned seed) { member_fault_run(seed, 4000); }

/* Issue 17: the same cut, across membership epochs. */
static const unsigned regress_member[] = { 100301, 732094, 203806, 302457, 0 };
/* 1146135166: a server recovering in an old epoch asked the primary of its
 * old view (a removed server, behind it) every tick and, on the same rate
 * limit, never got to ask the new epoch's servers: stuck at op 1536 of 1880.
 * 1915602800: a late START-VIEW of its old view made a recovering server cut
 * the new epoch's barrier it had applied.
 * 3360275283: a primary of 30 ms carried into the next epoch served at once
 * while the primary it replaced still held its lease (I3).
 * 3360312582: between applying a barrier (peer slots switched) and entering
 * the epoch, one backup's acknowledgements counted for two slots (I3). */
static const unsigned regress_member_swarm[] = { 1146135166, 1915602800, 3360275283,
                                                 3360312582, 0 };
static const seed_case case_member = { "membership", run_member, 900, 100, 1, 20,
                                       regress_member, regress_member_swarm };

START_TEST(test_membership_faults)
{
    memset(&stats, 0, sizeof stats);
    removed_learned = 0;
    run_case(&case_member);
    if (debug_level())
        fprintf(stderr, "removed servers that learned it: %u; EPOCH_STATE delivered %lu, "
                "crashes after a barrier %lu, before entering its epoch %lu, restarts resuming "
                "an epoch %lu, barriers proposed %lu\n", removed_learned,
                stats.epoch_state, stats.crash_after, stats.crash_before,
                stats.restarts_mid_epoch, stats.barriers);
}
END_TEST

/* VRSIM_FRESH_S=T: T seconds of seeds nobody chose, across every
 * randomized case in turn, swarm mix. The base seed comes from the clock
 * (or VRSIM_SEED) and is printed first; a failure names the command that
 * replays it. */
START_TEST(test_fresh)
{
    static const seed_case *cases[] = { &case3, &case5, &case_even, &case_member };
    double budget = atof(getenv("VRSIM_FRESH_S"));
    unsigned base = getenv("VRSIM_SEED") ? (unsigned)strtoul(getenv("VRSIM_SEED"), NULL, 10)
                                         : (unsigned)time(NULL) * 2654435761u ^ (unsigned)getpid() << 16;
    fprintf(stderr, "vr fresh seeds: base %u, %.0f s (seed base+k runs case k %% 4: random3, "
            "random5, random-even, membership)\n", base, budget);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned k = 0;
    use_swarm = 1;
    do {
        const seed_case *c = cases[k % 4];
        cur_case = c->name;
        c->run(base + k);
        k++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 < budget);
    use_swarm = 0;
    fprintf(stderr, "vr fresh seeds: %u seeds from base %u, all passed\n", k, base);
}
END_TEST

/* Servers down during whole membership changes catch up across epochs
 * (EPOCH_STATE): server 2 misses epochs 1 and 2; server 1 misses epoch 3,
 * in which it is the first server (so epoch 3 starts with a view change),
 * and takes the primary back once it has caught up. */
START_TEST(test_down_across_epochs)
{
    sim_init2(5, 3, 21);
    plan_grow_shrink();
    S->plan_gap_ms = S->plan_after_ms = 500;
    for (int k = 0; k < 50; k++) {
        step();
        propose_some();
    }
    crash(2);
    int k = 0;
    for (; k < 20000 && !S->failure[0] && S->plan_next < 2; k++) {
        step();
        propose_some();
    }
    /* epoch 2 entered somewhere; hold the plan while 2 catches up */
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    S->plan_after_ms = UINT64_MAX;
    for (k = 0; k < 2000 && !S->failure[0] && S->plan_next < 2; k++) {
        step();
        propose_some();
    }
    for (k = 0; k < 200; k++) {
        step();
        propose_some();
    }
    ck_assert_uint_eq(S->r[0].mem.epoch, 2);
    ck_assert_uint_eq(S->r[2].mem.epoch, 0);
    start_replica(2);
    for (k = 0; k < 3000 && S->r[2].mem.epoch < 2; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    SIM_ASSERT(S->r[2].mem.epoch == 2, "server 2 did not catch up to epoch 2");
    crash(1);
    S->plan_after_ms = S->now;
    for (k = 0; k < 20000 && !S->failure[0] && S->plan_next < 3; k++) {
        step();
        propose_some();
    }
    S->plan_after_ms = UINT64_MAX;
    for (k = 0; k < 300; k++) {
        step();
        propose_some();
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    ck_assert_uint_eq(S->r[2].mem.epoch, 3);
    ck_assert_uint_eq(S->r[1].mem.epoch, 2);
    /* epoch 3 serves without its first server */
    int serving = 0;
    for (uint32_t g = 2; g < 5; g++)
        serving += pl_vr_can_serve(S->r[g].vr, lnow(g));
    ck_assert_int_eq(serving, 1);
    uint64_t c = S->max_committed;
    start_replica(1);
    membership e3 = S->plan[2];
    check_converged_in(&e3, 1); /* 1 catches up and gets the primary back */
    ck_assert_uint_gt(S->max_committed, c);
    S->plan_after_ms = S->now;
    run_plan(20000, 300);
    check_converged_in(&S->plan[3], 1);
    ck_assert_uint_eq(S->r[1].removed_epoch, 4);
    sim_free();
}
END_TEST

/* Replace a crashed server by a new one in a single change (same
 * position). The old server coming back later is not a member: the new
 * members drop what it sends and nothing changes for them. */
START_TEST(test_replace_crashed_server)
{
    sim_init2(4, 3, 31);
    for (int k = 0; k < 200; k++) {
        step();
        propose_some();
    }
    crash(2);
    plan_add(1, "013");
    S->plan_after_ms = S->now + 500;
    run_plan(20000, 500);
    check_converged_in(&S->plan[0], 1);
    uint64_t view = pl_vr_view(S->r[0].vr);
    start_replica(2);
    for (int k = 0; k < 1500; k++) {
        step();
        propose_some();
        ck_assert(!pl_vr_can_serve(S->r[2].vr, lnow(2)));
    }
    SIM_ASSERT(!S->failure[0], "%s", S->failure);
    ck_assert_uint_eq(pl_vr_view(S->r[0].vr), view);
    ck_assert_uint_eq(S->r[2].mem.epoch, 0);
    check_converged_in(&S->plan[0], 1);
    sim_free();
}
END_TEST

/* A removed backup learns it was removed when it applies the change; the
 * remaining two servers (a quorum of both) carry on. */
START_TEST(test_removed_server_learns)
{
    sim_init2(3, 3, 41);
    plan_add(1, "01");
    S->plan_after_ms = 500;
    run_plan(20000, 200);
    ck_assert_uint_eq(S->r[2].removed_epoch, 1);
    ck_assert(!pl_vr_is_member(S->r[2].vr));
    ck_assert(pl_vr_is_member(S->r[0].vr) && pl_vr_is_member(S->r[1].vr));
    ck_assert_str_eq(pl_vr_role(S->r[2].vr, S->now), "learner");
    check_converged_in(&S->plan[0], 1);
    sim_free();
}
END_TEST

int main(int argc, char **argv)
{
    (void)argc;
    prog = argv[0];
    pl_log_set_level(PL_LOG_ERROR);
    /* crashes inside durable writes make VR log errors by the hundred;
     * VRSIM_DEBUG shows them */
    pl_log_set_quiet(!debug_level());
    Suite *s = suite_create("vr");
    /* one tcase per randomized case, so CK_RUN_CASE=name replays one */
    struct { const char *name; const TTest *test; } cases[] = {
        { "directed", NULL },
        { "random3", test_random_3 },
        { "random5", test_random_5 },
        { "random-even", test_random_even },
        { "membership", test_membership_faults },
    };
    if (getenv("VRSIM_FRESH_S")) {
        TCase *tc = tcase_create("fresh");
        tcase_set_timeout(tc, atoi(getenv("VRSIM_FRESH_S")) + 600);
        tcase_add_test(tc, test_fresh);
        suite_add_tcase(s, tc);
    } else {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            TCase *tc = tcase_create(cases[i].name);
            tcase_set_timeout(tc, 600);
            if (cases[i].test) {
                tcase_add_test(tc, cases[i].test);
            } else {
                tcase_add_test(tc, test_steady_state);
                tcase_add_test(tc, test_async_start_view_keeps_unsynced_op);
                tcase_add_test(tc, test_async_primary_counts_only_synced);
                tcase_add_test(tc, test_single_server);
                tcase_add_test(tc, test_primary_crash_and_failback);
                tcase_add_test(tc, test_backup_vouches_for_primary);
                tcase_add_test(tc, test_minority_partition_cannot_commit);
                tcase_add_test(tc, test_missed_start_view_keeps_acked_ops);
                tcase_add_test(tc, test_grow_and_shrink);
                tcase_add_test(tc, test_removed_server_learns);
                tcase_add_test(tc, test_replace_crashed_server);
                tcase_add_test(tc, test_down_across_epochs);
            }
            suite_add_tcase(s, tc);
        }
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
