/* net.c — listeners and connections over the shard's ring.
 *
 * Connection lifecycle (one state word, owner shard only):
 *   OPEN     recv armed (multishot, buffer ring), sends as output appears;
 *   CLOSING  no new sends; the recv (and a send, unless closing after flush) is
 *            cancelled with IORING_OP_ASYNC_CANCEL by user_data; waiting for
 *            every op of the connection to report its final CQE;
 *   CLOSED   IORING_OP_CLOSE submitted; its CQE runs on_close and frees.
 * The connection is freed only from the close CQE's callback, and the close is
 * submitted only when recv, send and both cancel ops are idle, so no CQE can
 * arrive for a freed connection (the generation check is the second fence).
 *
 * Receive: res > 0 hands the provided buffer's bytes to on_data and recycles
 * the buffer at once (visible to the kernel at the end of the tick). A final
 * CQE (no IORING_CQE_F_MORE: -ENOBUFS when the ring ran dry, or the kernel
 * ending the multishot) re-arms unless paused or closing; data not yet read
 * stays in the socket, so nothing is lost. res == 0 is EOF.
 * Send: one sendmsg in flight per socket (completions on one socket may
 * reorder once poll-armed), up to 64 iovecs gathered from the segment queue;
 * a short send consumes what went out and the next sendmsg carries the rest.
 * Output memory: copies go into per-shard chunks (a free list that grows on
 * demand and is counted: chunks_live/chunks_hwm); write_ref segments are the
 * caller's until on_release. Errno of each op family maps in one switch.
 *
 * Shedding. conns_max counts connections until they are freed (a closing one
 * still holds its fd). An accept that fails with EMFILE/ENFILE means a client
 * waits in the backlog while we cannot take it: the listener's spare
 * descriptor (/dev/null, opened at start) is closed, the connection accepted
 * on the freed number and closed, and the spare reopened; then accept is
 * re-armed at once (each round sheds one connection, so it cannot spin
 * without progress). Without a spare (it could not be reopened) accept backs
 * off 10 ms as for ENOMEM. The listening socket stays blocking (io_uring
 * would fail a multishot accept on an O_NONBLOCK one with -EAGAIN), so the
 * shed accept4 runs only after poll() said a connection is waiting. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <liburing.h>

#include "base.h"
#include "list.h"
#include "net.h"

#include "log.h"

#define NET_IOV_MAX 64
#define NET_ACCEPT_BACKOFF_NS 10000000ull /* out of fds: retry accept in 10 ms */

typedef struct net_chunk net_chunk;
struct net_chunk {
    net_chunk *next;
    uint32_t used;
    char data[];
};

enum { SEG_CHUNK = 1, SEG_REF = 2 };
typedef struct net_seg {
    char *base;   /* first unsent byte */
    uint32_t len; /* unsent bytes */
    uint8_t kind;
    void *p;      /* net_chunk, or the caller's tag */
} net_seg;

enum { CONN_OPEN = 1, CONN_CLOSING, CONN_CLOSED };

struct bds_conn {
    bds_net *net;
    int fd;
    uint8_t state;
    bool paused, after_flush;
    int err;                 /* first error; reported by on_close */
    bds_op recv_op, send_op, recv_cancel, send_cancel, close_op;
    bds_flusher flusher;
    net_seg *segs;           /* ring of out_segs */
    uint32_t seg_head, seg_n;
    net_chunk *tail_chunk;   /* last segment's chunk while it has room */
    size_t out_bytes;
    uint64_t sent_bytes;     /* every byte a send CQE reported: progress, for timers */
    struct msghdr msg;
    struct iovec iov[NET_IOV_MAX];
    bds_conn_callbacks cb;
    void *ctx;
    bds__dlist link;         /* on net's connection list */
};

