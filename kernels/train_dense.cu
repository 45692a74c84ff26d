/* train_dense.cu - the training step's kernels for the dense architectures,
 * standard (ReLU) and gated (train.c's forward_dense and finish_dense are
 * the CPU twins; src/sae/train_cuda.c runs them around cuBLAS GEMMs).
 * Shapes as in kernels.h; z, f and the gradients' [B, M] arrays are dense. */
#include "launch.cuh"

#include <stdint.h>

#include "kernels.h"
#include "reduce.cuh"

/* ---- the forward ------------------------------------------------------------ */

/* One block per row: f (and gated's pi_gate), the row's sparsity penalty
 * sum in double (rows[2 b]; rows[2 b + 1] = 0) and the latents that fired. */
static __global__ void __launch_bounds__(RED_THREADS)
dense_forward_kernel(const float *z, int M, sae_k_dense p, const float *norms, float *f,
                     float *gate_in, uint8_t *fired, double *rows)
{
    __shared__ double red[RED_THREADS];
    const int64_t b = blockIdx.x;
    double sparsity = 0.0;
    for (int i = threadIdx.x; i < M; i += RED_THREADS) {
        const int64_t q = b * M + i;
        float out;
        if (p.gated) {
            const float pg = __fadd_rn(z[q], p.b_gate[i]);
            const float pm = __fadd_rn(__fmul_rn(z[q], p.r_mag_exp[i]), p.b_mag[i]);
            gate_in[q] = pg;
            out = pg > 0.0f && pm > 0.0f ? pm : 0.0f;
            if (pg > 0.0f)
                sparsity = __dadd_rn(sparsity, __dmul_rn((double)pg, (double)norms[i]));
        } else {
            const float a = __fadd_rn(z[q], p.b_enc[i]);
            out = a > 0.0f ? a : 0.0f;
            sparsity = __dadd_rn(sparsity, __dmul_rn((double)out, (double)norms[i]));
        }
        f[q] = out;
        if (out != 0.0f)
            fired[i] = 1;           /* every writer writes the same value */
    }
    store_row_pair(sparsity, 0.0, b, rows, red);
}

extern "C" int sae_k_dense_forward(const float *z, int64_t B, int M, const sae_k_dense *p,
                                   const float *norms, float *f, float *gate_in, uint8_t *fired,
                                   double *rows, double *out, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(dense_forward_kernel, (unsigned)B, RED_THREADS, stream, z, M, *p, norms, f, gate_in,
           fired, rows);
    LAUNCH(sum_row_pairs_kernel, 1, RED_THREADS, stream, rows, B, out);
    return (int)cudaGetLastError();
}

/* ---- the backward ------------------------------------------------------------- */

/* standard: df = f > 0 ? df + l1 ||W_dec,i|| : 0, in place. */
static __global__ void relu_grad_kernel(const float *f, int64_t n, int M, const float *norms,
                                        float l1, float *df)
{
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n;
         q += (int64_t)gridDim.x * blockDim.x)
        df[q] = f[q] > 0.0f ? __fadd_rn(df[q], __fmul_rn(l1, norms[q % M])) : 0.0f;
}

extern "C" int sae_k_relu_grad(const float *f, int64_t B, int M, const float *norms, float l1,
                               float *df, void *stream)
{
    if (B <= 0)
        return 0;
    const int64_t n = B * M;
    LAUNCH(relu_grad_kernel, blocks_for(n, 1024), 256, stream, f, n, M, norms, l1, df);
    return (int)cudaGetLastError();
}

/* G[i] += (float)(l1 s[i] / norms[i]) W[i]: the sparsity penalty's pull on
 * the decoder rows (s[i] = the batch's sum of latent i's penalty weight). */
static __global__ void add_norm_grad_kernel(float *G, const float *W, const double *s,
                                            const float *norms, float l1, int M, int d)
{
    const int64_t n = (int64_t)M * d;
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n;
         q += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = q / d;
        const float c = (float)((double)l1 * s[i] / (double)norms[i]);
        G[q] = __fadd_rn(G[q], __fmul_rn(c, W[q]));
    }
}

extern "C" int sae_k_add_norm_grad(float *G, const float *W, const double *s, const float *norms,
                                   float l1, int M, int d, void *stream)
{
    if (M <= 0 || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(add_norm_grad_kernel, blocks_for((int64_t)M * d, 1024), 256, stream, G, W, s, norms,
           l1, M, d);
    return (int)cudaGetLastError();
}

/* gated: x = ReLU(pi_gate), in place of what f held. */
static __global__ void relu_copy_kernel(const float *src, int64_t n, float *dst)
{
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n;
         q += (int64_t)gridDim.x * blockDim.x)
        dst[q] = src[q] > 0.0f ? src[q] : 0.0f;
}

