/* test_shard.c — the shard ring and tick: ops complete later (never inline),
 * a full SQ parks ops with none lost, CQ overflow loses nothing, timers end a
 * blocking wait, a late CQE for an abandoned op is dropped by generation, and
 * io_uring refused by seccomp gives a status and a message, not a crash. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shard.h"
#include "watchdog.h"

static bds_shard *mk(uint32_t sq, uint32_t cq, uint32_t done_batch) {
    bds_shard_config cfg;
    bds__shard_config_default(&cfg);
    cfg.sq_entries = sq;
    cfg.cq_entries = cq;
    cfg.done_batch = done_batch;
    cfg.bufs = 0;
    char err[256] = "";
    bds_shard *s = NULL;
    bds_status st = bds__shard_create(&s, 0, &cfg, err, sizeof(err));
    cr_assert_eq(st, BDS_OK, "%s", err);
    return s;
}

static uint32_t n_done;
static int32_t last_res;
static void on_done(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    (void)op, (void)flags, (void)ctx;
    n_done++;
    last_res = res;
}

static void tick_until(bds_shard *s, uint32_t *counter, uint32_t want) {
    /* Bounded in time, not in ticks: a loaded machine completes slowly. */
    for (uint64_t end = bds__clock_ns() + 20000000000ull; *counter < want && bds__clock_ns() < end;)
        bds__shard_tick(s, false);
    cr_assert_eq(*counter, want);
}

static void finish(bds_shard *s) {
    bds__shard_request_stop(s);
    bds__shard_run(s);
    bds__shard_destroy(s);
}

Test(io_shard, nop_completes_in_a_later_tick_never_inline, .timeout = 20) {
    bds_shard *s = mk(8, 0, 0);
    n_done = 0;
    bds_op op;
    bds__op_init(&op, BDS_OP_NOP, -1, on_done, NULL);
    bds__op_submit(s, &op);
    cr_assert_eq(n_done, 0);
    cr_assert(bds__op_busy(&op));
    tick_until(s, &n_done, 1);
    cr_assert_eq(last_res, 0);
    cr_assert(!bds__op_busy(&op));
    finish(s);
}

Test(io_shard, sq_full_parks_ops_and_completes_every_one, .timeout = 20) {
    bds_shard *s = mk(4, 0, 0);
    n_done = 0;
    enum { N = 1000 };
    static bds_op ops[N];
    for (int i = 0; i < N; i++) {
        bds__op_init(&ops[i], BDS_OP_NOP, -1, on_done, NULL);
        bds__op_submit(s, &ops[i]);
    }
    tick_until(s, &n_done, N);
    cr_assert_gt(bds__shard_stats(s)->parked, 0);
    finish(s);
}

Test(io_shard, cq_overflow_with_slow_reaping_loses_nothing, .timeout = 20) {
    /* CQ of 8, reaping 2 per tick, 8 SQEs per submit: the kernel overflows. */
    bds_shard *s = mk(8, 8, 2);
    n_done = 0;
    enum { N = 5000 };
    static bds_op ops[N];
    for (int i = 0; i < N; i++) {
        bds__op_init(&ops[i], BDS_OP_NOP, -1, on_done, NULL);
        bds__op_submit(s, &ops[i]);
    }
    tick_until(s, &n_done, N);
    cr_assert_gt(bds__shard_stats(s)->overflows, 0, "the CQ never overflowed");
    finish(s);
}

static uint32_t n_fired;
static void on_timer(bds_timer *t, void *ctx) {
    (void)t, (void)ctx;
    n_fired++;
}

Test(io_shard, timer_deadline_ends_a_blocking_wait, .timeout = 20) {
    bds_shard *s = mk(8, 0, 0);
    n_fired = 0;
    /* Only a timer can end these waits: one armed at a time, each a little
     * ahead, each reached through a blocking wait. (Three timers armed at
     * once could all be due after one wait on a loaded machine.) */
    bds_timer t;
    bds__timer_init(&t, on_timer, NULL);
    for (uint32_t k = 1; k <= 3; k++) {
        cr_assert_eq(bds__timer_arm(bds__shard_timers(s), &t, bds__clock_ns() + 2000000), 0);
        for (int i = 0; i < 1000 && n_fired < k; i++)
            bds__shard_tick(s, true);
        cr_assert_eq(n_fired, k, "timer %u never fired", k);
    }
    cr_assert_geq(bds__shard_stats(s)->sleeps, 3);
    finish(s);
}

Test(io_shard, late_cqe_of_abandoned_op_is_dropped_by_generation, .timeout = 20) {
    bds_shard *s = mk(8, 0, 0);
    n_done = 0;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    static char buf[16];
    bds_op rd, nop;
    bds__op_init(&rd, BDS_OP_READ, p[0], on_done, NULL);
    rd.a.read.buf = buf;
    rd.a.read.len = sizeof(buf);
    rd.a.read.off = (uint64_t)-1;
    bds__op_submit(s, &rd);
    bds__shard_tick(s, false); /* the read is now in the kernel, waiting */
    bds__op_abandon(s, &rd);
    /* The slot is reused at once by another op with a new generation. */
    bds__op_init(&nop, BDS_OP_NOP, -1, on_done, NULL);
    bds__op_submit(s, &nop);
    tick_until(s, &n_done, 1);
    cr_assert_eq(write(p[1], "x", 1), 1);
    for (uint64_t end = bds__clock_ns() + 20000000000ull; bds__shard_stats(s)->stale_cqes == 0 && bds__clock_ns() < end;)
        bds__shard_tick(s, false);
    cr_assert_eq(bds__shard_stats(s)->stale_cqes, 1);
    cr_assert_eq(n_done, 1, "the abandoned op's callback ran");
    finish(s);
    close(p[0]);
    close(p[1]);
}

