/* backend_cuda.c - the CUDA backend: cuBLAS for the encoder GEMM, kernels/ for
 * everything around it. It must match the CPU backend (backend_cpu.c), which
 * is the reference; tests/gpu/test_parity checks that.
 *
 * attach uploads the weights once (plain cudaMalloc, never managed memory) and
 * creates two streams and a cuBLAS handle. Encode works in passes of at most
 * R rows (rows_per_pass: z [R, M] stays under Z_BYTES_MAX whatever the batch),
 * on buffers kept for the largest pass seen:
 *
 *   copy stream:    x rows of pass p+1 -> x[(p+1) % 2]   (while pass p computes)
 *   compute stream: preprocess x[p % 2] in place -> GEMM z = x~ W_enc -> select
 *                   -> codes of pass p back to the host
 *
 * Top-k archs (topk, ptopk) get exactly k entries per row from sae_k_topk.
 * Elementwise archs are compacted on the device: a count kernel, a scan of
 * the counts on the host (it must size the codes anyway), a fill kernel, and
 * only the non-zeros come back.
 *
 * Errors (cuda_util.h): every CUDA and cuBLAS call is checked. An error that
 * leaves the context unusable is reported with a message beginning "fatal
 * CUDA error:" and every later call on this model repeats it. Encode and
 * decode on one model are serialised by a mutex (they share the buffers).
 *
 * SAED_CUDA_PASS_ROWS=n (tests only) caps the rows per pass at n.
 *
 * The math mode is FP32. SAED_CUDA_TF32=1 in the environment at attach time
 * lets cuBLAS use TF32 tensor cores (about 3e-4 relative error in z, so the
 * parity test runs without it). BF16 weights are not supported yet. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "cublas_fns.h"
#include "cuda_util.h"
#include "kernels.h"

#define PASS_ROWS 1024              /* rows per pass: fills the GPU, leaves room to overlap */
#define Z_BYTES_MAX (256LL << 20)   /* z of one pass at most this (but at least one row) */
#define DEC_ROWS 4096               /* decode: rows per pass */
#define DEC_ENTRIES (16LL << 20)    /* decode: code entries per pass (at least one row) */

/* Which kernels run each architecture (keyed by sae_arch.name; arch.c is the
 * table of what the architectures are, this is only how the GPU runs them). */
typedef struct arch_kernels {
    const char *arch;
    int topk;                       /* 1: sae_k_topk; 0: sae_k_act_count / _fill */
    int kind;                       /* SAE_K_SEL_* or SAE_K_ACT_* */
} arch_kernels;

static const arch_kernels arch_table[] = {
    {"standard", 0, SAE_K_ACT_RELU},
    {"gated", 0, SAE_K_ACT_GATED},
    {"jumprelu", 0, SAE_K_ACT_JUMPRELU},
    {"batchtopk", 0, SAE_K_ACT_JUMPRELU},   /* inference: jumprelu with the learned theta */
    {"topk", 1, SAE_K_SEL_TOPK},
    {"ptopk", 1, SAE_K_SEL_PTOPK},
};

typedef struct cuda_state {
    int device;
    const arch_kernels *ak;
    int64_t pass_rows;                  /* PASS_ROWS, or SAED_CUDA_PASS_ROWS (tests) */
    cudaStream_t stream, copy_stream;
    cudaEvent_t x_ready[2], x_free[2];  /* x[s] written / consumed by the GEMM */
    cublasHandle_t blas;
    pthread_mutex_t lock;
    char fatal[300];                    /* set once a sticky error was seen */

    /* weights on the device; NULL where the architecture has none */
    float *W_enc_T, *W_dec, *b_dec, *b_enc, *b_gate, *b_mag, *r_mag_exp, *threshold;

    /* encode buffers for `rows` rows per pass */
    int64_t rows;
    float *x[2];                        /* [rows, d] */
    float *z;                           /* [rows, M] */
    int32_t *sel_idx;                   /* [rows, k] top-k */
    float *sel_val;
    int32_t *count, *h_count;           /* [rows] elementwise, device and host */
    int64_t *offsets, *h_offsets;       /* [rows + 1] */
    int32_t *nz_idx;                    /* [nz_cap] non-zeros of one pass */
    float *nz_val;
    int64_t nz_cap;

    /* decode buffers */
    int64_t dec_rows, dec_cap;
    int64_t *dec_indptr, *h_dec_indptr; /* [dec_rows + 1] */
    int32_t *dec_idx;                   /* [dec_cap] */
    float *dec_val;
    float *dec_xhat;                    /* [dec_rows, d] */
} cuda_state;

