/*
 * plugins/common/net.c — socket helpers shared by the transports' socket
 * halves (net.h): address resolution, address text, TCP_NODELAY.
 */
#include "net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/util.h>

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
