/* pipeline.c — one thread's pipeline: message routing, the local queue, timers.
 *
 * A pipeline is bound to the thread that created it (a shard). Messages for
 * itself go on the local queue, a ring of tagged pointers that run() drains;
 * messages for another pipeline go through port.post(). Either way handling is
 * deferred, so no callback runs inside the frame that caused it and deep
 * chains (a key whose calls all finish at once) unroll as a loop, not as
 * recursion. The queue grows by doubling when a burst exceeds it and never
 * shrinks, so the steady state allocates nothing. */
#include <string.h>

#include "pipeline_int.h"

_Thread_local bds_pipeline *bds__current_pipeline;
#define current_pipeline bds__current_pipeline

void bds__pipeline_set_current(bds_pipeline *p) { current_pipeline = p; }

uint64_t bds__now(const bds_pipeline *p) { return p->port.now_ns(p->port.ctx); }

void bds_pipeline_config_default(bds_pipeline_config *config) {
    memset(config, 0, sizeof *config);
    config->size = sizeof *config;
    config->index = 0;
    config->count = 1;
}

static bool lq_grow(bds_pipeline *p) {
    uint32_t old_cap = p->lq_mask + 1, cap = old_cap * 2;
    void **nq = bds__alloc_aligned(sizeof(void *) * cap, BDS_CACHELINE);
    if (!nq) return false;
    uint32_t n = p->lq_tail - p->lq_head;
    for (uint32_t i = 0; i < n; i++) nq[i] = p->lq[(p->lq_head + i) & p->lq_mask];
    bds__free(p->lq);
    p->lq = nq;
    p->lq_head = 0;
    p->lq_tail = n;
    p->lq_mask = cap - 1;
    return true;
}

static void lq_push(bds_pipeline *p, void *msg) {
    if (p->lq_tail - p->lq_head == p->lq_mask + 1) {
        /* Out of memory here would lose a protocol message and wedge sessions:
         * there is no safe way on, so stop loudly. */
        BDS_ASSERT(lq_grow(p));
    }
    p->lq[p->lq_tail++ & p->lq_mask] = msg;
}

void bds__post(bds_pipeline *from, uint32_t dst, enum bds__xkind kind, const void *obj) {
    BDS_ASSERT(dst < from->count);
    void *msg = bds__xmsg(kind, obj);
    if (dst == from->index && current_pipeline == from) {
        lq_push(from, msg);
        return;
    }
    from->stats.msgs_posted++;
    from->port.post(dst, msg, from->port.ctx);
}

void bds__post_any(const bds_pipeline *member, uint32_t dst, enum bds__xkind kind, const void *obj) {
    bds_pipeline *cur = current_pipeline;
    if (cur && cur->count == member->count && cur->port.post == member->port.post &&
        cur->port.ctx == member->port.ctx) {
        bds__post(cur, dst, kind, obj); /* a pipeline thread of the same group */
        return;
    }
    BDS_ASSERT(member->port.post != NULL); /* foreign threads need a thread-safe post */
    member->port.post(dst, bds__xmsg(kind, obj), member->port.ctx);
}

bds_status bds_pipeline_create(bds_pipeline **out, const bds_pipeline_config *cfg) {
    *out = NULL;
    if (!cfg || cfg->size < sizeof *cfg || cfg->count == 0 || cfg->count > 64 || cfg->index >= cfg->count ||
        !cfg->port.now_ns || (cfg->count > 1 && !cfg->port.post) ||
        (cfg->count > 1 && cfg->seed[0] == 0 && cfg->seed[1] == 0)) {
        return BDS_E_INVALID;
    }
    bds_pipeline *p = bds__alloc_aligned(sizeof *p, BDS_CACHELINE);
    if (!p) return BDS_E_NOMEM;
    p->index = cfg->index;
    p->count = cfg->count;
    p->port = cfg->port;
    if (cfg->seed[0] || cfg->seed[1]) {
        p->seed.k0 = cfg->seed[0];
        p->seed.k1 = cfg->seed[1];
    } else {
        bds__hash_seed_random(&p->seed);
    }
    p->lq_mask = 255;
    p->lq = bds__alloc_aligned(sizeof(void *) * (p->lq_mask + 1), BDS_CACHELINE);
    bds__pool_init(&p->calls, sizeof(bds_call));
    bds__pool_init(&p->sessions, sizeof(bds_session) + sizeof(((bds_session *)0)->exec[0]) * p->count);
    bds__pool_init(&p->hkeys, sizeof(bds__home_key));
    bds__pool_init(&p->ekeys, sizeof(bds__exec_key));
    bds__pool_init(&p->okeys, sizeof(bds__out_key));
    int rc = bds__timer_heap_init(&p->own_timers, 256);
    p->timers = &p->own_timers;
    rc |= bds__kmap_init(&p->home_keys, 256);
    rc |= bds__kmap_init(&p->exec_keys, 256);
    rc |= bds__kmap_init(&p->out_keys, 64);
    if (rc != 0 || !p->lq) {
        bds_pipeline_destroy(p);
        return BDS_E_NOMEM;
    }
    current_pipeline = p;
    *out = p;
    return BDS_OK;
}

