/*
 * transport_grpcish.c — the "grpcish" client wire format: protobuf-c
 * messages (proto/grpcish.proto) in gRPC-style length-prefixed frames
 * (docs/protocol-grpcish.md):
 *
 *   byte 0      compression flag, 0 = uncompressed; anything else is refused
 *   bytes 1-4   big-endian length N of the protobuf message
 *   bytes 5..   one Request (client -> server) or Response (server -> client)
 *
 * This file is only the plugin's options and descriptor. The codec (the
 * conversion between those messages and pl_request / pl_response, and what
 * is checked where) is plugins/common/grpcish_conv.c, shared with
 * transport-grpc's native service; sockets, buffering, the error frame and
 * the close after bad input come from plugins/common/framed.c, shared with
 * transport-tcp.
 *
 * Prefix: gi_.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <parley/transport.h>

#include "framed.h"
#include "grpcish_conv.h"

#define GI_NAME "grpcish"

/* Codec settings, fixed for a server or client's lifetime. */
typedef struct gi_ctx {
    uint32_t max_frame;       /* whole frame, prefix included */
} gi_ctx;

/* ---------------------------------------------------------------- options */

static void gi_errf(char *err, size_t errlen, const char *fmt, const char *arg)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, arg);
}

/* Fill ctx from opt. options_json is the transport's config object; its
 * keys are "name" (the short name or a path, chosen by the loader, so any
 * string) and "tls" (added by the core, handled by framed.c). Anything else
 * is a config mistake worth naming, not ignoring. */
static int gi_ctx_init(gi_ctx *ctx, const pl_transport_options *opt,
                       char *err, size_t errlen)
{
    ctx->max_frame = (opt && opt->max_frame) ? opt->max_frame : PL_FRAME_DEFAULT;
    if (!opt || !opt->options_json)
        return PL_OK;

    int rc = PL_ERR_CONFIG;
    cJSON *root = cJSON_Parse(opt->options_json);
    if (!root) {
        gi_errf(err, errlen, "%s transport: options are not valid JSON", GI_NAME);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        gi_errf(err, errlen, "%s transport: options must be a JSON object", GI_NAME);
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it->string && strcmp(it->string, "name") == 0) {
            if (!cJSON_IsString(it)) {
                gi_errf(err, errlen, "%s transport: name: must be a string", GI_NAME);
                goto fail;
            }
            continue;
        }
        /* TLS settings: checked and used by framed.c. */
        if (it->string && strcmp(it->string, "tls") == 0)
            continue;
        if (err && errlen)
            snprintf(err, errlen, "%s transport: %s: unknown option (grpcish takes \"name\" and \"tls\")",
                     GI_NAME, it->string ? it->string : "?");
        goto fail;
    }
    rc = PL_OK;
fail:
    cJSON_Delete(root);
    return rc;
}

static void gi_ctx_free(void *ctx)
{
    free(ctx);
}

/* A heap copy for the framed layer, which frees it with gi_ctx_free. */
static int gi_ctx_new(const pl_transport_options *opt, gi_ctx **out,
                      char *err, size_t errlen)
{
    gi_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        gi_errf(err, errlen, "%s transport: out of memory", GI_NAME);
        return PL_ERR_NOMEM;
    }
    int rc = gi_ctx_init(ctx, opt, err, errlen);
    if (rc != PL_OK) {
        free(ctx);
        return rc;
    }
    *out = ctx;
    return PL_OK;
}

/* ------------------------------------------------------------------ codec */

/* The framed layer's codec: grpcish_conv.c with this server or client's
 * frame limit. */

static int gi_encode_request(const void *vctx, const pl_request *req,
                             uint8_t **out, size_t *len)
{
    return pl_grpcish_encode_request(((const gi_ctx *)vctx)->max_frame, req, out, len);
}

static int gi_encode_response(const void *vctx, const pl_response *resp,
                              uint8_t **out, size_t *len)
{
    return pl_grpcish_encode_response(((const gi_ctx *)vctx)->max_frame, resp, out, len);
}

