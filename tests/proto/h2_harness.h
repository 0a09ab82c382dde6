/* h2_harness.h — test-only: a bds__h2_session server and an in-memory nghttp2
 * CLIENT session, pumping bytes both ways, plus raw-frame helpers for abuse
 * tests. Everything is static (one copy per test file); no timing anywhere:
 * the "clock" is a number the test sets. */
#ifndef BDS_TEST_H2_HARNESS_H
#define BDS_TEST_H2_HARNESS_H

#include <criterion/criterion.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_frame.h"
#include "h2_server.h"

/* ---- growable byte buffer ------------------------------------------------------- */

struct tbuf {
    uint8_t *p;
    size_t len, cap;
};

static __attribute__((unused)) void tbuf_put(struct tbuf *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len) cap *= 2;
        b->p = realloc(b->p, cap);
        cr_assert_not_null(b->p);
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
}

static __attribute__((unused)) void tbuf_free(struct tbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- the server-side application ------------------------------------------------ */

struct app_call {
    int32_t id;
    uint32_t method;
    uint64_t timeout_ns, deadline_ns;
    int msgs;
    size_t bytes;
    struct tbuf data;        /* every message body, concatenated */
    int compressed;          /* messages that came compressed */
    size_t wire;             /* their wire_bytes, summed */
    bool half_closed;
    bool reset;
    bds_status reset_status;
    bool errored;
    bds_status error_status;
    struct tbuf captured;    /* bds__h2_call_info.captured, copied */
};

#define APP_CALLS_MAX 4096

struct app {
    bds__h2_session *h2;
    struct app_call calls[APP_CALLS_MAX];
    int ncalls;
    int refused_errors;            /* on_call_error with NULL call_ctx */
    bds_status last_refused_status;
    int last_refused_http;
    bds_status refuse_with;        /* on_call_start returns this when != OK */
    bool auto_consume;             /* consume each message's wire bytes at once */
    bool echo;                     /* send every message back */
    bool finish_on_half_close;     /* finish(OK) at half-close */
    bool consume_partial;          /* consume everything outstanding on every message */
    int resets;
    int msgs_released;             /* on_msg_release calls (bds__h2_send_ref) */
    bds__h2_msg *last_released;
};

static __attribute__((unused)) bds_status app_on_call_start(void *ctx, const bds__h2_call_info *info, void **call_ctx) {
    struct app *a = ctx;
    if (a->refuse_with != BDS_OK) return a->refuse_with;
    cr_assert_lt(a->ncalls, APP_CALLS_MAX);
    struct app_call *c = &a->calls[a->ncalls++];
    memset(c, 0, sizeof *c);
    c->id = info->stream_id;
    c->method = info->method_index;
    c->timeout_ns = info->timeout_ns;
    c->deadline_ns = info->deadline_ns;
    if (info->captured_len > 0) tbuf_put(&c->captured, info->captured, info->captured_len);
    *call_ctx = c;
    return BDS_OK;
}

static __attribute__((unused)) void app_on_message(void *ctx, void *call_ctx, int32_t id, const uint8_t *msg, size_t len,
                           uint32_t wire_bytes, bool compressed) {
    struct app *a = ctx;
    struct app_call *c = call_ctx;
    cr_assert_not_null(c);
    cr_assert_eq(c->id, id);
    if (!compressed) cr_assert_eq(wire_bytes, len + 5);
    c->msgs++;
    c->compressed += compressed;
    c->wire += wire_bytes;
    c->bytes += len;
    tbuf_put(&c->data, msg, len);
    if (a->auto_consume) bds__h2_consume(a->h2, id, wire_bytes);
    if (a->echo) cr_assert_eq(bds__h2_send_msg(a->h2, id, msg, len), BDS_OK);
}

static __attribute__((unused)) void app_on_half_close(void *ctx, void *call_ctx, int32_t id) {
    struct app *a = ctx;
    struct app_call *c = call_ctx;
    cr_assert_eq(c->id, id);
    c->half_closed = true;
    if (a->finish_on_half_close) cr_assert_eq(bds__h2_finish(a->h2, id, BDS_OK, NULL), BDS_OK);
}

static __attribute__((unused)) void app_on_reset(void *ctx, void *call_ctx, int32_t id, bds_status st, uint32_t code) {
    (void)code;
    struct app *a = ctx;
    struct app_call *c = call_ctx;
    cr_assert_eq(c->id, id);
    cr_assert_not(c->reset, "reset delivered twice");
    c->reset = true;
    c->reset_status = st;
    a->resets++;
}

static __attribute__((unused)) void app_on_call_error(void *ctx, void *call_ctx, int32_t id, bds_status st, int http) {
    struct app *a = ctx;
    if (call_ctx == NULL) {
        a->refused_errors++;
        a->last_refused_status = st;
        a->last_refused_http = http;
        return;
    }
    struct app_call *c = call_ctx;
    cr_assert_eq(c->id, id);
    cr_assert_not(c->errored, "error delivered twice");
    c->errored = true;
    c->error_status = st;
}

/* Counts releases; a released node is poisoned so a second release or a late
 * read of its fields by the session shows. */
static __attribute__((unused)) void app_on_msg_release(void *ctx, bds__h2_msg *m) {
    struct app *a = ctx;
    cr_assert_neq(m->_len, 0xdeadbeefu, "message released twice");
    a->msgs_released++;
    a->last_released = m;
    memset(m, 0, sizeof *m);
    m->_len = 0xdeadbeefu;
}

static __attribute__((unused)) const bds__h2_callbacks app_callbacks = {
    .on_call_start = app_on_call_start,
    .on_message = app_on_message,
    .on_half_close = app_on_half_close,
    .on_reset = app_on_reset,
    .on_call_error = app_on_call_error,
    .on_msg_release = app_on_msg_release,
};

static __attribute__((unused)) struct app_call *app_call_by_id(struct app *a, int32_t id) {
    for (int i = 0; i < a->ncalls; i++)
        if (a->calls[i].id == id) return &a->calls[i];
    return NULL;
}

/* ---- the client ------------------------------------------------------------------ */

struct cstream {
    int32_t id;
    struct tbuf out;     /* request body to send */
    size_t out_off;
    bool eof;            /* end the stream once out is sent */
    int http_status;
    int grpc_status;     /* -1 until seen */
    char grpc_message[512];
    bool status_in_response_headers; /* trailers-only */
    int header_blocks;
    struct tbuf in;      /* response body (framed messages) */
    int data_frames;     /* DATA frames with payload received */
    bool closed;
    uint32_t close_code;
    bool rst_recv;
    uint32_t rst_code;
    struct tbuf md;      /* other header fields, "R name: value\n" from the response
                            HEADERS, "T ..." from trailers (NUL-terminated) */
};

#define CLI_STREAMS_MAX 4096

static __attribute__((unused)) const char *const h_paths[] = {"/bidistream.v1.Pipeline/Process",
                                      "/grpc.health.v1.Health/Check"};
static __attribute__((unused)) const bds__grpc_methods h_methods = {h_paths, 2};

struct h {
    struct app app;
    bds__h2_config cfg;
    nghttp2_session *cli;
    struct cstream *cs[CLI_STREAMS_MAX];
    int ncs;
    uint64_t now_ns;
    bds_status last_recv;   /* last bds__h2_recv result */
    struct tbuf raw_out;    /* everything the server wrote (raw tests) */
    bool goaway_seen;
    uint32_t goaway_code;
    int32_t goaway_last_id;
    int goaways;
};

static __attribute__((unused)) struct cstream *cli_stream(struct h *h, int32_t id) {
    for (int i = 0; i < h->ncs; i++)
        if (h->cs[i]->id == id) return h->cs[i];
    return NULL;
}

static __attribute__((unused)) ssize_t cli_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *ud) {
    (void)s;
    (void)id;
    (void)ud;
    struct cstream *c = src->ptr;
    size_t n = c->out.len - c->out_off;
    if (n > length) n = length;
    if (n > 0) memcpy(buf, c->out.p + c->out_off, n);
    c->out_off += n;
    if (c->out_off == c->out.len && c->eof) *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (n == 0) return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

static __attribute__((unused)) int cli_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    (void)s;
    (void)flags;
    struct cstream *c = cli_stream(ud, f->hd.stream_id);
    if (c == NULL) return 0;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) c->http_status = atoi((const char *)value);
    if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        char tmp[16] = {0};
        memcpy(tmp, value, vlen < 15 ? vlen : 15);
        c->grpc_status = atoi(tmp);
        c->status_in_response_headers = f->headers.cat == NGHTTP2_HCAT_RESPONSE;
    }
    if (nlen > 0 && name[0] != ':' && !(nlen == 11 && memcmp(name, "grpc-status", 11) == 0) &&
        !(nlen == 12 && memcmp(name, "grpc-message", 12) == 0) &&
        !(nlen == 12 && memcmp(name, "content-type", 12) == 0)) {
        if (c->md.len > 0) c->md.len--; /* the NUL */
        tbuf_put(&c->md, f->headers.cat == NGHTTP2_HCAT_HEADERS ? "T " : "R ", 2);
        tbuf_put(&c->md, name, nlen);
        tbuf_put(&c->md, ": ", 2);
        tbuf_put(&c->md, value, vlen);
        tbuf_put(&c->md, "\n", 2); /* with the NUL */
    }
    if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        size_t n = vlen < sizeof c->grpc_message - 1 ? vlen : sizeof c->grpc_message - 1;
        memcpy(c->grpc_message, value, n);
        c->grpc_message[n] = '\0';
    }
    return 0;
}

