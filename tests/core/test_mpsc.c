/* test_mpsc.c — core/mpsc.c, the shard inbox ring (docs/ARCHITECTURE.md).
 *
 * Single thread: FIFO, full, empty, wrap-around, burst prefixes, a claimed but
 * unpublished slot, the sleep/wake latch and want_space step by step, and the
 * contract asserts. Threads: P producers x many tagged items (producer id and
 * sequence encoded in the pointer value, never dereferenced) against one
 * consumer that checks per-producer order, no loss, no duplicate, on both CPUs
 * and with every thread pinned to one CPU (preemption lands between claim and
 * publish); a consumer that blocks on an eventfd doorbell with NO timeout, and
 * producers that block on their own doorbell when the ring is full, also with
 * no timeout: the test's .timeout is the lost-wake-up detector. No timing
 * asserts: the counters printed (sleeps, bells, stalls) are information.
 *
 * BDS_TEST_TSAN: this file also runs in the ThreadSanitizer build, with the
 * item counts scaled down (MPSC_TSAN below). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "mpsc.h"

#if defined(__SANITIZE_THREAD__)
#define MPSC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MPSC_TSAN 1
#endif
#endif

#ifdef MPSC_TSAN
#define SCALE 2u /* fewer items under TSan: it slows every access down; ~10 s in all */
#else
#define SCALE 1u
#endif

#define PRODUCERS 4

/* ---- helpers ---------------------------------------------------------------- */

static bds_mpsc *ring_new(uint32_t cap) {
    bds_mpsc *q = aligned_alloc(BDS_CACHELINE, sizeof *q);
    size_t bytes = (bds__mpsc_footprint(cap) + BDS_CACHELINE - 1) & ~(size_t)(BDS_CACHELINE - 1);
    void *mem = aligned_alloc(BDS_CACHELINE, bytes);
    cr_assert(q && mem);
    bds__mpsc_init(q, mem, cap);
    return q;
}

static void ring_free(bds_mpsc *q) {
    void *mem = (void *)q->_slots;
    bds__mpsc_deinit(q);
    free(mem);
    free(q);
}

/* Item = (producer + 1) << 40 | (sequence + 1): never NULL, never dereferenced. */
#define TAG(p, i) ((void *)(uintptr_t)((((uint64_t)(p) + 1) << 40) | ((uint64_t)(i) + 1)))
#define TAG_P(x) ((uint32_t)(((uintptr_t)(x) >> 40) - 1))
#define TAG_I(x) ((uint64_t)(((uintptr_t)(x) & ((UINT64_C(1) << 40) - 1)) - 1))

static void bell_ring(int fd) {
    uint64_t one = 1;
    BDS_ASSERT(write(fd, &one, sizeof one) == (ssize_t)sizeof one);
}

/* Blocks with no timeout: a lost wake-up hangs here until .timeout kills the test. */
static void bell_wait(int fd) {
    uint64_t v;
    BDS_ASSERT(read(fd, &v, sizeof v) == (ssize_t)sizeof v);
}

/* Pins the calling thread to the first CPU it may use (CPU 0 on the CI
 * machines); *saved receives its old mask for unpin(). */
static void pin_first_cpu(cpu_set_t *saved) {
    BDS_ASSERT(pthread_getaffinity_np(pthread_self(), sizeof *saved, saved) == 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, saved)) {
            CPU_SET(c, &one);
            break;
        }
    }
    BDS_ASSERT(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0);
}

static void unpin(const cpu_set_t *saved) {
    BDS_ASSERT(pthread_setaffinity_np(pthread_self(), sizeof *saved, saved) == 0);
}

/* Preemption inside the claim -> publish window. Pinned to one CPU, a
 * producer is preempted only when its time slice ends, which seldom falls in
 * the few instructions between its CAS on _tail and its slot store. So each
 * producer also gets a 100 us timer whose signal makes it yield at whatever
 * instruction it is on. The signal is blocked while the producer sleeps on
 * its doorbell (a storm of wake-ups would only slow the test down), and
 * SA_RESTART resumes an eventfd write it interrupts. */
static void on_nudge(int sig) {
    (void)sig;
    sched_yield();
}

