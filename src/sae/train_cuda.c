/* train_cuda.c - the training step on the GPU: train.c's step (the reference)
 * with cuBLAS for the encoder GEMM and kernels/ for everything else.
 *
 * Architectures: topk (with AuxK), ptopk (every ablation flag), batchtopk
 * (a radix select over the whole batch, kernels/batchtopk.cu), standard and
 * gated (dense: GEMMs for the decode and the backward, as on the CPU).
 *
 * The trainer's weights, gradients, Adam moments and last_fired move to the
 * device at attach and stay there; train_cuda_to_host copies them back when
 * the host needs them (checkpoints, trainer_model, tests). A step is, on one
 * stream:
 *
 *   x -> x_in (copy) -> xp = preprocess(x_in) -> [first step: b_dec = mean xp]
 *   -> xt = xp - b_dec -> per block of rows: z = xt W_enc (cuBLAS), top-k
 *   (ptopk: with the step's Philox noise), AuxK's top-k over dead latents
 *   -> xh = b_dec + sparse decode -> MSE, g = dL/dxh
 *   -> sparse backward: da per entry, entries grouped by latent, per-latent
 *      sums into gW_dec, gW_enc, gb_enc (then AuxK's)
 *   -> gb_dec = colsum(g) - sum_i gb_enc_i W_enc row i (train.c's input_flow:
 *      dL/dx~ itself is never formed)                [stats to the host: sync]
 *   -> last_fired, decoder gradient orthogonalised, global norm, clip + Adam,
 *      decoder rows renormalised, dead-latent count   [stats to the host: sync]
 *
 * The same sums in the same order as the CPU wherever the CPU fixes an order,
 * and fixed trees where it does not, so a GPU run is deterministic and its
 * checkpoints resume bit for bit. The GEMM's rounding differs from OpenBLAS',
 * so GPU and CPU agree within FP32 tolerance (tests/gpu/test_train_gpu).
 *
 * SAED_TRAIN_PHASES=1 at attach times the phases of every step with events
 * (the input, the GEMM, the selection, decode + MSE, the backward, the
 * update) and logs their means at detach: where a step's time goes. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "cublas_fns.h"
#include "cuda_util.h"
#include "kernels.h"
#include "train_impl.h"

#define Z_BYTES_MAX ((int64_t)1 << 30)  /* z of one GEMM block at most this (one row at least) */

typedef struct gpu_param {
    float *w, *g, *m, *v;               /* device copies of the host param's arrays */
} gpu_param;

/* Device scalars of one step, copied to the host in one piece. */
typedef struct step_sums {
    double mse[2];                      /* sum e^2, sum (xp - mean)^2 */
    double aux[2];                      /* AuxK: num, denom */
    double penalty[2];                  /* dense: the sparsity penalty's sum (and 0) */
    double gated_aux[2];                /* gated: the auxiliary loss's sum (and 0) */
    double grad_norm;
    int64_t nonzero;                    /* entries with f != 0 */
    float min_kept;                     /* batchtopk: the smallest value kept */
    int64_t dead;                       /* dead latents (AuxK's, then after the step) */
} step_sums;

enum { PH_INPUT, PH_GEMM, PH_SELECT, PH_DECODE, PH_BACKWARD, PH_UPDATE, N_PHASES };
static const char *const phase_names[N_PHASES] = {"input", "gemm", "select", "decode+mse",
                                                  "backward", "update"};

struct train_gpu {
    cudaStream_t stream;
    cudaEvent_t phase_ev[N_PHASES + 1];     /* SAED_TRAIN_PHASES: phase boundaries */
    double phase_ms[N_PHASES];
    int64_t phase_steps;
    cublasHandle_t blas;
    char fatal[300];
    gpu_param p[8];                     /* same order as trainer.params */
    float *W_enc_T, *W_dec, *b_dec, *b_enc, *b_gate, *b_mag, *r_mag;
    float *gW_enc, *gW_dec, *gb_dec, *gb_enc, *gb_gate, *gb_mag, *gr_mag;
    int dense;                          /* standard or gated */
    float *df, *gate_in, *aux_df;       /* dense: [B, M] (gate_in, aux_df: gated) */
    float *norms, *r_mag_exp;           /* dense: [M] */
    uint8_t *fired;                     /* dense: [M], latents that fired this step */
    int64_t z_rows;                     /* rows per GEMM block */
    float *x_host;                      /* page-locked [B, d]: trainer_batch_buffer */
    float *x_in, *xp, *xt, *xh, *g, *z;
    int k_aux_max;                      /* d / 2 with AuxK, else 0 */
    float *aux_rows, *b_aux;
    int32_t *idx, *aux_idx;             /* [B, k], [B, k_aux_max] */
    float *f, *aux_f, *da;              /* da: [B, max(k, k_aux_max)] */
    int64_t *rowptr, *aux_rowptr;       /* [B + 1]: b k, and b k_aux for the current k_aux */
    int32_t *row, *aux_row;             /* each entry's row (sae_k_rows_of) */
    int64_t n_entries;                  /* entries this step */
    unsigned *hist, *h_hist;            /* batchtopk: [256] radix histogram */
    int32_t *above, *ties, *budget;     /* batchtopk: [B] per-row counts, device */
    int32_t *h_above, *h_ties, *h_budget;   /* and host */
    int aux_per_row;
    int64_t *h_rowptr;                  /* host staging for them */
    uint32_t *bits, *prefix;            /* group by latent: [M, ceil(B / 32)] */
    int64_t *latptr, *order;
    int64_t *last_fired;
    double *col, *col_scratch, *rows, *partials;
    double *flow_weights, *flow;        /* [M], [d]: b_dec's input flow */
    float *clip_scale;
    step_sums *sums;
};

