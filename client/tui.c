/*
 * client/tui.c — the terminal UI: events, keys and requests (see tui.h; the
 * drawing is in tui_draw.c, the message lists in tui_list.c).
 *
 * Event loop
 * ----------
 * Everything runs on libparley's event_base: stdin is a persistent read
 * event, SIGWINCH/SIGTERM/SIGHUP/SIGINT are libevent signal events, a 250 ms
 * tick drives the heartbeat and the status bar, and every request goes out
 * with parley_call_async(). No call ever blocks, so typing, scrolling and
 * resizing keep working while a request waits on a slow server; the status
 * bar shows "…" while any request the user asked for is in flight. State
 * changes only schedule a redraw (one event), so a burst of pushes costs one
 * frame.
 *
 * Live messages
 * -------------
 * After login the UI subscribes from id 0. The server answers, then pushes
 * the unread backlog, then new messages as they commit. The backlog is what
 * "read N" is for, so the first `unread` pushes (the count the login
 * returned) are only counted, not shown. Every later push is live: it goes
 * into the inbox's first page and into the open conversation with its
 * sender, and is acked once the renderer has put it on the screen — a
 * message that arrives while another screen is up stays unread until it is
 * seen. libparley re-subscribes after a reconnect from the last id it
 * delivered and drops replays, so nothing is shown twice and nothing that
 * arrived during the gap is missed; when libparley reports the subscription
 * over (no server within its timeout) the heartbeat subscribes again from
 * the same id once a server answers.
 *
 * Connection state
 * ----------------
 * A heartbeat (counts when logged in, else ping) every 2 s; the state shown
 * is "connected" while it answers, "reconnecting" when the connection
 * dropped or an answer is late, "offline" after three unreachable
 * heartbeats in a row. The connected server comes from
 * parley_server_address(), the primary from a status call every 10 s.
 */
#define NCURSES_WIDECHAR 1
#include <curses.h>

#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <sodium.h>

#include "tui.h"
#include "tui_int.h"
#include "tui_text.h"

/* Keys as wget_wch reports them: fn is a KEY_* code, or 0 for a character. */
#define KEY_CTRL(c) ((c) & 0x1f)
#define K_ESC 27

enum rq_kind {
    RQ_REGISTER, RQ_LOGIN, RQ_LOGOUT, RQ_HEARTBEAT, RQ_STATUS, RQ_HISTORY, RQ_CONVO,
    RQ_SEND, RQ_READ, RQ_ACK, RQ_DELETE, RQ_DELACCT, RQ_SEARCH, RQ_COMPLETE, RQ_COUNTS
};

/* One request in flight. Owned by the request until its callback. */
typedef struct tui_rq {
    tui *t;
    int kind;
    int busy;                 /* counted in t->busy: the user is waiting for it */
    uint64_t session;         /* t->session when sent: stale answers are dropped */
    uint64_t seq;             /* latest-wins sequence (pages, search, completion) */
    uint64_t arg;             /* offset asked for */
    char *text;               /* username, recipient, peer or prefix */
    char *secret;             /* password kept to log in after registering; wiped */
    char *body;               /* send: the body, to show it without a round trip */
    uint64_t *ids;
    uint32_t n_ids;
} tui_rq;

static int closing;           /* parley_free is cancelling what is pending */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void notice(tui *t, int err, const char *fmt, ...) PL_PRINTF(3, 4);

static void notice(tui *t, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(t->notice, sizeof t->notice, fmt, ap);
    va_end(ap);
    t->notice_err = err;
}

static void redraw(tui *t)
{
    event_active(t->ev_redraw, 0, 0);
}

static void wipe_free(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}

static char *copy_str(pl_str s)
{
    char *d = malloc((size_t)s.len + 1);

    if (!d)
        return NULL;
    if (s.len)
        memcpy(d, s.ptr, s.len);
    d[s.len] = '\0';
    return d;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

static void rq_free(tui_rq *rq)
{
    if (!rq)
        return;
    free(rq->text);
    wipe_free(rq->secret);
    free(rq->body);
    free(rq->ids);
    free(rq);
}

static void rq_done(void *ud, int err, const pl_response *resp);

/* Send req asynchronously; takes rq (freed here on failure). */
static int rq_send(tui *t, tui_rq *rq, const pl_request *req)
{
    int rc;

    rq->t = t;
    rq->session = t->session;
    rc = parley_call_async(t->c, req, rq_done, rq);
    if (rc != PL_OK) {
        notice(t, 1, "%s: %s", pl_method_name(req->method), parley_last_error(t->c));
        rq_free(rq);
        return rc;
    }
    if (rq->busy)
        t->busy++;
    redraw(t);
    return PL_OK;
}

static tui_rq *rq_new(int kind, int busy)
{
    tui_rq *rq = calloc(1, sizeof *rq);

    if (rq) {
        rq->kind = kind;
        rq->busy = busy;
    }
    return rq;
}

/* The error text for a failed call, with a hint for an unreachable cluster. */
static void notice_fail(tui *t, const char *what, int err)
{
    if (parley_unreachable(err))
        notice(t, 1, "%s: no server reachable (%s); retrying in the background", what,
               parley_last_error(t->c));
    else
        notice(t, 1, "%s: %s", what, parley_last_error(t->c));
}

/* ------------------------------------------------------------------ */
/* Sessions                                                            */
/* ------------------------------------------------------------------ */

static void on_push(void *ud, const pl_message *m);
static void sub_done(void *ud, int err, const pl_response *resp);
static void load_inbox(tui *t, uint64_t offset);
static void load_convo(tui *t, uint64_t offset);
static void request_counts(tui *t);
static void request_status(tui *t);

static void free_strv(char ***v, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*v)[i]);
    free(*v);
    *v = NULL;
    *n = 0;
}

static void subscribe(tui *t, uint64_t after)
{
    t->sub_dead = 0;
    if (parley_subscribe_async(t->c, after, sub_done, t) != PL_OK) {
        t->sub_dead = 1;
        notice(t, 1, "subscribe: %s", parley_last_error(t->c));
    }
}

static void session_start(tui *t, const char *user, uint64_t unread)
{
    t->session++;
    t->logged_in = 1;
    snprintf(t->user, sizeof t->user, "%s", user);
    t->unread = unread;
    t->readc = 0;
    t->counts_known = 0;
    t->backlog_left = unread;
    t->sub_ok_once = 0;
    t->n_seen = 0;
    tui_list_clear(&t->live);
    tui_list_clear(&t->inbox);
    tui_list_clear(&t->convo);
    t->peer[0] = '\0';
    tui_edit_clear(&t->login_pass);
    parley_on_message(t->c, on_push, t);
    subscribe(t, 0);
    t->screen = SCR_MAIN;
    t->inbox_mode = INBOX_HISTORY;
    t->inbox_offset = 0;
    t->inbox_more = 0;
    load_inbox(t, 0);
    request_counts(t);
    request_status(t);
    notice(t, 0, "logged in as %s: %llu unread%s", user, (unsigned long long)unread,
           unread ? " (r reads them)" : "");
}

/* Back to the login form. The token is forgotten here whatever the server
 * said, so a revoked or unreachable session never leaves the UI stuck. */
