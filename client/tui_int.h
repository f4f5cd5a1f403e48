/*
 * client/tui_int.h — state shared by the terminal UI's files: tui.c (events,
 * keys, requests), tui_draw.c (rendering) and tui_list.c (message lists).
 *
 * One struct tui holds everything; it lives on parley_tui_run's stack and
 * every event and request callback gets a pointer to it. Everything runs on
 * libparley's event_base, one thread, so no locking.
 */
#ifndef PARLEY_TUI_INT_H
#define PARLEY_TUI_INT_H

#include <stddef.h>
#include <stdint.h>
#include <wchar.h>

#include "parley.h"
#include "tui_edit.h"

/* Below this the UI shows a one-line notice instead of the screens. */
#define TUI_MIN_COLS 40
#define TUI_MIN_ROWS 10
/* Messages per page of the inbox (history) and per conversation fetch. */
#define TUI_PAGE 20u
/* Users per page of the user search; candidates asked for on completion. */
#define TUI_USERS_PAGE 20u
#define TUI_COMPLETE_MAX 50u
/* Heartbeat period, and how long an unanswered one may take before the
 * status bar says "reconnecting". */
#define TUI_HEARTBEAT_MS 2000u
#define TUI_SLOW_MS 1500u
/* Consecutive unreachable heartbeats after which we say "offline". */
#define TUI_OFFLINE_AFTER 3u
/* How often the primary is looked up again (status call). */
#define TUI_STATUS_MS 10000u
#define TUI_TICK_MS 250u
/* User search runs this long after the last keystroke. */
#define TUI_SEARCH_DEBOUNCE_MS 150u

enum tui_screen {
    SCR_LOGIN,
    SCR_MAIN,      /* the inbox: history pages, or the result of "read N" */
    SCR_CONVO,     /* conversation with one peer */
    SCR_COMPOSE,
    SCR_USERS,
    SCR_DELACCT,
    SCR_PAGER      /* one message, whole */
};

enum tui_conn {
    CONN_CONNECTING,   /* nothing answered yet */
    CONN_CONNECTED,
    CONN_RECONNECTING, /* lost or slow; libparley and the heartbeat retry */
    CONN_OFFLINE       /* several heartbeats found no server; still retrying */
};

enum tui_prompt {
    PR_NONE,
    PR_READ_N,         /* how many unread to read */
    PR_CONFIRM_DELETE  /* y/n for the selected messages */
};

enum tui_inbox_mode {
    INBOX_HISTORY,     /* read messages, newest first, TUI_PAGE per page */
    INBOX_READ         /* the messages the last "read N" returned */
};

typedef struct tui_msg {
    uint64_t id, time_ms;
    uint32_t state;
    char *from, *to;          /* NUL-terminated */
    wchar_t *body;            /* decoded once; body_len characters */
    size_t body_len;
    int selected;
    int fresh;                /* arrived live or just read: marked with a dot until reloaded */
    int drawn;                /* set by the renderer when it reached the screen */
    int acking;               /* live messages: an ack is in flight */
    int wrap_width;           /* cache of the body's wrapped height */
    size_t wrap_lines;
} tui_msg;

/* An owning list of messages with a cursor and a scroll position (index of
 * the first item drawn). */
typedef struct tui_list {
    tui_msg **v;
    size_t n, cap;
    size_t cur, top;
} tui_list;

