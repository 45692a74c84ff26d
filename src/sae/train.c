/* train.c - the training step and its state (DESIGN.md section 3).
 *
 * Shapes as in sae.h: B rows, d inputs, M latents, k active. Buffers:
 *   xp  [B, d]  x' (preprocessed input, the reconstruction target)
 *   xt  [B, d]  x~ = x' - b_dec (the encoder input)
 *   xh  [B, d]  x^' (reconstruction);  g [B, d] = dL/dx^'
 *   z   [B, M]  pre-activations (dense families and batchtopk; topk and ptopk
 *               keep only a block of rows per thread)
 * The top-k family (topk, ptopk, batchtopk) keeps its active latents as
 * `entries` (CSR by row) and never builds a dense [B, M] gradient: the
 * backward costs O(B k d) beyond the forward GEMM. relu and gated are dense
 * by nature and use GEMMs for the backward. */
#include <cblas.h>
#include <omp.h>
#include <jansson.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "rng.h"
#include "blas.h"
#include "config.h"
#include "optim.h"
#include "safetensors.h"
#include "select.h"
#include "util.h"
#include "train.h"
#include "train_impl.h"
#include "vec.h"

/* Rows per encoder GEMM in a training step: OpenBLAS packs all of W_enc once
 * per call, so more rows amortise it (1024 measured 5-10% faster per step
 * than 256, 2048 about 1% faster than 1024), as long as the block of z stays
 * within Z_BLOCK_BYTES per thread. */
#define CHUNK_ROWS 2048
#define Z_BLOCK_BYTES ((size_t)128 << 20)

/* ---- small helpers -------------------------------------------------------- */

static void *xcalloc(size_t n, size_t size, int *failed)
{
    void *p = sae_calloc_aligned(n, size);
    if (!p)
        *failed = 1;
    return p;
}

static double dot(const float *a, const float *b, int n)
{
    return vec_dot(a, b, n);
}

static void axpy(float alpha, const float *x, float *y, int n)
{
    vec_axpy(alpha, x, y, n);
}

/* C[m, n] (+)= op(A) op(B), row-major. */
static void gemm(int trans_a, int trans_b, int m, int n, int k, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    sae_sgemm(trans_a, trans_b, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* sum_r weight_r X_r over n rows of d (weight NULL: every weight 1), in
 * double: fixed row slices summed in parallel, then added in order, so the
 * bits do not depend on the thread count. Rows of weight 0 are skipped. */
#define SUM_SLICES 32
static int row_sums(const float *X, const double *weight, int n, int d, double *out)
{
    double *part = calloc((size_t)SUM_SLICES * d, sizeof *part);
    if (!part)
        return SAE_ERR;
#pragma omp parallel for schedule(static)
    for (int sl = 0; sl < SUM_SLICES; sl++) {
        double *acc = part + (size_t)sl * d;
        int lo = (int)((int64_t)n * sl / SUM_SLICES), hi = (int)((int64_t)n * (sl + 1) / SUM_SLICES);
        for (int r = lo; r < hi; r++) {
            const double w = weight ? weight[r] : 1.0;
            if (w != 0.0)
                for (int j = 0; j < d; j++)
                    acc[j] += w * X[(size_t)r * d + j];
        }
    }
    memset(out, 0, (size_t)d * sizeof *out);
    for (int sl = 0; sl < SUM_SLICES; sl++)
        for (int j = 0; j < d; j++)
            out[j] += part[(size_t)sl * d + j];
    free(part);
    return SAE_OK;
}

static void parallel_zero(float *p, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        p[i] = 0.0f;
}


/* u in (0, 1] from 32 random bits: ((r >> 8) + 0.5) / 2^24 in float (the sum
 * rounds to even from 2^23 up, so u can be 1 and the noise +inf: a saturated
 * gate, as on the GPU, which rounds the same way). */
static float unit_uniform(uint32_t r)
{
    return ((float)(r >> 8) + 0.5f) * 0x1p-24f;
}

/* Standard normals for initialisation (Box-Muller), stream `tag`. */
static void fill_normal(float *out, size_t n, uint64_t seed, uint32_t tag)
{
    for (size_t i = 0; i < n; i += 2) {
        philox4x32_ctr_t r = sae_philox(seed, (uint32_t)(i / 2), tag, (uint64_t)(i >> 33) | (1ULL << 63));
        double u1 = unit_uniform(r.v[0]), u2 = unit_uniform(r.v[1]);
        double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
        out[i] = (float)(rad * cos(th));
        if (i + 1 < n)
            out[i + 1] = (float)(rad * sin(th));
    }
}

static int entries_reserve(entries *e, int64_t n, int M, sae_error *err)
{
    if (n <= e->cap)
        return SAE_OK;
    int failed = 0;
    free(e->idx); free(e->row); free(e->a); free(e->f); free(e->mask); free(e->da);
    free(e->lat_row); free(e->lat_f); free(e->lat_da);
    e->idx = xcalloc((size_t)n, sizeof *e->idx, &failed);
    e->row = xcalloc((size_t)n, sizeof *e->row, &failed);
    e->a = xcalloc((size_t)n, sizeof *e->a, &failed);
    e->f = xcalloc((size_t)n, sizeof *e->f, &failed);
    e->mask = xcalloc((size_t)n, sizeof *e->mask, &failed);
    e->da = xcalloc((size_t)n, sizeof *e->da, &failed);
    e->lat_row = xcalloc((size_t)n, sizeof *e->lat_row, &failed);
    e->lat_f = xcalloc((size_t)n, sizeof *e->lat_f, &failed);
    e->lat_da = xcalloc((size_t)n, sizeof *e->lat_da, &failed);
    if (!e->latptr)
        e->latptr = xcalloc((size_t)M + 1, sizeof *e->latptr, &failed);
    if (!e->fill)
        e->fill = xcalloc((size_t)M, sizeof *e->fill, &failed);
    e->cap = failed ? 0 : n;
    return failed ? sae_fail(err, "train: out of memory for %lld active latents", (long long)n)
                  : SAE_OK;
}

static void entries_free(entries *e)
{
    free(e->rowptr); free(e->idx); free(e->row); free(e->a); free(e->f); free(e->mask);
    free(e->da); free(e->latptr); free(e->fill); free(e->lat_row); free(e->lat_f);
    free(e->lat_da);
    memset(e, 0, sizeof *e);
}

/* ---- options -------------------------------------------------------------- */

void train_options_default(train_options *o)
{
    memset(o, 0, sizeof *o);
    o->arch = "ptopk";
    o->k = 32;
    o->steps = 1000;
    o->batch = 8192;
    o->lr = 5e-4f;
    o->adam_beta1 = 0.9f;
    o->adam_beta2 = 0.99f;
    o->adam_eps = 1e-8f;
    o->clip = 10.0f;
    o->warmup = -1;
    o->seed = 0;
    o->normalize = SAE_NORM_CENTER_UNIT_NORM;
    o->norm_scale = 1.0f;
    o->apply_b_dec_to_input = true;
    o->beta0 = 5.0f;
    o->beta_end = 1e-4f;
    o->lambda_mag = 1e-4f;
    o->l1_coef = 5.0f;
    o->auxk_coef = 1.0f / 32.0f;
    o->dead_window = -1;
    o->threshold_rate = 0.01f;
}

static family family_of(const char *arch)
{
    const sae_arch *a = sae_arch_find(arch);
    if (!a)
        return FAMILY_RELU;
    if (!strcmp(a->name, "topk")) return FAMILY_TOPK;
    if (!strcmp(a->name, "ptopk")) return FAMILY_PTOPK;
    if (!strcmp(a->name, "batchtopk")) return FAMILY_BATCHTOPK;
    if (!strcmp(a->name, "gated")) return FAMILY_GATED;
    return FAMILY_RELU;
}

int train_options_validate(const train_options *o, int d_in, sae_error *err)
{
    const sae_arch *a = o->arch ? sae_arch_find(o->arch) : NULL;
    if (!a || !strcmp(a->name, "jumprelu"))
        return sae_fail(err, "--arch must be one of ptopk, topk, standard (relu), gated, "
                        "batchtopk (got '%s')", o->arch ? o->arch : "");
    if (d_in <= 0 || o->d_sae <= 0)
        return sae_fail(err, "--d-sae must be positive");
    if ((long long)d_in * o->d_sae > (1LL << 34))
        return sae_fail(err, "d_in x d_sae is too large");
    if (a->uses_k && (o->k < 1 || o->k > o->d_sae))
        return sae_fail(err, "--k %d must be between 1 and --d-sae %d", o->k, o->d_sae);
    if (o->steps < 1)
        return sae_fail(err, "--steps must be at least 1");
    if (o->batch < 1 || o->batch > (1 << 20))
        return sae_fail(err, "--batch must be between 1 and 1048576");
    if ((long long)o->batch * o->d_sae >= (1LL << 31) && family_of(o->arch) == FAMILY_BATCHTOPK)
        return sae_fail(err, "batchtopk: --batch x --d-sae must stay below 2^31");
    if (!(o->lr > 0.0f) || !isfinite(o->lr))
        return sae_fail(err, "--lr must be positive");
    if (!(o->clip > 0.0f))
        return sae_fail(err, "clip must be positive");
    if (!(o->beta0 > 0.0f) || !(o->beta_end > 0.0f))
        return sae_fail(err, "temperatures must be positive");
    if (!(o->lambda_mag >= 0.0f) || !(o->l1_coef >= 0.0f) || !(o->auxk_coef >= 0.0f))
        return sae_fail(err, "coefficients must not be negative");
    if (o->warmup >= o->steps)
        return sae_fail(err, "--warmup must be below --steps");
    if (o->auxk && family_of(o->arch) != FAMILY_TOPK)
        return sae_fail(err, "--auxk applies to --arch topk only");
    if ((o->no_magnitude || o->no_layernorm || o->sigmoid_gate) &&
        family_of(o->arch) != FAMILY_PTOPK)
        return sae_fail(err, "--no-magnitude, --no-layernorm and --sigmoid-gate apply to "
                        "--arch ptopk only");
    if (o->normalize == SAE_NORM_CONSTANT_SCALE && !(o->norm_scale > 0.0f))
        return sae_fail(err, "constant_scale needs a positive scale");
    return SAE_OK;
}

int64_t train_warmup_steps(const train_options *o)
{
    if (o->warmup >= 0)
        return o->warmup;
    int64_t w = o->steps / 10;
    return w < 20000 ? w : 20000;
}

int64_t train_dead_window(const train_options *o)
{
    if (o->dead_window >= 0)
        return o->dead_window;
    int64_t quarter = o->steps * (int64_t)o->batch / 4;
    return quarter < 10000000 ? quarter : 10000000;
}

/* The options as one table: JSON provenance and resume read and write it. */
typedef enum { OPT_INT, OPT_I64, OPT_U64, OPT_FLOAT, OPT_BOOL, OPT_NORM, OPT_ARCH } opt_type;
static const struct {
    const char *name;
    opt_type type;
    size_t offset;
} option_table[] = {
#define OPT(field, type) {#field, type, offsetof(train_options, field)}
    OPT(arch, OPT_ARCH), OPT(d_sae, OPT_INT), OPT(k, OPT_INT), OPT(steps, OPT_I64),
    OPT(batch, OPT_INT), OPT(lr, OPT_FLOAT), OPT(adam_beta1, OPT_FLOAT),
    OPT(adam_beta2, OPT_FLOAT), OPT(adam_eps, OPT_FLOAT), OPT(clip, OPT_FLOAT),
    OPT(warmup, OPT_I64), OPT(seed, OPT_U64), OPT(normalize, OPT_NORM),
    OPT(norm_scale, OPT_FLOAT), OPT(apply_b_dec_to_input, OPT_BOOL), OPT(beta0, OPT_FLOAT),
    OPT(beta_end, OPT_FLOAT), OPT(lambda_mag, OPT_FLOAT), OPT(no_magnitude, OPT_BOOL),
    OPT(no_layernorm, OPT_BOOL), OPT(sigmoid_gate, OPT_BOOL), OPT(l1_coef, OPT_FLOAT),
    OPT(auxk, OPT_BOOL), OPT(auxk_coef, OPT_FLOAT), OPT(dead_window, OPT_I64),
    OPT(threshold_rate, OPT_FLOAT),
#undef OPT
};
#define N_OPTIONS (int)(sizeof option_table / sizeof option_table[0])

char *train_options_to_json(const train_options *o)
{
    json_t *j = json_object();
    if (!j)
        return NULL;
    for (int i = 0; i < N_OPTIONS; i++) {
        const void *p = (const char *)o + option_table[i].offset;
        json_t *v = NULL;
        switch (option_table[i].type) {
        case OPT_INT: v = json_integer(*(const int *)p); break;
        case OPT_I64: v = json_integer(*(const int64_t *)p); break;
        case OPT_U64: v = json_integer((json_int_t)*(const uint64_t *)p); break;
        case OPT_FLOAT: v = json_real(*(const float *)p); break;
        case OPT_BOOL: v = json_boolean(*(const bool *)p); break;
        case OPT_NORM: v = json_string(sae_norm_name(*(const sae_norm *)p)); break;
        case OPT_ARCH: v = json_string(*(const char *const *)p); break;
        }
        json_object_set_new(j, option_table[i].name, v);
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(j);
    return text;
}

int train_options_from_json(const char *text, train_options *o, sae_error *err)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        return sae_fail(err, "training options: not a JSON object");
    }
    train_options_default(o);
    int rc = SAE_OK;
    for (int i = 0; i < N_OPTIONS && rc == SAE_OK; i++) {
        json_t *v = json_object_get(j, option_table[i].name);
        if (!v)
            continue;
        void *p = (char *)o + option_table[i].offset;
        switch (option_table[i].type) {
        case OPT_INT: *(int *)p = (int)json_integer_value(v); break;
        case OPT_I64: *(int64_t *)p = json_integer_value(v); break;
        case OPT_U64: *(uint64_t *)p = (uint64_t)json_integer_value(v); break;
        case OPT_FLOAT: *(float *)p = (float)json_number_value(v); break;
        case OPT_BOOL: *(bool *)p = json_is_true(v); break;
        case OPT_NORM:
            if (!json_is_string(v) || sae_norm_parse(json_string_value(v), p) != SAE_OK)
                rc = sae_fail(err, "training options: bad normalize");
            break;
        case OPT_ARCH: {
            const sae_arch *a = json_is_string(v) ? sae_arch_find(json_string_value(v)) : NULL;
            if (!a)
                rc = sae_fail(err, "training options: bad arch");
            else
                *(const char **)p = a->name;
            break;
        }
        }
    }
    json_decref(j);
    return rc;
}

/* ---- construction ----------------------------------------------------------- */

static int model_config(const train_options *o, int d_in, sae_config *c, sae_error *err)
{
    memset(c, 0, sizeof *c);
    c->d_in = d_in;
    c->d_sae = o->d_sae;
    c->arch = sae_arch_find(o->arch);
    c->k = c->arch->uses_k ? o->k : 0;
    c->apply_b_dec_to_input = o->apply_b_dec_to_input;
    c->normalize = o->normalize;
    c->norm_scale = o->norm_scale;
    c->lambda_mag = o->no_magnitude ? 0.0f : o->lambda_mag;
    c->beta_final = o->beta_end;
    c->layernorm = !o->no_layernorm;
    snprintf(c->dtype, sizeof c->dtype, "float32");
    c->training_json = train_options_to_json(o);
    if (!c->training_json)
        return sae_fail(err, "out of memory");
    return SAE_OK;
}

/* W_dec: QR of a Gaussian (orthonormal columns of the taller side), rows
 * scaled to unit norm; W_enc = W_dec^T; biases 0. */
extern void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau,
                    float *work, const int *lwork, int *info);
