/*
 * client/tui_edit.c — the terminal UI's text field (see tui_edit.h).
 */
#include "tui_edit.h"

#include <stdlib.h>
#include <string.h>
#include <wctype.h>

#include <sodium.h>

#include "tui_text.h"

void tui_edit_init(tui_edit *e, size_t max_bytes, int filter, int hidden)
{
    memset(e, 0, sizeof *e);
    e->max_bytes = max_bytes;
    e->filter = filter;
    e->hidden = hidden;
}

static void wipe(tui_edit *e)
{
    if (e->buf && e->cap)
        sodium_memzero(e->buf, e->cap * sizeof *e->buf);
}

void tui_edit_deinit(tui_edit *e)
{
    wipe(e);
    free(e->buf);
    e->buf = NULL;
    e->len = e->cap = e->cur = e->bytes = 0;
}

void tui_edit_clear(tui_edit *e)
{
    wipe(e);
    e->len = e->cur = e->bytes = 0;
    if (e->buf)
        e->buf[0] = L'\0';
}

static int accepts(const tui_edit *e, wchar_t ch)
{
    int ascii_name = (ch >= L'a' && ch <= L'z') || (ch >= L'A' && ch <= L'Z') ||
                     (ch >= L'0' && ch <= L'9') || ch == L'_' || ch == L'.' || ch == L'-';

    switch (e->filter) {
    case TUI_EF_USERNAME:
        return ascii_name;
    case TUI_EF_PATTERN:
        return ascii_name || ch == L'*' || ch == L'?';
    case TUI_EF_DIGITS:
        return ch >= L'0' && ch <= L'9';
    default:
        /* Printable text only: a pasted escape sequence must not end up in
         * a message body. */
        return tui_utf8_len(ch) != 0 && tui_display_char(ch) == ch;
    }
}

int tui_edit_insert(tui_edit *e, wchar_t ch)
{
    size_t l;

    if (ch == L'\n' || ch == L'\t' || ch == L'\r')
        ch = L' ';
    if (!accepts(e, ch))
        return 0;
    l = tui_utf8_len(ch);
    if (e->bytes + l > e->max_bytes)
        return 0;
    if (e->len + 2 > e->cap) {
        size_t ncap = e->cap ? e->cap * 2 : 32;
        wchar_t *nb = malloc(ncap * sizeof *nb);
        if (!nb)
            return 0;
        if (e->buf) {
            memcpy(nb, e->buf, (e->len + 1) * sizeof *nb);
            wipe(e);
            free(e->buf);
        }
        e->buf = nb;
        e->cap = ncap;
    }
    memmove(e->buf + e->cur + 1, e->buf + e->cur, (e->len - e->cur) * sizeof *e->buf);
    e->buf[e->cur++] = ch;
    e->len++;
    e->buf[e->len] = L'\0';
    e->bytes += l;
    return 1;
}

int tui_edit_set(tui_edit *e, const char *s)
{
    size_t n;
    wchar_t *w = tui_utf8_decode(s, strlen(s), &n);

    if (!w)
        return -1;
    tui_edit_clear(e);
    for (size_t i = 0; i < n; i++)
        tui_edit_insert(e, w[i]);
    free(w);
    return 0;
}

/* Delete characters [from, to). */
static void cut(tui_edit *e, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        e->bytes -= tui_utf8_len(e->buf[i]);
    memmove(e->buf + from, e->buf + to, (e->len - to + 1) * sizeof *e->buf);
    e->len -= to - from;
    if (e->cur > to)
        e->cur -= to - from;
    else if (e->cur > from)
        e->cur = from;
    /* What moved left leaves a copy behind the new end; a password must not. */
    if (e->hidden)
        sodium_memzero(e->buf + e->len + 1, (to - from) * sizeof *e->buf);
}

int tui_edit_key(tui_edit *e, int key)
{
    size_t c = e->cur;

    switch (key) {
    case TUI_EK_LEFT:
        if (e->cur == 0)
            return 0;
        e->cur--;
        /* Step over combining marks onto their base character. */
        while (e->cur > 0 && tui_char_cols(e->buf[e->cur]) == 0)
            e->cur--;
        return 1;
    case TUI_EK_RIGHT:
        if (e->cur >= e->len)
            return 0;
        e->cur++;
        while (e->cur < e->len && tui_char_cols(e->buf[e->cur]) == 0)
            e->cur++;
        return 1;
    case TUI_EK_HOME:
        e->cur = 0;
        return c != 0;
    case TUI_EK_END:
        e->cur = e->len;
        return c != e->len;
    case TUI_EK_BACKSPACE:
        if (e->cur == 0)
            return 0;
        cut(e, e->cur - 1, e->cur);
        return 1;
    case TUI_EK_DELETE:
        if (e->cur >= e->len)
            return 0;
        cut(e, e->cur, e->cur + 1);
        return 1;
    case TUI_EK_KILL_START:
        if (e->cur == 0)
            return 0;
        cut(e, 0, e->cur);
        return 1;
    case TUI_EK_KILL_END:
        if (e->cur >= e->len)
            return 0;
        cut(e, e->cur, e->len);
        return 1;
    case TUI_EK_KILL_WORD: {
        size_t from = e->cur;
        while (from > 0 && iswspace((wint_t)e->buf[from - 1]))
            from--;
        while (from > 0 && !iswspace((wint_t)e->buf[from - 1]))
            from--;
        if (from == e->cur)
            return 0;
        cut(e, from, e->cur);
        return 1;
    }
    default:
        return 0;
    }
}

char *tui_edit_text(const tui_edit *e)
{
    return tui_utf8_encode(e->buf ? e->buf : L"", e->len, NULL);
}
