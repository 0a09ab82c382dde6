/* test_grpc_compress.c — gRPC message compression (proto/grpc_compress.c):
 * encoding names, deflate (zlib-wrapped, as gRPC means it) and gzip both
 * ways against zlib's own encoder, and what a hostile input gets: corrupt or
 * truncated data INTERNAL, a zip bomb RESOURCE_EXHAUSTED with memory bounded
 * by the limit (every allocation counted), exactly the limit accepted. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "grpc_compress.h"

/* ---- a counting allocator: the peak of live bytes and the largest block ---------------- */

typedef struct counting {
    size_t live, peak, largest;
    int blocks;
} counting;

typedef struct hdr {
    size_t size;
    size_t pad; /* keeps the payload 16-byte aligned */
} hdr;

static void *c_malloc(size_t size, void *ctx) {
    counting *c = ctx;
    hdr *h = malloc(sizeof *h + size);
    if (!h) return NULL;
    h->size = size;
    c->live += size;
    c->blocks++;
    if (c->live > c->peak) c->peak = c->live;
    if (size > c->largest) c->largest = size;
    return h + 1;
}

static void c_free(void *p, void *ctx) {
    counting *c = ctx;
    if (!p) return;
    hdr *h = (hdr *)p - 1;
    c->live -= h->size;
    c->blocks--;
    free(h);
}

static void *c_calloc(size_t n, size_t size, void *ctx) {
    void *p = c_malloc(n * size, ctx);
    if (p) memset(p, 0, n * size);
    return p;
}

static void *c_realloc(void *p, size_t size, void *ctx) {
    if (!p) return c_malloc(size, ctx);
    hdr *h = (hdr *)p - 1;
    void *q = c_malloc(size, ctx);
    if (!q) return NULL;
    memcpy(q, p, h->size < size ? h->size : size);
    c_free(p, ctx);
    return q;
}

static counting C;
static bds__palloc counted = {c_malloc, c_free, c_calloc, c_realloc, &C};
static bds__grpc_codec Z;

static void setup(void) {
    memset(&C, 0, sizeof C);
    bds__grpc_codec_init(&Z, &counted);
}

static void teardown(void) {
    bds__grpc_codec_deinit(&Z);
    cr_assert_eq(C.live, 0, "%zu bytes left after deinit", C.live);
    cr_assert_eq(C.blocks, 0);
}

/* ---- zlib's own encoder, for inputs -------------------------------------------------------- */

#define WBITS_ZLIB 15
#define WBITS_GZIP 31
#define WBITS_RAW (-15)

/* |len| bytes of |in| compressed with zlib at level 9 in the given wrapper; *out_len set. */
static uint8_t *zc(const void *in, size_t len, int wbits, size_t *out_len) {
    z_stream s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(deflateInit2(&s, 9, Z_DEFLATED, wbits, 9, Z_DEFAULT_STRATEGY), Z_OK);
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

/* Text-like bytes: compressible, not trivially so. */
static void fill_text(uint8_t *p, size_t len, uint32_t seed) {
    static const char words[][8] = {"stream", "key ", "order", " ", "grpc", "\n", "shard", "reply"};
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 8];
        size_t n = strlen(w);
        for (size_t k = 0; k < n && i < len; k++) p[i++] = (uint8_t)w[k];
        if (i < len) p[i] = (uint8_t)('a' + (seed >> 24) % 26);
    }
}

static bds_status unz(bds__grpc_enc enc, const uint8_t *in, size_t len, uint32_t limit, const uint8_t **out,
                      uint32_t *out_len, const char **why) {
    return bds__grpc_decompress(&Z, enc, in, len, limit, out, out_len, why);
}

/* ---- names ------------------------------------------------------------------------------------ */

Test(grpc_compress, encoding_names_are_exact) {
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"gzip", 4), BDS__GRPC_ENC_GZIP);
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"deflate", 7), BDS__GRPC_ENC_DEFLATE);
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"identity", 8), BDS__GRPC_ENC_IDENTITY);
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"snappy", 6), BDS__GRPC_ENC_UNKNOWN);
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"gzi", 3), BDS__GRPC_ENC_UNKNOWN);
    cr_assert_eq(bds__grpc_enc_parse((const uint8_t *)"gzip\0", 5), BDS__GRPC_ENC_UNKNOWN);
    cr_assert_eq(bds__grpc_enc_parse(NULL, 0), BDS__GRPC_ENC_UNKNOWN);
    cr_assert_str_eq(bds__grpc_enc_name(BDS__GRPC_ENC_GZIP), "gzip");
    cr_assert_str_eq(bds__grpc_enc_name(BDS__GRPC_ENC_DEFLATE), "deflate");
    cr_assert_null(bds__grpc_enc_name(BDS__GRPC_ENC_UNKNOWN));
}

