/* test_conn.c — listeners, connections and the framed echo over loopback.
 *
 * The shard ticks on the test's thread; clients are plain blocking sockets on
 * their own threads (a writer and a reader each, so a full socket buffer can
 * never deadlock them). Every check counts bytes and events; time only bounds
 * a test (.timeout). BDS_TEST_TSAN */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo.h"
#include "net.h"
#include "shard.h"
#include "watchdog.h"

/* ---- the server side -------------------------------------------------------- */

typedef struct harness {
    bds_shard *s;
    bds_net *net;
    bds_echo echo;
    uint16_t port;
} harness;

/* A shard that stops ticking for STALL_S while a test waits on it is stuck:
 * the watchdog prints its state and aborts. Static: a failed assert leaves
 * the test with it running. */
#define STALL_S 15
static watchdog wd;

static uint64_t h_progress(void *ctx) {
    const bds_shard_stats *st = bds__shard_stats(((harness *)ctx)->s);
    return __atomic_load_n(&st->ticks, __ATOMIC_RELAXED);
}

static void h_dump(FILE *f, void *ctx) { bds__shard_dump(((harness *)ctx)->s, f); }

static bool h_quiescent(bds_shard *s, void *ctx) {
    (void)s;
    return bds__net_live(((harness *)ctx)->net) == 0;
}
static void h_on_stop(bds_shard *s, void *ctx) {
    (void)s;
    bds__net_close_all(((harness *)ctx)->net);
}

static void h_start(harness *h, const bds_shard_config *scfg, const bds_net_config *ncfg) {
    memset(h, 0, sizeof(*h));
    char err[256] = "";
    cr_assert_eq(bds__shard_create(&h->s, 0, scfg, err, sizeof(err)), BDS_OK, "%s", err);
    h->net = bds__net_create(h->s, ncfg);
    cr_assert_not_null(h->net);
    bds__echo_init(&h->echo, h->net);
    bds_shard_hooks hooks = {.on_stop = h_on_stop, .quiescent = h_quiescent, .ctx = h};
    bds__shard_set_hooks(h->s, &hooks);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = bds__listen_socket((struct sockaddr *)&a, sizeof(a), 128);
    cr_assert_geq(fd, 0, "listen: %s", strerror(-fd));
    h->port = bds__socket_port(fd);
    cr_assert_eq(bds__listener_start(h->net, fd, bds__echo_on_accept, &h->echo, NULL), BDS_OK);
    watchdog_start(&wd, "the shard to tick (clients' bytes, closes)", STALL_S, 3600, h_progress, h_dump, h);
}

static void h_stop(harness *h) {
    bds__shard_request_stop(h->s);
    bds__shard_run(h->s);
    watchdog_stop(&wd);
    cr_assert_eq(bds__net_live(h->net), 0);
    cr_assert_eq(bds__net_stats(h->net)->chunks_live, 0);
    bds__net_destroy(h->net);
    bds__shard_destroy(h->s);
}

static void h_cfg(bds_shard_config *s, bds_net_config *n) {
    bds__shard_config_default(s);
    s->sq_entries = 256;
    bds__net_config_default(n);
}

/* ---- the client side ----------------------------------------------------------- */

static int client_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s", strerror(errno));
    return fd;
}

/* A deterministic stream of frames with sizes in [0, size_max]. */
static uint8_t *make_stream(uint32_t seed, size_t msgs, uint32_t size_max, size_t *out_len) {
    size_t cap = msgs * (BDS_GRPC_PREFIX_BYTES + (size_t)size_max), n = 0;
    uint8_t *p = malloc(cap);
    cr_assert_not_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < msgs; i++) {
        x = x * 1103515245u + 12345u;
        uint32_t len = (x >> 8) % (size_max + 1);
        bds__grpc_frame_prefix(p + n, false, len);
        n += BDS_GRPC_PREFIX_BYTES;
        for (uint32_t j = 0; j < len; j++)
            p[n + j] = (uint8_t)(x + j * 7u);
        n += len;
    }
    *out_len = n;
    return p;
}

