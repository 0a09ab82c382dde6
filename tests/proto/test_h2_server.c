/* test_h2_server.c — the gRPC HTTP/2 server session (proto/h2_server.c) against
 * a real nghttp2 client in memory: bidi calls, framing across DATA frames,
 * answers the session gives by itself, resets, flow control, GOAWAY. */
#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"

static struct h H;

static void fini(void) { h_fini(&H); }

/* ---- calls that work ------------------------------------------------------------- */

Test(h2_server, bidi_several_messages_each_way_half_close_gets_ok_trailers, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    H.app.finish_on_half_close = true;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "one", 3);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_eq(H.app.calls[0].method, 0);
    cr_assert_eq(H.app.calls[0].msgs, 1);
    cr_assert_eq(h_count_msgs(c), 1, "first reply before the client sends more");
    h_send_msg(&H, c, "two", 3);
    h_send_msg(&H, c, "three", 5);
    h_pump(&H);
    h_end(&H, c);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert_eq(a->msgs, 3);
    cr_assert(a->half_closed);
    cr_assert(memcmp(a->data.p, "onetwothree", 11) == 0);
    cr_assert_eq(c->http_status, 200);
    cr_assert_eq(h_count_msgs(c), 3);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert_not(c->status_in_response_headers, "status in trailers, after data");
    cr_assert(c->closed);
    cr_assert_eq(c->close_code, NGHTTP2_NO_ERROR);
    cr_assert_not(c->rst_recv);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->calls_started, 1);
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0);
}

Test(h2_server, message_split_across_data_frames_is_reassembled, .fini = fini) {
    h_init(&H, NULL);
    static uint8_t big[40000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 13);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, big, sizeof big); /* > 16 KiB: the client splits it */
    h_end(&H, c);
    H.app.finish_on_half_close = true;
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert_eq(a->msgs, 1);
    cr_assert_eq(a->data.len, sizeof big);
    cr_assert(memcmp(a->data.p, big, sizeof big) == 0);
    cr_assert_eq(c->grpc_status, 0);
}

Test(h2_server, message_larger_than_window_completes_with_partial_credit, .fini = fini) {
    h_init(&H, NULL);
    H.app.auto_consume = false;
    H.app.finish_on_half_close = true;
    static uint8_t big[300000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, big, sizeof big);
    h_end(&H, c);
    for (int i = 0; i < 100 && H.app.calls[0].msgs == 0; i++) {
        h_pump(&H);
        /* The app credits the partial message as it arrives. */
        bds__h2_consume(H.app.h2, c->id, bds__h2_unconsumed(H.app.h2, c->id));
    }
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 1);
    cr_assert(memcmp(H.app.calls[0].data.p, big, sizeof big) == 0);
    cr_assert_eq(c->grpc_status, 0);
}

Test(h2_server, many_messages_packed_into_one_data_frame_both_ways, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    for (int i = 0; i < 10; i++) h_send_msg(&H, c, "abcdefgh", 8);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 10);
    int32_t id = c->id;
    for (int i = 0; i < 10; i++) cr_assert_eq(bds__h2_send_msg(H.app.h2, id, "reply!", 6), BDS_OK);
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, id), 10 * 11);
    h_pump(&H);
    cr_assert_eq(h_count_msgs(c), 10);
    cr_assert_eq(c->data_frames, 1, "ten queued replies leave in one DATA frame");
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, id), 0);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert(c->closed);
}

Test(h2_server, zero_length_messages_are_delivered, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    H.app.finish_on_half_close = true;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "", 0);
    h_send_msg(&H, c, "", 0);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 2);
    cr_assert_eq(h_count_msgs(c), 2);
    cr_assert_eq(c->grpc_status, 0);
}

Test(h2_server, request_with_end_stream_on_headers_starts_and_half_closes, .fini = fini) {
    h_init(&H, NULL);
    H.app.finish_on_half_close = true;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert(H.app.calls[0].half_closed);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert(c->status_in_response_headers, "no message: trailers-only");
}

Test(h2_server, grpc_timeout_is_reported_as_deadline, .fini = fini) {
    h_init(&H, NULL);
    H.now_ns = 5000;
    nghttp2_nv to = NV("grpc-timeout", "2S");
    h_call(&H, PIPE, &to, 1);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_eq(H.app.calls[0].timeout_ns, 2000000000ull);
    cr_assert_eq(H.app.calls[0].deadline_ns, 2000005000ull);
}

