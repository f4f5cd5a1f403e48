/*
 * core/peer.c — the peer network of core/peer.h on libevent bufferevents.
 *
 * Everything read from a peer socket is untrusted until the Hello has been
 * checked, and bounded after that: frames over PL_PEER_MAX_FRAME close the
 * connection before anything is buffered, protobuf-c validates the
 * encoding, and every field is range-checked before it reaches the VR
 * module (which itself ignores anything out of place).
 */
#include "peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "log.h"
#include "peer.pb-c.h"

#define OUT_BUFFER_MAX (512u * 1024u * 1024u) /* drop messages past this backlog */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 1000

typedef struct peer_in {
    pl_peer *p;
    struct bufferevent *bev;
    int from;                 /* -1 until Hello */
    struct peer_in *next;
} peer_in;

typedef struct peer_out {
    pl_peer *p;
    uint32_t to;
    struct bufferevent *bev;
    int up;
    uint32_t retry_ms;
    struct event *retry;
    int warned_backlog;
} peer_out;

struct pl_peer {
    struct event_base *base;
    const pl_config *cfg;
    uint32_t self;
    uint32_t n;
    pl_peer_cb cb;
    struct evconnlistener *listener;
    peer_in *ins;
    peer_out out[PL_VR_MAX_REPLICAS];
};

/* ---- framing ---- */

static int write_frame(struct bufferevent *bev, const Parley__Peer__PeerFrame *f)
{
    size_t len = parley__peer__peer_frame__get_packed_size(f);
    if (len > PL_PEER_MAX_FRAME)
        return PL_ERR_FRAME_TOO_LARGE;
    uint8_t *buf = malloc(len + 4);
    if (!buf)
        return PL_ERR_NOMEM;
    buf[0] = (uint8_t)(len >> 24);
    buf[1] = (uint8_t)(len >> 16);
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    parley__peer__peer_frame__pack(f, buf + 4);
    int rc = bufferevent_write(bev, buf, len + 4) == 0 ? PL_OK : PL_ERR_IO;
    free(buf);
    return rc;
}

/* Take one whole frame off the input and decode it into *f. Returns PL_OK,
 * PL_ERR_AGAIN (need more bytes), PL_ERR_INVALID (a well-formed frame that
 * fails its checks: dropped, the link stays), or PL_ERR_FRAME_TOO_LARGE /
 * PL_ERR_MALFORMED (close the connection). */
static int read_frame(struct bufferevent *bev, uint32_t max, pl_peer_frame *f)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    memset(f, 0, sizeof *f);
    if (evbuffer_get_length(in) < 4)
        return PL_ERR_AGAIN;
    uint8_t h[4];
    evbuffer_copyout(in, h, 4);
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (len > max)
        return PL_ERR_FRAME_TOO_LARGE;
    if (evbuffer_get_length(in) < (size_t)len + 4)
        return PL_ERR_AGAIN;
    evbuffer_drain(in, 4);
    uint8_t *buf = evbuffer_pullup(in, len);
    if (!buf && len)
        return PL_ERR_NOMEM;
    int rc = pl_peer_decode_frame(buf, len, f);
    evbuffer_drain(in, len);
    return rc;
}

static void send_hello(pl_peer *p, struct bufferevent *bev)
{
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = PL_PEER_VERSION;
    h.from = p->self;
    h.n = p->n;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    f.hello = &h;
    write_frame(bev, &f);
}

static void row_from_reply(const Parley__Peer__StatusReply *r, pl_server_status *row)
{
    memset(row, 0, sizeof *row);
    row->id = r->id;
    row->address = pl_str_c(r->address);
    row->reachable = 1;
    row->role = pl_str_c(r->role);
    row->view = r->view;
    row->op = r->op;
    row->commit = r->commit;
    row->applied = r->applied;
    row->store = pl_str_c(r->store);
    row->transport = pl_str_c(r->transport);
    row->digest = pl_str_c(r->digest);
}

