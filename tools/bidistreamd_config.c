/* tools/bidistreamd_config.c — bidistreamd's flags and config file.
 *
 * Design: one table (`opts`) names every setting once: its flag/key, the type
 * of value it takes, where it lands in bds_server_config, its range and its
 * help line. The command-line tokenizer, the config-file reader, --help and
 * --check-config all walk that table, so a setting cannot be accepted by one
 * and unknown to another.
 *
 * Parsing runs in three steps so that flags beat the file wherever they sit on
 * the command line: (1) walk argv for structure only (unknown flags, missing
 * values, --help, --version, --config FILE); (2) read the file; (3) walk argv
 * again and apply the values. Then cross-flag rules run, each naming a flag,
 * and bds_options_validate() has the last word.
 *
 * Invariants: every error is one line "bidistreamd: <where>: <why>" that names
 * the flag (or file:line and key); numbers are strict (digits only: no sign, no
 * spaces, no hex), so "-1" never wraps into a huge capacity.
 * Memory: nothing is allocated; the listen address is copied into the config. */
#include "bidistreamd_config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

/* ---- the table ------------------------------------------------------------------------ */

typedef enum opt_kind {
    K_LISTEN,   /* const char *: HOST:PORT */
    K_ADDR,     /* const char *: HOST:PORT, or "off" (NULL); its text in _metrics_listen (the one such option) */
    K_U32,      /* uint32_t, plain digits */
    K_BYTES,    /* uint32_t, digits with an optional B/KiB/MiB/GiB suffix */
    K_BOOL,     /* bool */
    K_DURATION, /* uint64_t nanoseconds: 250ms, 1.5s, 1m30s */
    K_ORDERING, /* bds_ordering_mode */
    K_POLICY,   /* bds_backpressure_policy */
    K_LOGLEVEL, /* int 0..3 */
    K_PATH,     /* const char *: a file path, kept in _paths[min] */
    K_COMPRESSION, /* bds_compression */
} opt_kind;

typedef struct opt {
    const char *name;  /* the long flag without "--", and the config-file key */
    opt_kind kind;
    size_t off;        /* offset of the field in bds_tool_config (most are in its server config) */
    uint64_t min, max; /* inclusive bounds (K_U32, K_BYTES, K_DURATION) */
    const char *help;
} opt;

/* offsetof(bds_tool_config, server.m) that does not compile (with -Werror:
 * distinct pointer types) unless the member has type T, so the table cannot
 * write a uint32_t through a uint64_t; TOOL_FIELD for bidistreamd's own
 * settings (bds_tool_config.m). */
#define FIELD(T, m) (offsetof(bds_tool_config, server.m) + 0 * sizeof((T *)0 == &((bds_tool_config *)0)->server.m))
#define TOOL_FIELD(T, m) (offsetof(bds_tool_config, m) + 0 * sizeof((T *)0 == &((bds_tool_config *)0)->m))

#define NS_PER_US 1000ULL
#define NS_PER_MS 1000000ULL
#define NS_PER_S 1000000000ULL
#define NS_PER_HOUR (3600ULL * NS_PER_S)
#define NS_PER_DAY (24ULL * NS_PER_HOUR)
/* bds_options_validate() refuses more; the table says so at the flag instead. */
#define MAX_ATTEMPTS 1000u
/* Protobuf messages are limited to 2 GiB - 1; RFC 9113 §6.9.2 caps the window there too. */
#define INT31_MAX 0x7fffffffULL

