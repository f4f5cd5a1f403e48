/*
 * plugins/transport-tcp/transport_tcp.c — the "tcp" transport plugin: framed
 * TCP with a choice of two codecs,
 *
 *   {"name":"tcp","codec":"binary"}   compact length-prefixed binary (default)
 *   {"name":"tcp","codec":"json"}     one JSON object per line, for nc and scripts
 *
 * The sockets are plugins/common/framed.c; this file only picks the codec
 * from options_json and adapts the codec functions to the two interfaces
 * (framed.h's, which take a parsed context, and the ABI's, which take the
 * options and so parse options_json on every call — they are for tools and
 * tests, not the hot path). Wire formats: docs/protocol.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <parley/transport.h>

#include "framed.h"
#include "tcp_codec.h"

enum tcp_codec_kind { TCP_CODEC_BINARY = 0, TCP_CODEC_JSON = 1 };

typedef struct tcp_ctx {
    int kind;            /* enum tcp_codec_kind */
    uint32_t max_frame;  /* resolved: never 0 */
} tcp_ctx;

static const char *const tcp_codec_names[] = { "binary", "json" };

/* Parse options into ctx. The core checks the config file's own keys and
 * leaves the transport object's keys to the plugin, so a misspelt key
 * ("codek") is reported here by name rather than silently ignored. */
static int tcp_parse_options(const pl_transport_options *opt, tcp_ctx *ctx,
                             char *err, size_t errlen)
{
    cJSON *root = NULL, *codec;
    int rc = PL_OK;

    ctx->kind = TCP_CODEC_BINARY;
    ctx->max_frame = opt && opt->max_frame ? opt->max_frame : PL_FRAME_DEFAULT;
    if (!opt || !opt->options_json || !*opt->options_json)
        return PL_OK;
    root = cJSON_Parse(opt->options_json);
    if (!cJSON_IsObject(root)) {
        if (err && errlen)
            snprintf(err, errlen, "transport tcp: options are not a JSON object: %.80s",
                     opt->options_json);
        rc = PL_ERR_CONFIG;
        goto done;
    }
    for (const cJSON *m = root->child; m; m = m->next) {
        /* "tls" is checked and used by framed.c (the core adds it from the
         * config's "tls" object). */
        if (m->string && (strcmp(m->string, "name") == 0 || strcmp(m->string, "codec") == 0 ||
                          strcmp(m->string, "tls") == 0))
            continue;
        if (err && errlen)
            snprintf(err, errlen, "transport tcp: unknown option \"%.40s\" (known: name, codec, tls)",
                     m->string ? m->string : "");
        rc = PL_ERR_CONFIG;
        goto done;
    }
    codec = cJSON_GetObjectItemCaseSensitive(root, "codec");
    if (!codec || cJSON_IsNull(codec))
        goto done;
    if (cJSON_IsString(codec) && strcmp(codec->valuestring, "binary") == 0) {
        ctx->kind = TCP_CODEC_BINARY;
    } else if (cJSON_IsString(codec) && strcmp(codec->valuestring, "json") == 0) {
        ctx->kind = TCP_CODEC_JSON;
    } else {
        if (err && errlen)
            snprintf(err, errlen,
                     "transport tcp: unknown codec %s%.40s%s (use \"binary\" or \"json\")",
                     cJSON_IsString(codec) ? "\"" : "",
                     cJSON_IsString(codec) ? codec->valuestring : "(not a string)",
                     cJSON_IsString(codec) ? "\"" : "");
        rc = PL_ERR_CONFIG;
    }
done:
    cJSON_Delete(root);
    return rc;
}

/* ---- framed.h codec adapters (ctx already parsed) ---- */

static int fr_encode_request(const void *c, const pl_request *req, uint8_t **out, size_t *len)
{
    const tcp_ctx *ctx = c;

    return ctx->kind == TCP_CODEC_JSON
               ? pl_json_encode_request(ctx->max_frame, req, out, len)
               : tcp_bin_encode_request(ctx->max_frame, req, out, len);
}

static int fr_encode_response(const void *c, const pl_response *resp, uint8_t **out, size_t *len)
{
    const tcp_ctx *ctx = c;

    return ctx->kind == TCP_CODEC_JSON
               ? pl_json_encode_response(ctx->max_frame, resp, out, len)
               : tcp_bin_encode_response(ctx->max_frame, resp, out, len);
}

static int fr_decode_request(const void *c, const uint8_t *buf, size_t len, size_t *used,
                             pl_request *out, void **scratch)
{
    const tcp_ctx *ctx = c;

    return ctx->kind == TCP_CODEC_JSON
               ? pl_json_decode_request(ctx->max_frame, buf, len, used, out, scratch)
               : tcp_bin_decode_request(ctx->max_frame, buf, len, used, out, scratch);
}

