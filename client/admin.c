/*
 * client/admin.c — `parley admin stats` and `parley admin metrics`
 * (admin.h).
 *
 * Each server with an admin_port serves GET /metrics in the Prometheus text
 * format (core/admin.c). `stats` scrapes every server twice, --interval
 * apart, and prints the differences as rates: requests per second by kind,
 * and commit latency percentiles over that window (over the server's whole
 * life when no op committed in the window). The fetch is a plain blocking
 * HTTP/1.0 GET with timeouts: an operator tool talking to a loopback or LAN
 * listener needs nothing more, and it keeps the CLI free of an HTTP library.
 */
#include "admin.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <parley/types.h>

#include "config.h"

enum { ADMIN_OK = 0, ADMIN_SOME_FAILED = 1, ADMIN_USAGE = 2, ADMIN_NONE_ANSWERED = 3 };

#define ADMIN_TIMEOUT_S 3
#define ADMIN_BODY_MAX (4u * 1024u * 1024u)
#define ADMIN_BUCKETS_MAX 256
#define ADMIN_INTERVAL_DEFAULT_MS 1000
#define ADMIN_INTERVAL_MAX_MS 600000

/* One scrape of one server: the values `stats` shows. */
typedef struct scrape {
    int ok;
    char err[256];
    double at;                        /* monotonic seconds */
    char role[32], store[64], transport[64];
    double start, view, commit, log_entries, store_bytes, conns, subs;
    double last_view_change, view_changes;
    double req[PL_M__COUNT];
    double le[ADMIN_BUCKETS_MAX];     /* bucket bounds in seconds; INFINITY for +Inf */
    double cum[ADMIN_BUCKETS_MAX];    /* cumulative counts */
    size_t nb;
} scrape;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ HTTP GET */

/* GET http://host:port/path. On success *body is malloc'd (NUL-terminated,
 * caller frees). */
static int http_get(const char *host, uint16_t port, const char *path, char **body,
                    char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portstr[8], req[512];
    char *buf = NULL;
    size_t len = 0;
    int fd = -1, rc;

    *body = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    if ((rc = getaddrinfo(host, portstr, &hints, &res)) != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    snprintf(err, errlen, "cannot connect");
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        /* Linux applies SO_SNDTIMEO to connect() too. */
        struct timeval tv = { ADMIN_TIMEOUT_S, 0 };
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        snprintf(err, errlen, "cannot connect: %s", strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -1;

    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s:%u\r\nUser-Agent: parley/%s\r\n\r\n",
                     path, host, (unsigned)port, PARLEY_VERSION);
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, 0) != n) {
        snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
        goto fail;
    }
    buf = malloc(ADMIN_BODY_MAX + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (;;) {
        ssize_t r = recv(fd, buf + len, ADMIN_BODY_MAX - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "no answer within %d s: %s", ADMIN_TIMEOUT_S, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len == ADMIN_BODY_MAX) {
            snprintf(err, errlen, "answer larger than %u bytes", ADMIN_BODY_MAX);
            goto fail;
        }
    }
    buf[len] = '\0';
    close(fd);
    fd = -1;

    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(err, errlen, "not an HTTP answer");
        goto fail;
    }
    if (status != 200) {
        char *eol = strpbrk(buf, "\r\n");
        snprintf(err, errlen, "HTTP %.*s", eol ? (int)(eol - buf) - 9 : 3, buf + 9);
        goto fail;
    }
    char *start = strstr(buf, "\r\n\r\n");
    if (!start) {
        snprintf(err, errlen, "HTTP answer without a body");
        goto fail;
    }
    start += 4;
    memmove(buf, start, strlen(start) + 1);
    *body = buf;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return -1;
}

/* ------------------------------------------------------------ parsing */

/* The value of label key in a "{k="v",...}" text, unescaped into out. */
static int label(const char *labels, size_t n, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 2 <= n; i++) {
        if ((i == 0 || labels[i - 1] == '{' || labels[i - 1] == ',') &&
            strncmp(labels + i, key, kl) == 0 && labels[i + kl] == '=' && labels[i + kl + 1] == '"') {
            size_t o = 0;
            for (size_t j = i + kl + 2; j < n && labels[j] != '"'; j++) {
                if (labels[j] == '\\' && j + 1 < n)
                    j++;
                if (o + 1 < outlen)
                    out[o++] = labels[j];
            }
            if (outlen)
                out[o] = '\0';
            return 0;
        }
    }
    return -1;
}

