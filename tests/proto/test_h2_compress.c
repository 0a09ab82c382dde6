/* test_h2_compress.c — compression in the HTTP/2 server session
 * (proto/h2_server.c) against a real nghttp2 client in memory: requests in
 * gzip and deflate reach the app decompressed, whatever their DATA framing,
 * with the ledger crediting the bytes on the wire; a zip bomb, corrupt data
 * and a compressed flag in identity end only their stream; the response
 * encoding is the one the client takes, announced in the HEADERS, fixed once
 * they left. */
#include <zlib.h>

#include "h2_harness.h"

#define PIPE "/bidistream.v1.Pipeline/Process"

static struct h H;

static void fini(void) { h_fini(&H); }

/* |len| bytes of |in| compressed by zlib itself: gzip, or the zlib format. */
static uint8_t *zc(const void *in, size_t len, bool gzip, size_t *out_len) {
    z_stream s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(deflateInit2(&s, 6, Z_DEFLATED, gzip ? 31 : 15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&s, len) + 64;
    uint8_t *out = malloc(cap);
    s.next_in = (Bytef *)(uintptr_t)in;
    s.avail_in = (uInt)len;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    *out_len = cap - s.avail_out;
    deflateEnd(&s);
    return out;
}

/* Bytes that compress about 3:1, so a message spans many frames either way. */
static void fill(uint8_t *p, size_t len) {
    uint32_t x = 12345;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)"grpc stream key order "[(x >> 16) % 22];
    }
}

/* Sends one compressed-flag message of |zl| bytes in |chunk|-byte DATA pieces,
 * pumping between them: each piece is its own DATA frame. */
static void send_compressed(struct cstream *c, const uint8_t *z, size_t zl, size_t chunk) {
    uint8_t pre[5];
    bds__grpc_frame_prefix(pre, true, (uint32_t)zl);
    h_send_raw(&H, c, pre, 5);
    for (size_t off = 0; off < zl; off += chunk) {
        h_send_raw(&H, c, z + off, zl - off < chunk ? zl - off : chunk);
        h_pump(&H);
    }
}

static void request_in(bool gzip, bool partial_credit) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.credit_partial_messages = partial_credit;
    /* With partial credit the compressed message is larger than the window;
     * without, it must fit (the app credits only whole messages). */
    if (partial_credit) cfg.stream_window_bytes = 16384;
    h_init(&H, &cfg);
    H.app.finish_on_half_close = true;
    static uint8_t msg[400000];
    size_t len = partial_credit ? sizeof msg : sizeof msg / 4;
    fill(msg, len);
    size_t zl;
    uint8_t *z = zc(msg, len, gzip, &zl);
    cr_assert_gt(zl, partial_credit ? 3 * 16384u : 16384u, "%zu", zl);
    if (!partial_credit) cr_assert_lt(zl, 65535u - 10, "%zu", zl);
    nghttp2_nv enc = NV("grpc-encoding", gzip ? "gzip" : "deflate");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    send_compressed(c, z, zl, 997);
    h_send_msg(&H, c, "plain", 5); /* compressed flag 0 in the same stream */
    h_end(&H, c);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert_eq(a->msgs, 2);
    cr_assert_eq(a->compressed, 1);
    cr_assert_eq(a->data.len, len + 5);
    cr_assert(memcmp(a->data.p, msg, len) == 0, "decompressed as sent");
    cr_assert(memcmp(a->data.p + len, "plain", 5) == 0);
    /* The ledger counts the wire: what was credited early plus what the
     * messages reported is every byte sent, and nothing is left owed. */
    if (!partial_credit) cr_assert_eq(a->wire, zl + 5 + 10);
    cr_assert_leq(a->wire, zl + 5 + 10);
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert_gt(bds__h2_get_stats(H.app.h2)->calls_started, 0);
    free(z);
}

Test(h2_compress, gzip_request_across_many_data_frames_is_decompressed, .fini = fini) { request_in(true, false); }
Test(h2_compress, deflate_request_across_many_data_frames_is_decompressed, .fini = fini) {
    request_in(false, false);
}
Test(h2_compress, with_partial_credit_the_wire_bytes_are_credited_exactly, .fini = fini) { request_in(true, true); }

