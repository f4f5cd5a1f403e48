/*
 * tests/conformance/transport_conformance.c — one suite, run unchanged
 * against every transport plugin (and every codec of one):
 *
 *   transport-conformance PLUGIN.so OPTIONS_JSON
 *
 * Codec: round trip of every method's request and response with every field
 * the method uses (empty strings, 64 KiB bodies, max ids, 1000 ids / users,
 * message lists), pushes and error frames; every truncated prefix of a valid
 * frame is "need more" or an error, never a success; random and mutated
 * garbage never crashes; frames over max_frame are refused by encoder and
 * decoder alike.
 *
 * Live: the server half runs on its own thread and event_base with a fake
 * host (an echo-style responder below); clients use the plugin's client half
 * on the test's event_base, or raw sockets where the test must misbehave:
 * garbage, a 100 MB length prefix, a half frame then close, a reader that
 * never reads. Every live test checks conn_closed came exactly once per
 * accepted connection.
 *
 * What the suite relies on is only the ABI contract: a response carries
 * error and leader when status != 0 and the method's fields when status is
 * 0; booleans (more, reachable) round-trip as booleans.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include <parley/transport.h>

#include "loader.h"

static const pl_transport_plugin *T;
static const char *g_options;
static pl_transport_options OPT; /* codec calls: default max_frame */

#define U64MAX UINT64_MAX
#define BIG_BODY PL_BODY_MAX

/* ------------------------------------------------------------------ */
/* sample data                                                          */

/* A valid UTF-8 body of exactly n bytes exercising escapes and multibyte
 * characters: the pattern repeats, and the tail is padded with ASCII. */
static char *mk_body(size_t n)
{
    static const char pat[] = "h\xC3\xA9llo \"w\xC3\xB6rld\" \\ \n\t\xE2\x9C\x93 \xF0\x9F\x98\x80 ";
    char *b = malloc(n + 1);
    size_t at = 0;

    while (at + sizeof pat - 1 <= n) {
        memcpy(b + at, pat, sizeof pat - 1);
        at += sizeof pat - 1;
    }
    while (at < n)
        b[at++] = 'x';
    b[n] = 0;
    return b;
}

static char *mk_str(size_t n, char c)
{
    char *s = malloc(n + 1);

    memset(s, c, n);
    s[n] = 0;
    return s;
}

static pl_str S(const char *s)
{
    return pl_str_c(s);
}

/* Owned sample buffers, freed at the end of each test by the fork. */
static char *g_big_body, *g_long_user, *g_long_pw, *g_long_token, *g_long_pattern;
static uint64_t g_ids[PL_IDS_MAX];

static void samples_init(void)
{
    g_big_body = mk_body(BIG_BODY);
    g_long_user = mk_str(PL_USERNAME_MAX, 'u');
    g_long_pw = mk_str(PL_PASSWORD_MAX, 'p');
    g_long_token = mk_str(PL_TOKEN_MAX, 't');
    g_long_pattern = mk_str(PL_PATTERN_MAX, '*');
    for (uint32_t i = 0; i < PL_IDS_MAX; i++)
        g_ids[i] = i % 4 == 0 ? U64MAX - i : i % 4 == 1 ? (1ull << 53) + i
                 : i % 4 == 2 ? i : (uint64_t)i * 7919u * 1000003u;
}

enum { V_TYPICAL, V_EMPTY, V_MAX, V__COUNT };

static pl_request mk_request(uint32_t m, int v)
{
    pl_request r;

    memset(&r, 0, sizeof r);
    r.method = m;
    if (v == V_TYPICAL) {
        r.request_id = 7;
        r.client_id = 0x1234567890abcdefull;
        r.request_no = 42;
        r.token = S("tok-0123456789abcdef");
        r.username = S("alice");
        r.password = S("correct horse battery");
        r.pattern = S("a*b?");
        r.to = S("bob");
        r.body = S("hi bob \xE2\x9C\x93 \"quoted\" back\\slash\nnew line");
        r.peer = S("carol");
        r.offset = 20;
        r.limit = 10;
        r.n = 5;
        r.after_id = 99;
        r.ids = g_ids + 2;
        r.n_ids = 3;
    } else if (v == V_EMPTY) {
        /* every string empty, every number 0, no ids */
    } else {
        r.request_id = U64MAX;
        r.client_id = U64MAX;
        r.request_no = U64MAX - 1;
        r.token = S(g_long_token);
        r.username = S(g_long_user);
        r.password = S(g_long_pw);
        r.pattern = S(g_long_pattern);
        r.to = S(g_long_user);
        r.body = S(g_big_body);
        r.peer = S(g_long_user);
        r.offset = U64MAX;
        r.limit = U64MAX;
        r.n = U64MAX;
        r.after_id = U64MAX;
        r.ids = g_ids;
        r.n_ids = PL_IDS_MAX;
    }
    return r;
}

/* Request methods a client may send. */
static const uint32_t req_methods[] = {
    PL_M_REGISTER, PL_M_LOGIN, PL_M_LOGOUT, PL_M_LIST_USERS, PL_M_SEND,
    PL_M_COUNTS, PL_M_READ, PL_M_HISTORY, PL_M_CONVERSATION, PL_M_ACK,
    PL_M_DELETE, PL_M_DELETE_ACCOUNT, PL_M_SUBSCRIBE, PL_M_STATUS, PL_M_PING,
};
#define N_REQ_METHODS (sizeof req_methods / sizeof req_methods[0])

#define N_USERS_MAX 1000
#define N_MSGS 50
static pl_str g_users[N_USERS_MAX];
static char g_user_buf[N_USERS_MAX][16];
static pl_message g_msgs[N_MSGS];
static pl_message g_big_msgs[11];
static pl_server_status g_servers[5];

