/*
 * js_file.c — checkpoint.json and meta.json: atomic writes and checked loads,
 * plus the encoding helpers the log shares (uint64, base64, CRC-32).
 *
 * Both files are replaced atomically: write <name>.tmp, fsync it, rename it
 * over <name>, fsync the directory. A reader therefore sees the old or the
 * new file, never a torn one, which is why a checkpoint that fails its
 * checks is refused at open instead of being cut like the log's tail.
 *
 * The checkpoint is written by hand (one record per line, so an operator
 * can grep and diff it) and read back with cJSON, which validates it as
 * JSON; every field is then checked for type and range before it reaches
 * the state, and a failure names the file, the record and the reason.
 *
 * Text fields (names, bodies, password hashes) are written as JSON strings
 * when they are valid UTF-8 without NUL bytes, which is what the core
 * stores; anything else is written as "<field>_b64". Token hashes are hex,
 * client replies base64: they are binary.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>
#include <sodium.h>

#include "store_json.h"

#define JS_CKPT_FORMAT "parley-store-json checkpoint"
#define JS_META_FORMAT "parley-store-json meta"
#define JS_EXACT_MAX ((uint64_t)1 << 53)

/* ---- encodings ---- */

int js_fmt_u64(char *out, uint64_t v)
{
    if (v <= JS_EXACT_MAX)
        return snprintf(out, JS_U64_TEXT_MAX, "%" PRIu64, v);
    return snprintf(out, JS_U64_TEXT_MAX, "\"%" PRIu64 "\"", v);
}

int js_json_u64(const cJSON *v, uint64_t *out)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;

        if (!(d >= 0) || d > (double)JS_EXACT_MAX || d != (double)(uint64_t)d)
            return -1;
        *out = (uint64_t)d;
        return 0;
    }
    if (cJSON_IsString(v) && v->valuestring) {
        const char *p = v->valuestring;
        uint64_t r = 0;

        if (!*p)
            return -1;
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || r > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                return -1;
            r = r * 10 + (uint64_t)(*p - '0');
        }
        *out = r;
        return 0;
    }
    return -1;
}

size_t js_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void js_b64_encode(char *out, const uint8_t *in, size_t n)
{
    sodium_bin2base64(out, js_b64_len(n) + 1, in, n, sodium_base64_VARIANT_ORIGINAL);
}

int js_b64_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *outlen)
{
    const char *end = NULL;

    if (sodium_base642bin(out, cap, in, len, NULL, outlen, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || end != in + len)
        return -1;
    return 0;
}

static uint32_t js_crc_table[256];

/* Filled when the module is loaded, before any instance exists, so no two
 * threads ever race on it. */
__attribute__((constructor)) static void js_crc_init(void)
{
    uint32_t i;

    for (i = 0; i < 256; i++) {
        uint32_t v = i;
        int k;

        for (k = 0; k < 8; k++)
            v = (v & 1) ? 0xedb88320u ^ (v >> 1) : v >> 1;
        js_crc_table[i] = v;
    }
}

uint32_t js_crc32(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t c = 0xffffffffu;
    size_t i;

    for (i = 0; i < n; i++)
        c = js_crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

char *js_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);

    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int js_sync_dir(pl_store *s)
{
    if (!s->sync_on)
        return PL_OK;
    if (fsync(s->dirfd) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "fsync of directory %s: %s", s->dir, strerror(errno));
        return PL_ERR_IO;
    }
    return PL_OK;
}

/* ---- JSON writer ---- */

static int js_utf8_text(const char *p, uint32_t n)
{
    const uint8_t *s = (const uint8_t *)p;
    uint32_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        uint32_t need, cp;

        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= need)
            return 0;
        for (uint32_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* overlong forms, surrogates and values past U+10FFFF */
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        i += need + 1;
    }
    return 1;
}

static void js_w_escaped(FILE *f, const char *p, uint32_t n)
{
    uint32_t i, run = 0;

    putc('"', f);
    for (i = 0; i < n; i++) {
        uint8_t c = (uint8_t)p[i];

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        fwrite(p + run, 1, i - run, f);
        run = i + 1;
        if (c == '"' || c == '\\') {
            putc('\\', f);
            putc(c, f);
        } else if (c == '\n') {
            fputs("\\n", f);
        } else if (c == '\t') {
            fputs("\\t", f);
        } else {
            fprintf(f, "\\u%04x", c);
        }
    }
    fwrite(p + run, 1, n - run, f);
    putc('"', f);
}

