/*
 * plugins/transport-grpc/grpc_int.h — what the files of the gRPC transport
 * share: options, the gRPC message prefix, socket helpers, and the two
 * halves' entry points. The native parley service's message codec is
 * plugins/common/grpcish_conv.h (pl_grpcish_*, called with gr_opts.max_msg).
 *
 * Two chat services share every HTTP/2 connection (docs/protocol.md, "gRPC"):
 *  - chat.ChatService (proto/chat.proto): the Python prototype's interface,
 *    for its unchanged clients; grpc_server.c maps each RPC onto core
 *    requests and keeps the session per connection.
 *  - parley.grpcish.Parley/Call: parley's own clients (libparley, the CLI,
 *    the bench). One grpcish Request message in, grpcish Response messages
 *    out (proto/grpcish.proto), so every parley method, exactly-once numbers
 *    and session tokens travel as on the other transports.
 * Beside them the plugin itself answers the standard services gRPC tools
 * expect: grpc.health.v1.Health (grpc_server.c) and server reflection v1
 * and v1alpha (grpc_reflect.c).
 *
 * Prefix: gr_.
 */
#ifndef PL_TRANSPORT_GRPC_INT_H
#define PL_TRANSPORT_GRPC_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <parley/transport.h>

#include "grpcish_conv.h"

#define GR_NAME "grpc"
#define GR_PREFIX PL_GRPCISH_PREFIX        /* compression flag + 4-byte length */
#define GR_NATIVE_PATH "/parley.grpcish.Parley/Call"
#define GR_MAX_STREAMS 1024u               /* SETTINGS_MAX_CONCURRENT_STREAMS per connection */

/* gRPC status codes (grpc/doc/statuscodes.md). */
enum gr_status {
    GR_OK = 0,
    GR_CANCELLED = 1,
    GR_UNKNOWN = 2,
    GR_INVALID_ARGUMENT = 3,
    GR_DEADLINE_EXCEEDED = 4,
    GR_NOT_FOUND = 5,
    GR_ALREADY_EXISTS = 6,
    GR_PERMISSION_DENIED = 7,
    GR_RESOURCE_EXHAUSTED = 8,
    GR_FAILED_PRECONDITION = 9,
    GR_ABORTED = 10,
    GR_OUT_OF_RANGE = 11,
    GR_UNIMPLEMENTED = 12,
    GR_INTERNAL = 13,
    GR_UNAVAILABLE = 14,
    GR_DATA_LOSS = 15,
    GR_UNAUTHENTICATED = 16
};

typedef struct gr_opts {
    uint32_t max_msg;        /* largest gRPC message, prefix included */
} gr_opts;

int gr_opts_init(gr_opts *o, const pl_transport_options *opt, char *err, size_t errlen);

/* The gRPC status that stands for a pl_err when it cannot travel in a
 * message (the chat.ChatService side, and transport failures). */
int gr_status_of(int pl_err);
/* And back, for the client half: a call that ended without a reply. */
int gr_err_of(int grpc_status);

/* Address text and resolution shared by both halves. */
int gr_resolve(const char *host, uint16_t port, int passive, struct sockaddr_storage *ss,
               socklen_t *sslen, char *err, size_t errlen);
void gr_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len);

/* Server half (grpc_server.c). */
int gr_server_start(const pl_transport_host *host, const pl_transport_options *opt,
                    pl_transport_server **out, char *err, size_t errlen);
void gr_server_stop_accepting(pl_transport_server *srv);
void gr_server_free(pl_transport_server *srv);
int gr_conn_send(pl_transport_conn *conn, const pl_response *resp);
void gr_conn_close(pl_transport_conn *conn);
/* (v 2) What the standard health service (grpc.health.v1) reports. */
void gr_server_serving(pl_transport_server *srv, int serving);

/* Server reflection (grpc_reflect.c): the embedded descriptors, indexed. */
typedef struct gr_reflect gr_reflect;
/* NULL when out of memory (or the embedded set does not parse). */
gr_reflect *gr_reflect_new(void);
void gr_reflect_free(gr_reflect *g);
/* One ServerReflectionRequest message in, its ServerReflectionResponse out
 * (malloc'd into *out; the caller frees). PL_ERR_MALFORMED when req does
 * not decode, PL_ERR_NOMEM. */
int gr_reflect_answer(const gr_reflect *g, const uint8_t *req, size_t len, uint8_t **out,
                      size_t *outlen);

/* Client half (grpc_client.c). */
int gr_client_connect(struct event_base *base, const pl_transport_options *opt,
                      const pl_transport_client_cb *cb, void *ud,
                      pl_transport_client **out, char *err, size_t errlen);
int gr_client_send(pl_transport_client *cli, const pl_request *req);
void gr_client_free(pl_transport_client *cli);

#endif
