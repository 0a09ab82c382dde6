/* mpsc.c — see mpsc.h for the design and the sleep/wake argument.
 *
 * Invariants: tail - head_pub <= capacity (a producer claims only positions
 * whose slot the consumer has emptied and published as such); slot
 * (p & mask) holds position p's item between its publish and its pop; the
 * consumer alone writes head, head_pub and NULLs into slots. */
#include <string.h>

#include "mpsc.h"

size_t bds__mpsc_footprint(uint32_t capacity) { return sizeof(_Atomic(void *)) * capacity; }

void bds__mpsc_init(bds_mpsc *q, void *mem, uint32_t capacity) {
    BDS_ASSERT(capacity >= 2 && (capacity & (capacity - 1)) == 0);
    BDS_ASSERT(((uintptr_t)mem & (BDS_CACHELINE - 1)) == 0);
    memset(q, 0, sizeof *q);
    q->mask = capacity - 1;
    q->slots = mem;
    for (uint32_t i = 0; i < capacity; i++) atomic_init(&q->slots[i], NULL);
    atomic_init(&q->tail, 0);
    atomic_init(&q->head_pub, 0);
    atomic_init(&q->pushes, 0);
    atomic_init(&q->sleeping, 0);
    atomic_init(&q->bell_rung, 0);
    atomic_init(&q->want_space, 0);
}

void bds__mpsc_deinit(bds_mpsc *q) {
    BDS_ASSERT(q->head == atomic_load_explicit(&q->tail, memory_order_relaxed));
    q->slots = NULL;
}

uint32_t bds__mpsc_push_burst(bds_mpsc *q, void *const *items, uint32_t n) {
    uint64_t cap = q->mask + 1;
    /* relaxed: the CAS below validates the value */
    uint64_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t k;
    for (;;) {
        /* acquire: pairs with the consumer's seq_cst store of head_pub, so the
         * NULLs it wrote into the slots we are about to reuse happen before our writes */
        uint64_t head = atomic_load_explicit(&q->head_pub, memory_order_acquire);
        uint64_t room = cap - (pos - head);
        k = room < n ? (uint32_t)room : n;
        if (k == 0) return 0;
        /* relaxed: claiming positions orders nothing; the slot stores publish */
        if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + k, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            break;
        }
    }
    for (uint32_t i = 0; i < k; i++) {
        BDS_ASSERT(items[i] != NULL);
        /* release: publishes *items[i] to the consumer's acquire load in pop_burst */
        atomic_store_explicit(&q->slots[(pos + i) & q->mask], items[i], memory_order_release);
    }
    /* seq_cst: the push counter and `sleeping` form the store-buffering pair
     * with prepare_sleep (see mpsc.h); also releases the items above */
    atomic_fetch_add_explicit(&q->pushes, k, memory_order_seq_cst);
    return k;
}

bool bds__mpsc_push(bds_mpsc *q, void *item) { return bds__mpsc_push_burst(q, &item, 1) == 1; }

uint32_t bds__mpsc_pop_burst(bds_mpsc *q, void **out, uint32_t out_max) {
    /* acquire (seq_cst): what the push counter says was published is visible below */
    q->seen_pushes = atomic_load_explicit(&q->pushes, memory_order_seq_cst);
    uint32_t n = 0;
    while (n < out_max) {
        _Atomic(void *) *slot = &q->slots[q->head & q->mask];
        /* acquire: pairs with the producer's release store of this slot */
        void *item = atomic_load_explicit(slot, memory_order_acquire);
        if (!item) break; /* empty, or claimed and not yet published: never wait */
        /* relaxed: ordered before the producer's reuse by head_pub below */
        atomic_store_explicit(slot, NULL, memory_order_relaxed);
        out[n++] = item;
        q->head++;
    }
    if (n) {
        /* seq_cst: releases the emptied slots to producers (their acquire of
         * head_pub) and pairs with want_space in the store-buffering argument */
        atomic_store_explicit(&q->head_pub, q->head, memory_order_seq_cst);
    }
    return n;
}

bool bds__mpsc_empty(const bds_mpsc *q) {
    /* acquire: pairs with the producer's release store */
    return atomic_load_explicit(&q->slots[q->head & q->mask], memory_order_acquire) == NULL;
}

bool bds__mpsc_prepare_sleep(bds_mpsc *q) {
    /* seq_cst: reset before announcing sleep, so a bell won after this point
     * is rung for this sleep (a stale winner only causes a spurious wake) */
    atomic_store_explicit(&q->bell_rung, 0, memory_order_seq_cst);
    /* seq_cst: the consumer's half of the store-buffering pair */
    atomic_exchange_explicit(&q->sleeping, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&q->pushes, memory_order_seq_cst) != q->seen_pushes ||
        !bds__mpsc_empty(q)) {
        atomic_store_explicit(&q->sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

void bds__mpsc_woken(bds_mpsc *q) {
    /* relaxed: a producer that still sees 1 rings spuriously, which is harmless */
    atomic_store_explicit(&q->sleeping, 0, memory_order_relaxed);
}

bool bds__mpsc_should_ring(bds_mpsc *q) {
    /* seq_cst: the producer's half of the store-buffering pair (after the
     * seq_cst push counter bump in push_burst) */
    if (!atomic_load_explicit(&q->sleeping, memory_order_seq_cst)) return false;
    /* seq_cst: exactly one producer per sleep wins the bell */
    return atomic_exchange_explicit(&q->bell_rung, 1, memory_order_seq_cst) == 0;
}

bool bds__mpsc_want_space(bds_mpsc *q, uint32_t producer_id) {
    BDS_ASSERT(producer_id < 64);
    /* seq_cst: paired with the consumer's seq_cst head_pub store then take_want_space */
    atomic_fetch_or_explicit(&q->want_space, 1ULL << producer_id, memory_order_seq_cst);
    uint64_t cap = q->mask + 1;
    uint64_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    return tail - atomic_load_explicit(&q->head_pub, memory_order_seq_cst) < cap;
}

uint64_t bds__mpsc_take_want_space(bds_mpsc *q) {
    /* seq_cst: after the seq_cst head_pub store in pop_burst, the consumer's
     * half of the store-buffering pair with want_space(); a plain load on
     * x86, so the common case (nobody waiting) costs no RMW */
    if (!atomic_load_explicit(&q->want_space, memory_order_seq_cst)) return 0;
    return atomic_exchange_explicit(&q->want_space, 0, memory_order_seq_cst);
}
