/* config.c - cfg.json in the layouts we read (SAELens v6, SAELens' older flat
 * layout, EleutherAI sparsify) and the native one we write. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "config.h"

/* Largest d_in * d_sae we accept: 2^34 floats (64 GiB) per matrix. */
#define MAX_MATRIX_ELEMS (1LL << 34)

typedef struct reader {
    json_t *root;
    const char *source;
    sae_error *err;
} reader;

/* Integer field; `required` or else `fallback`. */
static int get_int(const reader *r, const char *key, int required, long long fallback,
                   long long *out)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sae_fail(r->err, "%s: missing field \"%s\"", r->source, key);
        *out = fallback;
        return SAE_OK;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return SAE_OK;
    }
    /* SAELens writes batchtopk's k as a float; accept whole numbers */
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        fabs(json_real_value(v)) < 1e15) {
        *out = (long long)json_real_value(v);
        return SAE_OK;
    }
    return sae_fail(r->err, "%s: field \"%s\" must be an integer", r->source, key);
}

static int get_float(const reader *r, const char *key, double fallback, float *out)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        *out = (float)fallback;
        return SAE_OK;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return sae_fail(r->err, "%s: field \"%s\" must be a finite number", r->source, key);
    *out = (float)json_number_value(v);
    return SAE_OK;
}

static int get_bool(const reader *r, const char *key, bool fallback, bool *out)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return SAE_OK;
    }
    if (!json_is_boolean(v))
        return sae_fail(r->err, "%s: field \"%s\" must be true or false", r->source, key);
    *out = json_is_true(v);
    return SAE_OK;
}

/* String field, or fallback when absent; NULL out means wrong type. */
static int get_string(const reader *r, const char *key, const char *fallback, const char **out)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return SAE_OK;
    }
    if (!json_is_string(v))
        return sae_fail(r->err, "%s: field \"%s\" must be a string", r->source, key);
    *out = json_string_value(v);
    return SAE_OK;
}

static int to_int_field(const reader *r, const char *key, long long v, int *out)
{
    if (v < 0 || v > 0x7fffffff)
        return sae_fail(r->err, "%s: field \"%s\" = %lld is out of range", r->source, key, v);
    *out = (int)v;
    return SAE_OK;
}

/* Object field kept as JSON text (metadata, training provenance). */
static int keep_object(const reader *r, const char *key, char **out)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v))
        return SAE_OK;
    if (!json_is_object(v))
        return sae_fail(r->err, "%s: field \"%s\" must be an object", r->source, key);
    *out = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
    return *out ? SAE_OK : sae_fail(r->err, "%s: out of memory", r->source);
}

/* SAELens' older flat layout keeps model facts at the top level; gather them
 * into metadata so the native file has them where v6 expects them. */
static int flat_metadata(const reader *r, char **out)
{
    static const char *keys[] = {"model_name", "hook_name", "hook_layer", "hook_head_index",
                                 "context_size", "dataset_path", "prepend_bos"};
    json_t *md = json_object();
    if (!md)
        return sae_fail(r->err, "%s: out of memory", r->source);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(r->root, keys[i]);
        if (v)
            json_object_set(md, keys[i], v);
    }
    if (json_object_size(md) > 0)
        *out = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(md);
    return SAE_OK;
}

