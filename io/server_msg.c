/* server_msg.c — the gRPC server's message buffers and memory budgets.
 *
 * A srv_msg is a server-side message buffer: inbound payloads and outbound
 * replies, from the shard's size-class pools (or malloc), counted per
 * connection (srv_acct) and per shard. At a budget the connection (or the
 * whole shard) is not read, new streams are refused (REFUSED_STREAM), and the
 * stream holding most ends RESOURCE_EXHAUSTED (bds__srv_shard_budget_pass). Every
 * buffer is freed on its home shard, when its last holder lets go. */
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

/* ---- message buffers ----------------------------------------------------------------------- */

BDS_STATIC_ASSERT(offsetof(srv_msg, data) == offsetof(srv_msg, prefix) + sizeof(((srv_msg *)0)->prefix),
                  "the prefix room sits right before the payload");

/* Each class keeps at most SRV_MSG_POOL_KEEP bytes of free buffers: enough
 * for a busy shard's steady state, while a burst's buffers go back to malloc. */
#define SRV_MSG_POOL_KEEP (4u << 20)

void bds__srv_msg_pools_init(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) {
        size_t size = (size_t)SRV_MSG_CLASS_MIN << i;
        bds__pool_init_trimmed(&sh->msg_pools[i], size, (uint32_t)(SRV_MSG_POOL_KEEP / size));
    }
}

/* Asserts every buffer came back (a leak trips here at shutdown). */
void bds__srv_msg_pools_deinit(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) bds__pool_deinit(&sh->msg_pools[i]);
}

/* The memory a message takes from its home shard. */
static size_t msg_size(const srv_msg *m) {
    return m->cls == SRV_MSG_HEAP ? sizeof(srv_msg) + m->len : (size_t)SRV_MSG_CLASS_MIN << m->cls;
}

/* ---- memory budgets ------------------------------------------------------------------------ */

/* Under budget again below 7/8 of it: reading does not flap at the mark. */
static uint64_t budget_low(uint64_t max) { return max - max / 8; }

void bds__srv_shard_budget_due(srv_shard *sh) {
    if (sh->budget_due) return;
    sh->budget_due = true;
    bds__shard_defer_flush(sh->shard, &sh->flusher);
}

/* Bytes were added to sh (and a): a budget reached, or a victim to pick. */
static void budget_check_up(srv_shard *sh, const srv_acct *a) {
    const bds_server_config *cfg = &sh->srv->cfg;
    if (sh->over ? !sh->victim : cfg->shard_bytes_max && sh->msg_bytes + sh->h2_bytes >= cfg->shard_bytes_max)
        bds__srv_shard_budget_due(sh);
    else if (a && a->conn &&
             (a->conn->over ? !a->conn->victim : cfg->conn_bytes_max && a->bytes >= cfg->conn_bytes_max))
        bds__srv_shard_budget_due(sh);
}

/* Bytes were given back: a budget may be under its low mark again. */
static void budget_check_down(srv_shard *sh, const srv_acct *a) {
    const bds_server_config *cfg = &sh->srv->cfg;
    if (sh->over && sh->msg_bytes + sh->h2_bytes < budget_low(cfg->shard_bytes_max)) bds__srv_shard_budget_due(sh);
    else if (a && a->conn && a->conn->over && a->bytes < budget_low(cfg->conn_bytes_max)) bds__srv_shard_budget_due(sh);
}

void bds__srv_acct_unref(srv_acct *a) {
    if (--a->refs == 0) free(a);
}

/* A connection's fixed HTTP/2 cost (its 256 KiB output buffer, nghttp2's
 * session: ~285 KiB measured) is bounded by the number of connections, not
 * by the budgets; what it grows past that (streams, partial messages, HPACK
 * state) counts. Counting it all, ~3,700 idle connections would hold a 1 GiB
 * shard at its budget, with no stream to end. */
#define H2_CONN_FIXED_BYTES (320u << 10)

static uint64_t h2_counted(uint64_t h2) { return h2 > H2_CONN_FIXED_BYTES ? h2 - H2_CONN_FIXED_BYTES : 0; }

/* The HTTP/2 session's allocator: libc, counted in its connection's acct. */
static void acct_h2_add(srv_acct *a, size_t n) {
    uint64_t before = h2_counted(a->h2);
    a->h2 += n;
    uint64_t d = h2_counted(a->h2) - before;
    a->bytes += d;
    a->sh->h2_bytes += d;
    budget_check_up(a->sh, a);
}

static void acct_h2_sub(srv_acct *a, size_t n) {
    uint64_t before = h2_counted(a->h2);
    a->h2 -= n;
    uint64_t d = before - h2_counted(a->h2);
    a->bytes -= d;
    a->sh->h2_bytes -= d;
    budget_check_down(a->sh, a);
}

