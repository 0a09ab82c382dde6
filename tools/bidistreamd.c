/* bidistreamd — the bidistream gRPC server (public API only).
 *
 * Flags or a config file (--config FILE, lines "key = value" with the long
 * flag names as keys, '#' comments; flags given later override earlier ones,
 * so put --config first to let flags override the file). Bad flags: a
 * one-line error and exit 2. SIGTERM/SIGINT: graceful shutdown, exit 0. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bidistream/bidistream.h>
#include <bidistream/server.h>

#define BDS_VERSION "0.1.0"

static const char usage[] =
    "usage: bidistreamd [options]\n"
    "  --listen HOST:PORT                 address (default 127.0.0.1:50051; port 0 = any)\n"
    "  --shards N                         shard threads (default: one per CPU in the affinity mask)\n"
    "  --config FILE                      read 'key = value' lines (keys are these flag names)\n"
    "  --inbound-ordering fifo|keyed      (default keyed)\n"
    "  --inbound-ordering-capacity N      waiting messages, 0 = no limit (default 4096)\n"
    "  --inbound-policy P                 hard-reject|queue|soft-allow|soft-allow-signal (default queue)\n"
    "  --inbound-capacity N               concurrent executions per stream, 0 = no limit (default 256)\n"
    "  --inbound-queue-capacity N         waiters for capacity, queue only (default 4096)\n"
    "  --outbound-ordering fifo|keyed     (default fifo)\n"
    "  --outbound-ordering-capacity N\n"
    "  --outbound-policy P                (default queue)\n"
    "  --outbound-capacity N              unwritten replies per stream (default 1024)\n"
    "  --outbound-queue-capacity N        (default 8192)\n"
    "  --fail-fast BOOL                   an outbound error ends the stream (default true)\n"
    "  --drain-on-client-close BOOL       (default true)\n"
    "  --failures-terminal BOOL           a handler failure ends the stream (default true)\n"
    "  --max-attempts N                   retries per message (default 0)\n"
    "  --backoff DURATION                 between retries, e.g. 10ms (default 0)\n"
    "  --grace DURATION                   shutdown grace period (default 5s)\n"
    "  --drain-inbound BOOL               (default true)\n"
    "  --drain-outbound BOOL              (default true)\n"
    "  --metrics BOOL                     (default true)\n"
    "  --metrics-payload-sizes BOOL       (default false)\n"
    "  --max-message-bytes N              (default 4194304)\n"
    "  --max-concurrent-streams N         per connection (default 1024)\n"
    "  --max-header-list-bytes N          (default 16384)\n"
    "  --stream-window-bytes N            HTTP/2 initial stream window (default 65536)\n"
    "  --idle-spin-us N                   spin before sleeping (default 0: off)\n"
    "  --log-level error|warn|info|debug  (default info)\n"
    "  --help, --version\n";

static char err_buf[256];

static bool fail_arg(const char *flag, const char *what) {
    snprintf(err_buf, sizeof err_buf, "bidistreamd: %s: %s", flag, what);
    return false;
}

static bool parse_u32(const char *flag, const char *v, uint32_t *out) {
    char *end;
    errno = 0;
    if (!v || !*v || *v == '-' || *v == '+') return fail_arg(flag, "expected a non-negative integer");
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || errno || x > UINT32_MAX) return fail_arg(flag, "expected a non-negative integer below 2^32");
    *out = (uint32_t)x;
    return true;
}

static bool parse_bool(const char *flag, const char *v, bool *out) {
    if (v && (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))) *out = true;
    else if (v && (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))) *out = false;
    else return fail_arg(flag, "expected true or false");
    return true;
}

/* "250ms", "5s", "1m", "100us", "10ns"; a bare number is milliseconds. */
static bool parse_duration(const char *flag, const char *v, uint64_t *ns) {
    char *end;
    errno = 0;
    if (!v || !*v || *v == '-') return fail_arg(flag, "expected a duration like 250ms or 5s");
    double x = strtod(v, &end);
    double mul;
    if (!*end || !strcmp(end, "ms")) mul = 1e6;
    else if (!strcmp(end, "s")) mul = 1e9;
    else if (!strcmp(end, "m")) mul = 60e9;
    else if (!strcmp(end, "us")) mul = 1e3;
    else if (!strcmp(end, "ns")) mul = 1;
    else return fail_arg(flag, "expected a duration like 250ms or 5s");
    if (errno || x < 0 || x * mul > 3600e9) return fail_arg(flag, "duration out of range (0 to 1h)");
    *ns = (uint64_t)(x * mul);
    return true;
}

