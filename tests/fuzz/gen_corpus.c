/*
 * tests/fuzz/gen_corpus.c — writes the seed corpora in tests/fuzz/corpus/:
 * small, valid inputs of every kind each target takes (one frame of each
 * method in each direction of each wire format, each peer frame kind and VR
 * message type, each op kind and a recorded reply, typical configs, typical
 * store directories, glob cases, memberships and operator addresses), produced by the project's own encoders so
 * they stay valid as the formats evolve. Regenerate with
 *   meson compile -C build fuzz-corpus
 * and commit the result. The fuzzers mutate from these; the fuzz-regress
 * suite replays them on every CI run.
 *
 * Usage: fuzz-gen-corpus OUTDIR JSON_STORE_MODULE [LABEL MODULE OPTIONS]...
 * with one LABEL MODULE OPTIONS triple per transport variant (meson passes
 * every entry of transport_variants).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <parley/store.h>
#include <parley/transport.h>

#include "chat.h"
#include "loader.h"
#include "members.h"
#include "peer.pb-c.h"
#include "snapshot.h"

static const char *outdir;
static int failures;

static void die(const char *what, const char *why)
{
    fprintf(stderr, "fuzz-gen-corpus: %s: %s\n", what, why);
    exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", outdir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path, strerror(errno));
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path, "cannot write");
}

static void put_text(const char *target, const char *name, const char *text)
{
    put(target, name, text, strlen(text));
}

#define S(lit) ((pl_str){ (lit), (uint32_t)(sizeof(lit) - 1) })

/* ---- transport codecs ---- */

static const uint64_t some_ids[] = { 3, 17, 4096 };

static pl_request req_for(uint32_t m)
{
    pl_request r = { .method = m, .request_id = 40 + m, .token = S("0123456789abcdef0123456789abcdef") };
    switch (m) {
    case PL_M_REGISTER:
    case PL_M_LOGIN:
        r.token = (pl_str){ 0 };
        r.username = S("alice");
        r.password = S("correct horse battery");
        r.client_id = 0x1122334455667788ull;
        r.request_no = 1;
        break;
    case PL_M_LIST_USERS:
        r.pattern = S("a*b?");
        r.offset = 10;
        r.limit = 20;
        break;
    case PL_M_SEND:
        r.to = S("bob");
        r.body = S("hello, bob \xe2\x98\x83");
        r.client_id = 0x1122334455667788ull;
        r.request_no = 7;
        break;
    case PL_M_READ:
        r.n = 5;
        r.client_id = 9;
        r.request_no = 8;
        break;
    case PL_M_HISTORY:
        r.offset = 0;
        r.limit = 50;
        break;
    case PL_M_CONVERSATION:
        r.peer = S("bob");
        r.offset = 2;
        r.limit = 3;
        break;
    case PL_M_ACK:
    case PL_M_DELETE:
        r.ids = some_ids;
        r.n_ids = 3;
        break;
    case PL_M_DELETE_ACCOUNT:
        r.password = S("correct horse battery");
        break;
    case PL_M_SUBSCRIBE:
        r.after_id = 12345;
        break;
    case PL_M_STATUS:
    case PL_M_PING:
        r.token = (pl_str){ 0 };
        break;
    default:
        break;
    }
    return r;
}

static const pl_message some_msgs[] = {
    { 101, { "alice", 5 }, { "bob", 3 }, { "hi bob", 6 }, 1700000000000ull, 0 },
    { 102, { "carol", 5 }, { "bob", 3 }, { "\xe2\x98\x83 snow", 8 }, 1700000000500ull, 1 },
};
static const pl_str some_users[] = { { "alice", 5 }, { "alfred", 6 }, { "al.b-c_d", 8 } };
static const pl_server_status some_servers[] = {
    { 0, { "127.0.0.1:8100", 14 }, 1, { "primary", 7 }, 3, 120, 119, 119,
      { "sqlite", 6 }, { "tcp", 3 }, { "9f86d081884c7d65", 16 } },
    { 1, { "127.0.0.1:8101", 14 }, 0, { "down", 4 }, 0, 0, 0, 0,
      { "", 0 }, { "", 0 }, { "", 0 } },
};

