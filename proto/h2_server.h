/* h2_server.h — the gRPC server side of one HTTP/2 connection, sans-I/O.
 *
 * Bytes in (bds__h2_recv) become call events delivered through a callback
 * table; calls made by the application (send a message, finish, consume) and
 * the protocol's own answers become bytes out (bds__h2_output). The session
 * never touches a socket, never reads a clock (the caller passes now_ns) and
 * never calls nghttp2_session_send from inside an nghttp2 callback.
 *
 * One connection = one bds__h2_session, owned by one shard. No function here is
 * thread-safe; every callback fires synchronously from inside bds__h2_recv
 * (never from the other calls), on the caller's thread.
 *
 * Call lifetime, as the application sees it:
 *
 *   on_call_start ──► on_message* ──► on_half_close? ──► (app) bds__h2_finish
 *        │                                          └──► on_reset      (peer RST / conn gone)
 *        │                                          └──► on_call_error (session answered it)
 *        └── returns non-OK: refused, answered trailers-only by the session
 *
 * Exactly one of {bds__h2_finish by the app, on_reset, on_call_error} ends a
 * started call; after it the session never mentions that stream again and
 * the app's calls on it return BDS_E_SESSION_CLOSED or BDS_FAILED_PRECONDITION.
 *
 * Flow control is manual (docs/ARCHITECTURE.md). Each stream keeps an exact ledger:
 * received (DATA payload bytes delivered, padding excluded: nghttp2 consumes
 * padding itself) and consumed. The stream's window reopens only through
 * bds__h2_consume; the connection window is credited on receipt (default) or,
 * with conn_credit_on_receipt = false, together with the stream. When a stream
 * closes its unconsumed remainder is settled against the connection, and
 * after the session has ended a call (finish, error, reset) it consumes what
 * arrives on it by itself, so the connection window neither leaks nor is ever
 * over-consumed. */
#ifndef BDS_PROTO_H2_SERVER_H
#define BDS_PROTO_H2_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/status.h"
#include "grpc_compress.h"
#include "grpc_wire.h"
#include "palloc.h"

typedef struct bds__h2_session bds__h2_session;

/* An outbound message the caller keeps (bds__h2_send_ref): embed it in the
 * buffer that holds the payload. Its fields are the session's from
 * bds__h2_send_ref until on_msg_release hands it back. */
typedef struct bds__h2_msg {
    struct bds__h2_msg *_next;
    const uint8_t *_data;   /* the payload (with _framed: prefix + payload),
                               borrowed until on_msg_release                */
    uint32_t _len;          /* payload bytes                                */
    uint32_t _off;          /* bytes of prefix + payload already serialized */
    uint8_t _prefix[5];     /* gRPC Length-Prefixed-Message prefix          */
    bool _owned;            /* allocated by the session (bds__h2_send_msg)  */
    bool _framed;           /* the prefix sits in the caller's buffer, right
                               before the payload: one copy per message     */
} bds__h2_msg;

/* HTTP/2 error codes used in this API (RFC 9113 §7). */
#define BDS_H2_NO_ERROR 0x0u
#define BDS_H2_PROTOCOL_ERROR 0x1u
#define BDS_H2_INTERNAL_ERROR 0x2u
#define BDS_H2_CANCEL 0x8u
#define BDS_H2_ENHANCE_YOUR_CALM 0xbu