static const opt opts[] = {
    {"listen", K_LISTEN, FIELD(const char *, listen), 0, 0, "address to serve, HOST:PORT (port 0 = any free port)"},
    /* io/server.c refuses more than 64 shards. */
    {"shards", K_U32, FIELD(uint32_t, shards), 0, 64, "shard threads, 0 = one per CPU in the affinity mask"},
    {"inbound-ordering", K_ORDERING, FIELD(bds_ordering_mode, options.inbound.ordering.mode), 0, 0,
     "fifo (one order per stream) or keyed (per key, keys in parallel)"},
    {"inbound-ordering-capacity", K_U32, FIELD(uint32_t, options.inbound.ordering.capacity), 0, UINT32_MAX,
     "messages waiting for their turn, 0 = no limit"},
    {"inbound-policy", K_POLICY, FIELD(bds_backpressure_policy, options.inbound.backpressure.policy), 0, 0,
     "hard-reject, queue, soft-allow or soft-allow-signal"},
    {"inbound-capacity", K_U32, FIELD(uint32_t, options.inbound.backpressure.capacity), 0, UINT32_MAX,
     "concurrent executions per stream, 0 = no limit"},
    {"inbound-queue-capacity", K_U32, FIELD(uint32_t, options.inbound.backpressure.queue_capacity), 0, UINT32_MAX,
     "waiters for capacity, queue policy only (0 = no limit; other policies: 0)"},
    {"inbound-bytes-max", K_BYTES, FIELD(uint32_t, options.inbound.outstanding_bytes_max), 0, UINT32_MAX,
     "payload bytes admitted and unfinished per stream before the server stops reading it, 0 = no limit"},
    {"inbound-read-ahead", K_U32, FIELD(uint32_t, options.inbound.read_ahead), 0, UINT32_MAX,
     "messages admitted and not yet running per stream before the server stops reading it (queue and soft policies), 0 = no limit"},
    {"outbound-ordering", K_ORDERING, FIELD(bds_ordering_mode, options.outbound.ordering.mode), 0, 0,
     "fifo or keyed"},
    {"outbound-ordering-capacity", K_U32, FIELD(uint32_t, options.outbound.ordering.capacity), 0, UINT32_MAX,
     "replies waiting for their turn, 0 = no limit"},
    {"outbound-policy", K_POLICY, FIELD(bds_backpressure_policy, options.outbound.backpressure.policy), 0, 0,
     "hard-reject, queue, soft-allow or soft-allow-signal"},
    {"outbound-capacity", K_U32, FIELD(uint32_t, options.outbound.backpressure.capacity), 0, UINT32_MAX,
     "unwritten replies per stream, 0 = no limit"},
    {"outbound-queue-capacity", K_U32, FIELD(uint32_t, options.outbound.backpressure.queue_capacity), 0,
     UINT32_MAX, "waiters for capacity, queue policy only"},
    {"outbound-bytes-max", K_BYTES, FIELD(uint32_t, options.outbound.unsent_bytes_max), 0, UINT32_MAX,
     "reply bytes per stream the client has not taken before the server stops reading the stream (hard-reject: RESOURCE_EXHAUSTED), 0 = no limit"},
    {"fail-fast", K_BOOL, FIELD(bool, options.outbound.fail_fast), 0, 0, "an outbound error ends the stream"},
    {"drain-on-client-close", K_BOOL, FIELD(bool, options.inbound.drain_on_client_close), 0, 0,
     "after the client half-closes, finish in-flight work before OK"},
    {"failures-terminal", K_BOOL, FIELD(bool, options.inbound.failures_terminal), 0, 0,
     "a handler failure (retries spent) ends the stream"},
    {"max-attempts", K_U32, FIELD(uint32_t, options.retry.max_attempts), 0, MAX_ATTEMPTS,
     "retries per message, 0 = none"},
    {"backoff", K_DURATION, FIELD(uint64_t, options.retry.backoff_ns), 0, NS_PER_HOUR,
     "delay between retries, e.g. 10ms"},
    {"grace", K_DURATION, FIELD(uint64_t, options.shutdown.grace_period_ns), 0, NS_PER_HOUR,
     "shutdown grace period, e.g. 5s"},
    {"drain-inbound", K_BOOL, FIELD(bool, options.shutdown.drain_inbound), 0, 0,
     "on shutdown, finish admitted messages"},
    {"drain-outbound", K_BOOL, FIELD(bool, options.shutdown.drain_outbound), 0, 0,
     "on shutdown, send queued replies"},
    {"metrics", K_BOOL, FIELD(bool, options.metrics.enabled), 0, 0, "keep pipeline counters"},
    {"metrics-payload-sizes", K_BOOL, FIELD(bool, options.metrics.payload_sizes), 0, 0,
     "also sum payload bytes (needs --metrics)"},
    /* io/server.c refuses less than 16 bytes, a 1 KiB window or header list, no streams. */
    {"max-message-bytes", K_BYTES, FIELD(uint32_t, max_message_bytes), 16, INT31_MAX,
     "larger messages end the stream with RESOURCE_EXHAUSTED"},
    {"compress-responses", K_COMPRESSION, FIELD(bds_compression, compress_responses), 0, 0,
     "compress every reply with none, deflate or gzip when its client takes it (CPU on the stream's shard)"},
    {"max-concurrent-streams", K_U32, FIELD(uint32_t, max_concurrent_streams), 1, INT31_MAX,
     "per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)"},
    {"max-lingering-streams", K_U32, FIELD(uint32_t, max_lingering_streams), 1, INT31_MAX,
     "per connection: streams over whose handlers still run; past it new streams get RESOURCE_EXHAUSTED"},
    {"max-header-list-bytes", K_BYTES, FIELD(uint32_t, max_header_list_bytes), 1024, UINT32_MAX,
     "HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE"},
    {"stream-window-bytes", K_BYTES, FIELD(uint32_t, stream_window_bytes), 1024, INT31_MAX,
     "HTTP/2 initial stream window"},
    {"stream-window-max-bytes", K_BYTES, FIELD(uint32_t, stream_window_max_bytes), 0, INT31_MAX,
     "windows grow to this as the measured bandwidth-delay product asks (PINGs, as grpc-go), 0 = fixed at --stream-window-bytes"},
    {"conn-bytes-max", K_BYTES, FIELD(uint32_t, conn_bytes_max), 0, UINT32_MAX,
     "memory per connection (messages, HTTP/2 state) before it is not read, its new streams are refused and its largest ends RESOURCE_EXHAUSTED, 0 = no limit"},
    {"shard-bytes-max", K_BYTES, FIELD(uint32_t, shard_bytes_max), 0, UINT32_MAX,
     "memory per shard before no connection of it is read, new streams are refused and its largest ends RESOURCE_EXHAUSTED, 0 = no limit"},
    /* Spinning longer than a second before sleeping is a unit mistake, not a choice. */
    {"idle-spin-us", K_U32, FIELD(uint32_t, idle_spin_us), 0, 1000000, "spin this long before sleeping, 0 = never"},
    {"interop", K_BOOL, FIELD(bool, interop_service), 0, 0,
     "also serve grpc.testing.TestService, the gRPC interop test service"},
    {"reflection", K_BOOL, FIELD(bool, reflection), 0, 0,
     "also serve grpc.reflection.v1 and v1alpha ServerReflection (the service list and the built-in .proto files)"},
    {"tls-cert", K_PATH, FIELD(const char *, tls_cert_file), 0, 0,
     "serve TLS (1.2+, ALPN h2) with this PEM certificate chain, leaf first; SIGHUP reloads it"},
    {"tls-key", K_PATH, FIELD(const char *, tls_key_file), 1, 0, "the PEM private key of --tls-cert"},
    {"tls-client-ca", K_PATH, FIELD(const char *, tls_client_ca_file), 2, 0,
     "require client certificates that chain to these PEM CAs (mTLS)"},
    {"interop-responses-max", K_U32, FIELD(uint32_t, interop_responses_max), 0, UINT32_MAX,
     "interop: responses one StreamingOutputCallRequest may ask for; more: RESOURCE_EXHAUSTED"},
    {"interop-response-bytes-max", K_BYTES, FIELD(uint32_t, interop_response_bytes_max), 0, UINT32_MAX,
     "interop: response bytes one StreamingOutputCallRequest may ask for; more: RESOURCE_EXHAUSTED"},
    {"max-connections", K_U32, FIELD(uint32_t, max_connections), 0, UINT32_MAX,
     "open connections, split across shards; past it new ones are closed at once, 0 = no limit"},
    {"reuse-port", K_BOOL, FIELD(bool, reuse_port), 0, 0,
     "share the port with other listeners of the same user (SO_REUSEPORT); else a port in use is refused"},
    {"log-level", K_LOGLEVEL, FIELD(int, log_level), 0, 0, "error, warn, info or debug"},
    {"access-log", K_BOOL, TOOL_FIELD(bool, access_log), 0, 0,
     "one line per stream on stderr: method, peer, status, messages, bytes, duration"},
    {"metrics-listen", K_ADDR, FIELD(const char *, metrics_listen), 0, 0,
     "serve Prometheus metrics (GET /metrics) on HOST:PORT, or off"},
    /* Connection timers: 0 turns one off; a day is already far past any use. */
    {"handshake-timeout", K_DURATION, FIELD(uint64_t, handshake_timeout_ns), 0, NS_PER_DAY,
     "close a connection without HTTP/2 preface and SETTINGS this long after accept, 0 = never"},
    {"idle-timeout", K_DURATION, FIELD(uint64_t, idle_timeout_ns), 0, NS_PER_DAY,
     "GOAWAY(NO_ERROR) a connection with no open stream for this long, 0 = never"},
    {"max-connection-age", K_DURATION, FIELD(uint64_t, max_connection_age_ns), 0, NS_PER_DAY,
     "GOAWAY(NO_ERROR) a connection this old (+-10% jitter); its open streams run on, 0 = never"},
    {"max-connection-age-grace", K_DURATION, FIELD(uint64_t, max_connection_age_grace_ns), 0, NS_PER_DAY,
     "after the age's GOAWAY, streams still open this long end UNAVAILABLE and it closes, 0 = no limit"},
    {"keepalive-time", K_DURATION, FIELD(uint64_t, keepalive_time_ns), 0, NS_PER_DAY,
     "PING a connection that sent nothing for this long, 0 = never"},
    {"keepalive-timeout", K_DURATION, FIELD(uint64_t, keepalive_timeout_ns), 0, NS_PER_DAY,
     "close a connection whose keepalive PING is unanswered this long, 0 = never"},
    {"ping-min-interval", K_DURATION, FIELD(uint64_t, ping_min_interval_ns), 0, NS_PER_DAY,
     "client PINGs closer than this are strikes; the third: GOAWAY(ENHANCE_YOUR_CALM, too_many_pings); 0 = no policy"},
    {"ping-without-streams", K_BOOL, FIELD(bool, ping_without_streams), 0, 0,
     "permit client keepalive PINGs while no stream is open"},
    {"send-timeout", K_DURATION, FIELD(uint64_t, send_timeout_ns), 0, NS_PER_DAY,
     "close a connection whose queued output made no progress for this long, 0 = never"},
    {"tcp-user-timeout-ms", K_U32, FIELD(uint32_t, tcp_user_timeout_ms), 0, INT31_MAX,
     "TCP_USER_TIMEOUT of accepted sockets in ms, 0 = the kernel's default"},
};

