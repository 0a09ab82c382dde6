/* test_client.c — tools/bds against an independent gRPC server.
 *
 * The server is tests/e2e/ref_server.py (Debian's python3-grpcio, written from
 * SPEC.md), started per test on 127.0.0.1 with an ephemeral port and stopped
 * with SIGTERM (it must exit 0). bds runs as a child process; the tests check
 * its stdout, its one-line errors on stderr and its exit status. Everything is
 * bounded in time: a child that outlives its budget is killed and fails the
 * test. Paths come from tests/tools/tests.cmake (BDS_TEST_*). */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define CHILD_BUDGET_MS 60000

/* ---- child processes ------------------------------------------------------------------------ */

typedef struct child {
    pid_t pid;
    int out_fd, err_fd; /* read ends, -1 once at EOF */
} child;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static child spawn(char *const argv[]) {
    int out[2], err[2];
    cr_assert_eq(pipe(out), 0);
    cr_assert_eq(pipe(err), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, err[0]);
    child c = {.out_fd = out[0], .err_fd = err[0]};
    int rc = posix_spawn(&c.pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "spawn %s: %s", argv[0], strerror(rc));
    close(out[1]);
    close(err[1]);
    return c;
}

typedef struct text {
    char buf[1 << 16];
    size_t len;
} text;

/* Reads what is there into t (NUL-terminated); returns false at EOF. */
static bool read_some(int fd, text *t) {
    if (t->len + 1 >= sizeof t->buf) return false;
    ssize_t n = read(fd, t->buf + t->len, sizeof t->buf - 1 - t->len);
    if (n <= 0) return false;
    t->len += (size_t)n;
    t->buf[t->len] = 0;
    return true;
}

/* Collects both outputs until the child closes them, then its exit status. */
static int finish(child *c, text *out, text *err) {
    out->len = err->len = 0;
    out->buf[0] = err->buf[0] = 0;
    int64_t deadline = now_ms() + CHILD_BUDGET_MS;
    while (c->out_fd >= 0 || c->err_fd >= 0) {
        struct pollfd p[2] = {{.fd = c->out_fd, .events = POLLIN}, {.fd = c->err_fd, .events = POLLIN}};
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            kill(c->pid, SIGKILL);
            cr_assert(false, "child %d over its %d ms budget; stdout: %s", (int)c->pid, CHILD_BUDGET_MS, out->buf);
        }
        if (poll(p, 2, (int)left) <= 0) continue;
        if (p[0].revents && !read_some(c->out_fd, out)) close(c->out_fd), c->out_fd = -1;
        if (p[1].revents && !read_some(c->err_fd, err)) close(c->err_fd), c->err_fd = -1;
    }
    int status;
    cr_assert_eq(waitpid(c->pid, &status, 0), c->pid);
    cr_assert(WIFEXITED(status), "child killed by signal %d", WTERMSIG(status));
    cr_assert_null(strstr(err->buf, "Sanitizer"), "sanitizer report: %s", err->buf);
    return WEXITSTATUS(status);
}

/* ---- the reference server --------------------------------------------------------------------- */

typedef struct ref_server {
    child c;
    char addr[64];
    text err; /* its stderr up to the listening line */
} ref_server;

static ref_server srv;

/* Starts ref_server.py with extra flags (NULL-terminated) and waits for its listening line. */
static void server_start(const char *flag, ...) {
    char *argv[32] = {BDS_TEST_PYTHON, BDS_TEST_REF_SERVER, "--listen", "127.0.0.1:0"};
    int argc = 4;
    va_list ap;
    va_start(ap, flag);
    for (const char *f = flag; f && argc < 31; f = va_arg(ap, const char *)) argv[argc++] = (char *)f;
    va_end(ap);
    argv[argc] = NULL;
    memset(&srv, 0, sizeof srv);
    srv.c = spawn(argv);
    int64_t deadline = now_ms() + 20000;
    const char *line;
    while (!(line = strstr(srv.err.buf, "listening on 127.0.0.1:")) || !strchr(line, '\n')) {
        struct pollfd p = {.fd = srv.c.err_fd, .events = POLLIN};
        int64_t left = deadline - now_ms();
        cr_assert_gt(left, 0, "ref_server did not start: %s", srv.err.buf);
        if (poll(&p, 1, (int)left) > 0) {
            cr_assert(read_some(srv.c.err_fd, &srv.err), "ref_server exited: %s", srv.err.buf);
        }
    }
    int port = atoi(line + strlen("listening on 127.0.0.1:"));
    cr_assert_gt(port, 0);
    snprintf(srv.addr, sizeof srv.addr, "127.0.0.1:%d", port);
}

