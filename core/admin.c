/*
 * core/admin.c — counters, the latency histogram and the admin HTTP
 * listener (admin.h).
 *
 * The listener is libevent's evhttp on the server's own event loop: a
 * scrape reads the counters without locks because it runs on the thread
 * that writes them. It answers GET/HEAD /metrics and, once the server hands
 * it a pl_admin_cluster, the /cluster/... endpoints of issue 9 (membership:
 * GET /cluster/members, and POST add-server, remove-server, replace-server
 * with the operator token). It never reads chat state, so nothing it prints
 * is a secret (no names, tokens or bodies). Requests are tiny and bounded
 * (headers, a small body that is ignored, a timeout), so a stuck or hostile
 * client costs one connection, not the server.
 *
 * Issue 21 adds /chat/: POST import-prototype and import (a batch each,
 * answered once its op commits, like a change) and GET export (a dump
 * streamed piece by piece, each piece written only once the previous one
 * has left, so a slow reader holds one piece of memory). Those bodies are
 * up to PL_ADMIN_DATA_BODY_MAX; every other path still takes at most
 * PL_ADMIN_BODY_MAX.
 *
 * A membership change answers much later than it is asked (the RECONFIG op
 * commits after the new servers catch up). Its HTTP request is held in a
 * pending handle; libevent does not read from a connection while its
 * request waits for an answer, so it only ever frees the request by freeing
 * the whole connection (evhttp_free at shutdown), and the close callback
 * set on the connection detaches the handle first. A handle outlives both
 * its request and the listener: it is freed by the one reply() the server
 * owes it.
 */
#include "admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>

#include "log.h"
#include "members.h"

#define PL_ADMIN_HEADERS_MAX 8192
/* POST parameters travel in the query string; a body is read and ignored,
 * so only what a client sends by habit (an empty form) is allowed. */
#define PL_ADMIN_BODY_MAX 1024
#define PL_ADMIN_TIMEOUT_S 10

/* An export being streamed: the connection owns it; freed when the
 * answer ends or the connection closes, whichever comes first. */
typedef struct admin_stream {
    struct pl_admin *a;
    struct evhttp_request *req;   /* NULL once the connection is gone */
    pl_admin_stream st;
    struct evbuffer *buf;
    int ended;                    /* evhttp_send_reply_end was called */
    struct admin_stream *prev, *next;
} admin_stream;

/* One membership change waiting for the server's reply(). */
typedef struct admin_pending {
    struct pl_admin *a;           /* NULL once the listener is freed */
    struct evhttp_request *req;   /* NULL once the connection is gone */
    struct admin_pending *prev, *next;
} admin_pending;

struct pl_admin {
    struct evhttp *http;
    const pl_metrics *m;
    pl_admin_fill_fn fill;
    void *ud;
    pl_admin_cluster cluster;     /* members == NULL: /cluster/ not served */
    unsigned char token_hash[crypto_generichash_BYTES]; /* of the operator token */
    int has_token;
    admin_pending *pending;       /* changes not answered yet */
    pl_admin_data data;           /* import_prototype == NULL: /chat/ not served */
    admin_stream *streams;        /* exports being sent */
};

/* ------------------------------------------------------------ histogram */

uint64_t pl_hist_bound_us(size_t i)
{
    uint64_t base = (uint64_t)1 << (PL_HIST_MIN_LOG2 + i / PL_HIST_SUB);
    return base + base * (i % PL_HIST_SUB + 1) / PL_HIST_SUB;
}

void pl_hist_add(pl_hist *h, uint64_t us)
{
    size_t lo = 0, hi = PL_HIST_N; /* first bucket whose bound >= us, or PL_HIST_N */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (us <= pl_hist_bound_us(mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    h->counts[lo]++;
    h->n++;
    h->sum_us += us;
}

/* ------------------------------------------------------------ disk size */

/* nftw() has no user pointer; only the event-loop thread scrapes. */
static _Thread_local uint64_t dir_bytes_acc;

static int dir_bytes_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)path;
    (void)ftw;
    if (type == FTW_F && S_ISREG(st->st_mode))
        dir_bytes_acc += (uint64_t)st->st_size;
    return 0;
}

uint64_t pl_admin_dir_bytes(const char *dir)
{
    dir_bytes_acc = 0;
    /* A walk cut short (a file removed mid-walk) still reports what it saw. */
    if (dir)
        (void)nftw(dir, dir_bytes_cb, 16, FTW_PHYS);
    return dir_bytes_acc;
}

