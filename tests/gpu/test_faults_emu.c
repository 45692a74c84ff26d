/* test_faults_emu.c - the CUDA backend's error paths, on the emulated runtime
 * (tests/gpu/emu), where a chosen call can be made to fail:
 *   - out of GPU memory at every allocation of attach: an error, no leak;
 *   - out of GPU memory when encode grows its buffers: an error, and the
 *     next encode works;
 *   - a sticky error (illegal address) at every copy of an encode and of a
 *     decode: an error beginning "fatal CUDA error:", repeated by every later
 *     call on the model, and detach still releases everything;
 *   - codes with an out-of-range index: refused before they reach the device;
 *   - k above the kernels' limit: refused at attach.
 * Exit 0 when all hold. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "cuda_runtime.h"   /* the emulated one: emu_inject */
#include "kernels.h"
#include "sae.h"

extern const sae_backend sae_backend_cuda;
int sae_cuda_probe(int device, char *desc, size_t n);

static int failures;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (!(cond)) {                                          \
            printf("FAIL  line %d: ", __LINE__);                \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
            failures++;                                         \
        }                                                       \
    } while (0)

/* small integer weights: the GEMMs are exact, so CPU and GPU agree bit for bit */
static sae_model *model_new(const char *arch_name, int d, int M, int k)
{
    const sae_arch *arch = sae_arch_find(arch_name);
    sae_model *m = calloc(1, sizeof *m);
    m->cfg.d_in = d;
    m->cfg.d_sae = M;
    m->cfg.arch = arch;
    m->cfg.k = arch->uses_k ? k : 0;
    m->cfg.apply_b_dec_to_input = true;
    m->cfg.beta_final = 1.0f;
    m->W_enc_T = malloc((size_t)M * d * sizeof(float));
    m->W_dec = malloc((size_t)M * d * sizeof(float));
    m->b_dec = calloc((size_t)d, sizeof(float));
    m->b_enc = calloc((size_t)M, sizeof(float));
    for (int i = 0; i < M * d; i++) {
        m->W_enc_T[i] = (float)((i * 7 + 3) % 5 - 2);
        m->W_dec[i] = (float)((i * 3 + 1) % 7 - 3) / 4.0f;
    }
    for (int i = 0; i < M; i++)
        m->b_enc[i] = (float)(i % 3) * 0.5f;
    return m;
}

static void model_free(sae_model *m)
{
    if (m->backend && m->backend->detach)
        m->backend->detach(m);
    free(m->W_enc_T);
    free(m->W_dec);
    free(m->b_dec);
    free(m->b_enc);
    free(m);
}

static int attach(sae_model *m, sae_error *err)
{
    m->backend = (sae_backend *)&sae_backend_cuda;
    m->backend_state = NULL;
    if (sae_backend_cuda.attach(m, err) != SAE_OK) {
        m->backend = NULL;
        return SAE_ERR;
    }
    return SAE_OK;
}

static float *inputs(int64_t n, int d)
{
    float *x = malloc((size_t)n * d * sizeof *x);
    for (int64_t i = 0; i < n * d; i++)
        x[i] = (float)((i * 11 + 5) % 5 - 2);
    return x;
}

/* GPU codes equal to the CPU's (exact data) */
static bool same_as_cpu(const sae_model *m, const float *x, int64_t n, const sae_codes *g)
{
    sae_codes c;
    sae_error err;
    sae_codes_init(&c);
    bool ok = sae_backend_cpu.encode(m, x, n, &c, &err) == SAE_OK && g->n_rows == n;
    for (int64_t r = 0; ok && r <= n; r++)
        ok = c.indptr[r] == g->indptr[r];
    for (int64_t e = 0; ok && e < c.indptr[n]; e++)
        ok = c.indices[e] == g->indices[e] && c.values[e] == g->values[e];
    sae_codes_free(&c);
    return ok;
}

static bool is_fatal(const sae_error *err)
{
    return !strncmp(err->msg, "fatal CUDA error:", 17);
}

static void attach_oom(const char *arch)
{
    const long base = emu_live_allocs();
    for (int nth = 1;; nth++) {
        sae_model *m = model_new(arch, 8, 300, 5);
        sae_error err = {{0}};
        emu_inject("malloc", nth);
        int rc = attach(m, &err);
        emu_reset();
        if (rc == SAE_OK) {
            CHECK(nth > 3, "%s: attach made only %d allocations?", arch, nth - 1);
            model_free(m);
            CHECK(emu_live_allocs() == base, "%s: detach leaks %ld blocks", arch,
                  emu_live_allocs() - base);
            printf("ok    attach of %s: out of memory at each of its %d allocations\n", arch,
                   nth - 1);
            return;
        }
        CHECK(strstr(err.msg, "out of GPU memory") != NULL, "%s: allocation %d: '%s'", arch,
              nth, err.msg);
        CHECK(emu_live_allocs() == base, "%s: failed attach (allocation %d) leaks %ld blocks",
              arch, nth, emu_live_allocs() - base);
        model_free(m);
    }
}

