/* tools/bds.c — bds, a one-line gRPC client for trying a bidistream server.
 *
 *   bds process [--addr HOST:PORT] [--key K] [--keys N] [--count N] [--payload TEXT]
 *               [--work-us N] [--fail] [--timeout DURATION]
 *   bds health  [--addr HOST:PORT] [--service NAME] [--timeout DURATION]
 *   bds watch   [--addr HOST:PORT] [--service NAME] [--timeout DURATION]
 *
 * Design: one call per run over one h2c connection. A non-blocking socket and
 * poll() drive an nghttp2 client session; requests are produced lazily by the
 * DATA provider (so --count 10000000 needs no memory up front and HTTP/2 flow
 * control paces us), replies are cut from DATA chunks into gRPC
 * Length-Prefixed-Messages by proto's deframer (the one the server uses) and
 * decoded with protobuf-c (bds_proto's generated bidistream.v1.Frame and
 * grpc.health.v1 messages); statuses are the library's (bidistream/status.h)
 * and grpc-message is decoded by proto's bds__grpc_percent_decode. Nothing
 * here is specific to bidistreamd: it speaks plain gRPC and works against any
 * server.
 *
 * Output (stdout, one line each, flushed per line): "reply key=K seq=N
 * payload=P" per Frame, the health status names, and last "status OK" or
 * "status CODE: message". Non-printable bytes are shown as \xNN so a reply is
 * always one line. Problems before the call exists (bad flags, cannot
 * connect) are one line on stderr.
 *
 * Exit status: 0 the call ended OK (health: and the status is SERVING),
 * 1 any other outcome, including an unreachable server, 2 bad usage.
 *
 * Memory: the deframer holds at most the reply being received, when it is
 * split across DATA frames (at most BDS_CLIENT_MESSAGE_MAX, growing as its
 * bytes arrive); the send buffer holds one encoded request. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "bidistream/status.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc_frame.h"
#include "grpc_wire.h"
#include "pipeline.pb-c.h"

#define BDS_CLIENT_VERSION "0.1.0"
/* Replies larger than this end the call (gRPC's usual client default is 4 MiB;
 * an echo of a large payload may need more). */
#define BDS_CLIENT_MESSAGE_MAX (64u << 20)
#define CONNECT_TIMEOUT_MS 5000
#define EXIT_USAGE 2

/* ---- command line ----------------------------------------------------------------------- */

typedef enum cmd { CMD_PROCESS, CMD_HEALTH, CMD_WATCH } cmd;

typedef struct cli {
    cmd cmd;
    const char *addr;
    int64_t timeout_ms; /* -1: no deadline */
    const char *key;
    uint32_t keys;
    uint32_t count;
    const char *payload;
    uint32_t work_us;
    bool fail;
    const char *service;
} cli;

static const char usage_text[] =
    "usage: bds process [--addr HOST:PORT] [--key K] [--keys N] [--count N] [--payload TEXT]\n"
    "                   [--work-us N] [--fail] [--timeout DURATION]\n"
    "       bds health  [--addr HOST:PORT] [--service NAME] [--timeout DURATION]\n"
    "       bds watch   [--addr HOST:PORT] [--service NAME] [--timeout DURATION]\n"
    "\n"
    "  process  sends --count Frames (seq 1..N, key K, or K0..K{N-1} round robin with --keys N)\n"
    "           on one bidi stream of /bidistream.v1.Pipeline/Process, half-closes, prints\n"
    "           each reply and the final status\n"
    "  health   grpc.health.v1.Health/Check: prints SERVING, NOT_SERVING, ...\n"
    "  watch    grpc.health.v1.Health/Watch: prints each status until the stream ends\n"
    "\n"
    "  --addr      server address (default 127.0.0.1:50051)\n"
    "  --timeout   call deadline, sent as grpc-timeout: 500ms, 10s, 2m (default 30s;\n"
    "              watch: none)\n"
    "  --key, --keys, --count, --payload, --work-us, --fail: the Frames' fields\n"
    "              (defaults k, 1, 3, hello, 0, off)\n"
    "Exit status: 0 status OK (health: SERVING), 1 otherwise or unreachable, 2 bad usage.\n";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("bds: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see bds --help)\n", stderr);
    return EXIT_USAGE;
}

