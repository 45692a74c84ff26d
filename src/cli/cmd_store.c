/* cmd_store.c - saectl profile, feature, examples, explain-import, calibration,
 * store-check: the glue between the profile pass (src/sae/profile.h) and the
 * feature store (src/store/store.h). The JSON it prints comes from
 * src/featjson, which saed serves too, so the two stay byte-identical. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "arch.h"
#include "cli.h"
#include "dataset.h"
#include "featjson.h"
#include "profile.h"
#include "sae.h"
#include "store.h"
#include "util.h"

#define PROGRESS_SECONDS 2.0

/* Opens the store, reporting errors as `saectl CMD: ...`. */
static int open_store(const char *cmd, const char *dir, store **s)
{
    sae_error err;
    if (store_open(dir, s, &err) != SAE_OK)
        return cli_error(cmd, CLI_FAIL, "%s", err.msg);
    return CLI_OK;
}

/* Prints j as one JSON document on stdout and releases it. */
static int print_json(json_t *j)
{
    if (!j)
        return cli_error("json", CLI_FAIL, "out of memory");
    int rc = json_dumpf(j, stdout, FEATJSON_DUMP_FLAGS) == 0 ? CLI_OK : CLI_FAIL;
    fputc('\n', stdout);
    json_decref(j);
    return rc;
}

/* ---- profile ---------------------------------------------------------------- */

typedef struct profile_ctx {
    const char *model_id;
    store_writer *w;
    uint64_t n_rows;
    double start, last;
} profile_ctx;

/* --progress-fd: the same reports as JSON lines {"phase", "done", "total"}
 * (what saed's job runner reads). */
static FILE *progress_pipe;

static void on_progress(void *vctx, const char *phase, int64_t done, int64_t total)
{
    profile_ctx *c = vctx;
    double t = sae_now_seconds();
    if ((total == 0 || done < total) && t - c->last < PROGRESS_SECONDS)
        return;
    c->last = t;
    if (progress_pipe) {
        fprintf(progress_pipe, "{\"phase\": \"%s\", \"done\": %lld, \"total\": %lld}\n", phase,
                (long long)done, (long long)total);
        fflush(progress_pipe);
    }
    if (total > 0)
        fprintf(stderr, "saectl profile: %s %lld / %lld (%.1f%%), %.1f s\n", phase,
                (long long)done, (long long)total, 100.0 * (double)done / (double)total,
                t - c->start);
    else
        fprintf(stderr, "saectl profile: %s round %lld, %.1f s\n", phase, (long long)done,
                t - c->start);
}

