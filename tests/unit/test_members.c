/*
 * tests/unit/test_members.c — the membership codec, its checks, the
 * address parser and DATA_DIR/membership.json (core/members.c).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <parley/common.h>

#include "members.h"

static char err[512];

static void three(pl_members *m)
{
    pl_server_conf s[3] = {
        { "127.0.0.1", 8100, 9100, 7100 },
        { "127.0.0.1", 8101, 9101, 0 },
        { "::1", 8102, 9102, 0 },
    };
    ck_assert_int_eq(pl_members_from_config(m, s, 3), PL_OK);
}

static int decode_text(const char *text, pl_members *m)
{
    err[0] = '\0';
    return pl_members_decode((const uint8_t *)text, strlen(text), m, err, sizeof err);
}

/* text must be refused as corrupt with a one-line reason holding want. */
static void expect_corrupt(const char *text, const char *want)
{
    pl_members m;
    int rc = decode_text(text, &m);
    ck_assert_msg(rc == PL_ERR_CORRUPT, "should be refused (rc %d): %s", rc, text);
    ck_assert_msg(strstr(err, want) != NULL, "error for %s should say \"%s\": \"%s\"", text,
                  want, err);
    ck_assert_msg(strchr(err, '\n') == NULL, "error should be one line: \"%s\"", err);
    ck_assert_msg(m.n == 0, "a refused decode leaves no servers");
}

START_TEST(from_config_copies)
{
    pl_members m;
    three(&m);
    ck_assert_uint_eq(m.epoch, 0);
    ck_assert_uint_eq(m.op, 0);
    ck_assert_uint_eq(m.n, 3);
    ck_assert_str_eq(m.servers[2].host, "::1");
    ck_assert_uint_eq(m.servers[0].admin_port, 7100);
    pl_members c;
    ck_assert_int_eq(pl_members_copy(&c, &m), PL_OK);
    ck_assert_msg(c.servers[0].host != m.servers[0].host, "copy must own its host strings");
    ck_assert_msg(pl_members_same(&c, &m), "a copy is the same list");
    pl_members_clear(&m);
    ck_assert_str_eq(c.servers[0].host, "127.0.0.1");
    pl_members_clear(&c);

    pl_server_conf none[1] = { { "h", 1, 2, 0 } };
    ck_assert_int_eq(pl_members_from_config(&m, none, 0), PL_ERR_INVALID);
    pl_server_conf many[PL_MEMBERS_MAX + 1] = { { 0 } };
    ck_assert_int_eq(pl_members_from_config(&m, many, PL_MEMBERS_MAX + 1), PL_ERR_INVALID);
    pl_server_conf bad[1] = { { "a b", 1, 2, 0 } };
    ck_assert_int_eq(pl_members_from_config(&m, bad, 1), PL_ERR_INVALID);
}
END_TEST

