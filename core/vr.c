/*
 * core/vr.c — Viewstamped Replication, socket-free. See vr.h for the
 * protocol summary and how it differs from the paper.
 *
 * Invariants this file protects (DESIGN.md §6):
 *  I1 an op the primary reports committed is durable on f+1 replicas and
 *     survives every later view change;
 *  I2 every op committed at op-number k is the same op on every replica.
 * The comments name the paper step each handler implements.
 */
#include "vr.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

typedef struct vr_dvc {
    int have;
    uint64_t lnv, op, commit, anchor_op, anchor_view;
    pl_log_entry *entries; /* deep copies */
    uint32_t n_entries;
} vr_dvc;

struct pl_vr {
    pl_vr_config cfg;
    pl_vr_io io;
    /* Replicas besides us that a quorum needs: a quorum is a majority,
     * n / 2 + 1, so that any two intersect for an even n too (with
     * (n - 1) / 2 + 1, two halves of 4 replicas each formed a view and
     * committed different ops at one op-number). For odd n this is the
     * paper's f. */
    uint32_t f;

    uint64_t view;
    uint64_t lnv;
    int status;
    uint64_t op;          /* last op in the log */
    uint64_t op_view;     /* its view */
    uint64_t commit;
    uint64_t epoch_start;       /* op that started the current epoch */
    uint64_t barrier;           /* epoch-ending entry above epoch_start, or 0 */
    /* Recovering: our log agrees with the primary's up to here (at least
     * the commit number); entries after it are from earlier views and not
     * yet compared with the primary's. */
    uint64_t sync_op;

    /* backup */
    uint64_t last_heard_ms;     /* last PREPARE/COMMIT/START-VIEW from the primary */
    /* What a backup can tell a client about the primary (pl_vr_vouches):
     * the view it last heard the primary of, as a backup in normal status,
     * and when it first and last did so in that view. last_heard_ms above
     * is also reset by view changes and recovery, so it cannot say this. */
    uint64_t pv_view;
    uint64_t pv_first_ms, pv_last_ms;
    int pv_valid;
    uint64_t last_getstate_ms;
    /* asking a newer epoch has a rate limit of its own: a recovering
     * replica's requests to the primary of its old view (which may be a
     * removed server that knows nothing newer) must not starve it */
    uint64_t last_epoch_ask_ms;
    uint64_t last_epoch_ms[PL_VR_MAX_REPLICAS]; /* last cross-epoch answer to i */

    /* view change (§4.2) */
    uint64_t vc_start_ms;
    uint32_t svc_mask;          /* replicas known to be in view change for `view` */
    uint64_t svc_commit_min;    /* lowest commit number announced in those SVCs */
    int sent_dvc;
    vr_dvc dvc[PL_VR_MAX_REPLICAS];

    /* primary (§4.1) */
    uint64_t acked[PL_VR_MAX_REPLICAS];  /* highest op durable on replica i this view */
    uint64_t ack_ts[PL_VR_MAX_REPLICAS]; /* our clock when we sent what i acked last */
    uint64_t last_send_ms;
    uint64_t primary_since_ms;
    uint64_t prepared;          /* durable: 1 + last view we sent a PREPARE in */

    /* The log written but not yet durable (io.append_async): entries up to
     * synced are durable here. Only they count toward a commit (our own
     * vote as primary) or are acknowledged (as backup). log_gen changes
     * whenever the log is cut, so a sync that began before the cut cannot
     * vouch for the entries written at the same op-numbers after it. */
    uint64_t synced;
    uint64_t log_gen;
    int ok_pending;             /* backup: a PREPARE-OK waits for the sync */
    uint64_t ok_view, ok_ts;    /* its view and the timestamp it echoes */
};

/* ---- small helpers ---- */

static uint32_t primary_of(const pl_vr *vr, uint64_t view)
{
    return (uint32_t)(PL_VR_IN_EPOCH(view) % vr->cfg.n);
}

static int is_primary(const pl_vr *vr)
{
    return vr->status == PL_VR_NORMAL && primary_of(vr, vr->view) == vr->cfg.self;
}

static int is_member(const pl_vr *vr)
{
    return vr->cfg.self < vr->cfg.n;
}

/* A membership change (the barrier) is committed: nothing more happens in
 * this epoch. The server applies the change and then enters the next
 * epoch (pl_vr_reconfigure), but applying already switched its peer slot
 * table to the new membership, so a message of this epoch may now come
 * with the slot number of another server: an acknowledgement from server 2
 * counted for server 1 too made a lease (and could make a commit) out of
 * one backup. And a read answered now could miss what the next epoch
 * committed already. So from here until the next epoch, this epoch's
 * messages are dropped and nobody serves. */
static int epoch_over(const pl_vr *vr)
{
    return vr->barrier > vr->epoch_start && vr->commit >= vr->barrier;
}

/* Members, then the learners the primary streams to. */
static uint32_t slots(const pl_vr *vr)
{
    return vr->cfg.n + vr->cfg.n_learners;
}

/* Note barrier entries as they enter the log. */
static void note_barriers(pl_vr *vr, const pl_log_entry *e, size_t n)
{
    if (!vr->io.is_barrier)
        return;
    for (size_t i = 0; i < n; i++)
        if (e[i].op > vr->epoch_start && vr->io.is_barrier(vr->io.ud, &e[i]))
            vr->barrier = e[i].op;
}

/* The log was cut after `after`. */
static void cut_barrier(pl_vr *vr, uint64_t after)
{
    if (vr->barrier > after)
        vr->barrier = 0;
}

static void send_to(pl_vr *vr, uint32_t to, pl_vr_msg *m)
{
    m->from = vr->cfg.self;
    if (to != vr->cfg.self)
        vr->io.send(vr->io.ud, to, m);
}

static void broadcast(pl_vr *vr, pl_vr_msg *m)
{
    for (uint32_t i = 0; i < slots(vr); i++)
        send_to(vr, i, m);
}

typedef struct view_lookup { uint64_t view; int found; } view_lookup;

static int view_cb(void *ud, const pl_log_entry *e)
{
    view_lookup *vl = ud;
    vl->view = e->view;
    vl->found = 1;
    return 1;
}

/* View of our log entry at op (0 for op 0). Returns -1 when we do not hold it. */
static int entry_view(pl_vr *vr, uint64_t op, uint64_t *view)
{
    if (op == 0) {
        *view = 0;
        return 0;
    }
    if (op > vr->op)
        return -1;
    if (op == vr->op) {
        *view = vr->op_view;
        return 0;
    }
    view_lookup vl = { 0, 0 };
    if (vr->io.read(vr->io.ud, op, op, view_cb, &vl) != PL_OK || !vl.found)
        return -1;
    *view = vl.view;
    return 0;
}

static void send_heartbeat(pl_vr *vr, uint64_t now);

static void set_commit(pl_vr *vr, uint64_t c)
{
    /* Recovering, only the part of our log known to agree with the
     * primary's may be applied. */
    uint64_t top = vr->status == PL_VR_RECOVERING ? vr->sync_op : vr->op;
    if (c > top)
        c = top;
    if (c > vr->commit) {
        vr->commit = c;
        /* A primary committing a membership change tells the old
         * configuration before applying it (io.committed): applying
         * switches the server's peer slot table to the new membership, and
         * a server the change removes hears from nobody after that. The
         * timestamp is the last one sent, so no lease grows from it. */
        if (vr->barrier && c >= vr->barrier && is_primary(vr))
            send_heartbeat(vr, vr->last_send_ms);
        vr->io.committed(vr->io.ud, c);
    }
}

