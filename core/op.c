/*
 * core/op.c — the byte encoding of ops (what goes into the replicated log)
 * and of recorded replies (what the client table keeps for exactly-once).
 *
 * Both encodings are a version byte followed by fixed-width little-endian
 * integers and u32-length-prefixed strings, so equal values encode to equal
 * bytes on every replica and architecture. The decoders treat their input as
 * hostile: it came from a peer or from disk. Every length is checked against
 * what remains before it is used, trailing bytes are an error, and nothing
 * is allocated in proportion to a claimed count before the bytes backing it
 * are known to be there.
 */
#include <stdlib.h>

#include "chat.h"

#define OP_VERSION 1u
#define REPLY_VERSION 1u

/* ---- writer ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int err;           /* sticky: the first failure, checked once at the end */
} wbuf;

static void wb_reserve(wbuf *w, size_t more)
{
    if (w->err)
        return;
    if (more > SIZE_MAX - w->len) {
        w->err = PL_ERR_NOMEM;
        return;
    }
    if (w->len + more <= w->cap)
        return;
    size_t cap = w->cap ? w->cap : 128;
    while (cap < w->len + more)
        cap = cap > SIZE_MAX / 2 ? w->len + more : cap * 2;
    uint8_t *np = realloc(w->p, cap);
    if (!np) {
        w->err = PL_ERR_NOMEM;
        return;
    }
    w->p = np;
    w->cap = cap;
}

static void wb_u8(wbuf *w, uint8_t v)
{
    wb_reserve(w, 1);
    if (!w->err)
        w->p[w->len++] = v;
}

static void wb_u32(wbuf *w, uint32_t v)
{
    wb_reserve(w, 4);
    if (w->err)
        return;
    for (int i = 0; i < 4; i++)
        w->p[w->len++] = (uint8_t)(v >> (8 * i));
}

static void wb_u64(wbuf *w, uint64_t v)
{
    wb_reserve(w, 8);
    if (w->err)
        return;
    for (int i = 0; i < 8; i++)
        w->p[w->len++] = (uint8_t)(v >> (8 * i));
}

static void wb_str(wbuf *w, pl_str s)
{
    if (s.len && !s.ptr) {
        w->err = PL_ERR_INVALID;
        return;
    }
    wb_u32(w, s.len);
    wb_reserve(w, s.len);
    if (w->err || !s.len)
        return;
    memcpy(w->p + w->len, s.ptr, s.len);
    w->len += s.len;
}

static int wb_finish(wbuf *w, uint8_t **out, size_t *len)
{
    if (w->err) {
        free(w->p);
        *out = NULL;
        *len = 0;
        return w->err;
    }
    *out = w->p;
    *len = w->len;
    return PL_OK;
}

/* ---- reader ---- */

typedef struct rbuf {
    const uint8_t *p;
    size_t len, pos;
    int bad;           /* sticky: set on the first out-of-bounds read */
} rbuf;

static size_t rb_left(const rbuf *r)
{
    return r->len - r->pos;
}

static uint8_t rb_u8(rbuf *r)
{
    if (r->bad || rb_left(r) < 1) {
        r->bad = 1;
        return 0;
    }
    return r->p[r->pos++];
}

static uint32_t rb_u32(rbuf *r)
{
    if (r->bad || rb_left(r) < 4) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)r->p[r->pos++] << (8 * i);
    return v;
}

static uint64_t rb_u64(rbuf *r)
{
    if (r->bad || rb_left(r) < 8) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[r->pos++] << (8 * i);
    return v;
}

static pl_str rb_str(rbuf *r)
{
    pl_str s = { NULL, 0 };
    uint32_t n = rb_u32(r);
    if (r->bad)
        return s;
    if (rb_left(r) < n) {
        r->bad = 1;
        return s;
    }
    s.ptr = (const char *)r->p + r->pos;
    s.len = n;
    r->pos += n;
    return s;
}

/* ---- ops ---- */

int pl_op_encode(const pl_op *op, uint8_t **out, size_t *len)
{
    wbuf w = { 0 };
    if (op->n_ids && !op->ids)
        return PL_ERR_INVALID;
    wb_u8(&w, OP_VERSION);
    wb_u32(&w, op->kind);
    wb_u64(&w, op->client_id);
    wb_u64(&w, op->request_no);
    wb_u64(&w, op->time_ms);
    wb_u64(&w, op->uid);
    wb_str(&w, op->name);
    wb_str(&w, op->pwhash);
    wb_str(&w, op->token_hash);
    wb_str(&w, op->body);
    wb_u64(&w, op->n);
    wb_u32(&w, op->n_ids);
    for (uint32_t i = 0; i < op->n_ids; i++)
        wb_u64(&w, op->ids[i]);
    return wb_finish(&w, out, len);
}

