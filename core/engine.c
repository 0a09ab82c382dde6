/* engine.c — the EXEC role: per-(session, key) run queues and the Engine.
 *
 * The pipeline a key hashes to is the only one that touches that key's queue,
 * so keyed FIFO needs no lock (docs/ARCHITECTURE.md). Only a queue's head runs, and only
 * while it holds a token: either the EXEC brought one, a GRANT delivered one,
 * or the previous head passed its own on completion. A finished head is
 * handed back to its home pipeline with DONE, saying whether the token went
 * to a successor (passed) or back (returned).
 *
 * The Engine runs the handler under a setjmp guard so bds_call_panic() unwinds
 * to here and becomes PANIC_RECOVERED for this message (terminal for its
 * session, never for the process). Failures are retried after the backoff on
 * this pipeline's timer heap, keeping the key's turn and token. A completion
 * that arrives while the handler is still on the stack is only recorded; the
 * loop in exec_run() acts on it after the handler returns, so a key whose
 * calls all finish at once unrolls iteratively, never recursively.
 *
 * Ownership: calls and sessions belong to their home pipeline; this side
 * borrows a call from EXEC until DONE and never touches it after posting DONE.
 * Exec keys belong to this pipeline. */
#include <string.h>

#include "pipeline_int.h"

/* ---- exec keys --------------------------------------------------------------- */

static bds__exec_key *exec_key_get(bds_pipeline *p, bds_call *call) {
    bds_session *s = call->session;
    uint64_t h = bds__kmap_hash(call->key_hash, s);
    /* The session's newest key here first: mostly the one a stream sends on. */
    bds__exec_key *f = s->exec[p->index].first;
    if (f && f->node.hash == h && f->node.key_len == call->key_len &&
        (call->key_len == 0 || memcmp(f->node.key, call->key, call->key_len) == 0))
        return f;
    bds__kmap_node *n = bds__kmap_find(&p->exec_keys, h, s, call->key, call->key_len);
    if (n) return BDS_CONTAINER_OF(n, bds__exec_key, node);
    bds__exec_key *ek = bds__pool_get(&p->ekeys);
    BDS_ASSERT(ek != NULL); /* out of memory on the exec side: no way to hand the call back */
    ek->node.hash = h;
    ek->node.session = s;
    bds__kmap_node_set_key(&ek->node, call->key, call->key_len);
    (void)bds__kmap_insert(&p->exec_keys, &ek->node);
    ek->session = s;
    ek->s_next = s->exec[p->index].first;
    if (ek->s_next) ek->s_next->s_prev = ek;
    s->exec[p->index].first = ek;
    return ek;
}

static void exec_key_free(bds_pipeline *p, bds__exec_key *ek) {
    BDS_ASSERT(ek->head == NULL && ek->tail == NULL);
    bds_session *s = ek->session;
    if (ek->s_prev) ek->s_prev->s_next = ek->s_next;
    else s->exec[p->index].first = ek->s_next;
    if (ek->s_next) ek->s_next->s_prev = ek->s_prev;
    bds__kmap_remove(&p->exec_keys, &ek->node);
    bds__pool_put(&p->ekeys, ek);
}

/* Unlinks the head and hands it home. Returns the new head (NULL: ek is freed). */
static bds_call *exec_pop_head(bds_pipeline *p, bds__exec_key *ek) {
    bds_call *call = ek->head;
    BDS_ASSERT(call != NULL);
    bds_call *next = call->k_next;
    ek->head = next;
    if (!next) ek->tail = NULL;
    else if (bds__kmap_node_key_borrowed(&ek->node)) ek->node.key = next->key; /* the old head's bytes die with it at home */
    call->token_passed = next != NULL;
    call->ekey = NULL;
    /* Free the key first: it links into the session, which home may free as
     * soon as it has the last DONE. */
    if (!next) exec_key_free(p, ek);
    bds__post(p, call->home, BDS_XK_DONE, call); /* call is home's again: no access after this */
    return next;
}

/* Drops every queued call of ek in order (their DONEs keep key order). */
static void exec_drop_all(bds_pipeline *p, bds__exec_key *ek) {
    while (ek->head) {
        bds_call *call = ek->head;
        BDS_ASSERT(call->exec_state != BDS_EXEC_RUNNING);
        call->status = BDS_CANCELLED;
        call->dropped = true;
        call->msg[0] = 0;
        if (!exec_pop_head(p, ek)) return;
    }
}

/* ---- the Engine ------------------------------------------------------------------ */

