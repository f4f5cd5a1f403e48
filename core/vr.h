/*
 * core/vr.h — Viewstamped Replication with durable state and a
 * priority-ordered primary (DESIGN.md §4).
 *
 * Socket-free and clock-free: messages and ticks go in, messages, durable
 * writes and commit notifications come out through pl_vr_io. The network
 * (core/peer.c) and the store sit behind that interface, so the protocol runs
 * in tests with no sockets and no clock (tests/unit/test_vr.c drives N
 * replicas in one process, cutting links, crashing and restarting them).
 *
 * References are to Liskov & Cowling, "Viewstamped Replication Revisited"
 * (MIT-CSAIL-TR-2012-021), §4.1 normal operation, §4.2 view changes, §5.2
 * state transfer. Differences, all because parley's state is durable:
 *  - no recovery protocol (§4.3): a restarted replica keeps its durable view,
 *    last normal view and log, so it never votes twice in a view;
 *  - DO-VIEW-CHANGE and START-VIEW carry only the log suffix after an
 *    "anchor" (op, view) instead of the whole log; a replica whose entry at
 *    the anchor has another view (or none) fetches the missing part by state
 *    transfer before it acts in the new view;
 *  - priority failback: the primary hands over to a higher-priority replica
 *    (lower index) that has caught up, by starting a view change to that
 *    replica's next view;
 *  - leases: a primary that has not heard from a majority within the lease
 *    stops serving, and a new primary waits one lease before serving, so a
 *    deposed primary never answers a read the new one would answer
 *    differently.
 *
 * Prefix: pl_vr_.
 */
#ifndef PL_CORE_VR_H
#define PL_CORE_VR_H

#include <stdbool.h>
#include <parley/store.h>

#define PL_VR_MAX_REPLICAS 16

/* Leases assume every server's clock advances at a rate within this many
 * parts per million of real time (1%: far beyond what quartz or NTP-slewed
 * clocks do, so a VM's stolen ticks fit too). A primary counts its lease as
 * lease_ms * (1 - drift) / (1 + drift) of its own clock, a new primary waits
 * a whole lease_ms of its own: in real time the first never outlasts the
 * second, however the two clocks drift within the bound. */
#define PL_VR_CLOCK_DRIFT_PPM 10000u

/* Membership epochs live in the view number's high bits, so every view
 * comparison orders epochs first: view = (epoch << 40) | view-in-epoch. A
 * new epoch starts at view-in-epoch 0, whose primary is the new
 * membership's first (highest-priority) server. */
#define PL_VR_EPOCH_SHIFT 40
#define PL_VR_EPOCH(view) ((uint64_t)(view) >> PL_VR_EPOCH_SHIFT)
#define PL_VR_IN_EPOCH(view) ((uint64_t)(view) & ((1ull << PL_VR_EPOCH_SHIFT) - 1))
#define PL_VR_EPOCH_VIEW(epoch) ((uint64_t)(epoch) << PL_VR_EPOCH_SHIFT)

enum pl_vr_msg_type {
    PL_VR_PREPARE = 1,     /* primary -> backups: entries (anchor_op, op], commit */
    PL_VR_PREPARE_OK = 2,  /* backup -> primary: all entries <= op are durable here */
    PL_VR_COMMIT = 3,      /* primary -> backups: heartbeat with commit */
    PL_VR_SVC = 4,         /* START-VIEW-CHANGE(view) to all */
    PL_VR_DVC = 5,         /* DO-VIEW-CHANGE(view, lnv, op, commit, suffix) to the new primary */
    PL_VR_START_VIEW = 6,  /* new primary -> all: suffix after the anchor, op, commit */
    PL_VR_GET_STATE = 7,   /* lagging replica -> primary: send entries after op */
    PL_VR_NEW_STATE = 8,   /* primary -> lagging replica: entries (anchor_op, op], commit */
    PL_VR_EPOCH_STATE = 9, /* replica of a newer epoch -> one of an older epoch:
                              committed entries (anchor_op, ...], commit */
    PL_VR__COUNT
};