int64_t pl_op_kind(const uint8_t *buf, size_t len)
{
    rbuf r = { buf, buf ? len : 0, 0, 0 };
    if (rb_u8(&r) != OP_VERSION)
        return -1;
    uint32_t kind = rb_u32(&r);
    return r.bad ? -1 : (int64_t)kind;
}

int pl_op_decode(const uint8_t *buf, size_t len, pl_op *op, uint64_t **ids_owner)
{
    rbuf r = { buf, buf ? len : 0, 0, 0 };
    uint64_t *ids = NULL;

    memset(op, 0, sizeof *op);
    *ids_owner = NULL;
    if (rb_u8(&r) != OP_VERSION)
        return PL_ERR_CORRUPT;
    op->kind = rb_u32(&r);
    op->client_id = rb_u64(&r);
    op->request_no = rb_u64(&r);
    op->time_ms = rb_u64(&r);
    op->uid = rb_u64(&r);
    op->name = rb_str(&r);
    op->pwhash = rb_str(&r);
    op->token_hash = rb_str(&r);
    op->body = rb_str(&r);
    op->n = rb_u64(&r);
    uint32_t n_ids = rb_u32(&r);
    if (r.bad || op->kind >= PL_OP__COUNT)
        goto fail;
    /* The count is only believed once the bytes behind it are present, so a
     * forged count cannot make us allocate gigabytes. */
    if (rb_left(&r) / 8 < n_ids)
        goto fail;
    if (n_ids) {
        ids = malloc((size_t)n_ids * sizeof *ids);
        if (!ids) {
            memset(op, 0, sizeof *op);
            return PL_ERR_NOMEM;
        }
        for (uint32_t i = 0; i < n_ids; i++)
            ids[i] = rb_u64(&r);
    }
    if (r.bad || rb_left(&r) != 0)
        goto fail;
    op->ids = ids;
    op->n_ids = n_ids;
    *ids_owner = ids;
    return PL_OK;
fail:
    free(ids);
    memset(op, 0, sizeof *op);
    return PL_ERR_CORRUPT;
}

/* ---- recorded replies ---- */

int pl_op_reply_encode(const pl_response *resp, uint8_t **out, size_t *len)
{
    wbuf w = { 0 };
    if (resp->n_msgs && !resp->msgs)
        return PL_ERR_INVALID;
    wb_u8(&w, REPLY_VERSION);
    wb_u32(&w, resp->method);
    wb_u32(&w, resp->status);
    wb_str(&w, resp->error);
    wb_u64(&w, resp->id);
    wb_u64(&w, resp->time_ms);
    wb_u64(&w, resp->unread);
    wb_u64(&w, resp->read);
    wb_u32(&w, resp->more);
    wb_u32(&w, resp->n_msgs);
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        const pl_message *m = &resp->msgs[i];
        wb_u64(&w, m->id);
        wb_str(&w, m->from);
        wb_str(&w, m->to);
        wb_str(&w, m->body);
        wb_u64(&w, m->time_ms);
        wb_u32(&w, m->state);
    }
    return wb_finish(&w, out, len);
}

/* The smallest encoded message: id, three empty strings, time, state. */
#define REPLY_MSG_MIN (8u + 3u * 4u + 8u + 4u)