static void exec_on_retry_timer(bds_timer *timer, void *ctx);

/* Takes back the attempt's hooks (its bds_call_after timer, its cancel hook):
 * its end came first. EXEC only. */
static void exec_hooks_clear(bds_call *call) {
    if (atomic_load_explicit(&call->hooks, memory_order_relaxed) & BDS_HOOK_AFTER)
        bds__timer_cancel(call->exec_p->timers, &call->after_timer);
    call->on_cancel = NULL;
    atomic_store_explicit(&call->hooks, 0, memory_order_relaxed);
}

static void exec_on_after_timer(bds_timer *timer, void *ctx) {
    (void)timer;
    bds_call *call = ctx;
    atomic_fetch_and_explicit(&call->hooks, (uint8_t)~BDS_HOOK_AFTER, memory_order_relaxed);
    call->after_fn(call, call->after_ctx);
}

static void exec_handler_run(bds_call *call) {
    bds_session *s = call->session;
    jmp_buf guard;
    call->attempt++;
    call->exec_state = BDS_EXEC_RUNNING;
    call->done_in_handler = false;
    call->retry_asked = false;
    call->on_cancel = NULL;
    BDS_ASSERT(atomic_load_explicit(&call->hooks, memory_order_relaxed) == 0); /* the last attempt's end took them */
    call->in_handler = true;
    call->guard = &guard;
    /* release: what EXEC wrote reaches whoever the handler hands the call to */
    atomic_store_explicit(&call->life, BDS_CALL_RUNNING, memory_order_release);
    if (setjmp(guard) == 0) {
        s->handler(call, s->handler_ctx);
    } else {
        call->status = BDS_E_PANIC_RECOVERED; /* bds_call_panic() set msg and life */
        call->done_in_handler = true;
        exec_hooks_clear(call);
    }
    call->guard = NULL;
    call->in_handler = false;
}

static bool exec_should_retry(const bds_call *call) {
    const bds_session *s = call->session;
    if (call->status == BDS_OK || call->status == BDS_E_PANIC_RECOVERED) return false;
    if (call->attempt > s->opts.retry.max_attempts) return false;
    int code = bds_status_grpc(call->status);
    if (!call->retry_asked && (code <= 0 || !(s->opts.retry.retryable & (1u << code)))) return false;
    /* acquire: pairs with the home side's transition; a closed session's work is not retried */
    return atomic_load_explicit(&((bds_session *)s)->state, memory_order_acquire) != BDS_STATE_CLOSED;
}

/* Whether bds_call_reply holds the session's replies until their attempt
 * ends (retries on, not at least once). */
static bool replies_held(const bds_session *s) { return s->opts.retry.max_attempts && !s->opts.retry.at_least_once; }

/* The attempt ended: its held replies go home to be sent (it succeeded) or
 * dropped (it failed), in the order they were made, ahead of its DONE. */
static void exec_release_held(bds_pipeline *p, bds_call *call) {
    if (!replies_held(call->session)) return; /* no atomic on the common path */
    /* acquire: pairs with the pushes' release, from whatever thread replied */
    bds_reply *r = atomic_exchange_explicit(&call->held, NULL, memory_order_acquire), *in_order = NULL;
    while (r) { /* newest first: reverse */
        bds_reply *next = r->_next;
        r->_next = in_order;
        in_order = r;
        r = next;
    }
    enum bds__xkind kind = call->status == BDS_OK ? BDS_XK_REPLY : BDS_XK_DROP_REPLY;
    while (in_order) {
        r = in_order;
        in_order = r->_next;
        r->_next = NULL;
        bds__post(p, call->home, kind, r);
    }
}

/* The running head finished an attempt: retry it, or hand it home. Returns
 * the key's new head (NULL when the key is gone or the head waits for a retry). */
static bds_call *exec_result(bds_pipeline *p, bds_call *call) {
    bds__exec_key *ek = call->ekey;
    BDS_ASSERT(ek->head == call && call->exec_state == BDS_EXEC_RUNNING);
    exec_release_held(p, call);
    if (exec_should_retry(call)) {
        call->exec_state = BDS_EXEC_RETRY_WAIT;
        bds__timer_init(&call->retry_timer, exec_on_retry_timer, call);
        BDS_ASSERT(bds__timer_arm(p->timers, &call->retry_timer,
                                  bds__now(p) + call->session->opts.retry.backoff_ns) == 0);
        return NULL;
    }
    bool drop_rest = ek->drop_rest;
    bds_call *next = exec_pop_head(p, ek);
    if (next && drop_rest) {
        exec_drop_all(p, ek);
        return NULL;
    }
    return next; /* inherits the token */
}

