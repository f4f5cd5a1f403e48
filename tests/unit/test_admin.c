/*
 * tests/unit/test_admin.c — the admin HTTP listener's /cluster/ endpoints
 * (core/admin.c) against a fake pl_admin_cluster: the token (403 when none
 * is configured, 401 when missing or wrong), the wanted list handed to
 * change() for add/remove/replace, refusals that never reach change(), a
 * 421 relayed as the server wrote it, and the reply handle outliving its
 * HTTP client and the listener itself.
 *
 * One thread: the test's client socket is non-blocking and the event loop
 * is stepped while the test waits for the answer.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <parley/common.h>

#include "admin.h"
#include "members.h"

#define TOKEN "0123456789abcdef-operator"

static struct event_base *base;
static pl_admin *adm;
static pl_metrics metrics;
static uint16_t port;
static pl_members cur;

/* What the fake server's change() does. */
enum { REPLY_NOW, REPLY_421, DEFER };
static int mode;
static int changes;               /* change() calls */
static char last_want[2048];      /* encoding of the last wanted list */
static void *deferred;            /* handle kept by DEFER */
static pl_admin_reply_fn deferred_reply;

static char *fake_members(void *ud)
{
    (void)ud;
    const char *doc = "{\"epoch\":0,\"servers\":[],\"role\":\"primary\"}";
    char *s = malloc(strlen(doc) + 1);
    if (s)
        strcpy(s, doc);
    return s;
}

static const struct pl_members *fake_current(void *ud)
{
    (void)ud;
    return &cur;
}

static void fake_change(void *ud, const struct pl_members *want, pl_admin_reply_fn reply, void *req)
{
    (void)ud;
    changes++;
    char *text = NULL;
    ck_assert_msg(pl_members_encode(want, &text, NULL) == PL_OK,
                  "admin.c handed change() a list that does not encode");
    snprintf(last_want, sizeof last_want, "%s", text);
    free(text);
    if (mode == REPLY_421) {
        reply(req, 421, "{\"error\":\"not the primary\",\"primary\":1}");
    } else if (mode == REPLY_NOW) {
        reply(req, 200, "{\"epoch\":1}");
    } else {
        deferred = req;
        deferred_reply = reply;
    }
}

static void fill(void *ud, pl_admin_gauges *g)
{
    (void)ud;
    g->role = "primary";
}

static void setup(void)
{
    char err[256];
    /* A free port: bind 0, read it, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    ck_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    port = ntohs(sa.sin_port);
    close(fd);

    base = event_base_new();
    ck_assert_ptr_nonnull(base);
    adm = pl_admin_new(base, "127.0.0.1", port, &metrics, fill, NULL, err, sizeof err);
    ck_assert_msg(adm != NULL, "listener: %s", err);
    pl_server_conf s[3] = {
        { "127.0.0.1", 8100, 9100, 0 }, { "127.0.0.1", 8101, 9101, 0 },
        { "127.0.0.1", 8102, 9102, 0 },
    };
    ck_assert_int_eq(pl_members_from_config(&cur, s, 3), PL_OK);
    cur.epoch = 4;
    cur.op = 50;
    pl_admin_cluster c = { NULL, fake_members, fake_current, fake_change };
    pl_admin_set_cluster(adm, &c, TOKEN);
    mode = REPLY_NOW;
    changes = 0;
    last_want[0] = '\0';
}

static void teardown(void)
{
    pl_admin_free(adm);
    adm = NULL;
    event_base_free(base);
    pl_members_clear(&cur);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sends one request; returns the connected socket (non-blocking). */
static int send_req(const char *method, const char *path, const char *auth)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect: %s",
                  strerror(errno));
    char req[1024];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: x\r\n%s%s%sContent-Length: 0\r\n\r\n",
                     method, path, auth ? "Authorization: " : "", auth ? auth : "",
                     auth ? "\r\n" : "");
    ck_assert_int_eq(send(fd, req, (size_t)n, 0), n);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* Steps the loop until the server closes fd; returns the HTTP status and
 * the body in body. */
static int read_answer(int fd, char *body, size_t len)
{
    char buf[8192];
    size_t got = 0;
    double deadline = now() + 5;
    for (;;) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            break;
        ck_assert_msg(errno == EAGAIN || errno == EWOULDBLOCK, "recv: %s", strerror(errno));
        ck_assert_msg(now() < deadline, "no answer within 5 s");
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    close(fd);
    buf[got] = '\0';
    int status = 0;
    ck_assert_msg(sscanf(buf, "HTTP/1.%*d %d", &status) == 1, "not HTTP: %s", buf);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, len, "%s", b ? b + 4 : "");
    return status;
}

static int http(const char *method, const char *path, const char *auth, char *body, size_t len)
{
    return read_answer(send_req(method, path, auth), body, len);
}

#define BEARER "Bearer " TOKEN

