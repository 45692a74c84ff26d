/* test_parity.c - the CUDA backend against the CPU backend, the reference.
 *
 * For every architecture, several shapes (d_in 768 / d_sae 24576 / k 32, odd
 * small shapes, k up to 1024) and batch sizes (1, 7, 64, 1000, and a
 * multi-pass one): random weights and inputs, encode and decode on both
 * backends, and compare:
 *   - structure: CSR well formed, exactly k entries per row for top-k archs,
 *     indices in range and unique, values finite, elementwise rows in index
 *     order. The GPU's outputs are poisoned first (NaN values, -1 indices,
 *     garbage indptr), so anything left unwritten shows.
 *   - selection: the index sets (and, for top-k, the order) are equal, except
 *     at near-ties: a latent may differ only if moving the pre-activations by
 *     1e-5 of the row's scale could move it across the decision (the k-th
 *     score band for top-k, the threshold for elementwise archs), judged on
 *     the pre-activations recomputed in double. The row's scale is
 *     ||x~|| * max_i ||W_enc[:, i]||, the Cauchy-Schwarz bound of |z|, which is
 *     what float GEMM error is proportional to.
 *   - values: |gpu - cpu| <= 1e-4 |cpu| + 1e-6 scale (for gated, times exp(r_mag)).
 *   - decode of the CPU's codes on both: max |gpu - cpu| <= 1e-4 max |cpu| per row.
 * "Exact" cases use small-integer data, where every GEMM is exact in float:
 * there the two backends must agree bit for bit, which pins the tie-breaking
 * (lower index first) on rows with thousands of equal scores, e.g. zero rows.
 *
 * Prints one line per case and `N passed, N failed`; exit 0 when none failed.
 *   --small         small shapes only (the emulated build)
 *   --tiny          a handful of cases covering every kernel path (compute-sanitizer)
 *   --allow-no-gpu  exit 77 (skip) instead of 1 when no GPU is usable
 *   --arch NAME     only that architecture
 *
 * Links against the CPU and CUDA backends without checkpoint.c, so it builds
 * without jansson (tests/gpu/run.sh's direct build). */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "sae.h"

/* declared here too: the emulated build has no SAE_HAVE_CUDA */
extern const sae_backend sae_backend_cuda;
int sae_cuda_probe(int device, char *desc, size_t n);

#define TIE_REL 1e-5
#define VAL_REL 1e-4
#define VAL_ABS_REL 1e-6
#define DEC_REL 1e-4
#define MAX_EXACT_ROWS 64   /* rows per run whose mismatches are analysed in double */

/* ---- random numbers ----------------------------------------------------------- */
static uint64_t rng;

