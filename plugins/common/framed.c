/*
 * plugins/common/framed.c — libevent bufferevent I/O for transports whose
 * wire format is a stream of self-delimiting frames over TCP.
 *
 * Server half
 * -----------
 * One evconnlistener; one bufferevent per accepted connection. The read
 * callback decodes every whole frame buffered and hands each to
 * host->request. Memory per connection is bounded on both sides:
 *
 *  - input: a read high-watermark of max_frame + FRAMED_SLACK bytes. A codec
 *    reports PL_ERR_FRAME_TOO_LARGE as soon as a length prefix says so; and
 *    if it still asks for more bytes once the watermark is full, the frame
 *    cannot complete within max_frame, so framed.c says it instead. Either
 *    way a 100 MB length prefix costs at most max_frame + slack of buffer.
 *  - output: when a slow reader lets its output pass out_pause bytes we stop
 *    reading its requests (they would only produce more output) until the
 *    output has drained; a frame queued while the output is past out_limit
 *    (pushes keep coming even when requests stop) closes the connection with
 *    a log line instead of buffering without bound.
 *
 * Bad input (malformed or oversized frame) is answered with one error frame
 * (method PL_M_NONE) and the connection closes once that frame has left.
 * Closing is a small state machine:
 *
 *   OPEN --(bad frame / conn_close)--> DRAINING --(output empty)-->
 *   LINGER --(peer EOF / error / LINGER_MS / LINGER_MAX bytes)--> reaped
 *   OPEN --(peer EOF, answers still owed)--> HALF --(last answer queued)-->
 *   DRAINING ...
 *
 * HALF is for a peer that half-closes after its requests, as
 * `printf '{"m":"ping"}\n' | nc -N host port` does: the core may answer
 * after replication, so the answers it owes (one per request handed to
 * host->request; pushes do not count) are still delivered, for at most
 * FRAMED_HALF_SECS.
 *
 * LINGER exists because closing a socket that still has unread input makes
 * the kernel send a RST, and a RST can destroy the error frame in flight
 * before the peer reads it: we half-close (shutdown SHUT_WR) and discard the
 * peer's remaining input until it closes too, for a bounded time.
 *
 * Every connection is torn down by conn_reap(), which activates a per-
 * connection event; the event's callback frees the bufferevent and calls
 * host->conn_closed. Deferring it to the top of the loop means no host
 * callback ever runs inside another one, and conn_close / conn_send may be
 * called from anywhere (including host->request) without a connection
 * disappearing under the caller's feet. server_free tears down synchronously.
 *
 * Output
 * ------
 * A socket bufferevent arms EV_WRITE when bytes are queued and disarms it
 * when they have gone: two epoll_ctl calls and a loop turn for every
 * connection that is sent anything, on top of the write itself. On a plain
 * TCP connection (both halves) EV_WRITE therefore stays disarmed: a queued
 * frame activates the connection's flush_ev, which runs at the end of the
 * current loop turn (after the callbacks already active, so every frame
 * queued in the turn leaves in one writev) and writes straight to the
 * socket. Only when the socket takes less than everything (a slow reader)
 * or the write fails is EV_WRITE armed, and libevent's own write path then
 * drains the rest (or reports the error through the event callback) and
 * disarms it again. A closing connection keeps EV_WRITE armed, so its drain
 * timeout runs. TLS connections are left to OpenSSL's bufferevent.
 * Both halves also read their plain TCP sockets themselves (see
 * sock_read_into; the client once connected): libevent's socket reads
 * cost an ioctl(FIONREAD) each (5 % of a loaded server's loop thread) and
 * stop at 4 KiB, and parley-bench holds 10,000 of these clients. A
 * server connection's reading is switched on and off through
 * conn_read_on/conn_read_off, which use its read_ev or, with TLS, the
 * bufferevent.
 *
 * Client half
 * -----------
 * One bufferevent; requests written before the connect completes are queued
 * by libevent and sent on connect. Every decoded frame is one cb->frame call,
 * the end of the connection one cb->closed call. client_free from inside a
 * callback only marks the client; it is freed when that callback returns.
 *
 * Ownership of codec_ctx: on success the server / client owns it and calls
 * free_ctx from its _free; when _start / _connect fails the caller keeps it.
 *
 * TLS
 * ---
 * When the transport's options carry a "tls" member (the core adds it from
 * the config's "tls" object; {"cert", "key", "ca", "verify_clients"}), both
 * halves run the same frames inside TLS through libevent's OpenSSL
 * bufferevents: the wire format does not change, only the stream under it.
 * The server half wraps every accepted socket; a handshake that fails or
 * does not finish within FRAMED_HANDSHAKE_SECS closes that connection with
 * one log line and touches nothing else. The client half verifies the
 * server's certificate against "ca" (the system's trust store without it)
 * and checks that it names the address it dialled (IP or DNS name); with
 * "verify_clients" it also presents "cert"/"key". Every bound above applies
 * unchanged, to the decrypted bytes: the read watermark caps what libevent
 * pulls out of OpenSSL (plus at most the rest of one 16 KiB record OpenSSL
 * has already decrypted), and the output limits count plaintext queued.
 * An EOF without a TLS close_notify is treated as a plain EOF: every frame
 * is self-delimiting, so a truncated stream is already caught as a
 * connection "closed in the middle of a frame".
 */
