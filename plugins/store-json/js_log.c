/*
 * js_log.c — log.jsonl, the replicated log as text, one entry per line:
 *
 *   {"op":12,"view":3,"len":5,"data":"aGVsbG8=","crc":"3610a686"}
 *
 * "crc" is the CRC-32 (IEEE) of every byte of the line before ,"crc": — a
 * flipped bit, a torn write or an edit shows as a mismatch. "len" is the
 * decoded length of "data" (base64), so a line cut inside "data" with a
 * forged CRC still fails. Every line ends with '\n'; a last line without
 * one is a write that did not finish.
 *
 * At open the file is scanned once. At the first line that fails any check
 * (CRC, JSON, types, length, op continuity) the file is cut there with a
 * warning saying how many bytes went and from which op: those entries
 * were never acknowledged as durable (log_append syncs before returning,
 * and the core acknowledges only after that), so dropping them is what
 * VR expects of a crashed replica. Only the index (op -> view, offset,
 * line length) stays in memory; log_read reads the lines back with pread.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "store_json.h"

/* Longest line the reader accepts: JS_ENTRY_MAX of data in base64 plus the
 * fixed fields. */
#define JS_LINE_MAX ((size_t)JS_ENTRY_MAX / 3 * 4 + 256)
#define JS_CRC_TAG ",\"crc\":\""
#define JS_READ_CHUNK (1u << 20)

uint64_t js_log_last(const js_log *l)
{
    return l->n ? l->first + l->n - 1 : 0;
}

static int js_reserve_recs(js_log *l, size_t need)
{
    size_t ncap;
    js_logrec *nr;

    if (need <= l->cap)
        return PL_OK;
    ncap = l->cap ? l->cap : 1024;
    while (ncap < need)
        ncap *= 2;
    if (!(nr = realloc(l->recs, ncap * sizeof *nr)))
        return PL_ERR_NOMEM;
    l->recs = nr;
    l->cap = ncap;
    return PL_OK;
}

/* Check one line (without its '\n'). On success fills op, view and, when
 * data is not NULL, decodes the entry into data (room for JS_ENTRY_MAX is
 * not needed: *dlen <= dcap is checked). Returns NULL or the reason. */
static const char *js_line_parse(const char *line, size_t len, uint64_t *op, uint64_t *view,
                                 uint32_t *elen, uint8_t *data, size_t dcap, size_t *dlen)
{
    const char *tag = NULL, *p;
    char crc_text[9];
    cJSON *root = NULL, *v;
    const char *why = NULL;
    uint64_t n;
    size_t b64len, got;

    if (len > JS_LINE_MAX)
        return "line longer than the 64 MiB entry limit allows";
    /* the last ,"crc":" in the line; base64 data cannot contain quotes */
    for (p = line; (p = memmem(p, len - (size_t)(p - line), JS_CRC_TAG, sizeof JS_CRC_TAG - 1));
         p++)
        tag = p;
    if (!tag || (size_t)(line + len - tag) != sizeof JS_CRC_TAG - 1 + 8 + 2 ||
        memcmp(line + len - 2, "\"}", 2) != 0)
        return "no \"crc\" field at the end of the line";
    snprintf(crc_text, sizeof crc_text, "%08x", js_crc32(line, (size_t)(tag - line)));
    if (memcmp(crc_text, tag + sizeof JS_CRC_TAG - 1, 8) != 0)
        return "checksum mismatch";
    if (!(root = cJSON_ParseWithLength(line, len)))
        return "not valid JSON";
    if (!cJSON_IsObject(root)) {
        why = "not a JSON object";
        goto out;
    }
    if (js_json_u64(cJSON_GetObjectItemCaseSensitive(root, "op"), op) != 0 || *op == 0) {
        why = "\"op\" is not a positive integer";
        goto out;
    }
    if (js_json_u64(cJSON_GetObjectItemCaseSensitive(root, "view"), view) != 0) {
        why = "\"view\" is not an unsigned integer";
        goto out;
    }
    if (js_json_u64(cJSON_GetObjectItemCaseSensitive(root, "len"), &n) != 0 ||
        n > JS_ENTRY_MAX) {
        why = "\"len\" is not an integer up to 64 MiB";
        goto out;
    }
    *elen = (uint32_t)n;
    v = cJSON_GetObjectItemCaseSensitive(root, "data");
    if (!cJSON_IsString(v) || !v->valuestring) {
        why = "\"data\" is not a string";
        goto out;
    }
    b64len = strlen(v->valuestring);
    if (b64len != js_b64_len(n)) {
        why = "\"data\" does not have \"len\" bytes";
        goto out;
    }
    if (data) {
        if (dcap < n || js_b64_decode(data, dcap, v->valuestring, b64len, &got) != 0 ||
            got != n) {
            why = "\"data\" is not valid base64 of \"len\" bytes";
            goto out;
        }
        *dlen = got;
    }
out:
    cJSON_Delete(root);
    return why;
}

