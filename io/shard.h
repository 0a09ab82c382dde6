/* shard.h — one io_uring ring per shard thread: ops, the tick, timers, hooks,
 * doorbells (internal).
 *
 * A shard owns one ring (SINGLE_ISSUER | DEFER_TASKRUN | CQSIZE | SUBMIT_ALL),
 * created on the thread that runs it, an op-slot table, a timer heap, the
 * shard's provided-buffer ring (net.c uses it), an eventfd kept armed for
 * wake-ups from non-shard threads, and the hooks the pipeline binding fills.
 *
 * Ops are caller-owned (embedded in their owner, TigerBeetle's Completion):
 * bds__op_submit() never fails. Without an SQE or a free slot the op is parked
 * on a FIFO served first in the next tick. A few slots and SQEs are held back
 * for reserve ops (cancel, close, the shard's own wake-up reads), which park
 * on a FIFO of their own served before the others: when multishot receives
 * hold every other slot, teardown still runs and frees them. Callbacks never run inside the call
 * that submitted the op, nor inside the CQE reap loop: the tick collects
 * completions first and runs them afterwards.
 *
 * Shard: everything here is owner-thread only, except bds__shard_wake() and
 * bds__shard_request_stop() (any thread, async-signal-safe). */
#ifndef BDS_IO_SHARD_H
#define BDS_IO_SHARD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "bidistream/status.h"
#include "timer_heap.h"

typedef struct bds_shard bds_shard;
typedef struct bds_op bds_op;

/* ---- configuration ------------------------------------------------------- */

typedef enum bds_bell_mode {
    BDS_BELL_MSG_RING = 0, /* shard -> shard: IORING_OP_MSG_RING on the producer's ring */
    BDS_BELL_EVENTFD = 1,  /* shard -> shard: write the consumer's eventfd             */
} bds_bell_mode;

typedef struct bds_shard_config {
    uint32_t sq_entries;   /* power of two; default 1024                                 */
    uint32_t cq_entries;   /* 0 = 4 x sq_entries                                         */
    uint32_t ops_max;      /* op slots in flight at once; default 16384; ops_max / 4 (at
                              most 64) of them are reserve-only (bds_op.reserve)          */
    uint32_t bufs;         /* provided recv buffers, power of two; default 256; 0 = none */
    uint32_t buf_bytes;    /* bytes per provided buffer; default 16 KiB                   */
    uint32_t idle_spin_us; /* poll this long before sleeping; default 0 (off)             */
    uint32_t done_batch;   /* CQEs reaped per tick before running callbacks; 0 = cq size  */
    bds_bell_mode bell;    /* default BDS_BELL_MSG_RING                                   */
} bds_shard_config;

void bds__shard_config_default(bds_shard_config *cfg);

/* ---- ops ----------------------------------------------------------------- */

typedef enum bds_op_kind {
    BDS_OP_NONE = 0,
    BDS_OP_NOP,
    BDS_OP_ACCEPT,   /* multishot accept on fd                                      */
    BDS_OP_RECV,     /* multishot recv on fd, buffers from the shard's buffer ring */
    BDS_OP_SENDMSG,  /* a.sendmsg.msg, MSG_NOSIGNAL added                          */
    BDS_OP_READ,     /* a.read.buf/len at offset (eventfd, signalfd)               */
    BDS_OP_CANCEL,   /* cancels a.cancel.target (prepared by bds__op_cancel)        */
    BDS_OP_CLOSE,    /* closes fd                                                   */
    BDS_OP__COUNT,
} bds_op_kind;

/* Runs once per CQE (several times for a multishot op while cqe_flags has
 * IORING_CQE_F_MORE). When it runs without F_MORE the op is idle again and may
 * be resubmitted or freed from inside the callback. Never runs synchronously. */
typedef void (*bds_on_op_fn)(bds_op *op, int32_t res, uint32_t cqe_flags, void *ctx);

enum { BDS_OP_IDLE = 0, BDS_OP_PARKED, BDS_OP_INFLIGHT, BDS_OP_SYNTH };

