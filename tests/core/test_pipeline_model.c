/* test_pipeline_model.c — property tests of the pipeline.
 *
 * 1. Step by step against a reference model. Thousands of random scripts
 *    (arrivals with scripted handler behaviour, completions in random order,
 *    failures, retries, aborts, cancels, half-close, shutdown, time passing)
 *    run through one real pipeline on a fake clock, and through a small model
 *    of the same rules written here with plain arrays. After every step the
 *    two must agree on: each admission result, which calls are running, how
 *    many times each call has started, the session's state and close status,
 *    every counter, and the token ledger. The model mirrors the protocol's
 *    message order (one pipeline: its local queue is a FIFO), so agreement is
 *    exact, not statistical.
 *
 * 2. Chaos across pipelines. Random scripts over 3 pipelines with every
 *    message delivered in a random order the rings allow (per-pair FIFO
 *    only), some calls answered from call timers, some failing and retried:
 *    per-key execution order, exactly-once completion, the token invariant
 *    after every step, no reply sent twice (retries hold an attempt's
 *    replies), and no leak at the end. Step 1's model retries exactly the
 *    failures options.retry.retryable or bds_call_retry allow, so a
 *    non-retryable status that ran again would break its count of starts.
 *
 * Every failure prints the script's seed; rerun one with BDS_MODEL_SEED=<n>. */
#include <criterion/criterion.h>

#include "sim.h"

#define MS 1000000ULL
#define MAXC 256
#define MAXK 5

/* ---- the reference model ---------------------------------------------------------------- */

enum { KQ_QUEUED = 0, KQ_RUNNING, KQ_RETRY, KQ_GONE };
enum { EV_EXEC, EV_GRANT, EV_COMPLETE, EV_DONE, EV_CANCEL, EV_DROP, EV_ACK, EV_NOTIFY };

typedef struct mcall {
    uint64_t seq;
    int key, behave;
    uint32_t fails, attempt;
    int kstate;
    int exec_token;
    bds_status status;
    bool dropped;
    bool passed;
    bool asked;       /* the attempt ended with bds_call_retry */
    uint64_t retry_at, retry_order;
} mcall;

typedef struct mkey {
    int c[MAXC], cn; /* home view: outstanding calls in order */
    int token;
    bool in_wait;
    int k[MAXC], kn; /* exec view: the run queue */
    bool head_tok, drop_rest;
} mkey;

typedef struct model {
    bds_options o;
    mcall calls[MAXC];
    int ncalls;
    mkey keys[MAXK];
    int state;
    bool client_closed, server_closed, stopped;
    bool refused_in_drain; /* a message refused for the shutdown: the end is not OK */
    uint32_t tokens_free, tokens_held, soft, n_wait, waiting, outstanding, acks;
    int wait[MAXK * 2], wn;
    bds_status close_status, reason;
    int notified;
    bool grace_armed;
    uint64_t grace_at, grace_order, order;
    uint64_t now;
    struct {
        uint64_t admitted, rejected, completed, failed, nonterm, retried, panics, dropped, pressure;
    } st;
    int evq[8192][2];
    int eh, et;
} model;

static void m_push(model *m, int ev, int arg) {
    m->evq[m->et % 8192][0] = ev;
    m->evq[m->et % 8192][1] = arg;
    m->et++;
}

static void m_stop_inbound(model *m, bool running_too) {
    m->stopped = true;
    for (int i = 0; i < m->wn; i++) m->keys[m->wait[i]].in_wait = false;
    m->wn = 0;
    m->n_wait = 0;
    if (m->outstanding == 0) return;
    m->acks++;
    m_push(m, running_too ? EV_CANCEL : EV_DROP, 0);
}

static void m_close(model *m, bds_status status, bool drained) {
    if (status != BDS_OK && m->reason == BDS_OK) m->reason = status;
    if (m->state == BDS_STATE_CLOSED) return;
    if (drained && m->state != BDS_STATE_DRAINING) return;
    m->state = BDS_STATE_CLOSED;
    m->close_status = status;
    m->grace_armed = false;
    if (!m->stopped || m->outstanding > 0) m_stop_inbound(m, true);
    m_push(m, EV_NOTIFY, 0);
}

