/*
 * core/main.c — the parleyd command line.
 *
 *   parleyd                                  one server on 127.0.0.1:8100,
 *                                            tcp/binary, sqlite in ./parley-data
 *   parleyd CONFIG SERVER_ID DATA_PATH       the seed's form
 *   parleyd --config FILE --id N --data DIR --log-level LEVEL
 *   parleyd --check-config FILE              validate, print "FILE: ok" or every
 *                                            error, one "FILE: KEY: REASON" line each
 *   parleyd --version | --help
 *
 * SIGHUP re-reads the config file and applies what can change while running
 * (log_level, the limits object); it logs each value it changed and names
 * the keys that changed but need a restart. A file that no longer loads is
 * reported and the running settings stay.
 *
 * Exit codes: 0 clean stop, 1 runtime or configuration error, 2 usage.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/store.h>
#include <parley/transport.h>

#include "config.h"
#include "loader.h"
#include "log.h"
#include "server.h"

#define EXIT_USAGE 2
/* Room for every error of a config file, one line each (config.h). */
#define CONFIG_ERR_MAX 16384

/* A config error text holds one line per error: log each as its own event
 * (the log keeps one event per line). */
static void log_lines(int level, const char *prefix, const char *text)
{
    while (*text) {
        size_t n = strcspn(text, "\n");
        pl_log(level, "%s%.*s", prefix, (int)n, text);
        text += n;
        if (*text == '\n')
            text++;
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: parleyd [CONFIG SERVER_ID DATA_PATH]\n"
            "       parleyd [--config FILE] [--id N] [--data DIR] [--log-level LEVEL]\n"
            "       parleyd --check-config FILE\n"
            "       parleyd --version | --help\n"
            "\n"
            "With no arguments: one server on %s:%d, transport tcp (binary codec),\n"
            "SQLite store in %s.\n"
            "\n"
            "  -c, --config FILE        configuration file (JSON)\n"
            "  -i, --id N               this server's index in the config's \"servers\" (default 0)\n"
            "  -d, --data DIR           data directory (default: the config's data_dir, else %s)\n"
            "  -l, --log-level LEVEL    error, warn, info or debug (overrides the config)\n"
            "      --join               join a running cluster: with an empty data directory,\n"
            "                           wait as a learner until the primary adds this server\n"
            "                           (parley admin add-server); see docs/operations.md\n"
            "      --check-config FILE  validate FILE, print \"FILE: ok\" or the error; exit 0/1\n"
            "  -V, --version            print the version and plugin ABI versions\n"
            "  -h, --help               this text\n",
            PL_DEFAULT_HOST, PL_DEFAULT_PORT, PL_DEFAULT_DATA_DIR, PL_DEFAULT_DATA_DIR);
}

static int parse_id(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > 1000000ul)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

typedef struct sig_ctx {
    pl_server *srv;
    struct event_base *base;
    int count;
    pl_config *cfg;          /* owned by main; the server reads it */
    int level_from_cli;      /* --log-level given: a reload leaves the level alone */
} sig_ctx;

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

