/*
 * transport_grpc.c — real gRPC over HTTP/2 cleartext (libnghttp2): the
 * descriptor, options, status mapping and the codec of the native parley
 * service (grpc_int.h says which two services a connection carries).
 *
 * The codec entry points of the descriptor encode one gRPC length-prefixed
 * message of the native service:
 *
 *   byte 0      compression flag, 0 = uncompressed (nothing else is accepted)
 *   bytes 1-4   big-endian length N
 *   bytes 5..   one grpcish Request (client -> server) or Response
 *
 * which is exactly a DATA payload of /parley.grpcish.Parley/Call. The
 * HTTP/2 framing around it (HEADERS, DATA, trailers) is the socket halves'
 * business, not the codec's. Structure is checked here; contents (username
 * characters, UTF-8, limits) are the core's, as on every other transport.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <protobuf-c/protobuf-c.h>

#include "grpc_int.h"
#include "grpcish.pb-c.h"

typedef Parley__Grpcish__Request gr_pb_request;
typedef Parley__Grpcish__Response gr_pb_response;
typedef Parley__Grpcish__Message gr_pb_message;
typedef Parley__Grpcish__ServerStatus gr_pb_server;

/* ---------------------------------------------------------------- options */

/* options_json is the transport's config object; the only key is "name"
 * (short name or path, so any string). Anything else is named, not ignored. */
int gr_opts_init(gr_opts *o, const pl_transport_options *opt, char *err, size_t errlen)
{
    o->max_msg = (opt && opt->max_frame) ? opt->max_frame : PL_FRAME_DEFAULT;
    if (o->max_msg < GR_PREFIX + 1)
        o->max_msg = GR_PREFIX + 1;
    if (!opt || !opt->options_json)
        return PL_OK;

    int rc = PL_ERR_CONFIG;
    cJSON *root = cJSON_Parse(opt->options_json);
    if (!root || !cJSON_IsObject(root)) {
        if (err && errlen)
            snprintf(err, errlen, "%s transport: options must be a JSON object", GR_NAME);
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it->string && strcmp(it->string, "name") == 0 && cJSON_IsString(it))
            continue;
        if (err && errlen)
            snprintf(err, errlen, "%s transport: %s: unknown option (grpc takes only \"name\")",
                     GR_NAME, it->string ? it->string : "?");
        goto fail;
    }
    rc = PL_OK;
fail:
    cJSON_Delete(root);
    return rc;
}

void gr_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint32_t gr_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* ---------------------------------------------------------- status codes */

int gr_status_of(int e)
{
    switch (e) {
    case PL_OK: return GR_OK;
    case PL_ERR_INTERNAL: case PL_ERR_CORRUPT: case PL_ERR_IO: case PL_ERR_MALFORMED:
    case PL_ERR_AGAIN: case PL_ERR_CONFIG: case PL_ERR_PLUGIN:
        return GR_INTERNAL;
    case PL_ERR_NOMEM: case PL_ERR_BUSY: case PL_ERR_RATE_LIMITED: case PL_ERR_FRAME_TOO_LARGE:
        return GR_RESOURCE_EXHAUSTED;
    case PL_ERR_NOT_FOUND: case PL_ERR_NO_SUCH_USER: case PL_ERR_NO_SUCH_MESSAGE:
        return GR_NOT_FOUND;
    case PL_ERR_INVALID: case PL_ERR_USERNAME: case PL_ERR_PASSWORD: case PL_ERR_BODY:
    case PL_ERR_PATTERN: case PL_ERR_PAGE: case PL_ERR_TOO_MANY_IDS:
        return GR_INVALID_ARGUMENT;
    case PL_ERR_UNSUPPORTED: return GR_UNIMPLEMENTED;
    case PL_ERR_USER_EXISTS: return GR_ALREADY_EXISTS;
    case PL_ERR_AUTH: case PL_ERR_NOT_LOGGED_IN: return GR_UNAUTHENTICATED;
    case PL_ERR_STALE_REQUEST: return GR_FAILED_PRECONDITION;
    case PL_ERR_NOT_PRIMARY: return GR_PERMISSION_DENIED;
    case PL_ERR_UNAVAILABLE: return GR_UNAVAILABLE;
    case PL_ERR_TIMEOUT: return GR_DEADLINE_EXCEEDED;
    default: return GR_UNKNOWN;
    }
}