/* SIGTERM; the server must shut down gracefully and exit 0. */
static void server_stop(void) {
    if (srv.c.pid <= 0) return;
    kill(srv.c.pid, SIGTERM);
    text out, err;
    cr_assert_eq(finish(&srv.c, &out, &err), 0, "ref_server: %s", err.buf);
    srv.c.pid = 0;
}

static void default_server(void) {
    server_start(NULL);
}

/* ---- bds ------------------------------------------------------------------------------------- */

static text out, err;

/* Runs bds with args (NULL-terminated); returns its exit status, output in out/err. */
static int bds(const char *arg, ...) {
    char *argv[40] = {BDS_TEST_BDS};
    int argc = 1;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && argc < 39; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    child c = spawn(argv);
    return finish(&c, &out, &err);
}

static int count_lines(const char *s, const char *prefix) {
    int n = 0;
    size_t pl = strlen(prefix);
    for (const char *p = s; *p;) {
        if (strncmp(p, prefix, pl) == 0) n++;
        const char *nl = strchr(p, '\n');
        if (!nl) break;
        p = nl + 1;
    }
    return n;
}

static const char *last_line(const char *s) {
    static char line[1024];
    size_t n = strlen(s);
    while (n && s[n - 1] == '\n') n--;
    size_t b = n;
    while (b && s[b - 1] != '\n') b--;
    snprintf(line, sizeof line, "%.*s", (int)(n - b), s + b);
    return line;
}

/* ---- process ----------------------------------------------------------------------------------- */

Test(tool_client, process_replies_in_order_then_status_ok, .init = default_server, .fini = server_stop,
     .timeout = 120) {
    cr_assert_eq(bds("process", "--addr", srv.addr, "--key", "k", "--count", "10", "--payload", "hello", NULL), 0,
                 "%s%s", out.buf, err.buf);
    char want[4096] = "";
    for (int i = 1; i <= 10; i++) {
        char line[64];
        snprintf(line, sizeof line, "reply key=k seq=%d payload=hello\n", i);
        strcat(want, line);
    }
    strcat(want, "status OK\n");
    cr_assert_str_eq(out.buf, want);
    cr_assert_str_eq(err.buf, "");
}

Test(tool_client, process_many_keys_with_work_every_seq_once_in_key_order, .init = default_server,
     .fini = server_stop, .timeout = 120) {
    cr_assert_eq(bds("process", "--addr", srv.addr, "--key", "q", "--keys", "4", "--count", "40", "--work-us", "2000",
                     NULL),
                 0, "%s%s", out.buf, err.buf);
    cr_assert_eq(count_lines(out.buf, "reply key=q"), 40, "%s", out.buf);
    int last_seq[4] = {0};
    bool seen[41] = {false};
    for (const char *p = out.buf; (p = strstr(p, "reply key=q")) != NULL; p++) {
        int k, seq;
        cr_assert_eq(sscanf(p, "reply key=q%d seq=%d", &k, &seq), 2);
        cr_assert(k >= 0 && k < 4 && seq >= 1 && seq <= 40);
        cr_assert_eq((seq - 1) % 4, k, "seq %d on key q%d", seq, k); /* round robin */
        cr_assert_not(seen[seq]);
        seen[seq] = true;
        cr_assert_gt(seq, last_seq[k], "key q%d out of order", k);
        last_seq[k] = seq;
    }
    cr_assert_str_eq(last_line(out.buf), "status OK");
}

Test(tool_client, process_count_zero_half_closes_at_once_and_is_ok, .init = default_server, .fini = server_stop,
     .timeout = 120) {
    cr_assert_eq(bds("process", "--addr", srv.addr, "--count", "0", NULL), 0, "%s%s", out.buf, err.buf);
    cr_assert_str_eq(out.buf, "status OK\n");
}

Test(tool_client, process_fail_prints_the_status_and_message_and_exits_1, .init = default_server,
     .fini = server_stop, .timeout = 120) {
    cr_assert_eq(bds("process", "--addr", srv.addr, "--fail", "--count", "1", NULL), 1, "%s%s", out.buf, err.buf);
    cr_assert(strncmp(last_line(out.buf), "status INTERNAL: ", 17) == 0, "%s", out.buf);
    cr_assert_gt(strlen(last_line(out.buf)), 17, "no message: %s", out.buf);
}

