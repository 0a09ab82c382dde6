/* server_conn.c — the gRPC server's connections: accept, the HTTP/2 session
 * of each connection fed from its socket, output flushed once per tick, and
 * the connection timers (handshake, idle GOAWAY, keepalive, send stall,
 * connection age). */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pipeline_int.h"
#include "server_int.h"

/* ---- connection output ------------------------------------------------------------------- */


/* Output is due on sc. Dirty connections are flushed at the end of the
 * pipeline's run (hook_run), so the socket writes they make are sent by the
 * same tick's flushers (a flusher queued while the shard runs flushers waits
 * for the next tick: one more io_uring_enter per round trip); the shard
 * flusher catches what timers and late callbacks dirty after it. */
void bds__srv_conn_kick(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    srv_shard *sh = sc->sh;
    if (!sc->dirty) {
        sc->dirty = true;
        bds__dlist_insert_tail(&sh->dirty, &sc->dirty_link);
    }
    bds__shard_defer_flush(sh->shard, &sh->flusher);
}

static void conn_undirty(srv_conn *sc) {
    bds__dlist_unlink(&sc->dirty_link);
    sc->dirty = false;
}

/* Flushes every dirty connection. A kick from inside bds__srv_conn_flush (a blocked
 * reply moving on) finds its connection still marked and adds nothing: that
 * flush produces the output anyway. */
void bds__srv_shard_flush_dirty(srv_shard *sh) {
    bds__srv_shard_budget_pass(sh);
    for (bds__dlist *l; (l = bds__dlist_first(&sh->dirty));) {
        srv_conn *sc = BDS_DLIST_ENTRY(l, srv_conn, dirty_link);
        bds__dlist_unlink(l);
        bds__srv_conn_flush(sc);
        sc->dirty = false;
    }
}

void bds__srv_shard_flusher(bds_flusher *f) { bds__srv_shard_flush_dirty(BDS_CONTAINER_OF(f, srv_shard, flusher)); }


/* Queues bytes on the socket: true when all of them were queued, false
 * when none were (the queue is full: on_drain flushes again; or the
 * connection is going). The send timer measures a stall from the moment
 * output is pending: an idle connection's first write starts its clock
 * afresh (without this, output in flight when the timer fired after a quiet
 * spell counted as a whole period without progress). */
static bool conn_write(srv_conn *sc, const uint8_t *p, size_t n) {
    if (!sc->c) return false;
    if (bds__conn_out_bytes(sc->c) == 0) {
        sc->sent_mark = bds__conn_sent_bytes(sc->c);
        sc->sent_mark_ns = bds__shard_now(sc->sh->shard);
    }
    return bds__conn_write(sc->c, p, n) == BDS_OK;
}

/* Output at least this large leaves by reference, without the copy into the
 * socket's chunks (bds__h2_output_swap); smaller output is copied, packing
 * small flushes into few chunks. */
#define OUT_BY_REF_MIN (32u * 1024u)

/* Hands the HTTP/2 session's whole output buffer (its |len| unsent bytes)
 * to the socket by reference and gives the session a spare. False, with
 * nothing done, when there is no spare to give (OUT_SPARES_MAX are in the
 * socket's queue) or the queue is full: the bytes are copied then, or wait. */
static bool conn_write_buffer(srv_conn *sc, const uint8_t *data, size_t len) {
    if (!sc->c) return false;
    if (!sc->n_spares) {
        /* Large flushes make spares, up to the bound; past it they wait for
         * the socket to give one back (conn_on_release), copying meanwhile. */
        if (sc->spares_made == OUT_SPARES_MAX) return false;
        uint8_t *b = sc->alloc.malloc_fn(bds__h2_output_cap(sc->h2), sc->alloc.ctx);
        if (!b) return false;
        sc->out_spares[sc->n_spares++] = b;
        sc->spares_made++;
    }
    size_t before = bds__conn_out_bytes(sc->c);
    uint64_t sent = bds__conn_sent_bytes(sc->c);
    if (bds__conn_write_ref(sc->c, data, len, (void *)data) != BDS_OK) return false; /* queue full */
    if (before == 0) { /* the send timer's clock starts with pending output (conn_write) */
        sc->sent_mark = sent;
        sc->sent_mark_ns = bds__shard_now(sc->sh->shard);
    }
    /* |data| is the session's buffer from its start: all of it goes. */
    uint8_t *buf = bds__h2_output_swap(sc->h2, sc->out_spares[--sc->n_spares]);
    BDS_ASSERT(buf == data);
    return true;
}

