/* cmd_model.c - saectl encode, decode, inspect, convert: the model-at-rest
 * commands. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "cli.h"
#include "config.h"
#include "npy.h"
#include "safetensors.h"
#include "sae.h"

/* Loads a model onto a device, reporting errors as `saectl CMD: ...`. */
static int load_model(const char *cmd, const char *dir, const char *device, sae_model **m)
{
    sae_error err;
    if (sae_load(dir, m, &err) != SAE_OK)
        return cli_error(cmd, CLI_FAIL, "%s", err.msg);
    if (sae_model_use_device(*m, device, &err) != SAE_OK) {
        sae_free(*m);
        return cli_error(cmd, CLI_FAIL, "%s", err.msg);
    }
    return CLI_OK;
}

/* Reads X.npy as [N, d_in] finite floats. */
static int read_activations(const char *cmd, const char *path, int d_in, npy_array *x)
{
    sae_error err;
    if (npy_read_f32(path, 2, x, &err) != SAE_OK)
        return cli_error(cmd, CLI_FAIL, "%s", err.msg);
    if (x->shape[1] != d_in) {
        npy_free(x);
        return cli_error(cmd, CLI_FAIL, "%s: rows have %lld values, the model's d_in is %d",
                         path, (long long)x->shape[1], d_in);
    }
    int64_t n = x->shape[0] * x->shape[1];
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x->data[i])) {
            npy_free(x);
            return cli_error(cmd, CLI_FAIL, "%s: non-finite value at row %lld, column %lld",
                             path, (long long)(i / d_in), (long long)(i % d_in));
        }
    return CLI_OK;
}

static int write_codes(const char *cmd, const char *path, const sae_model *m,
                       const sae_codes *c, bool dense)
{
    const int64_t n = c->n_rows, M = m->cfg.d_sae, nnz = c->indptr[n];
    st_out outs[3];
    memset(outs, 0, sizeof outs);
    float *dense_codes = NULL;
    int n_out;
    if (dense) {
        dense_codes = calloc((size_t)(n > 0 ? n : 1) * (size_t)M, sizeof *dense_codes);
        if (!dense_codes)
            return cli_error(cmd, CLI_FAIL, "out of memory for dense codes [%lld, %lld]",
                             (long long)n, (long long)M);
        for (int64_t r = 0; r < n; r++)
            for (int64_t e = c->indptr[r]; e < c->indptr[r + 1]; e++)
                dense_codes[r * M + c->indices[e]] = c->values[e];
        outs[0] = (st_out){"codes", ST_F32, 2, {n, M}, dense_codes};
        n_out = 1;
    } else if (m->cfg.arch->select) {  /* top-k family: exactly k per row */
        int64_t k = m->cfg.k;
        outs[0] = (st_out){"indices", ST_I32, 2, {n, k}, c->indices};
        outs[1] = (st_out){"values", ST_F32, 2, {n, k}, c->values};
        n_out = 2;
    } else {
        outs[0] = (st_out){"indptr", ST_I64, 1, {n + 1}, c->indptr};
        outs[1] = (st_out){"indices", ST_I32, 1, {nnz}, c->indices};
        outs[2] = (st_out){"values", ST_F32, 1, {nnz}, c->values};
        n_out = 3;
    }
    char meta[256];
    snprintf(meta, sizeof meta, "{\"architecture\": \"%s\", \"d_sae\": \"%lld\"}",
             m->cfg.arch->name, (long long)M);
    sae_error err;
    int rc = st_write(path, outs, n_out, meta, &err);
    free(dense_codes);
    return rc == SAE_OK ? CLI_OK : cli_error(cmd, CLI_FAIL, "%s", err.msg);
}

int cmd_encode(int argc, char **argv)
{
    const char *model = NULL, *input = NULL, *output = NULL, *device = "auto";
    bool dense = false;
    const cli_flag flags[] = {
        {"model", FLAG_STR, &model, true}, {"input", FLAG_STR, &input, true},
        {"output", FLAG_STR, &output, true}, {"dense", FLAG_BOOL, &dense, false},
        {"device", FLAG_STR, &device, false},
    };
    int rc = cli_parse("encode", argc, argv, flags, sizeof flags / sizeof flags[0]);
    if (rc != CLI_OK)
        return rc;
    sae_model *m;
    if ((rc = load_model("encode", model, device, &m)) != CLI_OK)
        return rc;
    npy_array x;
    if ((rc = read_activations("encode", input, m->cfg.d_in, &x)) != CLI_OK) {
        sae_free(m);
        return rc;
    }
    sae_codes codes;
    sae_codes_init(&codes);
    sae_error err;
    if (sae_encode(m, x.data, x.shape[0], &codes, &err) != SAE_OK)
        rc = cli_error("encode", CLI_FAIL, "%s", err.msg);
    else
        rc = write_codes("encode", output, m, &codes, dense);
    sae_codes_free(&codes);
    npy_free(&x);
    sae_free(m);
    return rc;
}

