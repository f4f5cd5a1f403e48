/*
 * tests/unit/test_loader.c — the plugin loader's errors and search order.
 *
 * Arguments (from tests/unit/meson.build):
 *   bad_abi.so no_symbol.so init_fail.so real_store.so transport_v1.so transport_future.so
 * Each test checks one failure and that its one-line message names what an
 * operator needs: the places looked, the symbol, both ABI versions, the
 * plugin's own open error.
 */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader.h"
#include "pl_build_config.h"

static const char *bad_abi_so, *no_symbol_so, *init_fail_so, *real_so;
static const char *transport_v1_so, *transport_future_so;

#define ERRLEN 4096

/* Absolute path of a test module, so it can be symlinked from a temp dir. */
static void abs_path(const char *p, char *out, size_t len)
{
    char *r = realpath(p, NULL);

    ck_assert_msg(r != NULL, "realpath(%s): %s", p, strerror(errno));
    ck_assert_uint_lt(strlen(r), len);
    strcpy(out, r);
    free(r);
}

static void make_tmpdir(char *out, size_t len)
{
    const char *t = getenv("TMPDIR");

    snprintf(out, len, "%s/pl-loader-XXXXXX", t && *t ? t : "/tmp");
    ck_assert_msg(mkdtemp(out) != NULL, "mkdtemp(%s): %s", out, strerror(errno));
}

/* Place `target` in dir under the file name a short name resolves to. */
static void plant(const char *dir, const char *file, const char *target)
{
    char link[PATH_MAX + 64], abs[PATH_MAX];

    abs_path(target, abs, sizeof abs);
    snprintf(link, sizeof link, "%s/%s", dir, file);
    ck_assert_msg(symlink(abs, link) == 0, "symlink %s: %s", link, strerror(errno));
}

static void unplant(const char *dir, const char *file)
{
    char link[PATH_MAX + 64];

    snprintf(link, sizeof link, "%s/%s", dir, file);
    unlink(link);
    rmdir(dir);
}

START_TEST(missing_short_name_lists_places)
{
    char err[ERRLEN], want[PATH_MAX + 64];
    pl_plugin *p;

    setenv("PARLEY_PLUGIN_DIR", "/nonexistent-env-dir", 1);
    p = pl_plugin_load("store", "nosuch", "/nonexistent-cfg-dir", err, sizeof err);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "plugin \"nosuch\": not found (looked in: ") == err,
                  "wrong prefix: %s", err);
    ck_assert_msg(strstr(err, "/nonexistent-cfg-dir/parley-store-nosuch.so, "
                              "/nonexistent-env-dir/parley-store-nosuch.so, ") != NULL,
                  "config dir then env dir not listed in order: %s", err);
    /* This test binary runs from the build tree, so that folder is searched. */
    snprintf(want, sizeof want, "%s/plugins/store-nosuch/parley-store-nosuch.so",
             PL_BUILD_ROOT);
    ck_assert_msg(strstr(err, want) != NULL, "build tree %s not listed: %s", want, err);
    snprintf(want, sizeof want, "%s/parley-store-nosuch.so)", PL_PLUGIN_INSTALL_DIR);
    ck_assert_msg(strstr(err, want) != NULL, "install dir %s not listed last: %s", want, err);
    ck_assert_msg(strchr(err, '\n') == NULL, "error is not one line: %s", err);
}
END_TEST

START_TEST(missing_path_names_path)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("store", "/no/such/dir/plugin.so", NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_str_eq(err, "plugin \"/no/such/dir/plugin.so\": not found "
                          "(looked in: /no/such/dir/plugin.so)");
}
END_TEST

