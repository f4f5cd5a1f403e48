/*
 * core/chat.c — the chat rules (DESIGN.md §1) as a deterministic state
 * machine over the store ABI.
 *
 * Determinism is the whole point: every replica applies the same ops in the
 * same order through possibly different store plugins and must reach the
 * same logical state (invariant 3, equal digests). So nothing here reads a
 * clock, a random source or any state outside the store: the op carries the
 * primary's time, the password hash and the token hash.
 *
 * Each op is validated completely before its first mutation, so a rule
 * violation changes nothing (beyond the client-table record that makes a
 * retry see the same error). A store failure aborts the whole batch's
 * transaction, so a batch is applied entirely or not at all.
 *
 * Memory: records the store returns are only valid until the next store
 * call, so anything kept is copied into a per-call arena owned by the
 * pl_chat; results and query responses point into it and stay valid until
 * the next pl_chat_apply_batch or pl_chat_query.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#include "chat.h"
#include "snapshot.h"

#define ARENA_BLOCK (64u * 1024u)
#define LIST_DEFAULT 100u     /* list_users limit when the request says 0 */
#define HISTORY_DEFAULT 50u   /* history/conversation limit when 0 */
#define META_NEXT_UID "next_uid"
#define META_NEXT_MSG "next_msg_id"

typedef struct ablock {
    struct ablock *next;
    size_t used, cap;
    max_align_t align_;       /* makes sizeof(ablock) a multiple of the max alignment */
} ablock;

/* A message to mutate after a scan: scans may not call back into the store. */
typedef struct mref {
    uint64_t id, from_uid, to_uid;
    uint32_t flags;
} mref;

struct pl_chat {
    const pl_store_plugin *sp;
    pl_store *st;
    ablock *arena;            /* reset by every apply_batch / query */

    /* Counters for the batch in progress (loaded at begin, written before commit). */
    uint64_t next_uid, next_msg_id;
    int counters_dirty;

    mref *refs;               /* scratch for delete_account */
    size_t n_refs, cap_refs;

    /* Lookup helpers keep their answers here, apart from the arena, so a
     * session name survives a following query (valid until the same helper
     * is called again). */
    char sess_name[PL_USERNAME_MAX + 1];
    char acct_name[PL_USERNAME_MAX + 1];
    char *acct_pwhash;
    size_t acct_pwhash_cap;

    /* The lookup cache (below): entries count only when their gen is gen. */
    uint64_t gen;
    struct acct_ent *by_uid, *by_name;
    struct sess_ent *sess;
    struct cli_ent *cli;
};

/* ------------------------------------------------------------------ arena */

static void *arena_alloc(pl_chat *c, size_t n)
{
    const size_t a = _Alignof(max_align_t);
    if (n > SIZE_MAX - a - sizeof(ablock))
        return NULL;
    n = (n + a - 1) & ~(a - 1);
    ablock *b = c->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = c->arena;
        c->arena = b;
    }
    void *p = (unsigned char *)(b + 1) + b->used;
    b->used += n;
    return p;
}

/* Free everything but one standard block, which is kept for the next call. */
static void arena_reset(pl_chat *c)
{
    ablock *keep = NULL, *b = c->arena;
    while (b) {
        ablock *next = b->next;
        if (!keep && b->cap == ARENA_BLOCK)
            keep = b;
        else
            free(b);
        b = next;
    }
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
    }
    c->arena = keep;
}

static int arena_dup(pl_chat *c, pl_str s, pl_str *out)
{
    out->len = s.len;
    out->ptr = NULL;
    if (!s.len)
        return PL_OK;
    char *p = arena_alloc(c, s.len);
    if (!p)
        return PL_ERR_NOMEM;
    memcpy(p, s.ptr, s.len);
    out->ptr = p;
    return PL_OK;
}

/* A rule violation: a normal result, so it returns PL_OK unless the message
 * itself cannot be stored. */
static int reject(pl_chat *c, pl_response *r, int code, const char *fmt, ...)
    PL_PRINTF(4, 5);

static int reject(pl_chat *c, pl_response *r, int code, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    r->status = (uint32_t)code;
    return arena_dup(c, (pl_str){ buf, (uint32_t)n }, &r->error);
}

/* ------------------------------------------------------------- validation */

static int name_char_ok(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-';
}

/* Printable form of one byte for an error message. */
static const char *show_byte(unsigned char ch, char buf[8])
{
    if (ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
        snprintf(buf, 8, "'%c'", ch);
    else
        snprintf(buf, 8, "0x%02x", ch);
    return buf;
}

static int username_problem(pl_str name, char *msg, size_t msglen)
{
    char b[8];
    if (name.len == 0) {
        if (msg)
            snprintf(msg, msglen, "username is empty; it must be 1-%u characters",
                     PL_USERNAME_MAX);
        return PL_ERR_USERNAME;
    }
    if (name.len > PL_USERNAME_MAX) {
        if (msg)
            snprintf(msg, msglen, "username is %" PRIu32 " characters; the limit is %u",
                     name.len, PL_USERNAME_MAX);
        return PL_ERR_USERNAME;
    }
    for (uint32_t i = 0; i < name.len; i++) {
        unsigned char ch = (unsigned char)name.ptr[i];
        if (!name_char_ok(ch)) {
            if (msg)
                snprintf(msg, msglen,
                         "username has %s at position %" PRIu32
                         "; allowed are A-Z a-z 0-9 _ . -",
                         show_byte(ch, b), i + 1);
            return PL_ERR_USERNAME;
        }
    }
    return PL_OK;
}

int pl_chat_check_username(pl_str name)
{
    return username_problem(name, NULL, 0);
}

int pl_chat_check_password(pl_str pw)
{
    return pw.len < PL_PASSWORD_MIN || pw.len > PL_PASSWORD_MAX ? PL_ERR_PASSWORD : PL_OK;
}

/* Offset of the first byte that breaks UTF-8 (or is NUL), or len when the
 * whole text is valid. Rejects overlong forms, UTF-16 surrogates
 * (U+D800-U+DFFF) and code points above U+10FFFF, per RFC 3629. */
static size_t utf8_bad_offset(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c0 = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf;  /* allowed range of the 2nd byte */
        if (c0 == 0)
            return i;
        if (c0 < 0x80) {
            i++;
            continue;
        } else if (c0 >= 0xc2 && c0 <= 0xdf) {
            need = 1;
        } else if (c0 >= 0xe0 && c0 <= 0xef) {
            need = 2;
            if (c0 == 0xe0)
                lo = 0xa0;        /* overlong below U+0800 */
            else if (c0 == 0xed)
                hi = 0x9f;        /* surrogates */
        } else if (c0 >= 0xf0 && c0 <= 0xf4) {
            need = 3;
            if (c0 == 0xf0)
                lo = 0x90;        /* overlong below U+10000 */
            else if (c0 == 0xf4)
                hi = 0x8f;        /* above U+10FFFF */
        } else {
            return i;             /* 0x80-0xc1 (continuation, overlong lead) or 0xf5-0xff */
        }
        if (len - i - 1 < need)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return i;
        i += need + 1;
    }
    return len;
}

static int body_problem(pl_str body, char *msg, size_t msglen)
{
    if (body.len == 0) {
        if (msg)
            snprintf(msg, msglen, "body is empty; it must be 1-%u bytes", PL_BODY_MAX);
        return PL_ERR_BODY;
    }
    if (body.len > PL_BODY_MAX) {
        if (msg)
            snprintf(msg, msglen, "body is %" PRIu32 " bytes; the limit is %u",
                     body.len, PL_BODY_MAX);
        return PL_ERR_BODY;
    }
    size_t bad = utf8_bad_offset((const unsigned char *)body.ptr, body.len);
    if (bad != body.len) {
        if (msg) {
            if (body.ptr[bad] == 0)
                snprintf(msg, msglen, "body has a NUL byte at offset %zu", bad);
            else
                snprintf(msg, msglen, "body is not valid UTF-8 at byte offset %zu", bad);
        }
        return PL_ERR_BODY;
    }
    return PL_OK;
}

int pl_chat_check_body(pl_str body)
{
    return body_problem(body, NULL, 0);
}

static int pattern_problem(pl_str pat, char *msg, size_t msglen)
{
    char b[8];
    if (pat.len > PL_PATTERN_MAX) {
        if (msg)
            snprintf(msg, msglen, "pattern is %" PRIu32 " characters; the limit is %u",
                     pat.len, PL_PATTERN_MAX);
        return PL_ERR_PATTERN;
    }
    for (uint32_t i = 0; i < pat.len; i++) {
        unsigned char ch = (unsigned char)pat.ptr[i];
        if (!name_char_ok(ch) && ch != '*' && ch != '?') {
            if (msg)
                snprintf(msg, msglen,
                         "pattern has %s at position %" PRIu32
                         "; allowed are A-Z a-z 0-9 _ . - * ?",
                         show_byte(ch, b), i + 1);
            return PL_ERR_PATTERN;
        }
    }
    return PL_OK;
}

