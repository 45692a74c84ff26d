/* reqparse.h - request bodies to engine inputs, with no HTTP in sight (the
 * fuzzer calls these directly).
 *
 * JSON is parsed by jansson, which recurses once per nesting level and has no
 * depth limit; json_depth_ok checks the raw bytes first so that a body like
 * 100k x '[' is refused in one linear scan instead of overflowing the stack.
 *
 * Error statuses: bytes that are not JSON (including NaN/Infinity literals and
 * numbers beyond double range such as 1e999, which jansson refuses) -> 400
 * invalid_json; nesting deeper than the limit -> 400 too_deep; JSON of the
 * wrong shape or type, a row of the wrong width, or a value that is not a
 * finite float32 (e.g. 1e39) -> 422. */
#ifndef SAED_REQPARSE_H
#define SAED_REQPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "sae.h"

#define REQ_MAX_JSON_DEPTH 32

/* true when no point of the text nests arrays/objects deeper than max_depth
 * (brackets inside strings do not count). */
bool json_depth_ok(const char *s, size_t n, int max_depth);

typedef struct encode_req {
    float *x;               /* [n, d_in]; owned (malloc) unless borrowed */
    int64_t n;
    bool x_borrowed;        /* x points into the request body (binary input) */
    int top_k;              /* 0: all of the model's codes */
    bool reconstruct;
} encode_req;

void encode_req_free(encode_req *r);

/* {"inputs": [[d_in numbers], ...], "top_k"?: int >= 1, "reconstruct"?: bool}
 * (other members are ignored). The usual body takes a fast scan of its own;
 * anything else goes to jansson. */
int parse_encode_json(const char *s, size_t n, int d_in, encode_req *out, api_err *e);
/* The same through jansson alone: what the fuzzer holds the fast scan to. */
int parse_encode_json_jansson(const char *s, size_t n, int d_in, encode_req *out, api_err *e);
/* Little-endian float32 rows, borrowed from the body (which must be 4-byte
 * aligned and outlive out). Options come from the query string. */
int parse_encode_binary(const void *body, size_t n, int d_in, encode_req *out, api_err *e);

/* {"codes": [{"indices": [...], "values": [...]}, ...]} -> CSR codes checked
 * against d_sae (indices in range, values finite float32). */
int parse_decode_json(const char *s, size_t n, int d_sae, sae_codes *out, api_err *e);

/* A non-negative decimal integer below limit, all of s; -1 otherwise. */
int64_t parse_index(const char *s, int64_t limit);

#endif
