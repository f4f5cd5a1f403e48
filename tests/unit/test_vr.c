/*
 * tests/unit/test_vr.c — the VR module in a simulated cluster: N replicas in
 * one process, an in-memory durable log per replica, a message network with
 * delays, drops and partitions, crashes that keep only durable state, and a
 * simulated clock (the canonical/raft fixture idea). Randomized runs check
 * the invariants of DESIGN.md §6 after every step:
 *   I1 an op committed anywhere is in every replica's log at the same
 *      op-number once the cluster has healed and settled;
 *   I2 no two replicas ever commit different ops at the same op-number.
 * Each run prints its seed on failure so it replays exactly.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "vr.h"

#define MAXN 7
#define MAXOPS 20000

typedef struct entry {
    uint64_t view;
    char data[24];
} entry;

typedef struct replica {
    int up;
    pl_vr *vr;
    entry *log; /* log[1..nlog] */
    uint64_t nlog;
    uint64_t view, lnv; /* durable meta */
    uint64_t applied;   /* what committed() has applied */
} replica;

typedef struct msg {
    uint64_t deliver_at;
    uint32_t to;
    pl_vr_msg m;
    pl_log_entry *e;
    struct msg *next;
} msg;

typedef struct sim {
    uint32_t n;
    replica r[MAXN];
    msg *queue;
    uint64_t now;
    unsigned seed;
    int cut[MAXN][MAXN];   /* 1 = link i->j drops everything */
    int drop_pct;
    char committed[MAXOPS][24]; /* first commit seen per op */
    uint64_t max_committed;
    uint32_t cur;          /* replica whose callback is running */
    uint64_t proposals, acked;
    char failure[512];
} sim;

static sim *S;

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

/* ---- io callbacks; ud is the replica index ---- */

static int io_append(void *ud, const pl_log_entry *e, size_t n)
{
    replica *r = &S->r[(uintptr_t)ud];
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
    return PL_OK;
}

static int io_truncate(void *ud, uint64_t after)
{
    replica *r = &S->r[(uintptr_t)ud];
    if (after < r->applied)
        sim_fail("truncate below applied: after %llu applied %llu", (unsigned long long)after, (unsigned long long)r->applied);
    if (after < r->nlog)
        r->nlog = after;
    return PL_OK;
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
    if (!strcmp(key, "view"))
        r->view = val;
    else if (!strcmp(key, "lnv"))
        r->lnv = val;
    return PL_OK;
}

static void io_send(void *ud, uint32_t to, const pl_vr_msg *m)
{
    uint32_t from = (uint32_t)(uintptr_t)ud;
    if (S->cut[from][to] || (S->drop_pct && (int)(rnd() % 100) < S->drop_pct))
        return;
    msg *q = calloc(1, sizeof *q);
    q->to = to;
    q->m = *m;
    q->deliver_at = S->now + 1 + rnd() % 30;
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
}

static void io_committed(void *ud, uint64_t commit)
{
    uint32_t i = (uint32_t)(uintptr_t)ud;
    replica *r = &S->r[i];
    if (commit > r->nlog) {
        sim_fail("commit %llu beyond log %llu", (unsigned long long)commit, (unsigned long long)r->nlog);
        return;
    }
    for (uint64_t op = r->applied + 1; op <= commit; op++) {
        if (S->committed[op][0] == 0) {
            memcpy(S->committed[op], r->log[op].data, 24);
        } else if (strcmp(S->committed[op], r->log[op].data) != 0) {
            sim_fail("I2 violated: two different ops committed at op %llu (replica %llu)",
                     (unsigned long long)op, i);
        }
        if (op > S->max_committed)
            S->max_committed = op;
    }
    if (commit > r->applied)
        r->applied = commit;
}

static void io_changed(void *ud)
{
    (void)ud;
}