static void dvc_clear(pl_vr *vr)
{
    for (uint32_t i = 0; i < PL_VR_MAX_REPLICAS; i++) {
        vr_dvc *d = &vr->dvc[i];
        for (uint32_t k = 0; k < d->n_entries; k++)
            free((void *)d->entries[k].data);
        free(d->entries);
        memset(d, 0, sizeof *d);
    }
}

static int save(pl_vr *vr, const char *key, uint64_t val)
{
    int rc = vr->io.save_meta(vr->io.ud, key, val);
    if (rc != PL_OK)
        pl_log(PL_LOG_ERROR, "vr: cannot persist %s=%llu: %s", key,
               (unsigned long long)val, pl_strerror(rc));
    return rc;
}

/* Cut our log after `after`; entries after it must be known not to be
 * committed (see merge_suffix). */
static int cut_log(pl_vr *vr, uint64_t after)
{
    if (vr->op <= after)
        return 0;
    if (after < vr->commit)
        return -1; /* committed entries are the same everywhere (I2): never */
    if (vr->io.truncate(vr->io.ud, after) != PL_OK)
        return -1;
    cut_barrier(vr, after);
    /* A cut is durable, and so is everything before it (io.truncate). */
    vr->synced = after;
    vr->log_gen++;
    vr->op = after;
    if (entry_view(vr, after, &vr->op_view) != 0)
        vr->op_view = 0;
    if (vr->sync_op > after)
        vr->sync_op = after;
    return 0;
}

/* Make the whole log durable now. Before a last normal view is saved: a
 * view's logs are prefixes of its primary's, and a view change ranks a log
 * of a later last normal view above every log of an earlier one, so one
 * that a crash could shorten below what this view's START-VIEW (or our
 * own DVC choice) held would outrank the longer logs that hold ops
 * committed in earlier views (I1). */
static int make_durable(pl_vr *vr)
{
    if (vr->synced >= vr->op)
        return 0;
    if (!vr->io.flush || vr->io.flush(vr->io.ud) != PL_OK) {
        pl_log(PL_LOG_ERROR, "vr: cannot make the log durable up to op %llu",
               (unsigned long long)vr->op);
        return -1;
    }
    vr->synced = vr->op;
    return 0;
}

/* Append entries the hot path writes (a primary's proposals, a backup's
 * PREPAREs): without waiting for the disk when the host syncs on its own
 * (pl_vr_synced reports it), otherwise durably. */
static int append_hot(pl_vr *vr, const pl_log_entry *e, size_t n)
{
    if (vr->io.append_async)
        return vr->io.append_async(vr->io.ud, e, n);
    int rc = vr->io.append(vr->io.ud, e, n);
    if (rc == PL_OK && n)
        vr->synced = e[n - 1].op;
    return rc;
}

/*
 * Bring our log into agreement with entries e[0..n) of an authoritative log:
 * the log of the primary of our view, or the log a view change selected.
 * They follow (anchor_op, anchor_view) there. Such a log holds every op that
 * is, or can ever be, committed in an earlier view.
 *
 * Only entries that disagree with it are cut: one with another view at the
 * same op-number (and everything after it), never one that agrees. An entry
 * that agrees may be committed on the strength of our own PREPARE-OK; cutting
 * it while we keep our last normal view would let a later view change pick a
 * log without it and commit another op at its number (I1, I2). That is why
 * nothing here cuts back to the commit number first, as the paper's state
 * transfer does (§5.2): a crash between the cut and the rest of the transfer
 * leaves a log that lost acknowledged ops. With only disagreeing entries cut,
 * every intermediate state (a crash after the cut, or after a prefix of the
 * append) is a log that still holds every committed op it ever held.
 *
 * Entries at the same op-number with the same view are the same entry with
 * the same log before it (one primary per view assigns each op-number once),
 * so the first disagreement is found by comparing views, with a binary
 * search over the overlap.
 *
 * Returns 0 and sets *verified to the last op-number now known to agree
 * with the authority (the last entry, or the anchor when there are none);
 * -1 when our log does not reach the anchor, holds another view there, the
 * entries are not consecutive, or the store failed.
 */
static int merge_suffix(pl_vr *vr, uint64_t anchor_op, uint64_t anchor_view,
                        const pl_log_entry *e, uint32_t n, uint64_t *verified)
{
    if (anchor_op > vr->op)
        return -1;
    if (anchor_op > vr->commit) {
        uint64_t v;
        if (entry_view(vr, anchor_op, &v) != 0 || v != anchor_view)
            return -1;
    }
    for (uint32_t i = 0; i < n; i++)
        if (e[i].op != anchor_op + 1 + i)
            return -1;
    uint64_t last = anchor_op + n;
    /* Entries at or below our commit number are committed: ours are the
     * same (I2). Compare the rest of the overlap. */
    uint64_t lo = anchor_op > vr->commit ? anchor_op : vr->commit; /* agrees */
    uint64_t hi = last < vr->op ? last : vr->op;                   /* overlap end */
    uint64_t diverge = 0; /* first op-number that disagrees, 0 if none */
    if (hi > lo) {
        uint64_t v;
        if (entry_view(vr, hi, &v) != 0)
            return -1;
        if (v != e[hi - anchor_op - 1].view) {
            /* lo agrees, hi does not: find the first that does not */
            uint64_t a = lo, b = hi;
            while (b - a > 1) {
                uint64_t mid = a + (b - a) / 2;
                if (entry_view(vr, mid, &v) != 0)
                    return -1;
                if (v == e[mid - anchor_op - 1].view)
                    a = mid;
                else
                    b = mid;
            }
            diverge = b;
        }
    }
    if (diverge && cut_log(vr, diverge - 1) != 0)
        return -1;
    if (last > vr->op) {
        const pl_log_entry *tail = e + (vr->op - anchor_op);
        size_t k = last - vr->op;
        if (vr->io.append(vr->io.ud, tail, k) != PL_OK)
            return -1;
        note_barriers(vr, tail, k);
        vr->op = last;
        vr->op_view = e[n - 1].view;
        vr->synced = last; /* io.append: durable with all before it */
    }
    *verified = last;
    return 0;
}

typedef struct collect {
    pl_log_entry *e;
    uint32_t n, cap;
    size_t bytes, max_bytes;
    int oom;
} collect;

static int collect_cb(void *ud, const pl_log_entry *e)
{
    collect *c = ud;
    if (c->n == c->cap || c->bytes + e->len > c->max_bytes)
        return 1;
    uint8_t *copy = malloc(e->len ? e->len : 1);
    if (!copy) {
        c->oom = 1;
        return 1;
    }
    if (e->len) /* an empty entry's data may be NULL */
        memcpy(copy, e->data, e->len);
    c->e[c->n] = *e;
    c->e[c->n].data = copy;
    c->n++;
    c->bytes += e->len;
    return 0;
}

/* Read our entries (from, to] (bounded) into a malloc'd array of copies. */
static int read_suffix(pl_vr *vr, uint64_t from, uint64_t to, uint64_t max_n,
                       size_t max_bytes, pl_log_entry **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    if (to <= from)
        return PL_OK;
    if (to - from > max_n)
        to = from + max_n;
    if (to - from > UINT32_MAX / 2)
        return PL_ERR_INVALID;
    collect c = { 0 };
    c.cap = (uint32_t)(to - from);
    c.max_bytes = max_bytes;
    c.e = calloc(c.cap, sizeof *c.e);
    if (!c.e)
        return PL_ERR_NOMEM;
    int rc = vr->io.read(vr->io.ud, from + 1, to, collect_cb, &c);
    if (rc == PL_OK && c.oom)
        rc = PL_ERR_NOMEM;
    if (rc != PL_OK) {
        for (uint32_t i = 0; i < c.n; i++)
            free((void *)c.e[i].data);
        free(c.e);
        return rc;
    }
    *out = c.e;
    *n = c.n;
    return PL_OK;
}

