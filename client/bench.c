/*
 * client/bench.c — parley-bench: load generator and latency meter for a
 * running parley server or cluster.
 *
 *   parley-bench -c CONFIG [--workload send|deliver|login-storm|list|read]
 *                [--connections N] [--users M] [--listeners L] [--body BYTES]
 *                [--rate OPS_PER_S] [--pipeline K] [--duration S] [--warmup S]
 *   parley-bench --wire-sizes [-c CONFIG] [--body BYTES]
 *
 * How a run goes
 *   1. setup: register M users "<prefix>0".."<prefix>M-1" (an existing name
 *      is fine: runs reuse them), then bring up N workload connections
 *      (connection i logs in as user i mod M) and L idle listeners (logged
 *      in and subscribed, spread over the users). The server's
 *      password_hash should be cheap for this (docs/performance.md).
 *   2. warmup, then the measured window, then a short drain.
 *   3. a JSON document on stdout: the configuration, throughput, latency
 *      percentiles and errors. A progress line per second goes to stderr.
 *
 * Load is closed loop (every connection keeps --pipeline requests in
 * flight, issuing the next as one completes) or, with --rate, a fixed
 * offered rate spread over the connections. At a fixed rate a request's
 * latency counts from when it was due, not from when a connection was free
 * to send it, so a stalled server shows up as latency instead of silently
 * lowering the offered load ("coordinated omission").
 *
 * Workloads
 *   send         acknowledged sends to the next user (user i -> i+1 mod M)
 *   deliver      the same, every workload connection subscribed: also
 *                measures send -> push arrival (the send time travels in
 *                the body)
 *   login-storm  each operation is a new connection and a login
 *   list         list_users (pattern --pattern, 50 per page)
 *   read         read --read-n oldest unread (a replicated op)
 *
 * Exit status: 0 when the run completed (errors are in the JSON), 1 when
 * setup failed, 2 on a usage error.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <parley/transport.h>
#include <sodium.h>

#include "bench.h"
#include "bench_hist.h"
#include "config.h"
#include "loader.h"

#define PB_EXIT_SETUP 1
#define PB_EXIT_USAGE 2
#define PB_PASSWORD "parley-bench-password"
#define PB_PREFIX_MAX 20u
#define PB_REGISTER_CONNS 8u
#define PB_RETRY_MS 50
#define PB_DRAIN_S 5
#define PB_MAX_PIDS 8
#define PB_SUB_AFTER (1ull << 62) /* subscribe for live pushes only, no backlog */
#define PB_STAMP_LEN 17u          /* 16 hex digits of the send time and a space */
#define NS 1000000000ull

enum pb_workload { W_SEND, W_DELIVER, W_LOGIN_STORM, W_LIST, W_READ };
static const char *const workload_names[] = { "send", "deliver", "login-storm", "list", "read" };

enum pb_phase { P_REGISTER, P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };
static const char *const phase_names[] = { "register", "connect", "warmup", "measure", "drain",
                                           "done" };

/* What a connection is doing. */
enum pb_state {
    CS_OFF,        /* no connection (not started, or between login-storm cycles) */
    CS_REGISTER,   /* a register-pool connection with a register in flight */
    CS_LOGIN,      /* connected (or connecting), login in flight */
    CS_SUBSCRIBE,  /* subscribe in flight */
    CS_READY,      /* serving the workload */
    CS_DEAD        /* closed by the server or a network error */
};

typedef struct pb_opts {
    const char *config;
    const char *server;
    int workload;
    uint32_t conns;
    uint32_t users;
    uint32_t listeners;
    uint32_t body;
    double rate;
    uint32_t pipeline;
    double duration;
    double warmup;
    uint32_t read_n;
    const char *pattern;
    const char *prefix;
    uint32_t setup_conc;
    double setup_timeout;
    int quiet;
    int pids[PB_MAX_PIDS];
    int n_pids;
} pb_opts;

typedef struct pb_slot {
    uint64_t rid;       /* 0 = free */
    uint64_t start_ns;  /* when it was due (rate) or sent (closed loop) */
} pb_slot;

typedef struct pb_bench pb_bench;

typedef struct pb_conn {
    pb_bench *b;
    uint32_t idx;
    uint32_t user;           /* logs in as this user */
    int listener;            /* an idle subscribed connection */
    int state;               /* enum pb_state */
    pl_transport_client *cli;
    char token[PL_TOKEN_MAX + 1];
    uint64_t client_id;
    uint64_t request_no;
    uint64_t setup_rno;      /* request_no of the setup request in flight (kept on retry) */
    uint32_t reg_user;       /* register pool: the user being registered */
    uint64_t seq;
    uint32_t inflight;
    pb_slot *slots;          /* --pipeline entries */
    uint64_t cycle_start;    /* login-storm: when this cycle's connect began */
    struct event *retry_ev;
} pb_conn;

struct pb_bench {
    pb_opts o;
    struct event_base *base;
    pl_config *cfg;
    pl_plugin *plugin;
    const pl_transport_plugin *tp;
    char host[256];
    uint16_t port;
    char transport_label[64];
    int phase;
    uint64_t t_start, t_phase, t_measure, t_measure_end, t_end;
    /* CPU time (utime + stime, seconds) of this process ([0]) and of each
     * --pid process, read when the window opens and when it closes, and
     * when the window closed (t_cpu_end; up to a tick after its end) */
    double cpu0[PB_MAX_PIDS + 1], cpu1[PB_MAX_PIDS + 1];
    uint64_t t_cpu_end;
    uint64_t setup_deadline;
    char setup_error[512];
    char last_close[160];    /* why the last connection closed during setup */
    int redirected;

    /* setup */
    uint32_t next_reg;       /* next user to register */
    uint32_t reg_done;
    uint32_t reg_created, reg_existed;
    pb_conn *reg;            /* register pool */
    uint32_t n_reg;
    pb_conn *conns;          /* workload connections, then listeners */
    uint32_t n_conns;
    uint32_t next_up;        /* next connection to bring up */
    uint32_t up_inflight;
    uint32_t ready;
    double setup_seconds;

    /* load */
    struct event *tick_ev;   /* 1 s: progress and phase changes */
    struct event *rate_ev;   /* --rate pacing */
    uint64_t rate_t0;
    uint64_t rate_issued;
    uint64_t rate_backlog_max;
    uint32_t rr;             /* round robin over workload connections */
    char *body;              /* --body bytes; the stamp is rewritten per send */
    char **names;            /* user names */

