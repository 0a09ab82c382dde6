/* server.c — the gRPC server: shards, listeners, HTTP/2 connections, and each
 * stream bound to a pipeline session (bidistream/server.h).
 *
 * Per shard: one listener on the shared port (SO_REUSEPORT), its connections,
 * one HTTP/2 session each (proto/h2_server), and a pipeline (io/pipe). A
 * stream is a srv_call holding a bds_session on the connection's shard. An
 * inbound message is copied once into a srv_msg (from the shard's pools), its
 * key found by the method's resolver, and handed to bds_session_receive().
 * Replies are queued on the HTTP/2 stream by reference (bds__h2_send_ref): a
 * reply buffer is copied only when the session serializes it, and an echo
 * reply is the request's own buffer, so the built-in echo allocates nothing
 * and copies its bytes once on the way in and once on the way out. Flow control is
 * end to end (DESIGN §7): a message's bytes are credited to the stream's
 * window only when the pipeline admitted it; while the session has no room
 * (QUEUE policy), messages wait parked here and the window stays shut, so a
 * fast client is slowed at its socket, never rejected. A message larger than
 * the window is credited as it arrives, but only while the session could take
 * it (nothing parked, room): otherwise it waits at the window. Replies go to the
 * HTTP/2 session's stream queue; past a high-water mark of unsent bytes they
 * wait here and keep their outbound token, so a client that never reads fills
 * the Sender (outbound.unsent_bytes_max) and meets its policy, never
 * unbounded memory.
 *
 * Memory budgets: message buffers and each connection's HTTP/2 memory are
 * counted per connection (srv_acct) and per shard. At a budget the connection
 * (or the whole shard) is not read, new streams are refused (REFUSED_STREAM),
 * and the stream holding most ends RESOURCE_EXHAUSTED (shard_budget_pass).
 *
 * Shutdown: on stop every shard stops accepting, marks health NOT_SERVING,
 * sends GOAWAY (notice, then final), and starts the pipeline's graceful
 * shutdown on each session; the grace period ends what is left with
 * UNAVAILABLE, one second later any connection still open is closed, and four
 * seconds after that handlers still running are abandoned (a hard stop: no
 * handler can hold the process). A second signal exits at once.
 *
 * Ownership: everything here belongs to its shard's thread. A srv_msg lives
 * until every holder (SRV_MSG_IN/OUT/H2) has let go; all of them let go on
 * its home shard. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pipeline_int.h"
#include "server_int.h"
#include "services.h"

#define REPLY_HIGH_WATER (256u * 1024u) /* unsent bytes per stream before replies wait here */
#define RUN_BUDGET 512u
/* After the grace period: connections still open close after CLOSE_AFTER;
 * work still running ABANDON_AFTER later is abandoned (bds_server_run
 * returns). The second margin leaves a loaded machine time to unwind what
 * the closes cancel (the cancels cross shards), so only handlers that ignore
 * their cancel are left behind. */
#define STOP_CLOSE_AFTER_NS 1000000000ULL
/* An idle connection first gets a GOAWAY notice (last stream 2^31 - 1: a
 * stream the client opens meanwhile is still served), then this much later
 * the final GOAWAY with the real last stream. Closing at once raced clients
 * that opened a stream just then: their request met a closed socket
 * (grpcio: UNAVAILABLE "Broken pipe", 1 in 2 full test runs under load).
 * grpc-go does the same with a PING round trip instead of a fixed wait. */
#define IDLE_GOAWAY_NOTICE_NS 1000000000ULL
/* ... and after the final one, the connection reads on (and drops what it
 * reads) until the peer closes, at most this long: closing a socket with a
 * request still unread sends RST, which can destroy the GOAWAY in the
 * client's buffer that tells it the request was not run (so it may retry). */
#define IDLE_LINGER_NS 1000000000ULL
#define STOP_ABANDON_AFTER_NS 4000000000ULL

struct srv_conn {
    srv_shard *sh;
    char peer[64];            /* "ip:port" of the client (bds_stream_peer) */
    bds_conn *c;
    bds__h2_conn *h2;
    srv_acct *acct;           /* its bytes, for the budgets */
    bds__palloc alloc;        /* its HTTP/2 session's memory, counted in acct */
    bool over;                /* at conn_bytes_max: not read */
    bool credit_held;         /* not read: its windows are not credited */
    srv_call *victim;         /* failed for its budget, not yet gone */
    bool ended;               /* a stream ended since it went over */
    srv_call *calls;
    srv_call *waiting;        /* calls with blocked replies (call->wprev/wnext) */
    srv_call *lingering;      /* streams over, handlers still running (call_free) */
    uint32_t n_lingering;     /* bounded by max_lingering_streams */
    srv_conn *prev, *next;
    srv_conn *dprev, *dnext;  /* the shard's dirty list, while `dirty` */
    bool dirty;               /* output to produce: flushed by shard_flush_dirty */
    bool h2_failed;           /* the session failed on input: no more reading; its
                                 last output (ending in a GOAWAY) is flushed, then
                                 the connection closes */
    bool closing;
    /* Connection timers (conn_timer_fired): one heap entry per connection,
     * armed for the earliest of its deadlines and re-armed when it fires. */
    bds_timer timer;
    uint64_t born_ns;         /* accepted */
    uint64_t last_recv_ns;    /* bytes last arrived (keepalive) */
    uint64_t idle_since_ns;   /* the last call ended (0 while calls are open) */
    uint64_t ping_sent_ns;    /* our keepalive PING left (while outstanding) */
    uint64_t sent_mark;       /* bds__conn_sent_bytes at sent_mark_ns: send progress */
    uint64_t sent_mark_ns;
    uint64_t idle_notice_ns;  /* idle: the GOAWAY notice left then (0: not yet) */
    bool idle_goaway;         /* idle: the final GOAWAY sent, closing once it is written */
    uint64_t linger_until_ns; /* idle and done: read on until the peer closes or this */
};

static _Thread_local srv_shard *tls_shard;

/* At its own or its shard's memory budget: the connection is not read. */
static bool conn_blocked(const srv_conn *sc) { return sc->sh->over || sc->over; }

srv_shard *bds__server_shard_self(void) { return tls_shard; }

uint64_t bds__server_now(void) { return bds__clock_ns(); }

static void ctr_add(_Atomic uint64_t *c, uint64_t n) { atomic_fetch_add_explicit(c, n, memory_order_relaxed); }

static srv_method_counters *call_mc(const srv_call *call) {
    const bds_server *srv = call->home->srv;
    uint32_t mi = (uint32_t)(call->m - srv->methods);
    return &srv->mc[bds__shard_id(call->home->shard) * BDS_SERVER_METHODS_MAX + mi];
}

static srv_shard_counters *shard_ctr(const srv_shard *sh) { return &sh->srv->shc[bds__shard_id(sh->shard)]; }


/* ---- configuration ---------------------------------------------------------------- */

void bds_server_config_default(bds_server_config *c) {
    memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->listen = "127.0.0.1:50051";
    c->max_message_bytes = 4u << 20;
    c->max_concurrent_streams = 1024;
    c->max_lingering_streams = 128;
    c->interop_responses_max = 1000;
    c->interop_response_bytes_max = 64u << 20;
    c->max_header_list_bytes = 16u << 10;
    c->stream_window_bytes = 64u << 10;
    c->options = bds_default_options();
    c->log_level = 2;
    c->handshake_timeout_ns = 10ull * 1000000000ull;
    c->idle_timeout_ns = 5ull * 60 * 1000000000ull;
    c->keepalive_time_ns = 2ull * 60 * 1000000000ull;
    c->keepalive_timeout_ns = 20ull * 1000000000ull;
    c->ping_min_interval_ns = 5ull * 60 * 1000000000ull;
    c->ping_without_streams = false;
    c->send_timeout_ns = 30ull * 1000000000ull;
    c->tcp_user_timeout_ms = 30000;
    /* A 2-core machine runs 2 shards: 2 GiB of buffers at most, under any
     * mix of clients, leaves a 24 GiB machine most of its memory; a
     * connection may take a quarter of its shard's. */
    c->conn_bytes_max = 256u << 20;
    c->shard_bytes_max = 1u << 30;
    c->max_connections = 10000;
}

static bool parse_listen(const char *s, char *host, size_t hostcap, uint16_t *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostcap) return false;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    if (host[0] == '[') { /* [::1]:port */
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']') return false;
        memmove(host, host + 1, n - 2);
        host[n - 2] = 0;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || end == colon + 1) return false;
    *port = (uint16_t)p;
    return true;
}

/* Both ends of every limit: a minimum keeps the server usable, a maximum keeps
 * the arithmetic on it in range. Returns NULL, or why, naming the field. */
static const char *server_limits_why(const bds_server_config *cfg) {
    /* 2^31 - 1: protobuf's message limit, and the 5-byte gRPC prefix added to
     * it stays far from wrapping a uint32_t. */
    if (cfg->max_message_bytes < 16 || cfg->max_message_bytes > INT32_MAX) {
        return "max_message_bytes: expected 16 to 2147483647";
    }
    /* Stream ids are 31 bits: no connection can have more streams than that. */
    if (cfg->max_concurrent_streams == 0 || cfg->max_concurrent_streams > INT32_MAX) {
        return "max_concurrent_streams: expected 1 to 2147483647";
    }
    /* RFC 9113 §6.9.2: a larger INITIAL_WINDOW_SIZE is a connection error. */
    if (cfg->stream_window_bytes < 1024 || cfg->stream_window_bytes > INT32_MAX) {
        return "stream_window_bytes: expected 1024 to 2147483647";
    }
    if (cfg->max_header_list_bytes < 1024) return "max_header_list_bytes: expected 1024 or more";
    if (cfg->shards > 64) return "shards: expected 0 (one per CPU) to 64";
    if (cfg->max_lingering_streams == 0) return "max_lingering_streams: expected 1 or more";
    /* Deadlines are sums of a clock reading and these: a year keeps them far
     * from wrapping, and no real timer wants more. */
    const uint64_t year_ns = 366ull * 24 * 3600 * 1000000000ull;
    if (cfg->handshake_timeout_ns > year_ns || cfg->idle_timeout_ns > year_ns || cfg->keepalive_time_ns > year_ns ||
        cfg->keepalive_timeout_ns > year_ns || cfg->ping_min_interval_ns > year_ns || cfg->send_timeout_ns > year_ns) {
        return "connection timers (handshake, idle, keepalive, ping, send): at most a year each";
    }
    if (cfg->tcp_user_timeout_ms > (uint32_t)INT32_MAX) return "tcp_user_timeout_ms: expected 0 to 2147483647";
    return NULL;
}

bds_status bds_server_create(bds_server **out, const bds_server_config *cfg, const char **why) {
    *out = NULL;
    if (why) *why = NULL;
    if (!cfg || cfg->size < sizeof *cfg) {
        if (why) *why = "server config: size (use bds_server_config_default)";
        return BDS_E_INVALID;
    }
    bds_status st = bds_options_validate(&cfg->options, why);
    if (st != BDS_OK) return st;
    char host[256];
    uint16_t port;
    if (!cfg->listen || !parse_listen(cfg->listen, host, sizeof host, &port)) {
        if (why) *why = "listen: expected HOST:PORT";
        return BDS_E_INVALID;
    }
    const char *bad = server_limits_why(cfg);
    if (bad) {
        if (why) *why = bad;
        return BDS_E_INVALID;
    }
    bds_server *srv = calloc(1, sizeof *srv);
    if (!srv) return BDS_E_NOMEM;
    srv->cfg = *cfg;
    srv->listen = strdup(cfg->listen);
    if (!srv->listen) {
        free(srv);
        return BDS_E_NOMEM;
    }
    srv->cfg.listen = srv->listen;
    srv->log = (bds_logger){.level = cfg->log_level, .fn = cfg->log, .ctx = cfg->log_ctx};
    uint32_t n = cfg->shards;
    if (n == 0) {
        cpu_set_t set;
        n = sched_getaffinity(0, sizeof set, &set) == 0 ? (uint32_t)CPU_COUNT(&set) : 1;
        if (n > 64) n = 64;
    }
    srv->n_shards = n;
    srv->mc = calloc((size_t)n * BDS_SERVER_METHODS_MAX, sizeof *srv->mc);
    srv->shc = calloc(n, sizeof *srv->shc);
    if (!srv->mc || !srv->shc) {
        bds_server_destroy(srv);
        return BDS_E_NOMEM;
    }
    atomic_init(&srv->serving, 1);
    srv->table.paths = srv->paths;
    st = bds__services_register(srv, &srv->cfg); /* the config stays as long as the server */
    if (st != BDS_OK) {
        bds_server_destroy(srv);
        return st;
    }
    *out = srv;
    return BDS_OK;
}

void bds_server_destroy(bds_server *srv) {
    if (!srv) return;
    for (uint32_t i = 0; i < srv->n_methods; i++) free(srv->methods[i].path);
    free(srv->listen);
    free(srv->mc);
    free(srv->shc);
    free(srv);
}

/* A gRPC method path: "/" service "/" method, the service a dotted name
 * ("pkg.Service": identifiers joined by single dots), the method one
 * identifier. Returns NULL when it is one, else why not. */
static const char *method_path_why(const char *path) {
    if (!path) return "path is NULL";
    if (path[0] != '/') return "path must start with '/' (\"/package.Service/Method\")";
    const char *p = path + 1;
    for (int part = 0; part < 2; part++) {
        const char *start = p;
        char prev = '.';
        for (; *p && *p != '/'; prev = *p++) {
            bool ident = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_';
            if (*p == '.' && part == 0 && prev != '.') continue;
            if (!ident) return part == 0 ? "path: the service must be identifiers joined by single dots"
                                         : "path: the method must be one identifier";
        }
        if (p == start) return part == 0 ? "path: the service is empty" : "path: the method is empty";
        if (prev == '.') return "path: the service must not end with '.'";
        if (part == 0) {
            if (*p != '/') return "path must be \"/package.Service/Method\" (no method)";
            p++;
        }
    }
    if (*p) return "path has more than two parts (\"/package.Service/Method\")";
    return NULL;
}

