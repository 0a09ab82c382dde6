/* h2_server.c — gRPC over one HTTP/2 server connection, around nghttp2, sans-I/O.
 *
 * Design. One nghttp2 server session per connection, created with
 * nghttp2_session_server_new3 over the caller's allocator. nghttp2 parses and
 * serializes frames; this file keeps one record per request stream
 * (struct h2_stream, attached as nghttp2 stream user data at on_begin_headers
 * and freed at on_stream_close) and turns nghttp2's callbacks into call events:
 *
 *   on_begin_headers  → record in H2S_HEADERS; request checker started
 *   on_header         → bds__grpc_req_header (validation, our header-size bound);
 *                       every block's decoded bytes → HPACK bomb bound (GOAWAY);
 *                       client trailers → the same header-size bound
 *   on_frame_recv     → HEADERS: verdict → on_call_start, or answered at once;
 *                       END_STREAM: truncation check → on_half_close
 *   on_data_chunk_recv→ ledger; gRPC deframer → decompression (grpc_compress.c)
 *                       → on_message / answered error
 *   on_stream_close   → on_reset if the app still owned the call; settle ledger
 *   on_begin_frame, on_invalid_frame_recv, on_frame_recv(WINDOW_UPDATE)
 *                     → glitch bucket → terminate with ENHANCE_YOUR_CALM
 *   on_frame_send     → RST_STREAM(NO_ERROR) after our END_STREAM when the
 *                       client has not ended its side (gRPC early trailers);
 *                       an RST_STREAM we send with an error → glitch bucket
 *                       (as are calls we fail or refuse: provoked resets)
 *
 * Output: the first message submits the response HEADERS with a data provider
 * whose read callback packs queued, framed messages into DATA frames (several
 * per frame; NO_COPY: the send_data callback writes them straight into the
 * output buffer) and, once the queue is empty and the call is finishing, ends the
 * data with EOF|NO_END_STREAM and submits the trailers. An empty queue defers
 * the provider; a new message resumes it (INVALID_ARGUMENT = stream gone, ignored).
 * Frames are serialized only by bds__h2_output (nghttp2_session_send with a
 * send callback appending whole frames to a bounded buffer, WOULDBLOCK when
 * one does not fit), never from inside a callback.
 *
 * Fatal errors. Once nghttp2 returns a fatal error (a flood its own limits
 * caught — too many CONTINUATIONs, unsent ACKs —, a bad client preface, out
 * of memory) the session is only destroyed: nghttp2 is never called again, so
 * it cannot write the connection error itself. The client still gets a clear
 * one (docs/SERVICE.md): bds__h2_output appends a GOAWAY written here, after the frames
 * already in the buffer (ENHANCE_YOUR_CALM for floods, PROTOCOL_ERROR for a
 * bad preface, INTERNAL_ERROR otherwise; last-stream-id as nghttp2 had it).
 * That is why the buffer holds whole frames: a frame is cut only when it is
 * larger than the whole buffer, and then no GOAWAY can follow it.
 *
 * Stream record state (the app's view of the call; nghttp2 owns the HTTP/2 state):
 *
 *   H2S_HEADERS ──verdict OK, app accepts──► H2S_OPEN ──finish / error / reset──► H2S_DONE
 *        └──────verdict bad or app refuses──► H2S_REJECTED
 *
 * Only H2S_OPEN delivers events. Invariants: consumed <= received per stream;
 * a record is on the live list exactly while nghttp2 holds it as user data;
 * q_bytes is the sum of unsent queued bytes (each message's _off counts what
 * of its prefix + payload has left).
 *
 * Memory: records, copied messages (bds__h2_send_msg), deframer buffers, the
 * output buffer and all of nghttp2's memory come from cfg.alloc. Messages
 * queued by reference (bds__h2_send_ref) stay the caller's: the queue links the
 * caller's node, and on_msg_release gives it back once its bytes are in the
 * output buffer or dropped, so a reply costs no allocation and one copy here.
 *
 * Metadata: the request's application headers (cfg.capture_metadata) are copied, while their
 * header block is decoded, into one buffer per connection (header blocks never
 * interleave) and shown to on_call_start; custom response metadata
 * (bds__h2_add_metadata) is kept per stream, allocated only when there is some,
 * and joins the response HEADERS or the trailers when they are submitted.
 *
 * Compression: a request's grpc-encoding (deflate, gzip) lets its deframer
 * take compressed-flag messages, which are decompressed through the codec
 * (cfg.codec, or the session's own) before on_message, bounded by
 * msg_bytes_max; the ledger still counts the bytes on the wire. Replies are
 * compressed by the app; the session only announces the call's response
 * encoding (bds__h2_response_encoding) in its HEADERS and sets the flag.
 *
 * Elsewhere: request validation and timeouts (grpc_wire.c), framing
 * (grpc_frame.c), compression (grpc_compress.c), sockets and clocks (io/). */
#include "h2_server.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <string.h>

#include "base.h"
#include "grpc_frame.h"
#include "list.h"

enum h2s_state { H2S_HEADERS = 1, H2S_REJECTED, H2S_OPEN, H2S_DONE };
/* Who ended an H2S_DONE call: decides what the app's late calls get back. */
enum h2s_end { H2S_END_NONE = 0, H2S_END_APP, H2S_END_SESSION, H2S_END_PEER };

#define H2_GRPC_MESSAGE_RAW_MAX 1024u  /* longer grpc-message texts are cut     */
#define H2_SMALL_WINDOW_UPDATE 1024u   /* a WINDOW_UPDATE below this is a glitch */
#define H2_EARNED_PER_DATA 3u          /* a stream and a connection WINDOW_UPDATE
                                          and a BDP PING per DATA frame we send   */
#define H2_EARNED_MAX (H2_EARNED_PER_DATA * 1024u) /* for the last 1024 of them  */
#define H2_OUT_BUF_MIN 1024u
#define H2_FRAME_HD_BYTES 9u           /* RFC 9113 §4.1 */
#define H2_GOAWAY_BYTES 17u            /* header + last-stream-id + error code */
#define H2_FIELD_OVERHEAD 32u          /* RFC 7541 §4.1: a field's size adds 32 */
/* HPACK bomb bound: name + value bytes one header block may decode to. */
#define H2_HPACK_LIST_FACTOR 4u        /* x header_list_bytes_max, plus           */
#define H2_HPACK_WIRE_FACTOR 2u        /* x the block's bytes on the wire (Huffman
                                          decodes at most 8/5 of its input)        */

BDS_STATIC_ASSERT(sizeof(((bds__h2_msg *)0)->_prefix) == BDS_GRPC_PREFIX_BYTES, "gRPC prefix size");

struct h2_stream {
    bds__dlist live_link;          /* on the conn's live list                    */
    int32_t id;
    uint8_t state;                 /* enum h2s_state                             */
    uint8_t ended_by;              /* enum h2s_end, set when state is H2S_DONE    */
    bool response_submitted;       /* HEADERS with a data provider submitted      */
    bool finishing;                /* trailers follow once the queue is empty     */
    bool remote_closed;            /* client END_STREAM seen                      */
    uint8_t md_n;                  /* response metadata entries in md             */
    uint16_t md_len;               /* bytes of md                                 */
    uint8_t *md;                   /* response metadata (bds__h2_add_metadata), or
                                      NULL; entries: trailer flag, name length,
                                      value length (2, big-endian), name, value   */
    void *call_ctx;
    uint64_t recv_bytes;           /* DATA payload delivered to us                */
    uint32_t precredited;       /* window already credited for the message in progress */
    uint64_t consumed_bytes;       /* credited back; <= recv_bytes                */
    bds__h2_msg *q_head, *q_tail;  /* messages to send, in order                 */
    size_t q_bytes;                /* unsent queued bytes                         */
    bool deferred;                 /* our read callback deferred the DATA: a new
                                      message must resume it                      */
    uint64_t consume_pending;      /* counted in consumed_bytes, not yet told to
                                      nghttp2 (on the conn's consume list)        */
    bds__dlist consume_link;       /* on the consume list, while consume_pending */
    uint32_t cap_debt;             /* a window cap's cut not yet paid: credits
                                      withheld from nghttp2 (h2_consume_flush_one) */
    uint32_t cap_paid;             /* credits withheld so far, given back when the
                                      cap lifts                                   */
    uint32_t cap;                  /* the window's cap (bds__h2_stream_window_cap),
                                      0 = none                                    */
    int grpc_code;                 /* trailers' grpc-status                       */
    char *grpc_msg;                /* percent-encoded grpc-message, or NULL       */
    size_t grpc_msg_len;
    bds__grpc_req_check req;
    bds__grpc_deframer deframer;   /* initialized once H2S_OPEN                   */
    bool deframer_live;
    uint8_t req_enc;               /* the request's grpc-encoding (bds__grpc_enc)  */
    uint8_t accept;                /* encodings the client takes (BDS__GRPC_ENC_BIT) */
    uint8_t resp_enc;              /* the responses' encoding (bds__grpc_enc)      */
    bool resp_enc_fixed;           /* ... chosen: bds__h2_response_encoding, or the
                                      HEADERS went                                 */
};

struct bds__h2_session {
    nghttp2_session *ng;
    bds__h2_config cfg;
    const bds__palloc *alloc;
    nghttp2_mem mem;
    bds__h2_callbacks cbs;
    void *ctx;
    bds__grpc_codec *codec;        /* cfg.codec, or &own_codec                   */
    bds__grpc_codec own_codec;
    uint64_t now_ns;
    uint8_t *out;                  /* out_cap bytes; [0, out_len) unsent         */
    size_t out_len, out_cap;
    bds__dlist live;               /* every stream record (h2_stream.live_link)  */
    bds__dlist consume;            /* streams with consume_pending > 0           */
    int32_t last_id;               /* one-entry lookup cache: last_id -> last_s  */
    struct h2_stream *last_s;
    bool in_recv;                  /* inside nghttp2_session_mem_recv            */
    bool in_output;                /* inside nghttp2_session_send                */
    bool fatal;                    /* nghttp2 failed fatally: only destroy/flush */
    uint8_t *cap;                  /* metadata of the header block being decoded
                                      (cfg.capture_metadata), or NULL             */
    uint32_t cap_len, cap_cap;
    int32_t cap_id;                /* the stream they belong to                  */
    uint64_t hb_decoded;           /* name + value bytes the header block being
                                      received decoded to (HPACK bomb bound)      */
    uint64_t hb_list_bytes;        /* its RFC 7541 size (trailers' list bound)   */
    uint32_t own_refusals;         /* REFUSED_STREAMs we queued for our own want
                                      of room (on_call_start: E_AGAIN), not yet
                                      sent: not provoked, so not glitches        */
    bool out_cut;                  /* out ends inside a frame (larger than out) */
    bool goaway_due;               /* fatal: our own GOAWAY is still to be written */
    uint32_t goaway_code;          /* its error code                             */
    int32_t goaway_last_id;        /* its last-stream-id                         */
    int32_t goaway_floor;          /* lowest last-stream-id of any GOAWAY queued
                                      (INT32_MAX before the first): h2_goaway_last_id */
    uint64_t glitch_tat_ns;        /* GCRA theoretical arrival time              */
    bool conn_credit_held;         /* bds__h2_hold_conn_credit: receipts are owed */
    uint64_t conn_credit_owed;     /* connection credit held back (< its window) */
    uint64_t wu_allowance;         /* small WINDOW_UPDATEs and PINGs our DATA frames justify */
    uint64_t ping_last_ns;         /* the client's last PING (ping_seen)         */
    uint32_t ping_strikes;         /* client PINGs against the policy            */
    bool ping_seen;
    bool ping_strikes_reset;       /* we sent DATA or HEADERS since its last PING */
    bool ping_outstanding;         /* our keepalive PING awaits its ACK          */
    bool bdp_ping_out;             /* our BDP PING is queued or awaits its ACK   */
    uint32_t bdp_window;           /* the windows now (cfg.window_bytes_max)     */
    uint64_t bdp_sample;           /* DATA bytes since the BDP PING went         */
    uint64_t bdp_sent_ns;
    double bdp_rtt_ns;             /* smoothed round trip of the BDP PING        */
    double bdp_bw_max;             /* highest sample / (1.5 rtt) seen            */
    bool peer_ready;               /* the client's first SETTINGS arrived        */
    bool close_on_goaway;          /* too_many_pings: done once the GOAWAY left  */
    bool goaway_left;
    bds__h2_stats stats;
};

