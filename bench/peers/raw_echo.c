/* raw_echo: the ceiling of the benchmark suite.
 *
 * A minimal io_uring TCP server on 127.0.0.1 that echoes gRPC length-prefixed
 * messages (1 byte flags + 4 byte big-endian length + body; gRPC
 * PROTOCOL-HTTP2: Length-Prefixed-Message) with no HTTP/2, no protobuf, no
 * pipeline: what is left is the kernel's share of moving the bytes, so every
 * real server's figure reads as a fraction of it.
 *
 * Design: one thread, one ring. Each connection keeps one recv and at most one
 * send in flight. A recv appends to the connection's input buffer; the prefix
 * of complete frames is copied to the pending output and the remainder (a
 * partial frame) stays for the next recv, so a frame is never echoed in
 * pieces. When no send is in flight, pending becomes the sending buffer in one
 * send. All SQEs of one loop turn go to the kernel in one io_uring_enter.
 *
 * Memory: buffers grow to fit the largest frame seen (4 MiB + 5 cap) and are
 * freed with the connection. No per-message allocation.
 *
 * Options: --port N; --spin-us N polls the completion queue up to N µs before
 * sleeping (docs/ARCHITECTURE.md: waking an idle CPU dominates ping-pong latency; the
 * spin trades CPU for it). Stops on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RAW_MAX_FRAME ((4u << 20) + 5u)
#define RAW_BUF_MIN (64u << 10)

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

struct buf {
    uint8_t *p;
    size_t len, cap;
};

struct conn {
    int fd;
    int ops;          /* SQEs in flight for this connection */
    int closing;      /* peer closed or error: free once ops == 0 */
    struct buf in;    /* received bytes; [0, len) with a partial frame at the end */
    struct buf out;   /* complete frames waiting for the send slot */
    struct buf snd;   /* the bytes of the send in flight */
    size_t snd_off;   /* how much of snd the kernel took so far */
    int sending;
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "raw-echo: %s: %s\n", what, strerror(err));
    exit(1);
}

static void buf_reserve(struct buf *b, size_t need)
{
    if (b->cap - b->len >= need)
        return;
    size_t cap = b->cap ? b->cap : RAW_BUF_MIN;
    while (cap - b->len < need)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        die("realloc", ENOMEM);
    b->p = p;
    b->cap = cap;
}

static uint64_t ud(struct conn *c, int op)
{
    return (uint64_t)(uintptr_t)c | (uint64_t)op;
}

static struct io_uring_sqe *get_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        /* The SQ is full: hand what we have to the kernel and take a fresh slot. */
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
        if (!sqe)
            die("io_uring_get_sqe", EBUSY);
    }
    return sqe;
}

