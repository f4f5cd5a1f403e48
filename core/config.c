/*
 * core/config.c — loading and validating the configuration file (config.h).
 *
 * Every value is checked here, once, so the rest of the core can trust a
 * pl_config. Unknown keys are errors rather than warnings: in a config file
 * they are nearly always typos ("stroe", "peer-port"), and a silently
 * ignored typo means a server running with a default the operator did not
 * want. Each error is one line "FILE: KEY: REASON".
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
/* Only the compile-time Argon2id limits are used, so no link dependency. */
#include <sodium/crypto_pwhash.h>

#include "log.h"
#include "vr.h"

#define PL_CONFIG_FILE_MAX (1024u * 1024u)
#define PL_HOST_MAX 253u
#define PL_FRAME_MIN 1024u
#define PL_FRAME_LIMIT (1024u * 1024u * 1024u)
#define PL_HASH_WORKERS_MAX 64u
/* group_commit: at most 100 ms of delay (an election timeout is 1 s by
 * default) and 64 MiB of waiting bytes. */
#define PL_SYNC_DELAY_US_MAX 100000u
#define PL_SYNC_DELAY_BYTES_MAX (64u << 20)

/* Error context: the file name for every message, and every error found so
 * far. Parsing goes on after a mistake, so one run of --check-config lists
 * all of them, one "FILE: KEY: REASON" line each (separated by '\n' in
 * err): an operator fixing a file should not have to run the check once per
 * mistake. Lines that do not fit in err are counted and summed up at the
 * end instead of being cut in the middle. */
typedef struct cfg_ctx {
    const char *file;
    char *err;
    size_t errlen;
    size_t used;              /* bytes of err holding whole lines */
    unsigned n;               /* errors found */
    unsigned dropped;         /* errors that did not fit in err */
} cfg_ctx;

static void cfg_err(cfg_ctx *x, const char *key, const char *fmt, ...) PL_PRINTF(3, 4);

static void cfg_err(cfg_ctx *x, const char *key, const char *fmt, ...)
{
    char line[1024];
    x->n++;
    int n = snprintf(line, sizeof line, "%s: %s: ", x->file, key);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* Keys and values quoted from the file may hold any byte ("a\nb" is a
     * valid JSON key): keep the promised single line, and keep control
     * characters out of logs and terminals. */
    for (char *c = line; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    if (!x->err || x->errlen == 0)
        return;
    size_t len = strlen(line), sep = x->used ? 1 : 0;
    if (x->used + sep + len < x->errlen) {
        if (sep)
            x->err[x->used++] = '\n';
        memcpy(x->err + x->used, line, len + 1);
        x->used += len;
    } else if (x->used == 0) {
        /* Even the first line does not fit: a cut line beats none. */
        snprintf(x->err, x->errlen, "%s", line);
        x->used = strlen(x->err);
    } else {
        x->dropped++;
    }
}

/* After parsing: say how many errors err could not hold. */
static void cfg_finish(cfg_ctx *x)
{
    if (!x->dropped || !x->err || x->errlen == 0)
        return;
    char note[160];
    for (;;) {
        int n = snprintf(note, sizeof note, "%s%s: (more): %u more error%s not shown",
                         x->used ? "\n" : "", x->file, x->dropped, x->dropped == 1 ? "" : "s");
        if (n < 0)
            return;
        if (x->used + (size_t)n < x->errlen || x->used == 0) {
            snprintf(x->err + x->used, x->errlen - x->used, "%s", note);
            x->used += strlen(x->err + x->used);
            return;
        }
        /* Make room: the last whole line goes into the count. */
        char *nl = memrchr(x->err, '\n', x->used);
        x->used = nl ? (size_t)(nl - x->err) : 0;
        x->err[x->used] = '\0';
        x->dropped++;
    }
}

/* Secrets should not linger in freed memory; no libsodium here (the client
 * links this file too), so a volatile wipe. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    for (size_t i = 0; i < n; i++)
        v[i] = 0;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *r = malloc(n);
    if (r)
        memcpy(r, s, n);
    return r;
}

/* A JSON number that is an integer within [lo, hi]. Doubles represent every
 * integer up to 2^53 exactly, far above any limit checked here. */
static int get_uint(cfg_ctx *x, const cJSON *v, const char *key, uint64_t lo,
                    uint64_t hi, const char *what, uint64_t *out)
{
    /* Range first, so the cast below is defined; then integrality without
     * pulling in libm for floor(). */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= (double)lo && v->valuedouble <= (double)hi) ||
        (double)(uint64_t)v->valuedouble != v->valuedouble) {
        cfg_err(x, key, "must be an integer %llu-%llu%s", (unsigned long long)lo,
                (unsigned long long)hi, what ? what : "");
        return PL_ERR_CONFIG;
    }
    *out = (uint64_t)v->valuedouble;
    return PL_OK;
}

static int get_str(cfg_ctx *x, const cJSON *v, const char *key, size_t max, char **out)
{
    if (!cJSON_IsString(v) || !v->valuestring || !v->valuestring[0]) {
        cfg_err(x, key, "must be a non-empty string");
        return PL_ERR_CONFIG;
    }
    if (strlen(v->valuestring) > max) {
        cfg_err(x, key, "longer than %zu characters", max);
        return PL_ERR_CONFIG;
    }
    char *s = xstrdup(v->valuestring);
    if (!s) {
        cfg_err(x, key, "out of memory");
        return PL_ERR_NOMEM;
    }
    free(*out);
    *out = s;
    return PL_OK;
}

/* cJSON keeps every member of an object, duplicates included; a duplicate
 * key would make the file mean whichever copy we happened to read. */
static int check_keys(cfg_ctx *x, const cJSON *obj, const char *prefix,
                      const char *const *known)
{
    char key[128];
    int rc = PL_OK;
    for (const cJSON *m = obj->child; m; m = m->next) {
        snprintf(key, sizeof key, "%s%s", prefix, m->string ? m->string : "");
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            if (m->string && strcmp(m->string, known[i]) == 0)
                ok = 1;
        if (!ok) {
            cfg_err(x, key, "unknown key");
            rc = PL_ERR_CONFIG;
            continue;
        }
        for (const cJSON *o = obj->child; o != m; o = o->next)
            if (strcmp(o->string, m->string) == 0) {
                cfg_err(x, key, "duplicate key");
                rc = PL_ERR_CONFIG;
                break;
            }
    }
    return rc;
}

/* Errors are collected, not returned at the first one: a parser notes a
 * failed key in *bad and goes on with the next. Only running out of memory
 * stops everything. */
#define NOTE(bad, expr)                                   \
    do {                                                  \
        int note_rc_ = (expr);                            \
        if (note_rc_ == PL_ERR_NOMEM)                     \
            return note_rc_;                              \
        if (note_rc_ != PL_OK)                            \
            (bad) = 1;                                    \
    } while (0)