static pl_response resp_for(uint32_t m)
{
    pl_response r = { .method = m, .request_id = 40 + m };
    switch (m) {
    case PL_M_LOGIN:
        r.token = S("0123456789abcdef0123456789abcdef");
        r.unread = 4;
        break;
    case PL_M_LIST_USERS:
        r.users = some_users;
        r.n_users = 3;
        r.more = 1;
        break;
    case PL_M_SEND:
        r.id = 103;
        r.time_ms = 1700000001000ull;
        break;
    case PL_M_COUNTS:
        r.unread = 4;
        r.read = 11;
        break;
    case PL_M_READ:
    case PL_M_HISTORY:
    case PL_M_CONVERSATION:
        r.msgs = some_msgs;
        r.n_msgs = 2;
        r.more = m == PL_M_HISTORY;
        break;
    case PL_M_PUSH:
        r.request_id = 0;
        r.msgs = some_msgs;
        r.n_msgs = 1;
        break;
    case PL_M_STATUS:
        r.servers = some_servers;
        r.n_servers = 2;
        break;
    case PL_M_NONE:
        r.request_id = 0;
        r.status = PL_ERR_MALFORMED;
        r.error = S("frame does not decode");
        break;
    default:
        break;
    }
    return r;
}

static void gen_codec(const char *module, const char *label, const char *options)
{
    char err[512], target[128], name[64];
    pl_plugin *p = pl_plugin_load("transport", module, NULL, err, sizeof err);
    const pl_transport_plugin *tp = p ? pl_plugin_transport(p) : NULL;
    if (!tp)
        die(module, p ? "not a transport" : err);
    pl_transport_options o = { "127.0.0.1", 0, 64u * 1024u, options };
    uint8_t *buf;
    size_t len;
    snprintf(target, sizeof target, "codec-%s-req", label);
    for (uint32_t m = PL_M_REGISTER; m < PL_M__COUNT; m++) {
        if (m == PL_M_PUSH)
            continue;
        pl_request r = req_for(m);
        if (tp->encode_request(&o, &r, &buf, &len) != PL_OK) {
            fprintf(stderr, "fuzz-gen-corpus: %s cannot encode a %s request\n", label, pl_method_name(m));
            failures++;
            continue;
        }
        snprintf(name, sizeof name, "%02u-%s", m, pl_method_name(m));
        put(target, name, buf, len);
        free(buf);
    }
    snprintf(target, sizeof target, "codec-%s-resp", label);
    for (uint32_t m = PL_M_NONE; m < PL_M__COUNT; m++) {
        pl_response r = resp_for(m);
        if (tp->encode_response(&o, &r, &buf, &len) != PL_OK) {
            fprintf(stderr, "fuzz-gen-corpus: %s cannot encode a %s response\n", label, pl_method_name(m));
            failures++;
            continue;
        }
        snprintf(name, sizeof name, "%02u-%s", m, pl_method_name(m));
        put(target, name, buf, len);
        free(buf);
    }
    /* an error reply, with a leader to redirect to */
    pl_response e = { .method = PL_M_SEND, .request_id = 9, .status = PL_ERR_NOT_PRIMARY,
                      .error = S("not the primary: see leader"), .leader = S("127.0.0.1:8101") };
    if (tp->encode_response(&o, &e, &buf, &len) == PL_OK) {
        put(target, "99-not-primary", buf, len);
        free(buf);
    }
    pl_plugin_unload(p);
}

/* ---- peer frames ---- */

static void put_peer(const char *name, const Parley__Peer__PeerFrame *f)
{
    size_t len = parley__peer__peer_frame__get_packed_size(f);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        die("peer", "out of memory");
    parley__peer__peer_frame__pack(f, buf);
    put("peer", name, buf, len);
    free(buf);
}

