/* group.c — shard threads: start handshake, pinning, run, the stop barrier.
 *
 * Start: each thread pins itself, creates its shard (ring on that thread), runs
 * on_start, reports under the mutex and waits for "go" so no shard runs (and
 * rings another) before every shard exists. A failure anywhere turns "go" into
 * "stop at once". Stop: bds__group_stop sets each shard's stop flag and writes
 * its eventfd. Each shard runs until its last CQE, then waits until every shard
 * has stopped running before destroying its ring (bells between live rings
 * only). Ownership: the group owns the shard pointers and the threads; each
 * shard is created and destroyed by its own thread. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "group.h"

struct bds_group {
    bds_group_config cfg;
    uint32_t n;
    bds_shard **shards;
    pthread_t *threads;
    int *cpus;             /* cpus[i]: the CPU shard i is pinned to */
    bds_on_shard_start_fn on_start;
    bds_on_shard_exit_fn on_exit;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t ready, stopped; /* under mu */
    bool *ran;               /* under mu: shard i's run ended (its hooks' state may be gone) */
    bool go, abort;          /* under mu */
    bds_status first_err;    /* under mu */
    char err[256];           /* under mu */
    bool caller_pinned;
    cpu_set_t caller_mask;
};

void bds__group_config_default(bds_group_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->pin = true;
    bds__shard_config_default(&cfg->shard);
}

uint32_t bds__group_size(const bds_group *g) { return g->n; }
bds_shard *bds__group_shard(const bds_group *g, uint32_t i) {
    BDS_ASSERT(i < g->n);
    return g->shards[i];
}

static void group_pin(bds_group *g, uint32_t i) {
    if (!g->cfg.pin || g->cpus[i] < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(g->cpus[i], &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set); /* best effort */
}

/* Creates shard i on this thread and reports. Returns it, or NULL on failure. */
static bds_shard *group_create_shard(bds_group *g, uint32_t i) {
    char err[256] = "";
    bds_shard *s = NULL;
    group_pin(g, i);
    bds_status st = bds__shard_create(&s, i, &g->cfg.shard, err, sizeof(err));
    if (st == BDS_OK && i == 0 && g->cfg.signals)
        st = bds__shard_enable_signals(s, g->cfg.sighup);
    if (st == BDS_OK && g->on_start)
        st = g->on_start(s, g->ctx);
    pthread_mutex_lock(&g->mu);
    g->shards[i] = s;
    if (st != BDS_OK && !g->abort) {
        g->abort = true;
        g->first_err = st;
        snprintf(g->err, sizeof(g->err), "%s", err[0] ? err : bds_status_str(st));
    }
    g->ready++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return s;
}

/* Runs a created shard to its end, waits for the others, destroys it. */
static void group_finish_shard(bds_group *g, uint32_t i, bds_shard *s) {
    pthread_mutex_lock(&g->mu);
    while (!g->go && !g->abort)
        pthread_cond_wait(&g->cv, &g->mu);
    bool abort = g->abort;
    pthread_mutex_unlock(&g->mu);
    if (s) {
        if (abort)
            bds__shard_request_stop(s);
        bds__shard_run(s);
        if (g->on_exit)
            g->on_exit(s, g->ctx);
    }
    pthread_mutex_lock(&g->mu);
    g->ran[i] = true;
    g->stopped++;
    pthread_cond_broadcast(&g->cv);
    while (g->stopped < g->n)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    bds__shard_destroy(s);
}

struct group_arg { bds_group *g; uint32_t i; };

static void *group_thread(void *p) {
    struct group_arg a = *(struct group_arg *)p;
    free(p);
    bds_shard *s = group_create_shard(a.g, a.i);
    group_finish_shard(a.g, a.i, s);
    return NULL;
}

static uint32_t group_cpus(bds_group *g, uint32_t want) {
    cpu_set_t set;
    int list[CPU_SETSIZE], nc = 0;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &set))
                list[nc++] = c;
    uint32_t n = want ? want : (nc > 0 ? (uint32_t)nc : 1);
    if (n > BDS_SHARDS_MAX)
        n = BDS_SHARDS_MAX;
    g->cpus = calloc(n, sizeof(int));
    if (g->cpus)
        for (uint32_t i = 0; i < n; i++)
            g->cpus[i] = nc > 0 ? list[i % (uint32_t)nc] : -1;
    return n;
}