static int set_plugin(pl_plugin_conf *p, const char *name, const char *json)
{
    char *n = xstrdup(name), *j = xstrdup(json);
    if (!n || !j) {
        free(n);
        free(j);
        return PL_ERR_NOMEM;
    }
    free(p->name);
    free(p->options_json);
    p->name = n;
    p->options_json = j;
    return PL_OK;
}

/* A plugin is named by a string ("tcp", "/opt/x.so") or by an object with a
 * string "name" and the plugin's own options, which only the plugin checks. */
static int parse_plugin(cfg_ctx *x, const cJSON *v, const char *key, pl_plugin_conf *p)
{
    char k[64];
    int rc = PL_ERR_CONFIG;
    char *text = NULL;
    cJSON *obj = NULL;

    if (cJSON_IsString(v)) {
        if (!v->valuestring || !v->valuestring[0]) {
            cfg_err(x, key, "must be a plugin name or an object with a \"name\"");
            return PL_ERR_CONFIG;
        }
        /* Built with cJSON so a path with quotes or backslashes stays valid JSON. */
        obj = cJSON_CreateObject();
        if (!obj || !cJSON_AddStringToObject(obj, "name", v->valuestring))
            goto nomem;
        text = cJSON_PrintUnformatted(obj);
        if (!text)
            goto nomem;
        rc = set_plugin(p, v->valuestring, text);
        if (rc != PL_OK)
            goto nomem;
        goto done;
    }
    if (!cJSON_IsObject(v)) {
        cfg_err(x, key, "must be a plugin name or an object with a \"name\"");
        return PL_ERR_CONFIG;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
    snprintf(k, sizeof k, "%s.name", key);
    if (!name) {
        cfg_err(x, k, "missing (the plugin's short name or path)");
        return PL_ERR_CONFIG;
    }
    if (!cJSON_IsString(name) || !name->valuestring || !name->valuestring[0]) {
        cfg_err(x, k, "must be a non-empty string");
        return PL_ERR_CONFIG;
    }
    for (const cJSON *m = v->child; m; m = m->next)
        for (const cJSON *o = v->child; o != m; o = o->next)
            if (strcmp(o->string, m->string) == 0) {
                snprintf(k, sizeof k, "%s.%s", key, m->string);
                cfg_err(x, k, "duplicate key");
                return PL_ERR_CONFIG;
            }
    text = cJSON_PrintUnformatted(v);
    if (!text)
        goto nomem;
    rc = set_plugin(p, name->valuestring, text);
    if (rc != PL_OK)
        goto nomem;
    goto done;
nomem:
    cfg_err(x, key, "out of memory");
    rc = PL_ERR_NOMEM;
done:
    cJSON_free(text);
    cJSON_Delete(obj);
    return rc;
}

static int parse_servers(cfg_ctx *x, const cJSON *v, pl_config *c)
{
    static const char *const known[] = { "host", "port", "peer_port", "admin_port", NULL };
    char key[64];
    int bad = 0;

    if (!cJSON_IsArray(v)) {
        cfg_err(x, "servers", "must be an array of {\"host\", \"port\"} objects");
        return PL_ERR_CONFIG;
    }
    int n = cJSON_GetArraySize(v);
    if (n < 1) {
        cfg_err(x, "servers", "must list at least one server");
        return PL_ERR_CONFIG;
    }
    if (n > PL_VR_MAX_REPLICAS) {
        cfg_err(x, "servers", "at most %d servers are supported", PL_VR_MAX_REPLICAS);
        return PL_ERR_CONFIG;
    }
    pl_server_conf *s = calloc((size_t)n, sizeof *s);
    uint8_t *ok = calloc((size_t)n, 1);     /* host, port and peer_port all parsed */
    if (!s || !ok) {
        free(s);
        free(ok);
        cfg_err(x, "servers", "out of memory");
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < c->n_servers; i++)
        free(c->servers[i].host);
    free(c->servers);
    c->servers = s;
    c->n_servers = (size_t)n;

    int i = 0, rc = PL_OK;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        int this_bad = 0;
        uint64_t u;
        snprintf(key, sizeof key, "servers[%d]", i);
        if (!cJSON_IsObject(e)) {
            cfg_err(x, key, "must be an object with \"host\" and \"port\"");
            bad = 1;
            continue;
        }
        snprintf(key, sizeof key, "servers[%d].", i);
        if ((rc = check_keys(x, e, key, known)) != PL_OK)
            bad = 1;   /* the other keys of this entry are still checked */

        const cJSON *host = cJSON_GetObjectItemCaseSensitive(e, "host");
        snprintf(key, sizeof key, "servers[%d].host", i);
        if (!host) {
            cfg_err(x, key, "missing");
            this_bad = 1;
        } else if ((rc = get_str(x, host, key, PL_HOST_MAX, &s[i].host)) != PL_OK) {
            if (rc == PL_ERR_NOMEM)
                goto out;
            this_bad = 1;
        }

        const cJSON *port = cJSON_GetObjectItemCaseSensitive(e, "port");
        int port_ok = 0;
        snprintf(key, sizeof key, "servers[%d].port", i);
        if (!port) {
            cfg_err(x, key, "missing");
            this_bad = 1;
        } else if (get_uint(x, port, key, 1, 65535, NULL, &u) != PL_OK) {
            this_bad = 1;
        } else {
            s[i].port = (uint16_t)u;
            port_ok = 1;
        }

        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(e, "peer_port");
        snprintf(key, sizeof key, "servers[%d].peer_port", i);
        if (pp) {
            if (get_uint(x, pp, key, 1, 65535, NULL, &u) != PL_OK)
                this_bad = 1;
            else
                s[i].peer_port = (uint16_t)u;
        } else if (!port_ok) {
            /* no default to derive from; the port's own error says why */
        } else if (s[i].port + PL_PEER_PORT_OFFSET > 65535) {
            cfg_err(x, key, "default port+%d = %d is above 65535; set peer_port",
                    PL_PEER_PORT_OFFSET, s[i].port + PL_PEER_PORT_OFFSET);
            this_bad = 1;
        } else {
            s[i].peer_port = (uint16_t)(s[i].port + PL_PEER_PORT_OFFSET);
        }
        if (port_ok && s[i].peer_port && s[i].peer_port == s[i].port) {
            cfg_err(x, key, "must differ from port %u", (unsigned)s[i].port);
            this_bad = 1;
        }

        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(e, "admin_port");
        snprintf(key, sizeof key, "servers[%d].admin_port", i);
        if (ap) {
            if (get_uint(x, ap, key, 1, 65535, NULL, &u) != PL_OK)
                this_bad = 1;
            else
                s[i].admin_port = (uint16_t)u;
        }
        if (this_bad)
            bad = 1;
        else
            ok[i] = 1;
    }

    /* Every client and peer endpoint must be distinct, or two servers (or a
     * server's two listeners) would fight over one socket. Only entries
     * that parsed are compared: a broken one has its own error already. */
    for (i = 0; i < n; i++) {
        for (int j = 0; j < i && ok[i]; j++) {
            if (!ok[j] || strcmp(s[i].host, s[j].host) != 0)
                continue;
            uint16_t mine[2] = { s[i].port, s[i].peer_port };
            uint16_t theirs[2] = { s[j].port, s[j].peer_port };
            static const char *const names[2] = { "port", "peer_port" };
            /* One error per pair: a copied entry clashes on both ports,
             * and the second line would only repeat the first. */
            int clash = 0;
            for (int a = 0; a < 2 && !clash; a++)
                for (int b = 0; b < 2 && !clash; b++)
                    if (mine[a] == theirs[b]) {
                        snprintf(key, sizeof key, "servers[%d].%s", i, names[a]);
                        cfg_err(x, key, "%s:%u is already used by servers[%d].%s",
                                s[i].host, (unsigned)mine[a], j, names[b]);
                        clash = bad = 1;
                    }
        }
    }
    rc = bad ? PL_ERR_CONFIG : PL_OK;
out:
    free(ok);
    return rc;
}

