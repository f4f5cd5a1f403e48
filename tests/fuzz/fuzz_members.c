/*
 * tests/fuzz/fuzz_members.c — pl_members_decode (core/members.c): the
 * membership JSON a RECONFIG op carries, DATA_DIR/membership.json and a
 * snapshot header all go through it. The same bytes, as a string, also go
 * to pl_members_parse_addr (an operator's HOST:PORT[:PEER_PORT]).
 *
 * Properties: a refusal is one line and leaves no servers; an accepted
 * membership passes its own checks (encode accepts it), re-decodes from its
 * canonical encoding to the same list, epoch and op, and that encoding is a
 * fixed point; find() locates every server by (host, peer_port). An
 * accepted address has a valid host and two different non-zero ports.
 */
#include <string.h>

#include <parley/common.h>

#include "fuzz.h"
#include "members.h"

static void check_members(const uint8_t *data, size_t size)
{
    pl_members m, d;
    char err[256];
    err[0] = '\0';
    int rc = pl_members_decode(data, size, &m, err, sizeof err);
    if (rc != PL_OK) {
        FUZZ_CHECK(rc == PL_ERR_CORRUPT || rc == PL_ERR_NOMEM, "decode returned %d", rc);
        FUZZ_CHECK(err[0] && !strchr(err, '\n'), "refusal must be one non-empty line: \"%s\"",
                   err);
        FUZZ_CHECK(m.n == 0, "a refused decode left %zu servers", m.n);
        return;
    }
    FUZZ_CHECK(m.n >= 1 && m.n <= PL_MEMBERS_MAX, "accepted %zu servers", m.n);
    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    rc = pl_members_encode(&m, &a, &al);
    FUZZ_CHECK(rc == PL_OK, "encode refused (%d) what decode accepted", rc);
    FUZZ_CHECK(strlen(a) == al, "encoded length %zu but strlen %zu", al, strlen(a));
    rc = pl_members_decode((const uint8_t *)a, al, &d, err, sizeof err);
    FUZZ_CHECK(rc == PL_OK, "the canonical encoding does not decode: %s", err);
    FUZZ_CHECK(pl_members_same(&m, &d) && m.epoch == d.epoch && m.op == d.op,
               "round trip changed the membership");
    rc = pl_members_encode(&d, &b, &bl);
    FUZZ_CHECK(rc == PL_OK && bl == al && memcmp(a, b, al) == 0,
               "encoding is not canonical: %s vs %s", a, b ? b : "(none)");
    for (size_t i = 0; i < m.n; i++)
        FUZZ_CHECK(pl_members_find(&m, m.servers[i].host, m.servers[i].peer_port) == (int)i,
                   "server %zu is not found by its (host, peer_port)", i);
    char line[4096];
    pl_members_describe(&m, line, sizeof line);
    FUZZ_CHECK(!strchr(line, '\n'), "describe wrote more than one line");
    free(a);
    free(b);
    pl_members_clear(&d);
    pl_members_clear(&m);
}

static void check_addr(const uint8_t *data, size_t size)
{
    if (size > 1024)
        return;
    char s[1025], err[512];
    memcpy(s, data, size);
    s[size] = '\0';
    pl_server_conf c;
    int rc = pl_members_parse_addr(s, &c, err, sizeof err);
    if (rc != PL_OK) {
        FUZZ_CHECK(rc == PL_ERR_INVALID || rc == PL_ERR_NOMEM, "parse_addr returned %d", rc);
        FUZZ_CHECK(c.host == NULL, "a refused address left a host");
        return;
    }
    FUZZ_CHECK(c.host && c.host[0] && c.port && c.peer_port && c.port != c.peer_port,
               "accepted address %s has an empty host or bad ports", s);
    /* What parses is a list of one that the codec accepts. */
    pl_members m;
    FUZZ_CHECK(pl_members_from_config(&m, &c, 1) == PL_OK, "parsed address %s is not a valid "
               "membership of one", s);
    pl_members_clear(&m);
    free(c.host);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_members(data, size);
    check_addr(data, size);
    return 0;
}
