/* test_h2_keepalive.c — the HTTP/2 session's part of the connection timers:
 * the client PING policy (grpc-go's keepalive enforcement: strikes, then
 * GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") and the session done), our own
 * keepalive PING and its ACK, and "the client's preface and SETTINGS arrived"
 * for the handshake timer. The clock is the harness's number, never read. */
#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"
#define MIN_NS (1000000ull * 1000) /* 1 s */

static struct h H;
static struct tbuf IN;

static void fini(void) {
    h_fini(&H);
    tbuf_free(&IN);
}

static void init_with_policy(void) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.ping_min_interval_ns = MIN_NS;
    cfg.ping_idle_min_interval_ns = 10 * MIN_NS;
    h_init(&H, &cfg);
}

static void ping(void) {
    uint8_t opaque[8] = {9, 9, 9, 9, 9, 9, 9, 9};
    raw_frame(&IN, NGHTTP2_PING, 0, 0, opaque, 8);
}

/* Feeds what IN holds now and empties it. */
static void feed(void) {
    h_feed_raw(&H, &IN, IN.len);
    tbuf_free(&IN);
}

/* The GOAWAY frame's debug data in the server's output, or "" when none. */
static void goaway_debug(char *out, size_t cap) {
    out[0] = 0;
    size_t off = 0;
    while (H.raw_out.len - off >= 9) {
        const uint8_t *p = H.raw_out.p + off;
        size_t len = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
        if (H.raw_out.len - off < 9 + len) break;
        if (p[3] == NGHTTP2_GOAWAY && len > 8) {
            size_t n = len - 8 < cap - 1 ? len - 8 : cap - 1;
            memcpy(out, p + 9 + 8, n);
            out[n] = 0;
        }
        off += 9 + len;
    }
}

static void open_stream(int32_t sid) {
    nghttp2_hd_deflater *d;
    nghttp2_hd_deflate_new(&d, 4096);
    uint8_t block[512];
    size_t n = raw_request_block(d, PIPE, block, sizeof block);
    raw_frame(&IN, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, sid, block, n);
    nghttp2_hd_deflate_del(d);
}

Test(h2_keepalive, pings_closer_than_the_minimum_end_with_too_many_pings, .fini = fini) {
    init_with_policy();
    raw_preface(&IN);
    open_stream(1); /* with a stream open the 1 s minimum applies */
    feed();
    for (int i = 0; i < 3; i++) { /* the first sets the mark; two strikes are allowed */
        ping();
        feed();
        H.now_ns += MIN_NS / 2;
    }
    cr_assert_not(bds__h2_get_stats(H.app.h2)->too_many_pings, "two strikes are tolerated");
    ping();
    feed();
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert(st->too_many_pings && st->calmed);
    cr_assert_eq(raw_find_goaway(&H.raw_out), NGHTTP2_ENHANCE_YOUR_CALM);
    char dbg[64];
    goaway_debug(dbg, sizeof dbg);
    cr_assert_str_eq(dbg, "too_many_pings");
    cr_assert_eq(st->goaways_sent[NGHTTP2_ENHANCE_YOUR_CALM], 1, "counted by its code (metrics)");
    cr_assert_eq(st->goaways_sent[NGHTTP2_NO_ERROR], 0);
    cr_assert(bds__h2_is_done(H.app.h2), "done once the GOAWAY is written: the connection closes");
    /* What follows is not read: no more PING ACKs. */
    int acks = raw_count(&H.raw_out, NGHTTP2_PING);
    for (int i = 0; i < 10; i++) ping();
    feed();
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_PING), acks);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

Test(h2_keepalive, pings_at_the_minimum_interval_are_fine, .fini = fini) {
    init_with_policy();
    raw_preface(&IN);
    open_stream(1);
    feed();
    for (int i = 0; i < 50; i++) {
        ping();
        feed();
        H.now_ns += MIN_NS;
    }
    cr_assert_not(bds__h2_get_stats(H.app.h2)->too_many_pings);
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_PING), 50, "every PING acknowledged");
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

