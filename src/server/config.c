/* config.c - the table of options, and the two readers (flags, JSON file) that
 * walk it. Adding an option is adding a row. */
#include "config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { OPT_STR, OPT_INT, OPT_LIST, OPT_BOOL } opt_type;

typedef struct option_row {
    const char *name;       /* flag without "--", and the config-file key */
    opt_type type;
    size_t offset;          /* into saed_config */
    int min, max;           /* OPT_INT range */
    const char *help;
} option_row;

#define F(field) offsetof(saed_config, field)
static const option_row OPTIONS[] = {
    {"listen", OPT_STR, F(listen), 0, 0, "ADDR:PORT to listen on (default 127.0.0.1:8080)"},
    {"state-dir", OPT_STR, F(state_dir), 0, 0, "directory for persistent state (required)"},
    {"model-root", OPT_LIST, F(model_roots), 0, 0,
     "directory admin-loaded checkpoints must live in (repeatable)"},
    {"admin-token-file", OPT_STR, F(admin_token_file), 0, 0,
     "file holding the admin bearer token (or set SAED_ADMIN_TOKEN)"},
    {"device", OPT_STR, F(device), 0, 0, "auto | cpu | cuda[:N] (default auto)"},
    {"config", OPT_STR, F(config_file), 0, 0, "JSON file with these options as keys"},
    {"threads", OPT_INT, F(threads), 1, 256, "network threads (default 4)"},
    {"max-body-mb", OPT_INT, F(max_body_mb), 1, 4096, "request body limit in MiB (default 64)"},
    {"cors-origin", OPT_STR, F(cors_origin), 0, 0, "send Access-Control-Allow-Origin: ORIGIN"},
    {"model", OPT_LIST, F(models), 0, 0, "ID=DIR: load a checkpoint at start (repeatable)"},
    {"timeout-s", OPT_INT, F(timeout_s), 1, 3600, "idle connection timeout (default 30)"},
    {"max-connections", OPT_INT, F(max_connections), 1, 100000,
     "concurrent connection cap (default 1024)"},
    {"batch-max-rows", OPT_INT, F(batch_max_rows), 1, 1 << 20,
     "rows merged into one encode batch at most (default 1024)"},
    {"batch-wait-us", OPT_INT, F(batch_wait_us), 0, 1000000,
     "how long a short queue waits for more rows, from its first request or the last "
     "batch's answers (default 2000 on the CPU, 0 on a GPU)"},
    {"drain-timeout-s", OPT_INT, F(drain_timeout_s), 0, 3600,
     "on SIGTERM, wait this long for in-flight requests (default 30)"},
    {"saectl", OPT_STR, F(saectl), 0, 0, "saectl binary for jobs (default: next to saed)"},
    {"max-jobs", OPT_INT, F(max_jobs), 1, 64, "jobs running at once; others queue (default 1)"},
    {"job-grace-s", OPT_INT, F(job_grace_s), 0, 3600,
     "after SIGTERM, a job's child gets this long before SIGKILL (default 30)"},
    {"request-log", OPT_STR, F(request_log), 0, 0,
     "all | errors (status >= 400, or cut off) | off: requests logged (default all)"},
    {"print-routes", OPT_BOOL, F(print_routes), 0, 0, "print the route table and exit"},
    {"help", OPT_BOOL, F(help), 0, 0, "this text"},
};
#undef F
#define N_OPTIONS (int)(sizeof OPTIONS / sizeof OPTIONS[0])

/* --request-log's values, in request_log_mode's order */
static const char *const REQUEST_LOG_NAMES[] = {"all", "errors", "off"};

int config_request_log(const saed_config *c)
{
    for (int i = 0; i < (int)(sizeof REQUEST_LOG_NAMES / sizeof REQUEST_LOG_NAMES[0]); i++)
        if (!strcmp(c->request_log, REQUEST_LOG_NAMES[i]))
            return i;
    return -1;
}

static void defaults(saed_config *c)
{
    memset(c, 0, sizeof *c);
    c->listen = "127.0.0.1:8080";
    c->device = "auto";
    c->threads = 4;
    c->max_body_mb = 64;
    c->timeout_s = 30;
    c->max_connections = 1024;
    c->batch_max_rows = 1024;
    c->batch_wait_us = -1; /* by device: registry.c */
    c->drain_timeout_s = 30;
    c->max_jobs = 1;
    c->job_grace_s = 30;
    c->request_log = "all";
}

static const option_row *find(const char *name, size_t len)
{
    for (int i = 0; i < N_OPTIONS; i++)
        if (strlen(OPTIONS[i].name) == len && !strncmp(OPTIONS[i].name, name, len))
            return &OPTIONS[i];
    return NULL;
}

static int set_int(const option_row *o, saed_config *c, long long v, char *err, size_t n)
{
    if (v < o->min || v > o->max) {
        snprintf(err, n, "%s must be an integer in [%d, %d]", o->name, o->min, o->max);
        return -1;
    }
    *(int *)((char *)c + o->offset) = (int)v;
    return 0;
}

