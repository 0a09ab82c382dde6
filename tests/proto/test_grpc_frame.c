/* test_grpc_frame.c — gRPC Length-Prefixed-Message framer and deframer
 * (proto/grpc_frame.c): every split of the prefix and body across chunks,
 * packed chunks, zero-length messages, the limit checked before buffering, the
 * compressed flag, truncation at end of stream, allocation failure. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_frame.h"

/* ---- a counting allocator that can be told to fail ------------------------------ */

struct count_alloc {
    int mallocs, frees, reallocs;
    size_t largest; /* the largest block asked for (malloc or realloc) */
    int fail_after; /* -1 = never */
};

static void *ca_malloc(size_t n, void *ctx) {
    struct count_alloc *c = ctx;
    if (c->fail_after == 0) return NULL;
    if (c->fail_after > 0) c->fail_after--;
    c->mallocs++;
    if (n > c->largest) c->largest = n;
    return malloc(n);
}
static void ca_free(void *p, void *ctx) {
    struct count_alloc *c = ctx;
    if (p != NULL) c->frees++;
    free(p);
}
static void *ca_calloc(size_t a, size_t b, void *ctx) {
    (void)ctx;
    return calloc(a, b);
}
static void *ca_realloc(void *p, size_t n, void *ctx) {
    struct count_alloc *c = ctx;
    if (c->fail_after == 0) return NULL;
    if (c->fail_after > 0) c->fail_after--;
    if (p == NULL) c->mallocs++;
    c->reallocs++;
    if (n > c->largest) c->largest = n;
    return realloc(p, n);
}

static struct count_alloc g_ca;
static bds__palloc g_alloc = {ca_malloc, ca_free, ca_calloc, ca_realloc, &g_ca};

static void setup(void) {
    memset(&g_ca, 0, sizeof g_ca);
    g_ca.fail_after = -1;
}

/* ---- helpers ------------------------------------------------------------------- */

/* Appends one framed message (body = byte pattern seeded by |tag|) to |buf|. */
static size_t put_msg(uint8_t *buf, size_t at, uint32_t len, uint8_t tag) {
    bds__grpc_frame_prefix(buf + at, false, len);
    for (uint32_t i = 0; i < len; i++) buf[at + 5 + i] = (uint8_t)(tag + i * 7);
    return at + 5 + len;
}

static bool body_ok(const uint8_t *p, uint32_t len, uint8_t tag) {
    for (uint32_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)(tag + i * 7)) return false;
    return true;
}

struct got {
    int n;
    uint32_t len[64];
    uint8_t first[64];
    bool copied[64];
    bool ok[64];
};

/* Feeds |buf| in chunks of |chunk| bytes; records every message. Returns the
 * last error status seen (BDS_OK if none). */
static bds_status feed(bds__grpc_deframer *d, const uint8_t *buf, size_t len, size_t chunk,
                       const uint8_t *tags, struct got *g) {
    for (size_t off = 0; off < len;) {
        size_t c = len - off < chunk ? len - off : chunk;
        const uint8_t *in = buf + off;
        size_t left = c;
        while (left > 0) {
            bds__grpc_ev ev;
            size_t used = bds__grpc_deframe(d, in, left, &ev);
            cr_assert_leq(used, left);
            in += used;
            left -= used;
            if (ev.kind == BDS__GRPC_EV_ERROR) return ev.status;
            if (ev.kind == BDS__GRPC_EV_MESSAGE) {
                cr_assert_not_null(ev.data);
                cr_assert_lt(g->n, 64);
                g->len[g->n] = ev.len;
                g->copied[g->n] = ev.copied;
                g->ok[g->n] = tags == NULL || body_ok(ev.data, ev.len, tags[g->n]);
                g->n++;
            } else {
                cr_assert_eq(left, 0, "NONE must mean the chunk was used up");
            }
        }
        off += c;
    }
    return BDS_OK;
}

/* ---- framer -------------------------------------------------------------------- */

