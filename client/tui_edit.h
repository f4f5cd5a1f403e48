/*
 * client/tui_edit.h — the text field of the terminal UI: a wide-character
 * buffer with a cursor, a byte limit counted in UTF-8 (the limit the server
 * enforces), an optional character filter and a hidden mode for passwords.
 *
 * Pure (no curses): keys arrive as the (is_key, ch) pair wget_wch returns,
 * with the curses KEY_* codes passed in by the caller, so tests/tui can drive
 * it without a terminal.
 */
#ifndef PARLEY_TUI_EDIT_H
#define PARLEY_TUI_EDIT_H

#include <stddef.h>
#include <wchar.h>

/* Keys the editor understands, mapped by the caller from curses codes. */
enum tui_edit_key {
    TUI_EK_NONE = 0,
    TUI_EK_LEFT, TUI_EK_RIGHT, TUI_EK_HOME, TUI_EK_END,
    TUI_EK_BACKSPACE, TUI_EK_DELETE,
    TUI_EK_KILL_START,  /* Ctrl-U: delete to the start */
    TUI_EK_KILL_END,    /* Ctrl-K: delete to the end */
    TUI_EK_KILL_WORD    /* Ctrl-W: delete the word before the cursor */
};

/* Which characters a field accepts. */
enum tui_edit_filter {
    TUI_EF_TEXT = 0,    /* any printable character (message bodies, passwords) */
    TUI_EF_USERNAME,    /* [A-Za-z0-9_.-] */
    TUI_EF_PATTERN,     /* username characters plus * and ? */
    TUI_EF_DIGITS
};

typedef struct tui_edit {
    wchar_t *buf;       /* len characters, NUL-terminated */
    size_t len, cap, cur;
    size_t bytes;       /* UTF-8 length of buf */
    size_t max_bytes;   /* refuse input beyond this */
    int filter;         /* enum tui_edit_filter */
    int hidden;         /* drawn as '*'; wiped on clear and free */
} tui_edit;

void tui_edit_init(tui_edit *e, size_t max_bytes, int filter, int hidden);
/* Wipe (hidden fields are zeroed) and release the buffer. */
void tui_edit_deinit(tui_edit *e);
void tui_edit_clear(tui_edit *e);

/* Insert one character at the cursor. Returns 1 when inserted, 0 when the
 * filter or the byte limit refused it (or out of memory). Newlines and tabs
 * are inserted as spaces: fields are one paragraph. */
int tui_edit_insert(tui_edit *e, wchar_t ch);
/* Replace the whole text with the UTF-8 string s (filtered, truncated at
 * the limit). Returns 0, or -1 when out of memory. */
int tui_edit_set(tui_edit *e, const char *s);
/* Apply an editing key. Returns 1 when the text or cursor changed. */
int tui_edit_key(tui_edit *e, int key);

/* The text as a new UTF-8 string; the caller frees (and, for a hidden
 * field, wipes). NULL when out of memory. */
char *tui_edit_text(const tui_edit *e);

#endif