/* ------------------------------------------------------------ exposition */

/* A label value: backslash, quote and newline escaped (exposition format). */
static void add_label(struct evbuffer *b, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '\\' || *p == '"')
            evbuffer_add_printf(b, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add(b, p, 1);
    }
}

static void metric(struct evbuffer *b, const char *name, const char *type, const char *help,
                   uint64_t v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name,
                        type, name, v);
}

static void render(pl_admin *a, struct evbuffer *b)
{
    const pl_metrics *m = a->m;
    pl_admin_gauges g;
    memset(&g, 0, sizeof g);
    a->fill(a->ud, &g);

    evbuffer_add_printf(b, "# HELP parley_info This server: version, id, plugins, role.\n"
                           "# TYPE parley_info gauge\nparley_info{version=\"%s\",server=\"%" PRIu32
                           "\",store=\"", PARLEY_VERSION, g.server_id);
    add_label(b, g.store);
    evbuffer_add_printf(b, "\",transport=\"");
    add_label(b, g.transport);
    evbuffer_add_printf(b, "\",role=\"");
    add_label(b, g.role);
    evbuffer_add_printf(b, "\"} 1\n");

    metric(b, "parley_start_time_seconds", "gauge", "Wall-clock start time (Unix seconds).",
           m->start_ms / 1000);
    metric(b, "parley_view", "gauge", "Current view number.", g.view);
    metric(b, "parley_op_number", "gauge", "Highest op-number in the log.", g.op);
    metric(b, "parley_commit_number", "gauge", "Highest committed op-number.", g.commit);
    metric(b, "parley_applied_op", "gauge", "Highest op applied to the store.", g.applied);
    metric(b, "parley_log_first_op", "gauge", "Lowest op-number still in the log (0: empty).",
           g.log_first);
    metric(b, "parley_log_entries", "gauge", "Entries held in the replicated log.",
           g.log_last && g.log_last >= g.log_first ? g.log_last - g.log_first + 1 : 0);
    metric(b, "parley_store_bytes", "gauge", "Bytes of the files in the data directory.",
           pl_admin_dir_bytes(g.data_dir));
    metric(b, "parley_connections", "gauge", "Open client connections.", g.connections);
    metric(b, "parley_subscribed_connections", "gauge",
           "Client connections with a live subscription (logged-in listeners).", g.subscribed);
    metric(b, "parley_connections_accepted_total", "counter", "Client connections accepted.",
           m->conns_accepted);
    metric(b, "parley_hash_jobs_pending", "gauge", "Password hash jobs queued or running.",
           g.hash_pending);
    metric(b, "parley_ops_pending", "gauge", "Ops submitted and not yet committed.",
           g.seq_pending);
    metric(b, "parley_pushes_total", "counter", "New-message pushes sent.", m->pushes);
    metric(b, "parley_requests_held", "gauge",
           "Client requests waiting for a serving primary to be known.", g.held);
    metric(b, "parley_requests_held_total", "counter",
           "Client requests held until a serving primary was known.", m->held);
    metric(b, "parley_requests_held_expired_total", "counter",
           "Held requests answered unserved when the hold ran out.", m->held_expired);
    metric(b, "parley_requests_held_refused_total", "counter",
           "Requests answered at once because a limits.held_* limit was reached.",
           m->held_refused);
    metric(b, "parley_peer_links_up", "gauge",
           "Outgoing links to the other servers with the handshake done.", g.peer_links_up);
    metric(b, "parley_peer_links_retiring", "gauge",
           "Links to removed servers still flushing their last messages.",
           g.peer_links_retiring);
    metric(b, "parley_peer_incoming", "gauge",
           "Incoming peer connections past the Hello from servers in the configuration.",
           g.peer_in_members);
    metric(b, "parley_peer_incoming_unlisted", "gauge",
           "Incoming peer connections from addresses not in the configuration (ignored).",
           g.peer_in_unlisted);
    metric(b, "parley_peer_connections_accepted_total", "counter",
           "Incoming peer connections accepted.", g.peer_accepted);
    metric(b, "parley_view_changes_total", "counter", "Views entered since start.",
           m->view_changes);
    metric(b, "parley_last_view_change_time_seconds", "gauge",
           "Wall-clock time of the last view change (Unix seconds; 0: none since start).",
           m->last_view_change_ms / 1000);

    evbuffer_add_printf(b, "# HELP parley_requests_total Client requests by method.\n"
                           "# TYPE parley_requests_total counter\n");
    for (uint32_t i = 0; i < PL_M__COUNT; i++)
        if (i != PL_M_PUSH)
            evbuffer_add_printf(b, "parley_requests_total{method=\"%s\"} %" PRIu64 "\n",
                                pl_method_name(i), m->requests[i]);
    evbuffer_add_printf(b, "# HELP parley_request_errors_total Replies with an error status, "
                           "by method.\n# TYPE parley_request_errors_total counter\n");
    for (uint32_t i = 0; i < PL_M__COUNT; i++)
        if (i != PL_M_PUSH)
            evbuffer_add_printf(b, "parley_request_errors_total{method=\"%s\"} %" PRIu64 "\n",
                                pl_method_name(i), m->errors[i]);

    const pl_hist *h = &m->commit_latency;
    evbuffer_add_printf(b, "# HELP parley_commit_latency_seconds From submitting an op to it "
                           "being durable on a majority and applied.\n"
                           "# TYPE parley_commit_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < PL_HIST_N; i++) {
        cum += h->counts[i];
        uint64_t us = pl_hist_bound_us(i);
        evbuffer_add_printf(b, "parley_commit_latency_seconds_bucket{le=\"%" PRIu64 ".%06" PRIu64
                               "\"} %" PRIu64 "\n", us / 1000000, us % 1000000, cum);
    }
    evbuffer_add_printf(b, "parley_commit_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
                           "parley_commit_latency_seconds_sum %" PRIu64 ".%06" PRIu64 "\n"
                           "parley_commit_latency_seconds_count %" PRIu64 "\n",
                        h->n, h->sum_us / 1000000, h->sum_us % 1000000, h->n);
}

