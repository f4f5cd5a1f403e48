/*
 * core/peer.c — the peer network of core/peer.h on libevent bufferevents.
 *
 * Everything read from a peer socket is untrusted until the Hello has been
 * checked, and bounded after that: frames over PL_PEER_MAX_FRAME close the
 * connection before anything is buffered, protobuf-c validates the
 * encoding, and every field is range-checked before it reaches the VR
 * module (which itself ignores anything out of place).
 *
 * TLS (config "tls" with "peer": true, the default once "tls" is given):
 * every link is mutual TLS under the same frames. Both ends present a
 * certificate signed by tls.ca; the dialler checks that the acceptor's names
 * the host it dialled, and the acceptor, once the Hello says which address
 * is calling, that the dialler's names that host. So a host without a
 * certificate from the cluster's CA cannot join, and a member cannot pose
 * as another member on a different host. A failed handshake closes that
 * connection with a log line; nothing else changes.
 *
 * Slots and addresses: outgoing links belong to an address (the one they
 * dial), not to a slot, so a new slot table renumbers them in place;
 * incoming connections keep the address their Hello named and look their
 * slot up again whenever the table changes. Everything an identity check
 * compares or a proof covers is that address as the Hellos carry it.
 */
#include "peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <sodium.h>

#include "chat.h"
#include "log.h"
#include "peer.pb-c.h"

#define OUT_BUFFER_MAX (512u * 1024u * 1024u) /* drop messages past this backlog */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 1000
/* A connection must finish its Hello (and, with a cluster secret, its Auth)
 * within this time, or it is closed: a stranger cannot hold sockets open. */
#define HANDSHAKE_MS 5000
#define HANDSHAKE_MAX_FRAME 1024u
#define NONCE_BYTES 32u
/* At most one line per this many seconds about failed TLS handshakes: a
 * misconfigured peer re-dials every second. */
#define TLS_LOG_EVERY_S 10
/* A link to an address no longer listed gets this long to write what was
 * queued on it (the last COMMIT a removed server must still see). */
#define RETIRE_MS 2000

typedef struct peer_in {
    pl_peer *p;
    struct bufferevent *bev;
    int hello;                /* its Hello was checked: host, peer_port are set */
    int slot;                 /* current slot of that address, -1 when unlisted */
    int authed;               /* Hello (and Auth, with a secret) checked */
    int warned_unmapped;      /* logged that its messages are ignored */
    char host[PL_PEER_HOST_MAX + 1];  /* the address its Hello named */
    uint16_t peer_port;
    uint8_t nonce[NONCE_BYTES];       /* our challenge */
    uint8_t peer_nonce[NONCE_BYTES];  /* the dialler's */
    int tls_up;               /* TLS handshake finished */
    char addr[64];            /* "ip:port", for log lines */
    struct peer_in *next;
} peer_in;

typedef struct peer_out {
    pl_peer *p;
    uint32_t to;              /* current slot */
    char *host;               /* the address dialled: the link's identity, */
    uint16_t peer_port;       /*   which outlives renumbering */
    struct bufferevent *bev;
    int up;
    uint32_t retry_ms;
    struct event *retry;      /* re-dial; once retired, the RETIRE_MS deadline */
    int retired;              /* address no longer listed: closing once written */
    int warned_backlog;
    int got_hello;            /* the acceptor's Hello arrived and checked out */
    uint32_t op_kinds;        /* the op kinds its Hello says it applies (0: an older server) */
    uint8_t nonce[NONCE_BYTES];       /* our challenge */
    uint8_t peer_nonce[NONCE_BYTES];  /* the acceptor's */
    int tls_up;               /* TLS handshake finished on this connection */
    int tls_warned;           /* a TLS failure was logged since the link was last up */
    struct peer_out *next;    /* on pl_peer.retired */
} peer_out;

struct pl_peer {
    struct event_base *base;
    const pl_config *cfg;
    uint32_t self;
    uint32_t n;
    pl_server_conf servers[PL_VR_MAX_REPLICAS]; /* the slot table; hosts owned */
    pl_peer_cb cb;
    struct evconnlistener *listener;
    peer_in *ins;
    peer_out *out[PL_VR_MAX_REPLICAS];  /* by slot; NULL for self */
    peer_out *retired;        /* links writing their last output before closing */
    uint64_t accepted;        /* incoming connections ever accepted */
    struct dial_via *via;     /* PARLEY_PEER_DIAL entries */
    size_t n_via;
    int auth;                 /* a cluster secret is configured */
    uint8_t key[crypto_auth_KEYBYTES]; /* derived from it (auth_setup) */
    SSL_CTX *tls;             /* mutual TLS on every link, or NULL */
    time_t tls_logged;        /* last incoming-handshake failure line */
    unsigned tls_quiet;       /* failures not logged since */
};

/* ---- framing ---- */

static int write_frame(struct bufferevent *bev, const Parley__Peer__PeerFrame *f)
{
    size_t len = parley__peer__peer_frame__get_packed_size(f);
    if (len > PL_PEER_MAX_FRAME)
        return PL_ERR_FRAME_TOO_LARGE;
    uint8_t *buf = malloc(len + 4);
    if (!buf)
        return PL_ERR_NOMEM;
    buf[0] = (uint8_t)(len >> 24);
    buf[1] = (uint8_t)(len >> 16);
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    parley__peer__peer_frame__pack(f, buf + 4);
    int rc = bufferevent_write(bev, buf, len + 4) == 0 ? PL_OK : PL_ERR_IO;
    free(buf);
    return rc;
}

/* Take one whole frame off the input and decode it into *f. Returns PL_OK,
 * PL_ERR_AGAIN (need more bytes), PL_ERR_INVALID (a well-formed frame that
 * fails its checks: dropped, the link stays), or PL_ERR_FRAME_TOO_LARGE /
 * PL_ERR_MALFORMED (close the connection). */
static int read_frame(struct bufferevent *bev, uint32_t max, pl_peer_frame *f)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    memset(f, 0, sizeof *f);
    if (evbuffer_get_length(in) < 4)
        return PL_ERR_AGAIN;
    uint8_t h[4];
    evbuffer_copyout(in, h, 4);
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (len > max)
        return PL_ERR_FRAME_TOO_LARGE;
    if (evbuffer_get_length(in) < (size_t)len + 4)
        return PL_ERR_AGAIN;
    evbuffer_drain(in, 4);
    uint8_t *buf = evbuffer_pullup(in, len);
    if (!buf && len)
        return PL_ERR_NOMEM;
    int rc = pl_peer_decode_frame(buf, len, f);
    evbuffer_drain(in, len);
    return rc;
}

static void send_hello(pl_peer *p, struct bufferevent *bev, const uint8_t *nonce)
{
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = PL_PEER_VERSION;
    h.from = p->self;
    h.n = p->n;
    h.host = p->servers[p->self].host;
    h.peer_port = p->servers[p->self].peer_port;
    h.op_kinds = PL_OP__COUNT;
    if (nonce) {
        h.nonce.data = (uint8_t *)nonce;
        h.nonce.len = NONCE_BYTES;
    }
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    f.hello = &h;
    write_frame(bev, &f);
}

