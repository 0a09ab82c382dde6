/* test_options.c — defaults are the SPEC's safe defaults, and nonsense is
 * refused with a message naming the field. */
#include <criterion/criterion.h>
#include <string.h>

#include "bidistream/options.h"

Test(options, defaults_are_safe_and_valid) {
    bds_options o = bds_default_options();
    const char *why = "unset";
    cr_assert_eq(bds_options_validate(&o, &why), BDS_OK);
    cr_assert_null(why);
    cr_assert_eq(o.size, sizeof o);
    cr_assert_eq(o.inbound.ordering.mode, BDS_ORDERING_KEYED_FIFO);
    cr_assert_eq(o.inbound.backpressure.policy, BDS_BP_QUEUE);
    cr_assert_gt(o.inbound.backpressure.capacity, 0);
    cr_assert_eq(o.outbound.ordering.mode, BDS_ORDERING_FIFO);
    cr_assert(o.outbound.fail_fast);
    cr_assert_eq(o.inbound.outstanding_bytes_max, 4u << 20, "every stream's bytes are bounded by default");
    cr_assert_eq(o.outbound.unsent_bytes_max, 4u << 20);
    cr_assert_eq(o.retry.max_attempts, 0);
    cr_assert_eq(o.retry.retryable, (1u << 14) | (1u << 10) | (1u << 8), "UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED");
    cr_assert_not(o.retry.at_least_once, "a retried attempt's replies are held, not sent twice");
    cr_assert(o.shutdown.grace_period_ns >= 1000000000ULL && o.shutdown.grace_period_ns <= 30000000000ULL);
    cr_assert(o.shutdown.drain_inbound && o.shutdown.drain_outbound && o.inbound.drain_on_client_close);
}

static void expect_invalid(const bds_options *o, const char *field) {
    const char *why = NULL;
    cr_assert_eq(bds_options_validate(o, &why), BDS_E_INVALID, "expected %s to be refused", field);
    cr_assert_not_null(why);
    cr_assert(strstr(why, field) != NULL, "'%s' does not name %s", why, field);
}

Test(options, nonsense_is_refused_with_the_field_named) {
    bds_options o;
    o = bds_default_options();
    o.inbound.ordering.mode = (bds_ordering_mode)7;
    expect_invalid(&o, "inbound.ordering.mode");
    o = bds_default_options();
    o.outbound.backpressure.policy = (bds_backpressure_policy)9;
    expect_invalid(&o, "outbound.backpressure.policy");
    o = bds_default_options();
    o.inbound.backpressure.policy = BDS_BP_HARD_REJECT;
    o.inbound.backpressure.queue_capacity = 10;
    expect_invalid(&o, "inbound.backpressure.queue_capacity");
    o = bds_default_options();
    o.inbound.backpressure.capacity = 0;
    expect_invalid(&o, "inbound.backpressure");
    o = bds_default_options();
    o.retry.max_attempts = 1000000;
    expect_invalid(&o, "retry.max_attempts");
    o = bds_default_options();
    o.retry.backoff_ns = 5;
    expect_invalid(&o, "retry.backoff");
    o = bds_default_options();
    o.retry.retryable |= 1u; /* OK */
    expect_invalid(&o, "retry.retryable");
    o = bds_default_options();
    o.retry.retryable |= 1u << 17;
    expect_invalid(&o, "retry.retryable");
    o = bds_default_options();
    o.retry.at_least_once = true;
    expect_invalid(&o, "retry.at_least_once");
    o.retry.max_attempts = 2;
    cr_assert_eq(bds_options_validate(&o, NULL), BDS_OK);
    o = bds_default_options();
    o.retry.retryable = 0x1fffeu; /* every failure code */
    cr_assert_eq(bds_options_validate(&o, NULL), BDS_OK);
    o = bds_default_options();
    o.shutdown.grace_period_ns = UINT64_MAX;
    expect_invalid(&o, "shutdown.grace_period");
    o = bds_default_options();
    o.metrics.enabled = false;
    o.metrics.payload_sizes = true;
    expect_invalid(&o, "metrics.payload_sizes");
    o = bds_default_options();
    o.size = 8;
    expect_invalid(&o, "options.size");
    expect_invalid(NULL, "options");
}

Test(options, unlimited_and_soft_policies_are_valid) {
    bds_options o = bds_default_options();
    o.inbound.backpressure.capacity = 0;
    o.inbound.backpressure.queue_capacity = 0;
    o.inbound.ordering.capacity = 0;
    o.outbound.backpressure.policy = BDS_BP_SOFT_ALLOW_SIGNAL;
    o.outbound.backpressure.queue_capacity = 0;
    cr_assert_eq(bds_options_validate(&o, NULL), BDS_OK);
}