extern void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda,
                    const float *tau, float *work, const int *lwork, int *info);

static int init_weights(sae_model *m, uint64_t seed, sae_error *err)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    int rows = M > d ? M : d, cols = M > d ? d : M, info = 0, lwork = -1;
    float *a = malloc((size_t)rows * cols * sizeof *a), *tau = malloc((size_t)cols * sizeof *tau);
    float query;
    if (!a || !tau) {
        free(a);
        free(tau);
        return sae_fail(err, "out of memory initialising W_dec");
    }
    fill_normal(a, (size_t)rows * cols, seed, 0x494e4954u /* "INIT" */);
    sgeqrf_(&rows, &cols, a, &rows, tau, &query, &lwork, &info);
    lwork = (int)query > cols ? (int)query : cols;
    float *work = malloc((size_t)lwork * sizeof *work);
    if (work)
        sgeqrf_(&rows, &cols, a, &rows, tau, work, &lwork, &info);
    if (work && info == 0)
        sorgqr_(&rows, &cols, &cols, a, &rows, tau, work, &lwork, &info);
    int rc = (!work || info != 0) ? sae_fail(err, "QR for W_dec init failed (info %d)", info)
                                  : SAE_OK;
    if (rc == SAE_OK) {
        /* a is column-major rows x cols: Q[i][j] = a[i + j * rows] */
        for (int i = 0; i < M; i++) {
            float *w = m->W_dec + (size_t)i * d;
            for (int j = 0; j < d; j++)
                w[j] = M > d ? a[i + (size_t)j * rows] : a[j + (size_t)i * rows];
            float norm = sqrtf((float)dot(w, w, d));
            for (int j = 0; j < d; j++)
                w[j] /= norm;
        }
        memcpy(m->W_enc_T, m->W_dec, (size_t)M * d * sizeof *m->W_dec);
    }
    free(a);
    free(tau);
    free(work);
    return rc;
}

static void add_param(trainer *t, const char *name, float *w, size_t n, int *failed)
{
    if (!w)
        return;
    param *p = &t->params[t->n_params++];
    p->name = name;
    p->w = w;
    p->n = n;
    p->g = xcalloc(n, sizeof(float), failed);
    p->m = xcalloc(n, sizeof(float), failed);
    p->v = xcalloc(n, sizeof(float), failed);
}

static param *find_param(const trainer *t, const char *name)
{
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name))
            return (param *)&t->params[i];
    return NULL;
}

static float *grad_of(const trainer *t, const char *name)
{
    param *p = find_param(t, name);
    return p ? p->g : NULL;
}

static int is_topk_family(const trainer *t)
{
    return t->fam == FAMILY_TOPK || t->fam == FAMILY_PTOPK || t->fam == FAMILY_BATCHTOPK;
}

