/* cmd_train.c - saectl train and saectl eval. */
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "dataset.h"
#include "metrics.h"
#include "synth.h"
#include "train.h"
#include "util.h"

/* The exit status of a run stopped by SIGTERM/SIGINT after it wrote a
 * checkpoint: `--resume` continues it (saed marks such a job interrupted,
 * not failed; jobs.h JOB_EXIT_STOPPED). */
#define TRAIN_EXIT_STOPPED 3

static volatile int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct progress_ctx {
    int tty;                    /* live line on stderr */
    FILE *pipe;                 /* --progress-fd: JSON lines */
    double last_print;
} progress_ctx;

static void format_duration(double s, char *buf, size_t len)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
}

static void on_progress(void *vctx, const train_progress *p)
{
    progress_ctx *ctx = vctx;
    const step_stats *s = &p->stats;
    if (ctx->pipe) {
        fprintf(ctx->pipe, "{\"step\": %lld, \"steps\": %lld, \"tokens\": %lld, "
                "\"tokens_per_s\": %.1f, \"eta_s\": %.1f, \"mse\": %.9g, \"fvu\": %.9g, "
                "\"l0\": %.4f, \"alive\": %lld, \"dead\": %lld, \"beta\": %.6g, \"lr\": %.6g}\n",
                (long long)p->step, (long long)p->steps, (long long)p->tokens, p->tokens_per_s,
                p->eta_s, s->mse, s->fvu, s->l0, (long long)p->alive, (long long)p->dead,
                s->beta, s->lr);
        fflush(ctx->pipe);
    }
    double t = sae_now_seconds();
    if (ctx->tty && (t - ctx->last_print > 0.1 || p->step == p->steps)) {
        char eta[32];
        format_duration(p->eta_s, eta, sizeof eta);
        fprintf(stderr, "\rstep %lld/%lld  %.0f tok/s  ETA %s  mse %.4g  fvu %.3f  l0 %.1f  "
                "alive %lld/%lld  beta %.3g  lr %.2g   ", (long long)p->step, (long long)p->steps,
                p->tokens_per_s, eta, s->mse, s->fvu, s->l0, (long long)p->alive,
                (long long)(p->alive + p->dead), s->beta, s->lr);
        if (p->step == p->steps)
            fputc('\n', stderr);
        ctx->last_print = t;
    }
}

/* Whether --name (or --name=...) is on the command line (cli_parse accepted it). */
static bool flag_given(int argc, char **argv, const char *name)
{
    const size_t n = strlen(name);
    for (int i = 0; i < argc; i++)
        if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, name, n) &&
            (argv[i][2 + n] == '\0' || argv[i][2 + n] == '='))
            return true;
    return false;
}