Test(grpc_frame, prefix_len_is_big_endian_with_flag) {
    uint8_t p[5];
    bds__grpc_frame_prefix(p, false, 0x01020304u);
    uint8_t want[] = {0, 1, 2, 3, 4};
    cr_assert_arr_eq(p, want, 5);
    bds__grpc_frame_prefix(p, true, 0xffffffffu);
    uint8_t want2[] = {1, 0xff, 0xff, 0xff, 0xff};
    cr_assert_arr_eq(p, want2, 5);
}

Test(grpc_frame, write_fits_returns_len_plus_prefix) {
    uint8_t out[16];
    cr_assert_eq(bds__grpc_frame_write(out, sizeof out, "hello", 5), 10);
    uint8_t want[] = {0, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'};
    cr_assert_arr_eq(out, want, 10);
    cr_assert_eq(bds__grpc_frame_write(out, sizeof out, NULL, 0), 5);
}

Test(grpc_frame, write_too_small_returns_zero_and_writes_nothing) {
    uint8_t out[8];
    memset(out, 0xaa, sizeof out);
    cr_assert_eq(bds__grpc_frame_write(out, sizeof out, "hello", 5), 0);
    for (size_t i = 0; i < sizeof out; i++) cr_assert_eq(out[i], 0xaa);
}

/* ---- deframer: shapes of input -------------------------------------------------- */

Test(grpc_frame, deframe_whole_message_in_chunk_is_zero_copy, .init = setup) {
    uint8_t buf[64];
    size_t n = put_msg(buf, 0, 20, 3);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, n, &ev), n);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    cr_assert_eq(ev.data, buf + 5, "fast path must point into the chunk");
    cr_assert_not(ev.copied);
    cr_assert_eq(ev.len, 20);
    cr_assert_eq(g_ca.mallocs, 0);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_OK);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_many_messages_in_one_chunk_all_delivered, .init = setup) {
    uint8_t buf[1024], tags[40];
    size_t n = 0;
    for (int i = 0; i < 40; i++) {
        tags[i] = (uint8_t)i;
        n = put_msg(buf, n, (uint32_t)(i % 7) * 3, tags[i]);
    }
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    struct got g = {0};
    cr_assert_eq(feed(&d, buf, n, n, tags, &g), BDS_OK);
    cr_assert_eq(g.n, 40);
    for (int i = 0; i < 40; i++) {
        cr_assert_eq(g.len[i], (uint32_t)(i % 7) * 3);
        cr_assert(g.ok[i]);
        cr_assert_not(g.copied[i]);
    }
    cr_assert_eq(g_ca.mallocs, 0, "packed messages need no buffer");
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_zero_length_messages_have_non_null_body) {
    uint8_t buf[15] = {0};
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, NULL);
    struct got g = {0};
    cr_assert_eq(feed(&d, buf, sizeof buf, sizeof buf, NULL, &g), BDS_OK);
    cr_assert_eq(g.n, 3);
    for (int i = 0; i < 3; i++) cr_assert_eq(g.len[i], 0);
    /* And split byte by byte. */
    memset(&g, 0, sizeof g);
    cr_assert_eq(feed(&d, buf, sizeof buf, 1, NULL, &g), BDS_OK);
    cr_assert_eq(g.n, 3);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_OK);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_every_chunk_size_gives_same_messages, .init = setup) {
    uint8_t buf[4096], tags[12];
    size_t n = 0;
    const uint32_t lens[12] = {0, 1, 4, 5, 6, 100, 0, 1000, 17, 0, 2000, 3};
    for (int i = 0; i < 12; i++) {
        tags[i] = (uint8_t)(i * 11);
        n = put_msg(buf, n, lens[i], tags[i]);
    }
    for (size_t chunk = 1; chunk <= n; chunk++) {
        bds__grpc_deframer d;
        bds__grpc_deframer_init(&d, 0, false, &g_alloc);
        struct got g = {0};
        cr_assert_eq(feed(&d, buf, n, chunk, tags, &g), BDS_OK, "chunk %zu", chunk);
        cr_assert_eq(g.n, 12, "chunk %zu", chunk);
        for (int i = 0; i < 12; i++) {
            cr_assert_eq(g.len[i], lens[i]);
            cr_assert(g.ok[i], "chunk %zu msg %d body", chunk, i);
        }
        cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_OK);
        bds__grpc_deframer_deinit(&d);
    }
    cr_assert_eq(g_ca.mallocs, g_ca.frees, "every buffer released");
}

