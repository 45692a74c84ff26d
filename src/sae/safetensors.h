/* safetensors.h - a strict reader and writer for the safetensors format.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "string", ...}}, then the data block. Offsets are
 * relative to the data block. The reader validates everything before any
 * tensor is touched: header length within the file, valid JSON object, known
 * dtypes, shapes whose byte size equals end - begin, offsets inside the data
 * block, tensors that do not overlap and together cover the data block.
 *
 * Reading maps the file (st_open) or takes a buffer (st_parse, for the fuzzer
 * and for request bodies). Conversion to float32 works in chunks and releases
 * mapped pages behind it, so loading a checkpoint costs the f32 copy plus one
 * chunk, not twice the file. */
#ifndef SAE_SAFETENSORS_H
#define SAE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "sae.h"

#define ST_MAX_DIMS 8
#define ST_MAX_NAME 256

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    char name[ST_MAX_NAME];
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;        /* byte offsets inside the data block */
} st_tensor;

typedef struct st_file {
    const uint8_t *base;        /* whole file (mapped or caller's buffer) */
    size_t size;
    size_t data_offset;         /* 8 + header length */
    int n_tensors;
    st_tensor *tensors;         /* sorted by begin offset */
    char *metadata_json;        /* "__metadata__" as JSON text, or NULL */
    int mapped;                 /* 1 when st_open mapped it (st_close unmaps) */
    char path[1024];            /* for messages; "<buffer>" for st_parse */
} st_file;

size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);
int st_dtype_parse(const char *s, st_dtype *out);   /* SAE_OK / SAE_ERR */
/* Element count (1 for a scalar, shape []); for tensors st_parse accepted,
 * whose byte size is known to fit in int64. */
int64_t st_numel(const st_tensor *t);

/* Maps and validates path. On error nothing stays open. Headers over 100 MB
 * are refused, like the reference implementation does. */
int st_open(st_file *f, const char *path, sae_error *err);
/* Validates an in-memory file; f borrows buf, which must outlive it. */
int st_parse(st_file *f, const uint8_t *buf, size_t len, sae_error *err);
void st_close(st_file *f);

const st_tensor *st_find(const st_file *f, const char *name);
/* The tensor's raw bytes (end - begin of them). */
const void *st_data(const st_file *f, const st_tensor *t);

/* Copies tensor t into out as float32 (F32, F16, BF16, F64 accepted), numel
 * elements. With transpose_2d, a [r, c] tensor is written as [c, r]. Mapped
 * pages are released behind the copy. Rejects non-finite values when
 * require_finite is set, naming the tensor and the first bad index (in the
 * file's row-major order). F64 values beyond float range become inf. On
 * error out may hold part of the tensor. */
int st_read_f32(const st_file *f, const st_tensor *t, float *out, int transpose_2d,
                int require_finite, sae_error *err);
/* Converts n elements of a float dtype (F32, F16, BF16, F64; src may be
 * unaligned) to float32, exactly but for F64's rounding. */
void st_to_f32(st_dtype dt, const void *src, size_t n, float *dst);

/* Copies an integer tensor (I32, or I64 whose values fit) into out as int32. */
int st_read_i32(const st_file *f, const st_tensor *t, int32_t *out, sae_error *err);

/* One tensor to write. */
typedef struct st_out {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;           /* numel * dtype size bytes, row-major */
} st_out;

/* Serialises tensors (in the order given) and optional metadata (a JSON object
 * of string values, as text, or NULL) into a malloc'd buffer. */
int st_serialize(const st_out *ts, int n, const char *metadata_json, uint8_t **buf,
                 size_t *len, sae_error *err);
/* Writes path atomically: "<path>.tmp.<pid>" in the same directory, fsync,
 * rename, fsync of the directory; the temporary file is removed on error.
 * Streams the tensors' data, so it costs no copy of the weights. */
int st_write(const char *path, const st_out *ts, int n, const char *metadata_json,
             sae_error *err);

#endif
