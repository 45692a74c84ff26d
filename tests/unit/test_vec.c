/* test_vec - the training step's vector kernels (vec.h) against plain scalar
 * references written from their contracts, checkasm style: random inputs,
 * lengths that are not multiples of the vector width, outputs pre-filled
 * with a sentinel so that a write past the end or a missed element shows.
 *   vec_slice_sums:   the same products and sums in the same order as
 *                     y += f x term by term, so equal to the bit, stored
 *                     plainly or (64-byte aligned) streamed;
 *   vec_logistic_key: each key within the fast key's bound of l + log u -
 *                     log(1 - u) in double (u as training rounds it); per
 *                     chunk exactly the largest key written and the largest
 *                     |z + bias|, and the score bounds as ptopk_bounds
 *                     defines them (up to the margin's rounding);
 *   vec_keys_reaching and vec_absa_reaching: exactly their formulas;
 *   vec_kth_largest:  the k-th of the values sorted, for every k;
 *   vec_sum, vec_sum_squares, vec_sum_sq_dev, vec_sum_sq_diff: to the bit,
 *                     against the sixteen lanes vec.h describes, summed in
 *                     scalar double; vec_shift_scale: its formula. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vec.h"

#define SENTINEL 1234.5f

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint32_t next_u32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

static float uniform(void) /* in [-0.5, 0.5) */
{
    return (float)(next_u32() >> 8) * 0x1p-24f - 0.5f;
}

static void check_slice_sums(int rows_total, int n, int w, int add, int aligned)
{
    const size_t ld = 40; /* rows wider than the slice, as in the step's copies */
    float A[64 * 40], B[64 * 40], fa[64], fb[64];
    int32_t rows[64];
    for (int i = 0; i < rows_total * (int)ld; i++) {
        A[i] = uniform();
        B[i] = uniform();
    }
    for (int q = 0; q < n; q++) {
        rows[q] = (int32_t)(next_u32() % (uint32_t)rows_total);
        fa[q] = uniform();
        fb[q] = uniform();
    }
    /* outputs on 64-byte boundaries (where the sums may be streamed), or one
     * float past them */
    _Alignas(64) float out_a[VEC_SLICE + 16 + 4], out_b[VEC_SLICE + 16 + 4];
    float *sa = out_a + (aligned ? 0 : 1), *sb = out_b + (aligned ? 0 : 1);
    float ra[VEC_SLICE], rb[VEC_SLICE];
    for (int c = 0; c < VEC_SLICE + 4; c++)
        sa[c] = sb[c] = c < w ? uniform() : SENTINEL;
    for (int c = 0; c < w; c++) {
        ra[c] = add ? sa[c] : 0.0f;
        rb[c] = add ? sb[c] : 0.0f;
        for (int q = 0; q < n; q++) {
            ra[c] += fa[q] * A[(size_t)rows[q] * ld + c];
            rb[c] += fb[q] * B[(size_t)rows[q] * ld + c];
        }
    }
    vec_slice_sums(rows, fa, fb, n, A, B, ld, w, add, sa, sb);
    vec_stream_fence();
    int wrong = 0;
    for (int c = 0; c < w; c++)
        wrong += memcmp(&sa[c], &ra[c], sizeof ra[c]) != 0 || memcmp(&sb[c], &rb[c], sizeof rb[c]);
    for (int c = w; c < VEC_SLICE + 4; c++)
        wrong += sa[c] != SENTINEL || sb[c] != SENTINEL;
    if (wrong)
        printf("vec_slice_sums n %d w %d add %d aligned %d: %d wrong\n", n, w, add, aligned,
               wrong);
    CHECK(wrong == 0);
}

/* the fast key's bound (vec.h: the logit within 0.0597, the integers' and
 * l's float rounding), inside the margin callers use */
static double key_error_bound(double exact)
{
    return 0.0597 + 2e-5 + 1e-6 * fabs(exact);
}

/* The largest score bounds of latents lo..hi as vec.h's ptopk_bounds defines
 * them, the margin taken 1e-6 wider ([0]) or narrower ([1]): the pass's
 * float rounding may land either side. (The bounds are positive.) */
static void bounds_ref(const float *key, const float *z, const float *bias, int lo, int hi,
                       const ptopk_bounds *bd, float lb[2], float ub[2])
{
    lb[0] = lb[1] = ub[0] = ub[1] = -INFINITY;
    for (int i = lo; i < hi; i++) {
        const float base = bd->lambda * fabsf(z[i] + bias[i]);
        const double margin = KEY_MARGIN_ABS + KEY_MARGIN_REL * fabs(key[i]);
        for (int side = 0; side < 2; side++) {
            const double m = margin * (side ? 1.0 - 1e-6 : 1.0 + 1e-6);
            const float l = base + (key[i] - m >= bd->saturated ? 1.0f : 0.0f);
            const float u = base + (key[i] + m <= bd->unsaturated ? 0.0f : 1.0f);
            lb[side] = l > lb[side] ? l : lb[side];
            ub[side] = u > ub[side] ? u : ub[side];
        }
    }
}

