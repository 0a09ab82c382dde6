/* reflection.c — grpc.reflection.v1 and v1alpha ServerReflection
 * (docs/SERVICE.md), on the public API only.
 *
 * ServerReflectionInfo is a bidi stream of requests, each answered by one
 * response, in order (a FIFO method). What it knows:
 *   - the services: from the server's own method table
 *     (bds_server_method_path), so a service a user registered is listed
 *     whether or not it brought descriptors;
 *   - the files: the descriptor sets added with bds_server_add_descriptors,
 *     the built-in services' own first (protoc made it at build time from the
 *     same .proto files the code is generated from, and embedded it).
 * A file is answered with every file it imports, transitively: a client
 * then holds all it needs to decode the messages.
 *
 * Nothing is cached: each request unpacks the sets' files (tens of KiB for
 * the built-in ones) and lets them go, so the service holds no memory
 * between requests and needs no teardown. Reflection requests come from
 * tools, rarely; a client flooding them costs CPU like any other request
 * and is bounded like any other stream.
 *
 * v1alpha's messages are v1's under another package, field for field: one
 * generated copy reads and writes both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "services.h"
#include "wire.h"

/* gRPC status codes in ErrorResponse.error_code. */
enum { CODE_NOT_FOUND = 5, CODE_UNIMPLEMENTED = 12 };

/* A server serves at most 64 methods (server.h), so at most 64 services. */
#define REFLECTION_SERVICES_MAX 64

typedef struct file_ref {
    const uint8_t *bytes; /* the serialized FileDescriptorProto, in the server's set */
    size_t len;
    Google__Protobuf__FileDescriptorProto *fd;
    bool sent;            /* already in this response */
} file_ref;

typedef struct pool {
    file_ref *files;
    size_t n, cap;
} pool;

static void pool_free(pool *p) {
    for (size_t i = 0; i < p->n; i++) google__protobuf__file_descriptor_proto__free_unpacked(p->files[i].fd, NULL);
    free(p->files);
}

/* Adds each file of a FileDescriptorSet (field 1, repeated bytes): the slice
 * of the set that is the file, and its unpacked form. The set was checked
 * when it was added; a file that does not unpack now is skipped. */
static bool pool_add_set(pool *p, const uint8_t *set, size_t len) {
    const uint8_t *q = set, *end = set + len;
    while (q < end) {
        uint64_t tag, n;
        if (!wire_varint(&q, end, &tag)) return false;
        if ((tag & 7) != 2 || !wire_varint(&q, end, &n) || n > (uint64_t)(end - q)) return false;
        if (tag >> 3 == 1) {
            Google__Protobuf__FileDescriptorProto *fd =
                google__protobuf__file_descriptor_proto__unpack(NULL, (size_t)n, q);
            if (fd && fd->name) {
                if (p->n == p->cap) {
                    size_t cap = p->cap ? p->cap * 2 : 16;
                    file_ref *f = realloc(p->files, cap * sizeof *f);
                    if (!f) {
                        google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
                        return false;
                    }
                    p->files = f;
                    p->cap = cap;
                }
                p->files[p->n++] = (file_ref){.bytes = q, .len = (size_t)n, .fd = fd};
            } else if (fd) {
                google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
            }
        }
        q += n;
    }
    return true;
}

static bool pool_load(pool *p, const bds_server *server) {
    memset(p, 0, sizeof *p);
    for (uint32_t i = 0; i < bds_server_descriptor_count(server); i++) {
        size_t len;
        const uint8_t *set = bds_server_descriptor_set(server, i, &len);
        if (!pool_add_set(p, set, len)) {
            pool_free(p);
            return false;
        }
    }
    return true;
}

/* The first file of that name (a later set does not replace an earlier one). */
static file_ref *pool_file(pool *p, const char *name) {
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->files[i].fd->name, name) == 0) return &p->files[i];
    return NULL;
}

/* ---- symbols ------------------------------------------------------------------------------ */

/* Whether sym (after its package) names something under message m: m
 * itself, a field, a nested message or enum, recursively. */
