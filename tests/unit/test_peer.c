/*
 * tests/unit/test_peer.c — the peer network (core/peer.c): the Hello's
 * identity fields through pl_peer_decode_frame, and slot tables changing
 * under live links, with two or three pl_peer instances on loopback in one
 * process and one event loop. Each network case runs twice: without and
 * with a cluster secret (the challenge/response covers the addresses).
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "chat.h"
#include "config.h"
#include "log.h"
#include "peer.h"
#include "peer.pb-c.h"

#define SECRET "unit-test-cluster-secret-0123456789abcdef"
#define MAX_GOT 64

/* ---- decoding ---- */

static size_t pack_hello(uint8_t *buf, uint32_t version, const char *host, uint32_t port)
{
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = version;
    h.from = 1;
    h.n = 3;
    h.host = (char *)host;
    h.peer_port = port;
    Parley__Peer__PeerFrame f = PARLEY__PEER__PEER_FRAME__INIT;
    f.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    f.hello = &h;
    ck_assert_uint_le(parley__peer__peer_frame__get_packed_size(&f), 600);
    return parley__peer__peer_frame__pack(&f, buf);
}

START_TEST(decode_hello_identity)
{
    uint8_t buf[600];
    uint8_t nonce[32];
    memset(nonce, 7, sizeof nonce);
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = PL_PEER_VERSION;
    h.host = "10.1.2.3";
    h.peer_port = 9102;
    h.nonce.data = nonce;
    h.nonce.len = sizeof nonce;
    Parley__Peer__PeerFrame fr = PARLEY__PEER__PEER_FRAME__INIT;
    fr.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    fr.hello = &h;
    size_t len = parley__peer__peer_frame__pack(&fr, buf);
    pl_peer_frame f;
    ck_assert_int_eq(pl_peer_decode_frame(buf, len, &f), PL_OK);
    ck_assert_int_eq(f.kind, PL_PEER_F_HELLO);
    ck_assert_uint_eq(f.version, PL_PEER_VERSION);
    ck_assert_uint_eq(f.host.len, 8);
    ck_assert_str_eq(f.host.ptr, "10.1.2.3");
    ck_assert_uint_eq(f.peer_port, 9102);
    ck_assert_uint_eq(f.nonce_len, 32);
    ck_assert_mem_eq(f.nonce, nonce, 32);
    ck_assert_msg(f.op_kinds == 0, "a Hello that says nothing of op kinds is an older server's");
    pl_peer_frame_clear(&f);
    /* Issue 21: the op kinds a server applies travel in its Hello. */
    h.op_kinds = 13;
    len = parley__peer__peer_frame__pack(&fr, buf);
    ck_assert_int_eq(pl_peer_decode_frame(buf, len, &f), PL_OK);
    ck_assert_uint_eq(f.op_kinds, 13);
    pl_peer_frame_clear(&f);

    /* the longest host, an IPv6 address and a DNS name are identities */
    char longest[PL_PEER_HOST_MAX + 1];
    memset(longest, 'a', PL_PEER_HOST_MAX);
    longest[PL_PEER_HOST_MAX] = 0;
    const char *good[] = { longest, "::1", "fd00:1::2", "peer-2.example.org", "h" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        len = pack_hello(buf, PL_PEER_VERSION, good[i], i == 4 ? 65535 : 1);
        ck_assert_msg(pl_peer_decode_frame(buf, len, &f) == PL_OK, "host %s", good[i]);
        ck_assert_str_eq(f.host.ptr, good[i]);
        pl_peer_frame_clear(&f);
    }
    /* another version still decodes: the network code reports it by name */
    len = pack_hello(buf, 1, "127.0.0.1", 9100);
    ck_assert_int_eq(pl_peer_decode_frame(buf, len, &f), PL_OK);
    ck_assert_uint_eq(f.version, 1);
    pl_peer_frame_clear(&f);
}
END_TEST

