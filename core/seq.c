/*
 * core/seq.c — the single-server sequencer: local durable group commit
 * (seq.h).
 *
 * Order of a batch, and why:
 *   1. encode and number the ops, append them to the log with one
 *      log_append (one sync): from here on the ops survive a crash;
 *   2. apply them to the chat state in one store transaction: commit() need
 *      not sync, because a lost state commit is redone from the log by
 *      pl_seq_replay at the next start;
 *   3. only then answer the clients and push: an acknowledged op is always
 *      durable (DESIGN.md §6, invariant 1).
 */
#include "seq.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define PL_SEQ_BATCH_DEFAULT 512u

typedef struct seq_item {
    struct seq_item *next;
    uint8_t *data;            /* pl_op_encode output, owned */
    size_t len;
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
    uint32_t queued;
    uint32_t pending;         /* submitted, done not yet called */
    struct event *flush_ev;
    int scheduled;            /* flush_ev is active or its timer pending */
    uint64_t last_op;         /* highest op-number in the log */
    int need_replay;          /* a previous apply failed: catch up first */
    /* per-batch scratch, max_batch entries each */
    seq_item **items;
    pl_log_entry *entries;
    pl_op *ops;
    uint64_t **ids;
    pl_apply_result *results;
};

static void item_free(seq_item *it)
{
    if (!it)
        return;
    free(it->data);
    free(it);
}

/* ---- replay ---- */

typedef struct replay_chunk {
    uint64_t expect;          /* next op-number we must see */
    size_t n;
    uint8_t **data;
    size_t *len;
    int err;
} replay_chunk;

/* The store forbids calling back into it from a scan callback, so entries
 * are copied here and applied after log_read returns. */
static int replay_copy(void *ud, const pl_log_entry *e)
{
    replay_chunk *c = ud;
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
    c->data[c->n] = d;
    c->len[c->n] = e->len;
    c->n++;
    c->expect++;
    return 0;
}

/* Apply the log from applied_op() + 1 through min(upto, last entry). */
static int replay_upto(pl_seq *q, uint64_t upto, char *err, size_t errlen)
{
    uint64_t first = 0, last = 0;
    int rc = q->sp->log_bounds(q->st, &first, &last);
    if (rc != PL_OK) {
        snprintf(err, errlen, "reading the log bounds: %s", pl_strerror(rc));
        return rc;
    }
    uint64_t applied = q->sp->applied_op(q->st);
    if (last != 0 && last < applied) {
        snprintf(err, errlen, "the store applied op %llu but its log ends at op %llu",
                 (unsigned long long)applied, (unsigned long long)last);
        return PL_ERR_CORRUPT;
    }
    if (last > applied && first > applied + 1) {
        snprintf(err, errlen, "the log starts at op %llu but the store applied only op %llu",
                 (unsigned long long)first, (unsigned long long)applied);
        return PL_ERR_CORRUPT;
    }
    if (q->last_op < last)
        q->last_op = last;
    if (q->last_op < applied)
        q->last_op = applied;
    if (last > upto)
        last = upto;

    uint8_t **data = calloc(q->max_batch, sizeof *data);
    size_t *len = calloc(q->max_batch, sizeof *len);
    if (!data || !len) {
        free(data);
        free(len);
        snprintf(err, errlen, "replay: out of memory");
        return PL_ERR_NOMEM;
    }
    uint64_t from = applied + 1, total = 0;
    rc = PL_OK;
    while (from <= last) {
        uint64_t to = last - from + 1 > q->max_batch ? from + q->max_batch - 1 : last;
        replay_chunk c = { from, 0, data, len, PL_OK };
        rc = q->sp->log_read(q->st, from, to, replay_copy, &c);
        if (rc == PL_OK && c.err != PL_OK)
            rc = c.err;
        if (rc == PL_OK && c.n != to - from + 1)
            rc = PL_ERR_CORRUPT;
        size_t decoded = 0;
        for (; rc == PL_OK && decoded < c.n; decoded++) {
            q->ids[decoded] = NULL;
            rc = pl_op_decode(data[decoded], len[decoded], &q->ops[decoded], &q->ids[decoded]);
        }
        if (rc == PL_OK)
            rc = pl_chat_apply_batch(q->chat, from, q->ops, c.n, q->results);
        for (size_t i = 0; i < decoded; i++) {
            free(q->ids[i]);
            q->ids[i] = NULL;
        }
        for (size_t i = 0; i < c.n; i++)
            free(data[i]);
        if (rc != PL_OK) {
            snprintf(err, errlen, "replaying ops %llu-%llu from the log: %s",
                     (unsigned long long)from, (unsigned long long)to, pl_strerror(rc));
            break;
        }
        total += c.n;
        from = to + 1;
    }
    free(data);
    free(len);
    if (rc == PL_OK) {
        q->need_replay = 0;
        if (total)
            pl_log(PL_LOG_INFO, "replayed %llu ops (%llu-%llu) from the log",
                   (unsigned long long)total, (unsigned long long)(applied + 1),
                   (unsigned long long)last);
    }
    return rc;
}

