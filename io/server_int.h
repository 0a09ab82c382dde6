/* server_int.h — the gRPC server's internal objects, shared by io/server.c, server_conn.c,
 * server_stream.c and server_msg.c. */
#ifndef BDS_IO_SERVER_INT_H
#define BDS_IO_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "bidistream/server.h"
#include "pipeline_int.h"
#include "group.h"
#include "list.h"
#include "log.h"
#include "tls.h"
#include "mem.h"
#include "grpc_compress.h"
#include "h2_server.h"
#include "net.h"
#include "shard_pipeline.h"

#define BDS_SERVER_METHODS_MAX 64

#define SRV_INTERCEPTORS_MAX 8u
#define SRV_STOP_HOOKS_MAX 8u
#define SRV_DESCRIPTOR_SETS_MAX 16u

/* Live counters of one method on one shard: written by that shard only
 * (relaxed atomic load and store, no locked add: ctr_add), summed over
 * shards by bds_server_get_stats and the metrics scrape. */
typedef struct srv_method_counters {
    _Atomic uint64_t streams_opened, streams_refused, streams_ended, streams_ok;
    _Atomic uint64_t messages_in, messages_out, bytes_in, bytes_out;
    bds_counters core;        /* the pipeline's (bds_session_config.counters), this shard's */
} srv_method_counters;

/* Abuse verdicts that end an HTTP/2 connection, by kind (the metrics'
 * bidistream_http2_abuse_verdicts_total{kind}). */
enum {
    SRV_VERDICT_GLITCH_FLOOD,   /* the glitch bucket overflowed: GOAWAY(ENHANCE_YOUR_CALM) */
    SRV_VERDICT_TOO_MANY_PINGS, /* the client PING policy's third strike */
    SRV_VERDICT_HPACK_BOMB,     /* a header block over the decoded bound */
    SRV_VERDICT_NGHTTP2_FLOOD,  /* nghttp2's own flood limits (NGHTTP2_ERR_FLOODED) */
    SRV_VERDICT_PROTOCOL_ERROR, /* any other fatal nghttp2 error */
    SRV_VERDICTS
};

/* The HTTP/2 counters of one shard's connections (proto's bds__h2_stats):
 * each connection's are added as they move (bds__srv_conn_stats_fold, at
 * each flush and at close), so live connections count too. */
typedef struct srv_h2_totals {
    _Atomic uint64_t streams_started, streams_refused, streams_failed, streams_reset;
    _Atomic uint64_t glitches, resets_sent, pings_sent, ping_acks, windows_capped;
    _Atomic uint64_t goaways[BDS_H2_GOAWAY_CODES];
    _Atomic uint64_t verdicts[SRV_VERDICTS];
} srv_h2_totals;

/* Live counters of one shard (bds_server_get_stats, metrics), written by it only. */
typedef struct srv_shard_counters {
    _Atomic uint64_t connections_live, connections_accepted, streams_live, message_bytes, msgs_posted;
    srv_h2_totals h2;
} srv_shard_counters;

/* ---- metrics histograms (server_metrics.c; docs/OPERATIONS.md) ------------------------------------
 * Per shard and method, written by that shard only (ctr_add), summed by the
 * scrape. Buckets are gRFC A66's (proto/prom_text.h), one count per bucket
 * (not cumulative: the renderer sums them) and the last above every bound. */
#define SRV_GRPC_CODES 17u
#define SRV_LAT_BUCKETS 42u   /* bds__prom_latency_bounds.n + 1 */
#define SRV_SIZE_BUCKETS 15u  /* bds__prom_size_bounds.n + 1 */
#define SRV_OTHER_METHOD BDS_SERVER_METHODS_MAX /* grpc_method="other": refused before a method was bound */