/* ---- small helpers --------------------------------------------------------------- */

static bool h2_conn_credit_auto(const bds__h2_session *c) { return c->cfg.conn_credit_on_receipt; }

/* The GOAWAY error code for a session that failed with nghttp2 error |rv|. */
static uint32_t h2_fatal_code(const bds__h2_session *c, int rv) {
    switch (rv) {
    case NGHTTP2_ERR_FLOODED: /* unsent SETTINGS/PING ACKs over max_outbound_ack */
#if defined(BDS_HAVE_NGHTTP2_MAX_CONTINUATIONS)
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
#endif
        return NGHTTP2_ENHANCE_YOUR_CALM;
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
        return NGHTTP2_PROTOCOL_ERROR;
    default: /* out of memory, or a callback failed on one of those */
        return c->stats.calmed ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_INTERNAL_ERROR;
    }
}

/* The last-stream-id for a GOAWAY queued now: the last stream processed, never
 * above that of a GOAWAY queued before. nghttp2 bounds it only by the GOAWAYs
 * it has sent, so one still queued could be overtaken (0, then 1), and RFC 9113
 * §6.8 forbids raising it: nghttp2's own client calls that a PROTOCOL_ERROR. */
static int32_t h2_goaway_last_id(bds__h2_session *c) {
    int32_t last = nghttp2_session_get_last_proc_stream_id(c->ng);
    if (last > c->goaway_floor) last = c->goaway_floor;
    c->goaway_floor = last;
    return last;
}

/* nghttp2 failed fatally: from here on only bds__h2_destroy touches it. The
 * first cause names the GOAWAY that bds__h2_output writes by hand (none when
 * the buffer ends inside a frame: nothing can follow it). */
static void h2_fatal(bds__h2_session *c, int rv) {
    BDS_ASSERT(rv < 0);
    if (!c->fatal) {
        c->goaway_code = h2_fatal_code(c, rv);
        c->goaway_last_id = h2_goaway_last_id(c); /* a field read */
        c->goaway_due = !c->out_cut;
    }
    c->fatal = true;
    c->stats.nghttp2_fatal = rv;
    if (rv == NGHTTP2_ERR_FLOODED) c->stats.flooded = true;
}

/* Appends the fatal session's GOAWAY (RFC 9113 §6.8) once the buffer has room. */
static void h2_fatal_goaway(bds__h2_session *c) {
    BDS_ASSERT(c->fatal);
    if (!c->goaway_due || c->out_cap - c->out_len < H2_GOAWAY_BYTES) return;
    BDS_ASSERT(!c->out_cut);
    uint8_t *p = c->out + c->out_len;
    uint32_t last = (uint32_t)c->goaway_last_id & 0x7fffffffu, code = c->goaway_code;
    const uint8_t f[H2_GOAWAY_BYTES] = {
        0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0, /* length 8, no flags, stream 0 */
        (uint8_t)(last >> 24), (uint8_t)(last >> 16), (uint8_t)(last >> 8), (uint8_t)last,
        (uint8_t)(code >> 24), (uint8_t)(code >> 16), (uint8_t)(code >> 8), (uint8_t)code,
    };
    memcpy(p, f, sizeof f);
    c->out_len += H2_GOAWAY_BYTES;
    c->goaway_due = false;
    c->stats.goaways_sent[code < BDS_H2_GOAWAY_CODES - 1 ? code : BDS_H2_GOAWAY_CODES - 1]++;
}

/* Records a non-OK nghttp2 result from a call we make; fatal ones end the session. */
static void h2_check(bds__h2_session *c, int rv) {
    if (rv != 0 && nghttp2_is_fatal(rv)) h2_fatal(c, rv);
}

static struct h2_stream *h2_stream_get(const bds__h2_session *c, int32_t id) {
    BDS_ASSERT(c != NULL && c->ng != NULL);
    if (id <= 0) return NULL;
    return nghttp2_session_get_stream_user_data(c->ng, id);
}

/* The same through a one-entry cache: the app's calls come in runs on one
 * stream (a message arrives and is credited; a reply is checked and queued),
 * and each nghttp2 lookup is a hash probe. The entry is dropped when its
 * record is freed. */
static struct h2_stream *h2_stream_find(bds__h2_session *c, int32_t id) {
    if (id == c->last_id && id > 0) return c->last_s;
    struct h2_stream *s = h2_stream_get(c, id);
    if (s != NULL) {
        c->last_id = id;
        c->last_s = s;
    }
    return s;
}

/* ---- deferred stream credit -------------------------------------------------------- */

/* Tells nghttp2 about |s|'s pending credit (one call however many messages
 * were credited since the last flush) and takes it off the consume list. */
static void h2_consume_flush_one(bds__h2_session *c, struct h2_stream *s) {
    BDS_ASSERT(s->consume_pending > 0 && bds__dlist_linked(&s->consume_link));
    size_t k = (size_t)s->consume_pending;
    s->consume_pending = 0;
    bds__dlist_unlink(&s->consume_link);
    if (c->fatal) return;
    if (s->cap_debt) { /* the cut is paid first: the stream's share is withheld */
        uint32_t pay = k < s->cap_debt ? (uint32_t)k : s->cap_debt;
        s->cap_debt -= pay;
        s->cap_paid += pay;
        k -= pay;
        if (!c->cfg.conn_credit_on_receipt) h2_check(c, nghttp2_session_consume_connection(c->ng, pay));
        /* nghttp2 is told even with nothing left over (k = 0): it decides on a
         * WINDOW_UPDATE only when told of a consumption, and what arrived
         * since it last was may have brought its received count up to one. */
    }
    int rv = c->cfg.conn_credit_on_receipt ? nghttp2_session_consume_stream(c->ng, s->id, k)
                                           : nghttp2_session_consume(c->ng, s->id, k);
    h2_check(c, rv);
}

/* Before frames are serialized: every pending credit becomes WINDOW_UPDATEs
 * in the same send. */
static void h2_consume_flush(bds__h2_session *c) {
    for (bds__dlist *l; (l = bds__dlist_first(&c->consume));)
        h2_consume_flush_one(c, BDS_DLIST_ENTRY(l, struct h2_stream, consume_link));
}

/* A closing stream's pending credit is moot for the stream; the connection's
 * share (when not credited on receipt) is given now. */
static void h2_consume_drop(bds__h2_session *c, struct h2_stream *s) {
    if (s->consume_pending == 0) return;
    uint64_t k = s->consume_pending;
    s->consume_pending = 0;
    bds__dlist_unlink(&s->consume_link);
    if (!c->cfg.conn_credit_on_receipt && !c->fatal && c->ng != NULL)
        h2_check(c, nghttp2_session_consume_connection(c->ng, (size_t)k));
}

static int h2_grpc_code(bds_status st) {
    if ((int)st >= 0 && (int)st <= 16) return (int)st;
    return bds_status_grpc(st);
}

/* Writes |v| (0..999) as decimal into |buf|; returns its length. */
static size_t h2_fmt_u(char buf[4], unsigned v) {
    BDS_ASSERT(v < 1000);
    size_t n = 0;
    if (v >= 100) buf[n++] = (char)('0' + v / 100);
    if (v >= 10) buf[n++] = (char)('0' + v / 10 % 10);
    buf[n++] = (char)('0' + v % 10);
    buf[n] = '\0';
    return n;
}

static nghttp2_nv h2_nv(const char *name, const char *value, size_t valuelen) {
    nghttp2_nv nv = {(uint8_t *)(uintptr_t)name, (uint8_t *)(uintptr_t)value, strlen(name),
                     valuelen, NGHTTP2_NV_FLAG_NONE};
    return nv;
}

/* ---- glitch bucket (GCRA) -------------------------------------------------------- */

/* Counts |cost| suspicious frames; an exhausted bucket terminates the session
 * with ENHANCE_YOUR_CALM (nghttp2 then ignores everything after this frame). */
static void h2_glitch(bds__h2_session *c, uint32_t cost) {
    BDS_ASSERT(cost > 0);
    c->stats.glitches += cost;
    if (c->stats.calmed) return;
    bool over;
    if (c->cfg.glitch_rate_per_sec == 0) {
        over = c->stats.glitches > c->cfg.glitch_burst;
    } else {
        uint64_t interval = 1000000000ull / c->cfg.glitch_rate_per_sec;
        uint64_t tat = c->glitch_tat_ns > c->now_ns ? c->glitch_tat_ns : c->now_ns;
        tat += interval * cost;
        over = tat - c->now_ns > interval * (uint64_t)c->cfg.glitch_burst;
        if (!over) c->glitch_tat_ns = tat;
    }
    if (!over) return;
    c->stats.calmed = true;
    h2_check(c, nghttp2_session_terminate_session2(c->ng, h2_goaway_last_id(c), NGHTTP2_ENHANCE_YOUR_CALM));
}

/* ---- stream records ---------------------------------------------------------- */

/* The session is done with |m|: its bytes left or were dropped. */
static void h2_msg_release(bds__h2_session *c, bds__h2_msg *m) {
    if (m->_owned) {
        c->alloc->free_fn(m, c->alloc->ctx);
        return;
    }
    BDS_ASSERT(c->cbs.on_msg_release != NULL);
    c->cbs.on_msg_release(c->ctx, m);
}

static void h2_queue_free_from(bds__h2_session *c, bds__h2_msg *m) {
    while (m != NULL) {
        bds__h2_msg *next = m->_next;
        h2_msg_release(c, m);
        m = next;
    }
}

static void h2_stream_free(bds__h2_session *c, struct h2_stream *s) {
    BDS_ASSERT(s != NULL);
    BDS_ASSERT(s->consumed_bytes <= s->recv_bytes);
    bds__dlist_unlink(&s->live_link);
    h2_consume_drop(c, s);
    if (c->last_s == s) {
        c->last_id = 0;
        c->last_s = NULL;
    }
    h2_queue_free_from(c, s->q_head);
    if (s->deframer_live) bds__grpc_deframer_deinit(&s->deframer);
    c->alloc->free_fn(s->md, c->alloc->ctx);
    c->alloc->free_fn(s->grpc_msg, c->alloc->ctx);
    c->alloc->free_fn(s, c->alloc->ctx);
}

/* Credits everything received and not yet consumed: the session has taken the
 * call over (finished, failed, refused) and nobody else will. */
