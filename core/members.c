/*
 * core/members.c — the membership in force: copy, canonical JSON, checks,
 * and DATA_DIR/membership.json (members.h).
 *
 * The same bytes are a RECONFIG op's body, the file and a snapshot's header,
 * so the encoder is canonical (fixed key order, no spaces, integers only)
 * and the decoder is the one gate every copy passes: whatever it accepts is
 * a list the peer network and VR can use as is (1..PL_MEMBERS_MAX servers,
 * distinct endpoints, hosts that are safe to print in a log line or JSON).
 */
#include "members.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <parley/common.h>

#define MEMBERS_HOST_MAX 253u
/* The file is a few hundred bytes; anything far bigger is not ours. */
#define MEMBERS_FILE_MAX (64u * 1024u)
/* Largest integer a JSON number (an IEEE double) holds exactly. */
#define MEMBERS_OP_MAX 9007199254740991ull

static void set_err(char *err, size_t errlen, const char *fmt, ...) PL_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* Hosts quoted from bad input may hold any byte: keep one clean line. */
    for (char *c = err; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
}

/* A host name or address literal: printable in a log line and in JSON with
 * no escaping, and never mistaken for a port separator by describe()'s
 * brackets. IPv6 literals are stored without brackets ("::1"), "%" is for a
 * zone id ("fe80::1%eth0"). */
static int host_ok(const char *h)
{
    size_t n = h ? strlen(h) : 0;
    if (n == 0 || n > MEMBERS_HOST_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
            return 0;
    }
    return 1;
}

/* The checks decode() promises, shared by encode() (so encode never writes
 * what decode would refuse) and from_config(). */
static int check_list(const pl_server_conf *s, size_t n, char *err, size_t errlen)
{
    if (n == 0 || n > PL_MEMBERS_MAX) {
        set_err(err, errlen, "servers: must list 1-%d servers, not %zu", PL_MEMBERS_MAX, n);
        return PL_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!host_ok(s[i].host)) {
            set_err(err, errlen, "servers[%zu].host: must be 1-%u characters of "
                    "[A-Za-z0-9._:%%-]", i, MEMBERS_HOST_MAX);
            return PL_ERR_INVALID;
        }
        if (s[i].port == 0 || s[i].peer_port == 0) {
            set_err(err, errlen, "servers[%zu]: ports must be 1-65535", i);
            return PL_ERR_INVALID;
        }
        if (s[i].port == s[i].peer_port) {
            set_err(err, errlen, "servers[%zu].peer_port: must differ from port %u", i,
                    (unsigned)s[i].port);
            return PL_ERR_INVALID;
        }
        /* Two servers sharing an endpoint would fight over one socket, and
         * (host, peer_port) is a server's identity on the peer network. */
        for (size_t j = 0; j < i; j++) {
            if (strcmp(s[i].host, s[j].host) != 0)
                continue;
            if (s[i].port == s[j].port || s[i].port == s[j].peer_port ||
                s[i].peer_port == s[j].port || s[i].peer_port == s[j].peer_port) {
                set_err(err, errlen, "servers[%zu]: %s uses a port of servers[%zu] "
                        "(%u/%u vs %u/%u)", i, s[i].host, j, (unsigned)s[i].port,
                        (unsigned)s[i].peer_port, (unsigned)s[j].port, (unsigned)s[j].peer_port);
                return PL_ERR_INVALID;
            }
        }
    }
    return PL_OK;
}

void pl_members_clear(pl_members *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n && i < PL_MEMBERS_MAX; i++)
        free(m->servers[i].host);
    memset(m, 0, sizeof *m);
}

/* Fill m (overwritten, not freed first) with copies of servers[0..n). */
static int copy_servers(pl_members *m, const pl_server_conf *servers, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(servers[i].host) + 1;
        char *h = malloc(len);
        if (!h) {
            pl_members_clear(m);
            return PL_ERR_NOMEM;
        }
        memcpy(h, servers[i].host, len);
        m->servers[i] = servers[i];
        m->servers[i].host = h;
        m->n = i + 1;
    }
    return PL_OK;
}

