/* fuzz_h2_client.c — the HTTP/2 server session (proto/h2_server.c) against
 * nghttp2's own client, driven by a tiny op language in the fuzz input, so
 * that inputs get past the preface and HPACK and exercise calls: requests with
 * headers picked from a list plus fuzzed values, gRPC messages with fuzzed
 * bytes (and, sometimes, fuzzed prefixes), RST_STREAM, PING, SETTINGS,
 * WINDOW_UPDATE, GOAWAY, and raw HEADERS/CONTINUATION blocks encoded with
 * nghttp2_hd_deflate (names and values nghttp2's client would refuse to send).
 * Bytes travel both ways in fuzzed chunks with an advancing clock; the app
 * (fuzz_h2_app.h) acts like the server and checks the session's contract.
 *
 * Extra property: unless the input injected raw frames (which desynchronize
 * the two sides on purpose), nghttp2's client never finds a protocol error in
 * what our server sent, and every grpc-status it reads is a code 0..16.
 *
 * Input: [config byte][4-byte seed][ops...], op = one byte, kind in its low
 * nibble (see the switch). With BDS_FUZZ_DUMP=FILE set, the bytes the client
 * sent are written to FILE: how corpus/h2_raw's seeds were made. */
#include <nghttp2/nghttp2.h>

#include "fuzz_h2_app.h"

#define CLI_STREAMS 32
#define CLI_OUT_MAX (256u * 1024u)

typedef struct cli_stream {
    int32_t id;
    uint8_t *out;
    size_t len, off, cap;
    bool eof;
} cli_stream;

typedef struct cli {
    nghttp2_session *ng;
    nghttp2_hd_deflater *raw_hd;
    cli_stream st[CLI_STREAMS];
    int n;
    uint8_t *wire; /* client -> server bytes not yet delivered */
    size_t wire_len, wire_cap;
    bool raw_used;
    bool bad_seen;  /* nghttp2's client found our output invalid */
    FILE *dump;
} cli;

static void wire_put(cli *c, const uint8_t *p, size_t n) {
    if (c->wire_len + n > c->wire_cap) {
        size_t cap = c->wire_cap ? c->wire_cap * 2 : 4096;
        while (cap < c->wire_len + n) cap *= 2;
        c->wire = realloc(c->wire, cap);
        FUZZ_CHECK(c->wire != NULL, "oom");
        c->wire_cap = cap;
    }
    memcpy(c->wire + c->wire_len, p, n);
    c->wire_len += n;
    if (c->dump) fwrite(p, 1, n, c->dump);
}

static ssize_t cli_send(nghttp2_session *s, const uint8_t *p, size_t n, int flags, void *ud) {
    (void)s;
    (void)flags;
    wire_put(ud, p, n);
    return (ssize_t)n;
}

static ssize_t cli_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *src, void *ud) {
    (void)s;
    (void)id;
    (void)ud;
    cli_stream *st = src->ptr;
    size_t n = st->len - st->off;
    if (n > length) n = length;
    if (n) memcpy(buf, st->out + st->off, n);
    st->off += n;
    if (st->off == st->len && st->eof) *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (n == 0) return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

static int cli_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                         const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    (void)s;
    (void)f;
    (void)flags;
    cli *c = ud;
    if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0 && !c->raw_used) {
        bool ok = vlen >= 1 && vlen <= 2;
        int code = 0;
        for (size_t i = 0; i < vlen && ok; i++) {
            ok = value[i] >= '0' && value[i] <= '9';
            code = code * 10 + (value[i] - '0');
        }
        FUZZ_CHECK(ok && code <= 16, "grpc-status '%.*s'", (int)vlen, (const char *)value);
    }
    return 0;
}

static int cli_on_invalid(nghttp2_session *s, const nghttp2_frame *f, int err, void *ud) {
    (void)s;
    if (getenv("BDS_FUZZ_TRACE")) {
        fprintf(stderr, "client: invalid frame type %u stream %d: %s\n", f->hd.type, f->hd.stream_id,
                nghttp2_strerror(err));
    }
    ((cli *)ud)->bad_seen = true;
    return 0;
}

static int cli_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    (void)s;
    (void)ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        fprintf(stderr, "client: GOAWAY last %d error %u\n", f->goaway.last_stream_id, f->goaway.error_code);
    } else {
        fprintf(stderr, "client: frame type %u stream %d flags 0x%x\n", f->hd.type, f->hd.stream_id, f->hd.flags);
    }
    return 0;
}

