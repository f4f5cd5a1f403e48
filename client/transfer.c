/*
 * client/transfer.c — `parley admin import-prototype`, `export` and
 * `import` (transfer.h; issue 21).
 *
 * import-prototype reads the Python prototype's state file, checks all of
 * it first and says everything parley cannot hold (a name that is not a
 * parley username, a hash that is not the prototype's, an empty or
 * oversized message) before anything is sent: a name is never changed
 * silently, --rename OLD=NEW maps it, --skip-invalid imports the rest.
 * Then it sends the accounts and then the messages to the primary's
 * /chat/import-prototype in batches. Each batch is one replicated op
 * whose rules make a second copy change nothing (core/chat.c), so a batch
 * whose answer was lost in a failover is simply sent again, and running
 * the command again on the same file imports nothing twice.
 *
 * Messages go in the prototype's id order, which is the order they were
 * sent in, so parley's message ids keep it; each carries its place in its
 * recipient's mailbox (seq), which is what the cluster remembers per
 * imported account.
 */
#include "transfer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "admin.h"
#include "chat.h"
#include "dump.h"

enum { XF_OK = 0, XF_REFUSED = 1, XF_USAGE = 2, XF_UNREACHABLE = 3 };

#define XF_TIMEOUT_DEFAULT_S 300
#define XF_TIMEOUT_MAX_S 86400
#define XF_BATCH_DEFAULT 500u
#define XF_BODY_TARGET (1024u * 1024u)     /* bytes of JSON per request, about */
#define XF_FILE_MAX (2ull * 1024u * 1024u * 1024u)
#define XF_PROBLEMS_SHOWN 50

/* ------------------------------------------------------------ helpers */

/* A whole file into memory (NUL-terminated). */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= XF_FILE_MAX) {
                snprintf(err, errlen, "%s: larger than %llu bytes", path,
                         (unsigned long long)XF_FILE_MAX);
                goto fail;
            }
            size_t nc = cap ? cap * 2 : 1u << 20;
            char *b = realloc(buf, nc + 1);
            if (!b) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = b;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                snprintf(err, errlen, "%s: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* "line L, column C" of a byte offset. */
static void position(const char *text, size_t off, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* Quote a name from the file for a message: printable ASCII as is, other
 * bytes as \xNN, so a report never carries control characters. */
static const char *quoted(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen < 8)
        return "";
    out[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 6 < outlen; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') {
            out[o++] = (char)*p;
        } else {
            snprintf(out + o, outlen - o, "\\x%02x", *p);
            o += 4;
        }
    }
    if (o + 2 < outlen)
        out[o++] = '"';
    out[o] = '\0';
    return out;
}

static int parse_timeout(const char *v, int *out)
{
    char *end;
    long t = strtol(v, &end, 10);
    if (!v[0] || *end || t < 1 || t > XF_TIMEOUT_MAX_S)
        return -1;
    *out = (int)t;
    return 0;
}

/* The primary's "error", else the body. */
static void print_refusal(const char *what, const char *where, int status, const char *body)
{
    cJSON *d = cJSON_Parse(body);
    const cJSON *e = d ? cJSON_GetObjectItemCaseSensitive(d, "error") : NULL;
    fprintf(stderr, "parley: %s: %s%s%d: %s\n", what, where[0] ? where : "", where[0] ? ": " : "",
            status, cJSON_IsString(e) ? e->valuestring : body);
    cJSON_Delete(d);
}

/* ------------------------------------------------------------ the prototype's file */

typedef struct proto_user {
    const char *name;         /* as in the file (points into the parsed JSON) */
    const char *pname;        /* parley's name: name, or its --rename */
    char pwhash[160];         /* PL_PBKDF2_PREFIX salt $ hash */
    int ok;                   /* the account can be imported */
    uint64_t n_msgs;          /* messages in its mailbox in the file */
    const char *outcome;      /* what the cluster said */
} proto_user;

typedef struct proto_msg {
    uint64_t id;              /* the prototype's */
    size_t to;                /* index of the recipient in users */
    const char *from;         /* the sender's parley name (or kept name) */
    const char *from_file;    /* as in the file */
    const char *body;
    int read;
    uint64_t seq;             /* 1-based place in the recipient's mailbox */
    int ok;
    const char *outcome;
} proto_msg;

typedef struct rename_map {
    const char *old, *new_;
    int used;
} rename_map;

typedef struct proto {
    const char *path;
    cJSON *root;
    double timestamp;
    int has_timestamp;
    proto_user *users;
    size_t n_users;
    proto_msg *msgs;
    size_t n_msgs;
    rename_map *renames;
    size_t n_renames;
    char **problems;          /* what parley cannot hold, one line each */
    size_t n_problems, cap_problems;
    int nomem;
} proto;

static void problem(proto *p, const char *fmt, ...) PL_PRINTF(2, 3);

static void problem(proto *p, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (p->n_problems == p->cap_problems) {
        size_t nc = p->cap_problems ? p->cap_problems * 2 : 16;
        char **v = realloc(p->problems, nc * sizeof *v);
        if (!v) {
            p->nomem = 1;
            return;
        }
        p->problems = v;
        p->cap_problems = nc;
    }
    if (!(p->problems[p->n_problems] = strdup(line)))
        p->nomem = 1;
    else
        p->n_problems++;
}

static const char *mapped(proto *p, const char *name)
{
    for (size_t i = 0; i < p->n_renames; i++)
        if (strcmp(p->renames[i].old, name) == 0) {
            p->renames[i].used = 1;
            return p->renames[i].new_;
        }
    return name;
}

