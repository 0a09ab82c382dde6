/* test_h2_abuse.c — known HTTP/2 floods and malformed input against the gRPC
 * server session, crafted as raw client bytes: rapid reset, CONTINUATION,
 * SETTINGS, PING, empty DATA, tiny WINDOW_UPDATE and PRIORITY floods, too many
 * streams, bad preface, random garbage. Each ends with the connection
 * terminated or limited and the process alive (ASan/UBSan watching). */
#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"

static struct h H;
static struct tbuf IN;

static void fini(void) {
    h_fini(&H);
    tbuf_free(&IN);
}

/* The connection ended: the session reported a fatal error, or it sent a
 * GOAWAY with |want| (or any code when want < 0) and has nothing left to do. */
static void assert_ended(int64_t want) {
    int64_t code = raw_find_goaway(&H.raw_out);
    if (H.last_recv == BDS_UNAVAILABLE) {
        cr_assert(bds__h2_is_done(H.app.h2));
        return;
    }
    cr_assert_neq(code, -1, "no GOAWAY in %zu output bytes", H.raw_out.len);
    if (want >= 0) cr_assert_eq(code, want, "GOAWAY code %lld", (long long)code);
}

static void flood(uint8_t type, uint8_t flags, int32_t sid, const void *payload, size_t len,
                  int count) {
    for (int i = 0; i < count; i++) raw_frame(&IN, type, flags, sid, payload, len);
}

static void headers_frame(nghttp2_hd_deflater *d, int32_t sid, uint8_t flags) {
    uint8_t block[512];
    size_t n = raw_request_block(d, PIPE, block, sizeof block);
    raw_frame(&IN, NGHTTP2_HEADERS, (uint8_t)(flags | NGHTTP2_FLAG_END_HEADERS), sid, block, n);
}

/* ---- rapid reset ---------------------------------------------------------------- */

Test(h2_abuse, rapid_reset_flood_terminates_connection, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    uint8_t cancel[4] = {0, 0, 0, NGHTTP2_CANCEL};
    for (int i = 0; i < 3000; i++) {
        headers_frame(d, 1 + 2 * i, 0);
        raw_frame(&IN, NGHTTP2_RST_STREAM, 0, 1 + 2 * i, cancel, 4);
    }
    nghttp2_hd_deflate_del(d);
    h_feed_raw(&H, &IN, 16384);
    assert_ended(-1);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->calmed);
    cr_assert_leq(st->calls_started, 501, "started %llu", (unsigned long long)st->calls_started);
    cr_assert(bds__h2_is_done(H.app.h2));
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
    cr_assert_eq(H.app.resets, H.app.ncalls, "every started call was reset exactly once");
}

/* With our glitch bucket out of the way, nghttp2's own (Debian-backported)
 * stream_reset_rate_limit must stop the flood. */
Test(h2_abuse, rapid_reset_stopped_by_nghttp2_reset_limit_alone, .fini = fini) {
    if (!(bds__h2_nghttp2_features() & BDS_H2_FEAT_STREAM_RESET_RATE_LIMIT))
        cr_skip_test("nghttp2 lacks nghttp2_option_set_stream_reset_rate_limit");
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.glitch_burst = 1000000;
    cfg.reset_burst = 100;
    cfg.reset_rate_per_sec = 1;
    h_init(&H, &cfg);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    uint8_t cancel[4] = {0, 0, 0, NGHTTP2_CANCEL};
    for (int i = 0; i < 1000; i++) {
        headers_frame(d, 1 + 2 * i, 0);
        raw_frame(&IN, NGHTTP2_RST_STREAM, 0, 1 + 2 * i, cancel, 4);
    }
    nghttp2_hd_deflate_del(d);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed);
    cr_assert_neq(raw_find_goaway(&H.raw_out), -1, "nghttp2 sent GOAWAY");
    cr_assert_lt(bds__h2_get_stats(H.app.h2)->calls_started, 1000);
}

/* ---- CONTINUATION ---------------------------------------------------------------- */

/* The last frame of the server's output must be a GOAWAY with |code| and
 * |last_id|, ending the bytes exactly (nothing may follow a connection error). */
static void assert_last_frame_goaway(uint32_t code, int32_t last_id) {
    const struct tbuf *out = &H.raw_out;
    size_t off = 0, last = SIZE_MAX;
    while (out->len - off >= 9) {
        size_t len = (size_t)out->p[off] << 16 | (size_t)out->p[off + 1] << 8 | out->p[off + 2];
        cr_assert_leq(9 + len, out->len - off, "a cut frame at %zu", off);
        last = off;
        off += 9 + len;
    }
    cr_assert_eq(off, out->len, "stray bytes after the last frame");
    cr_assert_neq(last, SIZE_MAX, "no output at all");
    const uint8_t want[17] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0,
                              (uint8_t)(last_id >> 24), (uint8_t)(last_id >> 16),
                              (uint8_t)(last_id >> 8), (uint8_t)last_id,
                              (uint8_t)(code >> 24), (uint8_t)(code >> 16), (uint8_t)(code >> 8),
                              (uint8_t)code};
    cr_assert_eq(out->len - last, sizeof want, "last frame type %u, %zu bytes", out->p[last + 3],
                 out->len - last);
    cr_assert_arr_eq(out->p + last, want, sizeof want, "GOAWAY(code %u, last id %d) expected",
                     code, last_id);
}