/* ---- probe ----------------------------------------------------------------- */

/* attach has no device argument (backend.h): it takes the device that the
 * last successful probe in this thread named, as sae_model_use_device probes
 * right before it attaches. */
static _Thread_local int probed_device = 0;

int sae_cuda_probe(int device, char *desc, size_t n)
{
    char buf[320];
    int count = 0, rc = SAE_ERR;
    sae_error blas_err = {{0}};
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
        snprintf(buf, sizeof buf, "no CUDA device");
    } else if (e == cudaErrorInsufficientDriver || e == cudaErrorStubLibrary ||
               e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice) {
        snprintf(buf, sizeof buf, "no usable NVIDIA driver (%s: %s)", cudaGetErrorName(e),
                 cudaGetErrorString(e));
    } else if (e != cudaSuccess) {
        snprintf(buf, sizeof buf, "CUDA is not usable (%s: %s)", cudaGetErrorName(e),
                 cudaGetErrorString(e));
    } else if (device < 0 || device >= count) {
        snprintf(buf, sizeof buf, "no device cuda:%d (%d CUDA device%s)", device, count,
                 count == 1 ? "" : "s");
    } else {
        struct cudaDeviceProp prop;
        if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
            (e = cudaSetDevice(device)) != cudaSuccess) {
            snprintf(buf, sizeof buf, "cuda:%d: %s", device, cudaGetErrorString(e));
        } else if ((e = (cudaError_t)sae_k_probe()) != cudaSuccess) {
            /* e.g. no kernel image: this build has sm_80 and sm_90 code */
            snprintf(buf, sizeof buf, "cuda:%d (%.100s, sm_%d%d) cannot run this build's kernels: %.100s",
                     device, prop.name, prop.major, prop.minor, cudaGetErrorString(e));
        } else if (sae_cublas_load(&blas_err) != SAE_OK) {
            /* a GPU without cuBLAS: "auto" stays on the CPU and says why */
            snprintf(buf, sizeof buf, "cuda:%d (%.100s): %.180s", device, prop.name, blas_err.msg);
        } else {
            snprintf(buf, sizeof buf, "%.100s (cuda:%d, sm_%d%d, %.0f GiB)", prop.name, device,
                     prop.major, prop.minor, (double)prop.totalGlobalMem / (1 << 30));
            probed_device = device;
            rc = SAE_OK;
        }
    }
    (void)cudaGetLastError();
    if (desc && n > 0)
        snprintf(desc, n, "%s", buf);
    return rc;
}

/* ---- buffers --------------------------------------------------------------- */

static int dev_alloc(cuda_state *st, void **p, size_t bytes, const char *what, sae_error *err)
{
    return sae_cuda_alloc(st->stream, st->fatal, sizeof st->fatal, p, bytes, what, err);
}

static void free_encode_buffers(cuda_state *st)
{
    sae_cuda_free(st->x[0]);
    sae_cuda_free(st->x[1]);
    sae_cuda_free(st->z);
    sae_cuda_free(st->sel_idx);
    sae_cuda_free(st->sel_val);
    sae_cuda_free(st->count);
    sae_cuda_free(st->offsets);
    free(st->h_count);
    free(st->h_offsets);
    st->x[0] = st->x[1] = st->z = st->sel_val = NULL;
    st->sel_idx = st->count = st->h_count = NULL;
    st->offsets = st->h_offsets = NULL;
    st->rows = 0;
}

static void free_nz(cuda_state *st)
{
    sae_cuda_free(st->nz_idx);
    sae_cuda_free(st->nz_val);
    st->nz_idx = NULL;
    st->nz_val = NULL;
    st->nz_cap = 0;
}

static void free_decode_buffers(cuda_state *st)
{
    sae_cuda_free(st->dec_indptr);
    sae_cuda_free(st->dec_xhat);
    free(st->h_dec_indptr);
    sae_cuda_free(st->dec_idx);
    sae_cuda_free(st->dec_val);
    st->dec_indptr = st->h_dec_indptr = NULL;
    st->dec_xhat = st->dec_val = NULL;
    st->dec_idx = NULL;
    st->dec_rows = st->dec_cap = 0;
}

