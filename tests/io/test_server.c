/* test_server.c — the gRPC server (io/server.c) in process, against a small
 * nghttp2 client over loopback: the built-in Pipeline/Process echo on many
 * streams, with one and two shards (replies made on the key's shard travel
 * home), a stream reset mid-flight and a connection dropped with replies in
 * flight. Every message buffer comes from a shard pool and goes back to it:
 * the pools assert at shutdown that none is left (BDS_ASSERT aborts the test
 * process), so a clean bds_server_run() return is the leak check. Two shards
 * hand messages between threads: also run under TSan. BDS_TEST_TSAN */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <criterion/criterion.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bidistream/server.h"
#include "server_int.h"

#define PATH "/bidistream.v1.Pipeline/Process"
#define MSGS 300
#define PAYLOAD 64

/* ---- the server on its own thread ------------------------------------------------ */

struct srv {
    bds_server *s;
    pthread_t t;
    bds_status rc;
};

static void *srv_main(void *arg) {
    struct srv *v = arg;
    v->rc = bds_server_run(v->s);
    return NULL;
}

/* /test.Hold/Hold: raw bytes, one key per stream. The first message to run
 * is kept (hold_take hands it to the test, which finishes it); every other
 * one is echoed at once. */
#define HOLD_PATH "/test.Hold/Hold"
static _Atomic(bds_call *) held;
static _Atomic bool holding;

static void hold_handler(bds_call *call, void *ctx) {
    (void)ctx;
    bool no = false;
    if (atomic_compare_exchange_strong(&holding, &no, true)) {
        atomic_store(&held, call);
        return;
    }
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    cr_assert_eq(bds_call_reply_bytes(call, req, len), BDS_OK);
    bds_call_done(call, BDS_OK, NULL);
}

/* The held call, once it runs (bounded: about 5 s). */
static bds_call *hold_take(void) {
    for (int i = 0; i < 500; i++) {
        bds_call *c = atomic_exchange(&held, NULL);
        if (c) return c;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("the held message never ran");
    return NULL;
}

/* /test.Hold/All: raw bytes keyed by their first 8 bytes; every message's
 * handler keeps it (and its payload) until the test finishes them all. */
#define HOLD_ALL_PATH "/test.Hold/All"
#define HOLD_ALL_MAX 256
static _Atomic(bds_call *) all_held[HOLD_ALL_MAX];
static _Atomic uint32_t all_n;

static bool hold_all_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, void *ctx) {
    (void)ctx;
    *key = req;
    *key_len = len < 8 ? len : 8;
    return true;
}

static void hold_all_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t i = atomic_fetch_add(&all_n, 1);
    cr_assert_lt(i, HOLD_ALL_MAX);
    atomic_store(&all_held[i], call);
}

/* Finishes every call /test.Hold/All holds; returns how many. */
static uint32_t hold_all_release(void) {
    uint32_t n = atomic_load(&all_n);
    for (uint32_t i = 0; i < n; i++) bds_call_done(atomic_exchange(&all_held[i], NULL), BDS_OK, NULL);
    return n;
}

static void srv_start_cfg(struct srv *v, const bds_server_config *cfg) {
    const char *why = NULL;
    cr_assert_eq(bds_server_create(&v->s, cfg, &why), BDS_OK, "%s", why ? why : "");
    atomic_store(&held, NULL);
    atomic_store(&holding, false);
    atomic_store(&all_n, 0);
    bds_method hm = {.size = sizeof hm, .path = HOLD_PATH, .handler = hold_handler};
    cr_assert_eq(bds_server_add_method(v->s, &hm), BDS_OK);
    bds_method am = {.size = sizeof am, .path = HOLD_ALL_PATH, .handler = hold_all_handler, .key = hold_all_key};
    cr_assert_eq(bds_server_add_method(v->s, &am), BDS_OK);
    cr_assert_eq(pthread_create(&v->t, NULL, srv_main, v), 0);
}

static void srv_config(bds_server_config *cfg, uint32_t shards) {
    bds_server_config_default(cfg);
    cfg->listen = "127.0.0.1:0";
    cfg->shards = shards;
    cfg->log_level = 0;
}

static void srv_start(struct srv *v, uint32_t shards) {
    bds_server_config cfg;
    srv_config(&cfg, shards);
    srv_start_cfg(v, &cfg);
}

