/* log.h — where the runtime's log lines go (bds_server_config.log). */
#ifndef BDS_IO_LOG_H
#define BDS_IO_LOG_H

#include "bidistream/server.h"

/* A sink and its threshold: lines above level are not even formatted. */
typedef struct bds_logger {
    int level;                                     /* BDS_LOG_* */
    void (*fn)(int level, const char *message, void *ctx); /* NULL: stderr */
    void *ctx;
} bds_logger;

/* Whether a line at level would be written (to skip costly arguments). */
static inline bool bds__log_on(const bds_logger *lg, int level) { return lg && level <= lg->level; }
/* Formats one line (no newline; cut at 1 KiB) and hands it to the sink; with
 * no sink, "bidistream: <line>\n" goes to stderr in one write. Thread: any
 * (the sink must be thread-safe: every shard logs). */
void bds__log(const bds_logger *lg, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