/* A kernels.h launcher's code: 0 or a cudaError_t. */
#define KL(call, what) CK((cudaError_t)(call), what)

static int alloc(train_gpu *st, void **p, size_t bytes, const char *what, sae_error *err)
{
    return sae_cuda_alloc(st->stream, st->fatal, sizeof st->fatal, p, bytes, what, err);
}

static int upload(train_gpu *st, void *dst, const void *src, size_t bytes, sae_error *err)
{
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st->stream), "upload");
    return SAE_OK;
}

static void free_all(train_gpu *st)
{
    for (int i = 0; i < 8; i++) {
        sae_cuda_free(st->p[i].w);
        sae_cuda_free(st->p[i].g);
        sae_cuda_free(st->p[i].m);
        sae_cuda_free(st->p[i].v);
    }
    void *bufs[] = {st->x_in, st->xp, st->xt, st->xh, st->g, st->z, st->aux_rows,
                    st->b_aux, st->idx, st->aux_idx, st->f, st->aux_f, st->da, st->rowptr, st->aux_rowptr,
                    st->row, st->aux_row,
                    st->bits, st->prefix, st->latptr, st->order, st->last_fired, st->col,
                    st->flow_weights, st->flow,
                    st->col_scratch, st->rows, st->partials, st->clip_scale, st->sums, st->df,
                    st->gate_in, st->aux_df, st->norms, st->r_mag_exp, st->fired, st->hist,
                    st->above, st->ties, st->budget};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        sae_cuda_free(bufs[i]);
    free(st->h_rowptr);
    free(st->h_hist);
    free(st->h_above);
    free(st->h_ties);
    free(st->h_budget);
    if (st->x_host)
        cudaFreeHost(st->x_host);
    for (int i = 0; i <= N_PHASES; i++)
        if (st->phase_ev[i])
            cudaEventDestroy(st->phase_ev[i]);
    if (st->blas)
        sae_cublas.destroy(st->blas);
    if (st->stream)
        cudaStreamDestroy(st->stream);
    free(st);
}

/* rowptr[b] = b per_row for the B + 1 row starts, and each entry's row. */
static int upload_rowptr(train_gpu *st, const trainer *t, int64_t *rowptr, int32_t *row,
                         int per_row, sae_error *err)
{
    CK(cudaStreamSynchronize(st->stream), "row pointers");    /* h_rowptr may be in flight */
    for (int64_t b = 0; b <= t->B; b++)
        st->h_rowptr[b] = b * per_row;
    if (upload(st, rowptr, st->h_rowptr, ((size_t)t->B + 1) * sizeof(int64_t), err) != SAE_OK)
        return SAE_ERR;
    KL(sae_k_rows_of(rowptr, t->B, row, st->stream), "entry rows");
    return SAE_OK;
}

/* ---- attach ----------------------------------------------------------------- */

/* The device weights (or gradient) of the parameter called name. */
static float *device_array(train_gpu *st, const trainer *t, const char *name, int grad)
{
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name))
            return grad ? st->p[i].g : st->p[i].w;
    return NULL;
}

