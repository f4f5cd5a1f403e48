/*
 * store_json.h — internals of the "json" store plugin, shared by its files:
 *   store_json.c  the pl_store_plugin functions, transactions, lifecycle
 *   js_state.c    the in-memory state: containers, indexes, undo log
 *   js_log.c      log.jsonl: append, scan and repair, truncate, compact
 *   js_file.c     checkpoint.json and meta.json: write atomically, load
 * Nothing here is part of the plugin ABI. Prefix: js_.
 * See the comment at the top of store_json.c for the design.
 */
#ifndef PL_STORE_JSON_H
#define PL_STORE_JSON_H

#include <stdio.h>
#include <stdint.h>
#include <stddef.h>

#include <parley/store.h>

#define JS_FORMAT_VERSION 1
#define JS_LOG_FILE "log.jsonl"
#define JS_CKPT_FILE "checkpoint.json"
#define JS_META_FILE "meta.json"
#define JS_TMP_SUFFIX ".tmp"
#define JS_APPLIED_KEY "applied"

/* Limits on what one record may hold. The API refuses larger values with
 * PL_ERR_INVALID and the loaders report them as corrupt, so whatever was
 * accepted once loads again. */
#define JS_FIELD_MAX (16u * 1024u * 1024u)   /* one name, body, hash or reply */
#define JS_ENTRY_MAX (64u * 1024u * 1024u)   /* one log entry's data */
#define JS_META_KEY_MAX 64u                  /* meta key length */
#define JS_META_MAX 4096u                    /* number of meta keys */
#define JS_CKPT_FILE_MAX ((uint64_t)8 << 30) /* checkpoint.json, 8 GiB */
#define JS_META_FILE_MAX (1u << 20)          /* meta.json, 1 MiB */

/* ---- records (each one malloc'd block: struct + its bytes) ---- */

typedef struct js_account {
    uint64_t uid;
    uint64_t created_ms;
    uint32_t name_len, pwhash_len;
    char *name, *pwhash;      /* point into the same block */
} js_account;

typedef struct js_session {
    uint64_t uid;
    uint64_t created_ms;
    uint32_t hash_len;
    char *hash;
} js_session;

typedef struct js_message {
    uint64_t id, from_uid, to_uid, time_ms;
    uint32_t flags;
    uint32_t from_len, to_len, body_len;
    char *from_name, *to_name, *body;
} js_message;

typedef struct js_client {
    uint64_t client_id, request_no, op;
    uint32_t reply_len;
    char *reply;
} js_client;

/* ---- small containers ---- */

/* Open-addressing hash map uint64 -> non-NULL pointer (linear probing,
 * backward-shift deletion, so no tombstones). */
typedef struct js_map {
    struct js_slot { uint64_t key; void *val; } *slots;
    size_t cap, n;            /* cap is 0 or a power of two */
} js_map;

void *js_map_get(const js_map *m, uint64_t key);
int js_map_put(js_map *m, uint64_t key, void *val);  /* insert or replace */
void *js_map_del(js_map *m, uint64_t key);           /* returns the old value */
void js_map_free(js_map *m);

/* Messages sorted by id (a per-user or per-pair index). */
typedef struct js_mvec {
    js_message **v;
    size_t n, cap;
} js_mvec;

/* The messages one uid received or sent; exists as long as the process. */
typedef struct js_user {
    js_mvec recv;             /* to_uid == uid, every flag */
    js_mvec sent;             /* from_uid == uid, every flag */
    js_mvec unread;           /* to_uid == uid and (flags & 5) == 0 */
    uint64_t n_read;          /* to_uid == uid and (flags & 5) == 1 */
    js_map peers;             /* peer uid > uid -> js_mvec *: both directions */
} js_user;

typedef struct js_meta {
    char key[JS_META_KEY_MAX + 1];
    uint64_t val;
    uint64_t seq;             /* store-wide write counter: the newest copy wins at load */
    int state;                /* 1: set inside a transaction (lives in the checkpoint),
                                 0: replica metadata (lives in meta.json) */
} js_meta;

