/* shard_int.h — the shard's layout, shared by shard.c, bufs.c and bell.c only. */
#ifndef BDS_IO_SHARD_INT_H
#define BDS_IO_SHARD_INT_H

#include <liburing.h>
#include <pthread.h>
#include <sys/signalfd.h>

#include "shard.h"

#define BDS_GEN_MASK 0xFFFFFFu
/* user_data kinds from here up carry no slot: doorbells. */
#define BDS_UD_SPECIAL 0xF0u
#define BDS_UD_BELL_TX 0xF1u /* our own MSG_RING failed (CQE_SKIP_SUCCESS hides success); slot = target id */
#define BDS_UD_BELL_RX 0xF2u /* another shard's MSG_RING arrived on our ring */

uint64_t bds__ud_make(uint32_t kind, uint32_t gen, uint32_t slot);

typedef struct bds_done {
    bds_op *op;
    uint64_t ud;
    int32_t res;
    uint32_t flags;
} bds_done;

struct bds_shard {
    struct io_uring ring;
    bool ring_ok;
    uint32_t id;
    uint32_t cq_entries;
    pthread_t owner;
    bds_shard_config cfg;
    bds_shard_hooks hooks;

    /* Op slots: slot_op[i] != NULL exactly while an op holds slot i. */
    bds_op **slot_op;
    uint32_t *slot_gen;   /* bumped on every release; low 24 bits go in user_data */
    uint32_t *slot_free;  /* stack of free slot indexes */
    uint32_t slot_free_n;
    uint32_t inflight;    /* ops_max - slot_free_n */

    bds_op *park_head, *park_tail;   /* waiting for an SQE or a slot, FIFO */
    bds_op *urgent_head, *urgent_tail; /* the same for reserve ops, served first */
    uint32_t parked_n, urgent_n;     /* ops on each FIFO */
    uint32_t slots_held;             /* free slots only reserve ops may take */
    uint32_t sqes_held;              /* free SQEs only reserve ops (and bells) may take */
    bds_op *synth_head, *synth_tail; /* completed without the kernel (cancelled while parked) */
    bds_done *done;                  /* CQEs reaped this tick, callbacks not yet run */
    uint32_t done_n, done_cap;
    bds_flusher *flush_head, *flush_tail;

    bds_timer_heap timers;
    uint64_t now_ns;

    /* Provided buffers (bufs.c). */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *buf_mem;
    uint32_t br_added;  /* buffers added since the last advance */
    bool br_registered;

    /* Doorbells and signals (bell.c). */
    int efd;                       /* eventfd: wakes from non-shard threads */
    uint64_t efd_val;
    bds_op efd_op, efd_cancel;
    int sfd;                       /* signalfd (SIGTERM, SIGINT), shard 0 only */
    struct signalfd_siginfo sinfo;
    bds_op sig_op, sig_cancel;
    bds_shard *bell_to[BDS_SHARDS_MAX]; /* bells to send at the end of this tick */
    uint64_t bell_mask[BDS_SHARDS_MAX / 64];
    uint32_t bell_n;
    bool bell_stopped;

    _Atomic bool stop_req; /* release by bds__shard_request_stop, acquire in bds__shard_run */
    _Atomic uint32_t wakers; /* threads inside bds__shard_wake / request_stop (see bds__shard_wake) */
    bool stopping;
    bool pending;          /* the last tick left work: the next one must not block */
    bool blocked;          /* inside the blocking enter of shard_wait (for bds__shard_dump) */
    bds_shard_stats stats;
};

bds_status bds__shard_bufs_init(bds_shard *s, char *err, size_t err_len);
void bds__shard_bufs_deinit(bds_shard *s);
void bds__shard_bufs_publish(bds_shard *s);

bds_status bds__bell_init(bds_shard *s, char *err, size_t err_len);
void bds__bell_deinit(bds_shard *s);
void bds__bell_on_cqe(bds_shard *s, uint64_t ud, int32_t res);
void bds__bell_flush(bds_shard *s);
bool bds__bell_pending(const bds_shard *s);
/* Cancels the shard's own reads (eventfd, signalfd); true once none is in flight. */
bool bds__bell_stop(bds_shard *s);
/* Ops of bell.c holding a slot (they never keep a stopping shard alive). */
uint32_t bds__bell_internal_inflight(const bds_shard *s);

#endif