static void srv_stop(struct srv *v) {
    bds_server_stop(v->s);
    cr_assert_eq(pthread_join(v->t, NULL), 0);
    cr_assert_eq(v->rc, BDS_OK, "the server shut down cleanly (pools empty)");
    bds_server_destroy(v->s);
}

/* Connects once the server listens (bounded: about 5 s). */
static int srv_connect(struct srv *v) {
    for (int i = 0; i < 500; i++) {
        uint16_t port = bds_server_port(v->s);
        if (port != 0) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int one = 1; /* no 40 ms Nagle/delayed-ACK stalls between our frames */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
            close(fd);
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("server did not listen");
    return -1;
}

/* ---- the client -------------------------------------------------------------------- */

struct cs {
    int32_t id;
    uint8_t *out;
    size_t out_len, out_off;
    size_t cut_every, cut_at; /* DATA frames end at k * cut_every and k * cut_every + cut_at */
    bool eof;         /* half-close once out is sent */
    size_t in_bytes;  /* response DATA bytes */
    int grpc_status;  /* -1 until the trailers */
    bool closed;
    uint32_t rst;     /* the server's RST_STREAM code, if it reset the stream */
};

struct cli {
    int fd;
    nghttp2_session *ng;
    struct cs s[16];
    int n;
};

static ssize_t cli_send(nghttp2_session *ng, const uint8_t *d, size_t len, int flags, void *ud) {
    (void)ng;
    (void)flags;
    struct cli *c = ud;
    ssize_t n = send(c->fd, d, len, MSG_NOSIGNAL);
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static struct cs *cli_stream(struct cli *c, int32_t id) {
    for (int i = 0; i < c->n; i++)
        if (c->s[i].id == id) return &c->s[i];
    return NULL;
}

static int cli_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *d, size_t len,
                       void *ud) {
    (void)ng;
    (void)flags;
    (void)d;
    struct cs *s = cli_stream(ud, id);
    if (s) s->in_bytes += len;
    return 0;
}

static int cli_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                         const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    (void)ng;
    (void)flags;
    (void)vlen;
    struct cs *s = cli_stream(ud, f->hd.stream_id);
    if (s && nlen == 11 && memcmp(name, "grpc-status", 11) == 0) s->grpc_status = atoi((const char *)value);
    return 0;
}

static int cli_on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
    (void)ng;
    struct cs *s = cli_stream(ud, id);
    if (s) {
        s->closed = true;
        s->rst = code;
    }
    return 0;
}

