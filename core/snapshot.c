/*
 * core/snapshot.c — export and import of the whole chat state (snapshot.h).
 *
 * Import deletes the current state and writes the snapshot's in one store
 * transaction. The receiving server's state is always an earlier state of
 * the same history (it applies committed ops only, and committed ops are the
 * same everywhere: invariant 2), so a client-table row it holds is also in
 * the snapshot and is simply replaced; client rows are never deleted.
 */
#include "snapshot.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "PLSNAP\x01\x00"
#define MAGIC_LEN 8
#define HEADER_LEN (MAGIC_LEN + 4 * 8)

/* ---- writer ---- */

/* The encoding goes to a sink: a growing buffer (export) or a running hash
 * (pl_chat_digest), so the digest hashes exactly what a snapshot carries
 * without building it in memory. */
typedef struct wbuf {
    void (*sink)(void *ud, const void *b, size_t n);
    void *ud;
    int err;                  /* set by a sink that failed */
} wbuf;

static void w_bytes(wbuf *w, const void *b, size_t n)
{
    if (!w->err && n)
        w->sink(w->ud, b, n);
}

static void w_u64(wbuf *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    w_bytes(w, b, 8);
}

static void w_u8(wbuf *w, uint8_t v)
{
    w_bytes(w, &v, 1);
}

static void w_str(wbuf *w, pl_str s)
{
    uint8_t b[4] = { (uint8_t)s.len, (uint8_t)(s.len >> 8), (uint8_t)(s.len >> 16),
                     (uint8_t)(s.len >> 24) };
    w_bytes(w, b, 4);
    w_bytes(w, s.ptr, s.len);
}

static int w_account(void *ud, const pl_account_rec *a)
{
    wbuf *w = ud;
    w_u8(w, 'A');
    w_u64(w, a->uid);
    w_u64(w, a->created_ms);
    w_str(w, a->name);
    w_str(w, a->pwhash);
    return w->err != 0;
}

static int w_session(void *ud, const pl_session_rec *s)
{
    wbuf *w = ud;
    w_u8(w, 'S');
    w_u64(w, s->uid);
    w_u64(w, s->created_ms);
    w_str(w, s->token_hash);
    return w->err != 0;
}

static int w_message(void *ud, const pl_message_rec *m)
{
    wbuf *w = ud;
    w_u8(w, 'M');
    w_u64(w, m->id);
    w_u64(w, m->from_uid);
    w_u64(w, m->to_uid);
    w_u64(w, m->time_ms);
    w_u64(w, m->flags);
    w_str(w, m->from_name);
    w_str(w, m->to_name);
    w_str(w, m->body);
    return w->err != 0;
}

static int w_client(void *ud, const pl_client_rec *c)
{
    wbuf *w = ud;
    w_u8(w, 'C');
    w_u64(w, c->client_id);
    w_u64(w, c->request_no);
    w_u64(w, c->op);
    w_str(w, c->reply);
    return w->err != 0;
}

/* The chat core's counters start at 1 when never set. */
static uint64_t counter(const pl_store_plugin *sp, pl_store *st, const char *key)
{
    uint64_t v = 1;
    if (sp->meta_get(st, key, &v) != PL_OK)
        v = 1;
    return v;
}

static int walk(const pl_store_plugin *sp, pl_store *st, wbuf *w)
{
    w_u64(w, counter(sp, st, "next_uid"));
    w_u64(w, counter(sp, st, "next_msg_id"));
    int rc = PL_OK;
    pl_msg_query q = { .kind = PL_Q_ALL };
    if (!w->err && (rc = sp->account_scan(st, (pl_str){ NULL, 0 }, w_account, w)) == PL_OK &&
        !w->err && (rc = sp->session_scan(st, w_session, w)) == PL_OK &&
        !w->err && (rc = sp->message_scan(st, &q, w_message, w)) == PL_OK && !w->err)
        rc = sp->client_scan(st, w_client, w);
    return rc == PL_OK ? w->err : rc;
}

int pl_snapshot_walk(const pl_store_plugin *sp, pl_store *st,
                     void (*sink)(void *ud, const void *b, size_t n), void *ud)
{
    wbuf w = { sink, ud, 0 };
    return walk(sp, st, &w);
}

typedef struct membuf {
    uint8_t *p;
    size_t len, cap;
    int err;
} membuf;

static void mem_sink(void *ud, const void *b, size_t n)
{
    membuf *m = ud;
    if (m->err)
        return;
    if (m->len + n > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->len + n)
            cap *= 2;
        uint8_t *p = realloc(m->p, cap);
        if (!p) {
            m->err = PL_ERR_NOMEM;
            return;
        }
        m->p = p;
        m->cap = cap;
    }
    memcpy(m->p + m->len, b, n);
    m->len += n;
}