struct bds_op {
    uint8_t kind;      /* bds_op_kind */
    uint8_t _state;    /* BDS_OP_IDLE / PARKED / INFLIGHT / SYNTH */
    bool reserve;      /* may take the slots and SQEs held back for teardown: set by
                          op_init for CANCEL and CLOSE; set it only on ops that must
                          run for the shard to make progress and never pile up */
    int fd;
    uint32_t _slot;    /* valid while INFLIGHT */
    uint32_t _gen;     /* generation of _slot at submission */
    int32_t _sres;     /* result of a synthetic completion (SYNTH) */
    bds_op *_next;     /* parked / synthetic FIFO link */
    union {
        struct { void *buf; uint32_t len; uint64_t off; } read;
        struct { struct msghdr *msg; } sendmsg;
        struct { bds_op *target; } cancel;
    } a;
    bds_on_op_fn fn;
    void *ctx;
};

/* Prepares op (kind, fd, callback; reserve for CANCEL and CLOSE); arguments go
 * in op->a afterwards. */
void bds__op_init(bds_op *op, bds_op_kind kind, int fd, bds_on_op_fn fn, void *ctx);
static inline bool bds__op_busy(const bds_op *op) { return op->_state != BDS_OP_IDLE; }
/* Queues op for submission at the end of this tick. op must be idle. */
void bds__op_submit(bds_shard *s, bds_op *op);
/* Asks the kernel to cancel target (an op of this shard) through cancel_op, a
 * BDS_OP_CANCEL op. A parked target is unparked and completes with -ECANCELED;
 * an idle target makes cancel_op complete with -ENOENT. Both callbacks run later. */
void bds__op_cancel(bds_shard *s, bds_op *cancel_op, bds_op *target);
/* Releases target's slot at once: its later CQEs fail the generation check and
 * are dropped (their provided buffers recycled). Only for ops whose memory the
 * kernel no longer needs (a multishot recv or accept being cancelled). */
void bds__op_abandon(bds_shard *s, bds_op *op);

/* ---- hooks the pipeline binding fills ----------------------------------- */

typedef struct bds_shard_hooks {
    /* Drain the inbox (budgeted). Returns true when work remains. */
    bool (*drain_inbox)(bds_shard *s, void *ctx);
    /* Run local pipeline work (budgeted). Returns true when work remains. */
    bool (*run_work)(bds_shard *s, void *ctx);
    /* Sleep protocol (docs/ARCHITECTURE.md): returns true when the shard may block.
     * Must give this sleep a fresh bell latch (bell_rung = 0) BEFORE it
     * announces sleeping: a bell rung for an earlier, aborted attempt can be
     * reaped by any enter while the shard is awake (the submit right after an
     * aborted attempt, a tick with work pending), and a latch left set by it
     * would silence the bell of this sleep. bds_mpsc's prepare_sleep does it. */
    bool (*prepare_sleep)(bds_shard *s, void *ctx);
    /* Ends every sleep attempt: after the blocking wait returns (any reason),
     * and also right after prepare_sleep returned false. Clears the sleeping
     * flag (and the latch; not enough on its own, see prepare_sleep). */
    void (*woken)(bds_shard *s, void *ctx);
    /* A SIGTERM/SIGINT arrived (shard with signals enabled only). */
    void (*on_signal)(bds_shard *s, int signo, void *ctx);
    /* Stop was requested: close listeners and connections. Runs once. */
    void (*on_stop)(bds_shard *s, void *ctx);
    /* While stopping: returns true when the upper layer has nothing left. */
    bool (*quiescent)(bds_shard *s, void *ctx);
    /* Diagnostics, from ANY thread (a stall watchdog), while the shard may be
     * running: prints the upper layer's state (inbox, sessions) to f. Relaxed
     * reads only, no locks, no allocation; values may be a little stale. */
    void (*dump)(bds_shard *s, FILE *f, void *ctx);
    void *ctx;
} bds_shard_hooks;

/* ---- end-of-tick flushers (connections with queued output) -------------- */

typedef struct bds_flusher bds_flusher;
struct bds_flusher {
    void (*fn)(bds_flusher *f);
    bds_flusher *_next;
    bool _queued;
};
/* Runs f->fn once at the end of this tick (after callbacks, inbox, work, timers). */
void bds__shard_defer_flush(bds_shard *s, bds_flusher *f);

/* ---- the shard ----------------------------------------------------------- */

/* Any thread may read ticks, sleeps, wait_ns, wait_since_ns, bells_received
 * and eventfd_wakes with relaxed atomic loads (a metrics scrape); the others
 * only for a stall report. */