#include "framed.h"

#include "net.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
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

/* Bytes of input allowed past max_frame: room for a length prefix or frame
 * header on top of a max_frame payload, and for a JSON line's newline. */
#define FRAMED_SLACK 4096u
/* Output back-pressure bounds (see the top comment); both grow with
 * max_frame so that one legal frame never trips them. */
#define FRAMED_OUT_PAUSE_MIN (4u * 1024u * 1024u)
/* How long a closing connection may take to drain its output. */
#define FRAMED_DRAIN_SECS 10
/* Lingering close: wait this long, and discard at most this much input. */
#define FRAMED_LINGER_MS 2000
#define FRAMED_LINGER_MAX (1024u * 1024u)
/* How long a half-closed peer waits for the answers it is owed. */
#define FRAMED_HALF_SECS 30
/* A TLS client must finish its handshake within this; a socket that never
 * does would otherwise hold a connection slot for nothing. */
#define FRAMED_HANDSHAKE_SECS 10
/* Most bytes the client half reads in one call (libevent's own reads stop
 * at 4 KiB). */
#define FRAMED_CLIENT_READ_MAX (64u * 1024u)

enum conn_state { CONN_OPEN, CONN_HALF, CONN_DRAINING, CONN_LINGER, CONN_DEAD };

struct pl_transport_server {
    pl_transport_host host;           /* copied: the core's struct may be temporary */
    const pl_framed_codec *codec;
    const void *codec_ctx;
    void (*free_ctx)(void *codec_ctx);
    uint32_t max_frame;
    size_t out_pause;                 /* stop reading requests above this output */
    size_t out_limit;                 /* close the connection above this output */
    pl_net_listener *lis;             /* NULL once it stopped accepting */
    pl_transport_conn *conns;         /* every live connection */
    SSL_CTX *ssl_ctx;                 /* TLS for every connection, or NULL */
};

struct pl_transport_conn {
    pl_transport_server *srv;
    struct bufferevent *bev;
    struct event *reap_ev;            /* deferred teardown, see conn_reap; also
                                         the HALF timeout */
    struct event *flush_ev;           /* direct write (see "Output"); NULL with TLS */
    struct event *read_ev;            /* direct read; NULL with TLS */
    void *ctx;                        /* the core's context from conn_open */
    pl_transport_conn *prev, *next;
    int state;                        /* enum conn_state */
    int paused;                       /* reading stopped for back-pressure */
    int in_read;                      /* inside conn_process: no re-entry */
    uint64_t owed;                    /* requests handed to the core, not yet answered */
    size_t lingered;                  /* input bytes discarded while lingering */
    int handshaking;                  /* TLS handshake not finished yet */
    char peer[64];
};

struct pl_transport_client {
    struct event_base *base;
    const pl_framed_codec *codec;
    const void *codec_ctx;
    void (*free_ctx)(void *codec_ctx);
    pl_transport_client_cb cb;
    void *ud;
    struct bufferevent *bev;          /* NULL once the connection ended */
    uint32_t max_frame;
    int connected;
    int done;                         /* cb.closed has been called */
    int in_cb;                        /* depth of user callbacks running */
    int free_pending;                 /* client_free called inside a callback */
    int tls;                          /* the stream is TLS */
    struct event *flush_ev;           /* direct write (see "Output"); NULL with TLS */
    struct event *read_ev;            /* direct read once connected; NULL with TLS */
};

/* ------------------------------------------------------------------ */
/* helpers shared by both halves                                        */

static uint32_t codec_max_frame(const pl_framed_codec *codec, const void *ctx)
{
    uint32_t m = codec->max_frame ? codec->max_frame(ctx) : 0;

    return m ? m : PL_FRAME_DEFAULT;
}

/* Write what bev has queued straight to its socket (see "Output" in the
 * top comment). Returns 1 when the output is empty afterwards; otherwise
 * (a full socket buffer, or an error libevent will report through the
 * event callback when it retries) EV_WRITE is armed and libevent's own
 * write path takes over until the output has drained. */
static int direct_flush(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);

    if (evbuffer_get_length(out) == 0)
        return 1;
    /* A socket bufferevent keeps the start of its output frozen except
     * while it writes itself; do as it does. */
    evbuffer_unfreeze(out, 1);
    (void)evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) == 0)
        return 1;
    bufferevent_enable(bev, EV_WRITE);
    return 0;
}

/* Output was queued on bev: have flush_ev write it at the end of this loop
 * turn, unless libevent is already waiting to write (EV_WRITE armed). */
static void direct_want_flush(struct bufferevent *bev, struct event *flush_ev)
{
    if (flush_ev && !(bufferevent_get_enabled(bev) & EV_WRITE))
        event_active(flush_ev, EV_WRITE, 0);
}