/* Drains the server's output into H.raw_out until it has nothing more. */
static void drain_output(void) {
    for (int i = 0; i < 100; i++) {
        const uint8_t *o;
        size_t olen;
        bds__h2_output(H.app.h2, &o, &olen);
        if (olen == 0) return;
        tbuf_put(&H.raw_out, o, olen);
        bds__h2_output_advance(H.app.h2, olen);
    }
    cr_assert_fail("output never ran dry");
}

/* A request header block with a 3000-byte header, cut into |pieces| frames,
 * on stream |sid|. */
static void continuation_request_on(int pieces, int32_t sid) {
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    static char pad[3000];
    memset(pad, 'q', sizeof pad);
    nghttp2_nv nv[] = {
        NV(":method", "POST"), NV(":scheme", "http"), NV(":path", PIPE),
        NV(":authority", "localhost"), NV("content-type", "application/grpc"),
        NV("te", "trailers"),
        {(uint8_t *)"x-pad", (uint8_t *)pad, 5, sizeof pad, NGHTTP2_NV_FLAG_NO_INDEX},
    };
    static uint8_t block[8192];
    ssize_t n = nghttp2_hd_deflate_hd(d, block, sizeof block, nv, sizeof nv / sizeof nv[0]);
    cr_assert_gt(n, 0);
    nghttp2_hd_deflate_del(d);
    size_t per = (size_t)n / (size_t)pieces + 1;
    size_t off = 0;
    for (int i = 0; i < pieces && off < (size_t)n; i++) {
        size_t k = (size_t)n - off < per ? (size_t)n - off : per;
        bool last = off + k == (size_t)n;
        uint8_t type = i == 0 ? NGHTTP2_HEADERS : NGHTTP2_CONTINUATION;
        raw_frame(&IN, type, last ? NGHTTP2_FLAG_END_HEADERS : 0, sid, block + off, k);
        off += k;
    }
}

static void continuation_request(int pieces) { continuation_request_on(pieces, 1); }

Test(h2_abuse, continuation_flood_is_cut_off, .fini = fini) {
    if (!(bds__h2_nghttp2_features() & BDS_H2_FEAT_MAX_CONTINUATIONS))
        cr_skip_test("nghttp2 lacks nghttp2_option_set_max_continuations");
    h_init(&H, NULL);
    raw_preface(&IN);
    continuation_request(40);
    h_feed_raw(&H, &IN, 65536);
    cr_assert_eq(H.app.ncalls, 0);
    cr_assert_eq(H.last_recv, BDS_UNAVAILABLE, "nghttp2: too many CONTINUATIONs is fatal");
    cr_assert_neq(bds__h2_get_stats(H.app.h2)->nghttp2_fatal, 0);
    cr_assert(bds__h2_is_done(H.app.h2));
    /* nghttp2 writes nothing after a fatal error: the session's own GOAWAY
     * tells the client why (docs/SERVICE.md), naming stream 1, whose headers began. */
    assert_last_frame_goaway(NGHTTP2_ENHANCE_YOUR_CALM, 1);
    cr_assert_not(bds__h2_want_write(H.app.h2));
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->goaways_sent[NGHTTP2_ENHANCE_YOUR_CALM], 1,
                 "the hand-written GOAWAY is counted too (metrics)");
}

/* A call with |msg_len| bytes echoed on stream 1, then a CONTINUATION flood on
 * stream 3, fed without any output in between; the server's output buffer
 * holds |cap| bytes. */
static void echo_then_continuation_flood(uint32_t cap, size_t msg_len, bool flood) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.out_buf_bytes = cap;
    h_init(&H, &cfg);
    H.app.echo = true;
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    static uint8_t msg[5 + 8192];
    cr_assert_leq(msg_len, 8192);
    msg[1] = (uint8_t)(msg_len >> 24), msg[2] = (uint8_t)(msg_len >> 16);
    msg[3] = (uint8_t)(msg_len >> 8), msg[4] = (uint8_t)msg_len;
    raw_frame(&IN, NGHTTP2_DATA, 0, 1, msg, 5 + msg_len);
    cr_assert_eq(bds__h2_recv(H.app.h2, IN.p, IN.len, 0), BDS_OK);
    tbuf_free(&IN);
    if (!flood) return;
    continuation_request_on(40, 3);
}

/* The GOAWAY of a failed session waits for room in a full output buffer and
 * comes after the frames already there. */