/* Cut the file at off: a torn or corrupt tail. */
static int js_log_cut(pl_store *s, uint64_t off, uint64_t file_size, uint64_t next_op,
                      const char *why)
{
    js_log *l = &s->log;

    char at[48] = "the first entry";

    if (next_op)
        snprintf(at, sizeof at, "op %" PRIu64, next_op);
    js_log_msg(s, PL_LOG_WARN, "%s: cutting %" PRIu64 " bytes at byte %" PRIu64
               " (from %s on): %s", l->path, file_size - off, off, at, why);
    if (ftruncate(l->fd, (off_t)off) != 0 || (s->sync_on && fdatasync(l->fd) != 0)) {
        js_log_msg(s, PL_LOG_ERROR, "cannot cut %s: %s", l->path, strerror(errno));
        return PL_ERR_IO;
    }
    return PL_OK;
}

int js_log_open(pl_store *s, char *err, size_t errlen)
{
    js_log *l = &s->log;
    struct stat sb;
    const char *map = NULL;
    uint64_t off = 0, size;
    int created = 0, rc = PL_OK;

    if (!(l->path = js_path(s->dir, JS_LOG_FILE))) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    l->fd = open(l->path, O_RDWR | O_CLOEXEC);
    if (l->fd < 0 && errno == ENOENT) {
        l->fd = open(l->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        created = 1;
    }
    if (l->fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", l->path, strerror(errno));
        return PL_ERR_IO;
    }
    if (created) {
        /* the new file's directory entry must survive a crash too */
        if (js_sync_dir(s) != PL_OK) {
            snprintf(err, errlen, "cannot sync directory %s: %s", s->dir, strerror(errno));
            return PL_ERR_IO;
        }
        return PL_OK;
    }
    if (fstat(l->fd, &sb) != 0) {
        snprintf(err, errlen, "cannot stat %s: %s", l->path, strerror(errno));
        return PL_ERR_IO;
    }
    size = (uint64_t)sb.st_size;
    if (size == 0)
        return PL_OK;
    map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, l->fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s (%" PRIu64 " bytes): %s", l->path, size,
                 strerror(errno));
        return PL_ERR_IO;
    }
    while (off < size) {
        const char *line = map + off;
        const char *nl = memchr(line, '\n', (size_t)(size - off));
        uint64_t op = 0, view = 0, expect = js_log_last(l) + 1;
        uint32_t elen;
        const char *why;

        if (!nl) {
            why = "last line has no newline (a write that did not finish)";
        } else {
            why = js_line_parse(line, (size_t)(nl - line), &op, &view, &elen, NULL, 0, NULL);
            if (!why && l->n && op != expect)
                why = "op-number does not continue the previous line";
        }
        if (why) {
            rc = js_log_cut(s, off, size, l->n ? expect : op, why);
            if (rc != PL_OK)
                snprintf(err, errlen, "cannot cut the bad tail of %s: %s", l->path,
                         strerror(errno));
            break;
        }
        if (js_reserve_recs(l, l->n + 1) != PL_OK) {
            snprintf(err, errlen, "out of memory indexing %s", l->path);
            rc = PL_ERR_NOMEM;
            break;
        }
        if (l->n == 0)
            l->first = op;
        l->recs[l->n].view = view;
        l->recs[l->n].off = off;
        l->recs[l->n].len = (uint32_t)(nl - line + 1);
        l->n++;
        off += (uint64_t)(nl - line + 1);
    }
    munmap((void *)map, (size_t)size);
    l->size = off;
    return rc;
}

