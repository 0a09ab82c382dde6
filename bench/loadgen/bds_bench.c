/* bds-bench: the load generator of the latency benchmark suite.
 *
 * Drives bidistream.v1.Pipeline/Process (docs/SERVICE.md) on 127.0.0.1 over h2c
 * (nghttp2 client sessions, prior knowledge), over TLS with --tls (OpenSSL 3,
 * ALPN h2), or, in --raw mode, the same gRPC length-prefixed Frames over bare
 * TCP for the ceiling (bench/peers/raw_echo.c). Prints one JSON line per run.
 *
 * Design. T threads, each with its own io_uring ring, its share of the C
 * connections and their streams, its own histogram and counters: nothing is
 * shared on the message path; the main thread merges after join. Each
 * connection keeps one recv and at most one send in flight; everything one
 * loop turn produces for a connection (many gRPC messages, many DATA frames)
 * leaves in one send. A recv takes at most --recv-bytes (closed loop: a share
 * of the bytes in flight, see recv_bytes_default), so the window moves as
 * several batches that client and server work on at the same time, not as one
 * batch each waits for in turn. The intended send time travels in the first 8 bytes of
 * the payload, which every server echoes unchanged, so a reply needs no
 * lookup and replies may come back in any order across keys.
 *
 * Modes.
 *   closed  every stream keeps W messages outstanding: each reply sends one
 *           more. Latency = receive time - send time.
 *   open    messages are due at a fixed total rate (split over threads,
 *           round-robin over each thread's streams), whatever the replies do.
 *           Latency = receive time - *intended* time (openloop.h: no
 *           coordinated omission). A stream whose unsent backlog exceeds
 *           --backlog bytes is skipped; if all are, the schedule falls behind
 *           and the late messages carry their original intended times.
 *
 * TLS. The handshake is done per connection at setup, before the clock starts,
 * on the blocking socket; then the session's BIOs become a pair of memory BIOs
 * and the I/O model stays the same: the ring's recv bytes go into the read BIO,
 * SSL_read hands the plaintext to nghttp2; everything nghttp2 produced in one
 * loop turn is encrypted with one SSL_write (full-size records, not one record
 * per frame) and the write BIO's bytes leave in the connection's one send. The
 * same client code runs against every server, so its cost is the same for all;
 * --tls-ciphersuites pins the suite, so every server runs the same cipher.
 *
 * Time line (shared by all threads): connect, t0 = start, warm-up until
 * t0+warmup, measurement until t_end = t0+warmup+duration (replies received in
 * the window count for msg/s; replies of messages intended in the window go
 * into the histogram), then stop sending, wait up to --drain for replies,
 * half-close every stream, wait for the trailers, exit.
 *
 * The client must never be the bottleneck: it reports its own CPU use
 * (getrusage over the window, in cores, and in ns per reply received) next to
 * the server's (from /proc/<pid>/stat when --server-pid is given), so a reader
 * can tell.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <liburing.h>
#include <nghttp2/nghttp2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bframe.h"
#include "hist.h"
#include "openloop.h"

#ifndef BDS_LIBURING_VERSION
#define BDS_LIBURING_VERSION "unknown"
#endif

#define RECV_BUF (256u << 10)
#define MAX_CPUS 64
#define MAX_TAGS 32
#define GRPC_PATH "/bidistream.v1.Pipeline/Process"

/* ==== options ======================================================================= */

enum { MODE_CLOSED, MODE_OPEN };

static struct {
    int port;
    int mode;
    bool raw;
    int conns, streams, outstanding;
    uint64_t rate;
    size_t payload;
    uint32_t keys, work_us;
    double duration_s, warmup_s, drain_s;
    int threads;
    int cpus[MAX_CPUS], ncpus;
    long spin_us;
    long tick_us;
    long server_pid;
    size_t backlog;
    size_t recv_bytes; /* bytes one recv may take; 0 until parse_opts picks the default */
    bool progress;
    bool reopen;
    bool tls;
    const char *tls_ca;           /* verify the server against this CA (PEM); NULL: no verification */
    const char *tls_name;         /* SNI and the name verified in the certificate */
    const char *tls_ciphersuites; /* TLS 1.3 suites offered (OpenSSL syntax); NULL: OpenSSL's default */
    const char *out;
    const char *tags[MAX_TAGS];
    int ntags;
} opt = {
    .port = 50051, .mode = MODE_CLOSED, .conns = 1, .streams = 1, .outstanding = 1,
    .payload = 64, .keys = 1, .duration_s = 5, .warmup_s = 1, .drain_s = 2, .threads = 1,
    .backlog = 1u << 20, .tls_name = "localhost",
};

static void usage(void)
{
    fprintf(stderr,
        "usage: bds-bench [options]\n"
        "  --port N            server port on 127.0.0.1 (50051)\n"
        "  --raw               5-byte-prefixed Frames over bare TCP (the ceiling), no HTTP/2\n"
        "  --tls               HTTP/2 over TLS (1.2+, ALPN h2; the handshake is done before the clock)\n"
        "  --tls-ca FILE       verify the server's certificate with this CA (PEM); without it the\n"
        "                      certificate is not verified (the JSON line says which)\n"
        "  --tls-name NAME     SNI and the name checked in the certificate (localhost)\n"
        "  --tls-ciphersuites L TLS 1.3 cipher suites offered, OpenSSL syntax (e.g.\n"
        "                      TLS_AES_128_GCM_SHA256: the same cipher for every server)\n"
        "  --mode closed|open  closed loop (default) or open loop at --rate\n"
        "  --conns C           connections (1)\n"
        "  --streams S         streams per connection (1)\n"
        "  --outstanding W     closed loop: messages in flight per stream (1)\n"
        "  --rate R            open loop: messages per second, in total\n"
        "  --payload B         payload bytes, >= 8 (64)\n"
        "  --keys K            ordering keys per stream (1)\n"
        "  --work-us U         work_us of every Frame (0)\n"
        "  --duration S        measured seconds (5)\n"
        "  --warmup S          seconds before measuring (1)\n"
        "  --drain S           seconds to wait for replies and trailers at the end (2)\n"
        "  --threads T         client threads (1)\n"
        "  --cpus LIST         pin client threads to these CPUs, round-robin (e.g. 0 or 0,2)\n"
        "  --spin-us N         poll up to N µs before sleeping (0)\n"
        "  --tick-us N         open loop: send at most once per N µs, in batches (0: at each\n"
        "                      intended time). Late sends still count from the intended time,\n"
        "                      so the tick shows in latency (<= N µs); it saves wake-ups\n"
        "  --backlog B         open loop: unsent bytes per stream before it is skipped (1 MiB)\n"
        "  --recv-bytes B      bytes one recv may take, 4 KiB..256 KiB (closed loop, --raw: a quarter\n"
        "                      of a connection's bytes in flight, at least 8 KiB; HTTP/2: half, at\n"
        "                      least 32 KiB; open loop: 256 KiB).\n"
        "                      Replies are answered a recv at a time, so a smaller recv keeps\n"
        "                      several batches in flight instead of one window-sized batch\n"
        "                      bouncing between two sleeping processes. It changes no message\n"
        "                      and no measured quantity\n"
        "  --reopen            a stream the server ends before the client half-closes (e.g.\n"
        "                      RESOURCE_EXHAUSTED from a hard-reject policy) is opened again\n"
        "                      at once; its unanswered messages count as failed_stream_msgs\n"
        "  --server-pid P      sample the server's CPU and RSS from /proc/P\n"
        "  --tag K=V           extra string field in the JSON line's \"tags\" (repeatable)\n"
        "  --out FILE          append the JSON line to FILE (default stdout)\n"
        "  --progress          a status line on stderr every second\n");
    exit(2);
}

