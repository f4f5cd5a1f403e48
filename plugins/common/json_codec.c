/*
 * plugins/common/json_codec.c — the JSON codec (json_codec.h): one JSON
 * object per line for transport-tcp, so an operator can talk to a server
 * with nc, and the same objects one per WebSocket text message for
 * transport-ws (one spec: docs/protocol.md "tcp/json" and "ws"):
 *
 *   {"m":"send","rid":7,"token":"...","to":"bob","body":"hi"}
 *   {"m":"send","rid":7,"status":0,"id":42,"time":1764061200123}
 *   {"m":"push","msg":{"id":43,"from":"bob","to":"alice","body":"yo","time":...,"state":0}}
 *
 * Field names are stable and listed in docs/protocol.md.
 *
 * Numbers: every uint64 is written as a JSON number when it is below 2^53
 * (a "safe integer", exact in any JSON reader's double) and as a decimal
 * string from 2^53 up (random client ids, ids near UINT64_MAX); readers
 * accept either form for every integer field. A number token of 2^53 or
 * more, negative, fractional or with an exponent is malformed rather than
 * silently rounded: cJSON hands numbers back as doubles, so the token text
 * is checked before parsing (json_scan), and below 2^53 the double is exact.
 *
 * Strings: JSON text is UTF-8 and cJSON hands strings back NUL-terminated,
 * so a string can carry neither invalid UTF-8 nor U+0000. Encoding a request
 * refuses them (PL_ERR_BODY for a body, PL_ERR_INVALID otherwise) instead of
 * altering what the user typed; encoding a response replaces them with
 * U+FFFD, because the core's reply must reach the client and its texts are
 * valid UTF-8 anyway. A \u0000 escape in input is malformed.
 *
 * The encoder writes JSON itself (it must choose number vs string per value
 * and validate UTF-8 as it goes); the decoder uses cJSON on exactly one line
 * or one message (cJSON_ParseWithLengthOpts, never past the newline or the
 * message's end).
 */
#include "json_codec.h"
#include "codec_scratch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define JSON_SAFE_LIMIT 9007199254740992ull /* 2^53: numbers must be below */

/* ------------------------------------------------------------------ */
/* UTF-8                                                                */

/* Length of the valid UTF-8 sequence at p (n bytes available), 0 if invalid.
 * Rejects overlongs, surrogates and code points above U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return n >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return n >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80
                       && (p[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* writer                                                               */

typedef struct json_w {
    char *p;
    size_t len, cap;
    int err;        /* first error; later writes are no-ops */
    int comma;      /* a value was written at this nesting level */
    int strict;     /* requests: refuse unencodable strings */
} json_w;

