/* sim.h — a deterministic, single-threaded cluster of pipelines for the core
 * tests: a fake clock, and per-(sender, receiver) FIFO channels standing in
 * for the MPSC inboxes. Delivery is either eager (everything delivered and run
 * to quiescence after each step) or chaotic (a seeded random channel is
 * delivered one message at a time, which interleaves the cross-pipeline
 * protocol in every order the real rings allow).
 *
 * Test messages: the payload of each inbound message is a sim_msg saying how
 * the handler behaves. The handler logs every start; calls that complete
 * later wait in a pending list the test completes in any order. */
#ifndef TESTS_CORE_SIM_H
#define TESTS_CORE_SIM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bidistream/pipeline.h"
#include "pipeline_int.h"

#define SIM_MAX_PIPES 4
#define SIM_FOREIGN SIM_MAX_PIPES /* a channel source that is no pipeline's thread */
#define SIM_CHAN_CAP 8192
#define SIM_MAX_SESSIONS 64
#define SIM_MAX_LOG 200000

enum sim_behave {
    SIM_OK = 0,        /* done(OK) inside the handler */
    SIM_ASYNC,         /* left pending; the test completes it */
    SIM_FAIL,          /* fails (fail_status, or UNAVAILABLE) the first `fails` attempts, then OK */
    SIM_PANIC,         /* bds_call_panic() */
    SIM_NONTERMINAL,   /* done(E_NONTERMINAL_FAILURE) */
    SIM_HOOKED,        /* SIM_ASYNC with a cancel hook (bds_call_on_cancel) that finishes it */
    SIM_DONE_TWICE,    /* misuse: done(OK) twice inside the handler */
    SIM_REPLY_AFTER_DONE, /* misuse: done(OK), then a reply, inside the handler */
    SIM_TIMER,         /* bds_call_after(after_ns): the timer replies `ticks` times, one per firing, then done(OK) */
    SIM_TIMER_PENDING, /* bds_call_after(after_ns) and left pending: the test completes it */
};

typedef struct sim_msg {
    char key[48];
    uint32_t key_len;
    uint64_t seq;
    int behave;
    uint32_t fails;    /* SIM_FAIL: attempts that fail before one succeeds */
    bds_status fail_status; /* SIM_FAIL: the failure (BDS_OK here means UNAVAILABLE, retryable by default) */
    bool ask_retry;    /* SIM_FAIL: fail with bds_call_retry instead of bds_call_done */
    uint32_t replies;  /* replies sent before done */
    uint32_t reply_bytes; /* each one's bds_reply.bytes */
    int session;       /* index in sim->sessions */
    bool released;
    uint64_t after_ns; /* SIM_TIMER*: the delay */
    uint32_t ticks;    /* SIM_TIMER: firings before done (0 counts as 1) */
    uint32_t fired;    /* SIM_TIMER: firings so far */
    bool hook_too;     /* SIM_TIMER*: also a cancel hook (bds_call_on_cancel) */
} sim_msg;

/* One firing of a bds_call_after timer. */
typedef struct sim_fire {
    int session;
    uint64_t seq;
    uint64_t at;       /* the fake clock */
    uint32_t pipe;     /* whose thread it ran on */
    bool cancelled;    /* bds_call_cancelled at that moment */
} sim_fire;

typedef struct sim_reply {
    bds_reply r;
    uint64_t seq;
    int session;
} sim_reply;

typedef struct sim_event {
    int session;
    uint64_t seq;
    uint32_t attempt;
    uint32_t pipe;
    bool pressured;    /* bds_call_pressured */
} sim_event;

/* The last on_pressure callback's arguments. */
typedef struct sim_pressure {
    int session;
    int64_t seq;       /* the inbound message's, -1 without a call (outbound) */
    bds_direction direction;
    uint32_t in_use, capacity;
} sim_pressure;