typedef struct bds_shard_stats {
    uint64_t ticks, sleeps;
    uint64_t cqes, stale_cqes, parked, overflows, ebusy;
    uint64_t bells_sent, bells_received, bell_retries, bell_eventfd_sent, eventfd_wakes;
    uint64_t spins;
    /* Time blocked in the kernel waiting for work (the sleeps' total), and
     * when the sleep in progress began (0: awake). The rest of the time the
     * loop runs: its utilisation is 1 - wait / elapsed. */
    uint64_t wait_ns, wait_since_ns;
} bds_shard_stats;

#define BDS_SHARDS_MAX 256

/* Creates the shard's ring ON THE CALLING THREAD, which becomes its only
 * submitter. On failure returns a status (BDS_UNAVAILABLE: io_uring disabled by
 * sysctl or seccomp; BDS_UNIMPLEMENTED: the kernel lacks a needed feature;
 * BDS_E_NOMEM) with a message in err (may be NULL), and *out stays NULL. */
bds_status bds__shard_create(bds_shard **out, uint32_t id, const bds_shard_config *cfg,
                             char *err, size_t err_len);
/* Owner thread. Asserts that no op is in flight (bds__shard_run returned, or no
 * op was ever submitted). NULL is a no-op. */
void bds__shard_destroy(bds_shard *s);

void bds__shard_set_hooks(bds_shard *s, const bds_shard_hooks *hooks);
/* Reads signals through a signalfd on this shard's ring (SIGTERM, SIGINT, which
 * must already be blocked in every thread: bds__signals_block()). */
bds_status bds__shard_enable_signals(bds_shard *s, bool sighup);
/* Blocks SIGTERM and SIGINT in the calling thread (threads created later inherit it). */
void bds__signals_block(bool sighup);

/* One tick: reap, run callbacks, inbox, work, timers, flushers, recycle
 * buffers, submit; blocks until a CQE, a bell or the next timer when may_block
 * and nothing is pending. */
void bds__shard_tick(bds_shard *s, bool may_block);
/* Ticks until stop is requested and every op has completed. */
void bds__shard_run(bds_shard *s);
/* Any thread, async-signal-safe. */
void bds__shard_request_stop(bds_shard *s);
bool bds__shard_stopping(const bds_shard *s);

/* Doorbells. bds__shard_bell: from the owner thread of `from`, wakes `to`
 * (MSG_RING on from's ring, sent with this tick's submit; a failure is retried
 * next tick). bds__shard_wake: from any thread (eventfd write). Spurious bells
 * are harmless; the caller's latch (mpsc should_ring) coalesces them. */
void bds__shard_bell(bds_shard *from, bds_shard *to);
/* Contract: a foreign waker must be done with `to` (returned from this call)
 * before `to` can finish stopping; destroy waits for wakes in progress. */
void bds__shard_wake(bds_shard *to);
/* Any thread: decrements *inside (a count of foreign threads at work on the
 * shard's state, which its quiescent hook reads), then wakes `to` if its stop
 * was requested. A stopping shard that found the count raised blocks until a
 * wake: a bare decrement would leave it blocked forever, quiescent at last
 * and never asked again. `to` stays alive until this returns. The quiescent
 * hook must read *inside with a seq_cst load. */
void bds__shard_leave(bds_shard *to, _Atomic uint32_t *inside);

/* The shard whose tick runs on this thread, or NULL. */
bds_shard *bds__shard_self(void);
uint32_t bds__shard_id(const bds_shard *s);
/* CLOCK_MONOTONIC ns, refreshed once per tick. */
uint64_t bds__shard_now(const bds_shard *s);
uint64_t bds__clock_ns(void);
bds_timer_heap *bds__shard_timers(bds_shard *s);
const bds_shard_stats *bds__shard_stats(const bds_shard *s);
const bds_shard_config *bds__shard_config(const bds_shard *s);
/* Ops holding a slot (in flight). */
uint32_t bds__shard_inflight(const bds_shard *s);
/* Any thread, for a stall report: the shard's state (last tick, blocked or
 * running, ops in flight and parked, timers, rings, eventfd, counters), then
 * the dump hook's. Relaxed reads of state the owner keeps changing: a
 * snapshot for a human, never for decisions. */
void bds__shard_dump(const bds_shard *s, FILE *f);

/* ---- the provided-buffer ring (one per shard, group id 0) --------------- */

#define BDS_BUF_GROUP 0
/* Bytes of provided buffer bid. */
void *bds__shard_buf(bds_shard *s, uint16_t bid);
/* Gives bid back to the kernel; made visible once, at the end of the tick. */
void bds__shard_buf_recycle(bds_shard *s, uint16_t bid);

#endif
