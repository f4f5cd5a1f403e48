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
 * This file's implementation is the single-server "local durable commit".
 * The replication module replaces the commit step ("append locally" becomes
 * "append + PREPARE + wait for a quorum") behind the same submit/done
 * contract, so the request code in server.c does not change.
 *
 * Prefix: pl_seq_.
 */
#ifndef PL_CORE_SEQ_H
#define PL_CORE_SEQ_H

#include <parley/store.h>
#include "chat.h"

struct event_base;
typedef struct pl_seq pl_seq;

/* One submitted op is finished. err == PL_OK: committed and applied as
 * op-number op; res is its result (valid during the call only: it points
 * into the pl_chat). Otherwise the op is not known to be applied: res is
 * NULL and err says why (PL_ERR_IO: the log write failed, PL_ERR_UNAVAILABLE:
 * the sequencer shut down before the op was written). */
typedef void (*pl_seq_done_fn)(void *ud, int err, uint64_t op, const pl_apply_result *res);

typedef struct pl_seq_host {
    void *ud;
    /* Called for every applied op, after its done callback, whoever
     * submitted it: the server pushes the new message to live subscribers
     * and drops revoked subscriptions here. res is valid during the call. */
    void (*applied)(void *ud, uint64_t op, const pl_apply_result *res);
} pl_seq_host;

/* The store and chat are borrowed and must outlive the sequencer.
 * max_batch: ops per log write (0 = 512). */
pl_seq *pl_seq_new(struct event_base *base, const pl_store_plugin *sp, pl_store *st,
                   pl_chat *chat, uint32_t max_batch, const pl_seq_host *host,
                   char *err, size_t errlen);

/* Crash recovery: apply the durable log from the store's applied_op() + 1 to
 * its last entry, so an op appended before a crash but not yet applied is not
 * lost. Called once before serving (and again by the sequencer itself if a
 * previous apply failed). Returns PL_OK or the store/decode error, with a
 * one-line reason in err. */
int pl_seq_replay(pl_seq *q, char *err, size_t errlen);

/* Queue op for the next batch. The op and everything it points to are
 * copied (encoded) before this returns. done is always called exactly once,
 * later, on the loop thread; never from inside pl_seq_submit. */
int pl_seq_submit(pl_seq *q, const pl_op *op, pl_seq_done_fn done, void *ud);

/* Ops submitted whose done callback has not run yet. */
uint32_t pl_seq_pending(const pl_seq *q);
/* Highest op-number in the log. */
uint64_t pl_seq_last_op(const pl_seq *q);
/* Primary's view (0 for a single server). */
uint64_t pl_seq_view(const pl_seq *q);

/* Flush everything queued, then fail (PL_ERR_UNAVAILABLE) whatever could not
 * be written, and free. */
void pl_seq_free(pl_seq *q);

#endif
