/* bidistream/pipeline.h — drive the pipeline from your own transport.
 *
 * A bds_pipeline is one thread's share of the work (a shard): the sessions it
 * is home to (the streams of its connections) and the ordering keys that hash
 * to it. A bds_session is one bidirectional stream. Inbound messages go
 * through bds_session_receive(): ordering (wait for the key's turn), then
 * backpressure (a token), then the Engine runs the handler on the key's
 * pipeline, then both are released, exactly once, whatever happens. Replies go
 * through the Sender: ordering, then outbound backpressure, then the
 * transport's write.
 *
 * Threads. Every function here is for the pipeline's own thread unless it says
 * "any thread". Pipelines talk through the port's post(): the transport moves
 * the opaque message to the target pipeline's thread and hands it to
 * bds_pipeline_deliver() there. With one pipeline and no foreign threads,
 * post() is never called.
 *
 * Callbacks (bds_session_ops, handlers) run only from bds_pipeline_run() and
 * bds_pipeline_deliver(), never from inside the call that caused them, except
 * bds_session_ops.write, which bds_session_send() may call, and
 * options.on_pressure, which bds_session_receive() and bds_session_send()
 * may call. */
#ifndef BIDISTREAM_PIPELINE_H
#define BIDISTREAM_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "bidistream/options.h"
#include "bidistream/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bds_pipeline bds_pipeline;
typedef struct bds_session bds_session;
typedef struct bds_call bds_call;

/* ---- pipeline ------------------------------------------------------------ */

typedef struct bds_pipeline_port {
    /* Monotonic time in ns (CLOCK_MONOTONIC, or a test's fake clock). */
    uint64_t (*now_ns)(void *ctx);
    /* Deliver msg to pipeline number dst, in order per (sender, dst) pair, by
     * calling bds_pipeline_deliver(dst_pipeline, msg) on dst's thread. Thread:
     * any (a handler may complete from its own thread). Must not fail: if the
     * target's inbox is full, keep msg and deliver it later. */
    void (*post)(uint32_t dst, void *msg, void *ctx);
    void *ctx;
} bds_pipeline_port;

typedef struct bds_pipeline_config {
    uint32_t size;      /* = sizeof(bds_pipeline_config) */
    uint32_t index;     /* this pipeline's number, < count */
    uint32_t count;     /* pipelines sharing key placement, 1..64 */
    uint64_t seed[2];   /* key-hash seed, the same for every pipeline; {0,0} = random (count must be 1) */
    bds_pipeline_port port;
} bds_pipeline_config;

BDS_API void bds_pipeline_config_default(bds_pipeline_config *config);

/* Creates a pipeline bound to the calling thread. Returns BDS_OK, BDS_E_INVALID
 * (index >= count, count > 64, port without now_ns, or count > 1 with no post
 * or a random seed) or BDS_E_NOMEM. */
BDS_API bds_status bds_pipeline_create(bds_pipeline **out, const bds_pipeline_config *config);
/* Frees the pipeline. Every session must have been released and every message
 * delivered (asserted). NULL is a no-op. */
BDS_API void bds_pipeline_destroy(bds_pipeline *pipeline);
/* Runs due timers, then queued local work, up to budget steps. Returns the
 * number of steps taken: budget means more may be waiting. */
BDS_API uint32_t bds_pipeline_run(bds_pipeline *pipeline, uint32_t budget);
/* Handles one message another pipeline (or a foreign thread) posted here. */
BDS_API void bds_pipeline_deliver(bds_pipeline *pipeline, void *msg);
/* Whether bds_pipeline_run() has local work right now (timers not counted). */
BDS_API bool bds_pipeline_has_work(const bds_pipeline *pipeline);
/* The next timer deadline in ns, or UINT64_MAX. */
BDS_API uint64_t bds_pipeline_next_deadline(const bds_pipeline *pipeline);
/* The pipeline number a non-empty ordering key executes on (the same on every
 * pipeline). The empty key (key_len 0: a method without a key resolver, one
 * order per stream) executes on its session's home, like FIFO ordering, so
 * such streams spread over the pipelines with their connections; for it this
 * returns the pipeline asked. Thread: any. */
