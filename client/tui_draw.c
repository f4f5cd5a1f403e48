/*
 * client/tui_draw.c — rendering of the terminal UI. Every frame is drawn
 * from the state in struct tui (erase, draw, refresh: curses sends only the
 * difference), so there is no screen state to keep in sync with the data.
 *
 * Layout of the logged-in screens:
 *   row 0           status bar: user, connection state, server, primary,
 *                   counts, and the busy marker "…" in the last columns
 *   row 1           title of the view
 *   rows 2..L-3     the view
 *   row L-2         the last notice (errors in bold)
 *   row L-1         key hints, or the prompt being answered
 *
 * All text goes through put_w(), which draws whole characters only, maps
 * control characters to U+FFFD (tui_display_char) and clips at a column
 * count, so neither a message nor a narrow terminal can break the layout.
 */
#define NCURSES_WIDECHAR 1
#include <curses.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tui_int.h"
#include "tui_text.h"

enum { PAIR_BAR = 1, PAIR_ERR, PAIR_FRESH, PAIR_DIM };

/* Where the terminal cursor goes after drawing (a focused field), -1: hidden. */
static int cursor_y = -1, cursor_x = -1;

static void attr_pair(int pair, int on)
{
    if (!has_colors())
        return;
    if (on)
        attron(COLOR_PAIR(pair));
    else
        attroff(COLOR_PAIR(pair));
}

/* Draw up to n characters of w at (y, x) within cols columns. Returns the
 * columns used. */
static int put_w(int y, int x, const wchar_t *w, size_t n, int cols)
{
    wchar_t buf[256];
    int used = 0;
    size_t i = 0;

    if (cols <= 0 || y < 0 || y >= LINES || x >= COLS)
        return 0;
    if (x + cols > COLS)
        cols = COLS - x;
    move(y, x);
    while (i < n && used < cols) {
        size_t k = 0;
        while (i < n && k < sizeof buf / sizeof buf[0] - 1) {
            wchar_t d = tui_display_char(w[i]);
            int cw = tui_char_cols(w[i]);
            if (used + cw > cols)
                break;
            /* A combining mark at the very start of a cell run has no base
             * to combine with: drop it rather than let curses guess. */
            if (cw == 0 && k == 0 && used == 0) {
                i++;
                continue;
            }
            buf[k++] = d;
            used += cw;
            i++;
        }
        if (k == 0)
            break;
        buf[k] = L'\0';
        addnwstr(buf, (int)k);
        if (i < n && used < cols && tui_char_cols(w[i]) + used > cols)
            break;
    }
    return used;
}

/* Draw a UTF-8 string. */
static int put_s(int y, int x, const char *s, int cols)
{
    size_t n;
    wchar_t *w = tui_utf8_decode(s, strlen(s), &n);
    int used;

    if (!w)
        return 0;
    used = put_w(y, x, w, n, cols);
    free(w);
    return used;
}

static int put_f(int y, int x, int cols, const char *fmt, ...) PL_PRINTF(4, 5);

static int put_f(int y, int x, int cols, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return put_s(y, x, buf, cols);
}

static void fill_row(int y, int x, int cols)
{
    if (y < 0 || y >= LINES)
        return;
    for (int i = 0; i < cols && x + i < COLS; i++)
        mvaddch(y, x + i, ' ');
}

int tui_list_rows(void)
{
    return LINES - 4 > 1 ? LINES - 4 : 1;
}

#define BODY_INDENT 4

int tui_body_width(void)
{
    int w = COLS - BODY_INDENT - 1;
    return w > 1 ? w : 1;
}

size_t tui_msg_lines(tui_msg *m, int width)
{
    if (m->wrap_width != width) {
        m->wrap_lines = tui_wrap(m->body, m->body_len, width, NULL, 0);
        m->wrap_width = width;
    }
    return m->wrap_lines;
}

