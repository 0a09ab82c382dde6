/* grpc_compress.c — gRPC message compression through zlib.
 *
 * Design: one z_stream per direction and wrapper, made on first use and reset
 * between messages (inflateReset2 switches between the zlib and the gzip
 * wrapper without freeing the window; a deflate state is ~270 KiB, so each is
 * made once). Output goes to one buffer that grows geometrically from
 * CODEC_MIN_BYTES as zlib produces bytes, never past the caller's bound: a
 * decompression that fills the buffer at its limit asks zlib for one byte
 * more, and getting it means the message is over the limit.
 *
 * Invariants: _buf_cap is the size of _buf (0 when NULL); every zlib
 * allocation goes through _alloc (zlib's zalloc/zfree hooks).
 *
 * Elsewhere: which messages are compressed, and the grpc-encoding headers,
 * are h2_server.c's (requests) and io/server_stream.c's (replies). */
#include "grpc_compress.h"

#include <string.h>
#include <zlib.h>

#include "base.h"

#define CODEC_MIN_BYTES 4096u
#define CODEC_KEEP_BYTES (64u * 1024u)
#define ZLIB_WBITS 15      /* a 32 KiB window: what every deflate stream may use */
#define GZIP_WBITS (15 + 16) /* zlib's flag for the gzip wrapper */

static const uint8_t codec_empty[1] = {0};

/* ---- names ------------------------------------------------------------------------ */

static const char *const enc_names[] = {"identity", "deflate", "gzip"};

bds__grpc_enc bds__grpc_enc_parse(const uint8_t *v, size_t len) {
    BDS_ASSERT(v != NULL || len == 0);
    for (size_t i = 0; i < sizeof enc_names / sizeof enc_names[0]; i++)
        if (strlen(enc_names[i]) == len && memcmp(enc_names[i], v, len) == 0) return (bds__grpc_enc)i;
    return BDS__GRPC_ENC_UNKNOWN;
}

const char *bds__grpc_enc_name(bds__grpc_enc enc) {
    return (unsigned)enc < sizeof enc_names / sizeof enc_names[0] ? enc_names[enc] : NULL;
}

unsigned bds__grpc_accept_parse(const uint8_t *v, size_t len) {
    BDS_ASSERT(v != NULL || len == 0);
    unsigned set = BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_IDENTITY);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t')) i++;
        size_t start = i;
        while (i < len && v[i] != ',') i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
        bds__grpc_enc e = bds__grpc_enc_parse(v + start, end - start);
        if (e != BDS__GRPC_ENC_UNKNOWN) set |= BDS__GRPC_ENC_BIT(e);
        i++; /* past the comma */
    }
    return set;
}

/* ---- the codec ------------------------------------------------------------------------ */

static voidpf codec_zalloc(voidpf opaque, uInt items, uInt size) {
    const bds__palloc *a = opaque;
    size_t n;
    if (__builtin_mul_overflow((size_t)items, (size_t)size, &n)) return Z_NULL;
    return a->malloc_fn(n, a->ctx);
}

static void codec_zfree(voidpf opaque, voidpf p) {
    const bds__palloc *a = opaque;
    a->free_fn(p, a->ctx);
}

void bds__grpc_codec_init(bds__grpc_codec *z, const bds__palloc *alloc) {
    BDS_ASSERT(z != NULL);
    memset(z, 0, sizeof *z);
    z->_alloc = alloc != NULL ? alloc : bds__palloc_libc();
}

/* A z_stream from the codec's allocator, its hooks set, or NULL. */
static z_stream *codec_zstream_new(bds__grpc_codec *z) {
    z_stream *s = z->_alloc->calloc_fn(1, sizeof *s, z->_alloc->ctx);
    if (s == NULL) return NULL;
    s->zalloc = codec_zalloc;
    s->zfree = codec_zfree;
    s->opaque = (voidpf)(uintptr_t)z->_alloc;
    return s;
}

void bds__grpc_codec_deinit(bds__grpc_codec *z) {
    BDS_ASSERT(z != NULL && z->_alloc != NULL);
    if (z->_inflate != NULL) {
        inflateEnd(z->_inflate);
        z->_alloc->free_fn(z->_inflate, z->_alloc->ctx);
        z->_inflate = NULL;
    }
    for (size_t i = 0; i < sizeof z->_deflate / sizeof z->_deflate[0]; i++) {
        if (z->_deflate[i] == NULL) continue;
        deflateEnd(z->_deflate[i]);
        z->_alloc->free_fn(z->_deflate[i], z->_alloc->ctx);
        z->_deflate[i] = NULL;
    }
    z->_alloc->free_fn(z->_buf, z->_alloc->ctx);
    z->_buf = NULL;
    z->_buf_cap = 0;
}