typedef struct bds__h2_config {
    uint32_t max_concurrent_streams;  /* SETTINGS_MAX_CONCURRENT_STREAMS (1024)     */
    uint32_t stream_window_bytes;     /* SETTINGS_INITIAL_WINDOW_SIZE (64 KiB)      */
    uint32_t conn_window_bytes;       /* connection receive window (1 MiB)          */
    /* Windows sized to the bandwidth-delay product, as grpc-go's BDP
     * estimator sizes them: a PING goes out with the first DATA after the
     * last one's ACK, and the bytes received until its ACK are a sample of
     * the BDP (at most 1.5x it on a saturated link). A sample of at least
     * 2/3 of the window, at the highest bandwidth seen yet, sets both the
     * streams' initial window (SETTINGS) and the connection's to twice the
     * sample, up to this bound. 0 = fixed windows. */
    uint32_t window_bytes_max;        /* (0)                                        */
    uint32_t header_list_bytes_max;   /* SETTINGS_MAX_HEADER_LIST_SIZE, enforced by
                                         us per request and client trailers (16 KiB).
                                         A header block that decodes to more than 4x
                                         this plus 2x its wire size is an HPACK bomb:
                                         GOAWAY(ENHANCE_YOUR_CALM)                  */
    uint32_t msg_bytes_max;           /* inbound message limit (4 MiB)              */
    uint32_t out_buf_bytes;           /* output buffer bound (256 KiB)              */
    uint32_t stream_send_bytes_max;   /* queued, unsent bytes per stream (8 MiB)    */
    bool conn_credit_on_receipt;      /* credit the connection window on receipt
                                         (true) or with each stream consume         */
    bool credit_partial_messages;     /* credit a message's bytes as they arrive (a
                                         message may exceed the window; buffering is
                                         bounded by msg_bytes_max); on_message's
                                         wire_bytes then reports only the rest.
                                         Default false: the app credits everything */
    /* Flood limits. The glitch bucket: every suspicious frame (PING, SETTINGS,
     * PRIORITY, empty or padding-only DATA without END_STREAM, WINDOW_UPDATE
     * < 1 KiB and PING beyond 3 per DATA frame we sent (at most 3072 banked), invalid
     * frames, RST_STREAM of a started call — every RST_STREAM when nghttp2
     * lacks its own reset limiter) takes a token, and so does every stream
     * the client makes us end: an RST_STREAM we send with a code other than
     * NO_ERROR, a call failed on its input, a request refused at its headers
     * ("MadeYouReset"). An empty bucket ends the connection with
     * GOAWAY(ENHANCE_YOUR_CALM).
     * 0 rate = no refill. The burst stays below max_outbound_ack so that a
     * PING/SETTINGS flood from a client that never reads is calmed with a
     * GOAWAY before nghttp2's ACK-queue limit kills the session outright. */
    uint32_t glitch_burst;            /* 500                                        */
    uint32_t glitch_rate_per_sec;     /* 100                                        */
    uint32_t reset_burst;             /* nghttp2 stream_reset_rate_limit (1000)     */
    uint32_t reset_rate_per_sec;      /* (33), when the setter exists               */
    uint32_t max_continuations;       /* CONTINUATION frames per header block (8)   */
    uint32_t max_outbound_ack;        /* unsent SETTINGS/PING ACKs (1000)           */
    uint32_t max_settings;            /* entries per SETTINGS frame (32)            */
    const bds__grpc_methods *methods; /* borrowed; :path → method index             */
    const bds__palloc *alloc;         /* NULL = libc; nghttp2 and every record      */
    /* Decompresses request messages with the compressed flag (grpc-encoding
     * deflate or gzip), each bounded by msg_bytes_max once decompressed.
     * Borrowed, and shared by every session of one thread (one message is
     * decompressed at a time); NULL = the session makes its own from alloc. */
    bds__grpc_codec *codec;
    /* Request metadata handed to on_call_start (bds__h2_captured_next): every
     * header but the pseudo-headers, content-type, te and grpc-*, values as
     * received (a -bin value is still base64). Nothing is kept per stream: a
     * header block is never interleaved with another, so one buffer per
     * connection holds the block's metadata (allocated only when a request
     * carries some) until on_call_start returns. Past capture_bytes_max per
     * request (entry overhead 6 bytes) the rest is dropped. */
    bool capture_metadata;            /* false                                      */
    uint32_t capture_bytes_max;       /* 16 KiB                                     */
    /* The client PING policy (grpc-go's keepalive EnforcementPolicy): a PING
     * closer than ping_min_interval_ns to the previous one (ping_idle_min_
     * interval_ns while no stream is open) is a strike, unless we sent DATA or
     * HEADERS since; past ping_strikes_max strikes the session sends
     * GOAWAY(ENHANCE_YOUR_CALM, debug data "too_many_pings") and is done once
     * it is written. 0 = no policy (the default here; the server sets it). */
    uint64_t ping_min_interval_ns;
    uint64_t ping_idle_min_interval_ns;
    uint32_t ping_strikes_max;        /* 2                                          */
} bds__h2_config;

