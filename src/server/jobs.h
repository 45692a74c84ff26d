/* jobs.h - training and profiling jobs: `saectl train` / `saectl profile`
 * run as child processes, watched by the daemon.
 *
 * State machine (every transition is stored and logged):
 *
 *   queued ──start──> running ──exit 0──────────────> succeeded
 *     │                  │  ──exit != 0 / bad signal─> failed
 *     │                  │  ──DELETE (SIGTERM, then SIGKILL)─> cancelled
 *     │                  └──saed stops (SIGTERM; train checkpoints)─> interrupted
 *     ├──DELETE──> cancelled
 *     └──saed stops──> interrupted
 *   found queued or running in the store at start ─> interrupted
 *   interrupted | failed | cancelled ──POST .../resume──> queued
 *     (train continues from its latest checkpoint with --resume; profile reruns)
 *
 * A train job with a model_id registers its model (persistently) when the
 * child exits 0; the job is `running` until that is done, and `failed` if the
 * registration fails (the weights stay on disk).
 *
 * Threads. Handlers (network threads) only touch the in-memory table under
 * one mutex: they never wait for a child or for the store. The runner thread
 * forks the children, reads their progress pipes, reaps them and wakes event
 * streams; it never touches LMDB either, so a child that holds the store's
 * write lock while writing progress can never deadlock with it. The keeper
 * thread writes job records to the store (state changes at once, progress at
 * most once a second) and registers finished models. */
#ifndef SAED_JOBS_H
#define SAED_JOBS_H

#include <jansson.h>
#include <stddef.h>

#include "apierr.h"
#include "config.h"
#include "store.h"

typedef enum {
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_INTERRUPTED,
    JOB_N_STATES
} job_state;

typedef enum { JOB_TRAIN, JOB_PROFILE } job_kind;

/* saectl train's exit status when SIGTERM stopped it after writing a
 * checkpoint (cmd_train.c): the run can be resumed. */
#define JOB_EXIT_STOPPED 3

#define JOB_ID_MAX 32

/* How job JSON is written (reply, events, store): metrics need no 17 digits. */
#define JOB_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))

/* Loads the job records (queued/running ones become interrupted), finds
 * saectl, starts the runner and keeper threads. -1 with err on failure. */
int jobs_init(const saed_config *cfg, store *st, char *err, size_t errlen);
/* SIGTERM: queued jobs become interrupted, running children get SIGTERM,
 * event streams end and no new job or stream is accepted. */
void jobs_begin_shutdown(void);
/* After HTTP has stopped: waits for the children (SIGKILL after the grace
 * period), stores the final states, stops the threads, frees everything. */
void jobs_shutdown(void);

/* A validated job request (job_params.c builds it): kind, the params as
 * given, and the resolved paths. Takes ownership of params and paths. On
 * success *out is the new job as JSON (the caller decrefs). 409 when another
 * active job writes the same output or model id, 503 when shutting down. */
int jobs_submit(job_kind kind, json_t *params, json_t *paths, json_t **out, api_err *e);
/* The job as JSON (404 if unknown). */
int jobs_get(const char *id, json_t **out, api_err *e);
/* {"jobs": [...]} in id order. */
int jobs_list(json_t **out, api_err *e);
/* Cancels a queued or running job (409 when it has already ended). */
int jobs_cancel(const char *id, json_t **out, api_err *e);
/* Queues an interrupted, failed or cancelled job again (409 otherwise). */
int jobs_resume(const char *id, json_t **out, api_err *e);

/* Event streams (GET .../events). open: 404 unknown job, 503 when too many
 * streams are open or saed is stopping. pull follows http.h's reply_stream
 * contract; close is its done. conn is the request's connection, used to
 * wake the stream when its job changes. */
typedef struct job_stream job_stream;
int jobs_stream_open(const char *id, void *conn, job_stream **out, api_err *e);
long jobs_stream_pull(void *stream, char *buf, size_t max);
void jobs_stream_close(void *stream);

const char *job_state_name(job_state s);

#endif
