/*
 * tests/fuzz/fuzz_glob.c — pl_glob_match, the list_users matcher. The input
 * is "pattern|name" (split at the first '|'; no '|' means an empty name).
 *
 * The matcher is checked against a plain dynamic-programming reference
 * (match[i][j]: pattern[i..] covers name[j..]), which is obviously right and
 * also linear-memory; the fuzzer's -timeout catches a matcher that goes
 * exponential.
 */
#include <stdbool.h>
#include <string.h>

#include "chat.h"
#include "fuzz.h"

/* The reference: rows from the end of the pattern backwards, O(len(name))
 * memory. cur[j] == pattern[i..] matches name[j..]. */
static bool ref_match(const char *p, size_t pl, const char *s, size_t sl)
{
    bool *next = calloc(sl + 1, sizeof *next), *cur = calloc(sl + 1, sizeof *cur);
    FUZZ_CHECK(next && cur, "out of memory for %zu bytes", sl);
    next[sl] = true; /* empty pattern matches only the empty rest */
    for (size_t i = pl; i-- > 0;) {
        cur[sl] = p[i] == '*' && next[sl];
        for (size_t j = sl; j-- > 0;) {
            if (p[i] == '*')
                cur[j] = next[j] || cur[j + 1];
            else
                cur[j] = (p[i] == '?' || p[i] == s[j]) && next[j + 1];
        }
        bool *t = next;
        next = cur;
        cur = t;
    }
    bool r = next[0];
    free(next);
    free(cur);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Patterns are at most a few hundred bytes in practice (PL_ERR_PATTERN);
     * bound the reference's quadratic work. */
    if (size > 4096)
        return 0;
    const char *in = (const char *)data;
    const char *bar = memchr(in, '|', size);
    pl_str pat = { in, (uint32_t)(bar ? (size_t)(bar - in) : size) };
    pl_str name = { bar ? bar + 1 : in + size, (uint32_t)(bar ? size - (size_t)(bar - in) - 1 : 0) };
    bool got = pl_glob_match(pat, name);
    bool want = ref_match(pat.ptr, pat.len, name.ptr, name.len);
    FUZZ_CHECK(got == want, "pattern of %u bytes vs name of %u bytes: matcher says %d, reference %d",
               pat.len, name.len, got, want);
    /* The literal prefix is a prefix of the pattern and of every match. */
    pl_str pre = pl_glob_prefix(pat);
    FUZZ_CHECK(pre.len <= pat.len && pre.ptr == pat.ptr, "prefix outside the pattern");
    if (got)
        FUZZ_CHECK(name.len >= pre.len && memcmp(name.ptr, pre.ptr, pre.len) == 0,
                   "a match that does not start with the pattern's literal prefix");
    return 0;
}
