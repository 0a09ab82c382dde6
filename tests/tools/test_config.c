/* test_config.c — bidistreamd's flags and config file (tools/bidistreamd_config.c).
 *
 * Every flag lands in its field; the config file is read with flags over it
 * wherever they sit; every malformed input gives exit code 2 and exactly one
 * line that starts with "bidistreamd: " and names the flag (or file:line and
 * key). No server is started: only the parser is linked. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bidistreamd_config.h"

#define MS 1000000ULL
#define SEC 1000000000ULL

/* ---- helpers ------------------------------------------------------------------------------- */

/* parse_v(cfg, err, "--a", "1", NULL): argv[0] is "bidistreamd". */
static int parse_v(bds_tool_config *cfg, char *err, size_t errlen, va_list ap) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "bidistreamd";
    for (char *a; (a = va_arg(ap, char *)) != NULL;) {
        cr_assert_lt(argc, 63);
        argv[argc++] = a;
    }
    argv[argc] = NULL;
    return bds_tool_parse_args(argc, argv, cfg, err, errlen);
}

static int parse(bds_tool_config *cfg, char *err, ...) {
    va_list ap;
    va_start(ap, err);
    int rc = parse_v(cfg, err, 512, ap);
    va_end(ap);
    return rc;
}

/* Parses args that must succeed. */
static void parse_ok(bds_tool_config *cfg, ...) {
    char err[512] = "";
    va_list ap;
    va_start(ap, cfg);
    int rc = parse_v(cfg, err, sizeof err, ap);
    va_end(ap);
    cr_assert_eq(rc, BDS_TOOL_EXIT_OK, "unexpected error: %s", err);
    cr_assert_str_eq(err, "");
}

/* Parses args that must fail with one line naming `names` (a substring). */
static void parse_bad(const char *names, ...) {
    bds_tool_config cfg;
    char err[512] = "";
    va_list ap;
    va_start(ap, names);
    int rc = parse_v(&cfg, err, sizeof err, ap);
    va_end(ap);
    cr_assert_eq(rc, BDS_TOOL_EXIT_USAGE, "expected an error naming %s", names);
    cr_assert(strncmp(err, "bidistreamd: ", 13) == 0, "'%s' lacks the program name", err);
    cr_assert_null(strchr(err, '\n'), "'%s' is more than one line", err);
    cr_assert_not_null(strstr(err, names), "'%s' does not name %s", err, names);
}