static void gen_peer(void)
{
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = 2; /* PL_PEER_VERSION */
    h.from = 2;
    h.n = 3;
    h.host = "127.0.0.1";
    h.peer_port = 9102;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    f.hello = &h;
    put_peer("hello", &f);
    static uint8_t nonce[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };
    h.nonce.data = nonce;
    h.nonce.len = sizeof nonce;
    h.host = "fd00:1::2";
    put_peer("hello-nonce-ipv6", &f);
    h.nonce.len = 0;
    h.host = "peer-2.cluster.example";
    put_peer("hello-name", &f);

    Parley__Peer__Auth a = PARLEY__PEER__AUTH__INIT;
    a.mac.data = nonce;
    a.mac.len = sizeof nonce;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_AUTH;
    f.auth = &a;
    put_peer("auth", &f);

    uint8_t *op_bytes = NULL;
    size_t op_len = 0;
    pl_op op = { .kind = PL_OP_SEND, .client_id = 5, .request_no = 2, .time_ms = 1700000000000ull,
                 .uid = 1, .name = S("bob"), .body = S("hi") };
    if (pl_op_encode(&op, &op_bytes, &op_len) != PL_OK)
        die("peer", "cannot encode an op");
    Parley__Peer__Entry es[3];
    Parley__Peer__Entry *ep[3];
    for (int i = 0; i < 3; i++) {
        parley__peer__entry__init(&es[i]);
        es[i].op = 11 + (uint64_t)i;
        es[i].view = 2;
        es[i].data.data = op_bytes;
        es[i].data.len = op_len;
        ep[i] = &es[i];
    }
    static const char *const types[] = { NULL, "prepare", "prepare-ok", "commit", "svc",
                                         "dvc", "start-view", "get-state", "new-state" };
    for (uint32_t t = 1; t <= 8; t++) {
        Parley__Peer__Vr v = PARLEY__PEER__VR__INIT;
        v.type = t;
        v.view = 2;
        v.op = 13;
        v.commit = 10;
        v.ts = 1700000000000ull;
        if (t == 1 || t == 5 || t == 6 || t == 8) {
            v.lnv = 2;
            v.anchor_op = 10;
            v.anchor_view = 2;
            v.n_entries = 3;
            v.entries = ep;
        }
        f.body_case = PARLEY__PEER__PEER_FRAME__BODY_VR;
        f.vr = &v;
        char name[32];
        snprintf(name, sizeof name, "vr-%u-%s", t, types[t]);
        put_peer(name, &f);
    }
    free(op_bytes);

    Parley__Peer__StatusRequest q = PARLEY__PEER__STATUS_REQUEST__INIT;
    q.query_id = 77;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST;
    f.status_request = &q;
    put_peer("status-request", &f);

    Parley__Peer__StatusReply r = PARLEY__PEER__STATUS_REPLY__INIT;
    r.query_id = 77;
    r.id = 1;
    r.address = "127.0.0.1:8101";
    r.role = "backup";
    r.view = 2;
    r.op = 13;
    r.commit = 10;
    r.applied = 10;
    r.store = "json";
    r.transport = "tcp";
    r.digest = "9f86d081884c7d659a2feaa0c55ad015";
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REPLY;
    f.status_reply = &r;
    put_peer("status-reply", &f);
}

/* ---- VR streams (fuzz_vr.c): [sender][ms/4][len16][PeerFrame]... ---- */

typedef struct stream {
    uint8_t buf[4096];
    size_t len;
} stream;

static void st_frame(stream *st, uint8_t who, uint8_t ticks, const Parley__Peer__PeerFrame *f)
{
    size_t n = parley__peer__peer_frame__get_packed_size(f);
    if (st->len + 4 + n > sizeof st->buf)
        die("vr", "stream too long");
    st->buf[st->len++] = who;
    st->buf[st->len++] = ticks;
    st->buf[st->len++] = (uint8_t)(n >> 8);
    st->buf[st->len++] = (uint8_t)n;
    parley__peer__peer_frame__pack(f, st->buf + st->len);
    st->len += n;
}

static void st_vr(stream *st, uint8_t who, uint8_t ticks, uint32_t type, uint64_t view,
                  uint64_t op, uint64_t commit, uint64_t lnv, uint64_t anchor_op,
                  uint64_t anchor_view, uint32_t n_entries, uint64_t entry_view)
{
    static const uint8_t data[] = "seed-op";
    Parley__Peer__Entry es[8];
    Parley__Peer__Entry *ep[8];
    Parley__Peer__Vr v = PARLEY__PEER__VR__INIT;
    for (uint32_t i = 0; i < n_entries && i < 8; i++) {
        parley__peer__entry__init(&es[i]);
        es[i].op = anchor_op + 1 + i;
        es[i].view = entry_view;
        es[i].data.data = (uint8_t *)data;
        es[i].data.len = sizeof data - 1;
        ep[i] = &es[i];
    }
    v.type = type;
    v.view = view;
    v.op = op;
    v.commit = commit;
    v.lnv = lnv;
    v.anchor_op = anchor_op;
    v.anchor_view = anchor_view;
    v.ts = 1000000;
    v.n_entries = n_entries;
    v.entries = n_entries ? ep : NULL;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_VR;
    f.vr = &v;
    st_frame(st, who, ticks, &f);
}

