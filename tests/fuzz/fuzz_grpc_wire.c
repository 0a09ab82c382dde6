/* fuzz_grpc_wire.c — grpc-timeout, grpc-message percent-coding and the
 * request-header checks (proto/grpc_wire.c).
 *
 * The first input byte picks a mode; the rest is its input:
 *   0  grpc-timeout parsing against a reference (1..8 digits + unit, saturating);
 *   1  formatting any uint64: the text parses back, never shorter than asked;
 *   2  percent-coding: decode(encode(x)) == x, the encoding is printable ASCII
 *      without a bare '%', its length is what a cap-0 call announced, a short
 *      buffer is left untouched, and decoding in place equals decoding apart;
 *   3  request checks: fuzzed header lists (names picked from the ones that
 *      matter, or fuzzed) give a verdict from the documented set, 431 exactly
 *      when the RFC 7541 size passes the bound, and OK only with a known
 *      method, POST, application/grpc, te: trailers. */
#include "fuzz_common.h"
#include "grpc_wire.h"

static bool ref_timeout(const uint8_t *s, size_t len, uint64_t *ns) {
    if (len < 2 || len > 9) return false;
    uint64_t unit;
    switch (s[len - 1]) {
    case 'H': unit = 3600000000000ULL; break;
    case 'M': unit = 60000000000ULL; break;
    case 'S': unit = 1000000000ULL; break;
    case 'm': unit = 1000000ULL; break;
    case 'u': unit = 1000ULL; break;
    case 'n': unit = 1; break;
    default: return false;
    }
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *ns = __builtin_mul_overflow(v, unit, ns) ? UINT64_MAX : *ns;
    return true;
}

static void timeout_parse(const uint8_t *s, size_t len) {
    uint64_t got = 12345, want = 0;
    bool ok = bds__grpc_timeout_parse((const char *)s, len, &got);
    bool ref = ref_timeout(s, len, &want);
    FUZZ_CHECK(ok == ref, "parse says %d, reference %d", ok, ref);
    FUZZ_CHECK(ok ? got == want : got == 12345, "value %llu, reference %llu", (unsigned long long)got,
               (unsigned long long)want);
}

static void timeout_format(fuzz_in *in) {
    uint64_t ns = (uint64_t)fuzz_u32(in) << 32 | fuzz_u32(in);
    /* Small values matter most: shift the input down by a fuzzed amount. */
    ns >>= fuzz_u8(in) & 63;
    char out[10];
    memset(out, 'x', sizeof out);
    size_t n = bds__grpc_timeout_format(ns, out);
    FUZZ_CHECK(n >= 2 && n <= 9 && out[n] == 0 && strlen(out) == n, "format length %zu", n);
    uint64_t back;
    FUZZ_CHECK(bds__grpc_timeout_parse(out, n, &back), "'%s' does not parse back", out);
    /* 99999999H is past 2^64 ns: every value has a text, rounded up. */
    FUZZ_CHECK(back >= ns, "'%s' is %llu ns, shorter than %llu", out, (unsigned long long)back,
               (unsigned long long)ns);
}

static void percent(const uint8_t *s, size_t len) {
    size_t need = bds__grpc_percent_encode(s, len, NULL, 0);
    FUZZ_CHECK(need >= len && need <= 3 * len, "encoded length %zu for %zu bytes", need, len);
    char *enc = malloc(need + 1);
    FUZZ_CHECK(enc != NULL, "oom");
    if (need > 0) {
        /* One byte short: nothing is written, the same length is announced. */
        memset(enc, '#', need + 1);
        FUZZ_CHECK(bds__grpc_percent_encode(s, len, enc, need - 1) == need, "short cap changes the length");
        for (size_t i = 0; i < need + 1; i++) FUZZ_CHECK(enc[i] == '#', "short cap wrote byte %zu", i);
    }
    FUZZ_CHECK(bds__grpc_percent_encode(s, len, enc, need) == need, "full cap changes the length");
    for (size_t i = 0; i < need; i++) {
        uint8_t c = (uint8_t)enc[i];
        FUZZ_CHECK(c >= 0x20 && c <= 0x7e, "byte %zu of the encoding is 0x%02x", i, c);
        if (c == '%') FUZZ_CHECK(i + 2 < need, "a '%%' without two hex digits at %zu", i);
    }
    uint8_t *dec = malloc(need + 1);
    FUZZ_CHECK(dec != NULL, "oom");
    size_t m = bds__grpc_percent_decode(enc, need, dec);
    FUZZ_CHECK(m == len && (len == 0 || memcmp(dec, s, len) == 0), "decode(encode(x)) != x");
    /* Any text decodes (leniently), never grows, and in place gives the same bytes. */
    uint8_t *apart = malloc(len + 1), *inplace = malloc(len + 1);
    FUZZ_CHECK(apart && inplace, "oom");
    if (len) memcpy(inplace, s, len);
    size_t a = bds__grpc_percent_decode((const char *)s, len, apart);
    size_t b = bds__grpc_percent_decode((const char *)inplace, len, inplace);
    FUZZ_CHECK(a <= len && a == b && (a == 0 || memcmp(apart, inplace, a) == 0), "in-place decode differs");
    free(enc);
    free(dec);
    free(apart);
    free(inplace);
}