/* Runs heads of ek while they hold a token and finish synchronously. A
 * closed session starts no attempt, not even a retry whose timer fired before
 * the session's CANCEL reached this shard: its key's calls are dropped. */
static void exec_run(bds_pipeline *p, bds_call *head) {
    while (head && head->exec_state == BDS_EXEC_QUEUED && head->ekey->head_has_token) {
        /* acquire: pairs with the home side's transition to Closed */
        if (atomic_load_explicit(&head->session->state, memory_order_acquire) == BDS_STATE_CLOSED) {
            exec_drop_all(p, head->ekey);
            return;
        }
        exec_handler_run(head);
        if (!head->done_in_handler) return; /* finishes later through COMPLETE */
        head = exec_result(p, head);
    }
}

static void exec_on_retry_timer(bds_timer *timer, void *ctx) {
    (void)timer;
    bds_call *call = ctx;
    BDS_ASSERT(call->exec_state == BDS_EXEC_RETRY_WAIT);
    call->exec_state = BDS_EXEC_QUEUED;
    exec_run(bds__pipeline_current(), call);
}

/* ---- messages ---------------------------------------------------------------- */

void bds__exec_on_exec(bds_pipeline *p, bds_call *call) {
    bds__exec_key *ek = exec_key_get(p, call);
    call->exec_p = p;
    call->ekey = ek;
    call->k_next = NULL;
    call->attempt = 0;
    call->dropped = false;
    call->exec_state = BDS_EXEC_QUEUED;
    if (ek->tail) {
        BDS_ASSERT(call->exec_token == BDS_TOKEN_NONE); /* only an idle key's first call brings one */
        ek->tail->k_next = call;
        ek->tail = call;
        return;
    }
    ek->head = ek->tail = call;
    ek->head_has_token = call->exec_token != BDS_TOKEN_NONE;
    exec_run(p, call);
}

void bds__exec_on_grant(bds_pipeline *p, bds_call *call) {
    bds__exec_key *ek = call->ekey;
    BDS_ASSERT(ek && ek->head == call && !ek->head_has_token);
    BDS_ASSERT(call->exec_state == BDS_EXEC_QUEUED);
    ek->head_has_token = true;
    exec_run(p, call);
}

void bds__exec_on_complete(bds_pipeline *p, bds_call *call) {
    BDS_ASSERT(call->exec_state == BDS_EXEC_RUNNING && !call->in_handler);
    exec_run(p, exec_result(p, call));
}

/* The running head's session closed. Its work would outlive the stream (a
 * timer up to an hour out): its timer fires now, then its cancel hook if it
 * is still running. A bds_call_done from either posts COMPLETE, so its key
 * stays for the caller's loop. */
static void exec_cancel_hooks(bds_pipeline *p, bds_call *call) {
    if (atomic_load_explicit(&call->hooks, memory_order_relaxed) & BDS_HOOK_AFTER) {
        bds__timer_cancel(p->timers, &call->after_timer);
        exec_on_after_timer(&call->after_timer, call);
    }
    if (atomic_load_explicit(&call->hooks, memory_order_relaxed) & BDS_HOOK_CANCEL) {
        bds_call_fn fn = call->on_cancel;
        call->on_cancel = NULL;
        atomic_fetch_and_explicit(&call->hooks, (uint8_t)~BDS_HOOK_CANCEL, memory_order_relaxed);
        fn(call, call->on_cancel_ctx);
    }
}

void bds__exec_on_cancel(bds_pipeline *p, bds_session *s, bool running_too) {
    bds__exec_key *ek = s->exec[p->index].first;
    while (ek) {
        bds__exec_key *next = ek->s_next; /* ek may be freed below */
        bds_call *head = ek->head;
        if (head->exec_state == BDS_EXEC_RUNNING ||
            (head->exec_state == BDS_EXEC_RETRY_WAIT && !running_too)) {
            ek->drop_rest = true; /* the active head finishes, the rest follow it out */
            if (running_too && head->exec_state == BDS_EXEC_RUNNING) exec_cancel_hooks(p, head);
        } else {
            if (head->exec_state == BDS_EXEC_RETRY_WAIT) {
                bds__timer_cancel(p->timers, &head->retry_timer);
                head->exec_state = BDS_EXEC_QUEUED;
            }
            exec_drop_all(p, ek);
        }
        ek = next;
    }
    bds__post(p, s->home->index, BDS_XK_ACK, s);
}

