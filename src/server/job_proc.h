/* job_proc.h - a job's child process: fork + exec of saectl with its
 * progress pipe, its log file and the safety nets a daemon's child needs. */
#ifndef SAED_JOB_PROC_H
#define SAED_JOB_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* The child's end of the progress pipe is always this descriptor. */
#define JOB_PROGRESS_FD 3

/* Starts argv[0] with argv: stdin /dev/null, stdout and stderr appended to
 * log_path, JOB_PROGRESS_FD the write end of a pipe whose read end
 * (non-blocking, close-on-exec) goes to *progress_fd; no other descriptor.
 * The child gets SIGKILL when the calling thread dies (PR_SET_PDEATHSIG: a
 * daemon killed with -9 leaves no orphan training on), runs in its own
 * process group (a terminal's Ctrl-C reaches saed, which decides) and does
 * not inherit SAED_ADMIN_TOKEN. Returns 0, or -1 with err. */
int job_spawn(char *const argv[], const char *log_path, pid_t *pid, int *progress_fd,
              char *err, size_t errlen);

/* The last lines of a log file (at most max - 1 bytes, whole lines when
 * possible, newlines as "; "); "" when it cannot be read. */
void job_log_tail(const char *log_path, char *out, size_t max);

/* Finds saectl: the configured path, else next to this executable (an
 * install), else ../cli/saectl from it (the build tree). -1 if none runs. */
int job_find_saectl(const char *configured, char *out, size_t len);

#endif
