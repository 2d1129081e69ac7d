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
 * /dev/null there; the result is not close-on-exec. */
static inline int lm_child_dup(int from, int to) {
    if (from == -2) return 0;
    int fd = from;
    if (from == -1) {
        fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (fd < 0) return -1;
    }
    if (fd == to) {
        /* dup2 onto itself keeps CLOEXEC; clear it. */
        int flags = fcntl(fd, F_GETFD);
        return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
    }
    if (dup2(fd, to) < 0) return -1;
    if (from == -1) close(fd);
    return 0;
}

#endif
