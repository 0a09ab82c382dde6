/* grpc_wire.h — gRPC request-header facts, sans-I/O (gRPC PROTOCOL-HTTP2).
 *
 *   - grpc-timeout: TimeoutValue (1..8 ASCII digits) + TimeoutUnit (H M S m u n)
 *     → nanoseconds, saturating at UINT64_MAX; anything else is malformed.
 *   - grpc-message: percent-encoding of every byte outside 0x20..0x7E and '%'
 *     ("%XX", upper-case hex), and lenient decoding (a bad escape is kept as is).
 *   - request validation: a header-by-header checker that ends in a verdict
 *     (HTTP status + gRPC status + grpc-message) the HTTP/2 session answers with.
 *
 * Thread/Shard: pure functions and caller-owned state; no allocation. */
#ifndef BDS_PROTO_GRPC_WIRE_H
#define BDS_PROTO_GRPC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/status.h"

/* ---- grpc-timeout ------------------------------------------------------------------- */

/* Parses a grpc-timeout value of |len| bytes (not NUL-terminated). On success
 * stores the timeout in nanoseconds (saturating) in |*out_ns| and returns true.
 * Returns false (|*out_ns| untouched) for an empty value, more than 8 digits,
 * a missing or unknown unit, or any other byte. */
bool bds__grpc_timeout_parse(const char *s, size_t len, uint64_t *out_ns);

/* Formats |ns| as a grpc-timeout value into |out| (NUL-terminated, at most 9
 * characters + NUL), choosing the finest unit whose value fits in 8 digits
 * (rounding up, so the peer never sees a shorter deadline). Returns its length. */
size_t bds__grpc_timeout_format(uint64_t ns, char out[10]);

/* ---- -bin metadata values: base64 ----------------------------------------------- */

/* Binary metadata ("-bin" names) travels base64 (RFC 4648 §4), padded or not:
 * decoders accept both, we send it unpadded (PROTOCOL-HTTP2). */
/* Writes the unpadded encoding of in[0..len) to out (room for
 * bds__base64_encoded_len(len) bytes); returns that length. */
size_t bds__base64_encode(const uint8_t *in, size_t len, char *out);
static inline size_t bds__base64_encoded_len(size_t len) { return len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0); }
/* Decodes in[0..len) (padded or not) into out (room for len * 3 / 4 bytes).
 * Returns the decoded length, or SIZE_MAX when in is not base64. */
size_t bds__base64_decode(const char *in, size_t len, uint8_t *out);

/* ---- grpc-message percent-encoding ------------------------------------------------- */

/* Percent-encodes |len| bytes of |in| into |out| (|cap| bytes). Returns the
 * length the full encoding needs (like snprintf); when that is <= |cap| the
 * whole encoding was written (no NUL is added). |out| may be NULL when cap is 0. */
size_t bds__grpc_percent_encode(const uint8_t *in, size_t len, char *out, size_t cap);

/* Decodes |len| bytes of |in| into |out| (which must hold |len| bytes; the
 * result is never longer). A '%' not followed by two hex digits is copied
 * literally (PROTOCOL-HTTP2: decoding must not fail). Returns the decoded length.
 * |in| and |out| may be the same buffer. */
size_t bds__grpc_percent_decode(const char *in, size_t len, uint8_t *out);

/* ---- request validation ---------------------------------------------------------- */

/* The methods a server serves: |paths[i]| is "/package.Service/Method" and its
 * index i is the method index reported for a matching :path. Borrowed: it must
 * outlive every checker and session that uses it. */
typedef struct bds__grpc_methods {
    const char *const *paths;
    uint32_t count;
} bds__grpc_methods;

/* Returns the index of the |len|-byte |path| in |methods|, or -1. */
int32_t bds__grpc_methods_find(const bds__grpc_methods *methods, const char *path, size_t len);

#define BDS_GRPC_HEADER_BYTES_MAX_DEFAULT (16u * 1024u)

/* What the server answers with. http_status 200 + grpc_status OK means "accept
 * the call"; any other verdict is answered at once (trailers-only, or an HTTP
 * error status with grpc-status too, as grpc-go does). */
typedef struct bds__grpc_verdict {
    int http_status;         /* 200, 400, 405, 415 or 431                   */
    bds_status grpc_status;  /* BDS_OK or a gRPC code 1..16                  */
    const char *message;     /* static text for grpc-message; NULL when OK   */
} bds__grpc_verdict;

/* Incremental checker: init, feed every request header, then verdict.
 * Fields are private. */
typedef struct bds__grpc_req_check {
    const bds__grpc_methods *_methods;
    uint32_t _header_bytes_max;
    uint32_t _header_bytes;     /* RFC 7541 §4.1 size: name + value + 32 each   */
    int32_t _method_index;      /* -1 until a known :path is seen                */
    uint64_t _timeout_ns;       /* 0 = none                                      */
    uint16_t _seen;             /* REQ_SEEN_* bits (grpc_wire.c)                 */
    uint16_t _bad;              /* REQ_BAD_* bits (grpc_wire.c)                  */
    uint8_t _encoding;          /* grpc-encoding (bds__grpc_enc), IDENTITY if none */
    uint8_t _accept;            /* grpc-accept-encoding: a set of BDS__GRPC_ENC_BIT */
} bds__grpc_req_check;

/* Starts a request. |header_bytes_max| 0 means 16 KiB (our own bound; nghttp2
 * only advertises SETTINGS_MAX_HEADER_LIST_SIZE). |methods| is borrowed. */
void bds__grpc_req_init(bds__grpc_req_check *rc, const bds__grpc_methods *methods,
                        uint32_t header_bytes_max);

/* Feeds one header field (lower-case name, as HTTP/2 requires). Returns
 * false once the header list has grown past the bound: the caller may stop
 * looking at values (the verdict is 431 / RESOURCE_EXHAUSTED). */
bool bds__grpc_req_header(bds__grpc_req_check *rc, const uint8_t *name, size_t namelen,
                          const uint8_t *value, size_t valuelen);

/* The verdict, in precedence order: header list too large (431,
 * RESOURCE_EXHAUSTED) · :method not POST (405, INTERNAL) · content-type not
 * application/grpc[+...] (415, INTERNAL) · te not "trailers" (400, INTERNAL) ·
 * malformed grpc-timeout (200, INTERNAL) · grpc-encoding other than identity,
 * deflate or gzip (200, UNIMPLEMENTED; the answer's grpc-accept-encoding says
 * which we take) · unknown :path (200, UNIMPLEMENTED) · OK. */
bds__grpc_verdict bds__grpc_req_verdict(const bds__grpc_req_check *rc);

/* After an OK verdict: the method index and the timeout (0 = none). */
int32_t bds__grpc_req_method(const bds__grpc_req_check *rc);
uint64_t bds__grpc_req_timeout_ns(const bds__grpc_req_check *rc);
/* After an OK verdict: the request's grpc-encoding (a bds__grpc_enc:
 * identity, deflate or gzip), and the encodings the client takes in replies:
 * those its grpc-accept-encoding lists, with identity and the request's own
 * encoding (a client that compresses with gzip decompresses it too), as a set
 * of BDS__GRPC_ENC_BIT. */
uint8_t bds__grpc_req_encoding(const bds__grpc_req_check *rc);
unsigned bds__grpc_req_accept(const bds__grpc_req_check *rc);

#endif