/* ---- cluster secret (peer.proto, message Auth) ----
 *
 * Each side sends a fresh random nonce in its Hello and then proves it knows
 * the secret with crypto_auth over both nonces and both sides' identities,
 * the (host, peer_port) their Hellos named. Fresh nonces from both ends make
 * a recorded proof useless on another connection; the role byte and the
 * identities keep a proof from being reflected back to its sender or
 * replayed as another server's. The key is not the secret itself but
 * derived from it, so the secret can be any length and this use of it is
 * separate from any other. */

/* One side's identity as the proof covers it: host length (1 byte), host,
 * peer_port (2 bytes big-endian). Length-prefixed so that no two
 * identities run together into the same bytes. */
static size_t put_identity(uint8_t *out, const char *host, uint16_t port)
{
    size_t len = strlen(host);
    out[0] = (uint8_t)len;
    memcpy(out + 1, host, len);
    out[1 + len] = (uint8_t)(port >> 8);
    out[2 + len] = (uint8_t)port;
    return len + 3;
}

typedef struct auth_ids {
    const uint8_t *dial_nonce, *acc_nonce;
    const char *dial_host, *acc_host;   /* each 1..PL_PEER_HOST_MAX bytes */
    uint16_t dial_port, acc_port;
} auth_ids;

static void auth_mac(const pl_peer *p, uint8_t role, const auth_ids *a,
                     uint8_t mac[crypto_auth_BYTES])
{
    uint8_t msg[16 + 1 + 2 * NONCE_BYTES + 2 * (3 + PL_PEER_HOST_MAX)];
    memset(msg, 0, 16);
    memcpy(msg, "parley-peer-v2", 14);
    msg[16] = role;
    memcpy(msg + 17, a->dial_nonce, NONCE_BYTES);
    memcpy(msg + 17 + NONCE_BYTES, a->acc_nonce, NONCE_BYTES);
    size_t len = 17 + 2 * NONCE_BYTES;
    len += put_identity(msg + len, a->dial_host, a->dial_port);
    len += put_identity(msg + len, a->acc_host, a->acc_port);
    crypto_auth(mac, msg, len, p->key);
}

static int auth_check(const pl_peer *p, const pl_peer_frame *f, uint8_t role, const auth_ids *a)
{
    uint8_t want[crypto_auth_BYTES];
    if (f->kind != PL_PEER_F_AUTH || f->mac_len != crypto_auth_BYTES)
        return 0;
    auth_mac(p, role, a, want);
    return sodium_memcmp(want, f->mac, crypto_auth_BYTES) == 0;
}

static void send_auth(pl_peer *p, struct bufferevent *bev, uint8_t role, const auth_ids *a)
{
    uint8_t mac[crypto_auth_BYTES];
    auth_mac(p, role, a, mac);
    Parley__Peer__Auth m = PARLEY__PEER__AUTH__INIT;
    m.mac.data = mac;
    m.mac.len = sizeof mac;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_AUTH;
    f.auth = &m;
    write_frame(bev, &f);
}

/* The identities of a link we dialled: ours, and the address we dialled
 * (which the acceptor's Hello was checked to name). */
static auth_ids out_ids(const peer_out *o)
{
    const pl_server_conf *me = &o->p->servers[o->p->self];
    return (auth_ids){ .dial_nonce = o->nonce, .acc_nonce = o->peer_nonce,
                       .dial_host = me->host, .dial_port = me->peer_port,
                       .acc_host = o->host, .acc_port = o->peer_port };
}

/* The identities of a connection we accepted: the address its Hello named,
 * and ours. */
static auth_ids in_ids(const peer_in *c)
{
    const pl_server_conf *me = &c->p->servers[c->p->self];
    return (auth_ids){ .dial_nonce = c->peer_nonce, .acc_nonce = c->nonce,
                       .dial_host = c->host, .dial_port = c->peer_port,
                       .acc_host = me->host, .acc_port = me->peer_port };
}

/* ---- TLS ---- */

/* The cause of a failed OpenSSL call: the oldest queued error. Clears the
 * thread's queue so nothing stale is blamed on a later connection. */
static void tls_err_text(unsigned long e, char *out, size_t outlen)
{
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (e && ERR_SYSTEM_ERROR(e))
        snprintf(out, outlen, "%s", strerror(ERR_GET_REASON(e)));
    else if (r)
        snprintf(out, outlen, "%s", r);
    else if (e)
        ERR_error_string_n(e, out, outlen);
    else
        snprintf(out, outlen, "unknown TLS error");
}

static int tls_setup_fail(const pl_peer *p, char *err, size_t errlen, const char *key,
                          const char *path)
{
    char why[160];
    tls_err_text(ERR_get_error(), why, sizeof why);
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s: %s: %s", p->cfg->path ? p->cfg->path : "(config)", key,
             path, why);
    return PL_ERR_CONFIG;
}

/* One context for both directions: a link's SSL takes the accept or the
 * connect side from libevent. FAIL_IF_NO_PEER_CERT makes the acceptor
 * demand the dialler's certificate. Peer certificates are used both ways,
 * so their extended key usage (if any) must allow serverAuth and clientAuth. */
static int tls_setup(pl_peer *p, char *err, size_t errlen)
{
    const pl_tls_conf *t = &p->cfg->tls;
    if (!t->enabled || !t->peer)
        return PL_OK;
    if (!t->cert || !t->key || !t->ca) {
        snprintf(err, errlen, "%s: tls.%s: missing: peer links use mutual TLS (tls.peer is "
                 "true), which needs cert, key and ca", p->cfg->path ? p->cfg->path : "(config)",
                 !t->cert ? "cert" : !t->key ? "key" : "ca");
        return PL_ERR_CONFIG;
    }
    p->tls = SSL_CTX_new(TLS_method());
    if (!p->tls)
        return tls_setup_fail(p, err, errlen, "tls", "context");
    SSL_CTX_set_min_proto_version(p->tls, TLS1_2_VERSION);
    /* Frames are self-delimiting, so a missing close_notify loses nothing
     * that the framing would not notice; renegotiation has no use here. */
    SSL_CTX_set_options(p->tls, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (SSL_CTX_use_certificate_chain_file(p->tls, t->cert) != 1)
        return tls_setup_fail(p, err, errlen, "tls.cert", t->cert);
    if (SSL_CTX_use_PrivateKey_file(p->tls, t->key, SSL_FILETYPE_PEM) != 1)
        return tls_setup_fail(p, err, errlen, "tls.key", t->key);
    if (SSL_CTX_check_private_key(p->tls) != 1)
        return tls_setup_fail(p, err, errlen, "tls.key", "does not match tls.cert");
    if (SSL_CTX_load_verify_locations(p->tls, t->ca, NULL) != 1)
        return tls_setup_fail(p, err, errlen, "tls.ca", t->ca);
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca);
    if (names)
        SSL_CTX_set_client_CA_list(p->tls, names);
    SSL_CTX_set_session_id_context(p->tls, (const unsigned char *)"parley-peer", 11);
    SSL_CTX_set_verify(p->tls, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    ERR_clear_error();
    return PL_OK;
}

static int is_ip(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* Does the certificate the far end presented name this host? */
static int tls_names_host(struct bufferevent *bev, const char *host)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    X509 *x = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    int ok = 0;
    if (x)
        ok = is_ip(host) ? X509_check_ip_asc(x, host, 0) == 1
                         : X509_check_host(x, host, 0, 0, NULL) == 1;
    X509_free(x);
    return ok;
}

/* Why a TLS link failed before its handshake finished. */
static void tls_why(struct bufferevent *bev, char *out, size_t outlen)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e, first = 0;
    int se = EVUTIL_SOCKET_ERROR();
    /* handed back newest first, mixed with bare SSL_get_error codes
     * (library 0): keep the oldest real one, the cause */
    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (ERR_GET_LIB(e) != 0)
            first = e;
    if (vr != X509_V_OK)
        snprintf(out, outlen, "certificate rejected: %s", X509_verify_cert_error_string(vr));
    else if (first)
        tls_err_text(first, out, outlen);
    else if (se)
        snprintf(out, outlen, "%s", evutil_socket_error_to_string(se));
    else
        snprintf(out, outlen, "closed during the handshake");
}