static void session_end(tui *t)
{
    t->session++;
    t->logged_in = 0;
    parley_on_message(t->c, NULL, NULL);
    parley_set_token(t->c, NULL);
    tui_list_clear(&t->live);
    tui_list_clear(&t->inbox);
    tui_list_clear(&t->convo);
    tui_msg_free(t->pager);
    t->pager = NULL;
    t->peer[0] = '\0';
    free_strv(&t->users, &t->n_users);
    free_strv(&t->cands, &t->n_cands);
    tui_edit_clear(&t->to);
    tui_edit_clear(&t->body);
    tui_edit_clear(&t->pattern);
    tui_edit_clear(&t->delpass);
    tui_edit_clear(&t->login_pass);
    t->users_query[0] = '\0';
    t->prompt = PR_NONE;
    t->counts_known = 0;
    t->sub_dead = 0;
    t->screen = SCR_LOGIN;
    t->login_focus = t->login_user.len ? 1 : 0;
}

static void session_lost(tui *t)
{
    session_end(t);
    notice(t, 1, "the session ended on the server (logged out elsewhere?): log in again");
}

/* ------------------------------------------------------------------ */
/* Live messages                                                       */
/* ------------------------------------------------------------------ */

static int seen_has(const tui *t, uint64_t id)
{
    size_t lo = 0, hi = t->n_seen;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->seen[mid] == id)
            return 1;
        if (t->seen[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static int seen_add(tui *t, uint64_t id)
{
    size_t at = t->n_seen;

    if (t->n_seen == t->cap_seen) {
        size_t ncap = t->cap_seen ? t->cap_seen * 2 : 64;
        uint64_t *n = realloc(t->seen, ncap * sizeof *n);
        if (!n)
            return -1;
        t->seen = n;
        t->cap_seen = ncap;
    }
    while (at > 0 && t->seen[at - 1] > id)
        at--;
    memmove(t->seen + at + 1, t->seen + at, (t->n_seen - at) * sizeof *t->seen);
    t->seen[at] = id;
    t->n_seen++;
    return 0;
}

static int inbox_shows_live(const tui *t)
{
    return t->inbox_mode == INBOX_HISTORY && t->inbox_offset == 0;
}

static int in_convo(const tui *t, const tui_msg *m)
{
    return t->peer[0] && (strcmp(m->from, t->peer) == 0 || strcmp(m->to, t->peer) == 0);
}

/* Put a copy of m into the conversation, following the newest message when
 * the cursor was on it. */
static void convo_add(tui *t, const tui_msg *m)
{
    int follow = t->convo.n == 0 || t->convo.cur + 1 == t->convo.n;
    tui_msg *d = tui_msg_dup(m);

    if (!d || tui_list_insert_sorted(&t->convo, d, 0) != 0)
        return;
    if (follow && t->convo.n)
        t->convo.cur = t->convo.n - 1;
}

static void live_message(tui *t, const pl_message *pm)
{
    tui_msg *m, *d;

    if (pm->id == 0 || seen_has(t, pm->id) || seen_add(t, pm->id) != 0)
        return;
    m = tui_msg_new(pm);
    if (!m)
        return;
    m->fresh = 1;
    if (inbox_shows_live(t)) {
        d = tui_msg_dup(m);
        if (d)
            tui_list_insert_sorted(&t->inbox, d, 1);
    }
    if (in_convo(t, m))
        convo_add(t, m);
    if (!(m->state & PL_MSG_READ))
        t->unread++;
    notice(t, 0, "new message from %s (#%llu)", m->from, (unsigned long long)m->id);
    tui_list_insert_sorted(&t->live, m, 0);
    redraw(t);
}

static void on_push(void *ud, const pl_message *m)
{
    tui *t = ud;

    if (!t->logged_in)
        return;
    if (t->backlog_left > 0) {
        /* Unread before login: left for "read N". */
        t->backlog_left--;
        return;
    }
    live_message(t, m);
}

static void sub_done(void *ud, int err, const pl_response *resp)
{
    tui *t = ud;

    (void)resp;
    if (closing || !t->logged_in)
        return;
    if (err == PL_ERR_NOT_LOGGED_IN) {
        session_lost(t);
    } else if (err != PL_OK) {
        /* libparley gave the subscription up; the heartbeat renews it. */
        t->sub_dead = 1;
        t->trouble = 1;
        notice_fail(t, "live messages", err);
    } else if (t->sub_ok_once) {
        /* A re-subscribe after a reconnect: catch up on what may have
         * changed while the connection was down. */
        notice(t, 0, "reconnected to %s", parley_server_address(t->c));
        request_counts(t);
        request_status(t);
        if (inbox_shows_live(t))
            load_inbox(t, 0);
    }
    if (err == PL_OK)
        t->sub_ok_once = 1;
    redraw(t);
}

/* After a frame: ack the live messages that reached the screen. */
static void ack_drawn(tui *t)
{
    uint64_t *ids;
    uint32_t n = 0;
    tui_rq *rq;
    pl_request q;

    if (!t->logged_in || t->help || t->live.n == 0)
        return;
    ids = malloc(t->live.n * sizeof *ids);
    if (!ids)
        return;
    for (size_t i = 0; i < t->live.n && n < PL_IDS_MAX; i++) {
        tui_msg *m = t->live.v[i];
        size_t k;
        int shown = 0;

        if (m->acking)
            continue;
        if (t->screen == SCR_MAIN && (k = tui_list_find(&t->inbox, m->id)) != SIZE_MAX)
            shown = t->inbox.v[k]->drawn;
        if (!shown && t->screen == SCR_CONVO && (k = tui_list_find(&t->convo, m->id)) != SIZE_MAX)
            shown = t->convo.v[k]->drawn;
        if (!shown && t->screen == SCR_PAGER && t->pager && t->pager->id == m->id)
            shown = t->pager->drawn;
        if (shown) {
            m->acking = 1;
            ids[n++] = m->id;
        }
    }
    if (n == 0) {
        free(ids);
        return;
    }
    rq = rq_new(RQ_ACK, 0);
    if (!rq) {
        free(ids);
        return;
    }
    rq->ids = ids;
    rq->n_ids = n;
    memset(&q, 0, sizeof q);
    q.method = PL_M_ACK;
    q.ids = ids;
    q.n_ids = n;
    rq_send(t, rq, &q);
}

static void forget_live(tui *t, const uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t k = tui_list_find(&t->live, ids[i]);
        if (k != SIZE_MAX)
            tui_list_remove(&t->live, k);
    }
}

/* ------------------------------------------------------------------ */
/* Calls the screens make                                              */
/* ------------------------------------------------------------------ */

static void request_counts(tui *t)
{
    pl_request q = { .method = PL_M_COUNTS };
    tui_rq *rq = rq_new(RQ_COUNTS, 0);

    if (rq)
        rq_send(t, rq, &q);
}

static void request_status(tui *t)
{
    pl_request q = { .method = PL_M_STATUS };
    tui_rq *rq = rq_new(RQ_STATUS, 0);

    t->next_status_ms = now_ms() + TUI_STATUS_MS;
    if (rq)
        rq_send(t, rq, &q);
}

static void heartbeat(tui *t)
{
    pl_request q;
    tui_rq *rq = rq_new(RQ_HEARTBEAT, 0);

    if (!rq)
        return;
    memset(&q, 0, sizeof q);
    q.method = t->logged_in ? PL_M_COUNTS : PL_M_PING;
    t->hb_inflight = 1;
    t->hb_sent_ms = now_ms();
    if (rq_send(t, rq, &q) != PL_OK) {
        t->hb_inflight = 0;
        t->next_hb_ms = now_ms() + TUI_HEARTBEAT_MS;
    }
}

static void load_inbox(tui *t, uint64_t offset)
{
    pl_request q = { .method = PL_M_HISTORY };
    tui_rq *rq = rq_new(RQ_HISTORY, 1);

    if (!rq)
        return;
    q.offset = offset;
    q.limit = TUI_PAGE;
    rq->seq = ++t->inbox_seq;
    rq->arg = offset;
    rq_send(t, rq, &q);
}

static void load_convo(tui *t, uint64_t offset)
{
    pl_request q = { .method = PL_M_CONVERSATION };
    tui_rq *rq = rq_new(RQ_CONVO, 1);

    if (!rq)
        return;
    rq->text = strdup(t->peer);
    if (!rq->text) {
        rq_free(rq);
        return;
    }
    q.peer = pl_str_c(t->peer);
    q.offset = offset;
    q.limit = TUI_PAGE;
    rq->seq = ++t->convo_seq;
    rq->arg = offset;
    rq_send(t, rq, &q);
}

static void open_convo(tui *t, const char *peer)
{
    if (strcmp(t->peer, peer) != 0) {
        snprintf(t->peer, sizeof t->peer, "%s", peer);
        tui_list_clear(&t->convo);
        t->convo_more = 0;
    }
    t->screen = SCR_CONVO;
    load_convo(t, 0);
}

static void open_compose(tui *t, const char *to, int ret)
{
    tui_edit_set(&t->to, to ? to : "");
    free_strv(&t->cands, &t->n_cands);
    t->compose_focus = t->to.len ? 1 : 0;
    t->compose_return = ret;
    t->screen = SCR_COMPOSE;
}

static void search_users(tui *t, uint64_t offset)
{
    pl_request q = { .method = PL_M_LIST_USERS };
    tui_rq *rq;
    char *p = tui_edit_text(&t->pattern);
    char pat[PL_PATTERN_MAX + 2];

    if (!p)
        return;
    /* Plain text finds names that start with it; a glob is taken as is. */
    if (p[0] && !strpbrk(p, "*?") && strlen(p) < PL_PATTERN_MAX)
        snprintf(pat, sizeof pat, "%s*", p);
    else
        snprintf(pat, sizeof pat, "%s", p[0] ? p : "*");
    free(p);
    rq = rq_new(RQ_SEARCH, 1);
    if (!rq)
        return;
    rq->text = strdup(pat);
    if (!rq->text) {
        rq_free(rq);
        return;
    }
    q.pattern = pl_str_c(pat);
    q.offset = offset;
    q.limit = TUI_USERS_PAGE;
    rq->seq = ++t->users_seq;
    rq->arg = offset;
    rq_send(t, rq, &q);
}

static void complete_recipient(tui *t)
{
    pl_request q = { .method = PL_M_LIST_USERS };
    tui_rq *rq;
    char *prefix = tui_edit_text(&t->to);
    char pat[PL_PATTERN_MAX + 2];

    if (!prefix)
        return;
    /* Tab again with candidates showing: cycle through them. */
    if (t->n_cands > 1) {
        int ours = 0;
        for (size_t i = 0; i < t->n_cands; i++)
            ours |= strcmp(t->cands[i], prefix) == 0 || strncmp(t->cands[i], prefix, strlen(prefix)) == 0;
        if (ours) {
            t->cand_idx = t->cand_idx + 1 < t->n_cands ? t->cand_idx + 1 : 0;
            tui_edit_set(&t->to, t->cands[t->cand_idx]);
            free(prefix);
            return;
        }
    }
    snprintf(pat, sizeof pat, "%s*", prefix);
    rq = rq_new(RQ_COMPLETE, 1);
    if (!rq) {
        free(prefix);
        return;
    }
    rq->text = prefix;
    q.pattern = pl_str_c(pat);
    q.limit = TUI_COMPLETE_MAX;
    rq->seq = ++t->complete_seq;
    rq_send(t, rq, &q);
}

static void send_message(tui *t)
{
    pl_request q = { .method = PL_M_SEND };
    tui_rq *rq;
    char *to, *body;

    if (t->sending)
        return;
    to = tui_edit_text(&t->to);
    body = tui_edit_text(&t->body);
    if (!to || !body || !to[0] || !body[0]) {
        notice(t, 1, "%s", !to || !to[0] ? "who to? type a recipient (Tab completes)"
                                         : "the message is empty");
        t->compose_focus = !to || !to[0] ? 0 : 1;
        free(to);
        free(body);
        return;
    }
    rq = rq_new(RQ_SEND, 1);
    if (!rq) {
        free(to);
        free(body);
        return;
    }
    rq->text = to;
    rq->body = body;
    q.to = pl_str_c(to);
    q.body = pl_str_c(body);
    if (rq_send(t, rq, &q) == PL_OK)
        t->sending = 1;
}

static void read_n(tui *t, uint64_t n)
{
    pl_request q = { .method = PL_M_READ };
    tui_rq *rq = rq_new(RQ_READ, 1);

    if (!rq)
        return;
    q.n = n;
    rq->arg = n;
    rq_send(t, rq, &q);
}

static tui_list *active_list(tui *t)
{
    return t->screen == SCR_CONVO ? &t->convo : &t->inbox;
}

static void delete_targets(tui *t)
{
    pl_request q = { .method = PL_M_DELETE };
    tui_rq *rq;
    uint64_t *ids;
    size_t n = tui_list_targets(active_list(t), &ids);

    if (n == 0) {
        free(ids);
        return;
    }
    if (n > PL_IDS_MAX) {
        notice(t, 1, "select at most %u messages to delete at once", PL_IDS_MAX);
        free(ids);
        return;
    }
    rq = rq_new(RQ_DELETE, 1);
    if (!rq) {
        free(ids);
        return;
    }
    rq->ids = ids;
    rq->n_ids = (uint32_t)n;
    q.ids = ids;
    q.n_ids = (uint32_t)n;
    rq_send(t, rq, &q);
}

static void login(tui *t, int register_first)
{
    pl_request q;
    tui_rq *rq;
    char *user = tui_edit_text(&t->login_user);
    char *pass = tui_edit_text(&t->login_pass);

    if (!user || !pass || !user[0] || !pass[0]) {
        notice(t, 1, "%s", !user || !user[0] ? "type a username" : "type the password");
        t->login_focus = !user || !user[0] ? 0 : 1;
        free(user);
        wipe_free(pass);
        return;
    }
    rq = rq_new(register_first ? RQ_REGISTER : RQ_LOGIN, 1);
    if (!rq) {
        free(user);
        wipe_free(pass);
        return;
    }
    rq->text = user;
    rq->secret = pass;
    memset(&q, 0, sizeof q);
    q.method = register_first ? PL_M_REGISTER : PL_M_LOGIN;
    q.username = pl_str_c(user);
    q.password = pl_str_c(pass);
    notice(t, 0, "%s %s…", register_first ? "registering" : "logging in as", user);
    rq_send(t, rq, &q);
}

static void logout(tui *t)
{
    pl_request q = { .method = PL_M_LOGOUT };
    tui_rq *rq = rq_new(RQ_LOGOUT, 1);

    if (rq)
        rq_send(t, rq, &q);
}

static void delete_account(tui *t)
{
    pl_request q = { .method = PL_M_DELETE_ACCOUNT };
    tui_rq *rq;
    char *pass = tui_edit_text(&t->delpass);

    if (!pass || !pass[0]) {
        notice(t, 1, "type your password to delete the account");
        wipe_free(pass);
        return;
    }
    rq = rq_new(RQ_DELACCT, 1);
    if (!rq) {
        wipe_free(pass);
        return;
    }
    rq->secret = pass;
    q.password = pl_str_c(pass);
    rq_send(t, rq, &q);
}

/* ------------------------------------------------------------------ */
/* Answers                                                             */
/* ------------------------------------------------------------------ */

static void done_login(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    char tok[PL_TOKEN_MAX + 1];

    if (err != PL_OK) {
        notice_fail(t, "log in", err);
        return;
    }
    if (resp->token.len == 0 || resp->token.len > PL_TOKEN_MAX) {
        notice(t, 1, "log in: the server sent no valid session token");
        return;
    }
    memcpy(tok, resp->token.ptr, resp->token.len);
    tok[resp->token.len] = '\0';
    parley_set_token(t->c, tok);
    sodium_memzero(tok, sizeof tok);
    session_start(t, rq->text, resp->unread);
}

static void done_register(tui *t, tui_rq *rq, int err)
{
    pl_request q;
    tui_rq *next;

    if (err != PL_OK) {
        notice_fail(t, "register", err);
        return;
    }
    /* Registered: log in with the same credentials. */
    next = rq_new(RQ_LOGIN, 1);
    if (!next)
        return;
    next->text = rq->text;
    next->secret = rq->secret;
    rq->text = rq->secret = NULL;
    memset(&q, 0, sizeof q);
    q.method = PL_M_LOGIN;
    q.username = pl_str_c(next->text);
    q.password = pl_str_c(next->secret);
    notice(t, 0, "registered %s; logging in…", next->text);
    rq_send(t, next, &q);
}

static void done_history(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    uint64_t cur_id = t->inbox.n ? t->inbox.v[t->inbox.cur]->id : 0;
    size_t k;

    if (rq->seq != t->inbox_seq)
        return;
    if (err != PL_OK) {
        notice_fail(t, "inbox", err);
        return;
    }
    if (rq->arg != t->inbox_offset || t->inbox_mode != INBOX_HISTORY)
        cur_id = 0;
    tui_list_clear(&t->inbox);
    t->inbox_mode = INBOX_HISTORY;
    t->inbox_offset = rq->arg;
    t->inbox_more = resp->more != 0;
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        tui_msg *m = tui_msg_new(&resp->msgs[i]);
        if (m)
            tui_list_insert_sorted(&t->inbox, m, 1);
    }
    /* Live messages not acked yet are still unread, so history leaves them
     * out: the first page shows them on top. */
    if (rq->arg == 0)
        for (size_t i = 0; i < t->live.n; i++) {
            tui_msg *d = tui_msg_dup(t->live.v[i]);
            if (d)
                tui_list_insert_sorted(&t->inbox, d, 1);
        }
    t->inbox.cur = 0;
    t->inbox.top = 0;
    if (cur_id && (k = tui_list_find(&t->inbox, cur_id)) != SIZE_MAX)
        t->inbox.cur = k;
}

