/* process.c — bidistream.v1.Pipeline/Process (docs/SERVICE.md), on the
 * public API only.
 *
 * Each Frame is echoed with the same key, seq and payload. The handler reads
 * only the fields it needs straight from the wire (no unpack, no repack):
 * when the request carries neither work_us nor fail, the reply is the
 * request's own bytes (its own buffer, even: see bds_call_reply_bytes).
 * work_us completes the call from a call timer (bds_call_after) on the key's
 * shard, so a slow message never blocks a core, and the timer fires early
 * when the stream is gone (reset, failed, past its deadline or the grace
 * period): the work ends with it instead of holding its session up to an
 * hour. fail makes the handler fail (terminal with default options). */
#include <stdlib.h>
#include <string.h>

#include "services.h"
#include "wire.h"

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
    *v = (frame_view){.key = (const uint8_t *)""};
    while (p < end) {
        uint64_t tag, x;
        if (!wire_varint(&p, end, &tag)) return false;
        /* Field numbers are 1 to 2^29 - 1: a larger one is no field (cut to 32
         * bits, 2^32 + 1 would pass for the key). */
        if (tag >> 3 == 0 || tag >> 3 > 0x1fffffffu) return false;
        uint32_t field = (uint32_t)(tag >> 3), type = (uint32_t)(tag & 7);
        switch (type) {
        case 0:
            if (field == 2) { /* seq, every message's: only skipped, never decoded */
                if (!wire_varint_skip(&p, end)) return false;
                break;
            }
            if (!wire_varint(&p, end, &x)) return false;
            if (field == 4) v->work_us = x;
            if (field == 5) v->fail = x != 0;
            v->extra = true;
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

static bool frame_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, void *ctx) {
    (void)ctx;
    frame_view v;
    if (!frame_scan(req, len, &v)) return false;
    *key = v.key;
    *key_len = v.key_len;
    return true;
}

/* Replies with the key, seq and payload of the call's Frame, scanned into v,
 * and finishes. */
static void process_reply(bds_call *call, const frame_view *v) {
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    /* SOFT_ALLOW_SIGNAL let this message run over capacity: the client hears it. */
    bool pressured = bds_call_pressured(call);
    if (!v->extra && !pressured) {
        bds_call_reply_bytes(call, req, len);
    } else {
        uint8_t *tmp = malloc(len + 2);
        if (!tmp) {
            bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
            return;
        }
        uint32_t n = frame_echo(req, len, tmp);
        if (pressured) {
            tmp[n++] = 6 << 3; /* field 6 (pressure), varint */
            tmp[n++] = 1;
        }
        bds_call_reply_bytes(call, tmp, n);
        free(tmp);
    }
    bds_call_done(call, BDS_OK, NULL);
}

/* work_us later, or at once when the stream went first. */
static void work_done(bds_call *call, void *ctx) {
    (void)ctx;
    if (bds_call_cancelled(call)) {
        bds_call_done(call, BDS_CANCELLED, NULL);
        return;
    }
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    frame_view v;
    frame_scan(req, len, &v); /* scanned before: cannot fail */
    process_reply(call, &v);
}

static void process_handler(bds_call *call, void *ctx) {
    (void)ctx;
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
    /* Simulated work: the reply is due work_us after execution starts; nothing blocks. */
    uint64_t us = v.work_us > 3600ULL * 1000000ULL ? 3600ULL * 1000000ULL : v.work_us;
    if (bds_call_after(call, us * 1000ULL, work_done, NULL) != BDS_OK)
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
}

bds_status bds__process_register(bds_server *server) {
    bds_method m = {.size = sizeof m,
                    .path = "/bidistream.v1.Pipeline/Process",
                    .handler = process_handler,
                    .key = frame_key,
                    .kind = BDS_METHOD_BIDI};
    return bds_server_add_method(server, &m, NULL);
}
