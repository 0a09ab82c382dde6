/* test_prom_text.c — the Prometheus text renderer (proto/prom_text.c): HELP
 * and TYPE lines, label escaping, histograms (cumulative buckets, +Inf equal
 * to the count, sum in the exported unit), bucket lookup at the bounds. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "prom_text.h"

static char *take(bds__prom *p) {
    size_t len;
    char *s = bds__prom_take(p, &len);
    cr_assert_not_null(s);
    cr_assert_eq(strlen(s), len);
    return s;
}

Test(prom_text, family_and_samples) {
    bds__prom p;
    bds__prom_init(&p);
    bds__prom_family(&p, "x_total", "counter", "Things done.");
    bds__prom_label l[] = {{"grpc_method", "a.B/C"}, {"kind", "k"}};
    bds__prom_u64(&p, "x_total", l, 2, 42);
    bds__prom_u64(&p, "x_total", NULL, 0, 18446744073709551615ull);
    bds__prom_f64(&p, "y", l, 1, 0.25);
    bds__prom_seconds(&p, "z", NULL, 0, 12000345678ull);
    char *s = take(&p);
    cr_assert_str_eq(s, "# HELP x_total Things done.\n"
                        "# TYPE x_total counter\n"
                        "x_total{grpc_method=\"a.B/C\",kind=\"k\"} 42\n"
                        "x_total 18446744073709551615\n"
                        "y{grpc_method=\"a.B/C\"} 0.25\n"
                        "z 12.000345678\n");
    free(s);
}

Test(prom_text, label_values_and_help_are_escaped) {
    bds__prom p;
    bds__prom_init(&p);
    bds__prom_family(&p, "m", "gauge", "back\\slash and\nnewline \"quoted\"");
    bds__prom_label l[] = {{"v", "a\\b\"c\nd"}};
    bds__prom_u64(&p, "m", l, 1, 1);
    char *s = take(&p);
    /* HELP escapes backslash and newline only; label values also the quote. */
    cr_assert_str_eq(s, "# HELP m back\\\\slash and\\nnewline \"quoted\"\n"
                        "# TYPE m gauge\n"
                        "m{v=\"a\\\\b\\\"c\\nd\"} 1\n");
    free(s);
}

Test(prom_text, histogram_buckets_are_cumulative) {
    static const uint64_t upper[] = {10, 100, 1000};
    static const char *const le[] = {"0.01", "0.1", "1"};
    const bds__prom_bounds b = {.n = 3, .upper = upper, .le = le, .scale = 1000};
    uint64_t counts[4] = {0};
    uint64_t sum = 0;
    const uint64_t obs[] = {0, 10, 11, 100, 500, 1000, 1001, 99999};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) {
        counts[bds__prom_bucket(&b, obs[i])]++;
        sum += obs[i];
    }
    cr_assert_eq(counts[0], 2, "v <= 10: 0 and 10 (le is inclusive)");
    cr_assert_eq(counts[1], 2);
    cr_assert_eq(counts[2], 2);
    cr_assert_eq(counts[3], 2, "above every bound");
    bds__prom p;
    bds__prom_init(&p);
    bds__prom_label l[] = {{"grpc_method", "s/M"}};
    bds__prom_histogram(&p, "h_seconds", l, 1, &b, counts, sum);
    char *s = take(&p);
    cr_assert_str_eq(s, "h_seconds_bucket{grpc_method=\"s/M\",le=\"0.01\"} 2\n"
                        "h_seconds_bucket{grpc_method=\"s/M\",le=\"0.1\"} 4\n"
                        "h_seconds_bucket{grpc_method=\"s/M\",le=\"1\"} 6\n"
                        "h_seconds_bucket{grpc_method=\"s/M\",le=\"+Inf\"} 8\n"
                        "h_seconds_sum{grpc_method=\"s/M\"} 102.621\n"
                        "h_seconds_count{grpc_method=\"s/M\"} 8\n");
    free(s);
}

Test(prom_text, histogram_without_labels_and_exact_seconds) {
    uint64_t counts[42] = {0};
    counts[bds__prom_bucket(&bds__prom_latency_bounds, 1500000)]++;    /* 1.5 ms */
    counts[bds__prom_bucket(&bds__prom_latency_bounds, 3000000000)]++; /* 3 s */
    bds__prom p;
    bds__prom_init(&p);
    bds__prom_histogram(&p, "d_seconds", NULL, 0, &bds__prom_latency_bounds, counts, 3001500000ull);
    char *s = take(&p);
    cr_assert(strstr(s, "d_seconds_bucket{le=\"0.001\"} 0\n"));
    cr_assert(strstr(s, "d_seconds_bucket{le=\"0.002\"} 1\n"));
    cr_assert(strstr(s, "d_seconds_bucket{le=\"2\"} 1\n"));
    cr_assert(strstr(s, "d_seconds_bucket{le=\"5\"} 2\n"));
    cr_assert(strstr(s, "d_seconds_bucket{le=\"100\"} 2\n"));
    cr_assert(strstr(s, "d_seconds_bucket{le=\"+Inf\"} 2\n"));
    cr_assert(strstr(s, "d_seconds_sum 3.001500000\n"), "ns sums print exactly as seconds: %s", s);
    cr_assert(strstr(s, "d_seconds_count 2\n"));
    free(s);
}

Test(prom_text, a66_bounds_are_increasing_and_lookup_is_inclusive) {
    const bds__prom_bounds *all[] = {&bds__prom_latency_bounds, &bds__prom_size_bounds};
    cr_assert_eq(bds__prom_latency_bounds.n, 41);
    cr_assert_eq(bds__prom_size_bounds.n, 14);
    for (size_t k = 0; k < 2; k++) {
        const bds__prom_bounds *b = all[k];
        for (uint32_t i = 0; i < b->n; i++) {
            if (i) cr_assert_lt(b->upper[i - 1], b->upper[i]);
            cr_assert_eq(bds__prom_bucket(b, b->upper[i]), i, "a value at a bound is in that bound's bucket");
            if (b->upper[i]) cr_assert_eq(bds__prom_bucket(b, b->upper[i] - 1), i);
            cr_assert_eq(bds__prom_bucket(b, b->upper[i] + 1), i + 1);
        }
        cr_assert_eq(bds__prom_bucket(b, UINT64_MAX), b->n);
    }
}

Test(prom_text, take_of_an_empty_page_is_an_empty_string_or_null) {
    bds__prom p;
    bds__prom_init(&p);
    size_t len = 7;
    char *s = bds__prom_take(&p, &len);
    cr_assert_eq(len, 0);
    free(s);
}