static void parse_metrics(char *text, scrape *sc)
{
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *sp = strrchr(line, ' ');
        if (!sp)
            continue;
        double v = strtod(sp + 1, NULL);
        size_t nl = strcspn(line, "{ ");
        const char *labels = line[nl] == '{' ? line + nl : "";
        size_t ll = line[nl] == '{' ? (size_t)(sp - (line + nl)) : 0;
        char lv[64];
#define IS(name) (nl == sizeof(name) - 1 && strncmp(line, name, nl) == 0)
        if (IS("parley_info")) {
            label(labels, ll, "role", sc->role, sizeof sc->role);
            label(labels, ll, "store", sc->store, sizeof sc->store);
            label(labels, ll, "transport", sc->transport, sizeof sc->transport);
        } else if (IS("parley_start_time_seconds")) {
            sc->start = v;
        } else if (IS("parley_view")) {
            sc->view = v;
        } else if (IS("parley_commit_number")) {
            sc->commit = v;
        } else if (IS("parley_log_entries")) {
            sc->log_entries = v;
        } else if (IS("parley_store_bytes")) {
            sc->store_bytes = v;
        } else if (IS("parley_connections")) {
            sc->conns = v;
        } else if (IS("parley_subscribed_connections")) {
            sc->subs = v;
        } else if (IS("parley_last_view_change_time_seconds")) {
            sc->last_view_change = v;
        } else if (IS("parley_view_changes_total")) {
            sc->view_changes = v;
        } else if (IS("parley_requests_total")) {
            if (label(labels, ll, "method", lv, sizeof lv) == 0)
                for (uint32_t m = 0; m < PL_M__COUNT; m++)
                    if (strcmp(lv, pl_method_name(m)) == 0)
                        sc->req[m] = v;
        } else if (IS("parley_commit_latency_seconds_bucket")) {
            if (sc->nb < ADMIN_BUCKETS_MAX && label(labels, ll, "le", lv, sizeof lv) == 0) {
                sc->le[sc->nb] = strcmp(lv, "+Inf") == 0 ? INFINITY : strtod(lv, NULL);
                sc->cum[sc->nb++] = v;
            }
        }
#undef IS
    }
}

/* Where parleyd's admin listener can be reached: its bind address, unless
 * that is a wildcard, then the server's own host. */
static const char *admin_host(const pl_config *cfg, size_t i)
{
    const char *b = cfg->admin_bind ? cfg->admin_bind : PL_DEFAULT_HOST;
    if (strcmp(b, "0.0.0.0") == 0 || strcmp(b, "::") == 0 || strcmp(b, "*") == 0)
        return cfg->servers[i].host;
    return b;
}

static void scrape_one(const pl_config *cfg, size_t i, scrape *sc)
{
    char *body = NULL;
    memset(sc, 0, sizeof *sc);
    if (http_get(admin_host(cfg, i), cfg->servers[i].admin_port, "/metrics", &body,
                 sc->err, sizeof sc->err) != 0)
        return;
    sc->at = now_s();
    parse_metrics(body, sc);
    free(body);
    sc->ok = 1;
}

/* ------------------------------------------------------------ output */

/* The bound of the bucket holding quantile q of the counts b - a (a may be
 * NULL); -1 when there are no samples. */
static double quantile(const scrape *b, const scrape *a, double q, double *samples)
{
    if (b->nb == 0)
        return -1;
    double total = b->cum[b->nb - 1] - (a && a->nb == b->nb ? a->cum[a->nb - 1] : 0);
    if (samples)
        *samples = total;
    if (total <= 0)
        return -1;
    double want = ceil(q * total);
    for (size_t i = 0; i < b->nb; i++) {
        double c = b->cum[i] - (a && a->nb == b->nb ? a->cum[i] : 0);
        if (c >= want)
            return b->le[i];
    }
    return b->le[b->nb - 1];
}