typedef struct pl_vr_msg {
    uint32_t type;
    uint32_t from;
    uint64_t view;
    uint64_t op;           /* meaning depends on type, see above */
    uint64_t commit;
    uint64_t lnv;          /* DVC: sender's last normal view */
    uint64_t anchor_op;    /* entries start at anchor_op + 1 */
    uint64_t anchor_view;  /* view of the sender's entry at anchor_op (0 if anchor_op is 0) */
    uint64_t ts;           /* PREPARE/COMMIT: primary's clock; echoed in PREPARE_OK (leases) */
    const pl_log_entry *entries; /* borrowed for the duration of the call */
    uint32_t n_entries;
} pl_vr_msg;

typedef struct pl_vr_io {
    void *ud;
    /* Durable log (the store). append/truncate are durable on return. */
    int (*append)(void *ud, const pl_log_entry *e, size_t n);
    int (*truncate)(void *ud, uint64_t after);
    int (*read)(void *ud, uint64_t from, uint64_t to, pl_log_cb cb, void *cbud);
    /* Durable replica metadata: "view", "lnv", "prepared". */
    int (*save_meta)(void *ud, const char *key, uint64_t val);
    /* Send to replica `to` (best effort; may be dropped). */
    void (*send)(void *ud, uint32_t to, const pl_vr_msg *m);
    /* Every entry <= commit is committed: apply them in order. */
    void (*committed)(void *ud, uint64_t commit);
    /* Role, view or status changed (the server fails waiting requests whose
     * outcome it can no longer know, and logs the change). */
    void (*changed)(void *ud);
    /* First op-number still in the log (0 when empty): entries below it were
     * compacted into the store's state. */
    uint64_t (*log_first)(void *ud);
    /* Replica `to` needs entries we compacted away: send it a snapshot of
     * the state (pl_vr_snapshot_installed runs on its side). */
    void (*need_snapshot)(void *ud, uint32_t to);
    /* Does this entry end its epoch (a membership change)? Nothing may
     * follow it in the same epoch. NULL: no entry does. */
    int (*is_barrier)(void *ud, const pl_log_entry *e);
    /* Optional: append without waiting for the disk (a primary's proposals,
     * a backup's PREPAREs). The entries are in the log at once (read sees
     * them) and a crash keeps a prefix of the log; the host makes them
     * durable in the background and reports it with pl_vr_synced. Until
     * then they count toward no commit and no PREPARE-OK. append and
     * truncate still make the whole log durable. NULL: append everywhere. */
    int (*append_async)(void *ud, const pl_log_entry *e, size_t n);
    /* Make every entry appended durable before returning (required with
     * append_async; VR calls it before it saves a last normal view). */
    int (*flush)(void *ud);
} pl_vr_io;

typedef struct pl_vr_config {
    uint32_t n;                    /* voting replicas, config order = priority */
    uint32_t self;                 /* >= n: not a member (a learner or a removed server) */
    uint32_t n_learners;           /* slots n .. n + n_learners - 1: non-voting
                                      replicas the primary streams the log to */
    uint32_t election_timeout_ms;  /* backup: silence before a view change */
    uint32_t heartbeat_ms;         /* primary: COMMIT when idle this long */
    uint32_t lease_ms;             /* 0 = election_timeout_ms / 2 */
    bool failback;                 /* hand the primary back to higher priority */
    uint32_t max_batch;            /* entries per PREPARE / NEW_STATE message */
    uint32_t window;               /* max uncommitted ops the primary holds */
} pl_vr_config;

/* Durable state found at start-up. */
typedef struct pl_vr_durable {
    uint64_t view;
    uint64_t lnv;
    uint64_t op;                   /* last op in the log */
    uint64_t op_view;              /* view of that entry */
    uint64_t commit;               /* known committed (the store's applied op) */
    uint64_t epoch_start;          /* op that started the current epoch (0 for epoch 0) */
    uint64_t barrier;              /* an epoch-ending entry above epoch_start in the log, or 0 */
    uint64_t prepared;             /* saved as "prepared": 1 + the last view in which this
                                      replica sent a PREPARE as primary (0: never) */
} pl_vr_durable;

enum pl_vr_status { PL_VR_NORMAL = 0, PL_VR_VIEW_CHANGE = 1, PL_VR_RECOVERING = 2 };

typedef struct pl_vr pl_vr;

pl_vr *pl_vr_new(const pl_vr_config *cfg, const pl_vr_io *io,
                 const pl_vr_durable *d, uint64_t now_ms);
void pl_vr_free(pl_vr *vr);

/* A snapshot of the state at op (whose log entry had view op_view), sent by
 * the primary of `view`, replaced this replica's state and log: continue
 * from there (state transfer, §5.2, for a compacted log). */
