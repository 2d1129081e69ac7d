/* Baseline for lmctfy-bench agent-lifecycle: the syscalls one container's
 * life needs and nothing else, in one process. Per round: mkdir the
 * container in the freezer, cpu, cpuacct, cpuset (cpus/mems copied from the
 * parent) and memory v1 hierarchies; write the limits a create with
 * "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }" writes
 * (the same values as create_destroy.c); fork a child that writes "0"
 * (itself) to each hierarchy's tasks file and execs /bin/true; waitpid;
 * read the freezer's cgroup.procs (destroy's check for tasks to kill); rmdir all.
 * Names are lmctfy_clife_<pid>_<round>; whatever exists of the current
 * round is removed on a failure or on SIGINT/SIGTERM.
 * usage: lifecycle N      prints microseconds per round (mean over N) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cgfile.h"

#define NDIRS 5
static const char *R = "/sys/fs/cgroup";
static const char *dirs[NDIRS] = {"freezer", "cpu", "cpuacct", "cpuset", "memory"};
static char cg[NDIRS][256];    /* this round's directories */
static char tasks[NDIRS][272]; /* and their tasks files */
static volatile sig_atomic_t made; /* how many of cg[] exist */
static volatile pid_t child;        /* a child that may be in them */

/* Async-signal-safe: kill and reap the child (a cgroup with a task in it
 * cannot be removed), then rmdir what this round made, last first. */
static void cleanup(void) {
    if (child > 0) {
        kill(child, SIGKILL);
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        child = 0;
    }
    while (made > 0) rmdir(cg[--made]);
}

static void on_signal(int sig) {
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void at(char *path, size_t len, int d, const char *file) {
    snprintf(path, len, "%s/%s", cg[d], file);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    if (n <= 0) { fprintf(stderr, "usage: lifecycle N\n"); return 64; }
    char path[512], buf[256], cpus[256], mems[256];
    get("/sys/fs/cgroup/cpuset/cpuset.cpus", cpus, sizeof cpus);
    get("/sys/fs/cgroup/cpuset/cpuset.mems", mems, sizeof mems);
    atexit(cleanup); /* put() and get() exit(1) on a failure */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double t0 = now_us(), ph_create = 0, ph_run = 0, ph_destroy = 0;
    for (int i = 0; i < n; i++) {
        double a = now_us();
        for (int d = 0; d < NDIRS; d++) {
            snprintf(cg[d], sizeof cg[d], "%s/%s/lmctfy_clife_%d_%d", R, dirs[d], getpid(), i);
            snprintf(tasks[d], sizeof tasks[d], "%s/%s/lmctfy_clife_%d_%d/tasks", R, dirs[d], getpid(), i);
        }
        for (int d = 0; d < NDIRS; d++) {
            if (mkdir(cg[d], 0755) < 0) { perror(cg[d]); exit(1); }
            made = d + 1;
        }
        at(path, sizeof path, 3, "cpuset.cpus"); put(path, cpus);
        at(path, sizeof path, 3, "cpuset.mems"); put(path, mems);
        at(path, sizeof path, 1, "cpu.shares"); put(path, "512");
        at(path, sizeof path, 1, "cpu.cfs_period_us"); put(path, "250000");
        at(path, sizeof path, 1, "cpu.cfs_quota_us"); put(path, "250000");
        at(path, sizeof path, 4, "memory.limit_in_bytes"); put(path, "104857600");
        at(path, sizeof path, 4, "memory.memsw.limit_in_bytes"); put(path, "-1");
        at(path, sizeof path, 4, "memory.soft_limit_in_bytes"); put(path, "0");

        double b = now_us();
        /* Signals stay blocked until `child` names the new process. */
        sigset_t all, old;
        sigemptyset(&all);
        sigaddset(&all, SIGINT);
        sigaddset(&all, SIGTERM);
        sigprocmask(SIG_BLOCK, &all, &old);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); exit(1); }
        if (pid == 0) {
            /* Only async-signal-safe calls and _exit here: the parent cleans up. */
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            sigprocmask(SIG_SETMASK, &old, NULL);
            /* "0" to tasks: the writer alone, without the threadgroup
             * lock whose write side waits for an RCU grace period (a pid,
             * or cgroup.procs, takes it): the cheapest join v1 offers. */
            for (int d = 0; d < NDIRS; d++) {
                int fd = open(tasks[d], O_WRONLY | O_CLOEXEC);
                if (fd < 0 || write(fd, "0", 1) != 1) _exit(126);
                close(fd);
            }
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        child = pid;
        sigprocmask(SIG_SETMASK, &old, NULL);
        int status;
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) { perror("waitpid"); exit(1); }
        }
        child = 0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "lifecycle: child exited with status %d (126: joining a cgroup failed)\n", status);
            exit(1);
        }
        double c = now_us();
        at(path, sizeof path, 0, "cgroup.procs"); get(path, buf, sizeof buf);
        if (buf[0]) { fprintf(stderr, "lifecycle: %s is not empty after the child exited\n", path); exit(1); }
        for (int d = NDIRS - 1; d >= 0; d--) {
            if (rmdir(cg[d]) < 0) { perror(cg[d]); exit(1); }
            made = d;
        }
        ph_create += b - a;
        ph_run += c - b;
        ph_destroy += now_us() - c;
    }
    printf("c     lifecycle (mkdir 5 hierarchies + limits, fork, join, exec /bin/true, wait, rmdir) "
           "create=%.1f run=%.1f destroy=%.1f us=%.1f\n",
           ph_create / n, ph_run / n, ph_destroy / n, (now_us() - t0) / n);
    return 0;
}
