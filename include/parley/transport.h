/*
 * parley/transport.h — the transport plugin ABI.
 *
 * Who calls what
 * --------------
 * A transport plugin is a shared module exporting one function,
 *
 *     const pl_transport_plugin *parley_transport_plugin(void);
 *
 * that returns a pointer to a static, const descriptor. The loader reads
 * descriptor->abi_version before touching any other field and loads a
 * plugin of version PL_TRANSPORT_ABI_MIN .. PL_TRANSPORT_ABI_VERSION; it
 * refuses any other with both numbers named. A member marked "(v N)"
 * exists only in descriptors of version N or later: the core reads it only
 * after checking abi_version, so a plugin built for an older version keeps
 * working. The same holds the other way for the host struct: a plugin
 * checks host->abi_version before calling a "(v N)" host member.
 *
 * A transport carries client <-> server traffic. It has two halves:
 *
 *  Server half (used by parleyd). server_start() listens on the address in
 *  pl_transport_options using the host's event_base. For every accepted
 *  connection it calls host->conn_open(), which returns the core's context
 *  pointer for that connection (NULL = refuse: the plugin closes it). Each
 *  decoded frame becomes one host->request(ctx, req) call. The core answers,
 *  now or later, with conn_send(conn, resp); pushes of new messages are
 *  conn_send() calls with method PL_M_PUSH. When a connection ends for any
 *  reason the plugin calls host->conn_closed(ctx) exactly once and after
 *  that neither side uses the pair (conn, ctx) again.
 *
 *  Client half (used by libparley, the CLI, the terminal UI, the bench).
 *  client_connect() starts a non-blocking connect on the caller's event_base;
 *  client_send() queues one request (it may be called before the connect
 *  completes); every decoded server frame is one cb->frame() call; the end of
 *  the connection is one cb->closed() call, after which the caller frees the
 *  client with client_free().
 *
 *  Health (v 2). The core tells the server half whether this server serves
 *  clients now (server_serving), so a transport can answer standard health
 *  checks without a round trip; and a transport tells the core when the
 *  client of a request it handed over stopped waiting (host->request_gone),
 *  so a request the core holds until a primary is known does not outlive
 *  its caller (docs/protocol.md, "Failover").
 *
 *  Codec (used by tools, tests and fuzzers): encode/decode one whole frame
 *  of either direction without any I/O.
 *
 * Threading: every function is called on the thread running the event_base
 * passed to it; codec functions are pure and may run on any thread.
 *
 * Frames: every frame has a maximum size (options->max_frame). A malformed
 * or oversized frame gets an error frame (method PL_M_NONE, status
 * PL_ERR_MALFORMED or PL_ERR_FRAME_TOO_LARGE) where the format allows it,
 * then that connection is closed. Other connections never notice.
 *
 * Versioning: new members are only ever appended to these structs; a field
 * added in version N is marked "(v N)" and the host checks the version
 * before using it (the SQLite VFS way). The core loads plugins built for
 * any ABI from PL_TRANSPORT_ABI_MIN up to its own. Version 2 appended the
 * host's request_gone and cluster_json and the plugin's server_serving: a
 * version 1 plugin runs unchanged (it never reads past the host members it
 * knows, and the core never reads its server_serving), and a version 2
 * plugin checks host->abi_version >= 2 before calling either host member.
 * A plugin built for a newer ABI than the core's is refused with both
 * numbers named.
 */
#ifndef PARLEY_TRANSPORT_H
#define PARLEY_TRANSPORT_H

#include <parley/common.h>
#include <parley/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PL_TRANSPORT_ABI_VERSION 2u
/* The oldest transport ABI this core still loads. */
#define PL_TRANSPORT_ABI_MIN 1u
#define PL_TRANSPORT_SYMBOL "parley_transport_plugin"

struct event_base;

typedef struct pl_transport_server pl_transport_server; /* plugin-owned */
typedef struct pl_transport_conn pl_transport_conn;     /* plugin-owned */
typedef struct pl_transport_client pl_transport_client; /* plugin-owned */

/* Where to listen or connect, and the plugin's own options. All strings are
 * owned by the caller and valid for the duration of the call only. */
typedef struct pl_transport_options {
    const char *host;          /* listen or connect address, e.g. "127.0.0.1" */
    uint16_t port;
    uint32_t max_frame;        /* bytes; 0 = PL_FRAME_DEFAULT */
    const char *options_json;  /* the plugin's config object as JSON text
                                  (e.g. {"name":"tcp","codec":"json"}), or NULL */
} pl_transport_options;

/* TLS: when the config turns TLS on for clients, the core adds a member
 *   "tls": {"cert": PATH, "key": PATH, "ca": PATH, "verify_clients": BOOL}
 * (absolute paths; cert/key/ca each may be absent) to options_json, for
 * both halves. The server half serves TLS with cert/key (and demands a
 * client certificate signed by ca with verify_clients); the client half
 * verifies the server against ca (or the system's trust store) and the
 * host it connects to. A transport that cannot do TLS must refuse the
 * "tls" key as an unknown option, never ignore it: a TLS config must not
 * serve plaintext. Without TLS the key is absent. docs/operations.md "TLS". */

