/* test_mpsc.c — the MPSC inbox ring: single-thread semantics, multi-producer
 * stress on both CPUs and pinned to one (preemption between claim and
 * publish), the doorbell latch with a consumer that blocks with no timeout
 * (the test's timeout is the lost-wake-up detector), and want_space.
 * BDS_TEST_TSAN: this file also runs under ThreadSanitizer. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mpsc.h"

#ifdef __SANITIZE_THREAD__
#define STRESS_ITEMS 100000u
#define BELL_ROUNDS 2000u
#else
#define STRESS_ITEMS 1000000u
#define BELL_ROUNDS 20000u
#endif

static bds_mpsc *ring_new(uint32_t cap) {
    bds_mpsc *q = aligned_alloc(BDS_CACHELINE, sizeof *q);
    void *mem = aligned_alloc(BDS_CACHELINE, bds__mpsc_footprint(cap) < 64 ? 64 : bds__mpsc_footprint(cap));
    bds__mpsc_init(q, mem, cap);
    return q;
}

static void ring_free(bds_mpsc *q) {
    void *mem = (void *)q->slots;
    bds__mpsc_deinit(q);
    free(mem);
    free(q);
}

#define TAG(p, i) ((void *)(uintptr_t)((((uint64_t)(p) + 1) << 40) | ((uint64_t)(i) + 1)))
#define TAG_P(x) ((uint32_t)(((uintptr_t)(x) >> 40) - 1))
#define TAG_I(x) ((uint64_t)(((uintptr_t)(x) & ((1ULL << 40) - 1)) - 1))

Test(mpsc, single_thread_is_fifo_and_reports_full_and_empty) {
    bds_mpsc *q = ring_new(4);
    void *out[8];
    cr_assert(bds__mpsc_empty(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 0);
    for (int i = 0; i < 4; i++) cr_assert(bds__mpsc_push(q, TAG(0, i)));
    cr_assert_not(bds__mpsc_push(q, TAG(0, 4)), "push when full returns false");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 2);
    cr_assert_eq(out[0], TAG(0, 0));
    cr_assert_eq(out[1], TAG(0, 1));
    cr_assert(bds__mpsc_push(q, TAG(0, 4)), "room after a pop");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 3);
    cr_assert_eq(out[2], TAG(0, 4));
    cr_assert(bds__mpsc_empty(q));
    ring_free(q);
}

Test(mpsc, wraps_around_many_laps) {
    bds_mpsc *q = ring_new(8);
    void *out[8];
    uint64_t next = 0, want = 0;
    for (int lap = 0; lap < 1000; lap++) {
        uint32_t k = 1 + (uint32_t)(lap % 7);
        for (uint32_t i = 0; i < k; i++) cr_assert(bds__mpsc_push(q, TAG(1, next++)));
        uint32_t n = bds__mpsc_pop_burst(q, out, 8);
        cr_assert_eq(n, k);
        for (uint32_t i = 0; i < n; i++) cr_assert_eq(TAG_I(out[i]), want++);
    }
    ring_free(q);
}

Test(mpsc, push_burst_takes_a_prefix_when_nearly_full) {
    bds_mpsc *q = ring_new(8);
    void *items[10], *out[10];
    for (int i = 0; i < 10; i++) items[i] = TAG(2, i);
    cr_assert_eq(bds__mpsc_push_burst(q, items, 5), 5);
    cr_assert_eq(bds__mpsc_push_burst(q, items + 5, 5), 3, "only the room left is taken");
    cr_assert_eq(bds__mpsc_push_burst(q, items + 8, 2), 0);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 10), 8);
    for (int i = 0; i < 8; i++) cr_assert_eq(out[i], items[i]);
    ring_free(q);
}

Test(mpsc, want_space_reports_the_waiting_producers_once) {
    bds_mpsc *q = ring_new(2);
    void *out[2];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert_not(bds__mpsc_want_space(q, 3), "still full");
    cr_assert_not(bds__mpsc_want_space(q, 5));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 1), 1);
    cr_assert_eq(bds__mpsc_take_want_space(q), (1ULL << 3) | (1ULL << 5));
    cr_assert_eq(bds__mpsc_take_want_space(q), 0, "taken once");
    cr_assert(bds__mpsc_want_space(q, 1), "room now: try again at once");
    bds__mpsc_take_want_space(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 1);
    ring_free(q);
}

Test(mpsc, latch_rings_once_per_sleep) {
    bds_mpsc *q = ring_new(8);
    void *out[8];
    cr_assert_not(bds__mpsc_should_ring(q), "an awake consumer needs no bell");
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_should_ring(q), "the first producer after sleep rings");
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert_not(bds__mpsc_should_ring(q), "one bell per sleep");
    bds__mpsc_woken(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 2);
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 2)));
    cr_assert(bds__mpsc_should_ring(q), "a new sleep gets a new bell");
    bds__mpsc_woken(q);
    cr_assert(bds__mpsc_push(q, TAG(0, 3)));
    cr_assert_not(bds__mpsc_prepare_sleep(q), "work since the last drain: stay awake");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 2);
    ring_free(q);
}

/* ---- multi-producer stress ---------------------------------------------------------- */

#define PRODUCERS 4

