/*
 * plugins/transport-tcp/codec_binary.c — the compact binary codec. Decoded
 * frames point into a scratch arena (plugins/common/codec_scratch.h), shared
 * with the JSON codec.
 *
 * Frame: u32 big-endian payload length L (2 <= L <= max_frame), then L bytes:
 *
 *   request : u8 kind=0x01, u8 method, u64 request_id, u64 client_id,
 *             u64 request_no, str16 token, then the method's fields
 *   response: u8 kind=0x02, u8 method, u64 request_id, u16 status, then
 *             status != 0: str16 error, str16 leader
 *             status == 0: the method's fields
 *
 * All integers are fixed-width big-endian. str16 = u16 length + bytes,
 * str32 = u32 length + bytes (only message bodies, which may be 64 KiB and so
 * one byte too long for a u16). Every per-method layout is in
 * docs/protocol.md; the tables below (put_request / get_request ...) are the
 * code form of the same list, keep them in step.
 *
 * Decoding never trusts a count: a list's count is checked against the bytes
 * that remain (times the smallest encoding of one element) before anything
 * is allocated, and a frame must be consumed exactly — trailing bytes are
 * malformed, so a frame has exactly one reading.
 */
#include "tcp_codec.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define BIN_KIND_REQUEST 0x01u
#define BIN_KIND_RESPONSE 0x02u
#define BIN_PREFIX 4u
/* Smallest encodings, used to bound counts before allocating. */
#define BIN_MIN_ID 8u
#define BIN_MIN_USER 2u
#define BIN_MIN_MSG (8u + 8u + 1u + 2u + 2u + 4u)
#define BIN_MIN_SERVER (4u + 1u + 2u + 2u + 8u * 4u + 2u + 2u + 2u)

/* ------------------------------------------------------------------ */
/* writer                                                               */

typedef struct bin_w {
    uint8_t *p;
    size_t len, cap;
    int err;      /* first error; later writes are no-ops */
} bin_w;

static void w_need(bin_w *w, size_t n)
{
    size_t cap;
    uint8_t *p;

    if (w->err)
        return;
    if (n > SIZE_MAX - w->len) {
        w->err = PL_ERR_NOMEM;
        return;
    }
    if (w->len + n <= w->cap)
        return;
    cap = w->cap ? w->cap : 256;
    while (cap < w->len + n)
        cap = cap > SIZE_MAX / 2 ? w->len + n : cap * 2;
    p = realloc(w->p, cap);
    if (!p) {
        w->err = PL_ERR_NOMEM;
        return;
    }
    w->p = p;
    w->cap = cap;
}

static void w_u8(bin_w *w, uint32_t v)
{
    w_need(w, 1);
    if (!w->err)
        w->p[w->len++] = (uint8_t)v;
}

