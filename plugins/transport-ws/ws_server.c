/*
 * plugins/transport-ws/ws_server.c — the server half of the ws transport
 * on the core's event loop: one bufferevent (TLS or not) per connection,
 * one ws_proto over it.
 *
 * A connection starts as HTTP/1.1: the web client's files, /cluster.json,
 * and the upgrade at /ws. Every accepted TCP connection is one
 * host->conn_open, like every other transport's, so limits.conns_per_address
 * counts browsers' file fetches too. When the core refuses a connection
 * (its error object comes before any request) the reason is kept and the
 * first request gets it: an upgrade is accepted just to carry the error
 * object and a close 1008 with the text (browsers do not show scripts the
 * status of a failed handshake), any other request a 429 with the text.
 *
 * After the upgrade each text message is one JSON request (json_codec.h)
 * for host->request, and every conn_send is one message. Bounds:
 *  - input: the read watermark in the HTTP phase; afterwards every byte is
 *    taken by wslay at once into a message buffer of at most max_frame;
 *  - output: past out_pause bytes queued (wslay's queue plus the socket's)
 *    requests are no longer read until it drains; a frame queued while
 *    past out_limit closes the connection with a log line (pushes do not
 *    stop when requests do), as in framed.c;
 *  - time: a request head within WS_HEAD_SECS (and the TLS handshake),
 *    an idle HTTP connection WS_IDLE_SECS, a keep-alive ping every
 *    ping_interval_s with a close 1001 when nothing came back for two, the
 *    close handshake WS_CLOSE_SECS, the last output WS_DRAIN_SECS.
 *
 * Teardown is deferred to a per-connection event (conn_reap), so no host
 * callback runs inside another and a connection never disappears under a
 * caller; server_free tears down synchronously.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "codec_scratch.h"
#include "json_codec.h"
#include "net.h"
#include "tls.h"
#include "ws_int.h"
#include "ws_proto.h"

#define WS_HEAD_SECS 10           /* from accept to a whole request head */
#define WS_IDLE_SECS 30           /* an idle keep-alive HTTP connection */
#define WS_CLOSE_SECS 2           /* our close frame sent: wait for the peer's */
#define WS_DRAIN_SECS 10          /* finished: the last output must leave */
#define WS_REFUSE_SECS 5          /* a refused connection waits for its request */
#define WS_LINGER_MAX (64u * 1024u)
#define WS_READ_HIGH (64u * 1024u)
#define WS_OUT_PAUSE_MIN (4u * 1024u * 1024u)
#define WS_SOCK_HIGH (256u * 1024u) /* socket output; the rest waits in wslay */

enum { C_HTTP, C_WS, C_FINISHED, C_LINGER, C_DEAD };

struct pl_transport_server {
    pl_transport_host host;
    ws_opts opts;
    SSL_CTX *ssl_ctx;
    pl_net_listener *lis;      /* NULL once it stopped accepting */
    ws_web *web;
    char addr[80];
    size_t out_pause, out_limit;
    pl_transport_conn *conns;
};

struct pl_transport_conn {
    pl_transport_server *srv;
    struct bufferevent *bev;
    ws_proto *proto;
    struct event *reap_ev;
    struct event *timer;
    void *ctx;                 /* the core's, from conn_open */
    pl_transport_conn *prev, *next;
    int state;
    int in_proto;              /* inside ws_proto_feed: wslay is busy */
    int paused;
    int refused;               /* the core refused it: answer the first request */
    int core_closing;          /* conn_close was called */
    uint32_t refusal_status;
    char refusal[200];         /* the core's reason for a refusal or last error */
    uint64_t last_rx_ms;
    uint64_t close_at;         /* when we queued our close frame; 0 = not yet */
    size_t lingered;
    char peer[64];
};

static uint64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------ */
/* the cluster: URLs, allowed origins, Content-Security-Policy          */