static int attach_buffers(train_gpu *st, trainer *t, sae_error *err)
{
    const size_t B = (size_t)t->B, d = (size_t)t->d, M = (size_t)t->M, k = (size_t)t->m->cfg.k;
    for (int i = 0; i < t->n_params; i++) {
        const param *hp = &t->params[i];
        const size_t bytes = hp->n * sizeof(float);
        if (alloc(st, (void **)&st->p[i].w, bytes, "weights", err) ||
            alloc(st, (void **)&st->p[i].g, bytes, "gradients", err) ||
            alloc(st, (void **)&st->p[i].m, bytes, "Adam moments", err) ||
            alloc(st, (void **)&st->p[i].v, bytes, "Adam moments", err) ||
            upload(st, st->p[i].w, hp->w, bytes, err) || upload(st, st->p[i].m, hp->m, bytes, err) ||
            upload(st, st->p[i].v, hp->v, bytes, err))
            return SAE_ERR;
    }
    st->W_enc_T = device_array(st, t, "W_enc_T", 0);
    st->W_dec = device_array(st, t, "W_dec", 0);
    st->b_dec = device_array(st, t, "b_dec", 0);
    st->b_enc = device_array(st, t, "b_enc", 0);
    st->gW_enc = device_array(st, t, "W_enc_T", 1);
    st->gW_dec = device_array(st, t, "W_dec", 1);
    st->gb_dec = device_array(st, t, "b_dec", 1);
    st->gb_enc = device_array(st, t, "b_enc", 1);
    st->b_gate = device_array(st, t, "b_gate", 0);
    st->b_mag = device_array(st, t, "b_mag", 0);
    st->r_mag = device_array(st, t, "r_mag", 0);
    st->gb_gate = device_array(st, t, "b_gate", 1);
    st->gb_mag = device_array(st, t, "b_mag", 1);
    st->gr_mag = device_array(st, t, "r_mag", 1);
    st->dense = t->fam == FAMILY_RELU || t->fam == FAMILY_GATED;
    const int gated = t->fam == FAMILY_GATED;

    st->z_rows = Z_BYTES_MAX / (int64_t)(M * sizeof(float));
    st->z_rows = st->z_rows < 1 ? 1 : st->z_rows > (int64_t)B ? (int64_t)B : st->z_rows;
    if (st->dense || t->fam == FAMILY_BATCHTOPK)    /* they need all of z */
        st->z_rows = (int64_t)B;
    const size_t cols = M > d ? M : d;      /* column sums run over d or over M */
    st->k_aux_max = t->o.auxk ? t->d / 2 : 0;
    const size_t per_row = k > (size_t)st->k_aux_max ? k : (size_t)st->k_aux_max;
    const size_t words = (B + 31) / 32;
    if (alloc(st, (void **)&st->x_in, B * d * sizeof(float), "the batch", err) ||
        alloc(st, (void **)&st->xp, B * d * sizeof(float), "the batch", err) ||
        alloc(st, (void **)&st->xt, B * d * sizeof(float), "the batch", err) ||
        alloc(st, (void **)&st->xh, B * d * sizeof(float), "the reconstruction", err) ||
        alloc(st, (void **)&st->g, B * d * sizeof(float), "dL/dxhat", err) ||
        alloc(st, (void **)&st->z, (size_t)st->z_rows * M * sizeof(float), "pre-activations", err) ||
        alloc(st, (void **)&st->idx, B * k * sizeof(int32_t), "active latents", err) ||
        (!st->dense && alloc(st, (void **)&st->f, B * k * sizeof(float), "codes", err)) ||
        alloc(st, (void **)&st->da, B * per_row * sizeof(float), "dL/da", err) ||
        alloc(st, (void **)&st->rowptr, (B + 1) * sizeof(int64_t), "row pointers", err) ||
        alloc(st, (void **)&st->row, B * k * sizeof(int32_t), "entry rows", err) ||
        alloc(st, (void **)&st->bits, M * words * sizeof(uint32_t), "latent bits", err) ||
        alloc(st, (void **)&st->prefix, M * words * sizeof(uint32_t), "latent bits", err) ||
        alloc(st, (void **)&st->latptr, (M + 1) * sizeof(int64_t), "latent pointers", err) ||
        alloc(st, (void **)&st->order, B * per_row * sizeof(int64_t), "latent order", err) ||
        alloc(st, (void **)&st->last_fired, M * sizeof(int64_t), "last_fired", err) ||
        alloc(st, (void **)&st->col, cols * sizeof(double), "column sums", err) ||
        alloc(st, (void **)&st->flow_weights, M * sizeof(double), "input flow", err) ||
        alloc(st, (void **)&st->flow, d * sizeof(double), "input flow", err) ||
        alloc(st, (void **)&st->col_scratch, SAE_K_COLSUM_SCRATCH * sizeof(double),
              "column sums", err) ||
        alloc(st, (void **)&st->rows, 2 * B * sizeof(double), "row sums", err) ||
        alloc(st, (void **)&st->partials, 8 * SAE_K_SUMSQ_PARTS * sizeof(double), "norms", err) ||
        alloc(st, (void **)&st->clip_scale, sizeof(float), "clip scale", err) ||
        alloc(st, (void **)&st->sums, sizeof(step_sums), "step sums", err) ||
        upload(st, st->last_fired, t->last_fired, M * sizeof(int64_t), err))
        return SAE_ERR;
    if (st->k_aux_max > 0 &&
        (alloc(st, (void **)&st->aux_rows, B * d * sizeof(float), "AuxK rows", err) ||
         alloc(st, (void **)&st->b_aux, M * sizeof(float), "AuxK bias", err) ||
         alloc(st, (void **)&st->aux_idx, B * (size_t)st->k_aux_max * sizeof(int32_t), "AuxK", err) ||
         alloc(st, (void **)&st->aux_f, B * (size_t)st->k_aux_max * sizeof(float), "AuxK", err) ||
         alloc(st, (void **)&st->aux_rowptr, (B + 1) * sizeof(int64_t), "row pointers", err) ||
         alloc(st, (void **)&st->aux_row, B * (size_t)st->k_aux_max * sizeof(int32_t), "AuxK",
               err)))
        return SAE_ERR;
    if (st->dense &&
        (alloc(st, (void **)&st->df, B * M * sizeof(float), "dL/dz", err) ||
         alloc(st, (void **)&st->f, B * M * sizeof(float), "codes", err) ||
         alloc(st, (void **)&st->norms, M * sizeof(float), "decoder norms", err) ||
         alloc(st, (void **)&st->fired, M, "fired latents", err)))
        return SAE_ERR;
    if (st->dense)
        CK(cudaMemsetAsync(st->fired, 0, M, st->stream), "fired latents");
    if (gated &&
        (alloc(st, (void **)&st->gate_in, B * M * sizeof(float), "gate pre-activations", err) ||
         alloc(st, (void **)&st->aux_df, B * M * sizeof(float), "auxiliary gradient", err) ||
         alloc(st, (void **)&st->aux_rows, B * d * sizeof(float), "auxiliary rows", err) ||
         alloc(st, (void **)&st->r_mag_exp, M * sizeof(float), "exp(r_mag)", err) ||
         upload(st, st->r_mag_exp, t->m->r_mag_exp, M * sizeof(float), err)))
        return SAE_ERR;
    if (!(st->h_rowptr = malloc((B + 1) * sizeof(int64_t))))
        return sae_fail(err, "out of memory");
    if (t->fam == FAMILY_BATCHTOPK) {
        if (alloc(st, (void **)&st->hist, 256 * sizeof(unsigned), "histogram", err) ||
            alloc(st, (void **)&st->above, B * sizeof(int32_t), "row counts", err) ||
            alloc(st, (void **)&st->ties, B * sizeof(int32_t), "row counts", err) ||
            alloc(st, (void **)&st->budget, B * sizeof(int32_t), "row counts", err))
            return SAE_ERR;
        if (!(st->h_hist = malloc(256 * sizeof(unsigned))) ||
            !(st->h_above = malloc(B * sizeof(int32_t))) ||
            !(st->h_ties = malloc(B * sizeof(int32_t))) ||
            !(st->h_budget = malloc(B * sizeof(int32_t))))
            return sae_fail(err, "out of memory");
    }
    CK(cudaHostAlloc((void **)&st->x_host, B * d * sizeof(float), cudaHostAllocDefault),
       "page-locked batch buffer");
    st->aux_per_row = -1;
    if (upload_rowptr(st, t, st->rowptr, st->row, (int)k, err) != SAE_OK)
        return SAE_ERR;
    CK(cudaStreamSynchronize(st->stream), "uploading the trainer");
    return SAE_OK;
}