typedef struct client {
    uint16_t port;
    uint32_t seed;
    size_t msgs;
    uint32_t size_max;
    size_t read_chunk;       /* bytes per read(); small = slow reader */
    useconds_t read_pause_us;
    bds_shard *wake;         /* woken when the client is done */
    _Atomic int *done;
    /* results */
    bool ok;
    size_t got;
    int fd;
    uint8_t *stream;
    size_t len;
} client;

static void *client_writer(void *arg) {
    client *c = arg;
    size_t off = 0;
    uint32_t x = c->seed;
    while (off < c->len) {
        x = x * 1103515245u + 12345u;
        size_t k = 1 + (x >> 8) % 70000; /* random write sizes split frames anywhere */
        if (k > c->len - off)
            k = c->len - off;
        ssize_t w = write(c->fd, c->stream + off, k);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    return NULL;
}

static void *client_run(void *arg) {
    client *c = arg;
    c->stream = make_stream(c->seed, c->msgs, c->size_max, &c->len);
    c->fd = client_connect(c->port);
    pthread_t w;
    pthread_create(&w, NULL, client_writer, c);
    uint8_t *buf = malloc(c->read_chunk);
    c->ok = true;
    while (c->got < c->len) {
        size_t want = c->len - c->got < c->read_chunk ? c->len - c->got : c->read_chunk;
        ssize_t r = read(c->fd, buf, want);
        if (r <= 0) {
            c->ok = false;
            break;
        }
        if (memcmp(buf, c->stream + c->got, (size_t)r) != 0)
            c->ok = false;
        c->got += (size_t)r;
        if (c->read_pause_us)
            usleep(c->read_pause_us);
    }
    pthread_join(w, NULL);
    close(c->fd);
    free(buf);
    free(c->stream);
    atomic_fetch_add(c->done, 1); /* seq_cst: read by the ticking thread after its wake */
    bds__shard_wake(c->wake);
    return NULL;
}

/* Runs n clients against h until all are done, then until the server has seen
 * every connection close. */
static void run_clients(harness *h, client *cs, int n) {
    _Atomic int done = 0;
    pthread_t t[16];
    cr_assert_leq(n, 16);
    for (int i = 0; i < n; i++) {
        cs[i].port = h->port;
        cs[i].wake = h->s;
        cs[i].done = &done;
        pthread_create(&t[i], NULL, client_run, &cs[i]);
    }
    while (atomic_load(&done) < n)
        bds__shard_tick(h->s, true);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    while (h->echo.conns_closed < (uint64_t)n)
        bds__shard_tick(h->s, true); /* the clients' FINs */
    for (int i = 0; i < n; i++)
        cr_assert(cs[i].ok && cs[i].got == cs[i].len, "client %d: stream broken at %zu of %zu", i, cs[i].got,
                  cs[i].len);
}

static client mkclient(uint32_t seed, size_t msgs, uint32_t size_max) {
    return (client){.seed = seed, .msgs = msgs, .size_max = size_max, .read_chunk = 65536};
}

/* ---- tests ---------------------------------------------------------------------------- */

Test(io_conn, echo_framed_messages_from_four_clients_returns_every_byte, .timeout = 60) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    client cs[4];
    for (int i = 0; i < 4; i++)
        cs[i] = mkclient(100 + (uint32_t)i, 2000, 40000); /* up to 40 KB: split across 16 KiB buffers */
    run_clients(&h, cs, 4);
    cr_assert_eq(h.echo.msgs, 8000);
    cr_assert_eq(h.echo.conns_accepted, 4);
    cr_assert_eq(h.echo.closed_with_partial, 0);
    cr_assert_eq(h.echo.last_close_err, 0);
    h_stop(&h);
}