bds_status bds_server_add_method(bds_server *srv, const bds_method *m, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!srv) bds__misuse("bds_server_add_method", "server is NULL");
    if (srv->running) {
        *why = "the server already runs: add methods before bds_server_run";
        return BDS_FAILED_PRECONDITION;
    }
    if (!m || m->size < sizeof *m) {
        *why = !m ? "method is NULL" : "method.size is less than sizeof(bds_method)";
        return BDS_E_INVALID;
    }
    if ((*why = method_path_why(m->path)) != NULL) return BDS_E_INVALID;
    if (!m->handler) {
        *why = "method.handler is NULL";
        return BDS_E_INVALID;
    }
    for (uint32_t i = 0; i < srv->n_methods; i++) {
        if (strcmp(srv->methods[i].path, m->path) == 0) {
            *why = "a method with this path is already added";
            return BDS_ALREADY_EXISTS;
        }
    }
    if (srv->n_methods == BDS_SERVER_METHODS_MAX) {
        *why = "too many methods (64 per server, the built-in ones included)";
        return BDS_RESOURCE_EXHAUSTED;
    }
    if (m->options && bds_options_validate(m->options, why) != BDS_OK) return BDS_E_INVALID;
    if ((unsigned)m->kind > BDS_METHOD_CLIENT_STREAMING) {
        *why = "method.kind is not a bds_method_kind";
        return BDS_E_INVALID;
    }
    if (m->n_interceptors > SRV_INTERCEPTORS_MAX || (m->n_interceptors && !m->interceptors)) {
        *why = m->n_interceptors > SRV_INTERCEPTORS_MAX ? "method.n_interceptors is over 8"
                                                         : "method.interceptors is NULL";
        return BDS_E_INVALID;
    }
    for (uint32_t i = 0; i < m->n_interceptors; i++) {
        if (!m->interceptors[i] || m->interceptors[i]->size < sizeof(bds_interceptor)) {
            *why = "method.interceptors: an entry is NULL or its size is less than sizeof(bds_interceptor)";
            return BDS_E_INVALID;
        }
    }
    srv_method *sm = &srv->methods[srv->n_methods];
    sm->m = *m;
    sm->n_icpt = m->n_interceptors;
    for (uint32_t i = 0; i < m->n_interceptors; i++) sm->icpt[i] = m->interceptors[i];
    sm->m.interceptors = NULL; /* the array is the caller's: sm->icpt is the copy */
    sm->path = strdup(m->path);
    sm->opts = m->options ? *m->options : srv->cfg.options;
    srv->paths[srv->n_methods] = sm->path;
    srv->n_methods++;
    srv->table.count = srv->n_methods;
    return BDS_OK;
}

bds_status bds_server_add_interceptor(bds_server *srv, const bds_interceptor *icpt, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!srv) bds__misuse("bds_server_add_interceptor", "server is NULL");
    if (srv->running) {
        *why = "the server already runs: add interceptors before bds_server_run";
        return BDS_FAILED_PRECONDITION;
    }
    if (!icpt || icpt->size < sizeof *icpt) {
        *why = !icpt ? "interceptor is NULL" : "interceptor.size is less than sizeof(bds_interceptor)";
        return BDS_E_INVALID;
    }
    if (!icpt->on_open && !icpt->on_message_in && !icpt->on_message_out && !icpt->on_end) {
        *why = "interceptor has no hook";
        return BDS_E_INVALID;
    }
    if (srv->n_icpt == SRV_INTERCEPTORS_MAX) {
        *why = "too many server interceptors (8)";
        return BDS_RESOURCE_EXHAUSTED;
    }
    srv->icpt[srv->n_icpt++] = *icpt;
    return BDS_OK;
}

/* ---- message buffers ----------------------------------------------------------------------- */

BDS_STATIC_ASSERT(offsetof(srv_msg, data) == offsetof(srv_msg, prefix) + sizeof(((srv_msg *)0)->prefix),
                  "the prefix room sits right before the payload");

/* Each class keeps at most SRV_MSG_POOL_KEEP bytes of free buffers: enough
 * for a busy shard's steady state, while a burst's buffers go back to malloc. */
#define SRV_MSG_POOL_KEEP (4u << 20)

static void msg_pools_init(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) {
        size_t size = (size_t)SRV_MSG_CLASS_MIN << i;
        bds__pool_init_trimmed(&sh->msg_pools[i], size, (uint32_t)(SRV_MSG_POOL_KEEP / size));
    }
}

/* Asserts every buffer came back (a leak trips here at shutdown). */
static void msg_pools_deinit(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) bds__pool_deinit(&sh->msg_pools[i]);
}

/* The memory a message takes from its home shard. */
static size_t msg_size(const srv_msg *m) {
    return m->cls == SRV_MSG_HEAP ? sizeof(srv_msg) + m->len : (size_t)SRV_MSG_CLASS_MIN << m->cls;
}

/* ---- memory budgets ------------------------------------------------------------------------ */

/* Under budget again below 7/8 of it: reading does not flap at the mark. */
static uint64_t budget_low(uint64_t max) { return max - max / 8; }

static void shard_budget_due(srv_shard *sh) {
    if (sh->budget_due) return;
    sh->budget_due = true;
    bds__shard_defer_flush(sh->shard, &sh->flusher);
}

/* Bytes were added to sh (and a): a budget reached, or a victim to pick. */
static void budget_check_up(srv_shard *sh, const srv_acct *a) {
    const bds_server_config *cfg = &sh->srv->cfg;
    if (sh->over ? !sh->victim : cfg->shard_bytes_max && sh->msg_bytes + sh->h2_bytes >= cfg->shard_bytes_max)
        shard_budget_due(sh);
    else if (a && a->conn &&
             (a->conn->over ? !a->conn->victim : cfg->conn_bytes_max && a->bytes >= cfg->conn_bytes_max))
        shard_budget_due(sh);
}

/* Bytes were given back: a budget may be under its low mark again. */
static void budget_check_down(srv_shard *sh, const srv_acct *a) {
    const bds_server_config *cfg = &sh->srv->cfg;
    if (sh->over && sh->msg_bytes + sh->h2_bytes < budget_low(cfg->shard_bytes_max)) shard_budget_due(sh);
    else if (a && a->conn && a->conn->over && a->bytes < budget_low(cfg->conn_bytes_max)) shard_budget_due(sh);
}

static void acct_unref(srv_acct *a) {
    if (--a->refs == 0) free(a);
}

/* A connection's fixed HTTP/2 cost (its 256 KiB output buffer, nghttp2's
 * session: ~285 KiB measured) is bounded by the number of connections, not
 * by the budgets; what it grows past that (streams, partial messages, HPACK
 * state) counts. Counting it all, ~3,700 idle connections would hold a 1 GiB
 * shard at its budget, with no stream to end. */
#define H2_CONN_FIXED_BYTES (320u << 10)

static uint64_t h2_counted(uint64_t h2) { return h2 > H2_CONN_FIXED_BYTES ? h2 - H2_CONN_FIXED_BYTES : 0; }

/* The HTTP/2 session's allocator: libc, counted in its connection's acct. */
static void acct_h2_add(srv_acct *a, size_t n) {
    uint64_t before = h2_counted(a->h2);
    a->h2 += n;
    uint64_t d = h2_counted(a->h2) - before;
    a->bytes += d;
    a->sh->h2_bytes += d;
    budget_check_up(a->sh, a);
}

static void acct_h2_sub(srv_acct *a, size_t n) {
    uint64_t before = h2_counted(a->h2);
    a->h2 -= n;
    uint64_t d = before - h2_counted(a->h2);
    a->bytes -= d;
    a->sh->h2_bytes -= d;
    budget_check_down(a->sh, a);
}

static void *acct_malloc(size_t size, void *ctx) {
    void *p = malloc(size);
    if (p) acct_h2_add(ctx, malloc_usable_size(p));
    return p;
}

static void acct_free(void *p, void *ctx) {
    if (!p) return;
    acct_h2_sub(ctx, malloc_usable_size(p));
    free(p);
}

static void *acct_calloc(size_t nmemb, size_t size, void *ctx) {
    void *p = calloc(nmemb, size);
    if (p) acct_h2_add(ctx, malloc_usable_size(p));
    return p;
}

static void *acct_realloc(void *p, size_t size, void *ctx) {
    size_t old = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, size);
    if (!q) return NULL; /* p is untouched */
    acct_h2_sub(ctx, old);
    acct_h2_add(ctx, malloc_usable_size(q));
    return q;
}

static void msg_account(srv_shard *sh, size_t size) {
    sh->msg_bytes += size;
    atomic_store_explicit(&shard_ctr(sh)->message_bytes, sh->msg_bytes, memory_order_relaxed);
    if (sh->msg_bytes <= sh->msg_bytes_hw) return;
    sh->msg_bytes_hw = sh->msg_bytes;
    uint64_t hw = atomic_load_explicit(&sh->srv->msg_bytes_hw, memory_order_relaxed);
    while (hw < sh->msg_bytes_hw &&
           !atomic_compare_exchange_weak_explicit(&sh->srv->msg_bytes_hw, &hw, sh->msg_bytes_hw,
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

uint64_t bds__server_msg_bytes_hw(const bds_server *srv) {
    return atomic_load_explicit(&((bds_server *)srv)->msg_bytes_hw, memory_order_relaxed);
}

/* A zeroed message for len payload bytes, held by |holds|, accounted to |a|
 * (or to no connection yet). From sh's pools when sh is given (it must be
 * the calling shard) and the size fits; else from malloc. NULL when memory
 * is out. */
static srv_msg *msg_new(srv_shard *sh, srv_acct *a, size_t len, uint8_t holds) {
    BDS_ASSERT(sh == NULL || sh == tls_shard);
    size_t need = sizeof(srv_msg) + len;
    srv_msg *m = NULL;
    uint32_t cls = 0;
    while (cls < SRV_MSG_CLASSES && need > ((size_t)SRV_MSG_CLASS_MIN << cls)) cls++;
    if (sh != NULL && cls < SRV_MSG_CLASSES) {
        m = bds__pool_get(&sh->msg_pools[cls]); /* zeroed */
        if (!m) return NULL;
        m->home = sh;
        m->cls = (uint8_t)cls;
    } else {
        m = malloc(need);
        if (!m) return NULL;
        memset(m, 0, sizeof *m);
        m->home = sh;
        m->cls = SRV_MSG_HEAP;
    }
    m->len = (uint32_t)len;
    m->holds = holds;
    if (sh) {
        msg_account(sh, msg_size(m));
        if (a) {
            m->acct = a;
            a->refs++;
            a->bytes += msg_size(m);
        }
        budget_check_up(sh, a);
    }
    return m;
}

/* A reply reaches its call's shard (ops->write): from now on it counts there
 * and against the call's connection, wherever it was made. */
static void msg_attach(srv_msg *r, srv_call *call) {
    srv_shard *sh = tls_shard;
    size_t size = msg_size(r);
    if (!r->home) {
        r->home = sh;
        msg_account(sh, size);
    }
    BDS_ASSERT(r->home == sh);
    srv_conn *sc = call->conn;
    if (!r->acct && sc) {
        r->acct = sc->acct;
        r->acct->refs++;
        r->acct->bytes += size;
    }
    budget_check_up(sh, r->acct);
}

/* |hold| lets go of m; the last holder frees it (on its home shard). */
static void msg_unhold(srv_msg *m, uint8_t hold) {
    BDS_ASSERT(m->holds & hold);
    m->holds &= (uint8_t)~hold;
    if (m->holds) return;
    if (m->home) {
        BDS_ASSERT(m->home == tls_shard);
        size_t size = msg_size(m);
        m->home->msg_bytes -= size;
        atomic_store_explicit(&shard_ctr(m->home)->message_bytes, m->home->msg_bytes, memory_order_relaxed);
        if (m->acct) m->acct->bytes -= size;
        budget_check_down(m->home, m->acct);
    }
    if (m->acct) acct_unref(m->acct);
    if (m->on_free) m->on_free(m->on_free_ctx);
    if (m->cls == SRV_MSG_HEAP) {
        free(m);
        return;
    }
    BDS_ASSERT(m->home == tls_shard && m->cls < SRV_MSG_CLASSES);
    bds__pool_put(&m->home->msg_pools[m->cls], m);
}

/* ---- replies and requests (public call helpers) ------------------------------------------ */

const uint8_t *bds_call_request(const bds_call *call, uint32_t *len) {
    bds__call_check_running(call, "bds_call_request");
    const srv_msg *m = bds_call_payload(call);
    if (len) *len = m->len;
    return m->data;
}

/* Thread: any. On the call's home shard the reply comes from its pools, and
 * an echo of the whole request (the first one) is the request's own buffer.
 * Elsewhere (the key's shard, a handler's thread) it is malloc'ed: the reply
 * is freed at home, which no other shard's pool may be. */
const char *bds_call_method(const bds_call *call) {
    bds__call_check_running(call, "bds_call_method");
    /* The srv_call outlives every call admitted from it (in_pipeline), and
     * its method never changes. */
    const srv_call *sc = bds_call_session_ctx(call);
    return sc->m->path;
}

static bds_status call_reply(bds_call *call, const void *bytes, size_t len, void (*on_free)(void *ctx), void *ctx);

bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len) {
    bds__call_check_running(call, "bds_call_reply_bytes");
    return call_reply(call, bytes, len, NULL, NULL);
}

static bool kind_one_reply(bds_method_kind k) { return k == BDS_METHOD_UNARY || k == BDS_METHOD_CLIENT_STREAMING; }
static bool kind_one_request(bds_method_kind k) { return k == BDS_METHOD_UNARY || k == BDS_METHOD_SERVER_STREAMING; }

/* Counts one more message the stream sends: refused once it ended, and past
 * the one answer of UNARY and CLIENT_STREAMING methods. For those, `sent` is
 * the attempt that answered (a push: UINT32_MAX), so a retried call may
 * answer again (its failed attempt's reply was dropped, never sent); attempt
 * 0 is an answer outside any call. Thread: any. */
static bds_status stream_count_send(srv_call *st, uint32_t attempt) {
    if (atomic_load_explicit(&st->ended, memory_order_acquire)) return BDS_E_SESSION_CLOSED;
    if (!kind_one_reply(st->m->m.kind)) {
        atomic_fetch_add_explicit(&st->sent, 1, memory_order_relaxed);
        return BDS_OK;
    }
    uint32_t cur = atomic_load_explicit(&st->sent, memory_order_relaxed);
    uint32_t mark = attempt ? attempt : UINT32_MAX;
    do {
        if (cur != 0 && (attempt == 0 || cur >= attempt)) return BDS_FAILED_PRECONDITION;
    } while (!atomic_compare_exchange_weak_explicit(&st->sent, &cur, mark, memory_order_relaxed, memory_order_relaxed));
    return BDS_OK;
}

/* A counted message that could not be made after all. */
static void stream_uncount_send(srv_call *st) {
    if (kind_one_reply(st->m->m.kind)) atomic_store_explicit(&st->sent, 0, memory_order_relaxed);
    else atomic_fetch_sub_explicit(&st->sent, 1, memory_order_relaxed);
}

/* A reply; on_free(ctx), if set, runs on the call's home shard when its
 * buffer is let go (bds_call_reply_paced). */
static bds_status call_reply(bds_call *call, const void *bytes, size_t len, void (*on_free)(void *ctx), void *ctx) {
    srv_call *st = bds_call_session_ctx(call);
    if (len > st->home->srv->cfg.max_message_bytes) return BDS_E_INVALID;
    bds_status cs = stream_count_send(st, bds_call_attempt(call));
    if (cs != BDS_OK) return cs;
    srv_msg *req = bds_call_payload(call);
    srv_shard *here = tls_shard != NULL && req->home == tls_shard ? tls_shard : NULL;
    srv_msg *r;
    if (here && !on_free && !req->reply_used && bytes == req->data && len == req->len) {
        /* Only home's thread touches holds, and the request is lent to us. */
        r = req;
        r->reply_used = true;
        r->holds |= SRV_MSG_OUT;
    } else {
        r = msg_new(here, NULL, len, SRV_MSG_OUT);
        if (!r) {
            stream_uncount_send(st);
            return BDS_E_NOMEM;
        }
        if (len) memcpy(r->data, bytes, len);
    }
    r->on_free = on_free;
    r->on_free_ctx = ctx;
    r->reply.data = r;
    r->reply.bytes = (uint32_t)len;
    return bds_call_reply(call, &r->reply); /* taken either way: its status reports on the stream */
}

/* ---- streams: the public handle (bds_stream) -------------------------------------------------- */

static void stream_free(srv_call *st) {
    free(st->md);
    free(st);
}

bds_stream *bds_stream_ref(bds_stream *st) {
    if (!st) bds__misuse("bds_stream_ref", "stream is NULL");
    if (atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed) == 0)
        bds__misuse("bds_stream_ref", "the stream is already freed (take a reference while it is alive)");
    return st;
}

void bds_stream_unref(bds_stream *st) {
    if (!st) return;
    uint32_t old = atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel);
    if (old == 0) bds__misuse("bds_stream_unref", "more unrefs than refs");
    if (old == 1) stream_free(st);
}