static ssize_t cli_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *src, void *ud) {
    (void)ng;
    (void)id;
    (void)ud;
    struct cs *s = src->ptr;
    size_t n = s->out_len - s->out_off;
    if (n > length) n = length;
    if (s->cut_every) {
        size_t in = s->out_off % s->cut_every;
        size_t to_cut = in < s->cut_at ? s->cut_at - in : s->cut_every - in;
        if (n > to_cut) n = to_cut;
    }
    memcpy(buf, s->out + s->out_off, n);
    s->out_off += n;
    if (s->out_off == s->out_len) {
        if (s->eof) *flags |= NGHTTP2_DATA_FLAG_EOF;
        else if (n == 0) return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static void cli_init(struct cli *c, int fd) {
    memset(c, 0, sizeof *c);
    c->fd = fd;
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, cli_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cli_on_data);
    nghttp2_session_callbacks_set_on_header_callback(cb, cli_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cli_on_close);
    cr_assert_eq(nghttp2_session_client_new(&c->ng, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, NULL, 0);
}

static void cli_fini(struct cli *c) {
    nghttp2_session_del(c->ng);
    for (int i = 0; i < c->n; i++) free(c->s[i].out);
    if (c->fd >= 0) close(c->fd);
}

/* bidistream.v1.Frame{key, seq, payload}, gRPC-framed. */
static size_t frame_put(uint8_t *out, const char *key, uint32_t seq) {
    uint8_t *p = out + 5;
    size_t klen = strlen(key);
    *p++ = 0x0a;
    *p++ = (uint8_t)klen;
    memcpy(p, key, klen);
    p += klen;
    *p++ = 0x10;
    do {
        *p++ = (uint8_t)((seq & 0x7f) | (seq > 0x7f ? 0x80 : 0));
        seq >>= 7;
    } while (seq);
    *p++ = 0x1a;
    *p++ = PAYLOAD;
    memset(p, 'x', PAYLOAD);
    p += PAYLOAD;
    uint32_t len = (uint32_t)(p - out - 5);
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
    return (size_t)(p - out);
}

/* Opens a stream on |path| that sends out[0, len) (taken over); eof:
 * half-close after. */
static struct cs *cli_call_bytes(struct cli *c, const char *path, uint8_t *out, size_t len, bool eof) {
    cr_assert_lt(c->n, 16);
    struct cs *s = &c->s[c->n++];
    memset(s, 0, sizeof *s);
    s->grpc_status = -1;
    s->eof = eof;
    s->out = out;
    s->out_len = len;
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {NV(":method", "POST"), NV(":scheme", "http"),
                       {(uint8_t *)":path", (uint8_t *)(uintptr_t)path, 5, strlen(path), NGHTTP2_NV_FLAG_NONE},
                       NV(":authority", "localhost"), NV("content-type", "application/grpc"),
                       NV("te", "trailers")};
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = cli_read};
    s->id = nghttp2_submit_request(c->ng, NULL, nv, sizeof nv / sizeof nv[0], &prd, NULL);
    cr_assert_gt(s->id, 0);
    return s;
}

/* Opens a Process stream carrying MSGS frames of one key; eof: half-close after. */
static struct cs *cli_call(struct cli *c, const char *key, bool eof) {
    uint8_t *out = malloc(MSGS * (5 + 16 + 8 + PAYLOAD));
    size_t len = 0;
    for (uint32_t i = 0; i < MSGS; i++) len += frame_put(out + len, key, i);
    return cli_call_bytes(c, PATH, out, len, eof);
}

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Sends and receives until done(c) or 30 s pass. */
static void cli_pump(struct cli *c, bool (*done)(struct cli *c)) {
    uint8_t buf[16384];
    uint64_t end = mono_ms() + 30000;
    while (!done(c) && mono_ms() < end) {
        cr_assert_eq(nghttp2_session_send(c->ng), 0);
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 10) <= 0) continue;
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        cr_assert_gt(n, 0, "the server closed the connection");
        cr_assert_eq(nghttp2_session_mem_recv(c->ng, buf, (size_t)n), n);
    }
    for (int i = 0; i < c->n && !done(c); i++)
        fprintf(stderr, "stream %d: sent %zu of %zu, received %zu, status %d, closed %d\n", c->s[i].id,
                c->s[i].out_off, c->s[i].out_len, c->s[i].in_bytes, c->s[i].grpc_status, c->s[i].closed);
    cr_assert(done(c), "the exchange did not finish in time");
}

/* Sends and receives until nothing moved, either way, for about half a
 * second (the server holds the client at its windows), or until the client
 * has sent everything (bounded: about 20 s). */
static void cli_pump_until_stalled(struct cli *c) {
    uint8_t buf[16384];
    int quiet = 0;
    for (int i = 0; i < 2000 && quiet < 50; i++) {
        bool sent_all = true;
        size_t before = 0;
        for (int k = 0; k < c->n; k++) {
            before += c->s[k].out_off;
            if (c->s[k].out_off < c->s[k].out_len) sent_all = false;
        }
        if (sent_all) return;
        cr_assert_eq(nghttp2_session_send(c->ng), 0);
        size_t after = 0;
        for (int k = 0; k < c->n; k++) after += c->s[k].out_off;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        bool got = false;
        if (poll(&p, 1, 10) > 0) {
            ssize_t n = recv(c->fd, buf, sizeof buf, 0);
            cr_assert_gt(n, 0, "the server closed the connection");
            cr_assert_eq(nghttp2_session_mem_recv(c->ng, buf, (size_t)n), n);
            got = true;
        }
        quiet = after == before && !got ? quiet + 1 : 0;
    }
}

static size_t reply_bytes(const struct cs *s) { return s->out_len; } /* an echo: the same frames */

static bool all_closed(struct cli *c) {
    for (int i = 0; i < c->n; i++)
        if (!c->s[i].closed) return false;
    return true;
}

static bool all_replied(struct cli *c) {
    for (int i = 0; i < c->n; i++)
        if (c->s[i].in_bytes < reply_bytes(&c->s[i])) return false;
    return true;
}

/* ---- tests ------------------------------------------------------------------------- */