static void jw_raw(json_w *w, const char *s, size_t n)
{
    if (w->err || n == 0)
        return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        char *p;

        while (cap < w->len + n + 1)
            cap *= 2;
        p = realloc(w->p, cap);
        if (!p) {
            w->err = PL_ERR_NOMEM;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void jw_lit(json_w *w, const char *s)
{
    jw_raw(w, s, strlen(s));
}

static void jw_open(json_w *w, char c)
{
    jw_raw(w, &c, 1);
    w->comma = 0;
}

static void jw_close(json_w *w, char c)
{
    jw_raw(w, &c, 1);
    w->comma = 1;
}

/* Separator before a value in an array, or before a key in an object. */
static void jw_sep(json_w *w)
{
    if (w->comma)
        jw_raw(w, ",", 1);
    w->comma = 1;
}

static void jw_key(json_w *w, const char *key)
{
    jw_sep(w);
    jw_raw(w, "\"", 1);
    jw_lit(w, key);
    jw_raw(w, "\":", 2);
    w->comma = 0; /* the value follows without a separator */
}

static void jw_u64v(json_w *w, uint64_t v)
{
    char num[32];
    int n = v < JSON_SAFE_LIMIT ? snprintf(num, sizeof num, "%llu", (unsigned long long)v)
                               : snprintf(num, sizeof num, "\"%llu\"", (unsigned long long)v);

    jw_raw(w, num, (size_t)n);
    w->comma = 1;
}

static void jw_u64(json_w *w, const char *key, uint64_t v)
{
    jw_key(w, key);
    jw_u64v(w, v);
}

static void jw_bool(json_w *w, const char *key, uint32_t v)
{
    jw_key(w, key);
    jw_lit(w, v ? "true" : "false");
    w->comma = 1;
}

/* A string value. bad_err: what a strict writer returns for a string JSON
 * cannot carry. */
static void jw_strv(json_w *w, pl_str s, int bad_err)
{
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0, run = 0;

    jw_raw(w, "\"", 1);
    while (i < s.len && !w->err) {
        unsigned char c = p[i];
        size_t n = c >= 0x20 && c != '"' && c != '\\' ? utf8_len(p + i, s.len - i) : 1;
        char esc[8];

        if (c >= 0x20 && c != '"' && c != '\\' && n > 0) {
            i += n;
            run += n;
            continue;
        }
        /* flush the plain run before this byte */
        jw_raw(w, (const char *)p + i - run, run);
        run = 0;
        if (c == 0 || (c >= 0x80 && n == 0)) {
            if (w->strict) {
                w->err = bad_err;
                break;
            }
            jw_lit(w, "\xEF\xBF\xBD"); /* U+FFFD */
        } else if (c == '"') {
            jw_lit(w, "\\\"");
        } else if (c == '\\') {
            jw_lit(w, "\\\\");
        } else if (c == '\n') {
            jw_lit(w, "\\n");
        } else if (c == '\r') {
            jw_lit(w, "\\r");
        } else if (c == '\t') {
            jw_lit(w, "\\t");
        } else {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            jw_lit(w, esc);
        }
        i++;
    }
    if (run) /* an empty string may have a NULL ptr: no arithmetic on it */
        jw_raw(w, (const char *)p + i - run, run);
    jw_raw(w, "\"", 1);
    w->comma = 1;
}

static void jw_str(json_w *w, const char *key, pl_str s)
{
    jw_key(w, key);
    jw_strv(w, s, PL_ERR_INVALID);
}

static void jw_msg(json_w *w, const pl_message *m)
{
    jw_open(w, '{');
    jw_u64(w, "id", m->id);
    jw_str(w, "from", m->from);
    jw_str(w, "to", m->to);
    jw_key(w, "body");
    jw_strv(w, m->body, PL_ERR_BODY);
    jw_u64(w, "time", m->time_ms);
    jw_u64(w, "state", m->state);
    jw_close(w, '}');
}

static void jw_method(json_w *w, uint32_t m)
{
    jw_key(w, "m");
    if (m < PL_M__COUNT) {
        jw_raw(w, "\"", 1);
        jw_lit(w, pl_method_name(m));
        jw_raw(w, "\"", 1);
        w->comma = 1;
    } else {
        jw_u64v(w, m);
    }
}

static int jw_finish(json_w *w, uint32_t max_frame, uint8_t **out, size_t *len)
{
    if (!w->err && w->len > max_frame)
        w->err = PL_ERR_FRAME_TOO_LARGE;
    jw_raw(w, "\n", 1);
    if (w->err) {
        free(w->p);
        *out = NULL;
        *len = 0;
        return w->err;
    }
    *out = (uint8_t *)w->p;
    *len = w->len;
    return PL_OK;
}

int pl_json_encode_request(uint32_t max_frame, const pl_request *req,
                            uint8_t **out, size_t *len)
{
    json_w w;

    memset(&w, 0, sizeof w);
    w.strict = 1;
    jw_open(&w, '{');
    jw_method(&w, req->method);
    jw_u64(&w, "rid", req->request_id);
    if (req->client_id)
        jw_u64(&w, "cid", req->client_id);
    if (req->request_no)
        jw_u64(&w, "rno", req->request_no);
    if (req->token.len)
        jw_str(&w, "token", req->token);
    switch (req->method) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        jw_str(&w, "username", req->username);
        jw_str(&w, "password", req->password);
        break;
    case PL_M_LIST_USERS:
        jw_str(&w, "pattern", req->pattern);
        jw_u64(&w, "offset", req->offset);
        jw_u64(&w, "limit", req->limit);
        break;
    case PL_M_SEND:
        jw_str(&w, "to", req->to);
        jw_key(&w, "body");
        jw_strv(&w, req->body, PL_ERR_BODY);
        break;
    case PL_M_READ:
        jw_u64(&w, "n", req->n);
        break;
    case PL_M_HISTORY:
        jw_u64(&w, "offset", req->offset);
        jw_u64(&w, "limit", req->limit);
        break;
    case PL_M_CONVERSATION:
        jw_str(&w, "peer", req->peer);
        jw_u64(&w, "offset", req->offset);
        jw_u64(&w, "limit", req->limit);
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        jw_key(&w, "ids");
        jw_open(&w, '[');
        for (uint32_t i = 0; i < req->n_ids; i++) {
            jw_sep(&w);
            jw_u64v(&w, req->ids[i]);
        }
        jw_close(&w, ']');
        break;
    case PL_M_DELETE_ACCOUNT:
        jw_str(&w, "password", req->password);
        break;
    case PL_M_SUBSCRIBE:
        jw_u64(&w, "after", req->after_id);
        break;
    default:
        break;
    }
    jw_close(&w, '}');
    return jw_finish(&w, max_frame, out, len);
}

int pl_json_encode_response(uint32_t max_frame, const pl_response *resp,
                             uint8_t **out, size_t *len)
{
    json_w w;

    memset(&w, 0, sizeof w);
    jw_open(&w, '{');
    jw_method(&w, resp->method);
    if (resp->method == PL_M_PUSH && resp->status == PL_OK) {
        if (resp->n_msgs != 1) {
            free(w.p);
            return PL_ERR_INVALID;
        }
        jw_key(&w, "msg");
        jw_msg(&w, &resp->msgs[0]);
        jw_close(&w, '}');
        return jw_finish(&w, max_frame, out, len);
    }
    jw_u64(&w, "rid", resp->request_id);
    jw_u64(&w, "status", resp->status);
    if (resp->status != PL_OK) {
        jw_str(&w, "error", resp->error);
        if (resp->leader.len)
            jw_str(&w, "leader", resp->leader);
        jw_close(&w, '}');
        return jw_finish(&w, max_frame, out, len);
    }
    switch (resp->method) {
    case PL_M_LOGIN:
        jw_str(&w, "token", resp->token);
        jw_u64(&w, "unread", resp->unread);
        break;
    case PL_M_LIST_USERS:
        jw_key(&w, "users");
        jw_open(&w, '[');
        for (uint32_t i = 0; i < resp->n_users; i++) {
            jw_sep(&w);
            jw_strv(&w, resp->users[i], PL_ERR_INVALID);
        }
        jw_close(&w, ']');
        jw_bool(&w, "more", resp->more);
        break;
    case PL_M_SEND:
        jw_u64(&w, "id", resp->id);
        jw_u64(&w, "time", resp->time_ms);
        break;
    case PL_M_COUNTS:
        jw_u64(&w, "unread", resp->unread);
        jw_u64(&w, "read", resp->read);
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION:
        jw_key(&w, "msgs");
        jw_open(&w, '[');
        for (uint32_t i = 0; i < resp->n_msgs; i++) {
            jw_sep(&w);
            jw_msg(&w, &resp->msgs[i]);
        }
        jw_close(&w, ']');
        jw_bool(&w, "more", resp->more);
        break;
    case PL_M_STATUS:
        jw_key(&w, "servers");
        jw_open(&w, '[');
        for (uint32_t i = 0; i < resp->n_servers; i++) {
            const pl_server_status *s = &resp->servers[i];

            jw_sep(&w);
            jw_open(&w, '{');
            jw_u64(&w, "id", s->id);
            jw_str(&w, "address", s->address);
            jw_bool(&w, "reachable", s->reachable);
            jw_str(&w, "role", s->role);
            jw_u64(&w, "view", s->view);
            jw_u64(&w, "op", s->op);
            jw_u64(&w, "commit", s->commit);
            jw_u64(&w, "applied", s->applied);
            jw_str(&w, "store", s->store);
            jw_str(&w, "transport", s->transport);
            jw_str(&w, "digest", s->digest);
            jw_close(&w, '}');
        }
        jw_close(&w, ']');
        break;
    default:
        break;
    }
    jw_close(&w, '}');
    return jw_finish(&w, max_frame, out, len);
}

/* ------------------------------------------------------------------ */
/* reader                                                               */

/* Find the next non-blank line. PL_OK with [*start, *start + *n) the line
 * and *used the bytes through its newline; AGAIN; or FRAME_TOO_LARGE when a
 * line already holds more than max_frame bytes without its newline. Blank
 * lines (an operator pressing Enter) are skipped. */
static int json_line(uint32_t max_frame, const uint8_t *buf, size_t len, size_t *used,
                     const char **start, size_t *n)
{
    size_t at = 0;

    for (;;) {
        size_t avail = len - at, lim = avail < (size_t)max_frame + 1 ? avail : (size_t)max_frame + 1;
        const uint8_t *nl = memchr(buf + at, '\n', lim);
        size_t i;

        if (!nl)
            return avail > max_frame ? PL_ERR_FRAME_TOO_LARGE : PL_ERR_AGAIN;
        for (i = at; buf + i < nl; i++)
            if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r')
                break;
        if (buf + i < nl) {
            *start = (const char *)buf + at;
            *n = (size_t)(nl - (buf + at));
            *used = (size_t)(nl - buf) + 1;
            return PL_OK;
        }
        at = (size_t)(nl - buf) + 1;
    }
}

/* Checks cJSON cannot make after parsing, on the raw line: 1 if it holds
 *  - a \u0000 escape: cJSON stores strings NUL-terminated, so it would cut
 *    the string short without a word;
 *  - a number token that is not a plain non-negative integer (sign,
 *    fraction, exponent): every number in this protocol is a uint64, and
 *    cJSON's double would round "4503599627370496.5" to an integer. */
static int json_scan_bad(const char *s, size_t n)
{
    int in_str = 0;

    for (size_t i = 0; i < n; i++) {
        if (!in_str) {
            if (s[i] == '"') {
                in_str = 1;
            } else if (s[i] == '-') {
                return 1;
            } else if (s[i] >= '0' && s[i] <= '9') {
                for (; i + 1 < n; i++) {
                    char c = s[i + 1];

                    if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')
                        return 1;
                    if (c < '0' || c > '9')
                        break;
                }
            }
            continue;
        }
        if (s[i] == '"') {
            in_str = 0;
        } else if (s[i] == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
                return 1;
            i++;
        }
    }
    return 0;
}

static void json_doc_free(void *doc)
{
    cJSON_Delete(doc);
}

/* Parse one JSON object text (a line without its newline, or a whole
 * WebSocket message) into a document owned by *scratch. Whitespace around
 * the object is allowed, anything else after it is malformed. */
static int json_parse(const char *text, size_t n, void **scratch, cJSON **root)
{
    const char *end = NULL;
    cJSON *doc;

    if (json_scan_bad(text, n))
        return PL_ERR_MALFORMED;
    doc = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!doc)
        return PL_ERR_MALFORMED;
    if (pl_scratch_adopt(scratch, doc, json_doc_free) != PL_OK) {
        cJSON_Delete(doc);
        return PL_ERR_NOMEM;
    }
    if (!cJSON_IsObject(doc))
        return PL_ERR_MALFORMED;
    for (; end && end < text + n; end++)
        if (*end != ' ' && *end != '\t' && *end != '\r' && *end != '\n')
            return PL_ERR_MALFORMED;
    *root = doc;
    return PL_OK;
}