/* Plain digits only: "-1" never wraps into a huge count. */
static bool parse_u32(const char *v, uint32_t min, uint32_t max, uint32_t *out) {
    uint64_t x = 0;
    if (!*v) return false;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        x = x * 10 + (uint64_t)(*p - '0');
        if (x > max) return false;
    }
    if (x < min) return false;
    *out = (uint32_t)x;
    return true;
}

/* <digits>[.<digits>][ms|s|m], a bare number being seconds; at most a day. */
static bool parse_timeout(const char *v, int64_t *ms) {
    uint64_t whole = 0, frac = 0, frac_div = 1;
    const char *p = v;
    if (!(*p >= '0' && *p <= '9')) return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (uint64_t)(*p - '0');
        if (whole > 86400000) return false;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (frac_div < 1000000) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                frac_div *= 10;
            }
        }
    }
    uint64_t unit = !strcmp(p, "ms") ? 1 : (!*p || !strcmp(p, "s")) ? 1000 : !strcmp(p, "m") ? 60000 : 0;
    if (!unit) return false;
    uint64_t total = whole * unit + frac * unit / frac_div;
    if (total == 0 || total > 86400000) return false;
    *ms = (int64_t)total;
    return true;
}

/* One "--name value" or "--name=value". Returns 0, or EXIT_USAGE after printing why. */
static int cli_option(cli *c, const char *name, const char *v) {
    bool process = c->cmd == CMD_PROCESS;
    if (!strcmp(name, "addr")) {
        c->addr = v;
    } else if (!strcmp(name, "timeout")) {
        if (!parse_timeout(v, &c->timeout_ms)) return usage_error("--timeout: expected 500ms, 10s or 2m, got '%s'", v);
    } else if (process && !strcmp(name, "key")) {
        c->key = v;
    } else if (process && !strcmp(name, "keys")) {
        if (!parse_u32(v, 1, 1000000, &c->keys)) return usage_error("--keys: expected 1 to 1000000, got '%s'", v);
    } else if (process && !strcmp(name, "count")) {
        if (!parse_u32(v, 0, UINT32_MAX, &c->count)) return usage_error("--count: expected 0 or more, got '%s'", v);
    } else if (process && !strcmp(name, "payload")) {
        c->payload = v;
    } else if (process && !strcmp(name, "work-us")) {
        if (!parse_u32(v, 0, UINT32_MAX, &c->work_us)) {
            return usage_error("--work-us: expected 0 to 4294967295, got '%s'", v);
        }
    } else if (!process && !strcmp(name, "service")) {
        c->service = v;
    } else {
        return usage_error("--%s: unknown option for '%s'", name,
                           process ? "process" : c->cmd == CMD_HEALTH ? "health" : "watch");
    }
    return 0;
}

/* Returns -1 to go on, or the exit status (help printed: 0; bad usage: 2). */
static int cli_parse(int argc, char **argv, cli *c) {
    memset(c, 0, sizeof *c);
    c->addr = "127.0.0.1:50051";
    c->key = "k";
    c->keys = 1;
    c->count = 3;
    c->payload = "hello";
    c->service = "";
    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return fputs(usage_text, stdout), 0;
    if (!strcmp(argv[1], "--version")) return printf("bds %s\n", BDS_CLIENT_VERSION), 0;
    if (!strcmp(argv[1], "process")) c->cmd = CMD_PROCESS;
    else if (!strcmp(argv[1], "health")) c->cmd = CMD_HEALTH;
    else if (!strcmp(argv[1], "watch")) c->cmd = CMD_WATCH;
    else return usage_error("unknown command '%s' (process, health or watch)", argv[1]);
    c->timeout_ms = c->cmd == CMD_WATCH ? -1 : 30000;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return fputs(usage_text, stdout), 0;
        if (strncmp(a, "--", 2) != 0) return usage_error("unexpected argument '%s'", a);
        if (c->cmd == CMD_PROCESS && !strcmp(a, "--fail")) {
            c->fail = true;
            continue;
        }
        char name[64];
        const char *eq = strchr(a, '='), *v;
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (n >= sizeof name) return usage_error("unknown option '%.64s'", a);
        memcpy(name, a + 2, n);
        name[n] = 0;
        if (eq) v = eq + 1;
        else if (i + 1 < argc) v = argv[++i];
        else return usage_error("--%s: missing value", name);
        int rc = cli_option(c, name, v);
        if (rc) return rc;
    }
    return -1;
}

