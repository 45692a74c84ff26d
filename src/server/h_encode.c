/* h_encode.c - encode and decode. The network thread parses and validates;
 * the model's batcher thread runs the engine and resumes the connection; the
 * network thread writes an encode's response (so that the batcher is free for
 * the next batch meanwhile).
 *
 * Codes in a response: for the top-k family (topk, ptopk) each row holds the
 * model's k latents, best first by selection score, and top_k keeps the first
 * top_k of them; for the other architectures each row holds its non-zeros in
 * index order, and top_k keeps the top_k largest values (ties: lower index),
 * largest first. A reconstruction is decoded from the codes as returned. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "arch.h"
#include "batcher.h"
#include "handlers.h"
#include "http.h"
#include "registry.h"
#include "reqparse.h"
#include "safetensors.h"
#include "sbuf.h"
#include "util.h"

#define OCTET "application/octet-stream"

typedef struct encode_job {
    bjob job;           /* first: the batcher hands back this pointer */
    req *r;
    encode_req in;
    bool binary_out;
    /* the result, from the batcher thread to the network thread */
    const sae_model *m; /* the req's model reference keeps it loaded */
    sae_codes sel;
    float *xhat;
} encode_job;

typedef struct decode_job {
    bjob job;
    req *r;
    sae_codes codes;
} decode_job;

/* ------------------------------------------------------------ content types */

static bool type_is(const char *header, const char *type)
{
    size_t n = strlen(type);
    return header && !strncasecmp(header, type, n) &&
           (header[n] == '\0' || header[n] == ';' || header[n] == ' ');
}

static bool wants_binary(const req *r)
{
    return r->accept && strstr(r->accept, OCTET) != NULL;
}

/* ------------------------------------------------------------ selection */

typedef struct entry {
    float v;
    int32_t i;
} entry;

