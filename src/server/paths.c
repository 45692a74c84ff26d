/* paths.c - see paths.h. */
#include "paths.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char roots[CFG_MAX_LIST][PATH_MAX];
static int n_roots;

int paths_init(const cfg_list *list, char *err, size_t errlen)
{
    n_roots = 0;
    for (int i = 0; i < list->n; i++) {
        if (!realpath(list->v[i], roots[n_roots])) {
            snprintf(err, errlen, "--model-root %s: %s", list->v[i], strerror(errno));
            return -1;
        }
        n_roots++;
    }
    return 0;
}

int paths_root_count(void)
{
    return n_roots;
}

static bool has_dotdot(const char *p)
{
    for (const char *s = p; (s = strstr(s, "..")) != NULL; s += 2) {
        bool starts = s == p || s[-1] == '/';
        bool ends = s[2] == '\0' || s[2] == '/';
        if (starts && ends)
            return true;
    }
    return false;
}

static bool under(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (strncmp(path, root, n) != 0)
        return false;
    return path[n] == '/' || path[n] == '\0' || (n == 1 && root[0] == '/');
}

static int under_any(const char *path)
{
    for (int i = 0; i < n_roots; i++)
        if (under(path, roots[i]))
            return i;
    return -1;
}

int paths_resolve(const char *path, char out[PATH_MAX], api_err *e)
{
    if (n_roots == 0)
        return api_fail(e, 403, "path_forbidden", "no --model-root is configured");
    if (!*path || strlen(path) >= PATH_MAX - 1)
        return api_fail(e, 422, "invalid_path", "path is empty or too long");
    if (has_dotdot(path))
        return api_fail(e, 403, "path_forbidden", "'..' is not allowed in paths");
    char joined[PATH_MAX * 2];
    int found = -1;
    for (int i = 0; i < n_roots && found < 0; i++) {
        if (path[0] == '/')
            snprintf(joined, sizeof joined, "%s", path);
        else
            snprintf(joined, sizeof joined, "%.4095s/%.4095s", roots[i], path);
        if (path[0] == '/' && under_any(joined) < 0)
            return api_fail(e, 403, "path_forbidden", "the path is outside the model roots");
        if (realpath(joined, out))
            found = i;
        else if (path[0] == '/')
            break;
    }
    if (found < 0)
        return api_fail(e, 404, "path_not_found", "no such checkpoint directory in the model "
                        "roots");
    if (under_any(out) < 0)
        return api_fail(e, 403, "path_forbidden", "the path leads outside the model roots");
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
        return api_fail(e, 422, "invalid_path", "the path is not a checkpoint directory");
    return 0;
}