static void fmt_bytes(double v, char *out, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(out, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void fmt_ms(double s, char *out, size_t len)
{
    if (s < 0)
        snprintf(out, len, "-");
    else if (isinf(s))
        snprintf(out, len, ">33s");
    else
        snprintf(out, len, s * 1000 < 10 ? "%.2f" : "%.0f", s * 1000);
}

static void fmt_time(double unix_s, char *out, size_t len)
{
    if (unix_s <= 0) {
        snprintf(out, len, "none since start");
        return;
    }
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

typedef struct row {
    size_t id;
    char admin[300];
    scrape a, b;                      /* first and second scrape */
    double window;                    /* seconds between them, 0 = since start */
    double rate[PL_M__COUNT], total_rate;
    double p50, p95, p99, samples;
    const char *lat_window;           /* "interval" or "since start" */
} row;

static void compute(row *r)
{
    const scrape *a = r->window > 0 ? &r->a : NULL;
    double secs = r->window;
    if (!a) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        secs = (double)ts.tv_sec - r->b.start;
        if (secs < 1)
            secs = 1;
    }
    r->total_rate = 0;
    for (uint32_t m = 0; m < PL_M__COUNT; m++) {
        double d = r->b.req[m] - (a ? a->req[m] : 0);
        r->rate[m] = d > 0 ? d / secs : 0;
        r->total_rate += r->rate[m];
    }
    r->lat_window = a ? "interval" : "since start";
    r->p50 = quantile(&r->b, a, 0.50, &r->samples);
    if (a && r->samples <= 0) {
        /* Nothing committed in the window: show the whole life instead. */
        a = NULL;
        r->lat_window = "since start";
        r->p50 = quantile(&r->b, NULL, 0.50, &r->samples);
    }
    r->p95 = quantile(&r->b, a, 0.95, NULL);
    r->p99 = quantile(&r->b, a, 0.99, NULL);
}

static cJSON *json_ms(double s)
{
    if (s < 0 || isinf(s))
        return cJSON_CreateNull();
    return cJSON_CreateNumber(s * 1000);
}

static int print_json(row *rows, size_t n, int interval_ms)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!o || !arr) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        fprintf(stderr, "parley: out of memory\n");
        return ADMIN_SOME_FAILED;
    }
    cJSON_AddNumberToObject(o, "interval_ms", interval_ms);
    cJSON_AddItemToObject(o, "servers", arr);
    for (size_t i = 0; i < n; i++) {
        row *r = &rows[i];
        cJSON *s = cJSON_CreateObject();
        if (!s)
            continue;
        cJSON_AddItemToArray(arr, s);
        cJSON_AddNumberToObject(s, "id", (double)r->id);
        cJSON_AddStringToObject(s, "admin", r->admin);
        cJSON_AddBoolToObject(s, "reachable", r->b.ok);
        if (!r->b.ok) {
            cJSON_AddStringToObject(s, "error", r->admin[0] ? r->b.err : "no admin_port");
            continue;
        }
        cJSON_AddStringToObject(s, "role", r->b.role);
        cJSON_AddStringToObject(s, "store", r->b.store);
        cJSON_AddStringToObject(s, "transport", r->b.transport);
        cJSON_AddNumberToObject(s, "view", r->b.view);
        cJSON_AddNumberToObject(s, "commit", r->b.commit);
        cJSON_AddNumberToObject(s, "connections", r->b.conns);
        cJSON_AddNumberToObject(s, "subscribed_connections", r->b.subs);
        cJSON_AddNumberToObject(s, "requests_per_second_total", r->total_rate);
        cJSON *k = cJSON_AddObjectToObject(s, "requests_per_second");
        for (uint32_t m = 0; k && m < PL_M__COUNT; m++)
            if (m != PL_M_PUSH)
                cJSON_AddNumberToObject(k, pl_method_name(m), r->rate[m]);
        cJSON *l = cJSON_AddObjectToObject(s, "commit_latency_ms");
        if (l) {
            cJSON_AddItemToObject(l, "p50", json_ms(r->p50));
            cJSON_AddItemToObject(l, "p95", json_ms(r->p95));
            cJSON_AddItemToObject(l, "p99", json_ms(r->p99));
            cJSON_AddNumberToObject(l, "samples", r->samples);
            cJSON_AddStringToObject(l, "window", r->lat_window);
        }
        cJSON_AddNumberToObject(s, "log_entries", r->b.log_entries);
        cJSON_AddNumberToObject(s, "store_bytes", r->b.store_bytes);
        cJSON_AddNumberToObject(s, "view_changes", r->b.view_changes);
        if (r->b.last_view_change > 0)
            cJSON_AddNumberToObject(s, "last_view_change", r->b.last_view_change);
        else
            cJSON_AddNullToObject(s, "last_view_change");
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) {
        fprintf(stderr, "parley: out of memory\n");
        return ADMIN_SOME_FAILED;
    }
    puts(text);
    cJSON_free(text);
    return 0;
}