bds_stream *bds_call_stream(const bds_call *call) {
    bds__call_check_running(call, "bds_call_stream");
    return bds_call_session_ctx(call);
}

static const srv_call *stream_check(const bds_stream *st, const char *api) {
    if (!st) bds__misuse(api, "stream is NULL");
    return st;
}

const char *bds_stream_method(const bds_stream *st) { return stream_check(st, "bds_stream_method")->m->path; }
const char *bds_stream_peer(const bds_stream *st) { return stream_check(st, "bds_stream_peer")->peer; }
uint64_t bds_stream_deadline_ns(const bds_stream *st) { return stream_check(st, "bds_stream_deadline_ns")->deadline_ns; }
bool bds_stream_ended(const bds_stream *st) {
    return atomic_load_explicit(&stream_check(st, "bds_stream_ended")->ended, memory_order_acquire);
}
void bds_stream_set_user(bds_stream *st, void *user) {
    stream_check(st, "bds_stream_set_user");
    st->user = user;
}
void *bds_stream_user(const bds_stream *st) { return stream_check(st, "bds_stream_user")->user; }

/* Request metadata, kept per stream: entries of the name's length (2 bytes),
 * the value's (4), the name and a NUL, the value (a -bin one decoded). */
static bool md_entry(const srv_call *st, size_t *off, bds_metadata *out) {
    if (!st->md || *off >= st->md_len) return false;
    const uint8_t *e = st->md + *off;
    size_t nl = (size_t)e[0] << 8 | e[1];
    size_t vl = (size_t)e[2] << 24 | (size_t)e[3] << 16 | (size_t)e[4] << 8 | e[5];
    out->name = (const char *)e + 6;
    out->value = e + 6 + nl + 1;
    out->value_len = vl;
    *off += 6 + nl + 1 + vl;
    return true;
}

size_t bds_stream_metadata_count(const bds_stream *st) { return stream_check(st, "bds_stream_metadata_count")->md_count; }

bool bds_stream_metadata_at(const bds_stream *st, size_t index, bds_metadata *out) {
    stream_check(st, "bds_stream_metadata_at");
    if (!out) bds__misuse("bds_stream_metadata_at", "out is NULL");
    size_t off = 0;
    for (size_t i = 0; md_entry(st, &off, out); i++)
        if (i == index) return true;
    return false;
}

const uint8_t *bds_stream_metadata(const bds_stream *st, const char *name, size_t *len) {
    stream_check(st, "bds_stream_metadata");
    if (!name) bds__misuse("bds_stream_metadata", "name is NULL");
    size_t off = 0;
    bds_metadata e;
    while (md_entry(st, &off, &e)) {
        if (strcmp(e.name, name) != 0) continue;
        if (len) *len = e.value_len;
        return e.value;
    }
    if (len) *len = 0;
    return NULL;
}

static bool name_ends_bin(const char *name, size_t nl) { return nl >= 4 && memcmp(name + nl - 4, "-bin", 4) == 0; }

/* Copies the request's metadata (h2's capture) into the stream, -bin values
 * decoded. Returns false on a -bin value that is not base64, or no memory
 * (*why says which). */
static bool stream_take_metadata(srv_call *st, const uint8_t *cap, size_t cap_len, const char **why) {
    size_t off = 0, total = 0, n = 0;
    bds__h2_header h;
    while (bds__h2_captured_next(cap, cap_len, &off, &h)) {
        total += 6 + h.name_len + 1 + h.value_len;
        n++;
    }
    if (n == 0) return true;
    st->md = malloc(total);
    if (!st->md) {
        *why = "server out of memory for request metadata";
        return false;
    }
    uint8_t *p = st->md;
    off = 0;
    while (bds__h2_captured_next(cap, cap_len, &off, &h)) {
        uint8_t *e = p;
        memcpy(e + 6, h.name, h.name_len);
        e[6 + h.name_len] = 0;
        uint8_t *v = e + 6 + h.name_len + 1;
        size_t vl = h.value_len;
        if (name_ends_bin((const char *)h.name, h.name_len)) {
            vl = bds__base64_decode((const char *)h.value, h.value_len, v);
            if (vl == SIZE_MAX) {
                *why = "malformed request metadata: a -bin value is not base64";
                return false;
            }
        } else if (h.value_len) {
            memcpy(v, h.value, h.value_len);
        }
        e[0] = (uint8_t)(h.name_len >> 8);
        e[1] = (uint8_t)h.name_len;
        e[2] = (uint8_t)(vl >> 24);
        e[3] = (uint8_t)(vl >> 16);
        e[4] = (uint8_t)(vl >> 8);
        e[5] = (uint8_t)vl;
        p = v + vl;
    }
    st->md_len = (uint32_t)(p - st->md);
    st->md_count = (uint32_t)n;
    return true;
}

/* Stream operations travel to the stream's home as srv_msg replies (TASK
 * messages through the pipelines' channels), so they keep their place behind
 * the replies their thread posted before them. */
static void stream_task_run(bds__task *t);

static void stream_post(srv_call *st, srv_msg *m) {
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed); /* for the trip */
    m->target = st;
    m->task.run = stream_task_run;
    bds__post_any(bds__pipe_pipeline(st->home->pipe), bds__shard_id(st->home->shard), BDS_XK_TASK, &m->task);
}

/* A buffer for an operation on st: from the home shard's pools on its thread,
 * else malloc'ed (freed at home either way). */
static srv_msg *stream_msg(srv_call *st, size_t len) {
    srv_shard *here = tls_shard == st->home ? tls_shard : NULL;
    srv_msg *m = msg_new(here, NULL, len, SRV_MSG_OUT);
    if (m) m->reply.data = m;
    return m;
}

bds_status bds_stream_send(bds_stream *st, const void *bytes, size_t len) {
    stream_check(st, "bds_stream_send");
    if (!bytes && len) bds__misuse("bds_stream_send", "bytes is NULL");
    if (len > st->home->srv->cfg.max_message_bytes) return BDS_E_INVALID;
    bds_status cs = stream_count_send(st, 0);
    if (cs != BDS_OK) return cs;
    srv_msg *m = stream_msg(st, len);
    if (!m) {
        stream_uncount_send(st);
        return BDS_E_NOMEM;
    }
    if (len) memcpy(m->data, bytes, len);
    m->reply.bytes = (uint32_t)len;
    stream_post(st, m);
    return BDS_OK;
}

#define STREAM_MD_ENTRIES_MAX 16u
#define STREAM_MD_BYTES_MAX 8192u

static bool md_name_ok(const char *name, size_t nl) {
    if (nl == 0 || nl > 255 || (nl >= 5 && memcmp(name, "grpc-", 5) == 0)) return false;
    for (size_t i = 0; i < nl; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) return false;
    }
    /* Headers HTTP/2 or gRPC set themselves. */
    static const char *const reserved[] = {"te", "content-type", "user-agent", "connection", "host"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(name, reserved[i]) == 0) return false;
    return true;
}

static bds_status stream_set_md(bds_stream *st, bool trailer, const char *name, const void *value, size_t len,
                                const char *api) {
    stream_check(st, api);
    if (!name || (!value && len)) bds__misuse(api, "name or value is NULL");
    size_t nl = strlen(name);
    if (!md_name_ok(name, nl)) return BDS_E_INVALID;
    bool bin = name_ends_bin(name, nl);
    if (!bin) {
        for (size_t i = 0; i < len; i++) {
            uint8_t c = ((const uint8_t *)value)[i];
            if (c < 0x20 || c > 0x7e) return BDS_E_INVALID;
        }
    }
    if (atomic_load_explicit(&st->ended, memory_order_acquire)) return BDS_E_SESSION_CLOSED;
    if (!trailer && atomic_load_explicit(&st->sent, memory_order_relaxed) > 0) return BDS_FAILED_PRECONDITION;
    size_t wire = bin ? bds__base64_encoded_len(len) : len;
    if (len > STREAM_MD_BYTES_MAX || wire + nl > STREAM_MD_BYTES_MAX) return BDS_RESOURCE_EXHAUSTED;
    uint32_t add = (uint32_t)(wire + nl);
    uint32_t n = atomic_fetch_add_explicit(&st->md_n[trailer], 1, memory_order_relaxed);
    uint32_t b = atomic_fetch_add_explicit(&st->md_bytes[trailer], add, memory_order_relaxed);
    if (n >= STREAM_MD_ENTRIES_MAX || b + add > STREAM_MD_BYTES_MAX) {
        atomic_fetch_sub_explicit(&st->md_n[trailer], 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&st->md_bytes[trailer], add, memory_order_relaxed);
        return BDS_RESOURCE_EXHAUSTED;
    }
    srv_msg *m = stream_msg(st, nl + 1 + wire);
    if (!m) return BDS_E_NOMEM;
    memcpy(m->data, name, nl + 1);
    if (bin) bds__base64_encode(value, len, (char *)m->data + nl + 1);
    else if (len) memcpy(m->data + nl + 1, value, len);
    m->ctl = trailer ? SRV_CTL_TRAILER : SRV_CTL_HEADER;
    m->reply.control = true;
    stream_post(st, m);
    return BDS_OK;
}

bds_status bds_stream_set_header(bds_stream *st, const char *name, const void *value, size_t len) {
    return stream_set_md(st, false, name, value, len, "bds_stream_set_header");
}

bds_status bds_stream_set_trailer(bds_stream *st, const char *name, const void *value, size_t len) {
    return stream_set_md(st, true, name, value, len, "bds_stream_set_trailer");
}

