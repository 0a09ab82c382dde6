/* net.h — listeners and TCP connections on a shard (internal).
 *
 * One bds_net per shard holds its listeners, connections and output chunks.
 * A listener owns a listening socket (SO_REUSEPORT: one per shard on the same
 * port, the kernel spreads connections) with a multishot accept. A connection
 * has one multishot recv on the shard's provided-buffer ring, at most one
 * sendmsg in flight gathering up to 64 iovecs from its output queue (short
 * sends resume with the remainder), TCP_NODELAY, and closes in order: cancel
 * recv (and a pending send), wait for their final CQEs, IORING_OP_CLOSE, then
 * on_close, then free. Connections never move between shards.
 *
 * Descriptors. Past conns_max open connections a new one is closed as soon as
 * it is accepted. Each listener keeps a spare descriptor: when accept fails
 * with EMFILE/ENFILE it closes the spare, accepts the newest connection,
 * closes it and reopens the spare, so the client learns at once and the
 * listener keeps serving (instead of retrying forever with the connection
 * stuck in the backlog). Both log one line per episode (a warning to cfg.log).
 *
 * Callbacks never run inside the call that caused them: on_data runs from the
 * tick's completion phase, on_close from the close CQE. Shard: owner only. */
#ifndef BDS_IO_NET_H
#define BDS_IO_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shard.h"

typedef struct bds_net bds_net;
typedef struct bds_conn bds_conn;
typedef struct bds_listener bds_listener;

typedef struct bds_net_config {
    uint32_t out_segs;    /* output queue segments per connection; default 256      */
    uint32_t chunk_bytes; /* bytes per output copy chunk; default 16 KiB            */
    int sndbuf;           /* SO_SNDBUF for accepted sockets; 0 = kernel default     */
    int rcvbuf;           /* SO_RCVBUF for accepted sockets; 0 = kernel default     */
    uint32_t conns_max;   /* open connections; accepted ones past it are closed at
                             once; 0 = no limit                                     */
    const struct bds_logger *log; /* one warning when shedding starts; NULL: none */
} bds_net_config;

void bds__net_config_default(bds_net_config *cfg);

typedef struct bds_conn_callbacks {
    /* Bytes received; valid only during the call (the buffer goes back to the
     * ring right after). May write, pause, or close the connection. */
    void (*on_data)(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx);
    /* The output queue became empty (every queued byte is in the kernel). Optional. */
    void (*on_drain)(bds_conn *c, void *ctx);
    /* A bds__conn_write_ref segment is no longer referenced (sent, or dropped
     * at close). Optional unless write_ref is used. */
    void (*on_release)(bds_conn *c, void *tag, void *ctx);
    /* The socket is closed and every op has completed; err is 0 (EOF or a local
     * close without error) or the errno that ended it. c is freed on return. */
    void (*on_close)(bds_conn *c, int err, void *ctx);
} bds_conn_callbacks;

/* ---- the per-shard network state ---------------------------------------- */

typedef struct bds_net_stats {
    uint64_t accepted, closed, accept_errors;
    uint64_t shed_conns_max;  /* closed at accept: conns_max reached                  */
    uint64_t shed_fd_limit;   /* accepted on the spare descriptor and closed (EMFILE) */
    uint64_t recv_cqes, recv_bytes, recv_rearms, recv_enobufs;
    uint64_t sends, send_bytes, short_sends;
    uint64_t chunks_live, chunks_hwm;
} bds_net_stats;

/* NULL on allocation failure. */
bds_net *bds__net_create(bds_shard *s, const bds_net_config *cfg);
/* Asserts that every listener and connection is gone (bds__net_live == 0). */
void bds__net_destroy(bds_net *n);
/* Closes every listener and connection (for the shard's on_stop hook). */
void bds__net_close_all(bds_net *n);
/* Listeners and connections not yet freed. */
uint32_t bds__net_live(const bds_net *n);
/* Connections not yet freed (accepted or adopted; closing ones still hold an fd). */
uint32_t bds__net_conns(const bds_net *n);
const bds_net_stats *bds__net_stats(const bds_net *n);
bds_shard *bds__net_shard(const bds_net *n);

/* ---- listeners ------------------------------------------------------------ */

/* A listening TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to addr.
 * Any thread (create one per shard on the same port). Returns the fd or -errno. */
int bds__listen_socket(const struct sockaddr *addr, socklen_t addr_len, int backlog);
/* The port a socket is bound to (host order), or 0. */
uint16_t bds__socket_port(int fd);
/* Raises the soft RLIMIT_NOFILE to the hard limit (once, at start: every
 * connection costs a descriptor). Returns the soft limit now in force, or 0 if
 * it cannot be read. */
uint64_t bds__fd_limit_raise(void);

/* The new connection is not receiving yet: set its callbacks here (or close
 * it); its recv is armed when this returns. */
typedef void (*bds_on_accept_fn)(bds_listener *l, bds_conn *c, void *ctx);

/* Takes ownership of listen_fd and arms a multishot accept on it. */
bds_status bds__listener_start(bds_net *n, int listen_fd, bds_on_accept_fn fn, void *ctx, bds_listener **out);
/* Cancels the accept and closes the socket; freed once the accept's final CQE
 * has arrived. Connections already accepted stay. */
void bds__listener_close(bds_listener *l);

/* ---- connections ----------------------------------------------------------- */

/* Adopts a connected socket (e.g. a client's) and starts receiving. */
bds_conn *bds__conn_adopt(bds_net *n, int fd, const bds_conn_callbacks *cb, void *ctx);
void bds__conn_set_callbacks(bds_conn *c, const bds_conn_callbacks *cb, void *ctx);
void *bds__conn_ctx(const bds_conn *c);
int bds__conn_fd(const bds_conn *c);
bds_net *bds__conn_net(const bds_conn *c);

/* Copies len bytes into the output queue; they go out with this tick's flush.
 * Returns BDS_OK, BDS_E_AGAIN (the segment queue is full: nothing was queued)
 * or BDS_E_CLOSED-like BDS_UNAVAILABLE (the connection is closing). */
bds_status bds__conn_write(bds_conn *c, const void *bytes, size_t len);
/* Queues len bytes by reference; on_release(tag) runs once they are no longer
 * needed. Same returns as bds__conn_write. */
bds_status bds__conn_write_ref(bds_conn *c, const void *base, size_t len, void *tag);
/* Bytes queued and not yet acknowledged by a send CQE. */
size_t bds__conn_out_bytes(const bds_conn *c);
/* Bytes the kernel has taken so far (send progress, for a stall timer). */
uint64_t bds__conn_sent_bytes(const bds_conn *c);
/* Stops receiving (cancels the multishot recv; CQEs already produced still
 * deliver their data) / starts again. */
void bds__conn_recv_pause(bds_conn *c);
void bds__conn_recv_resume(bds_conn *c);
/* Orderly close: queued output is dropped, pending recv and send cancelled,
 * then the fd is closed and on_close(err) runs. Idempotent (first err wins). */
void bds__conn_close(bds_conn *c, int err);
/* Stops receiving and closes once every queued byte is sent. */
void bds__conn_close_after_flush(bds_conn *c);

#endif
