/* test_pipeline.c — scenario tests of the pipeline: ordering, each
 * backpressure policy, the token protocol (including the GRANT race, scripted
 * message by message), retries on a fake clock, panics, failures, half-close,
 * shutdown, cancel, deadline, the Sender's policies, and the allocation-free
 * steady state. Every test ends in sim_free(), which asserts that no session,
 * call or key leaked. */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../expect_misuse.h"
#include "mem.h"
#include "sim.h"

#define MS 1000000ULL

static bds_options opts_keyed(uint32_t cap, bds_backpressure_policy pol) {
    bds_options o = bds_default_options();
    o.inbound.backpressure.policy = pol;
    o.inbound.backpressure.capacity = cap;
    o.inbound.backpressure.queue_capacity = 0;
    return o;
}

static int pending_index_of(sim *S, uint64_t seq) {
    for (uint32_t i = 0; i < S->n_pending; i++) {
        sim_msg *m = bds_call_payload(S->pending[i]);
        if (m->seq == seq) return (int)i;
    }
    return -1;
}

static void complete_seq(sim *S, uint64_t seq, bds_status st) {
    int k = pending_index_of(S, seq);
    cr_assert(k >= 0, "seq %lu is not running", (unsigned long)seq);
    sim_complete(S, (uint32_t)k, st, false);
    sim_settle(S);
}

Test(pipeline, fifo_single_order_runs_one_at_a_time_in_arrival_order) {
    sim *S = sim_new(2, 1);
    bds_options o = bds_default_options();
    o.inbound.ordering.mode = BDS_ORDERING_FIFO;
    int s = sim_open(S, 0, &o);
    const char *keys[] = {"a", "b", "c"};
    for (uint64_t i = 0; i < 30; i++) cr_assert_eq(sim_send(S, s, keys[i % 3], i, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    for (uint64_t i = 0; i < 30; i++) {
        cr_assert_eq(S->n_pending, 1, "FIFO runs exactly one message at a time");
        complete_seq(S, i, BDS_OK);
    }
    for (uint32_t i = 0; i < S->n_starts; i++) cr_assert_eq(S->starts[i].seq, i);
    cr_assert_eq(S->sessions[s].n_written, 0);
    sim_free(S);
}

Test(pipeline, keyed_same_key_sequential_other_keys_parallel) {
    sim *S = sim_new(2, 2);
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 5; i++) {
        cr_assert_eq(sim_send(S, s, "A", i, SIM_ASYNC), BDS_OK);
        cr_assert_eq(sim_send(S, s, "B", 100 + i, SIM_ASYNC), BDS_OK);
    }
    sim_settle(S);
    cr_assert_eq(S->n_pending, 2, "one running per key");
    cr_assert_neq(pending_index_of(S, 0), -1);
    cr_assert_neq(pending_index_of(S, 100), -1);
    complete_seq(S, 100, BDS_OK);
    cr_assert_neq(pending_index_of(S, 101), -1, "B's successor runs when B's head finishes");
    cr_assert_neq(pending_index_of(S, 0), -1, "A is unaffected");
    for (uint64_t i = 0; i < 5; i++) complete_seq(S, i, BDS_OK);
    for (uint64_t i = 1; i < 5; i++) complete_seq(S, 100 + i, BDS_OK);
    /* Within each key, starts are in arrival order. */
    uint64_t next_a = 0, next_b = 100;
    for (uint32_t i = 0; i < S->n_starts; i++) {
        if (S->starts[i].seq < 100) cr_assert_eq(S->starts[i].seq, next_a++);
        else cr_assert_eq(S->starts[i].seq, next_b++);
    }
    cr_assert_eq(next_a, 5);
    cr_assert_eq(next_b, 105);
    sim_free(S);
}

Test(pipeline, keys_spread_over_pipelines_run_where_they_hash) {
    sim *S = sim_new(4, 3);
    int s = sim_open(S, 1, NULL);
    char key[8];
    for (uint64_t i = 0; i < 64; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)i);
        cr_assert_eq(sim_send(S, s, key, i, SIM_OK), BDS_OK);
    }
    sim_settle(S);
    uint32_t used[4] = {0};
    for (uint32_t i = 0; i < S->n_starts; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)S->starts[i].seq);
        uint32_t want = bds_pipeline_key_shard(S->pipes[0], key, (uint32_t)strlen(key));
        cr_assert_eq(S->starts[i].pipe, want, "a key runs on the pipeline it hashes to");
        used[want]++;
    }
    for (int i = 0; i < 4; i++) cr_assert_gt(used[i], 0, "64 keys reach every one of 4 pipelines");
    sim_free(S);
}

Test(pipeline, ordering_capacity_exhausted_rejects_with_resource_exhausted) {
    sim *S = sim_new(1, 4);
    bds_options o = bds_default_options();
    o.inbound.ordering.capacity = 2;
    int s = sim_open(S, 0, &o);
    cr_assert_eq(sim_send(S, s, "k", 0, SIM_ASYNC), BDS_OK); /* head, running */
    cr_assert_eq(sim_send(S, s, "k", 1, SIM_ASYNC), BDS_OK); /* waiting 1 */
    cr_assert_eq(sim_send(S, s, "k", 2, SIM_ASYNC), BDS_OK); /* waiting 2 */
    cr_assert_eq(sim_send(S, s, "other", 3, SIM_ASYNC), BDS_OK, "another key's head does not wait");
    cr_assert_eq(sim_send(S, s, "k", 4, SIM_ASYNC), BDS_E_INBOUND_REJECTED);
    sim_settle(S);
    sim_session *ss = &S->sessions[s];
    cr_assert(ss->closed);
    cr_assert_eq(ss->close_status, BDS_E_INBOUND_REJECTED);
    cr_assert_eq(bds_status_grpc(ss->close_status), 8);
    cr_assert_eq(sim_send(S, s, "k", 5, SIM_OK), BDS_E_SESSION_CLOSED);
    sim_free(S);
}

Test(pipeline, hard_reject_when_tokens_exhausted) {
    sim *S = sim_new(2, 5);
    bds_options o = opts_keyed(2, BDS_BP_HARD_REJECT);
    int s = sim_open(S, 0, &o);
    cr_assert_eq(sim_send(S, s, "A", 0, SIM_ASYNC), BDS_OK);
    cr_assert_eq(sim_send(S, s, "B", 1, SIM_ASYNC), BDS_OK);
    cr_assert_eq(sim_send(S, s, "A", 2, SIM_ASYNC), BDS_OK, "a busy key's successor needs no token");
    sim_check_tokens(S);
    cr_assert_eq(sim_send(S, s, "C", 3, SIM_ASYNC), BDS_E_INBOUND_REJECTED);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].close_status, BDS_E_INBOUND_REJECTED);
    sim_free(S);
}