Test(grpc_frame, deframe_prefix_split_then_whole_body_is_zero_copy) {
    uint8_t buf[64];
    size_t n = put_msg(buf, 0, 30, 9);
    for (size_t split = 1; split < 5; split++) {
        bds__grpc_deframer d;
        bds__grpc_deframer_init(&d, 0, false, NULL);
        bds__grpc_ev ev;
        cr_assert_eq(bds__grpc_deframe(&d, buf, split, &ev), split);
        cr_assert_eq(ev.kind, BDS__GRPC_EV_NONE);
        cr_assert_not(bds__grpc_deframer_partial(&d, NULL, NULL), "mid-prefix is not partial");
        cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_INTERNAL, "cut inside the prefix");
        cr_assert_eq(bds__grpc_deframe(&d, buf + split, n - split, &ev), n - split);
        cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
        cr_assert_not(ev.copied);
        cr_assert_eq(ev.data, buf + 5);
        cr_assert(body_ok(ev.data, 30, 9));
        bds__grpc_deframer_deinit(&d);
    }
}

Test(grpc_frame, deframe_split_body_is_copied_once_and_partial_reports_progress, .init = setup) {
    uint8_t buf[256];
    size_t n = put_msg(buf, 0, 200, 1);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, 50, &ev), 50);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_NONE);
    uint32_t mlen = 0, have = 0;
    cr_assert(bds__grpc_deframer_partial(&d, &mlen, &have));
    cr_assert_eq(mlen, 200);
    cr_assert_eq(have, 45);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_INTERNAL, "cut inside the body");
    cr_assert_eq(bds__grpc_deframe(&d, buf + 50, n - 50, &ev), n - 50);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    cr_assert(ev.copied);
    cr_assert(body_ok(ev.data, 200, 1));
    cr_assert_eq(g_ca.mallocs, 1);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_OK);
    bds__grpc_deframer_deinit(&d);
    cr_assert_eq(g_ca.frees, 1);
}

Test(grpc_frame, deframe_message_then_next_prefix_in_same_chunk_stops_after_message) {
    uint8_t buf[64];
    size_t n = put_msg(buf, 0, 3, 0);
    n = put_msg(buf, n, 4, 1);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, NULL);
    bds__grpc_ev ev;
    /* One event per call: the first call stops right after message one. */
    cr_assert_eq(bds__grpc_deframe(&d, buf, n - 2, &ev), 8);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    cr_assert_eq(ev.len, 3);
    bds__grpc_deframer_deinit(&d);
}

/* ---- deframer: limits and malformed input ---------------------------------------- */

