/*
 * grpc_client.c — the client half of the gRPC transport (libparley, the
 * CLI, the bench): one nghttp2 client session on a bufferevent.
 *
 * Every pl_request is one call of parley's own service,
 * POST /parley.grpcish.Parley/Call, whose single request message is the
 * grpcish Request and whose response messages are grpcish Responses: one
 * for a unary call, and for a subscribe the answer followed by a push per
 * new message. So every parley method (conversation, ack, status ... that
 * chat.ChatService lacks), exactly-once numbers and session tokens work over
 * gRPC as over the other transports, and the prototype's interface stays
 * untouched for the prototype's clients.
 *
 * A call that ends without a response message (a gRPC error status, a
 * reset stream, a GOAWAY that refused it) becomes one error frame for its
 * request_id, with the gRPC status mapped back to a pl_err; a subscribe
 * stream that ends is the end of the connection for the caller (cb->closed),
 * because pushes stop with it and libparley resubscribes on reconnect.
 *
 * Callbacks run inside nghttp2_session_mem_recv; client_send from inside
 * them only submits (output is produced after mem_recv returns) and
 * client_free from inside them only marks the client, freed on return.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>

#include "grpc_int.h"

#define GC_WINDOW (1u << 20)

typedef struct gc_call gc_call;
struct gc_call {
    pl_transport_client *cli;
    gc_call *prev, *next;
    int32_t sid;
    uint32_t method;
    uint64_t rid;
    uint8_t *req;
    size_t req_len, req_off;
    struct evbuffer *in;
    int answered;
    int status;               /* grpc-status, -1 until seen */
    char message[200];
};

struct pl_transport_client {
    struct event_base *base;
    struct bufferevent *bev;
    nghttp2_session *ng;
    pl_transport_client_cb cb;
    void *ud;
    gr_opts opts;
    char authority[300];
    gc_call *calls;
    int in_ng;
    int in_cb;
    int done;                 /* cb.closed has been called */
    int ending;               /* a subscription ended: closed once no call is left */
    int free_pending;
};

static void gc_call_free(gc_call *call)
{
    pl_transport_client *cli = call->cli;
    if (call->prev)
        call->prev->next = call->next;
    else
        cli->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    if (call->in)
        evbuffer_free(call->in);
    free(call->req);
    free(call);
}

static void gc_destroy(pl_transport_client *cli)
{
    while (cli->calls)
        gc_call_free(cli->calls);
    if (cli->ng)
        nghttp2_session_del(cli->ng);
    if (cli->bev)
        bufferevent_free(cli->bev);
    free(cli);
}

/* Report the end once. */
static void gc_finish(pl_transport_client *cli, int err, const char *why)
{
    if (cli->done)
        return;
    cli->done = 1;
    if (cli->bev)
        bufferevent_disable(cli->bev, EV_READ | EV_WRITE);
    cli->in_cb++;
    cli->cb.closed(cli->ud, err, why);
    cli->in_cb--;
}

static void gc_frame(pl_transport_client *cli, const pl_response *r)
{
    if (cli->done || cli->free_pending)
        return;
    cli->in_cb++;
    cli->cb.frame(cli->ud, r);
    cli->in_cb--;
}

static void gc_flush(pl_transport_client *cli)
{
    if (cli->in_ng || cli->done || cli->free_pending || !cli->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(cli->bev);
    cli->in_ng = 1;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(cli->ng, &data);
        if (n <= 0) {
            cli->in_ng = 0;
            if (n < 0)
                gc_finish(cli, PL_ERR_IO, nghttp2_strerror((int)n));
            break;
        }
        if (evbuffer_add(out, data, (size_t)n) != 0) {
            cli->in_ng = 0;
            gc_finish(cli, PL_ERR_NOMEM, "out of memory writing to the server");
            break;
        }
    }
    cli->in_ng = 0;
    if (!cli->done && !nghttp2_session_want_read(cli->ng) && !nghttp2_session_want_write(cli->ng))
        gc_finish(cli, PL_ERR_IO, "connection closed by the server (GOAWAY)");
}

/* ------------------------------------------------------ nghttp2 callbacks */