static void format_time(uint64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000u), now = time(NULL);
    struct tm tm, tn;

    if (!localtime_r(&t, &tm) || !localtime_r(&now, &tn)) {
        snprintf(buf, len, "?");
        return;
    }
    if (tm.tm_year == tn.tm_year && tm.tm_yday == tn.tm_yday)
        strftime(buf, len, "%H:%M", &tm);
    else
        strftime(buf, len, "%Y-%m-%d %H:%M", &tm);
}

/* ---- status bar, title, footer ---- */

static const char *conn_name(int conn)
{
    switch (conn) {
    case CONN_CONNECTED: return "connected";
    case CONN_RECONNECTING: return "reconnecting";
    case CONN_OFFLINE: return "offline";
    default: return "connecting";
    }
}

static void draw_status(tui *t)
{
    char buf[1024];
    int n;

    attron(A_REVERSE);
    attr_pair(PAIR_BAR, 1);
    fill_row(0, 0, COLS);
    /* The connected server is usually the primary (libparley follows the
     * leader): say so in one field then. */
    if (t->server[0] && strcmp(t->server, t->primary) == 0)
        n = snprintf(buf, sizeof buf, " %s │ %s │ server %s (primary)",
                     t->logged_in ? t->user : "not logged in", conn_name(t->conn), t->server);
    else
        n = snprintf(buf, sizeof buf, " %s │ %s │ server %s │ primary %s",
                     t->logged_in ? t->user : "not logged in", conn_name(t->conn),
                     t->server[0] ? t->server : "-", t->primary[0] ? t->primary : "?");
    if (t->logged_in && t->counts_known && n > 0 && (size_t)n < sizeof buf)
        snprintf(buf + n, sizeof buf - (size_t)n, " │ unread %llu · read %llu",
                 (unsigned long long)t->unread, (unsigned long long)t->readc);
    /* The last two columns are the busy marker's. */
    put_s(0, 0, buf, COLS - 2);
    if (t->busy > 0)
        put_s(0, COLS - 2, "…", 1);
    attr_pair(PAIR_BAR, 0);
    attroff(A_REVERSE);
}

static void draw_title(const char *title)
{
    attron(A_BOLD);
    put_s(1, 0, title, COLS);
    attroff(A_BOLD);
}

static const char *hints(const tui *t)
{
    switch (t->screen) {
    case SCR_LOGIN:
        return "Enter log in · Ctrl-R register · Tab next field · F1 help · Ctrl-C quit";
    case SCR_MAIN:
        return t->inbox_mode == INBOX_READ
            ? "? help · Esc inbox · Enter conversation · Space select · d delete · c compose · q quit"
            : "? help · r read N · c compose · u users · Enter talk · Space select · d delete · "
              "PgDn/PgUp · q quit";
    case SCR_CONVO:
        return "? help · c write · Space select · d delete · PgUp older · v view · Esc back";
    case SCR_COMPOSE:
        return "Tab complete / next field · Enter send · Esc cancel · F1 help";
    case SCR_USERS:
        return "type a pattern · ↑↓ move · PgDn/PgUp page · Enter conversation · F1 help · Esc back";
    case SCR_DELACCT:
        return "Enter delete the account · Esc cancel";
    case SCR_PAGER:
        return "↑↓ PgUp PgDn Home End scroll · Esc back";
    default:
        return "";
    }
}

static void draw_field(int y, int x, int width, const tui_edit *e, int focus);