static void free_entries(pl_log_entry *e, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free((void *)e[i].data);
    free(e);
}

/* ---- messages we send ---- */

static void send_prepare_ok(pl_vr *vr, uint64_t ts)
{
    /* what is durable here, which may be less than what we hold */
    pl_vr_msg m = { .type = PL_VR_PREPARE_OK, .view = vr->view, .op = vr->synced,
                    .commit = vr->commit, .ts = ts };
    send_to(vr, primary_of(vr, vr->view), &m);
}

static void send_get_state(pl_vr *vr, uint64_t now)
{
    if (vr->last_getstate_ms && now - vr->last_getstate_ms < vr->cfg.heartbeat_ms * 2)
        return;
    vr->last_getstate_ms = now;
    /* Recovering, ask from what is known to agree with the primary's log;
     * otherwise our log is a prefix of it. */
    uint64_t from = vr->status == PL_VR_RECOVERING ? vr->sync_op : vr->op;
    pl_vr_msg m = { .type = PL_VR_GET_STATE, .view = vr->view, .op = from,
                    .commit = vr->commit };
    send_to(vr, primary_of(vr, vr->view), &m);
}

static void send_heartbeat(pl_vr *vr, uint64_t now)
{
    pl_vr_msg m = { .type = PL_VR_COMMIT, .view = vr->view, .op = vr->op,
                    .commit = vr->commit, .ts = now };
    broadcast(vr, &m);
    vr->last_send_ms = now;
}

/* ---- view change (§4.2) ---- */

static void start_view_change(pl_vr *vr, uint64_t v, uint64_t now);
static void try_finish_view_change(pl_vr *vr, uint64_t now);
static uint64_t lease_ms(const pl_vr *vr);

/* A replica whose log is not known to match the current view's primary
 * fetches the primary's log from its commit number (§5.2). It keeps its own
 * log meanwhile, cutting only what disagrees with the primary's (see
 * merge_suffix): until it is normal in this view, that log with its last
 * normal view is what it brings to the next view change. */
static void begin_recovery(pl_vr *vr, uint64_t v, uint64_t now)
{
    int changed = vr->view != v || vr->status != PL_VR_RECOVERING;
    if (vr->view != v) {
        vr->view = v;
        save(vr, "view", v);
    }
    vr->status = PL_VR_RECOVERING;
    vr->last_heard_ms = now;
    dvc_clear(vr);
    vr->sync_op = vr->commit;
    vr->last_getstate_ms = 0;
    send_get_state(vr, now);
    if (changed)
        vr->io.changed(vr->io.ud);
}

#define DVC_MAX_BYTES (256u * 1024u * 1024u)

static void send_dvc(pl_vr *vr, uint64_t now)
{
    /* DO-VIEW-CHANGE carries our whole log after an anchor the new primary
     * is likely to hold: the lowest commit number announced in this view
     * change (the new primary's is among them when its SVC arrived), or our
     * own commit when that suffix would be long. Every uncommitted entry
     * must be in it — a shortened DVC could hide a committed op (I1) — so
     * when even that cannot be read we send nothing and the view times out. */
    uint64_t anchor = vr->commit;
    if (vr->svc_commit_min < anchor && vr->op - vr->svc_commit_min <= 4ull * vr->cfg.window)
        anchor = vr->svc_commit_min;
    uint64_t av = 0;
    if (entry_view(vr, anchor, &av) != 0) {
        anchor = vr->commit;
        if (entry_view(vr, anchor, &av) != 0)
            av = 0;
    }
    pl_log_entry *e = NULL;
    uint32_t n = 0;
    if ((read_suffix(vr, anchor, vr->op, vr->op - anchor, DVC_MAX_BYTES, &e, &n) != PL_OK ||
         anchor + n != vr->op) && anchor < vr->commit) {
        /* the lower anchor was compacted away: our own commit will do */
        free_entries(e, n);
        e = NULL;
        n = 0;
        anchor = vr->commit;
        if (entry_view(vr, anchor, &av) != 0)
            av = 0;
        read_suffix(vr, anchor, vr->op, vr->op - anchor, DVC_MAX_BYTES, &e, &n);
    }
    if (anchor + n != vr->op) {
        free_entries(e, n);
        pl_log(PL_LOG_ERROR, "vr: cannot read log (%llu, %llu] for DO-VIEW-CHANGE",
               (unsigned long long)anchor, (unsigned long long)vr->op);
        return;
    }
    pl_vr_msg m = { .type = PL_VR_DVC, .view = vr->view, .op = vr->op,
                    .commit = vr->commit, .lnv = vr->lnv, .anchor_op = anchor,
                    .anchor_view = av, .entries = e, .n_entries = n };
    vr->sent_dvc = 1;
    uint32_t p = primary_of(vr, vr->view);
    if (p == vr->cfg.self) {
        m.from = vr->cfg.self;
        pl_vr_receive(vr, &m, now);
    } else {
        send_to(vr, p, &m);
    }
    free_entries(e, n);
}

static unsigned popcount32(uint32_t x)
{
    unsigned c = 0;
    while (x) {
        x &= x - 1;
        c++;
    }
    return c;
}

static void maybe_send_dvc(pl_vr *vr, uint64_t now)
{
    if (vr->status != PL_VR_VIEW_CHANGE || vr->sent_dvc)
        return;
    uint32_t others = vr->svc_mask & ~(1u << vr->cfg.self);
    if (popcount32(others) >= vr->f)
        send_dvc(vr, now);
}

/* §4.2 step 1: move to view v, durably, then announce it. */
static void start_view_change(pl_vr *vr, uint64_t v, uint64_t now)
{
    vr->view = v;
    vr->status = PL_VR_VIEW_CHANGE;
    /* The view is durable before any message of it is sent: a restarted
     * replica never acts in a view below one it already joined. */
    save(vr, "view", v);
    vr->vc_start_ms = now;
    vr->svc_mask = 1u << vr->cfg.self;
    vr->svc_commit_min = vr->commit;
    vr->sent_dvc = 0;
    dvc_clear(vr);
    pl_log(PL_LOG_INFO, "vr: view change to view %llu (primary would be %u)",
           (unsigned long long)v, primary_of(vr, v));
    pl_vr_msg m = { .type = PL_VR_SVC, .view = v, .op = vr->op, .commit = vr->commit };
    broadcast(vr, &m);
    vr->io.changed(vr->io.ud);
    maybe_send_dvc(vr, now);
}

