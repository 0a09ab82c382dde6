/* test_shard_pipeline.c — the pipeline on real shards: keyed FIFO across 2 shards
 * through the MPSC inboxes, staging, doorbells (MSG_RING and eventfd) and the
 * shard's timer heap. Sessions on both shards send over a million messages on
 * many keys (fewer under TSan); handlers finish at once, after a timer on the
 * key's shard, or from a foreign thread. Checks: every message answered
 * exactly once, a key's calls start in arrival order, sessions end OK after
 * the half-close, nothing leaks, and the shards then stop cleanly.
 * A shutdown variant stops every session halfway with work in flight, some of
 * it longer than the grace period: every admitted message is still answered
 * or reported (released once, counted once), replies are written or dropped,
 * sessions end OK or UNAVAILABLE, and nothing leaks.
 * BDS_TEST_TSAN */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "group.h"
#include "shard_pipeline.h"
#include "pipeline_int.h"
#include "watchdog.h"

#define SHARDS 2
#define SESSIONS 4
#define KEYS 64
#ifdef __SANITIZE_THREAD__
#define MSGS 5000u
#else
#define MSGS 140000u /* x 8 sessions = 1.12 M messages */
#endif

typedef struct tmsg {
    uint32_t session; /* global */
    uint32_t key;
    uint64_t seq;
    char kb[4];
} tmsg;

typedef struct tshard {
    bds_shard *shard;
    bds_shard_pipeline *pipe;
    bds_session *s[SESSIONS];
    uint64_t sent[SESSIONS];
    int closed[SESSIONS];
    uint64_t replies, released, expected_replies;
    int64_t last[SHARDS * SESSIONS][KEYS]; /* starts seen on this shard (as K) */
    uint64_t order_errors;
    bool half_closed, done;
    unsigned seed;
    uint64_t replies_made, replies_dropped;
    bds_status close_status[SESSIONS];
    bds_session_stats stats[SESSIONS];
} tshard;

static tshard shards[SHARDS];
static bds_group *group;
static bds_shard *_Atomic shard_ptr[SHARDS]; /* for the last shard done to stop them all */
static _Atomic int shards_done;
static bool shutdown_mode; /* shut sessions down halfway instead of half-closing at the end */
#define SLOW_WORK_NS (50u * 1000 * 1000) /* longer than the shutdown variant's grace period */
#define GRACE_NS (10u * 1000 * 1000)

/* foreign completions */
static pthread_mutex_t fmu = PTHREAD_MUTEX_INITIALIZER;
static bds_call **fq;
static size_t fq_n, fq_cap;
static _Atomic int fstop;

static _Atomic uint64_t replies_made_total;
static _Atomic uint64_t progress; /* payloads released, on any shard: the watchdog's clock */
static watchdog wd;

struct work {
    bds_timer t;
    bds_call *call;
};

static void reply_and_done(bds_call *call) {
    bds_reply *r = calloc(1, sizeof *r);
    /* counted where the reply is made: the home shard counts what it gets back */
    atomic_fetch_add_explicit(&replies_made_total, 1, memory_order_relaxed);
    bds_call_reply(call, r);
    bds_call_done(call, BDS_OK, NULL);
}

static void work_fired(bds_timer *t, void *ctx) {
    (void)t;
    struct work *w = ctx;
    reply_and_done(w->call);
    free(w);
}

static void handler(bds_call *call, void *ctx) {
    (void)ctx;
    bds_shard *me = bds__shard_self();
    tshard *ts = &shards[bds__shard_id(me)];
    tmsg *m = bds_call_payload(call);
    int64_t *last = &ts->last[m->session][m->key];
    if ((int64_t)m->seq <= *last) ts->order_errors++;
    *last = (int64_t)m->seq;
    switch (m->seq % 4) {
    case 0: reply_and_done(call); break;
    case 1: {
        struct work *w = malloc(sizeof *w);
        w->call = call;
        bds__timer_init(&w->t, work_fired, w);
        /* slow work only at the end, so it is in flight when the shutdown comes */
        bool slow = shutdown_mode && m->seq % 8 == 1 && m->seq + 64 >= MSGS / 2;
        uint64_t ns = slow ? SLOW_WORK_NS : (m->seq % 50) * 1000;
        bds__timer_arm(bds__shard_timers(me), &w->t, bds__shard_now(me) + ns);
        break;
    }
    case 2:
        pthread_mutex_lock(&fmu);
        if (fq_n == fq_cap) {
            fq_cap = fq_cap ? fq_cap * 2 : 1024;
            fq = realloc(fq, fq_cap * sizeof *fq);
        }
        fq[fq_n++] = call;
        pthread_mutex_unlock(&fmu);
        break;
    default: bds_call_done(call, BDS_OK, NULL); break;
    }
}

