/*
 * tests/unit/test_chat.c — the chat rules (core/chat.c) against a real store
 * plugin, loaded through the core's loader exactly as parleyd loads it.
 *
 * Usage: test-chat STORE_PLUGIN.so
 * meson runs it once per store plugin, so every rule is checked on every
 * store. Each test gets a fresh store in its own temp directory.
 *
 * Password hashes are fake strings: the chat core never hashes, the server
 * does before sequencing.
 */
#include <check.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "chat.h"
#include "dump.h"
#include "loader.h"
#include "snapshot.h"

#define ERRLEN 1024
#define FAKE_HASH "$argon2id$v=19$m=65536,t=2,p=1$ZmFrZXNhbHQ$ZmFrZWhhc2g"

static const char *plugin_path;

/* One store + chat state machine in a temp dir. */
typedef struct fx {
    char dir[256];
    pl_plugin *plugin;
    const pl_store_plugin *sp;
    pl_store *st;
    pl_chat *chat;
    uint64_t next_op;
} fx;

static fx F;                     /* the test's main fixture */
static pl_apply_result R;        /* the last single-op result */

static void host_log(void *ud, int level, const char *fmt, ...)
{
    (void)ud;
    if (level > PL_LOG_WARN)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void fx_open(fx *f)
{
    char err[ERRLEN];
    const char *t = getenv("TMPDIR");
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s/pl-chat-XXXXXX", t && *t ? t : "/tmp");
    ck_assert_msg(mkdtemp(f->dir) != NULL, "mkdtemp failed");
    f->plugin = pl_plugin_load("store", plugin_path, NULL, err, sizeof err);
    ck_assert_msg(f->plugin != NULL, "load %s: %s", plugin_path, err);
    f->sp = pl_plugin_store(f->plugin);
    ck_assert_ptr_nonnull(f->sp);
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, host_log };
    pl_store_options opt = { f->dir, 0, NULL };
    int rc = pl_plugin_store_open(f->plugin, &host, &opt, &f->st, err, sizeof err);
    ck_assert_msg(rc == PL_OK, "open store: %s", err);
    f->chat = pl_chat_new(f->sp, f->st);
    ck_assert_ptr_nonnull(f->chat);
    f->next_op = f->sp->applied_op(f->st) + 1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fx_close(fx *f)
{
    pl_chat_free(f->chat);
    if (f->st)
        f->sp->close(f->st);
    pl_plugin_unload(f->plugin);
    if (f->dir[0])
        nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    memset(f, 0, sizeof *f);
}

static void setup(void)
{
    fx_open(&F);
}

static void teardown(void)
{
    fx_close(&F);
}

/* ---- op helpers: each applies one op as the next op-number ---- */

static uint32_t apply_on(fx *f, pl_op op)
{
    int rc = pl_chat_apply_batch(f->chat, f->next_op, &op, 1, &R);
    ck_assert_msg(rc == PL_OK, "apply op %" PRIu64 " (kind %u): %s", f->next_op, op.kind,
                  pl_strerror(rc));
    f->next_op++;
    return R.reply.status;
}

static uint32_t apply(pl_op op)
{
    return apply_on(&F, op);
}

static const char *err_text(void)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)R.reply.error.len,
             R.reply.error.ptr ? R.reply.error.ptr : "");
    return buf;
}

static uint32_t do_register(const char *name)
{
    pl_op op = { .kind = PL_OP_REGISTER, .time_ms = 1000, .name = pl_str_c(name),
                 .pwhash = pl_str_c(FAKE_HASH) };
    return apply(op);
}

static uint64_t uid_of(const char *name)
{
    uint64_t uid = 0;
    pl_str h;
    ck_assert_msg(pl_chat_account(F.chat, pl_str_c(name), &uid, &h) == PL_OK,
                  "account %s missing", name);
    return uid;
}

static uint64_t reg(const char *name)
{
    uint32_t st = do_register(name);
    ck_assert_msg(st == PL_OK, "register %s: %s", name, err_text());
    return uid_of(name);
}

static uint8_t tok_hash[32];

static pl_str hash_of(const char *token)
{
    pl_chat_token_hash(pl_str_c(token), tok_hash);
    return (pl_str){ (const char *)tok_hash, 32 };
}

static uint32_t login(uint64_t uid, const char *name, const char *token)
{
    pl_op op = { .kind = PL_OP_LOGIN, .time_ms = 2000, .uid = uid, .name = pl_str_c(name),
                 .token_hash = hash_of(token) };
    return apply(op);
}

static uint32_t send_body(uint64_t from, const char *to, pl_str body)
{
    pl_op op = { .kind = PL_OP_SEND, .time_ms = 3000 + F.next_op, .uid = from,
                 .name = pl_str_c(to), .body = body };
    return apply(op);
}

/* Send and return the new message id. */
static uint64_t sendm(uint64_t from, const char *to, const char *body)
{
    uint32_t st = send_body(from, to, pl_str_c(body));
    ck_assert_msg(st == PL_OK, "send to %s: %s", to, err_text());
    return R.reply.id;
}

static uint32_t read_n(uint64_t uid, uint64_t n)
{
    pl_op op = { .kind = PL_OP_READ, .time_ms = 4000, .uid = uid, .n = n };
    return apply(op);
}

static uint32_t ids_op(uint32_t kind, uint64_t uid, const uint64_t *ids, uint32_t n)
{
    pl_op op = { .kind = kind, .time_ms = 5000, .uid = uid, .ids = ids, .n_ids = n };
    return apply(op);
}

static uint32_t delete_account(uint64_t uid)
{
    pl_op op = { .kind = PL_OP_DELETE_ACCOUNT, .time_ms = 6000, .uid = uid };
    return apply(op);
}

static pl_response Q;

static uint32_t query(uint64_t uid, pl_request req)
{
    int rc = pl_chat_query(F.chat, uid, &req, &Q);
    ck_assert_msg(rc == PL_OK, "query %s: %s", pl_method_name(req.method), pl_strerror(rc));
    return Q.status;
}

static void counts(uint64_t uid, uint64_t unread, uint64_t read)
{
    pl_request req = { .method = PL_M_COUNTS };
    ck_assert_uint_eq(query(uid, req), PL_OK);
    ck_assert_msg(Q.unread == unread && Q.read == read,
                  "uid %" PRIu64 ": counts %" PRIu64 "/%" PRIu64 ", want %" PRIu64 "/%" PRIu64,
                  uid, Q.unread, Q.read, unread, read);
}

static void digest(fx *f, char out[65])
{
    ck_assert_int_eq(pl_chat_digest(f->chat, out), PL_OK);
    ck_assert_uint_eq(strlen(out), 64);
}

static int msg_exists(uint64_t id)
{
    pl_message_rec m;
    int rc = F.sp->message_get(F.st, id, &m);
    ck_assert_msg(rc == PL_OK || rc == PL_ERR_NOT_FOUND, "message_get: %s", pl_strerror(rc));
    return rc == PL_OK;
}

static char *filled(size_t n, char ch)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, ch, n);
    s[n] = 0;
    return s;
}

/* ================================================================ tests */

START_TEST(username_limits)
{
    char *n32 = filled(32, 'a'), *n33 = filled(33, 'b');
    ck_assert_uint_eq(do_register(n32), PL_OK);
    ck_assert_uint_eq(do_register(n33), PL_ERR_USERNAME);
    ck_assert_msg(strstr(err_text(), "33") && strstr(err_text(), "32"),
                  "error names length and limit: %s", err_text());
    ck_assert_uint_eq(do_register(""), PL_ERR_USERNAME);
    ck_assert_uint_eq(do_register("a b"), PL_ERR_USERNAME);
    ck_assert_uint_eq(do_register("caf\xc3\xa9"), PL_ERR_USERNAME);
    ck_assert_uint_eq(do_register("a*"), PL_ERR_USERNAME);
    ck_assert_uint_eq(do_register("A.b_c-9"), PL_OK);
    ck_assert_uint_eq(do_register("x"), PL_OK);
    ck_assert_int_eq(pl_chat_check_username(pl_str_c(n32)), PL_OK);
    ck_assert_int_eq(pl_chat_check_username(pl_str_c(n33)), PL_ERR_USERNAME);
    free(n32);
    free(n33);
}
END_TEST

START_TEST(password_limits)
{
    char *p7 = filled(7, 'p'), *p8 = filled(8, 'p'), *p1024 = filled(1024, 'p'),
         *p1025 = filled(1025, 'p');
    ck_assert_int_eq(pl_chat_check_password(pl_str_c(p7)), PL_ERR_PASSWORD);
    ck_assert_int_eq(pl_chat_check_password(pl_str_c(p8)), PL_OK);
    ck_assert_int_eq(pl_chat_check_password(pl_str_c(p1024)), PL_OK);
    ck_assert_int_eq(pl_chat_check_password(pl_str_c(p1025)), PL_ERR_PASSWORD);
    ck_assert_int_eq(pl_chat_check_password(pl_str_c("")), PL_ERR_PASSWORD);
    free(p7);
    free(p8);
    free(p1024);
    free(p1025);
}
END_TEST

