/* test_session_fsm.c — every (state, event) cell of the session table against
 * docs/SERVICE.md (written out again here, independently of the table under test),
 * CLOSED as final, first reason wins, and racing transitions with exactly one
 * winner (this file also runs under TSan: BDS_TEST_TSAN). */
#include <criterion/criterion.h>
#include <pthread.h>

#include "pipeline_int.h"

#define X (-1)
/* docs/SERVICE.md, read row by row. */
static const int spec[BDS_STATE__COUNT][BDS_EV__COUNT] = {
    /*                 OPEN            CLIENT_CLOSE             SERVER_CLOSE             SHUTDOWN            DRAINED           FAIL */
    [BDS_STATE_INIT] = {BDS_STATE_OPEN, X, X, X, X, BDS_STATE_CLOSED},
    [BDS_STATE_OPEN] = {X, BDS_STATE_CLIENT_CLOSED, BDS_STATE_SERVER_CLOSED, BDS_STATE_DRAINING, X, BDS_STATE_CLOSED},
    [BDS_STATE_CLIENT_CLOSED] = {X, X, BDS_STATE_DRAINING, BDS_STATE_DRAINING, X, BDS_STATE_CLOSED},
    [BDS_STATE_SERVER_CLOSED] = {X, BDS_STATE_DRAINING, X, BDS_STATE_DRAINING, X, BDS_STATE_CLOSED},
    [BDS_STATE_DRAINING] = {X, X, X, X, BDS_STATE_CLOSED, BDS_STATE_CLOSED},
    [BDS_STATE_CLOSED] = {X, X, X, X, X, X},
};

Test(session_fsm, every_cell_matches_the_spec_table) {
    for (int st = 0; st < BDS_STATE__COUNT; st++) {
        for (int ev = 0; ev < BDS_EV__COUNT; ev++) {
            cr_assert_eq(bds__fsm_next((bds_session_state)st, (enum bds__fsm_event)ev), spec[st][ev],
                         "state %s event %d", bds_session_state_name((bds_session_state)st), ev);
            _Atomic uint32_t word = (uint32_t)st;
            bds_session_state from = BDS_STATE_CLOSED;
            bool ok = bds__fsm_step(&word, (enum bds__fsm_event)ev, &from);
            cr_assert_eq(ok, spec[st][ev] != X);
            cr_assert_eq(atomic_load(&word), ok ? (uint32_t)spec[st][ev] : (uint32_t)st,
                         "a refused transition leaves the state alone");
            if (ok) cr_assert_eq(from, (bds_session_state)st);
        }
    }
}

Test(session_fsm, allowed_pairs_are_exactly_the_spec_edges) {
    for (int a = 0; a < BDS_STATE__COUNT; a++) {
        for (int b = 0; b < BDS_STATE__COUNT; b++) {
            bool want = false;
            for (int ev = 0; ev < BDS_EV__COUNT; ev++) want |= spec[a][ev] == b;
            cr_assert_eq(bds__fsm_allowed((bds_session_state)a, (bds_session_state)b), want, "%d -> %d", a, b);
        }
    }
}

Test(session_fsm, closed_is_final_for_every_event) {
    _Atomic uint32_t word = BDS_STATE_CLOSED;
    for (int ev = 0; ev < BDS_EV__COUNT; ev++) cr_assert_not(bds__fsm_step(&word, (enum bds__fsm_event)ev, NULL));
    cr_assert_eq(atomic_load(&word), BDS_STATE_CLOSED);
}

Test(session_fsm, every_state_but_closed_can_fail_to_closed) {
    for (int st = 0; st < BDS_STATE_CLOSED; st++) {
        _Atomic uint32_t word = (uint32_t)st;
        cr_assert(bds__fsm_step(&word, BDS_EV_FAIL, NULL));
        cr_assert_eq(atomic_load(&word), BDS_STATE_CLOSED);
    }
}

Test(session_fsm, first_reason_wins) {
    _Atomic uint32_t reason = BDS_OK;
    cr_assert(bds__reason_set(&reason, BDS_E_SHUTDOWN));
    cr_assert_not(bds__reason_set(&reason, BDS_E_PANIC_RECOVERED));
    cr_assert_eq(atomic_load(&reason), BDS_E_SHUTDOWN);
}