BDS_API uint32_t bds_pipeline_key_shard(const bds_pipeline *pipeline, const void *key, uint32_t key_len);

typedef struct bds_pipeline_stats {
    /* live objects: all zero once every session is released and freed */
    uint64_t sessions_live, calls_live, keys_home_live, keys_exec_live;
    /* totals over sessions freed so far and live ones' contributions at free time */
    uint64_t admitted, rejected, completed, failed, nonterminal_failures, retried, panics, dropped;
    uint64_t pressure_signals, replies_written, replies_rejected;
    uint64_t msgs_posted, msgs_delivered; /* cross-pipeline traffic */
} bds_pipeline_stats;
BDS_API void bds_pipeline_get_stats(const bds_pipeline *pipeline, bds_pipeline_stats *out);

/* ---- sessions ------------------------------------------------------------ */

typedef enum bds_session_state {
    BDS_STATE_INIT = 0,
    BDS_STATE_OPEN,
    BDS_STATE_CLIENT_CLOSED,
    BDS_STATE_SERVER_CLOSED,
    BDS_STATE_DRAINING,
    BDS_STATE_CLOSED,
} bds_session_state;
BDS_API const char *bds_session_state_name(bds_session_state state);

/* An outbound message. The transport owns it; the Sender links it while it
 * waits. Aligned so a pointer to it can carry a 4-bit tag between pipelines. */
typedef struct __attribute__((aligned(16))) bds_reply {
    struct bds_reply *_next;
    bds_session *_session;
    uint64_t _key;  /* outbound KEYED_FIFO: its call's key hash (0: a push) */
    void *data;     /* the transport's */
    uint32_t bytes; /* payload size: metrics and outbound.unsent_bytes_max;
                       unchanged until written or dropped */
    /* A transport's control entry (e.g. "set this trailer", "end the stream
     * here"), not a message: it keeps its place in reply order but takes no
     * outbound capacity and is never rejected, only dropped once the session
     * closes. bytes must be 0. */
    bool control;
} bds_reply;

/* Runs one admitted inbound message on the key's pipeline thread. It finishes
 * the call with bds_call_done(), now or later, from any thread. */
typedef void (*bds_handler_fn)(bds_call *call, void *ctx);

typedef struct bds_session_ops {
    /* Encode and send reply; call bds_session_reply_written() when it is on the
     * wire (or discarded). Called in reply order. */
    void (*write)(bds_session *session, bds_reply *reply, void *ctx);
    /* A reply that will never be written (rejected, or the session closed): free it. */
    void (*drop)(bds_session *session, bds_reply *reply, void *ctx);
    /* The payload of an inbound message is no longer used: free it. */
    void (*release)(bds_session *session, void *payload, void *ctx);
    /* The session closed. status is BDS_OK for a clean end; BDS_CANCELLED means
     * the peer cancelled and nothing should be sent; anything else goes on the
     * wire as bds_status_grpc(status) with message. Called exactly once, unless
     * the session is released first. No write follows it. */
    void (*closed)(bds_session *session, bds_status status, const char *message, void *ctx);
    /* Inbound room reopened after bds_session_inbound_room() returned 0. Optional. */
    void (*inbound_ready)(bds_session *session, void *ctx);
} bds_session_ops;

