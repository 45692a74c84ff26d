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
/* h_features.c: the feature store (profiles, examples, explanations) */
int h_features_list(struct req *r);
int h_feature_get(struct req *r);
int h_feature_examples(struct req *r);
int h_feature_explanation_post(struct req *r);
int h_calibration(struct req *r);
/* h_admin.c */
int h_admin_models_list(struct req *r);
int h_admin_model_load(struct req *r);
int h_admin_model_unload(struct req *r);
/* h_jobs.c */
int h_jobs_list(struct req *r);
int h_jobs_submit(struct req *r);
int h_job_get(struct req *r);
int h_job_cancel(struct req *r);
int h_job_events(struct req *r);
int h_job_resume(struct req *r);

#endif