/* fuzz_vr.c's replica starts in view 1 with ops 1..4 (view 1), 2 committed;
 * the primary of view v is server v mod n. */
static void gen_vr(void)
{
    stream st;

    /* a backup (server 0 of 3) following primary 1: PREPAREs, then a COMMIT */
    st.len = 0;
    st.buf[st.len++] = 0;
    st_vr(&st, 1, 5, 1, 1, 7, 4, 0, 4, 1, 3, 1);
    st_vr(&st, 1, 5, 1, 1, 9, 7, 0, 7, 1, 2, 1);
    st_vr(&st, 1, 25, 3, 1, 9, 9, 0, 0, 0, 0, 0);
    put("vr", "backup-prepare-commit", st.buf, st.len);

    /* the primary (server 1 of 3) proposing, acked by both backups */
    st.len = 0;
    st.buf[st.len++] = 2;
    st_vr(&st, 0x80, 1, 2, 1, 4, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 0x82, 1, 2, 1, 5, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 0x80, 1, 2, 1, 6, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 2, 1, 7, 1, 3, 0, 0, 0, 0, 0, 0);
    put("vr", "primary-prepare-ok-get-state", st.buf, st.len);

    /* a view change to view 2 (primary 2): SVCs, then START-VIEW */
    st.len = 0;
    st.buf[st.len++] = 0;
    st_vr(&st, 2, 2, 4, 2, 0, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 1, 2, 4, 2, 0, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 2, 2, 6, 2, 6, 3, 2, 2, 1, 4, 2);
    st_vr(&st, 2, 30, 3, 2, 6, 6, 0, 0, 0, 0, 0);
    put("vr", "view-change-start-view", st.buf, st.len);

    /* the new primary (server 2 of 3) collecting DO-VIEW-CHANGEs */
    st.len = 0;
    st.buf[st.len++] = 4;
    st_vr(&st, 0, 2, 4, 2, 0, 0, 0, 0, 0, 0, 0);
    st_vr(&st, 0, 2, 5, 2, 5, 2, 1, 2, 1, 3, 1);
    st_vr(&st, 1, 2, 5, 2, 4, 2, 1, 2, 1, 2, 1);
    st_vr(&st, 0, 2, 2, 2, 5, 0, 0, 0, 0, 0, 0);
    put("vr", "new-primary-dvc", st.buf, st.len);

    /* a lagging backup (server 3 of 5) joining a later view by state transfer */
    st.len = 0;
    st.buf[st.len++] = 7;
    st_vr(&st, 4, 2, 1, 4, 12, 10, 0, 11, 4, 1, 4);
    st_vr(&st, 4, 2, 8, 4, 8, 6, 0, 4, 1, 4, 3);
    put("vr", "state-transfer", st.buf, st.len);
}

/* ---- ops and recorded replies ---- */