static int cli_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
    (void)s;
    (void)code;
    cli *c = ud;
    for (int i = 0; i < c->n; i++) {
        if (c->st[i].id == id) c->st[i].id = -1;
    }
    return 0;
}

static void cli_init(cli *c) {
    memset(c, 0, sizeof *c);
    nghttp2_session_callbacks *cb;
    FUZZ_CHECK(nghttp2_session_callbacks_new(&cb) == 0, "callbacks");
    nghttp2_session_callbacks_set_send_callback(cb, cli_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, cli_on_header);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, cli_on_invalid);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cli_on_close);
    if (getenv("BDS_FUZZ_TRACE")) nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cli_on_frame);
    FUZZ_CHECK(nghttp2_session_client_new(&c->ng, cb, c) == 0, "client");
    nghttp2_session_callbacks_del(cb);
    FUZZ_CHECK(nghttp2_hd_deflate_new(&c->raw_hd, 4096) == 0, "deflater");
    const char *dump = getenv("BDS_FUZZ_DUMP");
    if (dump) c->dump = fopen(dump, "wb");
    FUZZ_CHECK(nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, NULL, 0) == 0, "settings");
}

static void cli_fini(cli *c) {
    nghttp2_session_del(c->ng);
    nghttp2_hd_deflate_del(c->raw_hd);
    for (int i = 0; i < c->n; i++) free(c->st[i].out);
    free(c->wire);
    if (c->dump) fclose(c->dump);
}

/* ---- requests ---------------------------------------------------------------------- */

static const char *const paths[] = {"/bidistream.v1.Pipeline/Process", "/grpc.health.v1.Health/Check",
                                    "/grpc.testing.TestService/FullDuplexCall", "/unknown.Service/M", ""};
static const char *const cts[] = {"application/grpc", "application/grpc+proto", "text/plain", "application/GRPC"};
static const char *const timeouts[] = {"1S", "100m", "99999999H", "0n", "1x", "123456789S"};
static const char *const extra_names[] = {"grpc-encoding", "x-grpc-test-echo-initial",
                                          "x-grpc-test-echo-trailing-bin", "user-agent", "grpc-accept-encoding",
                                          "x-custom-bin", "content-length"};

#define NV(n, v, nl, vl) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), (nl), (vl), NGHTTP2_NV_FLAG_NONE})
#define NVS(n, v) NV(n, v, strlen(n), strlen(v))

/* Header list for a request from the input; returns the count. */
static size_t request_headers(fuzz_in *in, nghttp2_nv *nv, uint8_t *vbuf, size_t vcap) {
    uint8_t f = fuzz_u8(in);
    size_t n = 0;
    nv[n++] = NVS(":method", (f & 0x80) ? "GET" : "POST");
    nv[n++] = NVS(":scheme", "http");
    nv[n++] = NVS(":authority", "fuzz");
    /* NVS evaluates its value twice: pick first. */
    const char *path = paths[fuzz_u8(in) % (sizeof paths / sizeof paths[0])];
    nv[n++] = NVS(":path", path);
    if (!(f & 1)) nv[n++] = NVS("content-type", cts[(f >> 1) & 3]);
    if (!(f & 8)) nv[n++] = NVS("te", (f & 0x40) ? "gzip" : "trailers");
    if (f & 0x10) {
        const char *t = timeouts[fuzz_u8(in) % (sizeof timeouts / sizeof timeouts[0])];
        nv[n++] = NVS("grpc-timeout", t);
    }
    if (f & 0x20) {
        size_t vlen;
        const uint8_t *v = fuzz_bytes(in, fuzz_u8(in), &vlen);
        if (vlen > vcap) vlen = vcap;
        memcpy(vbuf, v, vlen);
        const char *name = extra_names[fuzz_u8(in) % (sizeof extra_names / sizeof extra_names[0])];
        nv[n++] = NV(name, vbuf, strlen(name), vlen);
    }
    return n;
}

static void op_open(cli *c, fuzz_in *in, bool end) {
    if (c->n == CLI_STREAMS) return;
    nghttp2_nv nv[12];
    uint8_t vbuf[256];
    size_t n = request_headers(in, nv, vbuf, sizeof vbuf);
    cli_stream *st = &c->st[c->n];
    memset(st, 0, sizeof *st);
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = cli_read};
    int32_t id = nghttp2_submit_request(c->ng, NULL, nv, n, end ? NULL : &dp, c);
    if (id < 0) return;
    st->id = id;
    c->n++;
}

static cli_stream *pick(cli *c, fuzz_in *in) {
    if (c->n == 0) return NULL;
    cli_stream *st = &c->st[fuzz_u8(in) % c->n];
    return st->id > 0 ? st : NULL;
}

