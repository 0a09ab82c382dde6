/* watchdog.h — a stall report for tests that run shards (header-only).
 *
 * A test that waits on shards (a lost wake-up, a shard that stopped making
 * progress) would otherwise be killed by Criterion's or ctest's timeout with
 * nothing printed. The watchdog is a thread that samples the test's progress
 * counter once a second; when it has not moved for stall_s seconds, or when
 * deadline_s has passed (set it below the test's .timeout), it prints what the
 * test was waiting for and the test's dump (typically bds__group_dump: every
 * shard's latch, ops in flight, parked ops, timers, eventfd, sessions) to
 * stderr and aborts, so that CI's output alone says where it stuck.
 *
 *   static watchdog wd;
 *   watchdog_start(&wd, "20,000 ping-pong rounds", 20, 110, progress_fn, dump_fn, ctx);
 *   ... run ...
 *   watchdog_stop(&wd);  (before freeing anything dump_fn reads)
 *
 * BDS_WATCHDOG_GDB=1 in the environment also prints every thread's state,
 * kernel stack (/proc, as root) and user stack (gdb attaches to the test
 * process) before the abort.
 */
#ifndef BDS_TESTS_IO_WATCHDOG_H
#define BDS_TESTS_IO_WATCHDOG_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;            /* under mu */
    const char *what;     /* what the test waits for */
    unsigned stall_s, deadline_s;
    uint64_t (*progress)(void *ctx); /* any value that moves while the test progresses */
    void (*dump)(FILE *f, void *ctx);
    void *ctx;
} watchdog;

static void watchdog_report(watchdog *w, const char *why, unsigned elapsed_s, uint64_t progress) {
    fprintf(stderr, "\nWATCHDOG: %s (stall limit %u s, deadline %u s) at %u s, waiting for %s (progress counter %llu); state:\n",
            why, w->stall_s, w->deadline_s, elapsed_s, w->what, (unsigned long long)progress);
    if (w->dump)
        w->dump(stderr, w->ctx);
    /* BDS_WATCHDOG_GDB=1 adds every thread's stack (gdb attaches to us). */
    const char *gdb = getenv("BDS_WATCHDOG_GDB");
    if (gdb && *gdb == '1') {
        char cmd[640];
        snprintf(cmd, sizeof cmd,
                 "for t in /proc/%d/task/*; do echo \"task $t: $(cut -d' ' -f2,3 $t/stat) wchan $(cat $t/wchan) schedstat (run ns, runqueue wait ns, slices) $(cat $t/schedstat)\"; "
                 "cat $t/stack 2>/dev/null; done 1>&2; gdb -p %d -batch -ex 'thread apply all bt 20' 1>&2 2>/dev/null",
                 (int)getpid(), (int)getpid());
        fflush(stderr);
        if (system(cmd) != 0)
            fprintf(stderr, "WATCHDOG: gdb failed\n");
    }
    fprintf(stderr, "WATCHDOG: aborting the stalled test\n");
    fflush(stderr);
    abort();
}

static void *watchdog_main(void *arg) {
    watchdog *w = arg;
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    uint64_t last = w->progress ? w->progress(w->ctx) : 0;
    unsigned elapsed = 0, still = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        at.tv_sec += 1;
        int rc = pthread_cond_timedwait(&w->cv, &w->mu, &at);
        if (w->stop || rc != ETIMEDOUT)
            continue;
        elapsed++;
        uint64_t now = w->progress ? w->progress(w->ctx) : last;
        still = now == last ? still + 1 : 0;
        last = now;
        if (w->progress && still >= w->stall_s)
            watchdog_report(w, "no progress", elapsed, now);
        if (elapsed >= w->deadline_s)
            watchdog_report(w, "deadline passed", elapsed, now);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* progress may be NULL (deadline only). */
static inline void watchdog_start(watchdog *w, const char *what, unsigned stall_s, unsigned deadline_s,
                                  uint64_t (*progress)(void *), void (*dump)(FILE *, void *), void *ctx) {
    *w = (watchdog){.what = what, .stall_s = stall_s, .deadline_s = deadline_s, .progress = progress,
                    .dump = dump, .ctx = ctx};
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->mu, NULL);
    if (pthread_create(&w->thread, NULL, watchdog_main, w) != 0) {
        fprintf(stderr, "watchdog: cannot start its thread\n");
        abort();
    }
}

static inline void watchdog_stop(watchdog *w) {
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

#endif