Test(h2_keepalive, our_data_between_pings_resets_the_strikes, .fini = fini) {
    init_with_policy();
    H.app.echo = true;
    raw_preface(&IN);
    open_stream(1);
    feed();
    uint8_t msg[5 + 3] = {0, 0, 0, 0, 3, 'a', 'b', 'c'};
    for (int i = 0; i < 50; i++) { /* BDP probing: a PING as each reply arrives */
        raw_frame(&IN, NGHTTP2_DATA, 0, 1, msg, sizeof msg);
        feed();
        ping();
        feed();
    }
    cr_assert_not(bds__h2_get_stats(H.app.h2)->too_many_pings);
    cr_assert_geq(raw_count(&H.raw_out, NGHTTP2_DATA), 50);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
}

Test(h2_keepalive, without_streams_the_longer_minimum_applies, .fini = fini) {
    init_with_policy();
    raw_preface(&IN);
    feed();
    for (int i = 0; i < 3; i++) { /* 1 s apart: fine with a stream, strikes without */
        ping();
        feed();
        H.now_ns += MIN_NS;
    }
    cr_assert_not(bds__h2_get_stats(H.app.h2)->too_many_pings);
    ping();
    feed();
    cr_assert(bds__h2_get_stats(H.app.h2)->too_many_pings);
}

Test(h2_keepalive, no_policy_when_the_minimum_is_zero, .fini = fini) {
    h_init(&H, NULL); /* the sans-I/O default: the server sets the policy */
    raw_preface(&IN);
    feed();
    for (int i = 0; i < 20; i++) ping();
    feed();
    cr_assert_not(bds__h2_get_stats(H.app.h2)->too_many_pings);
    cr_assert_not(bds__h2_get_stats(H.app.h2)->calmed);
}

Test(h2_keepalive, our_ping_is_sent_once_and_its_ack_clears_it, .fini = fini) {
    h_init(&H, NULL);
    h_pump(&H);
    cr_assert_not(bds__h2_ping_outstanding(H.app.h2));
    cr_assert_eq(bds__h2_ping(H.app.h2), BDS_OK);
    cr_assert(bds__h2_ping_outstanding(H.app.h2));
    cr_assert_eq(bds__h2_ping(H.app.h2), BDS_OK, "still outstanding: nothing more is sent");
    int before = raw_count(&H.raw_out, NGHTTP2_PING);
    h_pump(&H); /* the nghttp2 client answers with an ACK */
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_PING), before + 1, "one PING on the wire");
    cr_assert_not(bds__h2_ping_outstanding(H.app.h2), "the ACK cleared it");
    const bds__h2_stats *st = bds__h2_get_stats(H.app.h2);
    cr_assert_eq(st->pings_sent, 1);
    cr_assert_eq(st->ping_acks, 1);
}

Test(h2_keepalive, an_ack_with_other_data_does_not_answer_ours, .fini = fini) {
    h_init(&H, NULL);
    raw_preface(&IN);
    feed();
    cr_assert_eq(bds__h2_ping(H.app.h2), BDS_OK);
    uint8_t other[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    raw_frame(&IN, NGHTTP2_PING, NGHTTP2_FLAG_ACK, 0, other, 8);
    feed();
    cr_assert(bds__h2_ping_outstanding(H.app.h2));
}

Test(h2_keepalive, peer_ready_only_after_the_client_settings, .fini = fini) {
    h_init(&H, NULL);
    cr_assert_not(bds__h2_peer_ready(H.app.h2));
    tbuf_put(&IN, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    feed();
    cr_assert_not(bds__h2_peer_ready(H.app.h2), "the magic alone is not enough");
    raw_frame(&IN, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
    feed();
    cr_assert(bds__h2_peer_ready(H.app.h2));
}
