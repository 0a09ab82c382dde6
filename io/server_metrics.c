/* server_metrics.c — the server's metrics: what each shard records on its own
 * (A66's per-call histograms, per-message latency, its connections' HTTP/2
 * counters), and the /metrics page the scrape makes from every shard's
 * (io/metrics_http.c serves it on shard 0; docs/OPERATIONS.md lists each
 * metric).
 *
 * Nothing here is shared between shards on the message path: each shard
 * writes only its own counters and histograms (ctr_add: a relaxed load and
 * store, one writer), and the scrape, on shard 0, reads every shard's with
 * relaxed loads and adds them. A page is a recent picture: each value exact
 * at some recent moment, values not consistent with each other (a stream may
 * be counted started and not yet in any duration bucket). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_http.h"
#include "prom_text.h"
#include "server_int.h"

/* Per shard, what the scrape last said of its loop: busy and wait time never
 * go down between pages, whatever order a sleep's end and our reads take. */
struct srv_scrape {
    uint64_t *busy_ns, *wait_ns;
};

static const char *const grpc_code_names[SRV_GRPC_CODES] = {
    "OK",        "CANCELLED",      "UNKNOWN",   "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
};

static const char *const h2_code_names[BDS_H2_GOAWAY_CODES] = {
    "NO_ERROR",       "PROTOCOL_ERROR",    "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",  "FRAME_SIZE_ERROR",  "REFUSED_STREAM", "CANCEL",             "COMPRESSION_ERROR",
    "CONNECT_ERROR",  "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED", "OTHER",
};

static const char *const verdict_names[SRV_VERDICTS] = {
    "glitch_flood", "too_many_pings", "hpack_bomb", "nghttp2_flood", "protocol_error",
};

static const char *policy_name(bds_backpressure_policy p) {
    switch (p) {
    case BDS_BP_HARD_REJECT: return "hard_reject";
    case BDS_BP_QUEUE: return "queue";
    case BDS_BP_SOFT_ALLOW: return "soft_allow";
    case BDS_BP_SOFT_ALLOW_SIGNAL: return "soft_allow_signal";
    }
    return "unknown";
}

/* ---- recording (each shard, its own) ------------------------------------------------------------ */

static srv_method_hist *shard_mh(const srv_shard *sh, uint32_t method) {
    return &sh->srv->mh[bds__shard_id(sh->shard) * (BDS_SERVER_METHODS_MAX + 1) + method];
}

static void lat_record(srv_hist_lat *h, uint64_t ns) {
    ctr_add(&h->b[bds__prom_bucket(&bds__prom_latency_bounds, ns)], 1);
    ctr_add(&h->sum, ns);
}

static void size_record(srv_hist_size *h, uint64_t bytes) {
    ctr_add(&h->b[bds__prom_bucket(&bds__prom_size_bounds, bytes)], 1);
    ctr_add(&h->sum, bytes);
}

void bds__srv_metrics_call_end(srv_shard *sh, uint32_t method, uint32_t code, uint64_t duration_ns, uint64_t bytes_in,
                               uint64_t bytes_out) {
    if (code >= SRV_GRPC_CODES) code = 2; /* UNKNOWN: never sent, but a label must be a code */
    srv_method_hist *mh = shard_mh(sh, method);
    srv_call_hist *ch = atomic_load_explicit(&mh->by_status[code], memory_order_relaxed); /* ours: we made it */
    if (!ch) {
        ch = calloc(1, sizeof *ch);
        if (!ch) return; /* out of memory: this call goes uncounted, the server goes on */
        /* release: the scrape (acquire) sees the zeroed histogram, not garbage */
        atomic_store_explicit(&mh->by_status[code], ch, memory_order_release);
    }
    lat_record(&ch->duration, duration_ns);
    size_record(&ch->rcvd, bytes_in);
    size_record(&ch->sent, bytes_out);
}

void bds__srv_metrics_msg_done(srv_shard *sh, uint32_t method, uint64_t admit_ns) {
    uint64_t now = bds__clock_ns();
    lat_record(&shard_mh(sh, method)->msg_latency, now > admit_ns ? now - admit_ns : 0);
}