START_TEST(duplicate_register)
{
    char d1[65], d2[65];
    uint64_t a = reg("alice");
    digest(&F, d1);
    ck_assert_uint_eq(do_register("alice"), PL_ERR_USER_EXISTS);
    ck_assert_msg(strstr(err_text(), "alice"), "error names the user: %s", err_text());
    digest(&F, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "a failed register changed the state");
    ck_assert_uint_eq(uid_of("alice"), a);
    ck_assert_uint_ne(reg("Alice"), a); /* names are case-sensitive */
    /* uids are consecutive from 1 */
    ck_assert_uint_eq(a, 1);
    ck_assert_uint_eq(uid_of("Alice"), 2);
}
END_TEST

START_TEST(body_limits)
{
    uint64_t a = reg("alice");
    reg("bob");
    char *b64k = filled(PL_BODY_MAX, 'x'), *b64k1 = filled(PL_BODY_MAX + 1, 'x');
    ck_assert_uint_eq(send_body(a, "bob", pl_str_c(b64k)), PL_OK);
    ck_assert_uint_eq(send_body(a, "bob", pl_str_c(b64k1)), PL_ERR_BODY);
    ck_assert_msg(strstr(err_text(), "65537") && strstr(err_text(), "65536"),
                  "error names size and limit: %s", err_text());
    free(b64k);
    free(b64k1);
    ck_assert_uint_eq(send_body(a, "bob", pl_str_c("")), PL_ERR_BODY);

    static const char *const bad[] = {
        "\xc0\xaf",          /* overlong '/' */
        "\xc1\xbf",          /* overlong */
        "\xe0\x80\xaf",      /* overlong 3-byte */
        "\xf0\x80\x80\xaf",  /* overlong 4-byte */
        "\xed\xa0\x80",      /* surrogate U+D800 */
        "\xed\xbf\xbf",      /* surrogate U+DFFF */
        "\xf4\x90\x80\x80",  /* U+110000 */
        "\xf5\x80\x80\x80",  /* lead byte beyond range */
        "\xff",
        "\x80",              /* stray continuation */
        "ok\xe2\x82",        /* truncated sequence at the end */
        "\xe2\x28\xa1",      /* bad continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(send_body(a, "bob", pl_str_c(bad[i])) == PL_ERR_BODY,
                      "bad UTF-8 #%zu accepted", i);
        ck_assert_int_eq(pl_chat_check_body(pl_str_c(bad[i])), PL_ERR_BODY);
    }
    ck_assert_uint_eq(send_body(a, "bob", (pl_str){ "a\0b", 3 }), PL_ERR_BODY);
    ck_assert_msg(strstr(err_text(), "NUL"), "NUL named: %s", err_text());

    static const char *const good[] = {
        "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "\xf4\x8f\xbf\xbf",
        "\xed\x9f\xbf", "\xee\x80\x80", "\xc2\x80", "\xef\xbf\xbf",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        ck_assert_msg(send_body(a, "bob", pl_str_c(good[i])) == PL_OK,
                      "good UTF-8 #%zu rejected: %s", i, err_text());
    counts(uid_of("bob"), 1 + sizeof good / sizeof good[0], 0);
}
END_TEST

START_TEST(login_logout)
{
    uint64_t a = reg("alice"), b = reg("bob");
    sendm(b, "alice", "one");
    sendm(b, "alice", "two");
    ck_assert_uint_eq(login(a, "alice", "tok-a"), PL_OK);
    ck_assert_uint_eq(R.reply.unread, 2);
    ck_assert_uint_eq(R.reply.method, PL_M_LOGIN);

    uint64_t uid = 0;
    pl_str name;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-a"), &uid, &name, NULL), PL_OK);
    ck_assert_uint_eq(uid, a);
    ck_assert(pl_str_eq(name, pl_str_c("alice")));
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-x"), &uid, &name, NULL),
                     PL_ERR_NOT_LOGGED_IN);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c(""), &uid, &name, NULL), PL_ERR_NOT_LOGGED_IN);

    /* A second session for the same account is independent. */
    ck_assert_uint_eq(login(a, "alice", "tok-a2"), PL_OK);

    /* Wrong name for the uid: generic auth error. */
    ck_assert_uint_eq(login(a, "bob", "tok-z"), PL_ERR_AUTH);
    ck_assert_uint_eq(login(999, "nobody", "tok-z"), PL_ERR_AUTH);

    pl_op lo = { .kind = PL_OP_LOGOUT, .uid = a, .token_hash = hash_of("tok-a") };
    ck_assert_uint_eq(apply(lo), PL_OK);
    ck_assert_uint_eq(R.revoked_token_hash.len, 32);
    ck_assert(memcmp(R.revoked_token_hash.ptr, hash_of("tok-a").ptr, 32) == 0);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-a"), &uid, &name, NULL),
                     PL_ERR_NOT_LOGGED_IN);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-a2"), &uid, &name, NULL), PL_OK);
    /* Logging out twice is fine: the session is gone either way. */
    lo.token_hash = hash_of("tok-a");
    ck_assert_uint_eq(apply(lo), PL_OK);
}
END_TEST

START_TEST(login_deleted_account)
{
    uint64_t a = reg("alice");
    ck_assert_uint_eq(login(a, "alice", "tok-1"), PL_OK);
    /* Password verified, then the account is deleted before the login op
     * is sequenced. */
    ck_assert_uint_eq(delete_account(a), PL_OK);
    ck_assert_uint_eq(R.revoked_uid, a);
    ck_assert_uint_eq(login(a, "alice", "tok-2"), PL_ERR_AUTH);
    uint64_t uid;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-1"), &uid, NULL, NULL), PL_ERR_NOT_LOGGED_IN);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-2"), &uid, NULL, NULL), PL_ERR_NOT_LOGGED_IN);
    /* Same name re-registered: the old uid still does not log in. */
    uint64_t a2 = reg("alice");
    ck_assert_uint_ne(a2, a);
    ck_assert_uint_eq(login(a, "alice", "tok-3"), PL_ERR_AUTH);
    ck_assert_uint_eq(login(a2, "alice", "tok-3"), PL_OK);
}
END_TEST

START_TEST(send_rules)
{
    uint64_t a = reg("alice"), b = reg("bob");
    ck_assert_uint_eq(send_body(a, "carol", pl_str_c("hi")), PL_ERR_NO_SUCH_USER);
    ck_assert_msg(strstr(err_text(), "carol"), "error names the user: %s", err_text());
    ck_assert_uint_eq(send_body(a, "no such!", pl_str_c("hi")), PL_ERR_NO_SUCH_USER);
    ck_assert_uint_eq(send_body(77, "bob", pl_str_c("hi")), PL_ERR_NOT_LOGGED_IN);
    counts(b, 0, 0);

    ck_assert_uint_eq(send_body(a, "bob", pl_str_c("hello")), PL_OK);
    uint64_t id1 = R.reply.id;
    ck_assert_uint_eq(R.reply.method, PL_M_SEND);
    ck_assert_uint_ne(R.reply.time_ms, 0);
    ck_assert_int_eq(R.has_push, 1);
    ck_assert_uint_eq(R.push_uid, b);
    ck_assert_uint_eq(R.push.id, id1);
    ck_assert(pl_str_eq(R.push.from, pl_str_c("alice")));
    ck_assert(pl_str_eq(R.push.to, pl_str_c("bob")));
    ck_assert(pl_str_eq(R.push.body, pl_str_c("hello")));
    ck_assert_uint_eq(R.push.time_ms, R.reply.time_ms);
    ck_assert_uint_eq(R.push.state, 0);
    uint64_t id2 = sendm(b, "alice", "back");
    ck_assert_msg(id2 > id1, "ids increase");
    uint64_t id3 = sendm(a, "alice", "note to self");
    ck_assert_msg(id3 > id2, "ids increase");
    counts(b, 1, 0);
    counts(a, 2, 0);
    /* A rejected send does not consume an id. */
    ck_assert_uint_eq(send_body(a, "carol", pl_str_c("x")), PL_ERR_NO_SUCH_USER);
    ck_assert_uint_eq(sendm(a, "bob", "next"), id3 + 1);
}
END_TEST

START_TEST(read_semantics)
{
    uint64_t a = reg("alice"), b = reg("bob");
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        ids[i] = sendm(a, "bob", body);
    }
    ck_assert_uint_eq(read_n(b, 2), PL_OK);
    ck_assert_uint_eq(R.reply.method, PL_M_READ);
    ck_assert_uint_eq(R.reply.n_msgs, 2);
    ck_assert_uint_eq(R.reply.msgs[0].id, ids[0]);
    ck_assert_uint_eq(R.reply.msgs[1].id, ids[1]);
    ck_assert(pl_str_eq(R.reply.msgs[0].body, pl_str_c("m0")));
    ck_assert(pl_str_eq(R.reply.msgs[0].from, pl_str_c("alice")));
    ck_assert(pl_str_eq(R.reply.msgs[0].to, pl_str_c("bob")));
    ck_assert_uint_eq(R.reply.more, 1);
    counts(b, 3, 2);

    ck_assert_uint_eq(read_n(b, 100), PL_OK); /* n larger than the queue */
    ck_assert_uint_eq(R.reply.n_msgs, 3);
    ck_assert_uint_eq(R.reply.msgs[0].id, ids[2]);
    ck_assert_uint_eq(R.reply.msgs[2].id, ids[4]);
    ck_assert_uint_eq(R.reply.more, 0);
    counts(b, 0, 5);

    ck_assert_uint_eq(read_n(b, 0), PL_OK); /* empty queue */
    ck_assert_uint_eq(R.reply.n_msgs, 0);
    ck_assert_uint_eq(R.reply.more, 0);

    sendm(a, "bob", "x");
    sendm(a, "bob", "y");
    ck_assert_uint_eq(read_n(b, 0), PL_OK); /* 0 = all */
    ck_assert_uint_eq(R.reply.n_msgs, 2);
    ck_assert_uint_eq(R.reply.more, 0);
    counts(b, 0, 7);
    counts(a, 0, 0);
    ck_assert_uint_eq(read_n(999, 0), PL_ERR_NOT_LOGGED_IN);
}
END_TEST

