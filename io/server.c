/* server.c — the gRPC server: shards, listeners, HTTP/2 connections, and each
 * stream bound to a pipeline session (bidistream/server.h).
 *
 * Per shard: one listener on the shared port (SO_REUSEPORT), its connections,
 * one HTTP/2 session each (proto/h2_server), and a pipeline (io/pipe). A
 * stream is a srv_call holding a bds_session on the connection's shard. An
 * inbound message is copied once into a srv_msg (from the shard's pools), its
 * key found by the method's resolver, and handed to bds_session_receive().
 * Replies are queued on the HTTP/2 stream by reference (bds__h2_send_ref): a
 * reply buffer is copied only when the session serializes it, and an echo
 * reply is the request's own buffer, so the built-in echo allocates nothing
 * and copies its bytes once on the way in and once on the way out. Flow control is
 * end to end (DESIGN §7): a message's bytes are credited to the stream's
 * window only when the pipeline admitted it; while the session has no room
 * (QUEUE policy), messages wait parked here and the window stays shut, so a
 * fast client is slowed at its socket, never rejected. Replies go to the
 * HTTP/2 session's stream queue; past a high-water mark of unsent bytes they
 * wait here and keep their outbound token, so a client that never reads fills
 * the Sender and meets its policy (fail_fast: RESOURCE_EXHAUSTED), never
 * unbounded memory.
 *
 * Shutdown: on stop every shard stops accepting, marks health NOT_SERVING,
 * sends GOAWAY (notice, then final), and starts the pipeline's graceful
 * shutdown on each session; the grace period ends what is left with
 * UNAVAILABLE, and one second later any connection still open is closed.
 *
 * Ownership: everything here belongs to its shard's thread. A srv_msg lives
 * until every holder (SRV_MSG_IN/OUT/H2) has let go; all of them let go on
 * its home shard. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pipeline_int.h"
#include "server_int.h"

#define REPLY_HIGH_WATER (256u * 1024u) /* unsent bytes per stream before replies wait here */
#define RUN_BUDGET 512u

struct srv_conn {
    srv_shard *sh;
    bds_conn *c;
    bds__h2_conn *h2;
    srv_call *calls;
    srv_call *waiting;        /* calls with blocked replies (call->wprev/wnext) */
    srv_conn *prev, *next;
    srv_conn *dprev, *dnext;  /* the shard's dirty list, while `dirty` */
    bool dirty;               /* output to produce: flushed by shard_flush_dirty */
    bool h2_failed;           /* the session failed on input: no more reading; its
                                 last output (ending in a GOAWAY) is flushed, then
                                 the connection closes */
    bool closing;
};



static _Thread_local srv_shard *tls_shard;

srv_shard *bds__server_shard_self(void) { return tls_shard; }

uint64_t bds__server_now(void) { return bds__clock_ns(); }

/* ---- configuration ---------------------------------------------------------------- */

void bds_server_config_default(bds_server_config *c) {
    memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->listen = "127.0.0.1:50051";
    c->max_message_bytes = 4u << 20;
    c->max_concurrent_streams = 1024;
    c->max_header_list_bytes = 16u << 10;
    c->stream_window_bytes = 64u << 10;
    c->options = bds_default_options();
    c->log_level = 2;
    c->max_connections = 10000;
}

static bool parse_listen(const char *s, char *host, size_t hostcap, uint16_t *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostcap) return false;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    if (host[0] == '[') { /* [::1]:port */
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']') return false;
        memmove(host, host + 1, n - 2);
        host[n - 2] = 0;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || end == colon + 1) return false;
    *port = (uint16_t)p;
    return true;
}

bds_status bds_server_create(bds_server **out, const bds_server_config *cfg, const char **why) {
    *out = NULL;
    if (why) *why = NULL;
    if (!cfg || cfg->size < sizeof *cfg) {
        if (why) *why = "server config: size (use bds_server_config_default)";
        return BDS_E_INVALID;
    }
    bds_status st = bds_options_validate(&cfg->options, why);
    if (st != BDS_OK) return st;
    char host[256];
    uint16_t port;
    if (!cfg->listen || !parse_listen(cfg->listen, host, sizeof host, &port)) {
        if (why) *why = "listen: expected HOST:PORT";
        return BDS_E_INVALID;
    }
    if (cfg->max_message_bytes < 16 || cfg->max_concurrent_streams == 0 || cfg->stream_window_bytes < 1024 ||
        cfg->max_header_list_bytes < 1024 || cfg->shards > 64) {
        if (why) *why = "server limits: message >= 16 B, streams >= 1, window >= 1 KiB, headers >= 1 KiB, shards <= 64";
        return BDS_E_INVALID;
    }
    bds_server *srv = calloc(1, sizeof *srv);
    if (!srv) return BDS_E_NOMEM;
    srv->cfg = *cfg;
    srv->listen = strdup(cfg->listen);
    srv->cfg.listen = srv->listen;
    atomic_init(&srv->serving, 1);
    srv->table.paths = srv->paths;
    st = bds__services_register(srv);
    if (st != BDS_OK) {
        bds_server_destroy(srv);
        return st;
    }
    *out = srv;
    return BDS_OK;
}

