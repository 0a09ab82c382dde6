/* bidistream/server.h — run a gRPC server from your own main().
 *
 * A server is a set of shards, one thread each (the thread that calls
 * bds_server_run() is shard 0), each with its own io_uring ring, listener
 * (SO_REUSEPORT), connections and sessions. Register bidi-streaming methods
 * before running: each inbound message goes through the pipeline of
 * bidistream/pipeline.h — ordering by the key the method's resolver finds in
 * the request, backpressure, the handler on the key's shard, the Sender.
 *
 * Built in (docs/SERVICE.md describes them): bidistream.v1.Pipeline/Process
 * and grpc.health.v1.Health (Check, Watch); grpc.testing.TestService, the
 * gRPC interop service, only when bds_server_config.interop_service asks for
 * it (off by default: a test service has no place on a production server).
 *
 * Handlers run on a shard's thread, inside its event loop: a handler that
 * blocks (sleeps, waits on a lock or on I/O) stalls every connection and
 * every key of that shard until it returns. Long work finishes later: return
 * without bds_call_done() and finish from a timer or another thread.
 *
 * Threads, in short: create, add_method and destroy from one thread, outside
 * bds_server_run; bds_server_stop and bds_server_port from any thread; the
 * call functions from any thread while the call is the handler's (until
 * bds_call_done: pipeline.h says what a misuse does). */
#ifndef BIDISTREAM_SERVER_H
#define BIDISTREAM_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/options.h"
#include "bidistream/pipeline.h"
#include "bidistream/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bds_server bds_server;

/* A message compression of gRPC (its grpc-encoding), for replies. Requests
 * in identity, deflate or gzip are always taken, and reach handlers
 * decompressed (bds_call_request, bds_call_request_compressed). */
typedef enum bds_compression {
    BDS_COMPRESSION_NONE = 0,       /* identity: sent as it is */
    BDS_COMPRESSION_DEFLATE = 1,    /* "deflate": the zlib format (RFC 1950) */
    BDS_COMPRESSION_GZIP = 2,       /* "gzip" (RFC 1952) */
} bds_compression;

