/* main.c - saed: configuration, start-up, the signal wait, the drain.
 *
 * Order: settings -> token -> model roots -> registry (restore what the
 * state directory holds, then --model flags) -> HTTP -> ready. Liveness is
 * answered from the moment HTTP starts; readiness once the models are in.
 * SIGTERM/SIGINT: not ready, running jobs get SIGTERM (train checkpoints),
 * stop accepting, wait for in-flight requests (up to --drain-timeout-s), stop,
 * wait for the jobs' children (up to --job-grace-s), exit 0. Only this file
 * decides to exit. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "backend.h"
#include "blas.h"
#include "config.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "notify.h"
#include "paths.h"
#include "registry.h"
#include "routes.h"
#include "state.h"

_Static_assert(sizeof(float) == 4, "float32 rows");

static int fail(const char *fmt, const char *msg)
{
    fprintf(stderr, "saed: ");
    fprintf(stderr, fmt, msg);
    fputc('\n', stderr);
    return 2;
}

static void print_routes(void)
{
    for (int i = 0; i < N_ROUTES; i++)
        printf("%s %s %s\n", ROUTES[i].method, ROUTES[i].pattern,
               ROUTES[i].scope == SCOPE_ADMIN ? "admin" : "public");
}

static void lib_log(const char *line)
{
    saed_log("%s", line);
}

/* --model ID=DIR: operator-given, so not held to the model roots and not
 * stored (they come back from the flags at every start). */
static int load_flag_models(const cfg_list *models)
{
    for (int i = 0; i < models->n; i++) {
        const char *spec = models->v[i], *eq = strchr(spec, '=');
        char id[MODEL_ID_MAX + 1];
        if (!eq || eq == spec || (size_t)(eq - spec) > MODEL_ID_MAX) {
            fprintf(stderr, "saed: --model %s: want ID=DIR\n", spec);
            return -1;
        }
        memcpy(id, spec, (size_t)(eq - spec));
        id[eq - spec] = '\0';
        api_err e;
        if (registry_add(id, eq + 1, false, &e) < 0) {
            fprintf(stderr, "saed: --model %s: %s\n", spec, e.msg);
            return -1;
        }
    }
    return 0;
}

static store *open_state(const saed_config *cfg)
{
    if (mkdir(cfg->state_dir, 0750) != 0 && errno != EEXIST) {
        fprintf(stderr, "saed: --state-dir %s: %s\n", cfg->state_dir, strerror(errno));
        return NULL;
    }
    sae_error err;
    store *st;
    if (store_open(cfg->state_dir, &st, &err) != SAE_OK) {
        fprintf(stderr, "saed: %s\n", err.msg);
        return NULL;
    }
    return st;
}

/* Waits for in-flight requests to finish, at most timeout_s. */
static void drain(int timeout_s)
{
    struct timespec step = {0, 20 * 1000 * 1000};
    long waited_ms = 0;
    while (http_in_flight() > 0 && waited_ms < timeout_s * 1000L) {
        nanosleep(&step, NULL);
        waited_ms += 20;
    }
    if (http_in_flight() > 0)
        saed_log("drain timeout: %ld requests still in flight", http_in_flight());
}

/* SIGTERM/SIGINT arrive on whichever thread does not block them (OpenBLAS
 * starts threads before main can mask anything), so the handler only writes
 * the signal number to a pipe that main reads. A second signal while
 * draining writes again and is ignored. */
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    unsigned char b = (unsigned char)sig;
    ssize_t rc = write(sig_pipe[1], &b, 1);
    (void)rc;   /* the pipe holding a byte already is as good */
}

static int install_signals(void)
{
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int wait_for_signal(void)
{
    struct pollfd p = {sig_pipe[0], POLLIN, 0};
    unsigned char b = 0;
    for (;;) {
        if (poll(&p, 1, -1) > 0 && read(sig_pipe[0], &b, 1) == 1)
            return b;
    }
}

static int serve(const saed_config *cfg)
{
    char err[512];
    if (auth_init(cfg->admin_token_file, err, sizeof err) < 0 ||
        paths_init(&cfg->model_roots, err, sizeof err) < 0)
        return fail("%s", err);
    store *st = open_state(cfg);
    if (!st)
        return 1;
    state_set_store(st);
    batcher_opts bo = {cfg->batch_max_rows, cfg->batch_wait_us};
    registry_init(st, &bo, cfg->device);
    if (jobs_init(cfg, st, err, sizeof err) < 0) {
        registry_shutdown();
        store_close(st);
        return fail("%s", err);
    }
    http_server *http = NULL;
    if (http_start(cfg, &http, err, sizeof err) < 0) {
        jobs_shutdown();
        registry_shutdown();
        store_close(st);
        return fail("%s", err);
    }
    int rc = load_flag_models(&cfg->models);
    if (rc == 0) {
        registry_restore();
        state_set_ready(true);
        notify_systemd("READY=1");
        saed_log("ready: %d models", registry_count());
        int sig = wait_for_signal();
        saed_log("%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        notify_systemd("STOPPING=1");
    }
    state_set_ready(false);
    /* Children checkpoint while requests drain; event streams end now, since
     * MHD cannot stop with a parked connection. saed keeps answering during
     * the drain (/readyz says 503): MHD_quiesce_daemon races with the pool
     * threads in libmicrohttpd 0.9.75 (the caller and a worker both remove
     * the listening socket from the worker's epoll set; the loser aborts). */
    jobs_begin_shutdown();
    drain(cfg->drain_timeout_s);
    http_stop(http);
    jobs_shutdown();    /* before the registry: a finished job registers its model */
    registry_shutdown();
    state_set_store(NULL);
    store_close(st);
    auth_free();
    saed_log("stopped");
    return rc == 0 ? 0 : 1;
}

/* glibc's malloc hands freed memory back to the kernel once an arena has
 * more than a threshold free at its top, and by default that threshold moves
 * with the sizes freed so far. Under 1-row load each network thread frees a
 * batch's request bodies at about the same time, and the arenas were trimmed
 * and refilled over and over: in some runs two page faults a request, each
 * with a TLB shootdown across the cores (bench/RESULTS.md). Fixed thresholds
 * instead: blocks up to 4 MiB come from the arenas, which keep up to 32 MiB
 * free; larger ones (a big model's encode buffers, kept per thread) are
 * mapped and unmapped whole. */
static void keep_freed_memory(void)
{
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
}

int main(int argc, char **argv)
{
    /* OpenMP workers that spin between parallel regions (libgomp's default)
     * take the cores the network threads need between two batches: 1-row
     * requests were served 1.5x slower with them on an idle 2-core machine,
     * 2.3x on a busy one (bench/RESULTS.md). */
    sae_blas_exec_tuned(argv, true);
    keep_freed_memory();
    const unsigned one = 1;
    if (*(const unsigned char *)&one != 1)
        return fail("%s", "saed reads float32 request bodies as host floats: little-endian "
                          "hosts only");
    if (install_signals() != 0)
        return fail("%s", "cannot install signal handlers");

    saed_config cfg;
    char err[512];
    if (config_load(argc, argv, &cfg, err, sizeof err) < 0) {
        config_free(&cfg);
        config_usage(stderr);
        return fail("%s", err);
    }
    int rc = 0;
    if (cfg.help) {
        config_usage(stdout);
    } else if (cfg.print_routes) {
        print_routes();
    } else {
        sae_set_log(lib_log);
        sae_blas_init();
        rc = serve(&cfg);
    }
    config_free(&cfg);
    return rc;
}
