/* echo.h — the runtime's own test transport: gRPC Length-Prefixed-Messages
 * (1 flag byte + 4-byte big-endian length, PROTOCOL-HTTP2) straight over TCP,
 * with an echo handler (internal). Framing and deframing are proto/'s
 * (grpc_frame.h): a client writes its prefixes with bds__grpc_frame_prefix.
 *
 * It exercises the runtime without HTTP/2: tests/io and bench_io_echo drive
 * it. Shard: owner only. */
#ifndef BDS_IO_ECHO_H
#define BDS_IO_ECHO_H

#include <stdint.h>

#include "grpc_frame.h"
#include "net.h"

/* ---- echo server ------------------------------------------------------------- */

typedef struct bds_echo {
    bds_net *net;
    uint32_t msg_bytes_max;  /* default 4 MiB */
    size_t out_high_bytes;   /* pause a connection's recv above this much queued output; default 1 MiB */
    /* counters */
    uint64_t msgs, payload_bytes, conns_accepted, conns_closed, pauses;
    uint64_t closed_with_partial; /* EOF or reset in the middle of a message */
    uint64_t protocol_errors;     /* a length over msg_bytes_max, a flag byte other than 0 or 1 */
    int last_close_err;
} bds_echo;

void bds__echo_init(bds_echo *e, bds_net *net);
/* A bds_on_accept_fn: ctx is the bds_echo. */
void bds__echo_on_accept(bds_listener *l, bds_conn *c, void *ctx);
/* Serves an already connected socket (socketpair, client side). */
bds_conn *bds__echo_adopt(bds_echo *e, int fd);
/* Connections of this echo still open. */
uint64_t bds__echo_open(const bds_echo *e);

#endif
