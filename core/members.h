/*
 * core/members.h — the cluster's membership: which servers replicate, in
 * which order (order = priority), since which epoch.
 *
 * The membership in force is replicated state (DESIGN.md §4, issue 9): it
 * changes only by a RECONFIG op in the log (core/chat.h PL_OP_RECONFIG, whose
 * body is pl_members_encode() output) and takes effect, on every replica,
 * when that op is applied. Each replica then writes it to
 * DATA_DIR/membership.json (atomically: temp file, fsync, rename, fsync of
 * the directory) before anything of the new epoch happens, so a restart
 * finds it even when the config file is stale. Snapshots carry it too.
 *
 * Epoch 0 is the configuration file's "servers" list; it is never written
 * to membership.json (no file = epoch 0 = the config file).
 *
 * Encoding (op body, file, snapshot header) is one JSON object, so an
 * operator can read the file:
 *   {"epoch": 2, "op": 1234,
 *    "servers": [{"host": "127.0.0.1", "port": 8100, "peer_port": 9100}, ...]}
 * "op" is the op-number of the RECONFIG op that started the epoch (0 when
 * the object is a proposal not yet in the log). Servers are compared by
 * (host, peer_port): that pair is a server's identity on the peer network.
 *
 * Prefix: pl_members_.
 */
#ifndef PL_CORE_MEMBERS_H
#define PL_CORE_MEMBERS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define PL_MEMBERS_MAX 16          /* = PL_VR_MAX_REPLICAS */
/* view = (epoch << 40) | view-in-epoch, so an epoch fits in 24 bits. */
#define PL_MEMBERS_EPOCH_MAX ((UINT64_C(1) << 24) - 1)
#define PL_MEMBERS_FILE "membership.json"

typedef struct pl_members {
    uint64_t epoch;
    uint64_t op;                   /* RECONFIG op that started this epoch; 0 for epoch 0 */
    size_t n;
    pl_server_conf servers[PL_MEMBERS_MAX]; /* host strings owned (pl_members_clear) */
} pl_members;

/* Copy of a server list as epoch 0 (from the config file). host strings are
 * duplicated; admin_port is copied too (it is not part of the encoding).
 * PL_ERR_INVALID when the list fails decode()'s checks (n is 0 or above
 * PL_MEMBERS_MAX, a host outside the character set, shared endpoints).
 * m (and dst below) is overwritten, not cleared first: clear a live one. */
int pl_members_from_config(pl_members *m, const pl_server_conf *servers, size_t n);
void pl_members_clear(pl_members *m);
int pl_members_copy(pl_members *dst, const pl_members *src);

/* Canonical JSON (keys in the order above, no spaces): byte-identical for
 * equal memberships. *out is malloc'd and NUL-terminated; caller frees. */
int pl_members_encode(const pl_members *m, char **out, size_t *len);
/* Parse and validate: epoch an integer 0..PL_MEMBERS_EPOCH_MAX, op an
 * integer 0..2^53-1, 1..16 servers, host 1..253 characters of
 * [A-Za-z0-9._:%-] (IPv6 without brackets), ports 1-65535, peer_port !=
 * port, and no port or peer_port of one server equal to a port or peer_port
 * of another on the same host (so (host, peer_port) identifies a server).
 * No other keys, no duplicate keys; insignificant whitespace is accepted.
 * encode() refuses (PL_ERR_INVALID) what decode() would refuse. Never
 * crashes on any input. PL_ERR_CORRUPT on bad input, with the reason in err
 * when err != NULL; m is then empty (nothing to clear). */
int pl_members_decode(const uint8_t *buf, size_t len, pl_members *m, char *err, size_t errlen);

/* Index of the server with this (host, peer_port), or -1. */
int pl_members_find(const pl_members *m, const char *host, uint16_t peer_port);
/* Same servers (host, port, peer_port) in the same order (epoch, op and
 * admin_port not compared). */
int pl_members_same(const pl_members *a, const pl_members *b);
/* One line for logs: "127.0.0.1:8100, [::1]:8101 (epoch 2)" into buf
 * (client ports; truncated to len). Returns buf. */
const char *pl_members_describe(const pl_members *m, char *buf, size_t len);

/* DATA_DIR/membership.json. load: PL_OK, PL_ERR_NOT_FOUND when there is no
 * file (epoch 0), PL_ERR_CORRUPT/PL_ERR_IO with a reason in err. save:
 * atomic and durable on return (see above). */
int pl_members_load(const char *data_dir, pl_members *m, char *err, size_t errlen);
int pl_members_save(const char *data_dir, const pl_members *m, char *err, size_t errlen);

/* Parse "HOST:PORT[:PEER_PORT]" (PEER_PORT defaults to PORT + 1000; an IPv6
 * host in brackets: "[::1]:8100", stored without them). out is overwritten;
 * on PL_OK out->host is malloc'd (caller frees) and admin_port is 0.
 * PL_ERR_INVALID with a reason in err. */
int pl_members_parse_addr(const char *s, pl_server_conf *out, char *err, size_t errlen);

#endif
