/* bidistream/options.h — the pipeline's options (the seed's Options, in C).
 *
 * Every size is a count, 0 meaning "no limit" where the seed says so. Times are
 * nanoseconds. Start from bds_default_options() and change fields; always pass
 * the result through bds_options_validate() (session creation does). */
#ifndef BIDISTREAM_OPTIONS_H
#define BIDISTREAM_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "bidistream/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bds_ordering_mode {
    BDS_ORDERING_FIFO = 0,       /* one order for the whole stream */
    BDS_ORDERING_KEYED_FIFO = 1, /* sequential within a key, parallel across keys */
} bds_ordering_mode;

typedef enum bds_backpressure_policy {
    BDS_BP_HARD_REJECT = 0,       /* reject at once when capacity is exhausted */
    BDS_BP_QUEUE = 1,             /* wait for capacity; queue_capacity bounds the waiters */
    BDS_BP_SOFT_ALLOW = 2,        /* run anyway */
    BDS_BP_SOFT_ALLOW_SIGNAL = 3, /* run anyway, count it, call on_pressure, mark the call (bds_call_pressured) */
} bds_backpressure_policy;

typedef struct bds_ordering_options {
    bds_ordering_mode mode;
    uint32_t capacity; /* messages waiting for their turn; 0 = no limit */
} bds_ordering_options;

typedef struct bds_backpressure_options {
    bds_backpressure_policy policy;
    uint32_t capacity;       /* concurrent executions (inbound) or unwritten replies (outbound); 0 = no limit */
    uint32_t queue_capacity; /* waiters for capacity, QUEUE only; 0 = no limit */
} bds_backpressure_options;

typedef enum bds_direction { BDS_INBOUND = 0, BDS_OUTBOUND = 1 } bds_direction;

typedef struct bds_session bds_session; /* bidistream/pipeline.h */
typedef struct bds_call bds_call;

/* Called on the session's home shard (its thread) each time a
 * SOFT_ALLOW_SIGNAL policy lets work run over capacity: inbound, a message
 * admitted on a token over the capacity (call is that message, admitted and
 * not yet run: bds_call_key, bds_call_seq and bds_call_payload may be read
 * during the callback, nothing else; its handler sees bds_call_pressured);
 * outbound, a reply written over the capacity (call is NULL). session is
 * the stream's (bds_session_ctx gives its transport context). in_use counts
 * the tokens taken with this one. Both pointers are lent for the callback
 * only. It may run inside bds_session_receive (inbound) or bds_session_send
 * (a push): it must not call back into that session. Must not block. */
typedef void (*bds_on_pressure_fn)(bds_session *session, const bds_call *call, bds_direction direction,
                                   uint32_t in_use, uint32_t capacity, void *ctx);

