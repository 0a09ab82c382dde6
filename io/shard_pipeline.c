/* shard_pipeline.c — see shard_pipeline.h. Ownership: each shard pipeline (pipeline, inbox memory, staging)
 * is created, used and freed on its shard's thread; only the inbox is touched
 * by other threads, through the MPSC ring's own protocol. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "mpsc.h"
#include "shard_pipeline.h"
#include "pipeline_int.h"

#define INBOX_SLOTS 4096u
#define DRAIN_CHUNK 64u

struct stage {
    void **v;
    uint32_t n, cap;
};

struct bds_shard_pipeline {
    bds_shard_pipelines *g;
    uint32_t id;
    bds_shard *shard;
    bds_pipeline *p;
    bds_mpsc inbox;
    void *inbox_mem;
    struct stage *stage;      /* per destination */
    uint32_t staged;          /* messages in all stages */
    bds_flusher flusher;
    _Atomic uint32_t foreign_posters; /* non-shard threads between push and wake */
};

struct bds_shard_pipelines {
    uint32_t n;
    uint64_t seed[2];
    /* Written by each shard at attach, before the group runs traffic; read by
     * any thread posting. Shards attach before any session exists. */
    bds_shard_pipeline *_Atomic pipes[BDS_SHARDS_MAX];
};

bds_shard_pipelines *bds__shard_pipelines_create(uint32_t n, const uint64_t seed[2]) {
    BDS_ASSERT(n >= 1 && n <= 64);
    bds_shard_pipelines *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->n = n;
    if (seed && (seed[0] || seed[1])) {
        g->seed[0] = seed[0];
        g->seed[1] = seed[1];
    } else {
        bds_hash_seed hs;
        bds__hash_seed_random(&hs);
        g->seed[0] = hs.k0;
        g->seed[1] = hs.k1 | 1;
    }
    return g;
}

void bds__shard_pipelines_destroy(bds_shard_pipelines *g) { free(g); }

static uint64_t pipe_now(void *ctx) { return bds__shard_now(((bds_shard_pipeline *)ctx)->shard); }

static void pipe_flush(bds_flusher *f);

/* port.post: any thread. */
static void pipe_post(uint32_t dst, void *msg, void *ctx) {
    bds_shard_pipeline *self = ctx;
    bds_shard_pipelines *g = self->g;
    bds_shard_pipeline *to = atomic_load_explicit(&g->pipes[dst], memory_order_acquire);
    BDS_ASSERT(to != NULL);
    bds_shard *cur = bds__shard_self();
    bds_shard_pipeline *mine = NULL;
    if (cur && bds__shard_id(cur) < g->n) {
        /* acquire: pairs with the release in attach */
        mine = atomic_load_explicit(&g->pipes[bds__shard_id(cur)], memory_order_acquire);
        if (mine && mine->shard != cur) mine = NULL;
    }
    if (mine) { /* a shard of ours: stage, flushed once at the end of the tick */
        struct stage *st = &mine->stage[dst];
        if (st->n == st->cap) {
            uint32_t cap = st->cap ? st->cap * 2 : 64;
            void **v = realloc(st->v, sizeof(void *) * cap);
            BDS_ASSERT(v != NULL); /* a lost protocol message would wedge sessions */
            st->v = v;
            st->cap = cap;
        }
        st->v[st->n++] = msg;
        mine->staged++;
        bds__shard_defer_flush(mine->shard, &mine->flusher);
        return;
    }
    /* A foreign thread: straight into the inbox; it may wait for room (it is
     * not a shard, so no shard waits on it). The target may finish its last
     * work as soon as it pops msg and then shut down, while we still read its
     * latch and write its eventfd: the poster count, raised before the push,
     * keeps it from counting itself idle until we are out. */
    /* seq_cst: raised before the push, so whoever pops msg sees it raised */
    atomic_fetch_add_explicit(&to->foreign_posters, 1, memory_order_seq_cst);
    while (!bds__mpsc_push(&to->inbox, msg)) sched_yield();
    if (bds__mpsc_should_ring(&to->inbox)) bds__shard_wake(to->shard);
    /* Our leaving may be all a stopping shard waits for (bds__shard_pipeline_idle
     * counts us): leave through the shard, which wakes it then. A bare
     * decrement after the shard found the count raised and blocked left it
     * blocked for ever (test_shard_pipeline, 1 run in 6 on one CPU). */
    bds__shard_leave(to->shard, &to->foreign_posters);
}