struct bds_listener {
    bds_net *net;
    int fd;
    int spare_fd;            /* /dev/null, given up to shed a connection on EMFILE; -1 = none */
    bool closing;
    bds_op accept_op, cancel_op;
    bds_timer backoff;
    bds_on_accept_fn fn;
    void *ctx;
    bds__dlist link;         /* on net's listener list */
};

struct bds_net {
    bds_shard *shard;
    bds_net_config cfg;
    net_chunk *free_chunks;
    bds__dlist conns;        /* bds_conn.link */
    bds__dlist listeners;    /* bds_listener.link */
    uint32_t live;
    uint32_t conns_open;     /* connections not yet freed */
    bool shedding_max, shedding_fds; /* in a shedding episode: its line is logged */
    bds_net_stats stats;
};

void bds__net_config_default(bds_net_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->out_segs = 256;
    cfg->chunk_bytes = 16384;
}

bds_net *bds__net_create(bds_shard *s, const bds_net_config *cfg) {
    bds_net *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->shard = s;
    n->cfg = *cfg;
    bds__dlist_init(&n->conns);
    bds__dlist_init(&n->listeners);
    BDS_ASSERT(n->cfg.out_segs >= 2 && n->cfg.chunk_bytes >= 64);
    return n;
}

void bds__net_destroy(bds_net *n) {
    if (!n)
        return;
    BDS_ASSERT(n->live == 0 && n->stats.chunks_live == 0);
    while (n->free_chunks) {
        net_chunk *c = n->free_chunks;
        n->free_chunks = c->next;
        free(c);
    }
    free(n);
}

uint32_t bds__net_live(const bds_net *n) { return n->live; }
uint32_t bds__net_conns(const bds_net *n) { return n->conns_open; }
const bds_net_stats *bds__net_stats(const bds_net *n) { return &n->stats; }
bds_shard *bds__net_shard(const bds_net *n) { return n->shard; }

void bds__net_close_all(bds_net *n) {
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &n->listeners)
        bds__listener_close(BDS_DLIST_ENTRY(it, bds_listener, link));
    BDS_DLIST_FOREACH_SAFE(it, nx, &n->conns)
        bds__conn_close(BDS_DLIST_ENTRY(it, bds_conn, link), 0);
}

/* ---- chunks ----------------------------------------------------------------- */

static net_chunk *net_chunk_get(bds_net *n) {
    net_chunk *c = n->free_chunks;
    if (c)
        n->free_chunks = c->next;
    else if (!(c = malloc(sizeof(*c) + n->cfg.chunk_bytes)))
        return NULL;
    c->next = NULL;
    c->used = 0;
    if (++n->stats.chunks_live > n->stats.chunks_hwm)
        n->stats.chunks_hwm = n->stats.chunks_live;
    return c;
}

static void net_chunk_put(bds_net *n, net_chunk *c) {
    BDS_ASSERT(n->stats.chunks_live > 0);
    n->stats.chunks_live--;
    c->next = n->free_chunks;
    n->free_chunks = c;
}

/* ---- output queue -------------------------------------------------------------- */

static net_seg *conn_seg(bds_conn *c, uint32_t i) {
    return &c->segs[(c->seg_head + i) % c->net->cfg.out_segs];
}

static void conn_seg_pop(bds_conn *c) {
    net_seg *sg = conn_seg(c, 0);
    if (sg->kind == SEG_CHUNK) {
        if (c->tail_chunk == sg->p)
            c->tail_chunk = NULL;
        net_chunk_put(c->net, sg->p);
    } else if (c->cb.on_release) {
        c->cb.on_release(c, sg->p, c->ctx);
    }
    c->out_bytes -= sg->len;
    c->seg_head = (c->seg_head + 1) % c->net->cfg.out_segs;
    c->seg_n--;
}

/* A send CQE acknowledged n bytes: release what is fully sent, trim the rest. */
static void conn_consume(bds_conn *c, size_t n) {
    while (n) {
        BDS_ASSERT(c->seg_n > 0);
        net_seg *sg = conn_seg(c, 0);
        size_t k = n < sg->len ? n : sg->len;
        sg->base += k;
        sg->len -= (uint32_t)k;
        c->out_bytes -= k;
        n -= k;
        if (sg->len == 0)
            conn_seg_pop(c);
    }
}