static void m_check_drained(model *m) {
    if (m->outstanding) return;
    if (m->state == BDS_STATE_CLIENT_CLOSED) {
        m->state = BDS_STATE_DRAINING;
        m_close(m, BDS_OK, true);
    } else if (m->state == BDS_STATE_DRAINING) {
        if (m->client_closed) m_close(m, m->refused_in_drain ? BDS_E_SHUTDOWN : BDS_OK, true);
        else if (!m->server_closed) m_close(m, BDS_E_SHUTDOWN, true);
    }
}

/* Exec side: unlink the head and send DONE. Returns the new head or -1. */
static int m_pop_head(model *m, int k) {
    mkey *key = &m->keys[k];
    int c = key->k[0];
    memmove(key->k, key->k + 1, sizeof(int) * (size_t)(key->kn - 1));
    key->kn--;
    m->calls[c].passed = key->kn > 0;
    m->calls[c].kstate = KQ_GONE;
    m_push(m, EV_DONE, c);
    if (key->kn == 0) {
        key->head_tok = false;
        key->drop_rest = false;
        return -1;
    }
    return key->k[0];
}

static void m_drop_all(model *m, int k) {
    while (m->keys[k].kn) {
        m->calls[m->keys[k].k[0]].status = BDS_CANCELLED;
        m->calls[m->keys[k].k[0]].dropped = true;
        if (m_pop_head(m, k) < 0) return;
    }
}

/* The head finished an attempt. Returns the next head to try, or -1. */
static int m_result(model *m, int c) {
    mcall *call = &m->calls[c];
    int k = call->key;
    int code = bds_status_grpc(call->status);
    bool retryable = call->asked || (code > 0 && (m->o.retry.retryable & (1u << code)));
    if (call->status != BDS_OK && call->status != BDS_E_PANIC_RECOVERED && retryable &&
        call->attempt <= m->o.retry.max_attempts && m->state != BDS_STATE_CLOSED) {
        call->kstate = KQ_RETRY;
        call->retry_at = m->now + m->o.retry.backoff_ns;
        call->retry_order = m->order++;
        return -1;
    }
    bool drop_rest = m->keys[k].drop_rest;
    int next = m_pop_head(m, k);
    if (next >= 0 && drop_rest) {
        m_drop_all(m, k);
        return -1;
    }
    return next;
}

static void m_run(model *m, int c) {
    while (c >= 0) {
        mcall *call = &m->calls[c];
        mkey *key = &m->keys[call->key];
        if (!(call->kstate == KQ_QUEUED && key->head_tok)) return;
        if (m->state == BDS_STATE_CLOSED) {
            m_drop_all(m, call->key);
            return;
        }
        call->attempt++;
        call->asked = false;
        switch (call->behave) {
        case SIM_ASYNC: call->kstate = KQ_RUNNING; return;
        case SIM_OK: call->status = BDS_OK; break;
        case SIM_FAIL:
            call->status = call->attempt <= call->fails ? BDS_UNAVAILABLE : BDS_OK;
            break;
        case SIM_PANIC: call->status = BDS_E_PANIC_RECOVERED; break;
        case SIM_NONTERMINAL: call->status = BDS_E_NONTERMINAL_FAILURE; break;
        }
        call->kstate = KQ_RUNNING;
        c = m_result(m, c);
    }
}

static void m_grant_waiters(model *m) {
    while (m->tokens_free > 0 && m->wn > 0 && !m->stopped) {
        int k = m->wait[0];
        memmove(m->wait, m->wait + 1, sizeof(int) * (size_t)(m->wn - 1));
        m->wn--;
        m->n_wait--;
        m->keys[k].in_wait = false;
        m->keys[k].token = BDS_TOKEN_REAL;
        m->tokens_free--;
        m->tokens_held++;
        m_push(m, EV_GRANT, m->keys[k].c[0]);
    }
}

static void m_done_account(model *m, mcall *call) {
    if (call->attempt > 1) m->st.retried += call->attempt - 1;
    if (call->dropped) {
        m->st.dropped++;
        return;
    }
    switch (call->status) {
    case BDS_OK: m->st.completed++; return;
    case BDS_E_PANIC_RECOVERED: m->st.panics++; m_close(m, BDS_E_PANIC_RECOVERED, false); return;
    case BDS_E_NONTERMINAL_FAILURE: m->st.nonterm++; return;
    default:
        m->st.failed++;
        if (m->o.inbound.failures_terminal) m_close(m, call->status, false);
        else m->st.nonterm++;
    }
}