static void w_be(bin_w *w, uint64_t v, unsigned bytes)
{
    w_need(w, bytes);
    if (w->err)
        return;
    for (unsigned i = 0; i < bytes; i++)
        w->p[w->len + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    w->len += bytes;
}

static void w_u16(bin_w *w, uint32_t v) { w_be(w, v, 2); }
static void w_u32(bin_w *w, uint32_t v) { w_be(w, v, 4); }
static void w_u64(bin_w *w, uint64_t v) { w_be(w, v, 8); }

static void w_bytes(bin_w *w, const void *b, size_t n)
{
    w_need(w, n);
    if (w->err || n == 0)
        return;
    memcpy(w->p + w->len, b, n);
    w->len += n;
}

/* str16: strings the protocol bounds far below 64 KiB (names, tokens,
 * passwords, error text). One that does not fit cannot be a valid value. */
static void w_str16(bin_w *w, pl_str s)
{
    if (s.len > 0xFFFFu) {
        if (!w->err)
            w->err = PL_ERR_INVALID;
        return;
    }
    w_u16(w, s.len);
    w_bytes(w, s.ptr, s.len);
}

static void w_str32(bin_w *w, pl_str s)
{
    w_u32(w, s.len);
    w_bytes(w, s.ptr, s.len);
}

/* u8 fields that carry a small number: refuse rather than truncate. */
static void w_small(bin_w *w, uint32_t v)
{
    if (v > 0xFFu) {
        if (!w->err)
            w->err = PL_ERR_INVALID;
        return;
    }
    w_u8(w, v);
}

static void w_msg(bin_w *w, const pl_message *m)
{
    w_u64(w, m->id);
    w_u64(w, m->time_ms);
    w_small(w, m->state);
    w_str16(w, m->from);
    w_str16(w, m->to);
    w_str32(w, m->body);
}

/* Start a frame: the length prefix is patched by w_finish. */
static void w_start(bin_w *w)
{
    memset(w, 0, sizeof *w);
    w_u32(w, 0);
}

static int w_finish(bin_w *w, uint32_t max_frame, uint8_t **out, size_t *len)
{
    size_t payload;

    if (!w->err) {
        payload = w->len - BIN_PREFIX;
        if (payload > max_frame) {
            w->err = PL_ERR_FRAME_TOO_LARGE;
        } else {
            w->p[0] = (uint8_t)(payload >> 24);
            w->p[1] = (uint8_t)(payload >> 16);
            w->p[2] = (uint8_t)(payload >> 8);
            w->p[3] = (uint8_t)payload;
        }
    }
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

int tcp_bin_encode_request(uint32_t max_frame, const pl_request *req,
                           uint8_t **out, size_t *len)
{
    bin_w w;

    w_start(&w);
    w_u8(&w, BIN_KIND_REQUEST);
    w_small(&w, req->method);
    w_u64(&w, req->request_id);
    w_u64(&w, req->client_id);
    w_u64(&w, req->request_no);
    w_str16(&w, req->token);
    switch (req->method) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        w_str16(&w, req->username);
        w_str16(&w, req->password);
        break;
    case PL_M_LIST_USERS:
        w_str16(&w, req->pattern);
        w_u64(&w, req->offset);
        w_u64(&w, req->limit);
        break;
    case PL_M_SEND:
        w_str16(&w, req->to);
        w_str32(&w, req->body);
        break;
    case PL_M_READ:
        w_u64(&w, req->n);
        break;
    case PL_M_HISTORY:
        w_u64(&w, req->offset);
        w_u64(&w, req->limit);
        break;
    case PL_M_CONVERSATION:
        w_str16(&w, req->peer);
        w_u64(&w, req->offset);
        w_u64(&w, req->limit);
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        w_u32(&w, req->n_ids);
        for (uint32_t i = 0; i < req->n_ids; i++)
            w_u64(&w, req->ids[i]);
        break;
    case PL_M_DELETE_ACCOUNT:
        w_str16(&w, req->password);
        break;
    case PL_M_SUBSCRIBE:
        w_u64(&w, req->after_id);
        break;
    default: /* logout, counts, status, ping: the header says it all */
        break;
    }
    return w_finish(&w, max_frame, out, len);
}

int tcp_bin_encode_response(uint32_t max_frame, const pl_response *resp,
                            uint8_t **out, size_t *len)
{
    bin_w w;

    w_start(&w);
    w_u8(&w, BIN_KIND_RESPONSE);
    w_small(&w, resp->method);
    w_u64(&w, resp->request_id);
    if (resp->status > 0xFFFFu && !w.err)
        w.err = PL_ERR_INVALID;
    w_u16(&w, resp->status);
    if (resp->status != PL_OK) {
        w_str16(&w, resp->error);
        w_str16(&w, resp->leader);
        return w_finish(&w, max_frame, out, len);
    }
    switch (resp->method) {
    case PL_M_LOGIN:
        w_str16(&w, resp->token);
        w_u64(&w, resp->unread);
        break;
    case PL_M_LIST_USERS:
        w_u8(&w, resp->more ? 1 : 0);
        w_u32(&w, resp->n_users);
        for (uint32_t i = 0; i < resp->n_users; i++)
            w_str16(&w, resp->users[i]);
        break;
    case PL_M_SEND:
        w_u64(&w, resp->id);
        w_u64(&w, resp->time_ms);
        break;
    case PL_M_COUNTS:
        w_u64(&w, resp->unread);
        w_u64(&w, resp->read);
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION:
        w_u8(&w, resp->more ? 1 : 0);
        w_u32(&w, resp->n_msgs);
        for (uint32_t i = 0; i < resp->n_msgs; i++)
            w_msg(&w, &resp->msgs[i]);
        break;
    case PL_M_PUSH:
        /* A push carries exactly one message. */
        if (resp->n_msgs != 1 && !w.err)
            w.err = PL_ERR_INVALID;
        if (!w.err)
            w_msg(&w, &resp->msgs[0]);
        break;
    case PL_M_STATUS:
        w_u32(&w, resp->n_servers);
        for (uint32_t i = 0; i < resp->n_servers; i++) {
            const pl_server_status *s = &resp->servers[i];
            w_u32(&w, s->id);
            w_u8(&w, s->reachable ? 1 : 0);
            w_str16(&w, s->address);
            w_str16(&w, s->role);
            w_u64(&w, s->view);
            w_u64(&w, s->op);
            w_u64(&w, s->commit);
            w_u64(&w, s->applied);
            w_str16(&w, s->store);
            w_str16(&w, s->transport);
            w_str16(&w, s->digest);
        }
        break;
    default: /* register, logout, ack, delete, delete_account, subscribe,
                ping, none: status alone */
        break;
    }
    return w_finish(&w, max_frame, out, len);
}

/* ------------------------------------------------------------------ */
/* reader                                                               */

typedef struct bin_r {
    const uint8_t *p;
    size_t len, pos;
    int bad;      /* set on any overrun or bad value; reads then return 0 */
} bin_r;

static size_t r_left(const bin_r *r)
{
    return r->bad ? 0 : r->len - r->pos;
}

static uint64_t r_be(bin_r *r, unsigned bytes)
{
    uint64_t v = 0;

    if (r->bad || r->len - r->pos < bytes) {
        r->bad = 1;
        return 0;
    }
    for (unsigned i = 0; i < bytes; i++)
        v = (v << 8) | r->p[r->pos + i];
    r->pos += bytes;
    return v;
}

static uint32_t r_u8(bin_r *r) { return (uint32_t)r_be(r, 1); }
static uint32_t r_u16(bin_r *r) { return (uint32_t)r_be(r, 2); }
static uint32_t r_u32(bin_r *r) { return (uint32_t)r_be(r, 4); }
static uint64_t r_u64(bin_r *r) { return r_be(r, 8); }

static uint32_t r_bool(bin_r *r)
{
    uint32_t v = r_u8(r);

    if (v > 1)
        r->bad = 1;
    return v;
}

static pl_str r_strn(bin_r *r, uint32_t n)
{
    pl_str s = { NULL, 0 };

    if (r->bad || r->len - r->pos < n) {
        r->bad = 1;
        return s;
    }
    s.ptr = (const char *)r->p + r->pos;
    s.len = n;
    r->pos += n;
    return s;
}

static pl_str r_str16(bin_r *r) { return r_strn(r, r_u16(r)); }
static pl_str r_str32(bin_r *r) { return r_strn(r, r_u32(r)); }

/* A list count, checked against what the rest of the frame could hold. */
static uint32_t r_count(bin_r *r, size_t min_each)
{
    uint32_t n = r_u32(r);

    if (!r->bad && n > r_left(r) / min_each)
        r->bad = 1;
    return r->bad ? 0 : n;
}

static void r_msg(bin_r *r, pl_message *m)
{
    m->id = r_u64(r);
    m->time_ms = r_u64(r);
    m->state = r_u8(r);
    m->from = r_str16(r);
    m->to = r_str16(r);
    m->body = r_str32(r);
}

/* Room in scratch for a list of n elements of size bytes, once n is known
 * sound (r_count bounds a count by the bytes left): nothing is allocated
 * for a count the frame cannot hold. NULL with *rc set otherwise. */
static void *r_list(const bin_r *r, void **scratch, uint32_t n, size_t size, int *rc)
{
    void *v;

    if (r->bad) {
        *rc = PL_ERR_MALFORMED;
        return NULL;
    }
    v = pl_scratch_alloc(scratch, (size_t)n * size);
    if (!v)
        *rc = PL_ERR_NOMEM;
    return v;
}

/* Front half of both decoders: frame the buffer and read the kind byte.
 * PL_OK with the payload copied into a fresh *scratch (so decoded strings
 * outlive the caller's buffer, as the ABI says) and *used its frame size,
 * or AGAIN / an error. */
static int bin_open(uint32_t max_frame, const uint8_t *buf, size_t len, size_t *used,
                    void **scratch, bin_r *r, uint32_t kind)
{
    uint32_t plen;
    uint8_t *copy;

    *scratch = NULL;
    if (len < BIN_PREFIX)
        return PL_ERR_AGAIN;
    plen = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
    /* Decided from the prefix alone: an oversized frame costs nothing. */
    if (plen > max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    if (plen < 2)
        return PL_ERR_MALFORMED;
    if (len - BIN_PREFIX < plen)
        return PL_ERR_AGAIN;
    copy = pl_scratch_alloc(scratch, plen);
    if (!copy)
        return PL_ERR_NOMEM;
    memcpy(copy, buf + BIN_PREFIX, plen);
    memset(r, 0, sizeof *r);
    r->p = copy;
    r->len = plen;
    if (r_u8(r) != kind)
        return PL_ERR_MALFORMED;
    *used = BIN_PREFIX + (size_t)plen;
    return PL_OK;
}

/* Back half: a frame has exactly one reading, so every byte is consumed. */
static int bin_close(const bin_r *r, size_t u, size_t *used)
{
    if (r->bad || r->pos != r->len)
        return PL_ERR_MALFORMED;
    *used = u;
    return PL_OK;
}

int tcp_bin_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                           size_t *used, pl_request *out, void **scratch)
{
    bin_r r;
    size_t u = 0;
    int rc;

    memset(out, 0, sizeof *out);
    rc = bin_open(max_frame, buf, len, &u, scratch, &r, BIN_KIND_REQUEST);
    if (rc != PL_OK)
        return rc;
    out->method = r_u8(&r);
    out->request_id = r_u64(&r);
    out->client_id = r_u64(&r);
    out->request_no = r_u64(&r);
    out->token = r_str16(&r);
    switch (out->method) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        out->username = r_str16(&r);
        out->password = r_str16(&r);
        break;
    case PL_M_LOGOUT:
    case PL_M_COUNTS:
    case PL_M_STATUS:
    case PL_M_PING:
        break;
    case PL_M_LIST_USERS:
        out->pattern = r_str16(&r);
        out->offset = r_u64(&r);
        out->limit = r_u64(&r);
        break;
    case PL_M_SEND:
        out->to = r_str16(&r);
        out->body = r_str32(&r);
        break;
    case PL_M_READ:
        out->n = r_u64(&r);
        break;
    case PL_M_HISTORY:
        out->offset = r_u64(&r);
        out->limit = r_u64(&r);
        break;
    case PL_M_CONVERSATION:
        out->peer = r_str16(&r);
        out->offset = r_u64(&r);
        out->limit = r_u64(&r);
        break;
    case PL_M_ACK:
    case PL_M_DELETE: {
        uint32_t n = r_count(&r, BIN_MIN_ID);
        uint64_t *ids = r_list(&r, scratch, n, sizeof *ids, &rc);

        if (!ids)
            return rc;
        for (uint32_t i = 0; i < n; i++)
            ids[i] = r_u64(&r);
        out->ids = ids;
        out->n_ids = n;
        break;
    }
    case PL_M_DELETE_ACCOUNT:
        out->password = r_str16(&r);
        break;
    case PL_M_SUBSCRIBE:
        out->after_id = r_u64(&r);
        break;
    default:
        /* A method this version does not know (or one a client may not
         * send): keep the header so the core can answer "unsupported" to
         * the right request_id, and skip the fields we cannot read. */
        if (r.bad)
            return PL_ERR_MALFORMED;
        *used = u;
        return PL_OK;
    }
    return bin_close(&r, u, used);
}

