/*
 * store_json.c — the "json" store plugin: everything durable on one server
 * as human-readable files in the data directory, the state in memory.
 *
 * Files in <dir> (created 0700; files 0600)
 *   log.jsonl        the replicated log, append-only, one entry per line:
 *                      {"op":12,"view":3,"len":5,"data":"<base64>","crc":"<crc32 hex>"}
 *                    The CRC covers the line up to ,"crc":. At open, the first
 *                    line that fails a check and everything after it is cut
 *                    (ftruncate) with a warning naming the bytes and the op;
 *                    see js_log.c.
 *   checkpoint.json  the whole chat state at op "applied": accounts, sessions,
 *                    messages, client table and the counters the core sets with
 *                    meta_set inside transactions. One record per line; text as
 *                    JSON strings, binary as base64/hex; see js_file.c.
 *   meta.json        replica metadata (meta_set outside a transaction: view,
 *                    last normal view, commit number ...).
 *   Both JSON files are replaced atomically (tmp + fsync + rename + fsync of
 *   the directory), so neither is ever torn: one that fails its checks is a
 *   refusal to open (PL_ERR_CORRUPT naming the file, record and reason), not
 *   something to repair silently.
 *   The directory is flock'ed while open: one process per data directory.
 *
 * Durability (the contract in parley/store.h)
 *   log_append: one write and one fdatasync per call (group commit happens
 *   in the core, which batches). log_truncate: ftruncate + fdatasync.
 *   log_append_nosync (ABI minor 1): the write alone; log_sync, on the
 *   core's sync thread, fdatasyncs log.jsonl through a descriptor of its
 *   own. A checkpoint syncs the log before it is written, so a crash never
 *   keeps a state without the log entries it was built from.
 *   meta_set outside a transaction rewrites meta.json atomically before it
 *   returns (skipped when the value is already durable). With sync off no
 *   call ever syncs.
 *   commit(applied_op) only changes memory. A checkpoint is written when
 *   max(checkpoint_ops (default 10000), live records / 8) ops were applied
 *   or checkpoint_mb MiB (default 64) were appended to the log since the
 *   last one, and at close.
 *   After a crash, applied_op() is the checkpoint's, and the core replays
 *   the log from there; log_compact writes a checkpoint first when it would
 *   drop entries between the checkpoint and the applied op.
 *   Meta keys carry a store-wide sequence number so that when a key was
 *   written in both files the newer write wins at load.
 *
 * Transactions: every mutation between begin() and commit() records its
 * inverse in an undo log (js_state.c); abort() applies the inverses newest
 * first. Removed records are kept alive by the undo log until commit, so
 * undo never copies or allocates. Mutations outside a transaction apply at
 * once (as SQLite's autocommit does) and reach disk with the next
 * checkpoint.
 *
 * Size limits, honestly: the whole state lives in memory and every
 * checkpoint rewrites all of it, on the event-loop thread. Measured with
 * 100k messages of 100-byte bodies: ~27 MB of heap (~270 bytes a message:
 * one allocation with its strings plus four index entries), checkpoint.json
 * 22 MB, written and fsync'd in 0.11 s, loaded in 0.17 s with a transient
 * peak of ~140 MB (cJSON builds the whole tree, ~6x the file). Checkpoints
 * are spaced by max(checkpoint_ops, live records / 8) ops, so the write
 * cost per op stays flat as the state grows, but each one is a pause that
 * grows with the state: this store suits up to a few million messages;
 * beyond that, use the sqlite store. Single values: 16 MiB per field,
 * 64 MiB per log entry, 8 GiB per checkpoint file.
 *
 * Options ({"checkpoint_ops": N, "checkpoint_mb": M}; other keys belong to
 * the config loader and are ignored here).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "store_json.h"

#define JS_CKPT_OPS_DEFAULT 10000u
#define JS_CKPT_MB_DEFAULT 64u
#define JS_CKPT_OPS_MAX 100000000u
#define JS_CKPT_MB_MAX (1024u * 1024u)

void js_log_msg(pl_store *s, int level, const char *fmt, ...)
{
    char line[768];
    va_list ap;

    if (!s->host.log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->host.log(s->host.ud, level, "store json: %s", line);
}

static void js_ckpt_schedule(pl_store *s);

/* store.h forbids calling back into the store from a scan callback. A
 * change made there would move the arrays the scan is walking, so refuse
 * it instead of reading freed memory. */
static int js_reentered(pl_store *s, const char *what)
{
    if (!s->scanning)
        return 0;
    js_log_msg(s, PL_LOG_ERROR, "%s called from inside a scan callback", what);
    return 1;
}

/* ---- lifecycle ---- */

static void js_free(pl_store *s)
{
    if (!s)
        return;
    js_log_close(&s->log);
    js_undo_free(&s->undo);
    js_state_free(&s->st);
    if (s->dirfd >= 0)
        close(s->dirfd); /* releases the flock */
    free(s->dir);
    free(s->buf);
    free(s);
}