static ssize_t gc_read_cb(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    gc_call *call = src->ptr;
    size_t left = call->req_len - call->req_off;
    size_t n = left < length ? left : length;

    (void)ng;
    (void)sid;
    (void)ud;
    memcpy(buf, call->req + call->req_off, n);
    call->req_off += n;
    if (call->req_off == call->req_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int gc_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    gc_call *call = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);

    (void)flags;
    (void)ud;
    if (!call)
        return 0;
    if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        int s = 0;
        for (size_t i = 0; i < valuelen && i < 4; i++)
            s = s * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
        call->status = s;
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        snprintf(call->message, sizeof call->message, "%.*s", (int)valuelen, (const char *)value);
    }
    return 0;
}

static int gc_on_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data,
                      size_t len, void *ud)
{
    pl_transport_client *cli = ud;
    gc_call *call = nghttp2_session_get_stream_user_data(ng, sid);

    (void)flags;
    if (!call || cli->done)
        return 0;
    if (evbuffer_add(call->in, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    for (;;) {
        size_t have = evbuffer_get_length(call->in), used = 0;
        if (have < GR_PREFIX)
            return 0;
        const uint8_t *p = evbuffer_pullup(call->in, GR_PREFIX);
        size_t need = GR_PREFIX + (size_t)pl_grpcish_get_be32(p + 1);
        if (need > cli->opts.max_msg && p[0] == 0) {
            gc_finish(cli, PL_ERR_FRAME_TOO_LARGE, "server sent a message over max_frame");
            return 0;
        }
        if (have < need && p[0] == 0)
            return 0;
        p = evbuffer_pullup(call->in, (ev_ssize_t)(have < need ? have : need));
        pl_response r;
        void *scratch = NULL;
        int rc = pl_grpcish_decode_response(cli->opts.max_msg, p, need, &used, &r, &scratch);
        if (rc != PL_OK) {
            pl_grpcish_free_scratch(scratch);
            gc_finish(cli, rc == PL_ERR_NOMEM ? rc : PL_ERR_MALFORMED,
                      "server sent a message that does not decode");
            return 0;
        }
        evbuffer_drain(call->in, used);
        if (r.method != PL_M_PUSH)
            call->answered = 1;
        gc_frame(cli, &r);
        pl_grpcish_free_scratch(scratch);
        if (cli->done || cli->free_pending)
            return 0;
    }
}

static int gc_on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t err, void *ud)
{
    pl_transport_client *cli = ud;
    gc_call *call = nghttp2_session_get_stream_user_data(ng, sid);

    (void)err;
    if (!call)
        return 0;
    nghttp2_session_set_stream_user_data(ng, sid, NULL);
    if (!call->answered) {
        char text[260];
        int st = call->status > 0 ? gr_err_of(call->status) : PL_ERR_UNAVAILABLE;
        snprintf(text, sizeof text, "gRPC call ended without a reply: %s",
                 call->message[0] ? call->message : call->status > 0 ? "error status"
                                                                      : "stream reset");
        pl_response r = { .method = call->method, .request_id = call->rid, .status = (uint32_t)st,
                          .error = pl_str_c(text) };
        gc_frame(cli, &r);
    } else if (call->method == PL_M_SUBSCRIBE) {
        /* Pushes stop with this stream. The caller learns it as the end of
         * the connection, but only after the answers to its other calls
         * (a closing server finishes them too), so none is lost. */
        cli->ending = 1;
    }
    gc_call_free(call);
    if (cli->ending && !cli->calls)
        gc_finish(cli, PL_ERR_IO, "connection closed by the server (the subscription ended)");
    return 0;
}

/* ---------------------------------------------------------------- socket */

static void gc_check_free(pl_transport_client *cli)
{
    if (cli->free_pending && cli->in_cb == 0 && !cli->in_ng)
        gc_destroy(cli);
}

static void gc_read_sock(struct bufferevent *bev, void *arg)
{
    pl_transport_client *cli = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);

    if (cli->done) {
        evbuffer_drain(in, len);
        return;
    }
    uint8_t *data = evbuffer_pullup(in, -1);
    cli->in_ng = 1;
    ssize_t n = nghttp2_session_mem_recv(cli->ng, data, len);
    cli->in_ng = 0;
    if (cli->free_pending) {
        gc_check_free(cli);
        return;
    }
    evbuffer_drain(in, len);
    if (n < 0)
        gc_finish(cli, PL_ERR_MALFORMED, nghttp2_strerror((int)n));
    else
        gc_flush(cli);
    gc_check_free(cli);
}

static void gc_write_sock(struct bufferevent *bev, void *arg)
{
    (void)bev;
    gc_flush(arg);
}