/* Live counters of the sessions of one pipeline, readable from any thread
 * while they run (a server's stats: bds_server_get_stats). The sessions given
 * it (bds_session_config.counters) add to it on their home pipeline at the
 * moment each thing happens (a message admitted or rejected, an attempt's
 * end, a reply written), not when the session is freed, with relaxed
 * atomics: a read is a recent picture, each field exact at some recent
 * moment, fields not consistent with each other. The meanings are
 * bds_session_stats'; calls_live is a gauge (admitted, not yet finished).
 * Only with options.metrics.enabled; bytes_in and bytes_out only with
 * metrics.payload_sizes.
 *
 * One writer: each field is updated with a plain atomic load and store, not
 * a locked add, so every session that shares one bds_counters must have the
 * same home pipeline. Sessions of several pipelines must never share one
 * (their updates would be lost): give each pipeline its own and sum them when
 * reading. The first session given it binds it to its pipeline, and
 * bds_session_create refuses it on any other (BDS_E_INVALID). The caller owns
 * it: zero it whole before the first session (counters may then start from
 * any values; zeroing it again unbinds it), and keep it until every session
 * given it is freed (the
 * pipeline's sessions_live is 0, or the pipeline is destroyed). In C read the
 * fields directly (atomic loads) or with bds_counters_load; C++, where the
 * fields are plain, reads with bds_counters_load. */
#ifdef __cplusplus
typedef uint64_t bds__counter;
#else
typedef _Atomic uint64_t bds__counter;
#endif
typedef struct bds_counters {
    bds__counter admitted, rejected, completed, failed, nonterminal_failures, retried, panics, dropped;
    bds__counter pressure_signals, replies_written, replies_rejected;
    bds__counter bytes_in, bytes_out;
    bds__counter calls_live;
    bds__counter _home;             /* the pipeline it counts for (0: none yet) */
} bds_counters;
/* Copies every field of *counters into *out (relaxed loads, field by field).
 * Thread: any. */
BDS_API void bds_counters_load(const bds_counters *counters, bds_counters *out);

typedef struct bds_session_config {
    uint32_t size;                 /* = sizeof(bds_session_config) */
    const bds_options *options;    /* copied */
    bds_handler_fn handler;        /* runs on key pipelines: ctx must be safe there */
    void *handler_ctx;
    const bds_session_ops *ops;    /* must outlive the session */
    void *ops_ctx;
    /* Optional live counters (above): the caller's, shared by any number of
     * sessions of this session's home pipeline, never by several pipelines.
     * NULL = none. */
    bds_counters *counters;
} bds_session_config;

BDS_API void bds_session_config_default(bds_session_config *config);

/* Creates a session in state INIT on this pipeline (its home). Returns BDS_OK,
 * BDS_E_INVALID (options fail validation, or config->counters counts for
 * another pipeline: *why says which) or BDS_E_NOMEM. */
BDS_API bds_status bds_session_create(bds_session **out, bds_pipeline *pipeline,
                                      const bds_session_config *config, const char **why);
/* The transport is done with the session: no callback follows. A session not
 * yet closed is cancelled. Memory is freed once in-flight work has drained. */
BDS_API void bds_session_release(bds_session *session);

/* INIT -> OPEN. Returns BDS_OK, or BDS_FAILED_PRECONDITION if not in INIT. */
BDS_API bds_status bds_session_open(bds_session *session);
/* Admits one inbound message: ordering, then backpressure, then execution on
 * the key's pipeline. A message refused with BDS_E_SHUTDOWN marks the session:
 * it then never ends OK (a half-close after it ends it BDS_E_SHUTDOWN, once
 * drained), since that message was never answered. key may be NULL when len is 0 (every FIFO message shares
 * one key). key bytes and payload must stay valid until ops->release(payload).
 * Returns:
 *   BDS_OK                  admitted (waiting or running); payload is the pipeline's
 *   BDS_E_INBOUND_REJECTED  ordering or backpressure capacity exhausted: the session
 *                           is closing with RESOURCE_EXHAUSTED (terminal)
 *   BDS_E_INBOUND_CLOSED    the client already half-closed
 *   BDS_E_SHUTDOWN          the session is draining for shutdown
 *   BDS_E_SESSION_CLOSED    the session is closed
 *   BDS_FAILED_PRECONDITION the session is not open yet
 *   BDS_E_NOMEM             no memory for the call record
 * On any error the payload stays the caller's. */