/* The whole materialised state. */
typedef struct js_state {
    js_account **acc_by_name; /* sorted by name */
    size_t n_acc, cap_acc;
    js_map acc_by_uid;
    js_session **ses;         /* sorted by token hash */
    size_t n_ses, cap_ses;
    struct js_mslot { uint64_t id; js_message *m; } *msgs; /* by id; m NULL = deleted */
    size_t n_msgs, cap_msgs, n_dead;
    js_map users;             /* uid -> js_user * */
    js_client **cli;          /* sorted by client_id */
    size_t n_cli, cap_cli;
    js_meta *meta;
    size_t n_meta, cap_meta;
    uint64_t meta_seq;
} js_state;

/* ---- undo log (inverse of each mutation since begin) ---- */

enum js_undo_kind {
    JU_ACC_INSERTED, JU_ACC_REMOVED,
    JU_SES_INSERTED, JU_SES_REMOVED,
    JU_MSG_INSERTED, JU_MSG_REMOVED, JU_MSG_FLAGS,
    JU_CLI_INSERTED, JU_CLI_REMOVED,
    JU_META
};

typedef struct js_undo {
    int kind;
    void *rec;                /* the record inserted or removed */
    uint64_t id;              /* JU_MSG_FLAGS: message id */
    uint32_t old_flags;       /* JU_MSG_FLAGS */
    js_meta old_meta;         /* JU_META: the entry before, or key only */
    int had_meta;             /* JU_META: 0 when the key was new */
} js_undo;

typedef struct js_undo_log {
    js_undo *v;
    size_t n, cap;
    int active;               /* record mutations (inside begin..commit) */
} js_undo_log;

/* ---- the log file's in-memory index ---- */

typedef struct js_logrec {
    uint64_t view;
    uint64_t off;             /* byte offset of the line in log.jsonl */
    uint32_t len;             /* line length including '\n' */
} js_logrec;

typedef struct js_log {
    int fd;
    int sync_fd;              /* log_sync's own descriptor (sync thread), or -1 */
    unsigned sync_gen;        /* file_gen when sync_fd was opened (sync thread) */
    unsigned file_gen;        /* bumped when a compaction replaces the file (atomic) */
    char *path;
    uint64_t first;           /* op of recs[0]; meaningless when n == 0 */
    js_logrec *recs;
    size_t n, cap;
    uint64_t size;            /* file size: end of the last good line */
    uint8_t *scratch;         /* log_read's line and data buffers */
    size_t scratch_cap;
} js_log;

/* ---- the instance ---- */

struct pl_store {
    pl_store_host host;
    char *dir;
    int dirfd;                /* open, flock'ed: one process per data directory */
    int sync_on;
    uint64_t ckpt_ops;        /* checkpoint after this many applied ops ... */
    uint64_t ckpt_bytes;      /* ... or this many bytes appended to the log */
    js_state st;
    js_undo_log undo;
    js_log log;
    int in_txn;
    int scanning;             /* inside a scan callback (store.h forbids re-entry) */
    int dirty;                /* state differs from checkpoint.json */
    uint64_t applied;
    uint64_t ckpt_applied;    /* applied op-number in checkpoint.json */
    uint64_t ckpt_due;        /* commit(op >= this) writes the next checkpoint */
    uint64_t log_bytes_since_ckpt;
    /* getters' results and scratch */
    uint8_t *buf;
    size_t buf_cap;
};

/* logging through the host; prefixes "store json: " */
void js_log_msg(pl_store *s, int level, const char *fmt, ...) PL_PRINTF(3, 4);

/* ---- js_state.c ---- */
void js_state_free(js_state *st);
int js_name_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen);

js_account *js_account_new(uint64_t uid, pl_str name, pl_str pwhash, uint64_t created);
js_session *js_session_new(pl_str hash, uint64_t uid, uint64_t created);
js_message *js_message_new(const pl_message_rec *m);
js_client *js_client_new(uint64_t id, uint64_t request_no, uint64_t op, pl_str reply);

