/* http1_req.h — the head of one HTTP/1.x request (RFC 9112), strictly,
 * sans-I/O: enough for a scrape endpoint (GET /metrics), nothing more.
 *
 * The caller keeps the bytes received so far and asks after each arrival.
 * The verdict comes as early as the bytes allow: a request line that cannot
 * become valid (a TLS ClientHello, an HTTP/2 preface, a control byte) is
 * BAD before its end arrives, so a stray client is answered at once.
 *
 * Accepted: request-line = method SP origin-form SP "HTTP/1.0" / "HTTP/1.1"
 * CRLF; then header fields "name: value" CRLF (name a token, value visible
 * ASCII, obs-text, SP and HTAB, no obs-fold), then an empty line. HTTP/1.1
 * needs exactly one Host field (RFC 9112 §3.2). Bare LF line ends, a space
 * before the colon, a line starting with whitespace, NUL or other controls
 * are BAD. A body (Content-Length, Transfer-Encoding) is not read: the
 * server answers and closes. Thread/Shard: pure; no allocation. */
#ifndef BDS_PROTO_HTTP1_REQ_H
#define BDS_PROTO_HTTP1_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bds__http1_verdict {
    BDS_HTTP1_MORE = 0,   /* valid so far; the head is not complete */
    BDS_HTTP1_DONE,       /* a complete, valid head: *out is filled */
    BDS_HTTP1_BAD,        /* malformed: answer 400 and close */
    BDS_HTTP1_TOO_LARGE,  /* no complete head within max bytes */
} bds__http1_verdict;

#define BDS_HTTP1_METHOD_MAX 16u

/* The parse so far: each call judges only the lines completed since the
 * last one (no byte is scanned twice), so a head sent a byte at a time costs
 * linear time. */
typedef struct bds__http1_req {
    size_t pos;               /* bytes of complete lines judged so far */
    bool line_done;           /* the request line was judged */
    uint32_t hosts;           /* Host fields seen */
    /* With DONE: */
    char method[BDS_HTTP1_METHOD_MAX + 1]; /* NUL-terminated token, as sent (case-sensitive) */
    size_t path_off, path_len; /* the target's path in the caller's bytes, without "?query" */
    uint8_t minor;            /* HTTP/1.<minor>: 0 or 1 */
    size_t head_len;          /* bytes of the head, the final empty line included */
} bds__http1_req;

/* Starts judging a new request. */
void bds__http1_init(bds__http1_req *r);
/* Judges buf[0..len): every byte received so far of the request (the same
 * bytes as before, with more appended). max bounds the head: with no end of
 * head within the first max bytes it is TOO_LARGE. Returns the verdict;
 * the fields marked "with DONE" are valid only then. */
bds__http1_verdict bds__http1_parse(bds__http1_req *r, const uint8_t *buf, size_t len, size_t max);

#endif
