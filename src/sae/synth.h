/* synth.h - synthetic activation corpora with a known ground truth: G sparse
 * features with known directions, firing frequencies, magnitudes and trigger
 * words, so that training (recovery of the dictionary) and profiling (top
 * examples of a latent vs. its feature's words) can be checked. synth.c
 * describes the generative model. */
#ifndef SAE_SYNTH_H
#define SAE_SYNTH_H

#include <stdint.h>

#include "sae.h"
#include "safetensors.h"

typedef struct synth_config {
    int d_in;                   /* D */
    int n_features;             /* G */
    int64_t n_tokens;           /* N, rows of the corpus */
    uint64_t seed;
    int context_len;            /* rows per document (default 64) */
    float noise;                /* sigma of the added N(0, sigma^2 I) (default 0) */
    float correlated;           /* fraction of features in leader/follower pairs (0) */
    float zipf;                 /* base firing probability ~ (g + 1)^-zipf (1.0) */
    float k_mean;               /* expected active features per token (4) */
    st_dtype dtype;             /* ST_F32 (default), ST_F16 or ST_BF16 */
    int64_t shard_tokens;       /* rows per shard; 0 picks about 64 MiB of activations */
    int words_per_feature;      /* trigger words per feature (3) */
    int n_filler;               /* words for positions where nothing fires (64) */
} synth_config;

void synth_config_default(synth_config *c);
/* Checks ranges; the message names the field as the CLI flag does. */
int synth_config_validate(const synth_config *c, sae_error *err);

/* Called now and then from the generating thread with rows written so far. */
typedef void (*synth_progress_fn)(void *ctx, int64_t done, int64_t total);

/* Writes a corpus into dir (created if needed): shard_*.safetensors
 * (activations + tokens), vocab.json, truth.safetensors (dictionary [G, D]
 * unit rows, frequencies [G], base_probability [G], magnitude_mu [G],
 * magnitude_sigma [G], trigger_tokens [G, W] int32, and pairs [P, 2] int32
 * (leader, follower) when there are pairs), truth.json (the same per feature,
 * with the trigger words as strings), and dataset.json last, so that a
 * directory with a dataset.json is complete. Every file is written
 * atomically. The output is a function of the config alone, except that
 * shard_tokens only moves the shard boundaries: the rows are the same. */
int synth_write(const char *dir, const synth_config *cfg, synth_progress_fn progress,
                void *progress_ctx, sae_error *err);

/* Reads truth.safetensors' dictionary from a synth directory: *dict is
 * malloc'd [G, D] float32. For mmcs / recovered metrics. */
int synth_read_dictionary(const char *dir, float **dict, int *n_features, int *d_in,
                          sae_error *err);

#endif
