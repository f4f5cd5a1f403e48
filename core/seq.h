/*
 * core/seq.h — the sequencer: the one path by which an op becomes durable,
 * numbered and applied (group commit).
 *
 * The request code builds an op and calls pl_seq_submit(); the done callback
 * runs once the op is committed and applied (or has failed). Ops submitted
 * during one event-loop iteration are flushed together by one event: encoded,
 * given consecutive op-numbers, written to the store's log with ONE
 * log_append (one sync), applied with pl_chat_apply_batch, and then answered
 * in order. Batches are capped (max_batch); a longer queue continues in the
 * next loop iteration so other connections are served between batches.
 *
 * The commit step is Viewstamped Replication (vr.h): the batch is appended
 * to the local log and sent in one PREPARE; it is applied and answered once
 * f+1 servers hold it durably. A single server is the n = 1 case of the same
 * path (it commits as soon as its own append returns). Backups apply what
 * the primary commits through the same apply path.
 *
 * Prefix: pl_seq_.
 */
#ifndef PL_CORE_SEQ_H
#define PL_CORE_SEQ_H

#include <parley/store.h>
#include "chat.h"
#include "vr.h"

struct event_base;
typedef struct pl_seq pl_seq;

/* One submitted op is finished. err == PL_OK: committed and applied as
 * op-number op; res is its result (valid during the call only: it points
 * into the pl_chat). Otherwise the op is not known to be applied: res is
 * NULL and err says why (PL_ERR_IO: the log write failed; PL_ERR_NOT_PRIMARY:
 * this server is a backup; PL_ERR_UNAVAILABLE: no quorum or lease, a view
 * change, or shutdown — the op may or may not commit later, and a retry with
 * the same client id and request number is answered exactly once). */
typedef void (*pl_seq_done_fn)(void *ud, int err, uint64_t op, const pl_apply_result *res);

typedef struct pl_seq_host {
    void *ud;
    /* Called for every applied op, after its done callback, whoever
     * submitted it: the server pushes the new message to live subscribers
     * and drops revoked subscriptions here. res is valid during the call. */
    void (*applied)(void *ud, uint64_t op, const pl_apply_result *res);
    /* Replication. vr NULL: a single server (n = 1). */
    const pl_vr_config *vr;
    /* Send a VR message to server `to` (best effort). */
    void (*send)(void *ud, uint32_t to, const pl_vr_msg *m);
    /* Role or view changed (after the sequencer failed the ops it can no
     * longer answer for). */
    void (*changed)(void *ud);
    /* Called after every replication tick (every few ms): what depends on
     * time alone, such as a lease that starts or stops holding, is looked
     * at here. NULL: nothing to do. */
    void (*tick)(void *ud);
    /* Send a snapshot of the whole state to server `to` (state transfer past
     * a compacted log). Returns PL_OK if it was queued. */
    int (*send_snapshot)(void *ud, uint32_t to, uint64_t view, const uint8_t *data, size_t len);
    /* Log compaction: when the log holds more than compact_ops entries or
     * compact_bytes were appended since the last compaction, drop every
     * entry below applied - keep_ops + 1. 0 = defaults (100,000 ops,
     * 64 MiB, keep 10,000). */
    uint64_t compact_ops;
    uint64_t compact_bytes;
    uint64_t keep_ops;
    /* Membership (core/members.h). A RECONFIG op (or a snapshot from a
     * newer epoch) is being applied: make body (canonical membership JSON,
     * `op` the RECONFIG op-number) the membership in force, durably, before
     * the sequencer marks the op applied, and fill in the epoch, the number
     * of voting servers, our slot (>= n: not a member) and the op that
     * started the epoch (= op, or when op is 0 — a snapshot's membership —
     * the "op" the body names). Returns PL_OK, or an error and the apply is
     * retried. NULL: membership never changes. */
    int (*reconfigured)(void *ud, const uint8_t *body, size_t len, uint64_t op,
                        uint64_t *epoch, uint32_t *n, uint32_t *self, uint64_t *start);
    /* The membership in force, canonical JSON (malloc'd; caller frees), for
     * the header of every snapshot we send. */
    char *(*members_json)(void *ud);
    /* The membership found at start-up: its epoch and the op that started
     * it (0, 0 for the config file's list). */
    uint64_t epoch;
    uint64_t epoch_start;
    /* The store's ABI minor version (core/loader.h). From 1 on, the log is
     * written on the loop thread without a sync and made durable by a sync
     * thread while the loop goes on: a batch is acknowledged once its sync
     * has returned (and, in a cluster, a quorum holds it). 0: every append
     * syncs before it returns. */
    uint32_t store_minor;
    /* Group commit delay (config "group_commit"; store_minor >= 1 only): a
     * log sync starts no sooner than sync_delay_us after the previous one
     * started, unless sync_delay_bytes of log entries already wait for it,
     * so that more batches share one sync. 0: each sync starts as soon as
     * the one before it returns (pl_seq_host's zero value; the config's
     * default is 1000 us, 4096 bytes). */
    uint32_t sync_delay_us;
    uint32_t sync_delay_bytes;
} pl_seq_host;