typedef struct srv_hist_lat {
    _Atomic uint64_t sum;     /* ns */
    _Atomic uint64_t b[SRV_LAT_BUCKETS];
} srv_hist_lat;
typedef struct srv_hist_size {
    _Atomic uint64_t sum;     /* bytes */
    _Atomic uint64_t b[SRV_SIZE_BUCKETS];
} srv_hist_size;
/* A66's per-call histograms of one (shard, method, status). */
typedef struct srv_call_hist {
    srv_hist_lat duration;
    srv_hist_size sent, rcvd;
} srv_call_hist;
typedef struct srv_method_hist {
    srv_hist_lat msg_latency; /* from the tick that admitted a message to its call's end (bds__home_on_done) */
    /* Made by the shard at the first call that ends with that status
     * (release), read by the scrape (acquire); freed with the server. */
    _Atomic(srv_call_hist *) by_status[SRV_GRPC_CODES];
    _Atomic uint64_t started; /* SRV_OTHER_METHOD's calls (a method's are opened + refused) */
} srv_method_hist;

typedef struct srv_method {
    bds_method m;
    char *path;
    bds_options opts;
    const bds_interceptor *icpt[SRV_INTERCEPTORS_MAX]; /* the method's own */
    uint32_t n_icpt;
} srv_method;

typedef struct srv_shard srv_shard;
typedef struct srv_conn srv_conn;
typedef struct bds_stream srv_call; /* one stream: the server.h handle */

/* The bytes a connection makes its shard hold (srv_msg buffers, and its
 * HTTP/2 session's memory through the session's allocator), for the memory
 * budgets. Outlives the connection while messages still point at it. */
typedef struct srv_acct {
    srv_shard *sh;
    srv_conn *conn;           /* NULL once the connection is gone */
    uint64_t bytes;           /* counted against the budgets */
    uint64_t h2;              /* its HTTP/2 session's memory (bytes counts
                                 what exceeds the fixed part) */
    uint32_t refs;            /* messages accounted here, + 1 while conn lives */
} srv_acct;

struct bds_server {
    bds_server_config cfg;
    char *listen;
    srv_method methods[BDS_SERVER_METHODS_MAX];
    const char *paths[BDS_SERVER_METHODS_MAX];
    bds__grpc_methods table;
    uint32_t n_methods;
    bds_logger log;           /* cfg.log and log_level */
    bds_interceptor icpt[SRV_INTERCEPTORS_MAX]; /* the server's (bds_server_add_interceptor) */
    uint32_t n_icpt;
    struct {
        uint8_t *bytes;
        size_t len;
    } desc[SRV_DESCRIPTOR_SETS_MAX]; /* bds_server_add_descriptors, for reflection */
    uint32_t n_desc;
    /* TLS: the config's paths (copied), and the context new connections use,
     * swapped by bds_server_reload_tls under tls_lock (bds__srv_on_accept
     * makes its connection's session under it too). */
    char *tls_paths[3];
    pthread_mutex_t tls_lock;
    bds__tls_ctx *tls;
    /* Live counters, from run until destroy: [shard][method] and [shard]. */
    srv_method_counters *mc;
    srv_shard_counters *shc;
    /* Metrics (cfg.metrics_listen set): [shard][method, then SRV_OTHER_METHOD]. */
    bool metrics_on;
    char *metrics_listen;
    srv_method_hist *mh;
    int metrics_fd;           /* bound and listening from run until shard 0 takes it; -1 */
    _Atomic uint16_t metrics_port;
    uint64_t run_ns;          /* when the shards started (loop utilisation) */
    struct srv_scrape *scrape; /* the scrape's own state (shard 0's) */
    struct bds_metrics_http *mhttp; /* the endpoint, on shard 0 */
    uint32_t n_shards;
    bds_group *group;
    bds_shard_pipelines *pipes;
    srv_shard *shards[BDS_SHARDS_MAX];
    _Atomic int serving;      /* 1 until the stop begins (bds_server_serving) */
    struct {
        bds_server_on_stop_fn fn;
        void *ctx;
    } stop_hooks[SRV_STOP_HOOKS_MAX]; /* bds_server_on_stop */
    uint32_t n_stop_hooks;
    _Atomic bool stop_told;   /* a shard ran the stop hooks */
    bool running;
    _Atomic uint16_t port;    /* the bound port (for listen ":0"); read by any thread */
    /* bds_server_stop from any thread: the group it may stop (NULL before the
     * shards run and once the first shard exits), the stop calls in progress
     * (a shard exiting waits for them: the group's shards stay alive under
     * them), and a stop that came before the group was published. seq_cst
     * all three: stop's increment-then-load against exit's clear-then-load. */
    _Atomic(bds_group *) live_group;
    _Atomic uint32_t stoppers;
    _Atomic bool stop_requested;
    _Atomic bool abandoned;   /* a shard hard-stopped with work left (bds_server_run) */
    _Atomic uint32_t shards_busy; /* shards not quiesced yet: every shard stays until it is 0 */
    _Atomic uint64_t msg_bytes_hw; /* the most message memory one shard held (tests) */
};

