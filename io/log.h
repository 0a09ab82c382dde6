/* log.h — the runtime's log lines (bds_server_config.log): one line per
 * event, in key=value form (logfmt).
 *
 * A line handed to the sink is `msg="<event>"` followed by the event's
 * fields, ` key=value` each; the default sink (stderr) writes
 * `level=<error|warn|info|debug> <line>\n`. The event text keeps the words a
 * reader (or a test) looks for ("listening on ...", "no send progress");
 * values with spaces or quotes are quoted and escaped (bds__log_quote). */
#ifndef BDS_IO_LOG_H
#define BDS_IO_LOG_H

#include <stddef.h>

#include "bidistream/server.h"

/* A sink and its threshold: lines above level are not even formatted. */
typedef struct bds_logger {
    int level;                                     /* BDS_LOG_* */
    void (*fn)(int level, const char *message, void *ctx); /* NULL: stderr */
    void *ctx;
} bds_logger;

/* Whether a line at level would be written (to skip costly arguments). */
static inline bool bds__log_on(const bds_logger *lg, int level) { return lg && level <= lg->level; }
/* Writes one event: msg (any text: quoted and escaped here) and, when fields
 * is not NULL, the printf-formatted fields after it (" key=value ...";
 * string values that may hold spaces, quotes or controls go through
 * bds__log_quote, ours may be written as key="%s"). Cut at 1 KiB. With no
 * sink, "level=<name> <line>\n" goes to stderr in one write. Thread: any (the
 * sink must be thread-safe: every shard logs). */
void bds__log(const bds_logger *lg, int level, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));
/* s as a logfmt value: bare when it is a non-empty run of printable ASCII
 * without spaces, '"' or '=', else quoted with '"', '\\' escaped and
 * controls as \n, \t or \xHH. Writes into buf (cut to fit, always
 * terminated) and returns it. */
const char *bds__log_quote(char *buf, size_t cap, const char *s);
/* The name of a level: "error", "warn", "info", "debug". */
const char *bds__log_level_name(int level);

#endif
