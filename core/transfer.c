/*
 * core/transfer.c — the /chat/ endpoints of the admin listener
 * (transfer.h): imports become replicated ops, exports come from one
 * snapshot.
 *
 * An import request is one op: it commits whole or not at all, and the
 * op's rules (core/chat.c) make a batch sent twice change nothing the
 * second time, so a client that lost an answer (a failover, a timeout)
 * simply sends the batch again. The answer waits for the commit, as a
 * client's send does: an acknowledged batch is durable on a majority.
 */
#include "transfer.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* What an outcome is called in the answer (transfer.h). */
static const char *outcome_code(uint8_t o)
{
    switch (o) {
    case PL_IMP_CREATED: return "created";
    case PL_IMP_IMPORTED: return "imported";
    case PL_IMP_DONE_BEFORE: return "before";
    case PL_IMP_TAKEN: return "taken";
    case PL_IMP_NO_RECIPIENT: return "no-recipient";
    case PL_IMP_RECIPIENT_GONE: return "recipient-gone";
    default: return "invalid";
    }
}

static void reply_error(pl_admin_reply_fn reply, void *req, int http, const char *fmt, ...)
    PL_PRINTF(4, 5);

static void reply_error(pl_admin_reply_fn reply, void *req, int http, const char *fmt, ...)
{
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    char *text = o && cJSON_AddStringToObject(o, "error", why) ? cJSON_PrintUnformatted(o) : NULL;
    reply(req, http, text ? text : "{\"error\":\"out of memory\"}");
    cJSON_free(text);
    cJSON_Delete(o);
}

static void reply_doc(pl_admin_reply_fn reply, void *req, cJSON *doc)
{
    char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
    if (text)
        reply(req, 200, text);
    else
        reply_error(reply, req, 500, "out of memory");
    cJSON_free(text);
    cJSON_Delete(doc);
}

/* The checks every import makes first: primary, and a cluster that can
 * apply the op kind. Answers and returns non-zero when it may not go on. */
static int may_import(const pl_xfer_host *h, uint32_t kind, pl_admin_reply_fn reply, void *req)
{
    char why[400];
    int primary = -1;
    int http = h->primary(h->ud, &primary, why, sizeof why);
    if (http != PL_OK) {
        cJSON *o = cJSON_CreateObject();
        if (o && cJSON_AddStringToObject(o, "error", why) &&
            (http != 421 || primary < 0 || cJSON_AddNumberToObject(o, "primary", primary))) {
            char *text = cJSON_PrintUnformatted(o);
            reply(req, http, text ? text : "{\"error\":\"out of memory\"}");
            cJSON_free(text);
        } else {
            reply(req, 500, "{\"error\":\"out of memory\"}");
        }
        cJSON_Delete(o);
        return -1;
    }
    int rc = h->peers_apply(h->ud, kind + 1, why, sizeof why);
    if (rc == PL_ERR_UNAVAILABLE) {
        reply_error(reply, req, 503, "%s: an import needs every server of the cluster up "
                    "(older servers cannot apply its ops); retry when it is", why);
        return -1;
    }
    if (rc != PL_OK) {
        reply_error(reply, req, 409, "%s: upgrade every server before importing "
                    "(docs/operations.md, \"Upgrades\")", why);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------- prototype import */

typedef struct import_wait {
    pl_admin_reply_fn reply;
    void *req;
    uint32_t n_users;         /* the first n_users outcomes are the users' */
} import_wait;

static void on_imported(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    import_wait *w = ud;
    if (err != PL_OK) {
        /* Not known to be applied: the client sends the batch again, and
         * what did commit is then "before". */
        reply_error(w->reply, w->req, err == PL_ERR_NOT_PRIMARY || err == PL_ERR_UNAVAILABLE
                    ? 503 : 500, "the batch did not commit: %s; send it again", pl_strerror(err));
        free(w);
        return;
    }
    if (res->reply.status != PL_OK) {
        reply_error(w->reply, w->req, 400, "%.*s", (int)res->reply.error.len,
                    res->reply.error.ptr ? res->reply.error.ptr : "");
        free(w);
        return;
    }
    cJSON *doc = cJSON_CreateObject(), *u = cJSON_CreateArray(), *m = cJSON_CreateArray();
    if (doc && u && m) {
        cJSON_AddNumberToObject(doc, "op", (double)op);
        for (uint32_t i = 0; i < res->n_outcomes; i++)
            cJSON_AddItemToArray(i < w->n_users ? u : m,
                                 cJSON_CreateString(outcome_code(res->outcomes[i])));
        cJSON_AddItemToObject(doc, "users", u);
        cJSON_AddItemToObject(doc, "messages", m);
        u = m = NULL;
    }
    cJSON_Delete(u);
    cJSON_Delete(m);
    reply_doc(w->reply, w->req, doc);
    free(w);
}

static int json_keys(const cJSON *o, const char *const *known, const char **bad)
{
    for (const cJSON *m = o->child; m; m = m->next) {
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            ok |= m->string && strcmp(m->string, known[i]) == 0;
        if (!ok) {
            *bad = m->string ? m->string : "?";
            return -1;
        }
    }
    return 0;
}

static pl_str jstr(const cJSON *o, const char *key, int *ok)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) {
        *ok = 0;
        return (pl_str){ NULL, 0 };
    }
    return pl_str_c(v->valuestring);
}

