/* mem.h — core's allocation points, fixed-size pools and the (session, key)
 * hash map (internal).
 *
 * Every allocation the core makes goes through bds__alloc_aligned()/bds__free()
 * so a test can count them: after warm-up the message path must allocate
 * nothing (pools recycle calls, keys and sessions; maps and queues only grow
 * when a new high-water mark is reached). */
#ifndef BDS_MEM_H
#define BDS_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void *bds__alloc_aligned(size_t size, size_t align); /* zeroed; NULL on failure */
void bds__free(void *p);
/* Allocations made by the core so far, process-wide (relaxed counter). */
uint64_t bds__alloc_count(void);

/* A free list of equal-size objects, grown 64 at a time and never shrunk
 * before deinit; or, made with bds__pool_init_trimmed, one object at a time
 * with at most free_max kept free: past that a put gives the object back to
 * the allocator, so a burst does not keep its memory for good. Shard: owner only. */
typedef struct bds__pool {
    void *_free;        /* singly linked through the first word of each object */
    void *_chunks;      /* chunk list, for deinit */
    size_t _obj_size;
    uint32_t _free_max; /* 0: chunked, never trimmed */
    uint32_t free_n;    /* objects on the free list */
    uint64_t live;      /* objects handed out and not yet put back */
} bds__pool;

void bds__pool_init(bds__pool *pool, size_t obj_size);
/* A pool that keeps at most |free_max| (> 0) free objects. */
void bds__pool_init_trimmed(bds__pool *pool, size_t obj_size, uint32_t free_max);
/* Asserts live == 0. */
void bds__pool_deinit(bds__pool *pool);
void *bds__pool_get(bds__pool *pool); /* zeroed object, NULL when memory is out */
/* An object whose first |zero_bytes| (<= the object size) are zeroed, the
 * rest as it was: for a header in front of bytes the caller writes anyway. */
void *bds__pool_get_head(bds__pool *pool, size_t zero_bytes);
void bds__pool_put(bds__pool *pool, void *obj);

/* Chained hash map keyed by (session pointer, key bytes). Nodes are embedded
 * in their owners. A short key is copied into the node; a longer one is
 * pointed to in a live call's payload and re-pointed when that call leaves.
 * The copy matters under load: with thousands of calls queued, the next
 * call's payload is cold, and touching it on every lookup and every DONE
 * cost a cache miss each (most of a saturated shard's time). */
#define BDS_KMAP_KEY_INLINE 24u
typedef struct bds__kmap_node {
    struct bds__kmap_node *next;
    uint64_t hash;
    const void *session;
    const uint8_t *key;
    uint32_t key_len;
    uint8_t key_inline[BDS_KMAP_KEY_INLINE];
} bds__kmap_node;

/* Sets the key of a node at its final address. */
static inline void bds__kmap_node_set_key(bds__kmap_node *n, const void *key, uint32_t key_len) {
    n->key_len = key_len;
    if (key_len <= BDS_KMAP_KEY_INLINE) {
        if (key_len) memcpy(n->key_inline, key, key_len);
        n->key = n->key_inline;
    } else {
        n->key = key;
    }
}

/* True when the node's key bytes point into a call (they must follow it). */
static inline bool bds__kmap_node_key_borrowed(const bds__kmap_node *n) { return n->key != n->key_inline; }

typedef struct bds__kmap {
    bds__kmap_node **_buckets;
    uint32_t _mask;
    uint32_t n;
} bds__kmap;

int bds__kmap_init(bds__kmap *map, uint32_t buckets_pow2);
void bds__kmap_deinit(bds__kmap *map); /* asserts empty */
/* Mixes a key hash with the session, so one key in many sessions spreads. */
uint64_t bds__kmap_hash(uint64_t key_hash, const void *session);
bds__kmap_node *bds__kmap_find(const bds__kmap *map, uint64_t hash, const void *session,
                               const void *key, uint32_t key_len);
/* Inserts node (fields already set). Returns 0, or -1 if growing failed (the
 * node is still inserted; the map only stays denser than planned). */
int bds__kmap_insert(bds__kmap *map, bds__kmap_node *node);
void bds__kmap_remove(bds__kmap *map, bds__kmap_node *node);

#endif
