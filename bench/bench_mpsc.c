/* bench_mpsc.c — the shard inbox ring (core/mpsc.c) against a mutex + condvar
 * bounded queue of the same capacity, in the same run and the same shape:
 * P producer threads push tagged pointers in bursts of B, one consumer pops
 * bursts of up to 256. Two modes:
 *   block: nobody spins, as on a shard. The ring's consumer sleeps on its
 *     doorbell latch (an eventfd) and its producers on their own eventfd
 *     after want_space(); the locked queue's threads wait on condvars. This
 *     measures the queue plus its sleep/wake protocol.
 *   poll: nobody sleeps. An empty consumer polls again (pause), a producer
 *     that finds the queue full yields. This measures the queue operations.
 * The consumer is pinned to the first CPU, the producers to the others (all
 * of them to the second on a 2-core machine).
 *
 * Each (mode, P, B) case runs both variants alternately, REPS times each, so
 * drift on a shared machine hits both alike; one JSON line per variant
 * (median, min and max of the reps) and one for the ratio of the medians.
 *
 * Usage: bench_mpsc [items_per_producer=5000000] [reps=5] [producers=1,2] [burst=1,16]
 *                   [modes=block,poll]
 *   (lists are comma-separated). Not a test: it checks only that every item
 *   arrived (a sum), and exits 1 if not. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "mpsc.h"

#define CAP 4096         /* a shard inbox's capacity (docs/ARCHITECTURE.md) */
#define POP_MAX 256
#define PRODUCERS_MAX 16
#define BURST_MAX 64
#define REPS_MAX 15

enum mode { MODE_BLOCK, MODE_POLL };
static const char *const mode_name[] = {"block", "poll"};

struct cfg {
    uint32_t producers, burst, reps;
    uint64_t items; /* per producer */
    enum mode mode;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The CPUs this process may use, read once before any thread pins itself:
 * the consumer takes the first, producer i the others, round robin. */
static int cpu_list[CPU_SETSIZE], cpu_count;

static void cpus_read(void) {
    cpu_set_t set;
    cpu_count = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, &set)) cpu_list[cpu_count++] = c;
    }
}

static int consumer_cpu(void) { return cpu_count >= 2 ? cpu_list[0] : -1; }

