/*
 * transport_grpcish.c — the "grpcish" client wire format: protobuf-c
 * messages (proto/grpcish.proto) in gRPC-style length-prefixed frames
 * (docs/protocol-grpcish.md):
 *
 *   byte 0      compression flag, 0 = uncompressed; anything else is refused
 *   bytes 1-4   big-endian length N of the protobuf message
 *   bytes 5..   one Request (client -> server) or Response (server -> client)
 *
 * This file is only the codec. Sockets, buffering, the error frame and the
 * close after bad input come from plugins/common/framed.c, shared with
 * transport-tcp.
 *
 * Division of labour with the core: the codec checks *structure* (flag,
 * frame limit, protobuf well-formedness, method numbers) and answers
 * PL_ERR_MALFORMED / PL_ERR_FRAME_TOO_LARGE. The *contents* (username
 * characters, body UTF-8 and size, page limits, id counts) are the core's
 * checks, so a user gets the same limit-naming error (PL_ERR_BODY,
 * PL_ERR_TOO_MANY_IDS ...) whichever wire format the cluster speaks. That is
 * why every text field is protobuf `bytes`: exact lengths, no silent
 * truncation at an embedded NUL, no UTF-8 rejection before the core can
 * name the rule.
 *
 * Prefix: gi_.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <protobuf-c/protobuf-c.h>

#include <parley/transport.h>

#include "framed.h"
#include "grpcish.pb-c.h"

#define GI_NAME "grpcish"
#define GI_PREFIX 5u          /* flag byte + 4-byte length */
#define GI_FLAG_PLAIN 0u      /* the only compression flag accepted */

typedef Parley__Grpcish__Request gi_pb_request;
typedef Parley__Grpcish__Response gi_pb_response;
typedef Parley__Grpcish__Message gi_pb_message;
typedef Parley__Grpcish__ServerStatus gi_pb_server;

/* Codec settings, fixed for a server or client's lifetime. */
typedef struct gi_ctx {
    uint32_t max_frame;       /* whole frame, prefix included */
} gi_ctx;

/* ---------------------------------------------------------------- options */

static void gi_errf(char *err, size_t errlen, const char *fmt, const char *arg)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, arg);
}

/* Fill ctx from opt. options_json is the transport's config object; its
 * keys are "name" (the short name or a path, chosen by the loader, so any
 * string) and "tls" (added by the core, handled by framed.c). Anything else
 * is a config mistake worth naming, not ignoring. */
static int gi_ctx_init(gi_ctx *ctx, const pl_transport_options *opt,
                       char *err, size_t errlen)
{
    ctx->max_frame = (opt && opt->max_frame) ? opt->max_frame : PL_FRAME_DEFAULT;
    if (!opt || !opt->options_json)
        return PL_OK;

    int rc = PL_ERR_CONFIG;
    cJSON *root = cJSON_Parse(opt->options_json);
    if (!root) {
        gi_errf(err, errlen, "%s transport: options are not valid JSON", GI_NAME);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        gi_errf(err, errlen, "%s transport: options must be a JSON object", GI_NAME);
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it->string && strcmp(it->string, "name") == 0) {
            if (!cJSON_IsString(it)) {
                gi_errf(err, errlen, "%s transport: name: must be a string", GI_NAME);
                goto fail;
            }
            continue;
        }
        /* TLS settings: checked and used by framed.c. */
        if (it->string && strcmp(it->string, "tls") == 0)
            continue;
        if (err && errlen)
            snprintf(err, errlen, "%s transport: %s: unknown option (grpcish takes \"name\" and \"tls\")",
                     GI_NAME, it->string ? it->string : "?");
        goto fail;
    }
    rc = PL_OK;
fail:
    cJSON_Delete(root);
    return rc;
}

static void gi_ctx_free(void *ctx)
{
    free(ctx);
}