/* Takes ownership of m. */
static int trainer_wrap(const train_options *o, sae_model *m, trainer **out, sae_error *err)
{
    trainer *t = calloc(1, sizeof *t);
    if (!t) {
        sae_free(m);
        return sae_fail(err, "out of memory");
    }
    t->o = *o;
    t->fam = family_of(o->arch);
    t->m = m;
    t->d = m->cfg.d_in;
    t->M = m->cfg.d_sae;
    t->B = o->batch;
    const size_t Md = (size_t)t->M * t->d, M = (size_t)t->M, d = (size_t)t->d, B = (size_t)t->B;
    int failed = 0;
    add_param(t, "W_enc_T", m->W_enc_T, Md, &failed);
    add_param(t, "W_dec", m->W_dec, Md, &failed);
    add_param(t, "b_dec", m->b_dec, d, &failed);
    add_param(t, "b_enc", m->b_enc, M, &failed);
    add_param(t, "b_gate", m->b_gate, M, &failed);
    add_param(t, "b_mag", m->b_mag, M, &failed);
    add_param(t, "r_mag", m->r_mag, M, &failed);
    if (is_topk_family(t))
        find_param(t, "W_dec")->unit_rows = t->d;
    t->last_fired = xcalloc(M, sizeof *t->last_fired, &failed);
    t->xp = xcalloc(B * d, sizeof(float), &failed);
    t->xt = xcalloc(B * d, sizeof(float), &failed);
    t->xh = xcalloc(B * d, sizeof(float), &failed);
    t->g = xcalloc(B * d, sizeof(float), &failed);
    t->slices = xcalloc(2 * B * VEC_SLICE, sizeof(float), &failed);
    int dense = t->fam == FAMILY_RELU || t->fam == FAMILY_GATED;
    if (dense || t->fam == FAMILY_BATCHTOPK)
        t->z = xcalloc(B * M, sizeof(float), &failed);
    if (dense) {
        t->dense_f = xcalloc(B * M, sizeof(float), &failed);
        t->dense_d = xcalloc(B * M, sizeof(float), &failed);
        if (t->fam == FAMILY_GATED)
            t->gate_in = xcalloc(B * M, sizeof(float), &failed);
    }
    t->main.rowptr = xcalloc(B + 1, sizeof(int64_t), &failed);
    t->aux.rowptr = xcalloc(B + 1, sizeof(int64_t), &failed);
    if (failed) {
        trainer_free(t);
        return sae_fail(err, "train: out of memory for a batch of %d rows x %d latents",
                        o->batch, o->d_sae);
    }
    *out = t;
    return SAE_OK;
}

int trainer_new(const train_options *o, int d_in, trainer **out, sae_error *err)
{
    if (train_options_validate(o, d_in, err) != SAE_OK)
        return SAE_ERR;
    sae_config cfg;
    if (model_config(o, d_in, &cfg, err) != SAE_OK)
        return SAE_ERR;
    sae_model *m;
    if (sae_alloc(&cfg, &m, err) != SAE_OK) {
        sae_config_clear(&cfg);
        return SAE_ERR;
    }
    if (init_weights(m, o->seed, err) != SAE_OK) {
        sae_free(m);
        return SAE_ERR;
    }
    sae_refresh_derived(m);
    return trainer_wrap(o, m, out, err);
}

int trainer_from_model(const train_options *o, const sae_model *src, trainer **out,
                       sae_error *err)
{
    if (train_options_validate(o, src->cfg.d_in, err) != SAE_OK)
        return SAE_ERR;
    if (strcmp(sae_arch_find(o->arch)->name, src->cfg.arch->name) != 0 ||
        o->d_sae != src->cfg.d_sae)
        return sae_fail(err, "the model (%s, d_sae %d) does not match the training options "
                        "(%s, d_sae %d)", src->cfg.arch->name, src->cfg.d_sae, o->arch, o->d_sae);
    sae_config cfg;
    if (model_config(o, src->cfg.d_in, &cfg, err) != SAE_OK)
        return SAE_ERR;
    cfg.normalize = src->cfg.normalize;
    cfg.norm_scale = src->cfg.norm_scale;
    cfg.apply_b_dec_to_input = src->cfg.apply_b_dec_to_input;
    sae_model *m;
    if (sae_alloc(&cfg, &m, err) != SAE_OK) {
        sae_config_clear(&cfg);
        return SAE_ERR;
    }
    const size_t Md = (size_t)cfg.d_sae * cfg.d_in, M = (size_t)cfg.d_sae;
    memcpy(m->W_enc_T, src->W_enc_T, Md * sizeof(float));
    memcpy(m->W_dec, src->W_dec, Md * sizeof(float));
    memcpy(m->b_dec, src->b_dec, (size_t)cfg.d_in * sizeof(float));
#define COPY_OPT(f) if (m->f && src->f) memcpy(m->f, src->f, M * sizeof(float))
    COPY_OPT(b_enc); COPY_OPT(b_gate); COPY_OPT(b_mag); COPY_OPT(r_mag); COPY_OPT(threshold);
#undef COPY_OPT
    sae_refresh_derived(m);
    if (trainer_wrap(o, m, out, err) != SAE_OK)
        return SAE_ERR;
    (*out)->initialised = 1;    /* b_dec comes with the model */
    if (m->threshold)
        (*out)->theta = m->threshold[0];
    return SAE_OK;
}

void trainer_free(trainer *t)
{
    if (!t)
        return;
    train_cuda_detach(t);
    for (int i = 0; i < t->n_params; i++) {
        free(t->params[i].g);
        free(t->params[i].m);
        free(t->params[i].v);
    }
    free(t->last_fired);
    free(t->xp); free(t->xt); free(t->xh); free(t->g); free(t->slices); free(t->z);
    free(t->dense_f); free(t->dense_d); free(t->gate_in); free(t->aux_rows);
    free(t->scratch);
    entries_free(&t->main);
    entries_free(&t->aux);
    sae_free(t->m);
    free(t);
}

/* Brings a GPU trainer's state to the host copies (a no-op on the CPU). A
 * failure here is a broken GPU: it is logged, and the next step reports it. */
static void sync_host(const trainer *t, int grads)
{
    sae_error err;
    if (t->gpu && train_cuda_to_host(t, grads, &err) != SAE_OK)
        sae_log("train: %s", err.msg);
}

sae_model *trainer_model(trainer *t)
{
    sync_host(t, 0);
    return t->m;
}

const train_options *trainer_options(const trainer *t) { return &t->o; }
int64_t trainer_step_count(const trainer *t) { return t->step; }

const float *trainer_grad(const trainer *t, const char *name, size_t *n)
{
    param *p = find_param(t, name);
    if (n)
        *n = p ? p->n : 0;
    sync_host(t, 1);
    return p ? p->g : NULL;
}

static int64_t alive_on_host(const trainer *t)
{
    int64_t window = train_dead_window(&t->o), alive = 0;
    for (int i = 0; i < t->M; i++)
        alive += t->tokens - t->last_fired[i] <= window;
    return alive;
}

float *trainer_batch_buffer(trainer *t)
{
    return t->gpu ? train_cuda_batch_buffer(t) : NULL;
}

int64_t trainer_alive(const trainer *t)
{
    return t->gpu ? t->gpu_alive : alive_on_host(t);
}

int trainer_use_device(trainer *t, const char *device, sae_error *err)
{
    int cuda_index;
    const int kind = sae_parse_device(device, &cuda_index);
    if (kind < 0)
        return sae_fail(err, "unknown device '%s' (want auto, cpu, cuda or cuda:N)", device);
    train_cuda_detach(t);   /* its state is on the host once more */
    if (kind == SAE_DEVICE_CPU)
        return SAE_OK;
    t->gpu_alive = alive_on_host(t);
    sae_error why;
    if (train_cuda_attach(t, cuda_index, &why) == SAE_OK)
        return SAE_OK;
    if (kind == SAE_DEVICE_CUDA)
        return sae_fail(err, "training on %s: %s", device, why.msg);
    sae_log("train: not on the GPU (%s); training on the CPU", why.msg);
    return SAE_OK;
}

/* ---- forward: the top-k family --------------------------------------------- */

/* The slack of a fast key against the exact l + g (vec.h). */
static inline double key_margin(double v)
{
    return KEY_MARGIN_ABS + KEY_MARGIN_REL * fabs(v);
}

/* The score a latent must reach to enter the row's heap: the heap's floor,
 * or t (a bound of the row's k-th best score) while that is higher. */
static double row_floor(const topk_heap *h, double t_floor)
{
    const double floor = topk_heap_floor(h);
    return floor > t_floor ? floor : t_floor; /* not fmax: a call, several per chunk */
}

/* beta logit(floor - lambda max|a|), floor the row's: no key below it can
 * enter the heap. Recomputed only when the floor has moved. */
static double skip_bound(const topk_heap *h, double t_floor, double lambda, double amax,
                         double beta, double *floor_seen, double *skip_below)
{
    const double floor = row_floor(h, t_floor);
    if (floor != *floor_seen) {
        *floor_seen = floor;
        double q = floor - lambda * amax;
        *skip_below = q <= 0.0 ? -INFINITY : q >= 1.0 ? INFINITY : beta * log(q / (1.0 - q));
    }
    return *skip_below;
}

/* The chunk bounds lambda |a| + 0 or 1 in float are within two roundings
 * (2^-24 relative each) of their value in double; they are widened by this
 * much before being relied on. With lambda 1e-4 and |a| near 0.1 the scores
 * differ in the sixth digit: a 1e-6 widening had kept most chunks in play. */
#define FLOAT_SLACK 4e-7

