/* fuzz_http1_req.c — the metrics endpoint's request-head judge
 * (proto/http1_req.c), the input a scraper (or anyone reaching the port)
 * controls.
 *
 * Input: two bytes of the head bound (64 + 0..8191), then the request bytes.
 * Properties:
 *   - the verdict does not depend on how the bytes arrive: fed whole, and fed
 *     in chunks the input's own random stream picks, the first verdict that
 *     is not MORE is the same, and so are the fields of a DONE;
 *   - DONE means a head within the bound ending in CRLF CRLF, a method of
 *     1..16 token bytes, a path inside the head starting with '/' and free of
 *     '?', spaces and controls, HTTP/1.0 or 1.1;
 *   - nothing is read past len, and past the bound the verdict is never MORE. */
#include "fuzz_common.h"
#include "http1_req.h"

static bds__http1_verdict first_verdict(const uint8_t *buf, size_t len, size_t max, bds__http1_req *r, uint32_t *rng,
                                        bool whole) {
    bds__http1_init(r);
    if (whole) return bds__http1_parse(r, buf, len, max);
    size_t have = 0;
    for (;;) {
        *rng = *rng * 1103515245u + 12345u;
        size_t step = 1 + (*rng >> 16) % 97;
        have = have + step < len ? have + step : len;
        bds__http1_verdict v = bds__http1_parse(r, buf, have, max);
        if (v != BDS_HTTP1_MORE || have == len) return v;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t max = 64 + (((size_t)data[0] << 8 | data[1]) % 8192);
    const uint8_t *buf = data + 2;
    size_t len = size - 2;
    /* A copy of exactly len bytes: ASan catches a read past it. */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    uint32_t rng = (uint32_t)len * 2654435761u;
    bds__http1_req a, b;
    bds__http1_verdict va = first_verdict(copy, len, max, &a, &rng, true);
    bds__http1_verdict vb = first_verdict(copy, len, max, &b, &rng, false);
    FUZZ_CHECK(va == vb, "whole %d, in chunks %d", va, vb);
    if (len >= max) FUZZ_CHECK(va != BDS_HTTP1_MORE, "past the bound (%zu >= %zu) and still MORE", len, max);
    if (va == BDS_HTTP1_DONE) {
        FUZZ_CHECK(a.head_len == b.head_len && a.path_off == b.path_off && a.path_len == b.path_len &&
                       a.minor == b.minor && strcmp(a.method, b.method) == 0,
                   "DONE differs by arrival");
        FUZZ_CHECK(a.head_len >= 4 && a.head_len <= len && a.head_len <= max, "head_len %zu", a.head_len);
        FUZZ_CHECK(memcmp(copy + a.head_len - 4, "\r\n\r\n", 4) == 0, "head does not end in CRLF CRLF");
        size_t ml = strlen(a.method);
        FUZZ_CHECK(ml >= 1 && ml <= BDS_HTTP1_METHOD_MAX && memcmp(copy, a.method, ml) == 0 && copy[ml] == ' ',
                   "method '%s'", a.method);
        FUZZ_CHECK(a.path_off == ml + 1 && a.path_len >= 1 && a.path_off + a.path_len < a.head_len, "path at %zu+%zu",
                   a.path_off, a.path_len);
        FUZZ_CHECK(copy[a.path_off] == '/', "path does not start with /");
        for (size_t i = 0; i < a.path_len; i++) {
            uint8_t c = copy[a.path_off + i];
            FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '?', "path byte %#x", c);
        }
        FUZZ_CHECK(a.minor == 0 || a.minor == 1, "HTTP/1.%u", a.minor);
    }
    free(copy);
    return 0;
}
