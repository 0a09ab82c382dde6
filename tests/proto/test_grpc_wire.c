/* test_grpc_wire.c — grpc-timeout, grpc-message percent-encoding and request
 * header validation (proto/grpc_wire.c), with the PROTOCOL-HTTP2 examples and
 * malformed inputs. */
#include <criterion/criterion.h>
#include <string.h>

#include "grpc_compress.h"
#include "grpc_wire.h"

static bool parse(const char *s, uint64_t *ns) { return bds__grpc_timeout_parse(s, strlen(s), ns); }

/* ---- grpc-timeout ------------------------------------------------------------------ */

Test(grpc_wire, timeout_each_unit_converts_to_ns) {
    uint64_t ns;
    cr_assert(parse("1H", &ns));
    cr_assert_eq(ns, 3600ull * 1000000000ull);
    cr_assert(parse("2M", &ns));
    cr_assert_eq(ns, 120ull * 1000000000ull);
    cr_assert(parse("3S", &ns));
    cr_assert_eq(ns, 3000000000ull);
    cr_assert(parse("250m", &ns));
    cr_assert_eq(ns, 250000000ull);
    cr_assert(parse("7u", &ns));
    cr_assert_eq(ns, 7000ull);
    cr_assert(parse("99999999n", &ns));
    cr_assert_eq(ns, 99999999ull);
    cr_assert(parse("0n", &ns));
    cr_assert_eq(ns, 0);
    cr_assert(parse("00000001S", &ns), "leading zeros count toward the 8 digits");
    cr_assert_eq(ns, 1000000000ull);
}

Test(grpc_wire, timeout_huge_value_saturates) {
    uint64_t ns = 0;
    cr_assert(parse("99999999H", &ns));
    cr_assert_eq(ns, UINT64_MAX);
}

Test(grpc_wire, timeout_malformed_values_are_rejected) {
    static const char *bad[] = {
        "", "S", "1", "123456789S", "1s", "1h", "1x", "-1S", "+1S", " 1S", "1S ", "1.5S",
        "1SS", "1 S", "0x10n", "S1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ns = 42;
        cr_assert_not(parse(bad[i], &ns), "'%s' must be malformed", bad[i]);
        cr_assert_eq(ns, 42, "out untouched on failure");
    }
    uint64_t ns;
    cr_assert_not(bds__grpc_timeout_parse("1\0S", 3, &ns), "embedded NUL");
}

Test(grpc_wire, timeout_format_roundtrips_and_never_shortens) {
    const uint64_t cases[] = {0, 1, 999, 99999999ull, 100000000ull, 1234567891ull,
                              3600ull * 1000000000ull, UINT64_MAX};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[10];
        size_t n = bds__grpc_timeout_format(cases[i], buf);
        cr_assert_eq(n, strlen(buf));
        cr_assert_leq(n, 9);
        uint64_t back;
        cr_assert(bds__grpc_timeout_parse(buf, n, &back), "'%s'", buf);
        cr_assert_geq(back, cases[i] == UINT64_MAX ? back : cases[i], "'%s' shorter", buf);
    }
    char buf[10];
    bds__grpc_timeout_format(1500, buf);
    cr_assert_str_eq(buf, "1500n");
    bds__grpc_timeout_format(100000001ull, buf);
    cr_assert_str_eq(buf, "100001u", "rounded up, never down");
}

/* ---- percent-encoding -------------------------------------------------------------- */

Test(grpc_wire, percent_encode_escapes_controls_nonascii_and_percent) {
    const uint8_t in[] = "a b%\n\x7f\xc3\xa9~";
    char out[64];
    size_t n = bds__grpc_percent_encode(in, sizeof in - 1, out, sizeof out);
    cr_assert_eq(n, strlen("a b%25%0A%7F%C3%A9~"));
    cr_assert(memcmp(out, "a b%25%0A%7F%C3%A9~", n) == 0);
}

Test(grpc_wire, percent_encode_small_buffer_reports_needed_length) {
    const uint8_t in[] = "%%%";
    char out[4] = "zzz";
    cr_assert_eq(bds__grpc_percent_encode(in, 3, out, sizeof out), 9);
    cr_assert_str_eq(out, "zzz", "nothing written when it does not fit");
    cr_assert_eq(bds__grpc_percent_encode(in, 3, NULL, 0), 9);
}

Test(grpc_wire, percent_roundtrip_every_byte) {
    uint8_t in[256];
    for (int i = 0; i < 256; i++) in[i] = (uint8_t)i;
    char enc[768];
    size_t n = bds__grpc_percent_encode(in, 256, enc, sizeof enc);
    cr_assert_leq(n, sizeof enc);
    for (size_t i = 0; i < n; i++) cr_assert(enc[i] >= 0x20 && enc[i] <= 0x7e);
    uint8_t dec[768];
    cr_assert_eq(bds__grpc_percent_decode(enc, n, dec), 256);
    cr_assert_arr_eq(dec, in, 256);
}

