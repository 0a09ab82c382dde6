/* grpc_frame.h — gRPC Length-Prefixed-Message framing, sans-I/O.
 *
 * gRPC PROTOCOL-HTTP2: Length-Prefixed-Message = Compressed-Flag (1 byte, 0 or
 * 1) · Message-Length (4 bytes, big-endian) · Message. DATA frame boundaries
 * are unrelated to message boundaries, so the deframer is a byte-stream state
 * machine fed arbitrary chunks.
 *
 * Deframer contract, in one loop:
 *
 *     while (len > 0) {
 *         size_t used = bds__grpc_deframe(&d, in, len, &ev);
 *         in += used; len -= used;
 *         switch (ev.kind) { MESSAGE: ...; ERROR: stop feeding; NONE: (len is 0) }
 *     }
 *     ... at END_STREAM: bds__grpc_deframer_finish(&d) == BDS_OK, or truncated.
 *
 * The 5-byte prefix is checked (flag, length against the limit) BEFORE a single
 * body byte is buffered: an oversized message costs nothing but its prefix.
 * A message lying wholly inside the current chunk is handed out in place (no
 * copy); a message split across chunks is copied into a buffer from the
 * caller's allocator that grows as its bytes arrive (doubling from 4 KiB, never
 * past the message), so memory follows the bytes received, not the length
 * announced.
 *
 * Thread/Shard: a deframer belongs to one stream; no internal locking. */
#ifndef BDS_PROTO_GRPC_FRAME_H
#define BDS_PROTO_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/status.h"
#include "palloc.h"

#define BDS_GRPC_PREFIX_BYTES 5u
#define BDS_GRPC_MSG_BYTES_MAX_DEFAULT (4u * 1024u * 1024u) /* gRPC's default: 4 MiB */

/* ---- framer ------------------------------------------------------------------ */

/* Writes the 5-byte prefix for a message of |len| bytes into |out|.
 * Ownership: |out| is the caller's, at least BDS_GRPC_PREFIX_BYTES long. */
void bds__grpc_frame_prefix(uint8_t out[BDS_GRPC_PREFIX_BYTES], bool compressed, uint32_t len);

/* Writes prefix + |msg| into |out|. Returns the bytes written (len + 5), or 0
 * when |cap| is too small (nothing written). |msg| may be NULL when len is 0. */
size_t bds__grpc_frame_write(uint8_t *out, size_t cap, const void *msg, uint32_t len);

/* ---- deframer ---------------------------------------------------------------- */

typedef enum bds__grpc_ev_kind {
    BDS__GRPC_EV_NONE = 0, /* the chunk was used up without completing a message */
    BDS__GRPC_EV_MESSAGE,  /* one complete message: data/len/compressed/copied   */
    BDS__GRPC_EV_ERROR,    /* malformed or over the limit: status/len/reason      */
} bds__grpc_ev_kind;

typedef struct bds__grpc_ev {
    bds__grpc_ev_kind kind;
    /* MESSAGE: the body; valid until the next call on this deframer (it points
     * into the caller's chunk when !copied, into the deframer's buffer when
     * copied). Never NULL, even for a zero-length message. */
    const uint8_t *data;
    uint32_t len;    /* MESSAGE: body length. ERROR: the announced length, if parsed */
    bool compressed; /* MESSAGE: flag was 1 (only when compression was allowed)      */
    bool copied;     /* MESSAGE: false = zero-copy fast path                         */
    bds_status status; /* ERROR: BDS_RESOURCE_EXHAUSTED (over the limit), BDS_INTERNAL
                          (bad flag, compressed without grpc-encoding), BDS_E_NOMEM */
    const char *reason; /* ERROR: static text for grpc-message                       */
} bds__grpc_ev;

typedef struct bds__grpc_deframer {
    const bds__palloc *_alloc;
    uint32_t _msg_bytes_max;     /* messages longer than this are refused      */
    bool _compression_allowed;   /* a grpc-encoding other than identity agreed */
    bool _failed;                /* sticky: after ERROR, every call is ERROR    */
    uint8_t _hdr_have;           /* 0..5 prefix bytes seen for the current msg  */
    uint8_t _hdr[BDS_GRPC_PREFIX_BYTES];
    uint32_t _msg_len;           /* valid when _hdr_have == 5                   */
    uint32_t _msg_have;          /* body bytes buffered; <= _msg_len            */
    uint8_t *_buf;               /* _buf_cap bytes from _alloc, or NULL         */
    uint32_t _buf_cap;
    bds_status _err_status;
    const char *_err_reason;
    uint32_t _err_len;
} bds__grpc_deframer;

/* Initializes |d| in caller storage. |msg_bytes_max| 0 means the 4 MiB default.
 * |compression_allowed| is true only when the request carried a grpc-encoding
 * the caller will decode; otherwise compressed-flag 1 is INTERNAL.
 * Ownership: |alloc| (NULL = libc) must outlive |d|. Never allocates. */
void bds__grpc_deframer_init(bds__grpc_deframer *d, uint32_t msg_bytes_max,
                             bool compression_allowed, const bds__palloc *alloc);
/* Frees the buffer, if any. |d| may be re-initialized afterwards. */
void bds__grpc_deframer_deinit(bds__grpc_deframer *d);

/* Consumes bytes from |in| (len > 0) until one event is ready or the chunk is
 * used up, and describes the event in |*ev|. Returns the bytes consumed
 * (<= len; len whenever ev->kind is NONE). After an ERROR the deframer is
 * failed: every later call returns 0 bytes and the same ERROR.
 * Ownership: |in| is borrowed for the call; a MESSAGE may point into it. */
size_t bds__grpc_deframe(bds__grpc_deframer *d, const uint8_t *in, size_t len, bds__grpc_ev *ev);

/* At end of stream: BDS_OK when the stream ended on a message boundary,
 * BDS_INTERNAL when a prefix or body was cut short (truncated message), or the
 * sticky error's status when the deframer already failed. */
bds_status bds__grpc_deframer_finish(const bds__grpc_deframer *d);

/* The message in progress: true with its announced length and the body bytes
 * received so far when a prefix has been parsed and the body is incomplete;
 * false at a message boundary or mid-prefix. Lets flow control see how much of
 * a large message is still to come. Either out pointer may be NULL. */
bool bds__grpc_deframer_partial(const bds__grpc_deframer *d, uint32_t *msg_len, uint32_t *have);

#endif
