/* Baseline for lmctfy-bench agent-lifecycle: the syscalls one container's
 * life needs and nothing else, in one process. Per round: mkdir the
 * container in the freezer, cpu, cpuacct, cpuset (cpus/mems copied from the
 * parent) and memory v1 hierarchies; write the limits a create with
 * "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }" writes
 * (the same values as create_destroy.c); vfork a child that writes "0"
 * (itself) to each hierarchy's tasks file and execs /bin/true; waitpid;
 * read the freezer's cgroup.procs (destroy's check for tasks to kill); rmdir all.
 * Names are lmctfy_clife_<pid>_<round>; whatever exists of the current
 * round is removed on a failure or on SIGINT/SIGTERM.
 *
 * With --safety it also makes the syscalls lmctfy adds for its guarantees,
 * as strace shows them for one lmctfy-bench local-lifecycle round (so the
 * ratio against this row is what lmctfy's own code costs on top of them):
 * the create/destroy journal in a lock file under /run (a spare file
 * renamed into place with renameat2(RENAME_NOREPLACE), open, flock, fstat,
 * stat, pwrite per step, ftruncate; at destroy fstat, ftruncate and a
 * rename back into the spare directory, as lmctfy's SpareFiles does, so
 * no inode is allocated or freed), the ownership marks
 * (setxattr "creating" per directory, the eviction and latency records,
 * "complete" last; getxattr of the marks in run and destroy, including the
 * hierarchies the container does not use; read and written by name from
 * the hierarchy's kept mount-point descriptor with getxattrat/setxattrat),
 * the cgroupfs checks (a directory whose records are checked is opened with
 * openat2 from that descriptor, refusing mount crossings, then f*xattr;
 * statfs before a listing; the top-level directories made and removed from
 * the kept descriptor, every file opened with openat2 from it), the parent's
 * cpuset re-read per create, the task's current cgroups before joining,
 * /dev/null on the child's stdout, its oom_score_adj, and the child's reset
 * of every signal disposition before exec.
 * To see what each part of --safety costs, LIFECYCLE_WITHOUT leaves parts
 * out (a comma-separated list): journal (the lock file), marks (every
 * ownership mark and record), opens (plain opens instead of openat2 from
 * the kept mount points), child (the signal reset, /dev/null and
 * oom_score_adj), statfs.
 * usage: lifecycle N [--safety]   prints microseconds per round (mean over N),
 * each phase's and in all (us=), and this process's own CPU per round (cpu_us=) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
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

/* This process's own CPU time in microseconds (every thread; the children,
 * /bin/true included, are not counted): what run-bench compares with the
 * agent's and CL1's own CPU per lifecycle. */
static double cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* This process's context switches so far (voluntary and not; its children
 * not counted): each is a sleep and a wake-up, which run-bench sets beside
 * the agent's (tools/bench-baseline/wakeup.c prices one). */
static long switches(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

static void at(char *path, size_t len, int d, const char *file) {
    snprintf(path, len, "%s/%s", cg[d], file);
}

/* --safety: the syscalls lmctfy adds (see the top of this file). */
static int safety;
/* LIFECYCLE_WITHOUT's parts, as bits. */
enum { NO_JOURNAL = 1, NO_MARKS = 2, NO_OPENS = 4, NO_CHILD = 8, NO_STATFS = 16 };
static int without;
static const char *without_parts;  /* LIFECYCLE_WITHOUT as given (also printed) */
static const char *unused[] = {"devices", "blkio", "pids"};
static const char *MARK = "user.lmctfy.state";

static void check_fs(const char *path) {
    struct statfs sf;
    if (safety && !(without & NO_STATFS)) statfs(path, &sf);
}

/* The spare lock files (lmctfy's SpareFiles): names of files in SPARE, the
 * directory made on first use, listed once (and kept, as lmctfy keeps its
 * spares, for the next run). */
static const char *SPARE = "/run/lmctfy_clife_spare";
static char spares[4096][24];
static int nspares = -1;

static void spare_take(const char *path) {
    if (nspares < 0) {
        nspares = 0;
        mkdir(SPARE, 0700);
        DIR *d = opendir(SPARE);
        struct dirent *e;
        while (d && (e = readdir(d)) && nspares < 128) {
            if (e->d_type == DT_REG && strlen(e->d_name) < sizeof spares[0]) snprintf(spares[nspares++], sizeof spares[0], "%.23s", e->d_name);
        }
        if (d) closedir(d);
    }
    if (nspares == 0) return;
    char from[128];
    snprintf(from, sizeof from, "%s/%s", SPARE, spares[--nspares]);
    syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, path, 1 /* RENAME_NOREPLACE */);
}

