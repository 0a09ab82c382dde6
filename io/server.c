/* server.c — the gRPC server's lifecycle (bidistream/server.h): configuration,
 * methods and interceptors, running the shards, the graceful stop, the stats.
 *
 * The server is four files, one owner each: this one; server_conn.c (the
 * connections: accept, the HTTP/2 session fed from the socket, output
 * flushed once per tick, the connection timers); server_stream.c (each
 * HTTP/2 stream bound to a pipeline session, and the public stream API);
 * server_msg.c (message buffers and memory budgets). server_int.h holds what
 * they share.
 *
 * Per shard: one listener on the shared port (SO_REUSEPORT), its connections,
 * one HTTP/2 session each (proto/h2_server), and a pipeline (io/shard_pipeline). Flow
 * control is end to end (docs/ARCHITECTURE.md): a message's bytes are credited to its
 * stream's window only once the pipeline admitted it, so a fast client is
 * slowed at its socket, never rejected (server_stream.c).
 *
 * Shutdown: on stop every shard stops accepting, runs the stop hooks (health
 * turns NOT_SERVING), sends GOAWAY (notice, then final), and starts the
 * pipeline's graceful shutdown on each session; the grace period ends what is
 * left with UNAVAILABLE, one second later any connection still open is
 * closed, and four seconds after that handlers still running are abandoned (a
 * hard stop: no handler can hold the process). A second signal exits at once.
 *
 * Ownership: everything here belongs to its shard's thread, but the
 * counters (relaxed atomics, read by bds_server_get_stats from any thread)
 * and what bds_server_stop touches (atomics). */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "pipeline_int.h"
#include "server_int.h"
#include "services.h"
#include "google/protobuf/descriptor.pb-c.h"

_Thread_local srv_shard *bds__srv_self;

srv_shard *bds__server_shard_self(void) { return bds__srv_self; }

uint64_t bds__server_now(void) { return bds__clock_ns(); }

/* ---- configuration ---------------------------------------------------------------- */