static int user_index(const proto *p, const char *name)
{
    for (size_t i = 0; i < p->n_users; i++)
        if (strcmp(p->users[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* base64 (standard, padded) of exactly n bytes into out. */
static int b64_field(const cJSON *v, uint8_t *out, size_t n)
{
    size_t got = 0;
    const char *end = NULL;
    if (!cJSON_IsString(v))
        return -1;
    size_t len = strlen(v->valuestring);
    if (sodium_base642bin(out, n, v->valuestring, len, " \n", &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || got != n ||
        end != v->valuestring + len)
        return -1;
    return 0;
}

static int cmp_seq(const void *a, const void *b)
{
    const proto_msg *x = *(proto_msg *const *)a, *y = *(proto_msg *const *)b;
    if (x->to != y->to)
        return x->to < y->to ? -1 : 1;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return x < y ? -1 : x > y; /* the file's order among equal ids */
}

static int cmp_send(const void *a, const void *b)
{
    const proto_msg *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    if (x->to != y->to)
        return x->to < y->to ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* One mailbox list of a user: [[id, sender, content], ...]. */
static int load_mailbox(proto *p, size_t ui, const cJSON *list, const char *key, int read)
{
    char q[200];
    if (!list) {
        problem(p, "user %s: %s: missing", quoted(p->users[ui].name, q, sizeof q), key);
        return 0;
    }
    if (!cJSON_IsArray(list)) {
        problem(p, "user %s: %s: must be a list of [id, sender, content]",
                quoted(p->users[ui].name, q, sizeof q), key);
        return 0;
    }
    int k = 0;
    for (const cJSON *m = list->child; m; m = m->next, k++) {
        const cJSON *id = cJSON_GetArrayItem(m, 0), *from = cJSON_GetArrayItem(m, 1),
                    *body = cJSON_GetArrayItem(m, 2);
        if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 3 || !cJSON_IsNumber(id) ||
            !(id->valuedouble >= 0 && id->valuedouble <= 9007199254740991.0) ||
            (double)(uint64_t)id->valuedouble != id->valuedouble || !cJSON_IsString(from) ||
            !cJSON_IsString(body)) {
            problem(p, "user %s: %s[%d]: must be [id (an integer), sender, content]",
                    quoted(p->users[ui].name, q, sizeof q), key, k);
            continue;
        }
        proto_msg *x = &p->msgs[p->n_msgs++];
        x->id = (uint64_t)id->valuedouble;
        x->to = ui;
        x->from_file = from->valuestring;
        x->body = body->valuestring;
        x->read = read;
        x->ok = 1;
        p->users[ui].n_msgs++;
    }
    return 0;
}

static int count_msgs(const cJSON *users)
{
    int n = 0;
    for (const cJSON *u = users->child; u; u = u->next) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(u, "message_queue");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(u, "read_mailbox");
        n += cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
        n += cJSON_IsArray(b) ? cJSON_GetArraySize(b) : 0;
    }
    return n;
}

/* Parse and check the whole file; what parley cannot hold goes to
 * p->problems. Returns -1 (err set) when the file cannot be read at all. */
static int proto_load(proto *p, char *text, size_t len, char *err, size_t errlen)
{
    char q[200], q2[200];
    /* cJSON ends a string at an escaped NUL: a name or message would be cut
     * short without a word. parley cannot store NUL anyway. */
    for (size_t i = 0; i + 5 < len; i++) {
        if (text[i] != '\\')
            continue;
        if (text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0) {
            unsigned line, col;
            position(text, i, &line, &col);
            snprintf(err, errlen, "%s: line %u, column %u: a NUL character (\\u0000), which "
                     "parley cannot store; remove it from the file first", p->path, line, col);
            return -1;
        }
        i++;
    }
    const char *end = NULL;
    p->root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!p->root) {
        unsigned line, col;
        position(text, end && end >= text && end <= text + len ? (size_t)(end - text) : 0,
                 &line, &col);
        snprintf(err, errlen, "%s: line %u, column %u: not valid JSON", p->path, line, col);
        return -1;
    }
    const cJSON *users = cJSON_GetObjectItemCaseSensitive(p->root, "users");
    if (!cJSON_IsObject(p->root) || !cJSON_IsObject(users)) {
        snprintf(err, errlen, "%s: not the prototype's state file (a JSON object with "
                 "\"users\": {NAME: {...}})", p->path);
        return -1;
    }
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(p->root, "timestamp");
    if (cJSON_IsNumber(ts)) {
        p->has_timestamp = 1;
        p->timestamp = ts->valuedouble;
    }
    size_t nu = (size_t)cJSON_GetArraySize(users), nm = (size_t)count_msgs(users);
    p->users = calloc(nu + 1, sizeof *p->users);
    p->msgs = calloc(nm + 1, sizeof *p->msgs);
    if (!p->users || !p->msgs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (const cJSON *u = users->child; u; u = u->next) {
        proto_user *x = &p->users[p->n_users];
        size_t ui = p->n_users++;
        x->name = u->string;
        x->pname = mapped(p, u->string);
        x->ok = 1;
        if (!cJSON_IsObject(u)) {
            problem(p, "user %s: must be an object {password_hash, salt, message_queue, "
                    "read_mailbox}", quoted(x->name, q, sizeof q));
            x->ok = 0;
            continue;
        }
        uint8_t hash[PL_PBKDF2_HASH_BYTES], salt[PL_PBKDF2_SALT_BYTES];
        if (b64_field(cJSON_GetObjectItemCaseSensitive(u, "password_hash"), hash,
                      sizeof hash) != 0 ||
            b64_field(cJSON_GetObjectItemCaseSensitive(u, "salt"), salt, sizeof salt) != 0) {
            problem(p, "user %s: password_hash and salt must be base64 of %u and %u bytes "
                    "(the prototype's PBKDF2-HMAC-SHA256): the password cannot be kept",
                    quoted(x->name, q, sizeof q), PL_PBKDF2_HASH_BYTES, PL_PBKDF2_SALT_BYTES);
            x->ok = 0;
        } else {
            char sb[64], hb[64];
            sodium_bin2base64(sb, sizeof sb, salt, sizeof salt, sodium_base64_VARIANT_ORIGINAL);
            sodium_bin2base64(hb, sizeof hb, hash, sizeof hash, sodium_base64_VARIANT_ORIGINAL);
            snprintf(x->pwhash, sizeof x->pwhash, "%s%s$%s", PL_PBKDF2_PREFIX, sb, hb);
        }
        sodium_memzero(hash, sizeof hash);
        if (pl_chat_check_username(pl_str_c(x->pname)) != PL_OK) {
            if (x->pname == x->name)
                problem(p, "user %s: not a parley username (1-%u of A-Z a-z 0-9 _ . -): "
                        "--rename %s=NEW", quoted(x->name, q, sizeof q), PL_USERNAME_MAX,
                        quoted(x->name, q2, sizeof q2));
            else
                problem(p, "--rename %s=%s: %s is not a parley username", quoted(x->name, q,
                        sizeof q), x->pname, x->pname);
            x->ok = 0;
        }
        load_mailbox(p, ui, cJSON_GetObjectItemCaseSensitive(u, "read_mailbox"), "read_mailbox",
                     1);
        load_mailbox(p, ui, cJSON_GetObjectItemCaseSensitive(u, "message_queue"),
                     "message_queue", 0);
    }
    /* Two accounts may not end up with one name. */
    for (size_t i = 0; i < p->n_users; i++)
        for (size_t j = 0; j < i; j++)
            if (p->users[i].ok && p->users[j].ok &&
                strcmp(p->users[i].pname, p->users[j].pname) == 0) {
                problem(p, "users %s and %s would both be %s in parley: --rename one of them",
                        quoted(p->users[j].name, q, sizeof q),
                        quoted(p->users[i].name, q2, sizeof q2), p->users[i].pname);
                p->users[i].ok = 0;
            }
    /* Each mailbox in id order: the place of each message in it. */
    proto_msg **byseq = calloc(p->n_msgs + 1, sizeof *byseq);
    if (!byseq) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < p->n_msgs; i++)
        byseq[i] = &p->msgs[i];
    qsort(byseq, p->n_msgs, sizeof *byseq, cmp_seq);
    for (size_t i = 0; i < p->n_msgs; i++)
        byseq[i]->seq = i && byseq[i - 1]->to == byseq[i]->to ? byseq[i - 1]->seq + 1 : 1;
    free(byseq);
    for (size_t i = 0; i < p->n_msgs; i++) {
        proto_msg *m = &p->msgs[i];
        const proto_user *to = &p->users[m->to];
        int fi = user_index(p, m->from_file);
        m->from = fi >= 0 ? p->users[fi].pname : mapped(p, m->from_file);
        if (!to->ok) {
            m->ok = 0; /* said once, for the account */
            continue;
        }
        if (pl_chat_check_body(pl_str_c(m->body)) != PL_OK) {
            problem(p, "message %" PRIu64 " to %s: the content must be 1 byte to 64 KiB of "
                    "UTF-8 (it is %zu bytes)", m->id, to->pname, strlen(m->body));
            m->ok = 0;
        }
        int from_ok = fi >= 0 ? pl_chat_check_username(pl_str_c(m->from)) == PL_OK
                              : pl_chat_check_import_sender(pl_str_c(m->from));
        if (!from_ok) {
            if (fi >= 0)
                m->ok = 0; /* the sender's own problem is said for its account */
            else {
                problem(p, "message %" PRIu64 " to %s: its sender %s (no longer an account) "
                        "cannot be kept as a name (1-%u bytes of UTF-8, no control "
                        "characters): --rename %s=NEW", m->id, to->pname,
                        quoted(m->from_file, q, sizeof q), PL_IMPORT_FROM_MAX,
                        quoted(m->from_file, q2, sizeof q2));
                m->ok = 0;
            }
        }
    }
    for (size_t i = 0; i < p->n_renames; i++)
        if (!p->renames[i].used && user_index(p, p->renames[i].old) < 0) {
            int sender = 0;
            for (size_t j = 0; j < p->n_msgs && !sender; j++)
                sender = strcmp(p->msgs[j].from_file, p->renames[i].old) == 0;
            if (!sender) {
                snprintf(err, errlen, "--rename %s=%s: no user or sender of that name in %s",
                         quoted(p->renames[i].old, q, sizeof q), p->renames[i].new_, p->path);
                return -1;
            }
        }
    if (p->nomem) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void proto_free(proto *p)
{
    for (size_t i = 0; i < p->n_problems; i++)
        free(p->problems[i]);
    free(p->problems);
    for (size_t i = 0; i < p->n_users; i++)
        sodium_memzero(p->users[i].pwhash, sizeof p->users[i].pwhash);
    free(p->users);
    free(p->msgs);
    free(p->renames);
    cJSON_Delete(p->root);
}

/* ------------------------------------------------------------ sending */

typedef struct sender {
    const pl_config *cfg;
    int timeout_s;
    uint64_t batches;
} sender;

/* POST one batch; *doc is the primary's answer document on 200. */
static int post_batch(sender *s, const char *path, const char *body, size_t len, cJSON **doc)
{
    char err[1400], where[300] = "", *resp = NULL;
    int status, sent;
    pl_admin_call call = { .method = "POST", .path = path, .body = body, .body_len = len,
                           .timeout_s = s->timeout_s, .retry_lost = 1, .endpoint = where };
    *doc = NULL;
    int rc = parley_admin_to_primary(s->cfg, &call, &status, &resp, &sent, err, sizeof err);
    if (rc == 2)
        return XF_USAGE;
    if (rc != 0) {
        fprintf(stderr, "parley: %s; run the command again to finish (nothing is imported "
                "twice)\n", err);
        return XF_UNREACHABLE;
    }
    s->batches++;
    if (status != 200) {
        print_refusal(path, where, status, resp);
        free(resp);
        return XF_REFUSED;
    }
    *doc = cJSON_Parse(resp);
    free(resp);
    if (!*doc) {
        fprintf(stderr, "parley: %s: the answer is not JSON\n", path);
        return XF_REFUSED;
    }
    return XF_OK;
}

/* Send records [0, n) of kind users or messages in batches; store each
 * outcome. */
static int send_users(sender *s, proto *p, uint32_t per)
{
    size_t i = 0;
    while (i < p->n_users) {
        cJSON *doc = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(doc, "users");
        size_t idx[PL_IMPORT_BATCH_MAX], k = 0;
        for (; i < p->n_users && k < per; i++) {
            if (!p->users[i].ok)
                continue;
            cJSON *u = cJSON_CreateObject();
            cJSON_AddStringToObject(u, "name", p->users[i].pname);
            cJSON_AddStringToObject(u, "pwhash", p->users[i].pwhash);
            cJSON_AddItemToArray(arr, u);
            idx[k++] = i;
        }
        if (!k) {
            cJSON_Delete(doc);
            break;
        }
        char *body = cJSON_PrintUnformatted(doc);
        cJSON_Delete(doc);
        if (!body) {
            fprintf(stderr, "parley: out of memory\n");
            return XF_REFUSED;
        }
        cJSON *ans = NULL;
        int rc = post_batch(s, "/chat/import-prototype", body, strlen(body), &ans);
        sodium_memzero(body, strlen(body));
        cJSON_free(body);
        if (rc != XF_OK)
            return rc;
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(ans, "users");
        if (!cJSON_IsArray(out) || (size_t)cJSON_GetArraySize(out) != k) {
            cJSON_Delete(ans);
            fprintf(stderr, "parley: the primary's answer does not list every account\n");
            return XF_REFUSED;
        }
        size_t j = 0;
        for (const cJSON *o = out->child; o; o = o->next, j++)
            p->users[idx[j]].outcome = cJSON_IsString(o) ? strdup(o->valuestring) : "?";
        cJSON_Delete(ans);
    }
    return XF_OK;
}

static int send_msgs(sender *s, proto *p, uint32_t per)
{
    size_t i = 0;
    while (i < p->n_msgs) {
        cJSON *doc = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(doc, "messages");
        size_t idx[PL_IMPORT_BATCH_MAX], k = 0, bytes = 0;
        for (; i < p->n_msgs && k < per; i++) {
            proto_msg *m = &p->msgs[i];
            if (!m->ok || !p->users[m->to].ok)
                continue;
            /* The body's JSON may be up to 6 times its bytes (\uXXXX): a
             * batch stays about XF_BODY_TARGET, and holds at least one. */
            size_t est = 6 * strlen(m->body) + 6 * strlen(m->from) + 128;
            if (k && bytes + est > XF_BODY_TARGET)
                break;
            bytes += est;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "to", p->users[m->to].pname);
            cJSON_AddStringToObject(o, "from", m->from);
            cJSON_AddNumberToObject(o, "seq", (double)m->seq);
            cJSON_AddBoolToObject(o, "read", m->read);
            cJSON_AddStringToObject(o, "body", m->body);
            cJSON_AddItemToArray(arr, o);
            idx[k++] = i;
        }
        if (!k) {
            cJSON_Delete(doc);
            break;
        }
        char *body = cJSON_PrintUnformatted(doc);
        cJSON_Delete(doc);
        if (!body) {
            fprintf(stderr, "parley: out of memory\n");
            return XF_REFUSED;
        }
        cJSON *ans = NULL;
        int rc = post_batch(s, "/chat/import-prototype", body, strlen(body), &ans);
        cJSON_free(body);
        if (rc != XF_OK)
            return rc;
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(ans, "messages");
        if (!cJSON_IsArray(out) || (size_t)cJSON_GetArraySize(out) != k) {
            cJSON_Delete(ans);
            fprintf(stderr, "parley: the primary's answer does not list every message\n");
            return XF_REFUSED;
        }
        size_t j = 0;
        for (const cJSON *o = out->child; o; o = o->next, j++)
            p->msgs[idx[j]].outcome = cJSON_IsString(o) ? strdup(o->valuestring) : "?";
        cJSON_Delete(ans);
    }
    return XF_OK;
}

/* ------------------------------------------------------------ the report */

typedef struct tally {
    uint64_t created, before, taken, gone, invalid, skipped;
    uint64_t imported, imported_read, no_recipient;
} tally;

static int is(const char *o, const char *what)
{
    return o && strcmp(o, what) == 0;
}

static void count(const proto *p, tally *u, tally *m)
{
    memset(u, 0, sizeof *u);
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < p->n_users; i++) {
        const char *o = p->users[i].outcome;
        if (!p->users[i].ok)
            u->skipped++;
        else if (is(o, "created"))
            u->created++;
        else if (is(o, "before"))
            u->before++;
        else if (is(o, "taken"))
            u->taken++;
        else
            u->invalid++;
    }
    for (size_t i = 0; i < p->n_msgs; i++) {
        const proto_msg *x = &p->msgs[i];
        const char *o = x->outcome;
        if (!x->ok || !p->users[x->to].ok)
            m->skipped++;
        else if (!o)
            m->skipped++;
        else if (is(o, "imported")) {
            m->imported++;
            m->imported_read += x->read != 0;
        } else if (is(o, "before"))
            m->before++;
        else if (is(o, "no-recipient"))
            m->no_recipient++;
        else if (is(o, "recipient-gone"))
            m->gone++;
        else
            m->invalid++;
    }
}

static int report(const proto *p, int json, int dry, const sender *s)
{
    tally u, m;
    count(p, &u, &m);
    if (json) {
        cJSON *d = cJSON_CreateObject(), *a = cJSON_CreateObject(), *b = cJSON_CreateObject();
        cJSON *pr = cJSON_CreateArray(), *rn = cJSON_CreateArray(), *tk = cJSON_CreateArray();
        cJSON_AddStringToObject(d, "file", p->path);
        if (p->has_timestamp)
            cJSON_AddNumberToObject(d, "timestamp", p->timestamp);
        cJSON_AddBoolToObject(d, "dry_run", dry);
        cJSON_AddNumberToObject(d, "batches", s ? (double)s->batches : 0);
        cJSON_AddNumberToObject(a, "in_file", (double)p->n_users);
        cJSON_AddNumberToObject(a, "created", (double)u.created);
        cJSON_AddNumberToObject(a, "imported_before", (double)u.before);
        cJSON_AddNumberToObject(a, "taken", (double)u.taken);
        cJSON_AddNumberToObject(a, "skipped", (double)(u.skipped + u.invalid));
        cJSON_AddNumberToObject(b, "in_file", (double)p->n_msgs);
        cJSON_AddNumberToObject(b, "imported", (double)m.imported);
        cJSON_AddNumberToObject(b, "imported_read", (double)m.imported_read);
        cJSON_AddNumberToObject(b, "imported_before", (double)m.before);
        cJSON_AddNumberToObject(b, "recipient_not_imported", (double)(m.no_recipient + m.gone));
        cJSON_AddNumberToObject(b, "skipped", (double)(m.skipped + m.invalid));
        for (size_t i = 0; i < p->n_problems; i++)
            cJSON_AddItemToArray(pr, cJSON_CreateString(p->problems[i]));
        for (size_t i = 0; i < p->n_renames; i++) {
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "old", p->renames[i].old);
            cJSON_AddStringToObject(r, "new", p->renames[i].new_);
            cJSON_AddItemToArray(rn, r);
        }
        for (size_t i = 0; i < p->n_users; i++)
            if (is(p->users[i].outcome, "taken"))
                cJSON_AddItemToArray(tk, cJSON_CreateString(p->users[i].pname));
        cJSON_AddItemToObject(d, "accounts", a);
        cJSON_AddItemToObject(d, "messages", b);
        cJSON_AddItemToObject(d, "problems", pr);
        cJSON_AddItemToObject(d, "renamed", rn);
        cJSON_AddItemToObject(d, "taken", tk);
        char *t = cJSON_Print(d);
        cJSON_Delete(d);
        if (t)
            puts(t);
        cJSON_free(t);
        return 0;
    }
    char q[200];
    printf("%s%s: %zu account%s, %zu message%s", dry ? "dry run: " : "", p->path, p->n_users,
           p->n_users == 1 ? "" : "s", p->n_msgs, p->n_msgs == 1 ? "" : "s");
    if (p->has_timestamp)
        printf(" (prototype timestamp %.0f)", p->timestamp);
    printf("\n");
    for (size_t i = 0; i < p->n_renames; i++)
        printf("renamed: %s -> %s\n", quoted(p->renames[i].old, q, sizeof q),
               p->renames[i].new_);
    for (size_t i = 0; i < p->n_problems && i < XF_PROBLEMS_SHOWN; i++)
        printf("skipped: %s\n", p->problems[i]);
    if (p->n_problems > XF_PROBLEMS_SHOWN)
        printf("skipped: ... and %zu more (--json lists all)\n",
               p->n_problems - XF_PROBLEMS_SHOWN);
    if (dry) {
        printf("would import %zu account%s and their messages\n",
               p->n_users - (size_t)u.skipped, p->n_users - u.skipped == 1 ? "" : "s");
        return 0;
    }
    printf("accounts: %" PRIu64 " created, %" PRIu64 " imported before, %" PRIu64
           " taken by parley accounts, %" PRIu64 " skipped\n", u.created, u.before, u.taken,
           u.skipped + u.invalid);
    printf("messages: %" PRIu64 " imported (%" PRIu64 " unread, %" PRIu64 " read), %" PRIu64
           " imported before, %" PRIu64 " not imported (recipient not imported), %" PRIu64
           " skipped\n", m.imported, m.imported - m.imported_read, m.imported_read, m.before,
           m.no_recipient + m.gone, m.skipped + m.invalid);
    if (s)
        printf("%" PRIu64 " batch%s sent\n", s->batches, s->batches == 1 ? "" : "es");
    return 0;
}

/* ------------------------------------------------------------ import-prototype */

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "parley: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: parley [-c CONFIG] [--json] admin import-prototype FILE [--rename OLD=NEW]...\n"
            "                                 [--skip-invalid] [--dry-run] [--batch N] [--timeout S]\n"
            "\n"
            "Imports the Python prototype's state file (users with their password\n"
            "hashes, unread and read messages) into the running cluster, through its\n"
            "primary's admin port with the config's admin.token. Everything parley\n"
            "cannot hold is listed first and nothing is imported unless --rename maps\n"
            "the names or --skip-invalid leaves those out. Running it again on the\n"
            "same file imports nothing twice. See docs/operations.md.\n");
    return why ? XF_USAGE : XF_OK;
}

