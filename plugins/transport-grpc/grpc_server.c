/*
 * grpc_server.c — the server half of the gRPC transport: one nghttp2 server
 * session per accepted TCP connection, on a libevent bufferevent.
 *
 * Every gRPC call is one HTTP/2 stream (a gr_call). When its request is
 * complete it becomes one pl_request for the core, whose request_id is
 *
 *     request_id = (per-connection counter << 31) | stream id
 *
 * so the core's answer finds its stream again with
 * nghttp2_session_get_stream_user_data(), and an answer for a stream that
 * ended meanwhile (cancelled, deadline, reset) is recognised and dropped:
 * stream ids are never reused on a connection, and the counter part tells
 * a call apart from an internal request (stream id 0, see below).
 *
 * chat.ChatService calls (the prototype's interface) are mapped here onto
 * parley methods; parley.grpcish.Parley/Call carries pl_request /
 * pl_response as they are (grpc_int.h).
 *
 * Sessions of chat.ChatService belong to the connection, as in the
 * prototype (which kept peer -> username): a successful Login stores the
 * session token on the connection and every later call of that connection
 * carries it into its pl_request; the core stays unchanged. No other
 * connection can use it (the token never leaves the server), and when the
 * connection ends its session is logged out. Delete account needs the
 * password in parley but DeleteAccountRequest has none, so the password of
 * the connection's Login is kept (and wiped on logout, delete, close).
 *
 * Internal requests (stream id 0) are the plugin's own business with the
 * core: the PL_M_SUBSCRIBE behind SubscribeToMessages, the PL_M_ACK that
 * marks a message delivered on such a stream as read (the prototype filed
 * messages for a logged-in recipient as read), the PL_M_LOGOUT of a session
 * replaced by a new Login or left behind by a closed connection.
 *
 * Output is produced only by nghttp2_session_mem_send() outside nghttp2's
 * own callbacks (conn_flush), so the core may answer from inside
 * host->request (which runs inside mem_recv) without re-entering nghttp2.
 * Connections are torn down from a deferred event (conn_reap), so no host
 * callback ever runs inside another one.
 *
 * Limits: a request message over max_frame ends its call with
 * RESOURCE_EXHAUSTED; request bytes buffered per connection are bounded by
 * GR_CONN_IN_MAX; a subscribe stream whose client does not read is ended
 * with RESOURCE_EXHAUSTED once GR_STREAM_OUT_MAX bytes wait for it; output
 * stops being produced while the socket has GR_OUT_HIGH bytes queued.
 * Malformed HTTP/2 or protobuf closes that connection only.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>

#include "chat.pb-c.h"
#include "grpc_int.h"
#include "health.pb-c.h"

#define GR_SID_MASK 0x7fffffffull
#define GR_OUT_HIGH (1u << 20)            /* socket output queued: stop producing */
#define GR_STREAM_OUT_MAX (4u << 20)      /* bytes waiting on one stream */
#define GR_CONN_IN_MAX_MSGS 4u            /* request bytes per connection: 4 x max_frame */
#define GR_WINDOW (1u << 20)              /* per-stream receive window */
#define GR_CLOSE_SECS 5                   /* closing: wait this long for output to leave */
#define GR_BACKLOG 512
#define GR_MSG_TEXT 256

enum gr_rpc {
    R_NATIVE,
    R_CREATE, R_LOGIN, R_LOGOUT, R_DELETE_ACCOUNT, R_LIST, R_SEND, R_UNREAD, R_READ,
    R_POP, R_GETREAD, R_DELETE, R_SUBSCRIBE, R_HEALTH,
    R_STD_CHECK, R_STD_WATCH,   /* grpc.health.v1.Health: the plugin answers, not the core */
    R_REFLECT, R_REFLECT_ALPHA, /* server reflection: the plugin answers, message by message */
    R__COUNT
};