/* Send many messages in one batch (one transaction) to keep the test quick. */
static void send_many(uint64_t from, const char *to, size_t n, pl_str body)
{
    pl_op *ops = calloc(n, sizeof *ops);
    pl_apply_result *res = calloc(n, sizeof *res);
    ck_assert(ops && res);
    for (size_t i = 0; i < n; i++)
        ops[i] = (pl_op){ .kind = PL_OP_SEND, .time_ms = 7000 + i, .uid = from,
                          .name = pl_str_c(to), .body = body };
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, ops, n, res), PL_OK);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(res[i].reply.status, PL_OK);
    F.next_op += n;
    free(ops);
    free(res);
}

START_TEST(read_caps)
{
    uint64_t a = reg("alice"), b = reg("bob");
    send_many(a, "bob", PL_PAGE_MAX + 5, pl_str_c("m"));
    ck_assert_uint_eq(read_n(b, PL_PAGE_MAX * 10), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, PL_PAGE_MAX);
    ck_assert_uint_eq(R.reply.more, 1);
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 5);
    ck_assert_uint_eq(R.reply.more, 0);

    /* Byte budget: 12 full bodies fit PL_REPLY_BUDGET exactly, the 13th not. */
    char *big = filled(PL_BODY_MAX, 'z');
    send_many(a, "bob", 13, pl_str_c(big));
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, PL_REPLY_BUDGET / PL_BODY_MAX);
    ck_assert_uint_eq(R.reply.more, 1);
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 1);
    ck_assert_uint_eq(R.reply.more, 0);
    free(big);
    counts(b, 0, PL_PAGE_MAX + 5 + 13);
}
END_TEST

START_TEST(ack_rules)
{
    uint64_t a = reg("alice"), b = reg("bob"), c = reg("carol");
    uint64_t m1 = sendm(a, "bob", "1"), m2 = sendm(a, "bob", "2");
    uint64_t mc = sendm(a, "carol", "for carol");
    char d1[65], d2[65];

    /* Another user's message, a sent (not received) one, a missing id:
     * error naming the id, nothing changes, even for the good ids before it. */
    digest(&F, d1);
    uint64_t bad1[] = { m1, mc };
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, bad1, 2), PL_ERR_NO_SUCH_MESSAGE);
    char want[32];
    snprintf(want, sizeof want, "%" PRIu64, mc);
    ck_assert_msg(strstr(err_text(), want), "error names id %s: %s", want, err_text());
    uint64_t bad2[] = { m1 };
    ck_assert_uint_eq(ids_op(PL_OP_ACK, a, bad2, 1), PL_ERR_NO_SUCH_MESSAGE);
    uint64_t bad3[] = { 424242 };
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, bad3, 1), PL_ERR_NO_SUCH_MESSAGE);
    digest(&F, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "a failed ack changed the state");
    counts(b, 2, 0);

    uint64_t good[] = { m2, m2 };
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, good, 2), PL_OK);
    counts(b, 1, 1);
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, good, 1), PL_OK); /* already read: fine */
    counts(b, 1, 1);
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, NULL, 0), PL_OK);
    counts(c, 1, 0);

    uint64_t *many = calloc(PL_IDS_MAX + 1, sizeof *many);
    for (uint32_t i = 0; i <= PL_IDS_MAX; i++)
        many[i] = m1;
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, many, PL_IDS_MAX + 1), PL_ERR_TOO_MANY_IDS);
    ck_assert_msg(strstr(err_text(), "1001") && strstr(err_text(), "1000"),
                  "error names count and limit: %s", err_text());
    counts(b, 1, 1);
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, many, PL_IDS_MAX), PL_OK);
    counts(b, 0, 2);
    free(many);

    /* A message the recipient deleted is no longer ackable. */
    uint64_t m3 = sendm(a, "bob", "3");
    uint64_t one[] = { m3 };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, one, 1), PL_OK);
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, one, 1), PL_ERR_NO_SUCH_MESSAGE);
}
END_TEST

static void convo(uint64_t uid, const char *peer, uint64_t offset, uint64_t limit)
{
    pl_request req = { .method = PL_M_CONVERSATION, .peer = pl_str_c(peer),
                       .offset = offset, .limit = limit };
    ck_assert_uint_eq(query(uid, req), PL_OK);
}

START_TEST(delete_rules)
{
    uint64_t a = reg("alice"), b = reg("bob"), c = reg("carol");
    uint64_t m1 = sendm(a, "bob", "1"), m2 = sendm(a, "bob", "2");
    uint64_t mc = sendm(a, "carol", "c");
    char d1[65], d2[65];

    digest(&F, d1);
    uint64_t bad[] = { m1, mc };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, bad, 2), PL_ERR_NO_SUCH_MESSAGE);
    uint64_t bad2[] = { m1, 99999 };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, bad2, 2), PL_ERR_NO_SUCH_MESSAGE);
    digest(&F, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "a failed delete changed the state");
    counts(b, 2, 0);

    /* The recipient deletes: gone from its view, the sender keeps it. */
    uint64_t one[] = { m1, m1 }; /* duplicates are harmless */
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, one, 2), PL_OK);
    counts(b, 1, 0);
    convo(b, "alice", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 1);
    ck_assert_uint_eq(Q.msgs[0].id, m2);
    convo(a, "bob", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 2);
    ck_assert(msg_exists(m1));
    /* Deleting again is an error now: it is not visible. */
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, one, 1), PL_ERR_NO_SUCH_MESSAGE);

    /* The sender deletes too: removed from the store. */
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, a, one, 1), PL_OK);
    ck_assert(!msg_exists(m1));
    convo(a, "bob", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 1);

    /* The sender deletes first: the recipient still has it, unread. */
    uint64_t two[] = { m2 };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, a, two, 1), PL_OK);
    convo(a, "bob", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 0);
    counts(b, 1, 0);
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 1);
    ck_assert_uint_eq(R.reply.msgs[0].id, m2);

    /* A message to oneself is removed by one delete. */
    uint64_t ms = sendm(c, "carol", "self");
    uint64_t self[] = { ms };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, c, self, 1), PL_OK);
    ck_assert(!msg_exists(ms));
    counts(c, 1, 0);

    uint64_t *many = calloc(PL_IDS_MAX + 1, sizeof *many);
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, c, many, PL_IDS_MAX + 1), PL_ERR_TOO_MANY_IDS);
    free(many);
}
END_TEST

START_TEST(delete_account_rules)
{
    uint64_t a = reg("alice"), b = reg("bob"), c = reg("carol");
    uint64_t to_b = sendm(a, "bob", "from old alice");
    uint64_t to_c = sendm(a, "carol", "to carol");
    uint64_t from_b = sendm(b, "alice", "to old alice");
    uint64_t hidden = sendm(c, "alice", "alice deleted this one");
    uint64_t gone_sent = sendm(a, "carol", "carol deleted this one");
    uint64_t h1[] = { hidden };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, a, h1, 1), PL_OK);
    uint64_t h2[] = { gone_sent };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, c, h2, 1), PL_OK);
    ck_assert_uint_eq(login(a, "alice", "tok-a"), PL_OK);

    ck_assert_uint_eq(delete_account(a), PL_OK);
    ck_assert_uint_eq(R.revoked_uid, a);
    ck_assert_uint_eq(R.reply.method, PL_M_DELETE_ACCOUNT);
    pl_str nm, ph;
    ck_assert_int_eq(pl_chat_account_by_uid(F.chat, a, &nm, &ph), PL_ERR_NOT_FOUND);
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, &ph), PL_ERR_NOT_FOUND);
    uint64_t uid;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-a"), &uid, NULL, NULL),
                     PL_ERR_NOT_LOGGED_IN);

    /* Its mailbox is gone, hidden messages included. */
    ck_assert(!msg_exists(from_b));
    ck_assert(!msg_exists(hidden));
    /* What it sent stays for the recipients... */
    ck_assert(msg_exists(to_b));
    ck_assert(!msg_exists(gone_sent));
    counts(b, 1, 0);
    counts(c, 1, 0);
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 1);
    ck_assert_uint_eq(R.reply.msgs[0].id, to_b);
    ck_assert(pl_str_eq(R.reply.msgs[0].from, pl_str_c("alice")));
    /* ...until they delete it, and then it is removed. */
    uint64_t d[] = { to_b };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, b, d, 1), PL_OK);
    ck_assert(!msg_exists(to_b));
    ck_assert(msg_exists(to_c));

    /* The account can no longer act. */
    ck_assert_uint_eq(send_body(a, "bob", pl_str_c("x")), PL_ERR_NOT_LOGGED_IN);
    ck_assert_uint_eq(delete_account(a), PL_ERR_NOT_LOGGED_IN);
    ck_assert_uint_eq(send_body(b, "alice", pl_str_c("x")), PL_ERR_NO_SUCH_USER);
}
END_TEST

