/*
 * plugins/transport-ws/ws_proto.c — the socket-free WebSocket protocol
 * (ws_proto.h): HTTP/1.1 request and response heads through libhttp-parser,
 * RFC 6455 frames through libwslay's event API.
 *
 * wslay runs with buffering off: it parses, unmasks and checks frames
 * (masking, opcodes, control frames, close codes, UTF-8 of text frames) and
 * answers pings, but the data frames of a message are joined here, so the
 * limit is ours to enforce before a byte is stored: a frame header that
 * would take the message past max_frame closes the connection at once with
 * 1009 and a reason naming max_frame (wslay's own check would close with
 * no reason, and with buffering on it allocates a frame's whole announced
 * length up front).
 *
 * The HTTP side parses one request head at a time and pauses the parser
 * until the owner has answered, so pipelined requests are answered in
 * order and a request cannot make us buffer another's answer.
 */
#include "ws_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>

#include <parley/common.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_OUT_HIGH_DEFAULT (256u * 1024u)
#define WS_MSG_KEEP (64u * 1024u)      /* message buffer kept between messages */
#define WS_FEED_CHUNK (64u * 1024u)    /* bytes handed to http_parser per call */

enum { P_HTTP, P_WAIT, P_OPEN, P_DONE };

struct ws_proto {
    int role;
    uint32_t max_frame;
    struct evbuffer *out;
    ws_proto_cb cb;
    void *ud;
    int state;
    size_t out_high;
    int paused;

    /* HTTP */
    http_parser hp;
    size_t head_bytes;
    int head_too_big;
    int head_done;              /* on_headers_complete seen for this message */
    ws_http_req req;
    char field[64];
    size_t field_len;
    char value[512];
    size_t value_len;
    int value_too_long;
    int in_value;
    int dup_header;

    /* client handshake */
    char expect_accept[32];
    int got_accept, got_upgrade, got_conn_upgrade;
    char refusal[300];
    size_t refusal_len;

    /* WebSocket */
    wslay_event_context_ptr ws;
    struct evbuffer *in;        /* during ws_proto_feed only */
    uint8_t *msg;
    size_t msg_len, msg_cap;
    int cur_ctrl;               /* the frame being read is a control frame */
    int msg_binary;
    int failed;                 /* a limit closed the connection */
    int closing;                /* we asked to close */
    int close_deferred;         /* ... behind data messages still queued */
    int close_code;
    char close_reason[WS_CLOSE_REASON_MAX + 1];
    int finished;
};

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

static void finish(ws_proto *p, int code, const char *why)
{
    if (p->finished)
        return;
    p->finished = 1;
    p->state = P_DONE;
    if (p->cb.finished)
        p->cb.finished(p->ud, code, why ? why : "");
}

/* Case-insensitive: does the comma-separated header value list token? */
static int has_token(const char *list, const char *token)
{
    size_t tl = strlen(token);

    for (const char *s = list; *s;) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        const char *e = s;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - s) == tl && strncasecmp(s, token, tl) == 0)
            return 1;
        s = e;
    }
    return 0;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n, int *too_long)
{
    if (n >= cap) {
        *too_long = 1;
        n = cap - 1;
    }
    memcpy(dst, v, n);
    dst[n] = '\0';
}

int ws_accept_value(const char *key, char out[32])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%s%s", key, WS_GUID);

    if (n < 0 || (size_t)n >= sizeof buf || !EVP_Digest(buf, (size_t)n, md, &mdlen, EVP_sha1(), NULL))
        return -1;
    if (EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen) != 28)
        return -1;
    return 0;
}

/* Truncate reason to the close frame's room without splitting a UTF-8
 * sequence. */
