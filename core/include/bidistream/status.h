/* bidistream/status.h — one status space for the whole library.
 *
 * Values 0..16 are the gRPC status codes, so a wire status is a cast. Values
 * from 1000 are the pipeline's own errors (the seed's ten) and local errors;
 * bds_status_grpc() projects each onto the status a gRPC client would see. */
#ifndef BIDISTREAM_STATUS_H
#define BIDISTREAM_STATUS_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BDS_BUILDING_LIBRARY)
#define BDS_API __attribute__((visibility("default")))
#else
#define BDS_API
#endif

/* X(name, value, grpc code or -1 for "nothing is sent", terminal, message) */
#define BDS_STATUS_MAP(X)                                                                     \
    X(OK,                     0,  0, false, "ok")                                             \
    X(CANCELLED,              1,  1, false, "cancelled")                                      \
    X(UNKNOWN,                2,  2, false, "unknown error")                                  \
    X(INVALID_ARGUMENT,       3,  3, false, "invalid argument")                               \
    X(DEADLINE_EXCEEDED,      4,  4, false, "deadline exceeded")                              \
    X(NOT_FOUND,              5,  5, false, "not found")                                      \
    X(ALREADY_EXISTS,         6,  6, false, "already exists")                                 \
    X(PERMISSION_DENIED,      7,  7, false, "permission denied")                              \
    X(RESOURCE_EXHAUSTED,     8,  8, false, "resource exhausted")                             \
    X(FAILED_PRECONDITION,    9,  9, false, "failed precondition")                            \
    X(ABORTED,               10, 10, false, "aborted")                                        \
    X(OUT_OF_RANGE,          11, 11, false, "out of range")                                   \
    X(UNIMPLEMENTED,         12, 12, false, "unimplemented")                                  \
    X(INTERNAL,              13, 13, false, "internal error")                                 \
    X(UNAVAILABLE,           14, 14, false, "unavailable")                                    \
    X(DATA_LOSS,             15, 15, false, "data loss")                                      \
    X(UNAUTHENTICATED,       16, 16, false, "unauthenticated")                                \
    /* The pipeline's errors (the seed's ten). */                                             \
    X(E_SESSION_CLOSED,     1000, -1, false, "bidistream: session closed")                    \
    X(E_SHUTDOWN,           1001, 14, false, "bidistream: shutdown in progress")              \
    X(E_INBOUND_CLOSED,     1002, -1, false, "bidistream: inbound flow is closed")            \
    X(E_INBOUND_REJECTED,   1003,  8, true,  "bidistream: inbound admission rejected")        \
    X(E_OUTBOUND_CLOSED,    1004, -1, false, "bidistream: outbound flow closed")              \
    X(E_OUTBOUND_BACKPRESSURE, 1005, 8, false, "bidistream: outbound backpressure")           \
    X(E_TERMINAL_FAILURE,   1006, 13, true,  "bidistream: terminal failure")                  \
    X(E_NONTERMINAL_FAILURE, 1007, -1, false, "bidistream: non-terminal failure")             \
    X(E_ORDERING_BROKEN,    1008, 13, true,  "bidistream: ordering broken")                   \
    X(E_PANIC_RECOVERED,    1009, 13, true,  "bidistream: panic recovered")                   \
    /* Local errors: they never reach the wire unmapped. */                                   \
    X(E_NOMEM,              1100,  8, false, "bidistream: out of memory")                     \
    X(E_AGAIN,              1101,  8, false, "bidistream: try again later")                   \
    X(E_INVALID,            1102,  3, false, "bidistream: invalid argument")

typedef enum bds_status {
#define BDS_STATUS_ENUM(name, value, grpc, terminal, msg) BDS_##name = value,
    BDS_STATUS_MAP(BDS_STATUS_ENUM)
#undef BDS_STATUS_ENUM
} bds_status;

/* The status's constant name ("E_INBOUND_REJECTED"); "?" for a value not in the map. */
BDS_API const char *bds_status_name(bds_status status);
/* A human message ("bidistream: inbound admission rejected"). Never NULL. */
BDS_API const char *bds_status_str(bds_status status);
/* The gRPC status code a client sees for it, or -1 when nothing is sent
 * (session closed, inbound/outbound closed, non-terminal failure). Values not in
 * the map project to INTERNAL (13). */
BDS_API int bds_status_grpc(bds_status status);
/* Whether the error always ends its session (ordering broken, panic, terminal
 * failure, admission rejected). OutboundBackpressure ends it only with fail_fast. */
BDS_API bool bds_status_terminal(bds_status status);

#ifdef __cplusplus
}
#endif
#endif
