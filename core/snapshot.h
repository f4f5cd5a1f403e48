/*
 * core/snapshot.h — the whole chat state as one byte string, for bringing a
 * server up to date whose missing log entries were compacted away
 * (DESIGN.md §4, catch-up).
 *
 * A snapshot is built from the store ABI's scans and installed through its
 * ordinary puts, so it works between any two store plugins (a JSON-store
 * server can be brought up from a SQLite-store primary) and needs nothing
 * from a plugin beyond store.h version 1.
 *
 * Format (all integers little-endian):
 *   "PLSNAP" 0x01 0x00 | u64 op | u64 view-of-op | u64 next_uid | u64 next_msg_id
 *   records, each a tag byte then fields (strings: u32 length + bytes):
 *     'A' uid created_ms name pwhash
 *     'S' uid created_ms token_hash
 *     'M' id from_uid to_uid time_ms flags from_name to_name body
 *     'C' client_id request_no op reply
 *   'E' | 32-byte BLAKE2b of every byte before it
 *
 * Prefix: pl_snapshot_.
 */
#ifndef PL_CORE_SNAPSHOT_H
#define PL_CORE_SNAPSHOT_H

#include <parley/store.h>

/* Serialise the store's applied state. *out is malloc'd (caller frees);
 * *op is the applied op-number it reflects; op_view is recorded as given
 * (the view of that log entry). */
int pl_snapshot_export(const pl_store_plugin *sp, pl_store *st, uint64_t op_view,
                       uint8_t **out, size_t *len, uint64_t *op);

/* Feed the canonical encoding of the applied state — the counters, then
 * every record in the store ABI's order, exactly the body of a snapshot — to
 * sink, piece by piece. pl_chat_digest hashes it. */
int pl_snapshot_walk(const pl_store_plugin *sp, pl_store *st,
                     void (*sink)(void *ud, const void *b, size_t n), void *ud);

/* Read the header only (after checking the checksum). */
int pl_snapshot_peek(const uint8_t *buf, size_t len, uint64_t *op, uint64_t *op_view);

/* Replace the whole chat state with the snapshot in one store transaction
 * that commits with applied_op = the snapshot's op. Validates everything
 * (checksum, bounds, record syntax) before changing anything; on any error
 * nothing changes. */
int pl_snapshot_import(const pl_store_plugin *sp, pl_store *st, const uint8_t *buf, size_t len);

/* ---- reading a snapshot record by record (core/dump.c) ---- */

/* One record of a snapshot; the strings point into the snapshot's bytes. */
typedef struct pl_snapshot_rec {
    uint8_t tag;              /* 'A', 'S', 'M', 'C', or 'E' at the end */
    pl_account_rec a;
    pl_session_rec s;
    pl_message_rec m;
    pl_client_rec c;
} pl_snapshot_rec;

typedef struct pl_snapshot_iter {
    const uint8_t *p;
    size_t len, pos;
} pl_snapshot_iter;

/* Check the snapshot (checksum) and read its header; the iterator then
 * yields its records in order. */
int pl_snapshot_iter_init(pl_snapshot_iter *it, const uint8_t *buf, size_t len, uint64_t *op,
                          uint64_t *next_uid, uint64_t *next_msg_id);
/* PL_OK and the next record (tag 'E' after the last), or PL_ERR_CORRUPT. */
int pl_snapshot_iter_next(pl_snapshot_iter *it, pl_snapshot_rec *rec);
/* The state digest of a snapshot's contents: equal to pl_chat_digest of the
 * state it was taken from (out: 64 hex digits and a NUL). */
int pl_snapshot_digest(const uint8_t *buf, size_t len, char out[65]);

/* ---- restore batches (PL_OP_RESTORE's body) ----
 *   u8 version (1) | u8 flags | u64 next_uid | u64 next_msg_id | u32 count |
 *   count records in the snapshot's record format ('A', 'S', 'M', 'C')
 * flags & PL_RESTORE_BEGIN: the first batch of a restore: the state must be
 * empty, and the counters are set from the batch at once. */
#define PL_RESTORE_BEGIN 1u
#define PL_RESTORE_BATCH_MAX 1000u

typedef struct pl_restore_batch {
    uint32_t flags;
    uint64_t next_uid, next_msg_id;
    pl_snapshot_rec *recs;    /* malloc'd by decode (caller frees); strings point into its buf */
    size_t n;
} pl_restore_batch;

/* Encode into a malloc'd buffer (caller frees); PL_ERR_INVALID for more
 * than PL_RESTORE_BATCH_MAX records or a tag other than A S M C. */
int pl_restore_batch_encode(const pl_restore_batch *b, uint8_t **out, size_t *len);
int pl_restore_batch_decode(const uint8_t *buf, size_t len, pl_restore_batch *b);

#endif