static void *foreign(void *arg) {
    (void)arg;
    bds_call *batch[256];
    while (!atomic_load(&fstop)) {
        pthread_mutex_lock(&fmu);
        size_t n = fq_n < 256 ? fq_n : 256;
        if (n) memcpy(batch, fq + fq_n - n, n * sizeof *batch);
        fq_n -= n;
        pthread_mutex_unlock(&fmu);
        if (!n) sched_yield();
        for (size_t i = 0; i < n; i++) reply_and_done(batch[i]);
    }
    return NULL;
}

static tshard *ts_of(bds_session *s) { return bds_session_ctx(s); }

static void op_write(bds_session *s, bds_reply *r, void *ctx) {
    (void)ctx;
    ts_of(s)->replies++;
    bds_session_reply_written(s, r);
    free(r);
}
static void op_drop(bds_session *s, bds_reply *r, void *ctx) {
    (void)ctx;
    ts_of(s)->replies_dropped++;
    free(r);
}
static void op_release(bds_session *s, void *p, void *ctx) {
    (void)ctx;
    ts_of(s)->released++;
    atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    free(p);
}
static void op_closed(bds_session *s, bds_status st, const char *msg, void *ctx) {
    (void)msg, (void)ctx;
    tshard *ts = ts_of(s);
    for (int i = 0; i < SESSIONS; i++) {
        if (ts->s[i] == s) {
            ts->closed[i] = st == BDS_OK ? 1 : -1;
            ts->close_status[i] = st;
        }
    }
}
static const bds_session_ops ops = {.write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed};

static bool hook_run(bds_shard *sh, void *ctx) {
    tshard *ts = ctx;
    bool more = bds__shard_pipeline_run(ts->pipe, 512);
    if (ts->done) return more;
    bool all_sent = true;
    uint64_t quota = shutdown_mode ? MSGS / 2 : MSGS;
    for (int i = 0; i < SESSIONS; i++) {
        for (int k = 0; k < 64 && ts->sent[i] < quota; k++) {
            if (bds_session_inbound_room(ts->s[i]) == 0) break; /* a transport stops reading */
            tmsg *m = calloc(1, sizeof *m);
            m->session = bds__shard_id(sh) * SESSIONS + (uint32_t)i;
            m->key = (uint32_t)rand_r(&ts->seed) % KEYS;
            m->seq = ts->sent[i]++;
            m->kb[0] = 'k';
            m->kb[1] = (char)(m->key / 8 + 'a');
            m->kb[2] = (char)(m->key % 8 + 'a');
            ts->expected_replies += m->seq % 4 != 3;
            cr_assert_eq(bds_session_receive(ts->s[i], m, sizeof *m, m->kb, 3, m->seq), BDS_OK);
        }
        all_sent &= ts->sent[i] == quota;
    }
    if (all_sent && !ts->half_closed) {
        ts->half_closed = true;
        for (int i = 0; i < SESSIONS; i++) {
            if (shutdown_mode)
                bds_session_shutdown(ts->s[i]);
            else
                bds_session_client_close(ts->s[i]);
        }
    }
    int open = 0;
    uint64_t sent = 0;
    for (int i = 0; i < SESSIONS; i++) {
        open += ts->closed[i] == 0;
        sent += ts->sent[i];
    }
    /* Work outlives a forced close: wait until every payload came back. */
    if (ts->half_closed && open == 0 && ts->released == sent) {
        for (int i = 0; i < SESSIONS; i++) {
            bds_session_get_stats(ts->s[i], &ts->stats[i]);
            bds_session_release(ts->s[i]);
        }
        ts->done = true;
        if (atomic_fetch_add(&shards_done, 1) + 1 == SHARDS) {
            for (int i = 0; i < SHARDS; i++) bds__shard_request_stop(atomic_load(&shard_ptr[i]));
        }
        return true;
    }
    return true; /* still feeding or waiting for the drain */
}

