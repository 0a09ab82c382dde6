/* test_h2_window.c — windows sized to the bandwidth-delay product
 * (cfg.window_bytes_max): our BDP PING goes out with DATA, a sample near the
 * window grows the streams' initial window (SETTINGS) and the connection's to
 * twice the sample, up to the bound; small samples grow nothing, nor do full
 * windows the app has not taken; at most one PING per millisecond; none with
 * the bound off. The clock is the harness's
 * number: each round of the test moves it on. */
#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"
#define MS 1000000ull

static struct h H;

static void fini(void) { h_fini(&H); }

static void init(uint32_t window_max) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.window_bytes_max = window_max;
    h_init(&H, &cfg);
}

/* One round: |n| messages of |len| bytes from the client, everything pumped,
 * then the clock moves on past the PING interval. */
static void round_of(struct cstream *c, int n, uint32_t len) {
    static uint8_t body[64 * 1024];
    cr_assert_leq(len, sizeof body);
    memset(body, 'w', len);
    for (int i = 0; i < n; i++) h_send_msg(&H, c, body, len);
    h_pump(&H);
    H.now_ns += 2 * MS;
}

Test(h2_window, a_sample_near_the_window_grows_it_up_to_the_bound, .fini = fini) {
    init(1u << 20);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 64u * 1024u);
    uint32_t last = 64u * 1024u;
    int grew = 0;
    for (int r = 0; r < 40; r++) {
        round_of(c, 80, 16 * 1024); /* more than any window here: each round fills it */
        uint32_t w = nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE);
        cr_assert_geq(w, last, "a window never shrinks");
        if (w > last) grew++;
        last = w;
    }
    cr_assert_eq(last, 1u << 20, "grown to the bound (%u)", last);
    cr_assert_geq(grew, 2, "in doubling steps");
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->window_bytes, 1u << 20);
    /* Every byte arrived, in order, as messages. */
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_eq(H.app.calls[0].msgs, 40 * 80);
    cr_assert_eq(H.app.calls[0].bytes, (size_t)40 * 80 * 16 * 1024);
    /* At the bound no more samples: the PINGs stop. */
    int pings = raw_count(&H.raw_out, NGHTTP2_PING);
    round_of(c, 80, 16 * 1024);
    round_of(c, 80, 16 * 1024);
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_PING), pings);
}

Test(h2_window, the_connection_window_grows_with_a_bound_past_it, .fini = fini) {
    init(4u << 20);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    for (int r = 0; r < 30; r++) round_of(c, 192, 16 * 1024);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 4u << 20);
    /* Credited on receipt, returned once half of it is used: the client has
     * more than the 1 MiB it started with. */
    cr_assert_geq(nghttp2_session_get_remote_window_size(H.cli), 2 << 20, "%d",
                  nghttp2_session_get_remote_window_size(H.cli));
}

Test(h2_window, small_samples_grow_nothing_and_ping_at_most_once_a_millisecond, .fini = fini) {
    init(1u << 20);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    for (int r = 0; r < 30; r++) round_of(c, 1, 100);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 64u * 1024u);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->window_bytes, 0);
    int pings = raw_count(&H.raw_out, NGHTTP2_PING);
    cr_assert_gt(pings, 0, "samples were taken");
    cr_assert_leq(pings, 30, "one per round at most (a round is 2 ms)");
    /* Within one millisecond: no second PING, however much DATA comes. */
    for (int i = 0; i < 20; i++) {
        uint8_t b[100] = {0};
        h_send_msg(&H, c, b, sizeof b);
        h_pump(&H);
        H.now_ns += 10000; /* 10 µs */
    }
    cr_assert_leq(raw_count(&H.raw_out, NGHTTP2_PING), pings + 1);
    cr_assert_eq(H.app.calls[0].msgs, 30 + 20);
}

Test(h2_window, an_app_that_does_not_keep_up_grows_nothing, .fini = fini) {
    init(1u << 20);
    H.app.auto_consume = false; /* messages park: nothing is credited */
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    for (int r = 0; r < 10; r++) round_of(c, 80, 16 * 1024);
    cr_assert_gt(raw_count(&H.raw_out, NGHTTP2_PING), 0, "samples were taken");
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 64u * 1024u,
                 "a full window the app has not taken is no reason to grow it");
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->window_bytes, 0);
}

