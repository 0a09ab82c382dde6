/* test_codegen.c — the protobuf-c code generated at build time: the pipeline's
 * Frame (docs/SERVICE.md), grpc.health.v1 and the interop TestService descriptors
 * round-trip, and malformed protobuf is refused rather than trusted. */
#include <criterion/criterion.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "pipeline.pb-c.h"
#ifdef BDS_HAVE_GRPC_TESTING
#include "grpc/testing/test.pb-c.h"
#endif

Test(codegen, frame_roundtrip_preserves_every_field) {
    Bidistream__V1__Frame in = BIDISTREAM__V1__FRAME__INIT;
    uint8_t payload[] = {0, 1, 2, 0xff};
    in.key = "k1";
    in.seq = 1234567890123ULL;
    in.payload.data = payload;
    in.payload.len = sizeof payload;
    in.work_us = 250;
    in.fail = 1;
    uint8_t buf[64];
    size_t n = bidistream__v1__frame__get_packed_size(&in);
    cr_assert_leq(n, sizeof buf);
    cr_assert_eq(bidistream__v1__frame__pack(&in, buf), n);
    Bidistream__V1__Frame *out = bidistream__v1__frame__unpack(NULL, n, buf);
    cr_assert_not_null(out);
    cr_assert_str_eq(out->key, "k1");
    cr_assert_eq(out->seq, in.seq);
    cr_assert_eq(out->payload.len, sizeof payload);
    cr_assert_arr_eq(out->payload.data, payload, sizeof payload);
    cr_assert_eq(out->work_us, 250);
    cr_assert_eq(out->fail, 1);
    bidistream__v1__frame__free_unpacked(out, NULL);
}

Test(codegen, frame_descriptor_names_match_spec) {
    cr_assert_str_eq(bidistream__v1__frame__descriptor.name, "bidistream.v1.Frame");
    cr_assert_str_eq(bidistream__v1__pipeline__descriptor.name, "bidistream.v1.Pipeline");
    cr_assert_eq(bidistream__v1__pipeline__descriptor.n_methods, 1);
    cr_assert_str_eq(bidistream__v1__pipeline__descriptor.methods[0].name, "Process");
}

Test(codegen, frame_unpack_truncated_returns_null) {
    Bidistream__V1__Frame in = BIDISTREAM__V1__FRAME__INIT;
    in.key = "a-longer-key";
    uint8_t buf[64];
    size_t n = bidistream__v1__frame__pack(&in, buf);
    cr_assert_gt(n, 3);
    cr_assert_null(bidistream__v1__frame__unpack(NULL, n - 3, buf));
}

Test(codegen, frame_unpack_garbage_returns_null) {
    /* Field 2 (seq, varint) with a wire type of 2 and a length past the end. */
    static const uint8_t bad[] = {0x12, 0x7f, 0x01};
    cr_assert_null(bidistream__v1__frame__unpack(NULL, sizeof bad, bad));
    /* An unterminated varint. */
    static const uint8_t bad2[] = {0x10, 0xff, 0xff, 0xff};
    cr_assert_null(bidistream__v1__frame__unpack(NULL, sizeof bad2, bad2));
}

Test(codegen, health_check_roundtrip) {
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    uint8_t buf[16];
    size_t n = grpc__health__v1__health_check_response__pack(&r, buf);
    Grpc__Health__V1__HealthCheckResponse *o =
        grpc__health__v1__health_check_response__unpack(NULL, n, buf);
    cr_assert_not_null(o);
    cr_assert_eq(o->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    grpc__health__v1__health_check_response__free_unpacked(o, NULL);
    cr_assert_str_eq(grpc__health__v1__health__descriptor.name, "grpc.health.v1.Health");
}

#ifdef BDS_HAVE_GRPC_TESTING
Test(codegen, interop_test_service_has_full_duplex_call) {
    const ProtobufCServiceDescriptor *d = &grpc__testing__test_service__descriptor;
    cr_assert_str_eq(d->name, "grpc.testing.TestService");
    bool found = false;
    for (unsigned i = 0; i < d->n_methods; i++)
        found |= strcmp(d->methods[i].name, "FullDuplexCall") == 0;
    cr_assert(found);
}
#endif