Test(h2_abuse, fatal_goaway_waits_for_room_in_a_full_output_buffer, .fini = fini) {
    if (!(bds__h2_nghttp2_features() & BDS_H2_FEAT_MAX_CONTINUATIONS))
        cr_skip_test("nghttp2 lacks nghttp2_option_set_max_continuations");
    /* Where the reply's DATA frame starts in the output, with a roomy buffer. */
    echo_then_continuation_flood(256u * 1024u, 1000, false);
    const uint8_t *o;
    size_t olen;
    bds__h2_output(H.app.h2, &o, &olen);
    size_t off = 0, data_at = SIZE_MAX;
    while (olen - off >= 9 && data_at == SIZE_MAX) {
        if (o[off + 3] == NGHTTP2_DATA) data_at = off;
        off += 9 + ((size_t)o[off] << 16 | (size_t)o[off + 1] << 8 | o[off + 2]);
    }
    cr_assert_neq(data_at, SIZE_MAX);
    fini();
    memset(&H, 0, sizeof H);
    /* Again with a buffer that the same frames leave 10 bytes short of full. */
    uint32_t cap = (uint32_t)(data_at + 9 + 5 + 1000 + 10);
    echo_then_continuation_flood(cap, 1000, true);
    bds__h2_output(H.app.h2, &o, &olen);
    cr_assert_eq(olen, cap - 10u, "the reply's frames fill the buffer");
    cr_assert_eq(bds__h2_recv(H.app.h2, IN.p, IN.len, 0), BDS_UNAVAILABLE);
    cr_assert_eq(bds__h2_output(H.app.h2, &o, &olen), BDS_UNAVAILABLE);
    cr_assert_eq(olen, cap - 10u, "no room for the GOAWAY yet");
    cr_assert(bds__h2_want_write(H.app.h2));
    tbuf_put(&H.raw_out, o, olen);
    bds__h2_output_advance(H.app.h2, olen);
    cr_assert(bds__h2_want_write(H.app.h2), "the GOAWAY is still due");
    cr_assert_not(bds__h2_is_done(H.app.h2));
    drain_output();
    assert_last_frame_goaway(NGHTTP2_ENHANCE_YOUR_CALM, 3);
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_DATA), 1, "the reply went first");
    cr_assert(bds__h2_is_done(H.app.h2));
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* A frame larger than the whole output buffer leaves it cut: no GOAWAY can
 * follow, and the session is done once the cut bytes are out. */
Test(h2_abuse, no_goaway_after_a_cut_frame, .fini = fini) {
    if (!(bds__h2_nghttp2_features() & BDS_H2_FEAT_MAX_CONTINUATIONS))
        cr_skip_test("nghttp2 lacks nghttp2_option_set_max_continuations");
    echo_then_continuation_flood(1024, 5000, true);
    const uint8_t *o;
    size_t olen;
    bds__h2_output(H.app.h2, &o, &olen); /* SETTINGS, WINDOW_UPDATE, HEADERS */
    tbuf_put(&H.raw_out, o, olen);
    bds__h2_output_advance(H.app.h2, olen);
    bds__h2_output(H.app.h2, &o, &olen); /* the first 1024 bytes of the DATA frame */
    cr_assert_eq(olen, 1024u);
    cr_assert_eq(o[3], NGHTTP2_DATA);
    cr_assert_eq(bds__h2_recv(H.app.h2, IN.p, IN.len, 0), BDS_UNAVAILABLE);
    bds__h2_output(H.app.h2, &o, &olen);
    cr_assert_eq(olen, 1024u, "the cut frame's bytes, nothing after them");
    bds__h2_output_advance(H.app.h2, olen);
    cr_assert_not(bds__h2_want_write(H.app.h2));
    cr_assert(bds__h2_is_done(H.app.h2));
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* The last-stream-ids of every GOAWAY in the server's output, in order. */
static int goaway_ids(int32_t *ids, int cap) {
    const struct tbuf *out = &H.raw_out;
    int n = 0;
    for (size_t off = 0; out->len - off >= 9;) {
        size_t len = (size_t)out->p[off] << 16 | (size_t)out->p[off + 1] << 8 | out->p[off + 2];
        cr_assert_leq(9 + len, out->len - off, "a cut frame at %zu", off);
        if (out->p[off + 3] == NGHTTP2_GOAWAY && len >= 8) {
            const uint8_t *p = out->p + off + 9;
            cr_assert_lt(n, cap);
            ids[n++] = (int32_t)((uint32_t)(p[0] & 0x7f) << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
        }
        off += 9 + len;
    }
    return n;
}

/* A GOAWAY queued before stream 1 arrived (last id 0), then stream 1, then
 * |second| queues another GOAWAY before any output. */
static void goaway_then_stream_then(void (*second)(void)) {
    h_init(&H, NULL);
    raw_preface(&IN);
    h_feed_raw(&H, &IN, 65536);
    IN.len = 0;
    cr_assert_eq(bds__h2_goaway(H.app.h2, BDS_H2_NO_ERROR), BDS_OK);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    cr_assert_eq(bds__h2_recv(H.app.h2, IN.p, IN.len, 0), BDS_OK);
    cr_assert_eq(H.app.ncalls, 1, "stream 1 processed: the GOAWAY has not left yet");
    second();
    H.raw_out.len = 0;
    drain_output();
    int32_t ids[8];
    int n = goaway_ids(ids, 8);
    cr_assert_geq(n, 1, "no GOAWAY");
    cr_assert_eq(ids[0], 0);
    for (int i = 1; i < n; i++) {
        cr_assert_leq(ids[i], ids[i - 1], "GOAWAY %d raises the last stream id from %d to %d", i, ids[i - 1],
                      ids[i]);
    }
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

static void second_terminate(void) { bds__h2_terminate(H.app.h2, BDS_H2_ENHANCE_YOUR_CALM); }
static void second_goaway(void) { bds__h2_goaway(H.app.h2, BDS_H2_NO_ERROR); }
static void second_notice(void) { bds__h2_shutdown_notice(H.app.h2); }

static void second_calm(void) {
    uint8_t ping[8] = {0};
    IN.len = 0;
    flood(NGHTTP2_PING, 0, 0, ping, sizeof ping, (int)H.cfg.glitch_burst + 10);
    bds__h2_recv(H.app.h2, IN.p, IN.len, 0);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
}

/* Found by tests/fuzz/fuzz_h2_client: nghttp2 bounds a GOAWAY's last-stream-id
 * by the last one it SENT, so a GOAWAY queued after another that had not left
 * yet could raise it (0, then 1). RFC 9113 §6.8 forbids that, and nghttp2's
 * own client answers it with PROTOCOL_ERROR. Every way the session queues a
 * GOAWAY: the app's terminate, goaway and notice, and the flood calm. */
Test(h2_abuse, goaway_after_terminate_never_raises_the_last_stream_id, .fini = fini) {
    goaway_then_stream_then(second_terminate);
}

Test(h2_abuse, goaway_after_goaway_never_raises_the_last_stream_id, .fini = fini) {
    goaway_then_stream_then(second_goaway);
}

Test(h2_abuse, notice_after_goaway_never_raises_the_last_stream_id, .fini = fini) {
    goaway_then_stream_then(second_notice);
}

Test(h2_abuse, calm_after_goaway_never_raises_the_last_stream_id, .fini = fini) {
    goaway_then_stream_then(second_calm);
}

Test(h2_abuse, a_few_continuations_are_fine, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    continuation_request(5);
    h_feed_raw(&H, &IN, 65536);
    cr_assert_eq(H.last_recv, BDS_OK);
    cr_assert_eq(H.app.ncalls, 1);
}

/* ---- SETTINGS, PING, empty DATA, WINDOW_UPDATE, PRIORITY --------------------------- */

Test(h2_abuse, settings_flood_terminates_with_enhance_your_calm, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    flood(NGHTTP2_SETTINGS, 0, 0, NULL, 0, 5000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_leq(raw_count(&H.raw_out, NGHTTP2_SETTINGS), 502, "ACKs stop at the limit");
    cr_assert(bds__h2_is_done(H.app.h2));
}

/* A SETTINGS ACK re-cuts capped stream windows (h2_settings_acked), so ACKs
 * nobody asked for must not reach it: the first answers our SETTINGS, the
 * next is a connection error. */
Test(h2_abuse, settings_acks_nobody_asked_for_end_the_connection, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    flood(NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, NULL, 0, 1000);
    h_feed_raw(&H, &IN, 16384);
    assert_ended(NGHTTP2_PROTOCOL_ERROR);
    cr_assert(bds__h2_is_done(H.app.h2));
}

Test(h2_abuse, ping_flood_terminates_with_enhance_your_calm, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 5000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_leq(raw_count(&H.raw_out, NGHTTP2_PING), 500);
}

Test(h2_abuse, ping_flood_in_one_buffer_terminates_too, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    uint8_t opaque[8] = {0};
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 20000);
    h_feed_raw(&H, &IN, IN.len); /* no output drained in between */
    assert_ended(-1);
}

Test(h2_abuse, glitch_bucket_refills_with_time, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    uint8_t opaque[8] = {0};
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 450);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed);
    H.now_ns += 5ull * 1000000000ull; /* 5 s at 100/s refills the bucket */
    tbuf_free(&IN);
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 450);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed, "refilled: a slow pinger is fine");
    tbuf_free(&IN);
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 450);
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed, "same instant: over the burst");
}