/* ------------------------------------------------------------ /cluster/ */

static void send_json(struct evhttp_request *req, int status, const char *json)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    evbuffer_add_printf(b, "%s\n", json ? json : "{}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    const char *why = status == 200 ? "OK" : status == 400 ? "Bad Request"
                    : status == 401 ? "Unauthorized" : status == 403 ? "Forbidden"
                    : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed"
                    : status == 409 ? "Conflict" : status == 421 ? "Misdirected Request"
                    : status == 503 ? "Service Unavailable" : status == 504 ? "Gateway Timeout"
                    : status >= 500 ? "Server Error" : "Error";
    evhttp_send_reply(req, status, why, b);
    evbuffer_free(b);
}

/* {"error": why}, escaped by cJSON (why may quote an operator's input). */
static void send_error_json(struct evhttp_request *req, int status, const char *fmt, ...)
    PL_PRINTF(3, 4);

static void send_error_json(struct evhttp_request *req, int status, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    char *text = o && cJSON_AddStringToObject(o, "error", why) ? cJSON_PrintUnformatted(o) : NULL;
    send_json(req, status, text ? text : "{\"error\":\"out of memory\"}");
    cJSON_free(text);
    cJSON_Delete(o);
}

static void pending_unlink(admin_pending *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else if (h->a && h->a->pending == h)
        h->a->pending = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
}

/* The connection is about to be freed, and its request with it. */
static void on_pending_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    admin_pending *h = arg;
    h->req = NULL;
}

/* pl_admin_reply_fn: the server's one answer to a change. */
static void pending_reply(void *handle, int status, const char *json)
{
    admin_pending *h = handle;
    if (h->req) {
        /* The close callback stays on a kept-alive connection: it must not
         * point at this handle once it is freed. */
        evhttp_connection_set_closecb(evhttp_request_get_connection(h->req), NULL, NULL);
        send_json(h->req, status, json);
    }
    pending_unlink(h);
    free(h);
}

/* The token is compared through a hash so the comparison takes the same
 * time whatever the length or content of the guess. */
static int token_matches(const pl_admin *a, const char *given, size_t len)
{
    unsigned char h[crypto_generichash_BYTES];
    if (crypto_generichash(h, sizeof h, (const unsigned char *)given, len, NULL, 0) != 0)
        return 0;
    return crypto_verify_32(h, a->token_hash) == 0;
}

/* Where "HOST:PORT[:PEER_PORT]" names an existing member: by (host,
 * peer_port) when the peer port is written out, else by (host, port), so
 * an operator can name a server the way clients know it. */