START_TEST(canonical_bytes)
{
    pl_members m;
    three(&m);
    m.epoch = 2;
    m.op = 1234;
    char *text;
    size_t len;
    ck_assert_int_eq(pl_members_encode(&m, &text, &len), PL_OK);
    const char *want = "{\"epoch\":2,\"op\":1234,\"servers\":["
                       "{\"host\":\"127.0.0.1\",\"port\":8100,\"peer_port\":9100},"
                       "{\"host\":\"127.0.0.1\",\"port\":8101,\"peer_port\":9101},"
                       "{\"host\":\"::1\",\"port\":8102,\"peer_port\":9102}]}";
    ck_assert_str_eq(text, want);
    ck_assert_uint_eq(len, strlen(want));

    /* Round trip: same list, same epoch and op, and the same bytes again
     * (admin_port is not part of the encoding). */
    pl_members d;
    ck_assert_msg(pl_members_decode((const uint8_t *)text, len, &d, err, sizeof err) == PL_OK,
                  "decode of encode: %s", err);
    ck_assert_uint_eq(d.epoch, 2);
    ck_assert_uint_eq(d.op, 1234);
    ck_assert_msg(pl_members_same(&d, &m), "round trip keeps the list");
    ck_assert_uint_eq(d.servers[0].admin_port, 0);
    char *again;
    ck_assert_int_eq(pl_members_encode(&d, &again, NULL), PL_OK);
    ck_assert_str_eq(again, text);
    free(again);
    pl_members_clear(&d);

    /* Any spacing and key order decodes to the same canonical bytes. */
    ck_assert_int_eq(decode_text(" {\"servers\" : [ {\"peer_port\":9100, \"port\":8100,"
                                 " \"host\":\"127.0.0.1\"}, {\"host\":\"127.0.0.1\","
                                 "\"port\":8101,\"peer_port\":9101},{\"host\":\"::1\","
                                 "\"port\":8102,\"peer_port\":9102}],\n\"op\":1234,"
                                 "\"epoch\":2}\n", &d), PL_OK);
    ck_assert_int_eq(pl_members_encode(&d, &again, NULL), PL_OK);
    ck_assert_str_eq(again, text);
    free(again);
    pl_members_clear(&d);
    free(text);

    /* Largest values. */
    m.epoch = PL_MEMBERS_EPOCH_MAX;
    m.op = 9007199254740991ull;
    ck_assert_int_eq(pl_members_encode(&m, &text, &len), PL_OK);
    ck_assert_int_eq(pl_members_decode((const uint8_t *)text, len, &d, err, sizeof err), PL_OK);
    ck_assert_uint_eq(d.epoch, PL_MEMBERS_EPOCH_MAX);
    ck_assert_uint_eq(d.op, 9007199254740991ull);
    pl_members_clear(&d);
    free(text);

    /* encode refuses what decode would refuse. */
    m.epoch = PL_MEMBERS_EPOCH_MAX + 1;
    ck_assert_int_eq(pl_members_encode(&m, &text, &len), PL_ERR_INVALID);
    ck_assert_ptr_null(text);
    m.epoch = 1;
    m.servers[1].port = 8100;
    ck_assert_int_eq(pl_members_encode(&m, &text, &len), PL_ERR_INVALID);
    m.servers[1].port = 8101;
    char *h = m.servers[1].host;
    m.servers[1].host = (char *)"a\"b";
    ck_assert_int_eq(pl_members_encode(&m, &text, &len), PL_ERR_INVALID);
    m.servers[1].host = h;
    pl_members_clear(&m);
}
END_TEST