static int gi_decode_request(const void *vctx, const uint8_t *buf, size_t len,
                             size_t *used, pl_request *out, void **scratch)
{
    return pl_grpcish_decode_request(((const gi_ctx *)vctx)->max_frame, buf, len,
                                     used, out, scratch);
}

static int gi_decode_response(const void *vctx, const uint8_t *buf, size_t len,
                              size_t *used, pl_response *out, void **scratch)
{
    return pl_grpcish_decode_response(((const gi_ctx *)vctx)->max_frame, buf, len,
                                      used, out, scratch);
}

static uint32_t gi_max_frame(const void *vctx)
{
    return ((const gi_ctx *)vctx)->max_frame;
}

static const pl_framed_codec gi_codec = {
    .encode_request = gi_encode_request,
    .encode_response = gi_encode_response,
    .decode_request = gi_decode_request,
    .decode_response = gi_decode_response,
    .free_scratch = pl_grpcish_free_scratch,
    .max_frame = gi_max_frame,
};

/* ------------------------------------------------- descriptor: codec half */

/* The descriptor's codec entry points read the options on every call: they
 * serve tools, tests and fuzzers, not the per-connection hot path (the
 * server and client halves build their gi_ctx once). */

static int gi_api_encode_request(const pl_transport_options *opt,
                                 const pl_request *req, uint8_t **out, size_t *len)
{
    gi_ctx c;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_encode_request(&c, req, out, len);
}

static int gi_api_encode_response(const pl_transport_options *opt,
                                  const pl_response *resp, uint8_t **out, size_t *len)
{
    gi_ctx c;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_encode_response(&c, resp, out, len);
}

static int gi_api_decode_request(const pl_transport_options *opt,
                                 const uint8_t *buf, size_t len, size_t *used,
                                 pl_request *out, void **scratch)
{
    gi_ctx c;
    *scratch = NULL;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_decode_request(&c, buf, len, used, out, scratch);
}

static int gi_api_decode_response(const pl_transport_options *opt,
                                  const uint8_t *buf, size_t len, size_t *used,
                                  pl_response *out, void **scratch)
{
    gi_ctx c;
    *scratch = NULL;
    int rc = gi_ctx_init(&c, opt, NULL, 0);
    return rc != PL_OK ? rc : gi_decode_response(&c, buf, len, used, out, scratch);
}

/* ------------------------------------------- descriptor: socket halves */

static int gi_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                           pl_transport_server **out, char *err, size_t errlen)
{
    gi_ctx *ctx = NULL;
    int rc = gi_ctx_new(opt, &ctx, err, errlen);
    if (rc != PL_OK)
        return rc;
    /* On success the server owns ctx; on failure it stays ours. */
    rc = pl_framed_server_start(host, opt, &gi_codec, ctx, gi_ctx_free,
                                out, err, errlen);
    if (rc != PL_OK)
        gi_ctx_free(ctx);
    return rc;
}

static int gi_client_connect(struct event_base *base, const pl_transport_options *opt,
                             const pl_transport_client_cb *cb, void *ud,
                             pl_transport_client **out, char *err, size_t errlen)
{
    gi_ctx *ctx = NULL;
    int rc = gi_ctx_new(opt, &ctx, err, errlen);
    if (rc != PL_OK)
        return rc;
    rc = pl_framed_client_connect(base, opt, &gi_codec, ctx, gi_ctx_free,
                                  cb, ud, out, err, errlen);
    if (rc != PL_OK)
        gi_ctx_free(ctx);
    return rc;
}

static const pl_transport_plugin gi_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = GI_NAME,
    .description = "protobuf-c messages in gRPC-style length-prefixed frames over TCP",
    .server_start = gi_server_start,
    .server_stop_accepting = pl_framed_server_stop_accepting,
    .server_free = pl_framed_server_free,
    .conn_send = pl_framed_conn_send,
    .conn_close = pl_framed_conn_close,
    .client_connect = gi_client_connect,
    .client_send = pl_framed_client_send,
    .client_free = pl_framed_client_free,
    .encode_request = gi_api_encode_request,
    .encode_response = gi_api_encode_response,
    .decode_request = gi_api_decode_request,
    .decode_response = gi_api_decode_response,
    .free_scratch = pl_grpcish_free_scratch,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &gi_plugin;
}