static double parse_num(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0) {
        fprintf(stderr, "bds-bench: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

/* The default recv size. In the closed loop, the replies of one recv are
 * answered together and leave in one send; with a recv as large as all the
 * bytes in flight (the old fixed 256 KiB), a server that answers a whole
 * recv with one send (the raw echo) turns the window into one batch: client
 * and server take turns, each sleeps while the other works, every round trip
 * pays two wake-ups (on this VM tens of µs each, and the waker's IPI) and
 * neither side is ever busy. A quarter of the connection's bytes in flight
 * keeps about four batches moving, so each side finds the next batch waiting
 * when it is done with one. Stream scenario against the raw echo, interleaved
 * reps: 256 KiB 2.4-4.6 M msg/s; 8 KiB 7.7-8.8 M; a quarter (12.6 KiB)
 * 7.3-9.0 M; half (25 KiB) 3.9-5.7 M.
 * HTTP/2 servers cut their output into DATA frames and sends of their own
 * (bidistreamd: about a third of the window per send), so a quarter only adds
 * recvs (client CPU per message ~15 % higher, msg/s the same): they get half the
 * bytes in flight, at least 32 KiB (two full TLS records).
 * The floors keep the recv count per message low when little is in flight
 * (ping-pong takes whatever comes). */
static size_t recv_bytes_default(void)
{
    if (opt.mode == MODE_OPEN)
        return RECV_BUF;
    size_t frame = BDS_GRPC_PREFIX + 32 + opt.payload; /* prefix, key, seq, tags: about */
    size_t inflight = (size_t)opt.streams * (size_t)opt.outstanding * frame;
    size_t r = opt.raw ? inflight / 4 : inflight / 2;
    size_t floor = opt.raw ? 8u << 10 : 32u << 10;
    if (r < floor)
        r = floor;
    return r > RECV_BUF ? RECV_BUF : r;
}

static void parse_opts(int argc, char **argv)
{
    static const struct option lo[] = {
        { "port", 1, 0, 'p' }, { "raw", 0, 0, 'R' }, { "mode", 1, 0, 'm' },
        { "conns", 1, 0, 'c' }, { "streams", 1, 0, 's' }, { "outstanding", 1, 0, 'w' },
        { "rate", 1, 0, 'r' }, { "payload", 1, 0, 'b' }, { "keys", 1, 0, 'k' },
        { "work-us", 1, 0, 'u' }, { "duration", 1, 0, 'd' }, { "warmup", 1, 0, 'W' },
        { "drain", 1, 0, 'D' }, { "threads", 1, 0, 't' }, { "cpus", 1, 0, 'C' },
        { "spin-us", 1, 0, 'S' }, { "backlog", 1, 0, 'B' }, { "server-pid", 1, 0, 'P' },
        { "tick-us", 1, 0, 'K' }, { "tag", 1, 0, 'T' }, { "out", 1, 0, 'o' }, { "progress", 0, 0, 'g' },
        { "reopen", 0, 0, 'O' }, { "tls", 0, 0, 'L' }, { "tls-ca", 1, 0, 'A' },
        { "tls-name", 1, 0, 'N' }, { "tls-ciphersuites", 1, 0, 'Y' },
        { "recv-bytes", 1, 0, 'V' },
        { "help", 0, 0, 'h' }, { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'p': opt.port = (int)parse_num(optarg, "port"); break;
        case 'R': opt.raw = true; break;
        case 'm':
            if (!strcmp(optarg, "closed")) opt.mode = MODE_CLOSED;
            else if (!strcmp(optarg, "open")) opt.mode = MODE_OPEN;
            else usage();
            break;
        case 'c': opt.conns = (int)parse_num(optarg, "conns"); break;
        case 's': opt.streams = (int)parse_num(optarg, "streams"); break;
        case 'w': opt.outstanding = (int)parse_num(optarg, "outstanding"); break;
        case 'r': opt.rate = (uint64_t)parse_num(optarg, "rate"); break;
        case 'b': opt.payload = (size_t)parse_num(optarg, "payload"); break;
        case 'k': opt.keys = (uint32_t)parse_num(optarg, "keys"); break;
        case 'u': opt.work_us = (uint32_t)parse_num(optarg, "work-us"); break;
        case 'd': opt.duration_s = parse_num(optarg, "duration"); break;
        case 'W': opt.warmup_s = parse_num(optarg, "warmup"); break;
        case 'D': opt.drain_s = parse_num(optarg, "drain"); break;
        case 't': opt.threads = (int)parse_num(optarg, "threads"); break;
        case 'C': {
            char *s = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t && opt.ncpus < MAX_CPUS; t = strtok_r(NULL, ",", &save))
                opt.cpus[opt.ncpus++] = (int)parse_num(t, "cpu");
            free(s);
            break;
        }
        case 'S': opt.spin_us = (long)parse_num(optarg, "spin-us"); break;
        case 'K': opt.tick_us = (long)parse_num(optarg, "tick-us"); break;
        case 'B': opt.backlog = (size_t)parse_num(optarg, "backlog"); break;
        case 'V': opt.recv_bytes = (size_t)parse_num(optarg, "recv-bytes"); break;
        case 'P': opt.server_pid = (long)parse_num(optarg, "server-pid"); break;
        case 'T':
            if (opt.ntags < MAX_TAGS && strchr(optarg, '='))
                opt.tags[opt.ntags++] = optarg;
            else
                usage();
            break;
        case 'o': opt.out = optarg; break;
        case 'g': opt.progress = true; break;
        case 'O': opt.reopen = true; break;
        case 'L': opt.tls = true; break;
        case 'A': opt.tls_ca = optarg; break;
        case 'N': opt.tls_name = optarg; break;
        case 'Y': opt.tls_ciphersuites = optarg; break;
        default: usage();
        }
    }
    if (optind != argc || opt.conns < 1 || opt.streams < 1 || opt.outstanding < 1 ||
        opt.threads < 1 || opt.keys < 1 || opt.payload < 8 || opt.payload > (4u << 20) - 64 ||
        opt.duration_s <= 0 || (opt.mode == MODE_OPEN && opt.rate == 0) || (opt.tls && opt.raw) ||
        (!opt.tls && (opt.tls_ca || opt.tls_ciphersuites)))
        usage();
    if (opt.threads > opt.conns)
        opt.threads = opt.conns; /* a thread owns whole connections */
    if (opt.recv_bytes && (opt.recv_bytes < (4u << 10) || opt.recv_bytes > RECV_BUF))
        usage();
    if (!opt.recv_bytes)
        opt.recv_bytes = recv_bytes_default();
}

/* ==== small helpers ================================================================== */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bds-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t need)
{
    if (b->cap - b->len >= need)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < need)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        die("out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* ==== per-thread state ================================================================ */

struct thr;
struct conn;

struct stream {
    struct conn *c;
    int32_t id;          /* HTTP/2 stream id; 0 in raw mode */
    struct buf pend;     /* gRPC messages not yet taken by nghttp2 (raw: unused) */
    size_t pend_off;     /* bytes of pend already taken */
    struct buf rx;       /* a partial gRPC message carried to the next chunk */
    uint64_t seq;        /* last seq sent */
    uint32_t inflight;   /* sent and not yet answered */
    uint32_t window;     /* closed loop: messages to keep in flight */
    uint64_t *last_seq;  /* per key index: last seq received, to check same-key order */
    bool deferred;       /* the data provider returned DEFERRED: resume on new data */
    bool eof;            /* half-close requested */
    bool closed;
    bool reopen;         /* --reopen: ended by the server mid-run, to be opened again */
    bool got_status;
    int grpc_status;
};

struct conn {
    struct thr *t;
    int fd;
    nghttp2_session *h2;  /* NULL in raw mode */
    SSL *ssl;             /* --tls: the session, between memory BIOs; NULL otherwise */
    BIO *rbio, *wbio;     /* --tls: ciphertext in (from recv) and out (to send); owned by ssl */
    struct buf ptx;       /* --tls: plaintext from nghttp2 to encrypt in one SSL_write */
    struct stream *streams;
    int nstreams;
    uint8_t *rbuf;        /* the recv in flight lands here */
    struct buf out;       /* bytes waiting for the send slot */
    struct buf snd;       /* the send in flight */
    size_t snd_off;
    bool sending, dirty, dead;
    int ops;
    struct conn *next_dirty;
};

struct thr {
    int id;
    pthread_t th;
    struct io_uring ring;
    struct conn *conns;
    int nconns;
    struct conn *dirty;
    uint64_t t0, t_meas, t_end, t_drain, t_hard;
    bds_openloop ol;
    uint64_t rr;          /* open loop: next stream, round-robin */
    int nlive;            /* streams not closed */
    int nreopen;          /* streams marked reopen */
    uint8_t *tail;        /* every message's encoded payload and work_us fields */
    size_t tail_len;
    size_t tail_ts_at;    /* where in tail the payload (its 8-byte timestamp) starts */
    uint8_t *ptx_in;      /* --tls: decrypted bytes of one SSL_read, fed to nghttp2 at once */
    bds_hist hist;
    /* counters (this thread only; read by main after join, progress reads relaxed) */
    _Atomic uint64_t sent, recv;
    uint64_t recvs, sends; /* completed recv and send operations: syscall-equivalents */
    uint64_t recv_window, order_violations, bad_replies, conn_errors, rst_streams;
    uint64_t failed_stream_msgs; /* sent on a stream that ended before answering them */
    uint64_t streams_reopened;
    uint64_t status[17];
    char authority[32];
};

static struct thr *g_thr;
static SSL_CTX *g_ssl_ctx;
static char g_tls_version[32], g_tls_cipher[64]; /* negotiated, as thread 0's first connection saw it */
static _Atomic int g_ready;
static _Atomic uint64_t g_t0; /* 0 until the main thread starts the clock */

/* ==== messages ========================================================================= */

static void conn_mark_dirty(struct conn *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = c->t->dirty;
        c->t->dirty = c;
    }
}

