/* test_status.c — the status table: names, messages, the gRPC projection of
 * docs/SERVICE.md and the terminal flags. */
#include <criterion/criterion.h>

#include "bidistream/status.h"

Test(status, grpc_codes_project_to_themselves) {
    for (int c = 0; c <= 16; c++) cr_assert_eq(bds_status_grpc((bds_status)c), c);
    cr_assert_str_eq(bds_status_name(BDS_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
}

Test(status, pipeline_errors_map_to_the_spec_wire_statuses) {
    cr_assert_eq(bds_status_grpc(BDS_E_INBOUND_REJECTED), 8);
    cr_assert_eq(bds_status_grpc(BDS_E_OUTBOUND_BACKPRESSURE), 8);
    cr_assert_eq(bds_status_grpc(BDS_E_SHUTDOWN), 14);
    cr_assert_eq(bds_status_grpc(BDS_E_TERMINAL_FAILURE), 13);
    cr_assert_eq(bds_status_grpc(BDS_E_ORDERING_BROKEN), 13);
    cr_assert_eq(bds_status_grpc(BDS_E_PANIC_RECOVERED), 13);
    cr_assert_eq(bds_status_grpc(BDS_E_SESSION_CLOSED), -1, "nothing is sent");
    cr_assert_eq(bds_status_grpc(BDS_E_INBOUND_CLOSED), -1);
    cr_assert_eq(bds_status_grpc(BDS_E_OUTBOUND_CLOSED), -1);
    cr_assert_eq(bds_status_grpc(BDS_E_NONTERMINAL_FAILURE), -1);
    cr_assert_eq(bds_status_grpc((bds_status)777), 13, "unknown values project to INTERNAL");
}

Test(status, terminal_flags_follow_the_seed) {
    cr_assert(bds_status_terminal(BDS_E_ORDERING_BROKEN), "ordering broken is always terminal");
    cr_assert(bds_status_terminal(BDS_E_PANIC_RECOVERED), "panics are always terminal");
    cr_assert(bds_status_terminal(BDS_E_TERMINAL_FAILURE));
    cr_assert(bds_status_terminal(BDS_E_INBOUND_REJECTED));
    cr_assert_not(bds_status_terminal(BDS_E_NONTERMINAL_FAILURE));
    cr_assert_not(bds_status_terminal(BDS_E_OUTBOUND_BACKPRESSURE), "terminal only with fail_fast");
    cr_assert_not(bds_status_terminal(BDS_E_SHUTDOWN));
}

Test(status, every_status_has_a_name_and_a_message) {
    static const bds_status all[] = {
#define ALL(name, value, grpc, terminal, msg) BDS_##name,
        BDS_STATUS_MAP(ALL)
#undef ALL
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        cr_assert_str_neq(bds_status_name(all[i]), "?");
        cr_assert_gt(strlen(bds_status_str(all[i])), 1);
    }
    cr_assert_str_eq(bds_status_str(BDS_E_PANIC_RECOVERED), "bidistream: panic recovered");
    cr_assert_str_eq(bds_status_name((bds_status)555), "?");
}