static int lock_open(const char *name, int fresh) {
    if (without & NO_JOURNAL) return -1;
    char path[256];
    struct stat st;
    char buf[64];
    snprintf(path, sizeof path, "/run/lmctfy_clife_lock_%s", name);
    if (fresh) spare_take(path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) { perror(path); exit(1); }
    flock(fd, LOCK_EX);
    fstat(fd, &st);
    stat(path, &st);
    lseek(fd, 0, SEEK_END);
    pread(fd, buf, sizeof buf, 0);
    return fd;
}

static void lock_close(int fd, const char *name, int remove) {
    if (fd < 0) return;
    char path[256];
    snprintf(path, sizeof path, "/run/lmctfy_clife_lock_%s", name);
    if (remove) {
        struct stat st;
        char to[128];
        if (fstat(fd, &st) == 0 && ftruncate(fd, 0) == 0 && nspares >= 0 && nspares < 4096) {
            /* Its slot, as SpareFiles names it (one lifecycle at a time:
             * the slot is free). */
            snprintf(spares[nspares], sizeof spares[0], "%lu", (unsigned long)(st.st_ino % 4096));
            snprintf(to, sizeof to, "%s/%s", SPARE, spares[nspares]);
            if (syscall(SYS_renameat2, AT_FDCWD, path, AT_FDCWD, to, 1) == 0) {
                nspares++;
            } else {
                unlink(path);
            }
        } else {
            unlink(path);
        }
    }
    close(fd);
}

/* Hierarchy h's mount point, opened and fstatfs-checked once, then kept
 * (as lmctfy keeps it). */
static int root_fd(const char *h) {
    static char roots[16][64];
    static int rootfds[16], nroots;
    for (int i = 0; i < nroots; i++) if (strcmp(roots[i], h) == 0) return rootfds[i];
    char mount[128];
    struct statfs sf;
    snprintf(mount, sizeof mount, "%s/%s", R, h);
    int root = open(mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0 || fstatfs(root, &sf) < 0 || nroots == 16) { perror(mount); exit(1); }
    snprintf(roots[nroots], sizeof roots[0], "%s", h);
    rootfds[nroots++] = root;
    return root;
}

/* A cgroup file opened the way lmctfy opens one: openat2 from its
 * hierarchy's kept mount point, refusing to cross a mount point. Without
 * --safety a plain open. */
static int open_checked(const char *path, int flags) {
    const char *rel = path + strlen(R) + 1, *slash = strchr(rel, '/');
    if (!safety || (without & NO_OPENS) || !slash || slash - rel >= 64) return open(path, flags | O_CLOEXEC);
    char h[64];
    snprintf(h, sizeof h, "%.*s", (int)(slash - rel), rel);
    int root = root_fd(h);
    struct open_how how = {.flags = (unsigned long long)(flags | O_CLOEXEC),
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS};
    return (int)syscall(SYS_openat2, root, slash + 1, &how, sizeof how);
}

static void put_checked(const char *path, const char *value) {
    int fd = open_checked(path, O_WRONLY);
    if (fd < 0) { perror(path); exit(1); }
    if (write(fd, value, strlen(value)) < 0) { perror(path); exit(1); }
    close(fd);
}