Test(grpc_wire, percent_decode_invalid_escapes_are_kept_literally) {
    const char *in = "50%% done %G1 %4";
    uint8_t out[32];
    size_t n = bds__grpc_percent_decode(in, strlen(in), out);
    cr_assert_eq(n, strlen(in));
    cr_assert(memcmp(out, in, n) == 0);
    const char *lower = "%c3%A9";
    n = bds__grpc_percent_decode(lower, strlen(lower), out);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0], 0xc3);
    cr_assert_eq(out[1], 0xa9);
}

Test(grpc_wire, percent_decode_in_place) {
    char buf[] = "a%20b";
    size_t n = bds__grpc_percent_decode(buf, strlen(buf), (uint8_t *)buf);
    cr_assert_eq(n, 3);
    cr_assert(memcmp(buf, "a b", 3) == 0);
}

/* ---- request validation ----------------------------------------------------------- */

static const char *const paths[] = {"/bidistream.v1.Pipeline/Process", "/grpc.health.v1.Health/Check"};
static const bds__grpc_methods methods = {paths, 2};

static void hdr(bds__grpc_req_check *rc, const char *n, const char *v) {
    bds__grpc_req_header(rc, (const uint8_t *)n, strlen(n), (const uint8_t *)v, strlen(v));
}

/* A valid request, with one header replaced (or dropped when value is NULL). */
static bds__grpc_verdict check_with(const char *name, const char *value) {
    static const char *const good[][2] = {
        {":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"},
        {":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"},
        {"grpc-timeout", "1S"},
    };
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 0);
    bool replaced = false;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (name != NULL && strcmp(good[i][0], name) == 0) {
            replaced = true;
            if (value != NULL) hdr(&rc, name, value);
        } else {
            hdr(&rc, good[i][0], good[i][1]);
        }
    }
    if (name != NULL && !replaced && value != NULL) hdr(&rc, name, value);
    return bds__grpc_req_verdict(&rc);
}

Test(grpc_wire, req_valid_request_is_ok_with_method_and_timeout) {
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 0);
    hdr(&rc, ":method", "POST");
    hdr(&rc, ":path", "/grpc.health.v1.Health/Check");
    hdr(&rc, "content-type", "application/grpc+proto");
    hdr(&rc, "te", "trailers");
    hdr(&rc, "grpc-timeout", "20m");
    hdr(&rc, "grpc-encoding", "identity");
    hdr(&rc, "x-custom-bin", "AAEC");
    bds__grpc_verdict v = bds__grpc_req_verdict(&rc);
    cr_assert_eq(v.http_status, 200);
    cr_assert_eq(v.grpc_status, BDS_OK);
    cr_assert_null(v.message);
    cr_assert_eq(bds__grpc_req_method(&rc), 1);
    cr_assert_eq(bds__grpc_req_timeout_ns(&rc), 20000000ull);
}

Test(grpc_wire, req_method_not_post_returns_405) {
    bds__grpc_verdict v = check_with(":method", "GET");
    cr_assert_eq(v.http_status, 405);
    cr_assert_eq(v.grpc_status, BDS_INTERNAL);
    cr_assert_not_null(v.message);
}

