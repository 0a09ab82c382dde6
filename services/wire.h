/* wire.h — reading protobuf's wire format straight from the bytes, for the
 * services that never unpack a message (Process, Health). */
#ifndef BDS_SERVICES_WIRE_H
#define BDS_SERVICES_WIRE_H

#include <stdbool.h>
#include <stdint.h>

static inline bool wire_varint_long(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

/* Most varints here (tags, small lengths) are one byte. */
static inline bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    if (*p < end && **p < 0x80) {
        *v = *(*p)++;
        return true;
    }
    return wire_varint_long(p, end, v);
}

/* Steps over a varint without decoding it: false when it runs past end or
 * past the 10 bytes a varint may have (what wire_varint_long refuses). */
static inline bool wire_varint_skip(const uint8_t **p, const uint8_t *end) {
    const uint8_t *q = *p, *lim = end - q > 10 ? q + 10 : end;
    while (q < lim)
        if (!(*q++ & 0x80)) {
            *p = q;
            return true;
        }
    return false;
}

#endif
