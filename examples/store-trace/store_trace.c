/*
 * store_trace.c — an example parley store plugin, built out of tree.
 *
 * "trace" keeps no data of its own: it loads another store plugin (the
 * "inner" store, sqlite by default) and forwards every call to it, timing
 * each one. Calls slower than slow_ms are logged through the host's log
 * function as they happen, and close() logs a summary per method. That
 * makes it a small but complete tour of the store ABI: the exported entry
 * point, the descriptor with every member filled, the host struct, the
 * options object, one-line errors in the caller's buffer, and the ABI
 * check a plugin should itself do when it loads another plugin.
 *
 * Config:
 *   "store": {"name": "trace", "inner": "sqlite", "slow_ms": 20}
 * inner is a short name (searched in TRACE_PLUGINDIR, the plugindir
 * variable of parley-plugin.pc at build time) or a path. The whole object
 * is passed on to the inner store, which ignores keys it does not know
 * (sqlite does; check yours).
 */
#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <parley/store.h>

#ifndef TRACE_PLUGINDIR
#error "build with -DTRACE_PLUGINDIR=\"...\" (pkg-config --variable=plugindir parley-plugin)"
#endif

#define TRACE_DEFAULT_INNER "sqlite"
#define TRACE_DEFAULT_SLOW_MS 50
#define TRACE_SLOW_MS_MAX 3600000

/* One counter row per traced method, indexed by the T_* enum below. */
enum {
    T_META_GET, T_META_SET, T_LOG_APPEND, T_LOG_BOUNDS, T_LOG_READ, T_LOG_TRUNCATE,
    T_LOG_COMPACT, T_BEGIN, T_COMMIT, T_ABORT, T_APPLIED_OP, T_ACCOUNT_PUT,
    T_ACCOUNT_GET_NAME, T_ACCOUNT_GET_UID, T_ACCOUNT_DELETE, T_ACCOUNT_SCAN,
    T_ACCOUNT_COUNT, T_SESSION_PUT, T_SESSION_GET, T_SESSION_DELETE,
    T_SESSION_DELETE_UID, T_SESSION_SCAN, T_MESSAGE_PUT, T_MESSAGE_GET,
    T_MESSAGE_SET_FLAGS, T_MESSAGE_DELETE, T_MESSAGE_SCAN, T_MESSAGE_COUNTS,
    T_CLIENT_GET, T_CLIENT_PUT, T_CLIENT_SCAN, T__COUNT
};

static const char *const t_names[T__COUNT] = {
    "meta_get", "meta_set", "log_append", "log_bounds", "log_read", "log_truncate",
    "log_compact", "begin", "commit", "abort", "applied_op", "account_put",
    "account_get_name", "account_get_uid", "account_delete", "account_scan",
    "account_count", "session_put", "session_get", "session_delete",
    "session_delete_uid", "session_scan", "message_put", "message_get",
    "message_set_flags", "message_delete", "message_scan", "message_counts",
    "client_get", "client_put", "client_scan",
};