static void conn_discard_output(bds_conn *c) {
    while (c->seg_n)
        conn_seg_pop(c);
    BDS_ASSERT(c->out_bytes == 0);
}

static void conn_schedule_flush(bds_conn *c) { bds__shard_defer_flush(c->net->shard, &c->flusher); }

bds_status bds__conn_write(bds_conn *c, const void *bytes, size_t len) {
    if (c->state != CONN_OPEN || c->after_flush)
        return BDS_UNAVAILABLE;
    const char *p = bytes;
    uint32_t cap = c->net->cfg.chunk_bytes;
    /* Room check first, so a refused write queues nothing. */
    size_t room = c->tail_chunk ? cap - c->tail_chunk->used : 0;
    size_t need = len > room ? (len - room + cap - 1) / cap : 0;
    if (c->seg_n + need > c->net->cfg.out_segs)
        return BDS_E_AGAIN;
    while (len) {
        if (!c->tail_chunk || c->tail_chunk->used == cap) {
            net_chunk *ch = net_chunk_get(c->net);
            if (!ch)
                return BDS_E_NOMEM; /* bytes before this point stay queued */
            *conn_seg(c, c->seg_n++) = (net_seg){.base = ch->data, .len = 0, .kind = SEG_CHUNK, .p = ch};
            c->tail_chunk = ch;
        }
        net_chunk *ch = c->tail_chunk;
        size_t k = cap - ch->used < len ? cap - ch->used : len;
        memcpy(ch->data + ch->used, p, k);
        ch->used += (uint32_t)k;
        /* The tail segment only grows at its end: an in-flight sendmsg holds a
         * copy of the iovec and never sees the new bytes. */
        conn_seg(c, c->seg_n - 1)->len += (uint32_t)k;
        c->out_bytes += k;
        p += k;
        len -= k;
    }
    conn_schedule_flush(c);
    return BDS_OK;
}

bds_status bds__conn_write_ref(bds_conn *c, const void *base, size_t len, void *tag) {
    if (c->state != CONN_OPEN || c->after_flush)
        return BDS_UNAVAILABLE;
    if (c->seg_n == c->net->cfg.out_segs)
        return BDS_E_AGAIN;
    BDS_ASSERT(len > 0 && len <= UINT32_MAX);
    *conn_seg(c, c->seg_n++) = (net_seg){.base = (char *)base, .len = (uint32_t)len, .kind = SEG_REF, .p = tag};
    c->tail_chunk = NULL; /* later copies must not land before this segment */
    c->out_bytes += len;
    conn_schedule_flush(c);
    return BDS_OK;
}

size_t bds__conn_out_bytes(const bds_conn *c) { return c->out_bytes; }
uint64_t bds__conn_sent_bytes(const bds_conn *c) { return c->sent_bytes; }

static void conn_send(bds_conn *c) {
    if (bds__op_busy(&c->send_op) || c->seg_n == 0 || c->state != CONN_OPEN)
        return;
    uint32_t n = c->seg_n < NET_IOV_MAX ? c->seg_n : NET_IOV_MAX;
    for (uint32_t i = 0; i < n; i++) {
        net_seg *sg = conn_seg(c, i);
        c->iov[i] = (struct iovec){.iov_base = sg->base, .iov_len = sg->len};
    }
    memset(&c->msg, 0, sizeof(c->msg));
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    c->send_op.a.sendmsg.msg = &c->msg;
    c->net->stats.sends++;
    bds__op_submit(c->net->shard, &c->send_op);
}

static void conn_on_flush(bds_flusher *f) { conn_send(BDS_CONTAINER_OF(f, bds_conn, flusher)); }

/* ---- connection lifecycle ------------------------------------------------------- */