static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *req;
} gr_rpcs[R__COUNT] = {
    [R_NATIVE] = { GR_NATIVE_PATH, NULL },
    [R_CREATE] = { "/chat.ChatService/CreateAccount", &chat__create_account_request__descriptor },
    [R_LOGIN] = { "/chat.ChatService/Login", &chat__login_request__descriptor },
    [R_LOGOUT] = { "/chat.ChatService/Logout", &chat__logout_request__descriptor },
    [R_DELETE_ACCOUNT] = { "/chat.ChatService/DeleteAccount", &chat__delete_account_request__descriptor },
    [R_LIST] = { "/chat.ChatService/ListUsers", &chat__list_users_request__descriptor },
    [R_SEND] = { "/chat.ChatService/SendMessage", &chat__send_message_request__descriptor },
    [R_UNREAD] = { "/chat.ChatService/GetNumberOfUnreadMessages",
                   &chat__get_number_of_unread_messages_request__descriptor },
    [R_READ] = { "/chat.ChatService/GetNumberOfReadMessages",
                 &chat__get_number_of_read_messages_request__descriptor },
    [R_POP] = { "/chat.ChatService/PopUnreadMessages", &chat__pop_unread_messages_request__descriptor },
    [R_GETREAD] = { "/chat.ChatService/GetReadMessages", &chat__get_read_messages_request__descriptor },
    [R_DELETE] = { "/chat.ChatService/DeleteMessages", &chat__delete_messages_request__descriptor },
    [R_SUBSCRIBE] = { "/chat.ChatService/SubscribeToMessages", &chat__subscribe_request__descriptor },
    [R_HEALTH] = { "/chat.ChatService/Health", &chat__empty__descriptor },
    [R_STD_CHECK] = { "/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor },
    [R_STD_WATCH] = { "/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor },
    [R_REFLECT] = { "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", NULL },
    [R_REFLECT_ALPHA] = { "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", NULL },
};

/* Internal requests: what the answer is for. */
enum { I_SUBSCRIBE = 1, I_ACK, I_LOGOUT };

typedef struct gr_internal {
    struct gr_internal *next;
    uint64_t rid;
    int kind;
} gr_internal;

typedef struct gr_call gr_call;

struct pl_transport_server {
    pl_transport_host host;
    gr_opts opts;
    struct evconnlistener *lis;
    pl_transport_conn *conns;
    char addr[80];
    int freeing;
    int serving;              /* server_serving (v 2): 1, 0, or -1 before the core said */
    gr_reflect *reflect;      /* built at the first reflection call */
};

struct pl_transport_conn {
    pl_transport_server *srv;
    pl_transport_conn *prev, *next;
    struct bufferevent *bev;
    nghttp2_session *ng;
    struct event *reap_ev;
    void *ctx;                /* the core's; NULL until conn_open accepted */
    char peer[80];
    int in_ng;                /* inside nghttp2 (mem_recv / mem_send): no flushing */
    int closing;              /* GOAWAY sent; close once output has left */
    int reaping;              /* teardown scheduled or running: no more core calls */
    int refusing;             /* refused by the core: the first call gets the reason */
    uint32_t refusal_status;  /* its gRPC status */
    uint32_t refusal_code;    /* and the HTTP/2 error of the GOAWAY that follows */
    char refusal[200];        /* the core's reason */
    uint64_t seq;             /* request counter (upper bits of request ids) */
    size_t in_bytes;          /* request bytes buffered over all calls */
    gr_call *calls;
    gr_internal *internals;
    uint32_t n_subs;          /* chat.ChatService subscribe streams accepted */
    int sub_active;           /* the core has our PL_M_SUBSCRIBE for the current token */
    char token[PL_TOKEN_MAX];
    uint32_t token_len;
    char password[PL_PASSWORD_MAX];
    uint32_t password_len;
};

struct gr_call {
    pl_transport_conn *conn;
    gr_call *prev, *next;
    int32_t sid;
    int rpc;                  /* enum gr_rpc, -1 = unknown path */
    int bad_method;           /* not POST */
    int bad_ct;               /* content-type is not application/grpc */
    char encoding[32];        /* grpc-encoding */
    uint64_t rid;             /* request id handed to the core, 0 = none yet */
    uint64_t native_rid;      /* the client's own request id (native calls) */
    struct evbuffer *in;
    struct evbuffer *out;
    struct event *deadline;
    int dispatched;
    int answered;             /* the core's answer to rid came */
    int streaming;            /* a subscribe stream: stays open for pushes */
    int legacy_sub;           /* accepted chat.ChatService subscribe stream */
    int list_none;            /* ListUsers limit 0: answer an empty page */
    int watch;                /* grpc.health.v1 Watch: sends each change */
    int watch_known;          /* ... of a service we report on */
    int watch_sent;           /* the status it sent last */
    int headers_sent;
    int deferred;
    int finished;             /* status decided; trailers follow the data */
    uint32_t status;
    char message[GR_MSG_TEXT];
    char *pw;                 /* Login: the password, until the answer */
    uint32_t pw_len;
};

static void conn_flush(pl_transport_conn *c);
static void conn_begin_close(pl_transport_conn *c, uint32_t h2err);
static void call_malformed(gr_call *call, const char *what);

static void srv_log(pl_transport_server *srv, int level, const char *fmt, ...) PL_PRINTF(3, 4);
static void srv_log(pl_transport_server *srv, int level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!srv->host.log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    srv->host.log(srv->host.ud, level, "%s", line);
}

/* ------------------------------------------------------------- sessions */

static void session_clear(pl_transport_conn *c)
{
    memset(c->token, 0, sizeof c->token);
    memset(c->password, 0, sizeof c->password);
    c->token_len = 0;
    c->password_len = 0;
    c->sub_active = 0;
}

static uint64_t next_rid(pl_transport_conn *c, int32_t sid)
{
    return (++c->seq << 31) | (uint64_t)(uint32_t)sid;
}

/* Hand one request of our own to the core and remember what it is for. */
static void internal_request(pl_transport_conn *c, int kind, pl_request *q)
{
    gr_internal *in = calloc(1, sizeof *in);
    if (!in) {
        srv_log(c->srv, PL_LOG_WARN, "grpc %s: out of memory; %s not sent", c->peer,
                pl_method_name(q->method));
        return;
    }
    in->rid = next_rid(c, 0);
    in->kind = kind;
    in->next = c->internals;
    c->internals = in;
    q->request_id = in->rid;
    c->srv->host.request(c->srv->host.ud, c->ctx, q);
}

/* The prototype streamed only messages sent after the subscription, so the
 * core's unread backlog is skipped (after_id = the largest id). */
static void legacy_sub_maybe(pl_transport_conn *c)
{
    if (c->n_subs == 0 || c->token_len == 0 || c->sub_active || c->reaping)
        return;
    c->sub_active = 1;
    pl_request q = { .method = PL_M_SUBSCRIBE, .token = { c->token, c->token_len },
                     .after_id = UINT64_MAX };
    internal_request(c, I_SUBSCRIBE, &q);
}

static void internal_logout(pl_transport_conn *c, const char *token, uint32_t len)
{
    pl_request q = { .method = PL_M_LOGOUT, .token = { token, len } };
    internal_request(c, I_LOGOUT, &q);
}

/* ----------------------------------------------------------------- calls */

static void call_free(gr_call *call)
{
    pl_transport_conn *c = call->conn;

    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    if (call->legacy_sub && c->n_subs)
        c->n_subs--;
    if (call->in) {
        c->in_bytes -= evbuffer_get_length(call->in);
        evbuffer_free(call->in);
    }
    if (call->out)
        evbuffer_free(call->out);
    if (call->deadline)
        event_free(call->deadline);
    if (call->pw) {
        memset(call->pw, 0, call->pw_len);
        free(call->pw);
    }
    free(call);
}

/* gRPC's grpc-message is percent-encoded: every byte outside printable
 * ASCII, and '%' itself. */
static void pct_encode(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < outlen; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = 0;
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

static int submit_trailers(gr_call *call)
{
    char st[12], msg[GR_MSG_TEXT * 3];
    snprintf(st, sizeof st, "%u", call->status);
    pct_encode(call->message, msg, sizeof msg);
    nghttp2_nv nv[2] = { NV("grpc-status", st), NV("grpc-message", msg) };
    return nghttp2_submit_trailer(call->conn->ng, call->sid, nv, msg[0] ? 2 : 1);
}

static ssize_t call_read_cb(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    gr_call *call = src->ptr;
    size_t avail = evbuffer_get_length(call->out);
    int n = 0;

    (void)ng;
    (void)sid;
    (void)ud;
    if (avail) {
        n = evbuffer_remove(call->out, buf, avail < length ? avail : length);
        if (n < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (evbuffer_get_length(call->out) > 0 || !call->finished)
            return n;
    } else if (!call->finished) {
        call->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (submit_trailers(call) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return n;
}

static void call_start_response(gr_call *call)
{
    if (call->headers_sent)
        return;
    call->headers_sent = 1;
    nghttp2_nv nv[2] = { NV(":status", "200"), NV("content-type", "application/grpc") };
    nghttp2_data_provider prd = { .source.ptr = call, .read_callback = call_read_cb };
    if (nghttp2_submit_response(call->conn->ng, call->sid, nv, 2, &prd) != 0)
        nghttp2_submit_rst_stream(call->conn->ng, NGHTTP2_FLAG_NONE, call->sid,
                                  NGHTTP2_INTERNAL_ERROR);
}

static void call_resume(gr_call *call)
{
    if (call->deferred) {
        call->deferred = 0;
        nghttp2_session_resume_data(call->conn->ng, call->sid);
    }
}

/* Decide the call's status. With nothing sent yet this is a Trailers-Only
 * response (one HEADERS frame with END_STREAM); otherwise the trailers
 * follow the queued messages. */
static void call_finish(gr_call *call, uint32_t status, const char *text)
{
    if (call->finished)
        return;
    call->finished = 1;
    call->status = status;
    snprintf(call->message, sizeof call->message, "%s", text ? text : "");
    if (call->deadline)
        event_del(call->deadline);
    if (!call->headers_sent && evbuffer_get_length(call->out) == 0) {
        char st[12], msg[GR_MSG_TEXT * 3];
        snprintf(st, sizeof st, "%u", status);
        pct_encode(call->message, msg, sizeof msg);
        nghttp2_nv nv[4] = { NV(":status", "200"), NV("content-type", "application/grpc"),
                             NV("grpc-status", st), NV("grpc-message", msg) };
        call->headers_sent = 1;
        if (nghttp2_submit_response(call->conn->ng, call->sid, nv, msg[0] ? 4 : 3, NULL) != 0)
            nghttp2_submit_rst_stream(call->conn->ng, NGHTTP2_FLAG_NONE, call->sid,
                                      NGHTTP2_INTERNAL_ERROR);
        return;
    }
    call_start_response(call);
    call_resume(call);
}

/* Queue one length-prefixed message on the call. */
static int call_send_msg(gr_call *call, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t hdr[GR_PREFIX] = { 0 };
    uint8_t *buf;

    if (n + GR_PREFIX > call->conn->srv->opts.max_msg)
        return PL_ERR_FRAME_TOO_LARGE;
    if (!(buf = malloc(n ? n : 1)))
        return PL_ERR_NOMEM;
    protobuf_c_message_pack(m, buf);
    pl_grpcish_put_be32(hdr + 1, (uint32_t)n);
    int rc = evbuffer_add(call->out, hdr, sizeof hdr) == 0 && evbuffer_add(call->out, buf, n) == 0
                 ? PL_OK : PL_ERR_NOMEM;
    free(buf);
    call_start_response(call);
    call_resume(call);
    return rc;
}

static int call_send_raw(gr_call *call, uint8_t *frame, size_t len)
{
    int rc = evbuffer_add(call->out, frame, len) == 0 ? PL_OK : PL_ERR_NOMEM;
    call_start_response(call);
    call_resume(call);
    return rc;
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    gr_call *call = arg;
    (void)fd;
    (void)what;
    call_finish(call, GR_DEADLINE_EXCEEDED, "Deadline Exceeded");
    conn_flush(call->conn);
}

/* grpc-timeout: 1-8 digits and a unit (H M S m u n). */
static int parse_timeout(const uint8_t *v, size_t len, struct timeval *tv)
{
    uint64_t n = 0, us;

    if (len < 2 || len > 9)
        return -1;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[len - 1]) {
    case 'H': us = n * 3600000000ull; break;
    case 'M': us = n * 60000000ull; break;
    case 'S': us = n * 1000000ull; break;
    case 'm': us = n * 1000ull; break;
    case 'u': us = n; break;
    case 'n': us = n / 1000u; break;
    default: return -1;
    }
    tv->tv_sec = (time_t)(us / 1000000u);
    tv->tv_usec = (suseconds_t)(us % 1000000u);
    return 0;
}

/* --------------------------------------------------------- legacy answers */

static char *dup_str(pl_str s)
{
    char *p = malloc((size_t)s.len + 1);
    if (p) {
        if (s.len)
            memcpy(p, s.ptr, s.len);
        p[s.len] = 0;
    }
    return p;
}

/* Message ids are 64-bit in parley and int32 here; an id past 2^31-1 has
 * no faithful value on this wire and is sent as -1 (docs/protocol.md). */
static int32_t wire_id(uint64_t id)
{
    return id > INT32_MAX ? -1 : (int32_t)id;
}

/* proto3 leaves zero and empty fields out; so do we. */
static void fill_message(Chat__Message *pm, const pl_message *m, char *sender, char *content)
{
    chat__message__init(pm);
    int32_t id = wire_id(m->id);
    pm->has_id = id != 0;
    pm->id = id;
    pm->sender = m->from.len ? sender : NULL;
    pm->content = m->body.len ? content : NULL;
}

/* Messages of a pop / read reply. */
static int send_messages(gr_call *call, const pl_response *r, int pop)
{
    Chat__Message *pms = NULL, **ptrs = NULL;
    char **strs = NULL;
    uint32_t n = r->n_msgs;
    int rc = PL_ERR_NOMEM;

    if (n) {
        pms = calloc(n, sizeof *pms);
        ptrs = calloc(n, sizeof *ptrs);
        strs = calloc(2 * (size_t)n, sizeof *strs);
        if (!pms || !ptrs || !strs)
            goto fail;
        for (uint32_t i = 0; i < n; i++) {
            if (!(strs[2 * i] = dup_str(r->msgs[i].from)) ||
                !(strs[2 * i + 1] = dup_str(r->msgs[i].body)))
                goto fail;
            fill_message(&pms[i], &r->msgs[i], strs[2 * i], strs[2 * i + 1]);
            ptrs[i] = &pms[i];
        }
    }
    if (pop) {
        Chat__PopUnreadMessagesResponse m = CHAT__POP_UNREAD_MESSAGES_RESPONSE__INIT;
        m.n_messages = n;
        m.messages = ptrs;
        rc = call_send_msg(call, &m.base);
    } else {
        Chat__GetReadMessagesResponse m = CHAT__GET_READ_MESSAGES_RESPONSE__INIT;
        m.n_messages = n;
        m.messages = ptrs;
        rc = call_send_msg(call, &m.base);
    }
fail:
    if (strs)
        for (uint32_t i = 0; i < 2 * n; i++)
            free(strs[i]);
    free(strs);
    free(ptrs);
    free(pms);
    return rc;
}

static int send_users(gr_call *call, const pl_response *r)
{
    Chat__ListUsersResponse m = CHAT__LIST_USERS_RESPONSE__INIT;
    uint32_t n = call->list_none ? 0 : r->n_users;
    char **names = n ? calloc(n, sizeof *names) : NULL;
    int rc = PL_ERR_NOMEM;

    if (n && !names)
        return rc;
    for (uint32_t i = 0; i < n; i++)
        if (!(names[i] = dup_str(r->users[i])))
            goto fail;
    m.n_usernames = n;
    m.usernames = names;
    rc = call_send_msg(call, &m.base);
fail:
    for (uint32_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int send_empty(gr_call *call)
{
    /* Every empty reply message encodes as zero bytes. */
    Chat__Empty m = CHAT__EMPTY__INIT;
    return call_send_msg(call, &m.base);
}

static int send_error_field(gr_call *call, const pl_response *r)
{
    char text[GR_MSG_TEXT];
    snprintf(text, sizeof text, "%.*s", (int)r->error.len, r->error.len ? r->error.ptr : "");
    if (!text[0])
        snprintf(text, sizeof text, "%s", pl_strerror((int)r->status));
    if (call->rpc == R_LOGIN && r->status == PL_ERR_AUTH)
        snprintf(text, sizeof text, "Invalid username or password");
    /* CreateAccountResponse and LoginResponse are both { string error = 1 }. */
    Chat__LoginResponse m = CHAT__LOGIN_RESPONSE__INIT;
    m.error = text;
    return call_send_msg(call, &m.base);
}

/* Failures a client must see as a status (retry elsewhere, back off),
 * never as a CreateAccount / Login error text. */
static int status_failure(uint32_t st)
{
    return st == PL_ERR_NOT_PRIMARY || st == PL_ERR_UNAVAILABLE || st == PL_ERR_BUSY ||
           st == PL_ERR_NOMEM || st == PL_ERR_INTERNAL || st == PL_ERR_IO ||
           st == PL_ERR_TIMEOUT || st == PL_ERR_CORRUPT;
}

static void finish_error(gr_call *call, const pl_response *r)
{
    char text[GR_MSG_TEXT];

    if (r->status == PL_ERR_NOT_PRIMARY) {
        /* The prototype's clients look for details starting "Not leader". */
        snprintf(text, sizeof text, "Not leader%s%.*s", r->leader.len ? "; the primary is " : "",
                 (int)r->leader.len, r->leader.len ? r->leader.ptr : "");
    } else if (r->status == PL_ERR_NOT_LOGGED_IN) {
        snprintf(text, sizeof text, "Not logged in");
    } else if (r->status == PL_ERR_NO_SUCH_USER && call->rpc == R_SEND) {
        snprintf(text, sizeof text, "Recipient not found");
    } else {
        snprintf(text, sizeof text, "%.*s", (int)r->error.len, r->error.len ? r->error.ptr : "");
        if (!text[0])
            snprintf(text, sizeof text, "%s", pl_strerror((int)r->status));
    }
    call_finish(call, (uint32_t)gr_status_of((int)r->status), text);
}

static void finish_sent(gr_call *call, int rc)
{
    if (rc == PL_OK)
        call_finish(call, GR_OK, NULL);
    else
        call_finish(call, (uint32_t)gr_status_of(rc), pl_strerror(rc));
}

static void legacy_answer(gr_call *call, const pl_response *r)
{
    pl_transport_conn *c = call->conn;
    uint32_t st = r->status;

    switch (call->rpc) {
    case R_CREATE:
    case R_LOGIN:
        if (st != PL_OK && !status_failure(st)) {
            finish_sent(call, send_error_field(call, r));
            return;
        }
        if (st != PL_OK)
            break;
        if (call->rpc == R_LOGIN) {
            /* A new Login replaces the connection's session: the old one is
             * logged out, and open streams follow the new one. */
            if (c->token_len)
                internal_logout(c, c->token, c->token_len);
            session_clear(c);
            if (r->token.len <= sizeof c->token && call->pw_len <= sizeof c->password) {
                memcpy(c->token, r->token.ptr, r->token.len);
                c->token_len = r->token.len;
                memcpy(c->password, call->pw, call->pw_len);
                c->password_len = call->pw_len;
            }
            legacy_sub_maybe(c);
        }
        finish_sent(call, send_empty(call));
        return;
    case R_LOGOUT:
        /* Like the prototype, logging out without a session succeeds. */
        if (st == PL_OK || st == PL_ERR_NOT_LOGGED_IN) {
            session_clear(c);
            finish_sent(call, send_empty(call));
            return;
        }
        break;
    case R_DELETE_ACCOUNT:
        if (st == PL_OK)
            session_clear(c);
        if (st == PL_OK) {
            finish_sent(call, send_empty(call));
            return;
        }
        break;
    case R_HEALTH:
        /* The probe passed the core's primary gate: that is health. */
        if (st == PL_OK || st == PL_ERR_NOT_LOGGED_IN) {
            finish_sent(call, send_empty(call));
            return;
        }
        break;
    case R_SUBSCRIBE:
        /* The probe of a new subscribe stream: accept it on the primary. */
        if (st == PL_OK || st == PL_ERR_NOT_LOGGED_IN) {
            call->legacy_sub = 1;
            c->n_subs++;
            call_start_response(call);
            legacy_sub_maybe(c);
            return;
        }
        break;
    default:
        if (st != PL_OK)
            break;
        switch (call->rpc) {
        case R_LIST:
            finish_sent(call, send_users(call, r));
            return;
        case R_UNREAD:
        case R_READ: {
            uint64_t n = call->rpc == R_UNREAD ? r->unread : r->read;
            Chat__GetNumberOfUnreadMessagesResponse m = CHAT__GET_NUMBER_OF_UNREAD_MESSAGES_RESPONSE__INIT;
            m.count = n > INT32_MAX ? INT32_MAX : (int32_t)n;
            m.has_count = m.count != 0;
            finish_sent(call, call_send_msg(call, &m.base));
            return;
        }
        case R_POP:
        case R_GETREAD:
            finish_sent(call, send_messages(call, r, call->rpc == R_POP));
            return;
        default:
            finish_sent(call, send_empty(call));
            return;
        }
    }
    finish_error(call, r);
}

/* ------------------------------------------- grpc.health.v1.Health */

/* The standard health service (grpc/health/v1/health.proto), for load
 * balancers, Envoy and Kubernetes gRPC probes: SERVING on the primary that
 * holds its lease, NOT_SERVING elsewhere, from what the core reports
 * (server_serving); the core is not asked per call, so a probe is answered
 * at once also during a view change. Services reported: the whole server
 * (""), the prototype's chat.ChatService and parley's own service. */
static int std_known(const char *svc)
{
    return !svc || !*svc || strcmp(svc, "chat.ChatService") == 0 ||
           strcmp(svc, "parley.grpcish.Parley") == 0;
}

static int std_status(const pl_transport_server *srv)
{
    return srv->serving < 0 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN
           : srv->serving   ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                            : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static int std_send(gr_call *call, int status)
{
    Grpc__Health__V1__HealthCheckResponse m = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    m.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    call->watch_sent = status;
    return call_send_msg(call, &m.base);
}

static void dispatch_std_health(gr_call *call, const uint8_t *msg, size_t n)
{
    Grpc__Health__V1__HealthCheckRequest *m = (Grpc__Health__V1__HealthCheckRequest *)
        protobuf_c_message_unpack(&grpc__health__v1__health_check_request__descriptor, NULL, n, msg);
    if (!m) {
        call_malformed(call, "HealthCheckRequest");
        return;
    }
    int known = std_known(m->service);
    if (call->rpc == R_STD_CHECK) {
        if (known) {
            finish_sent(call, std_send(call, std_status(call->conn->srv)));
        } else {
            char text[GR_MSG_TEXT];
            snprintf(text, sizeof text, "unknown service \"%.100s\" (this server reports on \"\", "
                     "chat.ChatService and parley.grpcish.Parley)", m->service);
            call_finish(call, GR_NOT_FOUND, text);
        }
    } else {
        /* Watch: the status now, then every change, until the client ends
         * the call or the connection closes. An unknown service stays
         * SERVICE_UNKNOWN (the service list never changes). */
        call->streaming = 1;
        call->watch = 1;
        call->watch_known = known;
        int rc = std_send(call, known ? std_status(call->conn->srv)
                                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN);
        if (rc != PL_OK)
            finish_sent(call, rc);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

void gr_server_serving(pl_transport_server *srv, int serving)
{
    if (!srv)
        return;
    srv->serving = serving ? 1 : 0;
    int status = std_status(srv);
    for (pl_transport_conn *c = srv->conns; c; c = c->next) {
        if (c->reaping)
            continue;
        int sent = 0;
        for (gr_call *call = c->calls; call; call = call->next) {
            if (!call->watch || !call->watch_known || call->finished || call->watch_sent == status)
                continue;
            if (evbuffer_get_length(call->out) > GR_STREAM_OUT_MAX) {
                evbuffer_drain(call->out, evbuffer_get_length(call->out));
                call_finish(call, GR_RESOURCE_EXHAUSTED, "health watcher too slow");
            } else if (std_send(call, status) != PL_OK) {
                call_finish(call, GR_RESOURCE_EXHAUSTED, "out of memory");
            }
            sent = 1;
        }
        if (sent)
            conn_flush(c);
    }
}

/* --------------------------------------------------- server reflection */

static int is_reflect(const gr_call *call)
{
    return call->rpc == R_REFLECT || call->rpc == R_REFLECT_ALPHA;
}

/* ServerReflectionInfo is a bidirectional stream: clients (grpcurl) send a
 * request and wait for its answer before the next, so each complete message
 * is answered as it arrives (grpc_reflect.c), and END_STREAM ends the call
 * once all are. at_end: the client half-closed. A client that keeps asking
 * without reading is ended like a slow subscriber. */
static void reflect_drain(gr_call *call, int at_end)
{
    pl_transport_conn *c = call->conn;
    pl_transport_server *srv = c->srv;

    while (!call->finished) {
        size_t have = evbuffer_get_length(call->in);
        uint8_t hdr[GR_PREFIX];
        if (have < GR_PREFIX || evbuffer_copyout(call->in, hdr, GR_PREFIX) != GR_PREFIX)
            break;
        if (hdr[0] != 0) {
            call_finish(call, GR_UNIMPLEMENTED, "compressed messages are not supported; send identity");
            return;
        }
        size_t n = pl_grpcish_get_be32(hdr + 1);
        if (n + GR_PREFIX > srv->opts.max_msg) {
            call_finish(call, GR_RESOURCE_EXHAUSTED, "reflection request exceeds max_frame");
            return;
        }
        if (have < GR_PREFIX + n)
            break;
        if (evbuffer_get_length(call->out) > GR_STREAM_OUT_MAX) {
            evbuffer_drain(call->out, evbuffer_get_length(call->out));
            call_finish(call, GR_RESOURCE_EXHAUSTED, "reflection client does not read its answers");
            return;
        }
        if (!srv->reflect && !(srv->reflect = gr_reflect_new())) {
            call_finish(call, GR_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        const uint8_t *msg = evbuffer_pullup(call->in, (ssize_t)(GR_PREFIX + n));
        uint8_t *ans = NULL;
        size_t ans_len = 0;
        int rc = msg ? gr_reflect_answer(srv->reflect, msg + GR_PREFIX, n, &ans, &ans_len)
                     : PL_ERR_NOMEM;
        evbuffer_drain(call->in, GR_PREFIX + n);
        c->in_bytes -= GR_PREFIX + n;
        if (rc == PL_ERR_MALFORMED) {
            call_malformed(call, "ServerReflectionRequest");
            return;
        }
        if (rc == PL_OK && ans_len + GR_PREFIX > srv->opts.max_msg)
            rc = PL_ERR_FRAME_TOO_LARGE;
        if (rc == PL_OK) {
            hdr[0] = 0;
            pl_grpcish_put_be32(hdr + 1, (uint32_t)ans_len);
            rc = evbuffer_add(call->out, hdr, sizeof hdr) == 0 &&
                 evbuffer_add(call->out, ans, ans_len) == 0 ? PL_OK : PL_ERR_NOMEM;
        }
        free(ans);
        if (rc != PL_OK) {
            call_finish(call, (uint32_t)gr_status_of(rc), pl_strerror(rc));
            return;
        }
        call_start_response(call);
        call_resume(call);
    }
    if (at_end && !call->finished) {
        if (evbuffer_get_length(call->in))
            call_finish(call, GR_INTERNAL, "the last reflection request was cut short");
        else
            call_finish(call, GR_OK, NULL);
    }
}

/* ---------------------------------------------------------- core replies */

static void internal_answer(pl_transport_conn *c, const pl_response *r)
{
    gr_internal **pp = &c->internals;
    while (*pp && (*pp)->rid != r->request_id)
        pp = &(*pp)->next;
    gr_internal *in = *pp;
    if (!in)
        return;
    *pp = in->next;
    if (in->kind == I_SUBSCRIBE && r->status != PL_OK) {
        /* The session ended meanwhile (revoked, account deleted): a later
         * Login subscribes again. */
        c->sub_active = 0;
        srv_log(c->srv, PL_LOG_DEBUG, "grpc %s: subscription refused: %s", c->peer,
                pl_strerror((int)r->status));
    }
    free(in);
}

/* One new message for this connection: a MessageNotification on every
 * chat.ChatService subscribe stream, a native push on every native one. */
static void deliver_push(pl_transport_conn *c, const pl_response *r)
{
    if (r->n_msgs != 1)
        return;
    const pl_message *m = &r->msgs[0];
    char *sender = dup_str(m->from), *content = dup_str(m->body);
    uint8_t *native = NULL;
    size_t native_len = 0;
    int legacy_delivered = 0;

    if (!sender || !content)
        goto done;
    Chat__Message pm;
    fill_message(&pm, m, sender, content);
    Chat__MessageNotification note = CHAT__MESSAGE_NOTIFICATION__INIT;
    note.message = &pm;
    for (gr_call *call = c->calls; call; call = call->next) {
        if (!call->streaming || call->finished)
            continue;
        if (!call->legacy_sub && call->rpc != R_NATIVE)
            continue;
        if (evbuffer_get_length(call->out) > GR_STREAM_OUT_MAX) {
            srv_log(c->srv, PL_LOG_INFO, "grpc %s: stream %d does not read its messages; ending it",
                    c->peer, call->sid);
            evbuffer_drain(call->out, evbuffer_get_length(call->out));
            call_finish(call, GR_RESOURCE_EXHAUSTED, "subscriber too slow: messages stay unread");
            continue;
        }
        if (call->rpc == R_NATIVE) {
            if (!native && pl_grpcish_encode_response(c->srv->opts.max_msg, r, &native, &native_len) != PL_OK)
                continue;
            call_send_raw(call, native, native_len);
        } else if (call_send_msg(call, &note.base) == PL_OK) {
            legacy_delivered = 1;
        }
    }
    if (legacy_delivered && c->token_len) {
        uint64_t id = m->id;
        pl_request q = { .method = PL_M_ACK, .token = { c->token, c->token_len },
                         .ids = &id, .n_ids = 1 };
        internal_request(c, I_ACK, &q);
    }
done:
    free(native);
    free(sender);
    free(content);
}

int gr_conn_send(pl_transport_conn *c, const pl_response *r)
{
    if (!c || !r)
        return PL_ERR_INVALID;
    if (c->reaping)
        return PL_ERR_IO;
    if (r->method == PL_M_PUSH) {
        deliver_push(c, r);
    } else if (r->request_id == 0 && r->method == PL_M_NONE && r->status != PL_OK) {
        /* The core refuses the connection (e.g. limits.conns_per_address)
         * and closes it next. No call exists yet to carry the reason, and
         * a bare GOAWAY only makes gRPC runtimes reconnect until their
         * deadline, so gr_conn_close waits for the first call and answers
         * it with this status; the GOAWAY after it carries the text too. */
        snprintf(c->refusal, sizeof c->refusal, "%.*s", (int)r->error.len,
                 r->error.ptr ? r->error.ptr : "");
        int limited = r->status == PL_ERR_RATE_LIMITED;
        c->refusal_status = limited ? GR_RESOURCE_EXHAUSTED : GR_UNAVAILABLE;
        c->refusal_code = limited ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_INTERNAL_ERROR;
        return PL_OK;
    } else if ((r->request_id & GR_SID_MASK) == 0) {
        internal_answer(c, r);
    } else {
        int32_t sid = (int32_t)(r->request_id & GR_SID_MASK);
        gr_call *call = nghttp2_session_get_stream_user_data(c->ng, sid);
        if (!call || call->rid != r->request_id || call->finished)
            return PL_OK; /* the call ended meanwhile: nobody to tell */
        call->answered = 1;
        if (call->rpc == R_NATIVE) {
            pl_response copy = *r;
            uint8_t *frame = NULL;
            size_t len = 0;
            copy.request_id = call->native_rid;
            int rc = pl_grpcish_encode_response(c->srv->opts.max_msg, &copy, &frame, &len);
            if (rc != PL_OK) {
                conn_flush(c);
                return rc; /* the core sends an error reply instead */
            }
            call_send_raw(call, frame, len);
            free(frame);
            /* A subscribe stays open for pushes unless it was refused. */
            if (!(call->streaming && r->status == PL_OK))
                call_finish(call, GR_OK, NULL);
        } else {
            legacy_answer(call, r);
        }
    }
    conn_flush(c);
    return PL_OK;
}

void gr_conn_close(pl_transport_conn *c)
{
    if (!c || c->reaping)
        return;
    if (c->refusal[0] && !c->calls && !c->closing) {
        /* Refused before any call: wait (GR_CLOSE_SECS at most) for the
         * first one, to answer it with the reason (call_headers_done). */
        struct timeval tv = { GR_CLOSE_SECS, 0 };
        c->refusing = 1;
        bufferevent_set_timeouts(c->bev, &tv, &tv);
        conn_flush(c);
        return;
    }
    conn_begin_close(c, NGHTTP2_NO_ERROR);
}

/* -------------------------------------------------------- request intake */

static pl_str s_of(const char *s)
{
    return pl_str_c(s);
}

static uint64_t clamp_page(int32_t v)
{
    return v <= 0 ? 0 : (uint64_t)v > PL_PAGE_MAX ? PL_PAGE_MAX : (uint64_t)v;
}

/* A protobuf the peer sent that does not decode: the connection is broken. */
static void call_malformed(gr_call *call, const char *what)
{
    pl_transport_conn *c = call->conn;
    char text[GR_MSG_TEXT];
    snprintf(text, sizeof text, "malformed %s message; closing the connection", what);
    srv_log(c->srv, PL_LOG_INFO, "grpc %s: %s", c->peer, text);
    call_finish(call, GR_INTERNAL, text);
    conn_begin_close(c, NGHTTP2_PROTOCOL_ERROR);
}

static void dispatch_legacy(gr_call *call, const uint8_t *msg, size_t n)
{
    pl_transport_conn *c = call->conn;
    ProtobufCMessage *pb = protobuf_c_message_unpack(gr_rpcs[call->rpc].req, NULL, n, msg);
    pl_request q;
    uint64_t *ids = NULL;

    if (!pb) {
        call_malformed(call, "request");
        return;
    }
    memset(&q, 0, sizeof q);
    q.request_id = call->rid;
    q.token = (pl_str){ c->token, c->token_len };
    switch (call->rpc) {
    case R_CREATE: {
        const Chat__CreateAccountRequest *m = (const void *)pb;
        q.method = PL_M_REGISTER;
        q.username = s_of(m->username);
        q.password = s_of(m->password);
        break;
    }
    case R_LOGIN: {
        const Chat__LoginRequest *m = (const void *)pb;
        q.method = PL_M_LOGIN;
        q.username = s_of(m->username);
        q.password = s_of(m->password);
        if (q.password.len <= PL_PASSWORD_MAX && (call->pw = malloc(q.password.len + 1u))) {
            memcpy(call->pw, m->password ? m->password : "", q.password.len);
            call->pw_len = q.password.len;
        }
        break;
    }
    case R_LOGOUT:
        q.method = PL_M_LOGOUT;
        break;
    case R_DELETE_ACCOUNT:
        q.method = PL_M_DELETE_ACCOUNT;
        q.password = (pl_str){ c->password, c->password_len };
        break;
    case R_LIST: {
        const Chat__ListUsersRequest *m = (const void *)pb;
        q.method = PL_M_LIST_USERS;
        q.pattern = s_of(m->pattern);
        q.offset = m->offset > 0 ? (uint64_t)m->offset : 0;
        /* The prototype: limit -1 = all (here: one full page), 0 = none. */
        if (m->limit == 0) {
            call->list_none = 1;
            q.limit = 1;
        } else {
            q.limit = m->limit < 0 ? PL_PAGE_MAX : clamp_page(m->limit);
        }
        break;
    }
    case R_SEND: {
        const Chat__SendMessageRequest *m = (const void *)pb;
        q.method = PL_M_SEND;
        q.to = s_of(m->receiver);
        q.body = s_of(m->content);
        break;
    }
    case R_UNREAD:
    case R_READ:
        q.method = PL_M_COUNTS;
        break;
    case R_POP: {
        const Chat__PopUnreadMessagesRequest *m = (const void *)pb;
        q.method = PL_M_READ;
        q.n = clamp_page(m->num_messages);
        break;
    }
    case R_GETREAD: {
        const Chat__GetReadMessagesRequest *m = (const void *)pb;
        q.method = PL_M_HISTORY;
        q.offset = m->offset > 0 ? (uint64_t)m->offset : 0;
        q.limit = clamp_page(m->num_messages);
        break;
    }
    case R_DELETE: {
        const Chat__DeleteMessagesRequest *m = (const void *)pb;
        q.method = PL_M_DELETE;
        if (m->n_message_ids && !(ids = calloc(m->n_message_ids, sizeof *ids))) {
            call_finish(call, GR_RESOURCE_EXHAUSTED, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < m->n_message_ids; i++) {
            if (m->message_ids[i] < 0) {
                call_finish(call, GR_NOT_FOUND, "no such message: ids are not negative");
                goto done;
            }
            ids[i] = (uint64_t)m->message_ids[i];
        }
        q.ids = ids;
        q.n_ids = m->n_message_ids > UINT32_MAX ? UINT32_MAX : (uint32_t)m->n_message_ids;
        break;
    }
    case R_SUBSCRIBE:
    case R_HEALTH:
        /* A probe that every primary answers "not logged in" and every
         * other server "not the primary" / "unavailable": the core's own
         * gate decides, so Health and Subscribe agree with every other call
         * about who is the primary. */
        q.method = PL_M_COUNTS;
        q.token = (pl_str){ NULL, 0 };
        if (call->rpc == R_SUBSCRIBE)
            call->streaming = 1;
        break;
    default:
        break;
    }
    c->srv->host.request(c->srv->host.ud, c->ctx, &q);
done:
    free(ids);
    protobuf_c_message_free_unpacked(pb, NULL);
}

static void dispatch_native(gr_call *call, const uint8_t *buf, size_t len)
{
    pl_transport_conn *c = call->conn;
    pl_request q;
    void *scratch = NULL;
    size_t used = 0;
    int rc = pl_grpcish_decode_request(c->srv->opts.max_msg, buf, len, &used, &q, &scratch);

    if (rc == PL_ERR_NOMEM) {
        call_finish(call, GR_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (rc != PL_OK || used != len) {
        pl_grpcish_free_scratch(scratch);
        call_malformed(call, "parley request");
        return;
    }
    call->native_rid = q.request_id;
    q.request_id = call->rid;
    call->streaming = q.method == PL_M_SUBSCRIBE;
    c->srv->host.request(c->srv->host.ud, c->ctx, &q);
    pl_grpcish_free_scratch(scratch);
}

/* The request is complete (END_STREAM): exactly one message, then the core. */
static void call_dispatch(gr_call *call)
{
    pl_transport_conn *c = call->conn;

    if (call->finished || call->dispatched || c->reaping)
        return;
    call->dispatched = 1;
    if (is_reflect(call)) {
        reflect_drain(call, 1);
        return;
    }
    size_t len = evbuffer_get_length(call->in);
    const uint8_t *p = len ? evbuffer_pullup(call->in, -1) : NULL;
    if (len >= 1 && p[0] != 0) {
        char text[GR_MSG_TEXT];
        snprintf(text, sizeof text, "compressed messages are not supported (grpc-encoding \"%s\"); "
                 "send identity", call->encoding[0] ? call->encoding : "none");
        call_finish(call, GR_UNIMPLEMENTED, text);
        return;
    }
    if (len < GR_PREFIX || pl_grpcish_get_be32(p + 1) != len - GR_PREFIX) {
        call_finish(call, GR_INTERNAL, "a unary request carries exactly one message");
        return;
    }
    if (call->rpc == R_STD_CHECK || call->rpc == R_STD_WATCH) {
        dispatch_std_health(call, p + GR_PREFIX, len - GR_PREFIX);
        return;
    }
    call->rid = next_rid(c, call->sid);
    if (call->rpc == R_NATIVE)
        dispatch_native(call, p, len);
    else
        dispatch_legacy(call, p + GR_PREFIX, len - GR_PREFIX);
}

/* ------------------------------------------------------ nghttp2 callbacks */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    pl_transport_conn *c = ud;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    gr_call *call = calloc(1, sizeof *call);
    if (!call || !(call->in = evbuffer_new()) || !(call->out = evbuffer_new())) {
        if (call) {
            if (call->in)
                evbuffer_free(call->in);
            free(call);
        }
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
    }
    call->conn = c;
    call->sid = frame->hd.stream_id;
    call->rpc = -1;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    nghttp2_session_set_stream_user_data(ng, call->sid, call);
    return 0;
}

static int header_is(const uint8_t *name, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    pl_transport_conn *c = ud;
    gr_call *call;

    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (!(call = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id)))
        return 0;
    if (header_is(name, namelen, ":path")) {
        for (int i = 0; i < R__COUNT; i++)
            if (header_is(value, valuelen, gr_rpcs[i].path))
                call->rpc = i;
    } else if (header_is(name, namelen, ":method")) {
        call->bad_method = !header_is(value, valuelen, "POST");
    } else if (header_is(name, namelen, "content-type")) {
        static const char ct[] = "application/grpc";
        call->bad_ct = !(valuelen >= sizeof ct - 1 && memcmp(value, ct, sizeof ct - 1) == 0 &&
                         (valuelen == sizeof ct - 1 || value[sizeof ct - 1] == '+' ||
                          value[sizeof ct - 1] == ';'));
    } else if (header_is(name, namelen, "grpc-encoding")) {
        snprintf(call->encoding, sizeof call->encoding, "%.*s", (int)valuelen, (const char *)value);
    } else if (header_is(name, namelen, "grpc-timeout")) {
        struct timeval tv;
        if (parse_timeout(value, valuelen, &tv) == 0 && !call->deadline &&
            (call->deadline = evtimer_new(c->srv->host.base, deadline_cb, call)))
            evtimer_add(call->deadline, &tv);
    }
    return 0;
}

static void conn_begin_close(pl_transport_conn *c, uint32_t h2err);

/* The request headers are in: refuse what is not a gRPC call we serve. */
static void call_headers_done(gr_call *call)
{
    pl_transport_conn *c = call->conn;
    if (c->refusal[0]) {
        /* Refused: this call (and any that raced the GOAWAY) gets the
         * reason; none reaches the core. */
        c->refusing = 0;
        call_finish(call, c->refusal_status, c->refusal);
        conn_begin_close(c, NGHTTP2_NO_ERROR);
        return;
    }
    if (call->bad_method || call->bad_ct) {
        /* Not gRPC at all: plain HTTP 415, as the gRPC spec asks. */
        nghttp2_nv nv[1] = { NV(":status", "415") };
        call->finished = 1;
        call->headers_sent = 1;
        nghttp2_submit_response(call->conn->ng, call->sid, nv, 1, NULL);
        return;
    }
    if (call->rpc < 0) {
        call_finish(call, GR_UNIMPLEMENTED, "unknown method");
        return;
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    gr_call *call = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!call)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        call_headers_done(call);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        call_dispatch(call);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud)
{
    pl_transport_conn *c = ud;
    gr_call *call = nghttp2_session_get_stream_user_data(ng, sid);

    (void)flags;
    if (!call || call->finished || call->dispatched)
        return 0;
    size_t have = evbuffer_get_length(call->in);
    if (have + len > c->srv->opts.max_msg) {
        char text[GR_MSG_TEXT];
        snprintf(text, sizeof text, "request message exceeds max_frame of %u bytes",
                 c->srv->opts.max_msg);
        call_finish(call, GR_RESOURCE_EXHAUSTED, text);
        return 0;
    }
    if (c->in_bytes + len > (size_t)GR_CONN_IN_MAX_MSGS * c->srv->opts.max_msg) {
        call_finish(call, GR_RESOURCE_EXHAUSTED, "too many request bytes buffered on this connection");
        return 0;
    }
    if (evbuffer_add(call->in, data, len) != 0) {
        call_finish(call, GR_RESOURCE_EXHAUSTED, "out of memory");
        return 0;
    }
    c->in_bytes += len;
    if (is_reflect(call))
        reflect_drain(call, 0);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t err, void *ud)
{
    gr_call *call = nghttp2_session_get_stream_user_data(ng, sid);
    pl_transport_conn *c = ud;

    (void)err;
    if (call) {
        /* Reset, cancelled or past its deadline before the core answered:
         * a request the core holds for a primary is not kept for nobody
         * (transport.h request_gone, v 2). */
        const pl_transport_host *h = &c->srv->host;
        if (call->rid && !call->answered && !c->reaping && c->ctx && h->abi_version >= 2 &&
            h->request_gone)
            h->request_gone(h->ud, c->ctx, call->rid);
        nghttp2_session_set_stream_user_data(ng, sid, NULL);
        call_free(call);
    }
    return 0;
}

/* ---------------------------------------------------------------- socket */

static void conn_destroy(pl_transport_conn *c)
{
    pl_transport_server *srv = c->srv;

    c->reaping = 1;
    while (c->calls)
        call_free(c->calls);
    nghttp2_session_del(c->ng);
    c->ng = NULL;
    if (c->bev)
        bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->ctx) {
        /* The session was this connection's alone: end it with it. */
        if (c->token_len && !srv->freeing) {
            pl_request q = { .method = PL_M_LOGOUT, .request_id = next_rid(c, 0),
                             .token = { c->token, c->token_len } };
            srv->host.request(srv->host.ud, c->ctx, &q);
        }
        srv->host.conn_closed(srv->host.ud, c->ctx);
    }
    session_clear(c);
    while (c->internals) {
        gr_internal *in = c->internals;
        c->internals = in->next;
        free(in);
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (srv->conns == c)
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->reap_ev);
    free(c);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_destroy(arg);
}

static void conn_reap(pl_transport_conn *c)
{
    if (c->reaping)
        return;
    c->reaping = 1;
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->reap_ev, 0, 0);
}

/* Produce output until nghttp2 has none or the socket has enough queued. */
static void conn_flush(pl_transport_conn *c)
{
    if (c->in_ng || c->reaping || !c->ng)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    c->in_ng = 1;
    while (evbuffer_get_length(out) < GR_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n < 0) {
            c->in_ng = 0;
            srv_log(c->srv, PL_LOG_INFO, "grpc %s: %s; closing", c->peer, nghttp2_strerror((int)n));
            conn_reap(c);
            return;
        }
        if (n == 0)
            break;
        if (evbuffer_add(out, data, (size_t)n) != 0) {
            c->in_ng = 0;
            conn_reap(c);
            return;
        }
    }
    c->in_ng = 0;
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
        /* Nothing left (GOAWAY sent or received, no stream open): close
         * once the last bytes have left. */
        c->closing = 1;
        if (evbuffer_get_length(out) == 0)
            conn_reap(c);
    }
}

/* Close a connection. Bad input (h2err != NO_ERROR) ends it at once with a
 * GOAWAY naming the error. A close the core asks for is graceful: answers
 * already queued still leave, calls still waiting for the core end with
 * UNAVAILABLE (so clients retry, e.g. at the new primary), GOAWAY refuses
 * new streams, and the socket closes when nghttp2 has nothing left to do,
 * or after GR_CLOSE_SECS whatever the peer does. */
static void conn_begin_close(pl_transport_conn *c, uint32_t h2err)
{
    if (c->closing || c->reaping)
        return;
    c->closing = 1;
    if (h2err != NGHTTP2_NO_ERROR) {
        nghttp2_session_terminate_session(c->ng, h2err);
    } else {
        for (gr_call *call = c->calls; call; call = call->next)
            if (!call->finished)
                call_finish(call, GR_UNAVAILABLE, "the server closed the connection; retry");
        size_t rl = strlen(c->refusal);
        nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->ng),
                              rl ? c->refusal_code : NGHTTP2_NO_ERROR,
                              (const uint8_t *)c->refusal, rl);
    }
    struct timeval tv = { GR_CLOSE_SECS, 0 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    conn_flush(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);

    if (c->reaping) {
        evbuffer_drain(in, len);
        return;
    }
    uint8_t *data = evbuffer_pullup(in, -1);
    c->in_ng = 1;
    ssize_t n = nghttp2_session_mem_recv(c->ng, data, len);
    c->in_ng = 0;
    evbuffer_drain(in, len);
    if (n < 0) {
        srv_log(c->srv, PL_LOG_INFO, "grpc %s: bad HTTP/2 input (%s); closing", c->peer,
                nghttp2_strerror((int)n));
        conn_begin_close(c, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    conn_flush(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    pl_transport_conn *c = arg;

    if (c->reaping)
        return;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        conn_reap(c);
        return;
    }
    conn_flush(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        conn_reap(arg);
}

/* nghttp2's allocator for server sessions. Each session holds a 16 KiB
 * frame buffer, of which a frame of a few hundred bytes writes only the
 * first page. From the heap, a buffer whose memory another connection
 * wrote before is resident whole, so after 10,000 connections came and went
 * the next 10,000 cost ~31 KiB each instead of ~19 (docs/performance.md,
 * "gRPC at scale"). Blocks of GR_MAP_MIN bytes or more get a mapping of
 * their own: only the pages written are resident, and free returns them.
 * Every block starts with a header saying which kind it is. */
#define GR_MAP_MIN (8u << 10)

typedef union gr_blk {
    struct {
        size_t size;          /* bytes asked for */
        int mapped;
    } h;
    max_align_t align;
} gr_blk;

static void *gr_mem_malloc(size_t size, void *ud)
{
    gr_blk *b;

    (void)ud;
    if (size > SIZE_MAX - sizeof *b)
        return NULL;
    b = MAP_FAILED;
    if (size >= GR_MAP_MIN) /* past vm.max_map_count: the heap, as before */
        b = mmap(NULL, sizeof *b + size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b != MAP_FAILED) {
        b->h.mapped = 1;
    } else {
        if (!(b = malloc(sizeof *b + size)))
            return NULL;
        b->h.mapped = 0;
    }
    b->h.size = size;
    return b + 1;
}

static void gr_mem_free(void *ptr, void *ud)
{
    (void)ud;
    if (!ptr)
        return;
    gr_blk *b = (gr_blk *)ptr - 1;
    if (b->h.mapped)
        munmap(b, sizeof *b + b->h.size);
    else
        free(b);
}

static void *gr_mem_calloc(size_t n, size_t size, void *ud)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = gr_mem_malloc(n * size, ud);
    gr_blk *b = p ? (gr_blk *)p - 1 : NULL;
    if (b && !b->h.mapped) /* a fresh mapping is zeroed already */
        memset(p, 0, n * size);
    return p;
}

static void *gr_mem_realloc(void *ptr, size_t size, void *ud)
{
    if (!ptr)
        return gr_mem_malloc(size, ud);
    gr_blk *b = (gr_blk *)ptr - 1;
    void *n = gr_mem_malloc(size, ud);
    if (!n)
        return NULL;
    memcpy(n, ptr, b->h.size < size ? b->h.size : size);
    gr_mem_free(ptr, ud);
    return n;
}

static int conn_session_new(pl_transport_conn *c)
{
    static nghttp2_mem mem = { NULL, gr_mem_malloc, gr_mem_free, gr_mem_calloc, gr_mem_realloc };
    nghttp2_session_callbacks *cbs;

    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return PL_ERR_NOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    int rv = nghttp2_session_server_new3(&c->ng, cbs, c, NULL, &mem);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return PL_ERR_NOMEM;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, GR_MAX_STREAMS },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, GR_WINDOW },
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0)
        return PL_ERR_NOMEM;
    return PL_OK;
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    pl_transport_server *srv = arg;
    int one = 1;

    (void)lis;
    (void)salen;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pl_transport_conn *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->srv = srv;
    gr_sockaddr_text(sa, c->peer, sizeof c->peer);
    c->bev = bufferevent_socket_new(srv->host.base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->reap_ev = event_new(srv->host.base, -1, 0, reap_cb, c);
    if (!c->bev || !c->reap_ev || conn_session_new(c) != PL_OK) {
        srv_log(srv, PL_LOG_ERROR, "grpc %s: out of memory; closing", c->peer);
        goto refuse;
    }
    c->ctx = srv->host.conn_open(srv->host.ud, c, c->peer);
    if (!c->ctx)
        goto refuse; /* closed without conn_closed, as the ABI says */
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, GR_OUT_HIGH / 2, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    conn_flush(c); /* our SETTINGS */
    return;
refuse:
    if (c->ng)
        nghttp2_session_del(c->ng);
    if (c->bev)
        bufferevent_free(c->bev);
    else
        evutil_closesocket(fd);
    if (c->reap_ev)
        event_free(c->reap_ev);
    free(c);
}

int gr_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                    pl_transport_server **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    pl_transport_server *srv;
    int rc;

    *out = NULL;
    if (!host || !host->base || !host->conn_open || !host->request || !host->conn_closed || !opt) {
        snprintf(err, errlen, "grpc server: host callbacks and options are required");
        return PL_ERR_INVALID;
    }
    if (!(srv = calloc(1, sizeof *srv))) {
        snprintf(err, errlen, "out of memory");
        return PL_ERR_NOMEM;
    }
    if ((rc = gr_opts_init(&srv->opts, opt, err, errlen)) != PL_OK ||
        (rc = gr_resolve(opt->host, opt->port, 1, &ss, &sslen, err, errlen)) != PL_OK)
        goto fail;
    srv->host = *host;
    srv->serving = -1;
    gr_sockaddr_text((struct sockaddr *)&ss, srv->addr, sizeof srv->addr);
    srv->lis = evconnlistener_new_bind(host->base, accept_cb, srv,
                                       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                           LEV_OPT_CLOSE_ON_EXEC,
                                       GR_BACKLOG, (struct sockaddr *)&ss, (int)sslen);
    if (!srv->lis) {
        snprintf(err, errlen, "cannot listen on %s: %s", srv->addr,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        rc = PL_ERR_IO;
        goto fail;
    }
    *out = srv;
    return PL_OK;
fail:
    free(srv);
    return rc;
}

/* Graceful: GOAWAY names the last stream we took, so clients retry newer
 * ones elsewhere while the calls in flight finish here. */
void gr_server_stop_accepting(pl_transport_server *srv)
{
    if (!srv)
        return;
    if (srv->lis)
        evconnlistener_free(srv->lis);
    srv->lis = NULL;
    for (pl_transport_conn *c = srv->conns; c; c = c->next) {
        if (c->reaping || c->closing)
            continue;
        nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
        conn_flush(c);
    }
}

void gr_server_free(pl_transport_server *srv)
{
    if (!srv)
        return;
    srv->freeing = 1;
    if (srv->lis)
        evconnlistener_free(srv->lis);
    srv->lis = NULL;
    while (srv->conns)
        conn_destroy(srv->conns);
    gr_reflect_free(srv->reflect);
    free(srv);
}