Test(h2_server, several_concurrent_calls_are_independent, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    H.app.finish_on_half_close = true;
    struct cstream *cs[20];
    for (int i = 0; i < 20; i++) {
        cs[i] = h_call(&H, i % 2 ? PIPE : "/grpc.health.v1.Health/Check", NULL, 0);
        for (int k = 0; k <= i; k++) h_send_msg(&H, cs[i], "x", 1);
    }
    h_pump(&H);
    for (int i = 0; i < 20; i++) h_end(&H, cs[i]);
    h_pump(&H);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(h_count_msgs(cs[i]), i + 1);
        cr_assert_eq(cs[i]->grpc_status, 0);
        struct app_call *a = app_call_by_id(&H.app, cs[i]->id);
        cr_assert_eq(a->method, i % 2 ? 0u : 1u);
    }
}

/* ---- finish variants --------------------------------------------------------------- */

Test(h2_server, finish_before_any_message_is_trailers_only_with_encoded_message, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_NOT_FOUND, "nope \xc3\xa9%\n"), BDS_OK);
    h_pump(&H);
    cr_assert_eq(c->http_status, 200);
    cr_assert_eq(c->grpc_status, 5);
    cr_assert(c->status_in_response_headers);
    cr_assert_str_eq(c->grpc_message, "nope %C3%A9%25%0A");
    cr_assert_eq(c->header_blocks, 1);
    cr_assert_eq(c->data_frames, 0);
}

Test(h2_server, finish_without_message_uses_status_text, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_E_INBOUND_REJECTED, NULL), BDS_OK);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 8, "admission rejected projects to RESOURCE_EXHAUSTED");
    cr_assert(strlen(c->grpc_message) > 0, "every non-OK status carries a grpc-message");
}

Test(h2_server, early_finish_before_client_end_sends_trailers_then_rst_no_error, .fini = fini) {
    h_init(&H, NULL);
    H.app.echo = true;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "hi", 2);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_OK);
    h_pump(&H);
    cr_assert_eq(h_count_msgs(c), 1);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert(c->rst_recv);
    cr_assert_eq(c->rst_code, NGHTTP2_NO_ERROR);
    cr_assert(c->closed);
}

Test(h2_server, calls_after_finish_fail_precondition, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "a", 1), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_OK);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "a", 1), BDS_FAILED_PRECONDITION);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_FAILED_PRECONDITION);
    h_pump(&H);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "a", 1), BDS_E_SESSION_CLOSED, "stream gone");
    cr_assert_eq(bds__h2_send_msg(H.app.h2, 999, "a", 1), BDS_E_SESSION_CLOSED);
    cr_assert_eq(h_count_msgs(c), 1);
}

Test(h2_server, finish_with_no_wire_status_cancels_stream, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_E_SESSION_CLOSED, NULL), BDS_OK);
    h_pump(&H);
    cr_assert(c->rst_recv);
    cr_assert_eq(c->rst_code, NGHTTP2_CANCEL);
    cr_assert_eq(c->grpc_status, -1);
}

Test(h2_server, send_queue_over_bound_returns_again, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.stream_send_bytes_max = 100;
    h_init(&H, &cfg);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    static uint8_t m[200];
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, m, 200), BDS_OK, "one always fits");
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, m, 1), BDS_E_AGAIN);
    h_pump(&H);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, m, 50), BDS_OK, "drained: room again");
}

Test(h2_server, small_output_buffer_still_delivers_everything, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.out_buf_bytes = 1024;
    h_init(&H, &cfg);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    static uint8_t m[50000];
    for (int i = 0; i < 4; i++) cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, m, sizeof m), BDS_OK);
    const uint8_t *o;
    size_t olen;
    bds__h2_output(H.app.h2, &o, &olen);
    cr_assert_leq(olen, 1024, "output is bounded");
    cr_assert(bds__h2_want_write(H.app.h2));
    h_pump(&H);
    cr_assert_eq(h_count_msgs(c), 4);
    cr_assert_eq(c->in.len, 4 * (sizeof m + 5));
}

Test(h2_server, app_refusing_call_gets_trailers_only_with_its_status, .fini = fini) {
    h_init(&H, NULL);
    H.app.refuse_with = BDS_UNAVAILABLE;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 14);
    cr_assert(c->status_in_response_headers);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->calls_refused, 1);
    cr_assert(c->closed);
}

/* ---- answers the session gives by itself ------------------------------------------ */

