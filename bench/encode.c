/* bench/encode - encode and decode speed against the GEMM floor.
 *
 * For each batch size B: (a) the encoder GEMM alone on the shape
 * [B, d] x [d, M] (the floor for a dense encoder: the faster of OpenBLAS on
 * its own threads and our OpenMP split of single-threaded OpenBLAS), (b) our sae_encode (ptopk
 * and topk: preprocessing, GEMM, selection, sparse codes), (c) our sparse
 * decode against (d) a dense decode GEMM [B, M] x [M, d]. Prints one line per
 * case, machine-readable after '#'. Times are medians of repeats; enc/gemm is
 * the median of per-repeat ratios, each encode run right after the two GEMMs
 * (time_encode), so that all see the same load on a shared machine.
 *
 * usage: bench_encode [d_in d_sae k] [B ...] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>
#include <stdbool.h>

#include "arch.h"
#include "blas.h"
#include "sae.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Repeats fn until about min_seconds have passed (at least 3 times, at most
 * 50), returns the median time of one call. */
typedef void (*bench_fn)(void *ctx);
static double median_time(bench_fn fn, void *ctx, double min_seconds)
{
    double t[50];
    int n = 0;
    fn(ctx); /* warm-up */
    double start = now();
    while (n < 50 && (n < 3 || now() - start < min_seconds)) {
        double t0 = now();
        fn(ctx);
        t[n++] = now() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

static float uniform(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) / (double)(1ULL << 24)) * 2.0f - 1.0f;
}

typedef struct ctx {
    sae_model *m;
    const float *x;
    int B;
    float *z, *xhat, *dense;
    sae_codes codes;
} ctx;

/* The GEMM floor, two ways: OpenBLAS on its own threads, and our OpenMP split
 * over single-threaded OpenBLAS (blas.h). The faster is the floor. */
static void run_gemm(void *p)
{
    ctx *c = p;
    int d = c->m->cfg.d_in, M = c->m->cfg.d_sae;
    openblas_set_num_threads(omp_get_max_threads());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->B, M, d, 1.0f, c->x, d,
                c->m->W_enc_T, d, 0.0f, c->z, M);
    openblas_set_num_threads(1);
}

static void run_gemm_split(void *p)
{
    ctx *c = p;
    int d = c->m->cfg.d_in, M = c->m->cfg.d_sae;
    sae_sgemm(false, true, c->B, M, d, 1.0f, c->x, d, c->m->W_enc_T, d, 0.0f, c->z, M);
}

static void run_encode(void *p)
{
    ctx *c = p;
    sae_error err;
    if (sae_encode(c->m, c->x, c->B, &c->codes, &err) != SAE_OK) {
        fprintf(stderr, "encode: %s\n", err.msg);
        exit(1);
    }
}

static void run_sparse_decode(void *p)
{
    ctx *c = p;
    sae_error err;
    if (sae_decode(c->m, &c->codes, c->xhat, &err) != SAE_OK) {
        fprintf(stderr, "decode: %s\n", err.msg);
        exit(1);
    }
}

static void run_dense_decode(void *p)
{
    ctx *c = p;
    int d = c->m->cfg.d_in, M = c->m->cfg.d_sae;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->B, d, M, 1.0f, c->dense, M,
                c->m->W_dec, d, 0.0f, c->xhat, d);
}

/* After a multi-threaded OpenBLAS call its workers spin before they sleep
 * (about 2^28 cycles): a pause, so they do not steal the cores from what
 * runs next. */