START_TEST(decode_hello_bad_identity)
{
    uint8_t buf[600];
    char too_long[PL_PEER_HOST_MAX + 2];
    memset(too_long, 'a', PL_PEER_HOST_MAX + 1);
    too_long[PL_PEER_HOST_MAX + 1] = 0;
    struct {
        const char *host;
        uint32_t port;
    } bad[] = {
        { "", 9100 },              /* no host: an old (version 1) Hello */
        { too_long, 9100 },
        { "127.0.0.1 x", 9100 },   /* a space */
        { "host\nfake log line", 9100 },
        { "h\x7f", 9100 },
        { "127.0.0.1", 0 },
        { "127.0.0.1", 65536 },
        { "127.0.0.1", 0xffffffffu },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t len = pack_hello(buf, PL_PEER_VERSION, bad[i].host, bad[i].port);
        pl_peer_frame f;
        ck_assert_msg(pl_peer_decode_frame(buf, len, &f) == PL_ERR_MALFORMED, "case %zu", i);
        pl_peer_frame_clear(&f);
    }
    /* version 1's Hello: only version, from, n */
    Parley__Peer__Hello h = PARLEY__PEER__HELLO__INIT;
    h.version = 1;
    h.from = 2;
    h.n = 3;
    Parley__Peer__PeerFrame fr = PARLEY__PEER__PEER_FRAME__INIT;
    fr.body_case = PARLEY__PEER__PEER_FRAME__BODY_HELLO;
    fr.hello = &h;
    size_t len = parley__peer__peer_frame__pack(&fr, buf);
    pl_peer_frame f;
    ck_assert_int_eq(pl_peer_decode_frame(buf, len, &f), PL_ERR_MALFORMED);
    pl_peer_frame_clear(&f);
}
END_TEST

/* ---- a network of pl_peer instances in one loop ---- */

typedef struct got {
    uint32_t from;
    uint32_t type;
    uint64_t view;
    uint32_t n_entries;
    uint64_t bytes;           /* sum of entry lengths */
    int intact;               /* every entry byte as sent */
} got;

typedef struct node {
    pl_peer *p;
    pl_server_conf self_conf;
    got got[MAX_GOT];
    int n_got;
} node;

static struct event_base *base;
static pl_config *cfg;
static struct event *tick;
static node nodes[3];
static uint16_t ports[3];

static void on_vr(void *ud, const pl_vr_msg *m)
{
    node *nd = ud;
    if (nd->n_got == MAX_GOT)
        return;
    got *g = &nd->got[nd->n_got++];
    g->from = m->from;
    g->type = m->type;
    g->view = m->view;
    g->n_entries = m->n_entries;
    g->intact = 1;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        g->bytes += m->entries[i].len;
        for (uint32_t j = 0; j < m->entries[i].len; j++)
            if (m->entries[i].data[j] != (uint8_t)(m->entries[i].op + j))
                g->intact = 0;
    }
}

static void on_status(void *ud, pl_server_status *row)
{
    (void)ud;
    memset(row, 0, sizeof *row);
    row->role = pl_str_c("backup");
}

static void on_status_reply(void *ud, uint64_t query_id, const pl_server_status *row)
{
    (void)ud;
    (void)query_id;
    (void)row;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Run the loop for ms milliseconds. */
static void run_for(unsigned ms)
{
    uint64_t end = now_ms() + ms;
    while (now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
}

#define RUN_UNTIL(cond, ms)                                                      \
    do {                                                                         \
        uint64_t end_ = now_ms() + (ms);                                         \
        while (!(cond) && now_ms() < end_)                                       \
            event_base_loop(base, EVLOOP_ONCE);                                  \
        ck_assert_msg((cond), "timed out after %u ms waiting for %s", (unsigned)(ms), #cond); \
    } while (0)

/* A port below the kernel's ephemeral range (32768 and up by default), so
 * no outgoing connection of another process on this machine can take it
 * between this probe and our bind; probed on all addresses because one
 * case listens there. */
static uint16_t free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int tries = 0; tries < 1000; tries++) {
        uint16_t port = (uint16_t)(20000 + rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_ANY) };
        ck_assert_int_ge(fd, 0);
        int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(fd);
        if (ok)
            return port;
    }
    ck_abort_msg("no free port between 20000 and 32000");
    return 0;
}

static pl_server_conf srv(int i)
{
    return (pl_server_conf){ .host = "127.0.0.1", .port = 1, .peer_port = ports[i] };
}