static void conn_on_recv(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void conn_on_send(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void conn_on_cancel(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void conn_on_close(bds_op *op, int32_t res, uint32_t flags, void *ctx);

static bds_conn *conn_new(bds_net *n, int fd) {
    bds_conn *c = calloc(1, sizeof(*c));
    net_seg *segs = calloc(n->cfg.out_segs, sizeof(*segs));
    if (!c || !segs) {
        free(c);
        free(segs);
        return NULL;
    }
    c->net = n;
    c->fd = fd;
    c->segs = segs;
    c->state = CONN_OPEN;
    c->flusher.fn = conn_on_flush;
    bds__op_init(&c->recv_op, BDS_OP_RECV, fd, conn_on_recv, c);
    bds__op_init(&c->send_op, BDS_OP_SENDMSG, fd, conn_on_send, c);
    bds__op_init(&c->recv_cancel, BDS_OP_CANCEL, -1, conn_on_cancel, c);
    bds__op_init(&c->send_cancel, BDS_OP_CANCEL, -1, conn_on_cancel, c);
    bds__op_init(&c->close_op, BDS_OP_CLOSE, fd, conn_on_close, c);
    bds__dlist_init(&c->link);
    bds__dlist_insert_head(&n->conns, &c->link);
    n->live++;
    n->conns_open++;
    return c;
}

static void conn_free(bds_conn *c) {
    bds_net *n = c->net;
    BDS_ASSERT(c->state == CONN_CLOSED && c->seg_n == 0 && !c->flusher._queued);
    BDS_ASSERT(!bds__op_busy(&c->recv_op) && !bds__op_busy(&c->send_op) && !bds__op_busy(&c->close_op));
    bds__dlist_unlink(&c->link);
    n->live--;
    n->conns_open--;
    n->stats.closed++;
    free(c->segs);
    free(c);
}

static void conn_arm_recv(bds_conn *c) {
    if (c->state != CONN_OPEN || c->paused || c->after_flush || bds__op_busy(&c->recv_op))
        return;
    bds__op_submit(c->net->shard, &c->recv_op);
}

/* CLOSING -> CLOSED once no op of the connection is pending. */
static void conn_maybe_finish(bds_conn *c) {
    if (c->state != CONN_CLOSING)
        return;
    if (bds__op_busy(&c->recv_op) || bds__op_busy(&c->send_op) || bds__op_busy(&c->recv_cancel) ||
        bds__op_busy(&c->send_cancel))
        return;
    c->state = CONN_CLOSED;
    bds__op_submit(c->net->shard, &c->close_op);
}

void bds__conn_close(bds_conn *c, int err) {
    if (c->state != CONN_OPEN)
        return;
    c->state = CONN_CLOSING;
    c->err = err;
    conn_discard_output(c);
    c->tail_chunk = NULL;
    bds_shard *s = c->net->shard;
    if (bds__op_busy(&c->recv_op) && !bds__op_busy(&c->recv_cancel))
        bds__op_cancel(s, &c->recv_cancel, &c->recv_op);
    /* A send to a peer that never reads would wait forever: cancel it too. */
    if (bds__op_busy(&c->send_op) && !bds__op_busy(&c->send_cancel))
        bds__op_cancel(s, &c->send_cancel, &c->send_op);
    conn_maybe_finish(c);
}

void bds__conn_close_after_flush(bds_conn *c) {
    if (c->state != CONN_OPEN)
        return;
    c->after_flush = true;
    bds__conn_recv_pause(c);
    if (c->seg_n == 0 && !bds__op_busy(&c->send_op))
        bds__conn_close(c, 0);
}

void bds__conn_recv_pause(bds_conn *c) {
    c->paused = true;
    if (c->state == CONN_OPEN && bds__op_busy(&c->recv_op) && !bds__op_busy(&c->recv_cancel))
        bds__op_cancel(c->net->shard, &c->recv_cancel, &c->recv_op);
}

void bds__conn_recv_resume(bds_conn *c) {
    c->paused = false;
    conn_arm_recv(c);
}

static void conn_on_cancel(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_conn *c = ctx;
    (void)flags;
    /* 0 or -EALREADY: the target's final CQE is on its way. -ENOENT while the
     * target is in flight: this cancel aimed at an earlier submission of it (a
     * pause, then a resume), so aim again. */
    if (res == -ENOENT && op == &c->recv_cancel && c->recv_op._state == BDS_OP_INFLIGHT &&
        (c->state == CONN_CLOSING || c->paused))
        bds__op_cancel(c->net->shard, &c->recv_cancel, &c->recv_op);
    if (res == -ENOENT && op == &c->send_cancel && c->send_op._state == BDS_OP_INFLIGHT &&
        c->state == CONN_CLOSING)
        bds__op_cancel(c->net->shard, &c->send_cancel, &c->send_op);
    conn_maybe_finish(c);
}

static void conn_on_close(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_conn *c = ctx;
    (void)op, (void)flags, (void)res; /* close(2) errors leave the fd closed anyway */
    if (c->cb.on_close)
        c->cb.on_close(c, c->err, c->ctx);
    conn_free(c);
}

/* ---- receive --------------------------------------------------------------------- */

/* The recv errno family: true when the connection is gone. */
static bool conn_recv_fatal(int err) {
    switch (err) {
    case ENOBUFS:   /* the buffer ring ran dry: re-armed after this tick's recycling */
    case ECANCELED: /* our own cancel (pause or close) */
    case EINTR:
    case EAGAIN:
        return false;
    case ECONNRESET:
    case ETIMEDOUT:
    case EPIPE:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case ECONNREFUSED:
    case ENOTCONN:
    case ENOMEM:
        return true;
    case EBADF:
    case EFAULT:
    case EINVAL:
    case ENOTSOCK:
        BDS_UNREACHABLE(); /* our bug: a closed fd, a bad SQE */
    default:
        return true;
    }
}

static void conn_on_recv(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_conn *c = ctx;
    bds_net *n = c->net;
    (void)op;
    n->stats.recv_cqes++;
    if (res > 0) {
        BDS_ASSERT(flags & IORING_CQE_F_BUFFER);
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        n->stats.recv_bytes += (uint64_t)res;
        /* After a close (or a pause) the bytes of CQEs already produced are
         * still delivered while open: a pause loses nothing. */
        if (c->state == CONN_OPEN && c->cb.on_data)
            c->cb.on_data(c, bds__shard_buf(n->shard, bid), (size_t)res, c->ctx);
        bds__shard_buf_recycle(n->shard, bid);
    } else if (res == 0) {
        bds__conn_close(c, 0); /* EOF */
    } else {
        if (res == -ENOBUFS)
            n->stats.recv_enobufs++;
        if (conn_recv_fatal(-res))
            bds__conn_close(c, -res);
    }
    if (!(flags & IORING_CQE_F_MORE)) {
        if (c->state == CONN_OPEN && !c->paused && !c->after_flush)
            n->stats.recv_rearms++;
        conn_arm_recv(c);
        conn_maybe_finish(c);
    }
}

/* ---- send ------------------------------------------------------------------------ */

static bool conn_send_fatal(int err) {
    switch (err) {
    case EINTR:
    case EAGAIN:
    case ENOBUFS:
    case ENOMEM:    /* transient: the next flush retries */
    case ECANCELED: /* our own cancel at close */
        return false;
    case EBADF:
    case EFAULT:
    case EINVAL:
    case ENOTSOCK:
        BDS_UNREACHABLE();
    default: /* EPIPE, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ... */
        return true;
    }
}

static void conn_on_send(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_conn *c = ctx;
    bds_net *n = c->net;
    (void)op, (void)flags;
    if (res > 0) {
        size_t asked = 0;
        for (size_t i = 0; i < c->msg.msg_iovlen; i++)
            asked += c->iov[i].iov_len;
        if ((size_t)res < asked)
            n->stats.short_sends++;
        n->stats.send_bytes += (uint64_t)res;
        c->sent_bytes += (uint64_t)res;
        if (c->state == CONN_OPEN)
            conn_consume(c, (size_t)res);
    } else if (res < 0 && conn_send_fatal(-res)) {
        bds__conn_close(c, -res);
    }
    if (c->state != CONN_OPEN) {
        conn_maybe_finish(c);
        return;
    }
    if (c->seg_n) {
        conn_send(c); /* the remainder of a short send, or bytes queued meanwhile */
        return;
    }
    if (c->after_flush) {
        bds__conn_close(c, 0);
        return;
    }
    if (c->cb.on_drain)
        c->cb.on_drain(c, c->ctx);
}

/* ---- accept and adopt -------------------------------------------------------------- */

static void conn_tune(bds_net *n, int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (n->cfg.sndbuf > 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n->cfg.sndbuf, sizeof(n->cfg.sndbuf));
    if (n->cfg.rcvbuf > 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n->cfg.rcvbuf, sizeof(n->cfg.rcvbuf));
}

bds_conn *bds__conn_adopt(bds_net *n, int fd, const bds_conn_callbacks *cb, void *ctx) {
    bds_conn *c = conn_new(n, fd);
    if (!c)
        return NULL;
    conn_tune(n, fd);
    bds__conn_set_callbacks(c, cb, ctx);
    conn_arm_recv(c);
    return c;
}

void bds__conn_set_callbacks(bds_conn *c, const bds_conn_callbacks *cb, void *ctx) {
    c->cb = *cb;
    c->ctx = ctx;
}
void *bds__conn_ctx(const bds_conn *c) { return c->ctx; }
int bds__conn_fd(const bds_conn *c) { return c->fd; }
bds_net *bds__conn_net(const bds_conn *c) { return c->net; }

/* ---- listeners ------------------------------------------------------------------- */

int bds__listen_socket(const struct sockaddr *addr, socklen_t addr_len, int backlog) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 || bind(fd, addr, addr_len) < 0 ||
        listen(fd, backlog) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

uint64_t bds__fd_limit_raise(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0)
        return 0;
    if (r.rlim_cur < r.rlim_max) {
        rlim_t was = r.rlim_cur;
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0)
            r.rlim_cur = was;
    }
    return r.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)r.rlim_cur;
}

