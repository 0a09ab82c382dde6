/* test_timer_heap.c — the 4-ary heap against a brute-force reference under
 * random arm/re-arm/cancel/run, and callbacks that re-arm themselves. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "timer_heap.h"

#define N 200

static uint32_t fired_order[100000];
static uint32_t n_fired;

static void on_fire(bds_timer *t, void *ctx) {
    (void)t;
    fired_order[n_fired++] = (uint32_t)(uintptr_t)ctx;
}

Test(timer_heap, random_operations_match_a_reference) {
    bds_timer_heap h;
    cr_assert_eq(bds__timer_heap_init(&h, 4), 0); /* tiny: forces growth */
    bds_timer t[N];
    uint64_t ref[N]; /* 0 = not armed */
    for (int i = 0; i < N; i++) {
        bds__timer_init(&t[i], on_fire, (void *)(uintptr_t)i);
        ref[i] = 0;
    }
    srand(42);
    uint64_t now = 1;
    for (int step = 0; step < 20000; step++) {
        int i = rand() % N;
        int op = rand() % 4;
        if (op <= 1) {
            uint64_t d = now + 1 + (uint64_t)(rand() % 1000);
            cr_assert_eq(bds__timer_arm(&h, &t[i], d), 0);
            ref[i] = d;
        } else if (op == 2) {
            bds__timer_cancel(&h, &t[i]);
            ref[i] = 0;
        } else {
            now += (uint64_t)(rand() % 50);
            n_fired = 0;
            bds__timer_run(&h, now, UINT32_MAX);
            uint64_t last = 0;
            for (uint32_t k = 0; k < n_fired; k++) {
                uint32_t id = fired_order[k];
                cr_assert_neq(ref[id], 0, "fired a timer that was not armed");
                cr_assert_leq(ref[id], now, "fired early");
                cr_assert_geq(ref[id], last, "fired out of deadline order");
                last = ref[id];
                ref[id] = 0;
            }
            for (int k = 0; k < N; k++) cr_assert(ref[k] == 0 || ref[k] > now, "due timer %d not fired", k);
        }
        uint64_t min = UINT64_MAX;
        uint32_t armed = 0;
        for (int k = 0; k < N; k++) {
            if (ref[k]) {
                armed++;
                if (ref[k] < min) min = ref[k];
            }
            cr_assert_eq(bds__timer_armed(&t[k]), ref[k] != 0);
        }
        cr_assert_eq(bds__timer_next(&h), min);
        cr_assert_eq(bds__timer_count(&h), armed);
    }
    for (int i = 0; i < N; i++) bds__timer_cancel(&h, &t[i]);
    bds__timer_heap_deinit(&h);
}

static bds_timer_heap *g_heap;
static int rearms;

static void rearm_self(bds_timer *t, void *ctx) {
    (void)ctx;
    if (++rearms < 5) bds__timer_arm(g_heap, t, t->deadline_ns + 10);
}

Test(timer_heap, callback_may_rearm_itself_and_budget_bounds_a_run) {
    bds_timer_heap h;
    g_heap = &h;
    bds__timer_heap_init(&h, 8);
    bds_timer t;
    bds__timer_init(&t, rearm_self, NULL);
    bds__timer_arm(&h, &t, 10);
    cr_assert_eq(bds__timer_run(&h, 100, 2), 2, "budget stops the run");
    cr_assert_eq(bds__timer_run(&h, 100, 100), 3);
    cr_assert_eq(rearms, 5);
    cr_assert_not(bds__timer_armed(&t));
    cr_assert_eq(bds__timer_next(&h), UINT64_MAX);
    bds__timer_heap_deinit(&h);
}