typedef struct bds_server_config {
    uint32_t size;                  /* = sizeof(bds_server_config) */
    const char *listen;             /* "host:port"; default "127.0.0.1:50051" */
    uint32_t shards;                /* 0 = one per CPU in the affinity mask */
    uint32_t max_message_bytes;     /* default 4 MiB; larger -> RESOURCE_EXHAUSTED; a
                                       compressed request is held to it twice: as sent,
                                       and decompressed (a zip bomb ends its stream
                                       RESOURCE_EXHAUSTED after at most this much output) */
    /* Replies of every stream compressed with this when its client takes it
     * (its grpc-accept-encoding, or its request's grpc-encoding), else sent
     * as they are; a stream can change it (bds_stream_set_compression).
     * Replies under 64 bytes, and those that would not shrink, go as they
     * are. Compression runs on the stream's home shard, in its event loop: it
     * costs that shard CPU per reply byte (docs/SERVICE.md). Default NONE. */
    bds_compression compress_responses;
    uint32_t max_concurrent_streams;/* per connection, default 1024 */
    /* Per connection, default 128: streams that are over (reset, cancelled,
     * failed) while their handlers still run. At the bound, new streams on
     * that connection are refused with RESOURCE_EXHAUSTED until some of that
     * work ends; the built-in handlers end theirs as soon as their stream is
     * gone, so only handlers that finish late count for long. */
    uint32_t max_lingering_streams;
    uint32_t max_header_list_bytes; /* default 16 KiB */
    uint32_t stream_window_bytes;   /* HTTP/2 initial stream window, default 64 KiB */
    /* Grown from stream_window_bytes to at most this, per connection, as the
     * bandwidth-delay product measured with PINGs asks (grpc-go's BDP
     * estimator): the stream windows and the connection's. Default 4 MiB; 0 or
     * stream_window_bytes = fixed windows. Never past an eighth of
     * conn_bytes_max or shard_bytes_max (when set): what a window lets a
     * client send before the server stops crediting is memory those budgets
     * must still be able to refuse. */
    uint32_t stream_window_max_bytes;
    uint32_t idle_spin_us;          /* spin this long before sleeping; 0 = never (default) */
    bool interop_service;           /* also serve grpc.testing.TestService; default false */
    /* Also serve grpc.reflection.v1 and v1alpha ServerReflection: the
     * services the server serves, and the files of the descriptor sets added
     * with bds_server_add_descriptors (the built-in services' own come with
     * it). Default false: a service list is information an operator may not
     * want to give every client. */
    bool reflection;
    /* TLS (OpenSSL 3, on the shards: no thread of its own): with
     * tls_cert_file set the server speaks TLS 1.2+ only, with ALPN h2 (a
     * client that does not offer h2 is refused: the TLS alert
     * no_application_protocol, or a close after the handshake when it
     * offered no ALPN). tls_cert_file: a PEM certificate chain, leaf first;
     * tls_key_file: its PEM private key; tls_client_ca_file (optional): PEM
     * CAs that a client certificate must chain to, and then every client
     * must present one (mTLS). The paths are copied; the files are read by
     * bds_server_create and again by bds_server_reload_tls (SIGHUP while
     * the server runs). NULL (default): plain HTTP/2 (h2c). */
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_client_ca_file;
    /* Per StreamingOutputCallRequest of the interop service: responses asked
     * for (default 1000) and their total bytes (default 64 MiB); past either
     * the call ends RESOURCE_EXHAUSTED before any response is made. */
    uint32_t interop_responses_max;
    uint32_t interop_response_bytes_max;
    bds_options options;            /* pipeline options for methods that bring none */
    int log_level;                  /* BDS_LOG_*: lines up to it are written; default INFO */
    /* Connection timers (0 = off). Each closes what a silent, dead or stuck
     * peer would otherwise hold for ever; the README says what each sends. */
    uint64_t handshake_timeout_ns;  /* client preface + SETTINGS within this after accept;
                                       else closed. Default 10 s */
    uint64_t idle_timeout_ns;       /* no open stream for this long: GOAWAY(NO_ERROR), then
                                       closed (grpc-go MaxConnectionIdle). Default 5 min */
    uint64_t keepalive_time_ns;     /* nothing received for this long: the server PINGs.
                                       Default 2 min */
    uint64_t keepalive_timeout_ns;  /* that PING unanswered this long: closed. Default 20 s */
    uint64_t ping_min_interval_ns;  /* client PINGs closer than this (with no reply DATA or
                                       HEADERS between) are strikes; the third strike is
                                       GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"), as
                                       grpc-go's EnforcementPolicy.MinTime. Default 5 min */
    bool ping_without_streams;      /* permit client keepalive PINGs while no stream is open
                                       (else those closer than 2 h are strikes). Default false */
    uint64_t send_timeout_ns;       /* output queued and not one byte written for this long:
                                       closed. Default 30 s */
    uint32_t tcp_user_timeout_ms;   /* TCP_USER_TIMEOUT of accepted sockets: sent data
                                       unacknowledged this long ends the connection in the
                                       kernel. Default 30 000 */
    /* Connection age, as grpc-go's MaxConnectionAge and MaxConnectionAgeGrace:
     * a connection this old (±10% at random, so that connections made
     * together do not all reconnect together) gets a GOAWAY(NO_ERROR) notice,
     * one second later the final GOAWAY(NO_ERROR); its open streams run on,
     * and it closes once they are over. A stream still open
     * max_connection_age_grace_ns after the notice ends UNAVAILABLE ("max
     * connection age: grace period over"; its handlers are cancelled) and the
     * connection closes (at the latest one second later). Clients reconnect
     * for their next streams: long-lived streams spread over servers added
     * since. 0 = off (both default); grace 0 = streams may run for ever. */
    uint64_t max_connection_age_ns;
    uint64_t max_connection_age_grace_ns;
    /* Memory budgets, in bytes of message buffers (payloads admitted or
     * parked, replies) and HTTP/2 session memory (nghttp2, partial messages)
     * past a connection's fixed ~300 KiB. At a connection's budget (default 256 MiB) it is no longer
     * read: its window and its streams' windows are no longer credited, new
     * streams are refused (RST_STREAM REFUSED_STREAM), and its largest stream
     * ends RESOURCE_EXHAUSTED. At a shard's budget (default 1 GiB) the same
     * holds for every connection of the shard. Reading resumes below 7/8 of
     * the budget. 0 = no limit. */
    uint32_t conn_bytes_max;
    uint32_t shard_bytes_max;
    uint32_t max_connections;       /* open connections per server, default 10,000, split
                                       evenly across shards (each enforces its share); a
                                       connection past it is closed at once; 0 = no limit */
    /* Share the port with other listening sockets of the same user
     * (SO_REUSEPORT: the kernel then splits new connections between the
     * processes). Default false: bds_server_run refuses a port something
     * already listens on (BDS_UNAVAILABLE, "address already in use"), so a
     * second server never silently takes part of the first one's traffic. */
    bool reuse_port;
    /* Optional: called once by bds_server_run, on its thread, when every
     * shard listens (other shards may already accept connections), with the
     * bound port: a program learns a "host:0" port without polling
     * bds_server_port. It runs before shard 0 serves: keep it short. server
     * is the one running; ctx is on_ready_ctx, the caller's. */
    void (*on_ready)(bds_server *server, uint16_t port, void *ctx);
    void *on_ready_ctx;
    /* Optional: where the server's log lines go (one line per event, no
     * newline, level a BDS_LOG_* at or below log_level). Each message is the
     * event in key=value form (logfmt), without its level:
     * msg="<what happened>" followed by its fields, e.g.
     *   msg="closing a connection" peer=127.0.0.1:5000 reason="no send progress" after_s=30.000
     * NULL: stderr, as "level=<error|warn|info|debug> <message>". Called from
     * every shard's thread (and bds_server_run's): it must be thread-safe
     * and must not block long. message is valid during the call; ctx is
     * log_ctx, the caller's. */
    void (*log)(int level, const char *message, void *ctx);
    void *log_ctx;
    /* Optional: "host:port" of a Prometheus endpoint (GET /metrics over
     * HTTP/1.1, answered "text/plain; version=0.0.4"), on its own listener
     * served by shard 0: gRFC A66's call metrics, the pipeline's, the
     * shards' and the connections' (docs/OPERATIONS.md lists each). Port 0
     * picks a free one (bds_server_metrics_port). Copied. NULL (default):
     * no endpoint, and the histograms only it shows are not kept (no clock
     * read per message). bds_server_run fails with BDS_UNAVAILABLE when it
     * cannot listen there. A scraper holds at most: 8 connections at once
     * (past them 503, then closed at once), an 8 KiB request head (past it,
     * or a malformed one, 400), 10 s per exchange; each answer closes its
     * connection. */
    const char *metrics_listen;
} bds_server_config;