void bds_pipeline_destroy(bds_pipeline *p) {
    if (!p) return;
    BDS_ASSERT(p->lq_head == p->lq_tail);
    if (p->own_timers._v) bds__timer_heap_deinit(&p->own_timers);
    if (p->home_keys._buckets) bds__kmap_deinit(&p->home_keys);
    if (p->exec_keys._buckets) bds__kmap_deinit(&p->exec_keys);
    if (p->out_keys._buckets) bds__kmap_deinit(&p->out_keys);
    bds__pool_deinit(&p->calls);
    bds__pool_deinit(&p->sessions);
    bds__pool_deinit(&p->hkeys);
    bds__pool_deinit(&p->ekeys);
    bds__pool_deinit(&p->okeys);
    bds__free(p->lq);
    if (current_pipeline == p) current_pipeline = NULL;
    bds__free(p);
}

static void pipeline_dispatch(bds_pipeline *p, void *msg) {
    void *obj = bds__xmsg_obj(msg);
    switch (bds__xmsg_kind(msg)) {
    case BDS_XK_EXEC: bds__exec_on_exec(p, obj); break;
    case BDS_XK_GRANT: bds__exec_on_grant(p, obj); break;
    case BDS_XK_CANCEL: bds__exec_on_cancel(p, obj, true); break;
    case BDS_XK_DROP: bds__exec_on_cancel(p, obj, false); break;
    case BDS_XK_COMPLETE: bds__exec_on_complete(p, obj); break;
    case BDS_XK_ACK: bds__home_on_ack(p, obj); break;
    case BDS_XK_REPLY: bds__home_on_reply(p, obj); break;
    case BDS_XK_DONE: bds__home_on_done(p, obj); break;
    case BDS_XK_NOTIFY: bds__home_on_notify(p, obj); break;
    case BDS_XK_TASK: ((bds__task *)obj)->run(obj); break;
    case BDS_XK_DROP_REPLY: bds__home_on_drop_reply(p, obj); break;
    default: BDS_UNREACHABLE();
    }
}

void bds_pipeline_deliver(bds_pipeline *p, void *msg) {
    current_pipeline = p;
    p->stats.msgs_delivered++;
    pipeline_dispatch(p, msg);
}

uint32_t bds_pipeline_run(bds_pipeline *p, uint32_t budget) {
    current_pipeline = p;
    uint32_t steps = p->timers == &p->own_timers ? bds__timer_run(p->timers, bds__now(p), budget) : 0;
    while (steps < budget && p->lq_head != p->lq_tail) {
        void *msg = p->lq[p->lq_head++ & p->lq_mask];
        pipeline_dispatch(p, msg);
        steps++;
    }
    return steps;
}

bool bds_pipeline_has_work(const bds_pipeline *p) { return p->lq_head != p->lq_tail; }

uint64_t bds_pipeline_next_deadline(const bds_pipeline *p) { return bds__timer_next(p->timers); }

void bds__pipeline_share_timers(bds_pipeline *p, bds_timer_heap *heap) {
    BDS_ASSERT(bds__timer_count(&p->own_timers) == 0);
    p->timers = heap;
}

uint32_t bds_pipeline_key_shard(const bds_pipeline *p, const void *key, uint32_t key_len) {
    if (key_len == 0) return p->index;
    return bds__fastrange(bds__hash(&p->seed, key, key_len), p->count);
}

void bds_pipeline_get_stats(const bds_pipeline *p, bds_pipeline_stats *out) {
    *out = p->stats;
    out->sessions_live = p->sessions.live;
    out->calls_live = p->calls.live;
    out->keys_home_live = p->hkeys.live;
    out->keys_exec_live = p->ekeys.live;
}

void bds_counters_load(const bds_counters *c, bds_counters *out) {
#define LOAD(f) atomic_store_explicit(&out->f, atomic_load_explicit(&((bds_counters *)c)->f, memory_order_relaxed), \
                                      memory_order_relaxed)
    LOAD(admitted);
    LOAD(rejected);
    LOAD(completed);
    LOAD(failed);
    LOAD(nonterminal_failures);
    LOAD(retried);
    LOAD(panics);
    LOAD(dropped);
    LOAD(pressure_signals);
    LOAD(replies_written);
    LOAD(replies_rejected);
    LOAD(bytes_in);
    LOAD(bytes_out);
    LOAD(calls_live);
#undef LOAD
}