/* Who still holds a srv_msg (srv_msg.holds); it is freed when the last lets go. */
#define SRV_MSG_IN 0x1u    /* an inbound payload: parked, or the pipeline's until ops->release */
#define SRV_MSG_OUT 0x2u   /* a reply: the Sender's or blocked, until written or dropped */
#define SRV_MSG_H2 0x4u    /* queued on its HTTP/2 stream by reference, until on_msg_release */
#define SRV_MSG_HEAP 0xffu /* srv_msg.cls: from malloc, not from a shard's pool */

/* Stream operations that keep their place among replies (srv_msg.ctl). */
#define SRV_CTL_HEADER 1u     /* data: name NUL value (wire form), len in total */
#define SRV_CTL_TRAILER 2u
#define SRV_CTL_FINISH 3u     /* hint: the status; data: the message, NUL-terminated */

/* Size classes of the shard's message pools (header included); larger
 * messages, and replies made off their home shard, come from malloc. */
#define SRV_MSG_CLASSES 5u
#define SRV_MSG_CLASS_MIN 256u /* doubling up to 4 KiB */

/* A server-side message buffer: inbound payloads and outbound replies. Made
 * and freed on its home shard (the connection's), from that shard's pools,
 * except replies made on another thread (malloc; still freed on the home
 * shard, since replies travel home). An echo reply is the request's own
 * buffer: the embedded reply goes out with SRV_MSG_OUT added to its holds. */
typedef struct srv_msg {
    bds_reply reply;          /* used when the buffer is a reply */
    bds__h2_msg h2;           /* its link in the HTTP/2 stream's queue (SRV_MSG_H2) */
    struct srv_msg *next;     /* parked / blocked FIFO link */
    srv_shard *home;          /* the shard that made it or, for a reply made
                                 elsewhere, took it (NULL: neither yet) */
    srv_acct *acct;           /* the connection it is accounted to, or NULL */
    uint32_t len, wire;
    uint8_t cls;              /* pool class in home's pools, or SRV_MSG_HEAP */
    uint8_t holds;            /* SRV_MSG_IN | SRV_MSG_OUT | SRV_MSG_H2 */
    bool reply_used;          /* the embedded reply was handed out (echo) */
    uint8_t ctl;              /* SRV_CTL_*: a stream operation riding the reply
                                 order (data holds its arguments), or 0 */
    bds__task task;           /* carries it to its stream's home (stream_post) */
    srv_call *target;         /* ... that stream, referenced while in transit */
    uint32_t hint;            /* SRV_CTL_FINISH: the status */
    bool compressed;          /* an inbound payload that came compressed */
    uint8_t compress;         /* a reply: the bds_compression asked for it */
    struct srv_msg *z;        /* a reply sent compressed: its compressed bytes (held
                                 SRV_MSG_OUT by it, let go when it is freed) */
    void (*on_free)(void *ctx); /* run when it is freed: a paced reply's (bds_call_reply_paced) */
    void *on_free_ctx;
    const uint8_t *key;
    uint32_t key_len;
    uint64_t admit_ns;        /* an inbound message's admission (its tick's clock), for its latency (with metrics) */
    uint8_t prefix[5];        /* room for the gRPC prefix, right before data (bds__h2_send_framed) */
    uint8_t data[];
} srv_msg;