struct stress {
    bds_mpsc *q;
    uint32_t id;
    uint32_t items;
    int cpu; /* -1: any */
    int bell_fd;
    _Atomic uint64_t full_spins;
};

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *producer(void *arg) {
    struct stress *st = arg;
    pin(st->cpu);
    void *batch[16];
    uint32_t i = 0;
    while (i < st->items) {
        uint32_t k = 1 + (i % 16);
        if (k > st->items - i) k = st->items - i;
        for (uint32_t j = 0; j < k; j++) batch[j] = TAG(st->id, i + j);
        uint32_t took = bds__mpsc_push_burst(st->q, batch, k);
        if (took == 0) {
            atomic_fetch_add_explicit(&st->full_spins, 1, memory_order_relaxed);
            sched_yield();
        } else if (st->bell_fd >= 0 && bds__mpsc_should_ring(st->q)) {
            uint64_t one = 1;
            cr_assert_eq(write(st->bell_fd, &one, 8), 8);
        }
        i += took;
    }
    return NULL;
}

/* One consumer checks per-producer order, no loss, no duplicate. With bell_fd
 * it sleeps on the eventfd with no timeout whenever prepare_sleep allows. */
static void run_stress(int cpu, int bell_fd, uint32_t items) {
    bds_mpsc *q = ring_new(256);
    struct stress st[PRODUCERS];
    pthread_t t[PRODUCERS];
    pin(cpu);
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        st[p] = (struct stress){.q = q, .id = p, .items = items, .cpu = cpu, .bell_fd = bell_fd};
        pthread_create(&t[p], NULL, producer, &st[p]);
    }
    uint64_t next[PRODUCERS] = {0}, total = 0, sleeps = 0;
    void *out[64];
    while (total < (uint64_t)items * PRODUCERS) {
        uint32_t n = bds__mpsc_pop_burst(q, out, 64);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t p = TAG_P(out[i]);
            cr_assert_lt(p, PRODUCERS);
            cr_assert_eq(TAG_I(out[i]), next[p], "producer %u: got %lu, want %lu", p,
                         (unsigned long)TAG_I(out[i]), (unsigned long)next[p]);
            next[p]++;
        }
        total += n;
        if (n) continue;
        if (bell_fd >= 0 && bds__mpsc_prepare_sleep(q)) {
            uint64_t v;
            cr_assert_eq(read(bell_fd, &v, 8), 8); /* no timeout: a lost wake-up hangs here */
            bds__mpsc_woken(q);
            sleeps++;
        } else if (bell_fd < 0) {
            sched_yield();
        }
    }
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        pthread_join(t[p], NULL);
        cr_assert_eq(next[p], items, "every item of producer %u arrived once", p);
    }
    cr_assert(bds__mpsc_empty(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 64), 0, "no duplicate left behind");
    pin(-1);
    ring_free(q);
}

Test(mpsc, stress_four_producers_on_both_cpus, .timeout = 240) { run_stress(-1, -1, STRESS_ITEMS); }

Test(mpsc, stress_four_producers_pinned_to_one_cpu, .timeout = 240) { run_stress(0, -1, STRESS_ITEMS / 4); }

Test(mpsc, sleeping_consumer_never_misses_a_wakeup, .timeout = 240) {
    int fd = eventfd(0, 0);
    cr_assert_geq(fd, 0);
    run_stress(-1, fd, BELL_ROUNDS * 10);
    close(fd);
}

Test(mpsc, sleeping_consumer_pinned_never_misses_a_wakeup, .timeout = 240) {
    int fd = eventfd(0, 0);
    run_stress(0, fd, BELL_ROUNDS * 2);
    close(fd);
}

/* Ping-pong: each item is pushed only after the consumer went to sleep, so
 * every single item needs the bell (the tightest lost-wake-up window). */
struct pingpong {
    bds_mpsc *q;
    int bell_fd, ack_fd;
};

static void *pp_producer(void *arg) {
    struct pingpong *pp = arg;
    for (uint32_t i = 0; i < BELL_ROUNDS; i++) {
        cr_assert(bds__mpsc_push(pp->q, TAG(0, i)));
        if (bds__mpsc_should_ring(pp->q)) {
            uint64_t one = 1;
            cr_assert_eq(write(pp->bell_fd, &one, 8), 8);
        }
        uint64_t v;
        cr_assert_eq(read(pp->ack_fd, &v, 8), 8);
    }
    return NULL;
}

Test(mpsc, ping_pong_every_item_needs_the_bell, .timeout = 240) {
    struct pingpong pp = {.q = ring_new(4), .bell_fd = eventfd(0, 0), .ack_fd = eventfd(0, 0)};
    pthread_t t;
    pthread_create(&t, NULL, pp_producer, &pp);
    void *out[4];
    for (uint32_t i = 0; i < BELL_ROUNDS;) {
        uint32_t n = bds__mpsc_pop_burst(pp.q, out, 4);
        if (n) {
            cr_assert_eq(TAG_I(out[0]), i);
            i++;
            uint64_t one = 1;
            cr_assert_eq(write(pp.ack_fd, &one, 8), 8);
            continue;
        }
        if (bds__mpsc_prepare_sleep(pp.q)) {
            uint64_t v;
            cr_assert_eq(read(pp.bell_fd, &v, 8), 8);
            bds__mpsc_woken(pp.q);
        }
    }
    pthread_join(t, NULL);
    close(pp.bell_fd);
    close(pp.ack_fd);
    ring_free(pp.q);
}