/* The instance: what pl_store is to the core, opaque outside this file. */
struct pl_store {
    pl_store_host host;          /* copied: the core's struct may not outlive open() */
    void *dl;                    /* the inner plugin's module */
    const pl_store_plugin *in;
    pl_store *st;                /* the inner instance */
    uint64_t slow_ns;
    uint64_t calls[T__COUNT], slow[T__COUNT], total_ns[T__COUNT], max_ns[T__COUNT];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Log through the core (the host struct), never to stdout/stderr directly:
 * the operator's log collector and level filter apply. */
#define TLOG(s, level, ...) \
    do { if ((s)->host.log) (s)->host.log((s)->host.ud, (level), __VA_ARGS__); } while (0)

/* Every forwarded call ends here: count it, and log it if it was slow. */
static int done(pl_store *s, int which, uint64_t t0, int rc)
{
    uint64_t d = now_ns() - t0;
    s->calls[which]++;
    s->total_ns[which] += d;
    if (d > s->max_ns[which])
        s->max_ns[which] = d;
    if (d >= s->slow_ns) {
        s->slow[which]++;
        TLOG(s, PL_LOG_WARN, "store trace: %s took %.1f ms (slow_ms %.0f)", t_names[which],
             (double)d / 1e6, (double)s->slow_ns / 1e6);
    }
    return rc;
}

/* ------------------------------------------------------------ options */

typedef struct trace_opts {
    char inner[4096];
    uint64_t slow_ms;
} trace_opts;

static int parse_options(const char *json, trace_opts *o, char *err, size_t errlen)
{
    int rc = PL_ERR_CONFIG;
    cJSON *root = NULL;

    snprintf(o->inner, sizeof o->inner, "%s", TRACE_DEFAULT_INNER);
    o->slow_ms = TRACE_DEFAULT_SLOW_MS;
    if (!json || !*json)
        return PL_OK;
    root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "store options are not a JSON object");
        goto out;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "inner");
    if (v) {
        if (!cJSON_IsString(v) || !v->valuestring[0] ||
            strlen(v->valuestring) >= sizeof o->inner) {
            snprintf(err, errlen, "store.inner: must be a store name or path (under %zu bytes)",
                     sizeof o->inner);
            goto out;
        }
        if (strcmp(v->valuestring, "trace") == 0) {
            snprintf(err, errlen, "store.inner: \"trace\" cannot wrap itself");
            goto out;
        }
        snprintf(o->inner, sizeof o->inner, "%s", v->valuestring);
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "slow_ms");
    if (v) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > TRACE_SLOW_MS_MAX ||
            v->valuedouble != (double)(uint64_t)v->valuedouble) {
            snprintf(err, errlen, "store.slow_ms: must be an integer 0-%d", TRACE_SLOW_MS_MAX);
            goto out;
        }
        o->slow_ms = (uint64_t)v->valuedouble;
    }
    rc = PL_OK;
out:
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

static void t_close(pl_store *s);

static int t_open(const pl_store_host *host, const pl_store_options *opt, pl_store **out,
                  char *err, size_t errlen)
{
    trace_opts o;
    char path[4200];
    int rc;

    *out = NULL;
    if ((rc = parse_options(opt->options_json, &o, err, errlen)) != PL_OK)
        return rc;
    if (strchr(o.inner, '/'))
        snprintf(path, sizeof path, "%s", o.inner);
    else
        snprintf(path, sizeof path, "%s/parley-store-%s.so", TRACE_PLUGINDIR, o.inner);

    pl_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    if (host)
        s->host = *host;
    s->slow_ns = o.slow_ms * 1000000u;

    /* Load the inner store the way the core loads us: the entry symbol,
     * then abi_version before any other member. */
    s->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!s->dl) {
        snprintf(err, errlen, "inner store \"%s\": %s", o.inner, dlerror());
        rc = PL_ERR_PLUGIN;
        goto fail;
    }
    pl_store_entry_fn entry;
    *(void **)&entry = dlsym(s->dl, PL_STORE_SYMBOL);
    if (!entry || !(s->in = entry())) {
        snprintf(err, errlen, "inner store %s: no %s descriptor", path, PL_STORE_SYMBOL);
        rc = PL_ERR_PLUGIN;
        goto fail;
    }
    if (s->in->abi_version != PL_STORE_ABI_VERSION) {
        snprintf(err, errlen, "inner store %s: ABI version %u, trace was built for %u", path,
                 (unsigned)s->in->abi_version, (unsigned)PL_STORE_ABI_VERSION);
        rc = PL_ERR_PLUGIN;
        goto fail;
    }
    if ((rc = s->in->open(host, opt, &s->st, err, errlen)) != PL_OK)
        goto fail;
    TLOG(s, PL_LOG_INFO, "store trace: wrapping %s, logging calls of %llu ms or more", path,
         (unsigned long long)o.slow_ms);
    *out = s;
    return PL_OK;
