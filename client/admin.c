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
 *
 * `members`, `add-server`, `remove-server` and `replace-server` use the
 * /cluster/ endpoints of the same listener (core/admin.c, issue 9). A change
 * is POSTed with the config's admin.token to the first server that answers;
 * a backup answers 421 with the primary's index in its membership, and the
 * request goes there. The primary answers only once the RECONFIG op is
 * applied (after any new server has caught up), so the wait is long:
 * --timeout, 180 s by default.
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
#include "members.h"
#include "transfer.h"

enum { ADMIN_OK = 0, ADMIN_SOME_FAILED = 1, ADMIN_USAGE = 2, ADMIN_NONE_ANSWERED = 3 };
/* The same codes, as the membership commands use them. */
enum { ADMIN_REFUSED = 1 };

#define ADMIN_TIMEOUT_S 3
#define ADMIN_BODY_MAX (4u * 1024u * 1024u)
#define ADMIN_BUCKETS_MAX 256
#define ADMIN_INTERVAL_DEFAULT_MS 1000
#define ADMIN_INTERVAL_MAX_MS 600000
#define ADMIN_CHANGE_TIMEOUT_S 180
#define ADMIN_CHANGE_TIMEOUT_MAX_S 86400
#define ADMIN_HOPS_MAX 4              /* 421 redirects followed per attempt */

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

/* ------------------------------------------------------------ HTTP */

static int send_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* METHOD http://host:port/path, with "Authorization: Bearer TOKEN" when
 * token is not NULL and the request body when body_len > 0, waiting up to
 * timeout_s for connect and for each read. The answer's body goes to sink
 * when the status is 200 and a sink is given (an export, any size);
 * otherwise into *body (malloc'd, NUL-terminated, caller frees; at most
 * ADMIN_BODY_MAX bytes). Returns 0 with *status on an answer; -1 with err
 * when no (whole) answer came, and *sent set when the request had been
 * sent (its outcome is then unknown). */
static int http_exchange(const char *host, uint16_t port, const char *method, const char *path,
                         const char *token, const void *req_body, size_t body_len,
                         int timeout_s, const pl_admin_sink *sink, int *status_out,
                         char **body, int *sent, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portstr[8], req[1024];
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = -1, rc, streaming = 0;

    *body = NULL;
    *status_out = 0;
    if (sent)
        *sent = 0;
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
        struct timeval tv = { timeout_s, 0 };
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

    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: %s:%u\r\nUser-Agent: parley/%s\r\n"
                     "%s%s%s%sContent-Length: %zu\r\n\r\n", method, path, host, (unsigned)port,
                     PARLEY_VERSION, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "", body_len ? "Content-Type: application/json\r\n" : "",
                     body_len);
    if (n < 0 || (size_t)n >= sizeof req || send_all(fd, req, (size_t)n) != 0 ||
        (body_len && send_all(fd, req_body, body_len) != 0)) {
        snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
        goto fail;
    }
    if (sent)
        *sent = 1;
    cap = 65536;
    if (!(buf = malloc(cap + 1))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int status = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= ADMIN_BODY_MAX) {
                snprintf(err, errlen, "answer larger than %u bytes", ADMIN_BODY_MAX);
                goto fail;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "no answer within %d s: %s", timeout_s, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (streaming) {
            if (sink->write(sink->ud, buf, len) != 0) {
                snprintf(err, errlen, "writing the answer: %s", strerror(errno));
                goto fail;
            }
            len = 0;
            continue;
        }
        /* Once the head is in, a 200 for a sink streams from here on. */
        buf[len] = '\0';
        char *start = sink ? strstr(buf, "\r\n\r\n") : NULL;
        if (start && sscanf(buf, "HTTP/%*d.%*d %d", &status) == 1 && status == 200) {
            start += 4;
            size_t rest = len - (size_t)(start - buf);
            if (rest && sink->write(sink->ud, start, rest) != 0) {
                snprintf(err, errlen, "writing the answer: %s", strerror(errno));
                goto fail;
            }
            streaming = 1;
            len = 0;
        }
    }
    close(fd);
    fd = -1;
    if (streaming) {
        free(buf);
        *status_out = 200;
        if (!(*body = strdup(""))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1 || len < 12) {
        snprintf(err, errlen, "not an HTTP answer");
        goto fail;
    }
    /* The status line, for callers that report a status rather than a body. */
    char *eol = strpbrk(buf, "\r\n");
    snprintf(err, errlen, "HTTP %.*s", eol ? (int)(eol - buf) - 9 : 3, buf + 9);
    char *start = strstr(buf, "\r\n\r\n");
    if (!start) {
        snprintf(err, errlen, "HTTP answer without a body");
        goto fail;
    }
    start += 4;
    memmove(buf, start, strlen(start) + 1);
    *status_out = status;
    *body = buf;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return -1;
}