static int find_member(const pl_members *m, const char *text, const pl_server_conf *s)
{
    const char *rest = text[0] == '[' ? strchr(text, ']') : text;
    int colons = 0;
    for (const char *p = rest ? rest : ""; *p; p++)
        colons += *p == ':';
    if (colons >= 2)
        return pl_members_find(m, s->host, s->peer_port);
    for (size_t i = 0; i < m->n; i++)
        if (m->servers[i].port == s->port && strcmp(m->servers[i].host, s->host) == 0)
            return (int)i;
    return -1;
}

/* A port of s that a member other than skip already uses on the same host. */
static int endpoint_clash(const pl_members *m, const pl_server_conf *s, int skip, char *why,
                          size_t len)
{
    for (size_t i = 0; i < m->n; i++) {
        const pl_server_conf *o = &m->servers[i];
        if ((int)i == skip || strcmp(o->host, s->host) != 0)
            continue;
        if (s->port == o->port || s->port == o->peer_port || s->peer_port == o->port ||
            s->peer_port == o->peer_port) {
            snprintf(why, len, "%s ports %u/%u clash with server %zu (port %u, peer port %u)",
                     s->host, (unsigned)s->port, (unsigned)s->peer_port, i, (unsigned)o->port,
                     (unsigned)o->peer_port);
            return 1;
        }
    }
    return 0;
}

/* Parse query parameter key into *out; on failure the request is answered. */
static int param_addr(struct evhttp_request *req, const struct evkeyvalq *q, const char *key,
                      pl_server_conf *out, const char **text)
{
    char err[400];
    *text = evhttp_find_header(q, key);
    if (!*text) {
        send_error_json(req, 400, "missing %s=HOST:PORT[:PEER_PORT] in the query string", key);
        return -1;
    }
    if (pl_members_parse_addr(*text, out, err, sizeof err) != PL_OK) {
        send_error_json(req, 400, "%s: %s", key, err);
        return -1;
    }
    return 0;
}

enum { OP_ADD, OP_REMOVE, OP_REPLACE };

/* Builds the wanted list into *want; on failure the request is answered. */
static int wanted(struct evhttp_request *req, int op, const pl_members *cur,
                  const struct evkeyvalq *q, pl_members *want)
{
    pl_server_conf s = { 0 }, t = { 0 };
    const char *text = NULL, *text2 = NULL;
    char why[400];
    int rc = -1, idx;

    memset(want, 0, sizeof *want);
    if (param_addr(req, q, op == OP_REPLACE ? "old" : "addr", &s, &text) != 0)
        goto done;
    if (op == OP_REPLACE && param_addr(req, q, "new", &t, &text2) != 0)
        goto done;
    if (pl_members_copy(want, cur) != PL_OK) {
        send_error_json(req, 500, "out of memory");
        goto done;
    }
    want->epoch = cur->epoch + 1;
    want->op = 0;
    switch (op) {
    case OP_ADD:
        if (find_member(cur, text, &s) >= 0 || pl_members_find(cur, s.host, s.peer_port) >= 0) {
            send_error_json(req, 409, "%s is already a member", text);
            goto done;
        }
        if (cur->n >= PL_MEMBERS_MAX) {
            send_error_json(req, 409, "the cluster already has %d servers, the most it can have",
                            PL_MEMBERS_MAX);
            goto done;
        }
        if (endpoint_clash(cur, &s, -1, why, sizeof why)) {
            send_error_json(req, 409, "%s", why);
            goto done;
        }
        /* Appended: the lowest priority, so adding never moves the primary. */
        want->servers[want->n++] = s;
        s.host = NULL;
        break;
    case OP_REMOVE:
        if ((idx = find_member(cur, text, &s)) < 0) {
            send_error_json(req, 409, "%s is not a member", text);
            goto done;
        }
        if (cur->n == 1) {
            send_error_json(req, 409, "removing %s would leave no servers", text);
            goto done;
        }
        free(want->servers[idx].host);
        memmove(&want->servers[idx], &want->servers[idx + 1],
                (want->n - (size_t)idx - 1) * sizeof want->servers[0]);
        want->n--;
        break;
    case OP_REPLACE:
        if ((idx = find_member(cur, text, &s)) < 0) {
            send_error_json(req, 409, "%s (old) is not a member", text);
            goto done;
        }
        if (find_member(cur, text2, &t) >= 0 || pl_members_find(cur, t.host, t.peer_port) >= 0) {
            send_error_json(req, 409, "%s (new) is already a member", text2);
            goto done;
        }
        if (endpoint_clash(cur, &t, idx, why, sizeof why)) {
            send_error_json(req, 409, "%s", why);
            goto done;
        }
        /* Same position, so the same priority. */
        free(want->servers[idx].host);
        want->servers[idx] = t;
        t.host = NULL;
        break;
    }
    rc = 0;
done:
    free(s.host);
    free(t.host);
    if (rc != 0)
        pl_members_clear(want);
    return rc;
}