fail:
    t_close(s);
    return rc;
}

static void t_close(pl_store *s)
{
    if (!s)
        return;
    uint64_t calls = 0, slow = 0;
    for (int i = 0; i < T__COUNT; i++) {
        calls += s->calls[i];
        slow += s->slow[i];
    }
    if (s->st) {
        TLOG(s, PL_LOG_INFO, "store trace: closing after %llu calls, %llu slow",
             (unsigned long long)calls, (unsigned long long)slow);
        for (int i = 0; i < T__COUNT; i++)
            if (s->calls[i])
                TLOG(s, PL_LOG_DEBUG, "store trace: %-18s mean %.3f ms, max %.3f ms",
                     t_names[i], (double)s->total_ns[i] / (double)s->calls[i] / 1e6,
                     (double)s->max_ns[i] / 1e6);
        s->in->close(s->st);
    }
    if (s->dl)
        dlclose(s->dl);
    free(s);
}

/* ------------------------------------------------------------ forwarding */

/* Each call: start the clock, forward to the inner store with its own
 * instance, count. Scan callbacks and their ud pass through untouched. */
#define FWD(which, call) do { uint64_t t0 = now_ns(); return done(s, which, t0, s->in->call); } while (0)

static int t_meta_get(pl_store *s, const char *k, uint64_t *v) { FWD(T_META_GET, meta_get(s->st, k, v)); }
static int t_meta_set(pl_store *s, const char *k, uint64_t v) { FWD(T_META_SET, meta_set(s->st, k, v)); }
static int t_log_append(pl_store *s, const pl_log_entry *e, size_t n) { FWD(T_LOG_APPEND, log_append(s->st, e, n)); }
static int t_log_bounds(pl_store *s, uint64_t *f, uint64_t *l) { FWD(T_LOG_BOUNDS, log_bounds(s->st, f, l)); }
static int t_log_read(pl_store *s, uint64_t f, uint64_t t, pl_log_cb cb, void *ud) { FWD(T_LOG_READ, log_read(s->st, f, t, cb, ud)); }
static int t_log_truncate(pl_store *s, uint64_t after) { FWD(T_LOG_TRUNCATE, log_truncate(s->st, after)); }
static int t_log_compact(pl_store *s, uint64_t before) { FWD(T_LOG_COMPACT, log_compact(s->st, before)); }
static int t_begin(pl_store *s) { FWD(T_BEGIN, begin(s->st)); }
static int t_commit(pl_store *s, uint64_t op) { FWD(T_COMMIT, commit(s->st, op)); }
static int t_account_put(pl_store *s, const pl_account_rec *a) { FWD(T_ACCOUNT_PUT, account_put(s->st, a)); }
static int t_account_get_name(pl_store *s, pl_str n, pl_account_rec *o) { FWD(T_ACCOUNT_GET_NAME, account_get_name(s->st, n, o)); }
static int t_account_get_uid(pl_store *s, uint64_t u, pl_account_rec *o) { FWD(T_ACCOUNT_GET_UID, account_get_uid(s->st, u, o)); }
static int t_account_delete(pl_store *s, uint64_t u) { FWD(T_ACCOUNT_DELETE, account_delete(s->st, u)); }
static int t_account_scan(pl_store *s, pl_str st, pl_account_cb cb, void *ud) { FWD(T_ACCOUNT_SCAN, account_scan(s->st, st, cb, ud)); }
static int t_account_count(pl_store *s, uint64_t *n) { FWD(T_ACCOUNT_COUNT, account_count(s->st, n)); }
static int t_session_put(pl_store *s, const pl_session_rec *r) { FWD(T_SESSION_PUT, session_put(s->st, r)); }
static int t_session_get(pl_store *s, pl_str th, pl_session_rec *o) { FWD(T_SESSION_GET, session_get(s->st, th, o)); }
static int t_session_delete(pl_store *s, pl_str th) { FWD(T_SESSION_DELETE, session_delete(s->st, th)); }
static int t_session_delete_uid(pl_store *s, uint64_t u) { FWD(T_SESSION_DELETE_UID, session_delete_uid(s->st, u)); }
static int t_session_scan(pl_store *s, pl_session_cb cb, void *ud) { FWD(T_SESSION_SCAN, session_scan(s->st, cb, ud)); }
static int t_message_put(pl_store *s, const pl_message_rec *m) { FWD(T_MESSAGE_PUT, message_put(s->st, m)); }
static int t_message_get(pl_store *s, uint64_t id, pl_message_rec *o) { FWD(T_MESSAGE_GET, message_get(s->st, id, o)); }
static int t_message_set_flags(pl_store *s, uint64_t id, uint32_t f) { FWD(T_MESSAGE_SET_FLAGS, message_set_flags(s->st, id, f)); }
static int t_message_delete(pl_store *s, uint64_t id) { FWD(T_MESSAGE_DELETE, message_delete(s->st, id)); }
static int t_message_scan(pl_store *s, const pl_msg_query *q, pl_message_cb cb, void *ud) { FWD(T_MESSAGE_SCAN, message_scan(s->st, q, cb, ud)); }
static int t_message_counts(pl_store *s, uint64_t u, uint64_t *un, uint64_t *rd) { FWD(T_MESSAGE_COUNTS, message_counts(s->st, u, un, rd)); }
static int t_client_get(pl_store *s, uint64_t id, pl_client_rec *o) { FWD(T_CLIENT_GET, client_get(s->st, id, o)); }
static int t_client_put(pl_store *s, const pl_client_rec *c) { FWD(T_CLIENT_PUT, client_put(s->st, c)); }
static int t_client_scan(pl_store *s, pl_client_cb cb, void *ud) { FWD(T_CLIENT_SCAN, client_scan(s->st, cb, ud)); }