Test(pipeline, queue_policy_waits_for_a_token_then_runs) {
    sim *S = sim_new(2, 6);
    bds_options o = opts_keyed(1, BDS_BP_QUEUE);
    o.inbound.backpressure.queue_capacity = 1;
    int s = sim_open(S, 0, &o);
    bds_session *ses = S->sessions[s].s;
    cr_assert_eq(sim_send(S, s, "A", 0, SIM_ASYNC), BDS_OK);
    cr_assert_eq(bds_session_inbound_room(ses), 1, "one queue slot left");
    cr_assert_eq(sim_send(S, s, "B", 1, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1, "B waits for A's token");
    cr_assert_eq(bds_session_inbound_room(ses), 0);
    sim_check_tokens(S);
    complete_seq(S, 0, BDS_OK);
    cr_assert_neq(pending_index_of(S, 1), -1, "B runs once A returns the token");
    cr_assert_eq(S->sessions[s].ready_calls, 1, "the transport is told room reopened");
    sim_check_tokens(S);
    cr_assert_eq(sim_send(S, s, "C", 2, SIM_ASYNC), BDS_OK);
    cr_assert_eq(sim_send(S, s, "D", 3, SIM_ASYNC), BDS_E_INBOUND_REJECTED, "queue_capacity 1 is full");
    sim_free(S);
}

Test(pipeline, read_ahead_shuts_inbound_room_until_waiting_messages_start) {
    sim *S = sim_new(1, 61);
    bds_options o = bds_default_options();
    o.inbound.read_ahead = 3;
    int s = sim_open(S, 0, &o);
    bds_session *ses = S->sessions[s].s;
    /* One key: the first runs, the next three wait behind it. */
    for (uint64_t i = 0; i < 4; i++) cr_assert_eq(sim_send(S, s, "k", i, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1);
    cr_assert_eq(bds_session_inbound_room(ses), 0, "three wait unstarted: the read-ahead is reached");
    /* Still a room signal, never a rejection: a transport that sends anyway is served. */
    cr_assert_eq(sim_send(S, s, "k", 4, SIM_ASYNC), BDS_OK);
    complete_seq(S, 0, BDS_OK);
    cr_assert_eq(bds_session_inbound_room(ses), 0, "four waited, three still do");
    cr_assert_eq(S->sessions[s].ready_calls, 0);
    complete_seq(S, 1, BDS_OK);
    cr_assert_eq(bds_session_inbound_room(ses), 1, "two wait: room for one");
    cr_assert_eq(S->sessions[s].ready_calls, 1, "the transport is told room reopened");
    for (uint64_t i = 2; i < 5; i++) complete_seq(S, i, BDS_OK);
    cr_assert_eq(S->n_starts, 5);
    for (uint32_t i = 0; i < S->n_starts; i++) cr_assert_eq(S->starts[i].seq, i, "the key's order is kept");
    sim_free(S);
}

Test(pipeline, read_ahead_is_not_a_hard_reject_bound) {
    sim *S = sim_new(1, 62);
    bds_options o = opts_keyed(8, BDS_BP_HARD_REJECT);
    o.inbound.read_ahead = 1;
    int s = sim_open(S, 0, &o);
    bds_session *ses = S->sessions[s].s;
    for (uint64_t i = 0; i < 4; i++) cr_assert_eq(sim_send(S, s, "k", i, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_gt(bds_session_inbound_room(ses), 0, "hard-reject rejects at its capacities, not at the read-ahead");
    for (uint64_t i = 0; i < 4; i++) complete_seq(S, i, BDS_OK);
    sim_free(S);
}

Test(pipeline, soft_allow_runs_over_capacity_and_signal_counts) {
    sim *S = sim_new(1, 7);
    bds_options o = opts_keyed(1, BDS_BP_SOFT_ALLOW);
    int s = sim_open(S, 0, &o);
    bds_options o2 = opts_keyed(1, BDS_BP_SOFT_ALLOW_SIGNAL);
    int s2 = sim_open(S, 0, &o2);
    for (uint64_t i = 0; i < 3; i++) {
        char k[2] = {(char)('a' + i), 0};
        cr_assert_eq(sim_send(S, s, k, i, SIM_ASYNC), BDS_OK);
        cr_assert_eq(sim_send(S, s2, k, 10 + i, SIM_ASYNC), BDS_OK);
    }
    sim_settle(S);
    cr_assert_eq(S->n_pending, 6, "soft policies run everything");
    cr_assert_eq(S->pressure, 2, "two runs over capacity in the signalling session");
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s2].s, &st);
    cr_assert_eq(st.pressure_signals, 2);
    cr_assert_eq(st.executing, 3);
    sim_check_tokens(S);
    sim_free(S);
}

static bool started_pressured(sim *S, int session, uint64_t seq) {
    for (uint32_t i = 0; i < S->n_starts; i++)
        if (S->starts[i].session == session && S->starts[i].seq == seq) return S->starts[i].pressured;
    cr_assert_fail("seq %lu of session %d never started", (unsigned long)seq, session);
    return false;
}

/* SOFT_ALLOW_SIGNAL signals: the callback gets the stream and the message,
 * and the handler of a message run over capacity sees it (so it can tell its
 * client); SOFT_ALLOW marks nothing. */
Test(pipeline, soft_allow_signal_reaches_the_handler_and_the_callback_with_its_call) {
    sim *S = sim_new(2, 8);
    bds_options o = opts_keyed(1, BDS_BP_SOFT_ALLOW_SIGNAL);
    int s = sim_open(S, 1, &o);
    bds_options quiet = opts_keyed(1, BDS_BP_SOFT_ALLOW);
    int q = sim_open(S, 0, &quiet);
    cr_assert_eq(sim_send(S, s, "a", 1, SIM_ASYNC), BDS_OK); /* the one real token */
    cr_assert_eq(S->pressure, 0);
    cr_assert_eq(sim_send(S, s, "b", 2, SIM_ASYNC), BDS_OK); /* over capacity */
    cr_assert_eq(S->pressure, 1);
    cr_assert_eq(S->last_pressure.session, s, "the callback names the stream");
    cr_assert_eq(S->last_pressure.seq, 2, "and the message");
    cr_assert_eq(S->last_pressure.direction, BDS_INBOUND);
    cr_assert_eq(S->last_pressure.in_use, 2);
    cr_assert_eq(S->last_pressure.capacity, 1);
    cr_assert_eq(sim_send(S, s, "b", 3, SIM_ASYNC), BDS_OK); /* behind 2, on its key's soft token */
    cr_assert_eq(sim_send(S, s, "a", 4, SIM_ASYNC), BDS_OK); /* behind 1, on the real token */
    cr_assert_eq(S->pressure, 1, "one signal per token taken over capacity");
    for (uint64_t i = 1; i <= 2; i++) cr_assert_eq(sim_send(S, q, i == 1 ? "a" : "b", i, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_not(started_pressured(S, s, 1));
    cr_assert(started_pressured(S, s, 2), "the handler sees it was admitted over capacity");
    for (uint32_t i = 0; i < S->n_pending;) {
        sim_msg *m = bds_call_payload(S->pending[i]);
        if (m->session == s) {
            sim_complete(S, i, BDS_OK, false);
            sim_settle(S);
            i = 0;
        } else {
            i++;
        }
    }
    cr_assert(started_pressured(S, s, 3), "a later message on the soft token runs over capacity too");
    cr_assert_not(started_pressured(S, s, 4));
    cr_assert_not(started_pressured(S, q, 2), "soft-allow marks nothing");
    cr_assert_eq(S->pressure, 1);
    sim_free(S);
}

Test(pipeline, soft_allow_signal_outbound_calls_back_without_a_call) {
    sim *S = sim_new(1, 9);
    bds_options o = bds_default_options();
    o.outbound.backpressure.policy = BDS_BP_SOFT_ALLOW_SIGNAL;
    o.outbound.backpressure.capacity = 1;
    o.outbound.backpressure.queue_capacity = 0;
    S->auto_ack_replies = false;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_OK);
    m->replies = 2;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->pressure, 1);
    cr_assert_eq(S->last_pressure.direction, BDS_OUTBOUND);
    cr_assert_eq(S->last_pressure.seq, -1);
    cr_assert_eq(S->last_pressure.session, s);
    cr_assert_not(started_pressured(S, s, 1), "inbound was not over capacity");
    sim_free(S);
}

/* docs/ARCHITECTURE.md race: A's key queue on K empties before B's EXEC arrives, so K
 * returns the token; home must hand it straight to B (GRANT), and a third key
 * must not be able to take it in between. */
Test(pipeline, grant_race_token_goes_to_successor_not_the_pool) {
    sim *S = sim_new(2, 8);
    bds_options o = opts_keyed(1, BDS_BP_HARD_REJECT);
    int s = sim_open(S, 0, &o);
    /* Find a key that executes on pipeline 1 while home is 0. */
    char key[8] = "x0";
    for (int i = 0; bds_pipeline_key_shard(S->pipes[0], key, 2) != 1; i++) key[1] = (char)('0' + i);
    cr_assert_eq(sim_send(S, s, key, 1, SIM_ASYNC), BDS_OK);
    cr_assert(sim_deliver_one(S, 0, 1)); /* EXEC(A) reaches K: A runs */
    cr_assert_eq(S->n_pending, 1);
    cr_assert_eq(sim_send(S, s, key, 2, SIM_ASYNC), BDS_OK); /* EXEC(B) stays in flight */
    sim_complete(S, 0, BDS_OK, false);                       /* A finishes on K */
    sim_run_pipe(S, 1);                                      /* K: DONE(A, returned) */
    cr_assert(sim_deliver_one(S, 1, 0));                     /* home: key still busy -> GRANT(B) */
    sim_check_tokens(S);
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.tokens_held, 1, "the token stayed with the key");
    cr_assert_eq(sim_send(S, s, "other", 3, SIM_ASYNC), BDS_E_INBOUND_REJECTED,
                 "no token leaked to the pool for another key");
    sim_free(S);
}

Test(pipeline, grant_race_successor_runs_after_grant) {
    sim *S = sim_new(2, 9);
    bds_options o = opts_keyed(1, BDS_BP_QUEUE);
    int s = sim_open(S, 0, &o);
    char key[8] = "y0";
    for (int i = 0; bds_pipeline_key_shard(S->pipes[0], key, 2) != 1; i++) key[1] = (char)('0' + i);
    cr_assert_eq(sim_send(S, s, key, 1, SIM_ASYNC), BDS_OK);
    cr_assert(sim_deliver_one(S, 0, 1));
    cr_assert_eq(sim_send(S, s, key, 2, SIM_ASYNC), BDS_OK);
    cr_assert_eq(sim_send(S, s, "zz", 3, SIM_ASYNC), BDS_OK); /* queued for a token */
    sim_complete(S, 0, BDS_OK, false);
    sim_run_pipe(S, 1);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1);
    cr_assert_neq(pending_index_of(S, 2), -1, "the successor ran, before the queued key");
    complete_seq(S, 2, BDS_OK);
    cr_assert_neq(pending_index_of(S, 3), -1, "then the queued key got the token");
    sim_check_tokens(S);
    sim_free(S);
}

Test(pipeline, retries_follow_backoff_on_the_fake_clock_then_terminal) {
    sim *S = sim_new(1, 10);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 2;
    o.retry.backoff_ns = 10 * MS;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 7, SIM_FAIL);
    m->fails = 100;
    bds_status st;
    sim_send_msg(S, m, &st);
    cr_assert_eq(st, BDS_OK);
    uint64_t t0 = S->now;
    sim_settle(S);
    cr_assert_eq(S->n_starts, 1);
    cr_assert_eq(bds_pipeline_next_deadline(S->pipes[0]), t0 + 10 * MS, "retry waits the backoff");
    sim_advance(S, 10 * MS - 1);
    cr_assert_eq(S->n_starts, 1, "not before the backoff");
    sim_advance(S, 1);
    cr_assert_eq(S->n_starts, 2);
    cr_assert_eq(S->starts[1].attempt, 2);
    sim_advance(S, 10 * MS);
    cr_assert_eq(S->n_starts, 3, "max_attempts 2 = two retries = three runs");
    sim_advance(S, 100 * MS);
    cr_assert_eq(S->n_starts, 3);
    sim_session *ss = &S->sessions[s];
    cr_assert(ss->closed);
    cr_assert_eq(ss->close_status, BDS_UNAVAILABLE, "the handler's status goes on the wire");
    cr_assert_str_eq(ss->close_msg, "scripted failure");
    sim_free(S);
}

Test(pipeline, retry_succeeds_within_budget_and_is_counted) {
    sim *S = sim_new(1, 11);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 3;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 2;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 3);
    bds_session_stats ss;
    bds_session_get_stats(S->sessions[s].s, &ss);
    cr_assert_eq(ss.retried, 2);
    cr_assert_eq(ss.completed, 1);
    cr_assert_eq(bds_session_get_state(S->sessions[s].s), BDS_STATE_OPEN);
    sim_free(S);
}

Test(pipeline, zero_retry_budget_runs_once) {
    sim *S = sim_new(1, 12);
    int s = sim_open(S, 0, NULL);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 1;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 1);
    cr_assert_eq(S->sessions[s].close_status, BDS_UNAVAILABLE);
    sim_free(S);
}