int gr_err_of(int s)
{
    switch (s) {
    case GR_OK: return PL_OK;
    case GR_DEADLINE_EXCEEDED: return PL_ERR_TIMEOUT;
    case GR_RESOURCE_EXHAUSTED: return PL_ERR_FRAME_TOO_LARGE;
    case GR_UNIMPLEMENTED: return PL_ERR_UNSUPPORTED;
    case GR_PERMISSION_DENIED: return PL_ERR_NOT_PRIMARY;
    case GR_UNAUTHENTICATED: return PL_ERR_NOT_LOGGED_IN;
    case GR_INVALID_ARGUMENT: return PL_ERR_INVALID;
    case GR_NOT_FOUND: return PL_ERR_NOT_FOUND;
    case GR_INTERNAL: return PL_ERR_MALFORMED;
    default: return PL_ERR_UNAVAILABLE; /* cancelled, unknown, unavailable: retry */
    }
}

/* ------------------------------------------------------------- addresses */

/* getaddrinfo blocks for names: acceptable at server start and connect,
 * and configs name servers by address. */
int gr_resolve(const char *host, uint16_t port, int passive, struct sockaddr_storage *ss,
               socklen_t *sslen, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portbuf[8];

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    snprintf(portbuf, sizeof portbuf, "%u", (unsigned)port);
    int e = getaddrinfo(host && *host ? host : NULL, portbuf, &hints, &res);
    if (e != 0 || !res) {
        if (err && errlen)
            snprintf(err, errlen, "cannot resolve address \"%s\": %s", host ? host : "",
                     e ? gai_strerror(e) : "no address");
        if (res)
            freeaddrinfo(res);
        return PL_ERR_CONFIG;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return PL_OK;
}

void gr_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
        snprintf(buf, len, "%s:%u", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
        snprintf(buf, len, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, len, "?");
    }
}

/* ---------------------------------------------------------------- scratch */

/* What a decoded struct points into: the unpacked protobuf (text fields are
 * `bytes`, so they point straight into it) and the arrays of C structs. */
typedef struct gr_scratch {
    ProtobufCAllocator alloc;
    int alloc_failed;          /* tells NOMEM apart from malformed input */
    ProtobufCMessage *msg;
    pl_str *users;
    pl_message *msgs;
    pl_server_status *servers;
} gr_scratch;

static void *gr_pb_alloc(void *ud, size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        ((gr_scratch *)ud)->alloc_failed = 1;
    return p;
}

static void gr_pb_free(void *ud, void *p)
{
    (void)ud;
    free(p);
}

void gr_free_scratch(void *scratch)
{
    gr_scratch *s = scratch;
    if (!s)
        return;
    if (s->msg)
        protobuf_c_message_free_unpacked(s->msg, &s->alloc);
    free(s->users);
    free(s->msgs);
    free(s->servers);
    free(s);
}

/* --------------------------------------------------------------- encoding */

static int gr_pack(const gr_opts *o, const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > o->max_msg || o->max_msg - n < GR_PREFIX)
        return PL_ERR_FRAME_TOO_LARGE;
    uint8_t *buf = malloc(GR_PREFIX + n);
    if (!buf)
        return PL_ERR_NOMEM;
    buf[0] = 0;
    gr_put_be32(buf + 1, (uint32_t)n);
    if (protobuf_c_message_pack(m, buf + GR_PREFIX) != n) {
        free(buf);
        return PL_ERR_INTERNAL;
    }
    *out = buf;
    *len = GR_PREFIX + n;
    return PL_OK;
}

