/* notify.h - systemd's readiness protocol without libsystemd: one datagram
 * ("READY=1", "STOPPING=1", ...) to the socket named in $NOTIFY_SOCKET. A
 * no-op when not started by systemd. */
#ifndef SAED_NOTIFY_H
#define SAED_NOTIFY_H

void notify_systemd(const char *state);

#endif
