/*
 * plugins/common/tls.c — TLS for transport plugins (tls.h), through
 * OpenSSL and libevent's OpenSSL bufferevents: the "tls" option the core
 * adds, server and client contexts, and error texts. Shared by framed.c
 * (tcp, grpcish) and transport-ws (wss).
 */
#include "tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "net.h"

/* Parse opt->options_json's "tls" member. Returns PL_OK with t->root NULL
 * when there is none (plain TCP). Options that are not JSON are left for
 * the plugin to report; it parses them first. */
int pl_tls_opts_parse(const pl_transport_options *opt, pl_tls_opts *t,
                      char *err, size_t errlen)
{
    const cJSON *tls;

    memset(t, 0, sizeof *t);
    if (!opt || !opt->options_json || !*opt->options_json)
        return PL_OK;
    t->root = cJSON_Parse(opt->options_json);
    tls = cJSON_IsObject(t->root) ? cJSON_GetObjectItemCaseSensitive(t->root, "tls") : NULL;
    if (!tls) {
        cJSON_Delete(t->root);
        t->root = NULL;
        return PL_OK;
    }
    if (!cJSON_IsObject(tls)) {
        pl_net_err(err, errlen, "tls: must be an object {\"cert\", \"key\", \"ca\", \"verify_clients\"}");
        goto fail;
    }
    for (const cJSON *m = tls->child; m; m = m->next) {
        const char **slot = NULL;

        if (strcmp(m->string, "cert") == 0)
            slot = &t->cert;
        else if (strcmp(m->string, "key") == 0)
            slot = &t->key;
        else if (strcmp(m->string, "ca") == 0)
            slot = &t->ca;
        if (slot) {
            if (!cJSON_IsString(m) || !m->valuestring[0]) {
                pl_net_err(err, errlen, "tls.%s: must be a non-empty path", m->string);
                goto fail;
            }
            *slot = m->valuestring;
        } else if (strcmp(m->string, "verify_clients") == 0) {
            if (!cJSON_IsBool(m)) {
                pl_net_err(err, errlen, "tls.verify_clients: must be true or false");
                goto fail;
            }
            t->verify_clients = cJSON_IsTrue(m);
        } else {
            pl_net_err(err, errlen, "tls.%.40s: unknown option (known: cert, key, ca, verify_clients)",
                    m->string);
            goto fail;
        }
    }
    return PL_OK;
fail:
    cJSON_Delete(t->root);
    t->root = NULL;
    return PL_ERR_CONFIG;
}

/* Text for an OpenSSL error code: its reason ("certificate verify
 * failed"), or the system error behind a file that would not open. */
void pl_tls_err_text(unsigned long e, char *out, size_t outlen)
{
    const char *r;

    if (e == 0) {
        snprintf(out, outlen, "unknown TLS error");
        return;
    }
    if (ERR_SYSTEM_ERROR(e)) {
        snprintf(out, outlen, "%s", strerror(ERR_GET_REASON(e)));
        return;
    }
    r = ERR_reason_error_string(e);
    if (r)
        snprintf(out, outlen, "%s", r);
    else
        ERR_error_string_n(e, out, outlen);
}

/* A failed OpenSSL call while setting up: report the oldest queued error
 * (the cause; later ones are consequences) and clear the thread's queue so
 * nothing stale is blamed on a later connection. */
static int tls_setup_fail(char *err, size_t errlen, const char *what, const char *path)
{
    char reason[160];

    pl_tls_err_text(ERR_get_error(), reason, sizeof reason);
    ERR_clear_error();
    if (path)
        pl_net_err(err, errlen, "%s %s: %s", what, path, reason);
    else
        pl_net_err(err, errlen, "%s: %s", what, reason);
    return PL_ERR_CONFIG;
}

/* What every context gets: TLS 1.2 at least; no renegotiation (libevent's
 * bufferevents and a frame protocol have no use for it); buffers released
 * while a connection is idle, so ten thousand idle clients do not pin
 * 34 KiB each; an EOF without close_notify reads as EOF (see the top). */
