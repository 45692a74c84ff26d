/* test_select_gpu.c - ptopk's selection in training on the GPU (kernels/topk.cu,
 * SAE_K_SEL_PTOPK_TRAIN) against every latent's exact score in double.
 *
 * The reference is written from the definition (DESIGN.md section 3), not from
 * either implementation: a = z + b_enc (a float add), layernorm statistics in
 * double, g = log u - log(1 - u) with u from the Philox word of (seed, row,
 * step) for the latent (sae_philox_fill, as the CPU draws it), score =
 * sigmoid(((a - mean) rstd + g) / beta) + lambda |a|, the k largest by (score
 * desc, index asc). The kernel prunes with fast keys and bounds and scores
 * only its candidates exactly; a bound or margin that is too tight drops a
 * latent of the top k, and that shows here.
 *
 * Rows: normal pre-activations, wide ones (|a| up to 30, so lambda |a|
 * matters), and rows of z = -b_enc (every a is 0: without noise every score
 * ties and the slow path runs). Each at beta 5 (no gate saturated), 0.05 and 1e-4
 * (half the gates saturated), lambda 1e-4, 1e-2 and 0, with and without
 * layernorm and noise. Checks per row: the chosen latents are the reference's
 * top k in its order, allowing swaps only between scores within 1e-12 (the
 * statistics' sums run in another order); the values are a.
 *
 * Prints one line per failing row and `N passed, N failed`.
 *   --small         M 2048 and few rows (the emulated build in CI)
 *   --allow-no-gpu  exit 77 (skip) instead of 1 when no GPU is usable */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "kernels.h"
#include "test_random.h"
#include "rng.h"

int sae_cuda_probe(int device, char *desc, size_t n);

#define SEED 0x5eed5ull
#define STEP 7u
#define TIE_REL 1e-12

static int passed, failed;

static uint64_t rng = 0x5e1ec7ull;

static double normal(void)
{
    return sqrt(-2.0 * log(test_uniform(&rng))) * cos(6.283185307179586 * test_uniform(&rng));
}

typedef struct sel_case {
    double beta, lambda;
    bool layernorm, noise;
} sel_case;

/* Every latent's exact score for row `row` of the batch. */
static void reference_scores(const float *z, const float *b, int M, const sel_case *c,
                             uint32_t row, uint32_t *bits, double *score)
{
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < M; i++) {
        const double a = (double)(z[i] + b[i]);
        sum += a;
        sq += a * a;
    }
    double mean = 0.0, rstd = 1.0;
    if (c->layernorm) {
        mean = sum / M;
        const double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    sae_philox_fill(SEED, row, STEP, bits, M);
    for (int i = 0; i < M; i++) {
        const float af = z[i] + b[i];
        const double a = (double)af;
        double g = 0.0;
        if (c->noise) {
            const double u = (double)(((float)(bits[i] >> 8) + 0.5f) * 0x1p-24f);
            g = log(u) - log(1.0 - u);
        }
        score[i] = 1.0 / (1.0 + exp(-((a - mean) * rstd + g) / c->beta)) + c->lambda * fabs(a);
    }
}

static const double *sort_score;

static int by_score(const void *pa, const void *pb)
{
    const int a = *(const int *)pa, b = *(const int *)pb;
    if (sort_score[a] != sort_score[b])
        return sort_score[a] > sort_score[b] ? -1 : 1;
    return a < b ? -1 : 1;
}

static bool near(double x, double y)
{
    return fabs(x - y) <= TIE_REL * (fabs(x) > 1.0 ? fabs(x) : 1.0);
}

/* One row: the GPU's k (idx, val) against the reference. */
static bool check_row(const float *z, const float *b, int M, int k, const double *score,
                      int *order, const int32_t *idx, const float *val, char *why, size_t n)
{
    for (int i = 0; i < M; i++)
        order[i] = i;
    sort_score = score;
    qsort(order, (size_t)M, sizeof *order, by_score);
    for (int e = 0; e < k; e++) {
        const int i = idx[e];
        if (i < 0 || i >= M) {
            snprintf(why, n, "entry %d: index %d out of range", e, i);
            return false;
        }
        if (i != order[e] && !near(score[i], score[order[e]])) {
            snprintf(why, n, "entry %d: latent %d (score %.17g) where the reference has %d (%.17g)",
                     e, i, score[i], order[e], score[order[e]]);
            return false;
        }
        if (val[e] != z[i] + b[i]) {
            snprintf(why, n, "entry %d: value %.9g, want a = %.9g", e, val[e], z[i] + b[i]);
            return false;
        }
        for (int f = 0; f < e; f++)
            if (idx[f] == i) {
                snprintf(why, n, "latent %d chosen twice", i);
                return false;
            }
    }
    return true;
}