int cmd_train(int argc, char **argv)
{
    train_options o;
    train_options_default(&o);
    const char *arch = NULL, *corpus = NULL, *out = NULL, *normalize = NULL, *config = NULL;
    const char *device = "cpu";
    long long steps = -1, seed = -1, warmup = -1, every = 0, shuffle = 0, dead_window = -1;
    int k = -1, d_sae = -1, batch = -1, progress_fd = -1;
    float lr = -1, l1 = -1, beta0 = -1, beta_end = -1, lambda_mag = -1, auxk_coef = -1;
    bool resume = false, no_mag = false, no_ln = false, sig_gate = false, auxk = false;
    const cli_flag flags[] = {
        {"arch", FLAG_STR, &arch, false}, {"k", FLAG_INT, &k, false},
        {"d-sae", FLAG_INT, &d_sae, false}, {"corpus", FLAG_STR, &corpus, true},
        {"out", FLAG_STR, &out, true}, {"steps", FLAG_I64, &steps, false},
        {"batch", FLAG_INT, &batch, false}, {"lr", FLAG_FLOAT, &lr, false},
        {"seed", FLAG_I64, &seed, false}, {"normalize", FLAG_STR, &normalize, false},
        {"config", FLAG_STR, &config, false}, {"resume", FLAG_BOOL, &resume, false},
        {"no-magnitude", FLAG_BOOL, &no_mag, false}, {"no-layernorm", FLAG_BOOL, &no_ln, false},
        {"sigmoid-gate", FLAG_BOOL, &sig_gate, false}, {"auxk", FLAG_BOOL, &auxk, false},
        {"auxk-coef", FLAG_FLOAT, &auxk_coef, false}, {"l1-coef", FLAG_FLOAT, &l1, false},
        {"warmup", FLAG_I64, &warmup, false}, {"beta0", FLAG_FLOAT, &beta0, false},
        {"beta-end", FLAG_FLOAT, &beta_end, false}, {"lambda-mag", FLAG_FLOAT, &lambda_mag, false},
        {"dead-window", FLAG_I64, &dead_window, false},
        {"checkpoint-every", FLAG_I64, &every, false}, {"shuffle-rows", FLAG_I64, &shuffle, false},
        {"progress-fd", FLAG_INT, &progress_fd, false}, {"device", FLAG_STR, &device, false},
    };
    int rc = cli_parse("train", argc, argv, flags, sizeof flags / sizeof flags[0]);
    if (rc != CLI_OK)
        return rc;
    sae_error err;
    if (config) {   /* the file first; flags win */
        char *text;
        size_t len;
        if (sae_read_file(config, 1 << 20, &text, &len, &err) != SAE_OK)
            return cli_error("train", CLI_FAIL, "%s", err.msg);
        rc = train_options_from_json(text, &o, &err);
        free(text);
        if (rc != SAE_OK)
            return cli_error("train", CLI_FAIL, "%s: %s", config, err.msg);
    }
    /* A flag given on the command line wins, whatever its value: a negative
     * one goes on to the range checks (it used to be taken for "not given"
     * and silently replaced by the default). */
#define GIVEN(name) flag_given(argc, argv, name)
    if ((GIVEN("seed") && seed < 0) || (GIVEN("warmup") && warmup < 0) ||
        (GIVEN("dead-window") && dead_window < 0))
        return cli_error("train", CLI_USAGE, "--seed, --warmup and --dead-window must not be "
                         "negative");
    if (arch) o.arch = arch;
    if (GIVEN("k")) o.k = k;
    if (GIVEN("d-sae")) o.d_sae = d_sae;
    if (GIVEN("steps")) o.steps = steps;
    if (GIVEN("batch")) o.batch = batch;
    if (GIVEN("lr")) o.lr = lr;
    if (GIVEN("seed")) o.seed = (uint64_t)seed;
    if (GIVEN("warmup")) o.warmup = warmup;
    if (GIVEN("l1-coef")) o.l1_coef = l1;
    if (GIVEN("beta0")) o.beta0 = beta0;
    if (GIVEN("beta-end")) o.beta_end = beta_end;
    if (GIVEN("lambda-mag")) o.lambda_mag = lambda_mag;
    if (GIVEN("auxk-coef")) o.auxk_coef = auxk_coef;
    if (GIVEN("dead-window")) o.dead_window = dead_window;
#undef GIVEN
    o.no_magnitude |= no_mag;
    o.no_layernorm |= no_ln;
    o.sigmoid_gate |= sig_gate;
    o.auxk |= auxk;
    if (normalize && sae_norm_parse(normalize, &o.normalize) != SAE_OK)
        return cli_error("train", CLI_USAGE, "--normalize must be none, center_unit_norm, "
                         "layer_norm or constant_scale (got '%s')", normalize);
    if (!resume && !flag_given(argc, argv, "d-sae") && !config)
        return cli_error("train", CLI_USAGE, "--d-sae is required");
    if (every < 0 || shuffle < 0)
        return cli_error("train", CLI_USAGE, "--checkpoint-every and --shuffle-rows must not "
                         "be negative");

    progress_ctx pctx = {.tty = isatty(STDERR_FILENO)};
    if (progress_fd >= 0 && !(pctx.pipe = fdopen(progress_fd, "w")))
        return cli_error("train", CLI_USAGE, "--progress-fd %d is not an open descriptor",
                         progress_fd);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    train_run_config runc = {
        .corpus = corpus, .out_dir = out, .device = device, .checkpoint_every = every, .resume = resume,
        .shuffle_rows = shuffle, .progress = on_progress, .progress_ctx = &pctx,
        .stop = &stop_requested,
    };
    rc = train_run(&o, &runc, &err) == SAE_OK ? CLI_OK
                                              : cli_error("train", CLI_FAIL, "%s", err.msg);
    if (rc != CLI_OK && stop_requested)
        rc = TRAIN_EXIT_STOPPED;
    if (pctx.pipe)
        fclose(pctx.pipe);
    return rc;
}