/* The stream, cuBLAS, the phase events (SAED_TRAIN_PHASES=1) and every buffer. */
static int open_device(train_gpu *st, trainer *t, int device, sae_error *err)
{
    CK(cudaSetDevice(device), "selecting the device");
    CK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking), "creating a stream");
    if (sae_cublas_open(st->stream, st->fatal, sizeof st->fatal, &st->blas, err) != SAE_OK)
        return SAE_ERR;
    const char *ph = getenv("SAED_TRAIN_PHASES");
    for (int i = 0; ph && !strcmp(ph, "1") && i <= N_PHASES; i++)
        CK(cudaEventCreateWithFlags(&st->phase_ev[i], cudaEventDefault), "creating events");
    return attach_buffers(st, t, err);
}

int train_cuda_attach(trainer *t, int device, sae_error *err)
{
    const int per_row = t->fam == FAMILY_TOPK || t->fam == FAMILY_PTOPK ? t->m->cfg.k : 0;
    if (per_row > SAE_K_TOPK_MAX || (t->o.auxk && t->d / 2 > SAE_K_TOPK_MAX))
        return sae_fail(err, "the GPU selects at most %d latents per row (k %d%s)",
                        SAE_K_TOPK_MAX, per_row, t->o.auxk ? ", AuxK d_in / 2" : "");
    char desc[256];
    if (sae_cuda_probe(device, desc, sizeof desc) != SAE_OK)
        return sae_fail(err, "%s", desc);
    train_gpu *st = calloc(1, sizeof *st);
    if (!st)
        return sae_fail(err, "out of memory");
    if (open_device(st, t, device, err) != SAE_OK) {
        free_all(st);
        return SAE_ERR;
    }
    t->gpu = st;
    sae_log("train: on %s", desc);
    return SAE_OK;
}

void train_cuda_detach(trainer *t)
{
    if (!t->gpu)
        return;
    (void)cudaStreamSynchronize(t->gpu->stream);
    const train_gpu *st = t->gpu;
    if (st->phase_steps > 0) {
        char line[400];
        int n = snprintf(line, sizeof line, "train: ms per step over %lld steps:",
                         (long long)st->phase_steps);
        for (int i = 0; i < N_PHASES && n < (int)sizeof line; i++)
            n += snprintf(line + n, sizeof line - (size_t)n, " %s %.3f", phase_names[i],
                          st->phase_ms[i] / (double)st->phase_steps);
        sae_log("%s", line);
    }
    free_all(t->gpu);
    t->gpu = NULL;
}

float *train_cuda_batch_buffer(trainer *t)
{
    return t->gpu->x_host;
}

int train_cuda_to_host(const trainer *t, int grads, sae_error *err)
{
    train_gpu *st = t->gpu;
    if (st->fatal[0])
        return sae_fail(err, "%s", st->fatal);
    for (int i = 0; i < t->n_params; i++) {
        const param *hp = &t->params[i];
        const size_t bytes = hp->n * sizeof(float);
        CK(cudaMemcpyAsync(hp->w, st->p[i].w, bytes, cudaMemcpyDeviceToHost, st->stream), "download");
        CK(cudaMemcpyAsync(hp->m, st->p[i].m, bytes, cudaMemcpyDeviceToHost, st->stream), "download");
        CK(cudaMemcpyAsync(hp->v, st->p[i].v, bytes, cudaMemcpyDeviceToHost, st->stream), "download");
        if (grads)
            CK(cudaMemcpyAsync(hp->g, st->p[i].g, bytes, cudaMemcpyDeviceToHost, st->stream),
               "download");
    }
    CK(cudaMemcpyAsync(t->last_fired, st->last_fired, (size_t)t->M * sizeof(int64_t),
                       cudaMemcpyDeviceToHost, st->stream), "download");
    CK(cudaStreamSynchronize(st->stream), "download");
    if (t->m->threshold)        /* batchtopk's inference threshold */
        for (int i = 0; i < t->M; i++)
            t->m->threshold[i] = t->theta;
    sae_refresh_derived(t->m);
    return SAE_OK;
}

/* ---- the step ------------------------------------------------------------------ */

/* SAED_TRAIN_PHASES: the end of phase `ph` (PH_INPUT's start for ph < 0). */
static void phase_mark(train_gpu *st, int ph)
{
    if (st->phase_ev[0])
        (void)cudaEventRecord(st->phase_ev[ph + 1], st->stream);
}

/* After the step's last sync: add the phases' times. */
static void phase_add(train_gpu *st)
{
    if (!st->phase_ev[0])
        return;
    for (int i = 0; i < N_PHASES; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, st->phase_ev[i], st->phase_ev[i + 1]) == cudaSuccess)
            st->phase_ms[i] += ms;
    }
    st->phase_steps++;
}

/* Backward through n entries (each entry's row, latent and code f) given
 * up = dL/d(decoded row): train.c's row_entry_grads and latent_grads. */
