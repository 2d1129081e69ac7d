#define _GNU_SOURCE
#include "CLmctfyShims.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/signalfd.h>
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

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

static volatile sig_atomic_t lm_job_pidfd = -1;
static volatile sig_atomic_t lm_job_held = 0;
static volatile sig_atomic_t lm_job_fresh = 0;
static const int lm_job_signals[4] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP};
static struct sigaction lm_saved_job[4];

static void lm_on_job_signal(int sig) {
    int fd = lm_job_pidfd;
    if (fd >= 0) {
        lm_pidfd_send_signal(fd, sig);
    } else {
        lm_job_held = sig;
        lm_job_fresh = sig;
    }
}

int lm_job_signals_start(unsigned long long *ignored) {
    *ignored = 0;
    lm_job_pidfd = -1;
    lm_job_held = 0;
    lm_job_fresh = 0;
    struct sigaction ign, caught;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    memset(&caught, 0, sizeof caught);
    caught.sa_handler = lm_on_job_signal;
    sigemptyset(&caught.sa_mask);
    caught.sa_flags = SA_RESTART;
    for (int i = 0; i < 4; i++) {
        int sig = lm_job_signals[i];
        struct sigaction now;
        int ok = sigaction(sig, NULL, &now) == 0;
        if (ok) {
            int was_ignored = now.sa_handler == SIG_IGN;
            if (was_ignored) *ignored |= 1ULL << sig;
            /* INT and QUIT ignored; TERM and HUP caught unless ignored. */
            const struct sigaction *set = (sig == SIGINT || sig == SIGQUIT || was_ignored) ? &ign : &caught;
            ok = sigaction(sig, set, &lm_saved_job[i]) == 0;
        }
        if (!ok) {
            while (i-- > 0) sigaction(lm_job_signals[i], &lm_saved_job[i], NULL);
            return -1;
        }
    }
    return 0;
}

void lm_job_signals_forward(int pidfd) {
    lm_job_pidfd = pidfd;
    if (pidfd < 0) return;
    /* After the descriptor is set: a signal from now on is sent by the
     * handler itself; one held since the last look is sent here. */
    int fresh = lm_job_fresh;
    lm_job_fresh = 0;
    if (fresh) lm_pidfd_send_signal(pidfd, fresh);
}

int lm_job_signals_caught(void) {
    lm_job_fresh = 0;
    return lm_job_held;
}

int lm_job_signals_stop(void) {
    lm_job_pidfd = -1;
    return lm_restore_handlers(lm_job_signals, 4, lm_saved_job);
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

int lm_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int lm_signalfd_open(const int *signals, int n, sigset_t *old) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++) sigaddset(&set, signals[i]);
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) return -1;
    int e = pthread_sigmask(SIG_BLOCK, &set, old);
    if (e != 0) {
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int lm_signalfd_next(int fd) {
    struct signalfd_siginfo info;
    ssize_t n;
    do { n = read(fd, &info, sizeof info); } while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if (n != (ssize_t)sizeof info) { errno = EIO; return -1; }
    return (int)info.ssi_signo;
}