static void gen_op(void)
{
    static const uint8_t token_hash[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };
    pl_str th = { (const char *)token_hash, 32 };
    pl_op ops[PL_OP__COUNT] = {
        [PL_OP_NOOP] = { .kind = PL_OP_NOOP, .time_ms = 1700000000000ull },
        [PL_OP_REGISTER] = { .kind = PL_OP_REGISTER, .client_id = 5, .request_no = 1,
                             .time_ms = 1700000000001ull, .name = S("alice"),
                             .pwhash = S("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA") },
        [PL_OP_LOGIN] = { .kind = PL_OP_LOGIN, .client_id = 5, .request_no = 2, .uid = 1,
                          .time_ms = 1700000000002ull, .name = S("alice"), .token_hash = th },
        [PL_OP_LOGOUT] = { .kind = PL_OP_LOGOUT, .uid = 1, .token_hash = th },
        [PL_OP_SEND] = { .kind = PL_OP_SEND, .client_id = 5, .request_no = 3, .uid = 1,
                         .time_ms = 1700000000003ull, .name = S("bob"), .body = S("hello \xe2\x98\x83") },
        [PL_OP_READ] = { .kind = PL_OP_READ, .uid = 2, .n = 10 },
        [PL_OP_ACK] = { .kind = PL_OP_ACK, .uid = 2, .ids = some_ids, .n_ids = 3 },
        [PL_OP_DELETE] = { .kind = PL_OP_DELETE, .uid = 2, .ids = some_ids, .n_ids = 2 },
        [PL_OP_DELETE_ACCOUNT] = { .kind = PL_OP_DELETE_ACCOUNT, .uid = 2 },
        [PL_OP_RECONFIG] = { .kind = PL_OP_RECONFIG, .time_ms = 1700000000007ull,
                             .body = S("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":"
                                       "\"127.0.0.1\",\"port\":8100,\"peer_port\":9100}]}") },
        [PL_OP_LOGIN_REHASH] = { .kind = PL_OP_LOGIN_REHASH, .uid = 1, .time_ms = 1700000000004ull,
                                 .name = S("alice"), .token_hash = th,
                                 .pwhash = S("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA") },
    };
    static const char *const names[PL_OP__COUNT] = { "noop", "register", "login", "logout", "send",
                                                     "read", "ack", "delete", "delete-account",
                                                     "reconfig", "import", "restore",
                                                     "login-rehash" };
    /* Import and restore ops carry a batch of their own in the body. */
    pl_import_rec irecs[] = {
        { .kind = 'U', .name = S("alice"),
          .pwhash = S("$pbkdf2-sha256$i=100000$AAECAwQFBgcICQoLDA0ODw==$"
                      "trmn14eaJqetmcWSJJwUWVLKUOyf765hiEQzeYnvalM=") },
        { .kind = 'M', .to = S("alice"), .from = S("ghost"), .seq = 1, .read = 1, .body = S("hi") },
    };
    uint8_t *ib = NULL, *rb = NULL;
    size_t il = 0, rl = 0;
    pl_snapshot_rec rrecs[2] = { { .tag = 'A', .a = { 1, S("alice"), S("$argon2id$x"), 5 } },
                                 { .tag = 'M', .m = { 1, 1, 1, S("alice"), S("alice"), S("note"),
                                                      6, PL_MSGF_READ } } };
    pl_restore_batch rb_ = { PL_RESTORE_BEGIN, 2, 2, rrecs, 2 };
    if (pl_import_batch_encode(irecs, 2, &ib, &il) != PL_OK ||
        pl_restore_batch_encode(&rb_, &rb, &rl) != PL_OK)
        die("op", "batches");
    ops[PL_OP_IMPORT] = (pl_op){ .kind = PL_OP_IMPORT, .time_ms = 1700000000005ull,
                                 .body = { (const char *)ib, (uint32_t)il } };
    ops[PL_OP_RESTORE] = (pl_op){ .kind = PL_OP_RESTORE, .time_ms = 1700000000006ull,
                                  .body = { (const char *)rb, (uint32_t)rl } };
    for (uint32_t k = 0; k < PL_OP__COUNT; k++) {
        uint8_t *buf;
        size_t len;
        if (pl_op_encode(&ops[k], &buf, &len) != PL_OK)
            die("op", names[k]);
        char name[32];
        snprintf(name, sizeof name, "%u-%s", k, names[k]);
        put("op", name, buf, len);
        free(buf);
    }
    free(ib);
    free(rb);
    pl_response replies[] = {
        { .method = PL_M_SEND, .id = 103, .time_ms = 1700000001000ull },
        { .method = PL_M_READ, .msgs = some_msgs, .n_msgs = 2, .more = 1 },
        { .method = PL_M_LOGIN, .status = PL_ERR_AUTH, .error = S("wrong username or password") },
        { .method = PL_M_REGISTER },
    };
    static const char *const rnames[] = { "send", "read", "login-error", "register" };
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        uint8_t *buf;
        size_t len;
        if (pl_op_reply_encode(&replies[i], &buf, &len) != PL_OK)
            die("op-reply", rnames[i]);
        put("op-reply", rnames[i], buf, len);
        free(buf);
    }
}

/* ---- configs ---- */