static void h2_stream_settle(bds__h2_session *c, struct h2_stream *s) {
    BDS_ASSERT(s->state != H2S_OPEN);
    BDS_ASSERT(s->consumed_bytes <= s->recv_bytes);
    uint64_t k = s->recv_bytes - s->consumed_bytes;
    if (k == 0) return;
    int rv = h2_conn_credit_auto(c) ? nghttp2_session_consume_stream(c->ng, s->id, (size_t)k)
                                    : nghttp2_session_consume(c->ng, s->id, (size_t)k);
    h2_check(c, rv);
    s->consumed_bytes = s->recv_bytes;
}

/* Stores grpc-status and the percent-encoded grpc-message for the trailers. */
static bool h2_stream_set_status(bds__h2_session *c, struct h2_stream *s, int code, const char *msg) {
    BDS_ASSERT(code >= 0 && code <= 16);
    BDS_ASSERT(s->grpc_msg == NULL);
    s->grpc_code = code;
    if (code == 0 || msg == NULL) return true;
    size_t raw = strnlen(msg, H2_GRPC_MESSAGE_RAW_MAX);
    size_t need = bds__grpc_percent_encode((const uint8_t *)msg, raw, NULL, 0);
    s->grpc_msg = c->alloc->malloc_fn(need + 1, c->alloc->ctx);
    if (s->grpc_msg == NULL) return false;
    s->grpc_msg_len = bds__grpc_percent_encode((const uint8_t *)msg, raw, s->grpc_msg, need);
    s->grpc_msg[s->grpc_msg_len] = '\0';
    return true;
}

/* Fills |nv| with grpc-status (+ grpc-message); returns the count. */
static size_t h2_status_nv(const struct h2_stream *s, nghttp2_nv *nv, char code_buf[4]) {
    size_t n = 0;
    nv[n++] = h2_nv("grpc-status", code_buf, h2_fmt_u(code_buf, (unsigned)s->grpc_code));
    if (s->grpc_msg != NULL && s->grpc_msg_len > 0)
        nv[n++] = h2_nv("grpc-message", s->grpc_msg, s->grpc_msg_len);
    return n;
}

/* Fills |nv| with |s|'s response metadata for its HEADERS (|trailer| false)
 * or its trailers; returns the count (<= BDS_H2_METADATA_MAX). */
static size_t h2_md_nv(const struct h2_stream *s, bool trailer, nghttp2_nv *nv) {
    size_t n = 0;
    for (size_t off = 0; off < s->md_len;) {
        const uint8_t *e = s->md + off;
        size_t nl = e[1], vl = (size_t)e[2] << 8 | e[3];
        if ((e[0] != 0) == trailer)
            nv[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)(e + 4), (uint8_t *)(uintptr_t)(e + 4 + nl),
                                   nl, vl, NGHTTP2_NV_FLAG_NONE};
        off += 4 + nl + vl;
    }
    BDS_ASSERT(n <= BDS_H2_METADATA_MAX);
    return n;
}

/* Response HEADERS advertise the message encodings we accept (a request in
 * another is answered UNIMPLEMENTED at its grpc-encoding, with this header). */
#define H2_ACCEPT_ENCODING_NV \
    h2_nv("grpc-accept-encoding", BDS_GRPC_ACCEPT_ENCODING, sizeof BDS_GRPC_ACCEPT_ENCODING - 1)

/* Trailers-Only (PROTOCOL-HTTP2): one HEADERS with END_STREAM carrying the
 * status (and all the call's metadata); with an HTTP error status for
 * requests that are not gRPC at all. */
static void h2_submit_trailers_only(bds__h2_session *c, struct h2_stream *s, int http_status) {
    char status_buf[4], code_buf[4];
    nghttp2_nv nv[5 + BDS_H2_METADATA_MAX];
    size_t n = 0;
    nv[n++] = h2_nv(":status", status_buf, h2_fmt_u(status_buf, (unsigned)http_status));
    nv[n++] = h2_nv("content-type", "application/grpc", 16);
    nv[n++] = H2_ACCEPT_ENCODING_NV;
    n += h2_status_nv(s, nv + n, code_buf);
    if (s->md != NULL) {
        n += h2_md_nv(s, false, nv + n);
        n += h2_md_nv(s, true, nv + n);
    }
    s->response_submitted = true;
    h2_check(c, nghttp2_submit_response(c->ng, s->id, nv, n, NULL));
}

static void h2_resume(bds__h2_session *c, struct h2_stream *s) {
    if (!s->deferred) return; /* nghttp2 will ask our read callback again */
    s->deferred = false;
    int rv = nghttp2_session_resume_data(c->ng, s->id);
    if (rv != NGHTTP2_ERR_INVALID_ARGUMENT) h2_check(c, rv); /* INVALID_ARGUMENT: gone */
}

/* Ends the stream on the wire with |code|/|msg|: trailers-only when nothing was
 * sent yet, else trailers after the queued messages. */
static void h2_stream_answer(bds__h2_session *c, struct h2_stream *s, int http_status, int code,
                             const char *msg) {
    BDS_ASSERT(s->state == H2S_DONE || s->state == H2S_REJECTED);
    BDS_ASSERT(!s->finishing);
    if (!h2_stream_set_status(c, s, code, msg)) {
        h2_check(c, nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
                                              NGHTTP2_INTERNAL_ERROR));
        return;
    }
    if (!s->response_submitted) {
        BDS_ASSERT(s->q_bytes == 0);
        h2_submit_trailers_only(c, s, http_status);
        return;
    }
    s->finishing = true;
    h2_resume(c, s);
}

/* A request refused at its headers: answered, never seen by the app. */
static void h2_stream_reject(bds__h2_session *c, struct h2_stream *s, int http_status,
                             bds_status status, const char *msg) {
    BDS_ASSERT(s->state == H2S_HEADERS);
    s->state = H2S_REJECTED;
    c->stats.calls_refused++;
    int code = h2_grpc_code(status);
    if (code < 0) code = BDS_UNAVAILABLE;
    h2_stream_answer(c, s, http_status, code, msg != NULL ? msg : bds_status_str(status));
    h2_stream_settle(c, s);
    h2_glitch(c, 1); /* a stream the client had us end at once: a provoked reset */
}

/* A started call failed on its input: answered by us, the app is told. */
static void h2_stream_fail(bds__h2_session *c, struct h2_stream *s, bds_status status,
                           const char *reason) {
    BDS_ASSERT(s->state == H2S_OPEN);
    BDS_ASSERT(status != BDS_OK);
    s->state = H2S_DONE;
    s->ended_by = H2S_END_SESSION;
    c->stats.calls_failed++;
    /* Unsent replies are dropped; one already on the wire is completed first. */
    bds__h2_msg *keep = s->q_head != NULL && s->q_head->_off > 0 ? s->q_head : NULL;
    h2_queue_free_from(c, keep != NULL ? keep->_next : s->q_head);
    s->q_head = s->q_tail = keep;
    if (keep != NULL) keep->_next = NULL;
    s->q_bytes = keep != NULL ? keep->_len + BDS_GRPC_PREFIX_BYTES - keep->_off : 0;
    h2_stream_answer(c, s, 200, h2_grpc_code(status), reason);
    h2_stream_settle(c, s);
    if (c->cbs.on_call_error != NULL)
        c->cbs.on_call_error(c->ctx, s->call_ctx, s->id, status, 200);
    /* The cheapest provoked reset: a message, then a bad prefix; the call's
     * slot is free again while its handler may still be working. */
    h2_glitch(c, 1);
}

/* ---- captured request headers ---------------------------------------------------- */

/* Drops the captures of the last header block; the next belong to stream |id|. */
static void h2_capture_reset(bds__h2_session *c, int32_t id) {
    c->alloc->free_fn(c->cap, c->alloc->ctx);
    c->cap = NULL;
    c->cap_len = c->cap_cap = 0;
    c->cap_id = id;
}

/* Request headers the application never sees as metadata: the pseudo-headers
 * and those gRPC's transport itself reads. */
static bool h2_md_reserved(const uint8_t *name, size_t namelen) {
    if (namelen == 0 || name[0] == ':') return true;
    if (namelen >= 5 && memcmp(name, "grpc-", 5) == 0) return true;
    return (namelen == 2 && memcmp(name, "te", 2) == 0) ||
           (namelen == 12 && memcmp(name, "content-type", 12) == 0);
}

/* Keeps an application metadata header: entries are the name's length (2
 * bytes), the value's (4 bytes, both big-endian), the name, the value. The
 * buffer grows as needed, up to capture_bytes_max; what does not fit is
 * dropped (the server sizes the bound so that a header list that passes
 * header_list_bytes_max always fits). */
static void h2_capture(bds__h2_session *c, int32_t id, const uint8_t *name, size_t namelen,
                       const uint8_t *value, size_t valuelen) {
    BDS_ASSERT(c->cap_id == id);
    if (h2_md_reserved(name, namelen) || namelen > UINT16_MAX) return;
    size_t need = 6 + namelen + valuelen;
    if (need > c->cfg.capture_bytes_max - c->cap_len) return;
    if (c->cap_len + need > c->cap_cap) {
        size_t cap = c->cap_cap ? c->cap_cap : 256;
        while (cap < c->cap_len + need) cap *= 2;
        if (cap > c->cfg.capture_bytes_max) cap = c->cfg.capture_bytes_max;
        uint8_t *p = c->alloc->realloc_fn(c->cap, cap, c->alloc->ctx);
        if (p == NULL) return; /* the call just goes without it */
        c->cap = p;
        c->cap_cap = (uint32_t)cap;
    }
    uint8_t *p = c->cap + c->cap_len;
    p[0] = (uint8_t)(namelen >> 8);
    p[1] = (uint8_t)namelen;
    p[2] = (uint8_t)(valuelen >> 24);
    p[3] = (uint8_t)(valuelen >> 16);
    p[4] = (uint8_t)(valuelen >> 8);
    p[5] = (uint8_t)valuelen;
    memcpy(p + 6, name, namelen);
    memcpy(p + 6 + namelen, value, valuelen);
    c->cap_len += (uint32_t)need;
}

bool bds__h2_captured_next(const uint8_t *captured, size_t captured_len, size_t *off, bds__h2_header *out) {
    BDS_ASSERT(off != NULL && out != NULL);
    if (captured == NULL || *off >= captured_len) return false;
    BDS_ASSERT(captured_len - *off >= 6);
    const uint8_t *e = captured + *off;
    size_t nl = (size_t)e[0] << 8 | e[1];
    size_t vl = (size_t)e[2] << 24 | (size_t)e[3] << 16 | (size_t)e[4] << 8 | e[5];
    BDS_ASSERT(nl + vl <= captured_len - *off - 6);
    out->name = e + 6;
    out->name_len = nl;
    out->value = e + 6 + nl;
    out->value_len = vl;
    *off += 6 + nl + vl;
    return true;
}

/* ---- nghttp2 callbacks: input ------------------------------------------------ */

static int h2_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
    bds__h2_session *c = ud;
    BDS_ASSERT(c->in_recv);
    c->hb_decoded = 0; /* every block with header callbacks begins here */
    c->hb_list_bytes = 0;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_capture_reset(c, frame->hd.stream_id);
    struct h2_stream *s = c->alloc->calloc_fn(1, sizeof *s, c->alloc->ctx);
    if (s == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST INTERNAL_ERROR */
    s->id = frame->hd.stream_id;
    s->state = H2S_HEADERS;
    bds__grpc_req_init(&s->req, c->cfg.methods, c->cfg.header_list_bytes_max);
    bds__dlist_init(&s->consume_link);
    bds__dlist_init(&s->live_link);
    bds__dlist_insert_tail(&c->live, &s->live_link);
    int rv = nghttp2_session_set_stream_user_data(ng, s->id, s);
    BDS_ASSERT(rv == 0);
    return 0;
}

