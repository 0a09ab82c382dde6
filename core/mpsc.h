/* mpsc.h — the bounded lock-free inbox of a shard: many producers, one
 * consumer (internal; DESIGN §5).
 *
 * Slots hold one non-NULL pointer each; NULL means "empty, or claimed and not
 * yet published". A producer claims k contiguous positions with one CAS on
 * tail, after checking space against the consumer's published head, then
 * publishes each slot with a release store. The consumer reads slots in
 * position order: a NULL at head ends its burst (a producer is between claim
 * and publish; it never spins), it NULLs what it took and publishes head once
 * per burst. A preempted producer delays only the consumer at its slot, never
 * other producers (unlike rte_ring's in-order tail update).
 *
 * Sleep/wake (the doorbell latch, DESIGN §5.3): the consumer resets bell_rung,
 * sets sleeping, then re-reads the push counter; a producer bumps the push
 * counter after publishing, then reads sleeping and rings only if it wins the
 * bell_rung exchange. All four are seq_cst, so of "consumer saw no new push"
 * and "producer saw the consumer awake" at most one holds (store-buffering,
 * forbidden under SC): no wake-up is lost. Spurious bells are harmless.
 *
 * Full ring: a producer never blocks. It sets its bit in want_space and tries
 * once more; the consumer takes the mask after each burst and rings those
 * producers (the same store-buffering argument on head and want_space). */
#ifndef BDS_MPSC_H
#define BDS_MPSC_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

typedef struct bds_mpsc {
    alignas(BDS_CACHELINE) _Atomic uint64_t tail;  /* next position to claim; producers CAS it */
    alignas(BDS_CACHELINE) _Atomic uint64_t head_pub; /* consumer's head, published per burst */
    _Atomic uint64_t pushes;                       /* items published so far (for the sleep check) */
    alignas(BDS_CACHELINE) uint64_t head;          /* consumer-private: next position to read */
    uint64_t seen_pushes;                          /* consumer-private: pushes at the last drain */
    alignas(BDS_CACHELINE) _Atomic uint32_t sleeping;
    _Atomic uint32_t bell_rung;
    _Atomic uint64_t want_space;                   /* producer ids waiting for room */
    alignas(BDS_CACHELINE) uint64_t mask;
    _Atomic(void *) *slots;
} bds_mpsc;

/* Bytes of slot memory init() needs for capacity slots. */
size_t bds__mpsc_footprint(uint32_t capacity);
/* capacity: a power of two >= 2; mem: footprint() bytes, 64-byte aligned. */
void bds__mpsc_init(bds_mpsc *q, void *mem, uint32_t capacity);
/* Asserts the ring is empty. */
void bds__mpsc_deinit(bds_mpsc *q);

/* Any thread. item != NULL. Returns false when full (item not taken). */
bool bds__mpsc_push(bds_mpsc *q, void *item);
/* Any thread. Claims up to n contiguous slots with one CAS and publishes
 * items[0..k); returns k (0 when full). */
uint32_t bds__mpsc_push_burst(bds_mpsc *q, void *const *items, uint32_t n);
/* Consumer only. Takes up to out_max items in push order; stops early at a
 * slot claimed but not yet published. */
uint32_t bds__mpsc_pop_burst(bds_mpsc *q, void **out, uint32_t out_max);
/* Consumer's view: nothing published at head. */
bool bds__mpsc_empty(const bds_mpsc *q);

/* Consumer, before blocking: true when it may block now; false when a push
 * happened since its last drain (it stays awake; sleeping is cleared). */
bool bds__mpsc_prepare_sleep(bds_mpsc *q);
/* Consumer, after waking from a block (any reason). */
void bds__mpsc_woken(bds_mpsc *q);
/* Producer, after a push that took items: true exactly when the caller must
 * ring the consumer's doorbell. */
bool bds__mpsc_should_ring(bds_mpsc *q);
/* Producer that found the ring full (id < 64). Returns true if room appeared
 * meanwhile (try again now); otherwise the consumer will ring producer id. */
bool bds__mpsc_want_space(bds_mpsc *q, uint32_t producer_id);
/* Consumer, after a drain: the producers to ring (the mask is cleared). */
uint64_t bds__mpsc_take_want_space(bds_mpsc *q);

#endif