static int http_do(const char *host, uint16_t port, const char *method, const char *path,
                   const char *token, int timeout_s, int *status_out, char **body, int *sent,
                   char *err, size_t errlen)
{
    return http_exchange(host, port, method, path, token, NULL, 0, timeout_s, NULL, status_out,
                         body, sent, err, errlen);
}

/* GET http://host:port/path that must answer 200. On success *body is
 * malloc'd (NUL-terminated, caller frees). */
static int http_get(const char *host, uint16_t port, const char *path, char **body,
                    char *err, size_t errlen)
{
    int status;
    if (http_do(host, port, "GET", path, NULL, ADMIN_TIMEOUT_S, &status, body, NULL, err,
                errlen) != 0)
        return -1;
    if (status != 200) {
        free(*body);
        *body = NULL;
        return -1;
    }
    return 0;
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

static pl_config *load_config(const char *path);

pl_config *parley_admin_load_config(const char *path)
{
    return load_config(path);
}

static pl_config *load_config(const char *path)
{
    char err[4096];
    if (!path || !path[0])
        path = getenv("PARLEY_CONFIG");
    pl_config *cfg = path && path[0] ? pl_config_load(path, err, sizeof err) : pl_config_default();
    if (!cfg) {
        /* one line per error of the file */
        const char *l = path && path[0] ? err : "out of memory";
        while (*l) {
            size_t n = strcspn(l, "\n");
            fprintf(stderr, "parley: %.*s\n", (int)n, l);
            l += n + (l[n] == '\n');
        }
    }
    return cfg;
}

static int admin_usage(const char *why)
{
    if (why)
        fprintf(stderr, "parley: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: parley [-c CONFIG] [--json] admin stats [--interval MS]\n"
            "       parley [-c CONFIG] admin metrics ID\n"
            "       parley [-c CONFIG] [--json] admin members\n"
            "       parley [-c CONFIG] [--json] admin add-server HOST:PORT[:PEER_PORT] [--timeout S]\n"
            "       parley [-c CONFIG] [--json] admin remove-server HOST:PORT[:PEER_PORT] [--timeout S]\n"
            "       parley [-c CONFIG] [--json] admin replace-server OLD NEW [--timeout S]\n"
            "       parley [-c CONFIG] [--json] admin import-prototype FILE [--rename OLD=NEW]...\n"
            "                                 [--skip-invalid] [--dry-run] [--batch N] [--timeout S]\n"
            "       parley [-c CONFIG] [--json] admin export [-o FILE] [--no-sessions] [--timeout S]\n"
            "       parley [-c CONFIG] [--json] admin import FILE [--resume] [--batch N] [--timeout S]\n"
            "\n"
            "Talks to each server's admin_port over HTTP (see docs/operations.md).\n"
            "  stats     one row per server: role, connections, subscribed connections,\n"
            "            requests/s (scraped twice, --interval apart; default %d ms,\n"
            "            0 = averages since start), commit latency p50/p95/p99, log\n"
            "            entries, bytes in the data directory, last view change\n"
            "  metrics   the raw Prometheus text of server ID\n"
            "  members   the membership in force: epoch and servers in priority order\n"
            "  add-server, remove-server, replace-server\n"
            "            change the membership of the running cluster (the config's\n"
            "            admin.token authorizes it); asks the primary and waits up to\n"
            "            --timeout seconds (default %d) for the new epoch. PEER_PORT\n"
            "            defaults to PORT+1000; an IPv6 host goes in brackets.\n"
            "  import-prototype\n"
            "            import the Python prototype's state file: accounts keep their\n"
            "            passwords, messages their read state (admin.token; see\n"
            "            'parley admin import-prototype --help')\n"
            "  export    the whole chat state, from one snapshot, as a JSON Lines dump\n"
            "  import    a dump into an empty cluster of any store (admin.token)\n"
            "\n"
            "exit status: 0 ok, 1 refused (the reason on stderr), 2 usage error,\n"
            "3 no server reachable (or no answer: check 'admin members')\n",
            ADMIN_INTERVAL_DEFAULT_MS, ADMIN_CHANGE_TIMEOUT_S);
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

/* ------------------------------------------------------------ membership */

typedef struct endpoint {
    char host[256];
    uint16_t port;
} endpoint;

/* Address of an admin listener for a server on host: the bind address,
 * unless that is a wildcard (see admin_host). */
static void endpoint_for(const pl_config *cfg, const char *host, uint16_t port, endpoint *e)
{
    const char *b = cfg->admin_bind ? cfg->admin_bind : PL_DEFAULT_HOST;
    int wild = strcmp(b, "0.0.0.0") == 0 || strcmp(b, "::") == 0 || strcmp(b, "*") == 0;
    snprintf(e->host, sizeof e->host, "%s", wild ? host : b);
    e->port = port;
}

/* "HOST:PORT" with brackets around an IPv6 host. */
static void fmt_addr(const char *host, double port, char *out, size_t len)
{
    snprintf(out, len, strchr(host, ':') ? "[%s]:%.0f" : "%s:%.0f", host, port);
}

/* The admin port of servers[j] of a /cluster/members document: the
 * document's own admin_port when it has one, else the config's entry for
 * the same server, else the offset every configured server shares. */
static int admin_endpoint_of(const pl_config *cfg, const cJSON *doc, int j, endpoint *e)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "servers");
    const cJSON *sv = cJSON_IsArray(arr) && j >= 0 ? cJSON_GetArrayItem(arr, j) : NULL;
    const cJSON *h = sv ? cJSON_GetObjectItemCaseSensitive(sv, "host") : NULL;
    const cJSON *p = sv ? cJSON_GetObjectItemCaseSensitive(sv, "port") : NULL;
    const cJSON *pp = sv ? cJSON_GetObjectItemCaseSensitive(sv, "peer_port") : NULL;
    const cJSON *ap = sv ? cJSON_GetObjectItemCaseSensitive(sv, "admin_port") : NULL;
    if (!cJSON_IsString(h) || !cJSON_IsNumber(p))
        return -1;
    if (cJSON_IsNumber(ap) && ap->valuedouble >= 1 && ap->valuedouble <= 65535) {
        endpoint_for(cfg, h->valuestring, (uint16_t)ap->valuedouble, e);
        return 0;
    }
    for (size_t i = 0; i < cfg->n_servers; i++) {
        const pl_server_conf *c = &cfg->servers[i];
        if (!c->admin_port || strcmp(c->host, h->valuestring) != 0)
            continue;
        if ((cJSON_IsNumber(pp) && c->peer_port == (uint16_t)pp->valuedouble) ||
            c->port == (uint16_t)p->valuedouble) {
            endpoint_for(cfg, c->host, c->admin_port, e);
            return 0;
        }
    }
    /* A server the config does not list (added since): admin.port_offset
     * gave every configured server admin_port = port + offset. */
    long off = 0;
    for (size_t i = 0; i < cfg->n_servers; i++) {
        const pl_server_conf *c = &cfg->servers[i];
        if (!c->admin_port)
            return -1;
        long o = (long)c->admin_port - (long)c->port;
        if (i && o != off)
            return -1;
        off = o;
    }
    long port = (long)p->valuedouble + off;
    if (!off || port < 1 || port > 65535)
        return -1;
    endpoint_for(cfg, h->valuestring, (uint16_t)port, e);
    return 0;
}

