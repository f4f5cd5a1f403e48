/*
 * tests/fuzz/fuzz_store_json.c — the json store's loaders: checkpoint.json,
 * meta.json and log.jsonl as found on disk after a crash, a bad disk or a
 * careless edit, opened through the plugin like parleyd opens it.
 *
 * Input: the three files' bytes separated by NUL bytes, in that order
 * (checkpoint \0 meta \0 log). A missing part means the file is absent.
 * Each run writes them into a private temporary directory and opens the
 * store (sync off). The store must either refuse with a one-line error, or
 * open; an opened store must then answer every read, accept one appended
 * log entry after its last one, and after close and reopen hold exactly the
 * same state and log (what the first open repaired stays repaired).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <parley/store.h>

#include "fuzz.h"
#include "loader.h"

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
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        unlinkat(dirfd(d), e->d_name, 0);
    }
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
    snprintf(dir, sizeof dir, "%s/parley-fuzz-store-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz_store_json: mkdtemp");
        exit(1);
    }
    atexit(cleanup);
    plugin = pl_plugin_load("store", FUZZ_PLUGIN, NULL, err, sizeof err);
    if (!plugin || !(sp = pl_plugin_store(plugin))) {
        fprintf(stderr, "fuzz_store_json: %s\n", plugin ? "not a store" : err);
        exit(1);
    }
    return 0;
}

static void put_file(const char *name, const uint8_t *p, size_t n)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FUZZ_CHECK(fd >= 0, "cannot create %s", path);
    while (n) {
        ssize_t w = write(fd, p, n);
        FUZZ_CHECK(w > 0, "cannot write %s", path);
        p += w;
        n -= (size_t)w;
    }
    close(fd);
}

/* FNV-1a over everything the store says, so two opens can be compared. */
typedef struct digest {
    uint64_t h;
    uint64_t count;
} digest;

static void mix(digest *d, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        d->h = (d->h ^ b[i]) * 1099511628211ull;
}

static void mix_u64(digest *d, uint64_t v)
{
    mix(d, &v, sizeof v);
}

static void mix_str(digest *d, pl_str s)
{
    FUZZ_CHECK(s.len == 0 || s.ptr, "string of %u bytes without a pointer", s.len);
    mix_u64(d, s.len);
    mix(d, s.ptr, s.len);
}

static int on_log(void *ud, const pl_log_entry *e)
{
    digest *d = ud;
    mix_u64(d, e->op);
    mix_u64(d, e->view);
    FUZZ_CHECK(e->len == 0 || e->data, "log entry without data");
    mix_u64(d, e->len);
    mix(d, e->data, e->len);
    d->count++;
    return 0;
}

static int on_acc(void *ud, const pl_account_rec *a)
{
    digest *d = ud;
    mix_u64(d, a->uid);
    mix_str(d, a->name);
    mix_str(d, a->pwhash);
    mix_u64(d, a->created_ms);
    return 0;
}

static int on_ses(void *ud, const pl_session_rec *s)
{
    digest *d = ud;
    mix_str(d, s->token_hash);
    mix_u64(d, s->uid);
    mix_u64(d, s->created_ms);
    return 0;
}

static int on_msg(void *ud, const pl_message_rec *m)
{
    digest *d = ud;
    mix_u64(d, m->id);
    mix_u64(d, m->from_uid);
    mix_u64(d, m->to_uid);
    mix_str(d, m->from_name);
    mix_str(d, m->to_name);
    mix_str(d, m->body);
    mix_u64(d, m->time_ms);
    mix_u64(d, m->flags);
    return 0;
}

static int on_cli(void *ud, const pl_client_rec *c)
{
    digest *d = ud;
    mix_u64(d, c->client_id);
    mix_u64(d, c->request_no);
    mix_u64(d, c->op);
    mix_str(d, c->reply);
    return 0;
}

/* Read everything; returns the digest. Every read must succeed on a store
 * that opened. */