static int get_tls_path(cfg_ctx *x, const cJSON *v, const char *key, char **out);

/* An operator token travels in an HTTP header ("Authorization: Bearer
 * TOKEN"), so it must be visible ASCII without spaces; the lower bound keeps
 * it out of reach of guessing over the network. */
static int token_ok(cfg_ctx *x, const char *key, const char *file, const char *t, size_t n)
{
    if (n < PL_ADMIN_TOKEN_MIN || n > PL_ADMIN_TOKEN_MAX) {
        cfg_err(x, key, "%s%s%s %zu bytes; the token must be %u-%u bytes (e.g. 32 random hex "
                "digits)", file ? file : "", file ? " holds" : "is", n > PL_ADMIN_TOKEN_MAX
                ? " more than" : "", n > PL_ADMIN_TOKEN_MAX ? (size_t)PL_ADMIN_TOKEN_MAX : n,
                PL_ADMIN_TOKEN_MIN, PL_ADMIN_TOKEN_MAX);
        return PL_ERR_CONFIG;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) {
            cfg_err(x, key, "%s%s a byte that is not printable ASCII (the token may not hold "
                    "spaces or control characters)", file ? file : "", file ? " holds" : "has");
            return PL_ERR_CONFIG;
        }
    return PL_OK;
}

/* admin.token_file, read now (unlike cluster_secret_file) because both
 * parleyd and `parley admin` need the token and both load this file. */
static int read_token_file(cfg_ctx *x, const char *path, char **out)
{
    char buf[PL_ADMIN_TOKEN_MAX + 3];
    size_t n = 0;
    int rc = PL_ERR_CONFIG;
    /* O_NONBLOCK: a FIFO or device named here must not hang the load. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        cfg_err(x, "admin.token_file", "cannot open %s: %s", path, strerror(errno));
        return PL_ERR_CONFIG;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        cfg_err(x, "admin.token_file", "%s is not a regular file", path);
        goto done;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        pl_log(PL_LOG_WARN, "%s: admin.token_file: %s is accessible by group or others "
               "(mode %03o); anyone who reads it can change the cluster's membership: "
               "chmod 600 it", x->file, path, (unsigned)(st.st_mode & 0777));
    while (n < sizeof buf) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            cfg_err(x, "admin.token_file", "cannot read %s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    /* "echo TOKEN > file" leaves a newline that is not part of the token. */
    if (n && buf[n - 1] == '\n')
        n--;
    if (n && buf[n - 1] == '\r')
        n--;
    if ((rc = token_ok(x, "admin.token_file", path, buf, n)) != PL_OK)
        goto done;
    if (!(*out = malloc(n + 1))) {
        cfg_err(x, "admin.token_file", "out of memory");
        rc = PL_ERR_NOMEM;
        goto done;
    }
    memcpy(*out, buf, n);
    (*out)[n] = '\0';
    rc = PL_OK;
done:
    close(fd);
    wipe(buf, sizeof buf);
    return rc;
}

/* "admin": {"bind", "port_offset", "token", "token_file"}; applied after
 * the servers are parsed so port_offset can fill in the admin_port of every
 * server without one. */
static int parse_admin(cfg_ctx *x, const cJSON *v, pl_config *c, int servers_ok)
{
    static const char *const known[] = { "bind", "port_offset", "token", "token_file", NULL };
    char key[64];
    uint64_t off = 0;
    int bad = 0;

    if (!cJSON_IsObject(v)) {
        cfg_err(x, "admin", "must be an object {\"bind\": ADDRESS, \"port_offset\": N}");
        return PL_ERR_CONFIG;
    }
    NOTE(bad, check_keys(x, v, "admin.", known));
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(v, "bind");
    if (b)
        NOTE(bad, get_str(x, b, "admin.bind", PL_HOST_MAX, &c->admin_bind));
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(v, "port_offset");
    if (o && get_uint(x, o, "admin.port_offset", 1, 65534, NULL, &off) != PL_OK) {
        bad = 1;
        off = 0;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "token");
    const cJSON *tf = cJSON_GetObjectItemCaseSensitive(v, "token_file");
    if (t && tf) {
        cfg_err(x, "admin.token_file", "give admin.token or admin.token_file, not both");
        bad = 1;
    } else if (t) {
        if (!cJSON_IsString(t) || !t->valuestring) {
            cfg_err(x, "admin.token", "must be a string of %u-%u bytes", PL_ADMIN_TOKEN_MIN,
                    PL_ADMIN_TOKEN_MAX);
            bad = 1;
        } else if (token_ok(x, "admin.token", NULL, t->valuestring,
                            strlen(t->valuestring)) != PL_OK) {
            bad = 1;
        } else if (!(c->admin_token = xstrdup(t->valuestring))) {
            cfg_err(x, "admin.token", "out of memory");
            return PL_ERR_NOMEM;
        }
    } else if (tf) {
        char *path = NULL;
        /* Relative to the config file, like the tls paths, so `parley -c`
         * finds it from any working directory. */
        int rc = get_tls_path(x, tf, "admin.token_file", &path);
        if (rc == PL_OK)
            rc = read_token_file(x, path, &c->admin_token);
        free(path);
        NOTE(bad, rc);
    }
    /* The offset fills in servers' admin ports: only from ports that parsed. */
    for (size_t i = 0; off && servers_ok && i < c->n_servers; i++) {
        if (c->servers[i].admin_port)
            continue;
        if (c->servers[i].port + off > 65535) {
            snprintf(key, sizeof key, "servers[%zu].admin_port", i);
            cfg_err(x, key, "default port+%llu = %llu is above 65535; set admin_port",
                    (unsigned long long)off, (unsigned long long)(c->servers[i].port + off));
            bad = 1;
            continue;
        }
        c->servers[i].admin_port = (uint16_t)(c->servers[i].port + off);
    }
    return bad ? PL_ERR_CONFIG : PL_OK;
}

