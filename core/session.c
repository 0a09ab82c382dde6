/* session.c — the HOME role: sessions, the Receiver's admission, the Sender.
 *
 * Admission follows the spec's order, ordering then backpressure (docs/ARCHITECTURE.md):
 * a call to a busy key waits for its turn without a token (bounded by
 * inbound.ordering.capacity); the first call of an idle key needs a token now,
 * and the policy decides what happens when none is free (reject, wait in the
 * session's FIFO of keys bounded by queue_capacity, or run on a soft token).
 * The token then belongs to the key and passes from head to head on the EXEC
 * side; it comes back here only when the key empties. Invariant, checked by
 * the tests after every step: tokens_free + tokens_held == capacity.
 *
 * The Sender keeps reply order as replies arrive (FIFO), or per key
 * (KEYED_FIFO: each key's replies come from one EXEC pipeline in order, wait
 * in their key's queue, and the waiting keys take turns), and
 * bounds replies handed to the transport but not yet written (outbound
 * capacity), with the same four policies. With fail_fast a rejected reply
 * ends the session with RESOURCE_EXHAUSTED.
 *
 * Ownership: sessions and calls are allocated and freed here. A session is
 * freed once the transport released it, no call is outstanding, every
 * CANCEL/DROP was acknowledged and its close notification has run. */
#include <string.h>

#include "pipeline_int.h"

static void session_check_drained(bds_pipeline *p, bds_session *s);
static void session_maybe_free(bds_pipeline *p, bds_session *s);

/* Session calls belong to the home pipeline's thread (assert ownership). */
#define ASSERT_HOME(s) BDS_ASSERT(bds__pipeline_current() == (s)->home)

/* Adds n to a counter of the session's stats and, live, to its bds_counters.
 * Those have one writer, this pipeline's thread (pipeline.h): a relaxed load
 * and store, no locked add, and every reader sees each value whole. */
static inline void counter_add(bds__counter *c, uint64_t n) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
#define COUNT(s, field, n)                                                     \
    do {                                                                       \
        (s)->stats.field += (n);                                               \
        if ((s)->counters) counter_add(&(s)->counters->field, (uint64_t)(n));  \
    } while (0)

static bds_session_state session_state(const bds_session *s) {
    /* acquire: pairs with the transition's release in bds__fsm_step */
    return (bds_session_state)atomic_load_explicit(&((bds_session *)s)->state, memory_order_acquire);
}