/* ---- gRPC status ------------------------------------------------------------------------- */

/* Statuses are the library's (bidistream/status.h): values 0..16 are the gRPC
 * codes, and bds_status_name names them. */

/* The name of a gRPC status code as received: anything outside 0..16 is UNKNOWN. */
static const char *status_name(int code) {
    return code >= BDS_OK && code <= BDS_UNAUTHENTICATED ? bds_status_name((bds_status)code) : "UNKNOWN";
}

/* gRPC doc/http-grpc-status-mapping.md: a response without grpc-status. */
static int status_from_http(int http) {
    switch (http) {
    case 400: return BDS_INTERNAL;
    case 401: return BDS_UNAUTHENTICATED;
    case 403: return BDS_PERMISSION_DENIED;
    case 404: return BDS_UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return BDS_UNAVAILABLE;
    default: return BDS_UNKNOWN;
    }
}

/* gRPC PROTOCOL-HTTP2: RST_STREAM error codes seen by a client. */
static int status_from_rst(uint32_t code) {
    switch (code) {
    case NGHTTP2_REFUSED_STREAM: return BDS_UNAVAILABLE;
    case NGHTTP2_CANCEL: return BDS_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM: return BDS_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY: return BDS_PERMISSION_DENIED;
    default: return BDS_INTERNAL;
    }
}

/* ---- the call ---------------------------------------------------------------------------- */

typedef struct call {
    const cli *o;
    int fd;
    nghttp2_session *h2;
    int32_t stream_id;
    /* Outgoing: the current encoded request and how much of it is sent. */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    uint32_t produced;      /* requests encoded so far */
    /* Incoming: replies cut into gRPC messages (proto's deframer: the server's). */
    bds__grpc_deframer deframer;
    uint32_t replies;
    int health;             /* last health status, -1 none */
    /* Outcome. */
    int http_status;
    int grpc_status;        /* -1 until received */
    char grpc_message[1024];
    bool closed, conn_closed, goaway;
    uint32_t rst_code;
    int local_status;       /* -1, or a status decided here (deadline, bad reply) */
    char local_message[256];
} call;

/* A failure found on our side ends the call with this status (first wins). */
__attribute__((format(printf, 3, 4))) static void call_fail(call *c, int status, const char *fmt, ...) {
    if (c->local_status >= 0) return;
    c->local_status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->local_message, sizeof c->local_message, fmt, ap);
    va_end(ap);
    if (c->h2 && c->stream_id > 0 && !c->closed) {
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_CANCEL);
    }
}

static bool out_reserve(call *c, size_t n) {
    if (n <= c->out_cap) return true;
    uint8_t *p = realloc(c->out, n);
    if (!p) return false;
    c->out = p;
    c->out_cap = n;
    return true;
}

/* Encodes the next request as a gRPC Length-Prefixed-Message into c->out.
 * Returns false when there is none left (then the stream half-closes). */
static bool next_request(call *c) {
    const cli *o = c->o;
    size_t n;
    char key[128];
    Bidistream__V1__Frame f = BIDISTREAM__V1__FRAME__INIT;
    Grpc__Health__V1__HealthCheckRequest h = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    if (o->cmd == CMD_PROCESS) {
        if (c->produced >= o->count) return false;
        if (o->keys > 1) snprintf(key, sizeof key, "%.100s%" PRIu32, o->key, c->produced % o->keys);
        else snprintf(key, sizeof key, "%.120s", o->key);
        f.key = key;
        f.seq = (uint64_t)c->produced + 1;
        f.payload.data = (uint8_t *)o->payload;
        f.payload.len = strlen(o->payload);
        f.work_us = o->work_us;
        f.fail = o->fail;
        n = bidistream__v1__frame__get_packed_size(&f);
    } else {
        if (c->produced >= 1) return false;
        h.service = (char *)o->service;
        n = grpc__health__v1__health_check_request__get_packed_size(&h);
    }
    if (!out_reserve(c, BDS_GRPC_PREFIX_BYTES + n)) {
        call_fail(c, BDS_RESOURCE_EXHAUSTED, "bds: out of memory for request %" PRIu32, c->produced + 1);
        return false;
    }
    bds__grpc_frame_prefix(c->out, false, (uint32_t)n);
    uint8_t *body = c->out + BDS_GRPC_PREFIX_BYTES;
    size_t packed = o->cmd == CMD_PROCESS ? bidistream__v1__frame__pack(&f, body)
                                          : grpc__health__v1__health_check_request__pack(&h, body);
    if (packed != n) {
        call_fail(c, BDS_INTERNAL, "bds: protobuf-c packed %zu bytes of %zu", packed, n);
        return false;
    }
    c->out_len = BDS_GRPC_PREFIX_BYTES + n;
    c->out_off = 0;
    c->produced++;
    return true;
}