Test(grpc_frame, deframe_over_limit_returns_resource_exhausted_before_buffering, .init = setup) {
    uint8_t p[5];
    bds__grpc_frame_prefix(p, false, 4u * 1024 * 1024 + 1);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc); /* default limit: 4 MiB */
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, p, 5, &ev), 5);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_RESOURCE_EXHAUSTED);
    cr_assert_eq(ev.len, 4u * 1024 * 1024 + 1, "the announced length is reported");
    cr_assert_not_null(ev.reason);
    cr_assert_eq(g_ca.mallocs, 0, "nothing buffered for a refused message");
    /* Sticky: later bytes are refused without being consumed. */
    uint8_t more[3] = {1, 2, 3};
    cr_assert_eq(bds__grpc_deframe(&d, more, 3, &ev), 0);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_RESOURCE_EXHAUSTED);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_RESOURCE_EXHAUSTED);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_limit_exactly_is_accepted_one_more_is_not) {
    uint8_t buf[128];
    size_t n = put_msg(buf, 0, 100, 0);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 100, false, NULL);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, n, &ev), n);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    bds__grpc_deframer_deinit(&d);
    n = put_msg(buf, 0, 101, 0);
    bds__grpc_deframer_init(&d, 100, false, NULL);
    bds__grpc_deframe(&d, buf, n, &ev);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_RESOURCE_EXHAUSTED);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_over_limit_with_prefix_split_is_caught_at_fifth_byte) {
    uint8_t p[5];
    bds__grpc_frame_prefix(p, false, 0xffffffffu);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, NULL);
    bds__grpc_ev ev;
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(bds__grpc_deframe(&d, p + i, 1, &ev), 1);
        cr_assert_eq(ev.kind, BDS__GRPC_EV_NONE);
    }
    cr_assert_eq(bds__grpc_deframe(&d, p + 4, 1, &ev), 1);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_RESOURCE_EXHAUSTED);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_compressed_without_encoding_returns_internal) {
    uint8_t buf[16];
    bds__grpc_frame_prefix(buf, true, 3);
    memcpy(buf + 5, "abc", 3);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, NULL);
    bds__grpc_ev ev;
    bds__grpc_deframe(&d, buf, 8, &ev);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_INTERNAL);
    cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_INTERNAL);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_compressed_with_encoding_is_flagged_message) {
    uint8_t buf[16];
    bds__grpc_frame_prefix(buf, true, 3);
    memcpy(buf + 5, "abc", 3);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, true, NULL);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, 8, &ev), 8);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    cr_assert(ev.compressed);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_reserved_flag_bits_return_internal) {
    for (unsigned flag = 2; flag < 256; flag += 37) {
        uint8_t buf[5] = {(uint8_t)flag, 0, 0, 0, 0};
        bds__grpc_deframer d;
        bds__grpc_deframer_init(&d, 0, true, NULL);
        bds__grpc_ev ev;
        bds__grpc_deframe(&d, buf, 5, &ev);
        cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR, "flag %u", flag);
        cr_assert_eq(ev.status, BDS_INTERNAL);
        bds__grpc_deframer_deinit(&d);
    }
}

Test(grpc_frame, deframe_truncated_at_end_of_stream_returns_internal) {
    uint8_t buf[64];
    size_t n = put_msg(buf, 0, 10, 0);
    n = put_msg(buf, n, 10, 1);
    for (size_t cut = 1; cut < n; cut++) {
        bds__grpc_deframer d;
        bds__grpc_deframer_init(&d, 0, false, NULL);
        struct got g = {0};
        cr_assert_eq(feed(&d, buf, cut, 3, NULL, &g), BDS_OK);
        bds_status want = (cut == 15) ? BDS_OK : BDS_INTERNAL;
        cr_assert_eq(bds__grpc_deframer_finish(&d), want, "cut at %zu", cut);
        bds__grpc_deframer_deinit(&d);
    }
}

Test(grpc_frame, deframe_alloc_failure_returns_nomem_error, .init = setup) {
    uint8_t buf[64];
    put_msg(buf, 0, 40, 0);
    g_ca.fail_after = 0;
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, 20, &ev), 5, "prefix consumed, body refused");
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_E_NOMEM);
    bds__grpc_deframer_deinit(&d);
}

Test(grpc_frame, deframe_large_buffer_released_after_delivery, .init = setup) {
    static uint8_t buf[200 * 1024];
    size_t n = put_msg(buf, 0, 100 * 1024, 5);
    n = put_msg(buf, n, 10, 6);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    struct got g = {0};
    uint8_t tags[2] = {5, 6};
    cr_assert_eq(feed(&d, buf, n, 4096, tags, &g), BDS_OK);
    cr_assert_eq(g.n, 2);
    cr_assert(g.ok[0] && g.ok[1]);
    cr_assert_geq(g_ca.frees, 1, "the 100 KiB buffer is not kept");
    bds__grpc_deframer_deinit(&d);
    cr_assert_eq(g_ca.mallocs, g_ca.frees);
}