bds_status bds_stream_finish(bds_stream *st, bds_status status, const char *message) {
    stream_check(st, "bds_stream_finish");
    size_t ml = message ? strnlen(message, sizeof st->fin_msg - 1) : 0;
    srv_msg *m = stream_msg(st, ml + 1);
    if (!m) return BDS_E_NOMEM;
    bool open = false;
    if (!atomic_compare_exchange_strong_explicit(&st->ended, &open, true, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        msg_unhold(m, SRV_MSG_OUT); /* made on this thread, handed to no one */
        return BDS_E_SESSION_CLOSED;
    }
    if (ml) memcpy(m->data, message, ml);
    m->data[ml] = 0;
    m->ctl = SRV_CTL_FINISH;
    m->hint = (uint32_t)status;
    m->reply.control = true;
    stream_post(st, m);
    return BDS_OK;
}

/* ---- applications: serving state, stop hooks, paced replies ------------------------------------ */

bool bds_server_serving(const bds_server *srv) {
    if (!srv) bds__misuse("bds_server_serving", "server is NULL");
    return atomic_load(&srv->serving) != 0;
}

bds_status bds_server_on_stop(bds_server *srv, bds_server_on_stop_fn fn, void *ctx) {
    if (!srv) bds__misuse("bds_server_on_stop", "server is NULL");
    if (srv->running) return BDS_FAILED_PRECONDITION;
    if (!fn) return BDS_E_INVALID;
    if (srv->n_stop_hooks == SRV_STOP_HOOKS_MAX) return BDS_RESOURCE_EXHAUSTED;
    srv->stop_hooks[srv->n_stop_hooks].fn = fn;
    srv->stop_hooks[srv->n_stop_hooks].ctx = ctx;
    srv->n_stop_hooks++;
    return BDS_OK;
}

/* A shard's stop begins (serving is false already): the first shard here
 * runs the hooks, before it drains its own streams. */
static void srv_stop_hooks_run(bds_server *srv) {
    bool told = false;
    if (!atomic_compare_exchange_strong(&srv->stop_told, &told, true)) return;
    for (uint32_t i = 0; i < srv->n_stop_hooks; i++) srv->stop_hooks[i].fn(srv, srv->stop_hooks[i].ctx);
}

/* A paced reply's note: fn to run on the call's EXEC pipeline once the
 * reply's buffer is let go. */
typedef struct srv_paced {
    bds__task task;           /* first: the TASK that carries it to EXEC */
    bds_call *call;
    bds_pipeline *exec;
    bds_call_fn fn;
    void *ctx;
} srv_paced;

static void paced_run(bds__task *t) {
    srv_paced *pc = BDS_CONTAINER_OF(t, srv_paced, task);
    bds_call *call = pc->call;
    bds_call_fn fn = pc->fn;
    void *ctx = pc->ctx;
    free(pc);
    /* The call had to stay the handler's until now. */
    bds__call_check_running(call, "bds_call_reply_paced");
    fn(call, ctx);
}

/* The reply's buffer was let go, on the call's home shard and perhaps from
 * inside its HTTP/2 session (a message release): fn runs later, from the EXEC
 * pipeline's own queue, where it may reply and arm timers. */
static void paced_freed(void *ctx) {
    srv_paced *pc = ctx;
    bds__post_any(pc->exec, pc->exec->index, BDS_XK_TASK, &pc->task);
}

bds_status bds_call_reply_paced(bds_call *call, const void *bytes, size_t len, bds_call_fn fn, void *ctx) {
    bds__call_check_running(call, "bds_call_reply_paced");
    if (!fn) bds__misuse("bds_call_reply_paced", "fn is NULL");
    bds_pipeline *exec = bds__pipeline_current();
    if (!exec || exec != call->exec_p)
        bds__misuse("bds_call_reply_paced", "only on the call's EXEC pipeline thread (where its handler runs)");
    const srv_call *st = bds_call_session_ctx(call);
    const bds_options *o = &st->m->opts;
    if (o->retry.max_attempts > 0 && !o->retry.at_least_once) return BDS_FAILED_PRECONDITION;
    srv_paced *pc = malloc(sizeof *pc);
    if (!pc) return BDS_E_NOMEM;
    pc->task.run = paced_run;
    pc->call = call;
    pc->exec = exec;
    pc->fn = fn;
    pc->ctx = ctx;
    bds_status rs = call_reply(call, bytes, len, paced_freed, pc);
    if (rs != BDS_OK) free(pc);
    return rs;
}

/* ---- connection output ------------------------------------------------------------------- */

static void conn_flush(srv_conn *sc);

/* Output is due on sc. Dirty connections are flushed at the end of the
 * pipeline's run (hook_run), so the socket writes they make are sent by the
 * same tick's flushers (a flusher queued while the shard runs flushers waits
 * for the next tick: one more io_uring_enter per round trip); the shard
 * flusher catches what timers and late callbacks dirty after it. */
static void conn_kick(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    srv_shard *sh = sc->sh;
    if (!sc->dirty) {
        sc->dirty = true;
        sc->dprev = NULL;
        sc->dnext = sh->dirty;
        if (sh->dirty) sh->dirty->dprev = sc;
        sh->dirty = sc;
    }
    bds__shard_defer_flush(sh->shard, &sh->flusher);
}

static void conn_undirty(srv_conn *sc) {
    if (!sc->dirty) return;
    srv_shard *sh = sc->sh;
    if (sc->dprev) sc->dprev->dnext = sc->dnext;
    else sh->dirty = sc->dnext;
    if (sc->dnext) sc->dnext->dprev = sc->dprev;
    sc->dprev = sc->dnext = NULL;
    sc->dirty = false;
}

/* Flushes every dirty connection. A kick from inside conn_flush (a blocked
 * reply moving on) finds its connection still marked and adds nothing: that
 * flush produces the output anyway. */
static void shard_budget_pass(srv_shard *sh);

static void shard_flush_dirty(srv_shard *sh) {
    shard_budget_pass(sh);
    while (sh->dirty) {
        srv_conn *sc = sh->dirty;
        sh->dirty = sc->dnext;
        if (sh->dirty) sh->dirty->dprev = NULL;
        sc->dprev = sc->dnext = NULL;
        conn_flush(sc);
        sc->dirty = false;
    }
}

static void shard_flusher(bds_flusher *f) { shard_flush_dirty(BDS_CONTAINER_OF(f, srv_shard, flusher)); }

static void call_move_blocked(srv_call *call);

static void conn_flush(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    /* Only calls with replies waiting: a flush costs nothing per idle stream. */
    for (srv_call *call = sc->waiting, *next; call; call = next) {
        next = call->wnext; /* a call whose trailers were pending is freed */
        call_move_blocked(call);
    }
    for (;;) {
        const uint8_t *data;
        size_t len;
        bds_status st = bds__h2_output(sc->h2, &data, &len);
        if (len) {
            bds_status w = bds__conn_write(sc->c, data, len);
            if (w != BDS_OK) break; /* E_AGAIN: on_drain flushes again */
            bds__h2_output_advance(sc->h2, len);
        }
        if (st != BDS_OK) {
            /* A failed session still says why: its GOAWAY waits for room in
             * the output buffer, which the bytes just written made. */
            if (len && bds__h2_want_write(sc->h2)) continue;
            if (!sc->h2_failed)
                bds__log(&sc->sh->srv->log, BDS_LOG_WARN, "closing a connection: HTTP/2 output failed (nghttp2 error %d)",
                         bds__h2_get_stats(sc->h2)->nghttp2_fatal);
            bds__conn_close_after_flush(sc->c);
            sc->closing = true;
            return;
        }
        if (!len) break;
    }
    if (bds__h2_is_done(sc->h2)) {
        if (sc->idle_goaway && !sc->h2_failed && !sc->sh->stopping) {
            if (!sc->linger_until_ns) {
                sc->linger_until_ns = bds__shard_now(sc->sh->shard) + IDLE_LINGER_NS;
                bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, sc->linger_until_ns);
            }
            return; /* the peer's EOF, or conn_timer_fired, closes it */
        }
        if (bds__log_on(&sc->sh->srv->log, BDS_LOG_DEBUG)) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG,
                     "connection done (calmed %d, fatal %d, glitches %lu, started %lu, reset %lu)", hs->calmed,
                     hs->nghttp2_fatal, (unsigned long)hs->glitches, (unsigned long)hs->calls_started,
                     (unsigned long)hs->calls_reset);
        }
        bds__conn_close_after_flush(sc->c);
        sc->closing = true;
    }
}

/* ---- calls --------------------------------------------------------------------------------- */

/* The call has blocked replies (or pending trailers): conn_flush visits it. */
static void call_wait(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc || call->waiting) return;
    call->waiting = true;
    call->wprev = NULL;
    call->wnext = sc->waiting;
    if (sc->waiting) sc->waiting->wprev = call;
    sc->waiting = call;
}

static void call_unwait(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!call->waiting) return;
    BDS_ASSERT(sc != NULL);
    if (call->wprev) call->wprev->wnext = call->wnext;
    else sc->waiting = call->wnext;
    if (call->wnext) call->wnext->wprev = call->wprev;
    call->wprev = call->wnext = NULL;
    call->waiting = false;
}

static void call_unlink(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc) return;
    call_unwait(call);
    if (sc->victim == call || sc->sh->victim == call) {
        /* Its memory goes as its session ends; a next victim may be due. */
        if (sc->victim == call) sc->victim = NULL;
        if (sc->sh->victim == call) sc->sh->victim = NULL;
        shard_budget_due(sc->sh);
    }
    if (call->prev) call->prev->next = call->next;
    else sc->calls = call->next;
    if (call->next) call->next->prev = call->prev;
    call->prev = call->next = NULL;
    call->conn = NULL;
    if (!sc->calls) sc->idle_since_ns = bds__shard_now(sc->sh->shard);
}

static void msg_list_free(srv_msg *m, uint8_t hold) {
    while (m) {
        srv_msg *n = m->next;
        msg_unhold(m, hold);
        m = n;
    }
}

/* The call is over for its connection. While the pipeline still holds some
 * of its messages (a handler that has not finished) it lingers: on its
 * connection's lingering list, which max_lingering_streams bounds, or on no
 * list once the connection is gone; op_release frees it with the last. */
static void call_free(srv_call *call) {
    srv_conn *sc = call->conn;
    call_unlink(call);
    call->parked_bytes = 0;
    msg_list_free(call->parked, SRV_MSG_IN);
    msg_list_free(call->blocked, SRV_MSG_OUT);
    call->parked = call->parked_tail = call->blocked = call->blocked_tail = NULL;
    if (call->in_pipeline == 0) {
        bds_stream_unref(call); /* the server's reference */
        return;
    }
    call->lingering = true;
    if (sc && !sc->closing) {
        call->conn = sc;
        call->next = sc->lingering;
        if (sc->lingering) sc->lingering->prev = call;
        sc->lingering = call;
        sc->n_lingering++;
    }
}

/* A lingering call's last message came back. */
static void call_linger_end(srv_call *call) {
    srv_conn *sc = call->conn;
    if (sc) {
        if (call->prev) call->prev->next = call->next;
        else sc->lingering = call->next;
        if (call->next) call->next->prev = call->prev;
        sc->n_lingering--;
    }
    bds_stream_unref(call); /* the server's reference */
}

/* The session's reply leaves for the HTTP/2 stream, or waits here (keeping
 * its outbound token) while the stream holds too many unsent bytes. */
static void call_apply_ctl(srv_call *call, srv_msg *r);
static void call_sent(srv_call *call, const srv_msg *r);

static bool call_try_send(srv_call *call, srv_msg *r) {
    if (r->ctl) {
        call_apply_ctl(call, r);
        return true;
    }
    srv_conn *sc = call->conn;
    if (!sc || call->h2_done || call->finish_requested) return true; /* nobody to send to: written = dropped */
    /* E_AGAIN: the stream holds REPLY_HIGH_WATER unsent bytes (its send bound). */
    bds_status st = bds__h2_send_framed(sc->h2, call->stream, &r->h2, r->prefix, r->len);
    if (st == BDS_E_AGAIN) return false;
    if (st == BDS_OK) {
        r->holds |= SRV_MSG_H2; /* released by h2_on_msg_release */
        call_sent(call, r);
    }
    conn_kick(sc);
    return true;
}

static void call_move_blocked(srv_call *call) {
    while (call->blocked && call_try_send(call, call->blocked)) {
        srv_msg *r = call->blocked;
        call->blocked = r->next;
        if (!call->blocked) call->blocked_tail = NULL;
        if (call->session) bds_session_reply_written(call->session, &r->reply);
        msg_unhold(r, SRV_MSG_OUT);
    }
    if (!call->blocked) call_unwait(call);
    if (call->finish_pending && !call->blocked) {
        srv_conn *sc = call->conn;
        if (sc && !call->h2_done) {
            bds__h2_finish(sc->h2, call->stream, call->fin_status,
                           call->fin_status == BDS_OK ? NULL : call->fin_msg);
            conn_kick(sc);
        }
        call_free(call);
    }
}

/* ---- stream events at home: interceptors, callbacks, counters ---------------------------------- */

/* A message left for HTTP/2. */
static void call_sent(srv_call *call, const srv_msg *r) {
    call->msgs_out++;
    call->bytes_out += r->len;
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->messages_out, 1);
    if (call->m->opts.metrics.payload_sizes) ctr_add(&mc->bytes_out, r->len);
    const bds_server *srv = call->home->srv;
    for (uint32_t i = 0; i < srv->n_icpt; i++)
        if (srv->icpt[i].on_message_out) srv->icpt[i].on_message_out(call, r->data, r->len, srv->icpt[i].ctx);
    for (uint32_t i = 0; i < call->m->n_icpt; i++) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (ic->on_message_out) ic->on_message_out(call, r->data, r->len, ic->ctx);
    }
}

/* The status a stream's end puts on the wire, as a gRPC code (CANCELLED:
 * nothing is sent). */