/* Read the secret and derive the MAC key: BLAKE2b of the secret gives a
 * master key of fixed size, crypto_kdf a subkey for this purpose alone. */
static int auth_setup(pl_peer *p, char *err, size_t errlen)
{
    uint8_t *secret = NULL, master[crypto_kdf_KEYBYTES];
    size_t len = 0;
    if (pl_config_cluster_secret(p->cfg, &secret, &len, err, errlen) != PL_OK)
        return PL_ERR_CONFIG;
    if (!secret) {
        /* Mutual TLS already keeps strangers out (tls_setup runs first). */
        if (!p->tls)
            pl_log(PL_LOG_WARN, "peer: no cluster_secret configured: any host that can reach "
                   "the peer ports can join this cluster's replication (see "
                   "docs/operations.md)");
        return PL_OK;
    }
    crypto_generichash(master, sizeof master, secret, len, NULL, 0);
    crypto_kdf_derive_from_key(p->key, sizeof p->key, 1, "plpeerau", master);
    sodium_memzero(master, sizeof master);
    sodium_memzero(secret, len);
    free(secret);
    p->auth = 1;
    return PL_OK;
}

static void row_from_reply(const Parley__Peer__StatusReply *r, pl_server_status *row)
{
    memset(row, 0, sizeof *row);
    row->id = r->id;
    row->address = pl_str_c(r->address);
    row->reachable = 1;
    row->role = pl_str_c(r->role);
    row->view = r->view;
    row->op = r->op;
    row->commit = r->commit;
    row->applied = r->applied;
    row->store = pl_str_c(r->store);
    row->transport = pl_str_c(r->transport);
    row->digest = pl_str_c(r->digest);
}

/* pl_str fields from our own status callback are not NUL-terminated. */
static char *dupstr(pl_str s)
{
    char *c = malloc((size_t)s.len + 1);
    if (c) {
        if (s.len)
            memcpy(c, s.ptr, s.len);
        c[s.len] = 0;
    }
    return c;
}

/* ---- decoding: pure, so tests/fuzz drives it without sockets ---- */

/* A host as an identity may carry it: 1..PL_PEER_HOST_MAX bytes of the
 * characters of numeric addresses and DNS names (core/members.h allows the
 * same), so a claimed address is also safe to put in a log line. */
static int host_ok(const char *host)
{
    size_t len = host ? strlen(host) : 0;
    if (len < 1 || len > PL_PEER_HOST_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = host[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':'))
            return 0;
    }
    return 1;
}

void pl_peer_frame_clear(pl_peer_frame *f)
{
    if (f->pb)
        parley__peer__peer_frame__free_unpacked(f->pb, NULL);
    free(f->entries);
    memset(f, 0, sizeof *f);
}

/* A VR message as pl_vr_receive takes it. Entries must be a consecutive run
 * starting right after the anchor (VR appends them as one run), and each
 * must fit pl_log_entry's 32-bit length. */
static int vr_from_pb(const Parley__Peer__Vr *v, pl_peer_frame *f)
{
    if (v->n_entries > UINT32_MAX / 2)
        return PL_ERR_INVALID;
    if (v->n_entries) {
        f->entries = calloc(v->n_entries, sizeof *f->entries);
        if (!f->entries)
            return PL_ERR_NOMEM;
        for (size_t i = 0; i < v->n_entries; i++) {
            const Parley__Peer__Entry *x = v->entries[i];
            if (x->data.len > UINT32_MAX)
                return PL_ERR_INVALID;
            f->entries[i].op = x->op;
            f->entries[i].view = x->view;
            f->entries[i].data = x->data.data;
            f->entries[i].len = (uint32_t)x->data.len;
            if (i && f->entries[i].op != f->entries[i - 1].op + 1)
                return PL_ERR_INVALID;
        }
        if (f->entries[0].op != v->anchor_op + 1)
            return PL_ERR_INVALID;
    }
    f->vr = (pl_vr_msg){
        .type = v->type, .view = v->view, .op = v->op, .commit = v->commit,
        .lnv = v->lnv, .anchor_op = v->anchor_op, .anchor_view = v->anchor_view,
        .ts = v->ts, .entries = f->entries, .n_entries = (uint32_t)v->n_entries,
    };
    return PL_OK;
}

int pl_peer_decode_frame(const uint8_t *buf, size_t len, pl_peer_frame *f)
{
    memset(f, 0, sizeof *f);
    Parley__Peer__PeerFrame *pb = parley__peer__peer_frame__unpack(NULL, len, buf);
    if (!pb)
        return PL_ERR_MALFORMED;
    f->pb = pb;
    switch (pb->body_case) {
    case PARLEY__PEER__PEER_FRAME__BODY_HELLO:
        /* protobuf-c ends a string at its first NUL: the host checked is
         * the one every use of it sees */
        if (!host_ok(pb->hello->host) || pb->hello->peer_port < 1 ||
            pb->hello->peer_port > 65535)
            return PL_ERR_MALFORMED;
        f->kind = PL_PEER_F_HELLO;
        f->version = pb->hello->version;
        f->from = pb->hello->from;
        f->n = pb->hello->n;
        f->host = pl_str_c(pb->hello->host);
        f->peer_port = (uint16_t)pb->hello->peer_port;
        f->nonce = pb->hello->nonce.data;
        f->nonce_len = pb->hello->nonce.len;
        f->op_kinds = pb->hello->op_kinds;
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_AUTH:
        f->kind = PL_PEER_F_AUTH;
        f->mac = pb->auth->mac.data;
        f->mac_len = pb->auth->mac.len;
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_VR:
        f->kind = PL_PEER_F_VR;
        return vr_from_pb(pb->vr, f);
    case PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST:
        f->kind = PL_PEER_F_STATUS_REQUEST;
        f->query_id = pb->status_request->query_id;
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_STATUS_REPLY:
        f->kind = PL_PEER_F_STATUS_REPLY;
        f->query_id = pb->status_reply->query_id;
        row_from_reply(pb->status_reply, &f->row);
        return PL_OK;
    case PARLEY__PEER__PEER_FRAME__BODY_SNAPSHOT: {
        const Parley__Peer__SnapshotChunk *k = pb->snapshot;
        if (k->offset > k->total || k->data.len > k->total - k->offset)
            return PL_ERR_INVALID;
        f->kind = PL_PEER_F_SNAPSHOT;
        f->snap_view = k->view;
        f->snap_offset = k->offset;
        f->snap_total = k->total;
        f->snap_data = k->data.data;
        f->snap_len = k->data.len;
        return PL_OK;
    }
    default:
        /* no body, or a kind from a newer peer: nothing to act on */
        f->kind = PL_PEER_F_NONE;
        return PL_OK;
    }
}