/* Field readers: absent (or null) leaves the zero default; a wrong type
 * sets *bad. */
static const cJSON *jr_get(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

    return it && !cJSON_IsNull(it) ? it : NULL;
}

static uint64_t jr_u64v(const cJSON *it, int *bad)
{
    if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        uint64_t v;

        if (!(d >= 0.0 && d < (double)JSON_SAFE_LIMIT)) {
            *bad = 1;
            return 0;
        }
        v = (uint64_t)d;
        if ((double)v != d)
            *bad = 1;
        return v;
    }
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        uint64_t v = 0;

        if (!*s || strlen(s) > 20)
            goto fail;
        for (; *s; s++) {
            uint64_t d = (uint64_t)(*s - '0');

            if (*s < '0' || *s > '9' || v > (UINT64_MAX - d) / 10)
                goto fail;
            v = v * 10 + d;
        }
        return v;
    }
fail:
    *bad = 1;
    return 0;
}

static uint64_t jr_u64(const cJSON *obj, const char *key, int *bad)
{
    const cJSON *it = jr_get(obj, key);

    return it ? jr_u64v(it, bad) : 0;
}

static uint32_t jr_u32(const cJSON *obj, const char *key, int *bad)
{
    uint64_t v = jr_u64(obj, key, bad);

    if (v > UINT32_MAX)
        *bad = 1;
    return (uint32_t)v;
}

