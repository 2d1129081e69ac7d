/* C shims for what Swift cannot (or must not) do itself. Every item says why.
 * Names carry the lm_ prefix. */
#ifndef CLMCTFY_SHIMS_H
#define CLMCTFY_SHIMS_H

#include <stddef.h>
/* Not part of Swift's Glibc module: re-exported so LmctfySystem can wrap them. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/timerfd.h>
#include <sys/xattr.h>
/* Signal-safe process spawning into containers (spawn.c). */
#include "lm_spawn.h"

/* Bytes of heap in use (glibc mallinfo2().uordblks). <malloc.h> is not part
 * of Swift's Glibc module, so Swift cannot call mallinfo2 directly; the
 * tests use it as a leak check around the protobuf-c conversions. */
size_t lm_heap_in_use(void);

/* pipe2(fds, O_CLOEXEC): atomic close-on-exec, so a fork in another thread
 * never inherits the pipe. pipe2 needs _GNU_SOURCE, which Swift's Glibc
 * module does not define. */
int lm_pipe_cloexec(int fds[2]);

#endif
