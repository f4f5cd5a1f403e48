/*
 * core/config.h — the configuration file (DESIGN.md §5).
 *
 * A seed-style file {"servers": [{"host": "127.0.0.1", "port": 8100}, ...]}
 * loads as is; every other key is optional with a default. Shared by parleyd
 * and the client side (libparley reads the same file to find the servers and
 * the transport). Errors name the file, the key and the reason, e.g.
 *   parley.json: servers[1].port: must be an integer 1-65535
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
 *   admin: {"bind": "127.0.0.1" (default), "port_offset": N} — port_offset
 *             gives every server without an admin_port one at port+N
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

typedef struct pl_plugin_conf {
    char *name;          /* short name or path */
    char *options_json;  /* the whole object as JSON text ({"name":...} for a plain string) */
} pl_plugin_conf;

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
    char *admin_bind;            /* address the admin listener binds (default 127.0.0.1) */
} pl_config;

/* The built-in default: one server on 127.0.0.1:8100, tcp/binary, sqlite. */
pl_config *pl_config_default(void);
/* Load and validate a file. On error returns NULL and writes
 * "FILE: KEY: REASON" into err. */
pl_config *pl_config_load(const char *path, char *err, size_t errlen);
/* Same, from JSON text (name is used in messages). */
pl_config *pl_config_parse(const char *name, const char *text, size_t len,
                           char *err, size_t errlen);
void pl_config_free(pl_config *c);

#endif