static bds_status wire_status(bds_status st) {
    int g = bds_status_grpc(st);
    return g < 0 ? BDS_CANCELLED : (bds_status)g;
}

/* A UNARY or CLIENT_STREAMING stream that would end OK without its reply. */
static bds_status call_end_status(const srv_call *call, bds_status st, const char **msg) {
    if (st == BDS_OK && kind_one_reply(call->m->m.kind) && atomic_load_explicit(&call->sent, memory_order_relaxed) == 0) {
        *msg = "the method ended without its reply";
        return BDS_INTERNAL;
    }
    return st;
}

/* The stream is over: the stream API refuses from now on, and on_end runs
 * (method's, then the interceptors' in reverse). Once per stream. */
static void stream_end_notify(srv_call *call, bds_status status, const char *message) {
    atomic_store_explicit(&call->ended, true, memory_order_release);
    if (call->end_told || !call->opened) return;
    call->end_told = true;
    bds_status ws = wire_status(status);
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->streams_ended, 1);
    if (ws == BDS_OK) ctr_add(&mc->streams_ok, 1);
    atomic_fetch_sub_explicit(&shard_ctr(call->home)->streams_live, 1, memory_order_relaxed);
    const char *msg = message ? message : "";
    void *hctx = call->m->m.handler_ctx;
    if (call->m->m.on_end) call->m->m.on_end(call, ws, msg, hctx);
    bds_stream_end_info info = {
        .status = ws,
        .message = msg,
        .duration_ns = bds__clock_ns() - call->start_ns,
        .messages_in = call->msgs_in,
        .messages_out = call->msgs_out,
        .bytes_in = call->bytes_in,
        .bytes_out = call->bytes_out,
    };
    for (uint32_t i = call->m->n_icpt; i-- > 0;) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (ic->on_end) ic->on_end(call, &info, ic->ctx);
    }
    const bds_server *srv = call->home->srv;
    for (uint32_t i = srv->n_icpt; i-- > 0;)
        if (srv->icpt[i].on_end) srv->icpt[i].on_end(call, &info, srv->icpt[i].ctx);
}

/* Ends the stream on the wire once the replies waiting here have left; the
 * session is gone already (released, or its close being reported). */
static void call_close_h2(srv_call *call, bds_status status, const char *message) {
    srv_conn *sc = call->conn;
    if (sc && !call->h2_done && call->blocked) {
        call->finish_pending = true;
        call->fin_status = status;
        snprintf(call->fin_msg, sizeof call->fin_msg, "%s", message ? message : "");
        msg_list_free(call->parked, SRV_MSG_IN);
        call->parked = call->parked_tail = NULL;
        call->parked_bytes = 0;
        conn_kick(sc);
        return;
    }
    if (sc && !call->h2_done) {
        /* The session projects pipeline errors onto gRPC codes (bds_status_grpc);
         * those that send nothing reset the stream. */
        bds__h2_finish(sc->h2, call->stream, status, status == BDS_OK ? NULL : message);
        call->h2_done = true;
        conn_kick(sc);
    }
    call_free(call);
}

/* bds_stream_finish reached its place in reply order: the stream ends now,
 * its replies still waiting here first. Runs from a TASK of its own, outside
 * the Sender's write (the session is released here). */
static void call_finish_task(bds__task *t) {
    srv_msg *m = BDS_CONTAINER_OF(t, srv_msg, task);
    srv_call *call = m->target;
    m->target = NULL;
    bds_session *s = call->session;
    if (s && !call->finish_pending) {
        const char *msg = (const char *)m->data;
        bds_status st = call_end_status(call, (bds_status)m->hint, &msg);
        stream_end_notify(call, st, msg);
        call->session = NULL;
        bds_session_release(s); /* running calls see bds_call_cancelled; no close callback */
        call_close_h2(call, st, msg);
    }
    msg_unhold(m, SRV_MSG_OUT);
    bds_stream_unref(call);
}

/* A control entry reached its place in reply order (ops->write, or the head
 * of the blocked replies). */
static void call_apply_ctl(srv_call *call, srv_msg *r) {
    srv_conn *sc = call->conn;
    switch (r->ctl) {
    case SRV_CTL_HEADER:
    case SRV_CTL_TRAILER: {
        if (!sc || call->h2_done || call->finish_requested) return;
        size_t nl = strlen((const char *)r->data);
        /* Validated when it was made: what is left is a header set after a
         * reply another thread made first (too late: dropped). */
        (void)bds__h2_add_metadata(sc->h2, call->stream, r->ctl == SRV_CTL_TRAILER, (const char *)r->data,
                                   r->data + nl + 1, r->len - nl - 1);
        return;
    }
    case SRV_CTL_FINISH: {
        if (call->finish_requested) return;
        call->finish_requested = true; /* what the Sender writes after it is dropped */
        /* The buffer carries the finish on: a reference of its own keeps it
         * (msg_unhold in call_finish_task), and one on the stream. */
        srv_msg *f = stream_msg(call, r->len);
        if (!f) { /* no memory to defer it: the session ends at the next close */
            bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server out of memory");
            return;
        }
        memcpy(f->data, r->data, r->len);
        f->hint = r->hint;
        atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
        f->target = call;
        f->task.run = call_finish_task;
        bds_pipeline *p = bds__pipe_pipeline(call->home->pipe);
        bds__post(p, p->index, BDS_XK_TASK, &f->task);
        return;
    }
    }
    BDS_UNREACHABLE();
}

/* An operation on a stream, at its home (stream_post). */
static void stream_task_run(bds__task *t) {
    srv_msg *m = BDS_CONTAINER_OF(t, srv_msg, task);
    srv_call *st = m->target;
    m->target = NULL;
    BDS_ASSERT(st->home == tls_shard);
    if (st->session && !st->finish_requested && !st->finish_pending) {
        /* Written (ops->write) or dropped (ops->drop) by the Sender. */
        (void)bds_session_send(st->session, &m->reply);
    } else {
        msg_unhold(m, SRV_MSG_OUT);
    }
    bds_stream_unref(st);
}

/* The interceptors' on_open, the server's first. Returns BDS_OK or the
 * refusal (*message: its text, or NULL). */
static bds_status stream_run_on_open(srv_call *call, const char **message) {
    const bds_server *srv = call->home->srv;
    *message = NULL;
    for (uint32_t i = 0; i < srv->n_icpt; i++) {
        if (!srv->icpt[i].on_open) continue;
        bds_status st = srv->icpt[i].on_open(call, message, srv->icpt[i].ctx);
        if (st != BDS_OK) return st;
    }
    for (uint32_t i = 0; i < call->m->n_icpt; i++) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (!ic->on_open) continue;
        bds_status st = ic->on_open(call, message, ic->ctx);
        if (st != BDS_OK) return st;
    }
    return BDS_OK;
}

/* The interceptors' on_message_in. Returns BDS_OK or the status to end the stream with. */
static bds_status stream_run_on_message_in(srv_call *call, const uint8_t *bytes, uint32_t len) {
    const bds_server *srv = call->home->srv;
    for (uint32_t i = 0; i < srv->n_icpt; i++) {
        if (!srv->icpt[i].on_message_in) continue;
        bds_status st = srv->icpt[i].on_message_in(call, bytes, len, srv->icpt[i].ctx);
        if (st != BDS_OK) return st;
    }
    for (uint32_t i = 0; i < call->m->n_icpt; i++) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (!ic->on_message_in) continue;
        bds_status st = ic->on_message_in(call, bytes, len, ic->ctx);
        if (st != BDS_OK) return st;
    }
    return BDS_OK;
}

/* With on_half_close: the client half-closed and every message it sent has
 * been handled. */
static void call_half_close_check(srv_call *call) {
    if (!call->half_close_wait || call->in_pipeline > 0 || !call->session || call->finish_pending) return;
    call->half_close_wait = false;
    call->m->m.on_half_close(call, call->m->m.handler_ctx);
}

static void op_write(bds_session *s, bds_reply *reply, void *ctx) {
    srv_call *call = ctx;
    srv_msg *r = reply->data;
    msg_attach(r, call);
    if (!call->blocked && call_try_send(call, r)) {
        bds_session_reply_written(s, reply);
        msg_unhold(r, SRV_MSG_OUT);
        return;
    }
    r->next = NULL;
    if (call->blocked_tail) call->blocked_tail->next = r;
    else call->blocked = r;
    call->blocked_tail = r;
    call_wait(call);
}

static void op_drop(bds_session *s, bds_reply *reply, void *ctx) {
    (void)s;
    (void)ctx;
    msg_unhold(reply->data, SRV_MSG_OUT);
}

static void op_release(bds_session *s, void *payload, void *ctx) {
    (void)s;
    srv_call *call = ctx;
    msg_unhold(payload, SRV_MSG_IN);
    BDS_ASSERT(call->in_pipeline > 0);
    if (--call->in_pipeline > 0) return;
    if (call->lingering) call_linger_end(call);
    else call_half_close_check(call);
}


static void op_closed(bds_session *s, bds_status status, const char *message, void *ctx) {
    srv_call *call = ctx;
    status = call_end_status(call, status, &message);
    stream_end_notify(call, status, message);
    call->session = NULL;
    bds_session_release(s);
    /* A clean end (or a drained shutdown) owes the client every reply the
     * Sender admitted: the ones still waiting here leave first, then the
     * trailers. Other ends go at once. */
    if (call->blocked && status != BDS_OK && status != BDS_E_SHUTDOWN) {
        msg_list_free(call->blocked, SRV_MSG_OUT);
        call->blocked = call->blocked_tail = NULL;
        call_unwait(call);
    }
    call_close_h2(call, status, message);
}

static bool call_admit(srv_call *call, srv_msg *m);

/* The client half-closed after its last admitted message. */
static void call_client_close(srv_call *call) {
    if (kind_one_request(call->m->m.kind) && call->msgs_in == 0) {
        bds_session_fail(call->session, BDS_INTERNAL, "no request message (the method takes exactly one)");
        return;
    }
    if (call->m->m.on_half_close) {
        /* The stream stays open for the callback's answer (bds_stream_finish). */
        call->half_close_wait = true;
        call_half_close_check(call);
        return;
    }
    bds_session_client_close(call->session);
}

/* May the bytes of a message still arriving be credited? Only while the
 * session could take it: nothing parked and inbound room. Otherwise they wait
 * uncredited and the client stops at the stream window; crediting them
 * regardless let a client park messages without bound (each sent but its last
 * byte, a message's last chunk the only part ever withheld). Under HARD_REJECT
 * a message is never parked: it completes, and is admitted or rejected. */
static bool call_may_credit_partial(srv_call *call) {
    if (call->finish_pending) return false; /* its messages are dropped anyway */
    if (call->conn && conn_blocked(call->conn)) return false;
    if (call->m->opts.inbound.backpressure.policy == BDS_BP_HARD_REJECT) return true;
    return !call->parked && bds_session_inbound_room(call->session) > 0;
}

/* May the first parked message be admitted now? (HARD_REJECT messages park
 * only for a budget: admitted once it allows, whatever the room.) */
static bool call_may_admit(srv_call *call) {
    if (call->conn && conn_blocked(call->conn)) return false;
    return call->m->opts.inbound.backpressure.policy == BDS_BP_HARD_REJECT ||
           bds_session_inbound_room(call->session) > 0;
}

static void call_drain_parked(srv_call *call) {
    while (call->parked && call_may_admit(call)) {
        srv_msg *m = call->parked;
        call->parked = m->next;
        if (!call->parked) call->parked_tail = NULL;
        call->parked_bytes -= m->len;
        if (!call_admit(call, m)) break;
    }
    if (!call->parked && call->half_close_pending) {
        call->half_close_pending = false;
        call_client_close(call);
    }
    /* Room again: the message in progress, held back at the window, moves on. */
    if (call->conn && !call->h2_done && call_may_credit_partial(call)) {
        bds__h2_credit_partial(call->conn->h2, call->stream);
        conn_kick(call->conn);
    }
}

static void op_inbound_ready(bds_session *s, void *ctx) {
    (void)s;
    call_drain_parked(ctx);
}

static const bds_session_ops srv_ops = {
    .write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed, .inbound_ready = op_inbound_ready,
};

/* Hands m to the pipeline and credits its bytes. Returns false when the
 * session would not take it (closed or closing): m is freed. */
static bool call_admit(srv_call *call, srv_msg *m) {
    uint32_t wire = m->wire;
    bds_status st = bds_session_receive(call->session, m, m->len, m->key, m->key_len, 0);
    if (st != BDS_OK) {
        msg_unhold(m, SRV_MSG_IN);
        /* A rejection closes the session itself, and a refusal for the
         * shutdown keeps its end from being OK; a message the pipeline could
         * not even take must not vanish from a stream that goes on. */
        if (st == BDS_E_NOMEM) bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "out of memory for a message");
        return false;
    }
    call->in_pipeline++;
    if (call->conn && !call->h2_done) {
        bds__h2_consume(call->conn->h2, call->stream, wire);
        conn_kick(call->conn);
    }
    return true;
}

/* ---- HTTP/2 events ----------------------------------------------------------------------------- */