/* Log levels (bds_server_config.log_level and .log). */
enum { BDS_LOG_ERROR = 0, BDS_LOG_WARN = 1, BDS_LOG_INFO = 2, BDS_LOG_DEBUG = 3 };

/* Fills *config with the defaults above (size included). Thread: any. */
BDS_API void bds_server_config_default(bds_server_config *config);

/* Finds the ordering key in a request's bytes (a view into request, valid as
 * long as the request). Returns false if the request is malformed (the call
 * ends with INTERNAL). NULL resolver: every message of a stream shares one key
 * (the empty key), and runs on the stream's own shard. Thread: the shard that
 * reads the stream's connection; it must not block. ctx is key_ctx. */
typedef bool (*bds_key_fn)(const uint8_t *request, uint32_t len, const uint8_t **key, uint32_t *key_len,
                           void *ctx);

typedef struct bds_stream bds_stream;

/* What a method takes and answers, declared at registration and enforced.
 * Every kind runs through the same pipeline (ordering, backpressure, retries,
 * drain); each request message is one handler call.
 *   BIDI              any number of requests and replies (the default).
 *   SERVER_STREAMING  exactly one request, any number of replies.
 *   UNARY             exactly one request, exactly one reply.
 *   CLIENT_STREAMING  any number of requests, exactly one answer: made at the
 *                     client's half-close (bds_method.on_half_close, with
 *                     bds_stream_send) or by a handler's reply.
 * A second request to UNARY or SERVER_STREAMING, or none at the client's
 * half-close, ends the stream INTERNAL before the handler sees it. For UNARY
 * and CLIENT_STREAMING a second answer (reply or bds_stream_send) is refused
 * (BDS_FAILED_PRECONDITION), and a stream that would end OK without its
 * answer ends INTERNAL ("the method ended without its reply"). */
typedef enum bds_method_kind {
    BDS_METHOD_BIDI = 0,
    BDS_METHOD_SERVER_STREAMING = 1,
    BDS_METHOD_UNARY = 2,
    BDS_METHOD_CLIENT_STREAMING = 3,
} bds_method_kind;

/* What a stream did, for interceptors' on_end. */
typedef struct bds_stream_end_info {
    bds_status status;              /* as sent (BDS_CANCELLED: the client reset it, nothing sent) */
    const char *message;            /* the status message; valid during on_end */
    uint64_t duration_ns;           /* from its request headers to its end */
    uint64_t messages_in;           /* request messages received */
    uint64_t messages_out;          /* replies and pushes handed to HTTP/2 */
    uint64_t bytes_in, bytes_out;   /* their payload bytes */
} bds_stream_end_info;

/* Hooks around every stream of a server (bds_server_add_interceptor) or of
 * one method (bds_method.interceptors): logging, authentication, metrics.
 * Every hook is optional and runs on the stream's home shard (its
 * connection's thread), inside the event loop: it must not block. Server
 * interceptors run before the method's, each list in order; on_end runs in
 * the reverse order. ctx is the caller's and must outlive the server. */
