/* log.h - one line on stderr per event, with a UTC timestamp (journald adds
 * its own, but a foreground run needs one too). */
#ifndef SAED_LOG_H
#define SAED_LOG_H

#include <stdbool.h>
#include <time.h>

void saed_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* For a line that could repeat many times a second: true (and *last set to
 * now) when the last one went out every_s seconds ago or more. */
bool saed_log_due(time_t *last, int every_s);

#endif