/* ---- the call API (handlers) ------------------------------------------------------ */

void *bds_call_payload(const bds_call *call) { return call->payload; }

const void *bds_call_key(const bds_call *call, uint32_t *key_len) {
    if (key_len) *key_len = call->key_len;
    return call->key;
}

uint64_t bds_call_seq(const bds_call *call) { return call->seq; }
uint32_t bds_call_attempt(const bds_call *call) { return call->attempt; }
void *bds_call_session_ctx(const bds_call *call) { return call->session->ops_ctx; }

static bool session_closed(const bds_session *s);

bool bds_call_pressured(const bds_call *call) {
    bds__call_check_running(call, "bds_call_pressured");
    return call->pressured;
}

bool bds_call_cancelled(const bds_call *call) {
    bds__call_check_running(call, "bds_call_cancelled");
    return session_closed(call->session);
}

/* Whether the calling thread runs the call's EXEC pipeline. (Comparing the
 * pipeline itself: its index and port alone match on every shard of a
 * server, or on no other shard, depending on what the port's ctx is.) */
static bool on_exec_thread(const bds_call *call) {
    return call->exec_p != NULL && bds__pipeline_current() == call->exec_p;
}

void bds__call_check_running(const bds_call *call, const char *api) {
    if (call == NULL) bds__misuse(api, "call is NULL");
    /* acquire: pairs with the release that started the attempt */
    switch (atomic_load_explicit(&((bds_call *)call)->life, memory_order_acquire)) {
    case BDS_CALL_RUNNING: return;
    case BDS_CALL_DONE: bds__misuse(api, "the call is done (after bds_call_done; or bds_call_done twice)");
    case BDS_CALL_FREED: bds__misuse(api, "the call is over and freed (used after bds_call_done)");
    default: bds__misuse(api, "the call is not running (no attempt of it has started, or it was reused)");
    }
}

/* From the call's EXEC thread through its own pipeline (the local queue when
 * dst is itself), from any other thread through the port. */
static void call_post(bds_call *call, uint32_t dst, enum bds__xkind kind, const void *obj) {
    if (on_exec_thread(call)) bds__post(call->exec_p, dst, kind, obj);
    else bds__post_any(call->session->home, dst, kind, obj);
}

/* Whether the Sender refused replies of s that no bds_call_reply has
 * reported yet; reports them (once, to one caller). */
static bool replies_refused_news(bds_session *s) {
    /* relaxed: counts, ordering nothing else; the CAS gives each refusal to one caller */
    uint64_t n = atomic_load_explicit(&s->replies_refused, memory_order_relaxed);
    uint64_t told = atomic_load_explicit(&s->replies_refused_told, memory_order_relaxed);
    while (told < n) {
        if (atomic_compare_exchange_weak_explicit(&s->replies_refused_told, &told, n, memory_order_relaxed,
                                                  memory_order_relaxed))
            return true;
    }
    return false;
}

bds_status bds_call_reply(bds_call *call, bds_reply *reply) {
    bds__call_check_running(call, "bds_call_reply");
    bds_session *s = call->session;
    reply->_session = s;
    reply->_key = call->key_hash;
    if (replies_held(s)) {
        /* held until the attempt ends (exec_release_held) */
        bds_reply *head = atomic_load_explicit(&call->held, memory_order_relaxed);
        do {
            reply->_next = head;
        } while (!atomic_compare_exchange_weak_explicit(&call->held, &head, reply, memory_order_release,
                                                        memory_order_relaxed));
    } else {
        reply->_next = NULL;
        call_post(call, call->home, BDS_XK_REPLY, reply); /* reply is home's: no access after this */
    }
    if (session_closed(s)) return BDS_E_SESSION_CLOSED;
    return replies_refused_news(s) ? BDS_E_OUTBOUND_BACKPRESSURE : BDS_OK;
}

static bool session_closed(const bds_session *s) {
    /* acquire: pairs with the home side's transition to Closed */
    return atomic_load_explicit(&((bds_session *)s)->state, memory_order_acquire) == BDS_STATE_CLOSED;
}