Test(h2_window, forged_acks_of_our_ping_grow_nothing, .fini = fini) {
    init(1u << 20);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    /* A client that answers PINGs we never sent, or ends our samples early,
     * with our BDP PING's opaque data: an ACK only ever ends a sample, so a
     * forged one cannot make a sample larger; the connection serves on. */
    static const uint8_t opaque[8] = {'b', 'd', 's', '-', 'b', 'd', 'p', '0'};
    for (int r = 0; r < 20; r++) {
        struct tbuf in = {0};
        raw_frame(&in, NGHTTP2_PING, NGHTTP2_FLAG_ACK, 0, opaque, sizeof opaque);
        cr_assert_eq(bds__h2_recv(H.app.h2, in.p, in.len, H.now_ns), BDS_OK);
        tbuf_free(&in);
        round_of(c, 1, 100);
    }
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 64u * 1024u);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->window_bytes, 0);
    cr_assert_eq(H.app.calls[0].msgs, 20, "the connection serves on");
}

Test(h2_window, no_bound_no_pings_and_a_fixed_window, .fini = fini) {
    init(0);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    for (int r = 0; r < 10; r++) round_of(c, 16, 16 * 1024);
    cr_assert_eq(raw_count(&H.raw_out, NGHTTP2_PING), 0);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 64u * 1024u);
    cr_assert_eq(H.app.calls[0].msgs, 160);
}

/* bds__h2_stream_window_cap: an app that stopped taking a stream's messages
 * shrinks its window; the client keeps what it was granted, the credits that
 * follow pay for the cut, and lifting the cap gives the window back. */
Test(h2_window, a_capped_stream_window_is_paid_by_the_next_credits_and_given_back, .fini = fini) {
    init(0);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    static uint8_t body[4091]; /* 4096 bytes a message with its prefix */
    for (int i = 0; i < 20; i++) h_send_msg(&H, c, body, sizeof body);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 0, "the client filled the window");
    cr_assert_eq(H.app.calls[0].msgs, 16);
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 16384), 16384);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->windows_capped, 1);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 0, "a cap sends nothing");
    /* Everything taken: the first 48 KiB of credit pay for the cut, the
     * client gets back 16 KiB, and sends that much of what it holds. */
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, SIZE_MAX), 65536);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 20, "the four waiting messages came with the 16 KiB");
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 0);
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, SIZE_MAX), 16384);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 16384, "the capped window");
    /* At or above the session's window: the session's window, no cap. The
     * lift hands back the 48 KiB of credit withheld for the cut at once. */
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 1u << 20), 65536);
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 0), 65536);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->windows_capped, 1);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 65536, "lifted (%d)",
                 nghttp2_session_get_stream_remote_window_size(H.cli, c->id));
    h_send_msg(&H, c, body, sizeof body);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 21);
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, SIZE_MAX), 4096);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 65536 - 4096,
                 "4 KiB taken is under half the window: no WINDOW_UPDATE yet");
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id + 2, 16384), 0, "an unknown stream");
    /* The stream serves on with the whole window: the 15 messages it has
     * room for arrive at once. */
    for (int i = 0; i < 15; i++) h_send_msg(&H, c, body, sizeof body);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 36);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 0);
}

/* Sends on |c| all its window allows, 4 KiB messages, and pumps. */
static int send_what_the_window_allows(struct cstream *c) {
    static uint8_t body[4091];
    int n = 0;
    while (nghttp2_session_get_stream_remote_window_size(H.cli, c->id) >= 4096) {
        h_send_msg(&H, c, body, sizeof body);
        n++;
        h_pump(&H); /* the client's window moves only as its DATA goes */
    }
    return n;
}

/* What the client may send on a capped stream (its window) plus what the
 * server holds of it unconsumed: the cap's bytes, once the cut is paid. */
static int64_t capped_outstanding(int32_t id) {
    return (int64_t)nghttp2_session_get_stream_remote_window_size(H.cli, id) +
           (int64_t)bds__h2_unconsumed(H.app.h2, id);
}

