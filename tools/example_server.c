/* example_server — a program that serves its own bidi method with libbidistream.
 *
 * It registers /example.Shout/Upper: every request message (any bytes) is
 * answered with the same bytes upper-cased, in order within a stream, and
 * runs the server from its own main() next to the built-in services. The
 * first byte of each message is its ordering key, so messages starting with
 * different bytes run in parallel. Built and run by the tests
 * (tests/e2e/test_grpcio.py, class Example).
 *
 *   example_server [HOST:PORT]        (default 127.0.0.1:50052) */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bidistream/bidistream.h>
#include <bidistream/server.h>

static void upper(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    uint8_t *out = malloc(len ? len : 1);
    if (!out) {
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    for (uint32_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(req[i]);
    bds_call_reply_bytes(call, out, len);
    free(out);
    bds_call_done(call, BDS_OK, NULL);
}

static bool first_byte_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, void *ctx) {
    (void)ctx;
    *key = req;
    *key_len = len ? 1 : 0;
    return true;
}

int main(int argc, char **argv) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.listen = argc > 1 ? argv[1] : "127.0.0.1:50052";
    bds_server *srv;
    const char *why = NULL;
    if (bds_server_create(&srv, &cfg, &why) != BDS_OK) {
        fprintf(stderr, "example_server: %s\n", why ? why : "cannot create the server");
        return 2;
    }
    bds_method m = {.size = sizeof m, .path = "/example.Shout/Upper", .handler = upper, .key = first_byte_key};
    if (bds_server_add_method(srv, &m, &why) != BDS_OK) {
        fprintf(stderr, "example_server: %s\n", why);
        return 2;
    }
    bds_status st = bds_server_run(srv); /* until SIGTERM/SIGINT */
    bds_server_destroy(srv);
    return st == BDS_OK ? 0 : 1;
}
