/* timer_heap.c — a 4-ary min-heap keyed by deadline_ns.
 *
 * A 4-ary heap halves the depth of a binary one and keeps a node's children in
 * one cache line of pointers; sift-down compares four children, sift-up one
 * parent. Invariant: key(v[i]) >= key(v[(i-1)/4]) and v[i]->_idx == i for
 * every i < n, where key = (deadline_ns, _order): the arming order breaks ties
 * so equal deadlines fire first-armed first, which keeps runs reproducible. The array is the heap's; the timers are
 * their owners'. */
#include <stdlib.h>

#include "base.h"
#include "timer_heap.h"

#define ARITY 4u

void bds__timer_init(bds_timer *timer, bds_on_timer_fn fn, void *ctx) {
    timer->deadline_ns = 0;
    timer->_idx = BDS_TIMER_IDLE;
    timer->fn = fn;
    timer->ctx = ctx;
}

int bds__timer_heap_init(bds_timer_heap *heap, uint32_t capacity_hint) {
    heap->_n = 0;
    heap->_armed = 0;
    heap->_cap = capacity_hint ? capacity_hint : 64;
    heap->_v = malloc(sizeof(*heap->_v) * heap->_cap);
    return heap->_v ? 0 : -1;
}

void bds__timer_heap_deinit(bds_timer_heap *heap) {
    BDS_ASSERT(heap->_n == 0);
    free(heap->_v);
    heap->_v = NULL;
    heap->_cap = 0;
}

static bool heap_before(const bds_timer *a, const bds_timer *b) {
    return a->deadline_ns < b->deadline_ns || (a->deadline_ns == b->deadline_ns && a->_order < b->_order);
}

static void heap_place(bds_timer_heap *heap, uint32_t i, bds_timer *t) {
    heap->_v[i] = t;
    t->_idx = i;
}

static void heap_sift_up(bds_timer_heap *heap, uint32_t i) {
    bds_timer *t = heap->_v[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / ARITY;
        if (!heap_before(t, heap->_v[parent])) break;
        heap_place(heap, i, heap->_v[parent]);
        i = parent;
    }
    heap_place(heap, i, t);
}

static void heap_sift_down(bds_timer_heap *heap, uint32_t i) {
    bds_timer *t = heap->_v[i];
    for (;;) {
        uint32_t first = i * ARITY + 1, best = i;
        const bds_timer *best_t = t;
        for (uint32_t c = first; c < first + ARITY && c < heap->_n; c++) {
            if (heap_before(heap->_v[c], best_t)) {
                best = c;
                best_t = heap->_v[c];
            }
        }
        if (best == i) break;
        heap_place(heap, i, heap->_v[best]);
        i = best;
    }
    heap_place(heap, i, t);
}

static void heap_remove_at(bds_timer_heap *heap, uint32_t i) {
    BDS_ASSERT(i < heap->_n);
    bds_timer *gone = heap->_v[i];
    gone->_idx = BDS_TIMER_IDLE;
    heap->_n--;
    if (i == heap->_n) return;
    heap_place(heap, i, heap->_v[heap->_n]);
    if (i > 0 && heap_before(heap->_v[i], heap->_v[(i - 1) / ARITY])) {
        heap_sift_up(heap, i);
    } else {
        heap_sift_down(heap, i);
    }
}

int bds__timer_arm(bds_timer_heap *heap, bds_timer *timer, uint64_t deadline_ns) {
    if (bds__timer_armed(timer)) heap_remove_at(heap, timer->_idx);
    if (heap->_n == heap->_cap) {
        uint32_t cap = heap->_cap * 2;
        bds_timer **v = realloc(heap->_v, sizeof(*v) * cap);
        if (!v) return -1;
        heap->_v = v;
        heap->_cap = cap;
    }
    timer->deadline_ns = deadline_ns;
    timer->_order = heap->_armed++;
    heap_place(heap, heap->_n++, timer);
    heap_sift_up(heap, heap->_n - 1);
    return 0;
}

void bds__timer_cancel(bds_timer_heap *heap, bds_timer *timer) {
    if (!bds__timer_armed(timer)) return;
    BDS_ASSERT(timer->_idx < heap->_n && heap->_v[timer->_idx] == timer);
    heap_remove_at(heap, timer->_idx);
}

uint64_t bds__timer_next(const bds_timer_heap *heap) {
    return heap->_n ? heap->_v[0]->deadline_ns : UINT64_MAX;
}

uint32_t bds__timer_run(bds_timer_heap *heap, uint64_t now_ns, uint32_t budget) {
    uint32_t fired = 0;
    while (fired < budget && heap->_n && heap->_v[0]->deadline_ns <= now_ns) {
        bds_timer *t = heap->_v[0];
        heap_remove_at(heap, 0);
        fired++;
        t->fn(t, t->ctx);
    }
    return fired;
}