/* Keys a reload cannot apply, comma-separated into out ("" when none). */
static void restart_keys(const pl_config *a, const pl_config *b, char *out, size_t len)
{
    int servers = a->n_servers != b->n_servers;
    for (size_t i = 0; !servers && i < a->n_servers; i++)
        servers = strcmp(a->servers[i].host, b->servers[i].host) != 0 ||
                  a->servers[i].port != b->servers[i].port ||
                  a->servers[i].peer_port != b->servers[i].peer_port ||
                  a->servers[i].admin_port != b->servers[i].admin_port;
    const struct { int changed; const char *key; } keys[] = {
        { servers, "servers" },
        { str_differs(a->transport.options_json, b->transport.options_json), "transport" },
        { str_differs(a->store.options_json, b->store.options_json), "store" },
        { str_differs(a->data_dir, b->data_dir), "data_dir" },
        { str_differs(a->plugin_dir, b->plugin_dir), "plugin_dir" },
        { a->max_frame != b->max_frame, "max_frame" },
        { a->election_timeout_ms != b->election_timeout_ms, "election_timeout_ms" },
        { a->heartbeat_ms != b->heartbeat_ms, "heartbeat_ms" },
        { a->pwhash_opslimit != b->pwhash_opslimit || a->pwhash_memlimit != b->pwhash_memlimit,
          "password_hash" },
        { a->hash_workers != b->hash_workers, "hash_workers" },
        { a->failback != b->failback, "failback" },
        { str_differs(a->admin_bind, b->admin_bind), "admin" },
        { str_differs(a->cluster_secret, b->cluster_secret) ||
          str_differs(a->cluster_secret_file, b->cluster_secret_file), "cluster_secret" },
        { a->tls.enabled != b->tls.enabled || a->tls.peer != b->tls.peer ||
          a->tls.clients != b->tls.clients || a->tls.verify_clients != b->tls.verify_clients ||
          str_differs(a->tls.cert, b->tls.cert) || str_differs(a->tls.key, b->tls.key) ||
          str_differs(a->tls.ca, b->tls.ca), "tls" },
        { a->compact_ops != b->compact_ops || a->compact_bytes != b->compact_bytes ||
          a->compact_keep != b->compact_keep, "compaction" },
        { a->sync_delay_us != b->sync_delay_us || a->sync_delay_bytes != b->sync_delay_bytes,
          "group_commit" },
    };
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!keys[i].changed || used >= len)
            continue;
        int w = snprintf(out + used, len - used, "%s%s", used ? ", " : "", keys[i].key);
        used += w > 0 ? (size_t)w : 0;
    }
}

/* SIGHUP: runs on the loop thread (libevent defers signals), so swapping
 * values the server reads is safe without locks. */
static void reload(sig_ctx *x)
{
    static const char *const level_names[] = { "error", "warn", "info", "debug" };
    char err[CONFIG_ERR_MAX], later[256];
    pl_config *cfg = x->cfg;

    if (!cfg->path) {
        pl_log(PL_LOG_WARN, "SIGHUP: running on the built-in default config; nothing to reload");
        return;
    }
    pl_config *fresh = pl_config_load(cfg->path, err, sizeof err);
    if (!fresh) {
        log_lines(PL_LOG_ERROR, "SIGHUP: not reloaded, keeping the running settings: ", err);
        return;
    }
    int changed = 0;
    if (fresh->log_level != cfg->log_level) {
        if (x->level_from_cli) {
            pl_log(PL_LOG_INFO, "SIGHUP: log_level %s in the file ignored: --log-level wins",
                   level_names[fresh->log_level]);
        } else {
            pl_log(PL_LOG_INFO, "SIGHUP: log_level %s -> %s", level_names[cfg->log_level],
                   level_names[fresh->log_level]);
            pl_log_set_level(fresh->log_level);
            changed++;
        }
        cfg->log_level = fresh->log_level;
    }
    /* The limits are one struct so they swap as a whole (config.h). */
    const struct { const char *key; size_t off; int wide; } lim[] = {
#define PL_LIM(f, w) { #f, offsetof(pl_limits, f), w }
        PL_LIM(conns_per_address, 0), PL_LIM(requests_per_second, 0),
        PL_LIM(request_burst, 0), PL_LIM(password_checks_queued, 0),
        PL_LIM(login_failures_per_user, 0), PL_LIM(login_failures_per_address, 0),
        PL_LIM(login_backoff_max_ms, 0), PL_LIM(session_ttl_s, 1),
        PL_LIM(held_per_connection, 0), PL_LIM(held_total, 0), PL_LIM(held_bytes, 1),
#undef PL_LIM
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        const char *o = (const char *)&cfg->limits + lim[i].off;
        const char *n = (const char *)&fresh->limits + lim[i].off;
        uint64_t ov, nv;
        if (lim[i].wide) {
            memcpy(&ov, o, sizeof ov);
            memcpy(&nv, n, sizeof nv);
        } else {
            uint32_t o32, n32;
            memcpy(&o32, o, sizeof o32);
            memcpy(&n32, n, sizeof n32);
            ov = o32;
            nv = n32;
        }
        if (ov != nv)
            pl_log(PL_LOG_INFO, "SIGHUP: limits.%s %llu -> %llu", lim[i].key,
                   (unsigned long long)ov, (unsigned long long)nv);
    }
    if (memcmp(&cfg->limits, &fresh->limits, sizeof cfg->limits) != 0) {
        cfg->limits = fresh->limits;
        if (x->srv)
            pl_server_set_limits(x->srv, &cfg->limits);
        changed++;
    }
    restart_keys(cfg, fresh, later, sizeof later);
    if (later[0])
        pl_log(PL_LOG_WARN, "SIGHUP: changed but needs a restart to apply: %s", later);
    pl_log(PL_LOG_INFO, "SIGHUP: reloaded %s (%s)", cfg->path,
           changed ? "applied the changes above" : "no run-time setting changed");
    pl_config_free(fresh);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    reload(arg);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    sig_ctx *x = arg;
    x->count++;
    if (x->count == 1) {
        pl_server_shutdown(x->srv, sig == SIGINT ? "SIGINT" : "SIGTERM");
    } else {
        /* An operator who asks twice wants out now; the store still closes
         * cleanly and the log replays anything unapplied at next start. */
        pl_log(PL_LOG_WARN, "second %s: stopping without waiting", sig == SIGINT ? "SIGINT" : "SIGTERM");
        event_base_loopbreak(x->base);
    }
}