static timer_t nudge_begin(void) {
    struct sigaction sa = {.sa_handler = on_nudge, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    BDS_ASSERT(sigaction(SIGRTMIN, &sa, NULL) == 0);
    struct sigevent sev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN};
    sev._sigev_un._tid = gettid(); /* glibc has no sigev_notify_thread_id name */
    timer_t t;
    BDS_ASSERT(timer_create(CLOCK_MONOTONIC, &sev, &t) == 0);
    struct itimerspec its = {.it_interval = {0, 100000}, .it_value = {0, 100000}};
    BDS_ASSERT(timer_settime(t, 0, &its, NULL) == 0);
    return t;
}

static void nudge_end(timer_t t) { BDS_ASSERT(timer_delete(t) == 0); }

/* Blocks on the doorbell with the nudge signal held back. */
static void bell_wait_unnudged(int fd) {
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    BDS_ASSERT(pthread_sigmask(SIG_BLOCK, &set, &old) == 0);
    bell_wait(fd);
    BDS_ASSERT(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0);
}

static uint32_t xorshift(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* ---- single thread: the ring ------------------------------------------------ */

Test(mpsc, push_pop_single_thread_returns_fifo_order) {
    bds_mpsc *q = ring_new(8);
    void *out[8];
    for (int i = 0; i < 5; i++) cr_assert(bds__mpsc_push(q, TAG(0, i)));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 2, "out_max bounds the burst");
    cr_assert_eq(out[0], TAG(0, 0));
    cr_assert_eq(out[1], TAG(0, 1));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 3);
    for (int i = 0; i < 3; i++) cr_assert_eq(out[i], TAG(0, i + 2));
    ring_free(q);
}

Test(mpsc, push_when_full_returns_false_and_takes_nothing) {
    bds_mpsc *q = ring_new(4);
    void *out[8];
    for (int i = 0; i < 4; i++) cr_assert(bds__mpsc_push(q, TAG(0, i)));
    cr_assert_not(bds__mpsc_push(q, TAG(0, 4)));
    cr_assert_not(bds__mpsc_push(q, TAG(0, 5)), "still full");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 4, "the refused items are not in the ring");
    for (int i = 0; i < 4; i++) cr_assert_eq(out[i], TAG(0, i));
    cr_assert(bds__mpsc_push(q, TAG(0, 4)), "room again after a pop");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 1);
    ring_free(q);
}

Test(mpsc, pop_when_empty_returns_zero_and_leaves_out_alone) {
    bds_mpsc *q = ring_new(2);
    void *out[2] = {TAG(9, 9), TAG(9, 9)};
    cr_assert(bds__mpsc_empty(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 0);
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert_not(bds__mpsc_empty(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 1);
    cr_assert(bds__mpsc_empty(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out + 1, 1), 0);
    cr_assert_eq(out[1], TAG(9, 9));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 0), 0, "out_max 0 takes nothing");
    ring_free(q);
}

Test(mpsc, push_pop_over_many_laps_wraps_around_in_order) {
    bds_mpsc *q = ring_new(8);
    void *items[8], *out[8];
    uint64_t next = 0, want = 0;
    for (uint32_t lap = 0; lap < 10000; lap++) {
        uint32_t k = 1 + lap % 8; /* every offset against every burst size */
        for (uint32_t i = 0; i < k; i++) items[i] = TAG(1, next + i);
        cr_assert_eq(bds__mpsc_push_burst(q, items, k), k);
        next += k;
        uint32_t n = bds__mpsc_pop_burst(q, out, 8);
        cr_assert_eq(n, k);
        for (uint32_t i = 0; i < n; i++) cr_assert_eq(TAG_I(out[i]), want++);
    }
    cr_assert_gt(q->_head, 1000 * 8, "positions went round the ring many times");
    ring_free(q);
}

Test(mpsc, push_burst_when_nearly_full_takes_a_prefix) {
    bds_mpsc *q = ring_new(8);
    void *items[10], *out[10];
    for (int i = 0; i < 10; i++) items[i] = TAG(2, i);
    cr_assert_eq(bds__mpsc_push_burst(q, items, 5), 5);
    cr_assert_eq(bds__mpsc_push_burst(q, items + 5, 5), 3, "only the room left is taken");
    cr_assert_eq(bds__mpsc_push_burst(q, items + 8, 2), 0, "full: nothing taken");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 10), 8);
    for (int i = 0; i < 8; i++) cr_assert_eq(out[i], items[i]);
    ring_free(q);
}

