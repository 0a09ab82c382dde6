/* ledger_server — account debits and credits on libbidistream: ledger.v1.Ledger
 * (ledger.proto).
 *
 * What it shows, each where the code says why:
 *   - accounts as ordering keys: one account's ops apply one at a time, in
 *     the order sent (KEYED_FIFO), on the shard the account hashes to, the
 *     same shard for every stream: its balance needs no lock;
 *   - retries of retryable failures with no duplicate reply: the simulated
 *     store fails a commit with UNAVAILABLE (retryable by default), the
 *     library runs the op again, and the reply the failed attempt made is
 *     dropped, never sent: one Result per Op;
 *   - SOFT_ALLOW_SIGNAL: past a small capacity of concurrent ops, ops still
 *     run but are marked (bds_call_pressured) and their Result says so;
 *   - the server's counters read from the program (bds_server_get_stats),
 *     answered by ledger.v1.Ledger/Stats and printed when it stops.
 *
 *   ledger_server [--listen HOST:PORT] [--shards N] [--capacity N] [--commit-ms MS] [--max-retries N]
 *
 * Prints "port N" once it listens, a line per store failure, and Apply's
 * counters when it stops (SIGTERM/SIGINT). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bidistream/bidistream.h>

#include "ledger.pb-c.h"

#define APPLY_PATH "/ledger.v1.Ledger/Apply"

static bds_server *server;
static uint64_t commit_ns = 10ull * 1000000; /* the simulated store's commit latency */

static void say_log(const char *line) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* several shards log at once */
    pthread_mutex_lock(&mu);
    puts(line);
    fflush(stdout);
    pthread_mutex_unlock(&mu);
}

/* ---- accounts ----------------------------------------------------------------
 * The table is shared by every shard (a lock for lookups). A balance is not:
 * an account's ops all run on the shard its name hashes to, whichever stream
 * sent them, and each op reads, checks and writes the balance in one run of
 * its commit, so two ops never interleave on one balance. Accounts live until
 * the program exits. */

typedef struct account {
    struct account *next;
    char *name;
    int64_t balance; /* the account's shard only */
} account;

static pthread_mutex_t accounts_mu = PTHREAD_MUTEX_INITIALIZER;
static account *accounts;

static account *account_get(const char *name) {
    pthread_mutex_lock(&accounts_mu);
    account *a = accounts;
    while (a && strcmp(a->name, name) != 0) a = a->next;
    if (!a && (a = calloc(1, sizeof *a)) != NULL) {
        if ((a->name = strdup(name)) == NULL) {
            free(a);
            a = NULL;
        } else {
            a->next = accounts;
            accounts = a;
        }
    }
    pthread_mutex_unlock(&accounts_mu);
    return a;
}

/* ---- the key: an Op's account, found on the wire --------------------------------
 * The resolver must return a view into the request's bytes: it scans the
 * protobuf wire format for field 1 instead of unpacking a copy. */

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

static bool account_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, void *ctx) {
    (void)ctx;
    const uint8_t *p = req, *end = req + len;
    *key_len = 0; /* no account: the empty key, and the handler answers INVALID_ARGUMENT */
    while (p < end) {
        uint64_t tag, n;
        if (!pb_varint(&p, end, &tag)) return false;
        switch (tag & 7) {
        case 0: if (!pb_varint(&p, end, &n)) return false; break;
        case 1: if (end - p < 8) return false; p += 8; break;
        case 5: if (end - p < 4) return false; p += 4; break;
        case 2:
            if (!pb_varint(&p, end, &n) || n > (uint64_t)(end - p)) return false;
            if ((tag >> 3) == 1) {
                *key = p;
                *key_len = (uint32_t)n;
            }
            p += n;
            break;
        default: return false; /* malformed: the stream ends INTERNAL */
        }
    }
    return true;
}

/* ---- Apply ------------------------------------------------------------------------ */

