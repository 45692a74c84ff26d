/* featjson.c - see featjson.h. */
#include "featjson.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "profile.h"

/* NaN and infinities are not JSON: they become null. */
static json_t *json_num(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

/* ---- The feature object ------------------------------------------------------- */

static json_t *buckets_json(const store_feature *f)
{
    json_t *a = json_array();
    for (int b = 0; a && b < STORE_N_BUCKETS; b++) {
        double lo = b == 0 ? f->min : f->quantiles[2 * b - 1];
        double hi = b == STORE_N_BUCKETS - 1 ? f->max : f->quantiles[2 * b + 1];
        json_array_append_new(
            a, json_pack("{s:i, s:o, s:o, s:b, s:f, s:I, s:i}", "bucket", b, "lower",
                         json_num(f->count ? lo : NAN), "upper", json_num(f->count ? hi : NAN),
                         "upper_inclusive", b == STORE_N_BUCKETS - 1, "centre_percentile",
                         profile_bucket_centre(b), "count", (json_int_t)f->bucket_count[b],
                         "n_examples", (int)f->n_bucket[b]));
    }
    return a;
}

static json_t *feature_stats_json(const char *id, uint32_t feature, const store_feature *f)
{
    json_t *q = json_object();
    for (int l = 0; q && l < STORE_N_QUANTILES; l++)
        json_object_set_new(q, profile_level_names[l], json_num(f->count ? f->quantiles[l] : NAN));
    return json_pack("{s:s, s:i, s:I, s:I, s:f, s:o, s:o, s:o, s:o, s:o, s:{s:i, s:i}}",
                     "model_id", id, "feature", (int)feature, "count", (json_int_t)f->count,
                     "n_tokens", (json_int_t)f->n_rows, "density",
                     f->n_rows ? (double)f->count / (double)f->n_rows : 0.0,
                     "mean", json_num(f->count ? f->mean : NAN),
                     "min", json_num(f->count ? f->min : NAN),
                     "max", json_num(f->count ? f->max : NAN), "quantiles", q,
                     "buckets", buckets_json(f), "examples", "top", (int)f->n_top,
                     "negative", (int)f->n_negative);
}

json_t *featjson_explanation_json(const store_explanation *e)
{
    json_t *j = json_loads(e->json, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    json_object_set_new(j, "bucket", json_integer(e->bucket));
    json_object_set_new(j, "scorer", json_string(e->scorer));
    return j;
}

/* Appends each explanation of the feature; an unreadable value is skipped
 * (the store checks values are JSON text; a reader should not fail on one). */
static int append_explanation(void *ctx, const store_explanation *e)
{
    json_t *j = featjson_explanation_json(e);
    if (j)
        json_array_append_new(ctx, j);
    return 0;
}

int featjson_feature(store *s, const char *id, uint32_t feature, json_t **out, sae_error *err)
{
    store_feature f;
    int rc = store_feature_get(s, id, feature, &f, err);
    if (rc != SAE_OK)
        return rc;
    json_t *expl = json_array();
    if (!expl)
        return sae_fail(err, "out of memory");
    rc = store_explanation_list_feature(s, id, feature, append_explanation, expl, err);
    if (rc != SAE_OK) {
        json_decref(expl);
        return rc;
    }
    json_t *j = feature_stats_json(id, feature, &f);
    if (!j) {
        json_decref(expl);
        return sae_fail(err, "out of memory");
    }
    if (json_object_set_new(j, "explanations", expl) != 0) {   /* releases expl */
        json_decref(j);
        return sae_fail(err, "out of memory");
    }
    *out = j;
    return SAE_OK;
}

/* ---- Examples ------------------------------------------------------------------- */

int featjson_example_kind(const char *name, store_example_kind *kind)
{
    static const char *const names[] = {"top", "bucket", "negative"};
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, names[i])) {
            *kind = (store_example_kind)i;
            return SAE_OK;
        }
    return SAE_ERR;
}