static ssize_t on_data_source_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                                   uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    (void)session, (void)stream_id, (void)source;
    call *c = user_data;
    size_t n = 0;
    while (n < length) {
        if (c->out_off == c->out_len && !next_request(c)) {
            if (c->local_status >= 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
            *data_flags |= NGHTTP2_DATA_FLAG_EOF; /* half-close: the server may drain and end */
            break;
        }
        size_t k = c->out_len - c->out_off;
        if (k > length - n) k = length - n;
        memcpy(buf + n, c->out + c->out_off, k);
        c->out_off += k;
        n += k;
    }
    return (ssize_t)n;
}

/* Prints bytes on one line: control bytes and backslash as \xNN, the rest as is. */
static void print_bytes(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\') printf("\\x%02x", p[i]);
        else putchar(p[i]);
    }
}

static const char *health_name(int s) {
    static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    return s >= 0 && s < 4 ? names[s] : "UNKNOWN";
}

static void on_message(call *c, const uint8_t *msg, size_t len) {
    c->replies++;
    if (c->o->cmd == CMD_PROCESS) {
        Bidistream__V1__Frame *f = bidistream__v1__frame__unpack(NULL, len, msg);
        if (!f) {
            call_fail(c, BDS_INTERNAL, "bds: reply %" PRIu32 " is not a bidistream.v1.Frame", c->replies);
            return;
        }
        fputs("reply key=", stdout);
        print_bytes((const uint8_t *)f->key, strlen(f->key));
        printf(" seq=%" PRIu64 " payload=", f->seq);
        print_bytes(f->payload.data, f->payload.len);
        putchar('\n');
        bidistream__v1__frame__free_unpacked(f, NULL);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse *h = grpc__health__v1__health_check_response__unpack(NULL, len, msg);
    if (!h) {
        call_fail(c, BDS_INTERNAL, "bds: reply is not a grpc.health.v1.HealthCheckResponse");
        return;
    }
    c->health = (int)h->status;
    if (c->o->cmd == CMD_WATCH) printf("%s\n", health_name(c->health));
    grpc__health__v1__health_check_response__free_unpacked(h, NULL);
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data) {
    (void)session, (void)flags;
    call *c = user_data;
    if (stream_id != c->stream_id) return 0;
    while (len > 0 && c->local_status < 0) {
        bds__grpc_ev ev;
        size_t used = bds__grpc_deframe(&c->deframer, data, len, &ev);
        data += used;
        len -= used;
        if (ev.kind == BDS__GRPC_EV_MESSAGE) {
            on_message(c, ev.data, ev.len);
        } else if (ev.kind == BDS__GRPC_EV_ERROR && ev.status == BDS_RESOURCE_EXHAUSTED) {
            call_fail(c, BDS_RESOURCE_EXHAUSTED, "bds: reply of %" PRIu32 " bytes is over the client's limit", ev.len);
        } else if (ev.kind == BDS__GRPC_EV_ERROR) {
            call_fail(c, bds_status_grpc(ev.status), "bds: bad reply: %s", ev.reason);
        }
    }
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
    (void)session, (void)flags;
    call *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id != c->stream_id) return 0;
    if (namelen == 7 && !memcmp(name, ":status", 7)) {
        c->http_status = 0;
        for (size_t i = 0; i < valuelen && value[i] >= '0' && value[i] <= '9' && i < 3; i++) {
            c->http_status = c->http_status * 10 + (value[i] - '0');
        }
    } else if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
        int s = 0;
        bool ok = valuelen > 0 && valuelen <= 3;
        for (size_t i = 0; ok && i < valuelen; i++) {
            ok = value[i] >= '0' && value[i] <= '9';
            s = s * 10 + (value[i] - '0');
        }
        c->grpc_status = ok ? s : BDS_UNKNOWN;
    } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
        /* Percent-encoded (gRPC PROTOCOL-HTTP2: Status-Message); decoding never lengthens it. */
        size_t n = valuelen < sizeof c->grpc_message - 1 ? valuelen : sizeof c->grpc_message - 1;
        n = bds__grpc_percent_decode((const char *)value, n, (uint8_t *)c->grpc_message);
        c->grpc_message[n] = 0;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
    (void)session;
    call *c = user_data;
    if (stream_id == c->stream_id) {
        c->closed = true;
        c->rst_code = error_code;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    (void)session;
    call *c = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.last_stream_id < c->stream_id) {
        /* Our stream was never processed: the server is going away (RFC 9113 §6.8). */
        c->goaway = true;
    }
    return 0;
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags, void *user_data) {
    (void)session, (void)flags;
    call *c = user_data;
    ssize_t n = send(c->fd, data, length, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return NGHTTP2_ERR_WOULDBLOCK;
    c->conn_closed = true;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* ---- connection and loop ------------------------------------------------------------------ */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Splits HOST:PORT ("[v6]:port" too). */
static bool split_addr(const char *addr, char *host, size_t hostcap, char *port, size_t portcap) {
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= portcap) return false;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hostcap) return false;
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, portcap, "%s", colon + 1);
    for (const char *p = port; *p; p++) {
        if (*p < '0' || *p > '9') return false;
    }
    return true;
}