#define N_OPTS (sizeof opts / sizeof opts[0])
_Static_assert(N_OPTS <= 64, "bds_tool_config._set has one bit per option");

static const char *const ordering_names[] = {"fifo", "keyed"};
static const char *const policy_names[] = {"hard-reject", "queue", "soft-allow", "soft-allow-signal"};
static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const compression_names[] = {"none", "deflate", "gzip"};
_Static_assert(BDS_COMPRESSION_NONE == 0 && BDS_COMPRESSION_DEFLATE == 1 && BDS_COMPRESSION_GZIP == 2,
               "compression_names order");
_Static_assert(BDS_ORDERING_FIFO == 0 && BDS_ORDERING_KEYED_FIFO == 1, "ordering_names order");
_Static_assert(BDS_BP_HARD_REJECT == 0 && BDS_BP_QUEUE == 1 && BDS_BP_SOFT_ALLOW == 2 &&
                   BDS_BP_SOFT_ALLOW_SIGNAL == 3,
               "policy_names order");

static void *opt_field(bds_tool_config *c, const opt *o) {
    return (char *)c + o->off;
}

static const void *opt_field_const(const bds_tool_config *c, const opt *o) {
    return (const char *)c + o->off;
}

static const opt *opt_find(const char *name, size_t name_len) {
    for (size_t i = 0; i < N_OPTS; i++) {
        if (strlen(opts[i].name) == name_len && memcmp(opts[i].name, name, name_len) == 0) return &opts[i];
    }
    return NULL;
}

