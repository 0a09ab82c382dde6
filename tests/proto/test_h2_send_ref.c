/* test_h2_send_ref.c — messages queued by reference (bds__h2_send_ref): the
 * session copies their bytes once into the output, never allocates for them,
 * and hands each node back exactly once through on_msg_release: after its last
 * byte is serialized, or when it is dropped (error, reset, finish after reset,
 * destroy). A message cut across DATA frames (even inside its 5-byte prefix)
 * stays referenced until its last byte has left. */
#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"

static struct h H;

static void fini(void) { h_fini(&H); }

struct ref {
    bds__h2_msg node;
    uint8_t data[64];
};

/* Opens a call and lets it reach the app. */
static struct cstream *open_call(void) {
    struct cstream *c = h_call(&H, PIPE, NULL, 0);
    h_send_msg(&H, c, "hi", 2);
    h_pump(&H);
    cr_assert_eq(H.app.ncalls, 1);
    return c;
}

Test(h2_send_ref, each_message_is_sent_and_released_once_in_order, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = open_call();
    static struct ref r[10];
    for (int i = 0; i < 10; i++) {
        memset(r[i].data, 'a' + i, sizeof r[i].data);
        cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[i].node, r[i].data, (size_t)(i + 1)), BDS_OK);
    }
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, c->id), 55 + 50);
    cr_assert_eq(H.app.msgs_released, 0, "nothing is released before it is serialized");
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 10);
    cr_assert_eq(H.app.last_released, &r[9].node, "released in queue order");
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, c->id), 0);
    cr_assert_eq(h_count_msgs(c), 10);
    size_t off = 0;
    for (int i = 0; i < 10; i++) {
        uint8_t pre[5];
        bds__grpc_frame_prefix(pre, false, (uint32_t)(i + 1));
        cr_assert(memcmp(c->in.p + off, pre, 5) == 0);
        for (int k = 0; k < i + 1; k++) cr_assert_eq(c->in.p[off + 5 + k], 'a' + i);
        off += 5 + (size_t)i + 1;
    }
    cr_assert_eq(c->data_frames, 1, "ten queued messages leave in one DATA frame");
}

Test(h2_send_ref, zero_length_and_copied_messages_mix_in_order, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = open_call();
    static struct ref r[2];
    memcpy(r[1].data, "ref", 3);
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[0].node, r[0].data, 0), BDS_OK);
    cr_assert_eq(bds__h2_send_msg(H.app.h2, c->id, "copy", 4), BDS_OK);
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[1].node, r[1].data, 3), BDS_OK);
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 2, "the copied one is the session's own");
    cr_assert_eq(h_count_msgs(c), 3);
    static const uint8_t want[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 'c', 'o', 'p', 'y', 0, 0, 0, 0, 3, 'r', 'e', 'f'};
    cr_assert_eq(c->in.len, sizeof want);
    cr_assert(memcmp(c->in.p, want, sizeof want) == 0);
}

Test(h2_send_ref, message_cut_inside_its_prefix_is_held_until_its_last_byte, .fini = fini) {
    h_init(&H, NULL);
    /* The client's stream window (3 bytes) cuts every DATA frame short, so
     * the server's messages leave a few bytes at a time, prefixes included. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 3}};
    nghttp2_submit_settings(H.cli, NGHTTP2_FLAG_NONE, iv, 1);
    struct cstream *c = open_call();
    static struct ref r[3];
    for (int i = 0; i < 3; i++) {
        memset(r[i].data, 'x' + i, 4);
        cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[i].node, r[i].data, 4), BDS_OK);
    }
    const uint8_t *o;
    size_t olen;
    bds__h2_output(H.app.h2, &o, &olen); /* one 3-byte DATA frame: part of a prefix */
    cr_assert_eq(H.app.msgs_released, 0);
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, c->id), 27 - 3);
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 3);
    cr_assert_geq(c->data_frames, 9, "27 bytes through a 3-byte window");
    cr_assert_eq(h_count_msgs(c), 3);
    cr_assert_eq(c->in.len, 27);
    cr_assert_eq(c->in.p[5], 'x');
    cr_assert_eq(c->in.p[9 + 5], 'y');
    cr_assert_eq(c->in.p[18 + 8], 'z');
}