/* The operator token: answers 403/401 and returns -1 unless it is given. */
static int need_token(pl_admin *a, struct evhttp_request *req, const char *what)
{
    if (!a->has_token) {
        send_error_json(req, 403, "%s need admin.token or admin.token_file in the config", what);
        return -1;
    }
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !token_matches(a, auth + 7, strlen(auth + 7))) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer realm=\"parley\"");
        send_error_json(req, 401, auth ? "wrong operator token" : "missing header "
                        "\"Authorization: Bearer TOKEN\" (the config's admin.token)");
        return -1;
    }
    return 0;
}

/* Every path but /chat/ reads no body: only what a client sends by habit. */
static int body_small(struct evhttp_request *req)
{
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) <= PL_ADMIN_BODY_MAX)
        return 1;
    send_error_json(req, 413, "a request body here may be at most %d bytes", PL_ADMIN_BODY_MAX);
    return 0;
}

static void on_cluster(pl_admin *a, struct evhttp_request *req, const char *path, size_t plen)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct evkeyvalq q;
    pl_members want;
    int op;

    if (!a->cluster.members) {
        send_error_json(req, 404, "this server does not serve /cluster/ yet");
        return;
    }
    if (plen == 16 && strncmp(path, "/cluster/members", 16) == 0) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            send_error_json(req, 405, "/cluster/members is read with GET");
            return;
        }
        char *doc = a->cluster.members(a->cluster.ud);
        if (!doc) {
            send_error_json(req, 500, "out of memory");
            return;
        }
        send_json(req, 200, doc);
        free(doc);
        return;
    }
    if (plen == 19 && strncmp(path, "/cluster/add-server", 19) == 0)
        op = OP_ADD;
    else if (plen == 22 && strncmp(path, "/cluster/remove-server", 22) == 0)
        op = OP_REMOVE;
    else if (plen == 23 && strncmp(path, "/cluster/replace-server", 23) == 0)
        op = OP_REPLACE;
    else {
        send_error_json(req, 404, "not found: /cluster/ serves members, add-server, "
                        "remove-server and replace-server");
        return;
    }
    if (cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        send_error_json(req, 405, "membership changes are POSTed");
        return;
    }
    if (need_token(a, req, "membership changes") != 0 || !body_small(req))
        return;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    if (evhttp_parse_query_str(query ? query : "", &q) != 0) {
        evhttp_clear_headers(&q);
        send_error_json(req, 400, "the query string does not parse");
        return;
    }
    const pl_members *cur = a->cluster.current(a->cluster.ud);
    if (!cur) {
        evhttp_clear_headers(&q);
        send_error_json(req, 503, "this server does not know the cluster's membership yet");
        return;
    }
    int rc = wanted(req, op, cur, &q, &want);
    evhttp_clear_headers(&q);
    if (rc != 0)
        return;
    admin_pending *h = calloc(1, sizeof *h);
    if (!h) {
        pl_members_clear(&want);
        send_error_json(req, 500, "out of memory");
        return;
    }
    h->a = a;
    h->req = req;
    h->next = a->pending;
    if (a->pending)
        a->pending->prev = h;
    a->pending = h;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_pending_close, h);
    /* change() may reply (and so free h) before it returns. */
    a->cluster.change(a->cluster.ud, &want, pending_reply, h);
    pl_members_clear(&want);
}

void pl_admin_set_cluster(pl_admin *a, const pl_admin_cluster *c, const char *token)
{
    if (!a)
        return;
    if (c)
        a->cluster = *c;
    else
        memset(&a->cluster, 0, sizeof a->cluster);
    a->has_token = token && token[0];
    if (a->has_token)
        crypto_generichash(a->token_hash, sizeof a->token_hash, (const unsigned char *)token,
                           strlen(token), NULL, 0);
    else
        sodium_memzero(a->token_hash, sizeof a->token_hash);
}