struct srv_shard {
    bds_server *srv;
    bds_shard *shard;
    bds_shard_pipeline *pipe;
    bds_net *net;
    bds_listener *listener;
    bds__dlist conns;         /* its connections (srv_conn.shard_link) */
    bds__dlist dirty;         /* connections with output due (bds__srv_conn_kick; dirty_link) */
    bds__dlist admit_ready;   /* calls whose sessions have room again, their parked
                                 messages admitted after the pipeline runs
                                 (srv_call.ready_link; bds__srv_shard_admit_ready) */
    bds_flusher flusher;      /* flushes `dirty` at the end of a tick */
    bds__pool msg_pools[SRV_MSG_CLASSES]; /* srv_msg buffers, by size class */
    bds__grpc_codec codec;    /* zlib for its connections: requests decompressed by
                                 their HTTP/2 sessions, replies compressed (call_compress) */
    uint64_t msg_bytes;       /* memory of the srv_msg buffers made here and alive */
    uint64_t msg_bytes_hw;    /* its high-water mark */
    uint64_t h2_bytes;        /* its connections' HTTP/2 memory past the fixed part */
    bool over;                /* at shard_bytes_max: no connection is read */
    bool budget_due;          /* a budget crossed a mark: bds__srv_shard_budget_pass */
    srv_call *victim;         /* failed for the budget, not yet gone */
    bool ended;               /* a stream ended since it went over */
    uint64_t stop_deadline_ns; /* hard close of what is left after the grace */
    bds_timer stop_timer;
    bool stopping;
    bool conns_closed;        /* the stop timer closed what the grace period left */
    bool stop_expired;        /* ... and then the hard stop's time came */
    bool quiesced;            /* stopping, and nothing of ours is left (counted in shards_busy) */
    bool abandoned;           /* hard stop: handlers still running are left behind */
    uint64_t jitter_rng;      /* splitmix64 state: the connection age's jitter */
};

uint64_t bds__server_now(void);
/* A stream (bds_stream: server.h's handle is this struct). Home-shard state
 * unless marked: what any thread may read is fixed at open (method, peer,
 * deadline, request metadata) or atomic. */