static int js_w_b64(FILE *f, const char *p, uint32_t n)
{
    char *tmp = malloc(js_b64_len(n) + 1);

    if (!tmp)
        return PL_ERR_NOMEM;
    js_b64_encode(tmp, (const uint8_t *)p, n);
    putc('"', f);
    fputs(tmp, f);
    putc('"', f);
    free(tmp);
    return PL_OK;
}

/* ,"key":"text" or ,"key_b64":"..." */
static int js_w_text(FILE *f, const char *key, const char *p, uint32_t n)
{
    if (js_utf8_text(p, n)) {
        fprintf(f, ",\"%s\":", key);
        js_w_escaped(f, p, n);
        return PL_OK;
    }
    fprintf(f, ",\"%s_b64\":", key);
    return js_w_b64(f, p, n);
}

static void js_w_u64(FILE *f, const char *sep, const char *key, uint64_t v)
{
    char num[JS_U64_TEXT_MAX];

    js_fmt_u64(num, v);
    fprintf(f, "%s\"%s\":%s", sep, key, num);
}

static void js_w_hex(FILE *f, const char *key, const char *p, uint32_t n)
{
    static const char hex[] = "0123456789abcdef";
    uint32_t i;

    fprintf(f, ",\"%s\":\"", key);
    for (i = 0; i < n; i++) {
        putc(hex[(uint8_t)p[i] >> 4], f);
        putc(hex[(uint8_t)p[i] & 15], f);
    }
    putc('"', f);
}

static void js_w_meta(FILE *f, const js_state *st, int state)
{
    size_t i;
    int first = 1;

    fputs("{", f);
    for (i = 0; i < st->n_meta; i++) {
        const js_meta *e = &st->meta[i];

        if (e->state != state)
            continue;
        /* keys are [A-Za-z0-9_.-] (meta_set checks), no escaping needed */
        fprintf(f, "%s\n\"%s\":{", first ? "" : ",", e->key);
        js_w_u64(f, "", "val", e->val);
        js_w_u64(f, ",", "seq", e->seq);
        fputs("}", f);
        first = 0;
    }
    fputs(first ? "}" : "\n}", f);
}

typedef int (*js_writer)(pl_store *s, FILE *f);

