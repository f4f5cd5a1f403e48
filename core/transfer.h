/*
 * core/transfer.h — moving chat state in and out of a running cluster
 * (issue 21): the admin listener's /chat/ endpoints.
 *
 *   POST /chat/import-prototype  a batch of the Python prototype's accounts
 *                                and messages (JSON, below) -> one
 *                                PL_OP_IMPORT op; answers each record's
 *                                outcome once the op is committed
 *   POST /chat/import[?begin=1][&end=1]
 *                                a batch of dump lines (core/dump.h: the
 *                                header line, then records) -> one
 *                                PL_OP_RESTORE op; end=1 adds the state
 *                                digest to the answer
 *   GET  /chat/export[?sessions=0]
 *                                the whole state as a dump, from one
 *                                snapshot, streamed
 *
 * All of them need the operator token (core/admin.c checks it) and the
 * primary (421 with its index elsewhere, as /cluster/). The two imports
 * propose op kinds older servers cannot decode, so they are refused
 * unless every other server of the cluster is connected and has said in
 * its Hello that it applies them (409 for an older server, 503 for one
 * not connected: an import waits for the whole cluster).
 *
 * The prototype batch, as `parley admin import-prototype` sends it:
 *   {"users": [{"name": NAME, "pwhash": "$pbkdf2-sha256$i=100000$SALT$HASH"}],
 *    "messages": [{"to": NAME, "from": NAME, "seq": N, "read": BOOL, "body": TEXT}]}
 * answered with {"op": N, "users": [OUTCOME...], "messages": [OUTCOME...]},
 * OUTCOME one of "created", "imported", "before", "taken", "no-recipient",
 * "recipient-gone", "invalid" (chat.h, enum pl_import_outcome).
 *
 * Nothing here logs a request body: it holds password hashes.
 *
 * Prefix: pl_xfer_.
 */
#ifndef PL_CORE_TRANSFER_H
#define PL_CORE_TRANSFER_H

#include <parley/store.h>

#include "admin.h"
#include "chat.h"
#include "dump.h"
#include "seq.h"

typedef struct pl_xfer_host {
    void *ud;
    const pl_store_plugin *sp;
    pl_store *st;
    pl_chat *chat;
    pl_seq *seq;
    /* The primary's clock for an op (monotonic across ops). */
    uint64_t (*op_time)(void *ud);
    /* PL_OK when this server is the primary and serves now; otherwise the
     * HTTP status to answer (421 with *primary its index or -1, 503) and why. */
    int (*primary)(void *ud, int *primary, char *why, size_t whylen);
    /* PL_OK when every other server applies op kinds below `kinds`;
     * PL_ERR_UNAVAILABLE (one is not connected) or PL_ERR_UNSUPPORTED (one
     * runs an older parley), with the server named in why. */
    int (*peers_apply)(void *ud, uint32_t kinds, char *why, size_t whylen);
    /* For the dump's header: "host:port" and the store plugin's name. */
    const char *address;
    const char *store_name;
} pl_xfer_host;

/* The handlers, with the server's host (copied). Each answers through
 * reply(req, ...) exactly once, possibly after it returns. */
void pl_xfer_import_prototype(const pl_xfer_host *h, const char *body, size_t len,
                              pl_admin_reply_fn reply, void *req);
void pl_xfer_restore(const pl_xfer_host *h, const char *query, const char *body, size_t len,
                     pl_admin_reply_fn reply, void *req);
/* A dump of the state now: PL_OK and *out (caller frees with
 * pl_dump_free); otherwise *http and *json_err (malloc'd) to answer. */
int pl_xfer_export(const pl_xfer_host *h, const char *query, pl_dump **out, int *http,
                   char **json_err);

#endif
