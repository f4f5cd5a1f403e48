/*
 * plugins/transport-ws/ws_int.h — private to the ws transport: its
 * options, the web client's files, and the two halves.
 *
 * Files and prefixes:
 *   transport_ws.c  options (ws_opts_), the descriptor, the ABI codec
 *   ws_proto.c      HTTP head + RFC 6455 frames, no sockets (ws_proto_, ws_http_)
 *   ws_web.c        the web client's files, loaded once at start (ws_web_)
 *   ws_server.c     the server half on the core's event loop (ws_srv_)
 *   ws_client.c     the client half for libparley (ws_cli_)
 */
#ifndef PL_WS_INT_H
#define PL_WS_INT_H

#include <stddef.h>
#include <stdint.h>

#include <parley/transport.h>

#define WS_ORIGINS_MAX 32u
#define WS_ORIGIN_LEN_MAX 200u
#define WS_PING_DEFAULT_S 30u
#define WS_PING_MAX_S 3600u
#define WS_PATH "/ws"

typedef struct ws_opts {
    uint32_t max_frame;         /* resolved: never 0 */
    char *origins[WS_ORIGINS_MAX]; /* "origins": extra allowed Origin values */
    size_t n_origins;
    char *web_root;             /* "web_root", or NULL for the default */
    uint32_t ping_interval_s;   /* "ping_interval_s"; 0 = no keep-alive pings */
    int tls;                    /* the core added "tls" (wss) */
} ws_opts;

/* Parse and check the transport object (name, origins, web_root,
 * ping_interval_s, tls). PL_ERR_CONFIG with "transport ws: KEY: REASON". */
int ws_opts_parse(const pl_transport_options *opt, ws_opts *o, char *err, size_t errlen);
void ws_opts_clear(ws_opts *o);

/* ---- the web client's files ---- */

typedef struct ws_web ws_web;
typedef struct ws_web_file {
    const char *name;           /* "index.html" */
    const char *type;           /* Content-Type */
    const uint8_t *data;
    size_t len;
} ws_web_file;

/* Load every servable file of dir (bounded count and size; see ws_web.c).
 * A missing directory is not an error: *out serves nothing and why says
 * so for the start log line. NULL only when out of memory. */
ws_web *ws_web_load(const char *dir, char *why, size_t whylen);
void ws_web_free(ws_web *w);
/* The file for a request path ("/" is index.html), or NULL. */
const ws_web_file *ws_web_find(const ws_web *w, const char *path);
size_t ws_web_count(const ws_web *w);
/* The directory used when web_root is not configured: the source tree's
 * web/ for a plugin loaded from the build tree, else the installed one. */
const char *ws_web_default_root(void);

/* ---- server half ---- */
int ws_srv_start(const pl_transport_host *host, const pl_transport_options *opt,
                 pl_transport_server **out, char *err, size_t errlen);
void ws_srv_stop_accepting(pl_transport_server *srv);
void ws_srv_free(pl_transport_server *srv);
int ws_srv_conn_send(pl_transport_conn *conn, const pl_response *resp);
void ws_srv_conn_close(pl_transport_conn *conn);

/* ---- client half ---- */
int ws_cli_connect(struct event_base *base, const pl_transport_options *opt,
                   const pl_transport_client_cb *cb, void *ud,
                   pl_transport_client **out, char *err, size_t errlen);
int ws_cli_send(pl_transport_client *cli, const pl_request *req);
void ws_cli_free(pl_transport_client *cli);

/* One JSON object as a WebSocket message: the tcp/json line without its
 * newline (json_codec.h). *out malloc'd. */
int ws_encode_request(uint32_t max_frame, const pl_request *req, uint8_t **out, size_t *len);
int ws_encode_response(uint32_t max_frame, const pl_response *resp, uint8_t **out, size_t *len);

#endif