START_TEST(members_and_metrics)
{
    char body[4096];
    ck_assert_int_eq(http("GET", "/cluster/members", NULL, body, sizeof body), 200);
    ck_assert_msg(strstr(body, "\"role\":\"primary\""), "members() document served: %s", body);
    ck_assert_int_eq(http("POST", "/cluster/members", BEARER, body, sizeof body), 405);
    ck_assert_int_eq(http("GET", "/metrics", NULL, body, sizeof body), 200);
    ck_assert_msg(strstr(body, "parley_info"), "metrics still served");
    ck_assert_int_eq(http("GET", "/cluster/nope", NULL, body, sizeof body), 404);
    ck_assert_int_eq(http("GET", "/cluster/add-server?addr=h:1", BEARER, body, sizeof body), 405);
    ck_assert_int_eq(changes, 0);
}
END_TEST

START_TEST(token)
{
    char body[4096];
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103", NULL, body,
                          sizeof body), 401);
    ck_assert_msg(strstr(body, "Authorization: Bearer TOKEN"), "401 says what is missing: %s", body);
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103",
                          "Bearer 0123456789abcdef-operatoR", body, sizeof body), 401);
    ck_assert_msg(strstr(body, "wrong operator token"), "%s", body);
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103",
                          "Bearer " TOKEN "x", body, sizeof body), 401);
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103", "Basic " TOKEN,
                          body, sizeof body), 401);
    ck_assert_int_eq(changes, 0);

    pl_admin_cluster c = { NULL, fake_members, fake_current, fake_change };
    pl_admin_set_cluster(adm, &c, NULL);
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103", BEARER, body,
                          sizeof body), 403);
    ck_assert_msg(strstr(body, "membership changes need admin.token or admin.token_file in "
                               "the config"), "403 names the keys: %s", body);
    ck_assert_int_eq(changes, 0);
    /* Reading the membership needs no token. */
    ck_assert_int_eq(http("GET", "/cluster/members", NULL, body, sizeof body), 200);
}
END_TEST

START_TEST(relay_421)
{
    char body[4096];
    mode = REPLY_421;
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103", BEARER, body,
                          sizeof body), 421);
    ck_assert_msg(strstr(body, "{\"error\":\"not the primary\",\"primary\":1}"),
                  "the server's 421 body is relayed as is: %s", body);
    ck_assert_int_eq(changes, 1);
}
END_TEST

START_TEST(wanted_lists)
{
    char body[4096];
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=127.0.0.1:8103", "bearer " TOKEN,
                          body, sizeof body), 200);
    ck_assert_str_eq(body, "{\"epoch\":1}\n");
    ck_assert_str_eq(last_want,
                     "{\"epoch\":5,\"op\":0,\"servers\":[{\"host\":\"127.0.0.1\",\"port\":8100,"
                     "\"peer_port\":9100},{\"host\":\"127.0.0.1\",\"port\":8101,\"peer_port\":9101},"
                     "{\"host\":\"127.0.0.1\",\"port\":8102,\"peer_port\":9102},{\"host\":"
                     "\"127.0.0.1\",\"port\":8103,\"peer_port\":9103}]}");
    ck_assert_int_eq(http("POST", "/cluster/add-server?addr=%5B%3A%3A1%5D%3A8100%3A8200", BEARER,
                          body, sizeof body), 200);
    ck_assert_msg(strstr(last_want, "{\"host\":\"::1\",\"port\":8100,\"peer_port\":8200}]}"),
                  "URL-encoded IPv6 address appended: %s", last_want);

    ck_assert_int_eq(http("POST", "/cluster/remove-server?addr=127.0.0.1:8100", BEARER, body,
                          sizeof body), 200);
    ck_assert_str_eq(last_want,
                     "{\"epoch\":5,\"op\":0,\"servers\":[{\"host\":\"127.0.0.1\",\"port\":8101,"
                     "\"peer_port\":9101},{\"host\":\"127.0.0.1\",\"port\":8102,\"peer_port\":9102}]}");
    ck_assert_int_eq(http("POST", "/cluster/remove-server?addr=127.0.0.1:8101:9101", BEARER, body,
                          sizeof body), 200);
    ck_assert_msg(!strstr(last_want, "8101"), "removed by (host, peer_port): %s", last_want);

    ck_assert_int_eq(http("POST", "/cluster/replace-server?old=127.0.0.1:8101&new=127.0.0.1:8201",
                          BEARER, body, sizeof body), 200);
    ck_assert_str_eq(last_want,
                     "{\"epoch\":5,\"op\":0,\"servers\":[{\"host\":\"127.0.0.1\",\"port\":8100,"
                     "\"peer_port\":9100},{\"host\":\"127.0.0.1\",\"port\":8201,\"peer_port\":9201},"
                     "{\"host\":\"127.0.0.1\",\"port\":8102,\"peer_port\":9102}]}");
    /* The replaced server's own ports may be reused by its replacement. */
    ck_assert_int_eq(http("POST", "/cluster/replace-server?old=127.0.0.1:8101&new=127.0.0.1:9101:8101",
                          BEARER, body, sizeof body), 200);
    ck_assert_int_eq(changes, 6);
}
END_TEST

