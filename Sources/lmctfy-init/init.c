/* lmctfy-init: the default init of a virtual host (pid 1 of its pid
 * namespace). It is linked statically and started by descriptor after
 * pivot_root, so it runs in a root filesystem without a libc.
 *
 * It reaps every zombie re-parented to it; SIGTERM or SIGINT is forwarded to
 * every other process of the namespace (kill(-1) from pid 1 reaches exactly
 * those, its children or not), after which it exits as soon as none is
 * left, which ends the
 * virtual host (the kernel kills whatever the namespace still holds).
 * Everything else it ignores: as pid 1, only signals it handles reach it from
 * inside, and SIGKILL from outside always does.
 *
 * Arguments: none. (`lmctfy-init --version` prints the version for the
 * tests that look for the binary; `--help` says what it is.) Anywhere but
 * as pid 1 it refuses at once: kill(-1) from any other root process reaches
 * every process of the machine (`lmctfy-init --help` on a host, then ^C,
 * killed them all; a probe). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Reaps every child that has exited. */
static void reap(void) {
    for (;;) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);
        if (p > 0) continue;
        if (p < 0 && errno == EINTR) continue;
        return;
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("lmctfy-init 1\n");
        return 0;
    }
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: lmctfy-init\n"
               "The init of a virtual host: lmctfy starts it as pid 1 of the host's pid\n"
               "namespace. It reaps orphans and passes SIGTERM and SIGINT on to every\n"
               "process of the namespace. It refuses to run as any other pid.\n");
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "lmctfy-init: refused: this is the init of a virtual host and runs only as pid 1 "
                        "of its pid namespace, which lmctfy starts it as (here it is pid %d, where its "
                        "SIGTERM would reach every process of the machine)\n", (int)getpid());
        return 2;
    }
    /* Every signal stays blocked and is taken with sigwaitinfo: no handler
     * runs, so nothing here has to be async-signal-safe. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    prctl(PR_SET_NAME, "lmctfy-init", 0, 0, 0);
    int terminating = 0;
    /* While terminating, look every 20 ms whether anything is left: a
     * process started by `lmctfy run` is not our child (its parent was
     * outside), so no SIGCHLD tells us it has gone. */
    const struct timespec tick = {0, 20 * 1000 * 1000};
    for (;;) {
        siginfo_t info;
        int sig = terminating ? sigtimedwait(&all, &info, &tick) : sigwaitinfo(&all, &info);
        if (sig == SIGTERM || sig == SIGINT) {
            terminating = 1;
            kill(-1, sig);
        }
        /* SIGCHLD may coalesce: reap everything that has exited. */
        reap();
        /* kill(-1, 0) from pid 1 reaches every other process of the
         * namespace: ESRCH means none is left. */
        if (terminating && kill(-1, 0) < 0 && errno == ESRCH) return 0;
    }
}