static void done_convo(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    size_t before = t->convo.n;

    if (rq->seq != t->convo_seq || strcmp(rq->text, t->peer) != 0)
        return;
    if (err != PL_OK) {
        notice_fail(t, "conversation", err);
        return;
    }
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        tui_msg *m = tui_msg_new(&resp->msgs[i]);
        if (m)
            tui_list_insert_sorted(&t->convo, m, 0);
    }
    if (rq->arg == 0) {
        for (size_t i = 0; i < t->live.n; i++)
            if (in_convo(t, t->live.v[i]))
                convo_add(t, t->live.v[i]);
        t->convo_more = resp->more != 0;
        if (t->convo.n)
            t->convo.cur = t->convo.n - 1;
    } else {
        /* Older messages: leave the cursor on the newest of them, right
         * above what was on screen. */
        t->convo_more = resp->more != 0;
        size_t added = t->convo.n - before;
        t->convo.cur = added ? added - 1 : 0;
        t->convo.top = 0;
    }
}

static void done_send(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    pl_message pm;

    t->sending = 0;
    if (err != PL_OK) {
        notice_fail(t, "send", err);
        return;
    }
    notice(t, 0, "sent to %s (#%llu)", rq->text, (unsigned long long)resp->id);
    memset(&pm, 0, sizeof pm);
    pm.id = resp->id;
    pm.time_ms = resp->time_ms;
    pm.from = pl_str_c(t->user);
    pm.to = pl_str_c(rq->text);
    pm.body = pl_str_c(rq->body);
    pm.state = PL_MSG_READ;
    if (t->screen == SCR_COMPOSE) {
        tui_edit_clear(&t->body);
        if (strcmp(t->peer, rq->text) == 0) {
            tui_msg *m = tui_msg_new(&pm);
            if (m) {
                convo_add(t, m);
                tui_msg_free(m);
            }
            t->screen = SCR_CONVO;
        } else {
            open_convo(t, rq->text);
        }
    } else if (strcmp(t->peer, rq->text) == 0) {
        tui_msg *m = tui_msg_new(&pm);
        if (m) {
            convo_add(t, m);
            tui_msg_free(m);
        }
    }
}