/* protobuf-c takes non-const pointers but only reads them when packing. */
static int gr_bin(pl_str s, ProtobufCBinaryData *b)
{
    if (s.len && !s.ptr)
        return 0;
    b->len = s.len;
    b->data = (uint8_t *)(uintptr_t)s.ptr;
    return 1;
}

static int gr_request_method_ok(uint32_t m)
{
    return m > PL_M_NONE && m < PL_M__COUNT && m != PL_M_PUSH;
}

int gr_native_encode_request(const gr_opts *o, const pl_request *req, uint8_t **out, size_t *len)
{
    gr_pb_request pb = PARLEY__GRPCISH__REQUEST__INIT;

    if (!req || !gr_request_method_ok(req->method) || (req->n_ids && !req->ids))
        return PL_ERR_INVALID;
    pb.method = req->method;
    pb.request_id = req->request_id;
    pb.client_id = req->client_id;
    pb.request_no = req->request_no;
    if (!gr_bin(req->token, &pb.token) || !gr_bin(req->username, &pb.username) ||
        !gr_bin(req->password, &pb.password) || !gr_bin(req->to, &pb.to) ||
        !gr_bin(req->body, &pb.body) || !gr_bin(req->pattern, &pb.pattern) ||
        !gr_bin(req->peer, &pb.peer))
        return PL_ERR_INVALID;
    pb.offset = req->offset;
    pb.limit = req->limit;
    pb.n = req->n;
    pb.n_ids = req->n_ids;
    pb.ids = (uint64_t *)(uintptr_t)req->ids;
    pb.after_id = req->after_id;
    return gr_pack(o, &pb.base, out, len);
}

int gr_native_encode_response(const gr_opts *o, const pl_response *resp, uint8_t **out, size_t *len)
{
    gr_pb_response pb = PARLEY__GRPCISH__RESPONSE__INIT;
    ProtobufCBinaryData *users = NULL;
    gr_pb_message *msgs = NULL, **msg_ptrs = NULL;
    gr_pb_server *servers = NULL, **server_ptrs = NULL;
    int rc = PL_ERR_INVALID;

    if (!resp || resp->method >= PL_M__COUNT || (resp->n_users && !resp->users) ||
        (resp->n_msgs && !resp->msgs) || (resp->n_servers && !resp->servers))
        goto fail;
    pb.method = resp->method;
    pb.request_id = resp->request_id;
    pb.status = resp->status;
    if (!gr_bin(resp->error, &pb.error) || !gr_bin(resp->leader, &pb.leader) ||
        !gr_bin(resp->token, &pb.token))
        goto fail;
    pb.unread = resp->unread;
    pb.read = resp->read;
    pb.id = resp->id;
    pb.time_ms = resp->time_ms;
    pb.more = resp->more;

    rc = PL_ERR_NOMEM;
    if (resp->n_users) {
        if (!(users = calloc(resp->n_users, sizeof *users)))
            goto fail;
        rc = PL_ERR_INVALID;
        for (uint32_t i = 0; i < resp->n_users; i++)
            if (!gr_bin(resp->users[i], &users[i]))
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
            gr_pb_message *p = &msgs[i];
            parley__grpcish__message__init(p);
            p->id = m->id;
            if (!gr_bin(m->from, &p->from) || !gr_bin(m->to, &p->to) || !gr_bin(m->body, &p->body))
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
            gr_pb_server *p = &servers[i];
            parley__grpcish__server_status__init(p);
            p->id = s->id;
            p->reachable = s->reachable;
            p->view = s->view;
            p->op = s->op;
            p->commit = s->commit;
            p->applied = s->applied;
            if (!gr_bin(s->address, &p->address) || !gr_bin(s->role, &p->role) ||
                !gr_bin(s->store, &p->store) || !gr_bin(s->transport, &p->transport) ||
                !gr_bin(s->digest, &p->digest))
                goto fail;
            server_ptrs[i] = p;
        }
        pb.n_servers = resp->n_servers;
        pb.servers = server_ptrs;
    }
    rc = gr_pack(o, &pb.base, out, len);