int parley_admin_import_prototype(const char *config_path, int json, int argc, char **argv)
{
    const char *file = NULL;
    int skip = 0, dry = 0, timeout_s = XF_TIMEOUT_DEFAULT_S;
    uint32_t per = XF_BATCH_DEFAULT;
    proto p;
    memset(&p, 0, sizeof p);
    if (!(p.renames = calloc((size_t)argc + 1, sizeof *p.renames)))
        return XF_REFUSED;
    int rc = XF_USAGE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            free(p.renames);
            return usage(NULL);
        }
        if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--skip-invalid") == 0) {
            skip = 1;
        } else if (strcmp(a, "--dry-run") == 0) {
            dry = 1;
        } else if ((strcmp(a, "--rename") == 0 && i + 1 < argc && (v = argv[++i])) ||
                   (strncmp(a, "--rename=", 9) == 0 && (v = a + 9))) {
            const char *eq = strrchr(v, '=');
            if (!eq || eq == v || !eq[1]) {
                rc = usage("--rename takes OLD=NEW");
                goto out;
            }
            if (pl_chat_check_username(pl_str_c(eq + 1)) != PL_OK) {
                fprintf(stderr, "parley: --rename %s: %s is not a parley username (1-%u of "
                        "A-Z a-z 0-9 _ . -)\n", v, eq + 1, PL_USERNAME_MAX);
                goto out;
            }
            char *old = strndup(v, (size_t)(eq - v));
            if (!old) {
                rc = XF_REFUSED;
                goto out;
            }
            p.renames[p.n_renames++] = (rename_map){ old, eq + 1, 0 };
        } else if ((strcmp(a, "--batch") == 0 && i + 1 < argc && (v = argv[++i])) ||
                   (strncmp(a, "--batch=", 8) == 0 && (v = a + 8))) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (!v[0] || *end || n < 1 || n > PL_IMPORT_BATCH_MAX) {
                rc = usage("--batch must be 1-1000 records");
                goto out;
            }
            per = (uint32_t)n;
        } else if ((strcmp(a, "--timeout") == 0 && i + 1 < argc && (v = argv[++i])) ||
                   (strncmp(a, "--timeout=", 10) == 0 && (v = a + 10))) {
            if (parse_timeout(v, &timeout_s) != 0) {
                rc = usage("--timeout must be 1-86400 seconds");
                goto out;
            }
        } else if (a[0] == '-' || file) {
            char msg[200];
            snprintf(msg, sizeof msg, "admin import-prototype: unexpected argument \"%.100s\"", a);
            rc = usage(msg);
            goto out;
        } else {
            file = a;
        }
    }
    if (!file) {
        rc = usage("admin import-prototype takes the prototype's state FILE");
        goto out;
    }
    for (size_t i = 0; i < p.n_renames; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(p.renames[i].old, p.renames[j].old) == 0) {
                fprintf(stderr, "parley: --rename %s given twice\n", p.renames[i].old);
                goto out;
            }
    p.path = file;
    char err[1200];
    size_t len = 0;
    char *text = read_file(file, &len, err, sizeof err);
    if (!text || proto_load(&p, text, len, err, sizeof err) != 0) {
        fprintf(stderr, "parley: %s\n", err);
        free(text);
        rc = XF_REFUSED;
        goto out;
    }
    free(text);   /* the parsed tree holds its own copies */
    if (p.n_problems && !skip && !dry) {
        char q[200];
        for (size_t i = 0; i < p.n_problems; i++)
            fprintf(stderr, "parley: %s: %s\n", file, p.problems[i]);
        fprintf(stderr, "parley: %s: %zu thing%s parley cannot hold as %s; nothing was "
                "imported: --rename the names, or --skip-invalid to import the rest\n",
                quoted(file, q, sizeof q), p.n_problems, p.n_problems == 1 ? "" : "s",
                p.n_problems == 1 ? "it is" : "they are");
        rc = XF_REFUSED;
        goto out;
    }
    /* The messages in the order they were sent (the prototype's ids). */
    qsort(p.msgs, p.n_msgs, sizeof *p.msgs, cmp_send);
    if (dry) {
        rc = report(&p, json, 1, NULL);
        goto out;
    }
    pl_config *cfg = parley_admin_load_config(config_path);
    if (!cfg)
        goto out;
    if (!cfg->admin_token) {
        fprintf(stderr, "parley: %s has no admin.token or admin.token_file: an import needs "
                "the cluster's operator token\n", cfg->path ? cfg->path : "the default "
                "configuration");
        pl_config_free(cfg);
        goto out;
    }
    sender s = { cfg, timeout_s, 0 };
    rc = send_users(&s, &p, per);
    tally u, m;
    count(&p, &u, &m);
    if (rc == XF_OK && u.taken && !skip) {
        for (size_t i = 0; i < p.n_users; i++)
            if (is(p.users[i].outcome, "taken"))
                fprintf(stderr, "parley: %s: %s is the name of a parley account that was not "
                        "imported: --rename %s=NEW\n", file, p.users[i].pname, p.users[i].name);
        fprintf(stderr, "parley: %" PRIu64 " name%s taken; no message was imported (the "
                "accounts created stay; running again skips them), or --skip-invalid to "
                "import without %s\n", u.taken, u.taken == 1 ? " is" : "s are",
                u.taken == 1 ? "it" : "them");
        report(&p, json, 0, &s);
        rc = XF_REFUSED;
    } else if (rc == XF_OK) {
        rc = send_msgs(&s, &p, per);
        if (rc == XF_OK || rc == XF_REFUSED)
            report(&p, json, 0, &s);
    }
    pl_config_free(cfg);