struct bds_stream {
    srv_shard *home;          /* the connection's shard: stream operations run there */
    _Atomic uint32_t refs;    /* bds_stream_ref's, + 1 while the server holds it */
    _Atomic bool ended;       /* finished or over: what would send is refused (any thread) */
    _Atomic uint32_t sent;    /* replies and pushes made (any thread): headers go with the first */
    _Atomic uint32_t md_n[2], md_bytes[2]; /* response headers [0], trailers [1] set */
    _Atomic uint8_t compress; /* bds_compression for replies made now (any thread) */
    uint64_t start_ns, deadline_ns;
    uint8_t *md;              /* request metadata: entries of name length (2 bytes),
                                 value length (4), name and NUL, value (-bin decoded) */
    uint32_t md_len, md_count;
    void *user;
    void (*user_free)(void *user); /* runs when the stream's memory goes */
    char peer[64];
    /* The rest is the home shard's. */
    srv_conn *conn;           /* NULL once the connection is gone */
    int32_t stream;
    const srv_method *m;
    bds_session *session;
    bds__dlist conn_link;     /* on its connection's calls, or lingering, list */
    srv_msg *parked, *parked_tail;   /* received, not admitted: window not credited */
    srv_msg *blocked, *blocked_tail; /* replies waiting for the stream's queue to drain */
    bds__dlist wait_link;     /* on the connection's waiting list while blocked is not
                                 empty (finish_pending implies it) */
    bds__dlist ready_link;    /* on its shard's admit_ready list (op_inbound_ready) */
    bool h2_done;             /* the HTTP/2 stream is over (finished, reset or failed) */
    bool half_close_pending;  /* END_STREAM arrived behind parked messages */
    /* Messages admitted to the pipeline and not released yet. A call whose
     * stream is over while some are out (a handler still running) lingers,
     * counted by its connection (srv_conn.n_lingering), until the last one
     * comes back. */
    uint32_t in_pipeline;
    bool lingering;
    uint64_t parked_bytes;    /* payload bytes of `parked` */
    /* While the session had no room a message parked, the stream's window was
     * capped at window_cap (0: not capped): see call_cap_window. */
    uint32_t window_cap;
    uint64_t unparked_bytes;  /* wire bytes admitted straight in since the cap */
    bool partial_withheld;    /* HTTP/2 held back a message in progress at its window
                                 (call_may_credit_partial said no): drain credits it */
    bool resp_enc_known;      /* resp_enc is the HTTP/2 stream's response encoding */
    uint8_t resp_enc;         /* bds__grpc_enc, fixed by the first reply */
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out; /* for interceptors' on_end */
    bool half_close_wait;     /* on_half_close is due once in_pipeline is 0 */
    bool opened;              /* the interceptors' on_open passed: on_end is owed */
    uint32_t icpt_passed;     /* interceptors of the chain whose on_open passed (they get on_end) */
    bool end_told;            /* on_end ran */
    bool finish_requested;    /* bds_stream_finish reached home: later replies are dropped */
    /* The session ended cleanly while replies still waited here: the trailers
     * go out once they have left (the session is released meanwhile). */
    bool finish_pending;
    bds_status fin_status;
    char fin_msg[128];
};

/* The most memory in message buffers (inbound payloads, parked messages,
 * replies made at home) that one shard held at once, since the server ran.
 * Thread: any. For tests. */
uint64_t bds__server_msg_bytes_hw(const bds_server *srv);
/* The srv_shard of the calling shard thread. */
srv_shard *bds__server_shard_self(void);

/* Any thread, for a stall report: every running shard (bds__group_dump), with
 * its pipe and connection counts. Safe while bds_server_run runs. */
void bds__server_dump(bds_server *srv, FILE *f);


/* ---- shared by the server's files ------------------------------------------------------------
 * server.c (lifecycle: configuration, run and stop, shard hooks, stats),
 * server_conn.c (connections: accept, input, output, timers),
 * server_stream.c (streams: HTTP/2 events, sessions, the stream API),
 * server_msg.c (message buffers and memory budgets). */

#define REPLY_HIGH_WATER (256u * 1024u) /* unsent bytes per stream before replies wait here */
#define RUN_BUDGET 512u
/* After the grace period: connections still open close after CLOSE_AFTER;
 * work still running ABANDON_AFTER later is abandoned (bds_server_run
 * returns). The second margin leaves a loaded machine time to unwind what
 * the closes cancel (the cancels cross shards), so only handlers that ignore
 * their cancel are left behind. */
#define STOP_CLOSE_AFTER_NS 1000000000ULL
/* An idle connection first gets a GOAWAY notice (last stream 2^31 - 1: a
 * stream the client opens meanwhile is still served), then this much later
 * the final GOAWAY with the real last stream. Closing at once raced clients
 * that opened a stream just then: their request met a closed socket
 * (grpcio: UNAVAILABLE "Broken pipe", 1 in 2 full test runs under load).
 * grpc-go does the same with a PING round trip instead of a fixed wait. */
#define IDLE_GOAWAY_NOTICE_NS 1000000000ULL
/* ... and after the final one, the connection reads on (and drops what it
 * reads) until the peer closes, at most this long: closing a socket with a
 * request still unread sends RST, which can destroy the GOAWAY in the
 * client's buffer that tells it the request was not run (so it may retry). */