Test(io_shard, cancel_of_parked_op_completes_both_later, .timeout = 20) {
    bds_shard *s = mk(2, 0, 0);
    n_done = 0;
    bds_op ops[3], cancel;
    for (int i = 0; i < 3; i++) {
        bds__op_init(&ops[i], BDS_OP_NOP, -1, on_done, NULL);
        bds__op_submit(s, &ops[i]); /* the third parks: SQ of 2 */
    }
    bds__op_init(&cancel, BDS_OP_CANCEL, -1, on_done, NULL);
    bds__op_cancel(s, &cancel, &ops[2]);
    cr_assert_eq(n_done, 0);
    tick_until(s, &n_done, 4);
    finish(s);
}

static void install_seccomp_io_uring_eperm(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
    cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
}

Test(io_shard, setup_refused_by_seccomp_returns_unavailable_with_message, .timeout = 20) {
    install_seccomp_io_uring_eperm();
    bds_shard_config cfg;
    bds__shard_config_default(&cfg);
    char err[256] = "";
    bds_shard *s = (bds_shard *)1;
    bds_status st = bds__shard_create(&s, 0, &cfg, err, sizeof(err));
    cr_assert_eq(st, BDS_UNAVAILABLE);
    cr_assert_null(s);
    cr_assert(strstr(err, "io_uring") != NULL, "message: %s", err);
}

Test(io_shard, invalid_config_returns_invalid, .timeout = 20) {
    bds_shard_config cfg;
    bds__shard_config_default(&cfg);
    cfg.sq_entries = 1000;
    bds_shard *s = NULL;
    cr_assert_eq(bds__shard_create(&s, 0, &cfg, NULL, 0), BDS_E_INVALID);
    cr_assert_null(s);
}

static void dump_hook(bds_shard *s, FILE *f, void *ctx) {
    (void)s;
    fprintf(f, "  upper layer: %s\n", (const char *)ctx);
}

Test(io_shard, dump_reports_ops_parked_ops_eventfd_and_the_upper_layer, .timeout = 20) {
    bds_shard *s = mk(2, 0, 0);
    bds_shard_hooks h = {.dump = dump_hook, .ctx = "still here"};
    bds__shard_set_hooks(s, &h);
    bds_op ops[3];
    for (int i = 0; i < 3; i++) {
        bds__op_init(&ops[i], BDS_OP_NOP, -1, on_done, NULL);
        bds__op_submit(s, &ops[i]); /* SQ of 2 and the eventfd read: some park */
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    bds__shard_dump(s, f);
    fclose(f);
    cr_assert_not_null(strstr(text, "shard 0: tick "), "%s", text);
    cr_assert_not_null(strstr(text, "parked 2 + 0 reserve"), "%s", text); /* one NOP took the last SQE */
    cr_assert_not_null(strstr(text, "eventfd"), "%s", text);
    cr_assert_not_null(strstr(text, "read in flight, count 0"), "%s", text);
    cr_assert_not_null(strstr(text, "upper layer: still here"), "%s", text);
    free(text);
    n_done = 0;
    tick_until(s, &n_done, 3);
    finish(s);
}

/* ---- a stopping shard waiting for a foreign thread to leave ----------------------- */

static _Atomic uint32_t inside; /* foreign threads at work on the shard's state */
static watchdog wd;

static bool inside_quiescent(bds_shard *s, void *ctx) {
    (void)s, (void)ctx;
    return atomic_load(&inside) == 0; /* seq_cst, as bds__shard_leave wants */
}

static void *leaver(void *arg) {
    bds_shard *s = arg;
    /* Once the shard blocks for the second time it has seen the count raised
     * after the stop (the first wait ends on request_stop's own wake). */
    while (__atomic_load_n(&bds__shard_stats(s)->sleeps, __ATOMIC_RELAXED) < 2)
        sched_yield();
    struct timespec ts = {0, 50 * 1000 * 1000}; /* let it settle into the wait */
    nanosleep(&ts, NULL);
    bds__shard_leave(s, &inside);
    return NULL;
}

static void dump_shard(FILE *f, void *ctx) { bds__shard_dump(ctx, f); }

Test(io_shard, stopping_shard_blocked_on_a_foreign_count_finishes_when_the_thread_leaves, .timeout = 30) {
    /* A foreign poster raised a count the quiescent hook reads; the shard was
     * asked to stop, found the count raised and blocked. A bare decrement
     * left it blocked for ever (test_shard_pipeline once in 6 runs on one CPU): the
     * leave must wake it. */
    bds_shard *s = mk(8, 0, 0);
    bds_shard_hooks h = {.quiescent = inside_quiescent};
    bds__shard_set_hooks(s, &h);
    atomic_store(&inside, 1);
    bds__shard_request_stop(s);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, leaver, s), 0);
    watchdog_start(&wd, "the stopping shard to finish after the foreign thread left", 10, 25, NULL, dump_shard, s);
    bds__shard_run(s); /* returns once quiescent: only a wake can tell it */
    watchdog_stop(&wd);
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&inside), 0);
    cr_assert_geq(bds__shard_stats(s)->sleeps, 2, "the shard blocked while the thread was inside");
    bds__shard_destroy(s);
}