/* ---- slot table ---- */

/* PARLEY_PEER_DIAL="HOST:PORT=HOST:PORT,...": dial the peer address on the
 * left at the address on the right. The fault harness (tests/fault) puts a
 * proxy on every directed link this way while every server keeps the same
 * server list, so identities stay the addresses servers listen on; the
 * checks (Hello, TLS names, proofs) all use the address on the left. */
typedef struct dial_via {
    char *host, *via_host;
    uint16_t port, via_port;
} dial_via;

/* "HOST:PORT" or "[HOST]:PORT" of len bytes into a malloc'd host and port. */
static int parse_hostport(const char *s, size_t len, char **host, uint16_t *port)
{
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (!colon || colon == s)
        return PL_ERR_INVALID;
    char digits[8];
    size_t nd = len - (size_t)(colon + 1 - s);
    if (nd < 1 || nd > 5)
        return PL_ERR_INVALID;
    memcpy(digits, colon + 1, nd);
    digits[nd] = 0;
    char *end;
    unsigned long v = strtoul(digits, &end, 10);
    if (*end || v < 1 || v > 65535)
        return PL_ERR_INVALID;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    *host = strndup(s, hl);
    if (!*host)
        return PL_ERR_NOMEM;
    if (!host_ok(*host)) {
        free(*host);
        *host = NULL;
        return PL_ERR_INVALID;
    }
    *port = (uint16_t)v;
    return PL_OK;
}

static int via_setup(pl_peer *p, char *err, size_t errlen)
{
    const char *env = getenv("PARLEY_PEER_DIAL");
    if (!env || !*env)
        return PL_OK;
    size_t n = 1;
    for (const char *c = env; *c; c++)
        n += *c == ',';
    p->via = calloc(n, sizeof *p->via);
    if (!p->via) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    const char *at = env;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(at, ',');
        size_t len = end ? (size_t)(end - at) : strlen(at);
        const char *eq = memchr(at, '=', len);
        dial_via *v = &p->via[p->n_via];
        if (!eq || parse_hostport(at, (size_t)(eq - at), &v->host, &v->port) != PL_OK ||
            parse_hostport(eq + 1, len - (size_t)(eq + 1 - at), &v->via_host,
                           &v->via_port) != PL_OK) {
            free(v->host);
            v->host = NULL;
            snprintf(err, errlen, "PARLEY_PEER_DIAL: entry %zu is not HOST:PORT=HOST:PORT", i + 1);
            return PL_ERR_CONFIG;
        }
        p->n_via++;
        at = end ? end + 1 : at + len;
    }
    pl_log(PL_LOG_WARN, "peer: PARLEY_PEER_DIAL set: %zu peer addresses are dialled elsewhere "
           "(a test setting)", p->n_via);
    return PL_OK;
}

static int same_addr(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    return p1 == p2 && strcmp(h1, h2) == 0;
}

/* The slot listing this address in the current table, or -1. */
static int slot_of(const pl_peer *p, const char *host, uint16_t port)
{
    for (uint32_t i = 0; i < p->n; i++)
        if (same_addr(p->servers[i].host, p->servers[i].peer_port, host, port))
            return (int)i;
    return -1;
}

/* What pl_peer_new and pl_peer_set_servers accept as a slot table. */
static int table_check(const pl_server_conf *servers, size_t n, uint32_t self, char *err,
                       size_t errlen)
{
    if (n < 1 || n > PL_VR_MAX_REPLICAS) {
        snprintf(err, errlen, "%zu servers: 1 to %u are supported", n, PL_VR_MAX_REPLICAS);
        return PL_ERR_INVALID;
    }
    if (self >= n) {
        snprintf(err, errlen, "this server's slot %u is not among the %zu servers", self, n);
        return PL_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!host_ok(servers[i].host) || servers[i].peer_port == 0) {
            snprintf(err, errlen, "server %zu: host must be 1 to %u bytes of [A-Za-z0-9.:-] "
                     "and peer_port 1-65535", i, PL_PEER_HOST_MAX);
            return PL_ERR_INVALID;
        }
        for (size_t j = 0; j < i; j++) {
            if (same_addr(servers[i].host, servers[i].peer_port, servers[j].host,
                          servers[j].peer_port)) {
                snprintf(err, errlen, "servers %zu and %zu both have the peer address %s:%u",
                         j, i, servers[i].host, (unsigned)servers[i].peer_port);
                return PL_ERR_INVALID;
            }
        }
    }
    return PL_OK;
}

/* Copy a checked table into dst (hosts duplicated); PL_ERR_NOMEM leaves dst
 * all NULL hosts. */
static int table_copy(pl_server_conf *dst, const pl_server_conf *src, size_t n)
{
    memset(dst, 0, PL_VR_MAX_REPLICAS * sizeof *dst);
    for (size_t i = 0; i < n; i++) {
        dst[i] = src[i];
        dst[i].host = strdup(src[i].host);
        if (!dst[i].host) {
            for (size_t j = 0; j < i; j++)
                free(dst[j].host);
            memset(dst, 0, PL_VR_MAX_REPLICAS * sizeof *dst);
            return PL_ERR_NOMEM;
        }
    }
    return PL_OK;
}

static unsigned count_unmapped(const pl_peer *p)
{
    unsigned k = 0;
    for (const peer_in *c = p->ins; c; c = c->next)
        k += c->hello && c->slot < 0;
    return k;
}

/* ---- incoming connections ---- */