typedef struct sim_session {
    bds_session *s;
    bool closed;
    bds_status close_status;
    char close_msg[128];
    int closed_calls;
    uint64_t written[4096]; /* reply seqs in write order */
    uint32_t n_written;
    sim_reply *unacked[4096]; /* written, not yet acknowledged with reply_written */
    uint32_t n_unacked;
    uint32_t dropped_replies;
    uint32_t ready_calls;
} sim_session;

typedef struct sim {
    bds_pipeline *pipes[SIM_MAX_PIPES];
    uint32_t n;
    uint64_t now;
    int running; /* whose thread we pretend to be: pipe index or SIM_FOREIGN */
    void *chan[SIM_MAX_PIPES + 1][SIM_MAX_PIPES][SIM_CHAN_CAP];
    uint32_t ch_head[SIM_MAX_PIPES + 1][SIM_MAX_PIPES], ch_tail[SIM_MAX_PIPES + 1][SIM_MAX_PIPES];
    sim_session sessions[SIM_MAX_SESSIONS];
    int n_sessions;
    bds_call *pending[8192];
    uint32_t n_pending;
    uint32_t cancel_hooks; /* SIM_HOOKED calls finished by their cancel hook */
    sim_fire fires[1024];  /* bds_call_after firings, in order */
    uint32_t n_fires;
    bds_status second_after; /* SIM_TIMER*: what a second bds_call_after returned */
    sim_event starts[SIM_MAX_LOG];
    uint32_t n_starts;
    uint64_t released;
    uint32_t pressure;
    sim_pressure last_pressure;
    bds_status reply_log[1024]; /* what each bds_call_reply of sim_handler returned */
    uint32_t n_reply_log;
    bool auto_ack_replies; /* reply_written right after write (a fast reader) */
    bool release_in_closed; /* the transport releases the session from ops->closed */
    /* Each pipeline's port.ctx, distinct as the server's (one pipe each): the
     * core must never take "same ctx" for "same group". */
    uint8_t port_ctx[SIM_MAX_PIPES];
    uint64_t rng;
} sim;

static sim *g_sim;

static inline uint64_t sim_rand(sim *S) {
    /* xorshift64*: reproducible from the printed seed */
    S->rng ^= S->rng >> 12;
    S->rng ^= S->rng << 25;
    S->rng ^= S->rng >> 27;
    return S->rng * 2685821657736338717ULL;
}

/* Pretends to be thread `who` (a pipeline index or SIM_FOREIGN); returns the old one. */
static inline int sim_switch(sim *S, int who) {
    int old = S->running;
    S->running = who;
    bds__pipeline_set_current(who == SIM_FOREIGN ? NULL : S->pipes[who]);
    return old;
}

/* Switches to session i's home pipeline (session calls are home-thread only). */
static inline int sim_home(sim *S, int i) { return sim_switch(S, (int)S->sessions[i].s->home->index); }

static uint64_t sim_now(void *ctx) {
    (void)ctx;
    return g_sim->now;
}

static void sim_post(uint32_t dst, void *msg, void *ctx) {
    (void)ctx;
    sim *S = g_sim;
    int src = S->running;
    uint32_t *t = &S->ch_tail[src][dst];
    if (*t - S->ch_head[src][dst] >= SIM_CHAN_CAP) {
        fprintf(stderr, "sim: channel %d->%u full\n", src, dst);
        abort();
    }
    S->chan[src][dst][(*t)++ % SIM_CHAN_CAP] = msg;
}

static void sim_handler(bds_call *call, void *ctx);

static int sim_session_index(bds_session *s) { return (int)(intptr_t)bds_session_ctx(s); }

static void sim_op_write(bds_session *s, bds_reply *r, void *ctx) {
    sim *S = g_sim;
    (void)ctx;
    sim_session *ss = &S->sessions[sim_session_index(s)];
    sim_reply *sr = (sim_reply *)r;
    if (ss->n_written < 4096) ss->written[ss->n_written++] = sr->seq;
    if (S->auto_ack_replies) {
        bds_session_reply_written(s, r);
        free(sr);
    } else {
        ss->unacked[ss->n_unacked++] = sr;
    }
}

