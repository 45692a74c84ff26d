/* train.cu - the training step's kernels beside the GEMMs and the selection
 * (kernels.h lists them; src/sae/train_cuda.c runs them in order). CPU twins
 * are in src/sae/train.c and optim.c.
 *
 * Determinism: every sum whose order the CPU fixes is fixed here too, by fixed
 * slices and trees (never float atomics), so the same inputs give the same
 * bits on every run and a resumed run matches an uninterrupted one. Integer
 * atomics (counts, bit sets) are exact and may run in any order.
 *
 * Shapes as in kernels.h: B rows, d inputs, M latents; entries are the
 * active latents, entry e in row row[e]. */
#include "launch.cuh"

#include <stdint.h>

#include "kernels.h"
#include "reduce.cuh"

/* ---- rows and columns ------------------------------------------------------ */

static __global__ void sub_rows_kernel(const float *src, const float *sub, int64_t n, int d,
                                       float *dst)
{
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x)
        dst[p] = sub ? __fsub_rn(src[p], sub[p % d]) : src[p];
}

extern "C" int sae_k_sub_rows(const float *src, const float *sub, int64_t B, int d, float *dst,
                              void *stream)
{
    if (B <= 0)
        return 0;
    const int64_t n = B * d;
    LAUNCH(sub_rows_kernel, blocks_for(n, 256), 256, stream, src, sub, n, d, dst);
    return (int)cudaGetLastError();
}

static __global__ void broadcast_rows_kernel(const float *v, int64_t n, int d, float *dst)
{
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x)
        dst[p] = v[p % d];
}

extern "C" int sae_k_broadcast_rows(const float *v, int64_t B, int d, float *dst, void *stream)
{
    if (B <= 0)
        return 0;
    const int64_t n = B * d;
    LAUNCH(broadcast_rows_kernel, blocks_for(n, 256), 256, stream, v, n, d, dst);
    return (int)cudaGetLastError();
}

/* Row slices of a column sum over d columns: enough that narrow sums (d 768:
 * six blocks of columns) still fill the GPU, at most SAE_K_COLSUM_SCRATCH
 * doubles of partial sums. */
static int colsum_slices(int d)
{
    const int s = SAE_K_COLSUM_SCRATCH / d;
    return s > 256 ? 256 : s;
}

/* Slice s of the rows, one thread per column: part[s][j]. Rows in order;
 * with weights, rows of weight 0 are skipped (train.c's row_sums). */
static __global__ void colsum_part_kernel(const float *X, const float *Y, const double *w,
                                          int64_t B, int d, int col_blocks, int slices,
                                          double *part)
{
    const int s = blockIdx.x / col_blocks;
    const int j = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
    if (j >= d)
        return;
    const int64_t lo = B * s / slices, hi = B * (s + 1) / slices;
    double acc = 0.0;
    for (int64_t b = lo; b < hi; b++) {
        const float x = X[b * d + j];
        if (w)
            acc = w[b] != 0.0 ? __dadd_rn(acc, __dmul_rn(w[b], (double)x)) : acc;
        else
            acc = __dadd_rn(acc, (double)(Y ? __fsub_rn(x, Y[b * d + j]) : x));
    }
    part[(int64_t)s * d + j] = acc;
}

/* One block per column: the slices' partial sums in the fixed tree. */
static __global__ void __launch_bounds__(RED_THREADS)
colsum_total_kernel(const double *part, int d, int slices, double *out)
{
    __shared__ double red[RED_THREADS];
    const int j = blockIdx.x;
    double acc = 0.0;
    for (int s = threadIdx.x; s < slices; s += RED_THREADS)
        acc = __dadd_rn(acc, part[(int64_t)s * d + j]);
    acc = block_sum_fixed(acc, red);
    if (threadIdx.x == 0)
        out[j] = acc;
}

static int colsum(const float *X, const float *Y, const double *w, int64_t B, int d,
                  double *scratch, double *out, void *stream)
{
    if (d <= 0 || d > SAE_K_COLSUM_SCRATCH || B < 0)
        return (int)cudaErrorInvalidValue;
    const unsigned cols = (unsigned)((d + 127) / 128);
    const int slices = colsum_slices(d);
    LAUNCH(colsum_part_kernel, cols * slices, 128, stream, X, Y, w, B, d, (int)cols, slices,
           scratch);
    LAUNCH(colsum_total_kernel, (unsigned)d, RED_THREADS, stream, scratch, d, slices, out);
    return (int)cudaGetLastError();
}

