/*
 * plugins/transport-ws/ws_client.c — the client half of the ws transport,
 * for libparley (so the CLI and the terminal UI work with
 * "transport": "ws"): connect (TLS when the options carry "tls"), upgrade
 * at /ws, then one JSON request per text message out and one response or
 * push per message in.
 *
 * Requests sent before the handshake completes wait in `pending` (bounded
 * by CLI_PENDING_MAX) and leave in order once it does. Every decoded
 * message is one cb->frame; the end of the connection one cb->closed, with
 * the server's refusal (an HTTP status and its text) or close reason. As
 * in framed.c, client_free from inside a callback only marks the client,
 * which is freed when the callback returns.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "codec_scratch.h"
#include "json_codec.h"
#include "net.h"
#include "tls.h"
#include "ws_int.h"
#include "ws_proto.h"

#define CLI_PENDING_MAX (64u * 1024u * 1024u)

struct pl_transport_client {
    struct event_base *base;
    ws_opts opts;
    pl_transport_client_cb cb;
    void *ud;
    struct bufferevent *bev;
    ws_proto *proto;
    struct evbuffer *pending;   /* u32 length + message, until open */
    char host_header[300];
    int connected, open, done, in_cb, free_pending, tls;
};

static void client_destroy(pl_transport_client *cli)
{
    ws_proto_free(cli->proto);
    if (cli->bev)
        bufferevent_free(cli->bev);
    if (cli->pending)
        evbuffer_free(cli->pending);
    ws_opts_clear(&cli->opts);
    free(cli);
}

/* Report the end once and drop the socket. Returns 1 if cli was freed. */
static int client_finish(pl_transport_client *cli, int err, const char *why)
{
    if (cli->done)
        return 0;
    cli->done = 1;
    if (cli->bev) {
        bufferevent_free(cli->bev);
        cli->bev = NULL;
    }
    cli->in_cb++;
    cli->cb.closed(cli->ud, err, why);
    cli->in_cb--;
    if (cli->free_pending && cli->in_cb == 0) {
        client_destroy(cli);
        return 1;
    }
    return 0;
}

/* ---- ws_proto callbacks ---- */

static void cli_opened(void *ud)
{
    pl_transport_client *cli = ud;

    cli->open = 1;
    while (evbuffer_get_length(cli->pending) >= 4) {
        uint32_t n;
        uint8_t *m;

        evbuffer_remove(cli->pending, &n, 4);
        m = malloc(n ? n : 1);
        if (!m)
            return;
        evbuffer_remove(cli->pending, m, n);
        (void)ws_proto_send_text(cli->proto, m, n);
        free(m);
    }
}

static void cli_message(void *ud, const uint8_t *msg, size_t len)
{
    pl_transport_client *cli = ud;
    void *scratch = NULL;
    pl_response resp;
    int rc;

    if (cli->done || cli->free_pending)
        return;
    rc = pl_json_decode_response_msg(cli->opts.max_frame, msg, len, &resp, &scratch);
    if (rc == PL_OK) {
        cli->in_cb++;
        cli->cb.frame(cli->ud, &resp);
        cli->in_cb--;
    }
    pl_scratch_free(scratch);
    if (rc != PL_OK)
        ws_proto_close(cli->proto, 1007, "a message is not one JSON response object");
}

static void cli_finished(void *ud, int code, const char *why)
{
    pl_transport_client *cli = ud;
    char text[400];

    if (!cli->open)
        snprintf(text, sizeof text, "WebSocket handshake failed: %s",
                 ws_proto_refusal(cli->proto)[0] ? ws_proto_refusal(cli->proto) : why);
    else
        snprintf(text, sizeof text, "connection closed by server: %s", why);
    (void)code;
    /* The caller frees us through the read callback's checks. */
    client_finish(cli, PL_ERR_IO, text);
}

static const ws_proto_cb cli_proto_cb = {
    .opened = cli_opened,
    .message = cli_message,
    .finished = cli_finished,
};

/* ---- bufferevent callbacks ---- */

static void cli_read_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_client *cli = arg;

    if (cli->done)
        return;
    cli->in_cb++;
    ws_proto_feed(cli->proto, bufferevent_get_input(bev));
    if (!cli->done && !cli->free_pending)
        ws_proto_flush(cli->proto);
    cli->in_cb--;
    if (cli->free_pending && cli->in_cb == 0)
        client_destroy(cli);
}

static void cli_write_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_client *cli = arg;

    (void)bev;
    if (!cli->done && cli->open)
        ws_proto_flush(cli->proto);
}

