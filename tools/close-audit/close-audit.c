/*
 * close-audit: an LD_PRELOAD shim for the test run (tools/test). A close()
 * that fails with EBADF, in a process whose executable is under
 * $LMCTFY_CLOSE_AUDIT_ONLY, is written with its backtrace to
 * $LMCTFY_CLOSE_AUDIT_DIR/close.<pid>. Such a close is a descriptor closed
 * twice; when another thread opened something under that number between the
 * two, the second close takes it from under its owner (seen: a test's pipe
 * end closed twice made other tests' fdopendir and pipes fail at random).
 * Only the EBADF case can be seen from here, so this finds some double
 * closes, never proves there are none. tools/close-audit/report reads it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int (*real_close)(int);

/* Whether this process is one of ours (under $LMCTFY_CLOSE_AUDIT_ONLY). */
static int ours(char *exe, size_t size) {
    const char *only = getenv("LMCTFY_CLOSE_AUDIT_ONLY");
    ssize_t n = readlink("/proc/self/exe", exe, size - 1);
    if (n < 0) return 0;
    exe[n] = 0;
    return only == NULL || strncmp(exe, only, strlen(only)) == 0;
}

/* Our executables other than the test binary keep the audit but do not
 * pass it on: what they start may run in another mount namespace (a virtual
 * host's rootfs), where the shim's file is not there and the loader says so
 * on that process's stderr. */
__attribute__((constructor)) static void close_audit_start(void) {
    char exe[512];
    size_t n;
    if (!ours(exe, sizeof exe)) return;
    n = strlen(exe);
    if (n < 7 || strcmp(exe + n - 7, ".xctest") != 0) unsetenv("LD_PRELOAD");
}

static void record(int fd) {
    const char *dir = getenv("LMCTFY_CLOSE_AUDIT_DIR");
    char exe[512];
    if (dir == NULL || !ours(exe, sizeof exe)) return;
    char path[600];
    snprintf(path, sizeof path, "%s/close.%d", dir, (int)getpid());
    int out = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0) return;
    dprintf(out, "== close(%d): EBADF in %s (thread %ld)\n", fd, exe, (long)syscall(SYS_gettid));
    void *frames[48];
    backtrace_symbols_fd(frames, backtrace(frames, 48), out);
    real_close(out);
}

int close(int fd) {
    if (real_close == NULL) real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
    int rc = real_close(fd);
    if (rc == -1 && errno == EBADF) {
        int saved = errno;
        record(fd);
        errno = saved;
    }
    return rc;
}