Test(tool_client, process_bytes_that_would_break_the_line_are_escaped, .init = default_server,
     .fini = server_stop, .timeout = 120) {
    cr_assert_eq(bds("process", "--addr", srv.addr, "--count", "1", "--key", "a\tb", "--payload", "x\ny\\z", NULL),
                 0, "%s%s", out.buf, err.buf);
    cr_assert_str_eq(out.buf, "reply key=a\\x09b seq=1 payload=x\\x0ay\\x5cz\nstatus OK\n");
}

Test(tool_client, process_client_deadline_is_deadline_exceeded, .init = default_server, .fini = server_stop,
     .timeout = 120) {
    int64_t t0 = now_ms();
    cr_assert_eq(bds("process", "--addr", srv.addr, "--count", "1", "--work-us", "5000000", "--timeout", "300ms",
                     NULL),
                 1, "%s%s", out.buf, err.buf);
    cr_assert(strncmp(last_line(out.buf), "status DEADLINE_EXCEEDED: ", 26) == 0, "%s", out.buf);
    cr_assert_lt(now_ms() - t0, 4000, "the deadline was not kept");
}

static void small_messages_server(void) {
    server_start("--max-message-bytes", "1024", NULL);
}

Test(tool_client, process_message_over_the_server_limit_is_resource_exhausted, .init = small_messages_server,
     .fini = server_stop, .timeout = 120) {
    char payload[2001];
    memset(payload, 'p', 2000);
    payload[2000] = 0;
    cr_assert_eq(bds("process", "--addr", srv.addr, "--count", "1", "--payload", payload, NULL), 1, "%s", out.buf);
    cr_assert(strncmp(last_line(out.buf), "status RESOURCE_EXHAUSTED: ", 27) == 0, "%s", out.buf);
}

static void hard_reject_server(void) {
    server_start("--inbound-policy", "hard-reject", "--inbound-capacity", "1", NULL);
}

Test(tool_client, process_hard_reject_when_full_is_resource_exhausted, .init = hard_reject_server,
     .fini = server_stop, .timeout = 120) {
    /* Two keys: the first holds the only execution slot for 500 ms, the second is refused. */
    cr_assert_eq(bds("process", "--addr", srv.addr, "--keys", "2", "--count", "2", "--work-us", "500000", NULL), 1,
                 "%s", out.buf);
    cr_assert(strncmp(last_line(out.buf), "status RESOURCE_EXHAUSTED: ", 27) == 0, "%s", out.buf);
}

/* ---- health ------------------------------------------------------------------------------------ */

Test(tool_client, health_serving_prints_serving_and_exits_0, .init = default_server, .fini = server_stop,
     .timeout = 120) {
    cr_assert_eq(bds("health", "--addr", srv.addr, NULL), 0, "%s%s", out.buf, err.buf);
    cr_assert_str_eq(out.buf, "SERVING\n");
    cr_assert_eq(bds("health", "--addr", srv.addr, "--service", "bidistream.v1.Pipeline", NULL), 0, "%s", out.buf);
    cr_assert_str_eq(out.buf, "SERVING\n");
}

Test(tool_client, health_unknown_service_is_not_found_and_exits_1, .init = default_server, .fini = server_stop,
     .timeout = 120) {
    cr_assert_eq(bds("health", "--addr", srv.addr, "--service", "no.Such", NULL), 1, "%s%s", out.buf, err.buf);
    cr_assert(strncmp(out.buf, "status NOT_FOUND: ", 18) == 0, "%s", out.buf);
}

/* grpcio percent-encodes grpc-message ('%' and every byte outside 0x20..0x7E):
 * bds prints it decoded, UTF-8 and all. */
Test(tool_client, grpc_message_is_percent_decoded, .init = default_server, .fini = server_stop, .timeout = 120) {
    cr_assert_eq(bds("health", "--addr", srv.addr, "--service", "caf\xc3\xa9 100%", NULL), 1, "%s%s", out.buf,
                 err.buf);
    cr_assert_str_eq(out.buf, "status NOT_FOUND: unknown service 'caf\xc3\xa9 100%'\n");
}

