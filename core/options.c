/* options.c — defaults and validation of bds_options. */
#include <stddef.h>

#include "bidistream/options.h"

#define MS (1000ULL * 1000ULL)
#define HOUR_NS (3600ULL * 1000ULL * MS)

/* Bounds past which a value is surely a unit mistake rather than a choice. */
#define MAX_ATTEMPTS_LIMIT 1000u
#define MAX_BACKOFF_NS HOUR_NS
#define MAX_GRACE_NS HOUR_NS
/* Codes 1..16: OK (0) is no failure. */
#define RETRYABLE_CODES (((1u << 17) - 1) & ~1u)

bds_options bds_default_options(void) {
    bds_options o = {0};
    o.size = sizeof o;
    o.inbound.ordering.mode = BDS_ORDERING_KEYED_FIFO;
    o.inbound.ordering.capacity = 4096;
    o.inbound.backpressure.policy = BDS_BP_QUEUE;
    o.inbound.backpressure.capacity = 256;
    o.inbound.backpressure.queue_capacity = 4096;
    o.inbound.drain_on_client_close = true;
    o.inbound.failures_terminal = true;
    o.inbound.outstanding_bytes_max = 4u << 20; /* a default max-size gRPC message */
    o.inbound.read_ahead = 64;
    o.outbound.ordering.mode = BDS_ORDERING_FIFO;
    o.outbound.ordering.capacity = 0;
    o.outbound.backpressure.policy = BDS_BP_QUEUE;
    o.outbound.backpressure.capacity = 1024;
    o.outbound.backpressure.queue_capacity = 8192;
    o.outbound.fail_fast = true;
    o.outbound.unsent_bytes_max = 4u << 20; /* a default max-size gRPC message */
    o.retry.max_attempts = 0;
    o.retry.backoff_ns = 0;
    o.retry.retryable = BDS_RETRYABLE_DEFAULT;
    o.retry.at_least_once = false;
    o.shutdown.grace_period_ns = 5000 * MS;
    o.shutdown.drain_inbound = true;
    o.shutdown.drain_outbound = true;
    o.metrics.enabled = true;
    o.metrics.payload_sizes = false;
    return o;
}

static const char *validate_direction(const bds_ordering_options *ord, const bds_backpressure_options *bp,
                                      bool inbound) {
    if (ord->mode != BDS_ORDERING_FIFO && ord->mode != BDS_ORDERING_KEYED_FIFO) {
        return inbound ? "inbound.ordering.mode: not FIFO or KEYED_FIFO"
                       : "outbound.ordering.mode: not FIFO or KEYED_FIFO";
    }
    if ((unsigned)bp->policy > BDS_BP_SOFT_ALLOW_SIGNAL) {
        return inbound ? "inbound.backpressure.policy: unknown policy"
                       : "outbound.backpressure.policy: unknown policy";
    }
    if (bp->queue_capacity != 0 && bp->policy != BDS_BP_QUEUE) {
        return inbound ? "inbound.backpressure.queue_capacity: set, but the policy is not QUEUE"
                       : "outbound.backpressure.queue_capacity: set, but the policy is not QUEUE";
    }
    if (bp->capacity == 0 && bp->policy == BDS_BP_QUEUE && bp->queue_capacity != 0) {
        return inbound ? "inbound.backpressure: queue_capacity without a capacity (nothing would ever wait)"
                       : "outbound.backpressure: queue_capacity without a capacity (nothing would ever wait)";
    }
    return NULL;
}

bds_status bds_options_validate(const bds_options *o, const char **why) {
    const char *err = NULL;
    if (!o) {
        err = "options: NULL";
    } else if (o->size < sizeof(bds_options)) {
        err = "options.size: smaller than this library's bds_options (use bds_default_options())";
    } else if ((err = validate_direction(&o->inbound.ordering, &o->inbound.backpressure, true))) {
    } else if ((err = validate_direction(&o->outbound.ordering, &o->outbound.backpressure, false))) {
    } else if (o->retry.max_attempts > MAX_ATTEMPTS_LIMIT) {
        err = "retry.max_attempts: more than 1000 retries per message";
    } else if (o->retry.backoff_ns > MAX_BACKOFF_NS) {
        err = "retry.backoff: longer than one hour";
    } else if (o->retry.backoff_ns != 0 && o->retry.max_attempts == 0) {
        err = "retry.backoff: set, but retry.max_attempts is 0 (no retry would wait for it)";
    } else if (o->retry.retryable & ~RETRYABLE_CODES) {
        err = "retry.retryable: a bit that is no gRPC failure code (OK, or past 16)";
    } else if (o->retry.at_least_once && o->retry.max_attempts == 0) {
        err = "retry.at_least_once: set, but retry.max_attempts is 0 (no attempt is retried)";
    } else if (o->shutdown.grace_period_ns > MAX_GRACE_NS) {
        err = "shutdown.grace_period: longer than one hour";
    } else if (o->metrics.payload_sizes && !o->metrics.enabled) {
        err = "metrics.payload_sizes: set, but metrics are disabled";
    }
    if (why) *why = err;
    return err ? BDS_E_INVALID : BDS_OK;
}