START_TEST(not_a_shared_object)
{
    char dir[PATH_MAX], file[PATH_MAX + 32], err[ERRLEN];
    FILE *f;
    pl_plugin *p;

    make_tmpdir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/garbage.so", dir);
    f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fputs("not an ELF file\n", f);
    fclose(f);
    p = pl_plugin_load("store", file, NULL, err, sizeof err);
    unlink(file);
    rmdir(dir);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "cannot load: ") != NULL, "no dlopen reason: %s", err);
    ck_assert_msg(strstr(err, file) != NULL, "path not named: %s", err);
}
END_TEST

START_TEST(missing_symbol_named)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("store", no_symbol_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "symbol parley_store_plugin missing") != NULL,
                  "symbol not named: %s", err);
    ck_assert_msg(strstr(err, no_symbol_so) != NULL, "path not named: %s", err);
}
END_TEST

START_TEST(transport_member_missing_named)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("transport", no_symbol_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "transport descriptor member server_start is NULL") != NULL,
                  "missing member not named: %s", err);
}
END_TEST

START_TEST(abi_mismatch_names_both)
{
    char err[ERRLEN], want[128];
    pl_plugin *p = pl_plugin_load("store", bad_abi_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    snprintf(want, sizeof want, ": ABI version 999, this parley speaks %u",
             (unsigned)PL_STORE_ABI_VERSION);
    ck_assert_msg(strstr(err, want) != NULL, "want \"%s\" in: %s", want, err);
}
END_TEST

/* transport.h: a transport built for an older ABI still loads (the core
 * checks its version before reading newer members); a newer one does not. */
START_TEST(older_transport_abi_loads)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("transport", transport_v1_so, NULL, err, sizeof err);

    ck_assert_msg(p != NULL, "a transport of ABI version 1 was refused: %s", err);
    ck_assert_uint_eq(pl_plugin_transport(p)->abi_version, 1);
    pl_plugin_unload(p);
}
END_TEST

START_TEST(newer_transport_abi_refused)
{
    char err[ERRLEN], want[160];
    pl_plugin *p = pl_plugin_load("transport", transport_future_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    snprintf(want, sizeof want, ": ABI version %u, this parley speaks %u (and loads transports "
             "of %u to %u)", (unsigned)PL_TRANSPORT_ABI_VERSION + 1,
             (unsigned)PL_TRANSPORT_ABI_VERSION, (unsigned)PL_TRANSPORT_ABI_MIN,
             (unsigned)PL_TRANSPORT_ABI_VERSION);
    ck_assert_msg(strstr(err, want) != NULL, "want \"%s\" in: %s", want, err);
}
END_TEST

START_TEST(init_failure_carries_plugin_message)
{
    char err[ERRLEN], dir[PATH_MAX];
    pl_plugin *p = pl_plugin_load("store", init_fail_so, NULL, err, sizeof err);
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, NULL };
    pl_store_options opt;
    pl_store *st = (pl_store *)&opt; /* must be reset to NULL on failure */
    int rc;

    ck_assert_msg(p != NULL, "complete descriptor refused: %s", err);
    ck_assert_ptr_nonnull(pl_plugin_store(p));
    ck_assert_ptr_null(pl_plugin_transport(p));
    /* it exports no minor version: none of the later members is read */
    ck_assert_uint_eq(pl_plugin_store_minor(p), 0);
    make_tmpdir(dir, sizeof dir);
    opt.dir = dir;
    opt.sync = 0;
    opt.options_json = NULL;
    rc = pl_plugin_store_open(p, &host, &opt, &st, err, sizeof err);
    rmdir(dir);
    ck_assert_int_eq(rc, PL_ERR_IO);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, ": open failed: init_fail: refusing to open on purpose") != NULL,
                  "plugin message lost: %s", err);
    ck_assert_msg(strstr(err, init_fail_so) != NULL, "path not named: %s", err);
    pl_plugin_unload(p);
}
END_TEST

