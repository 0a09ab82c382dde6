/* chat_server — chat rooms on libbidistream: chat.v1.Chat/Join (chat.proto).
 *
 * One bidi stream per connected user; every client message names a room.
 * What it shows, each where the code says why:
 *   - rooms as ordering keys: the key resolver returns a message's room, so a
 *     room's messages run one at a time, in arrival order, on the shard the
 *     room hashes to, while other rooms run in parallel (KEYED_FIFO);
 *   - an auth interceptor refusing a stream UNAUTHENTICATED at open, before
 *     any message is read, and one counting what leaves and logging each
 *     stream's end (an access log);
 *   - response headers and trailers (x-chat-user, x-chat-sent);
 *   - server pushes: what a member says is pushed to the room's other
 *     members with bds_stream_send, from the room's shard;
 *   - a cancel-aware timer: Typing arms bds_call_after to announce the end
 *     of typing; when the typist's stream goes first the timer runs at once,
 *     sees bds_call_cancelled and announces nothing;
 *   - a summary sent at the client's half-close (on_half_close), then OK.
 *
 *   chat_server [--listen HOST:PORT] [--shards N] [--typing-ms MS]
 *
 * Prints "port N" once it listens, then one line per event on stdout, and the
 * method's counters when it stops (SIGTERM/SIGINT). */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bidistream/bidistream.h>

#include "chat.pb-c.h"

#define JOIN_PATH "/chat.v1.Chat/Join"

static uint64_t typing_ns = 3000ull * 1000000; /* how long a Typing notice lasts */

/* ---- the event log ---------------------------------------------------------
 * Handlers run on several shards at once: one lock keeps lines whole. Lines
 * are flushed as they are made, so a reader sees them as things happen. */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void say_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&log_mu);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&log_mu);
    va_end(ap);
}

/* ---- users -----------------------------------------------------------------
 * A stand-in for a real token check (a signed token, a session store): the
 * tokens are fixed. The table is static, so a stream's user is a pointer any
 * shard may keep. */

typedef struct chat_user {
    const char *name;
    const char *token;
} chat_user;

static const chat_user users[] = {
    {"alice", "alice-token"}, {"bob", "bob-token"}, {"carol", "carol-token"}, {"dave", "dave-token"},
};

/* The user of "authorization: Bearer <token>", or NULL. */
static const chat_user *user_of(const bds_stream *stream) {
    size_t len;
    const uint8_t *v = bds_stream_metadata(stream, "authorization", &len);
    if (!v || len < 7 || memcmp(v, "Bearer ", 7) != 0) return NULL;
    for (size_t i = 0; i < sizeof users / sizeof users[0]; i++) {
        size_t n = strlen(users[i].token);
        if (len - 7 == n && memcmp(v + 7, users[i].token, n) == 0) return &users[i];
    }
    return NULL;
}

/* ---- rooms -----------------------------------------------------------------
 * A room's sequence numbers are touched only by the room's own messages,
 * which the pipeline runs one at a time (the room is their key): no lock.
 * Its member list is also changed by on_end (on the leaving stream's shard)
 * and read by typing timers (on the typist's shard), hence its mutex. Each
 * member is a stream reference (bds_stream_ref), so a push to a member that
 * just left is an error code, never a dangling pointer. Rooms live until the
 * program exits. */

typedef struct member {
    bds_stream *stream;
    const chat_user *user;
} member;

typedef struct room {
    struct room *next;
    char *name;
    uint64_t last_seq;   /* the room's key only */
    pthread_mutex_t mu;  /* members, n_members, cap_members */
    member *members;
    size_t n_members, cap_members;
} room;

static pthread_mutex_t rooms_mu = PTHREAD_MUTEX_INITIALIZER;
static room *rooms;

/* The room called name; created when create is set (NULL on no memory). */
static room *room_find(const char *name, bool create) {
    pthread_mutex_lock(&rooms_mu);
    room *r = rooms;
    while (r && strcmp(r->name, name) != 0) r = r->next;
    if (!r && create && (r = calloc(1, sizeof *r)) != NULL) {
        r->name = strdup(name);
        if (!r->name) {
            free(r);
            r = NULL;
        } else {
            pthread_mutex_init(&r->mu, NULL);
            r->next = rooms;
            rooms = r;
        }
    }
    pthread_mutex_unlock(&rooms_mu);
    return r;
}

static bool room_has(room *r, const bds_stream *stream) {
    for (size_t i = 0; i < r->n_members; i++)
        if (r->members[i].stream == stream) return true;
    return false;
}