/* The core's cluster document (v 2), or NULL from an older core. */
static cJSON *cluster_doc(const pl_transport_server *srv)
{
    char *text;
    cJSON *doc;

    if (srv->host.abi_version < 2 || !srv->host.cluster_json)
        return NULL;
    text = srv->host.cluster_json(srv->host.ud);
    if (!text)
        return NULL;
    doc = cJSON_Parse(text);
    free(text);
    return doc;
}

/* "host:port" as it goes in a URL or an Origin (IPv6 in brackets, the
 * scheme's default port left out, as browsers serialise origins). */
static void url_authority(const char *host, unsigned port, int tls, char *out, size_t outlen)
{
    int dflt = port == (tls ? 443u : 80u);

    if (strchr(host, ':'))
        snprintf(out, outlen, dflt ? "[%s]" : "[%s]:%u", host, port);
    else
        snprintf(out, outlen, dflt ? "%s" : "%s:%u", host, port);
}

/* Each member's host and port from the cluster document. */
static int member_at(const cJSON *e, const char **host, unsigned *port)
{
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "host");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "port");

    if (!cJSON_IsString(h) || !cJSON_IsNumber(p))
        return 0;
    *host = h->valuestring;
    *port = (unsigned)p->valuedouble;
    return 1;
}

/* Origin is allowed: one of the "origins" option, or a page served by one
 * of the cluster's own ws listeners (scheme://host:port of each, plus
 * localhost for a loopback host), which a page needs to follow a failover
 * to another server. Anything else (another site's page) is refused:
 * cross-site WebSocket hijacking. A request without Origin is not from a
 * browser page and is allowed. */
static int origin_allowed(const pl_transport_server *srv, const char *origin)
{
    const char *scheme = srv->ssl_ctx ? "https://" : "http://";
    cJSON *doc;
    const cJSON *arr, *e;
    int ok = 0;

    for (size_t i = 0; i < srv->opts.n_origins; i++)
        if (strcasecmp(origin, srv->opts.origins[i]) == 0)
            return 1;
    if (strncasecmp(origin, scheme, strlen(scheme)) != 0)
        return 0;
    origin += strlen(scheme);
    doc = cluster_doc(srv);
    arr = doc ? cJSON_GetObjectItemCaseSensitive(doc, "servers") : NULL;
    cJSON_ArrayForEach(e, arr) {
        char a[300];
        const char *host;
        unsigned port;

        if (!member_at(e, &host, &port))
            continue;
        url_authority(host, port, srv->ssl_ctx != NULL, a, sizeof a);
        if (strcasecmp(origin, a) == 0)
            ok = 1;
        if (strcmp(host, "127.0.0.1") == 0 || strcmp(host, "::1") == 0) {
            url_authority("localhost", port, srv->ssl_ctx != NULL, a, sizeof a);
            if (strcasecmp(origin, a) == 0)
                ok = 1;
        }
    }
    cJSON_Delete(doc);
    return ok;
}

/* The Content-Security-Policy header: scripts, styles and images from this
 * server only (no inline script, no eval), sockets to this server and the
 * cluster's other ws listeners, nothing framed, no forms, no <base>. */
static void csp_header(const pl_transport_server *srv, struct evbuffer *out)
{
    const char *ws = srv->ssl_ctx ? "wss://" : "ws://";
    cJSON *doc = cluster_doc(srv);
    const cJSON *arr = doc ? cJSON_GetObjectItemCaseSensitive(doc, "servers") : NULL, *e;

    evbuffer_add_printf(out, "Content-Security-Policy: default-src 'none'; script-src 'self'; "
                        "style-src 'self'; img-src 'self'; connect-src 'self'");
    cJSON_ArrayForEach(e, arr) {
        char a[300];
        const char *host;
        unsigned port;

        if (!member_at(e, &host, &port))
            continue;
        url_authority(host, port, srv->ssl_ctx != NULL, a, sizeof a);
        evbuffer_add_printf(out, " %s%s", ws, a);
    }
    evbuffer_add_printf(out, "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n");
    cJSON_Delete(doc);
}

