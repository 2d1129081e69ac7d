#define _GNU_SOURCE
#include "lm_spawn.h"

#include "child_io.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct failure {
    int err;
    int stage;
    int index;
};

/* A pids cgroup file: 1 and *v for a number, 0 for "max", -1 (errno) when
 * it cannot be read or holds neither. Async-signal-safe. */
static int read_pids_value(const char *path, long long *v) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[32];
    ssize_t n;
    do { n = read(fd, buf, sizeof buf); } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0) { errno = saved; return -1; }
    if (n >= 3 && buf[0] == 'm' && buf[1] == 'a' && buf[2] == 'x') return 0;
    long long x = 0;
    ssize_t i = 0;
    for (; i < n && i < 19 && buf[i] >= '0' && buf[i] <= '9'; i++) x = x * 10 + (buf[i] - '0');
    if (i == 0) { errno = EINVAL; return -1; }
    *v = x;
    return 1;
}

/* Everything between fork and exec; async-signal-safe calls only. Returns
 * only on failure. keep_fd is the error pipe (CLOEXEC), or -1. */
static void apply_and_exec(const struct lm_spawn_opts *o, int keep_fd, struct failure *f) {
    /* /dev/null is opened before the cgroups are joined: a container whose
     * device rules do not allow c 1:3 refused its open after (every
     * detached run there failed with EPERM). close-on-exec: exec closes it. */
    int devnull = -1;
    if (o->stdin_fd == -1 || o->stdout_fd == -1 || o->stderr_fd == -1) {
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull < 0) {
            f->err = errno; f->stage = LM_STAGE_STDIO;
            return;
        }
    }
    for (int i = 0; i < o->n_cgroup_files; i++) {
        int fd = open(o->cgroup_files[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || lm_child_write_all(fd, "0", 1) < 0) {
            f->err = errno; f->stage = LM_STAGE_CGROUP; f->index = i;
            return;
        }
        close(fd);
    }
    /* Joined: counted in every pids cgroup above, but let in over its
     * limit. Leave (failing) if that is so; fork inside never could. */
    for (int i = 0; i < o->n_pids_limits; i++) {
        long long max = 0, current = 0;
        int r = read_pids_value(o->pids_limit_files[2 * i], &max);
        if (r == 0) continue;
        if (r < 0 || read_pids_value(o->pids_limit_files[2 * i + 1], &current) < 0) {
            f->err = errno; f->stage = LM_STAGE_PIDS; f->index = i;
            return;
        }
        if (current > max) {
            f->err = EAGAIN; f->stage = LM_STAGE_PIDS; f->index = i;
            return;
        }
    }
    if (lm_child_dup(o->stdin_fd, 0, &devnull) < 0 || lm_child_dup(o->stdout_fd, 1, &devnull) < 0 || lm_child_dup(o->stderr_fd, 2, &devnull) < 0) {
        f->err = errno; f->stage = LM_STAGE_STDIO;
        return;
    }
    if (o->new_session && setsid() < 0) {
        f->err = errno; f->stage = LM_STAGE_SESSION;
        return;
    }
    if (o->controlling_tty && ioctl(0, TIOCSCTTY, 0) < 0) {
        f->err = errno; f->stage = LM_STAGE_SESSION;
        return;
    }
    if (o->set_oom_score_adj) {
        char buf[16];
        int v = o->oom_score_adj, n = 0;
        char tmp[16];
        int neg = v < 0;
        unsigned int u = neg ? (unsigned int)(-v) : (unsigned int)v;
        do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u && n < 15);
        int len = 0;
        if (neg) buf[len++] = '-';
        while (n) buf[len++] = tmp[--n];
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || lm_child_write_all(fd, buf, (size_t)len) < 0) {
            f->err = errno; f->stage = LM_STAGE_OOM;
            return;
        }
        close(fd);
    }
    for (int i = 0; i < o->n_ns_fds; i++) {
        if (setns(o->ns_fds[i], 0) < 0) {
            f->err = errno; f->stage = LM_STAGE_NAMESPACE; f->index = i;
            return;
        }
    }
    if (o->enter_user_root && (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)) {
        f->err = errno; f->stage = LM_STAGE_NAMESPACE; f->index = 0;
        return;
    }
    if (o->n_ns_fds > 0 && chdir("/") < 0) {
        f->err = errno; f->stage = LM_STAGE_NAMESPACE; f->index = o->n_ns_fds;
        return;
    }
    if (o->set_ids) {
        if (setgroups(0, NULL) < 0 || setgid(o->gid) < 0 || setuid(o->uid) < 0) {
            f->err = errno; f->stage = LM_STAGE_IDS;
            return;
        }
    }
    if (o->close_fds) {
        /* Mark everything above stdio close-on-exec (the error pipe too), so
         * nothing of ours leaks into the container. */
        if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
            for (int fd = 3; fd < 65536; fd++) {
                if (fd != keep_fd) close(fd);
            }
        }
    }
    char *const *envp = o->envp ? o->envp : environ;
    /* A name with a slash is not searched for, but a file without a "#!"
     * line (ENOEXEC) runs under /bin/sh either way, as execvp(3) does (an
     * execve of a path failed where the same file found through PATH ran). */
    execvpe(o->argv[0], o->argv, envp);
    f->err = errno; f->stage = LM_STAGE_EXEC;
}