/* Reads a 2-D (or 1-D) tensor of the codes file into a fresh array. */
static int read_tensor(const char *path, const st_file *f, const char *name, int ndim,
                       int is_float, void **out, const st_tensor **t, sae_error *err)
{
    *t = st_find(f, name);
    if (!*t)
        return sae_fail(err, "%s: missing tensor \"%s\"", path, name);
    if ((*t)->ndim != ndim)
        return sae_fail(err, "%s: tensor \"%s\" must have %d dimension(s)", path, name, ndim);
    int64_t n = st_numel(*t);
    *out = malloc((size_t)(n > 0 ? n : 1) * (is_float ? sizeof(float) : sizeof(int32_t)));
    if (!*out)
        return sae_fail(err, "%s: out of memory", path);
    return is_float ? st_read_f32(f, *t, *out, 0, 1, err) : st_read_i32(f, *t, *out, err);
}

/* Codes files, in any of the three shapes encode writes, to CSR. */
static int read_codes(const char *path, int d_sae, sae_codes *c, sae_error *err)
{
    st_file f;
    if (st_open(&f, path, err) != SAE_OK)
        return SAE_ERR;
    const st_tensor *t;
    float *values = NULL;
    int32_t *indices = NULL;
    int rc = SAE_ERR;
    if (st_find(&f, "codes")) {                       /* dense [N, M] */
        if (read_tensor(path, &f, "codes", 2, 1, (void **)&values, &t, err) != SAE_OK)
            goto out;
        if (t->shape[1] != d_sae) {
            sae_fail(err, "%s: codes have %lld columns, the model's d_sae is %d", path,
                     (long long)t->shape[1], d_sae);
            goto out;
        }
        int64_t n = t->shape[0], nnz = 0;
        for (int64_t i = 0; i < n * d_sae; i++)
            nnz += values[i] != 0.0f;
        if (sae_codes_reserve(c, n, nnz, err) != SAE_OK)
            goto out;
        c->n_rows = n;
        c->indptr[0] = 0;
        int64_t at = 0;
        for (int64_t r = 0; r < n; r++) {
            for (int j = 0; j < d_sae; j++)
                if (values[r * d_sae + j] != 0.0f) {
                    c->indices[at] = j;
                    c->values[at++] = values[r * d_sae + j];
                }
            c->indptr[r + 1] = at;
        }
        rc = SAE_OK;
    } else if ((t = st_find(&f, "indptr"))) {         /* CSR */
        const st_tensor *ti, *tv;
        if (t->ndim != 1 || t->shape[0] < 1 || (t->dtype != ST_I64 && t->dtype != ST_I32)) {
            sae_fail(err, "%s: indptr must be a 1-D integer tensor of N+1 entries", path);
            goto out;
        }
        if (read_tensor(path, &f, "indices", 1, 0, (void **)&indices, &ti, err) != SAE_OK ||
            read_tensor(path, &f, "values", 1, 1, (void **)&values, &tv, err) != SAE_OK)
            goto out;
        int64_t n = t->shape[0] - 1, nnz = ti->shape[0];
        if (tv->shape[0] != nnz) {
            sae_fail(err, "%s: indices and values differ in length", path);
            goto out;
        }
        if (sae_codes_reserve(c, n, nnz, err) != SAE_OK)
            goto out;
        const uint8_t *raw = st_data(&f, t);
        for (int64_t r = 0; r <= n; r++) {
            int64_t v;
            if (t->dtype == ST_I64) {
                memcpy(&v, raw + r * 8, 8);
            } else {
                int32_t v32;
                memcpy(&v32, raw + r * 4, 4);
                v = v32;
            }
            c->indptr[r] = v;
        }
        if (c->indptr[n] != nnz) {
            sae_fail(err, "%s: indptr ends at %lld, but there are %lld entries", path,
                     (long long)c->indptr[n], (long long)nnz);
            goto out;
        }
        c->n_rows = n;
        memcpy(c->indices, indices, (size_t)nnz * sizeof *indices);
        memcpy(c->values, values, (size_t)nnz * sizeof *values);
        rc = SAE_OK;
    } else {                                          /* fixed k: [N, k] */
        const st_tensor *tv;
        if (read_tensor(path, &f, "indices", 2, 0, (void **)&indices, &t, err) != SAE_OK ||
            read_tensor(path, &f, "values", 2, 1, (void **)&values, &tv, err) != SAE_OK)
            goto out;
        if (tv->shape[0] != t->shape[0] || tv->shape[1] != t->shape[1]) {
            sae_fail(err, "%s: indices and values differ in shape", path);
            goto out;
        }
        int64_t n = t->shape[0], k = t->shape[1];
        if (sae_codes_reserve(c, n, n * k, err) != SAE_OK)
            goto out;
        c->n_rows = n;
        for (int64_t r = 0; r <= n; r++)
            c->indptr[r] = r * k;
        memcpy(c->indices, indices, (size_t)(n * k) * sizeof *indices);
        memcpy(c->values, values, (size_t)(n * k) * sizeof *values);
        rc = SAE_OK;
    }
    if (rc == SAE_OK && sae_codes_validate(c, d_sae, err) != SAE_OK)
        rc = SAE_ERR;
out:
    free(values);
    free(indices);
    st_close(&f);
    if (rc != SAE_OK && strncmp(err->msg, path, strlen(path)) != 0) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        sae_fail(err, "%s: %s", path, msg);
    }
    return rc;
}