static bool parse_policy(const char *flag, const char *v, bds_backpressure_policy *out) {
    static const char *const names[] = {"hard-reject", "queue", "soft-allow", "soft-allow-signal"};
    for (int i = 0; i < 4; i++) {
        if (v && !strcmp(v, names[i])) {
            *out = (bds_backpressure_policy)i;
            return true;
        }
    }
    return fail_arg(flag, "expected hard-reject, queue, soft-allow or soft-allow-signal");
}

static bool parse_ordering(const char *flag, const char *v, bds_ordering_mode *out) {
    if (v && !strcmp(v, "fifo")) *out = BDS_ORDERING_FIFO;
    else if (v && !strcmp(v, "keyed")) *out = BDS_ORDERING_KEYED_FIFO;
    else return fail_arg(flag, "expected fifo or keyed");
    return true;
}

static bool config_file(const char *path, bds_server_config *cfg);

static const char *const known[] = {
    "listen", "config", "shards", "inbound-ordering", "inbound-ordering-capacity", "inbound-policy",
    "inbound-capacity", "inbound-queue-capacity", "outbound-ordering", "outbound-ordering-capacity",
    "outbound-policy", "outbound-capacity", "outbound-queue-capacity", "fail-fast", "drain-on-client-close",
    "failures-terminal", "max-attempts", "backoff", "grace", "drain-inbound", "drain-outbound", "metrics",
    "metrics-payload-sizes", "max-message-bytes", "max-concurrent-streams", "max-header-list-bytes",
    "stream-window-bytes", "idle-spin-us", "log-level",
};

static bool is_known(const char *name) {
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (!strcmp(known[i], name)) return true;
    }
    return false;
}