/* Non-blocking connect with a timeout. Returns the socket, or -1 with why set. */
static int connect_to(const char *addr, int timeout_ms, char *why, size_t whylen) {
    char host[256], port[16];
    if (!split_addr(addr, host, sizeof host, port, sizeof port)) {
        snprintf(why, whylen, "expected HOST:PORT");
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host[0] ? host : "127.0.0.1", port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, whylen, "%s", gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = ECONNREFUSED;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) err = errno;
        else {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            socklen_t len = sizeof err;
            int n = poll(&p, 1, timeout_ms);
            if (n == 0) err = ETIMEDOUT;
            else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
            if (n > 0 && err == 0) break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(err));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* small frames, interactive */
    return fd;
}

static const char *call_path(cmd c) {
    switch (c) {
    case CMD_PROCESS: return "/bidistream.v1.Pipeline/Process";
    case CMD_HEALTH: return "/grpc.health.v1.Health/Check";
    case CMD_WATCH: return "/grpc.health.v1.Health/Watch";
    }
    return "";
}

static nghttp2_nv nv(const char *name, const char *value) {
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE};
}

/* Session, SETTINGS and the request HEADERS (gRPC PROTOCOL-HTTP2: Request-Headers). */
static bool call_start(call *c) {
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) return false;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    int rc = nghttp2_session_client_new(&c->h2, cb, c);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) return false;
    /* A wide stream window: replies flow without waiting on our WINDOW_UPDATEs. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20}};
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2) != 0) return false;
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    char timeout[10] = "";
    if (c->o->timeout_ms >= 0) bds__grpc_timeout_format((uint64_t)c->o->timeout_ms * 1000000u, timeout);
    nghttp2_nv nva[] = {
        nv(":method", "POST"), nv(":scheme", "http"), nv(":path", call_path(c->o->cmd)),
        nv(":authority", c->o->addr), nv("content-type", "application/grpc"), nv("te", "trailers"),
        nv("user-agent", "bds/" BDS_CLIENT_VERSION), nv("grpc-timeout", timeout),
    };
    size_t nvlen = sizeof nva / sizeof nva[0] - (timeout[0] ? 0 : 1);
    nghttp2_data_provider dp = {.source = {.ptr = c}, .read_callback = on_data_source_read};
    c->stream_id = nghttp2_submit_request(c->h2, NULL, nva, nvlen, &dp, c);
    return c->stream_id > 0;
}

/* One round: send what nghttp2 has, wait for the socket or the deadline, feed
 * what arrived. Returns false when the loop should stop. */
