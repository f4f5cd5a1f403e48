/*
 * core/loader.c — find a plugin file, dlopen() it, check its descriptor.
 *
 * Every failure becomes exactly one line in the caller's err buffer, in the
 * style shown in loader.h, because an operator reads it once in a log or on
 * a terminal and must be able to act on it without a debugger: which file,
 * which symbol, which version, which member.
 *
 * The descriptor is validated before the caller sees it, so the rest of the
 * core can call every function pointer without NULL checks. abi_version is
 * read first and nothing else is touched when it differs: a descriptor from
 * another ABI may have a different layout, and reading further could crash.
 */
#include "loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pl_build_config.h"

enum pl_plugin_kind { PL_KIND_STORE = 1, PL_KIND_TRANSPORT = 2 };

struct pl_plugin {
    void *handle;             /* dlopen handle, closed by pl_plugin_unload */
    char *name;               /* as the config gave it, for messages */
    char *path;               /* the file actually loaded */
    int kind;
    const pl_store_plugin *store;
    uint32_t store_minor;     /* members of minor versions up to this are read */
    const pl_transport_plugin *transport;
};

/* The search list: at most plugin_dir, env, build tree, install dir. */
#define LOADER_MAX_CANDIDATES 4

static void set_err(char *err, size_t errlen, const char *fmt, ...) PL_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* dlerror() text has no trailing newline, but a plugin-supplied message
 * might; keep the error to one line whatever it holds. */
static void one_line(char *s)
{
    for (; s && *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);

    if (d)
        memcpy(d, s, n);
    return d;
}

static char *path_join(const char *dir, const char *sub, const char *file)
{
    size_t dl = strlen(dir), sl = sub ? strlen(sub) : 0, fl = strlen(file);
    char *p = malloc(dl + sl + fl + 3);
    size_t at = 0;

    if (!p)
        return NULL;
    memcpy(p + at, dir, dl);
    at += dl;
    if (at > 0 && p[at - 1] != '/')
        p[at++] = '/';
    if (sl) {
        memcpy(p + at, sub, sl);
        at += sl;
        p[at++] = '/';
    }
    memcpy(p + at, file, fl);
    at += fl;
    p[at] = '\0';
    return p;
}

/* True when the running executable sits inside the build tree, so a plugin
 * built next to it is the one to use (tests, developers running
 * ./build/core/parleyd) rather than an older installed copy. Both sides are
 * resolved, because the build root may have been configured through a
 * symlink. */
