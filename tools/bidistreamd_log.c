/* tools/bidistreamd_log.c — bidistreamd's log lines and access log
 * (bidistreamd_log.h). */
#include "bidistreamd_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *level_name(int level) {
    switch (level) {
    case BDS_LOG_ERROR: return "error";
    case BDS_LOG_WARN: return "warn";
    case BDS_LOG_INFO: return "info";
    default: return "debug";
    }
}

/* "ts=2024-05-01T12:00:00.123Z level=<name> " into buf; returns its length. */
static size_t line_head(char *buf, size_t cap, int level) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(buf, cap, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_name(level));
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* One write per line: lines of different threads never interleave. */
static void line_write(char *buf, size_t len, size_t cap) {
    if (len > cap - 2) len = cap - 2; /* cut, room for the newline */
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

void bdsd_log_sink(int level, const char *message, void *ctx) {
    (void)ctx;
    char line[1400];
    size_t n = line_head(line, sizeof line, level);
    int m = snprintf(line + n, sizeof line - n, "%s", message);
    line_write(line, m < 0 ? n : n + (size_t)m, sizeof line);
}

/* s as a quoted logfmt value: '"' and '\\' escaped, controls as \n, \t, \xHH. */
static size_t quote(char *out, size_t cap, const char *s) {
    size_t o = 0;
    if (cap < 3) return 0;
    out[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[5];
        int n;
        if (*p == '"' || *p == '\\') n = snprintf(esc, sizeof esc, "\\%c", *p);
        else if (*p == '\n') n = snprintf(esc, sizeof esc, "\\n");
        else if (*p == '\t') n = snprintf(esc, sizeof esc, "\\t");
        else if (*p < 0x20 || *p == 0x7f) n = snprintf(esc, sizeof esc, "\\x%02x", *p);
        else n = snprintf(esc, sizeof esc, "%c", *p);
        if (o + (size_t)n + 2 > cap) break;
        memcpy(out + o, esc, (size_t)n);
        o += (size_t)n;
    }
    out[o++] = '"';
    out[o] = 0;
    return o;
}

void bdsd_log(int level, const char *msg, const char *fields, ...) {
    char line[1400];
    size_t n = line_head(line, sizeof line, level);
    n += (size_t)snprintf(line + n, sizeof line - n, "msg=");
    n += quote(line + n, 512, msg);
    if (fields && n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fields);
        int m = vsnprintf(line + n, sizeof line - n, fields, ap);
        va_end(ap);
        if (m > 0) n += (size_t)m;
    }
    line_write(line, n < sizeof line ? n : sizeof line - 1, sizeof line);
}

static const char *const code_names[17] = {
    "OK",        "CANCELLED",      "UNKNOWN",   "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
};

static void access_on_end(bds_stream *stream, const bds_stream_end_info *info, void *ctx) {
    (void)ctx;
    unsigned code = (unsigned)info->status;
    char message[300] = "";
    if (code != BDS_OK && info->message && info->message[0]) {
        char q[280];
        quote(q, sizeof q, info->message);
        snprintf(message, sizeof message, " message=%s", q);
    }
    bdsd_log(BDS_LOG_INFO, "access",
             "method=%s peer=%s status=%s messages_in=%llu messages_out=%llu bytes_in=%llu bytes_out=%llu "
             "duration_s=%.6f%s",
             bds_stream_method(stream), bds_stream_peer(stream), code < 17 ? code_names[code] : "UNKNOWN",
             (unsigned long long)info->messages_in, (unsigned long long)info->messages_out,
             (unsigned long long)info->bytes_in, (unsigned long long)info->bytes_out,
             (double)info->duration_ns / 1e9, message);
}

bds_status bdsd_access_log_add(bds_server *server, const char **why) {
    static const bds_interceptor icpt = {.size = sizeof icpt, .on_end = access_on_end};
    return bds_server_add_interceptor(server, &icpt, why);
}