int tcp_bin_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_response *out, void **scratch)
{
    bin_r r;
    size_t u = 0;
    int rc;

    memset(out, 0, sizeof *out);
    rc = bin_open(max_frame, buf, len, &u, scratch, &r, BIN_KIND_RESPONSE);
    if (rc != PL_OK)
        return rc;
    out->method = r_u8(&r);
    out->request_id = r_u64(&r);
    out->status = r_u16(&r);
    if (r.bad)
        return PL_ERR_MALFORMED;
    if (out->status != PL_OK) {
        out->error = r_str16(&r);
        out->leader = r_str16(&r);
    } else {
        switch (out->method) {
        case PL_M_LOGIN:
            out->token = r_str16(&r);
            out->unread = r_u64(&r);
            break;
        case PL_M_LIST_USERS: {
            pl_str *users;
            uint32_t n;

            out->more = r_bool(&r);
            n = r_count(&r, BIN_MIN_USER);
            if (!(users = r_list(&r, scratch, n, sizeof *users, &rc)))
                return rc;
            for (uint32_t i = 0; i < n; i++)
                users[i] = r_str16(&r);
            out->users = users;
            out->n_users = n;
            break;
        }
        case PL_M_SEND:
            out->id = r_u64(&r);
            out->time_ms = r_u64(&r);
            break;
        case PL_M_COUNTS:
            out->unread = r_u64(&r);
            out->read = r_u64(&r);
            break;
        case PL_M_READ:
        case PL_M_HISTORY:
        case PL_M_CONVERSATION:
        case PL_M_PUSH: {
            pl_message *msgs;
            uint32_t n = 1;

            if (out->method != PL_M_PUSH) {
                out->more = r_bool(&r);
                n = r_count(&r, BIN_MIN_MSG);
            }
            if (!(msgs = r_list(&r, scratch, n, sizeof *msgs, &rc)))
                return rc;
            for (uint32_t i = 0; i < n; i++)
                r_msg(&r, &msgs[i]);
            out->msgs = msgs;
            out->n_msgs = n;
            break;
        }
        case PL_M_STATUS: {
            uint32_t n = r_count(&r, BIN_MIN_SERVER);
            pl_server_status *sv = r_list(&r, scratch, n, sizeof *sv, &rc);

            if (!sv)
                return rc;
            for (uint32_t i = 0; i < n; i++) {
                sv[i].id = r_u32(&r);
                sv[i].reachable = r_bool(&r);
                sv[i].address = r_str16(&r);
                sv[i].role = r_str16(&r);
                sv[i].view = r_u64(&r);
                sv[i].op = r_u64(&r);
                sv[i].commit = r_u64(&r);
                sv[i].applied = r_u64(&r);
                sv[i].store = r_str16(&r);
                sv[i].transport = r_str16(&r);
                sv[i].digest = r_str16(&r);
            }
            out->servers = sv;
            out->n_servers = n;
            break;
        }
        case PL_M_REGISTER:
        case PL_M_LOGOUT:
        case PL_M_ACK:
        case PL_M_DELETE:
        case PL_M_DELETE_ACCOUNT:
        case PL_M_SUBSCRIBE:
        case PL_M_PING:
        case PL_M_NONE:
            break;
        default:
            /* A newer server's method: the header is enough to match it. */
            *used = u;
            return PL_OK;
        }
    }
    return bin_close(&r, u, used);
}