static void cli_event_cb(struct bufferevent *bev, short what, void *arg)
{
    pl_transport_client *cli = arg;
    char why[400];

    if (what & BEV_EVENT_CONNECTED) {
        cli->connected = 1;
        pl_net_nodelay(bufferevent_getfd(bev));
        if (ws_proto_connect(cli->proto, cli->host_header, WS_PATH) != 0)
            client_finish(cli, PL_ERR_NOMEM, "cannot start the WebSocket handshake");
        return;
    }
    if (!cli->connected && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        int e = EVUTIL_SOCKET_ERROR();

        if (!(cli->tls && pl_tls_connect_error(bev, why, sizeof why))) {
            if (e == ECONNREFUSED)
                snprintf(why, sizeof why, "connection refused");
            else if (e != 0)
                snprintf(why, sizeof why, "connect failed: %s", evutil_socket_error_to_string(e));
            else
                snprintf(why, sizeof why, "connection closed by server during the TLS handshake");
        }
        client_finish(cli, PL_ERR_IO, why);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        const char *ref = cli->proto ? ws_proto_refusal(cli->proto) : "";

        if (!cli->open)
            snprintf(why, sizeof why, "connection closed by server during the WebSocket "
                     "handshake%s%s", ref[0] ? ": " : "", ref);
        else if (what & BEV_EVENT_EOF)
            snprintf(why, sizeof why, "connection closed by server");
        else
            snprintf(why, sizeof why, "connection lost: %s",
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        client_finish(cli, PL_ERR_IO, why);
    } else if (what & BEV_EVENT_TIMEOUT) {
        client_finish(cli, PL_ERR_TIMEOUT, "connection timed out");
    }
}

/* ---- the ABI ---- */

int ws_cli_connect(struct event_base *base, const pl_transport_options *opt,
                   const pl_transport_client_cb *cb, void *ud,
                   pl_transport_client **out, char *err, size_t errlen)
{
    pl_transport_client *cli;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    const char *host;
    int rc;

    *out = NULL;
    if (!base || !opt || !cb || !cb->frame || !cb->closed || opt->port == 0) {
        pl_net_err(err, errlen, "transport ws: event base, options, port and callbacks are "
                   "required");
        return PL_ERR_INVALID;
    }
    cli = calloc(1, sizeof *cli);
    if (!cli) {
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    cli->base = base;
    cli->cb = *cb;
    cli->ud = ud;
    if ((rc = ws_opts_parse(opt, &cli->opts, err, errlen)) != PL_OK)
        goto fail;
    if ((rc = pl_net_resolve(opt->host, opt->port, 0, &ss, &sslen, err, errlen)) != PL_OK)
        goto fail;
    if ((rc = pl_tls_client_bev(base, opt, &cli->bev, &cli->tls, err, errlen)) != PL_OK)
        goto fail;
    host = opt->host && *opt->host ? opt->host : "127.0.0.1";
    snprintf(cli->host_header, sizeof cli->host_header, strchr(host, ':') ? "[%s]:%u" : "%s:%u",
             host, (unsigned)opt->port);
    cli->pending = evbuffer_new();
    cli->proto = ws_proto_new(WS_ROLE_CLIENT, cli->opts.max_frame,
                              bufferevent_get_output(cli->bev), &cli_proto_cb, cli);
    if (!cli->pending || !cli->proto) {
        pl_net_err(err, errlen, "out of memory");
        rc = PL_ERR_NOMEM;
        goto fail;
    }
    bufferevent_setcb(cli->bev, cli_read_cb, cli_write_cb, cli_event_cb, cli);
    /* A hostile server must not make us buffer without bound: wslay takes
     * every byte into a message of at most max_frame. */
    bufferevent_setwatermark(cli->bev, EV_READ, 0, 64u * 1024u);
    bufferevent_enable(cli->bev, EV_READ | EV_WRITE);
    if ((rc = pl_net_connect(cli->bev, &ss, sslen, err, errlen)) != PL_OK)
        goto fail;
    *out = cli;
    return PL_OK;
fail:
    client_destroy(cli);
    return rc;
}

int ws_cli_send(pl_transport_client *cli, const pl_request *req)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (!cli || !req)
        return PL_ERR_INVALID;
    if (cli->done || !cli->bev || cli->free_pending)
        return PL_ERR_IO;
    rc = ws_encode_request(cli->opts.max_frame, req, &buf, &len);
    if (rc != PL_OK)
        return rc;
    if (cli->open) {
        if (ws_proto_send_text(cli->proto, buf, len) != 0)
            rc = PL_ERR_IO;
        else if (cli->in_cb == 0)
            ws_proto_flush(cli->proto);
    } else if (evbuffer_get_length(cli->pending) + len > CLI_PENDING_MAX) {
        rc = PL_ERR_BUSY;
    } else {
        uint32_t n = (uint32_t)len;
        if (evbuffer_add(cli->pending, &n, 4) != 0 || evbuffer_add(cli->pending, buf, len) != 0)
            rc = PL_ERR_NOMEM;
    }
    free(buf);
    return rc;
}

void ws_cli_free(pl_transport_client *cli)
{
    if (!cli)
        return;
    if (cli->in_cb > 0) {
        cli->free_pending = 1;
        if (cli->bev)
            bufferevent_disable(cli->bev, EV_READ | EV_WRITE);
        return;
    }
    client_destroy(cli);
}
