/* prom_text.c — the Prometheus text exposition format (prom_text.h). */
#include "prom_text.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* gRFC A66's latency buckets, in ns. */
static const uint64_t latency_upper[] = {
    0,          10000,      50000,      100000,     300000,      600000,      800000,      1000000,
    2000000,    3000000,    4000000,    5000000,    6000000,     8000000,     10000000,    13000000,
    16000000,   20000000,   25000000,   30000000,   40000000,    50000000,    65000000,    80000000,
    100000000,  130000000,  160000000,  200000000,  250000000,   300000000,   400000000,   500000000,
    650000000,  800000000,  1000000000, 2000000000, 5000000000,  10000000000, 20000000000, 50000000000,
    100000000000,
};
static const char *const latency_le[] = {
    "0",     "1e-05", "5e-05", "0.0001", "0.0003", "0.0006", "0.0008", "0.001", "0.002", "0.003", "0.004",
    "0.005", "0.006", "0.008", "0.01",   "0.013",  "0.016",  "0.02",   "0.025", "0.03",  "0.04",  "0.05",
    "0.065", "0.08",  "0.1",   "0.13",   "0.16",   "0.2",    "0.25",   "0.3",   "0.4",   "0.5",   "0.65",
    "0.8",   "1",     "2",     "5",      "10",     "20",     "50",     "100",
};
_Static_assert(sizeof latency_upper / sizeof latency_upper[0] == sizeof latency_le / sizeof latency_le[0],
               "one le text per latency bound");
const bds__prom_bounds bds__prom_latency_bounds = {
    .n = sizeof latency_upper / sizeof latency_upper[0], .upper = latency_upper, .le = latency_le, .scale = 1e9,
};

/* gRFC A66's size buckets, in bytes. */
static const uint64_t size_upper[] = {
    0, 1024, 2048, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864, 268435456, 1073741824,
    4294967296,
};
static const char *const size_le[] = {
    "0",        "1024",     "2048",      "4096",      "16384",      "65536",      "262144",
    "1048576",  "4194304",  "16777216",  "67108864",  "268435456",  "1073741824", "4294967296",
};
_Static_assert(sizeof size_upper / sizeof size_upper[0] == sizeof size_le / sizeof size_le[0],
               "one le text per size bound");
const bds__prom_bounds bds__prom_size_bounds = {
    .n = sizeof size_upper / sizeof size_upper[0], .upper = size_upper, .le = size_le, .scale = 1,
};

uint32_t bds__prom_bucket(const bds__prom_bounds *b, uint64_t v) {
    uint32_t lo = 0, hi = b->n; /* the answer is in [lo, hi] */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v <= b->upper[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

void bds__prom_init(bds__prom *p) { memset(p, 0, sizeof *p); }

void bds__prom_free(bds__prom *p) {
    free(p->buf);
    memset(p, 0, sizeof *p);
}

char *bds__prom_take(bds__prom *p, size_t *len) {
    char *b = p->failed ? NULL : p->buf;
    *len = b ? p->len : 0;
    if (!b) free(p->buf);
    memset(p, 0, sizeof *p);
    return b;
}

/* Room for n more bytes (and a NUL); false once the buffer failed. */
static bool room(bds__prom *p, size_t n) {
    if (p->failed) return false;
    if (p->len + n + 1 <= p->cap) return true;
    size_t cap = p->cap ? p->cap : 4096;
    while (cap < p->len + n + 1) {
        if (cap > SIZE_MAX / 2) {
            p->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *nb = realloc(p->buf, cap);
    if (!nb) {
        p->failed = true;
        return false;
    }
    p->buf = nb;
    p->cap = cap;
    return true;
}

static void put(bds__prom *p, const char *s, size_t n) {
    if (!room(p, n)) return;
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    p->buf[p->len] = 0;
}

static void puts_(bds__prom *p, const char *s) { put(p, s, strlen(s)); }

static void putf(bds__prom *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(bds__prom *p, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) { /* only our numbers come here: they fit */
        p->failed = true;
        return;
    }
    put(p, tmp, (size_t)n);
}

/* Escapes s: backslash and newline always, the double quote in label values. */
static void put_escaped(bds__prom *p, const char *s, bool quote) {
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : quote && *s == '"' ? "\\\"" : NULL;
        if (!esc) continue;
        put(p, run, (size_t)(s - run));
        puts_(p, esc);
        run = s + 1;
    }
    put(p, run, (size_t)(s - run));
}

void bds__prom_family(bds__prom *p, const char *name, const char *type, const char *help) {
    puts_(p, "# HELP ");
    puts_(p, name);
    puts_(p, " ");
    put_escaped(p, help, false);
    puts_(p, "\n# TYPE ");
    puts_(p, name);
    puts_(p, " ");
    puts_(p, type);
    puts_(p, "\n");
}

/* name{a="x",b="y"[,le="..."]} with the trailing space. */
static void put_series(bds__prom *p, const char *name, const char *suffix, const bds__prom_label *labels, size_t nl,
                       const char *le) {
    puts_(p, name);
    if (suffix) puts_(p, suffix);
    if (nl || le) {
        puts_(p, "{");
        for (size_t i = 0; i < nl; i++) {
            if (i) puts_(p, ",");
            puts_(p, labels[i].name);
            puts_(p, "=\"");
            put_escaped(p, labels[i].value, true);
            puts_(p, "\"");
        }
        if (le) {
            if (nl) puts_(p, ",");
            puts_(p, "le=\"");
            puts_(p, le);
            puts_(p, "\"");
        }
        puts_(p, "}");
    }
    puts_(p, " ");
}

void bds__prom_u64(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, uint64_t v) {
    put_series(p, name, NULL, labels, nl, NULL);
    putf(p, "%llu\n", (unsigned long long)v);
}

static void put_f64(bds__prom *p, double v) {
    if (isnan(v)) puts_(p, "NaN");
    else if (isinf(v)) puts_(p, v > 0 ? "+Inf" : "-Inf");
    else putf(p, "%.17g", v);
}

void bds__prom_f64(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, double v) {
    put_series(p, name, NULL, labels, nl, NULL);
    put_f64(p, v);
    puts_(p, "\n");
}

void bds__prom_seconds(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, uint64_t ns) {
    put_series(p, name, NULL, labels, nl, NULL);
    putf(p, "%llu.%09llu\n", (unsigned long long)(ns / 1000000000u), (unsigned long long)(ns % 1000000000u));
}

void bds__prom_histogram(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl,
                         const bds__prom_bounds *b, const uint64_t *counts, uint64_t sum) {
    uint64_t cum = 0;
    for (uint32_t i = 0; i <= b->n; i++) {
        cum += counts[i];
        put_series(p, name, "_bucket", labels, nl, i < b->n ? b->le[i] : "+Inf");
        putf(p, "%llu\n", (unsigned long long)cum);
    }
    put_series(p, name, "_sum", labels, nl, NULL);
    if (b->scale == 1e9) /* ns as seconds: exact, without a double's rounding */
        putf(p, "%llu.%09llu\n", (unsigned long long)(sum / 1000000000u), (unsigned long long)(sum % 1000000000u));
    else if (b->scale == 1)
        putf(p, "%llu\n", (unsigned long long)sum);
    else {
        put_f64(p, (double)sum / b->scale);
        puts_(p, "\n");
    }
    put_series(p, name, "_count", labels, nl, NULL);
    putf(p, "%llu\n", (unsigned long long)cum);
}
