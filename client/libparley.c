/*
 * client/libparley.c — the client library (see parley.h for the contract).
 *
 * Shape: every call, synchronous or not, becomes one `pending` entry holding
 * a private copy of its request. Entries live in one list in issue order
 * until their response (matched by request_id), their deadline, or a
 * permanent failure. The connection is a single transport client; when it
 * goes away every unanswered entry is resent on the next one, unchanged, so
 * the server's client table can answer a retried mutating request from its
 * record instead of running it again (DESIGN.md §4, "Client table").
 *
 * All connection selection lives in conn_target()/conn_advance(): the leader
 * from a NOT_PRIMARY reply, else the --server override, else the config's
 * servers in priority order. Replication work that changes how a server is
 * chosen changes only those two functions.
 *
 * Connections are created and dropped only from the `kick` event or from the
 * transport's closed callback, never from inside a frame callback, so a
 * plugin never sees its client freed while it is still dispatching.
 */
#include "parley.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <sodium.h>

#include "config.h"
#include "loader.h"

/* A silent server is abandoned for the next one after this share of the
 * call's timeout (only when there is a next one), but never sooner than
 * ATTEMPT_MIN_MS: password hashing on a loaded server takes a while. */
#define ATTEMPT_DIVISOR 3u
#define ATTEMPT_MIN_MS 1000u
/* Backoff between connection attempts once every server failed in a row. */
#define BACKOFF_BASE_MS 50u
#define BACKOFF_MAX_MS 1000u
/* Delay before retrying after UNAVAILABLE or a NOT_PRIMARY without leader:
 * long enough not to spin while a view change runs, short against the
 * election timeout. */
#define RETRY_DELAY_MS 150u
#define HOST_MAX 256u

typedef struct pending pending;

struct pending {
    pending *prev, *next;
    parley_client *c;
    pl_request req;            /* strings point into buf, ids into ids */
    char *buf;
    uint64_t *ids;
    parley_done_fn cb;
    void *ud;
    struct event *timer;
    uint64_t deadline;         /* monotonic ms */
    uint64_t attempt_deadline; /* 0: none armed */
    uint64_t retry_at;         /* 0: not waiting to retry */
    int retry_switch;          /* the retry goes to another server */
    uint64_t sent_gen;         /* connection generation it was sent on, 0 = unsent */
    unsigned redirects;
    unsigned losses;           /* connections lost while it was outstanding */
    int is_subscribe;          /* after_id is refreshed on every (re)send */
    int internal;              /* a re-subscribe issued by the library */
    int last_err;              /* what to report if the deadline passes */
    char last_text[512];
};

struct parley_client {
    struct event_base *base;
    int own_base;              /* created by parley_new, freed by parley_free */
    pl_config *cfg;
    pl_plugin *plugin;
    const pl_transport_plugin *tp;
    pl_transport_client_cb tcb;

    char *override_host;       /* --server */
    uint16_t override_port;
    char redirect_host[HOST_MAX]; /* leader from NOT_PRIMARY, "" = none */
    uint16_t redirect_port;
    size_t server_idx;         /* next config server to try */
    unsigned failures;         /* consecutive connections that never answered */

    pl_transport_client *conn;
    uint64_t conn_gen;         /* increases with every connection */
    int conn_live;             /* a frame arrived on conn */
    char conn_addr[HOST_MAX + 8];
    char conn_err[256];        /* error frame the server sent before closing */
    struct event *kick;        /* (re)connect and send what is unsent */
    uint64_t kick_due;         /* monotonic ms the kick is scheduled for, 0 = none */
    int drop_requested;
    int drop_advance;
    int drop_count_loss;

    uint32_t timeout_ms;
    uint64_t client_id;
    uint64_t request_no;
    uint64_t next_request_id;
    char *token;
    char last_error[640];

    pending *head, *tail;

    parley_message_fn on_msg;
    void *on_msg_ud;
    uint64_t last_delivered;
    int subscribed;
    parley_done_fn sub_cb;     /* told about every re-subscribe */
    void *sub_ud;
    int listening;
    int listen_err;
    int stop;
    int in_cb;                 /* depth of user callbacks running */
    int closing;               /* parley_free runs: no new calls */
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) PL_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void last_error_set(parley_client *c, const char *fmt, ...) PL_PRINTF(2, 3);

static void last_error_set(parley_client *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);

    if (d)
        memcpy(d, s, n);
    return d;
}