static int put_examples(profile_ctx *c, int f, store_example_kind kind, int bucket,
                        const profile_example *ex, int n, sae_error *err)
{
    for (int i = 0; i < n; i++) {
        store_example_hdr h = {(uint64_t)ex[i].row, (uint64_t)ex[i].doc, (uint32_t)ex[i].pos,
                               (uint32_t)ex[i].start, (uint32_t)ex[i].n,
                               (uint32_t)ex[i].max_index, ex[i].max_value, ex[i].value};
        if (store_put_example(c->w, c->model_id, (uint32_t)f, kind, (uint32_t)bucket,
                              (uint32_t)i, &h, ex[i].tokens, ex[i].values, err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

/* The profile sink: one feature's record and examples into the writer. */
static int store_feature_result(void *vctx, const profile_feature *pf, sae_error *err)
{
    profile_ctx *c = vctx;
    const profile_stats *s = pf->stats;
    store_feature f = {.count = s->count, .n_rows = c->n_rows, .mean = s->mean,
                       .min = s->min, .max = s->max, .n_top = (uint32_t)pf->n_top,
                       .n_negative = (uint32_t)pf->n_negative};
    memcpy(f.quantiles, s->quantiles, sizeof f.quantiles);
    memcpy(f.bucket_count, s->bucket_count, sizeof f.bucket_count);
    for (int b = 0; b < PROFILE_N_BUCKETS; b++)
        f.n_bucket[b] = (uint32_t)pf->n_bucket[b];
    if (store_put_feature(c->w, c->model_id, (uint32_t)pf->feature, &f, err) != SAE_OK ||
        put_examples(c, pf->feature, STORE_EX_TOP, 0, pf->top, pf->n_top, err) != SAE_OK ||
        put_examples(c, pf->feature, STORE_EX_NEGATIVE, 0, pf->negative, pf->n_negative,
                     err) != SAE_OK)
        return SAE_ERR;
    for (int b = 0; b < PROFILE_N_BUCKETS; b++)
        if (put_examples(c, pf->feature, STORE_EX_BUCKET, b, pf->bucket[b], pf->n_bucket[b],
                         err) != SAE_OK)
            return SAE_ERR;
    return SAE_OK;
}

static json_t *json_text_or_null(const char *text)
{
    return text ? json_loads(text, JSON_DECODE_ANY, NULL) : json_null();
}

static json_t *abs_path(const char *p)
{
    char buf[PATH_MAX];
    return json_string(realpath(p, buf) ? buf : p);
}

/* The model record: what was profiled, on what, with which settings. */
static char *model_record(const char *id, const char *model_dir, const sae_model *m,
                          const char *corpus_dir, const corpus *c, const profile_config *cfg)
{
    const corpus_info *ci = corpus_get_info(c);
    json_t *j = json_pack(
        "{s:s, s:o, s:s, s:i, s:i, s:i, s:o, s:o, s:{s:o, s:s, s:s, s:I, s:i, s:b, s:I},"
        " s:{s:i, s:i, s:i, s:i, s:I, s:I, s:I}}",
        "id", id, "path", abs_path(model_dir), "architecture", m->cfg.arch->name,
        "d_in", m->cfg.d_in, "d_sae", m->cfg.d_sae, "k", m->cfg.k,
        "metadata", json_text_or_null(m->cfg.metadata_json),
        "training", json_text_or_null(m->cfg.training_json),
        "corpus", "path", abs_path(corpus_dir), "model", ci->model, "hook", ci->hook,
        "n_rows", (json_int_t)ci->n_rows, "context_len", ci->context_len,
        "has_tokens", ci->has_tokens, "vocab_size", (json_int_t)ci->vocab_size,
        "profile", "top", cfg->top_n, "per_bucket", cfg->per_bucket,
        "negatives", cfg->n_negative, "window", cfg->window,
        "max_tokens", (json_int_t)cfg->max_tokens, "n_rows", (json_int_t)profile_rows(c, cfg),
        "seed", (json_int_t)cfg->seed);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return text;
}

static char *vocab_json(const corpus *c)
{
    const corpus_info *ci = corpus_get_info(c);
    if (!ci->vocab)
        return NULL;
    json_t *a = json_array();
    for (int64_t i = 0; a && i < ci->vocab_size; i++)
        json_array_append_new(a, json_string(ci->vocab[i]));
    char *text = a ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    return text;
}

/* Marks the run, streams the profile into the store, marks it complete. */
static int profile_into_store(store *s, const char *id, const char *model_dir,
                              const sae_model *m, const char *corpus_dir, const corpus *c,
                              profile_config *cfg, sae_error *err)
{
    char *record = model_record(id, model_dir, m, corpus_dir, c, cfg), *vocab = vocab_json(c);
    store_profile_run run = {.n_features = (uint32_t)m->cfg.d_sae, .top_n = (uint32_t)cfg->top_n,
                             .per_bucket = (uint32_t)cfg->per_bucket,
                             .n_negative = (uint32_t)cfg->n_negative,
                             .window = (uint32_t)cfg->window,
                             .n_rows = (uint64_t)profile_rows(c, cfg), .seed = cfg->seed};
    profile_ctx ctx = {id, NULL, run.n_rows, sae_now_seconds(), sae_now_seconds()};
    cfg->progress = on_progress;
    cfg->progress_ctx = &ctx;
    int rc = record ? SAE_OK : sae_fail(err, "out of memory");
    if (rc == SAE_OK && (rc = store_profile_begin(s, id, record, vocab, &run, err)) == SAE_OK &&
        (rc = store_writer_begin(s, &ctx.w, err)) == SAE_OK) {
        rc = profile_run(m, c, cfg, store_feature_result, &ctx, err);
        if (rc == SAE_OK)
            rc = store_writer_commit(ctx.w, err);
        else
            store_writer_abort(ctx.w);
    }
    if (rc == SAE_OK)
        rc = store_profile_finish(s, id, &run, err);
    free(record);
    free(vocab);
    return rc;
}

int cmd_profile(int argc, char **argv)
{
    const char *model = NULL, *corpus_dir = NULL, *state = NULL, *id = NULL, *device = "auto";
    long long max_tokens = 0, seed = 0;
    int progress_fd = -1;
    profile_config cfg;
    profile_config_default(&cfg);
    long long collect_max = cfg.collect_max;
    const cli_flag flags[] = {
        {"progress-fd", FLAG_INT, &progress_fd, false},
        {"model", FLAG_STR, &model, true}, {"corpus", FLAG_STR, &corpus_dir, true},
        {"state", FLAG_STR, &state, true}, {"model-id", FLAG_STR, &id, true},
        {"top", FLAG_INT, &cfg.top_n, false}, {"per-bucket", FLAG_INT, &cfg.per_bucket, false},
        {"negatives", FLAG_INT, &cfg.n_negative, false}, {"window", FLAG_INT, &cfg.window, false},
        {"max-tokens", FLAG_I64, &max_tokens, false}, {"seed", FLAG_I64, &seed, false},
        {"batch", FLAG_INT, &cfg.batch, false}, {"device", FLAG_STR, &device, false},
        {"collect-max", FLAG_I64, &collect_max, false},
        {"memory-mb", FLAG_INT, &cfg.memory_mb, false},
    };
    int rc = cli_parse("profile", argc, argv, flags, (int)(sizeof flags / sizeof flags[0]));
    if (rc != CLI_OK)
        return rc;
    if (!store_id_valid(id))
        return cli_error("profile", CLI_USAGE, "--model-id must be 1..%d characters of "
                         "A-Z a-z 0-9 . _ -, got '%s'", STORE_ID_MAX, id);
    if (max_tokens < 0 || seed < 0)
        return cli_error("profile", CLI_USAGE, "--max-tokens and --seed must be >= 0");
    if (progress_fd >= 0 && !(progress_pipe = fdopen(progress_fd, "w")))
        return cli_error("profile", CLI_USAGE, "--progress-fd %d is not an open descriptor",
                         progress_fd);
    cfg.max_tokens = max_tokens;
    cfg.seed = (uint64_t)seed;
    cfg.collect_max = collect_max;
    cfg.spill_dir = state;
    sae_error err;
    sae_model *m = NULL;
    corpus *c = NULL;
    store *s = NULL;
    if (sae_load(model, &m, &err) != SAE_OK || sae_model_use_device(m, device, &err) != SAE_OK ||
        corpus_open(corpus_dir, &c, &err) != SAE_OK || store_open(state, &s, &err) != SAE_OK ||
        profile_into_store(s, id, model, m, corpus_dir, c, &cfg, &err) != SAE_OK)
        rc = cli_error("profile", CLI_FAIL, "%s", err.msg);
    else
        fprintf(stderr, "saectl profile: %d features of model '%s' over %lld rows in %s\n",
                m->cfg.d_sae, id, (long long)profile_rows(c, &cfg), state);
    store_close(s);
    corpus_close(c);
    sae_free(m);
    if (progress_pipe) {
        fclose(progress_pipe);
        progress_pipe = NULL;
    }
    return rc;
}

/* ---- feature / examples ------------------------------------------------------------ */

static int check_feature_flags(const char *cmd, const char *id, int feature)
{
    if (!store_id_valid(id))
        return cli_error(cmd, CLI_USAGE, "--model-id '%s' is not a valid id", id);
    if (feature < 0)
        return cli_error(cmd, CLI_USAGE, "--feature must be >= 0, got %d", feature);
    return CLI_OK;
}

int cmd_feature(int argc, char **argv)
{
    const char *state = NULL, *id = NULL;
    int feature = -1;
    const cli_flag flags[] = {{"state", FLAG_STR, &state, true},
                              {"model-id", FLAG_STR, &id, true},
                              {"feature", FLAG_INT, &feature, true}};
    int rc = cli_parse("feature", argc, argv, flags, (int)(sizeof flags / sizeof flags[0]));
    if (rc != CLI_OK || (rc = check_feature_flags("feature", id, feature)) != CLI_OK)
        return rc;
    store *s;
    if ((rc = open_store("feature", state, &s)) != CLI_OK)
        return rc;
    sae_error err;
    json_t *j = NULL;
    if (featjson_feature(s, id, (uint32_t)feature, &j, &err) != SAE_OK)
        rc = cli_error("feature", CLI_FAIL, "%s", err.msg);
    else
        rc = print_json(j);
    store_close(s);
    return rc;
}

int cmd_examples(int argc, char **argv)
{
    const char *state = NULL, *id = NULL, *kind_name = NULL;
    int feature = -1, bucket = -1, limit = 1000;
    const cli_flag flags[] = {
        {"state", FLAG_STR, &state, true}, {"model-id", FLAG_STR, &id, true},
        {"feature", FLAG_INT, &feature, true}, {"kind", FLAG_STR, &kind_name, true},
        {"bucket", FLAG_INT, &bucket, false}, {"limit", FLAG_INT, &limit, false},
    };
    store_example_kind kind = STORE_EX_TOP;
    int rc = cli_parse("examples", argc, argv, flags, (int)(sizeof flags / sizeof flags[0]));
    if (rc != CLI_OK || (rc = check_feature_flags("examples", id, feature)) != CLI_OK)
        return rc;
    if (featjson_example_kind(kind_name, &kind) != SAE_OK)
        return cli_error("examples", CLI_USAGE, "--kind must be top, bucket or negative, got "
                         "'%s'", kind_name);
    if (kind == STORE_EX_BUCKET && (bucket < 0 || bucket >= STORE_N_BUCKETS))
        return cli_error("examples", CLI_USAGE, "--kind bucket needs --bucket 0..4");
    if (limit < 0)
        return cli_error("examples", CLI_USAGE, "--limit must be >= 0, got %d", limit);
    store *s;
    if ((rc = open_store("examples", state, &s)) != CLI_OK)
        return rc;
    sae_error err;
    json_t *j = NULL;
    if (featjson_examples(s, id, (uint32_t)feature, kind, bucket < 0 ? 0 : (uint32_t)bucket,
                          (uint32_t)limit, &j, &err) != SAE_OK)
        rc = cli_error("examples", CLI_FAIL, "%s", err.msg);
    else
        rc = print_json(j);
    store_close(s);
    return rc;
}

/* ---- explain-import / calibration -------------------------------------------------- */

/* One line of the import file once checked; the strings are borrowed from the
 * parsed line, the value is owned. */
typedef struct import_line {
    const char *id;
    int feature;
    featjson_explanation ex;
} import_line;

/* One line of the import file, checked: {"model_id", "feature"} and the
 * explanation fields, validated as saed validates a POSTed explanation. */
static int parse_explanation_line(store *s, json_t *line, import_line *out, sae_error *err)
{
    static const char *const line_keys[] = {"model_id", "feature", NULL};
    json_error_t jerr;
    if (json_unpack_ex(line, &jerr, 0, "{s:s, s:i}", "model_id", &out->id, "feature",
                       &out->feature) != 0)
        return sae_fail(err, "%s", jerr.text);
    if (!store_id_valid(out->id))
        return sae_fail(err, "bad model_id '%.140s'", out->id);
    store_profile_run run;
    int rc = store_profile_run_get(s, out->id, &run, err);
    if (rc == STORE_NOT_FOUND || (rc == SAE_OK && (out->feature < 0 ||
                                                   (uint32_t)out->feature >= run.n_features)))
        return sae_fail(err, "model '%s' has no profiled feature %d", out->id, out->feature);
    if (rc != SAE_OK)
        return SAE_ERR;
    return featjson_explanation_parse(line, line_keys, &out->ex, err);
}

/* Every line is checked before anything is written: a bad file changes nothing. */
static int import_lines(store *s, json_t *lines, const char *path, sae_error *err)
{
    size_t n = json_array_size(lines);
    import_line *in = calloc(n ? n : 1, sizeof *in);
    int rc = in ? SAE_OK : sae_fail(err, "out of memory");
    for (size_t i = 0; rc == SAE_OK && i < n; i++) {
        rc = parse_explanation_line(s, json_array_get(lines, i), &in[i], err);
        if (rc != SAE_OK) {
            sae_error inner = *err;
            rc = sae_fail(err, "%s: line %zu: %s", path, i + 1, inner.msg);
        }
    }
    store_writer *w = NULL;
    if (rc == SAE_OK && (rc = store_writer_begin(s, &w, err)) == SAE_OK) {
        for (size_t i = 0; rc == SAE_OK && i < n; i++)
            rc = store_put_explanation(w, in[i].id, (uint32_t)in[i].feature, in[i].ex.bucket,
                                       in[i].ex.scorer, in[i].ex.value, err);
        rc = rc == SAE_OK ? store_writer_commit(w, err) : (store_writer_abort(w), SAE_ERR);
    }
    for (size_t i = 0; in && i < n; i++)
        free(in[i].ex.value);
    free(in);
    return rc;
}

/* Reads a JSON-lines file into an array (blank lines skipped). */
static json_t *read_jsonl(const char *path, sae_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        sae_fail(err, "cannot open %s", path);
        return NULL;
    }
    json_t *lines = json_array();
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    while (lines && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        if (!j) {
            sae_fail(err, "%s: line %zu: %s", path, lineno, jerr.text);
            json_decref(lines);
            lines = NULL;
        } else {
            json_array_append_new(lines, j);
        }
    }
    free(line);
    fclose(f);
    return lines;
}

int cmd_explain_import(int argc, char **argv)
{
    const char *state = NULL, *file = NULL;
    /* The file may come first, without a flag: `saectl explain-import FILE --state DIR`. */
    if (argc > 0 && strncmp(argv[0], "--", 2) != 0) {
        file = argv[0];
        argc--;
        argv++;
    }
    const cli_flag flags[] = {{"state", FLAG_STR, &state, true}, {"file", FLAG_STR, &file, false}};
    int rc = cli_parse("explain-import", argc, argv, flags, 2);
    if (rc != CLI_OK)
        return rc;
    if (!file)
        return cli_error("explain-import", CLI_USAGE, "name the FILE.jsonl to import");
    sae_error err;
    json_t *lines = read_jsonl(file, &err);
    if (!lines)
        return cli_error("explain-import", CLI_FAIL, "%s", err.msg);
    store *s;
    if ((rc = open_store("explain-import", state, &s)) == CLI_OK) {
        if (import_lines(s, lines, file, &err) != SAE_OK)
            rc = cli_error("explain-import", CLI_FAIL, "%s", err.msg);
        else
            fprintf(stderr, "saectl explain-import: %zu explanations\n", json_array_size(lines));
        store_close(s);
    }
    json_decref(lines);
    return rc;
}

int cmd_calibration(int argc, char **argv)
{
    const char *state = NULL, *id = NULL, *scorer = NULL;
    const cli_flag flags[] = {{"state", FLAG_STR, &state, true},
                              {"model-id", FLAG_STR, &id, true},
                              {"scorer", FLAG_STR, &scorer, false}};
    int rc = cli_parse("calibration", argc, argv, flags, 3);
    if (rc != CLI_OK)
        return rc;
    if (!store_id_valid(id))
        return cli_error("calibration", CLI_USAGE, "--model-id '%s' is not a valid id", id);
    store *s;
    if ((rc = open_store("calibration", state, &s)) != CLI_OK)
        return rc;
    sae_error err;
    json_t *j = NULL;
    if (featjson_calibration(s, id, scorer, &j, &err) != SAE_OK)
        rc = cli_error("calibration", CLI_FAIL, "%s", err.msg);
    else
        rc = print_json(j);
    store_close(s);
    return rc;
}

/* ---- store-check --------------------------------------------------------------------- */

int cmd_store_check(int argc, char **argv)
{
    const char *state = NULL;
    const cli_flag flags[] = {{"state", FLAG_STR, &state, true}};
    int rc = cli_parse("store-check", argc, argv, flags, 1);
    if (rc != CLI_OK)
        return rc;
    store *s;
    if ((rc = open_store("store-check", state, &s)) != CLI_OK)
        return rc;
    sae_error err;
    if (store_check(s, &err) != SAE_OK)
        rc = cli_error("store-check", CLI_FAIL, "%s", err.msg);
    else
        printf("{\"ok\":true}\n");
    store_close(s);
    return rc;
}
