/*
 * client/bench_wire.c — `parley-bench --wire-sizes`: the bytes of one
 * request and one response of every method in every wire format, encoded by
 * the transport plugins' own codec functions (nothing here knows a format).
 *
 * The frames are the ones the bench itself sends (a --body byte send, a
 * 43-character token, a 64-bit client id), so the table says what a figure
 * measured by the bench cost on the wire. tests/conformance/wire_sizes.c
 * keeps the round-trip check and the table docs/protocol.md quotes; this one
 * is for sizing a workload, e.g. bytes per acknowledged send.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/transport.h>

#include "loader.h"

typedef struct pb_format {
    const char *plugin;   /* short name */
    const char *options;  /* the plugin's config object */
    const char *label;
} pb_format;

static const pb_format formats[] = {
    { "tcp", "{\"name\":\"tcp\",\"codec\":\"binary\"}", "tcp/binary" },
    { "tcp", "{\"name\":\"tcp\",\"codec\":\"json\"}", "tcp/json" },
    { "grpcish", "{\"name\":\"grpcish\"}", "grpcish" },
    { "grpc", "{\"name\":\"grpc\"}", "grpc" },
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static const char token[] = "Vq3x9pLk2mZ8rT4wYb6nHc1sJf7dGa0eUo5iQx2yWz8";
static const uint64_t ids[3] = { 1201, 1202, 1203 };

static int no_token(uint32_t m)
{
    return m == PL_M_REGISTER || m == PL_M_LOGIN || m == PL_M_PING || m == PL_M_STATUS;
}

/* A typical request of method m (PL_M_PUSH has none). */
static void typical_request(uint32_t m, pl_str body, pl_request *r)
{
    memset(r, 0, sizeof *r);
    r->method = m;
    r->request_id = 0x10001;
    r->client_id = 0x8c3f5a21d47e9b06ull;
    r->request_no = 12;
    if (!no_token(m))
        r->token = pl_str_c(token);
    switch (m) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        r->username = pl_str_c("bench17");
        r->password = pl_str_c("bench-password");
        break;
    case PL_M_LIST_USERS:
        r->limit = 50;
        break;
    case PL_M_SEND:
        r->to = pl_str_c("bench18");
        r->body = body;
        break;
    case PL_M_READ:
        r->n = 10;
        break;
    case PL_M_HISTORY:
        r->limit = 20;
        break;
    case PL_M_CONVERSATION:
        r->peer = pl_str_c("bench18");
        r->limit = 20;
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        r->ids = ids;
        r->n_ids = 3;
        break;
    case PL_M_DELETE_ACCOUNT:
        r->password = pl_str_c("bench-password");
        break;
    case PL_M_SUBSCRIBE:
        r->after_id = 1234;
        break;
    default:
        break;
    }
}

/* A typical successful response of method m. */
static void typical_response(uint32_t m, pl_str body, pl_response *r, pl_message *msgs,
                             pl_str *users, pl_server_status *servers)
{
    static const char *const names[3] = { "bench1", "bench10", "bench11" };

    memset(r, 0, sizeof *r);
    r->method = m;
    r->request_id = m == PL_M_PUSH ? 0 : 0x10001;
    for (int i = 0; i < 3; i++) {
        msgs[i] = (pl_message){ .id = 1230 + (uint64_t)i, .from = pl_str_c("bench17"),
                                .to = pl_str_c("bench18"), .body = body,
                                .time_ms = 1764061200123ull + (uint64_t)i, .state = 0 };
        users[i] = pl_str_c(names[i]);
        servers[i] = (pl_server_status){
            .id = (uint32_t)i, .address = pl_str_c("127.0.0.1:8100"), .reachable = 1,
            .role = pl_str_c(i ? "backup" : "primary"), .view = 4, .op = 1234,
            .commit = 1234, .applied = 1234, .store = pl_str_c("sqlite"),
            .transport = pl_str_c("tcp"),
            .digest = pl_str_c("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08") };
    }
    switch (m) {
    case PL_M_LOGIN:
        r->token = pl_str_c(token);
        r->unread = 2;
        break;
    case PL_M_LIST_USERS:
        r->users = users;
        r->n_users = 3;
        r->more = 1;
        break;
    case PL_M_SEND:
        r->id = 1235;
        r->time_ms = 1764061200123ull;
        break;
    case PL_M_COUNTS:
        r->unread = 2;
        r->read = 40;
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION:
        r->msgs = msgs;
        r->n_msgs = 3;
        break;
    case PL_M_PUSH:
        r->msgs = msgs;
        r->n_msgs = 1;
        break;
    case PL_M_STATUS:
        r->servers = servers;
        r->n_servers = 3;
        break;
    default:
        break;
    }
}

