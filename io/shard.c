/* shard.c — the shard's ring, op-slot table and tick.
 *
 * Design. One io_uring per shard, created on the shard's own thread with
 * SINGLE_ISSUER | DEFER_TASKRUN (completions are produced only when this thread
 * enters with GETEVENTS, docs/ARCHITECTURE.md), CQ = 4 x SQ, SUBMIT_ALL. Every SQE's
 * user_data is kind:8 | gen:24 | slot:32. The slot indexes slot_op[], the
 * generation is bumped whenever a slot is released, so a CQE that arrives after
 * its op was abandoned (or its slot reused) fails the check and is dropped; a
 * provided buffer it carries is still recycled. user_data 0 and UINT64_MAX
 * (liburing's LIBURING_UDATA_TIMEOUT) are never ours.
 *
 * The tick (bds__shard_tick):
 *   1. submit what the previous tick prepared; when it left nothing pending,
 *      run the sleep protocol (prepare_sleep hook) and block in
 *      io_uring_submit_and_wait_timeout with the next timer deadline as the
 *      EXT_ARG timeout (no timeout SQE; LIBURING_UDATA_TIMEOUT CQEs ignored);
 *   2. serve parked ops (SQ was full or no slot) first, in FIFO order, the
 *      reserve ops' FIFO before the other (slots and SQEs held back for them:
 *      teardown never waits behind new work);
 *   3. reap up to done_cap CQEs into done[] (no callback runs here), then run
 *      the collected callbacks, then synthetic completions (cancelled parked
 *      ops); a callback that frees its owner is safe because each done entry is
 *      re-validated against the slot table before it runs;
 *   4. the drain_inbox and run_work hooks, timers due now, end-of-tick flushers,
 *      doorbells (MSG_RING SQEs go out with the next submit);
 *   5. the provided buffers recycled during the tick become visible with one
 *      io_uring_buf_ring_advance, before the submit that may re-arm a recv.
 * CQ overflow (kernel keeps overflowed CQEs, IORING_FEAT_NODROP) and -EBUSY
 * from enter both mean "reap, flush with io_uring_get_events, go again".
 *
 * Ownership. Ops belong to their owners; the shard only points at them while
 * they hold a slot or sit on the parked/synthetic FIFOs. The slot table, done[]
 * and the buffer memory are the shard's. Doorbells and signals live in bell.c;
 * sockets in net.c; threads in group.c. */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "shard_int.h"

static _Thread_local bds_shard *shard_tls;

/* ---- user_data ------------------------------------------------------------ */

uint64_t bds__ud_make(uint32_t kind, uint32_t gen, uint32_t slot) {
    return ((uint64_t)(kind & 0xFFu) << 56) | ((uint64_t)(gen & BDS_GEN_MASK) << 32) | slot;
}

/* ---- configuration and clock -------------------------------------------- */

void bds__shard_config_default(bds_shard_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->sq_entries = 1024;
    cfg->cq_entries = 0;
    cfg->ops_max = 16384;
    cfg->bufs = 256;
    cfg->buf_bytes = 16384;
    cfg->idle_spin_us = 0;
    cfg->bell = BDS_BELL_MSG_RING;
}

uint64_t bds__clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bds_shard *bds__shard_self(void) { return shard_tls; }
uint32_t bds__shard_id(const bds_shard *s) { return s->id; }
uint64_t bds__shard_now(const bds_shard *s) { return s->now_ns; }
bds_timer_heap *bds__shard_timers(bds_shard *s) { return &s->timers; }
const bds_shard_stats *bds__shard_stats(const bds_shard *s) { return &s->stats; }
const bds_shard_config *bds__shard_config(const bds_shard *s) { return &s->cfg; }
uint32_t bds__shard_inflight(const bds_shard *s) { return s->inflight; }
bool bds__shard_stopping(const bds_shard *s) { return s->stopping; }

/* ---- ring setup: one errno switch for the setup family ------------------ */