int pl_chat_check_pattern(pl_str pattern)
{
    return pattern_problem(pattern, NULL, 0);
}

/* ----------------------------------------------------------- lookup cache */

/* A send reads its session, the sender's account, the recipient's account
 * and the client-table record: four store lookups, a quarter of a server's
 * CPU under load. These direct-mapped tables keep those answers in memory.
 *
 * They stay equal to the store because every write of those records goes
 * through this file, and the store's state changes otherwise only by
 * pl_snapshot_import, after which the sequencer calls pl_chat_forget. A
 * batch that aborts may have cached rows it wrote or read inside its
 * transaction, so abort forgets everything too. Forgetting is O(1): an
 * entry counts only if it was filled in the current generation. Only
 * positive answers are kept. A miss or a collision reads the store, so no
 * key pattern makes a lookup cost more than it would without the cache. */
#define CACHE_BITS 16u
#define CACHE_SLOTS (1u << CACHE_BITS)

typedef struct acct_ent {
    uint64_t gen, uid;
    uint8_t len;
    char name[PL_USERNAME_MAX];
} acct_ent;

typedef struct sess_ent {
    uint64_t gen, uid, created_ms;
    uint8_t th[32];
} sess_ent;

typedef struct cli_ent {
    uint64_t gen, client_id, request_no;
} cli_ent;

static size_t slot_of(uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64u - CACHE_BITS));
}

static size_t slot_of_name(pl_str name)
{
    uint64_t h = 0xcbf29ce484222325ull;    /* FNV-1a */
    for (uint32_t i = 0; i < name.len; i++)
        h = (h ^ (uint8_t)name.ptr[i]) * 0x100000001b3ull;
    return slot_of(h);
}

static size_t slot_of_token(const uint8_t th[32])
{
    uint64_t k;
    memcpy(&k, th, sizeof k);   /* a BLAKE2b output: already uniform */
    return slot_of(k);
}

void pl_chat_forget(pl_chat *c)
{
    c->gen++;
}

static void cache_account(pl_chat *c, uint64_t uid, pl_str name)
{
    if (name.len > PL_USERNAME_MAX)
        return;
    acct_ent e = { c->gen, uid, (uint8_t)name.len, { 0 } };
    if (name.len)
        memcpy(e.name, name.ptr, name.len);
    c->by_uid[slot_of(uid)] = e;
    c->by_name[slot_of_name(name)] = e;
}

/* The account's uid and name: from the cache, else from the store (and
 * then cached). name points into the cache entry or the store's buffer,
 * valid until the next store call or cache change. */
static int account_by_uid(pl_chat *c, uint64_t uid, pl_str *name)
{
    acct_ent *e = &c->by_uid[slot_of(uid)];
    if (e->gen == c->gen && e->uid == uid) {
        *name = (pl_str){ e->name, e->len };
        return PL_OK;
    }
    pl_account_rec a;
    int rc = c->sp->account_get_uid(c->st, uid, &a);
    if (rc)
        return rc;
    cache_account(c, a.uid, a.name);
    *name = a.name;
    return PL_OK;
}

static int account_by_name(pl_chat *c, pl_str name, uint64_t *uid)
{
    acct_ent *e = &c->by_name[slot_of_name(name)];
    if (e->gen == c->gen && e->len == name.len && memcmp(e->name, name.ptr, name.len) == 0) {
        *uid = e->uid;
        return PL_OK;
    }
    pl_account_rec a;
    int rc = c->sp->account_get_name(c->st, name, &a);
    if (rc)
        return rc;
    cache_account(c, a.uid, a.name);
    *uid = a.uid;
    return PL_OK;
}

static void cache_session(pl_chat *c, const uint8_t th[32], uint64_t uid, uint64_t created_ms)
{
    sess_ent *e = &c->sess[slot_of_token(th)];
    e->gen = c->gen;
    e->uid = uid;
    e->created_ms = created_ms;
    memcpy(e->th, th, 32);
}

static void drop_session(pl_chat *c, const uint8_t th[32])
{
    sess_ent *e = &c->sess[slot_of_token(th)];
    if (memcmp(e->th, th, 32) == 0)
        e->gen = 0;
}

static int session_by_hash(pl_chat *c, const uint8_t th[32], uint64_t *uid, uint64_t *created_ms)
{
    sess_ent *e = &c->sess[slot_of_token(th)];
    if (e->gen == c->gen && memcmp(e->th, th, 32) == 0) {
        *uid = e->uid;
        *created_ms = e->created_ms;
        return PL_OK;
    }
    pl_session_rec s;
    int rc = c->sp->session_get(c->st, (pl_str){ (const char *)th, 32 }, &s);
    if (rc)
        return rc;
    if (s.token_hash.len == 32 && memcmp(s.token_hash.ptr, th, 32) == 0)
        cache_session(c, th, s.uid, s.created_ms);
    *uid = s.uid;
    *created_ms = s.created_ms;
    return PL_OK;
}

/* -------------------------------------------------------------- lifecycle */

pl_chat *pl_chat_new(const pl_store_plugin *sp, pl_store *st)
{
    if (!sp || !st || sodium_init() < 0)
        return NULL;
    pl_chat *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sp = sp;
    c->st = st;
    c->gen = 1;
    /* Zeroed pages from the kernel: only slots in use become resident. */
    c->by_uid = calloc(CACHE_SLOTS, sizeof *c->by_uid);
    c->by_name = calloc(CACHE_SLOTS, sizeof *c->by_name);
    c->sess = calloc(CACHE_SLOTS, sizeof *c->sess);
    c->cli = calloc(CACHE_SLOTS, sizeof *c->cli);
    if (!c->by_uid || !c->by_name || !c->sess || !c->cli) {
        pl_chat_free(c);
        return NULL;
    }
    return c;
}

void pl_chat_free(pl_chat *c)
{
    if (!c)
        return;
    arena_reset(c);
    free(c->arena);
    free(c->refs);
    free(c->acct_pwhash);
    free(c->by_uid);
    free(c->by_name);
    free(c->sess);
    free(c->cli);
    free(c);
}

void pl_chat_token_hash(pl_str token, uint8_t out[32])
{
    crypto_generichash(out, 32, (const unsigned char *)token.ptr, token.len, NULL, 0);
}

/* ------------------------------------------------------- message helpers */

static int msg_from_rec(pl_chat *c, const pl_message_rec *m, pl_message *out)
{
    int rc;
    out->id = m->id;
    out->time_ms = m->time_ms;
    out->state = (m->flags & PL_MSGF_READ) ? PL_MSG_READ : 0;
    if ((rc = arena_dup(c, m->from_name, &out->from)) ||
        (rc = arena_dup(c, m->to_name, &out->to)) ||
        (rc = arena_dup(c, m->body, &out->body)))
        return rc;
    return PL_OK;
}

/* Collects one reply page of messages from a scan: at most `max`, and no
 * more body bytes than PL_REPLY_BUDGET (but always at least one message). */
typedef struct page {
    pl_chat *c;
    pl_message *msgs;
    uint32_t *flags;          /* the stored flags of each, for read marking */
    uint32_t n, max;
    size_t bytes;
    int over;                 /* a further match exists past this page */
    int err;
} page;

static int page_cb(void *ud, const pl_message_rec *m)
{
    page *p = ud;
    if (p->n == p->max ||
        (p->n > 0 && p->bytes + m->body.len > PL_REPLY_BUDGET)) {
        p->over = 1;
        return 1;
    }
    p->err = msg_from_rec(p->c, m, &p->msgs[p->n]);
    if (p->err)
        return 1;
    p->flags[p->n] = m->flags;
    p->bytes += m->body.len;
    p->n++;
    return 0;
}

/* Run query q (whose limit is set here) into a page of at most max messages.
 * The scan asks for one more so the page knows whether more remain. */
static int page_scan(pl_chat *c, pl_msg_query q, uint32_t max, page *p)
{
    memset(p, 0, sizeof *p);
    p->c = c;
    p->max = max;
    p->msgs = arena_alloc(c, (size_t)max * sizeof *p->msgs + 1);
    p->flags = arena_alloc(c, (size_t)max * sizeof *p->flags + 1);
    if (!p->msgs || !p->flags)
        return PL_ERR_NOMEM;
    q.limit = (uint64_t)max + 1;
    int rc = c->sp->message_scan(c->st, &q, page_cb, p);
    if (rc)
        return rc;
    return p->err;
}