/* "HOST:PORT" or "[V6]:PORT" into host (brackets removed) and port. */
static int parse_hostport(const char *s, size_t slen, char *host, size_t hostlen,
                          uint16_t *port)
{
    const char *colon = NULL, *h = s;
    size_t hl;
    unsigned long p = 0;

    for (size_t i = slen; i > 0; i--) {
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    }
    if (!colon || colon == s || colon + 1 == s + slen)
        return PL_ERR_INVALID;
    hl = (size_t)(colon - s);
    if (h[0] == '[') {
        if (hl < 3 || h[hl - 1] != ']')
            return PL_ERR_INVALID;
        h++;
        hl -= 2;
    }
    if (hl + 1 > hostlen)
        return PL_ERR_INVALID;
    for (const char *d = colon + 1; d < s + slen; d++) {
        if (*d < '0' || *d > '9')
            return PL_ERR_INVALID;
        p = p * 10 + (unsigned long)(*d - '0');
        if (p > 65535)
            return PL_ERR_INVALID;
    }
    if (p == 0)
        return PL_ERR_INVALID;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return PL_OK;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */
/* ------------------------------------------------------------------ */

/* Bytes a pl_str needs in the copy (with its NUL). */
static int add_size(size_t *total, size_t n)
{
    if (*total > SIZE_MAX - n)
        return -1;
    *total += n;
    return 0;
}

static pl_str put_str(char **at, pl_str s)
{
    pl_str r;

    r.ptr = *at;
    r.len = s.len;
    if (s.len)
        memcpy(*at, s.ptr, s.len);
    (*at)[s.len] = '\0';
    *at += (size_t)s.len + 1;
    return r;
}

parley_result *parley_result_copy(const pl_response *resp)
{
    size_t total = sizeof(parley_result);
    size_t off_msgs, off_users, off_servers, off_str;
    parley_result *r;
    char *at;

    if (!resp)
        return NULL;
    /* Layout: header | msgs | users | servers | string bytes. Each array
     * is placed at a multiple of 8 so every struct is aligned. */
#define ALIGN8(x) (((x) + 7u) & ~(size_t)7u)
    off_msgs = ALIGN8(total);
    total = off_msgs;
    if (resp->n_msgs && add_size(&total, (size_t)resp->n_msgs * sizeof(pl_message)))
        return NULL;
    off_users = ALIGN8(total);
    total = off_users;
    if (resp->n_users && add_size(&total, (size_t)resp->n_users * sizeof(pl_str)))
        return NULL;
    off_servers = ALIGN8(total);
    total = off_servers;
    if (resp->n_servers && add_size(&total, (size_t)resp->n_servers * sizeof(pl_server_status)))
        return NULL;
#undef ALIGN8
    off_str = total;
    if (add_size(&total, (size_t)resp->error.len + 1) ||
        add_size(&total, (size_t)resp->leader.len + 1) ||
        add_size(&total, (size_t)resp->token.len + 1))
        return NULL;
    for (uint32_t i = 0; i < resp->n_users; i++)
        if (add_size(&total, (size_t)resp->users[i].len + 1))
            return NULL;
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        const pl_message *m = &resp->msgs[i];
        if (add_size(&total, (size_t)m->from.len + 1) ||
            add_size(&total, (size_t)m->to.len + 1) ||
            add_size(&total, (size_t)m->body.len + 1))
            return NULL;
    }
    for (uint32_t i = 0; i < resp->n_servers; i++) {
        const pl_server_status *s = &resp->servers[i];
        if (add_size(&total, (size_t)s->address.len + 1) ||
            add_size(&total, (size_t)s->role.len + 1) ||
            add_size(&total, (size_t)s->store.len + 1) ||
            add_size(&total, (size_t)s->transport.len + 1) ||
            add_size(&total, (size_t)s->digest.len + 1))
            return NULL;
    }

    r = calloc(1, total);
    if (!r)
        return NULL;
    r->resp = *resp;
    at = (char *)r + off_str;
    r->resp.error = put_str(&at, resp->error);
    r->resp.leader = put_str(&at, resp->leader);
    r->resp.token = put_str(&at, resp->token);
    if (resp->n_msgs) {
        pl_message *m = (pl_message *)((char *)r + off_msgs);
        for (uint32_t i = 0; i < resp->n_msgs; i++) {
            m[i] = resp->msgs[i];
            m[i].from = put_str(&at, resp->msgs[i].from);
            m[i].to = put_str(&at, resp->msgs[i].to);
            m[i].body = put_str(&at, resp->msgs[i].body);
        }
        r->resp.msgs = m;
    } else {
        r->resp.msgs = NULL;
    }
    if (resp->n_users) {
        pl_str *u = (pl_str *)((char *)r + off_users);
        for (uint32_t i = 0; i < resp->n_users; i++)
            u[i] = put_str(&at, resp->users[i]);
        r->resp.users = u;
    } else {
        r->resp.users = NULL;
    }
    if (resp->n_servers) {
        pl_server_status *s = (pl_server_status *)((char *)r + off_servers);
        for (uint32_t i = 0; i < resp->n_servers; i++) {
            s[i] = resp->servers[i];
            s[i].address = put_str(&at, resp->servers[i].address);
            s[i].role = put_str(&at, resp->servers[i].role);
            s[i].store = put_str(&at, resp->servers[i].store);
            s[i].transport = put_str(&at, resp->servers[i].transport);
            s[i].digest = put_str(&at, resp->servers[i].digest);
        }
        r->resp.servers = s;
    } else {
        r->resp.servers = NULL;
    }
    return r;
}

void parley_result_free(parley_result *r)
{
    free(r);
}

/* ------------------------------------------------------------------ */
/* Pending calls                                                       */
/* ------------------------------------------------------------------ */

static int method_mutates(uint32_t m)
{
    switch (m) {
    case PL_M_REGISTER: case PL_M_LOGOUT: case PL_M_SEND: case PL_M_READ:
    case PL_M_ACK: case PL_M_DELETE: case PL_M_DELETE_ACCOUNT:
        return 1;
    default:
        return 0;
    }
}

static int method_needs_token(uint32_t m)
{
    switch (m) {
    case PL_M_REGISTER: case PL_M_LOGIN: case PL_M_STATUS: case PL_M_PING:
        return 0;
    default:
        return 1;
    }
}

/* Servers a request can be sent to before the list repeats. */
static size_t n_candidates(const parley_client *c)
{
    if (c->override_host || c->cfg->n_servers == 0)
        return 1;
    return c->cfg->n_servers;
}

static void pending_unlink(parley_client *c, pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        c->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        c->tail = p->prev;
    p->prev = p->next = NULL;
}