Test(pipeline, panic_is_terminal_for_its_session_only) {
    sim *S = sim_new(2, 13);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 5;
    int bad = sim_open(S, 0, &o);
    int good = sim_open(S, 0, NULL);
    cr_assert_eq(sim_send(S, bad, "k", 1, SIM_PANIC), BDS_OK);
    cr_assert_eq(sim_send(S, bad, "k", 2, SIM_OK), BDS_OK);
    cr_assert_eq(sim_send(S, good, "k", 3, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->sessions[bad].close_status, BDS_E_PANIC_RECOVERED);
    cr_assert_eq(bds_status_grpc(S->sessions[bad].close_status), 13);
    cr_assert_str_eq(S->sessions[bad].close_msg, "scripted panic");
    uint32_t runs_of_1 = 0, runs_of_2 = 0;
    for (uint32_t i = 0; i < S->n_starts; i++) {
        runs_of_1 += S->starts[i].seq == 1;
        runs_of_2 += S->starts[i].seq == 2;
    }
    cr_assert_eq(runs_of_1, 1, "a panic is never retried");
    cr_assert_eq(runs_of_2, 0, "the rest of the session is dropped");
    cr_assert_not(S->sessions[good].closed);
    cr_assert_eq(sim_send(S, good, "k", 4, SIM_OK), BDS_OK, "other sessions keep working");
    sim_settle(S);
    sim_free(S);
}

/* A key whose EXEC pipeline is not pipeline 0 (of two). */
static const char *key_away_from_0(sim *S) {
    static char key[16];
    for (int i = 0;; i++) {
        snprintf(key, sizeof key, "away%d", i);
        if (bds_pipeline_key_shard(S->pipes[0], key, (uint32_t)strlen(key)) == 1) return key;
    }
}

/* A panic in a handler run by another pipeline than its session's home ends
 * that session like any panic. Before, the Engine took "this thread runs the
 * call's EXEC pipeline" to mean "its port's ctx is home's", which is true on
 * no other shard of a server: bds_call_panic aborted the process whenever
 * the key's shard was not the connection's (about half the time with 2
 * shards), although a panic is never fatal to the process. */
Test(pipeline, panic_on_a_key_run_by_another_pipeline_ends_its_session_only) {
    sim *S = sim_new(2, 21);
    int bad = sim_open(S, 0, NULL);
    int good = sim_open(S, 0, NULL);
    const char *key = key_away_from_0(S);
    cr_assert_eq(sim_send(S, bad, key, 1, SIM_PANIC), BDS_OK);
    cr_assert_eq(sim_send(S, good, key, 2, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->starts[0].pipe, 1, "the handler ran away from home");
    cr_assert_eq(S->sessions[bad].close_status, BDS_E_PANIC_RECOVERED);
    cr_assert_str_eq(S->sessions[bad].close_msg, "scripted panic");
    cr_assert_not(S->sessions[good].closed, "the other session lives on");
    cr_assert_eq(S->sessions[good].n_written, 0);
    sim_free(S);
}

/* The empty key (no key resolver: one order per stream) runs on its
 * session's home, so keyless streams spread with their connections. Before,
 * its hash was 0 and every keyless message of every connection ran on
 * pipeline 0. */
Test(pipeline, the_empty_key_runs_at_home) {
    sim *S = sim_new(2, 26);
    for (uint32_t home = 0; home < 2; home++) {
        int s = sim_open(S, home, NULL);
        cr_assert_eq(sim_send(S, s, "", 1, SIM_OK), BDS_OK);
        sim_settle(S);
        cr_assert_eq(S->starts[S->n_starts - 1].pipe, home, "home %u: ran on %u", home, S->starts[S->n_starts - 1].pipe);
        cr_assert_eq(bds_pipeline_key_shard(S->pipes[home], "", 0), home);
    }
    sim_free(S);
}

/* A handler's pending call sees its session close at once, on any thread
 * (the CANCEL to its pipeline may not have arrived yet), whatever closed it. */
Test(pipeline, a_pending_call_sees_its_session_close) {
    sim *S = sim_new(2, 27);
    int s = sim_open(S, 0, NULL);
    cr_assert_eq(sim_send(S, s, key_away_from_0(S), 1, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1);
    bds_call *call = S->pending[0];
    sim_switch(S, SIM_FOREIGN);
    cr_assert_not(bds_call_cancelled(call), "open: not cancelled");
    sim_home(S, s);
    bds_session_cancel(S->sessions[s].s);
    sim_switch(S, 1);
    cr_assert(bds_call_cancelled(call), "cancelled, seen from the key's pipeline before its CANCEL arrives");
    sim_settle(S);
    cr_assert(bds_call_cancelled(call));
    sim_free(S); /* completes the call */
}

/* ---- misuse of the call API: a message that names the call, every time ---- */

static void done_twice_in_the_handler(void) {
    sim *S = sim_new(2, 22);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, key_away_from_0(S), 1, SIM_DONE_TWICE);
    sim_settle(S);
}

static void reply_after_done_in_the_handler(void) {
    sim *S = sim_new(2, 23);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, "k", 1, SIM_REPLY_AFTER_DONE);
    sim_settle(S);
}

/* A call left pending by its handler, on pipeline 1's key. */
static bds_call *pending_call(sim **out) {
    sim *S = sim_new(2, 24);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, key_away_from_0(S), 1, SIM_ASYNC);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1);
    *out = S;
    return S->pending[0];
}

static void done_twice_from_a_thread(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, SIM_FOREIGN);
    bds_call_done(call, BDS_OK, NULL);
    bds_call_done(call, BDS_OK, NULL); /* before EXEC saw the first */
}

static void done_again_after_the_call_went_home(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_complete(S, 0, BDS_OK, true);
    sim_settle(S); /* home has freed it */
    sim_switch(S, SIM_FOREIGN);
    bds_call_done(call, BDS_OK, NULL);
}

static void reply_after_done_from_a_thread(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_complete(S, 0, BDS_OK, true);
    sim_settle(S);
    sim_switch(S, SIM_FOREIGN);
    sim_reply *r = calloc(1, sizeof *r);
    bds_call_reply(call, &r->r);
}

static void panic_outside_the_handler(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, 1); /* even on its own pipeline's thread */
    bds_call_panic(call, "late");
}

Test(pipeline, done_twice_in_the_handler_is_named) { expect_misuse(done_twice_in_the_handler, "bds_call_done"); }

Test(pipeline, done_twice_from_a_thread_is_named) { expect_misuse(done_twice_from_a_thread, "bds_call_done"); }

Test(pipeline, done_after_the_call_went_home_is_named) {
    expect_misuse(done_again_after_the_call_went_home, "bds_call_done");
}

Test(pipeline, reply_after_done_in_the_handler_is_named) {
    expect_misuse(reply_after_done_in_the_handler, "bds_call_reply");
}

Test(pipeline, reply_after_done_from_a_thread_is_named) {
    expect_misuse(reply_after_done_from_a_thread, "bds_call_reply");
}

Test(pipeline, panic_outside_the_handler_is_named) { expect_misuse(panic_outside_the_handler, "bds_call_panic"); }

/* Runs a message that fails every attempt with status on a fresh session
 * (3 retries allowed, failures not terminal); returns how often it ran. */
static uint32_t runs_of_a_failure(bds_status status, uint32_t retryable, bool ask) {
    sim *S = sim_new(1, 60);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 3;
    o.retry.retryable = retryable;
    o.inbound.failures_terminal = false;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 100;
    m->fail_status = status;
    m->ask_retry = ask;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    uint32_t runs = S->n_starts;
    bds_session_stats ss;
    bds_session_get_stats(S->sessions[s].s, &ss);
    cr_assert_eq(ss.retried, runs - 1);
    sim_free(S);
    return runs;
}

Test(pipeline, only_retryable_failures_are_retried) {
    static const bds_status never[] = {BDS_CANCELLED, BDS_INVALID_ARGUMENT, BDS_INTERNAL, BDS_NOT_FOUND,
                                       BDS_UNKNOWN, BDS_DEADLINE_EXCEEDED, BDS_PERMISSION_DENIED,
                                       BDS_FAILED_PRECONDITION, BDS_UNAUTHENTICATED, BDS_E_NONTERMINAL_FAILURE,
                                       BDS_E_TERMINAL_FAILURE, BDS_E_SESSION_CLOSED};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        cr_assert_eq(runs_of_a_failure(never[i], BDS_RETRYABLE_DEFAULT, false), 1, "%s is not retried by default",
                     bds_status_name(never[i]));
    static const bds_status retried[] = {BDS_UNAVAILABLE, BDS_ABORTED, BDS_RESOURCE_EXHAUSTED,
                                         BDS_E_OUTBOUND_BACKPRESSURE /* RESOURCE_EXHAUSTED */};
    for (size_t i = 0; i < sizeof retried / sizeof retried[0]; i++)
        cr_assert_eq(runs_of_a_failure(retried[i], BDS_RETRYABLE_DEFAULT, false), 4, "%s is retried by default",
                     bds_status_name(retried[i]));
    cr_assert_eq(runs_of_a_failure(BDS_INTERNAL, 1u << BDS_INTERNAL, false), 4, "the mask decides");
    cr_assert_eq(runs_of_a_failure(BDS_UNAVAILABLE, 1u << BDS_INTERNAL, false), 1);
    cr_assert_eq(runs_of_a_failure(BDS_UNAVAILABLE, 0, false), 1, "an empty mask retries nothing by itself");
}

Test(pipeline, a_failure_the_handler_marks_retryable_is_retried_and_ends_with_its_own_status) {
    cr_assert_eq(runs_of_a_failure(BDS_INVALID_ARGUMENT, 0, true), 4);
    cr_assert_eq(runs_of_a_failure(BDS_E_NONTERMINAL_FAILURE, BDS_RETRYABLE_DEFAULT, true), 4);
    sim *S = sim_new(1, 61);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 1;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 100;
    m->fail_status = BDS_INVALID_ARGUMENT;
    m->ask_retry = true;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 2);
    cr_assert_eq(S->sessions[s].close_status, BDS_INVALID_ARGUMENT, "spent: the status it failed with");
    sim_free(S);
}

static void retry_with_ok(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, SIM_FOREIGN);
    bds_call_retry(call, BDS_OK, NULL);
}

static void retry_after_done(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, SIM_FOREIGN);
    bds_call_done(call, BDS_OK, NULL);
    bds_call_retry(call, BDS_UNAVAILABLE, NULL);
}

Test(pipeline, retry_with_a_success_is_named) { expect_misuse(retry_with_ok, "bds_call_retry"); }
Test(pipeline, retry_after_done_is_named) { expect_misuse(retry_after_done, "bds_call_retry"); }

/* With retries on, an attempt's replies wait with its call: a failed
 * attempt's are dropped, a successful one's sent, none twice. */
