/*
 * core/dump.c — parley's JSON Lines export format (dump.h).
 *
 * Writing walks one snapshot, so the dump is the state at one op however
 * long it takes to stream; it is produced a piece at a time (a server
 * sends each piece once the previous one has left), never all at once.
 * Reading is one line at a time and treats the text as hostile: an
 * operator may have edited it, or it may be cut short. Every key is
 * known, every number in range, every string decoded as the format says,
 * or the line is refused with the key that was wrong.
 */
#include "dump.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIECE 65536u
#define JSON_INT_MAX 9007199254740991ull   /* 2^53 - 1: exact in a double */

struct pl_dump {
    uint8_t *snap;
    size_t len;
    pl_snapshot_iter it;
    uint64_t op, next_uid, next_msg_id;
    char digest[65];
    pl_dump_meta meta;
    char *server, *store, *version;
    int state;                /* 0 header next, 1 records, 2 end written, 3 done */
    uint64_t n[4];            /* accounts, sessions, messages, clients written */
    char *buf;
    size_t used, cap;
    int err;
};

/* ------------------------------------------------------------ writing */

static void put(pl_dump *d, const char *s, size_t n)
{
    if (d->err)
        return;
    if (d->used + n + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : PIECE * 2;
        while (cap < d->used + n + 1)
            cap *= 2;
        char *b = realloc(d->buf, cap);
        if (!b) {
            d->err = PL_ERR_NOMEM;
            return;
        }
        d->buf = b;
        d->cap = cap;
    }
    memcpy(d->buf + d->used, s, n);
    d->used += n;
}

/* A uint64 as a JSON value: a number while a double holds it exactly. */
static cJSON *num(uint64_t v)
{
    if (v <= JSON_INT_MAX)
        return cJSON_CreateNumber((double)v);
    char t[24];
    snprintf(t, sizeof t, "%" PRIu64, v);
    return cJSON_CreateString(t);
}

/* cJSON strings are NUL-terminated: copy with the length. */
static cJSON *str(pl_str s)
{
    char *t = malloc((size_t)s.len + 1);
    if (!t)
        return NULL;
    if (s.len)
        memcpy(t, s.ptr, s.len);
    t[s.len] = '\0';
    cJSON *v = cJSON_CreateString(t);
    free(t);
    return v;
}

static cJSON *b64(const void *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *t = malloc(cap);
    if (!t)
        return NULL;
    sodium_bin2base64(t, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    cJSON *v = cJSON_CreateString(t);
    free(t);
    return v;
}

static cJSON *hex(const void *p, size_t n)
{
    char *t = malloc(2 * n + 1);
    if (!t)
        return NULL;
    sodium_bin2hex(t, 2 * n + 1, p, n);
    cJSON *v = cJSON_CreateString(t);
    free(t);
    return v;
}

/* A password hash as text when it is printable ASCII (every Argon2id and
 * imported string is), else in base64: a store holds opaque bytes. */
static int printable(pl_str s)
{
    for (uint32_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] < 0x20 || (unsigned char)s.ptr[i] > 0x7e)
            return 0;
    return 1;
}

static int add(cJSON *o, const char *k, cJSON *v)
{
    if (!v)
        return 0;
    cJSON_AddItemToObject(o, k, v);
    return 1;
}