    /* results */
    pb_hist ack;             /* measured window: request -> response */
    pb_hist push;            /* measured window: send -> push arrival */
    pb_hist iv_ack;          /* this second */
    pb_hist iv_push;
    uint64_t ops;            /* completed OK in the measured window */
    uint64_t iv_ops;
    uint64_t pushes;         /* pushes arriving in the measured window */
    uint64_t iv_errors;
    uint64_t errors;         /* after setup: failed requests and lost connections */
    uint64_t err_by_status[PL_ERR__COUNT];
    uint64_t closed;         /* connections lost after setup */
    uint64_t setup_retries;
    uint64_t unfinished;     /* still in flight when the drain ended */
    int interrupted;
    struct event *sigint_ev;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static double secs(uint64_t ns)
{
    return (double)ns / 1e9;
}

static void conn_start(pb_conn *c);
static void issue_closed_loop(pb_conn *c);
static void phase_set(pb_bench *b, int phase);
static void cpu_sample(pb_bench *b, double *out);
static void setup_fail(pb_bench *b, const char *fmt, ...) PL_PRINTF(2, 3);

/* ------------------------------------------------------------ requests */

static int send_req(pb_conn *c, pl_request *r)
{
    r->client_id = c->client_id;
    int rc = c->b->tp->client_send(c->cli, r);
    if (rc != PL_OK) {
        c->b->errors++;
        c->b->err_by_status[rc < PL_ERR__COUNT ? rc : PL_ERR_INTERNAL]++;
    }
    return rc;
}

static void send_register(pb_conn *c)
{
    pl_request r = { .method = PL_M_REGISTER, .request_id = 1, .request_no = c->setup_rno,
                     .username = pl_str_c(c->b->names[c->reg_user]),
                     .password = pl_str_c(PB_PASSWORD) };
    send_req(c, &r);
}

static void send_login(pb_conn *c)
{
    pl_request r = { .method = PL_M_LOGIN, .request_id = 2, .request_no = c->setup_rno,
                     .username = pl_str_c(c->b->names[c->user]),
                     .password = pl_str_c(PB_PASSWORD) };
    send_req(c, &r);
}

static void send_subscribe(pb_conn *c)
{
    pl_request r = { .method = PL_M_SUBSCRIBE, .request_id = 3, .after_id = PB_SUB_AFTER,
                     .token = pl_str_c(c->token) };
    send_req(c, &r);
}

/* Write the send time into the body as 16 hex digits: the recipient's push
 * carries it back, giving send -> push latency without any table. */
static void stamp(char *body, uint64_t t)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        body[i] = hex[t & 15u];
        t >>= 4;
    }
    body[16] = ' ';
}

static int unstamp(pl_str body, uint64_t *t)
{
    if (body.len < PB_STAMP_LEN || body.ptr[16] != ' ')
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char ch = body.ptr[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else
            return -1;
        v = v << 4 | d;
    }
    *t = v;
    return 0;
}

/* One workload operation on c, due at start_ns. Returns 0 when issued. */
static int issue(pb_conn *c, uint64_t start_ns)
{
    pb_bench *b = c->b;
    uint32_t k;
    for (k = 0; k < b->o.pipeline && c->slots[k].rid; k++)
        ;
    if (k == b->o.pipeline || c->state != CS_READY)
        return -1;
    uint64_t rid = (++c->seq << 16) | (k + 1u);
    c->slots[k].rid = rid;
    c->slots[k].start_ns = start_ns;
    c->inflight++;

    if (b->o.workload == W_LOGIN_STORM) {
        /* A new connection and a login: the cycle ends with the login reply. */
        b->tp->client_free(c->cli);
        c->cli = NULL;
        c->cycle_start = start_ns;
        conn_start(c);
        return 0;
    }
    pl_request r = { .request_id = rid, .token = pl_str_c(c->token) };
    switch (b->o.workload) {
    case W_SEND:
    case W_DELIVER:
        r.method = PL_M_SEND;
        r.request_no = ++c->request_no;
        r.to = pl_str_c(b->names[(c->user + 1) % b->o.users]);
        if (b->o.body >= PB_STAMP_LEN)
            stamp(b->body, start_ns);
        r.body = (pl_str){ b->body, b->o.body };
        break;
    case W_LIST:
        r.method = PL_M_LIST_USERS;
        r.pattern = pl_str_c(b->o.pattern);
        r.limit = 50;
        break;
    case W_READ:
        r.method = PL_M_READ;
        r.request_no = ++c->request_no;
        r.n = b->o.read_n;
        break;
    default:
        break;
    }
    if (send_req(c, &r) != PL_OK) {
        c->slots[k].rid = 0;
        c->inflight--;
        return -1;
    }
    return 0;
}

/* A workload operation finished at t. */
static void complete(pb_bench *b, uint64_t start_ns, uint64_t t, int status)
{
    int counted = b->phase == P_MEASURE && t < b->t_measure_end;
    if (status != PL_OK) {
        if (b->phase == P_WARMUP || b->phase == P_MEASURE || b->phase == P_DRAIN) {
            b->errors++;
            b->iv_errors++;
            b->err_by_status[status < PL_ERR__COUNT ? status : PL_ERR_INTERNAL]++;
        }
        return;
    }
    uint64_t lat = t > start_ns ? t - start_ns : 0;
    pb_hist_record(&b->iv_ack, lat);
    b->iv_ops++;
    if (counted) {
        pb_hist_record(&b->ack, lat);
        b->ops++;
    }
}

static int issuing(const pb_bench *b)
{
    return b->phase == P_WARMUP || b->phase == P_MEASURE;
}

static void issue_closed_loop(pb_conn *c)
{
    pb_bench *b = c->b;
    if (b->o.rate > 0 || !issuing(b) || c->listener)
        return;
    while (c->state == CS_READY && c->inflight < b->o.pipeline)
        if (issue(c, now_ns()) != 0)
            break;
}

/* ------------------------------------------------------------ callbacks */

static void on_push(pb_conn *c, const pl_response *resp)
{
    pb_bench *b = c->b;
    uint64_t sent;
    if (resp->n_msgs < 1 || unstamp(resp->msgs[0].body, &sent) != 0)
        return;
    uint64_t t = now_ns();
    uint64_t lat = t > sent ? t - sent : 0;
    pb_hist_record(&b->iv_push, lat);
    if (b->phase == P_MEASURE && t < b->t_measure_end && sent >= b->t_measure) {
        pb_hist_record(&b->push, lat);
        b->pushes++;
    }
}

static int retryable(uint32_t st)
{
    return st == PL_ERR_BUSY || st == PL_ERR_UNAVAILABLE || st == PL_ERR_RATE_LIMITED ||
           st == PL_ERR_TIMEOUT;
}

static void retry_later(pb_conn *c)
{
    struct timeval tv = { 0, PB_RETRY_MS * 1000 };
    c->b->setup_retries++;
    event_add(c->retry_ev, &tv);
}