static void sim_op_drop(bds_session *s, bds_reply *r, void *ctx) {
    (void)ctx;
    g_sim->sessions[sim_session_index(s)].dropped_replies++;
    free(r);
}

static void sim_op_release(bds_session *s, void *payload, void *ctx) {
    (void)s;
    (void)ctx;
    sim_msg *m = payload;
    if (m->released) abort(); /* released twice */
    m->released = true;
    g_sim->released++;
    free(m);
}

static void sim_op_closed(bds_session *s, bds_status status, const char *msg, void *ctx) {
    (void)ctx;
    sim_session *ss = &g_sim->sessions[sim_session_index(s)];
    ss->closed = true;
    ss->closed_calls++;
    ss->close_status = status;
    snprintf(ss->close_msg, sizeof ss->close_msg, "%s", msg);
    if (g_sim->release_in_closed) {
        bds_session_release(s);
        ss->s = NULL;
    }
}

static void sim_op_ready(bds_session *s, void *ctx) {
    (void)ctx;
    g_sim->sessions[sim_session_index(s)].ready_calls++;
}

static const bds_session_ops sim_ops = {
    .write = sim_op_write, .drop = sim_op_drop, .release = sim_op_release,
    .closed = sim_op_closed, .inbound_ready = sim_op_ready,
};

static void sim_on_pressure(bds_session *s, const bds_call *call, bds_direction d, uint32_t in_use, uint32_t cap,
                            void *ctx) {
    sim *S = ctx;
    S->pressure++;
    S->last_pressure = (sim_pressure){sim_session_index(s), call ? (int64_t)bds_call_seq(call) : -1, d, in_use, cap};
}

static inline sim *sim_new(uint32_t n, uint64_t seed) {
    sim *S = calloc(1, sizeof *S);
    g_sim = S;
    S->n = n;
    S->now = 1000000;
    S->rng = seed ? seed : 88172645463325252ULL;
    S->auto_ack_replies = true;
    for (uint32_t i = 0; i < n; i++) {
        bds_pipeline_config cfg;
        bds_pipeline_config_default(&cfg);
        cfg.index = i;
        cfg.count = n;
        cfg.seed[0] = 0x1234;
        cfg.seed[1] = 0x5678;
        cfg.port.now_ns = sim_now;
        cfg.port.post = sim_post;
        cfg.port.ctx = &S->port_ctx[i];
        S->running = (int)i;
        if (bds_pipeline_create(&S->pipes[i], &cfg) != BDS_OK) abort();
    }
    sim_switch(S, 0);
    return S;
}

/* Delivers one message from channel (src, dst); returns false if empty. */
static inline bool sim_deliver_one(sim *S, int src, uint32_t dst) {
    if (S->ch_head[src][dst] == S->ch_tail[src][dst]) return false;
    void *msg = S->chan[src][dst][S->ch_head[src][dst]++ % SIM_CHAN_CAP];
    int saved = sim_switch(S, (int)dst);
    bds_pipeline_deliver(S->pipes[dst], msg);
    sim_switch(S, saved);
    return true;
}

static inline bool sim_run_pipe(sim *S, uint32_t i) {
    int saved = sim_switch(S, (int)i);
    bool did = bds_pipeline_run(S->pipes[i], 64) > 0;
    sim_switch(S, saved);
    return did;
}

/* Eager: deliver and run everything until nothing moves. */
static inline void sim_settle(sim *S) {
    bool moved = true;
    while (moved) {
        moved = false;
        for (uint32_t d = 0; d < S->n; d++) {
            for (int s = 0; s <= SIM_MAX_PIPES; s++) {
                while (sim_deliver_one(S, s, d)) moved = true;
            }
            while (sim_run_pipe(S, d)) moved = true;
        }
    }
}