/* pl_str fields from our own status callback are not NUL-terminated. */
static char *dupstr(pl_str s)
{
    char *c = malloc((size_t)s.len + 1);
    if (c) {
        if (s.len)
            memcpy(c, s.ptr, s.len);
        c[s.len] = 0;
    }
    return c;
}

/* ---- decoding: pure, so tests/fuzz drives it without sockets ---- */

void pl_peer_frame_clear(pl_peer_frame *f)
{
    if (f->pb)
        parley__peer__peer_frame__free_unpacked(f->pb, NULL);
    free(f->entries);
    memset(f, 0, sizeof *f);
}

/* A VR message as pl_vr_receive takes it. Entries must be a consecutive run
 * starting right after the anchor (VR appends them as one run), and each
 * must fit pl_log_entry's 32-bit length. */
static int vr_from_pb(const Parley__Peer__Vr *v, pl_peer_frame *f)
{
    if (v->n_entries > UINT32_MAX / 2)
        return PL_ERR_INVALID;
    if (v->n_entries) {
        f->entries = calloc(v->n_entries, sizeof *f->entries);
        if (!f->entries)
            return PL_ERR_NOMEM;
        for (size_t i = 0; i < v->n_entries; i++) {
            const Parley__Peer__Entry *x = v->entries[i];
            if (x->data.len > UINT32_MAX)
                return PL_ERR_INVALID;
            f->entries[i].op = x->op;
            f->entries[i].view = x->view;
            f->entries[i].data = x->data.data;
            f->entries[i].len = (uint32_t)x->data.len;
            if (i && f->entries[i].op != f->entries[i - 1].op + 1)
                return PL_ERR_INVALID;
        }
        if (f->entries[0].op != v->anchor_op + 1)
            return PL_ERR_INVALID;
    }
    f->vr = (pl_vr_msg){
        .type = v->type, .view = v->view, .op = v->op, .commit = v->commit,
        .lnv = v->lnv, .anchor_op = v->anchor_op, .anchor_view = v->anchor_view,
        .ts = v->ts, .entries = f->entries, .n_entries = (uint32_t)v->n_entries,
    };
    return PL_OK;
}

int pl_peer_decode_frame(const uint8_t *buf, size_t len, pl_peer_frame *f)
{
    memset(f, 0, sizeof *f);
    Parley__Peer__PeerFrame *pb = parley__peer__peer_frame__unpack(NULL, len, buf);
    if (!pb)
        return PL_ERR_MALFORMED;
    f->pb = pb;
    switch (pb->body_case) {
    case PARLEY__PEER__PEER_FRAME__BODY_HELLO:
        f->kind = PL_PEER_F_HELLO;
        f->version = pb->hello->version;
        f->from = pb->hello->from;
        f->n = pb->hello->n;
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_VR:
        f->kind = PL_PEER_F_VR;
        return vr_from_pb(pb->vr, f);
    case PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST:
        f->kind = PL_PEER_F_STATUS_REQUEST;
        f->query_id = pb->status_request->query_id;
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_STATUS_REPLY:
        f->kind = PL_PEER_F_STATUS_REPLY;
        f->query_id = pb->status_reply->query_id;
        row_from_reply(pb->status_reply, &f->row);
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_SNAPSHOT: {
        const Parley__Peer__SnapshotChunk *k = pb->snapshot;
        if (k->offset > k->total || k->data.len > k->total - k->offset)
            return PL_ERR_INVALID;
        f->kind = PL_PEER_F_SNAPSHOT;
        f->snap_view = k->view;
        f->snap_offset = k->offset;
        f->snap_total = k->total;
        f->snap_data = k->data.data;
        f->snap_len = k->data.len;
        return PL_OK;
    }
    default:
        /* no body, or a kind from a newer peer: nothing to act on */
        f->kind = PL_PEER_F_NONE;
        return PL_OK;
    }
}

