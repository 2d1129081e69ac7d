/* Guest-side self-test for tools/v2vm: proves the VM gives real cgroup v2 semantics (memory.max OOM kill,
 * cgroup.freeze, cgroup.kill), not just the files. Prints PASS/FAIL lines; exit 0 only if all passed.
 * Built static (gcc -static -O2) by selftest.sh so it needs nothing from the initramfs. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CG "/sys/fs/cgroup/v2vm-probe"
static int passed, failed;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    ok ? passed++ : failed++;
}

static int write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    int rc = fputs(s, f) < 0 ? -errno : 0;
    if (fclose(f) != 0 && rc == 0) rc = -errno;   /* cgroupfs reports write errors at flush time */
    return rc;
}

static void read_file(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    size_t len = f ? fread(buf, 1, n - 1, f) : 0;
    buf[len] = 0;
    if (f) fclose(f);
    while (len && buf[len - 1] == '\n') buf[--len] = 0;
}

/* value of KEY in a flat-keyed file such as memory.events or cgroup.events; -1 if absent */
static long key_value(const char *path, const char *key) {
    char line[256], k[128];
    long v, found = -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%127s %ld", k, &v) == 2 && strcmp(k, key) == 0) found = v;
    fclose(f);
    return found;
}

/* state changes (frozen, populated) are asynchronous: poll up to 5 s */
static long wait_key(const char *path, const char *key, long want) {
    long v = -1;
    for (int i = 0; i < 500 && (v = key_value(path, key)) != want; i++) usleep(10000);
    return v;
}

/* fork a child that moves itself into CG, then runs body; returns once the child is inside CG */
static pid_t spawn_in_cgroup(void (*body)(void)) {
    int p[2];
    char c;
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (write_file(CG "/cgroup.procs", "0") != 0) _exit(99);   /* "0" = the writing process */
        if (write(p[1], "x", 1) != 1) _exit(98);
        close(p[1]);
        body();
        _exit(0);
    }
    close(p[1]);
    if (pid > 0 && read(p[0], &c, 1) != 1) {   /* EOF: the child could not join */
        waitpid(pid, NULL, 0);
        pid = -1;
    }
    close(p[0]);
    return pid;
}

static void hog(void) {   /* allocate and touch 200 MiB, far above memory.max */
    for (int i = 0; i < 200; i++) {
        char *m = malloc(1 << 20);
        if (!m) _exit(2);
        memset(m, i, 1 << 20);
    }
    printf("probe: hog survived 200 MiB (NOT OOM-killed)\n");
    fflush(stdout);
}

static void idle(void) { for (;;) pause(); }

int main(void) {
    char buf[512];
    int st = 0;
    rmdir(CG);   /* leftover from an earlier run in the same boot */
    int rc = mkdir(CG, 0755);   /* call first: argument evaluation order would make errno unreliable */
    check(rc == 0, "mkdir %s (%s)", CG, rc ? strerror(errno) : "ok");
    if (failed) return 1;

    /* ---- memory.max: the kernel must OOM-kill the child, not let it grow ---- */
    check(write_file(CG "/memory.max", "32M") == 0, "write memory.max=32M");
    write_file(CG "/memory.swap.max", "0");   /* no swap in the guest; just in case */
    read_file(CG "/memory.max", buf, sizeof buf);
    check(strcmp(buf, "33554432") == 0, "memory.max reads back 33554432 (got '%s')", buf);
    pid_t pid = spawn_in_cgroup(hog);
    check(pid > 0, "child joined the cgroup via cgroup.procs");
    if (pid > 0) {
        waitpid(pid, &st, 0);
        check(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "200 MiB child was SIGKILLed (wait status 0x%x)", st);
    }
    read_file(CG "/memory.events", buf, sizeof buf);
    for (char *s = buf; (s = strchr(s, '\n'));) *s = ' ';
    long oom_kill = key_value(CG "/memory.events", "oom_kill");
    check(oom_kill == 1, "memory.events oom_kill 1 (got %ld; %s)", oom_kill, buf);

    /* ---- cgroup.freeze, then cgroup.kill ---- */
    pid = spawn_in_cgroup(idle);
    check(pid > 0, "idle child joined the cgroup");
    if (pid > 0) {
        check(write_file(CG "/cgroup.freeze", "1") == 0, "write cgroup.freeze=1");
        long frozen = wait_key(CG "/cgroup.events", "frozen", 1);
        check(frozen == 1, "cgroup.events frozen 1 (got %ld)", frozen);
        write_file(CG "/cgroup.freeze", "0");
        frozen = wait_key(CG "/cgroup.events", "frozen", 0);
        check(frozen == 0, "cgroup.events frozen 0 after thaw (got %ld)", frozen);

        check(write_file(CG "/cgroup.kill", "1") == 0, "write cgroup.kill=1");
        waitpid(pid, &st, 0);
        check(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "cgroup.kill SIGKILLed the child (wait status 0x%x)", st);
        long populated = wait_key(CG "/cgroup.events", "populated", 0);
        check(populated == 0, "cgroup.events populated 0 (got %ld)", populated);
        read_file(CG "/cgroup.procs", buf, sizeof buf);
        check(buf[0] == 0, "cgroup.procs empty (got '%s')", buf);
    }

    write_file(CG "/cgroup.kill", "1");   /* never leave a stray child behind an rmdir failure */
    wait_key(CG "/cgroup.events", "populated", 0);
    rc = rmdir(CG);
    check(rc == 0, "rmdir %s (%s)", CG, rc ? strerror(errno) : "ok");

    printf("probe: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
