/* server_stream.c — the gRPC server's streams: each HTTP/2 stream bound to a
 * pipeline session (srv_call, which is server.h's bds_stream).
 *
 * An inbound message is copied once into a srv_msg, its key found by the
 * method's resolver, and handed to bds_session_receive(); while the session
 * has no room the message waits parked here and its window stays shut, so a
 * fast client is slowed at its socket. Replies are queued on the HTTP/2
 * stream by reference; past a high-water mark of unsent bytes they wait here
 * keeping their outbound token. The public stream API (metadata, headers and
 * trailers, pushes, finish, references), interceptors, method callbacks and
 * the live counters live here too: every operation on a stream from another
 * thread travels home as a TASK in the order its thread made it. */
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

/* ---- replies and requests (public call helpers) ------------------------------------------ */

const uint8_t *bds_call_request(const bds_call *call, uint32_t *len) {
    bds__call_check_running(call, "bds_call_request");
    const srv_msg *m = bds_call_payload(call);
    if (len) *len = m->len;
    return m->data;
}

bool bds_call_request_compressed(const bds_call *call) {
    bds__call_check_running(call, "bds_call_request_compressed");
    const srv_msg *m = bds_call_payload(call);
    return m->compressed;
}

/* Thread: any. An echo of the whole request (the first one) is the request's
 * own buffer. Other replies come from the home shard's pools on its thread;
 * elsewhere (the key's shard, a handler's thread) they are malloc'ed: a reply
 * is freed at home, which no other shard's pool may be. */
const char *bds_call_method(const bds_call *call) {
    bds__call_check_running(call, "bds_call_method");
    /* The srv_call outlives every call admitted from it (in_pipeline), and
     * its method never changes. */
    const srv_call *sc = bds_call_session_ctx(call);
    return sc->m->path;
}

static bds_status call_reply(bds_call *call, const void *bytes, size_t len, void (*on_free)(void *ctx), void *ctx);

bds_status bds_call_reply_bytes(bds_call *call, const void *bytes, size_t len) {
    bds__call_check_running(call, "bds_call_reply_bytes");
    return call_reply(call, bytes, len, NULL, NULL);
}

static bool kind_one_reply(bds_method_kind k) { return k == BDS_METHOD_UNARY || k == BDS_METHOD_CLIENT_STREAMING; }
static bool kind_one_request(bds_method_kind k) { return k == BDS_METHOD_UNARY || k == BDS_METHOD_SERVER_STREAMING; }

/* Counts one more message the stream sends: refused once it ended, and past
 * the one answer of UNARY and CLIENT_STREAMING methods. For those, `sent` is
 * the attempt that answered (a push: UINT32_MAX), so a retried call may
 * answer again (its failed attempt's reply was dropped, never sent); attempt
 * 0 is an answer outside any call. Thread: any. */
static bds_status stream_count_send(srv_call *st, uint32_t attempt) {
    if (atomic_load_explicit(&st->ended, memory_order_acquire)) return BDS_E_SESSION_CLOSED;
    if (!kind_one_reply(st->m->m.kind)) {
        atomic_fetch_add_explicit(&st->sent, 1, memory_order_relaxed);
        return BDS_OK;
    }
    uint32_t cur = atomic_load_explicit(&st->sent, memory_order_relaxed);
    uint32_t mark = attempt ? attempt : UINT32_MAX;
    do {
        if (cur != 0 && (attempt == 0 || cur >= attempt)) return BDS_FAILED_PRECONDITION;
    } while (!atomic_compare_exchange_weak_explicit(&st->sent, &cur, mark, memory_order_relaxed, memory_order_relaxed));
    return BDS_OK;
}

/* A counted message that could not be made after all. */
static void stream_uncount_send(srv_call *st) {
    if (kind_one_reply(st->m->m.kind)) atomic_store_explicit(&st->sent, 0, memory_order_relaxed);
    else atomic_fetch_sub_explicit(&st->sent, 1, memory_order_relaxed);
}

/* A reply; on_free(ctx), if set, runs on the call's home shard when its
 * buffer is let go (bds_call_reply_paced). */
static bds_status call_reply(bds_call *call, const void *bytes, size_t len, void (*on_free)(void *ctx), void *ctx) {
    srv_call *st = bds_call_session_ctx(call);
    if (len > st->home->srv->cfg.max_message_bytes) return BDS_E_INVALID;
    bds_status cs = stream_count_send(st, bds_call_attempt(call));
    if (cs != BDS_OK) return cs;
    srv_msg *req = bds_call_payload(call);
    srv_shard *here = bds__srv_self != NULL && req->home == bds__srv_self ? bds__srv_self : NULL;
    srv_msg *r;
    if (!on_free && !req->reply_used && bytes == req->data && len == req->len) {
        /* An echo of the whole request is the request's own buffer, on any
         * shard: the request is lent to the handler, whose thread alone
         * touches reply_used and, before the REPLY posting hands the buffer
         * home, holds; home touches neither until then, and frees it only
         * once every hold is let go (IN at DONE, OUT and H2 once sent). */
        r = req;
        r->reply_used = true;
        r->holds |= SRV_MSG_OUT;
    } else {
        r = bds__srv_msg_new(here, NULL, len, SRV_MSG_OUT);
        if (!r) {
            stream_uncount_send(st);
            return BDS_E_NOMEM;
        }
        if (len) memcpy(r->data, bytes, len);
    }
    r->on_free = on_free;
    r->on_free_ctx = ctx;
    r->compress = atomic_load_explicit(&st->compress, memory_order_relaxed);
    r->reply.data = r;
    r->reply.bytes = (uint32_t)len;
    return bds_call_reply(call, &r->reply); /* taken either way: its status reports on the stream */
}

/* ---- streams: the public handle (bds_stream) -------------------------------------------------- */

static void stream_free(srv_call *st) {
    if (st->user_free) st->user_free(st->user);
    free(st->md);
    free(st);
}

bds_stream *bds_stream_ref(bds_stream *st) {
    if (!st) bds__misuse("bds_stream_ref", "stream is NULL");
    if (atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed) == 0)
        bds__misuse("bds_stream_ref", "the stream is already freed (take a reference while it is alive)");
    return st;
}

void bds_stream_unref(bds_stream *st) {
    if (!st) return;
    uint32_t old = atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel);
    if (old == 0) bds__misuse("bds_stream_unref", "more unrefs than refs");
    if (old == 1) stream_free(st);
}

bds_stream *bds_call_stream(const bds_call *call) {
    bds__call_check_running(call, "bds_call_stream");
    return bds_call_session_ctx(call);
}

static const srv_call *stream_check(const bds_stream *st, const char *api) {
    if (!st) bds__misuse(api, "stream is NULL");
    return st;
}