/* Register pool: take the next user to register, or retire. */
static void reg_next(pb_conn *c)
{
    pb_bench *b = c->b;
    if (b->next_reg >= b->o.users) {
        b->tp->client_free(c->cli);
        c->cli = NULL;
        c->state = CS_OFF;
        return;
    }
    c->reg_user = b->next_reg++;
    c->setup_rno = ++c->request_no;
    c->state = CS_REGISTER;
    send_register(c);
}

static void up_next(pb_bench *b);

/* A connection finished setup (ready) or gave up. */
static void up_done(pb_conn *c)
{
    pb_bench *b = c->b;
    b->up_inflight--;
    b->ready++;
    if (b->ready == b->n_conns) {
        phase_set(b, P_WARMUP);
        return;
    }
    up_next(b);
}

static void became_ready(pb_conn *c)
{
    c->state = CS_READY;
    pb_bench *b = c->b;
    if (b->phase == P_CONNECT) {
        up_done(c);
    }
}

static void handle_setup_reply(pb_conn *c, const pl_response *resp)
{
    pb_bench *b = c->b;
    uint32_t st = resp->status;

    if (st == PL_ERR_NOT_PRIMARY && resp->leader.len && resp->leader.len < sizeof b->host + 8) {
        /* Follow the cluster's primary once; every later (re)connection goes
         * there. */
        char addr[300];
        memcpy(addr, resp->leader.ptr, resp->leader.len);
        addr[resp->leader.len] = '\0';
        char *colon = strrchr(addr, ':');
        if (!colon || b->redirected > 3) {
            setup_fail(b, "server says it is not the primary (leader %s)", addr);
            return;
        }
        if (b->redirected == 0 || strncmp(b->host, addr, (size_t)(colon - addr)) != 0 ||
            b->port != (uint16_t)atoi(colon + 1)) {
            *colon = '\0';
            const char *h = addr;
            size_t hl = strlen(h);
            if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
                addr[hl - 1] = '\0';
                h = addr + 1;
            }
            snprintf(b->host, sizeof b->host, "%.255s", h);
            b->port = (uint16_t)atoi(colon + 1);
            b->redirected++;
            fprintf(stderr, "parley-bench: following the primary to %s:%u\n", b->host,
                    (unsigned)b->port);
        }
        b->tp->client_free(c->cli);
        c->cli = NULL;
        conn_start(c);
        return;
    }
    if (retryable(st)) {
        retry_later(c);
        return;
    }
    switch (c->state) {
    case CS_REGISTER:
        if (st == PL_OK)
            b->reg_created++;
        else if (st == PL_ERR_USER_EXISTS)
            b->reg_existed++;
        else {
            setup_fail(b, "register %s: %.*s", b->names[c->reg_user], (int)resp->error.len,
                       resp->error.ptr ? resp->error.ptr : "");
            return;
        }
        if (++b->reg_done == b->o.users) {
            reg_next(c);
            phase_set(b, P_CONNECT);
            return;
        }
        reg_next(c);
        return;
    case CS_LOGIN:
        if (st != PL_OK || resp->token.len > PL_TOKEN_MAX) {
            if (b->phase == P_CONNECT) {
                setup_fail(b, "login %s: %.*s", b->names[c->user], (int)resp->error.len,
                           resp->error.ptr ? resp->error.ptr : "");
                return;
            }
            /* login-storm: a failed cycle counts as an error */
            c->state = CS_READY;
            for (uint32_t k = 0; k < b->o.pipeline; k++)
                if (c->slots[k].rid) {
                    c->slots[k].rid = 0;
                    c->inflight--;
                    complete(b, c->slots[k].start_ns, now_ns(), (int)st);
                }
            issue_closed_loop(c);
            return;
        }
        memcpy(c->token, resp->token.ptr, resp->token.len);
        c->token[resp->token.len] = '\0';
        if (b->phase != P_CONNECT && b->o.workload == W_LOGIN_STORM) {
            c->state = CS_READY;
            for (uint32_t k = 0; k < b->o.pipeline; k++)
                if (c->slots[k].rid) {
                    c->slots[k].rid = 0;
                    c->inflight--;
                    complete(b, c->slots[k].start_ns, now_ns(), PL_OK);
                }
            issue_closed_loop(c);
            return;
        }
        if (c->listener || b->o.workload == W_DELIVER) {
            c->state = CS_SUBSCRIBE;
            send_subscribe(c);
            return;
        }
        became_ready(c);
        return;
    case CS_SUBSCRIBE:
        if (st != PL_OK) {
            setup_fail(b, "subscribe as %s: %.*s", b->names[c->user], (int)resp->error.len,
                       resp->error.ptr ? resp->error.ptr : "");
            return;
        }
        became_ready(c);
        return;
    default:
        return;
    }
}

static void on_frame(void *ud, const pl_response *resp)
{
    pb_conn *c = ud;
    pb_bench *b = c->b;

    if (resp->method == PL_M_PUSH) {
        on_push(c, resp);
        return;
    }
    if (resp->method == PL_M_NONE) {
        /* A connection-level error: the connection closes next. */
        if (b->phase >= P_WARMUP)
            b->err_by_status[resp->status < PL_ERR__COUNT ? resp->status : PL_ERR_INTERNAL]++;
        return;
    }
    if (c->state != CS_READY) {
        handle_setup_reply(c, resp);
        return;
    }
    uint32_t k = (uint32_t)(resp->request_id & 0xffffu);
    if (k == 0 || k > b->o.pipeline || c->slots[k - 1].rid != resp->request_id)
        return; /* not one of ours: an answer to a request given up on */
    pb_slot *s = &c->slots[k - 1];
    s->rid = 0;
    c->inflight--;
    complete(b, s->start_ns, now_ns(), (int)resp->status);
    issue_closed_loop(c);
}

static void on_closed(void *ud, int err, const char *why)
{
    pb_conn *c = ud;
    pb_bench *b = c->b;

    b->tp->client_free(c->cli);
    c->cli = NULL;
    if (b->phase <= P_CONNECT) {
        if (now_ns() > b->setup_deadline) {
            setup_fail(b, "connection to %s:%u: %s (%s)", b->host, (unsigned)b->port,
                       why ? why : "closed", pl_strerror(err));
            return;
        }
        /* The server may still be starting: try again shortly. */
        snprintf(b->last_close, sizeof b->last_close, "%s", why ? why : pl_strerror(err));
        retry_later(c);
        return;
    }
    if (b->phase == P_DONE)
        return;
    b->closed++;
    b->errors++;
    b->iv_errors++;
    for (uint32_t k = 0; k < b->o.pipeline; k++)
        if (c->slots[k].rid) {
            c->slots[k].rid = 0;
            c->inflight--;
            b->err_by_status[PL_ERR_IO]++;
        }
    c->state = CS_DEAD;
}