static void check_logistic_key(int n, int chunk, int noise, int with_bounds)
{
    enum { MAX = 300 };
    float z[MAX], bias[MAX], key[MAX + 4], key_max[MAX / 16 + 2], absa_max[MAX / 16 + 2];
    float lb_max[MAX / 16 + 2], ub_max[MAX / 16 + 2];
    /* thresholds inside the keys' range, so both bounds take both values */
    const ptopk_bounds bounds = {0.5f, -0.5f, 0.01f, lb_max, ub_max};
    uint32_t bits[MAX];
    const float mean = uniform(), rstd = 1.5f + uniform();
    for (int i = 0; i < n; i++) {
        z[i] = 4.0f * uniform();
        bias[i] = uniform();
        bits[i] = next_u32();
    }
    bits[0] = 0;            /* u at its ends: 2^-25 and (rounded in float) 1 */
    bits[n - 1] = ~0u;
    const int chunks = (n + chunk - 1) / chunk;
    for (int i = 0; i < MAX + 4; i++)
        key[i] = SENTINEL;
    for (int c = 0; c < chunks + 1; c++)
        key_max[c] = absa_max[c] = lb_max[c] = ub_max[c] = SENTINEL;
    vec_logistic_key(z, bias, mean, rstd, noise ? bits : NULL, n, chunk, key, key_max, absa_max,
                     with_bounds ? &bounds : NULL);
    int wrong = 0;
    for (int i = 0; i < n; i++) {
        const float a = z[i] + bias[i], l = (a - mean) * rstd;
        double exact = l;
        if (noise) {
            /* u as training defines it (train.c's unit_uniform): rounded in
             * float, 1 at the top, where the noise is +inf and the fast key
             * must be far above any bound */
            const double u = ((float)(bits[i] >> 8) + 0.5f) * 0x1p-24f;
            if (u == 1.0) {
                wrong += !(key[i] > 80.0f);
                continue;
            }
            exact += log(u) - log(1.0 - u);
        } else if (key[i] != l) { /* no noise: the float formula itself */
            wrong++;
        }
        if (!(fabs(key[i] - exact) <= key_error_bound(exact))) {
            if (wrong++ < 5)
                printf("key %d: %.9g, exact %.9g\n", i, key[i], exact);
        }
    }
    for (int i = n; i < MAX + 4; i++)
        wrong += key[i] != SENTINEL;
    for (int c = 0; c < chunks; c++) {
        float km = -INFINITY, am = 0.0f;
        for (int i = c * chunk; i < n && i < (c + 1) * chunk; i++) {
            km = key[i] > km ? key[i] : km;
            am = fabsf(z[i] + bias[i]) > am ? fabsf(z[i] + bias[i]) : am;
        }
        wrong += key_max[c] != km || absa_max[c] != am;
        if (with_bounds) {
            float lb[2], ub[2];
            bounds_ref(key, z, bias, c * chunk, (c + 1) * chunk < n ? (c + 1) * chunk : n,
                       &bounds, lb, ub);
            /* within float rounding (the pass may fuse lambda |a| + 1) */
            wrong += !(lb[0] * (1.0 - 1e-6) <= lb_max[c] && lb_max[c] <= lb[1] * (1.0 + 1e-6));
            wrong += !(ub[1] * (1.0 - 1e-6) <= ub_max[c] && ub_max[c] <= ub[0] * (1.0 + 1e-6));
        } else {
            wrong += lb_max[c] != SENTINEL || ub_max[c] != SENTINEL;
        }
    }
    wrong += key_max[chunks] != SENTINEL || absa_max[chunks] != SENTINEL;
    wrong += lb_max[chunks] != SENTINEL || ub_max[chunks] != SENTINEL;
    if (wrong)
        printf("vec_logistic_key n %d chunk %d noise %d bounds %d: %d wrong\n", n, chunk, noise,
               with_bounds, wrong);
    CHECK(wrong == 0);
}

