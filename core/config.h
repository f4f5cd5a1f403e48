/*
 * core/config.h — the configuration file (DESIGN.md §5).
 *
 * A seed-style file {"servers": [{"host": "127.0.0.1", "port": 8100}, ...]}
 * loads as is; every other key is optional with a default. Shared by parleyd
 * and the client side (libparley reads the same file to find the servers and
 * the transport). Errors name the file, the key and the reason, e.g.
 *   parley.json: servers[1].port: must be an integer 1-65535
 * and a file with several mistakes gets one such line for each.
 *
 * Keys (all optional except servers when a file is given):
 *   servers[]: {host, port, peer_port (default port+1000)} — order is priority
 *   transport: "tcp" | "grpcish" | path | {"name": ..., plugin options...}
 *              (tcp option "codec": "binary" (default) | "json")
 *   store: "sqlite" | "json" | path | {"name": ..., "sync": true, ...}
 *   data_dir: default data path when none is given on the command line
 *   plugin_dir: extra directory searched first for plugins
 *   log_level: "error" | "warn" | "info" (default) | "debug"
 *   max_frame: bytes (default 1 MiB)
 *   election_timeout_ms (1000), heartbeat_ms (100)
 *   password_hash: {"opslimit": N, "memlimit": BYTES} (default: libsodium
 *                  INTERACTIVE limits)
 *   hash_workers: threads hashing passwords (default 2)
 *   failback: true (default) | false — return the primary to the most
 *             preferred server once it has caught up
 *   servers[].admin_port: HTTP port serving GET /metrics (Prometheus text);
 *             default none
 *   admin: {"bind": "127.0.0.1" (default), "port_offset": N, "token": T,
 *           "token_file": PATH} — port_offset gives every server without an
 *             admin_port one at port+N; token (or token_file, read at load,
 *             one trailing newline dropped, relative to the config file's
 *             directory) is the operator token membership changes need
 *             (PL_ADMIN_TOKEN_MIN..MAX printable ASCII bytes)
 *   limits: {conns_per_address, requests_per_second, request_burst,
 *            password_checks_queued, login_failures_per_user,
 *            login_failures_per_address, login_backoff_max_ms,
 *            session_ttl_s, held_per_connection, held_total,
 *            held_bytes} — struct pl_limits below; docs/operations.md
 *   cluster_secret: text of at least 32 bytes, or cluster_secret_file: a
 *             file holding it — servers prove it to each other (peer.c)
 *   tls: {"cert", "key", "ca", "peer": true, "clients": true,
 *         "verify_clients": false} — TLS on peer links (mutual) and client
 *         connections; off when absent. Relative paths are relative to the
 *         config file's directory. docs/operations.md "TLS"
 *   transports: [{"name": ..., "port_offset": N, plugin options...}] —
 *         more transports every server serves beside "transport", each on
 *         its own port+N (e.g. grpc for the prototype's clients while the
 *         CLI speaks tcp, ws for browsers); clients use "transport". With
 *         tls.clients each entry gets the same "tls" member as transport
 */
#ifndef PL_CORE_CONFIG_H
#define PL_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define PL_DEFAULT_HOST "127.0.0.1"
#define PL_DEFAULT_PORT 8100
#define PL_DEFAULT_DATA_DIR "./parley-data"
#define PL_PEER_PORT_OFFSET 1000

typedef struct pl_server_conf {
    char *host;
    uint16_t port;
    uint16_t peer_port;
    uint16_t admin_port;  /* HTTP metrics listener; 0 = none */
} pl_server_conf;

/* The limits a server enforces on its clients (the "limits" object). One
 * struct so that a reload can swap all of them at once. Where noted, 0
 * turns a limit off. Defaults: PL_LIMITS_DEFAULT_*. */
typedef struct pl_limits {
    uint32_t conns_per_address;          /* open client connections per IP; 0 = off */
    uint32_t requests_per_second;        /* token refill per connection; 0 = off */
    uint32_t request_burst;              /* token bucket size */
    uint32_t password_checks_queued;     /* Argon2id jobs waiting for a worker */
    uint32_t login_failures_per_user;    /* failures before back-off starts */
    uint32_t login_failures_per_address; /* same, per client IP */
    uint32_t login_backoff_max_ms;       /* back-off doubles from 1 s up to this */
    uint64_t session_ttl_s;              /* session lifetime; 0 = never expires */
    /* Requests held while no serving primary is known (core/server.c,
     * docs/protocol.md "Failover"): per connection (0 = hold none: answer
     * at once), on the whole server, and their bytes on the whole server. */
    uint32_t held_per_connection;
    uint32_t held_total;
    uint64_t held_bytes;
} pl_limits;