static bds_status shard_setup_status(int err, char *msg, size_t len) {
    const char *why;
    bds_status st;
    switch (err) {
    case ENOSYS:
        st = BDS_UNAVAILABLE;
        why = "io_uring is not available in this kernel (ENOSYS)";
        break;
    case EPERM:
    case EACCES:
        st = BDS_UNAVAILABLE;
        why = "io_uring is disabled (sysctl kernel.io_uring_disabled, or a seccomp/container policy)";
        break;
    case EINVAL:
        st = BDS_UNIMPLEMENTED;
        why = "the kernel rejected the ring flags (needs Linux >= 6.1 for DEFER_TASKRUN)";
        break;
    case ENOMEM:
    case EMFILE:
    case ENFILE:
        st = BDS_E_NOMEM;
        why = "cannot allocate the ring (memlock limit or file descriptors)";
        break;
    default:
        st = BDS_UNAVAILABLE;
        why = "io_uring setup failed";
        break;
    }
    if (msg && len)
        snprintf(msg, len, "bidistream: %s: %s", why, strerror(err));
    return st;
}

static bds_status shard_ring_init(bds_shard *s, char *err, size_t err_len) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = s->cfg.cq_entries;
    int rc = io_uring_queue_init_params(s->cfg.sq_entries, &s->ring, &p);
    if (rc < 0)
        return shard_setup_status(-rc, err, err_len);
    s->ring_ok = true;
    s->cq_entries = p.cq_entries;
    if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
        if (err && err_len)
            snprintf(err, err_len, "bidistream: the kernel lacks IORING_FEAT_EXT_ARG/NODROP");
        return BDS_UNIMPLEMENTED;
    }
    /* Registered ring fd: enter() skips the fdget. Failure only costs speed. */
    (void)io_uring_register_ring_fd(&s->ring);
    /* Few io-wq workers (bounded and unbounded): our ops are sockets and
     * eventfds, which poll instead of punting; a stray punt must not spawn a
     * thread per request on 2 cores. Best effort. */
    unsigned int workers[2] = {2, 2};
    (void)io_uring_register_iowq_max_workers(&s->ring, workers);
    return BDS_OK;
}

static bds_status shard_probe(bds_shard *s, char *err, size_t err_len) {
    static const struct { int op; const char *name; } need[] = {
        {IORING_OP_ACCEPT, "ACCEPT"}, {IORING_OP_RECV, "RECV"},     {IORING_OP_SENDMSG, "SENDMSG"},
        {IORING_OP_READ, "READ"},     {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
        {IORING_OP_CLOSE, "CLOSE"},   {IORING_OP_MSG_RING, "MSG_RING"},
        {IORING_OP_PROVIDE_BUFFERS, "PROVIDE_BUFFERS"},
    };
    struct io_uring_probe *probe = io_uring_get_probe_ring(&s->ring);
    if (!probe) {
        if (err && err_len)
            snprintf(err, err_len, "bidistream: io_uring opcode probe failed");
        return BDS_UNIMPLEMENTED;
    }
    bds_status st = BDS_OK;
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        if (!io_uring_opcode_supported(probe, need[i].op)) {
            if (err && err_len)
                snprintf(err, err_len, "bidistream: the kernel lacks IORING_OP_%s", need[i].name);
            st = BDS_UNIMPLEMENTED;
            break;
        }
    }
    io_uring_free_probe(probe);
    return st;
}

static bool shard_alloc_tables(bds_shard *s) {
    uint32_t n = s->cfg.ops_max;
    s->slot_op = calloc(n, sizeof(*s->slot_op));
    s->slot_gen = calloc(n, sizeof(*s->slot_gen));
    s->slot_free = calloc(n, sizeof(*s->slot_free));
    s->done_cap = s->cfg.done_batch ? s->cfg.done_batch : s->cq_entries;
    s->done = calloc(s->done_cap, sizeof(*s->done));
    if (!s->slot_op || !s->slot_gen || !s->slot_free || !s->done)
        return false;
    for (uint32_t i = 0; i < n; i++)
        s->slot_free[i] = n - 1 - i; /* pop order 0, 1, 2, ... */
    s->slot_free_n = n;
    /* Held back for cancel and close: when multishot receives (one per
     * connection) took every other slot, teardown still frees them. */
    s->slots_held = n / 4 < 64 ? n / 4 : 64;
    if (!s->slots_held && n > 1)
        s->slots_held = 1;
    s->sqes_held = s->cfg.sq_entries / 4 < 16 ? s->cfg.sq_entries / 4 : 16;
    return bds__timer_heap_init(&s->timers, 256) == 0;
}