static int by_value_desc(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Copies rows [row0, row0 + n) of all into sel, keeping top_k per row (0: all). */
static int select_codes(const sae_model *m, const sae_codes *all, int64_t row0, int64_t n,
                        int top_k, sae_codes *sel, sae_error *err)
{
    int64_t nnz = all->indptr[row0 + n] - all->indptr[row0];
    if (sae_codes_reserve(sel, n, nnz, err) != SAE_OK)
        return SAE_ERR;
    bool fixed = m->cfg.arch->select != NULL;
    entry *tmp = NULL;
    sel->indptr[0] = 0;
    for (int64_t r = 0; r < n; r++) {
        int64_t b = all->indptr[row0 + r], e = all->indptr[row0 + r + 1], cnt = e - b;
        int64_t keep = top_k > 0 && cnt > top_k ? top_k : cnt, at = sel->indptr[r];
        if (fixed || keep == cnt) {
            memcpy(sel->indices + at, all->indices + b, (size_t)keep * sizeof(int32_t));
            memcpy(sel->values + at, all->values + b, (size_t)keep * sizeof(float));
        } else {
            entry *t = realloc(tmp, (size_t)cnt * sizeof *t);
            if (!t) {
                free(tmp);
                return sae_fail(err, "out of memory");
            }
            tmp = t;
            for (int64_t q = 0; q < cnt; q++)
                tmp[q] = (entry){all->values[b + q], all->indices[b + q]};
            qsort(tmp, (size_t)cnt, sizeof *tmp, by_value_desc);
            for (int64_t q = 0; q < keep; q++) {
                sel->indices[at + q] = tmp[q].i;
                sel->values[at + q] = tmp[q].v;
            }
        }
        sel->indptr[r + 1] = at + keep;
    }
    sel->n_rows = n;
    free(tmp);
    return SAE_OK;
}

static bool all_finite(const float *v, int64_t n)
{
    return sae_first_nonfinite(v, (size_t)n) == (size_t)n;
}

/* ------------------------------------------------------------ responses */

static void json_rows(sbuf *b, const float *x, int64_t n, int d)
{
    sbuf_put(b, "[", 1);
    for (int64_t r = 0; r < n; r++) {
        sbuf_puts(b, r ? ",[" : "[");
        for (int j = 0; j < d; j++) {
            if (j)
                sbuf_put(b, ",", 1);
            sbuf_float(b, x[r * d + j]);
        }
        sbuf_put(b, "]", 1);
    }
    sbuf_put(b, "]", 1);
}

static void reply_sbuf(req *r, sbuf *b, const char *type)
{
    size_t n;
    char *text = sbuf_take(b, &n);
    if (text)
        reply(r, 200, type, text, n);
    else
        reply_error(r, 503, "out_of_memory", "no memory for the response");
}

static void reply_codes_json(req *r, const sae_codes *c, const float *xhat, int d)
{
    sbuf b;
    sbuf_init(&b);
    sbuf_reserve(&b, (size_t)c->indptr[c->n_rows] * 24 + 64);
    sbuf_puts(&b, "{\"codes\": [");
    for (int64_t row = 0; row < c->n_rows; row++) {
        int64_t s = c->indptr[row], e = c->indptr[row + 1];
        sbuf_puts(&b, row ? ",{\"indices\":[" : "{\"indices\":[");
        for (int64_t q = s; q < e; q++) {
            if (q > s)
                sbuf_put(&b, ",", 1);
            sbuf_int(&b, c->indices[q]);
        }
        sbuf_puts(&b, "],\"values\":[");
        for (int64_t q = s; q < e; q++) {
            if (q > s)
                sbuf_put(&b, ",", 1);
            sbuf_float(&b, c->values[q]);
        }
        sbuf_puts(&b, "]}");
    }
    sbuf_put(&b, "]", 1);
    if (xhat) {
        sbuf_puts(&b, ", \"reconstruction\": ");
        json_rows(&b, xhat, c->n_rows, d);
    }
    sbuf_put(&b, "}", 1);
    reply_sbuf(r, &b, "application/json");
}

/* safetensors: fixed-k models give indices/values [n, k']; the others CSR
 * indptr [n+1], indices [nnz], values [nnz]; plus reconstruction [n, d]. */
static void reply_codes_binary(req *r, const sae_model *m, const sae_codes *c,
                               const float *xhat)
{
    int64_t n = c->n_rows, nnz = c->indptr[n];
    st_out outs[4];
    int k = 0;
    if (m->cfg.arch->select) {
        int64_t kk = n ? nnz / n : 0;
        outs[k++] = (st_out){"indices", ST_I32, 2, {n, kk}, c->indices};
        outs[k++] = (st_out){"values", ST_F32, 2, {n, kk}, c->values};
    } else {
        outs[k++] = (st_out){"indptr", ST_I64, 1, {n + 1}, c->indptr};
        outs[k++] = (st_out){"indices", ST_I32, 1, {nnz}, c->indices};
        outs[k++] = (st_out){"values", ST_F32, 1, {nnz}, c->values};
    }
    if (xhat)
        outs[k++] = (st_out){"reconstruction", ST_F32, 2, {n, m->cfg.d_in}, xhat};
    char meta[160];
    snprintf(meta, sizeof meta, "{\"architecture\": \"%s\", \"d_sae\": \"%d\"}",
             m->cfg.arch->name, m->cfg.d_sae);
    uint8_t *buf;
    size_t len;
    sae_error err;
    if (st_serialize(outs, k, meta, &buf, &len, &err) != SAE_OK)
        reply_error(r, 500, "internal", "%s", err.msg);
    else
        reply(r, 200, OCTET, (char *)buf, len);
}

/* ------------------------------------------------------------ encode */

/* On the network thread: the response to a finished encode. */
static void encode_reply(req *r)
{
    encode_job *j = r->state;
    if (j->binary_out)
        reply_codes_binary(r, j->m, &j->sel, j->xhat);
    else
        reply_codes_json(r, &j->sel, j->xhat, j->m->cfg.d_in);
}

/* On the batcher thread: this request's slice of the batch and its
 * reconstruction (engine work stays on this thread), or an error reply. */
static void on_encoded(bjob *bj, const sae_model *m, const sae_codes *all, int64_t row0,
                       const char *err)
{
    encode_job *j = (encode_job *)bj;
    sae_error e;
    int64_t n = j->in.n;
    int d = m->cfg.d_in;
    j->m = m;
    if (err) {
        reply_error(j->r, 500, "engine_error", "%s", err);
    } else if (select_codes(m, all, row0, n, j->in.top_k, &j->sel, &e) != SAE_OK) {
        reply_error(j->r, 503, "out_of_memory", "%s", e.msg);
    } else if (!all_finite(j->sel.values, j->sel.indptr[n])) {
        reply_error(j->r, 422, "non_finite_result", "the codes overflowed float32 (inputs too "
                    "large for this model)");
    } else if (j->in.reconstruct &&
               (!(j->xhat = malloc((size_t)n * (size_t)d * sizeof *j->xhat)) ||
                sae_decode(m, &j->sel, j->xhat, &e) != SAE_OK)) {
        reply_error(j->r, 500, "engine_error", "%s", j->xhat ? e.msg : "out of memory");
    } else if (j->xhat && !all_finite(j->xhat, n * d)) {
        reply_error(j->r, 422, "non_finite_result", "the reconstruction overflowed float32");
    } else {
        req_resume_to(j->r, encode_reply);
        return;
    }
    req_resume(j->r);
}

static void encode_job_free(void *p)
{
    encode_job *j = p;
    encode_req_free(&j->in);
    sae_codes_free(&j->sel);
    free(j->xhat);
    free(j);
}

/* ?top_k=N&reconstruct=true for binary bodies (JSON bodies carry them). */
static int binary_options(req *r, encode_req *in, api_err *e)
{
    const char *tk = req_query(r, "top_k"), *rc = req_query(r, "reconstruct");
    if (tk) {
        int64_t v = parse_index(tk, 1000000000);
        if (v < 1)
            return api_fail(e, 422, "invalid_type", "top_k must be an integer >= 1");
        in->top_k = (int)v;
    }
    if (rc) {
        if (strcmp(rc, "true") && strcmp(rc, "false") && strcmp(rc, "1") && strcmp(rc, "0"))
            return api_fail(e, 422, "invalid_type", "reconstruct must be true or false");
        in->reconstruct = !strcmp(rc, "true") || !strcmp(rc, "1");
    }
    return 0;
}

static int parse_encode_body(req *r, const sae_model *m, encode_req *in, api_err *e)
{
    int d_in = m->cfg.d_in;
    if (!r->content_type || type_is(r->content_type, "application/json"))
        return parse_encode_json(r->body ? r->body : "", r->body_len, d_in, in, e);
    if (type_is(r->content_type, OCTET)) {
        if (parse_encode_binary(r->body, r->body_len, d_in, in, e) < 0)
            return -1;
        return binary_options(r, in, e);
    }
    return api_fail(e, 415, "unsupported_media_type", "Content-Type %.100s: send "
                    "application/json or " OCTET, r->content_type);
}

int h_encode(req *r)
{
    model_entry *me = route_model(r);
    if (!me)
        return HANDLER_DONE;
    encode_job *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(r, 503, "out_of_memory", "no memory for the request");
        return HANDLER_DONE;
    }
    sae_codes_init(&j->sel);
    api_err e;
    if (parse_encode_body(r, me->model, &j->in, &e) < 0) {
        free(j);
        reply_api_err(r, &e);
        return HANDLER_DONE;
    }
    j->r = r;
    j->binary_out = wants_binary(r);
    j->job.x = j->in.x;
    j->job.n = j->in.n;
    j->job.encoded = on_encoded;
    r->state = j;
    r->state_free = encode_job_free;
    req_suspend(r);
    batcher_submit(me->batcher, &j->job);
    return HANDLER_PENDING;
}