BDS_API bds_status bds_session_receive(bds_session *session, void *payload, uint32_t payload_bytes,
                                       const void *key, uint32_t key_len, uint64_t seq);
/* How many more messages bds_session_receive() would surely admit without a
 * rejection (UINT32_MAX = no limit). A transport that must never reject a
 * well-behaved client (QUEUE policy) stops reading while this is 0, and
 * resumes on ops->inbound_ready. */
BDS_API uint32_t bds_session_inbound_room(bds_session *session);
/* The client half-closed (END_STREAM). Returns BDS_OK or BDS_FAILED_PRECONDITION. */
BDS_API bds_status bds_session_client_close(bds_session *session);
/* The server stops sending: queued replies still go out, then the stream ends
 * OK once the client has closed too. Returns BDS_OK or BDS_FAILED_PRECONDITION. */
BDS_API bds_status bds_session_server_close(bds_session *session);
/* Begins a graceful shutdown: OPEN/half-closed -> DRAINING, in-flight work
 * drains per options, the grace period starts; when it ends, UNAVAILABLE. */
BDS_API void bds_session_shutdown(bds_session *session);
/* The peer cancelled (RST_STREAM, connection gone): CLOSED at once, nothing sent. */
BDS_API void bds_session_cancel(bds_session *session);
/* Ends the session now with status (non-OK) and message (copied). */
BDS_API void bds_session_fail(bds_session *session, bds_status status, const char *message);
/* Arms the deadline (grpc-timeout): at deadline_ns the session closes with
 * DEADLINE_EXCEEDED. 0 disarms it. */
BDS_API void bds_session_set_deadline(bds_session *session, uint64_t deadline_ns);

/* Sends a reply that no call produced (server push). Returns BDS_OK (written or
 * queued), BDS_E_OUTBOUND_BACKPRESSURE (rejected: dropped; with fail_fast the
 * session is closing), BDS_E_OUTBOUND_CLOSED or BDS_E_SESSION_CLOSED (dropped). */
BDS_API bds_status bds_session_send(bds_session *session, bds_reply *reply);
/* A reply handed to ops->write is on the wire: releases its outbound token
 * and its bytes (the same reply, its bytes unchanged). */
BDS_API void bds_session_reply_written(bds_session *session, bds_reply *reply);

BDS_API bds_session_state bds_session_get_state(const bds_session *session); /* any thread */
/* The first shutdown/close reason, BDS_OK while there is none. */
BDS_API bds_status bds_session_reason(const bds_session *session);
BDS_API void *bds_session_ctx(const bds_session *session); /* ops_ctx */

typedef struct bds_session_stats {
    uint64_t admitted, rejected, completed, failed, nonterminal_failures, retried, panics, dropped;
    uint64_t pressure_signals, replies_written, replies_rejected;
    uint64_t bytes_in, bytes_out;           /* only with metrics.payload_sizes */
    uint32_t waiting_hw;                    /* most messages waiting for their key's turn */
    uint32_t token_waiters_hw;              /* most keys waiting for an inbound token (QUEUE) */
    uint32_t send_queue_hw;                 /* most replies waiting for an outbound token */
    uint32_t executing, executing_hw;       /* keys holding an inbound token (real or soft) */
    uint32_t tokens_free, tokens_held;      /* inbound: free + held == capacity (when capacity > 0) */
} bds_session_stats;
BDS_API void bds_session_get_stats(const bds_session *session, bds_session_stats *out);
/* Payload bytes the session holds now: admitted and unfinished (inbound), and
 * replies queued or written but not yet reply_written (outbound). A transport
 * adds what it holds itself, e.g. to find its largest stream under a memory
 * budget. Home only. */
BDS_API uint64_t bds_session_held_bytes(const bds_session *session);
/* Of those, the replies (queued, or written and not yet reply_written): what
 * ending the session gives back at once, while admitted payloads wait for
 * their handlers. Home only. */
