/*
 * tests/tui/test_tui_text.c — the terminal UI's text arithmetic (UTF-8,
 * column widths, wrapping) and its text field, without a terminal.
 */
#include <check.h>
#include <locale.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tui_edit.h"
#include "tui_text.h"

static wchar_t *dec(const char *s, size_t *n)
{
    wchar_t *w = tui_utf8_decode(s, strlen(s), n);
    ck_assert_msg(w != NULL, "decode ran out of memory");
    return w;
}

START_TEST(decode_valid)
{
    size_t n;
    wchar_t *w = dec("a\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80", &n);

    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq((uint32_t)w[0], 'a');
    ck_assert_uint_eq((uint32_t)w[1], 0xE9);
    ck_assert_uint_eq((uint32_t)w[2], 0x65E5);
    ck_assert_uint_eq((uint32_t)w[3], 0x1F600);
    free(w);
}
END_TEST

START_TEST(decode_invalid_becomes_replacement)
{
    static const char *const cases[] = {
        "\xff",             /* never valid */
        "\xe6\x97",         /* truncated */
        "\xc0\xaf",         /* overlong */
        "\xed\xa0\x80",     /* surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        wchar_t *w = dec(cases[i], &n);
        ck_assert_msg(n >= 1 && w[0] == TUI_REPLACEMENT,
                      "case %zu: the first character should be U+FFFD", i);
        for (size_t k = 0; k < n; k++)
            ck_assert_msg(w[k] == TUI_REPLACEMENT,
                          "case %zu: character %zu is not U+FFFD", i, k);
        free(w);
    }
    /* Resynchronises: what follows a bad byte decodes normally. */
    size_t n;
    wchar_t *w = dec("\xffok\xc3\xa9", &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq((uint32_t)w[1], 'o');
    ck_assert_uint_eq((uint32_t)w[3], 0xE9);
    free(w);
}
END_TEST

START_TEST(encode_round_trip)
{
    const char *s = "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x91\x8b";
    size_t n, len;
    wchar_t *w = dec(s, &n);
    char *back = tui_utf8_encode(w, n, &len);

    ck_assert_ptr_nonnull(back);
    ck_assert_str_eq(back, s);
    ck_assert_uint_eq(len, strlen(s));
    free(back);
    free(w);
}
END_TEST

START_TEST(widths)
{
    /* Wide CJK takes two columns, a combining accent none, a control
     * character is shown as one replacement column. */
    ck_assert_int_eq(tui_cols(L"\x65E5\x672C", 2), 4);
    ck_assert_int_eq(tui_cols(L"e\x0301", 2), 1);
    ck_assert_int_eq(tui_char_cols(L'\x1b'), 1);
    ck_assert_msg(tui_display_char(L'\x1b') != L'\x1b', "ESC must never reach the terminal");
    ck_assert_msg(tui_display_char((wchar_t)0x9B) != (wchar_t)0x9B, "C1 CSI must never reach the terminal");
    ck_assert_int_eq(tui_display_char(L'\t'), L' ');
}
END_TEST

START_TEST(fit_never_splits_a_wide_character)
{
    int used;
    size_t k = tui_fit(L"ab\x65E5", 3, 3, &used);

    ck_assert_uint_eq(k, 2);
    ck_assert_int_eq(used, 2);
    k = tui_fit(L"ab\x65E5", 3, 4, &used);
    ck_assert_uint_eq(k, 3);
    ck_assert_int_eq(used, 4);
    /* A combining mark stays with its base. */
    k = tui_fit(L"ae\x0301x", 4, 2, &used);
    ck_assert_uint_eq(k, 3);
}
END_TEST

static size_t wrap_all(const wchar_t *w, int width, tui_line *out, size_t max)
{
    size_t n = tui_wrap(w, wcslen(w), width, out, max);
    ck_assert_msg(n <= max, "test buffer too small: %zu lines", n);
    return n;
}

static void ck_line(const wchar_t *w, const tui_line *l, const wchar_t *want)
{
    size_t len = l->end - l->start;
    ck_assert_msg(len == wcslen(want) && wmemcmp(w + l->start, want, len) == 0,
                  "line [%zu,%zu) is not \"%ls\"", l->start, l->end, want);
}

START_TEST(wrap_words_long_words_newlines)
{
    tui_line l[16];
    const wchar_t *a = L"hello world foo";
    size_t n = wrap_all(a, 11, l, 16);

    ck_assert_uint_eq(n, 2);
    ck_line(a, &l[0], L"hello world");
    ck_line(a, &l[1], L"foo");

    const wchar_t *b = L"abcdefghij";
    n = wrap_all(b, 4, l, 16);
    ck_assert_uint_eq(n, 3);
    ck_line(b, &l[0], L"abcd");
    ck_line(b, &l[2], L"ij");

    const wchar_t *c = L"one\ntwo";
    n = wrap_all(c, 40, l, 16);
    ck_assert_uint_eq(n, 2);
    ck_line(c, &l[1], L"two");

    ck_assert_uint_eq(wrap_all(L"", 10, l, 16), 1);
}
END_TEST

START_TEST(wrap_wide_characters)
{
    tui_line l[16];
    const wchar_t *w = L"\x65E5\x672C\x8A9E";   /* three 2-column characters */
    size_t n = wrap_all(w, 5, l, 16);

    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(l[0].end - l[0].start, 2);
    ck_assert_uint_eq(l[1].end - l[1].start, 1);
    /* Narrower than one character: one per line, and it terminates. */
    n = wrap_all(w, 1, l, 16);
    ck_assert_uint_eq(n, 3);
}
END_TEST

/* Random text of ASCII, spaces, newlines, wide and combining characters:
 * every line fits and the lines cover the text in order. */
START_TEST(wrap_property)
{
    static const wchar_t alphabet[] = { L'a', L'b', L' ', L' ', L'\n', 0x65E5, 0x0301,
                                        0x1F600, L'z', 0xE9 };
    unsigned seed = 12345;
    tui_line *l = malloc(512 * sizeof *l);
    wchar_t w[200];

    ck_assert_ptr_nonnull(l);
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = (seed = seed * 1103515245u + 12345u) % 200;
        int width = 1 + (int)((seed >> 8) % 30);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            w[i] = alphabet[(seed >> 16) % (sizeof alphabet / sizeof alphabet[0])];
        }
        size_t n = tui_wrap(w, len, width, l, 512);
        ck_assert_msg(n >= 1 && n <= 512, "iteration %d: %zu lines", iter, n);
        ck_assert_uint_eq(l[0].start, 0);
        for (size_t k = 0; k < n; k++) {
            int cols = tui_cols(w + l[k].start, l[k].end - l[k].start);
            ck_assert_msg(cols <= width || l[k].end - l[k].start == 1,
                          "iteration %d line %zu: %d columns in a width of %d", iter, k, cols, width);
            ck_assert_msg(l[k].start <= l[k].end && l[k].end <= l[k].next,
                          "iteration %d line %zu: bounds out of order", iter, k);
            if (k + 1 < n)
                ck_assert_msg(l[k + 1].start == l[k].next,
                              "iteration %d: line %zu does not start where %zu ended", iter, k + 1, k);
        }
        ck_assert_msg(l[n - 1].next == len, "iteration %d: the lines do not reach the end", iter);
    }
    free(l);
}
END_TEST