const char *bds_stream_method(const bds_stream *st) { return stream_check(st, "bds_stream_method")->m->path; }
const char *bds_stream_peer(const bds_stream *st) { return stream_check(st, "bds_stream_peer")->peer; }
uint64_t bds_stream_deadline_ns(const bds_stream *st) {
    return stream_check(st, "bds_stream_deadline_ns")->deadline_ns;
}
bool bds_stream_ended(const bds_stream *st) {
    return atomic_load_explicit(&stream_check(st, "bds_stream_ended")->ended, memory_order_acquire);
}
void bds_stream_set_user(bds_stream *st, void *user) {
    stream_check(st, "bds_stream_set_user");
    st->user = user;
}
void *bds_stream_user(const bds_stream *st) { return stream_check(st, "bds_stream_user")->user; }
void bds_stream_set_user_free(bds_stream *st, void (*free_fn)(void *user)) {
    stream_check(st, "bds_stream_set_user_free");
    st->user_free = free_fn;
}

/* Request metadata, kept per stream: entries of the name's length (2 bytes),
 * the value's (4), the name and a NUL, the value (a -bin one decoded). */
static bool md_entry(const srv_call *st, size_t *off, bds_metadata *out) {
    if (!st->md || *off >= st->md_len) return false;
    const uint8_t *e = st->md + *off;
    size_t nl = (size_t)e[0] << 8 | e[1];
    size_t vl = (size_t)e[2] << 24 | (size_t)e[3] << 16 | (size_t)e[4] << 8 | e[5];
    out->name = (const char *)e + 6;
    out->value = e + 6 + nl + 1;
    out->value_len = vl;
    *off += 6 + nl + 1 + vl;
    return true;
}

size_t bds_stream_metadata_count(const bds_stream *st) {
    return stream_check(st, "bds_stream_metadata_count")->md_count;
}

bool bds_stream_metadata_at(const bds_stream *st, size_t index, bds_metadata *out) {
    stream_check(st, "bds_stream_metadata_at");
    if (!out) bds__misuse("bds_stream_metadata_at", "out is NULL");
    size_t off = 0;
    for (size_t i = 0; md_entry(st, &off, out); i++)
        if (i == index) return true;
    return false;
}

const uint8_t *bds_stream_metadata(const bds_stream *st, const char *name, size_t *len) {
    stream_check(st, "bds_stream_metadata");
    if (!name) bds__misuse("bds_stream_metadata", "name is NULL");
    size_t off = 0;
    bds_metadata e;
    while (md_entry(st, &off, &e)) {
        if (strcmp(e.name, name) != 0) continue;
        if (len) *len = e.value_len;
        return e.value;
    }
    if (len) *len = 0;
    return NULL;
}

static bool name_ends_bin(const char *name, size_t nl) { return nl >= 4 && memcmp(name + nl - 4, "-bin", 4) == 0; }

/* Copies the request's metadata (h2's capture) into the stream, -bin values
 * decoded. Returns false on a -bin value that is not base64, or no memory
 * (*why says which). */
static bool stream_take_metadata(srv_call *st, const uint8_t *cap, size_t cap_len, const char **why) {
    size_t off = 0, total = 0, n = 0;
    bds__h2_header h;
    while (bds__h2_captured_next(cap, cap_len, &off, &h)) {
        total += 6 + h.name_len + 1 + h.value_len;
        n++;
    }
    if (n == 0) return true;
    st->md = malloc(total);
    if (!st->md) {
        *why = "server out of memory for request metadata";
        return false;
    }
    uint8_t *p = st->md;
    off = 0;
    while (bds__h2_captured_next(cap, cap_len, &off, &h)) {
        uint8_t *e = p;
        memcpy(e + 6, h.name, h.name_len);
        e[6 + h.name_len] = 0;
        uint8_t *v = e + 6 + h.name_len + 1;
        size_t vl = h.value_len;
        if (name_ends_bin((const char *)h.name, h.name_len)) {
            vl = bds__base64_decode((const char *)h.value, h.value_len, v);
            if (vl == SIZE_MAX) {
                *why = "malformed request metadata: a -bin value is not base64";
                return false;
            }
        } else if (h.value_len) {
            memcpy(v, h.value, h.value_len);
        }
        e[0] = (uint8_t)(h.name_len >> 8);
        e[1] = (uint8_t)h.name_len;
        e[2] = (uint8_t)(vl >> 24);
        e[3] = (uint8_t)(vl >> 16);
        e[4] = (uint8_t)(vl >> 8);
        e[5] = (uint8_t)vl;
        p = v + vl;
    }
    st->md_len = (uint32_t)(p - st->md);
    st->md_count = (uint32_t)n;
    return true;
}

/* Stream operations travel to the stream's home as srv_msg replies (TASK
 * messages through the pipelines' channels), so they keep their place behind
 * the replies their thread posted before them. */
static void stream_task_run(bds__task *t);

static void stream_post(srv_call *st, srv_msg *m) {
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed); /* for the trip */
    m->target = st;
    m->task.run = stream_task_run;
    bds__post_any(bds__shard_pipeline_get(st->home->pipe), bds__shard_id(st->home->shard), BDS_XK_TASK, &m->task);
}

/* A buffer for an operation on st: from the home shard's pools on its thread,
 * else malloc'ed (freed at home either way). */
static srv_msg *stream_msg(srv_call *st, size_t len) {
    srv_shard *here = bds__srv_self == st->home ? bds__srv_self : NULL;
    srv_msg *m = bds__srv_msg_new(here, NULL, len, SRV_MSG_OUT);
    if (m) m->reply.data = m;
    return m;
}

bds_status bds_stream_send(bds_stream *st, const void *bytes, size_t len) {
    stream_check(st, "bds_stream_send");
    if (!bytes && len) bds__misuse("bds_stream_send", "bytes is NULL");
    if (len > st->home->srv->cfg.max_message_bytes) return BDS_E_INVALID;
    bds_status cs = stream_count_send(st, 0);
    if (cs != BDS_OK) return cs;
    srv_msg *m = stream_msg(st, len);
    if (!m) {
        stream_uncount_send(st);
        return BDS_E_NOMEM;
    }
    if (len) memcpy(m->data, bytes, len);
    m->reply.bytes = (uint32_t)len;
    m->compress = atomic_load_explicit(&st->compress, memory_order_relaxed);
    stream_post(st, m);
    return BDS_OK;
}

BDS_STATIC_ASSERT(BDS_COMPRESSION_NONE == (int)BDS__GRPC_ENC_IDENTITY &&
                      BDS_COMPRESSION_DEFLATE == (int)BDS__GRPC_ENC_DEFLATE &&
                      BDS_COMPRESSION_GZIP == (int)BDS__GRPC_ENC_GZIP,
                  "bds_compression names the wire's encodings");

bds_status bds_stream_set_compression(bds_stream *st, bds_compression compression) {
    stream_check(st, "bds_stream_set_compression");
    if ((unsigned)compression > BDS_COMPRESSION_GZIP) return BDS_E_INVALID;
    atomic_store_explicit(&st->compress, (uint8_t)compression, memory_order_relaxed);
    return BDS_OK;
}

#define STREAM_MD_ENTRIES_MAX 16u
#define STREAM_MD_BYTES_MAX 8192u