void bds_server_destroy(bds_server *srv) {
    if (!srv) return;
    for (uint32_t i = 0; i < srv->n_methods; i++) free(srv->methods[i].path);
    free(srv->listen);
    free(srv);
}

bds_status bds_server_add_method(bds_server *srv, const bds_method *m) {
    if (srv->running) return BDS_FAILED_PRECONDITION;
    if (!m || m->size < sizeof *m || !m->path || m->path[0] != '/' || !strchr(m->path + 1, '/') || !m->handler) {
        return BDS_E_INVALID;
    }
    for (uint32_t i = 0; i < srv->n_methods; i++) {
        if (strcmp(srv->methods[i].path, m->path) == 0) return BDS_ALREADY_EXISTS;
    }
    if (srv->n_methods == BDS_SERVER_METHODS_MAX) return BDS_RESOURCE_EXHAUSTED;
    if (m->options && bds_options_validate(m->options, NULL) != BDS_OK) return BDS_E_INVALID;
    srv_method *sm = &srv->methods[srv->n_methods];
    sm->m = *m;
    sm->path = strdup(m->path);
    sm->opts = m->options ? *m->options : srv->cfg.options;
    srv->paths[srv->n_methods] = sm->path;
    srv->n_methods++;
    srv->table.count = srv->n_methods;
    return BDS_OK;
}

bds_status bds__server_add_method_ex(bds_server *srv, const bds_method *m, bool end_marker) {
    bds_status st = bds_server_add_method(srv, m);
    if (st == BDS_OK) srv->methods[srv->n_methods - 1].end_marker = end_marker;
    return st;
}

bds_status bds__server_set_capture(bds_server *srv, const char *const *names, uint32_t count) {
    if (srv->running || count > BDS_H2_CAPTURE_MAX || (count > 0 && !names)) return BDS_E_INVALID;
    srv->capture_names = names;
    srv->capture_count = count;
    return BDS_OK;
}

bds_status bds__server_add_method_capture(bds_server *srv, const bds_method *m, bool end_marker) {
    bds_status st = bds__server_add_method_ex(srv, m, end_marker);
    if (st == BDS_OK) srv->methods[srv->n_methods - 1].capture = true;
    return st;
}

const uint8_t *bds__server_call_header(const srv_call *call, uint32_t index, size_t *len) {
    return bds__h2_captured(call->req_md, call->req_md_len, index, len);
}

bds_status bds__server_call_add_metadata(srv_call *call, bool trailer, const char *name, const uint8_t *value,
                                         size_t len) {
    srv_conn *sc = call->conn;
    if (!sc || call->h2_done || call->finish_pending) return BDS_E_SESSION_CLOSED;
    BDS_ASSERT(sc->sh == tls_shard);
    return bds__h2_add_metadata(sc->h2, call->stream, trailer, name, value, len);
}

bds_status bds__server_add_method_hint(bds_server *srv, const bds_method *m, srv_key_hint_fn key_hint) {
    bds_status st = bds_server_add_method(srv, m);
    if (st == BDS_OK) srv->methods[srv->n_methods - 1].key_hint = key_hint;
    return st;
}

/* ---- message buffers ----------------------------------------------------------------------- */

BDS_STATIC_ASSERT(offsetof(srv_msg, data) == offsetof(srv_msg, prefix) + sizeof(((srv_msg *)0)->prefix),
                  "the prefix room sits right before the payload");

static void msg_pools_init(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) bds__pool_init(&sh->msg_pools[i], (size_t)SRV_MSG_CLASS_MIN << i);
}

/* Asserts every buffer came back (a leak trips here at shutdown). */
static void msg_pools_deinit(srv_shard *sh) {
    for (uint32_t i = 0; i < SRV_MSG_CLASSES; i++) bds__pool_deinit(&sh->msg_pools[i]);
}

/* A zeroed message for len payload bytes, held by |holds|. From sh's pools
 * when sh is given (it must be the calling shard) and the size fits; else
 * from malloc. NULL when memory is out. */
static srv_msg *msg_new(srv_shard *sh, size_t len, uint8_t holds) {
    BDS_ASSERT(sh == NULL || sh == tls_shard);
    size_t need = sizeof(srv_msg) + len;
    srv_msg *m = NULL;
    uint32_t cls = 0;
    while (cls < SRV_MSG_CLASSES && need > ((size_t)SRV_MSG_CLASS_MIN << cls)) cls++;
    if (sh != NULL && cls < SRV_MSG_CLASSES) {
        m = bds__pool_get(&sh->msg_pools[cls]); /* zeroed */
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
    return m;
}

/* |hold| lets go of m; the last holder frees it (on its home shard). */
static void msg_unhold(srv_msg *m, uint8_t hold) {
    BDS_ASSERT(m->holds & hold);
    m->holds &= (uint8_t)~hold;
    if (m->holds) return;
    if (m->cls == SRV_MSG_HEAP) {
        free(m);
        return;
    }
    BDS_ASSERT(m->home == tls_shard && m->cls < SRV_MSG_CLASSES);
    bds__pool_put(&m->home->msg_pools[m->cls], m);
}

/* ---- replies and requests (public call helpers) ------------------------------------------ */

const uint8_t *bds_call_request(const bds_call *call, uint32_t *len) {
    const srv_msg *m = bds_call_payload(call);
    if (len) *len = m->len;
    return m->data;
}

/* Thread: any. On the call's home shard the reply comes from its pools, and
 * an echo of the whole request (the first one) is the request's own buffer.
 * Elsewhere (the key's shard, a handler's thread) it is malloc'ed: the reply
 * is freed at home, which no other shard's pool may be. */
bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len) {
    if (len > UINT32_MAX - 64) return BDS_E_INVALID;
    srv_msg *req = bds_call_payload(call);
    srv_shard *here = tls_shard != NULL && req->home == tls_shard ? tls_shard : NULL;
    srv_msg *r;
    if (here && !req->reply_used && bytes == req->data && len == req->len) {
        /* Only home's thread touches holds, and the request is lent to us. */
        r = req;
        r->reply_used = true;
        r->holds |= SRV_MSG_OUT;
    } else {
        r = msg_new(here, len, SRV_MSG_OUT);
        if (!r) return BDS_E_NOMEM;
        if (len) memcpy(r->data, bytes, len);
    }
    r->reply.data = r;
    r->reply.bytes = (uint32_t)len;
    bds_call_reply(call, &r->reply);
    return BDS_OK;
}