void bds_server_config_default(bds_server_config *c) {
    memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->listen = "127.0.0.1:50051";
    c->max_message_bytes = 4u << 20;
    c->max_concurrent_streams = 1024;
    c->max_lingering_streams = 128;
    c->interop_responses_max = 1000;
    c->interop_response_bytes_max = 64u << 20;
    c->max_header_list_bytes = 16u << 10;
    c->stream_window_bytes = 64u << 10;
    c->stream_window_max_bytes = 4u << 20;
    c->options = bds_default_options();
    c->log_level = 2;
    c->handshake_timeout_ns = 10ull * 1000000000ull;
    c->idle_timeout_ns = 5ull * 60 * 1000000000ull;
    c->keepalive_time_ns = 2ull * 60 * 1000000000ull;
    c->keepalive_timeout_ns = 20ull * 1000000000ull;
    c->ping_min_interval_ns = 5ull * 60 * 1000000000ull;
    c->ping_without_streams = false;
    c->send_timeout_ns = 30ull * 1000000000ull;
    c->tcp_user_timeout_ms = 30000;
    /* A 2-core machine runs 2 shards: 2 GiB of buffers at most, under any
     * mix of clients, leaves a 24 GiB machine most of its memory; a
     * connection may take a quarter of its shard's. */
    c->conn_bytes_max = 256u << 20;
    c->shard_bytes_max = 1u << 30;
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

/* Both ends of every limit: a minimum keeps the server usable, a maximum keeps
 * the arithmetic on it in range. Returns NULL, or why, naming the field. */
static const char *server_limits_why(const bds_server_config *cfg) {
    /* 2^31 - 1: protobuf's message limit, and the 5-byte gRPC prefix added to
     * it stays far from wrapping a uint32_t. */
    if (cfg->max_message_bytes < 16 || cfg->max_message_bytes > INT32_MAX) {
        return "max_message_bytes: expected 16 to 2147483647";
    }
    /* Stream ids are 31 bits: no connection can have more streams than that. */
    if (cfg->max_concurrent_streams == 0 || cfg->max_concurrent_streams > INT32_MAX) {
        return "max_concurrent_streams: expected 1 to 2147483647";
    }
    /* RFC 9113 §6.9.2: a larger INITIAL_WINDOW_SIZE is a connection error. */
    if (cfg->stream_window_bytes < 1024 || cfg->stream_window_bytes > INT32_MAX) {
        return "stream_window_bytes: expected 1024 to 2147483647";
    }
    if (cfg->stream_window_max_bytes > INT32_MAX) return "stream_window_max_bytes: expected 0 to 2147483647";
    if (cfg->max_header_list_bytes < 1024) return "max_header_list_bytes: expected 1024 or more";
    if (cfg->shards > 64) return "shards: expected 0 (one per CPU) to 64";
    if (cfg->max_lingering_streams == 0) return "max_lingering_streams: expected 1 or more";
    /* Deadlines are sums of a clock reading and these: a year keeps them far
     * from wrapping, and no real timer wants more. */
    const uint64_t year_ns = 366ull * 24 * 3600 * 1000000000ull;
    if (cfg->handshake_timeout_ns > year_ns || cfg->idle_timeout_ns > year_ns || cfg->keepalive_time_ns > year_ns ||
        cfg->keepalive_timeout_ns > year_ns || cfg->ping_min_interval_ns > year_ns || cfg->send_timeout_ns > year_ns ||
        cfg->max_connection_age_ns > year_ns || cfg->max_connection_age_grace_ns > year_ns) {
        return "connection timers (handshake, idle, keepalive, ping, send, age, age grace): at most a year each";
    }
    if (cfg->tcp_user_timeout_ms > (uint32_t)INT32_MAX) return "tcp_user_timeout_ms: expected 0 to 2147483647";
    if ((unsigned)cfg->compress_responses > BDS_COMPRESSION_GZIP) {
        return "compress_responses: expected BDS_COMPRESSION_NONE, _DEFLATE or _GZIP";
    }
    return NULL;
}

/* Builds a TLS context from the config's files; swaps it in under the lock. */
static bds_status server_tls_load(bds_server *srv, const char **why) {
    static _Thread_local char reason[320];
    bds__tls_ctx *ctx;
    if (bds__tls_ctx_new(&ctx, srv->tls_paths[0], srv->tls_paths[1], srv->tls_paths[2], reason, sizeof reason) !=
        BDS_OK) {
        if (why) *why = reason;
        return BDS_E_INVALID;
    }
    pthread_mutex_lock(&srv->tls_lock);
    bds__tls_ctx *old = srv->tls;
    srv->tls = ctx;
    pthread_mutex_unlock(&srv->tls_lock);
    bds__tls_ctx_free(old); /* connections made from it hold their own reference */
    return BDS_OK;
}

static bds_status server_tls_setup(bds_server *srv, const char **why) {
    const bds_server_config *cfg = &srv->cfg;
    if (!cfg->tls_cert_file && !cfg->tls_key_file && !cfg->tls_client_ca_file) return BDS_OK;
    if (!cfg->tls_cert_file || !cfg->tls_key_file) {
        if (why) *why = "tls: a certificate file and its key file go together";
        return BDS_E_INVALID;
    }
    const char *paths[3] = {cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_client_ca_file};
    for (int i = 0; i < 3; i++) {
        if (paths[i] && !(srv->tls_paths[i] = strdup(paths[i]))) return BDS_E_NOMEM;
    }
    srv->cfg.tls_cert_file = srv->tls_paths[0];
    srv->cfg.tls_key_file = srv->tls_paths[1];
    srv->cfg.tls_client_ca_file = srv->tls_paths[2];
    return server_tls_load(srv, why);
}

bds_status bds_server_reload_tls(bds_server *srv, const char **why) {
    if (why) *why = NULL;
    if (!srv) bds__misuse("bds_server_reload_tls", "server is NULL");
    if (!srv->tls_paths[0]) {
        if (why) *why = "the server has no TLS";
        return BDS_FAILED_PRECONDITION;
    }
    return server_tls_load(srv, why);
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
    if (cfg->metrics_listen && !parse_listen(cfg->metrics_listen, host, sizeof host, &port)) {
        if (why) *why = "metrics_listen: expected HOST:PORT";
        return BDS_E_INVALID;
    }
    const char *bad = server_limits_why(cfg);
    if (bad) {
        if (why) *why = bad;
        return BDS_E_INVALID;
    }
    bds_server *srv = calloc(1, sizeof *srv);
    if (!srv) return BDS_E_NOMEM;
    srv->cfg = *cfg;
    srv->listen = strdup(cfg->listen);
    if (!srv->listen) {
        free(srv);
        return BDS_E_NOMEM;
    }
    srv->cfg.listen = srv->listen;
    srv->metrics_fd = -1;
    srv->log = (bds_logger){.level = cfg->log_level, .fn = cfg->log, .ctx = cfg->log_ctx};
    pthread_mutex_init(&srv->tls_lock, NULL);
    st = server_tls_setup(srv, why);
    if (st != BDS_OK) {
        bds_server_destroy(srv);
        return st;
    }
    uint32_t n = cfg->shards;
    if (n == 0) {
        cpu_set_t set;
        n = sched_getaffinity(0, sizeof set, &set) == 0 ? (uint32_t)CPU_COUNT(&set) : 1;
        if (n > 64) n = 64;
    }
    srv->n_shards = n;
    srv->mc = calloc((size_t)n * BDS_SERVER_METHODS_MAX, sizeof *srv->mc);
    srv->shc = calloc(n, sizeof *srv->shc);
    if (!srv->mc || !srv->shc) {
        bds_server_destroy(srv);
        return BDS_E_NOMEM;
    }
    if (cfg->metrics_listen) {
        srv->metrics_on = true;
        srv->metrics_listen = strdup(cfg->metrics_listen);
        srv->cfg.metrics_listen = srv->metrics_listen;
        if (!srv->metrics_listen || bds__srv_metrics_alloc(srv) != BDS_OK) {
            bds_server_destroy(srv);
            return BDS_E_NOMEM;
        }
    }
    atomic_init(&srv->serving, 1);
    srv->table.paths = srv->paths;
    st = bds__services_register(srv, &srv->cfg); /* the config stays as long as the server */
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
    for (uint32_t i = 0; i < srv->n_desc; i++) free(srv->desc[i].bytes);
    for (int i = 0; i < 3; i++) free(srv->tls_paths[i]);
    bds__tls_ctx_free(srv->tls);
    pthread_mutex_destroy(&srv->tls_lock);
    free(srv->listen);
    free(srv->mc);
    free(srv->shc);
    bds__srv_metrics_free(srv);
    free(srv->metrics_listen);
    if (srv->metrics_fd >= 0) close(srv->metrics_fd);
    free(srv);
}

/* A gRPC method path: "/" service "/" method, the service a dotted name
 * ("pkg.Service": identifiers joined by single dots), the method one
 * identifier. Returns NULL when it is one, else why not. */
static const char *method_path_why(const char *path) {
    if (!path) return "path is NULL";
    if (path[0] != '/') return "path must start with '/' (\"/package.Service/Method\")";
    const char *p = path + 1;
    for (int part = 0; part < 2; part++) {
        const char *start = p;
        char prev = '.';
        for (; *p && *p != '/'; prev = *p++) {
            bool ident = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_';
            if (*p == '.' && part == 0 && prev != '.') continue;
            if (!ident) return part == 0 ? "path: the service must be identifiers joined by single dots"
                                         : "path: the method must be one identifier";
        }
        if (p == start) return part == 0 ? "path: the service is empty" : "path: the method is empty";
        if (prev == '.') return "path: the service must not end with '.'";
        if (part == 0) {
            if (*p != '/') return "path must be \"/package.Service/Method\" (no method)";
            p++;
        }
    }
    if (*p) return "path has more than two parts (\"/package.Service/Method\")";
    return NULL;
}

bds_status bds_server_add_method(bds_server *srv, const bds_method *m, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!srv) bds__misuse("bds_server_add_method", "server is NULL");
    if (srv->running) {
        *why = "the server already runs: add methods before bds_server_run";
        return BDS_FAILED_PRECONDITION;
    }
    if (!m || m->size < sizeof *m) {
        *why = !m ? "method is NULL" : "method.size is less than sizeof(bds_method)";
        return BDS_E_INVALID;
    }
    if ((*why = method_path_why(m->path)) != NULL) return BDS_E_INVALID;
    if (!m->handler) {
        *why = "method.handler is NULL";
        return BDS_E_INVALID;
    }
    for (uint32_t i = 0; i < srv->n_methods; i++) {
        if (strcmp(srv->methods[i].path, m->path) == 0) {
            *why = "a method with this path is already added";
            return BDS_ALREADY_EXISTS;
        }
    }
    if (srv->n_methods == BDS_SERVER_METHODS_MAX) {
        *why = "too many methods (64 per server, the built-in ones included)";
        return BDS_RESOURCE_EXHAUSTED;
    }
    if (m->options && bds_options_validate(m->options, why) != BDS_OK) return BDS_E_INVALID;
    if ((unsigned)m->kind > BDS_METHOD_CLIENT_STREAMING) {
        *why = "method.kind is not a bds_method_kind";
        return BDS_E_INVALID;
    }
    if (m->n_interceptors > SRV_INTERCEPTORS_MAX || (m->n_interceptors && !m->interceptors)) {
        *why = m->n_interceptors > SRV_INTERCEPTORS_MAX ? "method.n_interceptors is over 8"
                                                         : "method.interceptors is NULL";
        return BDS_E_INVALID;
    }
    for (uint32_t i = 0; i < m->n_interceptors; i++) {
        if (!m->interceptors[i] || m->interceptors[i]->size < sizeof(bds_interceptor)) {
            *why = "method.interceptors: an entry is NULL or its size is less than sizeof(bds_interceptor)";
            return BDS_E_INVALID;
        }
    }
    srv_method *sm = &srv->methods[srv->n_methods];
    sm->m = *m;
    sm->n_icpt = m->n_interceptors;
    for (uint32_t i = 0; i < m->n_interceptors; i++) sm->icpt[i] = m->interceptors[i];
    sm->m.interceptors = NULL; /* the array is the caller's: sm->icpt is the copy */
    sm->path = strdup(m->path);
    sm->opts = m->options ? *m->options : srv->cfg.options;
    srv->paths[srv->n_methods] = sm->path;
    srv->n_methods++;
    srv->table.count = srv->n_methods;
    return BDS_OK;
}

