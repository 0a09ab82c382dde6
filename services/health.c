/* health.c — grpc.health.v1.Health (docs/SERVICE.md), on the public API only.
 *
 * Check answers SERVING, NOT_SERVING once the server's stop has begun
 * (bds_server_serving), NOT_FOUND for an unknown service. Watch sends the
 * current status and holds its call until the stop begins, when it hears
 * NOT_SERVING and ends OK (a stop hook pushes and finishes each waiting
 * stream: bds_server_on_stop). Both run through the same pipeline as
 * one-request FIFO streams.
 *
 * A waiting Watch is on one list for the process (servers told apart by
 * their pointer), under a mutex: its call runs on its stream's home shard,
 * while the stop hook runs on whichever shard stops first. It leaves the list
 * the moment its stream is gone (its cancel hook), so a client that opens
 * and cancels Watches holds nothing. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "services.h"
#include "wire.h"

enum { HEALTH_SERVING = 1, HEALTH_NOT_SERVING = 2, HEALTH_SERVICE_UNKNOWN = 3 };

/* Returns false for a malformed request; *known says whether the service exists. */
static bool health_service(const uint8_t *p, uint32_t len, bool *known) {
    const uint8_t *end = p + len, *name = (const uint8_t *)"";
    uint64_t name_len = 0;
    while (p < end) {
        uint64_t tag, x;
        if (!wire_varint(&p, end, &tag)) return false;
        if ((tag & 7) == 2) {
            if (!wire_varint(&p, end, &x) || x > (uint64_t)(end - p)) return false;
            if ((tag >> 3) == 1) {
                name = p;
                name_len = x;
            }
            p += x;
        } else if ((tag & 7) == 0) {
            if (!wire_varint(&p, end, &x)) return false;
        } else if ((tag & 7) == 1 || (tag & 7) == 5) {
            /* Unknown fixed64 / fixed32 fields are skipped like any other. */
            uint32_t n = (tag & 7) == 1 ? 8 : 4;
            if ((uint64_t)(end - p) < n) return false;
            p += n;
        } else {
            return false;
        }
    }
    static const char *const services[] = {"", "bidistream.v1.Pipeline", "grpc.health.v1.Health"};
    *known = false;
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++) {
        if (strlen(services[i]) == name_len && memcmp(services[i], name, name_len) == 0) *known = true;
    }
    return true;
}

/* A HealthCheckResponse: status (field 1, varint). */
static void health_response(int status, uint8_t out[2]) {
    out[0] = 0x08;
    out[1] = (uint8_t)status;
}

static int health_now(const bds_server *server) {
    return bds_server_serving(server) ? HEALTH_SERVING : HEALTH_NOT_SERVING;
}

/* Parses the call's HealthCheckRequest; on malformed bytes finishes the call
 * with INTERNAL and returns false. */
static bool health_request(bds_call *call, bool *known) {
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    if (health_service(req, len, known)) return true;
    bds_call_done(call, BDS_INTERNAL, "malformed grpc.health.v1.HealthCheckRequest");
    return false;
}

static void health_check(bds_call *call, void *ctx) {
    bds_server *server = ctx;
    bool known;
    if (!health_request(call, &known)) return;
    if (!known) {
        bds_call_done(call, BDS_NOT_FOUND, "unknown service");
        return;
    }
    uint8_t resp[2];
    health_response(health_now(server), resp);
    bds_call_reply_bytes(call, resp, sizeof resp);
    bds_call_done(call, BDS_OK, NULL);
}

/* ---- Watch -------------------------------------------------------------------------------- */

typedef struct watch {
    const bds_server *server;
    bds_call *call;
    bds_stream *stream;       /* the call's: alive while the call is not done */
    struct watch *prev, *next;
} watch;

static pthread_mutex_t watches_lock = PTHREAD_MUTEX_INITIALIZER;
static watch *watches;        /* every server's waiting Watches */

static void watch_unlink(watch *w) {
    if (w->prev) w->prev->next = w->next;
    else watches = w->next;
    if (w->next) w->next->prev = w->prev;
}

/* The Watch's stream is gone (reset, past its deadline, or finished by the
 * stop hook): it leaves the list at once and its call ends. */
static void watch_cancel(bds_call *call, void *ctx) {
    watch *w = ctx;
    pthread_mutex_lock(&watches_lock);
    watch_unlink(w);
    pthread_mutex_unlock(&watches_lock);
    free(w);
    bds_call_done(call, BDS_CANCELLED, NULL);
}

static void health_watch(bds_call *call, void *ctx) {
    bds_server *server = ctx;
    bool known;
    if (!health_request(call, &known)) return;
    uint8_t resp[2];
    health_response(known ? health_now(server) : HEALTH_SERVICE_UNKNOWN, resp);
    bds_call_reply_bytes(call, resp, sizeof resp);
    watch *w = malloc(sizeof *w);
    if (!w) {
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    *w = (watch){.server = server, .call = call, .stream = bds_call_stream(call)};
    pthread_mutex_lock(&watches_lock);
    /* The stop hook takes the lock after serving turned false: a Watch that
     * finds it still true here is on the list before the hook walks it. */
    bool serving = bds_server_serving(server);
    if (serving) {
        w->next = watches;
        if (watches) watches->prev = w;
        watches = w;
    }
    pthread_mutex_unlock(&watches_lock);
    if (!serving) { /* the stop began: the status sent was its last */
        free(w);
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    bds_call_on_cancel(call, watch_cancel, w);
}

/* The stop began: every Watch of the server hears NOT_SERVING, then its stream
 * ends OK. Each stays on the list until its call's cancel hook (the finish
 * cancels it) takes it off, so its stream lives while it is used here. */
static void health_on_stop(bds_server *server, void *ctx) {
    (void)ctx;
    uint8_t resp[2];
    health_response(HEALTH_NOT_SERVING, resp);
    pthread_mutex_lock(&watches_lock);
    for (watch *w = watches; w; w = w->next) {
        if (w->server != server) continue;
        (void)bds_stream_send(w->stream, resp, sizeof resp);
        (void)bds_stream_finish(w->stream, BDS_OK, NULL);
    }
    pthread_mutex_unlock(&watches_lock);
}

uint32_t bds__health_watches(const bds_server *server) {
    uint32_t n = 0;
    pthread_mutex_lock(&watches_lock);
    for (const watch *w = watches; w; w = w->next) n += w->server == server;
    pthread_mutex_unlock(&watches_lock);
    return n;
}

bds_status bds__health_register(bds_server *server, const bds_server_config *config) {
    bds_options fifo = config->options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    bds_method m = {.size = sizeof m,
                    .path = "/grpc.health.v1.Health/Check",
                    .handler = health_check,
                    .handler_ctx = server,
                    .options = &fifo,
                    .kind = BDS_METHOD_UNARY};
    bds_status st = bds_server_add_method(server, &m, NULL);
    m.path = "/grpc.health.v1.Health/Watch";
    m.handler = health_watch;
    m.kind = BDS_METHOD_SERVER_STREAMING;
    if (st == BDS_OK) st = bds_server_add_method(server, &m, NULL);
    if (st == BDS_OK) st = bds_server_on_stop(server, health_on_stop, NULL);
    return st;
}