/* A temporary config file with `text`; the caller unlinks `path`. */
static void write_file(char *path, size_t len, const char *text) {
    snprintf(path, len, "/tmp/bds_test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

static int parse_file(bds_tool_config *cfg, char *err, const char *text) {
    char path[64];
    write_file(path, sizeof path, text);
    int rc = parse(cfg, err, "--config", path, NULL);
    unlink(path);
    return rc;
}

static void file_bad(const char *text, const char *names) {
    bds_tool_config cfg;
    char err[512] = "";
    cr_assert_eq(parse_file(&cfg, err, text), BDS_TOOL_EXIT_USAGE, "expected an error naming %s", names);
    cr_assert_null(strchr(err, '\n'));
    cr_assert(strncmp(err, "bidistreamd: /tmp/bds_test_config_", 34) == 0, "'%s' does not name the file", err);
    cr_assert_not_null(strstr(err, names), "'%s' does not name %s", err, names);
}

/* Field by field: struct padding differs between copies, so memcmp would lie. */
static void assert_same_config(const bds_server_config *a, const bds_server_config *b) {
    cr_assert_eq(a->size, b->size);
    cr_assert_str_eq(a->listen, b->listen);
    cr_assert_eq(a->shards, b->shards);
    cr_assert_eq(a->max_message_bytes, b->max_message_bytes);
    cr_assert_eq(a->compress_responses, b->compress_responses);
    cr_assert_eq(a->max_concurrent_streams, b->max_concurrent_streams);
    cr_assert_eq(a->max_lingering_streams, b->max_lingering_streams);
    cr_assert_eq(a->max_header_list_bytes, b->max_header_list_bytes);
    cr_assert_eq(a->stream_window_bytes, b->stream_window_bytes);
    cr_assert_eq(a->idle_spin_us, b->idle_spin_us);
    cr_assert_eq(a->interop_service, b->interop_service);
    cr_assert_eq(a->interop_responses_max, b->interop_responses_max);
    cr_assert_eq(a->interop_response_bytes_max, b->interop_response_bytes_max);
    cr_assert_eq(a->log_level, b->log_level);
    cr_assert_eq(a->handshake_timeout_ns, b->handshake_timeout_ns);
    cr_assert_eq(a->idle_timeout_ns, b->idle_timeout_ns);
    cr_assert_eq(a->max_connection_age_ns, b->max_connection_age_ns);
    cr_assert_eq(a->max_connection_age_grace_ns, b->max_connection_age_grace_ns);
    cr_assert_eq(a->keepalive_time_ns, b->keepalive_time_ns);
    cr_assert_eq(a->keepalive_timeout_ns, b->keepalive_timeout_ns);
    cr_assert_eq(a->ping_min_interval_ns, b->ping_min_interval_ns);
    cr_assert_eq(a->ping_without_streams, b->ping_without_streams);
    cr_assert_eq(a->reuse_port, b->reuse_port);
    cr_assert_eq(a->send_timeout_ns, b->send_timeout_ns);
    cr_assert_eq(a->tcp_user_timeout_ms, b->tcp_user_timeout_ms);
    cr_assert_eq(a->max_connections, b->max_connections);
    cr_assert_eq(a->metrics_listen == NULL, b->metrics_listen == NULL);
    if (a->metrics_listen) cr_assert_str_eq(a->metrics_listen, b->metrics_listen);
    const bds_options *x = &a->options, *y = &b->options;
    cr_assert_eq(x->size, y->size);
    cr_assert_eq(x->inbound.ordering.mode, y->inbound.ordering.mode);
    cr_assert_eq(x->inbound.ordering.capacity, y->inbound.ordering.capacity);
    cr_assert_eq(x->inbound.backpressure.policy, y->inbound.backpressure.policy);
    cr_assert_eq(x->inbound.backpressure.capacity, y->inbound.backpressure.capacity);
    cr_assert_eq(x->inbound.backpressure.queue_capacity, y->inbound.backpressure.queue_capacity);
    cr_assert_eq(x->inbound.drain_on_client_close, y->inbound.drain_on_client_close);
    cr_assert_eq(x->inbound.failures_terminal, y->inbound.failures_terminal);
    cr_assert_eq(x->outbound.ordering.mode, y->outbound.ordering.mode);
    cr_assert_eq(x->outbound.ordering.capacity, y->outbound.ordering.capacity);
    cr_assert_eq(x->outbound.backpressure.policy, y->outbound.backpressure.policy);
    cr_assert_eq(x->outbound.backpressure.capacity, y->outbound.backpressure.capacity);
    cr_assert_eq(x->outbound.backpressure.queue_capacity, y->outbound.backpressure.queue_capacity);
    cr_assert_eq(x->outbound.fail_fast, y->outbound.fail_fast);
    cr_assert_eq(x->retry.max_attempts, y->retry.max_attempts);
    cr_assert_eq(x->retry.backoff_ns, y->retry.backoff_ns);
    cr_assert_eq(x->shutdown.grace_period_ns, y->shutdown.grace_period_ns);
    cr_assert_eq(x->shutdown.drain_inbound, y->shutdown.drain_inbound);
    cr_assert_eq(x->shutdown.drain_outbound, y->shutdown.drain_outbound);
    cr_assert_eq(x->metrics.enabled, y->metrics.enabled);
    cr_assert_eq(x->metrics.payload_sizes, y->metrics.payload_sizes);
    cr_assert_eq(x->on_pressure, y->on_pressure);
    cr_assert_eq(x->on_pressure_ctx, y->on_pressure_ctx);
}

/* ---- defaults and the listen address ------------------------------------------------------- */

Test(tool_config, no_args_gives_the_server_defaults_and_run) {
    bds_tool_config cfg;
    parse_ok(&cfg, NULL);
    bds_server_config def;
    bds_server_config_default(&def);
    cr_assert_eq(cfg.action, BDS_TOOL_RUN);
    cr_assert_str_eq(cfg.server.listen, "127.0.0.1:50051");
    cr_assert_eq(cfg.server.size, sizeof(bds_server_config));
    cr_assert_not(cfg.server.interop_service, "the interop test service is opt-in");
    cr_assert_eq(cfg.server.compress_responses, BDS_COMPRESSION_NONE, "replies go uncompressed unless asked");
    assert_same_config(&cfg.server, &def);
    cr_assert_eq(bds_options_validate(&cfg.server.options, NULL), BDS_OK);
}

Test(tool_config, listen_in_both_forms_sets_the_address) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--listen", "0.0.0.0:8080", NULL);
    cr_assert_str_eq(cfg.server.listen, "0.0.0.0:8080");
    parse_ok(&cfg, "--listen=localhost:0", NULL);
    cr_assert_str_eq(cfg.server.listen, "localhost:0");
    parse_ok(&cfg, "--listen", "[::1]:65535", NULL);
    cr_assert_str_eq(cfg.server.listen, "[::1]:65535");
    parse_ok(&cfg, "--listen", ":50051", NULL); /* any address */
    cr_assert_str_eq(cfg.server.listen, ":50051");
}

Test(tool_config, metrics_listen_is_off_by_default_and_takes_an_address_or_off) {
    bds_tool_config cfg;
    parse_ok(&cfg, NULL);
    cr_assert_null(cfg.server.metrics_listen, "no metrics endpoint unless asked");
    cr_assert_eq(cfg.access_log, false, "no access log unless asked");
    parse_ok(&cfg, "--metrics-listen", "127.0.0.1:9464", "--access-log", NULL);
    cr_assert_str_eq(cfg.server.metrics_listen, "127.0.0.1:9464");
    cr_assert_str_eq(cfg.server.listen, "127.0.0.1:50051", "the gRPC address is its own");
    cr_assert(cfg.access_log);
    parse_ok(&cfg, "--metrics-listen=[::1]:0", "--metrics-listen", "off", "--access-log=false", NULL);
    cr_assert_null(cfg.server.metrics_listen, "the last one wins: off");
    cr_assert_eq(cfg.access_log, false);
    parse_bad("--metrics-listen", "--metrics-listen", "nowhere", NULL);
    parse_bad("--metrics-listen", "--metrics-listen", "host:65536", NULL);
    parse_bad("--metrics-listen", "--metrics-listen", "", NULL);
    parse_bad("--access-log", "--access-log=maybe", NULL);
}

Test(tool_config, listen_malformed_is_refused_naming_the_flag) {
    parse_bad("--listen", "--listen", "nowhere", NULL);
    parse_bad("--listen", "--listen", "host:", NULL);
    parse_bad("--listen", "--listen", "host:65536", NULL);
    parse_bad("--listen", "--listen", "host:-1", NULL);
    parse_bad("--listen", "--listen", "host:80x", NULL);
    parse_bad("--listen", "--listen", "[::1:80", NULL);
    parse_bad("--listen", "--listen", "", NULL);
    char longaddr[400];
    memset(longaddr, 'a', sizeof longaddr);
    snprintf(longaddr + 300, 100, ":80");
    parse_bad("--listen", "--listen", longaddr, NULL);
}

/* ---- numbers -------------------------------------------------------------------------------- */

typedef struct u32_flag {
    const char *flag;
    size_t off; /* in bds_server_config */
    uint32_t min, max;
} u32_flag;

static const u32_flag u32_flags[] = {
    {"--shards", offsetof(bds_server_config, shards), 0, 64},
    {"--inbound-ordering-capacity", offsetof(bds_server_config, options.inbound.ordering.capacity), 0, UINT32_MAX},
    {"--inbound-capacity", offsetof(bds_server_config, options.inbound.backpressure.capacity), 0, UINT32_MAX},
    {"--inbound-queue-capacity", offsetof(bds_server_config, options.inbound.backpressure.queue_capacity), 0,
     UINT32_MAX},
    {"--outbound-ordering-capacity", offsetof(bds_server_config, options.outbound.ordering.capacity), 0, UINT32_MAX},
    {"--outbound-capacity", offsetof(bds_server_config, options.outbound.backpressure.capacity), 0, UINT32_MAX},
    {"--outbound-queue-capacity", offsetof(bds_server_config, options.outbound.backpressure.queue_capacity), 0,
     UINT32_MAX},
    {"--max-attempts", offsetof(bds_server_config, options.retry.max_attempts), 0, 1000},
    {"--max-concurrent-streams", offsetof(bds_server_config, max_concurrent_streams), 1, 0x7fffffff},
    {"--max-lingering-streams", offsetof(bds_server_config, max_lingering_streams), 1, 0x7fffffff},
    {"--interop-responses-max", offsetof(bds_server_config, interop_responses_max), 0, UINT32_MAX},
    {"--interop-response-bytes-max", offsetof(bds_server_config, interop_response_bytes_max), 0, UINT32_MAX},
    {"--idle-spin-us", offsetof(bds_server_config, idle_spin_us), 0, 1000000},
    {"--max-message-bytes", offsetof(bds_server_config, max_message_bytes), 16, 0x7fffffff},
    {"--max-header-list-bytes", offsetof(bds_server_config, max_header_list_bytes), 1024, UINT32_MAX},
    {"--stream-window-bytes", offsetof(bds_server_config, stream_window_bytes), 1024, 0x7fffffff},
    {"--max-connections", offsetof(bds_server_config, max_connections), 0, UINT32_MAX},
};

static uint32_t u32_at(const bds_tool_config *cfg, size_t off) {
    uint32_t v;
    memcpy(&v, (const char *)&cfg->server + off, sizeof v);
    return v;
}

Test(tool_config, every_number_flag_sets_its_field_up_to_its_maximum) {
    for (size_t i = 0; i < sizeof u32_flags / sizeof u32_flags[0]; i++) {
        const u32_flag *f = &u32_flags[i];
        bds_tool_config cfg;
        char v[32];
        snprintf(v, sizeof v, "%u", f->max);
        parse_ok(&cfg, f->flag, v, NULL);
        cr_assert_eq(u32_at(&cfg, f->off), f->max, "%s %s", f->flag, v);
        snprintf(v, sizeof v, "%u", f->min);
        parse_ok(&cfg, f->flag, v, NULL);
        cr_assert_eq(u32_at(&cfg, f->off), f->min, "%s %s", f->flag, v);
        uint32_t mid = f->min + (f->max - f->min) / 2;
        char eq[96];
        snprintf(eq, sizeof eq, "%s=%u", f->flag, mid);
        parse_ok(&cfg, eq, NULL);
        cr_assert_eq(u32_at(&cfg, f->off), mid, "%s", eq);
    }
}

Test(tool_config, every_number_flag_refuses_negative_signed_spaced_hex_and_overflow) {
    static const char *const bad[] = {"-1", "-0", "+1", " 1", "1 ", "0x10", "1e3", "1.5", "abc",
                                      "99999999999999999999999", "4294967296"};
    for (size_t i = 0; i < sizeof u32_flags / sizeof u32_flags[0]; i++) {
        for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
            parse_bad(u32_flags[i].flag, u32_flags[i].flag, bad[j], NULL);
        }
    }
}

