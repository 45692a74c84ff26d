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
};
typedef struct sae_k_sel {
    int kind;                  /* SAE_K_SEL_* */
    const float *b_enc;        /* [M] */
    int layernorm;             /* ptopk */
    double beta;               /* ptopk: beta_final */
    double lambda;             /* ptopk: lambda_mag */
} sae_k_sel;
int sae_k_topk(const float *z, int64_t B, int M, int k, const sae_k_sel *sel, int32_t *indices,
               float *values, void *stream);

/* Sparse decode: xhat[r] = b_dec + sum over e in [indptr[r], indptr[r+1]) of
 * values[e] * W_dec[indices[e]]. indptr is relative to indices / values
 * (indptr[0] may be > 0). CPU twin: cpu_decode in src/sae/backend_cpu.c. */
int sae_k_sparse_decode(const int64_t *indptr, const int32_t *indices, const float *values,
                        const float *W_dec, const float *b_dec, int64_t B, int d, float *xhat,
                        void *stream);

#ifdef __cplusplus
}
#endif

#endif