/* Pushes msg to every member but except; returns how many it reached. A
 * member whose stream has ended is skipped (its on_end removes it). */
static size_t room_push(room *r, const bds_stream *except, const Chat__V1__ServerMessage *msg) {
    size_t len = chat__v1__server_message__get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return 0;
    chat__v1__server_message__pack(msg, buf);
    size_t reached = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n_members; i++) {
        if (r->members[i].stream == except) continue;
        /* bds_stream_send copies and queues: it never blocks under the lock. */
        if (bds_stream_send(r->members[i].stream, buf, len) == BDS_OK) reached++;
    }
    pthread_mutex_unlock(&r->mu);
    free(buf);
    return reached;
}

/* ---- messages on the wire --------------------------------------------------
 * The key resolver must return a view into the request's bytes, so it scans
 * the protobuf wire format for the room instead of unpacking a copy. */

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

/* Finds the length-delimited field `field` (its last occurrence, as protobuf
 * merges); *found tells whether it is there. Returns false if malformed. */
static bool pb_find(const uint8_t *msg, uint32_t len, uint32_t field, const uint8_t **val, uint32_t *val_len,
                    bool *found) {
    const uint8_t *p = msg, *end = msg + len;
    *found = false;
    while (p < end) {
        uint64_t tag, n;
        if (!pb_varint(&p, end, &tag)) return false;
        switch (tag & 7) {
        case 0: if (!pb_varint(&p, end, &n)) return false; break;
        case 1: if (end - p < 8) return false; p += 8; break;
        case 5: if (end - p < 4) return false; p += 4; break;
        case 2:
            if (!pb_varint(&p, end, &n) || n > (uint64_t)(end - p)) return false;
            if ((tag >> 3) == field) {
                *val = p;
                *val_len = (uint32_t)n;
                *found = true;
            }
            p += n;
            break;
        default: return false;
        }
    }
    return true;
}

/* A message's room is its key, except for Typing: a typing notice holds its
 * call until it expires, and under the room's key that would stop the whole
 * room for as long. Typing takes the empty key instead, which runs on the
 * stream's own shard, one at a time per stream. */
static bool room_key(const uint8_t *req, uint32_t len, const uint8_t **key, uint32_t *key_len, void *ctx) {
    (void)ctx;
    const uint8_t *v;
    uint32_t n;
    bool found;
    if (!pb_find(req, len, 4, &v, &n, &found)) return false; /* malformed: INTERNAL */
    if (found) {
        *key_len = 0;
        return true;
    }
    if (!pb_find(req, len, 1, key, key_len, &found)) return false;
    if (!found) *key_len = 0; /* no room: the handler answers INVALID_ARGUMENT */
    return true;
}

static bds_status reply_msg(bds_call *call, const Chat__V1__ServerMessage *msg) {
    uint8_t buf[512];
    size_t len = chat__v1__server_message__get_packed_size(msg);
    if (len > sizeof buf) return BDS_E_INVALID;
    chat__v1__server_message__pack(msg, buf);
    return bds_call_reply_bytes(call, buf, len);
}

/* ---- per stream: what its client was sent ------------------------------------
 * Counted by an interceptor on the stream's home shard, where on_half_close
 * and on_end run too: the counters need no lock, and they count what left,
 * the same messages the client reads. */

typedef struct tally {
    uint64_t posted;   /* Posted replies */
    uint64_t received; /* Message pushes */
} tally;

static bds_status auth_on_open(bds_stream *stream, const char **message, void *ctx) {
    (void)ctx;
    if (user_of(stream)) return BDS_OK;
    /* Refused here, nothing of the stream is read: no handler runs for it. */
    say_log("auth refused %s", bds_stream_peer(stream));
    *message = "missing or unknown bearer token";
    return BDS_UNAUTHENTICATED;
}

static bds_status tally_on_open(bds_stream *stream, const char **message, void *ctx) {
    (void)message;
    (void)ctx;
    tally *t = calloc(1, sizeof *t);
    if (!t) return BDS_RESOURCE_EXHAUSTED;
    bds_stream_set_user(stream, t);
    /* The user is known from the headers. Set here, before any message is
     * read, the header is queued before anything can reply: the stream's
     * rooms reply and push from other shards, and a header arriving after
     * their first message would be too late. */
    const chat_user *u = user_of(stream);
    bds_stream_set_header(stream, "x-chat-user", u->name, strlen(u->name));
    return BDS_OK;
}

