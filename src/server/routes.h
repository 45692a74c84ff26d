/* routes.h - the route table: method, path pattern, handler, required scope.
 * Adding an endpoint is adding a row in routes.c (and its handler in h_*.c,
 * and its entry in api/openapi.yaml; a test checks the two lists agree).
 *
 * Patterns are literal segments and {name} parameters; a parameter matches
 * exactly one non-empty segment of at most ROUTE_PARAM_MAX bytes. */
#ifndef SAED_ROUTES_H
#define SAED_ROUTES_H

#include <stddef.h>

struct req;

typedef enum { SCOPE_PUBLIC, SCOPE_ADMIN } route_scope;

/* A handler either replied (HANDLER_DONE) or suspended the request and will
 * reply and resume it from another thread (HANDLER_PENDING). */
enum { HANDLER_DONE = 0, HANDLER_PENDING = 1 };
typedef int (*route_handler)(struct req *r);

typedef struct route {
    const char *method;
    const char *pattern;
    route_handler handler;
    route_scope scope;
} route;

#define ROUTE_MAX_PARAMS 2
#define ROUTE_PARAM_MAX 128

extern const route ROUTES[];
extern const int N_ROUTES;

/* The index of the route for method + path, with its parameters; -1 when no
 * pattern matches the path (404), -2 when some do but not with this method
 * (405; allow gets "GET, POST"). */
int route_match(const char *method, const char *path,
                char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1], char *allow,
                size_t allow_len);

#endif