int pl_seq_replay(pl_seq *q, char *err, size_t errlen)
{
    return replay_upto(q, UINT64_MAX, err, errlen);
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

static void finish(pl_seq *q, seq_item *it, int err, uint64_t op, const pl_apply_result *res)
{
    q->pending--;
    it->done(it->ud, err, op, res);
}

static void flush_batch(pl_seq *q)
{
    size_t n = 0;
    while (q->head && n < q->max_batch) {
        seq_item *it = q->head;
        q->head = it->next;
        it->next = NULL;
        q->items[n++] = it;
    }
    if (!q->head)
        q->tail = NULL;
    q->queued -= (uint32_t)n;
    if (n == 0)
        return;

    uint64_t first = q->last_op + 1;
    for (size_t i = 0; i < n; i++) {
        q->entries[i].op = first + i;
        q->entries[i].view = 0;
        q->entries[i].data = q->items[i]->data;
        q->entries[i].len = (uint32_t)q->items[i]->len;
    }
    int rc = q->sp->log_append(q->st, q->entries, n);
    if (rc != PL_OK) {
        /* Nothing of this batch is known durable: fail it, and re-read where
         * the log really ends before numbering the next batch. */
        pl_log(PL_LOG_ERROR, "log append of ops %llu-%llu failed: %s",
               (unsigned long long)first, (unsigned long long)(first + n - 1), pl_strerror(rc));
        uint64_t f = 0, l = 0;
        if (q->sp->log_bounds(q->st, &f, &l) == PL_OK && l > q->last_op)
            q->last_op = l;
        q->need_replay = 1;
        for (size_t i = 0; i < n; i++) {
            finish(q, q->items[i], PL_ERR_IO, 0, NULL);
            item_free(q->items[i]);
        }
        return;
    }
    q->last_op = first + n - 1;

    char err[256];
    if (q->need_replay || q->sp->applied_op(q->st) + 1 < first) {
        /* An earlier apply failed: those ops are in the log ahead of this
         * batch, so apply them first, in order. */
        rc = replay_upto(q, first - 1, err, sizeof err);
        if (rc != PL_OK) {
            pl_log(PL_LOG_ERROR, "catching up the state from the log: %s", err);
            q->need_replay = 1;
            for (size_t i = 0; i < n; i++) {
                finish(q, q->items[i], rc, 0, NULL);
                item_free(q->items[i]);
            }
            return;
        }
    }

    size_t decoded = 0;
    for (; decoded < n; decoded++) {
        q->ids[decoded] = NULL;
        rc = pl_op_decode(q->entries[decoded].data, q->entries[decoded].len,
                          &q->ops[decoded], &q->ids[decoded]);
        if (rc != PL_OK)
            break;
    }
    if (rc == PL_OK)
        rc = pl_chat_apply_batch(q->chat, first, q->ops, n, q->results);
    if (rc != PL_OK) {
        pl_log(PL_LOG_ERROR, "applying ops %llu-%llu failed: %s (they are in the log "
               "and will be applied before the next batch or at restart)",
               (unsigned long long)first, (unsigned long long)(first + n - 1),
               pl_strerror(rc));
        q->need_replay = 1;
    }
    if (rc == PL_OK)
        pl_log(PL_LOG_DEBUG, "committed ops %llu-%llu (%zu in one log write)",
               (unsigned long long)first, (unsigned long long)(first + n - 1), n);
    for (size_t i = 0; i < n; i++) {
        if (rc == PL_OK) {
            finish(q, q->items[i], PL_OK, first + i, &q->results[i]);
            if (q->host.applied)
                q->host.applied(q->host.ud, first + i, &q->results[i]);
        } else {
            finish(q, q->items[i], rc, 0, NULL);
        }
        item_free(q->items[i]);
    }
    for (size_t i = 0; i < decoded; i++) {
        free(q->ids[i]);
        q->ids[i] = NULL;
    }
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_seq *q = arg;
    q->scheduled = 0;
    flush_batch(q);
    schedule(q, 0);
}

pl_seq *pl_seq_new(struct event_base *base, const pl_store_plugin *sp, pl_store *st,
                   pl_chat *chat, uint32_t max_batch, const pl_seq_host *host,
                   char *err, size_t errlen)
{
    pl_seq *q = calloc(1, sizeof *q);
    if (!q)
        goto nomem;
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
    if (!q->items || !q->entries || !q->ops || !q->ids || !q->results)
        goto nomem;
    q->flush_ev = event_new(base, -1, 0, on_flush, q);
    if (!q->flush_ev)
        goto nomem;
    return q;
nomem:
    snprintf(err, errlen, "sequencer: out of memory");
    pl_seq_free(q);
    return NULL;
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

uint32_t pl_seq_pending(const pl_seq *q)
{
    return q->pending;
}

uint64_t pl_seq_last_op(const pl_seq *q)
{
    return q->last_op;
}

uint64_t pl_seq_view(const pl_seq *q)
{
    (void)q;
    return 0;
}

void pl_seq_free(pl_seq *q)
{
    if (!q)
        return;
    /* Commit what is queued: those clients were promised an answer. */
    while (q->head && q->items) {
        uint32_t before = q->queued;
        flush_batch(q);
        if (q->queued >= before)
            break;
    }
    while (q->head) {
        seq_item *it = q->head;
        q->head = it->next;
        finish(q, it, PL_ERR_UNAVAILABLE, 0, NULL);
        item_free(it);
    }
    if (q->flush_ev)
        event_free(q->flush_ev);
    free(q->items);
    free(q->entries);
    free(q->ops);
    free(q->ids);
    free(q->results);
    free(q);
}
