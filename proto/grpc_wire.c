/* grpc_wire.c — grpc-timeout, grpc-message percent-encoding, request checks.
 *
 * Design: pure, allocation-free helpers over caller buffers. The request
 * checker only records facts while headers stream in (seen/bad bits, the
 * method index, the timeout, the RFC 7541 header-list size); the verdict is
 * computed once, at the end of the header block, in a fixed precedence order
 * so that a request with several faults always gets the same answer.
 *
 * Invariants: _header_bytes only grows; once it passes _header_bytes_max the
 * REQ_BAD_TOO_BIG bit is set and never cleared.
 *
 * Elsewhere: the HTTP/2 session (h2_server.c) turns a verdict into frames. */
#include "grpc_wire.h"

#include <string.h>

#include "base.h"
#include "grpc_compress.h"

/* ---- grpc-timeout ------------------------------------------------------------ */

#define TIMEOUT_DIGITS_MAX 8

static bool timeout_unit_ns(char unit, uint64_t *ns) {
    switch (unit) {
    case 'H': *ns = 3600ull * 1000000000ull; return true;
    case 'M': *ns = 60ull * 1000000000ull; return true;
    case 'S': *ns = 1000000000ull; return true;
    case 'm': *ns = 1000000ull; return true;
    case 'u': *ns = 1000ull; return true;
    case 'n': *ns = 1ull; return true;
    default: return false;
    }
}

bool bds__grpc_timeout_parse(const char *s, size_t len, uint64_t *out_ns) {
    BDS_ASSERT(out_ns != NULL);
    BDS_ASSERT(s != NULL || len == 0);
    if (len < 2 || len > TIMEOUT_DIGITS_MAX + 1) return false;
    uint64_t unit_ns;
    if (!timeout_unit_ns(s[len - 1], &unit_ns)) return false;
    uint64_t value = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        value = value * 10 + (uint64_t)(s[i] - '0'); /* <= 99999999: no overflow */
    }
    *out_ns = value > UINT64_MAX / unit_ns ? UINT64_MAX : value * unit_ns;
    return true;
}

size_t bds__grpc_timeout_format(uint64_t ns, char out[10]) {
    static const struct { char unit; uint64_t ns; } units[] = {
        {'n', 1ull}, {'u', 1000ull}, {'m', 1000000ull},
        {'S', 1000000000ull}, {'M', 60ull * 1000000000ull}, {'H', 3600ull * 1000000000ull},
    };
    BDS_ASSERT(out != NULL);
    uint64_t value = 99999999ull;
    char unit = 'H';
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        uint64_t v = ns / units[i].ns + (ns % units[i].ns != 0); /* round up */
        if (v <= 99999999ull) {
            value = v;
            unit = units[i].unit;
            break;
        }
    }
    char digits[TIMEOUT_DIGITS_MAX];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    BDS_ASSERT(n <= TIMEOUT_DIGITS_MAX);
    for (size_t i = 0; i < n; i++) out[i] = digits[n - 1 - i];
    out[n] = unit;
    out[n + 1] = '\0';
    return n + 1;
}

/* ---- percent-encoding ------------------------------------------------------- */

static bool percent_needs_escape(uint8_t c) { return c < 0x20 || c > 0x7e || c == '%'; }

size_t bds__grpc_percent_encode(const uint8_t *in, size_t len, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    BDS_ASSERT(in != NULL || len == 0);
    BDS_ASSERT(out != NULL || cap == 0);
    size_t need = 0;
    for (size_t i = 0; i < len; i++) need += percent_needs_escape(in[i]) ? 3 : 1;
    if (need > cap) return need;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (percent_needs_escape(in[i])) {
            out[o++] = '%';
            out[o++] = hex[in[i] >> 4];
            out[o++] = hex[in[i] & 0xf];
        } else {
            out[o++] = (char)in[i];
        }
    }
    BDS_ASSERT(o == need);
    return need;
}

static int percent_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

size_t bds__grpc_percent_decode(const char *in, size_t len, uint8_t *out) {
    BDS_ASSERT(in != NULL || len == 0);
    BDS_ASSERT(out != NULL || len == 0);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '%' && i + 2 < len) {
            int hi = percent_hexval(in[i + 1]), lo = percent_hexval(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out[o++] = (uint8_t)(hi << 4 | lo);
                i += 2;
                continue;
            }
        }
        out[o++] = (uint8_t)in[i];
    }
    BDS_ASSERT(o <= len);
    return o;
}