static int set_str(const option_row *o, saed_config *c, const char *v, char *err, size_t n)
{
    long long x;
    char *end;
    switch (o->type) {
    case OPT_STR:
        *(const char **)((char *)c + o->offset) = v;
        return 0;
    case OPT_INT:
        x = strtoll(v, &end, 10);
        if (!*v || *end) {
            snprintf(err, n, "--%s wants an integer, got '%s'", o->name, v);
            return -1;
        }
        return set_int(o, c, x, err, n);
    case OPT_LIST: {
        cfg_list *l = (cfg_list *)((char *)c + o->offset);
        if (l->n == CFG_MAX_LIST) {
            snprintf(err, n, "--%s given more than %d times", o->name, CFG_MAX_LIST);
            return -1;
        }
        l->v[l->n++] = v;
        return 0;
    }
    case OPT_BOOL:
        break;
    }
    snprintf(err, n, "--%s takes no value", o->name);
    return -1;
}

/* One key of the config file. Its strings stay owned by the JSON root. */
static int apply_json(const option_row *o, saed_config *c, json_t *v, char *err, size_t n)
{
    switch (o->type) {
    case OPT_STR:
        if (!json_is_string(v))
            break;
        return set_str(o, c, json_string_value(v), err, n);
    case OPT_INT:
        if (!json_is_integer(v))
            break;
        return set_int(o, c, json_integer_value(v), err, n);
    case OPT_BOOL:
        if (!json_is_boolean(v))
            break;
        *(bool *)((char *)c + o->offset) = json_is_true(v);
        return 0;
    case OPT_LIST: {
        if (!json_is_array(v))
            break;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_string(e) || set_str(o, c, json_string_value(e), err, n) < 0) {
                if (!json_is_string(e))
                    snprintf(err, n, "config key \"%s\" wants strings", o->name);
                return -1;
            }
        }
        return 0;
    }
    }
    snprintf(err, n, "config key \"%s\" has the wrong type", o->name);
    return -1;
}

static int load_file(const char *path, saed_config *c, char *err, size_t n)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        snprintf(err, n, "%s: %s", path, root ? "not a JSON object" : jerr.text);
        json_decref(root);
        return -1;
    }
    c->owned = root;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const option_row *o = find(key, strlen(key));
        if (!o || !strcmp(key, "config")) {
            snprintf(err, n, "%s: unknown key \"%s\"", path, key);
            return -1;
        }
        if (apply_json(o, c, v, err, n) < 0)
            return -1;
    }
    return 0;
}

/* The flags, walked twice: first only to find --config, then for real. A list
 * flag replaces the file's list rather than adding to it. */
static int apply_flags(int argc, char **argv, saed_config *c, bool only_config, char *err,
                       size_t n)
{
    bool cleared[N_OPTIONS] = {false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, n, "unexpected argument '%s'", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        const option_row *o = find(name, eq ? (size_t)(eq - name) : strlen(name));
        if (!o) {
            snprintf(err, n, "unknown flag '%s' (see --help)", a);
            return -1;
        }
        if (o->type == OPT_BOOL) {
            if (eq) {
                snprintf(err, n, "--%s takes no value", o->name);
                return -1;
            }
            if (!only_config)
                *(bool *)((char *)c + o->offset) = true;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            snprintf(err, n, "--%s needs a value", o->name);
            return -1;
        }
        if (only_config != !strcmp(o->name, "config"))
            continue;
        int idx = (int)(o - OPTIONS);
        if (o->type == OPT_LIST && !cleared[idx]) {
            ((cfg_list *)((char *)c + o->offset))->n = 0;
            cleared[idx] = true;
        }
        if (set_str(o, c, v, err, n) < 0)
            return -1;
    }
    return 0;
}

int config_load(int argc, char **argv, saed_config *c, char *err, size_t errlen)
{
    defaults(c);
    if (apply_flags(argc, argv, c, true, err, errlen) < 0)
        return -1;
    if (c->config_file && load_file(c->config_file, c, err, errlen) < 0)
        return -1;
    if (apply_flags(argc, argv, c, false, err, errlen) < 0)
        return -1;
    if (c->help || c->print_routes)
        return 0;
    if (!c->state_dir) {
        snprintf(err, errlen, "--state-dir is required");
        return -1;
    }
    if (config_request_log(c) < 0) {
        snprintf(err, errlen, "--request-log wants all, errors or off, got '%s'", c->request_log);
        return -1;
    }
    return 0;
}

void config_free(saed_config *c)
{
    json_decref(c->owned);
    c->owned = NULL;
}

void config_usage(FILE *out)
{
    fprintf(out, "usage: saed --state-dir DIR [flags]\n\nflags (also keys of --config FILE.json):\n");
    for (int i = 0; i < N_OPTIONS; i++) {
        const option_row *o = &OPTIONS[i];
        const char *arg = o->type == OPT_BOOL ? "" : o->type == OPT_INT ? " N" : " VALUE";
        char left[64];
        snprintf(left, sizeof left, "--%s%s", o->name, arg);
        fprintf(out, "  %-26s %s\n", left, o->help);
    }
}
