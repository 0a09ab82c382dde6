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

typedef struct bds_server_config {
    uint32_t size;                  /* = sizeof(bds_server_config) */
    const char *listen;             /* "host:port"; default "127.0.0.1:50051" */
    uint32_t shards;                /* 0 = one per CPU in the affinity mask */
    uint32_t max_message_bytes;     /* default 4 MiB; larger -> RESOURCE_EXHAUSTED */
    uint32_t max_concurrent_streams;/* per connection, default 1024 */
    /* Per connection, default 128: streams that are over (reset, cancelled,
     * failed) while their handlers still run. At the bound, new streams on
     * that connection are refused with RESOURCE_EXHAUSTED until some of that
     * work ends; the built-in handlers end theirs as soon as their stream is
     * gone, so only handlers that finish late count for long. */
    uint32_t max_lingering_streams;
    uint32_t max_header_list_bytes; /* default 16 KiB */
    uint32_t stream_window_bytes;   /* HTTP/2 initial stream window, default 64 KiB */
    uint32_t idle_spin_us;          /* spin this long before sleeping; 0 = never (default) */
    bool interop_service;           /* also serve grpc.testing.TestService; default false */
    /* Per StreamingOutputCallRequest of the interop service: responses asked
     * for (default 1000) and their total bytes (default 64 MiB); past either
     * the call ends RESOURCE_EXHAUSTED before any response is made. */
    uint32_t interop_responses_max;
    uint32_t interop_response_bytes_max;
    bds_options options;            /* pipeline options for methods that bring none */
    int log_level;                  /* 0 errors, 1 warnings, 2 info (default), 3 debug */
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
} bds_server_config;

/* Fills *config with the defaults above (size included). Thread: any. */
BDS_API void bds_server_config_default(bds_server_config *config);

/* Finds the ordering key in a request's bytes (a view into request, valid as
 * long as the request). Returns false if the request is malformed (the call
 * ends with INTERNAL). NULL resolver: every message of a stream shares one key
 * (the empty key), and runs on the stream's own shard. Thread: the shard that
 * reads the stream's connection; it must not block. ctx is key_ctx. */
typedef bool (*bds_key_fn)(const uint8_t *request, uint32_t len, const uint8_t **key, uint32_t *key_len,
                           void *ctx);

typedef struct bds_method {
    uint32_t size;                  /* = sizeof(bds_method) */
    const char *path;               /* "/package.Service/Method"; copied */
    bds_handler_fn handler;         /* runs on the key's shard: see bds_call_request() */
    void *handler_ctx;              /* the caller's; must outlive the server */
    bds_key_fn key;
    void *key_ctx;                  /* the caller's; must outlive the server */
    const bds_options *options;     /* NULL = the server's; copied */
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
/* Frees the server; NULL does nothing. Only when bds_server_run is not
 * running (never ran, or returned). After a hard stop (BDS_DEADLINE_EXCEEDED)
 * what the abandoned handlers still hold stays allocated. Thread: the one
 * that created it, or any once run has returned. */
BDS_API void bds_server_destroy(bds_server *server);

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
 * Returns BDS_OK, BDS_E_INVALID (len over 4 GiB) or BDS_E_NOMEM. Thread: any,
 * before bds_call_done (after it, a misuse that stops the process). */
BDS_API bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len);

#ifdef __cplusplus
}
#endif
#endif