/* ---- request validation ----------------------------------------------------- */

enum {
    REQ_SEEN_METHOD = 1u << 0,
    REQ_SEEN_PATH = 1u << 1,
    REQ_SEEN_CT = 1u << 2,
    REQ_SEEN_TE = 1u << 3,
};
enum {
    REQ_BAD_TOO_BIG = 1u << 0,
    REQ_BAD_METHOD = 1u << 1,
    REQ_BAD_CT = 1u << 2,
    REQ_BAD_TE = 1u << 3,
    REQ_BAD_TIMEOUT = 1u << 4,
    REQ_BAD_ENCODING = 1u << 5,
};

/* RFC 7541 §4.1: a field's size is its name and value lengths plus 32. */
#define REQ_FIELD_OVERHEAD 32u

int32_t bds__grpc_methods_find(const bds__grpc_methods *methods, const char *path, size_t len) {
    BDS_ASSERT(path != NULL || len == 0);
    if (methods == NULL) return -1;
    BDS_ASSERT(methods->paths != NULL || methods->count == 0);
    /* Linear: a server has a handful of methods. Switch to a sorted table when
     * a profile says so. */
    for (uint32_t i = 0; i < methods->count; i++) {
        const char *p = methods->paths[i];
        if (strlen(p) == len && memcmp(p, path, len) == 0) return (int32_t)i;
    }
    return -1;
}

void bds__grpc_req_init(bds__grpc_req_check *rc, const bds__grpc_methods *methods,
                        uint32_t header_bytes_max) {
    BDS_ASSERT(rc != NULL);
    memset(rc, 0, sizeof *rc);
    rc->_methods = methods;
    rc->_header_bytes_max = header_bytes_max != 0 ? header_bytes_max
                                                  : BDS_GRPC_HEADER_BYTES_MAX_DEFAULT;
    rc->_method_index = -1;
    rc->_encoding = BDS__GRPC_ENC_IDENTITY;
    rc->_accept = BDS__GRPC_ENC_BIT(BDS__GRPC_ENC_IDENTITY);
}

static bool req_eq(const uint8_t *a, size_t alen, const char *lit) {
    size_t n = strlen(lit);
    return alen == n && memcmp(a, lit, n) == 0;
}

static bool req_content_type_ok(const uint8_t *v, size_t len) {
    static const char base[] = "application/grpc";
    const size_t n = sizeof base - 1;
    if (len < n) return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = v[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + ('a' - 'A'));
        if (c != (uint8_t)base[i]) return false;
    }
    return len == n || v[n] == '+' || v[n] == ';';
}

bool bds__grpc_req_header(bds__grpc_req_check *rc, const uint8_t *name, size_t namelen,
                          const uint8_t *value, size_t valuelen) {
    BDS_ASSERT(rc != NULL);
    BDS_ASSERT(name != NULL && value != NULL);
    uint64_t sz = (uint64_t)rc->_header_bytes + namelen + valuelen + REQ_FIELD_OVERHEAD;
    rc->_header_bytes = sz > UINT32_MAX ? UINT32_MAX : (uint32_t)sz;
    if (rc->_header_bytes > rc->_header_bytes_max) rc->_bad |= REQ_BAD_TOO_BIG;
    if (rc->_bad & REQ_BAD_TOO_BIG) return false;

    if (req_eq(name, namelen, ":method")) {
        rc->_seen |= REQ_SEEN_METHOD;
        if (!req_eq(value, valuelen, "POST")) rc->_bad |= REQ_BAD_METHOD;
    } else if (req_eq(name, namelen, ":path")) {
        rc->_seen |= REQ_SEEN_PATH;
        rc->_method_index = bds__grpc_methods_find(rc->_methods, (const char *)value, valuelen);
    } else if (req_eq(name, namelen, "content-type")) {
        rc->_seen |= REQ_SEEN_CT;
        if (!req_content_type_ok(value, valuelen)) rc->_bad |= REQ_BAD_CT;
    } else if (req_eq(name, namelen, "te")) {
        rc->_seen |= REQ_SEEN_TE;
        if (!req_eq(value, valuelen, "trailers")) rc->_bad |= REQ_BAD_TE;
    } else if (req_eq(name, namelen, "grpc-timeout")) {
        if (!bds__grpc_timeout_parse((const char *)value, valuelen, &rc->_timeout_ns))
            rc->_bad |= REQ_BAD_TIMEOUT;
    } else if (req_eq(name, namelen, "grpc-encoding")) {
        bds__grpc_enc e = bds__grpc_enc_parse(value, valuelen);
        if (e == BDS__GRPC_ENC_UNKNOWN) rc->_bad |= REQ_BAD_ENCODING;
        else rc->_encoding = (uint8_t)e;
    } else if (req_eq(name, namelen, "grpc-accept-encoding")) {
        rc->_accept |= (uint8_t)bds__grpc_accept_parse(value, valuelen);
    }
    return true;
}

