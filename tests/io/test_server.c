/* test_server.c — the gRPC server (io/server.c) in process, against a small
 * nghttp2 client over loopback: the built-in Pipeline/Process echo on many
 * streams, with one and two shards (replies made on the key's shard travel
 * home), a stream reset mid-flight and a connection dropped with replies in
 * flight. Every message buffer comes from a shard pool and goes back to it:
 * the pools assert at shutdown that none is left (BDS_ASSERT aborts the test
 * process), so a clean bds_server_run() return is the leak check. Two shards
 * hand messages between threads: also run under TSan. BDS_TEST_TSAN */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
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
#include "watchdog.h"

#define PATH "/bidistream.v1.Pipeline/Process"
#define MSGS 300
#define PAYLOAD 64

/* ---- the server on its own thread ------------------------------------------------ */

struct srv {
    bds_server *s;
    pthread_t t;
    bds_status rc;
};

static struct srv *current; /* the running server, for stall reports */
static watchdog wd;         /* static: a failed assert leaves the test with it running */

static void srv_dump(FILE *f, void *ctx) { bds__server_dump(((struct srv *)ctx)->s, f); }

static void *srv_main(void *arg) {
    struct srv *v = arg;
    v->rc = bds_server_run(v->s);
    return NULL;
}

static void srv_start_cfg(struct srv *v, const bds_server_config *cfgp) {
    bds_server_config cfg = *cfgp;
    cfg.listen = "127.0.0.1:0";
    cfg.log_level = 0;
    const char *why = NULL;
    cr_assert_eq(bds_server_create(&v->s, &cfg, &why), BDS_OK, "%s", why ? why : "");
    current = v;
    /* Every wait below is bounded (~20 s each) except the server's own
     * shutdown: the deadline covers that one too. */
    watchdog_start(&wd, "the test's exchanges and the server's shutdown", 0, 150, NULL, srv_dump, v);
    cr_assert_eq(pthread_create(&v->t, NULL, srv_main, v), 0);
}

static void srv_start(struct srv *v, uint32_t shards) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.shards = shards;
    srv_start_cfg(v, &cfg);
}

static void srv_stop(struct srv *v) {
    bds_server_stop(v->s);
    cr_assert_eq(pthread_join(v->t, NULL), 0);
    watchdog_stop(&wd);
    current = NULL;
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
    bool eof;         /* half-close once out is sent */
    size_t in_bytes;  /* response DATA bytes */
    int grpc_status;  /* -1 until the trailers */
    bool closed;
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
    (void)code;
    struct cs *s = cli_stream(ud, id);
    if (s) s->closed = true;
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

/* Opens a Process stream carrying MSGS frames of one key; eof: half-close after. */
static struct cs *cli_call(struct cli *c, const char *key, bool eof) {
    cr_assert_lt(c->n, 16);
    struct cs *s = &c->s[c->n++];
    memset(s, 0, sizeof *s);
    s->grpc_status = -1;
    s->eof = eof;
    s->out = malloc(MSGS * (5 + 16 + 8 + PAYLOAD));
    for (uint32_t i = 0; i < MSGS; i++) s->out_len += frame_put(s->out + s->out_len, key, i);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", PATH),
                       NV(":authority", "localhost"), NV("content-type", "application/grpc"),
                       NV("te", "trailers")};
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = cli_read};
    s->id = nghttp2_submit_request(c->ng, NULL, nv, sizeof nv / sizeof nv[0], &prd, NULL);
    cr_assert_gt(s->id, 0);
    return s;
}

/* Sends and receives until done(c) or about 20 s pass. */
static void cli_pump(struct cli *c, bool (*done)(struct cli *c)) {
    uint8_t buf[16384];
    for (int i = 0; i < 2000 && !done(c); i++) {
        cr_assert_eq(nghttp2_session_send(c->ng), 0);
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 10) <= 0) continue;
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        cr_assert_gt(n, 0, "the server closed the connection");
        cr_assert_eq(nghttp2_session_mem_recv(c->ng, buf, (size_t)n), n);
    }
    if (!done(c) && current) {
        fprintf(stderr, "the exchange did not finish in time; the server:\n");
        bds__server_dump(current->s, stderr);
    }
    cr_assert(done(c), "the exchange did not finish in time");
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

/* Reads until the server closes fd (EOF or reset); false after ~5 s. Bytes
 * the server sent first (its SETTINGS) are skipped. */
static bool closed_by_server(int fd) {
    char buf[512];
    for (int i = 0; i < 500; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) != 1) continue;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    }
    return false;
}

/* Connects until the server answers with its SETTINGS (peeked, left for the
 * client): a connection the server still counts may be closing meanwhile, so
 * a connect may be shed until it is gone (bounded: about 5 s). */
static int connect_served(struct srv *v) {
    for (int i = 0; i < 50; i++) {
        int fd = srv_connect(v);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char b;
        if (poll(&p, 1, 100) == 1 && recv(fd, &b, 1, MSG_PEEK) == 1) return fd;
        close(fd);
    }
    bds__server_dump(v->s, stderr);
    cr_assert_fail("no connection was served in ~5 s");
    return -1;
}

/* max_connections = 1: a second connection is closed at once, the first one
 * keeps being served, and once it is gone the next one is served. */
Test(server, connection_past_max_connections_is_closed_while_the_first_is_served) {
    struct srv v;
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.shards = 1;
    cfg.max_connections = 1;
    srv_start_cfg(&v, &cfg);
    struct cli c;
    cli_init(&c, srv_connect(&v));
    cli_call(&c, "a", false);
    cli_pump(&c, first_half); /* the first connection is accepted and served */
    int over = srv_connect(&v);
    bool closed = closed_by_server(over);
    if (!closed) bds__server_dump(v.s, stderr);
    cr_assert(closed, "the connection past max_connections was not closed in ~5 s");
    close(over);
    cli_call(&c, "b", true);
    cli_pump(&c, all_replied);
    cli_fini(&c);
    cli_init(&c, connect_served(&v)); /* its share is free again once the first is gone */
    cli_call(&c, "c", true);
    cli_pump(&c, all_closed);
    cr_assert_eq(c.s[0].grpc_status, 0);
    cli_fini(&c);
    srv_stop(&v);
}