/* Write through <path>.tmp and rename over <path>. */
static int js_atomic_write(pl_store *s, const char *name, js_writer w)
{
    char *path = js_path(s->dir, name), *tmp = NULL;
    FILE *f = NULL;
    int fd = -1, err = PL_ERR_NOMEM;
    size_t tlen;

    if (!path)
        goto fail;
    tlen = strlen(path) + sizeof JS_TMP_SUFFIX;
    if (!(tmp = malloc(tlen)))
        goto fail;
    snprintf(tmp, tlen, "%s%s", path, JS_TMP_SUFFIX);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || !(f = fdopen(fd, "w"))) {
        js_log_msg(s, PL_LOG_ERROR, "cannot create %s: %s", tmp, strerror(errno));
        err = PL_ERR_IO;
        goto fail;
    }
    fd = -1; /* owned by f now */
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    if ((err = w(s, f)) != PL_OK)
        goto fail;
    err = PL_ERR_IO;
    if (fflush(f) != 0 || ferror(f)) {
        js_log_msg(s, PL_LOG_ERROR, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (s->sync_on && fsync(fileno(f)) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "fsync %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        js_log_msg(s, PL_LOG_ERROR, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "rename %s -> %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    free(tmp);
    free(path);
    return js_sync_dir(s);
fail:
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (tmp)
        unlink(tmp);
    free(tmp);
    free(path);
    return err;
}

static int js_ckpt_writer(pl_store *s, FILE *f)
{
    const js_state *st = &s->st;
    size_t i;
    int err, sep;

    fprintf(f, "{\"format\":\"%s\",\"version\":%d", JS_CKPT_FORMAT, JS_FORMAT_VERSION);
    js_w_u64(f, ",", "applied", s->applied);
    js_w_u64(f, ",", "meta_seq", st->meta_seq);
    fputs(",\n\"meta\":", f);
    js_w_meta(f, st, 1);

    fputs(",\n\"accounts\":[", f);
    for (i = 0; i < st->n_acc; i++) {
        const js_account *a = st->acc_by_name[i];

        fputs(i ? ",\n" : "\n", f);
        js_w_u64(f, "{", "uid", a->uid);
        if ((err = js_w_text(f, "name", a->name, a->name_len)) != PL_OK ||
            (err = js_w_text(f, "pwhash", a->pwhash, a->pwhash_len)) != PL_OK)
            return err;
        js_w_u64(f, ",", "created_ms", a->created_ms);
        putc('}', f);
    }
    fputs("\n],\n\"sessions\":[", f);
    for (i = 0; i < st->n_ses; i++) {
        const js_session *r = st->ses[i];

        fputs(i ? ",\n" : "\n", f);
        js_w_u64(f, "{", "uid", r->uid);
        js_w_hex(f, "token_hash", r->hash, r->hash_len);
        js_w_u64(f, ",", "created_ms", r->created_ms);
        putc('}', f);
    }
    fputs("\n],\n\"messages\":[", f);
    for (i = 0, sep = 0; i < st->n_msgs; i++) {
        const js_message *m = st->msgs[i].m;

        if (!m) /* deleted inside the last transaction, not yet compacted */
            continue;
        fputs(sep ? ",\n" : "\n", f);
        sep = 1;
        js_w_u64(f, "{", "id", m->id);
        js_w_u64(f, ",", "from_uid", m->from_uid);
        js_w_u64(f, ",", "to_uid", m->to_uid);
        js_w_u64(f, ",", "time_ms", m->time_ms);
        js_w_u64(f, ",", "flags", m->flags);
        if ((err = js_w_text(f, "from_name", m->from_name, m->from_len)) != PL_OK ||
            (err = js_w_text(f, "to_name", m->to_name, m->to_len)) != PL_OK ||
            (err = js_w_text(f, "body", m->body, m->body_len)) != PL_OK)
            return err;
        putc('}', f);
    }
    fputs("\n],\n\"clients\":[", f);
    for (i = 0; i < st->n_cli; i++) {
        const js_client *c = st->cli[i];

        fputs(i ? ",\n" : "\n", f);
        js_w_u64(f, "{", "client_id", c->client_id);
        js_w_u64(f, ",", "request_no", c->request_no);
        js_w_u64(f, ",", "op", c->op);
        fputs(",\"reply_b64\":", f);
        if ((err = js_w_b64(f, c->reply, c->reply_len)) != PL_OK)
            return err;
        putc('}', f);
    }
    fputs("\n]}\n", f);
    return PL_OK;
}

int js_ckpt_write(pl_store *s)
{
    int err;

    /* The log up to the applied op first: log_append_nosync leaves entries
     * unsynced, and a checkpoint that outlived them would be a state whose
     * log a restart cannot find. */
    if (s->sync_on && s->log.fd >= 0 && fdatasync(s->log.fd) != 0) {
        js_log_msg(s, PL_LOG_ERROR, "checkpoint: fdatasync %s: %s", s->log.path, strerror(errno));
        return PL_ERR_IO;
    }
    err = js_atomic_write(s, JS_CKPT_FILE, js_ckpt_writer);

    if (err == PL_OK) {
        s->ckpt_applied = s->applied;
        s->dirty = 0;
        s->log_bytes_since_ckpt = 0;
    }
    return err;
}

static int js_meta_writer(pl_store *s, FILE *f)
{
    fprintf(f, "{\"format\":\"%s\",\"version\":%d,\n\"meta\":", JS_META_FORMAT,
            JS_FORMAT_VERSION);
    js_w_meta(f, &s->st, 0);
    fputs("}\n", f);
    return PL_OK;
}

int js_meta_write(pl_store *s)
{
    return js_atomic_write(s, JS_META_FILE, js_meta_writer);
}

/* ---- JSON reader ---- */

/* Error reporting for the loaders: "<file>: <where>: <reason>". */
typedef struct js_rd {
    const char *file;
    char *err;
    size_t errlen;
} js_rd;

static int js_bad(js_rd *r, const char *where, size_t idx, const char *fmt, const char *arg)
{
    char reason[160];
    int n = snprintf(r->err, r->errlen, "%s: ", r->file);

    snprintf(reason, sizeof reason, fmt, arg);
    if (n >= 0 && (size_t)n < r->errlen) {
        if (idx != (size_t)-1)
            snprintf(r->err + n, r->errlen - (size_t)n, "%s[%zu]: %s", where, idx, reason);
        else
            snprintf(r->err + n, r->errlen - (size_t)n, "%s: %s", where, reason);
    }
    /* reason may quote a key from the file, which can hold any byte: keep
     * the error one line and free of control characters */
    for (char *c = r->err; r->errlen && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    return PL_ERR_CORRUPT;
}

static int js_get_u64(js_rd *r, const cJSON *o, const char *key, const char *where,
                      size_t idx, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

    if (!v)
        return js_bad(r, where, idx, "missing field \"%s\"", key);
    if (js_json_u64(v, out) != 0)
        return js_bad(r, where, idx, "field \"%s\" is not an unsigned 64-bit integer", key);
    return PL_OK;
}

/* A byte string: "<key>" as text or "<key>_b64". *owned is malloc'd when
 * decoding was needed (caller frees). */
static int js_get_text(js_rd *r, const cJSON *o, const char *key, const char *where,
                       size_t idx, pl_str *out, uint8_t **owned)
{
    char bkey[40];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key), *b;
    size_t n;

    *owned = NULL;
    snprintf(bkey, sizeof bkey, "%s_b64", key);
    b = cJSON_GetObjectItemCaseSensitive(o, bkey);
    if (v && b)
        return js_bad(r, where, idx, "both \"%s\" and its _b64 form are present", key);
    if (v) {
        if (!cJSON_IsString(v) || !v->valuestring)
            return js_bad(r, where, idx, "field \"%s\" is not a string", key);
        n = strlen(v->valuestring);
        if (n > JS_FIELD_MAX)
            return js_bad(r, where, idx, "field \"%s\" is over 16 MiB", key);
        out->ptr = v->valuestring;
        out->len = (uint32_t)n;
        return PL_OK;
    }
    if (!b)
        return js_bad(r, where, idx, "missing field \"%s\"", key);
    if (!cJSON_IsString(b) || !b->valuestring)
        return js_bad(r, where, idx, "field \"%s\" is not a string", bkey);
    n = strlen(b->valuestring);
    if (n / 4 * 3 > JS_FIELD_MAX + 3)
        return js_bad(r, where, idx, "field \"%s\" is over 16 MiB", bkey);
    if (!(*owned = malloc(n / 4 * 3 + 3)))
        return PL_ERR_NOMEM;
    if (js_b64_decode(*owned, n / 4 * 3 + 3, b->valuestring, n, &n) != 0 || n > JS_FIELD_MAX) {
        free(*owned);
        *owned = NULL;
        return js_bad(r, where, idx, "field \"%s\" is not valid base64", bkey);
    }
    out->ptr = (const char *)*owned;
    out->len = (uint32_t)n;
    return PL_OK;
}

static int js_get_hex(js_rd *r, const cJSON *o, const char *key, const char *where,
                      size_t idx, pl_str *out, uint8_t **owned)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    size_t n, bin = 0;

    *owned = NULL;
    if (!cJSON_IsString(v) || !v->valuestring)
        return js_bad(r, where, idx, "field \"%s\" is missing or not a string", key);
    n = strlen(v->valuestring);
    if (n % 2 || n / 2 > JS_FIELD_MAX)
        return js_bad(r, where, idx, "field \"%s\" is not even-length hex up to 16 MiB", key);
    if (!(*owned = malloc(n / 2 + 1)))
        return PL_ERR_NOMEM;
    if (sodium_hex2bin(*owned, n / 2 + 1, v->valuestring, n, NULL, &bin, NULL) != 0 ||
        bin != n / 2) {
        free(*owned);
        *owned = NULL;
        return js_bad(r, where, idx, "field \"%s\" is not hex", key);
    }
    out->ptr = (const char *)*owned;
    out->len = (uint32_t)bin;
    return PL_OK;
}

/* Read a whole file (at most max bytes). *buf NULL and PL_OK when missing. */
static int js_slurp(const char *path, uint64_t max, char **buf, size_t *len,
                    char *err, size_t errlen)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t got = 0;

    *buf = NULL;
    *len = 0;
    if (fd < 0) {
        if (errno == ENOENT)
            return PL_OK;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return PL_ERR_IO;
    }
    if (fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return PL_ERR_IO;
    }
    if ((uint64_t)sb.st_size > max) {
        snprintf(err, errlen, "%s: %lld bytes is over the %" PRIu64 " byte limit for this file",
                 path, (long long)sb.st_size, max);
        close(fd);
        return PL_ERR_CORRUPT;
    }
    if (!(*buf = malloc((size_t)sb.st_size + 1))) {
        snprintf(err, errlen, "out of memory reading %s (%lld bytes)", path,
                 (long long)sb.st_size);
        close(fd);
        return PL_ERR_NOMEM;
    }
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, *buf + got, (size_t)sb.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, n ? strerror(errno) : "short read");
            close(fd);
            free(*buf);
            *buf = NULL;
            return PL_ERR_IO;
        }
        got += (size_t)n;
    }
    close(fd);
    (*buf)[got] = '\0';
    *len = got;
    return PL_OK;
}

