/* metrics_http.c — the scrape endpoint (metrics_http.h): one request head
 * per connection, judged by proto/http1_req.c, one answer, then close. */
#include "metrics_http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "http1_req.h"
#include "list.h"

struct bds_metrics_http {
    bds_net *net;
    bds_shard *shard;
    bds_listener *listener;
    bds_metrics_http_config cfg;
    bds__dlist conns;         /* struct mconn.link */
    uint32_t n_conns;
    bool stopping;
    bds_metrics_http_stats stats;
};

struct mconn {
    bds_metrics_http *h;
    bds_conn *c;
    bds__dlist link;
    bds_timer timer;          /* the whole exchange's bound */
    bool answered;            /* the answer is queued: closing after it leaves */
    bds__http1_req req;
    size_t len;               /* bytes of buf received */
    uint8_t buf[];            /* cfg.max_request_bytes */
};

void bds__metrics_http_config_default(bds_metrics_http_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->max_conns = 8;
    cfg->max_request_bytes = 8192;
    cfg->timeout_ns = 10ull * 1000000000ull;
}

const bds_metrics_http_stats *bds__metrics_http_stats(const bds_metrics_http *h) { return &h->stats; }
uint32_t bds__metrics_http_conns(const bds_metrics_http *h) { return h->n_conns; }

static void mconn_release(bds_conn *c, void *tag, void *ctx) {
    (void)c;
    (void)ctx;
    free(tag);
}

static void mconn_on_close(bds_conn *c, int err, void *ctx) {
    (void)c;
    (void)err;
    struct mconn *mc = ctx;
    bds_metrics_http *h = mc->h;
    bds__timer_cancel(bds__shard_timers(h->shard), &mc->timer);
    bds__dlist_unlink(&mc->link);
    h->n_conns--;
    free(mc);
    if (h->stopping && h->n_conns == 0) free(h);
}

/* Queues the answer (head, then body unless head_only) and closes once it
 * has left. body is malloc'ed and becomes the connection's (NULL: none). */
static void mconn_answer(struct mconn *mc, int code, const char *reason, const char *extra, char *body,
                         size_t body_len, bool head_only) {
    mc->answered = true;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                     code, reason, code == 200 ? "text/plain; version=0.0.4" : "text/plain", body_len,
                     extra ? extra : "");
    BDS_ASSERT(n > 0 && (size_t)n < sizeof head);
    bds__conn_recv_pause(mc->c);
    if (bds__conn_write(mc->c, head, (size_t)n) != BDS_OK) {
        free(body);
        bds__conn_close(mc->c, 0);
        return;
    }
    if (body && !head_only && body_len) {
        if (bds__conn_write_ref(mc->c, body, body_len, body) != BDS_OK) {
            free(body);
            bds__conn_close(mc->c, 0);
            return;
        }
    } else {
        free(body);
    }
    bds__conn_close_after_flush(mc->c);
}

/* An error answer: its reason phrase as the body. */
static void mconn_error(struct mconn *mc, int code, const char *reason, const char *extra) {
    size_t n = strlen(reason);
    char *body = malloc(n + 1);
    if (body) {
        memcpy(body, reason, n);
        body[n] = '\n';
    }
    mconn_answer(mc, code, reason, extra, body, body ? n + 1 : 0, false);
}

