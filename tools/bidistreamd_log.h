/* tools/bidistreamd_log.h — bidistreamd's log lines: one line per event on
 * stderr, in key=value form (logfmt), and the access log.
 *
 *   ts=2024-05-01T12:00:00.123Z level=info msg="listening on 127.0.0.1:50051 with 2 shards" addr=... shards=2
 *
 * ts is UTC wall-clock time with milliseconds; level one of error, warn,
 * info, debug; msg the event, always quoted; the event's fields follow. The
 * library's own lines (bds_server_config.log) arrive as `msg="..." fields`
 * and get the same ts and level. Each line is one write(2), so lines of
 * different shards never interleave. Public API only. */
#ifndef BDS_TOOLS_BIDISTREAMD_LOG_H
#define BDS_TOOLS_BIDISTREAMD_LOG_H

#include <bidistream/server.h>

/* The server's log sink (bds_server_config.log); ctx unused. Thread: any. */
void bdsd_log_sink(int level, const char *message, void *ctx);
/* bidistreamd's own events: msg (quoted here) and printf-formatted fields
 * (" key=value ...", may be NULL). Thread: any. */
void bdsd_log(int level, const char *msg, const char *fields, ...) __attribute__((format(printf, 3, 4)));

/* The access log: one line per stream when it ends, from a server
 * interceptor's on_end (on the stream's shard):
 *   ts=... level=info msg="access" method=/pkg.Service/Method peer=127.0.0.1:40000 status=OK
 *     messages_in=3 messages_out=3 bytes_in=120 bytes_out=120 duration_s=0.001234 [message="..."]
 * message (the status message, quoted) only when the status is not OK.
 * Streams refused at their open are logged too (their interceptors' on_end
 * runs). Returns what bds_server_add_interceptor returns. */
bds_status bdsd_access_log_add(bds_server *server, const char **why);

#endif
