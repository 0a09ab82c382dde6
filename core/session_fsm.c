/* session_fsm.c — the session lifecycle as a table (docs/SERVICE.md).
 *
 * The table is the only place that knows which transitions exist. The state
 * word is atomic so the EXEC side (and any thread) may read it; the CAS loop
 * makes a transition all-or-nothing, so of several racing callers exactly one
 * wins and the others see the state it left. CLOSED has no outgoing edge:
 * it is final. */
#include "pipeline_int.h"

#define NONE (-1)

static const signed char fsm_table[BDS_STATE__COUNT][BDS_EV__COUNT] = {
    [BDS_STATE_INIT] = {
        [BDS_EV_OPEN] = BDS_STATE_OPEN, [BDS_EV_CLIENT_CLOSE] = NONE, [BDS_EV_SERVER_CLOSE] = NONE,
        [BDS_EV_SHUTDOWN] = NONE, [BDS_EV_DRAINED] = NONE, [BDS_EV_FAIL] = BDS_STATE_CLOSED},
    [BDS_STATE_OPEN] = {
        [BDS_EV_OPEN] = NONE, [BDS_EV_CLIENT_CLOSE] = BDS_STATE_CLIENT_CLOSED,
        [BDS_EV_SERVER_CLOSE] = BDS_STATE_SERVER_CLOSED, [BDS_EV_SHUTDOWN] = BDS_STATE_DRAINING,
        [BDS_EV_DRAINED] = NONE, [BDS_EV_FAIL] = BDS_STATE_CLOSED},
    [BDS_STATE_CLIENT_CLOSED] = {
        [BDS_EV_OPEN] = NONE, [BDS_EV_CLIENT_CLOSE] = NONE, [BDS_EV_SERVER_CLOSE] = BDS_STATE_DRAINING,
        [BDS_EV_SHUTDOWN] = BDS_STATE_DRAINING, [BDS_EV_DRAINED] = NONE, [BDS_EV_FAIL] = BDS_STATE_CLOSED},
    [BDS_STATE_SERVER_CLOSED] = {
        [BDS_EV_OPEN] = NONE, [BDS_EV_CLIENT_CLOSE] = BDS_STATE_DRAINING, [BDS_EV_SERVER_CLOSE] = NONE,
        [BDS_EV_SHUTDOWN] = BDS_STATE_DRAINING, [BDS_EV_DRAINED] = NONE, [BDS_EV_FAIL] = BDS_STATE_CLOSED},
    [BDS_STATE_DRAINING] = {
        [BDS_EV_OPEN] = NONE, [BDS_EV_CLIENT_CLOSE] = NONE, [BDS_EV_SERVER_CLOSE] = NONE,
        [BDS_EV_SHUTDOWN] = NONE, [BDS_EV_DRAINED] = BDS_STATE_CLOSED, [BDS_EV_FAIL] = BDS_STATE_CLOSED},
    [BDS_STATE_CLOSED] = {
        [BDS_EV_OPEN] = NONE, [BDS_EV_CLIENT_CLOSE] = NONE, [BDS_EV_SERVER_CLOSE] = NONE,
        [BDS_EV_SHUTDOWN] = NONE, [BDS_EV_DRAINED] = NONE, [BDS_EV_FAIL] = NONE},
};

int bds__fsm_next(bds_session_state from, enum bds__fsm_event event) {
    BDS_ASSERT((unsigned)from < BDS_STATE__COUNT);
    BDS_ASSERT((unsigned)event < BDS_EV__COUNT);
    return fsm_table[from][event];
}

bool bds__fsm_allowed(bds_session_state from, bds_session_state to) {
    for (int ev = 0; ev < BDS_EV__COUNT; ev++) {
        if (fsm_table[from][ev] == (int)to) return true;
    }
    return false;
}

bool bds__fsm_step(_Atomic uint32_t *state, enum bds__fsm_event event, bds_session_state *from_out) {
    /* acquire: pairs with the release of the CAS that stored this state, so a
     * reader sees what the winner wrote before its transition */
    uint32_t cur = atomic_load_explicit(state, memory_order_acquire);
    for (;;) {
        int next = bds__fsm_next((bds_session_state)cur, event);
        if (next == NONE) return false;
        /* acq_rel: publishes the winner's prior writes; a loser reloads cur */
        if (atomic_compare_exchange_weak_explicit(state, &cur, (uint32_t)next, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            if (from_out) *from_out = (bds_session_state)cur;
            return true;
        }
    }
}

bool bds__reason_set(_Atomic uint32_t *reason, bds_status status) {
    BDS_ASSERT(status != BDS_OK);
    uint32_t none = BDS_OK;
    /* acq_rel: the first reason is published with the state change that follows */
    return atomic_compare_exchange_strong_explicit(reason, &none, (uint32_t)status, memory_order_acq_rel,
                                                   memory_order_acquire);
}

const char *bds_session_state_name(bds_session_state state) {
    static const char *const names[BDS_STATE__COUNT] = {"INIT", "OPEN", "CLIENT_CLOSED", "SERVER_CLOSED",
                                                         "DRAINING", "CLOSED"};
    return (unsigned)state < BDS_STATE__COUNT ? names[state] : "?";
}