Test(grpc_frame, deframe_random_chunking_matches_reference) {
    static uint8_t buf[64 * 1024];
    uint8_t tags[64];
    uint32_t lens[64];
    unsigned seed = 12345;
    size_t n = 0;
    for (int i = 0; i < 64; i++) {
        seed = seed * 1103515245u + 12345u;
        lens[i] = (seed >> 8) % 900;
        tags[i] = (uint8_t)(seed >> 3);
        n = put_msg(buf, n, lens[i], tags[i]);
    }
    for (int round = 0; round < 50; round++) {
        bds__grpc_deframer d;
        bds__grpc_deframer_init(&d, 0, false, NULL);
        struct got g = {0};
        size_t off = 0;
        while (off < n) {
            seed = seed * 1103515245u + 12345u;
            size_t c = 1 + (seed >> 10) % 1500;
            if (c > n - off) c = n - off;
            /* Each chunk is fed separately so chunk edges land anywhere. */
            cr_assert_eq(feed(&d, buf + off, c, c, tags, &g), BDS_OK);
            off += c;
        }
        cr_assert_eq(g.n, 64, "round %d (seed %u)", round, seed);
        for (int i = 0; i < 64; i++) {
            cr_assert_eq(g.len[i], lens[i]);
            cr_assert(g.ok[i]);
        }
        cr_assert_eq(bds__grpc_deframer_finish(&d), BDS_OK);
        bds__grpc_deframer_deinit(&d);
    }
}

/* Memory follows the bytes that arrived, not the length a prefix announced:
 * a 4 MiB message's first body byte costs a small buffer, and the buffer
 * stays within twice what was received as the rest trickles in. */
Test(grpc_frame, deframe_buffer_grows_with_the_bytes_received, .init = setup) {
    const uint32_t len = 4u * 1024u * 1024u;
    uint8_t *buf = malloc(5 + (size_t)len);
    cr_assert_not_null(buf);
    put_msg(buf, 0, len, 9);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, 6, &ev), 6);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_NONE);
    cr_assert_leq(g_ca.largest, 4096, "6 bytes in, %zu allocated", g_ca.largest);
    size_t off = 6, end = 5 + (size_t)len;
    while (off < end) {
        size_t n = end - off < 16384 ? end - off : 16384;
        size_t got = bds__grpc_deframe(&d, buf + off, n, &ev);
        cr_assert_eq(got, n);
        off += n;
        size_t received = off - 5;
        cr_assert_leq(g_ca.largest, 2 * received, "%zu received, %zu allocated", received,
                      g_ca.largest);
        if (off < end) cr_assert_eq(ev.kind, BDS__GRPC_EV_NONE);
    }
    cr_assert_eq(ev.kind, BDS__GRPC_EV_MESSAGE);
    cr_assert_eq(ev.len, len);
    cr_assert(ev.copied);
    cr_assert(body_ok(ev.data, len, 9));
    cr_assert_eq(g_ca.largest, len, "never more than the message");
    cr_assert_leq(g_ca.reallocs, 12, "geometric growth: %d reallocs", g_ca.reallocs);
    bds__grpc_deframer_deinit(&d);
    cr_assert_eq(g_ca.mallocs, g_ca.frees);
    free(buf);
}

/* A failed growth keeps what was buffered and reports NOMEM, leak-free. */
Test(grpc_frame, deframe_growth_failure_returns_nomem_error, .init = setup) {
    static uint8_t buf[5 + 20000];
    put_msg(buf, 0, 20000, 3);
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, 0, false, &g_alloc);
    bds__grpc_ev ev;
    cr_assert_eq(bds__grpc_deframe(&d, buf, 1005, &ev), 1005);
    g_ca.fail_after = 0;
    cr_assert_eq(bds__grpc_deframe(&d, buf + 1005, 10000, &ev), 0);
    cr_assert_eq(ev.kind, BDS__GRPC_EV_ERROR);
    cr_assert_eq(ev.status, BDS_E_NOMEM);
    bds__grpc_deframer_deinit(&d);
    cr_assert_eq(g_ca.mallocs, g_ca.frees);
}
