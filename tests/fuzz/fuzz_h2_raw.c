/* fuzz_h2_raw.c — the whole HTTP/2 server session (proto/h2_server.c) fed
 * arbitrary bytes in arbitrary chunks, with an advancing clock and an app that
 * acts like the server (fuzz_h2_app.h checks the session's contract).
 *
 * Input: [config byte][4-byte seed][ops...]. Config bit 7 sends the client
 * connection preface first, so inputs need not rediscover it. Each op:
 *   kind 0/1  recv: the next 1..64 input bytes (kind 1: 16..1024 in steps
 *             of 16; the length from the op), then the clock steps 0..~4 s;
 *   kind 2    output: the socket takes all, some or none of it;
 *   kind 3    the app acts (consume, send, finish, GOAWAY; fuzz_h2_app.h).
 * At the end the output is flushed (bounded) and the connection closed. A
 * session that failed is read no more, as the server does. */
#include "fuzz_h2_app.h"

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    static app a;
    app_init(&a, fuzz_u32(&in));
    bds__h2_config cfg;
    app_config(&cfg, sel);
    a.msg_max = cfg.msg_bytes_max;
    FUZZ_CHECK(bds__h2_create(&a.h2, &cfg, &app_callbacks, &a) == BDS_OK, "create");
    uint64_t now = 1000000000ULL;
    if (sel & 0x80) a.failed = bds__h2_recv(a.h2, (const uint8_t *)preface, sizeof preface - 1, now) != BDS_OK;
    while (in.len > 0) {
        uint8_t op = fuzz_u8(&in);
        switch (op & 3) {
        case 0:
        case 1: {
            size_t n;
            size_t want = (size_t)(op >> 2) + 1;
            const uint8_t *p = fuzz_bytes(&in, (op & 3) == 1 ? want * 16 : want, &n);
            now += (uint64_t)(fuzz_u8(&in) & 0x3f) << 26; /* 0..~4.2 s */
            if (n == 0 || a.failed) break;
            bds_status st = bds__h2_recv(a.h2, p, n, now);
            FUZZ_CHECK(st == BDS_OK || st == BDS_UNAVAILABLE, "recv: %d", (int)st);
            a.failed = st != BDS_OK;
            break;
        }
        case 2: {
            uint8_t t = op >> 2;
            app_output(&a, t == 0 ? 0 : t >= 48 ? SIZE_MAX : (size_t)t * 97u, NULL, NULL);
            break;
        }
        case 3: app_tick(&a, fuzz_u8(&in)); break;
        }
    }
    for (int i = 0; i < 64 && bds__h2_want_write(a.h2); i++) app_output(&a, SIZE_MAX, NULL, NULL);
    app_close(&a);
    return 0;
}