START_TEST(real_store_loads_by_path)
{
    char err[ERRLEN], dir[PATH_MAX];
    pl_plugin *p = pl_plugin_load("store", real_so, NULL, err, sizeof err);
    const pl_store_plugin *sp;
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, NULL };
    pl_store_options opt;
    pl_store *st = NULL;
    char cmd[PATH_MAX + 16];
    int rc;

    ck_assert_msg(p != NULL, "real store refused: %s", err);
    sp = pl_plugin_store(p);
    ck_assert_ptr_nonnull(sp);
    ck_assert_ptr_null(pl_plugin_transport(p));
    ck_assert_str_eq(pl_plugin_path(p), real_so);
    ck_assert_uint_eq(sp->abi_version, PL_STORE_ABI_VERSION);
    ck_assert_uint_eq(pl_plugin_store_minor(p), PL_STORE_ABI_MINOR);
    ck_assert_ptr_nonnull(sp->log_append_nosync);
    ck_assert_ptr_nonnull(sp->log_sync);

    make_tmpdir(dir, sizeof dir);
    opt.dir = dir;
    opt.sync = 0;
    opt.options_json = NULL;
    rc = pl_plugin_store_open(p, &host, &opt, &st, err, sizeof err);
    if (rc == PL_OK && st)
        sp->close(st);
    pl_plugin_unload(p);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(rc == PL_OK, "open in a fresh directory failed: %s", err);
    ck_assert_ptr_nonnull(st);
}
END_TEST

START_TEST(kind_mismatch_refused)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("transport", real_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "symbol parley_transport_plugin missing "
                              "(this is a store plugin, not a transport)") != NULL,
                  "kind mix-up not explained: %s", err);
}
END_TEST

START_TEST(unknown_kind_refused)
{
    char err[ERRLEN];
    pl_plugin *p = pl_plugin_load("codec", real_so, NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "unknown plugin kind \"codec\"") != NULL, "%s", err);
}
END_TEST

START_TEST(env_dir_honoured)
{
    char dir[PATH_MAX], err[ERRLEN], want[PATH_MAX + 64];
    pl_plugin *p;

    make_tmpdir(dir, sizeof dir);
    plant(dir, "parley-store-initfail.so", init_fail_so);
    setenv("PARLEY_PLUGIN_DIR", dir, 1);
    p = pl_plugin_load("store", "initfail", NULL, err, sizeof err);
    unplant(dir, "parley-store-initfail.so");
    ck_assert_msg(p != NULL, "not found through PARLEY_PLUGIN_DIR: %s", err);
    snprintf(want, sizeof want, "%s/parley-store-initfail.so", dir);
    ck_assert_str_eq(pl_plugin_path(p), want);
    ck_assert_str_eq(pl_plugin_store(p)->name, "init_fail");
    pl_plugin_unload(p);
}
END_TEST

START_TEST(config_dir_before_env_dir)
{
    char cfg[PATH_MAX], env[PATH_MAX], err[ERRLEN];
    pl_plugin *p;

    make_tmpdir(cfg, sizeof cfg);
    make_tmpdir(env, sizeof env);
    plant(cfg, "parley-store-x.so", init_fail_so);
    plant(env, "parley-store-x.so", bad_abi_so);
    setenv("PARLEY_PLUGIN_DIR", env, 1);
    p = pl_plugin_load("store", "x", cfg, err, sizeof err);
    unplant(cfg, "parley-store-x.so");
    unplant(env, "parley-store-x.so");
    ck_assert_msg(p != NULL, "plugin_dir not searched first: %s", err);
    ck_assert_str_eq(pl_plugin_store(p)->name, "init_fail");
    pl_plugin_unload(p);
}
END_TEST

/* A file that is found but broken is reported, not skipped in favour of a
 * later directory: silently loading another copy hides the operator's
 * mistake. */