static void lists_init(void)
{
    for (int i = 0; i < N_USERS_MAX; i++) {
        snprintf(g_user_buf[i], sizeof g_user_buf[i], "user_%04d.x-y", i);
        g_users[i] = S(g_user_buf[i]);
    }
    for (int i = 0; i < N_MSGS; i++) {
        pl_message *m = &g_msgs[i];

        m->id = i == 0 ? U64MAX : (uint64_t)1000 + (uint64_t)i;
        m->from = i % 3 ? S("alice") : S("");
        m->to = S("bob");
        m->body = i % 5 ? S("message \xC3\xA9 \"x\" \\ \n") : S("\xF0\x9F\x98\x80");
        m->time_ms = i == 1 ? U64MAX : 1764061200123ull + (uint64_t)i;
        m->state = i % 2 ? PL_MSG_READ : 0;
    }
    for (int i = 0; i < 11; i++) {
        g_big_msgs[i] = g_msgs[i + 2];
        g_big_msgs[i].body = S(g_big_body);
    }
    for (int i = 0; i < 5; i++) {
        pl_server_status *s = &g_servers[i];

        s->id = i == 4 ? UINT32_MAX : (uint32_t)i;
        s->address = S(i ? "127.0.0.1:8101" : "[::1]:8100");
        s->reachable = i != 3;
        s->role = S(i == 0 ? "primary" : i == 3 ? "down" : "backup");
        s->view = i == 4 ? U64MAX : 3;
        s->op = U64MAX - (uint64_t)i;
        s->commit = 12345;
        s->applied = i == 3 ? 0 : 12340;
        s->store = S(i % 2 ? "json" : "sqlite");
        s->transport = S("tcp");
        s->digest = S(i == 3 ? "" : "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}

/* Response methods a server may send with status 0. */
static const uint32_t resp_methods[] = {
    PL_M_REGISTER, PL_M_LOGIN, PL_M_LOGOUT, PL_M_LIST_USERS, PL_M_SEND,
    PL_M_COUNTS, PL_M_READ, PL_M_HISTORY, PL_M_CONVERSATION, PL_M_ACK,
    PL_M_DELETE, PL_M_DELETE_ACCOUNT, PL_M_SUBSCRIBE, PL_M_STATUS, PL_M_PING,
    PL_M_PUSH,
};
#define N_RESP_METHODS (sizeof resp_methods / sizeof resp_methods[0])

enum { RV_TYPICAL, RV_EMPTY, RV_MAX, RV_ERROR, RV__COUNT };

static pl_response mk_response(uint32_t m, int v)
{
    pl_response r;

    memset(&r, 0, sizeof r);
    r.method = m;
    r.request_id = m == PL_M_PUSH ? 0 : v == RV_MAX ? U64MAX : 7;
    if (v == RV_ERROR) {
        r.status = m == PL_M_SEND ? PL_ERR_NOT_PRIMARY : PL_ERR_NOT_LOGGED_IN;
        r.error = S("not the primary \xE2\x80\x94 try \"the leader\"");
        r.leader = m == PL_M_SEND ? S("127.0.0.1:8101") : S("");
        return r;
    }
    if (v == RV_TYPICAL) {
        r.token = S("tok-0123456789abcdef");
        r.unread = 3;
        r.read = 17;
        r.id = 42;
        r.time_ms = 1764061200123ull;
        r.more = 1;
        r.users = g_users;
        r.n_users = 3;
        r.msgs = g_msgs;
        r.n_msgs = m == PL_M_PUSH ? 1 : N_MSGS;
        r.servers = g_servers;
        r.n_servers = 3;
    } else if (v == RV_EMPTY) {
        r.msgs = g_msgs + 2; /* a push always carries one message */
        r.n_msgs = m == PL_M_PUSH ? 1 : 0;
    } else {
        r.token = S(g_long_token);
        r.unread = U64MAX;
        r.read = U64MAX;
        r.id = U64MAX;
        r.time_ms = U64MAX;
        r.more = 0;
        r.users = g_users;
        r.n_users = N_USERS_MAX;
        r.msgs = g_big_msgs;
        r.n_msgs = m == PL_M_PUSH ? 1 : 11;
        r.servers = g_servers;
        r.n_servers = 5;
    }
    return r;
}

/* ------------------------------------------------------------------ */
/* comparisons: the fields each method carries                         */

#define STR_EQ(a, b, what)                                                          \
    ck_assert_msg(pl_str_eq((a), (b)), "%s: %s differs after round trip (%u vs %u bytes)", \
                  ctx, what, (unsigned)(a).len, (unsigned)(b).len)
#define NUM_EQ(a, b, what)                                                          \
    ck_assert_msg((uint64_t)(a) == (uint64_t)(b), "%s: %s differs: sent %llu, got %llu", \
                  ctx, what, (unsigned long long)(a), (unsigned long long)(b))

static void req_check(const char *ctx, const pl_request *a, const pl_request *b)
{
    NUM_EQ(a->method, b->method, "method");
    NUM_EQ(a->request_id, b->request_id, "request_id");
    NUM_EQ(a->client_id, b->client_id, "client_id");
    NUM_EQ(a->request_no, b->request_no, "request_no");
    STR_EQ(a->token, b->token, "token");
    switch (a->method) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        STR_EQ(a->username, b->username, "username");
        STR_EQ(a->password, b->password, "password");
        break;
    case PL_M_LIST_USERS:
        STR_EQ(a->pattern, b->pattern, "pattern");
        NUM_EQ(a->offset, b->offset, "offset");
        NUM_EQ(a->limit, b->limit, "limit");
        break;
    case PL_M_SEND:
        STR_EQ(a->to, b->to, "to");
        STR_EQ(a->body, b->body, "body");
        break;
    case PL_M_READ:
        NUM_EQ(a->n, b->n, "n");
        break;
    case PL_M_HISTORY:
        NUM_EQ(a->offset, b->offset, "offset");
        NUM_EQ(a->limit, b->limit, "limit");
        break;
    case PL_M_CONVERSATION:
        STR_EQ(a->peer, b->peer, "peer");
        NUM_EQ(a->offset, b->offset, "offset");
        NUM_EQ(a->limit, b->limit, "limit");
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        NUM_EQ(a->n_ids, b->n_ids, "n_ids");
        for (uint32_t i = 0; i < a->n_ids; i++)
            NUM_EQ(a->ids[i], b->ids[i], "ids[i]");
        break;
    case PL_M_DELETE_ACCOUNT:
        STR_EQ(a->password, b->password, "password");
        break;
    case PL_M_SUBSCRIBE:
        NUM_EQ(a->after_id, b->after_id, "after_id");
        break;
    default:
        break;
    }
}

static void msg_check(const char *ctx, const pl_message *a, const pl_message *b)
{
    NUM_EQ(a->id, b->id, "msg.id");
    STR_EQ(a->from, b->from, "msg.from");
    STR_EQ(a->to, b->to, "msg.to");
    STR_EQ(a->body, b->body, "msg.body");
    NUM_EQ(a->time_ms, b->time_ms, "msg.time_ms");
    NUM_EQ(a->state, b->state, "msg.state");
}

static void resp_check(const char *ctx, const pl_response *a, const pl_response *b)
{
    NUM_EQ(a->method, b->method, "method");
    NUM_EQ(a->request_id, b->request_id, "request_id");
    NUM_EQ(a->status, b->status, "status");
    if (a->status != PL_OK) {
        STR_EQ(a->error, b->error, "error");
        STR_EQ(a->leader, b->leader, "leader");
        return;
    }
    switch (a->method) {
    case PL_M_LOGIN:
        STR_EQ(a->token, b->token, "token");
        NUM_EQ(a->unread, b->unread, "unread");
        break;
    case PL_M_LIST_USERS:
        NUM_EQ(!!a->more, !!b->more, "more");
        NUM_EQ(a->n_users, b->n_users, "n_users");
        for (uint32_t i = 0; i < a->n_users; i++)
            STR_EQ(a->users[i], b->users[i], "users[i]");
        break;
    case PL_M_SEND:
        NUM_EQ(a->id, b->id, "id");
        NUM_EQ(a->time_ms, b->time_ms, "time_ms");
        break;
    case PL_M_COUNTS:
        NUM_EQ(a->unread, b->unread, "unread");
        NUM_EQ(a->read, b->read, "read");
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION:
        NUM_EQ(!!a->more, !!b->more, "more");
        /* fallthrough: the messages */
    case PL_M_PUSH:
        NUM_EQ(a->n_msgs, b->n_msgs, "n_msgs");
        for (uint32_t i = 0; i < a->n_msgs; i++)
            msg_check(ctx, &a->msgs[i], &b->msgs[i]);
        break;
    case PL_M_STATUS:
        NUM_EQ(a->n_servers, b->n_servers, "n_servers");
        for (uint32_t i = 0; i < a->n_servers; i++) {
            const pl_server_status *x = &a->servers[i], *y = &b->servers[i];
            NUM_EQ(x->id, y->id, "server.id");
            STR_EQ(x->address, y->address, "server.address");
            NUM_EQ(!!x->reachable, !!y->reachable, "server.reachable");
            STR_EQ(x->role, y->role, "server.role");
            NUM_EQ(x->view, y->view, "server.view");
            NUM_EQ(x->op, y->op, "server.op");
            NUM_EQ(x->commit, y->commit, "server.commit");
            NUM_EQ(x->applied, y->applied, "server.applied");
            STR_EQ(x->store, y->store, "server.store");
            STR_EQ(x->transport, y->transport, "server.transport");
            STR_EQ(x->digest, y->digest, "server.digest");
        }
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ */
/* codec helpers                                                        */

static uint8_t *enc_req(const pl_transport_options *o, const pl_request *r, size_t *len)
{
    uint8_t *buf = NULL;
    int rc = T->encode_request(o, r, &buf, len);

    ck_assert_msg(rc == PL_OK, "encode_request(%s) failed: %s", pl_method_name(r->method),
                  pl_strerror(rc));
    ck_assert_msg(buf && *len > 0, "encode_request(%s) returned an empty frame",
                  pl_method_name(r->method));
    return buf;
}

static uint8_t *enc_resp(const pl_transport_options *o, const pl_response *r, size_t *len)
{
    uint8_t *buf = NULL;
    int rc = T->encode_response(o, r, &buf, len);

    ck_assert_msg(rc == PL_OK, "encode_response(%s, status %u) failed: %s",
                  pl_method_name(r->method), r->status, pl_strerror(rc));
    ck_assert_msg(buf && *len > 0, "encode_response(%s) returned an empty frame",
                  pl_method_name(r->method));
    return buf;
}

/* Decode from an exact-size heap copy so a read past the end is caught by
 * valgrind / ASan. */
static int dec_req_exact(const uint8_t *buf, size_t len, size_t *used, pl_request *out,
                         void **scratch)
{
    uint8_t *copy = malloc(len ? len : 1);
    int rc;

    memcpy(copy, buf, len);
    rc = T->decode_request(&OPT, copy, len, used, out, scratch);
    if (rc == PL_OK) {
        /* decoded pointers must not point into our buffer: free it first */
        memset(copy, 0xAA, len);
    }
    free(copy);
    return rc;
}

static int dec_resp_exact(const uint8_t *buf, size_t len, size_t *used, pl_response *out,
                          void **scratch)
{
    uint8_t *copy = malloc(len ? len : 1);
    int rc;

    memcpy(copy, buf, len);
    rc = T->decode_response(&OPT, copy, len, used, out, scratch);
    if (rc == PL_OK)
        memset(copy, 0xAA, len);
    free(copy);
    return rc;
}

static void roundtrip_req(const pl_request *r, const char *variant)
{
    char ctx[96];
    size_t len = 0, used = 0;
    uint8_t *buf = enc_req(&OPT, r, &len);
    pl_request out;
    void *scratch = NULL;
    int rc;

    snprintf(ctx, sizeof ctx, "request %s (%s)", pl_method_name(r->method), variant);
    rc = dec_req_exact(buf, len, &used, &out, &scratch);
    ck_assert_msg(rc == PL_OK, "%s: decode failed: %s", ctx, pl_strerror(rc));
    ck_assert_msg(used == len, "%s: decoder used %zu of %zu bytes", ctx, used, len);
    req_check(ctx, r, &out);
    T->free_scratch(scratch);
    free(buf);
}

static void roundtrip_resp(const pl_response *r, const char *variant)
{
    char ctx[96];
    size_t len = 0, used = 0;
    uint8_t *buf = enc_resp(&OPT, r, &len);
    pl_response out;
    void *scratch = NULL;
    int rc;

    snprintf(ctx, sizeof ctx, "response %s (%s)", pl_method_name(r->method), variant);
    rc = dec_resp_exact(buf, len, &used, &out, &scratch);
    ck_assert_msg(rc == PL_OK, "%s: decode failed: %s", ctx, pl_strerror(rc));
    ck_assert_msg(used == len, "%s: decoder used %zu of %zu bytes", ctx, used, len);
    resp_check(ctx, r, &out);
    T->free_scratch(scratch);
    free(buf);
}

static const char *const variant_names[] = { "typical", "empty", "max", "error" };

/* ------------------------------------------------------------------ */
/* codec tests                                                          */

START_TEST(request_roundtrip)
{
    for (size_t i = 0; i < N_REQ_METHODS; i++)
        for (int v = 0; v < V__COUNT; v++) {
            pl_request r = mk_request(req_methods[i], v);
            roundtrip_req(&r, variant_names[v]);
        }
}
END_TEST

START_TEST(response_roundtrip)
{
    for (size_t i = 0; i < N_RESP_METHODS; i++)
        for (int v = 0; v < RV__COUNT; v++) {
            pl_response r = mk_response(resp_methods[i], v);
            roundtrip_resp(&r, variant_names[v]);
        }
}
END_TEST

START_TEST(error_frame_roundtrip)
{
    /* What a server sends for bad input: method none, no request id. */
    static const uint32_t codes[] = { PL_ERR_MALFORMED, PL_ERR_FRAME_TOO_LARGE,
                                      PL_ERR_UNSUPPORTED, PL_ERR_BUSY };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        pl_response r;

        memset(&r, 0, sizeof r);
        r.method = PL_M_NONE;
        r.status = codes[i];
        r.error = S("frame exceeds max_frame of 1048576 bytes; closing the connection");
        roundtrip_resp(&r, "error frame");
    }
}
END_TEST

/* Two frames back to back: the decoder takes exactly the first. */
START_TEST(frames_back_to_back)
{
    pl_request a = mk_request(PL_M_SEND, V_TYPICAL), b = mk_request(PL_M_PING, V_TYPICAL);
    size_t la, lb, used = 0;
    uint8_t *fa = enc_req(&OPT, &a, &la), *fb = enc_req(&OPT, &b, &lb);
    uint8_t *both = malloc(la + lb);
    pl_request out;
    void *scratch = NULL;
    int rc;

    memcpy(both, fa, la);
    memcpy(both + la, fb, lb);
    rc = T->decode_request(&OPT, both, la + lb, &used, &out, &scratch);
    ck_assert_msg(rc == PL_OK && used == la, "first of two frames: rc %s, used %zu of %zu",
                  pl_strerror(rc), used, la);
    req_check("first of two frames", &a, &out);
    T->free_scratch(scratch);
    scratch = NULL;
    rc = T->decode_request(&OPT, both + la, lb, &used, &out, &scratch);
    ck_assert_msg(rc == PL_OK && used == lb, "second of two frames: rc %s", pl_strerror(rc));
    req_check("second of two frames", &b, &out);
    T->free_scratch(scratch);
    free(both);
    free(fa);
    free(fb);
}
END_TEST

/* Every prefix (sampled for big frames) is "need more" or an error. */
static void prefixes_req(const pl_request *r)
{
    size_t len, step;
    uint8_t *buf = enc_req(&OPT, r, &len);

    step = len > 8192 ? 257 : 1;
    for (size_t k = 0; k < len; k += (k < 64 || len - k < 64) ? 1 : step) {
        size_t used = 0;
        pl_request out;
        void *scratch = NULL;
        int rc = dec_req_exact(buf, k, &used, &out, &scratch);

        T->free_scratch(scratch);
        ck_assert_msg(rc != PL_OK, "request %s: a %zu-byte prefix of a %zu-byte frame decoded "
                      "as a whole frame", pl_method_name(r->method), k, len);
        ck_assert_msg(rc > 0 && rc < PL_ERR__COUNT, "request prefix: bad return %d", rc);
    }
    free(buf);
}

static void prefixes_resp(const pl_response *r)
{
    size_t len, step;
    uint8_t *buf = enc_resp(&OPT, r, &len);

    step = len > 8192 ? 257 : 1;
    for (size_t k = 0; k < len; k += (k < 64 || len - k < 64) ? 1 : step) {
        size_t used = 0;
        pl_response out;
        void *scratch = NULL;
        int rc = dec_resp_exact(buf, k, &used, &out, &scratch);

        T->free_scratch(scratch);
        ck_assert_msg(rc != PL_OK, "response %s: a %zu-byte prefix of a %zu-byte frame "
                      "decoded as a whole frame", pl_method_name(r->method), k, len);
        ck_assert_msg(rc > 0 && rc < PL_ERR__COUNT, "response prefix: bad return %d", rc);
    }
    free(buf);
}

START_TEST(truncated_prefixes)
{
    for (size_t i = 0; i < N_REQ_METHODS; i++)
        for (int v = 0; v < V__COUNT; v++) {
            pl_request r = mk_request(req_methods[i], v);
            prefixes_req(&r);
        }
    for (size_t i = 0; i < N_RESP_METHODS; i++)
        for (int v = 0; v < RV__COUNT; v++) {
            pl_response r = mk_response(resp_methods[i], v);
            prefixes_resp(&r);
        }
}
END_TEST

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic, so a failure reproduces */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void garbage_one(const uint8_t *buf, size_t len)
{
    size_t used = 0;
    void *scratch = NULL;
    pl_request rq;
    pl_response rs;
    int rc = dec_req_exact(buf, len, &used, &rq, &scratch);

    ck_assert_msg(rc >= 0 && rc < PL_ERR__COUNT, "decode_request returned %d", rc);
    if (rc == PL_OK) {
        uint8_t *re = NULL;
        size_t relen = 0;

        ck_assert_msg(used > 0 && used <= len, "decode_request used %zu of %zu", used, len);
        /* whatever decoded must be safe to encode again (it may be refused) */
        if (T->encode_request(&OPT, &rq, &re, &relen) == PL_OK)
            free(re);
    }
    T->free_scratch(scratch);
    scratch = NULL;
    rc = dec_resp_exact(buf, len, &used, &rs, &scratch);
    ck_assert_msg(rc >= 0 && rc < PL_ERR__COUNT, "decode_response returned %d", rc);
    if (rc == PL_OK) {
        uint8_t *re = NULL;
        size_t relen = 0;

        ck_assert_msg(used > 0 && used <= len, "decode_response used %zu of %zu", used, len);
        if (T->encode_response(&OPT, &rs, &re, &relen) == PL_OK)
            free(re);
    }
    T->free_scratch(scratch);
}

START_TEST(random_garbage)
{
    uint8_t buf[2048];

    for (int it = 0; it < 20000; it++) {
        size_t len = (size_t)(rng() % sizeof buf);

        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng();
        /* bias some toward plausible headers: small lengths, newlines */
        if (it % 3 == 0 && len >= 4) {
            buf[0] = buf[1] = 0;
            buf[2] = (uint8_t)(len >> 8);
        }
        if (it % 5 == 0 && len > 1)
            buf[len - 1] = '\n';
        garbage_one(buf, len);
    }
}
END_TEST

/* Valid frames with a few bytes changed: deeper paths than pure noise. */
START_TEST(mutated_frames)
{
    for (size_t i = 0; i < N_RESP_METHODS; i++) {
        pl_response r = mk_response(resp_methods[i], RV_TYPICAL);
        pl_request q = mk_request(req_methods[i % N_REQ_METHODS], V_TYPICAL);
        size_t lr, lq;
        uint8_t *fr = enc_resp(&OPT, &r, &lr), *fq = enc_req(&OPT, &q, &lq);

        for (int it = 0; it < 400; it++) {
            uint8_t *src = it % 2 ? fr : fq;
            size_t len = it % 2 ? lr : lq;
            uint8_t *m = malloc(len);
            int flips = 1 + (int)(rng() % 4);

            memcpy(m, src, len);
            for (int f = 0; f < flips; f++) {
                size_t at = (size_t)(rng() % len);
                m[at] = (rng() % 2) ? (uint8_t)rng() : (uint8_t)(m[at] ^ (1u << (rng() % 8)));
            }
            garbage_one(m, len);
            /* and truncated at a random point */
            garbage_one(m, (size_t)(rng() % len));
            free(m);
        }
        free(fr);
        free(fq);
    }
}
END_TEST

START_TEST(frame_too_large)
{
    pl_transport_options small = OPT, big = OPT;
    pl_request r = mk_request(PL_M_SEND, V_TYPICAL);
    char *body = mk_body(8192);
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    pl_request out;
    void *scratch = NULL;
    int rc;

    small.max_frame = 4096;
    big.max_frame = 1u << 20;
    r.body = S(body);
    rc = T->encode_request(&small, &r, &buf, &len);
    ck_assert_msg(rc == PL_ERR_FRAME_TOO_LARGE,
                  "encoding an 8 KiB body with max_frame 4096 gave %s, want frame too large",
                  pl_strerror(rc));
    free(buf);
    buf = enc_req(&big, &r, &len);
    /* The whole frame, and a prefix of twice the limit, are refused. */
    rc = T->decode_request(&small, buf, len, &used, &out, &scratch);
    T->free_scratch(scratch);
    scratch = NULL;
    ck_assert_msg(rc == PL_ERR_FRAME_TOO_LARGE, "decode of a %zu-byte frame with max_frame "
                  "4096 gave %s", len, pl_strerror(rc));
    rc = T->decode_request(&small, buf, 2 * 4096 + 64, &used, &out, &scratch);
    T->free_scratch(scratch);
    scratch = NULL;
    ck_assert_msg(rc == PL_ERR_FRAME_TOO_LARGE, "decode of an 8 KiB prefix with max_frame "
                  "4096 gave %s", pl_strerror(rc));
    free(buf);
    free(body);
}
END_TEST

/* What the encoder accepts under a limit, the decoder accepts under it too. */
START_TEST(frame_limit_consistent)
{
    pl_transport_options small = OPT;
    char *body = mk_str(4096, 'b');
    int accepted = 0, refused = 0;

    small.max_frame = 4096;
    for (size_t n = 3800; n <= 4096; n++) {
        pl_request r = mk_request(PL_M_SEND, V_TYPICAL);
        uint8_t *buf = NULL;
        size_t len = 0, used = 0;
        pl_request out;
        void *scratch = NULL;
        int rc;

        r.body.ptr = body;
        r.body.len = (uint32_t)n;
        rc = T->encode_request(&small, &r, &buf, &len);
        if (rc == PL_ERR_FRAME_TOO_LARGE) {
            refused++;
            continue;
        }
        ck_assert_msg(rc == PL_OK, "encode with body %zu: %s", n, pl_strerror(rc));
        accepted++;
        rc = T->decode_request(&small, buf, len, &used, &out, &scratch);
        ck_assert_msg(rc == PL_OK, "a frame the encoder accepted under max_frame 4096 (%zu "
                      "bytes) does not decode under it: %s", len, pl_strerror(rc));
        T->free_scratch(scratch);
        free(buf);
    }
    ck_assert_msg(accepted > 0 && refused > 0,
                  "bodies of 3800-4096 bytes should straddle max_frame 4096 (%d accepted, "
                  "%d refused)", accepted, refused);
    free(body);
}
END_TEST

/* ------------------------------------------------------------------ */
/* live: fake host on its own thread                                    */

typedef struct fake_conn {
    struct fake_server *fs;
    pl_transport_conn *conn;
    int closed;                   /* conn_closed calls seen */
    struct fake_conn *next;
} fake_conn;

typedef struct fake_server {
    struct event_base *base;
    pl_transport_server *srv;
    pl_transport_host host;
    uint16_t port;
    pthread_t th;
    int stop_pipe[2];
    struct event *stop_ev;
    fake_conn *conns;             /* server thread only; freed at the end */
    atomic_int opens, closes, double_closes, requests, push_fail, pushes_ok;
    atomic_int refuse_next;       /* conn_open returns NULL once */
} fake_server;

static void fake_log(void *ud, int level, const char *fmt, ...)
{
    va_list ap;

    (void)ud;
    if (level > PL_LOG_INFO)
        return;
    va_start(ap, fmt);
    fprintf(stderr, "  [server] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static void *fake_conn_open(void *ud, pl_transport_conn *conn, const char *peer)
{
    fake_server *fs = ud;
    fake_conn *c;

    ck_assert_msg(peer && strchr(peer, ':'), "conn_open peer should be ip:port, got %s",
                  peer ? peer : "(null)");
    if (atomic_exchange(&fs->refuse_next, 0))
        return NULL;
    c = calloc(1, sizeof *c);
    c->fs = fs;
    c->conn = conn;
    c->next = fs->conns;
    fs->conns = c;
    atomic_fetch_add(&fs->opens, 1);
    return c;
}

static void fake_conn_closed(void *ud, void *ctx)
{
    fake_server *fs = ud;
    fake_conn *c = ctx;

    if (c->closed++)
        atomic_fetch_add(&fs->double_closes, 1);
    atomic_fetch_add(&fs->closes, 1);
}

static char g_echo_body[BIG_BODY + 1];
#define PUSH_FLOOD 1000000u

#define DEFER_RID 1000u

typedef struct deferred { fake_conn *c; uint64_t rid; } deferred;

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    deferred *d = arg;

    (void)fd;
    (void)what;
    if (!d->c->closed) {
        pl_response r;

        memset(&r, 0, sizeof r);
        r.method = PL_M_PING;
        r.request_id = d->rid;
        ck_assert_int_eq(T->conn_send(d->c->conn, &r), PL_OK);
    }
    free(d);
}

/* The echo responder: answers derived from the request, so a client can
 * check it got its own answer. */
static void fake_request(void *ud, void *ctx, const pl_request *q)
{
    fake_server *fs = ud;
    fake_conn *c = ctx;
    pl_response r;
    pl_message msgs[5];
    pl_str users[2];
    char tok[160];
    int rc;

    atomic_fetch_add(&fs->requests, 1);
    memset(&r, 0, sizeof r);
    memset(msgs, 0, sizeof msgs);
    r.method = q->method;
    r.request_id = q->request_id;
    switch (q->method) {
    case PL_M_LOGIN:
        snprintf(tok, sizeof tok, "tok-%.*s", (int)q->username.len,
                 q->username.ptr ? q->username.ptr : "");
        r.token = S(tok);
        r.unread = q->password.len;
        break;
    case PL_M_SEND:
        r.id = q->request_no;
        r.time_ms = q->body.len;
        break;
    case PL_M_LIST_USERS:
        users[0] = q->pattern;
        users[1] = S("bob");
        r.users = users;
        r.n_users = 2;
        r.more = 1;
        break;
    case PL_M_COUNTS:
        r.unread = q->token.len;
        r.read = 2;
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION: {
        /* n (read) or limit: that many messages; a huge body when asked
         * for via offset 1 (the back-pressure test) */
        uint32_t n = (uint32_t)(q->method == PL_M_READ ? q->n : q->limit);

        if (n > 5)
            n = 5;
        for (uint32_t i = 0; i < n; i++) {
            msgs[i].id = q->offset + i + 1;
            msgs[i].from = S("alice");
            msgs[i].to = q->peer;
            msgs[i].body = q->offset == 1 ? pl_str_c(g_echo_body) : S("hello");
            msgs[i].time_ms = 1000 + i;
        }
        r.msgs = msgs;
        r.n_msgs = n;
        break;
    }
    case PL_M_ACK:
    case PL_M_DELETE:
        if (q->n_ids == 0) {
            r.status = PL_ERR_TOO_MANY_IDS;
            r.error = S("give at least one id");
        } else {
            r.id = q->ids[q->n_ids - 1];
        }
        break;
    case PL_M_STATUS:
        r.servers = g_servers;
        r.n_servers = 2;
        break;
    case PL_M_REGISTER:
    case PL_M_LOGOUT:
    case PL_M_DELETE_ACCOUNT:
    case PL_M_SUBSCRIBE:
    case PL_M_PING:
        break;
    default:
        r.status = PL_ERR_UNSUPPORTED;
        r.error = S("unsupported method");
        break;
    }
    if (q->method == PL_M_PING && q->request_id >= DEFER_RID) {
        /* answered later, as the core does after replication */
        deferred *d = malloc(sizeof *d);
        struct timeval tv = { 0, 50000 };

        d->c = c;
        d->rid = q->request_id;
        event_base_once(fs->base, -1, EV_TIMEOUT, deferred_cb, d, &tv);
        return;
    }
    rc = T->conn_send(c->conn, &r);
    ck_assert_msg(rc == PL_OK, "conn_send of the %s answer failed: %s",
                  pl_method_name(q->method), pl_strerror(rc));
    if (q->method == PL_M_SUBSCRIBE) {
        /* after_id + 1, + 2, + 3; after_id PUSH_FLOOD asks for a flood of
         * 64 KiB pushes (the push-bound test expects the cut) */
        int flood = q->after_id == PUSH_FLOOD;
        uint64_t count = flood ? 4000 : 3;

        for (uint64_t i = 0; i < count; i++) {
            pl_response p;
            pl_message m;

            memset(&p, 0, sizeof p);
            memset(&m, 0, sizeof m);
            m.id = q->after_id + i + 1;
            m.from = S("bob");
            m.to = S("alice");
            m.body = flood ? pl_str_c(g_echo_body) : S("pushed");
            m.time_ms = 5000 + i;
            p.method = PL_M_PUSH;
            p.msgs = &m;
            p.n_msgs = 1;
            if (T->conn_send(c->conn, &p) != PL_OK) {
                atomic_fetch_add(&fs->push_fail, 1);
                break;
            }
            atomic_fetch_add(&fs->pushes_ok, 1);
        }
    }
    if (q->method == PL_M_SEND && pl_str_eq(q->to, S("__close__")))
        T->conn_close(c->conn);
}

static void fake_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    fake_server *fs = arg;
    char b;

    (void)what;
    if (read(fd, &b, 1) != 1)
        return;
    if (b == 'F') {
        /* free the server with connections still open */
        T->server_free(fs->srv);
        fs->srv = NULL;
        return;
    }
    if (fs->srv)
        T->server_free(fs->srv);
    fs->srv = NULL;
    event_base_loopbreak(fs->base);
}

static void *fake_thread(void *arg)
{
    fake_server *fs = arg;

    event_base_dispatch(fs->base);
    return NULL;
}

static uint16_t free_port(void)
{
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint16_t port;

    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind: %s", strerror(errno));
    getsockname(fd, (struct sockaddr *)&a, &al);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void fake_start(fake_server *fs)
{
    char err[256] = "";
    int rc = PL_ERR_IO;

    memset(fs, 0, sizeof *fs);
    fs->base = event_base_new();
    fs->host.abi_version = PL_TRANSPORT_ABI_VERSION;
    fs->host.base = fs->base;
    fs->host.ud = fs;
    fs->host.log = fake_log;
    fs->host.conn_open = fake_conn_open;
    fs->host.request = fake_request;
    fs->host.conn_closed = fake_conn_closed;
    for (int attempt = 0; attempt < 5 && rc != PL_OK; attempt++) {
        pl_transport_options o = OPT;

        fs->port = free_port();
        o.port = fs->port;
        rc = T->server_start(&fs->host, &o, &fs->srv, err, sizeof err);
    }
    ck_assert_msg(rc == PL_OK, "server_start failed: %s", err);
    ck_assert_int_eq(pipe(fs->stop_pipe), 0);
    fs->stop_ev = event_new(fs->base, fs->stop_pipe[0], EV_READ | EV_PERSIST, fake_stop_cb, fs);
    event_add(fs->stop_ev, NULL);
    ck_assert_int_eq(pthread_create(&fs->th, NULL, fake_thread, fs), 0);
}

/* Stop the thread (server_free runs there) and check the close accounting. */
static void fake_stop(fake_server *fs)
{
    char b = 'S';

    ck_assert_int_eq(write(fs->stop_pipe[1], &b, 1), 1);
    pthread_join(fs->th, NULL);
    ck_assert_msg(atomic_load(&fs->double_closes) == 0,
                  "conn_closed was called twice for %d connection(s)",
                  atomic_load(&fs->double_closes));
    ck_assert_msg(atomic_load(&fs->opens) == atomic_load(&fs->closes),
                  "%d connections accepted but %d conn_closed calls",
                  atomic_load(&fs->opens), atomic_load(&fs->closes));
    for (fake_conn *c = fs->conns; c; c = c->next)
        ck_assert_msg(c->closed == 1, "a connection saw %d conn_closed calls", c->closed);
    while (fs->conns) {
        fake_conn *c = fs->conns;
        fs->conns = c->next;
        free(c);
    }
    event_free(fs->stop_ev);
    event_base_free(fs->base);
    close(fs->stop_pipe[0]);
    close(fs->stop_pipe[1]);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait (polling) until an atomic counter reaches want. */
static int wait_atomic(atomic_int *v, int want, double secs)
{
    double end = now_s() + secs;

    while (atomic_load(v) < want) {
        if (now_s() > end)
            return 0;
        usleep(2000);
    }
    return 1;
}

/* ---- client half on the test's event_base ---- */

#define MAX_FRAMES 64

typedef struct test_client {
    pl_transport_client *cli;
    int frames, pushes, closed, close_err;
    char why[128];
    uint64_t rid[MAX_FRAMES];
    uint32_t method[MAX_FRAMES], status[MAX_FRAMES];
    uint64_t id[MAX_FRAMES], time_ms[MAX_FRAMES], unread[MAX_FRAMES], nitems[MAX_FRAMES];
    char token[64];
    uint64_t push_ids[MAX_FRAMES];
    int free_in_cb;                /* client_free from inside the frame callback */
} test_client;

static void tc_frame(void *ud, const pl_response *r)
{
    test_client *c = ud;
    int i = c->frames++;

    if (r->method == PL_M_PUSH) {
        ck_assert_msg(r->n_msgs == 1, "a push must carry one message, got %u", r->n_msgs);
        if (c->pushes < MAX_FRAMES)
            c->push_ids[c->pushes] = r->msgs[0].id;
        c->pushes++;
    }
    if (i < MAX_FRAMES) {
        c->rid[i] = r->request_id;
        c->method[i] = r->method;
        c->status[i] = r->status;
        c->id[i] = r->id;
        c->time_ms[i] = r->time_ms;
        c->unread[i] = r->unread;
        c->nitems[i] = r->n_msgs + r->n_users + r->n_servers;
        if (r->method == PL_M_LOGIN)
            snprintf(c->token, sizeof c->token, "%.*s", (int)r->token.len, r->token.ptr);
    }
    if (c->free_in_cb) {
        T->client_free(c->cli);
        c->cli = NULL;
        c->closed = 1;
    }
}

static void tc_closed(void *ud, int err, const char *why)
{
    test_client *c = ud;

    c->closed++;
    c->close_err = err;
    snprintf(c->why, sizeof c->why, "%s", why ? why : "");
}

static const pl_transport_client_cb tc_cb = { tc_frame, tc_closed };

static void tc_connect(struct event_base *base, test_client *c, uint16_t port)
{
    pl_transport_options o = OPT;
    char err[256] = "";
    int rc;

    memset(c, 0, sizeof *c);
    o.port = port;
    rc = T->client_connect(base, &o, &tc_cb, c, &c->cli, err, sizeof err);
    ck_assert_msg(rc == PL_OK, "client_connect: %s", err);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Run base until cond(arg) or the deadline. */
static int run_until(struct event_base *base, int (*cond)(void *), void *arg, double secs)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 5000 };
    double end = now_s() + secs;
    int ok;

    event_add(tick, &tv);
    while (!(ok = cond(arg)) && now_s() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return ok;
}

typedef struct frames_want { test_client *c; int n; } frames_want;

typedef struct atomic_want { atomic_int *v; int n; } atomic_want;

static int cond_atomic(void *a)
{
    atomic_want *w = a;

    return atomic_load(w->v) >= w->n;
}

/* Like wait_atomic, but runs the client loop meanwhile: libevent closes a
 * freed bufferevent's socket from its loop, not inside bufferevent_free. */
static int run_until_atomic(struct event_base *base, atomic_int *v, int n, double secs)
{
    atomic_want w = { v, n };

    return run_until(base, cond_atomic, &w, secs);
}

static int cond_frames(void *a)
{
    frames_want *w = a;

    return w->c->frames >= w->n || w->c->closed;
}

static int cond_closed(void *a)
{
    return ((test_client *)a)->closed > 0;
}

static pl_request q_of(uint32_t m, uint64_t rid)
{
    pl_request q = mk_request(m, V_TYPICAL);

    q.request_id = rid;
    q.request_no = 1000 + rid;
    return q;
}

START_TEST(live_exchange)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client c;
    frames_want w;
    int base_frames;

    fake_start(&fs);
    tc_connect(base, &c, fs.port);
    /* Queued before the connect completes. */
    for (size_t i = 0; i < N_REQ_METHODS; i++) {
        pl_request q = q_of(req_methods[i], i + 1);
        ck_assert_int_eq(T->client_send(c.cli, &q), PL_OK);
    }
    w.c = &c;
    w.n = (int)N_REQ_METHODS + 3; /* + 3 pushes after subscribe */
    ck_assert_msg(run_until(base, cond_frames, &w, 10), "got %d of %d frames", c.frames, w.n);
    ck_assert_msg(!c.closed, "connection closed early: %s", c.why);
    ck_assert_int_eq(c.pushes, 3);
    for (int i = 0; i < c.frames; i++) {
        if (c.method[i] == PL_M_PUSH) {
            ck_assert_msg(c.rid[i] == 0, "a push carries request_id 0");
            continue;
        }
        ck_assert_msg(c.method[i] == req_methods[c.rid[i] - 1],
                      "frame %d: request_id %llu answered with method %s", i,
                      (unsigned long long)c.rid[i], pl_method_name(c.method[i]));
        ck_assert_msg(c.status[i] == PL_OK, "frame %d: status %u", i, c.status[i]);
        if (c.method[i] == PL_M_SEND) {
            ck_assert_msg(c.id[i] == 1000 + c.rid[i], "send: id should echo request_no");
            ck_assert_msg(c.time_ms[i] == strlen(mk_request(PL_M_SEND, V_TYPICAL).body.ptr),
                          "send: time should echo the body length");
        }
        if (c.method[i] == PL_M_READ)
            ck_assert_msg(c.nitems[i] == 5, "read 5: got %llu messages",
                          (unsigned long long)c.nitems[i]);
        if (c.method[i] == PL_M_STATUS)
            ck_assert_msg(c.nitems[i] == 2, "status: got %llu servers",
                          (unsigned long long)c.nitems[i]);
    }
    ck_assert_str_eq(c.token, "tok-alice");
    for (int i = 0; i < 3; i++)
        ck_assert_msg(c.push_ids[i] == 100 + (uint64_t)i, "push %d carries id %llu", i,
                      (unsigned long long)c.push_ids[i]);

    /* An error answer travels too. */
    {
        pl_request q = q_of(PL_M_ACK, 77);

        q.n_ids = 0;
        base_frames = c.frames;
        ck_assert_int_eq(T->client_send(c.cli, &q), PL_OK);
        w.n = base_frames + 1;
        ck_assert(run_until(base, cond_frames, &w, 10));
        ck_assert_msg(c.status[base_frames] == PL_ERR_TOO_MANY_IDS && c.rid[base_frames] == 77,
                      "error answer: status %u rid %llu", c.status[base_frames],
                      (unsigned long long)c.rid[base_frames]);
    }

    /* conn_close flushes the answer before closing. */
    {
        pl_request q = q_of(PL_M_SEND, 99);

        q.to = S("__close__");
        base_frames = c.frames;
        ck_assert_int_eq(T->client_send(c.cli, &q), PL_OK);
        ck_assert_msg(run_until(base, cond_closed, &c, 10), "server conn_close did not close");
        ck_assert_msg(c.frames == base_frames + 1 && c.rid[base_frames] == 99,
                      "the answer sent before conn_close was lost");
        ck_assert_int_eq(c.close_err, PL_ERR_IO);
        ck_assert_msg(strstr(c.why, "closed"), "close reason should say closed: %s", c.why);
        ck_assert_int_eq(c.closed, 1);
    }
    ck_assert_msg(wait_atomic(&fs.closes, 1, 10), "conn_closed not called after conn_close");
    T->client_free(c.cli);
    fake_stop(&fs);
    ck_assert_int_eq(atomic_load(&fs.opens), 1);
    event_base_free(base);
}
END_TEST

START_TEST(live_connection_refused)
{
    struct event_base *base = event_base_new();
    test_client c;

    tc_connect(base, &c, free_port());
    ck_assert_int_eq(T->client_send(c.cli, &(pl_request){ .method = PL_M_PING }), PL_OK);
    ck_assert_msg(run_until(base, cond_closed, &c, 10), "no closed callback for a refused connect");
    ck_assert_int_eq(c.closed, 1);
    ck_assert_int_eq(c.close_err, PL_ERR_IO);
    ck_assert_msg(strstr(c.why, "refused"), "reason should say refused: %s", c.why);
    ck_assert_int_ne(T->client_send(c.cli, &(pl_request){ .method = PL_M_PING }), PL_OK);
    T->client_free(c.cli);
    event_base_free(base);
}
END_TEST

START_TEST(live_client_free_in_callback)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client c;
    pl_request q = q_of(PL_M_PING, 1);

    fake_start(&fs);
    tc_connect(base, &c, fs.port);
    c.free_in_cb = 1;
    /* Two answers arrive together; the client is freed in the first. */
    ck_assert_int_eq(T->client_send(c.cli, &q), PL_OK);
    q.request_id = 2;
    ck_assert_int_eq(T->client_send(c.cli, &q), PL_OK);
    ck_assert(run_until(base, cond_closed, &c, 10));
    ck_assert_int_eq(c.frames, 1);
    ck_assert_msg(run_until_atomic(base, &fs.closes, 1, 10), "server did not see the client go");
    fake_stop(&fs);
    event_base_free(base);
}
END_TEST

START_TEST(live_refused_by_host)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client c, d;
    frames_want w;

    fake_start(&fs);
    atomic_store(&fs.refuse_next, 1);
    tc_connect(base, &c, fs.port);
    ck_assert_int_eq(T->client_send(c.cli, &(pl_request){ .method = PL_M_PING }), PL_OK);
    ck_assert_msg(run_until(base, cond_closed, &c, 10), "a refused connection stayed open");
    ck_assert_int_eq(c.frames, 0);
    T->client_free(c.cli);
    /* the next connection is served */
    tc_connect(base, &d, fs.port);
    ck_assert_int_eq(T->client_send(d.cli, &(pl_request){ .method = PL_M_PING, .request_id = 5 }),
                     PL_OK);
    w.c = &d;
    w.n = 1;
    ck_assert(run_until(base, cond_frames, &w, 10));
    ck_assert_int_eq(d.frames, 1);
    T->client_free(d.cli);
    ck_assert(run_until_atomic(base, &fs.closes, 1, 10));
    fake_stop(&fs);
    ck_assert_int_eq(atomic_load(&fs.opens), 1);
    event_base_free(base);
}
END_TEST

/* ---- raw sockets: clients that misbehave ---- */

static int raw_connect(uint16_t port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = { 10, 0 };

    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s",
                  strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Read one whole response frame (blocking, with the socket's timeout).
 * Returns the decode result; *eof set when the peer closed first. */
static int raw_read_frame(int fd, uint8_t **acc, size_t *alen, pl_response *out, void **scratch,
                          size_t *used)
{
    for (;;) {
        uint8_t chunk[65536];
        ssize_t n;
        int rc;

        if (*alen > 0) {
            rc = T->decode_response(&OPT, *acc, *alen, used, out, scratch);
            if (rc != PL_ERR_AGAIN)
                return rc;
            T->free_scratch(*scratch);
            *scratch = NULL;
        }
        n = recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0)
            return -1;
        *acc = realloc(*acc, *alen + (size_t)n);
        memcpy(*acc + *alen, chunk, (size_t)n);
        *alen += (size_t)n;
    }
}

/* After an error frame the server closes: recv must reach EOF. */
static void raw_expect_error_then_eof(int fd, uint32_t want1, uint32_t want2, const char *what)
{
    uint8_t *acc = NULL;
    size_t alen = 0, used = 0;
    pl_response r;
    void *scratch = NULL;
    int rc = raw_read_frame(fd, &acc, &alen, &r, &scratch, &used);
    char b[4096];
    ssize_t n;
    double end = now_s() + 10;

    ck_assert_msg(rc == PL_OK, "%s: no error frame before the close (rc %d)", what, rc);
    ck_assert_msg(r.method == PL_M_NONE, "%s: error frame method %s", what,
                  pl_method_name(r.method));
    ck_assert_msg(r.status == want1 || r.status == want2, "%s: error frame status %u (%s)", what,
                  r.status, pl_strerror((int)r.status));
    ck_assert_msg(r.error.len > 0, "%s: error frame without text", what);
    fprintf(stderr, "  %s -> error frame: %.*s\n", what, (int)r.error.len, r.error.ptr);
    T->free_scratch(scratch);
    ck_assert_msg(alen == used, "%s: bytes after the error frame", what);
    free(acc);
    while ((n = recv(fd, b, sizeof b, 0)) > 0 && now_s() < end)
        ;
    ck_assert_msg(n == 0 || (n < 0 && errno == ECONNRESET),
                  "%s: the server did not close after the error frame (%s)", what,
                  n < 0 ? strerror(errno) : "still sending");
}

/* Bytes the plugin's own decoder calls malformed: a valid frame with one
 * byte changed, found by asking the codec. */
static uint8_t *malformed_request(size_t *len)
{
    pl_request q = q_of(PL_M_PING, 1);
    uint8_t *buf = enc_req(&OPT, &q, len);
    static const uint8_t subst[] = { 0xFF, 0x00, 0x7F, '{', '"', 0x80 };

    for (size_t at = 0; at < *len; at++)
        for (size_t s = 0; s < sizeof subst; s++) {
            uint8_t keep = buf[at];
            size_t used;
            pl_request out;
            void *scratch = NULL;
            int rc;

            buf[at] = subst[s];
            rc = T->decode_request(&OPT, buf, *len, &used, &out, &scratch);
            T->free_scratch(scratch);
            if (rc == PL_ERR_MALFORMED)
                return buf;
            buf[at] = keep;
        }
    ck_abort_msg("could not make a malformed frame from a valid one");
    return NULL;
}

/* A working client alongside the misbehaving one keeps being served. */
static void check_other_served(struct event_base *base, test_client *c, uint64_t rid)
{
    frames_want w = { c, c->frames + 1 };
    pl_request q = q_of(PL_M_SEND, rid);

    ck_assert_int_eq(T->client_send(c->cli, &q), PL_OK);
    ck_assert_msg(run_until(base, cond_frames, &w, 10) && !c->closed,
                  "the well-behaved connection was not served (closed: %s)", c->why);
    ck_assert(c->rid[w.n - 1] == rid);
}

START_TEST(live_garbage)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client good;
    size_t len;
    uint8_t *bad = malformed_request(&len);
    int fd, reqs;

    fake_start(&fs);
    tc_connect(base, &good, fs.port);
    check_other_served(base, &good, 1);
    fd = raw_connect(fs.port);
    ck_assert(wait_atomic(&fs.opens, 2, 10));
    reqs = atomic_load(&fs.requests);
    ck_assert_int_eq(send(fd, bad, len, MSG_NOSIGNAL), (ssize_t)len);
    raw_expect_error_then_eof(fd, PL_ERR_MALFORMED, PL_ERR_MALFORMED, "garbage");
    close(fd);
    ck_assert_msg(wait_atomic(&fs.closes, 1, 10), "no conn_closed for the garbage connection");
    ck_assert_msg(atomic_load(&fs.requests) == reqs, "garbage reached the host as a request");
    check_other_served(base, &good, 2);
    T->client_free(good.cli);
    fake_stop(&fs);
    free(bad);
    event_base_free(base);
}
END_TEST

START_TEST(live_huge_length_prefix)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client good;
    pl_transport_options huge = OPT;
    pl_request q = q_of(PL_M_SEND, 1);
    size_t len = 0, sent = 0, limit = (size_t)PL_FRAME_DEFAULT + 65536;
    size_t body_len = 100u * 1024u * 1024u;
    char *body = malloc(body_len);
    uint8_t *frame;
    int fd, rc;

    /* A real 100 MB frame's first bytes: its length prefix says 100 MB. */
    memset(body, 'x', body_len);
    q.body.ptr = body;
    q.body.len = (uint32_t)body_len;
    huge.max_frame = 200u * 1024u * 1024u;
    frame = NULL;
    rc = T->encode_request(&huge, &q, &frame, &len);
    ck_assert_msg(rc == PL_OK, "encode 100 MB: %s", pl_strerror(rc));
    free(body);

    fake_start(&fs);
    tc_connect(base, &good, fs.port);
    check_other_served(base, &good, 1);
    fd = raw_connect(fs.port);
    /* Send at most max_frame + 64 KiB, stopping as soon as the server
     * answers: it must not wait for the rest. */
    while (sent < limit) {
        struct pollfd p = { fd, POLLIN, 0 };
        ssize_t n;

        if (poll(&p, 1, 0) > 0)
            break;
        n = send(fd, frame + sent, limit - sent < 16384 ? limit - sent : 16384, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    free(frame);
    raw_expect_error_then_eof(fd, PL_ERR_FRAME_TOO_LARGE, PL_ERR_FRAME_TOO_LARGE,
                              "100 MB length prefix");
    close(fd);
    ck_assert(wait_atomic(&fs.closes, 1, 10));
    check_other_served(base, &good, 2);
    T->client_free(good.cli);
    fake_stop(&fs);
    event_base_free(base);
}
END_TEST

START_TEST(live_half_frame_then_close)
{
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client good;
    pl_request q = q_of(PL_M_SEND, 1);
    size_t len;
    uint8_t *frame = enc_req(&OPT, &q, &len);
    int fd, reqs;

    fake_start(&fs);
    tc_connect(base, &good, fs.port);
    check_other_served(base, &good, 1);
    reqs = atomic_load(&fs.requests);
    fd = raw_connect(fs.port);
    ck_assert_int_eq(send(fd, frame, len / 2, MSG_NOSIGNAL), (ssize_t)(len / 2));
    ck_assert(wait_atomic(&fs.opens, 2, 10));
    close(fd);
    ck_assert_msg(wait_atomic(&fs.closes, 1, 10), "no conn_closed after a half frame and close");
    ck_assert_msg(atomic_load(&fs.requests) == reqs, "a half frame reached the host");
    check_other_served(base, &good, 2);
    T->client_free(good.cli);
    fake_stop(&fs);
    free(frame);
    event_base_free(base);
}
END_TEST

/* A peer that half-closes after its requests (printf ... | nc -N) still
 * gets every answer, including one the host sends later, then EOF. */
START_TEST(live_half_close_gets_answers)
{
    fake_server fs;
    pl_request q1 = q_of(PL_M_PING, DEFER_RID + 1), q2 = q_of(PL_M_SEND, 2);
    size_t l1, l2, used = 0, alen = 0;
    uint8_t *f1 = enc_req(&OPT, &q1, &l1), *f2 = enc_req(&OPT, &q2, &l2), *acc = NULL;
    int fd, seen = 0, rc;
    char b[256];

    fake_start(&fs);
    fd = raw_connect(fs.port);
    ck_assert_int_eq(send(fd, f1, l1, MSG_NOSIGNAL), (ssize_t)l1);
    ck_assert_int_eq(send(fd, f2, l2, MSG_NOSIGNAL), (ssize_t)l2);
    ck_assert(wait_atomic(&fs.requests, 2, 10));
    shutdown(fd, SHUT_WR);
    while (seen < 2) {
        pl_response r;
        void *scratch = NULL;

        rc = raw_read_frame(fd, &acc, &alen, &r, &scratch, &used);
        ck_assert_msg(rc == PL_OK, "answer %d of 2 missing after the half-close (rc %d)",
                      seen + 1, rc);
        ck_assert_msg(r.request_id == (seen == 0 ? 2 : DEFER_RID + 1),
                      "answer %d has request_id %llu", seen + 1,
                      (unsigned long long)r.request_id);
        T->free_scratch(scratch);
        memmove(acc, acc + used, alen - used);
        alen -= used;
        seen++;
    }
    ck_assert_msg(recv(fd, b, sizeof b, 0) == 0, "no EOF after the last owed answer");
    close(fd);
    ck_assert(wait_atomic(&fs.closes, 1, 10));
    fake_stop(&fs);
    free(acc);
    free(f1);
    free(f2);
}
END_TEST

typedef struct many { test_client *c; int n; } many;

static int cond_all_answered(void *a)
{
    many *m = a;

    for (int i = 0; i < m->n; i++)
        if (m->c[i].frames < 1 && !m->c[i].closed)
            return 0;
    return 1;
}

START_TEST(live_200_clients)
{
    enum { N = 200 };
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client *c = calloc(N, sizeof *c);
    many m = { c, N };

    fake_start(&fs);
    for (int i = 0; i < N; i++) {
        pl_request q = q_of(PL_M_SEND, (uint64_t)i + 1);

        tc_connect(base, &c[i], fs.port);
        q.request_no = 5000 + (uint64_t)i;
        ck_assert_int_eq(T->client_send(c[i].cli, &q), PL_OK);
    }
    ck_assert_msg(run_until(base, cond_all_answered, &m, 60), "not every client was answered");
    for (int i = 0; i < N; i++) {
        ck_assert_msg(!c[i].closed, "client %d closed: %s", i, c[i].why);
        ck_assert_msg(c[i].frames == 1 && c[i].rid[0] == (uint64_t)i + 1
                      && c[i].id[0] == 5000 + (uint64_t)i,
                      "client %d got someone else's answer", i);
    }
    ck_assert_int_eq(atomic_load(&fs.opens), N);
    for (int i = 0; i < N; i++)
        T->client_free(c[i].cli);
    ck_assert_msg(run_until_atomic(base, &fs.closes, N, 20), "%d of %d conn_closed calls",
                  atomic_load(&fs.closes), N);
    fake_stop(&fs);
    free(c);
    event_base_free(base);
}
END_TEST

/* server_free with connections open: conn_closed for each, clients told. */
START_TEST(live_server_free_closes_all)
{
    enum { N = 5 };
    fake_server fs;
    struct event_base *base = event_base_new();
    test_client c[N];
    many m = { c, N };
    char b = 'F';

    fake_start(&fs);
    for (int i = 0; i < N; i++) {
        tc_connect(base, &c[i], fs.port);
        ck_assert_int_eq(T->client_send(c[i].cli, &(pl_request){ .method = PL_M_PING,
                                                                 .request_id = 1 }), PL_OK);
    }
    ck_assert(run_until(base, cond_all_answered, &m, 10));
    ck_assert_int_eq(write(fs.stop_pipe[1], &b, 1), 1);
    ck_assert_msg(wait_atomic(&fs.closes, N, 10), "server_free: %d of %d conn_closed calls",
                  atomic_load(&fs.closes), N);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(run_until(base, cond_closed, &c[i], 10), "client %d not told", i);
        T->client_free(c[i].cli);
    }
    fake_stop(&fs);
    event_base_free(base);
}
END_TEST

/* A client that sends many requests and never reads: the server stops
 * reading its requests instead of buffering every answer, and serves them
 * all once the client reads. */
START_TEST(live_slow_reader_backpressure)
{
    enum { N = 2000 };
    fake_server fs;
    uint8_t *out = NULL, *acc = NULL;
    size_t olen = 0, osent = 0, alen = 0;
    int fd, got = 0, stable = 0, last = -1;
    double end;

    memset(g_echo_body, 'z', BIG_BODY);
    for (int i = 0; i < N; i++) {
        /* history with offset 1, limit 1: one 64 KiB message per answer */
        pl_request q = q_of(PL_M_HISTORY, (uint64_t)i + 1);
        size_t len;
        uint8_t *f;

        q.offset = 1;
        q.limit = 1;
        f = enc_req(&OPT, &q, &len);
        out = realloc(out, olen + len);
        memcpy(out + olen, f, len);
        olen += len;
        free(f);
    }
    fake_start(&fs);
    fd = raw_connect(fs.port);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    /* Phase 1: write without reading until the server stops taking requests. */
    end = now_s() + 20;
    while (now_s() < end && stable < 50) {
        ssize_t n = osent < olen ? send(fd, out + osent, olen - osent, MSG_NOSIGNAL) : 0;
        int r;

        if (n > 0)
            osent += (size_t)n;
        usleep(10000);
        r = atomic_load(&fs.requests);
        stable = r == last ? stable + 1 : 0;
        last = r;
    }
    fprintf(stderr, "  slow reader: server handled %d of %d requests before pausing\n", last, N);
    /* 64 KiB answers: the pause threshold is a few MiB, plus socket buffers. */
    ck_assert_msg(last < N / 2, "the server kept answering a client that does not read "
                  "(%d of %d requests handled)", last, N);
    /* Phase 2: read everything; the rest of the requests get served. */
    end = now_s() + 60;
    while (got < N && now_s() < end) {
        struct pollfd p = { fd, POLLIN | (osent < olen ? POLLOUT : 0), 0 };
        uint8_t chunk[65536];
        ssize_t n;

        poll(&p, 1, 100);
        if (osent < olen && (p.revents & POLLOUT)) {
            n = send(fd, out + osent, olen - osent, MSG_NOSIGNAL);
            if (n > 0)
                osent += (size_t)n;
        }
        n = recv(fd, chunk, sizeof chunk, 0);
        if (n == 0)
            break;
        if (n < 0)
            continue;
        acc = realloc(acc, alen + (size_t)n);
        memcpy(acc + alen, chunk, (size_t)n);
        alen += (size_t)n;
        for (;;) {
            pl_response r;
            void *scratch = NULL;
            size_t used = 0;
            int rc = T->decode_response(&OPT, acc, alen, &used, &r, &scratch);

            if (rc == PL_OK) {
                ck_assert_msg(r.request_id == (uint64_t)got + 1, "answer %d out of order", got);
                ck_assert_msg(r.n_msgs == 1 && r.msgs[0].body.len == BIG_BODY,
                              "answer %d lost its message", got);
                got++;
                memmove(acc, acc + used, alen - used);
                alen -= used;
            }
            T->free_scratch(scratch);
            if (rc != PL_OK) {
                ck_assert_msg(rc == PL_ERR_AGAIN, "bad frame from server: %s", pl_strerror(rc));
                break;
            }
        }
    }
    ck_assert_msg(got == N, "after reading, %d of %d answers arrived", got, N);
    close(fd);
    free(acc);
    free(out);
    ck_assert(wait_atomic(&fs.closes, 1, 10));
    fake_stop(&fs);
}
END_TEST

/* Pushes to a client that never reads: the server closes it at a bound
 * rather than queueing forever. */
START_TEST(live_push_bound)
{
    fake_server fs;
    pl_request q = q_of(PL_M_SUBSCRIBE, 1);
    size_t len;
    uint8_t *f;
    int fd;

    memset(g_echo_body, 'p', BIG_BODY);
    q.after_id = PUSH_FLOOD; /* 4000 pushes of 64 KiB = 250 MiB if nothing stopped it */
    f = enc_req(&OPT, &q, &len);
    fake_start(&fs);
    fd = raw_connect(fs.port);
    ck_assert_int_eq(send(fd, f, len, MSG_NOSIGNAL), (ssize_t)len);
    ck_assert_msg(wait_atomic(&fs.push_fail, 1, 20), "4000 pushes of 64 KiB to a client that "
                  "does not read were all queued (%d ok)", atomic_load(&fs.pushes_ok));
    fprintf(stderr, "  push bound: %d pushes queued before the connection was cut\n",
            atomic_load(&fs.pushes_ok));
    ck_assert_msg(atomic_load(&fs.pushes_ok) < 1000, "too many pushes queued: %d",
                  atomic_load(&fs.pushes_ok));
    ck_assert_msg(wait_atomic(&fs.closes, 1, 10), "the over-bound connection was not closed");
    close(fd);
    free(f);
    fake_stop(&fs);
}
END_TEST

/* ------------------------------------------------------------------ */
/* format specifics: tcp's two codecs, checked against docs/protocol.md  */

static int dec_text(const char *text, pl_request *out, void **scratch, size_t *used)
{
    *scratch = NULL;
    return T->decode_request(&OPT, (const uint8_t *)text, strlen(text), used, out, scratch);
}

/* What an operator types into nc. */
START_TEST(json_operator_lines)
{
    static const struct { const char *line; int rc; uint32_t m; uint64_t rid; } cases[] = {
        { "{\"m\":\"ping\",\"rid\":7}\n", PL_OK, PL_M_PING, 7 },
        { "{\"m\":\"ping\",\"rid\":\"7\"}\r\n", PL_OK, PL_M_PING, 7 },
        { "\n  \r\n{\"m\":\"ping\",\"rid\":8}\n", PL_OK, PL_M_PING, 8 },
        { "  {\"rid\":9, \"m\":\"counts\"}  \n", PL_OK, PL_M_COUNTS, 9 },
        { "{\"m\":\"ping\",\"rid\":\"18446744073709551615\"}\n", PL_OK, PL_M_PING, UINT64_MAX },
        { "{\"m\":\"frobnicate\",\"rid\":3}\n", PL_OK, PL_M__COUNT, 3 },
        { "{\"m\":16,\"rid\":3}\n", PL_OK, PL_M_PING, 3 },
        { "{\"m\":\"ping\",\"rid\":7}", PL_ERR_AGAIN, 0, 0 },
        { "\n\n", PL_ERR_AGAIN, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":9007199254740993}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":9007199254740992}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":9007199254740991}\n", PL_OK, PL_M_PING, 9007199254740991ull },
        { "{\"m\":\"ping\",\"rid\":4503599627370496.5}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":1e2}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":7,\"x\":[true,false,null]}\n", PL_OK, PL_M_PING, 7 },
        { "{\"m\":\"ping\",\"rid\":-1}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":1.5}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":\"18446744073709551616\"}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\",\"rid\":\"12x\"}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\"} {\"m\":\"ping\"}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ping\"} x\n", PL_ERR_MALFORMED, 0, 0 },
        { "[1,2]\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"rid\":1}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"send\",\"to\":5}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ack\",\"ids\":[1,\"x\"]}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"ack\",\"ids\":7}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"send\",\"body\":\"a\\u0000b\"}\n", PL_ERR_MALFORMED, 0, 0 },
        { "{\"m\":\"send\",\"body\":\"lone \\ud800\"}\n", PL_ERR_MALFORMED, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pl_request q;
        void *scratch;
        size_t used = 0;
        int rc = dec_text(cases[i].line, &q, &scratch, &used);

        ck_assert_msg(rc == cases[i].rc, "line %zu %s: got %s, want %s", i, cases[i].line,
                      pl_strerror(rc), pl_strerror(cases[i].rc));
        if (rc == PL_OK) {
            ck_assert_msg(q.method == cases[i].m && q.request_id == cases[i].rid,
                          "line %zu: method %u rid %llu", i, q.method,
                          (unsigned long long)q.request_id);
            ck_assert_msg(used == strlen(cases[i].line), "line %zu: used %zu", i, used);
        }
        T->free_scratch(scratch);
    }
    /* An escaped backslash before u0000 is the text \u0000, not a NUL. */
    {
        pl_request q;
        void *scratch;
        size_t used;
        int rc = dec_text("{\"m\":\"send\",\"body\":\"a\\\\u0000b\"}\n", &q, &scratch, &used);

        ck_assert_int_eq(rc, PL_OK);
        ck_assert_msg(pl_str_eq(q.body, S("a\\u0000b")), "escaped backslash body: %.*s",
                      (int)q.body.len, q.body.ptr);
        T->free_scratch(scratch);
    }
}
END_TEST