/* Retry timer: re-send the setup request in flight (same request number, so
 * the server executes it at most once), or reconnect. */
static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pb_conn *c = arg;
    if (!c->cli) {
        conn_start(c);
        return;
    }
    switch (c->state) {
    case CS_REGISTER: send_register(c); break;
    case CS_LOGIN: send_login(c); break;
    case CS_SUBSCRIBE: send_subscribe(c); break;
    default: break;
    }
}

static const pl_transport_client_cb conn_cb = { on_frame, on_closed };

/* Connect c and send its first request (register or login): the transport
 * queues it until the connection is up. */
static void conn_start(pb_conn *c)
{
    pb_bench *b = c->b;
    pl_transport_options opt = { .host = b->host, .port = b->port,
                                 .max_frame = b->cfg->max_frame,
                                 .options_json = b->cfg->transport.options_json };
    char err[256] = "";
    int rc = b->tp->client_connect(b->base, &opt, &conn_cb, c, &c->cli, err, sizeof err);
    if (rc != PL_OK) {
        c->cli = NULL;
        if (b->phase <= P_CONNECT && now_ns() < b->setup_deadline) {
            retry_later(c);
            return;
        }
        if (b->phase <= P_CONNECT) {
            setup_fail(b, "connect to %s:%u: %s", b->host, (unsigned)b->port, err);
            return;
        }
        b->errors++;
        b->err_by_status[rc < PL_ERR__COUNT ? rc : PL_ERR_INTERNAL]++;
        c->state = CS_DEAD;
        return;
    }
    if (c->state == CS_REGISTER) {
        send_register(c);
        return;
    }
    c->state = CS_LOGIN;
    c->setup_rno = ++c->request_no;
    send_login(c);
}

/* Bring up connections, at most --setup-concurrency at a time (a burst of
 * thousands of SYNs overflows the listen backlog and costs 1 s retransmits). */
static void up_next(pb_bench *b)
{
    while (b->phase == P_CONNECT && b->next_up < b->n_conns &&
           b->up_inflight < b->o.setup_conc) {
        pb_conn *c = &b->conns[b->next_up++];
        b->up_inflight++;
        conn_start(c);
    }
}

/* -------------------------------------------------------------- phases */

static void setup_fail(pb_bench *b, const char *fmt, ...)
{
    if (b->setup_error[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->setup_error, sizeof b->setup_error, fmt, ap);
        va_end(ap);
    }
    b->phase = P_DONE;
    event_base_loopbreak(b->base);
}

/* libevent reads CLOCK_MONOTONIC_COARSE unless asked otherwise: timers
 * then fire on the kernel's tick (4 ms here), and --rate would issue its
 * requests in bursts up to 4 ms late, all counted as server latency. */
static struct event_base *precise_base(void)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    struct event_base *base = NULL;
    if (event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER) == 0)
        base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

static void on_rate(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pb_bench *b = arg;
    if (!issuing(b))
        return;
    uint64_t t = now_ns();
    /* Operation k is due at rate_t0 + k / rate: k = 0 at once. */
    uint64_t due = (uint64_t)((double)(t - b->rate_t0) * b->o.rate / 1e9) + 1;
    uint32_t n = b->o.conns;
    while (b->rate_issued < due) {
        uint64_t start = b->rate_t0 + (uint64_t)((double)b->rate_issued * 1e9 / b->o.rate);
        uint32_t tried = 0;
        while (tried < n && issue(&b->conns[b->rr], start) != 0) {
            b->rr = (b->rr + 1) % n;
            tried++;
        }
        if (tried == n)
            break; /* every connection is full: the backlog waits for completions */
        b->rr = (b->rr + 1) % n;
        b->rate_issued++;
    }
    if (due - b->rate_issued > b->rate_backlog_max)
        b->rate_backlog_max = due - b->rate_issued;
}

static void progress(pb_bench *b)
{
    if (b->o.quiet)
        return;
    double p50 = (double)pb_hist_percentile(&b->iv_ack, 50) / 1e6;
    double p99 = (double)pb_hist_percentile(&b->iv_ack, 99) / 1e6;
    double mx = (double)b->iv_ack.max / 1e6;
    fprintf(stderr, "[%5.1fs] %-7s %8" PRIu64 " ops/s  p50 %7.3f ms  p99 %7.3f ms  max %8.3f ms",
            secs(now_ns() - b->t_start), phase_names[b->phase], b->iv_ops, p50, p99, mx);
    if (b->iv_push.count)
        fprintf(stderr, "  push p99 %7.3f ms", (double)pb_hist_percentile(&b->iv_push, 99) / 1e6);
    fprintf(stderr, "  errors %" PRIu64 "\n", b->iv_errors);
    pb_hist_reset(&b->iv_ack);
    pb_hist_reset(&b->iv_push);
    b->iv_ops = 0;
    b->iv_errors = 0;
}

static uint64_t inflight_total(const pb_bench *b)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < b->n_conns; i++)
        n += b->conns[i].inflight;
    return n;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pb_bench *b = arg;
    uint64_t t = now_ns();

    switch (b->phase) {
    case P_REGISTER:
    case P_CONNECT:
        if (!b->o.quiet)
            fprintf(stderr, "[%5.1fs] %-7s %u/%u users registered, %u/%u connections ready\n",
                    secs(t - b->t_start), phase_names[b->phase], b->reg_done, b->o.users,
                    b->ready, b->n_conns);
        if (t > b->setup_deadline)
            setup_fail(b, "setup did not finish within %.0f s (%u/%u users registered, "
                       "%u/%u connections ready%s%s)", b->o.setup_timeout, b->reg_done,
                       b->o.users, b->ready, b->n_conns,
                       b->last_close[0] ? "; last connection closed: " : "", b->last_close);
        return;
    case P_WARMUP:
        progress(b);
        if (t - b->t_phase >= (uint64_t)(b->o.warmup * 1e9))
            phase_set(b, P_MEASURE);
        return;
    case P_MEASURE:
        progress(b);
        if (t >= b->t_measure_end)
            phase_set(b, P_DRAIN);
        return;
    case P_DRAIN:
        if (inflight_total(b) == 0 || t - b->t_phase >= PB_DRAIN_S * NS)
            phase_set(b, P_DONE);
        return;
    default:
        return;
    }
}

