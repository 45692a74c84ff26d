/* kernels.h - the CUDA device code of saed behind a plain-C interface.
 *
 * Every launcher is extern "C", takes device pointers and a stream (a
 * cudaStream_t passed as void *), returns 0 on success or a cudaError_t code,
 * and never exits. Shape letters as in src/sae/sae.h (B, d, M, k). Each
 * kernel has a CPU twin in src/sae and a parity test in tests/gpu.
 *
 * An encode on the GPU is: sae_k_preprocess (x -> x~, in place), one cuBLAS
 * SGEMM z = x~ W_enc (no bias; the host side runs it), then either
 *   - sae_k_topk (topk, ptopk): exactly k (index, value) pairs per row, best
 *     first, or
 *   - sae_k_act_count + sae_k_act_fill (relu, jumprelu, gated, batchtopk at
 *     inference): the non-zeros of each row in index order, as CSR.
 * Rows index z as z + row * M with row an int64_t: B * M can exceed 2^31. */
#ifndef SAE_KERNELS_H
#define SAE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Launches an empty kernel on the current device and waits for it: says
 * whether this binary has code the device can run (cudaErrorNoKernelImage
 * otherwise) and creates the context. */
int sae_k_probe(void);

/* Preprocessing, in place on x [B, d], then x~ = x' - b_dec when b_dec is not
 * NULL. Same numbering as sae_norm in sae.h. Statistics in double, as
 * sae_preprocess in src/sae/encode.c (its CPU twin). */
enum {
    SAE_K_NORM_NONE = 0,
    SAE_K_NORM_CENTER_UNIT_NORM = 1,
    SAE_K_NORM_LAYER_NORM = 2,
    SAE_K_NORM_CONSTANT_SCALE = 3,
};
int sae_k_preprocess(float *x, int64_t B, int d, int norm, float scale, const float *b_dec,
                     void *stream);
/* The same from src: x' into dst (NULL: not kept) and x' - b_dec (b_dec NULL:
 * 0) into dst_sub (NULL: not made); either may be src (training keeps x' and
 * x~ both, from the batch it was given). */
int sae_k_preprocess_to(const float *src, float *dst, float *dst_sub, int64_t B, int d, int norm,
                        float scale, const float *b_dec, void *stream);

/* Elementwise activations on z [B, M] (GEMM output without bias). CPU twins:
 * relu_activate, jumprelu_activate, gated_activate in src/sae/arch.c. */
enum {
    SAE_K_ACT_RELU = 0,     /* f = ReLU(z + b_enc)                                 */
    SAE_K_ACT_JUMPRELU = 1, /* v = z + b_enc; f = v if v > threshold else 0        */
    SAE_K_ACT_GATED = 2,    /* mag = z exp(r_mag) + b_mag; f = mag if z + b_gate > 0
                               and mag > 0 else 0                                  */
};
typedef struct sae_k_act {
    int kind;                  /* SAE_K_ACT_* */
    const float *b_enc;        /* [M] relu, jumprelu */
    const float *threshold;    /* [M] jumprelu */
    const float *b_gate;       /* [M] gated */
    const float *b_mag;        /* [M] gated */
    const float *r_mag_exp;    /* [M] gated: exp(r_mag) */
} sae_k_act;

/* count[r] = number of non-zero f in row r. */
int sae_k_act_count(const float *z, int64_t B, int M, const sae_k_act *act, int32_t *count,
                    void *stream);
/* Writes row r's non-zeros, in index order, at [offsets[r], offsets[r+1]) of
 * indices / values. offsets [B + 1] is the exclusive scan of count. */
int sae_k_act_fill(const float *z, int64_t B, int M, const sae_k_act *act,
                   const int64_t *offsets, int32_t *indices, float *values, void *stream);

/* Per-row top-k over z [B, M]. For each row writes indices[r*k + e] and
 * values[r*k + e], e = 0..k-1, ordered by (score desc, index asc): the same
 * set and order as the CPU's topk_heap over its double scores (arch.c's
 * topk_select / ptopk_select).
 *   topk:  score = z + b_enc (float add, as the CPU), value = ReLU(score)
 *   ptopk: a = z + b_enc; t = (a - mean) * (rstd / beta) with mean and rstd
 *          of a over the row (eps 1e-5, no affine), or mean 0 and rstd 1
 *          without layernorm; score = sigmoid(t) + lambda |a| ranked exactly
 *          in double; value = a.
 * Requires 1 <= k <= min(M, SAE_K_TOPK_MAX). */
