/* reqparse.c - see reqparse.h. */
#include "reqparse.h"
#include "jnum.h"
#include "util.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int api_fail(api_err *e, int status, const char *code, const char *fmt, ...)
{
    e->status = status;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

bool json_depth_ok(const char *s, size_t n, int max_depth)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return false;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return true;
}

void encode_req_free(encode_req *r)
{
    if (!r->x_borrowed)
        free(r->x);
    memset(r, 0, sizeof *r);
}

/* Loads a JSON object after the depth check; 400 for anything else. */
static json_t *load_object(const char *s, size_t n, api_err *e)
{
    if (!json_depth_ok(s, n, REQ_MAX_JSON_DEPTH)) {
        api_fail(e, 400, "too_deep", "JSON nests deeper than %d levels", REQ_MAX_JSON_DEPTH);
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(s, n, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_fail(e, 400, "invalid_json", "invalid JSON at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_fail(e, 422, "invalid_request", "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A JSON number that is a finite float32. */
static int to_f32(const json_t *v, float *out, const char *what, size_t i, size_t j,
                  api_err *e)
{
    if (!json_is_number(v))
        return api_fail(e, 422, "invalid_type", "%s[%zu][%zu] is not a number", what, i, j);
    double d = json_number_value(v);
    float f = (float)d;
    if (!isfinite(f))
        return api_fail(e, 422, "non_finite", "%s[%zu][%zu] = %g is not a finite float32",
                        what, i, j, d);
    *out = f;
    return 0;
}

/* Reads the optional top_k / reconstruct members. */
static int encode_options(json_t *root, encode_req *out, api_err *e)
{
    json_t *tk = json_object_get(root, "top_k");
    if (tk && !json_is_null(tk)) {
        double v = json_is_number(tk) ? json_number_value(tk) : -1;
        if (!(v >= 1 && v <= 1e9) || v != floor(v))
            return api_fail(e, 422, "invalid_type", "top_k must be an integer >= 1");
        out->top_k = (int)v;
    }
    json_t *rc = json_object_get(root, "reconstruct");
    if (rc && !json_is_null(rc)) {
        if (!json_is_boolean(rc))
            return api_fail(e, 422, "invalid_type", "reconstruct must be a boolean");
        out->reconstruct = json_is_true(rc);
    }
    return 0;
}

static int encode_rows(json_t *inputs, int d_in, encode_req *out, api_err *e)
{
    if (!json_is_array(inputs))
        return api_fail(e, 422, "invalid_request",
                        "\"inputs\" must be an array of rows (arrays of %d numbers)", d_in);
    size_t n = json_array_size(inputs);
    if (n == 0)
        return api_fail(e, 422, "invalid_shape", "\"inputs\" has no rows");
    out->x = malloc(n * (size_t)d_in * sizeof(float));
    if (!out->x)
        return api_fail(e, 503, "out_of_memory", "no memory for %zu rows", n);
    out->n = (int64_t)n;
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(inputs, i);
        if (!json_is_array(row))
            return api_fail(e, 422, "invalid_type", "inputs[%zu] is not an array", i);
        if (json_array_size(row) != (size_t)d_in)
            return api_fail(e, 422, "invalid_shape", "inputs[%zu] has %zu values; the model's "
                            "d_in is %d", i, json_array_size(row), d_in);
        for (size_t j = 0; j < (size_t)d_in; j++)
            if (to_f32(json_array_get(row, j), &out->x[i * (size_t)d_in + j], "inputs", i, j,
                       e) < 0)
                return -1;
    }
    return 0;
}

/* The fast path: one scan of the usual body, {"inputs": [[numbers], ...]}
 * with "top_k" (an integer or null) and "reconstruct" (a boolean or null),
 * keys in any order, rows written straight into x. Anything else (other keys,
 * types or shapes, a duplicate key, a number jnum declines, a value that is
 * not a finite float32, bytes that are not JSON) makes it give up, and the
 * jansson path below parses the body: its values are the same (both round
 * the decimal to the correctly rounded double, then to float) and it words
 * every error. */
typedef struct scan {
    const char *p, *end;
} scan;

static void skip_ws(scan *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

/* Consumes ch (after whitespace) when it is next. */
static bool eat(scan *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool eat_word(scan *c, const char *w)
{
    size_t n = strlen(w);
    skip_ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool eat_number(scan *c, double *v)
{
    skip_ws(c);
    size_t used = jnum_parse(c->p, c->end, v);
    c->p += used;
    return used > 0;
}

/* "inputs": [[d_in numbers], ...] into out->x, grown as rows arrive. */
static bool fast_rows(scan *c, int d_in, encode_req *out)
{
    if (!eat(c, '['))
        return false;
    size_t cap = 0;
    do {
        if (!eat(c, '['))
            return false;
        if ((size_t)out->n == cap) {
            cap = cap ? 2 * cap : 1;
            float *x = realloc(out->x, cap * (size_t)d_in * sizeof *x);
            if (!x)
                return false;
            out->x = x;
        }
        float *row = out->x + (size_t)out->n * d_in;
        for (int j = 0; j < d_in; j++) {
            double v;
            if ((j > 0 && !eat(c, ',')) || !eat_number(c, &v))
                return false;
            row[j] = (float)v;
            if (!isfinite(row[j]))
                return false;
        }
        if (!eat(c, ']'))
            return false;
        out->n++;
    } while (eat(c, ','));
    return eat(c, ']');
}

static bool fast_encode_json(const char *s, size_t n, int d_in, encode_req *out)
{
    scan c = {s, s + n};
    bool seen_inputs = false, seen_top_k = false, seen_reconstruct = false;
    if (!eat(&c, '{'))
        return false;
    do {
        if (eat_word(&c, "\"inputs\"")) {
            if (seen_inputs)
                return false; /* jansson refuses duplicates */
            seen_inputs = true;
            if (!eat(&c, ':') || !fast_rows(&c, d_in, out))
                return false;
        } else if (eat_word(&c, "\"top_k\"")) {
            if (seen_top_k)
                return false; /* jansson refuses duplicates */
            seen_top_k = true;
            double v;
            if (!eat(&c, ':'))
                return false;
            if (!eat_word(&c, "null")) {
                if (!eat_number(&c, &v) || !(v >= 1 && v <= 1e9) || v != floor(v))
                    return false;
                out->top_k = (int)v;
            }
        } else if (eat_word(&c, "\"reconstruct\"")) {
            if (seen_reconstruct)
                return false; /* jansson refuses duplicates */
            seen_reconstruct = true;
            if (!eat(&c, ':'))
                return false;
            if (eat_word(&c, "true"))
                out->reconstruct = true;
            else if (!eat_word(&c, "false") && !eat_word(&c, "null"))
                return false;
        } else {
            return false;
        }
    } while (eat(&c, ','));
    if (!eat(&c, '}'))
        return false;
    skip_ws(&c);
    return c.p == c.end && seen_inputs && out->n > 0;
}

int parse_encode_json(const char *s, size_t n, int d_in, encode_req *out, api_err *e)
{
    memset(out, 0, sizeof *out);
    if (fast_encode_json(s, n, d_in, out))
        return 0;
    encode_req_free(out);
    return parse_encode_json_jansson(s, n, d_in, out, e);
}

int parse_encode_json_jansson(const char *s, size_t n, int d_in, encode_req *out, api_err *e)
{
    memset(out, 0, sizeof *out);
    json_t *root = load_object(s, n, e);
    if (!root)
        return -1;
    int rc = encode_options(root, out, e);
    if (rc == 0) {
        json_t *inputs = json_object_get(root, "inputs");
        rc = inputs ? encode_rows(inputs, d_in, out, e)
                    : api_fail(e, 422, "invalid_request", "missing \"inputs\"");
    }
    json_decref(root);
    if (rc < 0)
        encode_req_free(out);
    return rc;
}

int parse_encode_binary(const void *body, size_t n, int d_in, encode_req *out, api_err *e)
{
    memset(out, 0, sizeof *out);
    size_t row_bytes = (size_t)d_in * sizeof(float);
    if (n == 0 || n % row_bytes != 0)
        return api_fail(e, 422, "invalid_shape", "a binary body holds float32 rows of %d values "
                        "(%zu bytes each); got %zu bytes", d_in, row_bytes, n);
    /* The engine reads host floats; saed only builds on little-endian hosts
     * (checked in main), so the body's bytes are the floats. */
    const float *x = body;
    size_t count = n / sizeof(float), i = sae_first_nonfinite(x, count);
    if (i < count)
        return api_fail(e, 422, "non_finite", "row %zu column %zu is not finite",
                        i / (size_t)d_in, i % (size_t)d_in);
    out->x = (float *)x;
    out->x_borrowed = true;
    out->n = (int64_t)(n / row_bytes);
    return 0;
}

/* One {"indices": [...], "values": [...]} entry appended to c. */
static int decode_row(json_t *row, size_t r, int d_sae, sae_codes *c, api_err *e)
{
    json_t *idx = json_is_object(row) ? json_object_get(row, "indices") : NULL;
    json_t *val = json_is_object(row) ? json_object_get(row, "values") : NULL;
    if (!json_is_array(idx) || !json_is_array(val))
        return api_fail(e, 422, "invalid_type", "codes[%zu] must be an object with arrays "
                        "\"indices\" and \"values\"", r);
    size_t k = json_array_size(idx);
    if (json_array_size(val) != k)
        return api_fail(e, 422, "invalid_shape", "codes[%zu]: %zu indices but %zu values", r, k,
                        json_array_size(val));
    int64_t base = c->indptr[r];
    sae_error err;
    if (sae_codes_reserve(c, (int64_t)r + 1, base + (int64_t)k, &err) != SAE_OK)
        return api_fail(e, 503, "out_of_memory", "%s", err.msg);
    for (size_t j = 0; j < k; j++) {
        json_t *iv = json_array_get(idx, j);
        double d = json_is_number(iv) ? json_number_value(iv) : -1;
        if (!(d >= 0 && d < d_sae) || d != floor(d))
            return api_fail(e, 422, "invalid_index", "codes[%zu].indices[%zu] is not an integer "
                            "in [0, %d)", r, j, d_sae);
        c->indices[base + (int64_t)j] = (int32_t)d;
        if (to_f32(json_array_get(val, j), &c->values[base + (int64_t)j], "codes.values", r, j,
                   e) < 0)
            return -1;
    }
    c->indptr[r + 1] = base + (int64_t)k;
    c->n_rows = (int64_t)r + 1;
    return 0;
}

int parse_decode_json(const char *s, size_t n, int d_sae, sae_codes *out, api_err *e)
{
    json_t *root = load_object(s, n, e);
    if (!root)
        return -1;
    int rc = 0;
    json_t *codes = json_object_get(root, "codes");
    sae_error err;
    if (!json_is_array(codes) || json_array_size(codes) == 0)
        rc = api_fail(e, 422, "invalid_request", "\"codes\" must be a non-empty array of "
                      "{\"indices\", \"values\"}");
    else if (sae_codes_reserve(out, (int64_t)json_array_size(codes), 0, &err) != SAE_OK)
        rc = api_fail(e, 503, "out_of_memory", "%s", err.msg);
    if (rc == 0) {
        out->n_rows = 0;
        out->indptr[0] = 0;
        for (size_t r = 0; r < json_array_size(codes) && rc == 0; r++)
            rc = decode_row(json_array_get(codes, r), r, d_sae, out, e);
    }
    json_decref(root);
    return rc;
}

int64_t parse_index(const char *s, int64_t limit)
{
    if (!s || !*s || strlen(s) > 18)
        return -1;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v < limit ? v : -1;
}
