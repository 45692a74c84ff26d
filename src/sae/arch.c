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
static void topk_select(const sae_model *m, const float *z, topk_heap *h)
{
    for (int i = 0; i < m->cfg.d_sae; i++)
        topk_heap_offer(h, (double)(z[i] + m->b_enc[i]), i);
}

static float topk_value(const sae_model *m, const float *z, int i)
{
    float v = z[i] + m->b_enc[i];
    return v > 0.0f ? v : 0.0f;
}

/* ptopk at inference: a = z + b_enc; l = LN(a) over the row (or a without
 * layernorm); s = sigmoid(l / beta_final) + lambda_mag |a|; the value is a.
 *
 * s is computed in double, so saturated gates still rank by |a|. Most latents
 * never need the exp: with t = l / beta, a latent with t >= 40 has a gate of
 * exactly 1.0 in double, and one whose gate cannot lift it over the heap's
 * floor (t <= logit(floor - lambda max|a|)) is skipped. */
static void ptopk_select(const sae_model *m, const float *z, topk_heap *h)
{
    const int M = m->cfg.d_sae;
    const double lambda = m->cfg.lambda_mag;
    double sum = 0.0, sq = 0.0, amax = 0.0;
    for (int i = 0; i < M; i++) {
        double a = (double)(z[i] + m->b_enc[i]);
        sum += a;
        sq += a * a;
        amax = fmax(amax, fabs(a));
    }
    double mean = 0.0, rstd = 1.0;
    if (m->cfg.layernorm) {
        mean = sum / M;
        double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    const double t_scale = rstd / m->cfg.beta_final;
    double floor_seen = NAN, t_skip = -INFINITY;
    for (int i = 0; i < M; i++) {
        double a = (double)(z[i] + m->b_enc[i]);
        double t = (a - mean) * t_scale;
        double s;
        if (t >= 40.0) {
            s = 1.0 + lambda * fabs(a);
        } else {
            double floor = topk_heap_floor(h);
            if (floor != floor_seen) {  /* the floor moved: a new skip bound */
                floor_seen = floor;
                double q = floor - lambda * amax;
                t_skip = q <= 0.0 ? -INFINITY : q >= 1.0 ? INFINITY : log(q / (1.0 - q));
                t_skip -= 1e-9 * (1.0 + fabs(t_skip));   /* margin for rounding */
            }
            if (t <= t_skip)
                continue;
            s = 1.0 / (1.0 + exp(-t)) + lambda * fabs(a);
        }
        topk_heap_offer(h, s, i);
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
