/* api_server.c — a server built on the public API only (bidistream/server.h),
 * with one method per capability of the stream API, for test_api.py to drive
 * with grpcio. Messages are plain text commands (no protobuf); what the
 * server saw and did that the client cannot see (callbacks, refused calls)
 * goes to an event log that /test.Api/Events returns and clears.
 *
 * usage: api_server [shards]   (listens on 127.0.0.1:0, prints "port N") */
#include <bidistream/bidistream.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the event log ---------------------------------------------------------- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[1 << 16];
static size_t log_len;

static void event(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    pthread_mutex_lock(&log_mu);
    if (log_len + (size_t)n < sizeof log_buf) {
        memcpy(log_buf + log_len, line, (size_t)n);
        log_len += (size_t)n;
    }
    pthread_mutex_unlock(&log_mu);
}

static bool starts(const uint8_t *req, uint32_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(req, prefix, n) == 0;
}

static bds_status reply_str(bds_call *call, const char *s) { return bds_call_reply_bytes(call, s, strlen(s)); }

/* ---- /test.Api/Echo: metadata, peer, deadline, finish, push, held work ---------- */

/* Calls a stream holds back ("hold"): finished by the stream's on_end, which
 * is how a handler learns its stream is gone while its work is in flight.
 * Echo is FIFO: its calls run on the stream's home, where on_end runs too. */
typedef struct held {
    bds_call *calls[64];
    int n;
} held;

static void hexs(char *out, const uint8_t *v, size_t n) {
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", v[i]);
    out[2 * n] = 0;
}

static void echo_md(bds_call *call, bds_stream *st) {
    char out[4096];
    size_t o = 0;
    bds_metadata e;
    for (size_t i = 0; bds_stream_metadata_at(st, i, &e); i++) {
        size_t nl = strlen(e.name);
        bool bin = nl > 4 && strcmp(e.name + nl - 4, "-bin") == 0;
        char v[1024];
        if (bin && e.value_len < 500) hexs(v, e.value, e.value_len);
        else snprintf(v, sizeof v, "%.*s", (int)e.value_len, (const char *)e.value);
        o += (size_t)snprintf(out + o, sizeof out - o, "%s=%s;", e.name, v);
        if (o >= sizeof out) break;
    }
    size_t n;
    const uint8_t *ev = bds_stream_metadata(st, "x-echo-bin", &n);
    static const uint8_t hb[] = {0x00, 0x01, 0xff};
    static const uint8_t tb[] = {0xfe, 0x00};
    event("md header %s", bds_status_name(bds_stream_set_header(st, "x-header", "h1", 2)));
    bds_stream_set_header(st, "x-header-bin", hb, sizeof hb);
    bds_stream_set_trailer(st, "x-trailer", "t1", 2);
    bds_stream_set_trailer(st, "x-trailer-bin", tb, sizeof tb);
    if (ev) bds_stream_set_trailer(st, "x-echo-bin", ev, n);
    event("md bad name %s", bds_status_name(bds_stream_set_header(st, "Bad Name", "x", 1)));
    event("md reserved %s", bds_status_name(bds_stream_set_header(st, "grpc-status", "0", 1)));
    event("md bad value %s", bds_status_name(bds_stream_set_header(st, "x-ctl", "a\nb", 3)));
    reply_str(call, out);
    event("md late header %s", bds_status_name(bds_stream_set_header(st, "x-late", "l", 1)));
}

struct pusher {
    bds_stream *st;
    int n;
};

static void *push_thread(void *arg) {
    struct pusher *p = arg;
    char m[32];
    for (int i = 0; i < p->n; i++) {
        snprintf(m, sizeof m, "push-%d", i);
        bds_status s = bds_stream_send(p->st, m, strlen(m));
        if (s != BDS_OK) event("push %d %s", i, bds_status_name(s));
    }
    bds_stream_set_trailer(p->st, "x-pushed", "yes", 3);
    bds_stream_finish(p->st, BDS_OK, NULL);
    bds_stream_unref(p->st);
    free(p);
    return NULL;
}