START_TEST(reregister_sees_nothing_old)
{
    uint64_t a = reg("alice"), b = reg("bob");
    sendm(b, "alice", "for the old alice");
    sendm(b, "alice", "also for the old alice");
    uint64_t old_sent = sendm(a, "bob", "old alice speaking");
    ck_assert_uint_eq(read_n(a, 1), PL_OK);
    ck_assert_uint_eq(delete_account(a), PL_OK);

    uint64_t a2 = reg("alice");
    ck_assert_uint_ne(a2, a);
    ck_assert_msg(a2 > b, "uids are never reused");
    counts(a2, 0, 0);
    ck_assert_uint_eq(read_n(a2, 0), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 0);
    pl_request h = { .method = PL_M_HISTORY };
    ck_assert_uint_eq(query(a2, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 0);
    convo(a2, "bob", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 0);
    /* bob's conversation with the new alice excludes the old one's messages. */
    convo(b, "alice", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 0);
    /* bob still has the old alice's message in his mailbox. */
    counts(b, 1, 0);
    uint64_t d[] = { old_sent };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, a2, d, 1), PL_ERR_NO_SUCH_MESSAGE);
    ck_assert_uint_eq(ids_op(PL_OP_ACK, a2, d, 1), PL_ERR_NO_SUCH_MESSAGE);
    /* New messages reach the new account. */
    sendm(b, "alice", "hello new alice");
    counts(a2, 1, 0);
}
END_TEST

static uint32_t send_req(uint64_t client, uint64_t reqno, uint64_t from, const char *to,
                         const char *body)
{
    pl_op op = { .kind = PL_OP_SEND, .client_id = client, .request_no = reqno,
                 .time_ms = 9000 + F.next_op, .uid = from, .name = pl_str_c(to),
                 .body = pl_str_c(body) };
    return apply(op);
}

START_TEST(exactly_once)
{
    uint64_t a = reg("alice"), b = reg("bob");
    ck_assert_uint_eq(send_req(42, 1, a, "bob", "once"), PL_OK);
    uint64_t id = R.reply.id, t = R.reply.time_ms;
    ck_assert_int_eq(R.has_push, 1);
    /* The retry (e.g. after a failover) is answered from the table. */
    ck_assert_uint_eq(send_req(42, 1, a, "bob", "once"), PL_OK);
    ck_assert_uint_eq(R.reply.id, id);
    ck_assert_uint_eq(R.reply.time_ms, t);
    ck_assert_uint_eq(R.reply.method, PL_M_SEND);
    ck_assert_int_eq(R.has_push, 0);
    counts(b, 1, 0);
    /* An older request number is stale. */
    ck_assert_uint_eq(send_req(42, 0, a, "bob", "old"), PL_ERR_STALE_REQUEST);
    counts(b, 1, 0);
    /* Another client with the same request number is independent. */
    ck_assert_uint_eq(send_req(43, 1, a, "bob", "other client"), PL_OK);
    counts(b, 2, 0);

    /* Rule violations are recorded too: the retry gets the same error even
     * after the condition changed. */
    ck_assert_uint_eq(send_req(42, 2, a, "carol", "x"), PL_ERR_NO_SUCH_USER);
    char e1[512];
    snprintf(e1, sizeof e1, "%s", err_text());
    reg("carol");
    ck_assert_uint_eq(send_req(42, 2, a, "carol", "x"), PL_ERR_NO_SUCH_USER);
    ck_assert_str_eq(err_text(), e1);
    counts(uid_of("carol"), 0, 0);

    /* A retried read returns the same messages, not an empty page. */
    pl_op rd = { .kind = PL_OP_READ, .client_id = 50, .request_no = 7, .uid = b };
    ck_assert_uint_eq(apply(rd), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 2);
    ck_assert_uint_eq(apply(rd), PL_OK);
    ck_assert_uint_eq(R.reply.n_msgs, 2);
    ck_assert_uint_eq(R.reply.msgs[0].id, id);
    ck_assert(pl_str_eq(R.reply.msgs[0].body, pl_str_c("once")));
    ck_assert(pl_str_eq(R.reply.msgs[0].from, pl_str_c("alice")));

    /* Duplicates inside one batch execute once. */
    pl_op two[2] = {
        { .kind = PL_OP_SEND, .client_id = 60, .request_no = 1, .uid = a,
          .name = pl_str_c("bob"), .body = pl_str_c("batched") },
        { .kind = PL_OP_SEND, .client_id = 60, .request_no = 1, .uid = a,
          .name = pl_str_c("bob"), .body = pl_str_c("batched") },
    };
    pl_apply_result res[2];
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, two, 2, res), PL_OK);
    F.next_op += 2;
    ck_assert_uint_eq(res[0].reply.status, PL_OK);
    ck_assert_uint_eq(res[1].reply.status, PL_OK);
    ck_assert_uint_eq(res[0].reply.id, res[1].reply.id);
    counts(b, 1, 2);

    /* Logins are never recorded: the same request number logs in again. */
    pl_op li = { .kind = PL_OP_LOGIN, .client_id = 70, .request_no = 1, .uid = a,
                 .name = pl_str_c("alice"), .token_hash = hash_of("t1") };
    ck_assert_uint_eq(apply(li), PL_OK);
    li.token_hash = hash_of("t2");
    ck_assert_uint_eq(apply(li), PL_OK);
    uint64_t uid;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("t1"), &uid, NULL, NULL), PL_OK);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("t2"), &uid, NULL, NULL), PL_OK);
    pl_client_rec cr;
    ck_assert_int_eq(F.sp->client_get(F.st, 70, &cr), PL_ERR_NOT_FOUND);
}
END_TEST

START_TEST(replay_idempotent)
{
    uint64_t a = reg("alice");
    reg("bob");
    char d1[65], d2[65];
    pl_op op = { .kind = PL_OP_SEND, .time_ms = 1, .uid = a, .name = pl_str_c("bob"),
                 .body = pl_str_c("hi") };
    uint64_t k = F.next_op;
    ck_assert_uint_eq(apply(op), PL_OK);
    uint64_t applied = F.sp->applied_op(F.st);
    ck_assert_uint_eq(applied, k);
    digest(&F, d1);

    /* The same op-number again: skipped. */
    pl_apply_result res[2];
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, k, &op, 1, res), PL_OK);
    ck_assert_uint_eq(res[0].reply.status, PL_ERR_STALE_REQUEST);
    ck_assert_int_eq(res[0].has_push, 0);
    digest(&F, d2);
    ck_assert_str_eq(d1, d2);
    ck_assert_uint_eq(F.sp->applied_op(F.st), k);
    counts(uid_of("bob"), 1, 0);

    /* A batch overlapping the applied point applies only the new part. */
    pl_op ops[2] = { op, op };
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, k, ops, 2, res), PL_OK);
    ck_assert_uint_eq(res[0].reply.status, PL_ERR_STALE_REQUEST);
    ck_assert_uint_eq(res[1].reply.status, PL_OK);
    ck_assert_uint_eq(F.sp->applied_op(F.st), k + 1);
    F.next_op = k + 2;
    counts(uid_of("bob"), 2, 0);

    /* A gap would lose ops: refused, nothing applied. */
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, k + 5, &op, 1, res), PL_ERR_INVALID);
    ck_assert_uint_eq(F.sp->applied_op(F.st), k + 1);
    counts(uid_of("bob"), 2, 0);

    /* NOOP advances the applied point and nothing else. */
    digest(&F, d1);
    pl_op noop = { .kind = PL_OP_NOOP };
    ck_assert_uint_eq(apply(noop), PL_OK);
    ck_assert_uint_eq(R.reply.method, PL_M_NONE);
    ck_assert_uint_eq(F.sp->applied_op(F.st), k + 2);
    digest(&F, d2);
    ck_assert_str_eq(d1, d2);
}
END_TEST

START_TEST(batch_sees_own_writes)
{
    pl_op ops[3] = {
        { .kind = PL_OP_REGISTER, .name = pl_str_c("alice"), .pwhash = pl_str_c(FAKE_HASH) },
        { .kind = PL_OP_REGISTER, .name = pl_str_c("bob"), .pwhash = pl_str_c(FAKE_HASH) },
        { .kind = PL_OP_SEND, .uid = 1, .name = pl_str_c("bob"), .body = pl_str_c("hi") },
    };
    pl_apply_result res[3];
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, ops, 3, res), PL_OK);
    F.next_op += 3;
    for (int i = 0; i < 3; i++)
        ck_assert_msg(res[i].reply.status == PL_OK, "op %d: %.*s", i,
                      (int)res[i].reply.error.len, res[i].reply.error.ptr);
    ck_assert_uint_eq(res[2].reply.id, 1);
    counts(uid_of("bob"), 1, 0);
    ck_assert_uint_eq(F.sp->applied_op(F.st), F.next_op - 1);
}
END_TEST

static void list(const char *pattern, uint64_t offset, uint64_t limit)
{
    pl_request req = { .method = PL_M_LIST_USERS, .pattern = pl_str_c(pattern),
                       .offset = offset, .limit = limit };
    ck_assert_uint_eq(query(1, req), PL_OK);
}