/* A buffer sent by reference went out (or was dropped at close): it is the
 * spare again. */
static void conn_on_release(bds_conn *c, void *tag, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    BDS_ASSERT(sc->n_spares < OUT_SPARES_MAX);
    sc->out_spares[sc->n_spares++] = tag;
}

/* How far the BDP estimator may grow a connection's windows: to
 * stream_window_max_bytes, but never past an eighth of the memory budgets
 * (conn_bytes_max, shard_bytes_max): what a window lets a client send before
 * the server stops crediting it is memory the budgets must still be able to
 * refuse. 0 (fixed windows) when that is not above stream_window_bytes. */
static uint32_t conn_window_max(const bds_server_config *cfg) {
    uint64_t max = cfg->stream_window_max_bytes;
    if (cfg->conn_bytes_max && cfg->conn_bytes_max / 8 < max) max = cfg->conn_bytes_max / 8;
    if (cfg->shard_bytes_max && cfg->shard_bytes_max / 8 < max) max = cfg->shard_bytes_max / 8;
    return max > cfg->stream_window_bytes ? (uint32_t)max : 0;
}

/* TLS: the session's records, straight into the socket's output chunks. */
static bool conn_tls_write(void *arg, const uint8_t *p, size_t n) { return conn_write(arg, p, n); }

/* TLS failed (or the peer ended it): what was written (an alert, our
 * close_notify) goes out, then the socket closes; nothing more is read. */
static void conn_tls_close(srv_conn *sc, const char *why) {
    if (why) bds__log(&sc->sh->srv->log, BDS_LOG_WARN, "closing a TLS connection", "peer=%s why=\"%s\"", sc->peer, why);
    sc->h2_failed = true;
    bds__conn_recv_pause(sc->c);
    bds__conn_close_after_flush(sc->c);
    sc->closing = true;
}

static void conn_flush(srv_conn *sc);

void bds__srv_conn_flush(srv_conn *sc) {
    conn_flush(sc);
    /* What this connection's HTTP/2 session counted since the last flush
     * (its input came before, its timers' output too) joins its shard's. */
    if (sc->sh->srv->metrics_on) bds__srv_conn_stats_fold(sc);
}