/* ---- connection output ------------------------------------------------------------------- */

static void conn_flush(srv_conn *sc);

/* Output is due on sc. Dirty connections are flushed at the end of the
 * pipeline's run (hook_run), so the socket writes they make are sent by the
 * same tick's flushers (a flusher queued while the shard runs flushers waits
 * for the next tick: one more io_uring_enter per round trip); the shard
 * flusher catches what timers and late callbacks dirty after it. */
static void conn_kick(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    srv_shard *sh = sc->sh;
    if (!sc->dirty) {
        sc->dirty = true;
        sc->dprev = NULL;
        sc->dnext = sh->dirty;
        if (sh->dirty) sh->dirty->dprev = sc;
        sh->dirty = sc;
    }
    bds__shard_defer_flush(sh->shard, &sh->flusher);
}

static void conn_undirty(srv_conn *sc) {
    if (!sc->dirty) return;
    srv_shard *sh = sc->sh;
    if (sc->dprev) sc->dprev->dnext = sc->dnext;
    else sh->dirty = sc->dnext;
    if (sc->dnext) sc->dnext->dprev = sc->dprev;
    sc->dprev = sc->dnext = NULL;
    sc->dirty = false;
}

/* Flushes every dirty connection. A kick from inside conn_flush (a blocked
 * reply moving on) finds its connection still marked and adds nothing: that
 * flush produces the output anyway. */
static void shard_flush_dirty(srv_shard *sh) {
    while (sh->dirty) {
        srv_conn *sc = sh->dirty;
        sh->dirty = sc->dnext;
        if (sh->dirty) sh->dirty->dprev = NULL;
        sc->dprev = sc->dnext = NULL;
        conn_flush(sc);
        sc->dirty = false;
    }
}

static void shard_flusher(bds_flusher *f) { shard_flush_dirty(BDS_CONTAINER_OF(f, srv_shard, flusher)); }

static void call_move_blocked(srv_call *call);

static void conn_flush(srv_conn *sc) {
    if (!sc->c || sc->closing) return;
    /* Only calls with replies waiting: a flush costs nothing per idle stream. */
    for (srv_call *call = sc->waiting, *next; call; call = next) {
        next = call->wnext; /* a call whose trailers were pending is freed */
        call_move_blocked(call);
    }
    for (;;) {
        const uint8_t *data;
        size_t len;
        bds_status st = bds__h2_output(sc->h2, &data, &len);
        if (len) {
            bds_status w = bds__conn_write(sc->c, data, len);
            if (w != BDS_OK) break; /* E_AGAIN: on_drain flushes again */
            bds__h2_output_advance(sc->h2, len);
        }
        if (st != BDS_OK) {
            /* A failed session still says why: its GOAWAY waits for room in
             * the output buffer, which the bytes just written made. */
            if (len && bds__h2_want_write(sc->h2)) continue;
            if (!sc->h2_failed && sc->sh->srv->cfg.log_level >= 1)
                fprintf(stderr, "bidistreamd: closing a connection: HTTP/2 output failed (nghttp2 error %d)\n",
                        bds__h2_get_stats(sc->h2)->nghttp2_fatal);
            bds__conn_close_after_flush(sc->c);
            sc->closing = true;
            return;
        }
        if (!len) break;
    }
    if (bds__h2_is_done(sc->h2)) {
        if (sc->sh->srv->cfg.log_level >= 3) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            fprintf(stderr, "bidistreamd: connection done (calmed %d, fatal %d, glitches %lu, started %lu, reset %lu)\n",
                    hs->calmed, hs->nghttp2_fatal, (unsigned long)hs->glitches, (unsigned long)hs->calls_started,
                    (unsigned long)hs->calls_reset);
        }
        bds__conn_close_after_flush(sc->c);
        sc->closing = true;
    }
}

/* ---- calls --------------------------------------------------------------------------------- */

/* The call has blocked replies (or pending trailers): conn_flush visits it. */
static void call_wait(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc || call->waiting) return;
    call->waiting = true;
    call->wprev = NULL;
    call->wnext = sc->waiting;
    if (sc->waiting) sc->waiting->wprev = call;
    sc->waiting = call;
}

