/*
 * client/transfer.h — moving chat state in and out of a cluster (issue 21):
 *
 *   parley [-c CONFIG] [--json] admin import-prototype FILE [--rename OLD=NEW]...
 *                                [--skip-invalid] [--dry-run] [--batch N] [--timeout S]
 *
 * Talks to the primary's admin port (core/transfer.h) with the config's
 * admin.token. Exit codes as the other admin commands: 0 done, 1 refused
 * (something parley cannot hold, a name taken, the primary said no), 2
 * usage (or no token), 3 no primary answered in time (run it again: an
 * import never doubles anything).
 */
#ifndef PL_CLIENT_TRANSFER_H
#define PL_CLIENT_TRANSFER_H

/* argv[0] is the subcommand's name. */
int parley_admin_import_prototype(const char *config_path, int json, int argc, char **argv);

#endif
