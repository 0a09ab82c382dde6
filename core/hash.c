/* hash.c — SipHash-1-3 (one compression round, three finalisation rounds),
 * after Aumasson and Bernstein's reference description. */
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "hash.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND            \
    do {                    \
        v0 += v1;           \
        v1 = ROTL(v1, 13);  \
        v1 ^= v0;           \
        v0 = ROTL(v0, 32);  \
        v2 += v3;           \
        v3 = ROTL(v3, 16);  \
        v3 ^= v2;           \
        v0 += v3;           \
        v3 = ROTL(v3, 21);  \
        v3 ^= v0;           \
        v2 += v1;           \
        v1 = ROTL(v1, 17);  \
        v1 ^= v2;           \
        v2 = ROTL(v2, 32);  \
    } while (0)

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint64_t bds__hash(const bds_hash_seed *seed, const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t v0 = 0x736f6d6570736575ULL ^ seed->k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ seed->k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ seed->k0;
    uint64_t v3 = 0x7465646279746573ULL ^ seed->k1;
    const uint8_t *end = p + (len & ~(size_t)7);
    for (; p != end; p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    switch (len & 7) {
    case 7: b |= (uint64_t)p[6] << 48; /* continues */ __attribute__((fallthrough));
    case 6: b |= (uint64_t)p[5] << 40; /* continues */ __attribute__((fallthrough));
    case 5: b |= (uint64_t)p[4] << 32; /* continues */ __attribute__((fallthrough));
    case 4: b |= (uint64_t)p[3] << 24; /* continues */ __attribute__((fallthrough));
    case 3: b |= (uint64_t)p[2] << 16; /* continues */ __attribute__((fallthrough));
    case 2: b |= (uint64_t)p[1] << 8;  /* continues */ __attribute__((fallthrough));
    case 1: b |= (uint64_t)p[0]; break;
    case 0: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void bds__hash_seed_random(bds_hash_seed *seed) {
    if (getrandom(seed, sizeof *seed, GRND_NONBLOCK) == (ssize_t)sizeof *seed) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    seed->k0 = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)seed;
    seed->k1 = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)(uintptr_t)&ts;
}
