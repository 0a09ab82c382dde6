/* test_mem.c — the pools of core/mem.c: chunked pools keep what they grew;
 * trimmed pools give a burst's memory back past their free_max. */
#include <criterion/criterion.h>

#include "mem.h"

#define BURST 1000

Test(mem, chunked_pool_keeps_every_object_it_grew) {
    bds__pool p;
    bds__pool_init(&p, 100);
    void *o[BURST];
    for (int i = 0; i < BURST; i++) cr_assert_not_null(o[i] = bds__pool_get(&p));
    for (int i = 0; i < BURST; i++) bds__pool_put(&p, o[i]);
    cr_assert_geq(p.free_n, BURST);
    uint64_t allocs = bds__alloc_count();
    for (int i = 0; i < BURST; i++) o[i] = bds__pool_get(&p);
    cr_assert_eq(bds__alloc_count(), allocs, "a second burst reuses the first one's objects");
    for (int i = 0; i < BURST; i++) bds__pool_put(&p, o[i]);
    bds__pool_deinit(&p);
}

/* Issue 8: pools give memory back after a burst. */
Test(mem, trimmed_pool_keeps_at_most_free_max_after_a_burst) {
    bds__pool p;
    bds__pool_init_trimmed(&p, 4096, 16);
    void *o[BURST];
    for (int i = 0; i < BURST; i++) {
        cr_assert_not_null(o[i] = bds__pool_get(&p));
        memset(o[i], 0xab, 4096); /* the whole object is ours */
    }
    cr_assert_eq(p.live, BURST);
    for (int i = 0; i < BURST; i++) bds__pool_put(&p, o[i]);
    cr_assert_eq(p.live, 0);
    cr_assert_eq(p.free_n, 16, "the burst's memory went back past free_max");
    uint64_t allocs = bds__alloc_count();
    for (int i = 0; i < 16; i++) {
        o[i] = bds__pool_get(&p);
        for (int b = 0; b < 4096; b++) cr_assert_eq(((unsigned char *)o[i])[b], 0, "zeroed");
    }
    cr_assert_eq(bds__alloc_count(), allocs, "the steady state still allocates nothing");
    for (int i = 0; i < 16; i++) bds__pool_put(&p, o[i]);
    bds__pool_deinit(&p); /* frees the 16 kept: LeakSanitizer checks */
}