static void conn_flush(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    /* Only calls with replies waiting: a flush costs nothing per idle stream. */
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sc->waiting) { /* a call whose trailers were pending is freed */
        bds__srv_call_move_blocked(BDS_DLIST_ENTRY(it, srv_call, wait_link));
    }
    /* TLS: no HTTP/2 output (our SETTINGS included) before the handshake
     * has ended with ALPN h2. */
    if (sc->tls && !sc->tls_checked) return;
    for (;;) {
        const uint8_t *data;
        size_t len;
        bds_status st = bds__h2_output(sc->h2, &data, &len);
        if (len) {
            if (sc->tls) {
                /* Encrypted record by record into the socket's chunks; what
                 * the full queue did not take is encrypted again from the
                 * same HTTP/2 output once on_drain flushes. */
                size_t sent = 0;
                bds_status ts = bds__tls_send(sc->tls, data, len, &sent);
                if (sent) bds__h2_output_advance(sc->h2, sent);
                if (ts == BDS_E_AGAIN) break;
                if (ts != BDS_OK) {
                    conn_tls_close(sc, "TLS output failed");
                    return;
                }
            } else if (len >= OUT_BY_REF_MIN && conn_write_buffer(sc, data, len)) {
                /* sent by reference: the session writes into the spare now */
            } else {
                if (!conn_write(sc, data, len)) break;
                bds__h2_output_advance(sc->h2, len);
            }
        }
        if (st != BDS_OK) {
            /* A failed session still says why: its GOAWAY waits for room in
             * the output buffer, which the bytes just written made. */
            if (len && bds__h2_want_write(sc->h2)) continue;
            if (!sc->h2_failed)
                bds__log(&sc->sh->srv->log, BDS_LOG_WARN, "closing a connection: HTTP/2 output failed",
                         "peer=%s nghttp2_error=%d", sc->peer, bds__h2_get_stats(sc->h2)->nghttp2_fatal);
            bds__conn_close_after_flush(sc->c);
            sc->closing = true;
            return;
        }
        if (!len) break;
    }
    if (bds__h2_is_done(sc->h2)) {
        if (sc->goaway_final && !sc->h2_failed && !sc->sh->stopping) {
            if (!sc->linger_until_ns) {
                sc->linger_until_ns = bds__shard_now(sc->sh->shard) + IDLE_LINGER_NS;
                bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, sc->linger_until_ns);
            }
            return; /* the peer's EOF, or conn_timer_fired, closes it */
        }
        if (bds__log_on(&sc->sh->srv->log, BDS_LOG_DEBUG)) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG, "connection done",
                     "peer=%s calmed=%d nghttp2_error=%d glitches=%lu streams=%lu resets=%lu", sc->peer, hs->calmed,
                     hs->nghttp2_fatal, (unsigned long)hs->glitches, (unsigned long)hs->calls_started,
                     (unsigned long)hs->calls_reset);
        }
        bds__conn_close_after_flush(sc->c);
        sc->closing = true;
    }
}

/* ---- connections ----------------------------------------------------------------------------------- */

/* Plaintext for the HTTP/2 session. Returns false when the session failed
 * (the connection then ends with its GOAWAY). */
static bool conn_h2_recv(void *arg, const uint8_t *bytes, size_t len) {
    srv_conn *sc = arg;
    if (sc->h2_failed || sc->closing) return false;
    if (bds__h2_recv(sc->h2, bytes, len, sc->last_recv_ns) != BDS_OK) {
        if (bds__log_on(&sc->sh->srv->log, BDS_LOG_WARN)) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            bds__log(&sc->sh->srv->log, BDS_LOG_WARN,
                     hs->calmed ? "closing a connection: HTTP/2 flood limit" : "closing a connection: HTTP/2 fatal error",
                     "peer=%s nghttp2_error=%d glitches=%lu", sc->peer, hs->nghttp2_fatal, (unsigned long)hs->glitches);
        }
        /* Stop reading; the flush sends what is buffered and the session's
         * GOAWAY and closes (on a full socket: the rest after on_drain). */
        sc->h2_failed = true;
        bds__conn_recv_pause(sc->c);
        bds__srv_conn_flush(sc);
        return false;
    }
    return true;
}

/* Ciphertext from the socket: the handshake, then records whose plaintext
 * goes to the HTTP/2 session. */
static void conn_tls_recv(srv_conn *sc, const uint8_t *bytes, size_t len) {
    const char *why = NULL;
    bds_status st = bds__tls_recv(sc->tls, bytes, len, conn_h2_recv, sc, &why);
    if (st == BDS_E_INVALID) {
        conn_tls_close(sc, why);
        return;
    }
    if (st == BDS_UNAVAILABLE) { /* the client's close_notify: ours answers it */
        bds__tls_shutdown(sc->tls);
        conn_tls_close(sc, NULL);
        return;
    }
    if (!sc->tls_checked && bds__tls_ready(sc->tls)) {
        if (!bds__tls_alpn_ok(sc->tls)) {
            conn_tls_close(sc, "the client did not offer ALPN h2 (gRPC needs HTTP/2)");
            return;
        }
        sc->tls_checked = true;
    }
    bds__srv_conn_kick(sc); /* handshake messages, or the session's answers */
}