static bool md_name_ok(const char *name, size_t nl) {
    if (nl == 0 || nl > 255 || (nl >= 5 && memcmp(name, "grpc-", 5) == 0)) return false;
    for (size_t i = 0; i < nl; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) return false;
    }
    /* Headers HTTP/2 or gRPC set themselves. */
    static const char *const reserved[] = {"te", "content-type", "user-agent", "connection", "host"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(name, reserved[i]) == 0) return false;
    return true;
}

static bds_status stream_set_md(bds_stream *st, bool trailer, const char *name, const void *value, size_t len,
                                const char *api) {
    stream_check(st, api);
    if (!name || (!value && len)) bds__misuse(api, "name or value is NULL");
    size_t nl = strlen(name);
    if (!md_name_ok(name, nl)) return BDS_E_INVALID;
    bool bin = name_ends_bin(name, nl);
    if (!bin) {
        for (size_t i = 0; i < len; i++) {
            uint8_t c = ((const uint8_t *)value)[i];
            if (c < 0x20 || c > 0x7e) return BDS_E_INVALID;
        }
    }
    if (atomic_load_explicit(&st->ended, memory_order_acquire)) return BDS_E_SESSION_CLOSED;
    if (!trailer && atomic_load_explicit(&st->sent, memory_order_relaxed) > 0) return BDS_FAILED_PRECONDITION;
    size_t wire = bin ? bds__base64_encoded_len(len) : len;
    if (len > STREAM_MD_BYTES_MAX || wire + nl > STREAM_MD_BYTES_MAX) return BDS_RESOURCE_EXHAUSTED;
    uint32_t add = (uint32_t)(wire + nl);
    uint32_t n = atomic_fetch_add_explicit(&st->md_n[trailer], 1, memory_order_relaxed);
    uint32_t b = atomic_fetch_add_explicit(&st->md_bytes[trailer], add, memory_order_relaxed);
    if (n >= STREAM_MD_ENTRIES_MAX || b + add > STREAM_MD_BYTES_MAX) {
        atomic_fetch_sub_explicit(&st->md_n[trailer], 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&st->md_bytes[trailer], add, memory_order_relaxed);
        return BDS_RESOURCE_EXHAUSTED;
    }
    srv_msg *m = stream_msg(st, nl + 1 + wire);
    if (!m) return BDS_E_NOMEM;
    memcpy(m->data, name, nl + 1);
    if (bin) bds__base64_encode(value, len, (char *)m->data + nl + 1);
    else if (len) memcpy(m->data + nl + 1, value, len);
    m->ctl = trailer ? SRV_CTL_TRAILER : SRV_CTL_HEADER;
    m->reply.control = true;
    stream_post(st, m);
    return BDS_OK;
}

bds_status bds_stream_set_header(bds_stream *st, const char *name, const void *value, size_t len) {
    return stream_set_md(st, false, name, value, len, "bds_stream_set_header");
}

bds_status bds_stream_set_trailer(bds_stream *st, const char *name, const void *value, size_t len) {
    return stream_set_md(st, true, name, value, len, "bds_stream_set_trailer");
}

bds_status bds_stream_finish(bds_stream *st, bds_status status, const char *message) {
    stream_check(st, "bds_stream_finish");
    size_t ml = message ? strnlen(message, sizeof st->fin_msg - 1) : 0;
    srv_msg *m = stream_msg(st, ml + 1);
    if (!m) return BDS_E_NOMEM;
    bool open = false;
    if (!atomic_compare_exchange_strong_explicit(&st->ended, &open, true, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        bds__srv_msg_unhold(m, SRV_MSG_OUT); /* made on this thread, handed to no one */
        return BDS_E_SESSION_CLOSED;
    }
    if (ml) memcpy(m->data, message, ml);
    m->data[ml] = 0;
    m->ctl = SRV_CTL_FINISH;
    m->hint = (uint32_t)status;
    m->reply.control = true;
    stream_post(st, m);
    return BDS_OK;
}

/* ---- applications: serving state, stop hooks, paced replies ------------------------------------ */

bool bds_server_serving(const bds_server *srv) {
    if (!srv) bds__misuse("bds_server_serving", "server is NULL");
    return atomic_load(&srv->serving) != 0;
}

bds_status bds_server_on_stop(bds_server *srv, bds_server_on_stop_fn fn, void *ctx) {
    if (!srv) bds__misuse("bds_server_on_stop", "server is NULL");
    if (srv->running) return BDS_FAILED_PRECONDITION;
    if (!fn) return BDS_E_INVALID;
    if (srv->n_stop_hooks == SRV_STOP_HOOKS_MAX) return BDS_RESOURCE_EXHAUSTED;
    srv->stop_hooks[srv->n_stop_hooks].fn = fn;
    srv->stop_hooks[srv->n_stop_hooks].ctx = ctx;
    srv->n_stop_hooks++;
    return BDS_OK;
}

/* A shard's stop begins (serving is false already): the first shard here
 * runs the hooks, before it drains its own streams. */
void bds__srv_stop_hooks_run(bds_server *srv) {
    bool told = false;
    if (!atomic_compare_exchange_strong(&srv->stop_told, &told, true)) return;
    for (uint32_t i = 0; i < srv->n_stop_hooks; i++) srv->stop_hooks[i].fn(srv, srv->stop_hooks[i].ctx);
}

/* A paced reply's note: fn to run on the call's EXEC pipeline once the
 * reply's buffer is let go. */
typedef struct srv_paced {
    bds__task task;           /* first: the TASK that carries it to EXEC */
    bds_call *call;
    bds_pipeline *exec;
    bds_call_fn fn;
    void *ctx;
} srv_paced;

static void paced_run(bds__task *t) {
    srv_paced *pc = BDS_CONTAINER_OF(t, srv_paced, task);
    bds_call *call = pc->call;
    bds_call_fn fn = pc->fn;
    void *ctx = pc->ctx;
    free(pc);
    /* The call had to stay the handler's until now. */
    bds__call_check_running(call, "bds_call_reply_paced");
    fn(call, ctx);
}

/* The reply's buffer was let go, on the call's home shard and perhaps from
 * inside its HTTP/2 session (a message release): fn runs later, from the EXEC
 * pipeline's own queue, where it may reply and arm timers. */
static void paced_freed(void *ctx) {
    srv_paced *pc = ctx;
    bds__post_any(pc->exec, pc->exec->index, BDS_XK_TASK, &pc->task);
}

bds_status bds_call_reply_paced(bds_call *call, const void *bytes, size_t len, bds_call_fn fn, void *ctx) {
    bds__call_check_running(call, "bds_call_reply_paced");
    if (!fn) bds__misuse("bds_call_reply_paced", "fn is NULL");
    bds_pipeline *exec = bds__pipeline_current();
    if (!exec || exec != call->exec_p)
        bds__misuse("bds_call_reply_paced", "only on the call's EXEC pipeline thread (where its handler runs)");
    const srv_call *st = bds_call_session_ctx(call);
    const bds_options *o = &st->m->opts;
    if (o->retry.max_attempts > 0 && !o->retry.at_least_once) return BDS_FAILED_PRECONDITION;
    srv_paced *pc = malloc(sizeof *pc);
    if (!pc) return BDS_E_NOMEM;
    pc->task.run = paced_run;
    pc->call = call;
    pc->exec = exec;
    pc->fn = fn;
    pc->ctx = ctx;
    bds_status rs = call_reply(call, bytes, len, paced_freed, pc);
    if (rs != BDS_OK) free(pc);
    return rs;
}

/* ---- calls --------------------------------------------------------------------------------- */

/* The call has blocked replies (or pending trailers): bds__srv_conn_flush visits it. */
static void call_wait(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc || bds__dlist_linked(&call->wait_link)) return;
    bds__dlist_insert_tail(&sc->waiting, &call->wait_link);
}