/* Below this saturation level (40 beta) the key pass bounds each chunk's
 * score too. Above it a key would have to pass 29 (|g| <= 17.4, l a
 * layer-normed pre-activation), and where one does the gate's bounds 0 and 1
 * still hold, only looser. */
#define LATE_SATURATION 30.0

/* ptopk in training: a = z + b_enc, l = LN(a) (or a), logistic noise
 * g = log u - log(1 - u) with u from Philox keyed by (seed, step, row,
 * latent), gate = sigmoid((l + g) / beta), s = gate + lambda |a|, top-k of s.
 * The score is exact in double. To keep that affordable, a vectorised pass
 * first computes key = l + g in float with a fast logit (vec.h); then, per
 * latent:
 *   - key clearly above 40 beta: the gate is exactly 1.0 in double, so
 *     s = 1 + lambda |a| without an exp;
 *   - key clearly below beta logit(floor - lambda max|a|): the gate cannot
 *     lift s over the heap's floor, skip;
 *   - otherwise compute s exactly.
 * The same pass takes, per chunk of latents (select_chunk), the largest key
 * and |a| and, late in training (40 beta < LATE_SATURATION: gates can
 * saturate), bounds of the chunk's best score: the largest lower bound
 * (1 + lambda |a| if saturated, else lambda |a|) and the largest upper bound
 * (lambda |a| if the gate is surely below 4.3e-18, else 1 + lambda |a|);
 * earlier the bounds are lambda max|a| and 1 + lambda max|a|. The k-th
 * largest lower bound is at most the row's k-th best score (k distinct
 * latents reach it), and so is sigmoid((K - margin) / beta) for K the k-th
 * largest chunk key; t, the larger of the two, stands in for the heap's floor
 * until the floor passes it. A chunk whose upper bound cannot reach t, or
 * with nothing saturated and nothing above the skip bound (the margin grows
 * with the key, so the chunk's largest key decides), is passed over whole.
 * Late in training (small beta) about half the latents are saturated, and
 * the bounds keep them from all going through the heap; early (beta 5,
 * nothing saturated) the skip bound keeps most latents from the exact score.
 * key, bits: scratch of M floats and M words; chunk: 4 SELECT_CHUNKS(M)
 * floats; work: SELECT_CHUNKS(M) doubles. */
static void ptopk_train_row(const trainer *t, const float *zr, uint32_t row, double beta,
                            topk_heap *h, float *key, uint32_t *bits, float *chunk,
                            double *work)
{
    const sae_model *m = t->m;
    const int M = t->M, width = select_chunk(M, h->k), chunks = (M + width - 1) / width;
    const double lambda = m->cfg.lambda_mag;
    const bool noise = !t->o.sigmoid_gate;
    double sum, sq, amax;
    vec_sum_sq(zr, m->b_enc, M, &sum, &sq, &amax);
    double mean = 0.0, rstd = 1.0;
    if (m->cfg.layernorm) {
        mean = sum / M;
        double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    if (noise)
        sae_philox_fill(t->o.seed, row, (uint64_t)t->step, bits, M);
    float *key_max = chunk, *absa_max = chunk + chunks, *lb_max = chunk + 2 * chunks,
          *ub_max = chunk + 3 * chunks;
    const double saturated = 40.0 * beta;
    /* Late (gates can saturate), the key pass also bounds each chunk's best
     * score. In float, a latent it calls saturated must be saturated below
     * too, and one it calls unsaturated (gate under 4.3e-18) too. */
    const bool late = saturated < LATE_SATURATION;
    ptopk_bounds bounds = {(float)(saturated * (1.0 + 1e-5)) + 1e-3f,
                           (float)(-saturated * (1.0 + 1e-5)) - 1e-3f, (float)lambda, lb_max,
                           ub_max};
    vec_logistic_key(zr, m->b_enc, (float)mean, (float)rstd, noise ? bits : NULL, M, width, key,
                     key_max, absa_max, late ? &bounds : NULL);
    if (!late) /* no key comes near saturation: the gate's only bounds are 0 and 1 */
        for (int c = 0; c < chunks; c++) {
            lb_max[c] = (float)lambda * absa_max[c];
            ub_max[c] = 1.0f + (float)lambda * absa_max[c];
        }
    double t_floor = -INFINITY; /* t, lowered by the float pass's rounding */
    if (chunks >= h->k) {
        double K = topk_kth_largest_of(key_max, chunks, h->k, work);
        double gate = 1.0 / (1.0 + exp(-(K - key_margin(K)) / beta));
        gate -= 1e-6 * gate;
        t_floor = gate;
        /* the lower bounds' k-th largest, unless none can reach the gate's */
        if (late || lambda * amax * (1.0 + 1e-5) + 1e-30 >= gate) {
            double lb = topk_kth_largest_of(lb_max, chunks, h->k, work);
            lb = lb - FLOAT_SLACK * fabs(lb) - 1e-30;
            t_floor = gate > lb ? gate : lb;
        }
    }
    double floor_seen = NAN, skip_below = -INFINITY;
    for (int c = 0, lo = 0; lo < M; c++, lo += width) {
        const double k_max = key_max[c];
        if ((ub_max[c] + 4.3e-18) * (1.0 + FLOAT_SLACK) < t_floor)
            continue;
        if (k_max - key_margin(k_max) < saturated &&
            k_max + key_margin(k_max) <
                skip_bound(h, t_floor, lambda, amax, beta, &floor_seen, &skip_below))
            continue;
        /* The candidates by one vector test against the bound as it stands:
         * the floor only rises, so it keeps a superset of what passes below. */
        const double bound = skip_bound(h, t_floor, lambda, amax, beta, &floor_seen, &skip_below);
        const double reach = bound < saturated ? bound : saturated;
        const float reach_f = reach == -INFINITY ? -INFINITY : nextafterf((float)reach, -INFINITY);
        const int hi = lo + width < M ? lo + width : M;
        uint64_t cand = vec_keys_reaching(key + lo, hi - lo, reach_f);
        /* Late in training the floor passes 1: then only a large enough |a|
         * can enter (s <= 1 + lambda |a|); that keeps the scalar loop from
         * the half of the latents whose gates are saturated. */
        const double floor_now = row_floor(h, t_floor);
        if (cand && lambda > 0.0 && floor_now > 1.0) {
            const double amin = (floor_now - 1.0) / lambda * (1.0 - 1e-6);
            cand &= vec_absa_reaching(zr + lo, m->b_enc + lo, hi - lo,
                                      nextafterf((float)amin, -INFINITY));
        }
        for (; cand; cand &= cand - 1) {
            const int i = lo + __builtin_ctzll(cand);
            const double k_fast = key[i];
            const double a = (double)(zr[i] + m->b_enc[i]);
            if (1.0 + lambda * fabs(a) < t_floor)
                continue;
            if (k_fast - key_margin(k_fast) >= saturated) {
                topk_heap_offer(h, 1.0 + lambda * fabs(a), i);
                continue;
            }
            if (k_fast + key_margin(k_fast) <
                skip_bound(h, t_floor, lambda, amax, beta, &floor_seen, &skip_below))
                continue;
            double u = unit_uniform(noise ? bits[i] : 0x80000000u);
            double g = noise ? log(u) - log(1.0 - u) : 0.0;
            double s = 1.0 / (1.0 + exp(-((a - mean) * rstd + g) / beta)) + lambda * fabs(a);
            topk_heap_offer(h, s, i);
        }
    }
}

static void topk_train_row(const trainer *t, const float *zr, topk_heap *h, void *scratch)
{
    topk_heap_offer_row(h, zr, t->m->b_enc, t->M, scratch);
}

/* AuxK: the k_aux best pre-activations among dead latents. */
static void auxk_row(const trainer *t, const float *zr, const uint8_t *dead, topk_heap *h)
{
    for (int i = 0; i < t->M; i++)
        if (dead[i])
            topk_heap_offer(h, (double)(zr[i] + t->m->b_enc[i]), i);
}

/* Fills entry e of row b for latent i with pre-activation a. ptopk keeps a
 * (no ReLU); the others ReLU it. */
static void set_entry(entries *en, int64_t e, int32_t b, int32_t i, float a, int relu)
{
    en->idx[e] = i;
    en->row[e] = b;
    en->a[e] = a;
    en->f[e] = relu ? (a > 0.0f ? a : 0.0f) : a;
    en->mask[e] = relu ? (a > 0.0f ? 1.0f : 0.0f) : 1.0f;
}

/* Per-row selection for topk / ptopk (and AuxK), in chunks of rows. */
static int forward_topk_rows(trainer *t, double beta, const uint8_t *dead, int k_aux,
                             sae_error *err)
{
    const int B = t->B, M = t->M, d = t->d, k = t->m->cfg.k;
    const int relu = t->fam != FAMILY_PTOPK;
    if (entries_reserve(&t->main, (int64_t)B * k, M, err) != SAE_OK ||
        (k_aux > 0 && entries_reserve(&t->aux, (int64_t)B * k_aux, M, err) != SAE_OK))
        return SAE_ERR;
    for (int b = 0; b <= B; b++) {
        t->main.rowptr[b] = (int64_t)b * k;
        t->aux.rowptr[b] = (int64_t)b * k_aux;
    }
    t->main.n = (int64_t)B * k;
    t->aux.n = (int64_t)B * k_aux;
    /* blocks of rows across threads: each runs its GEMM, then selects */
    const int threads = omp_get_max_threads();
    int rows = (B + threads - 1) / threads;
    rows = rows < CHUNK_ROWS ? rows : CHUNK_ROWS;
    const int z_rows = (int)(Z_BLOCK_BYTES / ((size_t)M * sizeof(float)));
    rows = rows < z_rows ? rows : z_rows > 16 ? z_rows : 16;
    const int n_blocks = (B + rows - 1) / rows;
    sae_blas_init();
    const int cap = k > k_aux ? k : k_aux;
    /* per thread: heap scores [cap] doubles and selection scratch (first,
     * for alignment; ptopk's quickselect work), heap indices [cap], z [rows,
     * M], key [M], bits [M], ptopk's chunk figures [4 SELECT_CHUNKS(M)] */
    const size_t select_floats = SAE_SELECT_SCRATCH(M) / sizeof(float);
    const size_t floats = 2 * (size_t)cap + select_floats + (size_t)cap + (size_t)rows * M +
                          2 * (size_t)M + 4 * SELECT_CHUNKS(M);
    const size_t per_thread = (floats + 1) & ~(size_t)1; /* each thread's doubles 8-byte aligned */
    if (t->scratch_floats < per_thread * threads) {
        free(t->scratch);
        t->scratch_floats = 0;
        if (!(t->scratch = malloc(per_thread * threads * sizeof(float))))
            return sae_fail(err, "train: out of memory for selection scratch");
        t->scratch_floats = per_thread * threads;
    }
#pragma omp parallel num_threads(threads)
    {
        float *mine = t->scratch + per_thread * (size_t)omp_get_thread_num();
        double *scores = (double *)mine;
        void *select_scratch = scores + cap;
        int32_t *idx = (int32_t *)((float *)select_scratch + select_floats);
        float *z = (float *)(idx + cap), *key = z + (size_t)rows * M;
        uint32_t *bits = (uint32_t *)(key + M);
        float *chunk = (float *)(bits + M);
#pragma omp for schedule(static)
        for (int blk = 0; blk < n_blocks; blk++) {
            const int r0 = blk * rows, r = B - r0 < rows ? B - r0 : rows;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, M, d, 1.0f,
                        t->xt + (size_t)r0 * d, d, t->m->W_enc_T, d, 0.0f, z, M);
            for (int i = 0; i < r; i++) {
                const int b = r0 + i;
                const float *zr = z + (size_t)i * M;
                topk_heap h;
                topk_heap_init(&h, k, scores, idx);
                if (t->fam == FAMILY_PTOPK)
                    ptopk_train_row(t, zr, (uint32_t)b, beta, &h, key, bits, chunk, select_scratch);
                else
                    topk_train_row(t, zr, &h, select_scratch);
                topk_heap_sort(&h);
                for (int e = 0; e < k; e++)
                    set_entry(&t->main, (int64_t)b * k + e, b, idx[e],
                              zr[idx[e]] + t->m->b_enc[idx[e]], relu);
                if (k_aux > 0) {
                    topk_heap_init(&h, k_aux, scores, idx);
                    auxk_row(t, zr, dead, &h);
                    topk_heap_sort(&h);
                    for (int e = 0; e < k_aux; e++)
                        set_entry(&t->aux, (int64_t)b * k_aux + e, b, idx[e],
                                  zr[idx[e]] + t->m->b_enc[idx[e]], 1);
                }
            }
        }
    }
    return SAE_OK;
}