typedef struct bds_interceptor {
    uint32_t size;                  /* = sizeof(bds_interceptor) */
    /* A stream opens (its request headers are complete; no message read
     * yet): the method, metadata, peer and deadline can be read. BDS_OK lets
     * it through; any other status refuses it at once (trailers-only, no
     * message is read, no handler runs, neither this interceptor's on_end
     * nor the method's follows; the interceptors before it, whose on_open
     * passed, get their on_end with this status) with *message (static
     * storage, or NULL for the status's own text), e.g.
     * BDS_UNAUTHENTICATED. It may set response headers and trailers
     * (bds_stream_set_header) and the stream's user pointer. */
    bds_status (*on_open)(bds_stream *stream, const char **message, void *ctx);
    /* A request message arrived (before its key is found). BDS_OK lets it
     * through; any other status ends the stream with it (the message is not
     * handled). bytes are the server's, valid during the hook. */
    bds_status (*on_message_in)(bds_stream *stream, const uint8_t *bytes, uint32_t len, void *ctx);
    /* A reply or push leaves for HTTP/2, in stream order. Observe only. */
    void (*on_message_out)(bds_stream *stream, const uint8_t *bytes, uint32_t len, void *ctx);
    /* The stream ended: once per stream whose on_open passed (or that had
     * no on_open to pass), also when an interceptor after this one, or the
     * server at its stream limits, refused the stream. Handlers of the stream
     * may still be running (cancelled): state they read is freed by
     * bds_stream_set_user_free, not here. */
    void (*on_end)(bds_stream *stream, const bds_stream_end_info *info, void *ctx);
    void *ctx;
} bds_interceptor;

typedef struct bds_method {
    uint32_t size;                  /* = sizeof(bds_method) */
    const char *path;               /* "/package.Service/Method"; copied */
    bds_handler_fn handler;         /* runs on the key's shard: see bds_call_request() */
    void *handler_ctx;              /* the caller's; must outlive the server */
    bds_key_fn key;
    void *key_ctx;                  /* the caller's; must outlive the server */
    const bds_options *options;     /* NULL = the server's; copied */
    bds_method_kind kind;           /* default BDS_METHOD_BIDI */
    /* Optional. The client half-closed and every message it sent before has
     * been handled (each call done, or dropped): the place to answer at the
     * end (a summary, CLIENT_STREAMING's one reply). With it set, the stream
     * then stays open until bds_stream_finish (or its deadline, a reset, the
     * shutdown's grace period); without it, it ends OK once drained. Runs on
     * the stream's home shard, once; ctx is handler_ctx. */
    void (*on_half_close)(bds_stream *stream, void *ctx);
    /* Optional. The stream ended, for any reason (finished, the client
     * cancelled, its deadline passed, a failure, the shutdown): from now on
     * every bds_stream_* call on it returns BDS_E_SESSION_CLOSED and handlers
     * still running see bds_call_cancelled. Runs on the stream's home shard,
     * once per stream that opened; message is valid during the call; ctx is
     * handler_ctx. */
    void (*on_end)(bds_stream *stream, bds_status status, const char *message, void *ctx);
    /* Optional: the method's own interceptors (after the server's), an array
     * of n_interceptors pointers; the array is copied, each bds_interceptor
     * stays the caller's and must outlive the server. At most 8. */
    const bds_interceptor *const *interceptors;
    uint32_t n_interceptors;
} bds_method;

/* Makes a server from *config (copied; listen is copied too; on_ready_ctx
 * stays the caller's). Nothing listens before bds_server_run. Returns BDS_OK
 * with *out set (the caller's, until bds_server_destroy), BDS_E_INVALID (a
 * field out of range, a bad listen string or invalid options: *why names it,
 * in static storage, if why is not NULL) or BDS_E_NOMEM; *out is NULL on
 * error. Thread: any. */
BDS_API bds_status bds_server_create(bds_server **out, const bds_server_config *config, const char **why);
/* Adds a method: before bds_server_run() only. method is copied, path too;
 * handler_ctx, key_ctx and *options (copied) stay the caller's, and
 * handler_ctx and key_ctx must outlive the server. Returns BDS_OK,
 * BDS_E_INVALID (the path is not "/package.Service/Method" with identifiers,
 * no handler, size too small, invalid options), BDS_ALREADY_EXISTS (the
 * path is taken), BDS_RESOURCE_EXHAUSTED (64 methods, the built-in ones
 * included) or BDS_FAILED_PRECONDITION (the server runs); on any error *why
 * (if why is not NULL) says why, in static storage. A NULL server is a misuse
 * that stops the process. Thread: the one that created the server, before it
 * runs. */
BDS_API bds_status bds_server_add_method(bds_server *server, const bds_method *method, const char **why);
/* Serves until bds_server_stop() or SIGTERM/SIGINT, then drains gracefully
 * (GOAWAY, in-flight work finishes within the grace period: the longest of the
 * server's and its methods'). Raises the process's soft RLIMIT_NOFILE to its
 * hard limit first (each connection is a descriptor). What the grace period
 * leaves ends UNAVAILABLE; one second after it, connections still open are
 * closed; four seconds later (a hard stop, at most grace + 5 s after the stop)
 * handlers that still have not finished their calls are abandoned and
 * bds_server_run returns BDS_DEADLINE_EXCEEDED: their calls' memory stays
 * allocated, and they must never touch those calls again (no bds_call_done).
 * Returns BDS_OK after a clean stop. A second SIGTERM/SIGINT while stopping
 * ends the process at once (_exit(128 + signal number)). Other returns, before
 * anything is served: BDS_UNAVAILABLE (cannot listen: the address is in use
 * and reuse_port is off, or bind failed; the reason goes to stderr),
 * BDS_FAILED_PRECONDITION (this server already ran), or what kept a shard
 * from starting (BDS_E_NOMEM, ...; said on stderr too).
 * Thread: any one thread, once per server; it becomes shard 0 and returns
 * when the server has stopped. It blocks SIGTERM and SIGINT for the whole
 * process (and reads them itself) and leaves them blocked. */