int pl_op_reply_decode(const uint8_t *buf, size_t len, pl_response *resp,
                       pl_message **msgs_owner)
{
    rbuf r = { buf, buf ? len : 0, 0, 0 };
    pl_message *msgs = NULL;

    memset(resp, 0, sizeof *resp);
    *msgs_owner = NULL;
    if (rb_u8(&r) != REPLY_VERSION)
        return PL_ERR_CORRUPT;
    resp->method = rb_u32(&r);
    resp->status = rb_u32(&r);
    resp->error = rb_str(&r);
    resp->id = rb_u64(&r);
    resp->time_ms = rb_u64(&r);
    resp->unread = rb_u64(&r);
    resp->read = rb_u64(&r);
    resp->more = rb_u32(&r);
    uint32_t n = rb_u32(&r);
    if (r.bad || rb_left(&r) / REPLY_MSG_MIN < n)
        goto fail;
    if (n) {
        msgs = calloc(n, sizeof *msgs);
        if (!msgs) {
            memset(resp, 0, sizeof *resp);
            return PL_ERR_NOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
            msgs[i].id = rb_u64(&r);
            msgs[i].from = rb_str(&r);
            msgs[i].to = rb_str(&r);
            msgs[i].body = rb_str(&r);
            msgs[i].time_ms = rb_u64(&r);
            msgs[i].state = rb_u32(&r);
        }
    }
    if (r.bad || rb_left(&r) != 0)
        goto fail;
    resp->msgs = msgs;
    resp->n_msgs = n;
    *msgs_owner = msgs;
    return PL_OK;
fail:
    free(msgs);
    memset(resp, 0, sizeof *resp);
    return PL_ERR_CORRUPT;
}

/* ---- import batches (chat.h, PL_OP_IMPORT) ----
 * u8 version (1) | u32 count | count records:
 *   'U' str name, str pwhash
 *   'M' str to, str from, u64 seq, u8 read, str body */

#define IMPORT_BATCH_VERSION 1u
/* The smallest record: a kind byte and two empty strings. */
#define IMPORT_REC_MIN (1u + 2u * 4u)

int pl_import_batch_encode(const pl_import_rec *recs, size_t n, uint8_t **out, size_t *len)
{
    wbuf w = { 0 };
    *out = NULL;
    *len = 0;
    if (n > PL_IMPORT_BATCH_MAX || (n && !recs))
        return PL_ERR_INVALID;
    wb_u8(&w, IMPORT_BATCH_VERSION);
    wb_u32(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const pl_import_rec *r = &recs[i];
        wb_u8(&w, r->kind);
        if (r->kind == 'U') {
            wb_str(&w, r->name);
            wb_str(&w, r->pwhash);
        } else if (r->kind == 'M') {
            wb_str(&w, r->to);
            wb_str(&w, r->from);
            wb_u64(&w, r->seq);
            wb_u8(&w, r->read ? 1 : 0);
            wb_str(&w, r->body);
        } else {
            w.err = PL_ERR_INVALID;
        }
    }
    return wb_finish(&w, out, len);
}

int pl_import_batch_decode(const uint8_t *buf, size_t len, pl_import_rec **recs, size_t *n)
{
    rbuf r = { buf, buf ? len : 0, 0, 0 };
    pl_import_rec *v = NULL;
    *recs = NULL;
    *n = 0;
    if (rb_u8(&r) != IMPORT_BATCH_VERSION)
        return PL_ERR_CORRUPT;
    uint32_t count = rb_u32(&r);
    /* Believed only as far as the bytes behind it go (as pl_op_decode). */
    if (r.bad || count > PL_IMPORT_BATCH_MAX || rb_left(&r) / IMPORT_REC_MIN < count)
        return PL_ERR_CORRUPT;
    if (count && !(v = calloc(count, sizeof *v)))
        return PL_ERR_NOMEM;
    for (uint32_t i = 0; i < count && !r.bad; i++) {
        pl_import_rec *x = &v[i];
        x->kind = rb_u8(&r);
        if (x->kind == 'U') {
            x->name = rb_str(&r);
            x->pwhash = rb_str(&r);
        } else if (x->kind == 'M') {
            x->to = rb_str(&r);
            x->from = rb_str(&r);
            x->seq = rb_u64(&r);
            uint8_t rd = rb_u8(&r);
            if (rd > 1)
                r.bad = 1;
            x->read = rd;
            x->body = rb_str(&r);
        } else {
            r.bad = 1;
        }
    }
    if (r.bad || rb_left(&r) != 0) {
        free(v);
        return PL_ERR_CORRUPT;
    }
    *recs = v;
    *n = count;
    return PL_OK;
}

const char *pl_import_outcome_name(uint32_t outcome)
{
    switch (outcome) {
    case PL_IMP_CREATED: return "created";
    case PL_IMP_IMPORTED: return "imported";
    case PL_IMP_DONE_BEFORE: return "imported before";
    case PL_IMP_TAKEN: return "name taken by a parley account";
    case PL_IMP_NO_RECIPIENT: return "recipient not imported";
    case PL_IMP_RECIPIENT_GONE: return "recipient deleted since its import";
    case PL_IMP_INVALID: return "invalid";
    default: return "unknown";
    }
}