static void call_unwait(srv_call *call) {
    BDS_ASSERT(call->conn != NULL || !bds__dlist_linked(&call->wait_link));
    bds__dlist_unlink(&call->wait_link);
}

void bds__srv_call_unlink(srv_call *call) {
    srv_conn *sc = call->conn;
    if (!sc) return;
    call_unwait(call);
    bds__dlist_unlink(&call->ready_link);
    if (sc->victim == call || sc->sh->victim == call) {
        /* Its memory goes as its session ends; a next victim may be due. */
        if (sc->victim == call) sc->victim = NULL;
        if (sc->sh->victim == call) sc->sh->victim = NULL;
        bds__srv_shard_budget_due(sc->sh);
    }
    bds__dlist_unlink(&call->conn_link);
    call->conn = NULL;
    if (bds__dlist_empty(&sc->calls)) sc->idle_since_ns = bds__shard_now(sc->sh->shard);
}

static void msg_list_free(srv_msg *m, uint8_t hold) {
    while (m) {
        srv_msg *n = m->next;
        bds__srv_msg_unhold(m, hold);
        m = n;
    }
}

/* The call is over for its connection. While the pipeline still holds some
 * of its messages (a handler that has not finished) it lingers: on its
 * connection's lingering list, which max_lingering_streams bounds, or on no
 * list once the connection is gone; op_release frees it with the last. */
void bds__srv_call_free(srv_call *call) {
    srv_conn *sc = call->conn;
    bds__srv_call_unlink(call);
    call->parked_bytes = 0;
    msg_list_free(call->parked, SRV_MSG_IN);
    msg_list_free(call->blocked, SRV_MSG_OUT);
    call->parked = call->parked_tail = call->blocked = call->blocked_tail = NULL;
    if (call->in_pipeline == 0) {
        bds_stream_unref(call); /* the server's reference */
        return;
    }
    call->lingering = true;
    if (sc && !sc->closing) {
        call->conn = sc;
        bds__dlist_insert_head(&sc->lingering, &call->conn_link);
        sc->n_lingering++;
    }
}

/* A lingering call's last message came back. */
static void call_linger_end(srv_call *call) {
    srv_conn *sc = call->conn;
    if (sc) {
        bds__dlist_unlink(&call->conn_link);
        sc->n_lingering--;
    }
    bds_stream_unref(call); /* the server's reference */
}

/* The session's reply leaves for the HTTP/2 stream, or waits here (keeping
 * its outbound token) while the stream holds too many unsent bytes. */
static void call_apply_ctl(srv_call *call, srv_msg *r);
static void call_sent(srv_call *call, const srv_msg *r);

static bool call_try_send(srv_call *call, srv_msg *r) {
    if (r->ctl) {
        call_apply_ctl(call, r);
        return true;
    }
    srv_conn *sc = call->conn;
    if (!sc || call->h2_done || call->finish_requested) return true; /* nobody to send to: written = dropped */
    /* E_AGAIN: the stream holds REPLY_HIGH_WATER unsent bytes (its send bound).
     * A compressed reply sends its compressed bytes; the node is the reply's. */
    srv_msg *w = r->z ? r->z : r;
    bds_status st = bds__h2_send_framed(sc->h2, call->stream, &r->h2, w->prefix, w->len, r->z != NULL);
    if (st == BDS_E_AGAIN) return false;
    if (st == BDS_OK) {
        r->holds |= SRV_MSG_H2; /* released by h2_on_msg_release */
        call_sent(call, r);
    }
    bds__srv_conn_kick(sc);
    return true;
}

void bds__srv_call_move_blocked(srv_call *call) {
    while (call->blocked && call_try_send(call, call->blocked)) {
        srv_msg *r = call->blocked;
        call->blocked = r->next;
        if (!call->blocked) call->blocked_tail = NULL;
        if (call->session) bds_session_reply_written(call->session, &r->reply);
        bds__srv_msg_unhold(r, SRV_MSG_OUT);
    }
    if (!call->blocked) call_unwait(call);
    if (call->finish_pending && !call->blocked) {
        srv_conn *sc = call->conn;
        if (sc && !call->h2_done) {
            bds__h2_finish(sc->h2, call->stream, call->fin_status,
                           call->fin_status == BDS_OK ? NULL : call->fin_msg);
            bds__srv_conn_kick(sc);
        }
        bds__srv_call_free(call);
    }
}

/* ---- stream events at home: interceptors, callbacks, counters ---------------------------------- */

/* A message left for HTTP/2. */
static void call_sent(srv_call *call, const srv_msg *r) {
    call->msgs_out++;
    call->bytes_out += r->len;
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->messages_out, 1);
    if (call->m->opts.metrics.payload_sizes) ctr_add(&mc->bytes_out, r->len);
    const bds_server *srv = call->home->srv;
    for (uint32_t i = 0; i < srv->n_icpt; i++)
        if (srv->icpt[i].on_message_out) srv->icpt[i].on_message_out(call, r->data, r->len, srv->icpt[i].ctx);
    for (uint32_t i = 0; i < call->m->n_icpt; i++) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (ic->on_message_out) ic->on_message_out(call, r->data, r->len, ic->ctx);
    }
}

/* The status a stream's end puts on the wire, as a gRPC code (CANCELLED:
 * nothing is sent). */
static bds_status wire_status(bds_status st) {
    int g = bds_status_grpc(st);
    return g < 0 ? BDS_CANCELLED : (bds_status)g;
}

/* A UNARY or CLIENT_STREAMING stream that would end OK without its reply. */
static bds_status call_end_status(const srv_call *call, bds_status st, const char **msg) {
    if (st == BDS_OK && kind_one_reply(call->m->m.kind) &&
        atomic_load_explicit(&call->sent, memory_order_relaxed) == 0) {
        *msg = "the method ended without its reply";
        return BDS_INTERNAL;
    }
    return st;
}

/* The stream is over: the stream API refuses from now on, and on_end runs
 * (method's, then the interceptors' in reverse). Once per stream. */
/* Interceptor j of the stream's chain: the server's, then the method's. */
static const bds_interceptor *call_icpt(const srv_call *call, uint32_t j) {
    const bds_server *srv = call->home->srv;
    return j < srv->n_icpt ? &srv->icpt[j] : call->m->icpt[j - srv->n_icpt];
}