static uint32_t jr_bool(const cJSON *obj, const char *key, int *bad)
{
    const cJSON *it = jr_get(obj, key);

    if (!it)
        return 0;
    if (cJSON_IsBool(it))
        return cJSON_IsTrue(it) ? 1 : 0;
    if (cJSON_IsNumber(it) && (it->valuedouble == 0.0 || it->valuedouble == 1.0))
        return it->valuedouble == 1.0;
    *bad = 1;
    return 0;
}

static pl_str jr_strv(const cJSON *it, int *bad)
{
    pl_str s = { NULL, 0 };

    if (!cJSON_IsString(it)) {
        *bad = 1;
        return s;
    }
    s.ptr = it->valuestring;
    s.len = (uint32_t)strlen(it->valuestring);
    return s;
}

static pl_str jr_str(const cJSON *obj, const char *key, int *bad)
{
    const cJSON *it = jr_get(obj, key);
    pl_str s = { NULL, 0 };

    return it ? jr_strv(it, bad) : s;
}

static uint32_t jr_method(const cJSON *obj, int *bad)
{
    const cJSON *it = jr_get(obj, "m");

    if (!it) {
        *bad = 1;
        return 0;
    }
    if (cJSON_IsString(it)) {
        for (uint32_t m = 0; m < PL_M__COUNT; m++)
            if (strcmp(it->valuestring, pl_method_name(m)) == 0)
                return m;
        /* An unknown name still decodes, so the core can answer
         * "unsupported" to its rid instead of closing the connection. */
        return PL_M__COUNT;
    }
    {
        uint64_t v = jr_u64v(it, bad);

        if (v > UINT32_MAX)
            *bad = 1;
        return (uint32_t)v;
    }
}

