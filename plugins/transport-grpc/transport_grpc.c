/*
 * transport_grpc.c — real gRPC over HTTP/2 cleartext (libnghttp2): the
 * descriptor, options, status mapping and address helpers (grpc_int.h says
 * which two services a connection carries).
 *
 * The codec entry points of the descriptor encode one gRPC length-prefixed
 * message of the native service:
 *
 *   byte 0      compression flag, 0 = uncompressed (nothing else is accepted)
 *   bytes 1-4   big-endian length N
 *   bytes 5..   one grpcish Request (client -> server) or Response
 *
 * which is exactly a DATA payload of /parley.grpcish.Parley/Call. The
 * HTTP/2 framing around it (HEADERS, DATA, trailers) is the socket halves'
 * business, not the codec's. The codec itself is plugins/common/grpcish_conv.c,
 * the same one transport-grpcish frames over plain TCP.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>

#include "grpc_int.h"

/* ---------------------------------------------------------------- options */

/* options_json is the transport's config object; the only key is "name"
 * (short name or path, so any string). Anything else is named, not ignored. */
int gr_opts_init(gr_opts *o, const pl_transport_options *opt, char *err, size_t errlen)
{
    o->max_msg = (opt && opt->max_frame) ? opt->max_frame : PL_FRAME_DEFAULT;
    if (o->max_msg < GR_PREFIX + 1)
        o->max_msg = GR_PREFIX + 1;
    if (!opt || !opt->options_json)
        return PL_OK;

    int rc = PL_ERR_CONFIG;
    cJSON *root = cJSON_Parse(opt->options_json);
    if (!root || !cJSON_IsObject(root)) {
        if (err && errlen)
            snprintf(err, errlen, "%s transport: options must be a JSON object", GR_NAME);
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it->string && strcmp(it->string, "name") == 0 && cJSON_IsString(it))
            continue;
        if (err && errlen)
            snprintf(err, errlen, "%s transport: %s: unknown option (grpc takes only \"name\")",
                     GR_NAME, it->string ? it->string : "?");
        goto fail;
    }
    rc = PL_OK;
fail:
    cJSON_Delete(root);
    return rc;
}

/* ---------------------------------------------------------- status codes */

int gr_status_of(int e)
{
    switch (e) {
    case PL_OK: return GR_OK;
    case PL_ERR_INTERNAL: case PL_ERR_CORRUPT: case PL_ERR_IO: case PL_ERR_MALFORMED:
    case PL_ERR_AGAIN: case PL_ERR_CONFIG: case PL_ERR_PLUGIN:
        return GR_INTERNAL;
    case PL_ERR_NOMEM: case PL_ERR_BUSY: case PL_ERR_RATE_LIMITED: case PL_ERR_FRAME_TOO_LARGE:
        return GR_RESOURCE_EXHAUSTED;
    case PL_ERR_NOT_FOUND: case PL_ERR_NO_SUCH_USER: case PL_ERR_NO_SUCH_MESSAGE:
        return GR_NOT_FOUND;
    case PL_ERR_INVALID: case PL_ERR_USERNAME: case PL_ERR_PASSWORD: case PL_ERR_BODY:
    case PL_ERR_PATTERN: case PL_ERR_PAGE: case PL_ERR_TOO_MANY_IDS:
        return GR_INVALID_ARGUMENT;
    case PL_ERR_UNSUPPORTED: return GR_UNIMPLEMENTED;
    case PL_ERR_USER_EXISTS: return GR_ALREADY_EXISTS;
    case PL_ERR_AUTH: case PL_ERR_NOT_LOGGED_IN: return GR_UNAUTHENTICATED;
    case PL_ERR_STALE_REQUEST: return GR_FAILED_PRECONDITION;
    case PL_ERR_NOT_PRIMARY: return GR_PERMISSION_DENIED;
    case PL_ERR_UNAVAILABLE: return GR_UNAVAILABLE;
    case PL_ERR_TIMEOUT: return GR_DEADLINE_EXCEEDED;
    default: return GR_UNKNOWN;
    }
}