Test(io_conn, recv_with_two_buffer_ring_hits_enobufs_rearms_and_loses_nothing, .timeout = 60) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    sc.bufs = 2;
    sc.buf_bytes = 1024;
    h_start(&h, &sc, &nc);
    client c = mkclient(7, 3000, 3000);
    run_clients(&h, &c, 1);
    const bds_net_stats *st = bds__net_stats(h.net);
    cr_assert_gt(st->recv_enobufs, 0, "the 2-buffer ring never ran dry");
    cr_assert_geq(st->recv_rearms, st->recv_enobufs);
    cr_assert_eq(h.echo.msgs, 3000);
    h_stop(&h);
}

Test(io_conn, tiny_sndbuf_and_slow_reader_force_short_sends_stream_intact, .timeout = 120) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    nc.sndbuf = 4096;
    h_start(&h, &sc, &nc);
    h.echo.out_high_bytes = 256u << 10;
    client c = mkclient(9, 1500, 4000);
    c.read_chunk = 1500;
    c.read_pause_us = 20;
    run_clients(&h, &c, 1);
    cr_assert_gt(bds__net_stats(h.net)->short_sends, 0, "no short send happened");
    cr_assert_eq(h.echo.msgs, 1500);
    h_stop(&h);
}

static void tick_until_closed(harness *h, uint64_t n) {
    while (h->echo.conns_closed < n)
        bds__shard_tick(h->s, true);
}

static void send_partial_message(int fd) {
    uint8_t pfx[BDS_GRPC_PREFIX_BYTES], body[100];
    bds__grpc_frame_prefix(pfx, false, 1000); /* promises 1000 bytes, sends 100 */
    memset(body, 0x5a, sizeof(body));
    cr_assert_eq(write(fd, pfx, sizeof(pfx)), (ssize_t)sizeof(pfx));
    cr_assert_eq(write(fd, body, sizeof(body)), (ssize_t)sizeof(body));
}

Test(io_conn, peer_reset_mid_message_closes_with_econnreset, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    int fd = client_connect(h.port);
    send_partial_message(fd);
    while (bds__net_stats(h.net)->recv_bytes < 105)
        bds__shard_tick(h.s, true);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd); /* RST */
    tick_until_closed(&h, 1);
    cr_assert_eq(h.echo.last_close_err, ECONNRESET);
    cr_assert_eq(h.echo.closed_with_partial, 1);
    cr_assert_eq(h.echo.msgs, 0);
    h_stop(&h);
}

Test(io_conn, eof_mid_message_closes_without_error_and_counts_partial, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    int fd = client_connect(h.port);
    send_partial_message(fd);
    shutdown(fd, SHUT_WR); /* FIN */
    tick_until_closed(&h, 1);
    cr_assert_eq(h.echo.last_close_err, 0);
    cr_assert_eq(h.echo.closed_with_partial, 1);
    close(fd);
    h_stop(&h);
}

Test(io_conn, tiny_cq_overflows_with_eight_clients_and_loses_nothing, .timeout = 120) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    sc.sq_entries = 4;
    sc.cq_entries = 4;
    sc.done_batch = 1; /* reap one CQE per tick: completions pile up in the kernel */
    sc.bufs = 64;
    sc.buf_bytes = 2048;
    h_start(&h, &sc, &nc);
    client cs[8];
    for (int i = 0; i < 8; i++)
        cs[i] = mkclient(300 + (uint32_t)i, 800, 5000);
    run_clients(&h, cs, 8);
    cr_assert_gt(bds__shard_stats(h.s)->overflows, 0, "the CQ never overflowed");
    cr_assert_eq(h.echo.msgs, 6400);
    h_stop(&h);
}

Test(io_conn, oversized_length_closes_the_connection_as_protocol_error, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    h.echo.msg_bytes_max = 1000;
    int fd = client_connect(h.port);
    uint8_t pfx[BDS_GRPC_PREFIX_BYTES];
    bds__grpc_frame_prefix(pfx, false, 1001);
    cr_assert_eq(write(fd, pfx, sizeof(pfx)), (ssize_t)sizeof(pfx));
    tick_until_closed(&h, 1);
    cr_assert_eq(h.echo.protocol_errors, 1);
    cr_assert_eq(h.echo.last_close_err, EMSGSIZE);
    close(fd);
    h_stop(&h);
}