/* Rows per encode pass for this model. */
static int64_t rows_per_pass(const cuda_state *st, const sae_model *m)
{
    int64_t r = Z_BYTES_MAX / ((int64_t)m->cfg.d_sae * (int64_t)sizeof(float));
    if (r > st->pass_rows)
        r = st->pass_rows;
    return r < 1 ? 1 : r;
}

/* Buffers for passes of R rows (kept when already big enough). */
static int ensure_encode_buffers(cuda_state *st, const sae_model *m, int64_t R, sae_error *err)
{
    if (R <= st->rows)
        return SAE_OK;
    free_encode_buffers(st);
    const size_t d = (size_t)m->cfg.d_in, M = (size_t)m->cfg.d_sae, k = (size_t)m->cfg.k;
    const size_t r = (size_t)R;
    if (dev_alloc(st, (void **)&st->x[0], r * d * sizeof(float), "encode input", err) ||
        dev_alloc(st, (void **)&st->x[1], r * d * sizeof(float), "encode input", err) ||
        dev_alloc(st, (void **)&st->z, r * M * sizeof(float), "pre-activations", err))
        goto fail;
    if (st->ak->topk) {
        if (dev_alloc(st, (void **)&st->sel_idx, r * k * sizeof(int32_t), "top-k indices", err) ||
            dev_alloc(st, (void **)&st->sel_val, r * k * sizeof(float), "top-k values", err))
            goto fail;
    } else {
        if (dev_alloc(st, (void **)&st->count, r * sizeof(int32_t), "row counts", err) ||
            dev_alloc(st, (void **)&st->offsets, (r + 1) * sizeof(int64_t), "row offsets", err))
            goto fail;
        st->h_count = malloc(r * sizeof(int32_t));
        st->h_offsets = malloc((r + 1) * sizeof(int64_t));
        if (!st->h_count || !st->h_offsets) {
            sae_fail(err, "encode: out of host memory");
            goto fail;
        }
    }
    st->rows = R;
    return SAE_OK;
fail:
    free_encode_buffers(st);
    return SAE_ERR;
}

/* Room for `need` non-zeros of one pass (elementwise archs), grown by half
 * again beyond the need so a slowly growing L0 does not reallocate each call. */
static int ensure_nz(cuda_state *st, int64_t need, int64_t most, sae_error *err)
{
    if (need <= st->nz_cap)
        return SAE_OK;
    int64_t cap = need + need / 2;
    if (cap > most)
        cap = most;
    if (cap < need)
        cap = need;
    free_nz(st);
    if (dev_alloc(st, (void **)&st->nz_idx, (size_t)cap * sizeof(int32_t), "code indices", err) ||
        dev_alloc(st, (void **)&st->nz_val, (size_t)cap * sizeof(float), "code values", err)) {
        free_nz(st);
        return SAE_ERR;
    }
    st->nz_cap = cap;
    return SAE_OK;
}

static int ensure_decode_buffers(cuda_state *st, int d, int64_t rows, int64_t entries,
                                 sae_error *err)
{
    if (rows > st->dec_rows) {
        sae_cuda_free(st->dec_indptr);
        sae_cuda_free(st->dec_xhat);
        free(st->h_dec_indptr);
        st->dec_indptr = st->h_dec_indptr = NULL;
        st->dec_xhat = NULL;
        st->dec_rows = 0;
        if (dev_alloc(st, (void **)&st->dec_indptr, (size_t)(rows + 1) * sizeof(int64_t),
                      "decode row pointers", err) ||
            dev_alloc(st, (void **)&st->dec_xhat, (size_t)rows * (size_t)d * sizeof(float),
                      "reconstruction", err))
            return SAE_ERR;
        if (!(st->h_dec_indptr = malloc((size_t)(rows + 1) * sizeof(int64_t))))
            return sae_fail(err, "decode: out of host memory");
        st->dec_rows = rows;
    }
    if (entries > st->dec_cap) {
        sae_cuda_free(st->dec_idx);
        sae_cuda_free(st->dec_val);
        st->dec_idx = NULL;
        st->dec_val = NULL;
        st->dec_cap = 0;
        if (dev_alloc(st, (void **)&st->dec_idx, (size_t)entries * sizeof(int32_t),
                      "decode indices", err) ||
            dev_alloc(st, (void **)&st->dec_val, (size_t)entries * sizeof(float),
                      "decode values", err))
            return SAE_ERR;
        st->dec_cap = entries;
    }
    return SAE_OK;
}

