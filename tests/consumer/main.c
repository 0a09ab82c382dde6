/* A tiny outside user of libbidistream: one pipeline, one session, three
 * messages on two keys through the public API only; exits 0 when every
 * message was answered and the session ended OK after the half-close. */
#include <bidistream/bidistream.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int replies, closed_ok;

static uint64_t now_ns(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void echo(bds_call *call, void *ctx) {
    bds_reply *r = ctx;
    bds_call_reply(call, &r[bds_call_seq(call)]);
    bds_call_done(call, BDS_OK, NULL);
}

static void on_write(bds_session *s, bds_reply *r, void *ctx) {
    (void)ctx;
    replies++;
    bds_session_reply_written(s, r);
}
static void on_drop(bds_session *s, bds_reply *r, void *ctx) { (void)s, (void)r, (void)ctx; }
static void on_release(bds_session *s, void *p, void *ctx) { (void)s, (void)p, (void)ctx; }
static void on_closed(bds_session *s, bds_status st, const char *m, void *ctx) {
    (void)s, (void)m, (void)ctx;
    closed_ok = st == BDS_OK;
}

int main(void) {
    static bds_reply reply_slots[3];
    bds_pipeline_config pc;
    bds_pipeline_config_default(&pc);
    pc.port.now_ns = now_ns;
    bds_pipeline *p;
    if (bds_pipeline_create(&p, &pc) != BDS_OK) return 1;
    static const bds_session_ops ops = {.write = on_write, .drop = on_drop, .release = on_release, .closed = on_closed};
    bds_options o = bds_default_options();
    bds_session_config sc;
    bds_session_config_default(&sc);
    sc.options = &o;
    sc.handler = echo;
    sc.handler_ctx = reply_slots;
    sc.ops = &ops;
    bds_session *s;
    const char *why;
    if (bds_session_create(&s, p, &sc, &why) != BDS_OK || bds_session_open(s) != BDS_OK) return 2;
    const char *keys[] = {"a", "b", "a"};
    for (uint64_t i = 0; i < 3; i++) {
        if (bds_session_receive(s, NULL, 0, keys[i], 1, i) != BDS_OK) return 3;
    }
    bds_session_client_close(s);
    while (bds_pipeline_run(p, 64) > 0) {
    }
    bds_session_release(s);
    while (bds_pipeline_run(p, 64) > 0) {
    }
    bds_pipeline_destroy(p);
    printf("consumer: %d replies, closed %s (%s)\n", replies, closed_ok ? "OK" : "not OK", bds_status_str(BDS_OK));
    return replies == 3 && closed_ok ? 0 : 4;
}