Test(mpsc, push_burst_larger_than_capacity_takes_capacity) {
    bds_mpsc *q = ring_new(4);
    void *items[10], *out[10];
    for (int i = 0; i < 10; i++) items[i] = TAG(3, i);
    cr_assert_eq(bds__mpsc_push_burst(q, items, 10), 4);
    cr_assert_eq(bds__mpsc_push_burst(q, items, 0), 0, "n 0 takes nothing");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 10), 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(out[i], items[i]);
    ring_free(q);
}

/* White box: a producer that won its CAS and was preempted before its store
 * is played here by claiming a position on _tail directly. */
Test(mpsc, pop_burst_at_claimed_unpublished_slot_stops_without_waiting) {
    bds_mpsc *q = ring_new(8);
    void *out[8];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    uint64_t claimed = atomic_fetch_add(&q->_tail, 1); /* "preempted" producer 1 */
    cr_assert(bds__mpsc_push(q, TAG(2, 0)), "other producers are not held up");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 1, "the burst ends at the unpublished slot");
    cr_assert_eq(out[0], TAG(0, 0));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 0, "and does not skip it");
    cr_assert(bds__mpsc_empty(q));
    cr_assert(bds__mpsc_prepare_sleep(q), "nothing at the head: the consumer may block");
    /* producer 1 resumes: its store, its bump, then it asks about the bell */
    atomic_store(&q->_slots[claimed & q->_mask], TAG(1, 0));
    atomic_fetch_add(&q->_pushes, 1);
    cr_assert(bds__mpsc_should_ring(q), "the late publisher rings the sleeping consumer");
    bds__mpsc_woken(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 2);
    cr_assert_eq(out[0], TAG(1, 0), "claim order, not publish order");
    cr_assert_eq(out[1], TAG(2, 0));
    ring_free(q);
}

/* ---- single thread: the latch and want_space ---------------------------------- */

Test(mpsc, should_ring_when_consumer_awake_returns_false) {
    bds_mpsc *q = ring_new(4);
    void *out[4];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert_not(bds__mpsc_should_ring(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 4), 1);
    ring_free(q);
}

Test(mpsc, should_ring_after_prepare_sleep_returns_true_once_per_sleep) {
    bds_mpsc *q = ring_new(8);
    void *out[8];
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_should_ring(q), "the first producer after the sleep rings");
    cr_assert(bds__mpsc_push(q, TAG(1, 0)));
    cr_assert_not(bds__mpsc_should_ring(q), "one bell per sleep");
    bds__mpsc_woken(q);
    cr_assert(bds__mpsc_push(q, TAG(1, 1)));
    cr_assert_not(bds__mpsc_should_ring(q), "awake again: no bell");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 3);
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert(bds__mpsc_should_ring(q), "a new sleep gets a new bell");
    bds__mpsc_woken(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 8), 1);
    ring_free(q);
}

Test(mpsc, prepare_sleep_with_item_published_returns_false_and_stays_awake) {
    bds_mpsc *q = ring_new(4);
    void *out[4];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert_not(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert_not(bds__mpsc_should_ring(q), "the aborted attempt cleared sleeping");
    bds__mpsc_woken(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 4), 2);
    ring_free(q);
}

/* The io/ regression of commit 40fae9b at the ring's level: a bell won for a
 * sleep the consumer never took (it reaped that bell while awake, and did not
 * call woken) must not leave the latch set for the next sleep. */
Test(mpsc, prepare_sleep_without_woken_still_gets_a_fresh_bell) {
    bds_mpsc *q = ring_new(4);
    void *out[4];
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_should_ring(q));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 4), 1); /* awake: bell reaped, no woken() */
    cr_assert(bds__mpsc_prepare_sleep(q));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert(bds__mpsc_should_ring(q), "the new sleep is rung");
    bds__mpsc_woken(q);
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 4), 1);
    ring_free(q);
}