static uint64_t read_all(pl_store *s, uint64_t *first, uint64_t *last)
{
    digest d = { 14695981039346656037ull, 0 };
    static const char *const keys[] = { "view", "lnv", "commit", "applied", "next_uid", "next_id" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        uint64_t v = 0;
        int rc = sp->meta_get(s, keys[i], &v);
        FUZZ_CHECK(rc == PL_OK || rc == PL_ERR_NOT_FOUND, "meta_get(%s): %s", keys[i], pl_strerror(rc));
        mix_u64(&d, rc == PL_OK ? v : 0xdeadull);
    }
    int rc = sp->log_bounds(s, first, last);
    FUZZ_CHECK(rc == PL_OK, "log_bounds: %s", pl_strerror(rc));
    FUZZ_CHECK(*first <= *last || (*first == 0 && *last == 0) || *first == *last + 1,
               "log bounds %llu..%llu", (unsigned long long)*first, (unsigned long long)*last);
    mix_u64(&d, *first);
    mix_u64(&d, *last);
    if (*last) {
        rc = sp->log_read(s, *first, *last, on_log, &d);
        FUZZ_CHECK(rc == PL_OK, "log_read %llu..%llu: %s", (unsigned long long)*first,
                   (unsigned long long)*last, pl_strerror(rc));
    }
    mix_u64(&d, sp->applied_op(s));
    pl_str all = { NULL, 0 };
    FUZZ_CHECK(sp->account_scan(s, all, on_acc, &d) == PL_OK, "account_scan failed");
    FUZZ_CHECK(sp->session_scan(s, on_ses, &d) == PL_OK, "session_scan failed");
    pl_msg_query q = { .kind = PL_Q_ALL };
    FUZZ_CHECK(sp->message_scan(s, &q, on_msg, &d) == PL_OK, "message_scan failed");
    FUZZ_CHECK(sp->client_scan(s, on_cli, &d) == PL_OK, "client_scan failed");
    uint64_t n = 0;
    FUZZ_CHECK(sp->account_count(s, &n) == PL_OK, "account_count failed");
    mix_u64(&d, n);
    return d.h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[3] = { "checkpoint.json", "meta.json", "log.jsonl" };
    char err[512];
    rm_dir_contents();
    size_t off = 0;
    for (int i = 0; i < 3 && off <= size; i++) {
        const uint8_t *nul = memchr(data + off, 0, size - off);
        size_t n = nul ? (size_t)(nul - (data + off)) : size - off;
        if (i < 2 || !nul)
            put_file(names[i], data + off, n);
        else
            put_file(names[i], data + off, size - off); /* the log takes the rest */
        off += n + 1;
        if (!nul)
            break;
    }

    pl_store *s = NULL;
    err[0] = 0;
    int rc = sp->open(&host, &sopts, &s, err, sizeof err);
    if (rc != PL_OK) {
        FUZZ_CHECK(!s, "open failed but returned a store");
        FUZZ_CHECK(err[0] && !strchr(err, '\n'), "open failed without a one-line reason: \"%s\"", err);
        return 0;
    }
    uint64_t first, last;
    uint64_t h1 = read_all(s, &first, &last);

    /* The log must take the next entry after whatever it kept. */
    if (last < UINT64_MAX - 1) {
        static const uint8_t blob[] = "fuzz";
        pl_log_entry e = { last + 1, 1, blob, 4 };
        rc = sp->log_append(s, &e, 1);
        FUZZ_CHECK(rc == PL_OK, "log_append after op %llu: %s", (unsigned long long)last,
                   pl_strerror(rc));
        rc = sp->log_truncate(s, last);
        FUZZ_CHECK(rc == PL_OK, "log_truncate to %llu: %s", (unsigned long long)last,
                   pl_strerror(rc));
    }
    sp->close(s);

    s = NULL;
    rc = sp->open(&host, &sopts, &s, err, sizeof err);
    FUZZ_CHECK(rc == PL_OK, "a store that opened once does not reopen: %s", err);
    uint64_t f2, l2;
    uint64_t h2 = read_all(s, &f2, &l2);
    FUZZ_CHECK(h1 == h2 && first == f2 && last == l2,
               "state changed across close and reopen (log %llu..%llu, then %llu..%llu)",
               (unsigned long long)first, (unsigned long long)last, (unsigned long long)f2,
               (unsigned long long)l2);
    sp->close(s);
    return 0;
}