void bds__srv_conn_stats_fold(srv_conn *sc) {
    const bds__h2_stats *now = bds__h2_get_stats(sc->h2);
    bds__h2_stats *was = &sc->h2_folded;
    srv_h2_totals *t = &shard_ctr(sc->sh)->h2;
#define FOLD(f, dst)                                                                                                   \
    do {                                                                                                               \
        if (now->f != was->f) {                                                                                        \
            ctr_add(&t->dst, now->f - was->f);                                                                         \
            was->f = now->f;                                                                                           \
        }                                                                                                              \
    } while (0)
    FOLD(calls_started, streams_started);
    FOLD(calls_refused, streams_refused);
    FOLD(calls_failed, streams_failed);
    FOLD(calls_reset, streams_reset);
    FOLD(glitches, glitches);
    FOLD(resets_sent, resets_sent);
    FOLD(pings_sent, pings_sent);
    FOLD(ping_acks, ping_acks);
    FOLD(windows_capped, windows_capped);
    for (uint32_t i = 0; i < BDS_H2_GOAWAY_CODES; i++) FOLD(goaways_sent[i], goaways[i]);
#undef FOLD
    if (sc->verdict_told) return;
    /* One verdict per connection, the first cause seen: a too_many_pings
     * GOAWAY is also "calmed", a bomb too. */
    int kind = now->too_many_pings         ? SRV_VERDICT_TOO_MANY_PINGS
               : now->hpack_bombs          ? SRV_VERDICT_HPACK_BOMB
               : now->calmed               ? SRV_VERDICT_GLITCH_FLOOD
               : now->flooded              ? SRV_VERDICT_NGHTTP2_FLOOD
               : now->nghttp2_fatal != 0   ? SRV_VERDICT_PROTOCOL_ERROR
                                           : -1;
    if (kind < 0) return;
    ctr_add(&t->verdicts[kind], 1);
    sc->verdict_told = true;
}

/* ---- the page (shard 0, at each scrape) ---------------------------------------------------------- */

static uint64_t ld(const _Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }
static uint64_t ld_plain(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }

/* A label value for a method: its path without the leading '/' (A66). */
static const char *method_label(const bds_server *srv, uint32_t mi) {
    return mi == SRV_OTHER_METHOD ? "other" : srv->methods[mi].path + 1;
}

/* The methods a page lists: every registered one, then "other". */
#define FOREACH_METHOD(srv, mi)                                                                                        \
    for (uint32_t k_ = 0, mi = (srv)->n_methods ? 0 : SRV_OTHER_METHOD; k_ <= (srv)->n_methods; mi = ++k_ < (srv)->n_methods ? k_ : SRV_OTHER_METHOD)

static uint64_t method_sum(const bds_server *srv, uint32_t mi, size_t off) {
    uint64_t v = 0;
    for (uint32_t sh = 0; sh < srv->n_shards; sh++)
        v += ld((const _Atomic uint64_t *)((const char *)&srv->mc[sh * BDS_SERVER_METHODS_MAX + mi] + off));
    return v;
}
#define MSUM(srv, mi, field) method_sum(srv, mi, offsetof(srv_method_counters, field))

static void lat_sum(const srv_hist_lat *h, uint64_t *counts, uint64_t *sum) {
    for (uint32_t b = 0; b < SRV_LAT_BUCKETS; b++) counts[b] += ld(&h->b[b]);
    *sum += ld(&h->sum);
}

static void size_sum(const srv_hist_size *h, uint64_t *counts, uint64_t *sum) {
    for (uint32_t b = 0; b < SRV_SIZE_BUCKETS; b++) counts[b] += ld(&h->b[b]);
    *sum += ld(&h->sum);
}

static const srv_method_hist *mh_at(const bds_server *srv, uint32_t shard, uint32_t mi) {
    return &srv->mh[shard * (BDS_SERVER_METHODS_MAX + 1) + mi];
}

/* Which of A66's three histograms of a call (srv_call_hist). */
enum { CALL_DURATION, CALL_RCVD, CALL_SENT };

