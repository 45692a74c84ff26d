/* bench/train - one CPU training step against the encoder-GEMM floor.
 *
 * At one shape (default d_in 768, d_sae 12288, k 32, batch 4096), in one run:
 *   (a) the encoder GEMM alone, [B, d] x [d, M]:
 *       - gemm_mt:  plain cblas_sgemm with OpenBLAS' own threads
 *                   (OPENBLAS_NUM_THREADS);
 *       - gemm_sae: sae_sgemm (blas.h): single-threaded OpenBLAS under one
 *                   OpenMP pool, the way our code runs its GEMMs;
 *       the two alternated so both see the same load, with a pause after each
 *       multi-threaded call while OpenBLAS' idle threads still spin (about
 *       2^28 cycles), so they do not steal the cores from what runs next;
 *       the floor is the faster of the two.
 *   (b) trainer_step (train.h) for ptopk and topk: a trainer from trainer_new,
 *       random input rows (a few batches, cycled), a few warm-up steps, then
 *       repeated steps, each paired with one floor GEMM just before it (so on
 *       a loaded machine the step and the GEMM see the same load): medians,
 *       minima, and the median of the per-pair step/GEMM ratios. Default
 *       options (center_unit_norm, Adam, clip 10, decoder renorm); AuxK off (its dead set is empty this
 *       early in a run anyway). The steps run inside the warm-up phase of the
 *       schedule, so ptopk's temperature is beta0 = 5; "ptopk_b1e-4" is ptopk
 *       with beta0 = 1e-4, the saturated-gate regime of late training.
 * Prints a table, and one machine-readable line per case after '#'.
 *
 * usage: bench_train [d_in d_sae k batch] [--warmup N] [--reps N] [--seconds S]
 *                    [--arch NAME[,NAME...]] [--no-gemm]
 *   --no-gemm: steps only, no GEMM (for profiling the step)
 *   arch names: ptopk, topk, ptopk_b1e-4 (default ptopk,topk,ptopk_b1e-4)
 *   environment: OMP_NUM_THREADS (our pool), OPENBLAS_NUM_THREADS (gemm_mt). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "sae.h"
#include "train.h"

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

static float uniform(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) / (double)(1ULL << 24)) * 2.0f - 1.0f;
}

#define MAX_REPS 200

/* After a multi-threaded OpenBLAS call its workers spin before they sleep. */
static void let_openblas_park(void)
{
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

typedef struct timing {
    double median, min, max;
    int n;
} timing;

static timing summarise(double *t, int n)
{
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    timing r = {t[n / 2], t[0], t[n - 1], n};
    if (n % 2 == 0)
        r.median = 0.5 * (t[n / 2 - 1] + t[n / 2]);
    return r;
}


typedef struct gemm_ctx {
    int B, d, M;
    const float *x, *W_enc_T;
    float *z;
} gemm_ctx;

static void run_gemm_mt(void *p, int i)
{
    (void)i;
    gemm_ctx *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->B, c->M, c->d, 1.0f, c->x, c->d,
                c->W_enc_T, c->d, 0.0f, c->z, c->M);
}

static void run_gemm_sae(void *p, int i)
{
    (void)i;
    gemm_ctx *c = p;
    sae_sgemm(false, true, c->B, c->M, c->d, 1.0f, c->x, c->d, c->W_enc_T, c->d, 0.0f, c->z,
              c->M);
}

typedef struct step_ctx {
    trainer *t;
    float **batches;
    int n_batches;
    step_stats st;
} step_ctx;

static void run_step(void *p, int i)
{
    step_ctx *c = p;
    sae_error err;
    if (trainer_step(c->t, c->batches[i % c->n_batches], &c->st, &err) != SAE_OK) {
        fprintf(stderr, "bench_train: step: %s\n", err.msg);
        exit(1);
    }
}

static void print_json_timing(const char *name, timing t)
{
    printf("\"%s_s\": %.6g, \"%s_min_s\": %.6g, \"%s_max_s\": %.6g, \"%s_n\": %d", name,
           t.median, name, t.min, name, t.max, name, t.n);
}