static void draw_footer(tui *t)
{
    if (t->notice[0]) {
        if (t->notice_err)
            attron(A_BOLD);
        attr_pair(t->notice_err ? PAIR_ERR : PAIR_FRESH, 1);
        put_s(LINES - 2, 0, t->notice, COLS);
        attr_pair(t->notice_err ? PAIR_ERR : PAIR_FRESH, 0);
        attroff(A_BOLD);
    }
    if (t->prompt == PR_READ_N) {
        int used;
        attron(A_BOLD);
        used = put_f(LINES - 1, 0, COLS, "Read how many of %llu unread (empty = all): ",
                     (unsigned long long)t->unread);
        attroff(A_BOLD);
        draw_field(LINES - 1, used, COLS - used - 1, &t->prompt_edit, 1);
        return;
    }
    if (t->prompt == PR_CONFIRM_DELETE) {
        uint64_t *ids = NULL;
        size_t n = tui_list_targets(t->screen == SCR_CONVO ? &t->convo : &t->inbox, &ids);
        free(ids);
        attron(A_BOLD);
        put_f(LINES - 1, 0, COLS, "Delete %zu message%s from your view? y/n", n, n == 1 ? "" : "s");
        attroff(A_BOLD);
        return;
    }
    attr_pair(PAIR_DIM, 1);
    put_s(LINES - 1, 0, hints(t), COLS);
    attr_pair(PAIR_DIM, 0);
}

/* ---- fields ---- */

/* One-line field: scrolled so the cursor is visible; '*' for hidden text. */
static void draw_field(int y, int x, int width, const tui_edit *e, int focus)
{
    size_t start = 0;
    int cols;

    if (width < 1 || y < 0 || y >= LINES)
        return;
    attron(A_UNDERLINE);
    fill_row(y, x, width);
    if (e->hidden) {
        size_t shown = e->len;
        size_t cur = e->cur;
        if (shown >= (size_t)width) {
            start = cur >= (size_t)width ? cur - (size_t)width + 1 : 0;
            shown = (size_t)width;
        }
        move(y, x);
        for (size_t i = 0; i < shown && start + i < e->len; i++)
            addch('*');
        attroff(A_UNDERLINE);
        if (focus) {
            cursor_y = y;
            cursor_x = x + (int)(cur - start);
        }
        return;
    }
    /* Scroll right until the text before the cursor fits. */
    while (start < e->cur && tui_cols(e->buf + start, e->cur - start) >= width)
        start++;
    cols = put_w(y, x, e->buf ? e->buf + start : L"", e->len - start, width);
    (void)cols;
    attroff(A_UNDERLINE);
    if (focus) {
        cursor_y = y;
        cursor_x = x + tui_cols(e->buf + start, e->cur - start);
    }
}

/* Multi-line field (the message body): wrapped, scrolled to the cursor. */
static void draw_area(int y, int x, int width, int height, const tui_edit *e, int focus)
{
    const wchar_t *w = e->buf ? e->buf : L"";
    size_t nl = tui_wrap(w, e->len, width, NULL, 0);
    tui_line *lines = malloc(nl * sizeof *lines);
    size_t cl = 0, first = 0;

    if (!lines || width < 1 || height < 1) {
        free(lines);
        return;
    }
    tui_wrap(w, e->len, width, lines, nl);
    for (size_t i = 0; i < nl; i++)
        if (e->cur >= lines[i].start && (e->cur < lines[i].next || i + 1 == nl))
            cl = i;
    if (cl >= (size_t)height)
        first = cl - (size_t)height + 1;
    attron(A_UNDERLINE);
    for (int r = 0; r < height; r++)
        fill_row(y + r, x, width);
    for (size_t i = first; i < nl && i < first + (size_t)height; i++)
        put_w(y + (int)(i - first), x, w + lines[i].start, lines[i].end - lines[i].start, width);
    attroff(A_UNDERLINE);
    if (focus) {
        size_t upto = e->cur < lines[cl].end ? e->cur : lines[cl].end;
        int cx = tui_cols(w + lines[cl].start, upto - lines[cl].start);
        cursor_y = y + (int)(cl - first);
        cursor_x = x + (cx < width ? cx : width - 1);
    }
    free(lines);
}

/* ---- message lists ---- */