uint16_t bds__socket_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

static void listener_on_accept(bds_op *op, int32_t res, uint32_t flags, void *ctx);
static void listener_on_cancel(bds_op *op, int32_t res, uint32_t flags, void *ctx);

static void listener_on_backoff(bds_timer *t, void *ctx) {
    bds_listener *l = ctx;
    (void)t;
    if (!l->closing && !bds__op_busy(&l->accept_op))
        bds__op_submit(l->net->shard, &l->accept_op);
}

bds_status bds__listener_start(bds_net *n, int listen_fd, bds_on_accept_fn fn, void *ctx, bds_listener **out) {
    bds_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return BDS_E_NOMEM;
    l->net = n;
    l->fd = listen_fd;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* -1: no shedding, accept backs off */
    l->fn = fn;
    l->ctx = ctx;
    bds__op_init(&l->accept_op, BDS_OP_ACCEPT, listen_fd, listener_on_accept, l);
    bds__op_init(&l->cancel_op, BDS_OP_CANCEL, -1, listener_on_cancel, l);
    bds__timer_init(&l->backoff, listener_on_backoff, l);
    bds__dlist_init(&l->link);
    bds__dlist_insert_head(&n->listeners, &l->link);
    n->live++;
    bds__op_submit(n->shard, &l->accept_op);
    if (out)
        *out = l;
    return BDS_OK;
}

