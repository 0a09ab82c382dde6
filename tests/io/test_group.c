/* test_group.c — shard threads start (each ring on its own thread), stop and
 * are joined cleanly; shard 0 on the caller; SIGTERM through the signalfd
 * reaches the on_signal hook on shard 0. BDS_TEST_TSAN */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#include "group.h"

static _Atomic uint32_t started, exited, signalled;
static bds_group *the_group;

static void on_signal(bds_shard *s, int signo, void *ctx) {
    (void)s, (void)ctx;
    if (signo == SIGTERM)
        atomic_fetch_add(&signalled, 1); /* relaxed enough: read after join */
    bds__group_stop(the_group);
}

static bds_status on_start(bds_shard *s, void *ctx) {
    (void)ctx;
    cr_assert_eq(bds__shard_self(), s, "the ring was not created on its own thread");
    bds_shard_hooks h = {.on_signal = on_signal};
    bds__shard_set_hooks(s, &h);
    atomic_fetch_add(&started, 1);
    return BDS_OK;
}

static void on_exit_hook(bds_shard *s, void *ctx) {
    (void)ctx;
    cr_assert_eq(bds__shard_inflight(s), 0);
    atomic_fetch_add(&exited, 1);
}

static void reset(void) {
    atomic_store(&started, 0);
    atomic_store(&exited, 0);
    atomic_store(&signalled, 0);
}

Test(io_group, threads_start_stop_and_join_cleanly, .timeout = 30) {
    reset();
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 3; /* more shards than CPUs: pinning wraps around */
    cfg.shard.sq_entries = 64;
    cfg.shard.bufs = 4;
    char err[256] = "";
    cr_assert_eq(bds__group_start(&the_group, &cfg, on_start, on_exit_hook, NULL, err, sizeof(err)), BDS_OK,
                 "%s", err);
    cr_assert_eq(atomic_load(&started), 3);
    cr_assert_eq(bds__group_size(the_group), 3);
    bds__group_stop(the_group);
    bds__group_run(the_group);
    cr_assert_eq(atomic_load(&exited), 3);
    bds__group_destroy(the_group);
}

static void *send_sigterm(void *arg) {
    (void)arg;
    usleep(10000);
    kill(getpid(), SIGTERM); /* process-directed; every thread blocks it */
    return NULL;
}

Test(io_group, sigterm_on_caller_shard_reaches_hook_and_stops_all, .timeout = 30) {
    reset();
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 2;
    cfg.use_caller = true;
    cfg.signals = true;
    cfg.shard.sq_entries = 64;
    cfg.shard.bufs = 0;
    char err[256] = "";
    cr_assert_eq(bds__group_start(&the_group, &cfg, on_start, on_exit_hook, NULL, err, sizeof(err)), BDS_OK,
                 "%s", err);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, send_sigterm, NULL), 0);
    bds__group_run(the_group); /* shard 0 runs here until the signal stops it */
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&signalled), 1);
    cr_assert_eq(atomic_load(&exited), 2);
    bds__group_destroy(the_group);
}

static bds_status on_start_fail_second(bds_shard *s, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&started, 1);
    return bds__shard_id(s) == 1 ? BDS_E_INVALID : BDS_OK;
}

Test(io_group, failing_start_hook_stops_every_shard_and_reports, .timeout = 30) {
    reset();
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 2;
    cfg.shard.sq_entries = 64;
    cfg.shard.bufs = 0;
    bds_group *g = (bds_group *)1;
    cr_assert_eq(bds__group_start(&g, &cfg, on_start_fail_second, on_exit_hook, NULL, NULL, 0), BDS_E_INVALID);
    cr_assert_null(g);
    cr_assert_eq(atomic_load(&exited), 2);
}