/* Messages on the CLOEXEC pipe from the child (or, detached, from the
 * intermediate and the grandchild). EOF without a failure = exec succeeded. */
struct message {
    int kind;   /* 1: pid of the grandchild in a; 2: failure (err, stage, index) */
    int a, b, c;
};

/* `shared`: a vfork child's failure goes there (the parent's memory, which
 * it reads once we have exited); otherwise on the pipe `pipe_w`. */
static void child_main(const struct lm_spawn_opts *o, int pipe_w, volatile struct message *shared) {
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        signal(s, s < 64 && ((o->keep_ignored >> s) & 1ULL) ? SIG_IGN : SIG_DFL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct failure f = {0, 0, -1};
    apply_and_exec(o, pipe_w, &f);
    if (shared) {
        shared->a = f.err; shared->b = f.stage; shared->c = f.index;
        shared->kind = 2;
    } else {
        struct message m = {2, f.err, f.stage, f.index};
        lm_child_write_all(pipe_w, (const char *)&m, sizeof m);
    }
    _exit(127);
}

/* Whether a vfork child writes our memory, as the kernel's vfork does: 1
 * yes, 0 no (a runtime that makes vfork a fork, as ThreadSanitizer's and
 * valgrind do), -1 not probed yet. Probed once, by a child that only
 * writes a variable and exits. */
static int vfork_shares = -1;

static int vfork_shares_memory(void) {
    int known = __atomic_load_n(&vfork_shares, __ATOMIC_ACQUIRE);
    if (known >= 0) return known;
    volatile int seen = 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t probe = vfork();
    if (probe == 0) {
        seen = 1;
        _exit(0);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (probe < 0) return 0;  /* the pipe, this time */
    int status;
    while (waitpid(probe, &status, 0) < 0 && errno == EINTR) {}
    __atomic_store_n(&vfork_shares, seen, __ATOMIC_RELEASE);
    return seen;
}

int lm_spawn(const struct lm_spawn_opts *o, pid_t *pid, int *err, int *stage, int *cgroup_index) {
    int pipefd[2] = {-1, -1};
    *err = 0; *stage = LM_STAGE_NONE; *cgroup_index = -1;
    /* A vfork child (the foreground run) has our memory until it execs or
     * exits, and we wait until then: it leaves a failure here, and no pipe
     * is needed. A detached run's intermediate and grandchild use one, and
     * so does a foreground run where vfork does not share memory. */
    volatile struct message vfork_failure = {0, 0, 0, -1};
    int shared = !o->detach && vfork_shares_memory();
    if (!shared && pipe2(pipefd, O_CLOEXEC) < 0) {
        *err = errno; *stage = LM_STAGE_FORK;
        return -1;
    }
    /* Block every signal across fork, so no handler of ours runs in the
     * child before it has reset the dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* A run in the foreground (the common case, and what `run` measures)
     * uses vfork: the child borrows our memory until exec, so nothing is
     * copied; everything it does is async-signal-safe and stays in this
     * frame. A detached run forks twice, which a vfork child may not do. */
    /* Attached into a virtual host: this thread's children are born in its
     * pid namespace until we come back (other threads are not affected). */
    int in_pidns = 0;
    if (!o->detach && o->pidns_fd >= 0) {
        if (setns(o->pidns_fd, CLONE_NEWPID) < 0) {
            *err = errno; *stage = LM_STAGE_NAMESPACE;
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            return -1;
        }
        in_pidns = 1;
    }
    pid_t child = o->detach ? fork() : vfork();
    if (child == 0) {
        if (!shared) close(pipefd[0]);
        if (o->detach) {
            /* The intermediate learns the grandchild's fate on a pipe of its
             * own: on success it reports the pid and exits (the grandchild is
             * re-parented, nobody has to reap it); on failure it reaps the
             * grandchild first, so the caller never sees a dying task in the
             * container. */
            int inner[2];
            if (pipe2(inner, O_CLOEXEC) < 0) {
                struct message m = {2, errno, LM_STAGE_FORK, -1};
                lm_child_write_all(pipefd[1], (const char *)&m, sizeof m);
                _exit(0);
            }
            if (o->pidns_fd >= 0 && setns(o->pidns_fd, CLONE_NEWPID) < 0) {
                struct message m = {2, errno, LM_STAGE_NAMESPACE, -1};
                lm_child_write_all(pipefd[1], (const char *)&m, sizeof m);
                _exit(0);
            }
            pid_t grandchild = fork();
            if (grandchild == 0) {
                close(pipefd[1]);
                close(inner[0]);
                child_main(o, inner[1], NULL);
            }
            int fork_err = errno;
            close(inner[1]);
            struct message m = {2, fork_err, LM_STAGE_FORK, -1};
            if (grandchild > 0) {
                ssize_t n;
                do {
                    n = read(inner[0], &m, sizeof m);
                } while (n < 0 && errno == EINTR);
                if (n == (ssize_t)sizeof m) {
                    int status;
                    while (waitpid(grandchild, &status, 0) < 0 && errno == EINTR) {}
                } else {
                    m.kind = 1; m.a = grandchild; m.b = 0; m.c = -1;
                }
            }
            lm_child_write_all(pipefd[1], (const char *)&m, sizeof m);
            _exit(0);
        }
        child_main(o, pipefd[1], shared ? &vfork_failure : NULL);
    }
    int fork_errno = errno;
    if (in_pidns) setns(o->self_pidns_fd, CLONE_NEWPID);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!shared) close(pipefd[1]);
    if (child < 0) {
        if (!shared) close(pipefd[0]);
        *err = fork_errno; *stage = LM_STAGE_FORK;
        return -1;
    }
    if (shared) {
        /* The child has exec'd (or exited) by now: vfork waited for it. */
        if (vfork_failure.kind == 2) {
            *err = vfork_failure.a; *stage = vfork_failure.b; *cgroup_index = vfork_failure.c;
            int status;
            while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
            return -1;
        }
        *pid = child;
        return 0;
    }
    pid_t target = child;
    int failed = 0;
    for (;;) {
        struct message m;
        ssize_t n;
        do {
            n = read(pipefd[0], &m, sizeof m);
        } while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof m) break;      /* EOF: exec succeeded */
        if (m.kind == 1) {
            target = m.a;
        } else {
            *err = m.a; *stage = m.b; *cgroup_index = m.c;
            failed = 1;
            break;
        }
    }
    close(pipefd[0]);
    if (o->detach || failed) {
        /* The intermediate (detached) or the failed child exits at once: reap it. */
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    }
    if (failed) return -1;
    *pid = target;
    return 0;
}

