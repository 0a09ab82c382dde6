/* assert.c — the one place an invariant failure is reported. */
#include <stdio.h>
#include <stdlib.h>

#include "base.h"

void bds__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "bidistream: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

void bds__misuse(const char *api, const char *what) {
    fprintf(stderr, "bidistream: %s: misuse: %s\n", api, what);
    fflush(stderr);
    abort();
}