START_TEST(edit_limits_and_filters)
{
    tui_edit e;
    char *s;

    tui_edit_init(&e, 5, TUI_EF_TEXT, 0);
    ck_assert_int_eq(tui_edit_insert(&e, 0xE9), 1);   /* 2 bytes */
    ck_assert_int_eq(tui_edit_insert(&e, 0xE9), 1);   /* 4 bytes */
    ck_assert_int_eq(tui_edit_insert(&e, 0xE9), 0);   /* would be 6 > 5 */
    ck_assert_int_eq(tui_edit_insert(&e, L'x'), 1);   /* 5 */
    ck_assert_int_eq(tui_edit_insert(&e, L'\x1b'), 0); /* control: refused */
    s = tui_edit_text(&e);
    ck_assert_str_eq(s, "\xc3\xa9\xc3\xa9x");
    free(s);
    ck_assert_int_eq(tui_edit_key(&e, TUI_EK_LEFT), 1);
    ck_assert_int_eq(tui_edit_key(&e, TUI_EK_BACKSPACE), 1);
    s = tui_edit_text(&e);
    ck_assert_str_eq(s, "\xc3\xa9x");
    free(s);
    ck_assert_uint_eq(e.bytes, 3);
    tui_edit_deinit(&e);

    tui_edit_init(&e, 32, TUI_EF_USERNAME, 0);
    ck_assert_int_eq(tui_edit_insert(&e, L'a'), 1);
    ck_assert_int_eq(tui_edit_insert(&e, L'*'), 0);
    ck_assert_int_eq(tui_edit_insert(&e, 0xE9), 0);
    ck_assert_int_eq(tui_edit_insert(&e, L'.'), 1);
    tui_edit_deinit(&e);

    tui_edit_init(&e, 100, TUI_EF_TEXT, 1);
    tui_edit_set(&e, "two words here");
    ck_assert_int_eq(tui_edit_key(&e, TUI_EK_KILL_WORD), 1);
    s = tui_edit_text(&e);
    ck_assert_str_eq(s, "two words ");
    free(s);
    ck_assert_int_eq(tui_edit_key(&e, TUI_EK_HOME), 1);
    ck_assert_int_eq(tui_edit_key(&e, TUI_EK_KILL_END), 1);
    ck_assert_uint_eq(e.len, 0);
    ck_assert_uint_eq(e.bytes, 0);
    tui_edit_deinit(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tui-text");
    TCase *tc = tcase_create("text");
    SRunner *sr;
    int failed;

    /* Widths follow LC_CTYPE, as in the UI. */
    if (!setlocale(LC_CTYPE, "C.UTF-8")) {
        fprintf(stderr, "the C.UTF-8 locale is missing\n");
        return 1;
    }
    tcase_add_test(tc, decode_valid);
    tcase_add_test(tc, decode_invalid_becomes_replacement);
    tcase_add_test(tc, encode_round_trip);
    tcase_add_test(tc, widths);
    tcase_add_test(tc, fit_never_splits_a_wide_character);
    tcase_add_test(tc, wrap_words_long_words_newlines);
    tcase_add_test(tc, wrap_wide_characters);
    tcase_add_test(tc, wrap_property);
    tcase_add_test(tc, edit_limits_and_filters);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