/* ------------------------------------------------------------------- ops */

static uint32_t op_method(uint32_t kind)
{
    switch (kind) {
    case PL_OP_REGISTER: return PL_M_REGISTER;
    case PL_OP_LOGIN: return PL_M_LOGIN;
    case PL_OP_LOGIN_REHASH: return PL_M_LOGIN;
    case PL_OP_LOGOUT: return PL_M_LOGOUT;
    case PL_OP_SEND: return PL_M_SEND;
    case PL_OP_READ: return PL_M_READ;
    case PL_OP_ACK: return PL_M_ACK;
    case PL_OP_DELETE: return PL_M_DELETE;
    case PL_OP_DELETE_ACCOUNT: return PL_M_DELETE_ACCOUNT;
    default: return PL_M_NONE;
    }
}

/* The acting account must still exist: it may have been deleted by an
 * earlier op sequenced after the request was authenticated. On success the
 * account's name is copied into the arena. */
static int acting_account(pl_chat *c, uint64_t uid, pl_str *name, int *gone)
{
    pl_str n;
    *gone = 0;
    int rc = uid ? account_by_uid(c, uid, &n) : PL_ERR_NOT_FOUND;
    if (rc == PL_ERR_NOT_FOUND) {
        *gone = 1;
        return PL_OK;
    }
    if (rc)
        return rc;
    return name ? arena_dup(c, n, name) : PL_OK;
}

#define NOT_LOGGED_IN_MSG "account %" PRIu64 " no longer exists; log in again"

static int op_register(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    char msg[200];
    int rc = username_problem(op->name, msg, sizeof msg);
    if (rc)
        return reject(c, r, rc, "%s", msg);
    /* The server hashes before sequencing; an empty hash would make an
     * account nobody can log into, so it is a malformed op. */
    if (op->pwhash.len == 0 || op->pwhash.len > 1024)
        return reject(c, r, PL_ERR_INVALID, "password hash is %" PRIu32
                      " bytes; it must be 1-1024", op->pwhash.len);
    uint64_t taken;
    rc = account_by_name(c, op->name, &taken);
    if (rc == PL_OK)
        return reject(c, r, PL_ERR_USER_EXISTS, "username \"%.*s\" is already taken",
                      (int)op->name.len, op->name.ptr);
    if (rc != PL_ERR_NOT_FOUND)
        return rc;
    pl_account_rec na = { c->next_uid, op->name, op->pwhash, op->time_ms };
    if ((rc = c->sp->account_put(c->st, &na)))
        return rc;
    cache_account(c, na.uid, na.name);
    c->next_uid++;
    c->counters_dirty = 1;
    return PL_OK;
}

static int op_login(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    pl_str name;
    int rc = account_by_uid(c, op->uid, &name);
    if (rc == PL_ERR_NOT_FOUND || (rc == PL_OK && !pl_str_eq(name, op->name)))
        return reject(c, r, PL_ERR_AUTH, "%s", pl_strerror(PL_ERR_AUTH));
    if (rc)
        return rc;
    if (op->token_hash.len != 32)
        return reject(c, r, PL_ERR_INVALID, "token hash is %" PRIu32
                      " bytes; it must be 32", op->token_hash.len);
    pl_session_rec s = { op->token_hash, op->uid, op->time_ms };
    if ((rc = c->sp->session_put(c->st, &s)))
        return rc;
    cache_session(c, (const uint8_t *)op->token_hash.ptr, op->uid, op->time_ms);
    uint64_t unread = 0, read = 0;
    if ((rc = c->sp->message_counts(c->st, op->uid, &unread, &read)))
        return rc;
    r->unread = unread;
    return PL_OK;
}

static int op_logout(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    if (op->token_hash.len != 32)
        return reject(c, r, PL_ERR_INVALID, "token hash is %" PRIu32
                      " bytes; it must be 32", op->token_hash.len);
    const uint8_t *th = (const uint8_t *)op->token_hash.ptr;
    uint64_t owner, created;
    int rc = session_by_hash(c, th, &owner, &created);
    if (rc == PL_OK && owner != op->uid)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, "that session belongs to another account");
    /* Already gone (a retried logout, or the account was deleted): the goal
     * of logout holds, so it succeeds. */
    if (rc == PL_OK) {
        drop_session(c, th);
        rc = c->sp->session_delete(c->st, op->token_hash);
    }
    if (rc && rc != PL_ERR_NOT_FOUND)
        return rc;
    return arena_dup(c, op->token_hash, &res->revoked_token_hash);
}

static int op_send(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    char msg[200];
    pl_str from_name;
    int gone, rc;
    if ((rc = acting_account(c, op->uid, &from_name, &gone)))
        return rc;
    if (gone)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, NOT_LOGGED_IN_MSG, op->uid);
    if ((rc = body_problem(op->body, msg, sizeof msg)))
        return reject(c, r, rc, "%s", msg);
    uint64_t to_uid;
    rc = account_by_name(c, op->name, &to_uid);
    if (rc == PL_ERR_NOT_FOUND) {
        if (username_problem(op->name, NULL, 0))
            return reject(c, r, PL_ERR_NO_SUCH_USER, "no such user (not a valid username)");
        return reject(c, r, PL_ERR_NO_SUCH_USER, "no such user \"%.*s\"",
                      (int)op->name.len, op->name.ptr);
    }
    if (rc)
        return rc;
    pl_message_rec m = {
        .id = c->next_msg_id, .from_uid = op->uid, .to_uid = to_uid,
        .from_name = from_name, .to_name = op->name, .body = op->body,
        .time_ms = op->time_ms, .flags = 0
    };
    pl_str to_name;
    if ((rc = arena_dup(c, op->name, &to_name)))
        return rc;
    if ((rc = c->sp->message_put(c->st, &m)))
        return rc;
    c->next_msg_id++;
    c->counters_dirty = 1;
    r->id = m.id;
    r->time_ms = m.time_ms;
    res->has_push = 1;
    res->push_uid = to_uid;
    res->push.id = m.id;
    res->push.from = from_name;
    res->push.to = to_name;
    res->push.time_ms = m.time_ms;
    res->push.state = 0;
    return arena_dup(c, op->body, &res->push.body);
}

static int op_read(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    int gone, rc;
    if ((rc = acting_account(c, op->uid, NULL, &gone)))
        return rc;
    if (gone)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, NOT_LOGGED_IN_MSG, op->uid);
    uint32_t max = (op->n == 0 || op->n > PL_PAGE_MAX) ? PL_PAGE_MAX : (uint32_t)op->n;
    pl_msg_query q = { .kind = PL_Q_UNREAD, .uid = op->uid };
    page p;
    if ((rc = page_scan(c, q, max, &p)))
        return rc;
    for (uint32_t i = 0; i < p.n; i++) {
        if ((rc = c->sp->message_set_flags(c->st, p.msgs[i].id, p.flags[i] | PL_MSGF_READ)))
            return rc;
        /* The reply shows the state this op leaves behind. */
        p.msgs[i].state = PL_MSG_READ;
    }
    r->msgs = p.msgs;
    r->n_msgs = p.n;
    r->more = p.over ? 1 : 0;
    return PL_OK;
}

static int check_ids(pl_chat *c, const pl_op *op, pl_response *r, int *bad)
{
    *bad = 1;
    if (op->n_ids > PL_IDS_MAX)
        return reject(c, r, PL_ERR_TOO_MANY_IDS, "%" PRIu32 " message ids; the limit is %u",
                      op->n_ids, PL_IDS_MAX);
    if (op->n_ids && !op->ids)
        return reject(c, r, PL_ERR_INVALID, "message ids missing");
    *bad = 0;
    return PL_OK;
}

/* Is message m visible to uid as recipient (and, when as_sender, also as
 * sender)? */
static int visible(const pl_message_rec *m, uint64_t uid, int as_sender)
{
    if (m->to_uid == uid && !(m->flags & PL_MSGF_DEL_RECIPIENT))
        return 1;
    return as_sender && m->from_uid == uid && !(m->flags & PL_MSGF_DEL_SENDER);
}

/* Validate every id before touching any: nothing changes unless all are
 * good. */
static int ids_visible(pl_chat *c, const pl_op *op, int as_sender, pl_response *r, int *bad)
{
    *bad = 0;
    for (uint32_t i = 0; i < op->n_ids; i++) {
        pl_message_rec m;
        int rc = c->sp->message_get(c->st, op->ids[i], &m);
        if (rc && rc != PL_ERR_NOT_FOUND)
            return rc;
        if (rc == PL_ERR_NOT_FOUND || !visible(&m, op->uid, as_sender)) {
            *bad = 1;
            return reject(c, r, PL_ERR_NO_SUCH_MESSAGE,
                          "no message %" PRIu64 " in your %s; nothing was changed",
                          op->ids[i], as_sender ? "messages" : "mailbox");
        }
    }
    return PL_OK;
}