static void echo_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    bds_stream *st = bds_call_stream(call);
    if (starts(req, len, "md")) {
        echo_md(call, st);
    } else if (starts(req, len, "peer")) {
        reply_str(call, bds_stream_peer(st));
    } else if (starts(req, len, "deadline")) {
        char out[64];
        uint64_t d = bds_stream_deadline_ns(st);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        if (!d) snprintf(out, sizeof out, "none");
        else snprintf(out, sizeof out, "%lld", (long long)((int64_t)(d - now) / 1000000));
        reply_str(call, out);
    } else if (starts(req, len, "finish:")) {
        /* finish:CODE: a reply, then the end with CODE, then a reply too late. */
        int code = atoi((const char *)req + 7);
        reply_str(call, "before-finish");
        event("finish %s", bds_status_name(bds_stream_finish(st, (bds_status)code, "finished by the handler")));
        event("finish again %s", bds_status_name(bds_stream_finish(st, BDS_OK, NULL)));
        event("reply after finish %s", bds_status_name(reply_str(call, "after-finish")));
        event("push after finish %s", bds_status_name(bds_stream_send(st, "x", 1)));
    } else if (starts(req, len, "push:")) {
        struct pusher *p = malloc(sizeof *p);
        p->st = bds_stream_ref(st);
        p->n = atoi((const char *)req + 5);
        pthread_t t;
        pthread_create(&t, NULL, push_thread, p);
        pthread_detach(t);
    } else if (starts(req, len, "hold")) {
        held *h = bds_stream_user(st);
        if (!h) {
            h = calloc(1, sizeof *h);
            bds_stream_set_user(st, h);
        }
        if (h->n < 64) {
            h->calls[h->n++] = call;
            event("hold %d", h->n);
            return; /* finished by on_end */
        }
    } else {
        bds_call_reply_bytes(call, req, len);
    }
    bds_call_done(call, BDS_OK, NULL);
}

static void echo_on_end(bds_stream *st, bds_status status, const char *message, void *ctx) {
    (void)ctx;
    held *h = bds_stream_user(st);
    event("end %s %s \"%s\" held %d cancelled-seen %d", bds_stream_method(st), bds_status_name(status), message,
          h ? h->n : 0, h && h->n ? bds_call_cancelled(h->calls[0]) : -1);
    if (!h) return;
    event("reply after end %s", bds_status_name(bds_call_reply_bytes(h->calls[0], "late", 4)));
    event("send after end %s", bds_status_name(bds_stream_send(st, "late", 4)));
    for (int i = 0; i < h->n; i++) bds_call_done(h->calls[i], BDS_OK, NULL);
    free(h);
    bds_stream_set_user(st, NULL);
}

/* ---- /test.Api/Unary -------------------------------------------------------- */

static void unary_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    if (starts(req, len, "two")) {
        event("unary first %s", bds_status_name(reply_str(call, "one")));
        event("unary second %s", bds_status_name(reply_str(call, "two")));
    } else if (starts(req, len, "none")) {
        /* no reply: the stream must not end OK */
    } else {
        reply_str(call, "one");
    }
    bds_call_done(call, BDS_OK, NULL);
}

/* ---- /test.Api/Sum: CLIENT_STREAMING, answered at the client's half-close ----- */

typedef struct sum {
    _Atomic long total;
    _Atomic int done;
} sum;

struct slow {
    bds_call *call;
    long v;
};

static void *slow_thread(void *arg) {
    struct slow *s = arg;
    usleep(300 * 1000);
    sum *sm = bds_stream_user(bds_call_stream(s->call));
    atomic_fetch_add(&sm->total, s->v);
    atomic_fetch_add(&sm->done, 1);
    event("slow done");
    bds_call_done(s->call, BDS_OK, NULL);
    free(s);
    return NULL;
}

/* The sum is read by slow_thread after the stream may have ended (a
 * cancel with work in flight): it goes when the stream's memory does. */
static void sum_free(void *user) {
    event("sum freed");
    free(user);
}

static bds_status sum_on_open(bds_stream *st, const char **message, void *ctx) {
    (void)message;
    (void)ctx;
    bds_stream_set_user(st, calloc(1, sizeof(sum)));
    bds_stream_set_user_free(st, sum_free);
    return BDS_OK;
}

static void sum_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    char num[32] = {0};
    bool slow = starts(req, len, "slow:");
    size_t off = slow ? 5 : 0;
    memcpy(num, req + off, len - off < sizeof num - 1 ? len - off : sizeof num - 1);
    sum *sm = bds_stream_user(bds_call_stream(call));
    if (slow) { /* finished later, from another thread: work in flight at the half-close */
        struct slow *s = malloc(sizeof *s);
        s->call = call;
        s->v = atol(num);
        pthread_t t;
        pthread_create(&t, NULL, slow_thread, s);
        pthread_detach(t);
        return;
    }
    atomic_fetch_add(&sm->total, atol(num));
    atomic_fetch_add(&sm->done, 1);
    bds_call_done(call, BDS_OK, NULL);
}

