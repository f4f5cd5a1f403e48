/*
 * plugins/transport-tcp/tcp_codec.h — private to the tcp transport: the two
 * codecs (binary, JSON) and the scratch arena their decoders fill.
 *
 * Both codecs are pure: whole frame in, struct out and back, no I/O. Their
 * wire formats are documented byte by byte in docs/protocol.md; change the
 * two together.
 *
 * Prefixes: tcp_bin_ (codec_binary.c), tcp_json_ (codec_json.c),
 * tcp_scratch_ (codec_binary.c, shared).
 */
#ifndef PL_TCP_CODEC_H
#define PL_TCP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <parley/transport.h>

/* Scratch: what a decoded struct points into. One arena per decoded frame,
 * freed with tcp_scratch_free (the plugin's free_scratch for both codecs, so
 * the layout is shared). */
typedef struct tcp_scratch tcp_scratch;

/* Allocate size bytes (max_align_t aligned) owned by *scratch, creating the
 * arena on first use. NULL when out of memory. */
void *tcp_scratch_alloc(void **scratch, size_t size);
/* Hand a parsed document to the arena: freed with it by doc_free. */
int tcp_scratch_adopt(void **scratch, void *doc, void (*doc_free)(void *doc));
void tcp_scratch_free(void *scratch);

/* Binary codec. max_frame bounds the payload after the 4-byte length. */
int tcp_bin_encode_request(uint32_t max_frame, const pl_request *req,
                           uint8_t **out, size_t *len);
int tcp_bin_encode_response(uint32_t max_frame, const pl_response *resp,
                            uint8_t **out, size_t *len);
int tcp_bin_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                           size_t *used, pl_request *out, void **scratch);
int tcp_bin_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_response *out, void **scratch);

/* JSON codec. max_frame bounds one line, newline excluded. */
int tcp_json_encode_request(uint32_t max_frame, const pl_request *req,
                            uint8_t **out, size_t *len);
int tcp_json_encode_response(uint32_t max_frame, const pl_response *resp,
                             uint8_t **out, size_t *len);
int tcp_json_decode_request(uint32_t max_frame, const uint8_t *buf, size_t len,
                            size_t *used, pl_request *out, void **scratch);
int tcp_json_decode_response(uint32_t max_frame, const uint8_t *buf, size_t len,
                             size_t *used, pl_response *out, void **scratch);

#endif