/* The key index of message seq (seq counts from 1): keys take turns. */
static inline uint32_t seq_key(uint64_t seq)
{
    return opt.keys == 1 ? 0 : (uint32_t)((seq - 1) % opt.keys);
}

/* Writes "k<k in decimal>" at out (room for 11 bytes); returns its length.
 * By hand: snprintf cost more than everything else of building a message. */
static size_t key_put(char *out, uint32_t k)
{
    char tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + k % 10);
        k /= 10;
    } while (k);
    out[0] = 'k';
    for (size_t i = 0; i < n; i++)
        out[1 + i] = tmp[n - 1 - i];
    return n + 1;
}

/* Builds one message with intended time t_ns into the stream's pending bytes. */
static void stream_emit(struct stream *s, uint64_t t_ns)
{
    struct thr *t = s->c->t;
    char key[16];
    s->seq++;
    size_t kl = key_put(key, seq_key(s->seq));
    struct buf *dst = s->c->h2 ? &s->pend : &s->c->out;
    /* Room for the prefix, the head at its largest and the tail. */
    buf_reserve(dst, BDS_GRPC_PREFIX + 1 + 10 + kl + 11 + t->tail_len);
    uint8_t *m = dst->p + dst->len;
    size_t n = bds_bframe_encode_head((const uint8_t *)key, kl, s->seq, m + BDS_GRPC_PREFIX);
    /* The tail (payload, work_us) is the same for every message but for the
     * payload's first 8 bytes: the intended time, echoed unchanged, so the
     * reply carries its own start time. */
    memcpy(m + BDS_GRPC_PREFIX + n, t->tail, t->tail_len);
    memcpy(m + BDS_GRPC_PREFIX + n + t->tail_ts_at, &t_ns, 8);
    n += t->tail_len;
    m[0] = 0; /* gRPC prefix: uncompressed, big-endian length */
    m[1] = (uint8_t)(n >> 24);
    m[2] = (uint8_t)(n >> 16);
    m[3] = (uint8_t)(n >> 8);
    m[4] = (uint8_t)n;
    dst->len += BDS_GRPC_PREFIX + n;
    s->inflight++;
    atomic_store_explicit(&t->sent, atomic_load_explicit(&t->sent, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (s->c->h2 && s->deferred) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->h2, s->id);
    }
    conn_mark_dirty(s->c);
}

static size_t stream_backlog(const struct stream *s)
{
    return s->c->h2 ? s->pend.len - s->pend_off : s->c->out.len;
}