/* A heap copy for the framed layer, which frees it with gi_ctx_free. */
static int gi_ctx_new(const pl_transport_options *opt, gi_ctx **out,
                      char *err, size_t errlen)
{
    gi_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        gi_errf(err, errlen, "%s transport: out of memory", GI_NAME);
        return PL_ERR_NOMEM;
    }
    int rc = gi_ctx_init(ctx, opt, err, errlen);
    if (rc != PL_OK) {
        free(ctx);
        return rc;
    }
    *out = ctx;
    return PL_OK;
}

/* ---------------------------------------------------------------- scratch */

/* Everything a decoded pl_request / pl_response points into. The text
 * fields point straight into the unpacked protobuf message (its `bytes`
 * buffers), so the only extra memory is the arrays of C structs. */
typedef struct gi_scratch {
    ProtobufCAllocator alloc;  /* allocator_data = this scratch */
    int alloc_failed;          /* tells NOMEM apart from malformed input */
    ProtobufCMessage *msg;
    pl_str *users;
    pl_message *msgs;
    pl_server_status *servers;
} gi_scratch;

static void *gi_pb_alloc(void *ud, size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        ((gi_scratch *)ud)->alloc_failed = 1;
    return p;
}

static void gi_pb_free(void *ud, void *p)
{
    (void)ud;
    free(p);
}

static void gi_free_scratch(void *scratch)
{
    gi_scratch *s = scratch;
    if (!s)
        return;
    if (s->msg)
        protobuf_c_message_free_unpacked(s->msg, &s->alloc);
    free(s->users);
    free(s->msgs);
    free(s->servers);
    free(s);
}

static gi_scratch *gi_scratch_new(void)
{
    gi_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->alloc.alloc = gi_pb_alloc;
    s->alloc.free = gi_pb_free;
    s->alloc.allocator_data = s;
    return s;
}

/* ---------------------------------------------------------------- framing */

static uint32_t gi_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void gi_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Read the 5-byte prefix at buf. Decides as early as the bytes allow: a
 * bad flag is refused from the first byte, an oversized frame from the
 * fifth, so a peer cannot make us buffer a frame we will reject anyway. */
static int gi_prefix(const gi_ctx *c, const uint8_t *buf, size_t len, uint32_t *msg_len)
{
    if (len < 1)
        return PL_ERR_AGAIN;
    if (buf[0] != GI_FLAG_PLAIN)
        return PL_ERR_MALFORMED;  /* compressed or garbage: unsupported */
    if (len < GI_PREFIX)
        return PL_ERR_AGAIN;
    uint32_t n = gi_get_be32(buf + 1);
    if ((uint64_t)n + GI_PREFIX > c->max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    if (len - GI_PREFIX < n)
        return PL_ERR_AGAIN;
    *msg_len = n;
    return PL_OK;
}

/* Prefix + pack m into one malloc'd frame. */
static int gi_pack_frame(const gi_ctx *c, const ProtobufCMessage *m,
                         uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > c->max_frame || c->max_frame - n < GI_PREFIX)
        return PL_ERR_FRAME_TOO_LARGE;
    uint8_t *buf = malloc(GI_PREFIX + n);
    if (!buf)
        return PL_ERR_NOMEM;
    buf[0] = GI_FLAG_PLAIN;
    gi_put_be32(buf + 1, (uint32_t)n);
    if (protobuf_c_message_pack(m, buf + GI_PREFIX) != n) {
        free(buf);
        return PL_ERR_INTERNAL;
    }
    *out = buf;
    *len = GI_PREFIX + n;
    return PL_OK;
}

/* --------------------------------------------------------------- encoding */

/* A view for protobuf-c, which takes non-const pointers but only reads
 * them when packing. A NULL pointer with a length is a caller bug. */
static int gi_bin(pl_str s, ProtobufCBinaryData *b)
{
    if (s.len && !s.ptr)
        return 0;
    b->len = s.len;
    b->data = (uint8_t *)(uintptr_t)s.ptr;
    return 1;
}