/* ---- incoming connections ---- */

static void in_free(peer_in *c)
{
    pl_peer *p = c->p;
    for (peer_in **pp = &p->ins; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    bufferevent_free(c->bev);
    free(c);
}

static void in_status_request(peer_in *c, uint64_t query_id)
{
    pl_server_status row;
    memset(&row, 0, sizeof row);
    c->p->cb.status(c->p->cb.ud, &row);
    Parley__Peer__StatusReply r = PARLEY__PEER__STATUS_REPLY__INIT;
    char *s[6] = { dupstr(row.address), dupstr(row.role), dupstr(row.store),
                   dupstr(row.transport), dupstr(row.digest), NULL };
    if (s[0] && s[1] && s[2] && s[3] && s[4]) {
        r.query_id = query_id;
        r.id = row.id;
        r.address = s[0];
        r.role = s[1];
        r.view = row.view;
        r.op = row.op;
        r.commit = row.commit;
        r.applied = row.applied;
        r.store = s[2];
        r.transport = s[3];
        r.digest = s[4];
        Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
        f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REPLY;
        f.status_reply = &r;
        write_frame(c->bev, &f);
    }
    for (int i = 0; i < 5; i++)
        free(s[i]);
}

static void in_read(struct bufferevent *bev, void *arg)
{
    peer_in *c = arg;
    for (;;) {
        pl_peer_frame f;
        /* nothing big is accepted before the Hello */
        int rc = read_frame(bev, c->from < 0 ? 1024 : PL_PEER_MAX_FRAME, &f);
        if (rc == PL_ERR_AGAIN)
            return;
        if (rc == PL_ERR_INVALID && c->from >= 0) {
            pl_log(PL_LOG_WARN, "peer: server %d sent a message that fails its checks "
                   "(entries not a consecutive run after the anchor, or too large); dropped",
                   c->from);
            pl_peer_frame_clear(&f);
            continue;
        }
        if (rc != PL_OK) {
            pl_log(PL_LOG_WARN, "peer: malformed or oversized frame from %s; closing",
                   c->from >= 0 ? "a peer" : "an unidentified connection");
            pl_peer_frame_clear(&f);
            in_free(c);
            return;
        }
        if (c->from < 0) {
            if (f.kind != PL_PEER_F_HELLO || f.version != PL_PEER_VERSION ||
                f.from >= c->p->n || f.from == c->p->self) {
                pl_log(PL_LOG_WARN, "peer: connection without a valid Hello (version %u wanted); closing",
                       PL_PEER_VERSION);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            }
            if (f.n != c->p->n)
                pl_log(PL_LOG_WARN, "peer: server %u lists %u servers, this one %u: check the configs",
                       f.from, f.n, c->p->n);
            c->from = (int)f.from;
        } else if (f.kind == PL_PEER_F_VR) {
            f.vr.from = (uint32_t)c->from; /* the link says who it is */
            c->p->cb.vr(c->p->cb.ud, &f.vr);
        } else if (f.kind == PL_PEER_F_STATUS_REQUEST) {
            in_status_request(c, f.query_id);
        } else if (f.kind == PL_PEER_F_SNAPSHOT && c->p->cb.snapshot) {
            c->p->cb.snapshot(c->p->cb.ud, (uint32_t)c->from, f.snap_view, f.snap_offset,
                              f.snap_total, f.snap_data, f.snap_len);
        }
        pl_peer_frame_clear(&f);
    }
}

static void in_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        in_free(arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    pl_peer *p = arg;
    peer_in *c = calloc(1, sizeof *c);
    struct bufferevent *bev = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c || !bev) {
        free(c);
        if (bev)
            bufferevent_free(bev);
        else
            evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->p = p;
    c->bev = bev;
    c->from = -1;
    c->next = p->ins;
    p->ins = c;
    bufferevent_setcb(bev, in_read, NULL, in_event, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* ---- outgoing connections ---- */

static void out_connect(peer_out *o);

static void out_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    out_connect(arg);
}

static void out_down(peer_out *o)
{
    if (o->bev) {
        bufferevent_free(o->bev);
        o->bev = NULL;
    }
    if (o->up)
        pl_log(PL_LOG_INFO, "peer: link to server %u down", o->to);
    o->up = 0;
    struct timeval tv = { o->retry_ms / 1000, (o->retry_ms % 1000) * 1000 };
    evtimer_add(o->retry, &tv);
    o->retry_ms = o->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : o->retry_ms * 2;
}

static void out_read(struct bufferevent *bev, void *arg)
{
    peer_out *o = arg;
    for (;;) {
        pl_peer_frame f;
        int rc = read_frame(bev, PL_PEER_MAX_FRAME, &f);
        if (rc == PL_ERR_AGAIN)
            return;
        if (rc != PL_OK && rc != PL_ERR_INVALID) {
            pl_peer_frame_clear(&f);
            out_down(o);
            return;
        }
        if (rc == PL_OK && f.kind == PL_PEER_F_STATUS_REPLY) {
            f.row.id = o->to; /* the link says who it is */
            o->p->cb.status_reply(o->p->cb.ud, f.query_id, &f.row);
        }
        pl_peer_frame_clear(&f);
    }
}

static void out_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    peer_out *o = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        o->up = 1;
        o->retry_ms = RETRY_MIN_MS;
        o->warned_backlog = 0;
        pl_log(PL_LOG_INFO, "peer: link to server %u up", o->to);
        send_hello(o->p, bev);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        out_down(o);
}

static void out_connect(peer_out *o)
{
    pl_peer *p = o->p;
    const pl_server_conf *s = &p->cfg->servers[o->to];
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    char addr[300];
    snprintf(addr, sizeof addr, strchr(s->host, ':') ? "[%s]:%u" : "%s:%u", s->host,
             (unsigned)s->peer_port);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
        pl_log(PL_LOG_ERROR, "peer: server %u address %s is not numeric", o->to, addr);
        return;
    }
    o->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!o->bev) {
        out_down(o);
        return;
    }
    bufferevent_setcb(o->bev, out_read, NULL, out_event, o);
    bufferevent_enable(o->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(o->bev, (struct sockaddr *)&ss, sslen) != 0)
        out_down(o);
}