/* An admin port must not collide with any listener on the same host. */
static int check_admin_ports(cfg_ctx *x, const pl_config *c)
{
    char key[64];
    int bad = 0;
    for (size_t i = 0; i < c->n_servers; i++) {
        uint16_t a = c->servers[i].admin_port;
        if (!a)
            continue;
        for (size_t j = 0; j < c->n_servers; j++) {
            const pl_server_conf *o = &c->servers[j];
            if (strcmp(c->servers[i].host, o->host) != 0)
                continue;
            const char *what = a == o->port ? "port" : a == o->peer_port ? "peer_port"
                             : (j < i && a == o->admin_port) ? "admin_port" : NULL;
            if (what) {
                snprintf(key, sizeof key, "servers[%zu].admin_port", i);
                cfg_err(x, key, "%s:%u is already used by servers[%zu].%s",
                        c->servers[i].host, (unsigned)a, j, what);
                bad = 1;
                break;
            }
        }
    }
    return bad ? PL_ERR_CONFIG : PL_OK;
}

static int parse_pwhash(cfg_ctx *x, const cJSON *v, pl_config *c)
{
    static const char *const known[] = { "opslimit", "memlimit", NULL };
    if (!cJSON_IsObject(v)) {
        cfg_err(x, "password_hash", "must be an object {\"opslimit\": N, \"memlimit\": BYTES}");
        return PL_ERR_CONFIG;
    }
    int bad = 0;
    NOTE(bad, check_keys(x, v, "password_hash.", known));
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(v, "opslimit");
    if (o)
        NOTE(bad, get_uint(x, o, "password_hash.opslimit", crypto_pwhash_OPSLIMIT_MIN,
                           crypto_pwhash_OPSLIMIT_MAX, NULL, &c->pwhash_opslimit));
    /* memlimit is capped at 4 GiB: beyond that one login would hold more
     * memory than any sane server has per worker. */
    uint64_t memmax = (uint64_t)4 * 1024 * 1024 * 1024;
    if ((uint64_t)crypto_pwhash_MEMLIMIT_MAX < memmax)
        memmax = crypto_pwhash_MEMLIMIT_MAX;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(v, "memlimit");
    if (m)
        NOTE(bad, get_uint(x, m, "password_hash.memlimit", crypto_pwhash_MEMLIMIT_MIN,
                           memmax, " (bytes)", &c->pwhash_memlimit));
    return bad ? PL_ERR_CONFIG : PL_OK;
}

/* Limits whose default follows other keys; 0 in the struct means "not set". */
static void limits_derive(pl_config *c)
{
    pl_limits *l = &c->limits;
    if (!l->password_checks_queued)
        l->password_checks_queued = c->hash_workers * PL_LIMITS_DEFAULT_CHECKS_PER_WORKER;
    if (!l->request_burst)
        l->request_burst = l->requests_per_second > UINT32_MAX / 2 ? UINT32_MAX
                           : l->requests_per_second ? 2 * l->requests_per_second : 1;
}

/* "limits": every client-facing limit, each with a key and a range. A
 * password_checks_queued or request_burst left out is derived after the
 * whole file is read (from hash_workers and requests_per_second). */
static int parse_limits(cfg_ctx *x, const cJSON *v, pl_config *c)
{
    static const char *const known[] = {
        "conns_per_address", "requests_per_second", "request_burst",
        "password_checks_queued", "login_failures_per_user",
        "login_failures_per_address", "login_backoff_max_ms", "session_ttl_s",
        "held_per_connection", "held_total", "held_bytes", NULL
    };
    static const struct {
        const char *key;
        uint64_t lo, hi;
        const char *what;
        size_t off, size;
    } f[] = {
        { "conns_per_address", 0, 1000000, " (0 = unlimited)",
          offsetof(pl_limits, conns_per_address), 4 },
        { "requests_per_second", 0, 10000000, " (0 = unlimited)",
          offsetof(pl_limits, requests_per_second), 4 },
        { "request_burst", 1, 100000000, NULL, offsetof(pl_limits, request_burst), 4 },
        { "password_checks_queued", 1, 1000000, NULL,
          offsetof(pl_limits, password_checks_queued), 4 },
        { "login_failures_per_user", 1, 1000000, NULL,
          offsetof(pl_limits, login_failures_per_user), 4 },
        { "login_failures_per_address", 1, 1000000, NULL,
          offsetof(pl_limits, login_failures_per_address), 4 },
        { "login_backoff_max_ms", 1000, 86400000, NULL,
          offsetof(pl_limits, login_backoff_max_ms), 4 },
        { "session_ttl_s", 0, (uint64_t)100 * 365 * 86400, " (seconds, 0 = never)",
          offsetof(pl_limits, session_ttl_s), 8 },
        { "held_per_connection", 0, 1000000, " (0 = hold none)",
          offsetof(pl_limits, held_per_connection), 4 },
        { "held_total", 1, 10000000, NULL, offsetof(pl_limits, held_total), 4 },
        { "held_bytes", 65536, (uint64_t)1 << 40, " (bytes)", offsetof(pl_limits, held_bytes), 8 },
    };
    char key[64];
    int bad = 0;

    if (!cJSON_IsObject(v)) {
        cfg_err(x, "limits", "must be an object, e.g. {\"conns_per_address\": 256}");
        return PL_ERR_CONFIG;
    }
    NOTE(bad, check_keys(x, v, "limits.", known));
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(v, f[i].key);
        uint64_t u;
        if (!m)
            continue;
        snprintf(key, sizeof key, "limits.%s", f[i].key);
        if (get_uint(x, m, key, f[i].lo, f[i].hi, f[i].what, &u) != PL_OK) {
            bad = 1;
            continue;
        }
        char *dst = (char *)&c->limits + f[i].off;
        if (f[i].size == 4) {
            uint32_t u32 = (uint32_t)u;
            memcpy(dst, &u32, 4);
        } else {
            memcpy(dst, &u, 8);
        }
    }
    return bad ? PL_ERR_CONFIG : PL_OK;
}