/* ------------------------------------------------------------ /chat/ */

static void stream_unlink(admin_stream *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else if (h->a && h->a->streams == h)
        h->a->streams = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
}

static void stream_free(admin_stream *h)
{
    stream_unlink(h);
    if (h->st.free)
        h->st.free(h->st.s);
    if (h->buf)
        evbuffer_free(h->buf);
    free(h);
}

static void on_stream_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    admin_stream *h = arg;
    if (!h->ended)
        pl_log(PL_LOG_WARN, "export: the reader went away before the end");
    stream_free(h);
}

/* Send the next piece, or end the answer. Runs when the previous piece has
 * been written out. */
static void stream_pump(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    admin_stream *h = arg;
    const char *text = NULL;
    size_t len = 0;
    if (h->ended || !h->req)
        return;
    int rc = h->st.next(h->st.s, &text, &len);
    if (rc != PL_OK || len == 0) {
        if (rc != PL_OK)
            pl_log(PL_LOG_ERROR, "export: %s; the dump was cut short (a reader sees no "
                   "\"end\" line)", pl_strerror(rc));
        h->ended = 1;
        /* The connection (and with it the close callback) may go inside
         * reply_end: h is freed there or here, not both. */
        struct evhttp_connection *c = evhttp_request_get_connection(h->req);
        evhttp_connection_set_closecb(c, NULL, NULL);
        struct evhttp_request *req = h->req;
        stream_free(h);
        evhttp_send_reply_end(req);
        return;
    }
    evbuffer_add(h->buf, text, len);
    evhttp_send_reply_chunk_with_cb(h->req, h->buf, stream_pump, h);
}

static void on_chat(pl_admin *a, struct evhttp_request *req, const char *path, size_t plen,
                    const char *query)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int is_export = plen == 12 && strncmp(path, "/chat/export", 12) == 0;
    int is_proto = plen == 22 && strncmp(path, "/chat/import-prototype", 22) == 0;
    int is_dump = plen == 12 && strncmp(path, "/chat/import", 12) == 0;
    if (!a->data.import_prototype) {
        send_error_json(req, 404, "this server does not serve /chat/ yet");
        return;
    }
    if (!is_export && !is_proto && !is_dump) {
        send_error_json(req, 404, "not found: /chat/ serves export, import and "
                        "import-prototype");
        return;
    }
    if (is_export != (cmd == EVHTTP_REQ_GET)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          is_export ? "GET" : "POST");
        send_error_json(req, 405, is_export ? "/chat/export is read with GET"
                                            : "imports are POSTed");
        return;
    }
    if (need_token(a, req, is_export ? "exports (they hold password hashes)" : "imports") != 0)
        return;
    if (is_export) {
        if (!body_small(req))
            return;
        admin_stream *h = calloc(1, sizeof *h);
        int http = 500;
        char *err = NULL;
        if (!h || !(h->buf = evbuffer_new())) {
            free(h);
            send_error_json(req, 500, "out of memory");
            return;
        }
        if (a->data.export_dump(a->data.ud, query ? query : "", &h->st, &http, &err) != PL_OK) {
            send_json(req, http, err ? err : "{\"error\":\"export failed\"}");
            free(err);
            evbuffer_free(h->buf);
            free(h);
            return;
        }
        h->a = a;
        h->req = req;
        h->next = a->streams;
        if (a->streams)
            a->streams->prev = h;
        a->streams = h;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/x-ndjson");
        evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_stream_close, h);
        evhttp_send_reply_start(req, 200, "OK");
        stream_pump(NULL, h);
        return;
    }
    /* The body, NUL-terminated for the JSON parser. */
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *body = malloc(len + 1);
    if (!body) {
        send_error_json(req, 500, "out of memory");
        return;
    }
    evbuffer_copyout(in, body, len);
    body[len] = '\0';
    admin_pending *h = calloc(1, sizeof *h);
    if (!h) {
        free(body);
        send_error_json(req, 500, "out of memory");
        return;
    }
    h->a = a;
    h->req = req;
    h->next = a->pending;
    if (a->pending)
        a->pending->prev = h;
    a->pending = h;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_pending_close, h);
    /* The server may reply (and so free h) before this returns. */
    if (is_proto)
        a->data.import_prototype(a->data.ud, body, len, pending_reply, h);
    else
        a->data.import_dump(a->data.ud, query ? query : "", body, len, pending_reply, h);
    sodium_memzero(body, len);
    free(body);
}