static void draw_msg_header(tui *t, int y, const tui_msg *m, int is_cur)
{
    char when[32];
    int x = 0;

    format_time(m->time_ms, when, sizeof when);
    if (is_cur)
        attron(A_REVERSE);
    else if (m->selected)
        attron(A_BOLD);
    if (is_cur)
        fill_row(y, 0, COLS);
    x += put_s(y, x, is_cur ? ">" : " ", COLS - x);
    x += put_s(y, x, m->selected ? "[x] " : "[ ] ", COLS - x);
    if (m->fresh) {
        attr_pair(PAIR_FRESH, 1);
        x += put_s(y, x, "● ", COLS - x);
        attr_pair(PAIR_FRESH, 0);
    } else {
        x += put_s(y, x, "  ", COLS - x);
    }
    put_f(y, x, COLS - x, "%s → %s  %s  #%llu%s",
          strcmp(m->from, t->user) == 0 ? "me" : m->from,
          strcmp(m->to, t->user) == 0 ? "me" : m->to, when, (unsigned long long)m->id,
          (m->state & PL_MSG_READ) || strcmp(m->from, t->user) == 0 ? "" : "  unread");
    attroff(A_REVERSE);
    attroff(A_BOLD);
}

/* Rows item i takes: its header and its wrapped body. */
static size_t item_rows(tui_list *l, size_t i, int width)
{
    return 1 + tui_msg_lines(l->v[i], width);
}

/* Draw l in rows [y0, y0+rows). bottom: a chat view, newest at the bottom,
 * that fills upwards. */
static void draw_list(tui *t, tui_list *l, int y0, int rows, int bottom, const char *empty)
{
    int width = tui_body_width();
    size_t used = 0;
    int y;

    if (l->n == 0) {
        attr_pair(PAIR_DIM, 1);
        put_s(y0, 2, empty, COLS - 2);
        attr_pair(PAIR_DIM, 0);
        return;
    }
    if (l->cur >= l->n)
        l->cur = l->n - 1;
    if (l->top > l->cur)
        l->top = l->cur;
    /* Scroll down until the cursor item fits (or is at the top). */
    for (;;) {
        size_t h = 0;
        for (size_t i = l->top; i <= l->cur; i++)
            h += item_rows(l, i, width);
        if (h <= (size_t)rows || l->top == l->cur)
            break;
        l->top++;
    }
    if (bottom) {
        /* Pull older items in above while everything down to the newest fits. */
        size_t h = 0;
        for (size_t i = l->top; i < l->n; i++)
            h += item_rows(l, i, width);
        while (l->top > 0 && h + item_rows(l, l->top - 1, width) <= (size_t)rows) {
            l->top--;
            h += item_rows(l, l->top, width);
        }
        used = h < (size_t)rows ? (size_t)rows - h : 0;
    }
    y = y0 + (int)used;
    for (size_t i = l->top; i < l->n && y < y0 + rows; i++) {
        tui_msg *m = l->v[i];
        size_t nl = tui_msg_lines(m, width);
        tui_line *lines = malloc(nl * sizeof *lines);

        draw_msg_header(t, y, m, i == l->cur);
        m->drawn = 1;
        y++;
        if (!lines)
            continue;
        tui_wrap(m->body, m->body_len, width, lines, nl);
        for (size_t k = 0; k < nl && y < y0 + rows; k++, y++)
            put_w(y, BODY_INDENT, m->body + lines[k].start, lines[k].end - lines[k].start, width);
        free(lines);
    }
}

static void draw_main(tui *t)
{
    if (t->inbox_mode == INBOX_READ) {
        char title[160];
        snprintf(title, sizeof title, "Read %zu message%s (oldest first) · Esc or i: back to the inbox",
                 t->inbox.n, t->inbox.n == 1 ? "" : "s");
        draw_title(title);
        draw_list(t, &t->inbox, 2, tui_list_rows(), 0, "No unread messages were left to read.");
        return;
    }
    char title[200];
    uint64_t page = t->inbox_offset / TUI_PAGE + 1;
    snprintf(title, sizeof title, "Inbox · page %llu%s%s · newest first", (unsigned long long)page,
             t->inbox_more ? " · PgDn older" : "", t->inbox_offset ? " · PgUp newer" : "");
    draw_title(title);
    draw_list(t, &t->inbox, 2, tui_list_rows(), 0,
              t->inbox_offset ? "No messages on this page." :
              "No read messages yet. New messages appear here as they arrive; r reads unread ones.");
}