/* ---- errors ---------------------------------------------------------------------------- */

/* Formats "bidistreamd: <where>: <why>" into err; always returns false so that
 * callers can `return fail(...)`. */
__attribute__((format(printf, 4, 5))) static bool fail(char *err, size_t errlen, const char *where,
                                                       const char *fmt, ...) {
    if (!err || errlen == 0) return false;
    int n = snprintf(err, errlen, "bidistreamd: %s: ", where);
    if (n < 0) err[0] = 0;
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* One line, whatever the value or the where contained (a config file line
     * cannot, argv can), even when the where alone fills the buffer. */
    for (char *p = err; *p; p++) {
        if (*p == '\n' || *p == '\r') *p = ' ';
    }
    return false;
}

/* ---- values ---------------------------------------------------------------------------- */

typedef enum parse_result { P_OK, P_SYNTAX, P_RANGE } parse_result;

/* *acc += a * b, or false (and *acc undefined) when that passes UINT64_MAX.
 * Every sum and product on a parsed number goes through here or parse_digits. */
static bool add_product(uint64_t *acc, uint64_t a, uint64_t b) {
    uint64_t p;
    return !__builtin_mul_overflow(a, b, &p) && !__builtin_add_overflow(*acc, p, acc);
}

/* Digits only (at least one); P_RANGE past UINT64_MAX. *end is where the digits stop. */
static parse_result parse_digits(const char *s, const char **end, uint64_t *out) {
    uint64_t x = 0;
    const char *p = s;
    if (*p < '0' || *p > '9') return P_SYNTAX;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (x > (UINT64_MAX - d) / 10) return P_RANGE;
        x = x * 10 + d;
    }
    *end = p;
    *out = x;
    return P_OK;
}

static parse_result parse_u64_in(const char *v, uint64_t min, uint64_t max, uint64_t *out) {
    const char *end;
    parse_result r = parse_digits(v, &end, out);
    if (r != P_OK) return r;
    if (*end) return P_SYNTAX;
    return *out < min || *out > max ? P_RANGE : P_OK;
}

static parse_result parse_bytes(const char *v, uint64_t min, uint64_t max, uint64_t *out) {
    static const struct { const char *suffix; uint64_t mul; } units[] = {
        {"", 1}, {"B", 1}, {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30},
    };
    const char *end;
    uint64_t x;
    parse_result r = parse_digits(v, &end, &x);
    if (r != P_OK) return r;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) != 0) continue;
        *out = 0;
        if (!add_product(out, x, units[i].mul)) return P_RANGE;
        return *out < min || *out > max ? P_RANGE : P_OK;
    }
    return P_SYNTAX;
}

/* Go's time.ParseDuration grammar without a sign: "0", or one or more
 * <digits>[.<digits>]<unit> with unit ns, us, ms, s, m or h ("1m30s", "1.5s").
 * Fractions below a nanosecond are dropped. */
static parse_result parse_duration(const char *v, uint64_t max, uint64_t *out) {
    static const struct { const char *unit; uint64_t ns; } units[] = {
        /* "ms" before "m": the first prefix match wins. */
        {"ns", 1}, {"us", NS_PER_US}, {"ms", NS_PER_MS}, {"s", NS_PER_S}, {"m", 60 * NS_PER_S},
        {"h", NS_PER_HOUR},
    };
    if (strcmp(v, "0") == 0) {
        *out = 0;
        return P_OK;
    }
    uint64_t total = 0;
    const char *p = v;
    if (!*p) return P_SYNTAX;
    while (*p) {
        uint64_t whole = 0;
        const char *frac = NULL, *end = p;
        if (*p != '.') {
            parse_result r = parse_digits(p, &end, &whole);
            if (r != P_OK) return r;
        }
        if (*end == '.') {
            frac = end + 1;
            for (end = frac; *end >= '0' && *end <= '9'; end++) {}
            if (end == frac && end - 1 == p) return P_SYNTAX; /* "." alone */
        }
        size_t u = 0;
        while (u < sizeof units / sizeof units[0] && strncmp(end, units[u].unit, strlen(units[u].unit)) != 0) u++;
        if (u == sizeof units / sizeof units[0]) return P_SYNTAX;
        uint64_t unit_ns = units[u].ns;
        if (!add_product(&total, whole, unit_ns)) return P_RANGE;
        /* Each fraction digit is worth a tenth of the previous one. The sum is
         * checked too: "5124095.6h" is 2^64 + 86 s, not 86 s. */
        uint64_t scale = unit_ns / 10;
        for (const char *f = frac; f && *f >= '0' && *f <= '9' && scale; f++, scale /= 10) {
            if (!add_product(&total, (uint64_t)(*f - '0'), scale)) return P_RANGE;
        }
        if (total > max) return P_RANGE;
        p = end + strlen(units[u].unit);
    }
    *out = total;
    return total > max ? P_RANGE : P_OK;
}