static void m_on_done(model *m, int c) {
    mcall *call = &m->calls[c];
    mkey *key = &m->keys[call->key];
    cr_assert_eq(key->c[0], c, "model: out-of-order DONE");
    memmove(key->c, key->c + 1, sizeof(int) * (size_t)(key->cn - 1));
    key->cn--;
    m->outstanding--;
    if (key->cn) m->waiting--;
    m_done_account(m, call);
    if (key->cn == 0) {
        if (key->token == BDS_TOKEN_REAL) {
            m->tokens_held--;
            if (m->o.inbound.backpressure.capacity) m->tokens_free++;
        } else if (key->token == BDS_TOKEN_SOFT) {
            m->soft--;
        } else if (key->in_wait) {
            for (int i = 0; i < m->wn; i++) {
                if (m->wait[i] == call->key) {
                    memmove(m->wait + i, m->wait + i + 1, sizeof(int) * (size_t)(m->wn - i - 1));
                    m->wn--;
                    m->n_wait--;
                    break;
                }
            }
            key->in_wait = false;
        }
        key->token = BDS_TOKEN_NONE;
        m_grant_waiters(m);
    } else if (!call->passed && !m->stopped && !key->in_wait) {
        m_push(m, EV_GRANT, key->c[0]);
    }
    m_check_drained(m);
}

static void m_on_cancel(model *m, bool running_too) {
    for (int k = 0; k < MAXK; k++) {
        mkey *key = &m->keys[k];
        if (!key->kn) continue;
        mcall *head = &m->calls[key->k[0]];
        if (head->kstate == KQ_RUNNING || (head->kstate == KQ_RETRY && !running_too)) {
            key->drop_rest = true;
        } else {
            if (head->kstate == KQ_RETRY) head->kstate = KQ_QUEUED;
            m_drop_all(m, k);
        }
    }
    m_push(m, EV_ACK, 0);
}

static void m_settle(model *m) {
    while (m->eh != m->et) {
        int ev = m->evq[m->eh % 8192][0], a = m->evq[m->eh % 8192][1];
        m->eh++;
        mcall *call = &m->calls[a];
        mkey *key = &m->keys[call->key];
        switch (ev) {
        case EV_EXEC:
            key->k[key->kn++] = a;
            call->kstate = KQ_QUEUED;
            if (key->kn == 1) {
                key->head_tok = call->exec_token != BDS_TOKEN_NONE;
                m_run(m, a);
            }
            break;
        case EV_GRANT:
            key->head_tok = true;
            m_run(m, a);
            break;
        case EV_COMPLETE: m_run(m, m_result(m, a)); break;
        case EV_DONE: m_on_done(m, a); break;
        case EV_CANCEL: m_on_cancel(m, true); break;
        case EV_DROP: m_on_cancel(m, false); break;
        case EV_ACK: m->acks--; break;
        case EV_NOTIFY: m->notified++; break;
        }
    }
}

static bds_status m_receive(model *m, int keyid, int behave, uint32_t fails, uint64_t seq) {
    switch (m->state) {
    case BDS_STATE_OPEN:
    case BDS_STATE_SERVER_CLOSED: break;
    case BDS_STATE_CLIENT_CLOSED: return BDS_E_INBOUND_CLOSED;
    case BDS_STATE_DRAINING:
        if (m->client_closed) return BDS_E_INBOUND_CLOSED;
        m->refused_in_drain = true;
        return BDS_E_SHUTDOWN;
    default: return BDS_E_SESSION_CLOSED;
    }
    int k = m->o.inbound.ordering.mode == BDS_ORDERING_FIFO ? 0 : keyid;
    mkey *key = &m->keys[k];
    const bds_backpressure_options *bp = &m->o.inbound.backpressure;
    int token = BDS_TOKEN_NONE;
    bool reject = false;
    if (key->cn) {
        reject = m->o.inbound.ordering.capacity && m->waiting >= m->o.inbound.ordering.capacity;
    } else if (bp->capacity == 0 || m->tokens_free > 0) {
        if (bp->capacity) m->tokens_free--;
        m->tokens_held++;
        token = BDS_TOKEN_REAL;
    } else if (bp->policy == BDS_BP_HARD_REJECT) {
        reject = true;
    } else if (bp->policy == BDS_BP_QUEUE) {
        reject = bp->queue_capacity && m->n_wait >= bp->queue_capacity;
    } else {
        if (bp->policy == BDS_BP_SOFT_ALLOW_SIGNAL) m->st.pressure++;
        m->soft++;
        token = BDS_TOKEN_SOFT;
    }
    if (reject) {
        m->st.rejected++;
        m_close(m, BDS_E_INBOUND_REJECTED, false);
        return BDS_E_INBOUND_REJECTED;
    }
    int c = m->ncalls++;
    m->calls[c] = (mcall){.seq = seq, .key = k, .behave = behave, .fails = fails};
    if (key->cn == 0) {
        key->token = token;
        if (token == BDS_TOKEN_NONE) {
            key->in_wait = true;
            m->wait[m->wn++] = k;
            m->n_wait++;
        }
        m->calls[c].exec_token = token;
    } else {
        m->waiting++;
        m->calls[c].exec_token = BDS_TOKEN_NONE;
    }
    key->c[key->cn++] = c;
    m->outstanding++;
    m->st.admitted++;
    m_push(m, EV_EXEC, c);
    return BDS_OK;
}

