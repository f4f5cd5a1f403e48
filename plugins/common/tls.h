/*
 * plugins/common/tls.h — TLS for transport plugins: the "tls" member the
 * core adds to a transport's options when the config turns TLS on for
 * clients (parley/transport.h), and what framed.c and transport-ws need to
 * serve and dial TLS through libevent's OpenSSL bufferevents.
 *
 * Prefix: pl_tls_.
 */
#ifndef PL_PLUGINS_TLS_H
#define PL_PLUGINS_TLS_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <event2/bufferevent.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include <parley/transport.h>

/* The "tls" member of the transport options. Strings point into root,
 * which the caller frees with cJSON_Delete (NULL when there is no TLS). */
typedef struct pl_tls_opts {
    cJSON *root;
    const char *cert, *key, *ca;
    int verify_clients;
} pl_tls_opts;

/* Parse opt->options_json's "tls" member: PL_OK with t->root NULL when
 * there is none (plain TCP); PL_ERR_CONFIG with the key named in err. */
int pl_tls_opts_parse(const pl_transport_options *opt, pl_tls_opts *t,
                      char *err, size_t errlen);
/* A server context with cert/key (and client verification against ca with
 * verify_clients). Files are read here, once. Caller frees *out. */
int pl_tls_server_ctx(const pl_tls_opts *t, SSL_CTX **out, char *err, size_t errlen);
/* One SSL for a client connection to host: the server's certificate must
 * chain to ca (or the system's trust store) and name host. */
int pl_tls_client_ssl(const pl_tls_opts *t, const char *host, SSL **out,
                      char *err, size_t errlen);
/* A bufferevent for a socket fd that a listener accepted: TLS over a new
 * SSL of ctx, in the accepting state, or plain TCP when ctx is NULL. It
 * owns fd (closed on free). NULL when out of memory; fd is then closed,
 * or left open where libevent may already have taken it (see tls.c). */
struct bufferevent *pl_tls_accept_bev(struct event_base *base, evutil_socket_t fd,
                                      SSL_CTX *ctx);
/* A bufferevent, not yet connected (pl_net_connect follows), for a client
 * of opt's server: TLS when opt's options carry "tls" (the server's
 * certificate is checked against tls.ca and opt->host during the connect,
 * and CONNECTED means the handshake is done too), else plain TCP; *tls
 * says which. PL_ERR_CONFIG (the key named in err) or PL_ERR_NOMEM. */
int pl_tls_client_bev(struct event_base *base, const pl_transport_options *opt,
                      struct bufferevent **out, int *tls, char *err, size_t errlen);
/* Why a TLS client's bufferevent failed before CONNECTED, when TLS knows:
 * the server's certificate was rejected, or the handshake failed. Returns
 * 0 and leaves out alone when TLS has no reason (a refused or failed TCP
 * connect, a server that just closed): the socket's error is the reason. */
int pl_tls_connect_error(struct bufferevent *bev, char *out, size_t outlen);
/* Text for an OpenSSL error code. */
void pl_tls_err_text(unsigned long e, char *out, size_t outlen);
/* The OpenSSL error behind a TLS bufferevent's failure (the oldest, the
 * cause), or 0. */
unsigned long pl_tls_cause(struct bufferevent *bev);
/* Why a server-side TLS bufferevent failed before its handshake finished
 * (secs: the handshake deadline, for the timeout's text). Returns 1 when
 * the peer just closed without a TLS error (a port probe: log quietly). */
int pl_tls_handshake_error(struct bufferevent *bev, short what, int secs,
                           char *out, size_t outlen);

#endif