static int fr_decode_response(const void *c, const uint8_t *buf, size_t len, size_t *used,
                              pl_response *out, void **scratch)
{
    const tcp_ctx *ctx = c;

    return ctx->kind == TCP_CODEC_JSON
               ? pl_json_decode_response(ctx->max_frame, buf, len, used, out, scratch)
               : tcp_bin_decode_response(ctx->max_frame, buf, len, used, out, scratch);
}

static uint32_t fr_max_frame(const void *c)
{
    return ((const tcp_ctx *)c)->max_frame;
}

static const pl_framed_codec tcp_framed_codec = {
    .encode_request = fr_encode_request,
    .encode_response = fr_encode_response,
    .decode_request = fr_decode_request,
    .decode_response = fr_decode_response,
    .free_scratch = pl_scratch_free,
    .max_frame = fr_max_frame,
};

static tcp_ctx *tcp_ctx_new(const pl_transport_options *opt, char *err, size_t errlen, int *rc)
{
    tcp_ctx parsed, *ctx;

    *rc = tcp_parse_options(opt, &parsed, err, errlen);
    if (*rc != PL_OK)
        return NULL;
    ctx = malloc(sizeof *ctx);
    if (!ctx) {
        if (err && errlen)
            snprintf(err, errlen, "transport tcp: out of memory");
        *rc = PL_ERR_NOMEM;
        return NULL;
    }
    *ctx = parsed;
    return ctx;
}

static void tcp_ctx_free(void *ctx)
{
    free(ctx);
}

/* ---- server half ---- */

static int tcp_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                            pl_transport_server **out, char *err, size_t errlen)
{
    int rc;
    tcp_ctx *ctx = tcp_ctx_new(opt, err, errlen, &rc);

    *out = NULL;
    if (!ctx)
        return rc;
    rc = pl_framed_server_start(host, opt, &tcp_framed_codec, ctx, tcp_ctx_free, out,
                                err, errlen);
    if (rc != PL_OK) {
        free(ctx);
        return rc;
    }
    if (host->log)
        host->log(host->ud, PL_LOG_INFO, "listening on %s:%u (tcp/%s, max_frame %u bytes)",
                  opt->host ? opt->host : "127.0.0.1", (unsigned)opt->port,
                  tcp_codec_names[ctx->kind], ctx->max_frame);
    return PL_OK;
}

/* ---- client half ---- */

static int tcp_client_connect(struct event_base *base, const pl_transport_options *opt,
                              const pl_transport_client_cb *cb, void *ud,
                              pl_transport_client **out, char *err, size_t errlen)
{
    int rc;
    tcp_ctx *ctx = tcp_ctx_new(opt, err, errlen, &rc);

    *out = NULL;
    if (!ctx)
        return rc;
    rc = pl_framed_client_connect(base, opt, &tcp_framed_codec, ctx, tcp_ctx_free, cb, ud,
                                  out, err, errlen);
    if (rc != PL_OK)
        free(ctx);
    return rc;
}

/* ---- ABI codec: options parsed per call ---- */

static int abi_encode_request(const pl_transport_options *opt, const pl_request *req,
                              uint8_t **out, size_t *len)
{
    tcp_ctx ctx;
    int rc = tcp_parse_options(opt, &ctx, NULL, 0);

    return rc != PL_OK ? rc : fr_encode_request(&ctx, req, out, len);
}

static int abi_encode_response(const pl_transport_options *opt, const pl_response *resp,
                               uint8_t **out, size_t *len)
{
    tcp_ctx ctx;
    int rc = tcp_parse_options(opt, &ctx, NULL, 0);

    return rc != PL_OK ? rc : fr_encode_response(&ctx, resp, out, len);
}

static int abi_decode_request(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                              size_t *used, pl_request *out, void **scratch)
{
    tcp_ctx ctx;
    int rc = tcp_parse_options(opt, &ctx, NULL, 0);

    *scratch = NULL;
    return rc != PL_OK ? rc : fr_decode_request(&ctx, buf, len, used, out, scratch);
}

static int abi_decode_response(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                               size_t *used, pl_response *out, void **scratch)
{
    tcp_ctx ctx;
    int rc = tcp_parse_options(opt, &ctx, NULL, 0);

    *scratch = NULL;
    return rc != PL_OK ? rc : fr_decode_response(&ctx, buf, len, used, out, scratch);
}

static const pl_transport_plugin tcp_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = "tcp",
    .description = "TCP, length-prefixed binary or newline-delimited JSON frames",
    .server_start = tcp_server_start,
    .server_stop_accepting = pl_framed_server_stop_accepting,
    .server_free = pl_framed_server_free,
    .conn_send = pl_framed_conn_send,
    .conn_close = pl_framed_conn_close,
    .client_connect = tcp_client_connect,
    .client_send = pl_framed_client_send,
    .client_free = pl_framed_client_free,
    .encode_request = abi_encode_request,
    .encode_response = abi_encode_response,
    .decode_request = abi_decode_request,
    .decode_response = abi_decode_response,
    .free_scratch = pl_scratch_free,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &tcp_plugin;
}