int pl_snapshot_export(const pl_store_plugin *sp, pl_store *st, uint64_t op_view,
                       uint8_t **out, size_t *len, uint64_t *op)
{
    membuf m = { 0 };
    wbuf w = { mem_sink, &m, 0 };
    *out = NULL;
    *len = 0;
    *op = sp->applied_op(st);
    w_bytes(&w, MAGIC, MAGIC_LEN);
    w_u64(&w, *op);
    w_u64(&w, op_view);
    int rc = walk(sp, st, &w);
    if (rc == PL_OK)
        rc = m.err;
    if (rc == PL_OK) {
        uint8_t h[32];
        w_u8(&w, 'E');
        if (!m.err) {
            crypto_generichash(h, sizeof h, m.p, m.len, NULL, 0);
            w_bytes(&w, h, sizeof h);
        }
        rc = m.err;
    }
    if (rc != PL_OK) {
        free(m.p);
        return rc;
    }
    *out = m.p;
    *len = m.len;
    return PL_OK;
}

/* ---- reader ---- */

typedef struct rbuf {
    const uint8_t *p;
    size_t len, pos;
} rbuf;

static int r_u64(rbuf *r, uint64_t *v)
{
    if (r->len - r->pos < 8)
        return PL_ERR_CORRUPT;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | r->p[r->pos + (size_t)i];
    r->pos += 8;
    *v = x;
    return PL_OK;
}

static int r_str(rbuf *r, pl_str *s)
{
    if (r->len - r->pos < 4)
        return PL_ERR_CORRUPT;
    const uint8_t *b = r->p + r->pos;
    uint32_t n = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    r->pos += 4;
    if (r->len - r->pos < n)
        return PL_ERR_CORRUPT;
    s->ptr = (const char *)r->p + r->pos;
    s->len = n;
    r->pos += n;
    return PL_OK;
}

typedef struct snap_rec {
    uint8_t tag;
    pl_account_rec a;
    pl_session_rec s;
    pl_message_rec m;
    pl_client_rec c;
} snap_rec;

/* Next record; PL_OK with tag 'E' at the end. */
static int r_record(rbuf *r, snap_rec *x)
{
    if (r->pos >= r->len)
        return PL_ERR_CORRUPT;
    x->tag = r->p[r->pos++];
    uint64_t flags;
    switch (x->tag) {
    case 'A':
        return r_u64(r, &x->a.uid) || r_u64(r, &x->a.created_ms) || r_str(r, &x->a.name) ||
                       r_str(r, &x->a.pwhash)
                   ? PL_ERR_CORRUPT
                   : PL_OK;
    case 'S':
        return r_u64(r, &x->s.uid) || r_u64(r, &x->s.created_ms) || r_str(r, &x->s.token_hash)
                   ? PL_ERR_CORRUPT
                   : PL_OK;
    case 'M':
        if (r_u64(r, &x->m.id) || r_u64(r, &x->m.from_uid) || r_u64(r, &x->m.to_uid) ||
            r_u64(r, &x->m.time_ms) || r_u64(r, &flags) || r_str(r, &x->m.from_name) ||
            r_str(r, &x->m.to_name) || r_str(r, &x->m.body) || flags > UINT32_MAX)
            return PL_ERR_CORRUPT;
        x->m.flags = (uint32_t)flags;
        return PL_OK;
    case 'C':
        return r_u64(r, &x->c.client_id) || r_u64(r, &x->c.request_no) || r_u64(r, &x->c.op) ||
                       r_str(r, &x->c.reply)
                   ? PL_ERR_CORRUPT
                   : PL_OK;
    case 'E':
        return PL_OK;
    default:
        return PL_ERR_CORRUPT;
    }
}

int pl_snapshot_peek(const uint8_t *buf, size_t len, uint64_t *op, uint64_t *op_view)
{
    if (len < HEADER_LEN + 1 + 32 || memcmp(buf, MAGIC, MAGIC_LEN) != 0 ||
        buf[len - 33] != 'E')
        return PL_ERR_CORRUPT;
    uint8_t h[32];
    crypto_generichash(h, sizeof h, buf, len - 32, NULL, 0);
    if (sodium_memcmp(h, buf + len - 32, 32) != 0)
        return PL_ERR_CORRUPT;
    rbuf r = { buf, len - 32, MAGIC_LEN };
    if (r_u64(&r, op) || r_u64(&r, op_view))
        return PL_ERR_CORRUPT;
    return PL_OK;
}

/* ---- import ---- */

typedef struct idvec {
    uint64_t *v;
    size_t n, cap;
    int err;
} idvec;

static void idv_push(idvec *d, uint64_t x)
{
    if (d->err)
        return;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 256;
        uint64_t *v = realloc(d->v, cap * sizeof *v);
        if (!v) {
            d->err = PL_ERR_NOMEM;
            return;
        }
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = x;
}

