/* config.h - cfg.json: parsing the layouts we read and writing native.
 *
 * SAELens (v6 and the older flat layout with activation_fn_str /
 * activation_fn_kwargs.k) and EleutherAI sparsify (expansion_factor /
 * num_latents, k, d_in) are read; native (SAELens v6 plus our ptopk fields)
 * is written. */
#ifndef SAE_CONFIG_H
#define SAE_CONFIG_H

#include <stddef.h>

#include "sae.h"

typedef enum sae_format {
    SAE_FORMAT_SAELENS,   /* cfg.json + sae_weights.safetensors (v6 or flat) */
    SAE_FORMAT_SPARSIFY,  /* cfg.json + sae.safetensors */
} sae_format;

/* Parses cfg.json text of the given layout into out (zeroed first). Fields
 * that are missing, of the wrong type or out of range give an error naming
 * them. `source` names the file in messages. */
int sae_config_parse(const char *text, size_t len, sae_format fmt, const char *source,
                     sae_config *out, sae_error *err);
/* Native cfg.json text (malloc'd), or NULL when out of memory. */
char *sae_config_to_json(const sae_config *cfg);
/* Frees the strings a config owns. */
void sae_config_clear(sae_config *cfg);
/* Deep copy (strings duplicated). */
int sae_config_copy(sae_config *dst, const sae_config *src, sae_error *err);

#endif