/* Chaotic: one random step (a channel's head, or one pipeline's local work). */
static inline bool sim_step_random(sim *S) {
    int options[(SIM_MAX_PIPES + 1) * SIM_MAX_PIPES + SIM_MAX_PIPES][2];
    int n = 0;
    for (int s = 0; s <= SIM_MAX_PIPES; s++) {
        for (uint32_t d = 0; d < S->n; d++) {
            if (S->ch_head[s][d] != S->ch_tail[s][d]) {
                options[n][0] = s;
                options[n][1] = (int)d;
                n++;
            }
        }
    }
    for (uint32_t d = 0; d < S->n; d++) {
        if (bds_pipeline_has_work(S->pipes[d])) {
            options[n][0] = -1;
            options[n][1] = (int)d;
            n++;
        }
    }
    if (n == 0) return false;
    int k = (int)(sim_rand(S) % (uint64_t)n);
    if (options[k][0] < 0) {
        int saved = sim_switch(S, options[k][1]);
        bds_pipeline_run(S->pipes[options[k][1]], 1);
        sim_switch(S, saved);
    } else {
        sim_deliver_one(S, options[k][0], (uint32_t)options[k][1]);
    }
    return true;
}

/* Fires due timers on every pipeline (time moved). */
static inline void sim_advance(sim *S, uint64_t ns) {
    S->now += ns;
    sim_settle(S);
}

static inline int sim_open(sim *S, uint32_t home, const bds_options *opts) {
    int idx = S->n_sessions++;
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    bds_options o = opts ? *opts : bds_default_options();
    o.on_pressure = sim_on_pressure;
    o.on_pressure_ctx = S;
    cfg.options = &o;
    cfg.handler = sim_handler;
    cfg.handler_ctx = S;
    cfg.ops = &sim_ops;
    cfg.ops_ctx = (void *)(intptr_t)idx;
    int saved = sim_switch(S, (int)home);
    const char *why = NULL;
    if (bds_session_create(&S->sessions[idx].s, S->pipes[home], &cfg, &why) != BDS_OK) {
        fprintf(stderr, "session_create: %s\n", why ? why : "?");
        abort();
    }
    if (bds_session_open(S->sessions[idx].s) != BDS_OK) abort();
    sim_switch(S, saved);
    return idx;
}

static inline sim_msg *sim_msg_new(int session, const char *key, uint64_t seq, int behave) {
    sim_msg *m = calloc(1, sizeof *m);
    m->session = session;
    m->key_len = (uint32_t)strlen(key);
    BDS_ASSERT(m->key_len < sizeof m->key);
    memcpy(m->key, key, m->key_len);
    m->seq = seq;
    m->behave = behave;
    return m;
}

/* Receive on the session's home pipeline. On error the message is freed. */
static inline bds_status sim_send_bytes(sim *S, int session, const char *key, uint64_t seq, int behave,
                                        uint32_t bytes) {
    sim_msg *m = sim_msg_new(session, key, seq, behave);
    bds_session *s = S->sessions[session].s;
    int saved = sim_switch(S, (int)s->home->index);
    bds_status st = bds_session_receive(s, m, bytes, m->key, m->key_len, seq);
    sim_switch(S, saved);
    if (st != BDS_OK) free(m);
    return st;
}

static inline bds_status sim_send(sim *S, int session, const char *key, uint64_t seq, int behave) {
    return sim_send_bytes(S, session, key, seq, behave, 8);
}

static inline sim_msg *sim_send_msg(sim *S, sim_msg *m, bds_status *st_out) {
    bds_session *s = S->sessions[m->session].s;
    int saved = sim_switch(S, (int)s->home->index);
    bds_status st = bds_session_receive(s, m, 8, m->key, m->key_len, m->seq);
    sim_switch(S, saved);
    *st_out = st;
    if (st != BDS_OK) {
        free(m);
        return NULL;
    }
    return m;
}

