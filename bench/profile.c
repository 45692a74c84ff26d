/* bench/profile - the profile pass against bare encoding, same model, same
 * corpus, same process: (a) corpus_read_rows + sae_encode over the rows in
 * batches of 4096 (what any pass over the corpus must do), (b) profile_run
 * (encode pass with statistics and spill, exact quantile rounds, bucket
 * sampling, example windows) with a sink that only counts. Each is run twice
 * and the faster run kept, so both see a warm page cache. Prints rows/s and
 * the ratio, machine-readable after '#'.
 *
 * usage: bench_profile MODEL_DIR CORPUS [MAX_TOKENS] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "blas.h"
#include "dataset.h"
#include "profile.h"
#include "sae.h"

#define BATCH 4096

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, const sae_error *err)
{
    fprintf(stderr, "bench_profile: %s: %s\n", what, err->msg);
    exit(1);
}

static void bare_encode(const sae_model *m, const corpus *c, int64_t rows)
{
    float *x = malloc((size_t)BATCH * m->cfg.d_in * sizeof *x);
    sae_codes codes;
    sae_codes_init(&codes);
    sae_error err;
    for (int64_t r = 0; r < rows; r += BATCH) {
        int64_t n = rows - r < BATCH ? rows - r : BATCH;
        if (corpus_read_rows(c, r, n, x, NULL, &err) != SAE_OK ||
            sae_encode(m, x, n, &codes, &err) != SAE_OK)
            die("encode", &err);
    }
    sae_codes_free(&codes);
    free(x);
}

/* Prints when each phase of the profile ends (the last run's figures stay). */
typedef struct phases {
    const char *phase;
    double start, at;
    char report[512];
    int len;
} phases;

static void on_progress(void *ctx, const char *phase, int64_t done, int64_t total)
{
    (void)done;
    (void)total;
    phases *p = ctx;
    double t = now();
    if (p->phase && phase != p->phase && p->len < (int)sizeof p->report - 64)
        p->len += snprintf(p->report + p->len, sizeof p->report - (size_t)p->len, " %s %.2fs",
                           p->phase, p->at - p->start);
    if (phase != p->phase)
        p->start = p->phase ? p->at : p->start;
    p->phase = phase;
    p->at = t;
}

static int count_sink(void *ctx, const profile_feature *f, sae_error *err)
{
    (void)err;
    *(int64_t *)ctx += f->n_top;
    return SAE_OK;
}

int main(int argc, char **argv)
{
    sae_blas_exec_tuned(argv, false);
    if (argc < 3) {
        fprintf(stderr, "usage: bench_profile MODEL_DIR CORPUS [MAX_TOKENS]\n");
        return 2;
    }
    sae_error err;
    sae_model *m;
    corpus *c;
    if (sae_load(argv[1], &m, &err) != SAE_OK)
        die(argv[1], &err);
    if (corpus_open(argv[2], &c, &err) != SAE_OK)
        die(argv[2], &err);
    profile_config cfg;
    profile_config_default(&cfg);
    cfg.max_tokens = argc > 3 ? atoll(argv[3]) : 0;
    cfg.spill_dir = "/tmp";
    phases ph;
    cfg.progress = on_progress;
    cfg.progress_ctx = &ph;
    int64_t rows = profile_rows(c, &cfg), examples = 0;
    double bare = 1e30, prof = 1e30;
    for (int rep = 0; rep < 3; rep++) {   /* the fastest of three, each side */
        double t0 = now();
        bare_encode(m, c, rows);
        double t1 = now();
        ph = (phases){.start = t1};
        if (profile_run(m, c, &cfg, count_sink, &examples, &err) != SAE_OK)
            die("profile", &err);
        double t2 = now();
        bare = t1 - t0 < bare ? t1 - t0 : bare;
        prof = t2 - t1 < prof ? t2 - t1 : prof;
    }
    printf("bench_profile d_in=%d d_sae=%d arch=%s k=%d rows=%lld\n", m->cfg.d_in,
           m->cfg.d_sae, argv[1], m->cfg.k, (long long)rows);
    printf("bare encode %.0f rows/s, profile %.0f rows/s, profile/encode throughput %.3f\n",
           rows / bare, rows / prof, bare / prof);
    printf("profile phases:%s %s %.2fs\n", ph.report, ph.phase, ph.at - ph.start);
    printf("# rows=%lld bare_s=%.4f profile_s=%.4f ratio=%.4f\n", (long long)rows, bare, prof,
           bare / prof);
    corpus_close(c);
    sae_free(m);
    return 0;
}