Test(grpc_wire, req_bad_or_missing_content_type_returns_415) {
    const char *bad[] = {"text/plain", "application/grpcx", "application/json", "application/grp", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(check_with("content-type", bad[i]).http_status, 415, "'%s'", bad[i]);
    cr_assert_eq(check_with("content-type", NULL).http_status, 415);
    cr_assert_eq(check_with("content-type", "application/grpc+json").http_status, 200);
    cr_assert_eq(check_with("content-type", "application/grpc;charset=utf-8").http_status, 200);
    cr_assert_eq(check_with("content-type", "Application/GRPC").http_status, 200);
}

Test(grpc_wire, req_missing_te_returns_400) {
    bds__grpc_verdict v = check_with("te", NULL);
    cr_assert_eq(v.http_status, 400);
    cr_assert_eq(v.grpc_status, BDS_INTERNAL);
}

Test(grpc_wire, req_bad_timeout_returns_internal_trailers_only) {
    bds__grpc_verdict v = check_with("grpc-timeout", "1000000000S");
    cr_assert_eq(v.http_status, 200);
    cr_assert_eq(v.grpc_status, BDS_INTERNAL);
    cr_assert_eq(check_with("grpc-timeout", "soon").grpc_status, BDS_INTERNAL);
}

Test(grpc_wire, req_unknown_path_returns_unimplemented) {
    bds__grpc_verdict v = check_with(":path", "/no.Such/Method");
    cr_assert_eq(v.http_status, 200);
    cr_assert_eq(v.grpc_status, BDS_UNIMPLEMENTED);
    cr_assert_eq(check_with(":path", "/grpc.health.v1.Health/Check2").grpc_status,
                 BDS_UNIMPLEMENTED, "no prefix match");
    cr_assert_eq(check_with(":path", "/grpc.health.v1.Health/Chec").grpc_status,
                 BDS_UNIMPLEMENTED);
}

Test(grpc_wire, req_unknown_encoding_returns_unimplemented_naming_what_we_take) {
    static const char *const bad[] = {"snappy", "GZIP", "gzip ", "x-custom", "", "identity,gzip"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bds__grpc_verdict v = check_with("grpc-encoding", bad[i]);
        cr_assert_eq(v.http_status, 200, "'%s'", bad[i]);
        cr_assert_eq(v.grpc_status, BDS_UNIMPLEMENTED, "'%s'", bad[i]);
        cr_assert_not_null(strstr(v.message, "identity,deflate,gzip"), "%s", v.message);
    }
    static const char *const good[] = {"identity", "deflate", "gzip"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_assert_eq(check_with("grpc-encoding", good[i]).grpc_status, BDS_OK, "'%s'", good[i]);
}

/* The request's encoding, and what the client takes in replies: what its
 * grpc-accept-encoding lists that we know, identity, and its own encoding. */
Test(grpc_wire, req_encoding_and_accept_encoding_are_recorded) {
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 0);
    cr_assert_eq(bds__grpc_req_encoding(&rc), BDS__GRPC_ENC_IDENTITY);
    cr_assert_eq(bds__grpc_req_accept(&rc), BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_IDENTITY), "none listed: identity only");
    hdr(&rc, "grpc-accept-encoding", " snappy , deflate,zstd");
    cr_assert_eq(bds__grpc_req_accept(&rc),
                 BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_IDENTITY) | BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_DEFLATE));
    hdr(&rc, "grpc-encoding", "gzip");
    cr_assert_eq(bds__grpc_req_encoding(&rc), BDS__GRPC_ENC_GZIP);
    cr_assert_eq(bds__grpc_req_accept(&rc), 7u, "a client compressing with gzip takes gzip");
    cr_assert_eq(bds__grpc_accept_parse((const uint8_t *)"gzip,\tidentity ,,", 18),
                 BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_IDENTITY) | BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_GZIP));
    cr_assert_eq(bds__grpc_accept_parse((const uint8_t *)"gzipx,xgzip,Gzip", 16), 1u, "names match exactly");
    cr_assert_eq(bds__grpc_accept_parse(NULL, 0), 1u);
}

Test(grpc_wire, req_header_list_over_bound_returns_431) {
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 1024);
    hdr(&rc, ":method", "POST");
    static char big[600];
    memset(big, 'a', sizeof big - 1);
    cr_assert(bds__grpc_req_header(&rc, (const uint8_t *)"x-a", 3, (const uint8_t *)big, 599));
    cr_assert_not(bds__grpc_req_header(&rc, (const uint8_t *)"x-b", 3, (const uint8_t *)big, 599));
    cr_assert_not(bds__grpc_req_header(&rc, (const uint8_t *)"te", 2, (const uint8_t *)"x", 1),
                  "stays over the bound");
    bds__grpc_verdict v = bds__grpc_req_verdict(&rc);
    cr_assert_eq(v.http_status, 431);
    cr_assert_eq(v.grpc_status, BDS_RESOURCE_EXHAUSTED);
}

Test(grpc_wire, req_many_small_headers_count_overhead) {
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 0); /* 16 KiB */
    int accepted = 0;
    for (int i = 0; i < 1000; i++)
        if (bds__grpc_req_header(&rc, (const uint8_t *)"a", 1, (const uint8_t *)"", 0)) accepted++;
    /* 33 bytes each (RFC 7541 §4.1): 16384 / 33 = 496 fit. */
    cr_assert_eq(accepted, 496);
}

Test(grpc_wire, req_precedence_is_fixed) {
    bds__grpc_req_check rc;
    bds__grpc_req_init(&rc, &methods, 0);
    hdr(&rc, ":method", "PUT");
    hdr(&rc, "content-type", "text/html");
    hdr(&rc, ":path", "/nope");
    cr_assert_eq(bds__grpc_req_verdict(&rc).http_status, 405);
}

Test(grpc_wire, methods_find_without_table_returns_minus_one) {
    cr_assert_eq(bds__grpc_methods_find(NULL, "/a", 2), -1);
    cr_assert_eq(bds__grpc_methods_find(&methods, "/bidistream.v1.Pipeline/Process", 31), 0);
}
