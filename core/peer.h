/*
 * core/peer.h — the peer network: carries VR messages and status queries
 * between the servers of one cluster (proto/peer.proto), on each server's
 * peer port.
 *
 * Servers are known by slot: an index into the slot table given to
 * pl_peer_new and replaced at run time by pl_peer_set_servers (membership
 * changes). On the wire a server is identified by its address, the (host,
 * peer_port) of its slot, which its Hello names; the receiver maps it to its
 * own current slot, so slot numbers are local and may differ between
 * servers for a while during a change.
 *
 * Each server keeps one outgoing connection to every other slot (it sends
 * its VR messages and status queries there, and reads status replies back)
 * and accepts incoming connections (it reads VR messages and status queries
 * from them). A connection starts with a Hello from each side; a frame is a
 * 4-byte big-endian length and one PeerFrame, at most max_frame bytes.
 * Lost connections are re-dialled with back-off; messages sent while a link
 * is down are dropped, which VR tolerates. An authenticated incoming
 * connection from an address not in the table stays open (a later table may
 * list it) but its messages are dropped.
 *
 * Prefix: pl_peer_.
 */
#ifndef PL_CORE_PEER_H
#define PL_CORE_PEER_H

#include <parley/types.h>
#include "config.h"
#include "vr.h"

#define PL_PEER_VERSION 2u
#define PL_PEER_MAX_FRAME (256u * 1024u * 1024u)
#define PL_PEER_HOST_MAX 253u      /* a DNS name's longest text form */
/* Authenticated incoming connections from addresses the table does not list
 * (servers being added, or a table of ours that is behind): beyond this many
 * more are closed, so strangers with the secret cannot exhaust descriptors. */
#define PL_PEER_MAX_UNMAPPED 32u

struct event_base;
typedef struct pl_peer pl_peer;

typedef struct pl_peer_cb {
    void *ud;
    /* A VR message from slot m->from (the current slot of the address the
     * connection's Hello named, not anything in the message). Valid during
     * the call only. */
    void (*vr)(void *ud, const pl_vr_msg *m);
    /* Fill our own status row (strings must stay valid until the next
     * event-loop iteration). */
    void (*status)(void *ud, pl_server_status *row);
    /* A peer answered pl_peer_status_request; row->id is its current slot. */
    void (*status_reply)(void *ud, uint64_t query_id, const pl_server_status *row);
    /* One chunk of a snapshot from slot `from` (valid during the call). */
    void (*snapshot)(void *ud, uint32_t from, uint64_t view, uint64_t offset, uint64_t total,
                     const uint8_t *data, size_t len);
} pl_peer_cb;

/* Slot i is servers[i] (copied: the caller's array need not outlive the
 * call); `self` is our own slot: we listen on servers[self].peer_port and
 * dial every other slot. cfg supplies the cluster secret, TLS and limits and
 * must outlive the pl_peer. n is 1..PL_VR_MAX_REPLICAS; hosts are numeric
 * and no two slots share an address. NULL with err on failure.
 * The environment variable PARLEY_PEER_DIAL="HOST:PORT=HOST:PORT,..." makes
 * it dial the address on the left of an entry at the one on the right (the
 * fault harness's proxy, tests/fault); identities are unaffected. */
pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg,
                     const pl_server_conf *servers, size_t n, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen);
void pl_peer_free(pl_peer *p);
/* Replace the slot table. Our own address must stay the same (only its slot
 * may move). Links to addresses in both tables are kept and renumbered
 * (no reconnect); links to addresses no longer listed are closed once what
 * was queued on them has been written (at most 2 s later), so a removed
 * server still gets the last messages sent to it; new addresses are dialled.
 * Incoming connections are re-mapped by the address their Hello named.
 * PL_ERR_INVALID (nothing changed) when n is 0 or above
 * PL_VR_MAX_REPLICAS, self is out of range, servers[self] is not our
 * address, a host is not 1..PL_PEER_HOST_MAX bytes, a peer port is 0, or
 * two slots share an address; PL_ERR_NOMEM. */