static __attribute__((unused)) int cli_on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    (void)s;
    struct h *h = ud;
    struct cstream *c = cli_stream(h, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (c) c->header_blocks++;
        break;
    case NGHTTP2_DATA:
        if (c && f->hd.length > 0) c->data_frames++;
        break;
    case NGHTTP2_RST_STREAM:
        if (c) {
            c->rst_recv = true;
            c->rst_code = f->rst_stream.error_code;
        }
        break;
    case NGHTTP2_GOAWAY:
        h->goaway_seen = true;
        h->goaways++;
        h->goaway_code = f->goaway.error_code;
        h->goaway_last_id = f->goaway.last_stream_id;
        break;
    default:
        break;
    }
    return 0;
}

static __attribute__((unused)) int cli_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                       size_t len, void *ud) {
    (void)s;
    (void)flags;
    struct cstream *c = cli_stream(ud, id);
    if (c) tbuf_put(&c->in, data, len);
    return 0;
}

static __attribute__((unused)) int cli_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
    (void)s;
    struct cstream *c = cli_stream(ud, id);
    if (c) {
        c->closed = true;
        c->close_code = code;
    }
    return 0;
}

/* Builds the server with |cfg| (NULL = defaults + test methods) and a client. */
static __attribute__((unused)) void h_init(struct h *h, const bds__h2_config *cfg) {
    memset(h, 0, sizeof *h);
    if (cfg) {
        h->cfg = *cfg;
    } else {
        bds__h2_config_default(&h->cfg);
    }
    if (h->cfg.methods == NULL) h->cfg.methods = &h_methods;
    h->app.auto_consume = true;
    cr_assert_eq(bds__h2_create(&h->app.h2, &h->cfg, &app_callbacks, &h->app), BDS_OK);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, cli_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cli_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cli_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cli_on_close);
    cr_assert_eq(nghttp2_session_client_new(&h->cli, cb, h), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(h->cli, NGHTTP2_FLAG_NONE, iv, 1);
}

