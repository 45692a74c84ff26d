/* cmd_corpus.c - corpus commands: `saectl synth` writes a synthetic corpus
 * with its ground truth (src/sae/synth.c describes the model). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "dataset.h"
#include "synth.h"
#include "util.h"

/* Progress lines on stderr, at most one every PROGRESS_SECONDS, and the last. */
#define PROGRESS_SECONDS 2.0

typedef struct progress {
    double start, last;
} progress;

static void report_progress(void *ctx, int64_t done, int64_t total)
{
    progress *p = ctx;
    double t = sae_now_seconds();
    if (done < total && t - p->last < PROGRESS_SECONDS)
        return;
    p->last = t;
    fprintf(stderr, "saectl synth: %lld / %lld tokens (%.1f%%), %.1f s\n", (long long)done,
            (long long)total, 100.0 * (double)done / (double)total, t - p->start);
}

int cmd_synth(int argc, char **argv)
{
    synth_config cfg;
    synth_config_default(&cfg);
    const char *out = NULL, *dtype = "float32";
    long long tokens = 0, seed = 0, shard_tokens = 0;
    const cli_flag flags[] = {
        {"out", FLAG_STR, &out, true},
        {"d-in", FLAG_INT, &cfg.d_in, true},
        {"features", FLAG_INT, &cfg.n_features, true},
        {"tokens", FLAG_I64, &tokens, true},
        {"seed", FLAG_I64, &seed, true},
        {"context-len", FLAG_INT, &cfg.context_len, false},
        {"noise", FLAG_FLOAT, &cfg.noise, false},
        {"correlated", FLAG_FLOAT, &cfg.correlated, false},
        {"zipf", FLAG_FLOAT, &cfg.zipf, false},
        {"k-mean", FLAG_FLOAT, &cfg.k_mean, false},
        {"dtype", FLAG_STR, &dtype, false},
        {"shard-tokens", FLAG_I64, &shard_tokens, false},
        {"words-per-feature", FLAG_INT, &cfg.words_per_feature, false},
        {"filler-words", FLAG_INT, &cfg.n_filler, false},
    };
    int rc = cli_parse("synth", argc, argv, flags, (int)(sizeof flags / sizeof flags[0]));
    if (rc != CLI_OK)
        return rc;
    if (out[0] == '\0')
        return cli_error("synth", CLI_USAGE, "--out must name a directory");
    if (seed < 0)
        return cli_error("synth", CLI_USAGE, "--seed must be >= 0, got %lld", seed);
    if (corpus_dtype_parse(dtype, &cfg.dtype) != SAE_OK)
        return cli_error("synth", CLI_USAGE,
                         "--dtype must be float32, float16 or bfloat16, got '%s'", dtype);
    cfg.n_tokens = tokens;
    cfg.seed = (uint64_t)seed;
    cfg.shard_tokens = shard_tokens;
    sae_error err = {{0}};
    if (synth_config_validate(&cfg, &err) != SAE_OK)
        return cli_error("synth", CLI_USAGE, "%s", err.msg);

    progress p = {sae_now_seconds(), sae_now_seconds()};
    if (synth_write(out, &cfg, report_progress, &p, &err) != SAE_OK)
        return cli_error("synth", CLI_FAIL, "%s", err.msg);
    fprintf(stderr, "saectl synth: wrote %lld tokens (d_in %d, %d features) to %s\n",
            (long long)cfg.n_tokens, cfg.d_in, cfg.n_features, out);
    return CLI_OK;
}
