/* tests/bench/test_openloop.c: the open-loop schedule (bench/loadgen/openloop.c):
 * intended times at a fixed rate without drift, due counts, the end of the
 * schedule, and latency measured from the intended time when the sender falls
 * behind (no coordinated omission), shown with the histogram. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "hist.h"
#include "openloop.h"

#define MS 1000000ull
#define S 1000000000ull

Test(openloop, intended_times_follow_the_rate_exactly)
{
    bds_openloop ol;
    bds_openloop_init(&ol, 5 * S, 1000, UINT64_MAX);
    for (uint64_t i = 0; i < 5000; i++)
        cr_assert_eq(bds_openloop_intended(&ol, i), 5 * S + i * MS);
}

Test(openloop, no_drift_when_the_period_is_not_an_integer)
{
    /* 3 msg/s: period 333,333,333.3 ns. Adding a rounded period would drift by
     * 1 ns per message; from the index, message 3,000,000 is due at exactly
     * 1,000,000 s. */
    bds_openloop ol;
    bds_openloop_init(&ol, 0, 3, UINT64_MAX);
    cr_assert_eq(bds_openloop_intended(&ol, 1), 333333333);
    cr_assert_eq(bds_openloop_intended(&ol, 2), 666666666);
    cr_assert_eq(bds_openloop_intended(&ol, 3), S);
    cr_assert_eq(bds_openloop_intended(&ol, 3000000), 1000000 * S);
}

Test(openloop, due_counts_messages_up_to_now)
{
    bds_openloop ol;
    bds_openloop_init(&ol, 100 * MS, 1000, UINT64_MAX);
    cr_assert_eq(bds_openloop_due(&ol, 0), 0, "before start");
    cr_assert_eq(bds_openloop_due(&ol, 100 * MS), 1, "message 0 is due at start");
    cr_assert_eq(bds_openloop_due(&ol, 100 * MS + 999999), 1);
    cr_assert_eq(bds_openloop_due(&ol, 110 * MS), 11);
    uint64_t t;
    for (int i = 0; i < 11; i++)
        cr_assert(bds_openloop_take(&ol, 110 * MS, &t));
    cr_assert_not(bds_openloop_take(&ol, 110 * MS, &t), "nothing more is due");
    cr_assert_eq(bds_openloop_due(&ol, 110 * MS), 0);
    cr_assert_eq(bds_openloop_next_ns(&ol), 111 * MS);
}

Test(openloop, due_agrees_with_intended_at_fractional_periods)
{
    /* For any now, due() counts exactly the i with intended(i) <= now. */
    uint64_t rates[] = { 1, 3, 7, 1000, 999983, 3000000 };
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        bds_openloop ol;
        bds_openloop_init(&ol, 12345, rates[r], UINT64_MAX);
        for (uint64_t i = 0; i < 2000; i++) {
            uint64_t t = bds_openloop_intended(&ol, i);
            cr_assert_eq(bds_openloop_due(&ol, t), i + 1, "rate %llu i %llu",
                         (unsigned long long)rates[r], (unsigned long long)i);
            if (t > 12345 && bds_openloop_intended(&ol, i - 1) < t)
                cr_assert_eq(bds_openloop_due(&ol, t - 1), i);
        }
    }
}

Test(openloop, schedule_ends_before_end_ns)
{
    bds_openloop ol;
    bds_openloop_init(&ol, 0, 1000, 10 * MS); /* messages at 0..9 ms */
    cr_assert_eq(bds_openloop_due(&ol, 1 * S), 10);
    uint64_t t, n = 0;
    while (bds_openloop_take(&ol, 1 * S, &t))
        n++;
    cr_assert_eq(n, 10);
    cr_assert_eq(bds_openloop_next_ns(&ol), UINT64_MAX);
}

Test(openloop, late_sender_keeps_intended_times)
{
    /* The sender sleeps 50 ms past the start, then catches up: the messages it
     * sends late carry the times they were due, in order, not the time of sending. */
    bds_openloop ol;
    bds_openloop_init(&ol, 0, 1000, UINT64_MAX);
    uint64_t t, i = 0;
    while (bds_openloop_take(&ol, 50 * MS, &t)) {
        cr_assert_eq(t, i * MS);
        i++;
    }
    cr_assert_eq(i, 51);
}

/* A simulated run: 1,000 msg/s for 10 s against a server that answers in 1 ms,
 * except that the *sender* is stalled for 1 s at t = 5 s (a blocked socket).
 * Measured from the intended time, the messages due during the stall wait
 * up to 1 s: 1,000 of 10,000 messages (10 %) are delayed, linearly from 1 s
 * down to 0, so p90 is still ~1 ms but p95 is ~0.5 s and p99 ~0.9 s.
 * Measured from the actual send time (coordinated omission) every message
 * would show 1 ms and the stall would vanish: the assertion on `naive` shows it. */
Test(openloop, stall_shows_up_in_latency_from_intended_time)
{
    bds_openloop ol;
    bds_openloop_init(&ol, 0, 1000, 10 * S);
    bds_hist *co = malloc(sizeof *co), *naive = malloc(sizeof *naive);
    bds_hist_init(co);
    bds_hist_init(naive);
    const uint64_t service = 1 * MS, stall_from = 5 * S, stall_to = 6 * S;
    /* The sender loop wakes every 100 µs of simulated time. */
    for (uint64_t now = 0; now < 11 * S; now += 100000) {
        if (now >= stall_from && now < stall_to)
            continue; /* stalled: sends nothing */
        uint64_t intended;
        while (bds_openloop_take(&ol, now, &intended)) {
            uint64_t reply_at = now + service;
            bds_hist_record(co, reply_at - intended);
            bds_hist_record(naive, reply_at - now);
        }
    }
    cr_assert_eq(co->count, 10000);
    cr_assert_eq(naive->count, 10000);
    /* naive: every message took exactly the service time */
    cr_assert_eq(bds_hist_percentile(naive, 99.99), service);
    /* corrected: the stall is in the tail */
    cr_assert(bds_hist_percentile(co, 50) <= service + 100000);
    cr_assert(bds_hist_percentile(co, 89) <= service + 100000);
    uint64_t p95 = bds_hist_percentile(co, 95), p99 = bds_hist_percentile(co, 99);
    cr_assert(p95 > 450 * MS && p95 < 560 * MS, "p95 %llu", (unsigned long long)p95);
    cr_assert(p99 > 850 * MS && p99 < 960 * MS, "p99 %llu", (unsigned long long)p99);
    cr_assert(co->max >= 1 * S && co->max <= 1 * S + 2 * MS, "max %llu", (unsigned long long)co->max);
    free(co);
    free(naive);
}