START_TEST(json_strings_and_numbers)
{
    pl_request q = q_of(PL_M_SEND, 1);
    pl_response r;
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    void *scratch = NULL;
    pl_response out;

    q.body = S("bad \xC3 utf8");
    ck_assert_int_eq(T->encode_request(&OPT, &q, &buf, &len), PL_ERR_BODY);
    q.body.ptr = "nul\0inside";
    q.body.len = 10;
    ck_assert_int_eq(T->encode_request(&OPT, &q, &buf, &len), PL_ERR_BODY);
    q.body = S("ok");
    q.to = S("b\xFFob");
    ck_assert_int_eq(T->encode_request(&OPT, &q, &buf, &len), PL_ERR_INVALID);

    /* A response always goes out: unencodable bytes become U+FFFD. */
    memset(&r, 0, sizeof r);
    r.method = PL_M_NONE;
    r.status = PL_ERR_INVALID;
    r.error = S("bad \xFF byte");
    ck_assert_int_eq(T->encode_response(&OPT, &r, &buf, &len), PL_OK);
    ck_assert_int_eq(T->decode_response(&OPT, buf, len, &used, &out, &scratch), PL_OK);
    ck_assert_msg(pl_str_eq(out.error, S("bad \xEF\xBF\xBD byte")), "U+FFFD substitution");
    T->free_scratch(scratch);
    free(buf);

    /* uint64 above 2^53 as a string, at or below as a number */
    memset(&r, 0, sizeof r);
    r.method = PL_M_SEND;
    r.request_id = 9007199254740991ull;
    r.id = 9007199254740992ull;
    ck_assert_int_eq(T->encode_response(&OPT, &r, &buf, &len), PL_OK);
    ck_assert_msg(memmem(buf, len, "\"rid\":9007199254740991,", strlen("\"rid\":9007199254740991,")) != NULL, "%.*s", (int)len, buf);
    ck_assert_msg(memmem(buf, len, "\"id\":\"9007199254740992\"", strlen("\"id\":\"9007199254740992\"")) != NULL, "%.*s", (int)len, buf);
    ck_assert_msg(buf[len - 1] == '\n' && memchr(buf, '\n', len - 1) == NULL,
                  "one line per frame");
    free(buf);
}
END_TEST