static int parse_secret(cfg_ctx *x, const cJSON *root, pl_config *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "cluster_secret");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "cluster_secret_file");
    int rc;
    if (v && f) {
        cfg_err(x, "cluster_secret_file", "give cluster_secret or cluster_secret_file, not both");
        return PL_ERR_CONFIG;
    }
    int bad = 0;
    if (v) {
        if ((rc = get_str(x, v, "cluster_secret", PL_CLUSTER_SECRET_MAX, &c->cluster_secret)) != PL_OK) {
            if (rc == PL_ERR_NOMEM)
                return rc;
            bad = 1;
        } else if (strlen(c->cluster_secret) < PL_CLUSTER_SECRET_MIN) {
            cfg_err(x, "cluster_secret", "must be at least %u bytes (e.g. 64 random hex digits)",
                    PL_CLUSTER_SECRET_MIN);
            bad = 1;
        }
    }
    if (f)
        NOTE(bad, get_str(x, f, "cluster_secret_file", 4096, &c->cluster_secret_file));
    return bad ? PL_ERR_CONFIG : PL_OK;
}

/* A tls.* path. Relative paths are taken from the config file's directory,
 * not the working directory: a client config handed to users must find
 * its CA wherever `parley` is started. */
static int get_tls_path(cfg_ctx *x, const cJSON *v, const char *key, char **out)
{
    char *p = NULL;
    int rc = get_str(x, v, key, 4096, &p);
    if (rc != PL_OK)
        return rc;
    const char *slash = strrchr(x->file, '/');
    if (p[0] != '/' && slash) {
        size_t dirlen = (size_t)(slash - x->file) + 1, n = strlen(p) + 1;
        char *full = malloc(dirlen + n);
        if (!full) {
            free(p);
            cfg_err(x, key, "out of memory");
            return PL_ERR_NOMEM;
        }
        memcpy(full, x->file, dirlen);
        memcpy(full + dirlen, p, n);
        free(p);
        p = full;
    }
    free(*out);
    *out = p;
    return PL_OK;
}

static int get_bool(cfg_ctx *x, const cJSON *v, const char *key, int *out)
{
    if (!cJSON_IsBool(v)) {
        cfg_err(x, key, "must be true or false");
        return PL_ERR_CONFIG;
    }
    *out = cJSON_IsTrue(v);
    return PL_OK;
}

static int parse_tls(cfg_ctx *x, const cJSON *v, pl_config *c)
{
    static const char *const known[] = { "cert", "key", "ca", "peer", "clients",
                                         "verify_clients", NULL };
    pl_tls_conf *t = &c->tls;
    const cJSON *m;
    int bad = 0;

    if (!cJSON_IsObject(v)) {
        cfg_err(x, "tls", "must be an object {\"cert\", \"key\", \"ca\", ...}");
        return PL_ERR_CONFIG;
    }
    NOTE(bad, check_keys(x, v, "tls.", known));
    t->enabled = 1;
    t->peer = 1;
    t->clients = 1;
    /* A key that fails keeps its default, so the checks between keys below
     * still run on what the file meant wherever it could be read. */
    int paths_bad = 0;
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "cert")))
        NOTE(paths_bad, get_tls_path(x, m, "tls.cert", &t->cert));
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "key")))
        NOTE(paths_bad, get_tls_path(x, m, "tls.key", &t->key));
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "ca")))
        NOTE(paths_bad, get_tls_path(x, m, "tls.ca", &t->ca));
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "peer")))
        NOTE(bad, get_bool(x, m, "tls.peer", &t->peer));
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "clients")))
        NOTE(bad, get_bool(x, m, "tls.clients", &t->clients));
    if ((m = cJSON_GetObjectItemCaseSensitive(v, "verify_clients")))
        NOTE(bad, get_bool(x, m, "tls.verify_clients", &t->verify_clients));
    if (paths_bad)
        return PL_ERR_CONFIG;
    /* A certificate without its key (or the reverse) is always a mistake. */
    if (!t->cert != !t->key) {
        cfg_err(x, t->cert ? "tls.key" : "tls.cert",
                "missing (\"cert\" and \"key\" are given together)");
        bad = 1;
    }
    if (t->verify_clients && !t->clients) {
        cfg_err(x, "tls.verify_clients", "needs tls.clients to be true");
        bad = 1;
    }
    if (t->verify_clients && !t->ca) {
        cfg_err(x, "tls.verify_clients", "needs tls.ca (the CA that signs client certificates)");
        bad = 1;
    }
    return bad ? PL_ERR_CONFIG : PL_OK;
}

/* A transport (pc, named key in messages) learns about TLS through a "tls"
 * member added to its options (see pl_transport_options in parley/transport.h), so that server
 * and client halves get it the same way and a transport that cannot do TLS
 * refuses the key instead of serving plaintext. The key is the core's: a
 * transport object that sets it itself is refused. */
static int tls_into_transport(cfg_ctx *x, const pl_config *c, pl_plugin_conf *pc,
                              const char *key)
{
    const pl_tls_conf *t = &c->tls;
    cJSON *o = cJSON_Parse(pc->options_json ? pc->options_json : "");
    cJSON *tls = NULL;
    char *text = NULL;
    char tkey[64];
    int rc = PL_ERR_NOMEM;

    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        cfg_err(x, key, "options are not a JSON object");
        return PL_ERR_CONFIG;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, "tls")) {
        cJSON_Delete(o);
        snprintf(tkey, sizeof tkey, "%s.tls", key);
        cfg_err(x, tkey, "TLS is set by the top-level \"tls\" object");
        return PL_ERR_CONFIG;
    }
    if (!t->enabled || !t->clients) {
        cJSON_Delete(o);
        return PL_OK;
    }
    tls = cJSON_AddObjectToObject(o, "tls");
    if (!tls || (t->cert && !cJSON_AddStringToObject(tls, "cert", t->cert)) ||
        (t->key && !cJSON_AddStringToObject(tls, "key", t->key)) ||
        (t->ca && !cJSON_AddStringToObject(tls, "ca", t->ca)) ||
        !cJSON_AddBoolToObject(tls, "verify_clients", t->verify_clients))
        goto done;
    text = cJSON_PrintUnformatted(o);
    if (!text)
        goto done;
    rc = set_plugin(pc, pc->name, text);
done:
    if (rc != PL_OK)
        cfg_err(x, "tls", "out of memory");
    cJSON_free(text);
    cJSON_Delete(o);
    return rc;
}

/* "transports": more transports served beside "transport", each on every
 * server's port + port_offset. The offset must keep every port in range
 * and clear of the server's own port, peer port and admin port; the
 * plugin sees its object without "port_offset". */
