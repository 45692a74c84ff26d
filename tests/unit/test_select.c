/* test_select - topk_heap_offer_row, which skips what cannot enter, against
 * offering every latent one by one (the definition of the top-k, ties to the
 * lower index): random rows of every length around the chunk size, every k,
 * values from a small set (many ties) or continuous, +-inf, and scratch
 * guarded by a sentinel past its documented size. */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "select.h"

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint32_t next_u32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

static void check_row(const float *z, const float *bias, int n, int k)
{
    double s_ref[512], s_got[512];
    int32_t i_ref[512], i_got[512];
    topk_heap ref, got;
    topk_heap_init(&ref, k, s_ref, i_ref);
    topk_heap_init(&got, k, s_got, i_got);
    for (int i = 0; i < n; i++)
        topk_heap_offer(&ref, (double)(z[i] + bias[i]), i);
    const size_t scratch_doubles = SAE_SELECT_SCRATCH(n) / sizeof(double);
    double scratch[SAE_SELECT_SCRATCH(512) / sizeof(double) + 1];
    scratch[scratch_doubles] = 4242.0;
    topk_heap_offer_row(&got, z, bias, n, scratch);
    CHECK(scratch[scratch_doubles] == 4242.0);
    topk_heap_sort(&ref);
    topk_heap_sort(&got);
    int same = ref.n == got.n;
    for (int e = 0; same && e < ref.n; e++)
        same = i_ref[e] == i_got[e] && s_ref[e] == s_got[e];
    if (!same)
        printf("offer_row n=%d k=%d differs from offering each\n", n, k);
    CHECK(same);
}

int main(void)
{
    float z[512], bias[512];
    for (int t = 0; t < 20000; t++) {
        int n = 1 + (int)(next_u32() % (t < 10000 ? 80 : 512));
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
