/* backend_cpu.c - the reference backend: OpenBLAS for the one GEMM, OpenMP
 * across rows for everything after it. Weights stay in the model's host
 * arrays, so attach has nothing to do.
 *
 * Encode works on chunks of CHUNK_ROWS rows: x~ [R, d] and z [R, M] are the
 * only buffers, so memory does not grow with the batch. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "select.h"

#define CHUNK_ROWS 256

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

/* Top-k rows: k entries each, written straight into the codes. */
static int select_topk_rows(const sae_model *m, const float *z, int64_t r, int64_t row0,
                            sae_codes *codes, sae_error *err)
{
    const int M = m->cfg.d_sae, k = m->cfg.k;
    const sae_arch *arch = m->cfg.arch;
    int failed = 0;
#pragma omp parallel
    {
        double *heap_scores = malloc((size_t)k * sizeof *heap_scores);
        if (!heap_scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < r; i++) {
            if (!heap_scores)
                continue;
            const float *zr = z + i * M;
            int64_t at = (row0 + i) * k;
            topk_heap h;
            topk_heap_init(&h, k, heap_scores, codes->indices + at);
            arch->select(m, zr, &h);
            topk_heap_sort(&h);
            for (int e = 0; e < k; e++)
                codes->values[at + e] = arch->value(m, zr, codes->indices[at + e]);
        }
        free(heap_scores);
    }
    for (int64_t i = 0; i <= r; i++)
        codes->indptr[row0 + i] = (row0 + i) * k;
    return failed ? sae_fail(err, "encode: out of memory for selection scratch") : SAE_OK;
}

/* Elementwise rows: activate in place, count, then keep the non-zeros. */
static int select_elementwise_rows(const sae_model *m, float *z, int64_t r, int64_t row0,
                                   sae_codes *codes, sae_error *err)
{
    const int M = m->cfg.d_sae;
    int64_t *count = malloc((size_t)r * sizeof *count);
    if (!count)
        return sae_fail(err, "encode: out of memory");
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r; i++) {
        float *zr = z + i * M;
        m->cfg.arch->activate(m, zr);
        int64_t c = 0;
        for (int j = 0; j < M; j++)
            c += zr[j] != 0.0f;
        count[i] = c;
    }
    for (int64_t i = 0; i < r; i++)
        codes->indptr[row0 + i + 1] = codes->indptr[row0 + i] + count[i];
    free(count);
    if (sae_codes_reserve(codes, row0 + r, codes->indptr[row0 + r], err) != SAE_OK)
        return SAE_ERR;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r; i++) {
        const float *zr = z + i * M;
        int64_t at = codes->indptr[row0 + i];
        for (int j = 0; j < M; j++)
            if (zr[j] != 0.0f) {
                codes->indices[at] = j;
                codes->values[at++] = zr[j];
            }
    }
    return SAE_OK;
}

static int cpu_encode(const sae_model *m, const float *x, int64_t n, sae_codes *codes,
                      sae_error *err)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    const int topk = m->cfg.arch->select != NULL;
    int64_t nnz_guess = topk ? n * m->cfg.k : 0;
    if (sae_codes_reserve(codes, n, nnz_guess, err) != SAE_OK)
        return SAE_ERR;
    codes->n_rows = n;
    codes->indptr[0] = 0;
    if (n == 0)
        return SAE_OK;
    int64_t rows = n < CHUNK_ROWS ? n : CHUNK_ROWS;
    float *xt = malloc((size_t)rows * d * sizeof *xt);
    float *z = malloc((size_t)rows * M * sizeof *z);
    int rc = SAE_OK;
    if (!xt || !z)
        rc = sae_fail(err, "encode: out of memory for a %lld x %d batch", (long long)rows, M);
    for (int64_t row0 = 0; rc == SAE_OK && row0 < n; row0 += rows) {
        int64_t r = n - row0 < rows ? n - row0 : rows;
        input_rows(m, x + row0 * d, r, xt);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, M, d, 1.0f, xt, d,
                    m->W_enc_T, d, 0.0f, z, M);
        rc = topk ? select_topk_rows(m, z, r, row0, codes, err)
                  : select_elementwise_rows(m, z, r, row0, codes, err);
    }
    free(xt);
    free(z);
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
            const float v = codes->values[e];
            const float *w = m->W_dec + (int64_t)codes->indices[e] * d;
            for (int j = 0; j < d; j++)
                o[j] += v * w[j];
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