static void conn_on_data(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    if (sc->closing || sc->h2_failed) return;
    bds__pipeline_set_current(bds__shard_pipeline_get(sc->sh->pipe));
    sc->last_recv_ns = bds__shard_now(sc->sh->shard);
    if (sc->tls) {
        conn_tls_recv(sc, bytes, len);
        return;
    }
    if (conn_h2_recv(sc, bytes, len)) bds__srv_conn_kick(sc);
}

static void conn_on_drain(bds_conn *c, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    bds__srv_conn_kick(sc);
}

static void conn_on_close(bds_conn *c, int err, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    bool expected = !err || err == ECONNRESET || err == EPIPE;
    bds__log(&sc->sh->srv->log, expected ? BDS_LOG_DEBUG : BDS_LOG_WARN, "connection closed", "peer=%s error=\"%s\"",
             sc->peer, strerror(err));
    srv_shard *sh = sc->sh;
    bds__pipeline_set_current(bds__shard_pipeline_get(sh->pipe));
    bds__timer_cancel(bds__shard_timers(sh->shard), &sc->timer);
    conn_undirty(sc);
    sc->c = NULL;
    sc->closing = true;
    bds__h2_abort_calls(sc->h2, BDS_CANCELLED); /* on_reset for each live call */
    for (bds__dlist *l; (l = bds__dlist_first(&sc->calls));) {
        srv_call *call = BDS_DLIST_ENTRY(l, srv_call, conn_link);
        if (call->finish_pending) bds__srv_call_free(call); /* its session is gone already */
        else bds__srv_call_unlink(call);                     /* their sessions close later, without us */
    }
    for (bds__dlist *l; (l = bds__dlist_first(&sc->lingering));) { /* they end on their own, on no list */
        BDS_DLIST_ENTRY(l, srv_call, conn_link)->conn = NULL;
        bds__dlist_unlink(l);
    }
    sc->n_lingering = 0;
    if (sh->srv->metrics_on) bds__srv_conn_stats_fold(sc);
    bds__h2_destroy(sc->h2);
    while (sc->n_spares) sc->alloc.free_fn(sc->out_spares[--sc->n_spares], sc->alloc.ctx);
    bds__tls_free(sc->tls);
    ctr_sub(&shard_ctr(sh)->connections_live, 1);
    sc->acct->conn = NULL;
    bds__srv_acct_unref(sc->acct);
    bds__dlist_unlink(&sc->shard_link);
    free(sc);
}

static const bds_conn_callbacks conn_cbs = {
    .on_data = conn_on_data, .on_drain = conn_on_drain, .on_close = conn_on_close, .on_release = conn_on_release,
};

/* ---- connection timers -------------------------------------------------------------------------- */

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Closes a connection a timer gave up on. Handshake timeouts are what port
 * scanners cause: those log only at debug level. */
static void conn_timeout(srv_conn *sc, const char *why, uint64_t after_ns, int level) {
    bds__log(&sc->sh->srv->log, level, "closing a connection", "peer=%s reason=\"%s\" after_s=%.3f", sc->peer, why,
             (double)after_ns / 1e9);
    sc->closing = true;
    bds__conn_close(sc->c, ETIMEDOUT);
}

/* The age's grace period is over: the final GOAWAY goes now if it has not
 * (a grace shorter than the notice's second), and every stream still open
 * ends UNAVAILABLE, its handlers cancelled; the connection then closes as
 * an idle one does, once the trailers are out. */
static void conn_age_grace_over(srv_conn *sc) {
    bds__pipeline_set_current(bds__shard_pipeline_get(sc->sh->pipe));
    if (!sc->goaway_final) {
        sc->goaway_final = true;
        bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
    }
    uint32_t n = 0;
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sc->calls) {
        srv_call *call = BDS_DLIST_ENTRY(it, srv_call, conn_link);
        if (!call->session || call->finish_pending) continue;
        bds_session_fail(call->session, BDS_UNAVAILABLE, "max connection age: grace period over");
        n++;
    }
    bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG, "max connection age: grace period over", "peer=%s streams_ended=%u",
             sc->peer, n);
    bds__srv_conn_kick(sc);
}

