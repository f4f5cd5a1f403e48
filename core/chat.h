/*
 * core/chat.h — the chat state machine (DESIGN.md §1).
 *
 * Every change to chat state is an op. An op is built *before* it is
 * sequenced, carrying everything non-deterministic (the Argon2id string, the
 * token hash, the primary's clock), then given an op-number and applied
 * through the store on every replica. Applying is deterministic and
 * idempotent by op-number, so replaying the log gives the same state on any
 * server with any store plugin.
 *
 * Read-only requests (list_users, counts, history, conversation, session
 * lookups) are answered from the local store by pl_chat_query().
 *
 * Prefix: pl_chat_ (state machine), pl_op_ (op codec), pl_glob_ (matcher).
 */
#ifndef PL_CORE_CHAT_H
#define PL_CORE_CHAT_H

#include <stdbool.h>
#include <parley/store.h>
#include <parley/types.h>

/* Op kinds. Stable numbers: they are in every replica's log. */
enum pl_op_kind {
    PL_OP_NOOP = 0,           /* VR: a new primary's first op; changes nothing */
    PL_OP_REGISTER = 1,       /* name, pwhash */
    PL_OP_LOGIN = 2,          /* name (the account verified), uid, token_hash */
    PL_OP_LOGOUT = 3,         /* uid, token_hash */
    PL_OP_SEND = 4,           /* uid (sender), name (recipient), body */
    PL_OP_READ = 5,           /* uid, n */
    PL_OP_ACK = 6,            /* uid, ids */
    PL_OP_DELETE = 7,         /* uid, ids */
    PL_OP_DELETE_ACCOUNT = 8, /* uid */
    PL_OP_RECONFIG = 9,       /* body: the new membership (core/members.h); no chat
                                 state changes: the sequencer acts on it */
    /* Issue 21. A server older than these refuses to decode them (op.c:
     * kind >= its PL_OP__COUNT is corrupt), so the primary proposes them
     * only when every server has said in its peer Hello that it applies
     * them (core/transfer.c; docs/operations.md "Upgrades"). */
    PL_OP_IMPORT = 10,        /* body: an import batch (pl_import_rec below): the
                                 Python prototype's accounts and messages */
    PL_OP_RESTORE = 11,       /* body: a restore batch (core/snapshot.h): records of
                                 a dump (core/dump.h) put as they are */
    PL_OP_LOGIN_REHASH = 12,  /* a login (as PL_OP_LOGIN) that also replaces an
                                 imported PBKDF2 hash by pwhash (Argon2id) */
    PL_OP__COUNT
};

/* Client ids whose top 16 bits are all ones are the importer's (issue 21):
 * the client table keeps one row per imported account there (see
 * pl_import_rec). The server refuses client requests that carry one, and
 * libparley and the web client never pick one. */
#define PL_CLIENT_ID_RESERVED 0xFFFF000000000000ull
static inline int pl_client_id_reserved(uint64_t id)
{
    return (id & PL_CLIENT_ID_RESERVED) == PL_CLIENT_ID_RESERVED;
}

/* An imported account keeps the prototype's PBKDF2-HMAC-SHA256 hash until
 * its first login replaces it (PL_OP_LOGIN_REHASH), stored as
 *   "$pbkdf2-sha256$i=100000$" B64(16-byte salt) "$" B64(32-byte hash)
 * with standard base64 and its padding, as the prototype's file has them. */
#define PL_PBKDF2_PREFIX "$pbkdf2-sha256$i=100000$"
#define PL_PBKDF2_ITERATIONS 100000u
#define PL_PBKDF2_SALT_BYTES 16u
#define PL_PBKDF2_HASH_BYTES 32u
/* Is this stored hash an imported PBKDF2 one (prefix only)? */
int pl_chat_pwhash_is_pbkdf2(pl_str pwhash);
/* Parse an imported hash fully: PL_OK with salt and hash filled, else
 * PL_ERR_INVALID. */
int pl_chat_pbkdf2_parse(pl_str pwhash, uint8_t salt[PL_PBKDF2_SALT_BYTES],
                         uint8_t hash[PL_PBKDF2_HASH_BYTES]);

/* ---- import batches (PL_OP_IMPORT's body) ----
 * 'U' an account: name (a valid username) and pwhash (PL_PBKDF2_PREFIX...).
 *     Created unless the name is taken; with it an importer row in the
 *     client table (client id in the reserved range, found from the name
 *     by a fixed probe sequence; its reply holds the account's uid and
 *     name) that marks the account as imported and keeps, as request_no,
 *     how far its mailbox was imported.
 * 'M' a message: to (an imported account), from (the sender's name as the
 *     prototype had it), seq (its 1-based place in the recipient's mailbox
 *     in the file, in the prototype's id order), read, body. Imported when
 *     seq is above the recipient's row: so a batch sent twice, or a file
 *     imported again, adds nothing. The sender is linked to its account
 *     when that name is an imported account; otherwise it is kept as its
 *     name and the message counts as deleted by its sender (as after
 *     delete_account), so the recipient's delete removes it. */