static cJSON *record_json(const pl_snapshot_rec *x)
{
    cJSON *root = cJSON_CreateObject(), *o = cJSON_CreateObject();
    int ok = root && o;
    switch (x->tag) {
    case 'A':
        ok = ok && add(o, "uid", num(x->a.uid)) && add(o, "name", str(x->a.name)) &&
             (printable(x->a.pwhash) ? add(o, "pwhash", str(x->a.pwhash))
                                     : add(o, "pwhash_b64", b64(x->a.pwhash.ptr, x->a.pwhash.len))) &&
             add(o, "created_ms", num(x->a.created_ms));
        ok = ok && add(root, "account", o);
        break;
    case 'S':
        ok = ok && add(o, "token_hash", hex(x->s.token_hash.ptr, x->s.token_hash.len)) &&
             add(o, "uid", num(x->s.uid)) && add(o, "created_ms", num(x->s.created_ms));
        ok = ok && add(root, "session", o);
        break;
    case 'M':
        ok = ok && add(o, "id", num(x->m.id)) && add(o, "from_uid", num(x->m.from_uid)) &&
             add(o, "to_uid", num(x->m.to_uid)) && add(o, "from", str(x->m.from_name)) &&
             add(o, "to", str(x->m.to_name)) && add(o, "body", str(x->m.body)) &&
             add(o, "time_ms", num(x->m.time_ms)) &&
             add(o, "read", cJSON_CreateBool(x->m.flags & PL_MSGF_READ)) &&
             add(o, "deleted_by_sender", cJSON_CreateBool(x->m.flags & PL_MSGF_DEL_SENDER)) &&
             add(o, "deleted_by_recipient", cJSON_CreateBool(x->m.flags & PL_MSGF_DEL_RECIPIENT));
        ok = ok && add(root, "message", o);
        break;
    case 'C':
        ok = ok && add(o, "client_id", num(x->c.client_id)) &&
             add(o, "request_no", num(x->c.request_no)) && add(o, "op", num(x->c.op)) &&
             add(o, "reply", b64(x->c.reply.ptr, x->c.reply.len));
        ok = ok && add(root, "client", o);
        break;
    default:
        ok = 0;
    }
    if (!ok) {
        /* add() fails only for a value it could not make, so o was never
         * added to root */
        cJSON_Delete(o);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void put_json(pl_dump *d, cJSON *o)
{
    char *t = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!t) {
        d->err = PL_ERR_NOMEM;
        return;
    }
    put(d, t, strlen(t));
    put(d, "\n", 1);
    cJSON_free(t);
}

static char *dup_or_empty(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    char *r = malloc(n + 1);
    if (r) {
        if (n)
            memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

int pl_dump_new(uint8_t *snap, size_t len, const pl_dump_meta *m, pl_dump **out)
{
    *out = NULL;
    pl_dump *d = calloc(1, sizeof *d);
    if (!d)
        return PL_ERR_NOMEM;
    int rc = pl_snapshot_iter_init(&d->it, snap, len, &d->op, &d->next_uid, &d->next_msg_id);
    if (rc == PL_OK)
        rc = pl_snapshot_digest(snap, len, d->digest);
    if (rc != PL_OK) {
        free(d);
        return rc;
    }
    d->meta = *m;
    d->server = dup_or_empty(m->server);
    d->store = dup_or_empty(m->store);
    d->version = dup_or_empty(m->version);
    if (!d->server || !d->store || !d->version) {
        free(d->server);
        free(d->store);
        free(d->version);
        free(d);
        return PL_ERR_NOMEM;
    }
    d->snap = snap;
    d->len = len;
    *out = d;
    return PL_OK;
}

uint64_t pl_dump_op(const pl_dump *d)
{
    return d->op;
}

const char *pl_dump_digest(const pl_dump *d)
{
    return d->digest;
}

int pl_dump_next(pl_dump *d, const char **text, size_t *len)
{
    d->used = 0;
    *text = NULL;
    *len = 0;
    if (d->err)
        return d->err;
    if (d->state == 0) {
        cJSON *h = cJSON_CreateObject();
        if (h && add(h, "parley_dump", num(PL_DUMP_VERSION)) && add(h, "op", num(d->op)) &&
            add(h, "next_uid", num(d->next_uid)) && add(h, "next_msg_id", num(d->next_msg_id)) &&
            add(h, "digest", cJSON_CreateString(d->digest)) &&
            add(h, "sessions", cJSON_CreateBool(d->meta.sessions != 0)) &&
            add(h, "created_ms", num(d->meta.created_ms)) &&
            add(h, "server", cJSON_CreateString(d->server)) &&
            add(h, "store", cJSON_CreateString(d->store)) &&
            add(h, "parley", cJSON_CreateString(d->version)))
            put_json(d, h);
        else {
            cJSON_Delete(h);
            d->err = PL_ERR_NOMEM;
        }
        d->state = 1;
    }
    while (d->state == 1 && !d->err && d->used < PIECE) {
        pl_snapshot_rec x;
        int rc = pl_snapshot_iter_next(&d->it, &x);
        if (rc != PL_OK) {
            d->err = rc;
            break;
        }
        if (x.tag == 'E') {
            cJSON *e = cJSON_CreateObject(), *o = cJSON_CreateObject();
            if (e && o && add(o, "accounts", num(d->n[0])) && add(o, "sessions", num(d->n[1])) &&
                add(o, "messages", num(d->n[2])) && add(o, "clients", num(d->n[3])) &&
                add(e, "end", o))
                put_json(d, e);
            else {
                cJSON_Delete(o);      /* never added: see record_json */
                cJSON_Delete(e);
                d->err = PL_ERR_NOMEM;
            }
            d->state = 2;
            break;
        }
        if (x.tag == 'S' && !d->meta.sessions)
            continue;
        put_json(d, record_json(&x));
        d->n[x.tag == 'A' ? 0 : x.tag == 'S' ? 1 : x.tag == 'M' ? 2 : 3]++;
    }
    if (d->err)
        return d->err;
    if (d->state == 2 && d->used == 0)
        d->state = 3;
    *text = d->buf;
    *len = d->used;
    return PL_OK;
}

void pl_dump_free(pl_dump *d)
{
    if (!d)
        return;
    free(d->snap);
    free(d->buf);
    free(d->server);
    free(d->store);
    free(d->version);
    free(d);
}

/* ------------------------------------------------------------ reading */

typedef struct rd {
    char *err;
    size_t errlen;
    const char *where;        /* "account", "message", ... */
} rd;

static int fail(rd *r, const char *key, const char *why)
{
    snprintf(r->err, r->errlen, "%s%s%s: %s", r->where, key ? "." : "", key ? key : "", why);
    return PL_ERR_INVALID;
}

/* Every member of o is one of known, and none twice. */
static int keys(rd *r, const cJSON *o, const char *const *known)
{
    for (const cJSON *m = o->child; m; m = m->next) {
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            ok |= m->string && strcmp(m->string, known[i]) == 0;
        if (!ok)
            return fail(r, m->string ? m->string : "?", "unknown key");
        for (const cJSON *p = o->child; p != m; p = p->next)
            if (strcmp(p->string, m->string) == 0)
                return fail(r, m->string, "duplicate key");
    }
    return PL_OK;
}

static int get_u64(rd *r, const cJSON *o, const char *key, uint64_t *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(x)) {
        double d = x->valuedouble;
        if (!(d >= 0 && d <= (double)JSON_INT_MAX) || (double)(uint64_t)d != d)
            return fail(r, key, "must be an integer 0-2^53 (or a decimal string)");
        *v = (uint64_t)d;
        return PL_OK;
    }
    if (cJSON_IsString(x) && x->valuestring[0] && strlen(x->valuestring) <= 20) {
        uint64_t acc = 0;
        for (const char *p = x->valuestring; *p; p++) {
            if (*p < '0' || *p > '9' || acc > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                return fail(r, key, "must be a decimal integer below 2^64");
            acc = acc * 10 + (uint64_t)(*p - '0');
        }
        *v = acc;
        return PL_OK;
    }
    return fail(r, key, x ? "must be an integer" : "missing");
}

static int get_str(rd *r, const cJSON *o, const char *key, pl_str *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(x))
        return fail(r, key, x ? "must be a string" : "missing");
    size_t n = strlen(x->valuestring);
    if (n > UINT32_MAX)
        return fail(r, key, "too long");
    *v = (pl_str){ x->valuestring, (uint32_t)n };
    return PL_OK;
}

static int get_bool(rd *r, const cJSON *o, const char *key, int *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(x))
        return fail(r, key, x ? "must be true or false" : "missing");
    *v = cJSON_IsTrue(x);
    return PL_OK;
}

/* A \u0000 inside a JSON string would end the C string cJSON gives us
 * early: a name or body would silently lose its tail. None in a dump
 * parley writes (bodies cannot hold NUL), so such a line is refused. */
int pl_json_has_nul(const char *t, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (t[i] != '\\')
            continue;
        if (t[i + 1] == 'u' && i + 5 < n && memcmp(t + i + 2, "0000", 4) == 0)
            return 1;
        i++; /* the escaped character */
    }
    return 0;
}