static int running_from_build_tree(void)
{
    char exe[PATH_MAX], root[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    size_t rl;

    if (n <= 0)
        return 0;
    exe[n] = '\0';
    if (!realpath(PL_BUILD_ROOT, root)) {
        if (strlen(PL_BUILD_ROOT) >= sizeof root)
            return 0;
        strcpy(root, PL_BUILD_ROOT);
    }
    rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/')
        root[--rl] = '\0';
    return strncmp(exe, root, rl) == 0 && exe[rl] == '/';
}

/* Resolve name to an existing file. Returns a malloc'd path, or NULL with
 * the "not found" line (or an out-of-memory line) in err. */
static char *find_plugin(const char *kind, const char *name,
                         const char *plugin_dir, char *err, size_t errlen)
{
    char *cands[LOADER_MAX_CANDIDATES] = { 0 };
    size_t nc = 0, i, used;
    char file[PATH_MAX], sub[PATH_MAX];
    const char *env = getenv("PARLEY_PLUGIN_DIR");
    char *found = NULL;

    if (strchr(name, '/')) {
        if (access(name, F_OK) == 0) {
            found = str_dup(name);
            if (!found)
                set_err(err, errlen, "plugin \"%s\": out of memory", name);
            return found;
        }
        if (errno == ENOENT || errno == ENOTDIR)
            set_err(err, errlen, "plugin \"%s\": not found (looked in: %s)", name, name);
        else
            set_err(err, errlen, "plugin \"%s\": cannot access %s: %s",
                    name, name, strerror(errno));
        return NULL;
    }

    if ((size_t)snprintf(file, sizeof file, "parley-%s-%s.so", kind, name) >= sizeof file ||
        (size_t)snprintf(sub, sizeof sub, "plugins/%s-%s", kind, name) >= sizeof sub) {
        set_err(err, errlen, "plugin \"%.64s...\": name longer than %d bytes",
                name, PATH_MAX - 16);
        return NULL;
    }

    if (plugin_dir && *plugin_dir)
        cands[nc++] = path_join(plugin_dir, NULL, file);
    if (env && *env)
        cands[nc++] = path_join(env, NULL, file);
    if (running_from_build_tree())
        cands[nc++] = path_join(PL_BUILD_ROOT, sub, file);
    cands[nc++] = path_join(PL_PLUGIN_INSTALL_DIR, NULL, file);

    for (i = 0; i < nc; i++) {
        if (!cands[i]) {
            set_err(err, errlen, "plugin \"%s\": out of memory", name);
            goto done;
        }
    }
    for (i = 0; i < nc; i++) {
        if (access(cands[i], F_OK) == 0) {
            found = cands[i];
            cands[i] = NULL;
            goto done;
        }
    }

    used = 0;
    if (err && errlen > 0) {
        int w = snprintf(err, errlen, "plugin \"%s\": not found (looked in: ", name);
        used = w < 0 ? 0 : (size_t)w;
        for (i = 0; i < nc && used < errlen; i++) {
            w = snprintf(err + used, errlen - used, "%s%s", i ? ", " : "", cands[i]);
            used += w < 0 ? 0 : (size_t)w;
        }
        if (used < errlen)
            snprintf(err + used, errlen - used, ")");
    }

done:
    for (i = 0; i < nc; i++)
        free(cands[i]);
    return found;
}

/* The store ABI minor version a plugin was built for (store.h): 0 when it
 * does not export one. The symbol counts only when it is the plugin's own,
 * not one found in a library the plugin links against. Minor versions this
 * parley does not know read as the newest it does: their members come
 * after the ones it reads. */
static uint32_t store_minor_of(void *handle, void *entry)
{
    dlerror();
    const uint32_t *minor = dlsym(handle, PL_STORE_MINOR_SYMBOL);
    Dl_info a, b;
    if (!minor || !dladdr(minor, &a) || !dladdr(entry, &b) || a.dli_fbase != b.dli_fbase)
        return 0;
    return *minor > PL_STORE_ABI_MINOR ? PL_STORE_ABI_MINOR : *minor;
}

/* The first NULL function pointer in a store descriptor, by member name:
 * those of ABI 1, then those of each minor version up to minor. */
static const char *store_missing_member(const pl_store_plugin *d, uint32_t minor)
{
#define PL_NEED(m) if (!d->m) return #m
    PL_NEED(name);
    PL_NEED(open);
    PL_NEED(close);
    PL_NEED(meta_get);
    PL_NEED(meta_set);
    PL_NEED(log_append);
    PL_NEED(log_bounds);
    PL_NEED(log_read);
    PL_NEED(log_truncate);
    PL_NEED(log_compact);
    PL_NEED(begin);
    PL_NEED(commit);
    PL_NEED(abort);
    PL_NEED(applied_op);
    PL_NEED(account_put);
    PL_NEED(account_get_name);
    PL_NEED(account_get_uid);
    PL_NEED(account_delete);
    PL_NEED(account_scan);
    PL_NEED(account_count);
    PL_NEED(session_put);
    PL_NEED(session_get);
    PL_NEED(session_delete);
    PL_NEED(session_delete_uid);
    PL_NEED(session_scan);
    PL_NEED(message_put);
    PL_NEED(message_get);
    PL_NEED(message_set_flags);
    PL_NEED(message_delete);
    PL_NEED(message_scan);
    PL_NEED(message_counts);
    PL_NEED(client_get);
    PL_NEED(client_put);
    PL_NEED(client_scan);
    if (minor >= 1) {
        PL_NEED(log_append_nosync);
        PL_NEED(log_sync);
    }
    if (minor >= 2)
        PL_NEED(state_flush);
    return NULL;
}

static const char *transport_missing_member(const pl_transport_plugin *d)
{
    PL_NEED(name);
    PL_NEED(server_start);
    PL_NEED(server_stop_accepting);
    PL_NEED(server_free);
    PL_NEED(conn_send);
    PL_NEED(conn_close);
    PL_NEED(client_connect);
    PL_NEED(client_send);
    PL_NEED(client_free);
    PL_NEED(encode_request);
    PL_NEED(encode_response);
    PL_NEED(decode_request);
    PL_NEED(decode_response);
    PL_NEED(free_scratch);
    return NULL;
#undef PL_NEED
}

/* "name" alone when the name was the path, "name" (path) otherwise, so a
 * short name is always tied to the file that was really loaded. */
static void describe(char *buf, size_t len, const char *name, const char *path)
{
    if (strcmp(name, path) == 0)
        snprintf(buf, len, "plugin \"%s\"", name);
    else
        snprintf(buf, len, "plugin \"%s\" (%s)", name, path);
}

/* Fetch the entry symbol. dlsym() may legitimately return NULL for a symbol
 * that exists, so the error is judged by dlerror(), cleared first. */
static void *entry_symbol(void *handle, const char *sym, const char **why)
{
    void *fn;
    const char *e;

    dlerror();
    fn = dlsym(handle, sym);
    e = dlerror();
    *why = e;
    return e ? NULL : fn;
}

/* ISO C forbids converting an object pointer (dlsym's result) to a function
 * pointer by cast; copying the bytes is the POSIX-blessed way. */
#define PL_FN_FROM_SYM(dst, sym) memcpy(&(dst), &(sym), sizeof(dst))

pl_plugin *pl_plugin_load(const char *kind, const char *name,
                          const char *plugin_dir, char *err, size_t errlen)
{
    pl_plugin *p = NULL;
    char who[PATH_MAX + 160];
    char why[512];
    const char *sym_name, *other_sym, *dl_why = NULL;
    void *sym;
    int k;

    if (err && errlen)
        err[0] = '\0';
    if (!name || !*name) {
        set_err(err, errlen, "plugin \"\": empty plugin name");
        return NULL;
    }
    if (kind && strcmp(kind, "store") == 0) {
        k = PL_KIND_STORE;
        sym_name = PL_STORE_SYMBOL;
        other_sym = PL_TRANSPORT_SYMBOL;
    } else if (kind && strcmp(kind, "transport") == 0) {
        k = PL_KIND_TRANSPORT;
        sym_name = PL_TRANSPORT_SYMBOL;
        other_sym = PL_STORE_SYMBOL;
    } else {
        set_err(err, errlen, "plugin \"%s\": unknown plugin kind \"%s\" (store or transport)",
                name, kind ? kind : "(null)");
        return NULL;
    }

    p = calloc(1, sizeof *p);
    if (!p) {
        set_err(err, errlen, "plugin \"%s\": out of memory", name);
        return NULL;
    }
    p->kind = k;
    p->name = str_dup(name);
    if (!p->name) {
        set_err(err, errlen, "plugin \"%s\": out of memory", name);
        goto fail;
    }
    p->path = find_plugin(kind, name, plugin_dir, err, errlen);
    if (!p->path)
        goto fail;
    describe(who, sizeof who, p->name, p->path);

    /* RTLD_NOW: an unresolved symbol is reported here, at startup, not as a
     * crash at the first call. RTLD_LOCAL: two plugins may define the same
     * internal names without clashing. */
    p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
        const char *e = dlerror();
        snprintf(why, sizeof why, "%s", e ? e : "unknown dlopen error");
        one_line(why);
        set_err(err, errlen, "%s: cannot load: %s", who, why);
        goto fail;
    }

    sym = entry_symbol(p->handle, sym_name, &dl_why);
    if (!sym) {
        const char *ignored;
        const char *hint = "";
        if (dl_why)
            snprintf(why, sizeof why, "%s", dl_why);
        else
            snprintf(why, sizeof why, "symbol is NULL");
        one_line(why);
        /* A frequent operator mistake is naming a store where a transport
         * belongs; say so instead of leaving only the dlsym text. */
        if (entry_symbol(p->handle, other_sym, &ignored))
            hint = k == PL_KIND_STORE ? " (this is a transport plugin, not a store)"
                                      : " (this is a store plugin, not a transport)";
        set_err(err, errlen, "%s: symbol %s missing%s: %s", who, sym_name, hint, why);
        goto fail;
    }

    if (k == PL_KIND_STORE) {
        pl_store_entry_fn fn;
        const pl_store_plugin *d;
        const char *miss;

        PL_FN_FROM_SYM(fn, sym);
        d = fn();
        if (!d) {
            set_err(err, errlen, "%s: %s() returned NULL", who, sym_name);
            goto fail;
        }
        if (d->abi_version != PL_STORE_ABI_VERSION) {
            set_err(err, errlen, "%s: ABI version %u, this parley speaks %u",
                    who, (unsigned)d->abi_version, (unsigned)PL_STORE_ABI_VERSION);
            goto fail;
        }
        p->store_minor = store_minor_of(p->handle, sym);
        miss = store_missing_member(d, p->store_minor);
        if (miss) {
            set_err(err, errlen, "%s: store descriptor member %s is NULL (store ABI 1.%u)",
                    who, miss, (unsigned)p->store_minor);
            goto fail;
        }
        p->store = d;
    } else {
        pl_transport_entry_fn fn;
        const pl_transport_plugin *d;
        const char *miss;

        PL_FN_FROM_SYM(fn, sym);
        d = fn();
        if (!d) {
            set_err(err, errlen, "%s: %s() returned NULL", who, sym_name);
            goto fail;
        }
        /* Older transports keep loading: the core reads their newer
         * members only after checking the version (transport.h). */
        if (d->abi_version < PL_TRANSPORT_ABI_MIN || d->abi_version > PL_TRANSPORT_ABI_VERSION) {
            set_err(err, errlen, "%s: ABI version %u, this parley speaks %u (and loads "
                    "transports of %u to %u)", who, (unsigned)d->abi_version,
                    (unsigned)PL_TRANSPORT_ABI_VERSION, (unsigned)PL_TRANSPORT_ABI_MIN,
                    (unsigned)PL_TRANSPORT_ABI_VERSION);
            goto fail;
        }
        miss = transport_missing_member(d);
        if (miss) {
            set_err(err, errlen, "%s: transport descriptor member %s is NULL", who, miss);
            goto fail;
        }
        p->transport = d;
    }
    return p;

fail:
    pl_plugin_unload(p);
    return NULL;
}