static void print_table(row *rows, size_t n, int interval_ms)
{
    printf("%-3s %-21s %-9s %6s %5s %9s %22s %9s %10s  %s\n", "ID", "ADMIN", "ROLE", "CONNS",
           "SUBS", "REQ/S", "COMMIT ms p50/p95/p99", "LOG OPS", "STORE", "LAST VIEW CHANGE");
    for (size_t i = 0; i < n; i++) {
        row *r = &rows[i];
        printf("%-3zu %-21s ", r->id, r->admin[0] ? r->admin : "-");
        if (!r->b.ok) {
            printf("%s\n", r->admin[0] ? r->b.err : "no admin_port in the config");
            continue;
        }
        char p50[16], p95[16], p99[16], lat[64], bytes[32], when[40];
        fmt_ms(r->p50, p50, sizeof p50);
        fmt_ms(r->p95, p95, sizeof p95);
        fmt_ms(r->p99, p99, sizeof p99);
        snprintf(lat, sizeof lat, "%s/%s/%s", p50, p95, p99);
        fmt_bytes(r->b.store_bytes, bytes, sizeof bytes);
        fmt_time(r->b.last_view_change, when, sizeof when);
        printf("%-9s %6.0f %5.0f %9.1f %22s %9.0f %10s  %s\n", r->b.role, r->b.conns, r->b.subs,
               r->total_rate, lat, r->b.log_entries, bytes, when);
    }
    if (interval_ms)
        printf("\nrequests/s by kind over %d ms", interval_ms);
    else
        printf("\nrequests/s by kind averaged since start");
    printf(" (SUBS counts subscribed connections; commit latency is over the\n"
           "same window, or since start when nothing committed in it):\n");
    for (size_t i = 0; i < n; i++) {
        row *r = &rows[i];
        if (!r->b.ok)
            continue;
        printf("  %zu:", r->id);
        int any = 0;
        for (uint32_t m = 0; m < PL_M__COUNT; m++)
            if (r->rate[m] > 0) {
                printf(" %s %.1f", pl_method_name(m), r->rate[m]);
                any = 1;
            }
        printf("%s  [latency %s, %.0f ops]\n", any ? "" : " (none)", r->lat_window, r->samples);
    }
}

/* ------------------------------------------------------------ commands */

static pl_config *load_config(const char *path)
{
    char err[1024];
    if (!path || !path[0])
        path = getenv("PARLEY_CONFIG");
    pl_config *cfg = path && path[0] ? pl_config_load(path, err, sizeof err) : pl_config_default();
    if (!cfg)
        fprintf(stderr, "parley: %s\n", path && path[0] ? err : "out of memory");
    return cfg;
}

static int admin_usage(const char *why)
{
    if (why)
        fprintf(stderr, "parley: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: parley [-c CONFIG] [--json] admin stats [--interval MS]\n"
            "       parley [-c CONFIG] admin metrics ID\n"
            "\n"
            "Reads GET /metrics from each server's admin_port (see docs/operations.md).\n"
            "  stats     one row per server: role, connections, subscribed connections,\n"
            "            requests/s (scraped twice, --interval apart; default %d ms,\n"
            "            0 = averages since start), commit latency p50/p95/p99, log\n"
            "            entries, bytes in the data directory, last view change\n"
            "  metrics   the raw Prometheus text of server ID\n",
            ADMIN_INTERVAL_DEFAULT_MS);
    return why ? ADMIN_USAGE : 0;
}