Test(h2_abuse, empty_data_flood_terminates_and_resets_the_call, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    flood(NGHTTP2_DATA, 0, 1, NULL, 0, 5000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert(bds__h2_is_done(H.app.h2));
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
    cr_assert(H.app.calls[0].reset, "the io layer tells the app the call is gone");
    cr_assert_eq(H.app.resets, 1);
}

Test(h2_abuse, tiny_window_update_flood_terminates, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    uint8_t inc[4] = {0, 0, 0, 1};
    flood(NGHTTP2_WINDOW_UPDATE, 0, 0, inc, 4, 5000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
}

/* gRPC clients return window for every small DATA frame they read and probe
 * bandwidth with PINGs as data arrives: those frames are earned by our DATA
 * and must not calm a well-behaved client (grpcio was cut off before this),
 * while the same frames beyond what our DATA justifies still count. */
Test(h2_abuse, window_updates_and_pings_earned_by_our_data_are_not_glitches, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    size_t head = IN.len;
    uint8_t msg[5 + 8] = {0, 0, 0, 0, 8, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
    for (int i = 0; i < 600; i++) raw_frame(&IN, NGHTTP2_DATA, 0, 1, msg, sizeof msg);
    h_feed_raw(&H, &IN, head); /* small reads: the replies leave in many DATA frames */
    int data_frames = raw_count(&H.raw_out, NGHTTP2_DATA);
    cr_assert_gt(data_frames, 100, "reply DATA frames: %d", data_frames);
    tbuf_free(&IN);
    uint64_t before = bds__h2_get_stats(H.app.h2)->glitches; /* the preface's SETTINGS */
    uint8_t inc[4] = {0, 0, 0, 13}, opaque[8] = {0};
    for (int i = 0; i < data_frames; i++) {
        raw_frame(&IN, NGHTTP2_WINDOW_UPDATE, 0, 0, inc, 4);
        raw_frame(&IN, NGHTTP2_WINDOW_UPDATE, 0, 1, inc, 4);
        raw_frame(&IN, NGHTTP2_PING, 0, 0, opaque, 8);
    }
    h_feed_raw(&H, &IN, 16384);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed, "earned frames are not glitches");
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->glitches, before, "none of them counted");
    tbuf_free(&IN);
    flood(NGHTTP2_WINDOW_UPDATE, 0, 0, inc, 4, 5000); /* beyond what our DATA justifies */
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

Test(h2_abuse, priority_flood_terminates, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    uint8_t pri[5] = {0, 0, 0, 0, 16};
    for (int i = 0; i < 5000; i++) raw_frame(&IN, NGHTTP2_PRIORITY, 0, 1 + 2 * i, pri, 5);
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
}

/* ---- streams, preface, garbage ------------------------------------------------------ */

Test(h2_abuse, streams_over_max_concurrent_are_refused, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.max_concurrent_streams = 10;
    h_init(&H, &cfg);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    for (int i = 0; i < 30; i++) headers_frame(d, 1 + 2 * i, 0);
    nghttp2_hd_deflate_del(d);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_eq(H.app.ncalls, 10);
    cr_assert_geq(raw_count(&H.raw_out, NGHTTP2_RST_STREAM), 20, "REFUSED_STREAM for the rest");
}

Test(h2_abuse, bad_client_preface_is_fatal_and_done, .fini = fini) {
    h_init(&H, NULL);
    const char *http1 = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    tbuf_put(&IN, http1, strlen(http1));
    h_feed_raw(&H, &IN, IN.len);
    cr_assert_eq(H.last_recv, BDS_UNAVAILABLE);
    cr_assert(bds__h2_is_done(H.app.h2));
    /* After our SETTINGS: GOAWAY(PROTOCOL_ERROR), no stream processed. */
    assert_last_frame_goaway(NGHTTP2_PROTOCOL_ERROR, 0);
    cr_assert_eq(bds__h2_recv(H.app.h2, (const uint8_t *)"x", 1, 0), BDS_UNAVAILABLE,
                 "stays failed");
}

Test(h2_abuse, data_on_stream_zero_is_protocol_error_goaway, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    raw_frame(&IN, NGHTTP2_DATA, 0, 0, "abc", 3);
    h_feed_raw(&H, &IN, IN.len);
    assert_ended(NGHTTP2_PROTOCOL_ERROR);
}

Test(h2_abuse, random_garbage_after_preface_never_crashes, .fini = fini) {
    for (unsigned seed = 1; seed <= 300; seed++) {
        h_init(&H, NULL);
        tbuf_free(&IN);
        raw_preface(&IN);
        unsigned x = seed;
        uint8_t junk[2048];
        for (size_t i = 0; i < sizeof junk; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (uint8_t)(x >> 16);
        }
        /* Sometimes a plausible frame header first, so parsing gets further. */
        if (seed % 3 == 0) junk[3] = (uint8_t)(seed % 10), junk[0] = junk[1] = 0;
        tbuf_put(&IN, junk, sizeof junk);
        h_feed_raw(&H, &IN, 1 + seed % 700);
        bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
        h_fini(&H);
        memset(&H, 0, sizeof H);
    }
}

/* ---- HPACK bombs and client trailers ------------------------------------------------ */

/* HPACK integer with a |bits|-bit prefix (RFC 7541 §5.1). */
static void hp_int(struct tbuf *b, uint8_t first, unsigned bits, size_t x) {
    size_t top = ((size_t)1 << bits) - 1;
    if (x < top) {
        uint8_t v = (uint8_t)(first | x);
        tbuf_put(b, &v, 1);
        return;
    }
    uint8_t v = (uint8_t)(first | top);
    tbuf_put(b, &v, 1);
    for (x -= top; x >= 128; x /= 128) {
        v = (uint8_t)(x % 128 + 128);
        tbuf_put(b, &v, 1);
    }
    v = (uint8_t)x;
    tbuf_put(b, &v, 1);
}

/* A literal field with a new name: without indexing (0x00) or added to the
 * decoder's dynamic table (0x40). No Huffman. */
static void hp_literal(struct tbuf *b, uint8_t kind, const char *name, const void *value,
                       size_t vlen) {
    hp_int(b, kind, kind == 0x40 ? 6 : 4, 0);
    hp_int(b, 0, 7, strlen(name));
    tbuf_put(b, name, strlen(name));
    hp_int(b, 0, 7, vlen);
    tbuf_put(b, value, vlen);
}

/* A gRPC request's headers as literals that leave the dynamic table alone. */
static void hp_request(struct tbuf *b) {
    static const char *const nv[][2] = {{":method", "POST"}, {":scheme", "http"}, {":path", PIPE},
                                        {":authority", "localhost"},
                                        {"content-type", "application/grpc"}, {"te", "trailers"}};
    for (size_t i = 0; i < sizeof nv / sizeof nv[0]; i++)
        hp_literal(b, 0x00, nv[i][0], nv[i][1], strlen(nv[i][1]));
}

#define BOMB_ENTRY_VALUE (4096u - 32u - 3u) /* "x-b" + value + 32 fills a 4 KiB table */

/* |streams| request blocks of |refs| one-byte references to a 4 KiB dynamic
 * table entry (index 62, added by the first block); returns the first block's
 * length on the wire. */
static size_t hpack_bomb(int streams, int refs) {
    static uint8_t big[BOMB_ENTRY_VALUE];
    memset(big, 'b', sizeof big);
    size_t first = 0;
    for (int i = 0; i < streams; i++) {
        struct tbuf blk = {0};
        hp_request(&blk);
        if (i == 0) hp_literal(&blk, 0x40, "x-b", big, sizeof big);
        for (int r = 0; r < refs; r++) hp_int(&blk, 0x80, 7, 62);
        cr_assert_leq(blk.len, 16384u, "one frame");
        raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM,
                  1 + 2 * i, blk.p, blk.len);
        if (i == 0) first = blk.len + 9;
        tbuf_free(&blk);
    }
    return first;
}

/* ~50 KB on the wire would make nghttp2 validate ~200 MB of header values:
 * the connection ends at the first block, once it has decoded 4 header lists
 * plus twice its own size, with ENHANCE_YOUR_CALM. */
Test(h2_abuse, hpack_bomb_ends_the_connection_within_the_decoded_bound, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    size_t first = hpack_bomb(4, 12000);
    size_t wire = IN.len;
    h_feed_raw(&H, &IN, 16384);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    uint64_t bound = 4ull * H.cfg.header_list_bytes_max + 2 * first + BOMB_ENTRY_VALUE + 3;
    cr_assert_leq(st->header_bytes_decoded, bound,
                  "decoded %llu header bytes from %zu bytes on the wire (bound %llu)",
                  (unsigned long long)st->header_bytes_decoded, wire, (unsigned long long)bound);
    cr_assert_eq(st->hpack_bombs, 1);
    cr_assert(st->calmed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_eq(H.app.ncalls, 0, "no call started from a bomb");
    cr_assert(bds__h2_is_done(H.app.h2));
}

/* A big header list of literals is no bomb: 431 on its stream, and the
 * connection goes on (its decoded size is about its size on the wire). */
Test(h2_abuse, a_large_literal_header_list_is_431_not_a_bomb, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    static char v[4000];
    memset(v, 'v', sizeof v);
    struct tbuf blk = {0};
    hp_request(&blk);
    for (int i = 0; i < 24; i++) hp_literal(&blk, 0x00, "x-big", v, sizeof v); /* ~96 KB */
    for (size_t off = 0; off < blk.len; off += 16000) {
        size_t n = blk.len - off < 16000 ? blk.len - off : 16000;
        uint8_t flags = (uint8_t)((off + n == blk.len ? NGHTTP2_FLAG_END_HEADERS : 0) |
                                  (off == 0 ? NGHTTP2_FLAG_END_STREAM : 0));
        raw_frame(&IN, off == 0 ? NGHTTP2_HEADERS : NGHTTP2_CONTINUATION, flags, 1, blk.p + off, n);
    }
    tbuf_free(&blk);
    blk = (struct tbuf){0};
    hp_request(&blk);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 3, blk.p,
              blk.len);
    tbuf_free(&blk);
    h_feed_raw(&H, &IN, 16384);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert_eq(st->hpack_bombs, 0);
    cr_assert_not(st->calmed);
    cr_assert_eq(raw_find_goaway(&H.raw_out), -1);
    cr_assert_eq(H.app.last_refused_http, 431);
    cr_assert_eq(H.app.ncalls, 1, "the next request is served");
    cr_assert_eq(H.app.calls[0].id, 3);
}

/* A call, one message, then trailers (HEADERS with END_STREAM) made of |block|. */
static void call_then_trailers(const struct tbuf *block) {
    struct tbuf req = {0};
    hp_request(&req);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, req.p, req.len);
    tbuf_free(&req);
    uint8_t msg[5 + 3] = {0, 0, 0, 0, 3, 'a', 'b', 'c'};
    raw_frame(&IN, NGHTTP2_DATA, 0, 1, msg, sizeof msg);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1,
              block->p, block->len);
}

