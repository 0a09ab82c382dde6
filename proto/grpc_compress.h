/* grpc_compress.h — gRPC message compression, sans-I/O (gRPC's compression.md
 * and PROTOCOL-HTTP2: grpc-encoding, grpc-accept-encoding, Compressed-Flag).
 *
 * Encodings: "identity" (none), "deflate" (the zlib format of RFC 1950, which is
 * what gRPC calls deflate) and "gzip" (RFC 1952; a message may be several gzip
 * members one after the other, as gzip itself allows), through zlib.
 *
 * A codec holds zlib's state and one output buffer, created on first use and
 * reused, for one thread: the server keeps one per shard and every HTTP/2
 * session of the shard borrows it (h2_server.h), since a message is inflated
 * whole, synchronously, and its bytes are copied out before the next one.
 *
 * Decompression is bounded by the caller's limit (the server's message size):
 * the output buffer grows as bytes come out (doubling from 4 KiB), never past
 * the limit, and one byte more than the limit ends it RESOURCE_EXHAUSTED, so a
 * zip bomb costs at most the limit in memory and in inflate work, whatever the
 * size its bytes or its gzip trailer claim.
 *
 * Thread/Shard: a codec belongs to one thread; no internal locking. */
#ifndef BDS_PROTO_GRPC_COMPRESS_H
#define BDS_PROTO_GRPC_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/status.h"
#include "palloc.h"

typedef enum bds__grpc_enc {
    BDS__GRPC_ENC_IDENTITY = 0,
    BDS__GRPC_ENC_DEFLATE = 1,
    BDS__GRPC_ENC_GZIP = 2,
    BDS__GRPC_ENC_UNKNOWN = 3, /* a name this server does not decode */
} bds__grpc_enc;

/* A set of encodings: bit (1 << enc). */
#define BDS__GRPC_ENC_BIT(e) (1u << (unsigned)(e))
/* What every response advertises in grpc-accept-encoding. */
#define BDS_GRPC_ACCEPT_ENCODING "identity,deflate,gzip"
/* zlib's fastest level: replies are compressed inside the event loop of the
 * stream's home shard, and level 1 already takes most of what repetition a
 * protobuf message has (docs/SERVICE.md has what it costs). */
#define BDS_GRPC_DEFLATE_LEVEL 1
/* Replies shorter than this are not worth compressing: deflate's setup for
 * each message (deflateReset clears its 64 KiB hash table) costs more than
 * the few bytes it could save, and gzip's own header and trailer take 18. */
#define BDS_GRPC_COMPRESS_MIN_BYTES 64u

/* The encoding a grpc-encoding value of |len| bytes names (exact,
 * case-sensitive, as gRPC's registries compare): UNKNOWN for anything else. */
bds__grpc_enc bds__grpc_enc_parse(const uint8_t *v, size_t len);
/* "identity", "deflate" or "gzip"; NULL for UNKNOWN. */
const char *bds__grpc_enc_name(bds__grpc_enc enc);
/* The encodings of ours a grpc-accept-encoding value lists (comma-separated,
 * optional spaces and tabs around each name; unknown names ignored), as a set
 * of BDS__GRPC_ENC_BIT; identity is always in it. */
unsigned bds__grpc_accept_parse(const uint8_t *v, size_t len);

typedef struct bds__grpc_codec {
    const bds__palloc *_alloc;
    void *_inflate;        /* z_stream, inflateInit2'ed on first use, or NULL */
    void *_deflate[2];     /* z_stream for deflate [0] and gzip [1], or NULL */
    uint8_t *_buf;         /* the output of the last call, _buf_cap bytes */
    uint32_t _buf_cap;
} bds__grpc_codec;

/* Initializes |z| in caller storage; allocates nothing yet.
 * Ownership: |alloc| (NULL = libc) must outlive |z|. */
void bds__grpc_codec_init(bds__grpc_codec *z, const bds__palloc *alloc);
/* Frees zlib's state and the buffer. |z| may be initialized again after. */
void bds__grpc_codec_deinit(bds__grpc_codec *z);
/* Releases the output buffer when it is larger than the codec keeps between
 * messages (64 KiB), so one large message does not pin its size. */
void bds__grpc_codec_trim(bds__grpc_codec *z);

/* Decompresses one message of |len| bytes compressed with |enc| (deflate or
 * gzip). On BDS_OK |*out| (never NULL) and |*out_len| are the message, in the
 * codec's buffer: valid until the next call on |z|. Otherwise |*reason| is a
 * static text for grpc-message:
 *   BDS_RESOURCE_EXHAUSTED  it decompresses to more than |limit| bytes (found
 *                           after at most |limit| + 1 bytes of output)
 *   BDS_INTERNAL            corrupt, truncated, or bytes after its end (deflate)
 *   BDS_E_NOMEM             no memory for the buffer or zlib's state
 *   BDS_E_INVALID           |enc| is not deflate or gzip
 * An empty input (a zero-length message with the compressed flag) is an empty
 * message: there is nothing to decompress.
 * Ownership: |in| is borrowed for the call. */
bds_status bds__grpc_decompress(bds__grpc_codec *z, bds__grpc_enc enc, const uint8_t *in, size_t len,
                                uint32_t limit, const uint8_t **out, uint32_t *out_len, const char **reason);

/* Compresses |len| bytes of |in| with |enc| (deflate or gzip) at
 * BDS_GRPC_DEFLATE_LEVEL. On BDS_OK |*out| and |*out_len| are the compressed
 * bytes, in the codec's buffer: valid until the next call on |z|. Returns
 * BDS_E_AGAIN when they would be more than |out_max| bytes (pass len - 1: a
 * message that does not shrink is better sent as it is), BDS_E_NOMEM, or
 * BDS_E_INVALID (|enc| is not deflate or gzip, or |len| is 4 GiB or more). */
bds_status bds__grpc_compress(bds__grpc_codec *z, bds__grpc_enc enc, const uint8_t *in, size_t len, size_t out_max,
                              const uint8_t **out, size_t *out_len);

#endif