/* An HPACK bomb: a header block that decodes to far more than it carries
 * (one-byte references to a 4 KiB dynamic table entry). nghttp2 validates every
 * decoded byte before our header callback sees it, whatever we answer, so
 * the bound is on what the block decodes to: H2_HPACK_LIST_FACTOR header lists
 * plus H2_HPACK_WIRE_FACTOR times its own size on the wire (|wire|: HEADERS and
 * CONTINUATIONs so far), which an honest block of literals never reaches. No
 * client needs it, so the connection ends at once with ENHANCE_YOUR_CALM, as
 * gRPC's C core does; nghttp2 then skips the rest of the input, so a bomb
 * costs at most that bound plus one header per connection. */
static bool h2_hpack_bomb(bds__h2_session *c, size_t wire) {
    uint64_t budget = (uint64_t)H2_HPACK_LIST_FACTOR * c->cfg.header_list_bytes_max +
                      (uint64_t)H2_HPACK_WIRE_FACTOR * wire;
    if (c->hb_decoded <= budget) return false;
    c->stats.calmed = true;
    c->stats.hpack_bombs++;
    h2_check(c, nghttp2_session_terminate_session(c->ng, NGHTTP2_ENHANCE_YOUR_CALM));
    return true;
}

/* A header of client trailers (HEADERS after the request's): nothing in them
 * concerns us, but they are held to the request's header-list bound (RFC 7541
 * size): past it the call fails with RESOURCE_EXHAUSTED. */
static void h2_trailer_header(bds__h2_session *c, struct h2_stream *s, size_t namelen,
                              size_t valuelen) {
    c->hb_list_bytes += namelen + valuelen + H2_FIELD_OVERHEAD;
    if (c->hb_list_bytes > c->cfg.header_list_bytes_max && s != NULL && s->state == H2S_OPEN)
        h2_stream_fail(c, s, BDS_RESOURCE_EXHAUSTED, "request trailers too large");
}

static int h2_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud) {
    (void)flags;
    bds__h2_session *c = ud;
    c->hb_decoded += namelen + valuelen;
    c->stats.header_bytes_decoded += namelen + valuelen;
    if (h2_hpack_bomb(c, frame->hd.length)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        h2_trailer_header(c, s, namelen, valuelen);
        /* Calmed (the failed call was the last straw): skip the rest of the block. */
        if (c->fatal) return NGHTTP2_ERR_CALLBACK_FAILURE;
        return c->stats.calmed ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    if (s == NULL || s->state != H2S_HEADERS) return 0;
    /* Past the list bound we keep returning 0: HPACK state must still be
     * updated, and the verdict (431) is given once the block ends; the bomb
     * bound above ends what that costs. */
    if (bds__grpc_req_header(&s->req, name, namelen, value, valuelen) && c->cfg.capture_metadata)
        h2_capture(c, s->id, name, namelen, value, valuelen);
    return 0;
}

/* The client ended its side: a cut message is an error, else half-close. */
static void h2_stream_remote_end(bds__h2_session *c, struct h2_stream *s) {
    s->remote_closed = true;
    if (s->state != H2S_OPEN) return;
    BDS_ASSERT(s->deframer_live);
    bds_status st = bds__grpc_deframer_finish(&s->deframer);
    if (st != BDS_OK) {
        h2_stream_fail(c, s, BDS_INTERNAL, "truncated gRPC message at end of stream");
        return;
    }
    if (c->cbs.on_half_close != NULL) c->cbs.on_half_close(c->ctx, s->call_ctx, s->id);
}

/* The request's header block is complete: verdict, then start or answer. */
static void h2_stream_request(bds__h2_session *c, struct h2_stream *s, bool end_stream) {
    BDS_ASSERT(s->state == H2S_HEADERS);
    s->remote_closed = end_stream;
    bds__grpc_verdict v = bds__grpc_req_verdict(&s->req);
    if (v.http_status != 200 || v.grpc_status != BDS_OK) {
        h2_stream_reject(c, s, v.http_status, v.grpc_status, v.message);
        if (c->cbs.on_call_error != NULL)
            c->cbs.on_call_error(c->ctx, NULL, s->id, v.grpc_status, v.http_status);
        return;
    }
    bds__h2_call_info info = {
        .stream_id = s->id,
        .method_index = (uint32_t)bds__grpc_req_method(&s->req),
        .timeout_ns = bds__grpc_req_timeout_ns(&s->req),
        .end_stream = end_stream,
    };
    if (c->cap != NULL && c->cap_id == s->id) {
        info.captured = c->cap;
        info.captured_len = c->cap_len;
    }
    if (info.timeout_ns != 0)
        info.deadline_ns = info.timeout_ns > UINT64_MAX - c->now_ns ? UINT64_MAX
                                                                   : c->now_ns + info.timeout_ns;
    void *call_ctx = NULL;
    bds_status st = c->cbs.on_call_start(c->ctx, &info, &call_ctx);
    if (st == BDS_E_AGAIN) { /* not now: the client may retry it elsewhere or later */
        s->state = H2S_REJECTED;
        c->stats.calls_refused++;
        c->own_refusals++;
        h2_check(c, nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM));
        h2_stream_settle(c, s);
        return;
    }
    if (st != BDS_OK) {
        h2_stream_reject(c, s, 200, st, call_ctx); /* the refusal's message, if the app gave one */
        return;
    }
    s->req_enc = bds__grpc_req_encoding(&s->req);
    s->accept = (uint8_t)bds__grpc_req_accept(&s->req);
    bds__grpc_deframer_init(&s->deframer, c->cfg.msg_bytes_max, s->req_enc != BDS__GRPC_ENC_IDENTITY, c->alloc);
    s->deframer_live = true;
    s->call_ctx = call_ctx;
    s->state = H2S_OPEN;
    c->stats.calls_started++;
    if (end_stream) h2_stream_remote_end(c, s);
}

/* Our keepalive PING's opaque data: an ACK carrying it answers ours. */
static const uint8_t h2_keepalive_opaque[8] = {'b', 'd', 's', '-', 'k', 'a', 'l', 'v'};

#define H2_BDP_INTERVAL_NS 1000000u

/* Our BDP PING's (cfg.window_bytes_max). */
static const uint8_t h2_bdp_opaque[8] = {'b', 'd', 's', '-', 'b', 'd', 'p', '0'};

/* DATA arrived: counts it into the sample, and starts one if none runs. */
static void h2_bdp_data(bds__h2_session *c, size_t len) {
    if (c->bdp_window >= c->cfg.window_bytes_max) return;
    if (c->bdp_ping_out) {
        c->bdp_sample += len;
        return;
    }
    /* One sample per millisecond at most: a PING and its ACK cost about what
     * a DATA frame does, and small messages would otherwise pay one per
     * round trip for a window they never fill. */
    if (c->bdp_sent_ns != 0 && c->now_ns - c->bdp_sent_ns < H2_BDP_INTERVAL_NS) return;
    if (nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, h2_bdp_opaque) != 0) return; /* next DATA tries again */
    c->bdp_ping_out = true;
    c->bdp_sample = len;
    c->bdp_sent_ns = c->now_ns;
}

/* Our BDP PING's ACK: grpc-go's update rule (beta 2/3, gamma 2, alpha 0.9). */
static void h2_bdp_ack(bds__h2_session *c) {
    c->bdp_ping_out = false;
    /* now_ns is the time the batch holding the ACK was read: a round trip
     * inside one batch reads as 0; count it as 1 µs. */
    double rtt = c->now_ns > c->bdp_sent_ns ? (double)(c->now_ns - c->bdp_sent_ns) : 1000.0;
    c->bdp_rtt_ns = c->bdp_rtt_ns == 0 ? rtt : c->bdp_rtt_ns + (rtt - c->bdp_rtt_ns) * 0.9;
    double bw = (double)c->bdp_sample / (c->bdp_rtt_ns * 1.5);
    if (bw > c->bdp_bw_max) c->bdp_bw_max = bw;
    if ((double)c->bdp_sample < (double)c->bdp_window * 2.0 / 3.0 || bw < c->bdp_bw_max) return;
    /* Only while the app keeps up: bytes received and not credited (messages
     * parked for want of room, a message held at the window) mean the window
     * is not what limits the client, and a larger one would only let it park
     * more (an overloaded server's backlog belongs at the client). */
    uint64_t held = 0;
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &c->live) {
        const struct h2_stream *s = BDS_DLIST_ENTRY(it, struct h2_stream, live_link);
        held += s->recv_bytes - s->consumed_bytes;
    }
    if (held > c->bdp_window / 2) return;
    uint64_t want = c->bdp_sample * 2;
    uint32_t w = want > c->cfg.window_bytes_max ? c->cfg.window_bytes_max : (uint32_t)want;
    if (w <= c->bdp_window) return;
    c->bdp_window = w;
    c->stats.window_bytes = w;
    nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, w};
    h2_check(c, nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, &iv, 1));
    if (w > c->cfg.conn_window_bytes)
        h2_check(c, nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)w));
}

static void h2_settings_acked(bds__h2_session *c);

/* A client PING, judged as grpc-go's keepalive enforcement does: too close to
 * the previous one with nothing sent by us in between is a strike. */
static void h2_client_ping(bds__h2_session *c) {
    if (c->cfg.ping_min_interval_ns == 0 || c->close_on_goaway) return;
    bool first = !c->ping_seen;
    uint64_t last = c->ping_last_ns;
    c->ping_seen = true;
    c->ping_last_ns = c->now_ns;
    if (c->ping_strikes_reset) {
        c->ping_strikes_reset = false;
        c->ping_strikes = 0;
        return;
    }
    uint64_t min = bds__dlist_empty(&c->live) ? c->cfg.ping_idle_min_interval_ns : c->cfg.ping_min_interval_ns;
    if (!first && c->now_ns - last < min) c->ping_strikes++;
    if (c->ping_strikes <= c->cfg.ping_strikes_max) return;
    static const char why[] = "too_many_pings";
    c->stats.calmed = c->stats.too_many_pings = true;
    c->close_on_goaway = true;
    h2_check(c, nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                                      NGHTTP2_ENHANCE_YOUR_CALM, (const uint8_t *)why, sizeof why - 1));
}