static void become_primary(pl_vr *vr, uint64_t now, uint64_t k)
{
    if (make_durable(vr) != 0)
        return; /* the view change times out and the next view is tried */
    vr->status = PL_VR_NORMAL;
    vr->lnv = vr->view;
    save(vr, "lnv", vr->lnv);
    memset(vr->acked, 0, sizeof vr->acked);
    memset(vr->ack_ts, 0, sizeof vr->ack_ts);
    vr->primary_since_ms = now;
    vr->last_heard_ms = now;

    /* START-VIEW carries the suffix after the lowest commit any DVC sender
     * reported; a replica that cannot match it fetches the rest. */
    uint64_t anchor = vr->commit;
    for (uint32_t i = 0; i < vr->cfg.n; i++)
        if (vr->dvc[i].have && vr->dvc[i].commit < anchor)
            anchor = vr->dvc[i].commit;
    uint64_t av = 0;
    pl_log_entry *e = NULL;
    uint32_t n = 0;
    if (entry_view(vr, anchor, &av) != 0 ||
        read_suffix(vr, anchor, vr->op, 4ull * vr->cfg.window, 64u * 1024u * 1024u, &e, &n) != PL_OK ||
        anchor + n < vr->op) {
        free_entries(e, n);
        e = NULL;
        n = 0;
        anchor = vr->op; /* nothing carried: anyone behind fetches by GET-STATE */
        av = vr->op_view;
    }
    dvc_clear(vr);
    set_commit(vr, k);
    pl_log(PL_LOG_INFO, "vr: primary of view %llu (op %llu, commit %llu)",
           (unsigned long long)vr->view, (unsigned long long)vr->op,
           (unsigned long long)vr->commit);
    pl_vr_msg m = { .type = PL_VR_START_VIEW, .view = vr->view, .op = vr->op,
                    .commit = vr->commit, .anchor_op = anchor, .anchor_view = av,
                    .entries = e, .n_entries = n, .ts = now };
    broadcast(vr, &m);
    vr->last_send_ms = now;
    free_entries(e, n);
    vr->io.changed(vr->io.ud);
}

/* §4.2 step 3-4: the new primary has f+1 DO-VIEW-CHANGEs (its own among them). */
static void try_finish_view_change(pl_vr *vr, uint64_t now)
{
    if (vr->status != PL_VR_VIEW_CHANGE || primary_of(vr, vr->view) != vr->cfg.self)
        return;
    uint32_t have = 0;
    int best = -1;
    uint64_t k = vr->commit;
    for (uint32_t i = 0; i < vr->cfg.n; i++) {
        vr_dvc *d = &vr->dvc[i];
        if (!d->have)
            continue;
        have++;
        if (d->commit > k)
            k = d->commit;
        if (best < 0 || d->lnv > vr->dvc[best].lnv ||
            (d->lnv == vr->dvc[best].lnv && d->op > vr->dvc[best].op))
            best = (int)i;
    }
    if (have < vr->f + 1 || !vr->dvc[vr->cfg.self].have)
        return;
    /* The log with the highest (last normal view, op) holds every committed
     * op (I1); make ours equal to it. What we hold beyond it was never
     * committed, so it may go. */
    vr_dvc *b = &vr->dvc[best];
    uint64_t verified = 0;
    if ((uint32_t)best != vr->cfg.self &&
        (merge_suffix(vr, b->anchor_op, b->anchor_view, b->entries, b->n_entries,
                      &verified) != 0 ||
         verified != b->op || cut_log(vr, b->op) != 0)) {
        pl_log(PL_LOG_WARN, "vr: view %llu: cannot adopt the log of replica %d "
               "(anchor %llu): this view will time out and the next one is tried",
               (unsigned long long)vr->view, best, (unsigned long long)b->anchor_op);
        return;
    }
    become_primary(vr, now, k);
}

/* ---- handlers ---- */

static void on_prepare(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from != primary_of(vr, m->view))
        return;
    vr->last_heard_ms = now;
    if (vr->status != PL_VR_NORMAL) {
        /* we missed the START-VIEW of this view: fetch the log (§5.2) */
        if (vr->status == PL_VR_VIEW_CHANGE)
            begin_recovery(vr, m->view, now);
        else
            send_get_state(vr, now);
        return;
    }
    if (m->type == PL_VR_PREPARE && m->n_entries) {
        if (m->anchor_op > vr->op) {
            send_get_state(vr, now); /* a gap: PREPAREs were lost */
        } else {
            uint32_t skip = 0;
            while (skip < m->n_entries && m->entries[skip].op <= vr->op)
                skip++;
            if (skip < m->n_entries) {
                if (append_hot(vr, m->entries + skip, m->n_entries - skip) != PL_OK) {
                    pl_log(PL_LOG_ERROR, "vr: log append failed; not acknowledging");
                    return;
                }
                note_barriers(vr, m->entries + skip, m->n_entries - skip);
                vr->op = m->entries[m->n_entries - 1].op;
                vr->op_view = m->entries[m->n_entries - 1].view;
            }
        }
    } else if (m->op > vr->op) {
        send_get_state(vr, now); /* heartbeat says we are behind */
    }
    /* §4.1 step 4: PREPARE-OK only for what is durable. What the sync
     * still has to cover is acknowledged when it has (pl_vr_synced); a
     * heartbeat is answered at once (the lease), naming what is durable. */
    if (m->type == PL_VR_PREPARE && vr->synced < vr->op) {
        if (!vr->ok_pending || vr->ok_view != vr->view || m->ts > vr->ok_ts)
            vr->ok_ts = m->ts;
        vr->ok_pending = 1;
        vr->ok_view = vr->view;
    } else {
        send_prepare_ok(vr, m->ts);
    }
    set_commit(vr, m->commit);
}

static void advance_commit(pl_vr *vr);

static void on_prepare_ok(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    (void)now;
    if (!is_primary(vr) || m->from >= slots(vr) || m->from == vr->cfg.self)
        return;
    uint64_t op = m->op > vr->op ? vr->op : m->op;
    if (op > vr->acked[m->from])
        vr->acked[m->from] = op;
    if (m->ts > vr->ack_ts[m->from])
        vr->ack_ts[m->from] = m->ts;
    advance_commit(vr);
}

/* §4.1 step 5, primary: commit what f+1 replicas (us included) hold
 * durably. */
static void advance_commit(pl_vr *vr)
{
    uint64_t vals[PL_VR_MAX_REPLICAS];
    uint32_t n = 0;
    for (uint32_t i = 0; i < vr->cfg.n; i++)
        vals[n++] = i == vr->cfg.self ? vr->synced : vr->acked[i];
    for (uint32_t i = 1; i < n; i++) { /* insertion sort, descending; n <= 16 */
        uint64_t x = vals[i];
        uint32_t j = i;
        while (j > 0 && vals[j - 1] < x) {
            vals[j] = vals[j - 1];
            j--;
        }
        vals[j] = x;
    }
    set_commit(vr, vals[vr->f]);
}

static void on_get_state(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    (void)now;
    if (!is_primary(vr) || m->from >= slots(vr) || m->op > vr->op)
        return;
    uint64_t first = vr->io.log_first ? vr->io.log_first(vr->io.ud) : 0;
    uint64_t av;
    if ((first && m->op + 1 < first) || entry_view(vr, m->op, &av) != 0) {
        /* what it needs was compacted away: send the state instead */
        if (vr->io.need_snapshot)
            vr->io.need_snapshot(vr->io.ud, m->from);
        return;
    }
    pl_log_entry *e = NULL;
    uint32_t n = 0;
    if (read_suffix(vr, m->op, vr->op, vr->cfg.max_batch, 16u * 1024u * 1024u, &e, &n) != PL_OK)
        return;
    pl_vr_msg r = { .type = PL_VR_NEW_STATE, .view = vr->view, .op = vr->op,
                    .commit = vr->commit, .anchor_op = m->op, .anchor_view = av,
                    .entries = e, .n_entries = n, .ts = now };
    send_to(vr, m->from, &r);
    free_entries(e, n);
}

