/* test_bell.c — lost wake-up tests of both doorbells (docs/ARCHITECTURE.md).
 *
 * Two shards play ping-pong through tiny inboxes, each a real bds_mpsc whose
 * sleep latch (prepare_sleep / should_ring / woken) decides when to ring, so
 * each message finds its consumer asleep or about to sleep. No timer is armed:
 * a shard blocks with NO timeout, and only a bell can wake it. Variants:
 * MSG_RING between shards, eventfd between shards, and a non-shard thread
 * ringing the eventfd. Each plays ROUNDS rounds or for ROUND_BUDGET_NS,
 * whichever ends first: on 2 loaded cores every wake-up may wait a scheduler
 * slice. A lost bell stalls the rounds: the watchdog then prints every
 * shard's state (latch, ops in flight, last tick) and aborts the test.
 *
 * These tests once used a latch of their own that cleared bell_rung only in
 * woken(), not before announcing a sleep. A bell rung after woken() cleared
 * the latch (the producer read sleeping = 1 of an aborted sleep attempt) was
 * reaped while the shard was awake, left bell_rung = 1, and the next real
 * sleep was never rung: the foreign variant hung in ~1 run of 10 (mpsc.pml's
 * BUG_RESET_IN_WOKEN). bds_mpsc gives every announced sleep a fresh latch.
 * BDS_TEST_TSAN */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "group.h"
#include "mpsc.h"
#include "watchdog.h"

#define ROUNDS 20000
#define ROUND_BUDGET_NS (30ull * 1000 * 1000 * 1000)
#define ROUNDS_MIN 1000 /* fewer in the budget would say little */
#define INBOX_SLOTS 64u
#define STALL_S 20 /* a round takes well under a millisecond */

typedef struct inbox {
    bds_mpsc q;
    void *mem;
    _Atomic uint64_t consumed; /* consumer's progress, for the foreign producer and the watchdog */
} inbox;

static inbox boxes[2];
static bds_group *grp;
static _Atomic uint64_t pongs; /* messages shard 0 received */
static bool foreign_mode;
static uint64_t started_ns;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void reset(void) {
    for (int i = 0; i < 2; i++) {
        if (!boxes[i].mem)
            boxes[i].mem = aligned_alloc(BDS_CACHELINE, bds__mpsc_footprint(INBOX_SLOTS));
        cr_assert_not_null(boxes[i].mem);
        bds__mpsc_init(&boxes[i].q, boxes[i].mem, INBOX_SLOTS);
        atomic_store(&boxes[i].consumed, 0);
    }
    atomic_store(&pongs, 0);
}

static void post(bds_shard *from, uint32_t to) {
    static char ball; /* items are moved, never dereferenced: any non-NULL pointer */
    inbox *b = &boxes[to];
    cr_assert(bds__mpsc_push(&b->q, &ball), "at most one ball per inbox");
    if (bds__mpsc_should_ring(&b->q)) {
        if (from)
            bds__shard_bell(from, bds__group_shard(grp, to));
        else
            bds__shard_wake(bds__group_shard(grp, to));
    }
}

static bool drain(bds_shard *s, void *ctx) {
    (void)ctx;
    uint32_t me = bds__shard_id(s);
    inbox *b = &boxes[me];
    void *got[INBOX_SLOTS];
    uint32_t n = bds__mpsc_pop_burst(&b->q, got, INBOX_SLOTS);
    if (n)
        atomic_fetch_add(&b->consumed, n);
    for (uint32_t i = 0; i < n; i++) {
        if (foreign_mode)
            continue; /* the foreign thread is the only producer */
        if (me == 0) {
            if (atomic_fetch_add(&pongs, 1) + 1 >= ROUNDS || now_ns() - started_ns > ROUND_BUDGET_NS) {
                bds__group_stop(grp);
                continue;
            }
            post(s, 1);
        } else {
            post(s, 0);
        }
    }
    return false;
}

static bool prepare_sleep(bds_shard *s, void *ctx) {
    (void)ctx;
    return bds__mpsc_prepare_sleep(&boxes[bds__shard_id(s)].q);
}

static void woken(bds_shard *s, void *ctx) {
    (void)ctx;
    bds__mpsc_woken(&boxes[bds__shard_id(s)].q);
}

/* The watchdog's view of a shard's inbox (a foreign thread: relaxed reads). */
static void dump_inbox(bds_shard *s, FILE *f, void *ctx) {
    (void)ctx;
    inbox *b = &boxes[bds__shard_id(s)];
    fprintf(f, "  test inbox: consumed %llu, ", (unsigned long long)atomic_load(&b->consumed));
    bds__mpsc_dump(&b->q, f);
}

static uint64_t progress_pongs(void *ctx) {
    (void)ctx;
    return atomic_load(&pongs);
}