static int sparse_backward(train_gpu *st, const trainer *t, const int32_t *row,
                           const int32_t *idx, const float *f, int64_t n, int relu,
                           const float *up, int accumulate, sae_error *err)
{
    KL(sae_k_entry_grad(up, st->W_dec, idx, row, f, n, t->d, relu, st->da, st->stream),
       "entry gradients");
    KL(sae_k_group_by_latent(idx, row, n, t->B, t->M, st->bits, st->prefix, st->latptr,
                             st->order, st->stream), "grouping by latent");
    KL(sae_k_latent_grads(st->latptr, st->order, row, f, st->da, up, st->xt, t->M, t->d,
                          accumulate, st->gW_dec, st->gW_enc, st->gb_enc, st->stream),
       "latent gradients");
    return SAE_OK;
}

/* Counts the dead latents (and sets AuxK's masked bias), then brings the
 * step's sums to the host (a sync). */
static int dead_latents(train_gpu *st, const trainer *t, step_sums *sums, sae_error *err)
{
    CK(cudaMemsetAsync(&st->sums->dead, 0, sizeof(int64_t), st->stream), "dead latents");
    KL(sae_k_dead_latents(st->last_fired, t->M, t->tokens, train_dead_window(&t->o), st->b_enc,
                          st->b_aux, &st->sums->dead, st->stream), "dead latents");
    CK(cudaMemcpyAsync(sums, st->sums, sizeof *sums, cudaMemcpyDeviceToHost, st->stream),
       "dead latents");
    CK(cudaStreamSynchronize(st->stream), "dead latents");
    return SAE_OK;
}

/* C [m, n] = op(A) op(B) + beta C, row-major (lda, ldb, ldc in elements), as
 * cuBLAS's column-major C^T = op(B)^T op(A)^T. */
static int gemm(train_gpu *st, int ta, int tb, int m, int n, int kk, const float *A, int lda,
                const float *Bm, int ldb, float beta, float *C, int ldc, const char *what,
                sae_error *err)
{
    const float one = 1.0f;
    BL(sae_cublas.sgemm(st->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                        n, m, kk, &one, Bm, ldb, A, lda, &beta, C, ldc), what);
    return SAE_OK;
}

/* BatchTopK over z [B, M] (batchtopk.cu): the threshold key by radix select
 * (four histograms, each read here), then the ties handed out in row order,
 * the CSR rowptr, and the kept latents. Sets n_entries and, on the device,
 * the smallest kept value. */
static int batch_select(train_gpu *st, const trainer *t, sae_error *err)
{
    const int B = t->B, M = t->M;
    int64_t want = (int64_t)t->m->cfg.k * B;
    uint32_t prefix = 0u, mask = 0u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        KL(sae_k_batch_hist(st->z, st->b_enc, B, M, prefix, mask, shift, st->hist, st->stream),
           "batchtopk histogram");
        CK(cudaMemcpyAsync(st->h_hist, st->hist, 256 * sizeof(unsigned), cudaMemcpyDeviceToHost,
                           st->stream), "batchtopk histogram");
        CK(cudaStreamSynchronize(st->stream), "batchtopk histogram");
        int64_t total = 0, above = 0;
        int digit = -1;
        for (int dg = 255; dg >= 0; dg--)
            total += st->h_hist[dg];
        if (shift == 24 && total <= want) {     /* keep every positive value */
            prefix = 0x80000000u;
            want = 0;
            break;
        }
        for (int dg = 255; dg >= 0 && digit < 0; dg--) {
            if (above + (int64_t)st->h_hist[dg] >= want)
                digit = dg;
            else
                above += st->h_hist[dg];
        }
        want -= above;
        prefix |= (uint32_t)digit << shift;
        mask |= 255u << shift;
    }
    /* want ties at the threshold are kept, the lowest flat indices first */
    KL(sae_k_batch_count(st->z, st->b_enc, B, M, prefix, st->above, st->ties, st->stream),
       "batchtopk counts");
    CK(cudaMemcpyAsync(st->h_above, st->above, (size_t)B * sizeof(int32_t),
                       cudaMemcpyDeviceToHost, st->stream), "batchtopk counts");
    CK(cudaMemcpyAsync(st->h_ties, st->ties, (size_t)B * sizeof(int32_t), cudaMemcpyDeviceToHost,
                       st->stream), "batchtopk counts");
    CK(cudaStreamSynchronize(st->stream), "batchtopk counts");
    st->h_rowptr[0] = 0;
    for (int b = 0; b < B; b++) {
        st->h_budget[b] = (int32_t)(st->h_ties[b] < want ? st->h_ties[b] : want);
        want -= st->h_budget[b];
        st->h_rowptr[b + 1] = st->h_rowptr[b] + st->h_above[b] + st->h_budget[b];
    }
    st->n_entries = st->h_rowptr[B];
    if (upload(st, st->rowptr, st->h_rowptr, ((size_t)B + 1) * sizeof(int64_t), err) != SAE_OK ||
        upload(st, st->budget, st->h_budget, (size_t)B * sizeof(int32_t), err) != SAE_OK)
        return SAE_ERR;
    KL(sae_k_rows_of(st->rowptr, B, st->row, st->stream), "entry rows");
    KL(sae_k_batch_fill(st->z, st->b_enc, B, M, prefix, st->budget, st->rowptr, st->idx, st->f,
                        st->stream), "batchtopk fill");
    if (st->n_entries > 0)
        KL(sae_k_min(st->f, st->n_entries, &st->sums->min_kept, st->stream), "batchtopk minimum");
    return SAE_OK;
}