static void sum_on_half_close(bds_stream *st, void *ctx) {
    (void)ctx;
    sum *sm = bds_stream_user(st);
    char out[64];
    snprintf(out, sizeof out, "total=%ld count=%d", atomic_load(&sm->total), atomic_load(&sm->done));
    event("sum half-close %s", out);
    bds_stream_set_trailer(st, "x-count", out, strlen(out));
    event("sum answer %s", bds_status_name(bds_stream_send(st, out, strlen(out))));
    event("sum second answer %s", bds_status_name(bds_stream_send(st, out, strlen(out))));
    bds_stream_finish(st, BDS_OK, NULL);
}

static void sum_on_end(bds_stream *st, bds_status status, const char *message, void *ctx) {
    (void)ctx;
    event("end %s %s \"%s\"", bds_stream_method(st), bds_status_name(status), message);
}

/* ---- /test.Api/Secret: an auth interceptor -------------------------------------- */

/* An interceptor before auth that holds something from on_open to on_end:
 * its on_end must run when auth refuses the stream after it. */
static bds_status audit_on_open(bds_stream *st, const char **message, void *ctx) {
    (void)message;
    (void)ctx;
    bds_stream_set_user(st, strdup("audit"));
    event("audit open");
    return BDS_OK;
}

static void audit_on_end(bds_stream *st, const bds_stream_end_info *info, void *ctx) {
    (void)ctx;
    event("audit end %s", bds_status_name(info->status));
    free(bds_stream_user(st));
    bds_stream_set_user(st, NULL);
}

static _Atomic int secret_handled;

static bds_status auth_on_open(bds_stream *st, const char **message, void *ctx) {
    (void)ctx;
    size_t n;
    const uint8_t *v = bds_stream_metadata(st, "authorization", &n);
    if (!v || n != 11 || memcmp(v, "Bearer good", 11) != 0) {
        *message = "missing or bad authorization token";
        event("auth refused %s", bds_stream_peer(st));
        return BDS_UNAUTHENTICATED;
    }
    return BDS_OK;
}

static bds_status auth_on_message_in(bds_stream *st, const uint8_t *bytes, uint32_t len, void *ctx) {
    (void)st;
    (void)ctx;
    return starts(bytes, len, "forbidden") ? BDS_PERMISSION_DENIED : BDS_OK;
}

static void auth_on_end(bds_stream *st, const bds_stream_end_info *info, void *ctx) {
    (void)st;
    (void)ctx;
    event("auth end %s in %llu out %llu", bds_status_name(info->status), (unsigned long long)info->messages_in,
          (unsigned long long)info->messages_out);
}

static void secret_handler(bds_call *call, void *ctx) {
    (void)ctx;
    atomic_fetch_add(&secret_handled, 1);
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    bds_call_reply_bytes(call, req, len);
    bds_call_done(call, BDS_OK, NULL);
}

/* ---- /test.Api/Retry: retries of retryable failures, replies sent once --------------- */

/* "flaky": replies, then fails UNAVAILABLE on its first attempt (retried: its
 * reply is held and dropped), succeeds on the second. "bad": replies, then
 * fails INVALID_ARGUMENT (not retryable: no second attempt). */
static void retry_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    char out[64];
    snprintf(out, sizeof out, "%.*s attempt %u", (int)(len < 32 ? len : 32), (const char *)req, bds_call_attempt(call));
    reply_str(call, out);
    event("retry %s", out);
    if (starts(req, len, "flaky") && bds_call_attempt(call) == 1) {
        bds_call_done(call, BDS_UNAVAILABLE, "transient");
        return;
    }
    if (starts(req, len, "bad")) {
        bds_call_done(call, BDS_INVALID_ARGUMENT, "bad request");
        return;
    }
    bds_call_done(call, BDS_OK, NULL);
}

/* ---- /test.Api/Events and /test.Api/Stats ------------------------------------------ */

static bds_server *server;

static void events_handler(bds_call *call, void *ctx) {
    (void)ctx;
    char head[64];
    snprintf(head, sizeof head, "secret handled %d\n", atomic_load(&secret_handled));
    pthread_mutex_lock(&log_mu);
    char *out = malloc(log_len + sizeof head);
    size_t n = strlen(head);
    memcpy(out, head, n);
    memcpy(out + n, log_buf, log_len);
    n += log_len;
    log_len = 0;
    pthread_mutex_unlock(&log_mu);
    bds_call_reply_bytes(call, out, n);
    free(out);
    bds_call_done(call, BDS_OK, NULL);
}