/* A connection's age, ±10% at random (as grpc-go), so that connections made
 * together (a client's pool, every client after a deploy) do not come back
 * together. */
static uint64_t conn_age_jittered(srv_shard *sh, uint64_t age_ns) {
    uint64_t z = (sh->jitter_rng += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    uint64_t tenth = age_ns / 10;
    if (!tenth) return age_ns;
    return age_ns - tenth + z % (2 * tenth + 1); /* age_ns - tenth .. age_ns + tenth */
}

/* Checks every connection timer, acts on those due, and re-arms for the
 * earliest one left. Keepalive and send progress are measured from marks
 * (last bytes received, sent bytes at the last check), so no hot path
 * touches the timer; a send stall is caught between T and 2T after it began. */
static void conn_timer_fired(bds_timer *t, void *ctx) {
    (void)t;
    srv_conn *sc = ctx;
    if (!sc->c || sc->closing) return;
    const bds_server_config *cfg = &sc->sh->srv->cfg;
    uint64_t now = bds__shard_now(sc->sh->shard), next = UINT64_MAX, due;
    if (sc->linger_until_ns) {
        if (now < sc->linger_until_ns) {
            bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, sc->linger_until_ns);
            return;
        }
        bds__conn_close_after_flush(sc->c);
        sc->closing = true;
        return;
    }
    if (cfg->handshake_timeout_ns && !bds__h2_peer_ready(sc->h2)) {
        due = sat_add(sc->born_ns, cfg->handshake_timeout_ns);
        if (now >= due) {
            conn_timeout(sc, "no HTTP/2 preface and SETTINGS in time", now - sc->born_ns, 3);
            return;
        }
        next = due;
    }
    /* A connection without streams is the idle timer's when there is one: it
     * ends it with GOAWAY. A PING there only closed clients that read their
     * socket only while a call runs (grpcio), abruptly, before the idle GOAWAY:
     * their next call failed UNAVAILABLE on the dead socket. */
    bool keepalive = cfg->keepalive_time_ns && (!bds__dlist_empty(&sc->calls) || !cfg->idle_timeout_ns);
    if (keepalive) {
        /* Dead: nothing at all received since our PING (not only no ACK: a
         * PING sent while the connection was idle may never be read). */
        if (bds__h2_ping_outstanding(sc->h2) && sc->last_recv_ns <= sc->ping_sent_ns) {
            if (cfg->keepalive_timeout_ns) {
                due = sat_add(sc->ping_sent_ns, cfg->keepalive_timeout_ns);
                if (now >= due) {
                    conn_timeout(sc, "keepalive PING unanswered", now - sc->ping_sent_ns, 2);
                    return;
                }
                if (due < next) next = due;
            }
        } else {
            due = sat_add(sc->last_recv_ns, cfg->keepalive_time_ns);
            if (now >= due && bds__h2_ping(sc->h2) == BDS_OK) {
                sc->ping_sent_ns = now;
                bds__srv_conn_kick(sc);
                due = sat_add(now, cfg->keepalive_timeout_ns ? cfg->keepalive_timeout_ns : cfg->keepalive_time_ns);
            }
            if (due < next) next = due;
        }
    }
    /* Max connection age: the GOAWAY notice, as the idle timer's below; the
     * streams open run on for the grace period. The server's own stop sends
     * its GOAWAYs and has its grace period. */
    if (sc->age_due_ns && !sc->notice_ns && !sc->sh->stopping) {
        if (now >= sc->age_due_ns) {
            bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG, "max connection age: GOAWAY", "peer=%s age_s=%.3f", sc->peer,
                     (double)(now - sc->born_ns) / 1e9);
            if (cfg->max_connection_age_grace_ns) sc->age_grace_ns = sat_add(now, cfg->max_connection_age_grace_ns);
            sc->aged = true;
            sc->notice_ns = now;
            bds__h2_shutdown_notice(sc->h2);
            bds__srv_conn_kick(sc);
        } else if (sc->age_due_ns < next) {
            next = sc->age_due_ns;
        }
    }
    if (sc->aged && sc->age_grace_ns && !sc->sh->stopping) {
        if (sc->age_close_ns) {
            if (now >= sc->age_close_ns) {
                conn_timeout(sc, "max connection age: grace period over, streams still open", now - sc->born_ns, 2);
                return;
            }
            if (sc->age_close_ns < next) next = sc->age_close_ns;
        } else if (now >= sc->age_grace_ns) {
            conn_age_grace_over(sc);
            sc->age_close_ns = sat_add(now, AGE_CLOSE_AFTER_NS);
            if (sc->age_close_ns < next) next = sc->age_close_ns;
        } else if (sc->age_grace_ns < next) {
            next = sc->age_grace_ns;
        }
    }
    if (sc->notice_ns && !sc->goaway_final) {
        due = sat_add(sc->notice_ns, IDLE_GOAWAY_NOTICE_NS);
        if (now >= due) {
            /* The connection closes once this GOAWAY is out and the streams
             * opened since the notice are over (bds__h2_is_done). */
            sc->goaway_final = true;
            bds__log(&sc->sh->srv->log, BDS_LOG_DEBUG, sc->aged ? "aged connection: GOAWAY" : "idle connection: GOAWAY",
                     "peer=%s", sc->peer);
            bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
            bds__srv_conn_kick(sc);
        } else if (due < next) {
            next = due;
        }
    } else if (cfg->idle_timeout_ns && bds__dlist_empty(&sc->calls) && !sc->goaway_final) {
        due = sat_add(sc->idle_since_ns, cfg->idle_timeout_ns);
        if (now >= due) {
            sc->notice_ns = now;
            bds__h2_shutdown_notice(sc->h2);
            bds__srv_conn_kick(sc);
            due = sat_add(now, IDLE_GOAWAY_NOTICE_NS);
        }
        if (due < next) next = due;
    }
    if (cfg->send_timeout_ns) {
        uint64_t sent = bds__conn_sent_bytes(sc->c);
        if (sent != sc->sent_mark || bds__conn_out_bytes(sc->c) == 0) {
            sc->sent_mark = sent;
            sc->sent_mark_ns = now;
        } else if (now - sc->sent_mark_ns >= cfg->send_timeout_ns) {
            conn_timeout(sc, "no send progress: the peer stopped reading", now - sc->sent_mark_ns, 2);
            return;
        }
        due = sat_add(sc->sent_mark_ns, cfg->send_timeout_ns);
        if (due < next) next = due;
    }
    if (next != UINT64_MAX) bds__timer_arm(bds__shard_timers(sc->sh->shard), &sc->timer, next);
}