static bds_status m_client_close(model *m) {
    if (m->state == BDS_STATE_DRAINING && !m->client_closed) {
        m->client_closed = true;
    } else if (m->state == BDS_STATE_OPEN) {
        m->state = BDS_STATE_CLIENT_CLOSED;
    } else if (m->state == BDS_STATE_SERVER_CLOSED) {
        m->state = BDS_STATE_DRAINING;
    } else {
        return BDS_FAILED_PRECONDITION;
    }
    m->client_closed = true;
    if (!m->o.inbound.drain_on_client_close && !m->stopped) m_stop_inbound(m, false);
    m_check_drained(m);
    return BDS_OK;
}

static void m_shutdown(model *m) {
    if (m->reason == BDS_OK) m->reason = BDS_E_SHUTDOWN;
    if (m->state != BDS_STATE_OPEN && m->state != BDS_STATE_CLIENT_CLOSED && m->state != BDS_STATE_SERVER_CLOSED) return;
    m->state = BDS_STATE_DRAINING;
    if (!m->o.shutdown.drain_inbound && !m->stopped) m_stop_inbound(m, false);
    m->grace_armed = true;
    m->grace_at = m->now + m->o.shutdown.grace_period_ns;
    m->grace_order = m->order++;
    m_check_drained(m);
}

/* Fires every due timer in (deadline, arming order), as the heap does. */
static void m_advance(model *m, uint64_t ns) {
    m->now += ns;
    for (;;) {
        int best = -2;
        uint64_t at = UINT64_MAX, ord = UINT64_MAX;
        if (m->grace_armed && m->grace_at <= m->now) {
            best = -1;
            at = m->grace_at;
            ord = m->grace_order;
        }
        for (int c = 0; c < m->ncalls; c++) {
            mcall *call = &m->calls[c];
            if (call->kstate != KQ_RETRY || call->retry_at > m->now) continue;
            if (call->retry_at < at || (call->retry_at == at && call->retry_order < ord)) {
                best = c;
                at = call->retry_at;
                ord = call->retry_order;
            }
        }
        if (best == -2) break;
        if (best == -1) {
            m->grace_armed = false;
            m_close(m, BDS_E_SHUTDOWN, false);
        } else {
            m->calls[best].kstate = KQ_QUEUED;
            m_run(m, best);
        }
    }
    m_settle(m);
}

/* ---- comparing the model with the pipeline ------------------------------------------------ */

static uint64_t g_seed;