START_TEST(broken_first_match_reported)
{
    char cfg[PATH_MAX], env[PATH_MAX], err[ERRLEN];
    pl_plugin *p;

    make_tmpdir(cfg, sizeof cfg);
    make_tmpdir(env, sizeof env);
    plant(cfg, "parley-store-y.so", bad_abi_so);
    plant(env, "parley-store-y.so", init_fail_so);
    setenv("PARLEY_PLUGIN_DIR", env, 1);
    p = pl_plugin_load("store", "y", cfg, err, sizeof err);
    unplant(cfg, "parley-store-y.so");
    unplant(env, "parley-store-y.so");
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(err, "plugin \"y\" (") == err, "short name not named: %s", err);
    ck_assert_msg(strstr(err, "ABI version 999") != NULL, "%s", err);
}
END_TEST

START_TEST(build_tree_searched)
{
    char err[ERRLEN], want[PATH_MAX + 64];
    const char *real_name;
    pl_plugin *p, *q;

    /* Learn the real store's short name from its descriptor, then load it
     * by that name with no directory configured: only the build tree has it. */
    unsetenv("PARLEY_PLUGIN_DIR");
    p = pl_plugin_load("store", real_so, NULL, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    real_name = pl_plugin_store(p)->name;
    q = pl_plugin_load("store", real_name, NULL, err, sizeof err);
    ck_assert_msg(q != NULL, "short name \"%s\" not found in the build tree: %s",
                  real_name, err);
    snprintf(want, sizeof want, "%s/plugins/store-%s/parley-store-%s.so",
             PL_BUILD_ROOT, real_name, real_name);
    ck_assert_str_eq(pl_plugin_path(q), want);
    pl_plugin_unload(q);
    pl_plugin_unload(p);
}
END_TEST

START_TEST(empty_name_and_small_buffer)
{
    char err[16];
    pl_plugin *p = pl_plugin_load("store", "", NULL, err, sizeof err);

    ck_assert_ptr_null(p);
    ck_assert_uint_lt(strlen(err), sizeof err);
    /* A long not-found list must be cut, never overflow. */
    p = pl_plugin_load("store", "a-name-that-does-not-exist", "/some/dir", err, sizeof err);
    ck_assert_ptr_null(p);
    ck_assert_uint_eq(strlen(err), sizeof err - 1);
    ck_assert_ptr_null(pl_plugin_load("store", "nosuch", NULL, NULL, 0));
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("errors");

    tcase_add_test(tc, missing_short_name_lists_places);
    tcase_add_test(tc, missing_path_names_path);
    tcase_add_test(tc, not_a_shared_object);
    tcase_add_test(tc, missing_symbol_named);
    tcase_add_test(tc, transport_member_missing_named);
    tcase_add_test(tc, older_transport_abi_loads);
    tcase_add_test(tc, newer_transport_abi_refused);
    tcase_add_test(tc, abi_mismatch_names_both);
    tcase_add_test(tc, init_failure_carries_plugin_message);
    tcase_add_test(tc, kind_mismatch_refused);
    tcase_add_test(tc, unknown_kind_refused);
    tcase_add_test(tc, empty_name_and_small_buffer);
    suite_add_tcase(s, tc);

    tc = tcase_create("search");
    tcase_add_test(tc, real_store_loads_by_path);
    tcase_add_test(tc, env_dir_honoured);
    tcase_add_test(tc, config_dir_before_env_dir);
    tcase_add_test(tc, broken_first_match_reported);
    tcase_add_test(tc, build_tree_searched);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    SRunner *sr;
    int failed;

    if (argc != 7) {
        fprintf(stderr, "usage: %s bad_abi.so no_symbol.so init_fail.so real_store.so "
                "transport_v1.so transport_future.so\n", argv[0]);
        return 2;
    }
    bad_abi_so = argv[1];
    no_symbol_so = argv[2];
    init_fail_so = argv[3];
    real_so = argv[4];
    transport_v1_so = argv[5];
    transport_future_so = argv[6];

    sr = srunner_create(loader_suite());
    /* Each test sets PARLEY_PLUGIN_DIR for itself; forking keeps that
     * from leaking into the next test. */
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