/* mkdir -p; directories it creates get mode 0700. */
static int js_mkdirs(const char *dir, char *err, size_t errlen)
{
    char *p = strdup(dir), *c;
    int rc = -1;

    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (c = p + 1;; c++) {
        char saved;

        if (*c != '/' && *c != '\0')
            continue;
        saved = *c;
        *c = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", p, strerror(errno));
            goto out;
        }
        *c = saved;
        if (saved == '\0')
            break;
    }
    rc = 0;
out:
    free(p);
    return rc;
}

static int js_opt_uint(const cJSON *root, const char *key, uint64_t max, uint64_t *out,
                       char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    double d;

    if (!v)
        return 0;
    d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!(d >= 1) || d > (double)max || d != (double)(uint64_t)d) {
        snprintf(err, errlen, "store option %s: must be an integer 1-%" PRIu64, key, max);
        return -1;
    }
    *out = (uint64_t)d;
    return 0;
}

static int js_parse_options(pl_store *s, const char *json, char *err, size_t errlen)
{
    cJSON *root;
    uint64_t mb = JS_CKPT_MB_DEFAULT;
    int rc = -1;

    s->ckpt_ops = JS_CKPT_OPS_DEFAULT;
    s->ckpt_bytes = (uint64_t)mb << 20;
    if (!json || !*json)
        return 0;
    root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "store options are not a JSON object");
        goto out;
    }
    if (js_opt_uint(root, "checkpoint_ops", JS_CKPT_OPS_MAX, &s->ckpt_ops, err, errlen) ||
        js_opt_uint(root, "checkpoint_mb", JS_CKPT_MB_MAX, &mb, err, errlen))
        goto out;
    s->ckpt_bytes = mb << 20;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Leftovers of a write interrupted by a crash: never read, just removed. */
static void js_remove_tmp(pl_store *s, const char *name)
{
    char tmp[64];

    snprintf(tmp, sizeof tmp, "%s%s", name, JS_TMP_SUFFIX);
    if (unlinkat(s->dirfd, tmp, 0) == 0)
        js_log_msg(s, PL_LOG_INFO, "removed %s/%s left by an interrupted write", s->dir, tmp);
}

static int js_open(const pl_store_host *host, const pl_store_options *opt,
                   pl_store **out, char *err, size_t errlen)
{
    pl_store *s;
    char dummy[1];
    int rc;

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!out || !opt || !opt->dir || !opt->dir[0]) {
        snprintf(err, errlen, "no data directory given");
        return PL_ERR_INVALID;
    }
    *out = NULL;
    if (!(s = calloc(1, sizeof *s))) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    s->dirfd = -1;
    s->log.fd = -1;
    s->log.sync_fd = -1;
    if (host)
        s->host = *host;
    s->sync_on = opt->sync != 0;
    if (js_parse_options(s, opt->options_json, err, errlen) != 0) {
        js_free(s);
        return PL_ERR_CONFIG;
    }
    if (!(s->dir = strdup(opt->dir))) {
        snprintf(err, errlen, "out of memory");
        js_free(s);
        return PL_ERR_NOMEM;
    }
    rc = PL_ERR_IO;
    if (js_mkdirs(s->dir, err, errlen) != 0)
        goto fail;
    s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "cannot open data directory %s: %s", s->dir, strerror(errno));
        goto fail;
    }
    if (flock(s->dirfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "data directory %s: %s", s->dir, errno == EWOULDBLOCK ?
                 "in use by another store instance (flock)" : strerror(errno));
        goto fail;
    }
    js_remove_tmp(s, JS_CKPT_FILE);
    js_remove_tmp(s, JS_META_FILE);
    js_remove_tmp(s, JS_LOG_FILE);
    if ((rc = js_ckpt_load(s, err, errlen)) != PL_OK)
        goto fail;
    /* Hand the parse tree's pages back: several times the file's size. */
    malloc_trim(0);
    if ((rc = js_meta_load(s, err, errlen)) != PL_OK ||
        (rc = js_log_open(s, err, errlen)) != PL_OK)
        goto fail;
    js_ckpt_schedule(s);
    *out = s;
    return PL_OK;
fail:
    js_free(s);
    return rc;
}

static void js_abort(pl_store *s);

static void js_close(pl_store *s)
{
    if (!s)
        return;
    if (s->in_txn) {
        js_log_msg(s, PL_LOG_WARN, "closed inside a transaction; its changes are discarded");
        js_abort(s);
    }
    /* Saves replaying the log at the next start; if it fails the log is
     * still there, so nothing is lost. */
    if (s->dirty && js_ckpt_write(s) != PL_OK)
        js_log_msg(s, PL_LOG_WARN, "no checkpoint at close; the log is replayed from op %"
                   PRIu64 " at the next start", s->ckpt_applied + 1);
    js_free(s);
}

/* ---- replica metadata ---- */