typedef struct pending {
    account *account;
    uint64_t id;
    int64_t amount;
    uint32_t fail_commits;
} pending;

/* The store's answer, after its latency: runs on the account's shard, or at
 * once if the stream went first (then nothing is applied or sent). */
static void commit(bds_call *call, void *ctx) {
    pending *op = ctx;
    if (bds_call_cancelled(call)) {
        free(op);
        bds_call_done(call, BDS_OK, NULL); /* any status: nothing reaches the client now */
        return;
    }
    account *a = op->account;
    int64_t after;
    bool applied = !__builtin_add_overflow(a->balance, op->amount, &after) && after >= 0;
    if (!applied) after = a->balance;
    Ledger__V1__Result r = LEDGER__V1__RESULT__INIT;
    r.account = a->name;
    r.id = op->id;
    r.applied = applied;
    r.balance = after;
    r.attempts = bds_call_attempt(call);
    r.pressured = bds_call_pressured(call); /* admitted over the capacity: tell the client */
    uint8_t buf[256];
    size_t len = ledger__v1__result__get_packed_size(&r);
    if (len <= sizeof buf) {
        ledger__v1__result__pack(&r, buf);
        /* Replied before the commit is known on purpose: with retries on, the
         * library holds an attempt's replies until it ends, sends them if it
         * succeeded and drops them if it failed. A handler can answer as it
         * goes without ever answering an op twice. */
        bds_call_reply_bytes(call, buf, len);
    }
    if (bds_call_attempt(call) <= op->fail_commits) {
        char line[160];
        snprintf(line, sizeof line, "store unavailable: %s id %llu attempt %u", a->name, (unsigned long long)op->id,
                 bds_call_attempt(call));
        say_log(line);
        free(op);
        /* UNAVAILABLE is in the retryable mask (BDS_RETRYABLE_DEFAULT): the op
         * runs again after the backoff, keeping its account's turn, and the
         * balance was not touched. */
        bds_call_done(call, BDS_UNAVAILABLE, "store: transient failure");
        return;
    }
    a->balance = after;
    free(op);
    bds_call_done(call, BDS_OK, NULL);
}

static void apply_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Ledger__V1__Op *in = ledger__v1__op__unpack(NULL, len, req);
    if (!in || !in->account[0]) {
        if (in) ledger__v1__op__free_unpacked(in, NULL);
        bds_call_done(call, BDS_INVALID_ARGUMENT, "an Op names its account");
        return;
    }
    pending *op = malloc(sizeof *op);
    if (op) *op = (pending){account_get(in->account), in->id, in->amount, in->fail_commits};
    ledger__v1__op__free_unpacked(in, NULL);
    if (!op || !op->account) {
        free(op);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    /* The store's round trip, without a thread or a sleep: the call stays
     * open (holding its account's turn and an inbound token) until the timer
     * runs on this shard. */
    if (bds_call_after(call, commit_ns, commit, op) != BDS_OK) {
        free(op);
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "no timer");
    }
}

/* ---- Stats: the counters, read from the running server ------------------------------ */

static const bds_method_stats *apply_stats(const bds_server_stats *s) {
    for (uint32_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].path, APPLY_PATH) == 0) return &s->methods[i];
    return NULL;
}

