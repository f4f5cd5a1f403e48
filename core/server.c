/*
 * core/server.c — the parleyd request pipeline (server.h).
 *
 * Everything here runs on the event-loop thread. A request is answered in
 * one of three ways:
 *   - at once: ping, status, and the read-only queries (list_users, counts,
 *     history, conversation), straight from the local store;
 *   - after slow work: register/login/delete_account hash or verify a
 *     password on the worker pool first (workers.h), then continue below;
 *   - after commit: every state change is an op handed to the sequencer
 *     (seq.h); the client is answered when the op is durable and applied,
 *     and new messages are pushed to the recipient's subscribed connections.
 *
 * A connection context is reference-counted: the transport holds one
 * reference until conn_closed, and every request waiting on a worker or the
 * sequencer holds one. A reply for a connection that closed meanwhile is
 * dropped and the context freed with the last reference.
 *
 * Secrets: passwords only travel to the workers (which wipe their copies);
 * a login's token exists here only between its generation and the reply
 * that carries it, and is wiped after; the chat core and the log only ever
 * see its BLAKE2b hash. Nothing here logs a password or a token.
 */
#include "server.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "chat.h"
#include "loader.h"
#include "log.h"
#include "members.h"
#include "peer.h"
#include "seq.h"
#include "transfer.h"
#include "workers.h"

#define PL_SEQ_MAX_BATCH 2048u        /* ops per batch (seq.c also caps its bytes) */
#define PL_SUB_BUCKETS 4096u          /* subscription chains, by uid */
#define PL_TOKEN_BYTES 32u
#define PL_TOKEN_TEXT_LEN 43u         /* base64url of 32 bytes, no padding */
#define PL_DRAIN_TIMEOUT_MS 15000u    /* shutdown: wait for hash jobs and batches */
#define PL_CLOSE_TIMEOUT_MS 3000u     /* shutdown: wait for replies to flush */
#define PL_DRAIN_TICK_MS 10u

/* Failed-login throttling (DESIGN.md §1: failed attempts are rate-limited),
 * by username and by client address, with limits from s->limits. Usernames
 * are keyed whether or not the account exists, so the limiter itself does
 * not reveal which names are registered. A slot that has seen no failure
 * for PL_RL_FORGET_MS starts over: old mistakes do not follow a user for
 * ever, and a shared address (NAT) recovers on its own. */
#define PL_RL_SLOTS 1024u
#define PL_RL_KEY_MAX 64u
#define PL_RL_FORGET_MS (15u * 60u * 1000u)

/* Connections per client address: a chained table of counts. */
#define PL_ADDR_BUCKETS 1024u

typedef struct addr_count {
    struct addr_count *next;
    uint32_t conns;
    char ip[64];
} addr_count;

/* How long a held request waits for a serving primary (docs/protocol.md,
 * "Failover"), in election timeouts: one for the backups to notice that the
 * primary is gone, one for a view change whose would-be primary is down too
 * (5 servers, two of them down), and the rest for the new primary's lease
 * and for a slow machine. A plain failover settles in about 1.5. */
#define PL_HOLD_ELECTIONS 3u
/* A backup names the primary as serving while it heard it within this many
 * heartbeats (pl_vr_vouches). */
#define PL_HOLD_FRESH_HEARTBEATS 2u

typedef struct pl_conn pl_conn;
typedef struct pl_held pl_held;
struct pl_conn {
    pl_server *srv;
    const pl_transport_plugin *tp; /* the transport it came in on */
    pl_transport_conn *tc;    /* NULL once the transport reported it closed */
    uint32_t refs;
    char peer[64];
    pl_conn *prev, *next;     /* all open connections */
    int subscribed;
    uint64_t sub_uid;
    uint8_t sub_token_hash[32]; /* the session it subscribed with */
    pl_conn *sub_prev, *sub_next; /* chain of bucket sub_uid % PL_SUB_BUCKETS */
    pl_conn *th_prev, *th_next;   /* chain of bucket th_bucket(sub_token_hash) */
    uint64_t sub_expires_ms;  /* wall clock when that session expires; 0 = never */
    char ip[64];              /* peer without the port: the per-address key */
    addr_count *addr;         /* counted in conns_per_address; NULL if refused */
    /* Request rate: a token bucket in thousandths of a request, refilled at
     * limits.requests_per_second; rejections are counted per second to find
     * a connection that keeps flooding. */
    uint64_t tokens_milli;
    uint64_t tokens_ms;
    uint64_t reject_window_ms;
    uint32_t rejected;
    /* Requests held until a primary is known (pl_held), oldest first. */
    pl_held *held_head, *held_tail;
    uint32_t n_held;
    /* The session token of its last request and that token's hash
     * (conn_token_hash); tok_len 0: none kept. */
    uint8_t tok_len;
    char tok[PL_TOKEN_TEXT_LEN];
    uint8_t tok_hash[32];
};

/* A request that arrived while this server could not name a serving
 * primary: a view change, a primary silent for a while, a new primary
 * waiting out its lease. It waits (on the loop, in this list) until the
 * server serves or can name the primary, or PL_HOLD_ELECTIONS election
 * timeouts pass, and is then answered as if it had just arrived. The
 * request is copied whole into the bytes after the struct: a transport's
 * pl_request is only valid during its call. */
struct pl_held {
    pl_held *prev, *next;     /* the server's list, oldest first */
    pl_held *cprev, *cnext;   /* its connection's list */
    pl_conn *conn;            /* holds a reference */
    uint64_t since_ms, expires_ms; /* monotonic */
    size_t bytes;             /* the whole allocation */
    pl_request req;
};

typedef struct rl_slot {
    char name[PL_RL_KEY_MAX + 1];
    uint32_t fails;
    uint64_t until_ms;        /* no attempt accepted before this time */
    uint64_t last_ms;         /* last failure */
} rl_slot;

/* One more transport served beside the main one (config "transports"): its
 * own plugin and listener on port + port_offset, the same pipeline. */
typedef struct pl_listener {
    pl_server *srv;
    pl_plugin *plugin;
    const pl_transport_plugin *tp;
    pl_transport_host host;
    pl_transport_server *tsrv;
    uint16_t port_offset;
} pl_listener;

/* A membership change this primary drives (admin POST /cluster/...): the
 * new servers are learners until they have caught up, then one RECONFIG op
 * makes the change. */
typedef struct reconf_job {
    pl_members want;
    pl_server_conf learners[PL_VR_MAX_REPLICAS]; /* hosts point into want */
    uint32_t n_learners;
    pl_admin_reply_fn reply;
    void *req;
    uint64_t started_ms;
    int proposed;
    struct event *timer;
} reconf_job;

#define PL_RECONF_CATCHUP_MS 120000u
#define PL_RECONF_POLL_MS 100

struct pl_server {
    struct event_base *base;
    const pl_config *cfg;
    uint32_t self;            /* our slot: index in members, or members.n when not one */
    pl_server_conf me;        /* our own entry of the config file (host borrowed) */
    pl_members members;       /* the membership in force (core/members.h) */
    reconf_job *job;
    int peers_stale;          /* members changed; the peer table follows VR (on_role_changed) */
    int removed;              /* a membership change left this server out */
    pl_peer_cb pcb;
    char *data_dir;
    char address[300];
    char transport_desc[96];
    pl_plugin *store_plugin;
    pl_plugin *transport_plugin;
    const pl_store_plugin *sp;
    const pl_transport_plugin *tp;
    pl_store *st;
    pl_chat *chat;
    pl_workers *workers;
    pl_seq *seq;
    pl_vr_config vrcfg;
    pl_peer *peer;            /* NULL for a single server */
    struct status_query *queries; /* status requests waiting for peers */
    uint64_t next_query_id;
    int was_serving;
    pl_transport_host thost;
    pl_transport_server *tsrv;
    pl_listener *extra;       /* cfg->n_transports more transports */
    pl_conn *conns;
    uint32_t n_conns;
    pl_held *held_head, *held_tail; /* oldest first; all expire in that order */
    uint32_t n_held;
    uint64_t held_bytes;
    int serving_told;         /* what the transports were told (-1: nothing yet) */
    pl_conn *subs[PL_SUB_BUCKETS];
    /* The same subscriptions by session: a logout finds the connections
     * subscribed with the session it ends without walking every one. */
    pl_conn *subs_th[PL_SUB_BUCKETS];
    /* Verified against when a login names no account, so a missing user
     * costs the same time as a wrong password. */
    char dummy_hash[crypto_pwhash_STRBYTES];
    uint64_t last_time_ms;
    int digest_valid;
    uint64_t digest_op;
    char digest[65];
    rl_slot *rl;              /* failed logins by username */
    rl_slot *rl_addr;         /* failed logins by client address */
    addr_count *addrs[PL_ADDR_BUCKETS];
    pl_limits limits;         /* swapped whole by pl_server_set_limits */
    int stopping;
    int closing;
    uint64_t stop_ms, close_ms;
    struct event *drain_ev;
    pl_metrics metrics;       /* counters for GET /metrics (admin.h) */
    pl_admin *admin;          /* NULL without an admin_port */
    pl_xfer_host xfer;        /* the /chat/ endpoints' view of us (core/transfer.h) */
    uint64_t metrics_view;    /* the view metrics last saw, to count changes */
};

/* Everything a request waiting on a worker or the sequencer needs later. */
typedef struct pl_pending {
    pl_server *srv;
    pl_conn *conn;            /* holds a reference */
    uint32_t method;
    uint64_t request_id;
    uint64_t client_id;
    uint64_t request_no;
    uint64_t uid;
    int exists;               /* login: the account was found */
    char name[PL_USERNAME_MAX + 1];
    char token[PL_TOKEN_TEXT_LEN + 1];
    uint64_t submit_us;       /* monotonic, for the commit latency histogram */
} pl_pending;

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The op timestamp: wall clock, but never earlier than the previous op's, so
 * message times follow message ids even if the clock steps back. */
static uint64_t op_time(pl_server *s)
{
    uint64_t t = wall_ms();
    if (t < s->last_time_ms)
        t = s->last_time_ms;
    s->last_time_ms = t;
    return t;
}

/* ------------------------------------------------------------ connections */

static void conn_ref(pl_conn *c)
{
    c->refs++;
}

static void conn_unref(pl_conn *c)
{
    if (--c->refs == 0) {
        sodium_memzero(c->tok, sizeof c->tok);
        free(c);
    }
}

/* The hash of a request's session token. A client sends the same token
 * with every request on a connection, so the hash of the last one is kept:
 * hashing each request's token was 3 % of the server's CPU with 32 sends in
 * flight per connection (docs/performance.md, issue 19 round 9). Only the
 * hashing is saved; the session is looked up on every request, so a logout
 * or a deleted account takes effect as before. */
static void conn_token_hash(pl_conn *c, pl_str token, uint8_t out[32])
{
    if (token.len != 0 && token.len == c->tok_len && memcmp(token.ptr, c->tok, token.len) == 0) {
        memcpy(out, c->tok_hash, 32);
        return;
    }
    pl_chat_token_hash(token, out);
    if (token.len <= sizeof c->tok) {
        memcpy(c->tok, token.ptr, token.len);
        c->tok_len = (uint8_t)token.len;
        memcpy(c->tok_hash, out, 32);
    } else {
        c->tok_len = 0;
    }
}

/* A token hash is a BLAKE2b digest of a random token: any 4 of its bytes
 * spread evenly. */
static uint32_t th_bucket(const uint8_t th[32])
{
    return ((uint32_t)th[0] | (uint32_t)th[1] << 8 | (uint32_t)th[2] << 16 |
            (uint32_t)th[3] << 24) % PL_SUB_BUCKETS;
}

static void sub_unlink(pl_server *s, pl_conn *c)
{
    if (!c->subscribed)
        return;
    if (c->sub_prev)
        c->sub_prev->sub_next = c->sub_next;
    else
        s->subs[c->sub_uid % PL_SUB_BUCKETS] = c->sub_next;
    if (c->sub_next)
        c->sub_next->sub_prev = c->sub_prev;
    c->sub_prev = c->sub_next = NULL;
    if (c->th_prev)
        c->th_prev->th_next = c->th_next;
    else
        s->subs_th[th_bucket(c->sub_token_hash)] = c->th_next;
    if (c->th_next)
        c->th_next->th_prev = c->th_prev;
    c->th_prev = c->th_next = NULL;
    c->subscribed = 0;
}

static void sub_link(pl_server *s, pl_conn *c, uint64_t uid, const uint8_t th[32])
{
    sub_unlink(s, c);
    c->subscribed = 1;
    c->sub_uid = uid;
    memcpy(c->sub_token_hash, th, 32);
    pl_conn **head = &s->subs[uid % PL_SUB_BUCKETS];
    c->sub_prev = NULL;
    c->sub_next = *head;
    if (*head)
        (*head)->sub_prev = c;
    *head = c;
    head = &s->subs_th[th_bucket(th)];
    c->th_prev = NULL;
    c->th_next = *head;
    if (*head)
        (*head)->th_prev = c;
    *head = c;
}

