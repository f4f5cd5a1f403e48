/*
 * client/admin.h — `parley admin ...`: operator commands that read each
 * server's admin HTTP endpoint (GET /metrics, core/admin.h) rather than the
 * chat wire format.
 *
 *   parley [-c CONFIG] [--json] admin stats [--interval MS]
 *   parley [-c CONFIG] admin metrics ID
 *
 * Exit codes as the rest of the CLI: 0 every server with an admin_port
 * answered, 1 some did not, 2 usage (or no server has an admin_port),
 * 3 none answered.
 */
#ifndef PL_CLIENT_ADMIN_H
#define PL_CLIENT_ADMIN_H

/* argv[0] is the subcommand. config_path may be NULL ($PARLEY_CONFIG, else
 * the built-in default). */
int parley_admin_main(const char *config_path, int json, int argc, char **argv);

#endif
