/*
 * tests/unit/test_logcache.c — the apply cache (core/logcache.c): it hands
 * over exactly the entries the log holds, or nothing.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logcache.h"

/* Entry bytes for op in "generation" gen: "op:gen" padded to len. */
static uint8_t bufs[64][64];

static pl_log_entry ent(uint64_t op, int gen, uint32_t len)
{
    uint8_t *b = bufs[op % 64];
    memset(b, 'x', sizeof bufs[0]);
    snprintf((char *)b, sizeof bufs[0], "%llu:%d", (unsigned long long)op, gen);
    if (len > sizeof bufs[0])
        len = sizeof bufs[0];
    return (pl_log_entry){ op, 1, b, len };
}

static void add_run(pl_logcache *c, uint64_t from, uint64_t to, int gen, uint32_t len)
{
    for (uint64_t op = from; op <= to; op++) {
        pl_log_entry e = ent(op, gen, len);
        pl_logcache_add(c, &e, 1);
    }
}

/* Take from..to and check each is op:gen; frees what it took. */
static void take_expect(pl_logcache *c, uint64_t from, uint64_t to, int gen)
{
    uint8_t *data[64];
    size_t len[64];
    ck_assert_uint_le(to - from + 1, 64);
    ck_assert_msg(pl_logcache_take(c, from, to, data, len) == 1, "ops %llu-%llu are held",
                  (unsigned long long)from, (unsigned long long)to);
    for (uint64_t op = from; op <= to; op++) {
        char want[32];
        snprintf(want, sizeof want, "%llu:%d", (unsigned long long)op, gen);
        size_t i = (size_t)(op - from);
        ck_assert_msg(len[i] >= strlen(want) && memcmp(data[i], want, strlen(want)) == 0 &&
                          (len[i] == strlen(want) || data[i][strlen(want)] == 0),
                      "op %llu holds %s", (unsigned long long)op, want);
        free(data[i]);
    }
}

static int take_none(pl_logcache *c, uint64_t from, uint64_t to)
{
    uint8_t *data[64];
    size_t len[64];
    return pl_logcache_take(c, from, to, data, len) == 0;
}

START_TEST(hands_over_in_order)
{
    pl_logcache *c = pl_logcache_new(16, 1 << 20);
    ck_assert_ptr_nonnull(c);
    pl_log_entry e[3] = { ent(5, 0, 8), ent(6, 0, 8), ent(7, 0, 8) };
    /* one call with three entries, as an append of a batch */
    uint8_t copies[3][8];
    for (int i = 0; i < 3; i++) {
        memcpy(copies[i], e[i].data, 8);
        e[i].data = copies[i];
    }
    pl_logcache_add(c, e, 3);
    add_run(c, 8, 9, 0, 8);
    ck_assert_uint_eq(pl_logcache_count(c), 5);
    ck_assert_uint_eq(pl_logcache_bytes(c), 40);
    ck_assert_uint_eq(pl_logcache_first(c), 5);
    take_expect(c, 5, 6, 0);
    ck_assert_uint_eq(pl_logcache_first(c), 7);
    ck_assert_msg(take_none(c, 7, 10), "op 10 is not held: nothing is handed over");
    ck_assert_uint_eq(pl_logcache_count(c), 3);
    take_expect(c, 7, 9, 0);
    ck_assert_uint_eq(pl_logcache_count(c), 0);
    ck_assert_uint_eq(pl_logcache_bytes(c), 0);
    pl_logcache_free(c);
}
END_TEST

START_TEST(below_is_dropped_above_is_a_miss)
{
    pl_logcache *c = pl_logcache_new(16, 1 << 20);
    add_run(c, 10, 14, 0, 8);
    ck_assert_msg(take_none(c, 9, 11), "op 9 is not held");
    ck_assert_uint_eq(pl_logcache_count(c), 5);
    /* the caller is past 10 and 11 (read them from the store) */
    take_expect(c, 12, 13, 0);
    ck_assert_uint_eq(pl_logcache_first(c), 14);
    ck_assert_msg(take_none(c, 16, 16), "a gap: nothing");
    ck_assert_uint_eq(pl_logcache_count(c), 0);
    pl_logcache_free(c);
}
END_TEST