Test(tool_config, negative_number_says_negative) {
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--inbound-capacity", "-1", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --inbound-capacity: '-1' is negative (expected 0 or more)");
}

Test(tool_config, numbers_past_their_range_are_refused_with_the_range) {
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--shards", "65", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --shards: '65' is out of range (0 to 64)");
    parse_bad("--max-attempts", "--max-attempts", "1001", NULL);
    parse_bad("--idle-spin-us", "--idle-spin-us", "1000001", NULL);
    parse_bad("--max-concurrent-streams", "--max-concurrent-streams", "0", NULL);
    parse_bad("--max-lingering-streams", "--max-lingering-streams", "0", NULL);
    parse_bad("--max-message-bytes", "--max-message-bytes", "15", NULL);
    parse_bad("--max-message-bytes", "--max-message-bytes", "2147483648", NULL);
    parse_bad("--stream-window-bytes", "--stream-window-bytes", "1023", NULL);
    parse_bad("--stream-window-bytes", "--stream-window-bytes", "2GiB", NULL);
    parse_bad("--max-header-list-bytes", "--max-header-list-bytes", "1000", NULL);
}

Test(tool_config, sizes_take_iec_suffixes_only) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--max-message-bytes", "4MiB", "--stream-window-bytes", "64KiB", "--max-header-list-bytes",
             "1GiB", NULL);
    cr_assert_eq(cfg.server.max_message_bytes, 4u << 20);
    cr_assert_eq(cfg.server.stream_window_bytes, 64u << 10);
    cr_assert_eq(cfg.server.max_header_list_bytes, 1u << 30);
    parse_ok(&cfg, "--max-message-bytes", "100B", NULL);
    cr_assert_eq(cfg.server.max_message_bytes, 100);
    parse_bad("--max-message-bytes", "--max-message-bytes", "4MB", NULL);
    parse_bad("--max-message-bytes", "--max-message-bytes", "4 MiB", NULL);
    parse_bad("--max-message-bytes", "--max-message-bytes", "MiB", NULL);
    parse_bad("--max-message-bytes", "--max-message-bytes", "99999999999GiB", NULL);
    /* Counts take no suffix: a capacity is not a size. */
    parse_bad("--inbound-capacity", "--inbound-capacity", "1KiB", NULL);
}

/* ---- durations ------------------------------------------------------------------------------ */

Test(tool_config, durations_take_go_style_units) {
    static const struct { const char *text; uint64_t ns; } ok[] = {
        {"0", 0},           {"10ms", 10 * MS},   {"1s", SEC},          {"1m30s", 90 * SEC},
        {"1.5s", 1500 * MS}, {".5s", 500 * MS},  {"100us", 100000},    {"10ns", 10},
        {"1h", 3600 * SEC}, {"250ms", 250 * MS}, {"1s500ms", 1500 * MS}, {"0s", 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        bds_tool_config cfg;
        parse_ok(&cfg, "--grace", ok[i].text, NULL);
        cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, ok[i].ns, "--grace %s", ok[i].text);
        parse_ok(&cfg, "--max-attempts", "3", "--backoff", ok[i].text, NULL);
        cr_assert_eq(cfg.server.options.retry.backoff_ns, ok[i].ns, "--backoff %s", ok[i].text);
        cr_assert_eq(cfg.server.options.retry.max_attempts, 3);
    }
}

Test(tool_config, durations_malformed_negative_or_past_an_hour_are_refused) {
    static const char *const bad[] = {"soon", "5", "1.5", "5x", "s", ".", ".s", "-1s", "1h1ns", "2h",
                                      "61m", "1s ", " 1s", "nan", "inf", "0x10s", "1e3ms", "",
                                      "99999999999999999999h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse_bad("--grace", "--grace", bad[i], NULL);
        parse_bad("--backoff", "--max-attempts", "1", "--backoff", bad[i], NULL);
    }
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--grace", "2h", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --grace: '2h' is out of range (0 to 1h)");
}

/* Finding 9: the fraction was added unchecked, so a value just under 2^64 ns
 * plus its fraction wrapped to a small duration that passed the 1 h bound
 * ("5124095.6h" became ~86 s). Each of these is 2^64 ns + a little. */