Test(h2_server, unknown_method_gets_unimplemented_trailers_only, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, "/no.Such/Method", NULL, 0);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 0);
    cr_assert_eq(H.app.refused_errors, 1);
    cr_assert_eq(H.app.last_refused_status, BDS_UNIMPLEMENTED);
    cr_assert_eq(c->http_status, 200);
    cr_assert_eq(c->grpc_status, 12);
    cr_assert(c->status_in_response_headers);
    cr_assert_eq(c->data_frames, 0);
    cr_assert(c->rst_recv, "client had not ended its side");
    cr_assert_eq(c->rst_code, NGHTTP2_NO_ERROR);
}

Test(h2_server, bad_content_type_gets_http_415, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv ct = NV("content-type", "application/json");
    struct cstream *c = h_call(&H, PIPE, &ct, 1);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 0);
    cr_assert_eq(c->http_status, 415);
    cr_assert_eq(c->grpc_status, 13);
    cr_assert_eq(H.app.last_refused_http, 415);
}

Test(h2_server, method_get_gets_http_405, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv m = NV(":method", "GET");
    struct cstream *c = h_call(&H, PIPE, &m, 1);
    h_pump(&H);
    cr_assert_eq(c->http_status, 405);
    cr_assert_eq(H.app.ncalls, 0);
}

Test(h2_server, bad_grpc_timeout_gets_internal, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv to = NV("grpc-timeout", "123456789S");
    struct cstream *c = h_call(&H, PIPE, &to, 1);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 0);
    cr_assert_eq(c->http_status, 200);
    cr_assert_eq(c->grpc_status, 13);
    cr_assert(strstr(c->grpc_message, "grpc-timeout") != NULL);
}

static bool md_has(const struct cstream *c, const char *line);

Test(h2_server, unknown_encoding_gets_unimplemented_with_what_we_take, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv enc = NV("grpc-encoding", "snappy");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 12);
    cr_assert(c->status_in_response_headers, "trailers-only");
    cr_assert(md_has(c, "R grpc-accept-encoding: identity,deflate,gzip\n"), "%s", (const char *)c->md.p);
    cr_assert_eq(H.app.ncalls, 0);
}

Test(h2_server, huge_header_list_gets_431_and_connection_survives, .fini = fini) {
    h_init(&H, NULL);
    static char big[1200];
    memset(big, 'v', sizeof big - 1);
    nghttp2_nv extra[20];
    char names[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "x-h%02d", i);
        extra[i] = (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)big, 5, sizeof big - 1,
                                NGHTTP2_NV_FLAG_NONE};
    }
    struct cstream *c = h_call(&H, PIPE, extra, 20);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 0);
    cr_assert_eq(c->http_status, 431);
    cr_assert_eq(c->grpc_status, 8);
    /* The connection still serves a normal call. */
    H.app.finish_on_half_close = true;
    struct cstream *ok = h_call(&H, PIPE, NULL, 0);
    h_end(&H, ok);
    h_pump(&H);
    cr_assert_eq(ok->grpc_status, 0);
}

Test(h2_server, message_over_limit_gets_resource_exhausted_and_next_stream_works, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.msg_bytes_max = 1024;
    h_init(&H, &cfg);
    static uint8_t m[2000];
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "ok", 2);
    h_send_msg(&H, c, m, sizeof m);
    h_send_msg(&H, c, "never", 5);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert_eq(a->msgs, 1, "the message before the big one was delivered");
    cr_assert(a->errored);
    cr_assert_eq(a->error_status, BDS_RESOURCE_EXHAUSTED);
    cr_assert_eq(c->grpc_status, 8);
    cr_assert(c->rst_recv);
    cr_assert_eq(c->rst_code, NGHTTP2_NO_ERROR);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "x", 1), BDS_E_SESSION_CLOSED);
    /* The next stream on the same connection. */
    H.app.echo = true;
    H.app.finish_on_half_close = true;
    struct cstream *n = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, n, "next", 4);
    h_end(&H, n);
    h_pump(&H);
    cr_assert_eq(h_count_msgs(n), 1);
    cr_assert_eq(n->grpc_status, 0);
}

Test(h2_server, default_limit_refuses_announced_5mib_without_buffering, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    uint8_t pre[5];
    bds__grpc_frame_prefix(pre, false, 5u * 1024 * 1024);
    h_send_raw(&H, c, pre, 5);
    static uint8_t some[30000];
    h_send_raw(&H, c, some, sizeof some);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 8);
    cr_assert(H.app.calls[0].errored);
}

