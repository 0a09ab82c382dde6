/* mpsc.c — a bounded, lock-free ring: many producers on any thread, one
 * consumer (the shard that owns it). It is every shard's inbox (docs/ARCHITECTURE.md).
 *
 * Design. Slots hold one non-NULL pointer each; NULL means "empty, or claimed
 * and not yet published". A producer claims k contiguous positions with ONE
 * CAS on _tail, after checking room against the consumer's published head
 * (through _head_cache, a copy the producers share so that they seldom touch
 * the consumer's line), then stores each item with release. The consumer reads
 * slots in position order with acquire: a NULL at its head ends the burst (a
 * producer sits between its CAS and its store: the consumer never waits for
 * it), it NULLs what it took and publishes _head_pub once per burst. A
 * preempted producer delays only the consumer at its own slot, never other
 * producers (rte_ring's MP mode makes later producers wait for the earlier
 * one's tail update; Vyukov's ring makes the consumer spin on the slot). DESIGN
 * §5 says why one MPSC inbox per shard rather than SPSC rings per pair.
 *
 * Sleep/wake (docs/ARCHITECTURE.md). The consumer announces a sleep with a seq_cst
 * exchange of _sleeping, then a seq_cst load of _pushes, then looks at its
 * head slot. A producer, after publishing, bumps _pushes (seq_cst RMW), then
 * reads _sleeping (seq_cst). Store buffering is forbidden in the single total
 * order S of seq_cst operations, so at least one side sees the other:
 *   - the producer's bump precedes the consumer's load of _pushes in S: the
 *     load reads that bump or a later one (a release sequence of RMWs), so the
 *     slot store happens before the head-slot check, which sees the item (or
 *     the producer of an earlier position has not published yet, and that one
 *     makes the same argument for itself): the consumer does not block;
 *   - otherwise the exchange precedes the producer's read of _sleeping, which
 *     sees 1 (or the consumer is awake again) and the producer rings unless
 *     another producer already won _bell_rung for this sleep; that one rings.
 * _bell_rung is reset at every prepare_sleep, before _sleeping is set, so each
 * announced sleep gets exactly one bell, also after an aborted sleep attempt
 * (whose bell may have been reaped while awake). Spurious bells are harmless.
 * The _pushes value is not used: the load exists for its place in S and its
 * acquire. Bells carry no happens-before (MSG_RING, eventfd): all data moves
 * through these atomics, the bell only wakes. No standalone fences anywhere
 * (TSan does not model them). tests/model/mpsc.pml checks this protocol, and
 * the want_space one, with spin under sequential consistency.
 *
 * Full ring. A producer never blocks (two shards waiting on each other's full
 * inboxes would deadlock). It sets its bit in _want_space (seq_cst RMW) and
 * reads _head_pub again (seq_cst); the consumer stores _head_pub (seq_cst)
 * after each burst and then reads _want_space (seq_cst): the same store-
 * buffering argument, so either the producer sees the room or the consumer
 * sees the bit and rings it.
 *
 * Invariants. _head_pub <= _head <= _tail and _tail - _head_pub <= capacity: a
 * producer claims only positions whose slot the consumer emptied and published
 * as empty. The slot of position p holds p's item from its publish until its
 * pop, and NULL otherwise. _head_cache <= _head_pub (it is only ever a copy of
 * an older value). Only the consumer writes _head, _head_pub, _sleeping and
 * NULLs into slots; only producers write _tail, _pushes, _head_cache and
 * items into slots.
 *
 * Ownership. The struct and the slot memory belong to the caller (footprint +
 * init; no allocation here). An item's pointee belongs to its producer until
 * a push takes it, then to the consumer; the ring never dereferences items.
 *
 * Elsewhere: the doorbells themselves (MSG_RING, eventfd) and the producer
 * ids live in io/ (shard.c, shard_pipeline.c). */
#include <string.h>

#include "mpsc.h"

/* ---- lifetime ------------------------------------------------------------- */

size_t bds__mpsc_footprint(uint32_t capacity) {
    BDS_ASSERT(capacity >= 2);
    BDS_ASSERT((capacity & (capacity - 1)) == 0);
    return sizeof(_Atomic(void *)) * capacity;
}

void bds__mpsc_init(bds_mpsc *q, void *mem, uint32_t capacity) {
    BDS_ASSERT(capacity >= 2);
    BDS_ASSERT((capacity & (capacity - 1)) == 0);
    BDS_ASSERT(mem != NULL);
    BDS_ASSERT(((uintptr_t)mem & (BDS_CACHELINE - 1)) == 0);
    memset(q, 0, sizeof *q);
    q->_mask = capacity - 1;
    q->_slots = mem;
    for (uint32_t i = 0; i < capacity; i++) atomic_init(&q->_slots[i], NULL);
    atomic_init(&q->_tail, 0);
    atomic_init(&q->_pushes, 0);
    atomic_init(&q->_head_cache, 0);
    atomic_init(&q->_head_pub, 0);
    atomic_init(&q->_sleeping, 0);
    atomic_init(&q->_bell_rung, 0);
    atomic_init(&q->_want_space, 0);
}