/* lm_exec into a virtual host: the caller cannot enter a pid namespace
 * itself, so it forks the command into it and becomes its stand-in: it
 * exits with the command's status (or dies of its signal). */
static int exec_in_pidns(const struct lm_spawn_opts *o, int *err, int *stage, int *cgroup_index) {
    if (setns(o->pidns_fd, CLONE_NEWPID) < 0) {
        *err = errno; *stage = LM_STAGE_NAMESPACE; *cgroup_index = -1;
        return -1;
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        *err = errno; *stage = LM_STAGE_FORK;
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t child = fork();
    if (child == 0) {
        close(pipefd[0]);
        child_main(o, pipefd[1], NULL);
    }
    int fork_errno = errno;
    close(pipefd[1]);
    if (child < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(pipefd[0]);
        *err = fork_errno; *stage = LM_STAGE_FORK;
        return -1;
    }
    struct message m;
    ssize_t n;
    do {
        n = read(pipefd[0], &m, sizeof m);
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    int status;
    if (n == (ssize_t)sizeof m) {
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        sigprocmask(SIG_SETMASK, &old, NULL);
        *err = m.a; *stage = m.b; *cgroup_index = m.c;
        return -1;
    }
    /* The terminal's SIGINT/SIGQUIT reach the command (same process
     * group); everything else stays blocked until it is gone. */
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int sig = WTERMSIG(status);
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    sigprocmask(SIG_UNBLOCK, &one, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}

int lm_exec(const struct lm_spawn_opts *o, int *err, int *stage, int *cgroup_index) {
    if (o->pidns_fd >= 0) return exec_in_pidns(o, err, stage, cgroup_index);
    struct failure f = {0, 0, -1};
    apply_and_exec(o, -1, &f);
    *err = f.err; *stage = f.stage; *cgroup_index = f.index;
    return -1;
}
