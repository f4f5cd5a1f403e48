/*
 * plugins/transport-ws/ws_web.c — the web client's files (ws_int.h).
 *
 * Every servable file of the web root is read into memory once, at server
 * start, and served from there: no file I/O on the event loop, and no path
 * from the network ever reaches the file system — a request path is only
 * compared with the names loaded, so "/../etc/passwd" or "%2e%2e" can only
 * be a 404. Servable means a regular file directly in the directory (no
 * subdirectories, no dot files) with a known extension; at most
 * WEB_FILES_MAX files and WEB_BYTES_MAX bytes in all (the client is a few
 * dozen kilobytes).
 */
#include "ws_int.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WEB_FILES_MAX 64u
#define WEB_FILE_MAX (1024u * 1024u)
#define WEB_BYTES_MAX (8u * 1024u * 1024u)

struct ws_web {
    ws_web_file files[WEB_FILES_MAX];
    size_t n;
};

static const struct {
    const char *ext;
    const char *type;
} web_types[] = {
    { ".html", "text/html; charset=utf-8" },
    { ".js", "text/javascript; charset=utf-8" },
    { ".css", "text/css; charset=utf-8" },
    { ".json", "application/json" },
    { ".svg", "image/svg+xml" },
    { ".png", "image/png" },
    { ".ico", "image/x-icon" },
    { ".webmanifest", "application/manifest+json" },
    { ".txt", "text/plain; charset=utf-8" },
};

static const char *type_of(const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < sizeof web_types / sizeof web_types[0]; i++) {
        size_t e = strlen(web_types[i].ext);
        if (n > e && strcmp(name + n - e, web_types[i].ext) == 0)
            return web_types[i].type;
    }
    return NULL;
}

/* Read a whole regular file of at most max bytes; NULL otherwise. */
static uint8_t *read_file(const char *path, size_t max, size_t *len)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max)
        goto fail;
    buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        goto fail;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            goto fail;
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return buf;
fail:
    free(buf);
    close(fd);
    return NULL;
}

ws_web *ws_web_load(const char *dir, char *why, size_t whylen)
{
    ws_web *w = calloc(1, sizeof *w);
    size_t total = 0, skipped = 0;
    struct dirent *de;
    DIR *d;

    if (!w)
        return NULL;
    why[0] = '\0';
    d = opendir(dir);
    if (!d) {
        snprintf(why, whylen, "web client not served: %s: %s", dir, strerror(errno));
        return w;
    }
    while ((de = readdir(d)) != NULL) {
        const char *type = type_of(de->d_name);
        char path[4096];
        uint8_t *data;
        size_t len = 0;
        char *name;

        if (de->d_name[0] == '.' || !type)
            continue;
        if (w->n == WEB_FILES_MAX) {
            skipped++;
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        data = read_file(path, WEB_FILE_MAX, &len);
        if (!data || total + len > WEB_BYTES_MAX || !(name = strdup(de->d_name))) {
            free(data);
            skipped++;
            continue;
        }
        total += len;
        w->files[w->n++] = (ws_web_file){ name, type, data, len };
    }
    closedir(d);
    if (!ws_web_find(w, "/"))
        snprintf(why, whylen, "web client not served: %s has no index.html", dir);
    else if (skipped)
        snprintf(why, whylen, "web client: %zu file(s) of %s skipped (over %u files, %u bytes "
                 "each or %u in all)", skipped, dir, WEB_FILES_MAX, WEB_FILE_MAX, WEB_BYTES_MAX);
    return w;
}

void ws_web_free(ws_web *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free((char *)w->files[i].name);
        free((uint8_t *)w->files[i].data);
    }
    free(w);
}

const ws_web_file *ws_web_find(const ws_web *w, const char *path)
{
    const char *name;

    if (!w || !path || path[0] != '/')
        return NULL;
    name = path[1] ? path + 1 : "index.html";
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->files[i].name, name) == 0)
            return &w->files[i];
    return NULL;
}

size_t ws_web_count(const ws_web *w)
{
    return w ? w->n : 0;
}

const char *ws_web_default_root(void)
{
    Dl_info info;
    size_t n = strlen(PL_WS_BUILD_ROOT);

    /* Loaded from the build tree (tests, a developer's run): serve the
     * source tree's web/, so an edit shows on reload with no install. */
    if (dladdr((void *)ws_web_default_root, &info) && info.dli_fname &&
        strncmp(info.dli_fname, PL_WS_BUILD_ROOT, n) == 0 && info.dli_fname[n] == '/')
        return PL_WS_SOURCE_WEB;
    return PL_WS_INSTALL_WEB;
}
