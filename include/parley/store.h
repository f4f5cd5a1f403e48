/*
 * parley/store.h — the store plugin ABI.
 *
 * Who calls what
 * --------------
 * A store plugin is a shared module exporting one function,
 *
 *     const pl_store_plugin *parley_store_plugin(void);
 *
 * returning a static, const descriptor. The loader checks abi_version first
 * and refuses a mismatch naming both versions.
 *
 * Growing the ABI (minor versions)
 * --------------------------------
 * abi_version is the major version: the layout every store shares, and
 * what a plugin that loads another store (examples/store-trace) compares.
 * Members added later go at the end of pl_store_plugin, after every member
 * of the versions before, the way SQLite grows sqlite3_vfs; a plugin says
 * which of them it fills by exporting the minor version it was built for,
 *
 *     PL_STORE_DECLARE_MINOR;   (at file scope: parley_store_abi_minor)
 *
 * The loader reads members of minor version m only when that symbol says
 * m or more, so a plugin built before a minor version existed (which does
 * not export it, or exports a smaller one) loads unchanged, and its
 * descriptor is never read past its own end. The minor version lives in its
 * own symbol rather than in abi_version because plugins built against
 * minor 0 compare abi_version for equality.
 *   minor 1: log_append_nosync, log_sync (the log written on the event loop
 *            and synced on another thread).
 *   minor 2: state_flush (a store that keeps its state transaction open
 *            across commit() calls hears when the loop is idle).
 *
 * A store owns everything durable on one server:
 *   1. replica metadata: small named uint64 values (view, last normal view,
 *      commit number, ...), see meta_get/meta_set;
 *   2. the replicated log: opaque entries numbered by op-number;
 *   3. the materialised chat state: accounts, sessions, messages and the
 *      client table, plus the uint64 counters the core keeps with them
 *      (meta keys inside a transaction).
 * The chat *rules* live in the core. A store persists and indexes; it never
 * decides whether an operation is allowed. Given the same calls in the same
 * order, every store reaches the same logical state.
 *
 * Durability contract
 *   - log_append, log_truncate and meta_set outside a transaction are
 *     durable when they return PL_OK (one sync per call when the store was
 *     opened with sync on).
 *   - State changes are made between begin() and commit(applied_op). They
 *     become visible and persistent atomically together with the new
 *     applied op-number. commit() need not sync: after a crash the core
 *     replays the durable log from applied_op() + 1, so a lost commit is
 *     redone. A commit is never half-visible after a crash.
 *   - abort() discards everything since begin().
 *
 * Lifetime of returned data
 *   Records returned through an out-pointer point into memory owned by the
 *   store and stay valid until the next call on the same store instance.
 *   Records passed to a scan callback are valid during that callback only;
 *   the callback must not call back into the store. Records passed *in* are
 *   copied by the store before it returns.
 *
 * Threading: a store instance is used by one thread at a time (the core's
 * event-loop thread), except log_sync (minor 1), which the core calls from
 * a thread of its own while the loop thread goes on with other calls.
 * Different instances are independent.
 *
 * Ordering: names compare bytewise (memcmp, then shorter first); message ids
 * and op-numbers numerically.
 */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <parley/common.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PL_STORE_ABI_VERSION 1u
#define PL_STORE_SYMBOL "parley_store_plugin"
/* The minor version of this header, and the symbol a plugin exports it in. */
#define PL_STORE_ABI_MINOR 2u
#define PL_STORE_MINOR_SYMBOL "parley_store_abi_minor"
#define PL_STORE_DECLARE_MINOR \
    PL_EXPORT extern const uint32_t parley_store_abi_minor; \
    PL_EXPORT const uint32_t parley_store_abi_minor = PL_STORE_ABI_MINOR

typedef struct pl_store pl_store; /* plugin-owned instance */

typedef struct pl_store_host {
    uint32_t abi_version;   /* PL_STORE_ABI_VERSION of the core */
    void *ud;
    void (*log)(void *ud, int level, const char *fmt, ...) PL_PRINTF(3, 4);
} pl_store_host;

typedef struct pl_store_options {
    const char *dir;          /* data directory; created if missing */
    int sync;                 /* 1: fsync/fdatasync as promised (default); 0: never sync (benchmarks, tests) */
    const char *options_json; /* the plugin's config object as JSON text, or NULL */
} pl_store_options;

/* One replicated log entry. data is the core's encoding of the op batch
 * entry; the store treats it as opaque bytes. */
typedef struct pl_log_entry {
    uint64_t op;              /* op-number, consecutive */
    uint64_t view;            /* view in which it was assigned */
    const uint8_t *data;
    uint32_t len;
} pl_log_entry;