static bool message_defines(const Google__Protobuf__DescriptorProto *m, const char *sym) {
    size_t n = strlen(m->name);
    if (strncmp(sym, m->name, n) != 0) return false;
    if (sym[n] == 0) return true;
    if (sym[n] != '.') return false;
    const char *rest = sym + n + 1;
    for (size_t i = 0; i < m->n_field; i++)
        if (strcmp(m->field[i]->name, rest) == 0) return true;
    for (size_t i = 0; i < m->n_enum_type; i++)
        if (strcmp(m->enum_type[i]->name, rest) == 0) return true;
    for (size_t i = 0; i < m->n_nested_type; i++)
        if (message_defines(m->nested_type[i], rest)) return true;
    return false;
}

static bool service_defines(const Google__Protobuf__ServiceDescriptorProto *s, const char *sym) {
    size_t n = strlen(s->name);
    if (strncmp(sym, s->name, n) != 0) return false;
    if (sym[n] == 0) return true;
    if (sym[n] != '.') return false;
    for (size_t i = 0; i < s->n_method; i++)
        if (strcmp(s->method[i]->name, sym + n + 1) == 0) return true;
    return false;
}

/* Whether the file defines sym, a fully-qualified name without a leading
 * dot: a message (nested too), one of its fields, an enum, a service or one
 * of its methods. */
static bool file_defines(const Google__Protobuf__FileDescriptorProto *fd, const char *sym) {
    if (sym[0] == '.') sym++;
    if (fd->package && fd->package[0]) {
        size_t n = strlen(fd->package);
        if (strncmp(sym, fd->package, n) != 0 || sym[n] != '.') return false;
        sym += n + 1;
    }
    for (size_t i = 0; i < fd->n_message_type; i++)
        if (message_defines(fd->message_type[i], sym)) return true;
    for (size_t i = 0; i < fd->n_enum_type; i++)
        if (strcmp(fd->enum_type[i]->name, sym) == 0) return true;
    for (size_t i = 0; i < fd->n_service; i++)
        if (service_defines(fd->service[i], sym)) return true;
    return false;
}

static file_ref *pool_symbol(pool *p, const char *sym) {
    for (size_t i = 0; i < p->n; i++)
        if (file_defines(p->files[i].fd, sym)) return &p->files[i];
    return NULL;
}

/* ---- responses ---------------------------------------------------------------------------- */

/* Appends f and, after it, every file it imports that is not in out yet
 * (each file once: imports may form a diamond). An import missing from the
 * sets is left out; the client asks for it by name and hears NOT_FOUND. */
static bool add_with_imports(pool *p, file_ref *f, ProtobufCBinaryData *out, size_t *n) {
    if (f->sent) return true;
    f->sent = true;
    out[(*n)++] = (ProtobufCBinaryData){.len = f->len, .data = (uint8_t *)f->bytes};
    for (size_t i = 0; i < f->fd->n_dependency; i++) {
        file_ref *d = pool_file(p, f->fd->dependency[i]);
        if (d && !add_with_imports(p, d, out, n)) return false;
    }
    return true;
}

/* The services the server serves: "/pkg.Service/Method" → "pkg.Service",
 * each once, in registration order. Names point into names_buf. */
static size_t served_services(const bds_server *server, char **names, size_t max, char *buf, size_t cap) {
    size_t n = 0, used = 0;
    for (uint32_t i = 0; i < bds_server_method_count(server) && n < max; i++) {
        const char *path = bds_server_method_path(server, i) + 1;
        const char *slash = strchr(path, '/');
        size_t len = slash ? (size_t)(slash - path) : strlen(path);
        bool seen = false;
        for (size_t k = 0; k < n && !seen; k++) seen = strlen(names[k]) == len && memcmp(names[k], path, len) == 0;
        if (seen || used + len + 1 > cap) continue;
        memcpy(buf + used, path, len);
        buf[used + len] = 0;
        names[n++] = buf + used;
        used += len + 1;
    }
    return n;
}

