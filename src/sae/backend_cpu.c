/* backend_cpu.c - the reference backend. Weights stay in the model's host
 * arrays, so attach has nothing to do.
 *
 * Encode splits the rows into blocks across OpenMP threads; each thread runs
 * the GEMM of its block (single-threaded OpenBLAS, see blas.h) and selects
 * while the block's z is warm. x~ [R, d] and z [R, M] per thread are the only
 * buffers, so memory does not grow with the batch. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "blas.h"
#include "select.h"
#include "util.h"
#include "vec.h"


/* x~ = preprocess(x) - b_dec (when apply_b_dec_to_input), r rows */
static void input_rows(const sae_model *m, const float *x, int64_t r, float *xt)
{
    const int d = m->cfg.d_in;
    sae_preprocess(&m->cfg, x, r, xt);
    if (m->cfg.apply_b_dec_to_input)
        for (int64_t i = 0; i < r; i++)
            for (int j = 0; j < d; j++)
                xt[i * d + j] -= m->b_dec[j];
}

/* What one block of rows keeps (elementwise architectures; top-k rows go
 * straight into the codes). */
typedef struct block_out {
    int64_t nnz;                /* entries kept; -1 when out of memory */
    int32_t *idx;
    float *val;
    int64_t *row_count;         /* [rows of the block] */
} block_out;

/* Per-thread scratch of a selection: the heap's scores and the
 * architecture's row scratch. */
typedef struct select_scratch {
    double *heap;
    void *row;
} select_scratch;

/* Codes of r rows of z (GEMM output) starting at row r0. */
static void select_rows(const sae_model *m, float *z, int64_t r0, int64_t r,
                        select_scratch *sc, sae_codes *codes, block_out *out)
{
    const int M = m->cfg.d_sae, k = m->cfg.k;
    const sae_arch *arch = m->cfg.arch;
    if (arch->select) {         /* top-k: exactly k per row */
        for (int64_t i = 0; i < r; i++) {
            const float *zr = z + i * M;
            int64_t at = (r0 + i) * k;
            topk_heap h;
            topk_heap_init(&h, k, sc->heap, codes->indices + at);
            h.scratch = sc->row;
            arch->select(m, zr, &h);
            topk_heap_sort(&h);
            for (int e = 0; e < k; e++)
                codes->values[at + e] = arch->value(m, zr, codes->indices[at + e]);
        }
        return;
    }
    /* elementwise: activate, then keep the non-zeros in the block's arrays */
    int64_t nnz = 0;
    for (int64_t i = 0; i < r; i++) {
        float *zr = z + i * M;
        arch->activate(m, zr);
        int64_t c = 0;
        for (int j = 0; j < M; j++)
            c += zr[j] != 0.0f;
        out->row_count[i] = c;
        nnz += c;
    }
    out->idx = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof *out->idx);
    out->val = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof *out->val);
    if (!out->idx || !out->val) {
        out->nnz = -1;
        return;
    }
    int64_t at = 0;
    for (int64_t i = 0; i < r; i++)
        for (int j = 0; j < M; j++)
            if (z[i * M + j] != 0.0f) {
                out->idx[at] = j;
                out->val[at++] = z[i * M + j];
            }
    out->nnz = nnz;
}

/* Many rows: blocks of up to BLOCK_ROWS rows per thread, each running its own
 * GEMM (single-threaded OpenBLAS) and selecting while z is warm. Fewer than
 * MIN_BLOCK_ROWS rows per thread, or few enough for our small-batch kernel
 * (which reads W once for up to 64 rows, where OpenBLAS would pack all of it
 * for each thread's block): one GEMM for all rows split by columns, then rows
 * selected in parallel. */
#define BLOCK_ROWS 1024
#define MIN_BLOCK_ROWS 64