BDS_API bds_status bds_server_run(bds_server *server);
/* Starts the graceful stop of bds_server_run (or makes a run that has not
 * started yet stop at once). Idempotent. Thread: any; async-signal-safe. */
BDS_API void bds_server_stop(bds_server *server);
/* The port the server listens on (useful with "host:0"); 0 before it runs
 * (on_ready tells it without polling). Thread: any. */
BDS_API uint16_t bds_server_port(const bds_server *server);
/* The port of the metrics endpoint (bds_server_config.metrics_listen): set
 * once bds_server_run listens there, before on_ready; 0 before, or without
 * an endpoint. Thread: any. */
BDS_API uint16_t bds_server_metrics_port(const bds_server *server);
/* Counters of one method, summed over every shard. Totals count from the
 * server's start; "live" fields are gauges. Updated as things happen (not
 * when a stream ends), with relaxed atomics: a read is a recent picture, each
 * field exact at some recent moment. */
typedef struct bds_method_stats {
    const char *path;               /* the server's storage */
    bds_method_kind kind;
    uint64_t streams_opened;        /* passed their interceptors' on_open */
    uint64_t streams_refused;       /* refused at open (an interceptor, a limit) */
    uint64_t streams_ended;         /* ended after opening, any status */
    uint64_t streams_ok;            /* ... of those, with OK */
    uint64_t streams_live;          /* gauge: opened, not yet ended */
    uint64_t messages_in;           /* request messages received */
    uint64_t messages_out;          /* replies and pushes handed to HTTP/2 */
    uint64_t admitted;              /* messages the pipeline took */
    uint64_t rejected;              /* ... refused by ordering or inbound backpressure */
    uint64_t completed, failed;     /* handler attempts' outcomes (failed: not retried) */
    uint64_t retried;               /* attempts that were retried */
    uint64_t panics;                /* bds_call_panic */
    uint64_t pressure_signals;      /* SOFT_ALLOW_SIGNAL: messages and replies over capacity */
    uint64_t replies_rejected;      /* outbound backpressure rejections */
    uint64_t bytes_in, bytes_out;   /* payload bytes, with options.metrics.payload_sizes */
    uint64_t calls_live;            /* gauge: messages admitted and not yet finished */
} bds_method_stats;

/* Counters of one shard. */
typedef struct bds_server_shard_stats {
    uint64_t connections_live;      /* gauge */
    uint64_t connections_accepted;
    uint64_t streams_live;          /* gauge: streams homed on this shard */
    uint64_t message_bytes;         /* gauge: message buffer memory held */
    uint64_t msgs_posted;           /* work sent to other shards (keys hashed there) */
} bds_server_shard_stats;

typedef struct bds_server_stats {
    uint32_t n_methods;             /* methods[0..n_methods), in registration order */
    uint32_t n_shards;              /* shards[0..n_shards): those it runs (or will run) */
    bds_method_stats methods[64];
    bds_server_shard_stats shards[256];
} bds_server_stats;

/* Reads the TLS files named in the config again (a renewed certificate) and
 * uses them for connections accepted from now on; open connections keep the
 * certificate they started with. bds_server_run calls it on SIGHUP when TLS
 * is on. Returns BDS_OK, BDS_FAILED_PRECONDITION (the server has no TLS) or
 * BDS_E_INVALID (a file does not load: the old certificate stays; *why, when
 * why is not NULL, says which and why, in storage valid until the next call
 * on this thread). Thread: any. */
BDS_API bds_status bds_server_reload_tls(bds_server *server, const char **why);

/* The number of methods the server serves, the built-in ones included.
 * Thread: any, between create and destroy. */
BDS_API uint32_t bds_server_method_count(const bds_server *server);
/* The path ("/package.Service/Method") of method index (registration order),
 * in the server's storage; NULL when index >= bds_server_method_count.
 * Thread: any, between create and destroy. */
BDS_API const char *bds_server_method_path(const bds_server *server, uint32_t index);

/* Adds a FileDescriptorSet (protoc --descriptor_set_out=F --include_imports)
 * for the reflection service (bds_server_config.reflection) to serve: its
 * files become fetchable by name and by the symbols they define. set is
 * copied. Returns BDS_OK, BDS_E_INVALID (not a FileDescriptorSet with named
 * files), BDS_FAILED_PRECONDITION (the server runs), BDS_RESOURCE_EXHAUSTED
 * (16 sets) or BDS_E_NOMEM; *why (when why is not NULL) names the reason,
 * static storage. Thread: the one that owns the server, before
 * bds_server_run. */