static void pipe_flush(bds_flusher *f) {
    bds_shard_pipeline *p = BDS_CONTAINER_OF(f, bds_shard_pipeline, flusher);
    for (uint32_t d = 0; d < p->g->n && p->staged; d++) {
        struct stage *st = &p->stage[d];
        if (!st->n) continue;
        bds_shard_pipeline *to = atomic_load_explicit(&p->g->pipes[d], memory_order_acquire);
        uint32_t k = bds__mpsc_push_burst(&to->inbox, st->v, st->n);
        if (k < st->n && bds__mpsc_want_space(&to->inbox, p->id)) {
            k += bds__mpsc_push_burst(&to->inbox, st->v + k, st->n - k);
        }
        if (k) {
            memmove(st->v, st->v + k, sizeof(void *) * (st->n - k));
            st->n -= k;
            p->staged -= k;
            if (bds__mpsc_should_ring(&to->inbox)) bds__shard_bell(p->shard, to->shard);
        }
        /* What is left waits for the target's want_space bell. */
    }
}

bds_status bds__shard_pipeline_attach(bds_shard_pipelines *g, bds_shard *s, bds_shard_pipeline **out) {
    *out = NULL;
    uint32_t id = bds__shard_id(s);
    BDS_ASSERT(id < g->n);
    bds_shard_pipeline *p = calloc(1, sizeof *p);
    if (!p) return BDS_E_NOMEM;
    p->g = g;
    p->id = id;
    p->shard = s;
    p->stage = calloc(g->n, sizeof *p->stage);
    p->inbox_mem = aligned_alloc(BDS_CACHELINE, bds__mpsc_footprint(INBOX_SLOTS));
    if (!p->stage || !p->inbox_mem) {
        free(p->stage);
        free(p->inbox_mem);
        free(p);
        return BDS_E_NOMEM;
    }
    bds__mpsc_init(&p->inbox, p->inbox_mem, INBOX_SLOTS);
    p->flusher.fn = pipe_flush;
    bds_pipeline_config cfg;
    bds_pipeline_config_default(&cfg);
    cfg.index = id;
    cfg.count = g->n;
    cfg.seed[0] = g->seed[0];
    cfg.seed[1] = g->seed[1];
    cfg.port = (bds_pipeline_port){.now_ns = pipe_now, .post = pipe_post, .ctx = p};
    bds_status st = bds_pipeline_create(&p->p, &cfg);
    if (st != BDS_OK) {
        bds__mpsc_deinit(&p->inbox);
        free(p->inbox_mem);
        free(p->stage);
        free(p);
        return st;
    }
    bds__pipeline_share_timers(p->p, bds__shard_timers(s));
    /* release: publishes the pipe to posters on other threads (acquire in pipe_post) */
    atomic_store_explicit(&g->pipes[id], p, memory_order_release);
    *out = p;
    return BDS_OK;
}

void bds__shard_pipeline_detach(bds_shard_pipeline *p) {
    BDS_ASSERT(p->staged == 0);
    bds__pipeline_set_current(p->p);
    bds_pipeline_destroy(p->p);
    bds__pipeline_set_current(NULL);
    bds__mpsc_deinit(&p->inbox);
    free(p->inbox_mem);
    for (uint32_t d = 0; d < p->g->n; d++) free(p->stage[d].v);
    free(p->stage);
    free(p);
}

