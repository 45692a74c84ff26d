/* job_params.c - see job_params.h. */
#include "job_params.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "paths.h"
#include "registry.h"

typedef enum {
    P_STR,      /* a word: letters, digits, '.', '_', '-' */
    P_INT,      /* an integer >= 0 */
    P_NUM,      /* a finite number */
    P_BOOL,     /* true adds the flag, false leaves it out */
    P_ID,       /* a model id */
    P_CORPUS,   /* an existing directory inside the roots */
    P_OUT,      /* a directory inside the roots, created by the job */
    P_MODEL,    /* a served model's id, or a checkpoint directory inside the roots */
} param_type;

typedef struct param_spec {
    const char *key;
    const char *flag;       /* NULL: the daemon's own (not passed to saectl) */
    param_type type;
    bool required;
} param_spec;

static const param_spec TRAIN_PARAMS[] = {
    {"corpus", "--corpus", P_CORPUS, true},
    {"out", "--out", P_OUT, true},
    {"model_id", NULL, P_ID, false},
    {"arch", "--arch", P_STR, false},
    {"k", "--k", P_INT, false},
    {"d_sae", "--d-sae", P_INT, false},
    {"steps", "--steps", P_INT, false},
    {"batch", "--batch", P_INT, false},
    {"lr", "--lr", P_NUM, false},
    {"seed", "--seed", P_INT, false},
    {"normalize", "--normalize", P_STR, false},
    {"checkpoint_every", "--checkpoint-every", P_INT, false},
    {"warmup", "--warmup", P_INT, false},
    {"l1_coef", "--l1-coef", P_NUM, false},
    {"auxk", "--auxk", P_BOOL, false},
    {"auxk_coef", "--auxk-coef", P_NUM, false},
    {"no_magnitude", "--no-magnitude", P_BOOL, false},
    {"no_layernorm", "--no-layernorm", P_BOOL, false},
    {"sigmoid_gate", "--sigmoid-gate", P_BOOL, false},
    {"beta0", "--beta0", P_NUM, false},
    {"beta_end", "--beta-end", P_NUM, false},
    {"lambda_mag", "--lambda-mag", P_NUM, false},
    {"dead_window", "--dead-window", P_INT, false},
    {"shuffle_rows", "--shuffle-rows", P_INT, false},
};

static const param_spec PROFILE_PARAMS[] = {
    {"model", "--model", P_MODEL, true},
    {"corpus", "--corpus", P_CORPUS, true},
    {"model_id", "--model-id", P_ID, false},
    {"top", "--top", P_INT, false},
    {"per_bucket", "--per-bucket", P_INT, false},
    {"negatives", "--negatives", P_INT, false},
    {"window", "--window", P_INT, false},
    {"max_tokens", "--max-tokens", P_INT, false},
    {"seed", "--seed", P_INT, false},
    {"batch", "--batch", P_INT, false},
};

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

static const param_spec *table(job_kind kind, int *n)
{
    *n = kind == JOB_TRAIN ? N_OF(TRAIN_PARAMS) : N_OF(PROFILE_PARAMS);
    return kind == JOB_TRAIN ? TRAIN_PARAMS : PROFILE_PARAMS;
}

static const param_spec *find_spec(job_kind kind, const char *key)
{
    int n;
    const param_spec *t = table(kind, &n);
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].key, key))
            return &t[i];
    return NULL;
}

static bool is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Starts with a letter or digit, so a value can never read as a flag. */
static bool is_word(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || !is_alnum(s[0]))
        return false;
    for (; *s; s++)
        if (!(*s == '.' || *s == '_' || *s == '-' || is_alnum(*s)))
            return false;
    return true;
}

/* The JSON type check of one value (paths are checked to be strings here and
 * resolved later). */
static int check_type(const param_spec *p, const json_t *v, api_err *e)
{
    switch (p->type) {
    case P_STR:
        if (!json_is_string(v) || !is_word(json_string_value(v)))
            return api_fail(e, 422, "invalid_type", "\"%s\" must be a word of 1-64 letters, "
                            "digits, '.', '_' or '-', starting with a letter or digit", p->key);
        return 0;
    case P_INT:
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return api_fail(e, 422, "invalid_type", "\"%s\" must be an integer >= 0", p->key);
        return 0;
    case P_NUM:
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return api_fail(e, 422, "invalid_type", "\"%s\" must be a number", p->key);
        return 0;
    case P_BOOL:
        if (!json_is_boolean(v))
            return api_fail(e, 422, "invalid_type", "\"%s\" must be true or false", p->key);
        return 0;
    case P_ID:
        if (!json_is_string(v) || !registry_valid_id(json_string_value(v)))
            return api_fail(e, 422, "invalid_id", "\"%s\" must be a model id: 1-%d letters, "
                            "digits, '.', '_' or '-', not starting with '.'", p->key,
                            MODEL_ID_MAX);
        return 0;
    case P_CORPUS:
    case P_OUT:
    case P_MODEL:
        if (!json_is_string(v))
            return api_fail(e, 422, "invalid_type", "\"%s\" must be a path (string)", p->key);
        return 0;
    }
    return api_fail(e, 422, "invalid_request", "\"%s\" is not understood", p->key);
}

