/* pipeline_int.h — the pipeline's internal objects and the protocol between
 * pipelines (docs/ARCHITECTURE.md).
 *
 * Two roles per inbound message. HOME (C) is the pipeline that owns the
 * session: it admits (ordering capacity, tokens), keeps per-(session, key)
 * outstanding lists, frees every call, runs the Sender. EXEC (K) is the
 * pipeline the key hashes to: it keeps the per-(session, key) run queue and
 * runs the Engine. They exchange tagged pointers through port.post() (or the
 * local queue when C == K, which keeps callbacks out of the caller's frame):
 *
 *   C -> K  EXEC(call)      run this call in its key queue; call->exec_token says
 *                           whether it carries a token or must wait for GRANT
 *   C -> K  GRANT(call)     the head of its key queue now holds a token
 *   C -> K  CANCEL(session) drop everything of the session, abort retries; ACK back
 *   C -> K  DROP(session)   drop what has not started; running work finishes; ACK back
 *   K -> C  ACK(session)    CANCEL/DROP processed: K holds no pointer to the session
 *   K -> C  DONE(call)      finished (status, token passed or returned); C frees it
 *   any -> C REPLY(reply)   a reply for the session's Sender
 *   any -> K COMPLETE(call) bds_call_done() from a thread that is not K
 *   local   NOTIFY(session) deliver ops->closed outside the caller's frame
 *   any -> any TASK(task)   run task->run there (the transport's own work,
 *                           e.g. a stream operation carried to its home in
 *                           the order of the replies posted before it)
 *   K -> C  DROP_REPLY(reply) a held reply of a failed attempt: ops->drop it
 *
 * Per (sender, receiver) pair messages arrive in order, so a GRANT never
 * overtakes its EXEC and REPLYs precede their call's DONE. C sends no GRANT or
 * EXEC for a session after CANCEL/DROP, so K never sees a call it dropped. */
#ifndef BDS_PIPELINE_INT_H
#define BDS_PIPELINE_INT_H

#include <setjmp.h>
#include <stdatomic.h>

#include "base.h"
#include "bidistream/pipeline.h"
#include "hash.h"
#include "mem.h"
#include "timer_heap.h"

enum bds__xkind {
    BDS_XK_EXEC = 1,
    BDS_XK_GRANT,
    BDS_XK_CANCEL,
    BDS_XK_DROP,
    BDS_XK_ACK,
    BDS_XK_REPLY,
    BDS_XK_DONE,
    BDS_XK_COMPLETE,
    BDS_XK_NOTIFY,
    BDS_XK_TASK,
    BDS_XK_DROP_REPLY,
    BDS_XK__COUNT,
};
#define BDS_XK_MASK ((uintptr_t)15)
BDS_STATIC_ASSERT(BDS_XK__COUNT <= 16, "kinds fit the 4 low bits of a 16-byte aligned pointer");

static inline void *bds__xmsg(enum bds__xkind kind, const void *obj) {
    BDS_ASSERT(((uintptr_t)obj & BDS_XK_MASK) == 0);
    return (void *)((uintptr_t)obj | (uintptr_t)kind);
}
static inline enum bds__xkind bds__xmsg_kind(const void *msg) {
    return (enum bds__xkind)((uintptr_t)msg & BDS_XK_MASK);
}
static inline void *bds__xmsg_obj(const void *msg) { return (void *)((uintptr_t)msg & ~BDS_XK_MASK); }

enum bds__token { BDS_TOKEN_NONE = 0, BDS_TOKEN_REAL, BDS_TOKEN_SOFT };

/* The old internal name of a cancel hook's type (bds_call_on_cancel). */
typedef bds_call_fn bds__call_cancel_fn;
/* The hooks an attempt has set (bds_call.hooks): a completion from another
 * thread reads them to refuse racing a hook that EXEC may be running. */
enum { BDS_HOOK_AFTER = 1, BDS_HOOK_CANCEL = 2 };
enum bds__exec_state { BDS_EXEC_QUEUED = 0, BDS_EXEC_RUNNING, BDS_EXEC_RETRY_WAIT };
/* What a handler may still do with a call (bds_call.life): the public call
 * API checks it and names the misuse instead of corrupting another call. */
enum bds__call_life {
    BDS_CALL_WAITING = 0, /* admitted, no attempt running */
    BDS_CALL_RUNNING,     /* an attempt runs: reply, done, panic allowed */
    BDS_CALL_DONE,        /* bds_call_done for this attempt came */
    BDS_CALL_FREED,       /* home freed it (until the pool reuses it) */
};

/* HOME side, per (session, key) with outstanding calls. The key's token (if
 * any) belongs to the key while it is busy: it passes from head to head. */
typedef struct bds__home_key {
    bds__kmap_node node;
    uint64_t key_hash;                /* bds__hash of the key bytes (node.hash mixes in the session) */
    bds_call *head, *tail;            /* outstanding calls in arrival order (c_next) */
    uint32_t count;
    uint8_t token;                    /* enum bds__token */
    bool in_wait;                     /* queued in session->wait_* for a token */
    struct bds__home_key *wait_next;
} bds__home_key;