static void call_unwait(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!call->waiting) return;
    BDS_ASSERT(sc != NULL);
    if (call->wprev) call->wprev->wnext = call->wnext;
    else sc->waiting = call->wnext;
    if (call->wnext) call->wnext->wprev = call->wprev;
    call->wprev = call->wnext = NULL;
    call->waiting = false;
}

static void call_unlink(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc) return;
    call_unwait(call);
    if (call->prev) call->prev->next = call->next;
    else sc->calls = call->next;
    if (call->next) call->next->prev = call->prev;
    call->prev = call->next = NULL;
    call->conn = NULL;
}

static void msg_list_free(srv_msg *m, uint8_t hold) {
    while (m) {
        srv_msg *n = m->next;
        msg_unhold(m, hold);
        m = n;
    }
}

static void call_free(srv_call *call) {
    call_unlink(call);
    msg_list_free(call->parked, SRV_MSG_IN);
    msg_list_free(call->blocked, SRV_MSG_OUT);
    free(call->req_md);
    free(call);
}

/* The session's reply leaves for the HTTP/2 stream, or waits here (keeping
 * its outbound token) while the stream holds too many unsent bytes. */
static bool call_try_send(srv_call *call, srv_msg *r) {
    srv_conn *sc = call->conn;
    if (!sc || call->h2_done) return true; /* nobody to send to: written = dropped */
    /* E_AGAIN: the stream holds REPLY_HIGH_WATER unsent bytes (its send bound). */
    bds_status st = bds__h2_send_framed(sc->h2, call->stream, &r->h2, r->prefix, r->len);
    if (st == BDS_E_AGAIN) return false;
    if (st == BDS_OK) r->holds |= SRV_MSG_H2; /* released by h2_on_msg_release */
    conn_kick(sc);
    return true;
}

static void call_move_blocked(srv_call *call) {
    while (call->blocked && call_try_send(call, call->blocked)) {
        srv_msg *r = call->blocked;
        call->blocked = r->next;
        if (!call->blocked) call->blocked_tail = NULL;
        if (call->session) bds_session_reply_written(call->session, &r->reply);
        msg_unhold(r, SRV_MSG_OUT);
    }
    if (!call->blocked) call_unwait(call);
    if (call->finish_pending && !call->blocked) {
        srv_conn *sc = call->conn;
        if (sc && !call->h2_done) {
            bds__h2_finish(sc->h2, call->stream, call->fin_status,
                           call->fin_status == BDS_OK ? NULL : call->fin_msg);
            conn_kick(sc);
        }
        call_free(call);
    }
}

static void op_write(bds_session *s, bds_reply *reply, void *ctx) {
    srv_call *call = ctx;
    srv_msg *r = reply->data;
    if (!call->blocked && call_try_send(call, r)) {
        bds_session_reply_written(s, reply);
        msg_unhold(r, SRV_MSG_OUT);
        return;
    }
    r->next = NULL;
    if (call->blocked_tail) call->blocked_tail->next = r;
    else call->blocked = r;
    call->blocked_tail = r;
    call_wait(call);
}

static void op_drop(bds_session *s, bds_reply *reply, void *ctx) {
    (void)s;
    (void)ctx;
    msg_unhold(reply->data, SRV_MSG_OUT);
}

static void op_release(bds_session *s, void *payload, void *ctx) {
    (void)s;
    (void)ctx;
    msg_unhold(payload, SRV_MSG_IN);
}


static void op_closed(bds_session *s, bds_status status, const char *message, void *ctx) {
    srv_call *call = ctx;
    srv_conn *sc = call->conn;
    if (sc && !call->h2_done && call->blocked && (status == BDS_OK || status == BDS_E_SHUTDOWN)) {
        /* A clean end (or a drained shutdown) owes the client every reply the
         * Sender admitted: the ones still waiting here leave first, then the
         * trailers (call_move_blocked finishes the call). */
        call->finish_pending = true;
        call->fin_status = status;
        snprintf(call->fin_msg, sizeof call->fin_msg, "%s", message ? message : "");
        msg_list_free(call->parked, SRV_MSG_IN);
        call->parked = call->parked_tail = NULL;
        call->session = NULL;
        bds_session_release(s);
        conn_kick(sc);
        return;
    }
    if (sc && !call->h2_done) {
        /* The session projects pipeline errors onto gRPC codes (bds_status_grpc);
         * those that send nothing reset the stream. */
        bds__h2_finish(sc->h2, call->stream, status, status == BDS_OK ? NULL : message);
        call->h2_done = true;
        conn_kick(sc);
    }
    bds_session_release(s);
    call_free(call);
}

static bool call_admit(srv_call *call, srv_msg *m);

/* The client half-closed after its last admitted message. Methods that answer
 * at half-close first get an empty message flagged `end`, in stream order. */
static void call_client_close(srv_call *call) {
    if (call->m->end_marker) {
        srv_msg *marker = msg_new(call->conn ? call->conn->sh : NULL, 0, SRV_MSG_IN);
        if (marker) {
            marker->end = true;
            call_admit(call, marker);
        }
    }
    bds_session_client_close(call->session);
}