typedef struct tui {
    parley_client *c;
    struct event_base *base;
    struct event *ev_stdin, *ev_tick, *ev_redraw, *ev_search;
    struct event *ev_winch, *ev_term, *ev_int, *ev_hup;
    int quit;
    int exit_code;
    unsigned empty_reads;     /* stdin readable with no key: the terminal went away */

    int screen;
    int help;                 /* the help overlay is up */
    int prompt;               /* enum tui_prompt */
    tui_edit prompt_edit;
    uint64_t session;         /* bumped at every login and logout */
    int logged_in;
    char user[PL_USERNAME_MAX + 1];

    /* status bar */
    int conn;                 /* enum tui_conn */
    int ever_ok;
    char server[300];         /* address of the live connection, "" when none */
    char primary[300];
    uint64_t unread, readc;
    int counts_known;
    int busy;                 /* user requests in flight: the "…" marker */
    int hb_inflight;
    uint64_t hb_sent_ms, next_hb_ms, next_status_ms;
    unsigned hb_fail;
    int trouble;              /* connection lost since the last resubscribe */
    char notice[512];
    int notice_err;

    /* subscription: see tui.c "Live messages" */
    uint64_t backlog_left;    /* pushes still to come that were unread at login */
    int sub_ok_once;          /* the first subscribe answered: later OKs are re-subscribes */
    int sub_dead;             /* libparley gave the subscription up: renew it */
    uint64_t *seen;           /* live ids shown this session, ascending */
    size_t n_seen, cap_seen;
    tui_list live;            /* pushed messages not yet acked */

    /* login form */
    tui_edit login_user, login_pass;
    int login_focus;          /* 0 username, 1 password */

    /* inbox */
    tui_list inbox;
    int inbox_mode;
    uint64_t inbox_offset;
    int inbox_more;
    uint64_t inbox_seq;
    uint64_t read_n;          /* INBOX_READ: what was asked */

    /* conversation */
    char peer[PL_USERNAME_MAX + 1];
    tui_list convo;           /* ascending id: newest at the bottom */
    uint64_t convo_loaded;    /* messages fetched so far (the next offset) */
    int convo_more;
    uint64_t convo_seq;

    /* compose */
    tui_edit to, body;
    int compose_focus;        /* 0 recipient, 1 message */
    int compose_return;       /* screen to go back to on Esc */
    char **cands;             /* completion candidates */
    size_t n_cands, cand_idx;
    uint64_t complete_seq;
    int sending;

    /* user search */
    tui_edit pattern;
    char **users;
    size_t n_users, users_cur;
    uint64_t users_offset;
    int users_more;
    uint64_t users_seq;
    char users_query[PL_PATTERN_MAX + 2];

    /* delete account */
    tui_edit delpass;

    /* pager */
    tui_msg *pager;
    size_t pager_top;
    int pager_return;
} tui;

/* ---- tui_list.c ---- */

/* A new message from m (deep copy). NULL when out of memory. */
tui_msg *tui_msg_new(const pl_message *m);
tui_msg *tui_msg_dup(const tui_msg *m);
void tui_msg_free(tui_msg *m);

void tui_list_clear(tui_list *l);
void tui_list_free(tui_list *l);
/* Append (takes m; frees it and returns -1 when out of memory). */
int tui_list_push(tui_list *l, tui_msg *m);
/* Insert keeping the list sorted by id, ascending or descending; takes m.
 * A message whose id is already there is freed and 0 returned. */
int tui_list_insert_sorted(tui_list *l, tui_msg *m, int descending);
/* Index of id, or SIZE_MAX. */
size_t tui_list_find(const tui_list *l, uint64_t id);
/* Remove and free the item at i; the cursor stays on a valid item. */
void tui_list_remove(tui_list *l, size_t i);
/* Ids of selected items, or of the cursor item when none is selected.
 * Returns the count; *ids is malloc'd (NULL when the list is empty). */
size_t tui_list_targets(const tui_list *l, uint64_t **ids);

/* ---- tui_draw.c ---- */

/* Draw the whole screen for the current state and refresh. Sets `drawn` on
 * every message that reached the screen. */
void tui_draw(tui *t);
/* Rows of the message area, for paging keys. */
int tui_list_rows(void);
/* Wrapped height of m's body at width (cached). */
size_t tui_msg_lines(tui_msg *m, int width);
/* Text width used for message bodies at the current terminal width. */
int tui_body_width(void);

#endif