uint32_t bds_server_method_count(const bds_server *srv) {
    if (!srv) bds__misuse("bds_server_method_count", "server is NULL");
    return srv->n_methods;
}

const char *bds_server_method_path(const bds_server *srv, uint32_t index) {
    if (!srv) bds__misuse("bds_server_method_path", "server is NULL");
    return index < srv->n_methods ? srv->methods[index].path : NULL;
}

bds_status bds_server_add_descriptors(bds_server *srv, const void *set, size_t len, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!srv) bds__misuse("bds_server_add_descriptors", "server is NULL");
    if (!set && len) bds__misuse("bds_server_add_descriptors", "set is NULL");
    if (srv->running) {
        *why = "the server already runs: add descriptors before bds_server_run";
        return BDS_FAILED_PRECONDITION;
    }
    if (srv->n_desc == SRV_DESCRIPTOR_SETS_MAX) {
        *why = "too many descriptor sets (16)";
        return BDS_RESOURCE_EXHAUSTED;
    }
    /* Checked once here, so that reflection can trust every file in it. */
    Google__Protobuf__FileDescriptorSet *fds = google__protobuf__file_descriptor_set__unpack(NULL, len, set);
    if (!fds || fds->n_file == 0) {
        if (fds) google__protobuf__file_descriptor_set__free_unpacked(fds, NULL);
        *why = "not a FileDescriptorSet with files (protoc --descriptor_set_out --include_imports)";
        return BDS_E_INVALID;
    }
    for (size_t i = 0; i < fds->n_file; i++) {
        if (!fds->file[i]->name || !fds->file[i]->name[0]) {
            google__protobuf__file_descriptor_set__free_unpacked(fds, NULL);
            *why = "a file of the set has no name";
            return BDS_E_INVALID;
        }
    }
    google__protobuf__file_descriptor_set__free_unpacked(fds, NULL);
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return BDS_E_NOMEM;
    if (len) memcpy(copy, set, len);
    srv->desc[srv->n_desc].bytes = copy;
    srv->desc[srv->n_desc].len = len;
    srv->n_desc++;
    return BDS_OK;
}

