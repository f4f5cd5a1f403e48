/*
 * tests/unit/test_glob.c — the list_users glob matcher and prefix
 * extraction (core/glob.c).
 */
#include <check.h>
#include <stdlib.h>

#include "chat.h"

static bool m(const char *pat, const char *name)
{
    return pl_glob_match(pl_str_c(pat), pl_str_c(name));
}

START_TEST(literals)
{
    ck_assert_msg(m("alice", "alice"), "a literal pattern matches itself");
    ck_assert_msg(!m("alice", "alic"), "a literal must cover the whole name");
    ck_assert_msg(!m("alic", "alice"), "no implicit trailing star");
    ck_assert_msg(!m("lice", "alice"), "no implicit leading star");
    ck_assert_msg(!m("Alice", "alice"), "matching is case-sensitive");
    ck_assert_msg(m("a.b-c_d", "a.b-c_d"), "punctuation is literal");
}
END_TEST

START_TEST(question)
{
    ck_assert_msg(m("a?c", "abc"), "? matches one byte");
    ck_assert_msg(!m("a?c", "ac"), "? does not match zero bytes");
    ck_assert_msg(!m("a?c", "abbc"), "? does not match two bytes");
    ck_assert_msg(m("???", "xyz"), "three ? match three bytes");
    ck_assert_msg(!m("???", "xy"), "three ? need three bytes");
    ck_assert_msg(!m("?", ""), "? never matches the empty name");
}
END_TEST

START_TEST(star)
{
    ck_assert_msg(m("*", "anything"), "lone star matches any name");
    ck_assert_msg(m("*", ""), "lone star matches the empty name");
    ck_assert_msg(m("a*", "a"), "trailing star matches nothing");
    ck_assert_msg(m("a*", "abc"), "trailing star matches a run");
    ck_assert_msg(!m("a*", "ba"), "prefix must match before a trailing star");
    ck_assert_msg(m("*c", "abc"), "leading star");
    ck_assert_msg(!m("*c", "abcd"), "suffix must end the name");
    ck_assert_msg(m("a*c", "ac"), "inner star matches nothing");
    ck_assert_msg(m("a*c", "abbbc"), "inner star matches a run");
    ck_assert_msg(m("*b*", "abc"), "stars at both ends");
    ck_assert_msg(!m("*x*", "abc"), "stars at both ends need the literal");
    ck_assert_msg(m("**a**", "a"), "consecutive stars collapse");
    ck_assert_msg(m("a*b*c", "axxbyybzc"), "the last star retries past a false match");
    ck_assert_msg(m("*ab", "aab"), "retry after a partial literal match");
    ck_assert_msg(!m("a*b?c", "abxd"), "mixed wildcards fail");
    ck_assert_msg(m("a*b?c", "azzbxc"), "mixed wildcards match");
    ck_assert_msg(m("?*", "q"), "?* needs at least one byte");
    ck_assert_msg(!m("?*", ""), "?* rejects the empty name");
}
END_TEST

START_TEST(empty)
{
    ck_assert_msg(m("", ""), "empty pattern matches the empty name");
    ck_assert_msg(!m("", "a"), "empty pattern is literal in the matcher");
    pl_str nullp = { NULL, 0 };
    ck_assert_msg(pl_glob_match(nullp, nullp), "NULL empty views are fine");
    ck_assert_msg(pl_glob_match(pl_str_c("*"), nullp), "star vs NULL empty name");
}
END_TEST

static char *run_of_a(size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, 'a', n);
    s[n] = 0;
    return s;
}

START_TEST(pathological)
{
    char *name = run_of_a(10000);
    ck_assert_msg(!m("*a*a*a*a*b", name), "*a*a*a*a*b must not match all a's");
    ck_assert_msg(!m("*a*a*a*a*a*a*a*a*a*b", name),
                  "*a*a*a*a*a*a*a*a*a*b must not match all a's");
    ck_assert_msg(m("*a*a*a*a*a*a*a*a*a*a", name), "ten a's match a run of a's");
    name[9999] = 'b';
    ck_assert_msg(m("*a*a*a*a*b", name), "*a*a*a*a*b matches a...ab");
    ck_assert_msg(m("*a*a*a*a*a*a*a*a*a*b", name), "long pattern matches a...ab");
    free(name);
}
END_TEST

static void prefix_is(const char *pat, const char *want)
{
    pl_str p = pl_glob_prefix(pl_str_c(pat));
    ck_assert_msg(pl_str_eq(p, pl_str_c(want)), "prefix of \"%s\" is \"%.*s\", want \"%s\"",
                  pat, (int)p.len, p.ptr ? p.ptr : "", want);
}

START_TEST(prefix)
{
    prefix_is("alice", "alice");
    prefix_is("al*", "al");
    prefix_is("al?ce", "al");
    prefix_is("*x", "");
    prefix_is("?x", "");
    prefix_is("", "");
    prefix_is("ab*c?d", "ab");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("glob");
    TCase *tc = tcase_create("glob");
    tcase_add_test(tc, literals);
    tcase_add_test(tc, question);
    tcase_add_test(tc, star);
    tcase_add_test(tc, empty);
    tcase_add_test(tc, pathological);
    tcase_add_test(tc, prefix);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
