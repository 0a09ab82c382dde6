/* services.c — registers the built-in services on a new server. */
#include "services.h"

bds_status bds__services_register(bds_server *server, const bds_server_config *config) {
    bds_status st = bds__process_register(server);
    if (st == BDS_OK) st = bds__health_register(server, config);
    if (st == BDS_OK && config->interop_service) st = bds__interop_register(server, config);
    if (st == BDS_OK && config->reflection) st = bds__reflection_register(server, config);
    return st;
}