void bds__grpc_codec_trim(bds__grpc_codec *z) {
    BDS_ASSERT(z != NULL);
    if (z->_buf_cap <= CODEC_KEEP_BYTES) return;
    z->_alloc->free_fn(z->_buf, z->_alloc->ctx);
    z->_buf = NULL;
    z->_buf_cap = 0;
}

/* Grows the buffer (keeping its first |keep| bytes) to the next size up to
 * |max| (> its size), starting from |first|. False when out of memory (the
 * buffer is as it was). */
static bool codec_grow(bds__grpc_codec *z, size_t keep, size_t first, size_t max) {
    BDS_ASSERT(keep <= z->_buf_cap && first > 0 && z->_buf_cap < max);
    size_t cap = z->_buf_cap == 0 ? first : (size_t)z->_buf_cap * 2;
    if (cap > max) cap = max;
    uint8_t *p;
    if (keep == 0) {
        z->_alloc->free_fn(z->_buf, z->_alloc->ctx);
        z->_buf = NULL;
        z->_buf_cap = 0;
        p = z->_alloc->malloc_fn(cap, z->_alloc->ctx);
    } else {
        p = z->_alloc->realloc_fn(z->_buf, cap, z->_alloc->ctx); /* NULL: _buf still ours */
    }
    if (p == NULL) return false;
    z->_buf = p;
    z->_buf_cap = (uint32_t)cap;
    return true;
}

/* The inflate stream, reset for a message of |enc|; NULL when out of memory. */
static z_stream *codec_inflater(bds__grpc_codec *z, bds__grpc_enc enc) {
    int wbits = enc == BDS__GRPC_ENC_GZIP ? GZIP_WBITS : ZLIB_WBITS;
    z_stream *s = z->_inflate;
    if (s != NULL) return inflateReset2(s, wbits) == Z_OK ? s : NULL;
    s = codec_zstream_new(z);
    if (s == NULL) return NULL;
    if (inflateInit2(s, wbits) != Z_OK) {
        z->_alloc->free_fn(s, z->_alloc->ctx);
        return NULL;
    }
    z->_inflate = s;
    return s;
}

/* Ends a decompression with a failure. */
static bds_status codec_fail(const char **reason, bds_status st, const char *why) {
    *reason = why;
    return st;
}

bds_status bds__grpc_decompress(bds__grpc_codec *z, bds__grpc_enc enc, const uint8_t *in, size_t len,
                                uint32_t limit, const uint8_t **out, uint32_t *out_len, const char **reason) {
    BDS_ASSERT(z != NULL && out != NULL && out_len != NULL && reason != NULL);
    BDS_ASSERT(in != NULL || len == 0);
    *reason = NULL;
    *out = codec_empty;
    *out_len = 0;
    if (enc != BDS__GRPC_ENC_DEFLATE && enc != BDS__GRPC_ENC_GZIP)
        return codec_fail(reason, BDS_E_INVALID, "not a compressed encoding");
    if (len == 0) return BDS_OK;
    if (len > UINT32_MAX) return codec_fail(reason, BDS_RESOURCE_EXHAUSTED, "compressed message too large");
    bds__grpc_codec_trim(z);
    z_stream *s = codec_inflater(z, enc);
    if (s == NULL) return codec_fail(reason, BDS_E_NOMEM, "out of memory decompressing a message");
    s->next_in = (Bytef *)(uintptr_t)in;
    s->avail_in = (uInt)len;
    /* A first buffer sized from the input (deflate rarely shrinks a protobuf
     * message below a fourth), a power of two, then doubling as the output
     * demands: a realloc that copies holds at most 1.5 times the limit for
     * an instant (twice, less a byte, when the limit is not a power of two). */
    size_t first = CODEC_MIN_BYTES;
    while (first < len * 4 && first < limit) first *= 2;
    size_t have = 0;
    for (;;) {
        uint8_t probe;
        bool probing = false;
        size_t cap = z->_buf_cap < limit ? z->_buf_cap : limit; /* a buffer kept from before may be larger */
        if (have == cap) {
            if (cap == limit) {
                probing = true; /* at the limit: one more byte would be over it */
            } else {
                if (!codec_grow(z, have, first, limit))
                    return codec_fail(reason, BDS_E_NOMEM, "out of memory decompressing a message");
                cap = z->_buf_cap;
            }
        }
        s->next_out = probing ? &probe : z->_buf + have;
        s->avail_out = probing ? 1u : (uInt)(cap - have);
        uInt room = s->avail_out;
        uInt before_in = s->avail_in;
        int rc = inflate(s, Z_NO_FLUSH);
        uInt made = room - s->avail_out;
        if (probing && made > 0)
            return codec_fail(reason, BDS_RESOURCE_EXHAUSTED, "message larger than max after decompression");
        have += made;
        switch (rc) {
        case Z_STREAM_END:
            if (s->avail_in == 0) {
                *out = have > 0 ? z->_buf : codec_empty;
                *out_len = (uint32_t)have;
                return BDS_OK;
            }
            /* gzip: another member follows (RFC 1952 §2.2). */
            if (enc != BDS__GRPC_ENC_GZIP)
                return codec_fail(reason, BDS_INTERNAL, "corrupt compressed message: bytes after its end");
            if (inflateReset(s) != Z_OK) return codec_fail(reason, BDS_INTERNAL, "corrupt compressed message");
            break;
        case Z_OK:
        case Z_BUF_ERROR:
            /* No progress with input left and room to write: zlib is stuck. */
            if (s->avail_in == 0 && made == 0)
                return codec_fail(reason, BDS_INTERNAL, "corrupt compressed message: truncated");
            if (made == 0 && before_in == s->avail_in && s->avail_out > 0)
                return codec_fail(reason, BDS_INTERNAL, "corrupt compressed message");
            break;
        case Z_MEM_ERROR:
            return codec_fail(reason, BDS_E_NOMEM, "out of memory decompressing a message");
        default: /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
            return codec_fail(reason, BDS_INTERNAL, "corrupt compressed message");
        }
    }
}