/* The two members that do not return an error code. */
static void t_abort(pl_store *s)
{
    uint64_t t0 = now_ns();
    s->in->abort(s->st);
    done(s, T_ABORT, t0, PL_OK);
}

static uint64_t t_applied_op(pl_store *s)
{
    uint64_t t0 = now_ns();
    uint64_t op = s->in->applied_op(s->st);
    done(s, T_APPLIED_OP, t0, PL_OK);
    return op;
}

/* ------------------------------------------------------------ descriptor */

static const pl_store_plugin trace_plugin = {
    .abi_version = PL_STORE_ABI_VERSION,
    .name = "trace",
    .description = "forwards to another store and logs slow calls (parley SDK example)",
    .open = t_open,
    .close = t_close,
    .meta_get = t_meta_get,
    .meta_set = t_meta_set,
    .log_append = t_log_append,
    .log_bounds = t_log_bounds,
    .log_read = t_log_read,
    .log_truncate = t_log_truncate,
    .log_compact = t_log_compact,
    .begin = t_begin,
    .commit = t_commit,
    .abort = t_abort,
    .applied_op = t_applied_op,
    .account_put = t_account_put,
    .account_get_name = t_account_get_name,
    .account_get_uid = t_account_get_uid,
    .account_delete = t_account_delete,
    .account_scan = t_account_scan,
    .account_count = t_account_count,
    .session_put = t_session_put,
    .session_get = t_session_get,
    .session_delete = t_session_delete,
    .session_delete_uid = t_session_delete_uid,
    .session_scan = t_session_scan,
    .message_put = t_message_put,
    .message_get = t_message_get,
    .message_set_flags = t_message_set_flags,
    .message_delete = t_message_delete,
    .message_scan = t_message_scan,
    .message_counts = t_message_counts,
    .client_get = t_client_get,
    .client_put = t_client_put,
    .client_scan = t_client_scan,
};

/* The one symbol the core looks up (PL_STORE_SYMBOL). PL_EXPORT because the
 * module is built with -fvisibility=hidden. */
PL_EXPORT const pl_store_plugin *parley_store_plugin(void)
{
    return &trace_plugin;
}