static void pin_self(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static int producer_cpu(uint32_t id) {
    return cpu_count >= 2 ? cpu_list[1 + id % (uint32_t)(cpu_count - 1)] : -1;
}

static void must(int ok, const char *what) {
    if (!ok) {
        perror(what);
        exit(1);
    }
}

static void bell_ring(int fd) {
    uint64_t one = 1;
    must(write(fd, &one, sizeof one) == (ssize_t)sizeof one, "eventfd write");
}

static void bell_wait(int fd) {
    uint64_t v;
    must(read(fd, &v, sizeof v) == (ssize_t)sizeof v, "eventfd read");
}

/* Every item arrived exactly once: items are 1..items per producer. */
static void check_sum(const struct cfg *c, uint64_t sum) {
    uint64_t per = c->items * (c->items + 1) / 2;
    if (sum != per * c->producers) {
        fprintf(stderr, "bench_mpsc: lost or duplicated items\n");
        exit(1);
    }
}

/* ---- the ring ---------------------------------------------------------------------- */

struct ring_run {
    bds_mpsc q;
    int bell;                       /* the consumer's doorbell */
    int pbell[PRODUCERS_MAX];       /* each producer's doorbell (want_space) */
    const struct cfg *c;
};

struct ring_producer {
    struct ring_run *r;
    uint32_t id;
};

static void *ring_producer_main(void *arg) {
    struct ring_producer *rp = arg;
    struct ring_run *r = rp->r;
    pin_self(producer_cpu(rp->id));
    void *batch[BURST_MAX];
    for (uint64_t i = 0; i < r->c->items;) {
        uint32_t k = r->c->burst < r->c->items - i ? r->c->burst : (uint32_t)(r->c->items - i);
        for (uint32_t j = 0; j < k; j++) batch[j] = (void *)(uintptr_t)(i + j + 1);
        for (uint32_t took = 0; took < k;) {
            uint32_t t = bds__mpsc_push_burst(&r->q, batch + took, k - took);
            took += t;
            if (r->c->mode == MODE_POLL) {
                if (took < k) sched_yield();
                continue;
            }
            if (t && bds__mpsc_should_ring(&r->q)) bell_ring(r->bell);
            if (took < k && !bds__mpsc_want_space(&r->q, rp->id)) bell_wait(r->pbell[rp->id]);
        }
        i += k;
    }
    return NULL;
}

static double run_ring(const struct cfg *c) {
    static struct ring_run r;
    void *mem = aligned_alloc(BDS_CACHELINE, bds__mpsc_footprint(CAP));
    must(mem != NULL, "aligned_alloc");
    bds__mpsc_init(&r.q, mem, CAP);
    r.c = c;
    r.bell = eventfd(0, 0);
    must(r.bell >= 0, "eventfd");
    struct ring_producer rp[PRODUCERS_MAX];
    pthread_t t[PRODUCERS_MAX];
    uint64_t t0 = now_ns();
    for (uint32_t p = 0; p < c->producers; p++) {
        r.pbell[p] = eventfd(0, 0);
        must(r.pbell[p] >= 0, "eventfd");
        rp[p] = (struct ring_producer){&r, p};
        must(pthread_create(&t[p], NULL, ring_producer_main, &rp[p]) == 0, "pthread_create");
    }
    uint64_t total = c->producers * c->items, got = 0, sum = 0;
    void *out[POP_MAX];
    while (got < total) {
        uint32_t n = bds__mpsc_pop_burst(&r.q, out, POP_MAX);
        for (uint32_t i = 0; i < n; i++) sum += (uintptr_t)out[i];
        got += n;
        if (c->mode == MODE_POLL) {
            if (!n) cpu_relax();
            continue;
        }
        for (uint64_t w = bds__mpsc_take_want_space(&r.q); w; w &= w - 1) {
            bell_ring(r.pbell[__builtin_ctzll(w)]);
        }
        if (n) continue;
        if (bds__mpsc_prepare_sleep(&r.q)) bell_wait(r.bell);
        bds__mpsc_woken(&r.q);
    }
    uint64_t dt = now_ns() - t0;
    for (uint32_t p = 0; p < c->producers; p++) {
        pthread_join(t[p], NULL);
        close(r.pbell[p]);
    }
    close(r.bell);
    check_sum(c, sum);
    bds__mpsc_deinit(&r.q);
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
    uint32_t next_id;
};

static void *locked_producer_main(void *arg) {
    struct locked *l = arg;
    pthread_mutex_lock(&l->mu);
    uint32_t id = l->next_id++;
    pthread_mutex_unlock(&l->mu);
    pin_self(producer_cpu(id));
    for (uint64_t i = 0; i < l->c->items;) {
        uint32_t k = l->c->burst < l->c->items - i ? l->c->burst : (uint32_t)(l->c->items - i);
        pthread_mutex_lock(&l->mu);
        if (l->c->mode == MODE_POLL && l->tail - l->head == CAP) {
            pthread_mutex_unlock(&l->mu);
            sched_yield();
            continue;
        }
        while (l->tail - l->head == CAP) pthread_cond_wait(&l->not_full, &l->mu);
        uint32_t room = (uint32_t)(CAP - (l->tail - l->head));
        if (k > room) k = room;
        bool was_empty = l->tail == l->head;
        for (uint32_t j = 0; j < k; j++) l->v[l->tail++ % CAP] = (void *)(uintptr_t)(i + j + 1);
        pthread_mutex_unlock(&l->mu);
        if (was_empty && l->c->mode == MODE_BLOCK) pthread_cond_signal(&l->not_empty);
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
    l.next_id = 0;
    pthread_t t[PRODUCERS_MAX];
    uint64_t t0 = now_ns();
    for (uint32_t p = 0; p < c->producers; p++) {
        must(pthread_create(&t[p], NULL, locked_producer_main, &l) == 0, "pthread_create");
    }
    uint64_t total = c->producers * c->items, got = 0, sum = 0;
    void *out[POP_MAX];
    while (got < total) {
        pthread_mutex_lock(&l.mu);
        if (c->mode == MODE_POLL && l.tail == l.head) {
            pthread_mutex_unlock(&l.mu);
            cpu_relax();
            continue;
        }
        while (l.tail == l.head) pthread_cond_wait(&l.not_empty, &l.mu);
        bool was_full = l.tail - l.head == CAP;
        uint32_t n = 0;
        while (l.head != l.tail && n < POP_MAX) out[n++] = l.v[l.head++ % CAP];
        pthread_mutex_unlock(&l.mu);
        if (was_full && c->mode == MODE_BLOCK) pthread_cond_broadcast(&l.not_full);
        for (uint32_t i = 0; i < n; i++) sum += (uintptr_t)out[i];
        got += n;
    }
    uint64_t dt = now_ns() - t0;
    for (uint32_t p = 0; p < c->producers; p++) pthread_join(t[p], NULL);
    check_sum(c, sum);
    pthread_cond_destroy(&l.not_full);
    pthread_cond_destroy(&l.not_empty);
    pthread_mutex_destroy(&l.mu);
    return (double)total / ((double)dt / 1e9);
}

/* ---- the runs -------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_variant(const char *name, const struct cfg *c, double *v, const char *env) {
    qsort(v, c->reps, sizeof *v, cmp_double);
    printf("{\"bench\":\"mpsc\",\"variant\":\"%s\",\"mode\":\"%s\",\"producers\":%u,\"burst\":%u,"
           "\"capacity\":%u,\"items\":%llu,\"reps\":%u,\"ops_per_s\":%.0f,\"ops_per_s_min\":%.0f,"
           "\"ops_per_s_max\":%.0f,%s}\n",
           name, mode_name[c->mode], c->producers, c->burst, CAP, (unsigned long long)(c->producers * c->items), c->reps,
           v[c->reps / 2], v[0], v[c->reps - 1], env);
}

static void run_case(const struct cfg *c, const char *env) {
    double ring[REPS_MAX], locked[REPS_MAX];
    for (uint32_t rep = 0; rep < c->reps; rep++) { /* A B A B ... */
        ring[rep] = run_ring(c);
        locked[rep] = run_locked(c);
    }
    print_variant("bds_mpsc", c, ring, env);
    print_variant("mutex_condvar", c, locked, env);
    printf("{\"bench\":\"mpsc\",\"ratio\":\"bds_mpsc/mutex_condvar\",\"mode\":\"%s\",\"producers\":%u,"
           "\"burst\":%u,\"value\":%.2f}\n",
           mode_name[c->mode], c->producers, c->burst, ring[c->reps / 2] / locked[c->reps / 2]);
    fflush(stdout);
}