static void in_free(peer_in *c)
{
    pl_peer *p = c->p;
    for (peer_in **pp = &p->ins; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    bufferevent_free(c->bev);
    free(c);
}

static void in_status_request(peer_in *c, uint64_t query_id)
{
    pl_server_status row;
    memset(&row, 0, sizeof row);
    c->p->cb.status(c->p->cb.ud, &row);
    Parley__Peer__StatusReply r = PARLEY__PEER__STATUS_REPLY__INIT;
    char *s[6] = { dupstr(row.address), dupstr(row.role), dupstr(row.store),
                   dupstr(row.transport), dupstr(row.digest), NULL };
    if (s[0] && s[1] && s[2] && s[3] && s[4]) {
        r.query_id = query_id;
        r.id = row.id;
        r.address = s[0];
        r.role = s[1];
        r.view = row.view;
        r.op = row.op;
        r.commit = row.commit;
        r.applied = row.applied;
        r.store = s[2];
        r.transport = s[3];
        r.digest = s[4];
        Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
        f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REPLY;
        f.status_reply = &r;
        write_frame(c->bev, &f);
    }
    for (int i = 0; i < 5; i++)
        free(s[i]);
}

/* The dialler's Hello: the address it claims, checked against its
 * certificate (with TLS) and mapped to its slot. Returns 0 when the
 * connection was closed. */
static int in_hello(peer_in *c, const pl_peer_frame *f)
{
    pl_peer *p = c->p;
    const pl_server_conf *me = &p->servers[p->self];
    if (f->kind != PL_PEER_F_HELLO) {
        pl_log(PL_LOG_WARN, "peer: connection from %s without a Hello; closing", c->addr);
        goto close;
    }
    if (f->version != PL_PEER_VERSION) {
        pl_log(PL_LOG_WARN, "peer: %s speaks peer protocol version %u, this server %u; closing",
               c->addr, f->version, PL_PEER_VERSION);
        goto close;
    }
    /* the decoder checked the host's length and characters */
    memcpy(c->host, f->host.ptr, f->host.len);
    c->host[f->host.len] = 0;
    c->peer_port = f->peer_port;
    if (same_addr(c->host, c->peer_port, me->host, me->peer_port)) {
        pl_log(PL_LOG_WARN, "peer: %s says it is this server (%s:%u); closing", c->addr, c->host,
               (unsigned)c->peer_port);
        goto close;
    }
    if (p->tls && !tls_names_host(c->bev, c->host)) {
        pl_log(PL_LOG_WARN, "peer: %s says it is server %s:%u, but its certificate does "
               "not name %s; closing", c->addr, c->host, (unsigned)c->peer_port, c->host);
        goto close;
    }
    c->slot = slot_of(p, c->host, c->peer_port);
    if (c->slot < 0 && count_unmapped(p) >= PL_PEER_MAX_UNMAPPED) {
        pl_log(PL_LOG_WARN, "peer: %s says it is server %s:%u, which is not in the current "
               "configuration, and %u such connections (the limit) are open already; closing",
               c->addr, c->host, (unsigned)c->peer_port, PL_PEER_MAX_UNMAPPED);
        goto close;
    }
    c->hello = 1;
    if (!p->auth) {
        c->authed = 1;
        bufferevent_set_timeouts(c->bev, NULL, NULL);
    } else if (f->nonce_len != NONCE_BYTES) {
        pl_log(PL_LOG_WARN, "peer: a connection claiming to be server %s:%u sent no "
               "challenge: it has no cluster_secret configured; closing", c->host,
               (unsigned)c->peer_port);
        goto close;
    } else {
        memcpy(c->peer_nonce, f->nonce, NONCE_BYTES);
        auth_ids a = in_ids(c);
        send_auth(p, c->bev, 'A', &a);
    }
    return 1;
close:
    in_free(c);
    return 0;
}

static void in_read(struct bufferevent *bev, void *arg)
{
    peer_in *c = arg;
    for (;;) {
        pl_peer_frame f;
        /* nothing big is accepted before the handshake is done */
        int rc = read_frame(bev, c->authed ? PL_PEER_MAX_FRAME : HANDSHAKE_MAX_FRAME, &f);
        if (rc == PL_ERR_AGAIN)
            return;
        if (rc == PL_ERR_INVALID && c->authed) {
            pl_log(PL_LOG_WARN, "peer: server %s:%u sent a message that fails its checks "
                   "(entries not a consecutive run after the anchor, or too large); dropped",
                   c->host, (unsigned)c->peer_port);
            pl_peer_frame_clear(&f);
            continue;
        }
        if (rc != PL_OK) {
            pl_log(PL_LOG_WARN, "peer: malformed or oversized frame from %s%s; closing", c->addr,
                   c->hello ? "" : " (before its Hello, or in it)");
            pl_peer_frame_clear(&f);
            in_free(c);
            return;
        }
        if (!c->hello) {
            int open = in_hello(c, &f);
            pl_peer_frame_clear(&f);
            if (!open)
                return;
            continue;
        }
        if (!c->authed) {
            /* With a secret, the dialler's second frame must be its proof:
             * no VR message, status query or snapshot before it. */
            auth_ids a = in_ids(c);
            if (!auth_check(c->p, &f, 'D', &a)) {
                pl_log(PL_LOG_WARN, "peer: a connection claiming to be server %s:%u did not "
                       "prove the cluster secret (cluster_secret differs?); closing", c->host,
                       (unsigned)c->peer_port);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            }
            c->authed = 1;
            bufferevent_set_timeouts(bev, NULL, NULL);
        } else if (c->slot < 0) {
            /* Authenticated but not listed: a server being added talks to
             * us before our table has it, or ours is behind. Nothing it
             * says counts until a table lists it. */
            if (!c->warned_unmapped && f.kind != PL_PEER_F_NONE)
                pl_log(PL_LOG_INFO, "peer: %s:%u is not in the current configuration; "
                       "ignoring its messages", c->host, (unsigned)c->peer_port);
            c->warned_unmapped |= f.kind != PL_PEER_F_NONE;
        } else if (f.kind == PL_PEER_F_VR) {
            f.vr.from = (uint32_t)c->slot; /* the link says who it is */
            c->p->cb.vr(c->p->cb.ud, &f.vr);
        } else if (f.kind == PL_PEER_F_STATUS_REQUEST) {
            in_status_request(c, f.query_id);
        } else if (f.kind == PL_PEER_F_SNAPSHOT && c->p->cb.snapshot) {
            c->p->cb.snapshot(c->p->cb.ud, (uint32_t)c->slot, f.snap_view, f.snap_offset,
                              f.snap_total, f.snap_data, f.snap_len);
        }
        pl_peer_frame_clear(&f);
    }
}

static void in_event(struct bufferevent *bev, short what, void *arg)
{
    peer_in *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->tls_up = 1;
        return;
    }
    if (c->p->tls && !c->tls_up && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        pl_peer *p = c->p;
        char why[200];
        time_t now = time(NULL);
        tls_why(bev, why, sizeof why);
        if (now - p->tls_logged >= TLS_LOG_EVERY_S) {
            if (p->tls_quiet)
                pl_log(PL_LOG_WARN, "peer: TLS handshake with %s failed: %s; closing "
                       "(and %u more failures not logged since the last such line)",
                       c->addr, why, p->tls_quiet);
            else
                pl_log(PL_LOG_WARN, "peer: TLS handshake with %s failed: %s; closing",
                       c->addr, why);
            p->tls_logged = now;
            p->tls_quiet = 0;
        } else {
            p->tls_quiet++;
        }
        in_free(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        pl_log(PL_LOG_WARN, "peer: a connection%s did not finish the handshake within %d ms; "
               "closing", c->hello ? " claiming to be a server" : "", HANDSHAKE_MS);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        in_free(c);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    (void)salen;
    pl_peer *p = arg;
    peer_in *c = calloc(1, sizeof *c);
    struct bufferevent *bev = NULL;
    if (p->tls) {
        SSL *ssl = SSL_new(p->tls);
        /* Where bufferevent_openssl_socket_new fails decides whether it
         * freed ssl and closed fd; under memory exhaustion a leak beats a
         * double free. */
        bev = ssl ? bufferevent_openssl_socket_new(p->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                   BEV_OPT_CLOSE_ON_FREE)
                  : NULL;
        if (bev)
            bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
        else if (ssl)
            fd = -1;
        ERR_clear_error();
    } else {
        bev = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!c || !bev) {
        free(c);
        if (bev)
            bufferevent_free(bev);
        else if (fd >= 0)
            evutil_closesocket(fd);
        return;
    }
    p->accepted++;
    if (!p->tls)
        c->tls_up = 1;
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    snprintf(c->addr, sizeof c->addr, "%s:%u", ip,
             (unsigned)ntohs(sa->sa_family == AF_INET6 ? ((struct sockaddr_in6 *)sa)->sin6_port
                                                       : ((struct sockaddr_in *)sa)->sin_port));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->p = p;
    c->bev = bev;
    c->slot = -1;
    c->next = p->ins;
    p->ins = c;
    bufferevent_setcb(bev, in_read, NULL, in_event, c);
    struct timeval hs = { HANDSHAKE_MS / 1000, (HANDSHAKE_MS % 1000) * 1000 };
    bufferevent_set_timeouts(bev, &hs, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    /* Our Hello tells the dialler it reached the address it meant (and,
     * with a secret, carries our challenge). */
    if (p->auth)
        randombytes_buf(c->nonce, sizeof c->nonce);
    send_hello(p, bev, p->auth ? c->nonce : NULL);
}

/* ---- outgoing connections ---- */

static void out_connect(peer_out *o);
static void out_free(peer_out *o);

static void out_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    peer_out *o = arg;
    if (o->retired) {
        if (o->bev && evbuffer_get_length(bufferevent_get_output(o->bev)))
            pl_log(PL_LOG_INFO, "peer: closing the link to removed server %s:%u with %zu bytes "
                   "unwritten after %d ms", o->host, (unsigned)o->peer_port,
                   evbuffer_get_length(bufferevent_get_output(o->bev)), RETIRE_MS);
        out_free(o);
        return;
    }
    out_connect(o);
}

static void out_down(peer_out *o)
{
    if (o->bev) {
        bufferevent_free(o->bev);
        o->bev = NULL;
    }
    if (o->up)
        pl_log(PL_LOG_INFO, "peer: link to server %u (%s:%u) down", o->to, o->host,
               (unsigned)o->peer_port);
    o->up = 0;
    struct timeval tv = { o->retry_ms / 1000, (o->retry_ms % 1000) * 1000 };
    evtimer_add(o->retry, &tv);
    o->retry_ms = o->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : o->retry_ms * 2;
}

static void out_up(peer_out *o)
{
    o->up = 1;
    bufferevent_set_timeouts(o->bev, NULL, NULL);
    pl_log(PL_LOG_INFO, "peer: link to server %u (%s:%u) up%s", o->to, o->host,
           (unsigned)o->peer_port, o->p->auth ? " (authenticated)" : "");
}

/* The acceptor's side of the handshake on a link we dialled: its Hello must
 * name the address we dialled (and, with a secret, carry its challenge),
 * then with a secret its proof. The link carries nothing until then, so a
 * stranger on that port never sees a VR message. Returns 0 when the link
 * was closed. */
static int out_handshake(peer_out *o, int rc, const pl_peer_frame *f)
{
    char bad[300] = "";
    if (!o->got_hello) {
        if (rc != PL_OK || f->kind != PL_PEER_F_HELLO) {
            snprintf(bad, sizeof bad, "did not answer with a Hello");
        } else if (f->version != PL_PEER_VERSION) {
            snprintf(bad, sizeof bad, "speaks peer protocol version %u, this server %u",
                     f->version, PL_PEER_VERSION);
        } else if (f->peer_port != o->peer_port || strcmp(f->host.ptr, o->host) != 0) {
            snprintf(bad, sizeof bad, "says it is server %s:%u (check the server lists)",
                     f->host.ptr, (unsigned)f->peer_port);
        } else if (o->p->auth && f->nonce_len != NONCE_BYTES) {
            snprintf(bad, sizeof bad, "did not answer with its challenge (no cluster_secret "
                     "configured there)");
        } else if (o->p->auth) {
            o->got_hello = 1;
            o->op_kinds = f->op_kinds;
            memcpy(o->peer_nonce, f->nonce, NONCE_BYTES);
            auth_ids a = out_ids(o);
            send_auth(o->p, o->bev, 'D', &a);
        } else {
            o->got_hello = 1;
            o->op_kinds = f->op_kinds;
            out_up(o);
        }
    } else {
        auth_ids a = out_ids(o);
        if (rc == PL_OK && auth_check(o->p, f, 'A', &a))
            out_up(o);
        else
            snprintf(bad, sizeof bad, "did not prove the cluster secret (cluster_secret "
                     "differs?)");
    }
    if (!bad[0])
        return 1;
    pl_log(PL_LOG_WARN, "peer: the peer port of server %u (%s:%u) %s; closing", o->to, o->host,
           (unsigned)o->peer_port, bad);
    out_down(o);
    return 0;
}

static void out_read(struct bufferevent *bev, void *arg)
{
    peer_out *o = arg;
    for (;;) {
        pl_peer_frame f;
        int rc = read_frame(bev, o->up ? PL_PEER_MAX_FRAME : HANDSHAKE_MAX_FRAME, &f);
        if (rc == PL_ERR_AGAIN)
            return;
        if (rc != PL_OK && rc != PL_ERR_INVALID) {
            pl_peer_frame_clear(&f);
            if (!o->up)
                pl_log(PL_LOG_WARN, "peer: the peer port of server %u (%s:%u) answered with a "
                       "malformed or oversized frame; closing", o->to, o->host,
                       (unsigned)o->peer_port);
            out_down(o);
            return;
        }
        if (!o->up) {
            int open = out_handshake(o, rc, &f);
            pl_peer_frame_clear(&f);
            if (!open)
                return;
            continue;
        }
        if (rc == PL_OK && f.kind == PL_PEER_F_STATUS_REPLY) {
            f.row.id = o->to; /* the link says who it is */
            o->p->cb.status_reply(o->p->cb.ud, f.query_id, &f.row);
        }
        pl_peer_frame_clear(&f);
        /* the callback may have changed the slot table and retired this
         * link, which now has callbacks of its own */
        if (o->retired)
            return;
    }
}

static void out_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    peer_out *o = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        o->retry_ms = RETRY_MIN_MS;
        o->warned_backlog = 0;
        o->tls_up = 1;
        o->tls_warned = 0;
        o->got_hello = 0;
        /* up once the acceptor's Hello (and proof) arrived */
        struct timeval hs = { HANDSHAKE_MS / 1000, (HANDSHAKE_MS % 1000) * 1000 };
        bufferevent_set_timeouts(bev, &hs, NULL);
        if (o->p->auth)
            randombytes_buf(o->nonce, sizeof o->nonce);
        send_hello(o->p, bev, o->p->auth ? o->nonce : NULL);
        return;
    }
    /* With TLS, CONNECTED comes after the TLS handshake; a failure before it
     * is logged once until the link comes up (it re-dials every second). */
    if (o->p->tls && !o->tls_up && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) &&
        !o->tls_warned && EVUTIL_SOCKET_ERROR() != ECONNREFUSED) {
        char why[200];
        tls_why(bev, why, sizeof why);
        pl_log(PL_LOG_WARN, "peer: TLS handshake with server %u (%s:%u) failed: %s", o->to,
               o->host, (unsigned)o->peer_port, why);
        o->tls_warned = 1;
    }
    if (what & BEV_EVENT_TIMEOUT)
        pl_log(PL_LOG_WARN, "peer: server %u (%s:%u) did not finish the handshake within %d ms "
               "(cluster_secret differs, or another version?)", o->to, o->host,
               (unsigned)o->peer_port, HANDSHAKE_MS);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        out_down(o);
}