void pl_xfer_import_prototype(const pl_xfer_host *h, const char *body, size_t len,
                              pl_admin_reply_fn reply, void *req)
{
    static const char *const top[] = { "users", "messages", NULL };
    static const char *const ukeys[] = { "name", "pwhash", NULL };
    static const char *const mkeys[] = { "to", "from", "seq", "read", "body", NULL };
    if (may_import(h, PL_OP_IMPORT, reply, req))
        return;
    if (pl_json_has_nul(body, len)) {
        reply_error(reply, req, 400, "a string holds \\u0000 (NUL), which parley cannot store");
        return;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *users = root ? cJSON_GetObjectItemCaseSensitive(root, "users") : NULL;
    const cJSON *msgs = root ? cJSON_GetObjectItemCaseSensitive(root, "messages") : NULL;
    const char *bad = NULL;
    pl_import_rec *recs = NULL;
    uint8_t *enc = NULL;
    size_t n = 0, elen = 0;
    if (!cJSON_IsObject(root) || json_keys(root, top, &bad) ||
        (users && !cJSON_IsArray(users)) || (msgs && !cJSON_IsArray(msgs))) {
        reply_error(reply, req, 400, "the body must be a JSON object {\"users\": [...], "
                    "\"messages\": [...]}%s%s", bad ? "; unknown key " : "", bad ? bad : "");
        goto out;
    }
    size_t nu = (size_t)cJSON_GetArraySize(users), nm = (size_t)cJSON_GetArraySize(msgs);
    if (nu + nm > PL_IMPORT_BATCH_MAX) {
        reply_error(reply, req, 400, "%zu records in one batch; the limit is %u "
                    "(PL_IMPORT_BATCH_MAX)", nu + nm, PL_IMPORT_BATCH_MAX);
        goto out;
    }
    if (nu + nm == 0) {
        reply_error(reply, req, 400, "an empty batch");
        goto out;
    }
    if (!(recs = calloc(nu + nm, sizeof *recs))) {
        reply_error(reply, req, 500, "out of memory");
        goto out;
    }
    for (const cJSON *e = users ? users->child : NULL; e; e = e->next, n++) {
        int ok = cJSON_IsObject(e) && !json_keys(e, ukeys, &bad);
        recs[n].kind = 'U';
        recs[n].name = jstr(e, "name", &ok);
        recs[n].pwhash = jstr(e, "pwhash", &ok);
        if (!ok) {
            reply_error(reply, req, 400, "users[%zu]: must be {\"name\": TEXT, \"pwhash\": TEXT}",
                        n);
            goto out;
        }
    }
    for (const cJSON *e = msgs ? msgs->child : NULL; e; e = e->next, n++) {
        int ok = cJSON_IsObject(e) && !json_keys(e, mkeys, &bad);
        const cJSON *seq = ok ? cJSON_GetObjectItemCaseSensitive(e, "seq") : NULL;
        const cJSON *rd = ok ? cJSON_GetObjectItemCaseSensitive(e, "read") : NULL;
        recs[n].kind = 'M';
        recs[n].to = jstr(e, "to", &ok);
        recs[n].from = jstr(e, "from", &ok);
        recs[n].body = jstr(e, "body", &ok);
        if (!ok || !cJSON_IsNumber(seq) || !cJSON_IsBool(rd) || !(seq->valuedouble >= 1) ||
            seq->valuedouble > 9007199254740991.0 ||
            (double)(uint64_t)seq->valuedouble != seq->valuedouble) {
            reply_error(reply, req, 400, "messages[%zu]: must be {\"to\": NAME, \"from\": NAME, "
                        "\"seq\": 1.., \"read\": BOOL, \"body\": TEXT}", n - nu);
            goto out;
        }
        recs[n].seq = (uint64_t)seq->valuedouble;
        recs[n].read = cJSON_IsTrue(rd) ? 1 : 0;
    }
    int rc = pl_import_batch_encode(recs, n, &enc, &elen);
    if (rc != PL_OK || elen > UINT32_MAX) {
        reply_error(reply, req, 500, "encoding the batch: %s", pl_strerror(rc));
        goto out;
    }
    import_wait *w = calloc(1, sizeof *w);
    if (!w) {
        reply_error(reply, req, 500, "out of memory");
        goto out;
    }
    *w = (import_wait){ reply, req, (uint32_t)nu };
    pl_op op = { .kind = PL_OP_IMPORT, .time_ms = h->op_time(h->ud),
                 .body = { (const char *)enc, (uint32_t)elen } };
    rc = pl_seq_submit(h->seq, &op, on_imported, w);
    if (rc != PL_OK) {
        free(w);
        reply_error(reply, req, 503, "could not queue the batch: %s", pl_strerror(rc));
    }
out:
    /* The records point into root: it goes only now. */
    if (enc)
        sodium_memzero(enc, elen);
    free(enc);
    free(recs);
    cJSON_Delete(root);
}

/* ------------------------------------------------- dump import */

typedef struct restore_wait {
    pl_admin_reply_fn reply;
    void *req;
    pl_chat *chat;            /* for the digest, when end */
    int end;
} restore_wait;

static void on_restored(void *ud, int err, uint64_t op, const pl_apply_result *res)
{
    restore_wait *w = ud;
    if (err != PL_OK) {
        reply_error(w->reply, w->req, err == PL_ERR_NOT_PRIMARY || err == PL_ERR_UNAVAILABLE
                    ? 503 : 500, "the batch did not commit: %s; send it again", pl_strerror(err));
        free(w);
        return;
    }
    if (res->reply.status != PL_OK) {
        reply_error(w->reply, w->req, res->reply.status == PL_ERR_USER_EXISTS ? 409 : 400,
                    "%.*s", (int)res->reply.error.len,
                    res->reply.error.ptr ? res->reply.error.ptr : "");
        free(w);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    char digest[65];
    if (doc) {
        cJSON_AddNumberToObject(doc, "op", (double)op);
        cJSON_AddNumberToObject(doc, "restored", (double)res->restored);
        cJSON_AddNumberToObject(doc, "already", (double)res->restore_same);
        if (w->end && pl_chat_digest(w->chat, digest) == PL_OK)
            cJSON_AddStringToObject(doc, "digest", digest);
    }
    reply_doc(w->reply, w->req, doc);
    free(w);
}

static int query_flag(const char *query, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = query; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=' && p[n + 1] == '1' &&
            (p[n + 2] == '&' || p[n + 2] == '\0'))
            return 1;
        if (strncmp(p, name, n) == 0 && p[n] == '=' && p[n + 1] == '0' &&
            (p[n + 2] == '&' || p[n + 2] == '\0'))
            return 0;
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return -1;
}

void pl_xfer_restore(const pl_xfer_host *h, const char *query, const char *body, size_t len,
                     pl_admin_reply_fn reply, void *req)
{
    if (may_import(h, PL_OP_RESTORE, reply, req))
        return;
    pl_dump_line *lines = NULL;
    size_t n = 0, cap = 0;
    uint8_t *enc = NULL;
    size_t elen = 0;
    pl_snapshot_rec *recs = NULL;
    char err[300];
    for (size_t pos = 0, no = 1; pos < len; no++) {
        const char *nl = memchr(body + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - body - pos) : len - pos;
        if (ll == 0 && !nl)
            break;
        if (n == PL_RESTORE_BATCH_MAX + 1) {
            reply_error(reply, req, 400, "more than %u records in one batch (PL_RESTORE_BATCH_MAX)",
                        PL_RESTORE_BATCH_MAX);
            goto out;
        }
        if (n == cap) {
            /* The header and at most PL_RESTORE_BATCH_MAX records. */
            size_t nc = cap ? cap * 2 : 64;
            if (nc > PL_RESTORE_BATCH_MAX + 1)
                nc = PL_RESTORE_BATCH_MAX + 1;
            pl_dump_line *v = realloc(lines, nc * sizeof *v);
            if (!v) {
                reply_error(reply, req, 500, "out of memory");
                goto out;
            }
            lines = v;
            cap = nc;
        }
        int rc = pl_dump_parse_line(body + pos, ll, &lines[n], err, sizeof err);
        n++;
        if (rc != PL_OK) {
            reply_error(reply, req, 400, "line %zu of the batch: %s", no, err);
            goto out;
        }
        if ((n == 1) != (lines[n - 1].kind == PL_DUMP_HEADER) ||
            lines[n - 1].kind == PL_DUMP_END) {
            reply_error(reply, req, 400, "line %zu of the batch: a batch is the dump's header "
                        "line, then records", no);
            goto out;
        }
        if (lines[n - 1].kind == PL_DUMP_RECORD && lines[n - 1].rec.tag == 'S' &&
            !lines[0].sessions) {
            reply_error(reply, req, 400, "line %zu: a session in a dump whose header says it "
                        "has none", no);
            goto out;
        }
        pos += ll + (nl ? 1 : 0);
    }
    if (n == 0) {
        reply_error(reply, req, 400, "an empty batch: the dump's header line comes first");
        goto out;
    }
    if (!(recs = calloc(n, sizeof *recs))) {
        reply_error(reply, req, 500, "out of memory");
        goto out;
    }
    for (size_t i = 1; i < n; i++)
        recs[i - 1] = lines[i].rec;
    int begin = query_flag(query, "begin") == 1, end = query_flag(query, "end") == 1;
    pl_restore_batch b = { begin ? PL_RESTORE_BEGIN : 0, lines[0].next_uid,
                           lines[0].next_msg_id, recs, n - 1 };
    int rc = pl_restore_batch_encode(&b, &enc, &elen);
    if (rc != PL_OK || elen > UINT32_MAX) {
        reply_error(reply, req, 400, "encoding the batch: %s", pl_strerror(rc));
        goto out;
    }
    restore_wait *w = calloc(1, sizeof *w);
    if (!w) {
        reply_error(reply, req, 500, "out of memory");
        goto out;
    }
    *w = (restore_wait){ reply, req, h->chat, end };
    pl_op op = { .kind = PL_OP_RESTORE, .time_ms = h->op_time(h->ud),
                 .body = { (const char *)enc, (uint32_t)elen } };
    rc = pl_seq_submit(h->seq, &op, on_restored, w);
    if (rc != PL_OK) {
        free(w);
        reply_error(reply, req, 503, "could not queue the batch: %s", pl_strerror(rc));
    }
out:
    if (enc)
        sodium_memzero(enc, elen);
    free(enc);
    free(recs);
    for (size_t i = 0; i < n; i++)
        pl_dump_line_clear(&lines[i]);
    free(lines);
}

/* ------------------------------------------------- export */

int pl_xfer_export(const pl_xfer_host *h, const char *query, pl_dump **out, int *http,
                   char **json_err)
{
    char why[400];
    int primary = -1;
    *out = NULL;
    *json_err = NULL;
    int st = h->primary(h->ud, &primary, why, sizeof why);
    if (st != PL_OK) {
        cJSON *o = cJSON_CreateObject();
        if (o && cJSON_AddStringToObject(o, "error", why) &&
            (st != 421 || primary < 0 || cJSON_AddNumberToObject(o, "primary", primary)))
            *json_err = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        *http = st;
        return PL_ERR_NOT_PRIMARY;
    }
    /* The whole state in one scan on the loop, as for a state transfer
     * (core/seq.c): what the dump holds is the state at this op, with
     * every change acknowledged to a client before it. */
    uint8_t *snap = NULL;
    size_t len = 0;
    uint64_t op = 0;
    int rc = pl_snapshot_export(h->sp, h->st, 0, &snap, &len, &op);
    pl_dump_meta meta = { h->op_time(h->ud), h->address, h->store_name, PARLEY_VERSION,
                          query_flag(query, "sessions") != 0 };
    if (rc == PL_OK)
        rc = pl_dump_new(snap, len, &meta, out);
    if (rc != PL_OK) {
        free(snap);
        *http = 500;
        cJSON *o = cJSON_CreateObject();
        if (o && cJSON_AddStringToObject(o, "error", pl_strerror(rc)))
            *json_err = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return rc;
    }
    pl_log(PL_LOG_INFO, "export: a dump of the state at op %" PRIu64 " (%zu bytes of snapshot)%s",
           op, len, meta.sessions ? "" : ", without sessions");
    return PL_OK;
}