static void let_openblas_park(void)
{
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* The encode against the GEMM floor, in triples run back to back so that all
 * three see the same load: OpenBLAS on its threads, our split GEMM, our
 * encode (at least 5 triples, at most 50, about min_seconds). Medians of
 * each, and the median over triples of encode / the faster GEMM. */
typedef struct encode_timing {
    double gemm_mt, gemm_split, encode, ratio;
} encode_timing;

static encode_timing time_encode(void *ctx, double min_seconds)
{
    double mt[50], split[50], enc[50], ratio[50];
    bench_fn fns[3] = {run_gemm, run_gemm_split, run_encode};
    int n = 0;
    double start = now();
    for (int warm = 1; n < 50 && (n < 5 || now() - start < min_seconds); warm = 0) {
        double t[3];
        for (int f = 0; f < 3; f++) {
            double t0 = now();
            fns[f](ctx);
            t[f] = now() - t0;
            if (f == 0)
                let_openblas_park();
        }
        if (warm) {
            start = now();
            continue;
        }
        mt[n] = t[0];
        split[n] = t[1];
        enc[n] = t[2];
        ratio[n] = t[2] / (t[0] < t[1] ? t[0] : t[1]);
        n++;
    }
    qsort(mt, (size_t)n, sizeof mt[0], cmp_double);
    qsort(split, (size_t)n, sizeof split[0], cmp_double);
    qsort(enc, (size_t)n, sizeof enc[0], cmp_double);
    qsort(ratio, (size_t)n, sizeof ratio[0], cmp_double);
    return (encode_timing){mt[n / 2], split[n / 2], enc[n / 2], ratio[n / 2]};
}

static sae_model *random_model(const char *arch, int d, int M, int k)
{
    sae_config cfg = {0};
    cfg.d_in = d;
    cfg.d_sae = M;
    cfg.k = k;
    cfg.arch = sae_arch_find(arch);
    cfg.apply_b_dec_to_input = true;
    cfg.normalize = !strcmp(arch, "ptopk") ? SAE_NORM_CENTER_UNIT_NORM : SAE_NORM_NONE;
    cfg.lambda_mag = 1e-4f;
    cfg.beta_final = 1e-4f;
    cfg.layernorm = true;
    sae_model *m;
    sae_error err;
    if (sae_alloc(&cfg, &m, &err) != SAE_OK) {
        fprintf(stderr, "alloc: %s\n", err.msg);
        exit(1);
    }
    unsigned long long s = 42;
    float scale = 1.0f / sqrtf((float)d);
    for (long i = 0; i < (long)M * d; i++) {
        m->W_enc_T[i] = uniform(&s) * scale;
        m->W_dec[i] = uniform(&s) * scale;
    }
    for (int i = 0; i < M; i++)
        m->b_enc[i] = 0.01f * uniform(&s);
    for (int j = 0; j < d; j++)
        m->b_dec[j] = 0.01f * uniform(&s);
    return m;
}

int main(int argc, char **argv)
{
    sae_blas_exec_tuned(argv, false);
    int d = 768, M = 24576, k = 32;
    int batches[8] = {1, 64, 4096}, n_batches = 3;
    if (argc >= 4) {
        d = atoi(argv[1]);
        M = atoi(argv[2]);
        k = atoi(argv[3]);
        n_batches = 0;
        for (int i = 4; i < argc && n_batches < 8; i++)
            batches[n_batches++] = atoi(argv[i]);
        if (n_batches == 0)
            batches[n_batches++] = 4096;
    }
    int max_b = 0;
    for (int i = 0; i < n_batches; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;

    float *x = malloc((size_t)max_b * d * sizeof *x);
    float *z = malloc((size_t)max_b * M * sizeof *z);
    float *xhat = malloc((size_t)max_b * d * sizeof *xhat);
    float *dense = calloc((size_t)max_b * M, sizeof *dense);
    if (!x || !z || !xhat || !dense)
        return 1;
    unsigned long long s = 7;
    for (long i = 0; i < (long)max_b * d; i++)
        x[i] = uniform(&s);

    printf("bench_encode d_in=%d d_sae=%d k=%d (median times)\n", d, M, k);
    printf("%-6s %6s %10s %10s %8s %10s %10s %8s\n", "arch", "B", "gemm_ms", "encode_ms",
           "enc/gemm", "sdec_ms", "ddec_ms", "ddec/sdec");
    const char *arches[] = {"ptopk", "topk"};
    for (int a = 0; a < 2; a++) {
        sae_model *m = random_model(arches[a], d, M, k);
        for (int bi = 0; bi < n_batches; bi++) {
            ctx c = {.m = m, .x = x, .B = batches[bi], .z = z, .xhat = xhat, .dense = dense};
            sae_codes_init(&c.codes);
            double min_s = batches[bi] >= 1024 ? 3.0 : 1.0;
            encode_timing e = time_encode(&c, min_s);
            double t_gemm_mt = e.gemm_mt, t_gemm_split = e.gemm_split, t_enc = e.encode;
            double t_gemm = t_gemm_mt < t_gemm_split ? t_gemm_mt : t_gemm_split;
            double enc_over_gemm = e.ratio;
            for (int64_t r = 0; r < c.codes.n_rows; r++)
                for (int64_t e = c.codes.indptr[r]; e < c.codes.indptr[r + 1]; e++)
                    dense[r * M + c.codes.indices[e]] = c.codes.values[e];
            double t_sdec = median_time(run_sparse_decode, &c, min_s);
            double t_ddec = median_time(run_dense_decode, &c, min_s);
            memset(dense, 0, (size_t)max_b * M * sizeof *dense);
            printf("%-6s %6d %10.3f %10.3f %8.3f %10.3f %10.3f %8.1f\n", arches[a], c.B,
                   t_gemm * 1e3, t_enc * 1e3, enc_over_gemm, t_sdec * 1e3, t_ddec * 1e3,
                   t_ddec / t_sdec);
            printf("# {\"arch\": \"%s\", \"B\": %d, \"gemm_s\": %.6g, \"gemm_mt_s\": %.6g, "
                   "\"gemm_split_s\": %.6g, \"encode_s\": %.6g, \"sparse_decode_s\": %.6g, "
                   "\"dense_decode_s\": %.6g, \"encode_over_gemm\": %.4g}\n",
                   arches[a], c.B, t_gemm, t_gemm_mt, t_gemm_split, t_enc, t_sdec, t_ddec,
                   enc_over_gemm);
            fflush(stdout);
            sae_codes_free(&c.codes);
        }
        sae_free(m);
    }
    free(x);
    free(z);
    free(xhat);
    free(dense);
    return 0;
}
