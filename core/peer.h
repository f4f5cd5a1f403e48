/*
 * core/peer.h — the peer network: carries VR messages and status queries
 * between the servers of one cluster (proto/peer.proto), on each server's
 * peer port.
 *
 * Each server keeps one outgoing connection to every other server (it sends
 * its VR messages and status queries there, and reads status replies back)
 * and accepts incoming connections (it reads VR messages and status queries
 * from them). A connection starts with a Hello naming the sender; a frame is
 * a 4-byte big-endian length and one PeerFrame, at most max_frame bytes.
 * Lost connections are re-dialled with back-off; messages sent while a link
 * is down are dropped, which VR tolerates.
 *
 * Prefix: pl_peer_.
 */
#ifndef PL_CORE_PEER_H
#define PL_CORE_PEER_H

#include <parley/types.h>
#include "config.h"
#include "vr.h"

#define PL_PEER_VERSION 1u
#define PL_PEER_MAX_FRAME (256u * 1024u * 1024u)

struct event_base;
typedef struct pl_peer pl_peer;

typedef struct pl_peer_cb {
    void *ud;
    /* A VR message from server m->from (taken from the connection's Hello,
     * not from the message). Valid during the call only. */
    void (*vr)(void *ud, const pl_vr_msg *m);
    /* Fill our own status row (strings must stay valid until the next
     * event-loop iteration). */
    void (*status)(void *ud, pl_server_status *row);
    /* A peer answered pl_peer_status_request. */
    void (*status_reply)(void *ud, uint64_t query_id, const pl_server_status *row);
    /* One chunk of a snapshot from server `from` (valid during the call). */
    void (*snapshot)(void *ud, uint32_t from, uint64_t view, uint64_t offset, uint64_t total,
                     const uint8_t *data, size_t len);
} pl_peer_cb;

pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen);
void pl_peer_free(pl_peer *p);
void pl_peer_send(pl_peer *p, uint32_t to, const pl_vr_msg *m);
/* Send a whole snapshot to `to` in chunks; PL_ERR_UNAVAILABLE when the link
 * is down or its backlog is too large. */
int pl_peer_send_snapshot(pl_peer *p, uint32_t to, uint64_t view, const uint8_t *data,
                          size_t len);
/* Ask server `to` for its status row; PL_ERR_UNAVAILABLE when not connected. */
int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id);
/* Is the outgoing link to `to` up? */
int pl_peer_connected(const pl_peer *p, uint32_t to);

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
    uint32_t version, from, n;     /* HELLO */
    const uint8_t *nonce;          /* HELLO: the sender's challenge (may be absent) */
    size_t nonce_len;
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
 * PL_ERR_MALFORMED when the bytes are not a PeerFrame (the connection is
 * closed); PL_ERR_INVALID for a VR message whose entries are not one
 * consecutive run starting right after the anchor (dropped); PL_ERR_NOMEM.
 * Release with pl_peer_frame_clear, after an error too. */
int pl_peer_decode_frame(const uint8_t *buf, size_t len, pl_peer_frame *f);
void pl_peer_frame_clear(pl_peer_frame *f);

#endif
