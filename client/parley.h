/*
 * parley.h — libparley, the client library every parley client program uses
 * (the `parley` CLI, the end-to-end tests, the terminal UI, the bench).
 *
 * What it does
 * ------------
 * A parley_client reads the same configuration file as parleyd, loads the
 * same transport plugin (so changing the config's "transport" switches the
 * client's wire format without recompiling) and talks to the cluster through
 * that plugin's client half on a libevent event_base the client owns.
 *
 * Two ways to call:
 *  - Synchronous: parley_call() and the thin wrappers below send one request
 *    and run the event loop until the matching response (by request_id) or
 *    the timeout. They return a pl_err: PL_OK, the server's status (its text
 *    in parley_last_error()), or a local failure (see "errors" below).
 *  - Asynchronous: parley_call_async() queues a request and returns at once;
 *    the callback runs from the event loop. Event-driven programs run
 *    parley_event_base() themselves. Never call a synchronous function from
 *    inside a libparley callback: it refuses with PL_ERR_BUSY, because one
 *    event_base cannot run two loops at once.
 *
 * Connections and retries
 * -----------------------
 * The client keeps one connection and reuses it across calls. Which server it
 * connects to is decided in one place (see libparley.c, conn_target()): a
 * leader named by a NOT_PRIMARY reply first, else the --server override, else
 * the configuration's servers in order (the order is their priority), moving
 * on to the next one when a connection fails. A request is always resent
 * unchanged — same request_id, client_id and request_no — so the server's
 * client table executes a mutating request at most once however often the
 * client retries. Retries happen on: a broken connection (reconnect, resend),
 * NOT_PRIMARY (follow the leader, at most PARLEY_MAX_REDIRECTS hops),
 * UNAVAILABLE (back off and resend) and, with several servers configured, a
 * server that does not answer within a third of the timeout (try the next).
 * All of it within the call's timeout.
 *
 * Errors
 * ------
 * parley_unreachable(err) tells "no server could serve this" (PL_ERR_IO,
 * PL_ERR_UNAVAILABLE, PL_ERR_TIMEOUT, PL_ERR_NOT_PRIMARY left after the
 * redirects) from "a server refused" (every other non-zero status). The CLI
 * maps these to exit codes 3 and 1.
 *
 * Threading: a parley_client is used from one thread at a time.
 */
#ifndef PARLEY_CLIENT_H
#define PARLEY_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <parley/common.h>
#include <parley/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

typedef struct parley_client parley_client;

#define PARLEY_TIMEOUT_DEFAULT_MS 5000u
#define PARLEY_MAX_REDIRECTS 5u

/* Options for parley_new. Every field may be zero/NULL; strings are only read
 * during parley_new (the client copies what it keeps). */
typedef struct parley_options {
    const char *config_path; /* NULL: $PARLEY_CONFIG, else one server on
                                127.0.0.1:8100 with the tcp transport */
    const char *server;      /* "HOST:PORT" (or "[V6]:PORT"): talk to this
                                server only, ignoring the config's list */
    uint32_t timeout_ms;     /* per call, retries included; 0 = 5000 */
    const char *plugin_dir;  /* searched first for the transport plugin;
                                NULL = the config's plugin_dir */
    struct event_base *base; /* run on this loop (borrowed; must outlive the
                                client), e.g. many bench clients on one
                                loop; NULL = the client creates its own */
} parley_options;

/* A deep copy of one response. Every pointer inside resp (error, leader,
 * token, users, msgs and their strings, servers and theirs) points into the
 * same allocation, so the whole result is released with one
 * parley_result_free(). Strings are also NUL-terminated for convenience. */
typedef struct parley_result {
    pl_response resp;
} parley_result;

/* Deep-copy resp. Returns NULL when out of memory. Caller frees. */
parley_result *parley_result_copy(const pl_response *resp);
void parley_result_free(parley_result *r);

/* Create a client: load the config, the transport plugin, and pick a random
 * 64-bit client_id. Does not connect yet (the first call does). On failure
 * returns NULL with a one-line reason in err (PL_ERR_CONFIG/PL_ERR_PLUGIN
 * class problems: a bad file, a missing plugin, a bad --server). The caller
 * owns the client and frees it with parley_free(). */
parley_client *parley_new(const parley_options *o, char *err, size_t errlen);
/* Close the connection, cancel pending async calls (their callbacks run with
 * PL_ERR_UNAVAILABLE), unload the plugin and free. NULL is fine. */
void parley_free(parley_client *c);

/* The event_base the client runs on (its own, or the one given in
 * parley_options.base). */
struct event_base *parley_event_base(parley_client *c);

/* Text of the last failure (server's error text, or a local reason), never
 * NULL; owned by the client, valid until the next call. */
const char *parley_last_error(const parley_client *c);

/* 1 when err means no server could be reached or could serve, 0 when it is a
 * refusal by a server (or PL_OK). */
int parley_unreachable(int err);