/* Methods a client may send: everything but PL_M_NONE and the
 * server-only PL_M_PUSH. */
static int gi_request_method_ok(uint32_t m)
{
    return m > PL_M_NONE && m < PL_M__COUNT && m != PL_M_PUSH;
}

static int gi_encode_request(const void *vctx, const pl_request *req,
                             uint8_t **out, size_t *len)
{
    const gi_ctx *c = vctx;
    gi_pb_request pb = PARLEY__GRPCISH__REQUEST__INIT;

    if (!req || !gi_request_method_ok(req->method) || (req->n_ids && !req->ids))
        return PL_ERR_INVALID;
    pb.method = req->method;
    pb.request_id = req->request_id;
    pb.client_id = req->client_id;
    pb.request_no = req->request_no;
    if (!gi_bin(req->token, &pb.token) || !gi_bin(req->username, &pb.username) ||
        !gi_bin(req->password, &pb.password) || !gi_bin(req->to, &pb.to) ||
        !gi_bin(req->body, &pb.body) || !gi_bin(req->pattern, &pb.pattern) ||
        !gi_bin(req->peer, &pb.peer))
        return PL_ERR_INVALID;
    pb.offset = req->offset;
    pb.limit = req->limit;
    pb.n = req->n;
    pb.n_ids = req->n_ids;
    pb.ids = (uint64_t *)(uintptr_t)req->ids;
    pb.after_id = req->after_id;
    return gi_pack_frame(c, &pb.base, out, len);
}

static int gi_encode_response(const void *vctx, const pl_response *resp,
                              uint8_t **out, size_t *len)
{
    const gi_ctx *c = vctx;
    gi_pb_response pb = PARLEY__GRPCISH__RESPONSE__INIT;
    ProtobufCBinaryData *users = NULL;
    gi_pb_message *msgs = NULL, **msg_ptrs = NULL;
    gi_pb_server *servers = NULL, **server_ptrs = NULL;
    int rc = PL_ERR_INVALID;

    if (!resp || resp->method >= PL_M__COUNT ||
        (resp->n_users && !resp->users) || (resp->n_msgs && !resp->msgs) ||
        (resp->n_servers && !resp->servers))
        goto fail;
    pb.method = resp->method;
    pb.request_id = resp->request_id;
    pb.status = resp->status;
    if (!gi_bin(resp->error, &pb.error) || !gi_bin(resp->leader, &pb.leader) ||
        !gi_bin(resp->token, &pb.token))
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
            if (!gi_bin(resp->users[i], &users[i]))
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
            gi_pb_message *p = &msgs[i];
            parley__grpcish__message__init(p);
            p->id = m->id;
            if (!gi_bin(m->from, &p->from) || !gi_bin(m->to, &p->to) ||
                !gi_bin(m->body, &p->body))
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
            gi_pb_server *p = &servers[i];
            parley__grpcish__server_status__init(p);
            p->id = s->id;
            p->reachable = s->reachable;
            p->view = s->view;
            p->op = s->op;
            p->commit = s->commit;
            p->applied = s->applied;
            if (!gi_bin(s->address, &p->address) || !gi_bin(s->role, &p->role) ||
                !gi_bin(s->store, &p->store) || !gi_bin(s->transport, &p->transport) ||
                !gi_bin(s->digest, &p->digest))
                goto fail;
            server_ptrs[i] = p;
        }
        pb.n_servers = resp->n_servers;
        pb.servers = server_ptrs;
    }

    rc = gi_pack_frame(c, &pb.base, out, len);
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
static pl_str gi_str(ProtobufCBinaryData b)
{
    pl_str s = { b.len ? (const char *)b.data : NULL, (uint32_t)b.len };
    return s;
}

/* Shared front half of both decoders: prefix, then unpack the message into
 * a fresh scratch. On success *used is the frame size and *out_s owns the
 * unpacked message. */
