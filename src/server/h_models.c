/* h_models.c - what is loaded: the model list, one model, a decoder row. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "handlers.h"
#include "http.h"
#include "registry.h"
#include "reqparse.h"
#include "sbuf.h"

/* The model's description; metadata is cfg.json's object as it was. */
static json_t *describe(const model_entry *e)
{
    const sae_config *c = &e->model->cfg;
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:s, s:s, s:b, s:s, s:s}", "id", e->id,
                          "architecture", c->arch->name, "d_in", c->d_in, "d_sae", c->d_sae,
                          "dtype", c->dtype, "normalize_activations", sae_norm_name(c->normalize),
                          "apply_b_dec_to_input", c->apply_b_dec_to_input, "device",
                          e->model->backend ? e->model->backend->name : "cpu",
                          "codes", c->arch->select ? "fixed_k" : "sparse");
    if (!o)
        return NULL;
    if (c->arch->uses_k)
        json_object_set_new(o, "k", json_integer(c->k));
    if (c->metadata_json) {
        json_t *md = json_loads(c->metadata_json, 0, NULL);
        if (md)
            json_object_set_new(o, "metadata", md);
    }
    return o;
}

static void reply_jansson(req *r, int status, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        reply_error(r, 503, "out_of_memory", "no memory for the reply");
    else
        reply(r, status, "application/json", text, strlen(text));
}

int h_models_list(req *r)
{
    model_entry *all[256];
    int n = registry_snapshot(all, 256);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *d = describe(all[i]);
        if (arr && d)
            json_array_append_new(arr, d);
        else
            json_decref(d);
        registry_release(all[i]);
    }
    reply_jansson(r, 200, arr ? json_pack("{so}", "models", arr) : NULL);
    return HANDLER_DONE;
}

/* The model named by the route's {id} (held until the response is sent), or
 * a 404 reply. */
model_entry *route_model(req *r)
{
    model_entry *m = registry_get(r->params[0]);
    if (!m)
        reply_error(r, 404, "model_not_found", "no model '%s' is loaded", r->params[0]);
    r->model = m;
    return m;
}

int h_model_get(req *r)
{
    model_entry *m = route_model(r);
    if (m)
        reply_jansson(r, 200, describe(m));
    return HANDLER_DONE;
}

/* The decoder row of a latent: the direction it writes into the input space. */
int h_feature_vector(req *r)
{
    model_entry *m = route_model(r);
    if (!m)
        return HANDLER_DONE;
    const sae_config *c = &m->model->cfg;
    int64_t f = parse_index(r->params[1], c->d_sae);
    if (f < 0) {
        reply_error(r, 404, "feature_not_found", "feature '%s' is not in [0, %d)", r->params[1],
                    c->d_sae);
        return HANDLER_DONE;
    }
    const float *row = m->model->W_dec + f * c->d_in;
    sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"model_id\": ");
    sbuf_json_str(&b, m->id);
    sbuf_printf(&b, ", \"feature\": %lld, \"vector\": [", (long long)f);
    for (int j = 0; j < c->d_in; j++) {
        if (j)
            sbuf_put(&b, ",", 1);
        sbuf_float(&b, isfinite(row[j]) ? row[j] : 0.0f);   /* loads reject non-finite */
    }
    sbuf_puts(&b, "]}");
    size_t n;
    char *text = sbuf_take(&b, &n);
    if (text)
        reply(r, 200, "application/json", text, n);
    else
        reply_error(r, 503, "out_of_memory", "no memory for the reply");
    return HANDLER_DONE;
}