static void draw_convo(tui *t)
{
    char title[200];

    snprintf(title, sizeof title, "Conversation with %s · %zu message%s%s", t->peer, t->convo.n,
             t->convo.n == 1 ? "" : "s", t->convo_more ? " · PgUp at the top loads older" : "");
    draw_title(title);
    draw_list(t, &t->convo, 2, tui_list_rows(), 1, "No messages with this user yet: c writes one.");
}

static void draw_compose(tui *t)
{
    int lw = 10, y = 3;
    int fw = COLS - lw - 2;

    draw_title("New message");
    put_s(y, 1, "To:", lw);
    int tw = (int)PL_USERNAME_MAX + 2;
    draw_field(y, lw, fw < 1 ? 1 : fw > tw ? tw : fw, &t->to, t->compose_focus == 0);
    y++;
    if (t->n_cands > 0) {
        int x = lw;
        for (size_t i = 0; i < t->n_cands && x < COLS - 1; i++) {
            if (i == t->cand_idx)
                attron(A_REVERSE);
            x += put_s(y, x, t->cands[i], COLS - x);
            attroff(A_REVERSE);
            x += put_s(y, x, " ", COLS - x);
        }
    }
    y += 2;
    put_s(y - 1, 1, "Message:", lw);
    int h = LINES - 3 - y;
    if (h < 1)
        h = 1;
    draw_area(y, lw, fw < 1 ? 1 : fw, h, &t->body, t->compose_focus == 1);
    attr_pair(PAIR_DIM, 1);
    put_f(LINES - 3, lw, COLS - lw, "%zu / %u bytes%s", t->body.bytes, PL_BODY_MAX,
          t->sending ? " · sending…" : "");
    attr_pair(PAIR_DIM, 0);
}

static void draw_users(tui *t)
{
    int y = 2;

    draw_title("Find users");
    put_s(y, 1, "Pattern:", 10);
    int pw = (int)PL_PATTERN_MAX + 2;
    draw_field(y, 10, COLS - 12 < pw ? COLS - 12 : pw, &t->pattern, 1);
    y++;
    attr_pair(PAIR_DIM, 1);
    if (t->users_query[0] || t->n_users)
        put_f(y, 1, COLS - 1, "matching %s · %s%llu–%llu%s", t->users_query,
              t->n_users ? "users " : "no users ",
              (unsigned long long)(t->n_users ? t->users_offset + 1 : 0),
              (unsigned long long)(t->users_offset + t->n_users),
              t->users_more ? " · PgDn more" : "");
    else
        put_s(y, 1, "* matches any run, ? one character; without either, names starting with the text",
              COLS - 1);
    attr_pair(PAIR_DIM, 0);
    y++;
    for (size_t i = 0; i < t->n_users && y < LINES - 2; i++, y++) {
        if (i == t->users_cur)
            attron(A_REVERSE);
        put_f(y, 2, COLS - 2, "%s%s", t->users[i], strcmp(t->users[i], t->user) == 0 ? "  (you)" : "");
        attroff(A_REVERSE);
    }
}

static void draw_wrapped(int y, int x, int width, int maxrows, const char *s)
{
    size_t n, nl;
    wchar_t *w = tui_utf8_decode(s, strlen(s), &n);
    tui_line *lines;

    if (!w)
        return;
    nl = tui_wrap(w, n, width, NULL, 0);
    lines = malloc(nl * sizeof *lines);
    if (lines) {
        tui_wrap(w, n, width, lines, nl);
        for (size_t i = 0; i < nl && (int)i < maxrows; i++)
            put_w(y + (int)i, x, w + lines[i].start, lines[i].end - lines[i].start, width);
    }
    free(lines);
    free(w);
}

