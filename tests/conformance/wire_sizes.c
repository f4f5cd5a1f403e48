/*
 * tests/conformance/wire_sizes.c — how many bytes a typical frame of every
 * method costs in each wire format, and a check that each decodes back.
 *
 *   wire-sizes PLUGIN.so OPTIONS_JSON [PLUGIN.so OPTIONS_JSON ...]
 *
 * Prints a Markdown table (one row per frame, one column per transport;
 * docs/protocol.md quotes it) and exits non-zero if any frame fails to
 * encode, to decode, or to re-encode to the very same bytes — the last
 * catches a decoder that silently drops a field the encoder wrote.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/transport.h>

#include "loader.h"

#define MAX_TRANSPORTS 8

typedef struct wire {
    const pl_transport_plugin *t;
    pl_transport_options opt;
    char label[48];
} wire;

/* A 100-byte body, the "typical send". */
static const char body100[] =
    "Hi Bob, are we still on for lunch tomorrow at noon? I booked the usual "
    "table by the window. -- Alice";

static const char token[] = "Vq3x9pLk2mZ8rT4wYb6nHc1sJf7dGa0eUo5iQx2yWz8"; /* 43 chars, like base64url(32 bytes) */

#define CID 0x8c3f5a21d47e9b06ull

static pl_str S(const char *s)
{
    return pl_str_c(s);
}

static pl_request req(uint32_t m)
{
    pl_request r;

    memset(&r, 0, sizeof r);
    r.method = m;
    r.request_id = 7;
    r.client_id = CID;
    r.request_no = 12;
    if (m != PL_M_REGISTER && m != PL_M_LOGIN && m != PL_M_PING && m != PL_M_STATUS)
        r.token = S(token);
    return r;
}

static uint64_t g_ids[3] = { 1201, 1202, 1203 };

/* One typical request per method. */
static int typical_request(size_t i, pl_request *r, const char **what)
{
    switch (i) {
    case 0: *r = req(PL_M_REGISTER); r->username = S("alice");
        r->password = S("correct horse battery"); *what = "register alice"; return 1;
    case 1: *r = req(PL_M_LOGIN); r->username = S("alice");
        r->password = S("correct horse battery"); *what = "login alice"; return 1;
    case 2: *r = req(PL_M_LOGOUT); *what = "logout"; return 1;
    case 3: *r = req(PL_M_LIST_USERS); r->pattern = S("a*"); r->limit = 50;
        *what = "list_users \"a*\" limit 50"; return 1;
    case 4: *r = req(PL_M_SEND); r->to = S("bob"); r->body = S(body100);
        *what = "send to bob, 100-byte body"; return 1;
    case 5: *r = req(PL_M_COUNTS); *what = "counts"; return 1;
    case 6: *r = req(PL_M_READ); r->n = 10; *what = "read 10"; return 1;
    case 7: *r = req(PL_M_HISTORY); r->limit = 20; *what = "history limit 20"; return 1;
    case 8: *r = req(PL_M_CONVERSATION); r->peer = S("bob"); r->limit = 20;
        *what = "conversation bob limit 20"; return 1;
    case 9: *r = req(PL_M_ACK); r->ids = g_ids; r->n_ids = 3; *what = "ack 3 ids"; return 1;
    case 10: *r = req(PL_M_DELETE); r->ids = g_ids; r->n_ids = 1; *what = "delete 1 id"; return 1;
    case 11: *r = req(PL_M_DELETE_ACCOUNT); r->password = S("correct horse battery");
        *what = "delete_account"; return 1;
    case 12: *r = req(PL_M_SUBSCRIBE); r->after_id = 1234; *what = "subscribe after 1234";
        return 1;
    case 13: *r = req(PL_M_STATUS); *what = "status"; return 1;
    case 14: *r = req(PL_M_PING); *what = "ping"; return 1;
    default: return 0;
    }
}

static pl_message g_msgs[2];
static pl_str g_users[3];
static pl_server_status g_servers[3];