static bool cfg_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static bds_status shard_check_config(const bds_shard_config *cfg, char *err, size_t err_len) {
    bool ok = cfg_pow2(cfg->sq_entries) && cfg->ops_max > 0 && cfg->ops_max < (1u << 31) &&
              (cfg->cq_entries == 0 || (cfg_pow2(cfg->cq_entries) && cfg->cq_entries >= cfg->sq_entries)) &&
              (cfg->bufs == 0 || (cfg_pow2(cfg->bufs) && cfg->bufs <= 32768 && cfg->buf_bytes > 0));
    if (!ok && err && err_len)
        snprintf(err, err_len, "bidistream: invalid shard config (sizes must be powers of two, cq >= sq)");
    return ok ? BDS_OK : BDS_E_INVALID;
}

bds_status bds__shard_create(bds_shard **out, uint32_t id, const bds_shard_config *cfg, char *err,
                             size_t err_len) {
    *out = NULL;
    BDS_ASSERT(id < BDS_SHARDS_MAX);
    bds_status st = shard_check_config(cfg, err, err_len);
    if (st != BDS_OK)
        return st;
    bds_shard *s = calloc(1, sizeof(*s));
    if (!s)
        return BDS_E_NOMEM;
    s->id = id;
    s->cfg = *cfg;
    if (!s->cfg.cq_entries)
        s->cfg.cq_entries = 4 * s->cfg.sq_entries;
    s->efd = -1;
    s->sfd = -1;
    s->owner = pthread_self();
    st = shard_ring_init(s, err, err_len);
    if (st == BDS_OK)
        st = shard_probe(s, err, err_len);
    if (st == BDS_OK && !shard_alloc_tables(s))
        st = BDS_E_NOMEM;
    if (st == BDS_OK)
        st = bds__shard_bufs_init(s, err, err_len);
    if (st == BDS_OK)
        st = bds__bell_init(s, err, err_len);
    if (st != BDS_OK) {
        bds__shard_destroy(s);
        return st;
    }
    s->now_ns = bds__clock_ns();
    shard_tls = s;
    *out = s;
    return BDS_OK;
}

void bds__shard_destroy(bds_shard *s) {
    if (!s)
        return;
    BDS_ASSERT(s->inflight == 0 || !s->ring_ok);
    /* acquire: pairs with the release decrement in bds__shard_request_stop */
    while (atomic_load_explicit(&s->wakers, memory_order_acquire) != 0)
        sched_yield();
    bds__bell_deinit(s);
    bds__shard_bufs_deinit(s);
    if (s->ring_ok)
        io_uring_queue_exit(&s->ring);
    if (s->timers._v)
        bds__timer_heap_deinit(&s->timers);
    free(s->slot_op);
    free(s->slot_gen);
    free(s->slot_free);
    free(s->done);
    if (shard_tls == s)
        shard_tls = NULL;
    free(s);
}

void bds__shard_set_hooks(bds_shard *s, const bds_shard_hooks *hooks) { s->hooks = *hooks; }

/* ---- ops --------------------------------------------------------------------- */

void bds__op_init(bds_op *op, bds_op_kind kind, int fd, bds_on_op_fn fn, void *ctx) {
    memset(op, 0, sizeof(*op));
    op->kind = (uint8_t)kind;
    op->reserve = kind == BDS_OP_CANCEL || kind == BDS_OP_CLOSE;
    op->fd = fd;
    op->fn = fn;
    op->ctx = ctx;
}

static void shard_prep_sqe(bds_shard *s, struct io_uring_sqe *sqe, bds_op *op) {
    switch ((bds_op_kind)op->kind) {
    case BDS_OP_NOP:
        io_uring_prep_nop(sqe);
        break;
    case BDS_OP_ACCEPT:
        io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
        break;
    case BDS_OP_RECV:
        io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = BDS_BUF_GROUP;
        break;
    case BDS_OP_SENDMSG:
        io_uring_prep_sendmsg(sqe, op->fd, op->a.sendmsg.msg, MSG_NOSIGNAL);
        break;
    case BDS_OP_READ:
        io_uring_prep_read(sqe, op->fd, op->a.read.buf, op->a.read.len, op->a.read.off);
        break;
    case BDS_OP_CANCEL: {
        /* The target's user_data is taken now: if it completed meanwhile, the
         * kernel answers -ENOENT and nothing else happens. */
        bds_op *t = op->a.cancel.target;
        uint64_t ud = t->_state == BDS_OP_INFLIGHT ? bds__ud_make(t->kind, t->_gen, t->_slot) : 0;
        io_uring_prep_cancel64(sqe, ud, 0);
        break;
    }
    case BDS_OP_CLOSE:
        io_uring_prep_close(sqe, op->fd);
        break;
    case BDS_OP_NONE:
    case BDS_OP__COUNT:
        BDS_UNREACHABLE();
    }
    (void)s;
}

