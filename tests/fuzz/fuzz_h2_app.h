/* fuzz_h2_app.h — the application side of a fuzzed HTTP/2 server session
 * (proto/h2_server.h), shared by fuzz_h2_raw and fuzz_h2_client.
 *
 * It behaves like the server (io/server_stream.c), driven by the fuzz input: each call gets a
 * behaviour when it starts (echo by copy, by reference or framed; consume at
 * once or later; finish after some messages, at half-close, or never; add
 * metadata), and between reads the driver lets the app act (consume what it
 * owes, finish calls, send, shut down). The session's contract is checked
 * from the outside:
 *   - exactly one of {finish by the app, on_reset, on_call_error} ends a call,
 *     and no callback names a call after that;
 *   - every message queued by reference comes back once, and all have come
 *     back after bds__h2_destroy;
 *   - bytes handed out by bds__h2_output stay unchanged until advanced, and
 *     advancing never goes past them;
 *   - bds__h2_consume never credits more than asked. */
#ifndef BDS_FUZZ_H2_APP_H
#define BDS_FUZZ_H2_APP_H

#include "fuzz_common.h"
#include "h2_server.h"

#define APP_CALLS 64
#define APP_REFS 32
#define APP_REF_BYTES 512

static const char *const app_paths[] = {"/bidistream.v1.Pipeline/Process", "/grpc.health.v1.Health/Check",
                                        "/grpc.testing.TestService/FullDuplexCall"};
static const bds__grpc_methods app_methods = {app_paths, 3};

enum {
    B_ECHO_COPY = 1u << 0,   /* send each message back with bds__h2_send_msg   */
    B_ECHO_REF = 1u << 1,    /* ... with bds__h2_send_ref / send_framed         */
    B_LAZY_CONSUME = 1u << 2,/* consume at app ticks, not in on_message         */
    B_FINISH_EARLY = 1u << 3,/* finish after the first message                  */
    B_FINISH_HALF = 1u << 4, /* finish OK at half-close                         */
    B_METADATA = 1u << 5,    /* add metadata at start and before finishing      */
    B_FAIL_STATUS = 1u << 6, /* finish with a non-OK status and a message       */
    B_REFUSE = 1u << 7,      /* on_call_start refuses                            */
};

typedef struct app_call {
    bool live;
    int32_t id;
    uint8_t behave;
    uint32_t msgs;
    uint64_t owed; /* wire bytes delivered and not yet consumed by the app */
} app_call;

typedef struct app_ref {
    bds__h2_msg node;
    bool in_session;
    uint8_t wire[5 + APP_REF_BYTES];
} app_ref;

typedef struct app {
    bds__h2_session *h2;
    app_call calls[APP_CALLS];
    app_ref refs[APP_REFS];
    uint64_t rng;           /* behaviours, from the input's seed */
    /* The output handed out and not yet advanced: a copy to compare. */
    const uint8_t *out_p;
    size_t out_len;
    uint8_t *out_copy;
    size_t out_copy_cap;
    uint64_t started, ended;
    uint32_t msg_max; /* the session's msg_bytes_max: no message, decompressed or not, is longer */
    bool failed; /* bds__h2_recv or _output said the session failed: it is read no more */
} app;

static app_call *app_call_check(app *a, void *call_ctx, int32_t id) {
    app_call *c = call_ctx;
    FUZZ_CHECK(c >= a->calls && c < a->calls + APP_CALLS, "call_ctx %p is not ours", call_ctx);
    FUZZ_CHECK(c->live, "stream %d: a callback after the call ended", id);
    FUZZ_CHECK(c->id == id, "call_ctx of stream %d given for stream %d", c->id, id);
    return c;
}

static void app_call_end(app *a, app_call *c) {
    c->live = false;
    a->ended++;
}

static app_ref *app_ref_get(app *a) {
    for (int i = 0; i < APP_REFS; i++) {
        if (!a->refs[i].in_session) return &a->refs[i];
    }
    return NULL;
}

