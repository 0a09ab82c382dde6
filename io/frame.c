/* frame.c — 5-byte-prefixed framing over a bds_conn, and the echo handler.
 *
 * Deframing follows DESIGN §3.4: read boundaries are unrelated to message
 * boundaries. A message wholly inside one read is handed over in place (no
 * copy); a split one is gathered into a buffer sized to its length (bounded
 * by msg_bytes_max). The echo handler writes each message back with its
 * prefix (copies: the read's bytes die with the provided buffer), pauses the
 * connection's recv while its queued output is above out_high_bytes and
 * resumes on drain, which is the transport's backpressure. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "frame.h"

void bds__deframer_init(bds_deframer *d, uint32_t msg_bytes_max) {
    memset(d, 0, sizeof(*d));
    d->max = msg_bytes_max;
}

void bds__deframer_deinit(bds_deframer *d) {
    free(d->buf);
    d->buf = NULL;
}

bool bds__deframer_partial(const bds_deframer *d) { return d->hdr_n > 0; }

void bds__frame_prefix(uint8_t out[BDS_FRAME_PREFIX], uint8_t flags, uint32_t len) {
    out[0] = flags;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

static uint32_t frame_len(const uint8_t *h) {
    return (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | (uint32_t)h[4];
}

/* Gathers a split message; returns bytes consumed, or SIZE_MAX on error. */
static size_t deframer_gather(bds_deframer *d, const uint8_t *p, size_t len, bds_on_msg_fn fn, void *ctx) {
    size_t used = 0;
    if (d->hdr_n < BDS_FRAME_PREFIX) {
        size_t k = BDS_FRAME_PREFIX - d->hdr_n < len ? BDS_FRAME_PREFIX - d->hdr_n : len;
        memcpy(d->hdr + d->hdr_n, p, k);
        d->hdr_n += (uint8_t)k;
        used = k;
        if (d->hdr_n < BDS_FRAME_PREFIX)
            return used;
        d->want = frame_len(d->hdr);
        d->have = 0;
        if (d->want > d->max)
            return SIZE_MAX;
        if (d->want && !(d->buf = malloc(d->want)))
            return SIZE_MAX - 1;
    }
    size_t k = d->want - d->have < len - used ? d->want - d->have : len - used;
    if (k)
        memcpy(d->buf + d->have, p + used, k);
    d->have += (uint32_t)k;
    used += k;
    if (d->have == d->want) {
        fn(d->hdr[0], d->buf, d->want, ctx);
        free(d->buf);
        d->buf = NULL;
        d->hdr_n = 0;
    }
    return used;
}

bds_status bds__deframer_feed(bds_deframer *d, const uint8_t *bytes, size_t len, bds_on_msg_fn fn, void *ctx) {
    while (len) {
        if (d->hdr_n == 0 && len >= BDS_FRAME_PREFIX) {
            uint32_t n = frame_len(bytes);
            if (n > d->max)
                return BDS_RESOURCE_EXHAUSTED;
            if (len - BDS_FRAME_PREFIX >= n) { /* fast path: the whole message is here */
                fn(bytes[0], bytes + BDS_FRAME_PREFIX, n, ctx);
                bytes += BDS_FRAME_PREFIX + n;
                len -= BDS_FRAME_PREFIX + n;
                continue;
            }
        }
        size_t used = deframer_gather(d, bytes, len, fn, ctx);
        if (used == SIZE_MAX)
            return BDS_RESOURCE_EXHAUSTED;
        if (used == SIZE_MAX - 1)
            return BDS_E_NOMEM;
        bytes += used;
        len -= used;
    }
    return BDS_OK;
}

/* ---- echo ------------------------------------------------------------------------ */

typedef struct echo_conn {
    bds_frame_echo *e;
    bds_conn *c;
    bds_deframer d;
    bool failed;
} echo_conn;

void bds__frame_echo_init(bds_frame_echo *e, bds_net *net) {
    memset(e, 0, sizeof(*e));
    e->net = net;
    e->msg_bytes_max = 4u << 20;
    e->out_high_bytes = 1u << 20;
}

uint64_t bds__frame_echo_open(const bds_frame_echo *e) { return e->conns_accepted - e->conns_closed; }

static void echo_on_msg(uint8_t flags, const uint8_t *payload, uint32_t len, void *ctx) {
    echo_conn *ec = ctx;
    uint8_t pfx[BDS_FRAME_PREFIX];
    if (ec->failed)
        return;
    bds__frame_prefix(pfx, flags, len);
    if (bds__conn_write(ec->c, pfx, sizeof(pfx)) != BDS_OK ||
        (len && bds__conn_write(ec->c, payload, len) != BDS_OK)) {
        /* The segment queue is full despite the pause: drop the connection
         * rather than the message (a hole in an echo stream is worse). */
        ec->failed = true;
        bds__conn_close(ec->c, ENOBUFS);
        return;
    }
    ec->e->msgs++;
    ec->e->payload_bytes += len;
}

static void echo_on_data(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx) {
    echo_conn *ec = ctx;
    bds_status st = bds__deframer_feed(&ec->d, bytes, len, echo_on_msg, ec);
    if (st != BDS_OK) {
        ec->e->protocol_errors++;
        bds__conn_close(c, st == BDS_E_NOMEM ? ENOMEM : EMSGSIZE);
        return;
    }
    if (bds__conn_out_bytes(c) > ec->e->out_high_bytes) {
        ec->e->pauses++;
        bds__conn_recv_pause(c);
    }
}

static void echo_on_drain(bds_conn *c, void *ctx) {
    (void)ctx;
    bds__conn_recv_resume(c);
}

static void echo_on_close(bds_conn *c, int err, void *ctx) {
    echo_conn *ec = ctx;
    (void)c;
    if (bds__deframer_partial(&ec->d))
        ec->e->closed_with_partial++;
    ec->e->conns_closed++;
    ec->e->last_close_err = err;
    bds__deframer_deinit(&ec->d);
    free(ec);
}

static const bds_conn_callbacks echo_cb = {
    .on_data = echo_on_data, .on_drain = echo_on_drain, .on_close = echo_on_close};

static echo_conn *echo_conn_new(bds_frame_echo *e) {
    echo_conn *ec = calloc(1, sizeof(*ec));
    if (ec) {
        ec->e = e;
        bds__deframer_init(&ec->d, e->msg_bytes_max);
    }
    return ec;
}

void bds__frame_echo_on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    bds_frame_echo *e = ctx;
    (void)l;
    echo_conn *ec = echo_conn_new(e);
    if (!ec) {
        bds__conn_close(c, ENOMEM);
        return;
    }
    ec->c = c;
    e->conns_accepted++;
    bds__conn_set_callbacks(c, &echo_cb, ec);
}

bds_conn *bds__frame_echo_adopt(bds_frame_echo *e, int fd) {
    echo_conn *ec = echo_conn_new(e);
    if (!ec)
        return NULL;
    ec->c = bds__conn_adopt(e->net, fd, &echo_cb, ec);
    if (!ec->c) {
        bds__deframer_deinit(&ec->d);
        free(ec);
        return NULL;
    }
    e->conns_accepted++;
    return ec->c;
}
