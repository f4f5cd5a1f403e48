/*
 * tests/unit/test_workers.c — the Argon2id worker pool (core/workers.c):
 * results come back on the loop thread, a full queue says PL_ERR_BUSY, a
 * stopped pool says PL_ERR_UNAVAILABLE, and freeing finishes queued jobs.
 * Argon2id runs at its minimum cost except where a job must stay busy.
 */
#include <check.h>
#include <event2/event.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers.h"

#define OPS_MIN 1u
#define MEM_MIN 8192u

static pthread_t loop_thread;
static int n_done;
static int last_err;
static char last_hash[crypto_pwhash_STRBYTES];
static int off_thread;

static void on_hash(void *ud, int err, const char *hash)
{
    (void)ud;
    if (!pthread_equal(pthread_self(), loop_thread))
        off_thread = 1;
    last_err = err;
    if (hash)
        snprintf(last_hash, sizeof last_hash, "%s", hash);
    n_done++;
}

static void on_verify(void *ud, int err)
{
    (void)ud;
    if (!pthread_equal(pthread_self(), loop_thread))
        off_thread = 1;
    last_err = err;
    n_done++;
}

static void wait_done(struct event_base *base, int want)
{
    for (int i = 0; i < 10000 && n_done < want; i++)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert_msg(n_done == want, "%d callbacks ran, wanted %d", n_done, want);
}

static void reset(void)
{
    loop_thread = pthread_self();
    n_done = 0;
    last_err = -1;
    off_thread = 0;
    last_hash[0] = '\0';
}

START_TEST(hash_and_verify)
{
    char err[256];
    reset();
    struct event_base *base = event_base_new();
    pl_workers *w = pl_workers_new(base, 2, 8, OPS_MIN, MEM_MIN, err, sizeof err);
    ck_assert_msg(w != NULL, "pl_workers_new: %s", err);

    ck_assert_int_eq(pl_workers_hash(w, pl_str_c("correct horse"), on_hash, NULL), PL_OK);
    ck_assert_msg(n_done == 0, "the callback never runs inside submit");
    wait_done(base, 1);
    ck_assert_int_eq(last_err, PL_OK);
    ck_assert_msg(strncmp(last_hash, "$argon2id$", 10) == 0, "an Argon2id string: %s", last_hash);

    ck_assert_int_eq(pl_workers_verify(w, pl_str_c(last_hash), pl_str_c("correct horse"),
                                       on_verify, NULL), PL_OK);
    wait_done(base, 2);
    ck_assert_msg(last_err == PL_OK, "the right password verifies");

    ck_assert_int_eq(pl_workers_verify(w, pl_str_c(last_hash), pl_str_c("wrong horse"),
                                       on_verify, NULL), PL_OK);
    wait_done(base, 3);
    ck_assert_msg(last_err == PL_ERR_AUTH, "a wrong password is PL_ERR_AUTH");

    ck_assert_int_eq(pl_workers_verify(w, pl_str_c("not a hash"), pl_str_c("correct horse"),
                                       on_verify, NULL), PL_OK);
    wait_done(base, 4);
    ck_assert_msg(last_err == PL_ERR_AUTH, "a garbage stored hash fails verification");

    ck_assert_msg(!off_thread, "every callback ran on the loop thread");
    ck_assert_uint_eq(pl_workers_pending(w), 0);
    pl_workers_free(w);
    event_base_free(base);
}
END_TEST

/* Issue 21: an imported PBKDF2-HMAC-SHA256 hash (made by Python's
 * hashlib.pbkdf2_hmac, 100,000 iterations, as the prototype did) verifies
 * the right password, refuses a wrong one, and a rehash hands back an
 * Argon2id string of the same password. */
#define PROTO_HASH "$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw==$" \
                   "trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnvalM="
#define PROTO_PW "p\xc3\xa4ssw\xc3\xb6rd"   /* "pässwörd" in UTF-8 */

