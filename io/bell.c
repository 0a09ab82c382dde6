/* bell.c — doorbells (MSG_RING between shards, an eventfd for everyone else)
 * and the signalfd read.
 *
 * Design (docs/ARCHITECTURE.md). The latch that decides *whether* to ring lives with the
 * inbox (core/mpsc.h: should_ring / prepare_sleep); this file only rings.
 * A shard rings another by queueing IORING_OP_MSG_RING on its OWN ring with
 * IOSQE_CQE_SKIP_SUCCESS: the SQE goes out with this tick's submit, no extra
 * syscall, and only a failure (e.g. -EOVERFLOW on the target) posts a CQE
 * (kind BELL_TX, slot = target id), which re-marks the target so the bell is
 * retried next tick. The target sees a CQE of kind BELL_RX, which only ends its
 * wait. Bells to the same target within a tick coalesce into one bitmap bit.
 * A non-shard thread (or a shard configured with BDS_BELL_EVENTFD) writes the
 * target's eventfd, which the target keeps a read armed on.
 * MSG_RING carries no happens-before for TSan (liburing #1514): data never
 * moves through the bell, only through the inbox's atomics.
 *
 * Signals: SIGTERM/SIGINT are blocked in every thread (bds__signals_block
 * before threads start) and read by one shard through a signalfd. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "base.h"
#include "shard_int.h"

static void bell_on_efd(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void bell_on_sig(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void bell_on_cancel(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    (void)op, (void)res, (void)flags, (void)ctx; /* 0, -ENOENT, -EALREADY: all fine */
}

static void bell_arm_efd(bds_shard *s) {
    s->efd_op.a.read.buf = &s->efd_val;
    s->efd_op.a.read.len = sizeof(s->efd_val);
    s->efd_op.a.read.off = 0;
    bds__op_submit(s, &s->efd_op);
}

bds_status bds__bell_init(bds_shard *s, char *err, size_t err_len) {
    /* Blocking eventfd: io_uring polls it for us; writers never block (the
     * counter would need 2^64 - 2 unread wakes). */
    s->efd = eventfd(0, EFD_CLOEXEC);
    if (s->efd < 0) {
        if (err && err_len)
            snprintf(err, err_len, "bidistream: eventfd: %s", strerror(errno));
        return BDS_E_NOMEM;
    }
    bds__op_init(&s->efd_op, BDS_OP_READ, s->efd, bell_on_efd, s);
    bds__op_init(&s->efd_cancel, BDS_OP_CANCEL, -1, bell_on_cancel, s);
    bds__op_init(&s->sig_op, BDS_OP_READ, -1, bell_on_sig, s);
    /* A wake-up or a SIGTERM must get through even when connections hold
     * every ordinary slot. */
    s->efd_op.reserve = s->sig_op.reserve = true;
    bds__op_init(&s->sig_cancel, BDS_OP_CANCEL, -1, bell_on_cancel, s);
    bell_arm_efd(s);
    return BDS_OK;
}

void bds__bell_deinit(bds_shard *s) {
    if (s->efd >= 0)
        close(s->efd);
    if (s->sfd >= 0)
        close(s->sfd);
    s->efd = s->sfd = -1;
}

static void bell_on_efd(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_shard *s = ctx;
    (void)op, (void)flags;
    if (res == (int32_t)sizeof(uint64_t))
        __atomic_store_n(&s->stats.eventfd_wakes, s->stats.eventfd_wakes + 1, __ATOMIC_RELAXED); /* a scrape reads it */
    /* -ECANCELED (stop) ends it; any other error is retried by re-arming. */
    if (!s->bell_stopped && res != -ECANCELED)
        bell_arm_efd(s);
}

void bds__shard_wake(bds_shard *to) {
    uint64_t one = 1;
    /* The waker count brackets the write so bds__shard_destroy (which waits for
     * it to reach 0) never closes the eventfd under a write in progress, and
     * orders every finished write before the close. acq_rel / release pair
     * with the acquire spin in bds__shard_destroy. */
    atomic_fetch_add_explicit(&to->wakers, 1, memory_order_acq_rel);
    /* The eventfd counter is the kernel's; the read CQE ends the target's wait. */
    ssize_t n = write(to->efd, &one, sizeof(one));
    BDS_ASSERT(n == (ssize_t)sizeof(one));
    atomic_fetch_sub_explicit(&to->wakers, 1, memory_order_release);
}

void bds__shard_bell(bds_shard *from, bds_shard *to) {
    if (!from || from->cfg.bell == BDS_BELL_EVENTFD || from->bell_stopped) {
        bds__shard_wake(to);
        return;
    }
    if (from == to)
        return; /* a shard that is running is not asleep */
    BDS_ASSERT(to->id < BDS_SHARDS_MAX);
    uint64_t bit = 1ull << (to->id % 64);
    if (!(from->bell_mask[to->id / 64] & bit)) {
        from->bell_mask[to->id / 64] |= bit;
        from->bell_to[to->id] = to;
        from->bell_n++;
    }
}