/* on_end of the first n interceptors of the chain (those whose on_open
 * passed), in reverse order. */
static void call_icpt_end(srv_call *call, const bds_stream_end_info *info, uint32_t n) {
    for (uint32_t j = n; j-- > 0;) {
        const bds_interceptor *ic = call_icpt(call, j);
        if (ic->on_end) ic->on_end(call, info, ic->ctx);
    }
}

/* The stream was refused after some interceptors' on_open passed (a later
 * one refused, or the session could not be made): those still get their
 * on_end, so that what their on_open took is given back. */
static void stream_refused_notify(srv_call *call, bds_status status, const char *message) {
    bds_stream_end_info info = {
        .status = wire_status(status),
        .message = message ? message : "",
        .duration_ns = bds__clock_ns() - call->start_ns,
    };
    call_icpt_end(call, &info, call->icpt_passed);
}

/* A stream of method mi refused at its open with status: counted as started
 * and ended at once (gRFC A66 counts every call the transport saw). */
static void stream_refused_count(srv_shard *sh, uint32_t mi, bds_status status, uint64_t start_ns) {
    ctr_add(&sh->srv->mc[bds__shard_id(sh->shard) * BDS_SERVER_METHODS_MAX + mi].streams_refused, 1);
    if (sh->srv->metrics_on)
        bds__srv_metrics_call_end(sh, mi, (uint32_t)wire_status(status), start_ns ? bds__clock_ns() - start_ns : 0,
                                  0, 0);
}

static void stream_end_notify(srv_call *call, bds_status status, const char *message) {
    atomic_store_explicit(&call->ended, true, memory_order_release);
    if (call->end_told || !call->opened) return;
    call->end_told = true;
    bds_status ws = wire_status(status);
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->streams_ended, 1);
    if (ws == BDS_OK) ctr_add(&mc->streams_ok, 1);
    ctr_sub(&shard_ctr(call->home)->streams_live, 1);
    uint64_t duration_ns = bds__clock_ns() - call->start_ns;
    if (call->home->srv->metrics_on)
        bds__srv_metrics_call_end(call->home, (uint32_t)(call->m - call->home->srv->methods), (uint32_t)ws,
                                  duration_ns, call->bytes_in, call->bytes_out);
    const char *msg = message ? message : "";
    void *hctx = call->m->m.handler_ctx;
    if (call->m->m.on_end) call->m->m.on_end(call, ws, msg, hctx);
    bds_stream_end_info info = {
        .status = ws,
        .message = msg,
        .duration_ns = duration_ns,
        .messages_in = call->msgs_in,
        .messages_out = call->msgs_out,
        .bytes_in = call->bytes_in,
        .bytes_out = call->bytes_out,
    };
    call_icpt_end(call, &info, call->icpt_passed);
}

/* Ends the stream on the wire once the replies waiting here have left; the
 * session is gone already (released, or its close being reported). */
static void call_close_h2(srv_call *call, bds_status status, const char *message) {
    srv_conn *sc = call->conn;
    if (sc && !call->h2_done && call->blocked) {
        call->finish_pending = true;
        call->fin_status = status;
        snprintf(call->fin_msg, sizeof call->fin_msg, "%s", message ? message : "");
        msg_list_free(call->parked, SRV_MSG_IN);
        call->parked = call->parked_tail = NULL;
        call->parked_bytes = 0;
        bds__srv_conn_kick(sc);
        return;
    }
    if (sc && !call->h2_done) {
        /* The session projects pipeline errors onto gRPC codes (bds_status_grpc);
         * those that send nothing reset the stream. */
        bds__h2_finish(sc->h2, call->stream, status, status == BDS_OK ? NULL : message);
        call->h2_done = true;
        bds__srv_conn_kick(sc);
    }
    bds__srv_call_free(call);
}

/* bds_stream_finish reached its place in reply order: the stream ends now,
 * its replies still waiting here first. Runs from a TASK of its own, outside
 * the Sender's write (the session is released here). */
static void call_finish_task(bds__task *t) {
    srv_msg *m = BDS_CONTAINER_OF(t, srv_msg, task);
    srv_call *call = m->target;
    m->target = NULL;
    bds_session *s = call->session;
    if (s && !call->finish_pending) {
        const char *msg = (const char *)m->data;
        bds_status st = call_end_status(call, (bds_status)m->hint, &msg);
        stream_end_notify(call, st, msg);
        call->session = NULL;
        bds_session_release(s); /* running calls see bds_call_cancelled; no close callback */
        call_close_h2(call, st, msg);
    }
    bds__srv_msg_unhold(m, SRV_MSG_OUT);
    bds_stream_unref(call);
}

/* A control entry reached its place in reply order (ops->write, or the head
 * of the blocked replies). */
static void call_apply_ctl(srv_call *call, srv_msg *r) {
    srv_conn *sc = call->conn;
    switch (r->ctl) {
    case SRV_CTL_HEADER:
    case SRV_CTL_TRAILER: {
        if (!sc || call->h2_done || call->finish_requested) return;
        size_t nl = strlen((const char *)r->data);
        /* Validated when it was made: what is left is a header set after a
         * reply another thread made first (too late: dropped, server.h). */
        if (bds__h2_add_metadata(sc->h2, call->stream, r->ctl == SRV_CTL_TRAILER, (const char *)r->data,
                                 r->data + nl + 1, r->len - nl - 1) != BDS_OK)
            bds__log(&call->home->srv->log, BDS_LOG_DEBUG, "metadata dropped: the response headers had left",
                     "kind=%s name=%s method=%s", r->ctl == SRV_CTL_TRAILER ? "trailer" : "header",
                     (const char *)r->data, call->m->path);
        return;
    }
    case SRV_CTL_FINISH: {
        if (call->finish_requested) return;
        call->finish_requested = true; /* what the Sender writes after it is dropped */
        /* The buffer carries the finish on: a reference of its own keeps it
         * (bds__srv_msg_unhold in call_finish_task), and one on the stream. */
        srv_msg *f = stream_msg(call, r->len);
        if (!f) { /* no memory to defer it: the session ends at the next close */
            bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server out of memory");
            return;
        }
        memcpy(f->data, r->data, r->len);
        f->hint = r->hint;
        atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
        f->target = call;
        f->task.run = call_finish_task;
        bds_pipeline *p = bds__shard_pipeline_get(call->home->pipe);
        bds__post(p, p->index, BDS_XK_TASK, &f->task);
        return;
    }
    }
    BDS_UNREACHABLE();
}

/* An operation on a stream, at its home (stream_post). */
static void stream_task_run(bds__task *t) {
    srv_msg *m = BDS_CONTAINER_OF(t, srv_msg, task);
    srv_call *st = m->target;
    m->target = NULL;
    BDS_ASSERT(st->home == bds__srv_self);
    if (st->session && !st->finish_requested && !st->finish_pending) {
        /* Written (ops->write) or dropped (ops->drop) by the Sender. */
        (void)bds_session_send(st->session, &m->reply);
    } else {
        bds__srv_msg_unhold(m, SRV_MSG_OUT);
    }
    bds_stream_unref(st);
}

