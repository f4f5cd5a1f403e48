/*
 * plugins/common/framed.h — the socket half shared by transports whose wire
 * format is a stream of self-delimiting frames over one TCP connection
 * (transport-tcp's binary and JSON codecs, transport-grpcish).
 *
 * A plugin supplies a codec (pure functions: whole frame in, struct out, and
 * back) and gets the server half (listen, accept, per-connection buffering,
 * frame limits, error frame and close on bad input) and the client half
 * (non-blocking connect, queueing before connect, frame dispatch) built on
 * libevent bufferevents. This is plugin-side support code: it includes only
 * the public ABI headers, never core/.
 *
 * TLS: a "tls" member of opt->options_json (see parley/transport.h) makes
 * both halves run the same frames inside TLS; the plugin only has to accept
 * the key in its own option checks.
 *
 * Prefix: pl_framed_.
 */
#ifndef PL_PLUGINS_FRAMED_H
#define PL_PLUGINS_FRAMED_H

#include <parley/transport.h>

typedef struct pl_framed_codec {
    /* Encode one whole frame into a malloc'd buffer. */
    int (*encode_request)(const void *ctx, const pl_request *req, uint8_t **out, size_t *len);
    int (*encode_response)(const void *ctx, const pl_response *resp, uint8_t **out, size_t *len);
    /* Decode the frame at buf[0..len). PL_OK + *used, PL_ERR_AGAIN (need more
     * bytes; must be detectable without reading past len), PL_ERR_MALFORMED,
     * or PL_ERR_FRAME_TOO_LARGE (as soon as a length prefix or the buffered
     * bytes exceed max_frame). Decoded pointers live in *scratch. */
    int (*decode_request)(const void *ctx, const uint8_t *buf, size_t len, size_t *used,
                          pl_request *out, void **scratch);
    int (*decode_response)(const void *ctx, const uint8_t *buf, size_t len, size_t *used,
                           pl_response *out, void **scratch);
    void (*free_scratch)(void *scratch);
    /* Frame limit the codec enforces, bytes. */
    uint32_t (*max_frame)(const void *ctx);
} pl_framed_codec;

/* Server half. codec_ctx is owned by the caller and must outlive the server
 * (free it after pl_framed_server_free). */
/* On success _start/_connect own codec_ctx and their _free calls free_ctx
 * (may be NULL); on failure the caller still owns it. */
int pl_framed_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                           const pl_framed_codec *codec, const void *codec_ctx,
                           void (*free_ctx)(void *codec_ctx),
                           pl_transport_server **out, char *err, size_t errlen);
void pl_framed_server_stop_accepting(pl_transport_server *srv);
void pl_framed_server_free(pl_transport_server *srv);   /* also calls free_ctx */
int pl_framed_conn_send(pl_transport_conn *conn, const pl_response *resp);
void pl_framed_conn_close(pl_transport_conn *conn);

/* Client half. */
int pl_framed_client_connect(struct event_base *base, const pl_transport_options *opt,
                             const pl_framed_codec *codec, const void *codec_ctx,
                             void (*free_ctx)(void *codec_ctx),
                             const pl_transport_client_cb *cb, void *ud,
                             pl_transport_client **out, char *err, size_t errlen);
int pl_framed_client_send(pl_transport_client *cli, const pl_request *req);
void pl_framed_client_free(pl_transport_client *cli);   /* also calls free_ctx */

#endif
