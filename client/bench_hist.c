/*
 * client/bench_hist.c — see bench_hist.h.
 */
#include "bench_hist.h"

#include <string.h>

static uint32_t bucket_of(uint64_t v)
{
    if (v < PB_HIST_LINEAR)
        return (uint32_t)v;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* 8..63 */
    uint64_t top = v >> (e - 7u);                     /* 128..255 */
    return PB_HIST_LINEAR + (e - 8u) * PB_HIST_SUB + (uint32_t)(top - PB_HIST_SUB);
}

/* The highest value that lands in bucket i. */
static uint64_t bucket_high(uint32_t i)
{
    if (i < PB_HIST_LINEAR)
        return i;
    uint32_t k = i - PB_HIST_LINEAR;
    uint32_t e = k / PB_HIST_SUB + 8u;
    uint64_t top = (uint64_t)(k % PB_HIST_SUB) + PB_HIST_SUB;
    uint64_t lo = top << (e - 7u);
    return lo + ((1ull << (e - 7u)) - 1u);
}

void pb_hist_reset(pb_hist *h)
{
    memset(h, 0, sizeof *h);
}

void pb_hist_record(pb_hist *h, uint64_t v)
{
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += (double)v;
    h->b[bucket_of(v)]++;
}

void pb_hist_merge(pb_hist *dst, const pb_hist *src)
{
    if (src->count == 0)
        return;
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
    for (uint32_t i = 0; i < PB_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
}

uint64_t pb_hist_percentile(const pb_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p >= 100.0)
        return h->max;
    /* The rank of the sample at or below which p percent of samples lie. */
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < PB_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = bucket_high(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double pb_hist_mean(const pb_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