/* "1.2.3.4:5678" or "[::1]:5678" -> "1.2.3.4" / "::1". */
static void peer_ip(const char *peer, char *out, size_t outlen)
{
    const char *start = peer, *end = strrchr(peer, ':');
    if (peer[0] == '[') {
        start = peer + 1;
        end = strchr(start, ']');
    }
    size_t n = end && end > start ? (size_t)(end - start) : strlen(start);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, start, n);
    out[n] = 0;
}

static uint32_t addr_bucket(const char *ip)
{
    uint8_t h[8];
    uint64_t k;
    crypto_generichash(h, sizeof h, (const unsigned char *)ip, strlen(ip), NULL, 0);
    memcpy(&k, h, sizeof k);
    return (uint32_t)(k % PL_ADDR_BUCKETS);
}

/* The count entry of ip, created at 0 when missing; NULL when out of memory. */
static addr_count *addr_get(pl_server *s, const char *ip)
{
    addr_count **head = &s->addrs[addr_bucket(ip)];
    for (addr_count *a = *head; a; a = a->next)
        if (strcmp(a->ip, ip) == 0)
            return a;
    addr_count *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    snprintf(a->ip, sizeof a->ip, "%s", ip);
    a->next = *head;
    *head = a;
    return a;
}

/* Drop one connection from a's count; a (when 0) is freed. */
static void addr_put(pl_server *s, addr_count *a)
{
    if (!a || --a->conns > 0)
        return;
    for (addr_count **pp = &s->addrs[addr_bucket(a->ip)]; *pp; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            free(a);
            return;
        }
}

static void held_drop_conn(pl_server *s, pl_conn *c);

static void *conn_open_on(pl_server *s, const pl_transport_plugin *tp, pl_transport_conn *tc,
                          const char *peer)
{
    if (s->stopping)
        return NULL;
    pl_conn *c = calloc(1, sizeof *c);
    if (!c) {
        pl_log(PL_LOG_WARN, "refusing connection from %s: out of memory", peer ? peer : "?");
        return NULL;
    }
    c->srv = s;
    c->tp = tp;
    c->tc = tc;
    c->refs = 1; /* the transport's */
    snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
    peer_ip(c->peer, c->ip, sizeof c->ip);
    c->tokens_milli = (uint64_t)s->limits.request_burst * 1000u;
    c->tokens_ms = mono_ms();
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    s->metrics.conns_accepted++;
    pl_log(PL_LOG_DEBUG, "connection from %s", c->peer);

    addr_count *a = addr_get(s, c->ip);
    uint32_t max = s->limits.conns_per_address;
    if (a && (max == 0 || a->conns < max)) {
        a->conns++;
        c->addr = a;
        return c;
    }
    /* Refused, but with a reason: the connection is taken only long enough
     * to carry one error frame, and is not counted against its address. */
    char text[200];
    if (a)
        snprintf(text, sizeof text, "too many connections from %s: limits.conns_per_address "
                 "is %u", c->ip, max);
    else
        snprintf(text, sizeof text, "cannot track connections from %s: out of memory", c->ip);
    pl_log(PL_LOG_WARN, "refusing connection %s: %s", c->peer, text);
    pl_response r = { .method = PL_M_NONE, .status = a ? PL_ERR_RATE_LIMITED : PL_ERR_NOMEM,
                      .error = pl_str_c(text) };
    tp->conn_send(tc, &r);
    tp->conn_close(tc);
    return c;
}

static void *on_conn_open(void *ud, pl_transport_conn *tc, const char *peer)
{
    pl_server *s = ud;
    return conn_open_on(s, s->tp, tc, peer);
}

static void *on_extra_conn_open(void *ud, pl_transport_conn *tc, const char *peer)
{
    pl_listener *l = ud;
    return conn_open_on(l->srv, l->tp, tc, peer);
}