static void op_data(cli *c, fuzz_in *in, uint8_t op) {
    cli_stream *st = pick(c, in);
    size_t n;
    const uint8_t *body = fuzz_bytes(in, (size_t)fuzz_u8(in) << ((op >> 4) & 3) * 3, &n);
    if (!st || st->eof || st->len + n + 5 > CLI_OUT_MAX) return;
    if (st->len + n + 5 > st->cap) {
        size_t cap = st->cap ? st->cap : 256;
        while (cap < st->len + n + 5) cap *= 2;
        st->out = realloc(st->out, cap);
        FUZZ_CHECK(st->out != NULL, "oom");
        st->cap = cap;
    }
    uint8_t *p = st->out + st->len;
    if (op & 0x40) {
        /* A fuzzed prefix: flag and length as the input says. */
        memcpy(p, body, n < 5 ? n : 5);
        st->len += n < 5 ? n : 5;
        if (n > 5) memcpy(st->out + st->len, body + 5, n - 5), st->len += n - 5;
    } else {
        p[0] = 0;
        p[1] = (uint8_t)(n >> 24), p[2] = (uint8_t)(n >> 16), p[3] = (uint8_t)(n >> 8), p[4] = (uint8_t)n;
        memcpy(p + 5, body, n);
        st->len += n + 5;
    }
    st->eof = op & 0x80;
    nghttp2_session_resume_data(c->ng, st->id);
}

/* A raw HEADERS block (+ CONTINUATIONs) from fuzzed fields, encoded by a
 * deflater of our own, so names and values nghttp2's client refuses get sent. */
static void op_raw_headers(cli *c, fuzz_in *in) {
    nghttp2_nv nv[16];
    uint8_t vbuf[16][64];
    size_t n = 0;
    uint8_t count = fuzz_u8(in) % 16;
    for (uint8_t i = 0; i < count; i++) {
        uint8_t k = fuzz_u8(in);
        size_t vlen;
        const uint8_t *v = fuzz_bytes(in, fuzz_u8(in) % 64, &vlen);
        memcpy(vbuf[i], v, vlen);
        static const char *const names[] = {":method", ":path", ":scheme", ":authority", "content-type", "te",
                                            "grpc-timeout", "grpc-encoding", "Upper-Case", ":status", "connection",
                                            "x-grpc-test-echo-initial", "", "grpc-status", "host", "x"};
        const char *name = names[k % 16];
        nv[n] = NV(name, vbuf[i], strlen(name), vlen);
        /* Mostly unindexed, so the server's table stays in step with the client's. */
        nv[n].flags = (k & 0x30) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
        n++;
    }
    uint8_t block[4096];
    ssize_t blen = nghttp2_hd_deflate_hd(c->raw_hd, block, sizeof block, nv, n);
    if (blen < 0) return;
    uint8_t f = fuzz_u8(in);
    int32_t id = (int32_t)((f & 0x0f) * 2 + 1);
    if (f & 0x10) {
        cli_stream *st = pick(c, in);
        if (st) id = st->id;
    }
    size_t cut = (f & 0x20) ? (size_t)blen / 2 : (size_t)blen; /* a CONTINUATION for the rest */
    uint8_t hdr[9] = {(uint8_t)(cut >> 16), (uint8_t)(cut >> 8), (uint8_t)cut, 0x01,
                      (uint8_t)(((f & 0x40) ? 0x01 : 0) | (cut == (size_t)blen ? 0x04 : 0)),
                      (uint8_t)(id >> 24), (uint8_t)(id >> 16), (uint8_t)(id >> 8), (uint8_t)id};
    nghttp2_session_send(c->ng); /* whole frames only: flush the client first */
    wire_put(c, hdr, 9);
    wire_put(c, block, cut);
    if (cut < (size_t)blen) {
        size_t rest = (size_t)blen - cut;
        uint8_t ch[9] = {(uint8_t)(rest >> 16), (uint8_t)(rest >> 8), (uint8_t)rest, 0x09, 0x04,
                         (uint8_t)(id >> 24), (uint8_t)(id >> 16), (uint8_t)(id >> 8), (uint8_t)id};
        wire_put(c, ch, 9);
        wire_put(c, block + cut, rest);
    }
    c->raw_used = true;
}

/* Raw frame of any type with a fuzzed header and payload (padding, PRIORITY,
 * unknown types...). */