static const char *const json_examples[] = {
    "{\"m\":\"send\",\"rid\":7,\"cid\":\"10105895190188169990\",\"rno\":12,\"token\":\"tok1\","
    "\"to\":\"bob\",\"body\":\"hi \xE2\x9C\x93\"}\n",
    "{\"m\":\"send\",\"rid\":7,\"status\":0,\"id\":42,\"time\":1764061200123}\n",
    "{\"m\":\"push\",\"msg\":{\"id\":43,\"from\":\"bob\",\"to\":\"alice\",\"body\":\"yo\","
    "\"time\":1764061201000,\"state\":0}}\n",
};

/* The worked examples in docs/protocol.md, byte for byte. */
static void doc_examples(pl_request *q, pl_response *r, pl_response *push, pl_message *m)
{
    memset(q, 0, sizeof *q);
    q->method = PL_M_SEND;
    q->request_id = 7;
    q->client_id = 0x8c3f5a21d47e9b06ull;
    q->request_no = 12;
    q->token = S("tok1");
    q->to = S("bob");
    q->body = S("hi \xE2\x9C\x93");
    memset(r, 0, sizeof *r);
    r->method = PL_M_SEND;
    r->request_id = 7;
    r->id = 42;
    r->time_ms = 1764061200123ull;
    memset(m, 0, sizeof *m);
    m->id = 43;
    m->from = S("bob");
    m->to = S("alice");
    m->body = S("yo");
    m->time_ms = 1764061201000ull;
    memset(push, 0, sizeof *push);
    push->method = PL_M_PUSH;
    push->msgs = m;
    push->n_msgs = 1;
}