/* Token strings from the stored vocabulary; *vocab NULL without one. */
static int load_vocab(store *s, const char *id, json_t **vocab, sae_error *err)
{
    char *text = NULL;
    int rc = store_vocab_get(s, id, &text, err);
    json_t *v = rc == SAE_OK ? json_loads(text, 0, NULL) : NULL;
    free(text);
    *vocab = json_is_array(v) ? v : (json_decref(v), NULL);
    return rc == STORE_NOT_FOUND ? SAE_OK : rc;
}

static json_t *example_json(const store_example *ex, const json_t *vocab)
{
    json_t *tokens = json_array(), *ids = json_array(), *values = json_array();
    for (uint32_t i = 0; tokens && ids && values && i < ex->h.n; i++) {
        json_t *str = vocab && ex->tokens[i] >= 0
                          ? json_array_get(vocab, (size_t)ex->tokens[i]) : NULL;
        json_array_append_new(tokens, str ? json_incref(str) : json_integer(ex->tokens[i]));
        json_array_append_new(ids, json_integer(ex->tokens[i]));
        json_array_append_new(values, json_real(ex->values[i]));
    }
    /* json_pack's "o" steals each reference, on failure too. */
    return json_pack("{s:o, s:o, s:o, s:f, s:i, s:I, s:i, s:i, s:I, s:f}", "tokens", tokens,
                     "token_ids", ids, "values", values, "max_value", (double)ex->h.max_value,
                     "max_index", (int)ex->h.max_index, "doc", (json_int_t)ex->h.doc,
                     "pos", (int)ex->h.pos, "start", (int)ex->h.start,
                     "row", (json_int_t)ex->h.row, "value", (double)ex->h.value);
}

