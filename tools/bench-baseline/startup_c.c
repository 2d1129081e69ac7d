/* The C baseline for tools/bench-startup: the kernel work of one lmctfy
 * create / destroy / pause / resume on cgroup v1, as a whole process, in
 * plain C with no checks beyond return codes. Same argv as lmctfy, so the
 * timer runs both the same way:
 *   startup_c create NAME SPEC   mkdir NAME in freezer, cpu, cpuacct, cpuset,
 *                                memory; copy the parent's cpuset.mems and
 *                                cpus; write what lmctfy writes for
 *                                "cpu:{limit:500} memory:{limit:100000000}"
 *                                (SPEC is not parsed: shares 512, no CFS
 *                                quota, memsw -1, limit, soft limit 0)
 *   startup_c destroy NAME       read cgroup.procs, rmdir in every hierarchy
 *   startup_c pause NAME         write FROZEN to freezer.state, poll until FROZEN
 *   startup_c resume NAME        write THAWED, poll until THAWED
 * lmctfy also reads /proc/self/mounts and sets two xattrs; this does not. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "v1create.h"

static void freeze(const char *name, const char *to) {
    char state[512], buf[64];
    file(state, sizeof state, "freezer", name, "freezer.state");
    put(state, to);
    for (;;) {
        get(state, buf, sizeof buf);
        if (strncmp(buf, to, strlen(to)) == 0) return;
        if (to[0] == 'F') put(state, to);   /* FREEZING may fall back to THAWED */
        usleep(50);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: startup_c create|destroy|pause|resume NAME [SPEC]\n"); return 3; }
    const char *verb = argv[1], *name = argv[2];   /* name starts with '/' */
    char path[512], buf[256];
    if (strcmp(verb, "create") == 0) {
        create_v1(name, NULL, "-1", "100000000");
        return 0;
    }
    if (strcmp(verb, "destroy") == 0) {
        file(path, sizeof path, "freezer", name, "cgroup.procs");
        get(path, buf, sizeof buf);
        if (buf[0]) { fprintf(stderr, "%s is not empty\n", name); return 1; }
        for (int d = 4; d >= 0; d--) {
            snprintf(path, sizeof path, "%s/%s%s", R, dirs[d], name);
            if (rmdir(path) < 0) { perror(path); return 1; }
        }
        return 0;
    }
    if (strcmp(verb, "pause") == 0) { freeze(name, "FROZEN"); return 0; }
    if (strcmp(verb, "resume") == 0) { freeze(name, "THAWED"); return 0; }
    fprintf(stderr, "startup_c: unknown verb %s\n", verb);
    return 3;
}
