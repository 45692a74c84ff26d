/* arch.c - the table of architectures (DESIGN.md section 3). Each row's
 * functions take one row of z = x~ W_enc without bias. */
#include <math.h>
#include <string.h>

#include "arch.h"

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
static void topk_score(const sae_model *m, const float *z, double *score)
{
    for (int i = 0; i < m->cfg.d_sae; i++)
        score[i] = (double)(z[i] + m->b_enc[i]);
}

static float topk_value(const sae_model *m, const float *z, int i)
{
    float v = z[i] + m->b_enc[i];
    return v > 0.0f ? v : 0.0f;
}

/* ptopk at inference: a = z + b_enc; l = LN(a) over the row (or a without
 * layernorm); s = sigmoid(l / beta_final) + lambda_mag |a|; the value is a.
 * Computed in double so saturated gates still rank by |a|. */
static void ptopk_score(const sae_model *m, const float *z, double *score)
{
    const int M = m->cfg.d_sae;
    double mean = 0.0, rstd = 1.0;
    if (m->cfg.layernorm) {
        double sum = 0.0, sq = 0.0;
        for (int i = 0; i < M; i++) {
            double a = (double)(z[i] + m->b_enc[i]);
            sum += a;
            sq += a * a;
        }
        mean = sum / M;
        double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    const double inv_beta = 1.0 / m->cfg.beta_final, lambda = m->cfg.lambda_mag;
    for (int i = 0; i < M; i++) {
        double a = (double)(z[i] + m->b_enc[i]);
        double gate = 1.0 / (1.0 + exp(-(a - mean) * rstd * inv_beta));
        score[i] = gate + lambda * fabs(a);
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
    {"topk", NULL, SAE_P_B_ENC, true, NULL, topk_score, topk_value},
    {"batchtopk", NULL, SAE_P_B_ENC | SAE_P_THRESHOLD, true, jumprelu_activate, NULL, NULL},
    {"ptopk", NULL, SAE_P_B_ENC, true, NULL, ptopk_score, ptopk_value},
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