static bool call_step(call *c, int64_t deadline) {
    if (nghttp2_session_send(c->h2) != 0) {
        c->conn_closed = true;
        return false;
    }
    if (c->closed) return false;
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
        /* nghttp2 ended the session (a protocol error, or GOAWAY handled) before our stream closed. */
        call_fail(c, BDS_UNAVAILABLE, "bds: the HTTP/2 session with %s ended before the call did%s", c->o->addr,
                  c->goaway ? " (GOAWAY)" : " (not a gRPC server?)");
        return false;
    }
    int wait = -1;
    if (deadline >= 0) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            call_fail(c, BDS_DEADLINE_EXCEEDED,
                      "bds: deadline of %" PRId64 "ms passed before the server ended the call", c->o->timeout_ms);
            nghttp2_session_send(c->h2); /* the RST_STREAM, best effort */
            return false;
        }
        wait = left > 1000 ? 1000 : (int)left;
    }
    struct pollfd p = {.fd = c->fd, .events = POLLIN | (nghttp2_session_want_write(c->h2) ? POLLOUT : 0)};
    if (poll(&p, 1, wait) < 0) return errno == EINTR;
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) return true;
    uint8_t buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    if (n <= 0) {
        c->conn_closed = true;
        return false;
    }
    ssize_t used = nghttp2_session_mem_recv(c->h2, buf, (size_t)n);
    if (used < 0) {
        call_fail(c, BDS_UNAVAILABLE, "bds: %s is not speaking HTTP/2 as a gRPC server would (%s)", c->o->addr,
                  nghttp2_strerror((int)used));
        return false;
    }
    return true;
}

/* The call's final status, from what was decided here or heard from the server. */
static int call_outcome(const call *c, const char **msg) {
    *msg = c->grpc_message;
    if (c->local_status >= 0) {
        *msg = c->local_message;
        return c->local_status;
    }
    if (c->grpc_status >= 0) return c->grpc_status;
    if (c->http_status && c->http_status != 200) {
        *msg = "HTTP status without grpc-status";
        return status_from_http(c->http_status);
    }
    if (c->closed && c->rst_code != NGHTTP2_NO_ERROR) {
        *msg = nghttp2_http2_strerror(c->rst_code);
        return status_from_rst(c->rst_code);
    }
    if (c->goaway) {
        *msg = "the server went away (GOAWAY) before the call started";
        return BDS_UNAVAILABLE;
    }
    if (c->conn_closed) {
        *msg = "connection closed before the call ended";
        return BDS_UNAVAILABLE;
    }
    *msg = "the call ended without a grpc-status";
    return BDS_UNKNOWN;
}

static int call_run(const cli *o, int fd) {
    call c;
    memset(&c, 0, sizeof c);
    c.o = o;
    c.fd = fd;
    c.health = -1;
    c.grpc_status = -1;
    c.local_status = -1;
    bds__grpc_deframer_init(&c.deframer, BDS_CLIENT_MESSAGE_MAX, false, NULL);
    if (!call_start(&c)) call_fail(&c, BDS_INTERNAL, "bds: cannot start an HTTP/2 session");
    int64_t deadline = o->timeout_ms >= 0 ? now_ms() + o->timeout_ms : -1;
    while (c.local_status < 0 && call_step(&c, deadline)) {}
    /* Leave politely (GOAWAY), best effort: the socket closes right after. */
    if (c.h2) {
        nghttp2_session_terminate_session(c.h2, NGHTTP2_NO_ERROR);
        nghttp2_session_send(c.h2);
    }
    const char *msg;
    int st = call_outcome(&c, &msg);
    int rc = st == BDS_OK ? 0 : 1;
    if (st == BDS_OK && o->cmd == CMD_HEALTH) {
        printf("%s\n", health_name(c.health));
        rc = c.health == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
    } else if (st == BDS_OK) {
        printf("status OK\n");
    } else {
        printf("status %s: %s\n", status_name(st), msg[0] ? msg : "(no message)");
    }
    nghttp2_session_del(c.h2);
    free(c.out);
    bds__grpc_deframer_deinit(&c.deframer);
    return rc;
}

int main(int argc, char **argv) {
    cli o;
    int rc = cli_parse(argc, argv, &o);
    if (rc >= 0) return rc;
    /* One line per reply, as it arrives, also into a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    char why[256];
    int connect_ms = o.timeout_ms >= 0 && o.timeout_ms < CONNECT_TIMEOUT_MS ? (int)o.timeout_ms : CONNECT_TIMEOUT_MS;
    int fd = connect_to(o.addr, connect_ms, why, sizeof why);
    if (fd < 0) {
        fprintf(stderr, "bds: cannot reach %s: %s\n", o.addr, why);
        return 1;
    }
    rc = call_run(&o, fd);
    close(fd);
    return rc;
}
