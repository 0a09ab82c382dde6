/* tests/bench/test_bframe.c: the load generator's hand-written Frame codec
 * (bench/loadgen/bframe.c) against bytes protoc would produce, round trips, and
 * malformed input. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "bframe.h"

Test(frame, encodes_like_protobuf)
{
    /* Frame{key:"k1", seq:300, payload:"ab", work_us:5, fail:true}, the bytes
     * worked out by hand from the protobuf encoding rules. */
    const uint8_t want[] = { 0x0a, 2, 'k', '1', 0x10, 0xac, 0x02, 0x1a, 2, 'a', 'b',
                             0x20, 5, 0x28, 1 };
    bds_bframe f = { (const uint8_t *)"k1", 2, 300, (const uint8_t *)"ab", 2, 5, true };
    uint8_t out[64];
    cr_assert_eq(bds_bframe_size(&f), sizeof want);
    cr_assert_eq(bds_bframe_encode(&f, out), sizeof want);
    cr_assert_arr_eq(out, want, sizeof want);
}

Test(frame, zero_fields_are_omitted)
{
    bds_bframe f = { 0 };
    uint8_t out[8];
    cr_assert_eq(bds_bframe_encode(&f, out), 0);
}

Test(frame, grpc_prefix_and_round_trip)
{
    uint8_t payload[300];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)i;
    bds_bframe f = { (const uint8_t *)"key", 3, 1ull << 40, payload, sizeof payload, 0, false };
    uint8_t out[512];
    size_t n = bds_bframe_encode_grpc(&f, out);
    bool comp;
    cr_assert_eq(bds_grpc_prefix_len(out, &comp), n - 5);
    cr_assert_not(comp);
    bds_bframe g;
    cr_assert_eq(bds_bframe_decode(out + 5, n - 5, &g), 0);
    cr_assert_eq(g.key_len, 3);
    cr_assert_eq(memcmp(g.key, "key", 3), 0);
    cr_assert_eq(g.seq, 1ull << 40);
    cr_assert_eq(g.payload_len, sizeof payload);
    cr_assert_eq(memcmp(g.payload, payload, sizeof payload), 0);
    cr_assert_eq(g.work_us, 0);
    cr_assert_not(g.fail);
}

Test(frame, unknown_fields_are_skipped)
{
    /* field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32, then seq */
    const uint8_t in[] = { 0x48, 0x01, 0x51, 1, 2, 3, 4, 5, 6, 7, 8, 0x5a, 1, 'x',
                           0x65, 1, 2, 3, 4, 0x10, 7 };
    bds_bframe g;
    cr_assert_eq(bds_bframe_decode(in, sizeof in, &g), 0);
    cr_assert_eq(g.seq, 7);
}

Test(frame, malformed_input_is_rejected)
{
    const uint8_t trunc_len[] = { 0x1a, 5, 'a' };       /* bytes field runs past the end */
    const uint8_t trunc_var[] = { 0x10, 0x80 };         /* varint never ends */
    const uint8_t field0[] = { 0x00, 0x01 };            /* field number 0 */
    const uint8_t group[] = { 0x0b };                   /* wire type 3 (group) */
    bds_bframe g;
    cr_assert_eq(bds_bframe_decode(trunc_len, sizeof trunc_len, &g), -1);
    cr_assert_eq(bds_bframe_decode(trunc_var, sizeof trunc_var, &g), -1);
    cr_assert_eq(bds_bframe_decode(field0, sizeof field0, &g), -1);
    cr_assert_eq(bds_bframe_decode(group, sizeof group, &g), -1);
}

Test(frame, varints_round_trip_at_every_length_boundary)
{
    /* The decoder reads one-byte varints on a fast path and longer ones in a
     * loop: every boundary between the two, and the widest value, round trip. */
    const uint64_t seqs[] = { 1, 0x7f, 0x80, 0xff, 0x3fff, 0x4000, 0x1fffff, 0x200000,
                              (1ull << 35) - 1, 1ull << 35, UINT64_MAX };
    uint8_t key[200], payload[200], out[512];
    memset(key, 'k', sizeof key);
    memset(payload, 'p', sizeof payload);
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        for (size_t len = 126; len <= 129; len++) { /* lengths across 1 and 2 bytes */
            bds_bframe f = { key, len, seqs[i], payload, len, (uint32_t)len, false };
            size_t n = bds_bframe_encode(&f, out);
            cr_assert_eq(n, bds_bframe_size(&f));
            bds_bframe g;
            cr_assert_eq(bds_bframe_decode(out, n, &g), 0);
            cr_assert_eq(g.seq, seqs[i]);
            cr_assert_eq(g.key_len, len);
            cr_assert_eq(g.payload_len, len);
            cr_assert_eq(g.work_us, len);
            /* Cut inside the seq field (after its tag, inside its varint):
             * malformed. The cut copy sits in a buffer of exactly that size,
             * so a read past it is a sanitizer error. */
            size_t seq_at = 1 + (len < 128 ? 1 : 2) + len + 1, vs = 1;
            for (uint64_t v = seqs[i]; v >= 0x80; v >>= 7)
                vs++;
            for (size_t cut = seq_at; cut < seq_at + vs; cut++) {
                uint8_t *c = malloc(cut);
                memcpy(c, out, cut);
                cr_assert_eq(bds_bframe_decode(c, cut, &g), -1, "seq %zu cut at %zu", i, cut);
                free(c);
            }
        }
    }
}

Test(frame, head_and_tail_are_the_whole_frame)
{
    /* The load generator encodes the tail once and copies it after each
     * message's head: the two pieces must be the bytes of one encode, and
     * payload_at must point at the payload inside the tail. */
    uint8_t payload[300];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7);
    const size_t lens[] = { 0, 8, 127, 128, 300 };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int variant = 0; variant < 4; variant++) {
            bds_bframe f = { (const uint8_t *)"k12", variant & 1 ? 3 : 0, variant & 2 ? 1ull << 40 : 0,
                             payload, lens[i], variant == 3 ? 500 : 0, variant == 2 };
            uint8_t whole[512], split[512];
            size_t n = bds_bframe_encode(&f, whole);
            size_t h = bds_bframe_encode_head(f.key, f.key_len, f.seq, split);
            size_t at = SIZE_MAX;
            size_t t = bds_bframe_encode_tail(&f, split + h, &at);
            cr_assert_eq(h + t, n);
            cr_assert_arr_eq(split, whole, n);
            if (lens[i]) {
                cr_assert_lt(at, t);
                cr_assert_eq(memcmp(split + h + at, payload, lens[i]), 0);
            } else {
                cr_assert_eq(at, SIZE_MAX, "no payload field, no offset");
            }
        }
    }
}