/* Start node i with the servers listed (node indexes), self being i. */
static void start(int i, const int *list, size_t n)
{
    pl_server_conf t[3];
    uint32_t self = 0;
    for (size_t k = 0; k < n; k++) {
        t[k] = srv(list[k]);
        if (list[k] == i)
            self = (uint32_t)k;
    }
    pl_peer_cb cb = { .ud = &nodes[i], .vr = on_vr, .status = on_status,
                      .status_reply = on_status_reply };
    char err[256] = "";
    nodes[i].p = pl_peer_new(base, cfg, t, n, self, &cb, err, sizeof err);
    ck_assert_msg(nodes[i].p != NULL, "node %d: %s", i, err);
}

static int set_table(int i, const int *list, size_t n)
{
    pl_server_conf t[3];
    uint32_t self = 0;
    for (size_t k = 0; k < n; k++) {
        t[k] = srv(list[k]);
        if (list[k] == i)
            self = (uint32_t)k;
    }
    return pl_peer_set_servers(nodes[i].p, t, n, self);
}

static pl_peer_counters counts(int i)
{
    pl_peer_counters c;
    pl_peer_counts(nodes[i].p, &c);
    return c;
}

/* A VR message of `type` whose entries (if any) carry n_entries * each
 * bytes with a checkable pattern. */
static void send_vr(int i, uint32_t to, uint32_t type, uint64_t view, uint32_t n_entries,
                    uint32_t each)
{
    pl_log_entry *es = calloc(n_entries ? n_entries : 1, sizeof *es);
    uint8_t **bufs = calloc(n_entries ? n_entries : 1, sizeof *bufs);
    ck_assert(es && bufs);
    for (uint32_t k = 0; k < n_entries; k++) {
        bufs[k] = malloc(each ? each : 1);
        ck_assert(bufs[k] != NULL);
        es[k].op = 11 + k;
        es[k].view = view;
        es[k].len = each;
        for (uint32_t j = 0; j < each; j++)
            bufs[k][j] = (uint8_t)(es[k].op + j);
        es[k].data = bufs[k];
    }
    pl_vr_msg m = { .type = type, .view = view, .op = 10 + n_entries, .commit = 10,
                    .anchor_op = 10, .anchor_view = view, .entries = es,
                    .n_entries = n_entries };
    pl_peer_send(nodes[i].p, to, &m);
    for (uint32_t k = 0; k < n_entries; k++)
        free(bufs[k]);
    free(bufs);
    free(es);
}

/* Received by node i from slot `from` with this view. */
static int has_got(int i, uint32_t from, uint64_t view)
{
    for (int k = 0; k < nodes[i].n_got; k++)
        if (nodes[i].got[k].from == from && nodes[i].got[k].view == view)
            return 1;
    return 0;
}

static void net_setup(int with_secret)
{
    pl_log_set_level(PL_LOG_WARN);
    base = event_base_new();
    ck_assert(base != NULL);
    /* EVLOOP_ONCE returns at least this often, so deadlines are checked */
    tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = { 0, 10000 };
    event_add(tick, &tv);
    cfg = pl_config_default();
    ck_assert(cfg != NULL);
    if (with_secret) {
        cfg->cluster_secret = strdup(SECRET);
        ck_assert(cfg->cluster_secret != NULL);
    }
    memset(nodes, 0, sizeof nodes);
    for (int i = 0; i < 3; i++) {
        ports[i] = free_port();
        for (int j = 0; j < i; j++)
            if (ports[j] == ports[i])
                ports[i] = free_port();
    }
}

static void net_teardown(void)
{
    for (int i = 0; i < 3; i++)
        pl_peer_free(nodes[i].p);
    event_free(tick);
    pl_config_free(cfg);
    event_base_free(base);
}

/* Renumbering keeps a live link: the same connection, at once, and the
 * receiver maps the sender by address to its own (changed) slot. */