/* One option. `name` without the leading dashes. */
static bool apply(const char *name, const char *v, bds_server_config *c) {
    bds_options *o = &c->options;
    char flag[96];
    snprintf(flag, sizeof flag, "--%s", name);
    if (!is_known(name)) return fail_arg(flag, "unknown option (see --help)");
    if (!v) return fail_arg(flag, "missing value");
    if (!strcmp(name, "listen")) {
        static char listen_buf[256]; /* the server copies it */
        if (strlen(v) >= sizeof listen_buf) return fail_arg(flag, "too long");
        snprintf(listen_buf, sizeof listen_buf, "%s", v);
        c->listen = listen_buf;
        return true;
    }
    if (!strcmp(name, "config")) return config_file(v, c);
    if (!strcmp(name, "shards")) return parse_u32(flag, v, &c->shards);
    if (!strcmp(name, "inbound-ordering")) return parse_ordering(flag, v, &o->inbound.ordering.mode);
    if (!strcmp(name, "inbound-ordering-capacity")) return parse_u32(flag, v, &o->inbound.ordering.capacity);
    if (!strcmp(name, "inbound-policy")) return parse_policy(flag, v, &o->inbound.backpressure.policy);
    if (!strcmp(name, "inbound-capacity")) return parse_u32(flag, v, &o->inbound.backpressure.capacity);
    if (!strcmp(name, "inbound-queue-capacity")) return parse_u32(flag, v, &o->inbound.backpressure.queue_capacity);
    if (!strcmp(name, "outbound-ordering")) return parse_ordering(flag, v, &o->outbound.ordering.mode);
    if (!strcmp(name, "outbound-ordering-capacity")) return parse_u32(flag, v, &o->outbound.ordering.capacity);
    if (!strcmp(name, "outbound-policy")) return parse_policy(flag, v, &o->outbound.backpressure.policy);
    if (!strcmp(name, "outbound-capacity")) return parse_u32(flag, v, &o->outbound.backpressure.capacity);
    if (!strcmp(name, "outbound-queue-capacity")) return parse_u32(flag, v, &o->outbound.backpressure.queue_capacity);
    if (!strcmp(name, "fail-fast")) return parse_bool(flag, v, &o->outbound.fail_fast);
    if (!strcmp(name, "drain-on-client-close")) return parse_bool(flag, v, &o->inbound.drain_on_client_close);
    if (!strcmp(name, "failures-terminal")) return parse_bool(flag, v, &o->inbound.failures_terminal);
    if (!strcmp(name, "max-attempts")) return parse_u32(flag, v, &o->retry.max_attempts);
    if (!strcmp(name, "backoff")) return parse_duration(flag, v, &o->retry.backoff_ns);
    if (!strcmp(name, "grace")) return parse_duration(flag, v, &o->shutdown.grace_period_ns);
    if (!strcmp(name, "drain-inbound")) return parse_bool(flag, v, &o->shutdown.drain_inbound);
    if (!strcmp(name, "drain-outbound")) return parse_bool(flag, v, &o->shutdown.drain_outbound);
    if (!strcmp(name, "metrics")) return parse_bool(flag, v, &o->metrics.enabled);
    if (!strcmp(name, "metrics-payload-sizes")) return parse_bool(flag, v, &o->metrics.payload_sizes);
    if (!strcmp(name, "max-message-bytes")) return parse_u32(flag, v, &c->max_message_bytes);
    if (!strcmp(name, "max-concurrent-streams")) return parse_u32(flag, v, &c->max_concurrent_streams);
    if (!strcmp(name, "max-header-list-bytes")) return parse_u32(flag, v, &c->max_header_list_bytes);
    if (!strcmp(name, "stream-window-bytes")) return parse_u32(flag, v, &c->stream_window_bytes);
    if (!strcmp(name, "idle-spin-us")) return parse_u32(flag, v, &c->idle_spin_us);
    if (!strcmp(name, "log-level")) {
        static const char *const lv[] = {"error", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++) {
            if (!strcmp(v, lv[i])) {
                c->log_level = i;
                return true;
            }
        }
        return fail_arg(flag, "expected error, warn, info or debug");
    }
    return fail_arg(flag, "unknown option (see --help)");
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

static bool config_file(const char *path, bds_server_config *cfg) {
    FILE *f = fopen(path, "r");
    if (!f) return fail_arg("--config", strerror(errno));
    char line[512];
    int n = 0;
    bool ok = true;
    while (ok && fgets(line, sizeof line, f)) {
        n++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err_buf, sizeof err_buf, "bidistreamd: %s:%d: expected 'key = value'", path, n);
            ok = false;
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        if (!strcmp(key, "config")) {
            snprintf(err_buf, sizeof err_buf, "bidistreamd: %s:%d: config files do not nest", path, n);
            ok = false;
            break;
        }
        ok = apply(key, val, cfg);
    }
    fclose(f);
    return ok;
}

/* Returns 0 to run, 1 when --help/--version printed, 2 on a bad flag. */
static int parse_args(int argc, char **argv, bds_server_config *cfg) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("bidistreamd %s\n", BDS_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err_buf, sizeof err_buf, "bidistreamd: %s: unexpected argument (see --help)", a);
            return 2;
        }
        char name[96];
        const char *val;
        const char *eq = strchr(a + 2, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a + 2);
            val = i + 1 < argc ? argv[++i] : NULL;
        }
        if (!apply(name, val, cfg)) return 2;
    }
    const char *why = NULL;
    if (bds_options_validate(&cfg->options, &why) != BDS_OK) {
        snprintf(err_buf, sizeof err_buf, "bidistreamd: %s", why);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    int rc = parse_args(argc, argv, &cfg);
    if (rc == 1) return 0;
    if (rc == 2) {
        fprintf(stderr, "%s\n", err_buf);
        return 2;
    }
    bds_server *srv;
    const char *why = NULL;
    bds_status st = bds_server_create(&srv, &cfg, &why);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", why ? why : bds_status_str(st));
        return 2;
    }
    st = bds_server_run(srv);
    bds_server_destroy(srv);
    if (st != BDS_OK) return 1;
    if (cfg.log_level >= 2) fprintf(stderr, "bidistreamd: stopped\n");
    return 0;
}
