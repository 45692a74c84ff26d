/* fuzz_safetensors.c - libFuzzer target: any input either fails st_parse
 * cleanly or parses into tensors that every reader can convert. */
#include <stdlib.h>

#include "safetensors.h"

static void read_tensor(const st_file *f, const st_tensor *t)
{
    sae_error err;
    int64_t numel = st_numel(t);   /* validated: numel * dtype size <= input size */
    void *out = malloc(numel > 0 ? (size_t)numel * 4 : 1);
    if (!out)
        return;
    if (t->dtype == ST_I32 || t->dtype == ST_I64) {
        (void)st_read_i32(f, t, out, &err);
    } else {
        /* Non-float dtypes exercise the refusal; floats the conversion. */
        (void)st_read_f32(f, t, out, 0, 1, &err);
        if (t->ndim == 2)
            (void)st_read_f32(f, t, out, 1, 0, &err);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file f;
    sae_error err;
    if (st_parse(&f, data, size, &err) != SAE_OK)
        return 0;
    for (int i = 0; i < f.n_tensors; i++)
        read_tensor(&f, &f.tensors[i]);
    st_close(&f);
    return 0;
}