static void get_checked(const char *path, char *buf, size_t len) {
    int fd = open_checked(path, O_RDONLY);
    if (fd < 0) { perror(path); exit(1); }
    ssize_t n = read(fd, buf, len - 1);
    if (n < 0) { perror(path); exit(1); }
    buf[n] = 0;  /* one record: whole in one read (as lmctfy reads it) */
    close(fd);
}

/* struct xattr_args of Linux 6.13's getxattrat/setxattrat. */
struct xattr_args_at { unsigned long long value; unsigned size, flags; };
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#endif

/* A record of the container's directory in hierarchy h, read or written
 * the way lmctfy does without a check: by its name from the hierarchy's
 * kept mount point (getxattrat/setxattrat; a path before Linux 6.13). */
static void get_record(const char *h, const char *attr) {
    if (without & NO_MARKS) return;
    char buf[256], path[256];
    struct xattr_args_at a = {(unsigned long long)(unsigned long)buf, sizeof buf, 0};
    const char *name = strrchr(cg[0], '/') + 1;
    if (syscall(SYS_getxattrat, root_fd(h), name, AT_SYMLINK_NOFOLLOW, attr, &a, sizeof a) < 0 && errno == ENOSYS) {
        snprintf(path, sizeof path, "%s/%s/%s", R, h, name);
        getxattr(path, attr, buf, sizeof buf);
    }
}

static void set_record(const char *h, const char *attr, const char *value) {
    if (without & NO_MARKS) return;
    char path[256];
    struct xattr_args_at a = {(unsigned long long)(unsigned long)value, (unsigned)strlen(value), 0};
    const char *name = strrchr(cg[0], '/') + 1;
    if (syscall(SYS_setxattrat, root_fd(h), name, AT_SYMLINK_NOFOLLOW, attr, &a, sizeof a) < 0 && errno == ENOSYS) {
        snprintf(path, sizeof path, "%s/%s/%s", R, h, name);
        setxattr(path, attr, value, strlen(value), 0);
    }
}

/* A record read or written with lmctfy's check: the directory opened with
 * openat2 from its hierarchy's kept mount point (refusing to cross a mount
 * point, where a statfs of the path checked before), then f*xattr. */
static int open_dir_checked(int d) {
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS};
    return (int)syscall(SYS_openat2, root_fd(dirs[d]), strrchr(cg[d], '/') + 1, &how, sizeof how);
}

static void mark(int d, const char *name, const char *value) {
    if (!safety || (without & NO_MARKS)) return;
    int fd = open_dir_checked(d);
    if (fd < 0) { perror(cg[d]); exit(1); }
    fsetxattr(fd, name, value, strlen(value), 0);
    close(fd);
}

static void get_record_checked(int d, const char *attr) {
    if (without & NO_MARKS) return;
    char buf[256];
    int fd = open_dir_checked(d);
    if (fd < 0) { perror(cg[d]); exit(1); }
    fgetxattr(fd, attr, buf, sizeof buf);
    close(fd);
}

