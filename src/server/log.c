/* log.c - see log.h. One fprintf per line: stdio's lock keeps lines whole
 * across threads. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

void saed_log(const char *fmt, ...)
{
    char msg[1024], stamp[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ saed: %s\n", stamp, ts.tv_nsec / 1000000L, msg);
}

bool saed_log_due(time_t *last, int every_s)
{
    const time_t now = time(NULL);
    if (now - *last < every_s)
        return false;
    *last = now;
    return true;
}
