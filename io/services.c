/* services.c — the server binary's built-in services (SPEC §4).
 *
 * bidistream.v1.Pipeline/Process: each Frame is echoed with the same key, seq
 * and payload. The handler reads only the fields it needs straight from the
 * wire (no unpack, no repack): when the request carries neither work_us nor
 * fail, the reply is the request's own bytes (its own buffer, even: see
 * bds_call_reply_bytes). The key resolver's scan is the only one such a plain
 * frame gets: it leaves PROCESS_HINT_PLAIN in the message for the handler.
 * work_us completes the call from
 * a timer on the key's shard, so a slow message never blocks a core; fail
 * makes the handler fail (terminal with default options).
 *
 * grpc.health.v1.Health: Check answers SERVING (NOT_SERVING once shutdown has
 * begun; NOT_FOUND for an unknown service); Watch sends the current status and
 * then NOT_SERVING when shutdown begins, then ends. Both run through the same
 * pipeline as one-message FIFO sessions. A waiting Watch is on its shard's
 * doubly linked list, and leaves it the moment its stream is gone.
 *
 * Work never outlives its stream: a Process timer or a waiting Watch is
 * stopped and freed as soon as the session closes (bds__call_on_cancel). */
#include <stdlib.h>
#include <string.h>

#include "pipeline_int.h"
#include "server_int.h"

/* ---- protobuf wire reading ------------------------------------------------------ */

static bool wire_varint_long(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

/* Most varints here (tags, small lengths) are one byte. */
static inline bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    if (*p < end && **p < 0x80) {
        *v = *(*p)++;
        return true;
    }
    return wire_varint_long(p, end, v);
}

typedef struct frame_view {
    const uint8_t *key;
    uint32_t key_len;
    uint64_t work_us;
    bool fail;
    bool extra;                 /* fields other than key/seq/payload present */
} frame_view;

/* Scans a bidistream.v1.Frame. Returns false when the bytes are not a valid
 * protobuf message. */
static bool frame_scan(const uint8_t *p, uint32_t len, frame_view *v) {
    const uint8_t *end = p + len;
    memset(v, 0, sizeof *v);
    v->key = (const uint8_t *)"";
    while (p < end) {
        uint64_t tag, x;
        if (!wire_varint(&p, end, &tag)) return false;
        /* Field numbers are 1 to 2^29 - 1: a larger one is no field (cut to 32
         * bits, 2^32 + 1 would pass for the key). */
        if (tag >> 3 == 0 || tag >> 3 > 0x1fffffffu) return false;
        uint32_t field = (uint32_t)(tag >> 3), type = (uint32_t)(tag & 7);
        switch (type) {
        case 0:
            if (!wire_varint(&p, end, &x)) return false;
            if (field == 4) v->work_us = x;
            if (field == 5) v->fail = x != 0;
            if (field != 2) v->extra = true;
            break;
        case 1:
            if (end - p < 8) return false;
            p += 8;
            v->extra = true;
            break;
        case 2:
            if (!wire_varint(&p, end, &x) || x > (uint64_t)(end - p)) return false;
            if (field == 1) {
                v->key = p;
                v->key_len = (uint32_t)x;
            } else if (field != 3) {
                v->extra = true;
            }
            p += x;
            break;
        case 5:
            if (end - p < 4) return false;
            p += 4;
            v->extra = true;
            break;
        default: return false; /* groups (3, 4) and reserved types */
        }
    }
    return true;
}

/* Copies the key (1), seq (2) and payload (3) fields of a Frame into out. */
static uint32_t frame_echo(const uint8_t *p, uint32_t len, uint8_t *out) {
    const uint8_t *end = p + len;
    uint32_t n = 0;
    while (p < end) {
        const uint8_t *start = p;
        uint64_t tag = 0, x = 0;
        wire_varint(&p, end, &tag); /* scanned before: cannot fail */
        switch (tag & 7) {
        case 0: wire_varint(&p, end, &x); break;
        case 1: p += 8; break;
        case 2:
            wire_varint(&p, end, &x);
            p += x;
            break;
        case 5: p += 4; break;
        }
        uint64_t field = tag >> 3;
        if (field >= 1 && field <= 3) {
            memcpy(out + n, start, (size_t)(p - start));
            n += (uint32_t)(p - start);
        }
    }
    return n;
}

/* srv_msg.hint of a Process request: a valid Frame with key, seq and payload
 * only (no work_us, no fail, nothing else), to be echoed as it is. */
#define PROCESS_HINT_PLAIN 1u

static bool frame_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, uint32_t *hint) {
    frame_view v;
    if (!frame_scan(req, len, &v)) return false;
    *key = v.key;
    *key_len = v.key_len;
    *hint = v.extra ? 0 : PROCESS_HINT_PLAIN;
    return true;
}

/* Replies with the key, seq and payload of a Frame scanned into v, and finishes. */
static void process_reply(bds_call *call, const frame_view *v) {
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    if (!v->extra) {
        bds_call_reply_bytes(call, req, len);
    } else {
        uint8_t *tmp = malloc(len ? len : 1);
        if (!tmp) {
            bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
            return;
        }
        bds_call_reply_bytes(call, tmp, frame_echo(req, len, tmp));
        free(tmp);
    }
    bds_call_done(call, BDS_OK, NULL);
}

struct work_timer {
    bds_timer t;
    bds_call *call;
    frame_view v;
};

static void work_done(bds_timer *t, void *ctx) {
    (void)t;
    struct work_timer *w = ctx;
    process_reply(w->call, &w->v);
    free(w);
}