static void marks_of(int upto) {
    for (int d = 0; d < upto; d++) get_record(dirs[d], MARK);
    for (int u = 0; u < 3; u++) get_record(unused[u], MARK);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    safety = argc > 2 && strcmp(argv[2], "--safety") == 0;
    without_parts = getenv("LIFECYCLE_WITHOUT");
    if (without_parts) {
        static const char *names[] = {"journal", "marks", "opens", "child", "statfs"};
        char copy[256];
        snprintf(copy, sizeof copy, "%s", without_parts);
        for (char *save = NULL, *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            int bit = 0;
            for (int k = 0; k < 5; k++) if (strcmp(p, names[k]) == 0) bit = 1 << k;
            if (!bit) { fprintf(stderr, "lifecycle: LIFECYCLE_WITHOUT: no part \"%s\" (journal, marks, opens, child, statfs)\n", p); return 64; }
            without |= bit;
        }
    }
    if (n <= 0 || (argc > 2 && !safety)) { fprintf(stderr, "usage: lifecycle N [--safety]\n"); return 64; }
    char path[512], buf[256], cpus[256], mems[256];
    get("/sys/fs/cgroup/cpuset/cpuset.cpus", cpus, sizeof cpus);
    get("/sys/fs/cgroup/cpuset/cpuset.mems", mems, sizeof mems);
    atexit(cleanup); /* put() and get() exit(1) on a failure */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double t0 = now_us(), cpu0 = cpu_us(), ph_create = 0, ph_run = 0, ph_destroy = 0;
    long csw0 = switches();
    for (int i = 0; i < n; i++) {
        double a = now_us();
        for (int d = 0; d < NDIRS; d++) {
            snprintf(cg[d], sizeof cg[d], "%s/%s/lmctfy_clife_%d_%d", R, dirs[d], getpid(), i);
            snprintf(tasks[d], sizeof tasks[d], "%s/%s/lmctfy_clife_%d_%d/tasks", R, dirs[d], getpid(), i);
        }
        char name[64], journal[128];
        volatile int lock = -1;  /* kept across the vfork below */
        snprintf(name, sizeof name, "lmctfy_clife_%d_%d", getpid(), i);
        if (safety) {
            lock = lock_open(name, 1);
            get_record(dirs[0], MARK);
            if (lock >= 0) pwrite(lock, "create /lmctfy_clife\n", 21, 0);
        }
        for (int d = 0; d < NDIRS; d++) {
            if (safety) {
                int len = snprintf(journal, sizeof journal, "mkdir %s/%s\t%s\n", R, dirs[d], name);
                if (lock >= 0) pwrite(lock, journal, len, 21 + 60 * d);
            }
            /* --safety: a top-level directory from its hierarchy's kept
             * mount-point descriptor (no mount can be crossed: no statfs). */
            if ((safety ? mkdirat(root_fd(dirs[d]), name, 0755) : mkdir(cg[d], 0755)) < 0) { perror(cg[d]); exit(1); }
            made = d + 1;
            if (safety) set_record(dirs[d], MARK, "creating");  /* just made: unchecked */
            if (safety && d == 3) {  /* cpuset.mems from the parent, at once */
                get_checked("/sys/fs/cgroup/cpuset/cpuset.mems", mems, sizeof mems);
                at(path, sizeof path, 3, "cpuset.mems"); put_checked(path, mems);
            }
        }
        if (safety) {
            if (lock >= 0) ftruncate(lock, 0);
            get_checked("/sys/fs/cgroup/cpuset/cpuset.cpus", cpus, sizeof cpus);
        }
        if (!safety) { at(path, sizeof path, 3, "cpuset.mems"); put(path, mems); }
        at(path, sizeof path, 1, "cpu.shares"); put_checked(path, "512");
        at(path, sizeof path, 1, "cpu.cfs_period_us"); put_checked(path, "250000");
        at(path, sizeof path, 1, "cpu.cfs_quota_us"); put_checked(path, "250000");
        at(path, sizeof path, 3, "cpuset.cpus"); put_checked(path, cpus);
        mark(1, "user.lmctfy.cpu.scheduling_latency", "PRIORITY");
        mark(4, "user.lmctfy.eviction_priority", "5000");
        at(path, sizeof path, 4, "memory.memsw.limit_in_bytes"); put_checked(path, "-1");
        at(path, sizeof path, 4, "memory.limit_in_bytes"); put_checked(path, "104857600");
        at(path, sizeof path, 4, "memory.soft_limit_in_bytes"); put_checked(path, "0");
        mark(0, MARK, "complete");
        if (safety) {
            lock_close(lock, name, 0);
            /* run: the marks of every hierarchy, the caller's cgroups, the
             * memory-isolating container and its eviction record. */
            marks_of(NDIRS);
            get("/proc/thread-self/cgroup", buf, sizeof buf);
            get_record(dirs[4], MARK);
            get_record(dirs[4], MARK);
            get_record_checked(4, "user.lmctfy.eviction_priority");
        }

        double b = now_us();
        /* Signals stay blocked until `child` names the new process. */
        sigset_t all, old;
        sigemptyset(&all);
        sigaddset(&all, SIGINT);
        sigaddset(&all, SIGTERM);
        sigprocmask(SIG_BLOCK, &all, &old);
        /* vfork, as lmctfy spawns a foreground command: the child borrows
         * this process's memory until it execs, so the parent's pages are
         * neither copied nor write-faulted afterwards (fork cost 130 us a
         * round more here). */
        pid_t pid = vfork();
        if (pid < 0) { perror("vfork"); exit(1); }
        if (pid == 0) {
            /* Only async-signal-safe calls and _exit here, on variables of
             * this block (the parent's memory): the parent cleans up. */
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            sigprocmask(SIG_SETMASK, &old, NULL);
            /* "0" to tasks: the writer alone, without the threadgroup
             * lock whose write side waits for an RCU grace period (a pid,
             * or cgroup.procs, takes it): the cheapest join v1 offers. */
            if (safety && !(without & NO_CHILD)) {  /* every disposition back to the default */
                struct sigaction dfl;
                memset(&dfl, 0, sizeof dfl);
                dfl.sa_handler = SIG_DFL;
                for (int sig = 1; sig < NSIG; sig++) {
                    if (sig != SIGKILL && sig != SIGSTOP && (sig < 32 || sig > 33)) sigaction(sig, &dfl, NULL);
                }
            }
            for (int d = 0; d < NDIRS; d++) {
                int fd = open(tasks[d], O_WRONLY | O_CLOEXEC);
                if (fd < 0 || write(fd, "0", 1) != 1) _exit(126);
                close(fd);
            }
            if (safety && !(without & NO_CHILD)) {
                int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
                dup2(fd, 1);
                close(fd);
                fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
                if (fd >= 0) { write(fd, "1", 1); close(fd); }
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
        if (safety) {
            lock = lock_open(name, 0);
            get_record(dirs[0], MARK);
            get_record(dirs[0], MARK);
            check_fs(cg[0]);
            DIR *dir = opendir(cg[0]);  /* subcontainers */
            if (dir) { while (readdir(dir)) {} closedir(dir); }
            get_record(dirs[0], MARK);
        }
        at(path, sizeof path, 0, "cgroup.procs"); get_checked(path, buf, sizeof buf);
        if (buf[0]) { fprintf(stderr, "lifecycle: %s is not empty after the child exited\n", path); exit(1); }
        mark(0, MARK, "destroying");
        if (safety) marks_of(0);
        for (int d = NDIRS - 1; d >= 0; d--) {
            if (safety && d > 0) get_record(dirs[d], MARK);
            if ((safety ? unlinkat(root_fd(dirs[d]), name, AT_REMOVEDIR) : rmdir(cg[d])) < 0) { perror(cg[d]); exit(1); }
            made = d;
        }
        if (safety) lock_close(lock, name, 1);
        ph_create += b - a;
        ph_run += c - b;
        ph_destroy += now_us() - c;
    }
    printf("%s%s%s create=%.1f run=%.1f destroy=%.1f cpu_us=%.1f csw=%.1f us=%.1f\n",
           safety ? "c+safety lifecycle (the same plus lmctfy's journal, marks and checks)"
                  : "c     lifecycle (mkdir 5 hierarchies + limits, vfork, join, exec /bin/true, wait, rmdir)",
           safety && without ? " without " : "", safety && without ? without_parts : "",
           ph_create / n, ph_run / n, ph_destroy / n, (cpu_us() - cpu0) / n, (double)(switches() - csw0) / n,
           (now_us() - t0) / n);
    return 0;
}
