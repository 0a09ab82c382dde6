/* group.h — the shard threads of one process (internal).
 *
 * One shard per CPU in the process's affinity mask (count overridable), each
 * pinned to its CPU, each ring created on its own thread; shard 0 may be the
 * calling thread. Threads live until their shard's last CQE is reaped, and no
 * shard is destroyed before every shard has stopped running (a bell to a
 * destroyed ring would target a closed fd). */
#ifndef BDS_IO_GROUP_H
#define BDS_IO_GROUP_H

#include "shard.h"

typedef struct bds_group bds_group;

typedef struct bds_group_config {
    uint32_t shards;     /* 0 = CPUs in sched_getaffinity()                         */
    bool use_caller;     /* shard 0 runs on the thread calling bds__group_run       */
    bool pin;            /* pin shard i to the i-th CPU of the affinity mask        */
    bool signals;        /* block SIGTERM/SIGINT, read them on shard 0 (on_signal)  */
    bool sighup;         /* ... and SIGHUP too                                     */
    bds_shard_config shard;
} bds_group_config;

void bds__group_config_default(bds_group_config *cfg);

/* Runs on each shard's own thread right after its ring exists, before any tick:
 * set hooks, open listeners. A non-OK status aborts the whole group. */
typedef bds_status (*bds_on_shard_start_fn)(bds_shard *s, void *ctx);
/* Runs on each shard's thread after its last CQE, before it is destroyed. */
typedef void (*bds_on_shard_exit_fn)(bds_shard *s, void *ctx);

/* Creates every shard (each on its thread) and returns once all are ready or
 * one failed: then every started shard is stopped and joined, and err holds the
 * first failure's message. Thread: any (becomes shard 0 if use_caller). */
bds_status bds__group_start(bds_group **out, const bds_group_config *cfg, bds_on_shard_start_fn on_start,
                            bds_on_shard_exit_fn on_exit, void *ctx, char *err, size_t err_len);
/* With use_caller, runs shard 0 here until it stops; then joins every thread.
 * Returns once every shard has been destroyed. */
void bds__group_run(bds_group *g);
/* Asks every shard to stop. Thread: any; async-signal-safe. */
void bds__group_stop(bds_group *g);
/* Frees the group after bds__group_run returned. NULL is a no-op. */
void bds__group_destroy(bds_group *g);

/* Any thread, for a stall report: every shard still running (bds__shard_dump,
 * with its dump hook); a shard whose run ended is listed as such. Safe until
 * bds__group_destroy. */
void bds__group_dump(bds_group *g, FILE *f);

uint32_t bds__group_size(const bds_group *g);
/* Shard i; valid between bds__group_start and the end of bds__group_run. */
bds_shard *bds__group_shard(const bds_group *g, uint32_t i);

#endif