void pl_vr_snapshot_installed(pl_vr *vr, uint64_t view, uint64_t op, uint64_t op_view,
                              uint64_t now_ms);

/* A membership change was applied (the barrier entry at start_op is
 * committed): enter epoch `epoch` with n voting replicas, self our slot
 * (>= n: not a member). A primary first tells the old configuration the
 * commit number. Every replica that enters the epoch this way holds exactly
 * the log up to start_op, so the epoch's first view needs no view change:
 * its primary is slot 0. Ignored when we are already in that epoch or later. */
void pl_vr_reconfigure(pl_vr *vr, uint64_t epoch, uint32_t n, uint32_t self, uint64_t start_op,
                       uint64_t now_ms);
/* Primary: stream the log to slots n .. n + count - 1 as non-voting
 * learners (count 0 stops). */
void pl_vr_set_learners(pl_vr *vr, uint32_t count);
/* A barrier entry is in the log above the epoch's start: no more proposals
 * in this epoch. */
uint64_t pl_vr_barrier(const pl_vr *vr);
bool pl_vr_is_member(const pl_vr *vr);
uint32_t pl_vr_n(const pl_vr *vr);

/* Time passes. Call every few ms (heartbeat_ms / 4 or finer). */
void pl_vr_tick(pl_vr *vr, uint64_t now_ms);
/* A message from a peer. */
void pl_vr_receive(pl_vr *vr, const pl_vr_msg *m, uint64_t now_ms);

/* Primary only: append entries (their op/view fields are filled in here:
 * pl_vr_op() + 1, + 2, ...) to the log (durably, or through io.append_async)
 * and send PREPARE. io->committed may be
 * called before this returns (a single server commits at once), so register
 * whatever waits for these op-numbers before calling. Returns PL_OK and the first op-number assigned,
 * PL_ERR_NOT_PRIMARY, PL_ERR_UNAVAILABLE (view change, no lease, window
 * full), or a store error. */
int pl_vr_propose(pl_vr *vr, pl_log_entry *entries, size_t n, uint64_t *first_op,
                  uint64_t now_ms);

/* The host made the log durable up to op (io.append_async): every entry
 * appended before the sync began, which it read from pl_vr_op() and
 * pl_vr_log_gen() then. A primary commits what a quorum now holds, a
 * backup sends the PREPARE-OK it held back. A stale report (the log was
 * cut since: gen differs) is ignored. */
void pl_vr_synced(pl_vr *vr, uint64_t op, uint64_t gen, uint64_t now_ms);
uint64_t pl_vr_log_gen(const pl_vr *vr);
/* Highest op-number durable in the local log. */
uint64_t pl_vr_synced_op(const pl_vr *vr);

/* May this replica answer clients now? True only for a primary in normal
 * status whose lease holds (a majority heard within lease_ms, and one lease
 * passed since it became primary). */
bool pl_vr_can_serve(const pl_vr *vr, uint64_t now_ms);

/* May this backup name the primary to a client as one that serves? True
 * when it is a backup in normal status that heard the current view's
 * primary (PREPARE, COMMIT, NEW-STATE, START-VIEW) less than fresh_ms ago,
 * and first heard it in this view at least one lease ago (a new primary
 * waits a lease before serving). False on a primary, during a view change
 * or recovery, after a silence, and right after a restart: then the server
 * cannot say who serves (core/server.c holds client calls until it can). */
bool pl_vr_vouches(const pl_vr *vr, uint64_t now_ms, uint64_t fresh_ms);

bool pl_vr_is_primary(const pl_vr *vr);
uint32_t pl_vr_primary(const pl_vr *vr);  /* primary of the current view */
uint64_t pl_vr_view(const pl_vr *vr);
uint64_t pl_vr_lnv(const pl_vr *vr);        /* last normal view */
uint64_t pl_vr_op(const pl_vr *vr);
uint64_t pl_vr_commit(const pl_vr *vr);
int pl_vr_status(const pl_vr *vr);        /* enum pl_vr_status */
const char *pl_vr_role(const pl_vr *vr, uint64_t now_ms); /* "primary", "backup", "view-change", "recovering" */
/* Primary: highest op known durable on replica (or learner slot) i (0 if unknown). */
uint64_t pl_vr_acked(const pl_vr *vr, uint32_t i);

#endif