Test(mpsc, want_space_when_still_full_returns_false_and_reports_each_producer_once) {
    bds_mpsc *q = ring_new(2);
    void *out[2];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert_not(bds__mpsc_want_space(q, 3));
    cr_assert_not(bds__mpsc_want_space(q, 63));
    cr_assert_not(bds__mpsc_want_space(q, 3), "setting a bit twice is harmless");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 1), 1);
    cr_assert_eq(bds__mpsc_take_want_space(q), (UINT64_C(1) << 3) | (UINT64_C(1) << 63));
    cr_assert_eq(bds__mpsc_take_want_space(q), 0, "taken once");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 1);
    ring_free(q);
}

Test(mpsc, want_space_when_room_appeared_returns_true) {
    bds_mpsc *q = ring_new(2);
    void *out[2];
    cr_assert(bds__mpsc_push(q, TAG(0, 0)));
    cr_assert(bds__mpsc_push(q, TAG(0, 1)));
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 1), 1); /* the consumer drained one... */
    cr_assert_eq(bds__mpsc_take_want_space(q), 0);   /* ...and took the empty mask */
    cr_assert(bds__mpsc_want_space(q, 1), "room: push again now, nobody will ring");
    cr_assert(bds__mpsc_push(q, TAG(0, 2)));
    cr_assert_eq(bds__mpsc_take_want_space(q), UINT64_C(1) << 1, "the bit stays: a spurious bell");
    cr_assert_eq(bds__mpsc_pop_burst(q, out, 2), 2);
    ring_free(q);
}

Test(mpsc, take_want_space_when_nobody_waits_returns_zero) {
    bds_mpsc *q = ring_new(2);
    cr_assert_eq(bds__mpsc_take_want_space(q), 0);
    ring_free(q);
}

/* ---- contracts ---------------------------------------------------------------- */

/* Each of these runs in its own process (Criterion forks); the TSan stand-in
 * runner cannot fork per test, and they have no threads: ASan build only. */
#ifndef MPSC_TSAN
static alignas(BDS_CACHELINE) unsigned char contract_mem[8 * sizeof(void *)];

Test(mpsc, init_with_capacity_not_power_of_two_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem, 6);
}

Test(mpsc, init_with_capacity_one_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem, 1);
}

Test(mpsc, init_with_misaligned_memory_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem + 8, 4);
}

Test(mpsc, push_null_item_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem, 8);
    bds__mpsc_push(&q, NULL);
}

Test(mpsc, deinit_when_not_empty_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem, 8);
    cr_assert(bds__mpsc_push(&q, TAG(0, 0)));
    bds__mpsc_deinit(&q);
}

Test(mpsc, want_space_with_producer_id_64_aborts, .signal = SIGABRT) {
    bds_mpsc q;
    bds__mpsc_init(&q, contract_mem, 8);
    bds__mpsc_want_space(&q, 64);
}
#endif

/* ---- threads: P producers x tagged items, one consumer -------------------------- */

struct stress_cfg {
    uint32_t cap;             /* ring capacity */
    uint64_t items;           /* per producer */
    bool pinned;              /* every thread on one CPU */
    bool consumer_sleeps;     /* prepare_sleep + eventfd doorbell with no timeout */
    bool producers_wait;      /* full ring: want_space + own eventfd with no timeout */
};

struct stress {
    const struct stress_cfg *cfg;
    bds_mpsc *q;
    int consumer_bell;
    int producer_bell[PRODUCERS];
    _Atomic uint64_t bells;       /* producer -> consumer bells rung */
    _Atomic uint64_t full_waits;  /* producer blocked on its own doorbell */
};

struct producer_arg {
    struct stress *st;
    uint32_t id;
};

/* Pushes batch[0..k) completely, so the sequence numbers stay in order. */
static void producer_push_all(struct stress *st, uint32_t id, void *const *batch, uint32_t k) {
    uint32_t took = 0;
    for (;;) {
        uint32_t t = bds__mpsc_push_burst(st->q, batch + took, k - took);
        took += t;
        if (t && st->cfg->consumer_sleeps && bds__mpsc_should_ring(st->q)) {
            bell_ring(st->consumer_bell);
            atomic_fetch_add_explicit(&st->bells, 1, memory_order_relaxed);
        }
        if (took == k) return;
        if (!st->cfg->producers_wait) {
            sched_yield();
        } else if (!bds__mpsc_want_space(st->q, id)) {
            bell_wait_unnudged(st->producer_bell[id]);
            atomic_fetch_add_explicit(&st->full_waits, 1, memory_order_relaxed);
        }
    }
}