/* An output directory need not exist yet: its parent must resolve inside the
 * roots, and the directory itself too when it exists (a symlink out is
 * refused like anywhere else). */
static int resolve_out(const char *path, char out[PATH_MAX], api_err *e)
{
    char buf[PATH_MAX], parent[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return api_fail(e, 422, "invalid_path", "\"out\" is empty or too long");
    memcpy(buf, path, n + 1);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    char *slash = strrchr(buf, '/');
    const char *base = slash ? slash + 1 : buf;
    if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
        return api_fail(e, 422, "invalid_path", "\"out\" must name a directory to create");
    const char *dir = ".";
    if (slash == buf)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = buf;
    }
    if (paths_resolve(dir, parent, e) < 0)
        return -1;
    if (snprintf(out, PATH_MAX, "%s/%s", parent, base) >= PATH_MAX)
        return api_fail(e, 422, "invalid_path", "\"out\" is too long");
    struct stat st;
    if (lstat(out, &st) == 0) {
        char real[PATH_MAX];
        if (paths_resolve(out, real, e) < 0)
            return -1;
        memcpy(out, real, PATH_MAX);
    }
    return 0;
}

/* A served model's id gives its checkpoint directory (and the default
 * model_id); anything else is a path inside the roots. */
static int resolve_model(const char *value, char out[PATH_MAX], json_t *params, api_err *e)
{
    model_entry *m = registry_valid_id(value) ? registry_get(value) : NULL;
    if (m) {
        snprintf(out, PATH_MAX, "%s", m->path);
        registry_release(m);
        if (!json_object_get(params, "model_id") &&
            json_object_set_new(params, "model_id", json_string(value)) != 0)
            return api_fail(e, 503, "out_of_memory", "no memory for the request");
        return 0;
    }
    return paths_resolve(value, out, e);
}

static int resolve_path(const param_spec *p, const char *value, json_t *params, json_t *paths,
                        api_err *e)
{
    char out[PATH_MAX];
    int rc = p->type == P_OUT     ? resolve_out(value, out, e)
             : p->type == P_MODEL ? resolve_model(value, out, params, e)
                                  : paths_resolve(value, out, e);
    if (rc < 0) {
        /* say which field: the path errors name none */
        char msg[sizeof e->msg];
        memcpy(msg, e->msg, sizeof msg);
        snprintf(e->msg, sizeof e->msg, "\"%s\": %.300s", p->key, msg);
        return -1;
    }
    if (json_object_set_new(paths, p->key, json_string(out)) != 0)
        return api_fail(e, 503, "out_of_memory", "no memory for the request");
    return 0;
}

static int parse_kind(const json_t *body, job_kind *kind, api_err *e)
{
    const char *k = json_string_value(json_object_get(body, "kind"));
    if (k && !strcmp(k, "train"))
        *kind = JOB_TRAIN;
    else if (k && !strcmp(k, "profile"))
        *kind = JOB_PROFILE;
    else
        return api_fail(e, 422, "invalid_kind", "\"kind\" must be \"train\" or \"profile\"");
    return 0;
}

/* Copies the known keys into params, type-checked; refuses the others. */
static int copy_params(job_kind kind, const json_t *body, json_t *params, api_err *e)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        if (!strcmp(key, "kind"))
            continue;
        const param_spec *p = find_spec(kind, key);
        if (!p)
            return api_fail(e, 422, "unknown_param", "a %s job takes no \"%.64s\"",
                            kind == JOB_TRAIN ? "train" : "profile", key);
        if (check_type(p, v, e) < 0)
            return -1;
        if (json_object_set(params, key, v) != 0)
            return api_fail(e, 503, "out_of_memory", "no memory for the request");
    }
    return 0;
}