static void copy_msg(char *dst, size_t cap, const char *msg) {
    strncpy(dst, msg ? msg : "", cap - 1);
    dst[cap - 1] = 0;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void session_on_deadline(bds_timer *timer, void *ctx);
static void session_on_grace(bds_timer *timer, void *ctx);

void bds_session_config_default(bds_session_config *config) {
    memset(config, 0, sizeof *config);
    config->size = sizeof *config;
}

bds_status bds_session_create(bds_session **out, bds_pipeline *p, const bds_session_config *cfg,
                              const char **why) {
    *out = NULL;
    if (why) *why = NULL;
    if (!cfg || cfg->size < sizeof *cfg || !cfg->handler || !cfg->ops || !cfg->ops->write ||
        !cfg->ops->drop || !cfg->ops->release || !cfg->ops->closed) {
        if (why) *why = "session config: handler and ops (write, drop, release, closed) are required";
        return BDS_E_INVALID;
    }
    bds_options opts = cfg->options ? *cfg->options : bds_default_options();
    bds_status st = bds_options_validate(&opts, why);
    if (st != BDS_OK) return st;
    if (cfg->counters && opts.metrics.enabled) {
        /* One writer per bds_counters: bind it to this pipeline, or refuse. relaxed: the CAS alone decides */
        uint64_t home = 0, me = (uint64_t)(uintptr_t)p;
        if (!atomic_compare_exchange_strong_explicit(&cfg->counters->_home, &home, me, memory_order_relaxed,
                                                     memory_order_relaxed) &&
            home != me) {
            if (why) *why = "session config: counters already count for another pipeline (one writer each)";
            return BDS_E_INVALID;
        }
    }
    bds_session *s = bds__pool_get(&p->sessions);
    if (!s) return BDS_E_NOMEM;
    atomic_init(&s->state, BDS_STATE_INIT);
    atomic_init(&s->reason, BDS_OK);
    s->home = p;
    s->opts = opts;
    s->handler = cfg->handler;
    s->handler_ctx = cfg->handler_ctx;
    s->ops = cfg->ops;
    s->ops_ctx = cfg->ops_ctx;
    s->counters = opts.metrics.enabled ? cfg->counters : NULL;
    s->tokens_free = opts.inbound.backpressure.capacity;
    bds__timer_init(&s->deadline_timer, session_on_deadline, s);
    bds__timer_init(&s->grace_timer, session_on_grace, s);
    *out = s;
    return BDS_OK;
}

/* Tells every EXEC pipeline that may hold our keys to drop them (and, with
 * running_too, to abort retries). No EXEC or GRANT follows. */
static void session_stop_inbound(bds_pipeline *p, bds_session *s, bool running_too) {
    s->inbound_stopped = true;
    /* Keys still waiting for a token will never get one: EXEC drops their calls. */
    for (bds__home_key *hk = s->wait_head, *next; hk; hk = next) {
        next = hk->wait_next;
        hk->wait_next = NULL;
        hk->in_wait = false;
    }
    s->wait_head = s->wait_tail = NULL;
    s->n_wait = 0;
    if (s->outstanding == 0) return;
    for (uint32_t i = 0; i < p->count; i++) {
        if (s->exec[i].home_out == 0) continue;
        s->acks_pending++;
        bds__post(p, i, running_too ? BDS_XK_CANCEL : BDS_XK_DROP, s);
    }
}

static bds_reply *sender_dequeue(bds_pipeline *p, bds_session *s);

static void session_drop_queued_replies(bds_pipeline *p, bds_session *s) {
    while (s->sq_len) s->ops->drop(s, sender_dequeue(p, s), s->ops_ctx);
    BDS_ASSERT(s->sq_head == NULL && s->rr_head == NULL && s->sq_bytes == 0);
}

/* Moves the session to CLOSED (through DRAINED when it ended cleanly) and
 * schedules the one close notification. */
static void session_close(bds_pipeline *p, bds_session *s, bds_status status, const char *msg, bool drained) {
    if (status != BDS_OK) bds__reason_set(&s->reason, status);
    if (!bds__fsm_step(&s->state, drained ? BDS_EV_DRAINED : BDS_EV_FAIL, NULL)) return;
    s->close_status = status;
    copy_msg(s->close_msg, sizeof s->close_msg, msg ? msg : bds_status_str(status));
    bds__timer_cancel(p->timers, &s->deadline_timer);
    bds__timer_cancel(p->timers, &s->grace_timer);
    session_drop_queued_replies(p, s);
    if (!s->inbound_stopped || s->outstanding > 0) session_stop_inbound(p, s, true);
    s->notify_pending = true;
    bds__post(p, p->index, BDS_XK_NOTIFY, s);
}

void bds__home_on_notify(bds_pipeline *p, bds_session *s) {
    /* notify_pending stays set during the callback: a bds_session_release()
     * from inside it must not free s under our feet */
    if (!s->released) s->ops->closed(s, s->close_status, s->close_msg, s->ops_ctx);
    s->notify_pending = false;
    session_maybe_free(p, s);
}

void bds__home_on_ack(bds_pipeline *p, bds_session *s) {
    BDS_ASSERT(s->acks_pending > 0);
    s->acks_pending--;
    session_maybe_free(p, s);
}

static void stats_add(bds_pipeline_stats *t, const bds_session_stats *x) {
    t->admitted += x->admitted;
    t->rejected += x->rejected;
    t->completed += x->completed;
    t->failed += x->failed;
    t->nonterminal_failures += x->nonterminal_failures;
    t->retried += x->retried;
    t->panics += x->panics;
    t->dropped += x->dropped;
    t->pressure_signals += x->pressure_signals;
    t->replies_written += x->replies_written;
    t->replies_rejected += x->replies_rejected;
}

static void session_maybe_free(bds_pipeline *p, bds_session *s) {
    if (!s->released || s->outstanding || s->acks_pending || s->notify_pending) return;
    BDS_ASSERT(session_state(s) == BDS_STATE_CLOSED);
    BDS_ASSERT(s->sq_len == 0 && s->wait_head == NULL);
    bds__timer_cancel(p->timers, &s->deadline_timer);
    bds__timer_cancel(p->timers, &s->grace_timer);
    if (s->opts.metrics.enabled) stats_add(&p->stats, &s->stats);
    bds__pool_put(&p->sessions, s);
}

void bds_session_release(bds_session *s) {
    ASSERT_HOME(s);
    bds_pipeline *p = s->home;
    BDS_ASSERT(!s->released);
    s->released = true;
    session_close(p, s, BDS_CANCELLED, "released by the transport", false);
    session_maybe_free(p, s);
}

bds_status bds_session_open(bds_session *s) {
    ASSERT_HOME(s);
    return bds__fsm_step(&s->state, BDS_EV_OPEN, NULL) ? BDS_OK : BDS_FAILED_PRECONDITION;
}

bds_status bds_session_client_close(bds_session *s) {
    ASSERT_HOME(s);
    bds_pipeline *p = s->home;
    bds_session_state st = session_state(s);
    if (st == BDS_STATE_DRAINING && !s->client_closed) {
        s->client_closed = true; /* shutdown drain in progress: it will now end OK */
    } else if (!bds__fsm_step(&s->state, BDS_EV_CLIENT_CLOSE, NULL)) {
        return BDS_FAILED_PRECONDITION;
    }
    s->client_closed = true;
    if (!s->opts.inbound.drain_on_client_close && !s->inbound_stopped) session_stop_inbound(p, s, false);
    session_check_drained(p, s);
    return BDS_OK;
}

bds_status bds_session_server_close(bds_session *s) {
    ASSERT_HOME(s);
    if (!bds__fsm_step(&s->state, BDS_EV_SERVER_CLOSE, NULL)) return BDS_FAILED_PRECONDITION;
    s->server_closed = true;
    session_check_drained(s->home, s);
    return BDS_OK;
}

void bds_session_shutdown(bds_session *s) {
    ASSERT_HOME(s);
    bds_pipeline *p = s->home;
    bds_session_state from;
    bds__reason_set(&s->reason, BDS_E_SHUTDOWN);
    if (!bds__fsm_step(&s->state, BDS_EV_SHUTDOWN, &from)) {
        if (session_state(s) == BDS_STATE_INIT) {
            session_close(p, s, BDS_E_SHUTDOWN, "server shutting down", false);
        }
        return; /* already draining or closed */
    }
    if (!s->opts.shutdown.drain_inbound && !s->inbound_stopped) session_stop_inbound(p, s, false);
    if (!s->opts.shutdown.drain_outbound) session_drop_queued_replies(p, s);
    BDS_ASSERT(bds__timer_arm(p->timers, &s->grace_timer, bds__now(p) + s->opts.shutdown.grace_period_ns) == 0);
    session_check_drained(p, s);
}

void bds_session_cancel(bds_session *s) {
    ASSERT_HOME(s);
    session_close(s->home, s, BDS_CANCELLED, "cancelled by the client", false);
}

void bds_session_fail(bds_session *s, bds_status status, const char *message) {
    ASSERT_HOME(s);
    BDS_ASSERT(status != BDS_OK);
    session_close(s->home, s, status, message, false);
}

void bds_session_set_deadline(bds_session *s, uint64_t deadline_ns) {
    ASSERT_HOME(s);
    bds_pipeline *p = s->home;
    if (deadline_ns == 0) {
        bds__timer_cancel(p->timers, &s->deadline_timer);
        return;
    }
    if (session_state(s) == BDS_STATE_CLOSED) return;
    BDS_ASSERT(bds__timer_arm(p->timers, &s->deadline_timer, deadline_ns) == 0);
}

static void session_on_deadline(bds_timer *timer, void *ctx) {
    (void)timer;
    bds_session *s = ctx;
    session_close(s->home, s, BDS_DEADLINE_EXCEEDED, "deadline exceeded", false);
}

static void session_on_grace(bds_timer *timer, void *ctx) {
    (void)timer;
    bds_session *s = ctx;
    session_close(s->home, s, BDS_E_SHUTDOWN, "server shutting down: grace period over", false);
}

/* Ends the session cleanly once nothing is in flight: all DONEs home and no
 * reply waiting for an outbound token (replies already handed to the
 * transport are ahead of the trailers in its queue). */
static void session_check_drained(bds_pipeline *p, bds_session *s) {
    if (s->outstanding || s->sq_len) return;
    switch (session_state(s)) {
    case BDS_STATE_CLIENT_CLOSED:
        if (!bds__fsm_step(&s->state, BDS_EV_SERVER_CLOSE, NULL)) return;
        session_close(p, s, BDS_OK, "", true);
        return;
    case BDS_STATE_DRAINING:
        /* OK promises that every message was answered: not when some were
         * refused because the shutdown had begun. */
        if (s->client_closed && s->refused_in_drain)
            session_close(p, s, BDS_E_SHUTDOWN, "server shutting down: messages sent after it began were not run", true);
        else if (s->client_closed) session_close(p, s, BDS_OK, "", true);
        else if (s->server_closed) return; /* waits for the client's half-close */
        else session_close(p, s, BDS_E_SHUTDOWN, "server shutting down", true);
        return;
    default:
        return;
    }
}

/* ---- Receiver ------------------------------------------------------------------ */

static uint32_t room_sub(uint32_t cap, uint32_t used) {
    return cap == 0 ? UINT32_MAX : (used >= cap ? 0 : cap - used);
}

static bool inbound_bytes_full(const bds_session *s) {
    uint32_t max = s->opts.inbound.outstanding_bytes_max;
    return max != 0 && s->outstanding_bytes >= max;
}

/* The Sender holds outbound.unsent_bytes_max: admitting more messages would
 * only make more replies, so the session takes none until the client reads. */
static bool outbound_bytes_full(const bds_session *s) {
    uint32_t max = s->opts.outbound.unsent_bytes_max;
    return max != 0 && s->out_flight_bytes + s->sq_bytes >= max;
}

uint32_t bds_session_inbound_room(bds_session *s) {
    ASSERT_HOME(s);
    bds_session_state st = session_state(s);
    if (st != BDS_STATE_OPEN && st != BDS_STATE_SERVER_CLOSED) return 0;
    const bds_backpressure_options *bp = &s->opts.inbound.backpressure;
    uint32_t ord = room_sub(s->opts.inbound.ordering.capacity, s->waiting);
    uint32_t tok = UINT32_MAX;
    if (bp->capacity != 0 && bp->policy == BDS_BP_HARD_REJECT) tok = s->tokens_free;
    if (bp->capacity != 0 && bp->policy == BDS_BP_QUEUE && bp->queue_capacity != 0) {
        uint32_t q = room_sub(bp->queue_capacity, s->n_wait);
        tok = q > UINT32_MAX - s->tokens_free ? UINT32_MAX : q + s->tokens_free;
    }
    uint32_t room = ord < tok ? ord : tok;
    if (s->opts.inbound.read_ahead && bp->policy != BDS_BP_HARD_REJECT) {
        uint32_t ahead = room_sub(s->opts.inbound.read_ahead, s->waiting + s->n_wait);
        if (ahead < room) room = ahead;
    }
    if (inbound_bytes_full(s) || outbound_bytes_full(s)) room = 0;
    if (room == 0) s->room_was_zero = true;
    return room;
}

/* Tells the transport that inbound room reopened, if it once saw none. */
static void inbound_maybe_ready(bds_session *s) {
    if (s->room_was_zero && !s->released && s->ops->inbound_ready && bds_session_inbound_room(s) > 0) {
        s->room_was_zero = false;
        s->ops->inbound_ready(s, s->ops_ctx);
    }
}

static bds_status receive_state_check(const bds_session *s) {
    switch (session_state(s)) {
    case BDS_STATE_OPEN:
    case BDS_STATE_SERVER_CLOSED: return BDS_OK;
    case BDS_STATE_INIT: return BDS_FAILED_PRECONDITION;
    case BDS_STATE_CLIENT_CLOSED: return BDS_E_INBOUND_CLOSED;
    case BDS_STATE_DRAINING: return s->client_closed ? BDS_E_INBOUND_CLOSED : BDS_E_SHUTDOWN;
    case BDS_STATE_CLOSED: return BDS_E_SESSION_CLOSED;
    }
    BDS_UNREACHABLE();
}

static void pressure_signal(bds_session *s, const bds_call *call, bds_direction dir, uint32_t in_use, uint32_t cap) {
    COUNT(s, pressure_signals, 1);
    if (s->opts.on_pressure) s->opts.on_pressure(s, call, dir, in_use, cap, s->opts.on_pressure_ctx);
}

/* Picks the token for the first call of an idle key. Returns false to reject. */
static bool admit_token(bds_session *s, uint8_t *token) {
    const bds_backpressure_options *bp = &s->opts.inbound.backpressure;
    if (bp->capacity == 0 || s->tokens_free > 0) {
        if (bp->capacity) s->tokens_free--;
        s->tokens_held++;
        *token = BDS_TOKEN_REAL;
        return true;
    }
    switch (bp->policy) {
    case BDS_BP_HARD_REJECT: return false;
    case BDS_BP_QUEUE:
        if (bp->queue_capacity && s->n_wait >= bp->queue_capacity) return false;
        *token = BDS_TOKEN_NONE;
        return true;
    case BDS_BP_SOFT_ALLOW_SIGNAL: /* the receive signals once the call is filled in */
    case BDS_BP_SOFT_ALLOW:
        s->soft_in_use++;
        *token = BDS_TOKEN_SOFT;
        return true;
    }
    BDS_UNREACHABLE();
}

static void hw(uint32_t *mark, uint32_t v) {
    if (v > *mark) *mark = v;
}

static bds_status receive_reject(bds_pipeline *p, bds_session *s, bds_call *call, const char *why) {
    bds__pool_put(&p->calls, call);
    COUNT(s, rejected, 1);
    session_close(p, s, BDS_E_INBOUND_REJECTED, why, false);
    return BDS_E_INBOUND_REJECTED;
}

bds_status bds_session_receive(bds_session *s, void *payload, uint32_t bytes, const void *key, uint32_t key_len,
                               uint64_t seq) {
    ASSERT_HOME(s);
    bds_pipeline *p = s->home;
    bds_status st = receive_state_check(s);
    if (st == BDS_E_SHUTDOWN) s->refused_in_drain = true;
    if (st != BDS_OK) return st;
    if (key_len && !key) return BDS_E_INVALID;
    if (s->opts.inbound.ordering.mode == BDS_ORDERING_FIFO) key_len = 0; /* one order, one key */
    /* msg[] is a string: its first byte is all that must be zero. */
    bds_call *call = bds__pool_get_head(&p->calls, offsetof(bds_call, msg) + 1);
    if (!call) return BDS_E_NOMEM;
    if (inbound_bytes_full(s)) return receive_reject(p, s, call, "inbound outstanding bytes exhausted");
    bds__home_key *hk = s->last_hk;
    uint64_t key_hash, h = 0;
    if (hk && hk->node.key_len == key_len && (key_len == 0 || memcmp(hk->node.key, key, key_len) == 0)) {
        key_hash = hk->key_hash;
    } else {
        key_hash = key_len ? bds__hash(&p->seed, key, key_len) : 0;
        h = bds__kmap_hash(key_hash, s);
        bds__kmap_node *n = bds__kmap_find(&p->home_keys, h, s, key, key_len);
        hk = n ? BDS_CONTAINER_OF(n, bds__home_key, node) : NULL;
    }
    uint8_t token = BDS_TOKEN_NONE;
    if (hk) {
        uint32_t cap = s->opts.inbound.ordering.capacity;
        if (cap && s->waiting >= cap) return receive_reject(p, s, call, "inbound ordering capacity exhausted");
    } else {
        hk = bds__pool_get(&p->hkeys);
        if (!hk) {
            bds__pool_put(&p->calls, call);
            return BDS_E_NOMEM;
        }
        if (!admit_token(s, &token)) {
            bds__pool_put(&p->hkeys, hk);
            return receive_reject(p, s, call, "inbound backpressure capacity exhausted");
        }
        hk->node = (bds__kmap_node){.hash = h, .session = s};
        bds__kmap_node_set_key(&hk->node, key, key_len);
        hk->key_hash = key_hash;
        hk->token = token;
        (void)bds__kmap_insert(&p->home_keys, &hk->node);
        if (token == BDS_TOKEN_NONE) {
            hk->in_wait = true;
            if (s->wait_tail) s->wait_tail->wait_next = hk;
            else s->wait_head = hk;
            s->wait_tail = hk;
            hw(&s->stats.token_waiters_hw, ++s->n_wait);
        }
    }
    s->last_hk = hk;
    call->session = s;
    call->payload = payload;
    call->bytes = bytes;
    call->key = key;
    call->key_len = key_len;
    call->key_hash = key_hash;
    call->seq = seq;
    call->home = p->index;
    /* The empty key is one order per stream, like FIFO: it runs at home.
     * Hashed, every keyless stream of every connection ran on pipeline 0. */
    call->exec = s->opts.inbound.ordering.mode == BDS_ORDERING_FIFO || key_len == 0 ? p->index
                                                                                    : bds__fastrange(key_hash, p->count);
    call->exec_token = hk->count == 0 ? token : BDS_TOKEN_NONE;
    call->hkey = hk;
    /* Runs on a token over the capacity: the one just taken, or its key's. */
    call->pressured = hk->token == BDS_TOKEN_SOFT && s->opts.inbound.backpressure.policy == BDS_BP_SOFT_ALLOW_SIGNAL;
    if (hk->count++) {
        hk->tail->c_next = call;
        hw(&s->stats.waiting_hw, ++s->waiting);
    } else {
        hk->head = call;
    }
    hk->tail = call;
    s->outstanding++;
    s->outstanding_bytes += bytes;
    COUNT(s, admitted, 1);
    if (s->counters) counter_add(&s->counters->calls_live, 1);
    if (s->opts.metrics.payload_sizes) COUNT(s, bytes_in, bytes);
    hw(&s->stats.executing_hw, s->tokens_held + s->soft_in_use);
    s->exec[call->exec].home_out++;
    if (token == BDS_TOKEN_SOFT && s->opts.inbound.backpressure.policy == BDS_BP_SOFT_ALLOW_SIGNAL)
        pressure_signal(s, call, BDS_INBOUND, s->tokens_held + s->soft_in_use, s->opts.inbound.backpressure.capacity);
    bds__post(p, call->exec, BDS_XK_EXEC, call); /* the call is EXEC's from here */
    return BDS_OK;
}

/* Hands free tokens to keys waiting in the session's FIFO. */
static void tokens_grant_waiters(bds_pipeline *p, bds_session *s) {
    while (s->tokens_free > 0 && s->wait_head && !s->inbound_stopped) {
        bds__home_key *hk = s->wait_head;
        s->wait_head = hk->wait_next;
        if (!s->wait_head) s->wait_tail = NULL;
        hk->wait_next = NULL;
        hk->in_wait = false;
        s->n_wait--;
        hk->token = BDS_TOKEN_REAL;
        s->tokens_free--;
        s->tokens_held++;
        hw(&s->stats.executing_hw, s->tokens_held + s->soft_in_use);
        bds__post(p, hk->head->exec, BDS_XK_GRANT, hk->head);
    }
}

static void wait_list_remove(bds_session *s, bds__home_key *hk) {
    bds__home_key **pp = &s->wait_head, *prev = NULL;
    while (*pp && *pp != hk) {
        prev = *pp;
        pp = &(*pp)->wait_next;
    }
    if (*pp) {
        *pp = hk->wait_next;
        if (s->wait_tail == hk) s->wait_tail = prev;
        s->n_wait--;
    }
    hk->in_wait = false;
    hk->wait_next = NULL;
}

/* The key emptied: its token goes back to the pool (and on to a waiter). */
static void home_key_release(bds_pipeline *p, bds_session *s, bds__home_key *hk) {
    switch (hk->token) {
    case BDS_TOKEN_REAL:
        s->tokens_held--;
        if (s->opts.inbound.backpressure.capacity) s->tokens_free++;
        break;
    case BDS_TOKEN_SOFT: s->soft_in_use--; break;
    case BDS_TOKEN_NONE:
        if (hk->in_wait) wait_list_remove(s, hk);
        break;
    }
    if (s->last_hk == hk) s->last_hk = NULL;
    bds__kmap_remove(&p->home_keys, &hk->node);
    bds__pool_put(&p->hkeys, hk);
    tokens_grant_waiters(p, s);
}

/* Unlinks call from its key's outstanding list. Returns false when it was
 * not the head: the EXEC side finished calls out of order. */
static bool home_key_unlink(bds__home_key *hk, bds_call *call) {
    bool in_order = hk->head == call;
    bds_call **pp = &hk->head, *prev = NULL;
    while (*pp != call) {
        BDS_ASSERT(*pp != NULL);
        prev = *pp;
        pp = &(*pp)->c_next;
    }
    *pp = call->c_next;
    if (hk->tail == call) hk->tail = prev;
    hk->count--;
    if (hk->head && bds__kmap_node_key_borrowed(&hk->node))
        hk->node.key = hk->head->key; /* call's bytes are about to be released */
    return in_order;
}

static void done_account(bds_pipeline *p, bds_session *s, bds_call *call) {
    if (call->attempt > 1) COUNT(s, retried, call->attempt - 1);
    if (call->dropped) {
        COUNT(s, dropped, 1);
        return;
    }
    /* A handler's own BDS_CANCELLED is a failure like any other status. */
    switch (call->status) {
    case BDS_OK: COUNT(s, completed, 1); return;
    case BDS_E_PANIC_RECOVERED:
        COUNT(s, panics, 1);
        session_close(p, s, BDS_E_PANIC_RECOVERED, call->msg[0] ? call->msg : NULL, false);
        return;
    case BDS_E_NONTERMINAL_FAILURE: COUNT(s, nonterminal_failures, 1); return;
    default:
        COUNT(s, failed, 1);
        if (s->opts.inbound.failures_terminal) {
            session_close(p, s, call->status, call->msg[0] ? call->msg : NULL, false);
        } else {
            COUNT(s, nonterminal_failures, 1);
        }
        return;
    }
}

void bds__home_on_done(bds_pipeline *p, bds_call *call) {
    bds_session *s = call->session;
    bds__home_key *hk = call->hkey;
    bool in_order = home_key_unlink(hk, call);
    s->outstanding--;
    if (s->counters) counter_add(&s->counters->calls_live, UINT64_MAX); /* minus one */
    s->outstanding_bytes -= call->bytes;
    s->exec[call->exec].home_out--;
    if (hk->count) s->waiting--;
    if (!in_order) session_close(p, s, BDS_E_ORDERING_BROKEN, "ordering broken: calls of a key finished out of order", false);
    done_account(p, s, call);
    if (hk->count == 0) {
        home_key_release(p, s, hk);
    } else if (!call->token_passed && !s->inbound_stopped && !hk->in_wait) {
        /* The successor reached EXEC after its key queue had emptied: the token
         * goes straight to it, never through the pool (docs/ARCHITECTURE.md race). */
        bds__post(p, hk->head->exec, BDS_XK_GRANT, hk->head);
    }
    s->ops->release(s, call->payload, s->ops_ctx);
    atomic_store_explicit(&call->life, BDS_CALL_FREED, memory_order_relaxed); /* until reuse: a late call is named */
    bds__pool_put(&p->calls, call);
    inbound_maybe_ready(s);
    session_check_drained(p, s);
    session_maybe_free(p, s);
}

/* ---- Sender ----------------------------------------------------------------------- */

static void sender_write(bds_session *s, bds_reply *r) {
    s->out_in_flight++;
    s->out_flight_bytes += r->bytes;
    if (!r->control) COUNT(s, replies_written, 1);
    if (s->opts.metrics.payload_sizes) COUNT(s, bytes_out, r->bytes);
    s->ops->write(s, r, s->ops_ctx);
}

/* May one more reply go to the transport, as far as bytes go? One may
 * overshoot outbound.unsent_bytes_max, so any size goes out alone. */
static bool sender_bytes_room(const bds_session *s) {
    uint32_t max = s->opts.outbound.unsent_bytes_max;
    return max == 0 || s->out_flight_bytes < max;
}

/* Outbound KEYED_FIFO: each reply key waits in its own queue, and the keys
 * with waiting replies take turns, one reply each, as tokens free up; so a
 * key's backlog delays another key's reply by one reply, not by all of it.
 * FIFO: one queue. */
static bool sender_keyed(const bds_session *s) { return s->opts.outbound.ordering.mode == BDS_ORDERING_KEYED_FIFO; }

static void rr_push(bds_session *s, bds__out_key *ok) {
    ok->rr_next = NULL;
    if (s->rr_tail) s->rr_tail->rr_next = ok;
    else s->rr_head = ok;
    s->rr_tail = ok;
}

static void sender_enqueue(bds_pipeline *p, bds_session *s, bds_reply *r) {
    r->_next = NULL;
    if (sender_keyed(s)) {
        uint64_t h = bds__kmap_hash(r->_key, s);
        bds__kmap_node *n = bds__kmap_find(&p->out_keys, h, s, &r->_key, sizeof r->_key);
        bds__out_key *ok = n ? BDS_CONTAINER_OF(n, bds__out_key, node) : NULL;
        if (!ok) {
            ok = bds__pool_get(&p->okeys);
            BDS_ASSERT(ok != NULL); /* out of memory here would lose the reply's place: stop loudly */
            ok->node = (bds__kmap_node){.hash = h, .session = s};
            bds__kmap_node_set_key(&ok->node, &r->_key, sizeof r->_key);
            (void)bds__kmap_insert(&p->out_keys, &ok->node);
            rr_push(s, ok);
        }
        if (ok->tail) ok->tail->_next = r;
        else ok->head = r;
        ok->tail = r;
    } else {
        if (s->sq_tail) s->sq_tail->_next = r;
        else s->sq_head = r;
        s->sq_tail = r;
    }
    s->sq_bytes += r->bytes;
    hw(&s->stats.send_queue_hw, ++s->sq_len);
}

/* Whether the next waiting entry is a control entry (it takes no capacity). */
static bool sender_next_is_control(const bds_session *s) { return !s->rr_head && s->sq_head && s->sq_head->control; }

/* The next waiting reply: FIFO's head, or the reply of the key whose turn it is. */
static bds_reply *sender_dequeue(bds_pipeline *p, bds_session *s) {
    BDS_ASSERT(s->sq_len > 0);
    bds_reply *r;
    if (s->rr_head) {
        bds__out_key *ok = s->rr_head;
        r = ok->head;
        ok->head = r->_next;
        s->rr_head = ok->rr_next;
        if (!s->rr_head) s->rr_tail = NULL;
        if (ok->head) {
            rr_push(s, ok); /* its next turn comes after the others' */
        } else {
            bds__kmap_remove(&p->out_keys, &ok->node);
            bds__pool_put(&p->okeys, ok);
        }
    } else {
        r = s->sq_head;
        s->sq_head = r->_next;
        if (!s->sq_head) s->sq_tail = NULL;
    }
    r->_next = NULL;
    s->sq_len--;
    s->sq_bytes -= r->bytes;
    return r;
}

static bds_status sender_reject(bds_pipeline *p, bds_session *s, bds_reply *r) {
    COUNT(s, replies_rejected, 1);
    s->ops->drop(s, r, s->ops_ctx);
    if (s->opts.outbound.fail_fast) {
        session_close(p, s, BDS_E_OUTBOUND_BACKPRESSURE, "outbound backpressure: the client is not reading", false);
    }
    return BDS_E_OUTBOUND_BACKPRESSURE;
}

static bds_status sender_admit(bds_pipeline *p, bds_session *s, bds_reply *r) {
    bds_session_state st = session_state(s);
    bool outbound_closed = s->server_closed || (st == BDS_STATE_DRAINING && !s->opts.shutdown.drain_outbound);
    if (st == BDS_STATE_CLOSED || st == BDS_STATE_INIT || outbound_closed) {
        s->ops->drop(s, r, s->ops_ctx);
        return st == BDS_STATE_CLOSED ? BDS_E_SESSION_CLOSED : BDS_E_OUTBOUND_CLOSED;
    }
    if (r->control) {
        BDS_ASSERT(r->bytes == 0);
        if (!s->sq_len) {
            sender_write(s, r);
            return BDS_OK;
        }
        /* Behind every reply waiting now, in either mode: the FIFO queue,
         * which KEYED_FIFO's dequeue reaches only once every key's is empty. */
        r->_next = NULL;
        if (s->sq_tail) s->sq_tail->_next = r;
        else s->sq_head = r;
        s->sq_tail = r;
        hw(&s->stats.send_queue_hw, ++s->sq_len);
        return BDS_OK;
    }
    const bds_backpressure_options *bp = &s->opts.outbound.backpressure;
    uint32_t ord_cap = s->opts.outbound.ordering.capacity;
    if (!s->sq_len && sender_bytes_room(s) && (bp->capacity == 0 || s->out_in_flight < bp->capacity)) {
        sender_write(s, r);
        return BDS_OK;
    }
    switch (bp->policy) {
    case BDS_BP_HARD_REJECT: return sender_reject(p, s, r);
    case BDS_BP_QUEUE:
        if ((bp->queue_capacity && s->sq_len >= bp->queue_capacity) || (ord_cap && s->sq_len >= ord_cap)) {
            return sender_reject(p, s, r);
        }
        sender_enqueue(p, s, r);
        return BDS_OK;
    case BDS_BP_SOFT_ALLOW_SIGNAL:
    case BDS_BP_SOFT_ALLOW:
        /* Over the count capacity it runs anyway; over the byte bound it
         * waits in the queue like QUEUE (the queue then only holds those). */
        if (s->sq_len || !sender_bytes_room(s)) {
            sender_enqueue(p, s, r);
            return BDS_OK;
        }
        if (bp->policy == BDS_BP_SOFT_ALLOW_SIGNAL) pressure_signal(s, NULL, BDS_OUTBOUND, s->out_in_flight + 1, bp->capacity);
        sender_write(s, r);
        return BDS_OK;
    }
    BDS_UNREACHABLE();
}

void bds__home_on_reply(bds_pipeline *p, bds_reply *reply) {
    bds_session *s = reply->_session;
    if (sender_admit(p, s, reply) == BDS_E_OUTBOUND_BACKPRESSURE) {
        /* one writer: this thread; the handler hears of it at its next reply */
        atomic_store_explicit(&s->replies_refused, atomic_load_explicit(&s->replies_refused, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
}

void bds__home_on_drop_reply(bds_pipeline *p, bds_reply *reply) {
    (void)p;
    bds_session *s = reply->_session;
    s->ops->drop(s, reply, s->ops_ctx);
}

bds_status bds_session_send(bds_session *s, bds_reply *reply) {
    ASSERT_HOME(s);
    reply->_session = s;
    reply->_next = NULL;
    reply->_key = 0; /* pushes: the empty key's */
    return sender_admit(s->home, s, reply);
}

void bds_session_reply_written(bds_session *s, bds_reply *reply) {
    ASSERT_HOME(s);
    (void)reply;
    BDS_ASSERT(s->out_in_flight > 0 && s->out_flight_bytes >= reply->bytes);
    s->out_in_flight--;
    s->out_flight_bytes -= reply->bytes;
    if (session_state(s) == BDS_STATE_CLOSED) return;
    const bds_backpressure_options *bp = &s->opts.outbound.backpressure;
    bool soft = bp->policy == BDS_BP_SOFT_ALLOW || bp->policy == BDS_BP_SOFT_ALLOW_SIGNAL;
    while (s->sq_len && (sender_next_is_control(s) ||
                         (sender_bytes_room(s) && (soft || bp->capacity == 0 || s->out_in_flight < bp->capacity))))
        sender_write(s, sender_dequeue(s->home, s));
    inbound_maybe_ready(s);
    session_check_drained(s->home, s);
}

/* ---- accessors ---------------------------------------------------------------------- */

bds_session_state bds_session_get_state(const bds_session *s) { return session_state(s); }

bds_status bds_session_reason(const bds_session *s) {
    /* acquire: pairs with bds__reason_set's CAS */
    return (bds_status)atomic_load_explicit(&((bds_session *)s)->reason, memory_order_acquire);
}

void *bds_session_ctx(const bds_session *s) { return s->ops_ctx; }

uint64_t bds_session_held_bytes(const bds_session *s) {
    ASSERT_HOME(s);
    return s->outstanding_bytes + s->out_flight_bytes + s->sq_bytes;
}

uint64_t bds_session_unsent_bytes(const bds_session *s) {
    ASSERT_HOME(s);
    return s->out_flight_bytes + s->sq_bytes;
}

void bds_session_get_stats(const bds_session *s, bds_session_stats *out) {
    *out = s->stats;
    out->executing = s->tokens_held + s->soft_in_use;
    out->tokens_free = s->tokens_free;
    out->tokens_held = s->tokens_held;
}