/* ---- decompression ------------------------------------------------------------------------------ */

static void round_trip(int wbits, bds__grpc_enc enc) {
    static uint8_t msg[200000];
    fill_text(msg, sizeof msg, 7);
    size_t zl;
    uint8_t *zb = zc(msg, sizeof msg, wbits, &zl);
    cr_assert_lt(zl, sizeof msg / 2);
    const uint8_t *out;
    uint32_t n;
    const char *why;
    cr_assert_eq(unz(enc, zb, zl, 4u << 20, &out, &n, &why), BDS_OK, "%s", why ? why : "");
    cr_assert_eq(n, sizeof msg);
    cr_assert(memcmp(out, msg, n) == 0);
    cr_assert_leq(C.largest, 256u << 10, "buffers follow the output: largest %zu", C.largest);
    /* The codec is reused for the next message, in either wrapper. */
    static const char small[] = "hello, hello, hello, hello";
    uint8_t *zs = zc(small, sizeof small, wbits, &zl);
    cr_assert_eq(unz(enc, zs, zl, 4u << 20, &out, &n, &why), BDS_OK);
    cr_assert_eq(n, sizeof small);
    cr_assert(memcmp(out, small, n) == 0);
    bds__grpc_codec_trim(&Z);
    cr_assert_leq(Z._buf_cap, 64u << 10, "a large buffer is not kept");
    free(zb);
    free(zs);
}

Test(grpc_compress, gzip_decompresses, .init = setup, .fini = teardown) { round_trip(WBITS_GZIP, BDS__GRPC_ENC_GZIP); }

Test(grpc_compress, deflate_is_the_zlib_format, .init = setup, .fini = teardown) {
    round_trip(WBITS_ZLIB, BDS__GRPC_ENC_DEFLATE);
    /* Raw deflate (no zlib header) and gzip are not "deflate"; zlib is not gzip. */
    static const char msg[] = "raw deflate has no header, so it is not what gRPC calls deflate";
    size_t zl;
    const uint8_t *out;
    uint32_t n;
    const char *why;
    uint8_t *raw = zc(msg, sizeof msg, WBITS_RAW, &zl);
    cr_assert_eq(unz(BDS__GRPC_ENC_DEFLATE, raw, zl, 1024, &out, &n, &why), BDS_INTERNAL);
    cr_assert_not_null(strstr(why, "corrupt"), "%s", why);
    free(raw);
    uint8_t *gz = zc(msg, sizeof msg, WBITS_GZIP, &zl);
    cr_assert_eq(unz(BDS__GRPC_ENC_DEFLATE, gz, zl, 1024, &out, &n, &why), BDS_INTERNAL);
    free(gz);
    uint8_t *zlib = zc(msg, sizeof msg, WBITS_ZLIB, &zl);
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, zlib, zl, 1024, &out, &n, &why), BDS_INTERNAL);
    free(zlib);
}

Test(grpc_compress, empty_messages, .init = setup, .fini = teardown) {
    const uint8_t *out = NULL;
    uint32_t n = 99;
    const char *why;
    /* A zero-length message with the compressed flag: nothing to decompress. */
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, NULL, 0, 16, &out, &n, &why), BDS_OK);
    cr_assert_not_null(out);
    cr_assert_eq(n, 0);
    /* An empty message, compressed: 20 bytes of gzip (23 of zlib) for nothing. */
    for (int i = 0; i < 2; i++) {
        size_t zl;
        uint8_t *z = zc("", 0, i ? WBITS_GZIP : WBITS_ZLIB, &zl);
        cr_assert_eq(unz(i ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE, z, zl, 16, &out, &n, &why), BDS_OK);
        cr_assert_not_null(out);
        cr_assert_eq(n, 0);
        free(z);
    }
}

