/*
 * core/admin.h — parleyd's counters and its optional admin HTTP listener.
 *
 * The server keeps plain integer counters (pl_metrics) on its event-loop
 * thread: incrementing one costs an add, and nothing is shared with other
 * threads, so no atomics or locks. When the config gives the server an
 * admin_port, pl_admin_new() listens there (loopback by default) and
 * answers GET /metrics with the Prometheus text exposition format (0.0.4),
 * built at scrape time from the counters plus gauges the server fills in
 * through a callback. `parley admin stats` reads the same endpoint.
 *
 * Why HTTP and not a new request method: a method would change every wire
 * format and every transport plugin; an HTTP text endpoint is what
 * monitoring systems already scrape.
 *
 * Prefix: pl_admin_, pl_hist_.
 */
#ifndef PL_CORE_ADMIN_H
#define PL_CORE_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include <parley/types.h>

struct event_base;

/* A log-linear latency histogram: PL_HIST_SUB buckets per power of two from
 * 2^PL_HIST_MIN_LOG2 microseconds up, one overflow bucket past the last.
 * Bucket i counts samples <= pl_hist_bound_us(i), so percentiles read from
 * it are accurate to one sub-bucket (25%). */
#define PL_HIST_MIN_LOG2 5   /* first bound 32 us */
#define PL_HIST_OCTAVES 20   /* last bound 2^25 us, about 33 s */
#define PL_HIST_SUB 4
#define PL_HIST_N (PL_HIST_OCTAVES * PL_HIST_SUB)

typedef struct pl_hist {
    uint64_t counts[PL_HIST_N + 1]; /* [PL_HIST_N] is everything above the last bound */
    uint64_t n;
    uint64_t sum_us;
} pl_hist;

void pl_hist_add(pl_hist *h, uint64_t us);
uint64_t pl_hist_bound_us(size_t i); /* upper bound of bucket i < PL_HIST_N */

typedef struct pl_metrics {
    uint64_t start_ms;                 /* wall clock at start */
    uint64_t requests[PL_M__COUNT];    /* decoded requests by method (unknown -> [PL_M_NONE]) */
    uint64_t errors[PL_M__COUNT];      /* replies with a non-zero status, by method */
    uint64_t pushes;                   /* message pushes sent */
    uint64_t conns_accepted;
    uint64_t view_changes;             /* views entered since start */
    uint64_t last_view_change_ms;      /* wall clock; 0 = none since start */
    uint64_t held;                     /* requests held until a primary was known */
    uint64_t held_expired;             /* ... and answered when the hold ran out */
    uint64_t held_refused;             /* not held: over a limits.held_* limit */
    pl_hist commit_latency;            /* submit to durable-and-applied, per op */
} pl_metrics;

/* What only the server knows at scrape time. Strings are borrowed for the
 * duration of the fill callback's caller. */
typedef struct pl_admin_gauges {
    uint32_t server_id;
    const char *role;                  /* "primary", "backup", ... */
    uint64_t view, op, commit, applied;
    uint64_t log_first, log_last;      /* 0, 0 when the log is empty */
    uint64_t connections;
    uint64_t subscribed;               /* connections with a live subscription */
    uint64_t hash_pending, seq_pending;
    uint64_t held;                     /* requests held now (core/server.c) */
    /* The peer network (0 for a single server). */
    uint64_t peer_links_up, peer_links_retiring;
    uint64_t peer_in_members, peer_in_unlisted, peer_accepted;
    const char *data_dir;              /* admin.c sums the bytes of its files */
    const char *store, *transport;
} pl_admin_gauges;

typedef void (*pl_admin_fill_fn)(void *ud, pl_admin_gauges *g);

typedef struct pl_admin pl_admin;

/* Listen on bind:port. m must outlive the listener. On failure returns NULL
 * with "admin listener on ADDR:PORT: reason" in err. */
pl_admin *pl_admin_new(struct event_base *base, const char *bind, uint16_t port,
                       const pl_metrics *m, pl_admin_fill_fn fill, void *ud,
                       char *err, size_t errlen);
void pl_admin_free(pl_admin *a);

/* ---- membership changes (issue 9; /work/brief/membership.md) ----
 * GET /cluster/members answers from members(); POST /cluster/add-server,
 * remove-server and replace-server compute the wanted list from current()
 * and hand it to change(), which answers through reply() exactly once,
 * possibly before it returns, possibly much later (when the RECONFIG op is
 * applied). req is admin.c's own handle: it stays valid until reply() is
 * called even if the HTTP client went away. */
struct pl_members;
typedef void (*pl_admin_reply_fn)(void *req, int http_status, const char *json_body);
typedef struct pl_admin_cluster {
    void *ud;
    char *(*members)(void *ud);                    /* malloc'd JSON document */
    const struct pl_members *(*current)(void *ud); /* membership in force */
    void (*change)(void *ud, const struct pl_members *want, pl_admin_reply_fn reply,
                   void *req);
} pl_admin_cluster;

/* Serve /cluster/... token: the operator token (copied); NULL or "" = POSTs
 * refused with 403. */
void pl_admin_set_cluster(pl_admin *a, const pl_admin_cluster *c, const char *token);

/* ---- moving chat state in and out (issue 21; core/transfer.h) ----
 * POST /chat/import-prototype and POST /chat/import hand their body to
 * the server, which answers through reply() exactly once, as a change
 * does. GET /chat/export asks the server for a stream and sends each piece
 * once the one before it has left (chunked for HTTP/1.1, to the end of the
 * connection for HTTP/1.0), so a slow reader costs memory for one piece
 * only. All of them need the operator token (the one pl_admin_set_cluster
 * was given): the bodies hold password hashes. A body is at most
 * PL_ADMIN_DATA_BODY_MAX bytes. */
#define PL_ADMIN_DATA_BODY_MAX (4u * 1024u * 1024u)

typedef struct pl_admin_stream {
    void *s;
    /* The next piece (owned by the stream, valid until the next call);
     * *len 0 at the end. PL_OK or an error that cuts the answer short. */
    int (*next)(void *s, const char **text, size_t *len);
    void (*free)(void *s);
} pl_admin_stream;

typedef struct pl_admin_data {
    void *ud;
    void (*import_prototype)(void *ud, const char *body, size_t len, pl_admin_reply_fn reply,
                             void *req);
    void (*import_dump)(void *ud, const char *query, const char *body, size_t len,
                        pl_admin_reply_fn reply, void *req);
    /* PL_OK and *out; otherwise *http and *json_err (malloc'd) to answer. */
    int (*export_dump)(void *ud, const char *query, pl_admin_stream *out, int *http,
                       char **json_err);
} pl_admin_data;

void pl_admin_set_data(pl_admin *a, const pl_admin_data *d);

/* Bytes of the regular files under dir (recursively); 0 if unreadable. */
uint64_t pl_admin_dir_bytes(const char *dir);

#endif