static void *producer_main(void *arg) {
    struct producer_arg *pa = arg;
    struct stress *st = pa->st;
    cpu_set_t saved;
    timer_t nudge = 0;
    if (st->cfg->pinned) {
        pin_first_cpu(&saved);
        nudge = nudge_begin();
    }
    uint32_t seed = 0x9e3779b9u * (pa->id + 1);
    void *batch[16];
    for (uint64_t i = 0; i < st->cfg->items;) {
        uint32_t k = 1 + xorshift(&seed) % 16;
        if (k > st->cfg->items - i) k = (uint32_t)(st->cfg->items - i);
        for (uint32_t j = 0; j < k; j++) batch[j] = TAG(pa->id, i + j);
        producer_push_all(st, pa->id, batch, k);
        i += k;
    }
    if (st->cfg->pinned) nudge_end(nudge);
    return NULL;
}

/* After a drain: ring every producer that found the ring full. */
static void consumer_ring_waiting(struct stress *st) {
    for (uint64_t w = bds__mpsc_take_want_space(st->q); w; w &= w - 1) {
        bell_ring(st->producer_bell[__builtin_ctzll(w)]);
    }
}

/* Positions are claimed beyond the consumer's head but nothing is published
 * there: a producer sits between its CAS and its store (approximate: it may
 * have claimed just after the burst ended). */
static bool claimed_unpublished_at_head(const bds_mpsc *q) {
    /* relaxed: a statistic */
    return atomic_load_explicit(&q->_tail, memory_order_relaxed) != q->_head && bds__mpsc_empty(q);
}

/* The consumer found nothing: sleep on the doorbell if the latch allows, or yield. */
static void consumer_idle(struct stress *st, uint64_t *sleeps) {
    if (!st->cfg->consumer_sleeps) {
        sched_yield();
        return;
    }
    if (bds__mpsc_prepare_sleep(st->q)) {
        bell_wait(st->consumer_bell);
        (*sleeps)++;
    }
    bds__mpsc_woken(st->q);
}

static void run_stress(const struct stress_cfg *cfg) {
    struct stress st = {.cfg = cfg, .q = ring_new(cfg->cap), .consumer_bell = eventfd(0, 0)};
    struct producer_arg pa[PRODUCERS];
    pthread_t t[PRODUCERS];
    cpu_set_t saved;
    cr_assert_geq(st.consumer_bell, 0);
    if (cfg->pinned) pin_first_cpu(&saved);
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        st.producer_bell[p] = eventfd(0, 0);
        cr_assert_geq(st.producer_bell[p], 0);
        pa[p] = (struct producer_arg){&st, p};
        cr_assert_eq(pthread_create(&t[p], NULL, producer_main, &pa[p]), 0);
    }
    uint64_t next[PRODUCERS] = {0}, total = 0, sleeps = 0, stalls = 0;
    void *out[64];
    while (total < cfg->items * PRODUCERS) {
        uint32_t n = bds__mpsc_pop_burst(st.q, out, 64);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t p = TAG_P(out[i]);
            cr_assert_lt(p, PRODUCERS, "a pointer nobody pushed: %p", out[i]);
            cr_assert_eq(TAG_I(out[i]), next[p], "producer %u: got item %llu, want %llu (loss, duplicate or reorder)",
                         p, (unsigned long long)TAG_I(out[i]), (unsigned long long)next[p]);
            next[p]++;
        }
        total += n;
        if (n < 64 && claimed_unpublished_at_head(st.q)) stalls++;
        if (cfg->producers_wait) consumer_ring_waiting(&st);
        if (n == 0) consumer_idle(&st, &sleeps);
    }
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        cr_assert_eq(pthread_join(t[p], NULL), 0);
        cr_assert_eq(next[p], cfg->items, "producer %u: every item arrived exactly once", p);
        close(st.producer_bell[p]);
    }
    cr_assert(bds__mpsc_empty(st.q));
    cr_assert_eq(bds__mpsc_pop_burst(st.q, out, 64), 0, "nothing left behind");
    cr_log_info("mpsc stress cap=%u items=%llu pinned=%d: consumer sleeps=%llu bells=%llu, "
                "producer full-waits=%llu, bursts cut at an unpublished slot=%llu",
                cfg->cap, (unsigned long long)(cfg->items * PRODUCERS), cfg->pinned,
                (unsigned long long)sleeps, (unsigned long long)atomic_load(&st.bells),
                (unsigned long long)atomic_load(&st.full_waits), (unsigned long long)stalls);
    if (cfg->pinned) unpin(&saved);
    close(st.consumer_bell);
    ring_free(st.q);
}