static int parse_saelens(const reader *r, sae_config *c)
{
    long long d_in, d_sae, k = 0;
    const char *arch_name = NULL, *norm = NULL, *dtype = NULL, *act_fn = NULL;
    if (get_int(r, "d_in", 1, 0, &d_in) || get_int(r, "d_sae", 1, 0, &d_sae) ||
        to_int_field(r, "d_in", d_in, &c->d_in) || to_int_field(r, "d_sae", d_sae, &c->d_sae) ||
        get_string(r, "architecture", "standard", &arch_name) ||
        get_string(r, "normalize_activations", "none", &norm) ||
        get_string(r, "dtype", "float32", &dtype) ||
        get_string(r, "activation_fn_str", NULL, &act_fn) ||
        get_bool(r, "apply_b_dec_to_input", true, &c->apply_b_dec_to_input) ||
        get_int(r, "k", 0, 0, &k))
        return SAE_ERR;

    /* older flat layout: "standard" + activation_fn_str "topk" + kwargs.k */
    json_t *kwargs = json_object_get(r->root, "activation_fn_kwargs");
    if (act_fn && !strcmp(act_fn, "topk")) {
        json_t *kv = json_is_object(kwargs) ? json_object_get(kwargs, "k") : NULL;
        if (!json_is_integer(kv))
            return sae_fail(r->err, "%s: activation_fn_str is \"topk\" but "
                            "activation_fn_kwargs.k is missing or not an integer", r->source);
        arch_name = "topk";
        k = json_integer_value(kv);
    } else if (k == 0 && json_is_object(kwargs) &&
               json_is_integer(json_object_get(kwargs, "k"))) {
        k = json_integer_value(json_object_get(kwargs, "k"));
    }
    if (act_fn && strcmp(act_fn, "relu") != 0 && strcmp(act_fn, "topk") != 0) {
        return sae_fail(r->err, "%s: activation_fn_str \"%s\" is not supported (relu, topk)",
                        r->source, act_fn);
    }

    c->arch = sae_arch_find(arch_name);
    if (!c->arch)
        return sae_fail(r->err, "%s: unknown architecture \"%s\" (known: %s)", r->source,
                        arch_name, sae_arch_names());
    if (c->arch->uses_k && to_int_field(r, "k", k, &c->k))
        return SAE_ERR;

    if (sae_norm_parse(norm, &c->normalize) != SAE_OK)
        return sae_fail(r->err, "%s: normalize_activations \"%s\" is not supported (none, "
                        "center_unit_norm, layer_norm, constant_scale; fold SAELens' "
                        "expected_average_only_in scaling into the weights first)",
                        r->source, norm);
    if (get_float(r, "normalization_scale", 1.0, &c->norm_scale) ||
        get_float(r, "lambda_mag", 1e-4, &c->lambda_mag) ||
        get_float(r, "beta_final", 1e-4, &c->beta_final) ||
        get_bool(r, "layernorm", true, &c->layernorm))
        return SAE_ERR;
    snprintf(c->dtype, sizeof c->dtype, "%s", dtype);

    if (keep_object(r, "training", &c->training_json))
        return SAE_ERR;
    if (json_object_get(r->root, "metadata"))
        return keep_object(r, "metadata", &c->metadata_json);
    return flat_metadata(r, &c->metadata_json);
}

static int parse_sparsify(const reader *r, sae_config *c)
{
    long long d_in, num_latents, expansion, k;
    bool skip = false, transcode = false;
    if (get_int(r, "d_in", 1, 0, &d_in) || to_int_field(r, "d_in", d_in, &c->d_in) ||
        get_int(r, "num_latents", 0, 0, &num_latents) ||
        get_int(r, "expansion_factor", 0, 32, &expansion) || get_int(r, "k", 1, 0, &k) ||
        to_int_field(r, "k", k, &c->k) || get_bool(r, "skip_connection", false, &skip) ||
        get_bool(r, "transcode", false, &transcode))
        return SAE_ERR;
    if (skip || transcode)
        return sae_fail(r->err, "%s: sparsify skip connections / transcoders are not supported",
                        r->source);
    if (num_latents <= 0 && (expansion < 1 || expansion > 1 << 20))
        return sae_fail(r->err, "%s: field \"expansion_factor\" = %lld is out of range", r->source,
                        expansion);
    long long m = num_latents > 0 ? num_latents : d_in * expansion;
    if (to_int_field(r, "num_latents", m, &c->d_sae))
        return SAE_ERR;
    c->arch = sae_arch_find("topk");
    c->apply_b_dec_to_input = true;
    c->normalize = SAE_NORM_NONE;
    c->norm_scale = 1.0f;
    snprintf(c->dtype, sizeof c->dtype, "float32");
    return SAE_OK;
}

