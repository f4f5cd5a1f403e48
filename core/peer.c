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
 * the host it dialled, and the acceptor, once the Hello says which server
 * is calling, that the dialler's names that server's configured host. So
 * a host without a certificate from the cluster's CA cannot join, and a
 * member cannot pose as another member on a different host. A failed
 * handshake closes that connection with a log line; nothing else changes.
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

typedef struct peer_in {
    pl_peer *p;
    struct bufferevent *bev;
    int from;                 /* -1 until Hello */
    int authed;               /* Hello (and Auth, with a secret) checked */
    uint8_t nonce[NONCE_BYTES];       /* our challenge */
    uint8_t peer_nonce[NONCE_BYTES];  /* the dialler's */
    int tls_up;               /* TLS handshake finished */
    char addr[64];            /* "ip:port", for log lines */
    struct peer_in *next;
} peer_in;

typedef struct peer_out {
    pl_peer *p;
    uint32_t to;
    struct bufferevent *bev;
    int up;
    uint32_t retry_ms;
    struct event *retry;
    int warned_backlog;
    int got_hello;            /* with a secret: the acceptor's Hello arrived */
    uint8_t nonce[NONCE_BYTES];       /* our challenge */
    uint8_t peer_nonce[NONCE_BYTES];  /* the acceptor's */
    int tls_up;               /* TLS handshake finished on this connection */
    int tls_warned;           /* a TLS failure was logged since the link was last up */
} peer_out;