static __attribute__((unused)) void h_fini(struct h *h) {
    bds__h2_destroy(h->app.h2);
    if (h->cli) nghttp2_session_del(h->cli);
    for (int i = 0; i < h->ncs; i++) {
        tbuf_free(&h->cs[i]->out);
        tbuf_free(&h->cs[i]->in);
        tbuf_free(&h->cs[i]->md);
        free(h->cs[i]);
    }
    for (int i = 0; i < h->app.ncalls; i++) {
        tbuf_free(&h->app.calls[i].data);
        tbuf_free(&h->app.calls[i].captured);
    }
    tbuf_free(&h->raw_out);
}

/* Moves bytes both ways until neither side has anything to say. */
static __attribute__((unused)) void h_pump(struct h *h) {
    for (int round = 0; round < 100000; round++) {
        bool progress = false;
        for (;;) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(h->cli, &d);
            cr_assert_geq(n, 0);
            if (n == 0) break;
            progress = true;
            h->last_recv = bds__h2_recv(h->app.h2, d, (size_t)n, h->now_ns);
            if (h->last_recv != BDS_OK) break;
        }
        const uint8_t *o;
        size_t olen;
        bds__h2_output(h->app.h2, &o, &olen);
        if (olen > 0) {
            progress = true;
            tbuf_put(&h->raw_out, o, olen);
            ssize_t rv = nghttp2_session_mem_recv(h->cli, o, olen);
            cr_assert_eq(rv, (ssize_t)olen, "client rejected server bytes: %zd", rv);
            bds__h2_output_advance(h->app.h2, olen);
        }
        if (!progress) return;
    }
    cr_assert_fail("pump did not settle");
}