static void compare(sim *S, model *m, int step) {
    sim_session *ss = &S->sessions[0];
    bds_session *s = ss->s;
    bds_session_stats st;
    bds_session_get_stats(s, &st);
#define SAME(a, b, what) cr_assert_eq((uint64_t)(a), (uint64_t)(b), "seed %lu step %d: %s: real %lu model %lu", \
                                      (unsigned long)g_seed, step, what, (unsigned long)(a), (unsigned long)(b))
    SAME(bds_session_get_state(s), m->state, "state");
    SAME(st.admitted, m->st.admitted, "admitted");
    SAME(st.rejected, m->st.rejected, "rejected");
    SAME(st.completed, m->st.completed, "completed");
    SAME(st.failed, m->st.failed, "failed");
    SAME(st.nonterminal_failures, m->st.nonterm, "nonterminal");
    SAME(st.retried, m->st.retried, "retried");
    SAME(st.panics, m->st.panics, "panics");
    SAME(st.dropped, m->st.dropped, "dropped");
    SAME(st.pressure_signals, m->st.pressure, "pressure");
    SAME(st.tokens_free, m->tokens_free, "tokens_free");
    SAME(st.tokens_held, m->tokens_held, "tokens_held");
    SAME(st.executing, m->tokens_held + m->soft, "executing");
    SAME(ss->closed_calls, m->notified, "closed callbacks");
    if (m->notified) SAME(ss->close_status, m->close_status, "close status");
    SAME(bds_session_reason(s), m->reason, "reason");
    /* running calls, and start counts per call */
    uint32_t running = 0;
    for (int c = 0; c < m->ncalls; c++) running += m->calls[c].kstate == KQ_RUNNING && m->calls[c].behave == SIM_ASYNC;
    SAME(S->n_pending, running, "running calls");
    for (uint32_t i = 0; i < S->n_pending; i++) {
        sim_msg *msg = bds_call_payload(S->pending[i]);
        mcall *mc = &m->calls[msg->seq];
        cr_assert(mc->kstate == KQ_RUNNING, "seed %lu step %d: seq %lu runs, the model says it does not",
                  (unsigned long)g_seed, step, (unsigned long)msg->seq);
    }
    static uint32_t starts[MAXC];
    memset(starts, 0, sizeof starts);
    for (uint32_t i = 0; i < S->n_starts; i++) starts[S->starts[i].seq]++;
    for (int c = 0; c < m->ncalls; c++) SAME(starts[c], m->calls[c].attempt, "starts of a call");
    sim_check_tokens(S);
#undef SAME
}

static bds_options random_options(sim *S) {
    bds_options o = bds_default_options();
    o.inbound.ordering.mode = sim_rand(S) % 4 ? BDS_ORDERING_KEYED_FIFO : BDS_ORDERING_FIFO;
    static const uint32_t ocap[] = {0, 1, 2, 5};
    o.inbound.ordering.capacity = ocap[sim_rand(S) % 4];
    o.inbound.backpressure.policy = (bds_backpressure_policy)(sim_rand(S) % 4);
    o.inbound.backpressure.capacity = (uint32_t)(sim_rand(S) % 4);
    o.inbound.backpressure.queue_capacity = 0;
    if (o.inbound.backpressure.policy == BDS_BP_QUEUE && o.inbound.backpressure.capacity) {
        o.inbound.backpressure.queue_capacity = (uint32_t)(sim_rand(S) % 3);
    }
    o.retry.max_attempts = (uint32_t)(sim_rand(S) % 3);
    o.retry.backoff_ns = o.retry.max_attempts ? (1 + sim_rand(S) % 3) * MS : 0;
    static const uint32_t masks[] = {BDS_RETRYABLE_DEFAULT, BDS_RETRYABLE_DEFAULT, 0, 1u << BDS_INTERNAL,
                                     (1u << BDS_INTERNAL) | (1u << BDS_CANCELLED)};
    o.retry.retryable = masks[sim_rand(S) % 5];
    o.outbound.ordering.mode = sim_rand(S) % 2 ? BDS_ORDERING_KEYED_FIFO : BDS_ORDERING_FIFO;
    o.outbound.backpressure.capacity = 1 + (uint32_t)(sim_rand(S) % 3); /* replies wait when the client is slow */
    o.outbound.backpressure.queue_capacity = 0;
    o.inbound.drain_on_client_close = sim_rand(S) % 3 != 0;
    o.inbound.failures_terminal = sim_rand(S) % 3 != 0;
    o.shutdown.drain_inbound = sim_rand(S) % 2;
    o.shutdown.grace_period_ns = (5 + sim_rand(S) % 10) * MS;
    return o;
}

static void random_behaviour(sim *S, int *behave, uint32_t *fails) {
    static const int pick[] = {SIM_ASYNC, SIM_ASYNC, SIM_ASYNC, SIM_OK, SIM_OK, SIM_FAIL, SIM_NONTERMINAL, SIM_PANIC};
    *behave = pick[sim_rand(S) % 8];
    *fails = *behave == SIM_FAIL ? (uint32_t)(sim_rand(S) % 4) : 0;
    if (*behave == SIM_PANIC && sim_rand(S) % 3) *behave = SIM_ASYNC; /* panics end sessions: keep them rare */
}