static void clip_reason(char *dst, const char *reason)
{
    size_t n = reason ? strlen(reason) : 0;

    if (n > WS_CLOSE_REASON_MAX) {
        n = WS_CLOSE_REASON_MAX;
        while (n > 0 && ((unsigned char)reason[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, reason, n);
    dst[n] = '\0';
}

/* ------------------------------------------------------------------ */
/* HTTP heads                                                           */

static int head_count(ws_proto *p, size_t n)
{
    p->head_bytes += n;
    if (p->head_bytes > WS_HTTP_HEAD_MAX) {
        p->head_too_big = 1;
        return 1;
    }
    return 0;
}

static void header_commit(ws_proto *p)
{
    const char *f = p->field, *v = p->value;
    ws_http_req *r = &p->req;
    int *tl = &r->too_long;

    if (!p->in_value)
        return;
    p->in_value = 0;
    if (p->role == WS_ROLE_SERVER) {
        if (strcasecmp(f, "host") == 0) {
            if (r->host[0])
                p->dup_header = 1;
            copy_value(r->host, sizeof r->host, v, p->value_len, tl);
        } else if (strcasecmp(f, "origin") == 0) {
            /* Two Origin headers would let the check read one and a
             * browser have meant the other. */
            if (r->has_origin)
                p->dup_header = 1;
            r->has_origin = 1;
            copy_value(r->origin, sizeof r->origin, v, p->value_len, tl);
        } else if (strcasecmp(f, "sec-websocket-key") == 0) {
            if (r->key[0])
                p->dup_header = 1;
            copy_value(r->key, sizeof r->key, v, p->value_len, tl);
        } else if (strcasecmp(f, "sec-websocket-version") == 0) {
            copy_value(r->version, sizeof r->version, v, p->value_len, tl);
        } else if (strcasecmp(f, "upgrade") == 0) {
            r->upgrade_websocket |= has_token(v, "websocket");
        } else if (strcasecmp(f, "connection") == 0) {
            r->connection_upgrade |= has_token(v, "upgrade");
        }
        if (p->value_too_long && (strcasecmp(f, "upgrade") == 0 || strcasecmp(f, "connection") == 0))
            r->too_long = 1;
    } else {
        if (strcasecmp(f, "sec-websocket-accept") == 0)
            p->got_accept = !p->value_too_long && strcmp(v, p->expect_accept) == 0;
        else if (strcasecmp(f, "upgrade") == 0)
            p->got_upgrade |= has_token(v, "websocket");
        else if (strcasecmp(f, "connection") == 0)
            p->got_conn_upgrade |= has_token(v, "upgrade");
    }
}

static int on_message_begin(http_parser *hp)
{
    ws_proto *p = hp->data;

    memset(&p->req, 0, sizeof p->req);
    p->head_bytes = 0;
    p->head_done = 0;
    p->field_len = p->value_len = 0;
    p->in_value = 0;
    p->dup_header = 0;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n)
{
    ws_proto *p = hp->data;
    size_t have = strlen(p->req.path);

    if (head_count(p, n))
        return 1;
    if (have + n >= sizeof p->req.path) {
        p->req.too_long = 1;
        return 0;
    }
    memcpy(p->req.path + have, at, n);
    p->req.path[have + n] = '\0';
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n)
{
    ws_proto *p = hp->data;

    if (head_count(p, n))
        return 1;
    if (p->in_value) {
        header_commit(p);
        p->field_len = 0;
    }
    if (p->field_len + n >= sizeof p->field) {
        /* No header we read has a long name: keep it unrecognisable. */
        p->field[0] = '\0';
        p->field_len = sizeof p->field - 1;
        return 0;
    }
    memcpy(p->field + p->field_len, at, n);
    p->field_len += n;
    p->field[p->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t n)
{
    ws_proto *p = hp->data;

    if (head_count(p, n))
        return 1;
    if (!p->in_value) {
        p->in_value = 1;
        p->value_len = 0;
        p->value_too_long = 0;
    }
    if (p->value_len + n >= sizeof p->value) {
        p->value_too_long = 1;
        n = sizeof p->value - 1 - p->value_len;
    }
    memcpy(p->value + p->value_len, at, n);
    p->value_len += n;
    p->value[p->value_len] = '\0';
    return 0;
}

static int on_status(http_parser *hp, const char *at, size_t n)
{
    (void)at;
    return head_count(hp->data, n);
}

static int on_headers_complete(http_parser *hp)
{
    ws_proto *p = hp->data;

    header_commit(p);
    p->head_done = 1;
    if (p->role == WS_ROLE_SERVER) {
        ws_http_req *r = &p->req;
        char *q = strchr(r->path, '?');

        if (q)
            *q = '\0';
        snprintf(r->method, sizeof r->method, "%s", http_method_str((enum http_method)hp->method));
        r->http_major = hp->http_major;
        r->http_minor = hp->http_minor;
        r->keep_alive = http_should_keep_alive(hp);
        r->has_body = (hp->flags & F_CHUNKED) || (hp->content_length > 0 &&
                                                  hp->content_length != ULLONG_MAX);
        if (p->dup_header)
            r->too_long = 1;
        if (r->has_body) {
            /* No body is read: answer (413) and close. */
            http_parser_pause(hp, 1);
        }
        return 0;
    }
    /* Client: the answer to our upgrade. A 101 with Upgrade and Connection
     * makes http-parser stop right after the head (hp->upgrade), so the
     * frames behind it are never parsed as HTTP. (Pausing here instead
     * would leave the head's last LF unconsumed.) */
    snprintf(p->refusal, sizeof p->refusal, "HTTP %u", hp->status_code);
    p->refusal_len = strlen(p->refusal);
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
    ws_proto *p = hp->data;

    /* Client: the body of a refusal (our server explains itself there). */
    if (p->role == WS_ROLE_CLIENT) {
        if (p->refusal_len == strlen(p->refusal) && p->refusal_len + 2 < sizeof p->refusal) {
            memcpy(p->refusal + p->refusal_len, ": ", 2);
            p->refusal_len += 2;
            p->refusal[p->refusal_len] = '\0';
        }
        for (size_t i = 0; i < n && p->refusal_len + 1 < sizeof p->refusal; i++) {
            char c = at[i];
            p->refusal[p->refusal_len++] = (c == '\r' || c == '\n') ? ' ' : c;
        }
        p->refusal[p->refusal_len] = '\0';
    }
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    ws_proto *p = hp->data;

    /* One request (or response) at a time: the owner answers first. */
    if (!hp->upgrade)
        http_parser_pause(hp, 1);
    (void)p;
    return 0;
}

static const http_parser_settings ws_http_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static const char *status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

void ws_http_reply(ws_proto *p, int status, const char *headers, const char *content_type,
                   const void *body, size_t body_len, int close)
{
    int head_only;

    if (p->state != P_WAIT && p->state != P_HTTP)
        return;
    head_only = strcmp(p->req.method, "HEAD") == 0;
    evbuffer_add_printf(p->out,
                        "HTTP/1.1 %d %s\r\n"
                        "Content-Length: %zu\r\n"
                        "%s%s%s"
                        "%s"
                        "Connection: %s\r\n\r\n",
                        status, status_text(status), body_len,
                        content_type ? "Content-Type: " : "", content_type ? content_type : "",
                        content_type ? "\r\n" : "", headers ? headers : "",
                        close ? "close" : "keep-alive");
    if (body_len && !head_only)
        evbuffer_add(p->out, body, body_len);
    if (close) {
        char why[64];
        snprintf(why, sizeof why, "HTTP %d", status);
        finish(p, status, why);
        return;
    }
    /* Ready for the next request on this connection. */
    p->state = P_HTTP;
    http_parser_pause(&p->hp, 0);
}

int ws_http_check_upgrade(const ws_http_req *req, char *why, size_t whylen)
{
    unsigned char raw[32];

    if (strcmp(req->method, "GET") != 0 || req->http_major != 1 || req->http_minor < 1) {
        snprintf(why, whylen, "a WebSocket handshake is a GET over HTTP/1.1");
        return 400;
    }
    if (!req->upgrade_websocket || !req->connection_upgrade) {
        snprintf(why, whylen, "missing \"Upgrade: websocket\" and \"Connection: Upgrade\"");
        return 426;
    }
    if (strcmp(req->version, "13") != 0) {
        snprintf(why, whylen, "Sec-WebSocket-Version must be 13");
        return 426;
    }
    /* The key is base64 of 16 bytes: 24 characters ending in "==". */
    if (strlen(req->key) != 24 || EVP_DecodeBlock(raw, (const unsigned char *)req->key, 24) != 18 ||
        strcmp(req->key + 22, "==") != 0) {
        snprintf(why, whylen, "Sec-WebSocket-Key must be base64 of 16 bytes");
        return 400;
    }
    if (!req->host[0]) {
        snprintf(why, whylen, "missing Host header");
        return 400;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* WebSocket frames                                                     */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *ud)
{
    ws_proto *p = ud;
    int n;

    (void)flags;
    if (p->paused || !p->in || evbuffer_get_length(p->in) == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    n = evbuffer_remove(p->in, buf, len);
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                          int flags, void *ud)
{
    ws_proto *p = ud;

    (void)flags;
    if (evbuffer_get_length(p->out) >= p->out_high) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (evbuffer_add(p->out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

/* A limit was broken by the message being read: tell the peer which (the
 * owner's refuse hook sends the error object), close, read no more. */
static void fail(ws_proto *p, int code, int status, const char *reason)
{
    if (p->cb.refuse)
        p->cb.refuse(p->ud, status, reason);
    p->failed = 1;
    ws_proto_close(p, code, reason);
    wslay_event_shutdown_read(p->ws);
}

static void ws_frame_start_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_start_arg *arg, void *ud)
{
    ws_proto *p = ud;
    char reason[WS_CLOSE_REASON_MAX + 1];

    (void)ctx;
    p->cur_ctrl = (arg->opcode & 0x8u) != 0;
    if (p->cur_ctrl || p->failed)
        return;
    if (arg->opcode != WSLAY_CONTINUATION_FRAME) {
        p->msg_len = 0;
        p->msg_binary = arg->opcode == WSLAY_BINARY_FRAME;
    }
    if (p->msg_binary) {
        fail(p, WSLAY_CODE_UNSUPPORTED_DATA, PL_ERR_MALFORMED,
             "binary messages are not accepted: send JSON text");
    } else if (arg->payload_length > (uint64_t)p->max_frame - p->msg_len) {
        snprintf(reason, sizeof reason, "message exceeds max_frame (%u bytes)", p->max_frame);
        fail(p, WSLAY_CODE_MESSAGE_TOO_BIG, PL_ERR_FRAME_TOO_LARGE, reason);
    }
}

static void ws_frame_chunk_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_chunk_arg *arg, void *ud)
{
    ws_proto *p = ud;

    (void)ctx;
    if (p->cur_ctrl || p->failed || arg->data_length == 0)
        return;
    /* frame_start checked the frame's whole length against max_frame. */
    if (p->msg_len + arg->data_length > p->msg_cap) {
        size_t cap = p->msg_cap ? p->msg_cap : 4096;
        uint8_t *m;

        while (cap < p->msg_len + arg->data_length)
            cap *= 2;
        if (cap > p->max_frame)
            cap = p->max_frame;
        m = realloc(p->msg, cap);
        if (!m) {
            fail(p, WSLAY_CODE_INTERNAL_SERVER_ERROR, PL_ERR_NOMEM, "out of memory");
            return;
        }
        p->msg = m;
        p->msg_cap = cap;
    }
    memcpy(p->msg + p->msg_len, arg->data, arg->data_length);
    p->msg_len += arg->data_length;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *ud)
{
    ws_proto *p = ud;

    (void)ctx;
    if (arg->opcode != WSLAY_TEXT_FRAME || p->failed)
        return;
    /* After our close frame, RFC 6455 5.5.1: data is not processed. */
    if (!p->closing && p->cb.message)
        p->cb.message(p->ud, p->msg ? p->msg : (const uint8_t *)"", p->msg_len);
    p->msg_len = 0;
    if (p->msg_cap > WS_MSG_KEEP) {
        free(p->msg);
        p->msg = NULL;
        p->msg_cap = 0;
    }
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .genmask_callback = ws_genmask_cb,
    .on_frame_recv_start_callback = ws_frame_start_cb,
    .on_frame_recv_chunk_callback = ws_frame_chunk_cb,
    .on_msg_recv_callback = ws_msg_cb,
};

static const char *code_text(int code)
{
    switch (code) {
    case 1000: return "closed normally";
    case 1001: return "going away";
    case 1002: return "protocol error (RFC 6455 framing)";
    case 1003: return "unsupported data";
    case 1005: return "closed without a code";
    case 1007: return "invalid UTF-8 in a text message";
    case 1008: return "policy violation";
    case 1009: return "message too big";
    case 1011: return "internal error";
    default: return "closed";
    }
}

/* The close handshake is over once nothing is left to read or write. */
static void check_done(ws_proto *p)
{
    char why[200];
    int code;

    if (p->state != P_OPEN || p->finished)
        return;
    if (wslay_event_want_read(p->ws) || wslay_event_want_write(p->ws))
        return;
    if (wslay_event_get_close_received(p->ws)) {
        code = wslay_event_get_status_code_received(p->ws);
        snprintf(why, sizeof why, "peer closed: %d (%s)", code, code_text(code));
    } else {
        code = wslay_event_get_status_code_sent(p->ws);
        snprintf(why, sizeof why, "closed: %d (%s)%s%s", code,
                 p->close_reason[0] ? p->close_reason : code_text(code),
                 p->closing ? "" : ", by the frame layer", "");
    }
    finish(p, code, why);
}

static int ws_open(ws_proto *p)
{
    int rc = p->role == WS_ROLE_SERVER
                 ? wslay_event_context_server_init(&p->ws, &ws_callbacks, p)
                 : wslay_event_context_client_init(&p->ws, &ws_callbacks, p);

    if (rc != 0)
        return -1;
    wslay_event_config_set_no_buffering(p->ws, 1);
    /* With buffering off wslay stores no data frame, so its own length
     * check (which closes 1009 without a reason) is lifted and ours
     * (ws_frame_start_cb) bounds whole messages, naming max_frame. Control
     * frames are at most 125 bytes by RFC 6455, which wslay enforces. */
    wslay_event_config_set_max_recv_msg_length(p->ws, (uint64_t)1 << 62);
    p->state = P_OPEN;
    if (p->cb.opened)
        p->cb.opened(p->ud);
    return 0;
}

static void queue_close(ws_proto *p);

/* ------------------------------------------------------------------ */
/* public                                                               */

ws_proto *ws_proto_new(int role, uint32_t max_frame, struct evbuffer *out,
                       const ws_proto_cb *cb, void *ud)
{
    ws_proto *p = calloc(1, sizeof *p);

    if (!p)
        return NULL;
    p->role = role;
    p->max_frame = max_frame ? max_frame : PL_FRAME_DEFAULT;
    p->out = out;
    p->cb = *cb;
    p->ud = ud;
    p->out_high = WS_OUT_HIGH_DEFAULT;
    p->state = P_HTTP;
    http_parser_init(&p->hp, role == WS_ROLE_SERVER ? HTTP_REQUEST : HTTP_RESPONSE);
    p->hp.data = p;
    return p;
}

void ws_proto_free(ws_proto *p)
{
    if (!p)
        return;
    if (p->ws)
        wslay_event_context_free(p->ws);
    free(p->msg);
    free(p);
}

void ws_proto_set_out_high(ws_proto *p, size_t bytes)
{
    p->out_high = bytes ? bytes : WS_OUT_HIGH_DEFAULT;
}

/* Parse heads until one is complete (then wait for the owner), the stream
 * becomes frames, or the input runs out. */
static void feed_http(ws_proto *p, struct evbuffer *in)
{
    while (p->state == P_HTTP && evbuffer_get_length(in) > 0) {
        size_t len = evbuffer_get_length(in), n;
        const char *buf;
        enum http_errno e;

        if (len > WS_FEED_CHUNK)
            len = WS_FEED_CHUNK;
        buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
        if (!buf) {
            finish(p, 500, "out of memory");
            return;
        }
        n = http_parser_execute(&p->hp, &ws_http_settings, buf, len);
        e = HTTP_PARSER_ERRNO(&p->hp);
        if (n > len)
            n = len;
        evbuffer_drain(in, n);
        if (p->role == WS_ROLE_CLIENT) {
            if (e == HPE_OK && p->hp.upgrade && p->hp.status_code == 101) {
                if (!p->got_upgrade || !p->got_conn_upgrade || !p->got_accept) {
                    snprintf(p->refusal, sizeof p->refusal,
                             "HTTP 101 without a valid Upgrade, Connection and "
                             "Sec-WebSocket-Accept");
                    finish(p, 1002, p->refusal);
                    return;
                }
                if (ws_open(p) != 0)
                    finish(p, 1011, "out of memory");
                return;
            }
            if (e == HPE_PAUSED || (e == HPE_OK && p->hp.upgrade)) {
                finish(p, (int)p->hp.status_code, p->refusal);
                return;
            }
            if (e != HPE_OK) {
                snprintf(p->refusal, sizeof p->refusal, "%s",
                         p->head_too_big ? "the server's answer head is too large"
                                         : "the server's answer is not HTTP/1.1");
                finish(p, 1002, p->refusal);
                return;
            }
            continue;
        }
        if (e == HPE_PAUSED || (e == HPE_OK && p->hp.upgrade && p->head_done)) {
            p->state = P_WAIT;
            if (p->req.has_body) {
                ws_http_reply(p, 413, NULL, "text/plain; charset=utf-8",
                              "request bodies are not accepted\n", 32, 1);
                return;
            }
            if (p->req.too_long) {
                ws_http_reply(p, 431, NULL, "text/plain; charset=utf-8",
                              "a header is too long or repeated\n", 33, 1);
                return;
            }
            if (p->cb.http_request)
                p->cb.http_request(p->ud, &p->req);
            continue;
        }
        if (e != HPE_OK) {
            char why[160];
            int st = p->head_too_big ? 431 : 400;
            int wl = snprintf(why, sizeof why, "%s\n",
                              p->head_too_big ? "request head exceeds 8192 bytes"
                                              : http_errno_description(e));
            ws_http_reply(p, st, NULL, "text/plain; charset=utf-8", why,
                          wl > 0 ? (size_t)wl : 0, 1);
            return;
        }
    }
}

int ws_proto_feed(ws_proto *p, struct evbuffer *in)
{
    if (p->finished)
        return -1;
    if (p->state == P_HTTP)
        feed_http(p, in);
    if (p->state == P_OPEN && !p->paused) {
        p->in = in;
        if (wslay_event_recv(p->ws) != 0 && !p->finished) {
            p->in = NULL;
            finish(p, 1011, "out of memory or I/O failure in the frame layer");
            return -1;
        }
        p->in = NULL;
        ws_proto_flush(p);
    }
    return p->finished ? -1 : 0;
}

void ws_proto_flush(ws_proto *p)
{
    if (p->state != P_OPEN)
        return;
    if (wslay_event_send(p->ws) != 0) {
        finish(p, 1011, "frame layer failed to send");
        return;
    }
    if (p->close_deferred && wslay_event_get_queued_msg_count(p->ws) == 0) {
        queue_close(p);
        if (wslay_event_send(p->ws) != 0) {
            finish(p, 1011, "frame layer failed to send");
            return;
        }
    }
    check_done(p);
}

size_t ws_proto_out_queued(const ws_proto *p)
{
    size_t q = evbuffer_get_length(p->out);

    if (p->ws)
        q += wslay_event_get_queued_msg_length(p->ws);
    return q;
}

void ws_proto_pause(ws_proto *p, int paused)
{
    p->paused = paused;
}

int ws_proto_accept(ws_proto *p, const char *extra_headers)
{
    char acc[32];

    if (p->state != P_WAIT || ws_accept_value(p->req.key, acc) != 0)
        return -1;
    evbuffer_add_printf(p->out,
                        "HTTP/1.1 101 Switching Protocols\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: %s\r\n"
                        "%s\r\n",
                        acc, extra_headers ? extra_headers : "");
    return ws_open(p);
}

int ws_proto_connect(ws_proto *p, const char *host_header, const char *path)
{
    unsigned char raw[16];
    char key[32];

    if (p->role != WS_ROLE_CLIENT || p->state != P_HTTP || RAND_bytes(raw, sizeof raw) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw);
    if (ws_accept_value(key, p->expect_accept) != 0)
        return -1;
    evbuffer_add_printf(p->out,
                        "GET %s HTTP/1.1\r\n"
                        "Host: %s\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n"
                        "User-Agent: libparley/" PARLEY_VERSION "\r\n\r\n",
                        path, host_header, key);
    return 0;
}

const char *ws_proto_refusal(const ws_proto *p)
{
    return p->state == P_OPEN ? "" : p->refusal;
}

int ws_proto_send_text(ws_proto *p, const uint8_t *msg, size_t len)
{
    struct wslay_event_msg m = { WSLAY_TEXT_FRAME, msg, len };

    if (p->state != P_OPEN || p->closing)
        return -1;
    return wslay_event_queue_msg(p->ws, &m) == 0 ? 0 : -1;
}

int ws_proto_ping(ws_proto *p)
{
    struct wslay_event_msg m = { WSLAY_PING, (const uint8_t *)"", 0 };

    if (p->state != P_OPEN || p->closing)
        return -1;
    return wslay_event_queue_msg(p->ws, &m) == 0 ? 0 : -1;
}

/* wslay sends control frames ahead of queued data, and nothing after a
 * close: a close is queued only once the data before it (an error object
 * naming the limit, say) has left. */
static void queue_close(ws_proto *p)
{
    p->close_deferred = 0;
    (void)wslay_event_queue_close(p->ws, (uint16_t)p->close_code,
                                  (const uint8_t *)p->close_reason, strlen(p->close_reason));
}

void ws_proto_close(ws_proto *p, int code, const char *reason)
{
    if (p->state != P_OPEN || p->closing)
        return;
    p->closing = 1;
    p->close_code = code;
    clip_reason(p->close_reason, reason);
    if (wslay_event_get_queued_msg_count(p->ws) == 0)
        queue_close(p);
    else
        p->close_deferred = 1;
}

int ws_proto_is_open(const ws_proto *p)
{
    return p->state == P_OPEN;
}

int ws_proto_close_sent(const ws_proto *p)
{
    return p->ws && wslay_event_get_close_sent(p->ws);
}