#define SAE_K_TOPK_MAX 1024
enum {
    SAE_K_SEL_TOPK = 0,
    SAE_K_SEL_PTOPK = 1,
    /* ptopk in training: score = sigmoid(((a - mean) rstd + g) / beta) +
     * lambda |a|, g = log u - log(1 - u) with u from the Philox word that
     * sae_philox_fill(seed, row0 + r, step) gives latent i (g = 0 without
     * noise); the CPU twin is ptopk_train_row in src/sae/train.c */
    SAE_K_SEL_PTOPK_TRAIN = 2,
};
typedef struct sae_k_sel {
    int kind;                  /* SAE_K_SEL_* */
    const float *b_enc;        /* [M] */
    int layernorm;             /* ptopk */
    double beta;               /* ptopk: beta_final; in training the step's beta */
    double lambda;             /* ptopk: lambda_mag */
    int noise;                 /* PTOPK_TRAIN: 0 for --sigmoid-gate */
    uint64_t seed, step;       /* PTOPK_TRAIN: the noise's key and counter */
    int64_t row0;              /* PTOPK_TRAIN: batch row of z's first row */
} sae_k_sel;
int sae_k_topk(const float *z, int64_t B, int M, int k, const sae_k_sel *sel, int32_t *indices,
               float *values, void *stream);

/* Sparse decode: xhat[r] = b_dec + sum over e in [indptr[r], indptr[r+1]) of
 * values[e] * W_dec[indices[e]]. indptr is relative to indices / values
 * (indptr[0] may be > 0). b_dec NULL: start from 0. CPU twin: cpu_decode in
 * src/sae/backend_cpu.c. */
int sae_k_sparse_decode(const int64_t *indptr, const int32_t *indices, const float *values,
                        const float *W_dec, const float *b_dec, int64_t B, int d, float *xhat,
                        void *stream);

/* ---- training (train.cu; CPU twins in src/sae/train.c and optim.c) ---------
 * Sums that the CPU makes reproducible by a fixed order are fixed-order here
 * too (fixed slices, fixed trees, no float atomics), so a GPU run is
 * deterministic and resumes bit for bit. Entries are the active latents of a
 * batch, by row (CSR rowptr [B + 1]); row[e] is entry e's row. */

/* dst[b, j] = src[b, j] - sub[j] (sub NULL: a copy). */
int sae_k_sub_rows(const float *src, const float *sub, int64_t B, int d, float *dst,
                   void *stream);

/* out[j] = sum over the B rows of X[b, j] - Y[b, j] (Y may be NULL), in
 * double, in fixed row slices added in order (up to 256 of them, as many as
 * SAE_K_COLSUM_SCRATCH / d); scratch holds SAE_K_COLSUM_SCRATCH doubles, and
 * d may not exceed it. */
#define SAE_K_COLSUM_SCRATCH (1 << 21)
int sae_k_colsum(const float *X, const float *Y, int64_t B, int d, double *scratch, double *out,
                 void *stream);

/* out[j] = sum over the B rows of w[b] X[b, j], the same slices, rows of
 * weight 0 skipped (train.c's row_sums with weights). */
int sae_k_weighted_colsum(const float *X, const double *w, int64_t B, int d, double *scratch,
                          double *out, void *stream);

/* dst[j] = (float)((col[j] - sub[j]) / div) (sub NULL: 0). */
int sae_k_col_to_float(const double *col, const double *sub, double div, int d, float *dst,
                       void *stream);

/* The weights of b_dec's input flow (train.c's input_flow), s[i] = dL/db_enc
 * at latent i, or for gated (gb_mag non-NULL) gb_mag exp(r_mag) + gb_gate,
 * in double. */
int sae_k_flow_weights(const float *gb_enc, const float *gb_mag, const float *r_mag_exp,
                       const float *gb_gate, int M, double *s, void *stream);

/* The MSE's pieces and gradient. With e = xh - xp, c = xp - col / B:
 * g = 2 e / B (float, as the CPU); out[0] += sum e^2 and out[1] += sum c^2
 * (row sums, then rows in order; rows [2B] doubles of scratch). */
int sae_k_mse(const float *xh, const float *xp, const double *col, int64_t B, int d, float *g,
              double *rows, double *out, void *stream);