/* Opens a call to |path| with the standard gRPC headers plus |extra|. */
static __attribute__((unused)) struct cstream *h_call(struct h *h, const char *path, const nghttp2_nv *extra,
                              size_t nextra) {
    struct cstream *c = calloc(1, sizeof *c);
    c->grpc_status = -1;
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[32] = {
        NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
        NV(":authority", "localhost"), NV("content-type", "application/grpc"),
        NV("te", "trailers"),
    };
    size_t n = 6;
    for (size_t i = 0; i < nextra; i++) {
        /* An extra header with a known name replaces the standard one. */
        size_t j;
        for (j = 0; j < n; j++)
            if (nv[j].namelen == extra[i].namelen &&
                memcmp(nv[j].name, extra[i].name, extra[i].namelen) == 0)
                break;
        nv[j] = extra[i];
        if (j == n) n++;
    }
    nghttp2_data_provider prd = {.source = {.ptr = c}, .read_callback = cli_read};
    c->id = nghttp2_submit_request(h->cli, NULL, nv, n, &prd, c);
    cr_assert_gt(c->id, 0);
    cr_assert_lt(h->ncs, CLI_STREAMS_MAX);
    h->cs[h->ncs++] = c;
    return c;
}

static __attribute__((unused)) void h_resume(struct h *h, struct cstream *c) {
    nghttp2_session_resume_data(h->cli, c->id);
}

static __attribute__((unused)) void h_send_raw(struct h *h, struct cstream *c, const void *p, size_t len) {
    tbuf_put(&c->out, p, len);
    h_resume(h, c);
}

static __attribute__((unused)) void h_send_msg(struct h *h, struct cstream *c, const void *p, uint32_t len) {
    uint8_t pre[5];
    bds__grpc_frame_prefix(pre, false, len);
    tbuf_put(&c->out, pre, 5);
    tbuf_put(&c->out, p, len);
    h_resume(h, c);
}

static __attribute__((unused)) void h_end(struct h *h, struct cstream *c) {
    c->eof = true;
    h_resume(h, c);
}