/* Array of n elements, checked before allocating: the count is bounded by
 * the line (each element takes bytes), and the array is cJSON's already. */
static const cJSON *jr_array(const cJSON *obj, const char *key, uint32_t *n, int *bad)
{
    const cJSON *it = jr_get(obj, key);
    int sz;

    *n = 0;
    if (!it)
        return NULL;
    if (!cJSON_IsArray(it)) {
        *bad = 1;
        return NULL;
    }
    sz = cJSON_GetArraySize(it);
    *n = sz > 0 ? (uint32_t)sz : 0;
    return it;
}

/* Element readers for jr_list: one JSON value into the element at dst. */
typedef void jr_elem_fn(const cJSON *el, void *dst, int *bad);

static void jr_id(const cJSON *el, void *dst, int *bad)
{
    *(uint64_t *)dst = jr_u64v(el, bad);
}

static void jr_user(const cJSON *el, void *dst, int *bad)
{
    *(pl_str *)dst = jr_strv(el, bad);
}

static void jr_msg(const cJSON *o, void *dst, int *bad)
{
    pl_message *m = dst;

    if (!cJSON_IsObject(o)) {
        *bad = 1;
        return;
    }
    m->id = jr_u64(o, "id", bad);
    m->from = jr_str(o, "from", bad);
    m->to = jr_str(o, "to", bad);
    m->body = jr_str(o, "body", bad);
    m->time_ms = jr_u64(o, "time", bad);
    m->state = jr_u32(o, "state", bad);
}

