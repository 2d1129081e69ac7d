/* What the spawn and virtual-host children share between clone (or vfork)
 * and exec: async-signal-safe, no allocation. Private to this target. */
#ifndef LM_CHILD_IO_H
#define LM_CHILD_IO_H

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

/* Writes all of s (retrying on EINTR); -1 with errno on failure. */
static inline int lm_child_write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Puts `from` on descriptor `to`: -2 keeps `to` as it is, -1 puts
 * /dev/null there; the result is not close-on-exec. `*devnull` (-1 at
 * first) keeps the /dev/null descriptor opened for one call for the next
 * (close-on-exec: exec closes it), so stdin, stdout and stderr on /dev/null
 * open it once. */
static inline int lm_child_dup(int from, int to, int *devnull) {
    if (from == -2) return 0;
    int fd = from;
    if (from == -1) {
        if (*devnull < 0) *devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (*devnull < 0) return -1;
        fd = *devnull;
    }
    if (fd == to) {
        /* dup2 onto itself keeps CLOEXEC; clear it. */
        int flags = fcntl(fd, F_GETFD);
        return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
    }
    return dup2(fd, to) < 0 ? -1 : 0;
}

#endif