static int op_ack(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    int gone, bad, rc;
    if ((rc = acting_account(c, op->uid, NULL, &gone)))
        return rc;
    if (gone)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, NOT_LOGGED_IN_MSG, op->uid);
    if ((rc = check_ids(c, op, r, &bad)) || bad)
        return rc;
    if ((rc = ids_visible(c, op, 0, r, &bad)) || bad)
        return rc;
    for (uint32_t i = 0; i < op->n_ids; i++) {
        pl_message_rec m;
        if ((rc = c->sp->message_get(c->st, op->ids[i], &m)))
            return rc;
        if (!(m.flags & PL_MSGF_READ) &&
            (rc = c->sp->message_set_flags(c->st, m.id, m.flags | PL_MSGF_READ)))
            return rc;
    }
    return PL_OK;
}

/* Hide message m from uid's side(s); remove it from the store once neither
 * side can see it. A party whose account is gone never needs a check here:
 * delete_account removes the messages it received and marks the ones it
 * sent deleted by their sender, so the flags alone tell. */
static int hide_message(pl_chat *c, uint64_t uid, const mref *m)
{
    uint32_t f = m->flags;
    if (m->from_uid == uid)
        f |= PL_MSGF_DEL_SENDER;
    if (m->to_uid == uid)
        f |= PL_MSGF_DEL_RECIPIENT;
    if ((f & PL_MSGF_DEL_SENDER) && (f & PL_MSGF_DEL_RECIPIENT))
        return c->sp->message_delete(c->st, m->id);
    if (f == m->flags)
        return PL_OK;
    return c->sp->message_set_flags(c->st, m->id, f);
}

static int op_delete(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    int gone, bad, rc;
    if ((rc = acting_account(c, op->uid, NULL, &gone)))
        return rc;
    if (gone)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, NOT_LOGGED_IN_MSG, op->uid);
    if ((rc = check_ids(c, op, r, &bad)) || bad)
        return rc;
    if ((rc = ids_visible(c, op, 1, r, &bad)) || bad)
        return rc;
    for (uint32_t i = 0; i < op->n_ids; i++) {
        pl_message_rec m;
        rc = c->sp->message_get(c->st, op->ids[i], &m);
        if (rc == PL_ERR_NOT_FOUND)
            continue;         /* a duplicate id whose message is already removed */
        if (rc)
            return rc;
        mref ref = { m.id, m.from_uid, m.to_uid, m.flags };
        if ((rc = hide_message(c, op->uid, &ref)))
            return rc;
    }
    return PL_OK;
}

typedef struct refs_ctx {
    pl_chat *c;
    uint64_t uid;
    int err;
} refs_ctx;

static int refs_cb(void *ud, const pl_message_rec *m)
{
    refs_ctx *x = ud;
    pl_chat *c = x->c;
    if (m->from_uid != x->uid && m->to_uid != x->uid)
        return 0;
    if (c->n_refs == c->cap_refs) {
        size_t cap = c->cap_refs ? c->cap_refs * 2 : 64;
        mref *nr = realloc(c->refs, cap * sizeof *nr);
        if (!nr) {
            x->err = PL_ERR_NOMEM;
            return 1;
        }
        c->refs = nr;
        c->cap_refs = cap;
    }
    c->refs[c->n_refs++] = (mref){ m->id, m->from_uid, m->to_uid, m->flags };
    return 0;
}

static int op_delete_account(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    int gone, rc;
    if ((rc = acting_account(c, op->uid, NULL, &gone)))
        return rc;
    if (gone)
        return reject(c, r, PL_ERR_NOT_LOGGED_IN, NOT_LOGGED_IN_MSG, op->uid);
    /* Every message the account sent or received, hidden ones included: a
     * received message the account had deleted may still be kept for its
     * sender, and with the account gone nobody could ever see it again (a
     * new account of the same name has a new uid). This walks all messages;
     * deleting an account is rare enough for that. */
    refs_ctx x = { c, op->uid, 0 };
    pl_msg_query q = { .kind = PL_Q_ALL };
    c->n_refs = 0;
    rc = c->sp->message_scan(c->st, &q, refs_cb, &x);
    if (rc || (rc = x.err))
        return rc;
    /* Its sessions are not indexed by uid here: forget every entry. */
    pl_chat_forget(c);
    if ((rc = c->sp->session_delete_uid(c->st, op->uid)) ||
        (rc = c->sp->account_delete(c->st, op->uid)))
        return rc;
    for (size_t i = 0; i < c->n_refs; i++) {
        const mref *m = &c->refs[i];
        /* Its mailbox goes entirely. Sent ones stay for their recipients
         * until they delete them too. */
        if (m->to_uid == op->uid)
            rc = c->sp->message_delete(c->st, m->id);
        else
            rc = hide_message(c, op->uid, m);
        if (rc)
            return rc;
    }
    res->revoked_uid = op->uid;
    return PL_OK;
}

/* ------------------------------------------------ import (issue 21) */

int pl_chat_pwhash_is_pbkdf2(pl_str pwhash)
{
    size_t n = sizeof PL_PBKDF2_PREFIX - 1;
    return pwhash.len > n && memcmp(pwhash.ptr, PL_PBKDF2_PREFIX, n) == 0;
}