int cmd_decode(int argc, char **argv)
{
    const char *model = NULL, *input = NULL, *output = NULL, *device = "auto";
    const cli_flag flags[] = {
        {"model", FLAG_STR, &model, true}, {"input", FLAG_STR, &input, true},
        {"output", FLAG_STR, &output, true}, {"device", FLAG_STR, &device, false},
    };
    int rc = cli_parse("decode", argc, argv, flags, sizeof flags / sizeof flags[0]);
    if (rc != CLI_OK)
        return rc;
    sae_model *m;
    if ((rc = load_model("decode", model, device, &m)) != CLI_OK)
        return rc;
    sae_codes codes;
    sae_codes_init(&codes);
    sae_error err;
    float *xhat = NULL;
    if (read_codes(input, m->cfg.d_sae, &codes, &err) != SAE_OK) {
        rc = cli_error("decode", CLI_FAIL, "%s", err.msg);
    } else if (!(xhat = malloc((size_t)(codes.n_rows > 0 ? codes.n_rows : 1) * m->cfg.d_in *
                               sizeof *xhat))) {
        rc = cli_error("decode", CLI_FAIL, "out of memory for %lld rows", (long long)codes.n_rows);
    } else if (sae_decode(m, &codes, xhat, &err) != SAE_OK) {
        rc = cli_error("decode", CLI_FAIL, "%s", err.msg);
    } else {
        int64_t shape[2] = {codes.n_rows, m->cfg.d_in};
        if (npy_write_f32(output, xhat, 2, shape, &err) != SAE_OK)
            rc = cli_error("decode", CLI_FAIL, "%s", err.msg);
    }
    free(xhat);
    sae_codes_free(&codes);
    sae_free(m);
    return rc;
}

int cmd_inspect(int argc, char **argv)
{
    const char *model = NULL;
    const cli_flag flags[] = {{"model", FLAG_STR, &model, true}};
    int rc = cli_parse("inspect", argc, argv, flags, 1);
    if (rc != CLI_OK)
        return rc;
    sae_model *m;
    if ((rc = load_model("inspect", model, "cpu", &m)) != CLI_OK)
        return rc;
    char *text = sae_config_to_json(&m->cfg);
    if (text)
        printf("%s\n", text);
    free(text);
    sae_free(m);
    return text ? CLI_OK : cli_error("inspect", CLI_FAIL, "out of memory");
}

int cmd_convert(int argc, char **argv)
{
    const char *model = NULL, *output = NULL;
    const cli_flag flags[] = {{"model", FLAG_STR, &model, true},
                              {"output", FLAG_STR, &output, true}};
    int rc = cli_parse("convert", argc, argv, flags, 2);
    if (rc != CLI_OK)
        return rc;
    sae_model *m;
    if ((rc = load_model("convert", model, "cpu", &m)) != CLI_OK)
        return rc;
    sae_error err;
    if (sae_save(m, output, &err) != SAE_OK)
        rc = cli_error("convert", CLI_FAIL, "%s", err.msg);
    sae_free(m);
    return rc;
}