static void users_are(const char *want_csv, uint32_t more)
{
    char got[1024] = "";
    for (uint32_t i = 0; i < Q.n_users; i++) {
        if (i)
            strcat(got, ",");
        strncat(got, Q.users[i].ptr, Q.users[i].len);
    }
    ck_assert_msg(strcmp(got, want_csv) == 0 && Q.more == more,
                  "users [%s] more=%u, want [%s] more=%u", got, Q.more, want_csv, more);
}

START_TEST(list_users)
{
    const char *names[] = { "bob", "alice", "al", "alex", "carol", "albert", "zed", "Al" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        reg(names[i]);
    list("", 0, 0);
    users_are("Al,al,albert,alex,alice,bob,carol,zed", 0);
    list("*", 0, 0);
    users_are("Al,al,albert,alex,alice,bob,carol,zed", 0);
    list("al*", 0, 0);
    users_are("al,albert,alex,alice", 0);
    list("al?x", 0, 0);
    users_are("alex", 0);
    list("al??*", 0, 0);
    users_are("albert,alex,alice", 0);
    list("a?ex", 0, 0);
    users_are("alex", 0);
    list("*o*", 0, 0);
    users_are("bob,carol", 0);
    list("alice", 0, 0);
    users_are("alice", 0);
    list("ali", 0, 0);
    users_are("", 0);
    list("nobody*", 0, 0);
    users_are("", 0);

    /* Paging: the last page says no more; past the end is empty. */
    list("al*", 0, 2);
    users_are("al,albert", 1);
    list("al*", 2, 2);
    users_are("alex,alice", 0);
    list("al*", 3, 2);
    users_are("alice", 0);
    list("al*", 4, 2);
    users_are("", 0);
    list("", 100, 0);
    users_are("", 0);
    list("", 7, 1);
    users_are("zed", 0);
    list("", 6, 1);
    users_are("carol", 1);
    list("", 0, PL_PAGE_MAX);
    ck_assert_uint_eq(Q.n_users, 8);

    pl_request req = { .method = PL_M_LIST_USERS, .limit = PL_PAGE_MAX + 1 };
    ck_assert_uint_eq(query(1, req), PL_ERR_PAGE);
    char qe[256];
    snprintf(qe, sizeof qe, "%.*s", (int)Q.error.len, Q.error.ptr);
    ck_assert_msg(strstr(qe, "1000") != NULL, "error names the limit: %s", qe);
    req = (pl_request){ .method = PL_M_LIST_USERS, .pattern = pl_str_c("a b") };
    ck_assert_uint_eq(query(1, req), PL_ERR_PATTERN);
    req.pattern = pl_str_c("a[b]");
    ck_assert_uint_eq(query(1, req), PL_ERR_PATTERN);
    char *p64 = filled(64, '*'), *p65 = filled(65, '*');
    req.pattern = pl_str_c(p64);
    ck_assert_uint_eq(query(1, req), PL_OK);
    ck_assert_uint_eq(Q.n_users, 8);
    req.pattern = pl_str_c(p65);
    ck_assert_uint_eq(query(1, req), PL_ERR_PATTERN);
    ck_assert_int_eq(pl_chat_check_pattern(pl_str_c(p64)), PL_OK);
    ck_assert_int_eq(pl_chat_check_pattern(pl_str_c(p65)), PL_ERR_PATTERN);
    free(p64);
    free(p65);
}
END_TEST

START_TEST(list_users_default_limit)
{
    pl_op *ops = calloc(105, sizeof *ops);
    pl_apply_result *res = calloc(105, sizeof *res);
    char names[105][8];
    for (int i = 0; i < 105; i++) {
        snprintf(names[i], sizeof names[i], "u%03d", i);
        ops[i] = (pl_op){ .kind = PL_OP_REGISTER, .name = pl_str_c(names[i]),
                          .pwhash = pl_str_c(FAKE_HASH) };
    }
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, ops, 105, res), PL_OK);
    F.next_op += 105;
    list("u*", 0, 0);
    ck_assert_uint_eq(Q.n_users, 100);
    ck_assert_uint_eq(Q.more, 1);
    list("u*", 100, 0);
    ck_assert_uint_eq(Q.n_users, 5);
    ck_assert_uint_eq(Q.more, 0);
    ck_assert(pl_str_eq(Q.users[4], pl_str_c("u104")));
    list("u?9?", 0, 0);
    ck_assert_uint_eq(Q.n_users, 10);
    free(ops);
    free(res);
}
END_TEST

START_TEST(history_and_conversation)
{
    uint64_t a = reg("alice"), b = reg("bob");
    reg("carol");
    uint64_t m[6];
    m[0] = sendm(a, "bob", "a->b 0");
    m[1] = sendm(b, "alice", "b->a 1");
    m[2] = sendm(uid_of("carol"), "bob", "c->b 2");
    m[3] = sendm(a, "bob", "a->b 3");
    m[4] = sendm(b, "alice", "b->a 4");
    m[5] = sendm(a, "bob", "a->b 5 unread");

    /* History: read messages only, newest first. */
    pl_request h = { .method = PL_M_HISTORY };
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 0);
    ck_assert_uint_eq(read_n(b, 3), PL_OK); /* m0, m2, m3 */
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 3);
    ck_assert_uint_eq(Q.msgs[0].id, m[3]);
    ck_assert_uint_eq(Q.msgs[1].id, m[2]);
    ck_assert_uint_eq(Q.msgs[2].id, m[0]);
    ck_assert_uint_eq(Q.msgs[0].state, PL_MSG_READ);
    ck_assert_uint_eq(Q.more, 0);
    h.limit = 2;
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 2);
    ck_assert_uint_eq(Q.more, 1);
    h.offset = 2;
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 1);
    ck_assert_uint_eq(Q.msgs[0].id, m[0]);
    ck_assert_uint_eq(Q.more, 0);
    h.offset = 3;
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 0);
    ck_assert_uint_eq(Q.more, 0);
    h.offset = 0;
    h.limit = PL_PAGE_MAX + 1;
    ck_assert_uint_eq(query(b, h), PL_ERR_PAGE);

    /* Conversation: both directions, sent included, newest first, no third party. */
    convo(a, "bob", 0, 0);
    ck_assert_uint_eq(Q.n_msgs, 5);
    uint64_t want[] = { m[5], m[4], m[3], m[1], m[0] };
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(Q.msgs[i].id, want[i]);
    ck_assert(pl_str_eq(Q.msgs[1].from, pl_str_c("bob")));
    ck_assert(pl_str_eq(Q.msgs[1].to, pl_str_c("alice")));
    ck_assert_uint_eq(Q.msgs[0].state, 0);      /* m5 unread by bob */
    ck_assert_uint_eq(Q.msgs[2].state, PL_MSG_READ);
    ck_assert_uint_eq(Q.more, 0);
    convo(b, "alice", 1, 2);
    ck_assert_uint_eq(Q.n_msgs, 2);
    ck_assert_uint_eq(Q.msgs[0].id, m[4]);
    ck_assert_uint_eq(Q.msgs[1].id, m[3]);
    ck_assert_uint_eq(Q.more, 1);
    convo(b, "alice", 3, 2);
    ck_assert_uint_eq(Q.n_msgs, 2);
    ck_assert_uint_eq(Q.more, 0);
    convo(b, "alice", 10, 2);
    ck_assert_uint_eq(Q.n_msgs, 0);
    ck_assert_uint_eq(Q.more, 0);
    pl_request cq = { .method = PL_M_CONVERSATION, .peer = pl_str_c("dave") };
    ck_assert_uint_eq(query(a, cq), PL_ERR_NO_SUCH_USER);
    cq.peer = pl_str_c("bob");
    cq.limit = PL_PAGE_MAX + 1;
    ck_assert_uint_eq(query(a, cq), PL_ERR_PAGE);
}
END_TEST

START_TEST(history_default_limit)
{
    uint64_t a = reg("alice"), b = reg("bob");
    send_many(a, "bob", 60, pl_str_c("m"));
    ck_assert_uint_eq(read_n(b, 0), PL_OK);
    pl_request h = { .method = PL_M_HISTORY };
    ck_assert_uint_eq(query(b, h), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 50);
    ck_assert_uint_eq(Q.more, 1);
    ck_assert_msg(Q.msgs[0].id > Q.msgs[49].id, "newest first");
}
END_TEST

START_TEST(subscribe_backlog)
{
    uint64_t a = reg("alice"), b = reg("bob");
    uint64_t m1 = sendm(a, "bob", "1"), m2 = sendm(a, "bob", "2"), m3 = sendm(a, "bob", "3");
    uint64_t ack[] = { m2 };
    ck_assert_uint_eq(ids_op(PL_OP_ACK, b, ack, 1), PL_OK);
    pl_request s = { .method = PL_M_SUBSCRIBE };
    ck_assert_uint_eq(query(b, s), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 2);
    ck_assert_uint_eq(Q.msgs[0].id, m1);
    ck_assert_uint_eq(Q.msgs[1].id, m3);
    ck_assert_uint_eq(Q.more, 0);
    s.after_id = m1;
    ck_assert_uint_eq(query(b, s), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 1);
    ck_assert_uint_eq(Q.msgs[0].id, m3);
    s.after_id = m3;
    ck_assert_uint_eq(query(b, s), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 0);

    send_many(a, "bob", PL_PAGE_MAX + 1, pl_str_c("x"));
    s.after_id = m3;
    ck_assert_uint_eq(query(b, s), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, PL_PAGE_MAX);
    ck_assert_uint_eq(Q.more, 1);
}
END_TEST