static void pending_free(pending *p)
{
    if (!p)
        return;
    if (p->timer)
        event_free(p->timer);
    free(p->buf);
    free(p->ids);
    free(p);
}

/* Finish p: unlink, report to its callback, free. resp may be NULL. */
static void pending_complete(pending *p, int err, const pl_response *resp)
{
    parley_client *c = p->c;
    parley_done_fn cb = p->cb;
    void *ud = p->ud;

    pending_unlink(c, p);
    if (err != PL_OK) {
        if (resp && resp->error.len)
            last_error_set(c, "%.*s", (int)resp->error.len, resp->error.ptr);
        else if (!resp && p->last_text[0])
            last_error_set(c, "%s", p->last_text);
        else
            last_error_set(c, "%s", pl_strerror(err));
    }
    if (p->is_subscribe && err != PL_OK) {
        /* A refused or lost subscription is over: no silent re-subscribe. */
        c->subscribed = 0;
        if (c->listening && !c->listen_err)
            c->listen_err = err;
    }
    pending_free(p);
    if (cb) {
        c->in_cb++;
        cb(ud, err, resp);
        c->in_cb--;
    }
}

static void pending_arm(pending *p)
{
    uint64_t now = now_ms(), wake = p->deadline;
    struct timeval tv;

    if (p->retry_at && p->retry_at < wake)
        wake = p->retry_at;
    if (p->attempt_deadline && p->attempt_deadline < wake)
        wake = p->attempt_deadline;
    wake = wake > now ? wake - now : 0;
    tv.tv_sec = (time_t)(wake / 1000u);
    tv.tv_usec = (suseconds_t)((wake % 1000u) * 1000u);
    evtimer_add(p->timer, &tv);
}

static void kick_at(parley_client *c, uint32_t delay_ms)
{
    struct timeval tv = { (time_t)(delay_ms / 1000u), (suseconds_t)((delay_ms % 1000u) * 1000u) };
    uint64_t due = now_ms() + delay_ms;

    /* An earlier kick already scheduled wins: it does the same work sooner. */
    if (c->kick_due && c->kick_due <= due)
        return;
    c->kick_due = due;
    evtimer_add(c->kick, &tv);
}

static uint32_t backoff_ms(const parley_client *c)
{
    size_t n = n_candidates(c);
    unsigned over, shift;
    uint32_t d;

    if (c->failures < n)
        return 0;
    over = c->failures - (unsigned)n;
    shift = over > 5 ? 5 : over;
    d = BACKOFF_BASE_MS << shift;
    return d > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : d;
}

/* Ask the kick handler to drop the connection: advance moves on to the next
 * server, count_loss charges the drop to the unanswered requests' budget.
 * Used from frame callbacks and timers, where freeing the transport client
 * would pull it out from under the plugin. */
static void request_drop(parley_client *c, int advance, int count_loss)
{
    c->drop_requested = 1;
    c->drop_advance |= advance;
    c->drop_count_loss |= count_loss;
    kick_at(c, 0);
}

/* ------------------------------------------------------------------ */
/* Connection selection: the one place that decides where to connect   */
/* ------------------------------------------------------------------ */

/* Where the next connection goes: the leader a NOT_PRIMARY named, else the
 * --server override, else the config's servers in priority order starting
 * at server_idx. */
static void conn_target(const parley_client *c, const char **host, uint16_t *port)
{
    if (c->redirect_host[0]) {
        *host = c->redirect_host;
        *port = c->redirect_port;
    } else if (c->override_host) {
        *host = c->override_host;
        *port = c->override_port;
    } else {
        const pl_server_conf *s = &c->cfg->servers[c->server_idx % c->cfg->n_servers];
        *host = s->host;
        *port = s->port;
    }
}

/* The current target failed or went silent: forget a redirect (the leader
 * may have died: start over from the config's order), else move to the next
 * configured server. */
static void conn_advance(parley_client *c)
{
    if (c->redirect_host[0]) {
        c->redirect_host[0] = '\0';
        return;
    }
    if (!c->override_host && c->cfg->n_servers > 0)
        c->server_idx = (c->server_idx + 1) % c->cfg->n_servers;
}

static void on_frame(void *ud, const pl_response *resp);
static void on_closed(void *ud, int err, const char *why);

/* Common bookkeeping when a connection is gone (closed by the peer, failed,
 * or dropped by us): every unanswered request becomes unsent, a lost
 * subscription is re-requested, and the next connection is scheduled. */
static void conn_lost(parley_client *c, int err, const char *why, int count_loss,
                      int advance);

static void pending_issue_subscribe(parley_client *c, int internal,
                                    parley_done_fn cb, void *ud, pending **outp);

static int conn_open(parley_client *c)
{
    const char *host;
    uint16_t port;
    pl_transport_options opt;
    char err[256] = "";
    int rc;

    if (c->conn)
        return PL_OK;
    conn_target(c, &host, &port);
    snprintf(c->conn_addr, sizeof c->conn_addr, strchr(host, ':') ? "[%s]:%u" : "%s:%u",
             host, (unsigned)port);
    memset(&opt, 0, sizeof opt);
    opt.host = host;
    opt.port = port;
    opt.max_frame = c->cfg->max_frame;
    opt.options_json = c->cfg->transport.options_json;
    rc = c->tp->client_connect(c->base, &opt, &c->tcb, c, &c->conn, err, sizeof err);
    if (rc != PL_OK) {
        c->conn = NULL;
        conn_lost(c, rc, err[0] ? err : pl_strerror(rc), 1, 1);
        return rc;
    }
    c->conn_gen++;
    c->conn_live = 0;
    c->conn_err[0] = '\0';
    return PL_OK;
}