/* ---- attach / detach ------------------------------------------------------- */

static void destroy_state(cuda_state *st)
{
    if (!st)
        return;
    (void)cudaSetDevice(st->device);
    if (st->stream)
        (void)cudaStreamSynchronize(st->stream);
    if (st->copy_stream)
        (void)cudaStreamSynchronize(st->copy_stream);
    free_encode_buffers(st);
    free_nz(st);
    free_decode_buffers(st);
    sae_cuda_free(st->W_enc_T);
    sae_cuda_free(st->W_dec);
    sae_cuda_free(st->b_dec);
    sae_cuda_free(st->b_enc);
    sae_cuda_free(st->b_gate);
    sae_cuda_free(st->b_mag);
    sae_cuda_free(st->r_mag_exp);
    sae_cuda_free(st->threshold);
    if (st->blas)
        (void)sae_cublas.destroy(st->blas);
    for (int s = 0; s < 2; s++) {
        if (st->x_ready[s])
            (void)cudaEventDestroy(st->x_ready[s]);
        if (st->x_free[s])
            (void)cudaEventDestroy(st->x_free[s]);
    }
    if (st->stream)
        (void)cudaStreamDestroy(st->stream);
    if (st->copy_stream)
        (void)cudaStreamDestroy(st->copy_stream);
    (void)cudaGetLastError();
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Copies n floats of host array src to a new device array *dst. */
static int upload(cuda_state *st, float **dst, const float *src, size_t n, const char *what,
                  sae_error *err)
{
    if (!src)
        return sae_fail(err, "CUDA backend: the model has no %s", what);
    if (dev_alloc(st, (void **)dst, n * sizeof(float), what, err))
        return SAE_ERR;
    CK(cudaMemcpy(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice), what);
    return SAE_OK;
}

static int attach_weights(cuda_state *st, const sae_model *m, sae_error *err)
{
    const size_t d = (size_t)m->cfg.d_in, M = (size_t)m->cfg.d_sae;
    const int kind = st->ak->kind, gated = !st->ak->topk && kind == SAE_K_ACT_GATED;
    if (upload(st, &st->W_enc_T, m->W_enc_T, M * d, "W_enc", err) ||
        upload(st, &st->W_dec, m->W_dec, M * d, "W_dec", err) ||
        upload(st, &st->b_dec, m->b_dec, d, "b_dec", err))
        return SAE_ERR;
    if (gated)
        return upload(st, &st->b_gate, m->b_gate, M, "b_gate", err) ||
               upload(st, &st->b_mag, m->b_mag, M, "b_mag", err) ||
               upload(st, &st->r_mag_exp, m->r_mag_exp, M, "exp(r_mag)", err) ? SAE_ERR : SAE_OK;
    if (upload(st, &st->b_enc, m->b_enc, M, "b_enc", err))
        return SAE_ERR;
    if (!st->ak->topk && kind == SAE_K_ACT_JUMPRELU)
        return upload(st, &st->threshold, m->threshold, M, "threshold", err);
    return SAE_OK;
}

static int attach_state(cuda_state *st, const sae_model *m, sae_error *err)
{
    CK(cudaSetDevice(st->device), "selecting the device");
    CK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking), "creating a stream");
    CK(cudaStreamCreateWithFlags(&st->copy_stream, cudaStreamNonBlocking), "creating a stream");
    for (int s = 0; s < 2; s++) {
        CK(cudaEventCreateWithFlags(&st->x_ready[s], cudaEventDisableTiming), "creating an event");
        CK(cudaEventCreateWithFlags(&st->x_free[s], cudaEventDisableTiming), "creating an event");
    }
    if (sae_cublas_open(st->stream, st->fatal, sizeof st->fatal, &st->blas, err) != SAE_OK)
        return SAE_ERR;
    return attach_weights(st, m, err);
}