START_TEST(query_misc)
{
    uint64_t a = reg("alice");
    pl_request r = { .method = PL_M_SEND, .request_id = 77 };
    ck_assert_uint_eq(query(a, r), PL_ERR_UNSUPPORTED);
    ck_assert_uint_eq(Q.request_id, 77);
    ck_assert_uint_eq(Q.method, PL_M_SEND);
    counts(a, 0, 0);
    pl_str nm, ph;
    ck_assert_int_eq(pl_chat_account_by_uid(F.chat, a, &nm, &ph), PL_OK);
    ck_assert(pl_str_eq(nm, pl_str_c("alice")));
    ck_assert(pl_str_eq(ph, pl_str_c(FAKE_HASH)));
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("bob"), NULL, &ph), PL_ERR_NOT_FOUND);
    /* The session name outlives a following query. */
    ck_assert_uint_eq(login(a, "alice", "tok"), PL_OK);
    uint64_t uid;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok"), &uid, &nm, NULL), PL_OK);
    list("", 0, 0);
    ck_assert(pl_str_eq(nm, pl_str_c("alice")));
    /* A token longer than any issued one is rejected without a lookup. */
    char *longtok = filled(PL_TOKEN_MAX + 1, 't');
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c(longtok), &uid, &nm, NULL),
                     PL_ERR_NOT_LOGGED_IN);
    free(longtok);
}
END_TEST

/* The same ops on two fresh stores; optionally one extra op on the second. */
static void run_script(fx *f, int variant)
{
    fx saved = F;
    F = *f;
    uint64_t a = reg("alice"), b = reg("bob");
    ck_assert_uint_eq(login(a, "alice", "tok-a"), PL_OK);
    uint64_t m1 = sendm(a, "bob", "hello");
    sendm(b, "alice", variant == 2 ? "hey!" : "hey");
    send_req(5, 1, a, "bob", "exactly once");
    ck_assert_uint_eq(read_n(b, 1), PL_OK);
    uint64_t d[] = { m1 };
    ck_assert_uint_eq(ids_op(PL_OP_DELETE, a, d, 1), PL_OK);
    if (variant == 1)
        reg("carol");
    *f = F;
    F = saved;
}

START_TEST(digest_equal_and_different)
{
    fx f2, f3;
    char d1[65], d2[65], d3[65];
    fx_open(&f2);
    run_script(&F, 0);
    run_script(&f2, 0);
    digest(&F, d1);
    digest(&f2, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "same ops, different digests");

    fx_open(&f3);
    run_script(&f3, 1);
    digest(&f3, d3);
    ck_assert_msg(strcmp(d1, d3) != 0, "an extra account left the digest unchanged");
    fx_close(&f3);
    fx_open(&f3);
    run_script(&f3, 2);
    digest(&f3, d3);
    ck_assert_msg(strcmp(d1, d3) != 0, "a different body left the digest unchanged");
    fx_close(&f3);

    /* Reopening the store (a restart) keeps the digest. */
    pl_chat_free(f2.chat);
    f2.sp->close(f2.st);
    char err[ERRLEN];
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, host_log };
    pl_store_options opt = { f2.dir, 0, NULL };
    ck_assert_int_eq(pl_plugin_store_open(f2.plugin, &host, &opt, &f2.st, err, sizeof err),
                     PL_OK);
    f2.chat = pl_chat_new(f2.sp, f2.st);
    digest(&f2, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "digest changed across a reopen");
    fx_close(&f2);
}
END_TEST

/* ---- issue 21: importing the prototype's state, restoring a dump ---- */

#define PROTO_HASH "$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw==$" \
                   "trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnvalM="

static pl_import_rec urec(const char *name, const char *hash)
{
    pl_import_rec r = { .kind = 'U', .name = pl_str_c(name), .pwhash = pl_str_c(hash) };
    return r;
}

static pl_import_rec mrec(const char *to, const char *from, uint64_t seq, int read,
                          const char *body)
{
    pl_import_rec r = { .kind = 'M', .to = pl_str_c(to), .from = pl_str_c(from), .seq = seq,
                        .read = (uint8_t)read, .body = pl_str_c(body) };
    return r;
}

/* Apply one import op of these records; the outcomes as a string of digits. */
static const char *import_recs(const pl_import_rec *recs, size_t n)
{
    static char out[PL_IMPORT_BATCH_MAX + 1];
    uint8_t *body;
    size_t len;
    ck_assert_int_eq(pl_import_batch_encode(recs, n, &body, &len), PL_OK);
    pl_op op = { .kind = PL_OP_IMPORT, .time_ms = 7000, .body = { (const char *)body,
                                                                  (uint32_t)len } };
    uint32_t st = apply(op);
    free(body);
    ck_assert_msg(st == PL_OK, "import op: %s", err_text());
    ck_assert_uint_eq(R.n_outcomes, n);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)('0' + R.outcomes[i]);
    out[n] = '\0';
    return out;
}

static pl_message_rec get_msg(uint64_t id)
{
    pl_message_rec m;
    ck_assert_int_eq(F.sp->message_get(F.st, id, &m), PL_OK);
    return m;
}

START_TEST(import_accounts_and_messages)
{
    uint64_t carol = reg("carol");   /* a parley user before the import */
    pl_import_rec users[] = {
        urec("alice", PROTO_HASH), urec("bad name!", PROTO_HASH), urec("bob", PROTO_HASH),
        urec("carol", PROTO_HASH), urec("dave", "$pbkdf2-sha256$i=100000$short$x=="),
    };
    /* 1 created, 7 invalid, 4 taken */
    ck_assert_str_eq(import_recs(users, 5), "17147");
    uint64_t alice = uid_of("alice"), bob = uid_of("bob");
    pl_str h;
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, &h), PL_OK);
    ck_assert_msg(pl_chat_pwhash_is_pbkdf2(h), "the imported hash is kept as it is");
    uint8_t salt[16], hash[32];
    ck_assert_int_eq(pl_chat_pbkdf2_parse(h, salt, hash), PL_OK);
    ck_assert_msg(salt[0] == 0 && salt[15] == 15, "salt decoded");

    pl_import_rec msgs[] = {
        mrec("alice", "bob", 1, 0, "hi alice"),
        mrec("alice", "ghost", 2, 1, "from a deleted account"),
        mrec("alice", "bad\x01sender", 3, 0, "x"),
        mrec("carol", "bob", 1, 0, "to a parley user"),
        mrec("nobody", "bob", 1, 0, "to nobody"),
        mrec("bob", "alice", 1, 1, "read already"),
        mrec("bob", "alice", 0, 1, "seq 0"),
        mrec("bob", "alice", 2, 0, ""),
    };
    /* 2 imported, 7 invalid, 5 no recipient */
    ck_assert_str_eq(import_recs(msgs, 8), "22755277");
    counts(alice, 1, 1);
    counts(bob, 0, 1);
    counts(carol, 0, 0);

    /* Oldest first, read state kept; a sender that is an imported account is
     * linked to it, a departed one kept by name and hidden from its side. */
    pl_request unread = { .method = PL_M_SUBSCRIBE };
    ck_assert_uint_eq(query(alice, unread), PL_OK);
    ck_assert_uint_eq(Q.n_msgs, 1);
    pl_message_rec m1 = get_msg(Q.msgs[0].id);
    ck_assert_msg(m1.from_uid == bob && m1.to_uid == alice && m1.flags == 0,
                  "bob's message: linked, unread (flags %u)", m1.flags);
    ck_assert_msg(pl_str_eq(m1.body, pl_str_c("hi alice")), "body kept");
    pl_message_rec m2 = get_msg(Q.msgs[0].id + 1);
    ck_assert_msg(m2.from_uid == 0 && pl_str_eq(m2.from_name, pl_str_c("ghost")) &&
                  m2.flags == (PL_MSGF_READ | PL_MSGF_DEL_SENDER),
                  "ghost's message: by name, read, deleted by its sender (flags %u)", m2.flags);
    pl_request convo = { .method = PL_M_CONVERSATION, .peer = pl_str_c("alice") };
    ck_assert_uint_eq(query(bob, convo), PL_OK);
    ck_assert_msg(Q.n_msgs == 2, "bob sees both directions with alice: %u", Q.n_msgs);

    /* The same batches again: nothing new (imported once). */
    char d1[65], d2[65];
    digest(&F, d1);
    ck_assert_str_eq(import_recs(users, 5), "37347");
    ck_assert_str_eq(import_recs(msgs, 8), "33755377");
    digest(&F, d2);
    ck_assert_msg(strcmp(d1, d2) == 0, "importing again changed the state");

    /* A later place of a mailbox comes in; an earlier one stays done. */
    pl_import_rec more[] = { mrec("bob", "alice", 3, 0, "third"), mrec("bob", "x", 2, 0, "2") };
    ck_assert_str_eq(import_recs(more, 2), "23");
    counts(bob, 1, 1);

    /* A deleted account is not brought back by importing again. */
    ck_assert_uint_eq(delete_account(alice), PL_OK);
    ck_assert_str_eq(import_recs(users, 1), "3");
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, NULL), PL_ERR_NOT_FOUND);
    pl_import_rec late[] = { mrec("alice", "bob", 9, 0, "late") };
    ck_assert_str_eq(import_recs(late, 1), "6");

    /* A malformed batch is refused as a whole. */
    pl_op bad = { .kind = PL_OP_IMPORT, .time_ms = 1, .body = pl_str_c("\x01garbage") };
    ck_assert_uint_eq(apply(bad), PL_ERR_INVALID);
}
END_TEST

