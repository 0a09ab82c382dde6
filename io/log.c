/* log.c — the runtime's log lines, to the application's sink or stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void bds__log(const bds_logger *lg, int level, const char *fmt, ...) {
    if (!bds__log_on(lg, level)) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (lg->fn) {
        lg->fn(level, line, lg->ctx);
        return;
    }
    /* One write per line, so that lines of different shards never interleave. */
    char out[sizeof line + 16];
    int m = snprintf(out, sizeof out, "bidistream: %s\n", line);
    if (m > (int)sizeof out - 1) {
        m = (int)sizeof out - 1;
        out[m - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, out, (size_t)m);
    (void)w;
}