#define ITEMS_BOTH_CPUS (2000000u / SCALE)
#define ITEMS_ONE_CPU (1000000u / SCALE)
#define ITEMS_SLEEPING (500000u / SCALE)
#define ITEMS_FULL (100000u / SCALE)
#define ITEMS_PINNED_SLEEPING (100000u / SCALE) /* every item may cost a sleep, a bell, nudges */
#define ITEMS_PINNED_FULL (25000u / SCALE)

Test(mpsc, stress_on_both_cpus_delivers_every_item_once_in_order, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 256, .items = ITEMS_BOTH_CPUS});
}

/* One CPU, and producers nudged off it at random instructions: they are
 * preempted between claim and publish, and the consumer meets those slots. */
Test(mpsc, stress_pinned_to_one_cpu_delivers_every_item_once_in_order, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 256, .items = ITEMS_ONE_CPU, .pinned = true});
}

Test(mpsc, doorbell_consumer_blocked_without_timeout_never_misses_a_wakeup, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 256, .items = ITEMS_SLEEPING, .consumer_sleeps = true});
}

Test(mpsc, doorbell_pinned_to_one_cpu_never_misses_a_wakeup, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 256, .items = ITEMS_PINNED_SLEEPING, .pinned = true,
                                    .consumer_sleeps = true});
}

/* A tiny ring keeps it full: producers block on their own doorbells with no
 * timeout (want_space), the consumer on its own (prepare_sleep). */
Test(mpsc, full_ring_producers_blocked_without_timeout_are_always_rung, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 4, .items = ITEMS_FULL, .consumer_sleeps = true,
                                    .producers_wait = true});
}

Test(mpsc, full_ring_pinned_to_one_cpu_producers_are_always_rung, .timeout = 120) {
    run_stress(&(struct stress_cfg){.cap = 4, .items = ITEMS_PINNED_FULL, .pinned = true,
                                    .consumer_sleeps = true, .producers_wait = true});
}

/* ---- threads: a push after every sleep -------------------------------------------- */

#define PING_PONG_ROUNDS (20000u / SCALE)

struct ping_pong {
    bds_mpsc *q;
    int bell, ack;
};

static void *ping_pong_producer(void *arg) {
    struct ping_pong *pp = arg;
    for (uint32_t i = 0; i < PING_PONG_ROUNDS; i++) {
        bell_wait(pp->ack); /* the consumer has announced its sleep */
        BDS_ASSERT(bds__mpsc_push(pp->q, TAG(0, i)));
        BDS_ASSERT(bds__mpsc_should_ring(pp->q)); /* so this push must ring */
        bell_ring(pp->bell);
    }
    return NULL;
}

/* Every item is pushed after prepare_sleep returned true, so should_ring must
 * say yes every time, and the consumer blocks (no timeout) for every item. */
Test(mpsc, doorbell_push_after_prepare_sleep_rings_every_time, .timeout = 120) {
    struct ping_pong pp = {.q = ring_new(4), .bell = eventfd(0, 0), .ack = eventfd(0, 0)};
    cr_assert(pp.bell >= 0 && pp.ack >= 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ping_pong_producer, &pp), 0);
    void *out[4];
    for (uint32_t i = 0; i < PING_PONG_ROUNDS; i++) {
        cr_assert(bds__mpsc_prepare_sleep(pp.q), "round %u: nothing pushed yet", i);
        bell_ring(pp.ack);
        bell_wait(pp.bell);
        bds__mpsc_woken(pp.q);
        cr_assert_eq(bds__mpsc_pop_burst(pp.q, out, 4), 1);
        cr_assert_eq(out[0], TAG(0, i));
    }
    cr_assert_eq(pthread_join(t, NULL), 0);
    close(pp.bell);
    close(pp.ack);
    ring_free(pp.q);
}
