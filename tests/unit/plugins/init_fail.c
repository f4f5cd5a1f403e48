/*
 * A complete store descriptor whose open() always fails with its own
 * message. The loader must accept the descriptor (every member is set) and
 * pl_plugin_store_open must pass the plugin's message through. No other
 * function can be reached without a store instance; they fail anyway, so
 * nothing here pretends to store data.
 */
#include <stdio.h>

#include <parley/store.h>

#define UNUSED(x) (void)(x)

static int if_open(const pl_store_host *host, const pl_store_options *opt,
                   pl_store **out, char *err, size_t errlen)
{
    UNUSED(host);
    UNUSED(opt);
    *out = NULL;
    snprintf(err, errlen, "init_fail: refusing to open on purpose");
    return PL_ERR_IO;
}

static void if_close(pl_store *s) { UNUSED(s); }
static int if_meta_get(pl_store *s, const char *k, uint64_t *v)
{ UNUSED(s); UNUSED(k); UNUSED(v); return PL_ERR_UNSUPPORTED; }
static int if_meta_set(pl_store *s, const char *k, uint64_t v)
{ UNUSED(s); UNUSED(k); UNUSED(v); return PL_ERR_UNSUPPORTED; }
static int if_log_append(pl_store *s, const pl_log_entry *e, size_t n)
{ UNUSED(s); UNUSED(e); UNUSED(n); return PL_ERR_UNSUPPORTED; }
static int if_log_bounds(pl_store *s, uint64_t *f, uint64_t *l)
{ UNUSED(s); UNUSED(f); UNUSED(l); return PL_ERR_UNSUPPORTED; }
static int if_log_read(pl_store *s, uint64_t f, uint64_t t, pl_log_cb cb, void *ud)
{ UNUSED(s); UNUSED(f); UNUSED(t); UNUSED(cb); UNUSED(ud); return PL_ERR_UNSUPPORTED; }
static int if_log_truncate(pl_store *s, uint64_t a)
{ UNUSED(s); UNUSED(a); return PL_ERR_UNSUPPORTED; }
static int if_log_compact(pl_store *s, uint64_t b)
{ UNUSED(s); UNUSED(b); return PL_ERR_UNSUPPORTED; }
static int if_begin(pl_store *s) { UNUSED(s); return PL_ERR_UNSUPPORTED; }
static int if_commit(pl_store *s, uint64_t op)
{ UNUSED(s); UNUSED(op); return PL_ERR_UNSUPPORTED; }
static void if_abort(pl_store *s) { UNUSED(s); }
static uint64_t if_applied_op(pl_store *s) { UNUSED(s); return 0; }
static int if_account_put(pl_store *s, const pl_account_rec *a)
{ UNUSED(s); UNUSED(a); return PL_ERR_UNSUPPORTED; }
static int if_account_get_name(pl_store *s, pl_str n, pl_account_rec *o)
{ UNUSED(s); UNUSED(n); UNUSED(o); return PL_ERR_UNSUPPORTED; }
static int if_account_get_uid(pl_store *s, uint64_t u, pl_account_rec *o)
{ UNUSED(s); UNUSED(u); UNUSED(o); return PL_ERR_UNSUPPORTED; }
static int if_account_delete(pl_store *s, uint64_t u)
{ UNUSED(s); UNUSED(u); return PL_ERR_UNSUPPORTED; }
static int if_account_scan(pl_store *s, pl_str st, pl_account_cb cb, void *ud)
{ UNUSED(s); UNUSED(st); UNUSED(cb); UNUSED(ud); return PL_ERR_UNSUPPORTED; }
static int if_account_count(pl_store *s, uint64_t *n)
{ UNUSED(s); UNUSED(n); return PL_ERR_UNSUPPORTED; }
static int if_session_put(pl_store *s, const pl_session_rec *r)
{ UNUSED(s); UNUSED(r); return PL_ERR_UNSUPPORTED; }
static int if_session_get(pl_store *s, pl_str t, pl_session_rec *o)
{ UNUSED(s); UNUSED(t); UNUSED(o); return PL_ERR_UNSUPPORTED; }
static int if_session_delete(pl_store *s, pl_str t)
{ UNUSED(s); UNUSED(t); return PL_ERR_UNSUPPORTED; }
static int if_session_delete_uid(pl_store *s, uint64_t u)
{ UNUSED(s); UNUSED(u); return PL_ERR_UNSUPPORTED; }
static int if_session_scan(pl_store *s, pl_session_cb cb, void *ud)
{ UNUSED(s); UNUSED(cb); UNUSED(ud); return PL_ERR_UNSUPPORTED; }
static int if_message_put(pl_store *s, const pl_message_rec *m)
{ UNUSED(s); UNUSED(m); return PL_ERR_UNSUPPORTED; }
static int if_message_get(pl_store *s, uint64_t id, pl_message_rec *o)
{ UNUSED(s); UNUSED(id); UNUSED(o); return PL_ERR_UNSUPPORTED; }
static int if_message_set_flags(pl_store *s, uint64_t id, uint32_t f)
{ UNUSED(s); UNUSED(id); UNUSED(f); return PL_ERR_UNSUPPORTED; }
static int if_message_delete(pl_store *s, uint64_t id)
{ UNUSED(s); UNUSED(id); return PL_ERR_UNSUPPORTED; }
static int if_message_scan(pl_store *s, const pl_msg_query *q, pl_message_cb cb, void *ud)
{ UNUSED(s); UNUSED(q); UNUSED(cb); UNUSED(ud); return PL_ERR_UNSUPPORTED; }
static int if_message_counts(pl_store *s, uint64_t u, uint64_t *un, uint64_t *rd)
{ UNUSED(s); UNUSED(u); UNUSED(un); UNUSED(rd); return PL_ERR_UNSUPPORTED; }
static int if_client_get(pl_store *s, uint64_t id, pl_client_rec *o)
{ UNUSED(s); UNUSED(id); UNUSED(o); return PL_ERR_UNSUPPORTED; }
static int if_client_put(pl_store *s, const pl_client_rec *c)
{ UNUSED(s); UNUSED(c); return PL_ERR_UNSUPPORTED; }
static int if_client_scan(pl_store *s, pl_client_cb cb, void *ud)
{ UNUSED(s); UNUSED(cb); UNUSED(ud); return PL_ERR_UNSUPPORTED; }