void bds__mpsc_deinit(bds_mpsc *q) {
    /* relaxed: the caller joined every producer (or synchronised with them) */
    BDS_ASSERT(q->_head == atomic_load_explicit(&q->_tail, memory_order_relaxed));
    BDS_ASSERT(atomic_load_explicit(&q->_slots[q->_head & q->_mask], memory_order_relaxed) == NULL);
    q->_slots = NULL;
}

/* ---- producers ------------------------------------------------------------ */

uint32_t bds__mpsc_push_burst(bds_mpsc *q, void *const *items, uint32_t n) {
    BDS_ASSERT(items != NULL || n == 0);
    const uint64_t cap = q->_mask + 1;
    /* relaxed: only a starting guess; the CAS below validates it */
    uint64_t pos = atomic_load_explicit(&q->_tail, memory_order_relaxed);
    /* acquire: pairs with the release store of _head_cache below, which
     * carries the consumer's NULL stores (see the acquire of _head_pub) */
    uint64_t head = atomic_load_explicit(&q->_head_cache, memory_order_acquire);
    bool fresh = false; /* head was read from _head_pub after pos was read */
    uint32_t k;
    for (;;) {
        if ((int64_t)(pos - head) < 0) { /* pos is older than head: read it again */
            pos = atomic_load_explicit(&q->_tail, memory_order_relaxed);
            fresh = false;
            continue;
        }
        uint64_t room = pos - head < cap ? cap - (pos - head) : 0;
        if (room < n && !fresh) {
            /* acquire: pairs with the consumer's seq_cst (release) store of
             * _head_pub, so its NULLs in the slots we may reuse happen before
             * our stores into them */
            head = atomic_load_explicit(&q->_head_pub, memory_order_acquire);
            /* release: hands the same guarantee to the acquire load above in
             * other producers' pushes (it only ever stores an older _head_pub) */
            atomic_store_explicit(&q->_head_cache, head, memory_order_release);
            fresh = true;
            continue;
        }
        k = room < n ? (uint32_t)room : n;
        if (k == 0) return 0;
        /* relaxed: claiming orders nothing; the slot stores publish, and the
         * NULLs were acquired above. On failure pos is reloaded. */
        if (atomic_compare_exchange_weak_explicit(&q->_tail, &pos, pos + k, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            break;
        }
        fresh = false;
    }
    for (uint32_t i = 0; i < k; i++) {
        BDS_ASSERT(items[i] != NULL);
        /* release: publishes *items[i] to the consumer's acquire load of the
         * slot in pop_burst / empty */
        atomic_store_explicit(&q->_slots[(pos + i) & q->_mask], items[i], memory_order_release);
    }
    /* seq_cst: the producers' write in the sleep handshake, before the read of
     * _sleeping in should_ring; pairs with the seq_cst load of _pushes in
     * prepare_sleep (and, as a release RMW, carries the slot stores to it) */
    atomic_fetch_add_explicit(&q->_pushes, k, memory_order_seq_cst);
    return k;
}

bool bds__mpsc_push(bds_mpsc *q, void *item) {
    BDS_ASSERT(item != NULL);
    return bds__mpsc_push_burst(q, &item, 1) == 1;
}

bool bds__mpsc_should_ring(bds_mpsc *q) {
    /* seq_cst: the producers' read in the sleep handshake, after the seq_cst
     * bump of _pushes; pairs with the seq_cst exchange in prepare_sleep */
    if (!atomic_load_explicit(&q->_sleeping, memory_order_seq_cst)) return false;
    /* acq_rel: exactly one producer per announced sleep wins; the reset in
     * prepare_sleep happens before this (we read _sleeping = 1 from the
     * release exchange that follows the reset), so we see that reset or a
     * later winner */
    return atomic_exchange_explicit(&q->_bell_rung, 1, memory_order_acq_rel) == 0;
}

bool bds__mpsc_want_space(bds_mpsc *q, uint32_t producer_id) {
    BDS_ASSERT(producer_id < 64);
    /* seq_cst: the producer's write in the full-ring handshake; pairs with the
     * seq_cst load of _want_space in take_want_space */
    atomic_fetch_or_explicit(&q->_want_space, UINT64_C(1) << producer_id, memory_order_seq_cst);
    /* relaxed: any recent tail will do; a newer one only means less room */
    uint64_t tail = atomic_load_explicit(&q->_tail, memory_order_relaxed);
    /* seq_cst: the producer's read in the handshake; pairs with the seq_cst
     * store of _head_pub in pop_burst */
    uint64_t head = atomic_load_explicit(&q->_head_pub, memory_order_seq_cst);
    return tail - head < q->_mask + 1;
}

/* ---- the consumer ---------------------------------------------------------- */

uint32_t bds__mpsc_pop_burst(bds_mpsc *q, void **out, uint32_t out_max) {
    BDS_ASSERT(out != NULL || out_max == 0);
    uint32_t n = 0;
    while (n < out_max) {
        _Atomic(void *) *slot = &q->_slots[q->_head & q->_mask];
        /* acquire: pairs with the producer's release store of this slot */
        void *item = atomic_load_explicit(slot, memory_order_acquire);
        if (!item) break; /* empty, or claimed and not yet published: never wait */
        /* relaxed: ordered before the slot's reuse by the store of _head_pub */
        atomic_store_explicit(slot, NULL, memory_order_relaxed);
        out[n++] = item;
        q->_head++;
    }
    if (n) {
        /* seq_cst: as a release, hands the emptied slots to the producers'
         * acquire of _head_pub; as seq_cst, the consumer's write in the
         * full-ring handshake, before take_want_space reads the mask */
        atomic_store_explicit(&q->_head_pub, q->_head, memory_order_seq_cst);
    }
    return n;
}

bool bds__mpsc_empty(const bds_mpsc *q) {
    /* acquire: pairs with the producer's release store of the slot */
    return atomic_load_explicit(&q->_slots[q->_head & q->_mask], memory_order_acquire) == NULL;
}

uint64_t bds__mpsc_take_want_space(bds_mpsc *q) {
    /* seq_cst: the consumer's read in the full-ring handshake, after its
     * seq_cst store of _head_pub; pairs with the fetch_or in want_space. A
     * plain load first, so the common case (nobody waiting) costs no RMW. */
    if (!atomic_load_explicit(&q->_want_space, memory_order_seq_cst)) return 0;
    /* seq_cst: takes exactly the bits set so far; a later bit stays for the next drain */
    return atomic_exchange_explicit(&q->_want_space, 0, memory_order_seq_cst);
}

bool bds__mpsc_prepare_sleep(bds_mpsc *q) {
    /* relaxed: a fresh bell for this sleep. Ordered before any producer's
     * exchange of _bell_rung by the release half of the exchange below (a
     * producer reaches its exchange only after reading _sleeping = 1 from it). */
    atomic_store_explicit(&q->_bell_rung, 0, memory_order_relaxed);
    /* seq_cst: the consumer's write in the sleep handshake; pairs with the
     * seq_cst load of _sleeping in should_ring */
    atomic_exchange_explicit(&q->_sleeping, 1, memory_order_seq_cst);
    /* seq_cst: the consumer's read in the handshake, after the exchange; pairs
     * with the seq_cst bump in push_burst (the value is not needed: see the
     * file-top comment) */
    (void)atomic_load_explicit(&q->_pushes, memory_order_seq_cst);
    if (!bds__mpsc_empty(q)) {
        /* relaxed: a producer that still sees 1 rings once more, harmlessly */
        atomic_store_explicit(&q->_sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

void bds__mpsc_woken(bds_mpsc *q) {
    /* relaxed: a producer that still sees sleeping = 1 rings spuriously, which
     * is harmless; the next prepare_sleep resets both before announcing */
    atomic_store_explicit(&q->_sleeping, 0, memory_order_relaxed);
    atomic_store_explicit(&q->_bell_rung, 0, memory_order_relaxed);
}

/* ---- diagnostics ------------------------------------------------------------ */

uint64_t bds__mpsc_depth(const bds_mpsc *q) {
    /* A producer bumps _pushes after publishing, so the consumer may have
     * popped (and published _head_pub past) an item not counted yet: clamp. */
    uint64_t head_pub = atomic_load_explicit(&q->_head_pub, memory_order_relaxed);
    uint64_t pushes = atomic_load_explicit(&((bds_mpsc *)q)->_pushes, memory_order_relaxed);
    return pushes > head_pub ? pushes - head_pub : 0;
}

void bds__mpsc_dump(const bds_mpsc *q, FILE *f) {
    /* relaxed everywhere: a snapshot for a human, taken while the owner may run */
    uint64_t tail = atomic_load_explicit(&q->_tail, memory_order_relaxed);
    uint64_t head_pub = atomic_load_explicit(&q->_head_pub, memory_order_relaxed);
    uint64_t head = __atomic_load_n(&q->_head, __ATOMIC_RELAXED);
    void *at_head = atomic_load_explicit(&q->_slots[head & q->_mask], memory_order_relaxed);
    fprintf(f,
            "inbox: depth %llu (tail %llu, head %llu, head_pub %llu), head slot %s, pushes %llu, "
            "sleeping %u, bell_rung %u, want_space %#llx\n",
            (unsigned long long)(tail - head_pub), (unsigned long long)tail, (unsigned long long)head,
            (unsigned long long)head_pub, at_head ? "published" : "empty",
            (unsigned long long)atomic_load_explicit(&q->_pushes, memory_order_relaxed),
            (unsigned)atomic_load_explicit(&q->_sleeping, memory_order_relaxed),
            (unsigned)atomic_load_explicit(&q->_bell_rung, memory_order_relaxed),
            (unsigned long long)atomic_load_explicit(&q->_want_space, memory_order_relaxed));
}