/* SIM_HOOKED: the session closed under the pending call. */
static void sim_on_cancel(bds_call *call, void *ctx) {
    sim *S = ctx;
    S->cancel_hooks++;
    for (uint32_t k = 0; k < S->n_pending; k++) {
        if (S->pending[k] == call) {
            S->pending[k] = S->pending[--S->n_pending];
            break;
        }
    }
    bds_call_done(call, BDS_CANCELLED, NULL);
}

/* SIM_TIMER: one firing; replies, then re-arms or finishes. */
static void sim_on_after(bds_call *call, void *ctx) {
    sim *S = ctx;
    sim_msg *m = bds_call_payload(call);
    bool cancelled = bds_call_cancelled(call);
    if (S->n_fires < 1024) S->fires[S->n_fires++] = (sim_fire){m->session, m->seq, S->now, (uint32_t)S->running, cancelled};
    m->fired++;
    sim_reply *r = calloc(1, sizeof *r);
    r->seq = m->seq;
    r->session = m->session;
    bds_call_reply(call, &r->r);
    if (m->behave == SIM_TIMER_PENDING) {
        for (uint32_t k = 0; k < S->n_pending; k++) {
            if (S->pending[k] == call) {
                S->pending[k] = S->pending[--S->n_pending];
                break;
            }
        }
    }
    if (!cancelled && m->fired < m->ticks) {
        if (bds_call_after(call, m->after_ns, sim_on_after, S) != BDS_OK) abort();
        return;
    }
    bds_call_done(call, cancelled ? BDS_CANCELLED : BDS_OK, NULL);
}

static void sim_handler(bds_call *call, void *ctx) {
    sim *S = ctx;
    sim_msg *m = bds_call_payload(call);
    if (S->n_starts < SIM_MAX_LOG) {
        S->starts[S->n_starts++] =
            (sim_event){m->session, m->seq, bds_call_attempt(call), (uint32_t)S->running, bds_call_pressured(call)};
    }
    for (uint32_t i = 0; i < m->replies; i++) {
        sim_reply *r = calloc(1, sizeof *r);
        r->seq = m->seq;
        r->session = m->session;
        r->r.bytes = m->reply_bytes;
        bds_status rs = bds_call_reply(call, &r->r);
        if (S->n_reply_log < 1024) S->reply_log[S->n_reply_log++] = rs;
    }
    switch (m->behave) {
    case SIM_OK: bds_call_done(call, BDS_OK, NULL); return;
    case SIM_ASYNC: S->pending[S->n_pending++] = call; return;
    case SIM_HOOKED:
        S->pending[S->n_pending++] = call;
        bds_call_on_cancel(call, sim_on_cancel, S);
        return;
    case SIM_TIMER:
    case SIM_TIMER_PENDING:
        if (bds_call_after(call, m->after_ns, sim_on_after, S) != BDS_OK) abort();
        S->second_after = bds_call_after(call, 1, sim_on_after, S);
        if (m->behave == SIM_TIMER_PENDING) S->pending[S->n_pending++] = call;
        if (m->hook_too) bds_call_on_cancel(call, sim_on_cancel, S);
        return;
    case SIM_FAIL:
        if (bds_call_attempt(call) > m->fails) bds_call_done(call, BDS_OK, NULL);
        else if (m->ask_retry) bds_call_retry(call, m->fail_status ? m->fail_status : BDS_UNAVAILABLE, "scripted failure");
        else bds_call_done(call, m->fail_status ? m->fail_status : BDS_UNAVAILABLE, "scripted failure");
        return;
    case SIM_PANIC: bds_call_panic(call, "scripted panic");
    case SIM_NONTERMINAL: bds_call_done(call, BDS_E_NONTERMINAL_FAILURE, "scripted non-terminal"); return;
    case SIM_DONE_TWICE:
        bds_call_done(call, BDS_OK, NULL);
        bds_call_done(call, BDS_OK, NULL);
        return;
    case SIM_REPLY_AFTER_DONE: {
        bds_call_done(call, BDS_OK, NULL);
        sim_reply *r = calloc(1, sizeof *r);
        bds_call_reply(call, &r->r);
        return;
    }
    }
}