/* "epoch 2: 127.0.0.1:8100 (primary), 127.0.0.1:8101" from a membership
 * document ({"epoch", "servers", optional "primary"}). */
static int print_membership(const cJSON *doc)
{
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(doc, "epoch");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "servers");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(doc, "primary");
    if (!cJSON_IsNumber(ep) || !cJSON_IsArray(arr))
        return -1;
    int primary = cJSON_IsNumber(pr) ? (int)pr->valuedouble : -1, i = 0;
    printf("epoch %.0f:", ep->valuedouble);
    for (const cJSON *sv = arr->child; sv; sv = sv->next, i++) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(sv, "host");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(sv, "port");
        char a[300];
        fmt_addr(cJSON_IsString(h) ? h->valuestring : "?", cJSON_IsNumber(p) ? p->valuedouble : 0,
                 a, sizeof a);
        printf("%s %s%s", i ? "," : "", a, i == primary ? " (primary)" : "");
    }
    printf("\n");
    return 0;
}

/* Prints an answer body: as is with --json, else as a membership line. */
static void print_answer(const char *body, int json)
{
    cJSON *doc = cJSON_Parse(body);
    if (json || !doc || print_membership(doc) != 0)
        printf("%s%s", body, body[0] && body[strlen(body) - 1] == '\n' ? "" : "\n");
    cJSON_Delete(doc);
}