static void stats_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    bds_server_stats *s = malloc(sizeof *s);
    bds_server_get_stats(server, s);
    char out[512] = "no such method";
    for (uint32_t i = 0; i < s->n_methods; i++) {
        const bds_method_stats *m = &s->methods[i];
        if (strlen(m->path) != len || memcmp(m->path, req, len) != 0) continue;
        uint64_t conns = 0;
        for (uint32_t k = 0; k < s->n_shards; k++) conns += s->shards[k].connections_live;
        snprintf(out, sizeof out,
                 "opened=%llu refused=%llu ended=%llu ok=%llu live=%llu in=%llu out=%llu bytes_in=%llu conns=%llu "
                 "admitted=%llu completed=%llu calls_live=%llu",
                 (unsigned long long)m->streams_opened, (unsigned long long)m->streams_refused,
                 (unsigned long long)m->streams_ended, (unsigned long long)m->streams_ok,
                 (unsigned long long)m->streams_live, (unsigned long long)m->messages_in,
                 (unsigned long long)m->messages_out, (unsigned long long)m->bytes_in, (unsigned long long)conns,
                 (unsigned long long)m->admitted, (unsigned long long)m->completed, (unsigned long long)m->calls_live);
    }
    free(s);
    reply_str(call, out);
    bds_call_done(call, BDS_OK, NULL);
}

static void on_ready(bds_server *srv, uint16_t port, void *ctx) {
    (void)srv;
    (void)ctx;
    printf("port %u\n", port);
    fflush(stdout);
}

static void add(const bds_method *m) {
    const char *why;
    if (bds_server_add_method(server, m, &why) != BDS_OK) {
        fprintf(stderr, "api_server: add %s: %s\n", m->path, why);
        exit(1);
    }
}

/* Reflection of the service's own methods: a descriptor set of api.proto
 * (argv[2], made by the test with protoc). */
static bool add_descriptors(const char *file) {
    FILE *f = fopen(file, "rb");
    static uint8_t set[65536];
    size_t n = f ? fread(set, 1, sizeof set, f) : 0;
    if (f) fclose(f);
    const char *why = "cannot read it";
    if (!n || bds_server_add_descriptors(server, set, n, &why) != BDS_OK) {
        fprintf(stderr, "api_server: %s: %s\n", file, why);
        return false;
    }
    return true;
}

int main(int argc, char **argv) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.listen = "127.0.0.1:0";
    cfg.shards = argc > 1 ? (uint32_t)atoi(argv[1]) : 2;
    cfg.log_level = 1;
    cfg.on_ready = on_ready;
    cfg.options.metrics.enabled = true;
    cfg.options.metrics.payload_sizes = true;
    cfg.reflection = argc > 2;
    const char *why;
    if (bds_server_create(&server, &cfg, &why) != BDS_OK) {
        fprintf(stderr, "api_server: %s\n", why);
        return 1;
    }
    if (argc > 2 && !add_descriptors(argv[2])) return 1;
    bds_options fifo = cfg.options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Echo", .handler = echo_handler,
                      .options = &fifo, .on_end = echo_on_end});
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Unary", .handler = unary_handler,
                      .kind = BDS_METHOD_UNARY});
    static const bds_interceptor sum_icpt = {.size = sizeof sum_icpt, .on_open = sum_on_open};
    static const bds_interceptor *const sum_list[] = {&sum_icpt};
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Sum", .handler = sum_handler,
                      .kind = BDS_METHOD_CLIENT_STREAMING, .on_half_close = sum_on_half_close,
                      .on_end = sum_on_end, .interceptors = sum_list, .n_interceptors = 1});
    static const bds_interceptor auth = {.size = sizeof auth, .on_open = auth_on_open,
                                         .on_message_in = auth_on_message_in, .on_end = auth_on_end};
    static const bds_interceptor audit = {.size = sizeof audit, .on_open = audit_on_open, .on_end = audit_on_end};
    static const bds_interceptor *const auth_list[] = {&audit, &auth};
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Secret", .handler = secret_handler,
                      .interceptors = auth_list, .n_interceptors = 2});
    bds_options retry = cfg.options;
    retry.retry.max_attempts = 3;
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Retry", .handler = retry_handler,
                      .options = &retry});
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Events", .handler = events_handler,
                      .kind = BDS_METHOD_UNARY});
    add(&(bds_method){.size = sizeof(bds_method), .path = "/test.Api/Stats", .handler = stats_handler,
                      .kind = BDS_METHOD_UNARY});
    bds_status st = bds_server_run(server);
    bds_server_destroy(server);
    return st == BDS_OK ? 0 : 1;
}