START_TEST(login_rehash)
{
    pl_import_rec u[] = { urec("alice", PROTO_HASH) };
    ck_assert_str_eq(import_recs(u, 1), "1");
    uint64_t alice = uid_of("alice");
    pl_str h;

    /* Wrong name: refused, the hash stays. */
    pl_op op = { .kind = PL_OP_LOGIN_REHASH, .time_ms = 2000, .uid = alice,
                 .name = pl_str_c("bob"), .token_hash = hash_of("t1"),
                 .pwhash = pl_str_c(FAKE_HASH) };
    ck_assert_uint_eq(apply(op), PL_ERR_AUTH);
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, &h), PL_OK);
    ck_assert_msg(pl_chat_pwhash_is_pbkdf2(h), "a refused login changes nothing");

    /* The first login replaces the imported hash in its own op. */
    op.name = pl_str_c("alice");
    ck_assert_uint_eq(apply(op), PL_OK);
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, &h), PL_OK);
    ck_assert_msg(pl_str_eq(h, pl_str_c(FAKE_HASH)), "the Argon2id hash replaced it");
    uint64_t su;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("t1"), &su, NULL, NULL), PL_OK);
    ck_assert_uint_eq(su, alice);

    /* A second one (two first logins raced) logs in but keeps the first hash. */
    op.token_hash = hash_of("t2");
    op.pwhash = pl_str_c("$argon2id$other");
    ck_assert_uint_eq(apply(op), PL_OK);
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("alice"), NULL, &h), PL_OK);
    ck_assert_msg(pl_str_eq(h, pl_str_c(FAKE_HASH)), "only an imported hash is replaced");

    /* An imported hash can never be what replaces one. */
    op.pwhash = pl_str_c(PROTO_HASH);
    ck_assert_uint_eq(apply(op), PL_ERR_INVALID);
}
END_TEST

/* The snapshot of f as dump lines, parsed back: *lines (caller clears each
 * and frees), *n of them. */
static pl_dump_line *dump_lines(fx *f, int sessions, size_t *n)
{
    uint8_t *snap;
    size_t len;
    uint64_t op;
    ck_assert_int_eq(pl_snapshot_export(f->sp, f->st, 0, &snap, &len, &op), PL_OK);
    pl_dump_meta meta = { 1, "127.0.0.1:1", f->sp->name, "test", sessions };
    pl_dump *d;
    ck_assert_int_eq(pl_dump_new(snap, len, &meta, &d), PL_OK);
    char *all = NULL;
    size_t total = 0;
    for (;;) {
        const char *t;
        size_t tl;
        ck_assert_int_eq(pl_dump_next(d, &t, &tl), PL_OK);
        if (!tl)
            break;
        all = realloc(all, total + tl + 1);
        memcpy(all + total, t, tl);
        total += tl;
    }
    pl_dump_free(d);
    size_t cap = 16, k = 0;
    pl_dump_line *v = calloc(cap, sizeof *v);
    char err[300];
    for (size_t pos = 0; pos < total;) {
        char *nl = memchr(all + pos, '\n', total - pos);
        ck_assert_msg(nl != NULL, "every line ends with a newline");
        if (k == cap)
            v = realloc(v, (cap *= 2) * sizeof *v);
        int rc = pl_dump_parse_line(all + pos, (size_t)(nl - all - pos), &v[k], err, sizeof err);
        ck_assert_msg(rc == PL_OK, "line %zu: %s: %.*s", k + 1, err, (int)(nl - all - pos),
                      all + pos);
        k++;
        pos = (size_t)(nl - all) + 1;
    }
    free(all);
    *n = k;
    return v;
}

/* Restore lines [1, n-1) into f in batches of `per` records. Returns the
 * status of the first refused op, or PL_OK. */
static uint32_t restore_into(fx *f, pl_dump_line *l, size_t n, size_t per, int begin)
{
    fx saved = F;
    F = *f;
    uint32_t st = PL_OK;
    pl_snapshot_rec *recs = calloc(per, sizeof *recs);
    for (size_t i = 1; i + 1 < n && st == PL_OK;) {
        size_t k = 0;
        while (k < per && i + 1 < n)
            recs[k++] = l[i++].rec;
        pl_restore_batch b = { begin ? PL_RESTORE_BEGIN : 0, l[0].next_uid, l[0].next_msg_id,
                               recs, k };
        begin = 0;
        uint8_t *body;
        size_t len;
        ck_assert_int_eq(pl_restore_batch_encode(&b, &body, &len), PL_OK);
        pl_op op = { .kind = PL_OP_RESTORE, .time_ms = 8000,
                     .body = { (const char *)body, (uint32_t)len } };
        st = apply(op);
        free(body);
    }
    free(recs);
    *f = F;
    F = saved;
    return st;
}

START_TEST(dump_and_restore)
{
    fx cur = F;            /* run_script(&F) would restore F's op counter after */
    run_script(&cur, 0);
    F = cur;
    pl_import_rec u[] = { urec("zed", PROTO_HASH) };   /* an importer's client row too */
    import_recs(u, 1);
    char want[65], got[65];
    digest(&F, want);
    size_t n;
    pl_dump_line *l = dump_lines(&F, 1, &n);
    ck_assert_int_eq(l[0].kind, PL_DUMP_HEADER);
    ck_assert_str_eq(l[0].digest, want);
    ck_assert_int_eq(l[n - 1].kind, PL_DUMP_END);
    ck_assert_msg(l[n - 1].accounts == 3 && l[n - 1].sessions_n == 1 && l[n - 1].messages == 3,
                  "counts %" PRIu64 " %" PRIu64 " %" PRIu64, l[n - 1].accounts,
                  l[n - 1].sessions_n, l[n - 1].messages);

    fx f2;
    fx_open(&f2);
    ck_assert_uint_eq(restore_into(&f2, l, n, 3, 1), PL_OK);
    digest(&f2, got);
    ck_assert_msg(strcmp(want, got) == 0, "restored digest %s, dumped %s", got, want);

    /* Again, resumed (not the first batch): every record is there already. */
    ck_assert_uint_eq(restore_into(&f2, l, n, 4, 0), PL_OK);
    digest(&f2, got);
    ck_assert_msg(strcmp(want, got) == 0, "a resumed restore changed the state");
    /* As a new restore: refused, the cluster is not empty. */
    ck_assert_uint_eq(restore_into(&f2, l, n, 100, 1), PL_ERR_USER_EXISTS);

    /* A record that differs from what is stored: refused, nothing of the batch. */
    fx f3;
    fx_open(&f3);
    ck_assert_uint_eq(restore_into(&f3, l, n, 100, 1), PL_OK);
    for (size_t i = 1; i + 1 < n; i++)
        if (l[i].rec.tag == 'M') {
            l[i].rec.m.body = pl_str_c("tampered");
            break;
        }
    ck_assert_uint_eq(restore_into(&f3, l, n, 100, 0), PL_ERR_USER_EXISTS);
    digest(&f3, got);
    ck_assert_msg(strcmp(want, got) == 0, "a refused batch changed the state");
    fx_close(&f3);
    fx_close(&f2);
    for (size_t i = 0; i < n; i++)
        pl_dump_line_clear(&l[i]);
    free(l);

    /* Without sessions the lines leave them out; restored, everyone must log in again. */
    l = dump_lines(&F, 0, &n);
    ck_assert_msg(l[n - 1].sessions_n == 0, "no session lines");
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(l[i].kind != PL_DUMP_RECORD || l[i].rec.tag != 'S', "a session line");
        pl_dump_line_clear(&l[i]);
    }
    free(l);
}
END_TEST