/* Odd keys are long (40 bytes, one shared prefix): the pipeline keeps short
 * keys in its key maps and points long ones into the calls, re-pointing them
 * as calls leave; both kinds run in every script. */
static void model_key(char *buf, int keyid) {
    size_t n = keyid % 2 ? 40 : 0;
    memset(buf, 'x', n);
    buf[n] = (char)('a' + keyid);
    buf[n + 1] = 0;
}

static void run_model_script(uint64_t seed) {
    g_seed = seed;
    sim *S = sim_new(1, seed);
    bds_options o = random_options(S);
    static model mstore;
    model *m = &mstore;
    memset(m, 0, sizeof *m);
    m->o = o;
    m->state = BDS_STATE_OPEN;
    m->tokens_free = o.inbound.backpressure.capacity;
    m->now = S->now;
    sim_open(S, 0, &o);
    uint64_t seq = 0;
    int steps = 20 + (int)(sim_rand(S) % 60);
    for (int step = 0; step < steps && seq < MAXC - 1; step++) {
        S->now += 1000; /* time passes between events: retries of different steps never tie */
        m->now = S->now;
        uint64_t r = sim_rand(S) % 100;
        if (r < 45) {
            int behave;
            uint32_t fails;
            random_behaviour(S, &behave, &fails);
            int keyid = (int)(sim_rand(S) % MAXK);
            char key[48];
            model_key(key, keyid);
            sim_msg *msg = sim_msg_new(0, key, seq, behave);
            msg->fails = fails;
            bds_status real;
            sim_send_msg(S, msg, &real);
            bds_status want = m_receive(m, keyid, behave, fails, seq);
            cr_assert_eq(real, want, "seed %lu step %d: receive real %s model %s", (unsigned long)seed, step,
                         bds_status_name(real), bds_status_name(want));
            if (real == BDS_OK) seq++;
        } else if (r < 80) {
            if (S->n_pending == 0) continue;
            uint32_t k = (uint32_t)(sim_rand(S) % S->n_pending);
            static const bds_status outcomes[] = {BDS_OK,          BDS_OK,
                                                  BDS_OK,          BDS_INTERNAL,
                                                  BDS_E_NONTERMINAL_FAILURE, BDS_UNAVAILABLE,
                                                  BDS_E_PANIC_RECOVERED, BDS_CANCELLED};
            bds_status out = outcomes[sim_rand(S) % (sizeof outcomes / sizeof outcomes[0])];
            /* a failure the handler marks retryable (bds_call_retry) */
            bool ask = out != BDS_OK && out != BDS_E_PANIC_RECOVERED && sim_rand(S) % 3 == 0;
            sim_msg *msg = bds_call_payload(S->pending[k]);
            m->calls[msg->seq].status = out;
            m->calls[msg->seq].asked = ask;
            m_push(m, EV_COMPLETE, (int)msg->seq);
            if (ask) sim_complete_retry(S, k, out, sim_rand(S) % 2);
            else sim_complete(S, k, out, sim_rand(S) % 2);
        } else if (r < 90) {
            uint64_t ns = (sim_rand(S) % 4) * MS;
            S->now += ns;
            m_advance(m, ns);
        } else if (r < 95) {
            bds_status real = bds_session_client_close(S->sessions[0].s);
            cr_assert_eq(real, m_client_close(m), "seed %lu step %d: client_close", (unsigned long)seed, step);
        } else if (r < 98) {
            bds_session_shutdown(S->sessions[0].s);
            m_shutdown(m);
        } else {
            bds_session_cancel(S->sessions[0].s);
            m_close(m, BDS_CANCELLED, false);
        }
        sim_settle(S);
        m_settle(m);
        compare(S, m, step);
    }
    sim_free(S);
}

Test(pipeline_model, random_scripts_match_the_reference_model_step_by_step, .timeout = 300) {
    const char *env = getenv("BDS_MODEL_SEED");
    if (env) {
        run_model_script(strtoull(env, NULL, 10));
        return;
    }
    for (uint64_t seed = 1; seed <= 3000; seed++) run_model_script(seed * 7919);
}

/* ---- chaos across pipelines ------------------------------------------------------------------ */