Test(h2_server, compressed_flag_without_encoding_gets_internal, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    uint8_t m[8];
    bds__grpc_frame_prefix(m, true, 3);
    memcpy(m + 5, "abc", 3);
    h_send_raw(&H, c, m, 8);
    h_end(&H, c);
    h_pump(&H);
    cr_assert(H.app.calls[0].errored);
    cr_assert_eq(H.app.calls[0].error_status, BDS_INTERNAL);
    cr_assert_eq(H.app.calls[0].msgs, 0);
    cr_assert_eq(c->grpc_status, 13);
    cr_assert_not(c->rst_recv, "client had ended: no RST needed");
}

Test(h2_server, truncated_message_at_end_stream_gets_internal, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    uint8_t m[8];
    bds__grpc_frame_prefix(m, false, 100);
    memcpy(m + 5, "abc", 3);
    h_send_raw(&H, c, m, 8);
    h_end(&H, c);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert(a->errored);
    cr_assert_eq(a->error_status, BDS_INTERNAL);
    cr_assert_not(a->half_closed, "a cut message is not a clean half-close");
    cr_assert_eq(c->grpc_status, 13);
    cr_assert(strstr(c->grpc_message, "truncated") != NULL);
}

Test(h2_server, error_drops_queued_replies_and_sends_trailers, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.msg_bytes_max = 10;
    h_init(&H, &cfg);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "a", 1);
    h_pump(&H);
    for (int i = 0; i < 5; i++) bds__h2_send_msg(H.app.h2, c->id, "sent", 4);
    h_pump(&H);
    cr_assert_eq(h_count_msgs(c), 5);
    /* Five more are queued but not yet serialized when the bad message lands
     * (the pump feeds the client's bytes before asking for output). */
    for (int i = 0; i < 5; i++) bds__h2_send_msg(H.app.h2, c->id, "dropped", 7);
    h_send_msg(&H, c, "this one is too long", 20);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 8);
    cr_assert_eq(h_count_msgs(c), 5, "unsent replies are dropped on a session-answered error");
}

/* ---- cancellation ---------------------------------------------------------------- */

Test(h2_server, client_rst_stream_delivers_reset_and_nothing_is_sent, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "work", 4);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 1);
    nghttp2_submit_rst_stream(H.cli, NGHTTP2_FLAG_NONE, c->id, NGHTTP2_CANCEL);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert(a->reset);
    cr_assert_eq(a->reset_status, BDS_CANCELLED);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "late", 4), BDS_E_SESSION_CLOSED);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_E_SESSION_CLOSED);
    h_pump(&H);
    cr_assert_eq(c->header_blocks, 0, "nothing was sent for the cancelled call");
    cr_assert_eq(c->data_frames, 0);
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->calls_reset, 1);
}

Test(h2_server, rst_codes_map_per_protocol_http2) {
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_CANCEL), BDS_CANCELLED);
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_REFUSED_STREAM), BDS_UNAVAILABLE);
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_ENHANCE_YOUR_CALM), BDS_RESOURCE_EXHAUSTED);
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_INADEQUATE_SECURITY), BDS_PERMISSION_DENIED);
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_NO_ERROR), BDS_INTERNAL);
    cr_assert_eq(bds__h2_rst_status(NGHTTP2_PROTOCOL_ERROR), BDS_INTERNAL);
    cr_assert_eq(bds__h2_rst_status(0x1234), BDS_INTERNAL);
}

Test(h2_server, abort_calls_resets_every_open_call_once, .fini = fini) {
    h_init(&H, NULL);
    for (int i = 0; i < 3; i++) h_call(&H, PIPE, NULL, 0);
    struct cstream *done = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, done->id, BDS_OK, NULL), BDS_OK);
    bds__h2_abort_calls(H.app.h2, BDS_CANCELLED);
    cr_assert_eq(H.app.resets, 3, "the finished call is not reset");
    bds__h2_abort_calls(H.app.h2, BDS_CANCELLED);
    cr_assert_eq(H.app.resets, 3);
}

/* ---- flow control ---------------------------------------------------------------- */

static size_t fc_received(void) { return H.app.calls[0].bytes; }