static void tally_on_message_out(bds_stream *stream, const uint8_t *bytes, uint32_t len, void *ctx) {
    (void)ctx;
    tally *t = bds_stream_user(stream);
    const uint8_t *v;
    uint32_t n;
    bool found;
    if (pb_find(bytes, len, CHAT__V1__SERVER_MESSAGE__EVENT_POSTED, &v, &n, &found) && found) t->posted++;
    if (pb_find(bytes, len, CHAT__V1__SERVER_MESSAGE__EVENT_MESSAGE, &v, &n, &found) && found) t->received++;
}

/* The stream is over: an access log line, then its counters go. */
static void tally_on_end(bds_stream *stream, const bds_stream_end_info *info, void *ctx) {
    (void)ctx;
    say_log("access %s %s %s %s in %llu out %llu %llu ms", user_of(stream)->name, bds_stream_peer(stream),
            bds_stream_method(stream), bds_status_name(info->status), (unsigned long long)info->messages_in,
            (unsigned long long)info->messages_out, (unsigned long long)(info->duration_ns / 1000000));
    free(bds_stream_user(stream));
    bds_stream_set_user(stream, NULL);
}

/* ---- the handler ---------------------------------------------------------------- */

static void on_enter(bds_call *call, bds_stream *stream, const chat_user *u, room *r) {
    pthread_mutex_lock(&r->mu);
    /* Checked under the lock that on_end takes: a stream that ended while
     * this ran is not added after on_end removed it. */
    bool ok = !bds_stream_ended(stream);
    if (ok && !room_has(r, stream)) {
        if (r->n_members == r->cap_members) {
            size_t cap = r->cap_members ? 2 * r->cap_members : 8;
            member *m = realloc(r->members, cap * sizeof *m);
            if (m) {
                r->members = m;
                r->cap_members = cap;
            }
        }
        ok = r->n_members < r->cap_members;
        if (ok) r->members[r->n_members++] = (member){bds_stream_ref(stream), u};
    }
    uint32_t members = (uint32_t)r->n_members;
    pthread_mutex_unlock(&r->mu);
    if (!ok) {
        bds_call_done(call, bds_stream_ended(stream) ? BDS_CANCELLED : BDS_RESOURCE_EXHAUSTED, "cannot enter");
        return;
    }
    say_log("enter %s %s", u->name, r->name);
    Chat__V1__Entered e = CHAT__V1__ENTERED__INIT;
    e.room = r->name;
    e.members = members;
    Chat__V1__ServerMessage out = CHAT__V1__SERVER_MESSAGE__INIT;
    out.event_case = CHAT__V1__SERVER_MESSAGE__EVENT_ENTERED;
    out.entered = &e;
    reply_msg(call, &out);
    bds_call_done(call, BDS_OK, NULL);
}

static void on_say(bds_call *call, bds_stream *stream, const chat_user *u, room *r, const char *text) {
    pthread_mutex_lock(&r->mu);
    bool in_room = room_has(r, stream);
    pthread_mutex_unlock(&r->mu);
    if (!in_room) {
        bds_call_done(call, BDS_FAILED_PRECONDITION, "enter the room first");
        return;
    }
    /* This room's messages run one at a time: the numbers follow arrival
     * order and every member receives the room's messages in that order. */
    uint64_t seq = ++r->last_seq;
    Chat__V1__Message m = CHAT__V1__MESSAGE__INIT;
    m.room = r->name;
    m.from = (char *)u->name;
    m.text = (char *)text;
    m.seq = seq;
    Chat__V1__ServerMessage push = CHAT__V1__SERVER_MESSAGE__INIT;
    push.event_case = CHAT__V1__SERVER_MESSAGE__EVENT_MESSAGE;
    push.message = &m;
    size_t reached = room_push(r, stream, &push);
    say_log("say %s %s seq %llu reached %zu", u->name, r->name, (unsigned long long)seq, reached);
    Chat__V1__Posted p = CHAT__V1__POSTED__INIT;
    p.room = r->name;
    p.seq = seq;
    Chat__V1__ServerMessage out = CHAT__V1__SERVER_MESSAGE__INIT;
    out.event_case = CHAT__V1__SERVER_MESSAGE__EVENT_POSTED;
    out.posted = &p;
    reply_msg(call, &out);
    bds_call_done(call, BDS_OK, NULL);
}

