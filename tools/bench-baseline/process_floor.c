/* The C lower bound of tools/bench-process: the kernel work of `lmctfy
 * create NAME SPEC; lmctfy run NAME /bin/true; lmctfy destroy -f NAME` on
 * cgroup v1, as ONE process with no checks beyond return codes:
 *   mkdir NAME in freezer, cpu, cpuacct, cpuset, memory; copy the parent's
 *   cpuset.cpus and .mems; write what lmctfy writes for
 *   "cpu:{limit:500 max_limit:500} memory:{limit:104857600}" (shares 512,
 *   CFS period 250000 and quota 125000, memsw -1, limit, soft limit 0);
 *   fork; the child joins the five cgroups ("0" to tasks, as lmctfy run
 *   does: no threadgroup lock, so no RCU grace period) and execs
 *   /bin/true; wait for it; read cgroup.procs (nothing to kill); rmdir all.
 *   process_floor NAME       (NAME starts with '/')
 * lmctfy also reads /proc/self/mountinfo, keeps a lock file and sets xattrs;
 * crun and runc also build a mount namespace and pivot into a rootfs; this
 * does none of that, so no runtime can be faster than this row. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "v1create.h"

int main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] != '/') { fprintf(stderr, "usage: process_floor /NAME\n"); return 3; }
    const char *name = argv[1];
    char path[512], buf[256];
    create_v1(name, "250000", "125000", "104857600");
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        for (int d = 0; d < 5; d++) {
            file(path, sizeof path, dirs[d], name, "tasks");
            put(path, "0");
        }
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) { perror("waitpid"); return 1; }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "child failed\n"); return 1; }
    file(path, sizeof path, "freezer", name, "cgroup.procs");
    get(path, buf, sizeof buf);
    for (int d = 4; d >= 0; d--) {
        snprintf(path, sizeof path, "%s/%s%s", R, dirs[d], name);
        if (rmdir(path) < 0) { perror(path); return 1; }
    }
    return 0;
}