static void draw_delacct(tui *t)
{
    char text[512];

    draw_title("Delete account");
    snprintf(text, sizeof text,
             "This deletes the account %s, its mailbox and its sessions. Messages you already "
             "sent stay with their recipients. Type your password and press Enter; Esc cancels.",
             t->user);
    draw_wrapped(3, 2, COLS - 4, 4, text);
    put_s(8, 2, "Password:", 11);
    draw_field(8, 12, COLS - 14 < 40 ? COLS - 14 : 40, &t->delpass, 1);
}

static void draw_pager(tui *t)
{
    tui_msg *m = t->pager;
    char when[32];
    int width = COLS - 2, rows = tui_list_rows() - 1;
    size_t nl;
    tui_line *lines;

    if (!m)
        return;
    format_time(m->time_ms, when, sizeof when);
    draw_title("Message");
    put_f(2, 1, COLS - 1, "#%llu  %s → %s  %s", (unsigned long long)m->id, m->from, m->to, when);
    nl = tui_wrap(m->body, m->body_len, width, NULL, 0);
    if (t->pager_top + (size_t)rows > nl)
        t->pager_top = nl > (size_t)rows ? nl - (size_t)rows : 0;
    lines = malloc(nl * sizeof *lines);
    if (!lines)
        return;
    tui_wrap(m->body, m->body_len, width, lines, nl);
    for (size_t i = t->pager_top; i < nl && (int)(i - t->pager_top) < rows; i++)
        put_w(3 + (int)(i - t->pager_top), 1, m->body + lines[i].start,
              lines[i].end - lines[i].start, width);
    free(lines);
    m->drawn = 1;
}

static void draw_login(tui *t)
{
    int w = COLS - 4 < 60 ? COLS - 4 : 60;
    int x = (COLS - w) / 2, y = LINES / 2 - 4;

    if (y < 2)
        y = 2;
    attron(A_BOLD);
    put_s(y, x, "parley: log in, or register a new account", w);
    attroff(A_BOLD);
    put_s(y + 2, x, "Username:", 11);
    draw_field(y + 2, x + 11, w - 11 < 34 ? w - 11 : 34, &t->login_user, t->login_focus == 0);
    put_s(y + 3, x, "Password:", 11);
    draw_field(y + 3, x + 11, w - 11 < 34 ? w - 11 : 34, &t->login_pass, t->login_focus == 1);
    attr_pair(PAIR_DIM, 1);
    draw_wrapped(y + 5, x, w, 3,
                 "Enter logs in. Ctrl-R registers the username with this password (8 or more "
                 "bytes) and logs in.");
    attr_pair(PAIR_DIM, 0);
}

/* ---- help ---- */

static const char *const HELP[] = {
    "#Everywhere",
    "F1        this help (also ?)",
    "Ctrl-C    quit",
    "Ctrl-L    redraw",
    "#Log in",
    "Tab ↑ ↓   switch field",
    "Enter     log in",
    "Ctrl-R    register + log in",
    "#Inbox",
    "↑ ↓ k j   move",
    "Home End  first / last (g G)",
    "PgDn n    older page",
    "PgUp p    newer page",
    "Space     select / unselect",
    "d Del     delete selection",
    "r         read N unread",
    "i Esc     inbox page 1",
    "Enter     conversation",
    "v         whole message",
    "c         compose",
    "u /       find users",
    "L         log out",
    "X         delete account",
    "q         quit",
    "#Conversation",
    "↑↓ Space d v  as in the inbox",
    "PgUp      scroll / load older",
    "PgDn      scroll down",
    "c Enter   write to this user",
    "r         reload",
    "Esc q ←   back to the inbox",
    "#Compose",
    "Tab       complete recipient",
    "S-Tab ↑ ↓ switch field",
    "Enter     next field / send",
    "Esc       cancel",
    "#Find users",
    "text      glob: * any, ? one",
    "↑ ↓       move",
    "PgDn PgUp next / prev page",
    "Enter     conversation",
    "Esc       back",
    "#Message view",
    "↑↓ PgUp PgDn  scroll",
    "Home End  top / bottom",
    "Esc q v   back",
    "#Delete account",
    "Enter     delete (password)",
    "Esc       cancel",
    "#Read N prompt",
    "digits    how many (empty=all)",
    "Enter Esc read / cancel",
    "#Delete prompt",
    "y         delete; other: keep",
    "#Text fields",
    "← → Home End  move (^A ^E)",
    "Bksp Del  delete a character",
    "^U ^K     delete to start/end",
    "^W        delete a word",
};

