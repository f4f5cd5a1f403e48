/*
 * client/tui_text.c — UTF-8, column widths and wrapping for the terminal UI
 * (see tui_text.h).
 *
 * Widths come from wcwidth(), so they follow the C library's Unicode tables
 * for the current LC_CTYPE; the UI runs with a UTF-8 LC_CTYPE (tui.c makes
 * sure of that) so these agree with what ncursesw draws.
 */
#include "tui_text.h"

#include <stdint.h>
#include <stdlib.h>

static int is_scalar(uint32_t cp)
{
    return cp <= 0x10FFFFu && !(cp >= 0xD800u && cp <= 0xDFFFu);
}

wchar_t *tui_utf8_decode(const char *s, size_t len, size_t *n)
{
    const unsigned char *p = (const unsigned char *)s;
    wchar_t *w = malloc((len + 1) * sizeof *w);
    size_t i = 0, k = 0;

    if (!w)
        return NULL;
    while (i < len) {
        unsigned char b = p[i];
        size_t need;
        uint32_t cp, min;

        if (b < 0x80) {
            w[k++] = (wchar_t)b;
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            need = 1, cp = b & 0x1Fu, min = 0x80;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2, cp = b & 0x0Fu, min = 0x800;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3, cp = b & 0x07u, min = 0x10000;
        } else {
            w[k++] = TUI_REPLACEMENT;
            i++;
            continue;
        }
        size_t j = 1;
        for (; j <= need && i + j < len && (p[i + j] & 0xC0) == 0x80; j++)
            cp = (cp << 6) | (p[i + j] & 0x3Fu);
        if (j <= need || cp < min || !is_scalar(cp)) {
            /* A truncated or invalid sequence: one replacement for the lead
             * byte, then resynchronise on the next byte. */
            w[k++] = TUI_REPLACEMENT;
            i++;
            continue;
        }
        w[k++] = (wchar_t)cp;
        i += need + 1;
    }
    w[k] = L'\0';
    if (n)
        *n = k;
    return w;
}

size_t tui_utf8_len(wchar_t w)
{
    uint32_t cp = (uint32_t)w;

    if (!is_scalar(cp))
        return 0;
    return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

char *tui_utf8_encode(const wchar_t *w, size_t n, size_t *len)
{
    size_t total = 0, k = 0;
    char *s;

    for (size_t i = 0; i < n; i++) {
        size_t l = tui_utf8_len(w[i]);
        total += l ? l : 3;
    }
    s = malloc(total + 1);
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = (uint32_t)w[i];

        if (!is_scalar(cp))
            cp = 0xFFFD;
        if (cp < 0x80) {
            s[k++] = (char)cp;
        } else if (cp < 0x800) {
            s[k++] = (char)(0xC0 | (cp >> 6));
            s[k++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            s[k++] = (char)(0xE0 | (cp >> 12));
            s[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            s[k++] = (char)(0x80 | (cp & 0x3F));
        } else {
            s[k++] = (char)(0xF0 | (cp >> 18));
            s[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            s[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            s[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    s[k] = '\0';
    if (len)
        *len = k;
    return s;
}

/* What to draw instead of an undrawable character: U+FFFD when the locale
 * can draw it, else '?'. */
static wchar_t replacement(void)
{
    return wcwidth(TUI_REPLACEMENT) == 1 ? TUI_REPLACEMENT : L'?';
}

wchar_t tui_display_char(wchar_t w)
{
    uint32_t cp = (uint32_t)w;

    if (w == L'\t' || w == L'\n')
        return L' ';
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0) || !is_scalar(cp))
        return replacement();
    if (cp < 0x7F)
        return w;
    if (wcwidth(w) < 0)
        return replacement();
    return w;
}

int tui_char_cols(wchar_t w)
{
    int c = wcwidth(tui_display_char(w));

    return c < 0 ? 1 : c;
}

int tui_cols(const wchar_t *w, size_t n)
{
    int c = 0;

    for (size_t i = 0; i < n; i++)
        c += tui_char_cols(w[i]);
    return c;
}

size_t tui_fit(const wchar_t *w, size_t n, int cols, int *used)
{
    int c = 0;
    size_t i = 0;

    while (i < n) {
        int cw = tui_char_cols(w[i]);
        if (c + cw > cols)
            break;
        c += cw;
        i++;
    }
    if (used)
        *used = c;
    return i;
}

static void emit(tui_line *out, size_t max, size_t *count, size_t start, size_t end,
                 size_t next)
{
    if (out && *count < max) {
        out[*count].start = start;
        out[*count].end = end;
        out[*count].next = next;
    }
    (*count)++;
}

size_t tui_wrap(const wchar_t *w, size_t n, int width, tui_line *out, size_t max)
{
    size_t count = 0, i = 0;

    if (width < 1)
        width = 1;
    for (;;) {
        size_t start = i, j = i, space = SIZE_MAX;
        int cols = 0;

        for (;;) {
            if (j >= n) {
                emit(out, max, &count, start, n, n);
                return count;
            }
            if (w[j] == L'\n') {
                emit(out, max, &count, start, j, j + 1);
                i = j + 1;
                break;
            }
            int cw = tui_char_cols(w[j]);
            if (cols + cw > width) {
                if (w[j] == L' ' && j > start)
                    space = j;
                if (space != SIZE_MAX) {
                    /* Break at the last space; the run of spaces there is
                     * the line break and is not drawn on either line. */
                    size_t next = space;
                    while (next < n && w[next] == L' ')
                        next++;
                    emit(out, max, &count, start, space, next);
                    i = next;
                } else if (j == start) {
                    /* A character wider than the whole line: it goes on a
                     * line of its own (clipped when drawn) so we progress. */
                    emit(out, max, &count, start, j + 1, j + 1);
                    i = j + 1;
                } else {
                    emit(out, max, &count, start, j, j);
                    i = j;
                }
                if (i >= n)
                    return count;
                break;
            }
            if (w[j] == L' ' && j > start)
                space = j;
            cols += cw;
            j++;
        }
    }
}