static int cpu_encode(const sae_model *m, const float *x, int64_t n, sae_codes *codes,
                      sae_error *err)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    const int topk = m->cfg.arch->select != NULL;
    if (sae_codes_reserve(codes, n, topk ? n * m->cfg.k : 0, err) != SAE_OK)
        return SAE_ERR;
    codes->n_rows = n;
    codes->indptr[0] = 0;
    if (n == 0)
        return SAE_OK;
    sae_blas_init();
    const int threads = omp_get_max_threads();
    const int few = n < (int64_t)threads * MIN_BLOCK_ROWS || sae_gemm_nt_fits(n);
    int64_t rows = few ? 1 : (n + threads - 1) / threads;
    rows = rows < BLOCK_ROWS ? rows : BLOCK_ROWS;
    const int64_t n_blocks = (n + rows - 1) / rows;
    block_out *blocks = topk ? NULL : calloc((size_t)n_blocks, sizeof *blocks);
    int64_t *row_count = topk ? NULL : malloc((size_t)n * sizeof *row_count);
    /* few rows: shared x~ and z for all of them, this thread's */
    float *xt_all = few ? sae_thread_scratch(SAE_SCRATCH_ENCODE, (size_t)n * (d + M)) : NULL;
    float *z_all = xt_all ? xt_all + (size_t)n * d : NULL;
    int failed = (!topk && (!blocks || !row_count)) || (few && !xt_all);
    if (few && !failed) {
        input_rows(m, x, n, xt_all);
        sae_sgemm(false, true, (int)n, M, d, 1.0f, xt_all, d, m->W_enc_T, d, 0.0f, z_all, M);
    }
#pragma omp parallel num_threads(threads) if (!failed)
    {
        float *xt = few ? NULL : sae_thread_scratch(SAE_SCRATCH_ENCODE, (size_t)rows * (d + M));
        float *z = xt ? xt + (size_t)rows * d : NULL;
        select_scratch sc = {malloc((size_t)(topk ? m->cfg.k : 1) * sizeof(double)),
                             malloc(SAE_SELECT_SCRATCH(M))};
        int ok = sc.heap && sc.row && (few || (xt && z));
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < n_blocks; b++) {
            if (!ok)
                continue;
            int64_t r0 = b * rows, r = n - r0 < rows ? n - r0 : rows;
            float *zb = z_all ? z_all + r0 * M : z;
            if (!few) {
                input_rows(m, x + r0 * d, r, xt);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, M, d, 1.0f, xt, d,
                            m->W_enc_T, d, 0.0f, zb, M);
            }
            if (!topk)
                blocks[b].row_count = row_count + r0;
            select_rows(m, zb, r0, r, &sc, codes, topk ? NULL : &blocks[b]);
            if (!topk && blocks[b].nnz < 0) {
#pragma omp atomic write
                failed = 1;
            }
        }
        free(sc.heap);
        free(sc.row);
    }
    int rc = failed ? sae_fail(err, "encode: out of memory for a block of %lld rows",
                               (long long)rows) : SAE_OK;
    if (topk) {
        for (int64_t r = 0; r <= n; r++)
            codes->indptr[r] = r * m->cfg.k;
        return rc;
    }
    if (rc == SAE_OK) {
        for (int64_t r = 0; r < n; r++)
            codes->indptr[r + 1] = codes->indptr[r] + row_count[r];
        rc = sae_codes_reserve(codes, n, codes->indptr[n], err);
    }
    for (int64_t b = 0; b < n_blocks; b++) {
        if (rc == SAE_OK) {
            int64_t at = codes->indptr[b * rows];
            memcpy(codes->indices + at, blocks[b].idx, (size_t)blocks[b].nnz * sizeof(int32_t));
            memcpy(codes->values + at, blocks[b].val, (size_t)blocks[b].nnz * sizeof(float));
        }
        free(blocks[b].idx);
        free(blocks[b].val);
    }
    free(blocks);
    free(row_count);
    return rc;
}

static int cpu_decode(const sae_model *m, const sae_codes *codes, float *xhat, sae_error *err)
{
    const int d = m->cfg.d_in;
    if (sae_codes_validate(codes, m->cfg.d_sae, err) != SAE_OK)
        return SAE_ERR;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < codes->n_rows; r++) {
        float *o = xhat + r * d;
        memcpy(o, m->b_dec, (size_t)d * sizeof *o);
        for (int64_t e = codes->indptr[r]; e < codes->indptr[r + 1]; e++) {
            vec_axpy(codes->values[e], m->W_dec + (int64_t)codes->indices[e] * d, o, d);
        }
    }
    return SAE_OK;
}

const sae_backend sae_backend_cpu = {
    .name = "cpu",
    .attach = NULL,
    .detach = NULL,
    .encode = cpu_encode,
    .decode = cpu_decode,
};