static int cuda_attach(sae_model *m, sae_error *err)
{
    const arch_kernels *ak = NULL;
    for (size_t i = 0; i < sizeof arch_table / sizeof arch_table[0]; i++)
        if (!strcmp(arch_table[i].arch, m->cfg.arch->name))
            ak = &arch_table[i];
    if (!ak)
        return sae_fail(err, "architecture '%s' has no CUDA kernels; use device cpu",
                        m->cfg.arch->name);
    if (ak->topk && (m->cfg.k < 1 || m->cfg.k > SAE_K_TOPK_MAX || m->cfg.k > m->cfg.d_sae))
        return sae_fail(err, "k = %d: the CUDA backend selects 1 to %d latents per row; "
                        "use device cpu", m->cfg.k, SAE_K_TOPK_MAX);
    cuda_state *st = calloc(1, sizeof *st);
    if (!st)
        return sae_fail(err, "out of memory");
    st->device = probed_device;
    st->ak = ak;
    /* tests set SAED_CUDA_PASS_ROWS to run many passes on small batches */
    const char *pr = getenv("SAED_CUDA_PASS_ROWS");
    st->pass_rows = pr && atol(pr) > 0 ? atol(pr) : PASS_ROWS;
    pthread_mutex_init(&st->lock, NULL);
    if (attach_state(st, m, err) != SAE_OK) {
        destroy_state(st);
        return SAE_ERR;
    }
    m->backend_state = st;
    return SAE_OK;
}

static void cuda_detach(sae_model *m)
{
    destroy_state(m->backend_state);
    m->backend_state = NULL;
}

/* ---- encode ---------------------------------------------------------------- */

static int kernel_norm(sae_norm n)
{
    switch (n) {
    case SAE_NORM_CENTER_UNIT_NORM: return SAE_K_NORM_CENTER_UNIT_NORM;
    case SAE_NORM_LAYER_NORM: return SAE_K_NORM_LAYER_NORM;
    case SAE_NORM_CONSTANT_SCALE: return SAE_K_NORM_CONSTANT_SCALE;
    case SAE_NORM_NONE: break;
    }
    return SAE_K_NORM_NONE;
}

/* Queues the copy of pass p's rows into x[p % 2] on the copy stream, after
 * the GEMM that last read that buffer (pass p - 2). */
static int stage_input(cuda_state *st, const sae_model *m, const float *x, int64_t n, int64_t R,
                       int64_t p, sae_error *err)
{
    const int64_t row0 = p * R, r = n - row0 < R ? n - row0 : R;
    const int s = (int)(p & 1);
    const size_t d = (size_t)m->cfg.d_in;
    CK(cudaStreamWaitEvent(st->copy_stream, st->x_free[s], 0), "ordering the input copy");
    CK(cudaMemcpyAsync(st->x[s], x + (size_t)row0 * d, (size_t)r * d * sizeof(float),
                       cudaMemcpyHostToDevice, st->copy_stream), "copying the input in");
    CK(cudaEventRecord(st->x_ready[s], st->copy_stream), "ordering the input copy");
    return SAE_OK;
}

/* Elementwise archs, second half of a pass: counts -> CSR offsets on the host
 * -> fill kernel -> non-zeros back into the codes. */
static int finish_elementwise(cuda_state *st, const sae_model *m, const sae_k_act *act,
                              int64_t row0, int64_t r, sae_codes *codes, sae_error *err)
{
    const int M = m->cfg.d_sae;
    CK(cudaMemcpyAsync(st->h_count, st->count, (size_t)r * sizeof(int32_t),
                       cudaMemcpyDeviceToHost, st->stream), "copying row counts out");
    CK(cudaStreamSynchronize(st->stream), "counting non-zeros");
    st->h_offsets[0] = 0;
    for (int64_t i = 0; i < r; i++) {
        st->h_offsets[i + 1] = st->h_offsets[i] + st->h_count[i];
        codes->indptr[row0 + i + 1] = codes->indptr[row0] + st->h_offsets[i + 1];
    }
    const int64_t nnz = st->h_offsets[r], at = codes->indptr[row0];
    if (sae_codes_reserve(codes, row0 + r, at + nnz, err) != SAE_OK ||
        ensure_nz(st, nnz, r * (int64_t)M, err) != SAE_OK)
        return SAE_ERR;
    CK(cudaMemcpyAsync(st->offsets, st->h_offsets, (size_t)(r + 1) * sizeof(int64_t),
                       cudaMemcpyHostToDevice, st->stream), "copying row offsets in");
    CK(sae_k_act_fill(st->z, r, M, act, st->offsets, st->nz_idx, st->nz_val, st->stream),
       "the activation fill kernel");
    if (nnz > 0) {
        CK(cudaMemcpyAsync(codes->indices + at, st->nz_idx, (size_t)nnz * sizeof(int32_t),
                           cudaMemcpyDeviceToHost, st->stream), "copying codes out");
        CK(cudaMemcpyAsync(codes->values + at, st->nz_val, (size_t)nnz * sizeof(float),
                           cudaMemcpyDeviceToHost, st->stream), "copying codes out");
    }
    CK(cudaStreamSynchronize(st->stream), "encoding");
    return SAE_OK;
}

