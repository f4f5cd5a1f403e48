/*
 * tests/unit/test_op.c — the op and recorded-reply codecs (core/op.c):
 * round trips, truncation at every length, trailing bytes and random
 * garbage.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

static const uint64_t some_ids[] = { 1, 2, UINT64_MAX, 0x0102030405060708ull };

static pl_op sample_op(uint32_t kind)
{
    pl_op op = { 0 };
    op.kind = kind;
    op.client_id = 0xdeadbeefcafef00dull;
    op.request_no = 42;
    op.time_ms = 1700000000123ull;
    op.uid = 7;
    switch (kind) {
    case PL_OP_REGISTER:
        op.uid = 0;
        op.name = pl_str_c("alice");
        op.pwhash = pl_str_c("$argon2id$v=19$m=65536,t=2,p=1$fake$hash");
        break;
    case PL_OP_LOGIN:
    case PL_OP_LOGOUT:
        op.name = pl_str_c("alice");
        op.token_hash = (pl_str){ "0123456789abcdef0123456789abcdef", 32 };
        break;
    case PL_OP_SEND:
        op.name = pl_str_c("bob");
        op.body = (pl_str){ "hi\0there", 8 }; /* the codec is binary-safe */
        break;
    case PL_OP_READ:
        op.n = 10;
        break;
    case PL_OP_ACK:
    case PL_OP_DELETE:
        op.ids = some_ids;
        op.n_ids = 4;
        break;
    default:
        break;
    }
    return op;
}

static void assert_op_eq(const pl_op *a, const pl_op *b)
{
    ck_assert_uint_eq(a->kind, b->kind);
    ck_assert_uint_eq(a->client_id, b->client_id);
    ck_assert_uint_eq(a->request_no, b->request_no);
    ck_assert_uint_eq(a->time_ms, b->time_ms);
    ck_assert_uint_eq(a->uid, b->uid);
    ck_assert_msg(pl_str_eq(a->name, b->name), "name differs");
    ck_assert_msg(pl_str_eq(a->pwhash, b->pwhash), "pwhash differs");
    ck_assert_msg(pl_str_eq(a->token_hash, b->token_hash), "token_hash differs");
    ck_assert_msg(pl_str_eq(a->body, b->body), "body differs");
    ck_assert_uint_eq(a->n, b->n);
    ck_assert_uint_eq(a->n_ids, b->n_ids);
    for (uint32_t i = 0; i < a->n_ids; i++)
        ck_assert_uint_eq(a->ids[i], b->ids[i]);
}

START_TEST(round_trip_every_kind)
{
    for (uint32_t k = 0; k < PL_OP__COUNT; k++) {
        pl_op op = sample_op(k), back;
        uint8_t *buf;
        size_t len;
        uint64_t *ids;
        ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
        ck_assert_int_eq(pl_op_decode(buf, len, &back, &ids), PL_OK);
        assert_op_eq(&op, &back);
        ck_assert_msg((ids == NULL) == (op.n_ids == 0), "ids owner only when ids exist");
        if (ids)
            ck_assert_msg(((uintptr_t)ids % _Alignof(uint64_t)) == 0, "ids are aligned");
        /* Encoding is canonical: re-encoding the decoded op gives equal bytes. */
        uint8_t *buf2;
        size_t len2;
        ck_assert_int_eq(pl_op_encode(&back, &buf2, &len2), PL_OK);
        ck_assert_uint_eq(len, len2);
        ck_assert_msg(memcmp(buf, buf2, len) == 0, "kind %u re-encodes differently", k);
        ck_assert_msg(pl_op_kind(buf, len) == (int64_t)k, "pl_op_kind reads kind %u", k);
        ck_assert_msg(pl_op_kind(buf, 4) == -1, "pl_op_kind: a buffer too short for a kind");
        buf[0] ^= 0xff;
        ck_assert_msg(pl_op_kind(buf, len) == -1, "pl_op_kind: another encoding version");
        free(buf2);
        free(ids);
        free(buf);
    }
}
END_TEST

START_TEST(truncated_rejected)
{
    for (uint32_t k = 0; k < PL_OP__COUNT; k++) {
        pl_op op = sample_op(k), back;
        uint8_t *buf;
        size_t len;
        uint64_t *ids;
        ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
        for (size_t cut = 0; cut < len; cut++) {
            /* A fresh copy of exactly `cut` bytes, so a read past it is an
             * out-of-bounds access the sanitizer or valgrind would flag. */
            uint8_t *t = malloc(cut ? cut : 1);
            memcpy(t, buf, cut);
            ck_assert_msg(pl_op_decode(t, cut, &back, &ids) == PL_ERR_CORRUPT,
                          "kind %u truncated to %zu of %zu bytes was accepted", k, cut, len);
            ck_assert_ptr_null(ids);
            free(t);
        }
        free(buf);
    }
}
END_TEST