/* Client trailers are held to the header-list bound: past it the call fails
 * with RESOURCE_EXHAUSTED, and the connection goes on. */
Test(h2_abuse, client_trailers_over_the_header_list_bound_fail_the_call, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.header_list_bytes_max = 4096;
    h_init(&H, &cfg);
    raw_preface(&IN);
    static char v[1000];
    memset(v, 't', sizeof v);
    struct tbuf tr = {0};
    for (int i = 0; i < 6; i++) hp_literal(&tr, 0x00, "x-trailer", v, sizeof v);
    call_then_trailers(&tr);
    tbuf_free(&tr);
    h_feed_raw(&H, &IN, IN.len);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_eq(H.app.calls[0].msgs, 1);
    cr_assert(H.app.calls[0].errored, "the call failed on its trailers");
    cr_assert_eq(H.app.calls[0].error_status, BDS_RESOURCE_EXHAUSTED);
    cr_assert_not(H.app.calls[0].half_closed);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed);
    cr_assert_eq(raw_find_goaway(&H.raw_out), -1);
}

Test(h2_abuse, small_client_trailers_are_fine, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    struct tbuf tr = {0};
    hp_literal(&tr, 0x00, "x-trailer", "ok", 2);
    call_then_trailers(&tr);
    tbuf_free(&tr);
    h_feed_raw(&H, &IN, IN.len);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_not(H.app.calls[0].errored);
    cr_assert(H.app.calls[0].half_closed);
}