/* How long the sync thread holds back a log sync (microseconds, 0: start
 * it now): the rest of delay_us since the previous sync started at
 * last_start_us, or 0 once delay_bytes or more wait, or with delay_us 0. */
uint64_t pl_sync_wait_us(uint64_t now_us, uint64_t last_start_us, uint64_t waiting_bytes,
                         uint32_t delay_us, uint32_t delay_bytes);

/* The store and chat are borrowed and must outlive the sequencer.
 * max_batch: ops per log write (0 = 512). */
pl_seq *pl_seq_new(struct event_base *base, const pl_store_plugin *sp, pl_store *st,
                   pl_chat *chat, uint32_t max_batch, const pl_seq_host *host,
                   char *err, size_t errlen);

/* Crash recovery: apply the durable log from the store's applied_op() + 1 up
 * to the commit number known at start (a single server: its last entry; in
 * a cluster: what the store had applied, the rest follows from the
 * primary), so an op appended before a crash but not yet applied is not
 * lost. Called once before serving (and again by the sequencer itself if a
 * previous apply failed). Returns PL_OK or the store/decode error, with a
 * one-line reason in err. */
int pl_seq_replay(pl_seq *q, char *err, size_t errlen);

/* Queue op for the next batch. The op and everything it points to are
 * copied (encoded) before this returns. done is always called exactly once,
 * later, on the loop thread; never from inside pl_seq_submit. */
int pl_seq_submit(pl_seq *q, const pl_op *op, pl_seq_done_fn done, void *ud);

/* A VR message from a peer. */
void pl_seq_receive(pl_seq *q, const pl_vr_msg *m);
/* One chunk of a snapshot from server `from`; installs it when complete. */
void pl_seq_snapshot_chunk(pl_seq *q, uint32_t from, uint64_t view, uint64_t offset,
                           uint64_t total, const uint8_t *data, size_t len);

/* The replication state (role, view, op, commit, lease). */
const pl_vr *pl_seq_vr(const pl_seq *q);
/* May this server answer clients now (primary with a valid lease, its
 * state applied through the commit number)? */
int pl_seq_can_serve(const pl_seq *q);

/* Ops submitted whose done callback has not run yet. */
uint32_t pl_seq_pending(const pl_seq *q);
/* Highest op-number in the log. */
uint64_t pl_seq_last_op(const pl_seq *q);
/* Primary's view (0 for a single server). */
uint64_t pl_seq_view(const pl_seq *q);
/* Primary: stream the log to `count` learner slots after the members
 * (pl_vr_set_learners); 0 stops. */
void pl_seq_set_learners(pl_seq *q, uint32_t count);

/* Flush everything queued, then fail (PL_ERR_UNAVAILABLE) whatever could not
 * be written, and free. */
void pl_seq_free(pl_seq *q);

#endif