static void render_call_hist(bds__prom *p, const bds_server *srv, int which, const char *name, const char *help) {
    bds__prom_family(p, name, "histogram", help);
    FOREACH_METHOD(srv, mi) {
        for (uint32_t code = 0; code < SRV_GRPC_CODES; code++) {
            uint64_t counts[SRV_LAT_BUCKETS] = {0}, sum = 0;
            bool seen = false;
            for (uint32_t sh = 0; sh < srv->n_shards; sh++) {
                const srv_call_hist *ch =
                    atomic_load_explicit(&mh_at(srv, sh, mi)->by_status[code], memory_order_acquire);
                if (!ch) continue;
                seen = true;
                if (which == CALL_DURATION) lat_sum(&ch->duration, counts, &sum);
                else size_sum(which == CALL_RCVD ? &ch->rcvd : &ch->sent, counts, &sum);
            }
            if (!seen) continue;
            bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}, {"grpc_status", grpc_code_names[code]}};
            bds__prom_histogram(p, name, l, 2, which == CALL_DURATION ? &bds__prom_latency_bounds : &bds__prom_size_bounds,
                                counts, sum);
        }
    }
}

/* One counter or gauge family with one sample per registered method. */
static void render_per_method(bds__prom *p, const bds_server *srv, const char *name, const char *type,
                              const char *help, size_t off) {
    bds__prom_family(p, name, type, help);
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}};
        bds__prom_u64(p, name, l, 1, method_sum(srv, mi, off));
    }
}

