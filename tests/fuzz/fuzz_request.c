/* fuzz_request.c - libFuzzer target: what saed does with request bytes before
 * any engine call. The first byte picks a model width; the input up to the
 * first newline is a request path for the route matcher (with a method picked
 * by the second byte), the rest a body for the depth check and the encode and
 * decode parsers. Whatever the outcome, everything parsed is freed, an
 * accepted encode body has exactly n * d_in finite values, and the encode
 * parser's fast scan gives jansson's answer to the bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/server/reqparse.h"
#include "../../src/server/routes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The route table names handlers; only the table and the matcher are under
 * test, so the handlers are stubs here. */
#define STUB(name) int name(struct req *r); int name(struct req *r) { (void)r; return 0; }
STUB(h_healthz) STUB(h_readyz) STUB(h_metrics) STUB(h_models_list) STUB(h_model_get)
STUB(h_feature_vector) STUB(h_encode) STUB(h_decode) STUB(h_admin_models_list)
STUB(h_admin_model_load) STUB(h_admin_model_unload)
STUB(h_features_list) STUB(h_feature_get) STUB(h_feature_examples)
STUB(h_feature_explanation_post) STUB(h_calibration)
STUB(h_jobs_list) STUB(h_jobs_submit) STUB(h_job_get) STUB(h_job_cancel) STUB(h_job_events)
STUB(h_job_resume)

static void fuzz_route(const uint8_t *p, size_t n, uint8_t m)
{
    static const char *methods[] = {"GET", "POST", "DELETE", "PUT", "OPTIONS"};
    char path[512], allow[64];
    char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1];
    if (n >= sizeof path)
        n = sizeof path - 1;
    memcpy(path, p, n);
    path[n] = '\0';
    int r = route_match(methods[m % 5], path, params, allow, sizeof allow);
    if (r >= 0 && (r >= N_ROUTES || strlen(params[0]) > ROUTE_PARAM_MAX))
        abort();
}

static void fuzz_body(const char *s, size_t n, int d)
{
    (void)json_depth_ok(s, n, REQ_MAX_JSON_DEPTH);
    encode_req er;
    api_err e;
    encode_req slow;
    api_err slow_e;
    int rc = parse_encode_json(s, n, d, &er, &e);
    int slow_rc = parse_encode_json_jansson(s, n, d, &slow, &slow_e);
    /* the fast scan must agree with jansson to the bit, or leave the body to it */
    if (rc != slow_rc)
        abort();
    if (rc == 0) {
        if (er.n != slow.n || er.top_k != slow.top_k || er.reconstruct != slow.reconstruct ||
            memcmp(er.x, slow.x, (size_t)(er.n * d) * sizeof(float)) != 0)
            abort();
        for (int64_t i = 0; i < er.n * d; i++)
            if (!isfinite(er.x[i]))
                abort();
        encode_req_free(&er);
        encode_req_free(&slow);
    } else if (e.status < 400 || e.status > 503 || e.status != slow_e.status) {
        abort();
    }
    sae_codes c;
    sae_codes_init(&c);
    if (parse_decode_json(s, n, d * 4, &c, &e) == 0 &&
        sae_codes_validate(&c, d * 4, NULL) != SAE_OK)
        abort();
    sae_codes_free(&c);
    /* binary bodies need 4-byte alignment, as the HTTP layer's buffer has */
    float *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, s, n);
        if (parse_encode_binary(copy, n, d, &er, &e) == 0)
            encode_req_free(&er);
        free(copy);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int d = 1 + data[0] % 8;
    uint8_t method = data[1];
    data += 2;
    size -= 2;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t path_len = nl ? (size_t)(nl - data) : size;
    fuzz_route(data, path_len, method);
    if (nl)
        fuzz_body((const char *)nl + 1, size - path_len - 1, d);
    return 0;
}