/* The core's sync thread, beside the loop thread's calls: it reads only
 * the path (fixed while the store is open), the file generation and its
 * own descriptor. A compaction renames a new file over the path (fsync'd
 * before the rename, everything appended before it copied in) and then
 * bumps the generation, so when the generation read here is the one the
 * descriptor was opened at, that file holds every entry appended before
 * this call began; otherwise the file at the path does. */
int js_log_sync(pl_store *s)
{
    js_log *l = &s->log;
    unsigned gen;

    if (!s->sync_on)
        return PL_OK;
    gen = __atomic_load_n(&l->file_gen, __ATOMIC_ACQUIRE);
    if (l->sync_fd >= 0 && l->sync_gen != gen) {
        close(l->sync_fd);
        l->sync_fd = -1;
    }
    if (l->sync_fd < 0) {
        if ((l->sync_fd = open(l->path, O_RDONLY | O_CLOEXEC)) < 0) {
            js_log_msg(s, PL_LOG_ERROR, "log_sync: open %s: %s", l->path, strerror(errno));
            return PL_ERR_IO;
        }
        l->sync_gen = gen;
    }
    if (fdatasync(l->sync_fd) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "log_sync: fdatasync %s: %s", l->path, strerror(errno));
        return PL_ERR_IO;
    }
    return PL_OK;
}

void js_log_close(js_log *l)
{
    if (l->sync_fd >= 0)
        close(l->sync_fd);
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    free(l->path);
    free(l->recs);
    free(l->scratch);
    memset(l, 0, sizeof *l);
    l->fd = -1;
    l->sync_fd = -1;
}