/* A bomb in client trailers ends the connection like one in a request. */
Test(h2_abuse, hpack_bomb_in_client_trailers_ends_the_connection, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    static uint8_t big[BOMB_ENTRY_VALUE];
    memset(big, 'b', sizeof big);
    struct tbuf tr = {0};
    hp_literal(&tr, 0x40, "x-b", big, sizeof big);
    for (int r = 0; r < 12000; r++) hp_int(&tr, 0x80, 7, 62);
    call_then_trailers(&tr);
    size_t wire = tr.len + 9;
    tbuf_free(&tr);
    h_feed_raw(&H, &IN, IN.len);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    uint64_t bound = 4ull * H.cfg.header_list_bytes_max + 2 * wire + BOMB_ENTRY_VALUE + 3 + 200;
    cr_assert_leq(st->header_bytes_decoded, bound, "decoded %llu",
                  (unsigned long long)st->header_bytes_decoded);
    cr_assert_eq(st->hpack_bombs, 1);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* ---- resets the client makes us send ("MadeYouReset") ------------------------------ */

/* |n| streams, each made to fail by |provoke|; fed in 16 KiB reads with the
 * output drained in between, as a socket would. */
static void provoked_resets(int n, void (*provoke)(int32_t sid)) {
    h_init(&H, NULL);
    raw_preface(&IN);
    for (int i = 0; i < n; i++) provoke(1 + 2 * i);
    h_feed_raw(&H, &IN, 16384);
}

/* The cheapest: a message, then a prefix with the compressed flag (no
 * grpc-encoding): INTERNAL, and the call's slot is free again. */
static void provoke_compressed_flag(int32_t sid) {
    struct tbuf req = {0};
    hp_request(&req);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, sid, req.p, req.len);
    tbuf_free(&req);
    uint8_t msg[5 + 3] = {0, 0, 0, 0, 3, 'a', 'b', 'c'};
    raw_frame(&IN, NGHTTP2_DATA, 0, sid, msg, sizeof msg);
    uint8_t bad[5 + 1] = {1, 0, 0, 0, 1, 'z'};
    raw_frame(&IN, NGHTTP2_DATA, 0, sid, bad, sizeof bad);
}

