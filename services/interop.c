/* interop.c — grpc.testing.TestService, the standard gRPC interop service
 * (docs/SERVICE.md), so any gRPC implementation's interop client can test the
 * server; on the public API only. Opt-in: registered only when
 * bds_server_config.interop_service is set (bidistreamd --interop), since a
 * test service has no place on a production server. Messages are
 * grpc-proto's own (protobuf-c code generated at build time, proto/). Every
 * method runs through the pipeline as a FIFO stream, of the kind it is:
 *
 *   EmptyCall, UnaryCall          UNARY: one request, one response (response_size
 *                                 zero bytes; response_status is echoed as the
 *                                 call's status)
 *   StreamingOutputCall           SERVER_STREAMING: a response per
 *                                 response_parameters entry, each after its
 *                                 interval_us (a call timer) and after the
 *                                 previous one left (a paced reply; at most 1000
 *                                 entries, 64 MiB per request by default:
 *                                 RESOURCE_EXHAUSTED)
 *   StreamingInputCall            CLIENT_STREAMING: the sum of the request payload
 *                                 sizes (kept in the stream's user pointer),
 *                                 answered at the client's half-close
 *                                 (bds_method.on_half_close)
 *   FullDuplexCall, HalfDuplexCall BIDI: each request answered as StreamingOutputCall
 *
 * UnimplementedCall is not registered, so it is answered UNIMPLEMENTED like
 * any unknown method.
 *
 * The interop client's custom_metadata case: UnaryCall and FullDuplexCall echo
 * the request's x-grpc-test-echo-initial in the response HEADERS and its
 * x-grpc-test-echo-trailing-bin (its wire value, base64) in the trailers; only
 * those two headers are kept, and only by calls that carry them.
 *
 * Compression (the client_compressed_* and server_compressed_* cases): the
 * server takes requests in identity, deflate and gzip and hands them to the
 * handlers decompressed; expect_compressed = true on a request that came
 * uncompressed (bds_call_request_compressed) is answered INVALID_ARGUMENT,
 * which is the cases' probe. SimpleRequest.response_compressed and each
 * ResponseParameters.compressed set the response's compression
 * (bds_stream_set_compression): true compresses it with gzip when the client
 * takes gzip, false sends it uncompressed, whatever the server's
 * --compress-responses; absent leaves the server's choice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/testing/empty.pb-c.h"
#include "grpc/testing/messages.pb-c.h"
#include "services.h"

#define INTEROP_PAYLOAD_MAX (4u << 20)

/* The custom_metadata case: the request's x-grpc-test-echo-initial comes back
 * in the response headers and its x-grpc-test-echo-trailing-bin in the
 * trailers. Done at stream open (a method interceptor), before any reply, with
 * the public stream API only. */
static bds_status echo_metadata(bds_stream *stream, const char **message, void *ctx) {
    (void)message;
    (void)ctx;
    static const char initial[] = "x-grpc-test-echo-initial", trailing[] = "x-grpc-test-echo-trailing-bin";
    size_t n;
    const uint8_t *v = bds_stream_metadata(stream, initial, &n);
    if (v) (void)bds_stream_set_header(stream, initial, v, n);
    v = bds_stream_metadata(stream, trailing, &n);
    if (v) (void)bds_stream_set_trailer(stream, trailing, v, n);
    return BDS_OK;
}

static const bds_interceptor echo_metadata_icpt = {.size = sizeof echo_metadata_icpt, .on_open = echo_metadata};
static const bds_interceptor *const echo_metadata_list[] = {&echo_metadata_icpt};

/* client_compressed_*: a request expecting compression that came
 * uncompressed is refused. True when it was. */
static bool refuse_expect_compressed(bds_call *call, const Grpc__Testing__BoolValue *expect) {
    if (!expect || !expect->value || bds_call_request_compressed(call)) return false;
    bds_call_done(call, BDS_INVALID_ARGUMENT, "expect_compressed: the request was not compressed");
    return true;
}