/* Completes pending call k with status, from its exec pipeline's thread or,
 * with foreign, from a thread that is no pipeline's. */
static inline void sim_complete(sim *S, uint32_t k, bds_status st, bool foreign) {
    bds_call *call = S->pending[k];
    S->pending[k] = S->pending[--S->n_pending];
    int saved = sim_switch(S, foreign ? SIM_FOREIGN : (int)call->exec);
    bds_call_done(call, st, st == BDS_OK ? NULL : "async failure");
    sim_switch(S, saved);
}

/* As sim_complete, with bds_call_retry (a failure marked retryable). */
static inline void sim_complete_retry(sim *S, uint32_t k, bds_status st, bool foreign) {
    bds_call *call = S->pending[k];
    S->pending[k] = S->pending[--S->n_pending];
    int saved = sim_switch(S, foreign ? SIM_FOREIGN : (int)call->exec);
    bds_call_retry(call, st, "async failure, retry it");
    sim_switch(S, saved);
}

static inline void sim_check_tokens(sim *S) {
    for (int i = 0; i < S->n_sessions; i++) {
        bds_session *s = S->sessions[i].s;
        if (!s) continue;
        uint32_t cap = s->opts.inbound.backpressure.capacity;
        if (cap) {
            if (s->tokens_free + s->tokens_held != cap) {
                fprintf(stderr, "token invariant broken: free %u held %u cap %u\n", s->tokens_free,
                        s->tokens_held, cap);
                abort();
            }
            bds_backpressure_policy pol = s->opts.inbound.backpressure.policy;
            if ((pol == BDS_BP_HARD_REJECT || pol == BDS_BP_QUEUE) && s->tokens_held > cap) abort();
        }
    }
}

static inline void sim_release_all(sim *S) {
    for (int i = 0; i < S->n_sessions; i++) {
        if (!S->sessions[i].s) continue;
        sim_session *ss = &S->sessions[i];
        int saved = sim_switch(S, (int)ss->s->home->index);
        for (uint32_t k = 0; k < ss->n_unacked; k++) {
            if (bds_session_get_state(ss->s) != BDS_STATE_CLOSED) bds_session_reply_written(ss->s, &ss->unacked[k]->r);
            free(ss->unacked[k]);
        }
        ss->n_unacked = 0;
        bds_session_release(ss->s);
        ss->s = NULL;
        sim_switch(S, saved);
    }
}

/* Releases everything, completes what is pending, and asserts nothing leaked. */
static inline void sim_free(sim *S) {
    sim_release_all(S);
    sim_settle(S);
    while (S->n_pending) {
        sim_complete(S, 0, BDS_OK, false);
        sim_settle(S);
    }
    for (uint32_t i = 0; i < S->n; i++) {
        bds_pipeline_stats st;
        bds_pipeline_get_stats(S->pipes[i], &st);
        if (st.sessions_live || st.calls_live || st.keys_home_live || st.keys_exec_live) {
            fprintf(stderr, "leak on pipeline %u: sessions %lu calls %lu hkeys %lu ekeys %lu\n", i,
                    (unsigned long)st.sessions_live, (unsigned long)st.calls_live,
                    (unsigned long)st.keys_home_live, (unsigned long)st.keys_exec_live);
            abort();
        }
    }
    for (uint32_t i = 0; i < S->n; i++) {
        sim_switch(S, (int)i);
        bds_pipeline_destroy(S->pipes[i]);
    }
    free(S);
    g_sim = NULL;
}

#endif