static int parse_transports(cfg_ctx *x, const cJSON *v, pl_config *c, int servers_ok)
{
    char key[64];
    int n = cJSON_GetArraySize(v), rc, bad = 0;

    if (!cJSON_IsArray(v) || n < 1 || n > 8) {
        cfg_err(x, "transports", "must be a list of 1-8 {\"name\": ..., \"port_offset\": N}");
        return PL_ERR_CONFIG;
    }
    if (!(c->transports = calloc((size_t)n, sizeof *c->transports))) {
        cfg_err(x, "transports", "out of memory");
        return PL_ERR_NOMEM;
    }
    size_t idx = 0, file_idx[8];   /* entries that parsed, by their place in the file */
    for (const cJSON *e = v->child; e; e = e->next, idx++) {
        size_t i = c->n_transports;
        pl_extra_transport *t = &c->transports[i];
        uint64_t off = 0;
        snprintf(key, sizeof key, "transports[%zu]", idx);
        if (!cJSON_IsObject(e)) {
            cfg_err(x, key, "must be an object {\"name\": ..., \"port_offset\": N}");
            bad = 1;
            continue;
        }
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "port_offset");
        int off_ok = 0;
        snprintf(key, sizeof key, "transports[%zu].port_offset", idx);
        if (!o)
            cfg_err(x, key, "missing (this transport listens on every server's port + N)");
        else if (get_uint(x, o, key, 1, 64534, NULL, &off) == PL_OK)
            off_ok = 1;
        cJSON *copy = cJSON_Duplicate(e, 1);
        if (!copy) {
            cfg_err(x, key, "out of memory");
            return PL_ERR_NOMEM;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(copy, "port_offset");
        snprintf(key, sizeof key, "transports[%zu]", idx);
        rc = parse_plugin(x, copy, key, &t->plugin);
        cJSON_Delete(copy);
        /* Every listener gets the same TLS as the main transport: one that
         * cannot do TLS then refuses the key at start rather than serve
         * plaintext beside TLS (parley/transport.h). */
        if (rc == PL_OK)
            rc = tls_into_transport(x, c, &t->plugin, key);
        if (rc == PL_ERR_NOMEM)
            return rc;
        if (rc != PL_OK || !off_ok) {
            free(t->plugin.name);
            free(t->plugin.options_json);
            memset(t, 0, sizeof *t);
            bad = 1;
            continue;
        }
        c->n_transports++;
        file_idx[i] = idx;
        t->port_offset = (uint16_t)off;
        snprintf(key, sizeof key, "transports[%zu].port_offset", idx);
        for (size_t j = 0; j < i; j++)
            if (c->transports[j].port_offset == t->port_offset) {
                cfg_err(x, key, "%u is already used by transports[%zu]", (unsigned)off,
                        file_idx[j]);
                bad = 1;
                break;
            }
        for (size_t j = 0; servers_ok && j < c->n_servers; j++) {
            const pl_server_conf *sv = &c->servers[j];
            uint64_t p = sv->port + off;
            if (p > 65535 || p == sv->peer_port || p == sv->admin_port) {
                cfg_err(x, key, "servers[%zu]: port+%u = %llu is %s", j, (unsigned)off,
                        (unsigned long long)p, p > 65535 ? "above 65535"
                        : p == sv->peer_port ? "its peer_port" : "its admin_port");
                bad = 1;
                break;
            }
        }
    }
    return bad ? PL_ERR_CONFIG : PL_OK;
}

static int parse_root(cfg_ctx *x, const cJSON *root, pl_config *c)
{
    static const char *const known[] = {
        "servers", "transport", "store", "data_dir", "plugin_dir", "log_level",
        "max_frame", "election_timeout_ms", "heartbeat_ms", "password_hash",
        "hash_workers", "failback", "admin", "limits", "cluster_secret",
        "cluster_secret_file", "tls", "compaction", "group_commit", "transports", NULL
    };
    int bad = 0, servers_ok = 0, timing_ok = 1;
    uint64_t u;
    const cJSON *v;

    if (!cJSON_IsObject(root)) {
        cfg_err(x, "(top level)", "must be a JSON object");
        return PL_ERR_CONFIG;
    }
    NOTE(bad, check_keys(x, root, "", known));

    v = cJSON_GetObjectItemCaseSensitive(root, "servers");
    if (!v) {
        cfg_err(x, "servers", "missing (a list of {\"host\", \"port\"}, in priority order)");
        bad = 1;
    } else {
        int rc = parse_servers(x, v, c);
        if (rc == PL_ERR_NOMEM)
            return rc;
        servers_ok = rc == PL_OK;
        bad |= !servers_ok;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "admin")))
        NOTE(bad, parse_admin(x, v, c, servers_ok));
    if (servers_ok)
        NOTE(bad, check_admin_ports(x, c));

    if ((v = cJSON_GetObjectItemCaseSensitive(root, "transport")))
        NOTE(bad, parse_plugin(x, v, "transport", &c->transport));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "store")))
        NOTE(bad, parse_plugin(x, v, "store", &c->store));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "data_dir")))
        NOTE(bad, get_str(x, v, "data_dir", 4096, &c->data_dir));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "plugin_dir")))
        NOTE(bad, get_str(x, v, "plugin_dir", 4096, &c->plugin_dir));

    if ((v = cJSON_GetObjectItemCaseSensitive(root, "log_level"))) {
        int lvl = cJSON_IsString(v) ? pl_log_level_parse(v->valuestring) : -1;
        if (lvl < 0) {
            cfg_err(x, "log_level", "must be one of \"error\", \"warn\", \"info\", \"debug\"");
            bad = 1;
        } else {
            c->log_level = lvl;
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "max_frame"))) {
        if (get_uint(x, v, "max_frame", PL_FRAME_MIN, PL_FRAME_LIMIT, " (bytes)", &u) != PL_OK)
            bad = 1;
        else
            c->max_frame = (uint32_t)u;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "election_timeout_ms"))) {
        if (get_uint(x, v, "election_timeout_ms", 10, 600000, NULL, &u) != PL_OK)
            bad = 1, timing_ok = 0;
        else
            c->election_timeout_ms = (uint32_t)u;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "heartbeat_ms"))) {
        if (get_uint(x, v, "heartbeat_ms", 1, 600000, NULL, &u) != PL_OK)
            bad = 1, timing_ok = 0;
        else
            c->heartbeat_ms = (uint32_t)u;
    }
    /* A backup must hear several heartbeats per election timeout, or an idle
     * but healthy primary would be deposed. */
    if (timing_ok && c->heartbeat_ms >= c->election_timeout_ms) {
        cfg_err(x, "heartbeat_ms", "%u must be less than election_timeout_ms (%u)",
                c->heartbeat_ms, c->election_timeout_ms);
        bad = 1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "password_hash")))
        NOTE(bad, parse_pwhash(x, v, c));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "compaction"))) {
        static const char *const ckeys[] = { "ops", "bytes", "keep_ops", NULL };
        const cJSON *k;
        if (!cJSON_IsObject(v)) {
            cfg_err(x, "compaction", "must be an object {\"ops\", \"bytes\", \"keep_ops\"}");
            bad = 1;
        } else {
            int cbad = 0;
            NOTE(bad, check_keys(x, v, "compaction.", ckeys));
            if ((k = cJSON_GetObjectItemCaseSensitive(v, "ops")))
                NOTE(cbad, get_uint(x, k, "compaction.ops", 10, UINT32_MAX, NULL,
                                    &c->compact_ops));
            if ((k = cJSON_GetObjectItemCaseSensitive(v, "bytes")))
                NOTE(bad, get_uint(x, k, "compaction.bytes", 4096, UINT64_MAX / 2, " (bytes)",
                                   &c->compact_bytes));
            if ((k = cJSON_GetObjectItemCaseSensitive(v, "keep_ops")))
                NOTE(cbad, get_uint(x, k, "compaction.keep_ops", 1, UINT32_MAX, NULL,
                                    &c->compact_keep));
            if (!cbad && c->compact_keep >= c->compact_ops) {
                cfg_err(x, "compaction.keep_ops", "%llu must be less than compaction.ops (%llu)",
                        (unsigned long long)c->compact_keep, (unsigned long long)c->compact_ops);
                cbad = 1;
            }
            bad |= cbad;
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "group_commit"))) {
        static const char *const gkeys[] = { "delay_us", "bytes", NULL };
        const cJSON *k;
        if (!cJSON_IsObject(v)) {
            cfg_err(x, "group_commit", "must be an object {\"delay_us\", \"bytes\"}");
            bad = 1;
        } else {
            NOTE(bad, check_keys(x, v, "group_commit.", gkeys));
            const struct {
                const char *name, *key, *what;
                uint64_t lo, hi;
                uint32_t *out;
            } g[] = {
                { "delay_us", "group_commit.delay_us", " (microseconds)", 0, PL_SYNC_DELAY_US_MAX,
                  &c->sync_delay_us },
                { "bytes", "group_commit.bytes", " (bytes)", 1, PL_SYNC_DELAY_BYTES_MAX,
                  &c->sync_delay_bytes },
            };
            for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
                if (!(k = cJSON_GetObjectItemCaseSensitive(v, g[i].name)))
                    continue;
                if (get_uint(x, k, g[i].key, g[i].lo, g[i].hi, g[i].what, &u) != PL_OK)
                    bad = 1;
                else
                    *g[i].out = (uint32_t)u;
            }
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "failback"))) {
        if (!cJSON_IsBool(v)) {
            cfg_err(x, "failback", "must be true or false");
            bad = 1;
        } else {
            c->failback = cJSON_IsTrue(v);
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "hash_workers"))) {
        if (get_uint(x, v, "hash_workers", 1, PL_HASH_WORKERS_MAX, NULL, &u) != PL_OK)
            bad = 1;
        else
            c->hash_workers = (uint32_t)u;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "limits")))
        NOTE(bad, parse_limits(x, v, c));
    NOTE(bad, parse_secret(x, root, c));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "tls")))
        NOTE(bad, parse_tls(x, v, c));
    NOTE(bad, tls_into_transport(x, c, &c->transport, "transport"));
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "transports")))
        NOTE(bad, parse_transports(x, v, c, servers_ok));
    limits_derive(c);
    return bad ? PL_ERR_CONFIG : PL_OK;
}