/* A bomb: 1 MiB of zeros in ~1 KiB, against a 64 KiB limit. The stream ends
 * RESOURCE_EXHAUSTED; the connection and its next stream go on. */
Test(h2_compress, zip_bomb_ends_its_stream_resource_exhausted_and_the_connection_goes_on, .fini = fini) {
    bds__h2_config cfg;
    bds__h2_config_default(&cfg);
    cfg.msg_bytes_max = 64u << 10;
    h_init(&H, &cfg);
    H.app.finish_on_half_close = true;
    uint8_t *zeros = calloc(1, 1u << 20);
    size_t zl;
    uint8_t *z = zc(zeros, 1u << 20, true, &zl);
    cr_assert_lt(zl, 2048u, "%zu", zl);
    nghttp2_nv enc = NV("grpc-encoding", "gzip");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    send_compressed(c, z, zl, 100);
    h_end(&H, c);
    h_pump(&H);
    cr_assert(H.app.calls[0].errored);
    cr_assert_eq(H.app.calls[0].error_status, BDS_RESOURCE_EXHAUSTED);
    cr_assert_eq(H.app.calls[0].msgs, 0);
    cr_assert_eq(c->grpc_status, 8);
    cr_assert(strstr(c->grpc_message, "larger than max after decompression") != NULL, "%s", c->grpc_message);
    cr_assert(strstr(c->grpc_message, "65536") != NULL, "%s", c->grpc_message);
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0);
    /* Exactly the limit, on the same connection: delivered. */
    size_t el;
    uint8_t *e = zc(zeros, 64u << 10, true, &el);
    struct cstream *d = h_call(&H, PIPE, &enc, 1);
    send_compressed(d, e, el, 4096);
    h_end(&H, d);
    h_pump(&H);
    cr_assert_eq(H.app.calls[1].msgs, 1);
    cr_assert_eq(H.app.calls[1].data.len, 64u << 10);
    cr_assert_eq(d->grpc_status, 0);
    cr_assert_not(H.goaway_seen, "the connection goes on");
    free(z);
    free(e);
    free(zeros);
}

Test(h2_compress, corrupt_compressed_message_is_internal, .fini = fini) {
    h_init(&H, NULL);
    H.app.finish_on_half_close = true;
    static uint8_t msg[5000];
    fill(msg, sizeof msg);
    size_t zl;
    uint8_t *z = zc(msg, sizeof msg, true, &zl);
    z[zl - 6] ^= 0xff; /* the CRC-32 */
    nghttp2_nv enc = NV("grpc-encoding", "gzip");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    h_send_msg(&H, c, "first", 5);
    send_compressed(c, z, zl, 1000);
    h_send_msg(&H, c, "never", 5);
    h_end(&H, c);
    h_pump(&H);
    struct app_call *a = &H.app.calls[0];
    cr_assert_eq(a->msgs, 1, "the message before it, not the one after");
    cr_assert(a->errored);
    cr_assert_eq(a->error_status, BDS_INTERNAL);
    cr_assert_eq(c->grpc_status, 13);
    cr_assert(strstr(c->grpc_message, "corrupt compressed message") != NULL, "%s", c->grpc_message);
    cr_assert_eq(bds__h2_unconsumed(H.app.h2, c->id), 0);
    free(z);
}

Test(h2_compress, compressed_flag_with_identity_encoding_is_still_internal, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv enc = NV("grpc-encoding", "identity");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    size_t zl;
    uint8_t *z = zc("abc", 3, true, &zl);
    send_compressed(c, z, zl, 100);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(H.app.calls[0].error_status, BDS_INTERNAL);
    cr_assert(strstr(c->grpc_message, "without grpc-encoding") != NULL, "%s", c->grpc_message);
    free(z);
}

/* ---- responses ------------------------------------------------------------------------------ */

static struct {
    bds__h2_msg node;
    uint8_t wire[5 + 64];
} F[4];