/* Response metadata per call (bds__h2_add_metadata): entries and bytes. */
#define BDS_H2_METADATA_MAX 32u
#define BDS_H2_METADATA_BYTES_MAX 17408u

/* Fills |cfg| with the defaults above (methods NULL: every path is unknown). */
void bds__h2_config_default(bds__h2_config *cfg);

typedef struct bds__h2_call_info {
    int32_t stream_id;
    uint32_t method_index;  /* index into config.methods                   */
    uint64_t timeout_ns;    /* grpc-timeout, 0 = none                       */
    uint64_t deadline_ns;   /* now_ns of the recv + timeout (saturating), 0 = none */
    bool end_stream;        /* the request HEADERS already ended the stream */
    const uint8_t *captured; /* the request's metadata (config.capture_metadata), in
                                the form bds__h2_captured_next reads; valid only during
                                on_call_start (copy it to keep it)          */
    uint32_t captured_len;
} bds__h2_call_info;

/* One captured metadata entry, pointing into the capture blob. */
typedef struct bds__h2_header {
    const uint8_t *name, *value;
    size_t name_len, value_len;
} bds__h2_header;
/* Walks a capture blob (bds__h2_call_info.captured, or a copy of it): fills
 * *out with the entry at *off and advances *off; false at the end. Start
 * with *off = 0. */
bool bds__h2_captured_next(const uint8_t *captured, size_t captured_len, size_t *off, bds__h2_header *out);
/* Event callbacks; |ctx| is the one given to bds__h2_create. Every callback
 * may call bds__h2_send_msg, bds__h2_finish, bds__h2_consume and the GOAWAY
 * calls; none may call bds__h2_recv, bds__h2_output or bds__h2_destroy. */
typedef struct bds__h2_callbacks {
    /* A request passed validation. Store the app's per-call context in
     * |*call_ctx| and return BDS_OK, or return a status to refuse it (the
     * session answers trailers-only with that status: e.g. UNAVAILABLE while
     * draining, RESOURCE_EXHAUSTED when out of call slots; BDS_E_AGAIN resets
     * the stream with REFUSED_STREAM instead: nothing was processed, so a
     * client may retry it, e.g. once memory is back under budget). On a refusal
     * |*call_ctx| may point to the grpc-message (a NUL-terminated string that
     * outlives the call, e.g. static), or stay NULL. The call exists
     * once this returns BDS_OK: calls on its stream from inside this callback
     * get BDS_E_SESSION_CLOSED. Required. */
    bds_status (*on_call_start)(void *ctx, const bds__h2_call_info *info, void **call_ctx);
    /* One complete message, decompressed when it came compressed (then
     * |compressed| is true). |msg| is valid only during the callback. Its
     * |wire_bytes| (what it took on the wire: its compressed length + 5) are
     * what bds__h2_consume should credit once the app has taken the message.
     * Required. */
    void (*on_message)(void *ctx, void *call_ctx, int32_t stream_id, const uint8_t *msg,
                       size_t len, uint32_t wire_bytes, bool compressed);
    /* The client half-closed (END_STREAM) after whole messages. Optional. */
    void (*on_half_close)(void *ctx, void *call_ctx, int32_t stream_id);
    /* The call is gone before the app finished it: RST_STREAM from the peer
     * (mapped per PROTOCOL-HTTP2: CANCEL → CANCELLED, REFUSED_STREAM →
     * UNAVAILABLE, ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED, INADEQUATE_SECURITY →
     * PERMISSION_DENIED, else INTERNAL), or bds__h2_abort_calls. Nothing will be
     * sent for it. Terminal. Optional. */
    void (*on_reset)(void *ctx, void *call_ctx, int32_t stream_id, bds_status status,
                     uint32_t h2_error);
    /* The session answered a call by itself. |call_ctx| NULL: a request refused
     * at its headers (never started; informational). Non-NULL: a started call
     * failed on its input (message, decompressed message or client trailers
     * over the limit → RESOURCE_EXHAUSTED; compressed flag without
     * grpc-encoding, corrupt compressed data or truncated message → INTERNAL);
     * trailers are on their way and the call is over for the app. Optional. */
    void (*on_call_error)(void *ctx, void *call_ctx, int32_t stream_id, bds_status status,
                          int http_status);
    /* A message queued with bds__h2_send_ref is no longer referenced: its
     * bytes are in the output buffer, or it was dropped (stream failed, reset
     * or closed; session destroyed). Unlike the events above it also fires from
     * bds__h2_output, bds__h2_finish and bds__h2_destroy: it may only free the
     * message's memory, never call into the session. Required to use
     * bds__h2_send_ref. */
    void (*on_msg_release)(void *ctx, bds__h2_msg *msg);
    /* With credit_partial_messages: may the bytes of the call's message in
     * progress be credited now? false leaves them uncredited, so the client
     * stops at the stream window, until the app calls bds__h2_credit_partial
     * (it has room again). Without partial credit, a client that sends each
     * message but its last byte makes the app hold messages without bound.
     * Only reads app state. Optional (NULL: always). */
    bool (*may_credit_partial)(void *ctx, void *call_ctx);
} bds__h2_callbacks;

