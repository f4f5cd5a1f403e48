/*
 * tests/fuzz/fuzz_ws.c — the ws transport's byte intake: HTTP request
 * heads (libhttp-parser), the upgrade checks, then RFC 6455 frames
 * (libwslay) joined into messages and decoded as JSON requests, exactly
 * as the server half runs them (plugins/transport-ws/ws_proto.c), with no
 * socket.
 *
 * Input: the first byte picks max_frame (64 << (b % 8) bytes, so limits
 * are hit), the rest is what a client sends, fed in chunks whose sizes
 * come from the second byte (a head or a frame split anywhere). Every
 * request head is answered like the server does: an upgrade at /ws that
 * passes ws_http_check_upgrade is accepted, anything else gets a 404. The
 * properties: no crash, no leak, no message over max_frame delivered, and
 * output bounded by what the input could cause.
 */
#include <string.h>

#include <event2/buffer.h>

#include "codec_scratch.h"
#include "fuzz.h"
#include "json_codec.h"
#include "ws_proto.h"

typedef struct fz {
    ws_proto *p;
    uint32_t max_frame;
    int finished;
} fz;

static void fz_http(void *ud, const ws_http_req *req)
{
    fz *f = ud;
    char why[200];

    if (strcmp(req->path, "/ws") == 0 && ws_http_check_upgrade(req, why, sizeof why) == 0) {
        FUZZ_CHECK(ws_proto_accept(f->p, NULL) == 0, "accept of a checked upgrade failed");
        return;
    }
    ws_http_reply(f->p, 404, NULL, "text/plain", "no\n", 3, !req->keep_alive);
}

static void fz_message(void *ud, const uint8_t *msg, size_t len)
{
    fz *f = ud;
    void *scratch = NULL;
    pl_request req;

    FUZZ_CHECK(len <= f->max_frame, "a %zu-byte message passed max_frame %u", len, f->max_frame);
    (void)pl_json_decode_request_msg(f->max_frame, msg, len, &req, &scratch);
    pl_scratch_free(scratch);
    /* Answer, as the core does, so output paths run too. */
    (void)ws_proto_send_text(f->p, (const uint8_t *)"{\"m\":\"ping\",\"rid\":1,\"status\":0}", 32);
}

static void fz_refuse(void *ud, int status, const char *text)
{
    fz *f = ud;

    (void)status;
    (void)ws_proto_send_text(f->p, (const uint8_t *)text, strlen(text));
}

static void fz_finished(void *ud, int code, const char *why)
{
    fz *f = ud;

    (void)code;
    FUZZ_CHECK(why != NULL, "finished without a reason");
    f->finished = 1;
}

static const ws_proto_cb fz_cb = {
    .http_request = fz_http,
    .message = fz_message,
    .refuse = fz_refuse,
    .finished = fz_finished,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evbuffer *in, *out;
    fz f;
    size_t chunk, at = 2;

    if (size < 2)
        return 0;
    memset(&f, 0, sizeof f);
    f.max_frame = 64u << (data[0] % 8);
    chunk = 1 + data[1] % 64;
    in = evbuffer_new();
    out = evbuffer_new();
    f.p = ws_proto_new(WS_ROLE_SERVER, f.max_frame, out, &fz_cb, &f);
    FUZZ_CHECK(in && out && f.p, "out of memory");
    while (at < size && !f.finished) {
        size_t n = size - at < chunk ? size - at : chunk;

        evbuffer_add(in, data + at, n);
        at += n;
        ws_proto_feed(f.p, in);
        ws_proto_flush(f.p);
        /* The owner drains the output; bounded input, bounded output. */
        FUZZ_CHECK(evbuffer_get_length(out) <= 64 * size + 65536,
                   "%zu bytes of output for %zu of input", evbuffer_get_length(out), size);
        evbuffer_drain(out, evbuffer_get_length(out));
    }
    ws_proto_free(f.p);
    evbuffer_free(in);
    evbuffer_free(out);
    return 0;
}