static bds_status send_framed(int32_t id, int i, const char *text, bool compressed) {
    size_t n = strlen(text);
    memcpy(F[i].wire + 5, text, n);
    return bds__h2_send_framed(H.app.h2, id, &F[i].node, F[i].wire, n, compressed);
}

static bool md_has(const struct cstream *c, const char *line) {
    return c->md.len > 0 && strstr((const char *)c->md.p, line) != NULL;
}

Test(h2_compress, response_encoding_is_what_the_client_takes_announced_and_fixed, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv acc = NV("grpc-accept-encoding", "identity, gzip");
    struct cstream *c = h_call(&H, PIPE, &acc, 1);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_GZIP), BDS__GRPC_ENC_GZIP);
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_DEFLATE), BDS__GRPC_ENC_GZIP, "fixed");
    cr_assert_eq(send_framed(id, 0, "pretend-gzip", true), BDS_OK);
    cr_assert_eq(send_framed(id, 1, "plain", false), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_eq(c->grpc_status, 0);
    cr_assert(md_has(c, "R grpc-encoding: gzip\n"), "%s", (const char *)c->md.p);
    cr_assert_eq(c->in.len, 5 + 12 + 5 + 5);
    cr_assert_eq(c->in.p[0], 1, "the compressed flag");
    cr_assert_eq(c->in.p[17], 0, "a message may go uncompressed");
}

Test(h2_compress, a_client_that_does_not_take_it_gets_identity, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv acc = NV("grpc-accept-encoding", "deflate");
    struct cstream *c = h_call(&H, PIPE, &acc, 1);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_GZIP), BDS__GRPC_ENC_IDENTITY);
    cr_assert_eq(send_framed(id, 0, "x", true), BDS_E_INVALID, "no compressed message in identity");
    cr_assert_eq(send_framed(id, 0, "plain", false), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    h_end(&H, c);
    h_pump(&H);
    cr_assert_not(md_has(c, "grpc-encoding:"), "%s", (const char *)c->md.p);
    cr_assert(md_has(c, "R grpc-accept-encoding: identity,deflate,gzip\n"));
    cr_assert_eq(c->in.p[0], 0);
    /* No grpc-accept-encoding at all: identity only. */
    struct cstream *d = h_call(&H, PIPE, NULL, 0);
    h_pump(&H);
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, H.app.calls[1].id, BDS__GRPC_ENC_DEFLATE),
                 BDS__GRPC_ENC_IDENTITY);
    (void)d;
}

Test(h2_compress, a_request_in_deflate_means_the_client_takes_deflate, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv enc = NV("grpc-encoding", "deflate");
    struct cstream *c = h_call(&H, PIPE, &enc, 1);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_DEFLATE), BDS__GRPC_ENC_DEFLATE);
    cr_assert_eq(send_framed(id, 0, "z", true), BDS_OK);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    h_end(&H, c);
    h_pump(&H);
    cr_assert(md_has(c, "R grpc-encoding: deflate\n"), "%s", (const char *)c->md.p);
}

Test(h2_compress, once_the_headers_left_uncompressed_the_encoding_stays_identity, .fini = fini) {
    h_init(&H, NULL);
    nghttp2_nv acc = NV("grpc-accept-encoding", "gzip");
    struct cstream *c = h_call(&H, PIPE, &acc, 1);
    h_pump(&H);
    int32_t id = H.app.calls[0].id;
    cr_assert_eq(bds__h2_send_msg(H.app.h2, id, "first", 5), BDS_OK);
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_GZIP), BDS__GRPC_ENC_IDENTITY);
    cr_assert_eq(send_framed(id, 0, "second", true), BDS_E_INVALID);
    cr_assert_eq(bds__h2_finish(H.app.h2, id, BDS_OK, NULL), BDS_OK);
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, id, BDS__GRPC_ENC_GZIP), BDS__GRPC_ENC_IDENTITY,
                 "a finished call");
    cr_assert_eq(bds__h2_response_encoding(H.app.h2, 999, BDS__GRPC_ENC_GZIP), BDS__GRPC_ENC_IDENTITY, "unknown");
    h_end(&H, c);
    h_pump(&H);
    cr_assert_not(md_has(c, "grpc-encoding:"), "%s", (const char *)c->md.p);
}
