/* gpu_train.c - a GPU training step against its floor, the encoder GEMM
 * alone (and, through tests/gpu/run.sh, against bench/gpu_train_torch.py).
 *
 * d_in 768, d_sae 12288 and 24576, k 32, batch 8192, for topk and ptopk (the
 * headline model; noise on, layernorm, lambda_mag 1e-4). Times, each the
 * median of many steps after warm-ups:
 *   gemm      cublasSgemm z = x~ W_enc [B, M] alone, device-resident (cudaEvent)
 *   step      trainer_step with the batch already on the GPU (x NULL): the
 *             whole step, forward, backward and Adam, host syncs included
 *             (wall clock): what "within 1.5x of the GEMM" is about
 *   step_h2d  trainer_step with the batch copied from host memory, as
 *             saectl train runs it (from trainer_batch_buffer's page-locked
 *             memory; the copy is not overlapped with compute yet)
 * and tokens/s = B / step. One RESULT line per case (key=value), then a
 * table. ptopk is timed twice: early (beta 5, as in warm-up) and late (beta
 * at its end value, 1e-4, where gates saturate).
 *   --quick   fewer steps
 *   --d-sae M only that width
 *   --arch A  only that case (topk, ptopk or ptopk_late)
 *   --phases  also log where each step's time goes (SAED_TRAIN_PHASES) */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "cuda_util.h"  /* sae_cuda_probe */
#include "train.h"

#define D_IN 768
#define K 32
#define BATCH 8192

static uint64_t rng = 0x7a1ca11;


/* The encoder GEMM of one step alone: z [B, M] = x [B, d] W_enc_T^T. */
static double gemm_ms(int M, int reps)
{
    float *x = NULL, *w = NULL, *z = NULL;
    cublasHandle_t h = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double t = -1.0, v[64];
    const float one = 1.0f, zero = 0.0f;
    if (cudaMalloc((void **)&x, (size_t)BATCH * D_IN * 4) != cudaSuccess ||
        cudaMalloc((void **)&w, (size_t)M * D_IN * 4) != cudaSuccess ||
        cudaMalloc((void **)&z, (size_t)BATCH * M * 4) != cudaSuccess ||
        cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cudaEventCreate(&e0) != cudaSuccess ||
        cudaEventCreate(&e1) != cudaSuccess)
        goto out;
    /* not zeros: random-looking bits, as the step sees */
    cudaMemset(x, 0x3c, (size_t)BATCH * D_IN * 4);
    cudaMemset(w, 0x3b, (size_t)M * D_IN * 4);
    for (int r = -3; r < reps; r++) {
        cudaEventRecord(e0, 0);
        cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, M, BATCH, D_IN, &one, w, D_IN, x, D_IN, &zero,
                    z, M);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (r >= 0)
            v[r] = ms;
    }
    if (cudaGetLastError() == cudaSuccess)
        t = bench_median(v, reps);
out:
    cudaFree(x);
    cudaFree(w);
    cudaFree(z);
    if (h)
        cublasDestroy(h);
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    return t;
}

typedef struct timing {
    double step_ms, step_h2d_ms;
} timing;

/* Median step times of a trainer for arch at width M; late: start near the
 * end of the temperature schedule. */