static void gen_config(void)
{
    put_text("config", "seed-style", "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100}]}");
    put_text("config", "three-servers",
             "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100},\n"
             "              {\"host\": \"127.0.0.1\", \"port\": 8200, \"peer_port\": 9200},\n"
             "              {\"host\": \"::1\", \"port\": 8300}]}\n");
    put_text("config", "full",
             "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100}],\n"
             " \"transport\": {\"name\": \"tcp\", \"codec\": \"json\"},\n"
             " \"store\": {\"name\": \"json\", \"sync\": false, \"checkpoint_ops\": 100},\n"
             " \"data_dir\": \"/var/lib/parley\", \"plugin_dir\": \"/usr/lib/parley\",\n"
             " \"log_level\": \"debug\", \"max_frame\": 65536,\n"
             " \"election_timeout_ms\": 1500, \"heartbeat_ms\": 50,\n"
             " \"password_hash\": {\"opslimit\": 2, \"memlimit\": 8388608},\n"
             " \"hash_workers\": 3, \"failback\": false}\n");
    put_text("config", "strings", "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100}],"
                                  " \"transport\": \"grpcish\", \"store\": \"sqlite\"}");
    put_text("config", "bad-port", "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 70000}]}");
}

/* ---- json store directories ---- */

static void quiet_log(void *ud, int level, const char *fmt, ...)
{
    (void)ud;
    (void)level;
    (void)fmt;
}

static uint8_t *slurp(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb)
                die(path, "out of memory");
            buf = nb;
        }
        size_t n = fread(buf + *len, 1, cap - *len, f);
        if (!n)
            break;
        *len += n;
    }
    fclose(f);
    return buf;
}

/* A state transfer snapshot without its trailing BLAKE2b, which
 * fuzz_snapshot.c appends. */
static void put_snapshot(const pl_store_plugin *sp, pl_store *s, const char *name)
{
    uint8_t *buf;
    size_t len;
    uint64_t op;
    if (pl_snapshot_export(sp, s, 1, &buf, &len, &op) != PL_OK || len < 32)
        die("snapshot", "cannot export");
    put("snapshot", name, buf, len - 32);
    free(buf);
}

/* checkpoint \0 meta \0 log, as fuzz_store_json.c takes them; cut drops
 * that many bytes off the log's end (a torn last line). */
static void put_store(const char *dir, const char *name, size_t cut)
{
    size_t lc, lm, ll;
    uint8_t *c = slurp(dir, "checkpoint.json", &lc);
    uint8_t *m = slurp(dir, "meta.json", &lm);
    uint8_t *l = slurp(dir, "log.jsonl", &ll);
    if (cut > ll)
        cut = ll;
    size_t n = lc + 1 + lm + 1 + ll - cut;
    uint8_t *buf = malloc(n);
    if (!buf)
        die("store", "out of memory");
    if (lc)
        memcpy(buf, c, lc);
    buf[lc] = 0;
    if (lm)
        memcpy(buf + lc + 1, m, lm);
    buf[lc + 1 + lm] = 0;
    if (ll - cut)
        memcpy(buf + lc + lm + 2, l, ll - cut);
    put("store-json", name, buf, n);
    free(buf);
    free(c);
    free(m);
    free(l);
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(dir);
}

