/* check.h - what the C unit tests share: CHECK, which prints one line per
 * failed check and counts it, and a scratch directory removed at the end. */
#ifndef SAE_TEST_CHECK_H
#define SAE_TEST_CHECK_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) check(!!(cond), #cond, __FILE__, __LINE__)

static inline void check(int ok, const char *what, const char *file, int line)
{
    if (!ok) {
        const char *base = strrchr(file, '/');
        printf("FAIL %s:%d: %s\n", base ? base + 1 : file, line, what);
        failures++;
    }
}

static char tmpdir[256];

static inline void tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static inline int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static inline void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        char p[512];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

/* Makes tmpdir under $TMPDIR (or /tmp); 0 on success. */
static inline int make_tmpdir(const char *test_name)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/%s.XXXXXX", base ? base : "/tmp", test_name);
    if (!mkdtemp(tmpdir)) {
        printf("FAIL: mkdtemp %s\n", tmpdir);
        return -1;
    }
    return 0;
}

/* Removes tmpdir and gives the exit status: 0 when every check passed. */
static inline int finish(void)
{
    remove_tmpdir();
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}

#endif