static void gc_event_sock(struct bufferevent *bev, short what, void *arg)
{
    pl_transport_client *cli = arg;
    char why[160];

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        (void)setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        gc_flush(cli);
        return;
    }
    if (what & BEV_EVENT_ERROR)
        snprintf(why, sizeof why, "connection failed: %s",
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    else
        snprintf(why, sizeof why, "connection closed by the server");
    gc_finish(cli, PL_ERR_IO, why);
    gc_check_free(cli);
}

int gr_client_connect(struct event_base *base, const pl_transport_options *opt,
                      const pl_transport_client_cb *cb, void *ud,
                      pl_transport_client **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    nghttp2_session_callbacks *cbs = NULL;
    pl_transport_client *cli;
    int rc;

    *out = NULL;
    if (!base || !opt || !cb || !cb->frame || !cb->closed || !opt->port) {
        snprintf(err, errlen, "grpc client: event base, options, port and callbacks are required");
        return PL_ERR_INVALID;
    }
    if (!(cli = calloc(1, sizeof *cli))) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    if ((rc = gr_opts_init(&cli->opts, opt, err, errlen)) != PL_OK ||
        (rc = gr_resolve(opt->host, opt->port, 0, &ss, &sslen, err, errlen)) != PL_OK)
        goto fail;
    cli->base = base;
    cli->cb = *cb;
    cli->ud = ud;
    gr_sockaddr_text((struct sockaddr *)&ss, cli->authority, sizeof cli->authority);
    rc = PL_ERR_NOMEM;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        goto fail;
    nghttp2_session_callbacks_set_on_header_callback(cbs, gc_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, gc_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, gc_on_stream_close);
    if (nghttp2_session_client_new(&cli->ng, cbs, cli) != 0)
        goto fail;
    nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, GC_WINDOW },
                                    { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 } };
    if (nghttp2_submit_settings(cli->ng, NGHTTP2_FLAG_NONE, iv, 2) != 0)
        goto fail;
    if (!(cli->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)))
        goto fail;
    bufferevent_setcb(cli->bev, gc_read_sock, gc_write_sock, gc_event_sock, cli);
    bufferevent_enable(cli->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(cli->bev, (struct sockaddr *)&ss, (int)sslen) != 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", cli->authority,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        rc = PL_ERR_IO;
        goto fail;
    }
    nghttp2_session_callbacks_del(cbs);
    *out = cli;
    return PL_OK;
fail:
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    if (rc == PL_ERR_NOMEM)
        snprintf(err, errlen, "out of memory");
    gc_destroy(cli);
    return rc;
}

#define GC_NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

int gr_client_send(pl_transport_client *cli, const pl_request *req)
{
    if (!cli || !req)
        return PL_ERR_INVALID;
    if (cli->done || cli->free_pending || cli->ending)
        return PL_ERR_IO;
    gc_call *call = calloc(1, sizeof *call);
    if (!call || !(call->in = evbuffer_new())) {
        free(call);
        return PL_ERR_NOMEM;
    }
    call->cli = cli;
    call->status = -1;
    call->method = req->method;
    call->rid = req->request_id;
    int rc = pl_grpcish_encode_request(cli->opts.max_msg, req, &call->req, &call->req_len);
    if (rc != PL_OK) {
        evbuffer_free(call->in);
        free(call);
        return rc;
    }
    call->next = cli->calls;
    if (cli->calls)
        cli->calls->prev = call;
    cli->calls = call;
    nghttp2_nv nv[] = {
        GC_NV(":method", "POST"), GC_NV(":scheme", "http"), GC_NV(":path", GR_NATIVE_PATH),
        GC_NV(":authority", cli->authority), GC_NV("content-type", "application/grpc"),
        GC_NV("te", "trailers"),
    };
    nghttp2_data_provider prd = { .source.ptr = call, .read_callback = gc_read_cb };
    call->sid = nghttp2_submit_request(cli->ng, NULL, nv, sizeof nv / sizeof nv[0], &prd, call);
    if (call->sid < 0) {
        gc_call_free(call);
        return PL_ERR_IO;
    }
    gc_flush(cli);
    if (cli->free_pending) {
        /* closed fired inside the flush and the caller freed us there. */
        gc_check_free(cli);
        return PL_ERR_IO;
    }
    return PL_OK;
}

void gr_client_free(pl_transport_client *cli)
{
    if (!cli)
        return;
    if (cli->in_cb > 0 || cli->in_ng) {
        cli->free_pending = 1;
        if (cli->bev)
            bufferevent_disable(cli->bev, EV_READ | EV_WRITE);
        return;
    }
    gc_destroy(cli);
}