uint32_t bds_server_descriptor_count(const bds_server *srv) {
    if (!srv) bds__misuse("bds_server_descriptor_count", "server is NULL");
    return srv->n_desc;
}

const uint8_t *bds_server_descriptor_set(const bds_server *srv, uint32_t index, size_t *len) {
    if (!srv) bds__misuse("bds_server_descriptor_set", "server is NULL");
    if (index >= srv->n_desc) return NULL;
    if (len) *len = srv->desc[index].len;
    return srv->desc[index].bytes;
}

bds_status bds_server_add_interceptor(bds_server *srv, const bds_interceptor *icpt, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!srv) bds__misuse("bds_server_add_interceptor", "server is NULL");
    if (srv->running) {
        *why = "the server already runs: add interceptors before bds_server_run";
        return BDS_FAILED_PRECONDITION;
    }
    if (!icpt || icpt->size < sizeof *icpt) {
        *why = !icpt ? "interceptor is NULL" : "interceptor.size is less than sizeof(bds_interceptor)";
        return BDS_E_INVALID;
    }
    if (!icpt->on_open && !icpt->on_message_in && !icpt->on_message_out && !icpt->on_end) {
        *why = "interceptor has no hook";
        return BDS_E_INVALID;
    }
    if (srv->n_icpt == SRV_INTERCEPTORS_MAX) {
        *why = "too many server interceptors (8)";
        return BDS_RESOURCE_EXHAUSTED;
    }
    srv->icpt[srv->n_icpt++] = *icpt;
    return BDS_OK;
}

/* ---- shard hooks ------------------------------------------------------------------------------------ */

static bool hook_drain(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_drain(((srv_shard *)ctx)->pipe, RUN_BUDGET);
}

/* Admission rounds after the pipeline's run, per tick (hook_run). */
#define ADMIT_ROUNDS 4

static bool hook_run(bds_shard *s, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bool more = bds__shard_pipeline_run(sh->pipe, RUN_BUDGET);
    /* Streams whose sessions made room while it ran take their parked
     * messages in now, a batch each, and the pipeline runs them: a few rounds
     * a tick, so reading the sockets is not put off for long. */
    for (int round = 0; round < ADMIT_ROUNDS && bds__srv_shard_admit_ready(sh); round++)
        more = bds__shard_pipeline_run(sh->pipe, RUN_BUDGET);
    more |= !bds__dlist_empty(&sh->admit_ready);
    bds__srv_shard_flush_dirty(sh); /* this tick's replies, sent by this tick's flushers */
    bds_pipeline_stats ps;
    bds_pipeline_get_stats(bds__shard_pipeline_get(sh->pipe), &ps);
    atomic_store_explicit(&shard_ctr(sh)->msgs_posted, ps.msgs_posted, memory_order_relaxed);
    return more;
}

static bool hook_prepare_sleep(bds_shard *s, void *ctx) {
    (void)s;
    return bds__shard_pipeline_prepare_sleep(((srv_shard *)ctx)->pipe);
}

static void hook_woken(bds_shard *s, void *ctx) {
    (void)s;
    bds__shard_pipeline_woken(((srv_shard *)ctx)->pipe);
}

/* Any thread, for a stall report: relaxed reads of plain counters. */
static void hook_dump(bds_shard *s, FILE *f, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    bds__shard_pipeline_dump(sh->pipe, f);
    const bds_net_stats *ns = bds__net_stats(sh->net);
    fprintf(f, "  net: %u listeners + connections live, %llu accepted, %llu closed, stopping %d\n",
            bds__net_live(sh->net), (unsigned long long)ns->accepted, (unsigned long long)ns->closed,
            (int)sh->stopping);
}