extern "C" int sae_k_colsum(const float *X, const float *Y, int64_t B, int d, double *scratch,
                            double *out, void *stream)
{
    return colsum(X, Y, NULL, B, d, scratch, out, stream);
}

extern "C" int sae_k_weighted_colsum(const float *X, const double *w, int64_t B, int d,
                                     double *scratch, double *out, void *stream)
{
    return colsum(X, NULL, w, B, d, scratch, out, stream);
}

static __global__ void col_to_float_kernel(const double *col, const double *sub, double div,
                                           int d, float *dst)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < d)
        dst[j] = (float)((sub ? __dsub_rn(col[j], sub[j]) : col[j]) / div);
}

extern "C" int sae_k_col_to_float(const double *col, const double *sub, double div, int d,
                                  float *dst, void *stream)
{
    LAUNCH(col_to_float_kernel, (unsigned)((d + 127) / 128), 128, stream, col, sub, div, d, dst);
    return (int)cudaGetLastError();
}

static __global__ void flow_weights_kernel(const float *gb_enc, const float *gb_mag,
                                           const float *r_mag_exp, const float *gb_gate, int M,
                                           double *s)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M)
        s[i] = gb_mag ? __dadd_rn(__dmul_rn((double)gb_mag[i], (double)r_mag_exp[i]),
                                  (double)gb_gate[i])
                      : (double)gb_enc[i];
}

extern "C" int sae_k_flow_weights(const float *gb_enc, const float *gb_mag,
                                  const float *r_mag_exp, const float *gb_gate, int M, double *s,
                                  void *stream)
{
    LAUNCH(flow_weights_kernel, (unsigned)((M + 127) / 128), 128, stream, gb_enc, gb_mag,
           r_mag_exp, gb_gate, M, s);
    return (int)cudaGetLastError();
}

/* One warp per row: g = 2 e / B, and the row's sum of e^2 and c^2. (A
 * block per row spent more on its two block reductions than on the row.) */
static __global__ void mse_kernel(const float *xh, const float *xp, const double *col, int64_t B,
                                  int d, float *g, double *rows)
{
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t b = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; b < B; b += warps) {
        double sq = 0.0, var = 0.0;
        for (int j = threadIdx.x & 31; j < d; j += 32) {
            const int64_t p = b * d + j;
            const double e = __dsub_rn((double)xh[p], (double)xp[p]);
            const double c = __dsub_rn((double)xp[p], col[j] / (double)B);
            sq = __dadd_rn(sq, __dmul_rn(e, e));
            var = __dadd_rn(var, __dmul_rn(c, c));
            g[p] = (float)(2.0 * e / (double)B);
        }
        store_row_pair_warp(sq, var, b, rows);
    }
}

extern "C" int sae_k_mse(const float *xh, const float *xp, const double *col, int64_t B, int d,
                         float *g, double *rows, double *out, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(mse_kernel, blocks_for(B, 8), 256, stream, xh, xp, col, B, d, g, rows);
    LAUNCH(sum_row_pairs_kernel, 1, RED_THREADS, stream, rows, B, out);
    return (int)cudaGetLastError();
}

/* AuxK, first half: per row, sum (aux - e)^2 and sum (e - col / B)^2. */
static __global__ void __launch_bounds__(RED_THREADS)
auxk_rows_kernel(const float *aux, const float *xp, const float *xh, const double *col,
                 int64_t B, int d, double *rows)
{
    __shared__ double red[RED_THREADS];
    const int64_t b = blockIdx.x;
    double num = 0.0, denom = 0.0;
    for (int j = threadIdx.x; j < d; j += RED_THREADS) {
        const int64_t p = b * d + j;
        const double e = (double)__fsub_rn(xp[p], xh[p]);    /* a float, as the CPU's */
        const double c = __dsub_rn(e, col[j] / (double)B);
        const double r = __dsub_rn((double)aux[p], e);
        num = __dadd_rn(num, __dmul_rn(r, r));
        denom = __dadd_rn(denom, __dmul_rn(c, c));
    }
    store_row_pair(num, denom, b, rows, red);
}

