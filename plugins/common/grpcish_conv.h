/*
 * plugins/common/grpcish_conv.h — one gRPC length-prefixed grpcish message
 * (proto/grpcish.proto) <-> pl_request / pl_response. Shared by the two
 * transports that carry those messages: transport-grpcish (over a plain TCP
 * stream, docs/protocol-grpcish.md) and transport-grpc (as the DATA payload
 * of /parley.grpcish.Parley/Call).
 *
 *   byte 0      compression flag, 0 = uncompressed; anything else is refused
 *   bytes 1-4   big-endian length N of the protobuf message
 *   bytes 5..   one Request (client -> server) or Response (server -> client)
 *
 * Structure is checked here (flag, size limit, protobuf well-formedness,
 * method numbers) and answered with PL_ERR_MALFORMED / PL_ERR_FRAME_TOO_LARGE;
 * contents (username characters, UTF-8, limits) are the core's, as on every
 * transport. That is why every text field is protobuf `bytes`: exact
 * lengths, no truncation at an embedded NUL, no UTF-8 rejection before the
 * core can name the rule.
 *
 * Plugin-side support code: includes only the public ABI headers and the
 * generated grpcish.pb-c.h, never core/. Every function is pure (no state
 * besides what it returns), so the codecs of both plugins are these.
 *
 * Prefix: pl_grpcish_.
 */
#ifndef PL_PLUGINS_GRPCISH_CONV_H
#define PL_PLUGINS_GRPCISH_CONV_H

#include <stddef.h>
#include <stdint.h>

#include <parley/types.h>

#define PL_GRPCISH_PREFIX 5u      /* compression flag + 4-byte length */

/* max_frame bounds the whole message, prefix included. */

/* Encode one prefixed message into a malloc'd buffer the caller frees.
 * PL_ERR_INVALID for a struct no peer could decode (bad method, a NULL
 * pointer with a length), PL_ERR_FRAME_TOO_LARGE past max_frame. */
int pl_grpcish_encode_request(uint32_t max_frame, const pl_request *req,
                              uint8_t **out, size_t *len);
int pl_grpcish_encode_response(uint32_t max_frame, const pl_response *resp,
                               uint8_t **out, size_t *len);

/* Decode the message at buf[0..len): PL_OK with *used its size, PL_ERR_AGAIN
 * (a prefix or body still incomplete), PL_ERR_MALFORMED, PL_ERR_FRAME_TOO_LARGE
 * (as soon as the prefix says so) or PL_ERR_NOMEM. On PL_OK the text and
 * arrays of *out point into *scratch, which the caller frees with
 * pl_grpcish_free_scratch; on error *scratch is NULL and *out zeroed. */
int pl_grpcish_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                              size_t *used, pl_request *out, void **scratch);
int pl_grpcish_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                               size_t *used, pl_response *out, void **scratch);
void pl_grpcish_free_scratch(void *scratch);

/* The prefix's length field, also used by transport-grpc for the
 * chat.ChatService messages it frames itself. */
uint32_t pl_grpcish_get_be32(const uint8_t *p);
void pl_grpcish_put_be32(uint8_t *p, uint32_t v);

#endif