static void jr_server(const cJSON *o, void *dst, int *bad)
{
    pl_server_status *s = dst;

    if (!cJSON_IsObject(o)) {
        *bad = 1;
        return;
    }
    s->id = jr_u32(o, "id", bad);
    s->address = jr_str(o, "address", bad);
    s->reachable = jr_bool(o, "reachable", bad);
    s->role = jr_str(o, "role", bad);
    s->view = jr_u64(o, "view", bad);
    s->op = jr_u64(o, "op", bad);
    s->commit = jr_u64(o, "commit", bad);
    s->applied = jr_u64(o, "applied", bad);
    s->store = jr_str(o, "store", bad);
    s->transport = jr_str(o, "transport", bad);
    s->digest = jr_str(o, "digest", bad);
}

/* The n elements of arr (from jr_array, so n is bounded by the line) read
 * with read into a zeroed scratch array of size-byte elements; *n_read is
 * how many were read. NULL when out of memory. */
static void *jr_list(const cJSON *arr, uint32_t n, size_t size, jr_elem_fn *read,
                     void **scratch, uint32_t *n_read, int *bad)
{
    unsigned char *v = pl_scratch_alloc(scratch, (size_t)n * size);
    const cJSON *el;
    uint32_t i = 0;

    if (!v)
        return NULL;
    memset(v, 0, (size_t)n * size);
    cJSON_ArrayForEach(el, arr) {
        if (i < n)
            read(el, v + (size_t)i++ * size, bad);
    }
    *n_read = i;
    return v;
}

static int decode_request(const char *text, size_t len, pl_request *out, void **scratch)
{
    cJSON *root = NULL;
    const cJSON *ids;
    int bad = 0, rc;
    uint32_t n;

    rc = json_parse(text, len, scratch, &root);
    if (rc != PL_OK)
        return rc;
    out->method = jr_method(root, &bad);
    out->request_id = jr_u64(root, "rid", &bad);
    out->client_id = jr_u64(root, "cid", &bad);
    out->request_no = jr_u64(root, "rno", &bad);
    out->token = jr_str(root, "token", &bad);
    out->username = jr_str(root, "username", &bad);
    out->password = jr_str(root, "password", &bad);
    out->pattern = jr_str(root, "pattern", &bad);
    out->to = jr_str(root, "to", &bad);
    out->body = jr_str(root, "body", &bad);
    out->peer = jr_str(root, "peer", &bad);
    out->offset = jr_u64(root, "offset", &bad);
    out->limit = jr_u64(root, "limit", &bad);
    out->n = jr_u64(root, "n", &bad);
    out->after_id = jr_u64(root, "after", &bad);
    ids = jr_array(root, "ids", &n, &bad);
    if (ids && n > 0 && !bad &&
        !(out->ids = jr_list(ids, n, sizeof *out->ids, jr_id, scratch, &out->n_ids, &bad)))
        return PL_ERR_NOMEM;
    return bad ? PL_ERR_MALFORMED : PL_OK;
}

