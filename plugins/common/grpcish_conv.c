/*
 * plugins/common/grpcish_conv.c — grpcish protobuf messages <-> pl_request /
 * pl_response, in gRPC length-prefixed form (grpcish_conv.h says who uses
 * it and what is checked where).
 */
#include "grpcish_conv.h"

#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "grpcish.pb-c.h"

#define FLAG_PLAIN 0u             /* the only compression flag accepted */

typedef Parley__Grpcish__Request pb_request;
typedef Parley__Grpcish__Response pb_response;
typedef Parley__Grpcish__Message pb_message;
typedef Parley__Grpcish__ServerStatus pb_server;

/* ---------------------------------------------------------------- scratch */

/* Everything a decoded pl_request / pl_response points into. The text
 * fields point straight into the unpacked protobuf message (its `bytes`
 * buffers), so the only extra memory is the arrays of C structs. */
typedef struct scratch {
    ProtobufCAllocator alloc;  /* allocator_data = this scratch */
    int alloc_failed;          /* tells NOMEM apart from malformed input */
    ProtobufCMessage *msg;
    pl_str *users;
    pl_message *msgs;
    pl_server_status *servers;
} scratch;

static void *pb_alloc(void *ud, size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        ((scratch *)ud)->alloc_failed = 1;
    return p;
}

static void pb_free(void *ud, void *p)
{
    (void)ud;
    free(p);
}

void pl_grpcish_free_scratch(void *vs)
{
    scratch *s = vs;
    if (!s)
        return;
    if (s->msg)
        protobuf_c_message_free_unpacked(s->msg, &s->alloc);
    free(s->users);
    free(s->msgs);
    free(s->servers);
    free(s);
}

static scratch *scratch_new(void)
{
    scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->alloc.alloc = pb_alloc;
    s->alloc.free = pb_free;
    s->alloc.allocator_data = s;
    return s;
}

/* ---------------------------------------------------------------- framing */

uint32_t pl_grpcish_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

void pl_grpcish_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Read the 5-byte prefix at buf. Decides as early as the bytes allow: a
 * bad flag is refused from the first byte, an oversized frame from the
 * fifth, so a peer cannot make us buffer a frame we will reject anyway. */
static int read_prefix(uint32_t max_frame, const uint8_t *buf, size_t len, uint32_t *msg_len)
{
    if (len < 1)
        return PL_ERR_AGAIN;
    if (buf[0] != FLAG_PLAIN)
        return PL_ERR_MALFORMED;  /* compressed or garbage: unsupported */
    if (len < PL_GRPCISH_PREFIX)
        return PL_ERR_AGAIN;
    uint32_t n = pl_grpcish_get_be32(buf + 1);
    if ((uint64_t)n + PL_GRPCISH_PREFIX > max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    if (len - PL_GRPCISH_PREFIX < n)
        return PL_ERR_AGAIN;
    *msg_len = n;
    return PL_OK;
}

/* Prefix + pack m into one malloc'd frame. */
static int pack_frame(uint32_t max_frame, const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > max_frame || max_frame - n < PL_GRPCISH_PREFIX)
        return PL_ERR_FRAME_TOO_LARGE;
    uint8_t *buf = malloc(PL_GRPCISH_PREFIX + n);
    if (!buf)
        return PL_ERR_NOMEM;
    buf[0] = FLAG_PLAIN;
    pl_grpcish_put_be32(buf + 1, (uint32_t)n);
    if (protobuf_c_message_pack(m, buf + PL_GRPCISH_PREFIX) != n) {
        free(buf);
        return PL_ERR_INTERNAL;
    }
    *out = buf;
    *len = PL_GRPCISH_PREFIX + n;
    return PL_OK;
}

/* Shared front half of both decoders: prefix, then unpack the message into
 * a fresh scratch. On success *used is the frame size and *out_s owns the
 * unpacked message. */
static int unpack_frame(uint32_t max_frame, const ProtobufCMessageDescriptor *desc,
                        const uint8_t *buf, size_t len, size_t *used, scratch **out_s)
{
    uint32_t n = 0;
    int rc = read_prefix(max_frame, buf, len, &n);
    if (rc != PL_OK)
        return rc;
    scratch *s = scratch_new();
    if (!s)
        return PL_ERR_NOMEM;
    s->msg = protobuf_c_message_unpack(desc, &s->alloc, n, buf + PL_GRPCISH_PREFIX);
    if (!s->msg) {
        rc = s->alloc_failed ? PL_ERR_NOMEM : PL_ERR_MALFORMED;
        pl_grpcish_free_scratch(s);
        return rc;
    }
    *used = PL_GRPCISH_PREFIX + (size_t)n;
    *out_s = s;
    return PL_OK;
}

/* --------------------------------------------------------------- encoding */

/* A view for protobuf-c, which takes non-const pointers but only reads
 * them when packing. A NULL pointer with a length is a caller bug. */