static void conn_lost(parley_client *c, int err, const char *why, int count_loss,
                      int advance)
{
    char text[512];
    int have_sub = 0;
    size_t max_losses = 2 * n_candidates(c);

    snprintf(text, sizeof text, "%s: %s", c->conn_addr, why);
    if (!c->conn_live)
        c->failures++;
    c->conn_live = 0;
    if (advance)
        conn_advance(c);
    for (pending *p = c->head, *next; p; p = next) {
        next = p->next;
        if (p->is_subscribe)
            have_sub = 1;
        p->sent_gen = 0;
        p->attempt_deadline = 0;
        if (!count_loss)
            continue;
        p->last_err = err;
        snprintf(p->last_text, sizeof p->last_text, "%s", text);
        p->losses++;
        /* Against a single server a request gives up after it failed
         * twice, so "no server" is reported at once. With several servers
         * it keeps trying until its deadline: during a failover the backups
         * still name the dead primary for up to an election timeout, and
         * the new primary serves a moment later. A subscription always
         * keeps trying, so a listener survives a server restart. */
        if (!p->is_subscribe && n_candidates(c) == 1 && p->losses >= max_losses)
            pending_complete(p, err, NULL);
    }
    if (c->subscribed && !have_sub)
        pending_issue_subscribe(c, 1, c->sub_cb, c->sub_ud, NULL);
    if (c->head)
        kick_at(c, backoff_ms(c));
}

/* Send p on the current connection. */
static void pending_send(parley_client *c, pending *p)
{
    uint64_t now = now_ms();
    int rc;

    if (p->is_subscribe)
        p->req.after_id = c->last_delivered;
    rc = c->tp->client_send(c->conn, &p->req);
    if (rc != PL_OK) {
        /* The request itself cannot be encoded (e.g. over max_frame):
         * resending would fail the same way. */
        snprintf(p->last_text, sizeof p->last_text, "%s request: %s",
                 pl_method_name(p->req.method), pl_strerror(rc));
        pending_complete(p, rc, NULL);
        return;
    }
    p->sent_gen = c->conn_gen;
    if (n_candidates(c) > 1) {
        uint32_t a = c->timeout_ms / ATTEMPT_DIVISOR;
        p->attempt_deadline = now + (a < ATTEMPT_MIN_MS ? ATTEMPT_MIN_MS : a);
    }
    pending_arm(p);
}

/* The kick event: drop the connection if asked, (re)connect when something
 * is waiting, and send every request that is not on the wire. */
static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    parley_client *c = arg;
    uint64_t gen;

    (void)fd;
    (void)what;
    c->kick_due = 0;
    if (c->drop_requested) {
        int advance = c->drop_advance, count = c->drop_count_loss;

        c->drop_requested = c->drop_advance = c->drop_count_loss = 0;
        if (c->conn) {
            c->tp->client_free(c->conn);
            c->conn = NULL;
            conn_lost(c, PL_ERR_TIMEOUT, advance ? "no answer" : "redirected", count, advance);
        }
    }
    if (!c->head)
        return;
    if (!c->conn && conn_open(c) != PL_OK)
        return;
    gen = c->conn_gen;
    /* Rescan from the head after each send: a send may complete entries
     * (an unencodable request) and a user callback may queue new ones. */
    for (;;) {
        pending *p = c->head;

        while (p && (p->sent_gen != 0 || p->retry_at != 0))
            p = p->next;
        if (!p || !c->conn || c->conn_gen != gen)
            break;
        pending_send(c, p);
    }
}

static void pending_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    pending *p = arg;
    parley_client *c = p->c;
    uint64_t now = now_ms();

    (void)fd;
    (void)what;
    if (now >= p->deadline) {
        if (!p->last_err) {
            p->last_err = PL_ERR_TIMEOUT;
            snprintf(p->last_text, sizeof p->last_text, "no answer from %s within %u ms",
                     c->conn_addr, (unsigned)c->timeout_ms);
        }
        pending_complete(p, p->last_err, NULL);
        return;
    }
    if (p->retry_at && now >= p->retry_at) {
        int sw = p->retry_switch;
        p->retry_at = 0;
        p->retry_switch = 0;
        if (sw && c->conn)
            request_drop(c, 1, 0);
        else
            kick_at(c, 0);
    } else if (p->attempt_deadline && now >= p->attempt_deadline) {
        p->attempt_deadline = 0;
        if (c->conn && p->sent_gen == c->conn_gen) {
            /* The server took the request and said nothing: it may be paused
             * or partitioned. Try the next one; the resend is safe (same
             * client_id/request_no). */
            p->last_err = PL_ERR_TIMEOUT;
            snprintf(p->last_text, sizeof p->last_text, "no answer from %s", c->conn_addr);
            request_drop(c, 1, 1);
        }
    }
    pending_arm(p);
}