Test(h2_abuse, calls_failed_on_their_input_count_against_the_connection, .fini = fini) {
    provoked_resets(3000, provoke_compressed_flag);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->calmed, "%llu calls failed, no GOAWAY", (unsigned long long)st->calls_failed);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_leq(st->calls_failed, 501, "failed %llu", (unsigned long long)st->calls_failed);
    cr_assert(H.app.calls[0].errored);
    cr_assert_eq(H.app.calls[0].error_status, BDS_INTERNAL);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* nghttp2 resets a stream whose DATA exceeds its content-length without a
 * callback: the RST_STREAM(PROTOCOL_ERROR) it sends is counted as it leaves. */
static void provoke_content_length(int32_t sid) {
    struct tbuf req = {0};
    hp_request(&req);
    hp_literal(&req, 0x00, "content-length", "1", 1);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, sid, req.p, req.len);
    tbuf_free(&req);
    uint8_t msg[5 + 3] = {0, 0, 0, 0, 3, 'a', 'b', 'c'};
    raw_frame(&IN, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, sid, msg, sizeof msg);
}

Test(h2_abuse, resets_nghttp2_sends_by_itself_count_against_the_connection, .fini = fini) {
    provoked_resets(3000, provoke_content_length);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->calmed, "%d RST_STREAM sent, no GOAWAY",
              raw_count(&H.raw_out, NGHTTP2_RST_STREAM));
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_gt(st->resets_sent, 0);
    cr_assert_leq(raw_count(&H.raw_out, NGHTTP2_RST_STREAM), 502);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* Requests refused at their headers (here an unknown method) count too. */
static void provoke_unknown_method(int32_t sid) {
    struct tbuf req = {0};
    hp_literal(&req, 0x00, ":method", "POST", 4);
    hp_literal(&req, 0x00, ":scheme", "http", 4);
    hp_literal(&req, 0x00, ":path", "/no.Such/Method", 15);
    hp_literal(&req, 0x00, ":authority", "localhost", 9);
    hp_literal(&req, 0x00, "content-type", "application/grpc", 16);
    hp_literal(&req, 0x00, "te", "trailers", 8);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, sid, req.p, req.len);
    tbuf_free(&req);
}

Test(h2_abuse, requests_refused_at_their_headers_count_against_the_connection, .fini = fini) {
    provoked_resets(3000, provoke_unknown_method);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->calmed, "%llu refused, no GOAWAY", (unsigned long long)st->calls_refused);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_leq(st->calls_refused, 501);
}

/* A well-behaved connection that ends its calls normally, early trailers
 * (RST_STREAM(NO_ERROR)) included, is never counted. */
