/* log.c — the runtime's log lines, to the application's sink or stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *bds__log_level_name(int level) {
    switch (level) {
    case BDS_LOG_ERROR: return "error";
    case BDS_LOG_WARN: return "warn";
    case BDS_LOG_INFO: return "info";
    default: return "debug";
    }
}

const char *bds__log_quote(char *buf, size_t cap, const char *s) {
    if (!cap) return buf;
    bool bare = *s != 0;
    for (const char *p = s; *p && bare; p++)
        bare = *p > 0x20 && *p < 0x7f && *p != '"' && *p != '=' && *p != '\\';
    size_t o = 0;
    if (bare) {
        snprintf(buf, cap, "%s", s);
        return buf;
    }
    /* Quoted: keep room for the closing quote and the NUL. */
    if (cap < 3) {
        buf[0] = 0;
        return buf;
    }
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[5];
        size_t n;
        if (*p == '"' || *p == '\\') n = (size_t)snprintf(esc, sizeof esc, "\\%c", *p);
        else if (*p == '\n') n = (size_t)snprintf(esc, sizeof esc, "\\n");
        else if (*p == '\t') n = (size_t)snprintf(esc, sizeof esc, "\\t");
        else if (*p < 0x20 || *p == 0x7f) n = (size_t)snprintf(esc, sizeof esc, "\\x%02x", *p);
        else {
            esc[0] = (char)*p;
            n = 1;
        }
        if (o + n + 2 > cap) break;
        memcpy(buf + o, esc, n);
        o += n;
    }
    buf[o++] = '"';
    buf[o] = 0;
    return buf;
}

void bds__log(const bds_logger *lg, int level, const char *msg, const char *fields, ...) {
    if (!bds__log_on(lg, level)) return;
    char line[1024];
    char q[512];
    int n = snprintf(line, sizeof line, "msg=%s", bds__log_quote(q, sizeof q, msg));
    if (n < 0) return;
    /* The event text always quoted: a reader greps msg="..." whatever it says. */
    if (line[4] != '"') n = snprintf(line, sizeof line, "msg=\"%s\"", q);
    if (fields && (size_t)n < sizeof line - 1) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fields);
        vsnprintf(line + n, sizeof line - (size_t)n, fields, ap);
        va_end(ap);
    }
    if (lg->fn) {
        lg->fn(level, line, lg->ctx);
        return;
    }
    /* One write per line, so that lines of different shards never interleave. */
    char out[sizeof line + 16];
    int m = snprintf(out, sizeof out, "level=%s %s\n", bds__log_level_name(level), line);
    if (m > (int)sizeof out - 1) {
        m = (int)sizeof out - 1;
        out[m - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, out, (size_t)m);
    (void)w;
}