/* ---- API ---- */

pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen)
{
    if (cfg->n_servers > PL_VR_MAX_REPLICAS || self >= cfg->n_servers) {
        snprintf(err, errlen, "at most %u servers are supported", PL_VR_MAX_REPLICAS);
        return NULL;
    }
    pl_peer *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->cfg = cfg;
    p->self = self;
    p->n = (uint32_t)cfg->n_servers;
    p->cb = *cb;
    const pl_server_conf *me = &cfg->servers[self];
    char addr[300];
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    snprintf(addr, sizeof addr, strchr(me->host, ':') ? "[%s]:%u" : "%s:%u", me->host,
             (unsigned)me->peer_port);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, errlen, "peer address %s is not a numeric host:port", addr);
        goto fail;
    }
    p->listener = evconnlistener_new_bind(base, on_accept, p,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                                          (struct sockaddr *)&ss, sslen);
    if (!p->listener) {
        snprintf(err, errlen, "cannot listen on peer port %s: %s", addr, strerror(errno));
        goto fail;
    }
    for (uint32_t i = 0; i < p->n; i++) {
        peer_out *o = &p->out[i];
        o->p = p;
        o->to = i;
        o->retry_ms = RETRY_MIN_MS;
        if (i == self)
            continue;
        o->retry = evtimer_new(base, out_retry_cb, o);
        if (!o->retry) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        out_connect(o);
    }
    return p;
fail:
    pl_peer_free(p);
    return NULL;
}