fail:
    free(users);
    free(msgs);
    free(msg_ptrs);
    free(servers);
    free(server_ptrs);
    return rc;
}

/* --------------------------------------------------------------- decoding */

static pl_str gr_str(ProtobufCBinaryData b)
{
    pl_str s = { b.len ? (const char *)b.data : NULL, (uint32_t)b.len };
    return s;
}

/* Prefix checks in the order the bytes arrive: a compressed or garbage flag
 * is refused from byte 0, an oversized message from byte 4. */
static int gr_unpack(const gr_opts *o, const ProtobufCMessageDescriptor *desc,
                     const uint8_t *buf, size_t len, size_t *used, gr_scratch **out_s)
{
    if (len < 1)
        return PL_ERR_AGAIN;
    if (buf[0] != 0)
        return PL_ERR_MALFORMED;
    if (len < GR_PREFIX)
        return PL_ERR_AGAIN;
    uint32_t n = gr_get_be32(buf + 1);
    if ((uint64_t)n + GR_PREFIX > o->max_msg)
        return PL_ERR_FRAME_TOO_LARGE;
    if (len - GR_PREFIX < n)
        return PL_ERR_AGAIN;
    gr_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return PL_ERR_NOMEM;
    s->alloc.alloc = gr_pb_alloc;
    s->alloc.free = gr_pb_free;
    s->alloc.allocator_data = s;
    s->msg = protobuf_c_message_unpack(desc, &s->alloc, n, buf + GR_PREFIX);
    if (!s->msg) {
        int rc = s->alloc_failed ? PL_ERR_NOMEM : PL_ERR_MALFORMED;
        gr_free_scratch(s);
        return rc;
    }
    *used = GR_PREFIX + (size_t)n;
    *out_s = s;
    return PL_OK;
}

