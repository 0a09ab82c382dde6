/* mpsc.h — the bounded lock-free inbox of a shard: many producers (any
 * thread), one consumer (the owning shard). Internal; docs/ARCHITECTURE.md
 *
 * Items are non-NULL pointers, moved, never copied or dereferenced: a
 * successful push hands the pointee to the consumer. The design, the memory
 * ordering argument and the invariants are at the top of mpsc.c.
 *
 * Typical use:
 *   producer:  k = push_burst(q, v, n);
 *              if (k && should_ring(q)) ring the consumer's doorbell;
 *              if (k < n && !want_space(q, my_id)) wait for my own doorbell;
 *   consumer:  while ((n = pop_burst(q, out, max))) handle out[0..n);
 *              ring every producer in take_want_space(q);
 *              if (prepare_sleep(q)) block on the doorbell, no timeout;
 *              woken(q);   (after every prepare_sleep, whatever it returned) */
#ifndef BDS_MPSC_H
#define BDS_MPSC_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base.h"

/* Defined here so that it can be embedded (a shard's inbox); its fields are
 * private to mpsc.c (tests may read them). Positions are 64-bit and never
 * wrap in practice; position p lives in _slots[p & _mask]. Five cache lines:
 * what producers write, what the consumer publishes, what only the consumer
 * touches, what nobody writes after init, and the sleep/wake flags. */
typedef struct bds_mpsc {
    /* Producers' line: written by every push; the consumer reads it only
     * when it is about to sleep. */
    alignas(BDS_CACHELINE) _Atomic uint64_t _tail; /* next position to claim (CAS); _tail - _head_pub <= capacity */
    _Atomic uint64_t _pushes;     /* items published so far: the producers' half of the sleep handshake */
    _Atomic uint64_t _head_cache; /* an older _head_pub, shared by producers: always <= _head_pub */
    /* Consumer's published line: written once per non-empty burst. */
    alignas(BDS_CACHELINE) _Atomic uint64_t _head_pub; /* every position below it is empty and reusable */
    /* Consumer-private line: plain loads and stores. */
    alignas(BDS_CACHELINE) uint64_t _head; /* next position to pop; _head_pub <= _head <= _tail */
    /* Read-only after init. */
    alignas(BDS_CACHELINE) uint64_t _mask; /* capacity - 1 */
    _Atomic(void *) *_slots;               /* caller's memory; NULL = empty, or claimed and not published */
    /* Sleep/wake flags: written at sleep and wake, read by every push. */
    alignas(BDS_CACHELINE) _Atomic uint32_t _sleeping; /* the consumer announced it may block */
    _Atomic uint32_t _bell_rung;  /* a producer took the duty to ring for this sleep */
    _Atomic uint64_t _want_space; /* bit i: producer i found the ring full and waits for a bell */
} bds_mpsc;

BDS_STATIC_ASSERT(sizeof(bds_mpsc) == 5 * BDS_CACHELINE, "bds_mpsc: five cache lines");

/* ---- lifetime ------------------------------------------------------------- */

/* Bytes of slot memory that init() needs for `capacity` slots (a power of
 * two >= 2). */
size_t bds__mpsc_footprint(uint32_t capacity);
/* Thread: the consumer, before any producer sees q. No allocation.
 * capacity: a power of two >= 2. mem: footprint(capacity) bytes, 64-byte
 * aligned, owned by the caller and kept until deinit(). */
void bds__mpsc_init(bds_mpsc *q, void *mem, uint32_t capacity);
/* Thread: the consumer, once every producer is done with q. Asserts the
 * ring is empty (every claimed slot was published and popped). The caller
 * frees the slot memory afterwards. */
void bds__mpsc_deinit(bds_mpsc *q);

/* ---- producers (any thread) ------------------------------------------------- */

/* item != NULL. Returns true when taken (the consumer now owns the pointee),
 * false when the ring is full (not taken). Never blocks, never waits for
 * another producer: a lost CAS means another producer made progress. */
bool bds__mpsc_push(bds_mpsc *q, void *item);
/* Claims up to n contiguous slots with one CAS and publishes items[0..k) in
 * order (every items[i] != NULL). Returns k, the prefix taken: 0 when full. */
uint32_t bds__mpsc_push_burst(bds_mpsc *q, void *const *items, uint32_t n);
/* After a push that took at least one item. Returns true exactly when this
 * caller must ring the consumer's doorbell: the consumer announced a sleep
 * and no other producer has taken the duty for it. Spurious bells are
 * harmless; a false return never loses a wake-up (mpsc.c, "Sleep/wake"). */
bool bds__mpsc_should_ring(bds_mpsc *q);
/* After a push that found the ring full (took fewer than asked): sets bit
 * producer_id (< 64) in the want_space mask, then looks at the ring again.
 * Returns true when room appeared meanwhile: push again now (the bit may
 * still bring a spurious bell). Returns false when the ring is still full:
 * the consumer will see the bit after its next drain and ring this producer.
 * (The second look closes the race "the consumer drained and took an empty
 * mask just before the bit was set", after which nobody would ring.) */
bool bds__mpsc_want_space(bds_mpsc *q, uint32_t producer_id);

/* ---- the consumer (the owning shard only) ------------------------------------ */

/* Takes up to out_max items in claim order into out. Stops early at a slot
 * that is claimed but not yet published (a producer between its CAS and its
 * store): it never waits; that producer rings if the consumer sleeps. */
uint32_t bds__mpsc_pop_burst(bds_mpsc *q, void **out, uint32_t out_max);
/* True when nothing is published at the consumer's head. */
bool bds__mpsc_empty(const bds_mpsc *q);
/* After a drain: returns the producers that found the ring full (bit i =
 * producer i) and clears the mask; the caller rings each of them. */
uint64_t bds__mpsc_take_want_space(bds_mpsc *q);
/* Before blocking on the doorbell: announces the sleep (sleeping = 1 with a
 * fresh bell), then looks at the head slot again. Returns true when the
 * caller may block now: a push from here on rings. Returns false when an
 * item is already there: do not block (sleeping is cleared already). */
bool bds__mpsc_prepare_sleep(bds_mpsc *q);
/* After every prepare_sleep (after the block, or at once when it returned
 * false; a second call is harmless): clears sleeping and bell_rung. */
void bds__mpsc_woken(bds_mpsc *q);

/* ---- diagnostics (any thread) ------------------------------------------------- */

/* One line to f: items claimed and not yet released, published at the head,
 * the sleep latch, the want_space mask. Relaxed loads (the consumer-private
 * _head included): for a stall report, never for decisions. */
void bds__mpsc_dump(const bds_mpsc *q, FILE *f);
/* Items published and not yet popped, as of recent loads (relaxed: a gauge
 * for metrics; it may count a burst the consumer is popping right now). */
uint64_t bds__mpsc_depth(const bds_mpsc *q);

#endif