static int h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
    bds__h2_session *c = ud;
    BDS_ASSERT(c->in_recv);
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    struct h2_stream *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (s == NULL) break;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST && s->state == H2S_HEADERS) {
            h2_stream_request(c, s, end);
            h2_capture_reset(c, 0); /* on_call_start has seen them */
        } else if (end)
            h2_stream_remote_end(c, s);
        break;
    case NGHTTP2_DATA:
        /* Only padding and no END_STREAM: an empty DATA frame in disguise
         * (on_begin_frame counts the plain ones; padlen is known only now). */
        if (frame->hd.length > 0 && frame->data.padlen == frame->hd.length && !end)
            h2_glitch(c, 1);
        s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (s != NULL && end) h2_stream_remote_end(c, s);
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c->peer_ready = true;
        else h2_settings_acked(c);
        break;
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
            h2_client_ping(c);
        } else if (c->ping_outstanding &&
                   memcmp(frame->ping.opaque_data, h2_keepalive_opaque, sizeof h2_keepalive_opaque) == 0) {
            c->ping_outstanding = false;
            c->stats.ping_acks++;
        } else if (c->bdp_ping_out && memcmp(frame->ping.opaque_data, h2_bdp_opaque, sizeof h2_bdp_opaque) == 0) {
            h2_bdp_ack(c);
        }
        break;
    case NGHTTP2_WINDOW_UPDATE:
        /* A client returns window for the DATA it read, often in small steps
         * (gRPC clients credit each small message: a stream update and a
         * connection update per DATA frame). Those are earned; only small
         * updates beyond what our DATA frames justify are suspicious. */
        if (frame->window_update.window_size_increment < (int32_t)H2_SMALL_WINDOW_UPDATE) {
            if (c->wu_allowance > 0) c->wu_allowance--;
            else h2_glitch(c, 1);
        }
        break;
    default:
        break;
    }
    return c->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* A message larger than the stream window could never complete if its bytes
 * waited for the app's consume: the part received so far (bounded by
 * msg_bytes_max, already checked from the prefix) is credited now, and the
 * message's wire_bytes later report only the rest (docs/ARCHITECTURE.md). */
static void h2_stream_credit_partial(bds__h2_session *c, struct h2_stream *s, bool ask) {
    uint32_t msg_len, have;
    if (!bds__grpc_deframer_partial(&s->deframer, &msg_len, &have)) return;
    uint32_t sofar = have + BDS_GRPC_PREFIX_BYTES;
    if (sofar <= s->precredited) return;
    if (ask && c->cbs.may_credit_partial != NULL && !c->cbs.may_credit_partial(c->ctx, s->call_ctx)) return;
    s->precredited += (uint32_t)bds__h2_consume(c, s->id, sofar - s->precredited);
}

/* A compressed-flag message (its grpc-encoding allowed one): delivered
 * decompressed, or the call fails. A decompressed size over msg_bytes_max is
 * RESOURCE_EXHAUSTED, found after at most that many bytes of output, so a
 * zip bomb costs the limit, not what it would expand to; the stream's
 * ledger credits what was on the wire either way. */
static void h2_stream_inflate(bds__h2_session *c, struct h2_stream *s, const bds__grpc_ev *ev, uint32_t wire) {
    const uint8_t *msg;
    uint32_t len;
    const char *why;
    bds_status st = bds__grpc_decompress(c->codec, (bds__grpc_enc)s->req_enc, ev->data, ev->len,
                                         c->cfg.msg_bytes_max, &msg, &len, &why);
    if (st == BDS_OK) {
        c->cbs.on_message(c->ctx, s->call_ctx, s->id, msg, len, wire, true);
        bds__grpc_codec_trim(c->codec);
        return;
    }
    char text[96];
    if (st == BDS_RESOURCE_EXHAUSTED) {
        snprintf(text, sizeof text, "received message larger than max after decompression (%u bytes)",
                 c->cfg.msg_bytes_max);
        why = text;
    }
    h2_stream_fail(c, s, st == BDS_INTERNAL ? BDS_INTERNAL : BDS_RESOURCE_EXHAUSTED, why);
}

/* Runs the deframer over one DATA chunk of an open call. */
static void h2_stream_deframe(bds__h2_session *c, struct h2_stream *s, const uint8_t *data,
                              size_t len) {
    BDS_ASSERT(s->deframer_live);
    while (len > 0 && s->state == H2S_OPEN) {
        bds__grpc_ev ev;
        size_t used = bds__grpc_deframe(&s->deframer, data, len, &ev);
        BDS_ASSERT(used <= len);
        data += used;
        len -= used;
        if (ev.kind == BDS__GRPC_EV_MESSAGE) {
            uint32_t wire = (uint32_t)ev.len + BDS_GRPC_PREFIX_BYTES - s->precredited;
            s->precredited = 0;
            if (ev.compressed) {
                h2_stream_inflate(c, s, &ev, wire);
            } else {
                c->cbs.on_message(c->ctx, s->call_ctx, s->id, ev.data, ev.len, wire, false);
            }
        } else if (ev.kind == BDS__GRPC_EV_ERROR) {
            bds_status st = ev.status == BDS_E_NOMEM ? BDS_RESOURCE_EXHAUSTED : ev.status;
            h2_stream_fail(c, s, st, ev.reason);
        }
    }
    if (c->cfg.credit_partial_messages && s->state == H2S_OPEN) h2_stream_credit_partial(c, s, true);
}

static int h2_on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t stream_id,
                                 const uint8_t *data, size_t len, void *ud) {
    (void)flags;
    bds__h2_session *c = ud;
    BDS_ASSERT(c->in_recv);
    if (h2_conn_credit_auto(c)) {
        if (c->conn_credit_held) c->conn_credit_owed += len;
        else h2_check(c, nghttp2_session_consume_connection(ng, len));
    }
    struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (s == NULL) {
        /* No record (its allocation failed): nobody will consume, so we do. */
        h2_check(c, h2_conn_credit_auto(c) ? nghttp2_session_consume_stream(ng, stream_id, len)
                                           : nghttp2_session_consume(ng, stream_id, len));
        return c->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    }
    c->last_id = stream_id; /* the app credits and answers this stream next */
    c->last_s = s;
    s->recv_bytes += len;
    h2_bdp_data(c, len);
    if (s->state == H2S_OPEN) h2_stream_deframe(c, s, data, len);
    if (s->state != H2S_OPEN) h2_stream_settle(c, s);
    return c->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int h2_on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                              void *ud) {
    bds__h2_session *c = ud;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (s == NULL) return 0;
    if (s->state == H2S_OPEN) {
        s->state = H2S_DONE;
        s->ended_by = H2S_END_PEER;
        c->stats.calls_reset++;
        if (c->cbs.on_reset != NULL)
            c->cbs.on_reset(c->ctx, s->call_ctx, s->id, bds__h2_rst_status(error_code), error_code);
    }
    /* Settle the ledger against the connection only: the stream is going away,
     * and a WINDOW_UPDATE for it would be wasted. */
    h2_consume_drop(c, s);
    uint64_t k = s->recv_bytes - s->consumed_bytes;
    if (!h2_conn_credit_auto(c) && k > 0)
        h2_check(c, nghttp2_session_consume_connection(ng, (size_t)k));
    s->consumed_bytes = s->recv_bytes;
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL);
    h2_stream_free(c, s);
    return c->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int h2_on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud) {
    (void)ng; /* used only with nghttp2's reset limiter */
    bds__h2_session *c = ud;
    switch (hd->type) {
    case NGHTTP2_PING:
        /* gRPC clients probe bandwidth with a PING as data arrives: pings that
         * our DATA frames justify are earned, like small WINDOW_UPDATEs. */
        if (c->wu_allowance > 0) c->wu_allowance--;
        else h2_glitch(c, 1);
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PRIORITY:
        h2_glitch(c, 1);
        break;
    case NGHTTP2_RST_STREAM: {
        /* Rapid reset (CVE-2023-44487): a call started and cancelled at once
         * costs a token. nghttp2's own limiter (when present) only stops new
         * streams once its GOAWAY is on the wire, which leaves a whole receive
         * buffer of HEADERS+RST pairs to start calls from. A client that
         * cancels hundreds of calls in one instant is cut off too; it can
         * reconnect. Without nghttp2's limiter every reset counts. */
#if defined(BDS_HAVE_NGHTTP2_STREAM_RESET_RATE_LIMIT)
        const struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, hd->stream_id);
        if (s != NULL && (s->state == H2S_OPEN || s->state == H2S_HEADERS)) h2_glitch(c, 1);
#else
        h2_glitch(c, 1);
#endif
        break;
    }
    case NGHTTP2_DATA:
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) h2_glitch(c, 1);
        break;
    default:
        break;
    }
    return c->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int h2_on_invalid_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame,
                                    int lib_error_code, void *ud) {
    (void)ng;
    (void)frame;
    (void)lib_error_code;
    h2_glitch(ud, 1);
    return ((bds__h2_session *)ud)->fatal ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* ---- nghttp2 callbacks: output ------------------------------------------------ */

static ssize_t h2_on_send(nghttp2_session *ng, const uint8_t *data, size_t length, int flags,
                          void *ud) {
    (void)ng;
    (void)flags;
    bds__h2_session *c = ud;
    BDS_ASSERT(c->in_output);
    BDS_ASSERT(c->out_len <= c->out_cap);
    /* |data| is (the rest of) one frame. It goes whole, or waits for room; it
     * is cut only when the buffer is empty and still too small for it. */
    size_t n = c->out_cap - c->out_len;
    if (n == 0 || (n < length && c->out_len > 0)) return NGHTTP2_ERR_WOULDBLOCK;
    if (n > length) n = length;
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    c->out_cut = n < length;
    return (ssize_t)n;
}

/* Moves the next |len| queued bytes (prefixes and payloads) of |s| into |buf|,
 * releasing every message whose last byte has left. len <= q_bytes. */
static void h2_queue_take(bds__h2_session *c, struct h2_stream *s, uint8_t *buf, size_t len) {
    BDS_ASSERT(len <= s->q_bytes);
    size_t n = 0;
    while (n < len) {
        bds__h2_msg *m = s->q_head;
        BDS_ASSERT(m != NULL);
        size_t k;
        if (m->_framed) { /* prefix and payload in one block */
            k = m->_len + BDS_GRPC_PREFIX_BYTES - m->_off;
            if (k > len - n) k = len - n;
            memcpy(buf + n, m->_data + m->_off, k);
        } else if (m->_off < BDS_GRPC_PREFIX_BYTES) { /* the prefix, or what is left of it */
            k = BDS_GRPC_PREFIX_BYTES - m->_off;
            if (k > len - n) k = len - n;
            for (size_t i = 0; i < k; i++) buf[n + i] = m->_prefix[m->_off + i];
        } else {
            k = m->_len + BDS_GRPC_PREFIX_BYTES - m->_off;
            if (k > len - n) k = len - n;
            memcpy(buf + n, m->_data + (m->_off - BDS_GRPC_PREFIX_BYTES), k);
        }
        n += k;
        m->_off += (uint32_t)k;
        s->q_bytes -= k;
        if (m->_off == m->_len + BDS_GRPC_PREFIX_BYTES) {
            s->q_head = m->_next;
            if (s->q_head == NULL) s->q_tail = NULL;
            h2_msg_release(c, m);
        }
    }
    BDS_ASSERT((s->q_head == NULL) == (s->q_bytes == 0));
}

/* Sizes a DATA frame from the queue; finishes with trailers. When the output
 * buffer has room for the whole frame the payload is not copied here
 * (NO_COPY): h2_on_send_data writes the frame header and the queued bytes
 * straight into the output buffer. nghttp2 calls it at once, in the same
 * nghttp2_session_send, after every earlier frame went through h2_on_send,
 * so the room seen here is still there and it never has to wait (a wait
 * would leave promised bytes exposed to a stream failure in between). */
static ssize_t h2_on_read(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                          uint32_t *data_flags, nghttp2_data_source *source, void *ud) {
    bds__h2_session *c = ud;
    /* The record rides in the provider: nghttp2 reads only live streams, and
     * the record lives as long as its nghttp2 stream. */
    struct h2_stream *s = source->ptr;
    BDS_ASSERT(s != NULL && s->id == stream_id);
    BDS_ASSERT(c->in_output);
    size_t n = s->q_bytes < length ? s->q_bytes : length;
    bool drained = n == s->q_bytes;
    if (n > 0 && c->out_cap - c->out_len >= H2_FRAME_HD_BYTES + n) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    } else {
        h2_queue_take(c, s, buf, n);
    }
    if (drained && s->finishing) {
        char code_buf[4];
        nghttp2_nv nv[2 + BDS_H2_METADATA_MAX];
        size_t nvlen = h2_status_nv(s, nv, code_buf);
        if (s->md != NULL) nvlen += h2_md_nv(s, true, nv + nvlen);
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        int rv = nghttp2_submit_trailer(ng, stream_id, nv, nvlen);
        if (rv != 0) return nghttp2_is_fatal(rv) ? NGHTTP2_ERR_CALLBACK_FAILURE
                                                 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return (ssize_t)n;
    }
    if (n > 0) return (ssize_t)n;
    s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

/* A NO_COPY DATA frame: its header, then |length| queued bytes, into the
 * output buffer (h2_on_read made sure they fit). */
static int h2_on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                           size_t length, nghttp2_data_source *source, void *ud) {
    (void)ng;
    (void)frame;
    bds__h2_session *c = ud;
    struct h2_stream *s = source->ptr;
    BDS_ASSERT(c->in_output && s != NULL);
    BDS_ASSERT(c->out_cap - c->out_len >= H2_FRAME_HD_BYTES + length && length <= s->q_bytes);
    memcpy(c->out + c->out_len, framehd, H2_FRAME_HD_BYTES);
    h2_queue_take(c, s, c->out + c->out_len + H2_FRAME_HD_BYTES, length);
    c->out_len += H2_FRAME_HD_BYTES + length;
    c->out_cut = false;
    return 0;
}