Test(grpc_compress, truncated_input_is_internal_at_every_cut, .init = setup, .fini = teardown) {
    static uint8_t msg[5000];
    fill_text(msg, sizeof msg, 3);
    for (int w = 0; w < 2; w++) {
        size_t zl;
        uint8_t *z = zc(msg, sizeof msg, w ? WBITS_GZIP : WBITS_ZLIB, &zl);
        bds__grpc_enc enc = w ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
        for (size_t cut = 1; cut < zl; cut++) {
            const uint8_t *out;
            uint32_t n;
            const char *why = NULL;
            cr_assert_eq(unz(enc, z, cut, 1u << 20, &out, &n, &why), BDS_INTERNAL, "cut at %zu of %zu", cut, zl);
            cr_assert_not_null(why);
        }
        free(z);
    }
}

Test(grpc_compress, corrupt_input_is_internal, .init = setup, .fini = teardown) {
    static uint8_t msg[5000];
    fill_text(msg, sizeof msg, 5);
    const uint8_t *out;
    uint32_t n;
    const char *why;
    for (int w = 0; w < 2; w++) {
        size_t zl;
        uint8_t *z = zc(msg, sizeof msg, w ? WBITS_GZIP : WBITS_ZLIB, &zl);
        bds__grpc_enc enc = w ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
        /* The checksum at the end (CRC-32 for gzip, Adler-32 for zlib), the header, the body. */
        size_t spots[] = {zl - 1, zl - 3, 0, 1, zl / 2};
        for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
            uint8_t *bad = malloc(zl);
            memcpy(bad, z, zl);
            bad[spots[i]] ^= 0x5a;
            bds_status st = unz(enc, bad, zl, 1u << 20, &out, &n, &why);
            cr_assert_eq(st, BDS_INTERNAL, "%s: byte %zu of %zu flipped: %d", w ? "gzip" : "deflate", spots[i], zl,
                         (int)st);
            cr_assert_not_null(strstr(why, "corrupt"), "%s", why);
            free(bad);
        }
        /* Bytes after the end of a deflate stream; for gzip, garbage as a second member. */
        uint8_t *tail = malloc(zl + 3);
        memcpy(tail, z, zl);
        memcpy(tail + zl, "xyz", 3);
        cr_assert_eq(unz(enc, tail, zl + 3, 1u << 20, &out, &n, &why), BDS_INTERNAL);
        free(tail);
        free(z);
    }
    static const uint8_t junk[] = "not compressed at all";
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, junk, sizeof junk, 1024, &out, &n, &why), BDS_INTERNAL);
    cr_assert_eq(unz(BDS__GRPC_ENC_DEFLATE, junk, sizeof junk, 1024, &out, &n, &why), BDS_INTERNAL);
    cr_assert_eq(unz(BDS__GRPC_ENC_IDENTITY, junk, sizeof junk, 1024, &out, &n, &why), BDS_E_INVALID);
    /* And after all that, the codec still works. */
    size_t zl;
    uint8_t *z = zc(msg, sizeof msg, WBITS_GZIP, &zl);
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, z, zl, 1u << 20, &out, &n, &why), BDS_OK);
    cr_assert_eq(n, sizeof msg);
    free(z);
}

Test(grpc_compress, gzip_members_one_after_the_other_make_one_message, .init = setup, .fini = teardown) {
    size_t al, bl;
    uint8_t *a = zc("first part, ", 12, WBITS_GZIP, &al);
    uint8_t *b = zc("second part", 11, WBITS_GZIP, &bl);
    uint8_t *ab = malloc(al + bl);
    memcpy(ab, a, al);
    memcpy(ab + al, b, bl);
    const uint8_t *out;
    uint32_t n;
    const char *why;
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, ab, al + bl, 1024, &out, &n, &why), BDS_OK);
    cr_assert_eq(n, 23);
    cr_assert(memcmp(out, "first part, second part", 23) == 0);
    /* ... and the limit holds over all of them together. */
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, ab, al + bl, 22, &out, &n, &why), BDS_RESOURCE_EXHAUSTED);
    free(a);
    free(b);
    free(ab);
}

/* A zip bomb: 64 MiB of zeros in ~64 KiB, against a 1 MiB limit. The codec
 * never holds more than the limit and zlib's own state, whatever the input
 * expands to, and stops after the limit's worth of output. */