out:
    for (size_t i = 0; i < p.n_renames; i++)
        free((char *)p.renames[i].old);
    for (size_t i = 0; i < p.n_users; i++)
        if (p.users && p.users[i].outcome && p.users[i].outcome[0] != '?')
            free((char *)p.users[i].outcome);
    for (size_t i = 0; i < p.n_msgs; i++)
        if (p.msgs && p.msgs[i].outcome && p.msgs[i].outcome[0] != '?')
            free((char *)p.msgs[i].outcome);
    proto_free(&p);
    return rc;
}

/* ------------------------------------------------------------ export */

/* Where the dump goes, and what the stream showed of it: the header (the
 * first line) and the last line, which must be the "end" line or the dump
 * was cut short. */
typedef struct export_sink {
    FILE *out;
    uint64_t bytes;
    char first[4096];
    size_t first_len;
    int first_done;
    char *last;               /* the line being received, up to PL_DUMP_LINE_MAX */
    size_t last_len;
    char *done_line;          /* the last whole line */
    size_t done_len;
    int overflow;
} export_sink;

static int export_write(void *ud, const char *data, size_t len)
{
    export_sink *e = ud;
    if (fwrite(data, 1, len, e->out) != len)
        return -1;
    e->bytes += len;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (!e->first_done) {
            if (c == '\n')
                e->first_done = 1;
            else if (e->first_len + 1 < sizeof e->first)
                e->first[e->first_len++] = c;
        }
        if (c == '\n') {
            char *t = e->done_line;
            e->done_line = e->last;
            e->done_len = e->last_len;
            e->last = t;
            e->last_len = 0;
            e->overflow = 0;
        } else if (e->last_len < PL_DUMP_LINE_MAX) {
            e->last[e->last_len++] = c;
        } else {
            e->overflow = 1;
        }
    }
    return 0;
}