static int h2_on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
    bds__h2_session *c = ud;
    if (frame->hd.type == NGHTTP2_DATA) {
        /* Capped: a client that read a long download must not bank a free
         * flood of PINGs for later, only answer what it is reading now. */
        c->wu_allowance += H2_EARNED_PER_DATA;
        if (c->wu_allowance > H2_EARNED_MAX) c->wu_allowance = H2_EARNED_MAX;
        c->ping_strikes_reset = true;
        return 0;
    }
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        /* A reset the client provoked ("MadeYouReset"): content-length
         * mismatch, DATA past the window, an INITIAL_WINDOW_SIZE that overflows
         * a stream, a refused stream; nghttp2 resets those without telling us,
         * so they are counted as they leave. RST_STREAM(NO_ERROR) after early
         * trailers is gRPC's normal end of a call. */
        if (frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM && c->own_refusals > 0) {
            c->own_refusals--; /* the server's own want of room: the client did nothing */
        } else if (frame->rst_stream.error_code != NGHTTP2_NO_ERROR) {
            c->stats.resets_sent++;
            h2_glitch(c, 1);
        }
        return 0;
    }
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        uint32_t code = frame->goaway.error_code;
        c->stats.goaways_sent[code < BDS_H2_GOAWAY_CODES - 1 ? code : BDS_H2_GOAWAY_CODES - 1]++;
        if (c->close_on_goaway) c->goaway_left = true;
    }
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    c->ping_strikes_reset = true;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    /* gRPC: trailers sent before the client's END_STREAM are followed by
     * RST_STREAM(NO_ERROR), so the client stops sending and the stream closes. */
    if (nghttp2_session_get_stream_remote_close(ng, frame->hd.stream_id) == 0) {
        int rv = nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                           NGHTTP2_NO_ERROR);
        if (nghttp2_is_fatal(rv)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------------ */

void bds__h2_config_default(bds__h2_config *cfg) {
    BDS_ASSERT(cfg != NULL);
    memset(cfg, 0, sizeof *cfg);
    cfg->max_concurrent_streams = 1024;
    cfg->stream_window_bytes = 64u * 1024u;
    cfg->conn_window_bytes = 1024u * 1024u;
    cfg->header_list_bytes_max = BDS_GRPC_HEADER_BYTES_MAX_DEFAULT;
    cfg->msg_bytes_max = BDS_GRPC_MSG_BYTES_MAX_DEFAULT;
    cfg->out_buf_bytes = 256u * 1024u;
    cfg->stream_send_bytes_max = 8u * 1024u * 1024u;
    cfg->conn_credit_on_receipt = true;
    cfg->glitch_burst = 500;
    cfg->glitch_rate_per_sec = 100;
    cfg->reset_burst = 1000;
    cfg->reset_rate_per_sec = 33;
    cfg->max_continuations = 8;
    cfg->max_outbound_ack = 1000;
    cfg->max_settings = 32;
    cfg->capture_bytes_max = 16384;
    cfg->ping_strikes_max = 2;
    BDS_ASSERT(cfg->stream_window_bytes <= NGHTTP2_MAX_WINDOW_SIZE);
}

static bool h2_config_valid(const bds__h2_config *cfg) {
    return cfg->max_concurrent_streams > 0 && cfg->stream_window_bytes > 0 &&
           cfg->stream_window_bytes <= NGHTTP2_MAX_WINDOW_SIZE &&
           cfg->conn_window_bytes >= NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
           cfg->conn_window_bytes <= NGHTTP2_MAX_WINDOW_SIZE && cfg->msg_bytes_max > 0 &&
           cfg->out_buf_bytes >= H2_OUT_BUF_MIN && cfg->stream_send_bytes_max > 0 &&
           cfg->header_list_bytes_max > 0 && cfg->glitch_burst > 0 && cfg->max_settings > 0 &&
           (!cfg->capture_metadata || cfg->capture_bytes_max > 0) &&
           (cfg->window_bytes_max == 0 ||
            (cfg->window_bytes_max >= cfg->stream_window_bytes && cfg->window_bytes_max <= NGHTTP2_MAX_WINDOW_SIZE));
}

static nghttp2_session_callbacks *h2_callbacks_new(void) {
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) return NULL;
    nghttp2_session_callbacks_set_send_callback(cb, h2_on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, h2_on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_stream_close);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, h2_on_begin_frame);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, h2_on_invalid_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, h2_on_frame_send);
    return cb;
}

static nghttp2_option *h2_option_new(const bds__h2_config *cfg) {
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
#if defined(BDS_HAVE_NGHTTP2_MAX_OUTBOUND_ACK)
    nghttp2_option_set_max_outbound_ack(opt, cfg->max_outbound_ack);
#endif
#if defined(BDS_HAVE_NGHTTP2_MAX_SETTINGS)
    nghttp2_option_set_max_settings(opt, cfg->max_settings);
#endif
#if defined(BDS_HAVE_NGHTTP2_STREAM_RESET_RATE_LIMIT)
    nghttp2_option_set_stream_reset_rate_limit(opt, cfg->reset_burst, cfg->reset_rate_per_sec);
#endif
#if defined(BDS_HAVE_NGHTTP2_MAX_CONTINUATIONS)
    nghttp2_option_set_max_continuations(opt, cfg->max_continuations);
#endif
    (void)cfg;
    return opt;
}

/* Builds the nghttp2 session and queues SETTINGS + the connection window. */
static int h2_session_start(bds__h2_session *c) {
    nghttp2_session_callbacks *cb = h2_callbacks_new();
    nghttp2_option *opt = h2_option_new(&c->cfg);
    int rv = NGHTTP2_ERR_NOMEM;
    if (cb != NULL && opt != NULL) rv = nghttp2_session_server_new3(&c->ng, cb, c, opt, &c->mem);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv != 0) return rv;
    const nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->cfg.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->cfg.stream_window_bytes},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->cfg.header_list_bytes_max},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    rv = nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    if (rv != 0) return rv;
    return nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                                 (int32_t)c->cfg.conn_window_bytes);
}

bds_status bds__h2_create(bds__h2_session **out, const bds__h2_config *cfg,
                          const bds__h2_callbacks *cbs, void *ctx) {
    BDS_ASSERT(out != NULL && cfg != NULL && cbs != NULL);
    BDS_ASSERT(cbs->on_call_start != NULL && cbs->on_message != NULL);
    *out = NULL;
    if (!h2_config_valid(cfg)) return BDS_E_INVALID;
    const bds__palloc *a = cfg->alloc != NULL ? cfg->alloc : bds__palloc_libc();
    bds__h2_session *c = a->calloc_fn(1, sizeof *c, a->ctx);
    if (c == NULL) return BDS_E_NOMEM;
    c->cfg = *cfg;
    c->bdp_window = cfg->stream_window_bytes;
    c->alloc = a;
    c->mem = (nghttp2_mem){a->ctx, a->malloc_fn, a->free_fn, a->calloc_fn, a->realloc_fn};
    c->cbs = *cbs;
    c->ctx = ctx;
    bds__grpc_codec_init(&c->own_codec, a);
    c->codec = cfg->codec != NULL ? cfg->codec : &c->own_codec;
    bds__dlist_init(&c->live);
    bds__dlist_init(&c->consume);
    c->goaway_floor = INT32_MAX;
    c->out_cap = cfg->out_buf_bytes;
    c->out = a->malloc_fn(c->out_cap, a->ctx);
    int rv = c->out != NULL ? h2_session_start(c) : NGHTTP2_ERR_NOMEM;
    if (rv != 0) {
        bds__h2_destroy(c);
        return rv == NGHTTP2_ERR_NOMEM ? BDS_E_NOMEM : BDS_E_INVALID;
    }
    *out = c;
    return BDS_OK;
}

void bds__h2_destroy(bds__h2_session *c) {
    if (c == NULL) return;
    BDS_ASSERT(!c->in_recv && !c->in_output);
    /* nghttp2_session_del fires no callbacks; our records are freed here. */
    if (c->ng != NULL) nghttp2_session_del(c->ng);
    c->ng = NULL;
    for (bds__dlist *l; (l = bds__dlist_first(&c->live));) {
        struct h2_stream *s = BDS_DLIST_ENTRY(l, struct h2_stream, live_link);
        s->consumed_bytes = s->recv_bytes;
        h2_stream_free(c, s);
    }
    c->alloc->free_fn(c->cap, c->alloc->ctx);
    c->alloc->free_fn(c->out, c->alloc->ctx);
    bds__grpc_codec_deinit(&c->own_codec);
    c->alloc->free_fn(c, c->alloc->ctx);
}

/* ---- bytes in, bytes out ------------------------------------------------------ */

bds_status bds__h2_recv(bds__h2_session *c, const uint8_t *in, size_t len, uint64_t now_ns) {
    BDS_ASSERT(c != NULL && (in != NULL || len == 0));
    BDS_ASSERT(!c->in_recv && !c->in_output);
    if (c->fatal) return BDS_UNAVAILABLE;
    if (c->close_on_goaway) return BDS_OK; /* ending: what follows is not read */
    if (now_ns > c->now_ns) c->now_ns = now_ns;
    c->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(c->ng, in, len);
    c->in_recv = false;
    if (rv < 0) {
        h2_fatal(c, (int)rv);
        return BDS_UNAVAILABLE;
    }
    BDS_ASSERT((size_t)rv == len); /* we never pause */
    return c->fatal ? BDS_UNAVAILABLE : BDS_OK;
}

