#define _GNU_SOURCE
#include "lm_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Linux 6.13's numbers (the same on every architecture); Debian 12's
 * headers predate them. */
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#endif

/* struct xattr_args of <linux/xattr.h> (6.13). */
struct lm_xattr_args {
    uint64_t value;
    uint32_t size;
    uint32_t flags;
};

int lm_unshare_fs(void) {
    return unshare(CLONE_FS) == 0 ? 0 : -errno;
}

int lm_open_beneath(int dirfd, const char *path, int flags) {
    struct open_how how = {
        .flags = (unsigned long long)(flags | O_CLOEXEC),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS,
    };
    long r;
    do {
        r = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : (int)r;
}

/* getxattrat or setxattrat (`nr`): they take the same arguments. */
static long xattrat(long nr, int dirfd, const char *path, const char *name, const void *value, size_t size) {
    struct lm_xattr_args args = { .value = (uintptr_t)value, .size = (uint32_t)size, .flags = 0 };
    long r;
    do {
        r = syscall(nr, dirfd, path, AT_SYMLINK_NOFOLLOW, name, &args, sizeof args);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

long lm_getxattrat(int dirfd, const char *path, const char *name, void *value, size_t size) {
    return xattrat(SYS_getxattrat, dirfd, path, name, value, size);
}

long lm_setxattrat(int dirfd, const char *path, const char *name, const void *value, size_t size) {
    return xattrat(SYS_setxattrat, dirfd, path, name, value, size);
}