Test(h2_server, withheld_consume_stalls_client_at_window_then_consume_resumes, .fini = fini) {
    h_init(&H, NULL);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    static uint8_t m[1000];
    for (int i = 0; i < 200; i++) h_send_msg(&H, c, m, sizeof m); /* 201 KB */
    h_end(&H, c);
    h_pump(&H);
    size_t got = fc_received();
    size_t held = bds__h2_unconsumed(H.app.h2, c->id);
    cr_assert_leq(held, 65536, "never more than the stream window");
    cr_assert_geq(held, 60000, "the client filled the window");
    cr_assert_lt(got, 200 * sizeof m, "the client is stalled");
    h_pump(&H);
    cr_assert_eq(fc_received(), got, "still stalled without consume");
    for (int i = 0; i < 50 && !H.app.calls[0].half_closed; i++) {
        cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 1u << 30), held);
        h_pump(&H);
        held = bds__h2_unconsumed(H.app.h2, c->id);
        cr_assert_leq(held, 65536);
    }
    cr_assert_eq(H.app.calls[0].msgs, 200);
    cr_assert(H.app.calls[0].half_closed);
}

Test(h2_server, consume_is_clamped_to_outstanding, .fini = fini) {
    h_init(&H, NULL);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "12345", 5);
    h_pump(&H);
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 10);
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 4), 4);
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 100), 6);
    cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 100), 0);
    cr_assert_eq(bds__h2_consume(H.app.h2, 12345, 100), 0, "unknown stream");
}

/* Many streams each leave bytes unconsumed and end (finish or client reset):
 * far more than the 1 MiB connection window in total, so a leak would stall. */
static void leak_scenario(bool credit_on_receipt) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.conn_credit_on_receipt = credit_on_receipt;
    h_init(&H, &cfg);
    H.app.auto_consume = false;
    static uint8_t m[30000];
    for (int i = 0; i < 80; i++) { /* 80 x 30 KB = 2.4 MB */
        struct cstream *c = h_call(&H, PIPE, NULL, 0);
        h_send_msg(&H, c, m, sizeof m);
        h_pump(&H);
        struct app_call *a = app_call_by_id(&H.app, c->id);
        cr_assert_not_null(a, "stream %d started", i);
        cr_assert_eq(a->msgs, 1, "stream %d got its message (connection window open)", i);
        if (i % 2) {
            cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_OK);
        } else {
            nghttp2_submit_rst_stream(H.cli, NGHTTP2_FLAG_NONE, c->id, NGHTTP2_CANCEL);
        }
        h_pump(&H);
    }
    cr_assert_eq(nghttp2_session_get_remote_window_size(H.cli) >= 512 * 1024, 1,
                 "connection window as seen by the client: %d",
                 nghttp2_session_get_remote_window_size(H.cli));
}

Test(h2_server, connection_window_never_leaks_with_credit_on_receipt, .fini = fini) {
    leak_scenario(true);
}

Test(h2_server, connection_window_never_leaks_with_credit_on_consume, .fini = fini) {
    leak_scenario(false);
}

/* Credit given with bds__h2_consume reaches nghttp2 once per stream before
 * the next send; a stream closed in between (client reset read first) must
 * still give its connection share back, exactly once. */
static void pending_credit_scenario(bool credit_on_receipt) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.conn_credit_on_receipt = credit_on_receipt;
    h_init(&H, &cfg);
    H.app.auto_consume = false;
    static uint8_t m[30000];
    for (int i = 0; i < 80; i++) { /* 80 x 30 KB = 2.4 MB: a leak would stall */
        struct cstream *c = h_call(&H, PIPE, NULL, 0);
        h_send_msg(&H, c, m, sizeof m);
        h_pump(&H);
        struct app_call *a = app_call_by_id(&H.app, c->id);
        cr_assert_eq(a->msgs, 1, "stream %d got its message (connection window open)", i);
        cr_assert_eq(bds__h2_consume(H.app.h2, c->id, sizeof m + 5), sizeof m + 5);
        cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0, "counted at once");
        nghttp2_submit_rst_stream(H.cli, NGHTTP2_FLAG_NONE, c->id, NGHTTP2_CANCEL);
        const uint8_t *d;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(H.cli, &d)) > 0)
            cr_assert_eq(bds__h2_recv(H.app.h2, d, (size_t)n, 0), BDS_OK);
        h_pump(&H);
        cr_assert_eq(H.last_recv, BDS_OK, "no FLOW_CONTROL_ERROR from over-crediting");
    }
    cr_assert_geq(nghttp2_session_get_remote_window_size(H.cli), 512 * 1024,
                  "connection window as seen by the client: %d",
                  nghttp2_session_get_remote_window_size(H.cli));
}