/* /cluster.json: the core's document with each server's WebSocket URL. */
static char *cluster_json(const pl_transport_server *srv)
{
    cJSON *doc = cluster_doc(srv), *e;
    const cJSON *arr;
    char *text;

    if (!doc)
        doc = cJSON_CreateObject();
    if (!doc)
        return NULL;
    arr = cJSON_GetObjectItemCaseSensitive(doc, "servers");
    cJSON_ArrayForEach(e, arr) {
        char a[300], url[340];
        const char *host;
        unsigned port;

        if (!member_at(e, &host, &port))
            continue;
        url_authority(host, port, srv->ssl_ctx != NULL, a, sizeof a);
        snprintf(url, sizeof url, "%s%s%s", srv->ssl_ctx ? "wss://" : "ws://", a, WS_PATH);
        cJSON_AddStringToObject(e, "url", url);
    }
    cJSON_AddBoolToObject(doc, "tls", srv->ssl_ctx != NULL);
    cJSON_AddNumberToObject(doc, "max_frame", srv->opts.max_frame);
    text = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return text;
}

/* ------------------------------------------------------------------ */
/* connection lifecycle                                                 */

static void conn_unlink(pl_transport_conn *c)
{
    pl_transport_server *srv = c->srv;

    if (c->prev)
        c->prev->next = c->next;
    else if (srv->conns == c)
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void conn_destroy(pl_transport_conn *c)
{
    pl_transport_server *srv = c->srv;
    void *ctx = c->ctx;

    conn_unlink(c);
    c->state = C_DEAD;
    ws_proto_free(c->proto);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->reap_ev)
        event_free(c->reap_ev);
    if (c->timer)
        event_free(c->timer);
    c->ctx = NULL;
    if (ctx && srv->host.conn_closed)
        srv->host.conn_closed(srv->host.ud, ctx);
    free(c);
}

static void conn_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_destroy(arg);
}

static void conn_reap(pl_transport_conn *c)
{
    if (c->state == C_DEAD)
        return;
    c->state = C_DEAD;
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_del(c->timer);
    event_active(c->reap_ev, EV_TIMEOUT, 1);
}

static void arm(pl_transport_conn *c, unsigned secs)
{
    struct timeval tv = { (time_t)secs, 0 };

    event_add(c->timer, &tv);
}

/* Everything is sent: half-close and read (and drop) until the peer
 * closes, so our last bytes are not destroyed by a reset. */
static void conn_linger(pl_transport_conn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);

    c->state = C_LINGER;
    if (c->srv->ssl_ctx) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        if (ssl && SSL_is_init_finished(ssl))
            (void)SSL_shutdown(ssl);
        ERR_clear_error();
    }
    if (fd < 0 || shutdown(fd, SHUT_WR) != 0) {
        conn_reap(c);
        return;
    }
    bufferevent_enable(c->bev, EV_READ);
    arm(c, WS_CLOSE_SECS);
}

static size_t sock_out(const pl_transport_conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev));
}

/* After anything that may have produced output or finished the protocol. */
static void conn_after(pl_transport_conn *c)
{
    if (c->state == C_FINISHED && sock_out(c) == 0)
        conn_linger(c);
}

/* Back-pressure: stop reading requests while too much output waits. */
static void conn_pressure(pl_transport_conn *c)
{
    size_t q;

    if (c->state != C_WS)
        return;
    q = ws_proto_out_queued(c->proto);
    if (!c->paused && q > c->srv->out_pause) {
        c->paused = 1;
        ws_proto_pause(c->proto, 1);
        bufferevent_disable(c->bev, EV_READ);
    } else if (c->paused && q <= c->srv->out_pause / 2) {
        c->paused = 0;
        ws_proto_pause(c->proto, 0);
        bufferevent_enable(c->bev, EV_READ);
        /* Frames may already be buffered; no new bytes may come to wake us. */
        c->in_proto = 1;
        ws_proto_feed(c->proto, bufferevent_get_input(c->bev));
        c->in_proto = 0;
    }
}