static void conn_timers_start(srv_conn *sc) {
    uint64_t now = bds__shard_now(sc->sh->shard);
    sc->born_ns = sc->last_recv_ns = sc->idle_since_ns = sc->sent_mark_ns = now;
    uint64_t age = sc->sh->srv->cfg.max_connection_age_ns;
    if (age) sc->age_due_ns = sat_add(now, conn_age_jittered(sc->sh, age));
    bds__timer_init(&sc->timer, conn_timer_fired, sc);
    uint32_t ms = sc->sh->srv->cfg.tcp_user_timeout_ms;
    if (ms) (void)setsockopt(bds__conn_fd(sc->c), IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms); /* best effort */
    conn_timer_fired(&sc->timer, sc); /* arms the first deadline */
}

void bds__srv_on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    (void)l;
    srv_shard *sh = ctx;
    srv_conn *sc = calloc(1, sizeof *sc);
    srv_acct *acct = calloc(1, sizeof *acct);
    if (!sc || !acct) {
        free(sc);
        free(acct);
        bds__conn_close(c, 0);
        return;
    }
    *acct = (srv_acct){.sh = sh, .conn = sc, .refs = 1};
    bds__dlist_init(&sc->calls);
    bds__dlist_init(&sc->waiting);
    bds__dlist_init(&sc->lingering);
    bds__dlist_init(&sc->shard_link);
    bds__dlist_init(&sc->dirty_link);
    sc->acct = acct;
    sc->sh = sh;
    sc->alloc = (bds__palloc){bds__srv_acct_malloc, bds__srv_acct_free, bds__srv_acct_calloc, bds__srv_acct_realloc,
                              acct};
    bds__h2_config hc;
    bds__h2_config_default(&hc);
    hc.max_concurrent_streams = sh->srv->cfg.max_concurrent_streams;
    hc.stream_window_bytes = sh->srv->cfg.stream_window_bytes;
    hc.window_bytes_max = conn_window_max(&sh->srv->cfg);
    hc.header_list_bytes_max = sh->srv->cfg.max_header_list_bytes;
    hc.msg_bytes_max = sh->srv->cfg.max_message_bytes;
    hc.stream_send_bytes_max = REPLY_HIGH_WATER; /* past it replies wait here, keeping their tokens */
    hc.methods = &sh->srv->table;
    hc.credit_partial_messages = true; /* messages larger than the stream window */
    hc.capture_metadata = true;
    hc.capture_bytes_max = sh->srv->cfg.max_header_list_bytes; /* what passes the list bound fits */
    const bds_server_config *cfg = &sh->srv->cfg;
    hc.ping_min_interval_ns = cfg->ping_min_interval_ns;
    /* grpc-go: with no stream open and keepalive without streams not
     * permitted, a client PING less than 2 h after the last is a strike. */
    const uint64_t two_hours = 2ull * 3600 * 1000000000ull;
    hc.ping_idle_min_interval_ns = cfg->ping_without_streams || cfg->ping_min_interval_ns > two_hours
                                       ? cfg->ping_min_interval_ns
                                       : two_hours;
    hc.alloc = &sc->alloc;
    hc.codec = &sh->codec; /* one message is decompressed at a time on a shard */
    if (bds__h2_create(&sc->h2, &hc, &bds__srv_h2_cbs, sc) != BDS_OK || sh->stopping) {
        if (sc->h2) bds__h2_destroy(sc->h2);
        free(sc);
        bds__srv_acct_unref(acct);
        bds__conn_close(c, 0);
        return;
    }
    if (sh->srv->tls_paths[0]) {
        pthread_mutex_lock(&sh->srv->tls_lock); /* against a reload swapping the context */
        sc->tls = bds__tls_new(sh->srv->tls, conn_tls_write, sc);
        pthread_mutex_unlock(&sh->srv->tls_lock);
        if (!sc->tls) {
            bds__h2_destroy(sc->h2);
            free(sc);
            bds__srv_acct_unref(acct);
            bds__conn_close(c, 0);
            return;
        }
    }
    sc->c = c;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(bds__conn_fd(c), (struct sockaddr *)&peer, &plen) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        if (peer.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&peer;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            snprintf(sc->peer, sizeof sc->peer, "[%s]:%u", host, ntohs(a->sin6_port));
        } else if (peer.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&peer;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            snprintf(sc->peer, sizeof sc->peer, "%s:%u", host, ntohs(a->sin_port));
        }
    }
    ctr_add(&shard_ctr(sh)->connections_accepted, 1);
    ctr_add(&shard_ctr(sh)->connections_live, 1);
    bds__dlist_insert_head(&sh->conns, &sc->shard_link);
    bds__conn_set_callbacks(c, &conn_cbs, sc);
    conn_timers_start(sc);
    bds__srv_conn_kick(sc); /* our SETTINGS */
    if (sh->over) bds__srv_shard_budget_due(sh); /* not read either, until under budget */
}

