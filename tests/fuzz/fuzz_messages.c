/* fuzz_messages.c — the built-in services' message scanners (services/
 * process.c, services/health.c) and protobuf-c decoding of the project's
 * messages, under a byte budget.
 *
 * The services read requests straight from the wire (no unpack): their
 * scanners are static, so this file includes them (h2o's habit for testing
 * static functions) and links the rest of the library as usual. The first input byte
 * picks a mode, the rest is the message:
 *   0  bidistream.v1.Frame: frame_scan against protobuf-c. Whatever protobuf-c
 *      accepts, the scan accepts with the same key, and reads fail and work_us
 *      as protobuf-c does on its canonical encoding; a scanned frame's echo (frame_echo) is no
 *      longer than the request and scans as a plain frame with the same key;
 *      frame_key gives the scan's key.
 *   1  grpc.health.v1.HealthCheckRequest: health_service against protobuf-c,
 *      the same way (the service name decides "known").
 *   2  every message type the server decodes (the interop service's too):
 *      unpack with an allocator that fails past a budget (nothing leaks, no
 *      crash), and an accepted message packs and unpacks again. */
#include "../../services/health.c"
#include "../../services/process.c"

#include "fuzz_common.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc/testing/empty.pb-c.h"
#include "grpc/testing/messages.pb-c.h"
#include "pipeline.pb-c.h"

/* ---- a protobuf-c allocator with a byte budget ----------------------------------- */

typedef struct budget {
    size_t left;
    long live;
} budget;

static void *b_alloc(void *ctx, size_t size) {
    budget *b = ctx;
    if (size > b->left) return NULL;
    size_t *p = malloc(sizeof(size_t) + size);
    if (!p) return NULL;
    *p = size;
    b->left -= size;
    b->live++;
    return p + 1;
}

static void b_free(void *ctx, void *ptr) {
    budget *b = ctx;
    if (!ptr) return;
    size_t *p = (size_t *)ptr - 1;
    b->left += *p;
    b->live--;
    free(p);
}

/* protobuf-c takes a tag of field 0 written in two or more bytes (0x80 0x00),
 * or of a field past 2^29 - 1 in five, as an unknown field; protobuf field
 * numbers are 1 to 2^29 - 1, and the scanners rightly refuse the others. */
static bool has_field_zero(const ProtobufCMessage *m) {
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0 || m->unknown_fields[i].tag > 0x1fffffffu) return true;
    }
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *sub = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++) {
                if (has_field_zero(sub[k])) return true;
            }
        } else {
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(const uint32_t *)(base + f->quantifier_offset) != f->id) {
                continue;
            }
            const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
            if (sub && has_field_zero(sub)) return true;
        }
    }
    return false;
}

/* ---- Frame ----------------------------------------------------------------------- */

static void frame(const uint8_t *p, size_t len, size_t budget_bytes) {
    frame_view v;
    bool scanned = frame_scan(p, (uint32_t)len, &v);
    budget b = {.left = budget_bytes};
    ProtobufCAllocator alloc = {b_alloc, b_free, &b};
    Bidistream__V1__Frame *f = bidistream__v1__frame__unpack(&alloc, len, p);
    if (f && has_field_zero(&f->base)) {
        bidistream__v1__frame__free_unpacked(f, &alloc);
        f = NULL;
    }
    if (f) {
        FUZZ_CHECK(scanned, "protobuf-c accepts a Frame the scan refuses");
        size_t klen = f->key ? strlen(f->key) : 0;
        /* A key with a NUL in it reads shorter through protobuf-c's C string. */
        FUZZ_CHECK(klen <= v.key_len && memcmp(f->key ? f->key : "", v.key, klen) == 0, "key differs");
        /* protobuf-c also takes a bool in any wire type (a fixed32 "fail"), which the
         * scan counts as an unknown field: compare the values on protobuf-c's own
         * canonical encoding of what it read. */
        uint8_t canon[64];
        Bidistream__V1__Frame c = *f;
        c.key = "", c.payload.len = 0, c.base.n_unknown_fields = 0;
        size_t n = bidistream__v1__frame__pack(&c, canon);
        frame_view cv;
        FUZZ_CHECK(n <= sizeof canon && frame_scan(canon, (uint32_t)n, &cv), "the canonical Frame does not scan");
        FUZZ_CHECK(f->fail == cv.fail, "fail %d, scan %d", f->fail, cv.fail);
        FUZZ_CHECK(f->work_us == cv.work_us, "work_us %u, scan %llu", f->work_us, (unsigned long long)cv.work_us);
        bidistream__v1__frame__free_unpacked(f, &alloc);
    }
    FUZZ_CHECK(b.live == 0, "%ld protobuf-c allocations left", b.live);
    if (!scanned) return;
    const uint8_t *key;
    uint32_t key_len;
    FUZZ_CHECK(frame_key(p, (uint32_t)len, &key, &key_len, NULL), "frame_key refuses a scanned frame");
    FUZZ_CHECK(key == v.key && key_len == v.key_len, "frame_key's key is not the scan's");
    uint8_t *out = malloc(len ? len : 1);
    FUZZ_CHECK(out != NULL, "oom");
    uint32_t n = frame_echo(p, (uint32_t)len, out);
    FUZZ_CHECK(n <= len, "echo of %zu bytes is %u", len, n);
    frame_view e;
    FUZZ_CHECK(frame_scan(out, n, &e), "the echo does not scan");
    FUZZ_CHECK(e.key_len == v.key_len && memcmp(e.key, v.key, v.key_len) == 0, "the echo's key differs");
    FUZZ_CHECK(!e.fail && e.work_us == 0, "the echo carries work or fail");
    free(out);
}

