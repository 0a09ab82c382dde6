/* metrics_http.h — a scrape endpoint: GET /metrics over HTTP/1.1 on a shard
 * (internal; docs/OPERATIONS.md).
 *
 * A listener on the shard's ring (io/net.c, like the gRPC listener) and a
 * tiny, bounded HTTP/1.1 exchange per connection: read one request head
 * (proto/http1_req.c: at most max_request_bytes), answer it, close. Every
 * answer carries "Connection: close"; nothing of a request after its head is
 * read. What a client can make it hold is bounded:
 *   - bytes: the request head's buffer (max_request_bytes; past it 400);
 *   - time: the whole exchange, from accept to the last byte of the answer
 *     leaving, within timeout_ns (else closed);
 *   - connections: max_conns at once; past them a new one is answered 503
 *     and closed, and past twice as many it is closed at once.
 * Answers: GET or HEAD of /metrics (a query is ignored) 200 with the page
 * (text/plain; version=0.0.4); another method there 405; another path 404; a
 * malformed or oversized head 400; a page that could not be made 500. The
 * page is made by the render callback on the shard's thread when the request
 * is complete.
 *
 * Shard: everything on the shard that started it. */
#ifndef BDS_IO_METRICS_HTTP_H
#define BDS_IO_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "net.h"

typedef struct bds_metrics_http bds_metrics_http;

/* The answers given, by kind (for the endpoint's own metrics and tests). */
typedef struct bds_metrics_http_stats {
    uint64_t ok, bad_request, not_found, bad_method, busy, failed, timeouts;
} bds_metrics_http_stats;

typedef struct bds_metrics_http_config {
    uint32_t max_conns;          /* scrape connections at once; default 8 */
    uint32_t max_request_bytes;  /* a request head; default 8 KiB */
    uint64_t timeout_ns;         /* the whole exchange; default 10 s */
    /* The page: a malloc'ed buffer of *len bytes (the endpoint frees it), or
     * NULL (answered 500). Runs on the shard. */
    char *(*render)(void *ctx, size_t *len);
    void *ctx;
    const bds_logger *log;       /* debug lines for closed exchanges; NULL: none */
} bds_metrics_http_config;

void bds__metrics_http_config_default(bds_metrics_http_config *cfg);

/* Takes listen_fd (a listening socket) and serves it on net's shard.
 * Returns BDS_OK with *out, or BDS_E_NOMEM (listen_fd is closed). */
bds_status bds__metrics_http_start(bds_net *net, int listen_fd, const bds_metrics_http_config *cfg,
                                   bds_metrics_http **out);
/* Stops accepting and closes every connection; the endpoint frees itself
 * once the last one has closed. h must not be used after. NULL: nothing. */
void bds__metrics_http_stop(bds_metrics_http *h);
/* Its answers so far (shard only). */
const bds_metrics_http_stats *bds__metrics_http_stats(const bds_metrics_http *h);
/* Connections open now (shard only). */
uint32_t bds__metrics_http_conns(const bds_metrics_http *h);

#endif