/* The interceptors' on_open, the server's first. Returns BDS_OK or the
 * refusal (*message: its text, or NULL). */
static bds_status stream_run_on_open(srv_call *call, const char **message) {
    uint32_t n = call->home->srv->n_icpt + call->m->n_icpt;
    *message = NULL;
    for (call->icpt_passed = 0; call->icpt_passed < n; call->icpt_passed++) {
        const bds_interceptor *ic = call_icpt(call, call->icpt_passed);
        if (!ic->on_open) continue;
        bds_status st = ic->on_open(call, message, ic->ctx);
        if (st != BDS_OK) return st;
    }
    return BDS_OK;
}

/* The interceptors' on_message_in. Returns BDS_OK or the status to end the stream with. */
static bds_status stream_run_on_message_in(srv_call *call, const uint8_t *bytes, uint32_t len) {
    const bds_server *srv = call->home->srv;
    for (uint32_t i = 0; i < srv->n_icpt; i++) {
        if (!srv->icpt[i].on_message_in) continue;
        bds_status st = srv->icpt[i].on_message_in(call, bytes, len, srv->icpt[i].ctx);
        if (st != BDS_OK) return st;
    }
    for (uint32_t i = 0; i < call->m->n_icpt; i++) {
        const bds_interceptor *ic = call->m->icpt[i];
        if (!ic->on_message_in) continue;
        bds_status st = ic->on_message_in(call, bytes, len, ic->ctx);
        if (st != BDS_OK) return st;
    }
    return BDS_OK;
}

/* With on_half_close: the client half-closed and every message it sent has
 * been handled. */
static void call_half_close_check(srv_call *call) {
    if (!call->half_close_wait || call->in_pipeline > 0 || !call->session || call->finish_pending) return;
    call->half_close_wait = false;
    call->m->m.on_half_close(call, call->m->m.handler_ctx);
}

/* A reply reaches home, in stream order: the first fixes the stream's
 * response encoding (bds__h2_response_encoding: what it asks for, if the
 * client takes it), and each asking for compression is compressed with that
 * encoding into r->z, here, on the home shard: deflate costs this shard's
 * loop CPU per reply byte (BDS_GRPC_DEFLATE_LEVEL, zlib's fastest). The
 * compressed bytes are copied out of the shard's codec into a buffer of
 * their size, so a reply held in the queue holds what it sends. A reply
 * under BDS_GRPC_COMPRESS_MIN_BYTES, one that would not shrink, or one that
 * finds no memory for it goes as it is (gRPC allows any message
 * uncompressed). */
static void call_compress(srv_call *call, srv_msg *r) {
    srv_conn *sc = call->conn;
    if (r->ctl || !sc || call->h2_done || call->finish_requested) return;
    /* The stream's encoding is fixed by its first reply: asked once. */
    if (!call->resp_enc_known) {
        call->resp_enc = (uint8_t)bds__h2_response_encoding(sc->h2, call->stream, (bds__grpc_enc)r->compress);
        call->resp_enc_known = true;
    }
    bds__grpc_enc enc = (bds__grpc_enc)call->resp_enc;
    if (enc == BDS__GRPC_ENC_IDENTITY || r->compress == BDS_COMPRESSION_NONE || r->len < BDS_GRPC_COMPRESS_MIN_BYTES)
        return;
    srv_shard *sh = call->home;
    const uint8_t *out;
    size_t n;
    if (bds__grpc_compress(&sh->codec, enc, r->data, r->len, r->len - 1, &out, &n) != BDS_OK) return;
    srv_msg *z = bds__srv_msg_new(sh, NULL, n, SRV_MSG_OUT);
    if (z) {
        bds__srv_msg_attach(z, call);
        memcpy(z->data, out, n);
        r->z = z;
    }
    bds__grpc_codec_trim(&sh->codec);
}