START_TEST(json_doc_examples)
{
    pl_request q;
    pl_response r, p;
    pl_message m;
    uint8_t *buf;
    size_t len;

    doc_examples(&q, &r, &p, &m);
    buf = enc_req(&OPT, &q, &len);
    ck_assert_msg(len == strlen(json_examples[0]) && memcmp(buf, json_examples[0], len) == 0,
                  "send request is not the documented text: %.*s", (int)len, buf);
    free(buf);
    buf = enc_resp(&OPT, &r, &len);
    ck_assert_msg(len == strlen(json_examples[1]) && memcmp(buf, json_examples[1], len) == 0,
                  "send response is not the documented text: %.*s", (int)len, buf);
    free(buf);
    buf = enc_resp(&OPT, &p, &len);
    ck_assert_msg(len == strlen(json_examples[2]) && memcmp(buf, json_examples[2], len) == 0,
                  "push is not the documented text: %.*s", (int)len, buf);
    free(buf);
}
END_TEST

START_TEST(binary_doc_examples)
{
    static const uint8_t want_req[] = {
        0x00, 0x00, 0x00, 0x2f, 0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
        0x8c, 0x3f, 0x5a, 0x21, 0xd4, 0x7e, 0x9b, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x0c, 0x00, 0x04, 't', 'o', 'k', '1', 0x00, 0x03, 'b', 'o', 'b',
        0x00, 0x00, 0x00, 0x06, 'h', 'i', ' ', 0xe2, 0x9c, 0x93,
    };
    static const uint8_t want_resp[] = {
        0x00, 0x00, 0x00, 0x1c, 0x02, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, /* status */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a,
        0x00, 0x00, 0x01, 0x9a, 0xba, 0x3d, 0xbe, 0xfb,
    };
    pl_request q;
    pl_response r, p;
    pl_message m;
    uint8_t *buf;
    size_t len;

    doc_examples(&q, &r, &p, &m);
    buf = enc_req(&OPT, &q, &len);
    ck_assert_msg(len == sizeof want_req && memcmp(buf, want_req, len) == 0,
                  "send request is not the documented hex (%zu bytes)", len);
    free(buf);
    buf = enc_resp(&OPT, &r, &len);
    ck_assert_msg(len == sizeof want_resp && memcmp(buf, want_resp, len) == 0,
                  "send response is not the documented hex (%zu bytes)", len);
    free(buf);
}
END_TEST