START_TEST(trailing_rejected)
{
    pl_op op = sample_op(PL_OP_SEND), back;
    uint8_t *buf;
    size_t len;
    uint64_t *ids;
    ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
    uint8_t *t = malloc(len + 1);
    memcpy(t, buf, len);
    t[len] = 0;
    ck_assert_msg(pl_op_decode(t, len + 1, &back, &ids) == PL_ERR_CORRUPT,
                  "a trailing byte was accepted");
    free(t);
    free(buf);
}
END_TEST

START_TEST(bad_version_and_kind)
{
    pl_op op = sample_op(PL_OP_NOOP), back;
    uint8_t *buf;
    size_t len;
    uint64_t *ids;
    ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
    buf[0] ^= 0xff;
    ck_assert_int_eq(pl_op_decode(buf, len, &back, &ids), PL_ERR_CORRUPT);
    buf[0] ^= 0xff;
    buf[1] = PL_OP__COUNT; /* kind is the u32 after the version byte */
    ck_assert_int_eq(pl_op_decode(buf, len, &back, &ids), PL_ERR_CORRUPT);
    free(buf);
    ck_assert_int_eq(pl_op_decode(NULL, 0, &back, &ids), PL_ERR_CORRUPT);
}
END_TEST

START_TEST(huge_counts_rejected)
{
    /* A count claiming 2^32-1 ids with no bytes behind it must be rejected
     * without trying to allocate 32 GiB. */
    pl_op op = sample_op(PL_OP_ACK), back;
    op.n_ids = 0;
    uint8_t *buf;
    size_t len;
    uint64_t *ids;
    ck_assert_int_eq(pl_op_encode(&op, &buf, &len), PL_OK);
    memset(buf + len - 4, 0xff, 4);
    ck_assert_int_eq(pl_op_decode(buf, len, &back, &ids), PL_ERR_CORRUPT);
    /* Same for a string length. */
    pl_op op2 = sample_op(PL_OP_NOOP);
    free(buf);
    ck_assert_int_eq(pl_op_encode(&op2, &buf, &len), PL_OK);
    memset(buf + 1 + 4 + 8 * 4, 0xff, 4); /* the name length */
    ck_assert_int_eq(pl_op_decode(buf, len, &back, &ids), PL_ERR_CORRUPT);
    free(buf);
}
END_TEST

START_TEST(random_garbage)
{
    srand(12345);
    uint8_t base_buf[256];
    pl_op op = sample_op(PL_OP_ACK), back;
    uint8_t *enc;
    size_t enc_len;
    ck_assert_int_eq(pl_op_encode(&op, &enc, &enc_len), PL_OK);
    for (int iter = 0; iter < 200000; iter++) {
        size_t len;
        uint8_t *buf;
        if (iter % 2) {
            /* Pure noise with a valid version byte half the time. */
            len = (size_t)rand() % sizeof base_buf;
            for (size_t i = 0; i < len; i++)
                base_buf[i] = (uint8_t)rand();
            if (len && (iter & 2))
                base_buf[0] = 1;
        } else {
            /* A valid encoding with a few bytes flipped. */
            len = enc_len;
            memcpy(base_buf, enc, enc_len);
            for (int f = 0; f < 1 + rand() % 4; f++)
                base_buf[(size_t)rand() % len] = (uint8_t)rand();
        }
        buf = malloc(len ? len : 1);
        memcpy(buf, base_buf, len);
        uint64_t *ids = NULL;
        int rc = pl_op_decode(buf, len, &back, &ids);
        ck_assert_msg(rc == PL_OK || rc == PL_ERR_CORRUPT, "unexpected rc %d", rc);
        if (rc == PL_OK) {
            /* Whatever decoded must stay inside the buffer. */
            const char *lo = (const char *)buf, *hi = lo + len;
            ck_assert(!back.name.len || (back.name.ptr >= lo && back.name.ptr + back.name.len <= hi));
            ck_assert(!back.body.len || (back.body.ptr >= lo && back.body.ptr + back.body.len <= hi));
        }
        free(ids);
        pl_response resp;
        pl_message *msgs = NULL;
        rc = pl_op_reply_decode(buf, len, &resp, &msgs);
        ck_assert_msg(rc == PL_OK || rc == PL_ERR_CORRUPT, "unexpected reply rc %d", rc);
        free(msgs);
        free(buf);
    }
    free(enc);
}
END_TEST