struct pl_peer {
    struct event_base *base;
    const pl_config *cfg;
    uint32_t self;
    uint32_t n;
    pl_peer_cb cb;
    struct evconnlistener *listener;
    peer_in *ins;
    peer_out out[PL_VR_MAX_REPLICAS];
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
 * the secret with crypto_auth over both nonces and both server ids. Fresh
 * nonces from both ends make a recorded proof useless on another connection;
 * the role byte and the ids keep a proof from being reflected back to its
 * sender or replayed as another server's. The key is not the secret itself
 * but derived from it, so the secret can be any length and this use of it
 * is separate from any other. */
static void auth_mac(const pl_peer *p, uint8_t role, const uint8_t *dial_nonce,
                     const uint8_t *acc_nonce, uint32_t dialler, uint32_t acceptor,
                     uint8_t mac[crypto_auth_BYTES])
{
    uint8_t msg[16 + 1 + 2 * NONCE_BYTES + 8];
    memset(msg, 0, 16);
    memcpy(msg, "parley-peer-v1", 14);
    msg[16] = role;
    memcpy(msg + 17, dial_nonce, NONCE_BYTES);
    memcpy(msg + 17 + NONCE_BYTES, acc_nonce, NONCE_BYTES);
    uint8_t *ids = msg + 17 + 2 * NONCE_BYTES;
    for (int i = 0; i < 4; i++) {
        ids[i] = (uint8_t)(dialler >> (24 - 8 * i));
        ids[4 + i] = (uint8_t)(acceptor >> (24 - 8 * i));
    }
    crypto_auth(mac, msg, sizeof msg, p->key);
}

static int auth_check(const pl_peer *p, const pl_peer_frame *f, uint8_t role,
                      const uint8_t *dial_nonce, const uint8_t *acc_nonce, uint32_t dialler,
                      uint32_t acceptor)
{
    uint8_t want[crypto_auth_BYTES];
    if (f->kind != PL_PEER_F_AUTH || f->mac_len != crypto_auth_BYTES)
        return 0;
    auth_mac(p, role, dial_nonce, acc_nonce, dialler, acceptor, want);
    return sodium_memcmp(want, f->mac, crypto_auth_BYTES) == 0;
}

static void send_auth(pl_peer *p, struct bufferevent *bev, uint8_t role,
                      const uint8_t *dial_nonce, const uint8_t *acc_nonce, uint32_t dialler,
                      uint32_t acceptor)
{
    uint8_t mac[crypto_auth_BYTES];
    auth_mac(p, role, dial_nonce, acc_nonce, dialler, acceptor, mac);
    Parley__Peer__Auth a = PARLEY__PEER__AUTH__INIT;
    a.mac.data = mac;
    a.mac.len = sizeof mac;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_AUTH;
    f.auth = &a;
    write_frame(bev, &f);
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

/* Does the certificate the far end presented name server id's host? */
static int tls_names_server(const pl_peer *p, struct bufferevent *bev, uint32_t id)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    X509 *x = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    const char *host = p->cfg->servers[id].host;
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
        f->kind = PL_PEER_F_HELLO;
        f->version = pb->hello->version;
        f->from = pb->hello->from;
        f->n = pb->hello->n;
        f->nonce = pb->hello->nonce.data;
        f->nonce_len = pb->hello->nonce.len;
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
            pl_log(PL_LOG_WARN, "peer: server %d sent a message that fails its checks "
                   "(entries not a consecutive run after the anchor, or too large); dropped",
                   c->from);
            pl_peer_frame_clear(&f);
            continue;
        }
        if (rc != PL_OK) {
            pl_log(PL_LOG_WARN, "peer: malformed or oversized frame from %s; closing",
                   c->from >= 0 ? "a peer" : "an unidentified connection");
            pl_peer_frame_clear(&f);
            in_free(c);
            return;
        }
        if (c->from < 0) {
            if (f.kind != PL_PEER_F_HELLO || f.version != PL_PEER_VERSION ||
                f.from >= c->p->n || f.from == c->p->self) {
                pl_log(PL_LOG_WARN, "peer: connection without a valid Hello (version %u wanted); closing",
                       PL_PEER_VERSION);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            }
            if (f.n != c->p->n)
                pl_log(PL_LOG_WARN, "peer: server %u lists %u servers, this one %u: check the configs",
                       f.from, f.n, c->p->n);
            if (c->p->tls && !tls_names_server(c->p, bev, f.from)) {
                pl_log(PL_LOG_WARN, "peer: %s says it is server %u, but its certificate does "
                       "not name %s; closing", c->addr, f.from, c->p->cfg->servers[f.from].host);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            }
            c->from = (int)f.from;
            if (!c->p->auth) {
                c->authed = 1;
                bufferevent_set_timeouts(bev, NULL, NULL);
            } else if (f.nonce_len != NONCE_BYTES) {
                pl_log(PL_LOG_WARN, "peer: a connection claiming to be server %d sent no "
                       "challenge: it has no cluster_secret configured; closing", c->from);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            } else {
                memcpy(c->peer_nonce, f.nonce, NONCE_BYTES);
                send_auth(c->p, bev, 'A', c->peer_nonce, c->nonce, (uint32_t)c->from, c->p->self);
            }
        } else if (!c->authed) {
            /* With a secret, the dialler's second frame must be its proof:
             * no VR message, status query or snapshot before it. */
            if (!auth_check(c->p, &f, 'D', c->peer_nonce, c->nonce, (uint32_t)c->from,
                            c->p->self)) {
                pl_log(PL_LOG_WARN, "peer: a connection claiming to be server %d did not prove "
                       "the cluster secret (cluster_secret differs?); closing", c->from);
                pl_peer_frame_clear(&f);
                in_free(c);
                return;
            }
            c->authed = 1;
            bufferevent_set_timeouts(bev, NULL, NULL);
        } else if (f.kind == PL_PEER_F_VR) {
            f.vr.from = (uint32_t)c->from; /* the link says who it is */
            c->p->cb.vr(c->p->cb.ud, &f.vr);
        } else if (f.kind == PL_PEER_F_STATUS_REQUEST) {
            in_status_request(c, f.query_id);
        } else if (f.kind == PL_PEER_F_SNAPSHOT && c->p->cb.snapshot) {
            c->p->cb.snapshot(c->p->cb.ud, (uint32_t)c->from, f.snap_view, f.snap_offset,
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
               "closing", c->from >= 0 ? " claiming to be a server" : "", HANDSHAKE_MS);
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
    c->from = -1;
    c->next = p->ins;
    p->ins = c;
    bufferevent_setcb(bev, in_read, NULL, in_event, c);
    struct timeval hs = { HANDSHAKE_MS / 1000, (HANDSHAKE_MS % 1000) * 1000 };
    bufferevent_set_timeouts(bev, &hs, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    if (p->auth) {
        randombytes_buf(c->nonce, sizeof c->nonce);
        send_hello(p, bev, c->nonce);
    }
}

/* ---- outgoing connections ---- */

static void out_connect(peer_out *o);

static void out_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    out_connect(arg);
}

static void out_down(peer_out *o)
{
    if (o->bev) {
        bufferevent_free(o->bev);
        o->bev = NULL;
    }
    if (o->up)
        pl_log(PL_LOG_INFO, "peer: link to server %u down", o->to);
    o->up = 0;
    struct timeval tv = { o->retry_ms / 1000, (o->retry_ms % 1000) * 1000 };
    evtimer_add(o->retry, &tv);
    o->retry_ms = o->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : o->retry_ms * 2;
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
            out_down(o);
            return;
        }
        if (!o->up) {
            /* With a secret: the acceptor's Hello (its challenge), then its
             * proof. The link carries nothing until the proof checks out,
             * so a stranger on that port never sees a VR message. */
            const char *bad = NULL;
            if (!o->got_hello) {
                if (rc != PL_OK || f.kind != PL_PEER_F_HELLO || f.from != o->to ||
                    f.nonce_len != NONCE_BYTES) {
                    bad = "did not answer with its challenge (no cluster_secret configured "
                          "there, or not server %u)";
                } else {
                    o->got_hello = 1;
                    memcpy(o->peer_nonce, f.nonce, NONCE_BYTES);
                    send_auth(o->p, bev, 'D', o->nonce, o->peer_nonce, o->p->self, o->to);
                }
            } else if (!auth_check(o->p, &f, 'A', o->nonce, o->peer_nonce, o->p->self, o->to)) {
                bad = "did not prove the cluster secret (cluster_secret differs?) as server %u";
            } else {
                o->up = 1;
                bufferevent_set_timeouts(bev, NULL, NULL);
                pl_log(PL_LOG_INFO, "peer: link to server %u up (authenticated)", o->to);
            }
            pl_peer_frame_clear(&f);
            if (bad) {
                char text[200];
                snprintf(text, sizeof text, bad, o->to);
                pl_log(PL_LOG_WARN, "peer: the peer port of server %u %s; closing", o->to, text);
                out_down(o);
                return;
            }
            continue;
        }
        if (rc == PL_OK && f.kind == PL_PEER_F_STATUS_REPLY) {
            f.row.id = o->to; /* the link says who it is */
            o->p->cb.status_reply(o->p->cb.ud, f.query_id, &f.row);
        }
        pl_peer_frame_clear(&f);
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
        if (!o->p->auth) {
            o->up = 1;
            pl_log(PL_LOG_INFO, "peer: link to server %u up", o->to);
            send_hello(o->p, bev, NULL);
            return;
        }
        o->got_hello = 0;
        randombytes_buf(o->nonce, sizeof o->nonce);
        struct timeval hs = { HANDSHAKE_MS / 1000, (HANDSHAKE_MS % 1000) * 1000 };
        bufferevent_set_timeouts(bev, &hs, NULL);
        send_hello(o->p, bev, o->nonce);
        return;
    }
    /* With TLS, CONNECTED comes after the TLS handshake; a failure before it
     * is logged once until the link comes up (it re-dials every second). */
    if (o->p->tls && !o->tls_up && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) &&
        !o->tls_warned && EVUTIL_SOCKET_ERROR() != ECONNREFUSED) {
        char why[200];
        tls_why(bev, why, sizeof why);
        pl_log(PL_LOG_WARN, "peer: TLS handshake with server %u failed: %s", o->to, why);
        o->tls_warned = 1;
    }
    if (what & BEV_EVENT_TIMEOUT)
        pl_log(PL_LOG_WARN, "peer: server %u did not finish the handshake within %d ms "
               "(cluster_secret differs?)", o->to, HANDSHAKE_MS);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        out_down(o);
}