Test(tool_config, durations_that_wrap_past_2_pow_64_ns_are_refused_not_wrapped) {
    static const char *const wrap[] = {"5124095.6h", "307445734.6m", "18446744073.8s", "18446744073709.6ms",
                                       "18446744073709551.7us", "5124095h36m", "18446744073s1s"};
    for (size_t i = 0; i < sizeof wrap / sizeof wrap[0]; i++) {
        bds_tool_config cfg;
        char err[512] = "";
        cr_assert_eq(parse(&cfg, err, "--grace", wrap[i], NULL), BDS_TOOL_EXIT_USAGE, "--grace %s accepted as %" PRIu64 " ns",
                     wrap[i], cfg.server.options.shutdown.grace_period_ns);
        cr_assert_not_null(strstr(err, "out of range (0 to 1h)"), "--grace %s: %s", wrap[i], err);
        cr_assert_eq(parse(&cfg, err, "--max-attempts", "1", "--backoff", wrap[i], NULL), BDS_TOOL_EXIT_USAGE,
                     "--backoff %s accepted as %" PRIu64 " ns", wrap[i], cfg.server.options.retry.backoff_ns);
        cr_assert_not_null(strstr(err, "--backoff: "), "--backoff %s: %s", wrap[i], err);
        char text[64];
        snprintf(text, sizeof text, "grace = %s\n", wrap[i]);
        file_bad(text, "grace");
    }
    /* The largest fractions that stay inside the bound still parse exactly. */
    bds_tool_config cfg;
    parse_ok(&cfg, "--grace", "0.75h", NULL);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, 2700 * SEC);
    parse_ok(&cfg, "--grace", "59m59.999999999s", NULL);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, 3600 * SEC - 1);
}

Test(tool_config, sizes_that_wrap_past_2_pow_64_are_refused_not_wrapped) {
    static const char *const wrap[] = {"17179869184GiB", "17592186044416MiB", "18014398509481984KiB",
                                       "18446744073709551616B", "18446744073709551616"};
    for (size_t i = 0; i < sizeof wrap / sizeof wrap[0]; i++) {
        parse_bad("--max-message-bytes", "--max-message-bytes", wrap[i], NULL);
        parse_bad("--inbound-bytes-max", "--inbound-bytes-max", wrap[i], NULL);
    }
}

/* ---- booleans ------------------------------------------------------------------------------- */

typedef struct bool_flag {
    const char *flag;
    size_t off;
} bool_flag;

static const bool_flag bool_flags[] = {
    {"--fail-fast", offsetof(bds_server_config, options.outbound.fail_fast)},
    {"--drain-on-client-close", offsetof(bds_server_config, options.inbound.drain_on_client_close)},
    {"--failures-terminal", offsetof(bds_server_config, options.inbound.failures_terminal)},
    {"--drain-inbound", offsetof(bds_server_config, options.shutdown.drain_inbound)},
    {"--drain-outbound", offsetof(bds_server_config, options.shutdown.drain_outbound)},
    {"--metrics", offsetof(bds_server_config, options.metrics.enabled)},
    {"--metrics-payload-sizes", offsetof(bds_server_config, options.metrics.payload_sizes)},
    {"--interop", offsetof(bds_server_config, interop_service)},
};

static bool bool_at(const bds_tool_config *cfg, size_t off) {
    bool v;
    memcpy(&v, (const char *)&cfg->server + off, sizeof v);
    return v;
}

Test(tool_config, every_bool_flag_takes_a_word_or_stands_alone) {
    static const struct { const char *word; bool v; } words[] = {
        {"true", true}, {"false", false}, {"yes", true}, {"no", false},
        {"on", true},   {"off", false},   {"1", true},   {"0", false},
    };
    for (size_t i = 0; i < sizeof bool_flags / sizeof bool_flags[0]; i++) {
        const bool_flag *f = &bool_flags[i];
        /* payload sizes need metrics, which are on by default */
        for (size_t j = 0; j < sizeof words / sizeof words[0]; j++) {
            bds_tool_config cfg;
            parse_ok(&cfg, f->flag, words[j].word, NULL);
            cr_assert_eq(bool_at(&cfg, f->off), words[j].v, "%s %s", f->flag, words[j].word);
            char eq[96];
            snprintf(eq, sizeof eq, "%s=%s", f->flag, words[j].word);
            parse_ok(&cfg, eq, NULL);
            cr_assert_eq(bool_at(&cfg, f->off), words[j].v, "%s", eq);
        }
        bds_tool_config cfg;
        char eq[96];
        snprintf(eq, sizeof eq, "%s=false", f->flag);
        parse_ok(&cfg, eq, f->flag, NULL); /* alone = true, and the last one wins */
        cr_assert(bool_at(&cfg, f->off), "%s alone", f->flag);
        parse_ok(&cfg, f->flag, "--shards", "2", NULL); /* alone, followed by another flag */
        cr_assert(bool_at(&cfg, f->off));
        cr_assert_eq(cfg.server.shards, 2);
    }
}

Test(tool_config, bool_with_a_bad_word_is_refused) {
    for (size_t i = 0; i < sizeof bool_flags / sizeof bool_flags[0]; i++) {
        char eq[96];
        snprintf(eq, sizeof eq, "%s=maybe", bool_flags[i].flag);
        parse_bad(bool_flags[i].flag, eq, NULL);
        snprintf(eq, sizeof eq, "%s=", bool_flags[i].flag);
        parse_bad(bool_flags[i].flag, eq, NULL);
        snprintf(eq, sizeof eq, "%s=TRUE", bool_flags[i].flag);
        parse_bad(bool_flags[i].flag, eq, NULL);
    }
    /* A bare bool does not swallow a word that is not a boolean: it is then a stray argument. */
    parse_bad("maybe", "--fail-fast", "maybe", NULL);
}

/* ---- enumerations ---------------------------------------------------------------------------- */

Test(tool_config, orderings_policies_and_log_levels_by_name) {
    static const char *const policies[] = {"hard-reject", "queue", "soft-allow", "soft-allow-signal"};
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    bds_tool_config cfg;
    parse_ok(&cfg, "--inbound-ordering", "fifo", "--outbound-ordering", "keyed", NULL);
    cr_assert_eq(cfg.server.options.inbound.ordering.mode, BDS_ORDERING_FIFO);
    cr_assert_eq(cfg.server.options.outbound.ordering.mode, BDS_ORDERING_KEYED_FIFO);
    parse_ok(&cfg, "--inbound-ordering=keyed", "--outbound-ordering=fifo", NULL);
    cr_assert_eq(cfg.server.options.inbound.ordering.mode, BDS_ORDERING_KEYED_FIFO);
    cr_assert_eq(cfg.server.options.outbound.ordering.mode, BDS_ORDERING_FIFO);
    for (int i = 0; i < 4; i++) {
        parse_ok(&cfg, "--inbound-policy", policies[i], "--outbound-policy", policies[i], "--log-level", levels[i],
                 NULL);
        cr_assert_eq((int)cfg.server.options.inbound.backpressure.policy, i, "%s", policies[i]);
        cr_assert_eq((int)cfg.server.options.outbound.backpressure.policy, i, "%s", policies[i]);
        cr_assert_eq(cfg.server.log_level, i, "%s", levels[i]);
    }
    cr_assert_eq(BDS_BP_SOFT_ALLOW_SIGNAL, 3);
    static const char *const comps[] = {"none", "deflate", "gzip"};
    for (int i = 0; i < 3; i++) {
        parse_ok(&cfg, "--compress-responses", comps[i], NULL);
        cr_assert_eq((int)cfg.server.compress_responses, i, "%s", comps[i]);
    }
}