static int resolve_all(job_kind kind, json_t *params, json_t *paths, api_err *e)
{
    int n;
    const param_spec *t = table(kind, &n);
    for (int i = 0; i < n; i++) {
        json_t *v = json_object_get(params, t[i].key);
        if (!v && t[i].required)
            return api_fail(e, 422, "invalid_request", "\"%s\" is required", t[i].key);
        if (v && (t[i].type == P_CORPUS || t[i].type == P_OUT || t[i].type == P_MODEL) &&
            resolve_path(&t[i], json_string_value(v), params, paths, e) < 0)
            return -1;
    }
    if (kind == JOB_PROFILE && !json_object_get(params, "model_id"))
        return api_fail(e, 422, "invalid_request", "\"model_id\" is required when \"model\" "
                        "is a path rather than a served model's id");
    return 0;
}

int job_params_check(const json_t *body, job_kind *kind, json_t **params_out,
                     json_t **paths_out, api_err *e)
{
    if (!json_is_object(body))
        return api_fail(e, 422, "invalid_request", "want a JSON object {\"kind\": ..., ...}");
    if (parse_kind(body, kind, e) < 0)
        return -1;
    json_t *params = json_object(), *paths = json_object();
    int rc = params && paths ? 0 : api_fail(e, 503, "out_of_memory", "no memory");
    if (rc == 0)
        rc = copy_params(*kind, body, params, e);
    if (rc == 0)
        rc = resolve_all(*kind, params, paths, e);
    if (rc < 0) {
        json_decref(params);
        json_decref(paths);
        return -1;
    }
    *params_out = params;
    *paths_out = paths;
    return 0;
}

const char *job_params_model_id(const json_t *params)
{
    return json_string_value(json_object_get(params, "model_id"));
}

const char *job_params_out(const json_t *paths)
{
    return json_string_value(json_object_get(paths, "out"));
}

bool job_params_resumable(const json_t *paths)
{
    const char *out = job_params_out(paths);
    char p[PATH_MAX + 64];
    if (!out)
        return false;
    snprintf(p, sizeof p, "%s/checkpoints/latest", out);
    if (access(p, R_OK) == 0)
        return true;
    snprintf(p, sizeof p, "%s/train_state.safetensors", out);
    return access(p, R_OK) == 0;
}

/* ---- argv ------------------------------------------------------------------- */

typedef struct argv_builder {
    char **v;
    int n, cap;
    bool oom;
} argv_builder;

static void push(argv_builder *b, const char *s)
{
    if (b->oom)
        return;
    if (b->n + 2 > b->cap) {
        int cap = b->cap ? 2 * b->cap : 32;
        char **v = realloc(b->v, (size_t)cap * sizeof *v);
        if (!v) {
            b->oom = true;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    if (!(b->v[b->n] = strdup(s))) {
        b->oom = true;
        return;
    }
    b->v[++b->n] = NULL;
}

/* One param as saectl flags (nothing for false booleans and daemon-only keys). */
static void push_param(argv_builder *b, const param_spec *p, const json_t *v,
                       const json_t *paths)
{
    char num[64];
    if (!p->flag || (p->type == P_BOOL && !json_is_true(v)))
        return;
    push(b, p->flag);
    switch (p->type) {
    case P_BOOL:
        return;
    case P_INT:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        push(b, num);
        return;
    case P_NUM:
        snprintf(num, sizeof num, "%.17g", json_number_value(v));
        push(b, num);
        return;
    case P_CORPUS:
    case P_OUT:
    case P_MODEL:
        push(b, json_string_value(json_object_get(paths, p->key)));
        return;
    case P_STR:
    case P_ID:
        push(b, json_string_value(v));
        return;
    }
}

int job_argv(job_kind kind, const json_t *params, const json_t *paths, const char *saectl,
             const char *state_dir, int progress_fd, bool resume, char ***argv)
{
    argv_builder b = {0};
    char fd[16];
    push(&b, saectl);
    push(&b, kind == JOB_TRAIN ? "train" : "profile");
    int n;
    const param_spec *t = table(kind, &n);
    for (int i = 0; i < n; i++) {
        const json_t *v = json_object_get(params, t[i].key);
        if (v)
            push_param(&b, &t[i], v, paths);
    }
    if (kind == JOB_PROFILE) {
        push(&b, "--state");
        push(&b, state_dir);
    }
    snprintf(fd, sizeof fd, "%d", progress_fd);
    push(&b, "--progress-fd");
    push(&b, fd);
    if (resume)
        push(&b, "--resume");
    if (b.oom) {
        job_argv_free(b.v);
        return -1;
    }
    *argv = b.v;
    return 0;
}

void job_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}