START_TEST(set_servers_renumbers_live_links)
{
    net_setup(_i);
    static const int ab[] = { 0, 1 }, ba[] = { 1, 0 };
    start(0, ab, 2);
    start(1, ab, 2);
    RUN_UNTIL(pl_peer_connected(nodes[0].p, 1) && pl_peer_connected(nodes[1].p, 0) &&
              counts(0).incoming_mapped == 1 && counts(1).incoming_mapped == 1, 5000);
    send_vr(0, 1, PL_VR_COMMIT, 1, 0, 0);
    RUN_UNTIL(has_got(1, 0, 1), 2000);
    /* Each side learned from the other's Hello which op kinds it applies. */
    ck_assert_uint_eq(pl_peer_op_kinds(nodes[0].p, 1), PL_OP__COUNT);
    ck_assert_uint_eq(pl_peer_op_kinds(nodes[1].p, 0), PL_OP__COUNT);
    ck_assert_msg(pl_peer_op_kinds(nodes[0].p, 0) == 0, "no link to ourselves: nothing known");

    uint64_t acc0 = counts(0).accepted, acc1 = counts(1).accepted;
    /* A's own slot moves from 0 to 1, B's from 1 to 0 */
    ck_assert_int_eq(set_table(0, ba, 2), PL_OK);
    ck_assert_msg(pl_peer_connected(nodes[0].p, 0), "the link to B is up at once as slot 0");
    ck_assert(!pl_peer_connected(nodes[0].p, 1)); /* that is A itself now */
    send_vr(0, 0, PL_VR_COMMIT, 2, 0, 0);
    /* B has not changed its table: A is still its slot 0 */
    RUN_UNTIL(has_got(1, 0, 2), 2000);
    ck_assert_int_eq(set_table(1, ba, 2), PL_OK);
    ck_assert(pl_peer_connected(nodes[1].p, 1));
    send_vr(0, 0, PL_VR_PREPARE, 3, 2, 100);
    RUN_UNTIL(has_got(1, 1, 3), 2000);
    got *g = &nodes[1].got[nodes[1].n_got - 1];
    ck_assert_uint_eq(g->n_entries, 2);
    ck_assert(g->intact);
    run_for(300);
    ck_assert_msg(counts(0).accepted == acc0 && counts(1).accepted == acc1,
                  "no connection was re-made (accepted %llu, %llu; before %llu, %llu)",
                  (unsigned long long)counts(0).accepted, (unsigned long long)counts(1).accepted,
                  (unsigned long long)acc0, (unsigned long long)acc1);
    ck_assert_uint_eq(counts(0).links_up, 1);
    ck_assert_uint_eq(counts(0).links_retiring, 0);

    /* Refused tables change nothing. */
    pl_server_conf t[PL_VR_MAX_REPLICAS + 1];
    for (size_t k = 0; k <= PL_VR_MAX_REPLICAS; k++)
        t[k] = (pl_server_conf){ .host = "127.0.0.1", .peer_port = (uint16_t)(20000 + k) };
    t[0] = srv(0);
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 0, 0), PL_ERR_INVALID);
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, PL_VR_MAX_REPLICAS + 1, 0),
                     PL_ERR_INVALID);
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 2, 2), PL_ERR_INVALID);
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 2, 1), PL_ERR_INVALID); /* not us */
    t[1] = srv(0);
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 2, 0), PL_ERR_INVALID); /* twice */
    t[1] = (pl_server_conf){ .host = "", .peer_port = 1 };
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 2, 0), PL_ERR_INVALID);
    t[1] = (pl_server_conf){ .host = "127.0.0.1", .peer_port = 0 };
    ck_assert_int_eq(pl_peer_set_servers(nodes[0].p, t, 2, 0), PL_ERR_INVALID);
    ck_assert(pl_peer_connected(nodes[0].p, 0));
    send_vr(0, 0, PL_VR_COMMIT, 4, 0, 0);
    RUN_UNTIL(has_got(1, 1, 4), 2000);
    net_teardown();
}
END_TEST

/* An unlisted sender is heard only once a table lists it; an added
 * address is dialled; a removed one gets what was queued for it, then its
 * link closes. */
