/* optim.h - Adam, the global grad-norm clip and the schedules of the
 * training recipe (DESIGN.md section 3). */
#ifndef SAE_OPTIM_H
#define SAE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

/* One trained tensor: weights, gradient and Adam moments, n floats each.
 * unit_rows > 0: the weights are rows of that many floats, each scaled back
 * to unit norm right after its update (the top-k family's decoder). */
typedef struct param {
    const char *name;
    float *w, *g, *m, *v;
    size_t n;
    int unit_rows;
} param;

typedef struct adam_config {
    float lr, beta1, beta2, eps;
} adam_config;

/* sqrt of the sum of squares of every gradient (double accumulation). */
double grad_global_norm(const param *ps, int n);
/* Scales every gradient by max_norm / norm when norm > max_norm. */
void grad_clip(param *ps, int n, double norm, double max_norm);
/* One Adam step at step number t (1-based, for bias correction), learning
 * rate lr. Dense: every element moves, as PyTorch's Adam does. Unit rows are
 * renormalised as each is updated, while they are in cache. */
void adam_step(param *ps, int n, const adam_config *c, float lr, int64_t t);

/* Linear warmup to lr over `warmup` steps, then cosine decay to 0 at `total`. */
double lr_at(double lr, int64_t step, int64_t warmup, int64_t total);
/* ptopk temperature: beta0 through warmup, then geometric to beta_end at total. */
double beta_at(double beta0, double beta_end, int64_t step, int64_t warmup, int64_t total);

#endif