/* HOME side, per (session, reply key) with replies waiting in the Sender
 * under outbound KEYED_FIFO. The key is the reply's bds_reply._key (its
 * call's key hash: the key's bytes die with the call, replies may outlive
 * it), kept in the node's inline bytes. */
typedef struct bds__out_key {
    bds__kmap_node node;
    bds_reply *head, *tail;           /* _next */
    struct bds__out_key *rr_next;     /* the session's keys taking turns */
} bds__out_key;

/* EXEC side, per (session, key) with calls on this pipeline. */
typedef struct bds__exec_key {
    bds__kmap_node node;
    bds_call *head, *tail;            /* k_next */
    bds_session *session;
    struct bds__exec_key *s_prev, *s_next; /* the session's keys on this pipeline */
    bool head_has_token;
    bool drop_rest;                   /* after the running head, drop the rest */
} bds__exec_key;

struct bds_call {
    /* Written by HOME before EXEC; read-only afterwards. */
    bds_session *session;
    void *payload;
    const uint8_t *key;
    uint32_t key_len;
    uint32_t bytes;
    uint64_t key_hash;
    uint64_t seq;
    uint32_t home, exec;
    uint8_t exec_token;               /* enum bds__token sent with EXEC */
    bool pressured;                   /* admitted over capacity by SOFT_ALLOW_SIGNAL (bds_call_pressured) */
    /* HOME only. */
    bds_call *c_next;
    bds__home_key *hkey;
    /* EXEC only, until DONE hands the call back. */
    bds_pipeline *exec_p;             /* the pipeline that runs it (set at EXEC) */
    _Atomic uint8_t life;             /* enum bds__call_life; any thread */
    bds_call *k_next;
    bds__exec_key *ekey;
    bds_timer retry_timer;
    uint32_t attempt;
    uint8_t exec_state;               /* enum bds__exec_state */
    bool in_handler;                  /* inside the synchronous handler run */
    bool done_in_handler;             /* bds_call_done() came before the handler returned */
    jmp_buf *guard;                   /* bds_call_panic() lands here */
    bds_call_fn on_cancel;            /* bds_call_on_cancel; cleared by bds_call_done */
    void *on_cancel_ctx;
    bds_timer after_timer;            /* bds_call_after */
    bds_call_fn after_fn;
    void *after_ctx;
    _Atomic uint8_t hooks;            /* BDS_HOOK_*: written by EXEC, read by any thread */
    /* The attempt's replies while retries hold them (bds_call_reply pushes
     * from any thread, newest first; EXEC takes them when the attempt ends). */
    _Atomic(bds_reply *) held;
    bool retry_asked;                 /* bds_call_retry: retry whatever the code */
    /* Result: written by EXEC (or by a foreign thread before COMPLETE), read by
     * HOME after DONE; the message channel's release/acquire orders them. */
    bds_status status;
    bool token_passed;
    bool dropped;                     /* never ran to an end: dropped behind a terminal failure or a closed session */
    char msg[96];
};

struct bds_session {
    _Atomic uint32_t state;           /* bds_session_state; written on HOME only, read anywhere */
    _Atomic uint32_t reason;          /* first shutdown/close reason; CAS from BDS_OK */
    bds_pipeline *home;
    bds_options opts;
    bds_handler_fn handler;
    void *handler_ctx;
    const bds_session_ops *ops;
    void *ops_ctx;
    bds_counters *counters;           /* the caller's (bds_session_config.counters); HOME writes */
    /* Inbound, HOME only. */
    uint32_t outstanding;             /* calls admitted and not yet DONE */
    uint64_t outstanding_bytes;       /* their payload bytes */
    uint32_t waiting;                 /* calls behind their key's head (ordering) */
    uint32_t tokens_free, tokens_held, soft_in_use;
    uint32_t n_wait;                  /* keys waiting for a token (QUEUE) */
    bds__home_key *wait_head, *wait_tail;
    /* The key the last message took, while it lives: a stream's next message
     * mostly has the same key, and then neither hash nor lookup is needed. */
    bds__home_key *last_hk;
    uint32_t acks_pending;
    bool client_closed, server_closed, released, notify_pending, inbound_stopped, room_was_zero;
    bool refused_in_drain;            /* a message came after the shutdown began: the end is not OK */
    /* Call replies the Sender refused (HOME writes), and how many of those a
     * bds_call_reply has reported (any thread, CAS). */
    _Atomic uint64_t replies_refused, replies_refused_told;
    /* Outbound, HOME only. */
    bds_reply *sq_head, *sq_tail;     /* replies waiting for an outbound token (FIFO) */
    bds__out_key *rr_head, *rr_tail;  /* KEYED_FIFO: keys with waiting replies, in turn order */
    uint32_t sq_len, out_in_flight;
    uint64_t sq_bytes;                /* payload bytes of the queued replies */
    uint64_t out_flight_bytes;        /* ... of those written, not yet reply_written */
    /* Timers, HOME only. */
    bds_timer deadline_timer, grace_timer;
    bds_status close_status;
    char close_msg[96];
    bds_session_stats stats;
    /* Per EXEC pipeline i: `first` (its keys of this session) is written only
     * by pipeline i; `home_out` (our calls outstanding there) only by HOME.
     * CANCEL/DROP go only where home_out > 0, so no message is ever sent to a
     * pipeline that holds nothing of the session (it may have shut down). */
    struct {
        bds__exec_key *first;
        uint32_t home_out;
    } exec[];
};

