/* services.h — the built-in services: applications of the public API
 * (bidistream/server.h) that bds_server_create registers itself.
 * Nothing here may include more than the public headers, the messages
 * generated from grpc-proto and system headers (tests/services: the
 * services.public_only check). */
#ifndef BDS_SERVICES_H
#define BDS_SERVICES_H

#include <stdint.h>

#include "bidistream/server.h"

/* Registers bidistream.v1.Pipeline/Process and grpc.health.v1.Health, and
 * grpc.testing.TestService when config->interop_service is set. config is
 * the server's copy and lives as long as it. Returns what
 * bds_server_add_method or bds_server_on_stop refused with, or BDS_OK.
 * Thread: bds_server_create's. */
bds_status bds__services_register(bds_server *server, const bds_server_config *config);

/* Each registers its service (services.c calls them). */
bds_status bds__process_register(bds_server *server);
bds_status bds__health_register(bds_server *server, const bds_server_config *config);
bds_status bds__interop_register(bds_server *server, const bds_server_config *config);
bds_status bds__reflection_register(bds_server *server, const bds_server_config *config);

/* The built-in services' FileDescriptorSet (protoc --descriptor_set_out
 * --include_imports of pipeline.proto, health, reflection v1 and v1alpha and,
 * when grpc-proto has it, the interop TestService), embedded at build time
 * (proto/CMakeLists.txt). */
extern const unsigned char bds__builtin_descriptors[];
extern const unsigned long bds__builtin_descriptors_len;

/* Health.Watch calls of server waiting for the serving status to change
 * (held until the stop or their stream's end). Thread: any. For tests. */
uint32_t bds__health_watches(const bds_server *server);

#endif