Test(grpc_compress, bomb_over_the_limit_is_resource_exhausted_in_bounded_memory, .init = setup, .fini = teardown) {
    size_t big = 64u << 20;
    uint8_t *zeros = calloc(1, big);
    for (int w = 0; w < 2; w++) {
        size_t zl;
        uint8_t *z = zc(zeros, big, w ? WBITS_GZIP : WBITS_ZLIB, &zl);
        cr_assert_lt(zl, 128u << 10);
        const uint8_t *out;
        uint32_t n;
        const char *why;
        C.peak = C.live;
        C.largest = 0;
        uint32_t limit = 1u << 20;
        bds_status st = unz(w ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE, z, zl, limit, &out, &n, &why);
        cr_assert_eq(st, BDS_RESOURCE_EXHAUSTED, "%d", (int)st);
        cr_assert_not_null(strstr(why, "larger than max"), "%s", why);
        cr_assert_leq(C.largest, limit, "one block of %zu bytes", C.largest);
        /* The output buffer (at most the limit; for an instant, as a realloc
         * copies it, the half before too) and zlib's inflate state and window (~43 KiB). */
        cr_assert_leq(C.peak, limit + limit / 2 + (64u << 10), "peak %zu bytes, largest %zu", C.peak, C.largest);
        free(z);
    }
    free(zeros);
}

Test(grpc_compress, exactly_at_the_limit_is_accepted_one_byte_more_is_not, .init = setup, .fini = teardown) {
    static uint8_t msg[65536];
    fill_text(msg, sizeof msg, 11);
    for (int w = 0; w < 2; w++) {
        bds__grpc_enc enc = w ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
        size_t zl;
        uint8_t *z = zc(msg, sizeof msg, w ? WBITS_GZIP : WBITS_ZLIB, &zl);
        const uint8_t *out;
        uint32_t n;
        const char *why;
        cr_assert_eq(unz(enc, z, zl, sizeof msg, &out, &n, &why), BDS_OK);
        cr_assert_eq(n, sizeof msg);
        cr_assert(memcmp(out, msg, n) == 0);
        cr_assert_eq(unz(enc, z, zl, sizeof msg - 1, &out, &n, &why), BDS_RESOURCE_EXHAUSTED);
        /* A buffer kept from a larger message does not let output past a smaller limit. */
        cr_assert_eq(unz(enc, z, zl, sizeof msg, &out, &n, &why), BDS_OK);
        cr_assert_eq(unz(enc, z, zl, 100, &out, &n, &why), BDS_RESOURCE_EXHAUSTED);
        free(z);
    }
    /* Tiny limits: 1 byte, and nothing at all. */
    size_t zl;
    uint8_t *one = zc("x", 1, WBITS_GZIP, &zl);
    const uint8_t *out;
    uint32_t n;
    const char *why;
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, one, zl, 1, &out, &n, &why), BDS_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0], 'x');
    cr_assert_eq(unz(BDS__GRPC_ENC_GZIP, one, zl, 0, &out, &n, &why), BDS_RESOURCE_EXHAUSTED);
    free(one);
}

/* An allocator that fails once its budget of allocations is spent. */
static int stingy_left;
static void *stingy_malloc(size_t size, void *ctx) { return stingy_left-- > 0 ? c_malloc(size, ctx) : NULL; }
static void *stingy_calloc(size_t n, size_t size, void *ctx) {
    return stingy_left-- > 0 ? c_calloc(n, size, ctx) : NULL;
}
static void *stingy_realloc(void *p, size_t size, void *ctx) {
    return stingy_left-- > 0 ? c_realloc(p, size, ctx) : NULL;
}