Test(session_fsm, state_names_cover_every_state) {
    cr_assert_str_eq(bds_session_state_name(BDS_STATE_INIT), "INIT");
    cr_assert_str_eq(bds_session_state_name(BDS_STATE_CLOSED), "CLOSED");
    cr_assert_str_eq(bds_session_state_name((bds_session_state)42), "?");
}

/* ---- races ---------------------------------------------------------------------- */

#define RACERS 8
#ifdef __SANITIZE_THREAD__
#define ROUNDS 400 /* thread start-up is slow under TSan; 40 rounds still race 8 threads each */
#else
#define ROUNDS 2000
#endif

struct race {
    _Atomic uint32_t state, reason;
    _Atomic uint32_t go;
    _Atomic uint32_t wins;
    _Atomic uint32_t reason_wins;
    enum bds__fsm_event ev[RACERS];
};

static void *racer(void *arg) {
    void **a = arg;
    struct race *r = a[0];
    int id = (int)(intptr_t)a[1];
    while (!atomic_load(&r->go)) {
    }
    if (bds__fsm_step(&r->state, r->ev[id], NULL)) atomic_fetch_add(&r->wins, 1);
    if (bds__reason_set(&r->reason, (bds_status)(1000 + id))) atomic_fetch_add(&r->reason_wins, 1);
    return NULL;
}

/* Races RACERS threads, each applying pick(id) once from `start`; check()
 * judges every round's outcome. */
static void run_race(enum bds__fsm_event (*pick)(int id), uint32_t start, void (*check)(struct race *r, int round)) {
    for (int round = 0; round < ROUNDS / 10; round++) {
        struct race r;
        atomic_init(&r.state, start);
        atomic_init(&r.reason, BDS_OK);
        atomic_init(&r.go, 0);
        atomic_init(&r.wins, 0);
        atomic_init(&r.reason_wins, 0);
        for (int i = 0; i < RACERS; i++) r.ev[i] = pick(i);
        pthread_t t[RACERS];
        void *args[RACERS][2];
        for (int i = 0; i < RACERS; i++) {
            args[i][0] = &r;
            args[i][1] = (void *)(intptr_t)i;
            pthread_create(&t[i], NULL, racer, args[i]);
        }
        atomic_store(&r.go, 1);
        for (int i = 0; i < RACERS; i++) pthread_join(t[i], NULL);
        cr_assert_eq(atomic_load(&r.reason_wins), 1, "exactly one first reason");
        check(&r, round);
    }
}

static enum bds__fsm_event all_fail(int id) {
    (void)id;
    return BDS_EV_FAIL;
}
static enum bds__fsm_event mixed(int id) {
    static const enum bds__fsm_event evs[] = {BDS_EV_FAIL, BDS_EV_CLIENT_CLOSE, BDS_EV_SHUTDOWN, BDS_EV_SERVER_CLOSE};
    return evs[id % 4];
}

static void one_winner(struct race *r, int round) {
    cr_assert_eq(atomic_load(&r->wins), 1, "round %d", round);
    cr_assert_eq(atomic_load(&r->state), BDS_STATE_CLOSED);
}

/* From OPEN with FAIL, CLIENT_CLOSE, SHUTDOWN, SERVER_CLOSE racing: every
 * history ends in CLOSED (some FAIL always follows or precedes), and the
 * number of winners is that history's length: 1 (FAIL first), 2 (X, FAIL)
 * or 3 (half-close, other half-close/shutdown -> DRAINING, FAIL). */
static void legal_history(struct race *r, int round) {
    cr_assert_eq(atomic_load(&r->state), BDS_STATE_CLOSED, "round %d", round);
    uint32_t w = atomic_load(&r->wins);
    cr_assert(w >= 1 && w <= 3, "round %d: winners %u", round, w);
}

/* BDS_TEST_TSAN */
Test(session_fsm, racing_fails_have_exactly_one_winner, .timeout = 120) { run_race(all_fail, BDS_STATE_OPEN, one_winner); }

Test(session_fsm, racing_mixed_events_end_closed_with_a_legal_history, .timeout = 120) {
    run_race(mixed, BDS_STATE_OPEN, legal_history);
}