static void on_reply(struct stream *s, const uint8_t *m, size_t n, uint64_t now)
{
    struct thr *t = s->c->t;
    bds_bframe f;
    if (bds_bframe_decode(m, n, &f) < 0 || f.payload_len != opt.payload || f.seq == 0) {
        t->bad_replies++;
        return;
    }
    uint64_t sent_ns;
    memcpy(&sent_ns, f.payload, 8);
    uint32_t k = seq_key(f.seq);
    if (f.seq <= s->last_seq[k])
        t->order_violations++; /* same key, reply older than one already seen */
    s->last_seq[k] = f.seq;
    if (s->inflight)
        s->inflight--;
    atomic_store_explicit(&t->recv, atomic_load_explicit(&t->recv, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (now >= t->t_meas && now < t->t_end)
        t->recv_window++;
    if (sent_ns >= t->t_meas && sent_ns < t->t_end)
        bds_hist_record(&t->hist, now > sent_ns ? now - sent_ns : 0);
    if (opt.mode == MODE_CLOSED && now < t->t_end && !s->eof)
        stream_emit(s, now);
}

static void stream_deliver(struct stream *s, const uint8_t *m, uint64_t now)
{
    bool comp;
    uint32_t len = bds_grpc_prefix_len(m, &comp);
    if (comp)
        s->c->t->bad_replies++;
    else
        on_reply(s, m + BDS_GRPC_PREFIX, len, now);
}

/* Moves up to want bytes from *d to rx; returns true when all want are there. */
static bool stream_rx_fill(struct stream *s, size_t want, const uint8_t **d, size_t *n)
{
    size_t k = want - s->rx.len;
    if (k > *n)
        k = *n;
    buf_append(&s->rx, *d, k);
    *d += k;
    *n -= k;
    return s->rx.len == want;
}

/* Feeds received message bytes; complete gRPC messages go to on_reply. A
 * message cut by the end of a recv waits in rx, and the next recv copies only
 * the bytes that complete it: every recv ends mid-message when recvs are
 * smaller than the bytes in flight, so copying the whole chunk there (as this
 * once did) cost more than decoding it. */
static void stream_feed(struct stream *s, const uint8_t *d, size_t n, uint64_t now)
{
    if (s->rx.len) {
        if (s->rx.len < BDS_GRPC_PREFIX && !stream_rx_fill(s, BDS_GRPC_PREFIX, &d, &n))
            return;
        bool comp;
        size_t want = BDS_GRPC_PREFIX + (size_t)bds_grpc_prefix_len(s->rx.p, &comp);
        if (!stream_rx_fill(s, want, &d, &n))
            return;
        stream_deliver(s, s->rx.p, now); /* on_reply never feeds the stream: rx stays */
        s->rx.len = 0;
    }
    size_t pos = 0;
    while (n - pos >= BDS_GRPC_PREFIX) {
        bool comp;
        uint32_t len = bds_grpc_prefix_len(d + pos, &comp);
        if (n - pos - BDS_GRPC_PREFIX < len)
            break;
        stream_deliver(s, d + pos, now);
        pos += BDS_GRPC_PREFIX + len;
    }
    if (pos < n)
        buf_append(&s->rx, d + pos, n - pos);
}

/* ==== nghttp2 client callbacks ========================================================== */

static ssize_t h2_read_data(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)h2; (void)id; (void)ud;
    struct stream *s = src->ptr;
    size_t avail = s->pend.len - s->pend_off;
    if (avail == 0) {
        s->pend.len = s->pend_off = 0;
        if (s->eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    memcpy(buf, s->pend.p + s->pend_off, n);
    s->pend_off += n;
    if (s->pend_off == s->pend.len)
        s->pend.len = s->pend_off = 0;
    return (ssize_t)n;
}

static int h2_on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *d, size_t n,
                      void *ud)
{
    (void)flags;
    (void)ud;
    struct stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s)
        stream_feed(s, d, n, now_ns());
    return 0;
}

static int h2_on_header(nghttp2_session *h2, const nghttp2_frame *fr, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    (void)flags; (void)ud;
    struct stream *s = nghttp2_session_get_stream_user_data(h2, fr->hd.stream_id);
    if (s && namelen == 11 && !memcmp(name, "grpc-status", 11)) {
        char v[8] = { 0 };
        memcpy(v, value, valuelen < 7 ? valuelen : 7);
        s->grpc_status = atoi(v);
        s->got_status = true;
    }
    return 0;
}

static int h2_on_close(nghttp2_session *h2, int32_t id, uint32_t err, void *ud)
{
    (void)ud;
    struct stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (!s || s->closed)
        return 0;
    struct thr *t = s->c->t;
    s->closed = true;
    t->nlive--;
    if (s->got_status && s->grpc_status >= 0 && s->grpc_status <= 16)
        t->status[s->grpc_status]++;
    else if (err)
        t->rst_streams++;
    else
        t->status[2]++; /* ended without a grpc-status: UNKNOWN, as a gRPC client says */
    /* Messages sent (or queued to send) on a stream that ended without
     * answering them: rejected or lost with it. */
    t->failed_stream_msgs += s->inflight;
    s->inflight = 0;
    if (opt.reopen && !s->eof && !s->c->dead && now_ns() < t->t_end) {
        s->reopen = true; /* not from inside nghttp2's callback: thr_reopen does it */
        t->nreopen++;
    }
    return 0;
}

static nghttp2_session_callbacks *g_cbs;

static void h2_callbacks_init(void)
{
    nghttp2_session_callbacks_new(&g_cbs);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs, h2_on_data);
    nghttp2_session_callbacks_set_on_header_callback(g_cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, h2_on_close);
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, \
                   NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE }

static void stream_open(struct stream *s)
{
    struct conn *c = s->c;
    if (!c->h2) {
        s->id = 0;
        return;
    }
    nghttp2_nv hdrs[] = {
        NV(":method", "POST"), NV(":path", GRPC_PATH),
        { (uint8_t *)":scheme", (uint8_t *)(c->ssl ? "https" : "http"), 7, c->ssl ? 5 : 4,
          NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE },
        { (uint8_t *)":authority", (uint8_t *)c->t->authority, 10, strlen(c->t->authority),
          NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE },
        NV("content-type", "application/grpc"), NV("te", "trailers"),
        NV("user-agent", "bds-bench/0.1"),
    };
    nghttp2_data_provider dp = { .source.ptr = s, .read_callback = h2_read_data };
    s->id = nghttp2_submit_request(c->h2, NULL, hdrs, sizeof hdrs / sizeof hdrs[0], &dp, s);
    if (s->id < 0)
        die("nghttp2_submit_request: %s", nghttp2_strerror(s->id));
}

/* ==== io_uring plumbing ================================================================= */

enum { OP_RECV = 1, OP_SEND = 2 };

static struct io_uring_sqe *get_sqe(struct io_uring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(r);
    if (!sqe) {
        io_uring_submit(r);
        sqe = io_uring_get_sqe(r);
        if (!sqe)
            die("no SQE");
    }
    return sqe;
}

static void conn_arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(&c->t->ring);
    io_uring_prep_recv(sqe, c->fd, c->rbuf, opt.recv_bytes, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
    c->ops++;
}

static void conn_send_from(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(&c->t->ring);
    io_uring_prep_send(sqe, c->fd, c->snd.p + c->snd_off, c->snd.len - c->snd_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
    c->ops++;
    c->sending = true;
}

static void conn_fail(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    c->t->conn_errors++;
    for (int i = 0; i < c->nstreams; i++) {
        if (!c->streams[i].closed) {
            c->streams[i].closed = true;
            c->t->nlive--;
        }
    }
}

static void conn_on_recv(struct conn *c, int res, uint64_t now);

/* ==== TLS ==================================================================================== */

static void tls_die(const char *what)
{
    char e[256] = "no OpenSSL error";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, e, sizeof e);
    die("%s: %s", what, e);
}

static void tls_ctx_init(void)
{
    g_ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ssl_ctx)
        tls_die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(g_ssl_ctx, TLS1_2_VERSION);
    static const unsigned char alpn[] = "\x02h2";
    if (SSL_CTX_set_alpn_protos(g_ssl_ctx, alpn, sizeof alpn - 1)) /* 0 is success here */
        tls_die("SSL_CTX_set_alpn_protos");
    if (opt.tls_ciphersuites && !SSL_CTX_set_ciphersuites(g_ssl_ctx, opt.tls_ciphersuites))
        tls_die("SSL_CTX_set_ciphersuites");
    if (opt.tls_ca) {
        if (!SSL_CTX_load_verify_locations(g_ssl_ctx, opt.tls_ca, NULL))
            tls_die(opt.tls_ca);
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_NONE, NULL);
    }
}

/* Handshake on the blocking socket (setup time, before the clock starts), then
 * memory BIOs for the rest of the connection's life. */
