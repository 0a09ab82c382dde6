/* fuzz_decompress.c — gRPC message decompression (proto/grpc_compress.c)
 * against a reference, and compression read back.
 *
 * Input: [selector][bytes...]. Selector bit 0: gzip or deflate (the zlib
 * format); bits 1..3: the limit (0 B to 1 MiB); bit 4: also compress the
 * bytes with the codec and decompress them again. The reference inflates the
 * bytes with zlib in the plainest way (into limit + 1 bytes at once; gzip
 * members one after the other): both must give the same verdict, and the
 * same message when it is OK. Whatever the bytes, every allocation is at most
 * the limit or zlib's own state, no output passes the limit, and deinit
 * frees everything. */
#include <zlib.h>

#include "fuzz_common.h"
#include "grpc_compress.h"

/* An allocator that checks each block against a bound and counts what is live. */
typedef struct counting {
    size_t bound;
    long live;
} counting;

static void *c_malloc(size_t size, void *ctx) {
    counting *c = ctx;
    FUZZ_CHECK(size <= c->bound, "a block of %zu bytes (bound %zu)", size, c->bound);
    c->live++;
    return malloc(size ? size : 1);
}

static void c_free(void *p, void *ctx) {
    counting *c = ctx;
    if (!p) return;
    c->live--;
    free(p);
}

static void *c_calloc(size_t n, size_t size, void *ctx) {
    void *p = c_malloc(n * size, ctx);
    if (p) memset(p, 0, n * size);
    return p;
}

static void *c_realloc(void *p, size_t size, void *ctx) {
    counting *c = ctx;
    FUZZ_CHECK(size <= c->bound, "a block of %zu bytes (bound %zu)", size, c->bound);
    if (!p) c->live++;
    return realloc(p, size ? size : 1);
}

/* The reference: OK, RESOURCE_EXHAUSTED past |limit|, or INTERNAL. */
static bds_status ref_inflate(bool gzip, const uint8_t *in, size_t len, uint32_t limit, uint8_t *out,
                              size_t *out_len) {
    *out_len = 0;
    if (len == 0) return BDS_OK;
    size_t room = (size_t)limit + 1, have = 0, pos = 0;
    for (;;) {
        z_stream s;
        memset(&s, 0, sizeof s);
        FUZZ_CHECK(inflateInit2(&s, gzip ? 31 : 15) == Z_OK, "inflateInit2");
        s.next_in = (Bytef *)(uintptr_t)(in + pos);
        s.avail_in = (uInt)(len - pos);
        s.next_out = out + have;
        s.avail_out = (uInt)(room - have);
        int rc = inflate(&s, Z_FINISH);
        have = room - s.avail_out;
        pos = len - s.avail_in;
        inflateEnd(&s);
        if (have > limit) return BDS_RESOURCE_EXHAUSTED;
        if (rc != Z_STREAM_END) return BDS_INTERNAL;
        if (pos == len) {
            *out_len = have;
            return BDS_OK;
        }
        if (!gzip) return BDS_INTERNAL; /* bytes after the end */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint32_t limits[] = {0, 1, 16, 100, 4096, 65536, 300000, 1u << 20};
    fuzz_in in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    bool gzip = sel & 1;
    uint32_t limit = limits[(sel >> 1) & 7];
    bds__grpc_enc enc = gzip ? BDS__GRPC_ENC_GZIP : BDS__GRPC_ENC_DEFLATE;
    /* zlib's own blocks (inflate state, window; deflate's at level 1) are at most 64 KiB. */
    counting cnt = {.bound = (limit > 65536 ? limit : 65536) + 64};
    bds__palloc alloc = {c_malloc, c_free, c_calloc, c_realloc, &cnt};
    bds__grpc_codec z;
    bds__grpc_codec_init(&z, &alloc);

    const uint8_t *msg;
    uint32_t msg_len;
    const char *why;
    bds_status st = bds__grpc_decompress(&z, enc, in.p, in.len, limit, &msg, &msg_len, &why);
    FUZZ_CHECK(st == BDS_OK || st == BDS_INTERNAL || st == BDS_RESOURCE_EXHAUSTED, "status %d", (int)st);
    FUZZ_CHECK(st == BDS_OK || why != NULL, "a failure without a reason");
    uint8_t *ref = malloc((size_t)limit + 1);
    size_t ref_len;
    bds_status want = ref_inflate(gzip, in.p, in.len, limit, ref, &ref_len);
    FUZZ_CHECK(st == want, "%s, limit %u: status %d, the reference %d (%s)", gzip ? "gzip" : "deflate", limit,
               (int)st, (int)want, why ? why : "");
    if (st == BDS_OK) {
        FUZZ_CHECK(msg != NULL && msg_len <= limit, "%u bytes out, limit %u", msg_len, limit);
        FUZZ_CHECK(msg_len == ref_len && memcmp(msg, ref, msg_len) == 0, "not what the reference got");
    }
    free(ref);

    if (sel & 0x10) {
        /* The bytes as a message: compressed with the codec, read back by it. */
        const uint8_t *zb;
        size_t zl;
        cnt.bound = (in.len > 65536 ? in.len : 65536) + 64;
        st = bds__grpc_compress(&z, enc, in.p, in.len, in.len + 64, &zb, &zl);
        FUZZ_CHECK(st == BDS_OK, "compress %zu bytes with room: %d", in.len, (int)st);
        uint8_t *copy = malloc(zl ? zl : 1);
        memcpy(copy, zb, zl);
        st = bds__grpc_decompress(&z, enc, copy, zl, (uint32_t)in.len, &msg, &msg_len, &why);
        FUZZ_CHECK(st == BDS_OK, "read back: %d (%s)", (int)st, why ? why : "");
        FUZZ_CHECK(msg_len == in.len && memcmp(msg, in.p, in.len) == 0, "read back differs");
        free(copy);
        /* Room for less than the input: refused (E_AGAIN) unless it shrank. */
        if (in.len > 0) {
            st = bds__grpc_compress(&z, enc, in.p, in.len, in.len - 1, &zb, &zl);
            FUZZ_CHECK(st == BDS_E_AGAIN || (st == BDS_OK && zl < in.len), "compress into less: %d", (int)st);
        }
    }
    bds__grpc_codec_deinit(&z);
    FUZZ_CHECK(cnt.live == 0, "%ld blocks left after deinit", cnt.live);
    return 0;
}