int main(int argc, char **argv)
{
    enum { OPT_CHECK = 1000, OPT_JOIN };
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "id", required_argument, NULL, 'i' },
        { "data", required_argument, NULL, 'd' },
        { "log-level", required_argument, NULL, 'l' },
        { "check-config", required_argument, NULL, OPT_CHECK },
        { "join", no_argument, NULL, OPT_JOIN },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *config_path = NULL, *data_dir = NULL, *level_name = NULL, *check = NULL;
    const char *id_text = NULL;
    uint32_t id = 0;
    int c, join = 0;

    opterr = 0;
    while ((c = getopt_long(argc, argv, "c:i:d:l:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'i': id_text = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'l': level_name = optarg; break;
        case OPT_CHECK: check = optarg; break;
        case OPT_JOIN: join = 1; break;
        case 'V':
            printf("parleyd %s (store ABI %u.%u, transport ABI %u)\n", PARLEY_VERSION,
                   PL_STORE_ABI_VERSION, PL_STORE_ABI_MINOR, PL_TRANSPORT_ABI_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            if (optopt && optopt < 256 && strchr("cidl", optopt))
                fprintf(stderr, "parleyd: option -%c needs a value\n", optopt);
            else if (optind > 0 && optind <= argc)
                fprintf(stderr, "parleyd: unknown or incomplete option \"%s\"\n", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }

    if (check) {
        if (optind < argc || config_path || id_text || data_dir) {
            fprintf(stderr, "parleyd: --check-config takes only the file to check\n");
            return EXIT_USAGE;
        }
        static char err[CONFIG_ERR_MAX];
        unsigned nerr = 0;
        /* Every error of the file, one line each; then the plugins it
         * names, which would fail only at start otherwise. */
        pl_config *cfg = pl_config_check(check, err, sizeof err, &nerr);
        if (nerr)
            fprintf(stderr, "%s\n", err);
        if (!cfg)
            return 1;
        /* A config that parses but names a plugin that is missing or built
         * for another ABI would still fail at start: find and check both. */
        static const char *const kinds[2] = { "store", "transport" };
        const char *names[2] = { cfg->store.name, cfg->transport.name };
        int bad = nerr > 0;
        for (int k = 0; k < 2; k++) {
            pl_plugin *p = pl_plugin_load(kinds[k], names[k], cfg->plugin_dir, err, sizeof err);
            if (!p) {
                fprintf(stderr, "%s: %s: %s\n", check, kinds[k], err);
                bad = 1;
            }
            pl_plugin_unload(p);
        }
        if (bad) {
            pl_config_free(cfg);
            return 1;
        }
        printf("%s: ok (%zu server%s, transport %s, store %s)\n", check, cfg->n_servers,
               cfg->n_servers == 1 ? "" : "s", cfg->transport.name, cfg->store.name);
        pl_config_free(cfg);
        return 0;
    }

    /* The seed's positional form: CONFIG [SERVER_ID [DATA_PATH]]. */
    int npos = argc - optind;
    if (npos > 3) {
        fprintf(stderr, "parleyd: too many arguments (expected CONFIG SERVER_ID DATA_PATH)\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (npos >= 1) {
        if (config_path) {
            fprintf(stderr, "parleyd: config given twice (--config and \"%s\")\n", argv[optind]);
            return EXIT_USAGE;
        }
        config_path = argv[optind];
    }
    if (npos >= 2) {
        if (id_text) {
            fprintf(stderr, "parleyd: server id given twice (--id and \"%s\")\n", argv[optind + 1]);
            return EXIT_USAGE;
        }
        id_text = argv[optind + 1];
    }
    if (npos >= 3) {
        if (data_dir) {
            fprintf(stderr, "parleyd: data directory given twice (--data and \"%s\")\n",
                    argv[optind + 2]);
            return EXIT_USAGE;
        }
        data_dir = argv[optind + 2];
    }
    if (id_text && parse_id(id_text, &id) != 0) {
        fprintf(stderr, "parleyd: server id \"%s\" is not a non-negative integer\n", id_text);
        return EXIT_USAGE;
    }
    int level = -1;
    if (level_name && (level = pl_log_level_parse(level_name)) < 0) {
        fprintf(stderr, "parleyd: log level \"%s\": must be error, warn, info or debug\n",
                level_name);
        return EXIT_USAGE;
    }

    char tag[16];
    snprintf(tag, sizeof tag, "s%u", id);
    pl_log_set_tag(tag);
    if (level >= 0)
        pl_log_set_level(level);

    static char err[CONFIG_ERR_MAX];
    pl_config *cfg = config_path ? pl_config_load(config_path, err, sizeof err)
                                 : pl_config_default();
    if (!cfg) {
        log_lines(PL_LOG_ERROR, "", config_path ? err : "out of memory");
        return 1;
    }
    if (level < 0)
        pl_log_set_level(cfg->log_level);
    if (id >= cfg->n_servers) {
        pl_log(PL_LOG_ERROR, "server id %u is not in %s (it lists %zu server%s: ids 0-%zu)", id,
               cfg->path ? cfg->path : "the default configuration", cfg->n_servers,
               cfg->n_servers == 1 ? "" : "s", cfg->n_servers - 1);
        pl_config_free(cfg);
        return 1;
    }
    if (!data_dir)
        data_dir = cfg->data_dir ? cfg->data_dir : PL_DEFAULT_DATA_DIR;

    /* A client that disconnects mid-write must cost us an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    sig_ctx sx = { 0 };
    struct event *sigint = NULL, *sigterm = NULL, *sighup = NULL;
    pl_server *srv = NULL;
    struct event_base *base = event_base_new();
    if (!base) {
        pl_log(PL_LOG_ERROR, "cannot create the event loop");
        goto done;
    }
    /* Handlers first: a signal that arrives while the server starts (the
     * store replay, the start-up hash) is held by libevent and handled as
     * soon as the loop runs, instead of killing the process mid-open. */
    sx.base = base;
    sx.cfg = cfg;
    sx.level_from_cli = level >= 0;
    sighup = evsignal_new(base, SIGHUP, on_hup, &sx);
    if (!sighup || evsignal_add(sighup, NULL) != 0) {
        pl_log(PL_LOG_ERROR, "cannot install the SIGHUP handler");
        goto done;
    }
    sigint = evsignal_new(base, SIGINT, on_signal, &sx);
    sigterm = evsignal_new(base, SIGTERM, on_signal, &sx);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) != 0 || evsignal_add(sigterm, NULL) != 0) {
        pl_log(PL_LOG_ERROR, "cannot install the SIGINT/SIGTERM handlers");
        goto done;
    }
    srv = pl_server_new(base, cfg, id, data_dir, join, err, sizeof err);
    if (!srv) {
        pl_log(PL_LOG_ERROR, "cannot start: %s", err);
        goto done;
    }
    sx.srv = srv;
    if (event_base_dispatch(base) < 0) {
        pl_log(PL_LOG_ERROR, "event loop failed");
        goto done;
    }
    rc = 0;
done:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (sighup)
        event_free(sighup);
    pl_server_free(srv);
    if (srv)
        pl_log(rc == 0 ? PL_LOG_INFO : PL_LOG_ERROR, "stopped%s", rc == 0 ? " cleanly" : " after an error");
    if (base)
        event_base_free(base);
    pl_config_free(cfg);
    return rc;
}