/* The deflate stream of |enc|, reset; NULL when out of memory. */
static z_stream *codec_deflater(bds__grpc_codec *z, bds__grpc_enc enc) {
    void **slot = &z->_deflate[enc == BDS__GRPC_ENC_GZIP ? 1 : 0];
    z_stream *s = *slot;
    if (s != NULL) return deflateReset(s) == Z_OK ? s : NULL;
    s = codec_zstream_new(z);
    if (s == NULL) return NULL;
    int wbits = enc == BDS__GRPC_ENC_GZIP ? GZIP_WBITS : ZLIB_WBITS;
    if (deflateInit2(s, BDS_GRPC_DEFLATE_LEVEL, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        z->_alloc->free_fn(s, z->_alloc->ctx);
        return NULL;
    }
    *slot = s;
    return s;
}

bds_status bds__grpc_compress(bds__grpc_codec *z, bds__grpc_enc enc, const uint8_t *in, size_t len, size_t out_max,
                              const uint8_t **out, size_t *out_len) {
    BDS_ASSERT(z != NULL && out != NULL && out_len != NULL);
    BDS_ASSERT(in != NULL || len == 0);
    if ((enc != BDS__GRPC_ENC_DEFLATE && enc != BDS__GRPC_ENC_GZIP) || len > UINT32_MAX - 1) return BDS_E_INVALID;
    if (out_max > UINT32_MAX) out_max = UINT32_MAX;
    bds__grpc_codec_trim(z);
    z_stream *s = codec_deflater(z, enc);
    if (s == NULL) return BDS_E_NOMEM;
    s->next_in = (Bytef *)(uintptr_t)(len > 0 ? in : codec_empty);
    s->avail_in = (uInt)len;
    /* Half the input is a fair first guess for a message worth compressing. */
    size_t first = len / 2 < CODEC_MIN_BYTES ? CODEC_MIN_BYTES : len / 2;
    size_t have = 0;
    for (;;) {
        size_t cap = z->_buf_cap < out_max ? z->_buf_cap : out_max;
        if (have == cap) {
            if (cap == out_max) return BDS_E_AGAIN; /* it would not be smaller than that */
            if (!codec_grow(z, have, first, out_max)) return BDS_E_NOMEM;
            cap = z->_buf_cap;
        }
        s->next_out = z->_buf + have;
        s->avail_out = (uInt)(cap - have);
        uInt room = s->avail_out;
        int rc = deflate(s, Z_FINISH);
        have += room - s->avail_out;
        if (rc == Z_STREAM_END) {
            *out = z->_buf;
            *out_len = have;
            return BDS_OK;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) return rc == Z_MEM_ERROR ? BDS_E_NOMEM : BDS_E_INVALID;
    }
}