void *bds__srv_acct_malloc(size_t size, void *ctx) {
    void *p = malloc(size);
    if (p) acct_h2_add(ctx, malloc_usable_size(p));
    return p;
}

void bds__srv_acct_free(void *p, void *ctx) {
    if (!p) return;
    acct_h2_sub(ctx, malloc_usable_size(p));
    free(p);
}

void *bds__srv_acct_calloc(size_t nmemb, size_t size, void *ctx) {
    void *p = calloc(nmemb, size);
    if (p) acct_h2_add(ctx, malloc_usable_size(p));
    return p;
}

void *bds__srv_acct_realloc(void *p, size_t size, void *ctx) {
    size_t old = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, size);
    if (!q) return NULL; /* p is untouched */
    acct_h2_sub(ctx, old);
    acct_h2_add(ctx, malloc_usable_size(q));
    return q;
}

static void msg_account(srv_shard *sh, size_t size) {
    sh->msg_bytes += size;
    atomic_store_explicit(&shard_ctr(sh)->message_bytes, sh->msg_bytes, memory_order_relaxed);
    if (sh->msg_bytes <= sh->msg_bytes_hw) return;
    sh->msg_bytes_hw = sh->msg_bytes;
    uint64_t hw = atomic_load_explicit(&sh->srv->msg_bytes_hw, memory_order_relaxed);
    while (hw < sh->msg_bytes_hw &&
           !atomic_compare_exchange_weak_explicit(&sh->srv->msg_bytes_hw, &hw, sh->msg_bytes_hw,
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

uint64_t bds__server_msg_bytes_hw(const bds_server *srv) {
    return atomic_load_explicit(&((bds_server *)srv)->msg_bytes_hw, memory_order_relaxed);
}

/* A message for len payload bytes (its header zeroed, the payload the
 * caller's to write), held by |holds|, accounted to |a| (or to no connection
 * yet). From sh's pools when sh is given (it must be the calling shard) and
 * the size fits; else from malloc. NULL when memory is out. */
srv_msg *bds__srv_msg_new(srv_shard *sh, srv_acct *a, size_t len, uint8_t holds) {
    BDS_ASSERT(sh == NULL || sh == bds__srv_self);
    size_t need = sizeof(srv_msg) + len;
    srv_msg *m = NULL;
    uint32_t cls = 0;
    while (cls < SRV_MSG_CLASSES && need > ((size_t)SRV_MSG_CLASS_MIN << cls)) cls++;
    if (sh != NULL && cls < SRV_MSG_CLASSES) {
        m = bds__pool_get_head(&sh->msg_pools[cls], sizeof *m); /* the payload is the caller's to write */
        if (!m) return NULL;
        m->home = sh;
        m->cls = (uint8_t)cls;
    } else {
        m = malloc(need);
        if (!m) return NULL;
        memset(m, 0, sizeof *m);
        m->home = sh;
        m->cls = SRV_MSG_HEAP;
    }
    m->len = (uint32_t)len;
    m->holds = holds;
    if (sh) {
        msg_account(sh, msg_size(m));
        if (a) {
            m->acct = a;
            a->refs++;
            a->bytes += msg_size(m);
        }
        budget_check_up(sh, a);
    }
    return m;
}

/* A reply reaches its call's shard (ops->write): from now on it counts there
 * and against the call's connection, wherever it was made. */
void bds__srv_msg_attach(srv_msg *r, srv_call *call) {
    srv_shard *sh = bds__srv_self;
    size_t size = msg_size(r);
    if (!r->home) {
        r->home = sh;
        msg_account(sh, size);
    }
    BDS_ASSERT(r->home == sh);
    srv_conn *sc = call->conn;
    if (!r->acct && sc) {
        r->acct = sc->acct;
        r->acct->refs++;
        r->acct->bytes += size;
    }
    budget_check_up(sh, r->acct);
}

/* |hold| lets go of m; the last holder frees it (on its home shard). */
void bds__srv_msg_unhold(srv_msg *m, uint8_t hold) {
    BDS_ASSERT(m->holds & hold);
    m->holds &= (uint8_t)~hold;
    if (m->holds) return;
    if (m->home) {
        BDS_ASSERT(m->home == bds__srv_self);
        size_t size = msg_size(m);
        m->home->msg_bytes -= size;
        atomic_store_explicit(&shard_ctr(m->home)->message_bytes, m->home->msg_bytes, memory_order_relaxed);
        if (m->acct) m->acct->bytes -= size;
        budget_check_down(m->home, m->acct);
    }
    if (m->acct) bds__srv_acct_unref(m->acct);
    if (m->z) bds__srv_msg_unhold(m->z, SRV_MSG_OUT);
    if (m->on_free) m->on_free(m->on_free_ctx);
    if (m->cls == SRV_MSG_HEAP) {
        free(m);
        return;
    }
    BDS_ASSERT(m->home == bds__srv_self && m->cls < SRV_MSG_CLASSES);
    bds__pool_put(&m->home->msg_pools[m->cls], m);
}

/* ---- the budget pass ------------------------------------------------------------------------------- */

/* What a stream holds: parked, admitted and unfinished, replies not taken,
 * and the message still arriving. |freeable|: only what ending it gives back
 * at once (not the payloads its handlers are running on). */
static uint64_t call_held(const srv_call *call, bool freeable) {
    uint64_t b = call->parked_bytes;
    if (call->session)
        b += freeable ? bds_session_unsent_bytes(call->session) : bds_session_held_bytes(call->session);
    if (call->conn && !call->h2_done) b += bds__h2_partial_bytes(call->conn->h2, call->stream);
    return b;
}

/* The connection's stream holding most, if larger than *best_bytes. */
static srv_call *conn_largest(srv_conn *sc, bool freeable, srv_call *best, uint64_t *best_bytes) {
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sc->calls) {
        srv_call *call = BDS_DLIST_ENTRY(it, srv_call, conn_link);
        if (!call->session || call->finish_pending || call->h2_done) continue;
        uint64_t b = call_held(call, freeable);
        if (b > *best_bytes) {
            best = call;
            *best_bytes = b;
        }
    }
    return best;
}

static void call_fail_budget(srv_call *call) {
    bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server memory budget exhausted: the largest stream ends");
}

/* Starts or stops reading sc as its budgets say. Resumed, its parked
 * messages and the messages in progress held at the window move on. */
static void conn_budget_apply(srv_conn *sc) {
    bool hold = conn_blocked(sc);
    if (!sc->c || sc->closing || hold == sc->credit_held) return;
    sc->credit_held = hold;
    bds__h2_hold_conn_credit(sc->h2, hold);
    if (!hold) {
        bds__dlist *it, *nx;
        BDS_DLIST_FOREACH_SAFE(it, nx, &sc->calls) {
            srv_call *call = BDS_DLIST_ENTRY(it, srv_call, conn_link);
            if (call->session && !call->finish_pending) bds__srv_call_drain_parked(call);
        }
    }
    bds__srv_conn_kick(sc);
}

/* A budget crossed a mark (budget_check_up/down) or a victim went: at a
 * budget the shard (or the connection) is not read and its new streams are
 * refused, and the stream holding most ends with RESOURCE_EXHAUSTED. Then,
 * one at a time until the memory is under the low mark and reading resumes,
 * streams end largest first by what ending them gives back at once (replies
 * not taken, parked and arriving messages): clients that never read otherwise
 * held a shard between the marks, reading nothing and refusing every stream,
 * for good; while a stream whose memory is all in running handlers (the first
 * victim's, say) would end for nothing. */
void bds__srv_shard_budget_pass(srv_shard *sh) {
    if (!sh->budget_due) return;
    sh->budget_due = false;
    bds__pipeline_set_current(bds__shard_pipeline_get(sh->pipe));
    const bds_server_config *cfg = &sh->srv->cfg;
    uint64_t held = sh->msg_bytes + sh->h2_bytes;
    sh->over = cfg->shard_bytes_max &&
               held >= (sh->over ? budget_low(cfg->shard_bytes_max) : cfg->shard_bytes_max);
    if (!sh->over) sh->ended = false;
    if (sh->over && !sh->victim) {
        srv_call *best = NULL;
        uint64_t best_bytes = 0;
        bool freeable = sh->ended || held < cfg->shard_bytes_max;
        bds__dlist *it, *nx;
        BDS_DLIST_FOREACH_SAFE(it, nx, &sh->conns) {
            best = conn_largest(BDS_DLIST_ENTRY(it, srv_conn, shard_link), freeable, best, &best_bytes);
        }
        if (best) {
            sh->victim = best;
            sh->ended = true;
            call_fail_budget(best);
        }
    }
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sh->conns) {
        srv_conn *sc = BDS_DLIST_ENTRY(it, srv_conn, shard_link);
        uint64_t b = sc->acct->bytes;
        sc->over = cfg->conn_bytes_max && b >= (sc->over ? budget_low(cfg->conn_bytes_max) : cfg->conn_bytes_max);
        if (!sc->over) sc->ended = false;
        if (sc->over && !sc->victim) {
            uint64_t best_bytes = 0;
            srv_call *best = conn_largest(sc, sc->ended || b < cfg->conn_bytes_max, NULL, &best_bytes);
            if (best) {
                sc->victim = best;
                sc->ended = true;
                if (best != sh->victim) call_fail_budget(best);
            }
        }
        conn_budget_apply(sc);
    }
}

