/*
 * client/bench.h — what the parts of parley-bench share.
 *
 * parley-bench drives many connections from one event loop straight through
 * the configured transport plugin's client half (the same plugin libparley
 * loads), so it speaks every wire format and costs little per connection:
 * one pl_transport_client and a few hundred bytes of state each.
 *
 * Prefix: pb_.
 */
#ifndef PB_BENCH_H
#define PB_BENCH_H

#include <stdint.h>
#include <stdio.h>

/* --wire-sizes: print the bytes of a typical request and response of every
 * method in every wire format whose plugin loads. Returns 0, or 1 when no
 * plugin loads or a frame does not encode. */
int pb_wire_sizes(const char *plugin_dir, uint32_t body_len, FILE *out);

#endif