Test(tool_config, unknown_names_are_refused_naming_the_flag) {
    parse_bad("--inbound-ordering", "--inbound-ordering", "lifo", NULL);
    parse_bad("--outbound-ordering", "--outbound-ordering", "KEYED", NULL);
    parse_bad("--inbound-policy", "--inbound-policy", "nope", NULL);
    parse_bad("--outbound-policy", "--outbound-policy", "hard_reject", NULL);
    parse_bad("--log-level", "--log-level", "trace", NULL);
    parse_bad("--log-level", "--log-level", "3", NULL);
    parse_bad("--compress-responses", "--compress-responses", "snappy", NULL);
    parse_bad("--compress-responses", "--compress-responses", "GZIP", NULL);
    parse_bad("--compress-responses", "--compress-responses", "identity", NULL);
}

/* ---- the command line's shape ---------------------------------------------------------------- */

Test(tool_config, unknown_stray_and_valueless_arguments_are_refused) {
    parse_bad("--bogus", "--bogus", NULL);
    parse_bad("--bogus", "--bogus=1", NULL);
    parse_bad("--Shards", "--Shards", "1", NULL);
    parse_bad("foo", "foo", NULL);
    parse_bad("-s", "-s", "2", NULL);
    parse_bad("--", "--", NULL);
    parse_bad("--shards", "--shards", NULL);              /* missing at the end */
    parse_bad("--shards", "--shards=", NULL);             /* empty */
    parse_bad("--listen", "--listen", "--shards", "2", NULL); /* a value never starts with -- */
    parse_bad("--config", "--config", NULL);
    parse_bad("2", "--shards", "1", "2", NULL);           /* one value per flag */
}

Test(tool_config, last_flag_wins) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--shards", "1", "--shards", "3", NULL);
    cr_assert_eq(cfg.server.shards, 3);
}

Test(tool_config, help_and_version_stop_parsing_where_they_appear) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--shards", "2", "--help", "--bogus", NULL);
    cr_assert_eq(cfg.action, BDS_TOOL_HELP);
    parse_ok(&cfg, "-h", NULL);
    cr_assert_eq(cfg.action, BDS_TOOL_HELP);
    parse_ok(&cfg, "--version", "--shards", "999", NULL);
    cr_assert_eq(cfg.action, BDS_TOOL_VERSION);
    /* An error before them still wins: it is what the user typed first. */
    parse_bad("--bogus", "--bogus", "--help", NULL);
}

Test(tool_config, check_config_validates_everything_else) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--check-config", "--shards", "4", NULL);
    cr_assert_eq(cfg.action, BDS_TOOL_CHECK);
    cr_assert_eq(cfg.server.shards, 4);
    parse_bad("--shards", "--check-config", "--shards", "x", NULL);
}

Test(tool_config, small_or_missing_error_buffers_are_safe) {
    bds_tool_config cfg;
    char *argv[] = {"bidistreamd", "--inbound-capacity", "-1", NULL};
    char tiny[8];
    cr_assert_eq(bds_tool_parse_args(3, argv, &cfg, tiny, sizeof tiny), BDS_TOOL_EXIT_USAGE);
    cr_assert_eq(strlen(tiny), sizeof tiny - 1);
    cr_assert_eq(bds_tool_parse_args(3, argv, &cfg, NULL, 0), BDS_TOOL_EXIT_USAGE);
    char one[1] = {'x'};
    cr_assert_eq(bds_tool_parse_args(3, argv, &cfg, one, sizeof one), BDS_TOOL_EXIT_USAGE);
    cr_assert_eq(one[0], 0);
}

Test(tool_config, a_newline_in_a_value_stays_on_one_line) {
    parse_bad("--inbound-policy", "--inbound-policy", "queue\nsecond line", NULL);
}

/* ---- rules across flags --------------------------------------------------------------------- */

/* Found by tests/fuzz/fuzz_config: a stray argument longer than the error
 * buffer filled it with the "where" alone, and the newline inside stayed. */
Test(tool_config, a_newline_in_an_argument_longer_than_the_buffer_stays_on_one_line) {
    char word[700];
    memset(word, 'a', sizeof word - 1);
    word[sizeof word - 1] = 0;
    word[100] = '\n';
    word[200] = '\r';
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse(&cfg, err, word, NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert(strncmp(err, "bidistreamd: ", 13) == 0, "'%s' lacks the program name", err);
    cr_assert_null(strchr(err, '\n'), "'%s' is more than one line", err);
    cr_assert_null(strchr(err, '\r'), "'%s' has a carriage return", err);
}

Test(tool_config, non_queue_policy_drops_the_default_queue_capacity) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--inbound-policy", "hard-reject", "--inbound-capacity", "1", NULL);
    cr_assert_eq(cfg.server.options.inbound.backpressure.policy, BDS_BP_HARD_REJECT);
    cr_assert_eq(cfg.server.options.inbound.backpressure.capacity, 1);
    cr_assert_eq(cfg.server.options.inbound.backpressure.queue_capacity, 0);
    parse_ok(&cfg, "--outbound-policy", "soft-allow-signal", NULL);
    cr_assert_eq(cfg.server.options.outbound.backpressure.queue_capacity, 0);
    parse_ok(&cfg, "--inbound-capacity", "0", NULL); /* no limit: nothing waits */
    cr_assert_eq(cfg.server.options.inbound.backpressure.queue_capacity, 0);
    parse_ok(&cfg, "--inbound-policy", "hard-reject", "--inbound-queue-capacity", "0", NULL);
    cr_assert_eq(bds_options_validate(&cfg.server.options, NULL), BDS_OK);
}

