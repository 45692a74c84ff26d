/* metrics.h - evaluating a model on a corpus (DESIGN.md section 3 metrics). */
#ifndef SAE_METRICS_H
#define SAE_METRICS_H

#include <stdint.h>

#include "dataset.h"
#include "sae.h"

typedef struct eval_result {
    int64_t tokens;
    double mse, fvu, ev, l0;
    int64_t alive, dead;        /* latents that fired at least once in the pass */
} eval_result;

/* One pass over the first max_tokens rows (all when <= 0), in the model's
 * input space: mse = mean over rows of ||x' - x^'||^2, fvu against the
 * variance around the pass's mean, ev = 1 - fvu. */
int sae_evaluate(const sae_model *m, const corpus *c, int64_t max_tokens, eval_result *out,
                 sae_error *err);

/* mmcs: mean over true features (rows of dict [G, d]) of the max cosine with
 * any decoder row; recovered: fraction of them with that max above 0.9. */
int sae_dictionary_match(const sae_model *m, const float *dict, int G, double *mmcs,
                         double *recovered, sae_error *err);

#endif