static void render_methods(bds__prom *p, const bds_server *srv) {
    bds__prom_family(p, "grpc_server_call_started_total", "counter",
                     "Calls started (request headers received), by method; gRFC A66 grpc.server.call.started.");
    FOREACH_METHOD(srv, mi) {
        uint64_t v = 0;
        if (mi == SRV_OTHER_METHOD)
            for (uint32_t sh = 0; sh < srv->n_shards; sh++) v += ld(&mh_at(srv, sh, mi)->started);
        else
            v = MSUM(srv, mi, streams_opened) + MSUM(srv, mi, streams_refused);
        bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}};
        bds__prom_u64(p, "grpc_server_call_started_total", l, 1, v);
    }
    render_call_hist(p, srv, CALL_DURATION, "grpc_server_call_duration_seconds",
                     "Call duration from its request headers to its end, by method and status sent; gRFC A66 "
                     "grpc.server.call.duration.");
    render_call_hist(p, srv, CALL_RCVD, "grpc_server_call_rcvd_total_compressed_message_size_bytes",
                     "Request message bytes per call (payloads, without gRPC framing), by method and status; gRFC A66 "
                     "grpc.server.call.rcvd_total_compressed_message_size.");
    render_call_hist(p, srv, CALL_SENT, "grpc_server_call_sent_total_compressed_message_size_bytes",
                     "Response message bytes per call (payloads, without gRPC framing), by method and status; gRFC A66 "
                     "grpc.server.call.sent_total_compressed_message_size.");

    bds__prom_family(p, "bidistream_streams_open", "gauge", "Streams open now (passed their open, not yet ended).");
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        uint64_t o = MSUM(srv, mi, streams_opened), e = MSUM(srv, mi, streams_ended);
        bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}};
        bds__prom_u64(p, "bidistream_streams_open", l, 1, o > e ? o - e : 0);
    }
    render_per_method(p, srv, "bidistream_streams_refused_total", "counter",
                      "Streams refused at their open (an interceptor, a stream or memory limit, the stop).",
                      offsetof(srv_method_counters, streams_refused));
    render_per_method(p, srv, "bidistream_messages_received_total", "counter", "Request messages received.",
                      offsetof(srv_method_counters, messages_in));
    render_per_method(p, srv, "bidistream_messages_sent_total", "counter",
                      "Replies and pushes handed to HTTP/2.", offsetof(srv_method_counters, messages_out));
    render_per_method(p, srv, "bidistream_messages_admitted_total", "counter",
                      "Request messages the pipeline admitted (options.metrics.enabled).",
                      offsetof(srv_method_counters, core.admitted));

    bds__prom_family(p, "bidistream_messages_rejected_total", "counter",
                     "Messages refused by backpressure or ordering capacity: direction in (requests, by the method's "
                     "inbound policy) or out (replies, by its outbound policy).");
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        const bds_options *o = &srv->methods[mi].opts;
        bds__prom_label in[] = {{"grpc_method", method_label(srv, mi)}, {"direction", "in"},
                                {"policy", policy_name(o->inbound.backpressure.policy)}};
        bds__prom_u64(p, "bidistream_messages_rejected_total", in, 3, MSUM(srv, mi, core.rejected));
        bds__prom_label out[] = {{"grpc_method", method_label(srv, mi)}, {"direction", "out"},
                                 {"policy", policy_name(o->outbound.backpressure.policy)}};
        bds__prom_u64(p, "bidistream_messages_rejected_total", out, 3, MSUM(srv, mi, core.replies_rejected));
    }
    render_per_method(p, srv, "bidistream_pressure_signals_total", "counter",
                      "Work let through over capacity by a soft_allow_signal policy (messages and replies).",
                      offsetof(srv_method_counters, core.pressure_signals));

    bds__prom_family(p, "bidistream_handler_calls_total", "counter",
                     "Handler calls finished, by outcome: completed, failed (retries spent), panicked "
                     "(bds_call_panic), aborted (dropped before it ran: the stream was cancelled or drained).");
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        static const struct { const char *name; size_t off; } outcomes[] = {
            {"completed", offsetof(srv_method_counters, core.completed)},
            {"failed", offsetof(srv_method_counters, core.failed)},
            {"panicked", offsetof(srv_method_counters, core.panics)},
            {"aborted", offsetof(srv_method_counters, core.dropped)},
        };
        for (size_t k = 0; k < sizeof outcomes / sizeof outcomes[0]; k++) {
            bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}, {"outcome", outcomes[k].name}};
            bds__prom_u64(p, "bidistream_handler_calls_total", l, 2, method_sum(srv, mi, outcomes[k].off));
        }
    }
    render_per_method(p, srv, "bidistream_handler_retries_total", "counter", "Handler attempts that were retried.",
                      offsetof(srv_method_counters, core.retried));
    render_per_method(p, srv, "bidistream_messages_in_flight", "gauge",
                      "Messages admitted and not yet finished: waiting for their key's turn, running, or retrying.",
                      offsetof(srv_method_counters, core.calls_live));

    bds__prom_family(p, "bidistream_message_latency_seconds", "histogram",
                     "Per message: from the loop turn that admitted it (read it, or took it off the parked list) to "
                     "the end of its handler call (done, replies queued), on its stream's shard.");
    for (uint32_t mi = 0; mi < srv->n_methods; mi++) {
        uint64_t counts[SRV_LAT_BUCKETS] = {0}, sum = 0;
        for (uint32_t sh = 0; sh < srv->n_shards; sh++) lat_sum(&mh_at(srv, sh, mi)->msg_latency, counts, &sum);
        bds__prom_label l[] = {{"grpc_method", method_label(srv, mi)}};
        bds__prom_histogram(p, "bidistream_message_latency_seconds", l, 1, &bds__prom_latency_bounds, counts, sum);
    }
}

/* A per-shard family: one sample per shard from get(shard). */
static void render_per_shard(bds__prom *p, const bds_server *srv, const char *name, const char *type,
                             const char *help, uint64_t (*get)(const bds_server *, uint32_t)) {
    bds__prom_family(p, name, type, help);
    for (uint32_t i = 0; i < srv->n_shards; i++) {
        char id[12];
        snprintf(id, sizeof id, "%u", i);
        bds__prom_label l[] = {{"shard", id}};
        bds__prom_u64(p, name, l, 1, get(srv, i));
    }
}