#define N_HELP (sizeof HELP / sizeof HELP[0])
#define HELP_COL_W 32

static void draw_help(void)
{
    int bw = COLS - 2, bh = LINES - 2;
    int inner = bh - 3;
    int ncols = (bw - 2) / HELP_COL_W;
    int x0 = 1, y0 = 1;

    if (ncols < 1)
        ncols = 1;
    if (inner < 1)
        return;
    for (int r = 0; r < bh; r++) {
        attron(A_REVERSE);
        fill_row(y0 + r, x0, bw);
        attroff(A_REVERSE);
    }
    attron(A_REVERSE | A_BOLD);
    put_s(y0, x0 + 1, "Keys (any key closes this help)", bw - 2);
    attroff(A_BOLD);
    for (size_t i = 0; i < N_HELP; i++) {
        int col = (int)(i / (size_t)inner), row = (int)(i % (size_t)inner);
        int x = x0 + 1 + col * HELP_COL_W;
        const char *s = HELP[i];
        if (col >= ncols) {
            put_s(y0 + bh - 1, x0 + 1, "… more: make the terminal larger", bw - 2);
            break;
        }
        if (s[0] == '#') {
            attron(A_BOLD);
            put_s(y0 + 2 + row, x, s + 1, HELP_COL_W - 1);
            attroff(A_BOLD);
        } else {
            put_s(y0 + 2 + row, x + 1, s, HELP_COL_W - 2);
        }
    }
    attroff(A_REVERSE);
}

void tui_draw(tui *t)
{
    static int colors_ready;

    if (!colors_ready) {
        colors_ready = 1;
        if (has_colors() && start_color() == OK) {
            use_default_colors();
            init_pair(PAIR_BAR, COLOR_BLACK, COLOR_CYAN);
            init_pair(PAIR_ERR, COLOR_RED, -1);
            init_pair(PAIR_FRESH, COLOR_GREEN, -1);
            init_pair(PAIR_DIM, COLOR_BLUE, -1);
        }
    }
    cursor_y = cursor_x = -1;
    erase();
    if (COLS < TUI_MIN_COLS || LINES < TUI_MIN_ROWS) {
        char msg[96];
        snprintf(msg, sizeof msg, "terminal too small (%dx%d): parley needs %dx%d", COLS, LINES,
                 TUI_MIN_COLS, TUI_MIN_ROWS);
        put_s(0, 0, msg, COLS);
        curs_set(0);
        refresh();
        return;
    }
    draw_status(t);
    switch (t->screen) {
    case SCR_LOGIN: draw_login(t); break;
    case SCR_MAIN: draw_main(t); break;
    case SCR_CONVO: draw_convo(t); break;
    case SCR_COMPOSE: draw_compose(t); break;
    case SCR_USERS: draw_users(t); break;
    case SCR_DELACCT: draw_delacct(t); break;
    case SCR_PAGER: draw_pager(t); break;
    default: break;
    }
    draw_footer(t);
    if (t->help) {
        draw_help();
        cursor_y = -1;
    }
    if (cursor_y >= 0 && cursor_x >= 0 && cursor_x < COLS) {
        move(cursor_y, cursor_x);
        curs_set(1);
    } else {
        curs_set(0);
    }
    refresh();
}
