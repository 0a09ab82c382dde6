/* test_pipeline_threads.c — the pipeline on real threads (BDS_TEST_TSAN: this
 * file also runs under ThreadSanitizer).
 *
 * Two pipeline threads, each home to its own sessions and executing the keys
 * that hash to it, exchange the protocol's messages through mutex-guarded
 * inboxes (the io runtime uses the lock-free MPSC ring; what is tested here is
 * the pipeline's own hand-offs: calls lent across threads, the atomic session
 * state read by the exec side, session memory outliving cross-thread work).
 * A third thread, no pipeline's, completes some calls and sends some replies,
 * as a handler's own I/O thread would; others answer from call timers
 * (bds_call_after), and half the sessions hold replies with their calls
 * (retries on) wherever they are made. Checks: every message is answered
 * exactly once, a key's calls start in arrival order, nothing leaks. The
 * test's own thread reads each pipeline's live counters (bds_counters) while
 * they move: never backwards, never past the total, and at the end equal to
 * what the sessions counted.
 * BDS_TEST_TSAN */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline_int.h"

#define PIPES 2
#define SESSIONS_PER_PIPE 8
#define KEYS 16
#ifdef __SANITIZE_THREAD__
#define MSGS_PER_SESSION 400
#else
#define MSGS_PER_SESSION 3000
#endif

typedef struct inbox {
    pthread_mutex_t mu;
    void **v;
    size_t n, cap;
} inbox;

static void inbox_push(inbox *q, void *msg) {
    pthread_mutex_lock(&q->mu);
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 1024;
        q->v = realloc(q->v, q->cap * sizeof(void *));
    }
    q->v[q->n++] = msg;
    pthread_mutex_unlock(&q->mu);
}

