/*
 * tests/fuzz/fuzz_dump.c — the dump reader (core/dump.c): every line of a
 * `POST /chat/import` body reaches pl_dump_parse_line on the primary, and
 * an operator may have edited the file.
 *
 * Beyond "no crash, no leak": a refusal comes with a reason; a record that
 * parses goes into a restore batch that encodes and decodes back to the
 * same bytes (what the primary then proposes); a header has a 64-digit
 * digest and counters of at least 1.
 */
#include <string.h>

#include "dump.h"
#include "fuzz.h"
#include "snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    for (size_t pos = 0; pos <= size;) {
        const char *nl = memchr(text + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - text - pos) : size - pos;
        pl_dump_line l;
        char err[300];
        err[0] = '\0';
        int rc = pl_dump_parse_line(text + pos, len, &l, err, sizeof err);
        if (rc != PL_OK) {
            FUZZ_CHECK(err[0], "a refused line without a reason");
        } else if (l.kind == PL_DUMP_HEADER) {
            FUZZ_CHECK(strlen(l.digest) == 64 && l.next_uid && l.next_msg_id,
                       "a header without its digest or counters");
        } else if (l.kind == PL_DUMP_RECORD) {
            pl_restore_batch b = { 0, 1, 1, &l.rec, 1 }, back;
            uint8_t *buf = NULL, *buf2 = NULL;
            size_t n = 0, n2 = 0;
            rc = pl_restore_batch_encode(&b, &buf, &n);
            FUZZ_CHECK(rc == PL_OK, "a parsed record does not encode: %d", rc);
            rc = pl_restore_batch_decode(buf, n, &back);
            FUZZ_CHECK(rc == PL_OK && back.n == 1, "an encoded record does not decode");
            rc = pl_restore_batch_encode(&back, &buf2, &n2);
            FUZZ_CHECK(rc == PL_OK && n2 == n && memcmp(buf, buf2, n) == 0,
                       "a record's encoding is not canonical");
            free(back.recs);
            free(buf);
            free(buf2);
        }
        pl_dump_line_clear(&l);
        if (!nl)
            break;
        pos += len + 1;
    }
    return 0;
}