/* The echo deframes with proto's gRPC deframer: the compressed flag (1) is
 * gRPC's and comes back as sent; any other flag byte is a protocol error. */
Test(io_conn, compressed_flag_is_echoed_and_a_flag_past_one_closes_as_protocol_error, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    int fd = client_connect(h.port);
    uint8_t msg[BDS_GRPC_PREFIX_BYTES + 3], got[sizeof msg];
    bds__grpc_frame_prefix(msg, true, 3);
    memcpy(msg + BDS_GRPC_PREFIX_BYTES, "abc", 3);
    cr_assert_eq(write(fd, msg, sizeof msg), (ssize_t)sizeof msg);
    size_t have = 0;
    while (have < sizeof got) { /* bounded by the watchdog: the shard is ticked */
        bds__shard_tick(h.s, false);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) != 1)
            continue;
        ssize_t r = recv(fd, got + have, sizeof got - have, 0);
        cr_assert_gt(r, 0, "the echo closed before answering: %s", r < 0 ? strerror(errno) : "EOF");
        have += (size_t)r;
    }
    cr_assert_eq(memcmp(msg, got, sizeof got), 0, "the message, flag 1 included, comes back as sent");
    uint8_t bad[BDS_GRPC_PREFIX_BYTES];
    bds__grpc_frame_prefix(bad, false, 3);
    bad[0] = 2;
    cr_assert_eq(write(fd, bad, sizeof bad), (ssize_t)sizeof bad);
    tick_until_closed(&h, 1);
    cr_assert_eq(h.echo.msgs, 1);
    cr_assert_eq(h.echo.protocol_errors, 1);
    cr_assert_eq(h.echo.last_close_err, EPROTO);
    cr_assert_eq(h.echo.closed_with_partial, 0, "a refused prefix is an error, not a partial message");
    close(fd);
    h_stop(&h);
}

Test(io_conn, close_with_recv_and_blocked_send_in_flight_waits_for_both_then_frees, .timeout = 30) {
    /* A client that sends one 1 MiB message and never reads: the echo's send
     * sits in the kernel (tiny SO_SNDBUF, full peer window) while the recv is
     * armed. Closing must cancel both, wait for both final CQEs, close the fd,
     * then free: ASan watches every step for a use after free. */
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    nc.sndbuf = 4096;
    h_start(&h, &sc, &nc);
    h.echo.out_high_bytes = 8u << 20; /* no pause: the recv stays armed */
    int fd = client_connect(h.port);
    int small = 4096;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    enum { LEN = 1 << 20 };
    uint8_t *msg = calloc(1, BDS_GRPC_PREFIX_BYTES + LEN);
    bds__grpc_frame_prefix(msg, false, LEN);
    size_t off = 0;
    while (off < BDS_GRPC_PREFIX_BYTES + LEN) { /* the server reads all of it: it never stops receiving */
        ssize_t w = send(fd, msg + off, BDS_GRPC_PREFIX_BYTES + LEN - off, MSG_DONTWAIT);
        if (w > 0)
            off += (size_t)w;
        bds__shard_tick(h.s, false);
    }
    while (h.echo.msgs < 1 || bds__net_stats(h.net)->short_sends < 1)
        bds__shard_tick(h.s, false);
    cr_assert_gt(bds__net_stats(h.net)->chunks_live, 0, "the echo is not pending");
    bds__net_close_all(h.net);
    tick_until_closed(&h, 1);
    cr_assert_eq(h.echo.last_close_err, 0);
    cr_assert_eq(bds__net_stats(h.net)->chunks_live, 0);
    cr_assert_eq(bds__net_live(h.net), 0);
    cr_assert_eq(bds__shard_inflight(h.s), 1, "only the shard's own eventfd read may remain");
    close(fd);
    free(msg);
    h_stop(&h);
}