static void tls_ctx_common(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

int pl_tls_server_ctx(const pl_tls_opts *t, SSL_CTX **out, char *err, size_t errlen)
{
    SSL_CTX *ctx = NULL;
    int rc;

    *out = NULL;
    if (!t->cert || !t->key) {
        pl_net_err(err, errlen, "tls: \"cert\" and \"key\" are required to serve TLS");
        return PL_ERR_CONFIG;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return tls_setup_fail(err, errlen, "tls", NULL);
    tls_ctx_common(ctx);
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
        rc = tls_setup_fail(err, errlen, "tls.cert", t->cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1) {
        rc = tls_setup_fail(err, errlen, "tls.key", t->key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        pl_net_err(err, errlen, "tls.key %s is not the key of tls.cert %s", t->key, t->cert);
        rc = PL_ERR_CONFIG;
        goto fail;
    }
    /* Sessions may be resumed; the id context is required for that once
     * client certificates are verified, and harmless otherwise. */
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"parley", 6);
    if (t->verify_clients) {
        STACK_OF(X509_NAME) *names;

        if (!t->ca) {
            pl_net_err(err, errlen, "tls.verify_clients: needs tls.ca");
            rc = PL_ERR_CONFIG;
            goto fail;
        }
        if (SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1) {
            rc = tls_setup_fail(err, errlen, "tls.ca", t->ca);
            goto fail;
        }
        /* Tell clients which CA we accept, so one with several certificates
         * picks the right one. */
        names = SSL_load_client_CA_file(t->ca);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
        ERR_clear_error();
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    *out = ctx;
    return PL_OK;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

/* One SSL for a client connection to host: the server's certificate must
 * chain to ca (or the system's trust store) and name host — as an IP
 * address when host is one, else as a DNS name (also sent as SNI). */
int pl_tls_client_ssl(const pl_tls_opts *t, const char *host, SSL **out,
                      char *err, size_t errlen)
{
    unsigned char addr[sizeof(struct in6_addr)];
    SSL_CTX *ctx;
    SSL *ssl = NULL;
    int rc = PL_ERR_CONFIG, ok;

    *out = NULL;
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return tls_setup_fail(err, errlen, "tls", NULL);
    tls_ctx_common(ctx);
    if (t->ca ? SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1
              : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        rc = tls_setup_fail(err, errlen, "tls.ca", t->ca ? t->ca : "(system default)");
        goto done;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Only a server that verifies clients needs our certificate; other
     * clients need not be able to read a key file. */
    if (t->verify_clients && t->cert && t->key) {
        if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
            rc = tls_setup_fail(err, errlen, "tls.cert", t->cert);
            goto done;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1) {
            rc = tls_setup_fail(err, errlen, "tls.key", t->key);
            goto done;
        }
    }
    ssl = SSL_new(ctx);
    if (!ssl) {
        rc = tls_setup_fail(err, errlen, "tls", NULL);
        goto done;
    }
    if (!host || !*host)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    } else {
        ok = SSL_set1_host(ssl, host) == 1;
        if (ok)
            (void)SSL_set_tlsext_host_name(ssl, host);
    }
    if (!ok) {
        rc = tls_setup_fail(err, errlen, "tls: cannot check the server's name", host);
        goto done;
    }
    *out = ssl;
    ssl = NULL;
    rc = PL_OK;
done:
    SSL_free(ssl);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    return rc;
}

struct bufferevent *pl_tls_accept_bev(struct event_base *base, evutil_socket_t fd,
                                      SSL_CTX *ctx)
{
    struct bufferevent *bev;
    SSL *ssl;

    if (!ctx) {
        bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!bev)
            evutil_closesocket(fd);
        return bev;
    }
    ssl = SSL_new(ctx);
    if (!ssl) {
        evutil_closesocket(fd);
        ERR_clear_error();
        return NULL;
    }
    /* On failure libevent may or may not have freed ssl and closed fd
     * already, depending on where it failed: leaking both under memory
     * exhaustion beats a double free. */
    bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (bev)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    ERR_clear_error();
    return bev;
}

int pl_tls_client_bev(struct event_base *base, const pl_transport_options *opt,
                      struct bufferevent **out, int *tls, char *err, size_t errlen)
{
    pl_tls_opts t;
    SSL *ssl = NULL;
    int rc;

    *out = NULL;
    *tls = 0;
    rc = pl_tls_opts_parse(opt, &t, err, errlen);
    if (rc != PL_OK)
        return rc;
    if (t.root) {
        rc = pl_tls_client_ssl(&t, opt->host, &ssl, err, errlen);
        cJSON_Delete(t.root);
        if (rc != PL_OK)
            return rc;
    }
    if (ssl) {
        /* The connect runs under the handshake: CONNECTED is reported
         * once the server's certificate has been verified. On failure ssl
         * may or may not be freed already (see pl_tls_accept_bev). */
        *tls = 1;
        *out = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                              BEV_OPT_CLOSE_ON_FREE);
        if (*out)
            bufferevent_openssl_set_allow_dirty_shutdown(*out, 1);
        ERR_clear_error();
    } else {
        *out = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!*out) {
        pl_net_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    return PL_OK;
}

/* A wrong CA looks nothing like a server that is down, and the user needs
 * to know which: the certificate's verdict first, then OpenSSL's error. */
int pl_tls_connect_error(struct bufferevent *bev, char *out, size_t outlen)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    unsigned long first = pl_tls_cause(bev);
    char reason[200];

    if (ssl && SSL_get_verify_result(ssl) != X509_V_OK) {
        snprintf(out, outlen, "TLS: server certificate rejected: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        return 1;
    }
    if (first) {
        pl_tls_err_text(first, reason, sizeof reason);
        snprintf(out, outlen, "TLS handshake failed: %s", reason);
        return 1;
    }
    return 0;
}

/* The OpenSSL error behind a TLS bufferevent's failure, or 0. libevent
 * hands its saved errors back newest first, mixed with bare SSL_get_error
 * codes (library 0): keep the oldest real one, the cause. */
unsigned long pl_tls_cause(struct bufferevent *bev)
{
    unsigned long e, first = 0;

    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (ERR_GET_LIB(e) != 0)
            first = e;
    return first;
}

/* Why a TLS bufferevent failed before its handshake finished. Returns 1
 * when the peer just closed without a TLS error: a TCP health check or a
 * port probe, not worth a line at the default log level. */
int pl_tls_handshake_error(struct bufferevent *bev, short what, int secs,
                           char *out, size_t outlen)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    int se = EVUTIL_SOCKET_ERROR();
    unsigned long first = pl_tls_cause(bev);
    if (what & BEV_EVENT_TIMEOUT) {
        snprintf(out, outlen, "no handshake within %d s", secs);
    } else if (vr != X509_V_OK) {
        snprintf(out, outlen, "certificate rejected: %s", X509_verify_cert_error_string(vr));
    } else if (first) {
        pl_tls_err_text(first, out, outlen);
    } else if ((what & BEV_EVENT_ERROR) && se != 0) {
        snprintf(out, outlen, "%s", evutil_socket_error_to_string(se));
    } else {
        snprintf(out, outlen, "connection closed during the handshake");
        return 1;
    }
    return 0;
}
