/* palloc.c — the libc-backed bds__palloc. The pool-backed one lives in io/,
 * which owns the shard's memory; this one is the default and the tests'. */
#include "palloc.h"

#include <stdlib.h>

static void *palloc_malloc(size_t size, void *ctx) {
    (void)ctx;
    return malloc(size);
}

static void palloc_free(void *ptr, void *ctx) {
    (void)ctx;
    free(ptr);
}

static void *palloc_calloc(size_t nmemb, size_t size, void *ctx) {
    (void)ctx;
    return calloc(nmemb, size);
}

static void *palloc_realloc(void *ptr, size_t size, void *ctx) {
    (void)ctx;
    return realloc(ptr, size);
}

static const bds__palloc palloc_libc = {
    .malloc_fn = palloc_malloc,
    .free_fn = palloc_free,
    .calloc_fn = palloc_calloc,
    .realloc_fn = palloc_realloc,
    .ctx = NULL,
};

const bds__palloc *bds__palloc_libc(void) { return &palloc_libc; }