static void hook_on_signal(bds_shard *s, int signo, void *ctx) {
    (void)s;
    srv_shard *sh = ctx;
    if (signo == SIGHUP) {
        const char *why = NULL;
        bds_status st = bds_server_reload_tls(sh->srv, &why);
        if (st == BDS_OK) bds__log(&sh->srv->log, BDS_LOG_INFO, "SIGHUP: TLS certificate reloaded", NULL);
        else bds__log(&sh->srv->log, BDS_LOG_WARN, "SIGHUP: TLS certificate not reloaded", "why=\"%s\"", why);
        return;
    }
    if (atomic_load(&sh->srv->stop_requested)) {
        /* Asked twice: whoever sends it wants the process gone, not drained. */
        bds__log(&sh->srv->log, BDS_LOG_WARN, "second signal while stopping: exiting now", "signal=%d", signo);
        _exit(128 + signo);
    }
    bds__log(&sh->srv->log, BDS_LOG_INFO, "shutting down gracefully", "signal=%d", signo);
    bds_server_stop(sh->srv);
}

/* Nothing of this shard's own is left: no connection, and no session, call
 * or key (or they were abandoned). */
static bool shard_idle(srv_shard *sh) {
    return bds__dlist_empty(&sh->conns) && (sh->abandoned || bds__shard_pipeline_idle(sh->pipe));
}

static void shard_abandon(srv_shard *sh) {
    bds_pipeline_stats st;
    bds_pipeline_get_stats(bds__shard_pipeline_get(sh->pipe), &st);
    if (bds__log_on(&sh->srv->log, BDS_LOG_WARN)) {
        bds__log(&sh->srv->log, BDS_LOG_WARN, "hard stop: abandoning sessions whose handlers did not finish",
                 "shard=%u sessions=%lu", bds__shard_id(sh->shard), (unsigned long)st.sessions_live);
        /* What was left, so that a handler (or our own bug) that held the
         * stop can be found from this report alone. */
        char *dump = NULL;
        size_t dump_len = 0;
        FILE *f = sh->srv->log.fn ? open_memstream(&dump, &dump_len) : NULL;
        bds__shard_dump(sh->shard, f ? f : stderr);
        if (f) {
            fclose(f);
            for (char *line = strtok(dump, "\n"); line; line = strtok(NULL, "\n"))
                bds__log(&sh->srv->log, BDS_LOG_WARN, line, "shard=%u", bds__shard_id(sh->shard));
            free(dump);
        }
    }
    sh->abandoned = true;
    atomic_store(&sh->srv->abandoned, true);
}

/* Grace + 1 s: connections still open are closed (their calls cancelled,
 * which ends every built-in handler). Grace + 5 s: handlers that still run
 * are abandoned (a hard stop), so no handler can hold the process. A shard
 * with nothing of its own left then abandons nothing: it only waits for the
 * others, whose own timers judge their work (and it abandons at once what
 * they send it after this; hook_quiescent). */
static void stop_timer_fired(bds_timer *t, void *ctx) {
    srv_shard *sh = ctx;
    if (sh->conns_closed) {
        sh->stop_expired = true;
        if (!shard_idle(sh)) shard_abandon(sh);
        return;
    }
    sh->conns_closed = true;
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sh->conns) {
        srv_conn *sc = BDS_DLIST_ENTRY(it, srv_conn, shard_link);
        if (sc->c && !sc->closing) {
            sc->closing = true;
            bds__conn_close(sc->c, 0);
        }
    }
    bds__timer_arm(bds__shard_timers(sh->shard), t, bds__shard_now(sh->shard) + STOP_ABANDON_AFTER_NS);
}

static void hook_on_stop(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    sh->stopping = true;
    atomic_store(&sh->srv->serving, 0);
    bds__pipeline_set_current(bds__shard_pipeline_get(sh->pipe));
    if (sh->listener) {
        bds__listener_close(sh->listener);
        sh->listener = NULL;
    }
    if (bds__shard_id(s) == 0 && sh->srv->mhttp) bds__srv_metrics_stop(sh); /* scrapes end with the serving */
    bds__srv_stop_hooks_run(sh->srv);
    bds__dlist *it, *nx, *cit, *cnx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &sh->conns) {
        srv_conn *sc = BDS_DLIST_ENTRY(it, srv_conn, shard_link);
        if (sc->closing) continue;
        bds__h2_shutdown_notice(sc->h2);
        bds__h2_goaway(sc->h2, BDS_H2_NO_ERROR);
        BDS_DLIST_FOREACH_SAFE(cit, cnx, &sc->calls) {
            srv_call *call = BDS_DLIST_ENTRY(cit, srv_call, conn_link);
            /* A finished call waiting to send its trailers has no session left. */
            if (call->session) bds_session_shutdown(call->session);
        }
        bds__srv_conn_kick(sc);
    }
    /* What the grace period did not end is closed one second after it, and
     * abandoned four seconds later (stop_timer_fired). */
    uint64_t grace = sh->srv->cfg.options.shutdown.grace_period_ns;
    for (uint32_t i = 0; i < sh->srv->n_methods; i++) {
        if (sh->srv->methods[i].opts.shutdown.grace_period_ns > grace)
            grace = sh->srv->methods[i].opts.shutdown.grace_period_ns;
    }
    bds__timer_init(&sh->stop_timer, stop_timer_fired, sh);
    bds__timer_arm(bds__shard_timers(s), &sh->stop_timer, bds__shard_now(s) + grace + STOP_CLOSE_AFTER_NS);
}