Test(io_conn, echo_with_idle_spin_enabled_spins_and_returns_every_byte, .timeout = 60) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    sc.idle_spin_us = 200;
    h_start(&h, &sc, &nc);
    client c = mkclient(11, 500, 2000);
    run_clients(&h, &c, 1);
    cr_assert_eq(h.echo.msgs, 500);
    cr_assert_gt(bds__shard_stats(h.s)->spins, 0, "the idle spin never ran");
    h_stop(&h);
}

/* Ticks without blocking until the echo saw n connections closed; fails with
 * the shard's state when that takes more than `ticks` ticks. */
static void tick_until_closed_bounded(harness *h, uint64_t n, int ticks) {
    for (int i = 0; i < ticks && h->echo.conns_closed < n; i++)
        bds__shard_tick(h->s, false);
    if (h->echo.conns_closed < n)
        bds__shard_dump(h->s, stderr);
    cr_assert_eq(h->echo.conns_closed, n, "closed %llu of %llu connections in %d ticks (state above)",
                 (unsigned long long)h->echo.conns_closed, (unsigned long long)n, ticks);
}

Test(io_conn, idle_receives_holding_every_op_slot_still_let_every_connection_close, .timeout = 30) {
    /* Finding 10 of issue 8: each connection's multishot recv holds an op
     * slot. With more idle connections than slots, the last receives park;
     * closing must still cancel every recv and close every socket (cancels
     * and closes used to park behind new ops, and nothing ever freed a slot). */
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    sc.ops_max = 16;
    h_start(&h, &sc, &nc);
    enum { CONNS = 24 };
    int fds[CONNS];
    for (int i = 0; i < CONNS; i++)
        fds[i] = client_connect(h.port);
    /* Bounded in time, not in ticks: a loaded machine accepts slowly. */
    for (uint64_t end = bds__clock_ns() + 20000000000ull; h.echo.conns_accepted < CONNS && bds__clock_ns() < end;)
        bds__shard_tick(h.s, false);
    cr_assert_eq(h.echo.conns_accepted, CONNS);
    cr_assert_geq(bds__shard_inflight(h.s), 16 - 4, "every slot (but the reserved ones) holds an op");
    cr_assert_gt(bds__shard_stats(h.s)->parked, 0, "some receives wait for a slot");
    bds__net_close_all(h.net);
    tick_until_closed_bounded(&h, CONNS, 100000);
    cr_assert_eq(h.echo.last_close_err, 0);
    for (int i = 0; i < CONNS; i++)
        close(fds[i]);
    h_stop(&h);
}

/* ---- shedding: conns_max and the spare descriptor ------------------------------------ */

static int client_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    return fd;
}

static void client_connect_fd(int fd, uint16_t port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s", strerror(errno));
}

/* One framed message through the echo on fd, ticking the shard meanwhile;
 * fails (with the shard's state) when it does not come back in ~5 s. */
static void client_echo_once(harness *h, int fd, uint8_t tag) {
    uint8_t msg[BDS_GRPC_PREFIX_BYTES + 32], got[sizeof msg];
    bds__grpc_frame_prefix(msg, false, 32);
    memset(msg + BDS_GRPC_PREFIX_BYTES, tag, 32);
    cr_assert_eq(write(fd, msg, sizeof msg), (ssize_t)sizeof msg);
    size_t have = 0;
    for (int i = 0; i < 500 && have < sizeof got; i++) {
        bds__shard_tick(h->s, false);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) != 1)
            continue;
        ssize_t r = recv(fd, got + have, sizeof got - have, 0);
        cr_assert_gt(r, 0, "the served connection was closed: %s", r < 0 ? strerror(errno) : "EOF");
        have += (size_t)r;
    }
    if (have < sizeof got)
        bds__shard_dump(h->s, stderr);
    cr_assert_eq(have, sizeof got, "echo: %zu of %zu bytes back in ~5 s", have, sizeof got);
    cr_assert_eq(memcmp(msg, got, sizeof got), 0);
}