/* Sends len bytes of msg back on c, the way its behaviour says. */
static void app_send(app *a, app_call *c, const uint8_t *msg, size_t len) {
    bds_status st;
    if ((c->behave & B_ECHO_REF) && len <= APP_REF_BYTES) {
        app_ref *r = app_ref_get(a);
        if (!r) return;
        memcpy(r->wire + 5, msg, len);
        uint64_t how = fuzz_rand(&a->rng);
        bool framed = how & 1, compressed = false;
        if (framed && (how & 2)) { /* "compressed" bytes: the session only flags them */
            bds__grpc_enc want = (how & 4) ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
            compressed = bds__h2_response_encoding(a->h2, c->id, want) != BDS__GRPC_ENC_IDENTITY;
        }
        st = framed ? bds__h2_send_framed(a->h2, c->id, &r->node, r->wire, len, compressed)
                    : bds__h2_send_ref(a->h2, c->id, &r->node, r->wire + 5, len);
        if (st == BDS_OK) r->in_session = true;
    } else {
        st = bds__h2_send_msg(a->h2, c->id, msg, len);
    }
    /* A failed session takes no more sends; abort_calls still ends the calls. */
    FUZZ_CHECK(st == BDS_OK || st == BDS_E_AGAIN || st == BDS_E_NOMEM || (st == BDS_E_SESSION_CLOSED && a->failed),
               "send on a live call: %d", (int)st);
}

static void app_finish(app *a, app_call *c) {
    if (c->behave & B_METADATA) {
        static const uint8_t v[] = "dHJhaWxlcg==";
        bds_status st = bds__h2_add_metadata(a->h2, c->id, true, "x-trailer-bin", v, sizeof v - 1);
        FUZZ_CHECK(st == BDS_OK || st == BDS_E_INVALID || st == BDS_E_NOMEM || (st == BDS_E_SESSION_CLOSED && a->failed),
                   "trailer metadata: %d", (int)st);
    }
    bds_status status = BDS_OK;
    const char *msg = NULL;
    if (c->behave & B_FAIL_STATUS) {
        static const bds_status codes[] = {BDS_INTERNAL, BDS_RESOURCE_EXHAUSTED, BDS_UNAVAILABLE, BDS_CANCELLED,
                                           BDS_E_AGAIN, BDS_E_NOMEM};
        status = codes[fuzz_rand(&a->rng) % (sizeof codes / sizeof codes[0])];
        msg = "failed \xff\x01 100%";
    }
    bds_status st = bds__h2_finish(a->h2, c->id, status, msg);
    /* A failed session may have dropped its calls; abort_calls still tells. */
    if (st == BDS_E_SESSION_CLOSED && a->failed) return;
    FUZZ_CHECK(st == BDS_OK, "finish of a live call: %d", (int)st);
    FUZZ_CHECK(bds__h2_finish(a->h2, c->id, BDS_OK, NULL) != BDS_OK, "finished twice");
    app_call_end(a, c);
}

static bds_status app_on_call_start(void *ctx, const bds__h2_call_info *info, void **call_ctx) {
    app *a = ctx;
    FUZZ_CHECK(info->stream_id > 0 && (info->stream_id & 1), "client stream id %d", info->stream_id);
    FUZZ_CHECK(info->method_index < app_methods.count, "method %u", info->method_index);
    for (int i = 0; i < APP_CALLS; i++) {
        FUZZ_CHECK(!a->calls[i].live || a->calls[i].id != info->stream_id, "stream %d started twice",
                   info->stream_id);
    }
    /* The captured metadata walks to its end in bounded entries, within the cap. */
    FUZZ_CHECK(info->captured_len <= 4096, "captured %u bytes", info->captured_len);
    size_t off = 0;
    bds__h2_header h;
    uint32_t entries = 0;
    while (bds__h2_captured_next(info->captured, info->captured_len, &off, &h)) {
        FUZZ_CHECK(h.name_len > 0 && off <= info->captured_len, "captured entry %u", entries);
        entries++;
    }
    FUZZ_CHECK(off == info->captured_len, "captured blob walked to %zu of %u", off, info->captured_len);
    uint8_t behave = (uint8_t)fuzz_rand(&a->rng);
    if (behave & B_REFUSE && (behave & 3) == 3) return BDS_RESOURCE_EXHAUSTED;
    app_call *c = NULL;
    for (int i = 0; i < APP_CALLS && !c; i++) {
        if (!a->calls[i].live) c = &a->calls[i];
    }
    if (!c) return BDS_RESOURCE_EXHAUSTED; /* out of call slots, as the server does */
    *c = (app_call){.live = true, .id = info->stream_id, .behave = behave & (uint8_t)~B_REFUSE};
    *call_ctx = c;
    a->started++;
    /* Calls on the stream from inside on_call_start: the call does not exist yet. */
    FUZZ_CHECK(bds__h2_send_msg(a->h2, info->stream_id, "x", 1) == BDS_E_SESSION_CLOSED,
               "send inside on_call_start");
    return BDS_OK;
}

