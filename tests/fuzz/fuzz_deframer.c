/* fuzz_deframer.c — the gRPC deframer (proto/grpc_frame.c) against a reference.
 *
 * Input: [max selector][flags][4-byte chunking seed][stream...]. The stream is
 * fed in chunks of random sizes (seeded from the input); the reference below
 * reads the same stream whole, in the plainest way gRPC PROTOCOL-HTTP2 allows.
 * Both must give the same messages (bytes and compressed flag), then the same
 * error, or the same end-of-stream verdict, whatever the chunking. Every buffer
 * the deframer allocates is at most the limit and is freed by deinit. */
#include "fuzz_common.h"
#include "grpc_frame.h"

typedef struct ref_msg {
    size_t off;
    uint32_t len;
    bool compressed;
} ref_msg;

/* The reference: messages until the first bad prefix or the end. *status is
 * the error's (error = true), else what finish says (OK or INTERNAL if cut). */
static size_t ref_deframe(const uint8_t *s, size_t len, uint32_t max, bool comp, ref_msg *out, size_t out_cap,
                          bool *error, bds_status *status) {
    size_t n = 0, pos = 0;
    *error = false;
    *status = BDS_OK;
    while (pos < len) {
        if (len - pos < 5) {
            *status = BDS_INTERNAL;
            return n;
        }
        uint8_t flag = s[pos];
        uint32_t mlen = (uint32_t)s[pos + 1] << 24 | (uint32_t)s[pos + 2] << 16 | (uint32_t)s[pos + 3] << 8 | s[pos + 4];
        if (flag > 1 || (flag == 1 && !comp)) {
            *error = true;
            *status = BDS_INTERNAL;
            return n;
        }
        if (mlen > max) {
            *error = true;
            *status = BDS_RESOURCE_EXHAUSTED;
            return n;
        }
        if (len - pos - 5 < mlen) {
            *status = BDS_INTERNAL;
            return n;
        }
        FUZZ_CHECK(n < out_cap, "reference overflow");
        out[n++] = (ref_msg){.off = pos + 5, .len = mlen, .compressed = flag == 1};
        pos += 5 + (size_t)mlen;
    }
    return n;
}

/* An allocator that checks each buffer against the limit and counts what is live. */
typedef struct counting {
    uint32_t max;
    long live;
} counting;

static void *c_malloc(size_t size, void *ctx) {
    counting *c = ctx;
    FUZZ_CHECK(size <= c->max, "allocated %zu bytes, limit %u", size, c->max);
    void *p = malloc(size ? size : 1);
    if (p) c->live++;
    return p;
}
static void c_free(void *p, void *ctx) {
    counting *c = ctx;
    if (!p) return;
    c->live--;
    free(p);
}
static void *c_calloc(size_t n, size_t size, void *ctx) {
    FUZZ_CHECK(size == 0 || n <= SIZE_MAX / size, "calloc overflow");
    void *p = c_malloc(n * size, ctx);
    if (p) memset(p, 0, n * size);
    return p;
}
static void *c_realloc(void *p, size_t size, void *ctx) {
    counting *c = ctx;
    FUZZ_CHECK(size <= c->max, "reallocated %zu bytes, limit %u", size, c->max);
    if (!p) return c_malloc(size, ctx);
    return realloc(p, size ? size : 1);
}

#define REF_MAX 8192

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    /* 0: the 4 MiB default; else a small limit so that "over the limit" is reachable. */
    uint32_t max = sel == 0 ? BDS_GRPC_MSG_BYTES_MAX_DEFAULT : (uint32_t)sel * 37u - 36u;
    bool comp = fuzz_u8(&in) & 1;
    uint64_t seed = fuzz_u32(&in);
    const uint8_t *s = in.p;
    size_t len = in.len;

    static ref_msg ref[REF_MAX];
    bool ref_error;
    bds_status ref_status;
    size_t nref = ref_deframe(s, len, sel == 0 ? BDS_GRPC_MSG_BYTES_MAX_DEFAULT : max, comp, ref, REF_MAX,
                              &ref_error, &ref_status);

    counting cnt = {.max = max};
    const bds__palloc alloc = {c_malloc, c_free, c_calloc, c_realloc, &cnt};
    bds__grpc_deframer d;
    bds__grpc_deframer_init(&d, sel == 0 ? 0 : max, comp, &alloc);
    size_t got = 0, pos = 0;
    bool error = false;
    bds_status status = BDS_OK;
    while (pos < len && !error) {
        size_t chunk = fuzz_chunk(&seed, len - pos);
        const uint8_t *p = s + pos;
        size_t left = chunk;
        while (left > 0) {
            bds__grpc_ev ev;
            size_t used = bds__grpc_deframe(&d, p, left, &ev);
            FUZZ_CHECK(used <= left, "used %zu of %zu", used, left);
            if (ev.kind == BDS__GRPC_EV_NONE) {
                FUZZ_CHECK(used == left, "NONE left %zu bytes", left - used);
            } else if (ev.kind == BDS__GRPC_EV_MESSAGE) {
                FUZZ_CHECK(got < nref, "message %zu the reference does not have", got);
                FUZZ_CHECK(ev.data != NULL, "message %zu: NULL data", got);
                FUZZ_CHECK(ev.len == ref[got].len, "message %zu: %u bytes, reference %u", got, ev.len, ref[got].len);
                FUZZ_CHECK(ev.compressed == ref[got].compressed, "message %zu: compressed flag", got);
                FUZZ_CHECK(ev.len == 0 || memcmp(ev.data, s + ref[got].off, ev.len) == 0, "message %zu: bytes",
                           got);
                got++;
            } else {
                FUZZ_CHECK(ev.kind == BDS__GRPC_EV_ERROR, "event kind %d", (int)ev.kind);
                FUZZ_CHECK(ev.status != BDS_OK && ev.reason != NULL, "error without status or reason");
                error = true;
                status = ev.status;
                /* Sticky: the next call takes nothing and says the same. */
                bds__grpc_ev again;
                FUZZ_CHECK(bds__grpc_deframe(&d, p, left, &again) == 0, "bytes taken after an error");
                FUZZ_CHECK(again.kind == BDS__GRPC_EV_ERROR && again.status == ev.status, "error not sticky");
                break;
            }
            p += used;
            left -= used;
        }
        pos += chunk;
    }
    FUZZ_CHECK(got == nref, "%zu messages, reference %zu", got, nref);
    FUZZ_CHECK(error == ref_error, "error %d, reference %d", error, ref_error);
    bds_status fin = bds__grpc_deframer_finish(&d);
    if (error) {
        FUZZ_CHECK(status == ref_status, "error status %d, reference %d", (int)status, (int)ref_status);
        FUZZ_CHECK(fin == status, "finish %d after error %d", (int)fin, (int)status);
    } else {
        FUZZ_CHECK(fin == ref_status, "finish %d, reference %d", (int)fin, (int)ref_status);
    }
    bds__grpc_deframer_deinit(&d);
    FUZZ_CHECK(cnt.live == 0, "%ld buffers left after deinit", cnt.live);
    return 0;
}