#define PL_LIMITS_DEFAULT_CONNS_PER_ADDRESS 256u
#define PL_LIMITS_DEFAULT_RPS 1000u
#define PL_LIMITS_DEFAULT_CHECKS_PER_WORKER 32u
#define PL_LIMITS_DEFAULT_FAILS_USER 5u
#define PL_LIMITS_DEFAULT_FAILS_ADDRESS 50u
#define PL_LIMITS_DEFAULT_BACKOFF_MAX_MS 60000u
#define PL_LIMITS_DEFAULT_HELD_PER_CONN 64u
#define PL_LIMITS_DEFAULT_HELD_TOTAL 16384u
#define PL_LIMITS_DEFAULT_HELD_BYTES (16u * 1024u * 1024u)
#define PL_LIMITS_DEFAULT_SESSION_TTL_S (30u * 24u * 3600u)
#define PL_CLUSTER_SECRET_MIN 32u
#define PL_CLUSTER_SECRET_MAX 4096u
#define PL_ADMIN_TOKEN_MIN 16u
#define PL_ADMIN_TOKEN_MAX 256u

/* The "tls" object. Which keys a process needs depends on its side, so
 * those checks happen where the side is known: a server needs cert and key
 * (peer.c, framed.c), peer links need ca too, a client needs only ca (or
 * the system's trust store). */
typedef struct pl_tls_conf {
    int enabled;         /* a "tls" object was given */
    char *cert;          /* PEM certificate (chain), resolved path, or NULL */
    char *key;           /* PEM private key, resolved path, or NULL */
    char *ca;            /* PEM CA bundle that signs the cluster's certificates, or NULL */
    int peer;            /* mutual TLS between servers (default 1 when enabled) */
    int clients;         /* TLS for client connections (default 1 when enabled) */
    int verify_clients;  /* clients must present a certificate signed by ca (default 0) */
} pl_tls_conf;

typedef struct pl_plugin_conf {
    char *name;          /* short name or path */
    char *options_json;  /* the whole object as JSON text ({"name":...} for a plain string) */
} pl_plugin_conf;

/* One more transport a server serves, on port + port_offset. options_json
 * is the plugin's object without "port_offset". */
typedef struct pl_extra_transport {
    pl_plugin_conf plugin;
    uint16_t port_offset;
} pl_extra_transport;

typedef struct pl_config {
    char *path;                  /* file it came from, or NULL for the built-in default */
    pl_server_conf *servers;
    size_t n_servers;
    pl_plugin_conf transport;    /* default "tcp" */
    pl_plugin_conf store;        /* default "sqlite" */
    char *data_dir;              /* may be NULL */
    char *plugin_dir;            /* may be NULL */
    int log_level;               /* enum pl_log_level */
    uint32_t max_frame;
    uint32_t election_timeout_ms;
    uint32_t heartbeat_ms;
    uint64_t pwhash_opslimit;
    uint64_t pwhash_memlimit;
    uint32_t hash_workers;
    int failback;                /* hand the primary back to higher priority (default 1) */
    uint64_t compact_ops;        /* compaction.ops: compact when the log holds more (100000) */
    uint64_t compact_bytes;      /* compaction.bytes: or when this much was appended (64 MiB) */
    uint64_t compact_keep;       /* compaction.keep_ops: entries kept below the applied op (10000) */
    uint32_t sync_delay_us;      /* group_commit.delay_us: hold a log sync back this long (1000; 0: off) */
    uint32_t sync_delay_bytes;   /* group_commit.bytes: ... unless this many log bytes wait (4096) */
    char *admin_bind;            /* address the admin listener binds (default 127.0.0.1) */
    char *admin_token;           /* admin.token or admin.token_file's contents, or NULL */
    pl_limits limits;
    char *cluster_secret;        /* inline secret text, or NULL */
    char *cluster_secret_file;   /* or a file holding it, or NULL */
    pl_tls_conf tls;             /* when tls.clients, also inside transport.options_json */
    pl_extra_transport *transports; /* served beside transport (the "transports" key) */
    size_t n_transports;
} pl_config;

/* The built-in default: one server on 127.0.0.1:8100, tcp/binary, sqlite. */
pl_config *pl_config_default(void);
/* Load and validate a file. On error returns NULL and writes every error
 * found into err, one "FILE: KEY: REASON" line each, separated by '\n' (no
 * newline after the last); errors that do not fit in errlen are counted in
 * a last line "FILE: (more): N more errors not shown". */
pl_config *pl_config_load(const char *path, char *err, size_t errlen);
/* For --check-config: like pl_config_load, but a file that is readable
 * JSON comes back as a configuration even when some keys are wrong (those
 * keep their defaults), with *nerr set to the number of errors in err, so
 * that the caller can go on checking what parsed (the plugins). NULL when
 * the file cannot be read or is not JSON (*nerr is then 1 and err says why). */
pl_config *pl_config_check(const char *path, char *err, size_t errlen, unsigned *nerr);
/* Same, from JSON text (name is used in messages). */
pl_config *pl_config_parse(const char *name, const char *text, size_t len,
                           char *err, size_t errlen);
void pl_config_free(pl_config *c);

/* The cluster secret (cluster_secret or the contents of cluster_secret_file,
 * one trailing newline dropped), checked to be PL_CLUSTER_SECRET_MIN..MAX
 * bytes. *out is malloc'd (caller wipes and frees) or NULL with *len 0 when
 * none is configured. Read at server start, not at parse time, so a client
 * that loads the same config need not be able to read the file. On error
 * returns PL_ERR_CONFIG with "FILE: KEY: REASON" in err. */
int pl_config_cluster_secret(const pl_config *c, uint8_t **out, size_t *len,
                             char *err, size_t errlen);

#endif