/* GOAWAY frames sent, counted by error code: RFC 9113's 0x0..0xd, and one
 * slot for any other code. */
#define BDS_H2_GOAWAY_CODES 15u

/* Counters, for metrics and tests. */
typedef struct bds__h2_stats {
    uint64_t calls_started;
    uint64_t calls_refused;   /* answered at their headers            */
    uint64_t calls_failed;    /* answered on bad input after starting */
    uint64_t calls_reset;     /* on_reset delivered                   */
    uint64_t glitches;        /* suspicious frames counted            */
    uint64_t resets_sent;     /* RST_STREAM other than NO_ERROR sent  */
    uint64_t header_bytes_decoded; /* names + values of every header
                                 block the header callback saw        */
    uint64_t hpack_bombs;     /* header blocks over the decoded bound */
    bool calmed;              /* terminated with ENHANCE_YOUR_CALM    */
    bool too_many_pings;      /* ... by the client PING policy         */
    uint64_t pings_sent;      /* our own PINGs (bds__h2_ping)          */
    uint64_t ping_acks;       /* ACKs of them                          */
    uint32_t window_bytes;    /* stream windows grown to (BDP), 0 = not grown */
    uint64_t windows_capped;  /* bds__h2_stream_window_cap calls that shrank one */
    int nghttp2_fatal;        /* last fatal nghttp2 error, 0 if none  */
    bool flooded;             /* ... one of them was nghttp2's flood
                                 limit (NGHTTP2_ERR_FLOODED)           */
    uint64_t goaways_sent[BDS_H2_GOAWAY_CODES]; /* by error code (notices included) */
} bds__h2_stats;

/* Creates a session, queues our SETTINGS and the connection window update.
 * Returns BDS_OK, BDS_E_NOMEM, or BDS_E_INVALID (bad config). On failure
 * |*out| is NULL. Ownership: |cfg| is copied; cfg->methods, cfg->alloc,
 * |cbs| and |ctx| are borrowed and must outlive the session. */
bds_status bds__h2_create(bds__h2_session **out, const bds__h2_config *cfg,
                          const bds__h2_callbacks *cbs, void *ctx);
/* Frees everything without delivering events (call bds__h2_abort_calls first
 * to tell the app). NULL is a no-op. Never from inside a callback. */
void bds__h2_destroy(bds__h2_session *conn);

