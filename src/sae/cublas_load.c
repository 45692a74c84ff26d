/* cublas_load.c - sae_cublas from the installed libcublas (see cublas_fns.h). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "cublas_fns.h"

sae_cublas_fns sae_cublas;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512]; /* empty when the table is full */

/* Each entry's type must be the header's: the compiler checks it here, since
 * dlsym's void * would not be. The _v2 names are what cublas_v2.h's macros
 * call. */
#define SAME_TYPE(field, fn)                                                              \
    _Static_assert(__builtin_types_compatible_p(__typeof__(sae_cublas.field),            \
                                                __typeof__(&fn)),                        \
                   #field " does not match " #fn)
SAME_TYPE(create, cublasCreate_v2);
SAME_TYPE(destroy, cublasDestroy_v2);
SAME_TYPE(set_stream, cublasSetStream_v2);
SAME_TYPE(set_math_mode, cublasSetMathMode);
SAME_TYPE(status_name, cublasGetStatusName);
SAME_TYPE(sgemm, cublasSgemm_v2);

static const struct {
    const char *symbol;
    void **slot;
} symbols[] = {
    {"cublasCreate_v2", (void **)&sae_cublas.create},
    {"cublasDestroy_v2", (void **)&sae_cublas.destroy},
    {"cublasSetStream_v2", (void **)&sae_cublas.set_stream},
    {"cublasSetMathMode", (void **)&sae_cublas.set_math_mode},
    {"cublasGetStatusName", (void **)&sae_cublas.status_name},
    {"cublasSgemm_v2", (void **)&sae_cublas.sgemm},
};

static void load(void)
{
    void *lib = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(load_error, sizeof load_error, "cannot load cuBLAS (%s): %s", CUBLAS_SONAME,
                 dlerror());
        return;
    }
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(lib, symbols[i].symbol);
        if (!*symbols[i].slot) {
            snprintf(load_error, sizeof load_error, "%s has no %s: %s", CUBLAS_SONAME,
                     symbols[i].symbol, dlerror());
            return; /* the library stays loaded: dlclose would gain nothing */
        }
    }
}

int sae_cublas_load(sae_error *err)
{
    pthread_once(&load_once, load);
    if (load_error[0])
        return sae_fail(err, "%s", load_error);
    return SAE_OK;
}