/* The "error" of a JSON answer, else the body itself; addr: who said it. */
static void print_refusal_at(const char *addr, int status, const char *body)
{
    cJSON *doc = cJSON_Parse(body);
    const cJSON *er = doc ? cJSON_GetObjectItemCaseSensitive(doc, "error") : NULL;
    fprintf(stderr, "parley: %s: %d: %s\n", addr, status,
            cJSON_IsString(er) ? er->valuestring : body);
    cJSON_Delete(doc);
}

static size_t config_endpoints(const pl_config *cfg, endpoint *eps)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_servers && n < PL_MEMBERS_MAX; i++)
        if (cfg->servers[i].admin_port)
            endpoint_for(cfg, cfg->servers[i].host, cfg->servers[i].admin_port, &eps[n++]);
    if (!n)
        fprintf(stderr, "parley: no server in %s has an admin_port (set servers[].admin_port "
                "or admin.port_offset)\n", cfg->path ? cfg->path : "the default configuration");
    return n;
}

/* Rank of a /cluster/members answer: a newer epoch first, then a member's
 * answer over a non-member's (a removed server keeps the epoch it left in). */
static double members_rank(const cJSON *doc)
{
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(doc, "epoch");
    const cJSON *self = cJSON_GetObjectItemCaseSensitive(doc, "self");
    if (!cJSON_IsNumber(ep))
        return -1;
    return ep->valuedouble * 2 + (cJSON_IsNumber(self) && self->valuedouble >= 0 ? 1 : 0);
}

/* Ask endpoints [from, n) for /cluster/members; keep the best answer. */
static void members_ask(const endpoint *eps, size_t from, size_t n, char **best,
                        double *best_rank)
{
    for (size_t i = from; i < n; i++) {
        char err[300], a[300], *body = NULL;
        fmt_addr(eps[i].host, eps[i].port, a, sizeof a);
        if (http_get(eps[i].host, eps[i].port, "/cluster/members", &body, err, sizeof err) != 0) {
            fprintf(stderr, "parley: %s: %s\n", a, err);
            continue;
        }
        cJSON *doc = cJSON_Parse(body);
        double r = doc ? members_rank(doc) : -1;
        cJSON_Delete(doc);
        if (r > *best_rank) {
            free(*best);
            *best = body;
            *best_rank = r;
        } else {
            free(body);
        }
    }
}