BDS_API uint64_t bds_session_unsent_bytes(const bds_session *session);

/* ---- calls (inside a handler) ---------------------------------------------
 *
 * A call is lent to the handler from the start of its attempt until
 * bds_call_done() (or bds_call_panic()); after that the pointer is no longer
 * the handler's. Using it then (a second bds_call_done, a reply, a panic) is
 * a misuse: the process stops with "bidistream: <function>: misuse: ..." on
 * stderr (abort), every time the call has not been reused for a new message
 * yet, which is always the case until its session's next message arrives. A
 * reuse cannot be told apart from a new call: the misuse then harms that
 * call. */

BDS_API void *bds_call_payload(const bds_call *call);
BDS_API const void *bds_call_key(const bds_call *call, uint32_t *key_len);
BDS_API uint64_t bds_call_seq(const bds_call *call);
BDS_API uint32_t bds_call_attempt(const bds_call *call);  /* 1 on the first run */
BDS_API void *bds_call_session_ctx(const bds_call *call); /* the session's ops_ctx */
/* Whether the call's session has closed (the client cancelled or reset the
 * stream, its deadline passed, it failed, or the shutdown's grace period
 * ended): nothing the call still makes reaches the client, so long work
 * should stop and finish the call (bds_call_done with any status). A cheap
 * atomic load. Thread: any, while the call is the handler's (before
 * bds_call_done; after it, a misuse that stops the process). */
BDS_API bool bds_call_cancelled(const bds_call *call);
/* Whether the message was admitted over capacity by a SOFT_ALLOW_SIGNAL
 * inbound policy: it runs on a token taken past inbound.backpressure.capacity
 * (the one whose admission raised the signal, or a later message of its key
 * while the key still holds that token). A handler can pass the signal on to
 * its client (e.g. a field of its reply) or shed work. Fixed for the call's
 * life. Thread: any, while the call is the handler's (after bds_call_done, a
 * misuse that stops the process). */
BDS_API bool bds_call_pressured(const bds_call *call);
/* A function run for a call on its EXEC pipeline's thread (bds_call_after,
 * bds_call_on_cancel). ctx is the one given with it. */
typedef void (*bds_call_fn)(bds_call *call, void *ctx);
/* Runs fn(call, ctx) once on the call's EXEC pipeline thread (the one its
 * handler runs on), outside the handler's own run: after after_ns, or at once
 * when the call's session closes first (client cancel, deadline, failure, the
 * shutdown's grace over; fn then sees bds_call_cancelled true), so that a
 * handler needs no thread of its own for a delay and never holds work past
 * its stream. fn typically replies and finishes the call (bds_call_done), or
 * arms the next step with bds_call_after. One timer per call at a time; each
 * attempt starts with none. bds_call_done on the EXEC thread disarms it (fn
 * then never runs); so does bds_call_panic. Returns BDS_OK (armed),
 * BDS_FAILED_PRECONDITION (a timer of this call is armed: fn will not run)
 * or BDS_E_NOMEM (the timer heap could not grow). Thread: the call's EXEC
 * pipeline only, while the call is the handler's (inside the handler, or in
 * a function run there later for it: a timer's fn, a cancel hook); anywhere
 * else, or with fn NULL, a misuse that stops the process naming
 * bds_call_after. A bds_call_done from another thread while the timer is
 * armed would race it: a misuse that stops the process. ctx stays the
 * caller's. */
BDS_API bds_status bds_call_after(bds_call *call, uint64_t after_ns, bds_call_fn fn, void *ctx);
/* For a handler whose call finishes later from work on the call's EXEC
 * pipeline (its own timers, bds_call_after): when the session closes first
 * (client cancel, failure, deadline, grace over), fn runs once on that
 * pipeline's thread, outside the handler; it stops the work, frees what the
 * work holds and finishes the call (bds_call_done). A timer armed with
 * bds_call_after runs first; fn runs after it only if the call is still not
 * done. Set it inside the handler or in a function run on the EXEC thread
 * for the call before its session closed (after the close it never runs:
 * check bds_call_cancelled). A second call replaces the hook; fn NULL removes
 * it. bds_call_done on the EXEC thread clears it, and each attempt starts
 * without one. Thread: the call's EXEC pipeline only, while the call is the
 * handler's (anywhere else, a misuse that stops the process naming
 * bds_call_on_cancel). A bds_call_done from another thread while a hook is
 * set would race it: a misuse that stops the process. ctx stays the
 * caller's. */
