/* test_ptopk_train - ptopk's selection in a training step (train.c: the fast
 * keys, the chunk bounds and every skip) against the definition: each
 * latent's exact score in double, s = sigmoid((l + g) / beta) + lambda |a|
 * with the step's Philox noise g (DESIGN.md section 3), and the k best.
 *
 * Rows of 4096 latents with k 32 (128 chunks, so the chunk bounds, the k-th
 * largest and the skips are at work), beta 5 (soft gates), 0.05 and 1e-4
 * (saturated gates: the late bounds), lambda 1e-4 and 1e-2, layernorm on and
 * off, noise and the sigmoid-gate ablation. The encoder GEMM is made exact
 * (weights and inputs on a coarse dyadic grid, no b_dec subtraction), so the
 * reference sees the trainer's a to the bit; what is left is the layernorm's
 * summation order, hence a 1e-12 relative slack where scores are compared. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "check.h"
#include "rng.h"
#include "sae.h"
#include "train_impl.h"

enum { D = 64, M = 4096, K = 32, B = 64 };
static const uint64_t SEED = 0x5eed0123456789abULL;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t next_u32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

typedef struct pcase {
    const char *label;
    float beta, lambda;
    bool no_layernorm, sigmoid_gate;
} pcase;

/* Exact scores of row b, from a_i = z_i + b_enc_i (float, as the trainer). */
static void exact_scores(const pcase *c, const sae_model *m, const float *x, int b, double *s)
{
    double *a = malloc(M * sizeof *a), sum = 0.0, sq = 0.0;
    for (int i = 0; i < M; i++) {
        double z = 0.0; /* exact: every product and partial sum is on the 2^-7 grid */
        for (int j = 0; j < D; j++)
            z += (double)x[(size_t)b * D + j] * m->W_enc_T[(size_t)i * D + j];
        a[i] = (double)((float)z + m->b_enc[i]);
        sum += a[i];
        sq += a[i] * a[i];
    }
    double mean = 0.0, rstd = 1.0;
    if (!c->no_layernorm) {
        mean = sum / M;
        const double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    for (int i = 0; i < M; i++) {
        double g = 0.0;
        if (!c->sigmoid_gate) {
            const uint32_t r = sae_philox(SEED, (uint32_t)(i / 4), (uint32_t)b, 0).v[i % 4];
            const double u = ((float)(r >> 8) + 0.5f) * 0x1p-24f;
            g = log(u) - log(1.0 - u);
        }
        s[i] = 1.0 / (1.0 + exp(-((a[i] - mean) * rstd + g) / c->beta)) + c->lambda * fabs(a[i]);
    }
    free(a);
}

static void check_case(const pcase *c)
{
    sae_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.d_in = D;
    cfg.d_sae = M;
    cfg.arch = sae_arch_find("ptopk");
    cfg.k = K;
    cfg.normalize = SAE_NORM_NONE;
    cfg.norm_scale = 1.0f;
    cfg.beta_final = c->beta;
    snprintf(cfg.dtype, sizeof cfg.dtype, "float32");
    sae_model *src = NULL;
    sae_error err;
    CHECK(sae_alloc(&cfg, &src, &err) == SAE_OK);
    if (!src)
        return;
    for (size_t p = 0; p < (size_t)M * D; p++) {
        src->W_enc_T[p] = (float)((int)(next_u32() % 5) - 2) * 0.125f;
        src->W_dec[p] = (float)((int)(next_u32() % 5) - 2) * 0.125f;
    }
    for (int i = 0; i < M; i++) /* any floats: added to z in float by both */
        src->b_enc[i] = (float)(next_u32() >> 8) * 0x1p-24f - 0.5f;
    float *x = malloc((size_t)B * D * sizeof *x);
    for (int p = 0; p < B * D; p++)
        x[p] = (float)((int)(next_u32() % 9) - 4) * 0.0625f;

    train_options o;
    train_options_default(&o);
    o.arch = "ptopk";
    o.d_sae = M;
    o.k = K;
    o.batch = B;
    o.steps = 10;
    o.seed = SEED;
    o.beta0 = o.beta_end = c->beta;
    o.lambda_mag = c->lambda;
    o.no_magnitude = c->lambda == 0.0f;
    o.no_layernorm = c->no_layernorm;
    o.sigmoid_gate = c->sigmoid_gate;
    o.normalize = SAE_NORM_NONE;
    o.apply_b_dec_to_input = false;
    trainer *t = NULL;
    step_stats st;
    CHECK(trainer_from_model(&o, src, &t, &err) == SAE_OK);
    if (t && trainer_loss_and_grads(t, x, &st, &err) != SAE_OK) {
        printf("%s: %s\n", c->label, err.msg);
        CHECK(0);
    }
    int wrong = 0;
    double *s = malloc(M * sizeof *s);
    bool *chosen = malloc(M);
    for (int b = 0; t && b < B; b++) {
        exact_scores(c, src, x, b, s);
        memset(chosen, 0, M);
        double worst_in = INFINITY, best_out = -INFINITY;
        for (int64_t e = t->main.rowptr[b]; e < t->main.rowptr[b + 1]; e++) {
            const int i = t->main.idx[e];
            wrong += i < 0 || i >= M || chosen[i];
            if (i < 0 || i >= M)
                continue;
            chosen[i] = true;
            worst_in = s[i] < worst_in ? s[i] : worst_in;
        }
        wrong += t->main.rowptr[b + 1] - t->main.rowptr[b] != K;
        for (int i = 0; i < M; i++)
            if (!chosen[i])
                best_out = s[i] > best_out ? s[i] : best_out;
        if (best_out > worst_in * (1.0 + 1e-12) + 1e-300) {
            if (wrong++ < 3)
                printf("%s row %d: a latent left out scores %.17g, above the chosen %.17g\n",
                       c->label, b, best_out, worst_in);
        }
    }
    if (wrong)
        printf("%s: %d wrong\n", c->label, wrong);
    CHECK(wrong == 0);
    free(chosen);
    free(s);
    free(x);
    trainer_free(t);
    sae_free(src);
}

int main(void)
{
    const pcase cases[] = {
        {"beta 5", 5.0f, 1e-4f, false, false},
        {"beta 5, lambda 1e-2", 5.0f, 1e-2f, false, false},
        {"beta 0.05", 0.05f, 1e-4f, false, false},
        {"beta 1e-4", 1e-4f, 1e-4f, false, false},
        {"beta 1e-4, lambda 1e-2", 1e-4f, 1e-2f, false, false},
        {"beta 1e-4, no magnitude", 1e-4f, 0.0f, false, false},
        {"beta 1e-4, no layernorm", 1e-4f, 1e-4f, true, false},
        {"beta 0.05, sigmoid gate", 0.05f, 1e-4f, false, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        check_case(&cases[c]);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all ptopk training selection checks passed\n");
    return 0;
}
