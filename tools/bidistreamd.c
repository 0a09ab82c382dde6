/* bidistreamd — the bidistream gRPC server, built on the public API only.
 *
 * Everything about flags and the config file lives in bidistreamd_config.c
 * (tested without a server); this file creates the server, runs it until
 * SIGTERM/SIGINT (the server drains gracefully) and maps the outcome onto the
 * exit status: 0 clean shutdown, 1 the server failed while running or had to
 * abandon work at the hard stop (grace period + 5 s), 2 bad flags or a config
 * the server refused; a second SIGTERM/SIGINT while stopping exits at once
 * with 128 + the signal's number (the server's doing). The "listening on"
 * line is the server's, printed once its listeners are up. */
#include <stdio.h>

#include <bidistream/bidistream.h>
#include <bidistream/server.h>

#include "bidistreamd_config.h"

int main(int argc, char **argv) {
    bds_tool_config cfg;
    int rc = bds_tool_prepare(argc, argv, &cfg, stdout, stderr);
    if (rc != BDS_TOOL_PROCEED) return rc;
    bds_server *srv;
    const char *why = NULL;
    bds_status st = bds_server_create(&srv, &cfg.server, &why);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: %s\n", why ? why : bds_status_str(st));
        return BDS_TOOL_EXIT_USAGE;
    }
    st = bds_server_run(srv);
    bds_server_destroy(srv);
    if (st == BDS_DEADLINE_EXCEEDED) fprintf(stderr, "bidistreamd: stopped hard: work was still running\n");
    if (st != BDS_OK) return BDS_TOOL_EXIT_FAILURE;
    if (cfg.server.log_level >= 2) fprintf(stderr, "bidistreamd: stopped\n");
    return BDS_TOOL_EXIT_OK;
}