bds_status bds__h2_output(bds__h2_session *c, const uint8_t **data, size_t *len) {
    BDS_ASSERT(c != NULL && data != NULL && len != NULL);
    BDS_ASSERT(!c->in_recv && !c->in_output);
    h2_consume_flush(c);
    if (!c->fatal) {
        c->in_output = true;
        int rv = nghttp2_session_send(c->ng);
        c->in_output = false;
        if (rv != 0) h2_fatal(c, rv);
    }
    if (c->fatal) h2_fatal_goaway(c);
    *data = c->out;
    *len = c->out_len;
    return c->fatal ? BDS_UNAVAILABLE : BDS_OK;
}

void bds__h2_output_advance(bds__h2_session *c, size_t n) {
    BDS_ASSERT(c != NULL && !c->in_output);
    BDS_ASSERT(n <= c->out_len);
    memmove(c->out, c->out + n, c->out_len - n);
    c->out_len -= n;
}

uint8_t *bds__h2_output_swap(bds__h2_session *c, uint8_t *fresh) {
    BDS_ASSERT(c != NULL && fresh != NULL && !c->in_output);
    uint8_t *old = c->out;
    c->out = fresh;
    c->out_len = 0;
    return old;
}

size_t bds__h2_output_cap(const bds__h2_session *c) { return c->out_cap; }

bool bds__h2_want_write(const bds__h2_session *c) {
    BDS_ASSERT(c != NULL);
    return c->out_len > 0 || c->goaway_due || (!c->fatal && nghttp2_session_want_write(c->ng));
}

bool bds__h2_is_done(const bds__h2_session *c) {
    BDS_ASSERT(c != NULL);
    if (c->out_len > 0 || c->goaway_due) return false;
    return c->fatal || c->goaway_left || (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng));
}

/* ---- calls from the application ---------------------------------------------- */

/* Looks up a call the app may act on; BDS_OK with |*sp| set, else why not. */
static bds_status h2_app_stream(bds__h2_session *c, int32_t id, struct h2_stream **sp) {
    struct h2_stream *s = h2_stream_find(c, id);
    *sp = s;
    if (s == NULL || s->state == H2S_HEADERS || s->state == H2S_REJECTED) return BDS_E_SESSION_CLOSED;
    if (s->state == H2S_DONE)
        return s->ended_by == H2S_END_APP ? BDS_FAILED_PRECONDITION : BDS_E_SESSION_CLOSED;
    BDS_ASSERT(s->state == H2S_OPEN);
    return BDS_OK;
}

/* Checks that stream |id| may take |len| more payload bytes; BDS_OK with |*sp|. */
static bds_status h2_send_check(bds__h2_session *c, int32_t id, size_t len, struct h2_stream **sp) {
    bds_status st = h2_app_stream(c, id, sp);
    if (st != BDS_OK) return st;
    if (c->fatal) return BDS_E_SESSION_CLOSED;
    if (len > UINT32_MAX - BDS_GRPC_PREFIX_BYTES - 1) return BDS_E_INVALID;
    struct h2_stream *s = *sp;
    size_t wire = len + BDS_GRPC_PREFIX_BYTES;
    if (s->q_bytes > 0 && s->q_bytes + wire > c->cfg.stream_send_bytes_max) return BDS_E_AGAIN;
    return BDS_OK;
}

/* Appends |m| (fields set but the link) and starts or resumes the stream's
 * DATA. On failure |m| is unlinked again and the caller still owns it. */
static bds_status h2_queue_push(bds__h2_session *c, struct h2_stream *s, bds__h2_msg *m) {
    BDS_ASSERT(m->_off == 0);
    size_t wire = (size_t)m->_len + BDS_GRPC_PREFIX_BYTES;
    m->_next = NULL;
    if (s->q_tail != NULL) s->q_tail->_next = m;
    else s->q_head = m;
    s->q_tail = m;
    s->q_bytes += wire;
    if (s->response_submitted) {
        h2_resume(c, s);
        return BDS_OK;
    }
    BDS_ASSERT(s->q_head == m); /* nothing is queued before the response starts */
    nghttp2_nv nv[4 + BDS_H2_METADATA_MAX] = {h2_nv(":status", "200", 3),
                                              h2_nv("content-type", "application/grpc", 16),
                                              H2_ACCEPT_ENCODING_NV};
    size_t nvlen = 3;
    s->resp_enc_fixed = true;
    const char *enc = bds__grpc_enc_name((bds__grpc_enc)s->resp_enc);
    if (s->resp_enc != BDS__GRPC_ENC_IDENTITY) nv[nvlen++] = h2_nv("grpc-encoding", enc, strlen(enc));
    if (s->md != NULL) nvlen += h2_md_nv(s, false, nv + nvlen);
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = h2_on_read};
    int rv = nghttp2_submit_response(c->ng, s->id, nv, nvlen, &prd);
    h2_check(c, rv);
    if (rv != 0) {
        s->q_head = s->q_tail = NULL;
        s->q_bytes = 0;
        return rv == NGHTTP2_ERR_NOMEM ? BDS_E_NOMEM : BDS_E_SESSION_CLOSED;
    }
    s->response_submitted = true;
    return BDS_OK;
}

bds_status bds__h2_send_msg(bds__h2_session *c, int32_t id, const void *msg, size_t len) {
    BDS_ASSERT(c != NULL && !c->in_output);
    BDS_ASSERT(msg != NULL || len == 0);
    struct h2_stream *s;
    bds_status st = h2_send_check(c, id, len, &s);
    if (st != BDS_OK) return st;
    bds__h2_msg *m = c->alloc->malloc_fn(sizeof *m + len, c->alloc->ctx);
    if (m == NULL) return BDS_E_NOMEM;
    uint8_t *copy = (uint8_t *)(m + 1);
    if (len > 0) memcpy(copy, msg, len);
    *m = (bds__h2_msg){._data = copy, ._len = (uint32_t)len, ._owned = true};
    bds__grpc_frame_prefix(m->_prefix, false, (uint32_t)len);
    st = h2_queue_push(c, s, m);
    if (st != BDS_OK) c->alloc->free_fn(m, c->alloc->ctx);
    return st;
}

bds_status bds__h2_send_ref(bds__h2_session *c, int32_t id, bds__h2_msg *m, const void *data,
                            size_t len) {
    BDS_ASSERT(c != NULL && !c->in_output && m != NULL);
    BDS_ASSERT(data != NULL || len == 0);
    BDS_ASSERT(c->cbs.on_msg_release != NULL);
    struct h2_stream *s;
    bds_status st = h2_send_check(c, id, len, &s);
    if (st != BDS_OK) return st;
    *m = (bds__h2_msg){._data = data, ._len = (uint32_t)len, ._owned = false};
    bds__grpc_frame_prefix(m->_prefix, false, (uint32_t)len);
    return h2_queue_push(c, s, m);
}

bds_status bds__h2_send_framed(bds__h2_session *c, int32_t id, bds__h2_msg *m, uint8_t *wire,
                               size_t len, bool compressed) {
    BDS_ASSERT(c != NULL && !c->in_output && m != NULL && wire != NULL);
    BDS_ASSERT(c->cbs.on_msg_release != NULL);
    struct h2_stream *s;
    bds_status st = h2_send_check(c, id, len, &s);
    if (st != BDS_OK) return st;
    if (compressed && s->resp_enc == BDS__GRPC_ENC_IDENTITY) return BDS_E_INVALID;
    /* gRPC PROTOCOL-HTTP2: Compressed-Flag, Message-Length big-endian. */
    wire[0] = compressed ? 1 : 0;
    wire[1] = (uint8_t)(len >> 24);
    wire[2] = (uint8_t)(len >> 16);
    wire[3] = (uint8_t)(len >> 8);
    wire[4] = (uint8_t)len;
    *m = (bds__h2_msg){._data = wire, ._len = (uint32_t)len, ._owned = false, ._framed = true};
    return h2_queue_push(c, s, m);
}

bds__grpc_enc bds__h2_response_encoding(bds__h2_session *c, int32_t id, bds__grpc_enc want) {
    BDS_ASSERT(c != NULL && !c->in_output);
    struct h2_stream *s;
    if (h2_app_stream(c, id, &s) != BDS_OK) return BDS__GRPC_ENC_IDENTITY;
    if (!s->resp_enc_fixed) {
        s->resp_enc_fixed = true;
        bool takes = want != BDS__GRPC_ENC_UNKNOWN && (s->accept & BDS__GRPC_ENC_BIT(want)) != 0;
        s->resp_enc = (uint8_t)(takes ? want : BDS__GRPC_ENC_IDENTITY);
    }
    return (bds__grpc_enc)s->resp_enc;
}

bds_status bds__h2_finish(bds__h2_session *c, int32_t id, bds_status status, const char *message) {
    BDS_ASSERT(c != NULL && !c->in_output);
    struct h2_stream *s;
    bds_status st = h2_app_stream(c, id, &s);
    if (st != BDS_OK) return st;
    int code = h2_grpc_code(status);
    s->state = H2S_DONE;
    s->ended_by = H2S_END_APP;
    if (code < 0) {
        /* "Nothing is sent" statuses: the stream is cancelled. */
        h2_check(c, nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL));
    } else {
        if (code != 0 && message == NULL) message = bds_status_str(status);
        h2_stream_answer(c, s, 200, code, message);
    }
    h2_stream_settle(c, s);
    return BDS_OK;
}

/* A custom metadata name: lower-case token characters, not one gRPC or HTTP/2
 * reserves (grpc-*, the connection-specific ones, those we set ourselves). */
static bool h2_md_name_ok(const char *name, size_t n) {
    if (n == 0 || n > UINT8_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              ch == '.'))
            return false;
    }
    if (n >= 5 && memcmp(name, "grpc-", 5) == 0) return false;
    static const char *const reserved[] = {"content-type", "te", "connection", "keep-alive",
                                           "proxy-connection", "transfer-encoding", "upgrade",
                                           "content-length"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strlen(reserved[i]) == n && memcmp(reserved[i], name, n) == 0) return false;
    return true;
}

/* A field value: visible ASCII and inner spaces (RFC 9113 §8.2.1). */
static bool h2_md_value_ok(const uint8_t *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e) return false;
    return n == 0 || (v[0] != ' ' && v[n - 1] != ' ');
}

bds_status bds__h2_add_metadata(bds__h2_session *c, int32_t id, bool trailer, const char *name,
                                const uint8_t *value, size_t len) {
    BDS_ASSERT(c != NULL && !c->in_output && name != NULL);
    BDS_ASSERT(value != NULL || len == 0);
    struct h2_stream *s;
    bds_status st = h2_app_stream(c, id, &s);
    if (st != BDS_OK) return st;
    if (c->fatal) return BDS_E_SESSION_CLOSED;
    if (!trailer && s->response_submitted) return BDS_FAILED_PRECONDITION;
    size_t nl = strnlen(name, UINT8_MAX + 1u);
    if (!h2_md_name_ok(name, nl) || !h2_md_value_ok(value, len)) return BDS_E_INVALID;
    size_t need = 4 + nl + len;
    if (s->md_n >= BDS_H2_METADATA_MAX || need > BDS_H2_METADATA_BYTES_MAX - s->md_len)
        return BDS_E_INVALID;
    uint8_t *md = c->alloc->realloc_fn(s->md, s->md_len + need, c->alloc->ctx);
    if (md == NULL) return BDS_E_NOMEM;
    s->md = md;
    uint8_t *e = md + s->md_len;
    e[0] = trailer ? 1 : 0;
    e[1] = (uint8_t)nl;
    e[2] = (uint8_t)(len >> 8);
    e[3] = (uint8_t)len;
    memcpy(e + 4, name, nl);
    if (len > 0) memcpy(e + 4 + nl, value, len);
    s->md_len = (uint16_t)(s->md_len + need);
    s->md_n++;
    return BDS_OK;
}