/* ------------------------------------------------------------ decode */

static void run_decode(bjob *bj, const sae_model *m)
{
    decode_job *j = (decode_job *)bj;
    int64_t n = j->codes.n_rows;
    int d = m->cfg.d_in;
    float *xhat = malloc((size_t)n * (size_t)d * sizeof *xhat);
    sae_error err;
    if (!xhat) {
        reply_error(j->r, 503, "out_of_memory", "no memory for %lld rows", (long long)n);
    } else if (sae_decode(m, &j->codes, xhat, &err) != SAE_OK) {
        reply_error(j->r, 500, "engine_error", "%s", err.msg);
    } else if (!all_finite(xhat, n * d)) {
        reply_error(j->r, 422, "non_finite_result", "the reconstruction overflowed float32");
    } else {
        sbuf b;
        sbuf_init(&b);
        sbuf_puts(&b, "{\"reconstruction\": ");
        json_rows(&b, xhat, n, d);
        sbuf_put(&b, "}", 1);
        reply_sbuf(j->r, &b, "application/json");
    }
    free(xhat);
    req_resume(j->r);
}

static void decode_job_free(void *p)
{
    decode_job *j = p;
    sae_codes_free(&j->codes);
    free(j);
}

int h_decode(req *r)
{
    model_entry *me = route_model(r);
    if (!me)
        return HANDLER_DONE;
    if (r->content_type && !type_is(r->content_type, "application/json")) {
        reply_error(r, 415, "unsupported_media_type", "Content-Type %.100s: send "
                    "application/json", r->content_type);
        return HANDLER_DONE;
    }
    decode_job *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(r, 503, "out_of_memory", "no memory for the request");
        return HANDLER_DONE;
    }
    sae_codes_init(&j->codes);
    api_err e;
    if (parse_decode_json(r->body ? r->body : "", r->body_len, me->model->cfg.d_sae, &j->codes,
                          &e) < 0) {
        decode_job_free(j);
        reply_api_err(r, &e);
        return HANDLER_DONE;
    }
    j->r = r;
    j->job.call = run_decode;
    r->state = j;
    r->state_free = decode_job_free;
    req_suspend(r);
    batcher_submit(me->batcher, &j->job);
    return HANDLER_PENDING;
}
