/* fuzz_common.h — what the libFuzzer targets share: a check that aborts with
 * a message (the fuzzer then keeps the input as a crash), a byte reader over
 * the fuzz input, and a small deterministic random stream (chunk sizes, clock
 * steps) seeded from the input so every run of an input is the same run. */
#ifndef BDS_FUZZ_COMMON_H
#define BDS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Always compiled in, like BDS_ASSERT: a broken property is the finding. */
#define FUZZ_CHECK(cond, ...)                                                       \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
            abort();                                                                \
        }                                                                           \
    } while (0)

/* Reads the fuzz input front to back; past its end every read is 0. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t len;
} fuzz_in;

static inline uint8_t fuzz_u8(fuzz_in *in) {
    if (in->len == 0) return 0;
    in->len--;
    return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in *in) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) x = x << 8 | fuzz_u8(in);
    return x;
}

/* Up to max bytes of the input (fewer at its end), as a view. */
static inline const uint8_t *fuzz_bytes(fuzz_in *in, size_t max, size_t *got) {
    const uint8_t *p = in->p;
    *got = in->len < max ? in->len : max;
    in->p += *got;
    in->len -= *got;
    return p;
}

/* splitmix64: a whole-period stream from any seed. */
static inline uint64_t fuzz_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A chunk size in 1..max, small sizes most often: cuts land inside prefixes,
 * frame headers and varints as often as between them. */
static inline size_t fuzz_chunk(uint64_t *state, size_t max) {
    uint64_t r = fuzz_rand(state);
    size_t cap = (r & 3) == 0 ? max : (r & 3) == 1 ? 16 : (r & 3) == 2 ? 5 : 1024;
    if (cap > max) cap = max;
    return cap ? 1 + (size_t)((r >> 8) % cap) : 1;
}

#endif