static void gen_store(const char *module)
{
    char err[512], dir[] = "/tmp/parley-gen-corpus-XXXXXX";
    pl_plugin *p = pl_plugin_load("store", module, NULL, err, sizeof err);
    const pl_store_plugin *sp = p ? pl_plugin_store(p) : NULL;
    if (!sp)
        die(module, p ? "not a store" : err);
    if (!mkdtemp(dir))
        die("mkdtemp", strerror(errno));
    pl_store_host host = { PL_STORE_ABI_VERSION, NULL, quiet_log };
    pl_store_options o = { dir, 0, "{\"name\":\"json\"}" };
    pl_store *s;

    /* a log only: what a fresh server has after a few batches */
    if (sp->open(&host, &o, &s, err, sizeof err) != PL_OK)
        die("store open", err);
    uint8_t *ob[5];
    size_t ol[5];
    pl_op ops[5] = {
        { .kind = PL_OP_REGISTER, .name = S("alice"), .pwhash = S("$argon2id$v=19$x") },
        { .kind = PL_OP_REGISTER, .name = S("bob"), .pwhash = S("$argon2id$v=19$y") },
        { .kind = PL_OP_SEND, .uid = 1, .name = S("bob"), .body = S("hi bob") },
        { .kind = PL_OP_READ, .uid = 2, .n = 1 },
        { .kind = PL_OP_ACK, .uid = 2, .ids = some_ids, .n_ids = 1 },
    };
    pl_log_entry es[5];
    for (int i = 0; i < 5; i++) {
        if (pl_op_encode(&ops[i], &ob[i], &ol[i]) != PL_OK)
            die("store", "cannot encode an op");
        es[i] = (pl_log_entry){ (uint64_t)i + 1, 1, ob[i], (uint32_t)ol[i] };
    }
    if (sp->log_append(s, es, 5) != PL_OK || sp->meta_set(s, "view", 1) != PL_OK)
        die("store", "cannot append");
    put_snapshot(sp, s, "empty-state");
    sp->close(s);
    put_store(dir, "log-only", 0);
    put_store(dir, "log-torn-tail", 7);

    /* state in the checkpoint, more log after it, replica metadata */
    if (sp->open(&host, &o, &s, err, sizeof err) != PL_OK)
        die("store reopen", err);
    pl_account_rec a1 = { 1, S("alice"), S("$argon2id$v=19$x"), 1700000000000ull };
    pl_account_rec a2 = { 2, S("bob"), S("$argon2id$v=19$y"), 1700000000001ull };
    static const char th[32] = "0123456789abcdef0123456789abcde";
    pl_session_rec se = { { th, 32 }, 1, 1700000000002ull };
    pl_message_rec m1 = { 1, 1, 2, S("alice"), S("bob"), S("hi bob"), 1700000000003ull, 0 };
    pl_message_rec m2 = { 2, 2, 1, S("bob"), S("alice"), S("hi \xe2\x98\x83"), 1700000000004ull,
                          PL_MSGF_READ | PL_MSGF_DEL_SENDER };
    uint8_t *rb;
    size_t rl;
    pl_response rr = { .method = PL_M_SEND, .id = 1, .time_ms = 1700000000003ull };
    if (pl_op_reply_encode(&rr, &rb, &rl) != PL_OK)
        die("store", "cannot encode a reply");
    pl_client_rec cr = { 5, 3, 3, { (const char *)rb, (uint32_t)rl } };
    if (sp->begin(s) != PL_OK || sp->account_put(s, &a1) != PL_OK || sp->account_put(s, &a2) != PL_OK ||
        sp->session_put(s, &se) != PL_OK || sp->message_put(s, &m1) != PL_OK ||
        sp->message_put(s, &m2) != PL_OK || sp->client_put(s, &cr) != PL_OK ||
        sp->meta_set(s, "next_id", 3) != PL_OK || sp->commit(s, 5) != PL_OK)
        die("store", "cannot write state");
    free(rb);
    put_snapshot(sp, s, "accounts-sessions-messages-clients");
    pl_log_entry more = { 6, 2, ob[2], (uint32_t)ol[2] };
    if (sp->log_append(s, &more, 1) != PL_OK || sp->meta_set(s, "view", 2) != PL_OK ||
        sp->meta_set(s, "lnv", 2) != PL_OK)
        die("store", "cannot append");
    sp->close(s);
    put_store(dir, "checkpoint-and-log", 0);
    put_store(dir, "checkpoint-log-torn", 3);
    for (int i = 0; i < 5; i++)
        free(ob[i]);
    rm_rf(dir);
    pl_plugin_unload(p);
    put("store-json", "empty", "", 0);
}

/* ---- glob ---- */