static void done_read(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    (void)rq;
    if (err != PL_OK) {
        notice_fail(t, "read", err);
        return;
    }
    tui_list_clear(&t->inbox);
    t->inbox_mode = INBOX_READ;
    t->inbox_more = 0;
    for (uint32_t i = 0; i < resp->n_msgs; i++) {
        tui_msg *m = tui_msg_new(&resp->msgs[i]);
        if (!m)
            continue;
        m->fresh = 1;
        /* A live message not seen yet may be among them: it is read now. */
        forget_live(t, &m->id, 1);
        tui_list_push(&t->inbox, m);
    }
    t->screen = SCR_MAIN;
    notice(t, 0, "read %u message%s%s", (unsigned)resp->n_msgs, resp->n_msgs == 1 ? "" : "s",
           resp->more ? " (more remain: r again)" : "");
    request_counts(t);
}

static void done_delete(tui *t, tui_rq *rq, int err)
{
    if (err != PL_OK) {
        notice_fail(t, "delete", err);
        return;
    }
    for (uint32_t i = 0; i < rq->n_ids; i++) {
        size_t k;
        if ((k = tui_list_find(&t->inbox, rq->ids[i])) != SIZE_MAX)
            tui_list_remove(&t->inbox, k);
        if ((k = tui_list_find(&t->convo, rq->ids[i])) != SIZE_MAX)
            tui_list_remove(&t->convo, k);
    }
    forget_live(t, rq->ids, rq->n_ids);
    notice(t, 0, "deleted %u message%s", (unsigned)rq->n_ids, rq->n_ids == 1 ? "" : "s");
    if (t->inbox_mode == INBOX_HISTORY)
        load_inbox(t, t->inbox_offset);
    request_counts(t);
}