static void phase_set(pb_bench *b, int phase)
{
    uint64_t t = now_ns();
    if (b->phase == P_DONE)
        return;
    b->phase = phase;
    b->t_phase = t;
    switch (phase) {
    case P_CONNECT:
        b->up_inflight = 0;
        up_next(b);
        return;
    case P_WARMUP:
        b->setup_seconds = secs(t - b->t_start);
        if (!b->o.quiet)
            fprintf(stderr, "[%5.1fs] setup done: %u users (%u new), %u connections "
                    "(%u listening)\n", secs(t - b->t_start), b->o.users, b->reg_created,
                    b->n_conns, b->o.listeners);
        /* The window starts after the warmup; set it now so a zero warmup
         * measures at once. */
        b->t_measure = t + (uint64_t)(b->o.warmup * 1e9);
        b->t_measure_end = b->t_measure + (uint64_t)(b->o.duration * 1e9);
        pb_hist_reset(&b->iv_ack);
        b->iv_ops = 0;
        if (b->o.rate > 0) {
            /* Wake once per operation's interval, within 50 us - 1 ms: a
             * request issued late by the bench's own pacing would count
             * as latency. */
            double us = 1e6 / b->o.rate;
            struct timeval tick = { 0, us < 50 ? 50 : us > 1000 ? 1000 : (suseconds_t)us };
            b->rate_t0 = t;
            on_rate(-1, 0, b);
            event_add(b->rate_ev, &tick);
        } else {
            for (uint32_t i = 0; i < b->o.conns; i++)
                issue_closed_loop(&b->conns[i]);
        }
        if (b->o.warmup <= 0)
            phase_set(b, P_MEASURE);
        return;
    case P_MEASURE:
        b->t_measure = t;
        b->t_measure_end = t + (uint64_t)(b->o.duration * 1e9);
        cpu_sample(b, b->cpu0);
        return;
    case P_DRAIN:
        /* Only an interrupt ends the window early. The 1 s tick that notices
         * its end runs up to a second after it; moving the end there made
         * the window up to a second longer than the replies it counts, and
         * about every other run reported 5/6 of its rate at -d 5. */
        if (t < b->t_measure_end)
            b->t_measure_end = t;
        cpu_sample(b, b->cpu1);
        b->t_cpu_end = t;
        return;
    case P_DONE:
        b->t_end = t;
        event_base_loopbreak(b->base);
        return;
    default:
        return;
    }
}

static void on_sigint(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pb_bench *b = arg;
    b->interrupted = 1;
    if (b->phase == P_MEASURE)
        phase_set(b, P_DRAIN);
    else
        phase_set(b, P_DONE);
}

/* ------------------------------------------------------------- report */

static void add_hist(cJSON *parent, const char *name, const pb_hist *h)
{
    cJSON *o = cJSON_AddObjectToObject(parent, name);
    static const struct { const char *k; double p; } ps[] = {
        { "p50", 50 }, { "p90", 90 }, { "p99", 99 }, { "p99.9", 99.9 } };
    cJSON_AddNumberToObject(o, "count", (double)h->count);
    cJSON_AddNumberToObject(o, "mean", pb_hist_mean(h) / 1e6);
    cJSON_AddNumberToObject(o, "min", (double)h->min / 1e6);
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        cJSON_AddNumberToObject(o, ps[i].k, (double)pb_hist_percentile(h, ps[i].p) / 1e6);
    cJSON_AddNumberToObject(o, "max", (double)h->max / 1e6);
}

/* The CPU time a process has used (user + system, all its threads), in
 * seconds; pid 0 is this process; -1 when unreadable. */
static double proc_cpu(int pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, pid ? "/proc/%d/stat" : "/proc/self/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    /* the command name (field 2) may hold spaces: count from its ')' */
    char *p = got ? strrchr(line, ')') : NULL;
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                     &st) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (double)(ut + st) / (double)hz : -1;
}

static void cpu_sample(pb_bench *b, double *out)
{
    out[0] = proc_cpu(0);
    for (int i = 0; i < b->o.n_pids; i++)
        out[i + 1] = proc_cpu(b->o.pids[i]);
}

/* One process's CPU over the window: cores busy on average and CPU
 * microseconds per operation. */
static void add_cpu(pb_bench *b, cJSON *arr, int i, double ops_per_s)
{
    double span = secs(b->t_cpu_end > b->t_measure ? b->t_cpu_end - b->t_measure : 0);
    if (b->cpu0[i] < 0 || b->cpu1[i] < b->cpu0[i] || span <= 0)
        return;
    double cores = (b->cpu1[i] - b->cpu0[i]) / span;
    cJSON *o = cJSON_CreateObject();
    if (i == 0)
        cJSON_AddStringToObject(o, "process", "parley-bench");
    else
        cJSON_AddNumberToObject(o, "pid", b->o.pids[i - 1]);
    cJSON_AddNumberToObject(o, "cores", cores);
    cJSON_AddNumberToObject(o, "us_per_op", ops_per_s > 0 ? cores * 1e6 / ops_per_s : 0);
    cJSON_AddItemToArray(arr, o);
}

/* VmRSS and VmHWM of a process, in KiB (0 when unreadable). */
static void proc_rss(int pid, long *rss, long *hwm)
{
    char path[64], line[256];
    *rss = *hwm = 0;
    snprintf(path, sizeof path, pid ? "/proc/%d/status" : "/proc/self/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            *rss = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            *hwm = strtol(line + 6, NULL, 10);
    }
    fclose(f);
}

/* The machine, so a figure is never quoted without it: nproc, CPU model
 * and the load average at the end of the run (other work on the machine
 * shows up there). */
static void add_host(cJSON *root)
{
    cJSON *h = cJSON_AddObjectToObject(root, "host");
    char line[256], model[160] = "";
    double load[3] = { 0, 0, 0 };
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(model, sizeof model, "%s", colon + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    if ((f = fopen("/proc/loadavg", "r")) != NULL) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = load[1] = load[2] = 0;
        fclose(f);
    }
    cJSON_AddNumberToObject(h, "nproc", (double)sysconf(_SC_NPROCESSORS_ONLN));
    cJSON_AddStringToObject(h, "cpu", model);
    cJSON *la = cJSON_AddArrayToObject(h, "loadavg");
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToArray(la, cJSON_CreateNumber(load[i]));
}