typedef struct pl_account_rec {
    uint64_t uid;             /* never reused */
    pl_str name;
    pl_str pwhash;            /* Argon2id string from crypto_pwhash_str */
    uint64_t created_ms;
} pl_account_rec;

typedef struct pl_session_rec {
    pl_str token_hash;        /* 32 raw bytes: BLAKE2b of the token. Never the token. */
    uint64_t uid;
    uint64_t created_ms;
} pl_session_rec;

/* Message flags kept by the store. */
#define PL_MSGF_READ 1u            /* the recipient has read it */
#define PL_MSGF_DEL_SENDER 2u      /* gone from the sender's view */
#define PL_MSGF_DEL_RECIPIENT 4u   /* gone from the recipient's view */

typedef struct pl_message_rec {
    uint64_t id;
    uint64_t from_uid;
    uint64_t to_uid;
    pl_str from_name;
    pl_str to_name;
    pl_str body;
    uint64_t time_ms;
    uint32_t flags;
} pl_message_rec;

/* Client table row (exactly-once requests). */
typedef struct pl_client_rec {
    uint64_t client_id;
    uint64_t request_no;      /* last executed request of this client */
    uint64_t op;              /* op-number that executed it */
    pl_str reply;             /* the core's encoding of the reply, opaque */
} pl_client_rec;

/* Message queries. All exclude messages hidden from `uid` (for a received
 * message: PL_MSGF_DEL_RECIPIENT; for a sent one: PL_MSGF_DEL_SENDER). */
enum pl_msg_query_kind {
    PL_Q_UNREAD = 1,   /* received by uid, not read, id > after_id; ascending id */
    PL_Q_READ = 2,     /* received by uid, read; descending id (newest first) */
    PL_Q_CONVO = 3,    /* between uid and peer_uid, both directions; descending id */
    PL_Q_RECEIVED = 4, /* every message received by uid (visible); ascending id */
    PL_Q_SENT = 5,     /* every message sent by uid (visible); ascending id */
    PL_Q_ALL = 6       /* every stored message regardless of flags; ascending id (digest, snapshot) */
};

typedef struct pl_msg_query {
    uint32_t kind;        /* enum pl_msg_query_kind */
    uint64_t uid;
    uint64_t peer_uid;    /* PL_Q_CONVO */
    uint64_t after_id;    /* PL_Q_UNREAD, PL_Q_ALL: only ids > after_id */
    uint64_t offset;      /* skip this many matches first */
    uint64_t limit;       /* at most this many callbacks; 0 = no limit */
} pl_msg_query;

/* Scan callbacks return 0 to continue, non-zero to stop early. */
typedef int (*pl_log_cb)(void *ud, const pl_log_entry *e);
typedef int (*pl_account_cb)(void *ud, const pl_account_rec *a);
typedef int (*pl_session_cb)(void *ud, const pl_session_rec *s);
typedef int (*pl_message_cb)(void *ud, const pl_message_rec *m);
typedef int (*pl_client_cb)(void *ud, const pl_client_rec *c);

