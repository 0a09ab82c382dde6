/* hist: a log-linear latency histogram (HdrHistogram-like), mergeable.
 *
 * Values are unsigned 64-bit (the load generator records nanoseconds). Below
 * 2^BDS_HIST_SUB_BITS every value has its own bucket (exact); above, each
 * power-of-two range [2^h, 2^(h+1)) is split into 2^(BDS_HIST_SUB_BITS-1)
 * equal buckets, so a bucket's width is at most 1/128 of its lowest value:
 * any percentile is within 0.79 % of a value that was recorded (relative
 * error bound; HdrHistogram's "2 significant digits" is 1 %).
 *
 * Thread: none; each thread records into its own histogram and the owner
 * merges them (bds_hist_merge) after the threads are joined.
 * Ownership: caller storage (the struct is ~58 KiB: allocate it, or keep it
 * static); no allocation inside.
 */
#ifndef BDS_BENCH_HIST_H
#define BDS_BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define BDS_HIST_SUB_BITS 8
#define BDS_HIST_HALF (1u << (BDS_HIST_SUB_BITS - 1))
/* shift s runs 0..64-SUB_BITS; index = s * HALF + mantissa, mantissa < 2^SUB_BITS */
#define BDS_HIST_BUCKETS ((64u - BDS_HIST_SUB_BITS) * BDS_HIST_HALF + (1u << BDS_HIST_SUB_BITS))

typedef struct bds_hist {
    uint64_t count;
    uint64_t min;        /* exact; UINT64_MAX while empty */
    uint64_t max;        /* exact; 0 while empty */
    double sum;          /* for the mean; double so 2^64 ns totals cannot wrap */
    uint64_t buckets[BDS_HIST_BUCKETS];
} bds_hist;

void bds_hist_init(bds_hist *h);
void bds_hist_record(bds_hist *h, uint64_t v);
void bds_hist_record_n(bds_hist *h, uint64_t v, uint64_t n);
/* dst += src. Merging is exact: the result equals recording both inputs into one. */
void bds_hist_merge(bds_hist *dst, const bds_hist *src);

/* The value at percentile p (0 < p <= 100): the highest value of the bucket
 * that holds the ceil(p/100 * count)-th smallest recorded value, clamped to
 * [min, max]; so p=100 gives max exactly. Returns 0 for an empty histogram. */
uint64_t bds_hist_percentile(const bds_hist *h, double p);
double bds_hist_mean(const bds_hist *h);

/* Bucket geometry, exposed for tests and for dumping a distribution. */
uint32_t bds_hist_index(uint64_t v);
uint64_t bds_hist_bucket_low(uint32_t index);
uint64_t bds_hist_bucket_high(uint32_t index);

#endif