/* Copy req into a new pending entry and queue it (sent by the next kick). */
static int pending_new(parley_client *c, const pl_request *req, parley_done_fn cb,
                       void *ud, pending **outp)
{
    pending *p;
    size_t total = 0;
    char *at;
    const pl_str *fields[7];
    pl_str *dst[7];
    pl_str token = req->token;

    if (c->closing) {
        last_error_set(c, "the client is being freed");
        return PL_ERR_UNAVAILABLE;
    }
    if (req->n_ids && !req->ids) {
        last_error_set(c, "%s: ids missing", pl_method_name(req->method));
        return PL_ERR_INVALID;
    }
    p = calloc(1, sizeof *p);
    if (!p)
        goto nomem;
    p->c = c;
    p->req = *req;
    p->cb = cb;
    p->ud = ud;
    if (token.len == 0 && c->token && method_needs_token(req->method))
        token = pl_str_c(c->token);
    p->req.token = token;
    fields[0] = &p->req.token;    dst[0] = &p->req.token;
    fields[1] = &p->req.username; dst[1] = &p->req.username;
    fields[2] = &p->req.password; dst[2] = &p->req.password;
    fields[3] = &p->req.pattern;  dst[3] = &p->req.pattern;
    fields[4] = &p->req.to;       dst[4] = &p->req.to;
    fields[5] = &p->req.body;     dst[5] = &p->req.body;
    fields[6] = &p->req.peer;     dst[6] = &p->req.peer;
    for (int i = 0; i < 7; i++)
        total += fields[i]->len;
    p->buf = malloc(total ? total : 1);
    if (!p->buf)
        goto nomem;
    at = p->buf;
    for (int i = 0; i < 7; i++) {
        pl_str s = *fields[i];
        if (s.len)
            memcpy(at, s.ptr, s.len);
        dst[i]->ptr = s.len ? at : NULL;
        dst[i]->len = s.len;
        at += s.len;
    }
    if (req->n_ids) {
        p->ids = malloc((size_t)req->n_ids * sizeof *p->ids);
        if (!p->ids)
            goto nomem;
        memcpy(p->ids, req->ids, (size_t)req->n_ids * sizeof *p->ids);
        p->req.ids = p->ids;
    } else {
        p->req.ids = NULL;
    }
    p->timer = evtimer_new(c->base, pending_timer_cb, p);
    if (!p->timer)
        goto nomem;
    p->req.request_id = ++c->next_request_id;
    if (p->req.client_id == 0) {
        p->req.client_id = c->client_id;
        p->req.request_no = method_mutates(req->method) ? ++c->request_no : 0;
    }
    p->is_subscribe = req->method == PL_M_SUBSCRIBE;
    p->deadline = now_ms() + c->timeout_ms;

    p->prev = c->tail;
    if (c->tail)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    pending_arm(p);
    kick_at(c, c->conn ? 0 : backoff_ms(c));
    if (outp)
        *outp = p;
    return PL_OK;

nomem:
    pending_free(p);
    last_error_set(c, "%s", pl_strerror(PL_ERR_NOMEM));
    return PL_ERR_NOMEM;
}

static void pending_issue_subscribe(parley_client *c, int internal,
                                    parley_done_fn cb, void *ud, pending **outp)
{
    pl_request req;
    pending *p = NULL;

    memset(&req, 0, sizeof req);
    req.method = PL_M_SUBSCRIBE;
    req.after_id = c->last_delivered;
    if (pending_new(c, &req, cb, ud, &p) == PL_OK)
        p->internal = internal;
    if (outp)
        *outp = p;
}

/* ------------------------------------------------------------------ */
/* Transport callbacks                                                 */
/* ------------------------------------------------------------------ */

static void deliver_push(parley_client *c, const pl_response *resp)
{
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        const pl_message *m = &resp->msgs[i];
        /* After a reconnect the server may replay from an older id than we
         * saw (a push in flight when the link broke): drop the replays so the
         * caller sees every message once, in order. */
        if (!c->on_msg || m->id <= c->last_delivered)
            continue;
        c->last_delivered = m->id;
        c->in_cb++;
        c->on_msg(c->on_msg_ud, m);
        c->in_cb--;
    }
}

static pending *pending_find(parley_client *c, uint64_t request_id)
{
    for (pending *p = c->head; p; p = p->next)
        if (p->req.request_id == request_id && p->sent_gen == c->conn_gen && p->sent_gen)
            return p;
    return NULL;
}

static void on_frame(void *ud, const pl_response *resp)
{
    parley_client *c = ud;
    pending *p;
    uint64_t now;

    c->conn_live = 1;
    c->failures = 0;
    if (resp->method == PL_M_PUSH) {
        deliver_push(c, resp);
        return;
    }
    p = resp->request_id ? pending_find(c, resp->request_id) : NULL;
    if (!p) {
        /* A connection-level error frame (malformed input, frame too large)
         * or a late answer to a request we gave up on. The close that
         * usually follows is handled by on_closed. */
        if (resp->status != PL_OK) {
            last_error_set(c, "%s: %.*s", c->conn_addr, (int)resp->error.len,
                           resp->error.ptr ? resp->error.ptr : "");
            /* kept for the close that follows, so the reason survives */
            snprintf(c->conn_err, sizeof c->conn_err, "%.*s", (int)resp->error.len,
                     resp->error.ptr ? resp->error.ptr : "");
        }
        return;
    }
    now = now_ms();
    p->attempt_deadline = 0;
    if (resp->status == PL_ERR_NOT_PRIMARY || resp->status == PL_ERR_UNAVAILABLE) {
        char host[HOST_MAX];
        uint16_t port;
        int have_leader = resp->status == PL_ERR_NOT_PRIMARY && resp->leader.len &&
            parse_hostport(resp->leader.ptr, resp->leader.len, host, sizeof host, &port) == PL_OK;

        p->last_err = (int)resp->status;
        snprintf(p->last_text, sizeof p->last_text, "%s: %.*s", c->conn_addr,
                 (int)resp->error.len, resp->error.ptr ? resp->error.ptr : "");
        if (now + RETRY_DELAY_MS >= p->deadline) {
            pending_complete(p, (int)resp->status, resp);
            return;
        }
        p->sent_gen = 0;
        if (have_leader && p->redirects < PARLEY_MAX_REDIRECTS) {
            p->redirects++;
            /* Go to the leader now; the drop itself happens in the kick
             * handler, without advancing, so the redirect set here holds. */
            request_drop(c, 0, 0);
            snprintf(c->redirect_host, sizeof c->redirect_host, "%s", host);
            c->redirect_port = port;
            return;
        }
        /* No leader known yet (a view change is running) or a server
         * without quorum: wait a little, then ask another server. */
        p->retry_at = now + RETRY_DELAY_MS;
        p->retry_switch = n_candidates(c) > 1;
        pending_arm(p);
        return;
    }
    pending_complete(p, (int)resp->status, resp);
}