static int time_steps(const char *arch, int M, bool late, int reps, const float *x, timing *out)
{
    train_options o;
    train_options_default(&o);
    o.arch = arch;
    o.d_sae = M;
    o.k = K;
    o.batch = BATCH;
    o.steps = 100000;
    o.warmup = 1000;
    if (late)   /* the temperature at its end from the start: gates saturate */
        o.beta0 = o.beta_end;
    trainer *t;
    sae_error err;
    if (trainer_new(&o, D_IN, &t, &err) != SAE_OK || trainer_use_device(t, "cuda", &err) != SAE_OK) {
        fprintf(stderr, "gpu_train: %s %d: %s\n", arch, M, err.msg);
        return -1;
    }
    step_stats st;
    double v[64], w[64];
    int rc = 0;
    for (int s = 0; s < 3 && rc == 0; s++)  /* warm-up; the first sets b_dec */
        rc = trainer_step(t, x, &st, &err);
    for (int r = 0; r < reps && rc == 0; r++) {
        double t0 = bench_now_ms();
        rc = trainer_step(t, NULL, &st, &err);
        v[r] = bench_now_ms() - t0;
    }
    /* the batch where saectl train's loader puts it: page-locked memory */
    float *pinned = trainer_batch_buffer(t);
    memcpy(pinned, x, (size_t)BATCH * D_IN * sizeof *x);
    for (int r = 0; r < reps && rc == 0; r++) {
        double t0 = bench_now_ms();
        rc = trainer_step(t, pinned, &st, &err);
        w[r] = bench_now_ms() - t0;
    }
    if (rc != 0)
        fprintf(stderr, "gpu_train: %s %d: %s\n", arch, M, err.msg);
    else {
        out->step_ms = bench_median(v, reps);
        out->step_h2d_ms = bench_median(w, reps);
        printf("  (%s M=%d late=%d: mse %.4g, l0 %.1f, beta %.3g)\n", arch, M, late, st.mse,
               st.l0, st.beta);
    }
    trainer_free(t);
    return rc;
}

int main(int argc, char **argv)
{
    bool quick = false;
    int only_M = 0;
    const char *only_case = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--d-sae") && i + 1 < argc)
            only_M = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            only_case = argv[++i];
        else if (!strcmp(argv[i], "--phases"))
            setenv("SAED_TRAIN_PHASES", "1", 1);
        else {
            fprintf(stderr, "usage: %s [--quick] [--d-sae M] [--arch topk|ptopk|ptopk_late] "
                    "[--phases]\n", argv[0]);
            return 2;
        }
    }
    char desc[256];
    if (sae_cuda_probe(0, desc, sizeof desc) != SAE_OK) {
        fprintf(stderr, "gpu_train: no usable GPU: %s\n", desc);
        return 1;
    }
    printf("device: %s; d_in %d, k %d, batch %d, FP32\n", desc, D_IN, K, BATCH);
    const int reps = quick ? 8 : 20;
    float *x = malloc((size_t)BATCH * D_IN * sizeof *x);
    for (size_t i = 0; i < (size_t)BATCH * D_IN; i++)
        x[i] = (float)bench_normal(&rng);
    const int widths[] = {12288, 24576};
    struct {
        const char *arch;
        bool late;
    } cases[] = {{"topk", false}, {"ptopk", false}, {"ptopk", true}};
    char table[16][160];
    int rows = 0, exit_code = 0;
    for (int wi = 0; wi < 2; wi++) {
        const int M = widths[wi];
        if (only_M && M != only_M)
            continue;
        const double g = gemm_ms(M, reps);
        for (int c = 0; c < 3; c++) {
            const char *name = cases[c].late ? "ptopk_late" : cases[c].arch;
            if (only_case && strcmp(only_case, name) != 0)
                continue;
            timing tm;
            if (time_steps(cases[c].arch, M, cases[c].late, reps, x, &tm) != 0) {
                exit_code = 1;
                continue;
            }
            printf("RESULT arch=%s M=%d B=%d gemm_ms=%.4f step_ms=%.4f step_h2d_ms=%.4f "
                   "tokens_per_s=%.0f\n", name, M, BATCH, g, tm.step_ms, tm.step_h2d_ms,
                   BATCH / (tm.step_ms * 1e-3));
            snprintf(table[rows++], sizeof table[0], "%-10s %6d %9.3f %9.3f %9.3f %9.2f %11.0f",
                     name, M, g, tm.step_ms, tm.step_h2d_ms, tm.step_ms / g,
                     BATCH / (tm.step_ms * 1e-3));
        }
    }
    printf("\n%-10s %6s %9s %9s %9s %9s %11s\n", "arch", "M", "gemm ms", "step ms", "+h2d ms",
           "step/gemm", "tokens/s");
    for (int r = 0; r < rows; r++)
        printf("%s\n", table[r]);
    free(x);
    return exit_code;
}