START_TEST(set_servers_adds_removes_and_ignores_unlisted)
{
    net_setup(_i);
    static const int ab[] = { 0, 1 }, abc[] = { 0, 1, 2 }, ac[] = { 0, 2 };
    start(0, ab, 2);
    start(1, ab, 2);
    start(2, abc, 3); /* C lists A and B; neither lists C yet */
    RUN_UNTIL(pl_peer_connected(nodes[0].p, 1) && pl_peer_connected(nodes[1].p, 0) &&
              pl_peer_connected(nodes[2].p, 0) && pl_peer_connected(nodes[2].p, 1) &&
              counts(0).incoming_unmapped == 1 && counts(1).incoming_unmapped == 1, 5000);
    ck_assert_uint_eq(counts(0).incoming_mapped, 1);

    /* C's messages to A are dropped while A does not list C */
    send_vr(2, 0, PL_VR_SVC, 10, 0, 0);
    send_vr(2, 0, PL_VR_PREPARE, 11, 1, 10);
    run_for(300);
    ck_assert_int_eq(nodes[0].n_got, 0);

    uint64_t acc0 = counts(0).accepted, acc2 = counts(2).accepted;
    ck_assert_int_eq(set_table(0, abc, 3), PL_OK);
    /* C's connection is remapped, not re-made */
    ck_assert_uint_eq(counts(0).incoming_unmapped, 0);
    ck_assert_uint_eq(counts(0).incoming_mapped, 2);
    send_vr(2, 0, PL_VR_COMMIT, 12, 0, 0);
    RUN_UNTIL(has_got(0, 2, 12), 2000);
    ck_assert_int_eq(nodes[0].n_got, 1);
    /* and A dials C */
    RUN_UNTIL(pl_peer_connected(nodes[0].p, 2) && counts(2).incoming_mapped == 1, 5000);
    ck_assert_uint_eq(counts(0).accepted, acc0);
    ck_assert_uint_eq(counts(2).accepted, acc2 + 1);
    send_vr(0, 2, PL_VR_COMMIT, 13, 0, 0);
    RUN_UNTIL(has_got(2, 0, 13), 2000);

    /* A removes B right after queueing a large message for it: B still
     * gets all of it, then the link closes. */
    send_vr(0, 1, PL_VR_PREPARE, 14, 4, 2u * 1024u * 1024u);
    ck_assert_int_eq(set_table(0, ac, 2), PL_OK);
    ck_assert_uint_eq(counts(0).links_retiring, 1);
    ck_assert_msg(pl_peer_connected(nodes[0].p, 1), "C, renumbered to slot 1, stays up");
    RUN_UNTIL(has_got(1, 0, 14), 5000);
    got *g = &nodes[1].got[nodes[1].n_got - 1];
    ck_assert_uint_eq(g->n_entries, 4);
    ck_assert_uint_eq(g->bytes, 8u * 1024u * 1024u);
    ck_assert(g->intact);
    RUN_UNTIL(counts(0).links_retiring == 0 && counts(1).incoming_mapped == 0, 3000);
    ck_assert_uint_eq(counts(0).links_up, 1);
    /* B still lists A and keeps its link; A now ignores B */
    RUN_UNTIL(counts(0).incoming_unmapped == 1, 2000);
    int before = nodes[0].n_got;
    send_vr(1, 0, PL_VR_COMMIT, 15, 0, 0);
    send_vr(2, 0, PL_VR_COMMIT, 16, 0, 0); /* C is slot 1 now */
    RUN_UNTIL(has_got(0, 1, 16), 2000);
    run_for(100);
    ck_assert_int_eq(nodes[0].n_got, before + 1);
    net_teardown();
}
END_TEST

/* The dialler refuses an acceptor whose Hello names another address. */
START_TEST(dialler_checks_the_acceptors_address)
{
    net_setup(_i);
    static const int ab[] = { 0, 1 };
    start(0, ab, 2);
    /* B believes it is 0.0.0.0:port: it listens there too, so A's dial to
     * 127.0.0.1:port reaches it, but its Hello names another address. */
    pl_server_conf t[2] = { srv(0), srv(1) };
    t[1].host = "0.0.0.0";
    pl_peer_cb cb = { .ud = &nodes[1], .vr = on_vr, .status = on_status,
                      .status_reply = on_status_reply };
    char err[256] = "";
    nodes[1].p = pl_peer_new(base, cfg, t, 2, 1, &cb, err, sizeof err);
    ck_assert_msg(nodes[1].p != NULL, "%s", err);
    RUN_UNTIL(pl_peer_connected(nodes[1].p, 0), 5000);
    run_for(500);
    ck_assert(!pl_peer_connected(nodes[0].p, 1));
    ck_assert_uint_ge(counts(1).accepted, 1);
    net_teardown();
}
END_TEST

/* PARLEY_PEER_DIAL: A dials B's address at C's port. C answers with its
 * own address, which is not the one A meant, so A refuses it: the dial went
 * elsewhere while the identity check kept B's address. A malformed setting
 * fails pl_peer_new with a message naming it. */