Test(pipeline, replies_of_failed_attempts_are_dropped_never_sent_twice) {
    sim *S = sim_new(2, 62);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 3;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, key_away_from_0(S), 1, SIM_FAIL);
    m->fails = 2;
    m->replies = 3;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 3);
    cr_assert_eq(S->sessions[s].n_written, 3, "the successful attempt's three, once");
    cr_assert_eq(S->sessions[s].dropped_replies, 6, "the failed attempts' six, dropped through ops->drop");
    /* spent: nothing of it is sent */
    sim_msg *f = sim_msg_new(s, "f", 2, SIM_FAIL);
    f->fails = 100;
    f->replies = 2;
    sim_send_msg(S, f, &st);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 3);
    cr_assert_eq(S->sessions[s].dropped_replies, 6 + 8);
    cr_assert_eq(S->sessions[s].close_status, BDS_UNAVAILABLE);
    sim_free(S);
}

/* Held replies made on another thread go out when the attempt succeeds, in
 * the order they were made, ahead of the call's end. */
Test(pipeline, held_replies_of_an_async_attempt_go_out_when_it_succeeds) {
    sim *S = sim_new(2, 63);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 1;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, key_away_from_0(S), 1, SIM_ASYNC);
    m->replies = 2;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 0, "held while the attempt runs");
    bds_call *call = S->pending[0];
    sim_switch(S, SIM_FOREIGN);
    for (uint64_t i = 0; i < 3; i++) {
        sim_reply *r = calloc(1, sizeof *r);
        r->seq = 100 + i;
        r->session = s;
        cr_assert_eq(bds_call_reply(call, &r->r), BDS_OK);
    }
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 0);
    sim_complete(S, 0, BDS_OK, true);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 5);
    uint64_t want[] = {1, 1, 100, 101, 102};
    for (int i = 0; i < 5; i++) cr_assert_eq(S->sessions[s].written[i], want[i], "in the order made");
    sim_free(S);
}

Test(pipeline, at_least_once_sends_replies_as_made_and_a_retry_repeats_them) {
    sim *S = sim_new(1, 64);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 3;
    o.retry.at_least_once = true;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 1;
    m->replies = 2;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 2);
    cr_assert_eq(S->sessions[s].n_written, 4, "documented: each attempt's replies");
    cr_assert_eq(S->sessions[s].dropped_replies, 0);
    sim_free(S);
}

/* Without fail_fast a refused reply does not vanish: the handler hears of it
 * at its session's next reply, once. */
Test(pipeline, a_reply_the_sender_refuses_is_reported_at_the_next_reply) {
    sim *S = sim_new(2, 65);
    bds_options o = bds_default_options();
    o.outbound.backpressure.policy = BDS_BP_HARD_REJECT;
    o.outbound.backpressure.capacity = 1;
    o.outbound.backpressure.queue_capacity = 0;
    o.outbound.fail_fast = false;
    S->auto_ack_replies = false; /* the client does not read */
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, key_away_from_0(S), 1, SIM_OK);
    m->replies = 2; /* the second is refused, later, at home */
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->n_reply_log, 2);
    cr_assert_eq(S->reply_log[0], BDS_OK);
    cr_assert_eq(S->reply_log[1], BDS_OK, "not known yet when it was taken");
    bds_session_stats ss;
    bds_session_get_stats(S->sessions[s].s, &ss);
    cr_assert_eq(ss.replies_rejected, 1);
    sim_msg *n = sim_msg_new(s, "other", 2, SIM_OK);
    n->replies = 2;
    sim_send_msg(S, n, &st);
    sim_settle(S);
    cr_assert_eq(S->reply_log[2], BDS_E_OUTBOUND_BACKPRESSURE, "told at the session's next reply");
    cr_assert_eq(S->reply_log[3], BDS_OK, "once");
    cr_assert_eq(bds_session_get_state(S->sessions[s].s), BDS_STATE_OPEN, "no fail_fast: the session goes on");
    sim_msg *k = sim_msg_new(s, "third", 3, SIM_OK);
    k->replies = 1;
    sim_send_msg(S, k, &st);
    sim_settle(S);
    cr_assert_eq(S->reply_log[4], BDS_E_OUTBOUND_BACKPRESSURE, "the two refused since");
    sim_free(S);
}

Test(pipeline, a_reply_after_the_session_closed_says_so) {
    sim *S = sim_new(2, 66);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, key_away_from_0(S), 1, SIM_ASYNC);
    sim_settle(S);
    bds_call *call = S->pending[0];
    sim_home(S, s);
    bds_session_fail(S->sessions[s].s, BDS_UNAVAILABLE, "gone");
    sim_switch(S, SIM_FOREIGN);
    sim_reply *r = calloc(1, sizeof *r);
    cr_assert_eq(bds_call_reply(call, &r->r), BDS_E_SESSION_CLOSED);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].dropped_replies, 1, "still the transport's to free, through ops->drop");
    sim_free(S);
}

Test(pipeline, nonterminal_failure_is_confined_to_the_message) {
    sim *S = sim_new(1, 14);
    int s = sim_open(S, 0, NULL);
    cr_assert_eq(sim_send(S, s, "k", 1, SIM_NONTERMINAL), BDS_OK);
    cr_assert_eq(sim_send(S, s, "k", 2, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_eq(S->n_starts, 2);
    cr_assert_not(S->sessions[s].closed);
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.nonterminal_failures, 1);
    sim_free(S);
}

static uint32_t room_of(sim *S, int session) {
    bds_session *ses = S->sessions[session].s;
    int saved = sim_switch(S, (int)ses->home->index);
    uint32_t room = bds_session_inbound_room(ses);
    sim_switch(S, saved);
    return room;
}

Test(pipeline, outstanding_bytes_bound_shuts_room_until_work_finishes) {
    sim *S = sim_new(1, 17);
    bds_options o = bds_default_options();
    o.inbound.outstanding_bytes_max = 100;
    int s = sim_open(S, 0, &o);
    cr_assert_eq(sim_send_bytes(S, s, "a", 1, SIM_ASYNC, 60), BDS_OK);
    cr_assert_gt(room_of(S, s), 0, "60 of 100 bytes: room left");
    cr_assert_eq(sim_send_bytes(S, s, "b", 2, SIM_ASYNC, 60), BDS_OK, "one message may overshoot the bound");
    cr_assert_eq(room_of(S, s), 0, "120 of 100 bytes: no room");
    sim_settle(S);
    int ready = S->sessions[s].ready_calls;
    complete_seq(S, 1, BDS_OK);
    cr_assert_gt(room_of(S, s), 0, "60 bytes again: room");
    cr_assert_eq(S->sessions[s].ready_calls, ready + 1, "the transport is told to read again");
    complete_seq(S, 2, BDS_OK);
    cr_assert_not(S->sessions[s].closed);
    sim_free(S);
}

Test(pipeline, outstanding_bytes_bound_lets_a_large_message_run_alone_then_rejects) {
    sim *S = sim_new(1, 18);
    bds_options o = bds_default_options();
    o.inbound.outstanding_bytes_max = 100;
    int s = sim_open(S, 0, &o);
    cr_assert_eq(sim_send_bytes(S, s, "a", 1, SIM_ASYNC, 1000), BDS_OK, "larger than the bound, but alone");
    cr_assert_eq(room_of(S, s), 0);
    /* A transport that ignores the room is refused, like any exhausted capacity. */
    cr_assert_eq(sim_send_bytes(S, s, "b", 2, SIM_ASYNC, 1), BDS_E_INBOUND_REJECTED);
    sim_settle(S);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(bds_status_grpc(S->sessions[s].close_status), 8 /* RESOURCE_EXHAUSTED */);
    sim_free(S);
}

/* A handler may itself answer CANCELLED (a status echo does): that is its
 * result, a failure that ends the session with that status, not a drop. */
Test(pipeline, handler_cancelled_status_is_a_failure_not_a_drop) {
    sim *S = sim_new(1, 16);
    int s = sim_open(S, 0, NULL);
    cr_assert_eq(sim_send(S, s, "k", 1, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    complete_seq(S, 1, BDS_CANCELLED);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].close_status, BDS_CANCELLED);
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.dropped, 0);
    sim_free(S);
}

Test(pipeline, failures_not_terminal_when_configured) {
    sim *S = sim_new(1, 15);
    bds_options o = bds_default_options();
    o.inbound.failures_terminal = false;
    int s = sim_open(S, 0, &o);
    sim_msg *m = sim_msg_new(s, "k", 1, SIM_FAIL);
    m->fails = 9;
    bds_status st;
    sim_send_msg(S, m, &st);
    cr_assert_eq(sim_send(S, s, "k", 2, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_not(S->sessions[s].closed);
    cr_assert_eq(S->n_starts, 2);
    sim_free(S);
}

Test(pipeline, half_close_drains_every_reply_then_ends_ok) {
    sim *S = sim_new(2, 16);
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 6; i++) {
        sim_msg *m = sim_msg_new(s, i % 2 ? "a" : "b", i, SIM_ASYNC);
        m->replies = 1;
        bds_status st;
        sim_send_msg(S, m, &st);
    }
    sim_settle(S);
    bds_session *ses = S->sessions[s].s;
    cr_assert_eq(bds_session_client_close(ses), BDS_OK);
    cr_assert_eq(bds_session_get_state(ses), BDS_STATE_CLIENT_CLOSED);
    cr_assert_eq(sim_send(S, s, "a", 99, SIM_OK), BDS_E_INBOUND_CLOSED);
    while (S->n_pending) {
        cr_assert_not(S->sessions[s].closed, "not closed while work is in flight");
        sim_complete(S, 0, BDS_OK, false);
        sim_settle(S);
    }
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].close_status, BDS_OK);
    cr_assert_eq(S->sessions[s].n_written, 6, "every reply before the end");
    cr_assert_eq(bds_session_get_state(ses), BDS_STATE_CLOSED);
    sim_free(S);
}

Test(pipeline, half_close_without_drain_drops_waiting_work) {
    sim *S = sim_new(2, 17);
    bds_options o = bds_default_options();
    o.inbound.drain_on_client_close = false;
    int s = sim_open(S, 0, &o);
    for (uint64_t i = 0; i < 4; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    bds_session_client_close(S->sessions[s].s);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 1, "only the running one is left");
    complete_seq(S, 0, BDS_OK);
    cr_assert_eq(S->n_starts, 1, "queued work was dropped, not run");
    cr_assert_eq(S->sessions[s].close_status, BDS_OK);
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.dropped, 3);
    sim_free(S);
}