/* Queue one protocol object as a message. */
static int conn_queue(pl_transport_conn *c, const pl_response *resp)
{
    pl_transport_server *srv = c->srv;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (ws_proto_out_queued(c->proto) > srv->out_limit) {
        pl_net_log(&srv->host, PL_LOG_WARN, "closing connection %s: it is not reading and %zu "
                   "bytes of output are queued (limit %zu)", c->peer,
                   ws_proto_out_queued(c->proto), srv->out_limit);
        conn_reap(c);
        return PL_ERR_IO;
    }
    rc = ws_encode_response(srv->opts.max_frame, resp, &buf, &len);
    if (rc != PL_OK)
        return rc;
    if (ws_proto_send_text(c->proto, buf, len) != 0)
        rc = PL_ERR_IO;
    free(buf);
    if (rc == PL_OK && !c->in_proto)
        ws_proto_flush(c->proto);
    return rc;
}

static void send_error_object(pl_transport_conn *c, int status, const char *text)
{
    pl_response r;

    memset(&r, 0, sizeof r);
    r.method = PL_M_NONE;
    r.status = (uint32_t)status;
    r.error = pl_str_c(text);
    (void)conn_queue(c, &r);
}

/* Start our side of the close handshake; the timer ends it if the peer
 * does not answer (WS_CLOSE_SECS once our frame is out, WS_DRAIN_SECS if it
 * cannot even leave). */
static void conn_ws_close(pl_transport_conn *c, int code, const char *reason)
{
    if (c->close_at)
        return;
    c->close_at = mono_ms();
    ws_proto_close(c->proto, code, reason);
    if (!c->in_proto)
        ws_proto_flush(c->proto);
    arm(c, WS_CLOSE_SECS);
}

/* ------------------------------------------------------------------ */
/* ws_proto callbacks                                                   */

static void reply_text(pl_transport_conn *c, int status, const char *extra, const char *text,
                       int close)
{
    ws_http_reply(c->proto, status, extra, "text/plain; charset=utf-8", text, strlen(text),
                  close);
}

/* The security headers every HTTP answer carries. */
static void common_headers(pl_transport_conn *c, struct evbuffer *h)
{
    csp_header(c->srv, h);
    evbuffer_add_printf(h, "X-Content-Type-Options: nosniff\r\n"
                           "Referrer-Policy: no-referrer\r\n"
                           "X-Frame-Options: DENY\r\n"
                           "Cross-Origin-Opener-Policy: same-origin\r\n"
                           "Cross-Origin-Resource-Policy: same-origin\r\n"
                           "Cache-Control: no-cache\r\n");
}

static void answer(pl_transport_conn *c, int status, const char *type, const void *body,
                   size_t len, int close)
{
    struct evbuffer *h = evbuffer_new();
    char *hs = NULL;
    size_t hl;

    if (h) {
        common_headers(c, h);
        hl = evbuffer_get_length(h);
        hs = malloc(hl + 1);
        if (hs) {
            evbuffer_remove(h, hs, hl);
            hs[hl] = '\0';
        }
        evbuffer_free(h);
    }
    ws_http_reply(c->proto, status, hs, type, body, len, close);
    free(hs);
}