/* Session token used by every call that needs one. parley_login sets it;
 * parley_logout and parley_delete_account clear it. token is copied; NULL or
 * "" clears. parley_token returns the client's copy ("" when none). */
int parley_set_token(parley_client *c, const char *token);
const char *parley_token(const parley_client *c);

/* ---- generic calls ---- */

/* Completion of an async call. err is PL_OK or a pl_err; resp is the server's
 * response (resp->status == err) or NULL when no response arrived (timeout,
 * unreachable, client freed). resp is valid only during the callback (use
 * parley_result_copy to keep it). */
typedef void (*parley_done_fn)(void *ud, int err, const pl_response *resp);

/* Queue req (copied, including every string and the id array). The client
 * fills request_id, client_id, request_no (for mutating methods) and the
 * token (when req->token is empty and the client has one). Returns PL_OK, or
 * an error without calling cb. */
int parley_call_async(parley_client *c, const pl_request *req,
                      parley_done_fn cb, void *ud);

/* Send req and wait for its response. Returns the pl_err (see Errors). When
 * out is non-NULL and a response arrived (also a refusal), *out receives its
 * deep copy, owned by the caller; otherwise *out is NULL. */
int parley_call(parley_client *c, const pl_request *req, parley_result **out);

/* Run the event loop until every async call has completed (each has its own
 * deadline, so this ends). Returns PL_OK, or PL_ERR_BUSY from a callback. */
int parley_wait(parley_client *c);

/* ---- one wrapper per method (types.h); strings are NUL-terminated and only
 * read during the call; out-parameters may be NULL. A parley_result **out
 * receives a result owned by the caller on PL_OK and NULL otherwise (the
 * server's text is in parley_last_error). ---- */

int parley_register(parley_client *c, const char *user, const char *password);
/* On success keeps the session token in the client. */
int parley_login(parley_client *c, const char *user, const char *password,
                 uint64_t *unread);
int parley_logout(parley_client *c);
/* *out: resp.users / n_users / more. */
int parley_list_users(parley_client *c, const char *pattern, uint64_t offset,
                      uint64_t limit, parley_result **out);
int parley_send(parley_client *c, const char *to, const char *body,
                uint64_t *id, uint64_t *time_ms);
int parley_counts(parley_client *c, uint64_t *unread, uint64_t *read);
/* *out: resp.msgs / n_msgs / more. n = 0: all unread (server-capped). */
int parley_read(parley_client *c, uint64_t n, parley_result **out);
int parley_history(parley_client *c, uint64_t offset, uint64_t limit,
                   parley_result **out);
int parley_conversation(parley_client *c, const char *peer, uint64_t offset,
                        uint64_t limit, parley_result **out);
int parley_ack(parley_client *c, const uint64_t *ids, uint32_t n_ids);
int parley_delete(parley_client *c, const uint64_t *ids, uint32_t n_ids);
/* On success clears the session token. */
int parley_delete_account(parley_client *c, const char *password);
/* *out: resp.servers / n_servers. */
int parley_status(parley_client *c, parley_result **out);
int parley_ping(parley_client *c);

/* ---- pushes ---- */

/* Called for every new message pushed by the server, at most once per id and
 * in increasing id order: pushes with an id <= the last one delivered are
 * dropped (they are replays after a reconnect). msg is valid only during the
 * call. cb NULL stops delivery. */
typedef void (*parley_message_fn)(void *ud, const pl_message *msg);
void parley_on_message(parley_client *c, parley_message_fn cb, void *ud);

/* Async subscribe: ask for pushes of messages after after_id. The client
 * stays subscribed: after a reconnect it subscribes again from the last id
 * delivered. cb (may be NULL) reports the subscribe response, and again the
 * outcome of every re-subscribe after a reconnect (PL_OK: pushes flow again;
 * an error: the subscription is over — e.g. no server within the timeout —
 * and the caller may subscribe anew). */
int parley_subscribe_async(parley_client *c, uint64_t after_id,
                           parley_done_fn cb, void *ud);

/* Subscribe and run the loop delivering pushes until parley_stop(), until
 * timeout_ms passes (0 = forever), or until the connection is lost and no
 * server takes it back within the client's timeout. Returns PL_OK on stop or
 * timeout, else the error (a refused subscribe, or an unreachable cluster). */
int parley_listen(parley_client *c, uint64_t after_id, uint32_t timeout_ms);
/* Make parley_listen (or parley_wait) return; safe from callbacks and from
 * libevent signal handlers. */
void parley_stop(parley_client *c);
/* Highest message id delivered to the on_message callback so far. */
uint64_t parley_last_delivered(const parley_client *c);

/* Address ("host:port") of the server the client's connection goes to, ""
 * while no connection has answered; for status displays (the terminal UI's
 * status bar). Owned by the client, valid until the next call into it. */
const char *parley_server_address(const parley_client *c);

#ifdef __cplusplus
}
#endif
#endif