static int cmd_stats(const pl_config *cfg, int json, int interval_ms)
{
    row *rows = calloc(cfg->n_servers, sizeof *rows);
    size_t with_port = 0, answered = 0;
    if (!rows) {
        fprintf(stderr, "parley: out of memory\n");
        return ADMIN_SOME_FAILED;
    }
    for (size_t i = 0; i < cfg->n_servers; i++) {
        rows[i].id = i;
        if (!cfg->servers[i].admin_port)
            continue;
        with_port++;
        const char *h = admin_host(cfg, i);
        snprintf(rows[i].admin, sizeof rows[i].admin, strchr(h, ':') ? "[%s]:%u" : "%s:%u", h,
                 (unsigned)cfg->servers[i].admin_port);
        if (interval_ms)
            scrape_one(cfg, i, &rows[i].a);
    }
    if (!with_port) {
        free(rows);
        fprintf(stderr, "parley: no server in %s has an admin_port (set servers[].admin_port "
                "or admin.port_offset)\n", cfg->path ? cfg->path : "the default configuration");
        return ADMIN_USAGE;
    }
    if (interval_ms) {
        struct timespec ts = { interval_ms / 1000, (long)(interval_ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    for (size_t i = 0; i < cfg->n_servers; i++) {
        if (!cfg->servers[i].admin_port)
            continue;
        scrape_one(cfg, i, &rows[i].b);
        if (!rows[i].b.ok)
            continue;
        answered++;
        rows[i].window = interval_ms && rows[i].a.ok ? rows[i].b.at - rows[i].a.at : 0;
        compute(&rows[i]);
    }
    int rc = json ? print_json(rows, cfg->n_servers, interval_ms)
                  : (print_table(rows, cfg->n_servers, interval_ms), 0);
    free(rows);
    if (rc)
        return rc;
    return answered == with_port ? ADMIN_OK : answered ? ADMIN_SOME_FAILED : ADMIN_NONE_ANSWERED;
}

static int cmd_metrics(const pl_config *cfg, const char *id_text)
{
    char *end, err[300], *body = NULL;
    unsigned long id = strtoul(id_text, &end, 10);
    if (!id_text[0] || *end || id >= cfg->n_servers) {
        fprintf(stderr, "parley: server id \"%s\": the config lists ids 0-%zu\n", id_text,
                cfg->n_servers - 1);
        return ADMIN_USAGE;
    }
    if (!cfg->servers[id].admin_port) {
        fprintf(stderr, "parley: server %lu has no admin_port in the config\n", id);
        return ADMIN_USAGE;
    }
    if (http_get(admin_host(cfg, id), cfg->servers[id].admin_port, "/metrics", &body, err,
                 sizeof err) != 0) {
        fprintf(stderr, "parley: server %lu admin port %u: %s\n", id,
                (unsigned)cfg->servers[id].admin_port, err);
        return ADMIN_NONE_ANSWERED;
    }
    fputs(body, stdout);
    free(body);
    return ADMIN_OK;
}

int parley_admin_main(const char *config_path, int json, int argc, char **argv)
{
    if (argc < 1)
        return admin_usage("admin needs a subcommand: stats or metrics");
    if (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0)
        return admin_usage(NULL);
    int rc, interval_ms = ADMIN_INTERVAL_DEFAULT_MS;
    const char *id = NULL;
    if (strcmp(argv[0], "stats") == 0) {
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
                return admin_usage(NULL);
            const char *v = NULL;
            if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc)
                v = argv[++i];
            else if (strncmp(argv[i], "--interval=", 11) == 0)
                v = argv[i] + 11;
            else
                return admin_usage("admin stats: unknown argument (expected --interval MS)");
            char *end;
            long ms = strtol(v, &end, 10);
            if (!v[0] || *end || ms < 0 || ms > ADMIN_INTERVAL_MAX_MS)
                return admin_usage("admin stats: --interval must be 0-600000 milliseconds");
            interval_ms = (int)ms;
        }
    } else if (strcmp(argv[0], "metrics") == 0) {
        if (argc != 2)
            return admin_usage("admin metrics takes one server ID");
        id = argv[1];
    } else {
        return admin_usage("unknown admin subcommand (expected stats or metrics)");
    }
    pl_config *cfg = load_config(config_path);
    if (!cfg)
        return ADMIN_USAGE;
    rc = id ? cmd_metrics(cfg, id) : cmd_stats(cfg, json, interval_ms);
    pl_config_free(cfg);
    return rc;
}