static bool hook_drain(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_drain(((tshard *)ctx)->pipe, 512);
}
static bool hook_prepare_sleep(bds_shard *s, void *ctx) {
    (void)s;
    tshard *ts = ctx;
    return ts->done && bds__shard_pipeline_prepare_sleep(ts->pipe);
}
static void hook_woken(bds_shard *s, void *ctx) {
    (void)s;
    bds__shard_pipeline_woken(((tshard *)ctx)->pipe);
}
static bool hook_quiescent(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_idle(((tshard *)ctx)->pipe);
}

/* The watchdog's view of a shard (another thread: racy reads of the test's
 * own counters, for a human). */
static void hook_dump(bds_shard *s, FILE *f, void *ctx) {
    (void)s;
    tshard *ts = ctx;
    bds__shard_pipeline_dump(ts->pipe, f);
    fprintf(f, "  test: done %d, half-closed %d, released %llu, replies %llu of %llu expected\n", (int)ts->done,
            (int)ts->half_closed, (unsigned long long)ts->released, (unsigned long long)ts->replies,
            (unsigned long long)ts->expected_replies);
    for (int i = 0; i < SESSIONS && !ts->done; i++) {
        bds_session_stats st;
        bds_session_get_stats(ts->s[i], &st);
        fprintf(f,
                "  session %d: sent %llu, closed %d, admitted %llu, completed %llu, executing %u, "
                "tokens free %u held %u, waiting hw %u\n",
                i, (unsigned long long)ts->sent[i], ts->closed[i], (unsigned long long)st.admitted,
                (unsigned long long)st.completed, st.executing, st.tokens_free, st.tokens_held, st.waiting_hw);
    }
    pthread_mutex_lock(&fmu);
    fprintf(f, "  foreign queue: %zu calls\n", fq_n);
    pthread_mutex_unlock(&fmu);
}

static uint64_t progress_released(void *ctx) {
    (void)ctx;
    return atomic_load_explicit(&progress, memory_order_relaxed);
}

static void dump_group(FILE *f, void *ctx) {
    (void)ctx;
    bds__group_dump(group, f);
}

static bds_shard_pipelines *pg;

static bds_status on_start(bds_shard *s, void *ctx) {
    (void)ctx;
    tshard *ts = &shards[bds__shard_id(s)];
    ts->shard = s;
    atomic_store(&shard_ptr[bds__shard_id(s)], s);
    ts->seed = bds__shard_id(s) + 1;
    memset(ts->last, 0xff, sizeof ts->last);
    cr_assert_eq(bds__shard_pipeline_attach(pg, s, &ts->pipe), BDS_OK);
    bds_options o = bds_default_options();
    o.inbound.backpressure.capacity = 8;
    o.shutdown.grace_period_ns = GRACE_NS;
    bds_session_config sc;
    bds_session_config_default(&sc);
    sc.options = &o;
    sc.handler = handler;
    sc.ops = &ops;
    sc.ops_ctx = ts;
    for (int i = 0; i < SESSIONS; i++) {
        cr_assert_eq(bds_session_create(&ts->s[i], bds__shard_pipeline_get(ts->pipe), &sc, NULL), BDS_OK);
        bds_session_open(ts->s[i]);
    }
    bds_shard_hooks h = {.drain_inbox = hook_drain, .run_work = hook_run, .prepare_sleep = hook_prepare_sleep,
                         .woken = hook_woken, .quiescent = hook_quiescent, .dump = hook_dump, .ctx = ts};
    bds__shard_set_hooks(s, &h);
    return BDS_OK;
}

static void on_exit_shard(bds_shard *s, void *ctx) {
    (void)ctx;
    tshard *ts = &shards[bds__shard_id(s)];
    bds_pipeline_stats st;
    bds_pipeline_get_stats(bds__shard_pipeline_get(ts->pipe), &st);
    cr_assert_eq(st.sessions_live + st.calls_live + st.keys_exec_live + st.keys_home_live, 0, "leak on shard");
    /* The pipe (its inbox) lives until every shard has stopped: another shard
     * may still be finishing a push into it. */
}