const pl_store_plugin *pl_plugin_store(const pl_plugin *p)
{
    return p ? p->store : NULL;
}

uint32_t pl_plugin_store_minor(const pl_plugin *p)
{
    return p && p->store ? p->store_minor : 0;
}

const pl_transport_plugin *pl_plugin_transport(const pl_plugin *p)
{
    return p ? p->transport : NULL;
}

const char *pl_plugin_path(const pl_plugin *p)
{
    return p ? p->path : NULL;
}

void pl_plugin_unload(pl_plugin *p)
{
    if (!p)
        return;
    if (p->handle)
        dlclose(p->handle);
    free(p->name);
    free(p->path);
    free(p);
}

int pl_plugin_store_open(const pl_plugin *p, const pl_store_host *host,
                         const pl_store_options *opt, pl_store **out,
                         char *err, size_t errlen)
{
    char why[512];
    char who[PATH_MAX + 160];
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (!out) {
        set_err(err, errlen, "store open: no output pointer");
        return PL_ERR_INVALID;
    }
    *out = NULL;
    if (!p || !p->store) {
        set_err(err, errlen, "plugin \"%s\": not a store plugin",
                p ? p->name : "(none)");
        return PL_ERR_INVALID;
    }
    describe(who, sizeof who, p->name, p->path);

    why[0] = '\0';
    rc = p->store->open(host, opt, out, why, sizeof why);
    why[sizeof why - 1] = '\0';
    one_line(why);
    if (rc != PL_OK) {
        set_err(err, errlen, "%s: open failed: %s", who, why[0] ? why : pl_strerror(rc));
        *out = NULL;
        return rc;
    }
    if (!*out) {
        set_err(err, errlen, "%s: open failed: plugin returned success but no store", who);
        return PL_ERR_PLUGIN;
    }
    return PL_OK;
}