static void call_drain_parked(srv_call *call) {
    while (call->parked && bds_session_inbound_room(call->session) > 0) {
        srv_msg *m = call->parked;
        call->parked = m->next;
        if (!call->parked) call->parked_tail = NULL;
        if (!call_admit(call, m)) break;
    }
    if (!call->parked && call->half_close_pending) {
        call->half_close_pending = false;
        call_client_close(call);
    }
}

static void op_inbound_ready(bds_session *s, void *ctx) {
    (void)s;
    call_drain_parked(ctx);
}

static const bds_session_ops srv_ops = {
    .write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed, .inbound_ready = op_inbound_ready,
};

/* Hands m to the pipeline and credits its bytes. Returns false when the
 * session would not take it (closed or closing): m is freed. */
static bool call_admit(srv_call *call, srv_msg *m) {
    uint32_t wire = m->wire;
    bds_status st = bds_session_receive(call->session, m, m->len, m->key, m->key_len, 0);
    if (st != BDS_OK) {
        msg_unhold(m, SRV_MSG_IN);
        return false;
    }
    if (call->conn && !call->h2_done) {
        bds__h2_consume(call->conn->h2, call->stream, wire);
        conn_kick(call->conn);
    }
    return true;
}

/* ---- HTTP/2 events ----------------------------------------------------------------------------- */

static bds_status h2_on_call_start(void *ctx, const bds__h2_call_info *info, void **call_ctx) {
    srv_conn *sc = ctx;
    srv_shard *sh = sc->sh;
    if (sh->stopping) return BDS_UNAVAILABLE;
    const srv_method *m = &sh->srv->methods[info->method_index];
    srv_call *call = calloc(1, sizeof *call);
    if (!call) return BDS_RESOURCE_EXHAUSTED;
    call->conn = sc;
    call->stream = info->stream_id;
    call->m = m;
    if (m->capture && info->captured_len > 0) {
        /* Only calls whose request carried such headers pay for them. */
        call->req_md = malloc(info->captured_len);
        if (!call->req_md) {
            free(call);
            return BDS_RESOURCE_EXHAUSTED;
        }
        memcpy(call->req_md, info->captured, info->captured_len);
        call->req_md_len = info->captured_len;
    }
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    cfg.options = &m->opts;
    cfg.handler = m->m.handler;
    cfg.handler_ctx = m->m.handler_ctx;
    cfg.ops = &srv_ops;
    cfg.ops_ctx = call;
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    if (bds_session_create(&call->session, bds__pipe_pipeline(sh->pipe), &cfg, NULL) != BDS_OK) {
        free(call->req_md);
        free(call);
        return BDS_RESOURCE_EXHAUSTED;
    }
    bds_session_open(call->session);
    if (info->deadline_ns) bds_session_set_deadline(call->session, info->deadline_ns);
    call->next = sc->calls;
    if (sc->calls) sc->calls->prev = call;
    sc->calls = call;
    *call_ctx = call;
    return BDS_OK;
}

