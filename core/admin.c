/*
 * core/admin.c — counters, the latency histogram and the admin HTTP
 * listener (admin.h).
 *
 * The listener is libevent's evhttp on the server's own event loop: a
 * scrape reads the counters without locks because it runs on the thread
 * that writes them. It answers only GET/HEAD /metrics; it never reads chat
 * state, so nothing it prints is a secret (no names, tokens or bodies).
 * Requests are tiny and bounded (headers, no body, a timeout), so a stuck
 * or hostile scraper costs one connection, not the server.
 */
#include "admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

#define PL_ADMIN_HEADERS_MAX 8192
#define PL_ADMIN_TIMEOUT_S 10

struct pl_admin {
    struct evhttp *http;
    const pl_metrics *m;
    pl_admin_fill_fn fill;
    void *ud;
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

static void on_http(struct evhttp_request *req, void *arg)
{
    pl_admin *a = arg;
    const char *uri = evhttp_request_get_uri(req);
    size_t plen = strcspn(uri ? uri : "", "?#");

    if (!uri || plen != 8 || strncmp(uri, "/metrics", 8) != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, "only /metrics is served here");
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
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_max_headers_size(a->http, PL_ADMIN_HEADERS_MAX);
    evhttp_set_max_body_size(a->http, 0);
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
    if (a->http)
        evhttp_free(a->http);
    free(a);
}