static void run(bds_bell_mode bell, bool shutdown) {
    shutdown_mode = shutdown;
    atomic_store(&replies_made_total, 0);
    memset(shards, 0, sizeof shards);
    atomic_store(&shards_done, 0);
    atomic_store(&fstop, 0);
    uint64_t seed[2] = {7, 9};
    pg = bds__shard_pipelines_create(SHARDS, seed);
    pthread_t f;
    pthread_create(&f, NULL, foreign, NULL);
    bds_group_config cfg;
    bds__group_config_default(&cfg);
    cfg.shards = SHARDS;
    cfg.shard.bufs = 0;
    cfg.shard.bell = bell;
    char err[256] = "";
    cr_assert_eq(bds__group_start(&group, &cfg, on_start, on_exit_shard, NULL, err, sizeof err), BDS_OK, "%s", err);
    watchdog_start(&wd, "every message answered and the shards stopped", 20, 280, progress_released, dump_group, NULL);
    bds__group_run(group);
    watchdog_stop(&wd);
    bds__group_destroy(group);
    for (int i = 0; i < SHARDS; i++) bds__shard_pipeline_detach(shards[i].pipe);
    atomic_store(&fstop, 1);
    pthread_join(f, NULL);
    bds__shard_pipelines_destroy(pg);
    uint64_t replies = 0, expected = 0, released = 0, dropped_replies = 0, unavailable = 0;
    for (int i = 0; i < SHARDS; i++) {
        cr_assert_eq(shards[i].order_errors, 0, "a key's calls started out of order");
        for (int k = 0; k < SESSIONS; k++) {
            const bds_session_stats *st = &shards[i].stats[k];
            if (shutdown) {
                bds_status cs = shards[i].close_status[k];
                cr_assert(cs == BDS_OK || bds_status_grpc(cs) == 14, "shutdown ends OK or UNAVAILABLE, not %s",
                          bds_status_name(cs));
                unavailable += cs != BDS_OK;
            } else {
                cr_assert_eq(shards[i].closed[k], 1, "every session ends OK");
            }
            /* every admitted message is reported exactly once */
            cr_assert_eq(st->admitted, shards[i].sent[k]);
            cr_assert_eq(st->completed + st->failed + st->nonterminal_failures + st->panics + st->dropped,
                         st->admitted, "admitted %lu, completed %lu, dropped %lu", (unsigned long)st->admitted,
                         (unsigned long)st->completed, (unsigned long)st->dropped);
        }
        replies += shards[i].replies;
        expected += shards[i].expected_replies;
        released += shards[i].released;
        dropped_replies += shards[i].replies_dropped;
    }
    uint64_t quota = shutdown ? MSGS / 2 : MSGS;
    cr_assert_eq(released, (uint64_t)SHARDS * SESSIONS * quota, "every message answered exactly once");
    if (shutdown) {
        /* work longer than the grace period was in flight: the grace expired */
        cr_assert_gt(unavailable, 0);
        cr_assert_eq(replies + dropped_replies, atomic_load(&replies_made_total),
                     "every reply made is written or dropped, once");
        cr_log_info("shutdown: %lu replies written, %lu dropped, %lu of %d sessions UNAVAILABLE",
                    (unsigned long)replies, (unsigned long)dropped_replies, (unsigned long)unavailable,
                    SHARDS * SESSIONS);
    } else {
        cr_assert_eq(replies, expected, "every reply written exactly once");
    }
    free(fq);
    fq = NULL;
    fq_n = fq_cap = 0;
}

Test(io_pipe, keyed_fifo_across_two_shards_with_msg_ring_bells, .timeout = 300) { run(BDS_BELL_MSG_RING, false); }

Test(io_pipe, keyed_fifo_across_two_shards_with_eventfd_bells, .timeout = 300) { run(BDS_BELL_EVENTFD, false); }

Test(io_pipe, shutdown_with_work_in_flight_answers_or_reports_everything_and_leaks_nothing, .timeout = 300) {
    run(BDS_BELL_MSG_RING, true);
}