bds_status bds_call_after(bds_call *call, uint64_t after_ns, bds_call_fn fn, void *ctx) {
    bds__call_check_running(call, "bds_call_after");
    if (!on_exec_thread(call))
        bds__misuse("bds_call_after", "only on the call's EXEC pipeline thread (where its handler runs)");
    if (!fn) bds__misuse("bds_call_after", "fn is NULL");
    if (atomic_load_explicit(&call->hooks, memory_order_relaxed) & BDS_HOOK_AFTER) return BDS_FAILED_PRECONDITION;
    bds_pipeline *p = call->exec_p;
    uint64_t now = bds__now(p);
    /* A session that closed already may have had its CANCEL here: fire at
     * once instead of waiting the whole delay for nothing. */
    uint64_t at = session_closed(call->session) ? now : (after_ns > UINT64_MAX - now ? UINT64_MAX : now + after_ns);
    bds__timer_init(&call->after_timer, exec_on_after_timer, call);
    if (bds__timer_arm(p->timers, &call->after_timer, at) != 0) return BDS_E_NOMEM;
    call->after_fn = fn;
    call->after_ctx = ctx;
    atomic_fetch_or_explicit(&call->hooks, BDS_HOOK_AFTER, memory_order_relaxed);
    return BDS_OK;
}

void bds_call_on_cancel(bds_call *call, bds_call_fn fn, void *ctx) {
    bds__call_check_running(call, "bds_call_on_cancel");
    if (!on_exec_thread(call))
        bds__misuse("bds_call_on_cancel", "only on the call's EXEC pipeline thread (where its handler runs)");
    call->on_cancel = fn;
    call->on_cancel_ctx = ctx;
    if (fn) atomic_fetch_or_explicit(&call->hooks, BDS_HOOK_CANCEL, memory_order_relaxed);
    else atomic_fetch_and_explicit(&call->hooks, (uint8_t)~BDS_HOOK_CANCEL, memory_order_relaxed);
}

void bds__call_on_cancel(bds_call *call, bds__call_cancel_fn fn, void *ctx) { bds_call_on_cancel(call, fn, ctx); }

/* bds_call_done and bds_call_retry: api names the one called. */
static void call_finish(bds_call *call, bds_status status, const char *message, bool retry, const char *api) {
    bds__call_check_running(call, api);
    bool on_exec = on_exec_thread(call);
    /* Hooks live on the EXEC thread: a foreign completion must not race a
     * hook EXEC may be running, nor write what EXEC reads. relaxed: a check
     * only; the handler's own hand-off of the call to this thread orders it
     * after what EXEC set. */
    if (!on_exec && atomic_load_explicit(&call->hooks, memory_order_relaxed) != 0)
        bds__misuse(api, "from another thread while a bds_call_after timer or a bds_call_on_cancel hook is set "
                         "(it would race them): finish on the call's EXEC pipeline thread");
    uint8_t running = BDS_CALL_RUNNING;
    /* One winner between racing completions; the loser is told, not obeyed. */
    if (!atomic_compare_exchange_strong_explicit(&call->life, &running, BDS_CALL_DONE, memory_order_acq_rel,
                                                 memory_order_acquire))
        bds__misuse(api, "called twice for one attempt (two threads at once)");
    if (on_exec) exec_hooks_clear(call);
    call->status = status;
    call->retry_asked = retry;
    if (message) {
        strncpy(call->msg, message, sizeof call->msg - 1);
        call->msg[sizeof call->msg - 1] = 0;
    } else {
        call->msg[0] = 0;
    }
    if (on_exec && call->in_handler) {
        call->done_in_handler = true; /* exec_run() acts on it when the handler returns */
        return;
    }
    call_post(call, call->exec, BDS_XK_COMPLETE, call);
}

void bds_call_done(bds_call *call, bds_status status, const char *message) {
    call_finish(call, status, message, false, "bds_call_done");
}

void bds_call_retry(bds_call *call, bds_status status, const char *message) {
    if (status == BDS_OK || status == BDS_E_PANIC_RECOVERED)
        bds__misuse("bds_call_retry", "status must be a failure (not OK, not E_PANIC_RECOVERED)");
    call_finish(call, status, message, true, "bds_call_retry");
}

void bds_call_panic(bds_call *call, const char *message) {
    bds__call_check_running(call, "bds_call_panic");
    if (!on_exec_thread(call) || !call->in_handler || !call->guard)
        bds__misuse("bds_call_panic", "only from inside the handler's own run, on its thread");
    atomic_store_explicit(&call->life, BDS_CALL_DONE, memory_order_relaxed); /* the Engine's thread only */
    strncpy(call->msg, message ? message : "handler panicked", sizeof call->msg - 1);
    call->msg[sizeof call->msg - 1] = 0;
    longjmp(*call->guard, 1);
}