/* AuxK, second half: aux = coef 2 (aux - e) / denom, or 0 without a residual
 * (aux - e in float, as the CPU). */
static __global__ void auxk_grad_kernel(float *aux, const float *xp, const float *xh,
                                        const double *sums, double coef, int64_t n)
{
    const double denom = sums[1];
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x) {
        const float r = __fsub_rn(aux[p], __fsub_rn(xp[p], xh[p]));
        aux[p] = denom > 0.0 ? (float)(coef * 2.0 * (double)r / denom) : 0.0f;
    }
}

extern "C" int sae_k_auxk_upstream(float *aux, const float *xp, const float *xh,
                                   const double *col, double coef, int64_t B, int d,
                                   double *rows, double *out, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(auxk_rows_kernel, (unsigned)B, RED_THREADS, stream, aux, xp, xh, col, B, d, rows);
    LAUNCH(sum_row_pairs_kernel, 1, RED_THREADS, stream, rows, B, out);
    LAUNCH(auxk_grad_kernel, blocks_for(B * d, 256), 256, stream, aux, xp, xh, out, coef, B * d);
    return (int)cudaGetLastError();
}

/* ---- the sparse backward ----------------------------------------------------- */

/* One warp per entry: da = dot(up[row], W_dec[idx]) * mask. */
static __global__ void entry_grad_kernel(const float *up, const float *W_dec, const int32_t *idx,
                                         const int32_t *row, const float *f, int64_t n, int d,
                                         int relu, float *da)
{
    const int lane = threadIdx.x & 31;
    const int64_t e = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    if (e >= n)             /* the same for the whole warp */
        return;
    const float *u = up + (int64_t)row[e] * d, *w = W_dec + (int64_t)idx[e] * d;
    float acc = 0.0f;
    for (int j = lane; j < d; j += 32)
        acc = __fadd_rn(acc, __fmul_rn(u[j], w[j]));
    for (int o = 16; o > 0; o >>= 1)
        acc = __fadd_rn(acc, __shfl_down_sync(0xffffffffu, acc, o));
    if (lane == 0)
        da[e] = (relu && !(f[e] > 0.0f)) ? 0.0f : acc;
}

extern "C" int sae_k_entry_grad(const float *up, const float *W_dec, const int32_t *idx,
                                const int32_t *row, const float *f, int64_t n, int d, int relu,
                                float *da, void *stream)
{
    if (n <= 0)
        return 0;
    if (d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(entry_grad_kernel, blocks_for(n, 8), 256, stream, up, W_dec, idx, row, f, n, d, relu,
           da);
    return (int)cudaGetLastError();
}

/* One block per row: row[e] = b for the row's entries. */
static __global__ void rows_of_kernel(const int64_t *rowptr, int32_t *row)
{
    const int64_t b = blockIdx.x;
    for (int64_t e = rowptr[b] + threadIdx.x; e < rowptr[b + 1]; e += blockDim.x)
        row[e] = (int32_t)b;
}

extern "C" int sae_k_rows_of(const int64_t *rowptr, int64_t B, int32_t *row, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL)
        return (int)cudaErrorInvalidValue;
    LAUNCH(rows_of_kernel, (unsigned)B, 128, stream, rowptr, row);
    return (int)cudaGetLastError();
}

/* Group by latent, in four launches: set bit (i, b) for every entry; per
 * latent, the exclusive prefix of its words' bit counts (and its total); an
 * exclusive scan of the totals (latptr); then entry (b, i) goes to latptr[i] +
 * the number of rows below b that chose i. */
static __global__ void set_bits_kernel(const int32_t *idx, const int32_t *row, int64_t n,
                                       int words, uint32_t *bits)
{
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = row[e];
        atomicOr(&bits[(int64_t)idx[e] * words + (b >> 5)], 1u << (b & 31));
    }
}

/* One block per latent: prefix[i][w] = bits set in words 0..w-1 of row i;
 * count[i] = all of them (latptr[i + 1], before the scan). */
