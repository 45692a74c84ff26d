/* dataset.h - activation corpora: reading them (sequentially, for profiling),
 * streaming them shuffled (for training), and writing them (synth, tests).
 *
 * A corpus is one of
 *   - a directory with dataset.json and safetensors shards (DESIGN.md sec. 4):
 *       {"d_in": 768, "dtype": "float32"|"float16"|"bfloat16", "context_len": 64,
 *        "shards": ["shard_00000.safetensors", ...], "vocab": "vocab.json",
 *        "model": "...", "hook": "...", "n_tokens": 123456}
 *     Required: d_in, shards. dtype, context_len, vocab, model, hook and
 *     n_tokens are optional; when given they must agree with the shards.
 *     Each shard holds `activations` [N_i, d_in] (F32, F16 or BF16) and
 *     optionally `tokens` [N_i] (I32, or I64 whose values fit); either every
 *     shard has tokens or none does. Rows are consecutive token positions
 *     across shards; every context_len rows start a new document.
 *   - a single .safetensors file laid out like one shard;
 *   - a raw .npy [N, d_in] float array (no tokens). It is read into memory
 *     whole, unlike shards, which are mapped and read in bounded pieces.
 * corpus_open validates all of this, for every shard, before anything is
 * read, so a bad corpus fails at once with the name of the bad file.
 * Activation values are checked when read: a non-finite one is an error
 * naming the shard and the row. */
#ifndef SAE_DATASET_H
#define SAE_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sae.h"
#include "safetensors.h"

typedef struct corpus corpus;

typedef struct corpus_info {
    int d_in;
    int64_t n_rows;             /* token positions in the corpus */
    int context_len;            /* rows per document; 0 when not known */
    bool has_tokens;
    st_dtype dtype;             /* activations on disk: ST_F32, ST_F16 or ST_BF16 */
    int n_shards;               /* files holding rows (1 for a single file) */
    int64_t vocab_size;         /* 0 without a vocabulary */
    const char *const *vocab;   /* vocab_size token strings by id, or NULL */
    const char *model, *hook;   /* from dataset.json; "" when absent */
} corpus_info;

/* Opens a corpus directory, .safetensors file or .npy file. */
int corpus_open(const char *path, corpus **out, sae_error *err);
void corpus_close(corpus *c);
const corpus_info *corpus_get_info(const corpus *c);

/* Copies rows [start, start + n) as float32 into out [n, d_in] and, when
 * tokens is not NULL, their token ids into tokens [n] (an error if the corpus
 * has none). Ranges may span shards. Fails on a non-finite activation or a
 * token id outside the vocabulary, naming the shard and the row. Mapped pages
 * are handed back to the kernel after the copy, so a pass over a corpus larger
 * than memory stays bounded. Safe to call from several threads at once for
 * different (or equal) ranges. */
int corpus_read_rows(const corpus *c, int64_t start, int64_t n, float *out, int32_t *tokens,
                     sae_error *err);

/* ---- Shuffled streaming for training ------------------------------------
 *
 * The loader emits an endless, deterministic sequence of rows, cut into
 * batches. Row p of the sequence (p = 0, 1, 2, ...) is a pure function of
 * (seed, buffer_rows, chunk_rows, n_rows, p):
 *
 *   1. The stream. Epoch e visits every corpus row once. The corpus is cut
 *      into n_full = n_rows / C chunks of C = chunk_rows contiguous rows plus
 *      a tail of n_rows % C rows. Epoch e reads chunk perm_e(0), perm_e(1),
 *      ..., perm_e(n_full - 1), then the tail. perm_e is a keyed bijection of
 *      [0, n_full): a 6-round Feistel network whose round function is
 *      Philox4x32-10(key = seed, counter = {value, 'PE' tag | round, e_lo,
 *      e_hi}), with cycle walking onto [0, n_full). Stream row s is row
 *      s mod n_rows of epoch s / n_rows.
 *   2. Rounds. Stream rows [r R, (r + 1) R), R = buffer_rows, fill the shuffle
 *      buffer for round r (C-row chunks are the unit of I/O, so a corpus far
 *      larger than memory is read in bounded pieces). The buffer is emitted in
 *      the order of a Fisher-Yates permutation of [0, R) whose i-th draw is
 *      Philox4x32-10(key = seed, counter = {i, 'SH' tag, r_lo, r_hi}).
 *   3. Row p of the sequence is buffer slot perm_r(p mod R) of round
 *      r = p / R.
 *
 * So the whole loader state is p, the number of rows emitted so far: a
 * resumed run calls loader_set_state with the saved state, the round holding
 * p is rebuilt (one buffer fill), and the following batches are bit-identical
 * to those of an uninterrupted run. The batch size is not part of the state:
 * resuming with another batch size continues the same row sequence.
 * Memory: R * d_in floats, R int32 for the permutation, and the chunk list of
 * one round; twice that with prefetch.
 *
 * Prefetch (for GPU training, where reading would otherwise stall the device):
 * a thread fills round r + 1 into a second buffer while round r is emitted.
 * The sequence is the same with or without it. Leave it off when the caller
 * keeps every CPU core busy itself (the CPU backend). */