Test(pipeline, shutdown_drains_in_flight_then_unavailable) {
    sim *S = sim_new(2, 18);
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 3; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    bds_session *ses = S->sessions[s].s;
    bds_session_shutdown(ses);
    cr_assert_eq(bds_session_get_state(ses), BDS_STATE_DRAINING);
    cr_assert_eq(bds_session_reason(ses), BDS_E_SHUTDOWN);
    cr_assert_eq(sim_send(S, s, "k", 9, SIM_OK), BDS_E_SHUTDOWN);
    for (uint64_t i = 0; i < 3; i++) complete_seq(S, i, BDS_OK);
    cr_assert_eq(S->n_starts, 3, "admitted work drained");
    cr_assert_eq(S->sessions[s].close_status, BDS_E_SHUTDOWN);
    cr_assert_eq(bds_status_grpc(S->sessions[s].close_status), 14);
    sim_free(S);
}

Test(pipeline, shutdown_grace_expiry_forces_unavailable) {
    sim *S = sim_new(1, 19);
    bds_options o = bds_default_options();
    o.shutdown.grace_period_ns = 50 * MS;
    int s = sim_open(S, 0, &o);
    sim_send(S, s, "k", 0, SIM_ASYNC);
    sim_settle(S);
    bds_session_shutdown(S->sessions[s].s);
    sim_advance(S, 49 * MS);
    cr_assert_not(S->sessions[s].closed);
    sim_advance(S, 1 * MS);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].close_status, BDS_E_SHUTDOWN);
    cr_assert_str_eq(S->sessions[s].close_msg, "server shutting down: grace period over");
    sim_free(S);
}

Test(pipeline, shutdown_without_inbound_drain_drops_queued) {
    sim *S = sim_new(2, 20);
    bds_options o = bds_default_options();
    o.shutdown.drain_inbound = false;
    int s = sim_open(S, 0, &o);
    for (uint64_t i = 0; i < 5; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    bds_session_shutdown(S->sessions[s].s);
    sim_settle(S);
    complete_seq(S, 0, BDS_OK);
    cr_assert_eq(S->n_starts, 1);
    cr_assert(S->sessions[s].closed);
    sim_free(S);
}

Test(pipeline, shutdown_after_half_close_ends_ok_when_drained) {
    sim *S = sim_new(1, 21);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, "k", 0, SIM_ASYNC);
    sim_settle(S);
    bds_session_client_close(S->sessions[s].s);
    bds_session_shutdown(S->sessions[s].s);
    complete_seq(S, 0, BDS_OK);
    cr_assert_eq(S->sessions[s].close_status, BDS_OK, "the client finished: a clean end");
    sim_free(S);
}

/* A message refused because the shutdown had begun was never answered: the
 * client's half-close then ends the stream UNAVAILABLE, after every reply of
 * the admitted work, not OK (which says every message was answered). Before,
 * it ended OK and the refused message vanished. */
Test(pipeline, a_message_refused_for_the_shutdown_keeps_the_end_from_being_ok) {
    sim *S = sim_new(2, 25);
    int s = sim_open(S, 0, NULL);
    sim_msg *m = sim_msg_new(s, "k", 0, SIM_ASYNC);
    m->replies = 1;
    bds_status st;
    sim_send_msg(S, m, &st);
    cr_assert_eq(st, BDS_OK);
    sim_settle(S);
    bds_session *ses = S->sessions[s].s;
    bds_session_shutdown(ses);
    cr_assert_eq(sim_send(S, s, "k", 1, SIM_OK), BDS_E_SHUTDOWN);
    bds_session_client_close(ses);
    complete_seq(S, 0, BDS_OK);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].n_written, 1, "the admitted message's reply still went out");
    cr_assert_eq(S->sessions[s].close_status, BDS_E_SHUTDOWN, "not OK: message 1 was never answered (got %s)",
                 bds_status_name(S->sessions[s].close_status));
    cr_assert_eq(bds_status_grpc(S->sessions[s].close_status), 14);
    sim_free(S);
}

Test(pipeline, cancel_closes_at_once_and_drops_everything) {
    sim *S = sim_new(2, 22);
    bds_options o = bds_default_options();
    o.retry.max_attempts = 3;
    o.retry.backoff_ns = 5 * MS;
    int s = sim_open(S, 0, &o);
    for (uint64_t i = 0; i < 4; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_msg *m = sim_msg_new(s, "r", 10, SIM_FAIL);
    m->fails = 100;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    bds_session_cancel(S->sessions[s].s);
    sim_settle(S);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].close_status, BDS_CANCELLED);
    cr_assert_eq(bds_session_get_state(S->sessions[s].s), BDS_STATE_CLOSED);
    sim_advance(S, 100 * MS);
    cr_assert_eq(S->n_starts, 2, "no retry, no queued message runs after a cancel");
    sim_free(S);
}

/* Work that would outlive its stream (a timer, a Watch) is told when the
 * session closes, on the key's pipeline, and finishes at once: the session is
 * freed without waiting for it (sim_free asserts nothing is left). */
Test(pipeline, cancel_runs_the_running_calls_cancel_hook_once_on_its_exec_pipeline) {
    sim *S = sim_new(2, 23);
    int s = sim_open(S, 0, NULL);
    char key[8];
    for (int i = 0; i < 4; i++) { /* keys on both pipelines */
        snprintf(key, sizeof key, "h%d", i);
        sim_send(S, s, key, (uint64_t)i, SIM_HOOKED);
    }
    sim_settle(S);
    cr_assert_eq(S->n_pending, 4);
    bds_session_cancel(S->sessions[s].s);
    sim_settle(S);
    cr_assert_eq(S->cancel_hooks, 4, "every running call heard of the cancel");
    cr_assert_eq(S->n_pending, 0);
    for (uint32_t i = 0; i < S->n_starts; i++) cr_assert_eq(S->starts[i].attempt, 1);
    bds_pipeline_stats st;
    bds_pipeline_get_stats(S->pipes[1], &st);
    cr_assert_eq(st.keys_exec_live, 0, "the exec side let go of the session");
    sim_free(S);
}

Test(pipeline, a_finished_call_or_a_plain_close_runs_no_cancel_hook) {
    sim *S = sim_new(2, 24);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, "a", 1, SIM_HOOKED);
    sim_send(S, s, "b", 2, SIM_HOOKED);
    sim_settle(S);
    cr_assert_eq(S->n_pending, 2);
    sim_complete(S, 0, BDS_OK, false); /* finished: its hook is gone */
    sim_settle(S);
    cr_assert_eq(bds_session_client_close(S->sessions[s].s), BDS_OK); /* drains: no cancel */
    sim_settle(S);
    cr_assert_eq(S->cancel_hooks, 0);
    bds_session_cancel(S->sessions[s].s);
    sim_settle(S);
    cr_assert_eq(S->cancel_hooks, 1, "only the call still running");
    sim_free(S);
}

/* ---- call timers (bds_call_after) ---- */

/* A SIM_TIMER message on a key run by pipeline 1 (the session is home on 0). */
static sim_msg *send_timer(sim *S, int s, uint64_t seq, int behave, uint64_t after_ns, uint32_t ticks) {
    sim_msg *m = sim_msg_new(s, key_away_from_0(S), seq, behave);
    m->after_ns = after_ns;
    m->ticks = ticks;
    bds_status st;
    cr_assert_not_null(sim_send_msg(S, m, &st), "admitted: %s", bds_status_name(st));
    sim_settle(S);
    return m;
}

Test(pipeline, call_timer_fires_at_its_time_on_the_calls_exec_pipeline) {
    sim *S = sim_new(2, 40);
    int s = sim_open(S, 0, NULL);
    uint64_t t0 = S->now;
    send_timer(S, s, 1, SIM_TIMER, 10 * MS, 3);
    cr_assert_eq(S->second_after, BDS_FAILED_PRECONDITION, "one timer per call at a time");
    cr_assert_eq(bds_pipeline_next_deadline(S->pipes[1]), t0 + 10 * MS, "armed on the key's pipeline");
    sim_advance(S, 10 * MS - 1);
    cr_assert_eq(S->n_fires, 0, "not before its time");
    sim_advance(S, 1);
    cr_assert_eq(S->n_fires, 1);
    cr_assert_eq(S->fires[0].at, t0 + 10 * MS);
    cr_assert_eq(S->fires[0].pipe, 1, "on the call's EXEC pipeline");
    cr_assert_not(S->fires[0].cancelled);
    sim_advance(S, 10 * MS); /* the timer re-armed itself twice, each from its own firing */
    sim_advance(S, 10 * MS);
    cr_assert_eq(S->n_fires, 3);
    cr_assert_eq(S->fires[2].at, t0 + 30 * MS);
    cr_assert_eq(S->sessions[s].n_written, 3, "each firing's reply went out");
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.completed, 1, "the last firing finished the call");
    cr_assert_eq(bds_pipeline_next_deadline(S->pipes[1]), UINT64_MAX, "nothing left armed");
    sim_free(S);
}

/* Whatever closes the session, an armed timer fires at once, sees
 * bds_call_cancelled, and the work ends with its stream. */
static void timer_fires_early_on(int how) {
    sim *S = sim_new(2, 41);
    int s = sim_open(S, 0, NULL);
    uint64_t t0 = S->now;
    sim_msg *m = send_timer(S, s, 1, SIM_TIMER, 3600ULL * 1000 * MS, 1);
    m->hook_too = false;
    bds_session *ss = S->sessions[s].s;
    sim_home(S, s);
    bds_status want = BDS_CANCELLED;
    if (how == 0) {
        bds_session_cancel(ss);
    } else if (how == 1) {
        bds_session_set_deadline(ss, S->now + 5 * MS);
        want = BDS_DEADLINE_EXCEEDED;
        sim_advance(S, 5 * MS);
    } else if (how == 2) {
        bds_session_fail(ss, BDS_UNAVAILABLE, "failed");
        want = BDS_UNAVAILABLE;
    } else {
        bds_session_shutdown(ss);
        want = BDS_E_SHUTDOWN;
        sim_advance(S, 5000 * MS); /* the default grace */
    }
    sim_settle(S);
    cr_assert_eq(S->n_fires, 1, "fired once, at the close (case %d)", how);
    cr_assert(S->fires[0].cancelled, "and saw the session closed (case %d)", how);
    cr_assert_eq(S->fires[0].pipe, 1);
    cr_assert_lt(S->fires[0].at, t0 + 3600ULL * 1000 * MS);
    cr_assert_eq(S->sessions[s].close_status, want, "case %d: %s", how, bds_status_name(S->sessions[s].close_status));
    bds_pipeline_stats st;
    bds_pipeline_get_stats(S->pipes[1], &st);
    cr_assert_eq(st.keys_exec_live, 0, "the call went home: nothing waits for the hour (case %d)", how);
    cr_assert_eq(bds_pipeline_next_deadline(S->pipes[1]), UINT64_MAX);
    sim_free(S);
}

