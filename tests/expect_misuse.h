/* expect_misuse.h — the death test for API misuse, shared by the test
 * directories: misuse is loud and the same every time (SIGABRT, and stderr
 * names the call as "bidistream: <api>: misuse: ...").
 *
 * expect_misuse(scenario, api) runs scenario in a forked child with its
 * stderr captured, and asserts that the child aborted and named api. Bounded:
 * the child is killed by SIGALRM after 20 s, which fails the assertion with
 * what it printed. Include after <criterion/criterion.h>. */
#ifndef BDS_TESTS_EXPECT_MISUSE_H
#define BDS_TESTS_EXPECT_MISUSE_H

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void expect_misuse(void (*scenario)(void), const char *api) {
    int out[2];
    cr_assert_eq(pipe(out), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(out[0]);
        dup2(out[1], 2);
        alarm(20);
        scenario();
        _exit(0); /* the misuse went unnoticed */
    }
    close(out[1]);
    char err[8192];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof err - 1 && (r = read(out[0], err + n, sizeof err - 1 - n)) > 0) n += (size_t)r;
    err[n] = 0;
    close(out[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
              "the misuse of %s stops the process (exit %d, signal %d); stderr: %s", api,
              WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0, err);
    char want[128];
    snprintf(want, sizeof want, "bidistream: %s: misuse: ", api);
    cr_assert(strstr(err, want) != NULL, "stderr names %s: %s", api, err);
}

#endif
