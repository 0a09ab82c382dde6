/* bframe.h: a tiny hand-written protobuf codec for bidistream.v1.Frame (docs/SERVICE.md)
 * and the gRPC length prefix, for the load generator.
 *
 * Five fields, so no protoc-c dependency: key (1, string), seq (2, uint64),
 * payload (3, bytes), work_us (4, uint32), fail (5, bool). proto3 rules:
 * zero/empty fields are omitted on encode; unknown fields are skipped on
 * decode; a field repeated takes its last value.
 *
 * Ownership: decode points into the input (no copy, no allocation).
 */
#ifndef BDS_BENCH_BFRAME_H
#define BDS_BENCH_BFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BDS_GRPC_PREFIX 5

typedef struct bds_bframe {
    const uint8_t *key;
    size_t key_len;
    uint64_t seq;
    const uint8_t *payload;
    size_t payload_len;
    uint32_t work_us;
    bool fail;
} bds_bframe;

/* Encoded protobuf size of f (without the gRPC prefix). */
size_t bds_bframe_size(const bds_bframe *f);
/* Writes f at out (room for bds_bframe_size bytes); returns the bytes written. */
size_t bds_bframe_encode(const bds_bframe *f, uint8_t *out);
/* The same bytes in two pieces, fields in number order: the head holds key and
 * seq, the tail payload, work_us and fail. A sender whose messages differ only
 * in key, seq and payload bytes encodes the tail once and copies it (the load
 * generator does, patching its timestamp at *payload_at, the payload's offset
 * in the tail; payload_at may be NULL). Head room: 1 + 10 + key_len + 11. */
size_t bds_bframe_encode_head(const uint8_t *key, size_t key_len, uint64_t seq, uint8_t *out);
size_t bds_bframe_encode_tail(const bds_bframe *f, uint8_t *out, size_t *payload_at);
/* Writes the 5-byte gRPC prefix (uncompressed) and f; returns the total. */
size_t bds_bframe_encode_grpc(const bds_bframe *f, uint8_t *out);
/* Parses one protobuf Frame from [p, p+n). Returns 0, or -1 if malformed. */
int bds_bframe_decode(const uint8_t *p, size_t n, bds_bframe *out);
/* gRPC prefix: returns the message length; *compressed gets the flag byte. */
uint32_t bds_grpc_prefix_len(const uint8_t *p, bool *compressed);

#endif