/* Feeds received bytes. Events fire from inside. |now_ns| is the caller's
 * monotonic clock (deadlines, glitch bucket). Returns BDS_OK (everything was
 * processed, possibly by ignoring it because the session is ending), or
 * BDS_UNAVAILABLE when the session hit a fatal error (flood detected by
 * nghttp2, bad client magic, out of memory): flush bds__h2_output until
 * bds__h2_want_write is false (its last bytes are a GOAWAY saying why), then
 * close the connection. Borrowed: |in| only for the call. */
bds_status bds__h2_recv(bds__h2_session *conn, const uint8_t *in, size_t len, uint64_t now_ns);

/* Serializes pending frames into the output buffer (up to its bound) and
 * points |*data|/|*len| at all unsent bytes (len 0: nothing to send). The
 * pointer stays valid, and the bytes unchanged, until bds__h2_output_advance.
 * Returns BDS_OK, or BDS_UNAVAILABLE once the session has failed fatally
 * (here or in bds__h2_recv): the bytes buffered are still valid to send, and
 * the GOAWAY(ENHANCE_YOUR_CALM / PROTOCOL_ERROR / INTERNAL_ERROR) that ends
 * them is appended as soon as the buffer has room for it, so keep flushing
 * while bds__h2_want_write is true. */
bds_status bds__h2_output(bds__h2_session *conn, const uint8_t **data, size_t *len);
/* Drops the first |n| bytes of output (the socket took them). n <= len. */
void bds__h2_output_advance(bds__h2_session *conn, size_t n);
/* Takes the whole output buffer, unsent bytes and all (what bds__h2_output
 * just pointed at, now the caller's to send by reference), and gives the
 * session |fresh| in its place, empty: the socket sends the old one without
 * a copy. Returns the old buffer. Ownership: |fresh| (cfg.out_buf_bytes
 * long, from cfg.alloc) becomes the session's; the returned buffer is the
 * caller's, to free with cfg.alloc's free_fn or pass in again as |fresh|. */
uint8_t *bds__h2_output_swap(bds__h2_session *conn, uint8_t *fresh);
/* The output buffer's size (cfg.out_buf_bytes): what a |fresh| must hold. */
size_t bds__h2_output_cap(const bds__h2_session *conn);

/* True when there is output to produce or flush (after a fatal error: the
 * buffered bytes, or the final GOAWAY still waiting for room). */
bool bds__h2_want_write(const bds__h2_session *conn);
/* True when the connection has nothing left to do: GOAWAY exchanged and no
 * stream active, or terminated, or fatal, and the output buffer is empty. */
bool bds__h2_is_done(const bds__h2_session *conn);

/* Queues one gRPC message (copied, 5-byte prefix added) on a stream. The
 * first one sends the response HEADERS. Several queued messages leave in as
 * few DATA frames as flow control allows. Returns BDS_OK; BDS_E_AGAIN (the
 * stream already holds stream_send_bytes_max unsent bytes: wait); BDS_E_INVALID
 * (len over 4 GiB - 6); BDS_FAILED_PRECONDITION (the app already finished);
 * BDS_E_SESSION_CLOSED (no such call: reset, failed, or unknown); BDS_E_NOMEM. */
bds_status bds__h2_send_msg(bds__h2_session *conn, int32_t stream_id, const void *msg, size_t len);
/* The same without a copy or an allocation: queues |msg| (the caller's node)
 * pointing at |len| bytes of |data|, which must stay valid and unchanged until
 * on_msg_release(msg). Same returns as bds__h2_send_msg; on any return other
 * than BDS_OK the session did not take |msg| (no on_msg_release follows). */
bds_status bds__h2_send_ref(bds__h2_session *conn, int32_t stream_id, bds__h2_msg *msg,
                            const void *data, size_t len);
/* The same for a payload with room for the prefix before it: |wire| is 5 +
 * |len| bytes; the session writes the prefix into wire[0..4] (the caller's
 * bytes there are overwritten) and sends the whole as one block. With
 * |compressed| the payload is compressed with the call's response encoding
 * (bds__h2_response_encoding) and the prefix says so; BDS_E_INVALID when
 * that encoding is identity. */