js_account *js_acc_by_name(const js_state *st, const char *name, uint32_t len, size_t *pos);
js_account *js_acc_by_uid(const js_state *st, uint64_t uid);
js_session *js_ses_find(const js_state *st, const char *h, uint32_t len, size_t *pos);
js_message *js_msg_find(const js_state *st, uint64_t id);
size_t js_msg_lower(const js_state *st, uint64_t id); /* first slot with id >= id */
js_client *js_cli_find(const js_state *st, uint64_t id, size_t *pos);
js_meta *js_meta_find(const js_state *st, const char *key);
js_user *js_user_get(const js_state *st, uint64_t uid);
js_mvec *js_pair_get(const js_state *st, uint64_t a, uint64_t b);

/* Raw insert/remove keeping every index right; no undo. Insert takes
 * ownership on PL_OK. Remove returns the record, now owned by the caller. */
int js_acc_insert(js_state *st, js_account *a);
js_account *js_acc_remove(js_state *st, uint64_t uid);
int js_ses_insert(js_state *st, js_session *r);
js_session *js_ses_remove(js_state *st, const char *h, uint32_t len);
int js_msg_insert(js_state *st, js_message *m);
js_message *js_msg_remove(js_state *st, uint64_t id);
int js_msg_set_flags(js_state *st, js_message *m, uint32_t flags);
int js_cli_insert(js_state *st, js_client *c);
js_client *js_cli_remove(js_state *st, uint64_t id);
int js_meta_put(js_state *st, const js_meta *e);
void js_meta_remove(js_state *st, const char *key);
void js_msg_compact(js_state *st); /* drop deleted slots; only without pending undo */

size_t js_mvec_lower(const js_mvec *v, uint64_t id);

/* Undo log: record before mutating; on failure to record, do not mutate. */
int js_undo_push(js_undo_log *u, const js_undo *e);
void js_undo_commit(js_undo_log *u);               /* forget; free removed records */
void js_undo_rollback(js_undo_log *u, js_state *st); /* apply inverses, newest first */
void js_undo_free(js_undo_log *u);

/* ---- js_log.c ---- */
/* Open (create) and scan the log, cutting a bad tail with a warning. */
int js_log_open(pl_store *s, char *err, size_t errlen);
void js_log_close(js_log *l);
int js_log_append(pl_store *s, const pl_log_entry *e, size_t n, int sync);
int js_log_sync(pl_store *s);
int js_log_read(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud);
int js_log_truncate(pl_store *s, uint64_t after);
int js_log_compact(pl_store *s, uint64_t before);
uint64_t js_log_last(const js_log *l);

/* ---- js_file.c ---- */
/* Write checkpoint.json for the current (committed) state. */
int js_ckpt_write(pl_store *s);
/* Load checkpoint.json if present into s->st / s->applied. */
int js_ckpt_load(pl_store *s, char *err, size_t errlen);
int js_meta_write(pl_store *s);
int js_meta_load(pl_store *s, char *err, size_t errlen);
/* Atomic replace: write tmp, fsync (when sync), rename over, fsync dir. */
int js_sync_dir(pl_store *s);
char *js_path(const char *dir, const char *name); /* malloc'd dir/name */
uint32_t js_crc32(const void *p, size_t n);

/* uint64 in JSON: a number up to 2^53 (exact in a double, so any JSON tool
 * reads it right), a decimal string above. The reader takes both. */
#define JS_U64_TEXT_MAX 24
int js_fmt_u64(char *out, uint64_t v);           /* returns length; out >= 24 bytes */
struct cJSON;
int js_json_u64(const struct cJSON *v, uint64_t *out); /* 0 ok, -1 wrong type/range */

/* Base64 (standard alphabet, padded) via libsodium. */
size_t js_b64_len(size_t n);                         /* encoded length, no NUL */
void js_b64_encode(char *out, const uint8_t *in, size_t n); /* writes NUL too */
int js_b64_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *outlen);

#endif
