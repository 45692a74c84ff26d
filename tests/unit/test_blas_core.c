/* test_blas_core - sae_blas_exec_tuned leaves OpenBLAS on kernels this CPU
 * can run at speed: never the generic Prescott ones on a CPU with AVX2 and
 * FMA (Debian 12's OpenBLAS falls back to those on models newer than it
 * knows). The program first executes itself again without
 * OPENBLAS_CORETYPE, so OpenBLAS chooses on its own, as for a user. */
#include <cblas.h>
#include <limits.h>

#include "blas.h"
#include "check.h"

#define FRESH "SAE_TEST_BLAS_CORE_FRESH"

int main(int argc, char **argv)
{
    (void)argc;
    if (!getenv(FRESH)) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        CHECK(n > 0);
        if (n <= 0)
            return finish();
        self[n] = '\0';
        unsetenv("OPENBLAS_CORETYPE");
        setenv(FRESH, "1", 1);
        execv(self, argv);
        CHECK(!"execv");
        return finish();
    }
    sae_blas_exec_tuned(argv, false);
    const char *core = openblas_get_corename();
    const int fast_cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    printf("OpenBLAS core: %s (CPU with AVX2 and FMA: %s; OPENBLAS_CORETYPE=%s)\n", core,
           fast_cpu ? "yes" : "no", getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "");
    CHECK(core != NULL);
    if (fast_cpu && core)
        CHECK(strcmp(core, "Prescott") != 0);
    return finish();
}