/* Standard base64 with padding, exactly `want` bytes once decoded. */
static int b64_exact(const char *s, size_t len, uint8_t *out, size_t want)
{
    size_t got = 0;
    const char *end = NULL;
    if (len != sodium_base64_ENCODED_LEN(want, sodium_base64_VARIANT_ORIGINAL) - 1)
        return PL_ERR_INVALID;
    if (sodium_base642bin(out, want, s, len, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        got != want || end != s + len)
        return PL_ERR_INVALID;
    return PL_OK;
}

int pl_chat_pbkdf2_parse(pl_str pwhash, uint8_t salt[PL_PBKDF2_SALT_BYTES],
                         uint8_t hash[PL_PBKDF2_HASH_BYTES])
{
    if (!pl_chat_pwhash_is_pbkdf2(pwhash))
        return PL_ERR_INVALID;
    const char *p = pwhash.ptr + sizeof PL_PBKDF2_PREFIX - 1;
    size_t rest = pwhash.len - (sizeof PL_PBKDF2_PREFIX - 1);
    const char *dollar = memchr(p, '$', rest);
    if (!dollar)
        return PL_ERR_INVALID;
    size_t sl = (size_t)(dollar - p), hl = rest - sl - 1;
    if (b64_exact(p, sl, salt, PL_PBKDF2_SALT_BYTES) != PL_OK ||
        b64_exact(dollar + 1, hl, hash, PL_PBKDF2_HASH_BYTES) != PL_OK)
        return PL_ERR_INVALID;
    return PL_OK;
}

/* The importer's row of an account name in the client table (chat.h,
 * pl_import_rec): client id PL_CLIENT_ID_RESERVED | (h + k) for the first
 * k = 0, 1, ... whose row is free or names this account, h a keyed hash of
 * the name. The row's reply is "PLIR" | u64 uid | name, so a probe knows
 * whose row it found. */
#define IMPORT_PROBES 64u
#define IMPORT_ROW_MAGIC "PLIR"

typedef struct import_row {
    int found;                /* a row names this account */
    uint64_t key;             /* its client id, or the first free one */
    uint64_t uid;             /* found: the account it was made for */
    uint64_t done;            /* found: mailbox places imported (request_no) */
} import_row;

static uint64_t import_key(pl_str name, unsigned k)
{
    static const unsigned char key[16] = "parley-import-v1";
    uint8_t h[8];
    crypto_generichash(h, sizeof h, (const unsigned char *)name.ptr, name.len, key, sizeof key);
    uint64_t v = 0;
    for (int i = 0; i < 6; i++)
        v |= (uint64_t)h[i] << (8 * i);
    return PL_CLIENT_ID_RESERVED | ((v + k) & ~PL_CLIENT_ID_RESERVED);
}

static int import_row_find(pl_chat *c, pl_str name, import_row *r)
{
    memset(r, 0, sizeof *r);
    for (unsigned k = 0; k < IMPORT_PROBES; k++) {
        pl_client_rec rec;
        uint64_t key = import_key(name, k);
        int rc = c->sp->client_get(c->st, key, &rec);
        if (rc == PL_ERR_NOT_FOUND) {
            r->key = key;
            return PL_OK;
        }
        if (rc)
            return rc;
        if (rec.reply.len == 12 + name.len && memcmp(rec.reply.ptr, IMPORT_ROW_MAGIC, 4) == 0 &&
            memcmp(rec.reply.ptr + 12, name.ptr, name.len) == 0) {
            const uint8_t *u = (const uint8_t *)rec.reply.ptr + 4;
            r->found = 1;
            r->key = key;
            for (int i = 0; i < 8; i++)
                r->uid |= (uint64_t)u[i] << (8 * i);
            r->done = rec.request_no;
            return PL_OK;
        }
    }
    /* 64 names whose keys all collide: cannot happen by chance (48-bit
     * keys); refuse the record rather than guess. */
    return PL_ERR_BUSY;
}

static int import_row_put(pl_chat *c, uint64_t opno, const import_row *r, pl_str name)
{
    uint8_t *b = arena_alloc(c, 12u + name.len);
    if (!b)
        return PL_ERR_NOMEM;
    memcpy(b, IMPORT_ROW_MAGIC, 4);
    for (int i = 0; i < 8; i++)
        b[4 + i] = (uint8_t)(r->uid >> (8 * i));
    if (name.len)
        memcpy(b + 12, name.ptr, name.len);
    pl_client_rec rec = { r->key, r->done, opno, { (const char *)b, 12u + name.len } };
    return c->sp->client_put(c->st, &rec);
}

/* A sender kept as a name: what a chat client can show on one line. */
int pl_chat_check_import_sender(pl_str from)
{
    if (from.len == 0 || from.len > PL_IMPORT_FROM_MAX ||
        utf8_bad_offset((const unsigned char *)from.ptr, from.len) != from.len)
        return 0;
    for (uint32_t i = 0; i < from.len; i++) {
        unsigned char ch = (unsigned char)from.ptr[i];
        if (ch < 0x20 || ch == 0x7f)
            return 0;
    }
    return 1;
}

static int import_account(pl_chat *c, uint64_t opno, const pl_op *op, const pl_import_rec *x,
                          uint8_t *outcome)
{
    uint8_t salt[PL_PBKDF2_SALT_BYTES], hash[PL_PBKDF2_HASH_BYTES];
    if (username_problem(x->name, NULL, 0) != PL_OK ||
        pl_chat_pbkdf2_parse(x->pwhash, salt, hash) != PL_OK) {
        *outcome = PL_IMP_INVALID;
        return PL_OK;
    }
    sodium_memzero(hash, sizeof hash);
    import_row row;
    uint64_t uid;
    int rc = import_row_find(c, x->name, &row);
    if (rc == PL_ERR_BUSY) {
        *outcome = PL_IMP_INVALID;
        return PL_OK;
    }
    if (rc)
        return rc;
    if (row.found) {
        /* Imported before, whether the account is still there or not: a
         * deleted account does not come back by importing the file again. */
        *outcome = PL_IMP_DONE_BEFORE;
        return PL_OK;
    }
    rc = account_by_name(c, x->name, &uid);
    if (rc == PL_OK) {
        *outcome = PL_IMP_TAKEN;
        return PL_OK;
    }
    if (rc != PL_ERR_NOT_FOUND)
        return rc;
    pl_account_rec na = { c->next_uid, x->name, x->pwhash, op->time_ms };
    if ((rc = c->sp->account_put(c->st, &na)))
        return rc;
    cache_account(c, na.uid, na.name);
    c->next_uid++;
    c->counters_dirty = 1;
    row.uid = na.uid;
    row.done = 0;
    if ((rc = import_row_put(c, opno, &row, x->name)))
        return rc;
    *outcome = PL_IMP_CREATED;
    return PL_OK;
}

static int import_message(pl_chat *c, uint64_t opno, const pl_op *op, const pl_import_rec *x,
                          uint8_t *outcome)
{
    if (x->seq == 0 || body_problem(x->body, NULL, 0) != PL_OK || !pl_chat_check_import_sender(x->from) ||
        username_problem(x->to, NULL, 0) != PL_OK) {
        *outcome = PL_IMP_INVALID;
        return PL_OK;
    }
    import_row to, from;
    uint64_t to_uid = 0, from_uid = 0;
    int rc = import_row_find(c, x->to, &to);
    if (rc == PL_ERR_BUSY || (rc == PL_OK && !to.found)) {
        *outcome = PL_IMP_NO_RECIPIENT;
        return PL_OK;
    }
    if (rc)
        return rc;
    rc = account_by_name(c, x->to, &to_uid);
    if (rc == PL_ERR_NOT_FOUND || (rc == PL_OK && to_uid != to.uid)) {
        *outcome = PL_IMP_RECIPIENT_GONE;
        return PL_OK;
    }
    if (rc)
        return rc;
    if (x->seq <= to.done) {
        *outcome = PL_IMP_DONE_BEFORE;
        return PL_OK;
    }
    /* The sender is the account of that name only when that account is
     * the imported one: a parley user who took a departed prototype
     * user's name is somebody else. */
    uint32_t flags = x->read ? PL_MSGF_READ : 0;
    if (username_problem(x->from, NULL, 0) == PL_OK) {
        uint64_t u;
        if ((rc = import_row_find(c, x->from, &from)) != PL_OK && rc != PL_ERR_BUSY)
            return rc;
        if (rc == PL_OK && from.found) {
            rc = account_by_name(c, x->from, &u);
            if (rc != PL_OK && rc != PL_ERR_NOT_FOUND)
                return rc;
            if (rc == PL_OK && u == from.uid)
                from_uid = u;
        }
    }
    /* A sender without an account can never see or delete its side. */
    if (!from_uid)
        flags |= PL_MSGF_DEL_SENDER;
    pl_message_rec m = {
        .id = c->next_msg_id, .from_uid = from_uid, .to_uid = to_uid,
        .from_name = x->from, .to_name = x->to, .body = x->body,
        .time_ms = op->time_ms, .flags = flags
    };
    if ((rc = c->sp->message_put(c->st, &m)))
        return rc;
    c->next_msg_id++;
    c->counters_dirty = 1;
    to.done = x->seq;
    if ((rc = import_row_put(c, opno, &to, x->to)))
        return rc;
    *outcome = PL_IMP_IMPORTED;
    return PL_OK;
}

/* PL_OP_IMPORT: each record on its own (chat.h); a record parley cannot
 * hold is an outcome, not an error of the op. */
static int op_import(pl_chat *c, uint64_t opno, const pl_op *op, pl_apply_result *res)
{
    pl_import_rec *recs = NULL;
    size_t n = 0;
    int rc = pl_import_batch_decode((const uint8_t *)op->body.ptr, op->body.len, &recs, &n);
    if (rc == PL_ERR_NOMEM)
        return rc;
    if (rc)
        return reject(c, &res->reply, PL_ERR_INVALID, "malformed import batch");
    uint8_t *out = arena_alloc(c, n + 1);
    if (!out) {
        free(recs);
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n && rc == PL_OK; i++)
        rc = recs[i].kind == 'U' ? import_account(c, opno, op, &recs[i], &out[i])
                                 : import_message(c, opno, op, &recs[i], &out[i]);
    free(recs);
    if (rc)
        return rc;
    res->outcomes = out;
    res->n_outcomes = (uint32_t)n;
    return PL_OK;
}

/* ------------------------------------------------ restore (issue 21) */

/* Everything a restore batch holds is checked before anything is written:
 * a refusal must change nothing, and a store error in the middle would
 * stop this replica from applying the log at all. */
typedef struct restore_check {
    pl_chat *c;
    int err;
    uint64_t n;
} restore_check;

static int count_session(void *ud, const pl_session_rec *s)
{
    (void)s;
    ((restore_check *)ud)->n++;
    return 1;
}

static int count_message(void *ud, const pl_message_rec *m)
{
    (void)m;
    ((restore_check *)ud)->n++;
    return 1;
}

static int count_client(void *ud, const pl_client_rec *r)
{
    (void)r;
    ((restore_check *)ud)->n++;
    return 1;
}

/* Is the state empty: nothing ever stored and the counters unused? */
static int state_empty(pl_chat *c, char *why, size_t whylen)
{
    uint64_t accounts = 0;
    restore_check ses = { c, 0, 0 }, msg = { c, 0, 0 }, cli = { c, 0, 0 };
    pl_msg_query q = { .kind = PL_Q_ALL, .limit = 1 };
    int rc;
    if ((rc = c->sp->account_count(c->st, &accounts)) ||
        (rc = c->sp->session_scan(c->st, count_session, &ses)) ||
        (rc = c->sp->message_scan(c->st, &q, count_message, &msg)) ||
        (rc = c->sp->client_scan(c->st, count_client, &cli)))
        return rc;
    if (accounts || ses.n || msg.n || cli.n || c->next_uid != 1 || c->next_msg_id != 1) {
        snprintf(why, whylen, "the cluster is not empty (%" PRIu64 " account%s%s%s%s; "
                 "next uid %" PRIu64 ", next message id %" PRIu64 ")", accounts,
                 accounts == 1 ? "" : "s", ses.n ? ", sessions" : "", msg.n ? ", messages" : "",
                 cli.n ? ", client table rows" : "", c->next_uid, c->next_msg_id);
        return PL_ERR_USER_EXISTS;
    }
    return PL_OK;
}

static int same_str(pl_str a, pl_str b)
{
    return pl_str_eq(a, b);
}

/* Does a record of the batch already exist, equal (1), not at all (0), or
 * differently (-1, and why)? */
static int restore_present(pl_chat *c, const pl_snapshot_rec *x, int *state, char *why,
                           size_t whylen)
{
    int rc;
    *state = 0;
    switch (x->tag) {
    case 'A': {
        pl_account_rec a;
        rc = c->sp->account_get_uid(c->st, x->a.uid, &a);
        if (rc == PL_OK) {
            *state = a.created_ms == x->a.created_ms && same_str(a.name, x->a.name) &&
                     same_str(a.pwhash, x->a.pwhash) ? 1 : -1;
        } else if (rc == PL_ERR_NOT_FOUND) {
            rc = c->sp->account_get_name(c->st, x->a.name, &a);
            if (rc == PL_OK)
                *state = -1;
            else if (rc != PL_ERR_NOT_FOUND)
                return rc;
        } else {
            return rc;
        }
        if (*state < 0)
            snprintf(why, whylen, "account %" PRIu64 " \"%.*s\" differs from the one stored",
                     x->a.uid, (int)x->a.name.len, x->a.name.ptr);
        return PL_OK;
    }
    case 'S': {
        pl_session_rec s;
        rc = c->sp->session_get(c->st, x->s.token_hash, &s);
        if (rc == PL_ERR_NOT_FOUND)
            return PL_OK;
        if (rc)
            return rc;
        *state = s.uid == x->s.uid && s.created_ms == x->s.created_ms ? 1 : -1;
        if (*state < 0)
            snprintf(why, whylen, "a session of account %" PRIu64 " differs from the one stored",
                     x->s.uid);
        return PL_OK;
    }
    case 'M': {
        pl_message_rec m;
        rc = c->sp->message_get(c->st, x->m.id, &m);
        if (rc == PL_ERR_NOT_FOUND)
            return PL_OK;
        if (rc)
            return rc;
        *state = m.from_uid == x->m.from_uid && m.to_uid == x->m.to_uid &&
                 m.time_ms == x->m.time_ms && m.flags == x->m.flags &&
                 same_str(m.from_name, x->m.from_name) && same_str(m.to_name, x->m.to_name) &&
                 same_str(m.body, x->m.body) ? 1 : -1;
        if (*state < 0)
            snprintf(why, whylen, "message %" PRIu64 " differs from the one stored", x->m.id);
        return PL_OK;
    }
    case 'C': {
        pl_client_rec r;
        rc = c->sp->client_get(c->st, x->c.client_id, &r);
        if (rc == PL_ERR_NOT_FOUND)
            return PL_OK;
        if (rc)
            return rc;
        *state = r.request_no == x->c.request_no && r.op == x->c.op &&
                 same_str(r.reply, x->c.reply) ? 1 : -1;
        if (*state < 0)
            snprintf(why, whylen, "client table row %" PRIu64 " differs from the one stored",
                     x->c.client_id);
        return PL_OK;
    }
    }
    return PL_ERR_INVALID;
}

/* A record that a dump of parley could hold (and a store can take). */
static int restore_valid(const pl_restore_batch *b, const pl_snapshot_rec *x, char *why,
                         size_t whylen)
{
    switch (x->tag) {
    case 'A':
        if (x->a.uid == 0 || x->a.uid >= b->next_uid || username_problem(x->a.name, NULL, 0) ||
            x->a.pwhash.len == 0 || x->a.pwhash.len > 1024) {
            snprintf(why, whylen, "account %" PRIu64 ": bad uid, name or password hash",
                     x->a.uid);
            return 0;
        }
        return 1;
    case 'S':
        if (x->s.token_hash.len != 32 || x->s.uid == 0) {
            snprintf(why, whylen, "a session: bad token hash or uid");
            return 0;
        }
        return 1;
    case 'M':
        if (x->m.id == 0 || x->m.id >= b->next_msg_id ||
            (x->m.flags & ~(PL_MSGF_READ | PL_MSGF_DEL_SENDER | PL_MSGF_DEL_RECIPIENT)) ||
            body_problem(x->m.body, NULL, 0) || x->m.from_name.len > 1024 ||
            x->m.to_name.len > 1024) {
            snprintf(why, whylen, "message %" PRIu64 ": bad id, flags, body or names",
                     x->m.id);
            return 0;
        }
        return 1;
    case 'C':
        if (x->c.client_id == 0 || x->c.reply.len > 16u * 1024u * 1024u) {
            snprintf(why, whylen, "a client table row: bad id or reply");
            return 0;
        }
        return 1;
    }
    snprintf(why, whylen, "a record of unknown kind");
    return 0;
}

/* Two records of one batch for the same key would make the second put
 * fail in a store with unique keys: refused like any conflict. */
static int restore_dup(const pl_snapshot_rec *a, const pl_snapshot_rec *b)
{
    if (a->tag != b->tag)
        return 0;
    switch (a->tag) {
    case 'A': return a->a.uid == b->a.uid || same_str(a->a.name, b->a.name);
    case 'S': return same_str(a->s.token_hash, b->s.token_hash);
    case 'M': return a->m.id == b->m.id;
    case 'C': return a->c.client_id == b->c.client_id;
    }
    return 0;
}

static int op_restore(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    pl_restore_batch b;
    char why[300];
    int rc = pl_restore_batch_decode((const uint8_t *)op->body.ptr, op->body.len, &b);
    if (rc == PL_ERR_NOMEM)
        return rc;
    if (rc)
        return reject(c, r, PL_ERR_INVALID, "malformed restore batch");
    if (b.next_uid == 0 || b.next_msg_id == 0) {
        rc = reject(c, r, PL_ERR_INVALID, "restore batch with a counter of 0");
        goto out;
    }
    if (b.flags & PL_RESTORE_BEGIN) {
        rc = state_empty(c, why, sizeof why);
        if (rc == PL_ERR_USER_EXISTS) {
            rc = reject(c, r, PL_ERR_USER_EXISTS, "%s: a dump is loaded only into an empty "
                        "cluster", why);
            goto out;
        }
        if (rc)
            goto out;
    }
    uint8_t *present = b.n ? arena_alloc(c, b.n) : NULL;
    if (b.n && !present) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < b.n; i++) {
        int st;
        if (!restore_valid(&b, &b.recs[i], why, sizeof why)) {
            rc = reject(c, r, PL_ERR_INVALID, "restore record %zu: %s; nothing of this batch "
                        "was loaded", i + 1, why);
            goto out;
        }
        for (size_t j = 0; j < i; j++)
            if (restore_dup(&b.recs[i], &b.recs[j])) {
                rc = reject(c, r, PL_ERR_INVALID, "restore records %zu and %zu are for the "
                            "same key; nothing of this batch was loaded", j + 1, i + 1);
                goto out;
            }
        if ((rc = restore_present(c, &b.recs[i], &st, why, sizeof why)))
            goto out;
        if (st < 0) {
            rc = reject(c, r, PL_ERR_USER_EXISTS, "%s: this cluster holds other data than the "
                        "dump; nothing of this batch was loaded", why);
            goto out;
        }
        present[i] = (uint8_t)st;
    }
    for (size_t i = 0; i < b.n; i++) {
        const pl_snapshot_rec *x = &b.recs[i];
        if (present[i]) {
            res->restore_same++;
            continue;
        }
        switch (x->tag) {
        case 'A': rc = c->sp->account_put(c->st, &x->a); break;
        case 'S': rc = c->sp->session_put(c->st, &x->s); break;
        case 'M': rc = c->sp->message_put(c->st, &x->m); break;
        case 'C': rc = c->sp->client_put(c->st, &x->c); break;
        }
        if (rc)
            goto out;
        res->restored++;
    }
    /* The dump's counters, so ids handed out while or after it loads never
     * meet one of its records. */
    if (b.flags & PL_RESTORE_BEGIN) {
        c->next_uid = b.next_uid;
        c->next_msg_id = b.next_msg_id;
    } else {
        if (b.next_uid > c->next_uid)
            c->next_uid = b.next_uid;
        if (b.next_msg_id > c->next_msg_id)
            c->next_msg_id = b.next_msg_id;
    }
    c->counters_dirty = 1;
    /* Rows written behind the lookup cache's back. */
    pl_chat_forget(c);
    rc = PL_OK;
out:
    free(b.recs);
    return rc;
}