/* AuxK upstream (topk): e = xp - xh, r = aux - e; out[0] = sum r^2 (num),
 * out[1] = sum (e - col / B)^2 (denom); then aux = coef 2 r / denom, or 0
 * when denom is not > 0 (the CPU skips the pass then; adding zeros is the same). */
int sae_k_auxk_upstream(float *aux, const float *xp, const float *xh, const double *col,
                        double coef, int64_t B, int d, double *rows, double *out, void *stream);

/* da[e] = dot(up[row], W_dec[idx[e]]) * mask, mask = (f[e] > 0) when relu
 * (topk's ReLU) else 1: dL/da of each entry given up = dL/d(decoded row). */
int sae_k_entry_grad(const float *up, const float *W_dec, const int32_t *idx, const int32_t *row,
                     const float *f, int64_t n, int d, int relu, float *da, void *stream);

/* row[e] = b for the entries [rowptr[b], rowptr[b + 1]) of each of the B rows. */
int sae_k_rows_of(const int64_t *rowptr, int64_t B, int32_t *row, void *stream);

/* Groups entries by latent, rows ascending inside a latent (the CPU's
 * group_by_latent): latptr [M + 1], order [n] (entry ids). A latent occurs at
 * most once per row. Scratch: bits and prefix, M * ceil(B / 32) words each. */
int sae_k_group_by_latent(const int32_t *idx, const int32_t *row, int64_t n, int64_t B, int M,
                          uint32_t *bits, uint32_t *prefix, int64_t *latptr, int64_t *order,
                          void *stream);

/* Per latent i, over its entries in order: gW_dec[i] (+)= sum f[e] up[row],
 * gW_enc[i] (+)= sum da[e] xt[row], gb_enc[i] (+)= sum da[e] (float adds in
 * order). accumulate 0 writes every latent (zero when it has no entries). */
int sae_k_latent_grads(const int64_t *latptr, const int64_t *order, const int32_t *row,
                       const float *f, const float *da, const float *up, const float *xt, int M,
                       int d, int accumulate, float *gW_dec, float *gW_enc, float *gb_enc,
                       void *stream);

/* G[i] -= dot(G[i], W[i]) W[i] for the M rows of d (unit-norm decoder rows:
 * no gradient along the row). */
int sae_k_orthogonalise_rows(float *G, const float *W, int M, int d, void *stream);
/* W[i] /= ||W[i]|| where the norm is > 0. */
int sae_k_normalise_rows(float *W, int M, int d, void *stream);

/* partial[p] = sum of g^2 (double) over fixed slice p of g [n], p <
 * SAE_K_SUMSQ_PARTS. */
#define SAE_K_SUMSQ_PARTS 256
int sae_k_sumsq(const float *g, int64_t n, double *partial, void *stream);
/* norm = sqrt of the sum of the n partials in order; scale = max_norm / norm
 * as a float when norm > max_norm, else 1 (the global grad-norm clip). */
int sae_k_clip_scale(const double *partials, int n, double max_norm, double *norm, float *scale,
                     void *stream);
/* Adam on n elements, gradient g * scale[0] (optim.c's adam_step after
 * grad_clip); step = lr / (1 - b1^t), inv_sqrt_c2 = 1 / sqrt(1 - b2^t). */
int sae_k_adam(float *w, const float *g, float *m, float *v, int64_t n, const float *scale,
               float b1, float b2, float eps, float step, float inv_sqrt_c2, void *stream);

/* count[0] += the number of entries with f[e] != 0 (l0's numerator). */
int sae_k_count_nonzero(const float *f, int64_t n, int64_t *count, void *stream);
/* last_fired[idx[e]] = now for every entry with f[e] != 0. */
int sae_k_mark_fired(const int32_t *idx, const float *f, int64_t n, int64_t now,
                     int64_t *last_fired, void *stream);
/* Latent i is dead when tokens - last_fired[i] > window. n_dead[0] += the
 * number dead; b_aux (when not NULL) = b_enc where dead, -inf elsewhere (so
 * that top-k over z + b_aux picks among dead latents: AuxK). */
int sae_k_dead_latents(const int64_t *last_fired, int M, int64_t tokens, int64_t window,
                       const float *b_enc, float *b_aux, int64_t *n_dead, void *stream);