int pb_wire_sizes(const char *plugin_dir, uint32_t body_len, FILE *out)
{
    pl_plugin *plugins[N_FORMATS] = { 0 };
    const pl_transport_plugin *tp[N_FORMATS] = { 0 };
    pl_transport_options opt[N_FORMATS];
    size_t n_loaded = 0;
    int rc = 1;
    char *body = malloc(body_len ? body_len : 1);

    if (!body) {
        fprintf(stderr, "parley-bench: out of memory\n");
        return 1;
    }
    memset(body, 'x', body_len);
    pl_str b = { body, body_len };
    for (size_t i = 0; i < N_FORMATS; i++) {
        char err[512] = "";
        plugins[i] = pl_plugin_load("transport", formats[i].plugin, plugin_dir, err, sizeof err);
        if (!plugins[i]) {
            /* A transport not built here (grpc needs libnghttp2) is left out,
             * said on stderr so the table is not mistaken for complete. */
            fprintf(stderr, "parley-bench: %s left out: %s\n", formats[i].label, err);
            continue;
        }
        tp[i] = pl_plugin_transport(plugins[i]);
        memset(&opt[i], 0, sizeof opt[i]);
        opt[i].host = "127.0.0.1";
        opt[i].options_json = formats[i].options;
        n_loaded++;
    }
    if (n_loaded == 0)
        goto done;

    fprintf(out, "bytes per frame (framing included), %u-byte message bodies\n\n", body_len);
    fprintf(out, "| %-8s | %-14s |", "frame", "method");
    for (size_t i = 0; i < N_FORMATS; i++)
        if (tp[i])
            fprintf(out, " %10s |", formats[i].label);
    fprintf(out, "\n|----------|----------------|");
    for (size_t i = 0; i < N_FORMATS; i++)
        if (tp[i])
            fprintf(out, "-----------:|");
    fprintf(out, "\n");
    rc = 0;
    for (int dir = 0; dir < 2; dir++) {
        for (uint32_t m = 1; m < PL_M__COUNT; m++) {
            if (dir == 0 && m == PL_M_PUSH)
                continue;
            fprintf(out, "| %-8s | %-14s |", dir ? "response" : "request", pl_method_name(m));
            for (size_t i = 0; i < N_FORMATS; i++) {
                if (!tp[i])
                    continue;
                uint8_t *buf = NULL;
                size_t len = 0;
                int e;
                if (dir == 0) {
                    pl_request r;
                    typical_request(m, b, &r);
                    e = tp[i]->encode_request(&opt[i], &r, &buf, &len);
                } else {
                    pl_response r;
                    pl_message msgs[3];
                    pl_str users[3];
                    pl_server_status servers[3];
                    typical_response(m, b, &r, msgs, users, servers);
                    e = tp[i]->encode_response(&opt[i], &r, &buf, &len);
                }
                if (e != PL_OK) {
                    fprintf(stderr, "parley-bench: %s: %s %s: encode failed: %s\n",
                            formats[i].label, pl_method_name(m), dir ? "response" : "request",
                            pl_strerror(e));
                    rc = 1;
                    fprintf(out, " %10s |", "-");
                } else {
                    fprintf(out, " %10zu |", len);
                }
                free(buf);
            }
            fprintf(out, "\n");
        }
    }
    fprintf(out, "\nrequests carry a 43-character session token; read/history/conversation "
                 "responses carry 3 messages, list_users 3 names, status 3 servers\n");
done:
    for (size_t i = 0; i < N_FORMATS; i++)
        pl_plugin_unload(plugins[i]);
    free(body);
    return rc;
}
