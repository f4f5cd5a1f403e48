/*
 * plugins/transport-tcp/tcp_codec.h — private to the tcp transport: the
 * binary codec. The JSON codec is plugins/common/json_codec.h (shared with
 * transport-ws) and both decode into plugins/common/codec_scratch.h.
 *
 * Both codecs are pure: whole frame in, struct out and back, no I/O. Their
 * wire formats are documented byte by byte in docs/protocol.md; change the
 * two together.
 *
 * Prefix: tcp_bin_ (codec_binary.c).
 */
#ifndef PL_TCP_CODEC_H
#define PL_TCP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <parley/transport.h>

#include "codec_scratch.h"
#include "json_codec.h"

/* Binary codec. max_frame bounds the payload after the 4-byte length. */
int tcp_bin_encode_request(uint32_t max_frame, const pl_request *req,
                           uint8_t **out, size_t *len);
int tcp_bin_encode_response(uint32_t max_frame, const pl_response *resp,
                            uint8_t **out, size_t *len);
int tcp_bin_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                           size_t *used, pl_request *out, void **scratch);
int tcp_bin_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_response *out, void **scratch);

#endif
