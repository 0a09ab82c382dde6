/* fuzz_config.c — bidistreamd's flag and config-file parser
 * (tools/bidistreamd_config.c).
 *
 * Input: argv words separated by NUL bytes, then optionally "\0\0" and the
 * text of a config file, passed as --config (a memfd, so nothing touches the
 * disk). Properties: the parser never crashes and answers exit 0 or 2; an
 * error is one line "bidistreamd: ..."; an accepted config passes
 * bds_options_validate, keeps every duration within its 1 h bound, is accepted
 * by bds_server_create (the parser never lets through what the server
 * refuses), and --check-config's output reads back into the same config. */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <unistd.h>

#include "bidistreamd_config.h"
#include "fuzz_common.h"

#define ARGS_MAX 32
#define HOUR_NS (3600ULL * 1000000000ULL)

/* A memfd holding text, and its /proc path; -1 when it cannot be made. */
static int text_file(const void *text, size_t len, char *path, size_t cap) {
    int fd = memfd_create("bds_fuzz_config", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (len > 0 && write(fd, text, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

static void check_error_line(const char *err) {
    FUZZ_CHECK(strncmp(err, "bidistreamd: ", 13) == 0, "error '%s' lacks the program name", err);
    FUZZ_CHECK(strchr(err, '\n') == NULL, "error '%s' is more than one line", err);
}

/* Field by field (padding differs between copies). */
static void check_same(const bds_server_config *a, const bds_server_config *b) {
    FUZZ_CHECK(strcmp(a->listen, b->listen) == 0, "listen %s vs %s", a->listen, b->listen);
    FUZZ_CHECK(a->shards == b->shards && a->max_message_bytes == b->max_message_bytes &&
                   a->max_concurrent_streams == b->max_concurrent_streams &&
                   a->max_header_list_bytes == b->max_header_list_bytes &&
                   a->stream_window_bytes == b->stream_window_bytes && a->idle_spin_us == b->idle_spin_us &&
                   a->log_level == b->log_level,
               "server limits differ after a round trip");
    const bds_options *x = &a->options, *y = &b->options;
    FUZZ_CHECK(x->inbound.ordering.mode == y->inbound.ordering.mode &&
                   x->inbound.ordering.capacity == y->inbound.ordering.capacity &&
                   x->inbound.backpressure.policy == y->inbound.backpressure.policy &&
                   x->inbound.backpressure.capacity == y->inbound.backpressure.capacity &&
                   x->inbound.backpressure.queue_capacity == y->inbound.backpressure.queue_capacity &&
                   x->inbound.outstanding_bytes_max == y->inbound.outstanding_bytes_max &&
                   x->inbound.drain_on_client_close == y->inbound.drain_on_client_close &&
                   x->inbound.failures_terminal == y->inbound.failures_terminal,
               "inbound options differ after a round trip");
    FUZZ_CHECK(x->outbound.ordering.mode == y->outbound.ordering.mode &&
                   x->outbound.ordering.capacity == y->outbound.ordering.capacity &&
                   x->outbound.backpressure.policy == y->outbound.backpressure.policy &&
                   x->outbound.backpressure.capacity == y->outbound.backpressure.capacity &&
                   x->outbound.backpressure.queue_capacity == y->outbound.backpressure.queue_capacity &&
                   x->outbound.fail_fast == y->outbound.fail_fast,
               "outbound options differ after a round trip");
    FUZZ_CHECK(x->retry.max_attempts == y->retry.max_attempts && x->retry.backoff_ns == y->retry.backoff_ns &&
                   x->shutdown.grace_period_ns == y->shutdown.grace_period_ns &&
                   x->shutdown.drain_inbound == y->shutdown.drain_inbound &&
                   x->shutdown.drain_outbound == y->shutdown.drain_outbound &&
                   x->metrics.enabled == y->metrics.enabled && x->metrics.payload_sizes == y->metrics.payload_sizes,
               "retry, shutdown or metrics options differ after a round trip");
}

static void check_accepted(const bds_tool_config *cfg) {
    const bds_options *o = &cfg->server.options;
    FUZZ_CHECK(bds_options_validate(o, NULL) == BDS_OK, "accepted options fail bds_options_validate");
    FUZZ_CHECK(o->shutdown.grace_period_ns <= HOUR_NS, "grace %llu ns past 1 h",
               (unsigned long long)o->shutdown.grace_period_ns);
    FUZZ_CHECK(o->retry.backoff_ns <= HOUR_NS, "backoff %llu ns past 1 h", (unsigned long long)o->retry.backoff_ns);
    bds_server *srv = NULL;
    const char *why = NULL;
    /* The TLS files' contents are the server's to judge (it reads them at
     * create, tests/e2e/test_tls.py): the tool only names them. */
    bds_server_config sc = cfg->server;
    sc.tls_cert_file = sc.tls_key_file = sc.tls_client_ca_file = NULL;
    FUZZ_CHECK(bds_server_create(&srv, &sc, &why) == BDS_OK, "the server refuses an accepted config: %s",
               why ? why : "?");
    bds_server_destroy(srv);

    /* --check-config's output, read back, is the same config. */
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    FUZZ_CHECK(f != NULL, "open_memstream");
    bds_tool_config_write(cfg, f);
    FUZZ_CHECK(fclose(f) == 0, "memstream");
    char path[64];
    int fd = text_file(text, text_len, path, sizeof path);
    free(text);
    if (fd < 0) return;
    char *argv[] = {"bidistreamd", "--config", path, NULL};
    bds_tool_config back;
    char err[512];
    int rc = bds_tool_parse_args(3, argv, &back, err, sizeof err);
    close(fd);
    FUZZ_CHECK(rc == BDS_TOOL_EXIT_OK, "the written config does not read back: %s", err);
    check_same(&cfg->server, &back.server);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 8192) return 0;
    /* NUL-terminated copies: argv words and the file text. */
    char *buf = malloc(size + 1);
    FUZZ_CHECK(buf != NULL, "oom");
    if (size) memcpy(buf, data, size);
    buf[size] = 0;
    size_t args_len = size;
    const char *file = NULL;
    size_t file_len = 0;
    for (size_t i = 0; i + 1 < size; i++) {
        if (buf[i] == 0 && buf[i + 1] == 0) {
            args_len = i;
            file = buf + i + 2;
            file_len = size - i - 2;
            break;
        }
    }
    char *argv[ARGS_MAX + 3];
    int argc = 0;
    argv[argc++] = "bidistreamd";
    for (size_t i = 0; i < args_len && argc < ARGS_MAX;) {
        /* Only the fuzzed text is a config file: a fuzzed path could name
         * /dev/stdin and block the run. */
        if (strncmp(buf + i, "--config", 8) != 0) argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    char path[64];
    int fd = -1;
    if (file) {
        fd = text_file(file, file_len, path, sizeof path);
        if (fd >= 0) {
            argv[argc++] = "--config";
            argv[argc++] = path;
        }
    }
    argv[argc] = NULL;

    bds_tool_config cfg;
    char err[512];
    memset(err, 'x', sizeof err);
    err[sizeof err - 1] = 0;
    int rc = bds_tool_parse_args(argc, argv, &cfg, err, sizeof err);
    FUZZ_CHECK(rc == BDS_TOOL_EXIT_OK || rc == BDS_TOOL_EXIT_USAGE, "exit code %d", rc);
    if (rc == BDS_TOOL_EXIT_USAGE) check_error_line(err);
    else if (cfg.action == BDS_TOOL_RUN || cfg.action == BDS_TOOL_CHECK) check_accepted(&cfg);
    if (fd >= 0) close(fd);
    free(buf);
    return 0;
}