static void app_on_message(void *ctx, void *call_ctx, int32_t id, const uint8_t *msg, size_t len,
                           uint32_t wire_bytes, bool compressed) {
    app *a = ctx;
    app_call *c = app_call_check(a, call_ctx, id);
    FUZZ_CHECK(msg != NULL || len == 0, "NULL message");
    FUZZ_CHECK(compressed || wire_bytes <= len + 5, "wire bytes %u for %zu", wire_bytes, len);
    FUZZ_CHECK(len <= a->msg_max, "a message of %zu bytes past the limit %u", len, a->msg_max);
    c->msgs++;
    if (c->behave & B_METADATA && c->msgs == 1) {
        static const uint8_t v[] = "initial";
        bds__h2_add_metadata(a->h2, id, false, "x-grpc-test-echo-initial", v, sizeof v - 1);
    }
    if (c->behave & B_LAZY_CONSUME) {
        c->owed += wire_bytes;
    } else {
        FUZZ_CHECK(bds__h2_consume(a->h2, id, wire_bytes) <= wire_bytes, "credited more than asked");
    }
    if (c->behave & (B_ECHO_COPY | B_ECHO_REF)) app_send(a, c, msg, len);
    if (c->behave & B_FINISH_EARLY) app_finish(a, c);
}

static void app_on_half_close(void *ctx, void *call_ctx, int32_t id) {
    app *a = ctx;
    app_call *c = app_call_check(a, call_ctx, id);
    if (c->behave & B_FINISH_HALF) app_finish(a, c);
}

static void app_on_reset(void *ctx, void *call_ctx, int32_t id, bds_status status, uint32_t h2_error) {
    (void)status;
    (void)h2_error;
    app *a = ctx;
    app_call_end(a, app_call_check(a, call_ctx, id));
}

static void app_on_call_error(void *ctx, void *call_ctx, int32_t id, bds_status status, int http_status) {
    (void)http_status;
    app *a = ctx;
    FUZZ_CHECK(status != BDS_OK, "call error with OK");
    if (call_ctx == NULL) return; /* refused at its headers */
    app_call_end(a, app_call_check(a, call_ctx, id));
}

static void app_on_msg_release(void *ctx, bds__h2_msg *msg) {
    app *a = ctx;
    app_ref *r = (app_ref *)msg;
    FUZZ_CHECK(r >= a->refs && r < a->refs + APP_REFS, "released a node that is not ours");
    FUZZ_CHECK(r->in_session, "node released twice");
    r->in_session = false;
}

static const bds__h2_callbacks app_callbacks = {
    .on_call_start = app_on_call_start,
    .on_message = app_on_message,
    .on_half_close = app_on_half_close,
    .on_reset = app_on_reset,
    .on_call_error = app_on_call_error,
    .on_msg_release = app_on_msg_release,
};

/* A session config from one byte: the knobs the server turns, and small
 * bounds so that limits are reachable. */
static void app_config(bds__h2_config *cfg, uint8_t sel) {
    bds__h2_config_default(cfg);
    cfg->methods = &app_methods;
    cfg->credit_partial_messages = sel & 1;
    cfg->conn_credit_on_receipt = !(sel & 2);
    if (sel & 4) {
        cfg->stream_window_bytes = 1024;
        cfg->msg_bytes_max = 4096;
        cfg->out_buf_bytes = 1024;
        cfg->stream_send_bytes_max = 2048;
        cfg->header_list_bytes_max = 1024;
    }
    if (sel & 8) {
        cfg->capture_metadata = true;
        cfg->capture_bytes_max = (sel & 4) ? 16 : 4096;
    }
    if (sel & 16) {
        cfg->max_concurrent_streams = 4;
        cfg->glitch_burst = 20;
        cfg->glitch_rate_per_sec = 1;
    }
}