static void on_conn_closed(void *ud, void *ctx)
{
    pl_server *s = ud;
    pl_conn *c = ctx;
    pl_log(PL_LOG_DEBUG, "connection from %s closed", c->peer);
    c->tc = NULL;
    sub_unlink(s, c);
    held_drop_conn(s, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->n_conns--;
    addr_put(s, c->addr);
    c->addr = NULL;
    conn_unref(c);
}

/* Send one frame. A reply that cannot be encoded (larger than max_frame,
 * say) becomes an error reply naming why; a push that cannot be encoded is
 * logged and skipped — the message stays unread and the client gets it with
 * its next read. */
static void conn_send(pl_conn *c, const pl_response *r)
{
    pl_server *s = c->srv;
    if (!c->tc)
        return; /* closed while the request was in flight: nobody to tell */
    if (r->method == PL_M_PUSH)
        s->metrics.pushes++;
    else if (r->status != PL_OK && r->method < PL_M__COUNT)
        s->metrics.errors[r->method]++;
    conn_ref(c);
    int rc = c->tp->conn_send(c->tc, r);
    if (rc == PL_ERR_IO) {
        /* The connection is already closing (bad frame, shutdown, output
         * over its limit); its conn_closed is on the way. */
        pl_log(PL_LOG_DEBUG, "%s: %s frame dropped: connection closing", c->peer,
               pl_method_name(r->method));
    } else if (rc != PL_OK) {
        if (r->method == PL_M_PUSH) {
            pl_log(PL_LOG_WARN, "push of message %" PRIu64 " to %s failed: %s",
                   r->n_msgs ? r->msgs[0].id : 0, c->peer, pl_strerror(rc));
        } else if (r->status == PL_OK && c->tc) {
            char text[160];
            snprintf(text, sizeof text, "reply to %s could not be sent: %s (max_frame %u bytes)",
                     pl_method_name(r->method), pl_strerror(rc), s->cfg->max_frame);
            pl_response e = { .method = r->method, .request_id = r->request_id,
                              .status = (uint32_t)rc, .error = pl_str_c(text) };
            pl_log(PL_LOG_WARN, "%s: %s", c->peer, text);
            if (c->tp->conn_send(c->tc, &e) != PL_OK && c->tc)
                c->tp->conn_close(c->tc);
        } else if (c->tc) {
            pl_log(PL_LOG_WARN, "%s: error reply could not be sent (%s); closing",
                   c->peer, pl_strerror(rc));
            c->tp->conn_close(c->tc);
        }
    }
    conn_unref(c);
}

static void reply_err(pl_conn *c, uint32_t method, uint64_t request_id, int status,
                      const char *text)
{
    pl_response r = { .method = method, .request_id = request_id, .status = (uint32_t)status,
                      .error = pl_str_c(text ? text : pl_strerror(status)) };
    conn_send(c, &r);
}

static void reply_ok(pl_conn *c, const pl_request *req)
{
    pl_response r = { .method = req->method, .request_id = req->request_id };
    conn_send(c, &r);
}

/* This server cannot answer clients now: a backup names the primary (the
 * client follows the redirect); during a view change, or while a primary
 * waits for its lease, the client is told to retry. */
static void reply_not_serving(pl_server *s, pl_conn *c, uint32_t method, uint64_t request_id)
{
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (pl_vr_status(vr) == PL_VR_NORMAL && !pl_vr_is_primary(vr)) {
        uint32_t pi = pl_vr_primary(vr);
        const pl_server_conf *p = &s->members.servers[pi < s->members.n ? pi : 0];
        char leader[300], text[360];
        snprintf(leader, sizeof leader, strchr(p->host, ':') ? "[%s]:%u" : "%s:%u", p->host,
                 (unsigned)p->port);
        snprintf(text, sizeof text, "not the primary; the primary is server %u at %s",
                 pl_vr_primary(vr), leader);
        pl_response r = { .method = method, .request_id = request_id,
                          .status = PL_ERR_NOT_PRIMARY, .error = pl_str_c(text),
                          .leader = pl_str_c(leader) };
        conn_send(c, &r);
        return;
    }
    const char *why = "a view change is in progress; retry";
    if (pl_vr_is_primary(vr))
        why = pl_vr_can_serve(vr, mono_ms()) ? "the primary is still applying committed ops; retry"
                                             : "the primary has not heard from a majority yet; retry";
    reply_err(c, method, request_id, PL_ERR_UNAVAILABLE, why);
}

/* ---------------------------------------------------------------- pending */

static pl_pending *pending_new(pl_server *s, pl_conn *c, const pl_request *req)
{
    pl_pending *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->srv = s;
    p->conn = c;
    conn_ref(c);
    p->method = req->method;
    p->request_id = req->request_id;
    p->client_id = req->client_id;
    p->request_no = req->request_no;
    return p;
}

static void pending_free(pl_pending *p)
{
    if (!p)
        return;
    conn_unref(p->conn);
    sodium_memzero(p->token, sizeof p->token);
    free(p);
}

static void pending_fail(pl_pending *p, int status, const char *text)
{
    reply_err(p->conn, p->method, p->request_id, status, text);
    pending_free(p);
}

/* The sequencer finished an op this connection asked for. */
static void on_committed(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    pl_pending *p = ud;
    if (err == PL_ERR_NOT_PRIMARY) {
        reply_not_serving(p->srv, p->conn, p->method, p->request_id);
        pending_free(p);
        return;
    }
    if (err != PL_OK) {
        char text[160];
        snprintf(text, sizeof text, "%s: the change could not be committed: %s",
                 pl_method_name(p->method), pl_strerror(err));
        /* Unavailable, not the store's own code: the client should retry,
         * and a retry with the same request number is answered exactly once
         * from the client table if the op did land in the log. */
        pending_fail(p, PL_ERR_UNAVAILABLE, text);
        return;
    }
    pl_response r = res->reply;
    r.method = p->method;
    r.request_id = p->request_id;
    if (r.status != PL_OK && r.error.len == 0)
        r.error = pl_str_c(pl_strerror((int)r.status));
    if (p->method == PL_M_LOGIN && r.status == PL_OK)
        r.token = (pl_str){ p->token, PL_TOKEN_TEXT_LEN };
    pl_hist_add(&p->srv->metrics.commit_latency, mono_us() - p->submit_us);
    pl_log(PL_LOG_DEBUG, "op %" PRIu64 " %s: %s", op, pl_method_name(p->method),
           pl_strerror((int)r.status));
    conn_send(p->conn, &r);
    pending_free(p);
}

static void submit_op(pl_pending *p, const pl_op *op)
{
    p->submit_us = mono_us();
    int rc = pl_seq_submit(p->srv->seq, op, on_committed, p);
    if (rc != PL_OK) {
        char text[160];
        snprintf(text, sizeof text, "%s: could not queue the change: %s",
                 pl_method_name(p->method), pl_strerror(rc));
        pending_fail(p, rc, text);
    }
}

/* ---------------------------------------------------- login rate limiting */

static rl_slot *rl_find(rl_slot *table, pl_str name, int create)
{
    uint8_t h[8];
    if (name.len > PL_RL_KEY_MAX)
        name.len = PL_RL_KEY_MAX;
    crypto_generichash(h, sizeof h, (const unsigned char *)name.ptr, name.len, NULL, 0);
    uint64_t k;
    memcpy(&k, h, sizeof k);
    rl_slot *r = &table[k % PL_RL_SLOTS];
    int same = strlen(r->name) == name.len && memcmp(r->name, name.ptr, name.len) == 0;
    if (same && r->last_ms + PL_RL_FORGET_MS < mono_ms())
        memset(r, 0, sizeof *r);
    else if (same)
        return r;
    if (!create)
        return NULL;
    /* A collision evicts the older name: the table bounds memory, and an
     * attacker cycling names to evict a victim's slot gains nothing they
     * could not gain by guessing against fresh names. */
    memset(r, 0, sizeof *r);
    memcpy(r->name, name.ptr, name.len);
    return r;
}

/* 0 when a login attempt for this key may proceed, else ms to wait. */
static uint64_t rl_wait(rl_slot *table, pl_str key)
{
    rl_slot *r = rl_find(table, key, 0);
    uint64_t now = mono_ms();
    return r && r->until_ms > now ? r->until_ms - now : 0;
}

/* Exponential back-off: after `free_fails` failures each further one
 * doubles the wait, from 1 s up to limits.login_backoff_max_ms. */
static void rl_failed(pl_server *s, rl_slot *table, pl_str key, uint32_t free_fails)
{
    rl_slot *r = rl_find(table, key, 1);
    uint64_t now = mono_ms();
    r->fails++;
    r->last_ms = now;
    if (r->fails > free_fails) {
        uint64_t max = s->limits.login_backoff_max_ms;
        uint32_t shift = r->fails - free_fails - 1;
        uint64_t delay = shift >= 32 ? max : (uint64_t)1000u << shift;
        if (delay > max)
            delay = max;
        r->until_ms = now + delay;
    }
}

/* A correct password clears its username's failures, not its address's:
 * an attacker holding one valid account must not be able to reset the
 * counter that throttles its guesses at every other account. */
static void rl_succeeded(pl_server *s, pl_str name)
{
    rl_slot *r = rl_find(s->rl, name, 0);
    if (r)
        memset(r, 0, sizeof *r);
}

/* --------------------------------------------------------------- register */

static void on_register_hashed(void *ud, int err, const char *hash)
{
    pl_pending *p = ud;
    if (err != PL_OK) {
        char text[200];
        snprintf(text, sizeof text, "password hashing failed: %s (memlimit %" PRIu64 " bytes)",
                 pl_strerror(err), p->srv->cfg->pwhash_memlimit);
        pending_fail(p, err, text);
        return;
    }
    pl_op op = { .kind = PL_OP_REGISTER, .client_id = p->client_id,
                 .request_no = p->request_no, .time_ms = op_time(p->srv),
                 .name = pl_str_c(p->name), .pwhash = pl_str_c(hash) };
    submit_op(p, &op);
}

static void busy_reply(pl_server *s, pl_conn *c, const pl_request *req, int rc)
{
    char text[160];
    if (rc == PL_ERR_BUSY)
        snprintf(text, sizeof text, "server busy: %u password checks already queued "
                 "(limits.password_checks_queued); retry", s->limits.password_checks_queued);
    else if (rc == PL_ERR_UNAVAILABLE)
        snprintf(text, sizeof text, "server is shutting down; retry");
    else
        snprintf(text, sizeof text, "%s", pl_strerror(rc));
    reply_err(c, req->method, req->request_id, rc, text);
}

static void do_register(pl_server *s, pl_conn *c, const pl_request *req)
{
    int rc;
    if ((rc = pl_chat_check_username(req->username)) != PL_OK ||
        (rc = pl_chat_check_password(req->password)) != PL_OK) {
        reply_err(c, req->method, req->request_id, rc, NULL);
        return;
    }
    /* Without a client id there is no retry to answer from the client table,
     * so a taken name can be refused before paying for a hash. */
    if (req->client_id == 0 && pl_chat_account(s->chat, req->username, NULL, NULL) == PL_OK) {
        char text[80];
        snprintf(text, sizeof text, "username \"%.*s\" is already taken",
                 (int)req->username.len, req->username.ptr);
        reply_err(c, req->method, req->request_id, PL_ERR_USER_EXISTS, text);
        return;
    }
    pl_pending *p = pending_new(s, c, req);
    if (!p) {
        reply_err(c, req->method, req->request_id, PL_ERR_NOMEM, NULL);
        return;
    }
    memcpy(p->name, req->username.ptr, req->username.len);
    rc = pl_workers_hash(s->workers, req->password, on_register_hashed, p);
    if (rc != PL_OK) {
        busy_reply(s, c, req, rc);
        pending_free(p);
    }
}

/* ------------------------------------------------------------------ login */

static void login_verified(pl_pending *p, int err, const char *rehash);

static void on_login_verified(void *ud, int err)
{
    login_verified(ud, err, NULL);
}

static void on_login_rehashed(void *ud, int err, const char *hash)
{
    login_verified(ud, err, hash);
}

/* rehash: the Argon2id string that replaces an imported hash, or NULL. */
static void login_verified(pl_pending *p, int err, const char *rehash)
{
    pl_server *s = p->srv;
    pl_str name = pl_str_c(p->name);
    if (err == PL_ERR_NOMEM) {
        /* The Argon2id hash replacing an imported one could not get its
         * memory: not the user's mistake, so no failed login is counted. */
        char text[200];
        snprintf(text, sizeof text, "server busy: password hashing failed: %s (memlimit %"
                 PRIu64 " bytes); retry", pl_strerror(err), s->cfg->pwhash_memlimit);
        pending_fail(p, PL_ERR_BUSY, text);
        return;
    }
    if (err != PL_OK || !p->exists) {
        rl_failed(s, s->rl, name, s->limits.login_failures_per_user);
        rl_failed(s, s->rl_addr, pl_str_c(p->conn->ip), s->limits.login_failures_per_address);
        pl_log(PL_LOG_INFO, "failed login for \"%s\" from %s", p->name, p->conn->peer);
        pending_fail(p, PL_ERR_AUTH, NULL);
        return;
    }
    rl_succeeded(s, name);
    uint8_t raw[PL_TOKEN_BYTES];
    uint8_t th[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(p->token, sizeof p->token, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    pl_chat_token_hash((pl_str){ p->token, PL_TOKEN_TEXT_LEN }, th);
    pl_op op = { .kind = rehash ? PL_OP_LOGIN_REHASH : PL_OP_LOGIN, .client_id = p->client_id,
                 .request_no = p->request_no, .time_ms = op_time(s), .uid = p->uid,
                 .name = name, .token_hash = { (const char *)th, sizeof th },
                 .pwhash = pl_str_c(rehash) };
    submit_op(p, &op);
}

static void do_login(pl_server *s, pl_conn *c, const pl_request *req)
{
    int rc;
    /* The minimum length is a rule for new passwords (register): an account
     * imported from the prototype, which had none, keeps its shorter one,
     * and for any other account a short one is just a wrong password. */
    if ((rc = pl_chat_check_username(req->username)) != PL_OK) {
        reply_err(c, req->method, req->request_id, rc, NULL);
        return;
    }
    if (req->password.len == 0 || req->password.len > PL_PASSWORD_MAX) {
        char text[80];
        snprintf(text, sizeof text, "password must be 1-%u bytes", PL_PASSWORD_MAX);
        reply_err(c, req->method, req->request_id, PL_ERR_PASSWORD, text);
        return;
    }
    uint64_t wait = rl_wait(s->rl, req->username);
    uint64_t wait_addr = rl_wait(s->rl_addr, pl_str_c(c->ip));
    if (wait || wait_addr) {
        char text[200];
        if (wait >= wait_addr)
            snprintf(text, sizeof text, "too many failed logins for this username (more than "
                     "limits.login_failures_per_user = %u); retry in %" PRIu64 " s",
                     s->limits.login_failures_per_user, (wait + 999) / 1000);
        else
            snprintf(text, sizeof text, "too many failed logins from %s (more than "
                     "limits.login_failures_per_address = %u); retry in %" PRIu64 " s",
                     c->ip, s->limits.login_failures_per_address, (wait_addr + 999) / 1000);
        reply_err(c, req->method, req->request_id, PL_ERR_RATE_LIMITED, text);
        return;
    }
    pl_pending *p = pending_new(s, c, req);
    if (!p) {
        reply_err(c, req->method, req->request_id, PL_ERR_NOMEM, NULL);
        return;
    }
    memcpy(p->name, req->username.ptr, req->username.len);
    pl_str pwhash = { 0 };
    rc = pl_chat_account(s->chat, req->username, &p->uid, &pwhash);
    if (rc == PL_OK) {
        p->exists = 1;
    } else if (rc == PL_ERR_NOT_FOUND) {
        /* Same work for a missing account as for a wrong password. */
        pwhash = pl_str_c(s->dummy_hash);
    } else {
        pending_fail(p, rc, NULL);
        return;
    }
    /* An imported account's first login: the PBKDF2 check and the Argon2id
     * hash that replaces it run on a worker, and the login op carries the
     * new hash (on_login_rehashed). */
    if (p->exists && pl_chat_pwhash_is_pbkdf2(pwhash))
        rc = pl_workers_verify_rehash(s->workers, pwhash, req->password, on_login_rehashed, p);
    else
        rc = pl_workers_verify(s->workers, pwhash, req->password, on_login_verified, p);
    if (rc != PL_OK) {
        busy_reply(s, c, req, rc);
        pending_free(p);
    }
}

/* --------------------------------------------------------- delete account */

static void on_delete_verified(void *ud, int err)
{
    pl_pending *p = ud;
    if (err != PL_OK) {
        pending_fail(p, PL_ERR_AUTH, "wrong password");
        return;
    }
    pl_op op = { .kind = PL_OP_DELETE_ACCOUNT, .client_id = p->client_id,
                 .request_no = p->request_no, .time_ms = op_time(p->srv), .uid = p->uid };
    submit_op(p, &op);
}

static void do_delete_account(pl_server *s, pl_conn *c, const pl_request *req, uint64_t uid)
{
    pl_str name, pwhash;
    int rc = pl_chat_account_by_uid(s->chat, uid, &name, &pwhash);
    if (rc != PL_OK) {
        reply_err(c, req->method, req->request_id,
                  rc == PL_ERR_NOT_FOUND ? PL_ERR_NOT_LOGGED_IN : rc, NULL);
        return;
    }
    if (req->password.len > PL_PASSWORD_MAX) {
        reply_err(c, req->method, req->request_id, PL_ERR_PASSWORD, NULL);
        return;
    }
    pl_pending *p = pending_new(s, c, req);
    if (!p) {
        reply_err(c, req->method, req->request_id, PL_ERR_NOMEM, NULL);
        return;
    }
    p->uid = uid;
    rc = pl_workers_verify(s->workers, pwhash, req->password, on_delete_verified, p);
    if (rc != PL_OK) {
        busy_reply(s, c, req, rc);
        pending_free(p);
    }
}

/* -------------------------------------------------------------- subscribe */

static void do_subscribe(pl_server *s, pl_conn *c, const pl_request *req, uint64_t uid,
                         const uint8_t th[32])
{
    sub_link(s, c, uid, th);
    reply_ok(c, req);

    /* The backlog, then live pushes. Both happen on this thread, so no op can
     * commit between the last backlog page and the first live push: no gap,
     * no duplicate. */
    pl_request q = *req;
    q.after_id = req->after_id;
    for (;;) {
        pl_response page;
        int rc = pl_chat_query(s->chat, uid, &q, &page);
        if (rc != PL_OK || page.status != PL_OK) {
            pl_log(PL_LOG_WARN, "subscribe backlog for uid %" PRIu64 ": %s", uid,
                   pl_strerror(rc != PL_OK ? rc : (int)page.status));
            return;
        }
        for (uint32_t i = 0; i < page.n_msgs && c->tc; i++) {
            pl_response push = { .method = PL_M_PUSH, .msgs = &page.msgs[i], .n_msgs = 1 };
            conn_send(c, &push);
        }
        if (!page.more || page.n_msgs == 0 || !c->tc)
            return;
        q.after_id = page.msgs[page.n_msgs - 1].id;
    }
}

/* ----------------------------------------------------------------- status */

/* Our own row. Strings point into s (address, digest) or are static. */
static int own_status(pl_server *s, pl_server_status *row)
{
    uint64_t applied = s->sp->applied_op(s->st);
    /* The digest scans all state: compute it once per applied op. */
    if (!s->digest_valid || s->digest_op != applied) {
        int rc = pl_chat_digest(s->chat, s->digest);
        if (rc != PL_OK)
            return rc;
        s->digest_valid = 1;
        s->digest_op = applied;
    }
    const pl_vr *vr = pl_seq_vr(s->seq);
    *row = (pl_server_status){
        .id = s->self,
        .address = pl_str_c(s->address),
        .reachable = 1,
        .role = pl_str_c(s->removed ? "removed" : pl_vr_role(vr, mono_ms())),
        .view = pl_vr_view(vr),
        .op = pl_vr_op(vr),
        .commit = pl_vr_commit(vr),
        .applied = applied,
        .store = pl_str_c(s->sp->name),
        .transport = pl_str_c(s->tp->name),
        .digest = pl_str_c(s->digest),
    };
    return PL_OK;
}

/* A status request waiting for the other servers' rows. */
#define PL_STATUS_WAIT_MS 800
#define PL_STATUS_STR 128

typedef struct status_query {
    struct status_query *next;
    pl_server *srv;
    pl_conn *conn;            /* holds a reference */
    uint64_t id;
    uint64_t request_id;
    uint32_t n, missing;
    uint32_t have_mask;
    pl_server_status rows[PL_VR_MAX_REPLICAS];
    char strs[PL_VR_MAX_REPLICAS][5][PL_STATUS_STR];
    char own_digest[65];
    struct event *timer;
} status_query;

static pl_str keep_str(char *buf, pl_str v)
{
    size_t n = v.len < PL_STATUS_STR - 1 ? v.len : PL_STATUS_STR - 1;
    if (n)
        memcpy(buf, v.ptr, n);
    buf[n] = 0;
    return (pl_str){ buf, (uint32_t)n };
}

static void status_answer(status_query *q)
{
    pl_server *s = q->srv;
    for (status_query **pp = &s->queries; *pp; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    pl_response r = { .method = PL_M_STATUS, .request_id = q->request_id,
                      .servers = q->rows, .n_servers = q->n };
    conn_send(q->conn, &r);
    conn_unref(q->conn);
    event_free(q->timer);
    free(q);
}

static void status_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    status_answer(arg);
}

static void on_peer_status_reply(void *ud, uint64_t query_id, const pl_server_status *row)
{
    pl_server *s = ud;
    status_query *q = s->queries;
    while (q && q->id != query_id)
        q = q->next;
    if (!q || row->id >= q->n || (q->have_mask & (1u << row->id)))
        return;
    pl_server_status *r = &q->rows[row->id];
    char (*b)[PL_STATUS_STR] = q->strs[row->id];
    *r = *row;
    r->address = keep_str(b[0], row->address);
    r->role = keep_str(b[1], row->role);
    r->store = keep_str(b[2], row->store);
    r->transport = keep_str(b[3], row->transport);
    r->digest = keep_str(b[4], row->digest);
    r->reachable = 1;
    q->have_mask |= 1u << row->id;
    if (--q->missing == 0)
        status_answer(q);
}

static void on_peer_status(void *ud, pl_server_status *row)
{
    pl_server *s = ud;
    if (own_status(s, row) != PL_OK) {
        memset(row, 0, sizeof *row);
        row->id = s->self;
        row->address = pl_str_c(s->address);
        row->role = pl_str_c("error");
    }
}

static void on_peer_vr(void *ud, const pl_vr_msg *m)
{
    pl_server *s = ud;
    pl_seq_receive(s->seq, m);
}

static void do_status(pl_server *s, pl_conn *c, const pl_request *req)
{
    pl_server_status own;
    int rc = own_status(s, &own);
    if (rc != PL_OK) {
        reply_err(c, req->method, req->request_id, rc, "status: computing the state digest failed");
        return;
    }
    if (!s->peer) {
        pl_response r = { .method = req->method, .request_id = req->request_id,
                          .servers = &own, .n_servers = 1 };
        conn_send(c, &r);
        return;
    }
    /* Ask every other server over the peer links; answer when all have
     * replied or after PL_STATUS_WAIT_MS, listing the silent ones as
     * unreachable. */
    status_query *q = calloc(1, sizeof *q);
    if (!q || !(q->timer = evtimer_new(s->base, status_timeout, q))) {
        free(q);
        reply_err(c, req->method, req->request_id, PL_ERR_NOMEM, NULL);
        return;
    }
    q->srv = s;
    q->conn = c;
    conn_ref(c);
    q->id = ++s->next_query_id;
    q->request_id = req->request_id;
    /* every member, and ourselves when we are not one */
    q->n = (uint32_t)s->members.n + (s->self >= s->members.n ? 1u : 0u);
    for (uint32_t i = 0; i < q->n; i++) {
        const pl_server_conf *sc = i < s->members.n ? &s->members.servers[i] : &s->me;
        char addr[300];
        snprintf(addr, sizeof addr, strchr(sc->host, ':') ? "[%s]:%u" : "%s:%u", sc->host,
                 (unsigned)sc->port);
        q->rows[i] = (pl_server_status){ .id = i, .role = pl_str_c("unreachable") };
        q->rows[i].address = keep_str(q->strs[i][0], pl_str_c(addr));
    }
    memcpy(q->own_digest, s->digest, sizeof q->own_digest);
    q->rows[s->self] = own;
    q->rows[s->self].digest = pl_str_c(q->own_digest);
    q->rows[s->self].address = keep_str(q->strs[s->self][0], own.address);
    q->have_mask = 1u << s->self;
    q->next = s->queries;
    s->queries = q;
    for (uint32_t i = 0; i < q->n; i++)
        if (i != s->self && pl_peer_status_request(s->peer, i, q->id) == PL_OK)
            q->missing++;
    if (q->missing == 0) {
        status_answer(q);
        return;
    }
    struct timeval tv = { 0, PL_STATUS_WAIT_MS * 1000 };
    evtimer_add(q->timer, &tv);
}

static int sync_peers(pl_server *s, char *err, size_t errlen);
static void tell_serving(pl_server *s);

/* The replication role changed. A server that stops being the primary
 * closes its client connections, so clients (and their subscriptions) move
 * to the new primary at once instead of waiting on a backup. */
static void on_role_changed(void *ud)
{
    pl_server *s = ud;
    if (s->peers_stale && (uint64_t)PL_VR_EPOCH(pl_vr_view(pl_seq_vr(s->seq))) >= s->members.epoch) {
        char why[256];
        s->peers_stale = 0;
        if (sync_peers(s, why, sizeof why) != PL_OK)
            pl_log(PL_LOG_ERROR, "membership epoch %" PRIu64 ": %s", s->members.epoch, why);
    }
    int serving = pl_vr_is_primary(pl_seq_vr(s->seq));
    /* Health watchers hear "not serving" before their connection closes. */
    tell_serving(s);
    if (s->was_serving && !serving) {
        pl_log(PL_LOG_INFO, "no longer the primary: closing %u client connections", s->n_conns);
        for (pl_conn *c = s->conns, *next; c; c = next) {
            next = c->next;
            if (c->tc)
                c->tp->conn_close(c->tc);
        }
    }
    s->was_serving = serving;
    uint64_t view = pl_vr_view(pl_seq_vr(s->seq));
    if (view != s->metrics_view) {
        s->metrics_view = view;
        s->metrics.view_changes++;
        s->metrics.last_view_change_ms = wall_ms();
    }
    /* Held requests are released by the next tick (a few ms), not from
     * inside the replication code that reported this change. */
}

static int seq_send_snapshot(void *ud, uint32_t to, uint64_t view, const uint8_t *data,
                             size_t len)
{
    pl_server *s = ud;
    return s->peer ? pl_peer_send_snapshot(s->peer, to, view, data, len) : PL_ERR_UNAVAILABLE;
}

static void on_peer_snapshot(void *ud, uint32_t from, uint64_t view, uint64_t offset,
                             uint64_t total, const uint8_t *data, size_t len)
{
    pl_server *s = ud;
    pl_seq_snapshot_chunk(s->seq, from, view, offset, total, data, len);
}

static void seq_send(void *ud, uint32_t to, const pl_vr_msg *m)
{
    pl_server *s = ud;
    if (s->peer)
        pl_peer_send(s->peer, to, m);
}

/* -------------------------------------------------------------- membership */

/* Rebuild the peer table: the members in order, then the learners a primary
 * streams to, then ourselves when we are not a member. Our slot is s->self.
 * The peer network starts once there is anybody to talk to. */
/* Our index among the members, or -1 when we are not one. */
static int member_index(const pl_server *s)
{
    return pl_members_find(&s->members, s->me.host, s->me.peer_port);
}

/* Our slot in VR and the peer table: our member index, or the slot right
 * after the members (a non-member drives no change, so has no learners). */
static uint32_t my_slot(const pl_server *s)
{
    int i = member_index(s);
    return i >= 0 ? (uint32_t)i : (uint32_t)s->members.n;
}

static int sync_peers(pl_server *s, char *err, size_t errlen)
{
    pl_server_conf t[PL_VR_MAX_REPLICAS];
    size_t n = 0;
    for (size_t i = 0; i < s->members.n; i++)
        t[n++] = s->members.servers[i];
    for (uint32_t j = 0; s->job && j < s->job->n_learners && n < PL_VR_MAX_REPLICAS; j++)
        t[n++] = s->job->learners[j];
    s->self = my_slot(s);
    if (s->self == n) {
        if (n >= PL_VR_MAX_REPLICAS) {
            snprintf(err, errlen, "more than %d servers", PL_VR_MAX_REPLICAS);
            return PL_ERR_INVALID;
        }
        t[n++] = s->me;
    }
    if (s->peer)
        return pl_peer_set_servers(s->peer, t, n, s->self);
    if (n < 2)
        return PL_OK;
    char why[512];
    s->peer = pl_peer_new(s->base, s->cfg, t, n, s->self, &s->pcb, why, sizeof why);
    if (!s->peer) {
        snprintf(err, errlen, "peer network: %s", why);
        return PL_ERR_IO;
    }
    return PL_OK;
}

static void job_free(reconf_job *j)
{
    if (!j)
        return;
    if (j->timer)
        event_free(j->timer);
    pl_members_clear(&j->want);
    free(j);
}

/* Answer the operator and forget the job (its learners leave the peer
 * table unless the change made them members). */
static void job_finish(pl_server *s, int http, const char *json)
{
    reconf_job *j = s->job;
    if (!j)
        return;
    s->job = NULL;
    if (j->n_learners) {
        char why[256];
        pl_seq_set_learners(s->seq, 0);
        if (sync_peers(s, why, sizeof why) != PL_OK)
            pl_log(PL_LOG_WARN, "membership: %s", why);
    }
    if (j->reply)
        j->reply(j->req, http, json);
    job_free(j);
}

/* {"error": msg} (plus "primary" when primary >= 0) for the admin
 * listener; malloc'd, NULL when out of memory. */
static char *error_json(const char *msg, int primary)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "error", msg) &&
        (primary < 0 || cJSON_AddNumberToObject(o, "primary", primary)))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static void job_fail(pl_server *s, int http, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_fail(pl_server *s, int http, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pl_log(PL_LOG_WARN, "membership change refused or failed: %s", msg);
    char *text = error_json(msg, -1);
    job_finish(s, http, text ? text : "{\"error\":\"out of memory\"}");
    free(text);
}

/* The JSON of GET /cluster/members: the membership plus what this server
 * knows of the current view. */
static char *members_doc(void *ud)
{
    pl_server *s = ud;
    char *enc = NULL;
    size_t len = 0;
    if (pl_members_encode(&s->members, &enc, &len) != PL_OK || len < 2)
        return NULL;
    const pl_vr *vr = pl_seq_vr(s->seq);
    char tail[256];
    snprintf(tail, sizeof tail, ",\"self\":%d,\"primary\":%u,\"view\":%" PRIu64 ",\"role\":\"%s\"}",
             pl_vr_is_member(vr) ? (int)s->self : -1, pl_vr_primary(vr),
             pl_vr_view(vr), s->removed ? "removed" : pl_vr_role(vr, mono_ms()));
    char *out = malloc(len + strlen(tail) + 1);
    if (out) {
        memcpy(out, enc, len - 1); /* without its closing brace */
        strcpy(out + len - 1, tail);
    }
    free(enc);
    return out;
}

static char *seq_members_json(void *ud)
{
    pl_server *s = ud;
    char *enc = NULL;
    size_t len = 0;
    return pl_members_encode(&s->members, &enc, &len) == PL_OK ? enc : NULL;
}

static const pl_members *admin_current(void *ud)
{
    return &((pl_server *)ud)->members;
}

/* A RECONFIG op (or a newer epoch's snapshot) is being applied. */
static int on_reconfigured(void *ud, const uint8_t *body, size_t len, uint64_t op,
                           uint64_t *epoch, uint32_t *n, uint32_t *self, uint64_t *start)
{
    pl_server *s = ud;
    pl_members m;
    char why[512];
    int rc = pl_members_decode(body, len, &m, why, sizeof why);
    if (rc != PL_OK) {
        pl_log(PL_LOG_ERROR, "membership change at op %" PRIu64 " does not decode: %s", op, why);
        return rc;
    }
    if (op)
        m.op = op;
    if (m.epoch > s->members.epoch) {
        /* Durable before the op counts as applied: a restart must find it. */
        if ((rc = pl_members_save(s->data_dir, &m, why, sizeof why)) != PL_OK) {
            pl_log(PL_LOG_ERROR, "membership epoch %" PRIu64 ": %s", m.epoch, why);
            pl_members_clear(&m);
            return rc;
        }
        int was_member = member_index(s) >= 0;
        pl_members_clear(&s->members);
        s->members = m;
        if (s->job) {
            /* the learners are members now, or the change is over */
            s->job->n_learners = 0;
        }
        /* The peer table changes once VR has entered the epoch (its last
         * word to the old configuration goes out through the old table). */
        s->peers_stale = 1;
        int me = member_index(s);
        s->self = my_slot(s);
        char desc[1024];
        pl_members_describe(&s->members, desc, sizeof desc);
        s->removed = me < 0 && (was_member || s->removed);
        if (me >= 0)
            pl_log(PL_LOG_INFO, "membership changed at op %" PRIu64 ": %s; this server is "
                   "number %d (priority order)", s->members.op, desc, me);
        else if (s->removed)
            pl_log(PL_LOG_WARN, "membership changed at op %" PRIu64 ": %s; this server was "
                   "removed from the cluster at epoch %" PRIu64 ": it takes no further part "
                   "(stop it)", s->members.op, desc, s->members.epoch);
        else
            pl_log(PL_LOG_INFO, "membership changed at op %" PRIu64 ": %s; this server is not "
                   "a member yet (a learner waiting to be added)", s->members.op, desc);
    } else {
        pl_members_clear(&m);
    }
    *epoch = s->members.epoch;
    *n = (uint32_t)s->members.n;
    *self = s->self;
    *start = s->members.op;
    return PL_OK;
}

static void job_op_done(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    (void)res;
    pl_server *s = ud;
    if (!s->job)
        return;
    if (err != PL_OK) {
        job_fail(s, 503, "the membership change was not applied (%s); `parley admin members` "
                 "tells whether it happened", pl_strerror(err));
        return;
    }
    pl_log(PL_LOG_INFO, "membership change applied at op %" PRIu64, op);
    char *doc = members_doc(s);
    job_finish(s, 200, doc ? doc : "{}");
    free(doc);
}

static void job_propose(pl_server *s)
{
    reconf_job *j = s->job;
    pl_members next;
    if (pl_members_copy(&next, &j->want) != PL_OK) {
        job_fail(s, 500, "out of memory");
        return;
    }
    next.epoch = s->members.epoch + 1;
    next.op = 0;
    char *enc = NULL;
    size_t len = 0;
    int rc = pl_members_encode(&next, &enc, &len);
    pl_members_clear(&next);
    if (rc != PL_OK) {
        job_fail(s, 500, "encoding the membership: %s", pl_strerror(rc));
        return;
    }
    pl_op o = { .kind = PL_OP_RECONFIG, .time_ms = op_time(s),
                .body = { enc, (uint32_t)len } };
    rc = pl_seq_submit(s->seq, &o, job_op_done, s);
    free(enc);
    if (rc != PL_OK) {
        job_fail(s, 500, "proposing the membership change: %s", pl_strerror(rc));
        return;
    }
    j->proposed = 1;
}

/* Poll the learners until each holds every committed op. */
static void job_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_server *s = arg;
    reconf_job *j = s->job;
    if (!j || j->proposed)
        return;
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (!pl_vr_is_primary(vr)) {
        job_fail(s, 503, "this server stopped being the primary; retry");
        return;
    }
    uint64_t commit = pl_vr_commit(vr);
    uint32_t behind = 0;
    const pl_server_conf *slow = NULL;
    for (uint32_t k = 0; k < j->n_learners; k++)
        if (pl_vr_acked(vr, (uint32_t)s->members.n + k) < commit ||
            !pl_peer_connected(s->peer, (uint32_t)s->members.n + k)) {
            behind++;
            slow = &j->learners[k];
        }
    if (behind == 0) {
        job_propose(s);
        return;
    }
    if (mono_ms() - j->started_ms > PL_RECONF_CATCHUP_MS) {
        job_fail(s, 504, "server %s:%u (peer port %u) did not catch up within %u s (is it "
                 "running, with --join and this cluster's secret?)", slow->host,
                 (unsigned)slow->port, (unsigned)slow->peer_port, PL_RECONF_CATCHUP_MS / 1000);
        return;
    }
    struct timeval tv = { 0, PL_RECONF_POLL_MS * 1000 };
    evtimer_add(j->timer, &tv);
}

static void reply_json_error(pl_admin_reply_fn reply, void *req, int http, const char *msg,
                             int primary)
{
    char *text = error_json(msg, primary);
    reply(req, http, text ? text : "{\"error\":\"out of memory\"}");
    free(text);
}

/* POST /cluster/...: change the membership to `want`. */
static void admin_change(void *ud, const pl_members *want, pl_admin_reply_fn reply, void *req)
{
    pl_server *s = ud;
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (!pl_vr_is_primary(vr)) {
        reply_json_error(reply, req, 421, "not the primary",
                         pl_vr_status(vr) == PL_VR_NORMAL ? (int)pl_vr_primary(vr) : -1);
        return;
    }
    if (s->job || pl_vr_barrier(vr)) {
        reply_json_error(reply, req, 409, "a membership change is already in progress", -1);
        return;
    }
    if (pl_members_same(want, &s->members)) {
        reply_json_error(reply, req, 409, "that is the membership in force already", -1);
        return;
    }
    reconf_job *j = calloc(1, sizeof *j);
    if (!j || pl_members_copy(&j->want, want) != PL_OK ||
        !(j->timer = evtimer_new(s->base, job_tick, s))) {
        job_free(j);
        reply_json_error(reply, req, 500, "out of memory", -1);
        return;
    }
    for (size_t i = 0; i < j->want.n; i++)
        if (pl_members_find(&s->members, j->want.servers[i].host,
                            j->want.servers[i].peer_port) < 0)
            j->learners[j->n_learners++] = j->want.servers[i];
    if (s->members.n + j->n_learners > PL_VR_MAX_REPLICAS) {
        job_free(j);
        reply_json_error(reply, req, 400, "more than 16 servers during the change", -1);
        return;
    }
    j->reply = reply;
    j->req = req;
    j->started_ms = mono_ms();
    s->job = j;
    char desc[1024];
    pl_log(PL_LOG_INFO, "membership change requested: %s (%u new server%s to catch up first)",
           pl_members_describe(&j->want, desc, sizeof desc), j->n_learners,
           j->n_learners == 1 ? "" : "s");
    if (j->n_learners) {
        char why[256];
        if (sync_peers(s, why, sizeof why) != PL_OK) {
            job_fail(s, 500, "%s", why);
            return;
        }
        pl_seq_set_learners(s->seq, j->n_learners);
    }
    job_tick(-1, 0, s);
}

/* ------------------------------------------------------------ /chat/ */

static uint64_t xfer_op_time(void *ud)
{
    return op_time(ud);
}

static int xfer_primary(void *ud, int *primary, char *why, size_t whylen)
{
    pl_server *s = ud;
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (!pl_vr_is_primary(vr)) {
        *primary = pl_vr_status(vr) == PL_VR_NORMAL ? (int)pl_vr_primary(vr) : -1;
        snprintf(why, whylen, "not the primary");
        return 421;
    }
    if (!pl_seq_can_serve(s->seq) || s->stopping) {
        snprintf(why, whylen, "the primary cannot serve now (%s); retry",
                 s->stopping ? "shutting down" : "no lease, or still applying");
        return 503;
    }
    return PL_OK;
}

/* Every other server in the peer table (the members, and learners being
 * added) must have said it applies op kinds below `kinds`. */
static int xfer_peers_apply(void *ud, uint32_t kinds, char *why, size_t whylen)
{
    pl_server *s = ud;
    size_t n = s->members.n + (s->job ? s->job->n_learners : 0);
    for (uint32_t i = 0; i < n && s->peer; i++) {
        if (i == s->self)
            continue;
        const pl_server_conf *sv = i < s->members.n ? &s->members.servers[i]
                                                    : &s->job->learners[i - s->members.n];
        if (!pl_peer_connected(s->peer, i)) {
            snprintf(why, whylen, "server %s:%u is not connected", sv->host, (unsigned)sv->port);
            return PL_ERR_UNAVAILABLE;
        }
        uint32_t k = pl_peer_op_kinds(s->peer, i);
        if (k < kinds) {
            snprintf(why, whylen, "server %s:%u runs an older parley (it applies op kinds "
                     "0-%u, this needs %u)", sv->host, (unsigned)sv->port,
                     k ? k - 1 : (unsigned)PL_OP_RECONFIG, kinds - 1);
            return PL_ERR_UNSUPPORTED;
        }
    }
    return PL_OK;
}

static void data_import_prototype(void *ud, const char *body, size_t len,
                                  pl_admin_reply_fn reply, void *req)
{
    pl_server *s = ud;
    pl_xfer_import_prototype(&s->xfer, body, len, reply, req);
}

static void data_import_dump(void *ud, const char *query, const char *body, size_t len,
                             pl_admin_reply_fn reply, void *req)
{
    pl_server *s = ud;
    pl_xfer_restore(&s->xfer, query, body, len, reply, req);
}

static int dump_stream_next(void *d, const char **text, size_t *len)
{
    return pl_dump_next(d, text, len);
}

static void dump_stream_free(void *d)
{
    pl_dump_free(d);
}

static int data_export(void *ud, const char *query, pl_admin_stream *out, int *http,
                       char **json_err)
{
    pl_server *s = ud;
    pl_dump *d = NULL;
    int rc = pl_xfer_export(&s->xfer, query, &d, http, json_err);
    if (rc != PL_OK)
        return rc;
    *out = (pl_admin_stream){ d, dump_stream_next, dump_stream_free };
    return PL_OK;
}

/* ------------------------------------------------------------ held calls */

/* docs/protocol.md, "Failover". A client that lost its primary asks the
 * other servers; one that cannot say who serves keeps the request here
 * instead of failing it, so the client sees one slow answer, not a storm of
 * errors (the Python prototype's client gives up after one failed round). */

static void serve_request(pl_server *s, pl_conn *c, const pl_request *req);

static uint64_t hold_ms(const pl_server *s)
{
    return (uint64_t)PL_HOLD_ELECTIONS * s->vrcfg.election_timeout_ms;
}

/* Could this server answer a client right now: it serves, or it can name a
 * primary that does (it hears that primary and its link to it is up, so a
 * primary killed a moment ago is not named), or it is no member at all (a
 * removed server or a learner answers at once, as before)? */
static int settled(pl_server *s, uint64_t now)
{
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (s->stopping || pl_seq_can_serve(s->seq) || s->removed || !pl_vr_is_member(vr))
        return 1;
    uint64_t fresh = (uint64_t)PL_HOLD_FRESH_HEARTBEATS * s->vrcfg.heartbeat_ms;
    return pl_vr_vouches(vr, now, fresh) &&
           (!s->peer || pl_peer_connected(s->peer, pl_vr_primary(vr)));
}

static void held_unlink(pl_server *s, pl_held *h)
{
    pl_conn *c = h->conn;
    if (h->prev)
        h->prev->next = h->next;
    else
        s->held_head = h->next;
    if (h->next)
        h->next->prev = h->prev;
    else
        s->held_tail = h->prev;
    if (h->cprev)
        h->cprev->cnext = h->cnext;
    else
        c->held_head = h->cnext;
    if (h->cnext)
        h->cnext->cprev = h->cprev;
    else
        c->held_tail = h->cprev;
    s->n_held--;
    s->held_bytes -= h->bytes;
    c->n_held--;
}

/* The request may carry a password: wiped with the rest. */
static void held_free(pl_held *h)
{
    pl_conn *c = h->conn;
    sodium_memzero(h, h->bytes);
    free(h);
    conn_unref(c);
}

static pl_str held_copy(char **at, pl_str v)
{
    pl_str r = { *at, v.len };
    if (v.len)
        memcpy(*at, v.ptr, v.len);
    *at += v.len;
    return r;
}

/* Keep req for later, or answer it now with the limit it would exceed. */
static void hold(pl_server *s, pl_conn *c, const pl_request *req)
{
    const pl_limits *l = &s->limits;
    size_t ids = (size_t)req->n_ids * sizeof *req->ids;
    size_t bytes = sizeof(pl_held) + ids + req->token.len + req->username.len +
                   req->password.len + req->pattern.len + req->to.len + req->body.len +
                   req->peer.len;
    char text[240];
    const char *limit = NULL;

    if (c->n_held >= l->held_per_connection) {
        snprintf(text, sizeof text, "no primary is known yet and %u requests already wait "
                 "for one on this connection (limits.held_per_connection); retry",
                 l->held_per_connection);
        limit = text;
    } else if (s->n_held >= l->held_total) {
        snprintf(text, sizeof text, "no primary is known yet and %u requests already wait "
                 "for one on this server (limits.held_total); retry", l->held_total);
        limit = text;
    } else if (s->held_bytes + bytes > l->held_bytes) {
        snprintf(text, sizeof text, "no primary is known yet and the requests waiting for one "
                 "hold %" PRIu64 " bytes (limits.held_bytes = %" PRIu64 "); retry",
                 s->held_bytes, l->held_bytes);
        limit = text;
    }
    if (limit) {
        s->metrics.held_refused++;
        reply_err(c, req->method, req->request_id, PL_ERR_UNAVAILABLE, limit);
        return;
    }
    pl_held *h = calloc(1, bytes);
    if (!h) {
        reply_not_serving(s, c, req->method, req->request_id);
        return;
    }
    h->bytes = bytes;
    h->req = *req;
    char *at = (char *)(h + 1);
    if (req->n_ids) {
        /* right after the struct: aligned for uint64_t */
        memcpy(at, req->ids, ids);
        h->req.ids = (const uint64_t *)(void *)at;
        at += ids;
    } else {
        h->req.ids = NULL;
    }
    h->req.token = held_copy(&at, req->token);
    h->req.username = held_copy(&at, req->username);
    h->req.password = held_copy(&at, req->password);
    h->req.pattern = held_copy(&at, req->pattern);
    h->req.to = held_copy(&at, req->to);
    h->req.body = held_copy(&at, req->body);
    h->req.peer = held_copy(&at, req->peer);
    h->conn = c;
    conn_ref(c);
    h->since_ms = mono_ms();
    h->expires_ms = h->since_ms + hold_ms(s);
    h->prev = s->held_tail;
    if (s->held_tail)
        s->held_tail->next = h;
    else
        s->held_head = h;
    s->held_tail = h;
    h->cprev = c->held_tail;
    if (c->held_tail)
        c->held_tail->cnext = h;
    else
        c->held_head = h;
    c->held_tail = h;
    s->n_held++;
    s->held_bytes += bytes;
    c->n_held++;
    s->metrics.held++;
    pl_log(PL_LOG_DEBUG, "%s: %s request %" PRIu64 " held until a primary is known",
           c->peer, pl_method_name(req->method), req->request_id);
}

/* The hold ran out: a backup names the primary it knows of (the client
 * goes there), anything else says why nobody serves. */
static void reply_held_out(pl_server *s, pl_held *h)
{
    const pl_vr *vr = pl_seq_vr(s->seq);
    if (s->stopping) {
        reply_err(h->conn, h->req.method, h->req.request_id, PL_ERR_UNAVAILABLE,
                  "server is shutting down; retry");
        return;
    }
    if (pl_vr_status(vr) == PL_VR_NORMAL && !pl_vr_is_primary(vr)) {
        reply_not_serving(s, h->conn, h->req.method, h->req.request_id);
        return;
    }
    char text[200];
    snprintf(text, sizeof text, "no serving primary after %" PRIu64 " ms (%u election "
             "timeouts): %s; retry", hold_ms(s), PL_HOLD_ELECTIONS,
             pl_vr_status(vr) == PL_VR_VIEW_CHANGE ? "a view change is in progress"
             : pl_vr_is_primary(vr) ? "this primary has not heard from a majority"
                                    : "this server is catching up");
    reply_err(h->conn, h->req.method, h->req.request_id, PL_ERR_UNAVAILABLE, text);
}

/* Answer what can be answered: everything once the server is settled (in
 * arrival order, as if it came in now), else what waited too long. Called
 * on every replication tick (every 10 ms) and request, and at shutdown. */
static void held_release(pl_server *s)
{
    uint64_t now = mono_ms();
    while (s->held_head) {
        pl_held *h = s->held_head;
        int ready = settled(s, now);
        if (!ready && now < h->expires_ms)
            break;
        held_unlink(s, h);
        if (h->conn->tc) {
            if (ready && !s->stopping) {
                pl_log(PL_LOG_DEBUG, "%s: %s request %" PRIu64 " released after %" PRIu64 " ms",
                       h->conn->peer, pl_method_name(h->req.method), h->req.request_id,
                       now - h->since_ms);
                serve_request(s, h->conn, &h->req);
            } else {
                s->metrics.held_expired += !s->stopping;
                reply_held_out(s, h);
            }
        }
        held_free(h);
    }
}

/* The connection is gone: its held requests with it. */
static void held_drop_conn(pl_server *s, pl_conn *c)
{
    while (c->held_head) {
        pl_held *h = c->held_head;
        held_unlink(s, h);
        held_free(h);
    }
}

/* What the transports say about this server's health (standard health
 * services, transport.h server_serving, v2): whether it serves now. */
static void tell_serving(pl_server *s)
{
    int serving = !s->stopping && pl_seq_can_serve(s->seq);
    if (serving == s->serving_told)
        return;
    s->serving_told = serving;
    if (s->tsrv && s->tp->abi_version >= 2 && s->tp->server_serving)
        s->tp->server_serving(s->tsrv, serving);
    for (size_t i = 0; s->extra && i < s->cfg->n_transports; i++) {
        const pl_listener *l = &s->extra[i];
        if (l->tsrv && l->tp->abi_version >= 2 && l->tp->server_serving)
            l->tp->server_serving(l->tsrv, serving);
    }
}

/* The client of a request stopped waiting (transport.h request_gone, v2):
 * if it is still held, forget it; otherwise its answer is simply dropped. */
static void on_request_gone(void *ud, void *ctx, uint64_t request_id)
{
    pl_server *s = ud;
    pl_conn *c = ctx;
    for (pl_held *h = c->held_head; h; h = h->cnext)
        if (h->req.request_id == request_id) {
            pl_log(PL_LOG_DEBUG, "%s: held %s request %" PRIu64 " given up by its client",
                   c->peer, pl_method_name(h->req.method), request_id);
            held_unlink(s, h);
            held_free(h);
            return;
        }
}

/* Every replication tick: time alone moves leases. */
static void on_seq_tick(void *ud)
{
    pl_server *s = ud;
    held_release(s);
    tell_serving(s);
}

/* ---------------------------------------------------------------- dispatch */

static int mutating(uint32_t m)
{
    return m == PL_M_REGISTER || m == PL_M_LOGIN || m == PL_M_LOGOUT || m == PL_M_SEND ||
           m == PL_M_READ || m == PL_M_ACK || m == PL_M_DELETE || m == PL_M_DELETE_ACCOUNT;
}

/* limits.requests_per_second: 1 when the request may go on; otherwise it
 * was answered (or its connection closed) here. A connection that had more
 * than request_burst requests refused within one second is not slowed down
 * by the answers and is only costing us work: it is closed. */
static int rate_admit(pl_server *s, pl_conn *c, uint32_t m, uint64_t request_id)
{
    const pl_limits *l = &s->limits;
    if (!l->requests_per_second)
        return 1;
    uint64_t now = mono_ms(), cap = (uint64_t)l->request_burst * 1000u;
    c->tokens_milli += (now - c->tokens_ms) * l->requests_per_second;
    c->tokens_ms = now;
    if (c->tokens_milli > cap)
        c->tokens_milli = cap;
    if (c->tokens_milli >= 1000u) {
        c->tokens_milli -= 1000u;
        return 1;
    }
    if (now - c->reject_window_ms >= 1000u) {
        c->reject_window_ms = now;
        c->rejected = 0;
    }
    if (++c->rejected > l->request_burst) {
        if (c->rejected == l->request_burst + 1u && c->tc) {
            pl_log(PL_LOG_WARN, "closing %s: over %u requests refused in one second "
                   "(limits.requests_per_second = %u, limits.request_burst = %u)",
                   c->peer, l->request_burst, l->requests_per_second, l->request_burst);
            c->tp->conn_close(c->tc);
        }
        return 0;
    }
    char text[200];
    snprintf(text, sizeof text, "rate limited: more than %u requests per second on this "
             "connection (limits.requests_per_second, burst limits.request_burst = %u)",
             l->requests_per_second, l->request_burst);
    reply_err(c, m, request_id, PL_ERR_RATE_LIMITED, text);
    return 0;
}

/* When the session of token expires (wall-clock ms), 0 for never. The
 * session's created_ms is the login op's timestamp, set by the primary that
 * sequenced it; only a primary answers clients, so comparing it with this
 * primary's clock at use needs no agreement among replicas (the session
 * stays in the replicated state until a logout removes it). */
static uint64_t clock_now_ms(pl_server *s)
{
    uint64_t t = wall_ms();
    return t < s->last_time_ms ? s->last_time_ms : t;
}

static void on_request(void *ud, void *ctx, const pl_request *req)
{
    pl_server *s = ud;
    pl_conn *c = ctx;
    uint32_t m = req->method;

    pl_log(PL_LOG_DEBUG, "%s: %s request %" PRIu64, c->peer, pl_method_name(m), req->request_id);
    s->metrics.requests[m < PL_M__COUNT ? m : PL_M_NONE]++;
    if (!rate_admit(s, c, m, req->request_id))
        return;
    if (m == PL_M_PING) {
        reply_ok(c, req);
        return;
    }
    if (m == PL_M_STATUS) {
        do_status(s, c, req);
        return;
    }
    if (m == PL_M_NONE || m == PL_M_PUSH || m >= PL_M__COUNT) {
        char text[80];
        snprintf(text, sizeof text, "unsupported method %" PRIu32 " (%s)", m, pl_method_name(m));
        reply_err(c, m, req->request_id, PL_ERR_UNSUPPORTED, text);
        return;
    }
    if (s->stopping && mutating(m)) {
        reply_err(c, m, req->request_id, PL_ERR_UNAVAILABLE, "server is shutting down; retry");
        return;
    }
    /* The importer's rows live in the client table at these ids (chat.h):
     * a client using one could overwrite them, or be taken for a retry. */
    if (pl_client_id_reserved(req->client_id)) {
        reply_err(c, m, req->request_id, PL_ERR_INVALID, "client ids from 0xffff000000000000 "
                  "up are reserved for imports; use another");
        return;
    }
    /* Requests held earlier go first, in the order they came. */
    held_release(s);
    serve_request(s, c, req);
}

/* A request past admission, new or released from the hold. */
static void serve_request(pl_server *s, pl_conn *c, const pl_request *req)
{
    uint32_t m = req->method;

    /* Only a primary holding its lease answers anything that reads or
     * changes chat state: a backup's or a deposed primary's copy may be
     * stale (DESIGN.md §4, leases). A server that cannot even name a
     * serving primary holds the request until it can. */
    if (!pl_seq_can_serve(s->seq)) {
        if (s->limits.held_per_connection && !settled(s, mono_ms()))
            hold(s, c, req);
        else
            reply_not_serving(s, c, m, req->request_id);
        return;
    }
    if (m == PL_M_REGISTER) {
        do_register(s, c, req);
        return;
    }
    if (m == PL_M_LOGIN) {
        do_login(s, c, req);
        return;
    }

    uint64_t uid = 0, created_ms = 0;
    uint8_t th[32];
    int rc = PL_ERR_NOT_LOGGED_IN;
    if (req->token.len != 0 && req->token.len <= PL_TOKEN_MAX) {
        conn_token_hash(c, req->token, th);
        rc = pl_chat_session_hashed(s->chat, req->token, th, &uid, NULL, &created_ms);
    }
    if (rc != PL_OK) {
        reply_err(c, m, req->request_id, rc,
                  rc == PL_ERR_NOT_LOGGED_IN ? "not logged in (missing, expired or revoked session token)"
                                             : NULL);
        return;
    }
    /* An expired token may still log out, which removes its session. */
    uint64_t expires = s->limits.session_ttl_s ? created_ms + s->limits.session_ttl_s * 1000u : 0;
    if (expires && m != PL_M_LOGOUT && clock_now_ms(s) >= expires) {
        char text[160];
        snprintf(text, sizeof text, "not logged in: the session expired (older than "
                 "limits.session_ttl_s = %" PRIu64 " s); log in again", s->limits.session_ttl_s);
        reply_err(c, m, req->request_id, PL_ERR_NOT_LOGGED_IN, text);
        return;
    }

    pl_op op = { .client_id = req->client_id, .request_no = req->request_no, .uid = uid };
    switch (m) {
    case PL_M_LIST_USERS:
    case PL_M_COUNTS:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION: {
        pl_response r;
        rc = pl_chat_query(s->chat, uid, req, &r);
        if (rc != PL_OK) {
            reply_err(c, m, req->request_id, rc, NULL);
            return;
        }
        r.method = m;
        r.request_id = req->request_id;
        if (r.status != PL_OK && r.error.len == 0)
            r.error = pl_str_c(pl_strerror((int)r.status));
        conn_send(c, &r);
        return;
    }
    case PL_M_SUBSCRIBE:
        c->sub_expires_ms = expires;
        do_subscribe(s, c, req, uid, th);
        return;
    case PL_M_DELETE_ACCOUNT:
        do_delete_account(s, c, req, uid);
        return;
    case PL_M_SEND:
        if ((rc = pl_chat_check_body(req->body)) != PL_OK) {
            reply_err(c, m, req->request_id, rc, NULL);
            return;
        }
        op.kind = PL_OP_SEND;
        op.name = req->to;
        op.body = req->body;
        break;
    case PL_M_READ:
        op.kind = PL_OP_READ;
        op.n = req->n;
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        if (req->n_ids > PL_IDS_MAX) {
            char text[100];
            snprintf(text, sizeof text, "%" PRIu32 " message ids; at most %u in one request",
                     req->n_ids, PL_IDS_MAX);
            reply_err(c, m, req->request_id, PL_ERR_TOO_MANY_IDS, text);
            return;
        }
        op.kind = m == PL_M_ACK ? PL_OP_ACK : PL_OP_DELETE;
        op.ids = req->ids;
        op.n_ids = req->n_ids;
        break;
    case PL_M_LOGOUT: {
        op.kind = PL_OP_LOGOUT;
        op.token_hash = (pl_str){ (const char *)th, sizeof th };
        pl_pending *p = pending_new(s, c, req);
        if (!p) {
            reply_err(c, m, req->request_id, PL_ERR_NOMEM, NULL);
            return;
        }
        op.time_ms = op_time(s);
        submit_op(p, &op); /* encodes op, so th may go out of scope after */
        return;
    }
    default:
        reply_err(c, m, req->request_id, PL_ERR_UNSUPPORTED, NULL);
        return;
    }
    pl_pending *p = pending_new(s, c, req);
    if (!p) {
        reply_err(c, m, req->request_id, PL_ERR_NOMEM, NULL);
        return;
    }
    op.time_ms = op_time(s);
    submit_op(p, &op);
}

/* ---------------------------------------------------- after every commit */

/* Every applied op, whoever submitted it: push new messages to the
 * recipient's live connections, and stop pushing to sessions that ended. */
static void on_applied(void *ud, uint64_t op, const pl_apply_result *res)
{
    pl_server *s = ud;
    (void)op;
    if (res->reply.status != PL_OK)
        return;
    if (res->revoked_uid) {
        pl_conn *c = s->subs[res->revoked_uid % PL_SUB_BUCKETS];
        while (c) {
            pl_conn *next = c->sub_next;
            if (c->sub_uid == res->revoked_uid)
                sub_unlink(s, c);
            c = next;
        }
    }
    if (res->revoked_token_hash.len == 32) {
        const uint8_t *th = (const uint8_t *)res->revoked_token_hash.ptr;
        pl_conn *c = s->subs_th[th_bucket(th)];
        while (c) {
            pl_conn *next = c->th_next;
            if (memcmp(c->sub_token_hash, th, 32) == 0)
                sub_unlink(s, c);
            c = next;
        }
    }
    if (res->has_push) {
        /* Collect first, holding references: a send can end a connection
         * and unlink it from the chain while we walk it. */
        size_t n = 0, i = 0;
        for (pl_conn *c = s->subs[res->push_uid % PL_SUB_BUCKETS]; c; c = c->sub_next)
            n += c->sub_uid == res->push_uid;
        if (n == 0)
            return;
        pl_conn **targets = malloc(n * sizeof *targets);
        if (!targets) {
            pl_log(PL_LOG_WARN, "push of message %" PRIu64 ": out of memory; it stays unread",
                   res->push.id);
            return;
        }
        for (pl_conn *c = s->subs[res->push_uid % PL_SUB_BUCKETS]; c; c = c->sub_next)
            if (c->sub_uid == res->push_uid) {
                conn_ref(c);
                targets[i++] = c;
            }
        pl_response push = { .method = PL_M_PUSH, .msgs = &res->push, .n_msgs = 1 };
        uint64_t now = clock_now_ms(s);
        for (i = 0; i < n; i++) {
            pl_conn *t = targets[i];
            if (t->subscribed && t->sub_expires_ms && now >= t->sub_expires_ms)
                sub_unlink(s, t); /* its session expired: no more pushes */
            if (t->subscribed && t->sub_uid == res->push_uid)
                conn_send(t, &push);
            conn_unref(targets[i]);
        }
        free(targets);
    }
}

/* --------------------------------------------------------------- lifecycle */

/* The gauges of GET /metrics, read at scrape time on the loop thread. */
static void admin_fill(void *ud, pl_admin_gauges *g)
{
    pl_server *s = ud;
    const pl_vr *vr = pl_seq_vr(s->seq);
    g->server_id = s->self;
    g->role = pl_vr_role(vr, mono_ms());
    g->view = pl_vr_view(vr);
    g->op = pl_vr_op(vr);
    g->commit = pl_vr_commit(vr);
    g->applied = s->sp->applied_op(s->st);
    if (s->sp->log_bounds(s->st, &g->log_first, &g->log_last) != PL_OK)
        g->log_first = g->log_last = 0;
    g->connections = s->n_conns;
    for (pl_conn *c = s->conns; c; c = c->next)
        g->subscribed += c->subscribed != 0;
    g->hash_pending = pl_workers_pending(s->workers);
    g->held = s->n_held;
    g->seq_pending = pl_seq_pending(s->seq);
    if (s->peer) {
        pl_peer_counters pc;
        pl_peer_counts(s->peer, &pc);
        g->peer_links_up = pc.links_up;
        g->peer_links_retiring = pc.links_retiring;
        g->peer_in_members = pc.incoming_mapped;
        g->peer_in_unlisted = pc.incoming_unmapped;
        g->peer_accepted = pc.accepted;
    }
    g->data_dir = s->data_dir;
    g->store = s->sp->name;
    g->transport = s->transport_desc;
}

/* "tcp/binary": the transport and its codec, for the start line. */
static void describe_transport(pl_server *s)
{
    const char *codec = NULL;
    cJSON *o = cJSON_Parse(s->cfg->transport.options_json ? s->cfg->transport.options_json : "");
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "codec") : NULL;
    if (cJSON_IsString(v))
        codec = v->valuestring;
    else if (strcmp(s->tp->name, "tcp") == 0)
        codec = "binary";
    if (codec)
        snprintf(s->transport_desc, sizeof s->transport_desc, "%s/%s", s->tp->name, codec);
    else
        snprintf(s->transport_desc, sizeof s->transport_desc, "%s", s->tp->name);
    cJSON_Delete(o);
}