static bds_status h2_on_call_start(void *ctx, const bds__h2_call_info *info, void **call_ctx) {
    srv_conn *sc = ctx;
    srv_shard *sh = sc->sh;
    if (sh->stopping) return BDS_UNAVAILABLE;
    /* Streams over whose handlers still run are outside MAX_CONCURRENT_STREAMS:
     * past their bound the connection gets no more until some finish. */
    if (sc->n_lingering >= sh->srv->cfg.max_lingering_streams) return BDS_RESOURCE_EXHAUSTED;
    if (conn_blocked(sc)) return BDS_E_AGAIN; /* REFUSED_STREAM: at a memory budget */
    const srv_method *m = &sh->srv->methods[info->method_index];
    srv_method_counters *mc = &sh->srv->mc[bds__shard_id(sh->shard) * BDS_SERVER_METHODS_MAX + info->method_index];
    srv_call *call = calloc(1, sizeof *call);
    if (!call) {
        ctr_add(&mc->streams_refused, 1);
        return BDS_RESOURCE_EXHAUSTED;
    }
    call->home = sh;
    atomic_init(&call->refs, 1);
    call->conn = sc;
    call->stream = info->stream_id;
    call->m = m;
    call->start_ns = bds__clock_ns();
    call->deadline_ns = info->deadline_ns;
    memcpy(call->peer, sc->peer, sizeof call->peer);
    const char *why = NULL;
    bds_status refuse = BDS_OK;
    if (!stream_take_metadata(call, info->captured, info->captured_len, &why))
        refuse = call->md ? BDS_INTERNAL : BDS_RESOURCE_EXHAUSTED;
    else
        refuse = stream_run_on_open(call, &why);
    if (refuse != BDS_OK) {
        ctr_add(&mc->streams_refused, 1);
        atomic_store_explicit(&call->ended, true, memory_order_relaxed);
        bds_stream_unref(call); /* an on_open that took a reference keeps it */
        *call_ctx = (void *)why;
        return refuse == BDS_E_AGAIN ? BDS_UNAVAILABLE : refuse;
    }
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    cfg.options = &m->opts;
    cfg.handler = m->m.handler;
    cfg.handler_ctx = m->m.handler_ctx;
    cfg.ops = &srv_ops;
    cfg.ops_ctx = call;
    cfg.counters = &mc->core;
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    if (bds_session_create(&call->session, bds__pipe_pipeline(sh->pipe), &cfg, NULL) != BDS_OK) {
        ctr_add(&mc->streams_refused, 1);
        atomic_store_explicit(&call->ended, true, memory_order_relaxed);
        bds_stream_unref(call);
        return BDS_RESOURCE_EXHAUSTED;
    }
    call->opened = true;
    ctr_add(&mc->streams_opened, 1);
    ctr_add(&shard_ctr(sh)->streams_live, 1);
    bds_session_open(call->session);
    if (info->deadline_ns) bds_session_set_deadline(call->session, info->deadline_ns);
    call->next = sc->calls;
    if (sc->calls) sc->calls->prev = call;
    sc->calls = call;
    sc->idle_since_ns = 0;
    *call_ctx = call;
    return BDS_OK;
}

static void h2_on_message(void *ctx, void *call_ctx, int32_t stream_id, const uint8_t *msg, size_t len,
                          uint32_t wire_bytes) {
    (void)stream_id;
    srv_call *call = call_ctx;
    if (call->finish_pending) return; /* the stream's session already ended */
    srv_conn *sc = ctx;
    call->msgs_in++;
    call->bytes_in += len;
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->messages_in, 1);
    if (call->m->opts.metrics.payload_sizes) ctr_add(&mc->bytes_in, len);
    if (kind_one_request(call->m->m.kind) && call->msgs_in > 1) {
        bds_session_fail(call->session, BDS_INTERNAL, "more than one request message (the method takes exactly one)");
        return;
    }
    bds_status ist = stream_run_on_message_in(call, msg, (uint32_t)len);
    if (ist != BDS_OK) {
        bds_session_fail(call->session, ist, "request message refused");
        return;
    }
    srv_msg *m = msg_new(sc->sh, sc->acct, len, SRV_MSG_IN);
    if (!m) {
        bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    m->wire = wire_bytes;
    if (len) memcpy(m->data, msg, len);
    const srv_method *sm = call->m;
    bool ok = true;
    if (sm->m.key) ok = sm->m.key(m->data, m->len, &m->key, &m->key_len, sm->m.key_ctx);
    if (!ok) {
        msg_unhold(m, SRV_MSG_IN);
        bds_session_fail(call->session, BDS_INTERNAL, "malformed request message");
        return;
    }
    bool may_wait = call->m->opts.inbound.backpressure.policy != BDS_BP_HARD_REJECT;
    if (call->parked || conn_blocked(sc) || (may_wait && bds_session_inbound_room(call->session) == 0)) {
        m->next = NULL;
        if (call->parked_tail) call->parked_tail->next = m;
        else call->parked = m;
        call->parked_tail = m;
        call->parked_bytes += m->len;
        return;
    }
    call_admit(call, m);
}

static void h2_on_half_close(void *ctx, void *call_ctx, int32_t stream_id) {
    (void)ctx;
    (void)stream_id;
    srv_call *call = call_ctx;
    if (call->finish_pending) return;
    if (call->parked) call->half_close_pending = true;
    else call_client_close(call);
}

static void h2_on_reset(void *ctx, void *call_ctx, int32_t stream_id, bds_status status, uint32_t h2_error) {
    (void)ctx;
    (void)stream_id;
    (void)status;
    (void)h2_error;
    srv_call *call = call_ctx;
    call->h2_done = true;
    if (call->finish_pending) { /* the session already ended: only replies were left */
        call_free(call);
        return;
    }
    bds_session_cancel(call->session);
}

static void h2_on_call_error(void *ctx, void *call_ctx, int32_t stream_id, bds_status status, int http) {
    (void)ctx;
    (void)stream_id;
    (void)http;
    srv_call *call = call_ctx;
    if (!call) return; /* refused at its headers: never started */
    call->h2_done = true;
    if (call->finish_pending) {
        call_free(call);
        return;
    }
    bds_session_fail(call->session, status, "request rejected");
}

static bool h2_may_credit_partial(void *ctx, void *call_ctx) {
    (void)ctx;
    return call_may_credit_partial(call_ctx);
}

/* A reply queued by reference left the HTTP/2 session (serialized or dropped). */
static void h2_on_msg_release(void *ctx, bds__h2_msg *hm) {
    (void)ctx;
    msg_unhold(BDS_CONTAINER_OF(hm, srv_msg, h2), SRV_MSG_H2);
}

static const bds__h2_callbacks h2_cbs = {
    .on_call_start = h2_on_call_start,
    .on_message = h2_on_message,
    .on_half_close = h2_on_half_close,
    .on_reset = h2_on_reset,
    .on_call_error = h2_on_call_error,
    .on_msg_release = h2_on_msg_release,
    .may_credit_partial = h2_may_credit_partial,
};

/* ---- the budget pass ------------------------------------------------------------------------------- */

/* What a stream holds: parked, admitted and unfinished, replies not taken,
 * and the message still arriving. |freeable|: only what ending it gives back
 * at once (not the payloads its handlers are running on). */
static uint64_t call_held(const srv_call *call, bool freeable) {
    uint64_t b = call->parked_bytes;
    if (call->session)
        b += freeable ? bds_session_unsent_bytes(call->session) : bds_session_held_bytes(call->session);
    if (call->conn && !call->h2_done) b += bds__h2_partial_bytes(call->conn->h2, call->stream);
    return b;
}

/* The connection's stream holding most, if larger than *best_bytes. */
static srv_call *conn_largest(srv_conn *sc, bool freeable, srv_call *best, uint64_t *best_bytes) {
    for (srv_call *call = sc->calls; call; call = call->next) {
        if (!call->session || call->finish_pending || call->h2_done) continue;
        uint64_t b = call_held(call, freeable);
        if (b > *best_bytes) {
            best = call;
            *best_bytes = b;
        }
    }
    return best;
}

static void call_fail_budget(srv_call *call) {
    bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server memory budget exhausted: the largest stream ends");
}

/* Starts or stops reading sc as its budgets say. Resumed, its parked
 * messages and the messages in progress held at the window move on. */
static void conn_budget_apply(srv_conn *sc) {
    bool hold = conn_blocked(sc);
    if (!sc->c || sc->closing || hold == sc->credit_held) return;
    sc->credit_held = hold;
    bds__h2_hold_conn_credit(sc->h2, hold);
    if (!hold) {
        for (srv_call *call = sc->calls, *next; call; call = next) {
            next = call->next;
            if (call->session && !call->finish_pending) call_drain_parked(call);
        }
    }
    conn_kick(sc);
}

/* A budget crossed a mark (budget_check_up/down) or a victim went: at a
 * budget the shard (or the connection) is not read and its new streams are
 * refused, and the stream holding most ends with RESOURCE_EXHAUSTED. Then,
 * one at a time until the memory is under the low mark and reading resumes,
 * streams end largest first by what ending them gives back at once (replies
 * not taken, parked and arriving messages): clients that never read otherwise
 * held a shard between the marks, reading nothing and refusing every stream,
 * for good; while a stream whose memory is all in running handlers (the first
 * victim's, say) would end for nothing. */
static void shard_budget_pass(srv_shard *sh) {
    if (!sh->budget_due) return;
    sh->budget_due = false;
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    const bds_server_config *cfg = &sh->srv->cfg;
    uint64_t held = sh->msg_bytes + sh->h2_bytes;
    sh->over = cfg->shard_bytes_max &&
               held >= (sh->over ? budget_low(cfg->shard_bytes_max) : cfg->shard_bytes_max);
    if (!sh->over) sh->ended = false;
    if (sh->over && !sh->victim) {
        srv_call *best = NULL;
        uint64_t best_bytes = 0;
        bool freeable = sh->ended || held < cfg->shard_bytes_max;
        for (srv_conn *sc = sh->conns; sc; sc = sc->next) best = conn_largest(sc, freeable, best, &best_bytes);
        if (best) {
            sh->victim = best;
            sh->ended = true;
            call_fail_budget(best);
        }
    }
    for (srv_conn *sc = sh->conns; sc; sc = sc->next) {
        uint64_t b = sc->acct->bytes;
        sc->over = cfg->conn_bytes_max && b >= (sc->over ? budget_low(cfg->conn_bytes_max) : cfg->conn_bytes_max);
        if (!sc->over) sc->ended = false;
        if (sc->over && !sc->victim) {
            uint64_t best_bytes = 0;
            srv_call *best = conn_largest(sc, sc->ended || b < cfg->conn_bytes_max, NULL, &best_bytes);
            if (best) {
                sc->victim = best;
                sc->ended = true;
                if (best != sh->victim) call_fail_budget(best);
            }
        }
        conn_budget_apply(sc);
    }
}

/* ---- connections ----------------------------------------------------------------------------------- */

static void conn_on_data(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    if (sc->closing || sc->h2_failed) return;
    bds__pipeline_set_current(bds__pipe_pipeline(sc->sh->pipe));
    sc->last_recv_ns = bds__shard_now(sc->sh->shard);
    if (bds__h2_recv(sc->h2, bytes, len, sc->last_recv_ns) != BDS_OK) {
        if (bds__log_on(&sc->sh->srv->log, BDS_LOG_WARN)) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            bds__log(&sc->sh->srv->log, BDS_LOG_WARN, "closing a connection: HTTP/2 %s (nghttp2 error %d, %lu glitches)",
                     hs->calmed ? "flood limit" : "fatal error", hs->nghttp2_fatal, (unsigned long)hs->glitches);
        }
        /* Stop reading; the flush sends what is buffered and the session's
         * GOAWAY and closes (on a full socket: the rest after on_drain). */
        sc->h2_failed = true;
        bds__conn_recv_pause(sc->c);
        conn_flush(sc);
        return;
    }
    conn_kick(sc);
}

static void conn_on_drain(bds_conn *c, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    conn_kick(sc);
}

static void conn_on_close(bds_conn *c, int err, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    bool expected = !err || err == ECONNRESET || err == EPIPE;
    bds__log(&sc->sh->srv->log, expected ? BDS_LOG_DEBUG : BDS_LOG_WARN, "connection closed: %s", strerror(err));
    srv_shard *sh = sc->sh;
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    bds__timer_cancel(bds__shard_timers(sh->shard), &sc->timer);
    conn_undirty(sc);
    sc->c = NULL;
    sc->closing = true;
    bds__h2_abort_calls(sc->h2, BDS_CANCELLED); /* on_reset for each live call */
    while (sc->calls) {
        if (sc->calls->finish_pending) call_free(sc->calls); /* its session is gone already */
        else call_unlink(sc->calls);                          /* their sessions close later, without us */
    }
    while (sc->lingering) { /* they end on their own, on no list */
        srv_call *call = sc->lingering;
        sc->lingering = call->next;
        call->conn = NULL;
        call->prev = call->next = NULL;
    }
    sc->n_lingering = 0;
    bds__h2_destroy(sc->h2);
    atomic_fetch_sub_explicit(&shard_ctr(sh)->connections_live, 1, memory_order_relaxed);
    sc->acct->conn = NULL;
    acct_unref(sc->acct);
    if (sc->prev) sc->prev->next = sc->next;
    else sh->conns = sc->next;
    if (sc->next) sc->next->prev = sc->prev;
    free(sc);
}

static const bds_conn_callbacks conn_cbs = {
    .on_data = conn_on_data, .on_drain = conn_on_drain, .on_close = conn_on_close,
};

/* ---- connection timers -------------------------------------------------------------------------- */

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Closes a connection a timer gave up on. Handshake timeouts are what port
 * scanners cause: those log only at debug level. */
static void conn_timeout(srv_conn *sc, const char *why, uint64_t after_ns, int level) {
    bds__log(&sc->sh->srv->log, level, "closing a connection: %s (%.3f s)", why, (double)after_ns / 1e9);
    sc->closing = true;
    bds__conn_close(sc->c, ETIMEDOUT);
}