static uint64_t rng_next(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

static double rng_normal(void)
{
    double u = rng_uniform(), v = rng_uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static int rng_int(int lo, int hi)
{
    return lo + (int)(rng_next() % (uint64_t)(hi - lo + 1));
}

/* ---- cases -------------------------------------------------------------------- */
enum { DATA_RANDOM, DATA_INT };

typedef struct variant {
    const char *arch;
    sae_norm norm;
    bool b_dec_in;
    float scale;                /* constant_scale */
    bool layernorm;             /* ptopk */
    float beta, lambda;         /* ptopk */
    int data;
} variant;

typedef struct shape {
    int d, M, k;
} shape;

static const variant random_variants[] = {
    {"standard", SAE_NORM_NONE, true, 0, false, 0, 0, DATA_RANDOM},
    {"gated", SAE_NORM_CENTER_UNIT_NORM, true, 0, false, 0, 0, DATA_RANDOM},
    {"jumprelu", SAE_NORM_LAYER_NORM, false, 0, false, 0, 0, DATA_RANDOM},
    {"batchtopk", SAE_NORM_CONSTANT_SCALE, true, 2.5f, false, 0, 0, DATA_RANDOM},
    {"topk", SAE_NORM_NONE, true, 0, false, 0, 0, DATA_RANDOM},
    {"topk", SAE_NORM_LAYER_NORM, true, 0, false, 0, 0, DATA_RANDOM},
    /* saturated gates: ranking among them is by |a| alone, 1e-4 below 1 */
    {"ptopk", SAE_NORM_NONE, true, 0, true, 1e-4f, 1e-4f, DATA_RANDOM},
    {"ptopk", SAE_NORM_CENTER_UNIT_NORM, true, 0, false, 1.0f, 1e-4f, DATA_RANDOM},
    {"ptopk", SAE_NORM_LAYER_NORM, false, 0, true, 0.5f, 0.0f, DATA_RANDOM},
};

static const variant exact_variants[] = {
    /* no b_dec subtraction: the zero rows give z = 0, so the scores are b_enc
     * in {0, 0.5} and ~M/2 latents tie for the top */
    {"topk", SAE_NORM_NONE, false, 0, false, 0, 0, DATA_INT},
    /* lambda 0: every saturated gate scores exactly 1.0, a tie of ~M/2 latents */
    {"ptopk", SAE_NORM_NONE, true, 0, false, 1e-4f, 0.0f, DATA_INT},
    {"ptopk", SAE_NORM_NONE, true, 0, false, 1e-4f, 1e-4f, DATA_INT},
    {"standard", SAE_NORM_NONE, true, 0, false, 0, 0, DATA_INT},
    {"jumprelu", SAE_NORM_NONE, false, 0, false, 0, 0, DATA_INT},
    {"gated", SAE_NORM_NONE, true, 0, false, 0, 0, DATA_INT},
};

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

/* ---- models ------------------------------------------------------------------- */
static sae_model *model_new(const variant *v, const shape *s)
{
    const sae_arch *arch = sae_arch_find(v->arch);
    sae_model *m = calloc(1, sizeof *m);
    if (!arch || !m)
        return NULL;
    m->cfg.d_in = s->d;
    m->cfg.d_sae = s->M;
    m->cfg.arch = arch;
    m->cfg.k = arch->uses_k ? s->k : 0;
    m->cfg.apply_b_dec_to_input = v->b_dec_in;
    m->cfg.normalize = v->norm;
    m->cfg.norm_scale = v->scale;
    m->cfg.layernorm = v->layernorm;
    m->cfg.beta_final = v->beta;
    m->cfg.lambda_mag = v->lambda;
    const size_t d = (size_t)s->d, M = (size_t)s->M;
    m->W_enc_T = malloc(M * d * sizeof(float));
    m->W_dec = malloc(M * d * sizeof(float));
    m->b_dec = malloc(d * sizeof(float));
    if (arch->params & SAE_P_B_ENC)
        m->b_enc = malloc(M * sizeof(float));
    if (arch->params & SAE_P_GATED) {
        m->b_gate = malloc(M * sizeof(float));
        m->b_mag = malloc(M * sizeof(float));
        m->r_mag = malloc(M * sizeof(float));
        m->r_mag_exp = malloc(M * sizeof(float));
    }
    if (arch->params & SAE_P_THRESHOLD)
        m->threshold = malloc(M * sizeof(float));
    if (!m->W_enc_T || !m->W_dec || !m->b_dec)
        return NULL;
    const bool in = v->data == DATA_INT;
    const double ws = 1.0 / sqrt((double)d);
    for (size_t i = 0; i < M * d; i++) {
        m->W_enc_T[i] = in ? (float)rng_int(-1, 1) : (float)(rng_normal() * ws);
        m->W_dec[i] = in ? (float)rng_int(-4, 4) / 8.0f : (float)(rng_normal() * ws);
    }
    for (size_t j = 0; j < d; j++)
        m->b_dec[j] = in ? (float)rng_int(-1, 1) : (float)(0.1 * rng_normal());
    for (size_t i = 0; i < M; i++) {
        if (m->b_enc)
            m->b_enc[i] = in ? 0.5f * (float)rng_int(0, 1) : (float)(0.1 * rng_normal());
        if (m->threshold)
            m->threshold[i] = in ? 0.5f * (float)rng_int(0, 2) : (float)(0.3 * rng_uniform());
        if (m->b_gate) {
            m->b_gate[i] = in ? 0.5f * (float)rng_int(-1, 1) : (float)(0.1 * rng_normal());
            m->b_mag[i] = in ? 0.5f * (float)rng_int(-1, 1) : (float)(0.1 * rng_normal());
            m->r_mag[i] = in ? 0.0f : (float)(0.2 * rng_normal());
            m->r_mag_exp[i] = expf(m->r_mag[i]);    /* as sae_refresh_derived */
        }
    }
    return m;
}

static void model_free(sae_model *m)
{
    if (!m)
        return;
    if (m->backend && m->backend->detach)
        m->backend->detach(m);
    free(m->W_enc_T);
    free(m->W_dec);
    free(m->b_dec);
    free(m->b_enc);
    free(m->b_gate);
    free(m->b_mag);
    free(m->r_mag);
    free(m->r_mag_exp);
    free(m->threshold);
    free(m);
}

/* As backend.c's attach, without the device string. */
static int attach_cuda(sae_model *m, sae_error *err)
{
    m->backend = (sae_backend *)&sae_backend_cuda;
    m->backend_state = NULL;
    if (sae_backend_cuda.attach(m, err) != SAE_OK) {
        m->backend = NULL;
        return SAE_ERR;
    }
    return SAE_OK;
}

/* ---- the reference in double -------------------------------------------------- */

/* x~ of one row, as the CPU backend forms it */
static void input_row(const sae_model *m, const float *x, float *xt)
{
    sae_preprocess(&m->cfg, x, 1, xt);
    if (m->cfg.apply_b_dec_to_input)
        for (int j = 0; j < m->cfg.d_in; j++)
            xt[j] -= m->b_dec[j];
}

static double dot_row(const sae_model *m, const float *xt, int i)
{
    const float *w = m->W_enc_T + (size_t)i * m->cfg.d_in;
    double s = 0.0;
    for (int j = 0; j < m->cfg.d_in; j++)
        s += (double)xt[j] * (double)w[j];
    return s;
}

/* Top-k score of a pre-activation a (z + b_enc) given the row's statistics. */
typedef struct row_stats {
    double mean, t_scale, lambda;
    int ptopk;
} row_stats;

static double score_of(const row_stats *rs, double a)
{
    if (!rs->ptopk)
        return a;
    double g = 1.0 / (1.0 + exp(-(a - rs->mean) * rs->t_scale));
    return g + rs->lambda * fabs(a);
}

/* Range of the score when a moves by at most delta. */
static void score_range(const row_stats *rs, double a, double delta, double *lo, double *hi)
{
    double p[4] = {a - delta, a, a + delta, a};
    if (a - delta < 0.0 && a + delta > 0.0)
        p[3] = 0.0;     /* |a| has its kink inside */
    *lo = *hi = score_of(rs, p[0]);
    for (int i = 1; i < 4; i++) {
        double s = score_of(rs, p[i]);
        *lo = s < *lo ? s : *lo;
        *hi = s > *hi ? s : *hi;
    }
}

static const double *sort_scores;

static int by_score_desc(const void *pa, const void *pb)
{
    int a = *(const int *)pa, b = *(const int *)pb;
    if (sort_scores[a] != sort_scores[b])
        return sort_scores[a] > sort_scores[b] ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* ---- comparing ------------------------------------------------------------------ */
typedef struct ctx {
    const sae_model *m;
    bool exact, topk;
    double wmax;            /* max row norm of W_enc_T */
    int act;                /* 0 relu, 1 jumprelu, 2 gated (elementwise) */
    /* scratch */
    int *pos_c, *pos_g;     /* [M]: 1 + position in the row, 0 = absent */
    float *xt;              /* [d] */
    double *a, *s;          /* [M] */
    int *order;             /* [M] */
    int exact_rows;
    double max_val_err;     /* worst |gpu - cpu| / tolerance seen */
    char why[400];
} ctx;

static bool fail(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fail(ctx *c, const char *fmt, ...)
{
    if (!c->why[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof c->why, fmt, ap);
        va_end(ap);
    }
    return false;
}

static bool check_value(ctx *c, int64_t r, int i, double got, double want, double scale)
{
    double tol = VAL_REL * fabs(want) + VAL_ABS_REL * scale;
    if (c->m->r_mag_exp && c->m->r_mag_exp[i] > 1.0f)
        tol = VAL_REL * fabs(want) + VAL_ABS_REL * scale * c->m->r_mag_exp[i];
    if (c->exact)
        tol = 0.0;
    double e = fabs(got - want);
    if (!(e <= tol))
        return fail(c, "row %lld latent %d: value %.9g, CPU %.9g (tolerance %.3g)", (long long)r,
                    i, got, want, tol);
    if (tol > 0.0 && e / tol > c->max_val_err)
        c->max_val_err = e / tol;
    return true;
}

/* An elementwise latent that one backend kept and the other did not: is its
 * pre-activation within delta of the decision? */
static bool elementwise_near(const ctx *c, int i, double z, double delta)
{
    const sae_model *m = c->m;
    switch (c->act) {
    case 0:
        return fabs(z + m->b_enc[i]) <= delta;
    case 1:
        return fabs(z + m->b_enc[i] - m->threshold[i]) <= delta;
    default: {
        double r = m->r_mag_exp[i];
        return fabs(z + m->b_gate[i]) <= delta ||
               fabs(z * r + m->b_mag[i]) <= delta * (r > 1.0 ? r : 1.0);
    }
    }
}

static bool compare_elementwise_row(ctx *c, int64_t r, const float *x, const sae_codes *cc,
                                    const sae_codes *gc, double scale)
{
    const sae_model *m = c->m;
    const int64_t c0 = cc->indptr[r], c1 = cc->indptr[r + 1];
    const int64_t g0 = gc->indptr[r], g1 = gc->indptr[r + 1];
    for (int64_t e = g0 + 1; e < g1; e++)
        if (gc->indices[e] <= gc->indices[e - 1])
            return fail(c, "row %lld: GPU indices not increasing at entry %lld", (long long)r,
                        (long long)(e - g0));
    const double delta = TIE_REL * scale;
    bool have_xt = false;
    int64_t ec = c0, eg = g0;
    while (ec < c1 || eg < g1) {
        int ic = ec < c1 ? cc->indices[ec] : m->cfg.d_sae;
        int ig = eg < g1 ? gc->indices[eg] : m->cfg.d_sae;
        if (ic == ig) {
            if (!check_value(c, r, ic, gc->values[eg], cc->values[ec], scale))
                return false;
            ec++;
            eg++;
            continue;
        }
        const int t = ic < ig ? ic : ig;   /* in one set only */
        if (c->exact)
            return fail(c, "row %lld: latent %d %s (exact data)", (long long)r, t,
                        ic < ig ? "only on the CPU" : "only on the GPU");
        if (!have_xt) {
            input_row(m, x, c->xt);
            have_xt = true;
        }
        double z = dot_row(m, c->xt, t);
        if (!elementwise_near(c, t, z, delta))
            return fail(c, "row %lld: latent %d %s, and its pre-activation %.9g is not within "
                        "%.3g of the decision", (long long)r, t,
                        ic < ig ? "only on the CPU" : "only on the GPU", z, delta);
        if (ic < ig)
            ec++;
        else
            eg++;
    }
    return true;
}

static bool compare_topk_row(ctx *c, int64_t r, const float *x, const sae_codes *cc,
                             const sae_codes *gc, double scale)
{
    const sae_model *m = c->m;
    const int k = m->cfg.k, M = m->cfg.d_sae;
    const int32_t *ic = cc->indices + r * k, *ig = gc->indices + r * k;
    const float *vc = cc->values + r * k, *vg = gc->values + r * k;
    bool same = true;
    for (int e = 0; e < k; e++) {
        if (c->pos_g[ig[e]])
            return fail(c, "row %lld: GPU latent %d twice", (long long)r, ig[e]);
        c->pos_g[ig[e]] = e + 1;
        c->pos_c[ic[e]] = e + 1;
        same = same && ic[e] == ig[e];
    }
    bool ok = true;
    if (same) {
        for (int e = 0; ok && e < k; e++)
            ok = check_value(c, r, ig[e], vg[e], vc[e], scale);
    } else if (c->exact) {
        int e = 0;
        while (ic[e] == ig[e])
            e++;
        ok = fail(c, "row %lld: entry %d is latent %d on the GPU, %d on the CPU (exact data)",
                  (long long)r, e, ig[e], ic[e]);
    } else if (++c->exact_rows > MAX_EXACT_ROWS) {
        ok = fail(c, "more than %d rows differ from the CPU", MAX_EXACT_ROWS);
    } else {
        /* the whole row in double: scores, the k-th score band, and whether
         * every difference lies inside it */
        input_row(m, x, c->xt);
        const int ptopk = !strcmp(m->cfg.arch->name, "ptopk");
        row_stats rs = {0.0, ptopk ? 1.0 / (double)m->cfg.beta_final : 0.0,
                        m->cfg.lambda_mag, ptopk};
        double sum = 0.0;
        for (int i = 0; i < M; i++) {
            c->a[i] = dot_row(m, c->xt, i) + (double)m->b_enc[i];
            sum += c->a[i];
        }
        if (rs.ptopk && m->cfg.layernorm) {
            rs.mean = sum / M;
            double q = 0.0;
            for (int i = 0; i < M; i++)
                q += (c->a[i] - rs.mean) * (c->a[i] - rs.mean);
            rs.t_scale = 1.0 / sqrt(q / M + 1e-5) / (double)m->cfg.beta_final;
        }
        for (int i = 0; i < M; i++) {
            c->s[i] = score_of(&rs, c->a[i]);
            c->order[i] = i;
        }
        sort_scores = c->s;
        qsort(c->order, (size_t)M, sizeof *c->order, by_score_desc);
        const double delta = TIE_REL * scale;
        double lo, hi, band_lo = -INFINITY, band_hi;
        score_range(&rs, c->a[c->order[k - 1]], delta, &lo, &band_hi);
        if (k < M)
            score_range(&rs, c->a[c->order[k]], delta, &band_lo, &hi);
        for (int e = 0; ok && e < k; e++) {
            /* latents in one set only must sit in the band */
            const int both[2] = {ic[e], ig[e]};
            for (int w = 0; ok && w < 2; w++) {
                const int t = both[w];
                if (c->pos_c[t] && c->pos_g[t])
                    continue;
                score_range(&rs, c->a[t], delta, &lo, &hi);
                if (lo > band_hi || hi < band_lo)
                    ok = fail(c, "row %lld: latent %d only on the %s, score %.12g outside the "
                              "k-th band [%.12g, %.12g]", (long long)r, t,
                              w ? "GPU" : "CPU", c->s[t], band_lo, band_hi);
            }
            /* the GPU's order: each entry could rank above the next */
            if (ok && e + 1 < k) {
                double lo2, hi2;
                score_range(&rs, c->a[ig[e]], delta, &lo, &hi);
                score_range(&rs, c->a[ig[e + 1]], delta, &lo2, &hi2);
                if (hi < lo2)
                    ok = fail(c, "row %lld: GPU entries %d, %d (latents %d, %d) out of order",
                              (long long)r, e, e + 1, ig[e], ig[e + 1]);
            }
            /* values against the double reference */
            if (ok) {
                const double a = c->a[ig[e]];
                const double want = rs.ptopk ? a : (a > 0.0 ? a : 0.0);
                ok = check_value(c, r, ig[e], vg[e], want, scale);
            }
        }
    }
    for (int e = 0; e < k; e++)
        c->pos_g[ig[e]] = c->pos_c[ic[e]] = 0;
    return ok;
}

/* Structure of the GPU's codes (they started out poisoned). */
static bool check_structure(ctx *c, const sae_codes *gc, int64_t B)
{
    const sae_model *m = c->m;
    sae_error err;
    if (gc->n_rows != B)
        return fail(c, "GPU codes have %lld rows, want %lld", (long long)gc->n_rows, (long long)B);
    for (int64_t r = 0; r < B; r++) {
        const int64_t n = gc->indptr[r + 1] - gc->indptr[r];
        if (gc->indptr[r] < 0 || n < 0)
            return fail(c, "GPU indptr bad at row %lld", (long long)r);
        if (c->topk && (gc->indptr[r] != r * m->cfg.k || n != m->cfg.k))
            return fail(c, "GPU row %lld has %lld entries at %lld, want %d at %lld",
                        (long long)r, (long long)n, (long long)gc->indptr[r], m->cfg.k,
                        (long long)(r * m->cfg.k));
    }
    if (gc->indptr[B] > gc->cap_nnz)
        return fail(c, "GPU indptr[B] = %lld beyond the codes' capacity", (long long)gc->indptr[B]);
    if (sae_codes_validate(gc, m->cfg.d_sae, &err) != SAE_OK)
        return fail(c, "GPU codes: %s", err.msg);
    return true;
}

/* Codes with room for nnz entries, every byte poisoned. */
static int poison_codes(sae_codes *gc, int64_t B, int64_t nnz, sae_error *err)
{
    if (sae_codes_reserve(gc, B, nnz, err) != SAE_OK)
        return SAE_ERR;
    for (int64_t r = 0; r < gc->cap_rows; r++)
        gc->indptr[r] = -7;
    memset(gc->indices, 0xff, (size_t)gc->cap_nnz * sizeof *gc->indices);
    for (int64_t e = 0; e < gc->cap_nnz; e++)
        gc->values[e] = NAN;
    gc->n_rows = -1;
    return SAE_OK;
}

/* ---- one run: a model, a batch size -------------------------------------------- */
typedef struct totals {
    int passed, failed;
} totals;

static const char *arch_label(const sae_model *m)
{
    return m->cfg.arch->name;
}

static void run(sae_model *m, const variant *v, int64_t B, totals *t)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    ctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.exact = v->data == DATA_INT;
    c.topk = m->cfg.arch->activate == NULL;
    c.act = !strcmp(m->cfg.arch->name, "gated") ? 2 : m->threshold ? 1 : 0;
    for (int i = 0; i < M; i++) {
        double s = 0.0;
        for (int j = 0; j < d; j++)
            s += (double)m->W_enc_T[(size_t)i * d + j] * m->W_enc_T[(size_t)i * d + j];
        c.wmax = sqrt(s) > c.wmax ? sqrt(s) : c.wmax;
    }
    float *x = malloc((size_t)B * d * sizeof *x);
    float *xc = malloc((size_t)B * d * sizeof *xc), *xg = malloc((size_t)B * d * sizeof *xg);
    c.pos_c = calloc((size_t)M, sizeof *c.pos_c);
    c.pos_g = calloc((size_t)M, sizeof *c.pos_g);
    c.xt = malloc((size_t)d * sizeof *c.xt);
    c.a = malloc((size_t)M * sizeof *c.a);
    c.s = malloc((size_t)M * sizeof *c.s);
    c.order = malloc((size_t)M * sizeof *c.order);
    sae_codes cc, gc;
    sae_codes_init(&cc);
    sae_codes_init(&gc);
    sae_error err = {{0}};
    double dec_err = 0.0;
    bool ok = x && xc && xg && c.pos_c && c.pos_g && c.xt && c.a && c.s && c.order;
    if (!ok)
        fail(&c, "out of host memory");

    /* inputs: an offset so centring matters, a per-row scale so norms do;
     * exact data: small integers, and every third row zero */
    for (int64_t r = 0; ok && r < B; r++) {
        const double rs = 0.5 + 1.5 * rng_uniform();
        for (int j = 0; j < d; j++)
            x[r * d + j] = c.exact ? (r % 3 == 2 ? 0.0f : (float)rng_int(-2, 2))
                                   : (float)(rs * (0.3 + rng_normal()));
    }
    if (ok && sae_backend_cpu.encode(m, x, B, &cc, &err) != SAE_OK)
        ok = fail(&c, "CPU encode: %s", err.msg);
    if (ok && poison_codes(&gc, B, cc.indptr[B] + 64, &err) != SAE_OK)
        ok = fail(&c, "%s", err.msg);
    if (ok && sae_encode(m, x, B, &gc, &err) != SAE_OK)
        ok = fail(&c, "GPU encode: %s", err.msg);
    ok = ok && check_structure(&c, &gc, B);
    for (int64_t r = 0; ok && r < B; r++) {
        input_row(m, x + r * d, c.xt);
        double n2 = 0.0;
        for (int j = 0; j < d; j++)
            n2 += (double)c.xt[j] * c.xt[j];
        const double scale = sqrt(n2) * c.wmax;
        ok = c.topk ? compare_topk_row(&c, r, x + r * d, &cc, &gc, scale)
                    : compare_elementwise_row(&c, r, x + r * d, &cc, &gc, scale);
    }
    /* decode the CPU's codes on both */
    if (ok) {
        for (int64_t i = 0; i < B * d; i++)
            xg[i] = NAN;
        if (sae_backend_cpu.decode(m, &cc, xc, &err) != SAE_OK)
            ok = fail(&c, "CPU decode: %s", err.msg);
        else if (sae_decode(m, &cc, xg, &err) != SAE_OK)
            ok = fail(&c, "GPU decode: %s", err.msg);
    }
    for (int64_t r = 0; ok && r < B; r++) {
        double big = 0.0, worst = 0.0;
        for (int j = 0; j < d; j++) {
            big = fabs(xc[r * d + j]) > big ? fabs(xc[r * d + j]) : big;
            double e = fabs((double)xg[r * d + j] - xc[r * d + j]);
            worst = e > worst || e != e ? e : worst;
        }
        if (!(worst <= DEC_REL * big))
            ok = fail(&c, "decode row %lld: max |gpu - cpu| = %.3g, max |cpu| = %.3g",
                      (long long)r, worst, big);
        if (big > 0.0 && worst / big > dec_err)
            dec_err = worst / big;
    }

    char label[160];
    snprintf(label, sizeof label, "%-9s d=%-4d M=%-6d k=%-4d B=%-5lld norm=%-16s bdec=%d%s",
             arch_label(m), d, M, m->cfg.k, (long long)B, sae_norm_name(m->cfg.normalize),
             m->cfg.apply_b_dec_to_input,
             !strcmp(m->cfg.arch->name, "ptopk")
                 ? (m->cfg.layernorm ? " ln" : " noln") : "");
    if (!strcmp(m->cfg.arch->name, "ptopk")) {
        char extra[64];
        snprintf(extra, sizeof extra, " beta=%g lambda=%g", m->cfg.beta_final, m->cfg.lambda_mag);
        strncat(label, extra, sizeof label - strlen(label) - 1);
    }
    if (ok) {
        printf("ok    %s%s | near-tie rows %d, value err %.2f of tol, decode err %.1e\n", label,
               c.exact ? " exact" : "", c.exact_rows, c.max_val_err, dec_err);
        t->passed++;
    } else {
        printf("FAIL  %s%s | %s\n", label, c.exact ? " exact" : "", c.why);
        t->failed++;
    }
    fflush(stdout);
    sae_codes_free(&cc);
    sae_codes_free(&gc);
    free(x);
    free(xc);
    free(xg);
    free(c.pos_c);
    free(c.pos_g);
    free(c.xt);
    free(c.a);
    free(c.s);
    free(c.order);
}

static const char *only_arch;   /* --arch NAME */

/* A model for (variant, shape), attached to the GPU, run over the batch sizes
 * in the order given (growing and shrinking the backend's buffers). */
static void run_model(const variant *v, const shape *s, const int64_t *Bs, int nB, totals *t)
{
    sae_error err;
    if (only_arch && strcmp(only_arch, v->arch) != 0)
        return;
    sae_model *m = model_new(v, s);
    if (!m) {
        printf("FAIL  %s d=%d M=%d: cannot build the model\n", v->arch, s->d, s->M);
        t->failed++;
        return;
    }
    if (attach_cuda(m, &err) != SAE_OK) {
        printf("FAIL  %s d=%d M=%d k=%d: attach: %s\n", v->arch, s->d, s->M, s->k, err.msg);
        t->failed++;
        model_free(m);
        return;
    }
    for (int i = 0; i < nB; i++)
        run(m, v, Bs[i], t);
    model_free(m);
}

static bool is_topk(const variant *v)
{
    return sae_arch_find(v->arch)->uses_k && strcmp(v->arch, "batchtopk") != 0;
}

int main(int argc, char **argv)
{
    bool small = false, tiny = false, allow_skip = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small"))
            small = true;
        else if (!strcmp(argv[i], "--tiny"))
            tiny = true;
        else if (!strcmp(argv[i], "--allow-no-gpu"))
            allow_skip = true;
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            only_arch = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--small | --tiny] [--allow-no-gpu] [--arch NAME]\n",
                    argv[0]);
            return 2;
        }
    }
    char desc[256];
    if (sae_cuda_probe(0, desc, sizeof desc) != SAE_OK) {
        printf("no usable GPU: %s\n", desc);
        return allow_skip ? 77 : 1;
    }
    printf("device: %s\n", desc);
    rng = 0x5ae5ae5aull;
    totals t = {0, 0};

    if (tiny) {
        /* one elementwise arch of each kernel, both top-k kernels through the
         * fast path, the slow path (~M/2 exact ties) and k > threads */
        const shape odd = {8, 301, 5}, mid = {16, 1000, 7}, slow = {8, 4500, 32};
        const shape wide = {12, 1000, 600};
        const int64_t Bs[] = {1, 5};
        const int rv[] = {0, 1, 2, 4, 6};
        for (int i = 0; i < N_OF(rv); i++) {
            run_model(&random_variants[rv[i]], &odd, Bs, N_OF(Bs), &t);
            run_model(&random_variants[rv[i]], &mid, Bs + 1, 1, &t);
        }
        run_model(&random_variants[6], &wide, Bs + 1, 1, &t);
        run_model(&exact_variants[0], &slow, Bs + 1, 1, &t);
        run_model(&exact_variants[1], &slow, Bs + 1, 1, &t);
    } else if (small) {
        /* emulated build and compute-sanitizer: every path, small sizes.
         * M % 4 != 0 takes the scalar loads; 4500 with ~M/2 tied scores
         * overflows the candidate buffer (the radix slow path); k = 600 has
         * no bound (k > threads); k = M keeps everything */
        const shape shapes[] = {{8, 301, 5}, {16, 1000, 7}, {12, 1000, 600}, {5, 40, 40}};
        const shape slow = {8, 4500, 32};
        const int64_t Bs[] = {1, 5, 3};
        for (int v = 0; v < N_OF(random_variants); v++)
            for (int s = 0; s < N_OF(shapes); s++)
                if (s < 2 || is_topk(&random_variants[v]))
                    run_model(&random_variants[v], &shapes[s], Bs, N_OF(Bs), &t);
        for (int v = 0; v < N_OF(exact_variants); v++) {
            run_model(&exact_variants[v], &shapes[1], Bs, 2, &t);
            if (is_topk(&exact_variants[v]))
                run_model(&exact_variants[v], &slow, Bs, 2, &t);
        }
    } else {
        const shape big = {768, 24576, 32};
        const shape odd[] = {{33, 1000, 7}, {17, 301, 5}};
        const shape wide_k[] = {{64, 2048, 256}, {24, 1000, 600}, {40, 5000, 1024}};
        const int64_t big_Bs[] = {7, 1000, 1, 64}, small_Bs[] = {1, 7, 64}, k_Bs[] = {7, 64};
        for (int v = 0; v < N_OF(random_variants); v++) {
            run_model(&random_variants[v], &big, big_Bs, N_OF(big_Bs), &t);
            for (int s = 0; s < N_OF(odd); s++)
                run_model(&random_variants[v], &odd[s], small_Bs, N_OF(small_Bs), &t);
            if (is_topk(&random_variants[v]))
                for (int s = 0; s < N_OF(wide_k); s++)
                    run_model(&random_variants[v], &wide_k[s], k_Bs, N_OF(k_Bs), &t);
        }
        for (int v = 0; v < N_OF(exact_variants); v++) {
            run_model(&exact_variants[v], &odd[0], k_Bs, N_OF(k_Bs), &t);
            run_model(&exact_variants[v], &big, k_Bs, N_OF(k_Bs), &t);
        }
        /* several encode passes (PASS_ROWS = 1024): the double-buffered input */
        const shape mid = {256, 8192, 16};
        const int64_t many[] = {2500};
        const int multi[] = {0, 4, 6};
        for (int i = 0; i < N_OF(multi); i++)
            run_model(&random_variants[multi[i]], &mid, many, 1, &t);
    }
    printf("%d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