Test(tool_client, watch_prints_serving_then_not_serving_when_shutdown_begins, .init = default_server,
     .fini = server_stop, .timeout = 120) {
    char *argv[] = {BDS_TEST_BDS, "watch", "--addr", srv.addr, NULL};
    child c = spawn(argv);
    text wout = {.len = 0};
    int64_t deadline = now_ms() + 20000;
    while (!strstr(wout.buf, "SERVING\n")) {
        struct pollfd p = {.fd = c.out_fd, .events = POLLIN};
        cr_assert_gt(deadline - now_ms(), 0, "watch printed: %s", wout.buf);
        if (poll(&p, 1, 200) > 0) cr_assert(read_some(c.out_fd, &wout), "watch ended: %s", wout.buf);
    }
    kill(srv.c.pid, SIGTERM); /* shutdown begins: NOT_SERVING, then the server goes */
    text rest, werr;
    int rc = finish(&c, &rest, &werr);
    char all[sizeof wout.buf + sizeof rest.buf];
    snprintf(all, sizeof all, "%s%s", wout.buf, rest.buf);
    cr_assert(strncmp(all, "SERVING\nNOT_SERVING\nstatus ", 27) == 0, "watch printed: %s", all);
    cr_assert_eq(count_lines(all, "status "), 1);
    cr_assert_eq(rc, strstr(all, "status OK") ? 0 : 1);
    server_stop();
}

/* ---- errors ------------------------------------------------------------------------------------ */

/* A port nobody listens on: bound, then closed. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

Test(tool_client, unreachable_server_is_one_line_on_stderr_and_exit_1, .timeout = 60) {
    char addr[64], want[128];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", free_port());
    snprintf(want, sizeof want, "bds: cannot reach %s: Connection refused\n", addr);
    static const char *const cmds[] = {"process", "health", "watch"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(bds(cmds[i], "--addr", addr, NULL), 1, "%s", cmds[i]);
        cr_assert_str_eq(err.buf, want);
        cr_assert_str_eq(out.buf, "");
    }
    cr_assert_eq(bds("health", "--addr", "no-such-host.invalid:1", NULL), 1);
    cr_assert(strncmp(err.buf, "bds: cannot reach no-such-host.invalid:1: ", 42) == 0, "%s", err.buf);
    cr_assert_eq(count_lines(err.buf, ""), 1);
}

/* Answers one connection like an HTTP/1.1 server would, then closes it. */
static void *http1_peer(void *arg) {
    int lfd = *(int *)arg;
    int fd = accept(lfd, NULL, NULL);
    if (fd >= 0) {
        char buf[256];
        (void)!read(fd, buf, sizeof buf);
        static const char resp[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        (void)!write(fd, resp, sizeof resp - 1);
        close(fd);
    }
    return NULL;
}

Test(tool_client, a_server_that_is_not_http2_gives_unavailable_and_exit_1, .timeout = 60) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 1), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, http1_peer, &lfd), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(a.sin_port));
    cr_assert_eq(bds("health", "--addr", addr, NULL), 1, "%s%s", out.buf, err.buf);
    cr_assert(strncmp(out.buf, "status UNAVAILABLE: ", 20) == 0, "%s", out.buf);
    cr_assert_eq(count_lines(out.buf, ""), 1);
    pthread_join(t, NULL);
    close(lfd);
}

Test(tool_client, bad_usage_is_one_line_and_exit_2, .timeout = 60) {
    static const char *const bad[][4] = {
        {"nope", NULL},
        {"process", "--count", "-1", NULL},
        {"process", "--count", "x", NULL},
        {"process", "--keys", "0", NULL},
        {"process", "--work-us", "99999999999", NULL},
        {"process", "--bogus", "1", NULL},
        {"process", "--service", "x", NULL},
        {"health", "--count", "3", NULL},
        {"health", "--fail", NULL},
        {"process", "--timeout", "soon", NULL},
        {"process", "--timeout", "0", NULL},
        {"process", "--addr", NULL},
        {"watch", "extra", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[6] = {BDS_TEST_BDS};
        for (int j = 0; j < 4 && bad[i][j]; j++) argv[j + 1] = (char *)bad[i][j];
        child c = spawn(argv);
        cr_assert_eq(finish(&c, &out, &err), 2, "%s %s: %s", bad[i][0], bad[i][1] ? bad[i][1] : "", err.buf);
        cr_assert_eq(count_lines(err.buf, ""), 1, "%s", err.buf);
        cr_assert(strncmp(err.buf, "bds: ", 5) == 0, "%s", err.buf);
        cr_assert_str_eq(out.buf, "");
    }
    cr_assert_eq(bds(NULL), 2);
    cr_assert(strncmp(err.buf, "usage: bds", 10) == 0);
    cr_assert_eq(bds("--help", NULL), 0);
    cr_assert(strncmp(out.buf, "usage: bds", 10) == 0);
    cr_assert_eq(bds("process", "--help", NULL), 0);
    cr_assert_eq(bds("--version", NULL), 0);
    cr_assert(strncmp(out.buf, "bds ", 4) == 0);
}