Test(pipeline, call_timer_fires_early_on_client_cancel) { timer_fires_early_on(0); }
Test(pipeline, call_timer_fires_early_on_deadline) { timer_fires_early_on(1); }
Test(pipeline, call_timer_fires_early_on_failure) { timer_fires_early_on(2); }
Test(pipeline, call_timer_fires_early_when_the_grace_period_ends) { timer_fires_early_on(3); }

/* The timer runs first; the cancel hook only if the call is still running. */
Test(pipeline, call_timer_runs_before_the_cancel_hook_which_then_has_nothing_to_do) {
    sim *S = sim_new(2, 42);
    int s = sim_open(S, 0, NULL);
    sim_msg *m = sim_msg_new(s, key_away_from_0(S), 1, SIM_TIMER);
    m->after_ns = 3600ULL * 1000 * MS;
    m->hook_too = true;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    sim_home(S, s);
    bds_session_cancel(S->sessions[s].s);
    sim_settle(S);
    cr_assert_eq(S->n_fires, 1);
    cr_assert_eq(S->cancel_hooks, 0, "the timer finished the call: the hook was cleared");
    sim_free(S);
}

Test(pipeline, done_on_the_exec_thread_disarms_the_call_timer) {
    sim *S = sim_new(2, 43);
    int s = sim_open(S, 0, NULL);
    send_timer(S, s, 1, SIM_TIMER_PENDING, 10 * MS, 1);
    cr_assert_eq(S->n_pending, 1);
    sim_complete(S, 0, BDS_OK, false); /* on pipeline 1, the call's EXEC thread */
    sim_settle(S);
    cr_assert_eq(bds_pipeline_next_deadline(S->pipes[1]), UINT64_MAX, "disarmed");
    sim_advance(S, 20 * MS);
    cr_assert_eq(S->n_fires, 0);
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.completed, 1);
    sim_free(S);
}

static void after_from_a_foreign_thread(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, SIM_FOREIGN);
    (void)bds_call_after(call, MS, sim_on_after, S);
}

static void after_from_the_home_thread(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, 0); /* the session's home, not the key's pipeline */
    (void)bds_call_after(call, MS, sim_on_after, S);
}

static void after_after_done(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_complete(S, 0, BDS_OK, false);
    sim_switch(S, 1);
    (void)bds_call_after(call, MS, sim_on_after, S);
}

static void after_without_fn(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, 1);
    (void)bds_call_after(call, MS, NULL, S);
}

static void on_cancel_from_a_foreign_thread(void) {
    sim *S;
    bds_call *call = pending_call(&S);
    sim_switch(S, SIM_FOREIGN);
    bds_call_on_cancel(call, sim_on_cancel, S);
}

static void done_from_a_foreign_thread_with_a_timer_armed(void) {
    sim *S = sim_new(2, 44);
    int s = sim_open(S, 0, NULL);
    send_timer(S, s, 1, SIM_TIMER_PENDING, 10 * MS, 1);
    sim_complete(S, 0, BDS_OK, true);
}

static void done_from_a_foreign_thread_with_a_cancel_hook(void) {
    sim *S = sim_new(2, 45);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, key_away_from_0(S), 1, SIM_HOOKED);
    sim_settle(S);
    sim_complete(S, 0, BDS_OK, true);
}

Test(pipeline, call_timer_from_a_foreign_thread_is_named) { expect_misuse(after_from_a_foreign_thread, "bds_call_after"); }
Test(pipeline, call_timer_from_another_pipelines_thread_is_named) {
    expect_misuse(after_from_the_home_thread, "bds_call_after");
}
Test(pipeline, call_timer_after_done_is_named) { expect_misuse(after_after_done, "bds_call_after"); }
Test(pipeline, call_timer_without_fn_is_named) { expect_misuse(after_without_fn, "bds_call_after"); }
Test(pipeline, cancel_hook_from_a_foreign_thread_is_named) {
    expect_misuse(on_cancel_from_a_foreign_thread, "bds_call_on_cancel");
}
Test(pipeline, done_from_another_thread_racing_an_armed_timer_is_named) {
    expect_misuse(done_from_a_foreign_thread_with_a_timer_armed, "bds_call_done");
}
Test(pipeline, done_from_another_thread_racing_a_cancel_hook_is_named) {
    expect_misuse(done_from_a_foreign_thread_with_a_cancel_hook, "bds_call_done");
}

Test(pipeline, deadline_closes_with_deadline_exceeded) {
    sim *S = sim_new(1, 23);
    int s = sim_open(S, 0, NULL);
    sim_send(S, s, "k", 0, SIM_ASYNC);
    sim_settle(S);
    bds_session_set_deadline(S->sessions[s].s, S->now + 20 * MS);
    sim_advance(S, 19 * MS);
    cr_assert_not(S->sessions[s].closed);
    sim_advance(S, 1 * MS);
    cr_assert_eq(S->sessions[s].close_status, BDS_DEADLINE_EXCEEDED);
    sim_free(S);
}

Test(pipeline, sender_hard_reject_with_fail_fast_ends_session) {
    sim *S = sim_new(1, 24);
    bds_options o = bds_default_options();
    o.outbound.backpressure.policy = BDS_BP_HARD_REJECT;
    o.outbound.backpressure.capacity = 2;
    o.outbound.backpressure.queue_capacity = 0;
    int s = sim_open(S, 0, &o);
    S->auto_ack_replies = false; /* a client that never reads */
    sim_msg *m = sim_msg_new(s, "k", 0, SIM_OK);
    m->replies = 3;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 2);
    cr_assert_eq(S->sessions[s].dropped_replies, 1);
    cr_assert_eq(S->sessions[s].close_status, BDS_E_OUTBOUND_BACKPRESSURE);
    cr_assert_eq(bds_status_grpc(S->sessions[s].close_status), 8);
    sim_free(S);
}

/* Acknowledges the session's oldest written reply (the client read it). */
static void ack_oldest(sim *S, int session) {
    sim_session *ss = &S->sessions[session];
    cr_assert_gt(ss->n_unacked, 0);
    sim_reply *r = ss->unacked[0];
    memmove(ss->unacked, ss->unacked + 1, (ss->n_unacked - 1) * sizeof ss->unacked[0]);
    ss->n_unacked--;
    int saved = sim_switch(S, (int)ss->s->home->index);
    bds_session_reply_written(ss->s, &r->r);
    sim_switch(S, saved);
    free(r);
    sim_settle(S);
}

static void ack_all(sim *S, int session) {
    while (S->sessions[session].n_unacked) ack_oldest(S, session);
}

/* One message whose handler makes |n| replies of |bytes| each. */
static void send_replies(sim *S, int s, uint64_t seq, uint32_t n, uint32_t bytes) {
    sim_msg *m = sim_msg_new(s, "k", seq, SIM_OK);
    m->replies = n;
    m->reply_bytes = bytes;
    bds_status st;
    sim_send_msg(S, m, &st);
    cr_assert_eq(st, BDS_OK);
    sim_settle(S);
}

/* Issue 8, finding 7: counts alone let 1,024 unwritten + 8,192 queued replies
 * of any size wait per stream. QUEUE at the byte bound: replies wait in the
 * queue, in order, and the session takes no message until the client reads. */
Test(pipeline, sender_byte_bound_queues_and_shuts_inbound_room_until_the_client_reads) {
    sim *S = sim_new(1, 31);
    bds_options o = bds_default_options();
    o.outbound.unsent_bytes_max = 100;
    int s = sim_open(S, 0, &o);
    S->auto_ack_replies = false; /* a client that does not read */
    send_replies(S, s, 1, 4, 60);
    sim_session *ss = &S->sessions[s];
    cr_assert_eq(ss->n_written, 2, "60 + 60 bytes written (one overshoots), the rest waits");
    cr_assert_eq(room_of(S, s), 0, "240 bytes of replies held: no inbound room");
    int ready = ss->ready_calls;
    ack_oldest(S, s);
    cr_assert_eq(ss->n_written, 3, "60 bytes in flight: the next goes");
    cr_assert_eq(room_of(S, s), 0, "still 180 bytes held");
    ack_oldest(S, s);
    ack_oldest(S, s);
    cr_assert_eq(ss->n_written, 4);
    cr_assert_gt(room_of(S, s), 0, "60 bytes held: room again");
    cr_assert_eq(ss->ready_calls, ready + 1, "the transport is told to read again");
    for (uint32_t i = 0; i < 4; i++) cr_assert_eq(ss->written[i], 1);
    ack_all(S, s);
    cr_assert_not(ss->closed);
    sim_free(S);
}

Test(pipeline, held_bytes_count_admitted_payload_and_untaken_replies) {
    sim *S = sim_new(1, 35);
    int s = sim_open(S, 0, NULL);
    S->auto_ack_replies = false;
    bds_session *ses = S->sessions[s].s;
    cr_assert_eq(sim_send_bytes(S, s, "a", 1, SIM_ASYNC, 70), BDS_OK);
    sim_settle(S);
    cr_assert_eq(bds_session_held_bytes(ses), 70);
    send_replies(S, s, 2, 3, 10);
    cr_assert_eq(bds_session_held_bytes(ses), 70 + 30, "70 unfinished, 3 replies of 10 written");
    cr_assert_eq(bds_session_unsent_bytes(ses), 30);
    ack_all(S, s);
    cr_assert_eq(bds_session_held_bytes(ses), 70, "the replies were taken; the message finished");
    cr_assert_eq(bds_session_unsent_bytes(ses), 0);
    complete_seq(S, 1, BDS_OK);
    cr_assert_eq(bds_session_held_bytes(ses), 0);
    sim_free(S);
}

Test(pipeline, sender_byte_bound_lets_a_large_reply_go_alone) {
    sim *S = sim_new(1, 32);
    bds_options o = bds_default_options();
    o.outbound.unsent_bytes_max = 100;
    int s = sim_open(S, 0, &o);
    S->auto_ack_replies = false;
    send_replies(S, s, 1, 2, 1000);
    cr_assert_eq(S->sessions[s].n_written, 1, "larger than the bound, but alone");
    ack_oldest(S, s);
    cr_assert_eq(S->sessions[s].n_written, 2);
    ack_all(S, s);
    cr_assert_not(S->sessions[s].closed);
    sim_free(S);
}