static void done_search(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    if (rq->seq != t->users_seq)
        return;
    if (err != PL_OK) {
        notice_fail(t, "users", err);
        return;
    }
    free_strv(&t->users, &t->n_users);
    t->users = calloc(resp->n_users ? resp->n_users : 1, sizeof *t->users);
    if (!t->users)
        return;
    for (uint32_t i = 0; i < resp->n_users; i++) {
        t->users[i] = copy_str(resp->users[i]);
        if (!t->users[i])
            break;
        t->n_users++;
    }
    t->users_cur = 0;
    t->users_offset = rq->arg;
    t->users_more = resp->more != 0;
    snprintf(t->users_query, sizeof t->users_query, "%s", rq->text);
}

static void done_complete(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    char *now = NULL;
    size_t common;

    if (rq->seq != t->complete_seq || t->screen != SCR_COMPOSE)
        return;
    if (err != PL_OK) {
        notice_fail(t, "complete", err);
        return;
    }
    now = tui_edit_text(&t->to);
    if (!now || strcmp(now, rq->text) != 0) {
        /* Typed on meanwhile: this answer is for an old prefix. */
        free(now);
        return;
    }
    free(now);
    free_strv(&t->cands, &t->n_cands);
    if (resp->n_users == 0) {
        notice(t, 1, "no user name starts with \"%s\"", rq->text);
        return;
    }
    if (resp->n_users == 1) {
        char *u = copy_str(resp->users[0]);
        if (u) {
            tui_edit_set(&t->to, u);
            free(u);
        }
        t->compose_focus = 1;
        return;
    }
    t->cands = calloc(resp->n_users, sizeof *t->cands);
    if (!t->cands)
        return;
    for (uint32_t i = 0; i < resp->n_users; i++) {
        t->cands[i] = copy_str(resp->users[i]);
        if (!t->cands[i])
            break;
        t->n_cands++;
    }
    /* Fill in what every candidate shares; Tab again cycles through them. */
    common = t->n_cands ? strlen(t->cands[0]) : 0;
    for (size_t i = 1; i < t->n_cands; i++) {
        size_t k = 0;
        while (k < common && t->cands[i][k] == t->cands[0][k])
            k++;
        common = k;
    }
    if (t->n_cands) {
        char buf[PL_USERNAME_MAX + 1];
        snprintf(buf, sizeof buf, "%.*s", (int)common, t->cands[0]);
        tui_edit_set(&t->to, buf);
    }
    t->cand_idx = t->n_cands - 1;
    notice(t, 0, "%zu users match%s; Tab cycles", t->n_cands, resp->more ? " (and more)" : "");
}

static void done_status(tui *t, int err, const pl_response *resp)
{
    if (err != PL_OK)
        return;
    t->primary[0] = '\0';
    for (uint32_t i = 0; i < resp->n_servers; i++) {
        const pl_server_status *s = &resp->servers[i];
        if (s->reachable && s->role.len == 7 && memcmp(s->role.ptr, "primary", 7) == 0)
            snprintf(t->primary, sizeof t->primary, "%.*s", (int)s->address.len,
                     s->address.ptr ? s->address.ptr : "");
    }
    if (!t->primary[0])
        snprintf(t->primary, sizeof t->primary, "none");
}

static void done_heartbeat(tui *t, tui_rq *rq, int err, const pl_response *resp)
{
    t->hb_inflight = 0;
    t->next_hb_ms = now_ms() + TUI_HEARTBEAT_MS;
    if (err == PL_OK) {
        int recovered = t->trouble || t->hb_fail > 0;
        t->hb_fail = 0;
        t->ever_ok = 1;
        t->trouble = 0;
        if (resp && rq->session == t->session && t->logged_in && resp->method == PL_M_COUNTS) {
            t->unread = resp->unread;
            t->readc = resp->read;
            t->counts_known = 1;
        }
        if (recovered && t->logged_in) {
            request_status(t);
            if (t->sub_dead) {
                /* libparley gave the subscription up while no server
                 * answered: resume from the last message it delivered. */
                subscribe(t, parley_last_delivered(t->c));
                notice(t, 0, "reconnected to %s; live messages resumed",
                       parley_server_address(t->c));
            }
        }
    } else if (parley_unreachable(err)) {
        t->hb_fail++;
        t->trouble = 1;
    } else if (err == PL_ERR_NOT_LOGGED_IN && t->logged_in && rq->session == t->session) {
        session_lost(t);
    }
}

