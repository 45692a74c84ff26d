/* listener.h - the listening socket and the thread that accepts on it.
 *
 * Why not libmicrohttpd's own accept: each of its pool threads accepts from
 * the one shared socket, up to ten connections per wake-up, so a burst of
 * connections (a client pool opening 64 at once) lands mostly on one or two
 * threads: 32, 17, 9 and 6 of 64 on four threads, measured. Under load that
 * thread then parses the most request bodies while the batch waits for the
 * last of them. The listener accepts every connection itself and hands it
 * to a callback (http.c: MHD_add_connection, which spreads connections over
 * the pool by descriptor number, so a burst is dealt out evenly). */
#ifndef SAED_LISTENER_H
#define SAED_LISTENER_H

#include <stddef.h>
#include <sys/socket.h>

typedef struct listener listener;

/* Takes a connection; owns fd from then on (closes it on failure). */
typedef void (*listener_take_fn)(void *ctx, int fd, const struct sockaddr *addr,
                                 socklen_t addrlen);

/* Binds addr, listens and starts the accepting thread. 0, or -1 with err
 * set (the address in use, not this host's, or out of resources). */
int listener_start(const struct sockaddr *addr, socklen_t addrlen, listener_take_fn take,
                   void *ctx, listener **out, char *err, size_t errlen);

/* The port bound (the one chosen, when addr asked for port 0). */
unsigned listener_port(const listener *l);

/* Stops accepting, joins the thread and closes the socket. NULL is a no-op. */
void listener_stop(listener *l);

#endif