/* The reader refuses what the format does not allow, naming the key. */
START_TEST(dump_reader_refuses)
{
    static const struct { const char *line, *why; } bad[] = {
        { "{\"parley_dump\":2,\"op\":1}", "header.parley_dump: format version 2" },
        { "{\"account\":{\"uid\":1,\"name\":\"a\",\"pwhash\":\"h\"}}", "account.created_ms: missing" },
        { "{\"account\":{\"uid\":-1,\"name\":\"a\",\"pwhash\":\"h\",\"created_ms\":1}}",
          "account.uid: must be an integer" },
        { "{\"account\":{\"uid\":1,\"name\":\"a\",\"pwhash\":\"h\",\"created_ms\":1,\"x\":1}}",
          "account.x: unknown key" },
        { "{\"session\":{\"token_hash\":\"abc\",\"uid\":1,\"created_ms\":1}}",
          "session.token_hash: must be 64 hex digits" },
        { "{\"message\":{\"id\":1}}", "message.from_uid: missing" },
        { "{\"client\":{\"client_id\":\"99999999999999999999\",\"request_no\":1,\"op\":1,"
          "\"reply\":\"\"}}", "client.client_id: must be a decimal integer below 2^64" },
        { "{\"account\":{},\"session\":{}}", "a record line holds one object" },
        { "{\"thing\":{}}", "line.thing: unknown record kind" },
        { "{\"message\":{\"id\":1,\"body\":\"a\\u0000b\"}}", "NUL" },
        { "not json", "not valid JSON" },
        { "{\"end\":{\"accounts\":1}} x", "text after the JSON object" },
    };
    char err[300];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pl_dump_line l;
        int rc = pl_dump_parse_line(bad[i].line, strlen(bad[i].line), &l, err, sizeof err);
        ck_assert_msg(rc == PL_ERR_INVALID && strstr(err, bad[i].why),
                      "line %zu: rc %d, err \"%s\", want \"%s\"", i, rc, err, bad[i].why);
        pl_dump_line_clear(&l);
    }
    pl_dump_line l;
    const char *big = "{\"client\":{\"client_id\":\"18446744073709551615\",\"request_no\":3,"
                      "\"op\":9007199254740991,\"reply\":\"AQI=\"}}";
    ck_assert_int_eq(pl_dump_parse_line(big, strlen(big), &l, err, sizeof err), PL_OK);
    ck_assert_msg(l.rec.c.client_id == UINT64_MAX && l.rec.c.op == 9007199254740991ull &&
                  l.rec.c.reply.len == 2, "numbers and base64 read back");
    pl_dump_line_clear(&l);
}
END_TEST

/* ---- the lookup cache (core/chat.c) must never answer what the store
 * would not: not after a batch that rolled back, not after a snapshot
 * replaced the state. */

static pl_store_plugin failing_sp;   /* F's plugin, message_put failing on cue */
static int puts_left;                /* that many more puts succeed; < 0: all */

static int failing_message_put(pl_store *st, const pl_message_rec *m)
{
    if (puts_left == 0)
        return PL_ERR_IO;
    if (puts_left > 0)
        puts_left--;
    return F.sp->message_put(st, m);
}

START_TEST(cache_follows_rolled_back_batch)
{
    failing_sp = *F.sp;
    failing_sp.message_put = failing_message_put;
    puts_left = -1;
    pl_chat_free(F.chat);
    F.chat = pl_chat_new(&failing_sp, F.st);
    ck_assert_ptr_nonnull(F.chat);

    uint64_t a = reg("alice");
    ck_assert_uint_eq(login(a, "alice", "tok-a"), PL_OK);
    ck_assert_uint_eq(send_req(77, 1, a, "alice", "first"), PL_OK);
    /* One batch registers carol, logs alice in with a second token, sends
     * client 77's request 2 to carol (all of which the cache learns), then
     * a send fails in the store: the whole batch rolls back. */
    pl_op ops[4] = {
        { .kind = PL_OP_REGISTER, .time_ms = 1000, .name = pl_str_c("carol"),
          .pwhash = pl_str_c(FAKE_HASH) },
        { .kind = PL_OP_LOGIN, .time_ms = 2000, .uid = a, .name = pl_str_c("alice"),
          .token_hash = hash_of("tok-gone") },
        { .kind = PL_OP_SEND, .client_id = 77, .request_no = 2, .time_ms = 3000, .uid = a,
          .name = pl_str_c("carol"), .body = pl_str_c("to carol") },
        { .kind = PL_OP_SEND, .time_ms = 3001, .uid = a, .name = pl_str_c("alice"),
          .body = pl_str_c("fails in the store") },
    };
    pl_apply_result res[4];
    puts_left = 1;
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, ops, 4, res), PL_ERR_IO);
    puts_left = -1;

    uint64_t uid;
    pl_str name;
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("carol"), &uid, NULL), PL_ERR_NOT_FOUND);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-gone"), &uid, &name, NULL),
                     PL_ERR_NOT_LOGGED_IN);
    ck_assert_uint_eq(send_body(a, "carol", pl_str_c("x")), PL_ERR_NO_SUCH_USER);
    counts(a, 1, 0);
    /* The same batch again, without the failure, does everything. */
    ck_assert_int_eq(pl_chat_apply_batch(F.chat, F.next_op, ops, 3, res), PL_OK);
    F.next_op += 3;
    ck_assert_uint_eq(res[0].reply.status, PL_OK);
    ck_assert_uint_eq(res[1].reply.status, PL_OK);
    ck_assert_uint_eq(res[2].reply.status, PL_OK);
    counts(uid_of("carol"), 1, 0);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-gone"), &uid, &name, NULL), PL_OK);
    ck_assert_uint_eq(uid, a);
}
END_TEST

START_TEST(cache_forgets_replaced_state)
{
    /* F: bob (uid 1) logged in, client 77 at request 1; all of it cached. */
    uint64_t b = reg("bob");
    ck_assert_uint_eq(login(b, "bob", "tok-b"), PL_OK);
    ck_assert_uint_eq(send_req(77, 1, b, "bob", "mine"), PL_OK);
    uint64_t uid, created;
    pl_str name;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-b"), &uid, &name, NULL), PL_OK);

    /* f2: alice is uid 1, logged in with tok-a; client 77 is at request 5. */
    fx f2;
    fx_open(&f2);
    pl_op r = { .kind = PL_OP_REGISTER, .time_ms = 1000, .name = pl_str_c("alice"),
                .pwhash = pl_str_c(FAKE_HASH) };
    ck_assert_uint_eq(apply_on(&f2, r), PL_OK);
    pl_op l = { .kind = PL_OP_LOGIN, .time_ms = 2500, .uid = 1, .name = pl_str_c("alice"),
                .token_hash = hash_of("tok-a") };
    ck_assert_uint_eq(apply_on(&f2, l), PL_OK);
    pl_op snd = { .kind = PL_OP_SEND, .client_id = 77, .request_no = 5, .time_ms = 3000,
                  .uid = 1, .name = pl_str_c("alice"), .body = pl_str_c("hers") };
    ck_assert_uint_eq(apply_on(&f2, snd), PL_OK);
    uint8_t *snap;
    size_t len;
    uint64_t op;
    ck_assert_int_eq(pl_snapshot_export(f2.sp, f2.st, 1, &snap, &len, &op), PL_OK);
    fx_close(&f2);

    /* Installed the way the sequencer does it: import, then forget. */
    ck_assert_int_eq(pl_snapshot_import(F.sp, F.st, snap, len), PL_OK);
    free(snap);
    pl_chat_forget(F.chat);
    F.next_op = op + 1;
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-b"), &uid, &name, NULL),
                     PL_ERR_NOT_LOGGED_IN);
    ck_assert_int_eq(pl_chat_session(F.chat, pl_str_c("tok-a"), &uid, &name, &created), PL_OK);
    ck_assert_uint_eq(uid, 1);
    ck_assert_msg(pl_str_eq(name, pl_str_c("alice")), "uid 1 is %.*s, not alice",
                  (int)name.len, name.ptr);
    ck_assert_uint_eq(created, 2500);
    ck_assert_int_eq(pl_chat_account(F.chat, pl_str_c("bob"), &uid, NULL), PL_ERR_NOT_FOUND);
    /* Client 77 is at request 5 now: 3 is stale, 6 is new. */
    ck_assert_uint_eq(send_req(77, 3, 1, "alice", "old"), PL_ERR_STALE_REQUEST);
    ck_assert_uint_eq(send_req(77, 6, 1, "alice", "new"), PL_OK);
    counts(1, 2, 0);
}
END_TEST

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s STORE_PLUGIN.so\n", argv[0]);
        return 2;
    }
    plugin_path = argv[1];
    /* Every test's store lives under one parent removed at the end: a failed
     * test exits before its teardown runs and would leave its dir behind. */
    char parent[256];
    const char *t = getenv("TMPDIR");
    snprintf(parent, sizeof parent, "%s/pl-chat-run-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(parent) || setenv("TMPDIR", parent, 1) != 0) {
        perror("temp dir");
        return 2;
    }
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("chat");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, username_limits);
    tcase_add_test(tc, password_limits);
    tcase_add_test(tc, duplicate_register);
    tcase_add_test(tc, body_limits);
    tcase_add_test(tc, login_logout);
    tcase_add_test(tc, login_deleted_account);
    tcase_add_test(tc, send_rules);
    tcase_add_test(tc, read_semantics);
    tcase_add_test(tc, read_caps);
    tcase_add_test(tc, ack_rules);
    tcase_add_test(tc, delete_rules);
    tcase_add_test(tc, delete_account_rules);
    tcase_add_test(tc, reregister_sees_nothing_old);
    tcase_add_test(tc, exactly_once);
    tcase_add_test(tc, replay_idempotent);
    tcase_add_test(tc, batch_sees_own_writes);
    tcase_add_test(tc, list_users);
    tcase_add_test(tc, list_users_default_limit);
    tcase_add_test(tc, history_and_conversation);
    tcase_add_test(tc, history_default_limit);
    tcase_add_test(tc, subscribe_backlog);
    tcase_add_test(tc, query_misc);
    tcase_add_test(tc, digest_equal_and_different);
    tcase_add_test(tc, cache_follows_rolled_back_batch);
    tcase_add_test(tc, cache_forgets_replaced_state);
    tcase_add_test(tc, import_accounts_and_messages);
    tcase_add_test(tc, login_rehash);
    tcase_add_test(tc, dump_and_restore);
    tcase_add_test(tc, dump_reader_refuses);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(parent, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
