/*
 * client/admin.h — `parley admin ...`: operator commands that read each
 * server's admin HTTP endpoint (GET /metrics, core/admin.h) rather than the
 * chat wire format.
 *
 *   parley [-c CONFIG] [--json] admin stats [--interval MS]
 *   parley [-c CONFIG] admin metrics ID
 *   parley [-c CONFIG] [--json] admin members
 *   parley [-c CONFIG] [--json] admin add-server|remove-server ADDR [--timeout S]
 *   parley [-c CONFIG] [--json] admin replace-server OLD NEW [--timeout S]
 *
 * Exit codes as the rest of the CLI. stats/metrics: 0 every server with an
 * admin_port answered, 1 some did not, 2 usage (or no server has an
 * admin_port), 3 none answered. members and the changes: 0 ok, 1 the
 * primary refused the change (its reason on stderr), 2 usage (or no
 * admin.token for a change), 3 no server reachable, or no answer in time.
 */
#ifndef PL_CLIENT_ADMIN_H
#define PL_CLIENT_ADMIN_H

#include <stddef.h>

#include "config.h"

/* argv[0] is the subcommand. config_path may be NULL ($PARLEY_CONFIG, else
 * the built-in default). */
int parley_admin_main(const char *config_path, int json, int argc, char **argv);

/* ---- for the other admin commands (client/transfer.c) ---- */

/* Where an answer's body goes when its status is 200 (an export: any
 * size). write returns 0, or -1 to stop (errno says why). */
typedef struct pl_admin_sink {
    int (*write)(void *ud, const char *data, size_t len);
    void *ud;
} pl_admin_sink;

typedef struct pl_admin_call {
    const char *method, *path;
    const void *body;         /* request body (JSON or JSON Lines), or NULL */
    size_t body_len;
    int timeout_s;            /* overall: until a primary takes it */
    int io_timeout_s;         /* per connect and read; 0 = up to the overall one */
    int retry_lost;           /* the request is idempotent: send it again when
                                 its answer was lost (a failover) */
    const pl_admin_sink *sink;
    char *endpoint;           /* NULL, or 300 bytes: who refused, for messages */
} pl_admin_call;

/* Send call to the cluster's primary through the admin listeners of the
 * config's servers, following 421s to the primary and retrying 503s each
 * second until timeout_s. Returns 0 with *status and *resp (malloc'd,
 * caller frees) for the primary's answer (200, or a refusal), 2 when the
 * config names no admin port, 3 when nobody took it in time (*sent when
 * it may have taken effect), with the reason in err. */
int parley_admin_to_primary(const pl_config *cfg, const pl_admin_call *call, int *status,
                            char **resp, int *sent, char *err, size_t errlen);
/* The config file's servers that have admin ports, loaded as the admin
 * commands do (one line per error on stderr). NULL on error. */
pl_config *parley_admin_load_config(const char *path);

#endif
