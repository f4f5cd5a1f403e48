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
} pl_peer_cb;

pl_peer *pl_peer_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                     const pl_peer_cb *cb, char *err, size_t errlen);
void pl_peer_free(pl_peer *p);
void pl_peer_send(pl_peer *p, uint32_t to, const pl_vr_msg *m);
/* Ask server `to` for its status row; PL_ERR_UNAVAILABLE when not connected. */
int pl_peer_status_request(pl_peer *p, uint32_t to, uint64_t query_id);
/* Is the outgoing link to `to` up? */
int pl_peer_connected(const pl_peer *p, uint32_t to);

#endif
