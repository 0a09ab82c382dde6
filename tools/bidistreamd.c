/* bidistreamd — the bidistream gRPC server, built on the public API only.
 *
 * Everything about flags and the config file lives in bidistreamd_config.c
 * (tested without a server); this file creates the server, runs it until
 * SIGTERM/SIGINT (the server drains gracefully) and maps the outcome onto the
 * exit status: 0 clean shutdown, 1 the server failed while running or had to
 * abandon work at the hard stop (grace period + 5 s), 2 bad flags or a config
 * the server refused; a second SIGTERM/SIGINT while stopping exits at once
 * with 128 + the signal's number (the server's doing). The "listening on"
 * line is the server's, printed once its listeners are up; the server's log
 * lines go through bds_server_config.log, under this program's name. With
 * --metrics, each method's counters (bds_server_get_stats) are printed when
 * the server stops; --metrics-payload-sizes adds their payload bytes.
 * Built with libsystemd, it speaks systemd's readiness protocol (sd_notify:
 * READY=1 once every shard listens, STOPPING=1 when the graceful stop
 * begins) when systemd started it with NOTIFY_SOCKET; tools/deploy has the
 * unit. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <bidistream/bidistream.h>
#include <bidistream/server.h>

#include "bidistreamd_config.h"

#ifdef BDS_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void log_line(int level, const char *message, void *ctx) {
    (void)level;
    (void)ctx;
    char out[1200];
    int n = snprintf(out, sizeof out, "bidistreamd: %s\n", message);
    if (n > (int)sizeof out - 1) n = (int)sizeof out - 1;
    ssize_t w = write(2, out, (size_t)n); /* one write per line: shards never interleave */
    (void)w;
}

/* systemd's readiness protocol: a no-op unless systemd set NOTIFY_SOCKET
 * (Type=notify), so a unit's dependents start only once clients can connect,
 * and systemd shows the stop while the streams drain. */
static void notify_ready(bds_server *srv, uint16_t port, void *ctx) {
    (void)srv;
    (void)ctx;
#ifdef BDS_HAVE_SYSTEMD
    sd_notifyf(0, "READY=1\nSTATUS=serving on port %u", (unsigned)port);
#else
    (void)port;
#endif
}

static void notify_stopping(bds_server *srv, void *ctx) {
    (void)srv;
    (void)ctx;
#ifdef BDS_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1\nSTATUS=draining: GOAWAY sent, in-flight work finishing");
#endif
}

/* --metrics: what each method did, once the server has stopped. */
static void print_stats(const bds_server *srv, bool bytes) {
    bds_server_stats *s = malloc(sizeof *s);
    if (!s) return;
    bds_server_get_stats(srv, s);
    for (uint32_t i = 0; i < s->n_methods; i++) {
        const bds_method_stats *m = &s->methods[i];
        if (!m->streams_opened && !m->streams_refused) continue;
        fprintf(stderr, "bidistreamd: stats %s: streams %llu opened, %llu refused, %llu ended (%llu OK); messages %llu in, "
                "%llu out", m->path, (unsigned long long)m->streams_opened, (unsigned long long)m->streams_refused,
                (unsigned long long)m->streams_ended, (unsigned long long)m->streams_ok,
                (unsigned long long)m->messages_in, (unsigned long long)m->messages_out);
        if (bytes)
            fprintf(stderr, "; payload bytes %llu in, %llu out", (unsigned long long)m->bytes_in,
                    (unsigned long long)m->bytes_out);
        fprintf(stderr, "\n");
    }
    free(s);
}

int main(int argc, char **argv) {
    bds_tool_config cfg;
    int rc = bds_tool_prepare(argc, argv, &cfg, stdout, stderr);
    if (rc != BDS_TOOL_PROCEED) return rc;
    cfg.server.log = log_line;
    cfg.server.on_ready = notify_ready;
    bds_server *srv;
    const char *why = NULL;
    bds_status st = bds_server_create(&srv, &cfg.server, &why);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", why ? why : bds_status_str(st));
        return BDS_TOOL_EXIT_USAGE;
    }
    st = bds_server_on_stop(srv, notify_stopping, NULL);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", bds_status_str(st));
        bds_server_destroy(srv);
        return BDS_TOOL_EXIT_FAILURE;
    }
    st = bds_server_run(srv);
    if (cfg.server.options.metrics.enabled) print_stats(srv, cfg.server.options.metrics.payload_sizes);
    bds_server_destroy(srv);
    if (st == BDS_DEADLINE_EXCEEDED) fprintf(stderr, "bidistreamd: stopped hard: work was still running\n");
    if (st != BDS_OK) return BDS_TOOL_EXIT_FAILURE;
    if (cfg.server.log_level >= 2) fprintf(stderr, "bidistreamd: stopped\n");
    return BDS_TOOL_EXIT_OK;
}