int gr_err_of(int s)
{
    switch (s) {
    case GR_OK: return PL_OK;
    case GR_DEADLINE_EXCEEDED: return PL_ERR_TIMEOUT;
    case GR_RESOURCE_EXHAUSTED: return PL_ERR_FRAME_TOO_LARGE;
    case GR_UNIMPLEMENTED: return PL_ERR_UNSUPPORTED;
    case GR_PERMISSION_DENIED: return PL_ERR_NOT_PRIMARY;
    case GR_UNAUTHENTICATED: return PL_ERR_NOT_LOGGED_IN;
    case GR_INVALID_ARGUMENT: return PL_ERR_INVALID;
    case GR_NOT_FOUND: return PL_ERR_NOT_FOUND;
    case GR_INTERNAL: return PL_ERR_MALFORMED;
    default: return PL_ERR_UNAVAILABLE; /* cancelled, unknown, unavailable: retry */
    }
}

/* ------------------------------------------------------------- addresses */

/* getaddrinfo blocks for names: acceptable at server start and connect,
 * and configs name servers by address. */
int gr_resolve(const char *host, uint16_t port, int passive, struct sockaddr_storage *ss,
               socklen_t *sslen, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portbuf[8];

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    snprintf(portbuf, sizeof portbuf, "%u", (unsigned)port);
    int e = getaddrinfo(host && *host ? host : NULL, portbuf, &hints, &res);
    if (e != 0 || !res) {
        if (err && errlen)
            snprintf(err, errlen, "cannot resolve address \"%s\": %s", host ? host : "",
                     e ? gai_strerror(e) : "no address");
        if (res)
            freeaddrinfo(res);
        return PL_ERR_CONFIG;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return PL_OK;
}

void gr_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
        snprintf(buf, len, "%s:%u", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
        snprintf(buf, len, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, len, "?");
    }
}

/* ------------------------------------------------- descriptor: codec half */

static int gr_api_encode_request(const pl_transport_options *opt, const pl_request *req,
                                 uint8_t **out, size_t *len)
{
    gr_opts o;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : pl_grpcish_encode_request(o.max_msg, req, out, len);
}

static int gr_api_encode_response(const pl_transport_options *opt, const pl_response *resp,
                                  uint8_t **out, size_t *len)
{
    gr_opts o;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : pl_grpcish_encode_response(o.max_msg, resp, out, len);
}

static int gr_api_decode_request(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                                 size_t *used, pl_request *out, void **scratch)
{
    gr_opts o;
    *scratch = NULL;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : pl_grpcish_decode_request(o.max_msg, buf, len, used, out, scratch);
}

static int gr_api_decode_response(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                                  size_t *used, pl_response *out, void **scratch)
{
    gr_opts o;
    *scratch = NULL;
    int rc = gr_opts_init(&o, opt, NULL, 0);
    return rc != PL_OK ? rc : pl_grpcish_decode_response(o.max_msg, buf, len, used, out, scratch);
}

static const pl_transport_plugin gr_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = GR_NAME,
    .description = "gRPC over HTTP/2 cleartext: the prototype's chat.ChatService and parley's own service",
    .server_start = gr_server_start,
    .server_stop_accepting = gr_server_stop_accepting,
    .server_free = gr_server_free,
    .conn_send = gr_conn_send,
    .conn_close = gr_conn_close,
    .client_connect = gr_client_connect,
    .client_send = gr_client_send,
    .client_free = gr_client_free,
    .encode_request = gr_api_encode_request,
    .encode_response = gr_api_encode_response,
    .decode_request = gr_api_decode_request,
    .decode_response = gr_api_decode_response,
    .free_scratch = pl_grpcish_free_scratch,
    .server_serving = gr_server_serving,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &gr_plugin;
}
