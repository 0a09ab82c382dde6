/* interop_service.c — grpc.testing.TestService, the standard gRPC interop
 * service (SPEC §4), so any gRPC implementation's interop client can test the
 * server. Opt-in: registered only when bds_server_config.interop_service is
 * set (bidistreamd --interop), since a test service has no place on a
 * production server. Messages are grpc-proto's own (protobuf-c code generated at build
 * time). Every method runs through the pipeline as a FIFO session:
 *
 *   EmptyCall, UnaryCall          one request, one response (response_size zero
 *                                 bytes; response_status is echoed as the call's status)
 *   StreamingOutputCall           one request, a response per response_parameters
 *                                 entry, each after its interval_us (a shard timer)
 *   StreamingInputCall            the sum of the request payload sizes, answered at
 *                                 the client's half-close (the end-of-stream marker)
 *   FullDuplexCall, HalfDuplexCall each request answered as StreamingOutputCall
 *
 * UnimplementedCall is not registered, so it is answered UNIMPLEMENTED like
 * any unknown method.
 *
 * The interop client's custom_metadata case: UnaryCall and FullDuplexCall echo
 * the request's x-grpc-test-echo-initial in the response HEADERS and its
 * x-grpc-test-echo-trailing-bin (its wire value, base64) in the trailers; only
 * those two headers are kept, and only by calls that carry them.
 *
 * Compression: the server accepts identity only (every response says so in
 * grpc-accept-encoding). A request with grpc-encoding gzip is answered
 * UNIMPLEMENTED at its headers, a compressed-flag message without one INTERNAL
 * (proto/grpc_wire.c, grpc_frame.c), so every message reaching a handler was
 * sent uncompressed: expect_compressed = true (the client_compressed_* probe)
 * is answered INVALID_ARGUMENT. response_compressed is ignored: sending
 * uncompressed is always allowed. */
#include <stdlib.h>
#include <string.h>

#include "grpc/testing/empty.pb-c.h"
#include "grpc/testing/messages.pb-c.h"
#include "pipeline_int.h"
#include "server_int.h"

#define INTEROP_PAYLOAD_MAX (4u << 20)

/* The request headers the custom_metadata case echoes (bds__server_set_capture). */
enum { MD_ECHO_INITIAL, MD_ECHO_TRAILING };
static const char *const md_names[] = {"x-grpc-test-echo-initial", "x-grpc-test-echo-trailing-bin"};

/* Echoes the call's captured headers, once: the first message does it, before
 * any reply (a later one would be too late for the HEADERS). */
static void echo_metadata(bds_call *call) {
    srv_call *sc = bds_call_session_ctx(call);
    if (!sc->req_md) return;
    size_t n;
    const uint8_t *v = bds__server_call_header(sc, MD_ECHO_INITIAL, &n);
    if (v) (void)bds__server_call_add_metadata(sc, false, md_names[MD_ECHO_INITIAL], v, n);
    v = bds__server_call_header(sc, MD_ECHO_TRAILING, &n);
    if (v) (void)bds__server_call_add_metadata(sc, true, md_names[MD_ECHO_TRAILING], v, n);
    free(sc->req_md);
    sc->req_md = NULL;
    sc->req_md_len = 0;
}

/* client_compressed_*: a handler only ever sees uncompressed messages (see
 * above), so a request expecting compression is refused. True when it was. */
static bool refuse_expect_compressed(bds_call *call, const Grpc__Testing__BoolValue *expect) {
    if (!expect || !expect->value) return false;
    bds_call_done(call, BDS_INVALID_ARGUMENT,
                  "expect_compressed: the request was not compressed (this server accepts identity only)");
    return true;
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
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Grpc__Testing__SimpleRequest *r = grpc__testing__simple_request__unpack(NULL, len, req);
    if (!r) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.SimpleRequest");
        return;
    }
    echo_metadata(call);
    if (!refuse_expect_compressed(call, r->expect_compressed) && !echo_status(call, r->response_status)) {
        Grpc__Testing__SimpleResponse resp = GRPC__TESTING__SIMPLE_RESPONSE__INIT;
        Grpc__Testing__Payload payload;
        uint8_t *zeros = NULL;
        if (!make_payload(&payload, r->response_size, &zeros)) {
            bds_call_done(call, BDS_INVALID_ARGUMENT, "response_size out of range");
        } else {
            resp.payload = &payload;
            reply_message(call, &resp.base);
            bds_call_done(call, BDS_OK, NULL);
        }
        free(zeros);
    }
    grpc__testing__simple_request__free_unpacked(r, NULL);
}

/* Streams the responses of one StreamingOutputCallRequest, each after its
 * interval, then finishes the call (with the echoed status if any). */
struct out_stream {
    bds_timer t;
    bds_call *call;
    Grpc__Testing__StreamingOutputCallRequest *req;
    size_t next;
};