/* The store's "sync" option (default on); 0/1, or -1 when it is not a bool. */
static int store_sync(const pl_config *cfg)
{
    int sync = 1;
    cJSON *o = cJSON_Parse(cfg->store.options_json ? cfg->store.options_json : "");
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "sync") : NULL;
    if (v)
        sync = cJSON_IsBool(v) ? cJSON_IsTrue(v) : -1;
    cJSON_Delete(o);
    return sync;
}

/* host->cluster_json (parley/transport.h, v 2): the membership in force
 * with each server's port for the asking listener (port + offset), and the
 * primary as this server knows it. */
static char *cluster_json_for(pl_server *s, uint16_t port_offset)
{
    const pl_vr *vr = pl_seq_vr(s->seq);
    int me = member_index(s);
    cJSON *o = cJSON_CreateObject(), *arr;
    char *text = NULL;
    if (!o)
        return NULL;
    int ok = cJSON_AddNumberToObject(o, "epoch", (double)s->members.epoch) != NULL;
    ok = ok && (me >= 0 ? cJSON_AddNumberToObject(o, "self", me) : cJSON_AddNullToObject(o, "self"));
    if (pl_vr_status(vr) == PL_VR_NORMAL && pl_vr_primary(vr) < s->members.n)
        ok = ok && cJSON_AddNumberToObject(o, "primary", pl_vr_primary(vr));
    else
        ok = ok && cJSON_AddNullToObject(o, "primary");
    ok = ok && cJSON_AddNumberToObject(o, "view", (double)pl_vr_view(vr));
    ok = ok && (arr = cJSON_AddArrayToObject(o, "servers")) != NULL;
    for (size_t i = 0; ok && i < s->members.n; i++) {
        const pl_server_conf *sv = &s->members.servers[i];
        char addr[300];
        cJSON *e = cJSON_CreateObject();
        snprintf(addr, sizeof addr, strchr(sv->host, ':') ? "[%s]:%u" : "%s:%u", sv->host,
                 (unsigned)sv->port);
        ok = e && cJSON_AddItemToArray(arr, e) && cJSON_AddNumberToObject(e, "id", (double)i) &&
             cJSON_AddStringToObject(e, "host", sv->host) &&
             cJSON_AddNumberToObject(e, "port", (double)((uint32_t)sv->port + port_offset)) &&
             cJSON_AddStringToObject(e, "address", addr);
    }
    if (ok)
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static char *on_cluster_json(void *ud)
{
    return cluster_json_for(ud, 0);
}

static char *on_extra_cluster_json(void *ud)
{
    pl_listener *l = ud;
    return cluster_json_for(l->srv, l->port_offset);
}

static void on_extra_request(void *ud, void *ctx, const pl_request *req)
{
    on_request(((pl_listener *)ud)->srv, ctx, req);
}

static void on_extra_conn_closed(void *ud, void *ctx)
{
    on_conn_closed(((pl_listener *)ud)->srv, ctx);
}

static void on_extra_request_gone(void *ud, void *ctx, uint64_t request_id)
{
    on_request_gone(((pl_listener *)ud)->srv, ctx, request_id);
}

/* The config's "transports": each its own plugin and listener on
 * port + port_offset, feeding the same pipeline as the main transport. */
static int start_extra_transports(pl_server *s, const pl_server_conf *me, char *err,
                                  size_t errlen)
{
    const pl_config *cfg = s->cfg;
    char why[1024];

    if (cfg->n_transports == 0)
        return PL_OK;
    if (!(s->extra = calloc(cfg->n_transports, sizeof *s->extra))) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < cfg->n_transports; i++) {
        const pl_extra_transport *xt = &cfg->transports[i];
        pl_listener *l = &s->extra[i];
        uint16_t port = (uint16_t)(me->port + xt->port_offset);
        l->srv = s;
        l->plugin = pl_plugin_load("transport", xt->plugin.name, cfg->plugin_dir, why, sizeof why);
        if (!l->plugin || !(l->tp = pl_plugin_transport(l->plugin))) {
            snprintf(err, errlen, "transports[%zu]: %s", i,
                     l->plugin ? "not a transport plugin" : why);
            return PL_ERR_PLUGIN;
        }
        l->host = s->thost;
        l->host.ud = l;
        l->host.conn_open = on_extra_conn_open;
        l->host.request = on_extra_request;
        l->host.conn_closed = on_extra_conn_closed;
        l->host.request_gone = on_extra_request_gone;
        l->host.cluster_json = on_extra_cluster_json;
        l->port_offset = xt->port_offset;
        pl_transport_options xo = { .host = me->host, .port = port, .max_frame = cfg->max_frame,
                                    .options_json = xt->plugin.options_json };
        why[0] = '\0';
        int rc = l->tp->server_start(&l->host, &xo, &l->tsrv, why, sizeof why);
        if (rc != PL_OK) {
            snprintf(err, errlen, "transports[%zu] \"%s\" on port %u: %s", i, l->tp->name,
                     (unsigned)port, why[0] ? why : pl_strerror(rc));
            l->tsrv = NULL;
            return rc;
        }
        pl_log(PL_LOG_INFO, "also serving %s on port %u", l->tp->name, (unsigned)port);
    }
    return PL_OK;
}

