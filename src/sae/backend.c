/* backend.c - choosing a backend for a model from a device string. */
#include <errno.h> /* program_invocation_short_name */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sae_build.h"

static void log_stderr(const char *line)
{
    fprintf(stderr, "%s: %s\n", program_invocation_short_name, line);
}

static void (*log_fn)(const char *line) = log_stderr;

void sae_set_log(void (*fn)(const char *line))
{
    log_fn = fn ? fn : log_stderr;
}

void sae_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_fn(line);
}

int sae_parse_device(const char *s, int *cuda_index)
{
    *cuda_index = 0;
    if (!s || !strcmp(s, "cpu"))
        return SAE_DEVICE_CPU;
    if (!strcmp(s, "auto"))
        return SAE_DEVICE_AUTO;
    if (!strcmp(s, "cuda"))
        return SAE_DEVICE_CUDA;
    if (strncmp(s, "cuda:", 5) != 0 || s[5] < '0' || s[5] > '9')
        return -1;
    char *end;
    long n = strtol(s + 5, &end, 10);
    if (*end != '\0' || n >= 1024)
        return -1;
    *cuda_index = (int)n;
    return SAE_DEVICE_CUDA;
}

static int attach(sae_model *m, const sae_backend *b, sae_error *err)
{
    if (m->backend && m->backend->detach)
        m->backend->detach(m);
    m->backend = (sae_backend *)b;
    m->backend_state = NULL;
    return b->attach ? b->attach(m, err) : SAE_OK;
}

int sae_model_use_device(sae_model *m, const char *device, sae_error *err)
{
    static int said_no_gpu;  /* "no GPU" is said once per process */
    int dev;
    const int kind = sae_parse_device(device, &dev);
    if (kind < 0)
        return sae_fail(err, "unknown device '%s' (want auto, cpu, cuda or cuda:N)", device);
    if (kind == SAE_DEVICE_CPU)
        return attach(m, &sae_backend_cpu, err);
    const int auto_pick = kind == SAE_DEVICE_AUTO;
#if SAE_HAVE_CUDA
    char desc[256];
    if (sae_cuda_probe(dev, desc, sizeof desc) == SAE_OK) {
        if (auto_pick)
            sae_log("using GPU %s", desc);
        return attach(m, &sae_backend_cuda, err);
    }
    if (!auto_pick)
        return sae_fail(err, "device %s is not usable: %s", device, desc);
    if (!said_no_gpu++)
        sae_log("no usable GPU (%s); running on the CPU", desc);
#else
    if (!auto_pick)
        return sae_fail(err, "device %s requested, but this build has no CUDA support "
                        "(rebuild with -Dcuda=enabled)", device);
    if (!said_no_gpu++)
        sae_log("built without CUDA; running on the CPU");
#endif
    return attach(m, &sae_backend_cpu, err);
}