static int gi_unpack(const gi_ctx *c, const ProtobufCMessageDescriptor *desc,
                     const uint8_t *buf, size_t len, size_t *used,
                     gi_scratch **out_s)
{
    uint32_t n = 0;
    int rc = gi_prefix(c, buf, len, &n);
    if (rc != PL_OK)
        return rc;
    gi_scratch *s = gi_scratch_new();
    if (!s)
        return PL_ERR_NOMEM;
    s->msg = protobuf_c_message_unpack(desc, &s->alloc, n, buf + GI_PREFIX);
    if (!s->msg) {
        rc = s->alloc_failed ? PL_ERR_NOMEM : PL_ERR_MALFORMED;
        gi_free_scratch(s);
        return rc;
    }
    *used = GI_PREFIX + (size_t)n;
    *out_s = s;
    return PL_OK;
}

static int gi_decode_request(const void *vctx, const uint8_t *buf, size_t len,
                             size_t *used, pl_request *out, void **scratch)
{
    const gi_ctx *c = vctx;
    gi_scratch *s = NULL;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = gi_unpack(c, &parley__grpcish__request__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const gi_pb_request *pb = (const gi_pb_request *)s->msg;

    /* An unknown or server-only method is not a request this version can
     * hand to the core. */
    if (!gi_request_method_ok(pb->method)) {
        gi_free_scratch(s);
        return PL_ERR_MALFORMED;
    }
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->client_id = pb->client_id;
    out->request_no = pb->request_no;
    out->token = gi_str(pb->token);
    out->username = gi_str(pb->username);
    out->password = gi_str(pb->password);
    out->pattern = gi_str(pb->pattern);
    out->to = gi_str(pb->to);
    out->body = gi_str(pb->body);
    out->peer = gi_str(pb->peer);
    out->offset = pb->offset;
    out->limit = pb->limit;
    out->n = pb->n;
    out->after_id = pb->after_id;
    out->ids = pb->n_ids ? pb->ids : NULL;
    out->n_ids = (uint32_t)pb->n_ids;  /* at most one id per frame byte */
    *scratch = s;
    return PL_OK;
}

static int gi_decode_response(const void *vctx, const uint8_t *buf, size_t len,
                              size_t *used, pl_response *out, void **scratch)
{
    const gi_ctx *c = vctx;
    gi_scratch *s = NULL;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = gi_unpack(c, &parley__grpcish__response__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const gi_pb_response *pb = (const gi_pb_response *)s->msg;

    rc = PL_ERR_MALFORMED;
    if (pb->method >= PL_M__COUNT)
        goto fail;
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->status = pb->status;
    out->error = gi_str(pb->error);
    out->leader = gi_str(pb->leader);
    out->token = gi_str(pb->token);
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
            s->users[i] = gi_str(pb->users[i]);
        out->users = s->users;
        out->n_users = (uint32_t)pb->n_users;
    }
    if (pb->n_msgs) {
        s->msgs = calloc(pb->n_msgs, sizeof *s->msgs);
        if (!s->msgs)
            goto fail;
        for (size_t i = 0; i < pb->n_msgs; i++) {
            const gi_pb_message *p = pb->msgs[i];
            pl_message *m = &s->msgs[i];
            m->id = p->id;
            m->from = gi_str(p->from);
            m->to = gi_str(p->to);
            m->body = gi_str(p->body);
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
            const gi_pb_server *p = pb->servers[i];
            pl_server_status *v = &s->servers[i];
            v->id = p->id;
            v->address = gi_str(p->address);
            v->reachable = p->reachable;
            v->role = gi_str(p->role);
            v->view = p->view;
            v->op = p->op;
            v->commit = p->commit;
            v->applied = p->applied;
            v->store = gi_str(p->store);
            v->transport = gi_str(p->transport);
            v->digest = gi_str(p->digest);
        }
        out->servers = s->servers;
        out->n_servers = (uint32_t)pb->n_servers;
    }
    *scratch = s;
    return PL_OK;
fail:
    memset(out, 0, sizeof *out);
    gi_free_scratch(s);
    return rc;
}

static uint32_t gi_max_frame(const void *vctx)
{
    return ((const gi_ctx *)vctx)->max_frame;
}

static const pl_framed_codec gi_codec = {
    .encode_request = gi_encode_request,
    .encode_response = gi_encode_response,
    .decode_request = gi_decode_request,
    .decode_response = gi_decode_response,
    .free_scratch = gi_free_scratch,
    .max_frame = gi_max_frame,
};

/* ------------------------------------------------- descriptor: codec half */

/* The descriptor's codec entry points read the options on every call: they
 * serve tools, tests and fuzzers, not the per-connection hot path (the
 * server and client halves build their gi_ctx once). */

static int gi_api_encode_request(const pl_transport_options *opt,
                                 const pl_request *req, uint8_t **out, size_t *len)
{
    gi_ctx c;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_encode_request(&c, req, out, len);
}

static int gi_api_encode_response(const pl_transport_options *opt,
                                  const pl_response *resp, uint8_t **out, size_t *len)
{
    gi_ctx c;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_encode_response(&c, resp, out, len);
}

static int gi_api_decode_request(const pl_transport_options *opt,
                                 const uint8_t *buf, size_t len, size_t *used,
                                 pl_request *out, void **scratch)
{
    gi_ctx c;
    *scratch = NULL;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_decode_request(&c, buf, len, used, out, scratch);
}

static int gi_api_decode_response(const pl_transport_options *opt,
                                  const uint8_t *buf, size_t len, size_t *used,
                                  pl_response *out, void **scratch)
{
    gi_ctx c;
    *scratch = NULL;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_decode_response(&c, buf, len, used, out, scratch);
}

/* ------------------------------------------- descriptor: socket halves */

static int gi_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                           pl_transport_server **out, char *err, size_t errlen)
{
    gi_ctx *ctx = NULL;
    int rc = gi_ctx_new(opt, &ctx, err, errlen);
    if (rc != PL_OK)
        return rc;
    /* On success the server owns ctx; on failure it stays ours. */
    rc = pl_framed_server_start(host, opt, &gi_codec, ctx, gi_ctx_free,
                                out, err, errlen);
    if (rc != PL_OK)
        gi_ctx_free(ctx);
    return rc;
}

