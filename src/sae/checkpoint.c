/* checkpoint.c - model directories: load any layout we read, save native.
 *
 * Native = SAELens v6: cfg.json + sae_weights.safetensors with W_enc [d, M],
 * W_dec [M, d], b_dec [d] and the architecture's [M] tensors. Sparsify:
 * cfg.json + sae.safetensors with encoder.weight [M, d], encoder.bias [M],
 * W_dec [M, d], b_dec [d]. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "arch.h"
#include "backend.h"
#include "config.h"
#include "safetensors.h"
#include "util.h"

#define CFG_MAX_BYTES (1 << 20)

/* Shape of a tensor in terms of d and M. */
typedef enum { SHAPE_D, SHAPE_M, SHAPE_D_M, SHAPE_M_D } shape_kind;

/* One weight tensor of a layout: its file name, where it lands in sae_model,
 * its shape on disk, whether it is stored transposed relative to our array,
 * and which architectures have it (SAE_P_*, 0 = all). */
typedef struct weight_spec {
    const char *name;
    size_t field;               /* offsetof(sae_model, X) */
    shape_kind shape;
    int transpose;
    unsigned needs;
} weight_spec;

#define FIELD(x) offsetof(sae_model, x)

static const weight_spec native_weights[] = {
    {"W_enc", FIELD(W_enc_T), SHAPE_D_M, 1, 0},
    {"W_dec", FIELD(W_dec), SHAPE_M_D, 0, 0},
    {"b_dec", FIELD(b_dec), SHAPE_D, 0, 0},
    {"b_enc", FIELD(b_enc), SHAPE_M, 0, SAE_P_B_ENC},
    {"b_gate", FIELD(b_gate), SHAPE_M, 0, SAE_P_GATED},
    {"b_mag", FIELD(b_mag), SHAPE_M, 0, SAE_P_GATED},
    {"r_mag", FIELD(r_mag), SHAPE_M, 0, SAE_P_GATED},
    {"threshold", FIELD(threshold), SHAPE_M, 0, SAE_P_THRESHOLD},
};

static const weight_spec sparsify_weights[] = {
    {"encoder.weight", FIELD(W_enc_T), SHAPE_M_D, 0, 0},
    {"encoder.bias", FIELD(b_enc), SHAPE_M, 0, 0},
    {"W_dec", FIELD(W_dec), SHAPE_M_D, 0, 0},
    {"b_dec", FIELD(b_dec), SHAPE_D, 0, 0},
};

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

static float **field_ptr(sae_model *m, size_t field)
{
    return (float **)((char *)m + field);
}

static int spec_applies(const weight_spec *w, const sae_config *c)
{
    return w->needs == 0 || (c->arch->params & w->needs);
}

static void shape_of(shape_kind s, const sae_config *c, int *ndim, int64_t dims[2])
{
    *ndim = 2;
    dims[0] = dims[1] = 1;
    switch (s) {
    case SHAPE_D: *ndim = 1; dims[0] = c->d_in; break;
    case SHAPE_M: *ndim = 1; dims[0] = c->d_sae; break;
    case SHAPE_D_M: *ndim = 2; dims[0] = c->d_in; dims[1] = c->d_sae; break;
    case SHAPE_M_D: *ndim = 2; dims[0] = c->d_sae; dims[1] = c->d_in; break;
    }
}

static int64_t numel_of(shape_kind s, const sae_config *c)
{
    int ndim;
    int64_t dims[2];
    shape_of(s, c, &ndim, dims);
    return ndim == 1 ? dims[0] : dims[0] * dims[1];
}

void sae_refresh_derived(sae_model *m)
{
    if (m->r_mag && m->r_mag_exp)
        for (int i = 0; i < m->cfg.d_sae; i++)
            m->r_mag_exp[i] = expf(m->r_mag[i]);
}

int sae_alloc(const sae_config *cfg, sae_model **out, sae_error *err)
{
    if (sae_config_validate(cfg, err) != SAE_OK)
        return SAE_ERR;
    sae_model *m = calloc(1, sizeof *m);
    if (!m)
        return sae_fail(err, "out of memory");
    m->cfg = *cfg;
    for (int i = 0; i < N_OF(native_weights); i++) {
        const weight_spec *w = &native_weights[i];
        if (!spec_applies(w, cfg))
            continue;
        float **p = field_ptr(m, w->field);
        *p = sae_calloc_aligned((size_t)numel_of(w->shape, cfg), sizeof **p);
        if (!*p) {
            m->cfg.metadata_json = m->cfg.training_json = NULL;  /* still the caller's */
            sae_free(m);
            return sae_fail(err, "out of memory for %s (%lld floats)", w->name,
                            (long long)numel_of(w->shape, cfg));
        }
    }
    if (m->r_mag && !(m->r_mag_exp = calloc((size_t)cfg->d_sae, sizeof(float)))) {
        m->cfg.metadata_json = m->cfg.training_json = NULL;
        sae_free(m);
        return sae_fail(err, "out of memory");
    }
    *out = m;
    return SAE_OK;
}