/* server_compressed_*: the next response compressed (gzip) or not, as the
 * request asks; without the field, as the server's config says. */
static void set_response_compression(bds_call *call, const Grpc__Testing__BoolValue *compressed,
                                     const bds_server_config *cfg) {
    bds_compression c = !compressed ? cfg->compress_responses
                        : compressed->value ? BDS_COMPRESSION_GZIP
                                            : BDS_COMPRESSION_NONE;
    (void)bds_stream_set_compression(bds_call_stream(call), c);
}

static void reply_message(bds_call *call, const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return;
    protobuf_c_message_pack(m, buf);
    bds_call_reply_bytes(call, buf, n);
    free(buf);
}

/* Finishes the call with the requested status; false when there is none. */
static bool echo_status(bds_call *call, const Grpc__Testing__EchoStatus *st) {
    if (!st || st->code == 0) return false;
    bds_status code = st->code > 0 && st->code <= 16 ? (bds_status)st->code : BDS_UNKNOWN;
    bds_call_done(call, code, st->message && st->message[0] ? st->message : NULL);
    return true;
}

/* A payload of `size` zero bytes (body points into zeros, which must live
 * until the response is packed). */
static bool make_payload(Grpc__Testing__Payload *p, int32_t size, uint8_t **zeros) {
    grpc__testing__payload__init(p);
    if (size < 0 || (uint32_t)size > INTEROP_PAYLOAD_MAX) return false;
    *zeros = calloc(1, (size_t)size + 1);
    if (!*zeros) return false;
    p->body.data = *zeros;
    p->body.len = (size_t)size;
    return true;
}

static void empty_call(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Grpc__Testing__Empty *e = grpc__testing__empty__unpack(NULL, len, req);
    if (!e) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.Empty");
        return;
    }
    grpc__testing__empty__free_unpacked(e, NULL);
    bds_call_reply_bytes(call, "", 0);
    bds_call_done(call, BDS_OK, NULL);
}

static void unary_call(bds_call *call, void *ctx) {
    const bds_server_config *cfg = ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Grpc__Testing__SimpleRequest *r = grpc__testing__simple_request__unpack(NULL, len, req);
    if (!r) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.SimpleRequest");
        return;
    }
    if (!refuse_expect_compressed(call, r->expect_compressed) && !echo_status(call, r->response_status)) {
        Grpc__Testing__SimpleResponse resp = GRPC__TESTING__SIMPLE_RESPONSE__INIT;
        Grpc__Testing__Payload payload;
        uint8_t *zeros = NULL;
        if (!make_payload(&payload, r->response_size, &zeros)) {
            bds_call_done(call, BDS_INVALID_ARGUMENT, "response_size out of range");
        } else {
            resp.payload = &payload;
            set_response_compression(call, r->response_compressed, cfg);
            reply_message(call, &resp.base);
            bds_call_done(call, BDS_OK, NULL);
        }
        free(zeros);
    }
    grpc__testing__simple_request__free_unpacked(r, NULL);
}

/* Streams the responses of one StreamingOutputCallRequest, each after its
 * interval, then finishes the call (with the echoed status if any). Paced:
 * the next response is made only once the previous one left for HTTP/2
 * (bds_call_reply_paced), so a call holds about one response whatever its
 * client reads; a request asking for more responses or bytes than the
 * server's interop_responses_max / interop_response_bytes_max (~7 KB of
 * request must not ask for 4 GiB) is refused before anything is made. At any
 * time the call waits on one thing, a timer or a response, and both come
 * back when the stream is gone (the timer early, the response dropped): the
 * call then finishes CANCELLED. */
struct out_stream {
    Grpc__Testing__StreamingOutputCallRequest *req;
    const bds_server_config *cfg;
    size_t next;
};