void pl_peer_free(pl_peer *p)
{
    if (!p)
        return;
    if (p->listener)
        evconnlistener_free(p->listener);
    while (p->ins)
        in_free(p->ins);
    for (uint32_t i = 0; i < p->n; i++) {
        if (p->out[i].bev)
            bufferevent_free(p->out[i].bev);
        if (p->out[i].retry)
            event_free(p->out[i].retry);
    }
    free(p);
}

void pl_peer_send(pl_peer *p, uint32_t to, const pl_vr_msg *m)
{
    if (to >= p->n || to == p->self)
        return;
    peer_out *o = &p->out[to];
    if (!o->up || !o->bev)
        return;
    if (evbuffer_get_length(bufferevent_get_output(o->bev)) > OUT_BUFFER_MAX) {
        if (!o->warned_backlog)
            pl_log(PL_LOG_WARN, "peer: server %u is not reading; dropping messages", to);
        o->warned_backlog = 1;
        return;
    }
    Parley__Peer__Vr v = PARLEY__PEER__VR__INIT;
    v.type = m->type;
    v.view = m->view;
    v.op = m->op;
    v.commit = m->commit;
    v.lnv = m->lnv;
    v.anchor_op = m->anchor_op;
    v.anchor_view = m->anchor_view;
    v.ts = m->ts;
    Parley__Peer__Entry *es = NULL, **ep = NULL;
    if (m->n_entries) {
        es = calloc(m->n_entries, sizeof *es);
        ep = calloc(m->n_entries, sizeof *ep);
        if (!es || !ep)
            goto out;
        for (uint32_t i = 0; i < m->n_entries; i++) {
            parley__peer__entry__init(&es[i]);
            es[i].op = m->entries[i].op;
            es[i].view = m->entries[i].view;
            es[i].data.data = (uint8_t *)m->entries[i].data;
            es[i].data.len = m->entries[i].len;
            ep[i] = &es[i];
        }
        v.n_entries = m->n_entries;
        v.entries = ep;
    }
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_VR;
    f.vr = &v;
    if (write_frame(o->bev, &f) != PL_OK)
        pl_log(PL_LOG_WARN, "peer: message to server %u too large or out of memory; dropped", to);
out:
    free(es);
    free(ep);
}

#define SNAPSHOT_CHUNK (1024u * 1024u)

int pl_peer_send_snapshot(pl_peer *p, uint32_t to, uint64_t view, const uint8_t *data,
                          size_t len)
{
    if (to >= p->n || to == p->self || !p->out[to].up || !p->out[to].bev)
        return PL_ERR_UNAVAILABLE;
    if (evbuffer_get_length(bufferevent_get_output(p->out[to].bev)) > OUT_BUFFER_MAX / 2)
        return PL_ERR_UNAVAILABLE;
    size_t off = 0;
    do {
        size_t n = len - off > SNAPSHOT_CHUNK ? SNAPSHOT_CHUNK : len - off;
        Parley__Peer__SnapshotChunk k = PARLEY__PEER__SNAPSHOT_CHUNK__INIT;
        k.view = view;
        k.offset = off;
        k.total = len;
        k.data.data = (uint8_t *)data + off;
        k.data.len = n;
        Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
        f.body_case = PARLEY__PEER__PEER_FRAME__BODY_SNAPSHOT;
        f.snapshot = &k;
        int rc = write_frame(p->out[to].bev, &f);
        if (rc != PL_OK)
            return rc;
        off += n;
    } while (off < len);
    return PL_OK;
}

int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id)
{
    if (to >= p->n || to == p->self || !p->out[to].up)
        return PL_ERR_UNAVAILABLE;
    Parley__Peer__StatusRequest q = PARLEY__PEER__STATUS_REQUEST__INIT;
    q.query_id = query_id;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST;
    f.status_request = &q;
    return write_frame(p->out[to].bev, &f);
}

int pl_peer_connected(const pl_peer *p, uint32_t to)
{
    return to < p->n && to != p->self && p->out[to].up;
}