typedef struct bds_options {
    uint32_t size; /* = sizeof(bds_options); lets fields be added */
    struct {
        bds_ordering_options ordering;
        bds_backpressure_options backpressure;
        bool drain_on_client_close;  /* finish in-flight work after the client half-closes */
        bool failures_terminal;      /* a handler failure (retries spent) ends the session */
        /* Payload bytes admitted and not yet finished. At or past it the
         * session has no inbound room (a transport stops reading: the peer
         * waits at its socket) and a receive is rejected; one message may
         * overshoot it, so a message of any size can run alone. 0 = no limit. */
        uint32_t outstanding_bytes_max;
        /* Messages admitted and not yet running (behind their key's running
         * one, or waiting for a token). At or past it the session has no
         * inbound room under QUEUE and the SOFT policies: a transport stops
         * taking the stream's messages (its flow-control window stays shut)
         * until some start. It keeps an overload's backlog at the client
         * rather than in the server's memory, where a deep queue turns every
         * message's data cold and the server slower the further it falls
         * behind. Never a rejection: HARD_REJECT ignores it (it rejects at
         * the capacities). 0 = no limit. */
        uint32_t read_ahead;
    } inbound;
    struct {
        /* ordering.mode: replies that wait for an outbound token wait in
         * one queue in arrival order (FIFO), or (KEYED_FIFO) in one queue per
         * key (their call's ordering key; pushes, bds_session_send, the empty
         * key), the waiting keys taking turns as tokens free up, one reply
         * each: a key's backlog delays another key's reply by one of its
         * replies, not all of them. Order is kept per key either way. */
        bds_ordering_options ordering;
        bds_backpressure_options backpressure;
        bool fail_fast;              /* an outbound error ends the session */
        /* Reply payload bytes the Sender holds: queued, and written but not
         * yet taken by the transport (bds_session_reply_written). At or past
         * it no reply is written (one may overshoot, so a reply of any size
         * goes out alone) and the session has no inbound room, whatever the
         * policy: HARD_REJECT rejects the reply; QUEUE and the SOFT policies
         * queue it (QUEUE within queue_capacity), and since no new message is
         * admitted only the work already admitted can add more. 0 = no limit. */
        uint32_t unsent_bytes_max;
    } outbound;
    /* Retries: a failed attempt runs again, on its key's pipeline, keeping
     * its key's turn, after backoff_ns, while the budget lasts, the session
     * is open, and either the failure's gRPC code (bds_status_grpc) is in
     * `retryable` or the handler asked with bds_call_retry (pipeline.h). A
     * panic is never retried. Replies: with max_attempts > 0 an attempt's
     * replies are held with its call until the attempt ends, then sent (it
     * succeeded) or dropped through ops->drop (it failed, retried or not):
     * no reply of a failed attempt is sent, none twice. Held replies count
     * toward no outbound bound (capacity, unsent_bytes_max, the session's
     * held bytes) until their attempt ends. With at_least_once
     * they go out as they are made, as without retries: a retried attempt
     * may send them again. */
    struct {
        uint32_t max_attempts;       /* retry budget per message: 0 = one attempt, no retry */
        uint64_t backoff_ns;         /* delay between attempts; 0 = retry at once */
        uint32_t retryable;          /* gRPC codes retried: bit (1u << code), codes 1..16 */
        bool at_least_once;          /* send replies as made (a retry may repeat them) */
    } retry;
    struct {
        uint64_t grace_period_ns;    /* how long draining may take before a forced close */
        bool drain_inbound;          /* on shutdown, finish admitted inbound messages */
        bool drain_outbound;         /* on shutdown, send replies already queued */
    } shutdown;
    struct {
        bool enabled;
        bool payload_sizes;          /* also sum payload bytes (costs a little per message) */
    } metrics;
    bds_on_pressure_fn on_pressure;  /* optional, SOFT_ALLOW_SIGNAL */
    void *on_pressure_ctx;
} bds_options;

/* The gRPC codes retried by default: UNAVAILABLE, ABORTED and
 * RESOURCE_EXHAUSTED, failures that may pass. Never by default: CANCELLED,
 * INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
 * FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED (the
 * same again would fail the same), DEADLINE_EXCEEDED, INTERNAL, UNKNOWN,
 * DATA_LOSS, and the statuses that send nothing (E_NONTERMINAL_FAILURE). */
#define BDS_RETRYABLE_DEFAULT ((1u << BDS_UNAVAILABLE) | (1u << BDS_ABORTED) | (1u << BDS_RESOURCE_EXHAUSTED))

/* Safe defaults: inbound KEYED_FIFO with QUEUE backpressure (a fast client is
 * slowed, not rejected: the transport stops reading when the queue is full, or
 * when 4 MiB of payload is admitted and unfinished, or 4 MiB of replies wait
 * for the transport), outbound FIFO with QUEUE, fail_fast on, no retries
 * (retryable = BDS_RETRYABLE_DEFAULT, replies held when retries are on), a
 * 5 s grace period, drain on shutdown and on client close, terminal handler
 * failures. docs/SERVICE.md lists every field's default with its bidistreamd
 * flag. */
BDS_API bds_options bds_default_options(void);

/* Checks every field. Returns BDS_OK, or BDS_E_INVALID with *why (if why is not
 * NULL) set to a static one-line explanation naming the field. */
BDS_API bds_status bds_options_validate(const bds_options *options, const char **why);

#ifdef __cplusplus
}
#endif
#endif