#define IDLE_LINGER_NS 1000000000ULL
#define STOP_ABANDON_AFTER_NS 4000000000ULL
/* Past the age's grace period, the streams still open end UNAVAILABLE and the
 * connection closes once their trailers are out, or this much later at the
 * latest (a peer that does not read them). */
#define AGE_CLOSE_AFTER_NS 1000000000ULL

/* Output buffers a connection may have in its socket's queue besides its
 * HTTP/2 session's own: 3 x 256 KiB in flight keeps a loopback socket busy,
 * and they count in the connection's budget (srv_conn.alloc). */
#define OUT_SPARES_MAX 3

struct srv_conn {
    srv_shard *sh;
    char peer[64];            /* "ip:port" of the client (bds_stream_peer) */
    bds_conn *c;
    bds__h2_session *h2;
    bds__tls *tls;            /* TLS connections: the session between socket and h2 */
    bool tls_checked;         /* its handshake ended and ALPN chose h2 */
    srv_acct *acct;           /* its bytes, for the budgets */
    bds__palloc alloc;        /* its HTTP/2 session's memory, counted in acct */
    /* Large output goes to the socket by reference: the HTTP/2 session's
     * output buffer is handed over whole and a spare takes its place. The
     * spares not in the socket's queue, from alloc; at most OUT_SPARES_MAX
     * made per connection (conn_write_buffer). */
    uint8_t *out_spares[OUT_SPARES_MAX];
    uint8_t n_spares;         /* in out_spares */
    uint8_t spares_made;
    bool over;                /* at conn_bytes_max: not read */
    bool credit_held;         /* not read: its windows are not credited */
    srv_call *victim;         /* failed for its budget, not yet gone */
    bool ended;               /* a stream ended since it went over */
    bds__dlist calls;         /* its open streams (srv_call.conn_link) */
    bds__dlist waiting;       /* calls with blocked replies (srv_call.wait_link) */
    bds__dlist lingering;     /* streams over, handlers still running (bds__srv_call_free; conn_link) */
    uint32_t n_lingering;     /* bounded by max_lingering_streams */
    bds__dlist shard_link;    /* on its shard's conns */
    bds__dlist dirty_link;    /* on its shard's dirty list, while `dirty` */
    bool dirty;               /* output to produce: flushed by bds__srv_shard_flush_dirty
                                 (still set while the flush runs, so that it does not
                                 requeue itself) */
    bool h2_failed;           /* the session failed on input: no more reading; its
                                 last output (ending in a GOAWAY) is flushed, then
                                 the connection closes */
    bool closing;
    /* Connection timers (conn_timer_fired): one heap entry per connection,
     * armed for the earliest of its deadlines and re-armed when it fires. */
    bds_timer timer;
    uint64_t born_ns;         /* accepted */
    uint64_t last_recv_ns;    /* bytes last arrived (keepalive) */
    uint64_t idle_since_ns;   /* the last call ended (0 while calls are open) */
    uint64_t ping_sent_ns;    /* our keepalive PING left (while outstanding) */
    uint64_t sent_mark;       /* bds__conn_sent_bytes at sent_mark_ns: send progress */
    uint64_t sent_mark_ns;
    /* Idle or aged: a GOAWAY notice, one second later the final GOAWAY,
     * then closed once its streams are over (the final GOAWAY out). */
    uint64_t notice_ns;       /* the GOAWAY notice left then (0: not yet) */
    bool goaway_final;        /* the final GOAWAY sent, closing once it is written */
    uint64_t linger_until_ns; /* ... and done: read on until the peer closes or this */
    uint64_t age_due_ns;      /* max connection age, jitter included: the notice (0: off) */
    bool aged;                /* the notice was the age's: its grace applies */
    uint64_t age_grace_ns;    /* aged: streams still open then end UNAVAILABLE (0: never) */
    uint64_t age_close_ns;    /* ... and the connection closes then at the latest (0: not yet) */
    bds__h2_stats h2_folded;  /* its HTTP/2 counters already added to its shard's (bds__srv_conn_stats_fold) */
    bool verdict_told;        /* its abuse verdict was counted */
};