static int gi_client_connect(struct event_base *base, const pl_transport_options *opt,
                             const pl_transport_client_cb *cb, void *ud,
                             pl_transport_client **out, char *err, size_t errlen)
{
    gi_ctx *ctx = NULL;
    int rc = gi_ctx_new(opt, &ctx, err, errlen);
    if (rc != PL_OK)
        return rc;
    rc = pl_framed_client_connect(base, opt, &gi_codec, ctx, gi_ctx_free,
                                  cb, ud, out, err, errlen);
    if (rc != PL_OK)
        gi_ctx_free(ctx);
    return rc;
}

static const pl_transport_plugin gi_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = GI_NAME,
    .description = "protobuf-c messages in gRPC-style length-prefixed frames over TCP",
    .server_start = gi_server_start,
    .server_stop_accepting = pl_framed_server_stop_accepting,
    .server_free = pl_framed_server_free,
    .conn_send = pl_framed_conn_send,
    .conn_close = pl_framed_conn_close,
    .client_connect = gi_client_connect,
    .client_send = pl_framed_client_send,
    .client_free = pl_framed_client_free,
    .encode_request = gi_api_encode_request,
    .encode_response = gi_api_encode_response,
    .decode_request = gi_api_decode_request,
    .decode_response = gi_api_decode_response,
    .free_scratch = gi_free_scratch,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &gi_plugin;
}
