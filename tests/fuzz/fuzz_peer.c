/*
 * tests/fuzz/fuzz_peer.c — the peer protocol's decoder: the bytes of one
 * PeerFrame as core/peer.c takes them off a peer socket (after the 4-byte
 * length), through protobuf-c and pl_peer_decode_frame's conversion and
 * checks, with no socket.
 *
 * Properties beyond "no crash, no leak": a VR message that passes has its
 * entries as one consecutive run right after the anchor (what core/vr.c
 * relies on), a Hello names an address core/peer.c can use as an identity
 * (host 1..PL_PEER_HOST_MAX bytes, NUL-terminated, of [A-Za-z0-9.:-]; peer
 * port not 0), every string in a status reply is readable, and an error
 * leaves nothing to free.
 */
#include <string.h>

#include "fuzz.h"
#include "peer.h"

static volatile unsigned sink;

static unsigned touch(pl_str s)
{
    unsigned h = 0;
    for (uint32_t i = 0; i < s.len; i++)
        h += (unsigned char)s.ptr[i];
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pl_peer_frame f;
    int rc = pl_peer_decode_frame(data, size, &f);
    FUZZ_CHECK(rc == PL_OK || rc == PL_ERR_MALFORMED || rc == PL_ERR_INVALID || rc == PL_ERR_NOMEM,
               "undocumented result %d", rc);
    if (rc == PL_OK) {
        unsigned h = 0;
        switch (f.kind) {
        case PL_PEER_F_VR:
            FUZZ_CHECK(f.vr.n_entries == 0 || f.vr.entries, "entries missing");
            for (uint32_t i = 0; i < f.vr.n_entries; i++) {
                const pl_log_entry *e = &f.vr.entries[i];
                FUZZ_CHECK(e->op == f.vr.anchor_op + 1 + i,
                           "entry %u has op %llu after anchor %llu", i,
                           (unsigned long long)e->op, (unsigned long long)f.vr.anchor_op);
                FUZZ_CHECK(e->len == 0 || e->data, "entry data missing");
                for (uint32_t j = 0; j < e->len; j++)
                    h += e->data[j];
            }
            break;
        case PL_PEER_F_HELLO:
            FUZZ_CHECK(f.host.len >= 1 && f.host.len <= PL_PEER_HOST_MAX, "host of %u bytes",
                       f.host.len);
            FUZZ_CHECK(f.host.ptr[f.host.len] == 0, "host not NUL-terminated");
            for (uint32_t i = 0; i < f.host.len; i++)
                FUZZ_CHECK(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789.:-", f.host.ptr[i]) != NULL,
                           "host byte %u is 0x%02x", i, (unsigned char)f.host.ptr[i]);
            FUZZ_CHECK(f.peer_port != 0, "peer port 0");
            h = touch(f.host);
            break;
        case PL_PEER_F_STATUS_REPLY:
            h = touch(f.row.address) + touch(f.row.role) + touch(f.row.store) +
                touch(f.row.transport) + touch(f.row.digest);
            break;
        default:
            /* the other kinds carry only integers and borrowed bytes that
             * core/peer.c checks where it uses them */
            break;
        }
        sink = h;
    }
    pl_peer_frame_clear(&f);
    return 0;
}