/* PL_OP_LOGIN_REHASH: a login whose password was checked against the
 * imported PBKDF2 hash; the Argon2id hash of the same password replaces
 * it, in the same op, unless another login did so first. */
static int op_login_rehash(pl_chat *c, const pl_op *op, pl_apply_result *res)
{
    pl_response *r = &res->reply;
    if (op->pwhash.len == 0 || op->pwhash.len > 1024 || pl_chat_pwhash_is_pbkdf2(op->pwhash))
        return reject(c, r, PL_ERR_INVALID, "password hash is %" PRIu32
                      " bytes; it must be 1-1024 and not an imported one", op->pwhash.len);
    /* op_login's own checks first: a refused op changes nothing. */
    if (op->token_hash.len != 32)
        return reject(c, r, PL_ERR_INVALID, "token hash is %" PRIu32
                      " bytes; it must be 32", op->token_hash.len);
    pl_account_rec a;
    int rc = c->sp->account_get_uid(c->st, op->uid, &a);
    if (rc == PL_ERR_NOT_FOUND || (rc == PL_OK && !pl_str_eq(a.name, op->name)))
        return reject(c, r, PL_ERR_AUTH, "%s", pl_strerror(PL_ERR_AUTH));
    if (rc)
        return rc;
    if (pl_chat_pwhash_is_pbkdf2(a.pwhash)) {
        pl_account_rec na = { a.uid, op->name, op->pwhash, a.created_ms };
        if ((rc = c->sp->account_put(c->st, &na)))
            return rc;
    }
    return op_login(c, op, res);
}

