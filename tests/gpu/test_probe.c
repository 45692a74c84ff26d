/* test_probe.c - finding a GPU, on whatever machine runs it.
 *
 * With a usable GPU: sae_cuda_probe describes it, "cuda" attaches and a
 * small encode matches the CPU. Without one (no device, no driver): the probe
 * returns SAE_ERR with a reason instead of crashing, "auto" falls back to the
 * CPU and "cuda" fails naming that reason. A device number that does not
 * exist is refused either way. Either way cuBLAS, which saed opens with
 * dlopen (cublas_fns.h), loads and has every entry point we call, and the
 * program did not load it before (the point of opening it late). Exit 0 when
 * that holds. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlfcn.h>

#include "arch.h"
#include "backend.h"
#include "cublas_fns.h"
#include "sae.h"

extern const sae_backend sae_backend_cuda;
int sae_cuda_probe(int device, char *desc, size_t n);

static int failures;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (!(cond)) {                                          \
            printf("FAIL  ");                                   \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
            failures++;                                         \
        }                                                       \
    } while (0)

static sae_model *tiny_topk(void)
{
    sae_model *m = calloc(1, sizeof *m);
    m->cfg.d_in = 4;
    m->cfg.d_sae = 16;
    m->cfg.k = 3;
    m->cfg.arch = sae_arch_find("topk");
    m->W_enc_T = malloc(16 * 4 * sizeof(float));
    m->W_dec = malloc(16 * 4 * sizeof(float));
    m->b_dec = calloc(4, sizeof(float));
    m->b_enc = calloc(16, sizeof(float));
    for (int i = 0; i < 64; i++)
        m->W_enc_T[i] = m->W_dec[i] = (float)((i * 5 + 1) % 7 - 3);
    return m;
}

static void tiny_free(sae_model *m)
{
    if (m->backend && m->backend->detach)
        m->backend->detach(m);
    free(m->W_enc_T);
    free(m->W_dec);
    free(m->b_dec);
    free(m->b_enc);
    free(m);
}

/* Whether the process has libcublas mapped, without loading it. */
static bool cublas_loaded(void)
{
    void *lib = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_NOLOAD);
    if (lib)
        dlclose(lib);
    return lib != NULL;
}

static void check_cublas_load(void)
{
    CHECK(!cublas_loaded(), "libcublas was loaded before any GPU backend opened");
    sae_error err = {{0}};
    CHECK(sae_cublas_load(&err) == SAE_OK, "cuBLAS did not load: %s", err.msg);
    CHECK(sae_cublas_load(&err) == SAE_OK, "a second load failed: %s", err.msg);
    CHECK(cublas_loaded(), "libcublas is not mapped after the load");
    CHECK(sae_cublas.create && sae_cublas.destroy && sae_cublas.set_stream &&
              sae_cublas.set_math_mode && sae_cublas.status_name && sae_cublas.sgemm,
          "the cuBLAS table has an empty entry");
    if (sae_cublas.status_name)
        CHECK(strcmp(sae_cublas.status_name(CUBLAS_STATUS_SUCCESS), "CUBLAS_STATUS_SUCCESS") == 0,
              "cublasGetStatusName answered '%s'", sae_cublas.status_name(CUBLAS_STATUS_SUCCESS));
}

int main(void)
{
    check_cublas_load();

    char desc[256] = "";
    int rc = sae_cuda_probe(0, desc, sizeof desc);
    CHECK(desc[0] != '\0', "the probe gave no description");
    printf("probe: %s: %s\n", rc == SAE_OK ? "usable" : "not usable", desc);

    char none[256] = "";
    CHECK(sae_cuda_probe(1000, none, sizeof none) != SAE_OK && none[0],
          "device 1000 was not refused ('%s')", none);
    CHECK(sae_cuda_probe(0, NULL, 0) == rc, "the probe changed its mind without a buffer");

    sae_model *m = tiny_topk();
    sae_error err = {{0}};
    CHECK(sae_model_use_device(m, "auto", &err) == SAE_OK, "auto: %s", err.msg);
    CHECK(m->backend == (rc == SAE_OK ? &sae_backend_cuda : &sae_backend_cpu),
          "auto chose the %s backend", m->backend ? m->backend->name : "NULL");
    int cuda_rc = sae_model_use_device(m, "cuda", &err);
    if (rc == SAE_OK) {
        CHECK(cuda_rc == SAE_OK, "cuda: %s", err.msg);
        const float x[8] = {1, -2, 0.5f, 3, -1, 0, 2, 2};
        sae_codes g, c;
        sae_codes_init(&g);
        sae_codes_init(&c);
        CHECK(sae_encode(m, x, 2, &g, &err) == SAE_OK, "encode: %s", err.msg);
        CHECK(sae_backend_cpu.encode(m, x, 2, &c, &err) == SAE_OK, "cpu encode: %s", err.msg);
        for (int e = 0; e < 6; e++)
            CHECK(g.indices[e] == c.indices[e] && g.values[e] == c.values[e],
                  "entry %d: GPU (%d, %g), CPU (%d, %g)", e, g.indices[e], g.values[e],
                  c.indices[e], c.values[e]);
        sae_codes_free(&g);
        sae_codes_free(&c);
    } else {
        CHECK(cuda_rc != SAE_OK && strstr(err.msg, desc), "cuda without a GPU: '%s'", err.msg);
        printf("cuda refused: %s\n", err.msg);
    }
    tiny_free(m);
    printf("%s\n", failures ? "FAILED" : "probe checks passed");
    return failures ? 1 : 0;
}