static int bin(pl_str s, ProtobufCBinaryData *b)
{
    if (s.len && !s.ptr)
        return 0;
    b->len = s.len;
    b->data = (uint8_t *)(uintptr_t)s.ptr;
    return 1;
}

/* Methods a client may send: everything but PL_M_NONE and the
 * server-only PL_M_PUSH. */
static int request_method_ok(uint32_t m)
{
    return m > PL_M_NONE && m < PL_M__COUNT && m != PL_M_PUSH;
}

int pl_grpcish_encode_request(uint32_t max_frame, const pl_request *req,
                              uint8_t **out, size_t *len)
{
    pb_request pb = PARLEY__GRPCISH__REQUEST__INIT;

    if (!req || !request_method_ok(req->method) || (req->n_ids && !req->ids))
        return PL_ERR_INVALID;
    pb.method = req->method;
    pb.request_id = req->request_id;
    pb.client_id = req->client_id;
    pb.request_no = req->request_no;
    if (!bin(req->token, &pb.token) || !bin(req->username, &pb.username) ||
        !bin(req->password, &pb.password) || !bin(req->to, &pb.to) ||
        !bin(req->body, &pb.body) || !bin(req->pattern, &pb.pattern) ||
        !bin(req->peer, &pb.peer))
        return PL_ERR_INVALID;
    pb.offset = req->offset;
    pb.limit = req->limit;
    pb.n = req->n;
    pb.n_ids = req->n_ids;
    pb.ids = (uint64_t *)(uintptr_t)req->ids;
    pb.after_id = req->after_id;
    return pack_frame(max_frame, &pb.base, out, len);
}

int pl_grpcish_encode_response(uint32_t max_frame, const pl_response *resp,
                               uint8_t **out, size_t *len)
{
    pb_response pb = PARLEY__GRPCISH__RESPONSE__INIT;
    ProtobufCBinaryData *users = NULL;
    pb_message *msgs = NULL, **msg_ptrs = NULL;
    pb_server *servers = NULL, **server_ptrs = NULL;
    int rc = PL_ERR_INVALID;

    if (!resp || resp->method >= PL_M__COUNT ||
        (resp->n_users && !resp->users) || (resp->n_msgs && !resp->msgs) ||
        (resp->n_servers && !resp->servers))
        goto fail;
    pb.method = resp->method;
    pb.request_id = resp->request_id;
    pb.status = resp->status;
    if (!bin(resp->error, &pb.error) || !bin(resp->leader, &pb.leader) ||
        !bin(resp->token, &pb.token))
        goto fail;
    pb.unread = resp->unread;
    pb.read = resp->read;
    pb.id = resp->id;
    pb.time_ms = resp->time_ms;
    pb.more = resp->more;

    rc = PL_ERR_NOMEM;
    if (resp->n_users) {
        users = calloc(resp->n_users, sizeof *users);
        if (!users)
            goto fail;
        rc = PL_ERR_INVALID;
        for (uint32_t i = 0; i < resp->n_users; i++)
            if (!bin(resp->users[i], &users[i]))
                goto fail;
        pb.n_users = resp->n_users;
        pb.users = users;
    }

    rc = PL_ERR_NOMEM;
    if (resp->n_msgs) {
        msgs = calloc(resp->n_msgs, sizeof *msgs);
        msg_ptrs = calloc(resp->n_msgs, sizeof *msg_ptrs);
        if (!msgs || !msg_ptrs)
            goto fail;
        rc = PL_ERR_INVALID;
        for (uint32_t i = 0; i < resp->n_msgs; i++) {
            const pl_message *m = &resp->msgs[i];
            pb_message *p = &msgs[i];
            parley__grpcish__message__init(p);
            p->id = m->id;
            if (!bin(m->from, &p->from) || !bin(m->to, &p->to) || !bin(m->body, &p->body))
                goto fail;
            p->time_ms = m->time_ms;
            p->state = m->state;
            msg_ptrs[i] = p;
        }
        pb.n_msgs = resp->n_msgs;
        pb.msgs = msg_ptrs;
    }

    rc = PL_ERR_NOMEM;
    if (resp->n_servers) {
        servers = calloc(resp->n_servers, sizeof *servers);
        server_ptrs = calloc(resp->n_servers, sizeof *server_ptrs);
        if (!servers || !server_ptrs)
            goto fail;
        rc = PL_ERR_INVALID;
        for (uint32_t i = 0; i < resp->n_servers; i++) {
            const pl_server_status *s = &resp->servers[i];
            pb_server *p = &servers[i];
            parley__grpcish__server_status__init(p);
            p->id = s->id;
            p->reachable = s->reachable;
            p->view = s->view;
            p->op = s->op;
            p->commit = s->commit;
            p->applied = s->applied;
            if (!bin(s->address, &p->address) || !bin(s->role, &p->role) ||
                !bin(s->store, &p->store) || !bin(s->transport, &p->transport) ||
                !bin(s->digest, &p->digest))
                goto fail;
            server_ptrs[i] = p;
        }
        pb.n_servers = resp->n_servers;
        pb.servers = server_ptrs;
    }

    rc = pack_frame(max_frame, &pb.base, out, len);
fail:
    free(users);
    free(msgs);
    free(msg_ptrs);
    free(servers);
    free(server_ptrs);
    return rc;
}