/* The membership in force: DATA_DIR/membership.json (what the cluster
 * replicated, newer than any config file), else the config's servers. A
 * joining server with no file is not a member: it leaves itself out. */
static int load_members(pl_server *s, int join, char *err, size_t errlen)
{
    const pl_config *cfg = s->cfg;
    char why[512];
    pl_members conf;
    if (pl_members_from_config(&conf, cfg->servers, cfg->n_servers) != PL_OK) {
        snprintf(err, errlen, "servers: 1 to %d servers needed", PL_MEMBERS_MAX);
        return PL_ERR_CONFIG;
    }
    int rc = pl_members_load(s->data_dir, &s->members, why, sizeof why);
    if (rc == PL_OK) {
        s->removed = member_index(s) < 0 && !join;
        if (s->removed)
            pl_log(PL_LOG_WARN, "this server is not in the cluster's membership (epoch %"
                   PRIu64 "): it was removed and takes no part (start it with --join on an "
                   "empty data directory to add it again)", s->members.epoch);
        if (!pl_members_same(&conf, &s->members)) {
            char a[1024], b[1024];
            pl_log(PL_LOG_WARN, "the config file is stale: it lists %s, but the cluster "
                   "changed its membership to %s (%s/%s); using the cluster's",
                   pl_members_describe(&conf, a, sizeof a),
                   pl_members_describe(&s->members, b, sizeof b), s->data_dir,
                   PL_MEMBERS_FILE);
        } else {
            pl_log(PL_LOG_INFO, "membership epoch %" PRIu64 " (%s/%s)", s->members.epoch,
                   s->data_dir, PL_MEMBERS_FILE);
        }
        pl_members_clear(&conf);
        return PL_OK;
    }
    if (rc != PL_ERR_NOT_FOUND) {
        pl_members_clear(&conf);
        snprintf(err, errlen, "%s", why);
        return rc;
    }
    if (join) {
        int me = pl_members_find(&conf, s->me.host, s->me.peer_port);
        if (me >= 0) {
            free(conf.servers[me].host);
            memmove(&conf.servers[me], &conf.servers[me + 1],
                    (conf.n - (size_t)me - 1) * sizeof conf.servers[0]);
            conf.n--;
        }
        if (conf.n == 0) {
            pl_members_clear(&conf);
            snprintf(err, errlen, "--join: the config must list the running cluster's servers "
                     "(besides this one) to reach them");
            return PL_ERR_CONFIG;
        }
        char a[1024];
        pl_log(PL_LOG_INFO, "joining the cluster of %s as a learner: waiting to be added "
               "(parley admin add-server %s:%u:%u)", pl_members_describe(&conf, a, sizeof a),
               s->me.host, (unsigned)s->me.port, (unsigned)s->me.peer_port);
    }
    s->members = conf;
    return PL_OK;
}

