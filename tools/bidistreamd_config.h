/* tools/bidistreamd_config.h — bidistreamd's command line and config file.
 *
 * Turns argv (and an optional `--config FILE`) into a bds_server_config with
 * every pipeline option of bds_options, so that main() only creates and runs
 * the server. Kept apart from main() so the tests can drive every flag without
 * starting a server (tests/tools/test_config.c).
 *
 * Precedence, lowest first: built-in defaults (bds_server_config_default),
 * the config file, the flags. A flag wins over the file wherever it appears on
 * the command line, and a repeated flag or key keeps its last value.
 *
 * Config file: one `key = value` per line, keys are the long flag names
 * without the dashes, `#` starts a comment, blank lines are ignored. Files do
 * not nest (no `config` key). */
#ifndef BDS_TOOLS_BIDISTREAMD_CONFIG_H
#define BDS_TOOLS_BIDISTREAMD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <bidistream/server.h>

#define BDS_TOOL_VERSION_STRING "0.1.0"

/* Exit codes of bidistreamd (sysexits-like, but the common 0/1/2 of CLIs). */
#define BDS_TOOL_EXIT_OK 0      /* served and shut down cleanly, or --help/--version/--check-config */
#define BDS_TOOL_EXIT_FAILURE 1 /* the server failed while running (e.g. the port is taken) */
#define BDS_TOOL_EXIT_USAGE 2   /* a bad flag, a bad config file, or a config the server refused */
/* bds_tool_prepare(): not an exit code, go on and run the server. */
#define BDS_TOOL_PROCEED (-1)

typedef enum bds_tool_action {
    BDS_TOOL_RUN = 0,     /* serve */
    BDS_TOOL_HELP,        /* --help / -h: print bds_tool_usage() */
    BDS_TOOL_VERSION,     /* --version */
    BDS_TOOL_CHECK,       /* --check-config: validate, print the effective config, exit */
} bds_tool_action;

/* Max length of --listen (the server copies it at create time). */
#define BDS_TOOL_LISTEN_MAX 255
/* Max length of a file path option (--tls-cert and the like). */
#define BDS_TOOL_PATH_MAX 1023

typedef struct bds_tool_config {
    bds_server_config server; /* server.listen points into argv or at _listen: do not copy the struct */
    bds_tool_action action;
    bool access_log;                       /* --access-log: one line per stream (bidistreamd.c) */
    char _listen[BDS_TOOL_LISTEN_MAX + 1]; /* storage for a listen address read from the file */
    char _paths[3][BDS_TOOL_PATH_MAX + 1]; /* storage for the file path options (opt.min picks one) */
    char _metrics_listen[BDS_TOOL_LISTEN_MAX + 1]; /* ... and for --metrics-listen */
    uint64_t _set;                         /* bit i: option i was given (file or flag) */
} bds_tool_config;

/* Fills cfg from defaults, then the config file named by --config, then the
 * flags, and validates the result (per-flag ranges, cross-flag rules, then
 * bds_options_validate()).
 * Ownership: cfg->server.listen may point into argv; keep argv alive.
 * Returns BDS_TOOL_EXIT_OK (0; see cfg->action; HELP and VERSION stop parsing
 * where they appear) or BDS_TOOL_EXIT_USAGE (2) with err set to one line,
 * no newline, "bidistreamd: <where>: <why>", <where> naming the flag
 * ("--inbound-capacity") or the file and line ("FILE:LINE: inbound-capacity"). */
int bds_tool_parse_args(int argc, char *const argv[], bds_tool_config *cfg, char *err, size_t errlen);

/* What main() does before it creates the server: parses, prints the usage, the
 * version, the effective config (to out) or the one-line error (to errout).
 * Returns BDS_TOOL_PROCEED to run the server, or the exit code to exit with. */
int bds_tool_prepare(int argc, char *const argv[], bds_tool_config *cfg, FILE *out, FILE *errout);

/* Writes the effective config as a config file that --config reads back into
 * the same bds_server_config (every key, defaults included). */
void bds_tool_config_write(const bds_tool_config *cfg, FILE *out);

/* Writes the --help text, with each option's default. */
void bds_tool_usage(FILE *out);

#endif