/* BatchTopK: the k B largest ReLU(z + b_enc) over the whole batch. */
static int forward_batchtopk(trainer *t, sae_error *err)
{
    const int B = t->B, M = t->M, d = t->d;
    const int64_t keep = (int64_t)t->m->cfg.k * B;
    gemm(0, 1, B, M, d, t->xt, d, t->m->W_enc_T, d, 0.0f, t->z, M);
    double *scores = malloc((size_t)keep * sizeof *scores);
    int32_t *flat = malloc((size_t)keep * sizeof *flat);
    if (!scores || !flat || entries_reserve(&t->main, keep, M, err) != SAE_OK) {
        free(scores);
        free(flat);
        return sae_fail(err, "train: out of memory in batchtopk");
    }
    topk_heap h;
    topk_heap_init(&h, (int)keep, scores, flat);
    for (int64_t p = 0; p < (int64_t)B * M; p++) {
        float v = t->z[p] + t->m->b_enc[p % M];
        if (v > 0.0f)
            topk_heap_offer(&h, v, (int32_t)p);
    }
    /* entries in (row, latent) order: sort the kept flat indices */
    int64_t n = h.n;
    uint8_t *kept = calloc((size_t)B * M / 8 + 1, 1);
    if (!kept) {
        free(scores);
        free(flat);
        return sae_fail(err, "train: out of memory in batchtopk");
    }
    float min_kept = INFINITY;
    for (int64_t e = 0; e < n; e++) {
        kept[flat[e] >> 3] |= (uint8_t)(1u << (flat[e] & 7));
        min_kept = fminf(min_kept, (float)scores[e]);
    }
    int64_t e = 0;
    for (int b = 0; b < B; b++) {
        t->main.rowptr[b] = e;
        for (int i = 0; i < M; i++) {
            int64_t p = (int64_t)b * M + i;
            if (kept[p >> 3] & (1u << (p & 7)))
                set_entry(&t->main, e++, b, i, t->z[p] + t->m->b_enc[i], 1);
        }
    }
    t->main.rowptr[B] = e;
    t->main.n = e;
    t->aux.n = 0;
    t->batch_min_kept = n > 0 ? min_kept : NAN;
    free(kept);
    free(scores);
    free(flat);
    return SAE_OK;
}

/* x^' = b_dec + sum of f W_dec rows, and with it dL/dx^' for the MSE. */
/* Row b of the entries' decoding (plus b_dec or not) into o. */
static void decode_row(const trainer *t, const entries *en, int b, float *o, int add_b_dec)
{
    const int d = t->d;
    if (add_b_dec)
        memcpy(o, t->m->b_dec, (size_t)d * sizeof *o);
    else
        memset(o, 0, (size_t)d * sizeof *o);
    for (int64_t e = en->rowptr[b]; e < en->rowptr[b + 1]; e++)
        axpy(en->f[e], t->m->W_dec + (size_t)en->idx[e] * d, o, d);
}

static void sparse_decode(const trainer *t, const entries *en, float *out, int add_b_dec)
{
#pragma omp parallel for schedule(static)
    for (int b = 0; b < t->B; b++)
        decode_row(t, en, b, out + (size_t)b * t->d, add_b_dec);
}

/* Row b of the reconstruction error: g = dL/dx^' = 2 (x^' - x') / B into t->g;
 * sums[0] = |x^' - x'|^2 and sums[1] = |x' - mean|^2 (for FVU), mean the
 * batch's column means. */
static void row_error(trainer *t, int b, const float *mean, double *sums)
{
    const int d = t->d;
    const float *xh = t->xh + (size_t)b * d, *xp = t->xp + (size_t)b * d;
    float *g = t->g + (size_t)b * d;
    for (int j = 0; j < d; j++)
        g[j] = (float)(2.0 * ((double)xh[j] - xp[j]) / t->B);
    sums[0] = vec_sum_sq_diff(xh, xp, (size_t)d);
    sums[1] = vec_sum_sq_diff(xp, mean, (size_t)d);
}

/* ---- backward: sparse --------------------------------------------------------- */

/* Groups entries by latent (counting sort, rows stay ascending inside a
 * latent), so the per-latent sums below run in a fixed order whatever the
 * thread count: results are reproducible bit for bit. */
static void group_by_latent(const trainer *t, entries *en)
{
    const int M = t->M;
    memset(en->latptr, 0, ((size_t)M + 1) * sizeof *en->latptr);
    for (int64_t e = 0; e < en->n; e++)
        en->latptr[en->idx[e] + 1]++;
    for (int i = 0; i < M; i++)
        en->latptr[i + 1] += en->latptr[i];
    memcpy(en->fill, en->latptr, (size_t)M * sizeof *en->fill);
    for (int64_t e = 0; e < en->n; e++) {
        const int64_t q = en->fill[en->idx[e]]++;
        en->lat_row[q] = en->row[e];
        en->lat_f[q] = en->f[e];
        en->lat_da[q] = en->da[e];
    }
}

/* Backward through a set of entries given upstream[b] = dL/d(decoded row b),
 * in two parts: per row, dL/da at the row's entries; then per latent,
 * dL/dW_dec and dL/dW_enc rows and dL/db_enc. Only the entries' latents are
 * touched: O(n d). (dL/dx~ is only ever summed over rows: input_flow.) */
static void row_entry_grads(trainer *t, entries *en, int b, const float *up)
{
    const float *W_dec = t->m->W_dec;
    for (int64_t e = en->rowptr[b]; e < en->rowptr[b + 1]; e++)
        en->da[e] = (float)dot(up, W_dec + (size_t)en->idx[e] * t->d, t->d) * en->mask[e];
}