static void rq_done(void *ud, int err, const pl_response *resp)
{
    tui_rq *rq = ud;
    tui *t = rq->t;

    if (rq->busy && t->busy > 0)
        t->busy--;
    if (closing)
        goto out;
    if (err != PL_OK && parley_unreachable(err)) {
        t->trouble = 1;
        t->next_hb_ms = now_ms();
    }
    if (rq->kind == RQ_HEARTBEAT) {
        done_heartbeat(t, rq, err, resp);
        goto out;
    }
    if (rq->kind == RQ_STATUS) {
        done_status(t, err, resp);
        goto out;
    }
    if (rq->session != t->session)
        goto out;
    if (err == PL_ERR_NOT_LOGGED_IN && t->logged_in && rq->kind != RQ_LOGIN) {
        session_lost(t);
        goto out;
    }
    switch (rq->kind) {
    case RQ_REGISTER: done_register(t, rq, err); break;
    case RQ_LOGIN: done_login(t, rq, err, resp); break;
    case RQ_LOGOUT:
        session_end(t);
        if (err == PL_OK)
            notice(t, 0, "logged out");
        else
            notice(t, 1, "logged out here; the server could not be told: %s",
                   parley_last_error(t->c));
        break;
    case RQ_COUNTS:
        if (err == PL_OK) {
            t->unread = resp->unread;
            t->readc = resp->read;
            t->counts_known = 1;
        }
        break;
    case RQ_HISTORY: done_history(t, rq, err, resp); break;
    case RQ_CONVO: done_convo(t, rq, err, resp); break;
    case RQ_SEND: done_send(t, rq, err, resp); break;
    case RQ_READ: done_read(t, rq, err, resp); break;
    case RQ_ACK:
        if (err == PL_OK) {
            forget_live(t, rq->ids, rq->n_ids);
            for (uint32_t i = 0; i < rq->n_ids; i++) {
                size_t k;
                if ((k = tui_list_find(&t->inbox, rq->ids[i])) != SIZE_MAX)
                    t->inbox.v[k]->state |= PL_MSG_READ;
                if ((k = tui_list_find(&t->convo, rq->ids[i])) != SIZE_MAX)
                    t->convo.v[k]->state |= PL_MSG_READ;
            }
            request_counts(t);
        } else {
            /* Left unread; tried again after the next frame. */
            for (uint32_t i = 0; i < rq->n_ids; i++) {
                size_t k = tui_list_find(&t->live, rq->ids[i]);
                if (k != SIZE_MAX)
                    t->live.v[k]->acking = 0;
            }
        }
        break;
    case RQ_DELETE: done_delete(t, rq, err); break;
    case RQ_DELACCT:
        if (err == PL_OK) {
            char user[sizeof t->user];
            snprintf(user, sizeof user, "%s", t->user);
            tui_edit_clear(&t->login_user);
            session_end(t);
            t->login_focus = 0;
            notice(t, 0, "account %s deleted", user);
        } else {
            tui_edit_clear(&t->delpass);
            notice_fail(t, "delete account", err);
        }
        break;
    case RQ_SEARCH: done_search(t, rq, err, resp); break;
    case RQ_COMPLETE: done_complete(t, rq, err, resp); break;
    default: break;
    }
out:
    if (!closing)
        redraw(t);
    rq_free(rq);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

static int is_enter(int fn, wint_t ch)
{
    return fn == KEY_ENTER || (!fn && (ch == L'\r' || ch == L'\n'));
}

/* Editing keys common to every field. Returns 1 when the key was for the
 * field (also when the field refused the character). */
static int edit_key(tui_edit *e, int fn, wint_t ch)
{
    int k = TUI_EK_NONE;

    if (fn) {
        switch (fn) {
        case KEY_LEFT: k = TUI_EK_LEFT; break;
        case KEY_RIGHT: k = TUI_EK_RIGHT; break;
        case KEY_HOME: k = TUI_EK_HOME; break;
        case KEY_END: k = TUI_EK_END; break;
        case KEY_BACKSPACE: k = TUI_EK_BACKSPACE; break;
        case KEY_DC: k = TUI_EK_DELETE; break;
        default: return 0;
        }
        tui_edit_key(e, k);
        return 1;
    }
    switch (ch) {
    case 127: case KEY_CTRL('H'): k = TUI_EK_BACKSPACE; break;
    case KEY_CTRL('A'): k = TUI_EK_HOME; break;
    case KEY_CTRL('E'): k = TUI_EK_END; break;
    case KEY_CTRL('B'): k = TUI_EK_LEFT; break;
    case KEY_CTRL('F'): k = TUI_EK_RIGHT; break;
    case KEY_CTRL('D'): k = TUI_EK_DELETE; break;
    case KEY_CTRL('U'): k = TUI_EK_KILL_START; break;
    case KEY_CTRL('K'): k = TUI_EK_KILL_END; break;
    case KEY_CTRL('W'): k = TUI_EK_KILL_WORD; break;
    default:
        if (ch >= 0x20 && ch != 127) {
            tui_edit_insert(e, (wchar_t)ch);
            return 1;
        }
        return 0;
    }
    tui_edit_key(e, k);
    return 1;
}

/* Cursor movement in a message list. Returns 1 when handled. */
static int list_key(tui_list *l, int fn, wint_t ch)
{
    if (fn == KEY_UP || (!fn && ch == L'k')) {
        if (l->cur > 0)
            l->cur--;
    } else if (fn == KEY_DOWN || (!fn && ch == L'j')) {
        if (l->cur + 1 < l->n)
            l->cur++;
    } else if (fn == KEY_HOME || (!fn && ch == L'g')) {
        l->cur = 0;
    } else if (fn == KEY_END || (!fn && ch == L'G')) {
        l->cur = l->n ? l->n - 1 : 0;
    } else if (!fn && ch == L' ') {
        if (l->n) {
            l->v[l->cur]->selected = !l->v[l->cur]->selected;
            if (l->cur + 1 < l->n)
                l->cur++;
        }
    } else {
        return 0;
    }
    return 1;
}

static void open_pager(tui *t, tui_list *l, int ret)
{
    if (l->n == 0)
        return;
    tui_msg_free(t->pager);
    t->pager = tui_msg_dup(l->v[l->cur]);
    if (!t->pager)
        return;
    t->pager_top = 0;
    t->pager_return = ret;
    t->screen = SCR_PAGER;
}

static const char *msg_peer(const tui *t, const tui_msg *m)
{
    return strcmp(m->from, t->user) == 0 ? m->to : m->from;
}

static void key_main(tui *t, int fn, wint_t ch)
{
    tui_list *l = &t->inbox;

    if (list_key(l, fn, ch))
        return;
    if (fn == KEY_NPAGE || (!fn && ch == L'n')) {
        if (t->inbox_mode == INBOX_HISTORY && t->inbox_more)
            load_inbox(t, t->inbox_offset + TUI_PAGE);
        else
            notice(t, 0, "this is the last page");
        return;
    }
    if (fn == KEY_PPAGE || (!fn && ch == L'p')) {
        if (t->inbox_mode == INBOX_HISTORY && t->inbox_offset > 0)
            load_inbox(t, t->inbox_offset >= TUI_PAGE ? t->inbox_offset - TUI_PAGE : 0);
        else
            notice(t, 0, "this is the first page");
        return;
    }
    if (fn == KEY_DC || (!fn && ch == L'd')) {
        if (l->n)
            t->prompt = PR_CONFIRM_DELETE;
        return;
    }
    if (is_enter(fn, ch)) {
        if (l->n)
            open_convo(t, msg_peer(t, l->v[l->cur]));
        return;
    }
    if (fn)
        return;
    switch (ch) {
    case L'q': t->quit = 1; break;
    case L'?': t->help = 1; break;
    case L'r':
        t->prompt = PR_READ_N;
        tui_edit_clear(&t->prompt_edit);
        break;
    case L'c': open_compose(t, NULL, SCR_MAIN); break;
    case L'u': case L'/':
        t->screen = SCR_USERS;
        search_users(t, 0);
        break;
    case L'v': open_pager(t, l, SCR_MAIN); break;
    case L'i': case K_ESC:
        t->inbox_mode = INBOX_HISTORY;
        load_inbox(t, 0);
        break;
    case L'L': logout(t); break;
    case L'X':
        tui_edit_clear(&t->delpass);
        t->screen = SCR_DELACCT;
        break;
    default: break;
    }
}

static void key_convo(tui *t, int fn, wint_t ch)
{
    tui_list *l = &t->convo;

    if (fn == KEY_PPAGE) {
        if (l->cur > 0) {
            for (int i = 0; i < tui_list_rows() / 2 && l->cur > 0; i++)
                l->cur--;
        } else if (t->convo_more) {
            load_convo(t, t->convo.n);
        } else {
            notice(t, 0, "this is the beginning of the conversation");
        }
        return;
    }
    if (fn == KEY_NPAGE) {
        for (int i = 0; i < tui_list_rows() / 2 && l->cur + 1 < l->n; i++)
            l->cur++;
        return;
    }
    if (list_key(l, fn, ch))
        return;
    if (fn == KEY_DC || (!fn && ch == L'd')) {
        if (l->n)
            t->prompt = PR_CONFIRM_DELETE;
        return;
    }
    if (is_enter(fn, ch) || (!fn && ch == L'c')) {
        open_compose(t, t->peer, SCR_CONVO);
        return;
    }
    if (fn == KEY_LEFT || (!fn && (ch == K_ESC || ch == L'q'))) {
        t->screen = SCR_MAIN;
        if (t->inbox_mode == INBOX_HISTORY)
            load_inbox(t, t->inbox_offset);
        return;
    }
    if (fn)
        return;
    switch (ch) {
    case L'?': t->help = 1; break;
    case L'v': open_pager(t, l, SCR_CONVO); break;
    case L'u': case L'/':
        t->screen = SCR_USERS;
        search_users(t, 0);
        break;
    case L'r': load_convo(t, 0); break;
    default: break;
    }
}

static void key_compose(tui *t, int fn, wint_t ch)
{
    if (!fn && ch == K_ESC) {
        t->screen = t->compose_return;
        return;
    }
    if (fn == KEY_BTAB || fn == KEY_UP || fn == KEY_DOWN) {
        t->compose_focus = !t->compose_focus;
        return;
    }
    if (!fn && ch == L'\t') {
        if (t->compose_focus == 0)
            complete_recipient(t);
        else
            t->compose_focus = 0;
        return;
    }
    if (is_enter(fn, ch)) {
        if (t->compose_focus == 0) {
            if (t->to.len)
                t->compose_focus = 1;
        } else {
            send_message(t);
        }
        return;
    }
    if (t->compose_focus == 0) {
        if (edit_key(&t->to, fn, ch))
            free_strv(&t->cands, &t->n_cands);
    } else if (!edit_key(&t->body, fn, ch) && !fn && ch >= 0x20) {
        notice(t, 1, "a message is at most %u bytes", PL_BODY_MAX);
    }
}

static void schedule_search(tui *t)
{
    struct timeval tv = { 0, TUI_SEARCH_DEBOUNCE_MS * 1000 };

    evtimer_add(t->ev_search, &tv);
}

static void key_users(tui *t, int fn, wint_t ch)
{
    if (fn == KEY_UP) {
        if (t->users_cur > 0)
            t->users_cur--;
    } else if (fn == KEY_DOWN) {
        if (t->users_cur + 1 < t->n_users)
            t->users_cur++;
    } else if (fn == KEY_NPAGE) {
        if (t->users_more)
            search_users(t, t->users_offset + TUI_USERS_PAGE);
    } else if (fn == KEY_PPAGE) {
        if (t->users_offset > 0)
            search_users(t, t->users_offset >= TUI_USERS_PAGE ? t->users_offset - TUI_USERS_PAGE : 0);
    } else if (is_enter(fn, ch)) {
        if (t->n_users)
            open_convo(t, t->users[t->users_cur]);
    } else if (!fn && ch == K_ESC) {
        t->screen = SCR_MAIN;
    } else if (edit_key(&t->pattern, fn, ch)) {
        schedule_search(t);
    }
}

static void key_login(tui *t, int fn, wint_t ch)
{
    if (fn == KEY_UP || fn == KEY_DOWN || fn == KEY_BTAB || (!fn && ch == L'\t')) {
        t->login_focus = !t->login_focus;
        return;
    }
    if (!fn && ch == KEY_CTRL('R')) {
        login(t, 1);
        return;
    }
    if (is_enter(fn, ch)) {
        if (t->login_focus == 0 && t->login_pass.len == 0)
            t->login_focus = 1;
        else
            login(t, 0);
        return;
    }
    edit_key(t->login_focus == 0 ? &t->login_user : &t->login_pass, fn, ch);
}

static void key_delacct(tui *t, int fn, wint_t ch)
{
    if (!fn && ch == K_ESC) {
        tui_edit_clear(&t->delpass);
        t->screen = SCR_MAIN;
    } else if (is_enter(fn, ch)) {
        delete_account(t);
    } else {
        edit_key(&t->delpass, fn, ch);
    }
}

static void key_pager(tui *t, int fn, wint_t ch)
{
    size_t page = (size_t)(tui_list_rows() > 2 ? tui_list_rows() - 2 : 1);

    if (fn == KEY_UP || (!fn && ch == L'k')) {
        if (t->pager_top > 0)
            t->pager_top--;
    } else if (fn == KEY_DOWN || (!fn && ch == L'j')) {
        t->pager_top++;
    } else if (fn == KEY_PPAGE) {
        t->pager_top = t->pager_top > page ? t->pager_top - page : 0;
    } else if (fn == KEY_NPAGE || (!fn && ch == L' ')) {
        t->pager_top += page;
    } else if (fn == KEY_HOME || (!fn && ch == L'g')) {
        t->pager_top = 0;
    } else if (fn == KEY_END || (!fn && ch == L'G')) {
        t->pager_top = SIZE_MAX / 2; /* clamped by the renderer */
    } else if (fn == KEY_LEFT || (!fn && (ch == K_ESC || ch == L'q' || ch == L'v'))) {
        t->screen = t->pager_return;
    } else if (!fn && ch == L'?') {
        t->help = 1;
    }
}

static void key_prompt(tui *t, int fn, wint_t ch)
{
    if (t->prompt == PR_CONFIRM_DELETE) {
        t->prompt = PR_NONE;
        if (!fn && (ch == L'y' || ch == L'Y'))
            delete_targets(t);
        else
            notice(t, 0, "nothing deleted");
        return;
    }
    if (!fn && ch == K_ESC) {
        t->prompt = PR_NONE;
        return;
    }
    if (is_enter(fn, ch)) {
        char *s = tui_edit_text(&t->prompt_edit);
        uint64_t n = 0;
        t->prompt = PR_NONE;
        if (!s)
            return;
        for (const char *p = s; *p && n <= PL_PAGE_MAX; p++)
            n = n * 10 + (uint64_t)(*p - '0');
        free(s);
        if (n > PL_PAGE_MAX) {
            notice(t, 1, "read at most %u at a time", PL_PAGE_MAX);
            return;
        }
        read_n(t, n);
        return;
    }
    edit_key(&t->prompt_edit, fn, ch);
}

static void on_key(tui *t, int fn, wint_t ch)
{
    if (!fn && ch == KEY_CTRL('C')) {
        t->quit = 1;
        return;
    }
    if (!fn && ch == KEY_CTRL('L')) {
        clearok(curscr, TRUE);
        return;
    }
    if (fn == KEY_RESIZE)
        return;
    if (t->help) {
        t->help = 0;
        return;
    }
    if (fn == KEY_F(1)) {
        t->help = 1;
        return;
    }
    if (COLS < TUI_MIN_COLS || LINES < TUI_MIN_ROWS) {
        if (!fn && ch == L'q')
            t->quit = 1;
        return;
    }
    /* A prompt on the bottom row takes every key until it is answered. */
    if (t->prompt) {
        key_prompt(t, fn, ch);
        return;
    }
    switch (t->screen) {
    case SCR_LOGIN: key_login(t, fn, ch); break;
    case SCR_MAIN: key_main(t, fn, ch); break;
    case SCR_CONVO: key_convo(t, fn, ch); break;
    case SCR_COMPOSE: key_compose(t, fn, ch); break;
    case SCR_USERS: key_users(t, fn, ch); break;
    case SCR_DELACCT: key_delacct(t, fn, ch); break;
    case SCR_PAGER: key_pager(t, fn, ch); break;
    default: break;
    }
}

/* ------------------------------------------------------------------ */
/* Events                                                              */
/* ------------------------------------------------------------------ */

static void stop(tui *t)
{
    t->quit = 1;
    event_base_loopbreak(t->base);
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
    tui *t = arg;
    wint_t ch;
    int r, got = 0;

    (void)fd;
    (void)what;
    while ((r = wget_wch(stdscr, &ch)) != ERR) {
        got = 1;
        on_key(t, r == KEY_CODE_YES ? (int)ch : 0, r == KEY_CODE_YES ? 0 : ch);
        if (t->quit)
            break;
    }
    /* Readable but nothing to read, again and again: the terminal is gone
     * (EOF on stdin). Leave rather than spin. */
    if (!got && ++t->empty_reads > 64)
        t->quit = 1;
    else if (got)
        t->empty_reads = 0;
    if (t->quit) {
        stop(t);
        return;
    }
    redraw(t);
}

static void redraw_cb(evutil_socket_t fd, short what, void *arg)
{
    tui *t = arg;

    (void)fd;
    (void)what;
    if (t->quit)
        return;
    tui_draw(t);
    if (COLS >= TUI_MIN_COLS && LINES >= TUI_MIN_ROWS)
        ack_drawn(t);
}

static int conn_state(const tui *t, uint64_t now)
{
    if (t->hb_fail >= TUI_OFFLINE_AFTER)
        return CONN_OFFLINE;
    if (t->hb_fail > 0 || (t->ever_ok && !t->server[0]) ||
        (t->hb_inflight && now - t->hb_sent_ms > TUI_SLOW_MS))
        return t->ever_ok ? CONN_RECONNECTING : CONN_CONNECTING;
    return t->ever_ok ? CONN_CONNECTED : CONN_CONNECTING;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    tui *t = arg;
    uint64_t now = now_ms();
    const char *addr = parley_server_address(t->c);
    int state, changed = 0;

    (void)fd;
    (void)what;
    if (strcmp(addr, t->server) != 0) {
        if (!addr[0] && t->server[0]) {
            /* The connection dropped: ask at once whether a server is back. */
            t->trouble = 1;
            if (!t->hb_inflight)
                t->next_hb_ms = now;
        }
        snprintf(t->server, sizeof t->server, "%s", addr);
        changed = 1;
    }
    if (!t->hb_inflight && now >= t->next_hb_ms)
        heartbeat(t);
    if (now >= t->next_status_ms)
        request_status(t);
    state = conn_state(t, now);
    if (state != t->conn) {
        t->conn = state;
        changed = 1;
    }
    if (changed)
        redraw(t);
}

static void search_cb(evutil_socket_t fd, short what, void *arg)
{
    tui *t = arg;

    (void)fd;
    (void)what;
    if (t->screen == SCR_USERS)
        search_users(t, 0);
}

static void winch_cb(evutil_socket_t fd, short what, void *arg)
{
    tui *t = arg;
    struct winsize ws;

    (void)fd;
    (void)what;
    /* libevent owns SIGWINCH, so curses does not learn the size itself. */
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0)
        resizeterm(ws.ws_row, ws.ws_col);
    redraw(t);
}