static int decode_response(const char *text, size_t len, pl_response *out, void **scratch)
{
    cJSON *root = NULL;
    const cJSON *arr, *one;
    int bad = 0, rc;
    uint32_t n;

    rc = json_parse(text, len, scratch, &root);
    if (rc != PL_OK)
        return rc;
    out->method = jr_method(root, &bad);
    out->request_id = jr_u64(root, "rid", &bad);
    out->status = jr_u32(root, "status", &bad);
    out->error = jr_str(root, "error", &bad);
    out->leader = jr_str(root, "leader", &bad);
    out->token = jr_str(root, "token", &bad);
    out->unread = jr_u64(root, "unread", &bad);
    out->read = jr_u64(root, "read", &bad);
    out->id = jr_u64(root, "id", &bad);
    out->time_ms = jr_u64(root, "time", &bad);
    out->more = jr_bool(root, "more", &bad);

    arr = jr_array(root, "users", &n, &bad);
    if (arr && n > 0 && !bad &&
        !(out->users = jr_list(arr, n, sizeof *out->users, jr_user, scratch, &out->n_users, &bad)))
        return PL_ERR_NOMEM;

    /* "msgs" (read, history, conversation) or a push's lone "msg". */
    one = jr_get(root, "msg");
    arr = jr_array(root, "msgs", &n, &bad);
    if (arr && n > 0 && !bad &&
        !(out->msgs = jr_list(arr, n, sizeof *out->msgs, jr_msg, scratch, &out->n_msgs, &bad)))
        return PL_ERR_NOMEM;
    if (one && !arr && !bad) {
        pl_message *m = pl_scratch_alloc(scratch, sizeof *m);

        if (!m)
            return PL_ERR_NOMEM;
        memset(m, 0, sizeof *m);
        jr_msg(one, m, &bad);
        out->msgs = m;
        out->n_msgs = 1;
    }

    arr = jr_array(root, "servers", &n, &bad);
    if (arr && n > 0 && !bad &&
        !(out->servers = jr_list(arr, n, sizeof *out->servers, jr_server, scratch,
                                 &out->n_servers, &bad)))
        return PL_ERR_NOMEM;
    return bad ? PL_ERR_MALFORMED : PL_OK;
}

/* ---- entry points: a line (tcp) or a whole message (ws) ---- */

int pl_json_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                           size_t *used, pl_request *out, void **scratch)
{
    const char *line = NULL;
    size_t n = 0, u = 0;
    int rc;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    rc = json_line(max_frame, buf, len, &u, &line, &n);
    if (rc == PL_OK)
        rc = decode_request(line, n, out, scratch);
    if (rc == PL_OK)
        *used = u;
    return rc;
}

int pl_json_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_response *out, void **scratch)
{
    const char *line = NULL;
    size_t n = 0, u = 0;
    int rc;

    *scratch = NULL;
    memset(out, 0, sizeof *out);
    rc = json_line(max_frame, buf, len, &u, &line, &n);
    if (rc == PL_OK)
        rc = decode_response(line, n, out, scratch);
    if (rc == PL_OK)
        *used = u;
    return rc;
}

int pl_json_decode_request_msg(uint32_t max_frame, const uint8_t *msg, size_t len,
                               pl_request *out, void **scratch)
{
    *scratch = NULL;
    memset(out, 0, sizeof *out);
    if (len > max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    return decode_request((const char *)msg, len, out, scratch);
}

int pl_json_decode_response_msg(uint32_t max_frame, const uint8_t *msg, size_t len,
                                pl_response *out, void **scratch)
{
    *scratch = NULL;
    memset(out, 0, sizeof *out);
    if (len > max_frame)
        return PL_ERR_FRAME_TOO_LARGE;
    return decode_response((const char *)msg, len, out, scratch);
}