/* Checks every connection timer, acts on those due, and re-arms for the
 * earliest one left. Keepalive and send progress are measured from marks
 * (last bytes received, sent bytes at the last check), so no hot path
 * touches the timer; a send stall is caught between T and 2T after it began. */
static void conn_timer_fired(bds_timer *t, void *ctx) {
    (void)t;
    srv_conn *sc = ctx;
    if (!sc->c || sc->closing) return;
    const bds_server_config *cfg = &sc->sh->srv->cfg;
    uint64_t now = bds__shard_now(sc->sh->shard), next = UINT64_MAX, due;
    if (sc->linger_until_ns) {
        if (now < sc->linger_until_ns) {
            bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, sc->linger_until_ns);
            return;
        }
        bds__conn_close_after_flush(sc->c);
        sc->closing = true;
        return;
    }
    if (cfg->handshake_timeout_ns && !bds__h2_peer_ready(sc->h2)) {
        due = sat_add(sc->born_ns, cfg->handshake_timeout_ns);
        if (now >= due) {
            conn_timeout(sc, "no HTTP/2 preface and SETTINGS in time", now - sc->born_ns, 3);
            return;
        }
        next = due;
    }
    /* A connection without streams is the idle timer's when there is one: it
     * ends it with GOAWAY. A PING there only closed clients that read their
     * socket only while a call runs (grpcio), abruptly, before the idle GOAWAY:
     * their next call failed UNAVAILABLE on the dead socket. */
    bool keepalive = cfg->keepalive_time_ns && (sc->calls || !cfg->idle_timeout_ns);
    if (keepalive) {
        /* Dead: nothing at all received since our PING (not only no ACK: a
         * PING sent while the connection was idle may never be read). */
        if (bds__h2_ping_outstanding(sc->h2) && sc->last_recv_ns <= sc->ping_sent_ns) {
            if (cfg->keepalive_timeout_ns) {
                due = sat_add(sc->ping_sent_ns, cfg->keepalive_timeout_ns);
                if (now >= due) {
                    conn_timeout(sc, "keepalive PING unanswered", now - sc->ping_sent_ns, 2);
                    return;
                }
                if (due < next) next = due;
            }
        } else {
            due = sat_add(sc->last_recv_ns, cfg->keepalive_time_ns);
            if (now >= due && bds__h2_ping(sc->h2) == BDS_OK) {
                sc->ping_sent_ns = now;
                conn_kick(sc);
                due = sat_add(now, cfg->keepalive_timeout_ns ? cfg->keepalive_timeout_ns : cfg->keepalive_time_ns);
            }
            if (due < next) next = due;
        }
    }
    if (sc->idle_notice_ns && !sc->idle_goaway) {
        due = sat_add(sc->idle_notice_ns, IDLE_GOAWAY_NOTICE_NS);
        if (now >= due) {
            /* The connection closes once this GOAWAY is out and the streams
             * opened since the notice are over (bds__h2_is_done). */
            sc->idle_goaway = true;
            bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG, "idle connection: GOAWAY");
            bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
            conn_kick(sc);
        } else if (due < next) {
            next = due;
        }
    } else if (cfg->idle_timeout_ns && !sc->calls && !sc->idle_goaway) {
        due = sat_add(sc->idle_since_ns, cfg->idle_timeout_ns);
        if (now >= due) {
            sc->idle_notice_ns = now;
            bds__h2_shutdown_notice(sc->h2);
            conn_kick(sc);
            due = sat_add(now, IDLE_GOAWAY_NOTICE_NS);
        }
        if (due < next) next = due;
    }
    if (cfg->send_timeout_ns) {
        uint64_t sent = bds__conn_sent_bytes(sc->c);
        if (sent != sc->sent_mark || bds__conn_out_bytes(sc->c) == 0) {
            sc->sent_mark = sent;
            sc->sent_mark_ns = now;
        } else if (now - sc->sent_mark_ns >= cfg->send_timeout_ns) {
            conn_timeout(sc, "no send progress: the peer stopped reading", now - sc->sent_mark_ns, 2);
            return;
        }
        due = sat_add(sc->sent_mark_ns, cfg->send_timeout_ns);
        if (due < next) next = due;
    }
    if (next != UINT64_MAX) bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, next);
}

static void conn_timers_start(srv_conn *sc) {
    uint64_t now = bds__shard_now(sc->sh->shard);
    sc->born_ns = sc->last_recv_ns = sc->idle_since_ns = sc->sent_mark_ns = now;
    bds__timer_init(&sc->timer, conn_timer_fired, sc);
    uint32_t ms = sc->sh->srv->cfg.tcp_user_timeout_ms;
    if (ms) (void)setsockopt(bds__conn_fd(sc->c), IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms); /* best effort */
    conn_timer_fired(&sc->timer, sc); /* arms the first deadline */
}

static void on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    (void)l;
    srv_shard *sh = ctx;
    srv_conn *sc = calloc(1, sizeof *sc);
    srv_acct *acct = calloc(1, sizeof *acct);
    if (!sc || !acct) {
        free(sc);
        free(acct);
        bds__conn_close(c, 0);
        return;
    }
    *acct = (srv_acct){.sh = sh, .conn = sc, .refs = 1};
    sc->acct = acct;
    sc->sh = sh;
    sc->alloc = (bds__palloc){acct_malloc, acct_free, acct_calloc, acct_realloc, acct};
    bds__h2_config hc;
    bds__h2_config_default(&hc);
    hc.max_concurrent_streams = sh->srv->cfg.max_concurrent_streams;
    hc.stream_window_bytes = sh->srv->cfg.stream_window_bytes;
    hc.header_list_bytes_max = sh->srv->cfg.max_header_list_bytes;
    hc.msg_bytes_max = sh->srv->cfg.max_message_bytes;
    hc.stream_send_bytes_max = REPLY_HIGH_WATER; /* past it replies wait here, keeping their tokens */
    hc.methods = &sh->srv->table;
    hc.credit_partial_messages = true; /* messages larger than the stream window */
    hc.capture_metadata = true;
    hc.capture_bytes_max = sh->srv->cfg.max_header_list_bytes; /* what passes the list bound fits */
    const bds_server_config *cfg = &sh->srv->cfg;
    hc.ping_min_interval_ns = cfg->ping_min_interval_ns;
    /* grpc-go: with no stream open and keepalive without streams not
     * permitted, a client PING less than 2 h after the last is a strike. */
    const uint64_t two_hours = 2ull * 3600 * 1000000000ull;
    hc.ping_idle_min_interval_ns = cfg->ping_without_streams || cfg->ping_min_interval_ns > two_hours
                                       ? cfg->ping_min_interval_ns
                                       : two_hours;
    hc.alloc = &sc->alloc;
    if (bds__h2_create(&sc->h2, &hc, &h2_cbs, sc) != BDS_OK || sh->stopping) {
        if (sc->h2) bds__h2_destroy(sc->h2);
        free(sc);
        acct_unref(acct);
        bds__conn_close(c, 0);
        return;
    }
    sc->c = c;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(bds__conn_fd(c), (struct sockaddr *)&peer, &plen) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        if (peer.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&peer;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            snprintf(sc->peer, sizeof sc->peer, "[%s]:%u", host, ntohs(a->sin6_port));
        } else if (peer.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&peer;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            snprintf(sc->peer, sizeof sc->peer, "%s:%u", host, ntohs(a->sin_port));
        }
    }
    ctr_add(&shard_ctr(sh)->connections_accepted, 1);
    ctr_add(&shard_ctr(sh)->connections_live, 1);
    sc->next = sh->conns;
    if (sh->conns) sh->conns->prev = sc;
    sh->conns = sc;
    bds__conn_set_callbacks(c, &conn_cbs, sc);
    conn_timers_start(sc);
    conn_kick(sc); /* our SETTINGS */
    if (sh->over) shard_budget_due(sh); /* not read either, until under budget */
}

/* ---- shard hooks ------------------------------------------------------------------------------------ */

static bool hook_drain(bds_shard *s, void *ctx) {
    (void)s;
    return bds__pipe_drain(((srv_shard *)ctx)->pipe, RUN_BUDGET);
}

static bool hook_run(bds_shard *s, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bool more = bds__pipe_run(sh->pipe, RUN_BUDGET);
    shard_flush_dirty(sh); /* this tick's replies, sent by this tick's flushers */
    bds_pipeline_stats ps;
    bds_pipeline_get_stats(bds__pipe_pipeline(sh->pipe), &ps);
    atomic_store_explicit(&shard_ctr(sh)->msgs_posted, ps.msgs_posted, memory_order_relaxed);
    return more;
}

static bool hook_prepare_sleep(bds_shard *s, void *ctx) {
    (void)s;
    return bds__pipe_prepare_sleep(((srv_shard *)ctx)->pipe);
}

static void hook_woken(bds_shard *s, void *ctx) {
    (void)s;
    bds__pipe_woken(((srv_shard *)ctx)->pipe);
}

/* Any thread, for a stall report: relaxed reads of plain counters. */
static void hook_dump(bds_shard *s, FILE *f, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bds__pipe_dump(sh->pipe, f);
    const bds_net_stats *ns = bds__net_stats(sh->net);
    fprintf(f, "  net: %u listeners + connections live, %llu accepted, %llu closed, stopping %d\n",
            bds__net_live(sh->net), (unsigned long long)ns->accepted, (unsigned long long)ns->closed,
            (int)sh->stopping);
}

static void hook_on_signal(bds_shard *s, int signo, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    if (atomic_load(&sh->srv->stop_requested)) {
        /* Asked twice: whoever sends it wants the process gone, not drained. */
        bds__log(&sh->srv->log, BDS_LOG_WARN, "signal %d while stopping: exiting now", signo);
        _exit(128 + signo);
    }
    bds__log(&sh->srv->log, BDS_LOG_INFO, "signal %d: shutting down gracefully", signo);
    bds_server_stop(sh->srv);
}

/* Nothing of this shard's own is left: no connection, and no session, call
 * or key (or they were abandoned). */
static bool shard_idle(srv_shard *sh) {
    return sh->conns == NULL && (sh->abandoned || bds__pipe_idle(sh->pipe));
}

static void shard_abandon(srv_shard *sh) {
    bds_pipeline_stats st;
    bds_pipeline_get_stats(bds__pipe_pipeline(sh->pipe), &st);
    if (bds__log_on(&sh->srv->log, BDS_LOG_WARN)) {
        bds__log(&sh->srv->log, BDS_LOG_WARN, "hard stop: abandoning %lu session%s whose handlers did not finish",
                 (unsigned long)st.sessions_live, st.sessions_live == 1 ? "" : "s");
        /* What was left, so that a handler (or our own bug) that held the
         * stop can be found from this report alone. */
        char *dump = NULL;
        size_t dump_len = 0;
        FILE *f = sh->srv->log.fn ? open_memstream(&dump, &dump_len) : NULL;
        bds__shard_dump(sh->shard, f ? f : stderr);
        if (f) {
            fclose(f);
            for (char *line = strtok(dump, "\n"); line; line = strtok(NULL, "\n"))
                bds__log(&sh->srv->log, BDS_LOG_WARN, "%s", line);
            free(dump);
        }
    }
    sh->abandoned = true;
    atomic_store(&sh->srv->abandoned, true);
}

/* Grace + 1 s: connections still open are closed (their calls cancelled,
 * which ends every built-in handler). Grace + 5 s: handlers that still run
 * are abandoned (a hard stop), so no handler can hold the process. A shard
 * with nothing of its own left then abandons nothing: it only waits for the
 * others, whose own timers judge their work (and it abandons at once what
 * they send it after this; hook_quiescent). */
static void stop_timer_fired(bds_timer *t, void *ctx) {
    srv_shard *sh = ctx;
    if (sh->conns_closed) {
        sh->stop_expired = true;
        if (!shard_idle(sh)) shard_abandon(sh);
        return;
    }
    sh->conns_closed = true;
    for (srv_conn *sc = sh->conns; sc; sc = sc->next) {
        if (sc->c && !sc->closing) {
            sc->closing = true;
            bds__conn_close(sc->c, 0);
        }
    }
    bds__timer_arm(bds__shard_timers(sh->shard), t, bds__shard_now(sh->shard) + STOP_ABANDON_AFTER_NS);
}

static void hook_on_stop(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    sh->stopping = true;
    atomic_store(&sh->srv->serving, 0);
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    if (sh->listener) {
        bds__listener_close(sh->listener);
        sh->listener = NULL;
    }
    srv_stop_hooks_run(sh->srv);
    for (srv_conn *sc = sh->conns; sc; sc = sc->next) {
        if (sc->closing) continue;
        bds__h2_shutdown_notice(sc->h2);
        bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
        for (srv_call *call = sc->calls; call; call = call->next) {
            /* A finished call waiting to send its trailers has no session left. */
            if (call->session) bds_session_shutdown(call->session);
        }
        conn_kick(sc);
    }
    /* What the grace period did not end is closed one second after it, and
     * abandoned four seconds later (stop_timer_fired). */
    uint64_t grace = sh->srv->cfg.options.shutdown.grace_period_ns;
    for (uint32_t i = 0; i < sh->srv->n_methods; i++) {
        if (sh->srv->methods[i].opts.shutdown.grace_period_ns > grace) grace = sh->srv->methods[i].opts.shutdown.grace_period_ns;
    }
    bds__timer_init(&sh->stop_timer, stop_timer_fired, sh);
    bds__timer_arm(bds__shard_timers(s), &sh->stop_timer, bds__shard_now(s) + grace + STOP_CLOSE_AFTER_NS);
}