/* topk and ptopk: forward (GEMM and selection by blocks of rows), sparse
 * decode, MSE, sparse backward (and AuxK's). */
static int topk_forward_backward(train_gpu *st, trainer *t, double beta, int *k_aux_out,
                                 sae_error *err)
{
    const int B = t->B, d = t->d, M = t->M, k = t->m->cfg.k;
    const sae_config *cfg = &t->m->cfg;
    /* AuxK: how many latents are dead decides k_aux (a sync, only with AuxK) */
    int k_aux = 0;
    if (t->o.auxk) {
        step_sums s;
        if (dead_latents(st, t, &s, err) != SAE_OK)
            return SAE_ERR;
        k_aux = (int)(s.dead < d / 2 ? s.dead : d / 2);
    }

    /* forward: blocks of rows through the GEMM and the selection */
    sae_k_sel sel = {
        .kind = t->fam == FAMILY_PTOPK ? SAE_K_SEL_PTOPK_TRAIN : SAE_K_SEL_TOPK,
        .b_enc = st->b_enc, .layernorm = cfg->layernorm, .beta = beta,
        .lambda = cfg->lambda_mag, .noise = !t->o.sigmoid_gate, .seed = t->o.seed,
        .step = (uint64_t)t->step,
    };
    const sae_k_sel aux_sel = {.kind = SAE_K_SEL_TOPK, .b_enc = st->b_aux};
    phase_mark(st, PH_INPUT);
    for (int64_t r0 = 0; r0 < B; r0 += st->z_rows) {
        const int64_t rows = B - r0 < st->z_rows ? B - r0 : st->z_rows;
        if (gemm(st, 0, 1, (int)rows, M, d, st->xt + r0 * d, d, st->W_enc_T, d, 0.0f, st->z, M,
                 "encoder GEMM", err) != SAE_OK)
            return SAE_ERR;
        phase_mark(st, PH_GEMM);     /* with several blocks, the last one's */
        if (t->fam == FAMILY_BATCHTOPK) {   /* one block: z is whole */
            if (batch_select(st, t, err) != SAE_OK)
                return SAE_ERR;
            continue;
        }
        sel.row0 = r0;
        st->n_entries = (int64_t)B * k;
        KL(sae_k_topk(st->z, rows, M, k, &sel, st->idx + r0 * k, st->f + r0 * k, st->stream),
           "top-k");
        if (k_aux > 0)
            KL(sae_k_topk(st->z, rows, M, k_aux, &aux_sel, st->aux_idx + r0 * k_aux,
                          st->aux_f + r0 * k_aux, st->stream), "AuxK top-k");
    }
    phase_mark(st, PH_SELECT);

    /* decode, MSE and dL/dxh */
    KL(sae_k_sparse_decode(st->rowptr, st->idx, st->f, st->W_dec, st->b_dec, B, d, st->xh,
                           st->stream), "decode");
    KL(sae_k_colsum(st->xp, NULL, B, d, st->col_scratch, st->col, st->stream), "column means");
    KL(sae_k_mse(st->xh, st->xp, st->col, B, d, st->g, st->rows, st->sums->mse, st->stream),
       "MSE");

    phase_mark(st, PH_DECODE);

    /* backward */
    const int relu = t->fam != FAMILY_PTOPK;
    if (sparse_backward(st, t, st->row, st->idx, st->f, st->n_entries, relu, st->g, 0, err) !=
        SAE_OK)
        return SAE_ERR;
    if (k_aux > 0) {
        if (k_aux != st->aux_per_row &&
            upload_rowptr(st, t, st->aux_rowptr, st->aux_row, st->aux_per_row = k_aux, err) !=
                SAE_OK)
            return SAE_ERR;
        KL(sae_k_sparse_decode(st->aux_rowptr, st->aux_idx, st->aux_f, st->W_dec, NULL, B, d,
                               st->aux_rows, st->stream), "AuxK decode");
        KL(sae_k_colsum(st->xp, st->xh, B, d, st->col_scratch, st->col, st->stream), "AuxK");
        KL(sae_k_auxk_upstream(st->aux_rows, st->xp, st->xh, st->col, t->o.auxk_coef, B, d,
                               st->rows, st->sums->aux, st->stream), "AuxK");
        if (sparse_backward(st, t, st->aux_row, st->aux_idx, st->aux_f, (int64_t)B * k_aux, 1,
                            st->aux_rows, 1, err) != SAE_OK)
            return SAE_ERR;
    }
    KL(sae_k_count_nonzero(st->f, st->n_entries, &st->sums->nonzero, st->stream), "l0");
    *k_aux_out = k_aux;
    return SAE_OK;
}

/* standard and gated (train.c's forward_dense and finish_dense): z and the
 * codes dense, GEMMs for the decode and for every gradient. */