static void op_raw_frame(cli *c, fuzz_in *in) {
    uint8_t h[9];
    for (int i = 3; i < 9; i++) h[i] = fuzz_u8(in);
    size_t n;
    const uint8_t *p = fuzz_bytes(in, fuzz_u8(in), &n);
    h[0] = 0, h[1] = 0, h[2] = (uint8_t)n;
    h[3] %= 11;
    nghttp2_session_send(c->ng);
    wire_put(c, h, 9);
    wire_put(c, p, n);
    c->raw_used = true;
}

/* ---- both ways ---------------------------------------------------------------------- */

static void to_client(void *ctx, const uint8_t *p, size_t n) {
    cli *c = ctx;
    if (getenv("BDS_FUZZ_TRACE")) {
        FILE *f = fopen("/tmp/bds_fuzz_server_out", "ab");
        if (f) fwrite(p, 1, n, f), fclose(f);
    }
    ssize_t rv = nghttp2_session_mem_recv(c->ng, p, n);
    if (rv < 0 && getenv("BDS_FUZZ_TRACE")) fprintf(stderr, "client: mem_recv: %s\n", nghttp2_strerror((int)rv));
    if (rv < 0) c->bad_seen = true;
}

/* Client bytes to the server in fuzzed chunks, the server's output back
 * (take: 0 = the socket is full, 201.. = all of it, else take * 131 bytes). */
static void pump(cli *c, app *a, uint8_t take, uint64_t *now, uint64_t *rng) {
    nghttp2_session_send(c->ng);
    size_t off = 0;
    while (off < c->wire_len && !a->failed) {
        size_t chunk = fuzz_chunk(rng, c->wire_len - off);
        bds_status st = bds__h2_recv(a->h2, c->wire + off, chunk, *now);
        FUZZ_CHECK(st == BDS_OK || st == BDS_UNAVAILABLE, "recv: %d", (int)st);
        a->failed = st != BDS_OK;
        off += chunk;
        *now += (uint64_t)(fuzz_rand(rng) & 0xff) << 20;
    }
    c->wire_len = 0;
    app_output(a, take == 0 ? 0 : take > 200 ? SIZE_MAX : (size_t)take * 131u, to_client, c);
    FUZZ_CHECK(!c->bad_seen || c->raw_used, "nghttp2's client found our output invalid");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    uint64_t seed = fuzz_u32(&in), rng = seed ^ 0x5eedULL;
    static app a;
    app_init(&a, seed);
    bds__h2_config cfg;
    app_config(&cfg, sel);
    a.msg_max = cfg.msg_bytes_max;
    FUZZ_CHECK(bds__h2_create(&a.h2, &cfg, &app_callbacks, &a) == BDS_OK, "create");
    static cli c;
    cli_init(&c);
    uint64_t now = 1000000000ULL;
    while (in.len > 0) {
        uint8_t op = fuzz_u8(&in);
        switch (op & 0x0f) {
        case 0: case 1: op_open(&c, &in, op & 1); break;
        case 2: case 3: case 4: op_data(&c, &in, op); break;
        case 5: {
            cli_stream *st = pick(&c, &in);
            if (st) nghttp2_submit_rst_stream(c.ng, NGHTTP2_FLAG_NONE, st->id, fuzz_u8(&in) % 14);
            break;
        }
        case 6: nghttp2_submit_ping(c.ng, NGHTTP2_FLAG_NONE, NULL); break;
        case 7: {
            nghttp2_settings_entry iv[2] = {{(int32_t)(fuzz_u8(&in) % 9), fuzz_u32(&in)},
                                            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, fuzz_u32(&in) & 0x7fffffff}};
            nghttp2_submit_settings(c.ng, NGHTTP2_FLAG_NONE, iv, 1 + (op >> 7));
            break;
        }
        case 8: {
            cli_stream *st = pick(&c, &in);
            nghttp2_submit_window_update(c.ng, NGHTTP2_FLAG_NONE, st && (op & 0x10) ? st->id : 0,
                                         (int32_t)(fuzz_u32(&in) & 0xffff) + 1);
            break;
        }
        case 9: nghttp2_submit_goaway(c.ng, NGHTTP2_FLAG_NONE, 0, fuzz_u8(&in) % 14, NULL, 0); break;
        case 10: op_raw_headers(&c, &in); break;
        case 11: op_raw_frame(&c, &in); break;
        case 12: app_tick(&a, fuzz_u8(&in)); break;
        default: pump(&c, &a, fuzz_u8(&in), &now, &rng); break;
        }
    }
    for (int i = 0; i < 8; i++) pump(&c, &a, 255, &now, &rng);
    app_close(&a);
    cli_fini(&c);
    return 0;
}