typedef struct loader loader;

typedef struct loader_config {
    int batch;                  /* rows per loader_next call, >= 1 */
    int64_t buffer_rows;        /* R; 0 picks 32 * batch */
    int64_t chunk_rows;         /* C; 0 picks max(1, R / 256) */
    uint64_t seed;
    bool prefetch;              /* read the next round in a background thread */
} loader_config;

/* Everything a checkpoint must keep to resume the exact sequence. */
typedef struct loader_state {
    uint64_t position;          /* rows emitted so far */
    uint64_t seed;
    int64_t buffer_rows, chunk_rows;
    int64_t n_rows;             /* of the corpus, to catch a changed corpus */
} loader_state;

/* The loader borrows c, which must outlive it. One thread at a time may call
 * a loader's functions. */
int loader_open(const corpus *c, const loader_config *cfg, loader **out, sae_error *err);
void loader_close(loader *l);
/* Fills batch_out [batch, d_in] with the next rows. On error the position is
 * left where it was before the call. */
int loader_next(loader *l, float *batch_out, sae_error *err);
void loader_get_state(const loader *l, loader_state *s);
/* Continues from a saved state; fails, changing nothing, when the state was
 * made with another seed, buffer, chunk size or corpus length. */
int loader_set_state(loader *l, const loader_state *s, sae_error *err);
/* Passes over the corpus so far (rows emitted / n_rows). */
double loader_epochs(const loader *l);

/* ---- Writing corpora ----------------------------------------------------- */

/* "shard_%05d.safetensors" */
void corpus_shard_name(int index, char *buf, size_t len);

/* Writes <dir>/shard_<index>.safetensors atomically: activations [rows, d_in]
 * already in `dtype` (F32, F16 or BF16, see corpus_pack) and, when tokens is
 * not NULL, tokens [rows] int32. */
int corpus_write_shard(const char *dir, int index, st_dtype dtype, int d_in, int64_t rows,
                       const void *activations, const int32_t *tokens, sae_error *err);

typedef struct corpus_manifest {
    int d_in;
    st_dtype dtype;
    int context_len;
    int n_shards;               /* shard_00000 ... shard_<n_shards - 1> */
    int64_t n_tokens;
    const char *vocab;          /* file name inside dir, or NULL */
    const char *model, *hook;   /* or NULL */
} corpus_manifest;

/* Writes <dir>/dataset.json atomically. Write it last: a directory with a
 * dataset.json is a complete corpus. */
int corpus_write_manifest(const char *dir, const corpus_manifest *m, sae_error *err);

/* dataset.json's dtype names: "float32", "float16", "bfloat16". */
const char *corpus_dtype_name(st_dtype t);
int corpus_dtype_parse(const char *s, st_dtype *out);

/* float32 to a storage dtype (ST_F32, ST_F16, ST_BF16), rounding to nearest
 * even; values beyond the f16 range become infinities; NaN stays NaN. The
 * way back is st_to_f32 (safetensors.h), which is exact. */
void corpus_pack(st_dtype dt, const float *src, size_t n, void *dst);

#endif