static bool hook_quiescent(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    if (sh->stop_expired && !sh->abandoned && !shard_idle(sh)) shard_abandon(sh);
    bool idle = shard_idle(sh);
    if (idle && !sh->quiesced) {
        sh->quiesced = true;
        if (atomic_fetch_sub(&sh->srv->shards_busy, 1) == 1) {
            /* The last one: the others wait for this (they may sleep). */
            for (uint32_t i = 0; i < sh->srv->n_shards; i++)
                if (i != bds__shard_id(s)) bds__shard_wake(sh->srv->shards[i]->shard);
        }
    }
    /* A shard ends only once every shard has been idle: until then another
     * shard's sessions may still send it work (EXEC, GRANT, CANCEL, DROP) that
     * nothing would run once it ended, and their calls would never come home
     * (a hard stop, 1-2 in 40 TSan runs under load). Once every shard has
     * been idle since its stop began, no session is left anywhere (no
     * listener, no connection makes new ones), so nothing can send work any
     * more. Shard 0 also reads SIGTERM/SIGINT: it hears a second one until the
     * end. */
    if (!idle || atomic_load(&sh->srv->shards_busy) > 0) return false;
    bds__timer_cancel(bds__shard_timers(s), &sh->stop_timer);
    return true;
}

/* ---- running ----------------------------------------------------------------------------------------- */

static int server_resolve(bds_server *srv, struct sockaddr_storage *ss, socklen_t *len, char *err, size_t errlen) {
    char host[256];
    uint16_t port;
    parse_listen(srv->listen, host, sizeof host, &port);
    if (srv->port) port = srv->port;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int rc = getaddrinfo(host[0] ? host : NULL, ps, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* Picks the port every shard will share before any shard starts: with port 0
 * one bound (not listening) SO_REUSEPORT socket reserves it, so the shards'
 * listeners all land on the same port. Returns that socket (or -1 on error);
 * the caller closes it once the shards listen. */
/* Without reuse_port, binds the address once without SO_REUSEPORT: that
 * fails while anything listens there (our shards' listeners would join a
 * SO_REUSEPORT group of another process of the same user, which then gets
 * part of our connections). On success ss gets the port the kernel picked
 * for port 0, so the shards bind a port nobody else uses. */
static int server_probe_port(bds_server *srv, struct sockaddr_storage *ss, socklen_t len, char *err, size_t errlen) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)ss, len) != 0) {
        if (errno == EADDRINUSE)
            snprintf(err, errlen, "listen %s: address already in use (another server listens there; "
                     "bds_server_config.reuse_port, --reuse-port, shares the port)", srv->listen);
        else
            snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    uint16_t port = bds__socket_port(fd);
    close(fd);
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    return 0;
}

static int server_reserve_port(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (server_resolve(srv, &ss, &len, err, errlen) != 0) return -1;
    if (!srv->cfg.reuse_port && server_probe_port(srv, &ss, len, err, errlen) != 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 || bind(fd, (struct sockaddr *)&ss, len) != 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    srv->port = bds__socket_port(fd);
    return fd;
}

static int server_listen_fd(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (server_resolve(srv, &ss, &len, err, errlen) != 0) return -1;
    int fd = bds__listen_socket((struct sockaddr *)&ss, len, 1024);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(-fd));
        return -1;
    }
    return fd;
}

struct start_ctx {
    bds_server *srv;
    char err[256];
};

static bds_status on_shard_start(bds_shard *s, void *vctx) {
    struct start_ctx *sc = vctx;
    bds_server *srv = sc->srv;
    uint32_t id = bds__shard_id(s);
    srv_shard *sh = calloc(1, sizeof *sh);
    if (!sh) return BDS_E_NOMEM;
    sh->srv = srv;
    sh->shard = s;
    srv->shards[id] = sh;
    msg_pools_init(sh);
    sh->flusher.fn = shard_flusher;
    tls_shard = sh;
    bds_status st = bds__pipe_attach(srv->pipes, s, &sh->pipe);
    if (st != BDS_OK) return st;
    bds_net_config nc;
    bds__net_config_default(&nc);
    /* each shard enforces its share: SO_REUSEPORT spreads connections evenly */
    uint32_t cmax = srv->cfg.max_connections;
    nc.conns_max = cmax ? cmax / srv->n_shards + (cmax % srv->n_shards != 0) : 0;
    nc.log = &srv->log;
    sh->net = bds__net_create(s, &nc);
    if (!sh->net) return BDS_E_NOMEM;
    /* The port was reserved before any shard started (server_reserve_port). */
    int fd = server_listen_fd(srv, sc->err, sizeof sc->err);
    if (fd < 0) return BDS_UNAVAILABLE;
    st = bds__listener_start(sh->net, fd, on_accept, sh, &sh->listener);
    if (st != BDS_OK) return st;
    bds_shard_hooks hooks = {
        .drain_inbox = hook_drain, .run_work = hook_run, .prepare_sleep = hook_prepare_sleep, .woken = hook_woken,
        .on_signal = hook_on_signal, .on_stop = hook_on_stop, .quiescent = hook_quiescent, .dump = hook_dump,
        .ctx = sh,
    };
    bds__shard_set_hooks(s, &hooks);
    return BDS_OK;
}

static void on_shard_exit(bds_shard *s, void *vctx) {
    struct start_ctx *sc = vctx;
    /* No stop call may reach the group once a shard goes: unpublish it and
     * let the calls already inside finish while every shard is alive. */
    atomic_store(&sc->srv->live_group, NULL);
    while (atomic_load(&sc->srv->stoppers) != 0) sched_yield();
    srv_shard *sh = sc->srv->shards[bds__shard_id(s)];
    if (!sh) return;
    if (sh->abandoned) { /* timers of what was abandoned never fire */
        bds_timer_heap *h = bds__shard_timers(s);
        while (bds__timer_count(h)) bds__timer_cancel(h, h->_v[0]);
    }
    if (sh->net) bds__net_destroy(sh->net);
    sh->net = NULL;
    tls_shard = NULL;
    /* The pipe outlives the shard until every shard has stopped (pipe.h). */
}

/* What hard stops abandoned: handlers may still hold its calls, so it is
 * never freed, and kept reachable on purpose (no leak report either). */
struct srv_abandoned {
    struct srv_abandoned *next;
    bds_pipe_group *pipes;
    srv_shard *shards[BDS_SHARDS_MAX];
};
static _Atomic(struct srv_abandoned *) srv_graveyard;

static void server_abandon_shards(bds_server *srv) {
    struct srv_abandoned *a = calloc(1, sizeof *a);
    if (a) {
        a->pipes = srv->pipes;
        memcpy(a->shards, srv->shards, sizeof a->shards);
        a->next = atomic_load(&srv_graveyard);
        while (!atomic_compare_exchange_weak(&srv_graveyard, &a->next, a)) {
        }
    }
    memset(srv->shards, 0, sizeof srv->shards);
    srv->pipes = NULL;
}

static void server_free_shards(bds_server *srv) {
    for (uint32_t i = 0; i < BDS_SHARDS_MAX; i++) {
        srv_shard *sh = srv->shards[i];
        if (!sh) continue;
        if (sh->pipe) bds__pipe_detach(sh->pipe);
        /* Every shard has stopped (joined): no message is held any more. */
        msg_pools_deinit(sh);
        free(sh);
        srv->shards[i] = NULL;
    }
}

bds_status bds_server_run(bds_server *srv) {
    if (srv->running) return BDS_FAILED_PRECONDITION;
    srv->running = true;
    bds_group_config gc;
    bds__group_config_default(&gc);
    gc.shards = srv->cfg.shards;
    gc.use_caller = true;
    gc.pin = true;
    gc.signals = true;
    gc.shard.idle_spin_us = srv->cfg.idle_spin_us;
    uint32_t n = srv->n_shards; /* fixed at create: the counters are sized by it */
    gc.shards = n;
    atomic_store(&srv->shards_busy, n);
    /* Every connection costs a descriptor: take all the hard limit allows. */
    uint64_t fds = bds__fd_limit_raise();
    if (fds && srv->cfg.max_connections && fds < (uint64_t)srv->cfg.max_connections + 64)
        bds__log(&srv->log, BDS_LOG_WARN, "warning: %llu file descriptors for up to %u connections: past the "
                 "descriptors, new connections are closed at once", (unsigned long long)fds, srv->cfg.max_connections);
    srv->pipes = bds__pipe_group_create(n, NULL);
    if (!srv->pipes) return BDS_E_NOMEM;
    struct start_ctx sc = {.srv = srv};
    int reserve = server_reserve_port(srv, sc.err, sizeof sc.err);
    if (reserve < 0) {
        bds__log(&srv->log, BDS_LOG_ERROR, "cannot start: %s", sc.err);
        bds__pipe_group_destroy(srv->pipes);
        srv->pipes = NULL;
        return BDS_UNAVAILABLE;
    }
    bds_status st = bds__group_start(&srv->group, &gc, on_shard_start, on_shard_exit, &sc, sc.err, sizeof sc.err);
    close(reserve);
    if (st != BDS_OK) {
        bds__log(&srv->log, BDS_LOG_ERROR, "cannot start: %s", sc.err[0] ? sc.err : bds_status_str(st));
        server_free_shards(srv);
        bds__pipe_group_destroy(srv->pipes);
        srv->pipes = NULL;
        return st;
    }
    if (bds__log_on(&srv->log, BDS_LOG_INFO)) {
        char host[256];
        uint16_t port;
        parse_listen(srv->listen, host, sizeof host, &port);
        bds__log(&srv->log, BDS_LOG_INFO, "listening on %s:%u with %u shard%s", host, srv->port, n, n == 1 ? "" : "s");
    }
    char ng[320]; /* which libnghttp2 and flood protections: a warning when one is missing or it is older */
    bool ng_warn = bds__h2_nghttp2_report(ng, sizeof ng);
    bds__log(&srv->log, ng_warn ? BDS_LOG_WARN : BDS_LOG_DEBUG, "%s%s", ng_warn ? "warning: " : "", ng);
    atomic_store(&srv->live_group, srv->group);
    if (atomic_load(&srv->stop_requested)) bds__group_stop(srv->group); /* stopped before it ran */
    if (srv->cfg.on_ready) srv->cfg.on_ready(srv, srv->port, srv->cfg.on_ready_ctx);
    bds__group_run(srv->group);
    bds__group_destroy(srv->group);
    srv->group = NULL;
    if (atomic_load(&srv->abandoned)) {
        server_abandon_shards(srv);
        return BDS_DEADLINE_EXCEEDED;
    }
    server_free_shards(srv);
    bds__pipe_group_destroy(srv->pipes);
    srv->pipes = NULL;
    return BDS_OK;
}

void bds_server_stop(bds_server *srv) {
    atomic_fetch_add(&srv->stoppers, 1);
    atomic_store(&srv->stop_requested, true);
    bds_group *g = atomic_load(&srv->live_group);
    if (g) bds__group_stop(g);
    atomic_fetch_sub(&srv->stoppers, 1);
}

uint16_t bds_server_port(const bds_server *srv) { return srv->port; }

static uint64_t ctr_get(const _Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }

bds_status bds_server_get_stats(const bds_server *srv, bds_server_stats *out) {
    if (!srv || !out) bds__misuse("bds_server_get_stats", "server or out is NULL");
    memset(out, 0, sizeof *out);
    out->n_methods = srv->n_methods;
    out->n_shards = srv->n_shards;
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        bds_method_stats *o = &out->methods[mi];
        o->path = srv->methods[mi].path;
        o->kind = srv->methods[mi].m.kind;
        for (uint32_t sh = 0; sh < srv->n_shards; sh++) {
            const srv_method_counters *c = &srv->mc[sh * BDS_SERVER_METHODS_MAX + mi];
            o->streams_opened += ctr_get(&c->streams_opened);
            o->streams_refused += ctr_get(&c->streams_refused);
            o->streams_ended += ctr_get(&c->streams_ended);
            o->streams_ok += ctr_get(&c->streams_ok);
            o->messages_in += ctr_get(&c->messages_in);
            o->messages_out += ctr_get(&c->messages_out);
            o->bytes_in += ctr_get(&c->bytes_in);
            o->bytes_out += ctr_get(&c->bytes_out);
            o->admitted += ctr_get(&c->core.admitted);
            o->rejected += ctr_get(&c->core.rejected);
            o->completed += ctr_get(&c->core.completed);
            o->failed += ctr_get(&c->core.failed);
            o->retried += ctr_get(&c->core.retried);
            o->panics += ctr_get(&c->core.panics);
            o->pressure_signals += ctr_get(&c->core.pressure_signals);
            o->replies_rejected += ctr_get(&c->core.replies_rejected);
            o->calls_live += ctr_get(&c->core.calls_live);
        }
        /* Read apart, the two may cross: a gauge never goes below zero. */
        o->streams_live = o->streams_opened > o->streams_ended ? o->streams_opened - o->streams_ended : 0;
    }
    for (uint32_t sh = 0; sh < srv->n_shards; sh++) {
        const srv_shard_counters *c = &srv->shc[sh];
        bds_server_shard_stats *o = &out->shards[sh];
        o->connections_live = ctr_get(&c->connections_live);
        o->connections_accepted = ctr_get(&c->connections_accepted);
        o->streams_live = ctr_get(&c->streams_live);
        o->message_bytes = ctr_get(&c->message_bytes);
        o->msgs_posted = ctr_get(&c->msgs_posted);
    }
    return BDS_OK;
}

void bds__server_dump(bds_server *srv, FILE *f) {
    /* The stop calls' protocol: a shard that exits waits for us. */
    atomic_fetch_add(&srv->stoppers, 1);
    bds_group *g = atomic_load(&srv->live_group);
    if (g)
        bds__group_dump(g, f);
    else
        fprintf(f, "server: no shard is running\n");
    atomic_fetch_sub(&srv->stoppers, 1);
}