enum { ROW_NORMAL, ROW_WIDE, ROW_ZERO, ROW_KINDS };

/* ROW_ZERO: z = -b_enc, so every a is 0 */
static void fill_row(int kind, const float *b, float *z, int M)
{
    for (int i = 0; i < M; i++)
        z[i] = kind == ROW_ZERO ? -b[i] : (float)(normal() * (kind == ROW_WIDE ? 10.0 : 1.0));
}

#define CK(call)                                                                               \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            printf("FAIL %s: %s\n", #call, cudaGetErrorString(e_));                           \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static void run_shape(int M, int k, int B)
{
    const size_t zn = (size_t)B * M;
    float *z = malloc(zn * sizeof *z), *b = malloc((size_t)M * sizeof *b),
          *val = malloc((size_t)B * k * sizeof *val);
    int32_t *idx = malloc((size_t)B * k * sizeof *idx);
    double *score = malloc((size_t)M * sizeof *score);
    uint32_t *bits = malloc((size_t)M * sizeof *bits);
    int *order = malloc((size_t)M * sizeof *order);
    float *dz, *db, *dval;
    int32_t *didx;
    CK(cudaMalloc((void **)&dz, zn * sizeof *dz));
    CK(cudaMalloc((void **)&db, (size_t)M * sizeof *db));
    CK(cudaMalloc((void **)&dval, (size_t)B * k * sizeof *dval));
    CK(cudaMalloc((void **)&didx, (size_t)B * k * sizeof *didx));
    for (int i = 0; i < M; i++)
        b[i] = (float)(0.5 * normal());
    CK(cudaMemcpy(db, b, (size_t)M * sizeof *b, cudaMemcpyHostToDevice));

    const double betas[] = {5.0, 0.05, 1e-4}, lambdas[] = {1e-4, 1e-2, 0.0};
    for (int bi = 0; bi < 3; bi++)
        for (int li = 0; li < 3; li++)
            for (int variant = 0; variant < 4; variant++) {
                const sel_case c = {betas[bi], lambdas[li], variant & 1, (variant & 2) == 0};
                for (int r = 0; r < B; r++)
                    fill_row(r % ROW_KINDS, b, z + (size_t)r * M, M);
                CK(cudaMemcpy(dz, z, zn * sizeof *z, cudaMemcpyHostToDevice));
                const int64_t row0 = 1000 * (bi * 12 + li * 4 + variant);
                const sae_k_sel sel = {.kind = SAE_K_SEL_PTOPK_TRAIN, .b_enc = db,
                                       .layernorm = c.layernorm, .beta = c.beta,
                                       .lambda = c.lambda, .noise = c.noise, .seed = SEED,
                                       .step = STEP, .row0 = row0};
                CK((cudaError_t)sae_k_topk(dz, B, M, k, &sel, didx, dval, NULL));
                CK(cudaMemcpy(idx, didx, (size_t)B * k * sizeof *idx, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(val, dval, (size_t)B * k * sizeof *val, cudaMemcpyDeviceToHost));
                for (int r = 0; r < B; r++) {
                    const float *zr = z + (size_t)r * M;
                    reference_scores(zr, b, M, &c, (uint32_t)(row0 + r), bits, score);
                    char why[256];
                    if (check_row(zr, b, M, k, score, order, idx + (size_t)r * k,
                                  val + (size_t)r * k, why, sizeof why)) {
                        passed++;
                    } else {
                        failed++;
                        printf("FAIL M %d k %d beta %g lambda %g layernorm %d noise %d row %d "
                               "(kind %d): %s\n", M, k, c.beta, c.lambda, c.layernorm, c.noise, r,
                               r % ROW_KINDS, why);
                    }
                }
            }
    CK(cudaFree(dz));
    CK(cudaFree(db));
    CK(cudaFree(dval));
    CK(cudaFree(didx));
    free(z);
    free(b);
    free(val);
    free(idx);
    free(score);
    free(bits);
    free(order);
}

int main(int argc, char **argv)
{
    bool small = false, allow_skip = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small"))
            small = true;
        else if (!strcmp(argv[i], "--allow-no-gpu"))
            allow_skip = true;
        else {
            fprintf(stderr, "usage: %s [--small] [--allow-no-gpu]\n", argv[0]);
            return 2;
        }
    }
    char desc[256];
    if (sae_cuda_probe(0, desc, sizeof desc) != 0) {
        printf("no usable GPU: %s\n", desc);
        return allow_skip ? 77 : 1;
    }
    printf("device: %s\n", desc);
    if (small) {
        run_shape(2048, 32, 3);
        run_shape(301, 5, 3);
    } else {
        run_shape(12288, 32, 48);
        run_shape(24576, 32, 24);
        run_shape(4096, 300, 12);
        run_shape(301, 5, 12);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