static int execute(pl_chat *c, uint64_t opno, const pl_op *op, pl_apply_result *res)
{
    switch (op->kind) {
    case PL_OP_NOOP: return PL_OK;
    case PL_OP_RECONFIG: return PL_OK;
    case PL_OP_REGISTER: return op_register(c, op, res);
    case PL_OP_LOGIN: return op_login(c, op, res);
    case PL_OP_LOGOUT: return op_logout(c, op, res);
    case PL_OP_SEND: return op_send(c, op, res);
    case PL_OP_READ: return op_read(c, op, res);
    case PL_OP_ACK: return op_ack(c, op, res);
    case PL_OP_DELETE: return op_delete(c, op, res);
    case PL_OP_DELETE_ACCOUNT: return op_delete_account(c, op, res);
    case PL_OP_IMPORT: return op_import(c, opno, op, res);
    case PL_OP_RESTORE: return op_restore(c, op, res);
    case PL_OP_LOGIN_REHASH: return op_login_rehash(c, op, res);
    default:
        return reject(c, &res->reply, PL_ERR_UNSUPPORTED, "unknown op kind %" PRIu32, op->kind);
    }
}

/* Answer a retried request from the client table: the recorded reply is
 * copied into the arena so it outlives the next store call. */
static int replay_recorded(pl_chat *c, const pl_client_rec *rec, pl_apply_result *res)
{
    pl_str bytes;
    pl_message *owner = NULL;
    pl_response rr;
    int rc = arena_dup(c, rec->reply, &bytes);
    if (rc)
        return rc;
    if ((rc = pl_op_reply_decode((const uint8_t *)bytes.ptr, bytes.len, &rr, &owner)))
        return rc == PL_ERR_NOMEM ? rc : PL_ERR_CORRUPT;
    if (rr.n_msgs) {
        pl_message *m = arena_alloc(c, (size_t)rr.n_msgs * sizeof *m);
        if (!m) {
            free(owner);
            return PL_ERR_NOMEM;
        }
        memcpy(m, owner, (size_t)rr.n_msgs * sizeof *m);
        rr.msgs = m;
    }
    free(owner);
    res->reply = rr;
    return PL_OK;
}

/* One op with exactly-once handling (VR §4: the client table). */
static int apply_one(pl_chat *c, uint64_t opno, const pl_op *op, pl_apply_result *res)
{
    int rc;
    /* A login is never recorded: a retry logs in again (new token). */
    int recorded = op->client_id != 0 && op->kind != PL_OP_LOGIN &&
                   op->kind != PL_OP_LOGIN_REHASH;
    cli_ent *ce = &c->cli[slot_of(op->client_id)];
    /* A client's next request, as known from the cache, needs no lookup:
     * only a retry (equal number) or a stale one (lower) does. */
    int newer = ce->gen == c->gen && ce->client_id == op->client_id &&
                ce->request_no < op->request_no;
    if (recorded && !newer) {
        pl_client_rec rec;
        rc = c->sp->client_get(c->st, op->client_id, &rec);
        if (rc && rc != PL_ERR_NOT_FOUND)
            return rc;
        if (rc == PL_OK && rec.request_no == op->request_no)
            return replay_recorded(c, &rec, res);
        if (rc == PL_OK && rec.request_no > op->request_no)
            return reject(c, &res->reply, PL_ERR_STALE_REQUEST,
                          "request %" PRIu64 " is older than this client's last request %" PRIu64,
                          op->request_no, rec.request_no);
    }
    if ((rc = execute(c, opno, op, res)))
        return rc;
    if (!recorded)
        return PL_OK;
    uint8_t *enc;
    size_t len;
    if ((rc = pl_op_reply_encode(&res->reply, &enc, &len)))
        return rc;
    if (len > UINT32_MAX) {
        free(enc);
        return PL_ERR_INTERNAL;
    }
    pl_client_rec nrec = { op->client_id, op->request_no, opno,
                           { (const char *)enc, (uint32_t)len } };
    rc = c->sp->client_put(c->st, &nrec);
    free(enc);
    if (rc == PL_OK)
        *ce = (cli_ent){ c->gen, op->client_id, op->request_no };
    return rc;
}

static int load_counter(pl_chat *c, const char *key, uint64_t *v)
{
    int rc = c->sp->meta_get(c->st, key, v);
    if (rc == PL_ERR_NOT_FOUND) {
        *v = 1;
        return PL_OK;
    }
    return rc;
}

int pl_chat_apply_batch(pl_chat *c, uint64_t first_op, const pl_op *ops,
                        size_t n, pl_apply_result *results)
{
    int rc;
    arena_reset(c);
    if (n == 0)
        return PL_OK;
    if (!ops || !results || first_op == 0 || n > UINT64_MAX - first_op)
        return PL_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].reply.method = op_method(ops[i].kind);
    }
    uint64_t applied = c->sp->applied_op(c->st);
    uint64_t last = first_op + n - 1;
    /* A gap would silently lose ops and fork this replica's state. */
    if (first_op > applied + 1)
        return PL_ERR_INVALID;
    if (last <= applied) {
        for (size_t i = 0; i < n; i++)
            if ((rc = reject(c, &results[i].reply, PL_ERR_STALE_REQUEST,
                             "op %" PRIu64 " is already applied", first_op + i)))
                return rc;
        return PL_OK;
    }
    if ((rc = c->sp->begin(c->st)))
        return rc;
    c->counters_dirty = 0;
    if ((rc = load_counter(c, META_NEXT_UID, &c->next_uid)) ||
        (rc = load_counter(c, META_NEXT_MSG, &c->next_msg_id)))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        uint64_t opno = first_op + i;
        if (opno <= applied)
            rc = reject(c, &results[i].reply, PL_ERR_STALE_REQUEST,
                        "op %" PRIu64 " is already applied", opno);
        else
            rc = apply_one(c, opno, &ops[i], &results[i]);
        if (rc)
            goto fail;
    }
    if (c->counters_dirty &&
        ((rc = c->sp->meta_set(c->st, META_NEXT_UID, c->next_uid)) ||
         (rc = c->sp->meta_set(c->st, META_NEXT_MSG, c->next_msg_id))))
        goto fail;
    if ((rc = c->sp->commit(c->st, last)))
        goto fail;
    return PL_OK;
fail:
    c->sp->abort(c->st);
    pl_chat_forget(c);
    for (size_t i = 0; i < n; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].reply.method = op_method(ops[i].kind);
        results[i].reply.status = (uint32_t)rc;
    }
    return rc;
}

/* ---------------------------------------------------------------- queries */

typedef struct list_ctx {
    pl_chat *c;
    pl_str pattern, prefix;
    uint64_t skip;
    pl_str *users;
    uint32_t n, limit;
    int more;
    int err;
} list_ctx;