static void gen_glob(void)
{
    static const char *const cases[][2] = {
        { "plain", "alice|alice" },     { "star", "al*|alice" },
        { "qmark", "b?b|bob" },         { "mixed", "*a*e|alice" },
        { "nomatch", "a*z|alice" },     { "empty", "|" },
        { "allstar", "*|x.y-z_9" },     { "many", "*a*a*a*a*b|aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        put_text("glob", cases[i][0], cases[i][1]);
}

/* ---- members ---- */

static void put_members(const char *name, uint64_t epoch, uint64_t op, const pl_server_conf *s,
                        size_t n)
{
    pl_members m;
    char *text;
    size_t len;
    if (pl_members_from_config(&m, s, n) != PL_OK)
        die("members", name);
    m.epoch = epoch;
    m.op = op;
    if (pl_members_encode(&m, &text, &len) != PL_OK)
        die("members", name);
    put("members", name, text, len);
    free(text);
    pl_members_clear(&m);
}

static void gen_members(void)
{
    static const pl_server_conf three[] = {
        { "127.0.0.1", 8100, 9100, 0 }, { "127.0.0.1", 8101, 9101, 0 },
        { "127.0.0.1", 8102, 9102, 0 },
    };
    static const pl_server_conf mixed[] = {
        { "db-1.example.com", 8100, 9100, 0 }, { "::1", 8100, 9100, 0 },
        { "fe80::1%eth0", 8200, 8300, 0 }, { "10.0.0.5", 65534, 1, 0 },
        { "x_y", 1, 2, 0 },
    };
    put_members("epoch0-one", 0, 0, three, 1);
    put_members("epoch2-three", 2, 1234, three, 3);
    put_members("mixed-hosts", 7, 9007199254740991ull, mixed, 5);
    put_text("members", "spaced", " {\"servers\": [ {\"peer_port\": 9100, \"port\": 8100,"
                                  " \"host\": \"h\"} ],\n \"op\": 5, \"epoch\": 1 }\n");
    put_text("members", "addr-plain", "127.0.0.1:8104");
    put_text("members", "addr-peer", "db-3.example.com:8100:9200");
    put_text("members", "addr-ipv6", "[::1]:8100:9100");
}

/* ---- dump lines (core/dump.c) ---- */

static void gen_dump(void)
{
    put_text("dump", "header", "{\"parley_dump\":1,\"op\":4,\"next_uid\":3,\"next_msg_id\":2,"
             "\"digest\":\"4c267b4cf14b6eed91e1840db21cbabe4fa009e22a274129ac77c13b156fa634\","
             "\"sessions\":true,\"created_ms\":1796531481710,\"server\":\"127.0.0.1:8100\","
             "\"store\":\"sqlite\",\"parley\":\"0.1.0\"}");
    put_text("dump", "account", "{\"account\":{\"uid\":1,\"name\":\"alice\",\"pwhash\":"
             "\"$argon2id$v=19$m=8,t=1,p=1$GXRSrq3$jC5NHmRV4\",\"created_ms\":1796531481679}}");
    put_text("dump", "account-b64", "{\"account\":{\"uid\":2,\"name\":\"bob\",\"pwhash_b64\":"
             "\"AAEC\",\"created_ms\":1}}");
    put_text("dump", "session", "{\"session\":{\"token_hash\":\"b083376690acf89a87af07c7b55b0607"
             "6331568481eadc87c08114b1b1419de5\",\"uid\":1,\"created_ms\":1796531481696}}");
    put_text("dump", "message", "{\"message\":{\"id\":1,\"from_uid\":1,\"to_uid\":2,\"from\":"
             "\"alice\",\"to\":\"bob\",\"body\":\"hi \\u00e9\",\"time_ms\":1796531481706,"
             "\"read\":false,\"deleted_by_sender\":false,\"deleted_by_recipient\":true}}");
    put_text("dump", "client", "{\"client\":{\"client_id\":\"9832796757325890629\","
             "\"request_no\":1,\"op\":4,\"reply\":\"AQUAAAAAAAAA\"}}");
    put_text("dump", "end", "{\"end\":{\"accounts\":2,\"sessions\":1,\"messages\":1,"
             "\"clients\":3}}");
}

int main(int argc, char **argv)
{
    if (argc < 3 || (argc - 3) % 3 != 0) {
        fprintf(stderr, "usage: %s OUTDIR JSON_STORE_MODULE [LABEL MODULE OPTIONS]...\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST)
        die(outdir, strerror(errno));
    for (int i = 3; i + 2 < argc; i += 3)
        gen_codec(argv[i + 1], argv[i], argv[i + 2]);
    gen_peer();
    gen_vr();
    gen_op();
    gen_config();
    gen_store(argv[2]);
    gen_glob();
    gen_members();
    gen_dump();
    return failures ? 1 : 0;
}