static void stats_handler(bds_call *call, void *ctx) {
    (void)ctx;
    bds_server_stats *s = malloc(sizeof *s); /* ~20 KiB: not on a shard's stack */
    if (!s) {
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    bds_server_get_stats(server, s); /* any thread, while running */
    const bds_method_stats *m = apply_stats(s);
    Ledger__V1__StatsReply r = LEDGER__V1__STATS_REPLY__INIT;
    r.streams_opened = m->streams_opened;
    r.messages_in = m->messages_in;
    r.messages_out = m->messages_out;
    r.completed = m->completed;
    r.failed = m->failed;
    r.retried = m->retried;
    r.pressure_signals = m->pressure_signals;
    r.calls_live = m->calls_live;
    free(s);
    uint8_t buf[128];
    size_t len = ledger__v1__stats_reply__get_packed_size(&r);
    ledger__v1__stats_reply__pack(&r, buf);
    bds_call_reply_bytes(call, buf, len);
    bds_call_done(call, BDS_OK, NULL);
}

/* ---- main --------------------------------------------------------------------------- */

static void on_ready(bds_server *srv, uint16_t port, void *ctx) {
    (void)srv;
    (void)ctx;
    char line[32];
    snprintf(line, sizeof line, "port %u", port);
    say_log(line);
}

static void add(const bds_method *m) {
    const char *why = NULL;
    if (bds_server_add_method(server, m, &why) != BDS_OK) {
        fprintf(stderr, "ledger_server: %s: %s\n", m->path, why);
        exit(2);
    }
}

int main(int argc, char **argv) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.listen = "127.0.0.1:50062";
    cfg.shards = 2;
    cfg.on_ready = on_ready;
    uint32_t capacity = 4, max_retries = 3;
    int i = 1;
    for (; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0) cfg.listen = argv[i + 1];
        else if (strcmp(argv[i], "--shards") == 0) cfg.shards = (uint32_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--capacity") == 0) capacity = (uint32_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--commit-ms") == 0) commit_ns = strtoull(argv[i + 1], NULL, 10) * 1000000;
        else if (strcmp(argv[i], "--max-retries") == 0) max_retries = (uint32_t)atoi(argv[i + 1]);
        else break;
    }
    if (i != argc) {
        fprintf(stderr, "usage: ledger_server [--listen HOST:PORT] [--shards N] [--capacity N] [--commit-ms MS]"
                        " [--max-retries N]\n");
        return 2;
    }
    const char *why = NULL;
    if (bds_server_create(&server, &cfg, &why) != BDS_OK) {
        fprintf(stderr, "ledger_server: %s\n", why ? why : "cannot create the server");
        return 2;
    }
    /* Apply's pipeline: past `capacity` ops in flight on a stream, more still
     * run (no client is refused or stalled) but each is signalled; failures
     * in the retryable mask are retried max_retries times, 5 ms apart. */
    bds_options apply = bds_default_options();
    apply.inbound.backpressure.policy = BDS_BP_SOFT_ALLOW_SIGNAL;
    apply.inbound.backpressure.capacity = capacity;
    apply.inbound.backpressure.queue_capacity = 0; /* QUEUE's alone */
    apply.retry.max_attempts = max_retries;
    apply.retry.backoff_ns = 5ull * 1000000;
    apply.retry.retryable = BDS_RETRYABLE_DEFAULT; /* UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED */
    add(&(bds_method){.size = sizeof(bds_method), .path = APPLY_PATH, .handler = apply_handler,
                      .key = account_key, .options = &apply});
    add(&(bds_method){.size = sizeof(bds_method), .path = "/ledger.v1.Ledger/Stats", .handler = stats_handler,
                      .kind = BDS_METHOD_UNARY});
    bds_status st = bds_server_run(server); /* until SIGTERM/SIGINT */
    bds_server_stats *s = malloc(sizeof *s);
    if (s && bds_server_get_stats(server, s) == BDS_OK) {
        const bds_method_stats *m = apply_stats(s);
        printf("stats %s: streams %llu messages_in %llu messages_out %llu completed %llu failed %llu retried %llu "
               "pressure_signals %llu\n",
               m->path, (unsigned long long)m->streams_opened, (unsigned long long)m->messages_in,
               (unsigned long long)m->messages_out, (unsigned long long)m->completed, (unsigned long long)m->failed,
               (unsigned long long)m->retried, (unsigned long long)m->pressure_signals);
    }
    free(s);
    bds_server_destroy(server);
    for (account *a = accounts, *next; a; a = next) {
        next = a->next;
        free(a->name);
        free(a);
    }
    return st == BDS_OK ? 0 : 1;
}
