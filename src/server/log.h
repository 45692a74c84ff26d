/* log.h - one line on stderr per event, with a UTC timestamp (journald adds
 * its own, but a foreground run needs one too). */
#ifndef SAED_LOG_H
#define SAED_LOG_H

void saed_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
