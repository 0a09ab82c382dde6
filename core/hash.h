/* hash.h — the seeded key hash (internal).
 *
 * Ordering keys are chosen by clients, so a fixed hash would let one client
 * pile every key onto one shard or one hash chain. SipHash-1-3 with a
 * per-process random seed keeps placement and table chains unpredictable at a
 * cost of a few ns for short keys. The same seed is used by every shard: a key
 * must land on the same shard from every connection (docs/ARCHITECTURE.md). */
#ifndef BDS_HASH_H
#define BDS_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct bds_hash_seed {
    uint64_t k0, k1;
} bds_hash_seed;

/* SipHash-1-3 of data[0..len) under seed. */
uint64_t bds__hash(const bds_hash_seed *seed, const void *data, size_t len);

/* Maps a 64-bit hash onto [0, n) without division (Lemire's fastrange):
 * uses the high bits, which SipHash mixes well. */
static inline uint32_t bds__fastrange(uint64_t hash, uint32_t n) {
    return (uint32_t)(((unsigned __int128)hash * n) >> 64);
}

/* A random seed from getrandom(); falls back to time and address bits when the
 * kernel refuses (never fails). */
void bds__hash_seed_random(bds_hash_seed *seed);

#endif