BDS_API bds_status bds_server_add_descriptors(bds_server *server, const void *set, size_t len, const char **why);
/* The number of descriptor sets added, and set index (its bytes, in the
 * server's storage, with *len its length; NULL past the end). Thread: any,
 * between create and destroy. */
BDS_API uint32_t bds_server_descriptor_count(const bds_server *server);
BDS_API const uint8_t *bds_server_descriptor_set(const bds_server *server, uint32_t index, size_t *len);

/* Fills *out (about 20 KiB: keep it off small stacks) with the server's
 * counters. Returns BDS_OK. Thread: any, any time between create and
 * destroy (while running too). */
BDS_API bds_status bds_server_get_stats(const bds_server *server, bds_server_stats *out);

/* Frees the server; NULL does nothing. Only when bds_server_run is not
 * running (never ran, or returned). After a hard stop (BDS_DEADLINE_EXCEEDED)
 * what the abandoned handlers still hold stays allocated. Thread: the one
 * that created it, or any once run has returned. */
BDS_API void bds_server_destroy(bds_server *server);

/* Adds an interceptor to every method of the server, the built-in ones
 * included (after those added before). *interceptor is copied; its ctx stays
 * the caller's and must outlive the server. Returns BDS_OK, BDS_E_INVALID
 * (size too small, no hook), BDS_RESOURCE_EXHAUSTED (8 server interceptors)
 * or BDS_FAILED_PRECONDITION (the server runs); *why (if why is not NULL)
 * says why, in static storage. Thread: the one that created the server,
 * before it runs. */
BDS_API bds_status bds_server_add_interceptor(bds_server *server, const bds_interceptor *interceptor,
                                              const char **why);

/* ---- streams ----------------------------------------------------------------
 *
 * A bds_stream is one gRPC call (one HTTP/2 stream) of a server method: what
 * its client sent in its headers, and what the server sends back besides
 * replies (headers, trailers, pushes, an early end). Handlers get it from
 * their call (bds_call_stream); interceptors and the method's callbacks are
 * handed it.
 *
 * Lifetime. A stream is alive while its call is the handler's, during the
 * hooks and callbacks that receive it, and while a reference taken with
 * bds_stream_ref is held: keep one to push to a stream from elsewhere (a chat
 * room's members) and drop it with bds_stream_unref. The stream ends
 * (bds_method.on_end) long before its memory goes: after its end every
 * function below still works on a held reference, and those that would send
 * return BDS_E_SESSION_CLOSED.
 *
 * Threads. Every function here may be called from any thread on a live
 * stream. What sends (headers, trailers, pushes, finish) is carried to the
 * stream's home shard and applied there in the order the calling thread made
 * it, after the replies that thread's calls made before it: a handler that
 * replies, sets a trailer and finishes gets exactly that on the wire. The
 * functions return once it is queued; a stream that ends before it arrives
 * drops it. */

/* The call's stream, alive as long as the call is the handler's (take a
 * reference to keep it longer). Thread: any, while the call is the handler's
 * (after bds_call_done, a misuse that stops the process). */
BDS_API bds_stream *bds_call_stream(const bds_call *call);
/* Takes a reference: the stream's memory stays until the matching
 * bds_stream_unref. Returns stream. Thread: any, on a live stream. */
BDS_API bds_stream *bds_stream_ref(bds_stream *stream);
/* Drops a reference taken with bds_stream_ref; NULL does nothing. Dropping
 * one not taken is a misuse that stops the process. Thread: any. */
BDS_API void bds_stream_unref(bds_stream *stream);
/* The method's path, in the server's storage. */
BDS_API const char *bds_stream_method(const bds_stream *stream);
/* The client's address, "ip:port" ("[ip6]:port"), in the stream's storage. */
BDS_API const char *bds_stream_peer(const bds_stream *stream);
/* The call's deadline (its grpc-timeout after its headers arrived), on
 * CLOCK_MONOTONIC in ns; 0 when the client set none. When it passes the
 * stream ends DEADLINE_EXCEEDED (on_end, bds_call_cancelled, call timers). */
BDS_API uint64_t bds_stream_deadline_ns(const bds_stream *stream);

/* One request metadata entry: a custom header of the request (not a
 * pseudo-header, not content-type, te or a grpc-* header), its name in lower
 * case, its value as sent; a "-bin" entry's value is its base64 decoded
 * (a request whose -bin value is not valid base64 is refused INTERNAL).
 * Both in the stream's storage. At most max_header_list_bytes in all. */
typedef struct bds_metadata {
    const char *name;
    const uint8_t *value;
    size_t value_len;
} bds_metadata;
/* The number of request metadata entries, in the order they came. */
BDS_API size_t bds_stream_metadata_count(const bds_stream *stream);
/* Entry index (< count): returns true and fills *out, false when out of range. */
BDS_API bool bds_stream_metadata_at(const bds_stream *stream, size_t index, bds_metadata *out);
/* The first value of metadata name (lower case; "-bin" names give the decoded
 * bytes) and its length in *len (len may be NULL), or NULL if the request
 * carried none. */
