/*
 * plugins/transport-ws/ws_frame.c — one whole RFC 6455 frame in memory, for
 * the transport ABI's codec members (tools, tests, fuzzers): a request is
 * one masked text frame as a client sends it, a response one unmasked text
 * frame as the server sends it, each carrying one JSON object. The live
 * halves go through wslay's event API instead (ws_proto.c); these are the
 * same bytes.
 *
 * libwslay's frame API writes and reads the frame; the only thing read by
 * hand is the header's length fields, before wslay sees the frame, to
 * answer "need more bytes" and "over max_frame" without buffering a byte
 * of a payload that could never be accepted (and to say how many bytes
 * the frame took). A masked frame from encode gets a key derived from its
 * payload, so the same request always encodes to the same bytes (the ABI's
 * round trips and docs/protocol.md's sizes need that); the client half
 * masks with a random key per frame, as RFC 6455 5.3 requires of a
 * browser-facing client.
 */
#include "ws_proto.h"

#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include <parley/common.h>

typedef struct frame_io {
    const uint8_t *in;
    size_t in_len, in_off;
    const uint8_t *payload;     /* encode: for the derived mask key */
    size_t payload_len;
    uint8_t *out;               /* encode: room for the whole frame */
    size_t out_len, out_cap;
} frame_io;

static ssize_t fr_send(const uint8_t *data, size_t len, int flags, void *ud)
{
    frame_io *io = ud;

    (void)flags;
    if (len > io->out_cap - io->out_len)
        return WSLAY_ERR_WANT_WRITE;
    memcpy(io->out + io->out_len, data, len);
    io->out_len += len;
    return (ssize_t)len;
}

static ssize_t fr_recv(uint8_t *buf, size_t len, int flags, void *ud)
{
    frame_io *io = ud;
    size_t n = io->in_len - io->in_off;

    (void)flags;
    if (n > len)
        n = len;
    memcpy(buf, io->in + io->in_off, n);
    io->in_off += n;
    return (ssize_t)n;
}

/* FNV-1a of the payload: a fixed key per payload (see the top comment). */
static int fr_genmask(uint8_t *buf, size_t len, void *ud)
{
    frame_io *io = ud;
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < io->payload_len; i++)
        h = (h ^ io->payload[i]) * 16777619u;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(h >> (8 * (i % 4)));
    return 0;
}

static const struct wslay_frame_callbacks fr_callbacks = { fr_send, fr_recv, fr_genmask };

int ws_frame_encode(int mask, const uint8_t *payload, size_t len, uint8_t **out, size_t *outlen)
{
    frame_io io = { NULL, 0, 0, payload, len, NULL, 0, len + 14 };
    struct wslay_frame_iocb iocb;
    wslay_frame_context_ptr fc;
    ssize_t r;

    *out = NULL;
    *outlen = 0;
    io.out = malloc(io.out_cap);
    if (!io.out || wslay_frame_context_init(&fc, &fr_callbacks, &io) != 0) {
        free(io.out);
        return PL_ERR_NOMEM;
    }
    memset(&iocb, 0, sizeof iocb);
    iocb.fin = 1;
    iocb.opcode = WSLAY_TEXT_FRAME;
    iocb.mask = mask ? 1 : 0;
    iocb.data = payload;
    iocb.data_length = len;
    iocb.payload_length = len;
    /* The buffer holds the whole frame, so one call writes it all. */
    r = wslay_frame_send(fc, &iocb);
    wslay_frame_context_free(fc);
    if (r < 0 || (size_t)r != len) {
        free(io.out);
        return PL_ERR_INTERNAL;
    }
    *out = io.out;
    *outlen = io.out_len;
    return PL_OK;
}

int ws_frame_decode(int want_mask, uint32_t max_frame, const uint8_t *buf, size_t len,
                    size_t *used, uint8_t *payload_out, size_t *payload_len)
{
    frame_io io = { buf, 0, 0, NULL, 0, NULL, 0, 0 };
    wslay_frame_context_ptr fc;
    size_t hdr, got = 0;
    uint64_t plen;
    int rc = PL_OK;

    if (len < 2)
        return PL_ERR_AGAIN;
    plen = buf[1] & 0x7fu;
    hdr = 2 + (plen == 126 ? 2 : plen == 127 ? 8 : 0) + ((buf[1] & 0x80u) ? 4 : 0);
    if (len < hdr)
        return PL_ERR_AGAIN;
    if (plen == 126) {
        plen = ((uint64_t)buf[2] << 8) | buf[3];
    } else if (plen == 127) {
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = (plen << 8) | buf[2 + i];
    }
    /* Only whole one-frame text messages carry requests and answers. */
    if ((buf[0] & 0x80u) == 0 || (buf[0] & 0x70u) != 0 || (buf[0] & 0x0fu) != WSLAY_TEXT_FRAME ||
        ((buf[1] & 0x80u) != 0) != (want_mask != 0))
        return PL_ERR_MALFORMED;
    if (plen > max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    if (len - hdr < plen)
        return PL_ERR_AGAIN;
    io.in_len = hdr + (size_t)plen;
    if (wslay_frame_context_init(&fc, &fr_callbacks, &io) != 0)
        return PL_ERR_NOMEM;
    /* wslay checks what the peek did not: minimal length encodings. */
    for (;;) {
        struct wslay_frame_iocb iocb;
        ssize_t r;

        memset(&iocb, 0, sizeof iocb);
        r = wslay_frame_recv(fc, &iocb);
        if (r < 0 || got + iocb.data_length > plen) {
            rc = PL_ERR_MALFORMED;
            break;
        }
        memcpy(payload_out + got, iocb.data, iocb.data_length);
        got += iocb.data_length;
        if (got == plen)
            break;
        if (iocb.data_length == 0) {
            rc = PL_ERR_MALFORMED;
            break;
        }
    }
    wslay_frame_context_free(fc);
    if (rc == PL_OK) {
        *used = hdr + (size_t)plen;
        *payload_len = got;
    }
    return rc;
}