static int js_meta_key_ok(const char *k)
{
    size_t n = strlen(k), i;

    if (n == 0 || n > JS_META_KEY_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = k[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static int js_meta_get(pl_store *s, const char *key, uint64_t *val)
{
    const js_meta *e;

    if (!key || !val)
        return PL_ERR_INVALID;
    if (strcmp(key, JS_APPLIED_KEY) == 0) {
        if (s->applied == 0)
            return PL_ERR_NOT_FOUND;
        *val = s->applied;
        return PL_OK;
    }
    if (!(e = js_meta_find(&s->st, key)))
        return PL_ERR_NOT_FOUND;
    *val = e->val;
    return PL_OK;
}

static int js_meta_set(pl_store *s, const char *key, uint64_t val)
{
    js_meta *cur, next;
    js_undo u;
    int err;

    if (js_reentered(s, "meta_set"))
        return PL_ERR_INTERNAL;
    if (!key || !js_meta_key_ok(key)) {
        js_log_msg(s, PL_LOG_ERROR, "meta_set: keys are 1-%u characters of A-Z a-z 0-9 _ . -",
                   JS_META_KEY_MAX);
        return PL_ERR_INVALID;
    }
    if (strcmp(key, JS_APPLIED_KEY) == 0) {
        js_log_msg(s, PL_LOG_ERROR, "meta key \"%s\" is reserved for the applied op-number;"
                   " it is set by commit()", JS_APPLIED_KEY);
        return PL_ERR_INVALID;
    }
    cur = js_meta_find(&s->st, key);
    memset(&next, 0, sizeof next);
    memcpy(next.key, key, strlen(key) + 1);
    next.val = val;
    next.state = s->in_txn;
    next.seq = s->st.meta_seq + 1;
    if (s->in_txn) {
        memset(&u, 0, sizeof u);
        u.kind = JU_META;
        u.had_meta = cur != NULL;
        u.old_meta = cur ? *cur : next;
        if ((err = js_undo_push(&s->undo, &u)) != PL_OK)
            return err;
        if ((err = js_meta_put(&s->st, &next)) != PL_OK) {
            s->undo.n--;
            return err;
        }
        s->st.meta_seq++;
        s->dirty = 1;
        return PL_OK;
    }
    /* Already durable with this value in meta.json: nothing to write. */
    if (cur && !cur->state && cur->val == val)
        return PL_OK;
    {
        js_meta old = cur ? *cur : next;
        int had = cur != NULL;

        if ((err = js_meta_put(&s->st, &next)) != PL_OK)
            return err;
        s->st.meta_seq++;
        if ((err = js_meta_write(s)) != PL_OK) {
            /* not durable, so not set */
            if (had)
                js_meta_put(&s->st, &old);
            else
                js_meta_remove(&s->st, key);
            return err;
        }
    }
    return PL_OK;
}

/* ---- replicated log ---- */

static int js_not_in_txn(pl_store *s, const char *what)
{
    if (s->in_txn) {
        js_log_msg(s, PL_LOG_ERROR, "%s inside a state transaction: it must be durable on"
                   " return, so call it before begin() or after commit()", what);
        return PL_ERR_INVALID;
    }
    return PL_OK;
}

static int js_api_log_write(pl_store *s, const pl_log_entry *e, size_t n, int sync)
{
    int err;

    if (js_reentered(s, "log_append"))
        return PL_ERR_INTERNAL;
    if (n == 0)
        return PL_OK;
    if (!e)
        return PL_ERR_INVALID;
    if ((err = js_not_in_txn(s, "log_append")) != PL_OK)
        return err;
    return js_log_append(s, e, n, sync);
}

static int js_api_log_append(pl_store *s, const pl_log_entry *e, size_t n)
{
    return js_api_log_write(s, e, n, 1);
}

static int js_api_log_append_nosync(pl_store *s, const pl_log_entry *e, size_t n)
{
    return js_api_log_write(s, e, n, 0);
}

static int js_api_log_sync(pl_store *s)
{
    return js_log_sync(s);
}

static int js_log_bounds(pl_store *s, uint64_t *first, uint64_t *last)
{
    if (!first || !last)
        return PL_ERR_INVALID;
    *first = s->log.n ? s->log.first : 0;
    *last = js_log_last(&s->log);
    return PL_OK;
}

static int js_api_log_read(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud)
{
    int err;

    if (!cb)
        return PL_ERR_INVALID;
    err = js_log_read(s, from, to, cb, ud);
    /* A read of a huge entry grew the buffer; do not keep that forever. */
    if (s->log.scratch_cap > (8u << 20)) {
        free(s->log.scratch);
        s->log.scratch = NULL;
        s->log.scratch_cap = 0;
    }
    return err;
}

static int js_api_log_truncate(pl_store *s, uint64_t after)
{
    int err;

    if (js_reentered(s, "log_truncate"))
        return PL_ERR_INTERNAL;
    if ((err = js_not_in_txn(s, "log_truncate")) != PL_OK)
        return err;
    return js_log_truncate(s, after);
}

/* The entries between the checkpoint and the applied op are what a restart
 * replays: before dropping any of them, write a checkpoint of the applied
 * state. Inside a transaction (uncommitted state) or when that write fails,
 * keep them instead; keeping entries is always safe. Entries past the
 * applied op are the core's to drop (e.g. after installing a snapshot). */
static int js_api_log_compact(pl_store *s, uint64_t before)
{
    if (js_reentered(s, "log_compact"))
        return PL_ERR_INTERNAL;
    /* store.h: after log_compact(before) the state of every op below
     * `before` survives a crash, because those entries can no longer be
     * replayed. Our commits reach disk only with a checkpoint, so write one
     * first whenever the checkpoint is older than that — also when the log
     * holds nothing to drop (a snapshot install compacts an emptied log). */
    int rc = PL_OK;
    if (before > s->ckpt_applied + 1 && s->applied > s->ckpt_applied) {
        if (s->in_txn || js_ckpt_write(s) != PL_OK) {
            js_log_msg(s, PL_LOG_WARN, "log_compact: keeping ops from %" PRIu64 " (asked %"
                       PRIu64 "): they are needed to replay past the checkpoint",
                       s->ckpt_applied + 1, before);
            before = s->ckpt_applied + 1;
            rc = PL_ERR_IO;
        }
    }
    if (s->log.n == 0 || before <= s->log.first)
        return rc;
    int crc = js_log_compact(s, before);
    return crc != PL_OK ? crc : rc;
}

/* ---- state transactions ---- */

/* A checkpoint rewrites the whole state, so its cost grows with the state:
 * space them at least checkpoint_ops apart and at least one eighth of the
 * live records apart, which keeps the write cost per op constant (and the
 * replay after a crash at most an eighth of the state's size in ops). */
static void js_ckpt_schedule(pl_store *s)
{
    const js_state *st = &s->st;
    uint64_t records = st->n_acc + st->n_ses + (st->n_msgs - st->n_dead) + st->n_cli;
    uint64_t gap = records / 8 > s->ckpt_ops ? records / 8 : s->ckpt_ops;

    s->ckpt_due = s->applied + gap;
}

static int js_begin(pl_store *s)
{
    if (js_reentered(s, "begin"))
        return PL_ERR_INTERNAL;
    if (s->in_txn) {
        js_log_msg(s, PL_LOG_ERROR, "begin: a transaction is already open");
        return PL_ERR_INVALID;
    }
    s->in_txn = 1;
    s->undo.active = 1;
    return PL_OK;
}

static int js_commit(pl_store *s, uint64_t applied_op)
{
    if (js_reentered(s, "commit"))
        return PL_ERR_INTERNAL;
    if (!s->in_txn) {
        js_log_msg(s, PL_LOG_ERROR, "commit without begin");
        return PL_ERR_INVALID;
    }
    js_undo_commit(&s->undo);
    s->in_txn = 0;
    s->applied = applied_op;
    s->dirty = 1;
    /* Deleted messages leave NULL slots; squeeze them out once they are a
     * quarter of the array, so the cost is amortised over the deletes. */
    if (s->st.n_dead > 64 && s->st.n_dead * 4 > s->st.n_msgs)
        js_msg_compact(&s->st);
    if (applied_op >= s->ckpt_due || s->log_bytes_since_ckpt >= s->ckpt_bytes) {
        if (js_ckpt_write(s) != PL_OK) {
            /* The commit stands (the log has it); try again one period later
             * rather than at every commit while the disk is full. */
            js_log_msg(s, PL_LOG_ERROR, "checkpoint at op %" PRIu64 " failed; the log is"
                       " replayed from op %" PRIu64 " after a restart", applied_op,
                       s->ckpt_applied + 1);
            s->log_bytes_since_ckpt = 0;
        }
        js_ckpt_schedule(s);
    }
    return PL_OK;
}

static void js_abort(pl_store *s)
{
    if (!s->in_txn || js_reentered(s, "abort"))
        return;
    js_undo_rollback(&s->undo, &s->st);
    s->in_txn = 0;
}

static uint64_t js_applied_op(pl_store *s)
{
    return s->applied;
}

/* ---- mutation helpers: record the inverse, then change ---- */

static int js_undo_room(pl_store *s, size_t k)
{
    js_undo_log *u = &s->undo;
    size_t ncap;
    js_undo *nv;

    if (!u->active || u->n + k <= u->cap)
        return PL_OK;
    ncap = u->cap ? u->cap : 64;
    while (ncap < u->n + k)
        ncap *= 2;
    if (!(nv = realloc(u->v, ncap * sizeof *nv)))
        return PL_ERR_NOMEM;
    u->v = nv;
    u->cap = ncap;
    return PL_OK;
}

/* Room was reserved with js_undo_room. Outside a transaction a removed
 * record is simply freed. */
static void js_note(pl_store *s, int kind, void *rec)
{
    js_undo u;

    s->dirty = 1;
    if (!s->undo.active) {
        if (kind == JU_ACC_REMOVED || kind == JU_SES_REMOVED || kind == JU_MSG_REMOVED ||
            kind == JU_CLI_REMOVED)
            free(rec);
        return;
    }
    memset(&u, 0, sizeof u);
    u.kind = kind;
    u.rec = rec;
    js_undo_push(&s->undo, &u);
}

static int js_field_ok(pl_store *s, const char *what, pl_str v)
{
    if (v.len > JS_FIELD_MAX || (v.len && !v.ptr)) {
        js_log_msg(s, PL_LOG_ERROR, "%s: a field is over 16 MiB or has no bytes", what);
        return 0;
    }
    return 1;
}

/* ---- accounts ---- */

static void js_acc_rec(const js_account *a, pl_account_rec *out)
{
    out->uid = a->uid;
    out->name.ptr = a->name;
    out->name.len = a->name_len;
    out->pwhash.ptr = a->pwhash;
    out->pwhash.len = a->pwhash_len;
    out->created_ms = a->created_ms;
}

static int js_account_put(pl_store *s, const pl_account_rec *a)
{
    js_account *old, *other, *n;
    int err;

    if (js_reentered(s, "account_put"))
        return PL_ERR_INTERNAL;
    if (!a || !js_field_ok(s, "account_put", a->name) || !js_field_ok(s, "account_put", a->pwhash))
        return PL_ERR_INVALID;
    old = js_acc_by_uid(&s->st, a->uid);
    other = js_acc_by_name(&s->st, a->name.ptr, a->name.len, NULL);
    if (other && other->uid != a->uid) {
        /* invariant 4: one live account per name */
        js_log_msg(s, PL_LOG_ERROR, "account_put: uid %" PRIu64 ": the name belongs to"
                   " another account", a->uid);
        return PL_ERR_USER_EXISTS;
    }
    if (js_undo_room(s, 2) != PL_OK || !(n = js_account_new(a->uid, a->name, a->pwhash,
                                                            a->created_ms)))
        return PL_ERR_NOMEM;
    if (old)
        js_acc_remove(&s->st, a->uid);
    if ((err = js_acc_insert(&s->st, n)) != PL_OK) {
        if (old)
            js_acc_insert(&s->st, old); /* its room was just freed */
        free(n);
        return err;
    }
    if (old)
        js_note(s, JU_ACC_REMOVED, old);
    js_note(s, JU_ACC_INSERTED, n);
    return PL_OK;
}

static int js_account_get_name(pl_store *s, pl_str name, pl_account_rec *out)
{
    const js_account *a;

    if (!out)
        return PL_ERR_INVALID;
    if (!(a = js_acc_by_name(&s->st, name.ptr, name.len, NULL)))
        return PL_ERR_NOT_FOUND;
    js_acc_rec(a, out);
    return PL_OK;
}

static int js_account_get_uid(pl_store *s, uint64_t uid, pl_account_rec *out)
{
    const js_account *a;

    if (!out)
        return PL_ERR_INVALID;
    if (!(a = js_acc_by_uid(&s->st, uid)))
        return PL_ERR_NOT_FOUND;
    js_acc_rec(a, out);
    return PL_OK;
}

static int js_account_delete(pl_store *s, uint64_t uid)
{
    js_account *a;

    if (js_reentered(s, "account_delete"))
        return PL_ERR_INTERNAL;
    if (!js_acc_by_uid(&s->st, uid))
        return PL_ERR_NOT_FOUND;
    if (js_undo_room(s, 1) != PL_OK)
        return PL_ERR_NOMEM;
    a = js_acc_remove(&s->st, uid);
    js_note(s, JU_ACC_REMOVED, a);
    return PL_OK;
}

static int js_account_scan(pl_store *s, pl_str start, pl_account_cb cb, void *ud)
{
    size_t i;

    if (!cb)
        return PL_ERR_INVALID;
    js_acc_by_name(&s->st, start.ptr, start.len, &i);
    s->scanning = 1;
    for (; i < s->st.n_acc; i++) {
        pl_account_rec r;

        js_acc_rec(s->st.acc_by_name[i], &r);
        if (cb(ud, &r) != 0)
            break;
    }
    s->scanning = 0;
    return PL_OK;
}

static int js_account_count(pl_store *s, uint64_t *n)
{
    if (!n)
        return PL_ERR_INVALID;
    *n = s->st.n_acc;
    return PL_OK;
}

/* ---- sessions ---- */

static void js_ses_rec(const js_session *r, pl_session_rec *out)
{
    out->token_hash.ptr = r->hash;
    out->token_hash.len = r->hash_len;
    out->uid = r->uid;
    out->created_ms = r->created_ms;
}

static int js_session_put(pl_store *s, const pl_session_rec *r)
{
    js_session *old, *n;
    int err;

    if (js_reentered(s, "session_put"))
        return PL_ERR_INTERNAL;
    if (!r || !js_field_ok(s, "session_put", r->token_hash))
        return PL_ERR_INVALID;
    if (js_undo_room(s, 2) != PL_OK ||
        !(n = js_session_new(r->token_hash, r->uid, r->created_ms)))
        return PL_ERR_NOMEM;
    old = js_ses_remove(&s->st, r->token_hash.ptr, r->token_hash.len);
    if ((err = js_ses_insert(&s->st, n)) != PL_OK) {
        if (old)
            js_ses_insert(&s->st, old);
        free(n);
        return err;
    }
    if (old)
        js_note(s, JU_SES_REMOVED, old);
    js_note(s, JU_SES_INSERTED, n);
    return PL_OK;
}

static int js_session_get(pl_store *s, pl_str token_hash, pl_session_rec *out)
{
    const js_session *r;

    if (!out)
        return PL_ERR_INVALID;
    if (!(r = js_ses_find(&s->st, token_hash.ptr, token_hash.len, NULL)))
        return PL_ERR_NOT_FOUND;
    js_ses_rec(r, out);
    return PL_OK;
}

static int js_session_delete(pl_store *s, pl_str token_hash)
{
    if (js_reentered(s, "session_delete"))
        return PL_ERR_INTERNAL;
    if (!js_ses_find(&s->st, token_hash.ptr, token_hash.len, NULL))
        return PL_ERR_NOT_FOUND;
    if (js_undo_room(s, 1) != PL_OK)
        return PL_ERR_NOMEM;
    js_note(s, JU_SES_REMOVED, js_ses_remove(&s->st, token_hash.ptr, token_hash.len));
    return PL_OK;
}

/* A walk over every session: logouts of a whole account are rare (account
 * deletion), and a per-uid index would cost memory on every login. */
static int js_session_delete_uid(pl_store *s, uint64_t uid)
{
    js_state *st = &s->st;
    size_t i, j = 0, hits = 0;

    if (js_reentered(s, "session_delete_uid"))
        return PL_ERR_INTERNAL;
    for (i = 0; i < st->n_ses; i++)
        hits += st->ses[i]->uid == uid;
    if (hits == 0)
        return PL_OK;
    if (js_undo_room(s, hits) != PL_OK)
        return PL_ERR_NOMEM;
    for (i = 0; i < st->n_ses; i++) {
        if (st->ses[i]->uid == uid)
            js_note(s, JU_SES_REMOVED, st->ses[i]);
        else
            st->ses[j++] = st->ses[i];
    }
    st->n_ses = j;
    return PL_OK;
}

static int js_session_scan(pl_store *s, pl_session_cb cb, void *ud)
{
    size_t i;

    if (!cb)
        return PL_ERR_INVALID;
    s->scanning = 1;
    for (i = 0; i < s->st.n_ses; i++) {
        pl_session_rec r;

        js_ses_rec(s->st.ses[i], &r);
        if (cb(ud, &r) != 0)
            break;
    }
    s->scanning = 0;
    return PL_OK;
}

/* ---- messages ---- */

static void js_msg_rec(const js_message *m, pl_message_rec *out)
{
    out->id = m->id;
    out->from_uid = m->from_uid;
    out->to_uid = m->to_uid;
    out->from_name.ptr = m->from_name;
    out->from_name.len = m->from_len;
    out->to_name.ptr = m->to_name;
    out->to_name.len = m->to_len;
    out->body.ptr = m->body;
    out->body.len = m->body_len;
    out->time_ms = m->time_ms;
    out->flags = m->flags;
}

static int js_message_put(pl_store *s, const pl_message_rec *m)
{
    js_message *n;
    int err;

    if (js_reentered(s, "message_put"))
        return PL_ERR_INTERNAL;
    if (!m || !js_field_ok(s, "message_put", m->from_name) ||
        !js_field_ok(s, "message_put", m->to_name) || !js_field_ok(s, "message_put", m->body))
        return PL_ERR_INVALID;
    if (js_msg_find(&s->st, m->id)) {
        js_log_msg(s, PL_LOG_ERROR, "message_put: id %" PRIu64 " exists", m->id);
        return PL_ERR_INVALID;
    }
    if (js_undo_room(s, 1) != PL_OK || !(n = js_message_new(m)))
        return PL_ERR_NOMEM;
    if ((err = js_msg_insert(&s->st, n)) != PL_OK) {
        free(n);
        return err;
    }
    js_note(s, JU_MSG_INSERTED, n);
    return PL_OK;
}

static int js_message_get(pl_store *s, uint64_t id, pl_message_rec *out)
{
    const js_message *m;

    if (!out)
        return PL_ERR_INVALID;
    if (!(m = js_msg_find(&s->st, id)))
        return PL_ERR_NOT_FOUND;
    js_msg_rec(m, out);
    return PL_OK;
}

static int js_message_set_flags(pl_store *s, uint64_t id, uint32_t flags)
{
    js_message *m = js_msg_find(&s->st, id);
    uint32_t old;
    int err;

    if (js_reentered(s, "message_set_flags"))
        return PL_ERR_INTERNAL;
    if (!m)
        return PL_ERR_NOT_FOUND;
    if (js_undo_room(s, 1) != PL_OK)
        return PL_ERR_NOMEM;
    old = m->flags;
    if ((err = js_msg_set_flags(&s->st, m, flags)) != PL_OK)
        return err;
    s->dirty = 1;
    if (s->undo.active) {
        js_undo u;

        memset(&u, 0, sizeof u);
        u.kind = JU_MSG_FLAGS;
        u.id = id;
        u.old_flags = old;
        js_undo_push(&s->undo, &u);
    }
    return PL_OK;
}

static int js_message_delete(pl_store *s, uint64_t id)
{
    if (js_reentered(s, "message_delete"))
        return PL_ERR_INTERNAL;
    if (!js_msg_find(&s->st, id))
        return PL_ERR_NOT_FOUND;
    if (js_undo_room(s, 1) != PL_OK)
        return PL_ERR_NOMEM;
    js_note(s, JU_MSG_REMOVED, js_msg_remove(&s->st, id));
    if (!s->undo.active && s->st.n_dead > 64 && s->st.n_dead * 4 > s->st.n_msgs)
        js_msg_compact(&s->st);
    return PL_OK;
}

/* offset/limit bookkeeping shared by every query */
typedef struct js_q {
    uint64_t skip, left;      /* left: UINT64_MAX when there is no limit */
    pl_message_cb cb;
    void *ud;
} js_q;

/* Returns 1 when the scan must stop. */
static int js_q_emit(js_q *q, const js_message *m)
{
    pl_message_rec r;

    if (q->skip) {
        q->skip--;
        return 0;
    }
    if (q->left == 0)
        return 1;
    q->left--;
    js_msg_rec(m, &r);
    return q->cb(q->ud, &r) != 0 || q->left == 0;
}

static int js_convo_visible(const js_message *m, uint64_t uid, uint64_t peer)
{
    if (uid == peer) /* a note to self shows while either side still shows it */
        return (m->flags & (PL_MSGF_DEL_SENDER | PL_MSGF_DEL_RECIPIENT)) !=
               (PL_MSGF_DEL_SENDER | PL_MSGF_DEL_RECIPIENT);
    if (m->from_uid == uid)
        return !(m->flags & PL_MSGF_DEL_SENDER);
    return !(m->flags & PL_MSGF_DEL_RECIPIENT);
}

static int js_message_scan(pl_store *s, const pl_msg_query *pq, pl_message_cb cb, void *ud)
{
    const js_state *st = &s->st;
    const js_user *u;
    const js_mvec *v;
    js_q q;
    size_t i;

    if (!pq || !cb)
        return PL_ERR_INVALID;
    q.skip = pq->offset;
    q.left = pq->limit ? pq->limit : UINT64_MAX;
    q.cb = cb;
    q.ud = ud;
    if (pq->kind < PL_Q_UNREAD || pq->kind > PL_Q_ALL) {
        js_log_msg(s, PL_LOG_ERROR, "message_scan: unknown query kind %" PRIu32, pq->kind);
        return PL_ERR_INVALID;
    }
    u = js_user_get(st, pq->uid);
    s->scanning = 1;
    switch (pq->kind) {
    case PL_Q_UNREAD:
        /* the unread index holds exactly the matches: skip by arithmetic */
        if (!u || pq->after_id == UINT64_MAX)
            break;
        i = js_mvec_lower(&u->unread, pq->after_id + 1);
        if (q.skip >= u->unread.n - i)
            break;
        i += (size_t)q.skip;
        q.skip = 0;
        for (; i < u->unread.n; i++) {
            if (js_q_emit(&q, u->unread.v[i]))
                break;
        }
        break;
    case PL_Q_READ:
        if (!u)
            break;
        for (i = u->recv.n; i-- > 0;) {
            const js_message *m = u->recv.v[i];

            if ((m->flags & (PL_MSGF_READ | PL_MSGF_DEL_RECIPIENT)) == PL_MSGF_READ &&
                js_q_emit(&q, m))
                break;
        }
        break;
    case PL_Q_CONVO:
        if (!(v = js_pair_get(st, pq->uid, pq->peer_uid)))
            break;
        for (i = v->n; i-- > 0;) {
            if (js_convo_visible(v->v[i], pq->uid, pq->peer_uid) && js_q_emit(&q, v->v[i]))
                break;
        }
        break;
    case PL_Q_RECEIVED:
        if (!u)
            break;
        for (i = 0; i < u->recv.n; i++) {
            if (!(u->recv.v[i]->flags & PL_MSGF_DEL_RECIPIENT) && js_q_emit(&q, u->recv.v[i]))
                break;
        }
        break;
    case PL_Q_SENT:
        if (!u)
            break;
        for (i = 0; i < u->sent.n; i++) {
            if (!(u->sent.v[i]->flags & PL_MSGF_DEL_SENDER) && js_q_emit(&q, u->sent.v[i]))
                break;
        }
        break;
    case PL_Q_ALL:
        if (pq->after_id == UINT64_MAX)
            break;
        for (i = js_msg_lower(st, pq->after_id + 1); i < st->n_msgs; i++) {
            if (st->msgs[i].m && js_q_emit(&q, st->msgs[i].m))
                break;
        }
        break;
    default:
        break;
    }
    s->scanning = 0;
    return PL_OK;
}

static int js_message_counts(pl_store *s, uint64_t uid, uint64_t *unread, uint64_t *read)
{
    const js_user *u;

    if (!unread || !read)
        return PL_ERR_INVALID;
    u = js_user_get(&s->st, uid);
    *unread = u ? u->unread.n : 0;
    *read = u ? u->n_read : 0;
    return PL_OK;
}

/* ---- client table ---- */

static void js_cli_rec(const js_client *c, pl_client_rec *out)
{
    out->client_id = c->client_id;
    out->request_no = c->request_no;
    out->op = c->op;
    out->reply.ptr = c->reply;
    out->reply.len = c->reply_len;
}

static int js_client_get(pl_store *s, uint64_t client_id, pl_client_rec *out)
{
    const js_client *c;

    if (!out)
        return PL_ERR_INVALID;
    if (!(c = js_cli_find(&s->st, client_id, NULL)))
        return PL_ERR_NOT_FOUND;
    js_cli_rec(c, out);
    return PL_OK;
}

static int js_client_put(pl_store *s, const pl_client_rec *c)
{
    js_client *old, *n;
    int err;

    if (js_reentered(s, "client_put"))
        return PL_ERR_INTERNAL;
    if (!c || !js_field_ok(s, "client_put", c->reply))
        return PL_ERR_INVALID;
    if (js_undo_room(s, 2) != PL_OK ||
        !(n = js_client_new(c->client_id, c->request_no, c->op, c->reply)))
        return PL_ERR_NOMEM;
    old = js_cli_remove(&s->st, c->client_id);
    if ((err = js_cli_insert(&s->st, n)) != PL_OK) {
        if (old)
            js_cli_insert(&s->st, old);
        free(n);
        return err;
    }
    if (old)
        js_note(s, JU_CLI_REMOVED, old);
    js_note(s, JU_CLI_INSERTED, n);
    return PL_OK;
}

static int js_client_scan(pl_store *s, pl_client_cb cb, void *ud)
{
    size_t i;

    if (!cb)
        return PL_ERR_INVALID;
    s->scanning = 1;
    for (i = 0; i < s->st.n_cli; i++) {
        pl_client_rec r;

        js_cli_rec(s->st.cli[i], &r);
        if (cb(ud, &r) != 0)
            break;
    }
    s->scanning = 0;
    return PL_OK;
}

/* Minor 2. Nothing waits here: the state is in memory, and what is on
 * disk is the log plus the checkpoint that log_compact writes. */
static int js_state_flush(pl_store *s)
{
    (void)s;
    return PL_OK;
}

/* ---- the descriptor ---- */

static const pl_store_plugin js_plugin = {
    .abi_version = PL_STORE_ABI_VERSION,
    .name = "json",
    .description = "JSON files per server (<dir>/log.jsonl, checkpoint.json, meta.json),"
                   " state in memory",
    .open = js_open,
    .close = js_close,
    .meta_get = js_meta_get,
    .meta_set = js_meta_set,
    .log_append = js_api_log_append,
    .log_bounds = js_log_bounds,
    .log_read = js_api_log_read,
    .log_truncate = js_api_log_truncate,
    .log_compact = js_api_log_compact,
    .begin = js_begin,
    .commit = js_commit,
    .abort = js_abort,
    .applied_op = js_applied_op,
    .account_put = js_account_put,
    .account_get_name = js_account_get_name,
    .account_get_uid = js_account_get_uid,
    .account_delete = js_account_delete,
    .account_scan = js_account_scan,
    .account_count = js_account_count,
    .session_put = js_session_put,
    .session_get = js_session_get,
    .session_delete = js_session_delete,
    .session_delete_uid = js_session_delete_uid,
    .session_scan = js_session_scan,
    .message_put = js_message_put,
    .message_get = js_message_get,
    .message_set_flags = js_message_set_flags,
    .message_delete = js_message_delete,
    .message_scan = js_message_scan,
    .message_counts = js_message_counts,
    .client_get = js_client_get,
    .client_put = js_client_put,
    .client_scan = js_client_scan,
    .log_append_nosync = js_api_log_append_nosync,
    .log_sync = js_api_log_sync,
    .state_flush = js_state_flush,
};

PL_STORE_DECLARE_MINOR;

PL_EXPORT const pl_store_plugin *parley_store_plugin(void)
{
    return &js_plugin;
}