static int encode_locked(cuda_state *st, const sae_model *m, const float *x, int64_t n,
                         sae_codes *codes, sae_error *err)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae, k = m->cfg.k, topk = st->ak->topk;
    if (sae_codes_reserve(codes, n, topk ? n * k : 0, err) != SAE_OK)
        return SAE_ERR;
    codes->n_rows = n;
    codes->indptr[0] = 0;
    if (n == 0)
        return SAE_OK;
    CK(cudaSetDevice(st->device), "selecting the device");
    int64_t R = rows_per_pass(st, m);
    if (R > n)
        R = n;
    if (ensure_encode_buffers(st, m, R, err) != SAE_OK)
        return SAE_ERR;

    const int norm = kernel_norm(m->cfg.normalize);
    const float *b_dec_in = m->cfg.apply_b_dec_to_input ? st->b_dec : NULL;
    const sae_k_sel sel = {
        .kind = st->ak->kind,
        .b_enc = st->b_enc,
        .layernorm = m->cfg.layernorm,
        .beta = m->cfg.beta_final,     /* validated > 0 for ptopk; unused elsewhere */
        .lambda = m->cfg.lambda_mag,
    };
    const sae_k_act act = {
        .kind = st->ak->kind,
        .b_enc = st->b_enc,
        .threshold = st->threshold,
        .b_gate = st->b_gate,
        .b_mag = st->b_mag,
        .r_mag_exp = st->r_mag_exp,
    };
    const float one = 1.0f, zero = 0.0f;
    const int64_t passes = (n + R - 1) / R;

    if (stage_input(st, m, x, n, R, 0, err) != SAE_OK)
        return SAE_ERR;
    for (int64_t p = 0; p < passes; p++) {
        const int64_t row0 = p * R, r = n - row0 < R ? n - row0 : R;
        const int s = (int)(p & 1);
        CK(cudaStreamWaitEvent(st->stream, st->x_ready[s], 0), "waiting for the input");
        CK(sae_k_preprocess(st->x[s], r, d, norm, m->cfg.norm_scale, b_dec_in, st->stream),
           "the preprocessing kernel");
        /* z [r, M] row-major is z^T [M, r] column-major = W_enc_T [M, d] (x~)^T:
         * W_enc_T is [d, M] column-major (lda d), transposed; x~ is [d, r]
         * column-major (ldb d) */
        BL(sae_cublas.sgemm(st->blas, CUBLAS_OP_T, CUBLAS_OP_N, M, (int)r, d, &one, st->W_enc_T,
                            d, st->x[s], d, &zero, st->z, M), "the encoder GEMM");
        CK(cudaEventRecord(st->x_free[s], st->stream), "ordering the input copy");
        if (topk)
            CK(sae_k_topk(st->z, r, M, k, &sel, st->sel_idx, st->sel_val, st->stream),
               "the top-k kernel");
        else
            CK(sae_k_act_count(st->z, r, M, &act, st->count, st->stream),
               "the activation count kernel");
        /* the next pass's rows travel while this pass computes */
        if (p + 1 < passes && stage_input(st, m, x, n, R, p + 1, err) != SAE_OK)
            return SAE_ERR;
        if (topk) {
            CK(cudaMemcpyAsync(codes->indices + row0 * k, st->sel_idx,
                               (size_t)r * (size_t)k * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               st->stream), "copying codes out");
            CK(cudaMemcpyAsync(codes->values + row0 * k, st->sel_val,
                               (size_t)r * (size_t)k * sizeof(float), cudaMemcpyDeviceToHost,
                               st->stream), "copying codes out");
            CK(cudaStreamSynchronize(st->stream), "encoding");
            for (int64_t i = 1; i <= r; i++)
                codes->indptr[row0 + i] = (row0 + i) * k;
        } else if (finish_elementwise(st, m, &act, row0, r, codes, err) != SAE_OK) {
            return SAE_ERR;
        }
    }
    return SAE_OK;
}