static char *report(pb_bench *b)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddStringToObject(root, "tool", "parley-bench");
    cJSON_AddStringToObject(root, "version", PARLEY_VERSION);

    cJSON *cf = cJSON_AddObjectToObject(root, "config");
    cJSON_AddStringToObject(cf, "config_file", b->o.config ? b->o.config : "");
    char addr[300];
    snprintf(addr, sizeof addr, "%s:%u", b->host, (unsigned)b->port);
    cJSON_AddStringToObject(cf, "server", addr);
    cJSON_AddNumberToObject(cf, "servers_in_config", (double)b->cfg->n_servers);
    cJSON_AddStringToObject(cf, "transport", b->transport_label);
    cJSON_AddStringToObject(cf, "workload", workload_names[b->o.workload]);
    cJSON_AddNumberToObject(cf, "connections", b->o.conns);
    cJSON_AddNumberToObject(cf, "listeners", b->o.listeners);
    cJSON_AddNumberToObject(cf, "users", b->o.users);
    cJSON_AddNumberToObject(cf, "body_bytes", b->o.body);
    cJSON_AddStringToObject(cf, "mode", b->o.rate > 0 ? "fixed-rate" : "closed-loop");
    cJSON_AddNumberToObject(cf, "rate", b->o.rate);
    cJSON_AddNumberToObject(cf, "pipeline", b->o.pipeline);
    cJSON_AddNumberToObject(cf, "duration_s", b->o.duration);
    cJSON_AddNumberToObject(cf, "warmup_s", b->o.warmup);
    if (b->o.workload == W_READ)
        cJSON_AddNumberToObject(cf, "read_n", b->o.read_n);
    if (b->o.workload == W_LIST)
        cJSON_AddStringToObject(cf, "pattern", b->o.pattern);

    cJSON *su = cJSON_AddObjectToObject(root, "setup");
    cJSON_AddNumberToObject(su, "seconds", b->setup_seconds);
    cJSON_AddNumberToObject(su, "users_created", b->reg_created);
    cJSON_AddNumberToObject(su, "users_existing", b->reg_existed);
    cJSON_AddNumberToObject(su, "connections_ready", b->ready);
    cJSON_AddNumberToObject(su, "retries", (double)b->setup_retries);

    double window = secs(b->t_measure_end > b->t_measure ? b->t_measure_end - b->t_measure : 0);
    cJSON *tp = cJSON_AddObjectToObject(root, "throughput");
    cJSON_AddNumberToObject(tp, "ops", (double)b->ops);
    cJSON_AddNumberToObject(tp, "seconds", window);
    cJSON_AddNumberToObject(tp, "ops_per_s", window > 0 ? (double)b->ops / window : 0);
    if (b->o.workload == W_DELIVER || b->pushes)
        cJSON_AddNumberToObject(tp, "pushes_per_s", window > 0 ? (double)b->pushes / window : 0);
    if (b->o.rate > 0)
        cJSON_AddNumberToObject(tp, "max_backlog", (double)b->rate_backlog_max);

    cJSON *lat = cJSON_AddObjectToObject(root, "latency_ms");
    add_hist(lat, b->o.workload == W_LOGIN_STORM ? "connect_login" : "request", &b->ack);
    if (b->o.workload == W_DELIVER || b->push.count)
        add_hist(lat, "send_to_push", &b->push);

    cJSON *er = cJSON_AddObjectToObject(root, "errors");
    cJSON_AddNumberToObject(er, "total", (double)b->errors);
    cJSON_AddNumberToObject(er, "connections_lost", (double)b->closed);
    cJSON_AddNumberToObject(er, "unfinished", (double)b->unfinished);
    cJSON *bs = cJSON_AddObjectToObject(er, "by_status");
    for (int i = 1; i < PL_ERR__COUNT; i++)
        if (b->err_by_status[i])
            cJSON_AddNumberToObject(bs, pl_strerror(i), (double)b->err_by_status[i]);
    cJSON_AddBoolToObject(root, "interrupted", b->interrupted);
    add_host(root);

    /* The CPU the window took: a steadier figure of work per operation
     * than a rate on a noisy machine. */
    cJSON *cpu = cJSON_AddArrayToObject(root, "cpu");
    for (int i = 0; b->t_cpu_end && i <= b->o.n_pids; i++)
        add_cpu(b, cpu, i, window > 0 ? (double)b->ops / window : 0);

    cJSON *mem = cJSON_AddArrayToObject(root, "rss_kib");
    long rss, hwm;
    proc_rss(0, &rss, &hwm);
    cJSON *me = cJSON_CreateObject();
    cJSON_AddStringToObject(me, "process", "parley-bench");
    cJSON_AddNumberToObject(me, "rss", (double)rss);
    cJSON_AddNumberToObject(me, "peak", (double)hwm);
    cJSON_AddItemToArray(mem, me);
    for (int i = 0; i < b->o.n_pids; i++) {
        cJSON *p = cJSON_CreateObject();
        proc_rss(b->o.pids[i], &rss, &hwm);
        cJSON_AddNumberToObject(p, "pid", b->o.pids[i]);
        cJSON_AddNumberToObject(p, "rss", (double)rss);
        cJSON_AddNumberToObject(p, "peak", (double)hwm);
        cJSON_AddItemToArray(mem, p);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

/* ---------------------------------------------------------- command line */

static void usage(FILE *out)
{
    fprintf(out,
        "usage: parley-bench [-c CONFIG] [options]\n"
        "       parley-bench --wire-sizes [-c CONFIG] [--body BYTES]\n"
        "\n"
        "  -c, --config FILE        the cluster's configuration (servers, transport)\n"
        "  -s, --server HOST:PORT   talk to this server (default: the config's first;\n"
        "                           a not-primary reply is followed)\n"
        "  -w, --workload W         send (default), deliver, login-storm, list, read\n"
        "  -n, --connections N      workload connections (default 64)\n"
        "  -u, --users M            users, registered if missing (default: N)\n"
        "  -L, --listeners L        extra idle connections, logged in and subscribed\n"
        "  -b, --body BYTES         send body size (default 100; >= 17 carries the send time)\n"
        "  -r, --rate OPS           fixed offered rate over all connections (default: closed loop)\n"
        "  -p, --pipeline K         requests in flight per connection (default 1; 32 with --rate)\n"
        "  -d, --duration S         measured seconds (default 10)\n"
        "      --warmup S           unmeasured seconds first (default 2)\n"
        "      --read-n N           read workload: messages per read (default 10)\n"
        "      --pattern GLOB       list workload: pattern (default \"\": all)\n"
        "      --prefix P           user names are P0, P1, ... (default \"bench\")\n"
        "      --setup-concurrency K  connections logging in at once (default 256)\n"
        "      --setup-timeout S    give up setting up after S seconds (default 120)\n"
        "      --pid PID            report this process's RSS and CPU too (repeatable, e.g. parleyd)\n"
        "  -q, --quiet              no progress lines\n"
        "      --wire-sizes         print bytes per request/response in every wire format\n"
        "  -h, --help\n"
        "\n"
        "The JSON result goes to stdout; progress to stderr. Users get the password\n"
        "\"" PB_PASSWORD "\"; give the server a cheap password_hash for setup\n"
        "(see docs/performance.md).\n");
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* Raise the open-file limit to the hard limit: each connection is a
 * descriptor and 10,000 listeners need more than the usual 1,024. */
static void raise_nofile(uint32_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)need + 64)
        fprintf(stderr, "parley-bench: warning: open-file limit %llu is below the %u "
                "connections asked for (raise the hard limit: ulimit -Hn)\n",
                (unsigned long long)rl.rlim_cur, need);
}

