/* routes.c - the one table of endpoints, and its matcher. */
#include "routes.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "handlers.h"

const route ROUTES[] = {
    {"GET", "/healthz", h_healthz, SCOPE_PUBLIC},
    {"GET", "/readyz", h_readyz, SCOPE_PUBLIC},
    {"GET", "/metrics", h_metrics, SCOPE_PUBLIC},
    {"GET", "/v1/models", h_models_list, SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}", h_model_get, SCOPE_PUBLIC},
    {"POST", "/v1/models/{id}/encode", h_encode, SCOPE_PUBLIC},
    {"POST", "/v1/models/{id}/decode", h_decode, SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}/features/{f}/vector", h_feature_vector, SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}/features", h_features_list, SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}/features/{f}", h_feature_get, SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}/features/{f}/examples", h_feature_examples, SCOPE_PUBLIC},
    {"POST", "/v1/models/{id}/features/{f}/explanations", h_feature_explanation_post,
     SCOPE_PUBLIC},
    {"GET", "/v1/models/{id}/calibration", h_calibration, SCOPE_PUBLIC},
    {"GET", "/v1/admin/models", h_admin_models_list, SCOPE_ADMIN},
    {"POST", "/v1/admin/models", h_admin_model_load, SCOPE_ADMIN},
    {"DELETE", "/v1/admin/models/{id}", h_admin_model_unload, SCOPE_ADMIN},
    {"GET", "/v1/admin/jobs", h_jobs_list, SCOPE_ADMIN},
    {"POST", "/v1/admin/jobs", h_jobs_submit, SCOPE_ADMIN},
    {"GET", "/v1/admin/jobs/{id}", h_job_get, SCOPE_ADMIN},
    {"DELETE", "/v1/admin/jobs/{id}", h_job_cancel, SCOPE_ADMIN},
    {"GET", "/v1/admin/jobs/{id}/events", h_job_events, SCOPE_ADMIN},
    {"POST", "/v1/admin/jobs/{id}/resume", h_job_resume, SCOPE_ADMIN},
};
const int N_ROUTES = (int)(sizeof ROUTES / sizeof ROUTES[0]);

/* Matches one pattern against path; fills params. */
static bool path_matches(const char *pattern, const char *path,
                         char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1])
{
    int np = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *seg_end = strchr(s, '/');
            size_t len = seg_end ? (size_t)(seg_end - s) : strlen(s);
            if (!close || len == 0 || len > ROUTE_PARAM_MAX || np == ROUTE_MAX_PARAMS)
                return false;
            memcpy(params[np], s, len);
            params[np++][len] = '\0';
            p = close + 1;
            s += len;
        } else if (*p++ != *s++) {
            return false;
        }
    }
    return *p == '\0' && *s == '\0';
}

int route_match(const char *method, const char *path,
                char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1], char *allow,
                size_t allow_len)
{
    char scratch[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1];
    bool path_seen = false;
    size_t used = 0;
    if (allow_len)
        allow[0] = '\0';
    for (int i = 0; i < N_ROUTES; i++) {
        if (!path_matches(ROUTES[i].pattern, path, scratch))
            continue;
        if (!strcmp(ROUTES[i].method, method)) {
            memcpy(params, scratch, sizeof scratch);
            return i;
        }
        path_seen = true;
        if (allow_len > used) {
            int n = snprintf(allow + used, allow_len - used, "%s%s", used ? ", " : "",
                             ROUTES[i].method);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    return path_seen ? -2 : -1;
}
