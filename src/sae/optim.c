/* optim.c - Adam and the schedules. Loops are plain and per-element so the
 * compiler vectorises them and the order of operations is fixed: a resumed
 * run reproduces an uninterrupted one bit for bit. */
#include <math.h>

#include "optim.h"
#include "vec.h"

/* Partial sums over fixed slices, added in order: the same bits whatever the
 * thread count or scheduling (an OpenMP reduction combines in arrival order). */
#define NORM_SLICES 64

double grad_global_norm(const param *ps, int n)
{
    double total = 0.0;
    for (int p = 0; p < n; p++) {
        double part[NORM_SLICES] = {0};
        const float *g = ps[p].g;
        const size_t len = ps[p].n, per = (len + NORM_SLICES - 1) / NORM_SLICES;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < NORM_SLICES; c++) {
            size_t lo = (size_t)c * per, hi = lo + per < len ? lo + per : len;
            part[c] = lo < hi ? vec_sum_squares(g + lo, hi - lo) : 0.0;
        }
        for (int c = 0; c < NORM_SLICES; c++)
            total += part[c];
    }
    return sqrt(total);
}

void grad_clip(param *ps, int n, double norm, double max_norm)
{
    if (!(norm > max_norm))
        return;
    const float scale = (float)(max_norm / norm);
    for (int p = 0; p < n; p++) {
        float *g = ps[p].g;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < ps[p].n; i++)
            g[i] *= scale;
    }
}

/* Adam's update of elements lo..hi (step = lr / c1, and 1 / sqrt(c2)); a
 * unit row (lo..hi one row) is then scaled back to unit norm. Built for AVX2
 * too (CLONES): under -std=c11 nothing is contracted, so every build gives
 * the same bits, and the divisions and square roots at SSE width had made
 * the step compute-bound (18.5 -> 16 ms for 2 x 9.4M elements). */
CLONES static void adam_elements(const param *p, size_t lo, size_t hi, float b1, float b2,
                                 float eps, float step, float inv_sqrt_c2)
{
    float *w = p->w, *m = p->m, *v = p->v;
    const float *g = p->g;
    for (size_t i = lo; i < hi; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= step * m[i] / (sqrtf(v[i]) * inv_sqrt_c2 + eps);
    }
    if (p->unit_rows > 0) {
        const float norm = sqrtf(vec_dot(w + lo, w + lo, (int)(hi - lo)));
        if (norm > 0.0f)
            for (size_t i = lo; i < hi; i++)
                w[i] /= norm;
    }
}

void adam_step(param *ps, int n, const adam_config *c, float lr, int64_t t)
{
    const float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    const float c1 = (float)(1.0 - pow(b1, (double)t));
    const float c2 = (float)(1.0 - pow(b2, (double)t));
    const float step = lr / c1, inv_sqrt_c2 = 1.0f / sqrtf(c2);
    for (int p = 0; p < n; p++) {
        /* in parts: unit rows, or runs of 4096 elements */
        const size_t len = ps[p].unit_rows > 0 ? (size_t)ps[p].unit_rows : 4096;
        const size_t parts = (ps[p].n + len - 1) / len;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < parts; r++) {
            const size_t lo = r * len, hi = lo + len < ps[p].n ? lo + len : ps[p].n;
            adam_elements(&ps[p], lo, hi, b1, b2, eps, step, inv_sqrt_c2);
        }
    }
}

double lr_at(double lr, int64_t step, int64_t warmup, int64_t total)
{
    if (step < warmup)
        return lr * (double)(step + 1) / (double)warmup;
    if (total <= warmup)
        return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    return lr * 0.5 * (1.0 + cos(M_PI * progress));
}

double beta_at(double beta0, double beta_end, int64_t step, int64_t warmup, int64_t total)
{
    if (step < warmup || total <= warmup)
        return beta0;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    return beta0 * pow(beta_end / beta0, progress);
}