typedef struct pl_import_rec {
    uint8_t kind;             /* 'U' or 'M' */
    pl_str name;              /* U */
    pl_str pwhash;            /* U */
    pl_str to, from, body;    /* M */
    uint64_t seq;             /* M */
    uint8_t read;             /* M: 0 unread, 1 read */
} pl_import_rec;
#define PL_IMPORT_BATCH_MAX 1000u          /* records in one import op */
#define PL_IMPORT_FROM_MAX 64u             /* bytes of a sender kept as a name */

/* What an import record did, one per record in pl_apply_result. */
enum pl_import_outcome {
    PL_IMP_CREATED = 1,       /* U: the account was created */
    PL_IMP_IMPORTED = 2,      /* M: the message was stored */
    PL_IMP_DONE_BEFORE = 3,   /* U: this name was imported before (maybe deleted since);
                                 M: this place of the mailbox was imported before */
    PL_IMP_TAKEN = 4,         /* U: a parley account that was not imported holds the name */
    PL_IMP_NO_RECIPIENT = 5,  /* M: the recipient is not an imported account */
    PL_IMP_RECIPIENT_GONE = 6,/* M: the recipient's account was deleted since its import */
    PL_IMP_INVALID = 7        /* a field parley cannot hold (name, hash, body, sender) */
};
const char *pl_import_outcome_name(uint32_t outcome);
/* May a sender without an account be kept by this name: 1 to
 * PL_IMPORT_FROM_MAX bytes of UTF-8 without control characters? */
int pl_chat_check_import_sender(pl_str from);

/* Encode records into a malloc'd batch (caller frees). PL_ERR_INVALID
 * for more than PL_IMPORT_BATCH_MAX records or an unknown kind. */
int pl_import_batch_encode(const pl_import_rec *recs, size_t n, uint8_t **out, size_t *len);
/* Decode a batch; *recs is malloc'd (caller frees), its strings point into
 * buf. PL_ERR_CORRUPT on any malformed input, never a crash. */
int pl_import_batch_decode(const uint8_t *buf, size_t len, pl_import_rec **recs, size_t *n);

typedef struct pl_op {
    uint32_t kind;            /* enum pl_op_kind */
    uint64_t client_id;       /* exactly-once; 0 = not recorded in the client table */
    uint64_t request_no;
    uint64_t time_ms;         /* primary's wall clock when the op was built */
    uint64_t uid;             /* acting account; 0 for register */
    pl_str name;              /* register: new username; login: username; send: recipient */
    pl_str pwhash;            /* register: crypto_pwhash_str output */
    pl_str token_hash;        /* login/logout: 32 raw bytes */
    pl_str body;              /* send */
    uint64_t n;               /* read */
    const uint64_t *ids;      /* ack/delete (aligned copy owned by whoever built the op) */
    uint32_t n_ids;
} pl_op;

/* Encode op into a malloc'd buffer; caller frees *out. Fixed-width
 * little-endian fields and length-prefixed strings: byte-identical on every
 * replica for equal ops. */
int pl_op_encode(const pl_op *op, uint8_t **out, size_t *len);
/* Decode; op's strings point into buf, ids into *ids_owner (malloc'd,
 * caller frees; NULL when no ids). Returns PL_ERR_CORRUPT on bad input,
 * never crashes on any input. */
int pl_op_decode(const uint8_t *buf, size_t len, pl_op *op, uint64_t **ids_owner);
/* The kind of an encoded op without decoding the rest, or -1 when buf is
 * not an op of this encoding (the sequencer looks for membership changes
 * in log entries this way). */
int64_t pl_op_kind(const uint8_t *buf, size_t len);

/* The reply recorded in the client table for exactly-once requests: method,
 * status, error, id, time_ms, unread, read, more and msgs (the other
 * pl_response fields are never recorded). Encode into a malloc'd buffer;
 * caller frees *out. Decode: strings point into buf, msgs into *msgs_owner
 * (malloc'd, caller frees; NULL when none). PL_ERR_CORRUPT on bad input. */
int pl_op_reply_encode(const pl_response *resp, uint8_t **out, size_t *len);
int pl_op_reply_decode(const uint8_t *buf, size_t len, pl_response *resp,
                       pl_message **msgs_owner);