Test(h2_window, a_capped_stream_that_takes_its_messages_slowly_is_held_to_the_cap, .fini = fini) {
    init(0);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    int sent = send_what_the_window_allows(c);
    cr_assert_eq(sent, 16);
    cr_assert_eq(capped_outstanding(c->id), 65536);
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 16384), 16384);
    /* One message taken at a time, the client sending whatever it may: the
     * first 48 KiB taken pay the cut, and from then on the client never has
     * more than 16 KiB out between its window and the server's backlog
     * (nghttp2 alone credited a lagging stream ahead, by as much as the cut). */
    int64_t most = 0;
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 4096), 4096, "message %d", i);
        h_pump(&H);
        sent += send_what_the_window_allows(c);
        int32_t window = nghttp2_session_get_stream_remote_window_size(H.cli, c->id);
        int64_t out = capped_outstanding(c->id);
        if (i < 12) {
            cr_assert_eq(out, 65536 - 4096 * (i + 1), "message %d: the cut is being paid, yet %lld bytes are out", i,
                         (long long)out);
            continue;
        }
        cr_assert_leq(out, 16384, "message %d: %lld bytes out (window %d, unconsumed %zu)", i, (long long)out,
                      window, bds__h2_unconsumed(H.app.h2, c->id));
        if (out > most) most = out;
    }
    cr_assert_eq(most, 16384, "the stream still moves at the cap");
    cr_assert_eq(H.app.calls[0].msgs, sent, "every message sent arrived");
}

Test(h2_window, a_capped_stream_never_stalls_with_everything_taken, .fini = fini) {
    init(0);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    static uint8_t body[1019]; /* 1 KiB messages */
    uint32_t seed = 12345;
    int sent = 0;
    for (int round = 0; round < 400; round++) {
        /* The client sends a few messages, or all its window allows. */
        int n = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        for (int i = 0; i < n && nghttp2_session_get_stream_remote_window_size(H.cli, c->id) >= 1024; i++) {
            h_send_msg(&H, c, body, sizeof body);
            sent++;
            h_pump(&H);
        }
        if (round == 10) cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 16384), 16384);
        if (round == 200) cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 32768), 32768);
        if (round == 300) cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, c->id, 16384), 16384);
        /* The app takes some of what waits, or all of it. */
        size_t held = bds__h2_unconsumed(H.app.h2, c->id);
        size_t take = ((seed = seed * 1103515245u + 12345u) >> 16) % 3 == 0 ? held : (held / 1024 / 2) * 1024;
        if (take) bds__h2_consume(H.app.h2, c->id, take);
        h_pump(&H);
        if (bds__h2_unconsumed(H.app.h2, c->id) == 0)
            cr_assert_gt(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 0,
                         "round %d: everything taken, yet the client may send nothing", round);
    }
    cr_assert_eq(H.app.calls[0].msgs, sent);
}

Test(h2_window, a_window_grown_for_the_connection_stays_capped_where_a_stream_is, .fini = fini) {
    init(1u << 20);
    H.app.auto_consume = false;
    struct cstream *a = h_call(&H, PIPE, NULL, 0);
    struct cstream *b = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, a->id, 16384), 16384);
    int total = send_what_the_window_allows(a);
    cr_assert_eq(total, 16, "the 64 KiB granted before the cap");
    cr_assert_eq(bds__h2_consume(H.app.h2, a->id, SIZE_MAX), 65536);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, a->id), 16384);
    /* Stream b fills its window round after round: the initial window grows,
     * and with it every stream's, a's too (SETTINGS cannot spare one). */
    H.app.auto_consume = true;
    uint32_t w = 0;
    for (int r = 0; r < 40 && (w = nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE)) <
                                  (256u << 10);
         r++)
        round_of(b, 80, 16 * 1024);
    H.app.auto_consume = false;
    cr_assert_geq(w, 256u << 10, "the window grew (%u)", w);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, a->id), 16384 + (int32_t)(w - 65536),
                 "the SETTINGS granted a the growth");
    /* What the growth granted is withheld from a's next credits: from then
     * on a moves at its cap. */
    for (int r = 0; r < 8; r++) {
        total += send_what_the_window_allows(a);
        bds__h2_consume(H.app.h2, a->id, SIZE_MAX);
        h_pump(&H);
        cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, a->id), 16384, "round %d: %d", r,
                     nghttp2_session_get_stream_remote_window_size(H.cli, a->id));
    }
    cr_assert_eq(H.app.calls[0].msgs, total, "every message sent on a arrived");
    cr_assert_eq(bds__h2_stream_window_cap(H.app.h2, a->id, 0), w, "lifted: the grown window");
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_stream_remote_window_size(H.cli, a->id), (int32_t)w);
}

Test(h2_window, a_bound_below_the_initial_window_is_refused) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.window_bytes_max = cfg.stream_window_bytes - 1;
    struct app a;
    memset(&a, 0, sizeof a);
    bds__h2_session *s = NULL;
    cr_assert_eq(bds__h2_create(&s, &cfg, &app_callbacks, &a), BDS_E_INVALID);
    cr_assert_null(s);
}