static void out_stream_finish(bds_call *call, struct out_stream *o, bds_status st, const char *msg) {
    if (st != BDS_OK || !echo_status(call, o->req->response_status)) bds_call_done(call, st, msg);
    grpc__testing__streaming_output_call_request__free_unpacked(o->req, NULL);
    free(o);
}

static void out_stream_sent(bds_call *call, void *ctx);

/* Makes response `next`; the last one finishes the call once it left. */
static void out_stream_send(bds_call *call, void *ctx) {
    struct out_stream *o = ctx;
    if (bds_call_cancelled(call)) {
        out_stream_finish(call, o, BDS_CANCELLED, NULL);
        return;
    }
    const Grpc__Testing__ResponseParameters *rp = o->req->response_parameters[o->next];
    Grpc__Testing__StreamingOutputCallResponse resp = GRPC__TESTING__STREAMING_OUTPUT_CALL_RESPONSE__INIT;
    Grpc__Testing__Payload payload;
    uint8_t *zeros = NULL, *buf = NULL;
    bds_status st = BDS_E_NOMEM;
    if (make_payload(&payload, rp->size, &zeros)) {
        resp.payload = &payload;
        size_t n = protobuf_c_message_get_packed_size(&resp.base);
        buf = malloc(n ? n : 1);
        if (buf) {
            protobuf_c_message_pack(&resp.base, buf);
            set_response_compression(call, rp->compressed, o->cfg);
            st = bds_call_reply_paced(call, buf, n, out_stream_sent, o);
        }
    }
    free(buf);
    free(zeros);
    if (st == BDS_E_SESSION_CLOSED) out_stream_finish(call, o, BDS_CANCELLED, NULL);
    else if (st != BDS_OK) out_stream_finish(call, o, BDS_RESOURCE_EXHAUSTED, "server out of memory");
    else o->next++;
}

/* Response `next` is due: after its interval, or now. */
static void out_stream_schedule(bds_call *call, struct out_stream *o) {
    int32_t us = o->req->response_parameters[o->next]->interval_us;
    if (us > 0 && bds_call_after(call, (uint64_t)us * 1000ULL, out_stream_send, o) == BDS_OK) return;
    out_stream_send(call, o);
}

/* The last response left (or was dropped: the stream is gone). */
static void out_stream_sent(bds_call *call, void *ctx) {
    struct out_stream *o = ctx;
    if (bds_call_cancelled(call)) out_stream_finish(call, o, BDS_CANCELLED, NULL);
    else if (o->next == o->req->n_response_parameters) out_stream_finish(call, o, BDS_OK, NULL);
    else out_stream_schedule(call, o);
}

/* Checks the request against the per-call bounds; false when it finished the call. */
static bool out_request_bounded(bds_call *call, const Grpc__Testing__StreamingOutputCallRequest *r,
                                const bds_server_config *cfg) {
    char why[96];
    if (r->n_response_parameters > cfg->interop_responses_max) {
        snprintf(why, sizeof why, "response_parameters: more than %u responses asked for",
                 cfg->interop_responses_max);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, why);
        return false;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < r->n_response_parameters; i++) {
        int32_t size = r->response_parameters[i]->size;
        if (size < 0 || (uint32_t)size > INTEROP_PAYLOAD_MAX) {
            bds_call_done(call, BDS_INVALID_ARGUMENT, "response size out of range");
            return false;
        }
        total += (uint64_t)size;
    }
    if (total > cfg->interop_response_bytes_max) {
        snprintf(why, sizeof why, "response_parameters: more than %u bytes of responses asked for",
                 cfg->interop_response_bytes_max);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, why);
        return false;
    }
    return true;
}