static void quit_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    stop(arg);
}

/* ------------------------------------------------------------------ */
/* Setup                                                               */
/* ------------------------------------------------------------------ */

/* The UI draws UTF-8: take the user's locale, and when its character set is
 * not UTF-8 use C.UTF-8 for LC_CTYPE so wide characters still work. */
static void setup_locale(void)
{
    setlocale(LC_ALL, "");
    if (strcmp(nl_langinfo(CODESET), "UTF-8") != 0)
        setlocale(LC_CTYPE, "C.UTF-8");
}

static int add_signal(tui *t, struct event **ev, int sig, event_callback_fn cb)
{
    *ev = evsignal_new(t->base, sig, cb, t);
    return *ev && evsignal_add(*ev, NULL) == 0 ? 0 : -1;
}

int parley_tui_run(const parley_options *opts)
{
    tui t;
    char err[1024];
    SCREEN *scr = NULL;
    struct timeval tick = { 0, TUI_TICK_MS * 1000 };
    int rc = 1;

    memset(&t, 0, sizeof t);
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "parley: the terminal UI needs a terminal; for scripts give a COMMAND "
                        "(parley --help)\n");
        return 2;
    }
    setup_locale();
    signal(SIGPIPE, SIG_IGN);
    t.c = parley_new(opts, err, sizeof err);
    if (!t.c) {
        fprintf(stderr, "parley: %s\n", err);
        return 2;
    }
    t.base = parley_event_base(t.c);
    tui_edit_init(&t.login_user, PL_USERNAME_MAX, TUI_EF_USERNAME, 0);
    tui_edit_init(&t.login_pass, PL_PASSWORD_MAX, TUI_EF_TEXT, 1);
    tui_edit_init(&t.delpass, PL_PASSWORD_MAX, TUI_EF_TEXT, 1);
    tui_edit_init(&t.to, PL_USERNAME_MAX, TUI_EF_USERNAME, 0);
    tui_edit_init(&t.body, PL_BODY_MAX, TUI_EF_TEXT, 0);
    tui_edit_init(&t.pattern, PL_PATTERN_MAX - 1, TUI_EF_PATTERN, 0);
    tui_edit_init(&t.prompt_edit, 4, TUI_EF_DIGITS, 0);

    scr = newterm(NULL, stdout, stdin);
    if (!scr) {
        fprintf(stderr, "parley: cannot use this terminal (TERM=%s)\n",
                getenv("TERM") ? getenv("TERM") : "");
        goto out;
    }
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);

    t.ev_stdin = event_new(t.base, STDIN_FILENO, EV_READ | EV_PERSIST, stdin_cb, &t);
    t.ev_tick = event_new(t.base, -1, EV_PERSIST, tick_cb, &t);
    t.ev_redraw = event_new(t.base, -1, 0, redraw_cb, &t);
    t.ev_search = evtimer_new(t.base, search_cb, &t);
    if (!t.ev_stdin || !t.ev_tick || !t.ev_redraw || !t.ev_search ||
        event_add(t.ev_stdin, NULL) != 0 || event_add(t.ev_tick, &tick) != 0 ||
        add_signal(&t, &t.ev_winch, SIGWINCH, winch_cb) != 0 ||
        add_signal(&t, &t.ev_term, SIGTERM, quit_cb) != 0 ||
        add_signal(&t, &t.ev_int, SIGINT, quit_cb) != 0 ||
        add_signal(&t, &t.ev_hup, SIGHUP, quit_cb) != 0) {
        endwin();
        fprintf(stderr, "parley: cannot set up the event loop\n");
        goto out;
    }
    t.screen = SCR_LOGIN;
    t.conn = CONN_CONNECTING;
    heartbeat(&t);
    tui_draw(&t);
    event_base_dispatch(t.base);
    endwin();
    rc = 0;
out:
    /* Cancelled requests call back during parley_free: they only free. */
    closing = 1;
    parley_on_message(t.c, NULL, NULL);
    struct event *evs[] = { t.ev_stdin, t.ev_tick, t.ev_redraw, t.ev_search,
                            t.ev_winch, t.ev_term, t.ev_int, t.ev_hup };
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    parley_free(t.c);
    closing = 0;
    if (scr)
        delscreen(scr);
    tui_list_free(&t.live);
    tui_list_free(&t.inbox);
    tui_list_free(&t.convo);
    tui_msg_free(t.pager);
    free(t.seen);
    free_strv(&t.users, &t.n_users);
    free_strv(&t.cands, &t.n_cands);
    tui_edit_deinit(&t.login_user);
    tui_edit_deinit(&t.login_pass);
    tui_edit_deinit(&t.delpass);
    tui_edit_deinit(&t.to);
    tui_edit_deinit(&t.body);
    tui_edit_deinit(&t.pattern);
    tui_edit_deinit(&t.prompt_edit);
    return rc;
}