/* HARD_REJECT at the byte bound, under its count capacity: RESOURCE_EXHAUSTED. */
Test(pipeline, sender_byte_bound_hard_reject_is_resource_exhausted) {
    sim *S = sim_new(1, 33);
    bds_options o = bds_default_options();
    o.outbound.backpressure.policy = BDS_BP_HARD_REJECT;
    o.outbound.backpressure.capacity = 1000;
    o.outbound.backpressure.queue_capacity = 0;
    o.outbound.unsent_bytes_max = 100;
    int s = sim_open(S, 0, &o);
    S->auto_ack_replies = false;
    send_replies(S, s, 1, 3, 60);
    cr_assert_eq(S->sessions[s].n_written, 2);
    cr_assert_eq(S->sessions[s].dropped_replies, 1);
    cr_assert(S->sessions[s].closed);
    cr_assert_eq(S->sessions[s].close_status, BDS_E_OUTBOUND_BACKPRESSURE);
    cr_assert_eq(bds_status_grpc(S->sessions[s].close_status), 8 /* RESOURCE_EXHAUSTED */);
    ack_all(S, s);
    sim_free(S);
}

/* The soft policies run over their count capacity, not over the byte bound:
 * there they queue like QUEUE and the session takes no message. */
Test(pipeline, sender_byte_bound_holds_for_soft_policies) {
    bds_backpressure_policy pols[] = {BDS_BP_SOFT_ALLOW, BDS_BP_SOFT_ALLOW_SIGNAL};
    for (int k = 0; k < 2; k++) {
        sim *S = sim_new(1, 34);
        bds_options o = bds_default_options();
        o.outbound.backpressure.policy = pols[k];
        o.outbound.backpressure.capacity = 1;
        o.outbound.backpressure.queue_capacity = 0;
        o.outbound.unsent_bytes_max = 100;
        int s = sim_open(S, 0, &o);
        S->auto_ack_replies = false;
        send_replies(S, s, 1, 4, 40);
        sim_session *ss = &S->sessions[s];
        cr_assert_eq(ss->n_written, 3, "over the count capacity (1), up to the byte bound (one overshoots)");
        cr_assert_eq(room_of(S, s), 0);
        if (pols[k] == BDS_BP_SOFT_ALLOW_SIGNAL) cr_assert_eq(S->pressure, 2, "a signal per reply over capacity");
        ack_oldest(S, s);
        cr_assert_eq(ss->n_written, 4);
        ack_all(S, s);
        cr_assert_gt(room_of(S, s), 0);
        cr_assert_not(ss->closed);
        sim_free(S);
    }
}

Test(pipeline, sender_queue_keeps_order_until_written) {
    sim *S = sim_new(2, 25);
    bds_options o = bds_default_options();
    o.outbound.backpressure.capacity = 1;
    o.outbound.backpressure.queue_capacity = 10;
    int s = sim_open(S, 0, &o);
    S->auto_ack_replies = false;
    for (uint64_t i = 0; i < 4; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    for (uint64_t i = 0; i < 4; i++) {
        sim_msg *m = bds_call_payload(S->pending[pending_index_of(S, i)]);
        m->replies = 0;
        sim_reply *r = calloc(1, sizeof *r);
        r->seq = i;
        bds_call_reply(S->pending[pending_index_of(S, i)], &r->r);
        complete_seq(S, i, BDS_OK);
    }
    sim_session *ss = &S->sessions[s];
    cr_assert_eq(ss->n_written, 1, "capacity 1: one unwritten reply at a time");
    bds_session_stats st;
    bds_session_get_stats(ss->s, &st);
    cr_assert_eq(st.send_queue_hw, 3);
    for (uint32_t k = 0; k < 3; k++) {
        sim_reply *r = ss->unacked[k];
        bds_session_reply_written(ss->s, &r->r);
        free(r);
    }
    cr_assert_eq(ss->n_written, 4);
    for (uint32_t i = 0; i < 4; i++) cr_assert_eq(ss->written[i], i, "replies keep their order");
    for (uint32_t k = 3; k < ss->n_unacked; k++) {
        bds_session_reply_written(ss->s, &ss->unacked[k]->r);
        free(ss->unacked[k]);
    }
    ss->n_unacked = 0;
    sim_free(S);
}

Test(pipeline, completion_from_a_foreign_thread_is_routed_home) {
    sim *S = sim_new(2, 26);
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 3; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    for (uint64_t i = 0; i < 3; i++) {
        int k = pending_index_of(S, i);
        cr_assert(k >= 0);
        sim_complete(S, (uint32_t)k, BDS_OK, true);
        sim_settle(S);
    }
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.completed, 3);
    sim_free(S);
}

Test(pipeline, receive_in_each_state_returns_its_error) {
    sim *S = sim_new(1, 27);
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    cfg.handler = sim_handler;
    cfg.handler_ctx = S;
    cfg.ops = &sim_ops;
    cfg.ops_ctx = (void *)(intptr_t)0;
    S->n_sessions = 1;
    cr_assert_eq(bds_session_create(&S->sessions[0].s, S->pipes[0], &cfg, NULL), BDS_OK);
    cr_assert_eq(sim_send(S, 0, "k", 0, SIM_OK), BDS_FAILED_PRECONDITION, "not open yet");
    cr_assert_eq(bds_session_open(S->sessions[0].s), BDS_OK);
    cr_assert_eq(bds_session_open(S->sessions[0].s), BDS_FAILED_PRECONDITION, "open exactly once");
    cr_assert_eq(bds_session_receive(S->sessions[0].s, &cfg, 1, NULL, 3, 0), BDS_E_INVALID);
    bds_session_server_close(S->sessions[0].s);
    cr_assert_eq(sim_send(S, 0, "k", 1, SIM_OK), BDS_OK, "server closed: the client may still send");
    sim_settle(S);
    sim_reply *r = calloc(1, sizeof *r);
    cr_assert_eq(bds_session_send(S->sessions[0].s, &r->r), BDS_E_OUTBOUND_CLOSED);
    bds_session_client_close(S->sessions[0].s);
    sim_settle(S);
    cr_assert_eq(S->sessions[0].close_status, BDS_OK);
    cr_assert_eq(sim_send(S, 0, "k", 2, SIM_OK), BDS_E_SESSION_CLOSED);
    sim_free(S);
}

Test(pipeline, release_before_close_sends_no_callback_and_frees) {
    sim *S = sim_new(2, 28);
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 3; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_settle(S);
    bds_session_release(S->sessions[s].s);
    S->sessions[s].s = NULL;
    sim_settle(S);
    cr_assert_eq(S->sessions[s].closed_calls, 0);
    sim_free(S); /* completes the running call; asserts the session was freed */
}

Test(pipeline, release_from_inside_the_closed_callback_is_safe) {
    sim *S = sim_new(2, 30);
    S->release_in_closed = true;
    int s = sim_open(S, 0, NULL);
    for (uint64_t i = 0; i < 3; i++) sim_send(S, s, "k", i, SIM_ASYNC);
    sim_send(S, s, "j", 9, SIM_PANIC);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].closed_calls, 1);
    cr_assert_null(S->sessions[s].s, "released from the callback");
    sim_free(S); /* completes the running calls; asserts everything was freed */
}

/* After warm-up the message path allocates nothing. */
Test(pipeline, steady_state_message_path_allocates_nothing) {
    sim *S = sim_new(2, 29);
    int s = sim_open(S, 0, NULL);
    char key[8];
    for (uint64_t i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)(i % 64));
        sim_msg *m = sim_msg_new(s, key, i, SIM_OK);
        m->replies = 1;
        bds_status st;
        sim_send_msg(S, m, &st);
        if (i % 16 == 0) sim_settle(S);
    }
    sim_settle(S);
    uint64_t before = bds__alloc_count();
    for (uint64_t i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)(i % 64));
        sim_msg *m = sim_msg_new(s, key, i, SIM_OK);
        m->replies = 1;
        bds_status st;
        sim_send_msg(S, m, &st);
        cr_assert_eq(st, BDS_OK);
        if (i % 16 == 0) sim_settle(S);
    }
    sim_settle(S);
    cr_assert_eq(bds__alloc_count() - before, 0, "core allocated %lu times in steady state",
                 (unsigned long)(bds__alloc_count() - before));
    bds_session_stats st;
    bds_session_get_stats(S->sessions[s].s, &st);
    cr_assert_eq(st.completed, 12000);
    cr_assert_eq(st.replies_written, 12000);
    sim_free(S);
}

/* ---- live counters (bds_counters) ---- */

static void expect_counters_match(const bds_counters *c, const bds_session_stats *sum) {
    cr_assert_eq(atomic_load(&c->admitted), sum->admitted);
    cr_assert_eq(atomic_load(&c->rejected), sum->rejected);
    cr_assert_eq(atomic_load(&c->completed), sum->completed);
    cr_assert_eq(atomic_load(&c->failed), sum->failed);
    cr_assert_eq(atomic_load(&c->nonterminal_failures), sum->nonterminal_failures);
    cr_assert_eq(atomic_load(&c->retried), sum->retried);
    cr_assert_eq(atomic_load(&c->panics), sum->panics);
    cr_assert_eq(atomic_load(&c->dropped), sum->dropped);
    cr_assert_eq(atomic_load(&c->pressure_signals), sum->pressure_signals);
    cr_assert_eq(atomic_load(&c->replies_written), sum->replies_written);
    cr_assert_eq(atomic_load(&c->replies_rejected), sum->replies_rejected);
    cr_assert_eq(atomic_load(&c->bytes_in), sum->bytes_in);
    cr_assert_eq(atomic_load(&c->bytes_out), sum->bytes_out);
}

static void stats_sum(sim *S, const int *idx, int n, bds_session_stats *sum) {
    memset(sum, 0, sizeof *sum);
    for (int i = 0; i < n; i++) {
        bds_session_stats st;
        bds_session_get_stats(S->sessions[idx[i]].s, &st);
        sum->admitted += st.admitted;
        sum->rejected += st.rejected;
        sum->completed += st.completed;
        sum->failed += st.failed;
        sum->nonterminal_failures += st.nonterminal_failures;
        sum->retried += st.retried;
        sum->panics += st.panics;
        sum->dropped += st.dropped;
        sum->pressure_signals += st.pressure_signals;
        sum->replies_written += st.replies_written;
        sum->replies_rejected += st.replies_rejected;
        sum->bytes_in += st.bytes_in;
        sum->bytes_out += st.bytes_out;
    }
}