static int rd_account(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "uid", "name", "pwhash", "pwhash_b64", "created_ms",
                                         NULL };
    pl_account_rec *a = &l->rec.a;
    int rc;
    r->where = "account";
    if ((rc = keys(r, o, known)) || (rc = get_u64(r, o, "uid", &a->uid)) ||
        (rc = get_str(r, o, "name", &a->name)) ||
        (rc = get_u64(r, o, "created_ms", &a->created_ms)))
        return rc;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "pwhash_b64");
    if (!b)
        return get_str(r, o, "pwhash", &a->pwhash);
    if (cJSON_GetObjectItemCaseSensitive(o, "pwhash"))
        return fail(r, "pwhash_b64", "give pwhash or pwhash_b64, not both");
    if (!cJSON_IsString(b))
        return fail(r, "pwhash_b64", "must be a base64 string");
    size_t n = strlen(b->valuestring), got = 0;
    if (!(l->bytes = malloc(n + 1)))
        return PL_ERR_NOMEM;
    if (sodium_base642bin(l->bytes, n + 1, b->valuestring, n, NULL, &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return fail(r, "pwhash_b64", "not base64");
    a->pwhash = (pl_str){ (const char *)l->bytes, (uint32_t)got };
    return PL_OK;
}

static int rd_session(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "token_hash", "uid", "created_ms", NULL };
    pl_session_rec *s = &l->rec.s;
    pl_str h;
    int rc;
    size_t got = 0;
    r->where = "session";
    if ((rc = keys(r, o, known)) || (rc = get_str(r, o, "token_hash", &h)) ||
        (rc = get_u64(r, o, "uid", &s->uid)) || (rc = get_u64(r, o, "created_ms", &s->created_ms)))
        return rc;
    if (!(l->bytes = malloc(32)))
        return PL_ERR_NOMEM;
    if (h.len != 64 || sodium_hex2bin(l->bytes, 32, h.ptr, h.len, NULL, &got, NULL) != 0 ||
        got != 32)
        return fail(r, "token_hash", "must be 64 hex digits");
    s->token_hash = (pl_str){ (const char *)l->bytes, 32 };
    return PL_OK;
}