static void on_new_state(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from != primary_of(vr, vr->view) || vr->status == PL_VR_VIEW_CHANGE)
        return;
    vr->last_heard_ms = now;
    /* Normal, our log is a prefix of the primary's (its log only grows
     * within a view), so this only appends; a late answer ending below our
     * last op changes nothing. Recovering, it also cuts what disagrees. */
    int recovering = vr->status == PL_VR_RECOVERING;
    uint64_t before = recovering ? vr->sync_op : vr->op;
    uint64_t verified;
    if (merge_suffix(vr, m->anchor_op, m->anchor_view, m->entries, m->n_entries,
                     &verified) != 0)
        return; /* an answer to an older request: our log moved since */
    if (recovering && verified > vr->sync_op)
        vr->sync_op = verified;
    /* Ask for the next part at once only when this answer moved us on: a
     * repeated or late answer must not start a second chain of requests
     * (each answer asking again, chains would multiply). */
    if ((recovering ? vr->sync_op : vr->op) > before)
        vr->last_getstate_ms = 0;
    if (recovering) {
        if (vr->sync_op < m->op) {
            /* Normal in this view only once we hold its log up to the
             * primary's op, which covers what its START-VIEW held: a
             * DO-VIEW-CHANGE naming this view as our last normal one with
             * only a prefix of that log would outrank longer logs of older
             * views and drop ops committed there (I1), and neither may an
             * acknowledgement count toward a commit before then. */
            send_get_state(vr, now);
            set_commit(vr, m->commit);
            return;
        }
        /* What we hold beyond it is from earlier views and not in the
         * primary's log, so never committed. */
        if (cut_log(vr, vr->sync_op) != 0 || make_durable(vr) != 0)
            return;
        vr->status = PL_VR_NORMAL;
        vr->lnv = vr->view;
        save(vr, "lnv", vr->lnv);
        pl_log(PL_LOG_INFO, "vr: backup in view %llu after state transfer (op %llu)",
               (unsigned long long)vr->view, (unsigned long long)vr->op);
        vr->io.changed(vr->io.ud);
    }
    if (vr->op < m->op)
        send_get_state(vr, now);
    send_prepare_ok(vr, m->ts);
    set_commit(vr, m->commit);
}

static void on_start_view(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from != primary_of(vr, m->view))
        return;
    if (m->view == vr->view && vr->status != PL_VR_VIEW_CHANGE)
        return; /* a duplicate, or one we recover from by NEW-STATE: the primary's
                   log has only grown since it sent this */
    if (m->view != vr->view) {
        vr->view = m->view;
        save(vr, "view", vr->view);
    }
    vr->last_heard_ms = now;
    dvc_clear(vr);
    /* §4.2 step 5: make our log the new primary's: what we hold beyond its
     * op is not in it, so never committed. */
    uint64_t verified = 0;
    int merged = merge_suffix(vr, m->anchor_op, m->anchor_view, m->entries, m->n_entries,
                              &verified) == 0;
    if (!merged || verified < m->op || cut_log(vr, m->op) != 0) {
        begin_recovery(vr, m->view, now);
        if (merged && verified > vr->sync_op)
            vr->sync_op = verified;
        return;
    }
    if (make_durable(vr) != 0)
        return; /* still in the view change; the next START-VIEW or view tries again */
    vr->status = PL_VR_NORMAL;
    vr->lnv = m->view;
    save(vr, "lnv", vr->lnv);
    pl_log(PL_LOG_INFO, "vr: backup in view %llu, primary %u", (unsigned long long)vr->view,
           primary_of(vr, vr->view));
    send_prepare_ok(vr, m->ts);
    set_commit(vr, m->commit);
    vr->io.changed(vr->io.ud);
}

static void on_svc(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (vr->status != PL_VR_VIEW_CHANGE)
        return; /* late SVC for a view that already started */
    vr->svc_mask |= 1u << m->from;
    if (m->commit < vr->svc_commit_min)
        vr->svc_commit_min = m->commit;
    maybe_send_dvc(vr, now);
}

static void on_dvc(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (vr->status != PL_VR_VIEW_CHANGE || primary_of(vr, vr->view) != vr->cfg.self)
        return;
    vr_dvc *d = &vr->dvc[m->from];
    if (d->have)
        return;
    pl_log_entry *copy = NULL;
    if (m->n_entries) {
        copy = calloc(m->n_entries, sizeof *copy);
        if (!copy)
            return;
        for (uint32_t i = 0; i < m->n_entries; i++) {
            copy[i] = m->entries[i];
            uint8_t *b = malloc(m->entries[i].len ? m->entries[i].len : 1);
            if (!b) {
                free_entries(copy, i);
                return;
            }
            if (m->entries[i].len) /* an empty entry's data may be NULL */
                memcpy(b, m->entries[i].data, m->entries[i].len);
            copy[i].data = b;
        }
    }
    d->have = 1;
    d->lnv = m->lnv;
    d->op = m->op;
    d->commit = m->commit;
    d->anchor_op = m->anchor_op;
    d->anchor_view = m->anchor_view;
    d->entries = copy;
    d->n_entries = m->n_entries;
    /* A DVC also says its sender is in this view change. */
    vr->svc_mask |= 1u << m->from;
    maybe_send_dvc(vr, now);
    try_finish_view_change(vr, now);
}

/* ---- membership epochs ---- */

/* A replica of an older epoch spoke to us: it missed the membership change
 * (or more). Send it the committed entries after its commit number — they
 * are the same on every replica (I2), so any replica may answer, not only
 * the primary — or a snapshot when they were compacted. Whatever our
 * status: the new epoch's replicas may all be in a view change that needs
 * the very replicas still in the old epoch to complete. */
static void answer_older_epoch(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from >= slots(vr) || m->from == vr->cfg.self)
        return;
    if (vr->last_epoch_ms[m->from] && now - vr->last_epoch_ms[m->from] < vr->cfg.heartbeat_ms)
        return;
    vr->last_epoch_ms[m->from] = now;
    uint64_t from = m->commit;
    if (from >= vr->commit)
        return;
    uint64_t first = vr->io.log_first ? vr->io.log_first(vr->io.ud) : 0;
    uint64_t av = 0;
    if ((first && from + 1 < first) || entry_view(vr, from, &av) != 0) {
        if (vr->io.need_snapshot)
            vr->io.need_snapshot(vr->io.ud, m->from);
        return;
    }
    pl_log_entry *e = NULL;
    uint32_t n = 0;
    if (read_suffix(vr, from, vr->commit, vr->cfg.max_batch, 16u * 1024u * 1024u, &e, &n) != PL_OK)
        return;
    pl_vr_msg r = { .type = PL_VR_EPOCH_STATE, .view = vr->view, .op = vr->op,
                    .commit = vr->commit, .anchor_op = from, .anchor_view = av,
                    .entries = e, .n_entries = n, .ts = now };
    send_to(vr, m->from, &r);
    free_entries(e, n);
}

/* We heard a newer epoch: ask the sender for what we miss (it answers with
 * EPOCH_STATE). Our uncommitted entries may not survive, so ask from our
 * commit number. */
static void ask_newer_epoch(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from >= slots(vr) || m->from == vr->cfg.self)
        return;
    if (vr->last_epoch_ask_ms && now - vr->last_epoch_ask_ms < vr->cfg.heartbeat_ms * 2)
        return;
    vr->last_epoch_ask_ms = now;
    pl_vr_msg r = { .type = PL_VR_GET_STATE, .view = vr->view, .op = vr->commit,
                    .commit = vr->commit };
    send_to(vr, m->from, &r);
}