/* Opens a session on home with live counters c. */
static int open_counted(sim *S, uint32_t home, bds_options *o, bds_counters *c) {
    int idx = S->n_sessions++;
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    o->on_pressure = sim_on_pressure;
    o->on_pressure_ctx = S;
    cfg.options = o;
    cfg.handler = sim_handler;
    cfg.handler_ctx = S;
    cfg.ops = &sim_ops;
    cfg.ops_ctx = (void *)(intptr_t)idx;
    cfg.counters = c;
    int saved = sim_switch(S, (int)home);
    cr_assert_eq(bds_session_create(&S->sessions[idx].s, S->pipes[home], &cfg, NULL), BDS_OK);
    cr_assert_eq(bds_session_open(S->sessions[idx].s), BDS_OK);
    sim_switch(S, saved);
    return idx;
}

/* The counters move as things happen, while the sessions are open (not when
 * they are freed), summed over the sessions that share them, and equal the
 * sessions' own stats at every point. */
Test(pipeline, live_counters_move_while_sessions_run_and_match_their_stats) {
    sim *S = sim_new(2, 50);
    bds_counters c0 = {0}, c1 = {0};
    bds_options o = bds_default_options();
    o.metrics.payload_sizes = true;
    o.retry.max_attempts = 2;
    bds_options soft = o;
    soft.inbound.backpressure.policy = BDS_BP_SOFT_ALLOW_SIGNAL;
    soft.inbound.backpressure.capacity = 1;
    soft.inbound.backpressure.queue_capacity = 0;
    bds_options hard = o;
    hard.inbound.backpressure.policy = BDS_BP_HARD_REJECT;
    hard.inbound.backpressure.capacity = 1;
    hard.inbound.backpressure.queue_capacity = 0;
    int a = open_counted(S, 0, &o, &c0), b = open_counted(S, 0, &soft, &c0), h = open_counted(S, 1, &hard, &c1);
    int home0[] = {a, b}, home1[] = {h};
    bds_session_stats sum;

    for (uint64_t i = 0; i < 3; i++) cr_assert_eq(sim_send(S, a, "k", i, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_eq(atomic_load(&c0.admitted), 3, "admitted as they arrive");
    cr_assert_eq(atomic_load(&c0.calls_live), 3);
    cr_assert_eq(atomic_load(&c0.bytes_in), 24);
    complete_seq(S, 0, BDS_OK);
    cr_assert_eq(atomic_load(&c0.completed), 1, "completed at the moment the call ends");
    cr_assert_eq(atomic_load(&c0.calls_live), 2);

    sim_msg *m = sim_msg_new(a, "r", 10, SIM_FAIL);
    m->fails = 1;
    m->replies = 2;
    m->reply_bytes = 5;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    sim_advance(S, 1);
    cr_assert_eq(atomic_load(&c0.retried), 1);
    cr_assert_eq(atomic_load(&c0.replies_written), S->sessions[a].n_written);
    cr_assert_eq(atomic_load(&c0.bytes_out), 5 * S->sessions[a].n_written);
    cr_assert_eq(sim_send(S, b, "x", 1, SIM_ASYNC), BDS_OK);
    cr_assert_eq(sim_send(S, b, "y", 2, SIM_ASYNC), BDS_OK); /* over capacity: a signal */
    cr_assert_eq(sim_send(S, b, "z", 3, SIM_NONTERMINAL), BDS_OK);
    sim_settle(S);
    cr_assert_eq(atomic_load(&c0.pressure_signals), 2);
    cr_assert_eq(atomic_load(&c0.nonterminal_failures), 1);
    stats_sum(S, home0, 2, &sum);
    expect_counters_match(&c0, &sum);

    cr_assert_eq(sim_send(S, h, "x", 1, SIM_ASYNC), BDS_OK);
    sim_settle(S);
    cr_assert_eq(sim_send(S, h, "y", 2, SIM_ASYNC), BDS_E_INBOUND_REJECTED);
    sim_settle(S);
    cr_assert_eq(atomic_load(&c1.rejected), 1, "pipeline 1's sessions count on their own counters");
    cr_assert_eq(atomic_load(&c1.admitted), 1);
    cr_assert_eq(atomic_load(&c1.dropped) + atomic_load(&c1.completed) + atomic_load(&c1.failed), 0,
                 "its call is still with its handler");
    cr_assert_eq(atomic_load(&c0.rejected), 0);

    while (S->n_pending) {
        sim_complete(S, 0, BDS_OK, false);
        sim_settle(S);
    }
    stats_sum(S, home0, 2, &sum);
    expect_counters_match(&c0, &sum);
    stats_sum(S, home1, 1, &sum);
    expect_counters_match(&c1, &sum);
    cr_assert_eq(atomic_load(&c0.calls_live), 0);
    cr_assert_eq(atomic_load(&c1.calls_live), 0);
    sim_free(S);
}

Test(pipeline, live_counters_stay_still_with_metrics_off) {
    sim *S = sim_new(1, 51);
    bds_counters c = {0};
    bds_options o = bds_default_options();
    o.metrics.enabled = false;
    int a = open_counted(S, 0, &o, &c);
    cr_assert_eq(sim_send(S, a, "k", 1, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_eq(atomic_load(&c.admitted) + atomic_load(&c.completed) + atomic_load(&c.calls_live), 0);
    sim_free(S);
}

/* ---- outbound KEYED_FIFO ---- */

/* Key "a" has a backlog of replies waiting for the one outbound token when
 * key "b" and a push make theirs: returns the write order (seqs; the push is
 * 99). */
static void outbound_order(bds_ordering_mode mode, uint64_t *order, uint32_t *n) {
    sim *S = sim_new(1, 70);
    bds_options o = bds_default_options();
    o.outbound.ordering.mode = mode;
    o.outbound.backpressure.capacity = 1;
    o.outbound.backpressure.queue_capacity = 0;
    S->auto_ack_replies = false; /* the client reads when the test says */
    int s = sim_open(S, 0, &o);
    for (uint64_t i = 1; i <= 5; i++) {
        sim_msg *m = sim_msg_new(s, "a", i, SIM_OK);
        m->replies = 1;
        bds_status st;
        sim_send_msg(S, m, &st);
    }
    sim_settle(S);
    sim_msg *m = sim_msg_new(s, "b", 10, SIM_OK);
    m->replies = 1;
    bds_status st;
    sim_send_msg(S, m, &st);
    sim_settle(S);
    sim_reply *push = calloc(1, sizeof *push);
    push->seq = 99;
    push->session = s;
    sim_home(S, s);
    cr_assert_eq(bds_session_send(S->sessions[s].s, &push->r), BDS_OK);
    cr_assert_eq(S->sessions[s].n_written, 1, "one token: the rest wait");
    while (S->sessions[s].n_unacked) ack_oldest(S, s);
    *n = S->sessions[s].n_written;
    memcpy(order, S->sessions[s].written, *n * sizeof *order);
    sim_free(S);
}

Test(pipeline, outbound_fifo_keeps_one_order_for_the_stream) {
    uint64_t order[16];
    uint32_t n;
    outbound_order(BDS_ORDERING_FIFO, order, &n);
    uint64_t want[] = {1, 2, 3, 4, 5, 10, 99};
    cr_assert_eq(n, 7);
    for (uint32_t i = 0; i < n; i++) cr_assert_eq(order[i], want[i], "at %u: %lu", i, (unsigned long)order[i]);
}

/* KEYED_FIFO: a's backlog holds back b's reply and the push (the empty key)
 * by one of its replies each, not by all of them; order holds per key. */
Test(pipeline, outbound_keyed_fifo_lets_other_keys_pass_a_backlog_in_turns) {
    uint64_t order[16];
    uint32_t n;
    outbound_order(BDS_ORDERING_KEYED_FIFO, order, &n);
    uint64_t want[] = {1, 2, 10, 99, 3, 4, 5};
    cr_assert_eq(n, 7);
    for (uint32_t i = 0; i < n; i++) cr_assert_eq(order[i], want[i], "at %u: %lu", i, (unsigned long)order[i]);
}

Test(pipeline, outbound_keyed_fifo_drops_every_waiting_key_at_close) {
    sim *S = sim_new(1, 71);
    bds_options o = bds_default_options();
    o.outbound.ordering.mode = BDS_ORDERING_KEYED_FIFO;
    o.outbound.backpressure.capacity = 1;
    o.outbound.backpressure.queue_capacity = 0;
    S->auto_ack_replies = false;
    int s = sim_open(S, 0, &o);
    const char *keys[] = {"a", "b", "c"};
    for (uint64_t i = 0; i < 9; i++) {
        sim_msg *m = sim_msg_new(s, keys[i % 3], i, SIM_OK);
        m->replies = 2;
        bds_status st;
        sim_send_msg(S, m, &st);
    }
    sim_settle(S);
    cr_assert_eq(S->sessions[s].n_written, 1);
    sim_home(S, s);
    bds_session_cancel(S->sessions[s].s);
    sim_settle(S);
    cr_assert_eq(S->sessions[s].dropped_replies, 17, "every key's waiting replies");
    cr_assert_eq(S->pipes[0]->okeys.live, 0, "and their queues");
    sim_free(S);
}

/* One writer per bds_counters: a second pipeline's session is refused. */
Test(pipeline, live_counters_of_one_pipeline_are_refused_on_another) {
    sim *S = sim_new(2, 52);
    bds_counters c = {0};
    bds_options o = bds_default_options();
    int a = open_counted(S, 0, &o, &c);
    (void)a;
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    cfg.options = &o;
    cfg.handler = sim_handler;
    cfg.ops = &sim_ops;
    cfg.counters = &c;
    bds_session *s = NULL;
    const char *why = NULL;
    sim_switch(S, 1);
    cr_assert_eq(bds_session_create(&s, S->pipes[1], &cfg, &why), BDS_E_INVALID);
    cr_assert_null(s);
    cr_assert(why && strstr(why, "counters"), "why names the field: %s", why ? why : "(null)");
    sim_switch(S, 0);
    int b = open_counted(S, 0, &o, &c); /* the same pipeline shares it */
    cr_assert_eq(sim_send(S, b, "k", 1, SIM_OK), BDS_OK);
    sim_settle(S);
    cr_assert_eq(atomic_load(&c.completed), 1);
    sim_free(S);
}
