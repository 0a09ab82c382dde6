/* tests/bench/test_hist.c: the load generator's histogram (bench/loadgen/hist.c)
 * against known inputs: exact below 2^SUB_BITS, within one bucket's precision
 * above, percentiles by rank, exact merge, and bucket geometry. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "hist.h"

static bds_hist *new_hist(void)
{
    bds_hist *h = malloc(sizeof *h);
    cr_assert_not_null(h);
    bds_hist_init(h);
    return h;
}

/* The relative precision the header promises: bucket width <= low / 128. */
static void assert_within_bucket(uint64_t got, uint64_t want)
{
    uint32_t i = bds_hist_index(want);
    cr_assert(got >= bds_hist_bucket_low(i) && got <= bds_hist_bucket_high(i),
              "got %llu, want %llu (bucket [%llu, %llu])", (unsigned long long)got,
              (unsigned long long)want, (unsigned long long)bds_hist_bucket_low(i),
              (unsigned long long)bds_hist_bucket_high(i));
    double err = got > want ? (double)(got - want) / (double)want : (double)(want - got) / (double)want;
    cr_assert(err <= 1.0 / 128, "relative error %g", err);
}

Test(hist, empty_reports_zero)
{
    bds_hist *h = new_hist();
    cr_assert_eq(bds_hist_percentile(h, 50), 0);
    cr_assert_eq(bds_hist_percentile(h, 100), 0);
    cr_assert_eq(h->count, 0);
    cr_assert_eq(bds_hist_mean(h), 0.0);
    free(h);
}

Test(hist, geometry_is_dense_monotonic_and_contiguous)
{
    /* Every bucket starts where the previous one ended. */
    for (uint32_t i = 1; i < BDS_HIST_BUCKETS; i++)
        cr_assert_eq(bds_hist_bucket_low(i), bds_hist_bucket_high(i - 1) + 1, "bucket %u", i);
    cr_assert_eq(bds_hist_bucket_low(0), 0);
    cr_assert_eq(bds_hist_bucket_high(BDS_HIST_BUCKETS - 1), UINT64_MAX);
    cr_assert_eq(bds_hist_index(UINT64_MAX), BDS_HIST_BUCKETS - 1);
    /* index() puts a value in the bucket whose range holds it, at the edges too. */
    for (unsigned sh = 0; sh < 64; sh++) {
        uint64_t vs[3] = { (uint64_t)1 << sh, ((uint64_t)1 << sh) - 1, ((uint64_t)1 << sh) + 1 };
        for (int k = 0; k < 3; k++) {
            uint32_t i = bds_hist_index(vs[k]);
            cr_assert(vs[k] >= bds_hist_bucket_low(i) && vs[k] <= bds_hist_bucket_high(i));
        }
    }
}

Test(hist, bucket_width_is_within_precision)
{
    for (uint32_t i = 1u << BDS_HIST_SUB_BITS; i < BDS_HIST_BUCKETS - 1; i++) {
        uint64_t lo = bds_hist_bucket_low(i), width = bds_hist_bucket_high(i) - lo + 1;
        cr_assert(width * 128 <= lo, "bucket %u: width %llu low %llu", i,
                  (unsigned long long)width, (unsigned long long)lo);
    }
}

Test(hist, small_values_are_exact)
{
    bds_hist *h = new_hist();
    for (uint64_t v = 1; v <= 100; v++)
        bds_hist_record(h, v);
    cr_assert_eq(h->count, 100);
    cr_assert_eq(bds_hist_percentile(h, 50), 50);
    cr_assert_eq(bds_hist_percentile(h, 90), 90);
    cr_assert_eq(bds_hist_percentile(h, 99), 99);
    cr_assert_eq(bds_hist_percentile(h, 99.9), 100);
    cr_assert_eq(bds_hist_percentile(h, 100), 100);
    cr_assert_eq(bds_hist_percentile(h, 1), 1);
    cr_assert_eq(h->min, 1);
    cr_assert_eq(h->max, 100);
    cr_assert_float_eq(bds_hist_mean(h), 50.5, 1e-9);
    free(h);
}