/* Takes a slot and an SQE for op; false when either is out for op's class
 * (op then parks). */
static bool shard_prep(bds_shard *s, bds_op *op) {
    if (s->slot_free_n <= (op->reserve ? 0 : s->slots_held))
        return false;
    if (!op->reserve && io_uring_sq_space_left(&s->ring) <= s->sqes_held)
        return false;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe)
        return false;
    uint32_t slot = s->slot_free[--s->slot_free_n];
    BDS_ASSERT(s->slot_op[slot] == NULL);
    s->slot_op[slot] = op;
    s->inflight++;
    op->_slot = slot;
    op->_gen = s->slot_gen[slot];
    op->_state = BDS_OP_INFLIGHT;
    shard_prep_sqe(s, sqe, op);
    io_uring_sqe_set_data64(sqe, bds__ud_make(op->kind, op->_gen, slot));
    return true;
}

static void shard_slot_release(bds_shard *s, bds_op *op) {
    uint32_t slot = op->_slot;
    BDS_ASSERT(slot < s->cfg.ops_max && s->slot_op[slot] == op);
    s->slot_op[slot] = NULL;
    s->slot_gen[slot] = (s->slot_gen[slot] + 1) & BDS_GEN_MASK;
    s->slot_free[s->slot_free_n++] = slot;
    s->inflight--;
    op->_state = BDS_OP_IDLE;
}

static void fifo_push(bds_op **head, bds_op **tail, bds_op *op) {
    op->_next = NULL;
    if (*tail)
        (*tail)->_next = op;
    else
        *head = op;
    *tail = op;
}

void bds__op_submit(bds_shard *s, bds_op *op) {
    BDS_ASSERT(op->_state == BDS_OP_IDLE);
    BDS_ASSERT(op->kind > BDS_OP_NONE && op->kind < BDS_OP__COUNT);
    /* Parked ops go first: an op never overtakes one of its class submitted
     * before it (a reserve op may overtake others: it never depends on them). */
    bool waiting = op->reserve ? s->urgent_head != NULL : s->park_head != NULL;
    if (waiting || !shard_prep(s, op)) {
        op->_state = BDS_OP_PARKED;
        if (op->reserve) {
            fifo_push(&s->urgent_head, &s->urgent_tail, op);
            s->urgent_n++;
        } else {
            fifo_push(&s->park_head, &s->park_tail, op);
            s->parked_n++;
        }
        s->stats.parked++;
    }
}

static void shard_synth(bds_shard *s, bds_op *op, int32_t res) {
    op->_state = BDS_OP_SYNTH;
    op->_sres = res;
    fifo_push(&s->synth_head, &s->synth_tail, op);
}

static void shard_unpark(bds_shard *s, bds_op *op) {
    bds_op **head = op->reserve ? &s->urgent_head : &s->park_head;
    bds_op **tail = op->reserve ? &s->urgent_tail : &s->park_tail;
    bds_op *prev = NULL;
    for (bds_op *p = *head; p; prev = p, p = p->_next) {
        if (p != op)
            continue;
        if (prev)
            prev->_next = p->_next;
        else
            *head = p->_next;
        if (*tail == p)
            *tail = prev;
        if (op->reserve)
            s->urgent_n--;
        else
            s->parked_n--;
        return;
    }
    BDS_UNREACHABLE();
}

void bds__op_cancel(bds_shard *s, bds_op *cancel_op, bds_op *target) {
    BDS_ASSERT(cancel_op->kind == BDS_OP_CANCEL && cancel_op != target);
    cancel_op->a.cancel.target = target;
    switch (target->_state) {
    case BDS_OP_PARKED:
        shard_unpark(s, target);
        shard_synth(s, target, -ECANCELED);
        shard_synth(s, cancel_op, 0);
        break;
    case BDS_OP_INFLIGHT:
        bds__op_submit(s, cancel_op);
        break;
    default: /* idle, or its completion is already queued */
        shard_synth(s, cancel_op, -ENOENT);
        break;
    }
}