/* The first latent whose entries start at or after entry `at` (by latptr). */
static int latent_at_entry(const entries *en, int M, int64_t at)
{
    int a = 0, b = M;
    while (a < b) {
        const int mid = a + (b - a) / 2;
        if (en->latptr[mid] < at)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

/* Latents lo..hi of this thread: about an equal share of the entries each,
 * not of the latents (a few latents fire far more often than the rest). */
static void my_entry_latents(const entries *en, int M, int *lo, int *hi)
{
    const int th = omp_get_thread_num(), T = omp_get_num_threads();
    *lo = latent_at_entry(en, M, en->n * th / T);
    *hi = th == T - 1 ? M : latent_at_entry(en, M, en->n * (th + 1) / T);
}

/* w <= VEC_SLICE floats; the whole slice's size is a constant the compiler
 * copies with a few vector moves (a variable one goes to rep movs). */
static inline void copy_slice(float *dst, const float *src, int w)
{
    if (w == VEC_SLICE)
        memcpy(dst, src, VEC_SLICE * sizeof *dst);
    else
        memcpy(dst, src, (size_t)w * sizeof *dst);
}

/* dL/dW_dec row i = sum over i's entries of f upstream[row], dL/dW_enc row
 * i = sum of dL/da x~[row], dL/db_enc i = sum of dL/da, in entry order. The
 * rows read are random ones of upstream and x~ (B x d each, beyond L2), so
 * the sums go in column slices of VEC_SLICE: both matrices' slice, copied
 * side by side into t->slices (1 MiB at B 4096; in place, rows a few KiB
 * apart would map to a few of L2's sets and evict each other), stays in L2
 * while every latent's sums over it are taken. The first call of a step
 * (first) writes the gradients; a later one (AuxK's) adds to them. */
static void latent_grads(trainer *t, entries *en, const float *upstream, bool first)
{
    const int d = t->d, M = t->M, B = t->B;
    float *gW_dec = grad_of(t, "W_dec"), *gW_enc = grad_of(t, "W_enc_T");
    float *gb_enc = grad_of(t, "b_enc");
    float *up_slice = t->slices, *xt_slice = t->slices + (size_t)B * VEC_SLICE;
    group_by_latent(t, en);
#pragma omp parallel
    {
        int lo, hi;
        my_entry_latents(en, M, &lo, &hi);
        for (int i = lo; i < hi; i++) {
            float s = first ? 0.0f : gb_enc[i];
            for (int64_t q = en->latptr[i]; q < en->latptr[i + 1]; q++)
                s += en->lat_da[q];
            gb_enc[i] = s;
        }
        for (int j0 = 0; j0 < d; j0 += VEC_SLICE) {
            const int w = d - j0 < VEC_SLICE ? d - j0 : VEC_SLICE;
#pragma omp barrier
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) {
                copy_slice(up_slice + (size_t)b * VEC_SLICE, upstream + (size_t)b * d + j0, w);
                copy_slice(xt_slice + (size_t)b * VEC_SLICE, t->xt + (size_t)b * d + j0, w);
            }
            for (int i = lo; i < hi; i++) {
                const int64_t q0 = en->latptr[i], n = en->latptr[i + 1] - q0;
                vec_slice_sums(en->lat_row + q0, en->lat_f + q0, en->lat_da + q0, n, up_slice,
                               xt_slice, VEC_SLICE, w, !first, gW_dec + (size_t)i * d + j0,
                               gW_enc + (size_t)i * d + j0);
            }
        }
        vec_stream_fence();
    }
}

/* ---- dense families: relu and gated ------------------------------------------- */

/* Row norms of W_dec, for the norm-weighted sparsity penalty. */
static void decoder_norms(const trainer *t, float *norms)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < t->M; i++) {
        const float *w = t->m->W_dec + (size_t)i * t->d;
        norms[i] = sqrtf((float)dot(w, w, t->d));
    }
}

/* relu: f = ReLU(z + b_enc), L = mse + l1 mean_b sum_i f_i ||W_dec,i||.
 * gated: pi_gate = z + b_gate, pi_mag = z exp(r_mag) + b_mag,
 *   f = 1[pi_gate > 0] ReLU(pi_mag); L = mse + l1 mean_b sum_i
 *   ReLU(pi_gate)_i ||W_dec,i|| + mean_b ||x' - (ReLU(pi_gate) W_dec + b_dec)||^2
 *   with the decoder frozen in that last (auxiliary) term.
 * Returns the sparsity penalty; finish_dense does the backward once
 * g = dL/dx^' is known. */
static double forward_dense(trainer *t, sae_error *err)
{
    const int B = t->B, M = t->M, d = t->d;
    const sae_model *m = t->m;
    const int gated = t->fam == FAMILY_GATED;
    const float l1 = t->o.l1_coef / (float)B;
    float *norms = malloc((size_t)M * sizeof *norms);
    if (!norms) {
        sae_fail(err, "train: out of memory");
        return NAN;
    }
    decoder_norms(t, norms);
    gemm(0, 1, B, M, d, t->xt, d, m->W_enc_T, d, 0.0f, t->z, M);   /* z = x~ W_enc */
    double *row_sparsity = malloc((size_t)B * sizeof *row_sparsity);
    if (!row_sparsity) {
        free(norms);
        sae_fail(err, "train: out of memory");
        return NAN;
    }
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        double sparsity = 0.0;
        float *z = t->z + (size_t)b * M, *f = t->dense_f + (size_t)b * M;
        for (int i = 0; i < M; i++) {
            if (gated) {
                float pg = z[i] + m->b_gate[i], pm = z[i] * m->r_mag_exp[i] + m->b_mag[i];
                t->gate_in[(size_t)b * M + i] = pg;
                f[i] = pg > 0.0f && pm > 0.0f ? pm : 0.0f;
                sparsity += pg > 0.0f ? (double)pg * norms[i] : 0.0;
            } else {
                float a = z[i] + m->b_enc[i];
                f[i] = a > 0.0f ? a : 0.0f;
                sparsity += (double)f[i] * norms[i];
            }
        }
        row_sparsity[b] = sparsity;
    }
    double sparsity = 0.0;  /* summed in row order: reproducible */
    for (int b = 0; b < B; b++)
        sparsity += row_sparsity[b];
    free(row_sparsity);
    /* x^' = f W_dec + b_dec */
    for (int b = 0; b < B; b++)
        memcpy(t->xh + (size_t)b * d, m->b_dec, (size_t)d * sizeof(float));
    gemm(0, 0, B, d, M, t->dense_f, M, m->W_dec, d, 1.0f, t->xh, d);
    free(norms);
    return l1 * sparsity;
}

/* Second half of the dense backward, once g = dL/dx^' is known. */
/* This thread's share [lo, hi) of M latents inside a parallel region: a
 * latent's sums over rows then run in row order whatever the thread count. */
static void my_latents(int M, int *lo, int *hi)
{
    int th = omp_get_thread_num(), T = omp_get_num_threads();
    *lo = (int)((int64_t)M * th / T);
    *hi = (int)((int64_t)M * (th + 1) / T);
}

/* The norm-weighted sparsity penalty's decoder gradient, l1 sum_b act_bi
 * w_i / ||w_i|| per latent i (act [B, M]: the penalised activations). */