static void out_connect(peer_out *o)
{
    pl_peer *p = o->p;
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    char addr[300];
    const char *host = o->host;
    unsigned port = o->peer_port;
    for (size_t i = 0; i < p->n_via; i++) {
        if (same_addr(p->via[i].host, p->via[i].port, o->host, o->peer_port)) {
            host = p->via[i].via_host;
            port = p->via[i].via_port;
        }
    }
    snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
        pl_log(PL_LOG_ERROR, "peer: server %u address %s is not numeric", o->to, addr);
        return;
    }
    o->tls_up = 0;
    if (p->tls) {
        /* The acceptor's certificate must name the host we dial. */
        SSL *ssl = SSL_new(p->tls);
        int named = ssl && (is_ip(o->host)
                                ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), o->host) == 1
                                : SSL_set1_host(ssl, o->host) == 1);
        o->bev = named ? bufferevent_openssl_socket_new(p->base, -1, ssl,
                                                        BUFFEREVENT_SSL_CONNECTING,
                                                        BEV_OPT_CLOSE_ON_FREE)
                       : NULL;
        if (o->bev)
            bufferevent_openssl_set_allow_dirty_shutdown(o->bev, 1);
        else if (!named)
            SSL_free(ssl);
        ERR_clear_error();
    } else {
        o->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!o->bev) {
        out_down(o);
        return;
    }
    bufferevent_setcb(o->bev, out_read, NULL, out_event, o);
    bufferevent_enable(o->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(o->bev, (struct sockaddr *)&ss, sslen) != 0)
        out_down(o);
}

