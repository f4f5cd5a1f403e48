/*
 * plugins/transport-ws/transport_ws.c — the "ws" transport plugin:
 * WebSocket (RFC 6455) carrying the tcp/json objects, one per text message,
 * and serving the browser client (web/) beside the socket:
 *
 *   GET /              the web client (index.html and its files)
 *   GET /cluster.json  the servers, their WebSocket URLs and the primary
 *   GET /ws            the WebSocket (Origin checked against an allow-list)
 *
 * Options (the transport object in the config; docs/operations.md):
 *   {"name": "ws", "origins": ["https://chat.example.com"],
 *    "web_root": "/srv/parley-web", "ping_interval_s": 30}
 * plus "tls", added by the core from the config's "tls" object (wss).
 *
 * Framing is libwslay's, HTTP/1.1 parsing libhttp-parser's (ws_proto.c);
 * the JSON objects are plugins/common/json_codec.c's, shared with
 * transport-tcp: one spec, docs/protocol.md. This file parses the options
 * and holds the descriptor and the ABI codec, whose frames are whole
 * WebSocket frames (ws_frame.c).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec_scratch.h"
#include "json_codec.h"
#include "ws_int.h"
#include "ws_proto.h"

static void opt_err(char *err, size_t errlen, const char *key, const char *what)
{
    if (err && errlen)
        snprintf(err, errlen, "transport ws: %s: %s", key, what);
}

/* An Origin as browsers serialise it: scheme "://" host [":" port], no path.
 * Stored lower-case, as browsers send it. */
static int origin_ok(const char *s)
{
    const char *h;

    if (strncmp(s, "http://", 7) == 0)
        h = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        h = s + 8;
    else
        return 0;
    if (!*h || strlen(s) > WS_ORIGIN_LEN_MAX)
        return 0;
    for (; *h; h++)
        if (!(isalnum((unsigned char)*h) || strchr(".-:[]", *h)))
            return 0;
    return 1;
}

void ws_opts_clear(ws_opts *o)
{
    for (size_t i = 0; i < o->n_origins; i++)
        free(o->origins[i]);
    free(o->web_root);
    memset(o, 0, sizeof *o);
}

int ws_opts_parse(const pl_transport_options *opt, ws_opts *o, char *err, size_t errlen)
{
    cJSON *root = NULL;
    const cJSON *m;
    int rc = PL_ERR_CONFIG;

    memset(o, 0, sizeof *o);
    o->max_frame = opt && opt->max_frame ? opt->max_frame : PL_FRAME_DEFAULT;
    o->ping_interval_s = WS_PING_DEFAULT_S;
    if (!opt || !opt->options_json || !*opt->options_json)
        return PL_OK;
    root = cJSON_Parse(opt->options_json);
    if (!cJSON_IsObject(root)) {
        opt_err(err, errlen, "options", "not a JSON object");
        goto done;
    }
    for (m = root->child; m; m = m->next) {
        const char *k = m->string ? m->string : "";

        if (strcmp(k, "name") == 0) {
            continue;
        } else if (strcmp(k, "tls") == 0) {
            o->tls = 1; /* checked by pl_tls_opts_parse when serving */
        } else if (strcmp(k, "origins") == 0) {
            const cJSON *e;

            if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) > (int)WS_ORIGINS_MAX) {
                opt_err(err, errlen, "origins", "must be a list of at most 32 origins, "
                        "e.g. [\"https://chat.example.com\"]");
                goto done;
            }
            cJSON_ArrayForEach(e, m) {
                char *v;

                if (!cJSON_IsString(e) || !origin_ok(e->valuestring)) {
                    char what[300];
                    snprintf(what, sizeof what, "%s%.200s%s is not an origin (scheme://host[:port], "
                             "http or https, no path)", cJSON_IsString(e) ? "\"" : "",
                             cJSON_IsString(e) ? e->valuestring : "a non-string",
                             cJSON_IsString(e) ? "\"" : "");
                    opt_err(err, errlen, "origins", what);
                    goto done;
                }
                if (!(v = strdup(e->valuestring))) {
                    opt_err(err, errlen, "origins", "out of memory");
                    goto done;
                }
                for (char *c = v; *c; c++)
                    *c = (char)tolower((unsigned char)*c);
                o->origins[o->n_origins++] = v;
            }
        } else if (strcmp(k, "web_root") == 0) {
            if (!cJSON_IsString(m) || !m->valuestring[0] || strlen(m->valuestring) > 4000) {
                opt_err(err, errlen, "web_root", "must be a directory path");
                goto done;
            }
            if (!(o->web_root = strdup(m->valuestring))) {
                opt_err(err, errlen, "web_root", "out of memory");
                goto done;
            }
        } else if (strcmp(k, "ping_interval_s") == 0) {
            if (!cJSON_IsNumber(m) || m->valuedouble < 0 || m->valuedouble > WS_PING_MAX_S ||
                m->valuedouble != (double)(uint32_t)m->valuedouble) {
                opt_err(err, errlen, "ping_interval_s", "must be an integer 0-3600 (seconds; 0 = off)");
                goto done;
            }
            o->ping_interval_s = (uint32_t)m->valuedouble;
        } else {
            char what[200];
            snprintf(what, sizeof what, "unknown option (known: name, origins, web_root, "
                     "ping_interval_s, tls)");
            opt_err(err, errlen, k, what);
            goto done;
        }
    }
    rc = PL_OK;