/* --truth accepts the synth directory or its truth.safetensors. */
static int read_truth(const char *path, float **dict, int *G, int *d, sae_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return sae_fail(err, "%s: no such file or directory", path);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    if (!S_ISDIR(st.st_mode))
        snprintf(dir, sizeof dir, "%s", dirname(dir));
    return synth_read_dictionary(dir, dict, G, d, err);
}

int cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *corpus_path = NULL, *truth = NULL, *device = "auto";
    long long tokens = 0;
    bool json = false;
    const cli_flag flags[] = {
        {"model", FLAG_STR, &model, true}, {"corpus", FLAG_STR, &corpus_path, true},
        {"truth", FLAG_STR, &truth, false}, {"tokens", FLAG_I64, &tokens, false},
        {"json", FLAG_BOOL, &json, false}, {"device", FLAG_STR, &device, false},
    };
    int rc = cli_parse("eval", argc, argv, flags, sizeof flags / sizeof flags[0]);
    if (rc != CLI_OK)
        return rc;
    sae_error err;
    sae_model *m = NULL;
    corpus *c = NULL;
    float *dict = NULL;
    eval_result r;
    double mmcs = 0, recovered = 0;
    int G = 0, d = 0;
    if (sae_load(model, &m, &err) != SAE_OK || sae_model_use_device(m, device, &err) != SAE_OK ||
        corpus_open(corpus_path, &c, &err) != SAE_OK ||
        sae_evaluate(m, c, tokens, &r, &err) != SAE_OK) {
        rc = cli_error("eval", CLI_FAIL, "%s", err.msg);
        goto out;
    }
    if (truth) {
        if (read_truth(truth, &dict, &G, &d, &err) != SAE_OK) {
            rc = cli_error("eval", CLI_FAIL, "%s", err.msg);
            goto out;
        }
        if (d != m->cfg.d_in) {
            rc = cli_error("eval", CLI_FAIL, "%s: dictionary rows have %d values, the model's "
                           "d_in is %d", truth, d, m->cfg.d_in);
            goto out;
        }
        if (sae_dictionary_match(m, dict, G, &mmcs, &recovered, &err) != SAE_OK) {
            rc = cli_error("eval", CLI_FAIL, "%s", err.msg);
            goto out;
        }
    }
    if (json) {
        printf("{\"tokens\": %lld, \"mse\": %.9g, \"fvu\": %.9g, \"ev\": %.9g, \"l0\": %.6g, "
               "\"alive\": %lld, \"dead\": %lld", (long long)r.tokens, r.mse, r.fvu, r.ev, r.l0,
               (long long)r.alive, (long long)r.dead);
        if (truth)
            printf(", \"mmcs\": %.6f, \"recovered\": %.6f, \"true_features\": %d", mmcs,
                   recovered, G);
        printf("}\n");
    } else {
        printf("tokens %lld  mse %.6g  fvu %.4f  ev %.4f  l0 %.2f  alive %lld  dead %lld\n",
               (long long)r.tokens, r.mse, r.fvu, r.ev, r.l0, (long long)r.alive,
               (long long)r.dead);
        if (truth)
            printf("mmcs %.4f  recovered %.4f (of %d true features)\n", mmcs, recovered, G);
    }
out:
    free(dict);
    corpus_close(c);
    sae_free(m);
    return rc;
}