static __global__ void __launch_bounds__(RED_THREADS)
bit_prefix_kernel(const uint32_t *bits, int words, uint32_t *prefix, int64_t *count)
{
    __shared__ uint32_t run[RED_THREADS];
    const int64_t i = blockIdx.x;
    const uint32_t *row = bits + i * words;
    uint32_t *pre = prefix + i * words;
    uint32_t carry = 0;
    for (int base = 0; base < words; base += RED_THREADS) {
        const int w = base + threadIdx.x;
        const uint32_t c = w < words ? (uint32_t)__popc(row[w]) : 0u;
        run[threadIdx.x] = c;
        __syncthreads();
        for (int o = 1; o < RED_THREADS; o <<= 1) {     /* inclusive scan */
            const uint32_t t = (int)threadIdx.x >= o ? run[threadIdx.x - o] : 0u;
            __syncthreads();
            run[threadIdx.x] += t;
            __syncthreads();
        }
        if (w < words)
            pre[w] = carry + run[threadIdx.x] - c;
        carry += run[RED_THREADS - 1];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        count[i + 1] = carry;
}

/* One block: latptr[0] = 0, latptr[i + 1] = latptr[i] + count[i + 1], in
 * place, a tile at a time: the tile's counts loaded into shared memory
 * (coalesced), each thread scans SCAN_RUN contiguous ones, the runs' totals
 * are scanned, the tile goes back. (Runs read straight from memory were a
 * chain of dependent loads: 37 us for 12288 latents.) */
#define SCAN_RUN 8
static __global__ void __launch_bounds__(RED_THREADS)
scan_counts_kernel(int64_t *latptr, int M)
{
    __shared__ int64_t tile[RED_THREADS * SCAN_RUN];
    __shared__ int64_t run[RED_THREADS];
    int64_t carry = 0;
    for (int base = 0; base < M; base += RED_THREADS * SCAN_RUN) {
        for (int q = threadIdx.x; q < RED_THREADS * SCAN_RUN; q += RED_THREADS)
            tile[q] = base + q < M ? latptr[base + q + 1] : 0;
        __syncthreads();
        int64_t *mine = tile + threadIdx.x * SCAN_RUN;
        int64_t total = 0;
        for (int q = 0; q < SCAN_RUN; q++)
            total += mine[q];
        run[threadIdx.x] = total;
        __syncthreads();
        for (int o = 1; o < RED_THREADS; o <<= 1) {     /* inclusive scan */
            const int64_t t = (int)threadIdx.x >= o ? run[threadIdx.x - o] : 0;
            __syncthreads();
            run[threadIdx.x] += t;
            __syncthreads();
        }
        int64_t acc = carry + run[threadIdx.x] - total;
        for (int q = 0; q < SCAN_RUN; q++) {
            acc += mine[q];
            mine[q] = acc;
        }
        carry += run[RED_THREADS - 1];
        __syncthreads();
        for (int q = threadIdx.x; q < RED_THREADS * SCAN_RUN && base + q < M; q += RED_THREADS)
            latptr[base + q + 1] = tile[q];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        latptr[0] = 0;
}

static __global__ void place_kernel(const int32_t *idx, const int32_t *row, int64_t n, int words,
                                    const uint32_t *bits, const uint32_t *prefix,
                                    const int64_t *latptr, int64_t *order)
{
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = row[e], i = idx[e], w = i * words + (b >> 5);
        const uint32_t below = bits[w] & ((1u << (b & 31)) - 1u);
        order[latptr[i] + prefix[w] + __popc(below)] = e;
    }
}

extern "C" int sae_k_group_by_latent(const int32_t *idx, const int32_t *row, int64_t n,
                                     int64_t B, int M, uint32_t *bits, uint32_t *prefix,
                                     int64_t *latptr, int64_t *order, void *stream)
{
    if (B <= 0 || n < 0 || M <= 0)
        return (int)cudaErrorInvalidValue;
    const int words = (int)((B + 31) / 32);
    cudaError_t e = cudaMemsetAsync(bits, 0, (size_t)M * words * sizeof *bits,
                                    (cudaStream_t)stream);
    if (e != cudaSuccess)
        return (int)e;
    LAUNCH(set_bits_kernel, blocks_for(n, 256), 256, stream, idx, row, n, words, bits);
    LAUNCH(bit_prefix_kernel, (unsigned)M, RED_THREADS, stream, bits, words, prefix, latptr);
    LAUNCH(scan_counts_kernel, 1, RED_THREADS, stream, latptr, M);
    LAUNCH(place_kernel, blocks_for(n, 256), 256, stream, idx, row, n, words, bits, prefix,
           latptr, order);
    return (int)cudaGetLastError();
}

/* One block per latent; threads own groups of 4 columns (d % 4 == 0) or
 * single columns. Entries in order, separate multiply and add roundings: the
 * CPU's axpy sequence (train.c's sparse_backward). */
template <bool VEC>
static __global__ void __launch_bounds__(256)
latent_grads_kernel(const int64_t *latptr, const int64_t *order, const int32_t *row,
                    const float *f, const float *da, const float *up, const float *xt, int d,
                    int accumulate, float *gW_dec, float *gW_enc, float *gb_enc)
{
    const int64_t i = blockIdx.x, begin = latptr[i], end = latptr[i + 1];
    if (accumulate && begin == end)
        return;
    if (threadIdx.x == 0) {
        float gb = accumulate ? gb_enc[i] : 0.0f;
        for (int64_t q = begin; q < end; q++)
            gb = __fadd_rn(gb, da[order[q]]);
        gb_enc[i] = gb;
    }
    if (VEC) {
        const int d4 = d / 4;
        const float4 *up4 = (const float4 *)up, *xt4 = (const float4 *)xt;
        float4 *gd4 = (float4 *)(gW_dec + i * d), *ge4 = (float4 *)(gW_enc + i * d);
        for (int j = threadIdx.x; j < d4; j += blockDim.x) {
            float4 gd = make_float4(0.0f, 0.0f, 0.0f, 0.0f), ge = gd;
            if (accumulate) {
                gd = gd4[j];
                ge = ge4[j];
            }
#pragma unroll 4
            for (int64_t q = begin; q < end; q++) {
                const int64_t e = order[q], b = row[e];
                const float fe = f[e], de = da[e];
                const float4 u = up4[b * d4 + j], x = xt4[b * d4 + j];
                gd.x = __fadd_rn(gd.x, __fmul_rn(fe, u.x));
                gd.y = __fadd_rn(gd.y, __fmul_rn(fe, u.y));
                gd.z = __fadd_rn(gd.z, __fmul_rn(fe, u.z));
                gd.w = __fadd_rn(gd.w, __fmul_rn(fe, u.w));
                ge.x = __fadd_rn(ge.x, __fmul_rn(de, x.x));
                ge.y = __fadd_rn(ge.y, __fmul_rn(de, x.y));
                ge.z = __fadd_rn(ge.z, __fmul_rn(de, x.z));
                ge.w = __fadd_rn(ge.w, __fmul_rn(de, x.w));
            }
            gd4[j] = gd;
            ge4[j] = ge;
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float gd = accumulate ? gW_dec[i * d + j] : 0.0f;
            float ge = accumulate ? gW_enc[i * d + j] : 0.0f;
            for (int64_t q = begin; q < end; q++) {
                const int64_t e = order[q], b = row[e];
                gd = __fadd_rn(gd, __fmul_rn(f[e], up[b * d + j]));
                ge = __fadd_rn(ge, __fmul_rn(da[e], xt[b * d + j]));
            }
            gW_dec[i * d + j] = gd;
            gW_enc[i * d + j] = ge;
        }
    }
}

extern "C" int sae_k_latent_grads(const int64_t *latptr, const int64_t *order,
                                  const int32_t *row, const float *f, const float *da,
                                  const float *up, const float *xt, int M, int d, int accumulate,
                                  float *gW_dec, float *gW_enc, float *gb_enc, void *stream)
{
    if (M <= 0 || d <= 0)
        return (int)cudaErrorInvalidValue;
    const bool vec = (d % 4) == 0 && (((uintptr_t)up | (uintptr_t)xt | (uintptr_t)gW_dec |
                                       (uintptr_t)gW_enc) & 15) == 0;
    const int cols = vec ? d / 4 : d;
    const int threads = cols >= 256 ? 256 : ((cols + 31) / 32) * 32;
    const auto kernel = vec ? latent_grads_kernel<true> : latent_grads_kernel<false>;
    LAUNCH(kernel, (unsigned)M, threads, stream, latptr, order, row, f, da, up, xt, d, accumulate,
           gW_dec, gW_enc, gb_enc);
    return (int)cudaGetLastError();
}

/* ---- decoder rows ------------------------------------------------------------ */

static __global__ void __launch_bounds__(RED_THREADS)
orthogonalise_kernel(float *G, const float *W, int d)
{
    __shared__ float red[RED_THREADS];
    const int64_t i = blockIdx.x;
    float *g = G + i * d;
    const float *w = W + i * d;
    const float c = -block_dot(g, w, d, red);
    for (int j = threadIdx.x; j < d; j += RED_THREADS)
        g[j] = __fadd_rn(g[j], __fmul_rn(c, w[j]));
}

extern "C" int sae_k_orthogonalise_rows(float *G, const float *W, int M, int d, void *stream)
{
    if (M <= 0 || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(orthogonalise_kernel, (unsigned)M, RED_THREADS, stream, G, W, d);
    return (int)cudaGetLastError();
}

static __global__ void __launch_bounds__(RED_THREADS) normalise_kernel(float *W, int d)
{
    __shared__ float red[RED_THREADS];
    float *w = W + (int64_t)blockIdx.x * d;
    const float norm = sqrtf(block_dot(w, w, d, red));
    if (norm > 0.0f)
        for (int j = threadIdx.x; j < d; j += RED_THREADS)
            w[j] = __fdiv_rn(w[j], norm);
}

extern "C" int sae_k_normalise_rows(float *W, int M, int d, void *stream)
{
    if (M <= 0 || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(normalise_kernel, (unsigned)M, RED_THREADS, stream, W, d);
    return (int)cudaGetLastError();
}

static __global__ void __launch_bounds__(RED_THREADS)
row_norms_kernel(const float *W, int d, float *norms)
{
    __shared__ float red[RED_THREADS];
    const float *w = W + (int64_t)blockIdx.x * d;
    const float n = sqrtf(block_dot(w, w, d, red));
    if (threadIdx.x == 0)
        norms[blockIdx.x] = n;
}

extern "C" int sae_k_row_norms(const float *W, int M, int d, float *norms, void *stream)
{
    if (M <= 0 || d <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(row_norms_kernel, (unsigned)M, RED_THREADS, stream, W, d, norms);
    return (int)cudaGetLastError();
}

/* ---- the update ----------------------------------------------------------------- */

/* Block p sums slice p of g; the slices are fixed by n alone. */
static __global__ void __launch_bounds__(RED_THREADS)
sumsq_kernel(const float *g, int64_t n, double *partial)
{
    __shared__ double red[RED_THREADS];
    const int64_t lo = n * blockIdx.x / SAE_K_SUMSQ_PARTS,
                  hi = n * (blockIdx.x + 1) / SAE_K_SUMSQ_PARTS;
    double acc = 0.0;
    for (int64_t p = lo + threadIdx.x; p < hi; p += RED_THREADS)
        acc = __dadd_rn(acc, __dmul_rn((double)g[p], (double)g[p]));
    acc = block_sum_fixed(acc, red);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = acc;
}

extern "C" int sae_k_sumsq(const float *g, int64_t n, double *partial, void *stream)
{
    if (n < 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(sumsq_kernel, SAE_K_SUMSQ_PARTS, RED_THREADS, stream, g, n, partial);
    return (int)cudaGetLastError();
}

/* One block: each thread adds a contiguous run of the partials, then the
 * fixed tree. */
static __global__ void __launch_bounds__(RED_THREADS)
clip_scale_kernel(const double *partials, int n, double max_norm, double *norm, float *scale)
{
    __shared__ double red[RED_THREADS];
    const int lo = (int)((int64_t)n * threadIdx.x / RED_THREADS),
              hi = (int)((int64_t)n * (threadIdx.x + 1) / RED_THREADS);
    double acc = 0.0;
    for (int p = lo; p < hi; p++)
        acc = __dadd_rn(acc, partials[p]);
    const double nrm = sqrt(block_sum_fixed(acc, red));
    if (threadIdx.x == 0) {
        *norm = nrm;
        *scale = nrm > max_norm ? (float)(max_norm / nrm) : 1.0f;
    }
}

extern "C" int sae_k_clip_scale(const double *partials, int n, double max_norm, double *norm,
                                float *scale, void *stream)
{
    LAUNCH(clip_scale_kernel, 1, RED_THREADS, stream, partials, n, max_norm, norm, scale);
    return (int)cudaGetLastError();
}

static __global__ void adam_kernel(float *w, const float *g, float *m, float *v, int64_t n,
                                   const float *scale, float b1, float b2, float eps, float step,
                                   float inv_sqrt_c2)
{
    const float s = *scale;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x) {
        const float gp = __fmul_rn(g[p], s);
        const float mp = __fadd_rn(__fmul_rn(b1, m[p]), __fmul_rn(1.0f - b1, gp));
        const float vp = __fadd_rn(__fmul_rn(b2, v[p]), __fmul_rn(__fmul_rn(1.0f - b2, gp), gp));
        m[p] = mp;
        v[p] = vp;
        const float den = __fadd_rn(__fmul_rn(sqrtf(vp), inv_sqrt_c2), eps);
        w[p] = __fsub_rn(w[p], __fdiv_rn(__fmul_rn(step, mp), den));
    }
}

extern "C" int sae_k_adam(float *w, const float *g, float *m, float *v, int64_t n,
                          const float *scale, float b1, float b2, float eps, float step,
                          float inv_sqrt_c2, void *stream)
{
    if (n <= 0)
        return 0;
    LAUNCH(adam_kernel, blocks_for(n, 1024), 256, stream, w, g, m, v, n, scale, b1, b2, eps, step,
           inv_sqrt_c2);
    return (int)cudaGetLastError();
}

/* ---- latent bookkeeping --------------------------------------------------------- */

/* One atomic per block (one per thread had them queue on one address). */
static __global__ void __launch_bounds__(RED_THREADS)
count_nonzero_kernel(const float *f, int64_t n, int64_t *count)
{
    __shared__ int64_t red[RED_THREADS];
    int64_t c = 0;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        c += f[e] != 0.0f;
    c = block_tree(c, red, [](int64_t a, int64_t b) { return a + b; });
    if (threadIdx.x == 0 && c)
        atomicAdd((unsigned long long *)count, (unsigned long long)c);
}

extern "C" int sae_k_count_nonzero(const float *f, int64_t n, int64_t *count, void *stream)
{
    if (n <= 0)
        return 0;
    LAUNCH(count_nonzero_kernel, blocks_for(n, 4 * RED_THREADS), RED_THREADS, stream, f, n,
           count);
    return (int)cudaGetLastError();
}

static __global__ void mark_fired_kernel(const int32_t *idx, const float *f, int64_t n,
                                         int64_t now, int64_t *last_fired)
{
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        if (f[e] != 0.0f)
            last_fired[idx[e]] = now;   /* every writer writes the same value */
}

extern "C" int sae_k_mark_fired(const int32_t *idx, const float *f, int64_t n, int64_t now,
                                int64_t *last_fired, void *stream)
{
    if (n <= 0)
        return 0;
    LAUNCH(mark_fired_kernel, blocks_for(n, 256), 256, stream, idx, f, n, now, last_fired);
    return (int)cudaGetLastError();
}

static __global__ void dead_latents_kernel(const int64_t *last_fired, int M, int64_t tokens,
                                           int64_t window, const float *b_enc, float *b_aux,
                                           int64_t *n_dead)
{
    int64_t dead = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < M; i += gridDim.x * blockDim.x) {
        const bool is_dead = tokens - last_fired[i] > window;
        dead += is_dead;
        if (b_aux)
            b_aux[i] = is_dead ? b_enc[i] : -INFINITY;
    }
    if (dead)
        atomicAdd((unsigned long long *)n_dead, (unsigned long long)dead);
}

extern "C" int sae_k_dead_latents(const int64_t *last_fired, int M, int64_t tokens,
                                  int64_t window, const float *b_enc, float *b_aux,
                                  int64_t *n_dead, void *stream)
{
    if (M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(dead_latents_kernel, blocks_for(M, 256), 256, stream, last_fired, M, tokens, window,
           b_enc, b_aux, n_dead);
    return (int)cudaGetLastError();
}
