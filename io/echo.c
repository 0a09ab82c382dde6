/* echo.c — the runtime's echo transport: gRPC Length-Prefixed-Messages
 * straight over a bds_conn, without HTTP/2.
 *
 * Deframing is proto/'s (bds__grpc_deframe, the one the server's streams
 * use): read boundaries are unrelated to message boundaries, a message wholly
 * inside one read is handed over in place, a split one is gathered. The echo
 * handler writes each message back with its prefix (copies: the read's bytes
 * die with the provided buffer), pauses the connection's recv while its
 * queued output is above out_high_bytes and resumes on drain, which is the
 * transport's backpressure. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "echo.h"
#include "grpc_frame.h"

/* ---- echo ------------------------------------------------------------------------ */

typedef struct echo_conn {
    bds_echo *e;
    bds_conn *c;
    bds__grpc_deframer d;
    bool failed;
} echo_conn;

void bds__echo_init(bds_echo *e, bds_net *net) {
    memset(e, 0, sizeof(*e));
    e->net = net;
    e->msg_bytes_max = 4u << 20;
    e->out_high_bytes = 1u << 20;
}

uint64_t bds__echo_open(const bds_echo *e) { return e->conns_accepted - e->conns_closed; }

static void echo_on_msg(echo_conn *ec, const bds__grpc_ev *msg) {
    const uint8_t *payload = msg->data;
    uint32_t len = msg->len;
    uint8_t pfx[BDS_GRPC_PREFIX_BYTES];
    bds__grpc_frame_prefix(pfx, msg->compressed, len);
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
    while (len > 0 && !ec->failed) {
        bds__grpc_ev ev;
        size_t used = bds__grpc_deframe(&ec->d, bytes, len, &ev);
        bytes += used;
        len -= used;
        if (ev.kind == BDS__GRPC_EV_MESSAGE) {
            echo_on_msg(ec, &ev);
        } else if (ev.kind == BDS__GRPC_EV_ERROR) {
            ec->failed = true;
            ec->e->protocol_errors++;
            bds__conn_close(c, ev.status == BDS_RESOURCE_EXHAUSTED ? EMSGSIZE
                               : ev.status == BDS_E_NOMEM      ? ENOMEM
                                                               : EPROTO);
            return;
        }
    }
    if (ec->failed)
        return;
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
    if (!ec->failed && bds__grpc_deframer_finish(&ec->d) != BDS_OK)
        ec->e->closed_with_partial++;
    ec->e->conns_closed++;
    ec->e->last_close_err = err;
    bds__grpc_deframer_deinit(&ec->d);
    free(ec);
}

static const bds_conn_callbacks echo_cb = {
    .on_data = echo_on_data, .on_drain = echo_on_drain, .on_close = echo_on_close};

static echo_conn *echo_conn_new(bds_echo *e) {
    echo_conn *ec = calloc(1, sizeof(*ec));
    if (ec) {
        ec->e = e;
        /* Any flag byte gRPC allows (0 or 1) is echoed back as it came. */
        bds__grpc_deframer_init(&ec->d, e->msg_bytes_max, true, NULL);
    }
    return ec;
}

void bds__echo_on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    bds_echo *e = ctx;
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

bds_conn *bds__echo_adopt(bds_echo *e, int fd) {
    echo_conn *ec = echo_conn_new(e);
    if (!ec)
        return NULL;
    ec->c = bds__conn_adopt(e->net, fd, &echo_cb, ec);
    if (!ec->c) {
        bds__grpc_deframer_deinit(&ec->d);
        free(ec);
        return NULL;
    }
    e->conns_accepted++;
    return ec->c;
}
