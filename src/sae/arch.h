/* arch.h - the table of architectures. Adding one is adding a row in arch.c.
 *
 * Encoding runs one GEMM for a batch, z = x~ W_enc (no bias), then hands each
 * row to its architecture. Two kinds of row:
 *   - elementwise (relu, jumprelu, gated, batchtopk at inference): `activate`
 *     turns z into the code vector f in place; the caller keeps the non-zeros.
 *   - top-k (topk, ptopk): `select` offers latents to a top-k heap by the
 *     architecture's selection score, and `value` gives f at a kept latent. */
#ifndef SAE_ARCH_H
#define SAE_ARCH_H

#include <stdbool.h>

#include "sae.h"
#include "select.h"

/* Which [M] parameter tensors an architecture has (besides W_enc, W_dec, b_dec). */
enum {
    SAE_P_B_ENC = 1 << 0,
    SAE_P_GATED = 1 << 1,      /* b_gate, b_mag, r_mag */
    SAE_P_THRESHOLD = 1 << 2,
};

typedef struct sae_arch {
    const char *name;           /* as written in cfg.json */
    const char *alias;          /* also accepted when reading, or NULL */
    unsigned params;            /* SAE_P_* */
    bool uses_k;                /* cfg needs 1 <= k <= d_sae */
    /* elementwise: z[M] (GEMM output, no bias) -> f[M], in place */
    void (*activate)(const sae_model *m, float *z);
    /* top-k: offer the row's latents to h (in index order) */
    void (*select)(const sae_model *m, const float *z, topk_heap *h);
    float (*value)(const sae_model *m, const float *z, int i);
} sae_arch;

const sae_arch *sae_arch_find(const char *name);   /* NULL when unknown */
/* "standard, gated, ..." for error messages. */
const char *sae_arch_names(void);

#endif