BDS_API const uint8_t *bds_stream_metadata(const bds_stream *stream, const char *name, size_t *len);

/* Adds response metadata: to the response headers (before the stream's first
 * reply or push leaves, or with its trailers if none ever does), or to its
 * trailers (sent at its end). name: lower case letters, digits, "-", "_",
 * ".", not starting with "grpc-" or ":"; a name ending "-bin" takes any bytes
 * (sent base64), others printable ASCII. Returns BDS_OK (queued),
 * BDS_E_INVALID (a bad name or value), BDS_FAILED_PRECONDITION (a header
 * after the headers left: the stream's first reply or push was made before
 * it), BDS_RESOURCE_EXHAUSTED (more than 16 entries or 8 KiB per stream and
 * kind) or BDS_E_SESSION_CLOSED (the stream ended or was finished).
 * Headers are certain to go out when set before any reply of the stream can
 * be made: in an interceptor's on_open, or by the only code that replies on
 * the stream, before its first reply. A header set on one thread while
 * another thread makes the stream's first reply races with it: when the
 * reply is first, the header returns BDS_OK here and is dropped at the home
 * shard (the response headers have left; logged at debug level). */
BDS_API bds_status bds_stream_set_header(bds_stream *stream, const char *name, const void *value, size_t len);
BDS_API bds_status bds_stream_set_trailer(bds_stream *stream, const char *name, const void *value, size_t len);
/* Sends a message on the stream that no request asked for (a server push:
 * the seed's Sender), a copy of bytes, through the same outbound ordering and
 * backpressure as replies. For UNARY and CLIENT_STREAMING methods it is their
 * one answer (on_half_close's, typically) like a reply: only one of the two.
 * Returns BDS_OK (queued), BDS_E_INVALID (over the server's
 * max_message_bytes), BDS_FAILED_PRECONDITION (a UNARY or CLIENT_STREAMING
 * stream already answered), BDS_E_NOMEM or BDS_E_SESSION_CLOSED (the stream
 * ended or was finished). A push the
 * outbound backpressure rejects is dropped like a reply (with fail_fast the
 * stream then ends RESOURCE_EXHAUSTED). */
BDS_API bds_status bds_stream_send(bds_stream *stream, const void *bytes, size_t len);
/* Ends the stream with status (BDS_OK included: the seed's ServerClose) and
 * message (copied, up to 127 bytes; NULL for none) once everything queued
 * before it from this thread has left: the replies already made and pushes go
 * first. Calls still running are cancelled (bds_call_cancelled; they still
 * end with bds_call_done); later replies are dropped. Returns BDS_OK (the
 * first finish), BDS_E_SESSION_CLOSED (it already ended or was finished).
 * A UNARY or CLIENT_STREAMING stream finished OK without its reply ends
 * INTERNAL. */
BDS_API bds_status bds_stream_finish(bds_stream *stream, bds_status status, const char *message);
/* Whether the stream has ended or been finished (a cheap atomic load). */
BDS_API bool bds_stream_ended(const bds_stream *stream);
/* One pointer of the application's per stream (NULL at first): set it in
 * on_open or a handler. Not synchronized: set it before other threads read
 * it. Thread: any, on a live stream. */
BDS_API void bds_stream_set_user(bds_stream *stream, void *user);
BDS_API void *bds_stream_user(const bds_stream *stream);
/* free_fn(user) runs once, when the stream's memory goes: after its end
 * (on_end), after every call of the stream is done (handlers still running
 * when it ended included) and every reference is dropped; on the thread that
 * drops the last one (a shard, or the thread of a bds_stream_unref). The
 * safe place to free per-stream state that handlers on other shards read;
 * on_end is not (they may still run). NULL: nothing runs. Thread: any, on a
 * live stream. */
BDS_API void bds_stream_set_user_free(bds_stream *stream, void (*free_fn)(void *user));

/* Inside a handler of a server method: the request's bytes (protobuf-encoded),
 * valid until bds_call_done(); *len gets their length (len may be NULL).
 * Thread: any, while the call is the handler's (pipeline.h: after
 * bds_call_done, a misuse that stops the process). The bytes are the
 * server's. */
BDS_API const uint8_t *bds_call_request(const bds_call *call, uint32_t *len);
/* The method's path ("/package.Service/Method"), in the server's storage.
 * Thread: any, while the call is the handler's (a misuse after
 * bds_call_done stops the process). */