/* Counts the framed messages in a response body (asserting it is well-formed). */
static __attribute__((unused)) int h_count_msgs(const struct cstream *c) {
    int n = 0;
    size_t off = 0;
    while (off < c->in.len) {
        cr_assert_geq(c->in.len - off, 5);
        uint32_t len = (uint32_t)c->in.p[off + 1] << 24 | (uint32_t)c->in.p[off + 2] << 16 |
                       (uint32_t)c->in.p[off + 3] << 8 | c->in.p[off + 4];
        off += 5 + len;
        cr_assert_leq(off, c->in.len);
        n++;
    }
    return n;
}

/* ---- raw frames (abuse tests) ----------------------------------------------------- */

static __attribute__((unused)) void raw_frame(struct tbuf *b, uint8_t type, uint8_t flags, int32_t sid, const void *payload,
                      size_t len) {
    uint8_t hd[9] = {(uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len, type, flags,
                     (uint8_t)(sid >> 24 & 0x7f), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8),
                     (uint8_t)sid};
    tbuf_put(b, hd, 9);
    if (len) tbuf_put(b, payload, len);
}

static __attribute__((unused)) void raw_preface(struct tbuf *b) {
    tbuf_put(b, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    raw_frame(b, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
}

/* HPACK-encodes a standard gRPC request header block for |path|. */
static __attribute__((unused)) size_t raw_request_block(nghttp2_hd_deflater *d, const char *path, uint8_t *out, size_t cap) {
    nghttp2_nv nv[] = {
        NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
        NV(":authority", "localhost"), NV("content-type", "application/grpc"),
        NV("te", "trailers"),
    };
    ssize_t n = nghttp2_hd_deflate_hd(d, out, cap, nv, sizeof nv / sizeof nv[0]);
    cr_assert_gt(n, 0);
    return (size_t)n;
}

/* Feeds raw client bytes to the server in |chunk|-sized pieces and collects its
 * output (without a client to read it). */
static __attribute__((unused)) void h_feed_raw(struct h *h, const struct tbuf *in, size_t chunk) {
    for (size_t off = 0; off < in->len; off += chunk) {
        size_t n = in->len - off < chunk ? in->len - off : chunk;
        h->last_recv = bds__h2_recv(h->app.h2, in->p + off, n, h->now_ns);
        const uint8_t *o;
        size_t olen;
        bds__h2_output(h->app.h2, &o, &olen);
        tbuf_put(&h->raw_out, o, olen);
        bds__h2_output_advance(h->app.h2, olen);
        if (h->last_recv != BDS_OK) return;
    }
    for (int i = 0; i < 1000; i++) {
        const uint8_t *o;
        size_t olen;
        bds__h2_output(h->app.h2, &o, &olen);
        if (olen == 0) break;
        tbuf_put(&h->raw_out, o, olen);
        bds__h2_output_advance(h->app.h2, olen);
    }
}

/* Scans the server's raw output for a GOAWAY; returns its error code or -1. */
static __attribute__((unused)) int64_t raw_find_goaway(const struct tbuf *out) {
    int64_t code = -1;
    size_t off = 0;
    while (out->len - off >= 9) {
        size_t len = (size_t)out->p[off] << 16 | (size_t)out->p[off + 1] << 8 | out->p[off + 2];
        uint8_t type = out->p[off + 3];
        if (out->len - off < 9 + len) break;
        if (type == NGHTTP2_GOAWAY && len >= 8) {
            const uint8_t *p = out->p + off + 9 + 4;
            code = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
        }
        off += 9 + len;
    }
    return code;
}

/* Counts frames of |type| in the server's raw output. */
static __attribute__((unused)) int raw_count(const struct tbuf *out, uint8_t type) {
    int n = 0;
    size_t off = 0;
    while (out->len - off >= 9) {
        size_t len = (size_t)out->p[off] << 16 | (size_t)out->p[off + 1] << 8 | out->p[off + 2];
        if (out->len - off < 9 + len) break;
        if (out->p[off + 3] == type) n++;
        off += 9 + len;
    }
    return n;
}

#endif