static int rd_message(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "id", "from_uid", "to_uid", "from", "to", "body",
                                         "time_ms", "read", "deleted_by_sender",
                                         "deleted_by_recipient", NULL };
    pl_message_rec *m = &l->rec.m;
    int rc, rd_, ds, dr;
    r->where = "message";
    if ((rc = keys(r, o, known)) || (rc = get_u64(r, o, "id", &m->id)) ||
        (rc = get_u64(r, o, "from_uid", &m->from_uid)) ||
        (rc = get_u64(r, o, "to_uid", &m->to_uid)) || (rc = get_str(r, o, "from", &m->from_name)) ||
        (rc = get_str(r, o, "to", &m->to_name)) || (rc = get_str(r, o, "body", &m->body)) ||
        (rc = get_u64(r, o, "time_ms", &m->time_ms)) || (rc = get_bool(r, o, "read", &rd_)) ||
        (rc = get_bool(r, o, "deleted_by_sender", &ds)) ||
        (rc = get_bool(r, o, "deleted_by_recipient", &dr)))
        return rc;
    m->flags = (rd_ ? PL_MSGF_READ : 0) | (ds ? PL_MSGF_DEL_SENDER : 0) |
               (dr ? PL_MSGF_DEL_RECIPIENT : 0);
    return PL_OK;
}