static void out_connect(peer_out *o)
{
    pl_peer *p = o->p;
    const pl_server_conf *s = &p->cfg->servers[o->to];
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    char addr[300];
    snprintf(addr, sizeof addr, strchr(s->host, ':') ? "[%s]:%u" : "%s:%u", s->host,
             (unsigned)s->peer_port);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
        pl_log(PL_LOG_ERROR, "peer: server %u address %s is not numeric", o->to, addr);
        return;
    }
    o->tls_up = 0;
    if (p->tls) {
        /* The acceptor's certificate must name the host we dial. */
        SSL *ssl = SSL_new(p->tls);
        int named = ssl && (is_ip(s->host)
                                ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), s->host) == 1
                                : SSL_set1_host(ssl, s->host) == 1);
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

/* ---- API ---- */

pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen)
{
    if (cfg->n_servers > PL_VR_MAX_REPLICAS || self >= cfg->n_servers) {
        snprintf(err, errlen, "at most %u servers are supported", PL_VR_MAX_REPLICAS);
        return NULL;
    }
    pl_peer *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->cfg = cfg;
    p->self = self;
    p->n = (uint32_t)cfg->n_servers;
    p->cb = *cb;
    if (tls_setup(p, err, errlen) != PL_OK || auth_setup(p, err, errlen) != PL_OK)
        goto fail;
    const pl_server_conf *me = &cfg->servers[self];
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
        peer_out *o = &p->out[i];
        o->p = p;
        o->to = i;
        o->retry_ms = RETRY_MIN_MS;
        if (i == self)
            continue;
        o->retry = evtimer_new(base, out_retry_cb, o);
        if (!o->retry) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        out_connect(o);
    }
    return p;