static cJSON *js_parse(js_rd *r, const char *buf, size_t len, const char *format)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    const cJSON *v;

    if (!root) {
        char where[64];
        size_t off = end ? (size_t)(end - buf) : 0, line = 1, i;

        for (i = 0; i < off && i < len; i++)
            line += buf[i] == '\n';
        snprintf(where, sizeof where, "line %zu (byte %zu)", line, off);
        js_bad(r, where, (size_t)-1, "%s", "not valid JSON (or out of memory)");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        js_bad(r, "top level", (size_t)-1, "%s", "not a JSON object");
        goto fail;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(v) || strcmp(v->valuestring, format) != 0) {
        js_bad(r, "format", (size_t)-1, "expected \"%s\"", format);
        goto fail;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!cJSON_IsNumber(v) || v->valuedouble != JS_FORMAT_VERSION) {
        js_bad(r, "version", (size_t)-1, "%s", "this plugin reads version 1 only"
               " (written by a newer parley?)");
        goto fail;
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

static int js_key_ok(const char *k)
{
    size_t n = strlen(k), i;

    if (n == 0 || n > JS_META_KEY_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        char c = k[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* Merge a "meta" object: for each key the copy with the higher seq wins. */
static int js_load_meta_obj(pl_store *s, js_rd *r, const cJSON *obj, int state)
{
    const cJSON *e;

    if (!cJSON_IsObject(obj))
        return js_bad(r, "meta", (size_t)-1, "%s", "missing or not an object");
    cJSON_ArrayForEach(e, obj) {
        js_meta m;
        js_meta *cur;

        memset(&m, 0, sizeof m);
        if (!e->string || !js_key_ok(e->string) || strcmp(e->string, JS_APPLIED_KEY) == 0)
            return js_bad(r, "meta", (size_t)-1, "bad key \"%.64s\"", e->string ? e->string : "");
        if (!cJSON_IsObject(e))
            return js_bad(r, "meta", (size_t)-1, "key \"%.64s\" is not an object", e->string);
        if (js_get_u64(r, e, "val", e->string, (size_t)-1, &m.val) ||
            js_get_u64(r, e, "seq", e->string, (size_t)-1, &m.seq))
            return PL_ERR_CORRUPT;
        memcpy(m.key, e->string, strlen(e->string) + 1);
        m.state = state;
        cur = js_meta_find(&s->st, m.key);
        if (cur && cur->seq >= m.seq)
            continue;
        if (js_meta_put(&s->st, &m) != PL_OK)
            return js_bad(r, "meta", (size_t)-1, "%s", "more than 4096 keys");
        if (m.seq > s->st.meta_seq)
            s->st.meta_seq = m.seq;
    }
    return PL_OK;
}

static const cJSON *js_array(js_rd *r, const cJSON *root, const char *key)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);

    if (!cJSON_IsArray(a)) {
        js_bad(r, key, (size_t)-1, "%s", "missing or not an array");
        return NULL;
    }
    return a;
}

static int js_load_accounts(pl_store *s, js_rd *r, const cJSON *root)
{
    const cJSON *arr = js_array(r, root, "accounts"), *e;
    size_t i = 0;

    if (!arr)
        return PL_ERR_CORRUPT;
    cJSON_ArrayForEach(e, arr) {
        uint64_t uid, created;
        pl_str name, pw;
        uint8_t *o1 = NULL, *o2 = NULL;
        js_account *a = NULL;
        int err;

        if (!cJSON_IsObject(e))
            return js_bad(r, "accounts", i, "%s", "not an object");
        if ((err = js_get_u64(r, e, "uid", "accounts", i, &uid)) ||
            (err = js_get_u64(r, e, "created_ms", "accounts", i, &created)) ||
            (err = js_get_text(r, e, "name", "accounts", i, &name, &o1)) ||
            (err = js_get_text(r, e, "pwhash", "accounts", i, &pw, &o2)))
            goto next;
        if (js_acc_by_uid(&s->st, uid) || js_acc_by_name(&s->st, name.ptr, name.len, NULL)) {
            err = js_bad(r, "accounts", i, "%s", "duplicate uid or name");
            goto next;
        }
        err = PL_ERR_NOMEM;
        if ((a = js_account_new(uid, name, pw, created)) && (err = js_acc_insert(&s->st, a)) == PL_OK)
            a = NULL;
next:
        free(a);
        free(o1);
        free(o2);
        if (err)
            return err;
        i++;
    }
    return PL_OK;
}

static int js_load_sessions(pl_store *s, js_rd *r, const cJSON *root)
{
    const cJSON *arr = js_array(r, root, "sessions"), *e;
    size_t i = 0;

    if (!arr)
        return PL_ERR_CORRUPT;
    cJSON_ArrayForEach(e, arr) {
        uint64_t uid, created;
        pl_str h;
        uint8_t *o = NULL;
        js_session *rec = NULL;
        int err;

        if (!cJSON_IsObject(e))
            return js_bad(r, "sessions", i, "%s", "not an object");
        if ((err = js_get_u64(r, e, "uid", "sessions", i, &uid)) ||
            (err = js_get_u64(r, e, "created_ms", "sessions", i, &created)) ||
            (err = js_get_hex(r, e, "token_hash", "sessions", i, &h, &o)))
            goto next;
        if (js_ses_find(&s->st, h.ptr, h.len, NULL)) {
            err = js_bad(r, "sessions", i, "%s", "duplicate token_hash");
            goto next;
        }
        err = PL_ERR_NOMEM;
        if ((rec = js_session_new(h, uid, created)) && (err = js_ses_insert(&s->st, rec)) == PL_OK)
            rec = NULL;
next:
        free(rec);
        free(o);
        if (err)
            return err;
        i++;
    }
    return PL_OK;
}

static int js_load_messages(pl_store *s, js_rd *r, const cJSON *root)
{
    const cJSON *arr = js_array(r, root, "messages"), *e;
    size_t i = 0;
    uint64_t prev = 0;

    if (!arr)
        return PL_ERR_CORRUPT;
    cJSON_ArrayForEach(e, arr) {
        pl_message_rec m;
        uint64_t flags;
        uint8_t *o1 = NULL, *o2 = NULL, *o3 = NULL;
        js_message *rec = NULL;
        int err;

        memset(&m, 0, sizeof m);
        if (!cJSON_IsObject(e))
            return js_bad(r, "messages", i, "%s", "not an object");
        if ((err = js_get_u64(r, e, "id", "messages", i, &m.id)) ||
            (err = js_get_u64(r, e, "from_uid", "messages", i, &m.from_uid)) ||
            (err = js_get_u64(r, e, "to_uid", "messages", i, &m.to_uid)) ||
            (err = js_get_u64(r, e, "time_ms", "messages", i, &m.time_ms)) ||
            (err = js_get_u64(r, e, "flags", "messages", i, &flags)) ||
            (err = js_get_text(r, e, "from_name", "messages", i, &m.from_name, &o1)) ||
            (err = js_get_text(r, e, "to_name", "messages", i, &m.to_name, &o2)) ||
            (err = js_get_text(r, e, "body", "messages", i, &m.body, &o3)))
            goto next;
        /* Ascending order is what the writer produces and what keeps the
         * load linear; anything else was edited or damaged. */
        if (flags > UINT32_MAX || (i > 0 && m.id <= prev)) {
            err = js_bad(r, "messages", i, "%s", flags > UINT32_MAX ? "flags over 32 bits"
                         : "ids not strictly ascending");
            goto next;
        }
        m.flags = (uint32_t)flags;
        prev = m.id;
        err = PL_ERR_NOMEM;
        if ((rec = js_message_new(&m)) && (err = js_msg_insert(&s->st, rec)) == PL_OK)
            rec = NULL;
next:
        free(rec);
        free(o1);
        free(o2);
        free(o3);
        if (err)
            return err;
        i++;
    }
    return PL_OK;
}

static int js_load_clients(pl_store *s, js_rd *r, const cJSON *root)
{
    const cJSON *arr = js_array(r, root, "clients"), *e;
    size_t i = 0;

    if (!arr)
        return PL_ERR_CORRUPT;
    cJSON_ArrayForEach(e, arr) {
        uint64_t id, rno, op;
        pl_str reply;
        uint8_t *o = NULL;
        js_client *c = NULL;
        int err;

        if (!cJSON_IsObject(e))
            return js_bad(r, "clients", i, "%s", "not an object");
        if ((err = js_get_u64(r, e, "client_id", "clients", i, &id)) ||
            (err = js_get_u64(r, e, "request_no", "clients", i, &rno)) ||
            (err = js_get_u64(r, e, "op", "clients", i, &op)) ||
            (err = js_get_text(r, e, "reply", "clients", i, &reply, &o)))
            goto next;
        if (js_cli_find(&s->st, id, NULL)) {
            err = js_bad(r, "clients", i, "%s", "duplicate client_id");
            goto next;
        }
        err = PL_ERR_NOMEM;
        if ((c = js_client_new(id, rno, op, reply)) && (err = js_cli_insert(&s->st, c)) == PL_OK)
            c = NULL;
next:
        free(c);
        free(o);
        if (err)
            return err;
        i++;
    }
    return PL_OK;
}

int js_ckpt_load(pl_store *s, char *err, size_t errlen)
{
    char *path = js_path(s->dir, JS_CKPT_FILE), *buf = NULL;
    size_t len;
    cJSON *root = NULL;
    js_rd r = { JS_CKPT_FILE, err, errlen };
    int rc;

    if (!path) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    r.file = path;
    if ((rc = js_slurp(path, JS_CKPT_FILE_MAX, &buf, &len, err, errlen)) != PL_OK || !buf)
        goto out;
    rc = PL_ERR_CORRUPT;
    if (!(root = js_parse(&r, buf, len, JS_CKPT_FORMAT)))
        goto out;
    free(buf);
    buf = NULL;
    if (js_get_u64(&r, root, "applied", "top level", (size_t)-1, &s->applied) ||
        js_get_u64(&r, root, "meta_seq", "top level", (size_t)-1, &s->st.meta_seq))
        goto out;
    if ((rc = js_load_meta_obj(s, &r, cJSON_GetObjectItemCaseSensitive(root, "meta"), 1)) ||
        (rc = js_load_accounts(s, &r, root)) || (rc = js_load_sessions(s, &r, root)) ||
        (rc = js_load_messages(s, &r, root)) || (rc = js_load_clients(s, &r, root)))
        goto out;
    s->ckpt_applied = s->applied;
    rc = PL_OK;
out:
    if (rc == PL_ERR_NOMEM && err[0] == '\0')
        snprintf(err, errlen, "out of memory loading %s", path);
    cJSON_Delete(root);
    free(buf);
    free(path);
    return rc;
}

int js_meta_load(pl_store *s, char *err, size_t errlen)
{
    char *path = js_path(s->dir, JS_META_FILE), *buf = NULL;
    size_t len;
    cJSON *root = NULL;
    js_rd r = { JS_META_FILE, err, errlen };
    int rc;

    if (!path) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    r.file = path;
    if ((rc = js_slurp(path, JS_META_FILE_MAX, &buf, &len, err, errlen)) != PL_OK || !buf)
        goto out;
    rc = PL_ERR_CORRUPT;
    if (!(root = js_parse(&r, buf, len, JS_META_FORMAT)))
        goto out;
    rc = js_load_meta_obj(s, &r, cJSON_GetObjectItemCaseSensitive(root, "meta"), 0);
out:
    cJSON_Delete(root);
    free(buf);
    free(path);
    return rc;
}