/* "1,2,4" -> values; returns how many. */
static uint32_t parse_list(const char *s, uint32_t *v, uint32_t max, uint32_t lo, uint32_t hi) {
    uint32_t n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        unsigned long x = strtoul(s, &end, 10);
        if (end == s || x < lo || x > hi) return 0;
        v[n++] = (uint32_t)x;
    }
    return n;
}

static void env_json(char *buf, size_t len) {
    struct utsname u;
    char model[128] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *p = strchr(line, ':');
                if (p) snprintf(model, sizeof model, "%s", p + 2);
                model[strcspn(model, "\n\"\\")] = 0;
                break;
            }
        }
        fclose(f);
    }
    uname(&u);
    snprintf(buf, len, "\"cpus\":%d,\"consumer_cpu\":%d,\"cpu\":\"%s\",\"kernel\":\"%s\"", cpu_count,
             consumer_cpu(), model, u.release);
}

int main(int argc, char **argv) {
    struct cfg c = {.items = 5000000, .reps = 5};
    uint32_t producers[8] = {1, 2}, bursts[8] = {1, 16}, np = 2, nb = 2, nm = 2;
    enum mode modes[2] = {MODE_BLOCK, MODE_POLL};
    if (argc > 1) c.items = strtoull(argv[1], NULL, 10);
    if (argc > 2) c.reps = (uint32_t)atoi(argv[2]);
    if (argc > 3) np = parse_list(argv[3], producers, 8, 1, PRODUCERS_MAX);
    if (argc > 4) nb = parse_list(argv[4], bursts, 8, 1, BURST_MAX);
    if (argc > 5) {
        nm = strcmp(argv[5], "block,poll") == 0 ? 2 : strcmp(argv[5], "block") == 0 || strcmp(argv[5], "poll") == 0;
        modes[0] = strcmp(argv[5], "poll") == 0 ? MODE_POLL : MODE_BLOCK;
    }
    if (c.items < 1 || c.reps < 1 || c.reps > REPS_MAX || np == 0 || nb == 0 || nm == 0) {
        fprintf(stderr, "usage: bench_mpsc [items_per_producer] [reps 1..%d] [producers 1..%d,...] "
                        "[burst 1..%d,...] [block|poll|block,poll]\n", REPS_MAX, PRODUCERS_MAX, BURST_MAX);
        return 2;
    }
    char env[512];
    cpus_read();
    env_json(env, sizeof env);
    pin_self(consumer_cpu());
    for (uint32_t m = 0; m < nm; m++) {
        for (uint32_t i = 0; i < np; i++) {
            for (uint32_t j = 0; j < nb; j++) {
                c.mode = modes[m];
                c.producers = producers[i];
                c.burst = bursts[j];
                run_case(&c, env);
            }
        }
    }
    return 0;
}