/* A view change cuts the uncommitted tail and appends another history. */
START_TEST(cut_then_replaced)
{
    pl_logcache *c = pl_logcache_new(16, 1 << 20);
    add_run(c, 1, 8, 0, 8);
    pl_logcache_cut(c, 5);
    ck_assert_uint_eq(pl_logcache_count(c), 5);
    ck_assert_uint_eq(pl_logcache_bytes(c), 40);
    add_run(c, 6, 9, 1, 8);
    take_expect(c, 1, 5, 0);
    take_expect(c, 6, 9, 1);
    /* a cut below everything held empties it */
    add_run(c, 10, 12, 1, 8);
    pl_logcache_cut(c, 3);
    ck_assert_uint_eq(pl_logcache_count(c), 0);
    ck_assert_msg(take_none(c, 10, 10), "nothing after the cut");
    /* a cut above everything held keeps it */
    add_run(c, 4, 6, 2, 8);
    pl_logcache_cut(c, 100);
    take_expect(c, 4, 6, 2);
    pl_logcache_free(c);
}
END_TEST

/* An append that does not continue the run (the log changed some way the
 * cache was not told of) starts a new one: the old entries are not handed
 * over as the new history. */
START_TEST(not_the_next_op_starts_over)
{
    pl_logcache *c = pl_logcache_new(16, 1 << 20);
    add_run(c, 1, 6, 0, 8);
    add_run(c, 4, 5, 1, 8); /* rewrites 4-5 without a cut */
    ck_assert_uint_eq(pl_logcache_count(c), 2);
    ck_assert_msg(take_none(c, 1, 3), "the old run is gone");
    take_expect(c, 4, 5, 1);
    add_run(c, 1, 2, 0, 8);
    add_run(c, 9, 9, 0, 8); /* skips 3-8 */
    ck_assert_uint_eq(pl_logcache_first(c), 9);
    ck_assert_uint_eq(pl_logcache_count(c), 1);
    take_expect(c, 9, 9, 0);
    pl_logcache_free(c);
}
END_TEST

START_TEST(full_drops_the_oldest)
{
    /* by count */
    pl_logcache *c = pl_logcache_new(4, 1 << 20);
    add_run(c, 1, 10, 0, 8);
    ck_assert_uint_eq(pl_logcache_count(c), 4);
    ck_assert_uint_eq(pl_logcache_first(c), 7);
    ck_assert_msg(take_none(c, 6, 7), "op 6 was dropped");
    take_expect(c, 7, 10, 0);
    /* the ring wraps many times over */
    for (uint64_t op = 11; op < 200; op += 3) {
        add_run(c, op, op + 2, 0, 8);
        take_expect(c, op, op + 2, 0);
    }
    pl_logcache_free(c);
    /* by bytes */
    c = pl_logcache_new(64, 100);
    add_run(c, 1, 20, 0, 30);
    ck_assert_uint_eq(pl_logcache_count(c), 3);
    ck_assert_uint_eq(pl_logcache_bytes(c), 90);
    take_expect(c, 18, 20, 0);
    /* one entry over the whole limit is not held, and breaks the run */
    add_run(c, 21, 22, 0, 30);
    pl_log_entry big = ent(23, 0, 64);
    big.len = 101;
    uint8_t bigbuf[101];
    memset(bigbuf, 0, sizeof bigbuf);
    big.data = bigbuf;
    pl_logcache_add(c, &big, 1);
    ck_assert_uint_eq(pl_logcache_count(c), 0);
    ck_assert_msg(take_none(c, 21, 22), "cleared");
    add_run(c, 24, 25, 0, 30);
    take_expect(c, 24, 25, 0);
    pl_logcache_free(c);
}
END_TEST

START_TEST(empty_entries_and_null)
{
    pl_logcache *c = pl_logcache_new(8, 1 << 20);
    pl_log_entry e = { 3, 1, NULL, 0 };
    pl_logcache_add(c, &e, 1);
    uint8_t *data[1];
    size_t len[1] = { 99 };
    ck_assert_int_eq(pl_logcache_take(c, 3, 3, data, len), 1);
    ck_assert_uint_eq(len[0], 0);
    ck_assert_ptr_nonnull(data[0]);
    free(data[0]);
    ck_assert_msg(take_none(c, 5, 4), "an empty range hands over nothing");
    pl_logcache_free(c);
    /* no cache (out of memory): every call is a miss, none crashes */
    ck_assert_ptr_null(pl_logcache_new(0, 100));
    pl_logcache_add(NULL, &e, 1);
    pl_logcache_cut(NULL, 0);
    pl_logcache_clear(NULL);
    ck_assert_int_eq(pl_logcache_take(NULL, 3, 3, data, len), 0);
    ck_assert_uint_eq(pl_logcache_count(NULL), 0);
    pl_logcache_free(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("logcache");
    TCase *tc = tcase_create("logcache");
    tcase_add_test(tc, hands_over_in_order);
    tcase_add_test(tc, below_is_dropped_above_is_a_miss);
    tcase_add_test(tc, cut_then_replaced);
    tcase_add_test(tc, not_the_next_op_starts_over);
    tcase_add_test(tc, full_drops_the_oldest);
    tcase_add_test(tc, empty_entries_and_null);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
