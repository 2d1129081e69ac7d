/* Baseline for lmctfy-bench create-destroy: the same cgroup v1 work the
 * library does for a container with cpu+memory limits, in plain C with no
 * checks beyond return codes: mkdir in freezer, cpu, cpuacct, cpuset (with
 * cpus/mems copied from the parent) and memory; write shares, CFS period and
 * quota, memory limit, memory+swap limit and soft limit (what a create with
 * REPLACE semantics writes); then read cgroup.procs (nothing to kill) and
 * rmdir everything.
 * usage: create_destroy N */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *R = "/sys/fs/cgroup";

#include "cgfile.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    static const char *dirs[] = {"freezer", "cpu", "cpuacct", "cpuset", "memory"};
    char path[512], buf[256], cpus[256], mems[256];
    get("/sys/fs/cgroup/cpuset/cpuset.cpus", cpus, sizeof cpus);
    get("/sys/fs/cgroup/cpuset/cpuset.mems", mems, sizeof mems);
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        for (int d = 0; d < 5; d++) {
            snprintf(path, sizeof path, "%s/%s/lmctfy_cbench_%d_%d", R, dirs[d], getpid(), i);
            if (mkdir(path, 0755) < 0) { perror(path); return 1; }
        }
        snprintf(path, sizeof path, "%s/cpuset/lmctfy_cbench_%d_%d/cpuset.cpus", R, getpid(), i); put(path, cpus);
        snprintf(path, sizeof path, "%s/cpuset/lmctfy_cbench_%d_%d/cpuset.mems", R, getpid(), i); put(path, mems);
        snprintf(path, sizeof path, "%s/cpu/lmctfy_cbench_%d_%d/cpu.shares", R, getpid(), i); put(path, "512");
        snprintf(path, sizeof path, "%s/cpu/lmctfy_cbench_%d_%d/cpu.cfs_period_us", R, getpid(), i); put(path, "250000");
        snprintf(path, sizeof path, "%s/cpu/lmctfy_cbench_%d_%d/cpu.cfs_quota_us", R, getpid(), i); put(path, "250000");
        snprintf(path, sizeof path, "%s/memory/lmctfy_cbench_%d_%d/memory.limit_in_bytes", R, getpid(), i); put(path, "104857600");
        snprintf(path, sizeof path, "%s/memory/lmctfy_cbench_%d_%d/memory.memsw.limit_in_bytes", R, getpid(), i); put(path, "-1");
        snprintf(path, sizeof path, "%s/memory/lmctfy_cbench_%d_%d/memory.soft_limit_in_bytes", R, getpid(), i); put(path, "0");
    }
    double t1 = now_us();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/freezer/lmctfy_cbench_%d_%d/cgroup.procs", R, getpid(), i);
        get(path, buf, sizeof buf);
        for (int d = 4; d >= 0; d--) {
            snprintf(path, sizeof path, "%s/%s/lmctfy_cbench_%d_%d", R, dirs[d], getpid(), i);
            if (rmdir(path) < 0) { perror(path); return 1; }
        }
    }
    double t2 = now_us();
    printf("c     create_us=%.1f destroy_us=%.1f total_us=%.1f\n", (t1 - t0) / n, (t2 - t1) / n, (t2 - t0) / n);
    return 0;
}