static bool parse_bool_word(const char *v, bool *out) {
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(v, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static int parse_name(const char *v, const char *const *names, int n) {
    for (int i = 0; i < n; i++) {
        if (strcmp(v, names[i]) == 0) return i;
    }
    return -1;
}

/* HOST:PORT with an optional [IPv6] host and an empty host meaning any address;
 * the port is 0..65535 in plain digits. The host itself is resolved by the
 * server (getaddrinfo), which reports a name it cannot resolve. */
static bool listen_valid(const char *v) {
    const char *colon = strrchr(v, ':');
    if (!colon) return false;
    if (v[0] == '[' && (colon == v || colon[-1] != ']')) return false;
    uint64_t port;
    return parse_u64_in(colon + 1, 0, 65535, &port) == P_OK;
}

/* Canonical text of a duration: the largest unit that divides it exactly. */
static void format_duration(uint64_t ns, char *buf, size_t len) {
    static const struct { const char *unit; uint64_t ns; } units[] = {
        {"h", NS_PER_HOUR}, {"m", 60 * NS_PER_S}, {"s", NS_PER_S}, {"ms", NS_PER_MS}, {"us", NS_PER_US},
        {"ns", 1},
    };
    if (ns == 0) {
        snprintf(buf, len, "0");
        return;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (ns % units[i].ns == 0) {
            snprintf(buf, len, "%" PRIu64 "%s", ns / units[i].ns, units[i].unit);
            return;
        }
    }
}

/* ---- applying one setting ---------------------------------------------------------------- */

static bool apply_range_error(const opt *o, const char *where, const char *v, char *err, size_t errlen) {
    if (o->kind == K_DURATION) {
        char hi[32];
        format_duration(o->max, hi, sizeof hi);
        return fail(err, errlen, where, "'%.64s' is out of range (0 to %s)", v, hi);
    }
    return fail(err, errlen, where, "'%.64s' is out of range (%" PRIu64 " to %" PRIu64 ")", v, o->min, o->max);
}

/* Sets o's field from text v. where names the flag or the file:line and key. */
static bool opt_apply(bds_tool_config *c, const opt *o, const char *v, const char *where, char *err,
                      size_t errlen) {
    void *f = opt_field(c, o);
    uint64_t x = 0;
    parse_result r;
    int idx;
    switch (o->kind) {
    case K_LISTEN:
        if (strlen(v) > BDS_TOOL_LISTEN_MAX) return fail(err, errlen, where, "address too long");
        if (!listen_valid(v)) {
            return fail(err, errlen, where, "expected HOST:PORT with a port 0 to 65535, got '%.64s'", v);
        }
        snprintf(c->_listen, sizeof c->_listen, "%s", v);
        *(const char **)f = c->_listen;
        break;
    case K_PATH:
        if (!v[0]) return fail(err, errlen, where, "expected a file path");
        if (strlen(v) > BDS_TOOL_PATH_MAX) return fail(err, errlen, where, "path too long");
        snprintf(c->_paths[o->min], sizeof c->_paths[o->min], "%s", v);
        *(const char **)f = c->_paths[o->min];
        break;
    case K_ADDR:
        if (strcmp(v, "off") == 0) {
            *(const char **)f = NULL;
            break;
        }
        if (strlen(v) > BDS_TOOL_LISTEN_MAX) return fail(err, errlen, where, "address too long");
        if (!listen_valid(v)) {
            return fail(err, errlen, where, "expected HOST:PORT with a port 0 to 65535, or off, got '%.64s'", v);
        }
        snprintf(c->_metrics_listen, sizeof c->_metrics_listen, "%s", v);
        *(const char **)f = c->_metrics_listen;
        break;
    case K_U32:
    case K_BYTES:
        if (v[0] == '-') return fail(err, errlen, where, "'%.64s' is negative (expected 0 or more)", v);
        r = o->kind == K_U32 ? parse_u64_in(v, o->min, o->max, &x) : parse_bytes(v, o->min, o->max, &x);
        if (r == P_SYNTAX) {
            return fail(err, errlen, where, o->kind == K_U32 ? "expected a whole number, got '%.64s'"
                                                             : "expected a size like 65536 or 4MiB, got '%.64s'",
                        v);
        }
        if (r == P_RANGE) return apply_range_error(o, where, v, err, errlen);
        *(uint32_t *)f = (uint32_t)x;
        break;
    case K_DURATION:
        if (v[0] == '-') return fail(err, errlen, where, "'%.64s' is negative", v);
        r = parse_duration(v, o->max, &x);
        if (r == P_SYNTAX) return fail(err, errlen, where, "expected a duration like 250ms, 5s or 1m30s, got '%.64s'", v);
        if (r == P_RANGE) return apply_range_error(o, where, v, err, errlen);
        *(uint64_t *)f = x;
        break;
    case K_BOOL:
        if (!parse_bool_word(v, (bool *)f)) return fail(err, errlen, where, "expected true or false, got '%.64s'", v);
        break;
    case K_ORDERING:
        if ((idx = parse_name(v, ordering_names, 2)) < 0) {
            return fail(err, errlen, where, "expected fifo or keyed, got '%.64s'", v);
        }
        *(bds_ordering_mode *)f = (bds_ordering_mode)idx;
        break;
    case K_POLICY:
        if ((idx = parse_name(v, policy_names, 4)) < 0) {
            return fail(err, errlen, where,
                        "expected hard-reject, queue, soft-allow or soft-allow-signal, got '%.64s'", v);
        }
        *(bds_backpressure_policy *)f = (bds_backpressure_policy)idx;
        break;
    case K_LOGLEVEL:
        if ((idx = parse_name(v, level_names, 4)) < 0) {
            return fail(err, errlen, where, "expected error, warn, info or debug, got '%.64s'", v);
        }
        *(int *)f = idx;
        break;
    case K_COMPRESSION:
        if ((idx = parse_name(v, compression_names, 3)) < 0) {
            return fail(err, errlen, where, "expected none, deflate or gzip, got '%.64s'", v);
        }
        *(bds_compression *)f = (bds_compression)idx;
        break;
    }
    c->_set |= 1ULL << (o - opts);
    return true;
}

/* The text of o's current value, as the config file and --help show it. */
static void opt_format(const bds_tool_config *c, const opt *o, char *buf, size_t len) {
    const void *f = opt_field_const(c, o);
    int i;
    switch (o->kind) {
    case K_LISTEN: snprintf(buf, len, "%s", *(const char *const *)f); break;
    case K_PATH: snprintf(buf, len, "%s", *(const char *const *)f ? *(const char *const *)f : ""); break;
    case K_ADDR: snprintf(buf, len, "%s", *(const char *const *)f ? *(const char *const *)f : "off"); break;
    case K_U32:
    case K_BYTES: snprintf(buf, len, "%" PRIu32, *(const uint32_t *)f); break;
    case K_DURATION: format_duration(*(const uint64_t *)f, buf, len); break;
    case K_BOOL: snprintf(buf, len, "%s", *(const bool *)f ? "true" : "false"); break;
    case K_ORDERING:
        i = (int)*(const bds_ordering_mode *)f;
        snprintf(buf, len, "%s", i >= 0 && i < 2 ? ordering_names[i] : "?");
        break;
    case K_POLICY:
        i = (int)*(const bds_backpressure_policy *)f;
        snprintf(buf, len, "%s", i >= 0 && i < 4 ? policy_names[i] : "?");
        break;
    case K_LOGLEVEL:
        i = *(const int *)f;
        snprintf(buf, len, "%s", i >= 0 && i < 4 ? level_names[i] : "?");
        break;
    case K_COMPRESSION:
        i = (int)*(const bds_compression *)f;
        snprintf(buf, len, "%s", i >= 0 && i < 3 ? compression_names[i] : "?");
        break;
    }
}

/* ---- the config file --------------------------------------------------------------------- */

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

/* One "key = value" line (comment and blanks already gone). */
static bool file_line(bds_tool_config *c, char *s, const char *path, int lineno, char *err, size_t errlen) {
    char where[512];
    snprintf(where, sizeof where, "%.400s:%d", path, lineno);
    char *eq = strchr(s, '=');
    if (!eq) return fail(err, errlen, where, "expected 'key = value', got '%.64s'", s);
    *eq = 0;
    char *key = trim(s), *val = trim(eq + 1);
    if (strcmp(key, "config") == 0) return fail(err, errlen, where, "config: config files do not nest");
    const opt *o = opt_find(key, strlen(key));
    if (!o) return fail(err, errlen, where, "unknown key '%.64s' (keys are the long flag names, see --help)", key);
    if (!*val) return fail(err, errlen, where, "%s: missing value", key);
    snprintf(where, sizeof where, "%.400s:%d: %s", path, lineno, o->name);
    return opt_apply(c, o, val, where, err, errlen);
}

static bool file_read(bds_tool_config *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, errlen, "--config", "%.400s: %s", path, strerror(errno));
    /* 4 KiB is far more than any key = value needs; a longer line is refused, not split. */
    char line[4096];
    int lineno = 0;
    bool ok = true;
    while (ok && fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        /* A line that stops short of its newline, the buffer's end and the
         * file's end held a NUL byte (strlen stopped there): refused, or a
         * file like /dev/zero would be read as empty lines for ever. */
        if (n < sizeof line - 1 && (n == 0 || line[n - 1] != '\n') && !feof(f)) {
            char where[440];
            snprintf(where, sizeof where, "%.400s:%d", path, lineno);
            ok = fail(err, errlen, where, "a NUL byte (not a text file?)");
            break;
        }
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            int next = getc(f); /* a full buffer is a long line unless the file ends right there */
            if (next != EOF) {
                char where[440];
                snprintf(where, sizeof where, "%.400s:%d", path, lineno);
                ok = fail(err, errlen, where, "line longer than %zu bytes", sizeof line - 2);
                break;
            }
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *s = trim(line);
        if (*s) ok = file_line(c, s, path, lineno, err, errlen);
    }
    if (ok && ferror(f)) ok = fail(err, errlen, "--config", "%.400s: read error", path);
    fclose(f);
    return ok;
}

/* ---- the command line -------------------------------------------------------------------- */

typedef enum arg_type { A_OPT, A_CONFIG, A_HELP, A_VERSION, A_CHECK, A_ERROR } arg_type;

typedef struct arg {
    arg_type type;
    const opt *o;      /* A_OPT */
    const char *value; /* A_OPT, A_CONFIG */
    char flag[80];     /* "--name", for errors */
} arg;

/* Reads the argument at argv[*i] (and its value) and advances *i past them.
 * Values come as "--name=value" or "--name value"; a boolean flag alone means
 * true, and takes the next word as its value only if it is a boolean word. A
 * value never starts with "--" (none of ours can), so "--listen --shards 2" is
 * a missing value, not a listen address "--shards". */
static arg_type arg_next(int argc, char *const argv[], int *i, arg *a, char *err, size_t errlen) {
    const char *s = argv[(*i)++];
    memset(a, 0, sizeof *a);
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) return a->type = A_HELP;
    if (strcmp(s, "--version") == 0) return a->type = A_VERSION;
    if (strcmp(s, "--check-config") == 0) return a->type = A_CHECK;
    if (strncmp(s, "--", 2) != 0 || !s[2]) {
        fail(err, errlen, s, "unexpected argument (options start with --, see --help)");
        return a->type = A_ERROR;
    }
    const char *name = s + 2, *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    snprintf(a->flag, sizeof a->flag, "--%.*s", (int)(name_len > 64 ? 64 : name_len), name);
    bool is_config = name_len == 6 && memcmp(name, "config", 6) == 0;
    a->o = is_config ? NULL : opt_find(name, name_len);
    if (!is_config && !a->o) {
        fail(err, errlen, a->flag, "unknown option (see --help)");
        return a->type = A_ERROR;
    }
    bool is_bool = a->o && a->o->kind == K_BOOL;
    bool dummy;
    if (eq) {
        a->value = eq + 1;
    } else if (*i < argc && strncmp(argv[*i], "--", 2) != 0 &&
               (!is_bool || parse_bool_word(argv[*i], &dummy))) {
        a->value = argv[(*i)++];
    } else if (is_bool) {
        a->value = "true";
    }
    if (!a->value || (!*a->value && !is_bool)) {
        fail(err, errlen, a->flag, "missing value");
        return a->type = A_ERROR;
    }
    return a->type = is_config ? A_CONFIG : A_OPT;
}

