/* train_cuda_none.c - train_cuda.c's entry points in a build without CUDA:
 * attaching says so, and nothing else is reached (t->gpu stays NULL). */
#include "train_impl.h"

int train_cuda_attach(trainer *t, int device, sae_error *err)
{
    (void)t;
    (void)device;
    return sae_fail(err, "this build has no CUDA support (rebuild with -Dcuda=enabled)");
}

void train_cuda_detach(trainer *t)
{
    (void)t;
}

int train_cuda_loss_and_grads(trainer *t, const float *x, step_stats *st, sae_error *err)
{
    (void)t;
    (void)x;
    (void)st;
    return sae_fail(err, "no GPU attached");
}

int train_cuda_step(trainer *t, const float *x, step_stats *st, sae_error *err)
{
    return train_cuda_loss_and_grads(t, x, st, err);
}

float *train_cuda_batch_buffer(trainer *t)
{
    (void)t;
    return NULL;
}

int train_cuda_to_host(const trainer *t, int grads, sae_error *err)
{
    (void)t;
    (void)grads;
    (void)err;
    return SAE_OK;
}