void sae_free(sae_model *m)
{
    if (!m)
        return;
    if (m->backend && m->backend->detach)
        m->backend->detach(m);
    for (int i = 0; i < N_OF(native_weights); i++)
        free(*field_ptr(m, native_weights[i].field));
    free(m->r_mag_exp);
    sae_config_clear(&m->cfg);
    free(m);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int read_weights(sae_model *m, const st_file *f, const weight_spec *specs, int n,
                        const char *file_name, sae_error *err)
{
    for (int i = 0; i < n; i++) {
        const weight_spec *w = &specs[i];
        if (!spec_applies(w, &m->cfg))
            continue;
        const st_tensor *t = st_find(f, w->name);
        if (!t)
            return sae_fail(err, "%s: missing tensor \"%s\" (architecture %s)", file_name,
                            w->name, m->cfg.arch->name);
        int ndim;
        int64_t dims[2];
        shape_of(w->shape, &m->cfg, &ndim, dims);
        if (t->ndim != ndim || t->shape[0] != dims[0] || (ndim == 2 && t->shape[1] != dims[1])) {
            char got[128] = "", want[64];
            for (int j = 0, at = 0; j < t->ndim && at < (int)sizeof got - 24; j++)
                at += snprintf(got + at, sizeof got - (size_t)at, j ? ", %lld" : "%lld",
                               (long long)t->shape[j]);
            if (ndim == 1)
                snprintf(want, sizeof want, "%lld", (long long)dims[0]);
            else
                snprintf(want, sizeof want, "%lld, %lld", (long long)dims[0], (long long)dims[1]);
            return sae_fail(err, "%s: tensor \"%s\" has shape [%s], cfg.json says [%s] "
                            "(d_in %d, d_sae %d)", file_name, w->name, got, want,
                            m->cfg.d_in, m->cfg.d_sae);
        }
        if (st_read_f32(f, t, *field_ptr(m, w->field), w->transpose, 1, err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

int sae_load(const char *dir, sae_model **out, sae_error *err)
{
    char cfg_path[4096], weights_path[4096];
    struct stat st;
    if (stat(dir, &st) != 0)
        return sae_fail(err, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return sae_fail(err, "%s: not a directory (want a checkpoint directory with cfg.json)",
                        dir);

    sae_format fmt = SAE_FORMAT_SAELENS;
    const weight_spec *specs = native_weights;
    int n_specs = N_OF(native_weights);
    snprintf(weights_path, sizeof weights_path, "%s/sae_weights.safetensors", dir);
    if (!file_exists(weights_path)) {
        snprintf(weights_path, sizeof weights_path, "%s/sae.safetensors", dir);
        if (!file_exists(weights_path))
            return sae_fail(err, "%s: no sae_weights.safetensors (SAELens / native) or "
                            "sae.safetensors (sparsify) in it", dir);
        fmt = SAE_FORMAT_SPARSIFY;
        specs = sparsify_weights;
        n_specs = N_OF(sparsify_weights);
    }

    snprintf(cfg_path, sizeof cfg_path, "%s/cfg.json", dir);
    char *text;
    size_t len;
    if (sae_read_file(cfg_path, CFG_MAX_BYTES, &text, &len, err) != SAE_OK)
        return SAE_ERR;
    sae_config cfg;
    int rc = sae_config_parse(text, len, fmt, cfg_path, &cfg, err);
    free(text);
    if (rc != SAE_OK)
        return SAE_ERR;

    sae_model *m;
    if (sae_alloc(&cfg, &m, err) != SAE_OK) {
        sae_config_clear(&cfg);
        return SAE_ERR;
    }
    st_file f;
    if (st_open(&f, weights_path, err) != SAE_OK) {
        sae_free(m);
        return SAE_ERR;
    }
    rc = read_weights(m, &f, specs, n_specs, weights_path, err);
    st_close(&f);
    if (rc != SAE_OK) {
        sae_free(m);
        return SAE_ERR;
    }
    sae_refresh_derived(m);
    *out = m;
    return SAE_OK;
}

int sae_save(const sae_model *m, const char *dir, sae_error *err)
{
    const sae_config *c = &m->cfg;
    if (sae_mkdirs(dir, err) != SAE_OK)
        return SAE_ERR;
    /* W_enc goes to disk as [d, M]: transpose our latent rows */
    float *W_enc = malloc((size_t)c->d_in * c->d_sae * sizeof *W_enc);
    if (!W_enc)
        return sae_fail(err, "out of memory saving W_enc");
    for (int i = 0; i < c->d_sae; i++)
        for (int j = 0; j < c->d_in; j++)
            W_enc[(size_t)j * c->d_sae + i] = m->W_enc_T[(size_t)i * c->d_in + j];

    st_out outs[N_OF(native_weights)];
    int n = 0;
    for (int i = 0; i < N_OF(native_weights); i++) {
        const weight_spec *w = &native_weights[i];
        if (!spec_applies(w, c))
            continue;
        st_out *o = &outs[n++];
        memset(o, 0, sizeof *o);
        o->name = w->name;
        o->dtype = ST_F32;
        int64_t dims[2];
        shape_of(w->shape, c, &o->ndim, dims);
        o->shape[0] = dims[0];
        o->shape[1] = dims[1];
        o->data = w->transpose ? W_enc : *field_ptr((sae_model *)m, w->field);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", dir);
    int rc = st_write(path, outs, n, NULL, err);
    free(W_enc);
    if (rc != SAE_OK)
        return SAE_ERR;

    sae_config saved = *c;
    snprintf(saved.dtype, sizeof saved.dtype, "float32");  /* we write f32 */
    char *text = sae_config_to_json(&saved);
    if (!text)
        return sae_fail(err, "out of memory writing cfg.json");
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    rc = sae_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}
