/*
 * tests/fuzz/fuzz_op.c — the op codec of core/op.c: what a replica reads
 * back from its log and from peers' PREPAREs (pl_op_decode), and the replies
 * kept in the client table (pl_op_reply_decode, built with FUZZ_REPLY=1).
 *
 * Both encodings are canonical (fixed-width fields, no optional parts), so
 * beyond "no crash": whatever decodes must re-encode to exactly the input
 * bytes, and a decode failure must leave nothing allocated behind.
 */
#include <string.h>

#include "chat.h"
#include "fuzz.h"
#include "snapshot.h"

static volatile unsigned sink;

static unsigned touch(pl_str s)
{
    unsigned h = 0;
    for (uint32_t i = 0; i < s.len; i++)
        h += (unsigned char)s.ptr[i];
    return h;
}

#if FUZZ_REPLY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pl_response r;
    pl_message *owner = NULL;
    int rc = pl_op_reply_decode(data, size, &r, &owner);
    if (rc != PL_OK) {
        FUZZ_CHECK(owner == NULL && r.n_msgs == 0, "a failed decode left %u messages", r.n_msgs);
        return 0;
    }
    unsigned h = touch(r.error);
    for (uint32_t i = 0; i < r.n_msgs; i++)
        h += touch(r.msgs[i].from) + touch(r.msgs[i].to) + touch(r.msgs[i].body);
    sink = h;
    uint8_t *out = NULL;
    size_t len = 0;
    rc = pl_op_reply_encode(&r, &out, &len);
    FUZZ_CHECK(rc == PL_OK, "a decoded reply does not encode: %s", pl_strerror(rc));
    FUZZ_CHECK(len == size && memcmp(out, data, size) == 0,
               "reply encoding is not canonical: %zu bytes in, %zu out", size, len);
    free(out);
    free(owner);
    return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pl_op op;
    uint64_t *ids = NULL;
    int rc = pl_op_decode(data, size, &op, &ids);
    if (rc != PL_OK) {
        FUZZ_CHECK(ids == NULL && op.n_ids == 0, "a failed decode left %u ids", op.n_ids);
        return 0;
    }
    FUZZ_CHECK(op.kind < PL_OP__COUNT, "decoded an unknown op kind %u", op.kind);
    unsigned h = touch(op.name) + touch(op.pwhash) + touch(op.token_hash) + touch(op.body);
    for (uint32_t i = 0; i < op.n_ids; i++)
        h += (unsigned)op.ids[i];
    sink = h;
    uint8_t *out = NULL;
    size_t len = 0;
    rc = pl_op_encode(&op, &out, &len);
    FUZZ_CHECK(rc == PL_OK, "a decoded op does not encode: %s", pl_strerror(rc));
    FUZZ_CHECK(len == size && memcmp(out, data, size) == 0,
               "op encoding is not canonical: %zu bytes in, %zu out", size, len);
    free(out);
    /* The batches inside an import or restore op's body (issue 21): any
     * bytes a peer sends may reach these decoders on every replica. */
    if (op.kind == PL_OP_IMPORT) {
        pl_import_rec *recs = NULL;
        size_t n = 0;
        if (pl_import_batch_decode((const uint8_t *)op.body.ptr, op.body.len, &recs, &n) == PL_OK) {
            rc = pl_import_batch_encode(recs, n, &out, &len);
            FUZZ_CHECK(rc == PL_OK && len == op.body.len && memcmp(out, op.body.ptr, len) == 0,
                       "import batch encoding is not canonical");
            free(out);
        } else {
            FUZZ_CHECK(recs == NULL, "a failed import batch decode left records");
        }
        free(recs);
    } else if (op.kind == PL_OP_RESTORE) {
        pl_restore_batch b;
        if (pl_restore_batch_decode((const uint8_t *)op.body.ptr, op.body.len, &b) == PL_OK) {
            rc = pl_restore_batch_encode(&b, &out, &len);
            FUZZ_CHECK(rc == PL_OK && len == op.body.len && memcmp(out, op.body.ptr, len) == 0,
                       "restore batch encoding is not canonical");
            free(out);
        } else {
            FUZZ_CHECK(b.recs == NULL, "a failed restore batch decode left records");
        }
        free(b.recs);
    }
    free(ids);
    return 0;
}
#endif