bds__grpc_verdict bds__grpc_req_verdict(const bds__grpc_req_check *rc) {
    BDS_ASSERT(rc != NULL);
    BDS_ASSERT(rc->_header_bytes_max > 0);
    bds__grpc_verdict v = {200, BDS_OK, NULL};
    if (rc->_bad & REQ_BAD_TOO_BIG) {
        v = (bds__grpc_verdict){431, BDS_RESOURCE_EXHAUSTED, "request header list too large"};
    } else if ((rc->_bad & REQ_BAD_METHOD) || !(rc->_seen & REQ_SEEN_METHOD)) {
        v = (bds__grpc_verdict){405, BDS_INTERNAL, "gRPC requires :method POST"};
    } else if ((rc->_bad & REQ_BAD_CT) || !(rc->_seen & REQ_SEEN_CT)) {
        v = (bds__grpc_verdict){415, BDS_INTERNAL, "invalid gRPC request content-type"};
    } else if ((rc->_bad & REQ_BAD_TE) || !(rc->_seen & REQ_SEEN_TE)) {
        v = (bds__grpc_verdict){400, BDS_INTERNAL, "gRPC requires te: trailers"};
    } else if (rc->_bad & REQ_BAD_TIMEOUT) {
        v = (bds__grpc_verdict){200, BDS_INTERNAL, "malformed grpc-timeout"};
    } else if (rc->_bad & REQ_BAD_ENCODING) {
        v = (bds__grpc_verdict){200, BDS_UNIMPLEMENTED,
                                "unsupported grpc-encoding (this server takes " BDS_GRPC_ACCEPT_ENCODING ")"};
    } else if (rc->_method_index < 0) {
        v = (bds__grpc_verdict){200, BDS_UNIMPLEMENTED, "unknown method"};
    }
    return v;
}

int32_t bds__grpc_req_method(const bds__grpc_req_check *rc) {
    BDS_ASSERT(rc != NULL);
    return rc->_method_index;
}

uint64_t bds__grpc_req_timeout_ns(const bds__grpc_req_check *rc) {
    BDS_ASSERT(rc != NULL);
    return rc->_timeout_ns;
}

uint8_t bds__grpc_req_encoding(const bds__grpc_req_check *rc) {
    BDS_ASSERT(rc != NULL);
    return rc->_encoding;
}

unsigned bds__grpc_req_accept(const bds__grpc_req_check *rc) {
    BDS_ASSERT(rc != NULL);
    return rc->_accept | BDS__GRPC_ENC_BIT(rc->_encoding);
}

/* ---- base64 ------------------------------------------------------------------------ */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t bds__base64_encode(const uint8_t *in, size_t len, char *out) {
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    return o;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

size_t bds__base64_decode(const char *in, size_t len, uint8_t *out) {
    /* Padding: up to two '=' at the end, and only to a multiple of 4. */
    size_t pad = 0;
    while (pad < 2 && len > 0 && in[len - 1] == '=') {
        len--;
        pad++;
    }
    if (pad && (len + pad) % 4 != 0) return SIZE_MAX;
    if (len % 4 == 1) return SIZE_MAX;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(in[i]);
        if (v < 0) return SIZE_MAX;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* The bits left over must be zero (a canonical encoding). */
    if (bits && (acc & ((1u << bits) - 1)) != 0) return SIZE_MAX;
    return o;
}