static const bds_shard_stats *sst(const bds_server *srv, uint32_t i) { return bds__shard_stats(srv->shards[i]->shard); }
static uint64_t get_sleeps(const bds_server *srv, uint32_t i) { return ld_plain(&sst(srv, i)->sleeps); }
static uint64_t get_ticks(const bds_server *srv, uint32_t i) { return ld_plain(&sst(srv, i)->ticks); }
static uint64_t get_inbox(const bds_server *srv, uint32_t i) {
    return bds__shard_pipeline_inbox_depth(srv->shards[i]->pipe);
}
static uint64_t get_posted(const bds_server *srv, uint32_t i) { return ld(&srv->shc[i].msgs_posted); }
static uint64_t get_msg_bytes(const bds_server *srv, uint32_t i) { return ld(&srv->shc[i].message_bytes); }
static uint64_t get_accepted(const bds_server *srv, uint32_t i) { return ld(&srv->shc[i].connections_accepted); }
static uint64_t get_conns(const bds_server *srv, uint32_t i) { return ld(&srv->shc[i].connections_live); }
static uint64_t get_streams(const bds_server *srv, uint32_t i) { return ld(&srv->shc[i].streams_live); }

static void render_shards(bds__prom *p, bds_server *srv) {
    /* Loop time: waiting (blocked in the kernel for work) and the rest, busy. */
    struct srv_scrape *sc = srv->scrape;
    uint64_t now = bds__clock_ns(), elapsed = now > srv->run_ns ? now - srv->run_ns : 0;
    for (uint32_t i = 0; i < srv->n_shards; i++) {
        const bds_shard_stats *st = sst(srv, i);
        uint64_t wait = ld_plain(&st->wait_ns), since = ld_plain(&st->wait_since_ns);
        if (since && since < now) wait += now - since; /* the sleep under way */
        if (wait > elapsed) wait = elapsed;
        if (wait < sc->wait_ns[i]) wait = sc->wait_ns[i];
        uint64_t busy = elapsed > wait ? elapsed - wait : 0;
        if (busy < sc->busy_ns[i]) busy = sc->busy_ns[i];
        sc->wait_ns[i] = wait;
        sc->busy_ns[i] = busy;
    }
    static const char *const loop_names[2] = {"bidistream_shard_busy_seconds_total",
                                              "bidistream_shard_wait_seconds_total"};
    static const char *const loop_help[2] = {
        "Time the shard's loop ran (everything but waiting; an idle_spin_us spin counts here).",
        "Time the shard's loop waited in the kernel for work (its utilisation is 1 - rate(this))."};
    for (int k = 0; k < 2; k++) {
        bds__prom_family(p, loop_names[k], "counter", loop_help[k]);
        for (uint32_t i = 0; i < srv->n_shards; i++) {
            char id[12];
            snprintf(id, sizeof id, "%u", i);
            bds__prom_label l[] = {{"shard", id}};
            uint64_t ns = k == 0 ? sc->busy_ns[i] : sc->wait_ns[i];
            bds__prom_seconds(p, loop_names[k], l, 1, ns);
        }
    }
    render_per_shard(p, srv, "bidistream_shard_sleeps_total", "counter",
                     "Times the shard's loop blocked waiting for work.", get_sleeps);
    bds__prom_family(p, "bidistream_shard_wakeups_total", "counter",
                     "Doorbells that woke or reached the shard, by source: shard (another shard's MSG_RING) or thread "
                     "(an eventfd write from another thread, or the stop).");
    for (uint32_t i = 0; i < srv->n_shards; i++) {
        char id[12];
        snprintf(id, sizeof id, "%u", i);
        bds__prom_label a[] = {{"shard", id}, {"source", "shard"}};
        bds__prom_u64(p, "bidistream_shard_wakeups_total", a, 2, ld_plain(&sst(srv, i)->bells_received));
        bds__prom_label b[] = {{"shard", id}, {"source", "thread"}};
        bds__prom_u64(p, "bidistream_shard_wakeups_total", b, 2, ld_plain(&sst(srv, i)->eventfd_wakes));
    }
    render_per_shard(p, srv, "bidistream_shard_ticks_total", "counter", "Turns of the shard's event loop.", get_ticks);
    render_per_shard(p, srv, "bidistream_shard_inbox_depth", "gauge",
                     "Messages from other shards and threads in the shard's inbox, not yet drained.", get_inbox);
    render_per_shard(p, srv, "bidistream_shard_messages_posted_total", "counter",
                     "Pipeline messages the shard sent to other shards (work whose key hashes there, and its answers).",
                     get_posted);
    render_per_shard(p, srv, "bidistream_shard_message_bytes", "gauge",
                     "Message buffer memory the shard holds (payloads admitted or parked, replies).", get_msg_bytes);
    render_per_shard(p, srv, "bidistream_connections_accepted_total", "counter", "gRPC connections accepted.",
                     get_accepted);
    render_per_shard(p, srv, "bidistream_connections_open", "gauge", "gRPC connections open now.", get_conns);
    render_per_shard(p, srv, "bidistream_shard_streams_open", "gauge", "Streams open now, by their connection's shard.",
                     get_streams);
}