static void start_replica(uint32_t i)
{
    replica *r = &S->r[i];
    pl_vr_config cfg = { .n = S->n, .self = i, .election_timeout_ms = 300,
                         .heartbeat_ms = 30, .failback = true, .max_batch = 16,
                         .window = 256 };
    pl_vr_io io = { (void *)(uintptr_t)i, io_append, io_truncate, io_read, io_save,
                    io_send, io_committed, io_changed, NULL, NULL };
    pl_vr_durable d = { r->view, r->lnv, r->nlog, r->nlog ? r->log[r->nlog].view : 0,
                        r->applied };
    r->vr = pl_vr_new(&cfg, &io, &d, S->now);
    r->up = 1;
}

static void crash(uint32_t i)
{
    replica *r = &S->r[i];
    if (!r->up)
        return;
    pl_vr_free(r->vr);
    r->vr = NULL;
    r->up = 0;
}

static void free_msg(msg *q)
{
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
        if (q->deliver_at <= S->now) {
            *pp = q->next;
            if (S->r[q->to].up && !S->cut[q->m.from][q->to])
                pl_vr_receive(S->r[q->to].vr, &q->m, S->now);
            free_msg(q);
        } else {
            pp = &q->next;
        }
    }
}

static void propose_some(void)
{
    for (uint32_t i = 0; i < S->n; i++) {
        replica *r = &S->r[i];
        if (!r->up || !pl_vr_can_serve(r->vr, S->now))
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
        pl_vr_propose(r->vr, e, k, &first, S->now);
    }
}

static void step(void)
{
    S->now += 10;
    deliver_due();
    for (uint32_t i = 0; i < S->n; i++)
        if (S->r[i].up)
            pl_vr_tick(S->r[i].vr, S->now);
}

static void sim_init(uint32_t n, unsigned seed)
{
    S = calloc(1, sizeof *S);
    S->n = n;
    S->seed = seed;
    for (uint32_t i = 0; i < n; i++) {
        S->r[i].log = calloc(MAXOPS + 1, sizeof(entry));
        start_replica(i);
    }
}

static void sim_free(void)
{
    for (uint32_t i = 0; i < S->n; i++) {
        crash(i);
        free(S->r[i].log);
    }
    while (S->queue) {
        msg *q = S->queue;
        S->queue = q->next;
        free_msg(q);
    }
    free(S);
    S = NULL;
}

static void heal(void)
{
    memset(S->cut, 0, sizeof S->cut);
    S->drop_pct = 0;
    for (uint32_t i = 0; i < S->n; i++)
        if (!S->r[i].up)
            start_replica(i);
}

/* After healing, everyone converges on one log and commit. */
static void check_converged(void)
{
    for (int k = 0; k < 3000 && !S->failure[0]; k++) {
        step();
        int same = 1;
        for (uint32_t i = 1; i < S->n; i++)
            if (pl_vr_commit(S->r[i].vr) != pl_vr_commit(S->r[0].vr) ||
                pl_vr_op(S->r[i].vr) != pl_vr_op(S->r[0].vr))
                same = 0;
        int primaries = 0;
        for (uint32_t i = 0; i < S->n; i++)
            primaries += pl_vr_can_serve(S->r[i].vr, S->now);
        if (same && primaries == 1 && pl_vr_commit(S->r[0].vr) == pl_vr_op(S->r[0].vr) &&
            pl_vr_commit(S->r[0].vr) >= S->max_committed)
            break;
    }
    ck_assert_msg(!S->failure[0], "seed %u: %s", S->seed, S->failure);
    uint64_t c = pl_vr_commit(S->r[0].vr);
    ck_assert_msg(c >= S->max_committed,
                  "I1: commit %llu below an op committed earlier (%llu)",
                  (unsigned long long)c, (unsigned long long)S->max_committed);
    for (uint32_t i = 0; i < S->n; i++) {
        ck_assert_msg(pl_vr_commit(S->r[i].vr) == c, "replica %u commit %llu != %llu", i,
                      (unsigned long long)pl_vr_commit(S->r[i].vr), (unsigned long long)c);
        for (uint64_t op = 1; op <= S->max_committed; op++)
            ck_assert_msg(strcmp(S->r[i].log[op].data, S->committed[op]) == 0,
                          "I1: replica %u op %llu holds %s, committed was %s", i,
                          (unsigned long long)op, S->r[i].log[op].data, S->committed[op]);
    }
    int primaries = 0;
    for (uint32_t i = 0; i < S->n; i++)
        primaries += pl_vr_can_serve(S->r[i].vr, S->now);
    ck_assert_int_eq(primaries, 1);
}