pl_config *pl_config_default(void)
{
    pl_config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->servers = calloc(1, sizeof *c->servers);
    if (!c->servers)
        goto fail;
    c->n_servers = 1;
    c->servers[0].host = xstrdup(PL_DEFAULT_HOST);
    if (!c->servers[0].host)
        goto fail;
    c->servers[0].port = PL_DEFAULT_PORT;
    c->servers[0].peer_port = PL_DEFAULT_PORT + PL_PEER_PORT_OFFSET;
    if (set_plugin(&c->transport, "tcp", "{\"name\":\"tcp\"}") != PL_OK ||
        set_plugin(&c->store, "sqlite", "{\"name\":\"sqlite\"}") != PL_OK)
        goto fail;
    c->log_level = PL_LOG_INFO;
    c->max_frame = PL_FRAME_DEFAULT;
    c->election_timeout_ms = 1000;
    c->heartbeat_ms = 100;
    c->pwhash_opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    c->pwhash_memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    c->hash_workers = 2;
    c->failback = 1;
    c->compact_ops = 100000;
    c->compact_bytes = 64u * 1024u * 1024u;
    c->compact_keep = 10000;
    /* docs/operations.md, "Disk syncs and the group commit delay" */
    c->sync_delay_us = 1000;
    c->sync_delay_bytes = 4096;
    c->admin_bind = xstrdup(PL_DEFAULT_HOST);
    if (!c->admin_bind)
        goto fail;
    c->limits = (pl_limits){
        .conns_per_address = PL_LIMITS_DEFAULT_CONNS_PER_ADDRESS,
        .requests_per_second = PL_LIMITS_DEFAULT_RPS,
        .login_failures_per_user = PL_LIMITS_DEFAULT_FAILS_USER,
        .login_failures_per_address = PL_LIMITS_DEFAULT_FAILS_ADDRESS,
        .login_backoff_max_ms = PL_LIMITS_DEFAULT_BACKOFF_MAX_MS,
        .session_ttl_s = PL_LIMITS_DEFAULT_SESSION_TTL_S,
        .held_per_connection = PL_LIMITS_DEFAULT_HELD_PER_CONN,
        .held_total = PL_LIMITS_DEFAULT_HELD_TOTAL,
        .held_bytes = PL_LIMITS_DEFAULT_HELD_BYTES,
    };
    limits_derive(c);
    return c;
fail:
    pl_config_free(c);
    return NULL;
}