static void tls_connect(struct conn *c)
{
    SSL *ssl = SSL_new(g_ssl_ctx);
    if (!ssl || !SSL_set_fd(ssl, c->fd))
        tls_die("SSL_new");
    SSL_set_tlsext_host_name(ssl, opt.tls_name);
    if (opt.tls_ca && !SSL_set1_host(ssl, opt.tls_name))
        tls_die("SSL_set1_host");
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK)
            die("TLS handshake: certificate not verified: %s", X509_verify_cert_error_string(v));
        tls_die("TLS handshake");
    }
    const unsigned char *proto;
    unsigned plen;
    SSL_get0_alpn_selected(ssl, &proto, &plen);
    if (plen != 2 || memcmp(proto, "h2", 2))
        die("TLS: the server did not select ALPN h2");
    if (c->t->id == 0 && c == &c->t->conns[0]) {
        snprintf(g_tls_version, sizeof g_tls_version, "%s", SSL_get_version(ssl));
        snprintf(g_tls_cipher, sizeof g_tls_cipher, "%s", SSL_get_cipher_name(ssl));
    }
    /* The socket BIO is unbuffered and read_ahead is off, so no ciphertext is
     * left behind in it: what the server sends next (TLS 1.3 session tickets
     * included) arrives through the ring. SSL_set_bio frees the socket BIO
     * (BIO_NOCLOSE: the fd stays open). */
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->rbio || !c->wbio)
        tls_die("BIO_new");
    BIO_set_mem_eof_return(c->rbio, -1); /* empty = "retry", not EOF */
    SSL_set_bio(ssl, c->rbio, c->wbio);
    c->ssl = ssl;
}

/* Encrypts the plaintext nghttp2 produced this turn in one SSL_write (records
 * of up to 16 KiB) and moves the ciphertext to out. A memory BIO never
 * refuses a write, so SSL_write takes everything. */
static bool tls_encrypt(struct conn *c)
{
    if (c->ptx.len) {
        if (c->ptx.len > INT_MAX)
            die("TLS: %zu bytes to encrypt at once", c->ptx.len);
        int n = SSL_write(c->ssl, c->ptx.p, (int)c->ptx.len);
        if (n <= 0 || (size_t)n != c->ptx.len) {
            fprintf(stderr, "bds-bench: SSL_write: error %d\n", SSL_get_error(c->ssl, n));
            return false;
        }
        c->ptx.len = 0;
    }
    size_t pend = BIO_ctrl_pending(c->wbio); /* also alerts and key updates SSL_read queued */
    if (pend) {
        buf_reserve(&c->out, pend);
        int n = BIO_read(c->wbio, c->out.p + c->out.len, (int)pend);
        if (n > 0)
            c->out.len += (size_t)n;
    }
    return true;
}

/* Decrypts what the recv brought and feeds it to nghttp2. Returns false when
 * the connection is over (close_notify or an error); the caller re-arms
 * nothing then. */
static bool tls_decrypt(struct conn *c, size_t n)
{
    if (BIO_write(c->rbio, c->rbuf, (int)n) != (int)n)
        tls_die("BIO_write");
    for (;;) {
        int r = SSL_read(c->ssl, c->t->ptx_in, (int)RECV_BUF);
        if (r > 0) {
            ssize_t h = nghttp2_session_mem_recv(c->h2, c->t->ptx_in, (size_t)r);
            if (h < 0) {
                fprintf(stderr, "bds-bench: nghttp2_session_mem_recv: %s\n", nghttp2_strerror((int)h));
                conn_fail(c);
                return false;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return true;
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify: as EOF */
            conn_on_recv(c, 0, 0);
            return false;
        }
        char es[256] = "";
        ERR_error_string_n(ERR_get_error(), es, sizeof es);
        fprintf(stderr, "bds-bench: SSL_read: error %d %s\n", e, es);
        conn_fail(c);
        return false;
    }
}

/* Moves what nghttp2 wants to write into out, and starts a send if idle. */
static void conn_flush(struct conn *c)
{
    c->dirty = false;
    if (c->dead)
        return;
    if (c->h2) {
        for (;;) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(c->h2, &d);
            if (n < 0) {
                fprintf(stderr, "bds-bench: nghttp2_session_mem_send: %s\n", nghttp2_strerror((int)n));
                conn_fail(c);
                return;
            }
            if (n == 0)
                break;
            buf_append(c->ssl ? &c->ptx : &c->out, d, (size_t)n);
        }
    }
    if (c->ssl && !tls_encrypt(c)) {
        conn_fail(c);
        return;
    }
    if (!c->sending && c->out.len) {
        struct buf tmp = c->snd;
        c->snd = c->out;
        c->out = tmp;
        c->out.len = 0;
        c->snd_off = 0;
        conn_send_from(c);
    }
}

static void conn_on_recv(struct conn *c, int res, uint64_t now)
{
    if (res <= 0) { /* EOF or error: an error only if a stream was still open */
        bool live = false;
        for (int i = 0; i < c->nstreams; i++)
            live |= !c->streams[i].closed;
        if (live)
            conn_fail(c);
        c->dead = true;
        return;
    }
    if (c->ssl) {
        if (!tls_decrypt(c, (size_t)res))
            return;
    } else if (c->h2) {
        ssize_t r = nghttp2_session_mem_recv(c->h2, c->rbuf, (size_t)res);
        if (r < 0) {
            fprintf(stderr, "bds-bench: nghttp2_session_mem_recv: %s\n", nghttp2_strerror((int)r));
            conn_fail(c);
            return;
        }
    } else {
        stream_feed(&c->streams[0], c->rbuf, (size_t)res, now);
    }
    conn_mark_dirty(c);
    conn_arm_recv(c);
}

