/* timer_heap.h — one 4-ary min-heap of deadlines per shard (internal).
 *
 * Timers are intrusive: the owner embeds a bds_timer and the heap stores
 * pointers, so arming allocates nothing once the heap array has grown to its
 * working size. Cancel is O(log n) through the timer's stored index. Time is
 * whatever clock the owner passes (CLOCK_MONOTONIC ns in io/, a fake clock in
 * the tests): the heap never reads a clock itself. Shard: owner only. */
#ifndef BDS_TIMER_HEAP_H
#define BDS_TIMER_HEAP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct bds_timer bds_timer;
typedef void (*bds_on_timer_fn)(bds_timer *timer, void *ctx);

struct bds_timer {
    uint64_t deadline_ns;
    uint64_t _order;   /* arming order: equal deadlines fire first-armed first */
    uint32_t _idx;     /* slot in the heap, BDS_TIMER_IDLE when not armed */
    bds_on_timer_fn fn;
    void *ctx;
};
#define BDS_TIMER_IDLE UINT32_MAX

typedef struct bds_timer_heap {
    bds_timer **_v;
    uint32_t _n, _cap;
    uint64_t _armed; /* arms so far: the next timer's _order */
} bds_timer_heap;

void bds__timer_init(bds_timer *timer, bds_on_timer_fn fn, void *ctx);
static inline bool bds__timer_armed(const bds_timer *timer) { return timer->_idx != BDS_TIMER_IDLE; }

/* Returns 0, or -1 when the initial array cannot be allocated. */
int bds__timer_heap_init(bds_timer_heap *heap, uint32_t capacity_hint);
/* Asserts that no timer is armed. */
void bds__timer_heap_deinit(bds_timer_heap *heap);
/* Arms (or moves) timer to fire at deadline_ns. Returns 0, or -1 when the heap
 * had to grow and could not (the timer is then left unarmed). */
int bds__timer_arm(bds_timer_heap *heap, bds_timer *timer, uint64_t deadline_ns);
/* Disarms timer; a no-op when it is not armed. */
void bds__timer_cancel(bds_timer_heap *heap, bds_timer *timer);
/* The earliest deadline, or UINT64_MAX when nothing is armed. */
uint64_t bds__timer_next(const bds_timer_heap *heap);
/* Fires, in deadline order (ties in arming order), every timer due at now_ns, up to budget of them.
 * Each is disarmed before its callback runs, so the callback may re-arm it or
 * arm/cancel others. Returns how many fired. */
uint32_t bds__timer_run(bds_timer_heap *heap, uint64_t now_ns, uint32_t budget);
static inline uint32_t bds__timer_count(const bds_timer_heap *heap) { return heap->_n; }

#endif