fail:
    pl_peer_free(p);
    return NULL;
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
    for (uint32_t i = 0; i < p->n; i++) {
        if (p->out[i].bev)
            bufferevent_free(p->out[i].bev);
        if (p->out[i].retry)
            event_free(p->out[i].retry);
    }
    SSL_CTX_free(p->tls);
    free(p);
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
    if (to >= p->n || to == p->self)
        return;
    peer_out *o = &p->out[to];
    if (!o->up || !o->bev)
        return;
    if (evbuffer_get_length(bufferevent_get_output(o->bev)) > OUT_BUFFER_MAX) {
        if (!o->warned_backlog)
            pl_log(PL_LOG_WARN, "peer: server %u is not reading; dropping messages", to);
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
        pl_log(PL_LOG_WARN, "peer: message to server %u too large or out of memory; dropped", to);
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
    if (to >= p->n || to == p->self || !p->out[to].up || !p->out[to].bev)
        return PL_ERR_UNAVAILABLE;
    if (evbuffer_get_length(bufferevent_get_output(p->out[to].bev)) > OUT_BUFFER_MAX / 2)
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
        int rc = write_frame(p->out[to].bev, &f);
        if (rc != PL_OK)
            return rc;
        off += n;
    } while (off < len);
    return PL_OK;
}

int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id)
{
    if (to >= p->n || to == p->self || !p->out[to].up)
        return PL_ERR_UNAVAILABLE;
    Parley__Peer__StatusRequest q = PARLEY__PEER__STATUS_REQUEST__INIT;
    q.query_id = query_id;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_STATUS_REQUEST;
    f.status_request = &q;
    return write_frame(p->out[to].bev, &f);
}

int pl_peer_connected(const pl_peer *p, uint32_t to)
{
    return to < p->n && to != p->self && p->out[to].up;
}