static int list_cb(void *ud, const pl_account_rec *a)
{
    list_ctx *x = ud;
    if (a->name.len < x->prefix.len ||
        (x->prefix.len && memcmp(a->name.ptr, x->prefix.ptr, x->prefix.len) != 0))
        return 1;     /* names are in order: past the prefix, nothing can match */
    if (x->pattern.len && !pl_glob_match(x->pattern, a->name))
        return 0;
    if (x->skip) {
        x->skip--;
        return 0;
    }
    if (x->n == x->limit) {
        x->more = 1;
        return 1;
    }
    x->err = arena_dup(x->c, a->name, &x->users[x->n]);
    if (x->err)
        return 1;
    x->n++;
    return 0;
}

static int q_list_users(pl_chat *c, const pl_request *req, pl_response *r)
{
    char msg[200];
    int rc = pattern_problem(req->pattern, msg, sizeof msg);
    if (rc)
        return reject(c, r, rc, "%s", msg);
    uint64_t limit = req->limit ? req->limit : LIST_DEFAULT;
    if (limit > PL_PAGE_MAX)
        return reject(c, r, PL_ERR_PAGE, "limit is %" PRIu64 "; the maximum is %u",
                      limit, PL_PAGE_MAX);
    list_ctx x = { .c = c, .pattern = req->pattern, .prefix = pl_glob_prefix(req->pattern),
                   .skip = req->offset, .limit = (uint32_t)limit };
    x.users = arena_alloc(c, (size_t)limit * sizeof *x.users);
    if (!x.users)
        return PL_ERR_NOMEM;
    if ((rc = c->sp->account_scan(c->st, x.prefix, list_cb, &x)))
        return rc;
    if (x.err)
        return x.err;
    r->users = x.users;
    r->n_users = x.n;
    r->more = (uint32_t)x.more;
    return PL_OK;
}

static int q_page(pl_chat *c, pl_msg_query q, uint64_t limit, pl_response *r)
{
    if (limit == 0)
        limit = HISTORY_DEFAULT;
    if (limit > PL_PAGE_MAX)
        return reject(c, r, PL_ERR_PAGE, "limit is %" PRIu64 "; the maximum is %u",
                      limit, PL_PAGE_MAX);
    page p;
    int rc = page_scan(c, q, (uint32_t)limit, &p);
    if (rc)
        return rc;
    r->msgs = p.msgs;
    r->n_msgs = p.n;
    r->more = p.over ? 1 : 0;
    return PL_OK;
}

int pl_chat_query(pl_chat *c, uint64_t uid, const pl_request *req, pl_response *resp)
{
    int rc;
    arena_reset(c);
    memset(resp, 0, sizeof *resp);
    resp->method = req->method;
    resp->request_id = req->request_id;
    switch (req->method) {
    case PL_M_LIST_USERS:
        return q_list_users(c, req, resp);
    case PL_M_COUNTS:
        return c->sp->message_counts(c->st, uid, &resp->unread, &resp->read);
    case PL_M_HISTORY: {
        pl_msg_query q = { .kind = PL_Q_READ, .uid = uid, .offset = req->offset };
        return q_page(c, q, req->limit, resp);
    }
    case PL_M_CONVERSATION: {
        uint64_t peer_uid;
        rc = account_by_name(c, req->peer, &peer_uid);
        if (rc == PL_ERR_NOT_FOUND) {
            if (username_problem(req->peer, NULL, 0))
                return reject(c, resp, PL_ERR_NO_SUCH_USER, "no such user (not a valid username)");
            return reject(c, resp, PL_ERR_NO_SUCH_USER, "no such user \"%.*s\"",
                          (int)req->peer.len, req->peer.ptr);
        }
        if (rc)
            return rc;
        pl_msg_query q = { .kind = PL_Q_CONVO, .uid = uid, .peer_uid = peer_uid,
                           .offset = req->offset };
        return q_page(c, q, req->limit, resp);
    }
    case PL_M_SUBSCRIBE: {
        pl_msg_query q = { .kind = PL_Q_UNREAD, .uid = uid, .after_id = req->after_id };
        page p;
        if ((rc = page_scan(c, q, PL_PAGE_MAX, &p)))
            return rc;
        resp->msgs = p.msgs;
        resp->n_msgs = p.n;
        resp->more = p.over ? 1 : 0;
        return PL_OK;
    }
    default:
        return reject(c, resp, PL_ERR_UNSUPPORTED, "method %s is not a query",
                      pl_method_name(req->method));
    }
}

/* --------------------------------------------------------------- lookups */

int pl_chat_session(pl_chat *c, pl_str token, uint64_t *uid, pl_str *name,
                    uint64_t *created_ms)
{
    uint8_t h[32];
    if (token.len == 0 || token.len > PL_TOKEN_MAX)
        return PL_ERR_NOT_LOGGED_IN;
    pl_chat_token_hash(token, h);
    return pl_chat_session_hashed(c, token, h, uid, name, created_ms);
}

int pl_chat_session_hashed(pl_chat *c, pl_str token, const uint8_t th[32], uint64_t *uid,
                           pl_str *name, uint64_t *created_ms)
{
    uint64_t su, created;
    pl_str an;
    if (token.len == 0 || token.len > PL_TOKEN_MAX)
        return PL_ERR_NOT_LOGGED_IN;
    int rc = session_by_hash(c, th, &su, &created);
    if (rc == PL_ERR_NOT_FOUND)
        return PL_ERR_NOT_LOGGED_IN;
    if (rc)
        return rc;
    rc = account_by_uid(c, su, &an);
    if (rc == PL_ERR_NOT_FOUND)
        return PL_ERR_NOT_LOGGED_IN;
    if (rc)
        return rc;
    if (an.len > PL_USERNAME_MAX)
        return PL_ERR_CORRUPT;
    if (an.len)
        memcpy(c->sess_name, an.ptr, an.len);
    c->sess_name[an.len] = 0;
    *uid = su;
    if (name)
        *name = (pl_str){ c->sess_name, an.len };
    if (created_ms)
        *created_ms = created;
    return PL_OK;
}

/* Copy an account's name and hash into the lookup buffers. */
static int keep_account(pl_chat *c, const pl_account_rec *a, pl_str *name, pl_str *pwhash)
{
    if (a->name.len > PL_USERNAME_MAX)
        return PL_ERR_CORRUPT;
    if (a->pwhash.len + 1u > c->acct_pwhash_cap) {
        char *p = realloc(c->acct_pwhash, a->pwhash.len + 1u);
        if (!p)
            return PL_ERR_NOMEM;
        c->acct_pwhash = p;
        c->acct_pwhash_cap = a->pwhash.len + 1u;
    }
    if (a->pwhash.len)
        memcpy(c->acct_pwhash, a->pwhash.ptr, a->pwhash.len);
    c->acct_pwhash[a->pwhash.len] = 0;
    if (a->name.len)
        memcpy(c->acct_name, a->name.ptr, a->name.len);
    c->acct_name[a->name.len] = 0;
    if (name)
        *name = (pl_str){ c->acct_name, a->name.len };
    if (pwhash)
        *pwhash = (pl_str){ c->acct_pwhash, a->pwhash.len };
    return PL_OK;
}

int pl_chat_account(pl_chat *c, pl_str name, uint64_t *uid, pl_str *pwhash)
{
    if (!pwhash) {    /* the cache keeps no hashes */
        uint64_t u;
        int rc = account_by_name(c, name, &u);
        if (rc == PL_OK && uid)
            *uid = u;
        return rc;
    }
    pl_account_rec a;
    int rc = c->sp->account_get_name(c->st, name, &a);
    if (rc)
        return rc;
    if (uid)
        *uid = a.uid;
    return keep_account(c, &a, NULL, pwhash);
}

int pl_chat_account_by_uid(pl_chat *c, uint64_t uid, pl_str *name, pl_str *pwhash)
{
    pl_account_rec a;
    int rc = c->sp->account_get_uid(c->st, uid, &a);
    if (rc)
        return rc;
    return keep_account(c, &a, name, pwhash);
}

/* ---------------------------------------------------------------- digest */

/* The digest hashes the canonical encoding of the logical state that a
 * snapshot carries (core/snapshot.c): only logical content, in the order
 * the store ABI defines, so it does not depend on how a plugin lays out
 * data, and two replicas agree exactly when a snapshot of each would. */
static void dg_sink(void *ud, const void *b, size_t n)
{
    crypto_generichash_update(ud, b, n);
}

int pl_chat_digest(pl_chat *c, char out[65])
{
    crypto_generichash_state st;
    unsigned char h[32];
    out[0] = 0;
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    int rc = pl_snapshot_walk(c->sp, c->st, dg_sink, &st);
    if (rc != PL_OK)
        return rc;
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(out, 65, h, sizeof h);
    return PL_OK;
}