/* --------------------------------------------------------------- decoding */

/* A borrowed view of an unpacked `bytes` field. Lengths fit in 32 bits
 * because the whole frame does (its length prefix is 32 bits). */
static pl_str str_of(ProtobufCBinaryData b)
{
    pl_str s = { b.len ? (const char *)b.data : NULL, (uint32_t)b.len };
    return s;
}

int pl_grpcish_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                              size_t *used, pl_request *out, void **out_scratch)
{
    scratch *s = NULL;

    *out_scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = unpack_frame(max_frame, &parley__grpcish__request__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const pb_request *pb = (const pb_request *)s->msg;

    /* An unknown or server-only method is not a request this version can
     * hand to the core. */
    if (!request_method_ok(pb->method)) {
        pl_grpcish_free_scratch(s);
        return PL_ERR_MALFORMED;
    }
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->client_id = pb->client_id;
    out->request_no = pb->request_no;
    out->token = str_of(pb->token);
    out->username = str_of(pb->username);
    out->password = str_of(pb->password);
    out->pattern = str_of(pb->pattern);
    out->to = str_of(pb->to);
    out->body = str_of(pb->body);
    out->peer = str_of(pb->peer);
    out->offset = pb->offset;
    out->limit = pb->limit;
    out->n = pb->n;
    out->after_id = pb->after_id;
    out->ids = pb->n_ids ? pb->ids : NULL;
    out->n_ids = (uint32_t)pb->n_ids;  /* at most one id per frame byte */
    *out_scratch = s;
    return PL_OK;
}

int pl_grpcish_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                               size_t *used, pl_response *out, void **out_scratch)
{
    scratch *s = NULL;

    *out_scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = unpack_frame(max_frame, &parley__grpcish__response__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const pb_response *pb = (const pb_response *)s->msg;

    rc = PL_ERR_MALFORMED;
    if (pb->method >= PL_M__COUNT)
        goto fail;
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->status = pb->status;
    out->error = str_of(pb->error);
    out->leader = str_of(pb->leader);
    out->token = str_of(pb->token);
    out->unread = pb->unread;
    out->read = pb->read;
    out->id = pb->id;
    out->time_ms = pb->time_ms;
    out->more = pb->more;

    /* Element counts fit in 32 bits: each element takes at least one byte
     * of a frame whose length is a 32-bit number. */
    rc = PL_ERR_NOMEM;
    if (pb->n_users) {
        s->users = calloc(pb->n_users, sizeof *s->users);
        if (!s->users)
            goto fail;
        for (size_t i = 0; i < pb->n_users; i++)
            s->users[i] = str_of(pb->users[i]);
        out->users = s->users;
        out->n_users = (uint32_t)pb->n_users;
    }
    if (pb->n_msgs) {
        s->msgs = calloc(pb->n_msgs, sizeof *s->msgs);
        if (!s->msgs)
            goto fail;
        for (size_t i = 0; i < pb->n_msgs; i++) {
            const pb_message *p = pb->msgs[i];
            pl_message *m = &s->msgs[i];
            m->id = p->id;
            m->from = str_of(p->from);
            m->to = str_of(p->to);
            m->body = str_of(p->body);
            m->time_ms = p->time_ms;
            m->state = p->state;
        }
        out->msgs = s->msgs;
        out->n_msgs = (uint32_t)pb->n_msgs;
    }
    if (pb->n_servers) {
        s->servers = calloc(pb->n_servers, sizeof *s->servers);
        if (!s->servers)
            goto fail;
        for (size_t i = 0; i < pb->n_servers; i++) {
            const pb_server *p = pb->servers[i];
            pl_server_status *v = &s->servers[i];
            v->id = p->id;
            v->address = str_of(p->address);
            v->reachable = p->reachable;
            v->role = str_of(p->role);
            v->view = p->view;
            v->op = p->op;
            v->commit = p->commit;
            v->applied = p->applied;
            v->store = str_of(p->store);
            v->transport = str_of(p->transport);
            v->digest = str_of(p->digest);
        }
        out->servers = s->servers;
        out->n_servers = (uint32_t)pb->n_servers;
    }
    *out_scratch = s;
    return PL_OK;
fail:
    memset(out, 0, sizeof *out);
    pl_grpcish_free_scratch(s);
    return rc;
}
