/* What lmctfy create writes on cgroup v1, for the whole-process C floors
 * (process_floor.c, startup_c.c): NAME (starting with '/') made in the
 * freezer, cpu, cpuacct, cpuset and memory hierarchies, the parent's
 * cpuset.mems and .cpus copied, then cpu.shares 512, the CFS period (when
 * given) and quota, memory.memsw.limit_in_bytes -1, the memory limit and
 * soft limit 0, in lmctfy's order. Any failure ends the program. */
#ifndef LM_BENCH_V1CREATE_H
#define LM_BENCH_V1CREATE_H
#include <sys/stat.h>
#include "cgfile.h"

static const char *R = "/sys/fs/cgroup";
static const char *dirs[] = {"freezer", "cpu", "cpuacct", "cpuset", "memory"};

static void file(char *path, size_t len, const char *h, const char *name, const char *f) {
    snprintf(path, len, "%s/%s%s/%s", R, h, name, f);
}

static void create_v1(const char *name, const char *period, const char *quota, const char *limit) {
    char path[512], buf[256];
    for (int d = 0; d < 5; d++) {
        snprintf(path, sizeof path, "%s/%s%s", R, dirs[d], name);
        if (mkdir(path, 0755) < 0) { perror(path); exit(1); }
    }
    get("/sys/fs/cgroup/cpuset/cpuset.mems", buf, sizeof buf);
    file(path, sizeof path, "cpuset", name, "cpuset.mems"); put(path, buf);
    get("/sys/fs/cgroup/cpuset/cpuset.cpus", buf, sizeof buf);
    file(path, sizeof path, "cpuset", name, "cpuset.cpus"); put(path, buf);
    file(path, sizeof path, "cpu", name, "cpu.shares"); put(path, "512");
    if (period) { file(path, sizeof path, "cpu", name, "cpu.cfs_period_us"); put(path, period); }
    file(path, sizeof path, "cpu", name, "cpu.cfs_quota_us"); put(path, quota);
    file(path, sizeof path, "memory", name, "memory.memsw.limit_in_bytes"); put(path, "-1");
    file(path, sizeof path, "memory", name, "memory.limit_in_bytes"); put(path, limit);
    file(path, sizeof path, "memory", name, "memory.soft_limit_in_bytes"); put(path, "0");
}
#endif