bds_status bds__h2_send_framed(bds__h2_session *conn, int32_t stream_id, bds__h2_msg *msg,
                               uint8_t *wire, size_t len, bool compressed);

/* The encoding of a call's response messages, fixed once its response HEADERS
 * are due (the first message queued, or this call): the first call before
 * then chooses |want| when the client takes it (its grpc-accept-encoding, or
 * the encoding of its request), else identity, and a non-identity choice goes
 * into the HEADERS as grpc-encoding. Every later call returns that choice,
 * whatever |want|: a message may still go uncompressed (Compressed-Flag 0),
 * never with another encoding. IDENTITY for a call the app may not send on. */
bds__grpc_enc bds__h2_response_encoding(bds__h2_session *conn, int32_t stream_id, bds__grpc_enc want);

/* Ends a call: after the queued messages, trailers with grpc-status and the
 * percent-encoded grpc-message (|message| NULL = the status's own text; ignored
 * for OK); trailers-only when nothing was sent. If the client has not ended its
 * side, RST_STREAM(NO_ERROR) follows the trailers. |status| is a gRPC code
 * (0..16) or a bds status projected with bds_status_grpc(); one that maps to
 * "nothing is sent" (-1) resets the stream with CANCEL instead, and so does
 * an allocation failure for the message (RST_STREAM(INTERNAL_ERROR)): either
 * way the call is over. Unconsumed input of the call is credited here.
 * Returns BDS_OK, BDS_FAILED_PRECONDITION (already finished by the app),
 * BDS_E_SESSION_CLOSED (no such call: reset, failed by the session, unknown). */
bds_status bds__h2_finish(bds__h2_session *conn, int32_t stream_id, bds_status status,
                          const char *message);

/* Adds custom metadata to a call's response: to its HEADERS (|trailer| false;
 * they leave with the first message or with a trailers-only answer) or to its
 * trailers. |name| is lower case [a-z0-9-_.], not grpc-* nor a header gRPC
 * itself sets; |value| is printable ASCII (a -bin header's value base64, as
 * on the wire). Copied. Returns BDS_OK; BDS_E_INVALID (a bad or reserved name
 * or value, or past BDS_H2_METADATA_MAX / _BYTES_MAX); BDS_FAILED_PRECONDITION
 * (too late: the HEADERS went, or the app already finished); BDS_E_SESSION_CLOSED
 * (no such call); BDS_E_NOMEM. */
bds_status bds__h2_add_metadata(bds__h2_session *conn, int32_t stream_id, bool trailer,
                                const char *name, const uint8_t *value, size_t len);

/* Credits the stream's receive window (and, with conn_credit_on_receipt off,
 * the connection's) with up to |n| bytes: the amount is clamped to the
 * stream's received − consumed, because the session may have settled the
 * stream itself. Returns the bytes actually credited (0 for a closed stream). */
size_t bds__h2_consume(bds__h2_session *conn, int32_t stream_id, size_t n);
/* With conn_credit_on_receipt: |hold| true stops crediting the connection
 * window (received bytes are owed instead, so the client may send at most one
 * connection window more on all its streams together); false credits what is
 * owed and resumes (e.g. the app's memory budget). */
void bds__h2_hold_conn_credit(bds__h2_session *conn, bool hold);
/* With credit_partial_messages: credits the bytes of the stream's message in
 * progress received so far, which may_credit_partial held back (the app has
 * room again). No-op for a closed or unknown stream, or when none is held. */
void bds__h2_credit_partial(bds__h2_session *conn, int32_t stream_id);
/* Caps the stream's receive window at |cap| bytes (>= 1 KiB), or with |cap| 0
 * gives it the session's window again (SETTINGS_INITIAL_WINDOW_SIZE as the
 * client acknowledged it, grown by BDP). A cap never sends anything: the
 * client keeps what it was granted, and the stream's next credits, as many
 * bytes as the cut, are withheld to pay for it; lifting it hands back at once
 * what was withheld. A cap holds when the session's window grows (BDP
 * SETTINGS): the growth is withheld from the capped stream's credits too.
 * For an app that has stopped taking a stream's messages: what a window
 * grants past that is only a backlog parked in the server. A cap at or above
 * the session's window gives it the session's window. Returns the stream's
 * window now: less than |cap| when the session's is (0 for a closed or
 * unknown stream, which it leaves alone). */
