/*
 * client/bench_hist.h — a log-linear latency histogram in the manner of
 * HdrHistogram: fixed memory, O(1) record, percentiles without keeping or
 * sorting samples.
 *
 * Values (nanoseconds in parley-bench) below 256 have a bucket each; above,
 * every power of two is split into 128 equal buckets, so a reported value is
 * within 1/128 (0.8 %) of the true one. Percentiles report the highest value
 * that shares the bucket (never an underestimate), capped at the exact max.
 *
 * Prefix: pb_hist_.
 */
#ifndef PB_HIST_H
#define PB_HIST_H

#include <stdint.h>

#define PB_HIST_LINEAR 256u
#define PB_HIST_SUB 128u
#define PB_HIST_BUCKETS (PB_HIST_LINEAR + (64u - 8u) * PB_HIST_SUB)

typedef struct pb_hist {
    uint64_t count;
    uint64_t min, max;
    double sum;
    uint64_t b[PB_HIST_BUCKETS];
} pb_hist;

void pb_hist_reset(pb_hist *h);
void pb_hist_record(pb_hist *h, uint64_t v);
/* Add every sample of src to dst. */
void pb_hist_merge(pb_hist *dst, const pb_hist *src);
/* p in [0, 100]; 0 when empty. */
uint64_t pb_hist_percentile(const pb_hist *h, double p);
double pb_hist_mean(const pb_hist *h);

#endif