START_TEST(decode_errors)
{
    static const char S[] = "{\"host\":\"h\",\"port\":1,\"peer_port\":2}";
    char buf[2048];
    expect_corrupt("", "empty");
    expect_corrupt("{", "not JSON");
    expect_corrupt("[]", "must be a JSON object");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[]} x", "trailing bytes");
    expect_corrupt("{\"op\":0,\"servers\":[]}", "epoch: missing");
    expect_corrupt("{\"epoch\":-1,\"op\":0,\"servers\":[]}", "epoch: must be an integer 0-16777215");
    expect_corrupt("{\"epoch\":16777216,\"op\":0,\"servers\":[]}", "epoch: must be");
    expect_corrupt("{\"epoch\":1.5,\"op\":0,\"servers\":[]}", "epoch: must be");
    expect_corrupt("{\"epoch\":\"1\",\"op\":0,\"servers\":[]}", "epoch: must be");
    expect_corrupt("{\"epoch\":1,\"servers\":[]}", "op: missing");
    expect_corrupt("{\"epoch\":1,\"op\":1e300,\"servers\":[]}", "op: must be");
    expect_corrupt("{\"epoch\":1,\"op\":0}", "servers: missing");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":{}}", "servers: must be an array");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[]}", "servers: must list 1-16");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[1]}", "servers[0]: must be an object");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[],\"x\":1}", "x: unknown key");
    expect_corrupt("{\"epoch\":1,\"epoch\":2,\"op\":0,\"servers\":[]}", "epoch: duplicate key");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,\"peer_port\":2,"
                   "\"admin_port\":3}]}", "servers[0].admin_port: unknown key");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,\"port\":1,"
                   "\"peer_port\":2}]}", "servers[0].port: duplicate key");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"port\":1,\"peer_port\":2}]}",
                   "servers[0].host: missing");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"\",\"port\":1,\"peer_port\":2}]}",
                   "servers[0].host: must be 1-253 characters");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"a\\\"b\",\"port\":1,"
                   "\"peer_port\":2}]}", "servers[0].host: must be");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"a\\nb\",\"port\":1,"
                   "\"peer_port\":2}]}", "servers[0].host: must be");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":7,\"port\":1,\"peer_port\":2}]}",
                   "servers[0].host: must be");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"peer_port\":2}]}",
                   "servers[0].port: missing");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":0,\"peer_port\":2}]}",
                   "servers[0].port: must be an integer 1-65535");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,"
                   "\"peer_port\":65536}]}", "servers[0].peer_port: must be an integer 1-65535");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1}]}",
                   "servers[0].peer_port: missing");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":5,\"peer_port\":5}]}",
                   "servers[0].peer_port: must differ from port 5");
    /* Same identity (host, peer_port), same client endpoint, crossed ports. */
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,\"peer_port\":2},"
                   "{\"host\":\"h\",\"port\":3,\"peer_port\":2}]}", "servers[1]: h uses a port of servers[0]");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,\"peer_port\":2},"
                   "{\"host\":\"h\",\"port\":1,\"peer_port\":4}]}", "servers[1]: h uses a port");
    expect_corrupt("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,\"peer_port\":2},"
                   "{\"host\":\"h\",\"port\":2,\"peer_port\":1}]}", "servers[1]: h uses a port");
    /* The same ports on different hosts are fine. */
    pl_members m;
    ck_assert_msg(decode_text("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"a\",\"port\":1,"
                              "\"peer_port\":2},{\"host\":\"b\",\"port\":1,\"peer_port\":2}]}",
                              &m) == PL_OK, "different hosts may share ports: %s", err);
    pl_members_clear(&m);

    /* 16 servers decode, 17 do not. */
    int o = snprintf(buf, sizeof buf, "{\"epoch\":1,\"op\":0,\"servers\":[");
    for (int i = 0; i < PL_MEMBERS_MAX; i++)
        o += snprintf(buf + o, sizeof buf - (size_t)o,
                      "%s{\"host\":\"h\",\"port\":%d,\"peer_port\":%d}", i ? "," : "",
                      100 + i, 200 + i);
    snprintf(buf + o, sizeof buf - (size_t)o, "]}");
    ck_assert_msg(decode_text(buf, &m) == PL_OK, "16 servers: %s", err);
    ck_assert_uint_eq(m.n, PL_MEMBERS_MAX);
    pl_members_clear(&m);
    snprintf(buf + o, sizeof buf - (size_t)o, ",%s]}", S);
    expect_corrupt(buf, "servers: more than 16 servers");

    /* A NUL inside the buffer is not the end of the input. */
    static const char nul[] = "{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1,"
                              "\"peer_port\":2}]}\0garbage";
    ck_assert_int_eq(pl_members_decode((const uint8_t *)nul, sizeof nul - 1, &m, err, sizeof err),
                     PL_ERR_CORRUPT);
    ck_assert_int_eq(pl_members_decode((const uint8_t *)nul, strlen(nul), &m, NULL, 0), PL_OK);
    pl_members_clear(&m);
    /* Over the size limit. */
    size_t big = 70000;
    uint8_t *huge = malloc(big);
    ck_assert_ptr_nonnull(huge);
    memset(huge, ' ', big);
    ck_assert_int_eq(pl_members_decode(huge, big, &m, err, sizeof err), PL_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "limit") != NULL, "size error names the limit: %s", err);
    free(huge);
}
END_TEST