static void arm_recv(struct io_uring *ring, struct conn *c)
{
    /* Room for at least one whole buffer's worth; frames larger than that
     * grow the buffer when their prefix arrives (see on_recv). */
    buf_reserve(&c->in, RAW_BUF_MIN / 2);
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_recv(sqe, c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    io_uring_sqe_set_data64(sqe, ud(c, OP_RECV));
    c->ops++;
}

static void arm_send(struct io_uring *ring, struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_send(sqe, c->fd, c->snd.p + c->snd_off, c->snd.len - c->snd_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud(c, OP_SEND));
    c->ops++;
    c->sending = 1;
}

static void start_send_if_idle(struct io_uring *ring, struct conn *c)
{
    if (c->sending || c->out.len == 0 || c->closing)
        return;
    struct buf t = c->snd; /* swap: pending becomes the send buffer */
    c->snd = c->out;
    c->out = t;
    c->out.len = 0;
    c->snd_off = 0;
    arm_send(ring, c);
}

static void conn_maybe_free(struct conn *c)
{
    if (!c->closing || c->ops)
        return;
    close(c->fd);
    free(c->in.p);
    free(c->out.p);
    free(c->snd.p);
    free(c);
}

static void on_recv(struct io_uring *ring, struct conn *c, int res)
{
    if (res <= 0 || c->closing) {
        c->closing = 1;
        return;
    }
    c->in.len += (size_t)res;
    size_t pos = 0;
    while (c->in.len - pos >= 5) {
        const uint8_t *h = c->in.p + pos;
        uint32_t n = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
        if (n > RAW_MAX_FRAME - 5) { /* not our protocol: drop the connection */
            c->closing = 1;
            return;
        }
        if (c->in.len - pos - 5 < n) {
            buf_reserve(&c->in, 5 + n - (c->in.len - pos));
            break;
        }
        pos += 5 + n;
    }
    if (pos) {
        buf_reserve(&c->out, pos);
        memcpy(c->out.p + c->out.len, c->in.p, pos);
        c->out.len += pos;
        memmove(c->in.p, c->in.p + pos, c->in.len - pos);
        c->in.len -= pos;
    }
    start_send_if_idle(ring, c);
    arm_recv(ring, c);
}

static void on_send(struct io_uring *ring, struct conn *c, int res)
{
    c->sending = 0;
    if (res < 0 || c->closing) {
        c->closing = 1;
        return;
    }
    c->snd_off += (size_t)res;
    if (c->snd_off < c->snd.len) { /* short send: the rest goes first */
        arm_send(ring, c);
        return;
    }
    c->snd.len = 0;
    start_send_if_idle(ring, c);
}

static void arm_accept(struct io_uring *ring, int lfd)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void on_accept(struct io_uring *ring, int lfd, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        arm_accept(ring, lfd); /* the multishot ended (e.g. -ENFILE): re-arm */
    if (cqe->res < 0)
        return;
    int one = 1;
    setsockopt(cqe->res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc", ENOMEM);
    c->fd = cqe->res;
    arm_recv(ring, c);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket", errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind", errno);
    if (listen(fd, 4096) < 0)
        die("listen", errno);
    return fd;
}

int main(int argc, char **argv)
{
    int port = 50051;
    long spin_us = 0;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--port=", 7))
            port = atoi(argv[i] + 7);
        else if (!strncmp(argv[i], "--spin-us=", 10))
            spin_us = atol(argv[i] + 10);
        else {
            fprintf(stderr, "usage: %s [--port=N] [--spin-us=N]\n", argv[0]);
            return 2;
        }
    }
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = listen_on(port);
    struct io_uring ring;
    struct io_uring_params p = { 0 };
    /* Without spinning, defer task work to our own io_uring_enter: fewer
     * interruptions of the one thread. Spinning needs completions posted while
     * we peek without entering the kernel, so it keeps the default. */
    if (!spin_us)
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.flags |= IORING_SETUP_CQSIZE;
    p.cq_entries = 16384;
    int rc = io_uring_queue_init_params(4096, &ring, &p);
    if (rc == -EINVAL) { /* older kernel: plain ring */
        memset(&p, 0, sizeof p);
        rc = io_uring_queue_init_params(4096, &ring, &p);
    }
    if (rc < 0)
        die("io_uring_queue_init", -rc);
    arm_accept(&ring, lfd);
    fprintf(stderr, "raw-echo listening on 127.0.0.1:%d spin_us=%ld\n", port, spin_us);

    while (!g_stop) {
        struct io_uring_cqe *cqe;
        if (spin_us) {
            io_uring_submit(&ring);
            uint64_t until = now_ns() + (uint64_t)spin_us * 1000u;
            while (io_uring_peek_cqe(&ring, &cqe) != 0 && now_ns() < until && !g_stop)
                ;
        }
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -ETIME)
            die("io_uring_submit_and_wait", -rc);
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t d = io_uring_cqe_get_data64(cqe);
            n++;
            if (d == OP_ACCEPT) {
                on_accept(&ring, lfd, cqe);
                continue;
            }
            struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)3);
            c->ops--;
            if ((d & 3) == OP_RECV)
                on_recv(&ring, c, cqe->res);
            else
                on_send(&ring, c, cqe->res);
            conn_maybe_free(c);
        }
        io_uring_cq_advance(&ring, n);
    }
    io_uring_queue_exit(&ring);
    close(lfd);
    return 0;
}