/* Glob over whole names: '*' any run, '?' one byte. Linear time
 * (O(len(pattern) * len(name)) worst case, no backtracking explosion). */
bool pl_glob_match(pl_str pattern, pl_str name);
/* The literal prefix of a pattern before its first wildcard. */
pl_str pl_glob_prefix(pl_str pattern);

/* Validation helpers: return PL_OK or the pl_err naming the limit. */
int pl_chat_check_username(pl_str name);
int pl_chat_check_password(pl_str pw);
int pl_chat_check_body(pl_str body);       /* 1..PL_BODY_MAX bytes, valid UTF-8, no NUL */
int pl_chat_check_pattern(pl_str pattern);

typedef struct pl_chat pl_chat;

/* Wraps an open store; does not own it (the caller closes the store after
 * pl_chat_free). */
pl_chat *pl_chat_new(const pl_store_plugin *sp, pl_store *st);
void pl_chat_free(pl_chat *c);

/* The result of applying one op. Everything points into memory owned by
 * the pl_chat and is valid until the next pl_chat_apply_batch/pl_chat_query
 * call. */
typedef struct pl_apply_result {
    pl_response reply;        /* what the client that sent the op is told
                                 (method, status, error, id, msgs, ...) */
    /* send: the new message, to push to the recipient's live connections */
    int has_push;
    uint64_t push_uid;        /* recipient account */
    pl_message push;
    /* delete_account / logout: sessions of this uid / this token hash are gone;
       the server drops subscriptions that used them */
    uint64_t revoked_uid;
    pl_str revoked_token_hash;
    /* import: enum pl_import_outcome for each record of the batch, in order */
    const uint8_t *outcomes;
    uint32_t n_outcomes;
    /* restore: records written, and records already there and equal */
    uint64_t restored, restore_same;
} pl_apply_result;

/* Apply ops[0..n) with op-numbers first_op, first_op+1, ... in one store
 * transaction that ends with commit(first_op + n - 1). Ops whose number is
 * <= the store's applied_op are skipped (idempotence) and get status
 * PL_ERR_STALE_REQUEST in their result. A repeated (client_id, request_no)
 * gets the reply recorded in the client table instead of executing again.
 * results must have room for n entries. A rule violation (unknown recipient,
 * duplicate name...) is a normal result with a non-zero reply.status; only a
 * store failure returns an error (and then nothing of the batch is applied). */
int pl_chat_apply_batch(pl_chat *c, uint64_t first_op, const pl_op *ops,
                        size_t n, pl_apply_result *results);

/* Answer a read-only request for account uid (already authenticated):
 * PL_M_LIST_USERS, PL_M_COUNTS, PL_M_HISTORY, PL_M_CONVERSATION.
 * Also PL_M_SUBSCRIBE's backlog: the unread messages with id > after_id
 * (ascending, one page at most). resp points into c's memory. */
int pl_chat_query(pl_chat *c, uint64_t uid, const pl_request *req, pl_response *resp);

/* Session lookup: token text -> account, and when the session was created
 * (the op time of its login). PL_ERR_NOT_LOGGED_IN when the token is
 * unknown or revoked. name points into c's memory; name and created_ms may
 * be NULL. */
int pl_chat_session(pl_chat *c, pl_str token, uint64_t *uid, pl_str *name,
                    uint64_t *created_ms);
/* The same with the token's hash (pl_chat_token_hash) already computed by
 * the caller, e.g. kept from the connection's previous request. */
int pl_chat_session_hashed(pl_chat *c, pl_str token, const uint8_t th[32], uint64_t *uid,
                           pl_str *name, uint64_t *created_ms);
/* BLAKE2b-256 of a token, as stored in sessions (out: 32 bytes). */
void pl_chat_token_hash(pl_str token, uint8_t out[32]);

/* Account lookup for login/delete_account verification. pwhash points into
 * c's memory. PL_ERR_NOT_FOUND when there is no such account. */
int pl_chat_account(pl_chat *c, pl_str name, uint64_t *uid, pl_str *pwhash);
int pl_chat_account_by_uid(pl_chat *c, uint64_t uid, pl_str *name, pl_str *pwhash);

/* Drop every cached lookup (accounts, sessions, client-table numbers): for
 * when the store's state changed behind the chat's back, i.e. a snapshot
 * was installed. */
void pl_chat_forget(pl_chat *c);

/* Hex BLAKE2b-256 digest of the logical state (accounts, sessions, messages,
 * client table, counters) in a canonical order: equal on every replica
 * whatever its store plugin. out: 65 bytes (64 hex + NUL). */
int pl_chat_digest(pl_chat *c, char out[65]);

#endif