int sae_config_parse(const char *text, size_t len, sae_format fmt, const char *source,
                     sae_config *out, sae_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return sae_fail(err, "%s: not valid JSON: %s (line %d)", source, jerr.text, jerr.line);
    reader r = {root, source, err};
    int rc;
    if (!json_is_object(root))
        rc = sae_fail(err, "%s: must be a JSON object", source);
    else
        rc = fmt == SAE_FORMAT_SPARSIFY ? parse_sparsify(&r, out) : parse_saelens(&r, out);
    json_decref(root);
    if (rc == SAE_OK && sae_config_validate(out, err) != SAE_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        rc = sae_fail(err, "%s: %s", source, msg);
    }
    if (rc != SAE_OK)
        sae_config_clear(out);
    return rc;
}

int sae_config_validate(const sae_config *c, sae_error *err)
{
    if (c->d_in <= 0 || c->d_sae <= 0)
        return sae_fail(err, "d_in and d_sae must be positive (got %d, %d)", c->d_in, c->d_sae);
    if ((long long)c->d_in * c->d_sae > MAX_MATRIX_ELEMS)
        return sae_fail(err, "d_in x d_sae = %lld is too large", (long long)c->d_in * c->d_sae);
    if (!c->arch)
        return sae_fail(err, "no architecture");
    if (c->arch->uses_k && (c->k < 1 || c->k > c->d_sae))
        return sae_fail(err, "k = %d must be between 1 and d_sae = %d", c->k, c->d_sae);
    if (c->normalize == SAE_NORM_CONSTANT_SCALE && !(c->norm_scale > 0.0f && isfinite(c->norm_scale)))
        return sae_fail(err, "normalization_scale must be a positive finite number");
    if (!strcmp(c->arch->name, "ptopk")) {
        if (!(c->beta_final > 0.0f) || !isfinite(c->beta_final))
            return sae_fail(err, "beta_final must be positive");
        if (!(c->lambda_mag >= 0.0f) || !isfinite(c->lambda_mag))
            return sae_fail(err, "lambda_mag must be zero or positive");
    }
    return SAE_OK;
}

/* Adds a JSON object given as text under key; bad text is dropped. */
static void set_object_text(json_t *root, const char *key, const char *text)
{
    if (!text)
        return;
    json_t *v = json_loads(text, 0, NULL);
    if (v)
        json_object_set_new(root, key, v);
}

char *sae_config_to_json(const sae_config *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "architecture", json_string(c->arch->name));
    json_object_set_new(o, "d_in", json_integer(c->d_in));
    json_object_set_new(o, "d_sae", json_integer(c->d_sae));
    json_object_set_new(o, "dtype", json_string(c->dtype[0] ? c->dtype : "float32"));
    json_object_set_new(o, "apply_b_dec_to_input", json_boolean(c->apply_b_dec_to_input));
    json_object_set_new(o, "normalize_activations", json_string(sae_norm_name(c->normalize)));
    if (c->normalize == SAE_NORM_CONSTANT_SCALE)
        json_object_set_new(o, "normalization_scale", json_real(c->norm_scale));
    if (c->arch->uses_k)
        json_object_set_new(o, "k", json_integer(c->k));
    if (!strcmp(c->arch->name, "ptopk")) {
        json_object_set_new(o, "lambda_mag", json_real(c->lambda_mag));
        json_object_set_new(o, "beta_final", json_real(c->beta_final));
        json_object_set_new(o, "layernorm", json_boolean(c->layernorm));
    }
    set_object_text(o, "metadata", c->metadata_json);
    if (!json_object_get(o, "metadata"))
        json_object_set_new(o, "metadata", json_object());
    set_object_text(o, "training", c->training_json);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

void sae_config_clear(sae_config *c)
{
    free(c->metadata_json);
    free(c->training_json);
    c->metadata_json = c->training_json = NULL;
}

static int dup_text(const char *s, char **out)
{
    *out = NULL;
    if (!s)
        return SAE_OK;
    *out = strdup(s);
    return *out ? SAE_OK : SAE_ERR;
}

int sae_config_copy(sae_config *dst, const sae_config *src, sae_error *err)
{
    *dst = *src;
    if (dup_text(src->metadata_json, &dst->metadata_json) ||
        dup_text(src->training_json, &dst->training_json)) {
        sae_config_clear(dst);
        return sae_fail(err, "out of memory copying a config");
    }
    return SAE_OK;
}