static const char *const paths[] = {"/bidistream.v1.Pipeline/Process", "/grpc.health.v1.Health/Check", "/a/b"};
static const bds__grpc_methods methods = {paths, 3};

static const char *const names[] = {":method", ":path", "content-type", "te", "grpc-timeout", "grpc-encoding",
                                    ":scheme", ":authority", "user-agent", "grpc-accept-encoding"};
static const char *const values[] = {"POST", "/bidistream.v1.Pipeline/Process", "application/grpc",
                                     "application/grpc+proto", "trailers", "1S", "identity", "gzip", "GET",
                                     "/grpc.health.v1.Health/Check", "application/GRPC;x=1", "99999999H"};

static void request(fuzz_in *in) {
    uint32_t max = (uint32_t)fuzz_u8(in) * 16u; /* 0: the 16 KiB default */
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, max);
    uint64_t size = 0;
    bool post = false, path_known = false, ct = false, te = false;
    int32_t method = -1;
    for (int n = 0; n < 64 && in->len > 0; n++) {
        uint8_t op = fuzz_u8(in);
        size_t nlen, vlen;
        const uint8_t *name, *value;
        uint8_t nbuf[64];
        if (op & 0x80) {
            name = fuzz_bytes(in, fuzz_u8(in) & 63, &nlen);
        } else {
            const char *s = names[op % (sizeof names / sizeof names[0])];
            nlen = strlen(s);
            memcpy(nbuf, s, nlen);
            name = nbuf;
        }
        if (op & 0x40) {
            value = fuzz_bytes(in, fuzz_u8(in), &vlen);
        } else {
            const char *s = values[fuzz_u8(in) % (sizeof values / sizeof values[0])];
            value = (const uint8_t *)s;
            vlen = strlen(s);
        }
        size += nlen + vlen + 32;
        bool more = bds__grpc_req_header(&rc, name, nlen, value, vlen);
        FUZZ_CHECK(more == (size <= (max ? max : BDS_GRPC_HEADER_BYTES_MAX_DEFAULT)), "header %d: more %d at %llu B",
                   n, more, (unsigned long long)size);
        if (!more) break;
        if (nlen == 7 && memcmp(name, ":method", 7) == 0) post = vlen == 4 && memcmp(value, "POST", 4) == 0;
        if (nlen == 2 && memcmp(name, "te", 2) == 0) te = vlen == 8 && memcmp(value, "trailers", 8) == 0;
        if (nlen == 12 && memcmp(name, "content-type", 12) == 0) ct = vlen >= 16;
        if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
            method = bds__grpc_methods_find(&methods, (const char *)value, vlen);
            path_known = method >= 0;
        }
    }
    bds__grpc_verdict v = bds__grpc_req_verdict(&rc);
    bool too_big = size > (max ? max : BDS_GRPC_HEADER_BYTES_MAX_DEFAULT);
    FUZZ_CHECK((v.http_status == 431) == too_big, "431 is %d, size %llu", v.http_status == 431,
               (unsigned long long)size);
    switch (v.http_status) {
    case 200: case 400: case 405: case 415: case 431: break;
    default: FUZZ_CHECK(false, "HTTP status %d", v.http_status);
    }
    FUZZ_CHECK((v.grpc_status == BDS_OK) == (v.message == NULL), "status %d with message %s", (int)v.grpc_status,
               v.message ? v.message : "(none)");
    FUZZ_CHECK(v.grpc_status == BDS_OK || (v.grpc_status >= 1 && v.grpc_status <= 16), "status %d",
               (int)v.grpc_status);
    if (v.grpc_status == BDS_OK) {
        /* Accepted: the last :method was POST, the last te trailers, a content-type
         * seen and the last :path known; the method index is that path's. */
        FUZZ_CHECK(v.http_status == 200 && post && te && ct && path_known, "accepted without the basics");
        FUZZ_CHECK(bds__grpc_req_method(&rc) == method, "method %d, path says %d", bds__grpc_req_method(&rc),
                   method);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    switch (fuzz_u8(&in) & 3) {
    case 0: timeout_parse(in.p, in.len); break;
    case 1: timeout_format(&in); break;
    case 2: percent(in.p, in.len); break;
    case 3: request(&in); break;
    }
    return 0;
}
