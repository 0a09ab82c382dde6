/* bench_io_pipe.c — the pipeline across shards: cross-shard hand-off cost.
 *
 * Two shards. Shard 0 is home to one session; its messages' keys all hash to
 * shard 0 (local: every hop is a function call) or all to shard 1 (cross:
 * EXEC/DONE/REPLY through the MPSC inboxes and doorbells). Two shapes:
 *   throughput: W messages in flight, handlers finish at once;
 *   round trip: one message at a time (the latency of a hop and back).
 * Each runs with MSG_RING bells and with eventfd bells, alternating, best of
 * three; one JSON line per case, then the ratios.
 * Usage: bench_io_pipe [messages=400000] [window=256] */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "group.h"
#include "shard_pipeline.h"
#include "pipeline_int.h"

struct run {
    uint32_t messages, window;
    bool cross;
    bds_bell_mode bell;
    /* state */
    bds_shard_pipelines *pg;
    bds_shard_pipeline *pipes[2];
    bds_shard *shards[2];
    bds_session *s;
    uint64_t sent, done;
    char key[8];
    uint32_t key_len;
    uint64_t t0, t1;
    bool finished;
};

static struct run R;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void handler(bds_call *call, void *ctx) {
    (void)ctx;
    bds_call_done(call, BDS_OK, NULL);
}
static void op_write(bds_session *s, bds_reply *r, void *c) { (void)c, bds_session_reply_written(s, r); }
static void op_drop(bds_session *s, bds_reply *r, void *c) { (void)s, (void)r, (void)c; }
static void op_release(bds_session *s, void *p, void *c) {
    (void)s, (void)p, (void)c;
    R.done++;
}
static void op_closed(bds_session *s, bds_status st, const char *m, void *c) {
    (void)st, (void)m, (void)c;
    bds_session_release(s);
    R.t1 = now_ns();
    R.finished = true;
    bds__shard_request_stop(R.shards[0]);
    bds__shard_request_stop(R.shards[1]);
}
static const bds_session_ops ops = {.write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed};

static bool hook_run(bds_shard *sh, void *ctx) {
    bds_shard_pipeline *p = ctx;
    bool more = bds__shard_pipeline_run(p, 1024);
    if (bds__shard_id(sh) != 0 || !R.s || R.finished) return more;
    while (R.sent < R.messages && R.sent - R.done < R.window) {
        bds_session_receive(R.s, NULL, 0, R.key, R.key_len, R.sent++);
    }
    if (R.sent == R.messages && R.done == R.messages && bds_session_get_state(R.s) == BDS_STATE_OPEN) {
        bds_session_client_close(R.s);
    }
    return more || R.sent < R.messages;
}
static bool hook_drain(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_drain(ctx, 1024);
}
static bool hook_sleep(bds_shard *s, void *ctx) {
    /* shard 0 generates the load: it may sleep only once everything is sent */
    if (bds__shard_id(s) == 0 && R.s && R.sent < R.messages && R.sent - R.done < R.window) return false;
    return bds__shard_pipeline_prepare_sleep(ctx);
}
static void hook_woken(bds_shard *s, void *ctx) {
    (void)s;
    bds__shard_pipeline_woken(ctx);
}
static bool hook_quiet(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_idle(ctx);
}

static bds_status on_start(bds_shard *s, void *ctx) {
    (void)ctx;
    uint32_t id = bds__shard_id(s);
    R.shards[id] = s;
    if (bds__shard_pipeline_attach(R.pg, s, &R.pipes[id]) != BDS_OK) return BDS_E_NOMEM;
    bds_shard_hooks h = {.drain_inbox = hook_drain, .run_work = hook_run, .prepare_sleep = hook_sleep,
                         .woken = hook_woken, .quiescent = hook_quiet, .ctx = R.pipes[id]};
    bds__shard_set_hooks(s, &h);
    if (id == 0) {
        bds_pipeline *p = bds__shard_pipeline_get(R.pipes[0]);
        /* a key that executes where the case wants it */
        for (int i = 0;; i++) {
            R.key_len = (uint32_t)snprintf(R.key, sizeof R.key, "k%d", i);
            if (bds_pipeline_key_shard(p, R.key, R.key_len) == (R.cross ? 1u : 0u)) break;
        }
        bds_options o = bds_default_options();
        o.inbound.ordering.mode = BDS_ORDERING_KEYED_FIFO;
        o.inbound.ordering.capacity = 0;
        o.inbound.backpressure.capacity = 0;
        o.inbound.backpressure.queue_capacity = 0;
        bds_session_config sc;
        bds_session_config_default(&sc);
        sc.options = &o;
        sc.handler = handler;
        sc.ops = &ops;
        if (bds_session_create(&R.s, p, &sc, NULL) != BDS_OK) return BDS_E_NOMEM;
        bds_session_open(R.s);
        R.t0 = now_ns();
    }
    return BDS_OK;
}

static double run_case(uint32_t messages, uint32_t window, bool cross, bds_bell_mode bell) {
    memset(&R, 0, sizeof R);
    R.messages = messages;
    R.window = window;
    R.cross = cross;
    R.bell = bell;
    uint64_t seed[2] = {1, 2};
    R.pg = bds__shard_pipelines_create(2, seed);
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = 2;
    cfg.pin = true;
    cfg.shard.bufs = 0;
    cfg.shard.bell = bell;
    bds_group *g;
    char err[256];
    if (bds__group_start(&g, &cfg, on_start, NULL, NULL, err, sizeof err) != BDS_OK) {
        fprintf(stderr, "bench_io_pipe: %s\n", err);
        exit(1);
    }
    bds__group_run(g);
    bds__group_destroy(g);
    bds__shard_pipeline_detach(R.pipes[0]);
    bds__shard_pipeline_detach(R.pipes[1]);
    bds__shard_pipelines_destroy(R.pg);
    return (double)(R.t1 - R.t0);
}

int main(int argc, char **argv) {
    uint32_t messages = argc > 1 ? (uint32_t)atoi(argv[1]) : 400000;
    uint32_t window = argc > 2 ? (uint32_t)atoi(argv[2]) : 256;
    const char *bells[] = {"msg_ring", "eventfd"};
    double best[2][2][2]; /* [bell][cross][shape: 0 throughput, 1 round trip] */
    for (int i = 0; i < 8; i++) ((double *)best)[i] = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        for (int b = 0; b < 2; b++) {
            for (int c = 0; c < 2; c++) {
                double t = run_case(messages, window, c, (bds_bell_mode)b);
                if (t < best[b][c][0]) best[b][c][0] = t;
                double rt = run_case(messages / 20, 1, c, (bds_bell_mode)b);
                if (rt < best[b][c][1]) best[b][c][1] = rt;
            }
        }
    }
    for (int b = 0; b < 2; b++) {
        for (int c = 0; c < 2; c++) {
            printf("{\"bench\":\"io_pipe\",\"bell\":\"%s\",\"placement\":\"%s\",\"msgs_per_s\":%.0f,"
                   "\"round_trip_ns\":%.0f,\"window\":%u}\n",
                   bells[b], c ? "cross" : "local", messages / (best[b][c][0] / 1e9), best[b][c][1] / (messages / 20),
                   window);
        }
    }
    printf("cross/local throughput (msg_ring) = %.2f; msg_ring/eventfd cross throughput = %.2f; "
           "cross round trip msg_ring/eventfd = %.2f\n",
           best[0][0][0] / best[0][1][0], best[1][1][0] / best[0][1][0], best[0][1][1] / best[1][1][1]);
    return 0;
}