/* "line L, column C" of a byte offset, for parse errors. */
static void position(const char *text, size_t off, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* Parse text. keep: return the configuration also when some keys were
 * wrong (what parsed, defaults elsewhere), for --check-config; *nerr (may
 * be NULL) is the number of errors written to err. */
static pl_config *parse_text(const char *name, const char *text, size_t len, char *err,
                             size_t errlen, int keep, unsigned *nerr)
{
    cfg_ctx x = { name ? name : "(config)", err, errlen, 0, 0, 0 };
    cJSON *root = NULL;
    pl_config *c = NULL;

    if (err && errlen)
        err[0] = '\0';
    if (!text || len == 0) {
        cfg_err(&x, "(top level)", "empty file, expected a JSON object");
        goto fail;
    }
    if (memchr(text, '\0', len)) {
        size_t off = (size_t)((const char *)memchr(text, '\0', len) - text);
        unsigned line, col;
        position(text, off, &line, &col);
        char key[64];
        snprintf(key, sizeof key, "line %u, column %u", line, col);
        cfg_err(&x, key, "not valid JSON (NUL byte)");
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        unsigned line, col;
        position(text, off, &line, &col);
        char key[64];
        snprintf(key, sizeof key, "line %u, column %u", line, col);
        cfg_err(&x, key, "not valid JSON");
        goto fail;
    }
    /* Trailing garbage after the object ("{...} x") is a broken file too. */
    for (size_t off = end ? (size_t)(end - text) : len; off < len; off++) {
        char ch = text[off];
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
            continue;
        unsigned line, col;
        position(text, off, &line, &col);
        char key[64];
        snprintf(key, sizeof key, "line %u, column %u", line, col);
        cfg_err(&x, key, "not valid JSON (text after the top-level value)");
        goto fail;
    }

    c = pl_config_default();
    if (!c) {
        cfg_err(&x, "(top level)", "out of memory");
        goto fail;
    }
    /* Derived again from the file's own hash_workers and rate. */
    c->limits.password_checks_queued = 0;
    c->limits.request_burst = 0;
    int rc = parse_root(&x, root, c);
    if (rc == PL_ERR_NOMEM || (rc != PL_OK && !keep))
        goto fail;
    if (name) {
        c->path = xstrdup(name);
        if (!c->path) {
            cfg_err(&x, "(top level)", "out of memory");
            goto fail;
        }
    }
    cJSON_Delete(root);
    cfg_finish(&x);
    if (nerr)
        *nerr = x.n;
    return c;
fail:
    cJSON_Delete(root);
    pl_config_free(c);
    cfg_finish(&x);
    if (nerr)
        *nerr = x.n;
    return NULL;
}

pl_config *pl_config_parse(const char *name, const char *text, size_t len,
                           char *err, size_t errlen)
{
    return parse_text(name, text, len, err, errlen, 0, NULL);
}

static pl_config *load_file(const char *path, char *err, size_t errlen, int keep,
                            unsigned *nerr)
{
    cfg_ctx x = { path ? path : "(null)", err, errlen, 0, 0, 0 };
    char *buf = NULL;
    FILE *f = NULL;

    if (err && errlen)
        err[0] = '\0';
    if (nerr)
        *nerr = 1;
    if (!path) {
        cfg_err(&x, "(file)", "no path given");
        return NULL;
    }
    f = fopen(path, "rb");
    if (!f) {
        cfg_err(&x, "(file)", "cannot open: %s", strerror(errno));
        return NULL;
    }
    buf = malloc(PL_CONFIG_FILE_MAX + 1);
    if (!buf) {
        cfg_err(&x, "(file)", "out of memory");
        goto fail;
    }
    size_t n = fread(buf, 1, PL_CONFIG_FILE_MAX + 1, f);
    if (ferror(f)) {
        cfg_err(&x, "(file)", "cannot read: %s", strerror(errno));
        goto fail;
    }
    if (n > PL_CONFIG_FILE_MAX) {
        cfg_err(&x, "(file)", "larger than %u bytes", PL_CONFIG_FILE_MAX);
        goto fail;
    }
    fclose(f);
    f = NULL;
    pl_config *c = parse_text(path, buf, n, err, errlen, keep, nerr);
    free(buf);
    return c;
fail:
    if (f)
        fclose(f);
    free(buf);
    return NULL;
}

pl_config *pl_config_load(const char *path, char *err, size_t errlen)
{
    return load_file(path, err, errlen, 0, NULL);
}

pl_config *pl_config_check(const char *path, char *err, size_t errlen, unsigned *nerr)
{
    unsigned n = 0;
    pl_config *c = load_file(path, err, errlen, 1, &n);
    if (nerr)
        *nerr = n;
    return c;
}

void pl_config_free(pl_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_servers; i++)
        free(c->servers[i].host);
    free(c->servers);
    free(c->transport.name);
    free(c->transport.options_json);
    for (size_t i = 0; i < c->n_transports; i++) {
        free(c->transports[i].plugin.name);
        free(c->transports[i].plugin.options_json);
    }
    free(c->transports);
    free(c->store.name);
    free(c->store.options_json);
    free(c->data_dir);
    free(c->plugin_dir);
    free(c->admin_bind);
    if (c->cluster_secret) {
        /* A secret should not linger in freed memory; no libsodium here
         * (the client links this file too), so a volatile wipe. */
        volatile char *v = c->cluster_secret;
        for (size_t i = 0; v[i]; i++)
            v[i] = 0;
        free(c->cluster_secret);
    }
    free(c->cluster_secret_file);
    if (c->admin_token) {
        wipe(c->admin_token, strlen(c->admin_token));
        free(c->admin_token);
    }
    free(c->tls.cert);
    free(c->tls.key);
    free(c->tls.ca);
    free(c->path);
    free(c);
}

int pl_config_cluster_secret(const pl_config *c, uint8_t **out, size_t *len,
                             char *err, size_t errlen)
{
    cfg_ctx x = { c->path ? c->path : "(config)", err, errlen, 0, 0, 0 };
    *out = NULL;
    *len = 0;
    if (c->cluster_secret) {
        size_t n = strlen(c->cluster_secret);
        if (n < PL_CLUSTER_SECRET_MIN) {
            cfg_err(&x, "cluster_secret", "must be at least %u bytes", PL_CLUSTER_SECRET_MIN);
            return PL_ERR_CONFIG;
        }
        if (!(*out = malloc(n)))
            return PL_ERR_NOMEM;
        memcpy(*out, c->cluster_secret, n);
        *len = n;
        return PL_OK;
    }
    if (!c->cluster_secret_file)
        return PL_OK;
    FILE *f = fopen(c->cluster_secret_file, "rb");
    if (!f) {
        cfg_err(&x, "cluster_secret_file", "cannot open %s: %s", c->cluster_secret_file,
                strerror(errno));
        return PL_ERR_CONFIG;
    }
    uint8_t *buf = malloc(PL_CLUSTER_SECRET_MAX + 2);
    size_t n = buf ? fread(buf, 1, PL_CLUSTER_SECRET_MAX + 2, f) : 0;
    int failed = !buf || ferror(f);
    fclose(f);
    if (failed) {
        cfg_err(&x, "cluster_secret_file", "cannot read %s", c->cluster_secret_file);
        goto fail;
    }
    /* "echo SECRET > file" leaves a newline that is not part of the secret. */
    if (n && buf[n - 1] == '\n')
        n--;
    if (n && buf[n - 1] == '\r')
        n--;
    if (n < PL_CLUSTER_SECRET_MIN || n > PL_CLUSTER_SECRET_MAX) {
        cfg_err(&x, "cluster_secret_file", "%s holds %zu bytes; the secret must be %u-%u bytes",
                c->cluster_secret_file, n, PL_CLUSTER_SECRET_MIN, PL_CLUSTER_SECRET_MAX);
        goto fail;
    }
    *out = buf;
    *len = n;
    return PL_OK;
fail:
    if (buf) {
        volatile uint8_t *v = buf;
        for (size_t i = 0; i < PL_CLUSTER_SECRET_MAX + 2; i++)
            v[i] = 0;
    }
    free(buf);
    return PL_ERR_CONFIG;
}