Test(h2_server, pending_credit_of_a_reset_stream_returns_with_credit_on_receipt, .fini = fini) {
    pending_credit_scenario(true);
}

Test(h2_server, pending_credit_of_a_reset_stream_returns_with_credit_on_consume, .fini = fini) {
    pending_credit_scenario(false);
}

Test(h2_server, credit_for_many_messages_reopens_the_stream_window_in_one_send, .fini = fini) {
    h_init(&H, NULL);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    static uint8_t m[1000];
    for (int i = 0; i < 60; i++) h_send_msg(&H, c, m, sizeof m);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].msgs, 60);
    int32_t before = nghttp2_session_get_stream_remote_window_size(H.cli, c->id);
    cr_assert_eq(before, 65536 - 60 * 1005, "our SETTINGS window (64 KiB) less what was sent");
    for (int i = 0; i < 60; i++) cr_assert_eq(bds__h2_consume(H.app.h2, c->id, 1005), 1005);
    h_pump(&H);
    cr_assert_geq(nghttp2_session_get_stream_remote_window_size(H.cli, c->id), 65536 - 1005,
                  "the stream window reopened");
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0);
}

Test(h2_server, data_after_session_answer_is_consumed_by_session, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.conn_credit_on_receipt = false;
    cfg.msg_bytes_max = 100;
    h_init(&H, &cfg);
    H.app.auto_consume = false;
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    static uint8_t m[50000];
    h_send_msg(&H, c, m, sizeof m);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 8);
    /* The unread body was settled: the client can use the whole window again. */
    struct cstream *n = h_call(&H, PIPE, NULL, 0);
    static uint8_t ok[60];
    h_send_msg(&H, n, ok, sizeof ok);
    h_pump(&H);
    cr_assert_eq(app_call_by_id(&H.app, n->id)->msgs, 1);
    cr_assert_geq(nghttp2_session_get_remote_window_size(H.cli), 900000);
}

/* ---- GOAWAY ---------------------------------------------------------------------- */

Test(h2_server, shutdown_notice_then_goaway_reports_last_stream_and_ends, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_shutdown_notice(H.app.h2), BDS_OK);
    h_pump(&H);
    cr_assert(H.goaway_seen);
    cr_assert_eq(H.goaway_last_id, INT32_MAX);
    cr_assert_eq(bds__h2_goaway(H.app.h2, BDS_H2_NO_ERROR), BDS_OK);
    h_pump(&H);
    cr_assert_eq(H.goaway_last_id, c->id);
    cr_assert_eq(H.goaway_code, NGHTTP2_NO_ERROR);
    cr_assert_not(bds__h2_is_done(H.app.h2), "a call is still open");
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(bds__h2_finish(H.app.h2, c->id, BDS_OK, NULL), BDS_OK);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert(bds__h2_is_done(H.app.h2));
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->goaways_sent[NGHTTP2_NO_ERROR], 2, "the notice and the final one");
}

Test(h2_server, terminate_sends_goaway_and_ends, .fini = fini) {
    h_init(&H, NULL);
    h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_terminate(H.app.h2, BDS_H2_INTERNAL_ERROR), BDS_OK);
    h_pump(&H);
    cr_assert_eq(H.goaway_code, NGHTTP2_INTERNAL_ERROR);
    cr_assert(bds__h2_is_done(H.app.h2));
    cr_assert_eq(bds__h2_get_stats(H.app.h2)->goaways_sent[NGHTTP2_INTERNAL_ERROR], 1);
    bds__h2_abort_calls(H.app.h2, BDS_UNAVAILABLE);
    cr_assert_eq(H.app.resets, 1);
    cr_assert_eq(H.app.calls[0].reset_status, BDS_UNAVAILABLE);
}

/* ---- settings we advertise --------------------------------------------------------- */

Test(h2_server, server_settings_are_advertised, .fini = fini) {
    h_init(&H, NULL);
    h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS), 1024);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 65536);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE), 16384);
    cr_assert_eq(nghttp2_session_get_remote_settings(H.cli, NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES), 1);
    cr_assert_geq(nghttp2_session_get_remote_window_size(H.cli), 1000000, "connection window 1 MiB");
}

