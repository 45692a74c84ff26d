/* train_impl.h - the trainer's insides, shared by train.c (the CPU step, the
 * reference) and train_cuda.c (the same step on the GPU). Nothing else
 * includes it: the rest of saed sees train.h. */
#ifndef SAE_TRAIN_IMPL_H
#define SAE_TRAIN_IMPL_H

#include <stdint.h>

#include "optim.h"
#include "train.h"

/* Active latents of a batch, by row: entries [rowptr[b], rowptr[b+1]). */
typedef struct entries {
    int64_t *rowptr;            /* [B + 1] */
    int32_t *idx;               /* latent */
    int32_t *row;               /* row of each entry (for the by-latent pass) */
    float *a;                   /* pre-activation (with bias) */
    float *f;                   /* code value */
    float *mask;                /* df -> da factor: 1, or 0 where ReLU cut it */
    float *da;                  /* dL/da */
    int64_t n, cap;
    /* by-latent view, rebuilt each backward: the entries' rows, codes and
     * dL/da grouped by latent, rows ascending inside a latent */
    int64_t *latptr;            /* [M + 1] */
    int64_t *fill;              /* [M], the grouping's cursor */
    int32_t *lat_row;
    float *lat_f, *lat_da;
} entries;

typedef enum { FAMILY_TOPK, FAMILY_PTOPK, FAMILY_BATCHTOPK, FAMILY_RELU, FAMILY_GATED } family;

typedef struct train_gpu train_gpu;

struct trainer {
    train_options o;
    family fam;
    sae_model *m;
    int d, M, B;
    param params[8];
    int n_params;
    int64_t step, tokens;
    int64_t *last_fired;        /* [M] tokens seen when the latent last fired */
    float theta;                /* batchtopk threshold */
    float batch_min_kept;       /* batchtopk: smallest value kept this batch */
    float *aux_rows;            /* AuxK: [B, d] residual reconstruction */
    float *scratch;             /* per-thread selection buffers, kept across steps */
    size_t scratch_floats;
    int initialised;            /* b_dec set from the first batch */
    float *xp, *xt, *xh, *g;
    float *slices;              /* latent_grads: [2, B, VEC_SLICE] column slices */
    float *z;                   /* [R or B, M] */
    float *dense_f, *dense_d;   /* dense families: [B, M] codes and their gradient */
    float *gate_in;             /* gated: pi_gate [B, M] */
    entries main, aux;
    /* On a GPU (train_cuda.c): the weights, gradients, Adam moments and
     * last_fired live there, and the host copies above are refreshed only by
     * train_cuda_to_host (trainer_model, trainer_grad, trainer_save do). */
    train_gpu *gpu;
    int64_t gpu_alive;          /* alive latents after the last GPU step */
};

int64_t train_warmup_steps(const train_options *o);
int64_t train_dead_window(const train_options *o);

/* train_cuda.c; without CUDA, train_cuda_attach says so and the rest are
 * never called. */
int train_cuda_attach(trainer *t, int device, sae_error *err);
void train_cuda_detach(trainer *t);
int train_cuda_loss_and_grads(trainer *t, const float *x, step_stats *st, sae_error *err);
int train_cuda_step(trainer *t, const float *x, step_stats *st, sae_error *err);
float *train_cuda_batch_buffer(trainer *t);
/* Copies the GPU's state to the host trainer: weights, Adam moments,
 * last_fired, and the gradients when grads is set. */
int train_cuda_to_host(const trainer *t, int grads, sae_error *err);

#endif
