/* bidistreamd — the bidistream gRPC server, built on the public API only.
 *
 * Everything about flags and the config file lives in bidistreamd_config.c
 * (tested without a server); this file creates the server, runs it until
 * SIGTERM/SIGINT (the server drains gracefully) and maps the outcome onto the
 * exit status: 0 clean shutdown, 1 the server failed while running or had to
 * abandon work at the hard stop (grace period + 5 s), 2 bad flags or a config
 * the server refused; a second SIGTERM/SIGINT while stopping exits at once
 * with 128 + the signal's number (the server's doing). Log lines (the
 * server's, through bds_server_config.log, and this program's) are one event
 * per line in key=value form on stderr (bidistreamd_log.h); the "listening
 * on" line is the server's, printed once its listeners are up (with
 * metrics=HOST:PORT when --metrics-listen serves Prometheus metrics).
 * --access-log adds one line per stream. With --metrics, each method's
 * counters (bds_server_get_stats) are logged when the server stops;
 * --metrics-payload-sizes adds their payload bytes.
 *
 * Under systemd (Type=notify, tools/deploy/bidistreamd.service) it tells the
 * service manager READY=1 once the listeners are up and STOPPING=1 when the
 * drain begins, through $NOTIFY_SOCKET: the sd_notify protocol (one datagram
 * per state on a unix socket, an abstract one when the path starts with
 * '@'), written here in a few lines rather than linking libsystemd for it. */
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <bidistream/bidistream.h>
#include <bidistream/server.h>

#include "bidistreamd_config.h"
#include "bidistreamd_log.h"

/* --metrics: what each method did, once the server has stopped. */
static void log_stats(const bds_server *srv, bool bytes) {
    bds_server_stats *s = malloc(sizeof *s);
    if (!s) return;
    bds_server_get_stats(srv, s);
    for (uint32_t i = 0; i < s->n_methods; i++) {
        const bds_method_stats *m = &s->methods[i];
        if (!m->streams_opened && !m->streams_refused) continue;
        char extra[96] = "";
        if (bytes)
            snprintf(extra, sizeof extra, " bytes_in=%llu bytes_out=%llu", (unsigned long long)m->bytes_in,
                     (unsigned long long)m->bytes_out);
        bdsd_log(BDS_LOG_INFO, "stats",
                 "method=%s streams_opened=%llu streams_refused=%llu streams_ended=%llu streams_ok=%llu "
                 "messages_in=%llu messages_out=%llu%s",
                 m->path, (unsigned long long)m->streams_opened, (unsigned long long)m->streams_refused,
                 (unsigned long long)m->streams_ended, (unsigned long long)m->streams_ok,
                 (unsigned long long)m->messages_in, (unsigned long long)m->messages_out, extra);
    }
    free(s);
}

/* Sends state to the service manager, if there is one; errors are ignored
 * (a server must not fail because nobody listens). */
static void notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@')) return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path) return;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    (void)sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    close(fd);
}

static void on_ready(bds_server *srv, uint16_t port, void *ctx) {
    (void)srv, (void)ctx;
    char state[64];
    snprintf(state, sizeof state, "READY=1\nSTATUS=serving on port %u", port);
    notify(state);
}

static void on_stop(bds_server *srv, void *ctx) {
    (void)srv, (void)ctx;
    notify("STOPPING=1");
}

int main(int argc, char **argv) {
    bds_tool_config cfg;
    int rc = bds_tool_prepare(argc, argv, &cfg, stdout, stderr);
    if (rc != BDS_TOOL_PROCEED) return rc;
    /* Large messages (past the server's size-class pools) come from malloc.
     * glibc would map each one afresh and trim the heap after it, so every
     * large message paid page faults on all its pages (~8 % of the CPU at
     * 1 MiB messages): keep them on the heap and keep freed memory up to a
     * few large messages' worth. */
    mallopt(M_MMAP_THRESHOLD, 16 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    cfg.server.log = bdsd_log_sink;
    cfg.server.on_ready = on_ready;
    bds_server *srv;
    const char *why = NULL;
    bds_status st = bds_server_create(&srv, &cfg.server, &why);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", why ? why : bds_status_str(st));
        return BDS_TOOL_EXIT_USAGE;
    }
    st = bds_server_on_stop(srv, on_stop, NULL);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", bds_status_str(st));
        bds_server_destroy(srv);
        return BDS_TOOL_EXIT_FAILURE;
    }
    if (cfg.access_log && bdsd_access_log_add(srv, &why) != BDS_OK) {
        fprintf(stderr, "bidistreamd: --access-log: %s\n", why ? why : "cannot add the interceptor");
        bds_server_destroy(srv);
        return BDS_TOOL_EXIT_USAGE;
    }
    st = bds_server_run(srv);
    if (cfg.server.options.metrics.enabled) log_stats(srv, cfg.server.options.metrics.payload_sizes);
    bds_server_destroy(srv);
    if (st == BDS_DEADLINE_EXCEEDED) bdsd_log(BDS_LOG_ERROR, "stopped hard: work was still running", NULL);
    if (st != BDS_OK) return BDS_TOOL_EXIT_FAILURE;
    if (cfg.server.log_level >= BDS_LOG_INFO) bdsd_log(BDS_LOG_INFO, "stopped", NULL);
    return BDS_TOOL_EXIT_OK;
}