Test(h2_server, create_rejects_bad_config) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.out_buf_bytes = 10;
    bds__h2_session *c = (bds__h2_session *)1;
    struct app a = {0};
    cr_assert_eq(bds__h2_create(&c, &cfg, &app_callbacks, &a), BDS_E_INVALID);
    cr_assert_null(c);
    bds__h2_config_default(&cfg);
    cfg.stream_window_bytes = 0x80000000u;
    cr_assert_eq(bds__h2_create(&c, &cfg, &app_callbacks, &a), BDS_E_INVALID);
}

/* ---- metadata: captured request headers, custom response metadata ------------------- */

static void capture_init(uint32_t bytes_max) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.capture_metadata = true;
    cfg.capture_bytes_max = bytes_max;
    h_init(&H, &cfg);
}

/* The captured entries of a call as "name=value;" lines, in order. */
static const char *captured_str(const struct app_call *a) {
    static char buf[1024];
    size_t off = 0, n = 0;
    bds__h2_header h;
    buf[0] = 0;
    while (bds__h2_captured_next(a->captured.p, a->captured.len, &off, &h))
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%.*s=%.*s;", (int)h.name_len, (const char *)h.name,
                              (int)h.value_len, (const char *)h.value);
    return buf;
}

Test(h2_server, request_metadata_reaches_on_call_start, .fini = fini) {
    capture_init(4096);
    nghttp2_nv extra[] = {NV("x-other", "zzz"), NV("x-b-bin", "AAEC"), NV("x-a", "one"),
                          NV("grpc-accept-encoding", "identity"), NV("user-agent", "ua/1")};
    h_call(&H, PIPE, extra, 5);
    h_call(&H, PIPE, NULL, 0);
    nghttp2_nv only_a[] = {NV("x-a", "two")};
    h_call(&H, PIPE, only_a, 1);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 3);
    cr_assert_str_eq(captured_str(&H.app.calls[0]), "x-other=zzz;x-b-bin=AAEC;x-a=one;user-agent=ua/1;",
                     "in order, -bin as received, no grpc-*, pseudo-header, content-type or te");
    cr_assert_str_eq(captured_str(&H.app.calls[1]), "", "no metadata: nothing");
    cr_assert_str_eq(captured_str(&H.app.calls[2]), "x-a=two;", "each block has its own");
}

Test(h2_server, metadata_past_the_bound_is_dropped_and_the_call_goes_on, .fini = fini) {
    capture_init(20);
    nghttp2_nv extra[] = {NV("x-a", "0123456789"), NV("x-b-bin", "0123456789")};
    h_call(&H, PIPE, extra, 2);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 1);
    cr_assert_str_eq(captured_str(&H.app.calls[0]), "x-a=0123456789;", "6 + 3 + 10, then 6 + 7 + 10 > 20");
}

static bool md_has(const struct cstream *c, const char *line) {
    return c->md.len > 0 && strstr((const char *)c->md.p, line) != NULL;
}

Test(h2_server, custom_metadata_joins_the_response_headers_and_trailers, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, false, "x-init", (const uint8_t *)"v 1", 3), BDS_OK);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-tr-bin", (const uint8_t *)"q6ur", 4), BDS_OK);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, id, "hi", 2), BDS_OK);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, false, "x-late", (const uint8_t *)"x", 1),
                 BDS_FAILED_PRECONDITION, "the HEADERS are submitted");
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-tr2", (const uint8_t *)"", 0), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-after", (const uint8_t *)"x", 1),
                 BDS_FAILED_PRECONDITION);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert_eq(h_count_msgs(c), 1);
    const char *md = (const char *)c->md.p;
    cr_assert(md_has(c, "R grpc-accept-encoding: identity,deflate,gzip\n"), "%s", md);
    cr_assert(md_has(c, "R x-init: v 1\n"), "%s", md);
    cr_assert(md_has(c, "T x-tr-bin: q6ur\n"), "%s", md);
    cr_assert(md_has(c, "T x-tr2: \n"), "%s", md);
    cr_assert_not(md_has(c, "x-late") || md_has(c, "x-after") || md_has(c, "T x-init") ||
                  md_has(c, "R x-tr"), "%s", md);
}

Test(h2_server, custom_metadata_in_a_trailers_only_answer, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_end(&H, c);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, false, "x-init", (const uint8_t *)"a", 1), BDS_OK);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-tr", (const uint8_t *)"b", 1), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_NOT_FOUND, "gone"), BDS_OK);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, BDS_NOT_FOUND);
    cr_assert(c->status_in_response_headers, "trailers-only");
    cr_assert_eq(c->header_blocks, 1);
    cr_assert(md_has(c, "R x-init: a\n") && md_has(c, "R x-tr: b\n"), "%s", (const char *)c->md.p);
}