/* Ask every configured server, then the members the best answer names
 * that the config does not: print the newest membership a member reports.
 * A config file may be stale (servers removed or added since), so no
 * single server is trusted to know. */
static int cmd_members(const pl_config *cfg, int json)
{
    endpoint eps[2 * PL_MEMBERS_MAX];
    size_t n = config_endpoints(cfg, eps);
    if (!n)
        return ADMIN_USAGE;
    char *best = NULL;
    double best_rank = -1;
    members_ask(eps, 0, n, &best, &best_rank);
    cJSON *bd = best ? cJSON_Parse(best) : NULL;
    const cJSON *arr = bd ? cJSON_GetObjectItemCaseSensitive(bd, "servers") : NULL;
    size_t more = n;
    for (int j = 0; cJSON_IsArray(arr) && j < cJSON_GetArraySize(arr) &&
                    more < 2 * PL_MEMBERS_MAX; j++) {
        endpoint e;
        int dup = admin_endpoint_of(cfg, bd, j, &e) != 0;
        for (size_t k = 0; !dup && k < more; k++)
            dup = eps[k].port == e.port && strcmp(eps[k].host, e.host) == 0;
        if (!dup)
            eps[more++] = e;
    }
    cJSON_Delete(bd);
    members_ask(eps, n, more, &best, &best_rank);
    if (!best)
        return ADMIN_NONE_ANSWERED;
    print_answer(best, json);
    free(best);
    return ADMIN_OK;
}