/* What the core hands a transport's server half. Lives as long as the server. */
typedef struct pl_transport_host {
    uint32_t abi_version;      /* PL_TRANSPORT_ABI_VERSION of the core */
    struct event_base *base;
    void *ud;                  /* passed back as the first argument below */
    /* Log one line (no trailing newline needed). */
    void (*log)(void *ud, int level, const char *fmt, ...) PL_PRINTF(3, 4);
    /* A connection was accepted. peer: "ip:port" text. Returns the core's
     * context for it, or NULL to refuse (the plugin then closes it without
     * calling conn_closed). */
    void *(*conn_open)(void *ud, pl_transport_conn *conn, const char *peer);
    /* One decoded request. req and everything it points to are valid only
     * during this call. */
    void (*request)(void *ud, void *conn_ctx, const pl_request *req);
    /* The connection is gone (peer closed, error, conn_close, server_free).
     * Called exactly once per accepted connection that conn_open accepted. */
    void (*conn_closed)(void *ud, void *conn_ctx);
    /* (v 2) The client of request request_id on this connection stopped
     * waiting before it was answered (cancelled, deadline passed, stream
     * reset). The core forgets the request if it still holds it; an answer
     * that comes anyway is for the plugin to drop. Optional for plugins to
     * call; call it only when host->abi_version >= 2. */
    void (*request_gone)(void *ud, void *conn_ctx, uint64_t request_id);


    /* (v 2) */
    /* The cluster as this listener's clients see it, for a transport that
     * tells clients where the other servers are (the ws transport's
     * /cluster.json: a browser page finds the new primary after a
     * failover). A JSON object in a malloc'd NUL-terminated string the
     * caller frees with free(); NULL when out of memory:
     *
     *   {"epoch": 0, "self": 1, "primary": 0, "view": 3,
     *    "servers": [{"id": 0, "host": "127.0.0.1", "port": 11100,
     *                 "address": "127.0.0.1:8100"}, ...]}
     *
     * servers: the membership in force, in priority order; port is where
     * this same transport listens on that server (its port plus this
     * listener's port_offset); address is the main transport's
     * "host:port", the form a NOT_PRIMARY reply's leader takes. self is
     * this server's index (null when it is not a member), primary the
     * index of the primary of the latest view this server knows (null
     * during a view change). Every call reflects membership changes. */
    char *(*cluster_json)(void *ud);
} pl_transport_host;

/* Client-half callbacks. */
typedef struct pl_transport_client_cb {
    /* One frame from the server: a response (matched by request_id), a push
     * (method PL_M_PUSH) or a connection error (method PL_M_NONE). resp is
     * valid only during the call. */
    void (*frame)(void *ud, const pl_response *resp);
    /* The connection ended (or never came up). err is a pl_err, why a short
     * human text. Called once; then the caller must client_free(). */
    void (*closed)(void *ud, int err, const char *why);
} pl_transport_client_cb;

typedef struct pl_transport_plugin {
    uint32_t abi_version;      /* PL_TRANSPORT_ABI_VERSION */
    const char *name;          /* short name used in configs: "tcp", "grpcish" */
    const char *description;   /* one line for --version and logs */

    /* ---- server half ---- */
    /* Listen and start serving. On failure returns a pl_err and writes a
     * one-line reason into err. */
    int (*server_start)(const pl_transport_host *host,
                        const pl_transport_options *opt,
                        pl_transport_server **out, char *err, size_t errlen);
    /* Stop accepting new connections; existing ones keep working. */
    void (*server_stop_accepting)(pl_transport_server *srv);
    /* Close every connection (conn_closed is called for each) and free. */
    void (*server_free)(pl_transport_server *srv);
    /* Encode and queue one frame on conn. resp is copied; the core keeps
     * ownership. Returns PL_OK, or an error if the frame cannot be encoded
     * (e.g. larger than max_frame). */
    int (*conn_send)(pl_transport_conn *conn, const pl_response *resp);
    /* Flush queued output, then close. conn_closed follows (maybe later). */
    void (*conn_close)(pl_transport_conn *conn);

    /* ---- client half ---- */
    int (*client_connect)(struct event_base *base,
                          const pl_transport_options *opt,
                          const pl_transport_client_cb *cb, void *ud,
                          pl_transport_client **out, char *err, size_t errlen);
    /* Encode and queue one request. req is copied. */
    int (*client_send)(pl_transport_client *cli, const pl_request *req);
    /* Close (without calling cb->closed) and free. Safe inside callbacks. */
    void (*client_free)(pl_transport_client *cli);

    /* ---- codec: one whole frame, no I/O ---- */
    /* Encode into a malloc'd buffer (*out, *len), caller frees. */
    int (*encode_request)(const pl_transport_options *opt,
                          const pl_request *req, uint8_t **out, size_t *len);
    int (*encode_response)(const pl_transport_options *opt,
                           const pl_response *resp, uint8_t **out, size_t *len);
    /* Decode the frame at the start of buf. Returns PL_OK and sets *used,
     * PL_ERR_AGAIN when more bytes are needed, or PL_ERR_MALFORMED /
     * PL_ERR_FRAME_TOO_LARGE. The decoded struct points into memory owned
     * by *scratch, released with free_scratch (also on error; NULL is fine). */
    int (*decode_request)(const pl_transport_options *opt,
                          const uint8_t *buf, size_t len, size_t *used,
                          pl_request *out, void **scratch);
    int (*decode_response)(const pl_transport_options *opt,
                           const uint8_t *buf, size_t len, size_t *used,
                           pl_response *out, void **scratch);
    void (*free_scratch)(void *scratch);

    /* ---- (v 2) ---- */
    /* Whether this server serves clients now: 1 when it is the primary and
     * holds its lease, 0 otherwise (a backup, a view change, shutting
     * down). Called once after server_start and then at every change, on
     * the loop thread. For standard health services (the grpc transport's
     * grpc.health.v1.Health). NULL: the transport does not care. */
    void (*server_serving)(pl_transport_server *srv, int serving);
} pl_transport_plugin;

typedef const pl_transport_plugin *(*pl_transport_entry_fn)(void);

#ifdef __cplusplus
}
#endif
#endif
