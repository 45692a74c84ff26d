/* handlers.h - every endpoint's handler, one file per area (h_*.c). A
 * handler reads the request through http.h and replies through it. */
#ifndef SAED_HANDLERS_H
#define SAED_HANDLERS_H

struct req;

/* h_health.c */
int h_healthz(struct req *r);
int h_readyz(struct req *r);
int h_metrics(struct req *r);
/* h_models.c */
int h_models_list(struct req *r);
int h_model_get(struct req *r);
int h_feature_vector(struct req *r);
/* The model named by the route's {id}, held by the request until it is
 * done; NULL after a 404 reply. */
struct model_entry *route_model(struct req *r);
/* h_encode.c */
int h_encode(struct req *r);
int h_decode(struct req *r);
/* h_admin.c */
int h_admin_models_list(struct req *r);
int h_admin_model_load(struct req *r);
int h_admin_model_unload(struct req *r);

#endif