/* Eight streams, eight keys: every frame echoed, OK at half-close. */
static void echo_scenario(uint32_t shards) {
    struct srv v;
    srv_start(&v, shards);
    struct cli c;
    cli_init(&c, srv_connect(&v));
    char key[8];
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof key, "k%d", i);
        cli_call(&c, key, true);
    }
    cli_pump(&c, all_closed);
    for (int i = 0; i < c.n; i++) {
        cr_assert_eq(c.s[i].grpc_status, 0, "stream %d status", i);
        cr_assert_eq(c.s[i].in_bytes, reply_bytes(&c.s[i]), "stream %d got every reply", i);
    }
    cli_fini(&c);
    srv_stop(&v);
}

Test(server, echo_on_one_shard_returns_every_buffer) { echo_scenario(1); }

Test(server, echo_on_two_shards_returns_every_buffer) { echo_scenario(2); }

static bool first_half(struct cli *c) { return c->s[0].in_bytes >= reply_bytes(&c->s[0]) / 2; }

/* A stream reset with replies in flight, then the whole connection dropped
 * with more in flight: nothing is sent for them, nothing leaks. */
Test(server, reset_stream_and_dropped_connection_return_every_buffer) {
    struct srv v;
    srv_start(&v, 2);
    struct cli c;
    cli_init(&c, srv_connect(&v));
    cli_call(&c, "a", false);
    cli_pump(&c, first_half);
    nghttp2_submit_rst_stream(c.ng, NGHTTP2_FLAG_NONE, c.s[0].id, NGHTTP2_CANCEL);
    cli_call(&c, "b", false);
    cli_call(&c, "c", false);
    cr_assert_eq(nghttp2_session_send(c.ng), 0);
    cli_fini(&c); /* gone without reading the replies */
    /* A second connection is still served while the first one's calls unwind. */
    cli_init(&c, srv_connect(&v));
    cli_call(&c, "d", true);
    cli_pump(&c, all_replied);
    cli_pump(&c, all_closed);
    cr_assert_eq(c.s[0].grpc_status, 0);
    cli_fini(&c);
    srv_stop(&v);
}

/* Issue 8, finding 2. Each 256 KiB message is sent as all but its last byte,
 * then 1 byte, on one key behind a message that does not finish. Past the
 * 1 MiB the session may hold (inbound.outstanding_bytes_max), messages are parked and
 * their window withheld; the bytes of a message still arriving were credited
 * regardless, so only each message's last byte was withheld and the client
 * could park all 12 MiB. Now the message in progress waits at the stream
 * window while nothing can be admitted, and completes once room returns.
 * Meanwhile another connection is served. */
Test(server, messages_sent_but_their_last_byte_do_not_park_without_bound) {
    enum { N = 48, BODY = 256u << 10, WIRE = BODY + 5 };
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.options.inbound.outstanding_bytes_max = 1u << 20;
    srv_start_cfg(&v, &cfg);
    struct cli c;
    cli_init(&c, srv_connect(&v));
    uint8_t *out = malloc((size_t)N * WIRE);
    for (size_t i = 0; i < N; i++) {
        uint8_t *m = out + i * WIRE;
        m[0] = 0;
        m[1] = (uint8_t)(BODY >> 24);
        m[2] = (uint8_t)(BODY >> 16);
        m[3] = (uint8_t)(BODY >> 8);
        m[4] = (uint8_t)BODY;
        memset(m + 5, (int)('a' + i % 26), BODY);
    }
    struct cs *s = cli_call_bytes(&c, HOLD_PATH, out, (size_t)N * WIRE, true);
    s->cut_every = WIRE;
    s->cut_at = WIRE - 1;
    cli_pump_until_stalled(&c);
    bds_call *first = hold_take();
    uint64_t hw = bds__server_msg_bytes_hw(v.s);
    cr_assert_lt(s->out_off, s->out_len, "the client sent all %zu bytes: nothing held it back", s->out_len);
    /* 1 MiB admitted, one message over it, one parked, one stream window. */
    cr_assert_lt(hw, 8u * WIRE, "the server held %lu bytes of messages", (unsigned long)hw);

    struct cli w;
    cli_init(&w, srv_connect(&v));
    cli_call(&w, "w", true);
    cli_pump(&w, all_closed);
    cr_assert_eq(w.s[0].grpc_status, 0, "another connection is served");
    cli_fini(&w);

    /* The work finishes: everything moves, each message completes. */
    bds_call_done(first, BDS_OK, NULL);
    cli_pump(&c, all_closed);
    cr_assert_eq(s->grpc_status, 0);
    cr_assert_eq(s->in_bytes, (size_t)(N - 1) * WIRE, "every message but the held one echoed");
    cli_fini(&c);
    srv_stop(&v);
}

