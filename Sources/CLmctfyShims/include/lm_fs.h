/* Per-thread filesystem context. */
#ifndef LM_FS_H
#define LM_FS_H

#include <stddef.h>

/* unshare(CLONE_FS) for the calling thread: from then on its working
 * directory (and umask) are its own, so it may chdir without moving every
 * other thread of the process. The image store extracts archives on such a
 * thread, with paths relative to the image's directory, which libarchive's
 * secure flags need. Swift cannot call unshare (<sched.h> declares it only
 * under _GNU_SOURCE). Returns 0 or -errno. */
int lm_unshare_fs(void);

/* openat2(2) of `path` (relative, no "..") below `dirfd` with
 * RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS: the kernel
 * refuses (EXDEV) a path that crosses a mount point, so a file opened from a
 * cgroup hierarchy's mount point is on that hierarchy's filesystem without
 * an fstatfs. `flags` gets O_CLOEXEC. Swift cannot call syscall(2) (it is
 * variadic). Returns the descriptor or -errno (-ENOSYS: no openat2). */
int lm_open_beneath(int dirfd, const char *path, int flags);

/* getxattr(2) and setxattr(2) of `path` resolved from `dirfd` (the *xattrat
 * calls of Linux 6.13; a trailing symlink is not followed): a cgroup's
 * records read from its hierarchy's kept mount point walk only the
 * cgroup's own path, not /sys/fs/cgroup/<hierarchy> again. Return the
 * value's length (0 for set) or -errno (-ENOSYS before 6.13). */
long lm_getxattrat(int dirfd, const char *path, const char *name, void *value, size_t size);
long lm_setxattrat(int dirfd, const char *path, const char *name, const void *value, size_t size);

#endif