/* Read what the socket has into bev's input, up to cap bytes buffered
 * and at most FRAMED_CLIENT_READ_MAX at once. Returns the bytes read, 0
 * at end of stream, -1 with errno on an error (EAGAIN: nothing there),
 * or -2 when the input already holds cap bytes (nothing was read), or -3
 * when out of memory. */
static ssize_t sock_read_into(evutil_socket_t fd, struct bufferevent *bev, size_t cap)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    size_t have = evbuffer_get_length(in), want, left;
    ssize_t n;
    int nv, i, e;

    want = cap > have ? cap - have : 0;
    if (want > FRAMED_CLIENT_READ_MAX)
        want = FRAMED_CLIENT_READ_MAX;
    if (want == 0)
        return -2;
    /* A socket bufferevent keeps the end of its input frozen except while
     * it reads itself; do as it does. */
    evbuffer_unfreeze(in, 0);
    nv = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (nv <= 0) {
        evbuffer_freeze(in, 0);
        return -3;
    }
    left = want;
    for (i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len < left ? v[i].iov_len : left;
        left -= iov[i].iov_len;
    }
    n = readv(fd, iov, nv);
    e = errno;
    if (n > 0) {
        left = (size_t)n;
        for (i = 0; i < nv && left > 0; i++) {
            v[i].iov_len = iov[i].iov_len < left ? iov[i].iov_len : left;
            left -= v[i].iov_len;
        }
        evbuffer_commit_space(in, v, i);
    }
    evbuffer_freeze(in, 0);
    errno = e;
    return n;
}

/* ------------------------------------------------------------------ */
/* server half                                                          */

/* Start (or, with tv, restart with a timeout) and stop reading requests. */
static void conn_read_on(pl_transport_conn *c, const struct timeval *tv)
{
    if (c->read_ev) {
        event_add(c->read_ev, tv);
        return;
    }
    if (tv)
        bufferevent_set_timeouts(c->bev, tv, NULL);
    bufferevent_enable(c->bev, EV_READ);
}

static void conn_read_off(pl_transport_conn *c)
{
    if (c->read_ev)
        event_del(c->read_ev);
    else
        bufferevent_disable(c->bev, EV_READ);
}

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

/* Free the socket and tell the core, exactly once. Only called from the reap
 * event or from server_free, never from inside another host callback. */
static void conn_destroy(pl_transport_conn *c)
{
    pl_transport_server *srv = c->srv;
    void *ctx = c->ctx;

    conn_unlink(c);
    c->state = CONN_DEAD;
    if (c->read_ev) {
        event_free(c->read_ev); /* before the socket closes with bev */
        c->read_ev = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->reap_ev)
        event_free(c->reap_ev);
    c->reap_ev = NULL;
    if (c->flush_ev)
        event_free(c->flush_ev);
    c->flush_ev = NULL;
    c->ctx = NULL;
    if (ctx && srv->host.conn_closed)
        srv->host.conn_closed(srv->host.ud, ctx);
    free(c);
}

static void conn_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_conn *c = arg;

    (void)fd;
    (void)what;
    if (c->state == CONN_HALF)
        pl_net_log(&c->srv->host, PL_LOG_INFO,
                   "connection %s: half-closed peer still owed %llu answer(s) after %d s; closing",
                   c->peer, (unsigned long long)c->owed, FRAMED_HALF_SECS);
    conn_destroy(c);
}

/* Schedule teardown at the top of the loop. Idempotent. */
static void conn_reap(pl_transport_conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    c->state = CONN_DEAD;
    if (c->read_ev)
        event_del(c->read_ev);
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->reap_ev, EV_TIMEOUT, 1);
}

/* Output drained while closing: half-close and wait for the peer's EOF so
 * that our last frame is not destroyed by a RST (see the top comment). */
static void conn_start_linger(pl_transport_conn *c)
{
    struct timeval tv = { FRAMED_LINGER_MS / 1000, (FRAMED_LINGER_MS % 1000) * 1000 };
    evutil_socket_t fd = bufferevent_getfd(c->bev);

    c->state = CONN_LINGER;
    /* A TLS peer learns of a deliberate close from close_notify; the
     * output is empty, so it goes straight to the socket. It may fail (a
     * handshake never finished): the shutdown below still ends our half. */
    if (c->srv->ssl_ctx) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

        if (ssl && !c->handshaking)
            (void)SSL_shutdown(ssl);
        ERR_clear_error();
    }
    if (fd < 0 || shutdown(fd, SHUT_WR) != 0) {
        conn_reap(c);
        return;
    }
    evbuffer_drain(bufferevent_get_input(c->bev),
                   evbuffer_get_length(bufferevent_get_input(c->bev)));
    conn_read_on(c, &tv);
}

/* Stop reading requests and close once the queued output has been sent. */
static void conn_begin_close(pl_transport_conn *c)
{
    struct timeval tv = { FRAMED_DRAIN_SECS, 0 };

    if (c->state != CONN_OPEN && c->state != CONN_HALF)
        return;
    c->state = CONN_DRAINING;
    conn_read_off(c);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_start_linger(c);
        return;
    }
    /* A peer that never reads must not hold the connection open forever.
     * The timeout only runs while EV_WRITE is armed, so a direct-write
     * connection hands the rest of its output to libevent here. */
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    bufferevent_enable(c->bev, EV_WRITE);
}