static void out_stream_step(bds_timer *t, void *ctx);

static void out_stream_send(struct out_stream *o) {
    while (o->next < o->req->n_response_parameters) {
        const Grpc__Testing__ResponseParameters *rp = o->req->response_parameters[o->next];
        Grpc__Testing__StreamingOutputCallResponse resp = GRPC__TESTING__STREAMING_OUTPUT_CALL_RESPONSE__INIT;
        Grpc__Testing__Payload payload;
        uint8_t *zeros = NULL;
        if (!make_payload(&payload, rp->size, &zeros)) {
            bds_call_done(o->call, BDS_INVALID_ARGUMENT, "response size out of range");
            goto out;
        }
        resp.payload = &payload;
        reply_message(o->call, &resp.base);
        free(zeros);
        o->next++;
        if (o->next < o->req->n_response_parameters && o->req->response_parameters[o->next]->interval_us > 0) {
            bds_shard *s = bds__shard_self();
            uint64_t us = (uint64_t)o->req->response_parameters[o->next]->interval_us;
            bds__timer_init(&o->t, out_stream_step, o);
            if (s && bds__timer_arm(bds__shard_timers(s), &o->t, bds__shard_now(s) + us * 1000ULL) == 0) return;
        }
    }
    if (!echo_status(o->call, o->req->response_status)) bds_call_done(o->call, BDS_OK, NULL);
out:
    grpc__testing__streaming_output_call_request__free_unpacked(o->req, NULL);
    free(o);
}

static void out_stream_step(bds_timer *t, void *ctx) {
    (void)t;
    out_stream_send(ctx);
}

static void streaming_output(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    struct out_stream *o = calloc(1, sizeof *o);
    if (!o) {
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    o->call = call;
    o->req = grpc__testing__streaming_output_call_request__unpack(NULL, len, req);
    if (!o->req) {
        free(o);
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.StreamingOutputCallRequest");
        return;
    }
    echo_metadata(call);
    if (o->req->n_response_parameters && o->req->response_parameters[0]->interval_us > 0) {
        bds_shard *s = bds__shard_self();
        bds__timer_init(&o->t, out_stream_step, o);
        uint64_t us = (uint64_t)o->req->response_parameters[0]->interval_us;
        if (s && bds__timer_arm(bds__shard_timers(s), &o->t, bds__shard_now(s) + us * 1000ULL) == 0) return;
    }
    out_stream_send(o);
}

/* Runs on the stream's home shard (FIFO): per-stream state lives on its srv_call. */
static void streaming_input(bds_call *call, void *ctx) {
    (void)ctx;
    srv_call *sc = bds_call_session_ctx(call);
    const srv_msg *m = bds_call_payload(call);
    if (m->end) {
        Grpc__Testing__StreamingInputCallResponse resp = GRPC__TESTING__STREAMING_INPUT_CALL_RESPONSE__INIT;
        resp.aggregated_payload_size = (int32_t)sc->aggregate;
        reply_message(call, &resp.base);
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    Grpc__Testing__StreamingInputCallRequest *r =
        grpc__testing__streaming_input_call_request__unpack(NULL, m->len, m->data);
    if (!r) {
        bds_call_done(call, BDS_INTERNAL, "malformed grpc.testing.StreamingInputCallRequest");
        return;
    }
    if (!refuse_expect_compressed(call, r->expect_compressed)) {
        if (r->payload) sc->aggregate += r->payload->body.len;
        bds_call_done(call, BDS_OK, NULL);
    }
    grpc__testing__streaming_input_call_request__free_unpacked(r, NULL);
}

bds_status bds__interop_register(bds_server *srv) {
    bds_options fifo = srv->cfg.options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    static const struct {
        const char *path;
        bds_handler_fn fn;
        bool end_marker;
        bool capture; /* echoes custom metadata */
    } methods[] = {
        {"/grpc.testing.TestService/EmptyCall", empty_call, false, false},
        {"/grpc.testing.TestService/UnaryCall", unary_call, false, true},
        {"/grpc.testing.TestService/StreamingOutputCall", streaming_output, false, false},
        {"/grpc.testing.TestService/StreamingInputCall", streaming_input, true, false},
        {"/grpc.testing.TestService/FullDuplexCall", streaming_output, false, true},
        {"/grpc.testing.TestService/HalfDuplexCall", streaming_output, false, false},
    };
    bds_status st = bds__server_set_capture(srv, md_names, sizeof md_names / sizeof md_names[0]);
    for (size_t i = 0; st == BDS_OK && i < sizeof methods / sizeof methods[0]; i++) {
        bds_method m = {.size = sizeof m, .path = methods[i].path, .handler = methods[i].fn, .options = &fifo};
        st = methods[i].capture ? bds__server_add_method_capture(srv, &m, methods[i].end_marker)
                                : bds__server_add_method_ex(srv, &m, methods[i].end_marker);
    }
    return st;
}