static void reply_message(bds_call *call, const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory for the reflection response");
        return;
    }
    protobuf_c_message_pack(m, buf);
    bds_call_reply_bytes(call, buf, n);
    free(buf);
    bds_call_done(call, BDS_OK, NULL);
}

static void reflection_info(bds_call *call, void *ctx) {
    const bds_server *server = ctx;
    uint32_t len;
    const uint8_t *req_bytes = bds_call_request(call, &len);
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, req_bytes);
    if (!req) {
        bds_call_done(call, BDS_INVALID_ARGUMENT, "malformed ServerReflectionRequest");
        return;
    }
    Grpc__Reflection__V1__ServerReflectionResponse resp = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse files = GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse list = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse ext = GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse err = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    resp.valid_host = req->host;
    resp.original_request = req;

    pool p = {0};
    ProtobufCBinaryData *out = NULL;
    Grpc__Reflection__V1__ServiceResponse svc[REFLECTION_SERVICES_MAX];
    Grpc__Reflection__V1__ServiceResponse *svcp[REFLECTION_SERVICES_MAX];
    char *names[REFLECTION_SERVICES_MAX];
    char names_buf[4096];
    char msg[256];
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES: {
        size_t n = served_services(server, names, REFLECTION_SERVICES_MAX, names_buf, sizeof names_buf);
        for (size_t i = 0; i < n; i++) {
            svc[i] = (Grpc__Reflection__V1__ServiceResponse)GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
            svc[i].name = names[i];
            svcp[i] = &svc[i];
        }
        list.n_service = n;
        list.service = svcp;
        resp.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &list;
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
        if (!pool_load(&p, server)) {
            bds_call_done(call, BDS_INTERNAL, "reflection: a descriptor set does not read");
            grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
            return;
        }
        bool by_name = req->message_request_case ==
                       GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
        bool ext_numbers = req->message_request_case ==
                           GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
        const char *what = by_name ? req->file_by_filename
                           : ext_numbers ? req->all_extension_numbers_of_type
                                         : req->file_containing_symbol;
        file_ref *f = by_name ? pool_file(&p, what) : pool_symbol(&p, what);
        if (!f) {
            snprintf(msg, sizeof msg, "%s not found: %.200s", by_name ? "file" : "symbol", what);
            err.error_code = CODE_NOT_FOUND;
            err.error_message = msg;
            resp.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &err;
        } else if (ext_numbers) {
            /* No extensions are served: the type exists and has none. */
            ext.base_type_name = (char *)(what[0] == '.' ? what + 1 : what);
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            resp.all_extension_numbers_response = &ext;
        } else {
            out = calloc(p.n, sizeof *out);
            size_t n = 0;
            if (!out || !add_with_imports(&p, f, out, &n)) {
                free(out);
                pool_free(&p);
                grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
                bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory for the reflection response");
                return;
            }
            files.n_file_descriptor_proto = n;
            files.file_descriptor_proto = out;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &files;
        }
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        err.error_code = CODE_NOT_FOUND;
        err.error_message = "no extensions are served";
        resp.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &err;
        break;
    default:
        err.error_code = CODE_UNIMPLEMENTED;
        err.error_message = "unknown reflection request";
        resp.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &err;
        break;
    }
    reply_message(call, &resp.base);
    free(out);
    pool_free(&p);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
}

bds_status bds__reflection_register(bds_server *server, const bds_server_config *config) {
    bds_status st = bds_server_add_descriptors(server, bds__builtin_descriptors, bds__builtin_descriptors_len, NULL);
    bds_options fifo = config->options;
    fifo.inbound.ordering.mode = BDS_ORDERING_FIFO;
    bds_method m = {.size = sizeof m,
                    .path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    .handler = reflection_info,
                    .handler_ctx = server,
                    .options = &fifo,
                    .kind = BDS_METHOD_BIDI};
    if (st == BDS_OK) st = bds_server_add_method(server, &m, NULL);
    m.path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
    if (st == BDS_OK) st = bds_server_add_method(server, &m, NULL);
    return st;
}
