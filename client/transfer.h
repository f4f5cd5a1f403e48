/*
 * client/transfer.h — moving chat state in and out of a cluster (issue 21),
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
/*   parley [-c CONFIG] [--json] admin export [-o FILE] [--no-sessions] [--timeout S]
 * The whole state as a dump (core/dump.h) from one snapshot on the primary,
 * to FILE (written beside it and renamed over it once complete, mode 0600)
 * or standard output; refused when the stream was cut short. */
int parley_admin_export(const char *config_path, int json, int argc, char **argv);
/*   parley [-c CONFIG] [--json] admin import FILE [--resume] [--batch N] [--timeout S]
 * A dump into an empty cluster: the whole file is checked first, then sent
 * in batches; the digest at the end is compared with the dump's. */
int parley_admin_import_dump(const char *config_path, int json, int argc, char **argv);

#endif