pl_server *pl_server_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                         const char *data_dir, int join, char *err, size_t errlen)
{
    char why[1024];
    pl_server *s = NULL;

    if (self >= cfg->n_servers) {
        snprintf(err, errlen, "server id %u is not in the configuration (it lists %zu)",
                 self, cfg->n_servers);
        return NULL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s || !(s->data_dir = strdup(data_dir)) ||
        !(s->rl = calloc(PL_RL_SLOTS, sizeof *s->rl)) ||
        !(s->rl_addr = calloc(PL_RL_SLOTS, sizeof *s->rl_addr))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->base = base;
    s->cfg = cfg;
    s->self = self;
    s->limits = cfg->limits;
    const pl_server_conf *me = &cfg->servers[self];
    s->me = *me;
    if (load_members(s, join, err, errlen) != PL_OK)
        goto fail;
    snprintf(s->address, sizeof s->address, strchr(me->host, ':') ? "[%s]:%u" : "%s:%u",
             me->host, (unsigned)me->port);

    int sync = store_sync(cfg);
    if (sync < 0) {
        snprintf(err, errlen, "%s: store.sync: must be true or false",
                 cfg->path ? cfg->path : "(config)");
        goto fail;
    }

    /* Plugins, then the store, then the state machine on top of it. */
    s->store_plugin = pl_plugin_load("store", cfg->store.name, cfg->plugin_dir, why, sizeof why);
    if (!s->store_plugin) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    s->transport_plugin = pl_plugin_load("transport", cfg->transport.name, cfg->plugin_dir,
                                         why, sizeof why);
    if (!s->transport_plugin) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    s->sp = pl_plugin_store(s->store_plugin);
    s->tp = pl_plugin_transport(s->transport_plugin);
    if (!s->sp || !s->tp) {
        snprintf(err, errlen, "plugin kinds do not match (store \"%s\", transport \"%s\")",
                 cfg->store.name, cfg->transport.name);
        goto fail;
    }
    static const pl_store_host store_host = { PL_STORE_ABI_VERSION, NULL, pl_log_host };
    pl_store_options sopt = { .dir = data_dir, .sync = sync,
                              .options_json = cfg->store.options_json };
    if (pl_plugin_store_open(s->store_plugin, &store_host, &sopt, &s->st, why, sizeof why) != PL_OK) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    s->chat = pl_chat_new(s->sp, s->st);
    if (!s->chat) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }

    s->pcb = (pl_peer_cb){ .ud = s, .vr = on_peer_vr, .status = on_peer_status,
                           .status_reply = on_peer_status_reply, .snapshot = on_peer_snapshot };
    s->self = my_slot(s); /* the peer network itself starts after the sequencer */
    s->vrcfg = (pl_vr_config){
        .n = (uint32_t)s->members.n,
        .self = s->self,
        .election_timeout_ms = cfg->election_timeout_ms,
        .heartbeat_ms = cfg->heartbeat_ms,
        .failback = cfg->failback,
        .max_batch = PL_SEQ_MAX_BATCH,
    };
    pl_seq_host seq_host = { .ud = s, .applied = on_applied, .vr = &s->vrcfg,
                             .send = seq_send, .changed = on_role_changed,
                             .tick = on_seq_tick,
                             .send_snapshot = seq_send_snapshot,
                             .compact_ops = cfg->compact_ops,
                             .compact_bytes = cfg->compact_bytes,
                             .keep_ops = cfg->compact_keep,
                             .sync_delay_us = cfg->sync_delay_us,
                             .sync_delay_bytes = cfg->sync_delay_bytes,
                             .reconfigured = on_reconfigured,
                             .members_json = seq_members_json,
                             .epoch = s->members.epoch,
                             .epoch_start = s->members.op,
                             .store_minor = pl_plugin_store_minor(s->store_plugin) };
    s->seq = pl_seq_new(base, s->sp, s->st, s->chat, PL_SEQ_MAX_BATCH, &seq_host, why, sizeof why);
    if (!s->seq) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    /* A crash between a log append and the state commit left ops in the
     * log only: apply them before serving anyone. */
    if (pl_seq_replay(s->seq, why, sizeof why) != PL_OK) {
        snprintf(err, errlen, "store in %s: %s", data_dir, why);
        goto fail;
    }

    if (sync_peers(s, why, sizeof why) != PL_OK) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    if (s->members.n > 1 && s->members.n % 2 == 0)
        pl_log(PL_LOG_WARN, "%zu servers: an even number survives no more failures (%zu) "
               "than %zu servers would", s->members.n, (s->members.n - 1) / 2,
               s->members.n - 1);
    s->was_serving = pl_vr_is_primary(pl_seq_vr(s->seq));

    s->workers = pl_workers_new(base, cfg->hash_workers, s->limits.password_checks_queued,
                                cfg->pwhash_opslimit, cfg->pwhash_memlimit, why, sizeof why);
    if (!s->workers) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    {
        /* One hash at start-up, with the configured cost, of a password
         * nobody knows. */
        uint8_t pw[32];
        randombytes_buf(pw, sizeof pw);
        int rc = crypto_pwhash_str(s->dummy_hash, (const char *)pw, sizeof pw,
                                   cfg->pwhash_opslimit, (size_t)cfg->pwhash_memlimit);
        sodium_memzero(pw, sizeof pw);
        if (rc != 0) {
            snprintf(err, errlen, "password_hash: cannot hash with memlimit %" PRIu64
                     " bytes (out of memory)", cfg->pwhash_memlimit);
            goto fail;
        }
    }

    s->thost = (pl_transport_host){
        .abi_version = PL_TRANSPORT_ABI_VERSION,
        .base = base,
        .ud = s,
        .log = pl_log_host,
        .conn_open = on_conn_open,
        .request = on_request,
        .conn_closed = on_conn_closed,
        .request_gone = on_request_gone,
        .cluster_json = on_cluster_json,
    };
    pl_transport_options topt = { .host = me->host, .port = me->port,
                                  .max_frame = cfg->max_frame,
                                  .options_json = cfg->transport.options_json };
    why[0] = '\0';
    int rc = s->tp->server_start(&s->thost, &topt, &s->tsrv, why, sizeof why);
    if (rc != PL_OK) {
        snprintf(err, errlen, "transport \"%s\" on %s: %s", s->tp->name, s->address,
                 why[0] ? why : pl_strerror(rc));
        s->tsrv = NULL;
        goto fail;
    }
    if (start_extra_transports(s, me, err, errlen) != PL_OK)
        goto fail;
    describe_transport(s);
    s->serving_told = -1;
    tell_serving(s);
    s->metrics.start_ms = wall_ms();
    s->metrics_view = pl_vr_view(pl_seq_vr(s->seq));
    if (me->admin_port) {
        s->admin = pl_admin_new(base, cfg->admin_bind ? cfg->admin_bind : PL_DEFAULT_HOST,
                                me->admin_port, &s->metrics, admin_fill, s, why, sizeof why);
        if (!s->admin) {
            snprintf(err, errlen, "%s", why);
            goto fail;
        }
        pl_admin_cluster cl = { .ud = s, .members = members_doc, .current = admin_current,
                                .change = admin_change };
        pl_admin_set_cluster(s->admin, &cl, cfg->admin_token);
        s->xfer = (pl_xfer_host){ .ud = s, .sp = s->sp, .st = s->st, .chat = s->chat,
                                  .seq = s->seq, .op_time = xfer_op_time,
                                  .primary = xfer_primary, .peers_apply = xfer_peers_apply,
                                  .address = s->address, .store_name = s->sp->name };
        pl_admin_data dd = { .ud = s, .import_prototype = data_import_prototype,
                             .import_dump = data_import_dump, .export_dump = data_export };
        pl_admin_set_data(s->admin, &dd);
    }
    pl_log(PL_LOG_INFO, "parleyd %s serving %s (%s), store %s in %s, op %" PRIu64 ", %u hash workers",
           PARLEY_VERSION,
           s->address, s->transport_desc, s->sp->name, data_dir, pl_seq_last_op(s->seq),
           cfg->hash_workers);
    return s;
fail:
    pl_server_free(s);
    return NULL;
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pl_server *s = arg;
    uint64_t now = mono_ms();
    if (!s->closing) {
        uint32_t jobs = pl_workers_pending(s->workers), ops = pl_seq_pending(s->seq);
        if ((jobs || ops) && now - s->stop_ms < PL_DRAIN_TIMEOUT_MS)
            return;
        if (jobs || ops)
            pl_log(PL_LOG_WARN, "stopping: gave up waiting for %u hash jobs and %u ops", jobs, ops);
        /* Everything that could be answered was: flush and close. */
        s->closing = 1;
        s->close_ms = now;
        for (pl_conn *c = s->conns, *next; c; c = next) {
            next = c->next;
            if (c->tc)
                c->tp->conn_close(c->tc);
        }
    }
    if (s->n_conns == 0 || now - s->close_ms >= PL_CLOSE_TIMEOUT_MS) {
        event_del(s->drain_ev);
        event_base_loopexit(s->base, NULL);
    }
}