extern "C" int sae_k_relu_copy(const float *src, int64_t n, float *dst, void *stream)
{
    if (n <= 0)
        return 0;
    LAUNCH(relu_copy_kernel, blocks_for(n, 1024), 256, stream, src, n, dst);
    return (int)cudaGetLastError();
}

/* gated's auxiliary reconstruction, one block per row: e = aux - xp (float),
 * rows[2 b] = sum e^2 (double), aux = 2 e / B (float, as the CPU). */
static __global__ void __launch_bounds__(RED_THREADS)
gated_aux_kernel(float *aux, const float *xp, int64_t B, int d, double *rows)
{
    __shared__ double red[RED_THREADS];
    const int64_t b = blockIdx.x;
    double acc = 0.0;
    for (int j = threadIdx.x; j < d; j += RED_THREADS) {
        const int64_t q = b * d + j;
        const float e = __fsub_rn(aux[q], xp[q]);
        acc = __dadd_rn(acc, __dmul_rn((double)e, (double)e));
        aux[q] = __fdiv_rn(__fmul_rn(2.0f, e), (float)B);
    }
    store_row_pair(acc, 0.0, b, rows, red);
}

extern "C" int sae_k_gated_aux(float *aux, const float *xp, int64_t B, int d, double *rows,
                               double *out, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(gated_aux_kernel, (unsigned)B, RED_THREADS, stream, aux, xp, B, d, rows);
    LAUNCH(sum_row_pairs_kernel, 1, RED_THREADS, stream, rows, B, out);
    return (int)cudaGetLastError();
}

/* gated, per element (train.c's finish_dense): dpm = dL/dpi_mag, dpg =
 * dL/dpi_gate; then df = dpm exp(r_mag) + dpg (dL/dz), and for the bias
 * gradients' column sums: dpm into f_dpm, dpg into aux_df, dpm z exp(r_mag)
 * into z. */
static __global__ void gated_grad_kernel(float *z, const float *gate_in, float *df,
                                         float *aux_df, float *f_dpm, sae_k_dense p,
                                         const float *norms, float l1, int64_t n, int M)
{
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n;
         q += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)(q % M);
        const float pg = gate_in[q], zq = z[q], rexp = p.r_mag_exp[i];
        const float pm = __fadd_rn(__fmul_rn(zq, rexp), p.b_mag[i]);
        const float dpm = pg > 0.0f && pm > 0.0f ? df[q] : 0.0f;
        const float dpg = pg > 0.0f ? __fadd_rn(__fmul_rn(l1, norms[i]), aux_df[q]) : 0.0f;
        z[q] = __fmul_rn(__fmul_rn(dpm, zq), rexp);
        f_dpm[q] = dpm;
        aux_df[q] = dpg;
        df[q] = __fadd_rn(__fmul_rn(dpm, rexp), dpg);
    }
}

extern "C" int sae_k_gated_grad(float *z, const float *gate_in, float *df, float *aux_df,
                                float *f_dpm, const sae_k_dense *p, const float *norms, float l1,
                                int64_t B, int M, void *stream)
{
    if (B <= 0)
        return 0;
    const int64_t n = B * M;
    LAUNCH(gated_grad_kernel, blocks_for(n, 1024), 256, stream, z, gate_in, df, aux_df, f_dpm,
           *p, norms, l1, n, M);
    return (int)cudaGetLastError();
}

/* ---- the update ------------------------------------------------------------------ */

/* last_fired[i] = now where fired[i]; fired is cleared for the next step. */
static __global__ void mark_fired_flags_kernel(uint8_t *fired, int M, int64_t now,
                                               int64_t *last_fired)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < M; i += gridDim.x * blockDim.x)
        if (fired[i]) {
            last_fired[i] = now;
            fired[i] = 0;
        }
}

extern "C" int sae_k_mark_fired_flags(uint8_t *fired, int M, int64_t now, int64_t *last_fired,
                                      void *stream)
{
    if (M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(mark_fired_flags_kernel, blocks_for(M, 256), 256, stream, fired, M, now, last_fired);
    return (int)cudaGetLastError();
}

/* out[i] = expf(in[i]): gated's exp(r_mag) after each update. */
static __global__ void exp_kernel(const float *in, int n, float *out)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = expf(in[i]);
}

extern "C" int sae_k_exp(const float *in, int n, float *out, void *stream)
{
    if (n <= 0)
        return 0;
    LAUNCH(exp_kernel, blocks_for(n, 256), 256, stream, in, n, out);
    return (int)cudaGetLastError();
}