START_TEST(refusals)
{
    char body[4096];
    static const struct { const char *path; int status; const char *why; } cases[] = {
        { "/cluster/add-server", 400, "missing addr=HOST:PORT[:PEER_PORT]" },
        { "/cluster/add-server?address=h:1", 400, "missing addr=" },
        { "/cluster/add-server?addr=h", 400, "missing :PORT" },
        { "/cluster/add-server?addr=127.0.0.1:8101", 409, "127.0.0.1:8101 is already a member" },
        { "/cluster/add-server?addr=127.0.0.1:7777:9102", 409, "already a member" },
        { "/cluster/add-server?addr=127.0.0.1:9102:7777", 409, "clash with server 2" },
        { "/cluster/add-server?addr=127.0.0.1:9100", 409, "clash with server 0" },
        { "/cluster/remove-server?addr=127.0.0.1:8109", 409, "127.0.0.1:8109 is not a member" },
        { "/cluster/remove-server?addr=127.0.0.1:8101:9999", 409, "is not a member" },
        { "/cluster/replace-server?old=127.0.0.1:8101", 400, "missing new=" },
        { "/cluster/replace-server?old=127.0.0.1:8109&new=h:1", 409, "(old) is not a member" },
        { "/cluster/replace-server?old=127.0.0.1:8101&new=127.0.0.1:8102", 409,
          "(new) is already a member" },
        { "/cluster/replace-server?old=127.0.0.1:8101&new=127.0.0.1:9102:8300", 409,
          "clash with server 2" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = http("POST", cases[i].path, BEARER, body, sizeof body);
        ck_assert_msg(st == cases[i].status, "%s: status %d, want %d (%s)", cases[i].path, st,
                      cases[i].status, body);
        ck_assert_msg(strstr(body, "{\"error\":\"") && strstr(body, cases[i].why),
                      "%s: the error should say \"%s\": %s", cases[i].path, cases[i].why, body);
    }
    ck_assert_int_eq(changes, 0);

    /* The last server cannot be removed. */
    pl_members_clear(&cur);
    pl_server_conf one[1] = { { "127.0.0.1", 8100, 9100, 0 } };
    ck_assert_int_eq(pl_members_from_config(&cur, one, 1), PL_OK);
    ck_assert_int_eq(http("POST", "/cluster/remove-server?addr=127.0.0.1:8100", BEARER, body,
                          sizeof body), 409);
    ck_assert_msg(strstr(body, "would leave no servers"), "%s", body);
    ck_assert_int_eq(changes, 0);
}
END_TEST

/* The client hangs up while the change is pending, then the server replies:
 * nothing may touch a freed request (valgrind/ASan builds check). */
START_TEST(client_gone)
{
    char body[4096];
    mode = DEFER;
    int fd = send_req("POST", "/cluster/add-server?addr=127.0.0.1:8103", BEARER);
    double deadline = now() + 5;
    while (!deferred) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ck_assert_msg(now() < deadline, "change() not called within 5 s");
    }
    close(fd);
    for (int i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    deferred_reply(deferred, 200, "{\"epoch\":5}");
    deferred = NULL;
    for (int i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    /* The listener still serves. */
    mode = REPLY_NOW;
    ck_assert_int_eq(http("GET", "/cluster/members", NULL, body, sizeof body), 200);
}
END_TEST

/* A late reply answers the client that is still waiting. */
START_TEST(late_reply)
{
    char body[4096];
    mode = DEFER;
    int fd = send_req("POST", "/cluster/remove-server?addr=127.0.0.1:8102", BEARER);
    double deadline = now() + 5;
    while (!deferred) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ck_assert_msg(now() < deadline, "change() not called within 5 s");
    }
    deferred_reply(deferred, 504, "{\"error\":\"server 127.0.0.1:8104 did not catch up\"}");
    deferred = NULL;
    ck_assert_int_eq(read_answer(fd, body, sizeof body), 504);
    ck_assert_msg(strstr(body, "did not catch up"), "%s", body);
}
END_TEST

/* The listener is freed while a change is pending: its handle stays valid
 * until the server's reply. */
START_TEST(free_while_pending)
{
    mode = DEFER;
    int fd = send_req("POST", "/cluster/add-server?addr=127.0.0.1:8103", BEARER);
    double deadline = now() + 5;
    while (!deferred) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ck_assert_msg(now() < deadline, "change() not called within 5 s");
    }
    pl_admin_free(adm);
    adm = NULL;
    deferred_reply(deferred, 200, "{}");
    deferred = NULL;
    close(fd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("cluster");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, members_and_metrics);
    tcase_add_test(tc, token);
    tcase_add_test(tc, relay_421);
    tcase_add_test(tc, wanted_lists);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, client_gone);
    tcase_add_test(tc, late_reply);
    tcase_add_test(tc, free_while_pending);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