int gr_native_decode_request(const gr_opts *o, const uint8_t *buf, size_t len, size_t *used,
                             pl_request *out, void **scratch)
{
    gr_scratch *s = NULL;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = gr_unpack(o, &parley__grpcish__request__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const gr_pb_request *pb = (const gr_pb_request *)s->msg;
    if (!gr_request_method_ok(pb->method)) {
        gr_free_scratch(s);
        return PL_ERR_MALFORMED;
    }
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->client_id = pb->client_id;
    out->request_no = pb->request_no;
    out->token = gr_str(pb->token);
    out->username = gr_str(pb->username);
    out->password = gr_str(pb->password);
    out->pattern = gr_str(pb->pattern);
    out->to = gr_str(pb->to);
    out->body = gr_str(pb->body);
    out->peer = gr_str(pb->peer);
    out->offset = pb->offset;
    out->limit = pb->limit;
    out->n = pb->n;
    out->after_id = pb->after_id;
    out->ids = pb->n_ids ? pb->ids : NULL;
    out->n_ids = (uint32_t)pb->n_ids;  /* at most one id per message byte */
    *scratch = s;
    return PL_OK;
}

int gr_native_decode_response(const gr_opts *o, const uint8_t *buf, size_t len, size_t *used,
                              pl_response *out, void **scratch)
{
    gr_scratch *s = NULL;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    int rc = gr_unpack(o, &parley__grpcish__response__descriptor, buf, len, used, &s);
    if (rc != PL_OK)
        return rc;
    const gr_pb_response *pb = (const gr_pb_response *)s->msg;

    rc = PL_ERR_MALFORMED;
    if (pb->method >= PL_M__COUNT)
        goto fail;
    out->method = pb->method;
    out->request_id = pb->request_id;
    out->status = pb->status;
    out->error = gr_str(pb->error);
    out->leader = gr_str(pb->leader);
    out->token = gr_str(pb->token);
    out->unread = pb->unread;
    out->read = pb->read;
    out->id = pb->id;
    out->time_ms = pb->time_ms;
    out->more = pb->more;
    /* Counts fit in 32 bits: every element takes at least one byte of a
     * message whose length is a 32-bit number. */
    rc = PL_ERR_NOMEM;
    if (pb->n_users) {
        if (!(s->users = calloc(pb->n_users, sizeof *s->users)))
            goto fail;
        for (size_t i = 0; i < pb->n_users; i++)
            s->users[i] = gr_str(pb->users[i]);
        out->users = s->users;
        out->n_users = (uint32_t)pb->n_users;
    }
    if (pb->n_msgs) {
        if (!(s->msgs = calloc(pb->n_msgs, sizeof *s->msgs)))
            goto fail;
        for (size_t i = 0; i < pb->n_msgs; i++) {
            const gr_pb_message *p = pb->msgs[i];
            pl_message *m = &s->msgs[i];
            m->id = p->id;
            m->from = gr_str(p->from);
            m->to = gr_str(p->to);
            m->body = gr_str(p->body);
            m->time_ms = p->time_ms;
            m->state = p->state;
        }
        out->msgs = s->msgs;
        out->n_msgs = (uint32_t)pb->n_msgs;
    }
    if (pb->n_servers) {
        if (!(s->servers = calloc(pb->n_servers, sizeof *s->servers)))
            goto fail;
        for (size_t i = 0; i < pb->n_servers; i++) {
            const gr_pb_server *p = pb->servers[i];
            pl_server_status *v = &s->servers[i];
            v->id = p->id;
            v->address = gr_str(p->address);
            v->reachable = p->reachable;
            v->role = gr_str(p->role);
            v->view = p->view;
            v->op = p->op;
            v->commit = p->commit;
            v->applied = p->applied;
            v->store = gr_str(p->store);
            v->transport = gr_str(p->transport);
            v->digest = gr_str(p->digest);
        }
        out->servers = s->servers;
        out->n_servers = (uint32_t)pb->n_servers;
    }
    *scratch = s;
    return PL_OK;
fail:
    memset(out, 0, sizeof *out);
    gr_free_scratch(s);
    return rc;
}

/* ------------------------------------------------- descriptor: codec half */

static int gr_api_encode_request(const pl_transport_options *opt, const pl_request *req,
                                 uint8_t **out, size_t *len)
{
    gr_opts o;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : gr_native_encode_request(&o, req, out, len);
}

static int gr_api_encode_response(const pl_transport_options *opt, const pl_response *resp,
                                  uint8_t **out, size_t *len)
{
    gr_opts o;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : gr_native_encode_response(&o, resp, out, len);
}

static int gr_api_decode_request(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                                 size_t *used, pl_request *out, void **scratch)
{
    gr_opts o;
    *scratch = NULL;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : gr_native_decode_request(&o, buf, len, used, out, scratch);
}

static int gr_api_decode_response(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                                  size_t *used, pl_response *out, void **scratch)
{
    gr_opts o;
    *scratch = NULL;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : gr_native_decode_response(&o, buf, len, used, out, scratch);
}

static const pl_transport_plugin gr_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = GR_NAME,
    .description = "gRPC over HTTP/2 cleartext: the prototype's chat.ChatService and parley's own service",
    .server_start = gr_server_start,
    .server_stop_accepting = gr_server_stop_accepting,
    .server_free = gr_server_free,
    .conn_send = gr_conn_send,
    .conn_close = gr_conn_close,
    .client_connect = gr_client_connect,
    .client_send = gr_client_send,
    .client_free = gr_client_free,
    .encode_request = gr_api_encode_request,
    .encode_response = gr_api_encode_response,
    .decode_request = gr_api_decode_request,
    .decode_response = gr_api_decode_response,
    .free_scratch = gr_free_scratch,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &gr_plugin;
}