BDS_API void bds_call_on_cancel(bds_call *call, bds_call_fn fn, void *ctx);
/* Emits a reply (before bds_call_done; after it, a misuse that stops the
 * process). Thread: any. The reply reaches the Sender in call order: at once,
 * or, when retries hold replies (options.retry: max_attempts > 0 without
 * at_least_once), when the attempt ends: sent if it succeeded, dropped
 * (ops->drop) if it failed. reply stays the caller's until the session's
 * ops->write or ops->drop, whatever this returns. Returns:
 *   BDS_OK                       taken
 *   BDS_E_SESSION_CLOSED         taken, but the session has closed: it will be
 *                                dropped, and so will every later one
 *   BDS_E_OUTBOUND_BACKPRESSURE  taken, but since the last reply that said so,
 *                                the Sender refused at least one earlier reply
 *                                of this session (this call's or another's;
 *                                without outbound.fail_fast the session goes
 *                                on and the refused replies are dropped). The
 *                                Sender decides on the session's home pipeline
 *                                after the reply was taken, so a refusal is
 *                                told at a later bds_call_reply of the session,
 *                                once, never at the one refused. */
BDS_API bds_status bds_call_reply(bds_call *call, bds_reply *reply);
/* Finishes this attempt. BDS_OK succeeds. BDS_E_NONTERMINAL_FAILURE fails this
 * message alone. Any other status is a failure: retried while the budget
 * lasts if its gRPC code is in options.retry.retryable (else at once), then
 * terminal for the session when inbound.failures_terminal (its status goes
 * on the wire; E_TERMINAL_FAILURE becomes INTERNAL).
 * BDS_E_PANIC_RECOVERED is the abort below. message may be NULL; it is copied
 * (up to 95 bytes). Thread: any; but only the call's EXEC pipeline thread
 * while a bds_call_after timer or a bds_call_on_cancel hook is set (from
 * another thread it would race them: a misuse that stops the process).
 * There it disarms both. Exactly once per attempt: a second call (or two
 * threads at once) is a misuse that stops the process, naming
 * bds_call_done. */
BDS_API void bds_call_done(bds_call *call, bds_status status, const char *message);
/* Finishes this attempt as a failure with status and message, as
 * bds_call_done, and asks for it to be retried whatever its gRPC code
 * (options.retry.retryable): while options.retry.max_attempts lasts and the
 * session is open, the message runs again after retry.backoff_ns; after that
 * it is the failure status says. With max_attempts 0 it is bds_call_done.
 * status BDS_OK or BDS_E_PANIC_RECOVERED is a misuse that stops the process,
 * naming bds_call_retry. Thread, once per attempt and misuse: as
 * bds_call_done (either one finishes the attempt). */
BDS_API void bds_call_retry(bds_call *call, bds_status status, const char *message);
/* Aborts the handler, the C counterpart of a Go panic: only from inside the
 * handler's own synchronous run. Unwinds (longjmp) to the Engine, which ends
 * the session with PANIC_RECOVERED (INTERNAL); never retried, never fatal to
 * the process. Locals of the handler are abandoned: free nothing there. Its
 * bds_call_after timer and cancel hook are disarmed.
 * Anywhere else (another thread, after the handler returned, after
 * bds_call_done) it is a misuse that stops the process, naming bds_call_panic. */
BDS_API _Noreturn void bds_call_panic(bds_call *call, const char *message);

#ifdef __cplusplus
}
#endif
#endif