START_TEST(find_same_describe)
{
    pl_members a, b;
    three(&a);
    three(&b);
    ck_assert_int_eq(pl_members_find(&a, "127.0.0.1", 9101), 1);
    ck_assert_int_eq(pl_members_find(&a, "::1", 9102), 2);
    ck_assert_int_eq(pl_members_find(&a, "127.0.0.1", 8101), -1);
    ck_assert_int_eq(pl_members_find(&a, "localhost", 9100), -1);
    ck_assert_int_eq(pl_members_find(&a, NULL, 9100), -1);

    b.epoch = 5; /* epoch, op and admin_port are not compared */
    b.op = 77;
    b.servers[1].admin_port = 1;
    ck_assert_msg(pl_members_same(&a, &b), "epoch/op/admin_port differ only");
    b.servers[1].port = 8111;
    ck_assert_msg(!pl_members_same(&a, &b), "a different client port is a different list");
    b.servers[1].port = 8101;
    pl_server_conf t = b.servers[0];
    b.servers[0] = b.servers[1];
    b.servers[1] = t;
    ck_assert_msg(!pl_members_same(&a, &b), "order is priority: a reordered list differs");
    pl_members_clear(&b);
    three(&b);
    free(b.servers[2].host);
    b.n = 2;
    ck_assert_msg(!pl_members_same(&a, &b), "a shorter list differs");

    char buf[128];
    a.epoch = 2;
    ck_assert_str_eq(pl_members_describe(&a, buf, sizeof buf),
                     "127.0.0.1:8100, 127.0.0.1:8101, [::1]:8102 (epoch 2)");
    char tiny[12];
    pl_members_describe(&a, tiny, sizeof tiny);
    ck_assert_str_eq(tiny, "127.0.0.1:8");
    pl_members_clear(&a);
    pl_members_clear(&b);
}
END_TEST

static void expect_addr(const char *s, const char *host, unsigned port, unsigned peer)
{
    pl_server_conf c;
    ck_assert_msg(pl_members_parse_addr(s, &c, err, sizeof err) == PL_OK, "%s: %s", s, err);
    ck_assert_str_eq(c.host, host);
    ck_assert_uint_eq(c.port, port);
    ck_assert_uint_eq(c.peer_port, peer);
    ck_assert_uint_eq(c.admin_port, 0);
    free(c.host);
}

static void expect_bad_addr(const char *s, const char *want)
{
    pl_server_conf c;
    err[0] = '\0';
    ck_assert_msg(pl_members_parse_addr(s, &c, err, sizeof err) == PL_ERR_INVALID,
                  "%s should be refused", s);
    ck_assert_ptr_null(c.host);
    ck_assert_msg(strstr(err, want) != NULL, "error for %s should say \"%s\": \"%s\"", s, want,
                  err);
}

START_TEST(parse_addr)
{
    expect_addr("127.0.0.1:8104", "127.0.0.1", 8104, 9104);
    expect_addr("db-3.example.com:8100:9200", "db-3.example.com", 8100, 9200);
    expect_addr("[::1]:8100", "::1", 8100, 9100);
    expect_addr("[fe80::1%eth0]:8100:8200", "fe80::1%eth0", 8100, 8200);
    expect_addr("h:64535", "h", 64535, 65535);

    expect_bad_addr("", "empty address");
    expect_bad_addr(NULL, "empty address");
    expect_bad_addr("127.0.0.1", "missing :PORT");
    expect_bad_addr(":8100", "host must be");
    expect_bad_addr("a b:8100", "host must be");
    expect_bad_addr("h:0", "port must be an integer 1-65535");
    expect_bad_addr("h:65536", "port must be an integer 1-65535");
    expect_bad_addr("h:99999999999999999999999", "port must be");
    expect_bad_addr("h:+80", "port must be");
    expect_bad_addr("h:", "port must be");
    expect_bad_addr("h:8100:", "peer port must be");
    expect_bad_addr("h:8100:0", "peer port must be");
    expect_bad_addr("h:8100x", "expected HOST:PORT[:PEER_PORT]");
    expect_bad_addr("h:8100:9100:7", "IPv6 address goes in brackets");
    expect_bad_addr("::1:8100", "IPv6 address goes in brackets");
    expect_bad_addr("[::1:8100", "closing ]");
    expect_bad_addr("[]:8100", "closing ]");
    expect_bad_addr("[::1]8100", "expected HOST:PORT[:PEER_PORT]");
    expect_bad_addr("[::1]", "missing :PORT");
    expect_bad_addr("h:65000", "default peer port 65000+1000 is above 65535");
    expect_bad_addr("h:8100:8100", "peer port must differ");
    char longhost[300];
    memset(longhost, 'a', 254);
    snprintf(longhost + 254, sizeof longhost - 254, ":1");
    expect_bad_addr(longhost, "longer than 253");
}
END_TEST

