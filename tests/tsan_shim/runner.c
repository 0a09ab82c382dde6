/* runner.c — runs the tests registered through the shim criterion.h, one
 * after the other in this process (see criterion/criterion.h for why). A
 * test's .timeout arms alarm(): a hung test (a lost wake-up, say) kills the
 * process and so fails. Prints one line per test and a closing count. */
#include <math.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include "criterion/criterion.h"

struct shim_test {
    const char *suite, *name;
    void (*fn)(void);
    const struct criterion_test_extra_data *extra;
};

static struct shim_test tests[1024];
static int n_tests;
static jmp_buf skip_jmp;
static const char *current;

void bds_shim_register(const char *suite, const char *name, void (*fn)(void),
                       const struct criterion_test_extra_data *extra) {
    if (n_tests == 1024) abort();
    tests[n_tests++] = (struct shim_test){suite, name, fn, extra};
}

void bds_shim_fail(const char *file, int line, const char *expr, const char *fmt, ...) {
    fprintf(stderr, "[FAIL] %s: %s:%d: assertion failed: %s", current, file, line, expr);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1);
}

void bds_shim_skip(const char *fmt, ...) {
    (void)fmt;
    longjmp(skip_jmp, 1);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "[FAIL] test timed out\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(2);
}

/* Returns true when the test ran to the end, false when it skipped itself. */
static bool run_one(const struct shim_test *t) {
    if (setjmp(skip_jmp) != 0) return false;
    if (t->extra->init) t->extra->init();
    t->fn();
    if (t->extra->fini) t->extra->fini();
    return true;
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--filter=", 9) == 0) filter = argv[i] + 9;
    }
    signal(SIGALRM, on_alarm);
    int passed = 0, skipped = 0;
    char full[256];
    for (int i = 0; i < n_tests; i++) {
        struct shim_test *t = &tests[i];
        snprintf(full, sizeof full, "%s::%s", t->suite, t->name);
        if (filter && !strstr(full, filter)) continue;
        current = full;
        if (t->extra->disabled || t->extra->signal) { /* signal tests need a fork per test */
            printf("[SKIP] %s\n", full);
            skipped++;
            continue;
        }
        alarm(t->extra->timeout > 0 ? (unsigned)ceil(t->extra->timeout) : 0);
        if (run_one(t)) {
            printf("[PASS] %s\n", full);
            passed++;
        } else {
            printf("[SKIP] %s\n", full);
            skipped++;
        }
        alarm(0);
        fflush(stdout);
    }
    printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: 0 | Skipped: %d\n", passed + skipped, passed, skipped);
    return 0;
}
