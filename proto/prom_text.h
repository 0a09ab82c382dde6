/* prom_text.h — the Prometheus text exposition format (version 0.0.4), sans-I/O.
 *
 * A growing buffer and the few shapes the server's /metrics page is made of:
 * a family's "# HELP" and "# TYPE" lines, samples with labels, and
 * histograms (cumulative "_bucket{le=...}" lines, then "_sum" and "_count").
 * Label values and help texts are escaped as the format asks (label values:
 * backslash, double quote and newline; help: backslash and newline), so a
 * value can hold any bytes. Names (metric and label) are the caller's
 * constants and are not checked. The samples of one family must follow its
 * HELP/TYPE lines, without another family in between: the caller's order.
 *
 * Memory: the buffer comes from malloc and grows by doubling; an allocation
 * failure makes every later call a no-op and sets `failed` (the caller
 * answers 500 instead of a truncated page). Thread/Shard: caller-owned. */
#ifndef BDS_PROTO_PROM_TEXT_H
#define BDS_PROTO_PROM_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bds__prom {
    char *buf;
    size_t len, cap;
    bool failed;              /* out of memory: the page is incomplete */
} bds__prom;

typedef struct bds__prom_label {
    const char *name;         /* a label name: [a-zA-Z_][a-zA-Z0-9_]* */
    const char *value;        /* any bytes but NUL; escaped on output */
} bds__prom_label;

/* Bucket bounds of a histogram: n upper bounds in the unit the observations
 * are counted in (ns, bytes), increasing, each with its "le" text in the
 * exported unit ("0.001" for 1000000 ns as seconds); `scale` divides the
 * integer sum into the exported unit (1e9 for ns as seconds, 1 for bytes). */
typedef struct bds__prom_bounds {
    uint32_t n;
    const uint64_t *upper;
    const char *const *le;
    double scale;
} bds__prom_bounds;

/* The bucket of value v: the first i with v <= upper[i], or n (+Inf). */
uint32_t bds__prom_bucket(const bds__prom_bounds *b, uint64_t v);

/* The latency (ns, exported in seconds) and size (bytes) bounds of gRFC A66
 * (OpenTelemetry's gRPC metrics): 41 and 14 bounds. */
extern const bds__prom_bounds bds__prom_latency_bounds;
extern const bds__prom_bounds bds__prom_size_bounds;

void bds__prom_init(bds__prom *p);
/* Frees the buffer; p may be reused after bds__prom_init. */
void bds__prom_free(bds__prom *p);
/* Gives the buffer away (the caller frees it with free()): *len gets its
 * length. NULL when it failed (the buffer is freed then). p is empty after. */
char *bds__prom_take(bds__prom *p, size_t *len);

/* "# HELP name help" and "# TYPE name type" (type: counter, gauge,
 * histogram, untyped). */
void bds__prom_family(bds__prom *p, const char *name, const char *type, const char *help);
/* One sample line: name{labels} value. nl may be 0 (no braces). */
void bds__prom_u64(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, uint64_t v);
void bds__prom_f64(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, double v);
/* A time in ns as exact seconds ("12.000345678"). */
void bds__prom_seconds(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl, uint64_t ns);
/* A histogram's lines for one label set: counts[0..b->n] are the
 * observations per bucket (not cumulative; counts[b->n] is above every
 * bound), sum their total in the counted unit. Writes name_bucket{...,le}
 * cumulatively with le="+Inf" equal to the total, name_sum (sum / scale) and
 * name_count. name is the family name (without a suffix). */
void bds__prom_histogram(bds__prom *p, const char *name, const bds__prom_label *labels, size_t nl,
                         const bds__prom_bounds *b, const uint64_t *counts, uint64_t sum);

#endif