static void on_closed(void *ud, int err, const char *why)
{
    parley_client *c = ud;

    if (c->conn) {
        c->tp->client_free(c->conn);
        c->conn = NULL;
    }
    char text[512];
    if (c->conn_err[0]) {
        /* the server said why before it closed: that is the reason to show */
        snprintf(text, sizeof text, "closed by the server: %s", c->conn_err);
        why = text;
        c->conn_err[0] = '\0';
    }
    conn_lost(c, err ? err : PL_ERR_IO, why && why[0] ? why : pl_strerror(err), 1, 1);
}

/* ------------------------------------------------------------------ */
/* Client lifetime                                                     */
/* ------------------------------------------------------------------ */

parley_client *parley_new(const parley_options *o, char *err, size_t errlen)
{
    parley_options none;
    parley_client *c = NULL;
    const char *path;
    const char *plugin_dir;
    char perr[4096] = "";  /* every error of a config file, one line each */

    if (!o) {
        memset(&none, 0, sizeof none);
        o = &none;
    }
    if (sodium_init() < 0) {
        set_err(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        goto nomem;
    c->timeout_ms = o->timeout_ms ? o->timeout_ms : PARLEY_TIMEOUT_DEFAULT_MS;
    path = o->config_path;
    if (!path || !path[0])
        path = getenv("PARLEY_CONFIG");
    if (path && path[0]) {
        c->cfg = pl_config_load(path, perr, sizeof perr);
        if (!c->cfg) {
            set_err(err, errlen, "%s", perr[0] ? perr : "cannot load the configuration");
            goto fail;
        }
    } else {
        c->cfg = pl_config_default();
        if (!c->cfg)
            goto nomem;
    }
    if (o->server && o->server[0]) {
        char host[HOST_MAX];
        if (parse_hostport(o->server, strlen(o->server), host, sizeof host,
                           &c->override_port) != PL_OK) {
            set_err(err, errlen, "--server %s: expected HOST:PORT with a port 1-65535",
                    o->server);
            goto fail;
        }
        c->override_host = str_dup(host);
        if (!c->override_host)
            goto nomem;
    } else if (c->cfg->n_servers == 0) {
        set_err(err, errlen, "%s: servers: no server to connect to",
                c->cfg->path ? c->cfg->path : "configuration");
        goto fail;
    }
    plugin_dir = o->plugin_dir ? o->plugin_dir : c->cfg->plugin_dir;
    c->plugin = pl_plugin_load("transport", c->cfg->transport.name, plugin_dir,
                               perr, sizeof perr);
    if (!c->plugin) {
        set_err(err, errlen, "%s", perr);
        goto fail;
    }
    c->tp = pl_plugin_transport(c->plugin);
    if (!c->tp) {
        set_err(err, errlen, "plugin \"%s\": not a transport plugin", c->cfg->transport.name);
        goto fail;
    }
    c->own_base = o->base == NULL;
    c->base = o->base ? o->base : event_base_new();
    if (!c->base)
        goto nomem;
    c->kick = evtimer_new(c->base, kick_cb, c);
    if (!c->kick)
        goto nomem;
    c->tcb.frame = on_frame;
    c->tcb.closed = on_closed;
    /* A random id, so two clients never share a client-table row; 0 means
     * "no exactly-once" on the wire, so it is never used, and ids with the
     * top 16 bits set are the importer's (servers refuse them). */
    do {
        randombytes_buf(&c->client_id, sizeof c->client_id);
    } while (c->client_id == 0 || (c->client_id >> 48) == 0xffff);
    snprintf(c->last_error, sizeof c->last_error, "no error");
    return c;

nomem:
    set_err(err, errlen, "%s", pl_strerror(PL_ERR_NOMEM));
fail:
    parley_free(c);
    return NULL;
}

void parley_free(parley_client *c)
{
    if (!c)
        return;
    /* Cancel what is pending; the callbacks learn the client is going (and
     * cannot queue more). */
    c->closing = 1;
    while (c->head) {
        snprintf(c->head->last_text, sizeof c->head->last_text, "client closed");
        pending_complete(c->head, PL_ERR_UNAVAILABLE, NULL);
    }
    if (c->conn)
        c->tp->client_free(c->conn);
    if (c->kick)
        event_free(c->kick);
    if (c->base && c->own_base)
        event_base_free(c->base);
    pl_plugin_unload(c->plugin);
    pl_config_free(c->cfg);
    free(c->override_host);
    if (c->token) {
        sodium_memzero(c->token, strlen(c->token));
        free(c->token);
    }
    free(c);
}

struct event_base *parley_event_base(parley_client *c)
{
    return c->base;
}

const char *parley_last_error(const parley_client *c)
{
    return c->last_error;
}

int parley_unreachable(int err)
{
    return err == PL_ERR_IO || err == PL_ERR_UNAVAILABLE || err == PL_ERR_TIMEOUT ||
           err == PL_ERR_NOT_PRIMARY;
}

int parley_set_token(parley_client *c, const char *token)
{
    char *t = NULL;

    if (token && token[0]) {
        if (strlen(token) > PL_TOKEN_MAX) {
            last_error_set(c, "session token longer than %u characters", PL_TOKEN_MAX);
            return PL_ERR_INVALID;
        }
        t = str_dup(token);
        if (!t)
            return PL_ERR_NOMEM;
    }
    if (c->token) {
        sodium_memzero(c->token, strlen(c->token));
        free(c->token);
    }
    c->token = t;
    return PL_OK;
}

const char *parley_token(const parley_client *c)
{
    return c->token ? c->token : "";
}

/* ------------------------------------------------------------------ */
/* Calls                                                               */
/* ------------------------------------------------------------------ */

int parley_call_async(parley_client *c, const pl_request *req, parley_done_fn cb, void *ud)
{
    if (req->method == PL_M_SUBSCRIBE)
        return parley_subscribe_async(c, req->after_id, cb, ud);
    return pending_new(c, req, cb, ud, NULL);
}

/* One turn of the loop. Refuses to nest inside a callback: one event_base
 * runs one loop at a time. */
static int run_once(parley_client *c)
{
    int r = event_base_loop(c->base, EVLOOP_ONCE);

    return r < 0 ? PL_ERR_BUSY : PL_OK;
}

static int refuse_nested(parley_client *c)
{
    last_error_set(c, "a synchronous libparley call inside an event callback: "
                      "use parley_call_async");
    return PL_ERR_BUSY;
}

typedef struct sync_slot {
    int done;
    int err;
    parley_result *res;
    int nomem;
} sync_slot;

static void sync_done(void *ud, int err, const pl_response *resp)
{
    sync_slot *s = ud;

    s->done = 1;
    s->err = err;
    if (resp) {
        s->res = parley_result_copy(resp);
        if (!s->res)
            s->nomem = 1;
    }
}

int parley_call(parley_client *c, const pl_request *req, parley_result **out)
{
    sync_slot slot = { 0, 0, NULL, 0 };
    pending *p = NULL;
    int rc;

    if (out)
        *out = NULL;
    if (c->in_cb)
        return refuse_nested(c);
    if (req->method == PL_M_SUBSCRIBE) {
        c->subscribed = 1;
        c->last_delivered = req->after_id;
        c->sub_cb = NULL;
        c->sub_ud = NULL;
        pending_issue_subscribe(c, 0, sync_done, &slot, &p);
        rc = p ? PL_OK : PL_ERR_NOMEM;
    } else {
        rc = pending_new(c, req, sync_done, &slot, &p);
    }
    if (rc != PL_OK)
        return rc;
    while (!slot.done) {
        if (run_once(c) != PL_OK) {
            /* The caller runs this base's loop already. */
            p->cb = NULL;
            pending_complete(p, PL_ERR_BUSY, NULL);
            return refuse_nested(c);
        }
    }
    if (slot.nomem) {
        last_error_set(c, "%s", pl_strerror(PL_ERR_NOMEM));
        return PL_ERR_NOMEM;
    }
    if (out)
        *out = slot.res;
    else
        parley_result_free(slot.res);
    return slot.err;
}

int parley_wait(parley_client *c)
{
    if (c->in_cb)
        return refuse_nested(c);
    c->stop = 0;
    while (c->head && !c->stop)
        if (run_once(c) != PL_OK)
            return refuse_nested(c);
    return PL_OK;
}

/* ---- wrappers ---- */

static pl_str opt_str(const char *s)
{
    return pl_str_c(s ? s : "");
}

static int call_simple(parley_client *c, const pl_request *req, parley_result **out)
{
    parley_result *r = NULL;
    int rc = parley_call(c, req, out ? &r : NULL);

    if (out) {
        *out = rc == PL_OK ? r : NULL;
        if (rc != PL_OK)
            parley_result_free(r);
    }
    return rc;
}

int parley_register(parley_client *c, const char *user, const char *password)
{
    pl_request q = { .method = PL_M_REGISTER };

    q.username = opt_str(user);
    q.password = opt_str(password);
    return call_simple(c, &q, NULL);
}

int parley_login(parley_client *c, const char *user, const char *password, uint64_t *unread)
{
    pl_request q = { .method = PL_M_LOGIN };
    parley_result *r = NULL;
    char tok[PL_TOKEN_MAX + 1];
    int rc;

    q.username = opt_str(user);
    q.password = opt_str(password);
    rc = call_simple(c, &q, &r);
    if (rc != PL_OK)
        return rc;
    if (r->resp.token.len == 0 || r->resp.token.len > PL_TOKEN_MAX) {
        last_error_set(c, "login answer carried no valid session token");
        parley_result_free(r);
        return PL_ERR_MALFORMED;
    }
    memcpy(tok, r->resp.token.ptr, r->resp.token.len);
    tok[r->resp.token.len] = '\0';
    if (unread)
        *unread = r->resp.unread;
    parley_result_free(r);
    rc = parley_set_token(c, tok);
    sodium_memzero(tok, sizeof tok);
    return rc;
}

int parley_logout(parley_client *c)
{
    pl_request q = { .method = PL_M_LOGOUT };
    int rc = call_simple(c, &q, NULL);

    if (rc == PL_OK)
        parley_set_token(c, NULL);
    return rc;
}

int parley_list_users(parley_client *c, const char *pattern, uint64_t offset,
                      uint64_t limit, parley_result **out)
{
    pl_request q = { .method = PL_M_LIST_USERS };

    q.pattern = opt_str(pattern);
    q.offset = offset;
    q.limit = limit;
    return call_simple(c, &q, out);
}

int parley_send(parley_client *c, const char *to, const char *body, uint64_t *id,
                uint64_t *time_ms)
{
    pl_request q = { .method = PL_M_SEND };
    parley_result *r = NULL;
    int rc;

    q.to = opt_str(to);
    q.body = opt_str(body);
    rc = call_simple(c, &q, &r);
    if (rc != PL_OK)
        return rc;
    if (id)
        *id = r->resp.id;
    if (time_ms)
        *time_ms = r->resp.time_ms;
    parley_result_free(r);
    return PL_OK;
}

int parley_counts(parley_client *c, uint64_t *unread, uint64_t *read)
{
    pl_request q = { .method = PL_M_COUNTS };
    parley_result *r = NULL;
    int rc = call_simple(c, &q, &r);

    if (rc != PL_OK)
        return rc;
    if (unread)
        *unread = r->resp.unread;
    if (read)
        *read = r->resp.read;
    parley_result_free(r);
    return PL_OK;
}

int parley_read(parley_client *c, uint64_t n, parley_result **out)
{
    pl_request q = { .method = PL_M_READ };

    q.n = n;
    return call_simple(c, &q, out);
}

int parley_history(parley_client *c, uint64_t offset, uint64_t limit, parley_result **out)
{
    pl_request q = { .method = PL_M_HISTORY };

    q.offset = offset;
    q.limit = limit;
    return call_simple(c, &q, out);
}

int parley_conversation(parley_client *c, const char *peer, uint64_t offset,
                        uint64_t limit, parley_result **out)
{
    pl_request q = { .method = PL_M_CONVERSATION };

    q.peer = opt_str(peer);
    q.offset = offset;
    q.limit = limit;
    return call_simple(c, &q, out);
}

int parley_ack(parley_client *c, const uint64_t *ids, uint32_t n_ids)
{
    pl_request q = { .method = PL_M_ACK };

    q.ids = ids;
    q.n_ids = n_ids;
    return call_simple(c, &q, NULL);
}

int parley_delete(parley_client *c, const uint64_t *ids, uint32_t n_ids)
{
    pl_request q = { .method = PL_M_DELETE };

    q.ids = ids;
    q.n_ids = n_ids;
    return call_simple(c, &q, NULL);
}

int parley_delete_account(parley_client *c, const char *password)
{
    pl_request q = { .method = PL_M_DELETE_ACCOUNT };
    int rc;

    q.password = opt_str(password);
    rc = call_simple(c, &q, NULL);
    if (rc == PL_OK)
        parley_set_token(c, NULL);
    return rc;
}

int parley_status(parley_client *c, parley_result **out)
{
    pl_request q = { .method = PL_M_STATUS };

    return call_simple(c, &q, out);
}

int parley_ping(parley_client *c)
{
    pl_request q = { .method = PL_M_PING };

    return call_simple(c, &q, NULL);
}

/* ------------------------------------------------------------------ */
/* Pushes                                                              */
/* ------------------------------------------------------------------ */

void parley_on_message(parley_client *c, parley_message_fn cb, void *ud)
{
    c->on_msg = cb;
    c->on_msg_ud = ud;
}

int parley_subscribe_async(parley_client *c, uint64_t after_id, parley_done_fn cb, void *ud)
{
    pending *p = NULL;

    c->subscribed = 1;
    c->last_delivered = after_id;
    c->sub_cb = cb;
    c->sub_ud = ud;
    pending_issue_subscribe(c, 0, cb, ud, &p);
    return p ? PL_OK : PL_ERR_NOMEM;
}

static void listen_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    parley_stop(arg);
}

int parley_listen(parley_client *c, uint64_t after_id, uint32_t timeout_ms)
{
    struct event *timer = NULL;
    int rc;

    if (c->in_cb)
        return refuse_nested(c);
    c->stop = 0;
    c->listen_err = 0;
    c->listening = 1;
    rc = parley_subscribe_async(c, after_id, NULL, NULL);
    if (rc != PL_OK)
        goto out;
    if (timeout_ms) {
        struct timeval tv = { (time_t)(timeout_ms / 1000u),
                              (suseconds_t)((timeout_ms % 1000u) * 1000u) };
        timer = evtimer_new(c->base, listen_timeout_cb, c);
        if (!timer) {
            rc = PL_ERR_NOMEM;
            goto out;
        }
        evtimer_add(timer, &tv);
    }
    while (!c->stop && !c->listen_err) {
        if (run_once(c) != PL_OK) {
            rc = refuse_nested(c);
            goto out;
        }
    }
    rc = c->listen_err;
out:
    if (timer)
        event_free(timer);
    c->listening = 0;
    /* The listener is done: no re-subscribing after a later reconnect. */
    c->subscribed = 0;
    c->sub_cb = NULL;
    c->sub_ud = NULL;
    return rc;
}

void parley_stop(parley_client *c)
{
    c->stop = 1;
    event_base_loopbreak(c->base);
}

uint64_t parley_last_delivered(const parley_client *c)
{
    return c->last_delivered;
}

const char *parley_server_address(const parley_client *c)
{
    return c->conn && c->conn_live ? c->conn_addr : "";
}
