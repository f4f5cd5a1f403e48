/*
 * plugins/common/net.h — socket helpers shared by transport plugins
 * (framed.c, transport-ws): addresses, listening, connecting. Plugin-side
 * code: public ABI headers only.
 *
 * Prefix: pl_net_.
 */
#ifndef PL_PLUGINS_NET_H
#define PL_PLUGINS_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>
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

/* A listening socket on ss (ss_text: its "ip:port" for messages) whose
 * accepted sockets go to cb(..., arg) on host->base. When accept fails
 * (out of descriptors and the like) it logs one line through host->log
 * and stops accepting for a moment instead of spinning on the socket.
 * host is copied. PL_ERR_IO ("cannot listen on ...") or PL_ERR_NOMEM with
 * the reason in err. Freeing it (pl_net_listener_free) closes the socket. */
typedef struct pl_net_listener pl_net_listener;
int pl_net_listen(const pl_transport_host *host, const struct sockaddr_storage *ss,
                  socklen_t sslen, const char *ss_text, evconnlistener_cb cb, void *arg,
                  pl_net_listener **out, char *err, size_t errlen);
void pl_net_listener_free(pl_net_listener *l);

/* Start connecting bev (not yet connected) to ss; the outcome is bev's
 * CONNECTED or error event. PL_ERR_IO with "cannot connect to ADDR: ..."
 * in err when it fails at once. */
int pl_net_connect(struct bufferevent *bev, const struct sockaddr_storage *ss,
                   socklen_t sslen, char *err, size_t errlen);

#endif