static uint64_t h2_sum(const bds_server *srv, size_t off) {
    uint64_t v = 0;
    for (uint32_t i = 0; i < srv->n_shards; i++)
        v += ld((const _Atomic uint64_t *)((const char *)&srv->shc[i].h2 + off));
    return v;
}
#define H2SUM(srv, field) h2_sum(srv, offsetof(srv_h2_totals, field))

static void render_h2(bds__prom *p, const bds_server *srv) {
    bds__prom_family(p, "bidistream_http2_streams_total", "counter",
                     "HTTP/2 streams by event: started (a call began), refused (answered at its headers), failed "
                     "(bad input after it began), reset (by the client).");
    static const struct { const char *name; size_t off; } ev[] = {
        {"started", offsetof(srv_h2_totals, streams_started)},
        {"refused", offsetof(srv_h2_totals, streams_refused)},
        {"failed", offsetof(srv_h2_totals, streams_failed)},
        {"reset", offsetof(srv_h2_totals, streams_reset)},
    };
    for (size_t k = 0; k < sizeof ev / sizeof ev[0]; k++) {
        bds__prom_label l[] = {{"event", ev[k].name}};
        bds__prom_u64(p, "bidistream_http2_streams_total", l, 1, h2_sum(srv, ev[k].off));
    }
    bds__prom_family(p, "bidistream_http2_resets_sent_total", "counter", "RST_STREAM frames sent with an error code.");
    bds__prom_u64(p, "bidistream_http2_resets_sent_total", NULL, 0, H2SUM(srv, resets_sent));
    bds__prom_family(p, "bidistream_http2_glitches_total", "counter",
                     "Suspicious frames counted against the connections' glitch buckets.");
    bds__prom_u64(p, "bidistream_http2_glitches_total", NULL, 0, H2SUM(srv, glitches));
    bds__prom_family(p, "bidistream_http2_windows_capped_total", "counter",
                     "Stream windows cut to what the stream's session reads ahead, its messages parked for want of room.");
    bds__prom_u64(p, "bidistream_http2_windows_capped_total", NULL, 0, H2SUM(srv, windows_capped));
    bds__prom_family(p, "bidistream_http2_pings_sent_total", "counter", "Keepalive PINGs the server sent.");
    bds__prom_u64(p, "bidistream_http2_pings_sent_total", NULL, 0, H2SUM(srv, pings_sent));
    bds__prom_family(p, "bidistream_http2_ping_acks_total", "counter", "ACKs of the server's PINGs received.");
    bds__prom_u64(p, "bidistream_http2_ping_acks_total", NULL, 0, H2SUM(srv, ping_acks));
    bds__prom_family(p, "bidistream_http2_goaways_sent_total", "counter",
                     "GOAWAY frames sent, by error code (NO_ERROR: idle, the stop, notices; others: a failure or flood).");
    for (uint32_t c = 0; c < BDS_H2_GOAWAY_CODES; c++) {
        uint64_t v = h2_sum(srv, offsetof(srv_h2_totals, goaways) + c * sizeof(_Atomic uint64_t));
        if (!v && c != 0 && c != 11) continue; /* NO_ERROR and ENHANCE_YOUR_CALM always; others once seen */
        bds__prom_label l[] = {{"code", h2_code_names[c]}};
        bds__prom_u64(p, "bidistream_http2_goaways_sent_total", l, 1, v);
    }
    bds__prom_family(p, "bidistream_http2_abuse_verdicts_total", "counter",
                     "Connections ended for abuse, by kind: glitch_flood, too_many_pings, hpack_bomb, nghttp2_flood, "
                     "protocol_error.");
    for (uint32_t k = 0; k < SRV_VERDICTS; k++) {
        bds__prom_label l[] = {{"kind", verdict_names[k]}};
        bds__prom_u64(p, "bidistream_http2_abuse_verdicts_total", l, 1,
                      h2_sum(srv, offsetof(srv_h2_totals, verdicts) + k * sizeof(_Atomic uint64_t)));
    }
}