done:
    cJSON_Delete(root);
    if (rc != PL_OK)
        ws_opts_clear(o);
    return rc;
}

/* ---- the ABI codec: one message's payload ---- */

static int strip_newline(int rc, uint8_t **out, size_t *len)
{
    if (rc == PL_OK && *len > 0 && (*out)[*len - 1] == '\n')
        (*len)--;
    return rc;
}

int ws_encode_request(uint32_t max_frame, const pl_request *req, uint8_t **out, size_t *len)
{
    return strip_newline(pl_json_encode_request(max_frame, req, out, len), out, len);
}

int ws_encode_response(uint32_t max_frame, const pl_response *resp, uint8_t **out, size_t *len)
{
    return strip_newline(pl_json_encode_response(max_frame, resp, out, len), out, len);
}

static uint32_t abi_max_frame(const pl_transport_options *opt)
{
    return opt && opt->max_frame ? opt->max_frame : PL_FRAME_DEFAULT;
}

/* The ABI codec's frame is a whole WebSocket frame (ws_frame.c): a masked
 * text frame for a request, an unmasked one for a response. */
static int abi_encode(int mask, int rc, uint8_t **out, size_t *len)
{
    uint8_t *json = *out;
    size_t n = *len;

    if (rc != PL_OK)
        return rc;
    rc = ws_frame_encode(mask, json, n, out, len);
    free(json);
    return rc;
}

static int abi_encode_request(const pl_transport_options *opt, const pl_request *req,
                              uint8_t **out, size_t *len)
{
    return abi_encode(1, ws_encode_request(abi_max_frame(opt), req, out, len), out, len);
}

static int abi_encode_response(const pl_transport_options *opt, const pl_response *resp,
                               uint8_t **out, size_t *len)
{
    return abi_encode(0, ws_encode_response(abi_max_frame(opt), resp, out, len), out, len);
}

/* Unframe the message, then decode its JSON (whose strings cJSON copies
 * into the scratch's document, so the payload copy can go at once). */
static int abi_unframe(int mask, const pl_transport_options *opt, const uint8_t *buf,
                       size_t len, size_t *used, uint8_t **payload, size_t *plen)
{
    uint32_t max = abi_max_frame(opt);
    uint8_t *p = malloc((len < max ? len : max) + 1);
    int rc;

    *payload = NULL;
    if (!p)
        return PL_ERR_NOMEM;
    rc = ws_frame_decode(mask, max, buf, len, used, p, plen);
    if (rc != PL_OK) {
        free(p);
        return rc;
    }
    *payload = p;
    return PL_OK;
}

static int abi_decode_request(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                              size_t *used, pl_request *out, void **scratch)
{
    uint8_t *payload;
    size_t plen = 0, u = 0;
    int rc;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    rc = abi_unframe(1, opt, buf, len, &u, &payload, &plen);
    if (rc != PL_OK)
        return rc;
    rc = pl_json_decode_request_msg(abi_max_frame(opt), payload, plen, out, scratch);
    free(payload);
    if (rc == PL_OK)
        *used = u;
    return rc;
}

static int abi_decode_response(const pl_transport_options *opt, const uint8_t *buf, size_t len,
                               size_t *used, pl_response *out, void **scratch)
{
    uint8_t *payload;
    size_t plen = 0, u = 0;
    int rc;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    rc = abi_unframe(0, opt, buf, len, &u, &payload, &plen);
    if (rc != PL_OK)
        return rc;
    rc = pl_json_decode_response_msg(abi_max_frame(opt), payload, plen, out, scratch);
    free(payload);
    if (rc == PL_OK)
        *used = u;
    return rc;
}

static const pl_transport_plugin ws_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = "ws",
    .description = "WebSocket (RFC 6455) with the tcp/json objects, and the web client",
    .server_start = ws_srv_start,
    .server_stop_accepting = ws_srv_stop_accepting,
    .server_free = ws_srv_free,
    .conn_send = ws_srv_conn_send,
    .conn_close = ws_srv_conn_close,
    .client_connect = ws_cli_connect,
    .client_send = ws_cli_send,
    .client_free = ws_cli_free,
    .encode_request = abi_encode_request,
    .encode_response = abi_encode_response,
    .decode_request = abi_decode_request,
    .decode_response = abi_decode_response,
    .free_scratch = pl_scratch_free,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void)
{
    return &ws_plugin;
}