Test(grpc_compress, out_of_memory_at_every_allocation_is_nomem_and_leaks_nothing) {
    static uint8_t msg[100000];
    fill_text(msg, sizeof msg, 13);
    size_t zl;
    uint8_t *z = zc(msg, sizeof msg, WBITS_GZIP, &zl);
    bds__palloc stingy = {stingy_malloc, c_free, stingy_calloc, stingy_realloc, &C};
    bool done = false;
    for (int budget = 0; budget < 64 && !done; budget++) {
        memset(&C, 0, sizeof C);
        bds__grpc_codec codec;
        bds__grpc_codec_init(&codec, &stingy);
        stingy_left = budget;
        const uint8_t *out;
        uint32_t n;
        const char *why;
        bds_status st = bds__grpc_decompress(&codec, BDS__GRPC_ENC_GZIP, z, zl, 1u << 20, &out, &n, &why);
        if (st == BDS_OK) {
            cr_assert_eq(n, sizeof msg);
            cr_assert(memcmp(out, msg, n) == 0);
            done = true;
        } else {
            cr_assert_eq(st, BDS_E_NOMEM, "budget %d: %d", budget, (int)st);
        }
        const uint8_t *cz;
        size_t czl;
        stingy_left = budget;
        st = bds__grpc_compress(&codec, BDS__GRPC_ENC_DEFLATE, msg, sizeof msg, sizeof msg - 1, &cz, &czl);
        cr_assert(st == BDS_OK || st == BDS_E_NOMEM, "budget %d: compress %d", budget, (int)st);
        bds__grpc_codec_deinit(&codec);
        cr_assert_eq(C.live, 0, "budget %d: %zu bytes leaked", budget, C.live);
    }
    cr_assert(done, "decompressed with enough memory");
    free(z);
}

/* ---- compression ---------------------------------------------------------------------------- */

/* zlib's own decoder, for outputs. */
static size_t zd(const uint8_t *in, size_t len, int wbits, uint8_t *out, size_t cap) {
    z_stream s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(inflateInit2(&s, wbits), Z_OK);
    s.next_in = (Bytef *)(uintptr_t)in;
    s.avail_in = (uInt)len;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    cr_assert_eq(inflate(&s, Z_FINISH), Z_STREAM_END);
    size_t n = cap - s.avail_out;
    inflateEnd(&s);
    return n;
}

Test(grpc_compress, compress_gives_what_zlib_reads_back, .init = setup, .fini = teardown) {
    static uint8_t msg[300000], back[300000];
    fill_text(msg, sizeof msg, 17);
    for (int w = 0; w < 2; w++) {
        for (int round = 0; round < 2; round++) { /* the second reuses the stream */
            const uint8_t *out;
            size_t n;
            bds__grpc_enc enc = w ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
            cr_assert_eq(bds__grpc_compress(&Z, enc, msg, sizeof msg, sizeof msg - 1, &out, &n), BDS_OK);
            cr_assert_lt(n, sizeof msg / 2);
            if (w) cr_assert(out[0] == 0x1f && out[1] == 0x8b, "a gzip header");
            else cr_assert_eq((out[0] << 8 | out[1]) % 31, 0, "a zlib header");
            cr_assert_eq(zd(out, n, w ? WBITS_GZIP : WBITS_ZLIB, back, sizeof back), sizeof msg);
            cr_assert(memcmp(back, msg, sizeof msg) == 0);
            /* ... and our own decoder agrees. */
            uint8_t *copy = malloc(n);
            memcpy(copy, out, n);
            const uint8_t *plain;
            uint32_t pl;
            const char *why;
            cr_assert_eq(unz(enc, copy, n, sizeof msg, &plain, &pl, &why), BDS_OK);
            cr_assert_eq(pl, sizeof msg);
            free(copy);
        }
    }
}

Test(grpc_compress, a_message_that_would_not_shrink_is_refused, .init = setup, .fini = teardown) {
    static uint8_t noise[4096];
    uint32_t x = 1;
    for (size_t i = 0; i < sizeof noise; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise[i] = (uint8_t)x;
    }
    const uint8_t *out;
    size_t n;
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_GZIP, noise, sizeof noise, sizeof noise - 1, &out, &n),
                 BDS_E_AGAIN);
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_GZIP, (const uint8_t *)"x", 1, 0, &out, &n), BDS_E_AGAIN);
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_GZIP, NULL, 0, 0, &out, &n), BDS_E_AGAIN);
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_IDENTITY, noise, 10, 100, &out, &n), BDS_E_INVALID);
    /* With room, even noise and the empty message compress (for a caller that wants it). */
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_GZIP, noise, sizeof noise, 2 * sizeof noise, &out, &n), BDS_OK);
    cr_assert_eq(bds__grpc_compress(&Z, BDS__GRPC_ENC_DEFLATE, NULL, 0, 64, &out, &n), BDS_OK);
    uint8_t back[1];
    cr_assert_eq(zd(out, n, WBITS_ZLIB, back, sizeof back), 0);
}