struct bds_pipeline {
    uint32_t index, count;
    bds_hash_seed seed;
    bds_pipeline_port port;
    bds_timer_heap *timers;           /* &own_timers, or the runtime's (bds__pipeline_share_timers) */
    bds_timer_heap own_timers;
    bds__kmap home_keys, exec_keys;
    /* Local message queue: tagged pointers, grown by doubling, never shrunk. */
    void **lq;
    uint32_t lq_head, lq_tail, lq_mask;
    bds__kmap out_keys;               /* bds__out_key by (session, reply key) */
    bds__pool calls, sessions, hkeys, ekeys, okeys;
    bds_pipeline_stats stats;
};

/* A transport's own work item, carried by the pipelines' channels (so it
 * keeps its place among the messages its thread posted to the same
 * pipeline) and run on the target pipeline's thread. Aligned for the tag. */
typedef struct __attribute__((aligned(16))) bds__task {
    void (*run)(struct bds__task *task);
} bds__task;

/* pipeline.c */
/* The calling thread's pipeline (bds__pipeline_set_current): read on every
 * message by the ownership asserts, so inline, not a call. */
extern _Thread_local bds_pipeline *bds__current_pipeline __attribute__((visibility("hidden")));
static inline bds_pipeline *bds__pipeline_current(void) { return bds__current_pipeline; }
/* Binds the calling thread to p (NULL: a thread of no pipeline). */
void bds__pipeline_set_current(bds_pipeline *p);
/* Makes p arm its timers (retries, deadlines, grace) on heap, which its runtime
 * runs and sleeps on; bds_pipeline_run() then fires none itself. Only while p
 * has no armed timer. */
void bds__pipeline_share_timers(bds_pipeline *p, bds_timer_heap *heap);
/* Sends msg to pipeline dst: the local queue when dst is this thread's own pipeline. */
void bds__post(bds_pipeline *from, uint32_t dst, enum bds__xkind kind, const void *obj);
/* Posting from a thread that may not be a pipeline's (handler completions). */
void bds__post_any(const bds_pipeline *target_group_member, uint32_t dst, enum bds__xkind kind,
                   const void *obj);
uint64_t bds__now(const bds_pipeline *p);

/* session.c (HOME role) */
void bds__home_on_done(bds_pipeline *p, bds_call *call);
void bds__home_on_ack(bds_pipeline *p, bds_session *s);
void bds__home_on_reply(bds_pipeline *p, bds_reply *reply);
void bds__home_on_notify(bds_pipeline *p, bds_session *s);
void bds__home_on_drop_reply(bds_pipeline *p, bds_reply *reply);

/* engine.c (EXEC role) */
void bds__exec_on_exec(bds_pipeline *p, bds_call *call);
void bds__exec_on_grant(bds_pipeline *p, bds_call *call);
void bds__exec_on_cancel(bds_pipeline *p, bds_session *s, bool running_too);
void bds__exec_on_complete(bds_pipeline *p, bds_call *call);
/* The old internal name of bds_call_on_cancel (pipeline.h), kept for io/. */
void bds__call_on_cancel(bds_call *call, bds__call_cancel_fn fn, void *ctx);
/* Stops the process, naming api, unless an attempt of call is running (no
 * bds_call_done yet): for the call API of the layers above. Thread: any. */
void bds__call_check_running(const bds_call *call, const char *api);

/* session_fsm.c: the state table. */
enum bds__fsm_event {
    BDS_EV_OPEN = 0,     /* stream accepted */
    BDS_EV_CLIENT_CLOSE, /* END_STREAM from the client */
    BDS_EV_SERVER_CLOSE, /* the server stops sending */
    BDS_EV_SHUTDOWN,     /* graceful shutdown begins */
    BDS_EV_DRAINED,      /* all in-flight work finished */
    BDS_EV_FAIL,         /* terminal failure, cancel, deadline, grace over */
    BDS_EV__COUNT,
};
#define BDS_STATE__COUNT 6
/* The state event leads to from state, or -1 when the table has no such edge. */
int bds__fsm_next(bds_session_state from, enum bds__fsm_event event);
/* Whether the table has an edge from -> to (through any event). */
bool bds__fsm_allowed(bds_session_state from, bds_session_state to);
/* Applies event atomically (CAS loop). Returns true and sets *from_out when
 * this caller made the transition; false when the current state has no edge
 * for event (Closed is final). Thread: any; racing callers, one winner. */
bool bds__fsm_step(_Atomic uint32_t *state, enum bds__fsm_event event, bds_session_state *from_out);
/* Records reason if none is recorded yet (first wins). Thread: any. */
bool bds__reason_set(_Atomic uint32_t *reason, bds_status status);

#endif
