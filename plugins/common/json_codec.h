/*
 * plugins/common/json_codec.h — the JSON wire objects (docs/protocol.md
 * "tcp/json"), shared by transport-tcp (one object per line) and
 * transport-ws (one object per WebSocket text message): one spec, one
 * codec. Pure functions: no I/O; decoded structs point into *scratch
 * (codec_scratch.h), released with pl_scratch_free, also on error.
 *
 * Prefix: pl_json_.
 */
#ifndef PL_PLUGINS_JSON_CODEC_H
#define PL_PLUGINS_JSON_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <parley/types.h>

/* Encode one object followed by a newline into a malloc'd *out. The object
 * (newline excluded) must fit in max_frame, else PL_ERR_FRAME_TOO_LARGE. A
 * WebSocket message is the same bytes without the final newline. */
int pl_json_encode_request(uint32_t max_frame, const pl_request *req,
                           uint8_t **out, size_t *len);
int pl_json_encode_response(uint32_t max_frame, const pl_response *resp,
                            uint8_t **out, size_t *len);

/* Decode the first non-blank line of buf: PL_OK with *used the bytes
 * through its newline, PL_ERR_AGAIN (no newline yet), PL_ERR_FRAME_TOO_LARGE
 * (a line past max_frame bytes) or PL_ERR_MALFORMED. */
int pl_json_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                           size_t *used, pl_request *out, void **scratch);
int pl_json_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_response *out, void **scratch);

/* Decode one whole message that is exactly one object (whitespace around
 * it, newlines included, allowed): PL_OK, PL_ERR_FRAME_TOO_LARGE (len over
 * max_frame) or PL_ERR_MALFORMED. Never PL_ERR_AGAIN. */
int pl_json_decode_request_msg(uint32_t max_frame, const uint8_t *msg, size_t len,
                               pl_request *out, void **scratch);
int pl_json_decode_response_msg(uint32_t max_frame, const uint8_t *msg, size_t len,
                                pl_response *out, void **scratch);

#endif
