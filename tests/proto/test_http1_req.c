/* test_http1_req.c — the HTTP/1.x request-head judge (proto/http1_req.c):
 * valid heads whole and byte by byte, early verdicts on what cannot become a
 * request line, and every malformed shape the endpoint answers 400. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "http1_req.h"

static bds__http1_verdict judge(const char *s, size_t max, bds__http1_req *r) {
    bds__http1_init(r);
    return bds__http1_parse(r, (const uint8_t *)s, strlen(s), max);
}

/* The same bytes fed one more at a time: the verdict of each prefix. */
static bds__http1_verdict judge_bytewise(const char *s, size_t max, bds__http1_req *r, size_t *at) {
    bds__http1_init(r);
    size_t n = strlen(s);
    for (size_t i = 1; i <= n; i++) {
        bds__http1_verdict v = bds__http1_parse(r, (const uint8_t *)s, i, max);
        if (v != BDS_HTTP1_MORE) {
            *at = i;
            return v;
        }
    }
    *at = n;
    return BDS_HTTP1_MORE;
}

Test(http1_req, a_prometheus_scrape) {
    const char *s = "GET /metrics HTTP/1.1\r\n"
                    "Host: 127.0.0.1:9090\r\n"
                    "User-Agent: Prometheus/2.42.0\r\n"
                    "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
                    "Accept-Encoding: gzip\r\n"
                    "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
                    "\r\n";
    bds__http1_req r;
    cr_assert_eq(judge(s, 8192, &r), BDS_HTTP1_DONE);
    cr_assert_str_eq(r.method, "GET");
    cr_assert_eq(r.path_len, 8);
    cr_assert(memcmp(s + r.path_off, "/metrics", 8) == 0);
    cr_assert_eq(r.minor, 1);
    cr_assert_eq(r.head_len, strlen(s));
    size_t at;
    cr_assert_eq(judge_bytewise(s, 8192, &r, &at), BDS_HTTP1_DONE);
    cr_assert_eq(at, strlen(s), "done only at the last byte");
}

Test(http1_req, query_is_cut_and_http10_needs_no_host) {
    bds__http1_req r;
    cr_assert_eq(judge("HEAD /metrics?x=1&y HTTP/1.0\r\n\r\n", 8192, &r), BDS_HTTP1_DONE);
    cr_assert_str_eq(r.method, "HEAD");
    cr_assert_eq(r.path_len, 8);
    cr_assert_eq(r.minor, 0);
    cr_assert_eq(judge("GET / HTTP/1.1\r\nhOsT: x\r\nX-Empty:\r\nX-Tab:\ta\tb \r\n\r\n", 8192, &r), BDS_HTTP1_DONE);
    cr_assert_eq(r.path_len, 1);
}

Test(http1_req, incomplete_heads_want_more) {
    bds__http1_req r;
    const char *parts[] = {"", "G", "GET", "GET ", "GET /met", "GET /metrics HTTP/1", "GET /metrics HTTP/1.1\r",
                           "GET /metrics HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        cr_assert_eq(judge(parts[i], 8192, &r), BDS_HTTP1_MORE, "'%s'", parts[i]);
}

Test(http1_req, malformed_heads_are_bad) {
    static const char *bad[] = {
        "GET /metrics HTTP/1.1\r\n\r\n",                  /* 1.1 without Host */
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",    /* two Hosts */
        "GET /metrics HTTP/1.1\nHost: a\n\n",             /* bare LF */
        "GET /metrics HTTP/1.1\r\nHost: a\r\n\n",          /* bare LF at the end */
        "GET /me\rtrics HTTP/1.1\r\nHost: a\r\n\r\n",      /* bare CR */
        "GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n",       /* two spaces */
        "GET /metrics  HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /metrics HTTP/1.1 \r\nHost: a\r\n\r\n",       /* trailing space */
        "GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET /metrics HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET /metrics http/1.1\r\nHost: a\r\n\r\n",
        "GET metrics HTTP/1.1\r\nHost: a\r\n\r\n",         /* not origin-form */
        "GET http://a/metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                /* the HTTP/2 preface */
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",               /* not a token */
        " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",           /* a leading empty line */
        "ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\nHost: a\r\n\r\n", /* a 17-byte method */
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",              /* space before the colon */
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",     /* obs-fold */
        "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",           /* a control byte */
        "GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
        "GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",           /* non-ASCII in the target */
    };
    bds__http1_req r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(judge(bad[i], 8192, &r), BDS_HTTP1_BAD, "bad[%zu] '%s'", i, bad[i]);
        size_t at;
        cr_assert_eq(judge_bytewise(bad[i], 8192, &r, &at), BDS_HTTP1_BAD, "bad[%zu] byte by byte", i);
    }
    /* A NUL in a field value. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    bds__http1_init(&r);
    cr_assert_eq(bds__http1_parse(&r, (const uint8_t *)nul, sizeof nul - 1, 8192), BDS_HTTP1_BAD);
}

Test(http1_req, non_http_clients_are_bad_before_a_line_ends) {
    bds__http1_req r;
    size_t at;
    /* A TLS ClientHello starts with 0x16 0x03. */
    static const char tls[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    cr_assert_eq(judge_bytewise(tls, 8192, &r, &at), BDS_HTTP1_BAD);
    cr_assert_eq(at, 1, "judged at its first byte");
    cr_assert_eq(judge_bytewise("PRI * HTTP/2.0\r\n", 8192, &r, &at), BDS_HTTP1_BAD);
    cr_assert_eq(at, 5, "the '*' target is refused as it arrives");
    cr_assert_eq(judge_bytewise("GET /metrics HTTP/2", 8192, &r, &at), BDS_HTTP1_BAD);
    cr_assert_eq(at, 19);
}

Test(http1_req, a_head_past_the_bound_is_too_large) {
    char big[4096];
    int n = snprintf(big, sizeof big, "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: ");
    memset(big + n, 'a', sizeof big - (size_t)n - 1);
    big[sizeof big - 1] = 0;
    bds__http1_req r;
    cr_assert_eq(judge(big, 1024, &r), BDS_HTTP1_TOO_LARGE);
    cr_assert_eq(judge(big, 8192, &r), BDS_HTTP1_MORE, "within the bound it may still end");
    /* A head that ends exactly at the bound is fine; one byte more is not. */
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    cr_assert_eq(judge(s, strlen(s), &r), BDS_HTTP1_DONE);
    cr_assert_eq(judge(s, strlen(s) - 1, &r), BDS_HTTP1_TOO_LARGE);
    /* A request line longer than the bound, byte by byte. */
    char line[300];
    memset(line, 0, sizeof line);
    memcpy(line, "GET /", 5);
    memset(line + 5, 'x', sizeof line - 6);
    size_t at;
    cr_assert_eq(judge_bytewise(line, 256, &r, &at), BDS_HTTP1_TOO_LARGE);
    cr_assert_eq(at, 256);
}