static void data_init(void)
{
    static const char *const names[3] = { "alice", "alfred", "amelia" };

    for (int i = 0; i < 2; i++) {
        g_msgs[i].id = 1230 + (uint64_t)i;
        g_msgs[i].from = S(i ? "alice" : "bob");
        g_msgs[i].to = S(i ? "bob" : "alice");
        g_msgs[i].body = S(body100);
        g_msgs[i].time_ms = 1764061200123ull + (uint64_t)i * 1000;
        g_msgs[i].state = PL_MSG_READ;
    }
    for (int i = 0; i < 3; i++) {
        g_users[i] = S(names[i]);
        g_servers[i].id = (uint32_t)i;
        g_servers[i].address = S(i == 0 ? "127.0.0.1:8100" : i == 1 ? "127.0.0.1:8101"
                                                                    : "127.0.0.1:8102");
        g_servers[i].reachable = 1;
        g_servers[i].role = S(i ? "backup" : "primary");
        g_servers[i].view = 4;
        g_servers[i].op = 1234;
        g_servers[i].commit = 1234;
        g_servers[i].applied = 1234;
        g_servers[i].store = S("sqlite");
        g_servers[i].transport = S("tcp");
        g_servers[i].digest = S("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}

static pl_response resp(uint32_t m)
{
    pl_response r;

    memset(&r, 0, sizeof r);
    r.method = m;
    r.request_id = m == PL_M_PUSH || m == PL_M_NONE ? 0 : 7;
    return r;
}

/* One typical response per method, then a push and two errors. */
static int typical_response(size_t i, pl_response *r, const char **what)
{
    switch (i) {
    case 0: *r = resp(PL_M_REGISTER); *what = "register: ok"; return 1;
    case 1: *r = resp(PL_M_LOGIN); r->token = S(token); r->unread = 2;
        *what = "login: token, 2 unread"; return 1;
    case 2: *r = resp(PL_M_LOGOUT); *what = "logout: ok"; return 1;
    case 3: *r = resp(PL_M_LIST_USERS); r->users = g_users; r->n_users = 3;
        *what = "list_users: 3 names"; return 1;
    case 4: *r = resp(PL_M_SEND); r->id = 1235; r->time_ms = 1764061200123ull;
        *what = "send: id, time"; return 1;
    case 5: *r = resp(PL_M_COUNTS); r->unread = 2; r->read = 40; *what = "counts"; return 1;
    case 6: *r = resp(PL_M_READ); r->msgs = g_msgs; r->n_msgs = 2;
        *what = "read: 2 messages of 100 bytes"; return 1;
    case 7: *r = resp(PL_M_HISTORY); r->msgs = g_msgs; r->n_msgs = 2; r->more = 1;
        *what = "history: 2 messages, more"; return 1;
    case 8: *r = resp(PL_M_CONVERSATION); r->msgs = g_msgs; r->n_msgs = 2;
        *what = "conversation: 2 messages"; return 1;
    case 9: *r = resp(PL_M_ACK); *what = "ack: ok"; return 1;
    case 10: *r = resp(PL_M_DELETE); *what = "delete: ok"; return 1;
    case 11: *r = resp(PL_M_DELETE_ACCOUNT); *what = "delete_account: ok"; return 1;
    case 12: *r = resp(PL_M_SUBSCRIBE); *what = "subscribe: ok"; return 1;
    case 13: *r = resp(PL_M_STATUS); r->servers = g_servers; r->n_servers = 3;
        *what = "status: 3 servers"; return 1;
    case 14: *r = resp(PL_M_PING); *what = "ping: ok"; return 1;
    case 15: *r = resp(PL_M_PUSH); r->msgs = g_msgs; r->n_msgs = 1;
        *what = "push: 1 message of 100 bytes"; return 1;
    case 16: *r = resp(PL_M_SEND); r->status = PL_ERR_NOT_PRIMARY;
        r->error = S("not the primary"); r->leader = S("127.0.0.1:8101");
        *what = "send: error not primary + leader"; return 1;
    case 17: *r = resp(PL_M_NONE); r->status = PL_ERR_MALFORMED;
        r->error = S("malformed frame: it does not decode in this wire format "
                     "(max_frame 1048576 bytes); closing the connection");
        *what = "error frame (malformed input)"; return 1;
    default: return 0;
    }
}

/* Encode, decode, re-encode: sizes equal and bytes identical. Returns the
 * encoded size, or 0 after printing why on failure. */
static size_t check_request(const wire *w, const pl_request *r, const char *what)
{
    uint8_t *a = NULL, *b = NULL;
    size_t la = 0, lb = 0, used = 0, size = 0;
    pl_request d;
    void *scratch = NULL;
    int rc = w->t->encode_request(&w->opt, r, &a, &la);

    if (rc != PL_OK) {
        fprintf(stderr, "%s: request \"%s\": encode failed: %s\n", w->label, what, pl_strerror(rc));
        goto done;
    }
    rc = w->t->decode_request(&w->opt, a, la, &used, &d, &scratch);
    if (rc != PL_OK || used != la) {
        fprintf(stderr, "%s: request \"%s\": decode failed: %s (used %zu of %zu)\n", w->label,
                what, pl_strerror(rc), used, la);
        goto done;
    }
    rc = w->t->encode_request(&w->opt, &d, &b, &lb);
    if (rc != PL_OK || lb != la || memcmp(a, b, la) != 0) {
        fprintf(stderr, "%s: request \"%s\": decoded frame re-encodes differently (%zu vs %zu "
                "bytes): a field was lost\n", w->label, what, lb, la);
        goto done;
    }
    size = la;
done:
    w->t->free_scratch(scratch);
    free(a);
    free(b);
    return size;
}

static size_t check_response(const wire *w, const pl_response *r, const char *what)
{
    uint8_t *a = NULL, *b = NULL;
    size_t la = 0, lb = 0, used = 0, size = 0;
    pl_response d;
    void *scratch = NULL;
    int rc = w->t->encode_response(&w->opt, r, &a, &la);

    if (rc != PL_OK) {
        fprintf(stderr, "%s: response \"%s\": encode failed: %s\n", w->label, what,
                pl_strerror(rc));
        goto done;
    }
    rc = w->t->decode_response(&w->opt, a, la, &used, &d, &scratch);
    if (rc != PL_OK || used != la) {
        fprintf(stderr, "%s: response \"%s\": decode failed: %s (used %zu of %zu)\n", w->label,
                what, pl_strerror(rc), used, la);
        goto done;
    }
    rc = w->t->encode_response(&w->opt, &d, &b, &lb);
    if (rc != PL_OK || lb != la || memcmp(a, b, la) != 0) {
        fprintf(stderr, "%s: response \"%s\": decoded frame re-encodes differently (%zu vs %zu "
                "bytes): a field was lost\n", w->label, what, lb, la);
        goto done;
    }
    size = la;
done:
    w->t->free_scratch(scratch);
    free(a);
    free(b);
    return size;
}

/* "tcp" + "/json" when the options name a codec. */
static void make_label(wire *w, const char *options)
{
    const char *c = options ? strstr(options, "\"codec\"") : NULL;
    char codec[16] = "";

    if (c && (c = strchr(c + 7, '"')) != NULL)
        sscanf(c + 1, "%15[^\"]", codec);
    snprintf(w->label, sizeof w->label, "%s%s%s", w->t->name, codec[0] ? "/" : "", codec);
}

static void print_row(const char *kind, const char *what, const size_t *sizes, int n)
{
    printf("| %-8s | %-36s |", kind, what);
    for (int i = 0; i < n; i++)
        printf(" %12zu |", sizes[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    wire w[MAX_TRANSPORTS];
    pl_plugin *plugins[MAX_TRANSPORTS];
    int n = 0, failed = 0;
    size_t sizes[MAX_TRANSPORTS];

    if (argc < 3 || (argc - 1) % 2 != 0 || (argc - 1) / 2 > MAX_TRANSPORTS) {
        fprintf(stderr, "usage: %s PLUGIN.so OPTIONS_JSON [PLUGIN.so OPTIONS_JSON ...] "
                "(at most %d)\n", argv[0], MAX_TRANSPORTS);
        return 2;
    }
    data_init();
    for (int a = 1; a + 1 < argc; a += 2) {
        char err[512] = "";

        plugins[n] = pl_plugin_load("transport", argv[a], NULL, err, sizeof err);
        if (!plugins[n]) {
            fprintf(stderr, "%s\n", err);
            failed = 1;
            continue;
        }
        memset(&w[n], 0, sizeof w[n]);
        w[n].t = pl_plugin_transport(plugins[n]);
        w[n].opt.host = "127.0.0.1";
        w[n].opt.options_json = argv[a + 1];
        make_label(&w[n], argv[a + 1]);
        n++;
    }
    if (n == 0)
        return 1;

    printf("| %-8s | %-36s |", "frame", "typical example");
    for (int i = 0; i < n; i++)
        printf(" %12s |", w[i].label);
    printf("\n|----------|--------------------------------------|");
    for (int i = 0; i < n; i++)
        printf("-------------:|");
    printf("\n");
    for (size_t k = 0;; k++) {
        pl_request r;
        const char *what;

        if (!typical_request(k, &r, &what))
            break;
        for (int i = 0; i < n; i++)
            if ((sizes[i] = check_request(&w[i], &r, what)) == 0)
                failed = 1;
        print_row("request", what, sizes, n);
    }
    for (size_t k = 0;; k++) {
        pl_response r;
        const char *what;

        if (!typical_response(k, &r, &what))
            break;
        for (int i = 0; i < n; i++)
            if ((sizes[i] = check_response(&w[i], &r, what)) == 0)
                failed = 1;
        print_row("response", what, sizes, n);
    }
    printf("\n(bytes per frame, framing included; 0 = failed, see stderr)\n");
    for (int i = 0; i < n; i++)
        pl_plugin_unload(plugins[i]);
    if (failed)
        fprintf(stderr, "wire-sizes: some frames did not round-trip (see above)\n");
    return failed ? 1 : 0;
}
