/* job_params.h - what a job request may say, and the saectl command line it
 * becomes. One table per kind maps a whitelisted JSON key to its saectl flag
 * and type; anything else is refused, so a request can never pass saectl a
 * flag the daemon did not mean to (--config, --state, --progress-fd ...).
 * Every path is resolved inside the model roots (paths.c). */
#ifndef SAED_JOB_PARAMS_H
#define SAED_JOB_PARAMS_H

#include <jansson.h>
#include <stdbool.h>

#include "apierr.h"
#include "jobs.h"

/* Checks a request body object {"kind": ..., params...}. On success fills
 * kind, *params (the params without "kind"; a profile's model_id filled in
 * when it defaults to a served model's id) and *paths ({"corpus": "/abs",
 * "out"|"model": "/abs"}), both new references. 422 for an unknown kind or
 * key, a wrong type or a missing key; 403/404/422 for paths (as paths.c). */
int job_params_check(const json_t *body, job_kind *kind, json_t **params, json_t **paths,
                     api_err *e);

/* The model id a job registers (train) or profiles into (profile), or NULL. */
const char *job_params_model_id(const json_t *params);
/* The directory a train job writes, or NULL. */
const char *job_params_out(const json_t *paths);

/* Whether a train job's output holds something `--resume` can continue. */
bool job_params_resumable(const json_t *paths);

/* argv for execv: saectl, the command, the flags, --progress-fd fd (and
 * --resume). NULL-terminated; every string malloc'd; free with
 * job_argv_free. -1 when out of memory. */
int job_argv(job_kind kind, const json_t *params, const json_t *paths, const char *saectl,
             const char *state_dir, int progress_fd, bool resume, char ***argv);
void job_argv_free(char **argv);

#endif
