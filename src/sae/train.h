/* train.h - training an SAE: the seed paper's Probabilistic TopK recipe and
 * its baselines (DESIGN.md section 3), on the CPU.
 *
 * A trainer owns a model, its gradients and Adam state, and the state that
 * makes a run resumable bit for bit: step, tokens seen, when each latent last
 * fired, batchtopk's threshold. One step = preprocess, one encoder GEMM,
 * selection, sparse decode, sparse backward (O(B k d) for the top-k family;
 * dense GEMMs only for relu and gated), clip, Adam, decoder renorm. */
#ifndef SAE_TRAIN_H
#define SAE_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "sae.h"

typedef struct train_options {
    const char *arch;           /* ptopk, topk, standard (relu), gated, batchtopk */
    int d_sae, k;
    int64_t steps;
    int batch;                  /* rows per step (8192) */
    float lr;                   /* 5e-4 */
    float adam_beta1, adam_beta2, adam_eps;   /* 0.9, 0.99, 1e-8 */
    float clip;                 /* global grad-norm clip (10) */
    int64_t warmup;             /* steps; < 0: min(20000, steps / 10) */
    uint64_t seed;
    sae_norm normalize;         /* center_unit_norm */
    float norm_scale;           /* constant_scale only */
    bool apply_b_dec_to_input;  /* true */
    /* ptopk */
    float beta0, beta_end, lambda_mag;        /* 5.0, 1e-4, 1e-4 */
    bool no_magnitude, no_layernorm, sigmoid_gate;
    /* relu and gated: sparsity coefficient */
    float l1_coef;              /* 5.0 */
    /* topk: AuxK */
    bool auxk;
    float auxk_coef;            /* 1/32 */
    int64_t dead_window;        /* tokens; < 0: min(10M, a quarter of the run) */
    /* batchtopk: threshold moving-average rate */
    float threshold_rate;       /* 0.01 */
} train_options;

void train_options_default(train_options *o);
/* Checks ranges and combinations; the message names the option. */
int train_options_validate(const train_options *o, int d_in, sae_error *err);
/* The options as a JSON object (text, malloc'd): the checkpoint's provenance. */
char *train_options_to_json(const train_options *o);
int train_options_from_json(const char *text, train_options *o, sae_error *err);

/* What one step measured. */
typedef struct step_stats {
    double loss, mse, fvu, l0, aux_loss, grad_norm;
    double lr, beta;
} step_stats;

typedef struct trainer trainer;

/* A trainer for a fresh model of d_in inputs, initialised per the recipe on
 * the first batch it sees. */
int trainer_new(const train_options *o, int d_in, trainer **out, sae_error *err);
/* A trainer around an existing model (weights copied; used by tests and by
 * resume). The model's architecture must match o->arch. */
int trainer_from_model(const train_options *o, const sae_model *m, trainer **out,
                       sae_error *err);
void trainer_free(trainer *t);

/* Where the steps run: "cpu" (the default), "cuda" / "cuda:N" (fails when
 * that GPU or this architecture on it is not available), or "auto" (the GPU
 * when it can, else the CPU, said once in the log). Also moves a trainer
 * back to the CPU. */
int trainer_use_device(trainer *t, const char *device, sae_error *err);

/* Where to put the next batch (batch x d_in floats) when the trainer is on a
 * GPU: page-locked memory, so the copy to the device runs at full speed.
 * NULL on the CPU (any memory will do). Valid until trainer_use_device or
 * trainer_free. */
float *trainer_batch_buffer(trainer *t);

/* One step on raw rows x [batch, d_in]. On a GPU, x NULL steps on the batch
 * the last step left there (benchmarks: the step without the host copy). */
int trainer_step(trainer *t, const float *x, step_stats *st, sae_error *err);
/* The first half of a step: loss and every gradient, nothing updated. For
 * gradient checks. */
int trainer_loss_and_grads(trainer *t, const float *x, step_stats *st, sae_error *err);

sae_model *trainer_model(trainer *t);
const train_options *trainer_options(const trainer *t);
int64_t trainer_step_count(const trainer *t);
int64_t trainer_alive(const trainer *t);

/* Gradients and Adam moments by parameter name (W_enc_T, W_dec, b_dec,
 * b_enc, b_gate, b_mag, r_mag), for tests. NULL when absent. */
const float *trainer_grad(const trainer *t, const char *name, size_t *n);

/* Saves the model (native) and the training state (Adam moments, step,
 * tokens, last firing of each latent, options, and the caller's extra JSON
 * object, e.g. the loader position) into dir; trainer_load restores all of it,
 * with the options saved there. */
int trainer_save(const trainer *t, const char *dir, const char *extra_state_json,
                 sae_error *err);
int trainer_load(const char *dir, trainer **out, char **extra_state_json, sae_error *err);

/* Progress of a whole run, reported once per step. */
typedef struct train_progress {
    int64_t step, steps, tokens;
    double tokens_per_s, eta_s, elapsed_s;
    int64_t alive, dead;
    step_stats stats;
} train_progress;
typedef void (*train_progress_fn)(void *ctx, const train_progress *p);

/* Trains on a corpus into out_dir (a model directory at the end; checkpoints
 * under out_dir/checkpoints every checkpoint_every steps). With resume, it
 * continues from the latest checkpoint there. A NaN loss stops the run with
 * an error, keeping the last good checkpoint. */
typedef struct train_run_config {
    const char *corpus;
    const char *out_dir;
    const char *device;         /* trainer_use_device's; NULL: the CPU */
    int64_t checkpoint_every;   /* 0: only the final model */
    bool resume;
    int64_t shuffle_rows;       /* 0: loader default */
    train_progress_fn progress;
    void *progress_ctx;
    volatile int *stop;         /* set to 1 (e.g. by SIGTERM) to checkpoint and stop */
} train_run_config;

int train_run(const train_options *o, const train_run_config *rc, sae_error *err);

#endif
