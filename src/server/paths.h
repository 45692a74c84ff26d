/* paths.h - checkpoint paths from requests stay inside the configured model
 * roots: no ".." component, and the resolved path (symlinks followed) must
 * lie under a resolved root. */
#ifndef SAED_PATHS_H
#define SAED_PATHS_H

#include <limits.h>

#include "apierr.h"
#include "config.h"

/* Resolves the roots once (each must exist). */
int paths_init(const cfg_list *roots, char *err, size_t errlen);
/* A relative path is taken inside each root in turn. 403 path_forbidden when
 * outside every root, 404 path_not_found, 422 when not a directory. */
int paths_resolve(const char *path, char out[PATH_MAX], api_err *e);
int paths_root_count(void);

#endif