START_TEST(test_steady_state)
{
    sim_init(3, 1);
    for (int k = 0; k < 500; k++) {
        step();
        propose_some();
    }
    ck_assert_msg(!S->failure[0], "%s", S->failure);
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
        if (pl_vr_can_serve(S->r[1].vr, S->now))
            served = 1;
    }
    ck_assert_msg(served, "replica 1 took over");
    ck_assert_uint_gt(S->max_committed, before);
    heal(); /* restart 0: it catches up and gets the primary back */
    for (int k = 0; k < 1500; k++) {
        step();
        propose_some();
    }
    ck_assert_msg(pl_vr_can_serve(S->r[0].vr, S->now), "failback to replica 0");
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
    ck_assert(!pl_vr_can_serve(S->r[0].vr, S->now));
    int maj = 0;
    for (int i = 2; i < 5; i++)
        maj += pl_vr_can_serve(S->r[i].vr, S->now);
    ck_assert_int_eq(maj, 1);
    heal();
    check_converged();
    sim_free();
}
END_TEST

/* Random faults: crashes (at most f down), partitions, drops; then heal. */
static void random_run(uint32_t n, unsigned seed, int steps)
{
    sim_init(n, seed);
    uint32_t f = (n - 1) / 2;
    for (int k = 0; k < steps && !S->failure[0]; k++) {
        step();
        propose_some();
        unsigned x = rnd() % 1000;
        if (x < 6) {
            uint32_t down = 0;
            for (uint32_t i = 0; i < n; i++)
                down += !S->r[i].up;
            uint32_t i = rnd() % n;
            if (S->r[i].up && down < f)
                crash(i);
        } else if (x < 14) {
            uint32_t i = rnd() % n;
            if (!S->r[i].up)
                start_replica(i);
        } else if (x < 18) {
            uint32_t i = rnd() % n; /* isolate one replica */
            for (uint32_t j = 0; j < n; j++)
                S->cut[i][j] = S->cut[j][i] = (i != j);
        } else if (x < 21) {
            uint32_t a = rnd() % n, b = rnd() % n; /* cut one link, one way */
            S->cut[a][b] = 1;
        } else if (x < 30) {
            memset(S->cut, 0, sizeof S->cut);
        } else if (x < 32) {
            S->drop_pct = (int)(rnd() % 20);
        }
    }
    ck_assert_msg(!S->failure[0], "n=%u seed %u: %s", n, seed, S->failure);
    heal();
    for (int k = 0; k < 200; k++) {
        step();
        propose_some();
    }
    check_converged();
    sim_free();
}

START_TEST(test_random_3)
{
    for (unsigned seed = 100; seed < 140; seed++)
        random_run(3, seed, 3000);
}
END_TEST

START_TEST(test_random_5)
{
    for (unsigned seed = 200; seed < 230; seed++)
        random_run(5, seed, 3000);
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
    ck_assert(pl_vr_can_serve(S->r[0].vr, S->now));
    check_converged();
    sim_free();
}
END_TEST

int main(void)
{
    pl_log_set_level(PL_LOG_ERROR);
    Suite *s = suite_create("vr");
    TCase *tc = tcase_create("vr");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_steady_state);
    tcase_add_test(tc, test_single_server);
    tcase_add_test(tc, test_primary_crash_and_failback);
    tcase_add_test(tc, test_minority_partition_cannot_commit);
    tcase_add_test(tc, test_random_3);
    tcase_add_test(tc, test_random_5);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