static int export_usage(const char *why)
{
    if (why)
        fprintf(stderr, "parley: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: parley [-c CONFIG] [--json] admin export [-o FILE] [--no-sessions] [--timeout S]\n"
            "\n"
            "Writes the whole chat state of the running cluster, taken from one\n"
            "snapshot on its primary, as parley's JSON Lines dump (to FILE, mode 0600,\n"
            "or standard output). It holds password hashes: keep it like the data\n"
            "directory. --no-sessions leaves the sessions out (a restore then logs\n"
            "everyone out). 'parley admin import FILE' loads it into an empty cluster\n"
            "of any store. See docs/operations.md.\n");
    return why ? XF_USAGE : XF_OK;
}

int parley_admin_export(const char *config_path, int json, int argc, char **argv)
{
    const char *file = NULL;
    int sessions = 1, timeout_s = XF_TIMEOUT_DEFAULT_S;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return export_usage(NULL);
        if (strcmp(a, "--json") == 0)
            json = 1;
        else if (strcmp(a, "--no-sessions") == 0)
            sessions = 0;
        else if (((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < argc))
            file = argv[++i];
        else if ((strcmp(a, "--timeout") == 0 && i + 1 < argc && (v = argv[++i])) ||
                 (strncmp(a, "--timeout=", 10) == 0 && (v = a + 10))) {
            if (parse_timeout(v, &timeout_s) != 0)
                return export_usage("--timeout must be 1-86400 seconds");
        } else {
            char msg[200];
            snprintf(msg, sizeof msg, "admin export: unexpected argument \"%.100s\"", a);
            return export_usage(msg);
        }
    }
    pl_config *cfg = parley_admin_load_config(config_path);
    if (!cfg)
        return XF_USAGE;
    if (!cfg->admin_token) {
        fprintf(stderr, "parley: %s has no admin.token or admin.token_file: an export needs "
                "the cluster's operator token (it holds password hashes)\n",
                cfg->path ? cfg->path : "the default configuration");
        pl_config_free(cfg);
        return XF_USAGE;
    }
    export_sink e;
    memset(&e, 0, sizeof e);
    e.last = malloc(PL_DUMP_LINE_MAX);
    e.done_line = malloc(PL_DUMP_LINE_MAX);
    char tmp[4096] = "";
    int rc = XF_REFUSED, fd = -1;
    if (!e.last || !e.done_line)
        goto out;
    if (file) {
        /* Written beside FILE and renamed over it once complete: a FILE that
         * exists is always a whole dump. 0600: it holds password hashes. */
        snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", file);
        fd = mkstemp(tmp);
        if (fd < 0 || fchmod(fd, 0600) != 0 || !(e.out = fdopen(fd, "wb"))) {
            fprintf(stderr, "parley: %s: %s\n", file, strerror(errno));
            if (fd >= 0)
                close(fd);
            tmp[0] = '\0';
            goto out;
        }
    } else {
        e.out = stdout;
    }
    pl_admin_sink sink = { export_write, &e };
    char err[1400], where[300] = "", *resp = NULL;
    int status, sent;
    pl_admin_call call = { .method = "GET", .path = sessions ? "/chat/export"
                                                             : "/chat/export?sessions=0",
                           .timeout_s = timeout_s, .sink = &sink, .endpoint = where };
    int r = parley_admin_to_primary(cfg, &call, &status, &resp, &sent, err, sizeof err);
    if (r == 2) {
        rc = XF_USAGE;
        goto out;
    }
    if (r != 0) {
        fprintf(stderr, "parley: export: %s\n", err);
        rc = XF_UNREACHABLE;
        goto out;
    }
    if (status != 200) {
        print_refusal("export", where, status, resp);
        free(resp);
        goto out;
    }
    free(resp);
    pl_dump_line head, end;
    char perr[300];
    int ok_head = pl_dump_parse_line(e.first, e.first_len, &head, perr, sizeof perr) == PL_OK &&
                  head.kind == PL_DUMP_HEADER;
    int ok_end = !e.last_len && !e.overflow &&
                 pl_dump_parse_line(e.done_line, e.done_len, &end, perr, sizeof perr) == PL_OK &&
                 end.kind == PL_DUMP_END;
    if (!ok_head || !ok_end) {
        fprintf(stderr, "parley: export: the dump was cut short (%s); nothing was written%s%s\n",
                !ok_head ? "no header line" : "no \"end\" line", file ? " to " : "",
                file ? file : "");
        if (ok_head)
            pl_dump_line_clear(&head);
        if (!ok_end)
            pl_dump_line_clear(&end);
        goto out;
    }
    if (fflush(e.out) != 0 || (file && fsync(fileno(e.out)) != 0)) {
        fprintf(stderr, "parley: %s: %s\n", file ? file : "standard output", strerror(errno));
        pl_dump_line_clear(&head);
        pl_dump_line_clear(&end);
        goto out;
    }
    if (file) {
        FILE *f = e.out;
        e.out = NULL;
        if (fclose(f) != 0 || rename(tmp, file) != 0) {
            fprintf(stderr, "parley: %s: %s\n", file, strerror(errno));
            pl_dump_line_clear(&head);
            pl_dump_line_clear(&end);
            goto out;
        }
        tmp[0] = '\0';
    }
    FILE *rep = json && file ? stdout : stderr;
    if (json && file)
        fprintf(rep, "{\"file\": \"%s\", \"op\": %" PRIu64 ", \"digest\": \"%s\", \"sessions\": %s, "
                "\"accounts\": %" PRIu64 ", \"session_count\": %" PRIu64 ", \"messages\": %" PRIu64
                ", \"clients\": %" PRIu64 ", \"bytes\": %" PRIu64 "}\n", file, head.op, head.digest,
                head.sessions ? "true" : "false", end.accounts, end.sessions_n, end.messages,
                end.clients, e.bytes);
    else
        fprintf(rep, "exported the state at op %" PRIu64 " (digest %s): %" PRIu64 " accounts, %"
                PRIu64 " sessions%s, %" PRIu64 " messages, %" PRIu64 " client table rows, %"
                PRIu64 " bytes%s%s\n", head.op, head.digest, end.accounts, end.sessions_n,
                head.sessions ? "" : " (left out)", end.messages, end.clients, e.bytes,
                file ? " -> " : "", file ? file : "");
    pl_dump_line_clear(&head);
    pl_dump_line_clear(&end);
    rc = XF_OK;
out:
    if (file && e.out)
        fclose(e.out);
    if (tmp[0])
        unlink(tmp);
    free(e.last);
    free(e.done_line);
    pl_config_free(cfg);
    return rc;
}