BDS_API const char *bds_call_method(const bds_call *call);
/* Replies with a copy of bytes (an encoded message; the caller keeps bytes).
 * Returns BDS_OK, BDS_E_INVALID (over the server's max_message_bytes),
 * BDS_FAILED_PRECONDITION (a UNARY or CLIENT_STREAMING stream already
 * answered: another attempt of a retried call may answer again),
 * BDS_E_SESSION_CLOSED (the stream ended or was finished: the reply is not
 * sent), BDS_E_OUTBOUND_BACKPRESSURE (this reply was taken, but the Sender
 * refused earlier ones of the stream since the last report: bds_call_reply)
 * or BDS_E_NOMEM. Thread: any, before bds_call_done
 * (after it, a misuse that stops the process). */
BDS_API bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len);

/* Compresses the stream's replies and pushes made from now on (by any
 * thread, after this returns) with compression, or not (NONE): the place is
 * a handler before its reply, or an interceptor's on_open for a whole
 * stream; it starts as the server's compress_responses. A stream's encoding
 * is fixed when its response headers leave, with its first reply or push,
 * which announce it (grpc-encoding): that first one chooses compression if
 * its client takes it (its grpc-accept-encoding lists it, or its request came
 * in it), else none. A later reply asking for compression is compressed with
 * the stream's encoding, whichever was asked, or goes as it is when the
 * stream has none; a reply under 64 bytes, or one that would not shrink,
 * goes as it is too (gRPC lets any message go uncompressed). Returns BDS_OK,
 * or BDS_E_INVALID (not a bds_compression). Thread: any, on a live stream
 * (a reply made on another thread at the same time may or may not see it). */
BDS_API bds_status bds_stream_set_compression(bds_stream *stream, bds_compression compression);
/* Whether the call's request message came compressed (the gRPC
 * Compressed-Flag: the bytes bds_call_request gives are already
 * decompressed). Thread: any, while the call is the handler's (after
 * bds_call_done, a misuse that stops the process). */
BDS_API bool bds_call_request_compressed(const bds_call *call);

/* ---- applications: serving state, the stop's start, paced replies ----------
 *
 * What a service needs beyond its handlers: a health service answers from
 * bds_server_serving and tells its watchers when the stop begins; a service
 * streaming many replies to one request makes each only once the last one
 * left (bds_call_reply_paced), so a slow reader never makes it hold more than
 * one. The built-in services (services/) are written with these alone. */

/* Whether the server serves: true from bds_server_create until its graceful
 * stop begins (bds_server_stop, SIGTERM/SIGINT), false from then on. Thread:
 * any (an atomic load), between create and destroy. */
BDS_API bool bds_server_serving(const bds_server *server);

/* Told once when the server's graceful stop begins. server is the one
 * stopping; ctx is the one given with the hook. */
typedef void (*bds_server_on_stop_fn)(bds_server *server, void *ctx);
/* Adds fn to run once when the graceful stop begins: on the thread of the
 * first shard to stop, after bds_server_serving turned false and before that
 * shard drains its streams; other shards may begin draining meanwhile. A
 * stream whose handler still holds a call is not ended by the drain before
 * that call is done (or the grace period ends), so a bds_stream_send and
 * bds_stream_finish made from fn reach such a stream first: a health Watch
 * hears NOT_SERVING and ends OK. Hooks run in the order they were added, in
 * the event loop: keep them short, never block. ctx stays the caller's and
 * must outlive the server. Returns BDS_OK, BDS_E_INVALID (fn NULL),
 * BDS_RESOURCE_EXHAUSTED (8 hooks, the built-in services' included) or
 * BDS_FAILED_PRECONDITION (the server runs). A NULL server is a misuse that
 * stops the process. Thread: the one that created the server, before it
 * runs. */
BDS_API bds_status bds_server_on_stop(bds_server *server, bds_server_on_stop_fn fn, void *ctx);

/* bds_call_reply_bytes, paced: fn(call, ctx) runs once on the call's EXEC
 * pipeline thread (where its handler runs), outside the handler, when this
 * reply has left for HTTP/2 (its bytes are in the connection's output) or was
 * dropped (the stream ended, or the outbound backpressure refused it). A
 * handler streaming many replies makes the next one from fn (or arms
 * bds_call_after there), so a call holds about one reply however slowly its
 * client reads. Until fn has run the call stays the handler's: finishing it
 * before (bds_call_done or bds_call_retry, from a cancel hook or a timer
 * too) is a misuse that stops the process naming bds_call_reply_paced when
 * fn is due. When the stream ends the reply is dropped and fn runs soon
 * after, with bds_call_cancelled true: fn then finishes the call. Returns
 * what bds_call_reply_bytes returns (BDS_OK: fn will run; any error: it never
 * will), and BDS_FAILED_PRECONDITION when retries hold the method's replies
 * until the attempt ends (options.retry.max_attempts > 0 without
 * at_least_once: fn would wait for bds_call_done). fn NULL is a misuse that
 * stops the process. Thread: the call's EXEC pipeline, while the call is the
 * handler's (inside the handler, a bds_call_after timer, a cancel hook, a
 * paced reply's fn). ctx stays the caller's. */
BDS_API bds_status bds_call_reply_paced(bds_call *call, const void *bytes, size_t len, bds_call_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif
