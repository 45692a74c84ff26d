/* arch.c - the table of architectures (DESIGN.md section 3). Each row's
 * functions take one row of z = x~ W_enc without bias. */
#include <math.h>
#include <string.h>

#include "arch.h"
#include "vec.h"

/* relu ("standard"): f = ReLU(z + b_enc) */
static void relu_activate(const sae_model *m, float *z)
{
    for (int i = 0; i < m->cfg.d_sae; i++) {
        float v = z[i] + m->b_enc[i];
        z[i] = v > 0.0f ? v : 0.0f;
    }
}

/* jumprelu and batchtopk at inference: f = z * 1[z > theta], z with b_enc */
static void jumprelu_activate(const sae_model *m, float *z)
{
    for (int i = 0; i < m->cfg.d_sae; i++) {
        float v = z[i] + m->b_enc[i];
        z[i] = v > m->threshold[i] ? v : 0.0f;
    }
}

/* gated: pi_gate = z + b_gate; pi_mag = z * exp(r_mag) + b_mag (scaling the
 * columns of W_enc scales z, so one GEMM serves both paths) */
static void gated_activate(const sae_model *m, float *z)
{
    for (int i = 0; i < m->cfg.d_sae; i++) {
        float mag = z[i] * m->r_mag_exp[i] + m->b_mag[i];
        z[i] = (z[i] + m->b_gate[i] > 0.0f && mag > 0.0f) ? mag : 0.0f;
    }
}

/* topk: rank by z + b_enc; the value is ReLU of it */
static void topk_select(const sae_model *m, const float *z, topk_heap *h)
{
    topk_heap_offer_row(h, z, m->b_enc, m->cfg.d_sae, h->scratch);
}

static float topk_value(const sae_model *m, const float *z, int i)
{
    float v = z[i] + m->b_enc[i];
    return v > 0.0f ? v : 0.0f;
}

/* ptopk at inference: a = z + b_enc; l = LN(a) over the row (or a without
 * layernorm); s = sigmoid(l / beta_final) + lambda_mag |a|; the value is a.
 *
 * s is exact in double, so saturated gates still rank by |a|. A vectorised
 * pass bounds every latent's score (vec_ptopk_bound): most are saturated
 * (exact without an exp) or bounded below the heap's floor, mostly a whole
 * chunk at a time; only the few others need the exp. */
static void ptopk_select(const sae_model *m, const float *z, topk_heap *h)
{
    const int M = m->cfg.d_sae;
    const double lambda = m->cfg.lambda_mag;
    double mean = 0.0, rstd = 1.0;
    if (m->cfg.layernorm) {
        double sum, sq, absmax;
        vec_sum_sq(z, m->b_enc, M, &sum, &sq, &absmax);
        mean = sum / M;
        double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    const double scale = rstd / m->cfg.beta_final;
    const int chunk = select_chunk(M, h->k), chunks = (M + chunk - 1) / chunk;
    double *ub = h->scratch, *chunk_max = ub + M, *chunk_lb = chunk_max + chunks;
    vec_ptopk_bound(z, m->b_enc, M, chunk, mean, scale, lambda, ub, chunk_max, chunk_lb);
    /* t: at most the row's k-th best score (k chunks each hold a latent
     * scoring at least their lower bound), lowered past the bounds' rounding.
     * Below it nothing can enter: it stands in for the heap's floor until
     * the floor passes it. */
    double t = -INFINITY;
    if (chunks >= h->k) {
        t = topk_kth_largest(chunk_lb, chunks, h->k);
        t -= 1e-12 * (1.0 + fabs(t));
    }
    for (int c = 0, lo = 0; lo < M; c++, lo += chunk) {
        double floor = topk_heap_floor(h);
        floor = floor > t ? floor : t;
        if (!(chunk_max[c] > floor))
            continue;           /* nothing in this chunk can enter */
        int hi = lo + chunk < M ? lo + chunk : M;
        for (int i = lo; i < hi; i++) {
            double s = fabs(ub[i]);
            if (!(s > topk_heap_floor(h)) || s < t)
                continue;
            if (ub[i] < 0.0) {  /* a bound only: the exact score */
                double a = (double)(z[i] + m->b_enc[i]);
                s = 1.0 / (1.0 + exp(-(a - mean) * scale)) + lambda * fabs(a);
            }
            topk_heap_offer(h, s, i);
        }
    }
}

static float ptopk_value(const sae_model *m, const float *z, int i)
{
    return z[i] + m->b_enc[i];
}

static const sae_arch arches[] = {
    {"standard", "relu", SAE_P_B_ENC, false, relu_activate, NULL, NULL},
    {"gated", NULL, SAE_P_GATED, false, gated_activate, NULL, NULL},
    {"jumprelu", NULL, SAE_P_B_ENC | SAE_P_THRESHOLD, false, jumprelu_activate, NULL, NULL},
    {"topk", NULL, SAE_P_B_ENC, true, NULL, topk_select, topk_value},
    {"batchtopk", NULL, SAE_P_B_ENC | SAE_P_THRESHOLD, true, jumprelu_activate, NULL, NULL},
    {"ptopk", NULL, SAE_P_B_ENC, true, NULL, ptopk_select, ptopk_value},
};

const sae_arch *sae_arch_find(const char *name)
{
    for (size_t i = 0; i < sizeof arches / sizeof arches[0]; i++)
        if (!strcmp(name, arches[i].name) || (arches[i].alias && !strcmp(name, arches[i].alias)))
            return &arches[i];
    return NULL;
}

const char *sae_arch_names(void)
{
    return "standard (relu), gated, jumprelu, topk, batchtopk, ptopk";
}
