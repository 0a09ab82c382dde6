/* test_hash.c — the seeded key hash and fastrange placement. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "hash.h"

/* SipHash reference vectors (Aumasson & Bernstein) are for SipHash-2-4; for
 * 1-3 we check the properties placement relies on instead. */
Test(hash, deterministic_for_a_seed_and_different_across_seeds) {
    bds_hash_seed a = {1, 2}, b = {1, 3};
    const char *k = "order-42";
    cr_assert_eq(bds__hash(&a, k, strlen(k)), bds__hash(&a, k, strlen(k)));
    cr_assert_neq(bds__hash(&a, k, strlen(k)), bds__hash(&b, k, strlen(k)));
    cr_assert_neq(bds__hash(&a, "", 0), bds__hash(&a, "\0", 1), "length is part of the hash");
}

Test(hash, every_tail_length_is_hashed_distinctly) {
    bds_hash_seed s = {7, 9};
    uint8_t buf[32];
    for (int i = 0; i < 32; i++) buf[i] = (uint8_t)i;
    uint64_t seen[33];
    for (int len = 0; len <= 32; len++) {
        seen[len] = bds__hash(&s, buf, (size_t)len);
        for (int j = 0; j < len; j++) cr_assert_neq(seen[len], seen[j]);
    }
    buf[5] ^= 1;
    cr_assert_neq(bds__hash(&s, buf, 32), seen[32], "one flipped bit changes the hash");
}

Test(hash, fastrange_is_in_range_and_spreads_keys) {
    bds_hash_seed s;
    bds__hash_seed_random(&s);
    uint32_t bins[7] = {0};
    char key[16];
    for (int i = 0; i < 70000; i++) {
        int n = snprintf(key, sizeof key, "key-%d", i);
        uint32_t b = bds__fastrange(bds__hash(&s, key, (size_t)n), 7);
        cr_assert_lt(b, 7);
        bins[b]++;
    }
    for (int i = 0; i < 7; i++) cr_assert(bins[i] > 9000 && bins[i] < 11000, "bin %d has %u", i, bins[i]);
    cr_assert_eq(bds__fastrange(UINT64_MAX, 5), 4);
    cr_assert_eq(bds__fastrange(0, 5), 0);
}