static const pl_store_plugin init_fail_plugin = {
    .abi_version = PL_STORE_ABI_VERSION,
    .name = "init_fail",
    .description = "test plugin whose open() always fails",
    .open = if_open,
    .close = if_close,
    .meta_get = if_meta_get,
    .meta_set = if_meta_set,
    .log_append = if_log_append,
    .log_bounds = if_log_bounds,
    .log_read = if_log_read,
    .log_truncate = if_log_truncate,
    .log_compact = if_log_compact,
    .begin = if_begin,
    .commit = if_commit,
    .abort = if_abort,
    .applied_op = if_applied_op,
    .account_put = if_account_put,
    .account_get_name = if_account_get_name,
    .account_get_uid = if_account_get_uid,
    .account_delete = if_account_delete,
    .account_scan = if_account_scan,
    .account_count = if_account_count,
    .session_put = if_session_put,
    .session_get = if_session_get,
    .session_delete = if_session_delete,
    .session_delete_uid = if_session_delete_uid,
    .session_scan = if_session_scan,
    .message_put = if_message_put,
    .message_get = if_message_get,
    .message_set_flags = if_message_set_flags,
    .message_delete = if_message_delete,
    .message_scan = if_message_scan,
    .message_counts = if_message_counts,
    .client_get = if_client_get,
    .client_put = if_client_put,
    .client_scan = if_client_scan,
};

PL_EXPORT const pl_store_plugin *parley_store_plugin(void);

const pl_store_plugin *parley_store_plugin(void)
{
    return &init_fail_plugin;
}