void bds__op_abandon(bds_shard *s, bds_op *op) {
    if (op->_state == BDS_OP_INFLIGHT)
        shard_slot_release(s, op);
    BDS_ASSERT(op->_state == BDS_OP_IDLE);
}

/* Serves one FIFO in order until the SQ or the slots run out for its class. */
static void shard_serve_fifo(bds_shard *s, bds_op **head, bds_op **tail, uint32_t *n) {
    while (*head) {
        bds_op *op = *head;
        if (!shard_prep(s, op)) {
            op->_state = BDS_OP_PARKED; /* shard_prep may not have touched it */
            return;
        }
        *head = op->_next;
        if (!*head)
            *tail = NULL;
        (*n)--;
    }
}

/* Reserve ops first: they free what the others wait for. */
static void shard_serve_parked(bds_shard *s) {
    shard_serve_fifo(s, &s->urgent_head, &s->urgent_tail, &s->urgent_n);
    shard_serve_fifo(s, &s->park_head, &s->park_tail, &s->parked_n);
}

/* True when the next tick must not block for the parked ops: an ordinary op
 * that waits only for SQ room (the next submit makes it), or any reserve op
 * (they are few and their slots come back fast, and one may be the eventfd
 * read that foreign threads wake us through). An ordinary op that waits for
 * a slot waits for a CQE, which a blocking wait delivers (spinning would burn
 * the core until one comes). */
static bool shard_parked_runnable(const bds_shard *s) {
    return s->urgent_head || (s->park_head && s->slot_free_n > s->slots_held);
}

/* ---- flushers -------------------------------------------------------------- */

void bds__shard_defer_flush(bds_shard *s, bds_flusher *f) {
    if (f->_queued)
        return;
    f->_queued = true;
    f->_next = NULL;
    if (s->flush_tail)
        s->flush_tail->_next = f;
    else
        s->flush_head = f;
    s->flush_tail = f;
}

static bool shard_run_flushers(bds_shard *s) {
    bds_flusher *f = s->flush_head;
    bool any = f != NULL;
    s->flush_head = s->flush_tail = NULL; /* flushers queued now run next tick */
    while (f) {
        bds_flusher *next = f->_next;
        f->_queued = false;
        f->fn(f);
        f = next;
    }
    return any;
}

/* ---- reap and run ------------------------------------------------------------ */