/* ---- rules across flags ------------------------------------------------------------------ */

static bool opt_was_set(const bds_tool_config *c, const char *name) {
    const opt *o = opt_find(name, strlen(name));
    return o && (c->_set >> (o - opts) & 1);
}

/* A queue capacity means something only for the queue policy with a capacity.
 * Left at its default it follows the policy (hard-reject just works); set on
 * purpose where it cannot apply, it is an error that names the flag. */
static bool check_queue(bds_tool_config *c, bds_backpressure_options *bp, const char *dir, char *err,
                        size_t errlen) {
    char name[64], flag[80];
    snprintf(name, sizeof name, "%s-queue-capacity", dir);
    snprintf(flag, sizeof flag, "--%s", name);
    bool applies = bp->policy == BDS_BP_QUEUE && bp->capacity != 0;
    if (applies || bp->queue_capacity == 0) return true;
    if (!opt_was_set(c, name)) {
        bp->queue_capacity = 0;
        return true;
    }
    if (bp->policy != BDS_BP_QUEUE) {
        return fail(err, errlen, flag, "applies only with --%s-policy queue (the policy is %s)", dir,
                    policy_names[bp->policy]);
    }
    return fail(err, errlen, flag, "needs --%s-capacity above 0 (0 means no limit, so nothing waits)", dir);
}