static int sparsity_decoder_grad(trainer *t, const float *act, const float *norms, float l1)
{
    const int M = t->M, d = t->d;
    float *gW_dec = grad_of(t, "W_dec");
    double *colsum = malloc((size_t)M * sizeof *colsum);
    if (!colsum || row_sums(act, NULL, t->B, M, colsum) != SAE_OK) {
        free(colsum);
        return SAE_ERR;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        axpy((float)(l1 * colsum[i] / norms[i]), t->m->W_dec + (size_t)i * d,
             gW_dec + (size_t)i * d, d);
    free(colsum);
    return SAE_OK;
}

/* Whether latent i is active at p = b M + i (dense families; gated: the
 * gate is open and the magnitude positive). */
static int dense_fired(const trainer *t, size_t p, int i)
{
    if (t->fam == FAMILY_GATED)
        return t->gate_in[p] > 0.0f && t->z[p] * t->m->r_mag_exp[i] + t->m->b_mag[i] > 0.0f;
    return t->dense_f[p] > 0.0f;
}

static int finish_dense(trainer *t, double *aux_loss, sae_error *err)
{
    const int B = t->B, M = t->M, d = t->d;
    const sae_model *m = t->m;
    const int gated = t->fam == FAMILY_GATED;
    const float l1 = t->o.l1_coef / (float)B;
    float *gW_dec = grad_of(t, "W_dec"), *gW_enc = grad_of(t, "W_enc_T");
    float *norms = malloc((size_t)M * sizeof *norms);
    float *aux_g = gated ? malloc((size_t)B * d * sizeof *aux_g) : NULL;
    if (!norms || (gated && !aux_g)) {
        free(norms);
        free(aux_g);
        return sae_fail(err, "train: out of memory");
    }
    decoder_norms(t, norms);
    float *df = t->dense_d;
    gemm(0, 1, B, M, d, t->g, d, m->W_dec, d, 0.0f, df, M);          /* df = g W_dec^T */
    gemm(1, 0, M, d, B, t->dense_f, M, t->g, d, 0.0f, gW_dec, d);      /* f^T g */
    *aux_loss = 0.0;
    if (gated) {
        /* auxiliary reconstruction through the frozen decoder; f is no
         * longer needed (f^T g is done), so its buffer holds ReLU(pi_gate) */
        float *relu_gate = t->dense_f;
#pragma omp parallel for schedule(static)
        for (size_t p = 0; p < (size_t)B * M; p++)
            relu_gate[p] = t->gate_in[p] > 0.0f ? t->gate_in[p] : 0.0f;
        for (int b = 0; b < B; b++)
            memcpy(aux_g + (size_t)b * d, m->b_dec, (size_t)d * sizeof(float));
        gemm(0, 0, B, d, M, relu_gate, M, m->W_dec, d, 1.0f, aux_g, d);
        double aux = 0.0;
        for (size_t p = 0; p < (size_t)B * d; p++) {
            float e = aux_g[p] - t->xp[p];
            aux += (double)e * e;
            aux_g[p] = 2.0f * e / (float)B;
        }
        *aux_loss = aux / B;
        /* sparsity term's decoder gradient: l1 sum_b ReLU(pi_gate) w_i / ||w_i|| */
        if (sparsity_decoder_grad(t, relu_gate, norms, l1) != SAE_OK) {
            free(norms);
            free(aux_g);
            return sae_fail(err, "train: out of memory");
        }
        float *aux_df = malloc((size_t)B * M * sizeof *aux_df);
        if (!aux_df) {
            free(norms);
            free(aux_g);
            return sae_fail(err, "train: out of memory");
        }
        gemm(0, 1, B, M, d, aux_g, d, m->W_dec, d, 0.0f, aux_df, M);
        float *g_r = grad_of(t, "r_mag"), *g_bm = grad_of(t, "b_mag"), *g_bg = grad_of(t, "b_gate");
        /* dz = dpi_mag exp(r_mag) + dpi_gate, into df; each thread owns a
         * range of latents, so every sum over b runs in b order */
#pragma omp parallel
        {
            int lo, hi;
            my_latents(M, &lo, &hi);
            for (int b = 0; b < B; b++)
                for (int i = lo; i < hi; i++) {
                    size_t p = (size_t)b * M + i;
                    float pg = t->gate_in[p], z = t->z[p];
                    float pm = z * m->r_mag_exp[i] + m->b_mag[i];
                    float dpm = (pg > 0.0f && pm > 0.0f) ? df[p] : 0.0f;
                    float dpg = pg > 0.0f ? l1 * norms[i] + aux_df[p] : 0.0f;
                    g_r[i] += dpm * z * m->r_mag_exp[i];
                    g_bm[i] += dpm;
                    g_bg[i] += dpg;
                    df[p] = dpm * m->r_mag_exp[i] + dpg;
                }
        }
        free(aux_df);
    } else {
        float *gb_enc = grad_of(t, "b_enc");
        if (sparsity_decoder_grad(t, t->dense_f, norms, l1) != SAE_OK) {
            free(norms);
            return sae_fail(err, "train: out of memory");
        }
#pragma omp parallel
        {
            int lo, hi;
            my_latents(M, &lo, &hi);
            for (int b = 0; b < B; b++)
                for (int i = lo; i < hi; i++) {
                    size_t p = (size_t)b * M + i;
                    df[p] = t->dense_f[p] > 0.0f ? df[p] + l1 * norms[i] : 0.0f;
                    gb_enc[i] += df[p];
                }
        }
    }
    /* df now holds dL/dz: the encoder gradient */
    gemm(1, 0, M, d, B, df, M, t->xt, d, 0.0f, gW_enc, d);
    free(norms);
    free(aux_g);
    return SAE_OK;
}

/* ---- the step ------------------------------------------------------------------ */

/* sum_b dL/dx~_b, what flows back into b_dec through x~ = x' - b_dec. It is
 * sum_i s_i W_enc row i with s_i = sum_b dL/dz_bi, which is b_enc's gradient
 * (gated: b_gate's plus b_mag's times exp(r_mag)): one pass over W_enc, where
 * dL/dx~ itself would be a second GEMM (dense) or a scattered read of a W_enc
 * row per entry (top-k). Fixed slices of latents, added in order. */
static int input_flow(const trainer *t, double *out)
{
    const int M = t->M;
    const float *gb_enc = grad_of(t, "b_enc"), *g_bm = grad_of(t, "b_mag"),
                *g_bg = grad_of(t, "b_gate");
    double *s = malloc((size_t)M * sizeof *s);
    if (!s)
        return SAE_ERR;
    for (int i = 0; i < M; i++)
        s[i] = t->fam == FAMILY_GATED ? (double)g_bm[i] * t->m->r_mag_exp[i] + g_bg[i]
                                      : gb_enc[i];
    int rc = row_sums(t->m->W_enc_T, s, M, t->d, out);
    free(s);
    return rc;
}

/* AuxK (topk): L_aux = coef ||e - e^||^2 / ||e - mean(e)||^2 over the batch,
 * e = x' - x^' (held fixed), e^ = the dead latents' reconstruction. */
static double auxk_backward(trainer *t, sae_error *err)
{
    const int B = t->B, d = t->d;
    if (!t->aux_rows && !(t->aux_rows = malloc((size_t)B * d * sizeof *t->aux_rows))) {
        sae_fail(err, "train: out of memory for AuxK");
        return NAN;
    }
    sparse_decode(t, &t->aux, t->aux_rows, 0);
    double mean[d > 0 ? d : 1];
    memset(mean, 0, sizeof mean);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < d; j++)
            mean[j] += t->xp[(size_t)b * d + j] - t->xh[(size_t)b * d + j];
    double denom = 0.0, num = 0.0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < d; j++) {
            size_t p = (size_t)b * d + j;
            double e = t->xp[p] - t->xh[p];
            double c = e - mean[j] / B;
            denom += c * c;
            double r = t->aux_rows[p] - e;
            num += r * r;
        }
    if (!(denom > 0.0))
        return 0.0;
    const double coef = t->o.auxk_coef;
    for (size_t p = 0; p < (size_t)B * d; p++)
        t->aux_rows[p] = (float)(coef * 2.0 * (t->aux_rows[p] - (t->xp[p] - t->xh[p])) / denom);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        row_entry_grads(t, &t->aux, b, t->aux_rows + (size_t)b * d);
    latent_grads(t, &t->aux, t->aux_rows, false);
    return coef * num / denom;
}

int trainer_loss_and_grads(trainer *t, const float *x, step_stats *st, sae_error *err)
{
    if (t->gpu)
        return train_cuda_loss_and_grads(t, x, st, err);
    const int B = t->B, d = t->d, M = t->M;
    sae_model *m = t->m;
    const int64_t warmup = train_warmup_steps(&t->o);
    memset(st, 0, sizeof *st);
    st->lr = lr_at(t->o.lr, t->step, warmup, t->o.steps);
    st->beta = beta_at(t->o.beta0, t->o.beta_end, t->step, warmup, t->o.steps);

    double col[d > 0 ? d : 1];
    sae_preprocess(&m->cfg, x, B, t->xp);
    if (!t->initialised) {      /* b_dec = mean of the first batch */
        if (row_sums(t->xp, NULL, B, d, col) != SAE_OK)
            return sae_fail(err, "train: out of memory");
        for (int j = 0; j < d; j++)
            m->b_dec[j] = (float)(col[j] / B);
        t->initialised = 1;
    }
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int j = 0; j < d; j++)
            t->xt[(size_t)b * d + j] = t->xp[(size_t)b * d + j] -
                                       (m->cfg.apply_b_dec_to_input ? m->b_dec[j] : 0.0f);
    for (int i = 0; i < t->n_params; i++) /* the top-k family's latent_grads writes these */
        if (!(is_topk_family(t) && (t->params[i].w == m->W_dec || t->params[i].w == m->W_enc_T ||
                                    t->params[i].w == m->b_enc)))
            parallel_zero(t->params[i].g, t->params[i].n);

    /* MSE = mean over rows of sum_j (x^' - x')^2;  g = dL/dx^' */
    if (row_sums(t->xp, NULL, B, d, col) != SAE_OK)
        return sae_fail(err, "train: out of memory");
    float col_mean[d > 0 ? d : 1];
    for (int j = 0; j < d; j++)
        col_mean[j] = (float)(col[j] / B);
    double *row_sq = malloc((size_t)B * 2 * sizeof *row_sq);
    if (!row_sq)
        return sae_fail(err, "train: out of memory");
    double penalty = 0.0;
    int rc = SAE_OK;
    if (is_topk_family(t)) {
        if (t->fam == FAMILY_BATCHTOPK) {
            rc = forward_batchtopk(t, err);
        } else {
            uint8_t *dead = NULL;
            int k_aux = 0;
            if (t->o.auxk) {
                int64_t window = train_dead_window(&t->o), n_dead = 0;
                if (!(dead = malloc((size_t)M)))
                    rc = sae_fail(err, "train: out of memory");
                for (int i = 0; dead && i < M; i++)
                    n_dead += dead[i] = t->tokens - t->last_fired[i] > window;
                k_aux = (int)(n_dead < d / 2 ? n_dead : d / 2);
            }
            if (rc == SAE_OK)
                rc = forward_topk_rows(t, st->beta, dead, k_aux, err);
            free(dead);
        }
        /* Row by row: decode, error, dL/da; a row's decoder rows are still in
         * cache for its dL/da (a separate pass fetched them from memory twice). */
        if (rc == SAE_OK) {
#pragma omp parallel for schedule(static)
            for (int b = 0; b < B; b++) {
                decode_row(t, &t->main, b, t->xh + (size_t)b * d, 1);
                row_error(t, b, col_mean, row_sq + 2 * b);
                row_entry_grads(t, &t->main, b, t->g + (size_t)b * d);
            }
        }
    } else {
        penalty = forward_dense(t, err);
        rc = isnan(penalty) ? SAE_ERR : SAE_OK;
        if (rc == SAE_OK) {
#pragma omp parallel for schedule(static)
            for (int b = 0; b < B; b++)
                row_error(t, b, col_mean, row_sq + 2 * b);
        }
    }
    if (rc != SAE_OK) {
        free(row_sq);
        return SAE_ERR;
    }
    double sq = 0.0, var = 0.0;     /* in row order: reproducible */
    for (int b = 0; b < B; b++) {
        sq += row_sq[2 * b];
        var += row_sq[2 * b + 1];
    }
    free(row_sq);
    st->mse = sq / B;
    st->fvu = var > 0.0 ? sq / var : 0.0;

    if (is_topk_family(t)) {
        latent_grads(t, &t->main, t->g, true);
        if (t->aux.n > 0 && (st->aux_loss = auxk_backward(t, err), isnan(st->aux_loss)))
            return SAE_ERR;
        int64_t nz = 0;
        for (int64_t e = 0; e < t->main.n; e++)
            nz += t->main.f[e] != 0.0f;
        st->l0 = (double)nz / B;
    } else {
        if (finish_dense(t, &st->aux_loss, err) != SAE_OK)
            return SAE_ERR;
        int64_t nz = 0;
#pragma omp parallel for schedule(static) reduction(+ : nz)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < M; i++)
                nz += dense_fired(t, (size_t)b * M + i, i);
        st->l0 = (double)nz / B;
    }
    /* b_dec: the decoder's bias, minus what flowed into x~ = x' - b_dec */
    float *gb_dec = grad_of(t, "b_dec");
    double flow[d > 0 ? d : 1];
    if (row_sums(t->g, NULL, B, d, col) != SAE_OK ||
        (t->o.apply_b_dec_to_input && input_flow(t, flow) != SAE_OK))
        return sae_fail(err, "train: out of memory");
    for (int j = 0; j < d; j++)
        gb_dec[j] = (float)(col[j] - (t->o.apply_b_dec_to_input ? flow[j] : 0.0));
    st->loss = st->mse + penalty + st->aux_loss;
    return SAE_OK;
}