static void run_chaos_script(uint64_t seed) {
    sim *S = sim_new(3, seed);
    S->auto_ack_replies = false; /* the client reads at random steps */
    int sessions = 1 + (int)(sim_rand(S) % 3);
    bool fifo[3];
    for (int i = 0; i < sessions; i++) {
        bds_options o = random_options(S);
        fifo[i] = o.inbound.ordering.mode == BDS_ORDERING_FIFO;
        sim_open(S, (uint32_t)(sim_rand(S) % 3), &o);
    }
    static int key_of[4096];
    static uint32_t max_replies[4096]; /* one successful attempt's */
    uint64_t seq = 0, admitted = 0;
    int64_t last_start[3][MAXK];
    memset(last_start, 0xff, sizeof last_start);
    uint32_t seen = 0;
    for (int step = 0; step < 400; step++) {
        uint64_t r = sim_rand(S) % 100;
        if (r < 30 && seq < 4096) {
            int behave;
            uint32_t fails;
            random_behaviour(S, &behave, &fails);
            int s = (int)(sim_rand(S) % (uint64_t)sessions);
            int keyid = (int)(sim_rand(S) % MAXK);
            char key[48];
            model_key(key, keyid);
            key_of[seq] = fifo[s] ? 0 : keyid;
            /* Some answer from call timers (bds_call_after), which the
             * session's end fires early wherever it catches them. */
            if (sim_rand(S) % 6 == 0) behave = SIM_TIMER;
            sim_msg *msg = sim_msg_new(s, key, seq++, behave);
            msg->fails = fails;
            msg->after_ns = (sim_rand(S) % 4) * MS;
            msg->ticks = 1 + (uint32_t)(sim_rand(S) % 3);
            msg->replies = (uint32_t)(sim_rand(S) % 3); /* per attempt */
            max_replies[msg->seq] = msg->replies + (behave == SIM_TIMER ? msg->ticks : 0);
            bds_status st;
            sim_send_msg(S, msg, &st);
            admitted += st == BDS_OK;
        } else if (r < 55) {
            if (S->n_pending) {
                sim_complete(S, (uint32_t)(sim_rand(S) % S->n_pending), sim_rand(S) % 6 ? BDS_OK : BDS_INTERNAL,
                             sim_rand(S) % 2);
            }
        } else if (r < 58) {
            S->now += (sim_rand(S) % 4) * MS;
        } else if (r < 60) {
            int i = (int)(sim_rand(S) % (uint64_t)sessions), saved = sim_home(S, i);
            bds_session_client_close(S->sessions[i].s);
            sim_switch(S, saved);
        } else if (r < 61) {
            int i = (int)(sim_rand(S) % (uint64_t)sessions), saved = sim_home(S, i);
            bds_session_cancel(S->sessions[i].s);
            sim_switch(S, saved);
        } else if (r < 70) {
            /* the client reads its session's oldest reply */
            int i = (int)(sim_rand(S) % (uint64_t)sessions);
            sim_session *ss = &S->sessions[i];
            if (ss->n_unacked) {
                sim_reply *rp = ss->unacked[0];
                memmove(ss->unacked, ss->unacked + 1, (ss->n_unacked - 1) * sizeof ss->unacked[0]);
                ss->n_unacked--;
                int saved = sim_home(S, i);
                if (bds_session_get_state(ss->s) != BDS_STATE_CLOSED) bds_session_reply_written(ss->s, &rp->r);
                sim_switch(S, saved);
                free(rp);
            }
        } else {
            for (int k = 0; k < 5; k++) sim_step_random(S);
        }
        sim_check_tokens(S);
        /* Within a (session, key), first attempts start in arrival order, and a
         * call starts only after its predecessor has left (none runs beside it). */
        for (; seen < S->n_starts; seen++) {
            sim_event *e = &S->starts[seen];
            if (e->attempt != 1) continue;
            int64_t *last = &last_start[e->session][key_of[e->seq]];
            cr_assert_gt((int64_t)e->seq, *last, "seed %lu: key order broken", (unsigned long)seed);
            *last = (int64_t)e->seq;
        }
        for (uint32_t a = 0; a < S->n_pending; a++) {
            for (uint32_t b = a + 1; b < S->n_pending; b++) {
                sim_msg *x = bds_call_payload(S->pending[a]), *y = bds_call_payload(S->pending[b]);
                cr_assert(!(x->session == y->session && key_of[x->seq] == key_of[y->seq]),
                          "seed %lu: two calls of one key run at once", (unsigned long)seed);
            }
        }
    }
    /* Finish everything: every admitted call must end exactly once. The
     * client reads everything from now on. */
    for (int i = 0; i < sessions; i++) {
        sim_session *ss = &S->sessions[i];
        int saved = sim_home(S, i);
        for (uint32_t k = 0; k < ss->n_unacked; k++) {
            if (bds_session_get_state(ss->s) != BDS_STATE_CLOSED) bds_session_reply_written(ss->s, &ss->unacked[k]->r);
            free(ss->unacked[k]);
        }
        ss->n_unacked = 0;
        sim_switch(S, saved);
    }
    S->auto_ack_replies = true;
    for (;;) {
        while (sim_step_random(S)) sim_check_tokens(S);
        bool timers = false;
        for (uint32_t i = 0; i < S->n; i++) timers |= bds_pipeline_next_deadline(S->pipes[i]) != UINT64_MAX;
        if (S->n_pending) sim_complete(S, 0, BDS_OK, false);
        else if (timers) S->now += 100 * MS, sim_settle(S);
        else break;
    }
    uint64_t ended = 0;
    if (getenv("BDS_MODEL_DEBUG")) {
        for (int i = 0; i < sessions; i++) {
            bds_session *x = S->sessions[i].s;
            fprintf(stderr, "session %d home %u state %s outstanding %u stopped %d n_wait %u free %u held %u acks %u policy %d cap %u mode %d\n", i,
                    x->home->index, bds_session_state_name(bds_session_get_state(x)), x->outstanding, x->inbound_stopped, x->n_wait,
                    x->tokens_free, x->tokens_held, x->acks_pending, x->opts.inbound.backpressure.policy, x->opts.inbound.backpressure.capacity, x->opts.inbound.ordering.mode);
            for (uint32_t pi = 0; pi < S->n; pi++) {
                for (bds__exec_key *ek = x->exec[pi].first; ek; ek = ek->s_next) {
                    sim_msg *hm = bds_call_payload(ek->head);
                    fprintf(stderr, "  exec pipe %u: head seq %lu state %d has_token %d drop_rest %d exec_token %d attempt %u\n", pi,
                            (unsigned long)hm->seq, ek->head->exec_state, ek->head_has_token, ek->drop_rest, ek->head->exec_token, ek->head->attempt);
                }
            }
        }
    }
    for (int i = 0; i < sessions; i++) {
        bds_session_stats st;
        bds_session_get_stats(S->sessions[i].s, &st);
        bool terminal = S->sessions[i].s->opts.inbound.failures_terminal;
        ended += st.completed + st.dropped + st.panics + st.failed + st.nonterminal_failures - (terminal ? 0 : st.failed);
    }
    cr_assert_eq(ended, admitted, "seed %lu: %lu admitted, %lu ended", (unsigned long)seed, (unsigned long)admitted,
                 (unsigned long)ended);
    cr_assert_eq(S->released, admitted, "seed %lu: every payload released once", (unsigned long)seed);
    /* Retries hold replies: no message gets more than one attempt's worth. */
    static uint32_t written[4096];
    memset(written, 0, sizeof written);
    for (int i = 0; i < sessions; i++)
        for (uint32_t w = 0; w < S->sessions[i].n_written; w++) written[S->sessions[i].written[w]]++;
    for (uint64_t q = 0; q < seq; q++)
        cr_assert_leq(written[q], max_replies[q], "seed %lu: seq %lu written %u times, one attempt makes %u",
                      (unsigned long)seed, (unsigned long)q, written[q], max_replies[q]);
    /* Either outbound ordering keeps each key's replies in their calls' order. */
    for (int i = 0; i < sessions; i++) {
        int64_t last[MAXK];
        memset(last, 0xff, sizeof last);
        for (uint32_t w = 0; w < S->sessions[i].n_written; w++) {
            uint64_t q = S->sessions[i].written[w];
            cr_assert_geq((int64_t)q, last[key_of[q]], "seed %lu: key %d's replies out of order", (unsigned long)seed,
                          key_of[q]);
            last[key_of[q]] = (int64_t)q;
        }
    }
    sim_free(S);
}

Test(pipeline_model, chaos_delivery_keeps_order_tokens_and_frees_everything, .timeout = 300) {
    const char *env = getenv("BDS_MODEL_SEED");
    uint64_t first = env ? strtoull(env, NULL, 10) : 1, last = env ? first : 500;
    for (uint64_t seed = first; seed <= last; seed++) run_chaos_script(seed * 104729);
}