Test(hist, uniform_microseconds_within_bucket_precision)
{
    /* 1,000 values: 1 µs, 2 µs, ... 1 ms (in ns). */
    bds_hist *h = new_hist();
    for (uint64_t i = 1; i <= 1000; i++)
        bds_hist_record(h, i * 1000);
    assert_within_bucket(bds_hist_percentile(h, 50), 500000);
    assert_within_bucket(bds_hist_percentile(h, 90), 900000);
    assert_within_bucket(bds_hist_percentile(h, 99), 990000);
    assert_within_bucket(bds_hist_percentile(h, 99.9), 999000);
    cr_assert_eq(bds_hist_percentile(h, 100), 1000000, "max is exact");
    cr_assert_eq(bds_hist_percentile(h, 99.99), 1000000);
    free(h);
}

Test(hist, rank_boundaries_pick_the_right_value)
{
    /* 10,000 values: 9,990 at 100 µs and 10 at 50 ms. p99.9 is the 9,990th value
     * (still 100 µs), p99.99 the 9,999th (50 ms). */
    bds_hist *h = new_hist();
    bds_hist_record_n(h, 100000, 9990);
    bds_hist_record_n(h, 50000000, 10);
    assert_within_bucket(bds_hist_percentile(h, 99.9), 100000);
    assert_within_bucket(bds_hist_percentile(h, 99.91), 50000000);
    assert_within_bucket(bds_hist_percentile(h, 99.99), 50000000);
    assert_within_bucket(bds_hist_percentile(h, 50), 100000);
    cr_assert_eq(h->max, 50000000);
    free(h);
}

Test(hist, percentile_never_exceeds_max_nor_goes_below_min)
{
    bds_hist *h = new_hist();
    bds_hist_record(h, 123456789);
    for (double p = 0.5; p <= 100; p += 0.5)
        cr_assert_eq(bds_hist_percentile(h, p), 123456789);
    free(h);
}

Test(hist, merge_equals_recording_into_one)
{
    bds_hist *a = new_hist(), *b = new_hist(), *all = new_hist();
    srand(42);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = (uint64_t)rand() * (uint64_t)(1 + rand() % 1000);
        bds_hist_record(i % 3 ? a : b, v);
        bds_hist_record(all, v);
    }
    bds_hist_merge(a, b);
    cr_assert_eq(a->count, all->count);
    cr_assert_eq(a->min, all->min);
    cr_assert_eq(a->max, all->max);
    cr_assert_float_eq(a->sum, all->sum, all->sum * 1e-12);
    for (uint32_t i = 0; i < BDS_HIST_BUCKETS; i++)
        cr_assert_eq(a->buckets[i], all->buckets[i], "bucket %u", i);
    double ps[] = { 50, 90, 99, 99.9, 99.99, 100 };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        cr_assert_eq(bds_hist_percentile(a, ps[i]), bds_hist_percentile(all, ps[i]));
    free(a);
    free(b);
    free(all);
}

Test(hist, merge_of_empty_changes_nothing)
{
    bds_hist *a = new_hist(), *e = new_hist();
    bds_hist_record(a, 7);
    bds_hist_merge(a, e);
    cr_assert_eq(a->count, 1);
    cr_assert_eq(a->min, 7);
    bds_hist_merge(e, a);
    cr_assert_eq(e->count, 1);
    cr_assert_eq(e->min, 7);
    cr_assert_eq(e->max, 7);
    free(a);
    free(e);
}

Test(hist, large_values_up_to_uint64_max)
{
    bds_hist *h = new_hist();
    bds_hist_record(h, UINT64_MAX);
    bds_hist_record(h, (uint64_t)1 << 40);
    cr_assert_eq(bds_hist_percentile(h, 100), UINT64_MAX);
    assert_within_bucket(bds_hist_percentile(h, 50), (uint64_t)1 << 40);
    cr_assert_eq(bds_hist_percentile(h, 0), (uint64_t)1 << 40, "p0 is the exact min");
    free(h);
}
