/*
 * core/glob.c — the list_users pattern matcher.
 *
 * '*' matches any run of bytes (including none), '?' exactly one byte, every
 * other byte itself; the pattern must cover the whole name. There are no
 * escapes and no character classes: usernames are [A-Za-z0-9_.-], so the two
 * wildcards are never literal.
 *
 * The matcher is the greedy one that remembers only the most recent '*'.
 * When a literal run after a star fails, it is retried one byte further on;
 * earlier stars never need revisiting, because whatever an earlier star could
 * absorb the latest star can absorb too. That bounds the work by
 * O(len(pattern) * len(name)) instead of the exponential blow-up of naive
 * recursive backtracking on patterns like "*a*a*a*a*b".
 */
#include "chat.h"

bool pl_glob_match(pl_str pattern, pl_str name)
{
    const char *p = pattern.ptr, *s = name.ptr;
    size_t pl = pattern.len, sl = name.len;
    size_t pi = 0, si = 0;
    /* Position after the last '*' seen, and the name position it was
     * (re)anchored at; star_pi == SIZE_MAX means no star seen yet. */
    size_t star_pi = SIZE_MAX, star_si = 0;

    while (si < sl) {
        if (pi < pl && p[pi] == '*') {
            star_pi = ++pi;
            star_si = si;
        } else if (pi < pl && (p[pi] == '?' || p[pi] == s[si])) {
            pi++;
            si++;
        } else if (star_pi != SIZE_MAX) {
            /* Let the last star swallow one more byte and retry after it. */
            pi = star_pi;
            si = ++star_si;
        } else {
            return false;
        }
    }
    /* The name is used up: only stars may remain in the pattern. */
    while (pi < pl && p[pi] == '*')
        pi++;
    return pi == pl;
}

pl_str pl_glob_prefix(pl_str pattern)
{
    pl_str r = { pattern.ptr, 0 };
    while (r.len < pattern.len && pattern.ptr[r.len] != '*' &&
           pattern.ptr[r.len] != '?')
        r.len++;
    return r;
}