static bool check_rules(bds_tool_config *c, char *err, size_t errlen) {
    bds_options *o = &c->server.options;
    if (!check_queue(c, &o->inbound.backpressure, "inbound", err, errlen)) return false;
    if (!check_queue(c, &o->outbound.backpressure, "outbound", err, errlen)) return false;
    if (o->retry.backoff_ns != 0 && o->retry.max_attempts == 0) {
        return fail(err, errlen, "--backoff", "needs --max-attempts above 0 (no retry would wait for it)");
    }
    if (o->metrics.payload_sizes && !o->metrics.enabled) {
        return fail(err, errlen, "--metrics-payload-sizes", "needs --metrics true");
    }
    /* TLS: a certificate and its key go together; client CAs need both. */
    const bds_server_config *s = &c->server;
    if (s->tls_key_file && !s->tls_cert_file) return fail(err, errlen, "--tls-key", "needs --tls-cert");
    if (s->tls_cert_file && !s->tls_key_file) return fail(err, errlen, "--tls-cert", "needs --tls-key");
    if (s->tls_client_ca_file && !s->tls_cert_file) return fail(err, errlen, "--tls-client-ca", "needs --tls-cert");
    if (c->server.max_connection_age_grace_ns != 0 && c->server.max_connection_age_ns == 0) {
        return fail(err, errlen, "--max-connection-age-grace", "needs --max-connection-age above 0 (no age, no grace)");
    }
    /* The last word: anything the rules above missed still gets one line. */
    const char *why = NULL;
    if (bds_options_validate(o, &why) != BDS_OK) return fail(err, errlen, "options", "%s", why ? why : "invalid");
    return true;
}

/* ---- entry points ------------------------------------------------------------------------ */