/* Unit-norm decoder rows (top-k family): remove each row's gradient component
 * along the row before the step; adam_step renormalises after it (the
 * parameter's unit_rows). */
static void decoder_grad_orthogonalise(trainer *t)
{
    float *g = grad_of(t, "W_dec");
#pragma omp parallel for schedule(static)
    for (int i = 0; i < t->M; i++) {
        const float *w = t->m->W_dec + (size_t)i * t->d;
        float *gi = g + (size_t)i * t->d;
        axpy(-(float)dot(gi, w, t->d), w, gi, t->d);
    }
}

/* Latents with a non-zero code this batch fired at the batch's last token. */
static void mark_fired(trainer *t)
{
    const int64_t now = t->tokens + t->B;
    if (is_topk_family(t)) {
        for (int64_t e = 0; e < t->main.n; e++)
            if (t->main.f[e] != 0.0f)
                t->last_fired[t->main.idx[e]] = now;
        return;
    }
#pragma omp parallel
    {
        int lo, hi;
        my_latents(t->M, &lo, &hi);
        for (int b = 0; b < t->B; b++)
            for (int i = lo; i < hi; i++)
                if (dense_fired(t, (size_t)b * t->M + i, i))
                    t->last_fired[i] = now;
    }
}

int trainer_step(trainer *t, const float *x, step_stats *st, sae_error *err)
{
    if (t->gpu)
        return train_cuda_step(t, x, st, err);
    if (trainer_loss_and_grads(t, x, st, err) != SAE_OK)
        return SAE_ERR;
    if (!isfinite(st->loss))
        return sae_fail(err, "non-finite loss at step %lld", (long long)t->step);
    mark_fired(t);      /* from this forward pass, before the update changes the weights */
    if (is_topk_family(t))
        decoder_grad_orthogonalise(t);
    st->grad_norm = grad_global_norm(t->params, t->n_params);
    grad_clip(t->params, t->n_params, st->grad_norm, t->o.clip);
    adam_config ac = {t->o.lr, t->o.adam_beta1, t->o.adam_beta2, t->o.adam_eps};
    adam_step(t->params, t->n_params, &ac, (float)st->lr, t->step + 1);
    if (t->fam == FAMILY_BATCHTOPK && !isnan(t->batch_min_kept)) {
        float rate = t->step == 0 ? 1.0f : t->o.threshold_rate;
        t->theta = (1.0f - rate) * t->theta + rate * t->batch_min_kept;
        for (int i = 0; i < t->M; i++)
            t->m->threshold[i] = t->theta;
    }
    sae_refresh_derived(t->m);
    t->tokens += t->B;
    t->step++;
    return SAE_OK;
}

/* ---- checkpoints ---------------------------------------------------------------- */

#define STATE_FILE "train_state.safetensors"

int trainer_save(const trainer *t, const char *dir, const char *extra_state_json,
                 sae_error *err)
{
    if (t->gpu && train_cuda_to_host(t, 0, err) != SAE_OK)
        return SAE_ERR;
    if (sae_save(t->m, dir, err) != SAE_OK)
        return SAE_ERR;
    char names[16][64];
    st_out outs[17];
    int n = 0;
    for (int i = 0; i < t->n_params; i++) {
        const param *p = &t->params[i];
        snprintf(names[2 * i], sizeof names[0], "adam_m.%s", p->name);
        snprintf(names[2 * i + 1], sizeof names[0], "adam_v.%s", p->name);
        outs[n++] = (st_out){names[2 * i], ST_F32, 1, {(int64_t)p->n}, p->m};
        outs[n++] = (st_out){names[2 * i + 1], ST_F32, 1, {(int64_t)p->n}, p->v};
    }
    outs[n++] = (st_out){"last_fired", ST_I64, 1, {t->M}, t->last_fired};

    json_t *state = json_pack("{s:I, s:I, s:f, s:b}", "step", (json_int_t)t->step, "tokens",
                              (json_int_t)t->tokens, "theta", (double)t->theta, "initialised",
                              t->initialised);
    char *opts = train_options_to_json(&t->o);
    json_t *extra = extra_state_json ? json_loads(extra_state_json, 0, NULL) : NULL;
    if (state && opts)
        json_object_set_new(state, "options", json_loads(opts, 0, NULL));
    if (state && extra)
        json_object_set_new(state, "extra", extra);
    char *state_text = state ? json_dumps(state, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_t *meta = state_text ? json_pack("{s:s}", "state", state_text) : NULL;
    char *meta_text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    free(opts);
    free(state_text);
    json_decref(state);
    json_decref(meta);
    if (!meta_text)
        return sae_fail(err, "out of memory saving the training state");
    char path[4096];
    snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
    int rc = st_write(path, outs, n, meta_text, err);
    free(meta_text);
    return rc;
}

/* The state metadata of a checkpoint as a JSON object (new reference). */
static json_t *read_state_meta(const st_file *f, const char *path, sae_error *err)
{
    json_t *meta = f->metadata_json ? json_loads(f->metadata_json, 0, NULL) : NULL;
    json_t *s = meta ? json_object_get(meta, "state") : NULL;
    json_t *state = json_is_string(s) ? json_loads(json_string_value(s), 0, NULL) : NULL;
    json_decref(meta);
    if (!json_is_object(state)) {
        json_decref(state);
        sae_fail(err, "%s: no training state in its metadata", path);
        return NULL;
    }
    return state;
}

int trainer_load(const char *dir, trainer **out, char **extra_state_json, sae_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
    st_file f;
    if (st_open(&f, path, err) != SAE_OK)
        return SAE_ERR;
    json_t *state = read_state_meta(&f, path, err);
    train_options o;
    char *opts = state ? json_dumps(json_object_get(state, "options"), JSON_COMPACT) : NULL;
    sae_model *m = NULL;
    trainer *t = NULL;
    int rc = SAE_ERR;
    if (!opts || train_options_from_json(opts, &o, err) != SAE_OK ||
        sae_load(dir, &m, err) != SAE_OK || trainer_from_model(&o, m, &t, err) != SAE_OK)
        goto out;
    for (int i = 0; i < t->n_params; i++) {
        param *p = &t->params[i];
        char name[2][64];
        snprintf(name[0], sizeof name[0], "adam_m.%s", p->name);
        snprintf(name[1], sizeof name[1], "adam_v.%s", p->name);
        float *dst[2] = {p->m, p->v};
        for (int q = 0; q < 2; q++) {
            const st_tensor *tt = st_find(&f, name[q]);
            if (!tt || st_numel(tt) != (int64_t)p->n) {
                sae_fail(err, "%s: missing or mis-sized tensor %s", path, name[q]);
                goto out;
            }
            if (st_read_f32(&f, tt, dst[q], 0, 1, err) != SAE_OK)
                goto out;
        }
    }
    const st_tensor *lf = st_find(&f, "last_fired");
    if (!lf || lf->dtype != ST_I64 || st_numel(lf) != t->M) {
        sae_fail(err, "%s: missing or mis-sized tensor last_fired", path);
        goto out;
    }
    memcpy(t->last_fired, st_data(&f, lf), (size_t)t->M * sizeof(int64_t));
    t->step = json_integer_value(json_object_get(state, "step"));
    t->tokens = json_integer_value(json_object_get(state, "tokens"));
    t->theta = (float)json_number_value(json_object_get(state, "theta"));
    t->initialised = json_is_true(json_object_get(state, "initialised"));
    if (extra_state_json) {
        json_t *extra = json_object_get(state, "extra");
        *extra_state_json = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
    }
    *out = t;
    t = NULL;
    rc = SAE_OK;
out:
    trainer_free(t);
    sae_free(m);
    free(opts);
    json_decref(state);
    st_close(&f);
    return rc;
}