static uint64_t progress_foreign(void *ctx) {
    (void)ctx;
    return atomic_load(&boxes[0].consumed);
}

static void dump_group(FILE *f, void *ctx) {
    (void)ctx;
    bds__group_dump(grp, f);
}

static watchdog wd;

static bds_status on_start(bds_shard *s, void *ctx) {
    (void)ctx;
    bds_shard_hooks h = {.drain_inbox = drain, .prepare_sleep = prepare_sleep, .woken = woken, .dump = dump_inbox};
    bds__shard_set_hooks(s, &h);
    return BDS_OK;
}

static _Atomic uint64_t sleeps, bells_sent, bells_received, eventfd_wakes;

static void on_exit_hook(bds_shard *s, void *ctx) {
    (void)ctx;
    const bds_shard_stats *st = bds__shard_stats(s);
    atomic_fetch_add(&sleeps, st->sleeps);
    atomic_fetch_add(&bells_sent, st->bells_sent);
    atomic_fetch_add(&bells_received, st->bells_received);
    atomic_fetch_add(&eventfd_wakes, st->eventfd_wakes);
}

static void reset_stats(void) {
    atomic_store(&sleeps, 0);
    atomic_store(&bells_sent, 0);
    atomic_store(&bells_received, 0);
    atomic_store(&eventfd_wakes, 0);
}

static void ping_pong(bds_bell_mode mode) {
    reset_stats();
    reset();
    foreign_mode = false;
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 2;
    cfg.shard.sq_entries = 64;
    cfg.shard.bufs = 0;
    cfg.shard.bell = mode;
    char err[256] = "";
    cr_assert_eq(bds__group_start(&grp, &cfg, on_start, on_exit_hook, NULL, err, sizeof(err)), BDS_OK, "%s",
                 err);
    /* The first ball, from outside: through shard 1's eventfd. */
    started_ns = now_ns();
    watchdog_start(&wd, "ping-pong rounds", STALL_S, 110, progress_pongs, dump_group, NULL);
    post(NULL, 1);
    bds__group_run(grp);
    watchdog_stop(&wd);
    uint64_t rounds = atomic_load(&pongs);
    cr_assert_geq(rounds, ROUNDS_MIN);
    bds__group_destroy(grp);
    cr_log_info("%s: %llu rounds, sleeps %llu, MSG_RING bells sent %llu received %llu, eventfd wakes %llu",
                mode == BDS_BELL_MSG_RING ? "msg_ring" : "eventfd", (unsigned long long)rounds,
                (unsigned long long)atomic_load(&sleeps),
                (unsigned long long)atomic_load(&bells_sent), (unsigned long long)atomic_load(&bells_received),
                (unsigned long long)atomic_load(&eventfd_wakes));
    /* The test means something only if the shards really slept and were rung. */
    cr_assert_gt(atomic_load(&sleeps), rounds / 4);
    if (mode == BDS_BELL_MSG_RING)
        cr_assert_gt(atomic_load(&bells_received), rounds / 4);
    else
        cr_assert_gt(atomic_load(&eventfd_wakes), rounds / 4);
}

Test(io_bell, msg_ring_ping_pong_with_sleeping_shards_never_loses_a_wakeup, .timeout = 120) {
    ping_pong(BDS_BELL_MSG_RING);
}

Test(io_bell, eventfd_ping_pong_with_sleeping_shards_never_loses_a_wakeup, .timeout = 120) {
    ping_pong(BDS_BELL_EVENTFD);
}

Test(io_bell, foreign_thread_posts_to_sleeping_shard_never_loses_a_wakeup, .timeout = 120) {
    reset();
    foreign_mode = true;
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 1;
    cfg.shard.sq_entries = 64;
    cfg.shard.bufs = 0;
    char err[256] = "";
    cr_assert_eq(bds__group_start(&grp, &cfg, on_start, NULL, NULL, err, sizeof(err)), BDS_OK, "%s", err);
    /* One at a time, each after the previous was consumed: the shard is asleep
     * (or about to be) for nearly every post. */
    watchdog_start(&wd, "the shard to consume each post", STALL_S, 110, progress_foreign, dump_group, NULL);
    uint64_t start = now_ns(), i;
    for (i = 1; i <= ROUNDS && now_ns() - start < ROUND_BUDGET_NS; i++) {
        post(NULL, 0);
        while (atomic_load(&boxes[0].consumed) < i)
            sched_yield(); /* a bare spin starves the shard thread on 2 loaded cores (TSan) */
    }
    cr_assert_geq(i - 1, ROUNDS_MIN);
    cr_log_info("foreign: %llu rounds", (unsigned long long)(i - 1));
    bds__group_stop(grp);
    bds__group_run(grp);
    watchdog_stop(&wd);
    bds__group_destroy(grp);
}