enum {
    OPT_WARMUP = 256, OPT_READ_N, OPT_PATTERN, OPT_PREFIX, OPT_SETUP_CONC, OPT_SETUP_TIMEOUT,
    OPT_PID, OPT_WIRE
};

static int parse_args(int argc, char **argv, pb_opts *o, int *wire)
{
    static const struct option longs[] = {
        { "config", required_argument, NULL, 'c' },
        { "server", required_argument, NULL, 's' },
        { "workload", required_argument, NULL, 'w' },
        { "connections", required_argument, NULL, 'n' },
        { "users", required_argument, NULL, 'u' },
        { "listeners", required_argument, NULL, 'L' },
        { "body", required_argument, NULL, 'b' },
        { "rate", required_argument, NULL, 'r' },
        { "pipeline", required_argument, NULL, 'p' },
        { "duration", required_argument, NULL, 'd' },
        { "warmup", required_argument, NULL, OPT_WARMUP },
        { "read-n", required_argument, NULL, OPT_READ_N },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "prefix", required_argument, NULL, OPT_PREFIX },
        { "setup-concurrency", required_argument, NULL, OPT_SETUP_CONC },
        { "setup-timeout", required_argument, NULL, OPT_SETUP_TIMEOUT },
        { "pid", required_argument, NULL, OPT_PID },
        { "quiet", no_argument, NULL, 'q' },
        { "wire-sizes", no_argument, NULL, OPT_WIRE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch, pipeline_set = 0;
    uint32_t v;

    memset(o, 0, sizeof *o);
    o->conns = 64;
    o->body = 100;
    o->pipeline = 1;
    o->duration = 10;
    o->warmup = 2;
    o->read_n = 10;
    o->pattern = "";
    o->prefix = "bench";
    o->setup_conc = 256;
    o->setup_timeout = 120;
    while ((ch = getopt_long(argc, argv, "c:s:w:n:u:L:b:r:p:d:qh", longs, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case 'c': o->config = optarg; break;
        case 's': o->server = optarg; break;
        case 'w':
            o->workload = -1;
            for (int i = 0; i < (int)(sizeof workload_names / sizeof workload_names[0]); i++)
                if (strcmp(optarg, workload_names[i]) == 0)
                    o->workload = i;
            if (o->workload < 0)
                bad = "--workload: must be send, deliver, login-storm, list or read";
            break;
        case 'n':
            if (parse_u32(optarg, 1, 1000000, &o->conns))
                bad = "--connections: must be 1-1000000";
            break;
        case 'u':
            if (parse_u32(optarg, 1, 10000000, &o->users))
                bad = "--users: must be 1-10000000";
            break;
        case 'L':
            if (parse_u32(optarg, 0, 1000000, &o->listeners))
                bad = "--listeners: must be 0-1000000";
            break;
        case 'b':
            if (parse_u32(optarg, 1, PL_BODY_MAX, &o->body))
                bad = "--body: must be 1-65536 bytes";
            break;
        case 'r':
            if (parse_double(optarg, 0, 1e8, &o->rate))
                bad = "--rate: must be 0-100000000 operations per second";
            break;
        case 'p':
            if (parse_u32(optarg, 1, 65535, &o->pipeline))
                bad = "--pipeline: must be 1-65535";
            pipeline_set = 1;
            break;
        case 'd':
            if (parse_double(optarg, 0.1, 86400, &o->duration))
                bad = "--duration: must be 0.1-86400 seconds";
            break;
        case OPT_WARMUP:
            if (parse_double(optarg, 0, 86400, &o->warmup))
                bad = "--warmup: must be 0-86400 seconds";
            break;
        case OPT_READ_N:
            if (parse_u32(optarg, 0, PL_PAGE_MAX, &o->read_n))
                bad = "--read-n: must be 0-1000";
            break;
        case OPT_PATTERN: o->pattern = optarg; break;
        case OPT_PREFIX:
            o->prefix = optarg;
            if (strlen(optarg) < 1 || strlen(optarg) > PB_PREFIX_MAX)
                bad = "--prefix: must be 1-20 characters (names get up to 8 digits more)";
            break;
        case OPT_SETUP_CONC:
            if (parse_u32(optarg, 1, 100000, &o->setup_conc))
                bad = "--setup-concurrency: must be 1-100000";
            break;
        case OPT_SETUP_TIMEOUT:
            if (parse_double(optarg, 1, 86400, &o->setup_timeout))
                bad = "--setup-timeout: must be 1-86400 seconds";
            break;
        case OPT_PID:
            if (o->n_pids == PB_MAX_PIDS || parse_u32(optarg, 1, 1u << 30, &v))
                bad = "--pid: a process id, at most 8 of them";
            else
                o->pids[o->n_pids++] = (int)v;
            break;
        case 'q': o->quiet = 1; break;
        case OPT_WIRE: *wire = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (bad) {
            fprintf(stderr, "parley-bench: %s\n", bad);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parley-bench: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (o->users == 0)
        o->users = o->conns;
    if (o->workload == W_LOGIN_STORM)
        o->pipeline = 1; /* one login per connection cycle */
    else if (o->rate > 0 && !pipeline_set)
        o->pipeline = 32;
    return 0;
}

/* "tcp/binary": the transport and its codec, for the report. */
static void label_transport(pb_bench *b)
{
    const char *codec = NULL;
    cJSON *o = cJSON_Parse(b->cfg->transport.options_json ? b->cfg->transport.options_json : "");
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "codec") : NULL;
    if (cJSON_IsString(v))
        codec = v->valuestring;
    else if (strcmp(b->tp->name, "tcp") == 0)
        codec = "binary";
    snprintf(b->transport_label, sizeof b->transport_label, "%s%s%s", b->tp->name,
             codec ? "/" : "", codec ? codec : "");
    cJSON_Delete(o);
}

static int set_target(pb_bench *b, const char *server)
{
    if (server) {
        const char *colon = strrchr(server, ':');
        uint32_t port;
        if (!colon || parse_u32(colon + 1, 1, 65535, &port) != 0)
            return -1;
        const char *h = server;
        size_t hl = (size_t)(colon - server);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        if (hl == 0 || hl >= sizeof b->host)
            return -1;
        memcpy(b->host, h, hl);
        b->host[hl] = '\0';
        b->port = (uint16_t)port;
        return 0;
    }
    snprintf(b->host, sizeof b->host, "%s", b->cfg->servers[0].host);
    b->port = b->cfg->servers[0].port;
    return 0;
}

static void bench_free(pb_bench *b)
{
    for (uint32_t i = 0; i < b->n_conns; i++) {
        pb_conn *c = &b->conns[i];
        if (c->cli)
            b->tp->client_free(c->cli);
        if (c->retry_ev)
            event_free(c->retry_ev);
        free(c->slots);
    }
    for (uint32_t i = 0; i < b->n_reg; i++) {
        if (b->reg[i].cli)
            b->tp->client_free(b->reg[i].cli);
        if (b->reg[i].retry_ev)
            event_free(b->reg[i].retry_ev);
        free(b->reg[i].slots);
    }
    free(b->conns);
    free(b->reg);
    if (b->names)
        for (uint32_t i = 0; i < b->o.users; i++)
            free(b->names[i]);
    free(b->names);
    free(b->body);
    if (b->tick_ev)
        event_free(b->tick_ev);
    if (b->rate_ev)
        event_free(b->rate_ev);
    if (b->sigint_ev)
        event_free(b->sigint_ev);
    if (b->base)
        event_base_free(b->base);
    pl_plugin_unload(b->plugin);
    pl_config_free(b->cfg);
}

static int conn_init(pb_bench *b, pb_conn *c, uint32_t idx, uint32_t user, int listener)
{
    c->b = b;
    c->idx = idx;
    c->user = user;
    c->listener = listener;
    randombytes_buf(&c->client_id, sizeof c->client_id);
    c->client_id |= 1; /* never 0, which means "no client table entry" */
    c->client_id &= ~(1ull << 63); /* never the importer's reserved range (top 16 bits set) */
    c->retry_ev = evtimer_new(b->base, on_retry, c);
    c->slots = calloc(b->o.pipeline, sizeof *c->slots);
    return c->retry_ev && c->slots ? 0 : -1;
}

int main(int argc, char **argv)
{
    pb_bench *b = calloc(1, sizeof *b);
    int wire = 0, rc = PB_EXIT_SETUP;
    char err[512] = "";

    if (!b) {
        fprintf(stderr, "parley-bench: out of memory\n");
        return 1;
    }
    if (parse_args(argc, argv, &b->o, &wire) != 0) {
        free(b);
        return PB_EXIT_USAGE;
    }
    b->cfg = b->o.config ? pl_config_load(b->o.config, err, sizeof err) : pl_config_default();
    if (!b->cfg) {
        fprintf(stderr, "parley-bench: %s\n", err[0] ? err : "out of memory");
        goto out;
    }
    if (wire) {
        rc = pb_wire_sizes(b->cfg->plugin_dir, b->o.body, stdout);
        goto out;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "parley-bench: libsodium failed to initialise\n");
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(b->o.conns + b->o.listeners + PB_REGISTER_CONNS);
    b->plugin = pl_plugin_load("transport", b->cfg->transport.name, b->cfg->plugin_dir, err,
                               sizeof err);
    if (!b->plugin) {
        fprintf(stderr, "parley-bench: %s\n", err);
        goto out;
    }
    b->tp = pl_plugin_transport(b->plugin);
    label_transport(b);
    if (set_target(b, b->o.server) != 0) {
        fprintf(stderr, "parley-bench: --server: must be HOST:PORT\n");
        rc = PB_EXIT_USAGE;
        goto out;
    }
    b->base = precise_base();
    b->body = malloc(b->o.body);
    b->names = calloc(b->o.users, sizeof *b->names);
    b->n_conns = b->o.conns + b->o.listeners;
    b->conns = calloc(b->n_conns, sizeof *b->conns);
    b->n_reg = b->o.users < PB_REGISTER_CONNS ? b->o.users : PB_REGISTER_CONNS;
    b->reg = calloc(b->n_reg, sizeof *b->reg);
    b->tick_ev = b->base ? event_new(b->base, -1, EV_PERSIST, on_tick, b) : NULL;
    b->rate_ev = b->base ? event_new(b->base, -1, EV_PERSIST, on_rate, b) : NULL;
    b->sigint_ev = b->base ? evsignal_new(b->base, SIGINT, on_sigint, b) : NULL;
    if (!b->base || !b->body || !b->names || !b->conns || !b->reg || !b->tick_ev ||
        !b->rate_ev || !b->sigint_ev) {
        fprintf(stderr, "parley-bench: out of memory\n");
        goto out;
    }
    memset(b->body, 'x', b->o.body);
    for (uint32_t i = 0; i < b->o.users; i++) {
        char name[PL_USERNAME_MAX + 1];
        snprintf(name, sizeof name, "%s%u", b->o.prefix, i);
        if (!(b->names[i] = strdup(name))) {
            fprintf(stderr, "parley-bench: out of memory\n");
            goto out;
        }
    }
    for (uint32_t i = 0; i < b->n_conns; i++) {
        /* Listeners are spread over the users after the workload ones. */
        uint32_t user = i < b->o.conns ? i % b->o.users : (i - b->o.conns) % b->o.users;
        if (conn_init(b, &b->conns[i], i, user, i >= b->o.conns) != 0) {
            fprintf(stderr, "parley-bench: out of memory\n");
            goto out;
        }
    }
    for (uint32_t i = 0; i < b->n_reg; i++)
        if (conn_init(b, &b->reg[i], i, 0, 0) != 0) {
            fprintf(stderr, "parley-bench: out of memory\n");
            goto out;
        }

    b->t_start = now_ns();
    b->setup_deadline = b->t_start + (uint64_t)(b->o.setup_timeout * 1e9);
    static const struct timeval one_s = { 1, 0 };
    event_add(b->tick_ev, &one_s);
    event_add(b->sigint_ev, NULL);
    b->phase = P_REGISTER;
    for (uint32_t i = 0; i < b->n_reg; i++) {
        b->reg[i].state = CS_REGISTER;
        b->reg[i].reg_user = b->next_reg++;
        b->reg[i].setup_rno = ++b->reg[i].request_no;
        conn_start(&b->reg[i]);
    }
    event_base_dispatch(b->base);

    if (b->setup_error[0]) {
        fprintf(stderr, "parley-bench: setup failed: %s\n", b->setup_error);
        goto out;
    }
    b->unfinished = inflight_total(b);
    char *text = report(b);
    if (!text) {
        fprintf(stderr, "parley-bench: out of memory\n");
        goto out;
    }
    printf("%s\n", text);
    free(text);
    rc = 0;
out:
    bench_free(b);
    free(b);
    return rc;
}