void pl_admin_set_data(pl_admin *a, const pl_admin_data *d)
{
    if (!a)
        return;
    if (d)
        a->data = *d;
    else
        memset(&a->data, 0, sizeof a->data);
}

static void on_http(struct evhttp_request *req, void *arg)
{
    pl_admin *a = arg;
    const char *uri = evhttp_request_get_uri(req);
    size_t plen = strcspn(uri ? uri : "", "?#");

    if (uri && plen >= 9 && strncmp(uri, "/cluster/", 9) == 0) {
        on_cluster(a, req, uri, plen);
        return;
    }
    if (uri && plen >= 6 && strncmp(uri, "/chat/", 6) == 0) {
        const char *q = uri[plen] == '?' ? uri + plen + 1 : "";
        on_chat(a, req, uri, plen, q);
        return;
    }
    if (!uri || plen != 8 || strncmp(uri, "/metrics", 8) != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, "only /metrics, /cluster/ and /chat/ are served "
                          "here");
        return;
    }
    if (!body_small(req))
        return;
    if (evhttp_request_get_command(req) == EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        evhttp_send_error(req, 405, "/metrics is read with GET");
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    render(a, b);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, HTTP_OK, "OK", b);
    evbuffer_free(b);
}

pl_admin *pl_admin_new(struct event_base *base, const char *bind, uint16_t port,
                       const pl_metrics *m, pl_admin_fill_fn fill, void *ud,
                       char *err, size_t errlen)
{
    pl_admin *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "admin listener: out of memory");
        return NULL;
    }
    a->m = m;
    a->fill = fill;
    a->ud = ud;
    a->http = evhttp_new(base);
    if (!a->http) {
        snprintf(err, errlen, "admin listener: cannot create the HTTP server");
        goto fail;
    }
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(a->http, PL_ADMIN_HEADERS_MAX);
    /* The imports' batches are the largest bodies; every other path checks
     * its own smaller bound (body_small). */
    evhttp_set_max_body_size(a->http, PL_ADMIN_DATA_BODY_MAX);
    evhttp_set_timeout(a->http, PL_ADMIN_TIMEOUT_S);
    evhttp_set_gencb(a->http, on_http, a);
    errno = 0;
    if (!evhttp_bind_socket_with_handle(a->http, bind, port)) {
        snprintf(err, errlen, strchr(bind, ':') ? "admin listener on [%s]:%u: %s"
                                                : "admin listener on %s:%u: %s",
                 bind, (unsigned)port, errno ? strerror(errno) : "cannot bind");
        goto fail;
    }
    pl_log(PL_LOG_INFO, strchr(bind, ':') ? "metrics on http://[%s]:%u/metrics"
                                          : "metrics on http://%s:%u/metrics",
           bind, (unsigned)port);
    return a;
fail:
    pl_admin_free(a);
    return NULL;
}

void pl_admin_free(pl_admin *a)
{
    if (!a)
        return;
    /* Changes the server has not answered: their clients hear 503 now, and
     * each handle stays valid, tied to nothing, until the server's reply()
     * frees it (admin.h promises that). */
    while (a->pending) {
        admin_pending *h = a->pending;
        a->pending = h->next;
        h->prev = h->next = NULL;
        h->a = NULL;
        if (h->req) {
            evhttp_connection_set_closecb(evhttp_request_get_connection(h->req), NULL, NULL);
            /* Best effort: evhttp_free below may close the connection
             * before this is written. */
            send_json(h->req, 503, "{\"error\":\"the server is shutting down; the change may "
                                   "or may not take effect: check GET /cluster/members\"}");
            h->req = NULL;
        }
    }
    /* Exports being sent stop here: their connections go with evhttp_free. */
    while (a->streams) {
        admin_stream *h = a->streams;
        if (h->req)
            evhttp_connection_set_closecb(evhttp_request_get_connection(h->req), NULL, NULL);
        h->ended = 1;
        stream_free(h);
    }
    if (a->http)
        evhttp_free(a->http);
    sodium_memzero(a->token_hash, sizeof a->token_hash);
    free(a);
}
