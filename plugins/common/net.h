/*
 * plugins/common/net.h — socket helpers shared by transport plugins
 * (framed.c, transport-ws). Plugin-side code: public ABI headers only.
 *
 * Prefix: pl_net_.
 */
#ifndef PL_PLUGINS_NET_H
#define PL_PLUGINS_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/util.h>

#include <parley/common.h>
#include <parley/transport.h>

/* printf into err (errlen bytes); nothing when err is NULL. */
void pl_net_err(char *err, size_t errlen, const char *fmt, ...) PL_PRINTF(3, 4);
/* One line (at most 511 bytes) through host->log; nothing without one. */
void pl_net_log(const pl_transport_host *host, int level, const char *fmt, ...)
    PL_PRINTF(3, 4);

/* host:port into *ss. A numeric address needs no lookup; a name falls back
 * to getaddrinfo's resolver, which blocks (acceptable at server start and
 * for a client's connect, both rare). "" or NULL means 127.0.0.1.
 * PL_ERR_CONFIG with the reason in err. */
int pl_net_resolve(const char *host, uint16_t port, int passive,
                   struct sockaddr_storage *ss, socklen_t *sslen,
                   char *err, size_t errlen);
/* "ip:port" or "[ip6]:port" for log lines and the core's peer text. */
void pl_net_addr_text(const struct sockaddr *sa, char *out, size_t outlen);
/* TCP_NODELAY: requests and answers are small and latency-bound. */
void pl_net_nodelay(evutil_socket_t fd);

#endif