static void h2_on_message(void *ctx, void *call_ctx, int32_t stream_id, const uint8_t *msg, size_t len,
                          uint32_t wire_bytes) {
    (void)stream_id;
    srv_call *call = call_ctx;
    if (call->finish_pending) return; /* the stream's session already ended */
    srv_conn *sc = ctx;
    srv_msg *m = msg_new(sc->sh, len, SRV_MSG_IN);
    if (!m) {
        bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    m->wire = wire_bytes;
    if (len) memcpy(m->data, msg, len);
    const srv_method *sm = call->m;
    bool ok = true;
    if (sm->key_hint) ok = sm->key_hint(m->data, m->len, &m->key, &m->key_len, &m->hint);
    else if (sm->m.key) ok = sm->m.key(m->data, m->len, &m->key, &m->key_len, sm->m.key_ctx);
    if (!ok) {
        msg_unhold(m, SRV_MSG_IN);
        bds_session_fail(call->session, BDS_INTERNAL, "malformed request message");
        return;
    }
    bool may_wait = call->m->opts.inbound.backpressure.policy != BDS_BP_HARD_REJECT;
    if (call->parked || (may_wait && bds_session_inbound_room(call->session) == 0)) {
        m->next = NULL;
        if (call->parked_tail) call->parked_tail->next = m;
        else call->parked = m;
        call->parked_tail = m;
        return;
    }
    call_admit(call, m);
}

static void h2_on_half_close(void *ctx, void *call_ctx, int32_t stream_id) {
    (void)ctx;
    (void)stream_id;
    srv_call *call = call_ctx;
    if (call->finish_pending) return;
    if (call->parked) call->half_close_pending = true;
    else call_client_close(call);
}

static void h2_on_reset(void *ctx, void *call_ctx, int32_t stream_id, bds_status status, uint32_t h2_error) {
    (void)ctx;
    (void)stream_id;
    (void)status;
    (void)h2_error;
    srv_call *call = call_ctx;
    call->h2_done = true;
    if (call->finish_pending) { /* the session already ended: only replies were left */
        call_free(call);
        return;
    }
    bds_session_cancel(call->session);
}

static void h2_on_call_error(void *ctx, void *call_ctx, int32_t stream_id, bds_status status, int http) {
    (void)ctx;
    (void)stream_id;
    (void)http;
    srv_call *call = call_ctx;
    if (!call) return; /* refused at its headers: never started */
    call->h2_done = true;
    if (call->finish_pending) {
        call_free(call);
        return;
    }
    bds_session_fail(call->session, status, "request rejected");
}

/* A reply queued by reference left the HTTP/2 session (serialized or dropped). */
static void h2_on_msg_release(void *ctx, bds__h2_msg *hm) {
    (void)ctx;
    msg_unhold(BDS_CONTAINER_OF(hm, srv_msg, h2), SRV_MSG_H2);
}

static const bds__h2_callbacks h2_cbs = {
    .on_call_start = h2_on_call_start,
    .on_message = h2_on_message,
    .on_half_close = h2_on_half_close,
    .on_reset = h2_on_reset,
    .on_call_error = h2_on_call_error,
    .on_msg_release = h2_on_msg_release,
};

/* ---- connections ----------------------------------------------------------------------------------- */

static void conn_on_data(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    if (sc->closing || sc->h2_failed) return;
    bds__pipeline_set_current(bds__pipe_pipeline(sc->sh->pipe));
    if (bds__h2_recv(sc->h2, bytes, len, bds__shard_now(sc->sh->shard)) != BDS_OK) {
        if (sc->sh->srv->cfg.log_level >= 1) {
            const bds__h2_stats *hs = bds__h2_get_stats(sc->h2);
            fprintf(stderr, "bidistreamd: closing a connection: HTTP/2 %s (nghttp2 error %d, %lu glitches)\n",
                    hs->calmed ? "flood limit" : "fatal error", hs->nghttp2_fatal, (unsigned long)hs->glitches);
        }
        /* Stop reading; the flush sends what is buffered and the session's
         * GOAWAY and closes (on a full socket: the rest after on_drain). */
        sc->h2_failed = true;
        bds__conn_recv_pause(sc->c);
        conn_flush(sc);
        return;
    }
    conn_kick(sc);
}

static void conn_on_drain(bds_conn *c, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    conn_kick(sc);
}

static void conn_on_close(bds_conn *c, int err, void *ctx) {
    (void)c;
    srv_conn *sc = ctx;
    if (sc->sh->srv->cfg.log_level >= 3 || (err && err != ECONNRESET && err != EPIPE && sc->sh->srv->cfg.log_level >= 1)) {
        fprintf(stderr, "bidistreamd: connection closed: %s\n", strerror(err));
    }
    srv_shard *sh = sc->sh;
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    conn_undirty(sc);
    sc->c = NULL;
    sc->closing = true;
    bds__h2_abort_calls(sc->h2, BDS_CANCELLED); /* on_reset for each live call */
    while (sc->calls) {
        if (sc->calls->finish_pending) call_free(sc->calls); /* its session is gone already */
        else call_unlink(sc->calls);                          /* their sessions close later, without us */
    }
    bds__h2_destroy(sc->h2);
    if (sc->prev) sc->prev->next = sc->next;
    else sh->conns = sc->next;
    if (sc->next) sc->next->prev = sc->prev;
    free(sc);
}

static const bds_conn_callbacks conn_cbs = {
    .on_data = conn_on_data, .on_drain = conn_on_drain, .on_close = conn_on_close,
};

static void on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    (void)l;
    srv_shard *sh = ctx;
    srv_conn *sc = calloc(1, sizeof *sc);
    bds__h2_config hc;
    bds__h2_config_default(&hc);
    hc.max_concurrent_streams = sh->srv->cfg.max_concurrent_streams;
    hc.stream_window_bytes = sh->srv->cfg.stream_window_bytes;
    hc.header_list_bytes_max = sh->srv->cfg.max_header_list_bytes;
    hc.msg_bytes_max = sh->srv->cfg.max_message_bytes;
    hc.stream_send_bytes_max = REPLY_HIGH_WATER; /* past it replies wait here, keeping their tokens */
    hc.methods = &sh->srv->table;
    hc.credit_partial_messages = true; /* messages larger than the stream window */
    hc.capture_names = sh->srv->capture_names;
    hc.capture_count = sh->srv->capture_count;
    if (!sc || bds__h2_create(&sc->h2, &hc, &h2_cbs, sc) != BDS_OK || sh->stopping) {
        if (sc && sc->h2) bds__h2_destroy(sc->h2);
        free(sc);
        bds__conn_close(c, 0);
        return;
    }
    sc->sh = sh;
    sc->c = c;
    sc->next = sh->conns;
    if (sh->conns) sh->conns->prev = sc;
    sh->conns = sc;
    bds__conn_set_callbacks(c, &conn_cbs, sc);
    conn_kick(sc); /* our SETTINGS */
}

/* ---- shard hooks ------------------------------------------------------------------------------------ */

static bool hook_drain(bds_shard *s, void *ctx) {
    (void)s;
    return bds__pipe_drain(((srv_shard *)ctx)->pipe, RUN_BUDGET);
}

static bool hook_run(bds_shard *s, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bool more = bds__pipe_run(sh->pipe, RUN_BUDGET);
    shard_flush_dirty(sh); /* this tick's replies, sent by this tick's flushers */
    return more;
}

static bool hook_prepare_sleep(bds_shard *s, void *ctx) {
    (void)s;
    return bds__pipe_prepare_sleep(((srv_shard *)ctx)->pipe);
}

static void hook_woken(bds_shard *s, void *ctx) {
    (void)s;
    bds__pipe_woken(((srv_shard *)ctx)->pipe);
}

