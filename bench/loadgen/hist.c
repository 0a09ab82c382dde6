/* hist: log-linear histogram; the geometry is described in hist.h.
 *
 * index(v): s = 0 for v < 2^SUB_BITS (index = v), otherwise
 * s = msb(v) - SUB_BITS + 1 and the mantissa m = v >> s lies in
 * [2^(SUB_BITS-1), 2^SUB_BITS), index = s * HALF + m. Consecutive s ranges
 * abut (s=1 starts at 2^SUB_BITS = HALF + HALF), so indexes are dense and
 * monotonic in v, which is what percentile() relies on when it walks them.
 */
#include "hist.h"

#include <assert.h>
#include <math.h>
#include <string.h>

void bds_hist_init(bds_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

uint32_t bds_hist_index(uint64_t v)
{
    if (v < (1u << BDS_HIST_SUB_BITS))
        return (uint32_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned s = msb - BDS_HIST_SUB_BITS + 1u;
    uint32_t idx = s * BDS_HIST_HALF + (uint32_t)(v >> s);
    assert(idx < BDS_HIST_BUCKETS);
    return idx;
}

uint64_t bds_hist_bucket_low(uint32_t index)
{
    assert(index < BDS_HIST_BUCKETS);
    if (index < (1u << BDS_HIST_SUB_BITS))
        return index;
    /* invert index = s*HALF + m with m in [HALF, 2*HALF) */
    uint32_t s = index / BDS_HIST_HALF - 1u;
    uint64_t m = index - s * BDS_HIST_HALF;
    return m << s;
}

uint64_t bds_hist_bucket_high(uint32_t index)
{
    if (index + 1u == BDS_HIST_BUCKETS)
        return UINT64_MAX;
    return bds_hist_bucket_low(index + 1u) - 1u;
}

void bds_hist_record_n(bds_hist *h, uint64_t v, uint64_t n)
{
    if (n == 0)
        return;
    h->buckets[bds_hist_index(v)] += n;
    h->count += n;
    h->sum += (double)v * (double)n;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void bds_hist_record(bds_hist *h, uint64_t v)
{
    bds_hist_record_n(h, v, 1);
}

void bds_hist_merge(bds_hist *dst, const bds_hist *src)
{
    if (src->count == 0)
        return;
    for (uint32_t i = 0; i < BDS_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t bds_hist_percentile(const bds_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p <= 0)
        return h->min;
    if (p >= 100)
        return h->max;
    /* The rank of the value sought, 1-based; nudged down by a hair so that
     * p/100*count that is an integer in exact arithmetic (99.9 % of 1000)
     * does not round up to the next rank through binary fractions. */
    double r = ceil(p / 100.0 * (double)h->count - 1e-9);
    uint64_t rank = r < 1 ? 1 : (uint64_t)r;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < BDS_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = bds_hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max; /* unreachable when count matches the buckets */
}

double bds_hist_mean(const bds_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