int pl_members_from_config(pl_members *m, const pl_server_conf *servers, size_t n)
{
    memset(m, 0, sizeof *m);
    if (!servers || check_list(servers, n, NULL, 0) != PL_OK)
        return PL_ERR_INVALID;
    return copy_servers(m, servers, n);
}

int pl_members_copy(pl_members *dst, const pl_members *src)
{
    memset(dst, 0, sizeof *dst);
    if (src->n > PL_MEMBERS_MAX)
        return PL_ERR_INVALID;
    int rc = copy_servers(dst, src->servers, src->n);
    if (rc == PL_OK) {
        dst->epoch = src->epoch;
        dst->op = src->op;
    }
    return rc;
}

int pl_members_encode(const pl_members *m, char **out, size_t *len)
{
    *out = NULL;
    if (len)
        *len = 0;
    if (m->epoch > PL_MEMBERS_EPOCH_MAX || m->op > MEMBERS_OP_MAX ||
        check_list(m->servers, m->n, NULL, 0) != PL_OK)
        return PL_ERR_INVALID;
    /* Upper bound: fixed text plus, per server, the host and two ports. */
    size_t cap = 64 + 2 * 20;
    for (size_t i = 0; i < m->n; i++)
        cap += strlen(m->servers[i].host) + 48;
    char *buf = malloc(cap);
    if (!buf)
        return PL_ERR_NOMEM;
    /* No escaping: host_ok() admits no character JSON would escape. */
    size_t o = (size_t)snprintf(buf, cap, "{\"epoch\":%llu,\"op\":%llu,\"servers\":[",
                                (unsigned long long)m->epoch, (unsigned long long)m->op);
    for (size_t i = 0; i < m->n; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s{\"host\":\"%s\",\"port\":%u,\"peer_port\":%u}",
                              i ? "," : "", m->servers[i].host, (unsigned)m->servers[i].port,
                              (unsigned)m->servers[i].peer_port);
    o += (size_t)snprintf(buf + o, cap - o, "]}");
    *out = buf;
    if (len)
        *len = o;
    return PL_OK;
}

/* A JSON number that is an integer in [lo, hi]. The range test comes first
 * so the cast is defined; hi is at most 2^53, where doubles are exact. */
static int get_int(const cJSON *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= (double)lo && v->valuedouble <= (double)hi))
        return 0;
    uint64_t u = (uint64_t)v->valuedouble;
    if ((double)u != v->valuedouble)
        return 0;
    *out = u;
    return 1;
}

/* Every member of obj is one of known[], and none appears twice (cJSON keeps
 * duplicates; a duplicate would make the text mean whichever copy we read). */
static int keys_ok(const cJSON *obj, const char *const *known, const char *where, char *err,
                   size_t errlen)
{
    for (const cJSON *k = obj->child; k; k = k->next) {
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            if (k->string && strcmp(k->string, known[i]) == 0)
                ok = 1;
        if (!ok) {
            set_err(err, errlen, "%s%.64s: unknown key", where, k->string ? k->string : "");
            return 0;
        }
        for (const cJSON *o = obj->child; o != k; o = o->next)
            if (strcmp(o->string, k->string) == 0) {
                set_err(err, errlen, "%s%s: duplicate key", where, k->string);
                return 0;
            }
    }
    return 1;
}