/* Decoder rules from docs/protocol.md: one reading per frame. */
START_TEST(binary_strictness)
{
    pl_request q = q_of(PL_M_ACK, 1), out;
    pl_response r = mk_response(PL_M_SEND, RV_TYPICAL), rout;
    size_t len, used;
    uint8_t *buf, *x;
    void *scratch = NULL;

    /* a response frame is not a request (kind byte) */
    buf = enc_resp(&OPT, &r, &len);
    ck_assert_int_eq(T->decode_request(&OPT, buf, len, &used, &out, &scratch), PL_ERR_MALFORMED);
    T->free_scratch(scratch);
    scratch = NULL;
    free(buf);
    /* a trailing byte inside the frame */
    buf = enc_req(&OPT, &q, &len);
    x = malloc(len + 1);
    memcpy(x, buf, len);
    x[len] = 0;
    x[3]++;
    ck_assert_int_eq(T->decode_request(&OPT, x, len + 1, &used, &out, &scratch),
                     PL_ERR_MALFORMED);
    T->free_scratch(scratch);
    scratch = NULL;
    /* an id count larger than the frame could hold: refused before allocating */
    memcpy(x, buf, len);
    x[len - 3 * 8 - 4] = 0x7f;
    ck_assert_int_eq(T->decode_request(&OPT, x, len, &used, &out, &scratch), PL_ERR_MALFORMED);
    T->free_scratch(scratch);
    scratch = NULL;
    /* a length prefix under the 2-byte minimum */
    memcpy(x, "\0\0\0\1\1", 5);
    ck_assert_int_eq(T->decode_request(&OPT, x, 5, &used, &out, &scratch), PL_ERR_MALFORMED);
    T->free_scratch(scratch);
    scratch = NULL;
    /* a boolean that is neither 0 nor 1 */
    {
        pl_response lu = mk_response(PL_M_LIST_USERS, RV_TYPICAL);
        size_t l2;
        uint8_t *f = enc_resp(&OPT, &lu, &l2);

        f[4 + 1 + 1 + 8 + 2] = 2; /* the "more" byte after kind, method, rid, status */
        ck_assert_int_eq(T->decode_response(&OPT, f, l2, &used, &rout, &scratch),
                         PL_ERR_MALFORMED);
        T->free_scratch(scratch);
        free(f);
    }
    free(x);
    free(buf);
}
END_TEST