/* Queue one encoded frame, enforcing the output bound. */
static int conn_queue(pl_transport_conn *c, const pl_response *resp)
{
    pl_transport_server *srv = c->srv;
    struct evbuffer *out;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (c->state != CONN_OPEN && c->state != CONN_HALF && c->state != CONN_DRAINING)
        return PL_ERR_IO;
    out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) > srv->out_limit) {
        pl_net_log(&srv->host, PL_LOG_WARN,
                   "closing connection %s: it is not reading and %zu bytes of output are "
                   "queued (limit %zu)", c->peer, evbuffer_get_length(out), srv->out_limit);
        conn_reap(c);
        return PL_ERR_IO;
    }
    rc = srv->codec->encode_response(srv->codec_ctx, resp, &buf, &len);
    if (rc != PL_OK)
        return rc;
    if (bufferevent_write(c->bev, buf, len) != 0)
        rc = PL_ERR_NOMEM;
    else
        direct_want_flush(c->bev, c->flush_ev);
    free(buf);
    return rc;
}

/* Answer bad input with one error frame, then close. */
static void conn_fail(pl_transport_conn *c, int status, size_t buffered)
{
    pl_transport_server *srv = c->srv;
    pl_response resp;
    char text[200];

    if (status == PL_ERR_FRAME_TOO_LARGE)
        snprintf(text, sizeof text,
                 "frame exceeds max_frame of %u bytes; closing the connection",
                 srv->max_frame);
    else if (status == PL_ERR_MALFORMED)
        snprintf(text, sizeof text,
                 "malformed frame: it does not decode in this wire format "
                 "(max_frame %u bytes); closing the connection", srv->max_frame);
    else
        snprintf(text, sizeof text, "%s; closing the connection", pl_strerror(status));
    pl_net_log(&srv->host, PL_LOG_INFO, "connection %s: %s (%zu bytes buffered)", c->peer,
               text, buffered);
    memset(&resp, 0, sizeof resp);
    resp.method = PL_M_NONE;
    resp.status = (uint32_t)status;
    resp.error = pl_str_c(text);
    (void)conn_queue(c, &resp);
    conn_begin_close(c);
}

/* A half-closed peer that has every answer it is owed (and no whole
 * frame left unread) is done: close once the output drains. */
static void conn_half_check(pl_transport_conn *c)
{
    if (c->state == CONN_HALF && c->owed == 0 && !c->paused && !c->in_read)
        conn_begin_close(c);
}