Test(h2_server, custom_metadata_rejects_reserved_and_malformed_fields, .fini = fini) {
    h_init(&H, NULL);
    h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    const uint8_t *v = (const uint8_t *)"v";
    const char *bad_names[] = {"", "X-Upper", "grpc-status", "grpc-x", "te", "content-type",
                               ":path", "connection", "a b", "x\n"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
        cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, false, bad_names[i], v, 1), BDS_E_INVALID,
                     "name \"%s\"", bad_names[i]);
    const char *bad_values[] = {"a\nb", "a\rb", " lead", "trail ", "nul\0x", "\x80"};
    size_t bad_len[] = {3, 3, 5, 6, 5, 1};
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++)
        cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-v", (const uint8_t *)bad_values[i],
                                          bad_len[i]),
                     BDS_E_INVALID, "value %zu", i);
    static uint8_t big[BDS_H2_METADATA_BYTES_MAX];
    memset(big, 'v', sizeof big);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-big", big, sizeof big), BDS_E_INVALID);
    for (uint32_t i = 0; i < BDS_H2_METADATA_MAX; i++)
        cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-n", v, 1), BDS_OK);
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, id, true, "x-n", v, 1), BDS_E_INVALID, "entries bound");
    cr_assert_eq(bds__h2_add_metadata(H.app.h2, 99, true, "x-n", v, 1), BDS_E_SESSION_CLOSED);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    h_pump(&H);
    cr_assert_eq(H.cs[0]->grpc_status, 0, "the call itself is fine");
}

/* ---- which libnghttp2, which protections ------------------------------------------- */

Test(h2_server, nghttp2_report_names_the_loaded_library_and_the_protections) {
    char buf[512];
    bool warn = bds__h2_nghttp2_report(buf, sizeof buf);
    const nghttp2_info *info = nghttp2_version(0);
    cr_assert_not_null(strstr(buf, info->version_str), "%s", buf);
    cr_assert_not_null(strstr(buf, "built against " NGHTTP2_VERSION), "%s", buf);
    bool complete = bds__h2_nghttp2_features() == BDS_H2_FEAT_ALL;
    cr_assert_eq(warn, !complete || info->version_num < NGHTTP2_VERSION_NUM, "%s", buf);
    cr_assert_eq(strstr(buf, "LACKS") != NULL, !complete, "%s", buf);
}

Test(h2_server, nghttp2_report_warns_when_protections_are_missing_or_the_library_is_older) {
    char buf[512];
    cr_assert_not(bds__h2_nghttp2_describe(buf, sizeof buf, "1.52.0", 0x013400, "1.52.0", 0x013400,
                                           BDS_H2_FEAT_ALL));
    cr_assert_str_eq(buf, "libnghttp2 1.52.0 loaded, built against 1.52.0; uses: stream reset rate "
                          "limit (rapid reset), CONTINUATION limit, outbound ACK limit, SETTINGS "
                          "entries limit");
    cr_assert(bds__h2_nghttp2_describe(buf, sizeof buf, "1.52.0", 0x013400, "1.52.0", 0x013400,
                                       BDS_H2_FEAT_MAX_OUTBOUND_ACK | BDS_H2_FEAT_MAX_SETTINGS));
    cr_assert_not_null(strstr(buf, "; LACKS: stream reset rate limit (rapid reset), CONTINUATION "
                                   "limit"), "%s", buf);
    cr_assert(bds__h2_nghttp2_describe(buf, sizeof buf, "1.43.0", 0x012b00, "1.52.0", 0x013400,
                                       BDS_H2_FEAT_ALL));
    cr_assert_not_null(strstr(buf, "libnghttp2 1.43.0 loaded, built against 1.52.0 (older)"), "%s",
                       buf);
    cr_assert_not(bds__h2_nghttp2_describe(buf, sizeof buf, "1.61.0", 0x013d00, "1.52.0", 0x013400,
                                           BDS_H2_FEAT_ALL), "newer is fine");
    char tiny[12];
    memset(tiny, 'x', sizeof tiny);
    cr_assert(bds__h2_nghttp2_describe(tiny, sizeof tiny, "1.43.0", 0x012b00, "1.52.0", 0x013400, 0));
    cr_assert_eq(strlen(tiny), sizeof tiny - 1, "cut, NUL-terminated");
}
