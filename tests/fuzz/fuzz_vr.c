/*
 * tests/fuzz/fuzz_vr.c — what a peer's bytes can do to a replica: a stream
 * of peer frames decoded by pl_peer_decode_frame and handed to a live VR
 * replica (core/vr.c) with an in-memory durable log, with time passing
 * between them, as parleyd does with a peer link.
 *
 * Input: byte 0 picks the cluster (3 or 5 servers) and this replica's index;
 * then records of [sender][ms to pass / 4][2-byte big-endian length][PeerFrame].
 * Sender bit 7 set: propose one entry first if this replica is the primary.
 *
 * VR is a crash-fault protocol: a forged message from a peer that knows the
 * cluster secret can mislead it. What no message may do is break the
 * replica's own bookkeeping, which the store and the sequencer rely on:
 * appends continue the log exactly, a truncation never drops a committed
 * op, and the commit number handed to the state machine never passes the
 * log. Memory errors and leaks are caught by the sanitizers.
 */
#include <string.h>

#include "fuzz.h"
#include "log.h"
#include "peer.h"
#include "vr.h"

#define LOG_MAX 4096u

typedef struct fx {
    uint64_t nlog;
    uint64_t views[LOG_MAX + 1];  /* views[op] for op 1..nlog */
    uint64_t committed;           /* highest commit handed to the state machine */
    uint64_t view, lnv;
} fx;

static fx F;
static const uint8_t blob[8] = "fuzzop!";

static int io_append(void *ud, const pl_log_entry *e, size_t n)
{
    (void)ud;
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(e[i].op == F.nlog + 1, "append of op %llu after op %llu",
                   (unsigned long long)e[i].op, (unsigned long long)F.nlog);
        FUZZ_CHECK(e[i].len == 0 || e[i].data, "entry without data");
        if (F.nlog >= LOG_MAX)
            return PL_ERR_IO; /* a full disk: VR must cope */
        F.views[++F.nlog] = e[i].view;
    }
    return PL_OK;
}

static int io_truncate(void *ud, uint64_t after)
{
    (void)ud;
    FUZZ_CHECK(after >= F.committed, "truncate after op %llu drops committed op %llu",
               (unsigned long long)after, (unsigned long long)F.committed);
    if (after < F.nlog)
        F.nlog = after;
    return PL_OK;
}

static int io_read(void *ud, uint64_t from, uint64_t to, pl_log_cb cb, void *cbud)
{
    (void)ud;
    for (uint64_t op = from ? from : 1; op <= to && op <= F.nlog; op++) {
        pl_log_entry e = { op, F.views[op], blob, sizeof blob };
        if (cb(cbud, &e))
            break;
    }
    return PL_OK;
}

static int io_save(void *ud, const char *key, uint64_t val)
{
    (void)ud;
    if (!strcmp(key, "view"))
        F.view = val;
    else if (!strcmp(key, "lnv"))
        F.lnv = val;
    return PL_OK;
}

static void io_send(void *ud, uint32_t to, const pl_vr_msg *m)
{
    (void)ud;
    (void)to;
    for (uint32_t i = 0; i < m->n_entries; i++)
        FUZZ_CHECK(m->entries[i].op == m->anchor_op + 1 + i, "sent a non-consecutive run");
}

static void io_committed(void *ud, uint64_t commit)
{
    (void)ud;
    FUZZ_CHECK(commit <= F.nlog, "commit %llu past the log's last op %llu",
               (unsigned long long)commit, (unsigned long long)F.nlog);
    if (commit > F.committed)
        F.committed = commit;
}

static void io_changed(void *ud)
{
    (void)ud;
}

static uint64_t io_log_first(void *ud)
{
    (void)ud;
    return F.nlog ? 1 : 0;
}

static void io_need_snapshot(void *ud, uint32_t to)
{
    (void)ud;
    (void)to;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pl_log_set_level(PL_LOG_ERROR); /* view changes by the thousand otherwise */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    memset(&F, 0, sizeof F);
    uint32_t n = (data[0] & 1) ? 5 : 3;
    uint32_t self = (uint32_t)(data[0] >> 1) % n;
    /* a replica with a short history: ops 1..4 of view 1, 2 committed */
    F.nlog = 4;
    for (uint64_t op = 1; op <= 4; op++)
        F.views[op] = 1;
    F.committed = 2;
    F.view = F.lnv = 1;
    pl_vr_config cfg = { .n = n, .self = self, .election_timeout_ms = 1000,
                         .heartbeat_ms = 100, .failback = true, .max_batch = 16,
                         .window = 64 };
    pl_vr_io io = { .append = io_append, .truncate = io_truncate, .read = io_read,
                    .save_meta = io_save, .send = io_send, .committed = io_committed,
                    .changed = io_changed, .log_first = io_log_first,
                    .need_snapshot = io_need_snapshot };
    pl_vr_durable d = { .view = 1, .lnv = 1, .op = 4, .op_view = 1, .commit = 2 };
    uint64_t now = 1000000;
    pl_vr *vr = pl_vr_new(&cfg, &io, &d, now);
    FUZZ_CHECK(vr, "pl_vr_new failed");

    size_t off = 1;
    for (int k = 0; k < 64 && size - off >= 4; k++) {
        uint8_t who = data[off];
        now += (uint64_t)data[off + 1] * 4;
        size_t len = (size_t)data[off + 2] << 8 | data[off + 3];
        off += 4;
        if (len > size - off)
            len = size - off;
        pl_vr_tick(vr, now);
        if ((who & 0x80) && pl_vr_is_primary(vr) && pl_vr_can_serve(vr, now)) {
            pl_log_entry e = { 0, 0, blob, sizeof blob };
            uint64_t first;
            pl_vr_propose(vr, &e, 1, &first, now);
        }
        pl_peer_frame f;
        if (pl_peer_decode_frame(data + off, len, &f) == PL_OK && f.kind == PL_PEER_F_VR) {
            /* the link names the sender, never this replica itself */
            f.vr.from = (uint32_t)(who & 0x7f) % n;
            if (f.vr.from != self)
                pl_vr_receive(vr, &f.vr, now);
        }
        pl_peer_frame_clear(&f);
        off += len;
    }
    pl_vr_tick(vr, now + 5000);
    pl_vr_free(vr);
    return 0;
}
