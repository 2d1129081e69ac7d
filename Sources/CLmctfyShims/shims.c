#define _GNU_SOURCE
#include "CLmctfyShims.h"

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

size_t lm_heap_in_use(void) {
    return mallinfo2().uordblks;
}

int lm_malloc_fixed_mmap_threshold(size_t bytes) {
    return mallopt(M_MMAP_THRESHOLD, (int)bytes);
}

int lm_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int lm_flock_exclusive(int fd) {
    return flock(fd, LOCK_EX);
}

static volatile sig_atomic_t lm_interrupt_caught = 0;
/* SIGINT, SIGTERM and SIGHUP: what ends an interactive client. */
static const int lm_interrupt_signals[3] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction lm_saved_interrupt[3];

static void lm_on_sigint(int sig) {
    lm_interrupt_caught = sig;
}

/* Installs `handler` (SA_RESTART) for the `n` signals in `sigs`, saving
 * each previous disposition in `saved`; all or nothing: 0, or -1 with
 * errno and the dispositions as they were. */
static int lm_install_handler(void (*handler)(int), const int *sigs, int n, struct sigaction *saved) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < n; i++) {
        if (sigaction(sigs[i], &sa, &saved[i]) != 0) {
            while (i-- > 0) sigaction(sigs[i], &saved[i], NULL);
            return -1;
        }
    }
    return 0;
}

/* Puts back what lm_install_handler saved. */
static int lm_restore_handlers(const int *sigs, int n, const struct sigaction *saved) {
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (sigaction(sigs[i], &saved[i], NULL) != 0) rc = -1;
    }
    return rc;
}

int lm_catch_sigint(void) {
    lm_interrupt_caught = 0;
    return lm_install_handler(lm_on_sigint, lm_interrupt_signals, 3, lm_saved_interrupt);
}

int lm_sigint_caught(void) {
    return lm_interrupt_caught;
}

int lm_release_sigint(void) {
    return lm_restore_handlers(lm_interrupt_signals, 3, lm_saved_interrupt);
}

static volatile sig_atomic_t lm_forward_pid = 0;
static volatile sig_atomic_t lm_forward_pending = 0;
static const int lm_forward_signals[2] = {SIGTERM, SIGHUP};
static struct sigaction lm_saved_forward[2];

static void lm_on_forwarded(int sig) {
    pid_t pid = lm_forward_pid;
    if (pid > 0) kill(pid, sig);
    else lm_forward_pending = sig;
}

int lm_forward_signals_start(void) {
    lm_forward_pid = 0;
    lm_forward_pending = 0;
    return lm_install_handler(lm_on_forwarded, lm_forward_signals, 2, lm_saved_forward);
}

void lm_forward_signals_to(pid_t pid) {
    lm_forward_pid = pid;
    /* After the pid is set: a signal from now on is forwarded by the
     * handler itself, one that came before is here. */
    int pending = lm_forward_pending;
    lm_forward_pending = 0;
    if (pending && pid > 0) kill(pid, pending);
}

int lm_forward_signals_stop(void) {
    int rc = lm_restore_handlers(lm_forward_signals, 2, lm_saved_forward);
    lm_forward_pid = 0;
    return rc;
}

int lm_flock_exclusive_now(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB);
}

int lm_rename_noreplace(const char *from, const char *to) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 1 /* RENAME_NOREPLACE */);
}

int lm_ignore_sigpipe(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGPIPE, &sa, NULL);
}

int lm_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

long lm_getrandom(void *buf, size_t len) {
    return getrandom(buf, len, 0);
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int lm_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int lm_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