int bds_tool_parse_args(int argc, char *const argv[], bds_tool_config *cfg, char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    bds_server_config_default(&cfg->server);
    snprintf(cfg->_listen, sizeof cfg->_listen, "%s", cfg->server.listen);
    cfg->server.listen = cfg->_listen;
    if (err && errlen) err[0] = 0;
    arg a;
    /* Pass 1: structure, the actions and the config file's name. */
    const char *config_path = NULL;
    for (int i = 1; i < argc;) {
        switch (arg_next(argc, argv, &i, &a, err, errlen)) {
        case A_ERROR: return BDS_TOOL_EXIT_USAGE;
        case A_HELP: cfg->action = BDS_TOOL_HELP; return BDS_TOOL_EXIT_OK;
        case A_VERSION: cfg->action = BDS_TOOL_VERSION; return BDS_TOOL_EXIT_OK;
        case A_CHECK: cfg->action = BDS_TOOL_CHECK; break;
        case A_CONFIG:
            if (config_path) {
                fail(err, errlen, "--config", "given twice (one file; flags override it)");
                return BDS_TOOL_EXIT_USAGE;
            }
            config_path = a.value;
            break;
        case A_OPT: break;
        }
    }
    /* Pass 2: the file, then pass 3: the flags over it. */
    if (config_path && !file_read(cfg, config_path, err, errlen)) return BDS_TOOL_EXIT_USAGE;
    for (int i = 1; i < argc;) {
        if (arg_next(argc, argv, &i, &a, err, errlen) != A_OPT) continue;
        if (!opt_apply(cfg, a.o, a.value, a.flag, err, errlen)) return BDS_TOOL_EXIT_USAGE;
    }
    return check_rules(cfg, err, errlen) ? BDS_TOOL_EXIT_OK : BDS_TOOL_EXIT_USAGE;
}

void bds_tool_config_write(const bds_tool_config *cfg, FILE *out) {
    fprintf(out, "# bidistreamd %s: effective configuration (read it back with --config FILE)\n",
            BDS_TOOL_VERSION_STRING);
    for (size_t i = 0; i < N_OPTS; i++) {
        char v[BDS_TOOL_PATH_MAX + 1];
        opt_format(cfg, &opts[i], v, sizeof v);
        /* An unset path has no value to read back: said as a comment. */
        if (opts[i].kind == K_PATH && !v[0]) fprintf(out, "# %s = (not set)\n", opts[i].name);
        else fprintf(out, "%s = %s\n", opts[i].name, v);
    }
}

void bds_tool_usage(FILE *out) {
    bds_tool_config def;
    memset(&def, 0, sizeof def);
    bds_server_config_default(&def.server);
    fputs("usage: bidistreamd [--config FILE] [options]\n"
          "Serves bidistream.v1.Pipeline/Process and grpc.health.v1.Health over gRPC (h2c, or TLS with --tls-cert).\n"
          "Flags override the config file (lines 'key = value', keys are the flag names, '#' comments).\n"
          "Booleans: --flag (true), --flag=BOOL or --flag BOOL with true|false|yes|no|on|off|1|0.\n"
          "Durations: 250ms, 5s, 1m30s (units ns us ms s m h). Sizes: 65536, 64KiB, 4MiB.\n\n",
          out);
    static const char *const metavar[] = {
        [K_LISTEN] = "HOST:PORT", [K_ADDR] = "HOST:PORT|off", [K_U32] = "N", [K_BYTES] = "SIZE", [K_BOOL] = "[BOOL]",
        [K_DURATION] = "DURATION", [K_ORDERING] = "fifo|keyed", [K_POLICY] = "POLICY", [K_LOGLEVEL] = "LEVEL",
        [K_PATH] = "FILE",
        [K_COMPRESSION] = "none|deflate|gzip",
    };
    for (size_t i = 0; i < N_OPTS; i++) {
        char flag[96], v[BDS_TOOL_LISTEN_MAX + 1];
        snprintf(flag, sizeof flag, "--%s %s", opts[i].name, metavar[opts[i].kind]);
        opt_format(&def, &opts[i], v, sizeof v);
        fprintf(out, "  %-38s %s (default %s)\n", flag, opts[i].help, v);
    }
    fputs("  --config FILE                          read settings from FILE first\n"
          "  --check-config                         validate, print the effective config, exit\n"
          "  --help, --version\n"
          "Exit status: 0 clean shutdown, 1 the server failed, 2 bad flags or config.\n",
          out);
}

int bds_tool_prepare(int argc, char *const argv[], bds_tool_config *cfg, FILE *out, FILE *errout) {
    char err[512];
    if (bds_tool_parse_args(argc, argv, cfg, err, sizeof err) != BDS_TOOL_EXIT_OK) {
        fprintf(errout, "%s\n", err);
        return BDS_TOOL_EXIT_USAGE;
    }
    switch (cfg->action) {
    case BDS_TOOL_HELP: bds_tool_usage(out); return BDS_TOOL_EXIT_OK;
    case BDS_TOOL_VERSION: fprintf(out, "bidistreamd %s\n", BDS_TOOL_VERSION_STRING); return BDS_TOOL_EXIT_OK;
    case BDS_TOOL_CHECK: bds_tool_config_write(cfg, out); return BDS_TOOL_EXIT_OK;
    case BDS_TOOL_RUN: break;
    }
    return BDS_TOOL_PROCEED;
}