/* The srv_shard of the shard whose tick runs on this thread, or NULL. */
extern _Thread_local srv_shard *bds__srv_self;

/* At its own or its shard's memory budget: the connection is not read. */
static inline bool conn_blocked(const srv_conn *sc) { return sc->sh->over || sc->over; }

/* One writer per counter (its shard): a relaxed load and store, no locked
 * add, and any thread reads each value whole. */
static inline void ctr_add(_Atomic uint64_t *c, uint64_t n) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline void ctr_sub(_Atomic uint64_t *c, uint64_t n) { ctr_add(c, (uint64_t)0 - n); }

static inline srv_method_counters *call_mc(const srv_call *call) {
    const bds_server *srv = call->home->srv;
    uint32_t mi = (uint32_t)(call->m - srv->methods);
    return &srv->mc[bds__shard_id(call->home->shard) * BDS_SERVER_METHODS_MAX + mi];
}

static inline srv_shard_counters *shard_ctr(const srv_shard *sh) { return &sh->srv->shc[bds__shard_id(sh->shard)]; }

/* server_metrics.c */
/* A call ended (or was refused) with gRPC code `code`: A66's histograms. */
void bds__srv_metrics_call_end(srv_shard *sh, uint32_t method, uint32_t code, uint64_t duration_ns, uint64_t bytes_in,
                               uint64_t bytes_out);
/* A message admitted at admit_ns is done. */
void bds__srv_metrics_msg_done(srv_shard *sh, uint32_t method, uint64_t admit_ns);
/* Adds what sc's HTTP/2 counters moved since the last fold to its shard's. */
void bds__srv_conn_stats_fold(srv_conn *sc);
/* Create, with metrics: the histograms and the scrape's state. */
bds_status bds__srv_metrics_alloc(bds_server *srv);
/* Shard 0's start and stop of the endpoint. */
bds_status bds__srv_metrics_start(srv_shard *sh);
void bds__srv_metrics_stop(srv_shard *sh);
/* Frees what the metrics hold (destroy). */
void bds__srv_metrics_free(bds_server *srv);

/* server_msg.c */
void *bds__srv_acct_calloc(size_t nmemb, size_t size, void *ctx);
void bds__srv_acct_free(void *p, void *ctx);
void *bds__srv_acct_malloc(size_t size, void *ctx);
void *bds__srv_acct_realloc(void *p, size_t size, void *ctx);
void bds__srv_acct_unref(srv_acct *a);
void bds__srv_msg_attach(srv_msg *r, srv_call *call);
srv_msg *bds__srv_msg_new(srv_shard *sh, srv_acct *a, size_t len, uint8_t holds);
void bds__srv_msg_pools_deinit(srv_shard *sh);
void bds__srv_msg_pools_init(srv_shard *sh);
void bds__srv_msg_unhold(srv_msg *m, uint8_t hold);
void bds__srv_shard_budget_due(srv_shard *sh);
void bds__srv_shard_budget_pass(srv_shard *sh);
/* server_conn.c */
void bds__srv_conn_flush(srv_conn *sc);
void bds__srv_conn_kick(srv_conn *sc);
void bds__srv_on_accept(bds_listener *l, bds_conn *c, void *ctx);
void bds__srv_shard_flush_dirty(srv_shard *sh);
void bds__srv_shard_flusher(bds_flusher *f);
/* server_stream.c */
void bds__srv_call_drain_parked(srv_call *call);
bool bds__srv_shard_admit_ready(srv_shard *sh);
void bds__srv_call_free(srv_call *call);
void bds__srv_call_move_blocked(srv_call *call);
void bds__srv_call_unlink(srv_call *call);
extern const bds__h2_callbacks bds__srv_h2_cbs;
void bds__srv_stop_hooks_run(bds_server *srv);

#endif