/* ---- training, BatchTopK's selection (batchtopk.cu) -------------------------
 * Over v = z + b_enc > 0 of the whole batch [B, M], keys pos_key(v) = the
 * float's bits with the sign bit set (order-preserving for positives). */
/* hist[d] = #keys with (key & mask) == prefix and digit (key >> shift) & 255
 * == d (a radix select's pass; hist is cleared first). */
int sae_k_batch_hist(const float *z, const float *b_enc, int64_t B, int M, uint32_t prefix,
                     uint32_t mask, int shift, unsigned *hist, void *stream);
/* Per row: above[b] = #keys > T, ties[b] = #keys == T. */
int sae_k_batch_count(const float *z, const float *b_enc, int64_t B, int M, uint32_t T,
                      int32_t *above, int32_t *ties, void *stream);
/* Per row, in index order from rowptr[b]: the latents with key > T and the
 * first tie_budget[b] with key == T; idx = latent, f = v. */
int sae_k_batch_fill(const float *z, const float *b_enc, int64_t B, int M, uint32_t T,
                     const int32_t *tie_budget, const int64_t *rowptr, int32_t *idx, float *f,
                     void *stream);
/* out[0] = min of x[0 .. n), n > 0. */
int sae_k_min(const float *x, int64_t n, float *out, void *stream);

/* ---- training, dense architectures (train_dense.cu) -------------------------
 * standard: f = ReLU(z + b_enc); gated: pi_gate = z + b_gate, pi_mag = z
 * exp(r_mag) + b_mag, f = pi_mag where both are > 0. CPU twins: forward_dense
 * and finish_dense in src/sae/train.c. */
typedef struct sae_k_dense {
    int gated;
    const float *b_enc;                         /* standard */
    const float *b_gate, *b_mag, *r_mag_exp;    /* gated */
} sae_k_dense;

/* f [B, M] from z, gated's pi_gate into gate_in, fired[i] = 1 for latents
 * with a non-zero f; out[0] += the penalty sum, sum over rows of sum_i f
 * ||W_dec,i|| (standard) or ReLU(pi_gate) ||W_dec,i|| (gated), in double
 * (rows: 2B doubles of scratch). */
int sae_k_dense_forward(const float *z, int64_t B, int M, const sae_k_dense *p,
                        const float *norms, float *f, float *gate_in, uint8_t *fired,
                        double *rows, double *out, void *stream);
/* standard: df = f > 0 ? df + l1 norms[i] : 0 (dL/dz from dL/df), in place. */
int sae_k_relu_grad(const float *f, int64_t B, int M, const float *norms, float l1, float *df,
                    void *stream);
/* G[i] += (float)(l1 s[i] / norms[i]) W[i] for the M rows of d. */
int sae_k_add_norm_grad(float *G, const float *W, const double *s, const float *norms,
                        float l1, int M, int d, void *stream);
/* dst = ReLU(src), n elements. */
int sae_k_relu_copy(const float *src, int64_t n, float *dst, void *stream);
/* gated's auxiliary loss: e = aux - xp; out[0] += sum e^2; aux = 2 e / B. */
int sae_k_gated_aux(float *aux, const float *xp, int64_t B, int d, double *rows, double *out,
                    void *stream);
/* gated's per-element backward: df = dpm exp(r_mag) + dpg in place; dpm into
 * f_dpm, dpg into aux_df (which held dL/dpi_gate's auxiliary part), and
 * dpm z exp(r_mag) into z, for the column sums of the bias gradients. */
int sae_k_gated_grad(float *z, const float *gate_in, float *df, float *aux_df, float *f_dpm,
                     const sae_k_dense *p, const float *norms, float l1, int64_t B, int M,
                     void *stream);
/* last_fired[i] = now where fired[i], and fired cleared. */
int sae_k_mark_fired_flags(uint8_t *fired, int M, int64_t now, int64_t *last_fired,
                           void *stream);
/* out = expf(in), n elements. */
int sae_k_exp(const float *in, int n, float *out, void *stream);
/* norms[i] = ||W[i]|| (float, fixed order) for the M rows of d. */
int sae_k_row_norms(const float *W, int M, int d, float *norms, void *stream);
/* dst[b] = v for the B rows of d. */
int sae_k_broadcast_rows(const float *v, int64_t B, int d, float *dst, void *stream);

#ifdef __cplusplus
}
#endif

#endif
