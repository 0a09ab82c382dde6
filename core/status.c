/* status.c — the tables behind bidistream/status.h, generated from BDS_STATUS_MAP. */
#include "bidistream/status.h"

struct status_row {
    bds_status value;
    int grpc;
    bool terminal;
    const char *name;
    const char *msg;
};

static const struct status_row status_rows[] = {
#define STATUS_ROW(name, value, grpc, terminal, msg) {BDS_##name, grpc, terminal, #name, msg},
    BDS_STATUS_MAP(STATUS_ROW)
#undef STATUS_ROW
};

static const struct status_row *status_find(bds_status status) {
    for (unsigned i = 0; i < sizeof status_rows / sizeof status_rows[0]; i++) {
        if (status_rows[i].value == status) return &status_rows[i];
    }
    return 0;
}

const char *bds_status_name(bds_status status) {
    const struct status_row *r = status_find(status);
    return r ? r->name : "?";
}

const char *bds_status_str(bds_status status) {
    const struct status_row *r = status_find(status);
    return r ? r->msg : "bidistream: unknown status";
}

int bds_status_grpc(bds_status status) {
    const struct status_row *r = status_find(status);
    return r ? r->grpc : 13;
}

bool bds_status_terminal(bds_status status) {
    const struct status_row *r = status_find(status);
    return r ? r->terminal : false;
}