size_t bds__h2_consume(bds__h2_session *c, int32_t id, size_t n) {
    BDS_ASSERT(c != NULL && !c->in_output);
    struct h2_stream *s = h2_stream_find(c, id);
    if (s == NULL || n == 0 || c->fatal) return 0;
    BDS_ASSERT(s->consumed_bytes <= s->recv_bytes);
    uint64_t k = s->recv_bytes - s->consumed_bytes;
    if (k > n) k = n;
    if (k == 0) return 0;
    /* Counted now, told to nghttp2 once per stream before the next send
     * (h2_consume_flush): its WINDOW_UPDATEs only leave with a send anyway. */
    s->consumed_bytes += k;
    if (s->consume_pending == 0) bds__dlist_insert_tail(&c->consume, &s->consume_link);
    s->consume_pending += k;
    return (size_t)k;
}

void bds__h2_hold_conn_credit(bds__h2_session *c, bool hold) {
    BDS_ASSERT(c != NULL && !c->in_output);
    c->conn_credit_held = hold;
    if (hold || c->conn_credit_owed == 0 || c->fatal) return;
    size_t k = (size_t)c->conn_credit_owed;
    c->conn_credit_owed = 0;
    h2_check(c, nghttp2_session_consume_connection(c->ng, k));
}

/* Cuts |s|'s window from |now| to |want| bytes (see bds__h2_stream_window_cap). */
static void h2_stream_cut(bds__h2_session *c, struct h2_stream *s, uint32_t now, uint32_t want) {
    s->cap_debt += now - want;
    h2_check(c, nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, s->id, (int32_t)want));
}

/* Our SETTINGS were acknowledged: a grown initial window grew every stream's
 * by as much, capped ones too; those are cut back to their caps. */
static void h2_settings_acked(bds__h2_session *c) {
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &c->live) {
        struct h2_stream *s = BDS_DLIST_ENTRY(it, struct h2_stream, live_link);
        if (s->cap == 0 || s->state != H2S_OPEN) continue;
        int32_t now = nghttp2_session_get_stream_effective_local_window_size(c->ng, s->id);
        if (now > 0 && (uint32_t)now > s->cap) h2_stream_cut(c, s, (uint32_t)now, s->cap);
    }
}

uint32_t bds__h2_stream_window_cap(bds__h2_session *c, int32_t id, uint32_t cap) {
    BDS_ASSERT(c != NULL && !c->in_output && (cap == 0 || cap >= 1024));
    struct h2_stream *s = h2_stream_find(c, id);
    if (s == NULL || c->fatal || s->state != H2S_OPEN) return 0;
    /* The acknowledged initial window: what nghttp2 sized this stream's from. */
    uint32_t full = nghttp2_session_get_local_settings(c->ng, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE);
    uint32_t want = cap == 0 || cap > full ? full : cap;
    int32_t now = nghttp2_session_get_stream_effective_local_window_size(c->ng, id);
    if (now < 0) return 0;
    s->cap = want < full ? want : 0;
    if ((uint32_t)now == want) return want;
    /* nghttp2 cuts the window by taking the cut off what it has received, and
     * sends a WINDOW_UPDATE once what was consumed reaches what was received
     * and not yet credited: consumption that lags reception is credited ahead
     * of it, by as much as the cut, so on its own the client keeps the whole
     * old window. The cut is paid here instead: the stream's next credits, as
     * many bytes as it cut, are withheld from nghttp2; a lift cancels what
     * is still owed and hands back what was withheld (as much as it grows). */
    if (want < (uint32_t)now) {
        c->stats.windows_capped++;
        h2_stream_cut(c, s, (uint32_t)now, want);
        return c->fatal ? 0 : want;
    }
    uint32_t grow = want - (uint32_t)now;
    uint32_t forgive = grow < s->cap_debt ? grow : s->cap_debt;
    s->cap_debt -= forgive;
    grow -= forgive;
    uint32_t give = grow < s->cap_paid ? grow : s->cap_paid;
    s->cap_paid -= give;
    h2_check(c, nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, id, (int32_t)want));
    if (give && !c->fatal) h2_check(c, nghttp2_session_consume_stream(c->ng, id, give));
    return c->fatal ? 0 : want;
}

void bds__h2_credit_partial(bds__h2_session *c, int32_t id) {
    BDS_ASSERT(c != NULL && !c->in_output);
    struct h2_stream *s = h2_stream_find(c, id);
    if (s == NULL || c->fatal || !c->cfg.credit_partial_messages || s->state != H2S_OPEN) return;
    h2_stream_credit_partial(c, s, false);
}

size_t bds__h2_partial_bytes(const bds__h2_session *c, int32_t id) {
    const struct h2_stream *s = h2_stream_get(c, id);
    uint32_t have = 0;
    if (s == NULL || !s->deframer_live || !bds__grpc_deframer_partial(&s->deframer, NULL, &have)) return 0;
    return have;
}

size_t bds__h2_unconsumed(const bds__h2_session *c, int32_t id) {
    const struct h2_stream *s = h2_stream_get(c, id);
    return s == NULL ? 0 : (size_t)(s->recv_bytes - s->consumed_bytes);
}

size_t bds__h2_queued_bytes(const bds__h2_session *c, int32_t id) {
    const struct h2_stream *s = h2_stream_get(c, id);
    return s == NULL ? 0 : s->q_bytes;
}

static bds_status h2_status_of(int rv) {
    if (rv == 0) return BDS_OK;
    return rv == NGHTTP2_ERR_NOMEM ? BDS_E_NOMEM : BDS_E_INVALID;
}

bds_status bds__h2_shutdown_notice(bds__h2_session *c) {
    BDS_ASSERT(c != NULL && !c->in_output);
    if (c->fatal) return BDS_E_INVALID;
    return h2_status_of(nghttp2_submit_shutdown_notice(c->ng));
}

bds_status bds__h2_goaway(bds__h2_session *c, uint32_t h2_error) {
    BDS_ASSERT(c != NULL && !c->in_output);
    if (c->fatal) return BDS_E_INVALID;
    return h2_status_of(nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, h2_goaway_last_id(c), h2_error, NULL, 0));
}

bds_status bds__h2_terminate(bds__h2_session *c, uint32_t h2_error) {
    BDS_ASSERT(c != NULL && !c->in_output);
    if (c->fatal) return BDS_E_INVALID;
    return h2_status_of(nghttp2_session_terminate_session2(c->ng, h2_goaway_last_id(c), h2_error));
}

bds_status bds__h2_ping(bds__h2_session *c) {
    BDS_ASSERT(c != NULL && !c->in_output && !c->in_recv);
    if (c->fatal || c->close_on_goaway) return BDS_E_INVALID;
    if (c->ping_outstanding) return BDS_OK;
    bds_status st = h2_status_of(nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, h2_keepalive_opaque));
    if (st == BDS_OK) {
        c->ping_outstanding = true;
        c->stats.pings_sent++;
    }
    return st;
}

bool bds__h2_ping_outstanding(const bds__h2_session *c) { return c->ping_outstanding; }

bool bds__h2_peer_ready(const bds__h2_session *c) { return c->peer_ready; }

void bds__h2_abort_calls(bds__h2_session *c, bds_status status) {
    BDS_ASSERT(c != NULL);
    BDS_ASSERT(!c->in_output);
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &c->live) {
        struct h2_stream *s = BDS_DLIST_ENTRY(it, struct h2_stream, live_link);
        if (s->state != H2S_OPEN) continue;
        s->state = H2S_DONE;
        s->ended_by = H2S_END_PEER;
        c->stats.calls_reset++;
        if (c->cbs.on_reset != NULL)
            c->cbs.on_reset(c->ctx, s->call_ctx, s->id, status, NGHTTP2_CANCEL);
    }
}

bds_status bds__h2_rst_status(uint32_t h2_error) {
    switch (h2_error) {
    case NGHTTP2_CANCEL: return BDS_CANCELLED;
    case NGHTTP2_REFUSED_STREAM: return BDS_UNAVAILABLE;
    case NGHTTP2_ENHANCE_YOUR_CALM: return BDS_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY: return BDS_PERMISSION_DENIED;
    default: return BDS_INTERNAL;
    }
}

const bds__h2_stats *bds__h2_get_stats(const bds__h2_session *c) {
    BDS_ASSERT(c != NULL);
    return &c->stats;
}

unsigned bds__h2_nghttp2_features(void) {
    unsigned f = 0;
#if defined(BDS_HAVE_NGHTTP2_STREAM_RESET_RATE_LIMIT)
    f |= BDS_H2_FEAT_STREAM_RESET_RATE_LIMIT;
#endif
#if defined(BDS_HAVE_NGHTTP2_MAX_CONTINUATIONS)
    f |= BDS_H2_FEAT_MAX_CONTINUATIONS;
#endif
#if defined(BDS_HAVE_NGHTTP2_MAX_OUTBOUND_ACK)
    f |= BDS_H2_FEAT_MAX_OUTBOUND_ACK;
#endif
#if defined(BDS_HAVE_NGHTTP2_MAX_SETTINGS)
    f |= BDS_H2_FEAT_MAX_SETTINGS;
#endif
    return f;
}

bool bds__h2_nghttp2_describe(char *buf, size_t cap, const char *loaded, int loaded_num,
                              const char *built, int built_num, unsigned features) {
    BDS_ASSERT(buf != NULL && cap > 0 && loaded != NULL && built != NULL);
    static const struct { unsigned bit; const char *name; } prot[] = {
        {BDS_H2_FEAT_STREAM_RESET_RATE_LIMIT, "stream reset rate limit (rapid reset)"},
        {BDS_H2_FEAT_MAX_CONTINUATIONS, "CONTINUATION limit"},
        {BDS_H2_FEAT_MAX_OUTBOUND_ACK, "outbound ACK limit"},
        {BDS_H2_FEAT_MAX_SETTINGS, "SETTINGS entries limit"},
    };
    bool older = loaded_num < built_num;
    bool missing = (features & BDS_H2_FEAT_ALL) != BDS_H2_FEAT_ALL;
    buf[0] = '\0';
    int k = snprintf(buf, cap, "libnghttp2 %s loaded, built against %s%s", loaded, built,
                     older ? " (older)" : "");
    size_t n = k < 0 ? 0 : (size_t)k < cap ? (size_t)k : cap - 1;
    /* Pass 0 lists what the build uses, pass 1 what it lacks. */
    for (int pass = 0; pass < 2; pass++) {
        const char *sep = pass == 0 ? "; uses: " : "; LACKS: ";
        for (size_t i = 0; i < sizeof prot / sizeof prot[0]; i++) {
            if (((features & prot[i].bit) != 0) != (pass == 0)) continue;
            k = snprintf(buf + n, cap - n, "%s%s", sep, prot[i].name);
            sep = ", ";
            n = k < 0 ? n : (size_t)k < cap - n ? n + (size_t)k : cap - 1;
        }
    }
    return older || missing;
}

bool bds__h2_nghttp2_report(char *buf, size_t cap) {
    const nghttp2_info *info = nghttp2_version(0);
    return bds__h2_nghttp2_describe(buf, cap, info->version_str, info->version_num,
                                    NGHTTP2_VERSION, NGHTTP2_VERSION_NUM,
                                    bds__h2_nghttp2_features());
}
