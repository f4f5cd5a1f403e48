/*
 * plugins/transport-ws/ws_proto.h — one WebSocket connection's protocol,
 * without sockets: the HTTP/1.1 exchange before it (libhttp-parser) and
 * RFC 6455 framing after it (libwslay). Bytes come in from an input
 * evbuffer and go out into an output evbuffer; the owner moves them to and
 * from a socket (ws_server.c, ws_client.c) or a fuzzer does (tests/fuzz).
 *
 * Server role: every request head is handed to cb->http_request; the owner
 * answers it with ws_proto_http_reply (a static file, an error) or accepts
 * a WebSocket upgrade with ws_proto_accept. Client role: ws_proto_connect
 * writes the upgrade request and the response is checked here
 * (101, Upgrade, Connection, Sec-WebSocket-Accept).
 *
 * After the handshake every whole text message (at most max_frame bytes,
 * fragments joined) is one cb->message call. The limits, each closing with
 * its code and a reason naming it:
 *   - a message over max_frame: 1009 "message exceeds max_frame (N bytes)";
 *   - a binary message: 1003 (the protocol is JSON text);
 *   - invalid UTF-8 in a text message: 1007, and a frame that breaks RFC
 *     6455 (unmasked from a client, bad opcode, fragmented control frame):
 *     1002 — these two from wslay's own checks, which send no reason text;
 *   - a request head over WS_HTTP_HEAD_MAX: 431; a request with a body:
 *     413; an HTTP/1.1 syntax error: 400 (then the connection closes).
 * Memory is bounded by the message buffer (max_frame), the request head
 * (WS_HTTP_HEAD_MAX) and wslay's control frames (125 bytes each); output
 * is the owner's to bound (ws_proto_out_queued).
 *
 * Prefix: ws_proto_ (and ws_http_ for the request head).
 */
#ifndef PL_WS_PROTO_H
#define PL_WS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#define WS_HTTP_HEAD_MAX 8192u       /* request or response head, bytes */
#define WS_CLOSE_REASON_MAX 123u     /* RFC 6455 5.5: control payload 125 - code */

enum ws_role { WS_ROLE_SERVER = 0, WS_ROLE_CLIENT = 1 };

/* The parts of a request head the server looks at. Strings are
 * NUL-terminated; a value longer than its buffer sets too_long. */
typedef struct ws_http_req {
    char method[16];
    char path[512];            /* without the query */
    unsigned http_major, http_minor;
    char host[256];
    char origin[256];
    int has_origin;
    char key[64];              /* Sec-WebSocket-Key */
    char version[16];          /* Sec-WebSocket-Version */
    int upgrade_websocket;     /* Upgrade: websocket */
    int connection_upgrade;    /* Connection: ... upgrade ... */
    int keep_alive;            /* the connection may carry another request */
    int has_body;
    int too_long;
} ws_http_req;

typedef struct ws_proto_cb {
    /* Server: a request head is complete. Answer with ws_proto_http_reply
     * or ws_proto_accept (now or later); nothing more is parsed until then. */
    void (*http_request)(void *ud, const ws_http_req *req);
    /* Both: the WebSocket is open. */
    void (*opened)(void *ud);
    /* Both: one whole text message. */
    void (*message)(void *ud, const uint8_t *msg, size_t len);
    /* Server (may be NULL): a message broke a limit; status is a pl_err
     * (PL_ERR_FRAME_TOO_LARGE, PL_ERR_MALFORMED) and text names the limit.
     * Called just before the close frame is queued, so the owner can send
     * the protocol's error object first. */
    void (*refuse)(void *ud, int status, const char *text);
    /* Both: nothing more will be read; close the socket once the output
     * has left. code/why: the close code sent or received and a reason for
     * logs (never NULL). Called once. */
    void (*finished)(void *ud, int code, const char *why);
} ws_proto_cb;

typedef struct ws_proto ws_proto;

/* out: where output goes (owned by the caller, outlives p). NULL when out
 * of memory. */
ws_proto *ws_proto_new(int role, uint32_t max_frame, struct evbuffer *out,
                       const ws_proto_cb *cb, void *ud);
void ws_proto_free(ws_proto *p);

/* Consume what can be consumed from in (drained as it is used). Callbacks
 * run from inside. Returns 0, or -1 once the protocol has finished. */
int ws_proto_feed(ws_proto *p, struct evbuffer *in);
/* Move queued frames into out, up to the owner's high-water mark (frames
 * stay in wslay's queue beyond it). */
void ws_proto_flush(ws_proto *p);
/* Bytes waiting: wslay's queue plus out. */
size_t ws_proto_out_queued(const ws_proto *p);
/* Stop reading frames (back-pressure) or resume. */
void ws_proto_pause(ws_proto *p, int paused);
/* out's high-water mark for ws_proto_flush (default 256 KiB). */
void ws_proto_set_out_high(ws_proto *p, size_t bytes);

/* Server: answer the pending request with status (e.g. 200, 404) and
 * headers (each "Name: value\r\n", may be NULL) and body; HEAD gets no
 * body. close: the connection ends after it (finished follows). */
void ws_http_reply(ws_proto *p, int status, const char *headers,
                   const char *content_type, const void *body, size_t body_len,
                   int close);
/* Server: accept the pending upgrade (101 with Sec-WebSocket-Accept). */
int ws_proto_accept(ws_proto *p, const char *extra_headers);
/* Validate an upgrade request's WebSocket headers (not Origin): 0, or an
 * HTTP status with a reason in why (400 bad key, 426 wrong version). */
int ws_http_check_upgrade(const ws_http_req *req, char *why, size_t whylen);

/* Client: write the upgrade request for host_header and path. */
int ws_proto_connect(ws_proto *p, const char *host_header, const char *path);
/* Client: why the handshake failed so far (the status line and body of a
 * refusal); "" once open. */
const char *ws_proto_refusal(const ws_proto *p);

/* Queue one text message. 0, or -1 when closing/closed or out of memory. */
int ws_proto_send_text(ws_proto *p, const uint8_t *msg, size_t len);
/* Queue a ping (keep-alive). */
int ws_proto_ping(ws_proto *p);
/* Start the close handshake with code and reason (truncated to
 * WS_CLOSE_REASON_MAX bytes at a UTF-8 boundary). Idempotent. */
void ws_proto_close(ws_proto *p, int code, const char *reason);
/* 1 once the WebSocket is open. */
int ws_proto_is_open(const ws_proto *p);
/* 1 once a close frame was sent (the owner then waits a bounded time for
 * the peer's). */
int ws_proto_close_sent(const ws_proto *p);

/* ---- one whole frame in memory (ws_frame.c): the ABI codec ---- */

/* A FIN text frame around payload, masked (client to server) or not, into
 * a malloc'd *out. */
int ws_frame_encode(int mask, const uint8_t *payload, size_t len, uint8_t **out, size_t *outlen);
/* The FIN text frame at the start of buf: PL_OK with its unmasked payload
 * in payload_out (room for min(len, max_frame) bytes) and *used the frame's
 * size; PL_ERR_AGAIN; PL_ERR_FRAME_TOO_LARGE (payload over max_frame, known
 * from the header alone); PL_ERR_MALFORMED (not a FIN text frame, masking
 * not as want_mask says, a non-minimal length). */
int ws_frame_decode(int want_mask, uint32_t max_frame, const uint8_t *buf, size_t len,
                    size_t *used, uint8_t *payload_out, size_t *payload_len);

/* Sec-WebSocket-Accept for key into out (29 bytes + NUL). */
int ws_accept_value(const char *key, char out[32]);

#endif