static void listener_maybe_free(bds_listener *l) {
    if (!l->closing || bds__op_busy(&l->accept_op) || bds__op_busy(&l->cancel_op))
        return;
    bds_net *n = l->net;
    bds__timer_cancel(bds__shard_timers(n->shard), &l->backoff);
    close(l->fd); /* no op references it any more */
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    bds__dlist_unlink(&l->link);
    n->live--;
    free(l);
}

void bds__listener_close(bds_listener *l) {
    if (l->closing)
        return;
    l->closing = true;
    if (bds__op_busy(&l->accept_op))
        bds__op_cancel(l->net->shard, &l->cancel_op, &l->accept_op);
    listener_maybe_free(l);
}

static void listener_on_cancel(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    (void)op, (void)res, (void)flags;
    listener_maybe_free(ctx);
}

/* The accept errno family: true when accepting should pause for a while. */
static bool listener_backoff_needed(int err) {
    switch (err) {
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
        return true; /* out of resources: retrying at once would spin */
    case ECONNABORTED:
    case EINTR:
    case EAGAIN:
    case EPROTO:
    case EPERM:
    case ECANCELED:
        return false;
    case EBADF:
    case EFAULT:
    case EINVAL:
    case ENOTSOCK:
    case EOPNOTSUPP:
        BDS_UNREACHABLE();
    default:
        return false;
    }
}