int featjson_examples(store *s, const char *id, uint32_t feature, store_example_kind kind,
                      uint32_t bucket, uint32_t limit, json_t **out, sae_error *err)
{
    store_example *ex = NULL;
    uint32_t n = 0;
    json_t *vocab = NULL;
    int rc = store_examples_get(s, id, feature, kind, bucket, limit, &ex, &n, err);
    if (rc == SAE_OK)
        rc = load_vocab(s, id, &vocab, err);
    json_t *a = rc == SAE_OK ? json_array() : NULL;
    for (uint32_t i = 0; a && i < n; i++) {
        json_t *e = example_json(&ex[i], vocab);
        if (!e || json_array_append_new(a, e) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    json_decref(vocab);
    store_examples_free(ex, n);
    if (rc != SAE_OK)
        return rc;
    *out = a ? json_pack("{s:o}", "examples", a) : NULL;
    return *out ? SAE_OK : sae_fail(err, "out of memory");
}

/* ---- Calibration ------------------------------------------------------------------ */

typedef struct score_list {
    const char *scorer;         /* NULL: all */
    profile_score *scores;
    size_t n, cap;
    sae_error *err;
    bool failed;                /* the store stops a list at any non-zero: remember why */
} score_list;

static int collect_score(void *vctx, const store_explanation *e)
{
    score_list *c = vctx;
    if (c->scorer && strcmp(c->scorer, e->scorer) != 0)
        return 0;
    json_t *j = json_loads(e->json, 0, NULL);
    double score;
    int bad = json_unpack(j, "{s:F}", "score", &score);
    json_decref(j);
    if (bad) {
        c->failed = true;
        return sae_fail(c->err, "an explanation of feature %u has no score", e->feature);
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        profile_score *p = realloc(c->scores, cap * sizeof *p);
        if (!p) {
            c->failed = true;
            return sae_fail(c->err, "out of memory");
        }
        c->scores = p;
        c->cap = cap;
    }
    c->scores[c->n++] = (profile_score){(int)e->bucket, score};
    return 0;
}

static json_t *calibration_json(const char *id, const char *scorer, const profile_calibration *k)
{
    json_t *rows = json_array();
    for (int b = 0; rows && b < PROFILE_N_BUCKETS; b++)
        json_array_append_new(rows, json_pack("{s:i, s:f, s:o, s:[o, o], s:i}", "bucket", b,
                                              "centre_percentile", profile_bucket_centre(b),
                                              "mean", json_num(k->mean[b]), "ci95",
                                              json_num(k->ci_low[b]), json_num(k->ci_high[b]),
                                              "n_features", k->n[b]));
    return json_pack("{s:s, s:o, s:o, s:o, s:i}", "model_id", id, "scorer",
                     scorer ? json_string(scorer) : json_null(), "buckets", rows, "pearson_r",
                     json_num(k->pearson_r), "n_pairs", k->n_pairs);
}

int featjson_calibration(store *s, const char *id, const char *scorer, json_t **out,
                         sae_error *err)
{
    score_list c = {.scorer = scorer, .err = err};
    int rc = store_explanation_list(s, id, collect_score, &c, err);
    if (rc == SAE_OK && c.failed)
        rc = SAE_ERR;
    if (rc == SAE_OK) {
        profile_calibration k;
        profile_calibrate(c.scores, c.n, &k);
        *out = calibration_json(id, scorer, &k);
        if (!*out)
            rc = sae_fail(err, "out of memory");
    }
    free(c.scores);
    return rc;
}

/* ---- Explanations ----------------------------------------------------------------- */

static bool key_allowed(const char *key, const char *const *extra_keys)
{
    static const char *const own[] = {"bucket", "text", "scorer", "score", "judge", NULL};
    for (const char *const *k = own; *k; k++)
        if (!strcmp(key, *k))
            return true;
    for (const char *const *k = extra_keys; k && *k; k++)
        if (!strcmp(key, *k))
            return true;
    return false;
}

/* A string of 1..max bytes without NUL (jansson allows \u0000 inside strings;
 * the store keeps C strings). */
static bool string_ok(const json_t *v, size_t max)
{
    size_t n = json_string_length(v);
    return json_is_string(v) && n >= 1 && n <= max && strlen(json_string_value(v)) == n;
}

/* The checks, field by field, each with a message naming the field. */
static int check_explanation(const json_t *o, const char *const *extra_keys, sae_error *err)
{
    if (!json_is_object(o))
        return sae_fail(err, "an explanation must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        if (!key_allowed(key, extra_keys))
            return sae_fail(err, "unknown key \"%.64s\"", key);
    }
    json_int_t bucket = json_integer_value(json_object_get(o, "bucket"));
    if (!json_is_integer(json_object_get(o, "bucket")) || bucket < 0 ||
        bucket >= STORE_N_BUCKETS)
        return sae_fail(err, "\"bucket\" must be an integer 0..%d", STORE_N_BUCKETS - 1);
    if (!string_ok(json_object_get(o, "text"), FEATJSON_TEXT_MAX))
        return sae_fail(err, "\"text\" must be a string of 1..%d bytes", FEATJSON_TEXT_MAX);
    const json_t *scorer = json_object_get(o, "scorer");
    if (!json_is_string(scorer) || !store_id_valid(json_string_value(scorer)) ||
        strlen(json_string_value(scorer)) != json_string_length(scorer))
        return sae_fail(err, "\"scorer\" must be 1..%d characters of A-Z a-z 0-9 . _ -",
                        STORE_ID_MAX);
    const json_t *score = json_object_get(o, "score");
    if (!json_is_number(score) || !isfinite(json_number_value(score)))
        return sae_fail(err, "\"score\" must be a finite number");
    const json_t *judge = json_object_get(o, "judge");
    if (judge && !json_is_null(judge) && !string_ok(judge, FEATJSON_JUDGE_MAX))
        return sae_fail(err, "\"judge\" must be a string of 1..%d bytes, or null",
                        FEATJSON_JUDGE_MAX);
    return SAE_OK;
}

int featjson_explanation_parse(const json_t *o, const char *const *extra_keys,
                               featjson_explanation *out, sae_error *err)
{
    if (check_explanation(o, extra_keys, err) != SAE_OK)
        return SAE_ERR;
    const json_t *judge = json_object_get(o, "judge");
    json_t *v = json_pack("{s:s, s:f, s:s?}", "text",
                          json_string_value(json_object_get(o, "text")), "score",
                          json_number_value(json_object_get(o, "score")), "judge",
                          json_is_string(judge) ? json_string_value(judge) : NULL);
    out->bucket = (uint32_t)json_integer_value(json_object_get(o, "bucket"));
    out->scorer = json_string_value(json_object_get(o, "scorer"));
    out->value = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return out->value ? SAE_OK : sae_fail(err, "out of memory");
}
