/*
 * client/tui_text.h — text arithmetic for the terminal UI: UTF-8 to and from
 * wide characters, terminal column widths and word wrapping.
 *
 * Everything here is pure (no curses), so tests/tui checks it directly.
 * Message bodies arrive as UTF-8 bytes from the network and are decoded here
 * without the C locale's help, so a malformed byte sequence becomes U+FFFD
 * instead of an error, and a multibyte character is never split: every
 * operation below works on whole wide characters.
 */
#ifndef PARLEY_TUI_TEXT_H
#define PARLEY_TUI_TEXT_H

#include <stddef.h>
#include <wchar.h>

#define TUI_REPLACEMENT ((wchar_t)0xFFFD)

/* Decode len bytes of UTF-8 into a new NUL-terminated wide string; *n (may
 * be NULL) receives its length. Invalid, overlong or surrogate sequences and
 * code points above U+10FFFF become one U+FFFD each. Returns NULL when out of
 * memory. The caller frees. */
wchar_t *tui_utf8_decode(const char *s, size_t len, size_t *n);

/* Bytes the UTF-8 encoding of w takes (0 for a value that is not a Unicode
 * scalar value: such characters are encoded as U+FFFD, 3 bytes). */
size_t tui_utf8_len(wchar_t w);

/* Encode n wide characters as a new NUL-terminated UTF-8 string; *len (may
 * be NULL) receives its byte length. Returns NULL when out of memory. The
 * caller frees. */
char *tui_utf8_encode(const wchar_t *w, size_t n, size_t *len);

/* The character shown for w: tabs and newlines become a space (tui_wrap
 * handles newlines before asking), other control characters (C0, DEL, C1)
 * and characters the terminal cannot draw become U+FFFD (or '?' when the
 * locale cannot draw that either), so a message can never move the cursor
 * or send a terminal escape. */
wchar_t tui_display_char(wchar_t w);

/* Columns tui_display_char(w) takes: 0 for combining marks, 2 for wide
 * characters, else 1. */
int tui_char_cols(wchar_t w);

/* Columns of w[0..n). */
int tui_cols(const wchar_t *w, size_t n);

/* How many characters of w[0..n) fit in cols columns, whole characters only
 * (a wide character that would straddle the edge is left out, combining
 * marks stay with their base). *used (may be NULL) gets the columns taken. */
size_t tui_fit(const wchar_t *w, size_t n, int cols, int *used);

/* One wrapped line: characters [start, end) are drawn; the characters from
 * end to next (a space or a newline where the line broke) are not. */
typedef struct tui_line {
    size_t start, end, next;
} tui_line;

/* Wrap w[0..n) into lines of at most width columns (width >= 1): at every
 * '\n', after the last space that fits, or, for a word longer than a line,
 * before the first character that does not fit. Writes at most max lines to
 * out (out may be NULL to only count) and returns the number of lines,
 * which is at least 1 (an empty text is one empty line). */
size_t tui_wrap(const wchar_t *w, size_t n, int width, tui_line *out, size_t max);

#endif