/* A link to (host, port) at slot `to`, dialled at once. NULL on NOMEM. */
static peer_out *out_new(pl_peer *p, uint32_t to, const char *host, uint16_t port)
{
    peer_out *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->p = p;
    o->to = to;
    o->peer_port = port;
    o->retry_ms = RETRY_MIN_MS;
    o->host = strdup(host);
    o->retry = evtimer_new(p->base, out_retry_cb, o);
    if (!o->host || !o->retry) {
        if (o->retry)
            event_free(o->retry);
        free(o->host);
        free(o);
        return NULL;
    }
    return o;
}

static void out_free(peer_out *o)
{
    if (o->retired) {
        for (peer_out **pp = &o->p->retired; *pp; pp = &(*pp)->next) {
            if (*pp == o) {
                *pp = o->next;
                break;
            }
        }
    }
    if (o->bev)
        bufferevent_free(o->bev);
    event_free(o->retry);
    free(o->host);
    free(o);
}

/* A retired link reads nothing it acts on: what the removed server sends
 * is discarded so that closing sends a FIN, not a reset that could cost it
 * our last frames. */
static void retired_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* Everything queued was handed to the kernel: close. */
static void retired_write(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        out_free(arg);
}

static void retired_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        out_free(arg);
}

/* The link's address is no longer listed. It may be called from one of the
 * link's own callbacks (pl_peer_set_servers from cb.status_reply), so it is
 * never freed here: the write callback, an error or the deadline frees it. */
static void out_retire(peer_out *o)
{
    pl_peer *p = o->p;
    o->retired = 1;
    o->next = p->retired;
    p->retired = o;
    evtimer_del(o->retry);
    struct timeval tv = { 0, 0 };
    if (o->bev && o->up && evbuffer_get_length(bufferevent_get_output(o->bev))) {
        tv.tv_sec = RETIRE_MS / 1000;
        tv.tv_usec = (RETIRE_MS % 1000) * 1000;
        bufferevent_setcb(o->bev, retired_read, retired_write, retired_event, o);
        bufferevent_set_timeouts(o->bev, NULL, NULL);
    } else if (o->bev) {
        /* nothing to deliver (or not even connected): close at the next
         * loop iteration */
        bufferevent_setcb(o->bev, retired_read, NULL, retired_event, o);
    }
    evtimer_add(o->retry, &tv);
    pl_log(PL_LOG_INFO, "peer: server %s:%u is no longer in the configuration; closing the "
           "link to it%s", o->host, (unsigned)o->peer_port,
           tv.tv_sec ? " once what is queued on it is written" : "");
}

/* ---- API ---- */

pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg,
                     const pl_server_conf *servers, size_t n, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen)
{
    if (table_check(servers, n, self, err, errlen) != PL_OK)
        return NULL;
    pl_peer *p = calloc(1, sizeof *p);
    if (!p || table_copy(p->servers, servers, n) != PL_OK) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->cfg = cfg;
    p->self = self;
    p->n = (uint32_t)n;
    p->cb = *cb;
    if (tls_setup(p, err, errlen) != PL_OK || auth_setup(p, err, errlen) != PL_OK ||
        via_setup(p, err, errlen) != PL_OK)
        goto fail;
    const pl_server_conf *me = &p->servers[self];
    char addr[300];
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    snprintf(addr, sizeof addr, strchr(me->host, ':') ? "[%s]:%u" : "%s:%u", me->host,
             (unsigned)me->peer_port);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, errlen, "peer address %s is not a numeric host:port", addr);
        goto fail;
    }
    p->listener = evconnlistener_new_bind(base, on_accept, p,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                                          (struct sockaddr *)&ss, sslen);
    if (!p->listener) {
        snprintf(err, errlen, "cannot listen on peer port %s: %s", addr, strerror(errno));
        goto fail;
    }
    for (uint32_t i = 0; i < p->n; i++) {
        if (i == self)
            continue;
        p->out[i] = out_new(p, i, p->servers[i].host, p->servers[i].peer_port);
        if (!p->out[i]) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        out_connect(p->out[i]);
    }
    return p;
fail:
    pl_peer_free(p);
    return NULL;
}

int pl_peer_set_servers(pl_peer *p, const pl_server_conf *servers, size_t n, uint32_t self)
{
    char why[200];
    if (table_check(servers, n, self, why, sizeof why) != PL_OK) {
        pl_log(PL_LOG_ERROR, "peer: new server list refused: %s", why);
        return PL_ERR_INVALID;
    }
    const pl_server_conf *me = &p->servers[p->self];
    if (!same_addr(servers[self].host, servers[self].peer_port, me->host, me->peer_port)) {
        pl_log(PL_LOG_ERROR, "peer: new server list refused: its server %u is %s:%u, but this "
               "server is %s:%u", self, servers[self].host, (unsigned)servers[self].peer_port,
               me->host, (unsigned)me->peer_port);
        return PL_ERR_INVALID;
    }
    /* Everything that can fail first, so that a failure changes nothing. */
    pl_server_conf table[PL_VR_MAX_REPLICAS];
    peer_out *out[PL_VR_MAX_REPLICAS] = { 0 };
    int fresh[PL_VR_MAX_REPLICAS] = { 0 }; /* new slots with a new link */
    int kept[PL_VR_MAX_REPLICAS] = { 0 };  /* old slots whose link moves */
    if (table_copy(table, servers, n) != PL_OK)
        return PL_ERR_NOMEM;
    for (uint32_t j = 0; j < n; j++) {
        if (j == self)
            continue;
        for (uint32_t i = 0; i < p->n && !out[j]; i++) {
            peer_out *o = p->out[i];
            if (o && same_addr(o->host, o->peer_port, table[j].host, table[j].peer_port)) {
                out[j] = o;
                kept[i] = 1;
            }
        }
        if (!out[j]) {
            out[j] = out_new(p, j, table[j].host, table[j].peer_port);
            fresh[j] = 1;
        }
        if (!out[j]) {
            for (uint32_t k = 0; k < n; k++) {
                if (fresh[k] && out[k])
                    out_free(out[k]);
                free(table[k].host);
            }
            return PL_ERR_NOMEM;
        }
    }
    for (uint32_t i = 0; i < p->n; i++) {
        if (p->out[i] && !kept[i])
            out_retire(p->out[i]);
        free(p->servers[i].host);
    }
    memcpy(p->servers, table, sizeof table);
    memset(p->out, 0, sizeof p->out);
    p->n = (uint32_t)n;
    p->self = self;
    for (uint32_t j = 0; j < n; j++) {
        peer_out *o = p->out[j] = out[j];
        if (!o)
            continue;
        if (o->to != j && !fresh[j])
            pl_log(PL_LOG_INFO, "peer: server %s:%u is now server %u (was %u)", o->host,
                   (unsigned)o->peer_port, j, o->to);
        o->to = j;
        if (fresh[j])
            out_connect(o);
    }
    /* Incoming connections keep the address their Hello named; only its
     * slot changes. The limit on unlisted ones is checked at their Hello:
     * a change can add at most the servers it removed. */
    for (peer_in *c = p->ins; c; c = c->next)
        if (c->hello)
            c->slot = slot_of(p, c->host, c->peer_port);
    return PL_OK;
}

