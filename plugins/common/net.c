/*
 * plugins/common/net.c — socket helpers shared by the transports' socket
 * halves (net.h): address resolution, address text, TCP_NODELAY, the
 * listening socket with its pause after a failed accept, connecting.
 */
#include "net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/util.h>

#define NET_BACKLOG 511
/* Pause before accepting again after EMFILE and friends. */
#define NET_ACCEPT_RETRY_MS 500

void pl_net_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* host->log takes a format but has no va_list twin: format here, pass
 * the text as one %s. */
void pl_net_log(const pl_transport_host *host, int level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!host->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    host->log(host->ud, level, "%s", line);
}

/* Numeric address first (no blocking lookup); a name falls back to
 * getaddrinfo's resolver, which blocks: acceptable at server start and for a
 * client's connect, both rare. */
int pl_net_resolve(const char *host, uint16_t port, int passive,
                   struct sockaddr_storage *ss, socklen_t *sslen,
                   char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portstr[8];
    int rc;

    if (!host || !*host)
        host = "127.0.0.1";
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc == EAI_NONAME) {
        hints.ai_flags &= ~AI_NUMERICHOST;
        rc = getaddrinfo(host, portstr, &hints, &res);
    }
    if (rc != 0 || !res) {
        pl_net_err(err, errlen, "cannot resolve address \"%s\": %s", host,
                rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return PL_ERR_CONFIG;
    }
    if (res->ai_addrlen > sizeof *ss) {
        freeaddrinfo(res);
        pl_net_err(err, errlen, "address \"%s\" is too long", host);
        return PL_ERR_CONFIG;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return PL_OK;
}

void pl_net_addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        evutil_inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        evutil_inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(in6->sin6_port));
    } else {
        snprintf(out, outlen, "unknown");
    }
}

/* Requests and responses are small and latency-bound: never let Nagle hold
 * one back waiting for an ACK. */
void pl_net_nodelay(evutil_socket_t fd)
{
    int one = 1;

    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* libevent hands the error callback the accept callback's argument: the
 * listener is that argument, and passes each socket on to cb(arg). */
struct pl_net_listener {
    struct evconnlistener *lis;
    struct event *retry;              /* re-enables lis after a failed accept */
    evconnlistener_cb cb;
    void *arg;
    pl_transport_host host;           /* copied: for its log */
    char addr[80];                    /* "ip:port" for log lines */
};

static void listener_accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
                               struct sockaddr *sa, int salen, void *arg)
{
    pl_net_listener *l = arg;

    l->cb(lis, fd, sa, salen, l->arg);
}

static void listener_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    pl_net_listener *l = arg;

    (void)fd;
    (void)what;
    evconnlistener_enable(l->lis);
}

static void listener_error_cb(struct evconnlistener *lis, void *arg)
{
    pl_net_listener *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, NET_ACCEPT_RETRY_MS * 1000 };

    pl_net_log(&l->host, PL_LOG_WARN, "accept on %s failed: %s; pausing accepts for %d ms",
               l->addr, evutil_socket_error_to_string(e), NET_ACCEPT_RETRY_MS);
    /* The listening socket stays readable while we are out of descriptors:
     * without a pause the loop would spin on it. */
    evconnlistener_disable(lis);
    event_add(l->retry, &tv);
}

int pl_net_listen(const pl_transport_host *host, const struct sockaddr_storage *ss,
                  socklen_t sslen, const char *ss_text, evconnlistener_cb cb, void *arg,
                  pl_net_listener **out, char *err, size_t errlen)
{
    pl_net_listener *l;

    *out = NULL;
    l = calloc(1, sizeof *l);
    if (!l || !(l->retry = evtimer_new(host->base, listener_retry_cb, l))) {
        free(l);
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    l->cb = cb;
    l->arg = arg;
    l->host = *host;
    snprintf(l->addr, sizeof l->addr, "%s", ss_text);
    l->lis = evconnlistener_new_bind(host->base, listener_accept_cb, l,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE
                                         | LEV_OPT_CLOSE_ON_EXEC,
                                     NET_BACKLOG, (const struct sockaddr *)ss, (int)sslen);
    if (!l->lis) {
        int e = EVUTIL_SOCKET_ERROR();

        pl_net_err(err, errlen, "cannot listen on %s: %s", l->addr,
                   evutil_socket_error_to_string(e));
        event_free(l->retry);
        free(l);
        return PL_ERR_IO;
    }
    evconnlistener_set_error_cb(l->lis, listener_error_cb);
    *out = l;
    return PL_OK;
}

void pl_net_listener_free(pl_net_listener *l)
{
    if (!l)
        return;
    evconnlistener_free(l->lis);
    event_free(l->retry);
    free(l);
}

int pl_net_connect(struct bufferevent *bev, const struct sockaddr_storage *ss,
                   socklen_t sslen, char *err, size_t errlen)
{
    char addr[80];
    int e;

    if (bufferevent_socket_connect(bev, (const struct sockaddr *)ss, (int)sslen) == 0)
        return PL_OK;
    e = EVUTIL_SOCKET_ERROR();
    pl_net_addr_text((const struct sockaddr *)ss, addr, sizeof addr);
    pl_net_err(err, errlen, "cannot connect to %s: %s", addr, evutil_socket_error_to_string(e));
    return PL_ERR_IO;
}