uint32_t bds__h2_stream_window_cap(bds__h2_session *conn, int32_t stream_id, uint32_t cap);
/* Body bytes of the stream's message in progress the session holds (0 when
 * none or unknown): what a memory budget can pin on the stream. */
size_t bds__h2_partial_bytes(const bds__h2_session *conn, int32_t stream_id);
/* received − consumed for a stream (0 when unknown). */
size_t bds__h2_unconsumed(const bds__h2_session *conn, int32_t stream_id);
/* Unsent queued bytes on a stream (0 when unknown). */
size_t bds__h2_queued_bytes(const bds__h2_session *conn, int32_t stream_id);

/* Graceful shutdown, step 1: GOAWAY(last id 2^31-1) so the client stops
 * opening streams. Step 2: bds__h2_goaway with the last processed stream id.
 * Returns BDS_OK or BDS_E_NOMEM / BDS_E_INVALID (session already ending). */
bds_status bds__h2_shutdown_notice(bds__h2_session *conn);
bds_status bds__h2_goaway(bds__h2_session *conn, uint32_t h2_error);
/* Ends the connection now: GOAWAY(|h2_error|), then nothing more is read. */
bds_status bds__h2_terminate(bds__h2_session *conn, uint32_t h2_error);

/* Keepalive: sends a PING of our own unless one is still unanswered.
 * Returns BDS_OK, or BDS_E_INVALID once the session is ending. */
bds_status bds__h2_ping(bds__h2_session *conn);
/* True while our last PING has not been acknowledged. */
bool bds__h2_ping_outstanding(const bds__h2_session *conn);
/* True once the client's preface and first SETTINGS frame have arrived. */
bool bds__h2_peer_ready(const bds__h2_session *conn);

/* Tells the app every live call is gone (on_reset with |status|, h2_error
 * CANCEL), e.g. when the socket closed. The calls are then over for the app. */
void bds__h2_abort_calls(bds__h2_session *conn, bds_status status);

/* The status a client RST_STREAM error code means (PROTOCOL-HTTP2). */
bds_status bds__h2_rst_status(uint32_t h2_error);

const bds__h2_stats *bds__h2_get_stats(const bds__h2_session *conn);

/* Which optional nghttp2 flood protections this build uses (detected at
 * configure time; Debian backports some to 1.52). */
#define BDS_H2_FEAT_STREAM_RESET_RATE_LIMIT (1u << 0)
#define BDS_H2_FEAT_MAX_CONTINUATIONS (1u << 1)
#define BDS_H2_FEAT_MAX_OUTBOUND_ACK (1u << 2)
#define BDS_H2_FEAT_MAX_SETTINGS (1u << 3)
unsigned bds__h2_nghttp2_features(void);
#define BDS_H2_FEAT_ALL 0xfu

/* Describes the libnghttp2 this process loaded into |buf| (NUL-terminated,
 * cut to |cap|): its version, the one built against, and the flood
 * protections this build uses or lacks. Returns true when that deserves a
 * warning at start: a protection is missing (nghttp2 older than 1.52.0-1+deb12u3
 * at build time: no rapid-reset or CONTINUATION limit of its own), or the
 * library loaded is older than the one built against. Debian's backports keep
 * the version string "1.52.0", so only what the build detected names them. */
bool bds__h2_nghttp2_report(char *buf, size_t cap);
/* The same over given facts (versions as NGHTTP2_VERSION_NUM, 0xMMmmpp). */
bool bds__h2_nghttp2_describe(char *buf, size_t cap, const char *loaded, int loaded_num,
                              const char *built, int built_num, unsigned features);

#endif