/* After a failed call: nothing may still be in flight into buffers the caller
 * owns or that the next call reuses. */
static void drain(cuda_state *st)
{
    if (st->fatal[0])
        return;
    (void)cudaStreamSynchronize(st->copy_stream);
    (void)cudaStreamSynchronize(st->stream);
    (void)cudaGetLastError();
}

/* The model's state, locked, when it is attached and has not failed for
 * good; NULL (and err set) otherwise. */
static cuda_state *lock_usable(const sae_model *m, sae_error *err)
{
    cuda_state *st = m->backend_state;
    if (!st) {
        sae_fail(err, "CUDA backend: model not attached");
        return NULL;
    }
    pthread_mutex_lock(&st->lock);
    if (st->fatal[0]) {
        sae_fail(err, "%s", st->fatal);
        pthread_mutex_unlock(&st->lock);
        return NULL;
    }
    return st;
}

/* Unlocks after a call made under lock_usable; a failed call's stream is
 * drained first. */
static int unlock_after(cuda_state *st, int rc)
{
    if (rc != SAE_OK)
        drain(st);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static int cuda_encode(const sae_model *m, const float *x, int64_t n, sae_codes *codes,
                       sae_error *err)
{
    cuda_state *st = lock_usable(m, err);
    return st ? unlock_after(st, encode_locked(st, m, x, n, codes, err)) : SAE_ERR;
}

/* ---- decode ---------------------------------------------------------------- */

static int decode_locked(cuda_state *st, const sae_model *m, const sae_codes *codes,
                         float *xhat, sae_error *err)
{
    const int d = m->cfg.d_in;
    const int64_t n = codes->n_rows;
    /* out-of-range indices would be an illegal address on the device: a
     * fatal error for the whole process, so they are refused here */
    if (sae_codes_validate(codes, m->cfg.d_sae, err) != SAE_OK)
        return SAE_ERR;
    if (n == 0)
        return SAE_OK;
    CK(cudaSetDevice(st->device), "selecting the device");
    for (int64_t row0 = 0; row0 < n;) {
        /* at least one row; then rows while under both limits */
        int64_t r = 1;
        while (row0 + r < n && r < DEC_ROWS &&
               codes->indptr[row0 + r + 1] - codes->indptr[row0] <= DEC_ENTRIES)
            r++;
        const int64_t e0 = codes->indptr[row0], ne = codes->indptr[row0 + r] - e0;
        if (ensure_decode_buffers(st, d, r, ne > 0 ? ne : 1, err) != SAE_OK)
            return SAE_ERR;
        for (int64_t i = 0; i <= r; i++)
            st->h_dec_indptr[i] = codes->indptr[row0 + i] - e0;
        CK(cudaMemcpyAsync(st->dec_indptr, st->h_dec_indptr, (size_t)(r + 1) * sizeof(int64_t),
                           cudaMemcpyHostToDevice, st->stream), "copying codes in");
        if (ne > 0) {
            CK(cudaMemcpyAsync(st->dec_idx, codes->indices + e0, (size_t)ne * sizeof(int32_t),
                               cudaMemcpyHostToDevice, st->stream), "copying codes in");
            CK(cudaMemcpyAsync(st->dec_val, codes->values + e0, (size_t)ne * sizeof(float),
                               cudaMemcpyHostToDevice, st->stream), "copying codes in");
        }
        CK(sae_k_sparse_decode(st->dec_indptr, st->dec_idx, st->dec_val, st->W_dec, st->b_dec, r,
                               d, st->dec_xhat, st->stream), "the decode kernel");
        CK(cudaMemcpyAsync(xhat + (size_t)row0 * (size_t)d, st->dec_xhat,
                           (size_t)r * (size_t)d * sizeof(float), cudaMemcpyDeviceToHost,
                           st->stream), "copying the reconstruction out");
        CK(cudaStreamSynchronize(st->stream), "decoding");
        row0 += r;
    }
    return SAE_OK;
}

static int cuda_decode(const sae_model *m, const sae_codes *codes, float *xhat, sae_error *err)
{
    cuda_state *st = lock_usable(m, err);
    return st ? unlock_after(st, decode_locked(st, m, codes, xhat, err)) : SAE_ERR;
}

const sae_backend sae_backend_cuda = {
    .name = "cuda",
    .attach = cuda_attach,
    .detach = cuda_detach,
    .encode = cuda_encode,
    .decode = cuda_decode,
};