static void shard_collect(bds_shard *s, const struct io_uring_cqe *cqe) {
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    uint32_t kind = (uint32_t)(ud >> 56);
    s->stats.cqes++;
    if (ud == LIBURING_UDATA_TIMEOUT || ud == 0)
        return; /* not ours: liburing's internal timeout, or a stray */
    if (kind >= BDS_UD_SPECIAL) {
        bds__bell_on_cqe(s, ud, cqe->res);
        return;
    }
    uint32_t slot = (uint32_t)ud, gen = (uint32_t)(ud >> 32) & BDS_GEN_MASK;
    if (slot >= s->cfg.ops_max || !s->slot_op[slot] || s->slot_gen[slot] != gen) {
        s->stats.stale_cqes++;
        if (cqe->flags & IORING_CQE_F_BUFFER)
            bds__shard_buf_recycle(s, (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
        return;
    }
    BDS_ASSERT(s->done_n < s->done_cap);
    s->done[s->done_n++] = (bds_done){.op = s->slot_op[slot], .ud = ud, .res = cqe->res,
                                      .flags = cqe->flags};
}

/* Moves up to done_cap ready CQEs into done[]; returns how many were seen. */
static unsigned shard_reap(bds_shard *s) {
    unsigned seen = 0, head;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&s->ring, head, cqe) {
        if (s->done_n == s->done_cap)
            break;
        shard_collect(s, cqe);
        seen++;
    }
    io_uring_cq_advance(&s->ring, seen);
    return seen;
}

static void shard_run_done(bds_shard *s) {
    for (uint32_t i = 0; i < s->done_n; i++) {
        bds_done d = s->done[i];
        uint32_t slot = (uint32_t)d.ud, gen = (uint32_t)(d.ud >> 32) & BDS_GEN_MASK;
        /* An earlier callback may have abandoned this op (and freed its owner). */
        if (s->slot_op[slot] != d.op || s->slot_gen[slot] != gen) {
            s->stats.stale_cqes++;
            if (d.flags & IORING_CQE_F_BUFFER)
                bds__shard_buf_recycle(s, (uint16_t)(d.flags >> IORING_CQE_BUFFER_SHIFT));
            continue;
        }
        if (!(d.flags & IORING_CQE_F_MORE))
            shard_slot_release(s, d.op);
        d.op->fn(d.op, d.res, d.flags, d.op->ctx);
    }
    s->done_n = 0;
}

static bool shard_run_synth(bds_shard *s) {
    bds_op *op = s->synth_head;
    bool any = op != NULL;
    s->synth_head = s->synth_tail = NULL; /* new ones run next tick: no unbounded loop */
    while (op) {
        bds_op *next = op->_next;
        BDS_ASSERT(op->_state == BDS_OP_SYNTH);
        op->_state = BDS_OP_IDLE;
        op->fn(op, op->_sres, 0, op->ctx);
        op = next;
    }
    return any;
}

/* Returns true when the CQ still holds (or the kernel has overflowed) CQEs. */
static bool shard_reap_and_run(bds_shard *s) {
    shard_reap(s);
    if (io_uring_cq_has_overflow(&s->ring)) {
        /* NODROP kept them in the kernel; an enter with GETEVENTS flushes them
         * into the CQ once we made room. */
        s->stats.overflows++;
        (void)io_uring_get_events(&s->ring);
        shard_reap(s);
    }
    shard_run_done(s);
    return io_uring_cq_ready(&s->ring) > 0 || io_uring_cq_has_overflow(&s->ring);
}

/* ---- submit and wait ------------------------------------------------------------ */

/* The errno family of io_uring_enter: every value is either "go again" or our bug. */
static void shard_enter_result(bds_shard *s, int rc) {
    if (rc >= 0)
        return;
    switch (-rc) {
    case ETIME:  /* the timer deadline passed: the tick runs timers */
    case EINTR:  /* a signal (never ours: they are blocked): go again */
    case EAGAIN: /* the kernel could not allocate request memory now: retry next tick */
        break;
    case EBUSY:  /* CQ overflow backlog: reap first, then submit again */
        s->stats.ebusy++;
        break;
    default:
        fprintf(stderr, "bidistream: shard %u: io_uring_enter: %s\n", s->id, strerror(-rc));
        BDS_UNREACHABLE();
    }
}

static bool shard_spin(bds_shard *s) {
    uint64_t until = bds__clock_ns() + (uint64_t)s->cfg.idle_spin_us * 1000u;
    do {
        shard_enter_result(s, io_uring_submit_and_get_events(&s->ring));
        if (io_uring_cq_ready(&s->ring) || (s->hooks.drain_inbox && s->hooks.drain_inbox(s, s->hooks.ctx)))
            return true;
        s->stats.spins++;
    } while (bds__clock_ns() < until);
    return false;
}

static void shard_wait(bds_shard *s) {
    if (s->cfg.idle_spin_us && shard_spin(s))
        return;
    if (s->hooks.prepare_sleep && !s->hooks.prepare_sleep(s, s->hooks.ctx)) {
        /* The re-check found work. A producer may have seen the sleeping flag
         * already and be about to ring: its bell may land after woken() and
         * be reaped by this very enter, leaving the latch set while we are
         * awake. That is why prepare_sleep must reset the latch before it
         * announces the next sleep (shard.h); woken() alone cannot. */
        if (s->hooks.woken)
            s->hooks.woken(s, s->hooks.ctx);
        shard_enter_result(s, io_uring_submit_and_get_events(&s->ring));
        return;
    }
    struct __kernel_timespec ts, *tsp = NULL;
    uint64_t next = bds__timer_next(&s->timers);
    if (next != UINT64_MAX) {
        uint64_t now = bds__clock_ns();
        uint64_t d = next > now ? next - now : 0;
        ts.tv_sec = (long long)(d / 1000000000u);
        ts.tv_nsec = (long long)(d % 1000000000u);
        tsp = &ts;
    }
    __atomic_store_n(&s->stats.sleeps, s->stats.sleeps + 1, __ATOMIC_RELAXED);
    struct io_uring_cqe *cqe = NULL;
    /* relaxed: read only by bds__shard_dump */
    __atomic_store_n(&s->blocked, true, __ATOMIC_RELAXED);
    /* Two clock reads per sleep, none per message: the loop's utilisation. */
    uint64_t t0 = bds__clock_ns();
    __atomic_store_n(&s->stats.wait_since_ns, t0, __ATOMIC_RELAXED);
    shard_enter_result(s, io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, tsp, NULL));
    __atomic_store_n(&s->stats.wait_ns, s->stats.wait_ns + (bds__clock_ns() - t0), __ATOMIC_RELAXED);
    __atomic_store_n(&s->stats.wait_since_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->blocked, false, __ATOMIC_RELAXED);
    if (s->hooks.woken)
        s->hooks.woken(s, s->hooks.ctx);
}

