/*
 * core/server.h — one parleyd server: the plugins, the store, the chat state
 * machine, the hashing workers, the sequencer and the client request
 * pipeline, all on one libevent event_base.
 *
 * Prefix: pl_server_.
 */
#ifndef PL_CORE_SERVER_H
#define PL_CORE_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

struct event_base;
typedef struct pl_server pl_server;

/* Load the plugins named in cfg, open the store in data_dir, replay the log,
 * start the workers and listen on cfg->servers[self]. The cluster's
 * membership is DATA_DIR/membership.json when it exists (core/members.h),
 * else the config's servers; join: with no membership.json, this server is
 * not a member but a learner waiting to be added (parleyd --join). cfg must
 * outlive the server. On failure returns NULL with a one-line reason in err. */
pl_server *pl_server_new(struct event_base *base, const pl_config *cfg, uint32_t self,
                         const char *data_dir, int join, char *err, size_t errlen);

/* Begin a graceful stop: stop accepting, refuse new work, finish queued hash
 * jobs and batches, answer what can be answered, close the connections, then
 * make the event loop return. Safe to call more than once. */
void pl_server_shutdown(pl_server *s, const char *why);

/* Replace the client limits (config.h, struct pl_limits) of a running
 * server, e.g. on a configuration reload. Takes effect for the next request,
 * connection and login; connections over a lowered conns_per_address stay. */
void pl_server_set_limits(pl_server *s, const pl_limits *limits);

/* Close every connection, stop the workers, close the store cleanly, unload
 * the plugins. */
void pl_server_free(pl_server *s);

#endif
