/*
 * tests/fuzz/fuzz_codec.c — one transport codec, one direction: the bytes a
 * server reads from a client (decode_request) or a client reads from a
 * server (decode_response), through the plugin's own codec functions
 * (include/parley/transport.h), loaded from the built module like parleyd
 * loads it.
 *
 * Built once per (plugin, options, direction) with
 *   FUZZ_PLUGIN   path of the module
 *   FUZZ_OPTIONS  the transport's options JSON ({"name":"tcp","codec":"json"})
 *   FUZZ_RESPONSE 0 = decode_request, 1 = decode_response
 *
 * Besides "no crash, no leak, no read out of bounds", it checks what the ABI
 * promises: *used is within the input; every decoded string and array lies
 * where the decoder said; and what decodes re-encodes to a frame that
 * decodes to the same bytes again (encode(decode(encode(x))) == encode(x)),
 * so the two halves of a codec agree on every frame either accepts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/transport.h>

#include "fuzz.h"
#include "loader.h"

static pl_plugin *plugin;
static const pl_transport_plugin *tp;
static const pl_transport_options opts = {
    .host = "127.0.0.1", .port = 0, .max_frame = 64u * 1024u, .options_json = FUZZ_OPTIONS,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[512];
    plugin = pl_plugin_load("transport", FUZZ_PLUGIN, NULL, err, sizeof err);
    if (!plugin || !(tp = pl_plugin_transport(plugin))) {
        fprintf(stderr, "fuzz_codec: %s\n", plugin ? "not a transport" : err);
        exit(1);
    }
    return 0;
}

/* Touch every byte a decoded string claims, so ASan flags a bad pointer. */
static unsigned touch(pl_str s)
{
    unsigned h = 0;
    for (uint32_t i = 0; i < s.len; i++)
        h += (unsigned char)s.ptr[i];
    return h;
}

static volatile unsigned sink;

static void touch_request(const pl_request *r)
{
    unsigned h = touch(r->token) + touch(r->username) + touch(r->password) +
                 touch(r->pattern) + touch(r->to) + touch(r->body) + touch(r->peer);
    FUZZ_CHECK(r->n_ids == 0 || r->ids, "%u ids without an array", r->n_ids);
    for (uint32_t i = 0; i < r->n_ids; i++)
        h += (unsigned)r->ids[i];
    sink = h;
}

static void touch_response(const pl_response *r)
{
    unsigned h = touch(r->error) + touch(r->leader) + touch(r->token);
    FUZZ_CHECK(r->n_users == 0 || r->users, "%u users without an array", r->n_users);
    FUZZ_CHECK(r->n_msgs == 0 || r->msgs, "%u msgs without an array", r->n_msgs);
    FUZZ_CHECK(r->n_servers == 0 || r->servers, "%u servers without an array", r->n_servers);
    for (uint32_t i = 0; i < r->n_users; i++)
        h += touch(r->users[i]);
    for (uint32_t i = 0; i < r->n_msgs; i++)
        h += touch(r->msgs[i].from) + touch(r->msgs[i].to) + touch(r->msgs[i].body);
    for (uint32_t i = 0; i < r->n_servers; i++) {
        const pl_server_status *s = &r->servers[i];
        h += touch(s->address) + touch(s->role) + touch(s->store) + touch(s->transport) +
             touch(s->digest);
    }
    sink = h;
}

/* Decode one frame of our direction; PL_OK or the decoder's error. The
 * decoded struct is left in *req or *resp, owned by *scratch. */
static int decode(const uint8_t *buf, size_t len, size_t *used, pl_request *req,
                  pl_response *resp, void **scratch)
{
    *scratch = NULL;
    *used = 0;
    int rc = FUZZ_RESPONSE ? tp->decode_response(&opts, buf, len, used, resp, scratch)
                           : tp->decode_request(&opts, buf, len, used, req, scratch);
    FUZZ_CHECK(rc == PL_OK || rc == PL_ERR_AGAIN || rc == PL_ERR_MALFORMED ||
                   rc == PL_ERR_FRAME_TOO_LARGE || rc == PL_ERR_NOMEM,
               "decoder returned %d (%s), not one of the documented codes", rc, pl_strerror(rc));
    if (rc == PL_OK)
        FUZZ_CHECK(*used > 0 && *used <= len, "used %zu of %zu bytes", *used, len);
    return rc;
}

static int encode(const pl_request *req, const pl_response *resp, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    return FUZZ_RESPONSE ? tp->encode_response(&opts, resp, out, len)
                         : tp->encode_request(&opts, req, out, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pl_request req;
    pl_response resp;
    void *scratch = NULL;
    size_t used;
    memset(&req, 0, sizeof req);
    memset(&resp, 0, sizeof resp);

    /* A stream may hold several frames back to back: decode them all, as a
     * connection does, until one fails or the input ends. */
    size_t off = 0;
    for (int frames = 0; off < size && frames < 64; frames++) {
        int rc = decode(data + off, size - off, &used, &req, &resp, &scratch);
        if (rc != PL_OK) {
            tp->free_scratch(scratch);
            return 0;
        }
        if (FUZZ_RESPONSE)
            touch_response(&resp);
        else
            touch_request(&req);

        /* The round trip: what one side accepts, the other side can say. */
        uint8_t *e1 = NULL, *e2 = NULL;
        size_t l1 = 0, l2 = 0, u1 = 0;
        void *s1 = NULL;
        pl_request r1;
        pl_response p1;
        if (encode(&req, &resp, &e1, &l1) == PL_OK) {
            rc = decode(e1, l1, &u1, &r1, &p1, &s1);
            FUZZ_CHECK(rc == PL_OK, "a frame the codec encoded does not decode: %s",
                       pl_strerror(rc));
            FUZZ_CHECK(u1 == l1, "re-encoded frame of %zu bytes decoded as %zu", l1, u1);
            rc = encode(&r1, &p1, &e2, &l2);
            FUZZ_CHECK(rc == PL_OK, "a decoded frame does not re-encode: %s", pl_strerror(rc));
            FUZZ_CHECK(l1 == l2 && memcmp(e1, e2, l1) == 0,
                       "encode(decode(frame)) differs from frame (%zu vs %zu bytes)", l1, l2);
            tp->free_scratch(s1);
        }
        free(e1);
        free(e2);
        tp->free_scratch(scratch);
        scratch = NULL;
        off += used;
    }
    return 0;
}