/* Committed entries from a newer epoch. We stop acting in our epoch (what
 * we hold above our commit may be lost), adopt them and apply: applying the
 * membership change moves us into the newer epoch (pl_vr_reconfigure). */
static void on_epoch_state(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->anchor_op > vr->commit)
        return; /* not an answer to our latest request */
    int was = vr->status;
    int primary = is_primary(vr);
    if (was != PL_VR_RECOVERING)
        vr->sync_op = vr->commit;
    vr->status = PL_VR_RECOVERING;
    vr->last_heard_ms = now;
    if (was != PL_VR_RECOVERING || primary)
        vr->io.changed(vr->io.ud); /* fail what we had in flight: we cannot answer for it */
    /* The entries are committed, so whatever disagrees with them was not. */
    uint64_t before = vr->sync_op, c;
    if (merge_suffix(vr, m->anchor_op, m->anchor_view, m->entries, m->n_entries, &c) != 0)
        return;
    if (c > m->commit)
        c = m->commit;
    if (c > vr->sync_op)
        vr->sync_op = c;
    uint64_t epoch = PL_VR_EPOCH(vr->view);
    set_commit(vr, c);
    if (PL_VR_EPOCH(vr->view) == epoch && vr->sync_op < m->commit) {
        /* more to fetch: at once if this answer moved us on (a duplicate
         * must not start a second chain of requests) */
        if (vr->sync_op > before)
            vr->last_epoch_ask_ms = 0;
        ask_newer_epoch(vr, m, now);
    }
}

/* A message of the current view's primary reached us while we are its
 * backup in normal status: remember when (pl_vr_vouches). */
static void note_primary(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->view != vr->view || vr->status != PL_VR_NORMAL || is_primary(vr) ||
        m->from != primary_of(vr, vr->view))
        return;
    if (m->type != PL_VR_PREPARE && m->type != PL_VR_COMMIT && m->type != PL_VR_NEW_STATE &&
        m->type != PL_VR_START_VIEW)
        return;
    if (!vr->pv_valid || vr->pv_view != vr->view) {
        vr->pv_valid = 1;
        vr->pv_view = vr->view;
        vr->pv_first_ms = now;
    }
    vr->pv_last_ms = now;
}

void pl_vr_receive(pl_vr *vr, const pl_vr_msg *m, uint64_t now)
{
    if (m->from >= slots(vr) || m->type == 0 || m->type >= PL_VR__COUNT)
        return;
    if (PL_VR_EPOCH(m->view) != PL_VR_EPOCH(vr->view)) {
        /* Another membership: nothing of its views applies to ours. */
        if (PL_VR_EPOCH(m->view) < PL_VR_EPOCH(vr->view))
            answer_older_epoch(vr, m, now);
        else if (m->type == PL_VR_EPOCH_STATE)
            on_epoch_state(vr, m, now);
        else
            ask_newer_epoch(vr, m, now);
        return;
    }
    if (m->type == PL_VR_EPOCH_STATE)
        return; /* we caught up meanwhile */
    if (epoch_over(vr))
        return;
    if (!is_member(vr) && (m->type == PL_VR_SVC || m->type == PL_VR_DVC ||
                           m->type == PL_VR_PREPARE_OK || m->type == PL_VR_GET_STATE))
        return; /* a learner never votes nor serves */
    if (m->from >= vr->cfg.n && m->type != PL_VR_PREPARE_OK && m->type != PL_VR_GET_STATE)
        return; /* a learner only acknowledges and fetches */
    if (m->view < vr->view)
        return; /* fenced: a message of an older view changes nothing (I1) */
    if (m->view > vr->view) {
        switch (m->type) {
        case PL_VR_SVC:
        case PL_VR_DVC:
            start_view_change(vr, m->view, now);
            break;
        case PL_VR_START_VIEW:
            on_start_view(vr, m, now);
            note_primary(vr, m, now);
            return;
        case PL_VR_PREPARE:
        case PL_VR_COMMIT:
        case PL_VR_NEW_STATE:
            /* a view we missed entirely: join it by state transfer */
            if (m->from == primary_of(vr, m->view))
                begin_recovery(vr, m->view, now);
            return;
        default:
            return;
        }
    }
    switch (m->type) {
    case PL_VR_PREPARE:
    case PL_VR_COMMIT:
        on_prepare(vr, m, now);
        break;
    case PL_VR_PREPARE_OK:
        on_prepare_ok(vr, m, now);
        break;
    case PL_VR_GET_STATE:
        on_get_state(vr, m, now);
        break;
    case PL_VR_NEW_STATE:
        on_new_state(vr, m, now);
        break;
    case PL_VR_START_VIEW:
        on_start_view(vr, m, now);
        break;
    case PL_VR_SVC:
        on_svc(vr, m, now);
        break;
    case PL_VR_DVC:
        on_dvc(vr, m, now);
        break;
    }
    note_primary(vr, m, now);
}

void pl_vr_snapshot_installed(pl_vr *vr, uint64_t view, uint64_t op, uint64_t op_view,
                              uint64_t now)
{
    /* From the primary of our view, or (after a membership change the
     * snapshot carried, pl_vr_reconfigure) from a later view of our epoch. */
    if (view < vr->view || PL_VR_EPOCH(view) != PL_VR_EPOCH(vr->view) ||
        (view == vr->view && vr->status == PL_VR_VIEW_CHANGE) || is_primary(vr))
        return;
    if (view != vr->view) {
        vr->view = view;
        save(vr, "view", view);
        vr->status = PL_VR_RECOVERING;
    }
    if (vr->barrier <= op)
        vr->barrier = 0;
    /* The state is the primary's committed prefix up to op. What our log
     * held above op is still there (the server drops only entries up to
     * op): it may hold ops we acknowledged in our last normal view, so it
     * stays until the primary's log says otherwise (merge_suffix). */
    if (vr->op <= op) {
        vr->op = op;
        vr->op_view = op_view;
    }
    if (op > vr->synced)
        vr->synced = op; /* the state up to op is durable (log_compact) */
    if (op > vr->commit)
        vr->commit = op;
    vr->sync_op = op;
    vr->last_heard_ms = now;
    /* A recovering replica stays so until NEW_STATE brings it up to the
     * primary's op (on_new_state): the snapshot is the primary's committed
     * prefix, which may end below what the view's START-VIEW held. */
    pl_log(PL_LOG_INFO, "vr: installed a snapshot at op %llu; fetching the rest",
           (unsigned long long)op);
    vr->last_getstate_ms = 0;
    send_get_state(vr, now);
}