static int collect_uid(void *ud, const pl_account_rec *a)
{
    idv_push(ud, a->uid);
    return ((idvec *)ud)->err != 0;
}

static int collect_msg(void *ud, const pl_message_rec *m)
{
    idv_push(ud, m->id);
    return ((idvec *)ud)->err != 0;
}

typedef struct hashes {
    uint8_t (*h)[32];
    size_t n, cap;
    int err;
} hashes;

static int collect_session(void *ud, const pl_session_rec *s)
{
    hashes *d = ud;
    if (s->token_hash.len != 32)
        return 0; /* not ours to judge; delete_uid below removes it */
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        void *p = realloc(d->h, cap * sizeof *d->h);
        if (!p) {
            d->err = PL_ERR_NOMEM;
            return 1;
        }
        d->h = p;
        d->cap = cap;
    }
    memcpy(d->h[d->n++], s->token_hash.ptr, 32);
    return 0;
}

int pl_snapshot_import(const pl_store_plugin *sp, pl_store *st, const uint8_t *buf, size_t len)
{
    uint64_t op, op_view, next_uid, next_msg;
    int rc = pl_snapshot_peek(buf, len, &op, &op_view);
    if (rc != PL_OK)
        return rc;
    /* Pass 1: the whole body parses, before anything changes. */
    rbuf r = { buf, len - 32, MAGIC_LEN };
    if (r_u64(&r, &op) || r_u64(&r, &op_view) || r_u64(&r, &next_uid) || r_u64(&r, &next_msg))
        return PL_ERR_CORRUPT;
    size_t body = r.pos;
    snap_rec x;
    do {
        if ((rc = r_record(&r, &x)) != PL_OK)
            return rc;
    } while (x.tag != 'E');
    if (r.pos != r.len)
        return PL_ERR_CORRUPT;

    /* What exists now, collected first: scan callbacks may not write. */
    idvec uids = { 0 }, msgs = { 0 };
    hashes ses = { 0 };
    pl_msg_query all = { .kind = PL_Q_ALL };
    if ((rc = sp->account_scan(st, (pl_str){ NULL, 0 }, collect_uid, &uids)) == PL_OK &&
        (rc = sp->message_scan(st, &all, collect_msg, &msgs)) == PL_OK)
        rc = sp->session_scan(st, collect_session, &ses);
    if (rc == PL_OK)
        rc = uids.err ? uids.err : msgs.err ? msgs.err : ses.err;
    if (rc != PL_OK)
        goto out;

    if ((rc = sp->begin(st)) != PL_OK)
        goto out;
    for (size_t i = 0; rc == PL_OK && i < msgs.n; i++)
        rc = sp->message_delete(st, msgs.v[i]);
    for (size_t i = 0; rc == PL_OK && i < ses.n; i++)
        rc = sp->session_delete(st, (pl_str){ (const char *)ses.h[i], 32 });
    for (size_t i = 0; rc == PL_OK && i < uids.n; i++) {
        rc = sp->session_delete_uid(st, uids.v[i]);
        if (rc == PL_OK)
            rc = sp->account_delete(st, uids.v[i]);
    }
    /* Pass 2: write the snapshot's records. */
    r.pos = body;
    while (rc == PL_OK) {
        r_record(&r, &x); /* cannot fail: pass 1 read the same bytes */
        if (x.tag == 'E')
            break;
        switch (x.tag) {
        case 'A': rc = sp->account_put(st, &x.a); break;
        case 'S': rc = sp->session_put(st, &x.s); break;
        case 'M': rc = sp->message_put(st, &x.m); break;
        case 'C': rc = sp->client_put(st, &x.c); break;
        }
    }
    if (rc == PL_OK && (rc = sp->meta_set(st, "next_uid", next_uid)) == PL_OK)
        rc = sp->meta_set(st, "next_msg_id", next_msg);
    if (rc == PL_OK)
        rc = sp->commit(st, op);
    else
        sp->abort(st);
out:
    free(uids.v);
    free(msgs.v);
    free(ses.h);
    return rc;
}

/* ---- record by record ---- */

int pl_snapshot_iter_init(pl_snapshot_iter *it, const uint8_t *buf, size_t len, uint64_t *op,
                          uint64_t *next_uid, uint64_t *next_msg_id)
{
    uint64_t o, view;
    int rc = pl_snapshot_peek(buf, len, &o, &view);
    if (rc != PL_OK)
        return rc;
    rbuf r = { buf, len - 32, MAGIC_LEN + 16 };
    uint64_t nu, nm;
    if (r_u64(&r, &nu) || r_u64(&r, &nm))
        return PL_ERR_CORRUPT;
    it->p = buf;
    it->len = len - 32;
    it->pos = r.pos;
    if (op)
        *op = o;
    if (next_uid)
        *next_uid = nu;
    if (next_msg_id)
        *next_msg_id = nm;
    return PL_OK;
}

