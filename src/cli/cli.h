/* cli.h - what the saectl commands share: the command table entry and a small
 * flag parser. Each command lives in its own cmd_*.c file and is one row of
 * the table in saectl.c. */
#ifndef SAE_CLI_H
#define SAE_CLI_H

#include <stdbool.h>

/* Exit codes: 0 success, 1 the work failed (bad file, bad data),
 * 2 the command line was wrong. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

typedef struct cli_command {
    const char *name;
    const char *usage;          /* the flags, shown by `saectl help` */
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_command;

/* One flag of a command. Flags are --name VALUE, or --name alone for bools. */
typedef enum { FLAG_STR, FLAG_INT, FLAG_I64, FLAG_FLOAT, FLAG_BOOL } cli_flag_type;
typedef struct cli_flag {
    const char *name;           /* without the leading "--" */
    cli_flag_type type;
    void *dest;                 /* const char **, int *, long long *, float *, bool * */
    bool required;
} cli_flag;

/* Parses argv (after the command name) into flags; prints a message naming
 * the bad flag and returns CLI_USAGE on error. */
int cli_parse(const char *cmd, int argc, char **argv, const cli_flag *flags, int n_flags);
/* Prints "saectl CMD: message" on stderr and returns code. */
int cli_error(const char *cmd, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