static void check_reach(int n)
{
    float key[64] = {0}, z[64] = {0}, bias[64] = {0};
    for (int i = 0; i < n; i++) {
        key[i] = 8.0f * uniform();
        z[i] = 100.0f * uniform();
        bias[i] = uniform();
    }
    const float threshold = 1.0f;
    uint64_t ref = 0;
    for (int j = 0; j < n; j++) {
        const float reach = key[j] + (float)(1.25 * KEY_MARGIN_ABS) +
                            (float)(1.5 * KEY_MARGIN_REL) * fabsf(key[j]);
        ref |= (uint64_t)(reach >= threshold) << j;
    }
    CHECK(vec_keys_reaching(key, n, threshold) == ref);
    const float amin = 30.0f;
    ref = 0;
    for (int j = 0; j < n; j++)
        ref |= (uint64_t)(fabsf(z[j] + bias[j]) >= amin) << j;
    CHECK(vec_absa_reaching(z, bias, n, amin) == ref);
}

/* sum of d or d^2, d = a - b (b NULL: a - shift), as vec.h orders it: lane
 * l takes elements l, l + 16, ...; lanes l and l + 8 are added pairwise,
 * then the tail. */
static double lane_sum_ref(const float *a, const float *b, double shift, int square, int n)
{
    double lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) {
            const double d = (double)a[i + l] - (b ? (double)b[i + l] : shift);
            lane[l] += square ? d * d : d;
        }
    double s = 0.0;
    for (int l = 0; l < 8; l++)
        s += lane[l] + lane[l + 8];
    for (; i < n; i++) {
        const double d = (double)a[i] - (b ? (double)b[i] : shift);
        s += square ? d * d : d;
    }
    return s;
}

static void check_sums(int n)
{
    float a[100], b[100], out[101];
    for (int i = 0; i < n; i++) { /* magnitudes 2^-20 .. 2^20: the order of the sums shows */
        a[i] = ldexpf(uniform(), (int)(next_u32() % 41) - 20);
        b[i] = a[i] + ldexpf(uniform(), (int)(next_u32() % 41) - 20);
    }
    const double shift = 0.3 * uniform();
    CHECK(vec_sum(a, (size_t)n) == lane_sum_ref(a, NULL, 0.0, 0, n));
    CHECK(vec_sum_squares(a, (size_t)n) == lane_sum_ref(a, NULL, 0.0, 1, n));
    CHECK(vec_sum_sq_dev(a, shift, (size_t)n) == lane_sum_ref(a, NULL, shift, 1, n));
    CHECK(vec_sum_sq_diff(a, b, (size_t)n) == lane_sum_ref(a, b, 0.0, 1, n));
    out[n] = SENTINEL;
    vec_shift_scale(a, shift, 1.7, out, (size_t)n);
    int wrong = out[n] != SENTINEL;
    for (int i = 0; i < n; i++)
        wrong += out[i] != (float)((a[i] - shift) * 1.7);
    CHECK(wrong == 0);
}

static int descending(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* vec_kth_largest against sorting: every k, values with ties, both signs,
 * zeros of both signs and -inf */
static void check_kth_largest(int n)
{
    float v[200], sorted[200];
    int32_t work[200];
    const float pool[] = {0.0f, -0.0f, 1.5f, -1.5f, -INFINITY, 3.0f, 1e-30f, -2e30f};
    for (int i = 0; i < n; i++)
        v[i] = next_u32() % 3 ? 100.0f * uniform() : pool[next_u32() % 8];
    memcpy(sorted, v, (size_t)n * sizeof *v);
    qsort(sorted, (size_t)n, sizeof *sorted, descending);
    int wrong = 0;
    for (int k = 1; k <= n; k++)
        wrong += vec_kth_largest(v, n, k, work) != sorted[k - 1];
    CHECK(wrong == 0);
}

int main(void)
{
    const int widths[] = {VEC_SLICE, 17, 1};
    for (int t = 0; t < 3; t++)
        for (int add = 0; add <= 1; add++)
            for (int n = 0; n <= 40; n += 13)
                for (int aligned = 0; aligned <= 1; aligned++)
                    check_slice_sums(64, n, widths[t], add, aligned);
    const int lengths[] = {16, 64, 100, 256, 299}, chunk_sizes[] = {16, 32, 64};
    for (int i = 0; i < 5; i++)
        for (int c = 0; c < 3; c++)
            for (int noise = 0; noise <= 1; noise++)
                for (int with_bounds = 0; with_bounds <= 1; with_bounds++)
                    check_logistic_key(lengths[i], chunk_sizes[c], noise, with_bounds);
    for (int n = 1; n <= 64; n += 9)
        check_reach(n);
    for (int n = 0; n <= 100; n += 11)
        check_sums(n);
    for (int n = 1; n <= 200; n += 19)
        check_kth_largest(n);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all vec checks passed\n");
    return 0;
}