/* Ticks the shard until fd sees the server close it (EOF or reset); fails
 * after ~5 s with the shard's state. */
static void client_expect_closed(harness *h, int fd, const char *why) {
    for (int i = 0; i < 500; i++) {
        bds__shard_tick(h->s, false);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) != 1)
            continue;
        char b;
        ssize_t r = recv(fd, &b, 1, 0);
        cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "expected the server to close: got %zd (%s)", r,
                  r < 0 ? strerror(errno) : "a byte");
        return;
    }
    bds__shard_dump(h->s, stderr);
    cr_assert_fail("%s: the connection was not closed in ~5 s", why);
}

/* Ticks until the server has accepted (or shed) `want` connections in all. */
static void tick_until_seen(harness *h, uint64_t want) {
    const bds_net_stats *st = bds__net_stats(h->net);
    for (uint64_t end = bds__clock_ns() + 20000000000ull;
         st->accepted + st->shed_conns_max + st->shed_fd_limit < want && bds__clock_ns() < end;)
        bds__shard_tick(h->s, false);
    cr_assert_eq(st->accepted + st->shed_conns_max + st->shed_fd_limit, want);
}

Test(io_conn, connections_past_conns_max_close_at_once_while_open_ones_are_served, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    nc.conns_max = 2;
    h_start(&h, &sc, &nc);
    int a = client_connect(h.port), b = client_connect(h.port);
    tick_until_seen(&h, 2);
    int over = client_connect(h.port);
    client_expect_closed(&h, over, "the third connection past conns_max = 2");
    cr_assert_eq(bds__net_stats(h.net)->shed_conns_max, 1);
    client_echo_once(&h, a, 1); /* the open ones are still served */
    client_echo_once(&h, b, 2);
    /* A slot freed is a slot taken again. */
    close(b);
    tick_until_closed(&h, 1);
    int c = client_connect(h.port);
    client_echo_once(&h, c, 3);
    cr_assert_eq(bds__net_stats(h.net)->accepted, 3);
    close(a);
    close(c);
    close(over);
    h_stop(&h);
}

/* Lowers the soft RLIMIT_NOFILE so that exactly `free` descriptor numbers
 * are left (the lowest free numbers are handed out first). */
static void leave_free_fds(int free) {
    int n = 0, fd = 0;
    for (; n <= free; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            n++;
    /* fd - 1 is the (free + 1)-th free number: a limit there leaves `free` below it */
    struct rlimit r;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &r), 0);
    r.rlim_cur = (rlim_t)(fd - 1);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &r), 0, "setrlimit: %s", strerror(errno));
}

Test(io_conn, out_of_descriptors_sheds_the_newest_connection_and_keeps_serving, .timeout = 30) {
    harness h;
    bds_shard_config sc;
    bds_net_config nc;
    h_cfg(&sc, &nc);
    h_start(&h, &sc, &nc);
    /* Every client socket exists first: from here on only the server takes
     * descriptors, and there is room for one connection. */
    int a = client_socket(), over = client_socket(), next = client_socket();
    leave_free_fds(1);
    client_connect_fd(a, h.port);
    tick_until_seen(&h, 1);
    client_connect_fd(over, h.port); /* EMFILE for the server */
    client_expect_closed(&h, over, "a connection the server has no descriptor for");
    cr_assert_eq(bds__net_stats(h.net)->shed_fd_limit, 1);
    client_echo_once(&h, a, 1);
    /* The listener keeps serving: a descriptor freed is a connection taken. */
    close(a);
    tick_until_closed(&h, 1);
    client_connect_fd(next, h.port);
    client_echo_once(&h, next, 2);
    cr_assert_eq(bds__net_stats(h.net)->accepted, 2);
    close(next);
    close(over);
    h_stop(&h);
}
