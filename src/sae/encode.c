/* encode.c - preprocessing, sparse codes, and the encode / decode entry points
 * that dispatch to the model's backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sae.h"
#include "vec.h"

static const char *norm_names[] = {"none", "center_unit_norm", "layer_norm", "constant_scale"};

const char *sae_norm_name(sae_norm n)
{
    return norm_names[n];
}

int sae_norm_parse(const char *s, sae_norm *out)
{
    for (int i = 0; i < (int)(sizeof norm_names / sizeof norm_names[0]); i++)
        if (!strcmp(s, norm_names[i])) {
            *out = (sae_norm)i;
            return SAE_OK;
        }
    return SAE_ERR;
}

#define PARALLEL_MIN_FLOATS (1 << 18)

/* Statistics in double: a float sum over thousands of columns loses digits
 * the reference keeps; over vec.h's sixteen lanes (a single running sum
 * waited on each add). A zero row stays zero rather than becoming NaN. */
void sae_preprocess(const sae_config *cfg, const float *x, int64_t n, float *out)
{
    const int d = cfg->d_in;
    /* threads only for a large batch: waking them costs more than a serving
     * batch's rows (64 x 768: 145 us with two threads, 30 us on one) */
#pragma omp parallel for schedule(static) if (n * d >= PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        double shift = 0.0, scale = 1.0;
        switch (cfg->normalize) {
        case SAE_NORM_NONE:
            break;
        case SAE_NORM_CONSTANT_SCALE:
            scale = cfg->norm_scale;
            break;
        case SAE_NORM_CENTER_UNIT_NORM:
        case SAE_NORM_LAYER_NORM: {
            shift = vec_sum(xr, (size_t)d) / d;
            const double sq = vec_sum_sq_dev(xr, shift, (size_t)d);
            if (cfg->normalize == SAE_NORM_LAYER_NORM)
                scale = 1.0 / sqrt(sq / d + 1e-5);
            else
                scale = sq > 0.0 ? 1.0 / sqrt(sq) : 0.0;
            break;
        }
        }
        vec_shift_scale(xr, shift, scale, o, (size_t)d);
    }
}

void sae_codes_init(sae_codes *c)
{
    memset(c, 0, sizeof *c);
}

void sae_codes_free(sae_codes *c)
{
    free(c->indptr);
    free(c->indices);
    free(c->values);
    sae_codes_init(c);
}

int sae_codes_reserve(sae_codes *c, int64_t n_rows, int64_t nnz, sae_error *err)
{
    /* geometric growth: encode reserves chunk by chunk */
    if (n_rows + 1 > c->cap_rows || !c->indptr) {
        int64_t want = n_rows + 1 > 2 * c->cap_rows ? n_rows + 1 : 2 * c->cap_rows;
        int64_t *p = realloc(c->indptr, (size_t)want * sizeof *p);
        if (!p)
            return sae_fail(err, "out of memory for codes of %lld rows", (long long)n_rows);
        c->indptr = p;
        c->cap_rows = want;
    }
    if (nnz > c->cap_nnz || !c->indices) {
        size_t want = (size_t)(nnz > 2 * c->cap_nnz ? nnz : 2 * c->cap_nnz);
        if (want == 0)
            want = 1;
        int32_t *i = realloc(c->indices, want * sizeof *i);
        if (!i)
            return sae_fail(err, "out of memory for %lld code entries", (long long)nnz);
        c->indices = i;
        float *v = realloc(c->values, want * sizeof *v);
        if (!v)
            return sae_fail(err, "out of memory for %lld code entries", (long long)nnz);
        c->values = v;
        c->cap_nnz = (int64_t)want;
    }
    return SAE_OK;
}

int sae_codes_validate(const sae_codes *c, int d_sae, sae_error *err)
{
    if (c->indptr[0] != 0)
        return sae_fail(err, "codes: indptr[0] must be 0");
    for (int64_t r = 0; r < c->n_rows; r++) {
        if (c->indptr[r + 1] < c->indptr[r])
            return sae_fail(err, "codes: indptr decreases at row %lld", (long long)r);
        for (int64_t e = c->indptr[r]; e < c->indptr[r + 1]; e++) {
            if (c->indices[e] < 0 || c->indices[e] >= d_sae)
                return sae_fail(err, "codes: row %lld has latent index %d outside [0, %d)",
                                (long long)r, c->indices[e], d_sae);
            if (!isfinite(c->values[e]))
                return sae_fail(err, "codes: row %lld has a non-finite value", (long long)r);
        }
    }
    return SAE_OK;
}

static const sae_backend *backend_of(const sae_model *m)
{
    return m->backend ? m->backend : &sae_backend_cpu;
}

int sae_encode(const sae_model *m, const float *x, int64_t n, sae_codes *codes, sae_error *err)
{
    if (n < 0)
        return sae_fail(err, "encode: negative row count");
    return backend_of(m)->encode(m, x, n, codes, err);
}

int sae_decode(const sae_model *m, const sae_codes *codes, float *xhat, sae_error *err)
{
    return backend_of(m)->decode(m, codes, xhat, err);
}