START_TEST(pbkdf2_verify_and_rehash)
{
    char err[256];
    reset();
    struct event_base *base = event_base_new();
    pl_workers *w = pl_workers_new(base, 1, 8, OPS_MIN, MEM_MIN, err, sizeof err);
    ck_assert_msg(w != NULL, "pl_workers_new: %s", err);

    ck_assert_int_eq(pl_workers_verify(w, pl_str_c(PROTO_HASH), pl_str_c(PROTO_PW), on_verify,
                                       NULL), PL_OK);
    wait_done(base, 1);
    ck_assert_msg(last_err == PL_OK, "the prototype's password verifies: %d", last_err);
    ck_assert_int_eq(pl_workers_verify(w, pl_str_c(PROTO_HASH), pl_str_c("passwörd"), on_verify,
                                       NULL), PL_OK);
    wait_done(base, 2);
    ck_assert_msg(last_err == PL_ERR_AUTH, "a wrong password does not: %d", last_err);

    ck_assert_int_eq(pl_workers_verify_rehash(w, pl_str_c(PROTO_HASH), pl_str_c(PROTO_PW),
                                              on_hash, NULL), PL_OK);
    wait_done(base, 3);
    ck_assert_int_eq(last_err, PL_OK);
    ck_assert_msg(strncmp(last_hash, "$argon2id$", 10) == 0, "rehash gives Argon2id: %s",
                  last_hash);
    ck_assert_msg(crypto_pwhash_str_verify(last_hash, PROTO_PW, strlen(PROTO_PW)) == 0,
                  "the new hash is of the same password");

    last_hash[0] = '\0';
    ck_assert_int_eq(pl_workers_verify_rehash(w, pl_str_c(PROTO_HASH), pl_str_c("wrong pw"),
                                              on_hash, NULL), PL_OK);
    wait_done(base, 4);
    ck_assert_msg(last_err == PL_ERR_AUTH && !last_hash[0], "a wrong password: no hash");

    /* An Argon2id hash through the rehash job: verified, nothing to replace. */
    char a2[crypto_pwhash_STRBYTES];
    ck_assert_int_eq(crypto_pwhash_str(a2, "correct horse", 13, OPS_MIN, MEM_MIN), 0);
    ck_assert_int_eq(pl_workers_verify_rehash(w, pl_str_c(a2), pl_str_c("correct horse"),
                                              on_hash, NULL), PL_OK);
    wait_done(base, 5);
    ck_assert_msg(last_err == PL_OK && !last_hash[0], "Argon2id: ok, no new hash");

    /* Damaged imported hashes never verify. */
    static const char *const bad[] = {
        "$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw==",
        "$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0O$trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnvalM=",
        "$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw==$trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnval",
        "$pbkdf2-sha256$i=1000$AAECAwQFBgcICQoLDA0ODw==$trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnvalM=",
    };
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(pl_workers_verify(w, pl_str_c(bad[i]), pl_str_c(PROTO_PW), on_verify,
                                           NULL), PL_OK);
        wait_done(base, 6 + i);
        ck_assert_msg(last_err == PL_ERR_AUTH, "damaged hash %d refused", i);
    }
    ck_assert_msg(!off_thread, "callbacks run on the loop thread");
    pl_workers_free(w);
    event_base_free(base);
}
END_TEST

START_TEST(busy_when_full)
{
    char err[256];
    reset();
    struct event_base *base = event_base_new();
    /* One thread, one waiting slot, and a cost that keeps the first job
     * running while we submit more. */
    pl_workers *w = pl_workers_new(base, 1, 1, 3, 32u * 1024 * 1024, err, sizeof err);
    ck_assert_msg(w != NULL, "pl_workers_new: %s", err);
    int accepted = 0, busy = 0;
    for (int i = 0; i < 4; i++) {
        int rc = pl_workers_hash(w, pl_str_c("correct horse"), on_hash, NULL);
        if (rc == PL_OK)
            accepted++;
        else if (rc == PL_ERR_BUSY)
            busy++;
    }
    ck_assert_msg(busy > 0 && accepted <= 2,
                  "a full queue refuses with PL_ERR_BUSY (accepted %d, busy %d)", accepted, busy);
    ck_assert_uint_eq(pl_workers_pending(w), (unsigned)accepted);
    wait_done(base, accepted);
    pl_workers_free(w);
    event_base_free(base);
}
END_TEST

START_TEST(stop_and_free_finish_jobs)
{
    char err[256];
    reset();
    struct event_base *base = event_base_new();
    pl_workers *w = pl_workers_new(base, 1, 8, OPS_MIN, MEM_MIN, err, sizeof err);
    ck_assert_msg(w != NULL, "pl_workers_new: %s", err);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(pl_workers_hash(w, pl_str_c("correct horse"), on_hash, NULL), PL_OK);
    pl_workers_stop(w);
    ck_assert_msg(pl_workers_hash(w, pl_str_c("correct horse"), on_hash, NULL) == PL_ERR_UNAVAILABLE,
                  "a stopped pool takes no new jobs");
    pl_workers_free(w); /* no loop run: free must finish and deliver all three */
    ck_assert_msg(n_done == 3, "free ran every queued job's callback (%d of 3)", n_done);
    ck_assert_msg(!off_thread, "callbacks from free run on the calling thread");
    event_base_free(base);
}
END_TEST

START_TEST(bad_arguments)
{
    char err[256];
    struct event_base *base = event_base_new();
    ck_assert_ptr_null(pl_workers_new(base, 0, 8, OPS_MIN, MEM_MIN, err, sizeof err));
    ck_assert_msg(strstr(err, "threads") != NULL, "the error names the limit: %s", err);
    ck_assert_ptr_null(pl_workers_new(base, 1, 0, OPS_MIN, MEM_MIN, err, sizeof err));
    event_base_free(base);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("workers");
    TCase *tc = tcase_create("workers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, hash_and_verify);
    tcase_add_test(tc, busy_when_full);
    tcase_add_test(tc, pbkdf2_verify_and_rehash);
    tcase_add_test(tc, stop_and_free_finish_jobs);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