static void conn_on_send(struct conn *c, int res)
{
    c->sending = false;
    if (res < 0) {
        conn_fail(c);
        return;
    }
    c->snd_off += (size_t)res;
    if (c->snd_off < c->snd.len) {
        conn_send_from(c);
        return;
    }
    c->snd.len = 0;
    conn_mark_dirty(c); /* out may have filled meanwhile */
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The server may still be starting: retry for up to 5 s. */
    for (int i = 0;; i++) {
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            break;
        if (errno != ECONNREFUSED || i == 500)
            die("connect 127.0.0.1:%d: %s", port, strerror(errno));
        usleep(10000);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* ==== the thread ========================================================================= */

static void thr_setup(struct thr *t, int nconns)
{
    bds_hist_init(&t->hist);
    snprintf(t->authority, sizeof t->authority, "127.0.0.1:%d", opt.port);
    uint8_t *payload = malloc(opt.payload);
    for (size_t i = 0; i < opt.payload; i++)
        payload[i] = (uint8_t)(i * 131u + 7u);
    bds_bframe tail = { .payload = payload, .payload_len = opt.payload, .work_us = opt.work_us };
    t->tail = malloc(opt.payload + 32); /* payload, two tags, two varints */
    t->tail_len = bds_bframe_encode_tail(&tail, t->tail, &t->tail_ts_at);
    free(payload);
    if (opt.tls)
        t->ptx_in = malloc(RECV_BUF);
    struct io_uring_params p = { 0 };
    /* Task work runs when this thread enters the kernel, not by interrupting
     * it; fine for a thread that waits on its ring. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    if (opt.spin_us)
        p.flags = IORING_SETUP_CQSIZE; /* spinning peeks CQEs without entering */
    p.cq_entries = 4096;
    int rc = io_uring_queue_init_params(1024, &t->ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof p);
        rc = io_uring_queue_init_params(1024, &t->ring, &p);
    }
    if (rc < 0)
        die("io_uring_queue_init: %s", strerror(-rc));
    t->nconns = nconns;
    t->conns = calloc((size_t)nconns, sizeof *t->conns);
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &t->conns[i];
        c->t = t;
        c->fd = connect_to(opt.port);
        if (opt.tls)
            tls_connect(c);
        c->rbuf = malloc(RECV_BUF);
        int ns = opt.raw ? 1 : opt.streams;
        c->nstreams = ns;
        c->streams = calloc((size_t)ns, sizeof *c->streams);
        for (int j = 0; j < ns; j++) {
            struct stream *s = &c->streams[j];
            s->c = c;
            s->window = (uint32_t)(opt.raw ? opt.outstanding * opt.streams : opt.outstanding);
            s->last_seq = calloc(opt.keys, sizeof *s->last_seq);
        }
        t->nlive += ns;
        if (!opt.raw) {
            nghttp2_option *o;
            nghttp2_option_new(&o);
            /* Let every stream open at once; the server's SETTINGS still rule. */
            nghttp2_option_set_peer_max_concurrent_streams(o, 1u << 20);
            if (nghttp2_session_client_new2(&c->h2, g_cbs, c, o))
                die("nghttp2_session_client_new2");
            nghttp2_option_del(o);
            nghttp2_settings_entry iv[] = {
                { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
                { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16u << 20 },
                { NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 1u << 20 },
                /* RFC 9218: we send no PRIORITY frames, and nghttp2 then picks
                 * the next DATA frame from per-urgency queues instead of the RFC
                 * 7540 dependency tree, which cost ~2,000 instructions per
                 * DATA frame with 1,024 streams (the "many" scenario). The
                 * turn's frames still leave together, in one send. */
                { NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1 },
            };
            nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
            /* Replies must never wait for our window: open the connection's too. */
            nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 30);
        }
    }
}

static void thr_start_streams(struct thr *t)
{
    uint64_t now = now_ns();
    for (int i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        for (int j = 0; j < c->nstreams; j++) {
            struct stream *s = &c->streams[j];
            stream_open(s);
            if (opt.mode == MODE_CLOSED)
                for (uint32_t w = 0; w < s->window; w++)
                    stream_emit(s, now);
        }
        conn_arm_recv(c);
        conn_mark_dirty(c);
    }
}

/* --reopen: a stream the server ended mid-run starts again as a new HTTP/2
 * stream with a clean slate (its unsent bytes and partial reply went with the
 * old one); seq and the per-key order check carry on. */
static void thr_reopen(struct thr *t)
{
    uint64_t now = now_ns();
    for (int i = 0; i < t->nconns && t->nreopen; i++) {
        struct conn *c = &t->conns[i];
        for (int j = 0; j < c->nstreams && t->nreopen; j++) {
            struct stream *s = &c->streams[j];
            if (!s->reopen)
                continue;
            s->reopen = false;
            t->nreopen--;
            if (c->dead || now >= t->t_end)
                continue;
            s->pend.len = s->pend_off = 0;
            s->rx.len = 0;
            s->inflight = 0;
            s->deferred = s->closed = s->got_status = false;
            s->grpc_status = 0;
            t->nlive++;
            t->streams_reopened++;
            stream_open(s);
            if (opt.mode == MODE_CLOSED)
                for (uint32_t w = 0; w < s->window; w++)
                    stream_emit(s, now);
            conn_mark_dirty(c);
        }
    }
    t->nreopen = 0;
}

/* Open loop: sends what is due, round-robin over this thread's live streams. */
static void thr_open_loop(struct thr *t, uint64_t now)
{
    int total = 0;
    for (int i = 0; i < t->nconns; i++)
        total += t->conns[i].nstreams;
    /* At most this many per turn, so receives are not starved by a catch-up. */
    for (int budget = 8192; budget > 0; budget--) {
        if (bds_openloop_next_ns(&t->ol) > now)
            break;
        struct stream *s = NULL;
        for (int tries = 0; tries < total; tries++) {
            uint64_t k = t->rr++ % (uint64_t)total;
            struct conn *c = &t->conns[k / (uint64_t)t->conns[0].nstreams];
            struct stream *cand = &c->streams[k % (uint64_t)c->nstreams];
            if (!cand->closed && !c->dead && stream_backlog(cand) < opt.backlog) {
                s = cand;
                break;
            }
        }
        if (!s)
            break; /* every stream is backed up: the schedule falls behind */
        uint64_t intended;
        bds_openloop_take(&t->ol, now, &intended);
        stream_emit(s, intended);
    }
}

static void thr_half_close(struct thr *t)
{
    for (int i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        for (int j = 0; j < c->nstreams; j++) {
            struct stream *s = &c->streams[j];
            if (s->closed || s->eof)
                continue;
            s->eof = true;
            if (!c->h2) { /* raw: nothing to half-close; the stream is done */
                s->closed = true;
                t->nlive--;
                continue;
            }
            if (s->deferred) {
                s->deferred = false;
                nghttp2_session_resume_data(c->h2, s->id);
            }
        }
        conn_mark_dirty(c);
    }
}