static int dense_forward_backward(train_gpu *st, trainer *t, sae_error *err)
{
    const int B = t->B, d = t->d, M = t->M, gated = t->fam == FAMILY_GATED;
    const float l1 = t->o.l1_coef / (float)B;
    const sae_k_dense dp = {.gated = gated, .b_enc = st->b_enc, .b_gate = st->b_gate,
                            .b_mag = st->b_mag, .r_mag_exp = st->r_mag_exp};
    phase_mark(st, PH_INPUT);
    KL(sae_k_row_norms(st->W_dec, M, d, st->norms, st->stream), "decoder norms");
    if (gemm(st, 0, 1, B, M, d, st->xt, d, st->W_enc_T, d, 0.0f, st->z, M, "encoder GEMM", err))
        return SAE_ERR;
    phase_mark(st, PH_GEMM);
    KL(sae_k_dense_forward(st->z, B, M, &dp, st->norms, st->f, st->gate_in, st->fired, st->rows,
                           st->sums->penalty, st->stream), "codes");
    KL(sae_k_count_nonzero(st->f, (int64_t)B * M, &st->sums->nonzero, st->stream), "l0");
    phase_mark(st, PH_SELECT);
    KL(sae_k_broadcast_rows(st->b_dec, B, d, st->xh, st->stream), "decode");
    if (gemm(st, 0, 0, B, d, M, st->f, M, st->W_dec, d, 1.0f, st->xh, d, "decode GEMM", err))
        return SAE_ERR;
    KL(sae_k_colsum(st->xp, NULL, B, d, st->col_scratch, st->col, st->stream), "column means");
    KL(sae_k_mse(st->xh, st->xp, st->col, B, d, st->g, st->rows, st->sums->mse, st->stream),
       "MSE");
    phase_mark(st, PH_DECODE);

    /* df = g W_dec^T, gW_dec = f^T g */
    if (gemm(st, 0, 1, B, M, d, st->g, d, st->W_dec, d, 0.0f, st->df, M, "dL/df", err) ||
        gemm(st, 1, 0, M, d, B, st->f, M, st->g, d, 0.0f, st->gW_dec, d, "decoder gradient", err))
        return SAE_ERR;
    if (gated) {
        /* the auxiliary reconstruction through the frozen decoder, from
         * ReLU(pi_gate) (in f's place: f^T g is done) */
        KL(sae_k_relu_copy(st->gate_in, (int64_t)B * M, st->f, st->stream), "ReLU(pi_gate)");
        KL(sae_k_broadcast_rows(st->b_dec, B, d, st->aux_rows, st->stream), "auxiliary decode");
        if (gemm(st, 0, 0, B, d, M, st->f, M, st->W_dec, d, 1.0f, st->aux_rows, d,
                 "auxiliary decode", err))
            return SAE_ERR;
        KL(sae_k_gated_aux(st->aux_rows, st->xp, B, d, st->rows, st->sums->gated_aux,
                           st->stream), "auxiliary loss");
    }
    /* the penalty's pull on the decoder rows: sum over the batch of f (standard)
     * or ReLU(pi_gate) (gated), now in f */
    KL(sae_k_colsum(st->f, NULL, B, M, st->col_scratch, st->col, st->stream), "penalty sums");
    KL(sae_k_add_norm_grad(st->gW_dec, st->W_dec, st->col, st->norms, l1, M, d, st->stream),
       "decoder gradient");
    if (gated) {
        if (gemm(st, 0, 1, B, M, d, st->aux_rows, d, st->W_dec, d, 0.0f, st->aux_df, M,
                 "auxiliary gradient", err))
            return SAE_ERR;
        KL(sae_k_gated_grad(st->z, st->gate_in, st->df, st->aux_df, st->f, &dp, st->norms, l1, B,
                            M, st->stream), "gate gradients");
        const struct { const float *x; float *g; } sums[] = {
            {st->z, st->gr_mag}, {st->f, st->gb_mag}, {st->aux_df, st->gb_gate}};
        for (int i = 0; i < 3; i++) {
            KL(sae_k_colsum(sums[i].x, NULL, B, M, st->col_scratch, st->col, st->stream),
               "gate gradients");
            KL(sae_k_col_to_float(st->col, NULL, 1.0, M, sums[i].g, st->stream), "gate gradients");
        }
    } else {
        KL(sae_k_relu_grad(st->f, B, M, st->norms, l1, st->df, st->stream), "dL/dz");
        KL(sae_k_colsum(st->df, NULL, B, M, st->col_scratch, st->col, st->stream), "b_enc gradient");
        KL(sae_k_col_to_float(st->col, NULL, 1.0, M, st->gb_enc, st->stream), "b_enc gradient");
    }
    /* df is dL/dz: the encoder's gradient */
    if (gemm(st, 1, 0, M, d, B, st->df, M, st->xt, d, 0.0f, st->gW_enc, d, "encoder gradient",
             err))
        return SAE_ERR;
    return SAE_OK;
}

