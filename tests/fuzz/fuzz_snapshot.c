/*
 * tests/fuzz/fuzz_snapshot.c — state transfer snapshots (core/snapshot.c):
 * the bytes a lagging server receives from the primary when the log entries
 * it misses were compacted away, imported into a json store that already
 * holds some state, as parleyd does.
 *
 * Input: the snapshot without its trailing 32-byte BLAKE2b, which the
 * target appends (a fuzzer cannot forge the checksum, and the parser behind
 * it is what needs exercising). Properties, as snapshot.h promises:
 *   - a refused snapshot changes nothing (the store reads the same after);
 *   - an accepted one sets applied_op to the snapshot's op, and what it
 *     exports imports again to the same bytes (export is canonical).
 */
#include <dirent.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <parley/store.h>

#include "fuzz.h"
#include "loader.h"
#include "snapshot.h"

static pl_plugin *plugin;
static const pl_store_plugin *sp;
static char dir[256];

static void quiet_log(void *ud, int level, const char *fmt, ...)
{
    (void)ud;
    (void)level;
    (void)fmt;
}

static const pl_store_host host = { PL_STORE_ABI_VERSION, NULL, quiet_log };
static const pl_store_options sopts = { dir, 0, "{\"name\":\"json\"}" };

static void rm_dir_contents(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
}

static void cleanup(void)
{
    rm_dir_contents();
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[512];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/parley-fuzz-snap-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (sodium_init() < 0 || !mkdtemp(dir)) {
        perror("fuzz_snapshot: set-up");
        exit(1);
    }
    atexit(cleanup);
    plugin = pl_plugin_load("store", FUZZ_PLUGIN, NULL, err, sizeof err);
    if (!plugin || !(sp = pl_plugin_store(plugin))) {
        fprintf(stderr, "fuzz_snapshot: %s\n", plugin ? "not a store" : err);
        exit(1);
    }
    return 0;
}

#define S(lit) ((pl_str){ (lit), (uint32_t)(sizeof(lit) - 1) })

/* What the server held before the snapshot came: two accounts, a session,
 * messages both ways, applied up to op 3. */
static void populate(pl_store *s)
{
    static const char th[32] = "abcdefghijklmnopqrstuvwxyz01234";
    pl_account_rec a1 = { 1, S("old1"), S("$argon2id$old1"), 10 };
    pl_account_rec a2 = { 2, S("old2"), S("$argon2id$old2"), 11 };
    pl_session_rec se = { { th, 32 }, 1, 12 };
    pl_message_rec m1 = { 1, 1, 2, S("old1"), S("old2"), S("before"), 13, 0 };
    pl_message_rec m2 = { 2, 2, 1, S("old2"), S("old1"), S("reply"), 14, PL_MSGF_READ };
    FUZZ_CHECK(sp->begin(s) == PL_OK && sp->account_put(s, &a1) == PL_OK &&
                   sp->account_put(s, &a2) == PL_OK && sp->session_put(s, &se) == PL_OK &&
                   sp->message_put(s, &m1) == PL_OK && sp->message_put(s, &m2) == PL_OK &&
                   sp->meta_set(s, "next_uid", 3) == PL_OK &&
                   sp->meta_set(s, "next_msg_id", 3) == PL_OK && sp->commit(s, 3) == PL_OK,
               "cannot build the starting state");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 20))
        return 0;
    uint8_t *snap = malloc(size + 32);
    FUZZ_CHECK(snap, "out of memory");
    if (size)
        memcpy(snap, data, size);
    crypto_generichash(snap + size, 32, snap, size, NULL, 0);

    char err[512];
    pl_store *s = NULL;
    rm_dir_contents();
    FUZZ_CHECK(sp->open(&host, &sopts, &s, err, sizeof err) == PL_OK, "open: %s", err);
    populate(s);

    uint8_t *before = NULL, *after = NULL, *again = NULL;
    size_t lb, la, lg;
    uint64_t op, opb, opa, opg;
    FUZZ_CHECK(pl_snapshot_export(sp, s, 1, &before, &lb, &opb) == PL_OK, "export failed");

    int rc = pl_snapshot_import(sp, s, snap, size + 32);
    if (rc != PL_OK) {
        FUZZ_CHECK(pl_snapshot_export(sp, s, 1, &after, &la, &opa) == PL_OK, "export failed");
        FUZZ_CHECK(la == lb && memcmp(before, after, lb) == 0 && opa == opb,
                   "a refused snapshot (%s) changed the state", pl_strerror(rc));
    } else {
        uint64_t view;
        FUZZ_CHECK(pl_snapshot_peek(snap, size + 32, &op, &view) == PL_OK, "peek failed");
        FUZZ_CHECK(sp->applied_op(s) == op, "applied_op %llu after importing op %llu",
                   (unsigned long long)sp->applied_op(s), (unsigned long long)op);
        FUZZ_CHECK(pl_snapshot_export(sp, s, view, &after, &la, &opa) == PL_OK, "export failed");
        rc = pl_snapshot_import(sp, s, after, la);
        FUZZ_CHECK(rc == PL_OK, "an exported snapshot does not import: %s", pl_strerror(rc));
        FUZZ_CHECK(pl_snapshot_export(sp, s, view, &again, &lg, &opg) == PL_OK, "export failed");
        FUZZ_CHECK(lg == la && memcmp(after, again, la) == 0,
                   "export is not canonical: %zu bytes, then %zu", la, lg);
    }
    sp->close(s);
    free(before);
    free(after);
    free(again);
    free(snap);
    return 0;
}