void pl_vr_reconfigure(pl_vr *vr, uint64_t epoch, uint32_t n, uint32_t self, uint64_t start_op,
                       uint64_t now)
{
    if (epoch <= PL_VR_EPOCH(vr->view) || n == 0 || n > PL_VR_MAX_REPLICAS ||
        self >= PL_VR_MAX_REPLICAS)
        return;
    if (is_primary(vr)) {
        /* The old configuration learns the commit number from us: those
         * that hold the barrier apply it and follow into the new epoch. */
        send_heartbeat(vr, now);
    }
    uint64_t v = PL_VR_EPOCH_VIEW(epoch);
    /* Nothing of the old epoch can follow the barrier (propose refuses);
     * entries past it come from the new epoch (EPOCH_STATE) and stay. */
    int natural = vr->op == start_op && vr->commit >= start_op && make_durable(vr) == 0;
    int was_primary = is_primary(vr);
    uint64_t was_primary_since = vr->primary_since_ms;
    vr->view = v;
    save(vr, "view", v);
    vr->cfg.n = n;
    vr->cfg.self = self;
    vr->cfg.n_learners = 0;
    vr->f = n / 2;
    vr->epoch_start = start_op;
    vr->barrier = 0;
    memset(vr->acked, 0, sizeof vr->acked);
    memset(vr->ack_ts, 0, sizeof vr->ack_ts);
    memset(vr->last_epoch_ms, 0, sizeof vr->last_epoch_ms);
    dvc_clear(vr);
    vr->svc_mask = 1u << (self < 32 ? self : 0);
    vr->svc_commit_min = vr->commit;
    vr->sent_dvc = 0;
    vr->primary_since_ms = now;
    vr->last_heard_ms = now;
    vr->vc_start_ms = now;
    vr->last_send_ms = 0;
    vr->last_getstate_ms = 0;
    vr->last_epoch_ask_ms = 0;
    if (natural) {
        /* Every replica entering the epoch this way holds exactly the log
         * up to start_op: view 0 of the epoch is already agreed. */
        vr->status = PL_VR_NORMAL;
        vr->lnv = v;
        save(vr, "lnv", v);
        /* The old primary keeping the lead goes on waiting out the leases
         * of earlier primaries from when it took over, not from now: none
         * is out once that wait is over. (Serving at once, as if it were,
         * let a primary that took over 30 ms before the change answer
         * while the primary it replaced still held its lease: I3.) */
        if (was_primary && self == 0)
            vr->primary_since_ms = was_primary_since;
    } else {
        vr->status = PL_VR_RECOVERING;
        vr->sync_op = vr->commit;
    }
    pl_log(PL_LOG_INFO, "vr: epoch %llu from op %llu: %u servers, %s%s",
           (unsigned long long)epoch, (unsigned long long)start_op, n,
           self < n ? "this server is " : "this server is not a member",
           self < n ? (self == 0 ? "the primary" : "a backup") : "");
    vr->io.changed(vr->io.ud);
}

void pl_vr_set_learners(pl_vr *vr, uint32_t count)
{
    if (vr->cfg.n + count > PL_VR_MAX_REPLICAS || !is_member(vr))
        return;
    for (uint32_t i = vr->cfg.n; i < PL_VR_MAX_REPLICAS; i++) {
        vr->acked[i] = 0;
        vr->ack_ts[i] = 0;
    }
    vr->cfg.n_learners = count;
}

/* ---- time ---- */

static uint64_t lease_ms(const pl_vr *vr)
{
    return vr->cfg.lease_ms ? vr->cfg.lease_ms : vr->cfg.election_timeout_ms / 2;
}

static uint64_t next_view_for(const pl_vr *vr, uint32_t target)
{
    uint64_t v = vr->view + 1;
    while (primary_of(vr, v) != target)
        v++;
    return v;
}

void pl_vr_tick(pl_vr *vr, uint64_t now)
{
    uint64_t et = vr->cfg.election_timeout_ms;
    if (!is_member(vr)) {
        /* a learner or a removed server never starts a view change */
        if (vr->status == PL_VR_RECOVERING)
            send_get_state(vr, now);
        return;
    }
    if (vr->cfg.n == 1) {
        /* a lone server is the primary of every view; finish an interrupted
         * view change on the spot */
        if (vr->status != PL_VR_NORMAL)
            become_primary(vr, now, vr->op);
        return;
    }
    if (is_primary(vr)) {
        if (now - vr->last_send_ms >= vr->cfg.heartbeat_ms)
            send_heartbeat(vr, now);
        /* Priority failback: hand over to the most preferred replica that
         * holds every committed op and answers, once we have been primary
         * for a while (no flapping at start-up). */
        if (vr->cfg.failback && now - vr->primary_since_ms >= 2 * et) {
            for (uint32_t h = 0; h < vr->cfg.self; h++) {
                if (vr->acked[h] >= vr->commit && vr->acked[h] + 2ull * vr->cfg.max_batch >= vr->op &&
                    vr->ack_ts[h] + lease_ms(vr) > now) {
                    pl_log(PL_LOG_INFO, "vr: replica %u has caught up: handing the primary back", h);
                    start_view_change(vr, next_view_for(vr, h), now);
                    break;
                }
            }
        }
        return;
    }
    switch (vr->status) {
    case PL_VR_NORMAL:
    case PL_VR_RECOVERING:
        if (now - vr->last_heard_ms >= et) {
            pl_log(PL_LOG_WARN, "vr: no word from primary %u for %llu ms",
                   primary_of(vr, vr->view), (unsigned long long)(now - vr->last_heard_ms));
            start_view_change(vr, vr->view + 1, now);
        } else if (vr->status == PL_VR_RECOVERING) {
            send_get_state(vr, now);
        }
        break;
    case PL_VR_VIEW_CHANGE:
        if (now - vr->vc_start_ms >= et) {
            /* the would-be primary did not complete the view: try the next */
            start_view_change(vr, vr->view + 1, now);
        } else if (!vr->sent_dvc && now - vr->last_send_ms >= vr->cfg.heartbeat_ms) {
            /* repeat our SVC in case it was lost */
            pl_vr_msg m = { .type = PL_VR_SVC, .view = vr->view, .op = vr->op,
                            .commit = vr->commit };
            broadcast(vr, &m);
            vr->last_send_ms = now;
        }
        break;
    }
}

/* ---- the primary's API ---- */

int pl_vr_propose(pl_vr *vr, pl_log_entry *e, size_t n, uint64_t *first_op, uint64_t now)
{
    if (!is_primary(vr))
        return vr->status == PL_VR_NORMAL ? PL_ERR_NOT_PRIMARY : PL_ERR_UNAVAILABLE;
    if (!pl_vr_can_serve(vr, now))
        return PL_ERR_UNAVAILABLE;
    if (vr->barrier > vr->epoch_start)
        return PL_ERR_UNAVAILABLE; /* a membership change ends this epoch */
    if (vr->op - vr->commit + n > vr->cfg.window)
        return PL_ERR_BUSY;
    if (vr->prepared != vr->view + 1) {
        /* once per view, before its first PREPARE leaves: a restart must
         * know whether backups may hold ops of this view (pl_vr_new) */
        int rc = save(vr, "prepared", vr->view + 1);
        if (rc != PL_OK)
            return rc;
        vr->prepared = vr->view + 1;
    }
    uint64_t anchor = vr->op, av = vr->op_view;
    for (size_t i = 0; i < n; i++) {
        e[i].op = vr->op + 1 + i;
        e[i].view = vr->view;
    }
    /* §4.1 step 2-3: send PREPARE first, so backups sync in parallel with us. */
    pl_vr_msg m = { .type = PL_VR_PREPARE, .view = vr->view, .op = vr->op + n,
                    .commit = vr->commit, .anchor_op = anchor, .anchor_view = av,
                    .entries = e, .n_entries = (uint32_t)n, .ts = now };
    broadcast(vr, &m);
    vr->last_send_ms = now;
    int rc = append_hot(vr, e, n);
    if (rc != PL_OK) {
        /* The backups may hold these op-numbers now while we do not: we
         * must never assign them again in this view (I2). Give the view up;
         * the next one decides what the log holds. */
        pl_log(PL_LOG_ERROR, "vr: local log append failed (%s); leaving view %llu",
               pl_strerror(rc), (unsigned long long)vr->view);
        start_view_change(vr, vr->view + 1, now);
        return rc;
    }
    *first_op = vr->op + 1;
    vr->op += n;
    vr->op_view = vr->view;
    note_barriers(vr, e, n);
    if (vr->f == 0)
        advance_commit(vr); /* alone: committed once durable here */
    return PL_OK;
}