static bool thr_all_answered(struct thr *t)
{
    for (int i = 0; i < t->nconns; i++)
        for (int j = 0; j < t->conns[i].nstreams; j++) {
            struct stream *s = &t->conns[i].streams[j];
            if (!s->closed && s->inflight)
                return false;
        }
    return true;
}

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    if (opt.ncpus) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpus[t->id % opt.ncpus], &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    int per = opt.conns / opt.threads, extra = opt.conns % opt.threads;
    thr_setup(t, per + (t->id < extra));
    atomic_fetch_add(&g_ready, 1);
    uint64_t t0;
    while (!(t0 = atomic_load(&g_t0)))
        usleep(100);
    t->t0 = t0;
    t->t_meas = t0 + (uint64_t)(opt.warmup_s * 1e9);
    t->t_end = t->t_meas + (uint64_t)(opt.duration_s * 1e9);
    t->t_drain = t->t_end + (uint64_t)(opt.drain_s * 1e9);
    t->t_hard = t->t_drain + (uint64_t)(opt.drain_s * 1e9) + 1000000000u;
    if (opt.mode == MODE_OPEN) {
        /* This thread's share of the rate, phase-shifted so threads interleave. */
        uint64_t r = opt.rate / (uint64_t)opt.threads + ((uint64_t)t->id < opt.rate % (uint64_t)opt.threads);
        if (r == 0)
            r = 1;
        uint64_t phase = 1000000000u / opt.rate * (uint64_t)t->id;
        bds_openloop_init(&t->ol, t0 + phase, r, t->t_end);
    }
    thr_start_streams(t);

    bool half_closed = false;
    uint64_t last_batch = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (opt.mode == MODE_OPEN && now < t->t_end &&
            now >= last_batch + (uint64_t)opt.tick_us * 1000u) {
            thr_open_loop(t, now);
            last_batch = now;
        }
        if (!half_closed && now >= t->t_end && (thr_all_answered(t) || now >= t->t_drain)) {
            thr_half_close(t);
            half_closed = true;
        }
        if ((half_closed && t->nlive <= 0) || now >= t->t_hard)
            break;
        if (t->nreopen)
            thr_reopen(t);
        while (t->dirty) {
            struct conn *c = t->dirty;
            t->dirty = c->next_dirty;
            conn_flush(c);
        }
        /* Sleep until something completes, or the next scheduled event. */
        uint64_t wake = half_closed ? t->t_hard : (now < t->t_end ? t->t_end : t->t_drain);
        if (opt.mode == MODE_OPEN && now < t->t_end) {
            uint64_t nx = bds_openloop_next_ns(&t->ol);
            uint64_t tick = last_batch + (uint64_t)opt.tick_us * 1000u;
            if (nx < tick)
                nx = tick;
            if (nx < wake)
                wake = nx;
        }
        if (!half_closed && now >= t->t_end && now < t->t_drain) {
            uint64_t poll = now + 10000000u; /* re-check "all answered" every 10 ms */
            if (poll < wake)
                wake = poll;
        }
        struct io_uring_cqe *cqe;
        if (opt.spin_us) {
            io_uring_submit(&t->ring);
            uint64_t until = now + (uint64_t)opt.spin_us * 1000u;
            if (until > wake)
                until = wake;
            while (io_uring_peek_cqe(&t->ring, &cqe) != 0 && now_ns() < until)
                ;
        }
        uint64_t n2 = now_ns();
        int rc;
        if (wake > n2) {
            uint64_t d = wake - n2;
            struct __kernel_timespec ts = { .tv_sec = (long long)(d / 1000000000u),
                                            .tv_nsec = (long long)(d % 1000000000u) };
            rc = io_uring_submit_and_wait_timeout(&t->ring, &cqe, 1, &ts, NULL);
        } else {
            /* Behind schedule: no wait, but still run deferred task work
             * (DEFER_TASKRUN posts completions only when we enter with
             * GETEVENTS); a bare submit here would never see a recv complete
             * while catching up, and the run would livelock. */
            rc = io_uring_submit_and_get_events(&t->ring);
        }
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
            die("io_uring wait: %s", strerror(-rc));
        unsigned head, seen = 0;
        now = now_ns();
        io_uring_for_each_cqe(&t->ring, head, cqe) {
            uint64_t d = io_uring_cqe_get_data64(cqe);
            seen++;
            struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)3);
            if (!c)
                continue;
            c->ops--;
            if ((d & 3) == OP_RECV) {
                t->recvs++;
                conn_on_recv(c, cqe->res, now);
            } else {
                t->sends++;
                conn_on_send(c, cqe->res);
            }
        }
        io_uring_cq_advance(&t->ring, seen);
    }
    for (int i = 0; i < t->nconns; i++)
        close(t->conns[i].fd); /* pending ops complete with errors; the ring goes next */
    for (int i = 0; i < t->nconns; i++)
        SSL_free(t->conns[i].ssl); /* NULL without --tls; frees the memory BIOs */
    io_uring_queue_exit(&t->ring);
    return NULL;
}

/* ==== environment and server sampling ==================================================== */

static void read_first_line_matching(const char *path, const char *prefix, char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    size_t pl = strlen(prefix);
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, prefix, pl)) {
            char *v = strchr(line, ':');
            v = v ? v + 1 : line + pl;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            snprintf(out, cap, "%s", v);
            break;
        }
    }
    fclose(f);
}

