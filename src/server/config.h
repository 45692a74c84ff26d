/* config.h - saed's settings. One declarative table (config.c) describes every
 * option once; it drives the command-line flags, the JSON config file (same
 * keys as the flags, without "--") and --help. Flags win over the file. */
#ifndef SAED_CONFIG_H
#define SAED_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

#define CFG_MAX_LIST 32

typedef struct cfg_list {
    const char *v[CFG_MAX_LIST];
    int n;
} cfg_list;

typedef struct saed_config {
    const char *listen;             /* ADDR:PORT */
    const char *state_dir;
    cfg_list model_roots;
    const char *admin_token_file;
    const char *device;             /* auto | cpu | cuda[:N] */
    const char *config_file;
    int threads;                    /* network threads (MHD pool) */
    int max_body_mb;
    const char *cors_origin;
    cfg_list models;                /* ID=DIR, loaded at start */
    int timeout_s;                  /* idle connection timeout */
    int max_connections;
    int batch_max_rows;
    int batch_wait_us;
    int drain_timeout_s;
    const char *saectl;             /* for jobs */
    int max_jobs;                   /* jobs running at once; the rest wait */
    int job_grace_s;                /* SIGTERM -> SIGKILL for a job's child */
    const char *request_log;        /* all | errors | off: see config_request_log */
    bool print_routes;
    bool help;
    void *owned;                    /* the parsed config file; its strings live here */
} saed_config;

/* Which finished requests get their log line (--request-log). */
typedef enum { REQUEST_LOG_ALL, REQUEST_LOG_ERRORS, REQUEST_LOG_OFF } request_log_mode;

/* c->request_log as a mode, or -1 for a value that is none of them
 * (config_load refuses those). */
int config_request_log(const saed_config *c);

/* Defaults, then the config file (if --config), then the flags. Returns 0, or
 * -1 with a message in err. */
int config_load(int argc, char **argv, saed_config *c, char *err, size_t errlen);
void config_free(saed_config *c);
void config_usage(FILE *out);

#endif