int pl_peer_set_servers(pl_peer *p, const pl_server_conf *servers, size_t n, uint32_t self);
/* Send to slot `to` of the current table (dropped when its link is down). */
void pl_peer_send(pl_peer *p, uint32_t to, const pl_vr_msg *m);
/* Send a whole snapshot to `to` in chunks; PL_ERR_UNAVAILABLE when the link
 * is down or its backlog is too large. */
int pl_peer_send_snapshot(pl_peer *p, uint32_t to, uint64_t view, const uint8_t *data,
                          size_t len);
/* Ask server `to` for its status row; PL_ERR_UNAVAILABLE when not connected. */
int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id);
/* Is the outgoing link to slot `to` up (handshake done)? */
int pl_peer_connected(const pl_peer *p, uint32_t to);
/* How many op kinds the server at slot `to` said in its Hello that it
 * applies (peer.proto, Hello.op_kinds): 0 when the link is down or the
 * server is older than the field. */
uint32_t pl_peer_op_kinds(const pl_peer *p, uint32_t to);

/* What the network holds right now, for metrics and tests. */
typedef struct pl_peer_counters {
    unsigned links_up;             /* outgoing links with the handshake done */
    unsigned links_retiring;       /* to removed servers, still writing */
    unsigned incoming_mapped;      /* past the Hello, from a listed address */
    unsigned incoming_unmapped;    /* past the Hello, from an unlisted one */
    uint64_t accepted;             /* incoming connections ever accepted */
} pl_peer_counters;
void pl_peer_counts(const pl_peer *p, pl_peer_counters *c);

/* One peer frame decoded and checked: what the network code acts on. */
enum pl_peer_frame_kind {
    PL_PEER_F_NONE = 0,            /* no body, or a kind this version does not know */
    PL_PEER_F_HELLO = 1,
    PL_PEER_F_VR = 2,
    PL_PEER_F_STATUS_REQUEST = 3,
    PL_PEER_F_STATUS_REPLY = 4,
    PL_PEER_F_SNAPSHOT = 5,
    PL_PEER_F_AUTH = 6,              /* proof of the cluster secret */
};

typedef struct pl_peer_frame {
    int kind;                      /* enum pl_peer_frame_kind */
    uint32_t version, from, n;     /* HELLO (from, n: informational only) */
    pl_str host;                   /* HELLO: the sender's identity (its */
    uint16_t peer_port;            /*   address); NUL-terminated host */
    const uint8_t *nonce;          /* HELLO: the sender's challenge (may be absent) */
    size_t nonce_len;
    uint32_t op_kinds;             /* HELLO: op kinds the sender applies (0: not said) */
    const uint8_t *mac;            /* AUTH */
    size_t mac_len;
    pl_vr_msg vr;                  /* VR; vr.from is 0: the connection says who sent it */
    uint64_t query_id;             /* STATUS_REQUEST, STATUS_REPLY */
    pl_server_status row;          /* STATUS_REPLY; row.id as the sender claims it */
    uint64_t snap_view, snap_offset, snap_total; /* SNAPSHOT: a chunk, checked to lie */
    const uint8_t *snap_data;      /*   within the total */
    size_t snap_len;
    void *pb;                      /* owns what the fields above point to */
    pl_log_entry *entries;         /* owns vr.entries */
} pl_peer_frame;

/* Decode the bytes of one frame (after its 4-byte length) into *f. Pure: no
 * socket and no state, so tests/fuzz drives it directly. Returns PL_OK;
 * PL_ERR_MALFORMED when the bytes are not a PeerFrame, or are a Hello whose
 * host is not 1..PL_PEER_HOST_MAX bytes of [A-Za-z0-9.:-] or whose
 * peer_port is not 1..65535 (the connection is closed); PL_ERR_INVALID for
 * a VR message whose entries are not one consecutive run starting right
 * after the anchor (dropped); PL_ERR_NOMEM.
 * Release with pl_peer_frame_clear, after an error too. */
int pl_peer_decode_frame(const uint8_t *buf, size_t len, pl_peer_frame *f);
void pl_peer_frame_clear(pl_peer_frame *f);

#endif