void pl_vr_synced(pl_vr *vr, uint64_t op, uint64_t gen, uint64_t now)
{
    (void)now;
    if (gen != vr->log_gen)
        return; /* the log was cut since that sync began */
    if (op > vr->op)
        op = vr->op;
    if (op <= vr->synced)
        return;
    vr->synced = op;
    if (vr->status != PL_VR_NORMAL)
        return;
    if (is_primary(vr)) {
        advance_commit(vr);
    } else if (vr->ok_pending) {
        vr->ok_pending = 0;
        /* its timestamp is from this view's primary only */
        if (vr->ok_view == vr->view)
            send_prepare_ok(vr, vr->ok_ts);
    }
}

uint64_t pl_vr_log_gen(const pl_vr *vr) { return vr->log_gen; }
uint64_t pl_vr_synced_op(const pl_vr *vr) { return vr->synced; }

bool pl_vr_can_serve(const pl_vr *vr, uint64_t now)
{
    if (!is_primary(vr) || epoch_over(vr))
        return false;
    if (vr->cfg.n == 1)
        return true;
    uint64_t lease = lease_ms(vr);
    /* a new primary waits out any lease the previous one may still hold */
    if (now - vr->primary_since_ms < lease)
        return false;
    /* ours, shortened by the clock drift the lease design allows (vr.h) */
    uint64_t hold = lease * (1000000u - PL_VR_CLOCK_DRIFT_PPM) / (1000000u + PL_VR_CLOCK_DRIFT_PPM);
    uint32_t fresh = 0;
    for (uint32_t i = 0; i < vr->cfg.n; i++)
        if (i != vr->cfg.self && vr->ack_ts[i] + hold > now)
            fresh++;
    return fresh >= vr->f;
}

/* ---- lifecycle and getters ---- */

pl_vr *pl_vr_new(const pl_vr_config *cfg, const pl_vr_io *io,
                 const pl_vr_durable *d, uint64_t now)
{
    if (cfg->n == 0 || cfg->n + cfg->n_learners > PL_VR_MAX_REPLICAS ||
        cfg->self >= PL_VR_MAX_REPLICAS || (cfg->self >= cfg->n && cfg->n_learners))
        return NULL;
    pl_vr *vr = calloc(1, sizeof *vr);
    if (!vr)
        return NULL;
    vr->cfg = *cfg;
    if (!vr->cfg.max_batch)
        vr->cfg.max_batch = 1024;
    if (!vr->cfg.window)
        vr->cfg.window = 4096;
    if (!vr->cfg.heartbeat_ms)
        vr->cfg.heartbeat_ms = 100;
    if (!vr->cfg.election_timeout_ms)
        vr->cfg.election_timeout_ms = 1000;
    vr->io = *io;
    if (vr->io.append_async && !vr->io.flush) {
        free(vr);
        return NULL;
    }
    vr->f = cfg->n / 2;
    vr->view = d->view;
    vr->lnv = d->lnv;
    vr->op = d->op;
    vr->op_view = d->op_view;
    vr->synced = d->op; /* the host made its log durable before starting us */
    vr->commit = d->commit > d->op ? d->op : d->commit;
    vr->epoch_start = d->epoch_start;
    vr->barrier = d->barrier > d->epoch_start && d->barrier <= d->op ? d->barrier : 0;
    /* A restart resumes where the durable state says: normal in the last
     * normal view (like a replica that was paused), or in the view change it
     * was taking part in. */
    vr->status = d->lnv == d->view ? PL_VR_NORMAL : PL_VR_VIEW_CHANGE;
    if (vr->status == PL_VR_VIEW_CHANGE && !is_member(vr))
        vr->status = PL_VR_RECOVERING;
    vr->sync_op = vr->commit;
    vr->last_heard_ms = now;
    vr->vc_start_ms = now;
    vr->primary_since_ms = now;
    vr->svc_mask = 1u << cfg->self;
    vr->svc_commit_min = vr->commit;
    vr->prepared = d->prepared;
    /* The caller may have moved view and last normal view on (a restart
     * that resumes entering a membership epoch, core/seq.c): make them
     * durable before we act on them. Otherwise a replica that acknowledged
     * ops as normal in that view and crashed again would come back with an
     * older last normal view than the log it holds, and a view change
     * would rank that log below shorter ones (I1). */
    if (save(vr, "view", vr->view) != PL_OK || save(vr, "lnv", vr->lnv) != PL_OK) {
        free(vr);
        return NULL;
    }
    if (is_primary(vr) && vr->cfg.n > 1 && vr->prepared == vr->view + 1) {
        /* We were the primary of this view and sent PREPAREs in it. They
         * leave before our own append is durable (so backups sync while we
         * do), so backups may hold op-numbers of this view that our log lost
         * in the crash; proposing again would give them to other ops (I2).
         * Leave the view for our own next one: its view change decides what
         * the log holds. Durable now, announced at the first tick (the SVC
         * repeat), since nothing may be sent yet. */
        vr->view = next_view_for(vr, vr->cfg.self);
        vr->status = PL_VR_VIEW_CHANGE;
        if (save(vr, "view", vr->view) != PL_OK) {
            free(vr);
            return NULL;
        }
    }
    return vr;
}

void pl_vr_free(pl_vr *vr)
{
    if (!vr)
        return;
    dvc_clear(vr);
    free(vr);
}

bool pl_vr_vouches(const pl_vr *vr, uint64_t now, uint64_t fresh_ms)
{
    /* A new primary serves one lease after it took over (pl_vr_can_serve);
     * a backup that joined its view less than a lease ago cannot tell
     * whether it does yet. Both clocks are ours, and START-VIEW reaches the
     * backup after the primary's lease wait began, so waiting a lease here
     * ends no earlier than the primary's own wait. */
    return vr->status == PL_VR_NORMAL && !is_primary(vr) && vr->cfg.n > 1 && vr->pv_valid &&
           vr->pv_view == vr->view && now - vr->pv_last_ms < fresh_ms &&
           now - vr->pv_first_ms >= lease_ms(vr);
}

bool pl_vr_is_primary(const pl_vr *vr) { return is_primary(vr); }
uint32_t pl_vr_primary(const pl_vr *vr) { return primary_of(vr, vr->view); }
uint64_t pl_vr_view(const pl_vr *vr) { return vr->view; }
uint64_t pl_vr_lnv(const pl_vr *vr) { return vr->lnv; }
uint64_t pl_vr_op(const pl_vr *vr) { return vr->op; }
uint64_t pl_vr_commit(const pl_vr *vr) { return vr->commit; }
int pl_vr_status(const pl_vr *vr) { return vr->status; }
uint64_t pl_vr_acked(const pl_vr *vr, uint32_t i) { return i < slots(vr) ? vr->acked[i] : 0; }
uint64_t pl_vr_barrier(const pl_vr *vr) { return vr->barrier > vr->epoch_start ? vr->barrier : 0; }
bool pl_vr_is_member(const pl_vr *vr) { return is_member(vr); }
uint32_t pl_vr_n(const pl_vr *vr) { return vr->cfg.n; }

const char *pl_vr_role(const pl_vr *vr, uint64_t now)
{
    (void)now;
    switch (vr->status) {
    case PL_VR_VIEW_CHANGE: return "view-change";
    case PL_VR_RECOVERING: return is_member(vr) ? "recovering" : "learner";
    default: return is_primary(vr) ? "primary" : is_member(vr) ? "backup" : "learner";
    }
}
