/* openloop: the send schedule of an open-loop load generator.
 *
 * Message i is due at start_ns + floor(i * 1e9 / rate), whatever happened
 * before: a sender that falls behind (a stalled socket, a full flow-control
 * window, a descheduled thread) sends the late messages as soon as it can and
 * stamps each with its *intended* time, so the latency it later records
 * (receive time - intended time) includes the time the message waited to be
 * sent. That is the correction for coordinated omission (Gil Tene; wrk2):
 * measuring from the actual send time would hide exactly the stalls the
 * benchmark is meant to see.
 *
 * Thread: none (one schedule per sending thread). No allocation.
 */
#ifndef BDS_BENCH_OPENLOOP_H
#define BDS_BENCH_OPENLOOP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct bds_openloop {
    uint64_t start_ns;
    uint64_t rate;      /* messages per second, > 0 */
    uint64_t next;      /* index of the next message to send */
    uint64_t end_ns;    /* no message is due at or after this (UINT64_MAX: none) */
} bds_openloop;

void bds_openloop_init(bds_openloop *ol, uint64_t start_ns, uint64_t rate_per_s, uint64_t end_ns);
/* Intended send time of message i. */
uint64_t bds_openloop_intended(const bds_openloop *ol, uint64_t i);
/* Intended time of the next message, or UINT64_MAX when the schedule is over. */
uint64_t bds_openloop_next_ns(const bds_openloop *ol);
/* How many messages are due at now_ns and not yet taken. */
uint64_t bds_openloop_due(const bds_openloop *ol, uint64_t now_ns);
/* Takes the next message if it is due at now_ns: stores its intended time in
 * *intended_ns and returns true; false when nothing is due. */
bool bds_openloop_take(bds_openloop *ol, uint64_t now_ns, uint64_t *intended_ns);

#endif