static void render_endpoint(bds__prom *p, const bds_server *srv) {
    const bds_metrics_http_stats *s = bds__metrics_http_stats(srv->mhttp);
    bds__prom_family(p, "bidistream_metrics_http_requests_total", "counter",
                     "Requests to this endpoint, by outcome (this one included).");
    const struct { const char *name; uint64_t v; } o[] = {
        {"ok", s->ok},           {"bad_request", s->bad_request}, {"not_found", s->not_found},
        {"bad_method", s->bad_method}, {"busy", s->busy},         {"failed", s->failed},
        {"timeout", s->timeouts},
    };
    for (size_t k = 0; k < sizeof o / sizeof o[0]; k++) {
        bds__prom_label l[] = {{"outcome", o[k].name}};
        bds__prom_u64(p, "bidistream_metrics_http_requests_total", l, 1, o[k].v);
    }
}

static char *srv_render(void *ctx, size_t *len) {
    bds_server *srv = ctx;
    bds__prom p;
    bds__prom_init(&p);
    render_methods(&p, srv);
    render_shards(&p, srv);
    render_h2(&p, srv);
    render_endpoint(&p, srv);
    return bds__prom_take(&p, len);
}

/* ---- the endpoint's lifetime (shard 0) ------------------------------------------------------------ */

bds_status bds__srv_metrics_start(srv_shard *sh) {
    bds_server *srv = sh->srv;
    bds_metrics_http_config c;
    bds__metrics_http_config_default(&c);
    c.render = srv_render;
    c.ctx = srv;
    c.log = &srv->log;
    int fd = srv->metrics_fd;
    srv->metrics_fd = -1; /* the endpoint's (closed by it, also on failure) */
    return bds__metrics_http_start(sh->net, fd, &c, &srv->mhttp);
}

void bds__srv_metrics_stop(srv_shard *sh) {
    bds__metrics_http_stop(sh->srv->mhttp);
    sh->srv->mhttp = NULL;
}

bds_status bds__srv_metrics_alloc(bds_server *srv) {
    BDS_ASSERT(bds__prom_latency_bounds.n + 1 == SRV_LAT_BUCKETS && bds__prom_size_bounds.n + 1 == SRV_SIZE_BUCKETS);
    srv->mh = calloc((size_t)srv->n_shards * (BDS_SERVER_METHODS_MAX + 1), sizeof *srv->mh);
    srv->scrape = calloc(1, sizeof *srv->scrape);
    if (!srv->mh || !srv->scrape) return BDS_E_NOMEM;
    srv->scrape->busy_ns = calloc(srv->n_shards, sizeof(uint64_t));
    srv->scrape->wait_ns = calloc(srv->n_shards, sizeof(uint64_t));
    if (!srv->scrape->busy_ns || !srv->scrape->wait_ns) return BDS_E_NOMEM;
    return BDS_OK;
}

void bds__srv_metrics_free(bds_server *srv) {
    if (srv->mh) {
        for (size_t i = 0; i < (size_t)srv->n_shards * (BDS_SERVER_METHODS_MAX + 1); i++)
            for (uint32_t c = 0; c < SRV_GRPC_CODES; c++) free(atomic_load(&srv->mh[i].by_status[c]));
        free(srv->mh);
        srv->mh = NULL;
    }
    if (srv->scrape) {
        free(srv->scrape->busy_ns);
        free(srv->scrape->wait_ns);
        free(srv->scrape);
        srv->scrape = NULL;
    }
}