Test(tool_config, queue_capacity_set_where_it_cannot_apply_is_refused) {
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--inbound-policy", "hard-reject", "--inbound-queue-capacity", "5", NULL),
                 BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --inbound-queue-capacity: applies only with --inbound-policy queue "
                          "(the policy is hard-reject)");
    parse_bad("--outbound-queue-capacity", "--outbound-policy", "soft-allow", "--outbound-queue-capacity", "5",
              NULL);
    parse_bad("--inbound-queue-capacity", "--inbound-capacity", "0", "--inbound-queue-capacity", "5", NULL);
    parse_bad("--outbound-queue-capacity", "--outbound-capacity", "0", "--outbound-queue-capacity", "1", NULL);
}

/* grpc-go's MaxConnectionAge and MaxConnectionAgeGrace: off by default, a
 * day at most (as every connection timer), and a grace without an age is a
 * mistake that names the flag. */
Test(tool_config, connection_age_and_grace_ranges) {
    bds_tool_config cfg;
    parse_ok(&cfg, NULL);
    cr_assert_eq(cfg.server.max_connection_age_ns, 0);
    cr_assert_eq(cfg.server.max_connection_age_grace_ns, 0);
    parse_ok(&cfg, "--max-connection-age", "30m", "--max-connection-age-grace", "1m30s", NULL);
    cr_assert_eq(cfg.server.max_connection_age_ns, 1800 * SEC);
    cr_assert_eq(cfg.server.max_connection_age_grace_ns, 90 * SEC);
    parse_ok(&cfg, "--max-connection-age", "24h", "--max-connection-age-grace", "24h", NULL);
    cr_assert_eq(cfg.server.max_connection_age_ns, 24 * 3600 * SEC);
    parse_ok(&cfg, "--max-connection-age", "1s", NULL);
    cr_assert_eq(cfg.server.max_connection_age_grace_ns, 0, "no grace: streams run on");
    static const char *const bad[] = {"25h", "-1s", "5", "soon", "", "1h1ns1d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse_bad("--max-connection-age", "--max-connection-age", bad[i], NULL);
        parse_bad("--max-connection-age-grace", "--max-connection-age", "1s", "--max-connection-age-grace", bad[i],
                  NULL);
    }
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--max-connection-age", "25h", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --max-connection-age: '25h' is out of range (0 to 24h)");
    cr_assert_eq(parse(&cfg, err, "--max-connection-age-grace", "5s", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --max-connection-age-grace: needs --max-connection-age above 0 (no age, "
                          "no grace)");
    file_bad("max-connection-age = 2d\n", "max-connection-age");
}

Test(tool_config, tls_files_go_together) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem", NULL);
    cr_assert_str_eq(cfg.server.tls_cert_file, "c.pem");
    cr_assert_str_eq(cfg.server.tls_key_file, "k.pem");
    cr_assert_str_eq(cfg.server.tls_client_ca_file, "ca.pem");
    char err[512];
    cr_assert_eq(parse(&cfg, err, "--tls-key", "k.pem", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --tls-key: needs --tls-cert");
    cr_assert_eq(parse(&cfg, err, "--tls-cert", "c.pem", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --tls-cert: needs --tls-key");
    cr_assert_eq(parse(&cfg, err, "--tls-client-ca", "ca.pem", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_str_eq(err, "bidistreamd: --tls-client-ca: needs --tls-cert");
    parse_bad("--tls-cert", "--tls-cert", "", "--tls-key", "k.pem", NULL);
}

Test(tool_config, backoff_needs_retries_and_payload_sizes_need_metrics) {
    parse_bad("--backoff", "--backoff", "10ms", NULL);
    parse_bad("--metrics-payload-sizes", "--metrics=false", "--metrics-payload-sizes", NULL);
    bds_tool_config cfg;
    parse_ok(&cfg, "--backoff", "10ms", "--max-attempts", "2", "--metrics-payload-sizes", NULL);
    cr_assert_eq(cfg.server.options.retry.backoff_ns, 10 * MS);
    cr_assert(cfg.server.options.metrics.payload_sizes);
    parse_ok(&cfg, "--metrics", "false", NULL);
    cr_assert_not(cfg.server.options.metrics.enabled);
}

Test(tool_config, every_accepted_config_passes_options_validate) {
    bds_tool_config cfg;
    parse_ok(&cfg, "--inbound-ordering", "fifo", "--inbound-ordering-capacity", "0", "--inbound-policy",
             "soft-allow", "--inbound-capacity", "0", "--outbound-ordering", "keyed", "--outbound-policy",
             "hard-reject", "--outbound-capacity", "7", "--fail-fast", "false", "--drain-on-client-close=no",
             "--failures-terminal", "off", "--max-attempts", "1000", "--backoff", "1h", "--grace", "0",
             "--drain-inbound", "0", "--drain-outbound", "false", "--metrics", "--metrics-payload-sizes", NULL);
    cr_assert_eq(bds_options_validate(&cfg.server.options, NULL), BDS_OK);
    cr_assert_eq(cfg.server.options.outbound.backpressure.capacity, 7);
    cr_assert_not(cfg.server.options.outbound.fail_fast);
    cr_assert_not(cfg.server.options.inbound.drain_on_client_close);
    cr_assert_not(cfg.server.options.inbound.failures_terminal);
    cr_assert_not(cfg.server.options.shutdown.drain_inbound);
    cr_assert_not(cfg.server.options.shutdown.drain_outbound);
    cr_assert_eq(cfg.server.options.retry.backoff_ns, 3600 * SEC);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, 0);
}

/* ---- the config file ------------------------------------------------------------------------ */

Test(tool_config, file_sets_every_kind_with_comments_blanks_and_spaces) {
    bds_tool_config cfg;
    char err[512] = "";
    int rc = parse_file(&cfg, err,
                        "# bidistreamd test\n"
                        "\n"
                        "listen = 127.0.0.1:6000\n"
                        "   shards=3   # inline comment\n"
                        "\tinbound-ordering =\tfifo\n"
                        "inbound-policy = hard-reject\n"
                        "inbound-capacity = 2\n"
                        "max-message-bytes = 1MiB\n"
                        "grace = 1m30s\n"
                        "fail-fast = false\r\n"
                        "log-level = debug\n"
                        "   # indented comment\n"
                        "metrics = off"); /* no final newline */
    cr_assert_eq(rc, BDS_TOOL_EXIT_OK, "%s", err);
    cr_assert_str_eq(cfg.server.listen, "127.0.0.1:6000");
    cr_assert_eq(cfg.server.shards, 3);
    cr_assert_eq(cfg.server.options.inbound.ordering.mode, BDS_ORDERING_FIFO);
    cr_assert_eq(cfg.server.options.inbound.backpressure.policy, BDS_BP_HARD_REJECT);
    cr_assert_eq(cfg.server.options.inbound.backpressure.capacity, 2);
    cr_assert_eq(cfg.server.options.inbound.backpressure.queue_capacity, 0);
    cr_assert_eq(cfg.server.max_message_bytes, 1u << 20);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, 90 * SEC);
    cr_assert_not(cfg.server.options.outbound.fail_fast);
    cr_assert_eq(cfg.server.log_level, 3);
    cr_assert_not(cfg.server.options.metrics.enabled);
}

Test(tool_config, flags_override_the_file_wherever_they_appear) {
    char path[64];
    write_file(path, sizeof path, "shards = 3\ngrace = 1s\nlisten = 127.0.0.1:6000\n");
    bds_tool_config cfg;
    parse_ok(&cfg, "--shards", "5", "--config", path, NULL); /* flag before --config */
    cr_assert_eq(cfg.server.shards, 5);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, SEC);
    char eq[96];
    snprintf(eq, sizeof eq, "--config=%s", path);
    parse_ok(&cfg, eq, "--grace", "2s", "--listen", "127.0.0.1:7000", NULL); /* and after */
    cr_assert_eq(cfg.server.shards, 3);
    cr_assert_eq(cfg.server.options.shutdown.grace_period_ns, 2 * SEC);
    cr_assert_str_eq(cfg.server.listen, "127.0.0.1:7000");
    unlink(path);
}

Test(tool_config, file_repeated_key_keeps_the_last) {
    bds_tool_config cfg;
    char err[512] = "";
    cr_assert_eq(parse_file(&cfg, err, "shards = 1\nshards = 2\n"), BDS_TOOL_EXIT_OK, "%s", err);
    cr_assert_eq(cfg.server.shards, 2);
}

Test(tool_config, file_errors_name_the_file_line_and_key) {
    bds_tool_config cfg;
    char err[512];
    char path[64];
    write_file(path, sizeof path, "shards = 2\n\ninbound-capacity = -1\n");
    cr_assert_eq(parse(&cfg, err, "--config", path, NULL), BDS_TOOL_EXIT_USAGE);
    char want[256];
    snprintf(want, sizeof want, "bidistreamd: %s:3: inbound-capacity: '-1' is negative (expected 0 or more)", path);
    cr_assert_str_eq(err, want);
    unlink(path);
    file_bad("bogus = 1\n", ":1: unknown key 'bogus'");
    file_bad("shards 2\n", ":1: expected 'key = value'");
    file_bad("# ok\nshards =\n", ":2: shards: missing value");
    file_bad("config = /etc/other\n", ":1: config: config files do not nest");
    file_bad("--shards = 2\n", "unknown key '--shards'");
    file_bad("grace = soon\n", ":1: grace: expected a duration");
    file_bad("fail-fast\n", "expected 'key = value'");
    file_bad("help = true\n", "unknown key 'help'");
    file_bad("listen = \"127.0.0.1:1\"\n", ":1: listen: expected HOST:PORT");
}

Test(tool_config, file_cross_key_rules_name_the_flag) {
    bds_tool_config cfg;
    char err[512];
    cr_assert_eq(parse_file(&cfg, err, "inbound-policy = hard-reject\ninbound-queue-capacity = 3\n"),
                 BDS_TOOL_EXIT_USAGE);
    cr_assert(strncmp(err, "bidistreamd: --inbound-queue-capacity: ", 39) == 0, "%s", err);
    cr_assert_eq(parse_file(&cfg, err, "backoff = 5ms\n"), BDS_TOOL_EXIT_USAGE);
    cr_assert(strncmp(err, "bidistreamd: --backoff: ", 24) == 0, "%s", err);
}

Test(tool_config, file_line_too_long_is_refused_not_split) {
    char *text = malloc(6000);
    cr_assert_not_null(text);
    memset(text, ' ', 5000);
    snprintf(text + 5000, 1000, "shards = 2\n");
    file_bad(text, ":1: line longer than");
    free(text);
}

Test(tool_config, file_missing_or_twice_is_refused) {
    parse_bad("--config: /nonexistent/bds.conf: No such file or directory", "--config",
              "/nonexistent/bds.conf", NULL);
    parse_bad("--config: given twice", "--config", "/dev/null", "--config=/dev/null", NULL);
    parse_bad("--config", "--config", "/", NULL); /* a directory: read error */
    bds_tool_config cfg;
    parse_ok(&cfg, "--config", "/dev/null", NULL); /* empty: the defaults */
    cr_assert_eq(cfg.server.shards, 0);
}

/* ---- what main() does ----------------------------------------------------------------------- */

/* Runs bds_tool_prepare() with its output and error streams captured. */
static int prepare(char **out, char **errout, bds_tool_config *cfg, int argc, char **argv) {
    size_t n1, n2;
    FILE *o = open_memstream(out, &n1);
    FILE *e = open_memstream(errout, &n2);
    cr_assert(o && e);
    int rc = bds_tool_prepare(argc, argv, cfg, o, e);
    fclose(o);
    fclose(e);
    return rc;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

Test(tool_config, prepare_maps_outcomes_to_exit_codes) {
    cr_assert_eq(BDS_TOOL_EXIT_OK, 0);
    cr_assert_eq(BDS_TOOL_EXIT_FAILURE, 1);
    cr_assert_eq(BDS_TOOL_EXIT_USAGE, 2);
    bds_tool_config cfg;
    char *out, *err;
    char *run[] = {"bidistreamd", "--shards", "1", NULL};
    cr_assert_eq(prepare(&out, &err, &cfg, 3, run), BDS_TOOL_PROCEED);
    cr_assert_str_eq(out, "");
    cr_assert_str_eq(err, "");
    free(out);
    free(err);
    char *bad[] = {"bidistreamd", "--inbound-policy", "nope", NULL};
    cr_assert_eq(prepare(&out, &err, &cfg, 3, bad), 2);
    cr_assert_str_eq(out, "");
    cr_assert_eq(count_lines(err), 1, "%s", err);
    cr_assert(strncmp(err, "bidistreamd: --inbound-policy: ", 31) == 0, "%s", err);
    free(out);
    free(err);
    char *version[] = {"bidistreamd", "--version", NULL};
    cr_assert_eq(prepare(&out, &err, &cfg, 2, version), 0);
    cr_assert_str_eq(out, "bidistreamd " BDS_TOOL_VERSION_STRING "\n");
    cr_assert_str_eq(err, "");
    free(out);
    free(err);
}

Test(tool_config, help_lists_every_flag_with_its_default) {
    static const char *const flags[] = {
        "--listen HOST:PORT", "--shards N", "--inbound-ordering fifo|keyed", "--inbound-ordering-capacity N",
        "--inbound-policy POLICY", "--inbound-capacity N", "--inbound-queue-capacity N",
        "--inbound-bytes-max SIZE", "--outbound-ordering fifo|keyed", "--outbound-ordering-capacity N", "--outbound-policy POLICY",
        "--outbound-capacity N", "--outbound-queue-capacity N", "--outbound-bytes-max SIZE", "--fail-fast [BOOL]",
        "--drain-on-client-close [BOOL]", "--failures-terminal [BOOL]", "--max-attempts N", "--backoff DURATION",
        "--grace DURATION", "--drain-inbound [BOOL]", "--drain-outbound [BOOL]", "--metrics [BOOL]",
        "--metrics-payload-sizes [BOOL]", "--max-message-bytes SIZE", "--compress-responses none|deflate|gzip",
        "--max-concurrent-streams N",
        "--max-lingering-streams N",
        "--max-header-list-bytes SIZE", "--stream-window-bytes SIZE", "--conn-bytes-max SIZE", "--shard-bytes-max SIZE",
        "--idle-spin-us N", "--interop [BOOL]", "--interop-responses-max N",
        "--interop-response-bytes-max SIZE", "--max-connections N", "--log-level LEVEL",
        "--max-connection-age DURATION", "--max-connection-age-grace DURATION",
        "--config FILE", "--check-config", "--help", "--version",
    };
    bds_tool_config cfg;
    char *out, *err;
    char *help[] = {"bidistreamd", "--help", NULL};
    cr_assert_eq(prepare(&out, &err, &cfg, 2, help), 0);
    cr_assert_str_eq(err, "");
    cr_assert(strncmp(out, "usage: bidistreamd", 18) == 0);
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        cr_assert_not_null(strstr(out, flags[i]), "--help lacks %s", flags[i]);
    }
    cr_assert_not_null(strstr(out, "(default 127.0.0.1:50051)"));
    cr_assert_not_null(strstr(out, "(default 5s)"));
    cr_assert_not_null(strstr(out, "(default 4194304)"));
    free(out);
    free(err);
}

Test(tool_config, check_config_output_reads_back_into_the_same_config) {
    bds_tool_config first;
    char *out, *err;
    char *argv[] = {"bidistreamd", "--check-config", "--listen", "[::1]:9", "--shards", "7", "--inbound-ordering",
                    "fifo", "--inbound-policy", "soft-allow-signal", "--inbound-bytes-max", "64KiB",
                    "--outbound-ordering", "keyed",
                    "--outbound-capacity", "3", "--outbound-queue-capacity", "9", "--outbound-bytes-max", "1MiB",
                    "--conn-bytes-max", "64MiB", "--shard-bytes-max", "2GiB",
                    "--fail-fast=false",
                    "--max-attempts", "4", "--backoff", "1.5ms", "--grace", "1m30s", "--drain-outbound", "no",
                    "--metrics-payload-sizes", "--max-message-bytes", "1MiB", "--max-concurrent-streams", "10", "--max-lingering-streams", "5",
                    "--max-header-list-bytes", "2048", "--stream-window-bytes", "1GiB", "--idle-spin-us", "50",
                    "--inbound-read-ahead", "32", "--stream-window-max-bytes", "8MiB",
                    "--interop", "--interop-responses-max", "10", "--max-connections", "77", "--interop-response-bytes-max", "1MiB",
                    "--log-level", "warn", "--idle-timeout", "90s", "--keepalive-timeout", "0",
                    "--max-connection-age", "10m", "--max-connection-age-grace", "45s",
                    "--ping-without-streams", "--tcp-user-timeout-ms", "1234", "--reuse-port", "--reflection",
                    "--tls-cert", "/etc/bds/cert.pem", "--tls-key", "/etc/bds/key.pem", "--tls-client-ca", "/etc/bds/ca.pem",
                    "--metrics-listen", "127.0.0.1:9464", "--access-log", "--compress-responses", "deflate", NULL};
    int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
    cr_assert_eq(prepare(&out, &err, &first, argc, argv), 0, "%s", err);
    cr_assert_str_eq(err, "");
    cr_assert_eq(count_lines(out), 58, "%s", out); /* a comment and 57 keys */
    cr_assert_not_null(strstr(out, "\ninbound-read-ahead = 32\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nstream-window-max-bytes = 8388608\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ntls-cert = /etc/bds/cert.pem\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ntls-key = /etc/bds/key.pem\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nreflection = true\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nmetrics-listen = 127.0.0.1:9464\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\naccess-log = true\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ncompress-responses = deflate\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nreuse-port = true\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nmax-connection-age = 10m\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nmax-connection-age-grace = 45s\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nidle-timeout = 90s\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nkeepalive-timeout = 0\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ninterop-response-bytes-max = 1048576\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nmax-lingering-streams = 5\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ninterop = true\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nconn-bytes-max = 67108864\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nshard-bytes-max = 2147483648\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nmax-connections = 77\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ninbound-bytes-max = 65536\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\noutbound-bytes-max = 1048576\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\nbackoff = 1500us\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\ngrace = 90s\n"), "%s", out);
    bds_tool_config second;
    char msg[512] = "";
    cr_assert_eq(parse_file(&second, msg, out), BDS_TOOL_EXIT_OK, "%s", msg);
    cr_assert_str_eq(second.server.listen, "[::1]:9");
    cr_assert(second.access_log, "access-log reads back");
    free(out);
    free(err);
    assert_same_config(&first.server, &second.server);
    cr_assert_eq(first.server.shards, 7);
    cr_assert_eq(first.server.options.retry.backoff_ns, 1500000);
}

/* A NUL byte in a config file is refused with its line: strlen stopped at it,
 * so /dev/zero was read as empty lines for ever (noticed while fuzzing the
 * parser). The test's timeout turns a return of that hang into a failure. */
Test(tool_config, a_nul_byte_in_a_config_file_is_refused_with_its_line, .timeout = 10) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/bds_test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    static const char text[] = "shards = 2\nlog-level = warn\0junk\nshards = 3\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    bds_tool_config cfg;
    char err[512] = "";
    int rc = parse(&cfg, err, "--config", path, NULL);
    unlink(path);
    cr_assert_eq(rc, BDS_TOOL_EXIT_USAGE, "%s", err);
    cr_assert_not_null(strstr(err, ":2: a NUL byte"), "%s", err);
    cr_assert_eq(parse(&cfg, err, "--config", "/dev/zero", NULL), BDS_TOOL_EXIT_USAGE);
    cr_assert_not_null(strstr(err, "/dev/zero:1: a NUL byte"), "%s", err);
}