void pl_peer_free(pl_peer *p)
{
    if (!p)
        return;
    sodium_memzero(p->key, sizeof p->key);
    if (p->listener)
        evconnlistener_free(p->listener);
    while (p->ins)
        in_free(p->ins);
    for (uint32_t i = 0; i < PL_VR_MAX_REPLICAS; i++)
        if (p->out[i])
            out_free(p->out[i]);
    while (p->retired)
        out_free(p->retired);
    for (uint32_t i = 0; i < PL_VR_MAX_REPLICAS; i++)
        free(p->servers[i].host);
    for (size_t i = 0; i < p->n_via; i++) {
        free(p->via[i].host);
        free(p->via[i].via_host);
    }
    free(p->via);
    SSL_CTX_free(p->tls);
    free(p);
}

void pl_peer_counts(const pl_peer *p, pl_peer_counters *c)
{
    memset(c, 0, sizeof *c);
    for (uint32_t i = 0; i < p->n; i++)
        c->links_up += p->out[i] && p->out[i]->up;
    for (const peer_out *o = p->retired; o; o = o->next)
        c->links_retiring++;
    for (const peer_in *in = p->ins; in; in = in->next) {
        c->incoming_mapped += in->hello && in->slot >= 0;
        c->incoming_unmapped += in->hello && in->slot < 0;
    }
    c->accepted = p->accepted;
}

/* The link to slot `to` when it is up. */
static peer_out *link_up(const pl_peer *p, uint32_t to)
{
    if (to >= p->n || to == p->self || !p->out[to] || !p->out[to]->up || !p->out[to]->bev)
        return NULL;
    return p->out[to];
}

/* bufferevent_write only queues: the bytes would leave on the loop's next
 * pass, after whatever the caller does next. For a PREPARE that is the
 * primary's own log sync, which pl_vr_propose sends first precisely so the
 * backups sync in parallel with it (VR 4.1 steps 2-3); a backup's
 * PREPARE-OK would wait for the rest of its pass too. Hand the socket what
 * it takes now; libevent writes any rest when the socket is writable. A
 * TLS link's bytes must go through SSL_write: it keeps libevent's path. */
static void send_now(struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct evbuffer *out = bufferevent_get_output(bev);
    if (fd < 0 || bufferevent_openssl_get_ssl(bev) || evbuffer_get_length(out) == 0)
        return;
    /* A failed write leaves the bytes queued; libevent's own write then
     * reports the error through the link's event callback. */
    (void)evbuffer_write(out, fd);
}

void pl_peer_send(pl_peer *p, uint32_t to, const pl_vr_msg *m)
{
    peer_out *o = link_up(p, to);
    if (!o)
        return;
    if (evbuffer_get_length(bufferevent_get_output(o->bev)) > OUT_BUFFER_MAX) {
        if (!o->warned_backlog)
            pl_log(PL_LOG_WARN, "peer: server %u (%s:%u) is not reading; dropping messages", to,
                   o->host, (unsigned)o->peer_port);
        o->warned_backlog = 1;
        return;
    }
    Parley__Peer__Vr v = PARLEY__PEER__VR__INIT;
    v.type = m->type;
    v.view = m->view;
    v.op = m->op;
    v.commit = m->commit;
    v.lnv = m->lnv;
    v.anchor_op = m->anchor_op;
    v.anchor_view = m->anchor_view;
    v.ts = m->ts;
    Parley__Peer__Entry *es = NULL, **ep = NULL;
    if (m->n_entries) {
        es = calloc(m->n_entries, sizeof *es);
        ep = calloc(m->n_entries, sizeof *ep);
        if (!es || !ep)
            goto out;
        for (uint32_t i = 0; i < m->n_entries; i++) {
            parley__peer__entry__init(&es[i]);
            es[i].op = m->entries[i].op;
            es[i].view = m->entries[i].view;
            es[i].data.data = (uint8_t *)m->entries[i].data;
            es[i].data.len = m->entries[i].len;
            ep[i] = &es[i];
        }
        v.n_entries = m->n_entries;
        v.entries = ep;
    }
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_VR;
    f.vr = &v;
    if (write_frame(o->bev, &f) != PL_OK)
        pl_log(PL_LOG_WARN, "peer: message to server %u (%s:%u) too large or out of memory; "
               "dropped", to, o->host, (unsigned)o->peer_port);
    else
        send_now(o->bev);
out:
    free(es);
    free(ep);
}

#define SNAPSHOT_CHUNK (1024u * 1024u)

int pl_peer_send_snapshot(pl_peer *p, uint32_t to, uint64_t view, const uint8_t *data,
                          size_t len)
{
    peer_out *o = link_up(p, to);
    if (!o || evbuffer_get_length(bufferevent_get_output(o->bev)) > OUT_BUFFER_MAX / 2)
        return PL_ERR_UNAVAILABLE;
    size_t off = 0;
    do {
        size_t n = len - off > SNAPSHOT_CHUNK ? SNAPSHOT_CHUNK : len - off;
        Parley__Peer__SnapshotChunk k = PARLEY__PEER__SNAPSHOT_CHUNK__INIT;
        k.view = view;
        k.offset = off;
        k.total = len;
        k.data.data = (uint8_t *)data + off;
        k.data.len = n;
        Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
        f.body_case = PARLEY__PEER__PEER_FRAME__BODY_SNAPSHOT;
        f.snapshot = &k;
        int rc = write_frame(o->bev, &f);
        if (rc != PL_OK)
            return rc;
        off += n;
    } while (off < len);
    return PL_OK;
}

int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id)
{
    peer_out *o = link_up(p, to);
    if (!o)
        return PL_ERR_UNAVAILABLE;
    Parley__Peer__StatusRequest q = PARLEY__PEER__STATUS_REQUEST__INIT;
    q.query_id = query_id;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST;
    f.status_request = &q;
    return write_frame(o->bev, &f);
}

int pl_peer_connected(const pl_peer *p, uint32_t to)
{
    return link_up(p, to) != NULL;
}

uint32_t pl_peer_op_kinds(const pl_peer *p, uint32_t to)
{
    const peer_out *o = link_up(p, to);
    return o ? o->op_kinds : 0;
}