static void encode_oom(const char *arch)
{
    sae_model *m = model_new(arch, 8, 300, 5);
    sae_error err = {{0}};
    sae_codes g;
    sae_codes_init(&g);
    float *x = inputs(9, 8);
    CHECK(attach(m, &err) == SAE_OK, "attach: %s", err.msg);
    CHECK(sae_encode(m, x, 2, &g, &err) == SAE_OK, "encode: %s", err.msg);
    emu_inject("malloc", 1);    /* 9 rows need bigger buffers */
    int rc = sae_encode(m, x, 9, &g, &err);
    emu_reset();
    CHECK(rc != SAE_OK && strstr(err.msg, "out of GPU memory") && !is_fatal(&err),
          "%s: encode with no memory: rc %d '%s'", arch, rc, err.msg);
    CHECK(sae_encode(m, x, 9, &g, &err) == SAE_OK, "%s: encode after: %s", arch, err.msg);
    CHECK(same_as_cpu(m, x, 9, &g), "%s: codes after an out-of-memory differ from the CPU's",
          arch);
    printf("ok    %s: out of memory growing the encode buffers, then a good encode\n", arch);
    sae_codes_free(&g);
    free(x);
    model_free(m);
}

/* A sticky error at the nth copy of an encode (or decode): fatal, and fatal
 * for every later call. Returns false once nth is past the call's copies. */
static bool sticky_at(const char *arch, int nth, bool in_decode)
{
    const long base = emu_live_allocs();
    sae_model *m = model_new(arch, 8, 300, 5);
    sae_error err = {{0}};
    sae_codes g;
    sae_codes_init(&g);
    float *x = inputs(7, 8), *xhat = malloc(7 * 8 * sizeof *xhat);
    CHECK(attach(m, &err) == SAE_OK, "attach: %s", err.msg);
    if (in_decode)
        CHECK(sae_encode(m, x, 7, &g, &err) == SAE_OK, "encode: %s", err.msg);
    emu_inject("sticky", nth);
    int rc = in_decode ? sae_decode(m, &g, xhat, &err) : sae_encode(m, x, 7, &g, &err);
    bool hit = rc != SAE_OK;
    if (hit) {
        CHECK(is_fatal(&err), "%s: sticky at copy %d of %s: '%s'", arch, nth,
              in_decode ? "decode" : "encode", err.msg);
        sae_error e2 = {{0}}, e3 = {{0}};
        CHECK(sae_encode(m, x, 7, &g, &e2) != SAE_OK && is_fatal(&e2),
              "%s: encode after a sticky error: '%s'", arch, e2.msg);
        CHECK(sae_decode(m, &g, xhat, &e3) != SAE_OK && is_fatal(&e3),
              "%s: decode after a sticky error: '%s'", arch, e3.msg);
    }
    model_free(m);      /* detach must not crash on a dead context */
    emu_reset();
    CHECK(emu_live_allocs() == base, "%s: detach after a sticky error leaks %ld blocks", arch,
          emu_live_allocs() - base);
    sae_codes_free(&g);
    free(x);
    free(xhat);
    return hit;
}

static void sticky(const char *arch)
{
    int n_enc = 0, n_dec = 0;
    while (sticky_at(arch, n_enc + 1, false))
        n_enc++;
    while (sticky_at(arch, n_dec + 1, true))
        n_dec++;
    CHECK(n_enc >= 3 && n_dec >= 3, "%s: only %d / %d copies in encode / decode?", arch, n_enc,
          n_dec);
    printf("ok    %s: a sticky error at each of the %d copies of encode and %d of decode\n",
           arch, n_enc, n_dec);
}

static void bad_codes(void)
{
    sae_model *m = model_new("topk", 8, 300, 5);
    sae_error err = {{0}};
    sae_codes g;
    sae_codes_init(&g);
    float *x = inputs(3, 8), *xhat = malloc(3 * 8 * sizeof *xhat);
    CHECK(attach(m, &err) == SAE_OK, "attach: %s", err.msg);
    CHECK(sae_encode(m, x, 3, &g, &err) == SAE_OK, "encode: %s", err.msg);
    int32_t keep = g.indices[4];
    g.indices[4] = 300;
    CHECK(sae_decode(m, &g, xhat, &err) != SAE_OK && !is_fatal(&err) &&
          strstr(err.msg, "outside"), "decode of an out-of-range index: '%s'", err.msg);
    g.indices[4] = keep;
    CHECK(sae_decode(m, &g, xhat, &err) == SAE_OK, "decode after: %s", err.msg);
    printf("ok    codes with an out-of-range index are refused, the next decode works\n");
    sae_codes_free(&g);
    free(x);
    free(xhat);
    model_free(m);
}

static void k_too_big(void)
{
    sae_model *m = model_new("topk", 4, SAE_K_TOPK_MAX + 8, SAE_K_TOPK_MAX + 1);
    sae_error err = {{0}};
    CHECK(attach(m, &err) != SAE_OK && strstr(err.msg, "use device cpu"),
          "k above the limit: '%s'", err.msg);
    printf("ok    k = %d is refused at attach\n", SAE_K_TOPK_MAX + 1);
    model_free(m);
}

int main(void)
{
    char desc[256];
    if (sae_cuda_probe(0, desc, sizeof desc) != SAE_OK) {
        printf("FAIL  the emulated device is not usable: %s\n", desc);
        return 1;
    }
    attach_oom("topk");
    attach_oom("standard");
    encode_oom("topk");
    encode_oom("standard");
    sticky("topk");
    sticky("standard");
    bad_codes();
    k_too_big();
    printf("%s\n", failures ? "FAILED" : "all fault checks passed");
    return failures ? 1 : 0;
}