/* Server CPU seconds (utime + stime) from /proc/pid/stat; -1 if unavailable. */
static double server_cpu_s(void)
{
    if (!opt.server_pid)
        return -1;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%ld/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* field: "VmRSS:" (now) or "VmHWM:" (the peak since the server started). */
static long server_rss_kib(const char *field)
{
    if (!opt.server_pid)
        return -1;
    char path[64], v[64];
    snprintf(path, sizeof path, "/proc/%ld/status", opt.server_pid);
    read_first_line_matching(path, field, v, sizeof v);
    return v[0] ? atol(v) : -1;
}

static double rusage_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void sleep_until(uint64_t t)
{
    for (uint64_t n; (n = now_ns()) < t;) {
        uint64_t d = t - n;
        struct timespec ts = { (time_t)(d / 1000000000u), (long)(d % 1000000000u) };
        nanosleep(&ts, NULL);
    }
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* ==== main ================================================================================ */

int main(int argc, char **argv)
{
    parse_opts(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    h2_callbacks_init();
    if (opt.tls)
        tls_ctx_init();
    long rss_idle = server_rss_kib("VmRSS:");

    g_thr = calloc((size_t)opt.threads, sizeof *g_thr);
    for (int i = 0; i < opt.threads; i++) {
        g_thr[i].id = i;
        if (pthread_create(&g_thr[i].th, NULL, thr_main, &g_thr[i]))
            die("pthread_create");
    }
    while (atomic_load(&g_ready) < opt.threads)
        usleep(1000);
    uint64_t t0 = now_ns() + 1000000u;
    atomic_store(&g_t0, t0);
    uint64_t t_meas = t0 + (uint64_t)(opt.warmup_s * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(opt.duration_s * 1e9);

    /* Sample client and server CPU over the window; progress on the way. */
    double cpu0 = 0, scpu0 = -1, cpu1 = 0, scpu1 = -1;
    long rss_load = -1;
    bool sampled0 = false;
    for (uint64_t next = t0 + 1000000000u;; next += 1000000000u) {
        uint64_t stop = next;
        if (!sampled0 && t_meas < stop)
            stop = t_meas;
        if (t_end < stop)
            stop = t_end;
        sleep_until(stop);
        if (!sampled0 && now_ns() >= t_meas) {
            cpu0 = rusage_s();
            scpu0 = server_cpu_s();
            sampled0 = true;
        }
        if (now_ns() >= t_end) {
            cpu1 = rusage_s();
            scpu1 = server_cpu_s();
            rss_load = server_rss_kib("VmRSS:");
            break;
        }
        if (opt.progress && stop == next) {
            uint64_t s = 0, r = 0;
            for (int i = 0; i < opt.threads; i++) {
                s += atomic_load_explicit(&g_thr[i].sent, memory_order_relaxed);
                r += atomic_load_explicit(&g_thr[i].recv, memory_order_relaxed);
            }
            fprintf(stderr, "  t=%.0fs sent=%llu recv=%llu\n", (double)(next - t0) / 1e9,
                    (unsigned long long)s, (unsigned long long)r);
        }
    }
    for (int i = 0; i < opt.threads; i++)
        pthread_join(g_thr[i].th, NULL);

    /* Merge. */
    static bds_hist h;
    bds_hist_init(&h);
    uint64_t recvs = 0, sends = 0;
    uint64_t sent = 0, recv = 0, recv_window = 0, order = 0, bad = 0, cerr = 0, rst = 0;
    uint64_t failed_msgs = 0, reopened = 0;
    long rss_peak = server_rss_kib("VmHWM:"); /* after the drain: the run's high-water mark */
    uint64_t status[17] = { 0 };
    for (int i = 0; i < opt.threads; i++) {
        struct thr *t = &g_thr[i];
        bds_hist_merge(&h, &t->hist);
        sent += t->sent;
        recv += t->recv;
        recv_window += t->recv_window;
        recvs += t->recvs;
        sends += t->sends;
        order += t->order_violations;
        bad += t->bad_replies;
        cerr += t->conn_errors;
        rst += t->rst_streams;
        failed_msgs += t->failed_stream_msgs;
        reopened += t->streams_reopened;
        for (int k = 0; k < 17; k++)
            status[k] += t->status[k];
    }

    /* Environment. */
    struct utsname un;
    uname(&un);
    char cpu_model[256];
    read_first_line_matching("/proc/cpuinfo", "model name", cpu_model, sizeof cpu_model);
    time_t wall = time(NULL);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&wall));

    FILE *f = stdout;
    if (opt.out && !(f = fopen(opt.out, "a")))
        die("open %s: %s", opt.out, strerror(errno));
    double dur = opt.duration_s;
    fprintf(f, "{\"ts\":\"%s\",\"tool\":\"bds-bench\",\"tags\":{", ts);
    for (int i = 0; i < opt.ntags; i++) {
        char k[128];
        const char *eq = strchr(opt.tags[i], '=');
        snprintf(k, sizeof k, "%.*s", (int)(eq - opt.tags[i]), opt.tags[i]);
        fprintf(f, "%s", i ? "," : "");
        json_str(f, k);
        fputc(':', f);
        json_str(f, eq + 1);
    }
    fprintf(f, "},\"config\":{\"transport\":\"%s\",\"mode\":\"%s\",\"conns\":%d,\"streams\":%d,"
               "\"outstanding\":%d,\"rate\":%llu,\"payload\":%zu,\"keys\":%u,\"work_us\":%u,"
               "\"duration_s\":%g,\"warmup_s\":%g,\"threads\":%d,\"spin_us\":%ld,\"tick_us\":%ld,"
               "\"recv_bytes\":%zu,\"cpus\":\"",
            opt.raw ? "raw" : opt.tls ? "tls" : "h2c", opt.mode == MODE_OPEN ? "open" : "closed", opt.conns,
            opt.streams, opt.outstanding, (unsigned long long)opt.rate, opt.payload, opt.keys,
            opt.work_us, opt.duration_s, opt.warmup_s, opt.threads, opt.spin_us, opt.tick_us,
            opt.recv_bytes);
    for (int i = 0; i < opt.ncpus; i++)
        fprintf(f, "%s%d", i ? "," : "", opt.cpus[i]);
    fputc('"', f);
    if (opt.tls) {
        fprintf(f, ",\"tls\":{\"version\":");
        json_str(f, g_tls_version);
        fprintf(f, ",\"cipher\":");
        json_str(f, g_tls_cipher);
        fprintf(f, ",\"verified\":%s,\"openssl\":", opt.tls_ca ? "true" : "false");
        json_str(f, OpenSSL_version(OPENSSL_VERSION));
        fputc('}', f);
    }
    fprintf(f, "},\"env\":{\"kernel\":");
    char kern[600];
    snprintf(kern, sizeof kern, "%s %s", un.sysname, un.release);
    json_str(f, kern);
    fprintf(f, ",\"cpu\":");
    json_str(f, cpu_model);
    fprintf(f, ",\"nproc\":%ld,\"nghttp2\":\"%s\",\"liburing\":\"%s\"},",
            sysconf(_SC_NPROCESSORS_ONLN), nghttp2_version(0)->version_str, BDS_LIBURING_VERSION);
    fprintf(f, "\"result\":{\"msgs_per_s\":%.1f,\"sent\":%llu,\"recv\":%llu,\"recv_window\":%llu,"
               "\"measured\":%llu,\"unanswered\":%llu,",
            (double)recv_window / dur, (unsigned long long)sent, (unsigned long long)recv,
            (unsigned long long)recv_window, (unsigned long long)h.count,
            (unsigned long long)(sent > recv ? sent - recv : 0));
    fprintf(f, "\"lat_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"p9999\":%.1f,"
               "\"max\":%.1f,\"min\":%.1f,\"mean\":%.1f},",
            bds_hist_percentile(&h, 50) / 1e3, bds_hist_percentile(&h, 90) / 1e3,
            bds_hist_percentile(&h, 99) / 1e3, bds_hist_percentile(&h, 99.9) / 1e3,
            bds_hist_percentile(&h, 99.99) / 1e3, h.count ? h.max / 1e3 : 0.0,
            h.count ? h.min / 1e3 : 0.0, bds_hist_mean(&h) / 1e3);
    /* The percentile spectrum (HdrHistogram's "1/(1-p)" axis): nines from p0 to max. */
    static const double spec[] = { 0.01, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.75, 99.9,
                                   99.95, 99.99, 99.995, 99.999, 100 };
    fprintf(f, "\"spectrum_us\":[");
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++)
        fprintf(f, "%s[%g,%.1f]", i ? "," : "", spec[i], bds_hist_percentile(&h, spec[i]) / 1e3);
    fprintf(f, "],\"failed_stream_msgs\":%llu,\"streams_reopened\":%llu,",
            (unsigned long long)failed_msgs, (unsigned long long)reopened);
    fprintf(f, "\"errors\":{\"order_violations\":%llu,\"bad_replies\":%llu,\"conn_errors\":%llu,"
               "\"rst_streams\":%llu,\"grpc_status\":{",
            (unsigned long long)order, (unsigned long long)bad, (unsigned long long)cerr,
            (unsigned long long)rst);
    bool first = true;
    for (int k = 0; k < 17; k++)
        if (status[k]) {
            fprintf(f, "%s\"%d\":%llu", first ? "" : ",", k, (unsigned long long)status[k]);
            first = false;
        }
    fprintf(f, "}},\"client_recv_ops_per_msg\":%.3f,\"client_send_ops_per_msg\":%.3f",
            recv ? (double)recvs / (double)recv : 0.0, sent ? (double)sends / (double)sent : 0.0);
    /* The client's CPU time per reply received in the window (all threads,
     * user + system): what one message costs the load generator itself. */
    fprintf(f, ",\"client_cpu\":%.3f,\"client_cpu_per_thread\":%.3f,\"client_cpu_ns_per_msg\":",
            (cpu1 - cpu0) / dur, (cpu1 - cpu0) / dur / opt.threads);
    if (recv_window)
        fprintf(f, "%.1f,", (cpu1 - cpu0) * 1e9 / (double)recv_window);
    else
        fprintf(f, "null,");
    if (scpu0 >= 0 && scpu1 >= 0)
        fprintf(f, "\"server_cpu\":%.3f,", (scpu1 - scpu0) / dur);
    else
        fprintf(f, "\"server_cpu\":null,");
    long total_streams = (long)opt.conns * (opt.raw ? 1 : opt.streams);
    if (rss_peak < rss_load)
        rss_peak = rss_load; /* VmHWM trails VmRSS by the kernel's RSS counter batching */
    if (rss_idle >= 0 && rss_load >= 0)
        fprintf(f, "\"server_rss_idle_kib\":%ld,\"server_rss_load_kib\":%ld,\"server_rss_peak_kib\":%ld,"
                   "\"server_rss_per_stream_b\":%.0f}}\n",
                rss_idle, rss_load, rss_peak,
                (double)(rss_load - rss_idle) * 1024.0 / (double)total_streams);
    else
        fprintf(f, "\"server_rss_idle_kib\":null,\"server_rss_load_kib\":null,\"server_rss_peak_kib\":null,"
                   "\"server_rss_per_stream_b\":null}}\n");
    if (f != stdout)
        fclose(f);
    return 0;
}