/* Takes everything queued, in order. */
static size_t inbox_take(inbox *q, void ***out, size_t *cap) {
    pthread_mutex_lock(&q->mu);
    size_t n = q->n;
    if (n == 0) {
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    if (n > *cap) {
        *cap = n;
        *out = realloc(*out, n * sizeof(void *));
    }
    memcpy(*out, q->v, n * sizeof(void *));
    q->n = 0;
    pthread_mutex_unlock(&q->mu);
    return n;
}

typedef struct msg {
    int session; /* global index */
    int key;
    uint64_t seq;
    int how; /* 0 sync, 1 foreign completion, 2 foreign reply + completion, 3 a call timer replies and completes */
    char keybuf[4];
} msg;

typedef struct world world;

typedef struct pipe_ctx {
    world *w;
    int index;
    bds_pipeline *p;
    bds_session *sessions[SESSIONS_PER_PIPE];
    uint64_t sent[SESSIONS_PER_PIPE];
    int closed[SESSIONS_PER_PIPE];
    uint64_t written, released, expected_replies;
    /* starts logged by handlers running on this pipeline (it is K for them) */
    int64_t last_start[PIPES * SESSIONS_PER_PIPE][KEYS];
    uint64_t order_errors;
    bds_counters counters; /* its sessions' live counters */
    bds_session_stats summed; /* its sessions' own stats, summed before release */
} pipe_ctx;

struct world {
    inbox in[PIPES];
    inbox foreign; /* calls for the foreign thread */
    pipe_ctx pipes[PIPES];
    _Atomic int done_pipes;
    _Atomic int stop_foreign;
};

static uint64_t now_ns(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void post(uint32_t dst, void *m, void *ctx) { inbox_push(&((world *)ctx)->in[dst], m); }

/* how 3: on the call's pipeline thread, after 1 us */
static void on_after(bds_call *call, void *ctx) {
    (void)ctx;
    bds_call_reply(call, calloc(1, sizeof(bds_reply)));
    bds_call_done(call, BDS_OK, NULL);
}

static void handler(bds_call *call, void *ctx) {
    pipe_ctx *pc = ctx;
    /* ctx is the home pipeline's; find the pipeline we run on */
    world *w = pc->w;
    bds_pipeline *cur = bds__pipeline_current();
    pipe_ctx *me = &w->pipes[cur->index];
    msg *m = bds_call_payload(call);
    int64_t *last = &me->last_start[m->session][m->key];
    if ((int64_t)m->seq <= *last) me->order_errors++;
    *last = (int64_t)m->seq;
    if (m->how == 0) {
        bds_reply *r = calloc(1, sizeof *r);
        bds_call_reply(call, r);
        bds_call_done(call, BDS_OK, NULL);
    } else if (m->how == 3) {
        cr_assert_eq(bds_call_after(call, 1000, on_after, NULL), BDS_OK);
    } else {
        inbox_push(&w->foreign, call);
    }
}

static void op_write(bds_session *s, bds_reply *r, void *ctx) {
    pipe_ctx *pc = ctx;
    pc->written++;
    bds_session_reply_written(s, r);
    free(r);
}
static void op_drop(bds_session *s, bds_reply *r, void *ctx) {
    (void)s;
    (void)ctx;
    free(r);
}
static void op_release(bds_session *s, void *payload, void *ctx) {
    (void)s;
    ((pipe_ctx *)ctx)->released++;
    free(payload);
}
static void op_closed(bds_session *s, bds_status st, const char *m, void *ctx) {
    pipe_ctx *pc = ctx;
    (void)m;
    for (int i = 0; i < SESSIONS_PER_PIPE; i++) {
        if (pc->sessions[i] == s) pc->closed[i] = st == BDS_OK ? 1 : -1;
    }
}
static const bds_session_ops ops = {.write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed};

static void pump(pipe_ctx *pc, void ***buf, size_t *cap) {
    size_t n = inbox_take(&pc->w->in[pc->index], buf, cap);
    for (size_t i = 0; i < n; i++) bds_pipeline_deliver(pc->p, (*buf)[i]);
    uint32_t steps = 0, k;
    while ((k = bds_pipeline_run(pc->p, 256)) > 0) steps += k;
    if (n == 0 && steps == 0) sched_yield(); /* idle: let the other threads in on 2 cores */
}

static void *pipe_thread(void *arg) {
    pipe_ctx *pc = arg;
    world *w = pc->w;
    bds_pipeline_config cfg;
    bds_pipeline_config_default(&cfg);
    cfg.index = (uint32_t)pc->index;
    cfg.count = PIPES;
    cfg.seed[0] = 11;
    cfg.seed[1] = 13;
    cfg.port = (bds_pipeline_port){.now_ns = now_ns, .post = post, .ctx = w};
    cr_assert_eq(bds_pipeline_create(&pc->p, &cfg), BDS_OK);
    bds_options o = bds_default_options();
    o.inbound.backpressure.capacity = 4;
    o.inbound.backpressure.queue_capacity = 0;
    o.inbound.ordering.capacity = 0;
    bds_session_config sc;
    bds_session_config_default(&sc);
    sc.options = &o;
    sc.handler = handler;
    sc.handler_ctx = pc;
    sc.ops = &ops;
    sc.ops_ctx = pc;
    sc.counters = &pc->counters;
    bds_options held = o; /* retries on: replies made on any thread wait with their call */
    held.retry.max_attempts = 1;
    for (int i = 0; i < SESSIONS_PER_PIPE; i++) {
        sc.options = i % 2 ? &held : &o;
        cr_assert_eq(bds_session_create(&pc->sessions[i], pc->p, &sc, NULL), BDS_OK);
        bds_session_open(pc->sessions[i]);
    }
    void **buf = NULL;
    size_t cap = 0;
    unsigned seed = (unsigned)pc->index * 7 + 1;
    bool all_sent = false;
    while (!all_sent) {
        all_sent = true;
        for (int i = 0; i < SESSIONS_PER_PIPE; i++) {
            if (pc->sent[i] == MSGS_PER_SESSION) continue;
            all_sent = false;
            if (bds_session_inbound_room(pc->sessions[i]) == 0) continue; /* a transport stops reading */
            msg *m = calloc(1, sizeof *m);
            m->session = pc->index * SESSIONS_PER_PIPE + i;
            m->key = rand_r(&seed) % KEYS;
            m->seq = pc->sent[i]++;
            m->how = rand_r(&seed) % 4;
            m->keybuf[0] = 'k';
            m->keybuf[1] = (char)('a' + m->key);
            pc->expected_replies += m->how != 1;
            cr_assert_eq(bds_session_receive(pc->sessions[i], m, sizeof *m, m->keybuf, 2, m->seq), BDS_OK);
        }
        pump(pc, &buf, &cap);
    }
    for (int i = 0; i < SESSIONS_PER_PIPE; i++) bds_session_client_close(pc->sessions[i]);
    /* Drain until every session ended, then release them and wait for the frees. */
    for (;;) {
        pump(pc, &buf, &cap);
        int open = 0;
        for (int i = 0; i < SESSIONS_PER_PIPE; i++) open += pc->closed[i] == 0;
        if (!open) break;
    }
    for (int i = 0; i < SESSIONS_PER_PIPE; i++) {
        bds_session_stats st;
        bds_session_get_stats(pc->sessions[i], &st);
        pc->summed.admitted += st.admitted;
        pc->summed.completed += st.completed;
        pc->summed.replies_written += st.replies_written;
        bds_session_release(pc->sessions[i]);
    }
    atomic_fetch_add(&w->done_pipes, 1);
    /* Keep serving the other pipeline until it is done too (it may still need our DONEs). */
    bds_pipeline_stats st;
    do {
        pump(pc, &buf, &cap);
        bds_pipeline_get_stats(pc->p, &st);
    } while (atomic_load(&w->done_pipes) < PIPES || st.sessions_live || st.calls_live || st.keys_exec_live);
    free(buf);
    return NULL;
}

static void *foreign_thread(void *arg) {
    world *w = arg;
    void **buf = NULL;
    size_t cap = 0;
    while (!atomic_load(&w->stop_foreign)) {
        size_t n = inbox_take(&w->foreign, &buf, &cap);
        if (n == 0) sched_yield();
        for (size_t i = 0; i < n; i++) {
            bds_call *call = buf[i];
            msg *m = bds_call_payload(call);
            if (m->how == 2) bds_call_reply(call, calloc(1, sizeof(bds_reply)));
            bds_call_done(call, BDS_OK, NULL);
        }
    }
    free(buf);
    return NULL;
}

Test(pipeline_threads, two_pipelines_and_a_foreign_thread_answer_everything_in_key_order, .timeout = 300) {
    world *w = calloc(1, sizeof *w);
    for (int i = 0; i < PIPES; i++) {
        pthread_mutex_init(&w->in[i].mu, NULL);
        w->pipes[i].w = w;
        w->pipes[i].index = i;
        memset(w->pipes[i].last_start, 0xff, sizeof w->pipes[i].last_start);
    }
    pthread_mutex_init(&w->foreign.mu, NULL);
    pthread_t t[PIPES], f;
    pthread_create(&f, NULL, foreign_thread, w);
    for (int i = 0; i < PIPES; i++) pthread_create(&t[i], NULL, pipe_thread, &w->pipes[i]);
    /* Read the live counters while the pipelines run. */
    uint64_t last_admitted[PIPES] = {0}, last_completed[PIPES] = {0};
    while (atomic_load(&w->done_pipes) < PIPES) {
        for (int i = 0; i < PIPES; i++) {
            bds_counters c;
            bds_counters_load(&w->pipes[i].counters, &c);
            uint64_t admitted = atomic_load(&c.admitted), completed = atomic_load(&c.completed);
            /* Each field alone is coherent (relaxed atomics promise no more). */
            cr_assert_geq(admitted, last_admitted[i], "admitted went backwards");
            cr_assert_geq(completed, last_completed[i], "completed went backwards");
            cr_assert_leq(admitted, (uint64_t)SESSIONS_PER_PIPE * MSGS_PER_SESSION);
            last_admitted[i] = admitted;
            last_completed[i] = completed;
        }
        sched_yield();
    }
    for (int i = 0; i < PIPES; i++) pthread_join(t[i], NULL);
    atomic_store(&w->stop_foreign, 1);
    pthread_join(f, NULL);
    uint64_t total = (uint64_t)PIPES * SESSIONS_PER_PIPE * MSGS_PER_SESSION, written = 0, released = 0, expected = 0;
    for (int i = 0; i < PIPES; i++) {
        pipe_ctx *pc = &w->pipes[i];
        cr_assert_eq(pc->order_errors, 0, "a key's calls started out of order");
        cr_assert_eq(atomic_load(&pc->counters.admitted), (uint64_t)SESSIONS_PER_PIPE * MSGS_PER_SESSION);
        cr_assert_eq(atomic_load(&pc->counters.admitted), pc->summed.admitted, "live counters = the sessions' stats");
        cr_assert_eq(atomic_load(&pc->counters.completed), pc->summed.completed);
        cr_assert_eq(atomic_load(&pc->counters.replies_written), pc->summed.replies_written);
        cr_assert_eq(atomic_load(&pc->counters.replies_written), pc->written);
        cr_assert_eq(atomic_load(&pc->counters.calls_live), 0, "the gauge is back to 0");
        for (int s = 0; s < SESSIONS_PER_PIPE; s++) cr_assert_eq(pc->closed[s], 1, "every session ended OK");
        written += pc->written;
        released += pc->released;
        expected += pc->expected_replies;
        bds_pipeline_stats st;
        bds_pipeline_get_stats(pc->p, &st);
        cr_assert_eq(st.sessions_live + st.calls_live + st.keys_home_live + st.keys_exec_live, 0);
        bds__pipeline_set_current(pc->p);
        bds_pipeline_destroy(pc->p);
    }
    cr_assert_eq(released, total, "every payload released exactly once");
    for (int i = 0; i < PIPES; i++) free(w->in[i].v);
    free(w->foreign.v);
    cr_assert_eq(written, expected, "every reply written once (how 0 and 2 reply, how 1 does not)");
    free(w);
}