START_TEST(tcp_options)
{
    static const char *const bad[] = {
        "{\"name\":\"tcp\",\"codec\":\"xml\"}", "{\"name\":\"tcp\",\"codek\":\"json\"}",
        "{\"name\":\"tcp\",\"codec\":5}", "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pl_transport_options o = OPT;
        pl_transport_host h;
        pl_transport_server *srv = NULL;
        pl_transport_client *cli = NULL;
        struct event_base *base = event_base_new();
        char err[256] = "";
        int rc;

        memset(&h, 0, sizeof h);
        h.abi_version = PL_TRANSPORT_ABI_VERSION;
        h.base = base;
        h.conn_open = fake_conn_open;
        h.request = fake_request;
        h.conn_closed = fake_conn_closed;
        o.options_json = bad[i];
        o.port = free_port();
        rc = T->server_start(&h, &o, &srv, err, sizeof err);
        ck_assert_msg(rc == PL_ERR_CONFIG && srv == NULL, "server_start with %s: %s", bad[i],
                      pl_strerror(rc));
        ck_assert_msg(strstr(err, "transport tcp:") != NULL, "message: %s", err);
        fprintf(stderr, "  %s -> %s\n", bad[i], err);
        err[0] = 0;
        rc = T->client_connect(base, &o, &tc_cb, NULL, &cli, err, sizeof err);
        ck_assert_msg(rc == PL_ERR_CONFIG && cli == NULL, "client_connect with %s", bad[i]);
        ck_assert_msg(strstr(err, "transport tcp:") != NULL, "message: %s", err);
        event_base_free(base);
    }
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *transport_suite(void)
{
    Suite *s = suite_create("transport");
    TCase *codec = tcase_create("codec");
    TCase *live = tcase_create("live");

    tcase_set_timeout(codec, 120);
    tcase_add_test(codec, request_roundtrip);
    tcase_add_test(codec, response_roundtrip);
    tcase_add_test(codec, error_frame_roundtrip);
    tcase_add_test(codec, frames_back_to_back);
    tcase_add_test(codec, truncated_prefixes);
    tcase_add_test(codec, random_garbage);
    tcase_add_test(codec, mutated_frames);
    tcase_add_test(codec, frame_too_large);
    tcase_add_test(codec, frame_limit_consistent);
    suite_add_tcase(s, codec);

    tcase_set_timeout(live, 120);
    tcase_add_test(live, live_exchange);
    tcase_add_test(live, live_connection_refused);
    tcase_add_test(live, live_client_free_in_callback);
    tcase_add_test(live, live_refused_by_host);
    tcase_add_test(live, live_garbage);
    tcase_add_test(live, live_huge_length_prefix);
    tcase_add_test(live, live_half_frame_then_close);
    tcase_add_test(live, live_half_close_gets_answers);
    tcase_add_test(live, live_200_clients);
    tcase_add_test(live, live_server_free_closes_all);
    tcase_add_test(live, live_slow_reader_backpressure);
    tcase_add_test(live, live_push_bound);
    suite_add_tcase(s, live);

    /* Format specifics: only for the tcp plugin's codecs. */
    if (strcmp(T->name, "tcp") == 0) {
        TCase *fmt = tcase_create("format");
        int json = g_options && strstr(g_options, "\"json\"") != NULL;

        tcase_add_test(fmt, tcp_options);
        if (json) {
            tcase_add_test(fmt, json_operator_lines);
            tcase_add_test(fmt, json_strings_and_numbers);
            tcase_add_test(fmt, json_doc_examples);
        } else {
            tcase_add_test(fmt, binary_doc_examples);
            tcase_add_test(fmt, binary_strictness);
        }
        suite_add_tcase(s, fmt);
    }
    return s;
}

int main(int argc, char **argv)
{
    char err[512] = "";
    pl_plugin *p;
    SRunner *sr;
    int failed;

    if (argc < 2) {
        fprintf(stderr, "usage: %s PLUGIN.so [OPTIONS_JSON]\n", argv[0]);
        return 2;
    }
    p = pl_plugin_load("transport", argv[1], NULL, err, sizeof err);
    if (!p) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    T = pl_plugin_transport(p);
    g_options = argc > 2 ? argv[2] : NULL;
    OPT.host = "127.0.0.1";
    OPT.options_json = g_options;
    samples_init();
    lists_init();
    fprintf(stderr, "transport %s (%s) options %s\n", T->name, pl_plugin_path(p),
            g_options ? g_options : "(none)");

    sr = srunner_create(transport_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    pl_plugin_unload(p);
    return failed ? 1 : 0;
}