static void streaming_output(bds_call *call, void *ctx) {
    const bds_server_config *cfg = ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Grpc__Testing__StreamingOutputCallRequest *r = grpc__testing__streaming_output_call_request__unpack(NULL, len, req);
    if (!r) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.StreamingOutputCallRequest");
        return;
    }
    struct out_stream *o = NULL;
    if (!out_request_bounded(call, r, cfg)) {
        grpc__testing__streaming_output_call_request__free_unpacked(r, NULL);
        return;
    }
    if (r->n_response_parameters == 0 || !(o = calloc(1, sizeof *o))) {
        if (r->n_response_parameters != 0) bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        else if (!echo_status(call, r->response_status)) bds_call_done(call, BDS_OK, NULL);
        grpc__testing__streaming_output_call_request__free_unpacked(r, NULL);
        return;
    }
    o->req = r;
    o->cfg = cfg;
    out_stream_schedule(call, o);
}

/* Each request adds its payload's size to the stream's sum, kept in the
 * stream's user pointer (an integer: nothing to free). FIFO: every message
 * of the stream runs on its home shard, in order. */
static void streaming_input(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Grpc__Testing__StreamingInputCallRequest *r = grpc__testing__streaming_input_call_request__unpack(NULL, len, req);
    if (!r) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.StreamingInputCallRequest");
        return;
    }
    if (!refuse_expect_compressed(call, r->expect_compressed)) {
        if (r->payload) {
            bds_stream *stream = bds_call_stream(call);
            uintptr_t sum = (uintptr_t)bds_stream_user(stream) + r->payload->body.len;
            bds_stream_set_user(stream, (void *)sum);
        }
        bds_call_done(call, BDS_OK, NULL);
    }
    grpc__testing__streaming_input_call_request__free_unpacked(r, NULL);
}

/* The client half-closed and every request was handled: the one answer. */
static void streaming_input_end(bds_stream *stream, void *ctx) {
    (void)ctx;
    Grpc__Testing__StreamingInputCallResponse resp = GRPC__TESTING__STREAMING_INPUT_CALL_RESPONSE__INIT;
    resp.aggregated_payload_size = (int32_t)(uintptr_t)bds_stream_user(stream);
    size_t n = protobuf_c_message_get_packed_size(&resp.base);
    uint8_t buf[16]; /* one int32 field: at most 11 bytes */
    protobuf_c_message_pack(&resp.base, buf);
    if (bds_stream_send(stream, buf, n) == BDS_OK) (void)bds_stream_finish(stream, BDS_OK, NULL);
    else (void)bds_stream_finish(stream, BDS_RESOURCE_EXHAUSTED, "server out of memory");
}

bds_status bds__interop_register(bds_server *server, const bds_server_config *config) {
    bds_options fifo = config->options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    static const struct {
        const char *path;
        bds_handler_fn fn;
        bds_method_kind kind;
        bool capture; /* echoes custom metadata */
    } methods[] = {
        {"/grpc.testing.TestService/EmptyCall", empty_call, BDS_METHOD_UNARY, false},
        {"/grpc.testing.TestService/UnaryCall", unary_call, BDS_METHOD_UNARY, true},
        {"/grpc.testing.TestService/StreamingOutputCall", streaming_output, BDS_METHOD_SERVER_STREAMING, false},
        {"/grpc.testing.TestService/StreamingInputCall", streaming_input, BDS_METHOD_CLIENT_STREAMING, false},
        {"/grpc.testing.TestService/FullDuplexCall", streaming_output, BDS_METHOD_BIDI, true},
        {"/grpc.testing.TestService/HalfDuplexCall", streaming_output, BDS_METHOD_BIDI, false},
    };
    bds_status st = BDS_OK;
    for (size_t i = 0; st == BDS_OK && i < sizeof methods / sizeof methods[0]; i++) {
        bds_method m = {.size = sizeof m,
                        .path = methods[i].path,
                        .handler = methods[i].fn,
                        .handler_ctx = (void *)config,
                        .options = &fifo,
                        .kind = methods[i].kind};
        if (methods[i].fn == streaming_input) m.on_half_close = streaming_input_end;
        if (methods[i].capture) {
            m.interceptors = echo_metadata_list;
            m.n_interceptors = 1;
        }
        st = bds_server_add_method(server, &m, NULL);
    }
    return st;
}