static void mconn_route(struct mconn *mc) {
    bds_metrics_http *h = mc->h;
    const bds__http1_req *r = &mc->req;
    const char *path = (const char *)mc->buf + r->path_off;
    if (r->path_len != 8 || memcmp(path, "/metrics", 8) != 0) {
        h->stats.not_found++;
        mconn_error(mc, 404, "Not Found", NULL);
        return;
    }
    bool head = strcmp(r->method, "HEAD") == 0;
    if (!head && strcmp(r->method, "GET") != 0) {
        h->stats.bad_method++;
        mconn_error(mc, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
        return;
    }
    /* Counted before the page is made, so the page counts itself. */
    h->stats.ok++;
    size_t len = 0;
    char *page = h->cfg.render ? h->cfg.render(h->cfg.ctx, &len) : NULL;
    if (!page) {
        h->stats.ok--;
        h->stats.failed++;
        mconn_error(mc, 500, "Internal Server Error", NULL);
        return;
    }
    mconn_answer(mc, 200, "OK", NULL, page, len, head);
}

static void mconn_on_data(bds_conn *c, const uint8_t *bytes, size_t len, void *ctx) {
    (void)c;
    struct mconn *mc = ctx;
    if (mc->answered) return; /* what follows the head is not read */
    size_t cap = mc->h->cfg.max_request_bytes;
    size_t take = len < cap - mc->len ? len : cap - mc->len;
    memcpy(mc->buf + mc->len, bytes, take);
    mc->len += take;
    /* Bytes past the bound are dropped: a head not complete within it is
     * judged TOO_LARGE (mc->len reached cap). */
    switch (bds__http1_parse(&mc->req, mc->buf, mc->len, cap)) {
    case BDS_HTTP1_MORE: return;
    case BDS_HTTP1_DONE: mconn_route(mc); return;
    case BDS_HTTP1_BAD:
    case BDS_HTTP1_TOO_LARGE:
        mc->h->stats.bad_request++;
        mconn_error(mc, 400, "Bad Request", NULL);
        return;
    }
}

static void mconn_timeout(bds_timer *t, void *ctx) {
    (void)t;
    struct mconn *mc = ctx;
    mc->h->stats.timeouts++;
    bds__log(mc->h->cfg.log, BDS_LOG_DEBUG, "metrics connection closed: no complete exchange in time",
             "received=%zu answered=%d", mc->len, (int)mc->answered);
    bds__conn_close(mc->c, ETIMEDOUT);
}

static const bds_conn_callbacks mconn_cbs = {
    .on_data = mconn_on_data, .on_release = mconn_release, .on_close = mconn_on_close,
};

static void metrics_on_accept(bds_listener *l, bds_conn *c, void *ctx) {
    (void)l;
    bds_metrics_http *h = ctx;
    struct mconn *mc = calloc(1, sizeof *mc + h->cfg.max_request_bytes);
    if (!mc) {
        bds__conn_close(c, ENOMEM); /* with no callbacks: nothing of ours to free */
        return;
    }
    mc->h = h;
    mc->c = c;
    bds__http1_init(&mc->req);
    bds__dlist_init(&mc->link);
    bds__dlist_insert_tail(&h->conns, &mc->link);
    h->n_conns++;
    bds__conn_set_callbacks(c, &mconn_cbs, mc);
    bds__timer_init(&mc->timer, mconn_timeout, mc);
    bds__timer_arm(bds__shard_timers(h->shard), &mc->timer, bds__shard_now(h->shard) + h->cfg.timeout_ns);
    if (h->n_conns > 2 * h->cfg.max_conns) {
        h->stats.busy++;
        mc->answered = true;
        bds__conn_close(c, 0);
    } else if (h->n_conns > h->cfg.max_conns) {
        h->stats.busy++;
        mconn_error(mc, 503, "Service Unavailable", NULL);
    }
}

bds_status bds__metrics_http_start(bds_net *net, int listen_fd, const bds_metrics_http_config *cfg,
                                   bds_metrics_http **out) {
    *out = NULL;
    bds_metrics_http *h = calloc(1, sizeof *h);
    if (!h) return BDS_E_NOMEM;
    h->net = net;
    h->shard = bds__net_shard(net);
    h->cfg = *cfg;
    if (!h->cfg.max_conns) h->cfg.max_conns = 1;
    if (h->cfg.max_request_bytes < 64) h->cfg.max_request_bytes = 64;
    bds__dlist_init(&h->conns);
    bds_status st = bds__listener_start(net, listen_fd, metrics_on_accept, h, &h->listener);
    if (st != BDS_OK) {
        close(listen_fd);
        free(h);
        return st;
    }
    *out = h;
    return BDS_OK;
}

void bds__metrics_http_stop(bds_metrics_http *h) {
    if (!h) return;
    h->stopping = true;
    if (h->listener) bds__listener_close(h->listener);
    h->listener = NULL;
    if (h->n_conns == 0) {
        free(h);
        return;
    }
    bds__dlist *it, *nx;
    BDS_DLIST_FOREACH_SAFE(it, nx, &h->conns) {
        struct mconn *mc = BDS_DLIST_ENTRY(it, struct mconn, link);
        bds__conn_close(mc->c, 0); /* on_close frees it, and h with the last */
    }
}