void bds__shard_tick(bds_shard *s, bool may_block) {
    BDS_DASSERT(shard_tls == s);
    /* relaxed atomic stores (plain moves): a watchdog thread samples ticks
     * and sleeps as its progress clock (bds__shard_dump, tests) */
    __atomic_store_n(&s->stats.ticks, s->stats.ticks + 1, __ATOMIC_RELAXED);
    /* Submit what the previous tick prepared; block only when it left nothing
     * pending. Waiting first means a caller that ticks until some condition
     * sees every completion the tick reaped before the tick can block again. */
    if (!may_block || s->pending)
        shard_enter_result(s, io_uring_submit_and_get_events(&s->ring));
    else
        shard_wait(s);
    s->now_ns = bds__clock_ns();
    shard_serve_parked(s);
    bool pending = shard_reap_and_run(s);
    pending |= shard_run_synth(s);
    if (s->hooks.drain_inbox)
        pending |= s->hooks.drain_inbox(s, s->hooks.ctx);
    if (s->hooks.run_work)
        pending |= s->hooks.run_work(s, s->hooks.ctx);
    s->now_ns = bds__clock_ns();
    pending |= bds__timer_run(&s->timers, s->now_ns, 1024) == 1024;
    shard_run_flushers(s);
    bds__bell_flush(s);
    bds__shard_bufs_publish(s);
    pending |= shard_parked_runnable(s) || s->synth_head != NULL || s->flush_head != NULL;
    pending |= bds__bell_pending(s);
    s->pending = pending;
}

/* ---- run and stop ---------------------------------------------------------------- */

void bds__shard_request_stop(bds_shard *s) {
    /* The waker count brackets the eventfd write: the shard may see stop_req,
     * finish and reach destroy before write() returns here; destroy waits for
     * the count to drop. acq_rel: orders the increment before the stop store. */
    atomic_fetch_add_explicit(&s->wakers, 1, memory_order_acq_rel);
    /* seq_cst: pairs with the load in bds__shard_run (nothing else is
     * published), and takes its place in bds__shard_leave's handshake */
    atomic_store_explicit(&s->stop_req, true, memory_order_seq_cst);
    bds__shard_wake(s);
    /* release: pairs with the acquire spin in bds__shard_destroy */
    atomic_fetch_sub_explicit(&s->wakers, 1, memory_order_release);
}

void bds__shard_leave(bds_shard *to, _Atomic uint32_t *inside) {
    /* The waker count, raised before the decrement, keeps `to` from being
     * destroyed under our wake: it cannot finish before the decrement. */
    atomic_fetch_add_explicit(&to->wakers, 1, memory_order_acq_rel);
    /* seq_cst, with the load of stop_req below, against bds__shard_run's
     * seq_cst load of stop_req followed by the hook's seq_cst load of
     * *inside: either we see the stop and wake, or the shard's check sees
     * the decrement (store buffering is forbidden in the total order). */
    atomic_fetch_sub_explicit(inside, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&to->stop_req, memory_order_seq_cst)) {
        uint64_t one = 1;
        ssize_t n = write(to->efd, &one, sizeof(one));
        BDS_ASSERT(n == (ssize_t)sizeof(one));
    }
    /* release: pairs with the acquire spin in bds__shard_destroy */
    atomic_fetch_sub_explicit(&to->wakers, 1, memory_order_release);
}

/* True when the upper layers are done: only the shard's own reads remain.
 * Timers still armed never fire: their owners were told to stop by on_stop. */
static bool shard_upper_done(bds_shard *s) {
    if (s->hooks.quiescent && !s->hooks.quiescent(s, s->hooks.ctx))
        return false;
    return s->inflight == bds__bell_internal_inflight(s) && !s->park_head && !s->urgent_head && !s->synth_head &&
           !s->flush_head && s->done_n == 0;
}