int pl_snapshot_iter_next(pl_snapshot_iter *it, pl_snapshot_rec *rec)
{
    rbuf r = { it->p, it->len, it->pos };
    snap_rec x;
    memset(&x, 0, sizeof x);
    int rc = r_record(&r, &x);
    if (rc != PL_OK)
        return rc;
    if (x.tag == 'E' && r.pos != r.len)
        return PL_ERR_CORRUPT;
    it->pos = r.pos;
    rec->tag = x.tag;
    rec->a = x.a;
    rec->s = x.s;
    rec->m = x.m;
    rec->c = x.c;
    return PL_OK;
}

int pl_snapshot_digest(const uint8_t *buf, size_t len, char out[65])
{
    uint64_t op, view;
    out[0] = 0;
    int rc = pl_snapshot_peek(buf, len, &op, &view);
    if (rc != PL_OK)
        return rc;
    /* The body between the header's op fields and the 'E' trailer is what
     * pl_snapshot_walk feeds pl_chat_digest. */
    unsigned char h[32];
    crypto_generichash(h, sizeof h, buf + MAGIC_LEN + 16, len - 33 - (MAGIC_LEN + 16), NULL, 0);
    sodium_bin2hex(out, 65, h, sizeof h);
    return PL_OK;
}

/* ---- restore batches ---- */

#define RESTORE_VERSION 1u

int pl_restore_batch_encode(const pl_restore_batch *b, uint8_t **out, size_t *len)
{
    membuf m = { 0 };
    wbuf w = { mem_sink, &m, 0 };
    *out = NULL;
    *len = 0;
    if (b->n > PL_RESTORE_BATCH_MAX || (b->n && !b->recs) || b->flags > 0xff)
        return PL_ERR_INVALID;
    w_u8(&w, RESTORE_VERSION);
    w_u8(&w, (uint8_t)b->flags);
    w_u64(&w, b->next_uid);
    w_u64(&w, b->next_msg_id);
    uint8_t cnt[4] = { (uint8_t)b->n, (uint8_t)(b->n >> 8), (uint8_t)(b->n >> 16),
                       (uint8_t)(b->n >> 24) };
    w_bytes(&w, cnt, 4);
    int rc = PL_OK;
    for (size_t i = 0; i < b->n && rc == PL_OK; i++) {
        const pl_snapshot_rec *x = &b->recs[i];
        switch (x->tag) {
        case 'A': w_account(&w, &x->a); break;
        case 'S': w_session(&w, &x->s); break;
        case 'M': w_message(&w, &x->m); break;
        case 'C': w_client(&w, &x->c); break;
        default: rc = PL_ERR_INVALID; break;
        }
    }
    if (rc == PL_OK)
        rc = m.err;
    if (rc != PL_OK) {
        free(m.p);
        return rc;
    }
    *out = m.p;
    *len = m.len;
    return PL_OK;
}

/* The smallest record: a session with an empty hash (tag, 2 u64, a length). */
#define RESTORE_REC_MIN (1u + 16u + 4u)

int pl_restore_batch_decode(const uint8_t *buf, size_t len, pl_restore_batch *b)
{
    memset(b, 0, sizeof *b);
    rbuf r = { buf, buf ? len : 0, 0 };
    if (r.len < 2 + 16 + 4 || buf[0] != RESTORE_VERSION)
        return PL_ERR_CORRUPT;
    b->flags = buf[1];
    r.pos = 2;
    if (r_u64(&r, &b->next_uid) || r_u64(&r, &b->next_msg_id))
        return PL_ERR_CORRUPT;
    const uint8_t *c = buf + r.pos;
    uint32_t n = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 |
                 (uint32_t)c[3] << 24;
    r.pos += 4;
    if (n > PL_RESTORE_BATCH_MAX || (r.len - r.pos) / RESTORE_REC_MIN < n)
        return PL_ERR_CORRUPT;
    pl_snapshot_rec *v = n ? calloc(n, sizeof *v) : NULL;
    if (n && !v)
        return PL_ERR_NOMEM;
    for (uint32_t i = 0; i < n; i++) {
        snap_rec x;
        memset(&x, 0, sizeof x);
        if (r_record(&r, &x) != PL_OK || x.tag == 'E') {
            free(v);
            return PL_ERR_CORRUPT;
        }
        v[i].tag = x.tag;
        v[i].a = x.a;
        v[i].s = x.s;
        v[i].m = x.m;
        v[i].c = x.c;
    }
    if (r.pos != r.len) {
        free(v);
        return PL_ERR_CORRUPT;
    }
    b->recs = v;
    b->n = n;
    return PL_OK;
}
