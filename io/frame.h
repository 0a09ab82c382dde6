/* frame.h — the runtime's own test transport: gRPC's 5-byte length prefix
 * (1 flag byte + 4-byte big-endian length, PROTOCOL-HTTP2 Length-Prefixed-
 * Message) straight over TCP, with an echo handler (internal).
 *
 * It exercises the runtime without HTTP/2: the tests and bench_io_echo drive
 * it, and the pipeline binding may drive it too. Shard: owner only. */
#ifndef BDS_IO_FRAME_H
#define BDS_IO_FRAME_H

#include <stdint.h>

#include "net.h"

#define BDS_FRAME_PREFIX 5u

/* ---- deframer ---------------------------------------------------------------- */

typedef void (*bds_on_msg_fn)(uint8_t flags, const uint8_t *payload, uint32_t len, void *ctx);

typedef struct bds_deframer {
    uint8_t hdr[BDS_FRAME_PREFIX];
    uint8_t hdr_n;     /* prefix bytes gathered so far */
    uint32_t want;     /* payload length of the message being gathered */
    uint32_t have;     /* payload bytes gathered into buf */
    uint8_t *buf;      /* only for a message split across reads */
    uint32_t max;      /* messages longer than this are refused */
} bds_deframer;

void bds__deframer_init(bds_deframer *d, uint32_t msg_bytes_max);
void bds__deframer_deinit(bds_deframer *d);
/* Calls fn for every complete message in bytes (a message wholly inside bytes
 * is passed in place; a split one is gathered first). Returns BDS_OK,
 * BDS_RESOURCE_EXHAUSTED (a length above max) or BDS_E_NOMEM. */
bds_status bds__deframer_feed(bds_deframer *d, const uint8_t *bytes, size_t len, bds_on_msg_fn fn, void *ctx);
/* True when part of a message is pending. */
bool bds__deframer_partial(const bds_deframer *d);
/* Writes the 5-byte prefix. */
void bds__frame_prefix(uint8_t out[BDS_FRAME_PREFIX], uint8_t flags, uint32_t len);

/* ---- echo server ------------------------------------------------------------- */

typedef struct bds_frame_echo {
    bds_net *net;
    uint32_t msg_bytes_max;  /* default 4 MiB */
    size_t out_high_bytes;   /* pause a connection's recv above this much queued output; default 1 MiB */
    /* counters */
    uint64_t msgs, payload_bytes, conns_accepted, conns_closed, pauses;
    uint64_t closed_with_partial; /* EOF or reset in the middle of a message */
    uint64_t protocol_errors;     /* oversized length */
    int last_close_err;
} bds_frame_echo;

void bds__frame_echo_init(bds_frame_echo *e, bds_net *net);
/* A bds_on_accept_fn: ctx is the bds_frame_echo. */
void bds__frame_echo_on_accept(bds_listener *l, bds_conn *c, void *ctx);
/* Serves an already connected socket (socketpair, client side). */
bds_conn *bds__frame_echo_adopt(bds_frame_echo *e, int fd);
/* Connections of this echo still open. */
uint64_t bds__frame_echo_open(const bds_frame_echo *e);

#endif