static void on_http_request(void *ud, const ws_http_req *req)
{
    pl_transport_conn *c = ud;
    pl_transport_server *srv = c->srv;
    int close = !req->keep_alive;
    char why[300];

    if (strcmp(req->path, WS_PATH) == 0) {
        int st = ws_http_check_upgrade(req, why, sizeof why);

        if (st) {
            char line[340];
            snprintf(line, sizeof line, "%s\n", why);
            reply_text(c, st, st == 426 ? "Sec-WebSocket-Version: 13\r\n" : NULL, line, 1);
            return;
        }
        if (req->has_origin && !origin_allowed(srv, req->origin)) {
            pl_net_log(&srv->host, PL_LOG_INFO, "connection %s: WebSocket from origin "
                       "\"%.100s\" refused (not in the ws transport's \"origins\" nor the "
                       "cluster's own)", c->peer, req->origin);
            snprintf(why, sizeof why, "origin %.100s is not allowed (ws transport option "
                     "\"origins\")\n", req->origin);
            reply_text(c, 403, NULL, why, 1);
            return;
        }
        if (ws_proto_accept(c->proto, NULL) != 0) {
            reply_text(c, 500, NULL, "out of memory\n", 1);
            return;
        }
        c->state = C_WS;
        c->last_rx_ms = mono_ms();
        bufferevent_setwatermark(c->bev, EV_READ, 0, WS_READ_HIGH);
        event_del(c->timer);
        if (srv->opts.ping_interval_s)
            arm(c, srv->opts.ping_interval_s);
        if (c->refused) {
            /* Upgraded only to say why (see the top comment). */
            send_error_object(c, (int)c->refusal_status, c->refusal);
            conn_ws_close(c, 1008, c->refusal);
        } else if (c->core_closing) {
            conn_ws_close(c, 1001, "server closed the connection");
        }
        return;
    }
    if (c->refused) {
        snprintf(why, sizeof why, "%s\n", c->refusal);
        reply_text(c, 429, NULL, why, 1);
        return;
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        reply_text(c, 405, "Allow: GET, HEAD\r\n", "only GET and HEAD are served\n", 1);
        return;
    }
    if (c->core_closing)
        close = 1;
    if (strcmp(req->path, "/cluster.json") == 0) {
        char *doc = cluster_json(srv);
        if (!doc) {
            reply_text(c, 500, NULL, "out of memory\n", 1);
            return;
        }
        answer(c, 200, "application/json", doc, strlen(doc), close);
        free(doc);
    } else {
        const ws_web_file *f = ws_web_find(srv->web, req->path);
        if (f)
            answer(c, 200, f->type, f->data, f->len, close);
        else if (strcmp(req->path, "/") == 0)
            answer(c, 404, "text/plain; charset=utf-8",
                   "the web client is not installed on this server (ws option web_root)\n",
                   68, close);
        else
            answer(c, 404, "text/plain; charset=utf-8", "not found\n", 10, close);
    }
    if (c->state == C_HTTP)
        arm(c, WS_IDLE_SECS);
}

static void on_opened(void *ud)
{
    (void)ud;
}

static void on_message(void *ud, const uint8_t *msg, size_t len)
{
    pl_transport_conn *c = ud;
    pl_transport_server *srv = c->srv;
    void *scratch = NULL;
    pl_request req;
    char text[200];
    int rc;

    if (c->refused || c->core_closing || c->state != C_WS)
        return;
    rc = pl_json_decode_request_msg(srv->opts.max_frame, msg, len, &req, &scratch);
    if (rc == PL_OK) {
        srv->host.request(srv->host.ud, c->ctx, &req);
        pl_scratch_free(scratch);
        return;
    }
    pl_scratch_free(scratch);
    /* The same answer as every transport's to a frame that does not
     * decode: one error object, then the connection closes (1007: the
     * message's data is not what its type says). */
    snprintf(text, sizeof text, "malformed request: a message must be one JSON request object "
             "(docs/protocol.md); closing the connection");
    pl_net_log(&srv->host, PL_LOG_INFO, "connection %s: %s (%zu bytes)", c->peer, text, len);
    send_error_object(c, rc == PL_ERR_NOMEM ? PL_ERR_NOMEM : PL_ERR_MALFORMED, text);
    conn_ws_close(c, 1007, "malformed request: not one JSON request object");
}