int main(int argc, char **argv)
{
    sae_blas_exec_tuned(argv, false);
    int d = 768, M = 12288, k = 32, B = 4096;
    int warmup = 3, reps = 7;
    double seconds = 0.0;
    int do_gemm = 1;
    char arch_list[256] = "ptopk,topk,ptopk_b1e-4";
    int pos[4], n_pos = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--warmup") && a + 1 < argc)
            warmup = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--reps") && a + 1 < argc)
            reps = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--seconds") && a + 1 < argc)
            seconds = atof(argv[++a]);
        else if (!strcmp(argv[a], "--arch") && a + 1 < argc)
            snprintf(arch_list, sizeof arch_list, "%s", argv[++a]);
        else if (!strcmp(argv[a], "--no-gemm"))
            do_gemm = 0;
        else if (n_pos < 4 && argv[a][0] != '-')
            pos[n_pos++] = atoi(argv[a]);
        else {
            fprintf(stderr, "usage: bench_train [d_in d_sae k batch] [--warmup N] [--reps N] "
                            "[--seconds S] [--arch a,b] [--no-gemm]\n");
            return 2;
        }
    }
    if (n_pos > 0) d = pos[0];
    if (n_pos > 1) M = pos[1];
    if (n_pos > 2) k = pos[2];
    if (n_pos > 3) B = pos[3];
    if (reps < 1) reps = 1;
    if (reps > MAX_REPS) reps = MAX_REPS;

    /* random input rows: a few batches, cycled through the steps */
    enum { N_BATCHES = 4 };
    float *batches[N_BATCHES];
    unsigned long long s = 7;
    for (int b = 0; b < N_BATCHES; b++) {
        batches[b] = malloc((size_t)B * d * sizeof(float));
        if (!batches[b])
            return 1;
        for (size_t i = 0; i < (size_t)B * d; i++)
            batches[b][i] = uniform(&s);
    }

    printf("bench_train d_in=%d d_sae=%d k=%d batch=%d; omp threads %d, openblas threads %d "
           "(gemm_mt); warmup %d, >= %d reps, median\n",
           d, M, k, B, omp_get_max_threads(), openblas_get_num_threads(), warmup, reps);
    fflush(stdout);

    /* the encoder's weights for the GEMM alone (the trainer has its own) */
    float *W = malloc((size_t)M * d * sizeof *W);
    float *z = malloc((size_t)B * M * sizeof *z);
    if (!W || !z)
        return 1;
    for (size_t i = 0; i < (size_t)M * d; i++)
        W[i] = uniform(&s) / sqrtf((float)d);
    gemm_ctx g = {B, d, M, batches[0], W, z};
    const int blas_threads = openblas_get_num_threads();
    const double gflop = 2.0 * B * (double)M * d * 1e-9;

    int floor_mt = 0;           /* the floor is plain cblas_sgemm, not sae_sgemm */
    if (do_gemm) {
        /* plain multi-threaded cblas_sgemm and sae_sgemm, alternated so both
         * see the same load; OpenBLAS goes back to 1 thread before each
         * sae_sgemm (sae_sgemm's own sae_blas_init only does it once). */
        double t_mt[MAX_REPS], t_sae[MAX_REPS];
        int n = 0;
        for (int i = 0; i < 2; i++) {
            openblas_set_num_threads(blas_threads);
            run_gemm_mt(&g, 0);
            openblas_set_num_threads(1);
            let_openblas_park();
            run_gemm_sae(&g, 0);
        }
        double start = now();
        while (n < MAX_REPS && (n < reps || now() - start < seconds)) {
            openblas_set_num_threads(blas_threads);
            double t0 = now();
            run_gemm_mt(&g, 0);
            double t1 = now();
            openblas_set_num_threads(1);
            let_openblas_park();
            double t2 = now();
            run_gemm_sae(&g, 0);
            t_sae[n] = now() - t2;
            t_mt[n++] = t1 - t0;
        }
        openblas_set_num_threads(1);
        timing mt = summarise(t_mt, n), sae = summarise(t_sae, n);
        floor_mt = mt.median < sae.median;
        printf("gemm [%d,%d]x[%d,%d] %.1f GFLOP, alternated, median (min): cblas_sgemm "
               "(OpenBLAS %d threads) %.1f ms (%.1f), %.1f GFLOP/s; sae_sgemm (OpenMP %d x "
               "1-thread OpenBLAS) %.1f ms (%.1f), %.1f GFLOP/s; floor: %s\n",
               B, d, d, M, gflop, blas_threads, mt.median * 1e3, mt.min * 1e3,
               gflop / mt.median, omp_get_max_threads(), sae.median * 1e3, sae.min * 1e3,
               gflop / sae.median, sae.median <= mt.median ? "sae_sgemm" : "cblas_sgemm");
        printf("# {\"case\": \"gemm\", \"B\": %d, \"d_in\": %d, \"d_sae\": %d, "
               "\"blas_threads\": %d, \"omp_threads\": %d, ",
               B, d, M, blas_threads, omp_get_max_threads());
        print_json_timing("gemm_mt", mt);
        printf(", ");
        print_json_timing("gemm_sae", sae);
        printf("}\n");
        fflush(stdout);
    }
    sae_blas_init();

    char *save = NULL;
    for (char *name = strtok_r(arch_list, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        train_options o;
        train_options_default(&o);
        const int low_beta = !strcmp(name, "ptopk_b1e-4");
        o.arch = low_beta ? "ptopk" : name;
        o.d_sae = M;
        o.k = k;
        o.batch = B;
        o.steps = 1000000;      /* every timed step sits in the warm-up phase */
        o.auxk = false;
        o.seed = 1;
        if (low_beta)
            o.beta0 = 1e-4f;
        trainer *t;
        sae_error err;
        if (trainer_new(&o, d, &t, &err) != SAE_OK) {
            fprintf(stderr, "bench_train: trainer_new(%s): %s\n", name, err.msg);
            return 1;
        }
        step_ctx c = {.t = t, .batches = batches, .n_batches = N_BATCHES};
        /* warm-up, then steps alternated with sae_sgemm: the ratio compares
         * times taken under the same load */
        int i = 0, n = 0;
        for (; i < warmup; i++)
            run_step(&c, i);
        double t_step[MAX_REPS], t_gemm[MAX_REPS], ratio[MAX_REPS];
        double start = now();
        while (n < MAX_REPS && (n < reps || now() - start < seconds)) {
            if (floor_mt)
                openblas_set_num_threads(blas_threads);
            double t0 = now();
            if (do_gemm)
                (floor_mt ? run_gemm_mt : run_gemm_sae)(&g, 0);
            double t1 = do_gemm ? now() : t0 + NAN;
            openblas_set_num_threads(1);
            if (floor_mt)
                let_openblas_park();
            double t2 = now();
            run_step(&c, i++);
            t_step[n] = now() - t2;
            t_gemm[n] = t1 - t0;
            ratio[n] = t_step[n] / t_gemm[n];
            n++;
        }
        timing ts = summarise(t_step, n), tg = summarise(t_gemm, n), tr = summarise(ratio, n);
        printf("%-12s step %.1f ms (min %.1f, max %.1f, n %d), %.0f tokens/s; %s "
               "alongside %.1f ms (min %.1f); step/gemm median of pairs %.2f, min/min %.2f; "
               "last step: loss %.4g fvu %.4g l0 %.1f beta %.3g\n",
               name, ts.median * 1e3, ts.min * 1e3, ts.max * 1e3, ts.n, B / ts.median,
               floor_mt ? "cblas_sgemm" : "sae_sgemm", tg.median * 1e3, tg.min * 1e3, tr.median, ts.min / tg.min, c.st.loss,
               c.st.fvu, c.st.l0, c.st.beta);
        printf("# {\"case\": \"step\", \"arch\": \"%s\", \"B\": %d, \"d_in\": %d, "
               "\"d_sae\": %d, \"k\": %d, \"beta\": %.6g, \"fvu\": %.6g, "
               "\"ratio_median\": %.6g, \"gemm\": \"%s\", ",
               name, B, d, M, k, c.st.beta, c.st.fvu, tr.median,
               floor_mt ? "cblas_sgemm" : "sae_sgemm");
        print_json_timing("step", ts);
        printf(", ");
        print_json_timing("gemm", tg);
        printf("}\n");
        fflush(stdout);
        trainer_free(t);
    }
    free(W);
    free(z);
    for (int b = 0; b < N_BATCHES; b++)
        free(batches[b]);
    return 0;
}