int pl_members_decode(const uint8_t *buf, size_t len, pl_members *m, char *err, size_t errlen)
{
    static const char *const top_keys[] = { "epoch", "op", "servers", NULL };
    static const char *const srv_keys[] = { "host", "port", "peer_port", NULL };
    const char *end = NULL;
    char where[32];
    uint64_t u;
    cJSON *root = NULL;

    memset(m, 0, sizeof *m);
    if (!buf || len == 0) {
        set_err(err, errlen, "empty membership");
        return PL_ERR_CORRUPT;
    }
    if (len > MEMBERS_FILE_MAX) {
        set_err(err, errlen, "membership of %zu bytes is over the %u-byte limit", len,
                MEMBERS_FILE_MAX);
        return PL_ERR_CORRUPT;
    }
    /* cJSON stops at a NUL inside the buffer; bytes after it are refused
     * below, like any other trailing garbage. */
    root = cJSON_ParseWithLengthOpts((const char *)buf, len, &end, 0);
    if (!root) {
        size_t off = end && end >= (const char *)buf ? (size_t)(end - (const char *)buf) : 0;
        set_err(err, errlen, "not JSON (near byte %zu)", off);
        goto fail;
    }
    for (const char *p = end; p && p < (const char *)buf + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            set_err(err, errlen, "trailing bytes after the JSON object (at byte %zu)",
                    (size_t)(p - (const char *)buf));
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        set_err(err, errlen, "must be a JSON object {\"epoch\", \"op\", \"servers\"}");
        goto fail;
    }
    if (!keys_ok(root, top_keys, "", err, errlen))
        goto fail;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "epoch");
    if (!get_int(v, 0, PL_MEMBERS_EPOCH_MAX, &m->epoch)) {
        set_err(err, errlen, "epoch: %s an integer 0-%llu", v ? "must be" : "missing:",
                (unsigned long long)PL_MEMBERS_EPOCH_MAX);
        goto fail;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "op");
    if (!get_int(v, 0, MEMBERS_OP_MAX, &m->op)) {
        set_err(err, errlen, "op: %s an integer 0-%llu", v ? "must be" : "missing:",
                (unsigned long long)MEMBERS_OP_MAX);
        goto fail;
    }
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "servers");
    if (!cJSON_IsArray(arr)) {
        set_err(err, errlen, "servers: %s an array of {\"host\", \"port\", \"peer_port\"}",
                arr ? "must be" : "missing:");
        goto fail;
    }
    size_t n = 0;
    for (const cJSON *e = arr->child; e; e = e->next) {
        if (n == PL_MEMBERS_MAX) {
            set_err(err, errlen, "servers: more than %d servers", PL_MEMBERS_MAX);
            goto fail;
        }
        snprintf(where, sizeof where, "servers[%zu].", n);
        if (!cJSON_IsObject(e)) {
            set_err(err, errlen, "servers[%zu]: must be an object", n);
            goto fail;
        }
        if (!keys_ok(e, srv_keys, where, err, errlen))
            goto fail;
        pl_server_conf *s = &m->servers[n];
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "host");
        if (!cJSON_IsString(h) || !host_ok(h->valuestring)) {
            set_err(err, errlen, "servers[%zu].host: %s 1-%u characters of [A-Za-z0-9._:%%-]",
                    n, h ? "must be" : "missing:", MEMBERS_HOST_MAX);
            goto fail;
        }
        size_t hl = strlen(h->valuestring) + 1;
        if (!(s->host = malloc(hl))) {
            set_err(err, errlen, "out of memory");
            cJSON_Delete(root);
            pl_members_clear(m);
            return PL_ERR_NOMEM;
        }
        memcpy(s->host, h->valuestring, hl);
        m->n = ++n;
        static const char *const ports[2] = { "port", "peer_port" };
        for (int p = 0; p < 2; p++) {
            v = cJSON_GetObjectItemCaseSensitive(e, ports[p]);
            if (!get_int(v, 1, 65535, &u)) {
                set_err(err, errlen, "servers[%zu].%s: %s an integer 1-65535", n - 1, ports[p],
                        v ? "must be" : "missing:");
                goto fail;
            }
            if (p == 0)
                s->port = (uint16_t)u;
            else
                s->peer_port = (uint16_t)u;
        }
    }
    if (check_list(m->servers, m->n, err, errlen) != PL_OK)
        goto fail;
    cJSON_Delete(root);
    return PL_OK;
fail:
    cJSON_Delete(root);
    pl_members_clear(m);
    return PL_ERR_CORRUPT;
}

int pl_members_find(const pl_members *m, const char *host, uint16_t peer_port)
{
    if (!host)
        return -1;
    for (size_t i = 0; i < m->n && i < PL_MEMBERS_MAX; i++)
        if (m->servers[i].peer_port == peer_port && m->servers[i].host &&
            strcmp(m->servers[i].host, host) == 0)
            return (int)i;
    return -1;
}