/* ------------------------------------------------------------ import (a dump) */

static int import_usage(const char *why)
{
    if (why)
        fprintf(stderr, "parley: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: parley [-c CONFIG] [--json] admin import FILE [--resume] [--batch N] [--timeout S]\n"
            "\n"
            "Loads a dump written by 'parley admin export' into an empty cluster, of\n"
            "any store, through its primary (admin.token), checking the whole file\n"
            "first. --resume finishes an import that was interrupted: records already\n"
            "there (and equal) are skipped, a different one is refused. At the end the\n"
            "cluster's digest is compared with the dump's. See docs/operations.md.\n");
    return why ? XF_USAGE : XF_OK;
}

typedef struct dump_file {
    FILE *f;
    char *line;
    size_t cap;
    ssize_t len;
    uint64_t no;
} dump_file;

/* The next line without its newline; 0 at the end, -1 on an error. */
static int next_line(dump_file *d, char *err, size_t errlen)
{
    errno = 0;
    d->len = getline(&d->line, &d->cap, d->f);
    if (d->len < 0) {
        if (errno) {
            snprintf(err, errlen, "reading: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    d->no++;
    if (d->len && d->line[d->len - 1] == '\n')
        d->line[--d->len] = '\0';
    return 1;
}

/* Pass 1: every line parses, the header comes first, the end line last
 * with counts that match. */
static int check_dump(const char *path, pl_dump_line *head, uint64_t *records, char *err,
                      size_t errlen)
{
    dump_file d = { fopen(path, "rb"), NULL, 0, 0, 0 };
    uint64_t n[4] = { 0, 0, 0, 0 };
    int rc = -1, got_end = 0, r;
    char perr[300];
    if (!d.f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    memset(head, 0, sizeof *head);
    while ((r = next_line(&d, perr, sizeof perr)) > 0) {
        pl_dump_line l;
        if (got_end) {
            snprintf(err, errlen, "%s: line %" PRIu64 ": text after the \"end\" line", path, d.no);
            goto out;
        }
        if (pl_dump_parse_line(d.line, (size_t)d.len, &l, perr, sizeof perr) != PL_OK) {
            snprintf(err, errlen, "%s: line %" PRIu64 ": %s", path, d.no, perr);
            pl_dump_line_clear(&l);
            goto out;
        }
        if ((d.no == 1) != (l.kind == PL_DUMP_HEADER)) {
            snprintf(err, errlen, "%s: line %" PRIu64 ": %s", path, d.no, d.no == 1
                     ? "not a parley dump (the first line is its header {\"parley_dump\": 1, ...})"
                     : "a second header line");
            pl_dump_line_clear(&l);
            goto out;
        }
        if (l.kind == PL_DUMP_HEADER) {
            *head = l;
            continue;
        }
        if (l.kind == PL_DUMP_END) {
            got_end = 1;
            if (l.accounts != n[0] || l.sessions_n != n[1] || l.messages != n[2] ||
                l.clients != n[3]) {
                snprintf(err, errlen, "%s: the \"end\" line counts %" PRIu64 "/%" PRIu64 "/%"
                         PRIu64 "/%" PRIu64 " accounts/sessions/messages/clients, the file holds %"
                         PRIu64 "/%" PRIu64 "/%" PRIu64 "/%" PRIu64, path, l.accounts,
                         l.sessions_n, l.messages, l.clients, n[0], n[1], n[2], n[3]);
                pl_dump_line_clear(&l);
                goto out;
            }
            pl_dump_line_clear(&l);
            continue;
        }
        if (l.rec.tag == 'S' && !head->sessions) {
            snprintf(err, errlen, "%s: line %" PRIu64 ": a session in a dump whose header says "
                     "it has none", path, d.no);
            pl_dump_line_clear(&l);
            goto out;
        }
        n[l.rec.tag == 'A' ? 0 : l.rec.tag == 'S' ? 1 : l.rec.tag == 'M' ? 2 : 3]++;
        pl_dump_line_clear(&l);
    }
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", path, perr);
        goto out;
    }
    if (d.no == 0) {
        snprintf(err, errlen, "%s: empty", path);
        goto out;
    }
    if (!got_end) {
        snprintf(err, errlen, "%s: no \"end\" line: the dump was cut short", path);
        goto out;
    }
    *records = n[0] + n[1] + n[2] + n[3];
    rc = 0;
out:
    if (rc != 0 && head->kind)
        pl_dump_line_clear(head);
    free(d.line);
    fclose(d.f);
    return rc;
}

int parley_admin_import_dump(const char *config_path, int json, int argc, char **argv)
{
    const char *file = NULL;
    int resume = 0, timeout_s = XF_TIMEOUT_DEFAULT_S;
    uint32_t per = PL_RESTORE_BATCH_MAX;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return import_usage(NULL);
        if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--resume") == 0) {
            resume = 1;
        } else if ((strcmp(a, "--batch") == 0 && i + 1 < argc && (v = argv[++i])) ||
                   (strncmp(a, "--batch=", 8) == 0 && (v = a + 8))) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (!v[0] || *end || n < 1 || n > PL_RESTORE_BATCH_MAX)
                return import_usage("--batch must be 1-1000 records");
            per = (uint32_t)n;
        } else if ((strcmp(a, "--timeout") == 0 && i + 1 < argc && (v = argv[++i])) ||
                   (strncmp(a, "--timeout=", 10) == 0 && (v = a + 10))) {
            if (parse_timeout(v, &timeout_s) != 0)
                return import_usage("--timeout must be 1-86400 seconds");
        } else if (a[0] == '-' || file) {
            char msg[200];
            snprintf(msg, sizeof msg, "admin import: unexpected argument \"%.100s\"", a);
            return import_usage(msg);
        } else {
            file = a;
        }
    }
    if (!file)
        return import_usage("admin import takes the dump FILE ('parley admin export' writes one)");
    char err[1400];
    pl_dump_line head;
    uint64_t records = 0;
    if (check_dump(file, &head, &records, err, sizeof err) != 0) {
        fprintf(stderr, "parley: %s; nothing was imported\n", err);
        return XF_REFUSED;
    }
    pl_config *cfg = parley_admin_load_config(config_path);
    int rc = XF_USAGE;
    if (!cfg)
        goto out;
    if (!cfg->admin_token) {
        fprintf(stderr, "parley: %s has no admin.token or admin.token_file: an import needs "
                "the cluster's operator token\n", cfg->path ? cfg->path : "the default "
                "configuration");
        goto out;
    }
    /* Pass 2: batches of the header line and up to `per` records. */
    dump_file d = { fopen(file, "rb"), NULL, 0, 0, 0 };
    char *body = NULL, *hline = NULL;
    size_t blen = 0, bcap = 0, hlen = 0;
    uint64_t sent = 0, written = 0, already = 0, batches = 0;
    char digest[65] = "";
    sender s = { cfg, timeout_s, 0 };
    rc = XF_REFUSED;
    if (!d.f) {
        fprintf(stderr, "parley: %s: %s\n", file, strerror(errno));
        goto out;
    }
    int r = next_line(&d, err, sizeof err), last = records == 0;
    if (r <= 0 || !(hline = strdup(d.line))) {
        fprintf(stderr, "parley: %s: cannot read the header again\n", file);
        goto close;
    }
    hlen = strlen(hline);
    while (!last || batches == 0) {
        uint32_t k = 0;
        if (hlen + 1 > bcap) {
            char *nb = realloc(body, (hlen + 1) * 2);
            if (!nb)
                goto nomem;
            body = nb;
            bcap = (hlen + 1) * 2;
        }
        memcpy(body, hline, hlen);
        body[hlen] = '\n';
        blen = hlen + 1;
        /* Pass 1 counted the records, and the end line follows them. */
        while (k < per && !last) {
            if ((r = next_line(&d, err, sizeof err)) <= 0) {
                fprintf(stderr, "parley: %s: the file changed while it was read\n", file);
                goto close;
            }
            if (blen + (size_t)d.len + 1 > bcap) {
                size_t nc = (blen + (size_t)d.len + 1) * 2;
                char *nb = realloc(body, nc);
                if (!nb)
                    goto nomem;
                body = nb;
                bcap = nc;
            }
            memcpy(body + blen, d.line, (size_t)d.len);
            blen += (size_t)d.len;
            body[blen++] = '\n';
            k++;
            sent++;
            if (sent == records)
                last = 1;
            if (blen > XF_BODY_TARGET)
                break;
        }
        char path[64];
        const char *q = batches == 0 && !resume ? (last ? "?begin=1&end=1" : "?begin=1")
                                                : (last ? "?end=1" : "");
        snprintf(path, sizeof path, "/chat/import%s", q);
        cJSON *ans = NULL;
        rc = post_batch(&s, path, body, blen, &ans);
        if (rc != XF_OK) {
            if (rc == XF_REFUSED && batches == 0 && !resume)
                fprintf(stderr, "parley: (an import of this dump that was interrupted is "
                        "finished with --resume)\n");
            goto close;
        }
        batches++;
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(ans, "restored");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(ans, "already");
        const cJSON *dg = cJSON_GetObjectItemCaseSensitive(ans, "digest");
        written += cJSON_IsNumber(w) ? (uint64_t)w->valuedouble : 0;
        already += cJSON_IsNumber(a) ? (uint64_t)a->valuedouble : 0;
        if (cJSON_IsString(dg))
            snprintf(digest, sizeof digest, "%s", dg->valuestring);
        cJSON_Delete(ans);
    }
    int same = strcmp(digest, head.digest) == 0;
    if (json) {
        printf("{\"file\": \"%s\", \"op\": %" PRIu64 ", \"records\": %" PRIu64 ", \"written\": %"
               PRIu64 ", \"already\": %" PRIu64 ", \"batches\": %" PRIu64 ", \"digest\": \"%s\", "
               "\"dump_digest\": \"%s\", \"sessions\": %s, \"digest_matches\": %s}\n", file,
               head.op, records, written, already, batches, digest, head.digest,
               head.sessions ? "true" : "false", same ? "true" : "false");
    } else {
        printf("imported %s (the state at op %" PRIu64 "): %" PRIu64 " records, %" PRIu64
               " written, %" PRIu64 " already there, %" PRIu64 " batch%s\n", file, head.op,
               records, written, already, batches, batches == 1 ? "" : "es");
        if (same)
            printf("digest %s: equal to the dump's\n", digest);
        else if (!head.sessions)
            printf("digest %s (the dump's %s counts the sessions it left out)\n", digest,
                   head.digest);
        else
            printf("digest %s differs from the dump's %s\n", digest, head.digest);
    }
    if (!same && head.sessions) {
        fprintf(stderr, "parley: the cluster's state differs from the dump's: was it changed "
                "while the dump loaded?\n");
        rc = XF_REFUSED;
    } else {
        rc = XF_OK;
    }
    goto close;
nomem:
    fprintf(stderr, "parley: out of memory\n");
    rc = XF_REFUSED;
close:
    free(body);
    free(hline);
    free(d.line);
    fclose(d.f);
out:
    pl_dump_line_clear(&head);
    pl_config_free(cfg);
    return rc;
}