static bds_status group_alloc(bds_group **out, const bds_group_config *cfg) {
    bds_group *g = calloc(1, sizeof(*g));
    if (!g)
        return BDS_E_NOMEM;
    g->cfg = *cfg;
    g->n = group_cpus(g, cfg->shards);
    g->shards = calloc(g->n, sizeof(*g->shards));
    g->threads = calloc(g->n, sizeof(*g->threads));
    g->ran = calloc(g->n, sizeof(*g->ran));
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    *out = g;
    if (!g->cpus || !g->shards || !g->threads || !g->ran)
        return BDS_E_NOMEM;
    return BDS_OK;
}

static void group_spawn(bds_group *g, uint32_t first) {
    for (uint32_t i = first; i < g->n; i++) {
        struct group_arg *a = malloc(sizeof(*a));
        if (a)
            *a = (struct group_arg){g, i};
        int rc = a ? pthread_create(&g->threads[i], NULL, group_thread, a) : -1;
        if (rc != 0) {
            free(a);
            pthread_mutex_lock(&g->mu);
            if (!g->abort) {
                g->abort = true;
                g->first_err = BDS_E_NOMEM;
                snprintf(g->err, sizeof(g->err), "bidistream: cannot create shard thread %u", i);
            }
            g->ready++;
            g->stopped++; /* no thread: counts as created (NULL) and finished */
            pthread_cond_broadcast(&g->cv);
            pthread_mutex_unlock(&g->mu);
            g->threads[i] = 0;
        }
    }
}

bds_status bds__group_start(bds_group **out, const bds_group_config *cfg, bds_on_shard_start_fn on_start,
                            bds_on_shard_exit_fn on_exit, void *ctx, char *err, size_t err_len) {
    *out = NULL;
    bds_group *g = NULL;
    bds_status st = group_alloc(&g, cfg);
    if (st != BDS_OK) {
        bds__group_destroy(g);
        return st;
    }
    g->on_start = on_start;
    g->on_exit = on_exit;
    g->ctx = ctx;
    if (cfg->signals)
        bds__signals_block(cfg->sighup); /* before any thread exists: they inherit the mask */
    if (cfg->use_caller && cfg->pin) {
        g->caller_pinned = pthread_getaffinity_np(pthread_self(), sizeof(g->caller_mask), &g->caller_mask) == 0;
    }
    group_spawn(g, cfg->use_caller ? 1 : 0);
    if (cfg->use_caller)
        (void)group_create_shard(g, 0);
    pthread_mutex_lock(&g->mu);
    while (g->ready < g->n)
        pthread_cond_wait(&g->cv, &g->mu);
    g->go = !g->abort;
    st = g->abort ? g->first_err : BDS_OK;
    if (st != BDS_OK && err && err_len)
        snprintf(err, err_len, "%s", g->err);
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    if (st != BDS_OK) {
        bds__group_run(g); /* every created shard stops at once and is destroyed */
        bds__group_destroy(g);
        return st;
    }
    *out = g;
    return BDS_OK;
}

void bds__group_run(bds_group *g) {
    if (g->cfg.use_caller) {
        pthread_mutex_lock(&g->mu);
        bds_shard *s0 = g->shards[0];
        pthread_mutex_unlock(&g->mu);
        group_finish_shard(g, 0, s0);
        if (g->caller_pinned)
            (void)pthread_setaffinity_np(pthread_self(), sizeof(g->caller_mask), &g->caller_mask);
    }
    for (uint32_t i = g->cfg.use_caller ? 1 : 0; i < g->n; i++) {
        if (g->threads[i])
            pthread_join(g->threads[i], NULL);
        g->threads[i] = 0;
    }
}

void bds__group_stop(bds_group *g) {
    /* Reading shards[] without the mutex: every entry was written before "go"
     * (under mu, which the start call also took), and stays until run returns. */
    for (uint32_t i = 0; i < g->n; i++)
        if (g->shards[i])
            bds__shard_request_stop(g->shards[i]);
}

void bds__group_dump(bds_group *g, FILE *f) {
    /* Under mu: a shard whose run ended may free its hooks' state, and is
     * destroyed only after every shard has passed the barrier, which takes mu. */
    pthread_mutex_lock(&g->mu);
    fprintf(f, "group: %u shards, %u ready, %u finished running\n", g->n, g->ready, g->stopped);
    for (uint32_t i = 0; i < g->n; i++) {
        if (!g->shards[i])
            fprintf(f, "shard %u: not created\n", i);
        else if (g->ran[i])
            fprintf(f, "shard %u: run ended, waiting for the others\n", i);
        else
            bds__shard_dump(g->shards[i], f);
    }
    pthread_mutex_unlock(&g->mu);
    fflush(f);
}

void bds__group_destroy(bds_group *g) {
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->shards);
    free(g->threads);
    free(g->ran);
    free(g->cpus);
    free(g);
}