void bds__shard_run(bds_shard *s) {
    BDS_ASSERT(shard_tls == s);
    for (;;) {
        /* seq_cst: pairs with the release in bds__shard_request_stop, and is
         * the shard's half of the handshake in bds__shard_leave */
        if (!s->stopping && atomic_load_explicit(&s->stop_req, memory_order_seq_cst)) {
            s->stopping = true;
            if (s->hooks.on_stop)
                s->hooks.on_stop(s, s->hooks.ctx);
        }
        /* The eventfd read stays armed until the end: a foreign thread may still
         * need to wake us while the upper layers drain. */
        if (s->stopping && shard_upper_done(s) && bds__bell_stop(s))
            break;
        bds__shard_tick(s, true);
    }
}

/* ---- diagnostics ------------------------------------------------------------------ */

static const char *shard_op_state(uint8_t st) {
    switch (st) {
    case BDS_OP_IDLE: return "idle";
    case BDS_OP_PARKED: return "parked";
    case BDS_OP_INFLIGHT: return "in flight";
    case BDS_OP_SYNTH: return "completing";
    default: return "?";
    }
}

/* The kernel's eventfd counter, from /proc (a read would consume it): -1 if unknown. */
static long long shard_eventfd_count(int fd) {
    char path[64], line[128];
    long long v = -1;
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fd >= 0 ? fopen(path, "r") : NULL;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "eventfd-count: %llx", &v) == 1)
            break;
    fclose(f);
    return v;
}

void bds__shard_dump(const bds_shard *s, FILE *f) {
    /* Relaxed loads of fields the owner writes plainly: this runs from another
     * thread only when something already went wrong (a stall report). */
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
    uint64_t now = bds__clock_ns(), last = LD(s->now_ns);
    const bds_shard_stats *st = &s->stats;
    uint64_t next = s->timers._n ? LD(s->timers._v[0]->deadline_ns) : UINT64_MAX;
    fprintf(f, "shard %u: tick %llu, last tick %.1f ms ago, %s, pending %d, stopping %d\n", s->id,
            (unsigned long long)LD(st->ticks), last <= now ? (double)(now - last) / 1e6 : 0.0,
            LD(s->blocked) ? "BLOCKED in io_uring_enter" : "running", (int)LD(s->pending), (int)LD(s->stopping));
    fprintf(f,
            "  ops: %u in flight of %u (%u held for reserve ops, %u the shard's own reads), parked %u + %u reserve, "
            "synthetic %s, flushers %s\n",
            LD(s->inflight), s->cfg.ops_max, s->slots_held, bds__bell_internal_inflight(s), LD(s->parked_n),
            LD(s->urgent_n), LD(s->synth_head) ? "queued" : "none", LD(s->flush_head) ? "queued" : "none");
    if (next == UINT64_MAX)
        fprintf(f, "  timers: %u armed\n", LD(s->timers._n));
    else
        fprintf(f, "  timers: %u armed, next in %.1f ms\n", LD(s->timers._n),
                next > now ? (double)(next - now) / 1e6 : -(double)(now - next) / 1e6);
    if (s->ring_ok)
        fprintf(f, "  ring: SQ %u unsubmitted, CQ %u unreaped, overflow %d; bells to send %u\n",
                io_uring_sq_ready(&s->ring), io_uring_cq_ready(&s->ring),
                (int)io_uring_cq_has_overflow(&s->ring), LD(s->bell_n));
    fprintf(f, "  eventfd %d: read %s, count %lld\n", s->efd, shard_op_state(LD(s->efd_op._state)),
            shard_eventfd_count(s->efd));
    fprintf(f,
            "  stats: sleeps %llu, cqes %llu, stale %llu, parked %llu, overflows %llu, ebusy %llu, "
            "bells sent %llu received %llu retried %llu, eventfd wakes %llu\n",
            (unsigned long long)LD(st->sleeps), (unsigned long long)LD(st->cqes),
            (unsigned long long)LD(st->stale_cqes), (unsigned long long)LD(st->parked),
            (unsigned long long)LD(st->overflows), (unsigned long long)LD(st->ebusy),
            (unsigned long long)LD(st->bells_sent), (unsigned long long)LD(st->bells_received),
            (unsigned long long)LD(st->bell_retries), (unsigned long long)LD(st->eventfd_wakes));
#undef LD
    if (s->hooks.dump)
        s->hooks.dump((bds_shard *)s, f, s->hooks.ctx);
}