int train_cuda_loss_and_grads(trainer *t, const float *x, step_stats *out, sae_error *err)
{
    train_gpu *st = t->gpu;
    const int B = t->B, d = t->d;
    const sae_config *cfg = &t->m->cfg;
    if (st->fatal[0])
        return sae_fail(err, "%s", st->fatal);
    const int64_t warmup = train_warmup_steps(&t->o);
    memset(out, 0, sizeof *out);
    out->lr = lr_at(t->o.lr, t->step, warmup, t->o.steps);
    out->beta = beta_at(t->o.beta0, t->o.beta_end, t->step, warmup, t->o.steps);

    /* input (x NULL: the last batch, still on the device), preprocessing,
     * b_dec on the first batch, x~ */
    phase_mark(st, -1);
    if (x && upload(st, st->x_in, x, (size_t)B * d * sizeof(float), err) != SAE_OK)
        return SAE_ERR;
    /* x' and x~ in one pass; the first batch first sets b_dec from x' */
    const float *b_dec_in = cfg->apply_b_dec_to_input ? st->b_dec : NULL;
    KL(sae_k_preprocess_to(st->x_in, st->xp, t->initialised ? st->xt : NULL, B, d,
                           (int)cfg->normalize, cfg->norm_scale, b_dec_in, st->stream),
       "preprocessing");
    if (!t->initialised) {
        KL(sae_k_colsum(st->xp, NULL, B, d, st->col_scratch, st->col, st->stream), "b_dec");
        KL(sae_k_col_to_float(st->col, NULL, (double)B, d, st->b_dec, st->stream), "b_dec");
        KL(sae_k_sub_rows(st->xp, b_dec_in, B, d, st->xt, st->stream), "x~");
        t->initialised = 1;
    }
    CK(cudaMemsetAsync(st->sums, 0, sizeof(step_sums), st->stream), "step sums");

    int k_aux = 0;
    if ((st->dense ? dense_forward_backward(st, t, err)
                   : topk_forward_backward(st, t, out->beta, &k_aux, err)) != SAE_OK)
        return SAE_ERR;
    /* b_dec: the decoder's bias, minus what flowed into x~ = x' - b_dec */
    KL(sae_k_colsum(st->g, NULL, B, d, st->col_scratch, st->col, st->stream), "b_dec gradient");
    if (cfg->apply_b_dec_to_input) {
        const int gated = t->fam == FAMILY_GATED;
        KL(sae_k_flow_weights(st->gb_enc, gated ? st->gb_mag : NULL, st->r_mag_exp, st->gb_gate,
                              t->M, st->flow_weights, st->stream), "b_dec gradient");
        KL(sae_k_weighted_colsum(st->W_enc_T, st->flow_weights, t->M, d, st->col_scratch,
                                 st->flow, st->stream), "b_dec gradient");
    }
    KL(sae_k_col_to_float(st->col, cfg->apply_b_dec_to_input ? st->flow : NULL, 1.0, d,
                          st->gb_dec, st->stream), "b_dec gradient");
    phase_mark(st, PH_BACKWARD);

    step_sums s;
    CK(cudaMemcpyAsync(&s, st->sums, sizeof s, cudaMemcpyDeviceToHost, st->stream), "step sums");
    CK(cudaStreamSynchronize(st->stream), "the step's forward and backward");
    out->mse = s.mse[0] / B;
    out->fvu = s.mse[1] > 0.0 ? s.mse[0] / s.mse[1] : 0.0;
    out->aux_loss = k_aux > 0 && s.aux[1] > 0.0 ? t->o.auxk_coef * s.aux[0] / s.aux[1] : 0.0;
    if (t->fam == FAMILY_GATED)
        out->aux_loss = s.gated_aux[0] / B;
    const double penalty = st->dense ? (double)(t->o.l1_coef / (float)B) * s.penalty[0] : 0.0;
    out->l0 = (double)s.nonzero / B;
    out->loss = out->mse + penalty + out->aux_loss;
    return SAE_OK;
}

int train_cuda_step(trainer *t, const float *x, step_stats *out, sae_error *err)
{
    train_gpu *st = t->gpu;
    if (train_cuda_loss_and_grads(t, x, out, err) != SAE_OK)
        return SAE_ERR;
    if (!isfinite(out->loss))
        return sae_fail(err, "non-finite loss at step %lld", (long long)t->step);
    const int B = t->B, d = t->d, M = t->M;
    if (st->dense)
        KL(sae_k_mark_fired_flags(st->fired, M, t->tokens + B, st->last_fired, st->stream),
           "last_fired");
    else
        KL(sae_k_mark_fired(st->idx, st->f, st->n_entries, t->tokens + B, st->last_fired,
                            st->stream), "last_fired");
    /* unit-norm decoder rows (the top-k family): no gradient along a row */
    if (!st->dense)
        KL(sae_k_orthogonalise_rows(st->gW_dec, st->W_dec, M, d, st->stream), "decoder gradient");
    for (int i = 0; i < t->n_params; i++)
        KL(sae_k_sumsq(st->p[i].g, (int64_t)t->params[i].n, st->partials + i * SAE_K_SUMSQ_PARTS,
                       st->stream), "gradient norm");
    KL(sae_k_clip_scale(st->partials, t->n_params * SAE_K_SUMSQ_PARTS, t->o.clip,
                        &st->sums->grad_norm, st->clip_scale, st->stream), "gradient clip");
    /* optim.c's adam_step, with its bias corrections */
    const int64_t n_step = t->step + 1;
    const float b1 = t->o.adam_beta1, b2 = t->o.adam_beta2;
    const float c1 = (float)(1.0 - pow(b1, (double)n_step));
    const float c2 = (float)(1.0 - pow(b2, (double)n_step));
    const float step = (float)out->lr / c1, inv_sqrt_c2 = 1.0f / sqrtf(c2);
    for (int i = 0; i < t->n_params; i++)
        KL(sae_k_adam(st->p[i].w, st->p[i].g, st->p[i].m, st->p[i].v, (int64_t)t->params[i].n,
                      st->clip_scale, b1, b2, t->o.adam_eps, step, inv_sqrt_c2, st->stream),
           "Adam");
    if (!st->dense)
        KL(sae_k_normalise_rows(st->W_dec, M, d, st->stream), "decoder rows");
    if (st->r_mag_exp)
        KL(sae_k_exp(st->r_mag, M, st->r_mag_exp, st->stream), "exp(r_mag)");
    phase_mark(st, PH_UPDATE);
    const int64_t this_step = t->step;
    t->tokens += B;
    t->step++;
    step_sums s;
    if (dead_latents(st, t, &s, err) != SAE_OK)
        return SAE_ERR;
    t->gpu_alive = M - s.dead;
    out->grad_norm = s.grad_norm;
    if (t->fam == FAMILY_BATCHTOPK && st->n_entries > 0) {  /* train.c's threshold average */
        const float rate = this_step == 0 ? 1.0f : t->o.threshold_rate;
        t->theta = (1.0f - rate) * t->theta + rate * s.min_kept;
    }
    phase_add(st);
    return SAE_OK;
}