/* The stream is gone (reset, failed, past its deadline or the grace period):
 * the work ends with it instead of holding its session up to an hour. */
static void work_cancel(bds_call *call, void *ctx) {
    struct work_timer *w = ctx;
    bds__timer_cancel(bds__shard_timers(bds__shard_self()), &w->t);
    free(w);
    bds_call_done(call, BDS_CANCELLED, NULL);
}

static void process_handler(bds_call *call, void *ctx) {
    (void)ctx;
    const srv_msg *m = bds_call_payload(call);
    if (m->hint == PROCESS_HINT_PLAIN) { /* the resolver's scan said: echo it as it is */
        bds_call_reply_bytes(call, m->data, m->len);
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    frame_view v;
    if (!frame_scan(req, len, &v)) {
        bds_call_done(call, BDS_INTERNAL, "malformed bidistream.v1.Frame");
        return;
    }
    if (v.fail) {
        bds_call_done(call, BDS_INTERNAL, "frame failed as requested (fail = true)");
        return;
    }
    if (v.work_us == 0) {
        process_reply(call, &v);
        return;
    }
    /* Simulated work: the reply is due work_us after execution starts, from a
     * timer on this shard; nothing blocks. */
    bds_shard *s = bds__shard_self();
    struct work_timer *w = malloc(sizeof *w);
    if (!s || !w) {
        free(w);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    w->call = call;
    w->v = v;
    bds__timer_init(&w->t, work_done, w);
    uint64_t us = v.work_us > 3600ULL * 1000000ULL ? 3600ULL * 1000000ULL : v.work_us;
    if (bds__timer_arm(bds__shard_timers(s), &w->t, bds__shard_now(s) + us * 1000ULL) != 0) {
        free(w);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    bds__call_on_cancel(call, work_cancel, w);
}

/* ---- grpc.health.v1.Health --------------------------------------------------------- */

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

static void health_reply(bds_call *call, int status) {
    uint8_t resp[2] = {0x08, (uint8_t)status};
    bds_call_reply_bytes(call, resp, sizeof resp);
}

static int health_now(void) {
    srv_shard *sh = bds__server_shard_self();
    return sh && atomic_load(&sh->srv->serving) ? HEALTH_SERVING : HEALTH_NOT_SERVING;
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
    (void)ctx;
    bool known;
    if (!health_request(call, &known)) return;
    if (!known) {
        bds_call_done(call, BDS_NOT_FOUND, "unknown service");
        return;
    }
    health_reply(call, health_now());
    bds_call_done(call, BDS_OK, NULL);
}

static void watch_unlink(srv_shard *sh, srv_watch *w) {
    if (w->prev) w->prev->next = w->next;
    else sh->watches = w->next;
    if (w->next) w->next->prev = w->prev;
    atomic_fetch_sub_explicit(&sh->n_watches, 1, memory_order_relaxed);
}

/* The Watch's stream is gone: it leaves the shard's list at once. */
static void watch_cancel(bds_call *call, void *ctx) {
    srv_watch *w = ctx;
    watch_unlink(bds__server_shard_self(), w);
    free(w);
    bds_call_done(call, BDS_CANCELLED, NULL);
}

static void health_watch(bds_call *call, void *ctx) {
    (void)ctx;
    bool known;
    if (!health_request(call, &known)) return;
    srv_shard *sh = bds__server_shard_self();
    health_reply(call, known ? health_now() : HEALTH_SERVICE_UNKNOWN);
    srv_watch *w = malloc(sizeof *w);
    if (!sh || !w || sh->stopping) {
        free(w);
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    w->call = call;
    w->prev = NULL;
    w->next = sh->watches;
    if (sh->watches) sh->watches->prev = w;
    sh->watches = w;
    atomic_fetch_add_explicit(&sh->n_watches, 1, memory_order_relaxed);
    bds__call_on_cancel(call, watch_cancel, w);
}

uint32_t bds__server_watches(bds_server *srv) {
    /* Published once every shard started: their srv_shards are there. */
    if (!atomic_load(&srv->live_group)) return UINT32_MAX;
    uint32_t n = 0;
    for (uint32_t i = 0; i < srv->n_shards; i++)
        if (srv->shards[i]) n += atomic_load_explicit(&srv->shards[i]->n_watches, memory_order_relaxed);
    return n;
}

/* Shutdown: every Watch hears NOT_SERVING, then ends OK. */
void bds__services_on_stop(srv_shard *sh) {
    while (sh->watches) {
        srv_watch *w = sh->watches;
        watch_unlink(sh, w);
        health_reply(w->call, HEALTH_NOT_SERVING);
        bds_call_done(w->call, BDS_OK, NULL);
        free(w);
    }
}

bds_status bds__services_register(bds_server *srv) {
    bds_options fifo = srv->cfg.options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    bds_method m = {.size = sizeof m, .path = "/bidistream.v1.Pipeline/Process", .handler = process_handler};
    bds_status st = bds__server_add_method_hint(srv, &m, frame_key);
    m = (bds_method){.size = sizeof m, .path = "/grpc.health.v1.Health/Check", .handler = health_check,
                     .options = &fifo};
    if (st == BDS_OK) st = bds_server_add_method(srv, &m, NULL);
    m.path = "/grpc.health.v1.Health/Watch";
    m.handler = health_watch;
    if (st == BDS_OK) st = bds_server_add_method(srv, &m, NULL);
    if (st == BDS_OK && srv->cfg.interop_service) st = bds__interop_register(srv);
    return st;
}