static void app_init(app *a, uint64_t seed) {
    memset(a, 0, sizeof *a);
    a->rng = seed;
}

/* Takes output: checks that what was handed out last time is still there,
 * unchanged and at the same address (nothing was advanced since), lets the
 * "socket" take `take` bytes (0: the socket is full), then hands out the rest
 * again and keeps a copy to check next time. */
static void app_output(app *a, size_t take, void (*sink)(void *ctx, const uint8_t *p, size_t n), void *sink_ctx) {
    if (a->out_len > 0) FUZZ_CHECK(memcmp(a->out_p, a->out_copy, a->out_len) == 0, "output changed before advance");
    const uint8_t *p;
    size_t len;
    bds_status st = bds__h2_output(a->h2, &p, &len);
    FUZZ_CHECK(st == BDS_OK || st == BDS_UNAVAILABLE, "output: %d", (int)st);
    if (st != BDS_OK) a->failed = true;
    if (a->out_len > 0) {
        FUZZ_CHECK(p == a->out_p && len >= a->out_len, "unsent output moved (%zu of %zu bytes)", len, a->out_len);
    }
    if (take > len) take = len;
    if (take > 0 && sink) sink(sink_ctx, p, take);
    bds__h2_output_advance(a->h2, take);
    bds__h2_output(a->h2, &p, &len);
    if (a->out_copy_cap < len) {
        a->out_copy = realloc(a->out_copy, len);
        FUZZ_CHECK(a->out_copy != NULL, "oom");
        a->out_copy_cap = len;
    }
    a->out_p = p;
    a->out_len = len;
    if (len > 0) memcpy(a->out_copy, p, len);
}

/* The app acts between reads: pays what it owes, finishes or sends on some calls. */
static void app_tick(app *a, uint8_t what) {
    for (int i = 0; i < APP_CALLS; i++) {
        app_call *c = &a->calls[i];
        if (!c->live) continue;
        if (c->owed > 0 && (what & 1)) {
            size_t n = bds__h2_consume(a->h2, c->id, (size_t)c->owed);
            FUZZ_CHECK(n <= c->owed, "credited %zu of %llu", n, (unsigned long long)c->owed);
            c->owed = 0;
        }
        uint64_t r = fuzz_rand(&a->rng);
        if ((what & 2) && (r & 3) == 0) {
            static const uint8_t reply[64] = {0x0a, 0x01, 'k'};
            app_send(a, c, reply, (r >> 8) % sizeof reply);
        }
        if ((what & 4) && (r & 12) == 0) app_finish(a, c);
    }
    if (what & 8) bds__h2_shutdown_notice(a->h2);
    if (what & 16) bds__h2_goaway(a->h2, BDS_H2_NO_ERROR);
    if ((what & 0xe0) == 0xe0) bds__h2_terminate(a->h2, BDS_H2_ENHANCE_YOUR_CALM);
}

/* The connection goes away: every live call is told, then everything is freed
 * and every reference node comes back. */
static void app_close(app *a) {
    if (getenv("BDS_FUZZ_TRACE")) {
        const bds__h2_stats *st = bds__h2_get_stats(a->h2);
        fprintf(stderr, "server: started %llu, refused %llu, failed %llu, reset %llu, glitches %llu, calmed %d, "
                        "nghttp2 fatal %d\n",
                (unsigned long long)st->calls_started, (unsigned long long)st->calls_refused,
                (unsigned long long)st->calls_failed, (unsigned long long)st->calls_reset,
                (unsigned long long)st->glitches, st->calmed, st->nghttp2_fatal);
    }
    bds__h2_abort_calls(a->h2, BDS_UNAVAILABLE);
    for (int i = 0; i < APP_CALLS; i++) FUZZ_CHECK(!a->calls[i].live, "call %d outlived abort_calls", a->calls[i].id);
    FUZZ_CHECK(a->started == a->ended, "%llu calls started, %llu ended", (unsigned long long)a->started,
               (unsigned long long)a->ended);
    bds__h2_destroy(a->h2);
    for (int i = 0; i < APP_REFS; i++) FUZZ_CHECK(!a->refs[i].in_session, "a reference node never came back");
    free(a->out_copy);
    a->out_copy = NULL;
}

#endif
