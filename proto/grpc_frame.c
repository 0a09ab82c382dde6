/* grpc_frame.c — gRPC Length-Prefixed-Message framer and streaming deframer.
 *
 * Design: the deframer is a two-phase state machine per message. Phase one
 * collects the 5-byte prefix (straight from the chunk when all five bytes are
 * there, else byte by byte into _hdr across chunks) and validates it before any
 * body byte is kept: flag must be 0, or 1 when compression was negotiated
 * (gRPC PROTOCOL-HTTP2: "Compressed-Flag ... 1 ... MUST be accompanied by a
 * grpc-encoding"), and the length must not exceed _msg_bytes_max. Phase two
 * hands the body out in place when it lies wholly in the rest of the chunk,
 * else copies it into _buf, which grows (doubling, up to that message's
 * length) as its bytes arrive.
 *
 * Invariants: _hdr_have <= 5; _msg_have <= _msg_len <= _msg_bytes_max;
 * _msg_have > 0 implies _hdr_have == 5 and _buf holds _msg_have bytes
 * (_msg_have <= _buf_cap);
 * _failed is sticky.
 *
 * Memory: _buf comes from the caller's bds__palloc and is kept between
 * messages up to DEFRAME_KEEP_BYTES; a larger one is released once the message
 * it held has been handed out (at the next call), so a single 4 MiB message does
 * not pin 4 MiB for the stream's lifetime.
 *
 * Elsewhere: what to do with an ERROR (trailers, RST) is h2_server.c's job. */
#include "grpc_frame.h"

#include <string.h>

#include "base.h"

#define DEFRAME_KEEP_BYTES (64u * 1024u)
#define DEFRAME_MIN_BYTES 4096u /* the first buffer of a split message */

/* A zero-length message still gets a non-NULL body pointer. */
static const uint8_t deframe_empty[1] = {0};