static void on_refuse(void *ud, int status, const char *text)
{
    pl_transport_conn *c = ud;
    char line[200];

    snprintf(line, sizeof line, "%s; closing the connection", text);
    pl_net_log(&c->srv->host, PL_LOG_INFO, "connection %s: %s", c->peer, line);
    send_error_object(c, status, line);
    /* ws_proto queues the close itself; the timer still bounds it. */
    c->close_at = mono_ms();
    arm(c, WS_CLOSE_SECS);
}

static void on_finished(void *ud, int code, const char *why)
{
    pl_transport_conn *c = ud;
    struct timeval tv = { WS_DRAIN_SECS, 0 };

    if (c->state == C_DEAD || c->state == C_FINISHED || c->state == C_LINGER)
        return;
    pl_net_log(&c->srv->host, PL_LOG_DEBUG, "connection %s: %s (%d)", c->peer, why, code);
    c->state = C_FINISHED;
    bufferevent_disable(c->bev, EV_READ);
    event_add(c->timer, &tv);
}

static const ws_proto_cb srv_proto_cb = {
    .http_request = on_http_request,
    .opened = on_opened,
    .message = on_message,
    .refuse = on_refuse,
    .finished = on_finished,
};

/* ------------------------------------------------------------------ */
/* bufferevent callbacks                                                */

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->state == C_LINGER || c->state == C_FINISHED) {
        size_t n = evbuffer_get_length(in);
        evbuffer_drain(in, n);
        c->lingered += n;
        if (c->lingered > WS_LINGER_MAX)
            conn_reap(c);
        return;
    }
    if (c->state == C_DEAD)
        return;
    c->last_rx_ms = mono_ms();
    c->in_proto = 1;
    ws_proto_feed(c->proto, in);
    c->in_proto = 0;
    if (c->state == C_WS)
        ws_proto_flush(c->proto);
    conn_pressure(c);
    conn_after(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;

    (void)bev;
    if (c->state == C_WS) {
        ws_proto_flush(c->proto);
        conn_pressure(c);
    }
    conn_after(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    pl_transport_conn *c = arg;

    if (what & BEV_EVENT_CONNECTED)
        return; /* TLS handshake done; the head deadline still runs */
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->srv->ssl_ctx && c->state == C_HTTP && c->last_rx_ms == 0) {
            char why[200];
            int quiet = pl_tls_handshake_error(bev, what, WS_HEAD_SECS, why, sizeof why);
            pl_net_log(&c->srv->host, quiet ? PL_LOG_DEBUG : PL_LOG_INFO,
                       "connection %s: TLS handshake failed: %s; closing", c->peer, why);
        }
        conn_reap(c);
    }
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_conn *c = arg;
    pl_transport_server *srv = c->srv;
    uint64_t now = mono_ms(), quiet;
    char reason[120];

    (void)fd;
    (void)what;
    switch (c->state) {
    case C_HTTP:
        /* No request head in time, an idle keep-alive connection, or a
         * refused one that never asked: nothing to say, close. */
        conn_reap(c);
        return;
    case C_WS:
        if (c->close_at) {
            /* Closing: the peer never answered our close frame, or the
             * frame could not even leave. */
            if (ws_proto_close_sent(c->proto) || now - c->close_at >= 1000ull * WS_DRAIN_SECS) {
                conn_reap(c);
                return;
            }
            arm(c, 1);
            return;
        }
        if (srv->opts.ping_interval_s == 0)
            return;
        quiet = now - c->last_rx_ms;
        if (quiet >= 2000ull * srv->opts.ping_interval_s) {
            snprintf(reason, sizeof reason, "no answer to pings for %" PRIu64 " s "
                     "(ping_interval_s %u)", quiet / 1000, srv->opts.ping_interval_s);
            pl_net_log(&srv->host, PL_LOG_INFO, "connection %s: %s; closing", c->peer, reason);
            conn_ws_close(c, 1001, reason);
            conn_after(c);
            return;
        }
        if (quiet + 500 >= 1000ull * srv->opts.ping_interval_s) {
            ws_proto_ping(c->proto);
            ws_proto_flush(c->proto);
        }
        arm(c, srv->opts.ping_interval_s);
        return;
    case C_FINISHED:
        pl_net_log(&srv->host, PL_LOG_INFO, "connection %s: peer did not read its last %zu "
                   "bytes in %d s; closing", c->peer, sock_out(c), WS_DRAIN_SECS);
        conn_reap(c);
        return;
    default:
        conn_reap(c);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* accept                                                               */

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    pl_transport_server *srv = arg;
    pl_transport_conn *c;

    (void)lis;
    (void)salen;
    pl_net_nodelay(fd);
    c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->srv = srv;
    pl_net_addr_text(sa, c->peer, sizeof c->peer);
    c->bev = pl_tls_accept_bev(srv->host.base, fd, srv->ssl_ctx);
    c->reap_ev = event_new(srv->host.base, -1, 0, conn_reap_cb, c);
    c->timer = evtimer_new(srv->host.base, conn_timer_cb, c);
    c->proto = c->bev ? ws_proto_new(WS_ROLE_SERVER, srv->opts.max_frame,
                                     bufferevent_get_output(c->bev), &srv_proto_cb, c)
                      : NULL;
    if (!c->bev || !c->reap_ev || !c->timer || !c->proto) {
        pl_net_log(&srv->host, PL_LOG_ERROR, "connection %s: out of memory; closing", c->peer);
        if (c->bev)
            bufferevent_free(c->bev); /* else pl_tls_accept_bev saw to fd */
        if (c->reap_ev)
            event_free(c->reap_ev);
        if (c->timer)
            event_free(c->timer);
        ws_proto_free(c->proto);
        free(c);
        return;
    }
    ws_proto_set_out_high(c->proto, WS_SOCK_HIGH);
    c->state = C_HTTP;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, WS_READ_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, WS_SOCK_HIGH / 4, 0);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    c->ctx = srv->host.conn_open(srv->host.ud, c, c->peer);
    if (!c->ctx) {
        /* Refused without a word: close without conn_closed (the ABI). */
        conn_unlink(c);
        ws_proto_free(c->proto);
        bufferevent_free(c->bev);
        event_free(c->reap_ev);
        event_free(c->timer);
        free(c);
        return;
    }
    if (c->state == C_HTTP) {
        arm(c, c->refused ? WS_REFUSE_SECS : WS_HEAD_SECS);
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    }
}

