/*
 * tests/fuzz/fuzz_grpc_reflect.c — the grpc transport's server reflection
 * (plugins/transport-grpc/grpc_reflect.c): one ServerReflectionRequest
 * message from the network in, one answer out. The input is the message's
 * bytes. Bytes that do not decode must give PL_ERR_MALFORMED; anything
 * else an answer that decodes as a ServerReflectionResponse.
 */
#include <stdlib.h>

#include "fuzz.h"
#include "grpc_int.h"
#include "reflection.pb-c.h"

static gr_reflect *g;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g)
        g = gr_reflect_new();
    FUZZ_CHECK(g != NULL, "the embedded descriptor set does not index");
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = gr_reflect_answer(g, data, size, &out, &len);
    FUZZ_CHECK(rc == PL_OK || rc == PL_ERR_MALFORMED, "rc %d", rc);
    if (rc == PL_OK) {
        ProtobufCMessage *m = protobuf_c_message_unpack(
            &grpc__reflection__v1__server_reflection_response__descriptor, NULL, len, out);
        FUZZ_CHECK(m != NULL, "an answer of %zu bytes that does not decode", len);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    free(out);
    return 0;
}