typedef struct pl_store_plugin {
    uint32_t abi_version;     /* PL_STORE_ABI_VERSION */
    const char *name;         /* "sqlite", "json" */
    const char *description;

    /* ---- lifecycle ---- */
    int (*open)(const pl_store_host *host, const pl_store_options *opt,
                pl_store **out, char *err, size_t errlen);
    void (*close)(pl_store *s);   /* clean shutdown; s is freed */

    /* ---- replica metadata ----
     * Keys are short ASCII names. meta_get returns PL_ERR_NOT_FOUND for a key
     * never set. Inside begin/commit a meta_set is part of that transaction;
     * outside it is durable on return. */
    int (*meta_get)(pl_store *s, const char *key, uint64_t *val);
    int (*meta_set)(pl_store *s, const char *key, uint64_t val);

    /* ---- replicated log ---- */
    /* Append n entries with consecutive op-numbers continuing the log (the
     * first entry's op is last+1, or anything when the log is empty).
     * Durable on return. */
    int (*log_append)(pl_store *s, const pl_log_entry *e, size_t n);
    /* First and last op-number held; both 0 when the log is empty. */
    int (*log_bounds)(pl_store *s, uint64_t *first, uint64_t *last);
    /* Call cb for entries with from <= op <= to, ascending. */
    int (*log_read)(pl_store *s, uint64_t from, uint64_t to, pl_log_cb cb, void *ud);
    /* Remove every entry with op > after (VR: drop an uncommitted suffix). Durable on return. */
    int (*log_truncate)(pl_store *s, uint64_t after);
    /* Remove every entry with op < before (compaction). Afterwards the state
     * of every op below `before` must survive a crash, since those entries
     * can no longer be replayed: a store whose state commits are not
     * ordered with its log writes makes them durable first (the core calls
     * this with before <= applied_op() + 1). Returns an error when it could
     * not make that state durable. */
    int (*log_compact)(pl_store *s, uint64_t before);

    /* ---- state transactions ---- */
    int (*begin)(pl_store *s);
    int (*commit)(pl_store *s, uint64_t applied_op);
    void (*abort)(pl_store *s);
    /* The applied op-number of the last commit (0 for a new store). */
    uint64_t (*applied_op)(pl_store *s);

    /* ---- accounts ---- */
    int (*account_put)(pl_store *s, const pl_account_rec *a); /* insert or replace by uid */
    int (*account_get_name)(pl_store *s, pl_str name, pl_account_rec *out);
    int (*account_get_uid)(pl_store *s, uint64_t uid, pl_account_rec *out);
    int (*account_delete)(pl_store *s, uint64_t uid);
    /* Accounts with name >= start in name order. */
    int (*account_scan)(pl_store *s, pl_str start, pl_account_cb cb, void *ud);
    int (*account_count)(pl_store *s, uint64_t *n);

    /* ---- sessions ---- */
    int (*session_put)(pl_store *s, const pl_session_rec *r);
    int (*session_get)(pl_store *s, pl_str token_hash, pl_session_rec *out);
    int (*session_delete)(pl_store *s, pl_str token_hash);
    int (*session_delete_uid)(pl_store *s, uint64_t uid);
    /* Every session in token_hash order. */
    int (*session_scan)(pl_store *s, pl_session_cb cb, void *ud);

    /* ---- messages ---- */
    int (*message_put)(pl_store *s, const pl_message_rec *m); /* insert; id is new */
    int (*message_get)(pl_store *s, uint64_t id, pl_message_rec *out);
    int (*message_set_flags)(pl_store *s, uint64_t id, uint32_t flags);
    int (*message_delete)(pl_store *s, uint64_t id);
    int (*message_scan)(pl_store *s, const pl_msg_query *q, pl_message_cb cb, void *ud);
    /* Received by uid and visible to it: unread and read counts. */
    int (*message_counts)(pl_store *s, uint64_t uid, uint64_t *unread, uint64_t *read);

    /* ---- client table ---- */
    int (*client_get)(pl_store *s, uint64_t client_id, pl_client_rec *out);
    int (*client_put)(pl_store *s, const pl_client_rec *c); /* insert or replace */
    int (*client_scan)(pl_store *s, pl_client_cb cb, void *ud); /* client_id order */

    /* ---- minor 1: read only when the plugin exports a minor >= 1 ----
     * The log made durable off the event loop. The core appends a batch
     * with log_append_nosync on the loop thread and goes on (executing and
     * encoding the next batch) while its own sync thread calls log_sync;
     * it acknowledges the batch when log_sync has returned.
     *
     * log_append_nosync: as log_append, but need not be durable on return.
     *   The entries are in the log at once (log_bounds, log_read see them)
     *   and a crash keeps a prefix of the log: never a later entry without
     *   every earlier one, and never a state commit() without the entries up
     *   to its applied op (the core applies ops another server made durable
     *   before its own sync returns).
     * log_sync: make durable every entry appended before this call began.
     *   Called from another thread than every other call, possibly while
     *   one of them runs on the loop thread; never two log_sync calls at
     *   once. Returns PL_OK, or an error after which nothing more is
     *   promised (the core stops acknowledging).
     * log_append (the synchronous one) and log_truncate also make durable
     * every entry appended before them. */
    int (*log_append_nosync)(pl_store *s, const pl_log_entry *e, size_t n);
    int (*log_sync)(pl_store *s);

    /* ---- minor 2: read only when the plugin exports a minor >= 2 ----
     * state_flush: the core calls it on the loop thread every few
     * milliseconds, outside a transaction, whether or not anything was
     * applied. A store may keep its state transaction open across
     * commit() calls (committing the state of many batches at once is
     * cheaper; applied_op() and every read still see each commit at once,
     * and a crash may lose them since the log replays them: see
     * log_compact); here it commits what has waited long enough, so an
     * idle server's files soon hold its whole state for other readers.
     * Returns PL_OK or an error, which the core logs. */
    int (*state_flush)(pl_store *s);
} pl_store_plugin;

typedef const pl_store_plugin *(*pl_store_entry_fn)(void);

#ifdef __cplusplus
}
#endif
#endif