/* ------------------------------------------------------------------ */
/* the ABI                                                              */

int ws_srv_start(const pl_transport_host *host, const pl_transport_options *opt,
                 pl_transport_server **out, char *err, size_t errlen)
{
    pl_transport_server *srv;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    pl_tls_opts tls;
    char why[600];
    const char *root;
    int rc;

    *out = NULL;
    if (!host || !host->base || !host->conn_open || !host->request || !host->conn_closed || !opt) {
        pl_net_err(err, errlen, "transport ws: host callbacks and options are required");
        return PL_ERR_INVALID;
    }
    srv = calloc(1, sizeof *srv);
    if (!srv) {
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    srv->host = *host;
    if (host->abi_version < 2)
        srv->host.cluster_json = NULL; /* not in an older core's struct */
    if ((rc = ws_opts_parse(opt, &srv->opts, err, errlen)) != PL_OK)
        goto fail;
    if ((rc = pl_net_resolve(opt->host, opt->port, 1, &ss, &sslen, err, errlen)) != PL_OK)
        goto fail;
    if ((rc = pl_tls_opts_parse(opt, &tls, err, errlen)) != PL_OK)
        goto fail;
    if (tls.root) {
        rc = pl_tls_server_ctx(&tls, &srv->ssl_ctx, err, errlen);
        cJSON_Delete(tls.root);
        if (rc != PL_OK)
            goto fail;
    }
    srv->out_pause = WS_OUT_PAUSE_MIN;
    if (srv->out_pause < 2 * (size_t)srv->opts.max_frame)
        srv->out_pause = 2 * (size_t)srv->opts.max_frame;
    srv->out_limit = 2 * srv->out_pause;
    root = srv->opts.web_root ? srv->opts.web_root : ws_web_default_root();
    srv->web = ws_web_load(root, why, sizeof why);
    if (!srv->web) {
        pl_net_err(err, errlen, "out of memory");
        rc = PL_ERR_NOMEM;
        goto fail;
    }
    if (why[0] && host->log)
        host->log(host->ud, PL_LOG_WARN, "%s", why);
    pl_net_addr_text((struct sockaddr *)&ss, srv->addr, sizeof srv->addr);
    rc = pl_net_listen(&srv->host, &ss, sslen, srv->addr, accept_cb, srv, &srv->lis, err, errlen);
    if (rc != PL_OK)
        goto fail;
    if (host->log)
        host->log(host->ud, PL_LOG_INFO, "listening on %s (ws%s, max_frame %u bytes): web client "
                  "%s://%s/ (%zu files from %s), WebSocket at %s%s%s",
                  srv->addr, srv->ssl_ctx ? "s" : "", srv->opts.max_frame,
                  srv->ssl_ctx ? "https" : "http", srv->addr, ws_web_count(srv->web), root,
                  srv->ssl_ctx ? "wss://" : "ws://", srv->addr, WS_PATH);
    *out = srv;
    return PL_OK;
fail:
    SSL_CTX_free(srv->ssl_ctx);
    ws_web_free(srv->web);
    ws_opts_clear(&srv->opts);
    free(srv);
    return rc;
}

void ws_srv_stop_accepting(pl_transport_server *srv)
{
    if (!srv)
        return;
    pl_net_listener_free(srv->lis);
    srv->lis = NULL;
}

void ws_srv_free(pl_transport_server *srv)
{
    if (!srv)
        return;
    ws_srv_stop_accepting(srv);
    while (srv->conns)
        conn_destroy(srv->conns);
    SSL_CTX_free(srv->ssl_ctx);
    ws_web_free(srv->web);
    ws_opts_clear(&srv->opts);
    free(srv);
}

int ws_srv_conn_send(pl_transport_conn *c, const pl_response *resp)
{
    int rc;

    if (!c || !resp)
        return PL_ERR_INVALID;
    if (resp->method == PL_M_NONE && resp->status != PL_OK) {
        /* A connection error from the core (a refusal, a flood): kept as
         * the reason of the close that follows. */
        snprintf(c->refusal, sizeof c->refusal, "%.*s", (int)resp->error.len,
                 resp->error.ptr ? resp->error.ptr : "");
        c->refusal_status = resp->status;
        if (c->state == C_HTTP) {
            c->refused = 1;
            return PL_OK;
        }
    }
    if (c->state != C_WS)
        return PL_ERR_IO;
    rc = conn_queue(c, resp);
    if (rc == PL_OK && !c->in_proto) {
        conn_pressure(c);
        conn_after(c);
    }
    return rc;
}

void ws_srv_conn_close(pl_transport_conn *c)
{
    if (!c || c->core_closing)
        return;
    c->core_closing = 1;
    if (c->state == C_HTTP) {
        /* A refused connection waits (bounded) for its first request, to
         * answer it with the reason; any other closes now (nothing of the
         * core's is in flight on a connection that never upgraded). */
        if (!c->refused)
            conn_reap(c);
        return;
    }
    if (c->state != C_WS)
        return;
    if (c->refusal[0])
        conn_ws_close(c, 1008, c->refusal);
    else
        conn_ws_close(c, 1001, "server closed the connection");
    if (!c->in_proto)
        conn_after(c);
}
