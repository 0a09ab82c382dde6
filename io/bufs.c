/* bufs.c — the shard's provided-buffer ring (group BDS_BUF_GROUP).
 *
 * liburing 2.3 has no io_uring_setup_buf_ring: the ring array is an anonymous
 * page-aligned mapping registered with io_uring_register_buf_ring, and the
 * buffers one page-aligned block of bufs x buf_bytes. A multishot recv picks a
 * buffer per CQE; its owner hands the bid back with bds__shard_buf_recycle as
 * soon as the bytes are consumed (same tick), and the tick makes every recycled
 * buffer visible with a single io_uring_buf_ring_advance before it submits, so
 * a recv re-armed after -ENOBUFS in this tick already sees them.
 * Invariant: every bid is either owned by the kernel ring or by exactly one
 * CQE being processed; nothing else holds one across ticks. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "base.h"
#include "shard_int.h"

static size_t bufs_page_round(size_t n) { return (n + 4095u) & ~(size_t)4095u; }

bds_status bds__shard_bufs_init(bds_shard *s, char *err, size_t err_len) {
    uint32_t n = s->cfg.bufs;
    if (n == 0)
        return BDS_OK;
    s->br_bytes = bufs_page_round(n * sizeof(struct io_uring_buf));
    void *br = mmap(NULL, s->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    size_t mem_bytes = bufs_page_round((size_t)n * s->cfg.buf_bytes);
    void *mem = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED || mem == MAP_FAILED) {
        if (br != MAP_FAILED)
            munmap(br, s->br_bytes);
        if (mem != MAP_FAILED)
            munmap(mem, mem_bytes);
        return BDS_E_NOMEM;
    }
    s->br = br;
    s->buf_mem = mem;
    io_uring_buf_ring_init(s->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)s->br;
    reg.ring_entries = n;
    reg.bgid = BDS_BUF_GROUP;
    int rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
    if (rc < 0) {
        if (err && err_len)
            snprintf(err, err_len, "bidistream: io_uring_register_buf_ring: %s", strerror(-rc));
        return rc == -ENOMEM ? BDS_E_NOMEM : BDS_UNIMPLEMENTED;
    }
    s->br_registered = true;
    for (uint32_t i = 0; i < n; i++)
        bds__shard_buf_recycle(s, (uint16_t)i);
    bds__shard_bufs_publish(s);
    return BDS_OK;
}

void bds__shard_bufs_deinit(bds_shard *s) {
    if (s->br_registered)
        (void)io_uring_unregister_buf_ring(&s->ring, BDS_BUF_GROUP);
    s->br_registered = false;
    if (s->br)
        munmap(s->br, s->br_bytes);
    if (s->buf_mem)
        munmap(s->buf_mem, bufs_page_round((size_t)s->cfg.bufs * s->cfg.buf_bytes));
    s->br = NULL;
    s->buf_mem = NULL;
}

void *bds__shard_buf(bds_shard *s, uint16_t bid) {
    BDS_ASSERT(bid < s->cfg.bufs);
    return s->buf_mem + (size_t)bid * s->cfg.buf_bytes;
}

void bds__shard_buf_recycle(bds_shard *s, uint16_t bid) {
    BDS_ASSERT(bid < s->cfg.bufs && s->br_added < s->cfg.bufs);
    io_uring_buf_ring_add(s->br, bds__shard_buf(s, bid), s->cfg.buf_bytes, bid,
                          io_uring_buf_ring_mask(s->cfg.bufs), (int)s->br_added);
    s->br_added++;
}

void bds__shard_bufs_publish(bds_shard *s) {
    if (!s->br_added)
        return;
    /* io_uring_buf_ring_advance is a release store of the tail: it publishes the
     * entries written by io_uring_buf_ring_add to the kernel's acquire read. */
    io_uring_buf_ring_advance(s->br, (int)s->br_added);
    s->br_added = 0;
}
