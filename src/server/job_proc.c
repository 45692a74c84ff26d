/* job_proc.c - see job_proc.h. */
#include "job_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

extern char **environ;

/* The environment minus the admin token (the pointers are environ's). */
static char **child_env(void)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = malloc((n + 1) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SAED_ADMIN_TOKEN=", 17) != 0)
            env[k++] = environ[i];
    env[k] = NULL;
    return env;
}

/* In the child, between fork and exec: only async-signal-safe calls (the
 * parent has other threads, whose locks may be held forever here). */
static void exec_child(char *const argv[], char **env, int null_fd, int log_fd, int pipe_w,
                       pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127);     /* the parent is already gone */
    setpgid(0, 0);
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0)
        _exit(127);
    if (pipe_w == JOB_PROGRESS_FD) {
        if (fcntl(pipe_w, F_SETFD, 0) != 0)
            _exit(127);
    } else if (dup2(pipe_w, JOB_PROGRESS_FD) < 0) {
        _exit(127);
    }
    close_range(JOB_PROGRESS_FD + 1, ~0U, 0);
    /* saed ignores SIGPIPE and its threads may block signals: give the
     * child the defaults (exec keeps ignored signals and the mask). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(argv[0], argv, env);
    _exit(127);
}

/* Descriptors 0-2 are taken in a daemon, so new ones are >= 3; the child's
 * dup2 sequence relies on that. */
static int open_fds(const char *log_path, int *null_fd, int *log_fd, int pipefd[2], char *err,
                    size_t errlen)
{
    *null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    *log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    int prc = pipe2(pipefd, O_CLOEXEC);
    if (*null_fd < 3 || *log_fd < 3 || prc != 0 || pipefd[0] < 3 || pipefd[1] < 3) {
        snprintf(err, errlen, "cannot open the job's files (%s): %s", log_path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

int job_spawn(char *const argv[], const char *log_path, pid_t *pid, int *progress_fd,
              char *err, size_t errlen)
{
    int null_fd = -1, log_fd = -1, pipefd[2] = {-1, -1};
    char **env = child_env();
    int rc = -1;
    if (!env)
        snprintf(err, errlen, "out of memory");
    else if (open_fds(log_path, &null_fd, &log_fd, pipefd, err, errlen) == 0) {
        pid_t parent = getpid();
        pid_t p = fork();
        if (p == 0)
            exec_child(argv, env, null_fd, log_fd, pipefd[1], parent);
        if (p < 0) {
            snprintf(err, errlen, "fork: %s", strerror(errno));
        } else if (fcntl(pipefd[0], F_SETFL, O_NONBLOCK) != 0) {
            /* the child runs; without progress we still reap it */
            snprintf(err, errlen, "progress pipe: %s", strerror(errno));
            *pid = p;
            *progress_fd = -1;
            rc = 0;
        } else {
            *pid = p;
            *progress_fd = pipefd[0];
            pipefd[0] = -1;
            rc = 0;
        }
    }
    close_fd(null_fd);
    close_fd(log_fd);
    close_fd(pipefd[0]);
    close_fd(pipefd[1]);
    free(env);
    return rc;
}

void job_log_tail(const char *log_path, char *out, size_t max)
{
    out[0] = '\0';
    if (max < 2)
        return;
    FILE *f = fopen(log_path, "rb");
    if (!f)
        return;
    char buf[1024];
    long start = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        start = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    }
    size_t n = fseek(f, start, SEEK_SET) == 0 ? fread(buf, 1, sizeof buf - 1, f) : 0;
    fclose(f);
    buf[n] = '\0';
    /* drop a partial first line, and the trailing newlines */
    char *s = buf;
    if (start > 0 && strchr(s, '\n'))
        s = strchr(s, '\n') + 1;
    size_t len = strlen(s);
    while (len && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        s[--len] = '\0';
    /* keep the tail that fits */
    if (len >= max)
        s += len - (max - 1);
    size_t o = 0;
    for (; *s && o + 3 < max; s++) {
        if (*s == '\r')
            continue;
        if (*s == '\n') {
            out[o++] = ';';
            out[o++] = ' ';
        } else {
            out[o++] = (unsigned char)*s < 0x20 ? ' ' : *s;
        }
    }
    out[o] = '\0';
}

static int try_path(const char *path, char *out, size_t len)
{
    if (access(path, X_OK) != 0 || strlen(path) >= len)
        return -1;
    snprintf(out, len, "%s", path);
    return 0;
}

int job_find_saectl(const char *configured, char *out, size_t len)
{
    if (configured)
        return try_path(configured, out, len);
    char self[PATH_MAX], cand[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    const char *dir = dirname(self);
    snprintf(cand, sizeof cand, "%s/saectl", dir);
    if (try_path(cand, out, len) == 0)
        return 0;
    snprintf(cand, sizeof cand, "%s/../cli/saectl", dir);
    return try_path(cand, out, len);
}
