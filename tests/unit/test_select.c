/* test_select - the selections that skip what cannot enter, against
 * offering every latent one by one (the definition of the top-k, ties to the
 * lower index), with scratch guarded by a sentinel past its documented size:
 *   - topk_heap_offer_row: random rows of up to 4096 latents (every length
 *     around the chunk size, and enough chunks for the quickselect floor),
 *     every k up to 64, values from a small set (many ties) or continuous,
 *     +-inf;
 *   - ptopk's select (arch.c) against the exact score of every latent
 *     (sigmoid((a - mean) rstd / beta) + lambda |a|, DESIGN.md section 3):
 *     rows of up to 2048 latents, saturated, mixed and soft gates, layernorm
 *     on and off, magnitudes from a small set (ties among saturated
 *     latents) or continuous. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "arch.h"
#include "check.h"
#include "sae.h"
#include "select.h"
#include "vec.h"

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint32_t next_u32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

/* Ties at the k-th place are broken by index on both sides, so the two
 * lists must be equal. */
static int same_selection(topk_heap *ref, topk_heap *got)
{
    topk_heap_sort(ref);
    topk_heap_sort(got);
    int same = ref->n == got->n;
    for (int e = 0; same && e < ref->n; e++)
        same = ref->idx[e] == got->idx[e] && ref->score[e] == got->score[e];
    return same;
}

#define ROW_MAX 4096

static void check_row(const float *z, const float *bias, int n, int k)
{
    double s_ref[64], s_got[64];
    int32_t i_ref[64], i_got[64];
    topk_heap ref, got;
    topk_heap_init(&ref, k, s_ref, i_ref);
    topk_heap_init(&got, k, s_got, i_got);
    for (int i = 0; i < n; i++)
        topk_heap_offer(&ref, (double)(z[i] + bias[i]), i);
    const size_t scratch_doubles = SAE_SELECT_SCRATCH(n) / sizeof(double);
    static double scratch[SAE_SELECT_SCRATCH(ROW_MAX) / sizeof(double) + 1];
    scratch[scratch_doubles] = 4242.0;
    topk_heap_offer_row(&got, z, bias, n, scratch);
    CHECK(scratch[scratch_doubles] == 4242.0);
    int same = same_selection(&ref, &got);
    if (!same)
        printf("offer_row n=%d k=%d differs from offering each\n", n, k);
    CHECK(same);
}

#define PTOPK_MAX 2048

static void check_ptopk_row(sae_model *m, const float *z, int k)
{
    const int M = m->cfg.d_sae;
    double mean = 0.0, rstd = 1.0, sum, sq, amax;
    if (m->cfg.layernorm) { /* the statistics as arch.c takes them */
        vec_sum_sq(z, m->b_enc, M, &sum, &sq, &amax);
        mean = sum / M;
        double var = sq / M - mean * mean;
        rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
    const double scale = rstd / m->cfg.beta_final, lambda = m->cfg.lambda_mag;
    static double s_ref[64], s_got[64];
    static int32_t i_ref[64], i_got[64];
    topk_heap ref, got;
    topk_heap_init(&ref, k, s_ref, i_ref);
    topk_heap_init(&got, k, s_got, i_got);
    for (int i = 0; i < M; i++) {
        double a = (double)(z[i] + m->b_enc[i]);
        topk_heap_offer(&ref, 1.0 / (1.0 + exp(-(a - mean) * scale)) + lambda * fabs(a), i);
    }
    const size_t scratch_doubles = SAE_SELECT_SCRATCH(M) / sizeof(double);
    static double scratch[SAE_SELECT_SCRATCH(PTOPK_MAX) / sizeof(double) + 1];
    scratch[scratch_doubles] = 4242.0;
    got.scratch = scratch;
    m->cfg.arch->select(m, z, &got);
    CHECK(scratch[scratch_doubles] == 4242.0);
    int same = same_selection(&ref, &got);
    if (!same)
        printf("ptopk select M=%d k=%d beta=%g differs from scoring each\n", M, k,
               m->cfg.beta_final);
    CHECK(same);
}

static void check_ptopk(void)
{
    static float z[PTOPK_MAX];
    const float betas[] = {1e-4f, 1e-2f, 1.0f};
    for (int t = 0; t < 600; t++) {
        sae_config cfg = {0};
        cfg.d_in = 4;
        cfg.d_sae = 1 + (int)(next_u32() % PTOPK_MAX);
        cfg.k = 1 + (int)(next_u32() % (uint32_t)(cfg.d_sae < 64 ? cfg.d_sae : 64));
        cfg.arch = sae_arch_find("ptopk");
        cfg.lambda_mag = t % 5 == 0 ? 0.0f : 1e-4f * (float)(1 + next_u32() % 100);
        cfg.beta_final = betas[t % 3];
        cfg.layernorm = t % 4 != 3;
        sae_model *m;
        sae_error err;
        CHECK(sae_alloc(&cfg, &m, &err) == SAE_OK);
        const int kind = (t / 3) % 2;
        for (int i = 0; i < cfg.d_sae; i++) {
            uint32_t r = next_u32();
            z[i] = kind == 0 ? (float)((int)(r % 7) - 3) : (float)(r >> 8) * 0x1p-23f - 1.0f;
            m->b_enc[i] = kind == 0 ? 0.0f : (float)(next_u32() % 3) * 0.01f;
        }
        check_ptopk_row(m, z, cfg.k);
        sae_free(m);
    }
}

int main(void)
{
    check_ptopk();
    static float z[ROW_MAX], bias[ROW_MAX];
    for (int t = 0; t < 20000; t++) {
        int n = 1 + (int)(next_u32() % (t < 10000 ? 160 : ROW_MAX));
        int k = 1 + (int)(next_u32() % (uint32_t)(n < 64 ? n : 64));
        int kind = t % 4;
        for (int i = 0; i < n; i++) {
            uint32_t r = next_u32();
            if (kind == 0) /* few distinct values: ties everywhere */
                z[i] = (float)(r % 5);
            else if (kind == 1)
                z[i] = (float)(r >> 8) * 0x1p-24f - 0.5f;
            else if (kind == 2) /* sorted ascending: the floor rises all along */
                z[i] = (float)i;
            else
                z[i] = r % 17 == 0 ? (r % 2 ? INFINITY : -INFINITY) : (float)(r % 9);
            bias[i] = kind == 1 ? (float)(next_u32() % 3) * 0.25f : 0.0f;
        }
        check_row(z, bias, n, k);
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all select checks passed\n");
    return 0;
}
