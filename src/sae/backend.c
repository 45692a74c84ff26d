/* backend.c - choosing a backend for a model from a device string. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sae_build.h"

static void log_stderr(const char *line)
{
    fprintf(stderr, "%s\n", line);
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

/* "cuda" or "cuda:N" -> N (0 by default); -1 when s is not of that form. */
static int parse_cuda_device(const char *s)
{
    if (!strcmp(s, "cuda"))
        return 0;
    if (strncmp(s, "cuda:", 5) != 0 || s[5] < '0' || s[5] > '9')
        return -1;
    char *end;
    long n = strtol(s + 5, &end, 10);
    return (*end == '\0' && n < 1024) ? (int)n : -1;
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
    if (!device || !strcmp(device, "cpu"))
        return attach(m, &sae_backend_cpu, err);
    int auto_pick = !strcmp(device, "auto");
    int dev = auto_pick ? 0 : parse_cuda_device(device);
    if (dev < 0)
        return sae_fail(err, "unknown device '%s' (want auto, cpu, cuda or cuda:N)", device);
#if SAE_HAVE_CUDA
    char desc[256];
    if (sae_cuda_probe(dev, desc, sizeof desc) == SAE_OK) {
        if (auto_pick)
            sae_log("saed: using GPU %s", desc);
        return attach(m, &sae_backend_cuda, err);
    }
    if (!auto_pick)
        return sae_fail(err, "device %s is not usable: %s", device, desc);
    if (!said_no_gpu++)
        sae_log("saed: no usable GPU (%s); running on the CPU", desc);
#else
    if (!auto_pick)
        return sae_fail(err, "device %s requested, but this build has no CUDA support "
                        "(rebuild with -Dcuda=enabled)", device);
    if (!said_no_gpu++)
        sae_log("saed: built without CUDA; running on the CPU");
#endif
    return attach(m, &sae_backend_cpu, err);
}