bds_pipeline *bds__shard_pipeline_get(bds_shard_pipeline *p) { return p->p; }

bool bds__shard_pipeline_drain(bds_shard_pipeline *p, uint32_t budget) {
    void *msgs[DRAIN_CHUNK];
    uint32_t total = 0;
    bds__pipeline_set_current(p->p);
    while (total < budget) {
        uint32_t n = bds__mpsc_pop_burst(&p->inbox, msgs, DRAIN_CHUNK);
        for (uint32_t i = 0; i < n; i++) bds_pipeline_deliver(p->p, msgs[i]);
        total += n;
        if (n < DRAIN_CHUNK) break;
    }
    uint64_t waiting = bds__mpsc_take_want_space(&p->inbox);
    while (waiting) {
        uint32_t id = (uint32_t)__builtin_ctzll(waiting);
        waiting &= waiting - 1;
        bds_shard_pipeline *who = atomic_load_explicit(&p->g->pipes[id], memory_order_acquire);
        if (who) bds__shard_bell(p->shard, who->shard);
    }
    /* A stage left behind by a full inbox retries whenever we are awake. */
    if (p->staged) bds__shard_defer_flush(p->shard, &p->flusher);
    return total >= budget || !bds__mpsc_empty(&p->inbox);
}

bool bds__shard_pipeline_run(bds_shard_pipeline *p, uint32_t budget) {
    bds__pipeline_set_current(p->p);
    bds_pipeline_run(p->p, budget);
    return bds_pipeline_has_work(p->p);
}

bool bds__shard_pipeline_prepare_sleep(bds_shard_pipeline *p) {
    if (bds_pipeline_has_work(p->p)) return false;
    return bds__mpsc_prepare_sleep(&p->inbox);
}

void bds__shard_pipeline_woken(bds_shard_pipeline *p) { bds__mpsc_woken(&p->inbox); }

bool bds__shard_pipeline_idle(bds_shard_pipeline *p) {
    bds_pipeline_stats st;
    bds_pipeline_get_stats(p->p, &st);
    /* seq_cst: the hook's half of the handshake in bds__shard_leave (and an
     * acquire of the poster's last touch of the inbox) */
    return p->staged == 0 && atomic_load_explicit(&p->foreign_posters, memory_order_seq_cst) == 0 &&
           bds__mpsc_empty(&p->inbox) && !bds_pipeline_has_work(p->p) && st.sessions_live == 0 &&
           st.calls_live == 0 && st.keys_exec_live == 0;
}

uint64_t bds__shard_pipeline_inbox_depth(const bds_shard_pipeline *p) { return bds__mpsc_depth(&p->inbox); }

void bds__shard_pipeline_dump(bds_shard_pipeline *p, FILE *f) {
    bds_pipeline_stats st;
    /* a racy copy of plain counters: a snapshot for a human */
    bds_pipeline_get_stats(p->p, &st);
    fprintf(f, "  pipe %u: staged %u, foreign posters %u, ", p->id, __atomic_load_n(&p->staged, __ATOMIC_RELAXED),
            atomic_load_explicit(&p->foreign_posters, memory_order_relaxed));
    bds__mpsc_dump(&p->inbox, f);
    fprintf(f,
            "  pipeline %u: live sessions %llu calls %llu keys home %llu exec %llu; admitted %llu, completed %llu, "
            "failed %llu, dropped %llu, replies written %llu, posted %llu, delivered %llu\n",
            p->id, (unsigned long long)st.sessions_live, (unsigned long long)st.calls_live,
            (unsigned long long)st.keys_home_live, (unsigned long long)st.keys_exec_live,
            (unsigned long long)st.admitted, (unsigned long long)st.completed, (unsigned long long)st.failed,
            (unsigned long long)st.dropped, (unsigned long long)st.replies_written,
            (unsigned long long)st.msgs_posted, (unsigned long long)st.msgs_delivered);
}
