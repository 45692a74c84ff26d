/* saectl - the command-line face of saed: one table of commands, each in its
 * own cmd_*.c file. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "cli.h"

int cmd_encode(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_feature(int argc, char **argv);
int cmd_examples(int argc, char **argv);
int cmd_explain_import(int argc, char **argv);
int cmd_calibration(int argc, char **argv);
int cmd_store_check(int argc, char **argv);

static const cli_command commands[] = {
    {"encode", "--model DIR --input X.npy --output OUT.safetensors [--dense] [--device auto|cpu|cuda]",
     "sparse codes of raw activations", cmd_encode},
    {"decode", "--model DIR --input CODES.safetensors --output XHAT.npy [--device auto|cpu|cuda]",
     "reconstruction from sparse (or dense) codes", cmd_decode},
    {"inspect", "--model DIR", "the checkpoint's configuration as JSON", cmd_inspect},
    {"convert", "--model DIR --output DIR2", "any readable checkpoint to native (SAELens v6)",
     cmd_convert},
    {"synth", "--out DIR --d-in D --features G --tokens N --seed S [--context-len 64] [--noise 0] [--correlated 0] [--zipf 1] [--k-mean 4] [--dtype float32|float16|bfloat16] [--shard-tokens T] [--words-per-feature 3] [--filler-words 64]",
     "a synthetic corpus with its ground truth (dictionary, frequencies, trigger words)", cmd_synth},
    {"train", "--arch ptopk|topk|standard|gated|batchtopk --k K --d-sae M --corpus DIR --out DIR --steps N [--batch 8192] [--lr 5e-4] [--seed S] [--normalize center_unit_norm|none|layer_norm] [--config FILE.json] [--resume] [--no-magnitude] [--no-layernorm] [--sigmoid-gate] [--auxk] [--l1-coef C] [--warmup W] [--beta0 5] [--beta-end 1e-4] [--lambda-mag 1e-4] [--checkpoint-every N] [--progress-fd N] [--device cpu|auto|cuda[:N]]",
     "train an SAE on an activation corpus (resumable)", cmd_train},
    {"eval", "--model DIR --corpus DIR [--truth FILE] [--tokens N] [--json]",
     "reconstruction, sparsity and (with a truth file) dictionary recovery", cmd_eval},
    {"profile", "--model DIR --corpus DIR --state DIR --model-id ID [--top 32] [--per-bucket 20] [--negatives 20] [--window 32] [--max-tokens T] [--seed 0] [--batch 4096] [--collect-max 4194304] [--memory-mb 64] [--device auto|cpu|cuda] [--progress-fd N]",
     "per-feature statistics, percentile buckets and examples into the store", cmd_profile},
    {"feature", "--state DIR --model-id ID --feature F", "a profiled feature as JSON", cmd_feature},
    {"examples", "--state DIR --model-id ID --feature F --kind top|bucket|negative [--bucket B] [--limit L]",
     "a profiled feature's examples as JSON", cmd_examples},
    {"explain-import", "FILE.jsonl --state DIR", "store explanations and scores (JSON lines)",
     cmd_explain_import},
    {"calibration", "--state DIR --model-id ID [--scorer S]",
     "mean score per percentile bucket with 95% CI, and Pearson r", cmd_calibration},
    {"store-check", "--state DIR", "check the store's consistency", cmd_store_check},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

int cli_error(const char *cmd, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "saectl %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static int parse_value(const char *cmd, const cli_flag *f, const char *v)
{
    char *end = NULL;
    switch (f->type) {
    case FLAG_STR:
        *(const char **)f->dest = v;
        return CLI_OK;
    case FLAG_INT: {
        long x = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || x < -2147483647L || x > 2147483647L)
            return cli_error(cmd, CLI_USAGE, "--%s wants an integer, got '%s'", f->name, v);
        *(int *)f->dest = (int)x;
        return CLI_OK;
    }
    case FLAG_I64: {
        long long x = strtoll(v, &end, 10);
        if (*v == '\0' || *end != '\0')
            return cli_error(cmd, CLI_USAGE, "--%s wants an integer, got '%s'", f->name, v);
        *(long long *)f->dest = x;
        return CLI_OK;
    }
    case FLAG_FLOAT: {
        float x = strtof(v, &end);
        if (*v == '\0' || *end != '\0')
            return cli_error(cmd, CLI_USAGE, "--%s wants a number, got '%s'", f->name, v);
        *(float *)f->dest = x;
        return CLI_OK;
    }
    case FLAG_BOOL:
        break;
    }
    return CLI_USAGE;
}

int cli_parse(const char *cmd, int argc, char **argv, const cli_flag *flags, int n_flags)
{
    bool seen[64] = {false};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            return cli_error(cmd, CLI_USAGE, "unexpected argument '%s'", a);
        const char *name = a + 2, *inline_value = strchr(name, '=');
        size_t name_len = inline_value ? (size_t)(inline_value - name) : strlen(name);
        int found = -1;
        for (int j = 0; j < n_flags; j++)
            if (strlen(flags[j].name) == name_len && strncmp(flags[j].name, name, name_len) == 0)
                found = j;
        if (found < 0)
            return cli_error(cmd, CLI_USAGE, "unknown flag '%s' (see `saectl help`)", a);
        const cli_flag *f = &flags[found];
        seen[found] = true;
        if (f->type == FLAG_BOOL) {
            if (inline_value)
                return cli_error(cmd, CLI_USAGE, "--%s takes no value", f->name);
            *(bool *)f->dest = true;
            continue;
        }
        const char *v = inline_value ? inline_value + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v)
            return cli_error(cmd, CLI_USAGE, "--%s needs a value", f->name);
        int rc = parse_value(cmd, f, v);
        if (rc != CLI_OK)
            return rc;
    }
    for (int j = 0; j < n_flags; j++)
        if (flags[j].required && !seen[j])
            return cli_error(cmd, CLI_USAGE, "--%s is required", flags[j].name);
    return CLI_OK;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: saectl COMMAND [flags]\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n  %-10s   %s\n", commands[i].name, commands[i].summary, "",
                commands[i].usage);
}

int main(int argc, char **argv)
{
    sae_blas_exec_tuned(argv, false);
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return CLI_OK;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "saectl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
}