/* Any thread, for a stall report: relaxed reads of plain counters. */
static void hook_dump(bds_shard *s, FILE *f, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bds__pipe_dump(sh->pipe, f);
    const bds_net_stats *ns = bds__net_stats(sh->net);
    fprintf(f, "  net: %u listeners + connections live, %llu accepted, %llu closed, stopping %d\n",
            bds__net_live(sh->net), (unsigned long long)ns->accepted, (unsigned long long)ns->closed,
            (int)sh->stopping);
}

static void hook_on_signal(bds_shard *s, int signo, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    if (sh->srv->cfg.log_level >= 2) {
        fprintf(stderr, "bidistreamd: signal %d: shutting down gracefully\n", signo);
    }
    bds_server_stop(sh->srv);
}

static void stop_timer_fired(bds_timer *t, void *ctx) {
    (void)t;
    srv_shard *sh = ctx;
    for (srv_conn *sc = sh->conns; sc; sc = sc->next) {
        if (sc->c && !sc->closing) {
            sc->closing = true;
            bds__conn_close(sc->c, 0);
        }
    }
}

static void hook_on_stop(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    sh->stopping = true;
    atomic_store(&sh->srv->serving, 0);
    bds__pipeline_set_current(bds__pipe_pipeline(sh->pipe));
    if (sh->listener) {
        bds__listener_close(sh->listener);
        sh->listener = NULL;
    }
    bds__services_on_stop(sh);
    for (srv_conn *sc = sh->conns; sc; sc = sc->next) {
        if (sc->closing) continue;
        bds__h2_shutdown_notice(sc->h2);
        bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
        for (srv_call *call = sc->calls; call; call = call->next) bds_session_shutdown(call->session);
        conn_kick(sc);
    }
    /* What the grace period did not end is closed one second after it. */
    uint64_t grace = sh->srv->cfg.options.shutdown.grace_period_ns;
    for (uint32_t i = 0; i < sh->srv->n_methods; i++) {
        if (sh->srv->methods[i].opts.shutdown.grace_period_ns > grace) grace = sh->srv->methods[i].opts.shutdown.grace_period_ns;
    }
    bds__timer_init(&sh->stop_timer, stop_timer_fired, sh);
    bds__timer_arm(bds__shard_timers(s), &sh->stop_timer, bds__shard_now(s) + grace + 1000000000ULL);
}

static bool hook_quiescent(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    bool idle = sh->conns == NULL && sh->watches == NULL && bds__pipe_idle(sh->pipe);
    if (idle) bds__timer_cancel(bds__shard_timers(s), &sh->stop_timer);
    return idle;
}

/* ---- running ----------------------------------------------------------------------------------------- */