bool bds__bell_pending(const bds_shard *s) { return s->bell_n > 0; }

/* Queues one MSG_RING per marked target; a target left marked (SQ full) keeps
 * the tick from sleeping and goes out next tick. */
void bds__bell_flush(bds_shard *s) {
    for (uint32_t w = 0; s->bell_n && w < BDS_SHARDS_MAX / 64; w++) {
        while (s->bell_mask[w]) {
            uint32_t id = w * 64 + (uint32_t)__builtin_ctzll(s->bell_mask[w]);
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            if (!sqe)
                return;
            bds_shard *to = s->bell_to[id];
            io_uring_prep_msg_ring(sqe, to->ring.ring_fd, 0, bds__ud_make(BDS_UD_BELL_RX, 0, s->id), 0);
            io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
            io_uring_sqe_set_data64(sqe, bds__ud_make(BDS_UD_BELL_TX, 0, id));
            s->bell_mask[w] &= s->bell_mask[w] - 1;
            s->bell_n--;
            s->stats.bells_sent++;
        }
    }
}

void bds__bell_on_cqe(bds_shard *s, uint64_t ud, int32_t res) {
    uint32_t kind = (uint32_t)(ud >> 56), id = (uint32_t)ud;
    switch (kind) {
    case BDS_UD_BELL_RX:
        __atomic_store_n(&s->stats.bells_received, s->stats.bells_received + 1, __ATOMIC_RELAXED); /* a scrape reads it */
        break;
    case BDS_UD_BELL_TX:
        /* Only failures post (CQE_SKIP_SUCCESS): -EOVERFLOW from a full target
         * CQ, -EBADFD from a target ring being torn down. Retry next tick. */
        BDS_ASSERT(res < 0 && id < BDS_SHARDS_MAX && s->bell_to[id]);
        s->stats.bell_retries++;
        if (!(s->bell_mask[id / 64] & (1ull << (id % 64)))) {
            s->bell_mask[id / 64] |= 1ull << (id % 64);
            s->bell_n++;
        }
        break;
    default:
        BDS_UNREACHABLE();
    }
}

uint32_t bds__bell_internal_inflight(const bds_shard *s) {
    return (uint32_t)(s->efd_op._state == BDS_OP_INFLIGHT) + (uint32_t)(s->sig_op._state == BDS_OP_INFLIGHT) +
           (uint32_t)(s->efd_cancel._state == BDS_OP_INFLIGHT) +
           (uint32_t)(s->sig_cancel._state == BDS_OP_INFLIGHT);
}

bool bds__bell_stop(bds_shard *s) {
    if (!s->bell_stopped) {
        s->bell_stopped = true;
        if (bds__op_busy(&s->efd_op))
            bds__op_cancel(s, &s->efd_cancel, &s->efd_op);
        if (bds__op_busy(&s->sig_op))
            bds__op_cancel(s, &s->sig_cancel, &s->sig_op);
    }
    return !bds__op_busy(&s->efd_op) && !bds__op_busy(&s->sig_op) && !bds__op_busy(&s->efd_cancel) &&
           !bds__op_busy(&s->sig_cancel);
}

/* ---- signals ------------------------------------------------------------------ */

static void bell_sigset(sigset_t *set, bool sighup) {
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    if (sighup) sigaddset(set, SIGHUP);
}

void bds__signals_block(bool sighup) {
    sigset_t set;
    bell_sigset(&set, sighup);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    BDS_ASSERT(rc == 0);
}

static void bell_arm_sig(bds_shard *s) {
    s->sig_op.a.read.buf = &s->sinfo;
    s->sig_op.a.read.len = sizeof(s->sinfo);
    s->sig_op.a.read.off = 0;
    bds__op_submit(s, &s->sig_op);
}

bds_status bds__shard_enable_signals(bds_shard *s, bool sighup) {
    BDS_ASSERT(s->sfd < 0);
    sigset_t set;
    bell_sigset(&set, sighup);
    s->sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (s->sfd < 0)
        return BDS_E_NOMEM;
    s->sig_op.fd = s->sfd;
    bell_arm_sig(s);
    return BDS_OK;
}

static void bell_on_sig(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_shard *s = ctx;
    (void)op, (void)flags;
    if (res == (int32_t)sizeof(s->sinfo) && s->hooks.on_signal)
        s->hooks.on_signal(s, (int)s->sinfo.ssi_signo, s->hooks.ctx);
    if (!s->bell_stopped && res != -ECANCELED)
        bell_arm_sig(s);
}
