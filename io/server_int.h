/* server_int.h — the gRPC server's internal objects (io/server.c, io/services.c). */
#ifndef BDS_IO_SERVER_INT_H
#define BDS_IO_SERVER_INT_H

#include <stdatomic.h>

#include "bidistream/server.h"
#include "group.h"
#include "h2_server.h"
#include "net.h"
#include "pipe.h"

#define BDS_SERVER_METHODS_MAX 64

typedef struct srv_method {
    bds_method m;
    char *path;
    bds_options opts;
    bool end_marker;          /* the handler also gets an empty message flagged `end`
                                 after the client's last one (it answers at half-close) */
} srv_method;

typedef struct srv_shard srv_shard;
typedef struct srv_conn srv_conn;
typedef struct srv_call srv_call;

struct bds_server {
    bds_server_config cfg;
    char *listen;
    srv_method methods[BDS_SERVER_METHODS_MAX];
    const char *paths[BDS_SERVER_METHODS_MAX];
    bds__grpc_methods table;
    uint32_t n_methods;
    uint32_t n_shards;
    bds_group *group;
    bds_pipe_group *pipes;
    srv_shard *shards[BDS_SHARDS_MAX];
    _Atomic int serving;      /* health: 1 SERVING until shutdown begins */
    bool running;
    uint16_t port;            /* the bound port (for listen ":0") */
};

/* A server-side message buffer: inbound payloads and outbound replies. */
typedef struct srv_msg {
    bds_reply reply;          /* used when the buffer is a reply */
    struct srv_msg *next;     /* parked / blocked FIFO link */
    uint32_t len, wire;
    bool end;                 /* the end-of-stream marker (srv_method.end_marker) */
    const uint8_t *key;
    uint32_t key_len;
    uint8_t data[];
} srv_msg;

/* Health.Watch calls waiting for the serving status to change (home == exec:
 * Watch is FIFO, so it runs on its connection's shard). */
typedef struct srv_watch {
    bds_call *call;
    struct srv_watch *next;
} srv_watch;

struct srv_shard {
    bds_server *srv;
    bds_shard *shard;
    bds_pipe *pipe;
    bds_net *net;
    bds_listener *listener;
    srv_conn *conns;
    srv_watch *watches;
    uint64_t stop_deadline_ns; /* hard close of what is left after the grace */
    bds_timer stop_timer;
    bool stopping;
};

uint64_t bds__server_now(void);
struct srv_call {
    srv_conn *conn;           /* NULL once the connection is gone */
    int32_t stream;
    const srv_method *m;
    bds_session *session;
    srv_call *prev, *next;    /* the connection's calls */
    srv_msg *parked, *parked_tail;   /* received, not admitted: window not credited */
    srv_msg *blocked, *blocked_tail; /* replies waiting for the stream's queue to drain */
    bool h2_done;             /* the HTTP/2 stream is over (finished, reset or failed) */
    bool half_close_pending;  /* END_STREAM arrived behind parked messages */
    uint64_t aggregate;       /* per-stream handler state (interop StreamingInputCall) */
    /* The session ended cleanly while replies still waited here: the trailers
     * go out once they have left (the session is released meanwhile). */
    bool finish_pending;
    bds_status fin_status;
    char fin_msg[128];
};

/* Built-in services (services.c). */
bds_status bds__services_register(bds_server *srv);
/* Health: tell the shard's Watch calls that the server stopped serving. */
void bds__services_on_stop(srv_shard *sh);
/* grpc.testing.TestService (interop_service.c). */
bds_status bds__interop_register(bds_server *srv);
/* Adds a method whose handler also sees the end-of-stream marker. */
bds_status bds__server_add_method_ex(bds_server *srv, const bds_method *m, bool end_marker);
/* The srv_shard of the calling shard thread. */
srv_shard *bds__server_shard_self(void);

#endif