static int rd_client(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "client_id", "request_no", "op", "reply", NULL };
    pl_client_rec *c = &l->rec.c;
    pl_str b;
    int rc;
    r->where = "client";
    if ((rc = keys(r, o, known)) || (rc = get_u64(r, o, "client_id", &c->client_id)) ||
        (rc = get_u64(r, o, "request_no", &c->request_no)) || (rc = get_u64(r, o, "op", &c->op)) ||
        (rc = get_str(r, o, "reply", &b)))
        return rc;
    size_t got = 0;
    if (!(l->bytes = malloc((size_t)b.len + 1)))
        return PL_ERR_NOMEM;
    if (sodium_base642bin(l->bytes, (size_t)b.len + 1, b.ptr, b.len, NULL, &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return fail(r, "reply", "not base64");
    c->reply = (pl_str){ (const char *)l->bytes, (uint32_t)got };
    return PL_OK;
}

static int rd_header(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "parley_dump", "op", "next_uid", "next_msg_id",
                                         "digest", "sessions", "created_ms", "server", "store",
                                         "parley", NULL };
    uint64_t v;
    pl_str dg;
    int rc;
    r->where = "header";
    if ((rc = get_u64(r, o, "parley_dump", &v)))
        return rc;
    if (v != PL_DUMP_VERSION) {
        char why[120];
        snprintf(why, sizeof why, "format version %" PRIu64 "; this parley reads version %u",
                 v, PL_DUMP_VERSION);
        return fail(r, "parley_dump", why);
    }
    l->version = (uint32_t)v;
    if ((rc = keys(r, o, known)) || (rc = get_u64(r, o, "op", &l->op)) ||
        (rc = get_u64(r, o, "next_uid", &l->next_uid)) ||
        (rc = get_u64(r, o, "next_msg_id", &l->next_msg_id)) ||
        (rc = get_str(r, o, "digest", &dg)) || (rc = get_bool(r, o, "sessions", &l->sessions)))
        return rc;
    if (dg.len != 64 || strspn(dg.ptr, "0123456789abcdef") != 64)
        return fail(r, "digest", "must be 64 lowercase hex digits");
    memcpy(l->digest, dg.ptr, 65);
    if (l->next_uid == 0 || l->next_msg_id == 0)
        return fail(r, l->next_uid ? "next_msg_id" : "next_uid", "must be at least 1");
    return PL_OK;
}

static int rd_end(rd *r, const cJSON *o, pl_dump_line *l)
{
    static const char *const known[] = { "accounts", "sessions", "messages", "clients", NULL };
    int rc;
    r->where = "end";
    if ((rc = keys(r, o, known)) || (rc = get_u64(r, o, "accounts", &l->accounts)) ||
        (rc = get_u64(r, o, "sessions", &l->sessions_n)) ||
        (rc = get_u64(r, o, "messages", &l->messages)) ||
        (rc = get_u64(r, o, "clients", &l->clients)))
        return rc;
    return PL_OK;
}

int pl_dump_parse_line(const char *text, size_t len, pl_dump_line *l, char *err, size_t errlen)
{
    rd r = { err, errlen, "line" };
    memset(l, 0, sizeof *l);
    if (err && errlen)
        err[0] = '\0';
    if (len > PL_DUMP_LINE_MAX)
        return fail(&r, NULL, "longer than the format allows");
    if (pl_json_has_nul(text, len))
        return fail(&r, NULL, "holds a NUL character (\\u0000)");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        return fail(&r, NULL, "not valid JSON");
    l->json = root;
    for (const char *p = end; p && p < text + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r')
            return fail(&r, NULL, "text after the JSON object");
    if (!cJSON_IsObject(root) || !root->child)
        return fail(&r, NULL, "must be a JSON object");
    if (cJSON_GetObjectItemCaseSensitive(root, "parley_dump")) {
        l->kind = PL_DUMP_HEADER;
        return rd_header(&r, root, l);
    }
    if (root->child->next)
        return fail(&r, NULL, "a record line holds one object: account, session, message, "
                    "client or end");
    const cJSON *o = root->child;
    const char *k = o->string;
    if (!cJSON_IsObject(o))
        return fail(&r, k, "must be an object");
    if (strcmp(k, "end") == 0) {
        l->kind = PL_DUMP_END;
        return rd_end(&r, o, l);
    }
    l->kind = PL_DUMP_RECORD;
    if (strcmp(k, "account") == 0) {
        l->rec.tag = 'A';
        return rd_account(&r, o, l);
    }
    if (strcmp(k, "session") == 0) {
        l->rec.tag = 'S';
        return rd_session(&r, o, l);
    }
    if (strcmp(k, "message") == 0) {
        l->rec.tag = 'M';
        return rd_message(&r, o, l);
    }
    if (strcmp(k, "client") == 0) {
        l->rec.tag = 'C';
        return rd_client(&r, o, l);
    }
    return fail(&r, k, "unknown record kind (account, session, message, client, end)");
}

void pl_dump_line_clear(pl_dump_line *l)
{
    if (!l)
        return;
    cJSON_Delete(l->json);
    free(l->bytes);
    memset(l, 0, sizeof *l);
}
