/* sae.h - what a sparse autoencoder is: config, weights, sparse codes, and the
 * calls that load, save, encode and decode. Independent of HTTP and storage.
 *
 * Shape letters, used throughout src/sae and kernels/:
 *   B  rows in a batch            d  = d_in, the activation width
 *   M  = d_sae, the latent count  k  active latents per row (top-k family)
 *
 * Every call returns SAE_OK or SAE_ERR; on SAE_ERR the sae_error holds a
 * message naming what is wrong. Nothing here exits or prints. */
#ifndef SAE_H
#define SAE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SAE_OK 0
#define SAE_ERR (-1)

typedef struct sae_error {
    char msg[512];
} sae_error;

/* Fills err (when not NULL) and returns SAE_ERR, so callers can write
 * `return sae_fail(err, "...", ...);`. */
int sae_fail(sae_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

typedef enum sae_norm {
    SAE_NORM_NONE,
    SAE_NORM_CENTER_UNIT_NORM, /* (x - mean) / ||x - mean||       */
    SAE_NORM_LAYER_NORM,       /* (x - mu) / sqrt(var + 1e-5)      */
    SAE_NORM_CONSTANT_SCALE,   /* c * x, c = sae_config.norm_scale */
} sae_norm;

struct sae_arch;       /* arch.h: the table of architectures */
struct sae_backend;    /* backend.h: where the arithmetic runs */

typedef struct sae_config {
    int d_in, d_sae;
    const struct sae_arch *arch;
    int k;                      /* top-k family; 0 elsewhere */
    bool apply_b_dec_to_input;
    sae_norm normalize;
    float norm_scale;           /* constant_scale only */
    /* ptopk */
    float lambda_mag, beta_final;
    bool layernorm;
    char dtype[16];             /* dtype named in cfg.json, kept for round trips */
    char *metadata_json;        /* cfg.json "metadata" object as text (owned), or NULL */
    char *training_json;        /* cfg.json "training" provenance (owned), or NULL */
} sae_config;

/* Weights, all float32, row-major, in host memory. W_enc_T is the encoder
 * stored as latent rows: W_enc_T[i*d + j] = W_enc[j][i]. Rows make the sparse
 * training backward contiguous; files keep SAELens' [d, M] orientation. */
typedef struct sae_model {
    sae_config cfg;
    float *W_enc_T;     /* [M, d] */
    float *W_dec;       /* [M, d] */
    float *b_dec;       /* [d] */
    float *b_enc;       /* [M]  all but gated */
    float *b_gate;      /* [M]  gated */
    float *b_mag;       /* [M]  gated */
    float *r_mag;       /* [M]  gated */
    float *r_mag_exp;   /* [M]  gated: exp(r_mag), derived at load */
    float *threshold;   /* [M]  jumprelu, batchtopk */
    struct sae_backend *backend; /* CPU unless sae_model_use_device moved it */
    void *backend_state;         /* the backend's copy of the weights, if any */
} sae_model;

/* Sparse codes of n rows in CSR form: row r owns entries
 * [indptr[r], indptr[r+1]) of indices/values. Top-k architectures give exactly
 * k entries per row, ordered by selection score, best first; the others give
 * their non-zeros in index order. */
typedef struct sae_codes {
    int64_t n_rows;
    int64_t *indptr;    /* [n_rows + 1] */
    int32_t *indices;   /* [nnz] */
    float *values;      /* [nnz] */
    int64_t cap_rows, cap_nnz;
} sae_codes;

/* Model lifetime. sae_load reads any supported checkpoint directory (native =
 * SAELens v6, SAELens' older flat cfg, EleutherAI sparsify); sae_save writes
 * native, atomically. */
int sae_load(const char *dir, sae_model **out, sae_error *err);
int sae_save(const sae_model *m, const char *dir, sae_error *err);
void sae_free(sae_model *m);
/* Allocates zeroed weights for cfg. On success the model owns cfg's strings;
 * on failure they stay the caller's. */
int sae_alloc(const sae_config *cfg, sae_model **out, sae_error *err);
/* Checks shapes and parameters of cfg, whatever the source. */
int sae_config_validate(const sae_config *cfg, sae_error *err);
/* Derived state (exp(r_mag)) after weights change. */
void sae_refresh_derived(sae_model *m);

/* Moves the model's arithmetic to a device: "auto", "cpu" or "cuda[:N]". */
int sae_model_use_device(sae_model *m, const char *device, sae_error *err);

/* Encoding. x is [n, d] raw activations; the model's preprocessing is applied.
 * codes is reset and grown as needed. */
int sae_encode(const sae_model *m, const float *x, int64_t n, sae_codes *codes,
               sae_error *err);
/* Reconstruction in the SAE's input space (after preprocessing): xhat [n, d]
 * = sum over active latents of value * W_dec row + b_dec. */
int sae_decode(const sae_model *m, const sae_codes *codes, float *xhat,
               sae_error *err);

/* x' for n rows (preprocessing only); x and out may alias. */
void sae_preprocess(const sae_config *cfg, const float *x, int64_t n, float *out);

void sae_codes_init(sae_codes *c);
void sae_codes_free(sae_codes *c);
/* Makes room for n rows and nnz entries; keeps content. */
int sae_codes_reserve(sae_codes *c, int64_t n_rows, int64_t nnz, sae_error *err);
/* Checks every index is in [0, d_sae) and every value finite. */
int sae_codes_validate(const sae_codes *c, int d_sae, sae_error *err);

const char *sae_norm_name(sae_norm n);
int sae_norm_parse(const char *s, sae_norm *out);

#endif