static void typing_notice(room *r, const bds_stream *except, const chat_user *u, bool active) {
    Chat__V1__TypingNotice t = CHAT__V1__TYPING_NOTICE__INIT;
    t.room = r->name;
    t.user = (char *)u->name;
    t.active = active;
    Chat__V1__ServerMessage push = CHAT__V1__SERVER_MESSAGE__INIT;
    push.event_case = CHAT__V1__SERVER_MESSAGE__EVENT_TYPING;
    push.typing = &t;
    room_push(r, except, &push);
}

/* The Typing call's timer: runs after typing_ns, or at once when the typist's
 * stream ends first. Then nobody is typing any more, and telling the room
 * "stopped typing" for a user who left would be a message from a stream that
 * no longer exists: nothing is sent. */
static void typing_over(bds_call *call, void *ctx) {
    room *r = ctx;
    bds_stream *stream = bds_call_stream(call);
    const chat_user *u = user_of(stream);
    if (bds_call_cancelled(call)) {
        say_log("typing %s %s cancelled: the stream is gone, no notice sent", u->name, r->name);
        bds_call_done(call, BDS_OK, NULL); /* any status: nothing reaches the client now */
        return;
    }
    typing_notice(r, stream, u, false);
    say_log("typing %s %s expired", u->name, r->name);
    bds_call_done(call, BDS_OK, NULL);
}

static void on_typing(bds_call *call, bds_stream *stream, const chat_user *u, room *r) {
    pthread_mutex_lock(&r->mu);
    bool in_room = room_has(r, stream);
    pthread_mutex_unlock(&r->mu);
    if (!in_room) { /* typing in a room one is not in: nothing to tell */
        bds_call_done(call, BDS_OK, NULL);
        return;
    }
    typing_notice(r, stream, u, true);
    say_log("typing %s %s started", u->name, r->name);
    /* No thread and no sleep: the timer belongs to the call, on this shard,
     * and the library runs it early if the stream goes. The call stays open
     * until then, holding this stream's empty key (a second Typing waits). */
    if (bds_call_after(call, typing_ns, typing_over, r) != BDS_OK) bds_call_done(call, BDS_OK, NULL);
}

static void join_handler(bds_call *call, void *ctx) {
    (void)ctx;
    uint32_t len;
    const uint8_t *req = bds_call_request(call, &len);
    Chat__V1__ClientMessage *msg = chat__v1__client_message__unpack(NULL, len, req);
    if (!msg) {
        bds_call_done(call, BDS_INVALID_ARGUMENT, "not a chat.v1.ClientMessage");
        return;
    }
    bds_stream *stream = bds_call_stream(call);
    const chat_user *u = user_of(stream); /* the interceptor let only known users in */
    room *r = msg->room[0] ? room_find(msg->room, msg->action_case == CHAT__V1__CLIENT_MESSAGE__ACTION_ENTER) : NULL;
    if (!msg->room[0]) {
        bds_call_done(call, BDS_INVALID_ARGUMENT, "a message names its room");
    } else if (!r && msg->action_case == CHAT__V1__CLIENT_MESSAGE__ACTION_ENTER) {
        bds_call_done(call, BDS_RESOURCE_EXHAUSTED, "out of memory");
    } else if (!r) {
        bds_call_done(call, BDS_FAILED_PRECONDITION, "enter the room first");
    } else if (msg->action_case == CHAT__V1__CLIENT_MESSAGE__ACTION_ENTER) {
        on_enter(call, stream, u, r);
    } else if (msg->action_case == CHAT__V1__CLIENT_MESSAGE__ACTION_SAY) {
        on_say(call, stream, u, r, msg->say->text);
    } else if (msg->action_case == CHAT__V1__CLIENT_MESSAGE__ACTION_TYPING) {
        on_typing(call, stream, u, r);
    } else {
        bds_call_done(call, BDS_INVALID_ARGUMENT, "no action");
    }
    chat__v1__client_message__free_unpacked(msg, NULL);
}

/* The client half-closed and each of its messages has been handled (its
 * Typing notices expired too): the summary is its last message, the sent
 * count goes in a trailer, and the stream ends OK. */
static void join_on_half_close(bds_stream *stream, void *ctx) {
    (void)ctx;
    tally *t = bds_stream_user(stream);
    Chat__V1__Summary s = CHAT__V1__SUMMARY__INIT;
    s.posted = t->posted;
    s.received = t->received;
    Chat__V1__ServerMessage out = CHAT__V1__SERVER_MESSAGE__INIT;
    out.event_case = CHAT__V1__SERVER_MESSAGE__EVENT_SUMMARY;
    out.summary = &s;
    uint8_t buf[64];
    size_t len = chat__v1__server_message__get_packed_size(&out);
    chat__v1__server_message__pack(&out, buf);
    bds_stream_send(stream, buf, len);
    char sent[24];
    int n = snprintf(sent, sizeof sent, "%llu", (unsigned long long)t->posted);
    bds_stream_set_trailer(stream, "x-chat-sent", sent, (size_t)n);
    bds_stream_finish(stream, BDS_OK, NULL);
    say_log("half-close %s: posted %llu received %llu", user_of(stream)->name, (unsigned long long)t->posted,
            (unsigned long long)t->received);
}