void bds__grpc_frame_prefix(uint8_t out[BDS_GRPC_PREFIX_BYTES], bool compressed, uint32_t len) {
    BDS_ASSERT(out != NULL);
    out[0] = compressed ? 1 : 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

size_t bds__grpc_frame_write(uint8_t *out, size_t cap, const void *msg, uint32_t len) {
    BDS_ASSERT(out != NULL);
    BDS_ASSERT(msg != NULL || len == 0);
    if (cap < (size_t)len + BDS_GRPC_PREFIX_BYTES) return 0;
    bds__grpc_frame_prefix(out, false, len);
    if (len > 0) memcpy(out + BDS_GRPC_PREFIX_BYTES, msg, len);
    return (size_t)len + BDS_GRPC_PREFIX_BYTES;
}

void bds__grpc_deframer_init(bds__grpc_deframer *d, uint32_t msg_bytes_max,
                             bool compression_allowed, const bds__palloc *alloc) {
    BDS_ASSERT(d != NULL);
    memset(d, 0, sizeof *d);
    d->_alloc = alloc != NULL ? alloc : bds__palloc_libc();
    d->_msg_bytes_max = msg_bytes_max != 0 ? msg_bytes_max : BDS_GRPC_MSG_BYTES_MAX_DEFAULT;
    d->_compression_allowed = compression_allowed;
    d->_err_status = BDS_OK;
}

void bds__grpc_deframer_deinit(bds__grpc_deframer *d) {
    BDS_ASSERT(d != NULL);
    BDS_ASSERT(d->_alloc != NULL);
    if (d->_buf != NULL) d->_alloc->free_fn(d->_buf, d->_alloc->ctx);
    d->_buf = NULL;
    d->_buf_cap = 0;
}

/* Marks |d| failed and describes the failure in |ev|. */
static void deframe_fail(bds__grpc_deframer *d, bds__grpc_ev *ev, bds_status status,
                         const char *reason, uint32_t len) {
    BDS_ASSERT(status != BDS_OK);
    BDS_ASSERT(reason != NULL);
    d->_failed = true;
    d->_err_status = status;
    d->_err_reason = reason;
    d->_err_len = len;
    ev->kind = BDS__GRPC_EV_ERROR;
    ev->status = status;
    ev->reason = reason;
    ev->len = len;
}

/* The message is complete: describe it and reset for the next prefix. */
static void deframe_deliver(bds__grpc_deframer *d, bds__grpc_ev *ev, const uint8_t *body,
                            bool copied) {
    BDS_ASSERT(d->_hdr_have == BDS_GRPC_PREFIX_BYTES);
    BDS_ASSERT(body != NULL);
    ev->kind = BDS__GRPC_EV_MESSAGE;
    ev->data = body;
    ev->len = d->_msg_len;
    ev->compressed = d->_hdr[0] == 1;
    ev->copied = copied;
    d->_hdr_have = 0;
    d->_msg_have = 0;
    d->_msg_len = 0;
}

/* Validates a complete prefix. Returns false (and fails |d|) when it is bad. */
static bool deframe_check_prefix(bds__grpc_deframer *d, bds__grpc_ev *ev) {
    BDS_ASSERT(d->_hdr_have == BDS_GRPC_PREFIX_BYTES);
    const uint8_t *h = d->_hdr;
    uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    if (h[0] > 1) {
        deframe_fail(d, ev, BDS_INTERNAL, "invalid gRPC message compressed-flag", len);
        return false;
    }
    if (h[0] == 1 && !d->_compression_allowed) {
        deframe_fail(d, ev, BDS_INTERNAL,
                     "compressed message received without grpc-encoding", len);
        return false;
    }
    if (len > d->_msg_bytes_max) {
        deframe_fail(d, ev, BDS_RESOURCE_EXHAUSTED,
                     "received message larger than max", len);
        return false;
    }
    d->_msg_len = len;
    d->_msg_have = 0;
    return true;
}

/* Makes room in _buf for |n| more body bytes. The buffer grows geometrically
 * as bytes arrive, never past the message, so memory follows what the client
 * sent (at most twice that, or DEFRAME_MIN_BYTES), not what its prefix
 * announced: six bytes in, 4 MiB allocated was a cheap way to pin memory.
 * Before the first body byte nothing needs to be carried over. */
static bool deframe_grow(bds__grpc_deframer *d, size_t n) {
    size_t need = (size_t)d->_msg_have + n;
    BDS_ASSERT(need <= d->_msg_len);
    if (need <= d->_buf_cap) return true;
    size_t cap = d->_buf_cap < DEFRAME_MIN_BYTES ? DEFRAME_MIN_BYTES : (size_t)d->_buf_cap * 2;
    if (cap < need) cap = need;
    if (cap > d->_msg_len) cap = d->_msg_len;
    uint8_t *p;
    if (d->_msg_have == 0) {
        d->_alloc->free_fn(d->_buf, d->_alloc->ctx);
        d->_buf = NULL;
        d->_buf_cap = 0;
        p = d->_alloc->malloc_fn(cap, d->_alloc->ctx);
    } else {
        p = d->_alloc->realloc_fn(d->_buf, cap, d->_alloc->ctx); /* NULL: _buf still ours */
    }
    if (p == NULL) return false;
    d->_buf = p;
    d->_buf_cap = (uint32_t)cap;
    return true;
}

/* The common case, at a message boundary: an uncompressed message whose
 * prefix and body both lie in |in|. Handed out in place without touching the
 * deframer's state; everything else (a cut prefix or body, the compressed
 * flag, an error, an oversized buffer to release) takes the general path. */
static bool deframe_whole(const bds__grpc_deframer *d, const uint8_t *in, size_t len,
                          bds__grpc_ev *ev, size_t *used) {
    if (d->_hdr_have != 0 || d->_failed || len < BDS_GRPC_PREFIX_BYTES || in[0] != 0 ||
        d->_buf_cap > DEFRAME_KEEP_BYTES)
        return false;
    uint32_t mlen = (uint32_t)in[1] << 24 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 8 | in[4];
    if (mlen > d->_msg_bytes_max || len - BDS_GRPC_PREFIX_BYTES < mlen) return false;
    *ev = (bds__grpc_ev){.kind = BDS__GRPC_EV_MESSAGE,
                         .data = mlen > 0 ? in + BDS_GRPC_PREFIX_BYTES : deframe_empty,
                         .len = mlen,
                         .status = BDS_OK};
    *used = BDS_GRPC_PREFIX_BYTES + (size_t)mlen;
    return true;
}

size_t bds__grpc_deframe(bds__grpc_deframer *d, const uint8_t *in, size_t len, bds__grpc_ev *ev) {
    BDS_ASSERT(d != NULL && ev != NULL);
    BDS_ASSERT(in != NULL && len > 0);
    size_t whole;
    if (deframe_whole(d, in, len, ev, &whole)) return whole;
    memset(ev, 0, sizeof *ev);
    ev->status = BDS_OK;
    if (d->_failed) {
        deframe_fail(d, ev, d->_err_status, d->_err_reason, d->_err_len);
        return 0;
    }
    /* The last copied message has been handed out; release an oversized buffer. */
    if (d->_msg_have == 0 && d->_buf_cap > DEFRAME_KEEP_BYTES) {
        d->_alloc->free_fn(d->_buf, d->_alloc->ctx);
        d->_buf = NULL;
        d->_buf_cap = 0;
    }

    size_t used = 0;
    if (d->_hdr_have < BDS_GRPC_PREFIX_BYTES) {
        size_t want = BDS_GRPC_PREFIX_BYTES - d->_hdr_have;
        size_t n = len < want ? len : want;
        memcpy(d->_hdr + d->_hdr_have, in, n);
        d->_hdr_have = (uint8_t)(d->_hdr_have + n);
        used = n;
        if (d->_hdr_have < BDS_GRPC_PREFIX_BYTES) return used;
        if (!deframe_check_prefix(d, ev)) return used;
        if (d->_msg_len == 0) {
            deframe_deliver(d, ev, deframe_empty, false);
            return used;
        }
    }

    size_t avail = len - used;
    size_t missing = (size_t)d->_msg_len - d->_msg_have;
    if (d->_msg_have == 0 && avail >= missing) {
        /* Fast path: the whole body is in this chunk; hand it out in place. */
        deframe_deliver(d, ev, in + used, false);
        return used + missing;
    }
    size_t n = avail < missing ? avail : missing;
    if (n == 0) return used; /* the chunk ended with the prefix */
    if (!deframe_grow(d, n)) {
        deframe_fail(d, ev, BDS_E_NOMEM, "out of memory buffering a message", d->_msg_len);
        return used;
    }
    memcpy(d->_buf + d->_msg_have, in + used, n);
    d->_msg_have += (uint32_t)n;
    used += n;
    BDS_ASSERT(d->_msg_have <= d->_msg_len);
    if (d->_msg_have == d->_msg_len) deframe_deliver(d, ev, d->_buf, true);
    return used;
}

bds_status bds__grpc_deframer_finish(const bds__grpc_deframer *d) {
    BDS_ASSERT(d != NULL);
    BDS_ASSERT(d->_hdr_have <= BDS_GRPC_PREFIX_BYTES);
    if (d->_failed) return d->_err_status;
    return d->_hdr_have == 0 ? BDS_OK : BDS_INTERNAL;
}

bool bds__grpc_deframer_partial(const bds__grpc_deframer *d, uint32_t *msg_len, uint32_t *have) {
    BDS_ASSERT(d != NULL);
    BDS_ASSERT(d->_msg_have <= d->_msg_len || d->_hdr_have < BDS_GRPC_PREFIX_BYTES);
    if (d->_failed || d->_hdr_have < BDS_GRPC_PREFIX_BYTES) return false;
    if (msg_len != NULL) *msg_len = d->_msg_len;
    if (have != NULL) *have = d->_msg_have;
    return true;
}
