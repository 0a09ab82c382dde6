/* mem.c — counted allocation, pools and the keyed map (see mem.h). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "mem.h"

static _Atomic uint64_t alloc_calls;

void *bds__alloc_aligned(size_t size, size_t align) {
    /* relaxed: a statistic; tests read it from the allocating thread */
    atomic_fetch_add_explicit(&alloc_calls, 1, memory_order_relaxed);
    size_t rounded = (size + align - 1) / align * align;
    void *p = aligned_alloc(align, rounded);
    if (p) memset(p, 0, rounded);
    return p;
}

void bds__free(void *p) { free(p); }

uint64_t bds__alloc_count(void) { return atomic_load_explicit(&alloc_calls, memory_order_relaxed); }

/* ---- pool ------------------------------------------------------------------ */

#define POOL_CHUNK_OBJS 64

struct pool_chunk {
    struct pool_chunk *next;
};

void bds__pool_init(bds__pool *pool, size_t obj_size) {
    BDS_ASSERT(obj_size >= sizeof(void *));
    pool->_free = NULL;
    pool->_chunks = NULL;
    pool->_obj_size = (obj_size + BDS_CACHELINE - 1) / BDS_CACHELINE * BDS_CACHELINE;
    pool->_free_max = 0;
    pool->free_n = 0;
    pool->live = 0;
}

void bds__pool_init_trimmed(bds__pool *pool, size_t obj_size, uint32_t free_max) {
    BDS_ASSERT(free_max > 0);
    bds__pool_init(pool, obj_size);
    pool->_free_max = free_max;
}

void bds__pool_deinit(bds__pool *pool) {
    BDS_ASSERT(pool->live == 0);
    struct pool_chunk *c = pool->_chunks;
    while (c) {
        struct pool_chunk *next = c->next;
        bds__free(c);
        c = next;
    }
    if (pool->_free_max) { /* objects of their own */
        for (void *o = pool->_free, *next; o; o = next) {
            next = *(void **)o;
            bds__free(o);
        }
    }
    pool->_chunks = NULL;
    pool->_free = NULL;
    pool->free_n = 0;
}

static bool pool_grow(bds__pool *pool) {
    if (pool->_free_max) { /* one object, freed again past free_max */
        void **obj = bds__alloc_aligned(pool->_obj_size, BDS_CACHELINE);
        if (!obj) return false;
        *obj = NULL;
        pool->_free = obj;
        pool->free_n = 1;
        return true;
    }
    /* The chunk header takes one cache line so objects stay 64-byte aligned. */
    char *mem = bds__alloc_aligned(BDS_CACHELINE + pool->_obj_size * POOL_CHUNK_OBJS, BDS_CACHELINE);
    if (!mem) return false;
    struct pool_chunk *chunk = (struct pool_chunk *)(void *)mem;
    chunk->next = pool->_chunks;
    pool->_chunks = chunk;
    for (size_t i = POOL_CHUNK_OBJS; i-- > 0;) {
        void **obj = (void **)(void *)(mem + BDS_CACHELINE + i * pool->_obj_size);
        *obj = pool->_free;
        pool->_free = obj;
    }
    pool->free_n += POOL_CHUNK_OBJS;
    return true;
}

void *bds__pool_get_head(bds__pool *pool, size_t zero_bytes) {
    BDS_ASSERT(zero_bytes <= pool->_obj_size);
    if (!pool->_free && !pool_grow(pool)) return NULL;
    void **obj = pool->_free;
    pool->_free = *obj;
    pool->free_n--;
    memset(obj, 0, zero_bytes);
    pool->live++;
    return obj;
}

void *bds__pool_get(bds__pool *pool) { return bds__pool_get_head(pool, pool->_obj_size); }

void bds__pool_put(bds__pool *pool, void *obj) {
    BDS_ASSERT(obj && pool->live > 0);
    pool->live--;
    if (pool->_free_max && pool->free_n >= pool->_free_max) {
        bds__free(obj);
        return;
    }
    *(void **)obj = pool->_free;
    pool->_free = obj;
    pool->free_n++;
}

/* ---- kmap ------------------------------------------------------------------ */

int bds__kmap_init(bds__kmap *map, uint32_t buckets_pow2) {
    BDS_ASSERT(buckets_pow2 && (buckets_pow2 & (buckets_pow2 - 1)) == 0);
    map->_buckets = bds__alloc_aligned(sizeof(*map->_buckets) * buckets_pow2, BDS_CACHELINE);
    map->_mask = buckets_pow2 - 1;
    map->n = 0;
    return map->_buckets ? 0 : -1;
}

void bds__kmap_deinit(bds__kmap *map) {
    BDS_ASSERT(map->n == 0);
    bds__free(map->_buckets);
    map->_buckets = NULL;
}

uint64_t bds__kmap_hash(uint64_t key_hash, const void *session) {
    uint64_t x = key_hash ^ ((uint64_t)(uintptr_t)session * 0x9e3779b97f4a7c15ULL);
    x ^= x >> 31;
    return x * 0xbf58476d1ce4e5b9ULL;
}

bds__kmap_node *bds__kmap_find(const bds__kmap *map, uint64_t hash, const void *session,
                               const void *key, uint32_t key_len) {
    for (bds__kmap_node *n = map->_buckets[hash & map->_mask]; n; n = n->next) {
        if (n->hash == hash && n->session == session && n->key_len == key_len &&
            (key_len == 0 || memcmp(n->key, key, key_len) == 0)) {
            return n;
        }
    }
    return NULL;
}

static int kmap_grow(bds__kmap *map) {
    uint32_t buckets = (map->_mask + 1) * 2;
    bds__kmap_node **nb = bds__alloc_aligned(sizeof(*nb) * buckets, BDS_CACHELINE);
    if (!nb) return -1;
    for (uint32_t i = 0; i <= map->_mask; i++) {
        bds__kmap_node *n = map->_buckets[i];
        while (n) {
            bds__kmap_node *next = n->next;
            n->next = nb[n->hash & (buckets - 1)];
            nb[n->hash & (buckets - 1)] = n;
            n = next;
        }
    }
    bds__free(map->_buckets);
    map->_buckets = nb;
    map->_mask = buckets - 1;
    return 0;
}

int bds__kmap_insert(bds__kmap *map, bds__kmap_node *node) {
    int rc = 0;
    if (map->n + 1 > map->_mask + 1) rc = kmap_grow(map);
    bds__kmap_node **b = &map->_buckets[node->hash & map->_mask];
    node->next = *b;
    *b = node;
    map->n++;
    return rc;
}

void bds__kmap_remove(bds__kmap *map, bds__kmap_node *node) {
    bds__kmap_node **p = &map->_buckets[node->hash & map->_mask];
    while (*p != node) {
        BDS_ASSERT(*p != NULL);
        p = &(*p)->next;
    }
    *p = node->next;
    node->next = NULL;
    map->n--;
}