int pl_members_same(const pl_members *a, const pl_members *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n && i < PL_MEMBERS_MAX; i++) {
        const pl_server_conf *x = &a->servers[i], *y = &b->servers[i];
        if (x->port != y->port || x->peer_port != y->peer_port || !x->host || !y->host ||
            strcmp(x->host, y->host) != 0)
            return 0;
    }
    return 1;
}

const char *pl_members_describe(const pl_members *m, char *buf, size_t len)
{
    size_t o = 0;
    if (!buf || len == 0)
        return "";
    buf[0] = '\0';
    for (size_t i = 0; i < m->n && i < PL_MEMBERS_MAX && o < len; i++) {
        const char *h = m->servers[i].host ? m->servers[i].host : "?";
        int w = snprintf(buf + o, len - o, strchr(h, ':') ? "%s[%s]:%u" : "%s%s:%u",
                         i ? ", " : "", h, (unsigned)m->servers[i].port);
        if (w < 0)
            break;
        o += (size_t)w;
    }
    if (o < len)
        snprintf(buf + o, len - o, " (epoch %llu)", (unsigned long long)m->epoch);
    return buf;
}

/* ------------------------------------------------------------ the file */

static char *join_path(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    char *p = malloc(dl + nl + 2);
    if (p)
        snprintf(p, dl + nl + 2, "%s/%s", dir, name);
    return p;
}

int pl_members_load(const char *data_dir, pl_members *m, char *err, size_t errlen)
{
    int rc = PL_ERR_IO, fd = -1;
    char *path = join_path(data_dir, PL_MEMBERS_FILE), *buf = NULL;
    char why[256];

    memset(m, 0, sizeof *m);
    if (!path) {
        set_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            rc = PL_ERR_NOT_FOUND;
            set_err(err, errlen, "%s: no such file (epoch 0: the config file's servers)", path);
        } else {
            set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        }
        goto done;
    }
    /* One byte more than the limit tells "too big" from "exactly the limit". */
    buf = malloc(MEMBERS_FILE_MAX + 1);
    if (!buf) {
        rc = PL_ERR_NOMEM;
        set_err(err, errlen, "out of memory");
        goto done;
    }
    size_t len = 0;
    while (len < MEMBERS_FILE_MAX + 1) {
        ssize_t r = read(fd, buf + len, MEMBERS_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > MEMBERS_FILE_MAX) {
        rc = PL_ERR_CORRUPT;
        set_err(err, errlen, "%s: larger than %u bytes", path, MEMBERS_FILE_MAX);
        goto done;
    }
    why[0] = '\0';
    rc = pl_members_decode((const uint8_t *)buf, len, m, why, sizeof why);
    if (rc != PL_OK)
        set_err(err, errlen, "%s: %s", path, why);
done:
    if (fd >= 0)
        close(fd);
    free(buf);
    free(path);
    return rc;
}