static void op_write(bds_session *s, bds_reply *reply, void *ctx) {
    srv_call *call = ctx;
    srv_msg *r = reply->data;
    bds__srv_msg_attach(r, call);
    call_compress(call, r);
    if (!call->blocked && call_try_send(call, r)) {
        bds_session_reply_written(s, reply);
        bds__srv_msg_unhold(r, SRV_MSG_OUT);
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
    bds__srv_msg_unhold(reply->data, SRV_MSG_OUT);
}

static void op_release(bds_session *s, void *payload, void *ctx) {
    (void)s;
    srv_call *call = ctx;
    srv_msg *m = payload;
    if (m->admit_ns) bds__srv_metrics_msg_done(call->home, (uint32_t)(call->m - call->home->srv->methods), m->admit_ns);
    bds__srv_msg_unhold(m, SRV_MSG_IN);
    BDS_ASSERT(call->in_pipeline > 0);
    if (--call->in_pipeline > 0) return;
    if (call->lingering) call_linger_end(call);
    else call_half_close_check(call);
}


static void op_closed(bds_session *s, bds_status status, const char *message, void *ctx) {
    srv_call *call = ctx;
    status = call_end_status(call, status, &message);
    stream_end_notify(call, status, message);
    call->session = NULL;
    bds_session_release(s);
    /* A clean end (or a drained shutdown) owes the client every reply the
     * Sender admitted: the ones still waiting here leave first, then the
     * trailers. Other ends go at once. */
    if (call->blocked && status != BDS_OK && status != BDS_E_SHUTDOWN) {
        msg_list_free(call->blocked, SRV_MSG_OUT);
        call->blocked = call->blocked_tail = NULL;
        call_unwait(call);
    }
    call_close_h2(call, status, message);
}

static bool call_admit(srv_call *call, srv_msg *m);

/* The client half-closed after its last admitted message. */
static void call_client_close(srv_call *call) {
    if (kind_one_request(call->m->m.kind) && call->msgs_in == 0) {
        bds_session_fail(call->session, BDS_INTERNAL, "no request message (the method takes exactly one)");
        return;
    }
    if (call->m->m.on_half_close) {
        /* The stream stays open for the callback's answer (bds_stream_finish). */
        call->half_close_wait = true;
        call_half_close_check(call);
        return;
    }
    bds_session_client_close(call->session);
}

/* May the bytes of a message still arriving be credited? Only while the
 * session could take it: nothing parked and inbound room. Otherwise they wait
 * uncredited and the client stops at the stream window; crediting them
 * regardless let a client park messages without bound (each sent but its last
 * byte, a message's last chunk the only part ever withheld). Under HARD_REJECT
 * a message is never parked: it completes, and is admitted or rejected. */
static bool call_may_credit_partial(srv_call *call) {
    if (call->finish_pending) return false; /* its messages are dropped anyway */
    if (call->conn && conn_blocked(call->conn)) return false;
    if (call->m->opts.inbound.backpressure.policy == BDS_BP_HARD_REJECT) return true;
    return !call->parked && bds_session_inbound_room(call->session) > 0;
}

/* May the first parked message be admitted now? (HARD_REJECT messages park
 * only for a budget: admitted once it allows, whatever the room.) */
static bool call_may_admit(srv_call *call) {
    if (call->conn && conn_blocked(call->conn)) return false;
    return call->m->opts.inbound.backpressure.policy == BDS_BP_HARD_REJECT ||
           bds_session_inbound_room(call->session) > 0;
}

void bds__srv_call_drain_parked(srv_call *call) {
    while (call->parked && call_may_admit(call)) {
        srv_msg *m = call->parked;
        call->parked = m->next;
        /* A long parked list is cold: the next one's line loads while this
         * one is admitted, not after. */
        if (m->next) __builtin_prefetch(m->next);
        if (!call->parked) call->parked_tail = NULL;
        call->parked_bytes -= m->len;
        if (!call_admit(call, m)) break;
    }
    if (!call->parked && call->half_close_pending) {
        call->half_close_pending = false;
        call_client_close(call);
    }
    /* Room again: the message in progress, held back at the window, moves on. */
    if (call->partial_withheld && call->conn && !call->h2_done && call_may_credit_partial(call)) {
        call->partial_withheld = false;
        bds__h2_credit_partial(call->conn->h2, call->stream);
        bds__srv_conn_kick(call->conn);
    }
}

/* Room again, told as a message completes: its parked messages are admitted
 * after the pipeline's run (bds__srv_shard_admit_ready), a batch of them at
 * once, not one per completion, each between two others' runs. A call off its
 * connection takes no more messages. */
static void op_inbound_ready(bds_session *s, void *ctx) {
    (void)s;
    srv_call *call = ctx;
    if (call->conn && !bds__dlist_linked(&call->ready_link))
        bds__dlist_insert_tail(&call->home->admit_ready, &call->ready_link);
}

bool bds__srv_shard_admit_ready(srv_shard *sh) {
    if (bds__dlist_empty(&sh->admit_ready)) return false;
    bds__dlist *l;
    while ((l = bds__dlist_first(&sh->admit_ready))) {
        srv_call *call = BDS_DLIST_ENTRY(l, srv_call, ready_link);
        bds__dlist_unlink(&call->ready_link);
        bds__srv_call_drain_parked(call);
    }
    return true;
}

static const bds_session_ops srv_ops = {
    .write = op_write, .drop = op_drop, .release = op_release, .closed = op_closed, .inbound_ready = op_inbound_ready,
};

/* Hands m to the pipeline and credits its bytes. Returns false when the
 * session would not take it (closed or closing): m is freed. */
static bool call_admit(srv_call *call, srv_msg *m) {
    uint32_t wire = m->wire;
    /* Before the receive: a call may be done before it returns (a FIFO
     * method's handler runs in it). The tick's clock (when the shard woke to
     * read it, or to unpark it): no clock read here; its end reads one. */
    m->admit_ns = call->home->srv->metrics_on ? bds__shard_now(call->home->shard) : 0;
    bds_status st = bds_session_receive(call->session, m, m->len, m->key, m->key_len, 0);
    if (st != BDS_OK) {
        bds__srv_msg_unhold(m, SRV_MSG_IN);
        /* A rejection closes the session itself, and a refusal for the
         * shutdown keeps its end from being OK; a message the pipeline could
         * not even take must not vanish from a stream that goes on. */
        if (st == BDS_E_NOMEM) bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "out of memory for a message");
        return false;
    }
    call->in_pipeline++;
    if (call->conn && !call->h2_done) {
        bds__h2_consume(call->conn->h2, call->stream, wire);
        bds__srv_conn_kick(call->conn);
    }
    return true;
}

/* A message parked because the session has no room: the stream has more
 * window than the session takes. What the client sends on it from here waits
 * parked, window bytes of it: 64 KiB of 64-byte messages is 800 of them per
 * stream, a backlog cold by the time it is admitted (at an offered load over
 * what the shard serves, 16 such streams cut what it served to about half).
 * So the window shrinks to what the session reads ahead, twice over (at
 * least 16 KiB), until the session keeps up again (h2_on_message). The
 * client is not told: the credits it would get next pay the cut (bds__h2_stream_window_cap),
 * and the server's backlog stays at the client where it belongs. */
#define CALL_WINDOW_CAP_MIN (16u * 1024u)

static void call_cap_window(srv_call *call, uint32_t wire_bytes) {
    call->unparked_bytes = 0;
    if (!call->conn || call->h2_done) return;
    uint32_t ahead = call->m->opts.inbound.read_ahead ? call->m->opts.inbound.read_ahead : 64u;
    uint64_t cap = 2u * (uint64_t)ahead * wire_bytes;
    if (cap < CALL_WINDOW_CAP_MIN) cap = CALL_WINDOW_CAP_MIN;
    if (cap > INT32_MAX || (call->window_cap && call->window_cap <= cap)) return;
    /* Capped at or above the session's window: nothing to cap. */
    call->window_cap = bds__h2_stream_window_cap(call->conn->h2, call->stream, (uint32_t)cap) < cap ? 0 : (uint32_t)cap;
}

/* ---- HTTP/2 events ----------------------------------------------------------------------------- */