/* ---- HealthCheckRequest ------------------------------------------------------------ */

static void health(const uint8_t *p, size_t len, size_t budget_bytes) {
    bool known = false;
    bool scanned = health_service(p, (uint32_t)len, &known);
    budget b = {.left = budget_bytes};
    ProtobufCAllocator alloc = {b_alloc, b_free, &b};
    Grpc__Health__V1__HealthCheckRequest *r = grpc__health__v1__health_check_request__unpack(&alloc, len, p);
    if (r && has_field_zero(&r->base)) {
        grpc__health__v1__health_check_request__free_unpacked(r, &alloc);
        r = NULL;
    }
    if (r) {
        FUZZ_CHECK(scanned, "protobuf-c accepts a HealthCheckRequest the scan refuses");
        const char *svc = r->service ? r->service : "";
        bool pb_known = strcmp(svc, "") == 0 || strcmp(svc, "bidistream.v1.Pipeline") == 0 ||
                        strcmp(svc, "grpc.health.v1.Health") == 0;
        /* protobuf-c's C string stops at a NUL: only compare NUL-free names. */
        if (!memchr(p, 0, len)) FUZZ_CHECK(known == pb_known, "known %d, protobuf-c says %d", known, pb_known);
        grpc__health__v1__health_check_request__free_unpacked(r, &alloc);
    }
    FUZZ_CHECK(b.live == 0, "%ld protobuf-c allocations left", b.live);
}

/* ---- every message type ------------------------------------------------------------ */

static const ProtobufCMessageDescriptor *const descs[] = {
    &bidistream__v1__frame__descriptor,
    &grpc__health__v1__health_check_request__descriptor,
    &grpc__health__v1__health_check_response__descriptor,
    &grpc__testing__empty__descriptor,
    &grpc__testing__bool_value__descriptor,
    &grpc__testing__payload__descriptor,
    &grpc__testing__echo_status__descriptor,
    &grpc__testing__simple_request__descriptor,
    &grpc__testing__simple_response__descriptor,
    &grpc__testing__streaming_input_call_request__descriptor,
    &grpc__testing__streaming_input_call_response__descriptor,
    &grpc__testing__response_parameters__descriptor,
    &grpc__testing__streaming_output_call_request__descriptor,
    &grpc__testing__streaming_output_call_response__descriptor,
    &grpc__reflection__v1__server_reflection_request__descriptor,
    &google__protobuf__file_descriptor_set__descriptor,
    &google__protobuf__file_descriptor_proto__descriptor,
};

static void any(uint8_t which, const uint8_t *p, size_t len, size_t budget_bytes) {
    const ProtobufCMessageDescriptor *d = descs[which % (sizeof descs / sizeof descs[0])];
    budget b = {.left = budget_bytes};
    ProtobufCAllocator alloc = {b_alloc, b_free, &b};
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &alloc, len, p);
    /* Packed again, a field 0 taken in a long tag is a one-byte 0: not a round trip. */
    if (m && !has_field_zero(m)) {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *out = malloc(n ? n : 1);
        FUZZ_CHECK(out != NULL, "oom");
        FUZZ_CHECK(protobuf_c_message_pack(m, out) == n, "%s: pack size", d->name);
        budget b2 = {.left = SIZE_MAX};
        ProtobufCAllocator alloc2 = {b_alloc, b_free, &b2};
        ProtobufCMessage *again = protobuf_c_message_unpack(d, &alloc2, n, out);
        FUZZ_CHECK(again != NULL, "%s: packed message does not unpack", d->name);
        protobuf_c_message_free_unpacked(again, &alloc2);
        FUZZ_CHECK(b2.live == 0, "allocations left");
        free(out);
    }
    if (m) protobuf_c_message_free_unpacked(m, &alloc);
    FUZZ_CHECK(b.live == 0, "%s: %ld protobuf-c allocations left", d->name, b.live);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t mode = fuzz_u8(&in);
    /* The budget: from nothing to plenty, so every allocation point fails somewhere. */
    size_t budget_bytes = (size_t)fuzz_u8(&in) * 64u;
    if (budget_bytes >= 255u * 64u) budget_bytes = SIZE_MAX;
    switch (mode % 3) {
    case 0: frame(in.p, in.len, budget_bytes); break;
    case 1: health(in.p, in.len, budget_bytes); break;
    case 2: any(mode / 3, in.p, in.len, budget_bytes); break;
    }
    return 0;
}
