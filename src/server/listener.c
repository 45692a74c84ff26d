/* listener.c - see listener.h. */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"

#define BACKLOG 511
#define RETRY_MS 100 /* out of descriptors or memory: wait, rather than spin on accept */
#define LOG_EVERY_S 10 /* while that lasts, one line per this */

struct listener {
    int fd;        /* the listening socket */
    int wake;      /* eventfd: written by listener_stop */
    unsigned port;
    listener_take_fn take;
    void *ctx;
    pthread_t thread;
};

/* An accept error that ends this round without backing off: nothing waiting
 * (EAGAIN), a protocol error or a firewall's refusal. The others that do not
 * retry at once (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or
 * memory) would come back at once. */
static bool transient(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EPROTO || e == EPERM;
}

static void *accept_loop(void *arg)
{
    listener *l = arg;
    bool backing_off = false;
    time_t logged_at = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = l->wake, .events = POLLIN},
                              {.fd = backing_off ? -1 : l->fd, .events = POLLIN}};
        int n = poll(p, 2, backing_off ? RETRY_MS : -1);
        if (n < 0 && errno != EINTR) {
            saed_log("listener: poll: %s; no more connections are accepted", strerror(errno));
            return NULL;
        }
        if (p[0].revents)
            return NULL;
        backing_off = false;
        /* take all that are waiting: each goes to its thread at once */
        for (;;) {
            struct sockaddr_storage a;
            socklen_t alen = sizeof a;
            int c = accept4(l->fd, (struct sockaddr *)&a, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c >= 0) {
                l->take(l->ctx, c, (struct sockaddr *)&a, alen);
                continue;
            }
            const int e = errno;
            if (e == EINTR || e == ECONNABORTED)
                continue;   /* the next one, at once */
            if (!transient(e)) {
                /* the client stays queued until a retry takes it */
                if (saed_log_due(&logged_at, LOG_EVERY_S))
                    saed_log("listener: accept: %s; retrying every %d ms", strerror(e), RETRY_MS);
                backing_off = true;
            }
            break;
        }
    }
}

static int fail(char *err, size_t n, const char *what, int e)
{
    snprintf(err, n, "%s: %s", what, strerror(e));
    return -1;
}

int listener_start(const struct sockaddr *addr, socklen_t addrlen, listener_take_fn take,
                   void *ctx, listener **out, char *err, size_t errlen)
{
    listener *l = calloc(1, sizeof *l);
    if (!l)
        return fail(err, errlen, "listener", ENOMEM);
    l->take = take;
    l->ctx = ctx;
    l->wake = -1;
    l->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int on = 1;
    int rc = -1;
    if (l->fd < 0) {
        fail(err, errlen, "socket", errno);
        goto out;
    }
    /* a restart binds at once, past the old connections' TIME_WAIT (not
     * SO_REUSEPORT: a second saed on the port must fail, not share it) */
    if (setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        (addr->sa_family == AF_INET6 &&
         setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0)) {
        fail(err, errlen, "setsockopt", errno);
        goto out;
    }
    if (bind(l->fd, addr, addrlen) < 0) {
        fail(err, errlen, "bind", errno);
        goto out;
    }
    if (listen(l->fd, BACKLOG) < 0) {
        fail(err, errlen, "listen", errno);
        goto out;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(l->fd, (struct sockaddr *)&bound, &blen) < 0) {
        fail(err, errlen, "getsockname", errno);
        goto out;
    }
    l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    if ((l->wake = eventfd(0, EFD_CLOEXEC)) < 0) {
        fail(err, errlen, "eventfd", errno);
        goto out;
    }
    int e = pthread_create(&l->thread, NULL, accept_loop, l);
    if (e != 0) {
        fail(err, errlen, "cannot start the listener thread", e);
        goto out;
    }
    (void)pthread_setname_np(l->thread, "saed-listener"); /* for top -H; a name is optional */
    *out = l;
    rc = 0;
out:
    if (rc != 0) {
        if (l->fd >= 0)
            close(l->fd);
        if (l->wake >= 0)
            close(l->wake);
        free(l);
    }
    return rc;
}

unsigned listener_port(const listener *l)
{
    return l->port;
}

void listener_stop(listener *l)
{
    if (!l)
        return;
    const uint64_t one = 1;
    if (write(l->wake, &one, sizeof one) != (ssize_t)sizeof one) {
        /* cannot happen with one write to a fresh eventfd; if it does, the
         * thread still uses l, so it is left to the process's exit */
        saed_log("listener: cannot wake the accepting thread: %s", strerror(errno));
        return;
    }
    pthread_join(l->thread, NULL);
    close(l->fd);
    close(l->wake);
    free(l);
}