static bds_status h2_on_call_start(void *ctx, const bds__h2_call_info *info, void **call_ctx) {
    srv_conn *sc = ctx;
    srv_shard *sh = sc->sh;
    uint32_t mi = info->method_index;
    bds_status early = BDS_OK;
    if (sh->stopping) early = BDS_UNAVAILABLE;
    /* Streams over whose handlers still run are outside MAX_CONCURRENT_STREAMS:
     * past their bound the connection gets no more until some finish. */
    else if (sc->n_lingering >= sh->srv->cfg.max_lingering_streams) early = BDS_RESOURCE_EXHAUSTED;
    else if (conn_blocked(sc)) early = BDS_E_AGAIN; /* REFUSED_STREAM: at a memory budget */
    if (early != BDS_OK) {
        /* REFUSED_STREAM reaches a gRPC client as UNAVAILABLE (if it does not retry it) */
        stream_refused_count(sh, mi, early == BDS_E_AGAIN ? BDS_UNAVAILABLE : early, 0);
        return early;
    }
    const srv_method *m = &sh->srv->methods[mi];
    srv_method_counters *mc = &sh->srv->mc[bds__shard_id(sh->shard) * BDS_SERVER_METHODS_MAX + mi];
    srv_call *call = calloc(1, sizeof *call);
    if (!call) {
        stream_refused_count(sh, mi, BDS_RESOURCE_EXHAUSTED, 0);
        return BDS_RESOURCE_EXHAUSTED;
    }
    call->home = sh;
    bds__dlist_init(&call->conn_link);
    bds__dlist_init(&call->wait_link);
    bds__dlist_init(&call->ready_link);
    atomic_init(&call->refs, 1);
    atomic_init(&call->compress, (uint8_t)sh->srv->cfg.compress_responses);
    call->conn = sc;
    call->stream = info->stream_id;
    call->m = m;
    call->start_ns = bds__clock_ns();
    call->deadline_ns = info->deadline_ns;
    memcpy(call->peer, sc->peer, sizeof call->peer);
    const char *why = NULL;
    bds_status refuse = BDS_OK;
    if (!stream_take_metadata(call, info->captured, info->captured_len, &why))
        refuse = call->md ? BDS_INTERNAL : BDS_RESOURCE_EXHAUSTED;
    else
        refuse = stream_run_on_open(call, &why);
    if (refuse != BDS_OK) {
        if (refuse == BDS_E_AGAIN) refuse = BDS_UNAVAILABLE;
        stream_refused_count(sh, mi, refuse, call->start_ns);
        atomic_store_explicit(&call->ended, true, memory_order_relaxed);
        stream_refused_notify(call, refuse, why);
        bds_stream_unref(call); /* an on_open that took a reference keeps it */
        *call_ctx = (void *)why;
        return refuse;
    }
    bds_session_config cfg;
    bds_session_config_default(&cfg);
    cfg.options = &m->opts;
    cfg.handler = m->m.handler;
    cfg.handler_ctx = m->m.handler_ctx;
    cfg.ops = &srv_ops;
    cfg.ops_ctx = call;
    cfg.counters = &mc->core;
    bds__pipeline_set_current(bds__shard_pipeline_get(sh->pipe));
    if (bds_session_create(&call->session, bds__shard_pipeline_get(sh->pipe), &cfg, NULL) != BDS_OK) {
        stream_refused_count(sh, mi, BDS_RESOURCE_EXHAUSTED, call->start_ns);
        atomic_store_explicit(&call->ended, true, memory_order_relaxed);
        stream_refused_notify(call, BDS_RESOURCE_EXHAUSTED, NULL);
        bds_stream_unref(call);
        return BDS_RESOURCE_EXHAUSTED;
    }
    call->opened = true;
    ctr_add(&mc->streams_opened, 1);
    ctr_add(&shard_ctr(sh)->streams_live, 1);
    bds_session_open(call->session);
    if (info->deadline_ns) bds_session_set_deadline(call->session, info->deadline_ns);
    bds__dlist_insert_head(&sc->calls, &call->conn_link);
    sc->idle_since_ns = 0;
    *call_ctx = call;
    return BDS_OK;
}

static void h2_on_message(void *ctx, void *call_ctx, int32_t stream_id, const uint8_t *msg, size_t len,
                          uint32_t wire_bytes, bool compressed) {
    (void)stream_id;
    srv_call *call = call_ctx;
    if (call->finish_pending) return; /* the stream's session already ended */
    srv_conn *sc = ctx;
    call->msgs_in++;
    call->bytes_in += len;
    srv_method_counters *mc = call_mc(call);
    ctr_add(&mc->messages_in, 1);
    if (call->m->opts.metrics.payload_sizes) ctr_add(&mc->bytes_in, len);
    if (kind_one_request(call->m->m.kind) && call->msgs_in > 1) {
        bds_session_fail(call->session, BDS_INTERNAL, "more than one request message (the method takes exactly one)");
        return;
    }
    bds_status ist = stream_run_on_message_in(call, msg, (uint32_t)len);
    if (ist != BDS_OK) {
        bds_session_fail(call->session, ist, "request message refused");
        return;
    }
    srv_msg *m = bds__srv_msg_new(sc->sh, sc->acct, len, SRV_MSG_IN);
    if (!m) {
        bds_session_fail(call->session, BDS_RESOURCE_EXHAUSTED, "server out of memory");
        return;
    }
    m->wire = wire_bytes;
    m->compressed = compressed;
    if (len) memcpy(m->data, msg, len);
    const srv_method *sm = call->m;
    bool ok = true;
    if (sm->m.key) ok = sm->m.key(m->data, m->len, &m->key, &m->key_len, sm->m.key_ctx);
    if (!ok) {
        bds__srv_msg_unhold(m, SRV_MSG_IN);
        bds_session_fail(call->session, BDS_INTERNAL, "malformed request message");
        return;
    }
    bool may_wait = call->m->opts.inbound.backpressure.policy != BDS_BP_HARD_REJECT;
    bool blocked = conn_blocked(sc);
    if (call->parked || blocked || (may_wait && bds_session_inbound_room(call->session) == 0)) {
        m->next = NULL;
        if (call->parked_tail) call->parked_tail->next = m;
        else call->parked = m;
        call->parked_tail = m;
        call->parked_bytes += m->len;
        if (!blocked) call_cap_window(call, wire_bytes);
        return;
    }
    if (call->window_cap && (call->unparked_bytes += wire_bytes) >= 4u * (uint64_t)call->window_cap) {
        /* The session kept up for four capped windows: the cap doubles (what
         * was withheld for the cut goes back as much as it grows) until it
         * reaches the session's window. Doubling, not lifting: a client that floods again at the
         * whole window would park it all before the next cap. */
        call->unparked_bytes = 0;
        uint64_t grown = 2u * (uint64_t)call->window_cap;
        call->window_cap = grown > INT32_MAX ? 0 : (uint32_t)grown;
        if (bds__h2_stream_window_cap(sc->h2, call->stream, call->window_cap) < call->window_cap) call->window_cap = 0;
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
        bds__srv_call_free(call);
        return;
    }
    bds_session_cancel(call->session);
}

static void h2_on_call_error(void *ctx, void *call_ctx, int32_t stream_id, bds_status status, int http) {
    (void)ctx;
    (void)stream_id;
    (void)http;
    srv_call *call = call_ctx;
    if (!call) { /* refused at its headers (an unknown method, bad headers): never started */
        srv_shard *sh = ((srv_conn *)ctx)->sh;
        if (sh->srv->metrics_on) {
            ctr_add(&sh->srv->mh[bds__shard_id(sh->shard) * (BDS_SERVER_METHODS_MAX + 1) + SRV_OTHER_METHOD].started,
                    1);
            bds__srv_metrics_call_end(sh, SRV_OTHER_METHOD, (uint32_t)wire_status(status), 0, 0, 0);
        }
        return;
    }
    call->h2_done = true;
    if (call->finish_pending) {
        bds__srv_call_free(call);
        return;
    }
    bds_session_fail(call->session, status, "request rejected");
}

static bool h2_may_credit_partial(void *ctx, void *call_ctx) {
    (void)ctx;
    srv_call *call = call_ctx;
    bool may = call_may_credit_partial(call);
    if (!may) call->partial_withheld = true;
    return may;
}

/* A reply queued by reference left the HTTP/2 session (serialized or dropped). */
static void h2_on_msg_release(void *ctx, bds__h2_msg *hm) {
    (void)ctx;
    bds__srv_msg_unhold(BDS_CONTAINER_OF(hm, srv_msg, h2), SRV_MSG_H2);
}

const bds__h2_callbacks bds__srv_h2_cbs = {
    .on_call_start = h2_on_call_start,
    .on_message = h2_on_message,
    .on_half_close = h2_on_half_close,
    .on_reset = h2_on_reset,
    .on_call_error = h2_on_call_error,
    .on_msg_release = h2_on_msg_release,
    .may_credit_partial = h2_may_credit_partial,
};