START_TEST(dial_elsewhere_keeps_the_identity)
{
    net_setup(0);
    static const int ab[] = { 0, 1 }, c_only[] = { 2 };
    char via[128];
    snprintf(via, sizeof via, "127.0.0.1:%u=127.0.0.1:%u", ports[1], ports[2]);
    setenv("PARLEY_PEER_DIAL", via, 1);
    start(0, ab, 2);
    unsetenv("PARLEY_PEER_DIAL");
    start(1, ab, 2);
    start(2, c_only, 1);
    RUN_UNTIL(counts(2).accepted >= 2, 5000);
    ck_assert(!pl_peer_connected(nodes[0].p, 1));
    ck_assert_uint_eq(counts(1).accepted, 0);

    static const char *const bad[] = { "127.0.0.1:1", "127.0.0.1:1=", "=127.0.0.1:2",
                                       "127.0.0.1:0=127.0.0.1:2", "127.0.0.1:1=a b:2",
                                       "127.0.0.1:1=127.0.0.1:2,,", "x" };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        setenv("PARLEY_PEER_DIAL", bad[k], 1);
        pl_server_conf t[1] = { { .host = "127.0.0.1", .port = 1, .peer_port = free_port() } };
        pl_peer_cb cb = { .vr = on_vr, .status = on_status, .status_reply = on_status_reply };
        char err[256] = "";
        pl_peer *p = pl_peer_new(base, cfg, t, 1, 0, &cb, err, sizeof err);
        unsetenv("PARLEY_PEER_DIAL");
        ck_assert_msg(p == NULL, "PARLEY_PEER_DIAL=%s accepted", bad[k]);
        ck_assert_msg(strstr(err, "PARLEY_PEER_DIAL") != NULL, "%s: %s", bad[k], err);
    }
    net_teardown();
}
END_TEST

/* Raw connections that complete a Hello from unlisted addresses: at most
 * PL_PEER_MAX_UNMAPPED stay open. Without a secret, the Hello is all the
 * handshake there is. */
START_TEST(unlisted_connections_are_capped)
{
    net_setup(0);
    static const int ab[] = { 0, 1 };
    start(0, ab, 2);
    enum { N = PL_PEER_MAX_UNMAPPED + 3 };
    int fds[N];
    for (int k = 0; k < N; k++) {
        fds[k] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(ports[0]),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        ck_assert_int_eq(connect(fds[k], (struct sockaddr *)&sa, sizeof sa), 0);
        uint8_t buf[604];
        size_t len = pack_hello(buf + 4, PL_PEER_VERSION, "10.9.9.9", (uint32_t)(30000 + k));
        buf[0] = 0;
        buf[1] = 0;
        buf[2] = (uint8_t)(len >> 8);
        buf[3] = (uint8_t)len;
        ck_assert_int_eq(write(fds[k], buf, len + 4), (ssize_t)(len + 4));
    }
    RUN_UNTIL(counts(0).accepted == N && counts(0).incoming_unmapped == PL_PEER_MAX_UNMAPPED,
              5000);
    run_for(100);
    int closed = 0;
    for (int k = 0; k < N; k++) {
        uint8_t b[1024];
        ssize_t r;
        while ((r = recv(fds[k], b, sizeof b, MSG_DONTWAIT)) > 0)
            ;
        closed += r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
        close(fds[k]);
    }
    ck_assert_int_eq(closed, N - (int)PL_PEER_MAX_UNMAPPED);
    net_teardown();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("peer");
    TCase *dec = tcase_create("decode");
    tcase_add_test(dec, decode_hello_identity);
    tcase_add_test(dec, decode_hello_bad_identity);
    suite_add_tcase(s, dec);
    TCase *net = tcase_create("network");
    tcase_set_timeout(net, 60);
    /* _i = 0: no cluster secret; 1: with one */
    tcase_add_loop_test(net, set_servers_renumbers_live_links, 0, 2);
    tcase_add_loop_test(net, set_servers_adds_removes_and_ignores_unlisted, 0, 2);
    tcase_add_loop_test(net, dialler_checks_the_acceptors_address, 0, 2);
    tcase_add_test(net, unlisted_connections_are_capped);
    tcase_add_test(net, dial_elsewhere_keeps_the_identity);
    suite_add_tcase(s, net);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