Test(h2_abuse, calls_ended_normally_are_not_counted, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    H.app.finish_on_half_close = true;
    for (int i = 0; i < 600; i++) {
        struct cstream *c = h_call(&H, PIPE, NULL, 0);
        h_send_msg(&H, c, "hi", 2);
        if (i % 2 == 0) { /* the server ends first: trailers, then RST_STREAM(NO_ERROR) */
            h_pump(&H);
            cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_OK);
        } else {
            h_end(&H, c);
        }
        h_pump(&H);
        cr_assert_eq(c->grpc_status, 0);
        cr_assert(i % 2 == 1 || (c->rst_recv && c->rst_code == NGHTTP2_NO_ERROR));
    }
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert_eq(st->resets_sent, 0);
    cr_assert_not(st->calmed);
    cr_assert_leq(st->glitches, 2, "glitches %llu", (unsigned long long)st->glitches);
}

/* ---- frames that used to escape the glitch bucket ----------------------------------- */

/* DATA frames with only padding are empty DATA frames in disguise. */
Test(h2_abuse, padding_only_data_flood_terminates, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    uint8_t padded[1 + 4] = {4, 0, 0, 0, 0}; /* Pad Length 4, no data */
    flood(NGHTTP2_DATA, NGHTTP2_FLAG_PADDED, 1, padded, sizeof padded, 5000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed, "glitches %llu",
              (unsigned long long)bds__h2_get_stats(H.app.h2)->glitches);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* Padding around real data is fine. */
Test(h2_abuse, padded_data_with_a_message_is_fine, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    uint8_t padded[1 + 8 + 4] = {4, 0, 0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0};
    flood(NGHTTP2_DATA, NGHTTP2_FLAG_PADDED, 1, padded, sizeof padded, 1000);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed);
    cr_assert_eq(H.app.calls[0].msgs, 1000);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* The allowance our DATA frames earn is capped: a client that read a long
 * download cannot bank it for a PING flood later. */
Test(h2_abuse, pings_earned_by_our_data_are_capped, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    headers_frame(d, 1, 0);
    nghttp2_hd_deflate_del(d);
    h_feed_raw(&H, &IN, IN.len);
    tbuf_free(&IN);
    uint8_t msg[5 + 8] = {0, 0, 0, 0, 8, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
    for (int i = 0; i < 3000; i++) raw_frame(&IN, NGHTTP2_DATA, 0, 1, msg, sizeof msg);
    h_feed_raw(&H, &IN, 9 + sizeof msg); /* one reply, one DATA frame per read */
    int data_frames = raw_count(&H.raw_out, NGHTTP2_DATA);
    cr_assert_geq(data_frames, 3000, "reply DATA frames: %d", data_frames);
    tbuf_free(&IN);
    uint8_t opaque[8] = {0};
    flood(NGHTTP2_PING, 0, 0, opaque, 8, 3 * 1024 + 600); /* the cap, then over the burst */
    h_feed_raw(&H, &IN, 16384);
    cr_assert(bds__h2_get_stats(H.app.h2)->calmed, "glitches %llu",
              (unsigned long long)bds__h2_get_stats(H.app.h2)->glitches);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* An INITIAL_WINDOW_SIZE that overflows the send window of every stream:
 * nghttp2 resets them all (FLOW_CONTROL_ERROR) without a callback, so one
 * SETTINGS frame provokes a thousand resets. They are counted as they leave. */
Test(h2_abuse, initial_window_size_overflow_resets_count_against_the_connection, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    raw_preface(&IN);
    uint32_t inc = 0x7fffffffu - 65535u; /* the stream's send window to the maximum */
    uint8_t wu[4] = {(uint8_t)(inc >> 24), (uint8_t)(inc >> 16), (uint8_t)(inc >> 8), (uint8_t)inc};
    for (int i = 0; i < 1000; i++) {
        headers_frame(d, 1 + 2 * i, 0);
        raw_frame(&IN, NGHTTP2_WINDOW_UPDATE, 0, 1 + 2 * i, wu, 4);
    }
    nghttp2_hd_deflate_del(d);
    uint8_t iws[6] = {0, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0, 1, 0, 0}; /* 65536: +1 */
    raw_frame(&IN, NGHTTP2_SETTINGS, 0, 0, iws, sizeof iws);
    h_feed_raw(&H, &IN, 16384);
    cr_assert_eq(H.app.ncalls, 1000);
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->calmed, "%llu resets sent, glitches %llu", (unsigned long long)st->resets_sent,
              (unsigned long long)st->glitches);
    assert_ended(NGHTTP2_ENHANCE_YOUR_CALM);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

/* REFUSED_STREAM for the server's own want of room (on_call_start answers
 * BDS_E_AGAIN: a memory budget) is not provoked by the client and is never
 * counted, however many streams it refuses; the same streams refused for a
 * reason of the client's (an unknown method) are. */
Test(h2_abuse, streams_refused_for_the_servers_own_want_of_room_are_not_counted, .fini = fini) {
    h_init(&H, NULL);
    H.app.refuse_with = BDS_E_AGAIN;
    for (int i = 0; i < 1500; i++) {
        struct cstream *c = h_call(&H, PIPE, NULL, 0);
        h_end(&H, c);
        h_pump(&H);
        cr_assert(c->rst_recv && c->rst_code == NGHTTP2_REFUSED_STREAM, "stream %d: no REFUSED_STREAM", i);
    }
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert_eq(st->calls_refused, 1500);
    cr_assert_not(st->calmed, "%llu glitches", (unsigned long long)st->glitches);
    cr_assert_eq(st->resets_sent, 0);
}
