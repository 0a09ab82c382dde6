/* bidistream/server.h — run a gRPC server from your own main().
 *
 * A server is a set of shards, one thread each (the thread that calls
 * bds_server_run() is shard 0), each with its own io_uring ring, listener
 * (SO_REUSEPORT), connections and sessions. Register bidi-streaming methods
 * before running: each inbound message goes through the pipeline of
 * bidistream/pipeline.h — ordering by the key the method's resolver finds in
 * the request, backpressure, the handler on the key's shard, the Sender.
 *
 * Built in: bidistream.v1.Pipeline/Process (SPEC §4) and grpc.health.v1.Health
 * (Check, Watch). */
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
    uint32_t max_header_list_bytes; /* default 16 KiB */
    uint32_t stream_window_bytes;   /* HTTP/2 initial stream window, default 64 KiB */
    uint32_t idle_spin_us;          /* spin this long before sleeping; 0 = never (default) */
    bds_options options;            /* pipeline options for methods that bring none */
    int log_level;                  /* 0 errors, 1 warnings, 2 info (default), 3 debug */
    uint32_t max_connections;       /* open connections per server, default 10,000, split
                                       evenly across shards (each enforces its share); a
                                       connection past it is closed at once; 0 = no limit */
} bds_server_config;

BDS_API void bds_server_config_default(bds_server_config *config);

/* Finds the ordering key in a request's bytes (a view into request, valid as
 * long as the request). Returns false if the request is malformed (the call
 * ends with INTERNAL). NULL resolver: every message of a stream shares one key. */
typedef bool (*bds_key_fn)(const uint8_t *request, uint32_t len, const uint8_t **key, uint32_t *key_len,
                           void *ctx);

typedef struct bds_method {
    uint32_t size;                  /* = sizeof(bds_method) */
    const char *path;               /* "/package.Service/Method" */
    bds_handler_fn handler;         /* runs on the key's shard: see bds_call_request() */
    void *handler_ctx;
    bds_key_fn key;
    void *key_ctx;
    const bds_options *options;     /* NULL = the server's; copied */
} bds_method;

BDS_API bds_status bds_server_create(bds_server **out, const bds_server_config *config, const char **why);
/* Before bds_server_run() only. Returns BDS_OK, BDS_E_INVALID (bad path,
 * options) or BDS_ALREADY_EXISTS. */
BDS_API bds_status bds_server_add_method(bds_server *server, const bds_method *method);
/* Serves until bds_server_stop() or SIGTERM/SIGINT, then drains gracefully
 * (GOAWAY, in-flight work finishes within the grace period). Raises the
 * process's soft RLIMIT_NOFILE to its hard limit first (each connection is a
 * descriptor). */
BDS_API bds_status bds_server_run(bds_server *server);
/* Thread: any; async-signal-safe. */
BDS_API void bds_server_stop(bds_server *server);
/* The port the server listens on (useful with "host:0"); 0 before it runs. */
BDS_API uint16_t bds_server_port(const bds_server *server);
BDS_API void bds_server_destroy(bds_server *server);

/* Inside a handler of a server method: the request's bytes (protobuf-encoded),
 * valid until bds_call_done(). */
BDS_API const uint8_t *bds_call_request(const bds_call *call, uint32_t *len);
/* Replies with a copy of bytes (an encoded message). Thread: any. */
BDS_API bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len);

#ifdef __cplusplus
}
#endif
#endif