static bool hook_quiescent(bds_shard *s, void *ctx) {
    srv_shard *sh = ctx;
    if (sh->stop_expired && !sh->abandoned && !shard_idle(sh)) shard_abandon(sh);
    bool idle = shard_idle(sh);
    if (idle && !sh->quiesced) {
        sh->quiesced = true;
        if (atomic_fetch_sub(&sh->srv->shards_busy, 1) == 1) {
            /* The last one: the others wait for this (they may sleep). */
            for (uint32_t i = 0; i < sh->srv->n_shards; i++)
                if (i != bds__shard_id(s)) bds__shard_wake(sh->srv->shards[i]->shard);
        }
    }
    /* A shard ends only once every shard has been idle: until then another
     * shard's sessions may still send it work (EXEC, GRANT, CANCEL, DROP) that
     * nothing would run once it ended, and their calls would never come home
     * (a hard stop, 1-2 in 40 TSan runs under load). Once every shard has
     * been idle since its stop began, no session is left anywhere (no
     * listener, no connection makes new ones), so nothing can send work any
     * more. Shard 0 also reads SIGTERM/SIGINT: it hears a second one until the
     * end. */
    if (!idle || atomic_load(&sh->srv->shards_busy) > 0) return false;
    bds__timer_cancel(bds__shard_timers(s), &sh->stop_timer);
    return true;
}

/* ---- running ----------------------------------------------------------------------------------------- */