/* The stream is over: leave every room, dropping the rooms' references. */
static void join_on_end(bds_stream *stream, bds_status status, const char *message, void *ctx) {
    (void)ctx;
    pthread_mutex_lock(&rooms_mu);
    for (room *r = rooms; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n_members; i++) {
            if (r->members[i].stream != stream) continue;
            bds_stream_unref(stream);
            r->members[i] = r->members[--r->n_members];
            break;
        }
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&rooms_mu);
    if (status != BDS_OK) say_log("end %s %s \"%s\"", user_of(stream)->name, bds_status_name(status), message);
}

/* ---- main ------------------------------------------------------------------------- */

static void on_ready(bds_server *server, uint16_t port, void *ctx) {
    (void)server;
    (void)ctx;
    say_log("port %u", port);
}

static void print_stats(const bds_server *server) {
    bds_server_stats *s = malloc(sizeof *s); /* ~20 KiB: not on the stack */
    if (!s) return;
    bds_server_get_stats(server, s);
    for (uint32_t i = 0; i < s->n_methods; i++) {
        const bds_method_stats *m = &s->methods[i];
        if (strcmp(m->path, JOIN_PATH) != 0) continue;
        say_log("stats %s: opened %llu refused %llu ended %llu ok %llu messages_in %llu messages_out %llu", m->path,
                (unsigned long long)m->streams_opened, (unsigned long long)m->streams_refused,
                (unsigned long long)m->streams_ended, (unsigned long long)m->streams_ok,
                (unsigned long long)m->messages_in, (unsigned long long)m->messages_out);
    }
    free(s);
}

int main(int argc, char **argv) {
    bds_server_config cfg;
    bds_server_config_default(&cfg);
    cfg.listen = "127.0.0.1:50061";
    cfg.shards = 2;
    cfg.on_ready = on_ready;
    int i = 1;
    for (; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0) cfg.listen = argv[i + 1];
        else if (strcmp(argv[i], "--shards") == 0) cfg.shards = (uint32_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--typing-ms") == 0) typing_ns = strtoull(argv[i + 1], NULL, 10) * 1000000;
        else break;
    }
    if (i != argc) {
        fprintf(stderr, "usage: chat_server [--listen HOST:PORT] [--shards N] [--typing-ms MS]\n");
        return 2;
    }
    bds_server *server;
    const char *why = NULL;
    if (bds_server_create(&server, &cfg, &why) != BDS_OK) {
        fprintf(stderr, "chat_server: %s\n", why ? why : "cannot create the server");
        return 2;
    }
    /* The method's own interceptors: auth first, so tally only sees streams
     * it lets in (the built-in health service stays open). */
    static const bds_interceptor auth = {.size = sizeof auth, .on_open = auth_on_open};
    static const bds_interceptor count = {.size = sizeof count, .on_open = tally_on_open,
                                          .on_message_out = tally_on_message_out, .on_end = tally_on_end};
    static const bds_interceptor *const interceptors[] = {&auth, &count};
    bds_method join = {
        .size = sizeof join,
        .path = JOIN_PATH,
        .handler = join_handler,
        .key = room_key,
        .on_half_close = join_on_half_close,
        .on_end = join_on_end,
        .interceptors = interceptors,
        .n_interceptors = 2,
    };
    if (bds_server_add_method(server, &join, &why) != BDS_OK) {
        fprintf(stderr, "chat_server: %s\n", why);
        return 2;
    }
    bds_status st = bds_server_run(server); /* until SIGTERM/SIGINT */
    print_stats(server);
    /* Every stream has ended (on_end emptied the lists); references still
     * held could only be dropped now, before the server goes. */
    for (room *r = rooms, *next; r; r = next) {
        next = r->next;
        for (size_t k = 0; k < r->n_members; k++) bds_stream_unref(r->members[k].stream);
        pthread_mutex_destroy(&r->mu);
        free(r->members);
        free(r->name);
        free(r);
    }
    bds_server_destroy(server);
    return st == BDS_OK ? 0 : 1;
}