/* Decode and dispatch every whole frame in the input buffer. */
static void conn_process(pl_transport_conn *c)
{
    pl_transport_server *srv = c->srv;
    struct evbuffer *in = bufferevent_get_input(c->bev);

    if (c->in_read)
        return;
    c->in_read = 1;
    while (c->state == CONN_OPEN || c->state == CONN_HALF) {
        size_t len = evbuffer_get_length(in), used = 0;
        pl_request req;
        void *scratch = NULL;
        const uint8_t *buf;
        int rc;

        if (len == 0)
            break;
        /* Back-pressure: a client that does not read its answers gets no
         * new ones computed until the output drains (write_cb resumes). */
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > srv->out_pause) {
            c->paused = 1;
            conn_read_off(c);
            break;
        }
        /* len <= max_frame + slack thanks to the read watermark, so this
         * copy is bounded; after the first frame the buffer is contiguous. */
        buf = evbuffer_pullup(in, (ev_ssize_t)len);
        if (!buf) {
            conn_fail(c, PL_ERR_NOMEM, len);
            break;
        }
        memset(&req, 0, sizeof req);
        rc = srv->codec->decode_request(srv->codec_ctx, buf, len, &used, &req, &scratch);
        if (rc == PL_OK && (used == 0 || used > len))
            rc = PL_ERR_INTERNAL; /* a codec bug must not loop or overrun */
        if (rc == PL_OK) {
            c->owed++;
            srv->host.request(srv->host.ud, c->ctx, &req);
            srv->codec->free_scratch(scratch);
            evbuffer_drain(in, used);
            continue;
        }
        srv->codec->free_scratch(scratch);
        if (rc == PL_ERR_AGAIN) {
            /* The buffer is as full as we allow and the frame is still not
             * whole: it cannot fit in max_frame. */
            if (len >= (size_t)srv->max_frame + FRAMED_SLACK)
                conn_fail(c, PL_ERR_FRAME_TOO_LARGE, len);
            break;
        }
        conn_fail(c, rc, len);
    }
    c->in_read = 0;
    conn_half_check(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;

    if (c->state == CONN_LINGER) {
        size_t n = evbuffer_get_length(bufferevent_get_input(bev));

        evbuffer_drain(bufferevent_get_input(bev), n);
        c->lingered += n;
        if (c->lingered > FRAMED_LINGER_MAX)
            conn_reap(c);
        return;
    }
    conn_process(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg);

/* A plain TCP connection's socket is readable (or its linger timed out):
 * read it into bev's input, then on as libevent's read callback would. */
static void conn_sock_read_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_conn *c = arg;
    ssize_t n;

    if (c->state == CONN_DEAD)
        return;
    if (what & EV_TIMEOUT) {
        conn_event_cb(c->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, c);
        return;
    }
    n = sock_read_into(fd, c->bev, (size_t)c->srv->max_frame + FRAMED_SLACK);
    if (n > 0 || n == -2) {
        /* -2: the input is as full as allowed; conn_process says why */
        conn_read_cb(c->bev, c);
        return;
    }
    if (n == -3) {
        pl_net_log(&c->srv->host, PL_LOG_ERROR, "connection %s: out of memory reading; closing",
                   c->peer);
        conn_reap(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    conn_event_cb(c->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
}

/* The output has drained: finish a close, or resume a paused reader. */
static void conn_drained(pl_transport_conn *c)
{
    if (c->state == CONN_DRAINING) {
        conn_start_linger(c);
    } else if ((c->state == CONN_OPEN || c->state == CONN_HALF) && c->paused) {
        c->paused = 0;
        if (c->state == CONN_OPEN)
            conn_read_on(c, NULL);
        /* Frames may already be buffered; no new bytes may come to wake us. */
        conn_process(c);
    }
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;

    if (evbuffer_get_length(bufferevent_get_output(bev)) != 0)
        return;
    /* Back to direct writes: disarm, or every later frame would cost a
     * poller change to arm and one to disarm again. */
    if (c->flush_ev && c->state != CONN_DRAINING)
        bufferevent_disable(bev, EV_WRITE);
    conn_drained(c);
}

static void conn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_conn *c = arg;

    (void)fd;
    (void)what;
    if ((c->state != CONN_OPEN && c->state != CONN_HALF) ||
        (bufferevent_get_enabled(c->bev) & EV_WRITE))
        return; /* closing (libevent drains it), or libevent is on it already */
    if (direct_flush(c->bev))
        conn_drained(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    pl_transport_conn *c = arg;

    if (what & BEV_EVENT_CONNECTED) {
        /* TLS handshake done: lift its deadline unless closing set one. */
        c->handshaking = 0;
        if (c->state == CONN_OPEN)
            bufferevent_set_timeouts(bev, NULL, NULL);
        return;
    }
    if (c->handshaking && (what & (BEV_EVENT_TIMEOUT | BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        char why[200];

        int quiet = pl_tls_handshake_error(bev, what, FRAMED_HANDSHAKE_SECS, why, sizeof why);

        pl_net_log(&c->srv->host, quiet ? PL_LOG_DEBUG : PL_LOG_INFO,
                   "connection %s: TLS handshake failed: %s; closing", c->peer, why);
        conn_reap(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if (c->state == CONN_DRAINING)
            pl_net_log(&c->srv->host, PL_LOG_INFO,
                       "connection %s: peer did not read its last %zu bytes in %d s; closing",
                       c->peer, evbuffer_get_length(bufferevent_get_output(bev)),
                       FRAMED_DRAIN_SECS);
        conn_reap(c);
    } else if ((what & BEV_EVENT_EOF) && c->state == CONN_OPEN && (c->owed > 0 || c->paused)) {
        struct timeval tv = { FRAMED_HALF_SECS, 0 };

        /* The peer finished sending but is owed answers: keep writing. */
        c->state = CONN_HALF;
        conn_read_off(c);
        event_add(c->reap_ev, &tv);
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        conn_reap(c);
    }
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
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
    if (c->bev && srv->ssl_ctx) {
        struct timeval tv = { FRAMED_HANDSHAKE_SECS, 0 };

        bufferevent_set_timeouts(c->bev, &tv, NULL);
        c->handshaking = 1;
    }
    c->reap_ev = event_new(srv->host.base, -1, 0, conn_reap_cb, c);
    /* Plain TCP writes its output directly (see "Output"); TLS output goes
     * through OpenSSL's bufferevent as it always did. */
    if (!srv->ssl_ctx) {
        c->flush_ev = event_new(srv->host.base, -1, 0, conn_flush_cb, c);
        c->read_ev = event_new(srv->host.base, fd, EV_READ | EV_PERSIST, conn_sock_read_cb, c);
    }
    if (!c->bev || !c->reap_ev || (!srv->ssl_ctx && (!c->flush_ev || !c->read_ev))) {
        pl_net_log(&srv->host, PL_LOG_ERROR, "connection %s: out of memory; closing", c->peer);
        if (c->read_ev)
            event_free(c->read_ev);
        if (c->bev)
            bufferevent_free(c->bev); /* else pl_tls_accept_bev saw to fd */
        if (c->reap_ev)
            event_free(c->reap_ev);
        if (c->flush_ev)
            event_free(c->flush_ev);
        free(c);
        return;
    }
    c->state = CONN_OPEN;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, (size_t)srv->max_frame + FRAMED_SLACK);
    c->ctx = srv->host.conn_open(srv->host.ud, c, c->peer);
    if (!c->ctx) {
        /* Refused: close without conn_closed, as the ABI says. */
        if (c->read_ev)
            event_free(c->read_ev);
        bufferevent_free(c->bev);
        event_free(c->reap_ev);
        if (c->flush_ev)
            event_free(c->flush_ev);
        free(c);
        return;
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (c->state == CONN_OPEN)
        conn_read_on(c, NULL);
    /* A socket bufferevent starts with EV_WRITE enabled; direct writes
     * arm it only when the socket is full. conn_open may already have
     * queued output (and begun a close, which keeps EV_WRITE armed). */
    if (c->flush_ev && c->state == CONN_OPEN &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        bufferevent_disable(c->bev, EV_WRITE);
}

int pl_framed_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                           const pl_framed_codec *codec, const void *codec_ctx,
                           void (*free_ctx)(void *codec_ctx),
                           pl_transport_server **out, char *err, size_t errlen)
{
    pl_transport_server *srv = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    SSL_CTX *ssl_ctx = NULL;
    pl_tls_opts tls;
    char addr[80];
    int rc;

    *out = NULL;
    if (!host || !host->base || !host->conn_open || !host->request || !host->conn_closed
        || !opt || !codec) {
        pl_net_err(err, errlen, "framed server: host callbacks, options and codec are required");
        return PL_ERR_INVALID;
    }
    rc = pl_net_resolve(opt->host, opt->port, 1, &ss, &sslen, err, errlen);
    if (rc != PL_OK)
        return rc;
    rc = pl_tls_opts_parse(opt, &tls, err, errlen);
    if (rc != PL_OK)
        return rc;
    if (tls.root) {
        /* Certificate and key are read once, here: a bad path fails the
         * start with its name instead of every handshake later. */
        rc = pl_tls_server_ctx(&tls, &ssl_ctx, err, errlen);
        cJSON_Delete(tls.root);
        if (rc != PL_OK)
            return rc;
    }
    srv = calloc(1, sizeof *srv);
    if (!srv) {
        SSL_CTX_free(ssl_ctx);
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    srv->ssl_ctx = ssl_ctx;
    srv->host = *host;
    srv->codec = codec;
    srv->codec_ctx = codec_ctx;
    srv->max_frame = codec_max_frame(codec, codec_ctx);
    srv->out_pause = FRAMED_OUT_PAUSE_MIN;
    if (srv->out_pause < 2 * (size_t)srv->max_frame)
        srv->out_pause = 2 * (size_t)srv->max_frame;
    srv->out_limit = 2 * srv->out_pause;
    pl_net_addr_text((struct sockaddr *)&ss, addr, sizeof addr);
    rc = pl_net_listen(&srv->host, &ss, sslen, addr, accept_cb, srv, &srv->lis, err, errlen);
    if (rc != PL_OK) {
        SSL_CTX_free(srv->ssl_ctx);
        free(srv);
        return rc;
    }
    srv->free_ctx = free_ctx; /* owned from here on (see the top comment) */
    *out = srv;
    return PL_OK;
}

void pl_framed_server_stop_accepting(pl_transport_server *srv)
{
    if (!srv)
        return;
    pl_net_listener_free(srv->lis);
    srv->lis = NULL;
}

void pl_framed_server_free(pl_transport_server *srv)
{
    if (!srv)
        return;
    pl_framed_server_stop_accepting(srv);
    while (srv->conns)
        conn_destroy(srv->conns);
    SSL_CTX_free(srv->ssl_ctx);
    if (srv->free_ctx)
        srv->free_ctx((void *)srv->codec_ctx);
    free(srv);
}

int pl_framed_conn_send(pl_transport_conn *conn, const pl_response *resp)
{
    int rc;

    if (!conn || !resp)
        return PL_ERR_INVALID;
    if (conn->state != CONN_OPEN && conn->state != CONN_HALF)
        return PL_ERR_IO;
    rc = conn_queue(conn, resp);
    /* One answer per request; pushes and connection errors are extra. */
    if (resp->method != PL_M_PUSH && resp->method != PL_M_NONE && conn->owed > 0)
        conn->owed--;
    conn_half_check(conn);
    return rc;
}

void pl_framed_conn_close(pl_transport_conn *conn)
{
    if (conn)
        conn_begin_close(conn);
}

/* ------------------------------------------------------------------ */
/* client half                                                          */

static void client_destroy(pl_transport_client *cli)
{
    if (cli->read_ev)
        event_free(cli->read_ev);
    if (cli->flush_ev)
        event_free(cli->flush_ev);
    if (cli->bev)
        bufferevent_free(cli->bev);
    if (cli->free_ctx)
        cli->free_ctx((void *)cli->codec_ctx);
    free(cli);
}

/* Report the end once, then drop the socket. Returns 1 if cli was freed
 * (client_free was called from inside the closed callback). */
static int client_finish(pl_transport_client *cli, int err, const char *why)
{
    if (cli->done)
        return 0;
    cli->done = 1;
    if (cli->read_ev) {
        event_free(cli->read_ev); /* before the socket closes with bev */
        cli->read_ev = NULL;
    }
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

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_client *cli = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char why[128];

    while (!cli->done && !cli->free_pending) {
        size_t len = evbuffer_get_length(in), used = 0;
        pl_response resp;
        void *scratch = NULL;
        const uint8_t *buf;
        int rc;

        if (len == 0)
            return;
        buf = evbuffer_pullup(in, (ev_ssize_t)len);
        if (!buf) {
            client_finish(cli, PL_ERR_NOMEM, "out of memory reading a server frame");
            return;
        }
        memset(&resp, 0, sizeof resp);
        rc = cli->codec->decode_response(cli->codec_ctx, buf, len, &used, &resp, &scratch);
        if (rc == PL_OK && (used == 0 || used > len))
            rc = PL_ERR_INTERNAL;
        if (rc == PL_OK) {
            cli->in_cb++;
            cli->cb.frame(cli->ud, &resp);
            cli->in_cb--;
            cli->codec->free_scratch(scratch);
            if (cli->free_pending && cli->in_cb == 0) {
                client_destroy(cli);
                return;
            }
            if (cli->bev)
                evbuffer_drain(in, used);
            continue;
        }
        cli->codec->free_scratch(scratch);
        if (rc == PL_ERR_AGAIN) {
            if (len < (size_t)cli->max_frame + FRAMED_SLACK)
                return;
            rc = PL_ERR_FRAME_TOO_LARGE;
        }
        if (rc == PL_ERR_FRAME_TOO_LARGE)
            snprintf(why, sizeof why, "server sent a frame over max_frame (%u bytes)",
                     cli->max_frame);
        else
            snprintf(why, sizeof why, "server sent a frame that does not decode (%s)",
                     pl_strerror(rc));
        client_finish(cli, rc, why);
        return;
    }
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg);

/* Once connected, a plain TCP client reads the socket itself into bev's
 * input: libevent's socket reads ask the kernel how much is buffered
 * (ioctl FIONREAD) before every read and take at most 4 KiB. The frame
 * bound is the same as the read watermark's: never more than max_frame +
 * slack buffered. End of stream and errors go to client_event_cb as
 * libevent would report them. */
static void client_sock_read_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_client *cli = arg;
    ssize_t n;

    (void)what;
    if (cli->done || cli->free_pending || !cli->bev)
        return;
    n = sock_read_into(fd, cli->bev, (size_t)cli->max_frame + FRAMED_SLACK);
    if (n > 0 || n == -2) {
        /* -2: the input is as full as allowed; client_read_cb reports the
         * oversized frame */
        client_read_cb(cli->bev, cli); /* may free cli */
        return;
    }
    if (n == -3) {
        client_finish(cli, PL_ERR_NOMEM, "out of memory reading a server frame");
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    errno = n < 0 ? errno : 0;
    client_event_cb(cli->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR),
                    cli);
}

/* Connected plain TCP: read with client_sock_read_cb from now on. If the
 * event cannot be had, libevent goes on reading as before. */
static void client_direct_read(pl_transport_client *cli, struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);

    if (!cli->flush_ev || cli->read_ev || fd < 0)
        return;
    cli->read_ev = event_new(cli->base, fd, EV_READ | EV_PERSIST, client_sock_read_cb, cli);
    if (!cli->read_ev)
        return;
    if (event_add(cli->read_ev, NULL) != 0) {
        event_free(cli->read_ev);
        cli->read_ev = NULL;
        return;
    }
    bufferevent_disable(bev, EV_READ);
}

/* libevent wrote everything queued (EV_WRITE was armed: the connect, or a
 * full socket): back to direct writes. */
static void client_write_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_client *cli = arg;

    if (cli->flush_ev && cli->connected && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_disable(bev, EV_WRITE);
}

static void client_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_transport_client *cli = arg;

    (void)fd;
    (void)what;
    if (cli->done || cli->free_pending || !cli->bev || !cli->connected ||
        (bufferevent_get_enabled(cli->bev) & EV_WRITE))
        return;
    (void)direct_flush(cli->bev);
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    pl_transport_client *cli = arg;
    char why[256];

    if (what & BEV_EVENT_CONNECTED) {
        cli->connected = 1;
        pl_net_nodelay(bufferevent_getfd(bev));
        /* Requests queued before the connect are written by libevent
         * (client_write_cb disarms once they are out); with none, later
         * ones go direct from here on. */
        if (cli->flush_ev && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            bufferevent_disable(bev, EV_WRITE);
        client_direct_read(cli, bev);
        return;
    }
    /* With TLS, CONNECTED means the handshake is done too; anything before
     * it may be a TCP failure or a TLS one, and the user needs to know which
     * (a wrong CA looks nothing like a server that is down). */
    if (cli->tls && !cli->connected && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        int e = EVUTIL_SOCKET_ERROR();

        if (!pl_tls_connect_error(bev, why, sizeof why)) {
            if (e == ECONNREFUSED)
                /* Also under EOF: libevent reads a failed connect as a
                 * dirty TLS shutdown, which we allow. */
                snprintf(why, sizeof why, "connection refused");
            else if ((what & BEV_EVENT_ERROR) && e != 0)
                snprintf(why, sizeof why, "connect failed: %s", evutil_socket_error_to_string(e));
            else
                snprintf(why, sizeof why, "connection closed by server during the TLS handshake");
        }
        client_finish(cli, PL_ERR_IO, why);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
            client_finish(cli, PL_ERR_IO, "connection closed by server in the middle of a frame");
        else
            client_finish(cli, PL_ERR_IO, "connection closed by server");
    } else if (what & BEV_EVENT_ERROR) {
        int e = EVUTIL_SOCKET_ERROR();
        unsigned long oe = cli->tls ? pl_tls_cause(bev) : 0;
        char reason[200];

        /* After the handshake a TLS error is usually the server's alert,
         * e.g. "certificate required" when it verifies clients. */
        if (oe) {
            pl_tls_err_text(oe, reason, sizeof reason);
            snprintf(why, sizeof why, "connection lost: TLS: %s", reason);
        } else if (cli->connected && e == 0)
            snprintf(why, sizeof why, "connection lost");
        else if (!cli->connected && e == ECONNREFUSED)
            snprintf(why, sizeof why, "connection refused");
        else if (!cli->connected)
            snprintf(why, sizeof why, "connect failed: %s", evutil_socket_error_to_string(e));
        else
            snprintf(why, sizeof why, "connection lost: %s", evutil_socket_error_to_string(e));
        client_finish(cli, PL_ERR_IO, why);
    } else if (what & BEV_EVENT_TIMEOUT) {
        client_finish(cli, PL_ERR_TIMEOUT, "connection timed out");
    }
}

int pl_framed_client_connect(struct event_base *base, const pl_transport_options *opt,
                             const pl_framed_codec *codec, const void *codec_ctx,
                             void (*free_ctx)(void *codec_ctx),
                             const pl_transport_client_cb *cb, void *ud,
                             pl_transport_client **out, char *err, size_t errlen)
{
    pl_transport_client *cli = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    struct bufferevent *bev = NULL;
    int rc, tls = 0;

    *out = NULL;
    if (!base || !opt || !codec || !cb || !cb->frame || !cb->closed) {
        pl_net_err(err, errlen,
                   "framed client: event base, options, codec and callbacks are required");
        return PL_ERR_INVALID;
    }
    if (opt->port == 0) {
        pl_net_err(err, errlen, "framed client: no port to connect to");
        return PL_ERR_INVALID;
    }
    rc = pl_net_resolve(opt->host, opt->port, 0, &ss, &sslen, err, errlen);
    if (rc != PL_OK)
        return rc;
    rc = pl_tls_client_bev(base, opt, &bev, &tls, err, errlen);
    if (rc != PL_OK)
        return rc;
    cli = calloc(1, sizeof *cli);
    if (!cli) {
        bufferevent_free(bev);
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    cli->base = base;
    cli->codec = codec;
    cli->codec_ctx = codec_ctx;
    cli->cb = *cb;
    cli->ud = ud;
    cli->max_frame = codec_max_frame(codec, codec_ctx);
    cli->bev = bev;
    cli->tls = tls;
    /* Plain TCP writes requests directly once connected (see "Output");
     * TLS goes through OpenSSL's bufferevent as it always did. */
    if (!tls && !(cli->flush_ev = event_new(base, -1, 0, client_flush_cb, cli))) {
        bufferevent_free(bev);
        free(cli);
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    bufferevent_setcb(cli->bev, client_read_cb, client_write_cb, client_event_cb, cli);
    /* A hostile server must not make us buffer more than one frame. */
    bufferevent_setwatermark(cli->bev, EV_READ, 0, (size_t)cli->max_frame + FRAMED_SLACK);
    bufferevent_enable(cli->bev, EV_READ | EV_WRITE);
    rc = pl_net_connect(cli->bev, &ss, sslen, err, errlen);
    if (rc != PL_OK)
        goto fail;
    pl_net_nodelay(bufferevent_getfd(cli->bev));
    cli->free_ctx = free_ctx; /* owned from here on */
    *out = cli;
    return PL_OK;
fail:
    if (cli->flush_ev)
        event_free(cli->flush_ev);
    if (cli->bev)
        bufferevent_free(cli->bev);
    free(cli);
    return rc;
}

int pl_framed_client_send(pl_transport_client *cli, const pl_request *req)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (!cli || !req)
        return PL_ERR_INVALID;
    if (cli->done || !cli->bev || cli->free_pending)
        return PL_ERR_IO;
    rc = cli->codec->encode_request(cli->codec_ctx, req, &buf, &len);
    if (rc != PL_OK)
        return rc;
    if (bufferevent_write(cli->bev, buf, len) != 0)
        rc = PL_ERR_NOMEM;
    else if (cli->connected)
        direct_want_flush(cli->bev, cli->flush_ev);
    free(buf);
    return rc;
}

void pl_framed_client_free(pl_transport_client *cli)
{
    if (!cli)
        return;
    if (cli->in_cb > 0) {
        /* Inside frame/closed: the dispatcher frees us when it returns. */
        cli->free_pending = 1;
        if (cli->read_ev)
            event_del(cli->read_ev);
        if (cli->bev)
            bufferevent_disable(cli->bev, EV_READ | EV_WRITE);
        return;
    }
    client_destroy(cli);
}
