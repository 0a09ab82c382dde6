/* palloc.h — the allocator proto/ takes from its caller.
 *
 * Every allocation proto/ makes (nghttp2's own, through nghttp2_mem; stream
 * records; send-queue nodes; deframer buffers) goes through one of these, so
 * the io layer can back a connection with a per-shard pool and the
 * tests can count or fail allocations. The shape mirrors nghttp2_mem, with the
 * context last. Not installed; no nghttp2 type appears here. */
#ifndef BDS_PROTO_PALLOC_H
#define BDS_PROTO_PALLOC_H

#include <stddef.h>

typedef struct bds__palloc {
    void *(*malloc_fn)(size_t size, void *ctx);
    void (*free_fn)(void *ptr, void *ctx);                 /* NULL ptr is a no-op */
    void *(*calloc_fn)(size_t nmemb, size_t size, void *ctx);
    void *(*realloc_fn)(void *ptr, size_t size, void *ctx);
    void *ctx;
} bds__palloc;

/* The libc-backed allocator (malloc/free/calloc/realloc). Never NULL; static storage. */
const bds__palloc *bds__palloc_libc(void);

#endif