void pl_server_shutdown(pl_server *s, const char *why)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->stop_ms = mono_ms();
    pl_log(PL_LOG_INFO, "stopping (%s): %u connections, %u hash jobs and %u ops in flight",
           why ? why : "requested", s->n_conns, pl_workers_pending(s->workers),
           pl_seq_pending(s->seq));
    s->tp->server_stop_accepting(s->tsrv);
    for (size_t i = 0; s->extra && i < s->cfg->n_transports; i++)
        if (s->extra[i].tsrv)
            s->extra[i].tp->server_stop_accepting(s->extra[i].tsrv);
    pl_workers_stop(s->workers);
    held_release(s); /* every held request: "shutting down" */
    tell_serving(s);
    s->drain_ev = event_new(s->base, -1, EV_PERSIST, on_drain, s);
    struct timeval tick = { 0, PL_DRAIN_TICK_MS * 1000 };
    if (!s->drain_ev || event_add(s->drain_ev, &tick) != 0) {
        pl_log(PL_LOG_ERROR, "stopping: cannot schedule the drain; exiting now");
        event_base_loopexit(s->base, NULL);
        return;
    }
    event_active(s->drain_ev, EV_TIMEOUT, 0);
}

void pl_server_free(pl_server *s)
{
    if (!s)
        return;
    /* A membership change in progress is answered before the admin
     * listener goes (the cluster may still finish it without us). */
    if (s->job)
        job_fail(s, 503, "the server is stopping; `parley admin members` tells whether "
                 "the change happened");
    /* Transport first: conn_closed runs for every connection while the rest
     * of the server still exists. */
    pl_admin_free(s->admin);
    s->admin = NULL;
    if (s->tsrv)
        s->tp->server_free(s->tsrv);
    s->tsrv = NULL;
    for (size_t i = 0; s->extra && i < s->cfg->n_transports; i++) {
        if (s->extra[i].tsrv)
            s->extra[i].tp->server_free(s->extra[i].tsrv);
        s->extra[i].tsrv = NULL;
    }
    /* Every connection closed above took its held requests along. */
    while (s->held_head) {
        pl_held *h = s->held_head;
        held_unlink(s, h);
        held_free(h);
    }
    /* Running hash jobs finish; their callbacks may still submit ops. */
    pl_workers_free(s->workers);
    s->workers = NULL;
    while (s->queries)
        status_answer(s->queries);
    /* Commits whatever is queued before the store closes (alone), or fails
     * it for the clients to retry elsewhere (in a cluster). */
    pl_seq_free(s->seq);
    s->seq = NULL;
    pl_peer_free(s->peer);
    s->peer = NULL;
    if (s->drain_ev)
        event_free(s->drain_ev);
    pl_chat_free(s->chat);
    if (s->st)
        s->sp->close(s->st);
    pl_plugin_unload(s->transport_plugin);
    for (size_t i = 0; s->extra && i < s->cfg->n_transports; i++)
        pl_plugin_unload(s->extra[i].plugin);
    free(s->extra);
    pl_plugin_unload(s->store_plugin);
    pl_members_clear(&s->members);
    sodium_memzero(s->dummy_hash, sizeof s->dummy_hash);
    free(s->rl);
    free(s->rl_addr);
    for (uint32_t i = 0; i < PL_ADDR_BUCKETS; i++)
        while (s->addrs[i]) {
            addr_count *a = s->addrs[i];
            s->addrs[i] = a->next;
            free(a);
        }
    free(s->data_dir);
    free(s);
}

void pl_server_set_limits(pl_server *s, const pl_limits *limits)
{
    s->limits = *limits;
    if (s->workers)
        pl_workers_set_queue_max(s->workers, limits->password_checks_queued);
}
