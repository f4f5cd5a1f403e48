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

/* argv[0] is the subcommand. config_path may be NULL ($PARLEY_CONFIG, else
 * the built-in default). */
int parley_admin_main(const char *config_path, int json, int argc, char **argv);

#endif
