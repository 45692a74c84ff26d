/* metrics.c - evaluation passes and dictionary recovery. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "metrics.h"

#define EVAL_BATCH 4096

int sae_evaluate(const sae_model *m, const corpus *c, int64_t max_tokens, eval_result *out,
                 sae_error *err)
{
    const corpus_info *info = corpus_get_info(c);
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    if (info->d_in != d)
        return sae_fail(err, "the corpus has d_in %d, the model %d", info->d_in, d);
    int64_t n = max_tokens > 0 && max_tokens < info->n_rows ? max_tokens : info->n_rows;
    memset(out, 0, sizeof *out);
    float *x = malloc((size_t)EVAL_BATCH * d * sizeof *x);
    float *xp = malloc((size_t)EVAL_BATCH * d * sizeof *xp);
    float *xh = malloc((size_t)EVAL_BATCH * d * sizeof *xh);
    double *sum = calloc((size_t)d, sizeof *sum);
    uint8_t *fired = calloc((size_t)M, 1);
    sae_codes codes;
    sae_codes_init(&codes);
    int rc = (x && xp && xh && sum && fired) ? SAE_OK : sae_fail(err, "out of memory");
    double sq_err = 0.0, sq = 0.0;
    int64_t nnz = 0;
    for (int64_t r0 = 0; rc == SAE_OK && r0 < n; r0 += EVAL_BATCH) {
        int64_t r = n - r0 < EVAL_BATCH ? n - r0 : EVAL_BATCH;
        if (corpus_read_rows(c, r0, r, x, NULL, err) != SAE_OK ||
            sae_encode(m, x, r, &codes, err) != SAE_OK || sae_decode(m, &codes, xh, err) != SAE_OK) {
            rc = SAE_ERR;
            break;
        }
        sae_preprocess(&m->cfg, x, r, xp);
        for (int64_t p = 0; p < r * d; p++) {
            double e = (double)xh[p] - xp[p];
            sq_err += e * e;
            sq += (double)xp[p] * xp[p];
            sum[p % d] += xp[p];
        }
        for (int64_t e = 0; e < codes.indptr[r]; e++)
            if (codes.values[e] != 0.0f) {
                nnz++;
                fired[codes.indices[e]] = 1;
            }
    }
    if (rc == SAE_OK && n > 0) {
        /* sum ||x' - mean||^2 = sum ||x'||^2 - n ||mean||^2 */
        double mean_sq = 0.0;
        for (int j = 0; j < d; j++)
            mean_sq += (sum[j] / n) * (sum[j] / n);
        double var = sq - n * mean_sq;
        out->tokens = n;
        out->mse = sq_err / n;
        out->fvu = var > 0.0 ? sq_err / var : 0.0;
        out->ev = 1.0 - out->fvu;
        out->l0 = (double)nnz / n;
        for (int i = 0; i < M; i++)
            out->alive += fired[i];
        out->dead = M - out->alive;
    }
    sae_codes_free(&codes);
    free(x);
    free(xp);
    free(xh);
    free(sum);
    free(fired);
    return rc;
}

int sae_dictionary_match(const sae_model *m, const float *dict, int G, double *mmcs,
                         double *recovered, sae_error *err)
{
    const int d = m->cfg.d_in, M = m->cfg.d_sae;
    float *cos = malloc((size_t)G * M * sizeof *cos);
    float *dec_norm = malloc((size_t)M * sizeof *dec_norm);
    if (!cos || !dec_norm) {
        free(cos);
        free(dec_norm);
        return sae_fail(err, "out of memory for %d x %d cosines", G, M);
    }
    for (int i = 0; i < M; i++) {
        double s = 0.0;
        for (int j = 0; j < d; j++)
            s += (double)m->W_dec[(size_t)i * d + j] * m->W_dec[(size_t)i * d + j];
        dec_norm[i] = s > 0.0 ? (float)sqrt(s) : 1.0f;
    }
    sae_sgemm(false, true, G, M, d, 1.0f, dict, d, m->W_dec, d, 0.0f, cos, M);
    double total = 0.0;
    int found = 0;
    for (int g = 0; g < G; g++) {
        double norm = 0.0;
        for (int j = 0; j < d; j++)
            norm += (double)dict[(size_t)g * d + j] * dict[(size_t)g * d + j];
        norm = norm > 0.0 ? sqrt(norm) : 1.0;
        double best = -1.0;
        for (int i = 0; i < M; i++)
            best = fmax(best, cos[(size_t)g * M + i] / (norm * dec_norm[i]));
        total += best;
        found += best > 0.9;
    }
    *mmcs = G > 0 ? total / G : 0.0;
    *recovered = G > 0 ? (double)found / G : 0.0;
    free(cos);
    free(dec_norm);
    return SAE_OK;
}