/* Percent-encodes a query value (an address may hold [ ] : %). */
static void url_encode(const char *s, char *out, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

/* Sends a request to the primary: each configured admin endpoint in turn, a
 * 421 followed to the primary it names, a server that cannot act yet
 * (503, or a 421 without a reachable primary) retried each second until
 * the deadline. A request whose answer was lost is sent again only when
 * call->retry_lost says it may be (an import batch: the cluster applies it
 * once however often it comes); otherwise that ends the call. Returns
 * ADMIN_OK with *status and *resp (malloc'd) for the primary's answer of
 * any other status, or ADMIN_NONE_ANSWERED (*sent when the request may
 * have taken effect) with the reason in err. */
int parley_admin_to_primary(const pl_config *cfg, const pl_admin_call *call, int *status,
                            char **resp, int *sent_out, char *err, size_t errlen)
{
    endpoint eps[PL_MEMBERS_MAX];
    size_t n = config_endpoints(cfg, eps);
    *resp = NULL;
    *status = 0;
    if (sent_out)
        *sent_out = 0;
    if (!n) {
        snprintf(err, errlen, "no admin endpoint");
        return ADMIN_USAGE;
    }
    double deadline = now_s() + call->timeout_s;
    char last[1024] = "";
    for (;;) {
        int reached = 0;
        for (size_t i = 0; i < n; i++) {
            endpoint e = eps[i];
            for (int hop = 0; hop <= ADMIN_HOPS_MAX; hop++) {
                char herr[300], a[300], *body = NULL;
                int st, sent, left = (int)(deadline - now_s());
                if (left < 1)
                    left = 1;
                if (call->io_timeout_s && left > call->io_timeout_s)
                    left = call->io_timeout_s;
                fmt_addr(e.host, e.port, a, sizeof a);
                if (http_exchange(e.host, e.port, call->method, call->path, cfg->admin_token,
                                  call->body, call->body_len, left, call->sink, &st, &body,
                                  &sent, herr, sizeof herr) != 0) {
                    if (sent && sent_out)
                        *sent_out = 1;
                    if (sent && !call->retry_lost) {
                        snprintf(err, errlen, "%s: %s", a, herr);
                        return ADMIN_NONE_ANSWERED;
                    }
                    snprintf(last, sizeof last, "%s: %s", a, herr);
                    break;
                }
                reached = 1;
                if (st == 503) {
                    cJSON *d = cJSON_Parse(body);
                    const cJSON *er = d ? cJSON_GetObjectItemCaseSensitive(d, "error") : NULL;
                    snprintf(last, sizeof last, "%s: %s", a, cJSON_IsString(er) ? er->valuestring
                                                                                : body);
                    cJSON_Delete(d);
                    free(body);
                    break;
                }
                if (st != 421) {
                    *status = st;
                    *resp = body;
                    if (st != 200 && call->endpoint)
                        fmt_addr(e.host, e.port, call->endpoint, 300);
                    return ADMIN_OK;
                }
                /* Not the primary: find where the primary's admin port is. */
                cJSON *d = cJSON_Parse(body);
                const cJSON *pr = d ? cJSON_GetObjectItemCaseSensitive(d, "primary") : NULL;
                int j = cJSON_IsNumber(pr) ? (int)pr->valuedouble : -1;
                cJSON_Delete(d);
                free(body);
                char *mdoc = NULL;
                endpoint next;
                int found = 0;
                if (j >= 0 &&
                    http_get(e.host, e.port, "/cluster/members", &mdoc, herr, sizeof herr) == 0) {
                    cJSON *m = cJSON_Parse(mdoc);
                    found = m && admin_endpoint_of(cfg, m, j, &next) == 0;
                    cJSON_Delete(m);
                    free(mdoc);
                }
                if (!found) {
                    snprintf(last, sizeof last, "%s: not the primary, and the primary (%d) has no "
                             "known admin port", a, j);
                    break;
                }
                e = next;
            }
        }
        if (!reached && !call->retry_lost) {
            snprintf(err, errlen, "no admin endpoint answered (last: %s)", last);
            return ADMIN_NONE_ANSWERED;
        }
        if (now_s() + 1 > deadline) {
            snprintf(err, errlen, "no primary took it within %d s (last: %s)", call->timeout_s,
                     last);
            return ADMIN_NONE_ANSWERED;
        }
        struct timespec ts = { 1, 0 };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

/* POSTs a membership change to the primary (parley_admin_to_primary). */
static int cmd_change(const pl_config *cfg, int json, const char *path, const char *what,
                      int timeout_s)
{
    if (!cfg->admin_token) {
        fprintf(stderr, "parley: %s has no admin.token or admin.token_file: membership changes "
                "need the cluster's operator token\n",
                cfg->path ? cfg->path : "the default configuration");
        return ADMIN_USAGE;
    }
    char err[1400], where[300] = "", *body = NULL;
    int status, sent;
    pl_admin_call call = { .method = "POST", .path = path, .timeout_s = timeout_s,
                           .endpoint = where };
    int rc = parley_admin_to_primary(cfg, &call, &status, &body, &sent, err, sizeof err);
    if (rc == ADMIN_USAGE)
        return ADMIN_USAGE;
    if (rc != ADMIN_OK) {
        if (sent)
            fprintf(stderr, "parley: %s to \"%s\"; the change may or may not have taken "
                    "effect: check 'parley admin members'\n", err, what);
        else
            fprintf(stderr, "parley: %s\n", err);
        return ADMIN_NONE_ANSWERED;
    }
    if (status == 200) {
        print_answer(body, json);
        free(body);
        return ADMIN_OK;
    }
    print_refusal_at(where, status, body);
    free(body);
    return ADMIN_REFUSED;
}

/* add-server ADDR | remove-server ADDR | replace-server OLD NEW, with
 * --timeout SECONDS and --json anywhere after the subcommand. */
static int membership_main(const char *config_path, int json, int argc, char **argv)
{
    const char *cmd = argv[0], *pos[2] = { NULL, NULL };
    int npos = 0, timeout_s = ADMIN_CHANGE_TIMEOUT_S;
    int want = strcmp(cmd, "members") == 0 ? 0 : strcmp(cmd, "replace-server") == 0 ? 2 : 1;
    char msg[200];
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return admin_usage(NULL);
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
            continue;
        }
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            v = argv[++i];
        else if (strncmp(argv[i], "--timeout=", 10) == 0)
            v = argv[i] + 10;
        if (v) {
            char *end;
            long t = strtol(v, &end, 10);
            if (!v[0] || *end || t < 1 || t > ADMIN_CHANGE_TIMEOUT_MAX_S)
                return admin_usage("--timeout must be 1-86400 seconds");
            timeout_s = (int)t;
            continue;
        }
        if (argv[i][0] == '-' || npos == want) {
            snprintf(msg, sizeof msg, "admin %s: unexpected argument \"%.100s\"", cmd, argv[i]);
            return admin_usage(msg);
        }
        pos[npos++] = argv[i];
    }
    if (npos != want) {
        snprintf(msg, sizeof msg, "admin %s takes %s", cmd,
                 want == 2 ? "OLD and NEW addresses (HOST:PORT[:PEER_PORT])"
                           : "one address HOST:PORT[:PEER_PORT]");
        return admin_usage(msg);
    }
    /* Checked here too, so a typo is a usage error, not a server's refusal. */
    for (int i = 0; i < npos; i++) {
        pl_server_conf s;
        char err[400];
        if (pl_members_parse_addr(pos[i], &s, err, sizeof err) != PL_OK) {
            snprintf(msg, sizeof msg, "admin %s: %.150s", cmd, err);
            return admin_usage(msg);
        }
        free(s.host);
    }
    pl_config *cfg = load_config(config_path);
    if (!cfg)
        return ADMIN_USAGE;
    int rc;
    if (want == 0) {
        rc = cmd_members(cfg, json);
    } else {
        char a[800], b[800], path[1800];
        url_encode(pos[0], a, sizeof a);
        if (want == 2) {
            url_encode(pos[1], b, sizeof b);
            snprintf(path, sizeof path, "/cluster/replace-server?old=%s&new=%s", a, b);
        } else {
            snprintf(path, sizeof path, "/cluster/%s?addr=%s", cmd, a);
        }
        char what[1800];
        snprintf(what, sizeof what, "%s %s%s%s", cmd, pos[0], want == 2 ? " " : "",
                 want == 2 ? pos[1] : "");
        rc = cmd_change(cfg, json, path, what, timeout_s);
    }
    pl_config_free(cfg);
    return rc;
}

int parley_admin_main(const char *config_path, int json, int argc, char **argv)
{
    if (argc < 1)
        return admin_usage("admin needs a subcommand: stats, metrics, members, add-server, "
                           "remove-server, replace-server, import-prototype, export or import");
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
    } else if (strcmp(argv[0], "members") == 0 || strcmp(argv[0], "add-server") == 0 ||
               strcmp(argv[0], "remove-server") == 0 || strcmp(argv[0], "replace-server") == 0) {
        return membership_main(config_path, json, argc, argv);
    } else if (strcmp(argv[0], "import-prototype") == 0) {
        return parley_admin_import_prototype(config_path, json, argc, argv);
    } else if (strcmp(argv[0], "export") == 0) {
        return parley_admin_export(config_path, json, argc, argv);
    } else if (strcmp(argv[0], "import") == 0) {
        return parley_admin_import_dump(config_path, json, argc, argv);
    } else if (strcmp(argv[0], "metrics") == 0) {
        if (argc != 2)
            return admin_usage("admin metrics takes one server ID");
        id = argv[1];
    } else {
        return admin_usage("unknown admin subcommand (expected stats, metrics, members, "
                           "add-server, remove-server, replace-server, import-prototype, export or "
                           "import)");
    }
    pl_config *cfg = load_config(config_path);
    if (!cfg)
        return ADMIN_USAGE;
    rc = id ? cmd_metrics(cfg, id) : cmd_stats(cfg, json, interval_ms);
    pl_config_free(cfg);
    return rc;
}
