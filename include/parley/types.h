/*
 * parley/types.h — the typed requests and responses that cross the
 * transport ABI. A transport decodes its wire format into a pl_request and
 * hands it to the core; the core answers with a pl_response, which the
 * transport encodes. The core never sees a wire format and a transport never
 * sees a chat rule.
 *
 * One flat struct per direction keeps codecs simple: each method uses the
 * fields listed beside it and leaves the rest zero. Every pointer inside is
 * borrowed: a pl_request handed to the core is valid only during that call,
 * a pl_response handed to a transport only during the send call (the
 * transport copies what it encodes).
 */
#ifndef PARLEY_TYPES_H
#define PARLEY_TYPES_H

#include <parley/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Methods. Stable numbers: the binary and grpcish codecs put them on the
 * wire. Request fields used by each are listed; see pl_response for replies. */
enum pl_method {
    PL_M_NONE = 0,            /* error frame not tied to a request (malformed input) */
    PL_M_REGISTER = 1,        /* username, password */
    PL_M_LOGIN = 2,           /* username, password -> token, unread */
    PL_M_LOGOUT = 3,          /* token */
    PL_M_LIST_USERS = 4,      /* token, pattern, offset, limit -> users, more */
    PL_M_SEND = 5,            /* token, to, body -> id, time_ms */
    PL_M_COUNTS = 6,          /* token -> unread, read */
    PL_M_READ = 7,            /* token, n (0 = all, capped) -> msgs, more */
    PL_M_HISTORY = 8,         /* token, offset, limit -> msgs (read, newest first), more */
    PL_M_CONVERSATION = 9,    /* token, peer, offset, limit -> msgs, more */
    PL_M_ACK = 10,            /* token, ids */
    PL_M_DELETE = 11,         /* token, ids */
    PL_M_DELETE_ACCOUNT = 12, /* token, password */
    PL_M_SUBSCRIBE = 13,      /* token, after_id -> then PL_M_PUSH frames */
    PL_M_STATUS = 14,         /* -> servers */
    PL_M_PUSH = 15,           /* server -> client only: msgs[0] is a new message */
    PL_M_PING = 16,           /* liveness; answered with status 0 */
    PL_M__COUNT
};

static inline const char *pl_method_name(uint32_t m)
{
    static const char *const names[PL_M__COUNT] = {
        "none", "register", "login", "logout", "list_users", "send",
        "counts", "read", "history", "conversation", "ack", "delete",
        "delete_account", "subscribe", "status", "push", "ping"
    };
    return m < PL_M__COUNT ? names[m] : "unknown";
}

typedef struct pl_request {
    uint32_t method;          /* enum pl_method */
    uint64_t request_id;      /* chosen by the client, echoed in the response */
    uint64_t client_id;       /* exactly-once: random per client, 0 = none */
    uint64_t request_no;      /* exactly-once: increases per mutating request */
    pl_str token;             /* session token, empty when not logged in */
    pl_str username;          /* register, login */
    pl_str password;          /* register, login, delete_account */
    pl_str pattern;           /* list_users: glob, empty = all */
    pl_str to;                /* send: recipient */
    pl_str body;              /* send */
    pl_str peer;              /* conversation */
    uint64_t offset;          /* list_users, history, conversation */
    uint64_t limit;           /* list_users, history, conversation (0 = default) */
    uint64_t n;               /* read: how many (0 = all, capped at PL_PAGE_MAX) */
    uint64_t after_id;        /* subscribe: resume after this message id */
    const uint64_t *ids;      /* ack, delete */
    uint32_t n_ids;
} pl_request;

/* Message state, and the flags a store keeps. */
#define PL_MSG_READ 1u

typedef struct pl_message {
    uint64_t id;              /* cluster-wide increasing */
    pl_str from;
    pl_str to;
    pl_str body;
    uint64_t time_ms;         /* Unix ms, as sequenced by the primary */
    uint32_t state;           /* 0 unread, PL_MSG_READ read */
} pl_message;

/* One server's row in a status reply. */
typedef struct pl_server_status {
    uint32_t id;              /* index in the configuration */
    pl_str address;           /* host:port for clients */
    uint32_t reachable;       /* 0 when this server could not be asked */
    pl_str role;              /* "primary", "backup", "view-change", "recovering", "down" */
    uint64_t view;
    uint64_t op;              /* highest op-number in its log */
    uint64_t commit;          /* highest committed op-number */
    uint64_t applied;         /* highest op applied to its store */
    pl_str store;             /* store plugin name */
    pl_str transport;         /* transport plugin name */
    pl_str digest;            /* hex digest of the applied state */
} pl_server_status;

typedef struct pl_response {
    uint32_t method;          /* the request's method, PL_M_PUSH, or PL_M_NONE */
    uint64_t request_id;      /* echoed; 0 for pushes and connection errors */
    uint32_t status;          /* enum pl_err */
    pl_str error;             /* human text naming the limit, empty on success */
    pl_str leader;            /* PL_ERR_NOT_PRIMARY: "host:port" when known */
    pl_str token;             /* login */
    uint64_t unread;          /* login, counts */
    uint64_t read;            /* counts */
    uint64_t id;              /* send: the new message id */
    uint64_t time_ms;         /* send: sequencing time */
    uint32_t more;            /* lists: 1 when more remain past this page */
    const pl_str *users;      /* list_users */
    uint32_t n_users;
    const pl_message *msgs;   /* read, history, conversation, push (one) */
    uint32_t n_msgs;
    const pl_server_status *servers; /* status */
    uint32_t n_servers;
} pl_response;

#ifdef __cplusplus
}
#endif
#endif