/* write() all of it, through EINTR and short writes. */
static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int pl_members_save(const char *data_dir, const pl_members *m, char *err, size_t errlen)
{
    int rc, fd = -1, dfd = -1;
    char *text = NULL, *path = join_path(data_dir, PL_MEMBERS_FILE),
         *tmp = join_path(data_dir, PL_MEMBERS_FILE ".tmp");
    size_t len = 0;

    if (!path || !tmp) {
        rc = PL_ERR_NOMEM;
        set_err(err, errlen, "out of memory");
        goto done;
    }
    if ((rc = pl_members_encode(m, &text, &len)) != PL_OK) {
        set_err(err, errlen, "%s: %s", path, rc == PL_ERR_NOMEM ? "out of memory"
                : "refusing to write an invalid membership");
        goto done;
    }
    rc = PL_ERR_IO;
    /* Temp file, fsync, rename, fsync of the directory: a crash leaves the
     * old file or the new one, never a torn one, and once this returns the
     * new one survives power loss — the replica may act in the new epoch. */
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    /* A trailing newline for operators who cat the file; decode skips it. */
    text[len] = '\n';
    if (write_all(fd, text, len + 1) != 0 || fsync(fd) != 0) {
        set_err(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
        goto done;
    }
    if (close(fd) != 0) {
        fd = -1;
        set_err(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
        goto done;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        set_err(err, errlen, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        goto done;
    }
    dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        set_err(err, errlen, "%s: cannot sync the directory: %s", data_dir, strerror(errno));
        goto done;
    }
    rc = PL_OK;
done:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    if (dfd >= 0)
        close(dfd);
    free(text);
    free(path);
    free(tmp);
    return rc;
}

int pl_members_parse_addr(const char *s, pl_server_conf *out, char *err, size_t errlen)
{
    char host[MEMBERS_HOST_MAX + 1];
    const char *rest;
    unsigned long ports[2] = { 0, 0 };
    int nports = 0;

    memset(out, 0, sizeof *out);
    if (!s || !*s) {
        set_err(err, errlen, "empty address (expected HOST:PORT[:PEER_PORT])");
        return PL_ERR_INVALID;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1) {
            set_err(err, errlen, "%.300s: an IPv6 address in brackets needs a closing ]", s);
            return PL_ERR_INVALID;
        }
        size_t hl = (size_t)(close - s - 1);
        if (hl > MEMBERS_HOST_MAX) {
            set_err(err, errlen, "host longer than %u characters", MEMBERS_HOST_MAX);
            return PL_ERR_INVALID;
        }
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        rest = close + 1;
    } else {
        size_t hl = strcspn(s, ":");
        const char *c2 = s[hl] ? strchr(s + hl + 1, ':') : NULL;
        if (c2 && strchr(c2 + 1, ':')) {
            set_err(err, errlen, "%.300s: an IPv6 address goes in brackets, e.g. [::1]:8100", s);
            return PL_ERR_INVALID;
        }
        if (hl > MEMBERS_HOST_MAX) {
            set_err(err, errlen, "host longer than %u characters", MEMBERS_HOST_MAX);
            return PL_ERR_INVALID;
        }
        memcpy(host, s, hl);
        host[hl] = '\0';
        rest = s + hl;
    }
    if (!host_ok(host)) {
        set_err(err, errlen, "%.300s: host must be 1-%u characters of [A-Za-z0-9._:%%-]", s,
                MEMBERS_HOST_MAX);
        return PL_ERR_INVALID;
    }
    while (*rest) {
        if (*rest != ':' || nports == 2) {
            set_err(err, errlen, "%.300s: expected HOST:PORT[:PEER_PORT]", s);
            return PL_ERR_INVALID;
        }
        rest++;
        char *end;
        errno = 0;
        unsigned long p = *rest >= '0' && *rest <= '9' ? strtoul(rest, &end, 10) : 0;
        if (p < 1 || p > 65535 || errno) {
            set_err(err, errlen, "%.300s: %s must be an integer 1-65535", s,
                    nports ? "peer port" : "port");
            return PL_ERR_INVALID;
        }
        ports[nports++] = p;
        rest = end;
    }
    if (nports == 0) {
        set_err(err, errlen, "%.300s: missing :PORT (expected HOST:PORT[:PEER_PORT])", s);
        return PL_ERR_INVALID;
    }
    if (nports == 1) {
        if (ports[0] + PL_PEER_PORT_OFFSET > 65535) {
            set_err(err, errlen, "%.300s: the default peer port %lu+%d is above 65535; give "
                    "HOST:PORT:PEER_PORT", s, ports[0], PL_PEER_PORT_OFFSET);
            return PL_ERR_INVALID;
        }
        ports[1] = ports[0] + PL_PEER_PORT_OFFSET;
    }
    if (ports[0] == ports[1]) {
        set_err(err, errlen, "%.300s: the peer port must differ from the port", s);
        return PL_ERR_INVALID;
    }
    size_t hl = strlen(host) + 1;
    if (!(out->host = malloc(hl))) {
        set_err(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    memcpy(out->host, host, hl);
    out->port = (uint16_t)ports[0];
    out->peer_port = (uint16_t)ports[1];
    return PL_OK;
}