/* Issue 21: the import batch inside PL_OP_IMPORT's body. */
START_TEST(import_batch_codec)
{
    pl_import_rec in[3] = {
        { .kind = 'U', .name = pl_str_c("alice"), .pwhash = pl_str_c("$pbkdf2-sha256$i=1$a$b") },
        { .kind = 'M', .to = pl_str_c("alice"), .from = pl_str_c("b\xc3\xb6" "b"), .seq = 7,
          .read = 1, .body = (pl_str){ "x\0y", 3 } },
        { .kind = 'M', .to = pl_str_c("bob"), .from = pl_str_c("alice"), .seq = UINT64_MAX },
    };
    uint8_t *buf;
    size_t len, n;
    pl_import_rec *out;
    ck_assert_int_eq(pl_import_batch_encode(in, 3, &buf, &len), PL_OK);
    ck_assert_int_eq(pl_import_batch_decode(buf, len, &out, &n), PL_OK);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_uint_eq(out[i].kind, in[i].kind);
        ck_assert_msg(pl_str_eq(out[i].name, in[i].name) && pl_str_eq(out[i].pwhash, in[i].pwhash) &&
                      pl_str_eq(out[i].to, in[i].to) && pl_str_eq(out[i].from, in[i].from) &&
                      pl_str_eq(out[i].body, in[i].body) && out[i].seq == in[i].seq &&
                      out[i].read == in[i].read, "record %zu differs", i);
    }
    free(out);
    /* Every truncation and a trailing byte are refused, never a crash. */
    for (size_t cut = 0; cut < len; cut++) {
        ck_assert_msg(pl_import_batch_decode(buf, cut, &out, &n) == PL_ERR_CORRUPT &&
                      out == NULL, "a batch cut at %zu bytes was accepted", cut);
    }
    uint8_t *t = malloc(len + 1);
    memcpy(t, buf, len);
    t[len] = 0;
    ck_assert_int_eq(pl_import_batch_decode(t, len + 1, &out, &n), PL_ERR_CORRUPT);
    /* A count far beyond the bytes behind it. */
    t[1] = t[2] = t[3] = t[4] = 0xff;
    ck_assert_int_eq(pl_import_batch_decode(t, len, &out, &n), PL_ERR_CORRUPT);
    free(t);
    /* An unknown record kind, a read flag that is not 0 or 1. */
    buf[5] = 'X';
    ck_assert_int_eq(pl_import_batch_decode(buf, len, &out, &n), PL_ERR_CORRUPT);
    free(buf);
    in[1].kind = 'Q';
    ck_assert_int_eq(pl_import_batch_encode(in, 3, &buf, &len), PL_ERR_INVALID);
    ck_assert_int_eq(pl_import_batch_encode(in, PL_IMPORT_BATCH_MAX + 1, &buf, &len),
                     PL_ERR_INVALID);
}
END_TEST

START_TEST(reply_round_trip)
{
    pl_message msgs[2] = {
        { 5, { "alice", 5 }, { "bob", 3 }, { "hello", 5 }, 1000, 0 },
        { 9, { "carol", 5 }, { "bob", 3 }, { NULL, 0 }, 2000, PL_MSG_READ },
    };
    pl_response r = { 0 };
    r.method = PL_M_READ;
    r.status = PL_ERR_BODY;
    r.error = pl_str_c("body is 70000 bytes; the limit is 65536");
    r.id = 77;
    r.time_ms = 123456789;
    r.unread = 3;
    r.read = 4;
    r.more = 1;
    r.msgs = msgs;
    r.n_msgs = 2;
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(pl_op_reply_encode(&r, &buf, &len), PL_OK);
    pl_response b;
    pl_message *owner;
    ck_assert_int_eq(pl_op_reply_decode(buf, len, &b, &owner), PL_OK);
    ck_assert_uint_eq(b.method, r.method);
    ck_assert_uint_eq(b.status, r.status);
    ck_assert(pl_str_eq(b.error, r.error));
    ck_assert_uint_eq(b.id, r.id);
    ck_assert_uint_eq(b.time_ms, r.time_ms);
    ck_assert_uint_eq(b.unread, r.unread);
    ck_assert_uint_eq(b.read, r.read);
    ck_assert_uint_eq(b.more, r.more);
    ck_assert_uint_eq(b.n_msgs, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_uint_eq(b.msgs[i].id, msgs[i].id);
        ck_assert(pl_str_eq(b.msgs[i].from, msgs[i].from));
        ck_assert(pl_str_eq(b.msgs[i].to, msgs[i].to));
        ck_assert(pl_str_eq(b.msgs[i].body, msgs[i].body));
        ck_assert_uint_eq(b.msgs[i].time_ms, msgs[i].time_ms);
        ck_assert_uint_eq(b.msgs[i].state, msgs[i].state);
    }
    free(owner);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *t = malloc(cut ? cut : 1);
        memcpy(t, buf, cut);
        ck_assert_msg(pl_op_reply_decode(t, cut, &b, &owner) == PL_ERR_CORRUPT,
                      "reply truncated to %zu of %zu accepted", cut, len);
        ck_assert_ptr_null(owner);
        free(t);
    }
    uint8_t *t = malloc(len + 1);
    memcpy(t, buf, len);
    t[len] = 9;
    ck_assert_int_eq(pl_op_reply_decode(t, len + 1, &b, &owner), PL_ERR_CORRUPT);
    free(t);
    free(buf);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("op");
    TCase *tc = tcase_create("op");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, round_trip_every_kind);
    tcase_add_test(tc, truncated_rejected);
    tcase_add_test(tc, trailing_rejected);
    tcase_add_test(tc, bad_version_and_kind);
    tcase_add_test(tc, huge_counts_rejected);
    tcase_add_test(tc, random_garbage);
    tcase_add_test(tc, reply_round_trip);
    tcase_add_test(tc, import_batch_codec);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
