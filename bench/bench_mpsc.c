/* bench_mpsc.c — the MPSC inbox ring against a mutex + condvar bounded queue,
 * same run, same shape: P producers pushing bursts of B tagged pointers, one
 * consumer popping bursts; the consumer sleeps on the ring's doorbell latch
 * (an eventfd) or on the condvar when empty. Prints one JSON line per variant
 * and the ratio. Usage: bench_mpsc [producers=2] [items_per_producer=5000000] [burst=16] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "mpsc.h"

#define CAP 4096

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct cfg {
    uint32_t producers, items, burst;
};

/* Every item arrived exactly once (and the consumer really read them). */
static void check_sum(const struct cfg *c, uint64_t sum) {
    uint64_t per = (uint64_t)c->items * (c->items + 1) / 2;
    if (sum != per * c->producers) {
        fprintf(stderr, "bench_mpsc: lost or duplicated items\n");
        exit(1);
    }
}

/* ---- the ring ---------------------------------------------------------------------- */

struct ring_ctx {
    bds_mpsc *q;
    int bell;
    const struct cfg *c;
};

static void *ring_producer(void *arg) {
    struct ring_ctx *r = arg;
    void *batch[64];
    for (uint32_t i = 0; i < r->c->items;) {
        uint32_t k = r->c->burst < r->c->items - i ? r->c->burst : r->c->items - i;
        for (uint32_t j = 0; j < k; j++) batch[j] = (void *)(uintptr_t)(i + j + 1);
        uint32_t took = bds__mpsc_push_burst(r->q, batch, k);
        if (took == 0) {
            sched_yield();
            continue;
        }
        if (bds__mpsc_should_ring(r->q)) {
            uint64_t one = 1;
            if (write(r->bell, &one, 8) != 8) abort();
        }
        i += took;
    }
    return NULL;
}

static double run_ring(const struct cfg *c) {
    bds_mpsc q;
    void *mem = aligned_alloc(64, bds__mpsc_footprint(CAP));
    bds__mpsc_init(&q, mem, CAP);
    struct ring_ctx r = {&q, eventfd(0, 0), c};
    pthread_t t[64];
    uint64_t t0 = now_ns();
    for (uint32_t p = 0; p < c->producers; p++) pthread_create(&t[p], NULL, ring_producer, &r);
    uint64_t total = (uint64_t)c->producers * c->items, got = 0, sum = 0;
    void *out[256];
    while (got < total) {
        uint32_t n = bds__mpsc_pop_burst(&q, out, 256);
        for (uint32_t i = 0; i < n; i++) sum += (uintptr_t)out[i];
        got += n;
        if (n == 0 && bds__mpsc_prepare_sleep(&q)) {
            uint64_t v;
            if (read(r.bell, &v, 8) != 8) abort();
            bds__mpsc_woken(&q);
        }
    }
    uint64_t dt = now_ns() - t0;
    for (uint32_t p = 0; p < c->producers; p++) pthread_join(t[p], NULL);
    close(r.bell);
    check_sum(c, sum);
    bds__mpsc_deinit(&q);
    free(mem);
    return (double)total / ((double)dt / 1e9);
}

/* ---- mutex + condvar ----------------------------------------------------------------- */

struct locked {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *v[CAP];
    uint64_t head, tail;
    const struct cfg *c;
};

static void *locked_producer(void *arg) {
    struct locked *l = arg;
    for (uint32_t i = 0; i < l->c->items;) {
        uint32_t k = l->c->burst < l->c->items - i ? l->c->burst : l->c->items - i;
        pthread_mutex_lock(&l->mu);
        while (l->tail - l->head == CAP) pthread_cond_wait(&l->not_full, &l->mu);
        uint32_t room = (uint32_t)(CAP - (l->tail - l->head));
        if (k > room) k = room;
        for (uint32_t j = 0; j < k; j++) l->v[l->tail++ % CAP] = (void *)(uintptr_t)(i + j + 1);
        pthread_cond_signal(&l->not_empty);
        pthread_mutex_unlock(&l->mu);
        i += k;
    }
    return NULL;
}

static double run_locked(const struct cfg *c) {
    static struct locked l;
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.not_empty, NULL);
    pthread_cond_init(&l.not_full, NULL);
    l.head = l.tail = 0;
    l.c = c;
    pthread_t t[64];
    uint64_t t0 = now_ns();
    for (uint32_t p = 0; p < c->producers; p++) pthread_create(&t[p], NULL, locked_producer, &l);
    uint64_t total = (uint64_t)c->producers * c->items, got = 0, sum = 0;
    void *out[256];
    while (got < total) {
        pthread_mutex_lock(&l.mu);
        while (l.tail == l.head) pthread_cond_wait(&l.not_empty, &l.mu);
        uint32_t n = 0;
        while (l.head != l.tail && n < 256) out[n++] = l.v[l.head++ % CAP];
        pthread_cond_broadcast(&l.not_full);
        pthread_mutex_unlock(&l.mu);
        for (uint32_t i = 0; i < n; i++) sum += (uintptr_t)out[i];
        got += n;
    }
    uint64_t dt = now_ns() - t0;
    for (uint32_t p = 0; p < c->producers; p++) pthread_join(t[p], NULL);
    check_sum(c, sum);
    return (double)total / ((double)dt / 1e9);
}

int main(int argc, char **argv) {
    struct cfg c = {2, 5000000, 16};
    if (argc > 1) c.producers = (uint32_t)atoi(argv[1]);
    if (argc > 2) c.items = (uint32_t)atoi(argv[2]);
    if (argc > 3) c.burst = (uint32_t)atoi(argv[3]);
    if (c.producers < 1 || c.producers > 64 || c.burst < 1 || c.burst > 64) {
        fprintf(stderr, "usage: bench_mpsc [producers 1..64] [items] [burst 1..64]\n");
        return 2;
    }
    /* Alternate A B A B so drift on a shared machine hits both alike; keep the best of 3. */
    double ring = 0, locked = 0;
    for (int rep = 0; rep < 3; rep++) {
        double a = run_ring(&c), b = run_locked(&c);
        if (a > ring) ring = a;
        if (b > locked) locked = b;
    }
    printf("{\"bench\":\"mpsc\",\"variant\":\"bds_mpsc\",\"producers\":%u,\"burst\":%u,\"items\":%llu,\"ops_per_s\":%.0f}\n",
           c.producers, c.burst, (unsigned long long)c.producers * c.items, ring);
    printf("{\"bench\":\"mpsc\",\"variant\":\"mutex_condvar\",\"producers\":%u,\"burst\":%u,\"items\":%llu,\"ops_per_s\":%.0f}\n",
           c.producers, c.burst, (unsigned long long)c.producers * c.items, locked);
    printf("ratio bds_mpsc / mutex_condvar = %.2fx\n", ring / locked);
    return 0;
}