/* The address of a "host:port" (listen, or with port_override its host). */
static int resolve_listen(const char *listen, uint16_t port_override, struct sockaddr_storage *ss, socklen_t *len,
                          char *err, size_t errlen) {
    char host[256];
    uint16_t port;
    parse_listen(listen, host, sizeof host, &port);
    if (port_override) port = port_override;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int rc = getaddrinfo(host[0] ? host : NULL, ps, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int server_resolve(bds_server *srv, struct sockaddr_storage *ss, socklen_t *len, char *err, size_t errlen) {
    return resolve_listen(srv->listen, srv->port, ss, len, err, errlen);
}

/* The metrics endpoint's socket, listening before any shard starts (so a
 * bad address fails the run before anything is served), without
 * SO_REUSEPORT: nobody else's listener may share it. Shard 0 takes it. */
static int server_metrics_bind(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve_listen(srv->metrics_listen, 0, &ss, &len, err, errlen) != 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "metrics listen %s: %s", srv->metrics_listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    srv->metrics_fd = fd;
    atomic_store(&srv->metrics_port, bds__socket_port(fd));
    return 0;
}

/* Picks the port every shard will share before any shard starts: with port 0
 * one bound (not listening) SO_REUSEPORT socket reserves it, so the shards'
 * listeners all land on the same port. Returns that socket (or -1 on error);
 * the caller closes it once the shards listen. */
/* Without reuse_port, binds the address once without SO_REUSEPORT: that
 * fails while anything listens there (our shards' listeners would join a
 * SO_REUSEPORT group of another process of the same user, which then gets
 * part of our connections). On success ss gets the port the kernel picked
 * for port 0, so the shards bind a port nobody else uses. */
static int server_probe_port(bds_server *srv, struct sockaddr_storage *ss, socklen_t len, char *err, size_t errlen) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)ss, len) != 0) {
        if (errno == EADDRINUSE)
            snprintf(err, errlen, "listen %s: address already in use (another server listens there; "
                     "bds_server_config.reuse_port, --reuse-port, shares the port)", srv->listen);
        else
            snprintf(err, errlen, "listen %s: %s", srv->listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    uint16_t port = bds__socket_port(fd);
    close(fd);
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    return 0;
}

static int server_reserve_port(bds_server *srv, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (server_resolve(srv, &ss, &len, err, errlen) != 0) return -1;
    if (!srv->cfg.reuse_port && server_probe_port(srv, &ss, len, err, errlen) != 0) return -1;
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
    bds__dlist_init(&sh->conns);
    bds__dlist_init(&sh->dirty);
    bds__dlist_init(&sh->admit_ready);
    bds_hash_seed seed;
    bds__hash_seed_random(&seed); /* the connection age's jitter differs between servers */
    sh->jitter_rng = seed.k0 ^ seed.k1;
    srv->shards[id] = sh;
    bds__srv_msg_pools_init(sh);
    bds__grpc_codec_init(&sh->codec, NULL);
    sh->flusher.fn = bds__srv_shard_flusher;
    bds__srv_self = sh;
    bds_status st = bds__shard_pipeline_attach(srv->pipes, s, &sh->pipe);
    if (st != BDS_OK) return st;
    bds_net_config nc;
    bds__net_config_default(&nc);
    /* each shard enforces its share: SO_REUSEPORT spreads connections evenly */
    uint32_t cmax = srv->cfg.max_connections;
    nc.conns_max = cmax ? cmax / srv->n_shards + (cmax % srv->n_shards != 0) : 0;
    nc.log = &srv->log;
    sh->net = bds__net_create(s, &nc);
    if (!sh->net) return BDS_E_NOMEM;
    /* The port was reserved before any shard started (server_reserve_port). */
    int fd = server_listen_fd(srv, sc->err, sizeof sc->err);
    if (fd < 0) return BDS_UNAVAILABLE;
    st = bds__listener_start(sh->net, fd, bds__srv_on_accept, sh, &sh->listener);
    if (st != BDS_OK) return st;
    bds_shard_hooks hooks = {
        .drain_inbox = hook_drain, .run_work = hook_run, .prepare_sleep = hook_prepare_sleep, .woken = hook_woken,
        .on_signal = hook_on_signal, .on_stop = hook_on_stop, .quiescent = hook_quiescent, .dump = hook_dump,
        .ctx = sh,
    };
    bds__shard_set_hooks(s, &hooks);
    /* After the hooks: a failed start stops the shard, and on_stop closes it. */
    if (id == 0 && srv->metrics_fd >= 0) return bds__srv_metrics_start(sh);
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
    if (sh->abandoned) { /* timers of what was abandoned never fire */
        bds_timer_heap *h = bds__shard_timers(s);
        while (bds__timer_count(h)) bds__timer_cancel(h, h->_v[0]);
    }
    if (sh->net) bds__net_destroy(sh->net);
    sh->net = NULL;
    bds__srv_self = NULL;
    /* The shard pipeline outlives the shard until every shard has stopped (shard_pipeline.h). */
}

/* What hard stops abandoned: handlers may still hold its calls, so it is
 * never freed, and kept reachable on purpose (no leak report either). */
struct srv_abandoned {
    struct srv_abandoned *next;
    bds_shard_pipelines *pipes;
    srv_shard *shards[BDS_SHARDS_MAX];
};
static _Atomic(struct srv_abandoned *) srv_graveyard;

static void server_abandon_shards(bds_server *srv) {
    struct srv_abandoned *a = calloc(1, sizeof *a);
    if (a) {
        a->pipes = srv->pipes;
        memcpy(a->shards, srv->shards, sizeof a->shards);
        a->next = atomic_load(&srv_graveyard);
        while (!atomic_compare_exchange_weak(&srv_graveyard, &a->next, a)) {
        }
    }
    memset(srv->shards, 0, sizeof srv->shards);
    srv->pipes = NULL;
}

static void server_free_shards(bds_server *srv) {
    for (uint32_t i = 0; i < BDS_SHARDS_MAX; i++) {
        srv_shard *sh = srv->shards[i];
        if (!sh) continue;
        if (sh->pipe) bds__shard_pipeline_detach(sh->pipe);
        /* Every shard has stopped (joined): no message is held any more. */
        bds__srv_msg_pools_deinit(sh);
        bds__grpc_codec_deinit(&sh->codec); /* its sessions are gone with the connections */
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
    gc.sighup = srv->tls_paths[0] != NULL; /* SIGHUP reloads the certificate */
    gc.shard.idle_spin_us = srv->cfg.idle_spin_us;
    uint32_t n = srv->n_shards; /* fixed at create: the counters are sized by it */
    gc.shards = n;
    atomic_store(&srv->shards_busy, n);
    /* Every connection costs a descriptor: take all the hard limit allows. */
    uint64_t fds = bds__fd_limit_raise();
    if (fds && srv->cfg.max_connections && fds < (uint64_t)srv->cfg.max_connections + 64)
        bds__log(&srv->log, BDS_LOG_WARN, "fewer file descriptors than connections: past the descriptors, new "
                 "connections are closed at once", "fd_limit=%llu max_connections=%u", (unsigned long long)fds,
                 srv->cfg.max_connections);
    srv->pipes = bds__shard_pipelines_create(n, NULL);
    if (!srv->pipes) return BDS_E_NOMEM;
    struct start_ctx sc = {.srv = srv};
    int reserve = server_reserve_port(srv, sc.err, sizeof sc.err);
    if (reserve >= 0 && srv->metrics_listen && server_metrics_bind(srv, sc.err, sizeof sc.err) != 0) {
        close(reserve);
        reserve = -1;
    }
    if (reserve < 0) {
        char q[300];
        bds__log(&srv->log, BDS_LOG_ERROR, "cannot start", "reason=%s", bds__log_quote(q, sizeof q, sc.err));
        bds__shard_pipelines_destroy(srv->pipes);
        srv->pipes = NULL;
        return BDS_UNAVAILABLE;
    }
    srv->run_ns = bds__clock_ns();
    bds_status st = bds__group_start(&srv->group, &gc, on_shard_start, on_shard_exit, &sc, sc.err, sizeof sc.err);
    close(reserve);
    if (srv->metrics_fd >= 0) { /* shard 0 never took it: it did not start */
        close(srv->metrics_fd);
        srv->metrics_fd = -1;
    }
    if (st != BDS_OK) {
        char q[300];
        bds__log(&srv->log, BDS_LOG_ERROR, "cannot start", "reason=%s",
                 bds__log_quote(q, sizeof q, sc.err[0] ? sc.err : bds_status_str(st)));
        server_free_shards(srv);
        bds__shard_pipelines_destroy(srv->pipes);
        srv->pipes = NULL;
        return st;
    }
    if (bds__log_on(&srv->log, BDS_LOG_INFO)) {
        char host[256];
        uint16_t port;
        parse_listen(srv->listen, host, sizeof host, &port);
        /* The words "listening on HOST:PORT with N shards" are what scripts wait for. */
        char text[320], metrics[300] = "";
        snprintf(text, sizeof text, "listening on %s:%u with %u shard%s", host, srv->port, n, n == 1 ? "" : "s");
        if (srv->metrics_listen) {
            char mhost[256];
            uint16_t mport;
            parse_listen(srv->metrics_listen, mhost, sizeof mhost, &mport);
            snprintf(metrics, sizeof metrics, " metrics=%s:%u", mhost, atomic_load(&srv->metrics_port));
        }
        bds__log(&srv->log, BDS_LOG_INFO, text, "addr=%s:%u shards=%u%s", host, srv->port, n, metrics);
    }
    char ng[320]; /* which libnghttp2 and flood protections: a warning when one is missing or it is older */
    bool ng_warn = bds__h2_nghttp2_report(ng, sizeof ng);
    bds__log(&srv->log, ng_warn ? BDS_LOG_WARN : BDS_LOG_DEBUG, ng, NULL);
    atomic_store(&srv->live_group, srv->group);
    if (atomic_load(&srv->stop_requested)) bds__group_stop(srv->group); /* stopped before it ran */
    if (srv->cfg.on_ready) srv->cfg.on_ready(srv, srv->port, srv->cfg.on_ready_ctx);
    bds__group_run(srv->group);
    bds__group_destroy(srv->group);
    srv->group = NULL;
    if (atomic_load(&srv->abandoned)) {
        server_abandon_shards(srv);
        return BDS_DEADLINE_EXCEEDED;
    }
    server_free_shards(srv);
    bds__shard_pipelines_destroy(srv->pipes);
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

uint16_t bds_server_metrics_port(const bds_server *srv) { return atomic_load(&((bds_server *)srv)->metrics_port); }

static uint64_t ctr_get(const _Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }

bds_status bds_server_get_stats(const bds_server *srv, bds_server_stats *out) {
    if (!srv || !out) bds__misuse("bds_server_get_stats", "server or out is NULL");
    memset(out, 0, sizeof *out);
    out->n_methods = srv->n_methods;
    out->n_shards = srv->n_shards;
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        bds_method_stats *o = &out->methods[mi];
        o->path = srv->methods[mi].path;
        o->kind = srv->methods[mi].m.kind;
        for (uint32_t sh = 0; sh < srv->n_shards; sh++) {
            const srv_method_counters *c = &srv->mc[sh * BDS_SERVER_METHODS_MAX + mi];
            o->streams_opened += ctr_get(&c->streams_opened);
            o->streams_refused += ctr_get(&c->streams_refused);
            o->streams_ended += ctr_get(&c->streams_ended);
            o->streams_ok += ctr_get(&c->streams_ok);
            o->messages_in += ctr_get(&c->messages_in);
            o->messages_out += ctr_get(&c->messages_out);
            o->bytes_in += ctr_get(&c->bytes_in);
            o->bytes_out += ctr_get(&c->bytes_out);
            o->admitted += ctr_get(&c->core.admitted);
            o->rejected += ctr_get(&c->core.rejected);
            o->completed += ctr_get(&c->core.completed);
            o->failed += ctr_get(&c->core.failed);
            o->retried += ctr_get(&c->core.retried);
            o->panics += ctr_get(&c->core.panics);
            o->pressure_signals += ctr_get(&c->core.pressure_signals);
            o->replies_rejected += ctr_get(&c->core.replies_rejected);
            o->calls_live += ctr_get(&c->core.calls_live);
        }
        /* Read apart, the two may cross: a gauge never goes below zero. */
        o->streams_live = o->streams_opened > o->streams_ended ? o->streams_opened - o->streams_ended : 0;
    }
    for (uint32_t sh = 0; sh < srv->n_shards; sh++) {
        const srv_shard_counters *c = &srv->shc[sh];
        bds_server_shard_stats *o = &out->shards[sh];
        o->connections_live = ctr_get(&c->connections_live);
        o->connections_accepted = ctr_get(&c->connections_accepted);
        o->streams_live = ctr_get(&c->streams_live);
        o->message_bytes = ctr_get(&c->message_bytes);
        o->msgs_posted = ctr_get(&c->msgs_posted);
    }
    return BDS_OK;
}

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