static char tmpdir[] = "/tmp/parley-test-members-XXXXXX";

static void rm_dir(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, PL_MEMBERS_FILE);
    unlink(p);
    snprintf(p, sizeof p, "%s/%s.tmp", tmpdir, PL_MEMBERS_FILE);
    unlink(p);
    rmdir(tmpdir);
}

static void write_file(const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, PL_MEMBERS_FILE);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(save_load)
{
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    pl_members m, l;
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_ERR_NOT_FOUND);
    ck_assert_uint_eq(l.n, 0);

    three(&m);
    m.epoch = 3;
    m.op = 99;
    ck_assert_msg(pl_members_save(tmpdir, &m, err, sizeof err) == PL_OK, "save: %s", err);
    ck_assert_msg(pl_members_load(tmpdir, &l, err, sizeof err) == PL_OK, "load: %s", err);
    ck_assert_uint_eq(l.epoch, 3);
    ck_assert_uint_eq(l.op, 99);
    ck_assert_msg(pl_members_same(&l, &m), "load returns what save wrote");
    pl_members_clear(&l);

    /* The file is the canonical encoding plus a newline, and no temp file
     * is left behind. */
    char p[256], text[1024];
    snprintf(p, sizeof p, "%s/%s", tmpdir, PL_MEMBERS_FILE);
    FILE *f = fopen(p, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *enc;
    ck_assert_int_eq(pl_members_encode(&m, &enc, NULL), PL_OK);
    ck_assert_uint_eq(n, strlen(enc) + 1);
    ck_assert_int_eq(memcmp(text, enc, n - 1), 0);
    ck_assert_int_eq(text[n - 1], '\n');
    free(enc);
    snprintf(p, sizeof p, "%s/%s.tmp", tmpdir, PL_MEMBERS_FILE);
    ck_assert_msg(access(p, F_OK) != 0, "the temp file must be renamed away");

    /* A second save replaces the first. */
    m.epoch = 4;
    ck_assert_int_eq(pl_members_save(tmpdir, &m, err, sizeof err), PL_OK);
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_OK);
    ck_assert_uint_eq(l.epoch, 4);
    pl_members_clear(&l);

    /* An invalid membership is never written. */
    m.servers[1].port = 8100;
    ck_assert_int_eq(pl_members_save(tmpdir, &m, err, sizeof err), PL_ERR_INVALID);
    m.servers[1].port = 8101;
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_OK);
    ck_assert_uint_eq(l.epoch, 4);
    pl_members_clear(&l);

    /* Corrupt files: the error names the file and the reason. */
    write_file("{\"epoch\":1,\"op\":0,\"servers\":[{\"host\":\"h\",\"port\":1");
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_ERR_CORRUPT);
    ck_assert_msg(strstr(err, PL_MEMBERS_FILE) && strstr(err, "not JSON"), "%s", err);
    write_file("{\"epoch\":1,\"op\":0,\"servers\":[]}");
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "servers: must list"), "%s", err);
    write_file("");
    ck_assert_int_eq(pl_members_load(tmpdir, &l, err, sizeof err), PL_ERR_CORRUPT);

    /* Save into a directory that does not exist fails with an I/O error. */
    char gone[300];
    snprintf(gone, sizeof gone, "%s/nope", tmpdir);
    ck_assert_int_eq(pl_members_save(gone, &m, err, sizeof err), PL_ERR_IO);
    ck_assert_msg(strstr(err, "cannot create"), "%s", err);
    pl_members_clear(&m);
    rm_dir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("members");
    TCase *tc = tcase_create("members");
    tcase_add_test(tc, from_config_copies);
    tcase_add_test(tc, canonical_bytes);
    tcase_add_test(tc, decode_errors);
    tcase_add_test(tc, find_same_describe);
    tcase_add_test(tc, parse_addr);
    tcase_add_test(tc, save_load);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