/* Messages of |size| bytes for /test.Hold/All, each with its own key. */
static uint8_t *hold_all_msgs(uint32_t n, uint32_t size, size_t *len) {
    *len = (size_t)n * (5 + size);
    uint8_t *out = malloc(*len);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *m = out + (size_t)i * (5 + size);
        m[0] = 0;
        m[1] = (uint8_t)(size >> 24);
        m[2] = (uint8_t)(size >> 16);
        m[3] = (uint8_t)(size >> 8);
        m[4] = (uint8_t)size;
        memset(m + 5, 'x', size);
        for (int d = 7; d >= 0; d--) m[5 + 7 - d] = (uint8_t)('0' + (i >> (3 * d)) % 8); /* its key */
    }
    return out;
}

static bool first_closed(struct cli *c) { return c->s[0].closed; }
static bool last_closed(struct cli *c) { return c->s[c->n - 1].closed; }

/* Opens Process streams on c until one is served (a stream refused while
 * memory comes back is retried, as REFUSED_STREAM allows; bounded). */
static void cli_served_eventually(struct cli *c) {
    for (int i = 0; i < 10; i++) {
        cli_call(c, "w", true);
        cli_pump(c, last_closed);
        if (c->s[c->n - 1].grpc_status == 0) return;
        cr_assert_eq(c->s[c->n - 1].rst, NGHTTP2_REFUSED_STREAM, "only refused, never failed");
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("never served again once memory came back");
}

/* Issue 8, the memory budget per shard. A client whose handlers keep 32 KiB
 * messages, on their own keys, fills the shard past shard_bytes_max (2 MiB):
 * its stream, the largest, ends RESOURCE_EXHAUSTED; the memory its handlers
 * still hold keeps the shard at its budget, so a new stream, on another
 * connection too, is refused (REFUSED_STREAM) and the shard reads nothing
 * more. Once the handlers let go, streams are served again. */
Test(server, shard_memory_budget_refuses_streams_and_fails_the_largest) {
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.shard_bytes_max = 2u << 20;
    cfg.conn_bytes_max = 0;
    srv_start_cfg(&v, &cfg);
    struct cli a;
    cli_init(&a, srv_connect(&v));
    size_t len;
    uint8_t *out = hold_all_msgs(128, 32u << 10, &len);
    struct cs *s = cli_call_bytes(&a, HOLD_ALL_PATH, out, len, false);
    cli_pump(&a, first_closed);
    cr_assert_eq(s->grpc_status, 8, "the largest stream: RESOURCE_EXHAUSTED (got %d, rst %u)", s->grpc_status, s->rst);
    cr_assert_lt(s->out_off, len, "the shard stopped reading before the 4 MiB were sent");

    struct cli w;
    cli_init(&w, srv_connect(&v));
    cli_call(&w, "w", true);
    cli_pump(&w, all_closed);
    cr_assert_eq(w.s[0].rst, NGHTTP2_REFUSED_STREAM, "at the budget a new stream is refused (status %d, rst %u)",
                 w.s[0].grpc_status, w.s[0].rst);

    cr_assert_gt(hold_all_release(), 0);
    cli_served_eventually(&w);
    cli_fini(&w);
    cli_fini(&a);
    srv_stop(&v);
}

/* The memory budget per connection (1 MiB): the same client is stopped the
 * same way, its own new streams are refused, and a client on another
 * connection is served meanwhile. */
Test(server, conn_memory_budget_stops_one_connection_and_serves_the_others) {
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.conn_bytes_max = 1u << 20;
    srv_start_cfg(&v, &cfg);
    struct cli a;
    cli_init(&a, srv_connect(&v));
    size_t len;
    uint8_t *out = hold_all_msgs(128, 32u << 10, &len);
    struct cs *s = cli_call_bytes(&a, HOLD_ALL_PATH, out, len, false);
    cli_pump(&a, first_closed);
    cr_assert_eq(s->grpc_status, 8, "the largest stream: RESOURCE_EXHAUSTED (got %d, rst %u)", s->grpc_status, s->rst);
    cli_call(&a, "a", true);
    cli_pump(&a, all_closed);
    cr_assert_eq(a.s[1].rst, NGHTTP2_REFUSED_STREAM, "its connection's new stream is refused (status %d, rst %u)",
                 a.s[1].grpc_status, a.s[1].rst);

    struct cli w;
    cli_init(&w, srv_connect(&v));
    cli_call(&w, "w", true);
    cli_pump(&w, all_closed);
    cr_assert_eq(w.s[0].grpc_status, 0, "another connection is served");
    cr_assert_eq(w.s[0].in_bytes, reply_bytes(&w.s[0]));

    cr_assert_gt(hold_all_release(), 0);
    cli_served_eventually(&a);
    cli_fini(&w);
    cli_fini(&a);
    srv_stop(&v);
}

/* A message still arriving is memory its stream holds: a 3 MiB message of
 * which 2.5 MiB came (the deframer holds them) puts the shard past its 2 MiB
 * budget; nothing is parked or admitted, yet its stream is the largest and
 * ends RESOURCE_EXHAUSTED, instead of the shard reading nothing forever. */
Test(server, shard_memory_budget_counts_the_message_still_arriving) {
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.shard_bytes_max = 2u << 20;
    cfg.conn_bytes_max = 0;
    srv_start_cfg(&v, &cfg);
    struct cli a;
    cli_init(&a, srv_connect(&v));
    uint32_t announced = 3u << 20;
    size_t len = 5 + (5u << 19);
    uint8_t *out = calloc(1, len);
    out[1] = (uint8_t)(announced >> 24);
    out[2] = (uint8_t)(announced >> 16);
    out[3] = (uint8_t)(announced >> 8);
    out[4] = (uint8_t)announced;
    struct cs *s = cli_call_bytes(&a, HOLD_PATH, out, len, false);
    cli_pump(&a, first_closed);
    cr_assert_eq(s->grpc_status, 8, "RESOURCE_EXHAUSTED (got %d, rst %u)", s->grpc_status, s->rst);
    cli_served_eventually(&a);
    cli_fini(&a);
    srv_stop(&v);
}

/* A connection's fixed cost (output buffer, nghttp2 session, ~285 KiB) is the
 * connection limit's business: twelve idle connections (3.4 MiB of it) do
 * not put a 2 MiB shard budget out of reach, and a stream is served. */
Test(server, idle_connections_do_not_spend_the_memory_budget) {
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.shard_bytes_max = 2u << 20;
    srv_start_cfg(&v, &cfg);
    struct cli idle[12];
    for (int i = 0; i < 12; i++) {
        cli_init(&idle[i], srv_connect(&v));
        cr_assert_eq(nghttp2_session_send(idle[i].ng), 0);
    }
    struct cli w;
    cli_init(&w, srv_connect(&v));
    cli_call(&w, "w", true);
    cli_pump(&w, all_closed);
    cr_assert_eq(w.s[0].grpc_status, 0, "served (status %d, rst %u)", w.s[0].grpc_status, w.s[0].rst);
    cli_fini(&w);
    for (int i = 0; i < 12; i++) cli_fini(&idle[i]);
    srv_stop(&v);
}

static bool second_closed(struct cli *c) { return c->s[1].closed; }

/* At the budget the stream holding most ends, not the first one found: a
 * small stream (4 held messages) opened first survives the large one (up to
 * 128) on the same connection, and ends OK once its work is done. */
Test(server, memory_budget_ends_the_largest_stream_first) {
    struct srv v;
    bds_server_config cfg;
    srv_config(&cfg, 1);
    cfg.conn_bytes_max = 1u << 20;
    srv_start_cfg(&v, &cfg);
    struct cli a;
    cli_init(&a, srv_connect(&v));
    size_t len;
    uint8_t *small = hold_all_msgs(4, 32u << 10, &len);
    struct cs *s = cli_call_bytes(&a, HOLD_ALL_PATH, small, len, true);
    for (int i = 0; i < 500 && atomic_load(&all_n) < 4; i++) {
        cli_pump_until_stalled(&a);
    }
    cr_assert_eq(atomic_load(&all_n), 4, "the small stream's messages run");
    uint8_t *large = hold_all_msgs(128, 32u << 10, &len);
    struct cs *l = cli_call_bytes(&a, HOLD_ALL_PATH, large, len, false);
    cli_pump(&a, second_closed);
    cr_assert_eq(l->grpc_status, 8, "the largest stream: RESOURCE_EXHAUSTED (got %d, rst %u)", l->grpc_status, l->rst);
    cr_assert_not(s->closed, "the small stream lives on");
    hold_all_release();
    cli_pump(&a, first_closed);
    cr_assert_eq(s->grpc_status, 0, "status %d, rst %u", s->grpc_status, s->rst);
    cli_fini(&a);
    srv_stop(&v);
}