Test(h2_send_ref, session_answered_error_drops_unsent_and_keeps_the_started_one, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.msg_bytes_max = 10;
    h_init(&H, &cfg);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 3}};
    nghttp2_submit_settings(H.cli, NGHTTP2_FLAG_NONE, iv, 1);
    struct cstream *c = open_call();
    static struct ref r[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[i].node, r[i].data, 8), BDS_OK);
    const uint8_t *o;
    size_t olen;
    bds__h2_output(H.app.h2, &o, &olen); /* the first message is on its way */
    cr_assert_eq(H.app.msgs_released, 0);
    h_send_msg(&H, c, "this one is too long", 20);
    h_pump(&H);
    cr_assert(H.app.calls[0].errored);
    cr_assert_eq(c->grpc_status, 8);
    cr_assert_eq(H.app.msgs_released, 4, "three dropped, the started one completed");
    cr_assert_eq(h_count_msgs(c), 1, "the message already on the wire is completed");
}

Test(h2_send_ref, client_reset_releases_what_was_queued, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = open_call();
    static struct ref r[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[i].node, r[i].data, 8), BDS_OK);
    nghttp2_submit_rst_stream(H.cli, NGHTTP2_FLAG_NONE, c->id, NGHTTP2_CANCEL);
    /* Feed the client's RST before the server serializes anything. */
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(H.cli, &d)) > 0)
        cr_assert_eq(bds__h2_recv(H.app.h2, d, (size_t)n, 0), BDS_OK);
    cr_assert(H.app.calls[0].reset);
    cr_assert_eq(H.app.msgs_released, 3);
    static struct ref late;
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &late.node, late.data, 1), BDS_E_SESSION_CLOSED);
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 3, "a refused message is not released");
}

Test(h2_send_ref, destroy_releases_every_queued_message, .fini = fini) {
    h_init(&H, NULL);
    struct cstream *c = open_call();
    static struct ref r[5];
    for (int i = 0; i < 5; i++)
        cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[i].node, r[i].data, 8), BDS_OK);
    bds__h2_destroy(H.app.h2);
    H.app.h2 = NULL;
    cr_assert_eq(H.app.msgs_released, 5);
}

Test(h2_send_ref, over_the_stream_bound_returns_again_and_is_not_taken, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.stream_send_bytes_max = 20;
    h_init(&H, &cfg);
    struct cstream *c = open_call();
    static struct ref r[2];
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[0].node, r[0].data, 10), BDS_OK);
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[1].node, r[1].data, 10), BDS_E_AGAIN);
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 1);
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r[1].node, r[1].data, 10), BDS_OK, "drained: room again");
    h_pump(&H);
    cr_assert_eq(H.app.msgs_released, 2);
    cr_assert_eq(h_count_msgs(c), 2);
}

Test(h2_send_ref, framed_message_gets_its_prefix_written_in_place_and_is_sent_whole, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 4}};
    nghttp2_submit_settings(H.cli, NGHTTP2_FLAG_NONE, iv, 1);
    struct cstream *c = open_call();
    static struct {
        bds__h2_msg node;
        uint8_t wire[5 + 7];
    } f[2];
    for (int i = 0; i < 2; i++) {
        memset(f[i].wire, 0xee, 5); /* the caller's bytes there are overwritten */
        memcpy(f[i].wire + 5, i ? "framed2" : "framed1", 7);
        cr_assert_eq(bds__h2_send_framed(H.app.h2, c->id, &f[i].node, f[i].wire, 7, false), BDS_OK);
    }
    static struct ref r;
    memcpy(r.data, "ref", 3);
    cr_assert_eq(bds__h2_send_ref(H.app.h2, c->id, &r.node, r.data, 3), BDS_OK);
    cr_assert_eq(bds__h2_queued_bytes(H.app.h2, c->id), 12 + 12 + 8);
    h_pump(&H); /* 32 bytes through a 4-byte window: cut anywhere */
    cr_assert_eq(H.app.msgs_released, 3);
    static const uint8_t want[] = {0, 0, 0, 0, 7, 'f', 'r', 'a', 'm', 'e', 'd', '1',
                                   0, 0, 0, 0, 7, 'f', 'r', 'a', 'm', 'e', 'd', '2',
                                   0, 0, 0, 0, 3, 'r', 'e', 'f'};
    cr_assert_eq(c->in.len, sizeof want);
    cr_assert(memcmp(c->in.p, want, sizeof want) == 0);
}