/* conns_max reached: the new connection goes at once. */
static void listener_shed_over_max(bds_net *n, int fd) {
    close(fd);
    n->stats.shed_conns_max++;
    if (!n->shedding_max)
        bds__log(n->cfg.log, BDS_LOG_WARN, "connection limit reached: closing new connections",
                 "shard_limit=%u", n->cfg.conns_max);
    n->shedding_max = true;
}

/* EMFILE/ENFILE: accepts the waiting connection on the spare descriptor's
 * number and closes it. Returns true when one was shed (accept again now). */
static bool listener_shed_on_spare(bds_listener *l, int err) {
    bds_net *n = l->net;
    if (l->spare_fd < 0)
        return false;
    close(l->spare_fd);
    int fd = -1;
    struct pollfd p = {.fd = l->fd, .events = POLLIN};
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN))
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC); /* does not block: poll saw it waiting */
    if (fd >= 0)
        close(fd);
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n->stats.shed_fd_limit++;
    if (!n->shedding_fds)
        bds__log(n->cfg.log, BDS_LOG_WARN, "out of file descriptors: closing new connections", "error=\"%s\"%s",
                 strerror(err), l->spare_fd < 0 ? " spare=none accept_retry_ms=10" : "");
    n->shedding_fds = true;
    return true;
}

static void listener_on_accept(bds_op *op, int32_t res, uint32_t flags, void *ctx) {
    bds_listener *l = ctx;
    bds_net *n = l->net;
    bool backoff = false;
    (void)op;
    if (res >= 0) {
        n->shedding_fds = false;
        if (l->closing) {
            close(res);
        } else if (n->cfg.conns_max && n->conns_open >= n->cfg.conns_max) {
            listener_shed_over_max(n, res);
        } else {
            n->shedding_max = false;
            bds_conn *c = conn_new(n, res);
            if (!c) {
                close(res);
            } else {
                n->stats.accepted++;
                conn_tune(n, res);
                l->fn(l, c, l->ctx);
                conn_arm_recv(c);
            }
        }
    } else {
        n->stats.accept_errors++;
        bool shed = (res == -EMFILE || res == -ENFILE) && !l->closing && listener_shed_on_spare(l, -res);
        backoff = !shed && listener_backoff_needed(-res);
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    if (l->closing) {
        listener_maybe_free(l);
    } else if (backoff) {
        bds_shard *s = n->shard;
        (void)bds__timer_arm(bds__shard_timers(s), &l->backoff, bds__shard_now(s) + NET_ACCEPT_BACKOFF_NS);
    } else {
        bds__op_submit(n->shard, &l->accept_op);
    }
}