static int server_resolve(bds_server *srv, struct sockaddr_storage *ss, socklen_t *len, char *err, size_t errlen) {
    char host[256];
    uint16_t port;
    parse_listen(srv->listen, host, sizeof host, &port);
    if (srv->port) port = srv->port;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int rc = getaddrinfo(host[0] ? host : NULL, ps, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* Picks the port every shard will share before any shard starts: with port 0
 * one bound (not listening) SO_REUSEPORT socket reserves it, so the shards'
 * listeners all land on the same port. Returns that socket (or -1 on error);
 * the caller closes it once the shards listen. */
static int server_reserve_port(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (server_resolve(srv, &ss, &len, err, errlen) != 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 || bind(fd, (struct sockaddr *)&ss, len) != 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    srv->port = bds__socket_port(fd);
    return fd;
}

static int server_listen_fd(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (server_resolve(srv, &ss, &len, err, errlen) != 0) return -1;
    int fd = bds__listen_socket((struct sockaddr *)&ss, len, 1024);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(-fd));
        return -1;
    }
    return fd;
}

struct start_ctx {
    bds_server *srv;
    char err[256];
};

static bds_status on_shard_start(bds_shard *s, void *vctx) {
    struct start_ctx *sc = vctx;
    bds_server *srv = sc->srv;
    uint32_t id = bds__shard_id(s);
    srv_shard *sh = calloc(1, sizeof *sh);
    if (!sh) return BDS_E_NOMEM;
    sh->srv = srv;
    sh->shard = s;
    srv->shards[id] = sh;
    msg_pools_init(sh);
    sh->flusher.fn = shard_flusher;
    tls_shard = sh;
    bds_status st = bds__pipe_attach(srv->pipes, s, &sh->pipe);
    if (st != BDS_OK) return st;
    bds_net_config nc;
    bds__net_config_default(&nc);
    /* each shard enforces its share: SO_REUSEPORT spreads connections evenly */
    uint32_t cmax = srv->cfg.max_connections;
    nc.conns_max = cmax ? cmax / srv->n_shards + (cmax % srv->n_shards != 0) : 0;
    nc.log_level = srv->cfg.log_level;
    sh->net = bds__net_create(s, &nc);
    if (!sh->net) return BDS_E_NOMEM;
    /* The port was reserved before any shard started (server_reserve_port). */
    int fd = server_listen_fd(srv, sc->err, sizeof sc->err);
    if (fd < 0) return BDS_UNAVAILABLE;
    st = bds__listener_start(sh->net, fd, on_accept, sh, &sh->listener);
    if (st != BDS_OK) return st;
    bds_shard_hooks hooks = {
        .drain_inbox = hook_drain, .run_work = hook_run, .prepare_sleep = hook_prepare_sleep, .woken = hook_woken,
        .on_signal = hook_on_signal, .on_stop = hook_on_stop, .quiescent = hook_quiescent, .dump = hook_dump,
        .ctx = sh,
    };
    bds__shard_set_hooks(s, &hooks);
    return BDS_OK;
}

static void on_shard_exit(bds_shard *s, void *vctx) {
    struct start_ctx *sc = vctx;
    /* No stop call may reach the group once a shard goes: unpublish it and
     * let the calls already inside finish while every shard is alive. */
    atomic_store(&sc->srv->live_group, NULL);
    while (atomic_load(&sc->srv->stoppers) != 0) sched_yield();
    srv_shard *sh = sc->srv->shards[bds__shard_id(s)];
    if (!sh) return;
    if (sh->net) bds__net_destroy(sh->net);
    sh->net = NULL;
    tls_shard = NULL;
    /* The pipe outlives the shard until every shard has stopped (pipe.h). */
}

static void server_free_shards(bds_server *srv) {
    for (uint32_t i = 0; i < BDS_SHARDS_MAX; i++) {
        srv_shard *sh = srv->shards[i];
        if (!sh) continue;
        if (sh->pipe) bds__pipe_detach(sh->pipe);
        /* Every shard has stopped (joined): no message is held any more. */
        msg_pools_deinit(sh);
        free(sh);
        srv->shards[i] = NULL;
    }
}

bds_status bds_server_run(bds_server *srv) {
    if (srv->running) return BDS_FAILED_PRECONDITION;
    srv->running = true;
    bds_group_config gc;
    bds__group_config_default(&gc);
    gc.shards = srv->cfg.shards;
    gc.use_caller = true;
    gc.pin = true;
    gc.signals = true;
    gc.shard.idle_spin_us = srv->cfg.idle_spin_us;
    uint32_t n = srv->cfg.shards;
    if (n == 0) {
        cpu_set_t set;
        n = sched_getaffinity(0, sizeof set, &set) == 0 ? (uint32_t)CPU_COUNT(&set) : 1;
        if (n > 64) n = 64;
        gc.shards = n;
    }
    srv->n_shards = n;
    /* Every connection costs a descriptor: take all the hard limit allows. */
    uint64_t fds = bds__fd_limit_raise();
    if (fds && srv->cfg.max_connections && fds < (uint64_t)srv->cfg.max_connections + 64 && srv->cfg.log_level >= 1)
        fprintf(stderr, "bidistreamd: warning: %llu file descriptors for up to %u connections: past the "
                "descriptors, new connections are closed at once\n", (unsigned long long)fds, srv->cfg.max_connections);
    srv->pipes = bds__pipe_group_create(n, NULL);
    if (!srv->pipes) return BDS_E_NOMEM;
    struct start_ctx sc = {.srv = srv};
    int reserve = server_reserve_port(srv, sc.err, sizeof sc.err);
    if (reserve < 0) {
        fprintf(stderr, "bidistreamd: cannot start: %s\n", sc.err);
        bds__pipe_group_destroy(srv->pipes);
        srv->pipes = NULL;
        return BDS_UNAVAILABLE;
    }
    bds_status st = bds__group_start(&srv->group, &gc, on_shard_start, on_shard_exit, &sc, sc.err, sizeof sc.err);
    close(reserve);
    if (st != BDS_OK) {
        fprintf(stderr, "bidistreamd: cannot start: %s\n", sc.err[0] ? sc.err : bds_status_str(st));
        server_free_shards(srv);
        bds__pipe_group_destroy(srv->pipes);
        srv->pipes = NULL;
        return st;
    }
    if (srv->cfg.log_level >= 2) {
        char host[256];
        uint16_t port;
        parse_listen(srv->listen, host, sizeof host, &port);
        fprintf(stderr, "bidistreamd: listening on %s:%u with %u shard%s\n", host, srv->port, n, n == 1 ? "" : "s");
    }
    atomic_store(&srv->live_group, srv->group);
    if (atomic_load(&srv->stop_requested)) bds__group_stop(srv->group); /* stopped before it ran */
    bds__group_run(srv->group);
    bds__group_destroy(srv->group);
    srv->group = NULL;
    server_free_shards(srv);
    bds__pipe_group_destroy(srv->pipes);
    srv->pipes = NULL;
    return BDS_OK;
}

void bds_server_stop(bds_server *srv) {
    atomic_fetch_add(&srv->stoppers, 1);
    atomic_store(&srv->stop_requested, true);
    bds_group *g = atomic_load(&srv->live_group);
    if (g) bds__group_stop(g);
    atomic_fetch_sub(&srv->stoppers, 1);
}

uint16_t bds_server_port(const bds_server *srv) { return srv->port; }

void bds__server_dump(bds_server *srv, FILE *f) {
    /* The stop calls' protocol: a shard that exits waits for us. */
    atomic_fetch_add(&srv->stoppers, 1);
    bds_group *g = atomic_load(&srv->live_group);
    if (g)
        bds__group_dump(g, f);
    else
        fprintf(f, "server: no shard is running\n");
    atomic_fetch_sub(&srv->stoppers, 1);
}