static int js_pwrite_all(int fd, const char *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

int js_log_append(pl_store *s, const pl_log_entry *e, size_t n, int sync)
{
    js_log *l = &s->log;
    size_t i, total = 0, pos = 0;
    uint64_t last = js_log_last(l);
    char *buf = NULL;
    int err = PL_ERR_NOMEM;

    for (i = 0; i < n; i++) {
        if (e[i].op != e[0].op + i || e[i].op == 0 || e[i].len > JS_ENTRY_MAX ||
            (e[i].len && !e[i].data)) {
            js_log_msg(s, PL_LOG_ERROR, "log_append: entry %zu (op %" PRIu64 "): ops must be"
                       " consecutive and positive, data at most 64 MiB", i, e[i].op);
            return PL_ERR_INVALID;
        }
        total += js_b64_len(e[i].len) + 128;
    }
    if (l->n && e[0].op != last + 1) {
        js_log_msg(s, PL_LOG_ERROR, "log_append: first op %" PRIu64 " does not continue the"
                   " log (last op %" PRIu64 ")", e[0].op, last);
        return PL_ERR_INVALID;
    }
    /* Room for the index first: after the write nothing may fail. */
    if (js_reserve_recs(l, l->n + n) != PL_OK || !(buf = malloc(total)))
        goto fail;
    for (i = 0; i < n; i++) {
        char op[JS_U64_TEXT_MAX], view[JS_U64_TEXT_MAX];
        size_t start = pos;
        int k;

        js_fmt_u64(op, e[i].op);
        js_fmt_u64(view, e[i].view);
        k = snprintf(buf + pos, total - pos, "{\"op\":%s,\"view\":%s,\"len\":%" PRIu32
                     ",\"data\":\"", op, view, e[i].len);
        pos += (size_t)k;
        js_b64_encode(buf + pos, e[i].data, e[i].len);
        pos += js_b64_len(e[i].len);
        buf[pos++] = '"';
        k = snprintf(buf + pos, total - pos, JS_CRC_TAG "%08x\"}\n",
                     js_crc32(buf + start, pos - start));
        pos += (size_t)k;
        l->recs[l->n + i].view = e[i].view;
        l->recs[l->n + i].off = l->size + start;
        l->recs[l->n + i].len = (uint32_t)(pos - start);
    }
    if (js_pwrite_all(l->fd, buf, pos, l->size) != 0 ||
        (sync && s->sync_on && fdatasync(l->fd) != 0)) {
        js_log_msg(s, PL_LOG_ERROR, "log_append: writing %s: %s", l->path, strerror(errno));
        /* Leave no partial line behind for the next append to follow. */
        if (ftruncate(l->fd, (off_t)l->size) != 0)
            js_log_msg(s, PL_LOG_ERROR, "log_append: cannot cut the partial write in %s: %s"
                       " (it is cut at the next open)", l->path, strerror(errno));
        err = PL_ERR_IO;
        goto fail;
    }
    if (l->n == 0)
        l->first = e[0].op;
    l->n += n;
    l->size += pos;
    s->log_bytes_since_ckpt += pos;
    free(buf);
    return PL_OK;
fail:
    free(buf);
    return err;
}

static int js_scratch(js_log *l, size_t need)
{
    uint8_t *nb;

    if (need <= l->scratch_cap)
        return PL_OK;
    if (!(nb = realloc(l->scratch, need)))
        return PL_ERR_NOMEM;
    l->scratch = nb;
    l->scratch_cap = need;
    return PL_OK;
}

int js_log_read(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud)
{
    js_log *l = &s->log;
    uint64_t last = js_log_last(l);
    size_t i, end;
    int stop;

    if (l->n == 0 || from > to || from > last || to < l->first)
        return PL_OK;
    if (from < l->first)
        from = l->first;
    if (to > last)
        to = last;
    i = (size_t)(from - l->first);
    end = (size_t)(to - l->first) + 1;
    while (i < end) {
        /* read a run of lines (about 1 MiB, at least one line) at once */
        size_t j = i + 1, chunk, k;
        uint64_t base = l->recs[i].off;
        ssize_t got;

        while (j < end && l->recs[j].off + l->recs[j].len - base <= JS_READ_CHUNK)
            j++;
        chunk = (size_t)(l->recs[j - 1].off + l->recs[j - 1].len - base);
        /* the lines, then room for one entry's data: base64 decodes to at
         * most 3/4 of the line holding it */
        if (js_scratch(l, chunk + chunk / 4 * 3 + 4) != PL_OK)
            return PL_ERR_NOMEM;
        got = pread(l->fd, l->scratch, chunk, (off_t)base);
        if (got != (ssize_t)chunk) {
            js_log_msg(s, PL_LOG_ERROR, "log_read: reading %s at byte %" PRIu64 ": %s",
                       l->path, base, got < 0 ? strerror(errno) : "short read");
            return PL_ERR_IO;
        }
        for (k = i; k < j; k++) {
            const char *line = (const char *)l->scratch + (l->recs[k].off - base);
            uint8_t *data = l->scratch + chunk;
            uint64_t op, view;
            uint32_t elen;
            size_t dlen = 0;
            const char *why;
            pl_log_entry le;

            why = js_line_parse(line, l->recs[k].len - 1, &op, &view, &elen, data,
                                chunk / 4 * 3 + 4, &dlen);
            if (!why && op != l->first + k)
                why = "op-number differs from the index";
            if (why) {
                js_log_msg(s, PL_LOG_ERROR, "log_read: %s at byte %" PRIu64 " (op %" PRIu64
                           "): %s", l->path, l->recs[k].off, l->first + k, why);
                return PL_ERR_CORRUPT;
            }
            le.op = op;
            le.view = view;
            le.data = data;
            le.len = (uint32_t)dlen;
            s->scanning = 1;
            stop = cb(ud, &le) != 0;
            s->scanning = 0;
            if (stop)
                return PL_OK;
        }
        i = j;
    }
    return PL_OK;
}

int js_log_truncate(pl_store *s, uint64_t after)
{
    js_log *l = &s->log;
    uint64_t keep, off;

    if (l->n == 0 || after >= js_log_last(l))
        return PL_OK;
    keep = after < l->first ? 0 : after - l->first + 1;
    off = l->recs[keep].off;
    if (ftruncate(l->fd, (off_t)off) != 0 || (s->sync_on && fdatasync(l->fd) != 0)) {
        js_log_msg(s, PL_LOG_ERROR, "log_truncate: cutting %s at byte %" PRIu64 ": %s",
                   l->path, off, strerror(errno));
        return PL_ERR_IO;
    }
    l->n = (size_t)keep;
    l->size = off;
    return PL_OK;
}

/* Copy [from, l->size) of the log into a new file and rename it over the
 * log: a crash leaves the old or the new log, both valid. */
int js_log_compact(pl_store *s, uint64_t before)
{
    js_log *l = &s->log;
    size_t drop, i;
    uint64_t base, off;
    char *tmp = NULL;
    int fd = -1, err = PL_ERR_NOMEM;
    size_t tlen;

    if (l->n == 0 || before <= l->first)
        return PL_OK;
    drop = before > js_log_last(l) ? l->n : (size_t)(before - l->first);
    base = drop < l->n ? l->recs[drop].off : l->size;
    tlen = strlen(l->path) + sizeof JS_TMP_SUFFIX;
    if (!(tmp = malloc(tlen)) || js_scratch(l, JS_READ_CHUNK) != PL_OK)
        goto fail;
    snprintf(tmp, tlen, "%s%s", l->path, JS_TMP_SUFFIX);
    err = PL_ERR_IO;
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        js_log_msg(s, PL_LOG_ERROR, "log_compact: cannot create %s: %s", tmp, strerror(errno));
        goto fail;
    }
    for (off = base; off < l->size;) {
        size_t want = l->size - off > JS_READ_CHUNK ? JS_READ_CHUNK : (size_t)(l->size - off);
        ssize_t got = pread(l->fd, l->scratch, want, (off_t)off);

        if (got <= 0 || js_pwrite_all(fd, (const char *)l->scratch, (size_t)got, off - base)) {
            js_log_msg(s, PL_LOG_ERROR, "log_compact: copying %s: %s", l->path,
                       got == 0 ? "short read" : strerror(errno));
            goto fail;
        }
        off += (uint64_t)got;
    }
    if ((s->sync_on && fsync(fd) != 0) || rename(tmp, l->path) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "log_compact: replacing %s: %s", l->path, strerror(errno));
        goto fail;
    }
    free(tmp);
    tmp = NULL;
    close(l->fd);
    l->fd = fd;
    fd = -1;
    __atomic_add_fetch(&l->file_gen, 1, __ATOMIC_RELEASE); /* log_sync reopens */
    for (i = drop; i < l->n; i++) {
        l->recs[i - drop] = l->recs[i];
        l->recs[i - drop].off -= base;
    }
    l->first += drop;
    l->n -= drop;
    l->size -= base;
    /* The rename is done; a failed directory sync only means the old log
     * may come back after a crash, which is still a valid log. */
    js_sync_dir(s);
    return PL_OK;
fail:
    if (fd >= 0)
        close(fd);
    if (tmp)
        unlink(tmp);
    free(tmp);
    return err;
}
